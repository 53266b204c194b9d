"""Free loopback ports, race-free across the pytest-xdist workers of one run.

Ports are handed out from a range below the kernel's ephemeral range (``ip_local_port_range``, 32768+ by
default), so no ``bind(0)`` or outgoing connection of any process can take one between the probe and its use;
the range is split between the xdist workers (``PYTEST_XDIST_WORKER`` ``gwN`` of ``PYTEST_XDIST_WORKER_COUNT``),
so two workers never probe the same port, and each worker walks its slice in order, so a port that was just
released (and may still be in TIME_WAIT, or about to be bound by the server it was meant for) is not handed out
again soon. A port is probed before it is handed out, so something else listening there is skipped.
"""

from __future__ import annotations

import itertools
import os
import random
import socket
import threading
import time

RANGE_START, RANGE_END = 20000, 32000  # below Linux's default ephemeral range (32768-60999)


def _ephemeral_floor() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _slice() -> range:
    """This worker's slice of [RANGE_START, min(RANGE_END, ephemeral floor))."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    count = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1), index + 1)
    end = min(RANGE_END, _ephemeral_floor())
    if end - RANGE_START < 200 * count:  # an unusual ephemeral range: fall back to the whole high range
        start, end = 61000, 65000
    else:
        start = RANGE_START
    span = (end - start) // count
    return range(start + index * span, start + (index + 1) * span)


_lock = threading.Lock()
_ports: itertools.cycle[int] | None = None


def _next_candidate() -> int:
    global _ports
    with _lock:
        if _ports is None:
            ports = _slice()
            offset = random.randrange(len(ports))  # two runs one after the other do not start on the same port
            _ports = itertools.cycle([*ports[offset:], *ports[:offset]])
        return next(_ports)


def _free(port: int, udp: bool) -> bool:
    kinds = [socket.SOCK_STREAM, socket.SOCK_DGRAM] if udp else [socket.SOCK_STREAM]
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_port(udp: bool = False) -> int:
    """Return a port on 127.0.0.1 that is free for TCP (and for UDP too when ``udp`` is true) and that no
    other worker of this run will be handed (see the module's docstring)."""
    for _ in range(2000):
        port = _next_candidate()
        if _free(port, udp):
            return port
    raise RuntimeError("could not find a free port on 127.0.0.1")


def wait_tcp(host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until something accepts TCP connections on host:port, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError as exc:
            last = exc
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s ({last})")
