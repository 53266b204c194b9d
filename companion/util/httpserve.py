"""The companion's HTTP servers: CappedServer (the cluster channel) and GatheringServer (the status endpoint
and the control socket).

CappedServer runs one thread per connection, but a fixed number of them: a client that opens connections
without end gets the extra ones closed at once instead of exhausting the process. It suits long polls by
clients that prove who they are in the TLS handshake. GatheringServer reads every request in one selector
thread under a whole-request deadline, so clients that trickle bytes cost no thread and cannot hold the
slots a health check needs. Connection errors are a client's business and go to the debug log only.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)

INLINE_WRITE = 0.5  # seconds an answer given in the selector thread may take to send (a few hundred bytes)


class CappedServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer on IPv4 or IPv6 (by the address) serving at most `max_clients` at once."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], max_clients: int, label: str
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.max_clients = max_clients
        self.label = label
        self.slots = threading.BoundedSemaphore(max_clients)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            log.debug("%s: %d connections open; closing one from %s", self.label, self.max_clients, client_address)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("%s: connection from %s failed", self.label, client_address, exc_info=True)


@dataclass
class Gathered:
    """One connection: its request as read so far, and when it must be done (request read and answered)."""

    sock: socket.socket
    address: Any
    deadline: float
    data: bytearray = field(default_factory=bytearray)
    refusal: str = ""  # set at accept: answer 403 with this once the request is in, run no handler


class _DeadlineWriter(io.RawIOBase):
    """The answer stream: each write waits at most until the connection's deadline, however slow the reader."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the connection's deadline passed")
        self.sock.settimeout(left)
        self.sock.sendall(data)  # since Python 3.5 the timeout bounds the whole sendall
        return len(data)


class GatheredHandler(BaseHTTPRequestHandler):
    """A handler for a request already read whole by a GatheringServer: one request per connection."""

    def setup(self) -> None:
        gathered: Gathered = self.request
        self.connection = gathered.sock
        self.rfile = io.BytesIO(bytes(gathered.data))
        self.wfile = _DeadlineWriter(gathered.sock, gathered.deadline)  # type: ignore[assignment]

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()

    def finish(self) -> None:
        """Nothing buffered to flush; the server closes the socket."""


def canned(code: int, reason: str, body: bytes, kind: str = "text/plain; charset=utf-8") -> bytes:
    """A whole HTTP/1.0 answer, for the server's own refusals (no handler runs for them)."""
    head = f"HTTP/1.0 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
    return head.encode() + b"Cache-Control: no-store\r\n\r\n" + body


_HEAD_END = re.compile(rb"\r?\n\r?\n")
_CONTENT_LENGTH = re.compile(rb"\r?\ncontent-length:[ \t]*([0-9]{1,12})[ \t]*\r?\n", re.IGNORECASE)


