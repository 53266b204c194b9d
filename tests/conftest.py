"""Shared by every tier: the repository root on sys.path and Hypothesis's profile. No real part is imported
here, so the pure unit tier never loads Docker; the tiers that need real parts load tests.harness.fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import settings

# Hypothesis's per-example deadline is a timed assertion: on a loaded 2-core machine a slow example
# is noise, not a failure (speed is measured under bench/, never asserted in tests).
settings.register_profile("companion", deadline=None)
settings.load_profile("companion")

# make ``tests.harness`` importable however pytest was started (plain ``pytest`` does not add the cwd)
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


# -- running the real-part tiers in parallel (pytest-xdist, ``--dist loadgroup``; see tests/__main__.py) --------

# Session fixtures that stand for one shared thing on the machine: every test using one of them runs on the same
# worker (the fixture is then set up once per run), and those groups are handed out first, being the longest.
SHARED_FIXTURES = {"swarm_nodes": "swarm"}
# A test that takes the daemon itself (it restarts the shared dockerd) must run alone: tests/__main__.py runs
# tests marked `exclusive` after the parallel part, on one process.
EXCLUSIVE_FIXTURES = {"docker_daemon"}


def _group(item: pytest.Item) -> str | None:
    names = getattr(item, "fixturenames", ())
    for fixture, group in SHARED_FIXTURES.items():
        if fixture in names:
            return group
    # A module whose tests share a module- or class-scoped fixture (a compose stack, a BIND, a cluster) runs on one
    # worker, so that fixture is set up once, not once per worker that happens to get one of its tests.
    info = getattr(item, "_fixtureinfo", None)
    for defs in info.name2fixturedefs.values() if info else ():
        if any(d.scope in ("module", "class", "package") for d in defs):
            return item.nodeid.split("::", 1)[0]
    return None


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank: dict[str, int] = {}
    for item in items:
        direct = getattr(getattr(item, "_fixtureinfo", None), "argnames", ())
        if EXCLUSIVE_FIXTURES.intersection(direct):
            item.add_marker(pytest.mark.exclusive)
        group = _group(item)
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
            rank.setdefault(group, 0 if group in SHARED_FIXTURES.values() else 1)
    # the shared groups first, then the module groups (long set-ups), then single tests; stable within each
    items.sort(key=lambda item: rank.get(_group(item) or "", 2))
