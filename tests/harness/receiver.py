"""A notification receiver on loopback: what Apprise's `json://127.0.0.1:PORT` posts, kept for the test to count."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """Answers every POST with `status` (200 unless the test says otherwise) and keeps the JSON bodies."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.status = 200
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.messages.append({"status": receiver.status, **json.loads(body)})
                    status = receiver.status
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.server.server_address[1]}"

    def delivered(self, about: str = "") -> list[dict[str, Any]]:
        """Messages answered with 200 whose title or body mention `about`."""
        with self.lock:
            return [
                m
                for m in self.messages
                if m["status"] == 200 and about in m.get("title", "") + " " + m.get("message", "")
            ]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
