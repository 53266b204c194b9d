"""Swarm services as a source of sites, on a real 3-node Swarm (one dockerd per network namespace).

The companion runs on the host in docker mode against the manager's socket; nginx is a standalone
container on the manager, attached to the attachable overlay `proxy` with its port 80 published on the
manager's address; apps are services (`--endpoint-mode dnsrr`) on that overlay with VIRTUAL_HOST in
their service labels. Requests go from the host to the manager's address with a Host header.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from companion.sources.swarm import task_addresses
from tests.harness.appimage import ensure_app_image
from tests.harness.companion import Companion
from tests.harness.nginx import http_get
from tests.harness.nginxcontainer import NginxContainer, ensure_nginx_image
from tests.harness.swarm import SwarmNodes
from tests.harness.wait import wait_until

SUFFIX = uuid.uuid4().hex[:6]
DOMAIN = f"swarm-{SUFFIX}.test"
APP_IMAGE = "companion-test-app:latest"


@dataclass
class Stage:
    nodes: SwarmNodes
    nginx: NginxContainer
    companion: Companion
    network: str
    services: list[str] = field(default_factory=list)

    def create(self, name: str, replicas: int = 1, *extra: str) -> str:
        """An app service on the overlay, VIRTUAL_HOST=<name>.<DOMAIN>; each task answers with its service,
        slot, node and a generation (APP_ID, templated by Swarm per task)."""
        full = f"{name}-{SUFFIX}"
        self.nodes.docker(
            1, "service", "create", "-d", "--quiet", "--no-resolve-image", "--name", full,
            "--replicas", str(replicas),
            "--endpoint-mode", "dnsrr", "--network", self.network,
            "--label", f"VIRTUAL_HOST={self.host(name)}",
            "--update-order", "start-first", "--update-parallelism", "1",
            "--env", "APP_ID={{.Service.Name}} {{.Task.Slot}} {{.Node.Hostname}} g1",
            *extra, APP_IMAGE,
        )  # fmt: skip
        self.services.append(full)
        return full

    def host(self, name: str) -> str:
        return f"{name}.{DOMAIN}"

    def answer(self, name: str, timeout: float = 5) -> tuple[int, str]:
        status, _, body = http_get(self.nodes.address(1), 80, self.host(name), timeout=timeout)
        return status, body.decode(errors="replace").strip()

    def answers(self, name: str, count: int) -> Counter[str]:
        return Counter(body for status, body in (self.answer(name) for _ in range(count)) if status == 200)

    def logs(self, name: str) -> list[tuple[str, Callable[[], str]]]:
        """What explains a wait on service `name` that timed out: its tasks (state, node, error), the upstream
        the companion wrote, nginx's log, the companion's log (without DEBUG) and the nodes' dockerd logs."""
        service = f"{name}-{SUFFIX}"

        def tasks() -> str:
            done = self.nodes.docker(
                1, "service", "ps", "--no-trunc", "--format",
                "{{.Name}} {{.Node}} {{.DesiredState}} {{.CurrentState}} {{.Error}}", service, check=False,
            )  # fmt: skip
            return done.stdout + done.stderr

        def companion() -> str:
            return "\n".join(line for line in self.companion.log().splitlines() if " DEBUG " not in line)

        def dockerd(n: int) -> Callable[[], str]:
            return lambda: Path(f"/run/{self.nodes.ns(n)}/dockerd.log").read_text(errors="replace")

        return [
            (f"tasks of {service}", tasks),
            ("companion.conf", lambda: (self.nginx.conf_dir / "companion.conf").read_text()),
            ("nginx", self.nginx.logs),
            ("companion", companion),
            *((f"dockerd of {self.nodes.ns(n)}", dockerd(n)) for n in self.nodes.nodes),
        ]


