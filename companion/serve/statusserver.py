"""The status endpoint: /, /status.json, /metrics, /healthz and /explain, served from the latest pass.

It runs in daemon threads and only reads: the loop replaces the report and the pass's inputs whole after
each pass, so neither side ever waits for the other (an explanation is computed here, in the server's
thread). Each connection has CLIENT_TIMEOUT from its connect to send its request and read the answer,
each request a size cap, and the connections open at once are bounded; requests are read whole by one
selector thread before anything answers them, and /healthz is answered there at once, so clients that
trickle bytes or hold connections open cannot make a health check fail.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jinja2

from companion.loop.controller import Controller, heartbeat_problem
from companion.observe.explain import Explanation
from companion.observe.metrics import Metrics
from companion.observe.status import CertView, Report
from companion.serve.htpasswd import Gate
from companion.settings.config import Settings, parse_listen
from companion.util.httpserve import GatheredHandler, GatheringServer, tcp_listener
from companion.util.logsafe import printable

log = logging.getLogger(__name__)

CLIENT_TIMEOUT = 5.0  # seconds from the connect to send the whole request and read the answer
MAX_REQUEST_BYTES = 16 * 1024  # request line and headers together
MAX_CLIENTS = 128  # connections open at once; one more closes the oldest still sending its request
WORKERS = 4  # threads answering the pages; /healthz never waits for them
MAX_NAME = 253  # the longest host name; container names and id prefixes are shorter
REFRESH_SECONDS = 10
BAR_FULL_DAYS = 90.0
PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The page's own CSS and nothing else: no script, image, font or frame may load, injected or not.
PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"

_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("companion.serve", "templates"),
    autoescape=True,  # hostnames, container names and reasons come from labels
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def urgency(cert: CertView) -> str:
    """The bar's colour: failing or under a week is urgent, under three weeks is soon."""
    if cert.days_left is None:
        return "none"
    if cert.state == "failing" or cert.days_left < 7:
        return "urgent"
    return "soon" if cert.days_left < 21 else "ok"


def bar_percent(cert: CertView) -> int:
    return 0 if cert.days_left is None else round(100 * max(0.0, min(cert.days_left / BAR_FULL_DAYS, 1.0)))


def page(report: Report, alive: str) -> str:
    """The HTML status page; `alive` is the loop's problem ('' while it runs)."""
    return _templates.get_template("status.html.j2").render(
        report=report, alive=alive, refresh=REFRESH_SECONDS, urgency=urgency, bar_percent=bar_percent
    )


class _Handler(GatheredHandler):
    server: StatusServer  # type: ignore[assignment]
    server_version = "companion"
    sys_version = ""

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _refuse_method(self) -> None:
        self._send(405, "text/plain; charset=utf-8", b"only GET and HEAD\n", True, {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse_method

    def _answer(self, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        if (
            path != "/healthz"
            and self.server.gate is not None
            and not self.server.gate.allows(self.headers.get("Authorization"))
        ):
            challenge = {"WWW-Authenticate": 'Basic realm="companion status", charset="UTF-8"'}
            self._send(401, "text/plain; charset=utf-8", b"password required (STATUS_AUTH)\n", body, challenge)
            return
        report = self.server.latest()
        if path == "/healthz":
            problem = heartbeat_problem(self.server.heartbeat, dt.datetime.now(dt.UTC))
            self._send(503 if problem else 200, "text/plain; charset=utf-8", (problem or "ok").encode() + b"\n", body)
        elif path == "/status.json":
            data = json.dumps(report.to_json(), indent=1).encode() + b"\n"
            self._send(200, "application/json", data, body)
        elif path == "/metrics":
            self._send(200, PROMETHEUS_TYPE, self.server.metrics.exposition(), body)
        elif path == "/explain":
            self._explain(self.path.partition("?")[2], body)
        elif path == "/":
            alive = heartbeat_problem(self.server.heartbeat, dt.datetime.now(dt.UTC))
            html = page(report, alive).encode()
            self._send(200, "text/html; charset=utf-8", html, body, {"Content-Security-Policy": PAGE_POLICY})
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found\n", body)

    def _explain(self, query: str, body: bool) -> None:
        """One `name` of printable characters, at most MAX_NAME long; 503 until the first pass."""
        try:
            names = parse_qs(query, strict_parsing=True, max_num_fields=1).get("name", [])
        except ValueError:
            names = []
        if len(names) != 1 or not 0 < len(names[0]) <= MAX_NAME or not names[0].isprintable():
            self._json(400, {"error": f"expected ?name=NAME, 1 to {MAX_NAME} printable characters"}, body)
            return
        found = self.server.explainer(names[0])
        if found is None:
            self._json(503, {"error": "the service has not finished a pass yet"}, body)
            return
        self._json(200, explanation_json(found), body)

    def _json(self, code: int, value: object, body: bool) -> None:
        self._send(code, "application/json", json.dumps(value, indent=1).encode() + b"\n", body)

    def _send(self, code: int, kind: str, data: bytes, body: bool, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("status %s: %s", self.address_string(), printable(format % args))


def explanation_json(found: Explanation) -> dict[str, object]:
    """What /explain answers: the lines `companion explain` prints (the verdict's last), and its exit code."""
    return {
        "subject": found.subject,
        "verdict": found.verdict.value,
        "reason": found.reason,
        "exit_code": found.exit_code,
        "lines": found.text().splitlines(),
    }


_HEALTHZ = re.compile(rb"(GET|HEAD) /healthz(\?[^ ]*)? HTTP/")


class StatusServer(GatheringServer):
    def __init__(
        self,
        address: tuple[str, int],
        latest: Callable[[], Report],
        metrics: Metrics,
        heartbeat: Path,
        explainer: Callable[[str], Explanation | None],
        gate: Gate | None = None,
    ):
        self.latest = latest
        self.explainer = explainer
        self.gate = gate  # STATUS_AUTH: every route but /healthz needs a password
        self.metrics = metrics
        self.heartbeat = heartbeat
        super().__init__(
            tcp_listener(address),
            _Handler,
            label="status",
            max_clients=MAX_CLIENTS,
            workers=WORKERS,
            deadline=CLIENT_TIMEOUT,
            max_head=MAX_REQUEST_BYTES,
        )

    def inline(self, head: bytes) -> bool:
        """/healthz is a file's age: answered in the reading thread, it never queues behind a slow page."""
        return _HEALTHZ.match(head) is not None


def start_status_server(settings: Settings, controller: Controller, gate: Gate | None = None) -> StatusServer:
    """Listen on STATUS_LISTEN and serve in a daemon thread; the caller shuts it down."""
    host, port = parse_listen(settings.status_listen)
    server = StatusServer(
        (host, port),
        controller.report,
        controller.metrics,
        Path(settings.heartbeat_file),
        controller.explain,
        gate,
    )
    threading.Thread(target=server.serve_forever, name="status", daemon=True).start()
    log.info("status page on http://%s/ (/status.json, /metrics, /healthz, /explain)", settings.status_listen)
    return server
