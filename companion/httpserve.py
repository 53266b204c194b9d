"""The HTTP server both of the companion's listeners use (the status endpoint and the cluster channel).

One thread per connection, but a fixed number of them: a client that opens connections without end
gets the extra ones closed at once instead of exhausting the process. Connection errors are a client's
business and go to the debug log only.
"""

from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)


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
