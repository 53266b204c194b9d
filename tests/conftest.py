"""Shared by every tier: the repository root on sys.path and Hypothesis's profile. No real part is imported
here, so the pure unit tier never loads Docker; the tiers that need real parts load tests.harness.fixtures."""

from __future__ import annotations

import functools
import os
import re
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
# The default Docker daemon is one shared thing too: a companion under test watches *every* container on it (there
# is no label filter), so another test's containers, even a `docker build`'s, wake it, grow its log, get rendered
# and ordered, and break "settled", "one reload" and "no order" checks. Every test that runs a companion against
# it or starts containers on it runs in group "daemon", one at a time; e2e stacks watch the whole daemon too. The
# Swarm tests use their own daemons (the images they take from this one are built before: tests/__main__.py).
DAEMON = "daemon"
DAEMON_FIXTURES = {
    "docker_daemon",
    "docker_client",
    "app_image",
    "apps",
    "compose",
    "docker_nginx",
    "docker_companion",
    "make_companion",
}
# ... and modules that reach the daemon without those fixtures (a harness client, a Companion of their own)
DAEMON_TEXT = re.compile(
    r"docker\.from_env|DockerClient\(|docker_client\(|Companion\(|docker\.sock|ensure_dockerd|load_build|AgentContainer"
)
# A test that takes the daemon itself (it restarts the shared dockerd) must run alone: tests/__main__.py runs
# tests marked `exclusive` after the parallel part, on one process.
EXCLUSIVE_FIXTURES = {"docker_daemon"}


@functools.cache
def _module_uses_daemon(path: str) -> bool:
    try:
        return bool(DAEMON_TEXT.search(Path(path).read_text()))
    except OSError:
        return False


def _group(item: pytest.Item) -> str | None:
    marked = item.get_closest_marker("xdist_group")
    if marked:
        return str(marked.args[0] if marked.args else marked.kwargs.get("name", "default"))
    names = set(getattr(item, "fixturenames", ()))
    for fixture, group in SHARED_FIXTURES.items():
        if fixture in names:
            return group
    path = str(getattr(item, "path", ""))
    if f"{os.sep}e2e{os.sep}" in path or names & DAEMON_FIXTURES or _module_uses_daemon(path):
        return DAEMON
    # A module whose tests share a module- or class-scoped fixture (a BIND, a set of parsed files) runs on one
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
    items.sort(key=lambda item: _rank(groups[item]))
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


def _rank(group: str | None) -> int:
    if group == DAEMON:
        return 0  # the longest lane: first
    if group in SHARED_FIXTURES.values():
        return 1
    return 3 if group is None else 2
