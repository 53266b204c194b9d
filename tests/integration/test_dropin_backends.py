"""Drop-in backends and fallbacks against the real parts: DEFAULT_HOST, DEFAULT_ROOT,
ENABLE_HTTP_ON_MISSING_CERT, containers on the host's network, and a container that left nginx's network.

Host-mode tests run the host's nginx beside `companion run`; docker-mode tests run nginx in a real
container (tests/harness/nginxcontainer.py). Every test sets ALLOWED_DOMAINS to its own names (a uuid
tag), so containers of other test runs on the shared daemon never reach its nginx.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Callable

import docker
import pytest

from tests.harness.appimage import CONTAINER_LABEL, IMAGE, AppRunner
from tests.harness.companion import Companion
from tests.harness.nginx import HostNginx, body
from tests.harness.nginxcontainer import NginxContainer
from tests.harness.ports import free_port
from tests.harness.wait import wait_until

pytestmark = pytest.mark.integration


def new_tag() -> str:
    return uuid.uuid4().hex[:8]


def names(tag: str) -> tuple[str, Callable[[str], str]]:
    """The test's allow-list pattern, and a name under it."""
    return f"*.{tag}.dropin.test", lambda label: f"{label}.{tag}.dropin.test"


def status(nginx: HostNginx | NginxContainer, host: str, path: str = "/") -> int:
    return nginx.get(host, path)[0]


def restart(companion: Companion, make_companion: Callable[..., Companion], **settings: str) -> Companion:
    """Stop `companion` and start another on the same work folder with other settings."""
    assert companion.stop() == 0
    return make_companion(**settings)


# -- DEFAULT_HOST ------------------------------------------------------------------------------------


def test_default_host_answers_unknown_names_and_without_it_they_get_503(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion]
) -> None:
    tag = new_tag()
    allowed, name = names(tag)
    fallback, other, unknown = name("fallback"), name("other"), name("nobody")
    apps("fallback", environment={"VIRTUAL_HOST": fallback, "APP_ID": "fallback"})
    apps("other", environment={"VIRTUAL_HOST": other, "APP_ID": "other"})
    companion = make_companion(ALLOWED_DOMAINS=allowed, DEFAULT_HOST=fallback)
    wait_until(lambda: body(host_nginx, unknown) == (200, "fallback"), timeout=30, what="unknown name -> DEFAULT_HOST")
    assert body(host_nginx, "203.0.113.7") == (200, "fallback")  # a bare IP in Host, as scanners send
    assert body(host_nginx, other) == (200, "other") and body(host_nginx, fallback) == (200, "fallback")
    assert host_nginx.check().returncode == 0, host_nginx.check().stderr

    companion = restart(companion, make_companion, ALLOWED_DOMAINS=allowed)
    wait_until(lambda: status(host_nginx, unknown) == 503, timeout=30, what="unknown name -> 503 without DEFAULT_HOST")
    assert body(host_nginx, other) == (200, "other")

    missing = name("missing")
    companion = restart(companion, make_companion, ALLOWED_DOMAINS=allowed, DEFAULT_HOST=missing)
    line = companion.wait_log(rf"WARNING [^\n]*DEFAULT_HOST={re.escape(missing)}[^\n]*", timeout=30)
    assert "no container serves this host; unknown names answer 503" in line
    assert status(host_nginx, unknown) == 503 and body(host_nginx, other) == (200, "other")
    # Another container starting wakes the loop: the warning is not repeated while nothing changed.
    apps("third", environment={"VIRTUAL_HOST": name("third"), "APP_ID": "third"})
    wait_until(lambda: body(host_nginx, name("third")) == (200, "third"), timeout=30, what="third routed")
    assert companion.count(rf"WARNING [^\n]*DEFAULT_HOST={re.escape(missing)}") == 1


# -- DEFAULT_ROOT ------------------------------------------------------------------------------------