@pytest.fixture(scope="module")
def stage(swarm_nodes: SwarmNodes, docker_client, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:  # noqa: ANN001
    nodes = swarm_nodes
    nginx_image = ensure_nginx_image(docker_client)
    nodes.load(ensure_app_image(docker_client), nginx_image)
    network = f"proxy-{SUFFIX}"
    nodes.docker(1, "network", "create", "-d", "overlay", "--attachable", network)
    workdir = tmp_path_factory.mktemp("swarm")
    nginx = NginxContainer(
        nodes.client(1),
        workdir,
        conf_dir=workdir / "nginx" / "conf.d",
        certs_dir=workdir / "companion" / "certs",
        webroot=workdir / "companion" / "webroot",
        endpoint=(nodes.address(1), 80),
        image=nginx_image,
        network=network,
        ports={"80/tcp": (nodes.address(1), 80)},
    )
    companion = None
    try:
        nginx.start()
        companion = Companion(
            nginx,  # type: ignore[arg-type]
            workdir / "companion",
            DOCKER_HOST=nodes.socket(1),
            NGINX_TEST="docker",
            NGINX_RELOAD="docker",
            ALLOWED_DOMAINS=f"*.{DOMAIN}",
        ).start()
        companion.wait_log(r"applied .*nginx reloaded", timeout=30)
        yield Stage(nodes, nginx, companion, network)
    finally:
        if companion is not None:
            companion.stop()
            lines = [line for line in companion.log().splitlines() if " DEBUG " not in line]
            print("---- companion log (tail, without DEBUG) ----\n" + "\n".join(lines[-80:]))
        nginx.remove()
        for service in nodes.docker(1, "service", "ls", "-q", check=False).stdout.split():
            nodes.docker(1, "service", "rm", service, check=False)
        nodes.docker(1, "network", "rm", network, check=False)


class Traffic:
    """Steady requests from the host through nginx in a thread; counts sent and failed (non-200, errors)."""

    def __init__(self, stage: Stage, name: str, timeout: float = 10) -> None:
        self.stage, self.name, self.timeout = stage, name, timeout
        self.sent = 0
        self.failures: list[str] = []
        self.bodies: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sent += 1
            try:
                status, body = self.stage.answer(self.name, timeout=self.timeout)
            except OSError as error:
                self.failures.append(f"{type(error).__name__}: {error}")
                continue
            if status != 200:
                self.failures.append(f"HTTP {status}")
            else:
                self.bodies[body] += 1
            time.sleep(0.01)


def wait_served(stage: Stage, name: str, timeout: float = 30) -> str:
    return wait_until(
        lambda: (lambda got: got[1] if got[0] == 200 else "")(stage.answer(name)),
        timeout,
        what=f"{stage.host(name)} served",
        logs=stage.logs(name),
    )


def wait_tasks(stage: Stage, name: str, count: int, timeout: float = 45) -> Counter[str]:
    """Until `count` distinct tasks answer (each answer names its task); returns the answers seen."""

    def distinct() -> Counter[str] | None:
        got = stage.answers(name, 4 * count)
        return got if len(got) == count else None

    return wait_until(distinct, timeout, interval=0.2, what=f"{count} tasks of {name} answering", logs=stage.logs(name))


def task_address_on(stage: Stage, service: str, node: int) -> str:
    """The overlay address of `service`'s running task on node `node` (by the manager's task list)."""
    api = stage.nodes.client(1).api
    node_id = api.inspect_node(stage.nodes.ns(node))["ID"]
    (task,) = [t for t in api.tasks(filters={"service": service, "desired-state": "running"}) if t["NodeID"] == node_id]
    return task_addresses(task)[stage.network]


def test_a_service_is_served_at_its_task_address_and_scales_across_nodes(stage: Stage) -> None:
    service = stage.create("scale", 1, "--replicas-max-per-node", "1")
    first = wait_served(stage, "scale")
    assert first.startswith(f"{service} 1 ")
    upstream = Path(stage.nginx.conf_dir, "companion.conf").read_text()
    assert "server 10." in upstream  # a task address on the overlay, not a VIP (dnsrr has none)
    stage.nodes.docker(1, "service", "scale", "-d", f"{service}=3")
    answers = wait_tasks(stage, "scale", 3)
    nodes = {body.split()[2] for body in answers}
    print(f"answers after scaling to 3: {dict(answers)}")
    assert nodes == {stage.nodes.ns(n) for n in stage.nodes.nodes}


def test_rolling_update_under_traffic_fails_no_request(stage: Stage) -> None:
    service = stage.create("roll", 3, "--init")
    wait_tasks(stage, "roll", 3)
    with Traffic(stage, "roll") as traffic:
        time.sleep(0.5)
        stage.nodes.docker(
            1, "service", "update", "-d", "--quiet",
            "--env-add", "APP_ID={{.Service.Name}} {{.Task.Slot}} {{.Node.Hostname}} g2", service,
        )  # fmt: skip
        wait_until(
            lambda: (
                stage.nodes.docker(1, "service", "inspect", "-f", "{{.UpdateStatus.State}}", service).stdout.strip()
                == "completed"
            ),
            90,
            what="the rolling update to complete",
            logs=stage.logs("roll"),
        )
        wait_until(
            lambda: stage.answers("roll", 9),
            20,
            what="only g2 tasks answering",
            until=lambda answers: answers and all(body.endswith(" g2") for body in answers),
            logs=stage.logs("roll"),
        )
        time.sleep(1)
    generations = Counter(body.split()[-1] for body in traffic.bodies.elements())
    print(f"rolling update: {traffic.sent} requests sent, {len(traffic.failures)} failed; answers {dict(generations)}")
    assert traffic.failures == []
    assert generations["g1"] and generations["g2"]


@pytest.mark.parametrize("how", ["daemon stopped", "power cut"])
def test_a_dead_worker_drops_out_and_the_others_keep_serving(stage: Stage, how: str) -> None:
    """The daemon stopped (its containers stop, the overlay on that node goes before the manager knows) or
    the whole node gone at once (SIGKILL to everything on it): the other tasks keep answering meanwhile."""
    name = "stopped" if how == "daemon stopped" else "cut"
    service = stage.create(name, 3, "--replicas-max-per-node", "1")
    wait_tasks(stage, name, 3)
    victim = stage.nodes.count  # a worker
    address = task_address_on(stage, service, victim)
    assert f"server {address}:80;" in (stage.nginx.conf_dir / "companion.conf").read_text()
    try:
        with Traffic(stage, name) as traffic:
            time.sleep(0.5)
            (stage.nodes.kill_daemon if how == "daemon stopped" else stage.nodes.power_off)(victim)
            killed = time.monotonic()

            def dropped() -> bool:
                return f"server {address}:80;" not in (stage.nginx.conf_dir / "companion.conf").read_text()

            wait_until(
                dropped,
                60,
                interval=0.1,
                what=f"the task on {stage.nodes.ns(victim)} to leave the upstream",
                logs=stage.logs(name),
            )
            gone_after = time.monotonic() - killed
            time.sleep(1)
        print(
            f"worker {how}: its task left the upstream {gone_after:.1f}s later; "
            f"{traffic.sent} requests sent, {len(traffic.failures)} failed"
        )
        assert traffic.failures == []
        assert {body.split()[2] for body in stage.answers(name, 6)} == {stage.nodes.ns(1), stage.nodes.ns(2)}
    finally:
        stage.nodes.start_daemon(victim)
        stage.nodes.wait_ready(stage.nodes.count, timeout=60)
