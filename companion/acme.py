"""Certificates from an ACME CA: when to order, certbot runs (webroot), self-check, backoff.

One certbot process at a time (certbot locks its directories). A failed order keeps whatever is
served now and is retried with exponential backoff per certificate; the backoff is kept in a state
file in the certs dir so a restart cannot turn a broken site into a stream of failed validations.
New certificates reach nginx through the certs watcher, which wakes the loop.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import queue
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import requests

from .certs import CertStatus, tighten
from .config import Settings
from .logsafe import printable
from .model import CertRequest
from .nginx import write_atomic

log = logging.getLogger(__name__)

STATE_FILE = "companion/acme-state.json"
CERTBOT_TIMEOUT = 600
BACKOFF_CAP = 24 * 3600.0
SELF_CHECK_TIMEOUT = 5.0
SELF_CHECK_SETTLE = 3.0  # seconds a just-reloaded nginx gets to serve the token
# certbot 5 has no __main__ module; run its entry point with our own interpreter.
CERTBOT = (sys.executable, "-c", "import sys; from certbot.main import main; sys.exit(main())")


# -- pure decisions ------------------------------------------------------------------------------


def renew_window(status: CertStatus, renew_before_days: float) -> dt.timedelta:
    """How long before expiry to renew: the setting, or a third of the lifetime (as certbot does)."""
    if renew_before_days > 0:
        return dt.timedelta(days=renew_before_days)
    return status.lifetime / 3


def due_reason(request: CertRequest, status: CertStatus | None, now: dt.datetime, renew_before_days: float) -> str:
    """Why this certificate must be ordered now, or '' when what is on disk is fine."""
    if status is None:
        return "no certificate yet"
    if status.problem:
        return f"certificate unusable ({status.problem})"
    if set(status.domains) != set(request.domains):
        return "names changed"
    if status.remaining(now) <= renew_window(status, renew_before_days):
        return f"expires {status.not_after:%Y-%m-%d %H:%M} UTC"
    return ""


def renew_at(status: CertStatus, renew_before_days: float) -> dt.datetime:
    assert status.not_after is not None
    return status.not_after - renew_window(status, renew_before_days)


def backoff(failures: int, base: float) -> float:
    """Seconds to wait after the n-th failure in a row: base, 2*base, 4*base, ... capped at a day."""
    return min(base * 2 ** max(0, failures - 1), BACKOFF_CAP)


def certbot_reason(output: str) -> str:
    """certbot's reason for a failure in one line, not its whole output.

    The reason quotes the CA's words, so control characters in them are escaped (logsafe.printable)
    once the line is picked: a CA cannot colour, rewrite or split the companion's log.
    """
    return printable(_certbot_reason(output)[:500])


def _certbot_reason(output: str) -> str:
    details = [m.strip() for m in re.findall(r"^\s*(?:Type|Detail):\s*(.+)$", output, re.MULTILINE)]
    if details:
        return "; ".join(dict.fromkeys(details))
    unexpected = re.search(r"An unexpected error occurred:\s*\n\s*(\S.*)", output)
    if unexpected:  # certbot puts the reason on the line after this one
        return unexpected.group(1).strip()
    lines = [
        line.strip()
        for line in output.splitlines()
        if line.strip() and not line.startswith(("Saving debug log", "Ask for help", "See the logfile"))
    ]
    errors = [line for line in lines if "error" in line.lower() or "failed" in line.lower()]
    return (errors or lines or ["certbot failed without output"])[-1]


def certbot_command(settings: Settings, request: CertRequest, *, force: bool) -> list[str]:
    certs = Path(settings.certs_dir)
    cmd = [
        *CERTBOT,
        "certonly",
        "--webroot",
        "--webroot-path",
        settings.webroot,
        "--cert-name",
        request.name,
        "--config-dir",
        str(certs),
        "--work-dir",
        str(certs / "companion" / "work"),
        "--logs-dir",
        str(certs / "companion" / "logs"),
        "--server",
        settings.acme_server,
        "--non-interactive",
        "--agree-tos",
        "--no-eff-email",
        "--no-random-sleep-on-renew",
        "--preferred-challenges",
        "http",
        "--max-log-backups",
        "5",
        "--key-type",
        settings.key_type,
    ]
    if settings.key_type == "rsa":
        cmd += ["--rsa-key-size", str(settings.rsa_key_size)]
    else:
        cmd += ["--elliptic-curve", "secp256r1"]
    cmd += ["--email", request.email] if request.email else ["--register-unsafely-without-email"]
    if force:
        cmd.append("--force-renewal")
    for domain in request.domains:
        cmd += ["-d", domain]
    return cmd


# -- state kept across restarts ------------------------------------------------------------------


@dataclass
class CertState:
    domains: list[str] = field(default_factory=list)
    failures: int = 0
    next_try: float = 0.0  # unix time
    last_error: str = ""
    in_progress: bool = False


def load_state(certs_dir: Path) -> dict[str, CertState]:
    try:
        raw = json.loads((certs_dir / STATE_FILE).read_text())
        return {name: CertState(**value) for name, value in raw.items()}
    except FileNotFoundError:
        return {}
    except (ValueError, TypeError) as exc:
        log.warning("ignoring unreadable %s: %s", certs_dir / STATE_FILE, exc)
        return {}


def save_state(certs_dir: Path, state: dict[str, CertState]) -> None:
    path = certs_dir / STATE_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({k: asdict(v) for k, v in sorted(state.items())}, indent=1) + "\n", mode=0o600)


# -- the edge ------------------------------------------------------------------------------------


class AcmeManager:
    """Decides which certificates are due and orders them, one certbot at a time, in a worker thread."""

    def __init__(
        self,
        settings: Settings,
        wake: Callable[[str], None],
        self_check_url: Callable[[], str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.certs_dir = Path(settings.certs_dir)
        self.wake = wake
        self.self_check_url = self_check_url
        self.clock = clock
        self.lock = threading.Lock()
        self.state = load_state(self.certs_dir)
        for entry in self.state.values():
            entry.in_progress = False
        self.queue: queue.Queue[tuple[CertRequest, bool]] = queue.Queue()
        self.next_due: float | None = None
        self.process: subprocess.Popen[str] | None = None
        self.process_lock = threading.Lock()  # starting certbot vs. stop(): none may start after stop()
        self.stopping = threading.Event()
        self.worker = threading.Thread(target=self._work, name="acme", daemon=True)
        self.worker.start()

    def update(self, requests_: tuple[CertRequest, ...], statuses: dict[str, CertStatus]) -> None:
        """Queue every certificate that is due and not backing off; remember when to look again."""
        now = self.clock()
        now_dt = dt.datetime.fromtimestamp(now, dt.UTC)
        upcoming: list[float] = []
        queued = False
        with self.lock:
            for request in requests_:
                status = statuses.get(request.name)
                entry = self.state.setdefault(request.name, CertState(domains=list(request.domains)))
                if entry.domains != list(request.domains):
                    entry.domains, entry.failures, entry.next_try = list(request.domains), 0, 0.0
                reason = due_reason(request, status, now_dt, self.settings.renew_before_days)
                if not reason:
                    entry.failures, entry.next_try, entry.last_error = 0, 0.0, ""
                    if status is not None and status.not_after is not None:
                        upcoming.append(renew_at(status, self.settings.renew_before_days).timestamp())
                    continue
                if entry.in_progress:
                    continue
                if entry.next_try > now:
                    upcoming.append(entry.next_try)
                    continue
                log.info("certificate %s (%s): ordering, %s", request.name, ", ".join(request.domains), reason)
                entry.in_progress = True
                queued = True
                self.queue.put((request, status is not None))
            self.next_due = min(upcoming) if upcoming else None
            if queued:
                self._save()  # so `companion certs` shows "renewing" while certbot runs

    def seconds_until_due(self) -> float | None:
        return None if self.next_due is None else max(0.0, self.next_due - self.clock())

    def stop(self, timeout: float = 3.0) -> None:
        """Stop the worker; a running certbot is terminated so none is left orphaned."""
        with self.process_lock:  # run_certbot starts no certbot once this is set
            self.stopping.set()
            process = self.process
        self.queue.put_nowait((CertRequest("", (), ""), False))
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
        self.worker.join(timeout)
        # Orders still queued were saved as in progress; none is any more.
        with self.lock:
            if any(entry.in_progress for entry in self.state.values()):
                for entry in self.state.values():
                    entry.in_progress = False
                self._save()

    def _work(self) -> None:
        while not self.stopping.is_set():
            request, renewing = self.queue.get()
            if self.stopping.is_set():
                return
            error = self.self_check(request) if self.settings.self_check else ""
            if not error:
                error = self.run_certbot(request, force=renewing)
            with self.lock:
                entry = self.state.setdefault(request.name, CertState(domains=list(request.domains)))
                entry.in_progress = False
                if self.stopping.is_set():
                    self._save()
                    return
                if error:
                    entry.failures += 1
                    entry.last_error = error
                    entry.next_try = self.clock() + backoff(entry.failures, self.settings.acme_retry_base)
                    when = dt.datetime.fromtimestamp(entry.next_try, dt.UTC)
                    log.error(
                        "certificate %s: %s; attempt %d failed, next try %s UTC",
                        request.name,
                        error,
                        entry.failures,
                        f"{when:%Y-%m-%d %H:%M:%S}",
                    )
                else:
                    entry.failures, entry.next_try, entry.last_error = 0, 0.0, ""
                    tighten(self.certs_dir, request.name)
                    log.info("certificate %s: issued for %s", request.name, ", ".join(request.domains))
                self._save()
            self.wake(f"acme:{request.name}")

    def _save(self) -> None:
        try:
            save_state(self.certs_dir, self.state)
        except OSError as exc:
            log.error("cannot save %s: %s", self.certs_dir / STATE_FILE, exc)

    def self_check(self, request: CertRequest) -> str:
        """Serve a token through nginx for each name before ordering; '' when nginx serves them all."""
        folder = Path(self.settings.webroot) / ".well-known" / "acme-challenge"
        token = "companion-self-check-" + secrets.token_urlsafe(16)
        body = secrets.token_urlsafe(24)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write_atomic(folder / token, body)
        except OSError as exc:
            return f"self-check: cannot write to the webroot {self.settings.webroot}: {exc.strerror or exc}"
        try:
            base = self.self_check_url()
            # The order is queued by the pass that just reloaded nginx, and a reload is asynchronous
            # (`nginx -s reload` returns before the new listeners and workers exist): right after a
            # first apply the port was still closed. Ask again for a moment before calling it failed.
            deadline = time.monotonic() + SELF_CHECK_SETTLE
            while True:
                error = self._fetch_token(base, token, body, request.domains)
                if not error or time.monotonic() >= deadline or self.stopping.is_set():
                    return error
                time.sleep(0.1)
        finally:
            (folder / token).unlink(missing_ok=True)

    def _fetch_token(self, base: str, token: str, body: str, domains: tuple[str, ...]) -> str:
        for domain in domains:
            url = f"{base}/.well-known/acme-challenge/{token}"
            try:
                answer = requests.get(url, headers={"Host": domain}, timeout=SELF_CHECK_TIMEOUT, allow_redirects=False)
            except requests.RequestException as exc:
                return f"self-check: nginx at {base} did not answer for {domain} ({type(exc).__name__})"
            if answer.status_code != 200 or answer.text.strip() != body:
                return (
                    f"self-check: nginx at {base} did not serve the webroot for {domain} "
                    f"(HTTP {answer.status_code}); is {self.settings.webroot} shared with nginx?"
                )
        return ""

    def run_certbot(self, request: CertRequest, *, force: bool) -> str:
        """Run certbot for one certificate; '' on success, certbot's reason otherwise."""
        env = dict(os.environ)
        if self.settings.ca_bundle:
            env["REQUESTS_CA_BUNDLE"] = self.settings.ca_bundle
        try:
            with self.process_lock:
                if self.stopping.is_set():
                    return "stopped before certbot ran"
                self.process = subprocess.Popen(
                    certbot_command(self.settings, request, force=force),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    env=env,
                    start_new_session=True,
                )
            output, _ = self.process.communicate(timeout=CERTBOT_TIMEOUT)
            code = self.process.returncode
        except subprocess.TimeoutExpired:
            self.process.kill()
            return f"certbot did not finish within {CERTBOT_TIMEOUT}s"
        except OSError as exc:
            return f"cannot run certbot: {exc}"
        finally:
            self.process = None
        return certbot_reason(output) if code != 0 else ""
