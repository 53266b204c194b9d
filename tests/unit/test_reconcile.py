"""The reconcile step (pure) and the loop over a fake Source and a fake Applier: fast, no Docker, no nginx.

The same loop runs against the real daemon and nginx in the integration tests; here each seam is a fake
that records what the loop asked of it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

from companion.core.certificates import CertStatus
from companion.core.container import ContainerInfo
from companion.core.inputs import Inputs
from companion.core.model import Policy
from companion.core.ports import Applier, ApplyResult, NodeView, Snapshot, Source
from companion.loop.controller import Controller, read_inputs
from companion.loop.reconcile import reconcile
from companion.nginx.render import MAIN_FILE
from companion.settings.config import Settings
from tests.harness.containers import app
from tests.harness.fleet import LOOP_OPTIONS

NGINX = ContainerInfo(id="nginx-id", name="nginx", networks={"proxy": "10.0.0.1"}, gateways={"proxy": "10.0.0.254"})


class FakeSource:
    def __init__(self, *containers: ContainerInfo, nginx: tuple[ContainerInfo, ...] = (NGINX,)) -> None:
        self.snap = Snapshot(containers=containers, nginx=nginx)
        self.fail: Exception | None = None

    def snapshot(self) -> Snapshot:
        if self.fail is not None:
            raise self.fail
        return self.snap

    def watch(self, wake: Callable[[str], None], stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=lambda: None)
        thread.start()
        return thread


class FakeApplier:
    """Keeps the files it was given as nginx's; refuses when told to, like a failed `nginx -t`."""

    nginx_here = True
    relay = ""
    done = "nginx reloaded"

    def __init__(self) -> None:
        self.running: dict[str, str] = {}
        self.located: list[str] = []
        self.refuse = ""
        self.applied = 0

    def locate(self, nginx: Sequence[ContainerInfo]) -> None:
        self.located = [info.id for info in nginx]

    def nginx_version(self) -> tuple[int, ...] | None:
        return (1, 26, 3)

    def start(self) -> None:
        pass

    def nodes(self) -> tuple[NodeView, ...]:
        return ()

    def self_check_bases(self, local: str) -> str:
        return local

    def apply(self, files: Mapping[str, str]) -> ApplyResult:
        self.applied += 1
        changed = tuple(name for name, content in files.items() if self.running.get(name) != content)
        if not changed:
            return ApplyResult(changed=())
        if self.refuse:
            return ApplyResult.refusal(self.refuse)
        self.running.update(files)
        return ApplyResult(changed=changed)


def settings(tmp_path: Path) -> Settings:
    (tmp_path / "certs").mkdir(exist_ok=True)
    return Settings(
        conf_dir=str(tmp_path / "conf"), certs_dir=str(tmp_path / "certs"), heartbeat_file=str(tmp_path / "hb")
    )


def inputs(*containers: ContainerInfo, statuses: Mapping[str, CertStatus] | None = None) -> Inputs:
    return Inputs(
        containers=containers,
        statuses=statuses or {},
        certs_dir=Path("/certs"),
        policy=Policy(),
        nginx_networks=("proxy",),
    )


OPTIONS = LOOP_OPTIONS


def test_fakes_satisfy_the_protocols() -> None:
    source: Source = FakeSource()
    applier: Applier = FakeApplier()
    assert source.snapshot().nginx == (NGINX,)
    assert applier.nginx_version() == (1, 26, 3)


def test_reconcile_routes_each_site_and_names_its_owner() -> None:
    done = reconcile(
        inputs(app("a", "10.0.0.2", VIRTUAL_HOST="a.test"), app("b", "10.0.0.3", VIRTUAL_HOST="b.test")), OPTIONS
    )
    assert done.owners == {"a.test": "a", "b.test": "b"}
    assert "server 10.0.0.2:80" in done.files()[MAIN_FILE] and "server 10.0.0.3:80" in done.files()[MAIN_FILE]
    assert done.problems == frozenset()
    assert done.certificates == ()


def test_reconcile_is_pure_same_inputs_same_files() -> None:
    world = inputs(app("a", "10.0.0.2", VIRTUAL_HOST="a.test", LETSENCRYPT_HOST="a.test"))
    first, second = reconcile(world, OPTIONS), reconcile(world, OPTIONS)
    assert first.files() == second.files()
    assert [c.domains for c in first.certificates] == [("a.test",)]


