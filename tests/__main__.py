"""The one test command (README.md prints it, .ci/run runs it): ``python -m tests [pytest options]``.

1. the layers contract (import-linter, pyproject.toml) and the unit tier (pure, a few seconds); a failure stops
   here, before any real part is started;
2. every image the tests use, built (or found cached) before any test runs: a build starts containers on the
   shared daemon, which the companions under test would see;
3. the integration and e2e tiers in parallel (pytest-xdist, ``--dist loadgroup``): tests/conftest.py puts every
   test that uses the shared Docker daemon in one group (one worker, one at a time), the Swarm tests (their own
   daemons) in another, and spreads the tests that need neither over the remaining workers;
4. the tests marked ``exclusive`` (they restart the shared dockerd), alone.

``TEST_WORKERS`` sets the number of xdist workers (default 2 on a 2-core machine, else 3: the shared-daemon lane,
the Swarm lane, the rest); ``TEST_WORKERS=0`` runs everything in one process.
Extra arguments go to every pytest run. The exit status is the first failing step's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
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


def build_images() -> None:
    """Every image the integration and e2e tiers use, built unless cached (each build takes e2e/images/build.py's
    file lock, as the fixtures do, so a second run on the machine waits instead of building twice)."""
    sys.path.insert(0, str(ROOT))
    from tests.harness.appimage import ensure_app_image
    from tests.harness.dockerd import ensure_dockerd
    from tests.harness.e2e import load_build

    started = time.monotonic()
    client = ensure_dockerd().client()
    build = load_build()
    refs = {"app": ensure_app_image(client)}
    refs.update(build.ensure_quickstart_images(client))
    refs.update(build.ensure_proxy_images(client))
    refs["companion"] = build.ensure_companion_image(client)
    refs["agent"] = build.ensure_agent_image(client)
    client.close()
    names = " ".join(sorted(set(refs.values())))
    print(f"\n==== images ready after {time.monotonic() - started:.0f}s: {names}", flush=True)


def main(argv: list[str]) -> int:
    # two lanes on two cores: the shared-daemon lane (the longest) and one for the Swarm and everything else;
    # a third lane there only took CPU from the longest one
    workers = int(os.environ.get("TEST_WORKERS", "2" if (os.cpu_count() or 2) <= 2 else "3"))
    started = time.monotonic()
    status = subprocess.call([str(Path(sys.executable).with_name("lint-imports"))], cwd=ROOT)
    if status:
        print("layers contract broken (lint-imports): tests not run", flush=True)
        return status
    status = _pytest("tests/unit", *argv)
    if status:
        print("unit tier failed: integration and e2e tiers not run", flush=True)
        return status
    build_images()
    # a short base folder: unix socket paths under tmp_path must stay within 107 bytes with xdist's popen-gwN/
    basetemp = tempfile.mkdtemp(prefix="ct-")
    parallel = ["-n", str(workers), "--dist", "loadgroup", "--no-loadscope-reorder"]
    statuses = [
        _pytest(
            *REAL_TIERS,
            *(parallel if workers > 0 else ["-p", "no:xdist"]),
            f"--basetemp={basetemp}/p",
            "-m",
            "not exclusive",
            *argv,
        ),
        _pytest(*REAL_TIERS, "-p", "no:xdist", f"--basetemp={basetemp}/x", "-m", "exclusive", *argv),
    ]
    status = next((s for s in statuses if s not in (0, NO_TESTS)), 0)
    if status == 0:
        shutil.rmtree(basetemp, ignore_errors=True)
    print(f"==== all tiers: exit {status} after {time.monotonic() - started:.0f}s", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
