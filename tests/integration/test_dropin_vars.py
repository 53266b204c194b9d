"""nginx-proxy compose files as written: VIRTUAL_HOST_MULTIPORTS, a bare `expose:` port, NETWORK_ACCESS and
the never-silent warnings, against a real Docker daemon, docker-compose and nginx (host mode)."""

from __future__ import annotations

import contextlib
import ipaddress
import random
import uuid
from collections.abc import Callable, Iterator

import docker
import pytest

from tests.harness.appimage import IMAGE, AppRunner
from tests.harness.companion import Companion
from tests.harness.images import derived_image
from tests.harness.nginx import HostNginx, body
from tests.harness.wait import wait_until

pytestmark = pytest.mark.integration
# Two busybox httpd in one container: / and /svc/ answer "on-80" on port 80, "on-8000" on port 8000.
TWO_PORTS = (
    "mkdir -p /www /w2/svc && echo on-80 > /www/index.html && echo on-8000 > /w2/index.html"
    " && echo on-8000 > /w2/svc/index.html && /bin/busybox httpd -p 8000 -h /w2"
    " && exec /bin/busybox httpd -f -p 80 -h /www"
)


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex[:8]


def test_multiports_from_compose_routes_two_ports_and_a_path_with_dest(
    compose: Callable[[dict], None], host_nginx: HostNginx, make_companion: Callable[..., Companion], tag: str
) -> None:
    make_companion(ALLOWED_DOMAINS=f"*-{tag}.example.test")
    one, two = f"one-{tag}.example.test", f"two-{tag}.example.test"
    multiports = f'{one}:\n  "/":\n  "/svc/":\n    port: 8000\n    dest: "/"\n{two}:\n  "/":\n    port: 8000\n'
    compose(
        {
            "multi": {
                "image": IMAGE,
                "command": ["/bin/sh", "-c", TWO_PORTS],
                "labels": {"companion.test": "1"},
                "environment": {"VIRTUAL_HOST_MULTIPORTS": multiports},
            }
        }
    )
    # One probe for all: right after a reload an old nginx worker may still answer one request.
    expected = {
        (two, "/"): (200, "on-8000"),
        (one, "/"): (200, "on-80"),  # empty path entry: the image's one exposed port
        (one, "/svc/"): (200, "on-8000"),  # dest "/": port 8000 is asked for /, not /svc/
        (one, "/nothing-here"): (404, None),  # port 80 answers the rest of the host
    }

    def answers() -> dict:
        got = {key: body(host_nginx, *key) for key in expected}
        return {key: (status, None if expected[key][1] is None else text) for key, (status, text) in got.items()}

    wait_until(lambda: answers() == expected, what="both ports and the path with dest routed")


def test_bare_expose_port_from_compose_is_the_default_port(
    compose: Callable[[dict], None],
    docker_client: docker.DockerClient,
    host_nginx: HostNginx,
    make_companion: Callable[..., Companion],
    tag: str,
) -> None:
    make_companion(ALLOWED_DOMAINS=f"*-{tag}.example.test")
    host = f"exposed-{tag}.example.test"
    compose(
        {
            "exposed": {
                "image": derived_image(docker_client, expose=[]),  # the image exposes nothing itself
                "expose": ["81"],
                "labels": {"companion.test": "1"},
                "environment": {"VIRTUAL_HOST": host, "APP_PORT": "81", "APP_ID": "on-81"},
            }
        }
    )
    assert wait_until(lambda: body(host_nginx, host) == (200, "on-81"), what="routed to the exposed port 81")


@contextlib.contextmanager
def public_network(client: docker.DockerClient) -> Iterator[tuple[docker.models.networks.Network, str]]:
    """A bridge network on a random /24 of 198.18.0.0/15 (RFC 2544 benchmarking, not private), and the
    host's gateway address on it: a container there reaches the host's nginx from a public source."""
    for _ in range(5):
        subnet = ipaddress.ip_network(f"198.{random.randint(18, 19)}.{random.randint(0, 255)}.0/24")
        gateway = str(subnet.network_address + 1)
        pool = docker.types.IPAMPool(subnet=str(subnet), gateway=gateway)
        with contextlib.suppress(docker.errors.APIError):
            network = client.networks.create(
                f"ctest-public-{uuid.uuid4().hex[:8]}",
                driver="bridge",
                ipam=docker.types.IPAMConfig(pool_configs=[pool]),
            )
            break
    else:
        pytest.fail("could not create a Docker network on 198.18.0.0/15")
    try:
        yield network, gateway
    finally:
        network.remove()


