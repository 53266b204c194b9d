"""A Docker socket proxy for tests: a threaded unix-socket server forwarding to the real daemon's socket.

It is also an API allow-list, like the socket proxies users put in front of the companion: every HTTP
request going client -> daemon is parsed (keep-alive, bodies by Content-Length or chunked, upgraded
connections passed through raw), recorded as ``(method, path)`` with the API version prefix
(``/v1.41``) and the query string removed, and forwarded only when an allow rule matches; any other
request gets ``403 Forbidden`` and the connection is closed. Responses flow back unparsed, so
streams such as ``GET /events`` work as they do on the real socket.

``allowlist_from_readme()`` reads the rules from README.md's "Docker API calls" table.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

DOCKER_SOCKET = "/var/run/docker.sock"
MAX_HEAD = 64 * 1024
VERSION_PREFIX = re.compile(r"^/v\d+(?:\.\d+)*(?=/)")
README_CALL = re.compile(r"`(GET|POST|PUT|DELETE|HEAD) (/[^`\s]*)`")


@dataclass(frozen=True)
class Rule:
    """One allowed call: a method, a path pattern (``{id}`` is one path segment), required query values."""

    method: str
    pattern: str
    query: tuple[tuple[str, str], ...] = ()

    def matches(self, method: str, path: str, query: str | None = None) -> bool:
        """True for this call; ``query=None`` ignores the required query values (paths recorded bare)."""
        if method != self.method:
            return False
        regex = "^" + re.sub(r"\\\{[a-z_]+\\\}", "[^/]+", re.escape(self.pattern)) + "$"
        if not re.match(regex, path):
            return False
        if query is None:
            return True
        given = parse_qsl(query, keep_blank_values=True)
        return all(pair in given for pair in self.query)

    def __str__(self) -> str:
        query = "&".join(f"{k}={v}" for k, v in self.query)
        return f"{self.method} {self.pattern}" + (f"?{query}" if query else "")


def allowlist_from_readme(readme: str | os.PathLike[str]) -> list[Rule]:
    """The rules in README.md's "## Docker API calls" section (every `METHOD /path` in it)."""
    text = Path(readme).read_text()
    match = re.search(r"^## Docker API calls\n(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
    if match is None:
        raise ValueError(f"{readme} has no '## Docker API calls' section")
    rules = []
    for method, target in README_CALL.findall(match.group(1)):
        parts = urlsplit(target)
        rules.append(Rule(method, parts.path, tuple(parse_qsl(parts.query, keep_blank_values=True))))
    if not rules:
        raise ValueError(f"no `METHOD /path` entries in {readme}'s Docker API calls section")
    return rules


def strip_version(path: str) -> str:
    """``/v1.41/containers/json`` -> ``/containers/json``."""
    return VERSION_PREFIX.sub("", path)


class _Closed(Exception):
    """The client closed the connection (possibly in the middle of a request)."""


class _Reader:
    """Buffered reads from a socket: up to a delimiter, or an exact number of bytes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise _Closed
        self.buffer += data

    def until(self, delimiter: bytes, limit: int = MAX_HEAD) -> bytes:
        while delimiter not in self.buffer:
            if len(self.buffer) > limit:
                raise ValueError("request head too large")
            self._fill()
        index = self.buffer.index(delimiter) + len(delimiter)
        data, self.buffer = self.buffer[:index], self.buffer[index:]
        return data

    def exactly(self, count: int) -> Iterable[bytes]:
        """Yield the next ``count`` bytes in pieces, without holding a large body in memory."""
        while count > 0:
            if not self.buffer:
                self._fill()
            piece, self.buffer = self.buffer[:count], self.buffer[count:]
            count -= len(piece)
            yield piece

    def rest(self) -> Iterable[bytes]:
        if self.buffer:
            data, self.buffer = self.buffer, b""
            yield data
        while True:
            data = self.sock.recv(65536)
            if not data:
                return
            yield data


class DockerSocketProxy:
    """Listen on ``path`` and forward allowed requests to ``upstream``; see the module docstring.

    ``calls`` holds every ``(method, path)`` seen (allowed or not), ``rejected`` the refused ones.
    ``allow=None`` forwards everything (recording only).
    """

    def __init__(self, path: str | os.PathLike[str], upstream: str = DOCKER_SOCKET, allow: list[Rule] | None = None):
        self.path = str(path)
        self.upstream = upstream
        self.allow = allow
        self.calls: list[tuple[str, str]] = []
        self.rejected: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.connections = 0
        self._lock = threading.Lock()
        self._server: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> DockerSocketProxy:
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(self.path)
        os.chmod(self.path, 0o660)
        server.listen(64)
        self._server = server
        self._thread = threading.Thread(target=self._accept, name="socketproxy-accept", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            with contextlib.suppress(OSError):
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(5)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def __enter__(self) -> DockerSocketProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- observation -------------------------------------------------------------------------------
    def distinct_calls(self) -> list[str]:
        """Observed calls with container/exec ids folded into ``{id}``, sorted and deduplicated."""
        with self._lock:
            calls = list(self.calls)
        folded = {(m, re.sub(r"^/(containers|exec)/(?!json$)[^/]+", r"/\1/{id}", p)) for m, p in calls}
        return sorted(f"{m} {p}" for m, p in folded)

    def permitted(self, method: str, path: str, query: str = "") -> bool:
        return self.allow is None or any(rule.matches(method, path, query) for rule in self.allow)

    # -- forwarding --------------------------------------------------------------------------------
    def _accept(self) -> None:
        assert self._server is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(client,), name="socketproxy-conn", daemon=True).start()

    def _track(self, *socks: socket.socket) -> None:
        with self._lock:
            self._open.update(socks)

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._track(client, upstream)
        try:
            upstream.connect(self.upstream)
        except OSError as exc:
            self._note(f"cannot connect to {self.upstream}: {exc}")
            self._close(client, upstream)
            return
        back = threading.Thread(target=self._pipe_back, args=(upstream, client), name="socketproxy-back", daemon=True)
        back.start()
        try:
            self._requests(_Reader(client), client, upstream)
        except (_Closed, OSError):
            pass
        except ValueError as exc:
            self._note(f"unparsable request: {exc}")
            self._send_error(client, 400, "Bad Request", str(exc))
        finally:
            # Half-close towards the daemon so a response in flight still reaches the client.
            with contextlib.suppress(OSError):
                upstream.shutdown(socket.SHUT_WR)
            back.join(60)
            self._close(client, upstream)

    def _requests(self, reader: _Reader, client: socket.socket, upstream: socket.socket) -> None:
        """Forward requests one by one until the client closes, a request is refused or it upgrades."""
        while True:
            head = reader.until(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            try:
                method, target, _version = lines[0].split(" ", 2)
            except ValueError:
                raise ValueError(f"bad request line {lines[0][:100]!r}") from None
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            parts = urlsplit(target)
            path = strip_version(parts.path)
            with self._lock:
                self.calls.append((method, path))
            if not self.permitted(method, path, parts.query):
                with self._lock:
                    self.rejected.append((method, path))
                self._send_error(client, 403, "Forbidden", f"{method} {path} is not allowed by the socket proxy")
                return
            upstream.sendall(head)
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self._forward_chunked(reader, upstream)
            else:
                length = int(headers.get("content-length") or 0)
                for piece in reader.exactly(length):
                    upstream.sendall(piece)
            if "upgrade" in headers.get("connection", "").lower():
                # Hijacked stream (exec/attach): from here on the bytes are not HTTP any more.
                for piece in reader.rest():
                    upstream.sendall(piece)
                return

    @staticmethod
    def _forward_chunked(reader: _Reader, upstream: socket.socket) -> None:
        while True:
            size_line = reader.until(b"\r\n", limit=1024)
            upstream.sendall(size_line)
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                # Optional trailers, then the empty line that ends the body.
                while True:
                    trailer = reader.until(b"\r\n")
                    upstream.sendall(trailer)
                    if trailer == b"\r\n":
                        return
            for piece in reader.exactly(size + 2):  # the chunk and its CRLF
                upstream.sendall(piece)

    @staticmethod
    def _pipe_back(upstream: socket.socket, client: socket.socket) -> None:
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                client.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_WR)

    @staticmethod
    def _send_error(client: socket.socket, code: int, reason: str, message: str) -> None:
        body = (message + "\n").encode()
        head = (
            f"HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        with contextlib.suppress(OSError):
            client.sendall(head + body)
            client.shutdown(socket.SHUT_RDWR)

    def _note(self, error: str) -> None:
        with self._lock:
            self.errors.append(error)

    def _close(self, *socks: socket.socket) -> None:
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.close()
        with self._lock:
            self._open.difference_update(socks)
