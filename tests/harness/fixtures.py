"""Fixtures that expose the real parts from tests/harness: dockerd, the app image, nginx and Pebble.
Loaded by the integration and e2e tiers' conftest files."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from tests.harness.appimage import AppRunner, ensure_app_image
from tests.harness.bind import Bind
from tests.harness.companion import Companion
from tests.harness.compose import ComposeProject
from tests.harness.dockerd import DockerDaemon, ensure_dockerd
from tests.harness.locks import file_lock
from tests.harness.nginx import HostNginx
from tests.harness.nginxcontainer import NginxContainer
from tests.harness.pebble import Pebble
from tests.harness.swarm import SwarmNodes


@pytest.fixture(scope="session")
def docker_daemon() -> DockerDaemon:
    """A Docker daemon that answers (started with --live-restore if none did)."""
    return ensure_dockerd()


@pytest.fixture(scope="session")
def docker_client(docker_daemon: DockerDaemon) -> Iterator[docker.DockerClient]:
    """A docker-py client for the session's daemon."""
    client = docker_daemon.client()
    yield client
    client.close()


@pytest.fixture(scope="session")
def app_image(docker_client: docker.DockerClient) -> str:
    """Name of the busybox HTTP app image (``companion-test-app:latest``), built once and cached."""
    return ensure_app_image(docker_client)


@pytest.fixture
def apps(docker_client: docker.DockerClient, app_image: str) -> Iterator[AppRunner]:
    """``apps(name, labels=None, environment=None, **kw)`` runs app containers; all are removed after."""
    runner = AppRunner(docker_client)
    yield runner
    runner.cleanup()


@pytest.fixture
def host_nginx(tmp_path: Path) -> Iterator[HostNginx]:
    """A started private nginx including ``tmp_path/nginx/conf.d/*.conf`` (empty at start)."""
    nginx = HostNginx(conf_dir=tmp_path / "nginx" / "conf.d", prefix=tmp_path / "nginx")
    nginx.start()
    yield nginx
    nginx.stop()


@pytest.fixture(scope="session")
def run_dir(request: pytest.FixtureRequest) -> Path:
    """A folder shared by every pytest-xdist worker of this run (and only this run): counters, locks."""
    uid = getattr(request.config, "workerinput", {}).get("testrunuid") or _RUN_UID
    path = Path(tempfile.gettempdir()) / f"companion-test-run-{uid}"
    path.mkdir(exist_ok=True)
    return path


_RUN_UID = uuid.uuid4().hex


@pytest.fixture(scope="session")
def swarm_nodes(docker_daemon: DockerDaemon, run_dir: Path) -> Iterator[SwarmNodes]:
    """A real 3-node Swarm (one dockerd per network namespace), up once per test run and removed after.

    tests/conftest.py keeps every test using it on one xdist worker; should two workers still take it, the
    second reuses the nodes (``up()`` keeps a set that is up) and the last one to finish takes them down."""
    nodes = SwarmNodes.from_env(3)
    users = run_dir / f"swarm-{nodes.prefix}.users"
    with file_lock(f"swarm-{nodes.prefix}"):
        nodes.up(owner=run_dir.name)
        users.write_text(str(int(users.read_text() or 0) + 1 if users.exists() else 1))
    yield nodes
    with file_lock(f"swarm-{nodes.prefix}"):
        left = int(users.read_text() or 1) - 1
        users.write_text(str(left))
        if left <= 0:
            nodes.down()


@pytest.fixture
def make_pebble(tmp_path: Path) -> Iterator[Callable[..., Pebble]]:
    """Factory ``make_pebble(http_port, validity=..., nonce_reject=0|None, ...)``; all are stopped after."""
    made: list[Pebble] = []

    def make(http_port: int, **kw: Any) -> Pebble:
        kw.setdefault("workdir", tmp_path / f"pebble{len(made)}")
        pebble = Pebble(http_port, **kw)
        made.append(pebble)
        return pebble

    yield make
    for pebble in made:
        pebble.stop()


@pytest.fixture
def pebble(make_pebble: Callable[..., Pebble], host_nginx: HostNginx) -> Pebble:
    """Pebble (nonce rejection off, 90-day certs) validating HTTP-01 on ``host_nginx.http_port``."""
    return make_pebble(host_nginx.http_port)


@pytest.fixture(scope="module")
def bind9() -> Iterator[Bind]:
    """A private BIND 9 on a loopback port, authoritative for a zone unique to the module (`bind9.zone`) and
    taking TSIG-signed updates of TXT records: Pebble's DNS for DNS-01 (`make_pebble(..., dnsserver=bind9.address)`)."""
    with Bind(f"{uuid.uuid4().hex[:8]}.example.test") as server:
        yield server


@pytest.fixture
def make_companion(host_nginx: HostNginx, tmp_path: Path) -> Iterator[Callable[..., Companion]]:
    """Factory ``make_companion(**ENV_SETTINGS)``: a started `companion run` in host mode beside host_nginx.

    Every companion made shares one work folder (conf, certs, webroot), so a second one is a restart.
    """
    yield from _companions(host_nginx, tmp_path / "companion")


@pytest.fixture
def docker_nginx(docker_client: docker.DockerClient, tmp_path: Path) -> Iterator[NginxContainer]:
    """A real nginx container serving the conf dir of a docker-mode companion in tmp_path/companion."""
    workdir = tmp_path / "companion"
    nginx = NginxContainer(
        docker_client,
        tmp_path,
        conf_dir=tmp_path / "nginx" / "conf.d",
        certs_dir=workdir / "certs",
        webroot=workdir / "webroot",
    )
    try:
        yield nginx.start()
    finally:
        nginx.remove()


@pytest.fixture
def docker_companion(docker_nginx: NginxContainer, tmp_path: Path) -> Iterator[Callable[..., Companion]]:
    """Factory: a `companion run` in docker mode (nginx -t by docker exec, reload by SIGHUP) beside docker_nginx."""
    yield from _companions(docker_nginx, tmp_path / "companion", NGINX_TEST="docker", NGINX_RELOAD="docker")


@pytest.fixture
def compose(tmp_path: Path, app_image: str) -> Iterator[Callable[[dict[str, object] | str], str]]:
    """``compose(services or yaml_text)`` runs a real ``docker-compose up -d`` in tmp_path; ``down -v`` after."""
    project = ComposeProject(tmp_path)
    yield project.up
    project.down()


def _companions(nginx: HostNginx | NginxContainer, workdir: Path, **fixed: str) -> Iterator[Callable[..., Companion]]:
    """The factory behind make_companion and docker_companion: every companion shares `workdir` (a second one
    is a restart); all are stopped after the test, and the last one's log tail is printed for a failure."""
    made: list[Companion] = []

    def make(**settings: str) -> Companion:
        companion = Companion(nginx, workdir, **{**fixed, **settings}).start()  # type: ignore[arg-type]
        made.append(companion)
        return companion

    yield make
    for companion in made:
        companion.stop()
    if made:
        lines = [line for line in made[-1].log().splitlines() if " DEBUG " not in line]
        print("---- companion log (tail, without DEBUG) ----\n" + "\n".join(lines[-120:]))
