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
    marked = item.get_closest_marker("xdist_group")
    if marked:
        return str(marked.args[0] if marked.args else marked.kwargs.get("name", "default"))
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


def pytest_itemcollected(item: pytest.Item) -> None:
    # marks set here, during collection: pytest-xdist reads xdist_group in its own pytest_collection_modifyitems
    direct = getattr(getattr(item, "_fixtureinfo", None), "argnames", ())
    if EXCLUSIVE_FIXTURES.intersection(direct):
        item.add_marker(pytest.mark.exclusive)
    group = _group(item)
    if group and not item.get_closest_marker("xdist_group"):
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    groups = {item: _group(item) for item in items}
    # the shared groups first, then the module groups (long set-ups), then single tests (they fill the gaps at the
    # end); stable within each. tests/__main__.py passes --no-loadscope-reorder so that xdist keeps this order.
    items.sort(key=lambda item: 2 if groups[item] is None else 0 if groups[item] in SHARED_FIXTURES.values() else 1)
    if getattr(config.option, "loadgroup", False):  # on an xdist worker of a `--dist loadgroup` run
        for item, group in groups.items():
            _suffix_group(item, group)


def _suffix_group(item: pytest.Item, group: str | None) -> None:
    """What pytest-xdist's loadgroup does to a grouped item's node id (``<nodeid>@<group>``: its scheduler keeps
    one group on one worker), done here too: xdist 3.8 sets ``item._nodeid``, which pytest 9 no longer reads (its
    node ids live in ``item._id``), so with pytest 9 its groups were silently ignored."""
    if not group or item.nodeid.endswith(f"@{group}"):
        return
    nodeid = f"{item.nodeid}@{group}"
    if hasattr(item, "_id"):
        from _pytest.nodes import coerce_node_id  # pytest >= 9

        item._id = coerce_node_id(nodeid)
    else:
        item._nodeid = nodeid