class GatheringServer:
    """An HTTP server where slow clients cost a buffer, not a thread, and cannot crowd out quick ones.

    One selector thread reads every connection's request (head, and a body up to `max_body` by its
    Content-Length) until it is whole or its deadline, `deadline` seconds after the connect, has passed
    (then 408). Only a whole request reaches a handler, run on a pool of `workers` threads, or at once in
    the selector thread when `inline(head)` says it is cheap (a health check: it never waits for a worker).
    At most `max_clients` connections are open; a new one beyond that closes the oldest still sending its
    request, which is the slowest, so a flood of slow clients cannot keep a quick one out.
    """

    def __init__(
        self,
        listener: socket.socket,
        handler: type[GatheredHandler],
        *,
        label: str,
        max_clients: int,
        workers: int,
        deadline: float,
        max_head: int,
        max_body: int = 0,
    ) -> None:
        self.listener = listener
        self.server_address = listener.getsockname()
        self.listener.setblocking(False)
        self.handler = handler
        self.label = label
        self.max_clients = max_clients
        self.deadline = deadline
        self.max_head = max_head
        self.max_body = max_body
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix=label)
        self.reading: dict[socket.socket, Gathered] = {}  # insertion order: oldest first
        self.answering = 0  # connections handed to a handler, not yet closed
        self.lock = threading.Lock()
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = threading.Event()
        self._stopped = threading.Event()

    # -- what subclasses decide ---------------------------------------------------------------------

    def admit(self, sock: socket.socket) -> str:
        """Why this peer may not ask anything ('' when it may); it is answered 403 with the reason."""
        return ""

    def inline(self, head: bytes) -> bool:
        """Whether this request is cheap enough to answer in the selector thread, ahead of every worker."""
        return False

    # -- the loop ----------------------------------------------------------------------------------

    def serve_forever(self) -> None:
        self.selector.register(self.listener, selectors.EVENT_READ)
        self.selector.register(self._wake_r, selectors.EVENT_READ)
        try:
            while not self._stopping.is_set():
                soonest = min((g.deadline for g in self.reading.values()), default=None)
                wait = None if soonest is None else max(0.0, soonest - time.monotonic())
                for key, _ in self.selector.select(wait):
                    if key.fileobj is self.listener:
                        self._accept()
                    elif key.fileobj is not self._wake_r and key.fileobj in self.reading:  # not dropped meanwhile
                        self._read(self.reading[key.fileobj])  # type: ignore[index]
                self._expire()
        finally:
            for gathered in list(self.reading.values()):
                self._drop(gathered)
            self.selector.close()
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop the loop and wait for it, as socketserver's shutdown does; handlers still running finish."""
        self._stopping.set()
        self._wake_w.send(b"x")
        self._stopped.wait()
        self.pool.shutdown(wait=False)

    def server_close(self) -> None:
        self.listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def _accept(self) -> None:
        while True:
            try:
                sock, address = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, say: the loop goes on
                log.debug("%s: accept failed: %s", self.label, exc)
                return
            with self.lock:
                full = len(self.reading) + self.answering >= self.max_clients
            if full and self.reading:
                oldest = next(iter(self.reading.values()))
                log.debug("%s: %d connections open; closing the oldest unfinished one", self.label, self.max_clients)
                self._drop(oldest)
            elif full:
                log.debug("%s: %d connections being answered; closing a new one", self.label, self.max_clients)
                sock.close()
                continue
            sock.setblocking(False)
            gathered = Gathered(sock, address, time.monotonic() + self.deadline)
            try:
                gathered.refusal = self.admit(sock)
            except OSError as exc:
                gathered.refusal = f"cannot tell who connected: {exc.strerror or exc}"
            self.reading[sock] = gathered
            self.selector.register(sock, selectors.EVENT_READ)

    def _read(self, gathered: Gathered) -> None:
        try:
            chunk = gathered.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(gathered)
            return
        gathered.data += chunk
        end = _HEAD_END.search(gathered.data)
        if end is None:
            if len(gathered.data) > self.max_head:
                self._refuse(gathered, canned(431, "Request Header Fields Too Large", b"request too large\n"))
            return
        if end.end() > self.max_head:
            self._refuse(gathered, canned(431, "Request Header Fields Too Large", b"request too large\n"))
            return
        head = bytes(gathered.data[: end.end()])
        length = _CONTENT_LENGTH.search(b"\r\n" + head)
        wanted = int(length.group(1)) if length else 0
        if wanted <= self.max_body and len(gathered.data) < end.end() + wanted:
            return  # the body is still coming (one too large is left to the handler to refuse unread)
        if gathered.refusal:
            body = (json.dumps({"error": gathered.refusal}) + "\n").encode()
            self._refuse(gathered, canned(403, "Forbidden", body, "application/json"))
            return
        self._release(gathered)
        gathered.sock.setblocking(True)
        if self.inline(head):
            gathered.deadline = min(gathered.deadline, time.monotonic() + INLINE_WRITE)
            self._answer(gathered)
        else:
            with self.lock:
                self.answering += 1
            self.pool.submit(self._work, gathered)

    def _work(self, gathered: Gathered) -> None:
        try:
            self._answer(gathered)
        finally:
            with self.lock:
                self.answering -= 1

    def _answer(self, gathered: Gathered) -> None:
        try:
            self.handler(gathered, gathered.address, self)
        except Exception:  # noqa: BLE001 - a client's failure, never the server's
            log.debug("%s: answering %s failed", self.label, gathered.address, exc_info=True)
        finally:
            _close(gathered.sock)

    def _expire(self) -> None:
        now = time.monotonic()
        for gathered in [g for g in self.reading.values() if g.deadline <= now]:
            log.debug("%s: %s did not send its request within %ss", self.label, gathered.address, self.deadline)
            self._refuse(gathered, canned(408, "Request Timeout", b"request not received in time\n"))

    def _refuse(self, gathered: Gathered, answer: bytes) -> None:
        """Send the server's own short answer without waiting (what does not fit is lost) and close."""
        with contextlib.suppress(OSError):
            gathered.sock.send(answer)
        self._drop(gathered)

    def _release(self, gathered: Gathered) -> None:
        self.selector.unregister(gathered.sock)
        del self.reading[gathered.sock]

    def _drop(self, gathered: Gathered) -> None:
        self._release(gathered)
        _close(gathered.sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def tcp_listener(address: tuple[str, int], backlog: int = 128) -> socket.socket:
    """A listening TCP socket on IPv4 or IPv6 (by the address), reusable at once after a restart."""
    sock = socket.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock
