"""Hardening: containers churning while stable sites carry traffic through nginx.

Nothing may fail for the stable sites while the companion rewrites and reloads the configuration for
the churning ones, and nginx's old worker generations (left behind by each graceful reload while they
finish their connections) must not pile up beyond what the reload rate explains.
"""

from __future__ import annotations

import http.client
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.harness.appimage import AppRunner
from tests.harness.companion import Companion
from tests.harness.nginx import HostNginx
from tests.harness.wait import wait_until

pytestmark = pytest.mark.integration

STABLE = 5
CYCLES = 50
CHURNERS = 2  # threads sharing the cycles (in step: CYCLES must divide evenly)
PAUSE = 0.6  # seconds after each churn step; longer than the companion's 0.5 s debounce quiet period
LOADERS = 4
SLOW_LOADERS = 2  # clients that take SLOW_PAUSE between the first and the last header line
SLOW_PAUSE = 1.0
REQUEST_TIMEOUT = 5.0
MAX_REQUESTS = 40_000
MAX_SECONDS = 75.0
# An old generation lives until its last request is answered: at most REQUEST_TIMEOUT after its reload
# (a slow request is answered about SLOW_PAUSE after it began).
OLD_WORKER_WINDOW = REQUEST_TIMEOUT + 1.0


def get(port: int, host: str) -> tuple[int, str]:
    """One request on a new connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        conn.request("GET", "/", headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read().decode(errors="replace").strip()
    finally:
        conn.close()


def slow_get(port: int, host: str) -> tuple[int, str]:
    """One request whose headers take SLOW_PAUSE to arrive: in flight across reloads, it keeps an old
    worker generation busy until it is answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT) as sock:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n".encode())
        time.sleep(SLOW_PAUSE)
        sock.sendall(b"Connection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/1.") else 0
    return status, payload.decode(errors="replace").strip()


class Load:
    """A few threads sending requests round-robin to the stable sites until stopped or bounded."""

    def __init__(self, port: int, sites: dict[str, str]) -> None:
        self.port = port
        self.sites = list(sites.items())
        self.sent = 0
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.deadline = time.monotonic() + MAX_SECONDS
        self.threads = [threading.Thread(target=self._run, args=(i, False), daemon=True) for i in range(LOADERS)]
        self.threads += [threading.Thread(target=self._run, args=(i, True), daemon=True) for i in range(SLOW_LOADERS)]

    def _run(self, offset: int, slow: bool) -> None:
        n = offset
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            with self.lock:
                if self.sent >= MAX_REQUESTS:
                    return
                self.sent += 1
            host, expected = self.sites[n % len(self.sites)]
            n += 1
            try:
                result = slow_get(self.port, host) if slow else get(self.port, host)
                if result != (200, expected):
                    raise AssertionError(f"got {result}")
            except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                with self.lock:
                    self.failures.append(f"{time.monotonic():.3f} {host}: {type(exc).__name__}: {exc}")
            time.sleep(0.005)

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


class WorkerSampler:
    """Every ~100 ms: nginx's old workers (children of the master saying "shutting down") and the
    companion's reload count, as a timeline."""

    def __init__(self, nginx: HostNginx, companion: Companion) -> None:
        self.nginx = nginx
        self.companion = companion
        self.samples: list[tuple[float, int, int, int]] = []  # (time, old workers, all workers, reloads)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def old_workers(self) -> tuple[int, int]:
        pids = self.nginx.worker_pids()
        old = 0
        for pid in pids:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            old += "shutting down" in cmdline
        return old, len(pids)

    def _run(self) -> None:
        while not self.stop.is_set():
            old, total = self.old_workers()
            self.samples.append((time.monotonic(), old, total, self.companion.reloads()))
            self.stop.wait(0.1)

    def __enter__(self) -> WorkerSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def reloads_before(self, when: float) -> int:
        """The reload count at the last sample taken at or before `when` (0 before the first)."""
        count = 0
        for t, _, _, reloads in self.samples:
            if t > when:
                break
            count = reloads
        return count

    def excess(self) -> list[str]:
        """Samples with more old workers than reloads in the preceding window (nginx runs 1 worker)."""
        bad = []
        for t, old, _, reloads in self.samples:
            allowed = reloads - self.reloads_before(t - OLD_WORKER_WINDOW)
            if old > allowed:
                bad.append(f"t={t:.1f}: {old} old workers, {allowed} reloads in the last {OLD_WORKER_WINDOW}s")
        return bad