def test_default_root_redirects_slash_of_a_host_with_only_sub_paths(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion]
) -> None:
    tag = new_tag()
    allowed, name = names(tag)
    host = name("paths")
    apps("api", environment={"VIRTUAL_HOST": host, "VIRTUAL_PATH": "/api/", "APP_ID": "api", "APP_PATHS": "/api"})
    make_companion(ALLOWED_DOMAINS=allowed, DEFAULT_ROOT="302 $scheme://$host/api/?from=root")
    wait_until(lambda: body(host_nginx, host, "/api/") == (200, "api"), timeout=30, what="api routed")
    code, headers, _ = host_nginx.get(host, "/")
    assert (code, headers["Location"]) == (302, f"http://{host}/api/?from=root")
    assert host_nginx.get(host, "/elsewhere")[0] == 302
    assert host_nginx.check().returncode == 0, host_nginx.check().stderr


def test_default_root_status_code_replaces_the_404(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion]
) -> None:
    tag = new_tag()
    allowed, name = names(tag)
    host = name("teapot")
    apps("api", environment={"VIRTUAL_HOST": host, "VIRTUAL_PATH": "/api/", "APP_ID": "api", "APP_PATHS": "/api"})
    make_companion(ALLOWED_DOMAINS=allowed, DEFAULT_ROOT="418")
    wait_until(lambda: body(host_nginx, host, "/api/") == (200, "api"), timeout=30, what="api routed")
    assert status(host_nginx, host) == 418


# -- ENABLE_HTTP_ON_MISSING_CERT ---------------------------------------------------------------------


def test_http_is_held_at_503_until_a_certificate_exists_but_the_challenge_is_served(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion]
) -> None:
    tag = new_tag()
    allowed, name = names(tag)
    host, plain = name("pending"), name("plain")
    apps("pending", environment={"VIRTUAL_HOST": host, "LETSENCRYPT_HOST": host, "APP_ID": "pending"})
    apps("plain", environment={"VIRTUAL_HOST": plain, "HTTPS_METHOD": "noredirect", "APP_ID": "plain"})
    # No CA answers (the Companion's default ACME_CA_URI is a closed port): the certificate never comes.
    companion = make_companion(ALLOWED_DOMAINS=allowed, ENABLE_HTTP_ON_MISSING_CERT="false")
    wait_until(lambda: status(host_nginx, host) == 503, timeout=30, what="pending site held at 503")
    assert body(host_nginx, plain) == (200, "plain")  # noredirect is not held
    challenge = companion.webroot / ".well-known" / "acme-challenge"
    challenge.mkdir(parents=True, exist_ok=True)
    (challenge / f"tok-{tag}").write_text(f"token {tag}\n")
    assert body(host_nginx, host, f"/.well-known/acme-challenge/tok-{tag}") == (200, f"token {tag}")
    assert host_nginx.check().returncode == 0, host_nginx.check().stderr

    restart(companion, make_companion, ALLOWED_DOMAINS=allowed)  # the default, true: served over HTTP
    wait_until(lambda: body(host_nginx, host) == (200, "pending"), timeout=30, what="pending site served over HTTP")


# -- network_mode: host ------------------------------------------------------------------------------


def test_compose_service_with_network_mode_host_is_reached_on_loopback_by_host_nginx(
    host_nginx: HostNginx, make_companion: Callable[..., Companion], compose: Callable[[str], str]
) -> None:
    tag = new_tag()
    allowed, name = names(tag)
    host, port = name("hostnet"), free_port()
    compose_file = f"""\
services:
  app:
    image: {IMAGE}
    network_mode: host
    labels:
      {CONTAINER_LABEL}: "1"
    environment:
      APP_ID: hostnet
      APP_PORT: "127.0.0.1:{port}"
      VIRTUAL_HOST: {host}
      VIRTUAL_PORT: "{port}"
"""
    compose(compose_file)
    make_companion(ALLOWED_DOMAINS=allowed)
    wait_until(lambda: body(host_nginx, host) == (200, "hostnet"), timeout=30, what="host-network app via 127.0.0.1")
    conf = (host_nginx.conf_dir / "companion.conf").read_text()
    assert f"server 127.0.0.1:{port};" in conf
    assert host_nginx.check().returncode == 0, host_nginx.check().stderr


