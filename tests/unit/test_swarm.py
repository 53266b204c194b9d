"""Parsing Swarm's services and tasks into routed entries (pure), on answers recorded from the real 3-node
Swarm of tests/harness/swarm.py (tests/unit/data/swarm_api.json: GET /info's Swarm part, GET /services, GET /tasks,
trimmed of fields the companion does not read).

The recording holds: `web` (2 replicas, VIRTUAL_HOST as a service label, VIRTUAL_PORT as a container label,
caught in a start-first rolling update: two old tasks still running with desired state shutdown), `sick`
(a health check that never passes: its task stays "starting") and `front` (global, carrying the nginx
label). The real routing is proven in tests/integration/test_swarm_source.py."""

from __future__ import annotations

import copy
import json
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest

from companion.core.container import ContainerInfo
from companion.core.inputs import Inputs
from companion.core.model import Policy
from companion.core.ports import Snapshot
from companion.loop.reconcile import reconcile
from companion.sources.swarm import TASK_LABEL, SwarmSource, fingerprint, is_manager, task_addresses, task_entries
from tests.harness import swarm
from tests.harness.fleet import LOOP_OPTIONS as OPTIONS

RECORDED = json.loads((Path(__file__).parent / "data" / "swarm_api.json").read_text())
SERVICES, TASKS = RECORDED["services"], RECORDED["tasks"]


def web_entries(services: list[dict[str, Any]] = SERVICES, tasks: list[dict[str, Any]] = TASKS) -> list[ContainerInfo]:
    routed, _ = task_entries(services, tasks)
    return [info for info in routed if info.service == "web"]


def test_the_recorded_daemon_is_a_manager() -> None:
    assert is_manager({"Swarm": RECORDED["info_swarm"]})
    assert not is_manager({"Swarm": {"LocalNodeState": "active", "ControlAvailable": False}})
    assert not is_manager({})


def test_only_tasks_wanted_and_reported_running_are_routed() -> None:
    routed, nginx = task_entries(SERVICES, TASKS)
    assert sorted(info.name for info in routed) == ["web.1", "web.2"]  # not sick.1 (starting), not old tasks
    states = {(t["DesiredState"], t["Status"]["State"]) for t in TASKS if t.get("Slot") and t["ServiceID"]}
    assert ("shutdown", "running") in states and ("running", "starting") in states  # the recording has both
    assert len(nginx) == 3 and {info.service for info in nginx} == {"front"}


def test_a_task_carries_its_service_variables_and_its_overlay_address() -> None:
    first = web_entries()[0]
    assert first.service == "web"
    assert first.labels["VIRTUAL_HOST"] == "web.test" and first.labels["VIRTUAL_PORT"] == "80"
    assert first.env["GEN"] == "2"  # the task's own spec: the updated one
    assert list(first.networks) == ["proxy"]
    assert "/" not in first.networks["proxy"] and first.networks["proxy"].startswith("10.")
    assert first.image_labels == frozenset() and first.image_env == frozenset()


def test_a_global_task_is_named_by_its_node() -> None:
    _, nginx = task_entries(SERVICES, TASKS)
    node_ids = {t["NodeID"][:12] for t in TASKS if not t.get("Slot")}
    assert sorted(info.name.split(".", 1)[1] for info in nginx) == sorted(node_ids)


def test_service_labels_win_over_container_labels_which_win_over_environment() -> None:
    services, tasks = copy.deepcopy(SERVICES), copy.deepcopy(TASKS)
    web = next(s for s in services if s["Spec"]["Name"] == "web")
    web["Spec"]["Labels"]["VIRTUAL_PORT"] = "8080"
    for task in tasks:
        if task["ServiceID"] == web["ID"]:
            task["Spec"]["ContainerSpec"]["Env"].append("VIRTUAL_PORT=9")
            task["Spec"]["ContainerSpec"]["Env"].append("VIRTUAL_PROTO=https")
            task["Spec"]["ContainerSpec"]["Labels"]["VIRTUAL_PROTO"] = "http"
    done = reconcile(inputs(*web_entries(services, tasks)), OPTIONS)
    assert ":8080;" in done.files()["companion.conf"]
    assert "proxy_pass http://" in done.files()["companion.conf"]


