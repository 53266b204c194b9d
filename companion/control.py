"""The control socket: `companion renew` asks the running service to order, so there is one ordering path.

A unix socket in the certs dir's companion/ folder (that folder 0700, the socket 0600): only the service's
own user reaches it, unlike the status address, which is read-only and may be published. One request per
connection, a timeout on each, a bounded body; `POST /renew` is all it answers.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from .logsafe import printable
from .safefiles import real_dir

log = logging.getLogger(__name__)

SOCKET = "companion/control.sock"
CLIENT_TIMEOUT = 5.0
MAX_BODY = 64 * 1024
MAX_NAMES = 1000
MAX_NAME = 255

Order = Callable[[Sequence[str], bool], dict[str, str]]


def parse_renew(data: bytes) -> tuple[list[str], bool]:
    """`{"names": [...], "force": bool}`; ValueError saying what is wrong."""
    body = json.loads(data)
    if not isinstance(body, dict) or set(body) != {"names", "force"}:
        raise ValueError('expected {"names": [...], "force": true|false}')
    names, force = body["names"], body["force"]
    if not isinstance(force, bool):
        raise ValueError("force must be true or false")
    if (
        not isinstance(names, list)
        or len(names) > MAX_NAMES
        or not all(isinstance(n, str) and 0 < len(n) <= MAX_NAME and n.isprintable() for n in names)
    ):
        raise ValueError(f"names must be a list of at most {MAX_NAMES} printable names")
    return names, force


class _Handler(BaseHTTPRequestHandler):
    server: ControlServer
    timeout = CLIENT_TIMEOUT
    server_version = "companion"
    sys_version = ""

    def do_POST(self) -> None:
        if self.path != "/renew":
            self._json(404, {"error": "not found"})
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            self._json(400, {"error": f"a JSON body of 1 to {MAX_BODY} bytes, with its Content-Length"})
            return
        try:
            names, force = parse_renew(self.rfile.read(length))
        except ValueError as exc:  # JSON and UTF-8 errors are ValueErrors too
            self._json(400, {"error": str(exc)})
            return
        self._json(200, {"orders": self.server.order(names, force)})

    def _json(self, code: int, value: object) -> None:
        data = json.dumps(value).encode() + b"\n"
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("control: %s", printable(format % args))  # a unix peer has no address to show


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, path: Path, order: Order) -> None:
        self.path = path
        self.order = order
        super().__init__(str(path), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("control: a request failed", exc_info=True)

    def stop(self) -> None:
        """Stop serving and remove the socket, so a later `renew` does not take it for a service."""
        self.shutdown()
        self.server_close()
        self.path.unlink(missing_ok=True)


def answers(path: Path) -> bool:
    """Whether something accepts connections on the socket at `path` (another companion on this certs dir)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(CLIENT_TIMEOUT)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def start_control_server(certs_dir: Path, order: Order) -> ControlServer | None:
    """Listen on the control socket in a daemon thread; None (logged) when it cannot, and `renew` then runs
    its own certbot."""
    try:
        path = real_dir(certs_dir, str(Path(SOCKET).parent)) / Path(SOCKET).name
        if answers(path):
            log.error("another companion answers on %s; this one takes no `companion renew`", path)
            return None
        path.unlink(missing_ok=True)  # a socket left by a killed companion (the entry, never a link's target)
        server = ControlServer(path, order)  # bound inside a 0700 folder: nobody else can connect before the chmod
        os.chmod(path, 0o600)
    except OSError as exc:
        log.error("cannot listen on the control socket in %s: %s", certs_dir, exc.strerror or exc)
        return None
    threading.Thread(target=server.serve_forever, name="control", daemon=True).start()
    log.info("control socket %s (`companion renew` orders through the service)", path)
    return server
