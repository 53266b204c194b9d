"""The control socket: `companion renew` asks the running service to order, so there is one ordering path.

A unix socket in the companion's own container (CONTROL_SOCKET, /run/companion/control.sock; its folder
0700, the socket 0600), never in the certs volume: nginx's container mounts that one, and a read-only mount
does not stop a connect. The peer is checked too (SO_PEERCRED): the service's own user or root, in the
service's own PID namespace, so a process of another container is refused even if the socket is put
where it can see it. Connections are capped and each has a whole-request deadline; `POST /renew` is all
it answers, and the orders it queues are rate-limited (orderlimit.OrderLimit, applied in AcmeManager.order_now).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from companion.util.httpserve import GatheredHandler, GatheringServer
from companion.util.logsafe import printable

log = logging.getLogger(__name__)

OLD_SOCKET = "companion/control.sock"  # where it was, in the certs dir: removed when found
CLIENT_TIMEOUT = 5.0  # seconds from the connect to send the whole request and read the answer
MAX_HEAD = 16 * 1024
MAX_BODY = 64 * 1024
MAX_NAMES = 1000
MAX_NAME = 255
MAX_CLIENTS = 16  # connections open at once; one more closes the oldest still sending its request
WORKERS = 2
BACKLOG = 128  # connects waiting to be accepted; the loop accepts them all and closes the oldest unfinished
REFUSAL_LOG_INTERVAL = 60.0

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


def peer_problem(pid: int, uid: int, own_uid: int, same_namespace: Callable[[int], bool]) -> str:
    """Why a peer with these credentials may not order ('' when it may).

    The kernel reports pid 0 for a peer in a PID namespace that is not ours or below it (another
    container); a peer below ours (a container started from the host the service runs on) has a pid, so its
    namespace is compared too. Root is let in beside the service's own user: root in the same PID namespace
    could trace the service anyway."""
    if pid == 0:
        return "refused: the peer is in another PID namespace (another container)"
    if uid not in (own_uid, 0):
        return f"refused: uid {uid} is neither the service's ({own_uid}) nor root"
    if not same_namespace(pid):
        return "refused: the peer is in another PID namespace (another container)"
    return ""


def same_pid_namespace(pid: int) -> bool:
    """Whether process `pid` shares our PID namespace; False when that cannot be read."""
    try:
        return os.readlink(f"/proc/{pid}/ns/pid") == os.readlink("/proc/self/ns/pid")
    except OSError:
        return False


class _Handler(GatheredHandler):
    server: ControlServer  # type: ignore[assignment]
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


class ControlServer(GatheringServer):
    def __init__(self, path: Path, order: Order) -> None:
        self.path = path
        self.order = order
        self.quiet_until = 0.0  # no refusal logged before this (monotonic)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(path))
            os.chmod(path, 0o600)  # before listen(): until then a connect is refused, so nobody gets in early
            listener.listen(BACKLOG)
        except OSError:
            listener.close()
            raise
        super().__init__(
            listener,
            _Handler,
            label="control",
            max_clients=MAX_CLIENTS,
            workers=WORKERS,
            deadline=CLIENT_TIMEOUT,
            max_head=MAX_HEAD,
            max_body=MAX_BODY,
        )

    def admit(self, sock: socket.socket) -> str:
        pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        problem = peer_problem(pid, uid, os.geteuid(), same_pid_namespace)
        now = time.monotonic()
        if problem and now >= self.quiet_until:  # one line a minute at most, however fast it knocks
            self.quiet_until = now + REFUSAL_LOG_INTERVAL
            log.warning("control socket: %s (pid %d, uid %d)", problem, pid, uid)
        return problem

    def stop(self) -> None:
        """Stop serving and remove the socket, so a later `renew` does not take it for a service."""
        self.shutdown()
        self.server_close()
        self.path.unlink(missing_ok=True)


def answers(path: Path) -> bool:
    """Whether something accepts connections on the socket at `path` (another companion)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(CLIENT_TIMEOUT)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def socket_dir(path: Path) -> Path:
    """The socket's folder, made 0700 when missing; a link or another user's folder is refused."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.parent.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise OSError(f"{path.parent} is not a folder of this user's")
    if info.st_mode & 0o022:
        raise OSError(f"{path.parent} is writable by others")
    return path.parent


def remove_old_socket(certs_dir: Path) -> None:
    """A socket left in the certs dir by an older version: nginx's container could still reach it."""
    old = certs_dir / OLD_SOCKET
    try:
        if stat.S_ISSOCK(old.lstat().st_mode):
            old.unlink()
            log.info("removed the old control socket %s (it now lives outside the certs volume)", old)
    except OSError:
        pass  # none there


def start_control_server(path: Path, certs_dir: Path, order: Order) -> ControlServer | None:
    """Listen on the control socket in a daemon thread; None (logged) when it cannot, and `renew` then runs
    its own certbot."""
    remove_old_socket(certs_dir)
    try:
        socket_dir(path)
        if answers(path):
            log.error("another companion answers on %s; this one takes no `companion renew`", path)
            return None
        if path.is_symlink() or (path.exists() and not stat.S_ISSOCK(path.lstat().st_mode)):
            raise OSError(f"{path} is there and is not a socket")
        path.unlink(missing_ok=True)  # a socket left by a killed companion
        server = ControlServer(path, order)
    except OSError as exc:
        log.error("cannot listen on the control socket %s: %s", path, exc.strerror or exc)
        return None
    threading.Thread(target=server.serve_forever, name="control", daemon=True).start()
    log.info("control socket %s (`companion renew` orders through the service)", path)
    return server