def inputs(*containers: ContainerInfo, owners: dict[str, str] | None = None) -> Inputs:
    return Inputs(
        containers=containers, statuses={}, certs_dir=Path("/certs"), policy=Policy(), owners=owners or {},
        nginx_networks=("proxy",),
    )  # fmt: skip


def test_the_service_owns_its_hosts_and_every_task_is_a_server() -> None:
    entries = web_entries()
    done = reconcile(inputs(*entries), OPTIONS)
    assert done.owners == {"web.test": "web"}
    for info in entries:
        assert f"server {info.networks['proxy']}:80;" in done.files()["companion.conf"]
    assert not done.problems


def test_a_task_of_a_newcomer_does_not_take_the_host_from_the_service() -> None:
    entries = web_entries()
    intruder = ContainerInfo(
        id="x", name="aaa", labels={"VIRTUAL_HOST": "web.test", "HSTS": "off"}, networks={"proxy": "10.82.1.99"}
    )
    done = reconcile(inputs(*entries, intruder, owners={"web.test": "web"}), OPTIONS)
    assert done.owners == {"web.test": "web"}  # remembered by service name, whichever tasks run now


def test_the_companions_own_task_is_not_routed() -> None:
    entries = web_entries()
    own = next(t for t in TASKS if t["ID"] == entries[0].id)["Status"]["ContainerStatus"]["ContainerID"]
    routed, _ = task_entries(SERVICES, TASKS, own_container=own[:12])
    assert entries[0].id not in {info.id for info in routed}


def test_addresses_drop_the_prefix_and_skip_ipv6() -> None:
    task = {"NetworksAttachments": [{"Network": {"Spec": {"Name": "p"}}, "Addresses": ["fd00::5/64", "10.0.1.5/24"]}]}
    assert task_addresses(task) == {"p": "10.0.1.5"}
    assert task_addresses({}) == {}


def test_fingerprint_follows_tasks_not_their_timestamps() -> None:
    tasks = copy.deepcopy(TASKS)
    before = fingerprint(tasks)
    tasks[0]["Status"]["Message"] = "something else"
    tasks[0]["UpdatedAt"] = "2030-01-01T00:00:00Z"
    assert fingerprint(tasks) == before
    starting = next(t for t in tasks if t["Status"]["State"] == "starting")
    starting["Status"]["State"] = "running"
    assert fingerprint(tasks) != before


class _Api:
    def __init__(self, manager: bool) -> None:
        self.manager = manager

    def info(self) -> dict[str, Any]:
        return {"Swarm": {**RECORDED["info_swarm"], "ControlAvailable": self.manager}}

    def services(self) -> list[dict[str, Any]]:
        return SERVICES

    def tasks(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        assert filters == {"desired-state": "running"}
        return TASKS


class _Edge:
    """The container source as SwarmSource sees it: a snapshot of the manager's containers and its API."""

    self_id = ""

    def __init__(self, manager: bool) -> None:
        self.api = _Api(manager)
        plain = ContainerInfo(
            id="c1", name="plain", labels={"VIRTUAL_HOST": "plain.test"}, networks={"proxy": "10.82.1.50"}
        )
        task_container = ContainerInfo(id="c2", name="web.1.abc", labels={TASK_LABEL: "t", "VIRTUAL_PORT": "80"})
        self.snap = Snapshot(containers=(plain, task_container), nginx=())

    def snapshot(self) -> Snapshot:
        return self.snap

    def watch(self, *args: object) -> threading.Thread:
        raise AssertionError("not used")


def test_on_a_manager_plain_containers_stay_beside_tasks_and_task_containers_are_not_listed_twice() -> None:
    snap = SwarmSource(_Edge(manager=True)).snapshot()  # type: ignore[arg-type]
    assert sorted(info.name for info in snap.containers) == ["plain", "web.1", "web.2"]
    assert len(snap.nginx_tasks) == 3


def test_on_a_worker_or_without_swarm_it_is_the_container_source() -> None:
    edge = _Edge(manager=False)
    assert SwarmSource(edge).snapshot() == edge.snap  # type: ignore[arg-type]


def test_the_swarm_fixture_says_what_to_install_when_a_tool_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.which
    monkeypatch.setattr(swarm.shutil, "which", lambda tool: None if tool == "nsenter" else real(tool))
    with pytest.raises(swarm.SwarmUnavailable, match=r"nsenter \(apt-get install util-linux\)"):
        swarm.SwarmNodes().check_tools()
