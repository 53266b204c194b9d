"""The registry-free e2e images: built (or found) by e2e/images/build.py and usable as the compose tests need.

These tests fail, never skip, when debootstrap or dockerd is missing: without them the e2e suite cannot run.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest
import urllib3
from docker.models.containers import Container

from tests.harness.e2e import load_build
from tests.harness.wait import is_not_none, wait_until

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
RUN_LABEL = "io.companion.e2e.test-images"


build = load_build()


@pytest.fixture(scope="module")
def client() -> docker.DockerClient:
    """A Docker client; fails loudly when the tools the e2e images need are missing."""
    missing = [tool for tool in ("dockerd", "debootstrap") if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"e2e images need {' and '.join(missing)} (apt-get install docker.io debootstrap)")
    try:
        return build.docker_client(start=True)
    except RuntimeError as exc:
        pytest.fail(f"no usable Docker daemon: {exc}")


@pytest.fixture(scope="module")
def refs(client: docker.DockerClient) -> dict[str, str]:
    """The image references from ensure_images (timed, so a cached run shows up as fast)."""
    started = time.monotonic()
    result = build.ensure_images(client)
    print(f"ensure_images took {time.monotonic() - started:.1f}s: {result}")
    return result


@pytest.fixture
def run(client: docker.DockerClient) -> Iterator[Callable[..., Container]]:
    """Start detached containers for one test and remove them (and their anonymous volumes) afterwards."""
    created: list[Container] = []
    run_id = uuid.uuid4().hex[:10]

    def start(image: str, **kwargs: object) -> Container:
        container = client.containers.run(
            image, detach=True, labels={RUN_LABEL: run_id}, name=f"e2e-images-{run_id}-{len(created)}", **kwargs
        )
        created.append(container)
        container.reload()
        return container

    yield start
    for container in created:
        container.remove(force=True, v=True)


def _ip(container: Container) -> str:
    container.reload()
    ip = container.attrs["NetworkSettings"]["IPAddress"]
    assert ip, f"{container.name} has no address on the default bridge"
    return ip


def _exec(container: Container, *cmd: str) -> tuple[int, str]:
    code, output = container.exec_run(list(cmd))
    return code, output.decode(errors="replace")


def _read_file(container: Container, path: str, timeout: float = 20.0) -> bytes:
    """Copy one file out of a container (like docker cp), waiting for it to appear."""

    def read() -> bytes | None:
        try:
            stream, _ = container.get_archive(path)
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                member = tar.next()
                assert member is not None
                data = tar.extractfile(member)
                assert data is not None
                return data.read()
        except Exception:
            container.reload()
            if container.status == "exited":
                logs = container.logs().decode(errors="replace")
                raise AssertionError(f"{path} never appeared in {container.name}; logs:\n{logs}") from None
            return None

    logs = [(container.name, lambda: container.logs().decode(errors="replace"))]
    return wait_until(read, timeout, 0.2, f"{path} in {container.name}", until=is_not_none, errors=(), logs=logs)


def _wait_https(pool: urllib3.HTTPSConnectionPool, path: str, timeout: float = 20.0) -> urllib3.BaseHTTPResponse:
    return wait_until(
        lambda: pool.request("GET", path, retries=False),
        timeout,
        0.2,
        f"https {path} to accept connections",
        until=lambda _: True,
        errors=urllib3.exceptions.NewConnectionError,
    )


def test_images_exist_with_expected_config(client: docker.DockerClient, refs: dict[str, str]) -> None:
    assert set(refs) == {"base", "nginx", "pebble"}
    base = client.images.get(refs["base"])
    assert refs["base"] == "debian:bookworm-slim"
    if build.is_standin(base):
        assert base.labels[build.LABEL_STANDIN] == "debootstrap"
        assert base.labels[build.LABEL_MIRROR].startswith("http")
    nginx = client.images.get(refs["nginx"])
    if build.is_standin(nginx):
        config = nginx.attrs["Config"]
        assert config["StopSignal"] == "SIGQUIT"
        assert set(config["ExposedPorts"]) == {"80/tcp", "443/tcp"}
        assert config["Cmd"] == ["nginx", "-g", "daemon off;"]
        assert len(nginx.labels[build.LABEL_HASH]) == 64
    pebble = client.images.get(refs["pebble"])
    assert refs["pebble"] == "companion-pebble:local"
    assert pebble.labels[build.LABEL_HASH] == build.context_hash(REPO / "e2e/images/pebble", base.id)


def test_ensure_images_is_cached(client: docker.DockerClient, refs: dict[str, str]) -> None:
    before = {ref: client.images.get(ref).id for ref in refs.values()}
    started = time.monotonic()
    assert build.ensure_images(client) == refs
    elapsed = time.monotonic() - started
    assert {ref: client.images.get(ref).id for ref in refs.values()} == before
    assert elapsed < 15, f"a cached ensure_images took {elapsed:.1f}s"


def test_base_image_is_bookworm_and_the_standin_is_slim(client: docker.DockerClient, refs: dict[str, str]) -> None:
    script = "cat /etc/os-release; [ -f /etc/companion-e2e-standin ] || exit 0; cat /etc/companion-e2e-standin; "
    script += "ls /etc/ssl/certs/ca-certificates.crt; ls /usr/share/man | wc -l; ls /var/lib/apt/lists | wc -l"
    out = client.containers.run(refs["base"], ["sh", "-c", script], remove=True).decode()
    assert "VERSION_CODENAME=bookworm" in out
    if not build.is_standin(client.images.get(refs["base"])):
        return  # a pulled official image: nothing of ours to check
    assert build.detect_mirror() in out  # the marker records the host's mirror
    assert "/etc/ssl/certs/ca-certificates.crt" in out  # the host's CA bundle, so https works in builds
    assert out.strip().splitlines()[-2:] == ["0", "1"], out  # no man pages; apt lists hold only partial/


def test_nginx_standin_runs_a_bind_mounted_conf_d(
    client: docker.DockerClient, refs: dict[str, str], run: Callable[..., Container], tmp_path: Path
) -> None:
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    (conf_d / "site.conf").write_text(
        "server {\n"
        "    listen 8080;\n"
        "    server_name site.example.test;\n"
        '    location / { return 200 "hello from site\\n"; }\n'
        "}\n"
    )
    nginx = run(refs["nginx"], volumes={str(conf_d): {"bind": "/etc/nginx/conf.d", "mode": "ro"}})

    code, out = _exec(nginx, "nginx", "-t")
    assert code == 0, out
    assert "test is successful" in out
    code, out = _exec(nginx, "nginx", "-v")
    assert code == 0, out
    assert out.startswith("nginx version: nginx/"), out
    code, out = _exec(nginx, "cat", "/etc/nginx/nginx.conf")
    assert "include /etc/nginx/conf.d/*.conf;" in out
    assert "sites-enabled" not in out

    http = urllib3.HTTPConnectionPool(_ip(nginx), 8080, timeout=5)
    response = wait_until(
        lambda: http.request("GET", "/", headers={"Host": "site.example.test"}, retries=False),
        20,
        0.2,
        "nginx to accept connections",
        until=lambda _: True,
        errors=urllib3.exceptions.NewConnectionError,
        logs=[("nginx", lambda: nginx.logs().decode(errors="replace"))],
    )
    assert response.status == 200
    assert response.data == b"hello from site\n"
    time.sleep(0.5)
    assert "GET / HTTP/1.1" in nginx.logs(stderr=False).decode(errors="replace"), "access log is not stdout"

    # The mount really is what nginx reads: a broken file in it makes nginx -t fail.
    (conf_d / "broken.conf").write_text("server { listen 8081; no_such_directive on; }\n")
    code, out = _exec(nginx, "nginx", "-t")
    assert code != 0
    assert "no_such_directive" in out


def test_pebble_serves_acme_over_tls_from_its_own_ca(
    client: docker.DockerClient, refs: dict[str, str], run: Callable[..., Container], tmp_path: Path
) -> None:
    pebble = run(refs["pebble"], environment={"PEBBLE_CERT_VALIDITY": "300", "PEBBLE_VA_NOSLEEP": "1"})
    ca_pem = _read_file(pebble, "/pebble-ca/ca.pem")
    assert ca_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca_pem)
    ip = _ip(pebble)

    # The listener certificate is for "pebble"/"localhost"/127.0.0.1: connect by IP, verify the name "pebble".
    pool = urllib3.HTTPSConnectionPool(
        ip,
        14000,
        cert_reqs="CERT_REQUIRED",
        ca_certs=str(ca_file),
        server_hostname="pebble",
        assert_hostname="pebble",
        timeout=5,
    )
    response = _wait_https(pool, "/dir")
    assert response.status == 200
    directory = json.loads(response.data)
    assert {"newAccount", "newNonce", "newOrder"} <= set(directory)

    # The management port uses the same listener certificate and serves Pebble's issuing root.
    mgmt = urllib3.HTTPSConnectionPool(
        ip,
        15000,
        cert_reqs="CERT_REQUIRED",
        ca_certs=str(ca_file),
        server_hostname="pebble",
        assert_hostname="pebble",
        timeout=5,
    )
    root = _wait_https(mgmt, "/roots/0")
    assert root.status == 200 and b"BEGIN CERTIFICATE" in root.data

    # Without the generated CA the connection must not verify.
    untrusted = urllib3.HTTPSConnectionPool(
        ip, 14000, cert_reqs="CERT_REQUIRED", server_hostname="pebble", assert_hostname="pebble", timeout=5
    )
    with pytest.raises(urllib3.exceptions.SSLError):
        untrusted.request("GET", "/dir", retries=False)

    logs = pebble.logs().decode(errors="replace")
    assert "certificate validity period of 300 seconds" in logs, logs

    # Keys are per container (per volume), never baked into the image.
    code, out = _exec(pebble, "stat", "-c", "%a", "/pebble-ca/key.pem")
    assert (code, out.strip()) == (0, "600")
    other = run(refs["pebble"], environment={"PEBBLE_DNS": "127.0.0.1:8053"})
    other_ca = _read_file(other, "/pebble-ca/ca.pem")
    assert other_ca != ca_pem
    (tmp_path / "other-ca.pem").write_bytes(other_ca)
    other_pool = urllib3.HTTPSConnectionPool(
        _ip(other), 14000, ca_certs=str(tmp_path / "other-ca.pem"), server_hostname="localhost", timeout=5
    )
    assert _wait_https(other_pool, "/dir").status == 200
    assert "127.0.0.1:8053" in other.logs().decode(errors="replace")


def test_pebble_image_passes_other_commands_through(refs: dict[str, str], run: Callable[..., Container]) -> None:
    srv = run(
        refs["pebble"],
        command=[
            "pebble-challtestsrv",
            "-management",
            ":8055",
            "-http01",
            ":5002",
            "-https01",
            "",
            "-tlsalpn01",
            "",
            "-dns01",
            ":8053",
        ],
    )
    http = urllib3.HTTPConnectionPool(_ip(srv), 8055, timeout=5)
    response = wait_until(
        lambda: http.request("POST", "/set-default-ipv4", body=json.dumps({"ip": "10.0.0.7"}), retries=False),
        20,
        0.2,
        "challtestsrv to accept connections",
        until=lambda _: True,
        errors=urllib3.exceptions.NewConnectionError,
        logs=[("challtestsrv", lambda: srv.logs().decode(errors="replace"))],
    )
    assert response.status == 200
    code, out = _exec(srv, "sh", "-c", "ls -A /pebble-ca | wc -l")
    assert (code, out.strip()) == (0, "0"), "challtestsrv must not create Pebble's CA"