def fetch_from(container: docker.models.containers.Container, url: str, host: str) -> str:
    """busybox wget inside `container`: the body, or wget's error line (e.g. '... 403 Forbidden')."""
    code, out = container.exec_run(["wget", "-q", "-O", "-", "--header", f"Host: {host}", url])
    return out.decode(errors="replace").strip() if code == 0 else "failed: " + out.decode(errors="replace").strip()


def test_network_access_internal_denies_a_public_source_but_not_loopback_or_the_acme_token(
    apps: AppRunner,
    docker_client: docker.DockerClient,
    host_nginx: HostNginx,
    make_companion: Callable[..., Companion],
    tag: str,
) -> None:
    """Proves with real nginx and real source addresses: 127.0.0.1 passes, a container whose address is
    in 198.18.0.0/15 gets 403 from the internal site but 200 from an external one, and the ACME token
    stays reachable from that public address."""
    companion = make_companion(ALLOWED_DOMAINS=f"*-{tag}.example.test")
    inside, outside = f"inside-{tag}.example.test", f"outside-{tag}.example.test"
    apps("inside", environment={"VIRTUAL_HOST": inside, "NETWORK_ACCESS": "internal", "APP_ID": "inside"})
    apps("outside", environment={"VIRTUAL_HOST": outside, "APP_ID": "outside"})
    wait_until(lambda: body(host_nginx, inside) == (200, "inside"), what="internal site answers loopback")
    wait_until(lambda: body(host_nginx, outside) == (200, "outside"), what="external site answers loopback")
    (companion.webroot / ".well-known" / "acme-challenge").mkdir(parents=True, exist_ok=True)
    (companion.webroot / ".well-known" / "acme-challenge" / "tok-public").write_text("token-body")
    with public_network(docker_client) as (network, gateway):
        client_box = apps("client", network=network.name, wait=False)
        wait_until(lambda: client_box.reload() or client_box.status == "running", what="client running")
        base = f"http://{gateway}:{host_nginx.http_port}"
        assert fetch_from(client_box, f"{base}/", outside) == "outside"
        denied = fetch_from(client_box, f"{base}/", inside)
        assert denied.startswith("failed") and "403" in denied, denied
        token = fetch_from(client_box, f"{base}/.well-known/acme-challenge/tok-public", inside)
        assert token == "token-body"
        client_box.remove(force=True)
    assert body(host_nginx, inside) == (200, "inside")


def test_unsupported_and_mistyped_variables_are_reported_once_and_routing_goes_on(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion], tag: str
) -> None:
    companion = make_companion(ALLOWED_DOMAINS=f"*-{tag}.example.test")
    host = f"warn-{tag}.example.test"
    app = apps(
        "warn",
        environment={"VIRTUAL_HOST": host, "VIRTUAL_ROOT": "/srv", "LETSENCRYPT_HOSTS": host, "APP_ID": "warned"},
    )
    wait_until(lambda: body(host_nginx, host) == (200, "warned"), what="site routed despite the warnings")
    mistyped = (
        rf"container {app.name}: LETSENCRYPT_HOSTS is not a variable the companion reads; "
        r"did you mean LETSENCRYPT_HOST\?"
    )
    unsupported = (
        rf"container {app.name}: VIRTUAL_ROOT is not supported \(not yet: FastCGI upstreams are not supported\); "
        "see README"
    )
    companion.wait_log(mistyped)
    companion.wait_log(unsupported)
    apps("other", environment={"VIRTUAL_HOST": f"other-{tag}.example.test"})  # a change: another pass
    wait_until(lambda: body(host_nginx, f"other-{tag}.example.test")[0] == 200, what="second site routed")
    companion.wait_idle()
    assert companion.count(mistyped) == 1 and companion.count(unsupported) == 1