def test_churn_under_traffic_fails_no_request_and_old_workers_stay_bounded(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion]
) -> None:
    tag = uuid.uuid4().hex[:6]
    # Only this test's names: other tests' containers on the shared daemon cannot add reloads here.
    companion = make_companion(ALLOWED_DOMAINS=f"*.{tag}.churn.test", LOG_LEVEL="INFO")
    sites = {f"stable{i}.{tag}.churn.test": f"stable{i}" for i in range(STABLE)}
    with ThreadPoolExecutor(STABLE) as pool:
        for future in [
            pool.submit(apps, f"stable{i}", environment={"VIRTUAL_HOST": h, "APP_ID": a})
            for i, (h, a) in enumerate(sites.items())
        ]:
            future.result()
    for host, app_id in sites.items():
        wait_until(lambda h=host, a=app_id: get(host_nginx.http_port, h) == (200, a), what=f"{host} routed")
    companion.wait_idle()
    reloads_before = companion.reloads()
    log_mark = len(companion.log())
    churned: list[str] = []
    # The churners move in step: their starts (and then their removals) land in one debounce window, and
    # the pause after each lets the companion's quiet period expire, so every step costs a real reload.
    assert CYCLES % CHURNERS == 0
    step = threading.Barrier(CHURNERS, timeout=60)

    def churn(worker: int) -> None:
        for cycle in range(worker, CYCLES, CHURNERS):
            host = f"churn{cycle}.{tag}.churn.test"
            step.wait()
            container = apps(f"churn{cycle}", environment={"VIRTUAL_HOST": host, "APP_ID": host}, wait=False)
            time.sleep(PAUSE)
            step.wait()
            container.remove(force=True, v=True)
            churned.append(host)
            time.sleep(PAUSE)

    started = time.monotonic()
    with WorkerSampler(host_nginx, companion) as sampler, Load(host_nginx.http_port, sites) as load:
        with ThreadPoolExecutor(CHURNERS) as pool:
            for future in [pool.submit(churn, w) for w in range(CHURNERS)]:
                future.result()
        churn_time = time.monotonic() - started
        companion.wait_idle(quiet=1.5, timeout=40)
        # Let the last generation retire while traffic goes on.
        wait_until(lambda: sampler.old_workers()[0] == 0, timeout=10, what="old workers gone")
        time.sleep(0.5)
    total = time.monotonic() - started
    reloads = companion.reloads() - reloads_before
    max_old = max(old for _, old, _, _ in sampler.samples)
    print(
        f"\nrow 8: {CYCLES} churn cycles in {churn_time:.1f}s ({total:.1f}s with settling); requests sent "
        f"{load.sent}, failed {len(load.failures)}; nginx reloads {reloads}; max old workers {max_old} "
        f"({len(sampler.samples)} samples)"
    )
    assert len(churned) == CYCLES
    assert load.failures == [], f"{len(load.failures)} of {load.sent} failed: {load.failures[:10]}"
    assert load.sent >= 1000, f"too little traffic to mean anything ({load.sent})"
    assert reloads >= CYCLES // 5, f"the churn caused only {reloads} reloads"
    assert len(sampler.samples) >= total / 0.2, "the sampler fell behind"
    assert sampler.excess() == []
    # Debounced bursts: never more reloads than churn events, and old generations do not accumulate.
    assert reloads <= 2 * CYCLES
    assert max_old <= reloads
    for host, app_id in sites.items():
        assert get(host_nginx.http_port, host) == (200, app_id)
    # No pass ever dropped a stable site from the configuration.
    applied = [int(n) for n in re.findall(r"applied [^\n]*\((\d+) sites\)", companion.log()[log_mark:])]
    assert applied and min(applied) >= STABLE, applied
