"""Shared helpers for the bench scripts: import path, statistics, and containers that are always removed."""

from __future__ import annotations

import atexit
import contextlib
import signal
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = str(ROOT / "bench")
# Run as ``python bench/x.py`` the bench folder is sys.path[0]; our acme.py/render.py must not shadow the
# real ``acme`` package (certbot) or anything else, and ``tests.harness`` must import from the repo root.
sys.path[:] = [p for p in sys.path if p != BENCH]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

NAME_PREFIX = "cbench-"
RUN_LABEL = "companion.bench"


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (pct in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil without floats
    return ordered[int(rank) - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def verdict(value: float, target: float) -> str:
    return "meets" if value < target else "MISSES"


def sigterm_as_exit() -> None:
    """Turn SIGTERM into SystemExit so `finally` blocks (container removal) run."""

    def handler(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


class Fleet:
    """Creates ``cbench-<run>-<n>`` app containers and force-removes every one of them at cleanup()."""

    def __init__(self, client: Any, image: str) -> None:
        self.client = client
        self.image = image
        self.run_id = uuid.uuid4().hex[:6]
        self.ids: list[str] = []
        self._lock = threading.Lock()
        self._count = 0
        atexit.register(self.cleanup)

    def name(self) -> str:
        with self._lock:
            self._count += 1
            return f"{NAME_PREFIX}{self.run_id}-{self._count}"

    def start(self, labels: dict[str, str], environment: dict[str, str]) -> tuple[str, float, float, float]:
        """Create and start one container; return (id, t_before_create, t_created, t_started) in time.time()."""
        name = self.name()
        t0 = time.time()
        created = self.client.api.create_container(
            self.image,
            name=name,
            labels={RUN_LABEL: self.run_id, **labels},
            environment=environment,
            detach=True,
        )
        cid = created["Id"]
        with self._lock:
            self.ids.append(cid)
        t1 = time.time()
        self.client.api.start(cid)
        return cid, t0, t1, time.time()

    def cleanup(self) -> None:
        """Remove every container of this run (tracked ids, and any left with this run's label)."""
        ids = set(self.ids)
        with contextlib.suppress(Exception):
            found = self.client.api.containers(all=True, filters={"label": f"{RUN_LABEL}={self.run_id}"})
            ids |= {c["Id"] for c in found}

        def remove(cid: str) -> None:
            with contextlib.suppress(Exception):
                self.client.api.remove_container(cid, force=True, v=True)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(remove, ids))
        self.ids.clear()
