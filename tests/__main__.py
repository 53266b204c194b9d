"""The one test command (README.md prints it, .ci/run runs it): ``python -m tests [pytest options]``.

1. the unit tier (pure, a few seconds); a failure stops here, before any real part is started;
2. the integration and e2e tiers in parallel (pytest-xdist, ``--dist loadgroup``: tests/conftest.py keeps the
   tests that share one thing, like the 3-node Swarm or a module's compose stack, on one worker);
3. the tests marked ``exclusive`` (they restart the shared dockerd), alone.

``TEST_WORKERS`` sets the number of xdist workers (default 4: most of the time goes to waiting on daemons,
nginx and certbot, not to this machine's CPUs); ``TEST_WORKERS=0`` runs everything in one process.
Extra arguments go to every pytest run. The exit status is the first failing step's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REAL_TIERS = ["tests/integration", "tests/e2e"]
NO_TESTS = 5  # pytest's exit status when nothing was collected (or everything was deselected)


def _pytest(*args: str) -> int:
    command = [sys.executable, "-m", "pytest", *args]
    print(f"\n==== {' '.join(command[1:])}", flush=True)
    started = time.monotonic()
    status = subprocess.call(command, cwd=ROOT)
    print(f"==== exit {status} after {time.monotonic() - started:.0f}s", flush=True)
    return status


def main(argv: list[str]) -> int:
    workers = int(os.environ.get("TEST_WORKERS", "4"))
    started = time.monotonic()
    status = _pytest("tests/unit", *argv)
    if status:
        print("unit tier failed: integration and e2e tiers not run", flush=True)
        return status
    parallel = (
        ["-n", str(workers), "--dist", "loadgroup", "--no-loadscope-reorder"] if workers > 0 else ["-p", "no:xdist"]
    )
    statuses = [
        _pytest(*REAL_TIERS, *parallel, "-m", "not exclusive", *argv),
        _pytest(*REAL_TIERS, "-p", "no:xdist", "-m", "exclusive", *argv),
    ]
    status = next((s for s in statuses if s not in (0, NO_TESTS)), 0)
    print(f"==== all tiers: exit {status} after {time.monotonic() - started:.0f}s", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