def test_network_mode_host_container_is_reached_at_the_gateway_by_nginx_in_a_container(
    apps: AppRunner, docker_nginx: NginxContainer, docker_companion: Callable[..., Companion]
) -> None:
    tag = new_tag()
    allowed, name = names(tag)
    host, bridged = name("hostnet"), name("bridged")
    assert docker_nginx.container is not None
    docker_nginx.container.reload()
    gateway = docker_nginx.container.attrs["NetworkSettings"]["Networks"]["bridge"]["Gateway"]
    assert gateway, docker_nginx.container.attrs["NetworkSettings"]
    port = free_port()
    # Listens on the host's address on nginx's network only: nothing else of the host is exposed.
    apps(
        "hostnet",
        environment={
            "VIRTUAL_HOST": host,
            "VIRTUAL_PORT": str(port),
            "APP_ID": "hostnet",
            "APP_PORT": f"{gateway}:{port}",
        },
        network_mode="host",
    )
    apps("bridged", environment={"VIRTUAL_HOST": bridged, "APP_ID": "bridged"})
    docker_companion(ALLOWED_DOMAINS=allowed)
    wait_until(
        lambda: docker_nginx.body(host) == (200, "hostnet"),
        timeout=30,
        what="host-network app via the gateway",
        stable=3,
    )
    assert docker_nginx.body(bridged) == (200, "bridged")
    conf = (docker_nginx.conf_dir / "companion.conf").read_text()
    assert f"server {gateway}:{port};" in conf
    code, output = docker_nginx.check()
    assert code == 0, output


# -- a container that left nginx's network -----------------------------------------------------------


def test_container_disconnected_from_nginx_network_answers_502_and_comes_back(
    docker_client: docker.DockerClient,
    apps: AppRunner,
    docker_nginx: NginxContainer,
    docker_companion: Callable[..., Companion],
) -> None:
    tag = new_tag()
    allowed, name = names(tag)
    leaving, staying = name("leaving"), name("staying")
    app = apps("leaving", environment={"VIRTUAL_HOST": leaving, "APP_ID": "leaving"})
    apps("staying", environment={"VIRTUAL_HOST": staying, "APP_ID": "staying"})
    companion = docker_companion(ALLOWED_DOMAINS=allowed)
    wait_until(lambda: docker_nginx.body(leaving) == (200, "leaving"), timeout=30, what="leaving app routed", stable=3)
    bridge = docker_client.networks.get("bridge")
    bridge.disconnect(app)
    try:
        wait_until(
            lambda: status(docker_nginx, leaving) == 502, timeout=30, what="502 once the app left the network", stable=3
        )
        app.reload()
        assert app.status == "running"
        line = companion.wait_log(rf"WARNING [^\n]*container {re.escape(app.name)}: not reachable[^\n]*")
        assert "no IP address on a network shared with nginx" in line and "502" in line
        assert docker_nginx.body(staying) == (200, "staying")
        assert status(docker_nginx, leaving, "/any/path") == 502
        assert status(docker_nginx, name("unknown")) == 503  # the host was not handed to the default server
        code, output = docker_nginx.check()
        assert code == 0, output
    finally:
        with contextlib.suppress(docker.errors.APIError):
            bridge.connect(app)
    wait_until(
        lambda: docker_nginx.body(leaving) == (200, "leaving"),
        timeout=30,
        what="routed again once reconnected",
        stable=3,
    )
    companion.wait_log(rf"INFO [^\n]*resolved: container {re.escape(app.name)}: not reachable")