def test_reconcile_reports_bad_labels_and_unusable_certificates_and_the_default_problem() -> None:
    broken = CertStatus(name="x.test", problem="its key does not match")
    done = reconcile(
        inputs(app("bad", "10.0.0.2", VIRTUAL_HOST="a.test", VIRTUAL_PORT="99999"), statuses={"x.test": broken}),
        OPTIONS,
        "default certificate /certs/default.crt: expired",
    )
    assert any("bad" in p and "VIRTUAL_PORT" in p for p in done.problems)
    assert "certificate x.test: its key does not match; its sites fall back to the placeholder" in done.problems
    assert "default certificate /certs/default.crt: expired" in done.problems
    assert "default certificate /certs/default.crt: expired" in done.desired.problems
    assert done.owners == {}


def test_reconcile_keeps_a_remembered_owner() -> None:
    world = inputs(app("a", "10.0.0.2", VIRTUAL_HOST="s.test"), app("z", "10.0.0.3", VIRTUAL_HOST="s.test"))
    assert reconcile(world, OPTIONS).owners == {"s.test": "a"}
    remembered = Inputs(**{**world.__dict__, "owners": {"s.test": "z"}})
    assert reconcile(remembered, OPTIONS).owners == {"s.test": "z"}


def test_read_inputs_takes_nginx_networks_from_the_snapshot(tmp_path: Path) -> None:
    snap = Snapshot(containers=(app("a", "10.0.0.2", VIRTUAL_HOST="a.test"),), nginx=(NGINX,))
    got, problem = read_inputs(settings(tmp_path), snap, Policy(), {}, tmp_path)
    assert got.nginx_networks == ("proxy",)
    assert got.host_address == "10.0.0.254"
    assert problem == ""


def test_loop_applies_through_the_applier_and_tells_it_where_nginx_is(tmp_path: Path) -> None:
    source, applier = FakeSource(app("a", "10.0.0.2", VIRTUAL_HOST="a.test")), FakeApplier()
    controller = Controller(settings(tmp_path), source, applier)
    report = controller.run_pass()
    assert report.result is not None and report.result.ok and MAIN_FILE in report.result.changed
    assert applier.located == ["nginx-id"]
    assert "server 10.0.0.2:80" in applier.running[MAIN_FILE]
    again = controller.run_pass()
    assert again.result == ApplyResult(changed=())  # nothing new: nothing written, no reload


def test_loop_keeps_what_runs_when_the_applier_refuses(tmp_path: Path) -> None:
    source, applier = FakeSource(app("a", "10.0.0.2", VIRTUAL_HOST="a.test")), FakeApplier()
    controller = Controller(settings(tmp_path), source, applier)
    controller.run_pass()
    good = dict(applier.running)
    source.snap = Snapshot(containers=(app("a", "10.0.0.9", VIRTUAL_HOST="a.test"),), nginx=(NGINX,))
    applier.refuse = "unknown directive"
    report = controller.run_pass()
    assert report.result is not None and not report.result.ok
    assert applier.running == good
    assert "nginx rejected the new configuration: unknown directive" in controller._reported


@pytest.mark.parametrize("reason", [OSError("connection refused")])
def test_loop_skips_the_pass_when_the_source_is_away(tmp_path: Path, reason: Exception) -> None:
    source, applier = FakeSource(), FakeApplier()
    source.fail = reason
    report = Controller(settings(tmp_path), source, applier).run_pass()
    assert report.skipped == "docker unavailable"
    assert applier.applied == 0


def test_loop_without_nginx_applies_nothing(tmp_path: Path) -> None:
    source, applier = FakeSource(app("a", "10.0.0.2", VIRTUAL_HOST="a.test"), nginx=()), FakeApplier()
    report = Controller(settings(tmp_path), source, applier).run_pass()
    assert report.skipped == "no nginx"
    assert applier.applied == 0


def test_loop_remembers_owners_on_disk(tmp_path: Path) -> None:
    source, applier = FakeSource(app("a", "10.0.0.2", VIRTUAL_HOST="a.test")), FakeApplier()
    controller = Controller(settings(tmp_path), source, applier)
    controller.run_pass()
    again = Controller(settings(tmp_path), source, FakeApplier())
    assert {h: c.container for h, c in again.owners.items()} == {"a.test": "a"}
