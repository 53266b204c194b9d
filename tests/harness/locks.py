"""File locks for set-up that must happen once while several pytest-xdist workers (or runs) share a machine."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

# Machine-wide locks (one daemon, one set of Swarm nodes): in /var/tmp, like e2e/images/build.py's build lock.
LOCK_DIR = Path(os.environ.get("COMPANION_TEST_LOCK_DIR", "/var/tmp"))


@contextlib.contextmanager
def file_lock(name: str | Path) -> Iterator[None]:
    """Hold an exclusive flock on ``LOCK_DIR/companion-test-<name>.lock`` (or on the path given) while inside."""
    path = Path(name) if isinstance(name, Path) else LOCK_DIR / f"companion-test-{name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
