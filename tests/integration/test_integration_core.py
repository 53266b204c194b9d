"""Core pipeline against a real Docker daemon and a real nginx on loopback (host mode)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

import pytest

from tests.harness.appimage import AppRunner
from tests.harness.companion import Companion
from tests.harness.nginx import HostNginx, body
from tests.harness.wait import wait_until

pytestmark = pytest.mark.integration


def unique_host(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}.example.test"


def test_container_is_routed_and_removed_when_stopped(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion]
) -> None:
    companion = make_companion()
    host = unique_host("app")
    app = apps("web", environment={"VIRTUAL_HOST": host, "APP_ID": "web-one"})
    assert wait_until(lambda: body(host_nginx, host) == (200, "web-one"), what="site routed")
    # The default server answers unknown hosts with 503, not with some other site.
    assert body(host_nginx, unique_host("unknown"))[0] == 503
    app.stop(timeout=1)
    wait_until(lambda: body(host_nginx, host)[0] == 503, what="site removed after stop")
    assert companion.alive


def test_labels_win_over_env_and_virtual_port_is_used(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion]
) -> None:
    make_companion()
    host = unique_host("port")
    apps(
        "port",
        labels={"VIRTUAL_HOST": host, "VIRTUAL_PORT": "8080"},
        environment={"VIRTUAL_HOST": "ignored.example.test", "APP_PORT": "8080", "APP_ID": "on-8080"},
    )
    assert wait_until(lambda: body(host_nginx, host) == (200, "on-8080"), what="labelled port routed")
    assert body(host_nginx, "ignored.example.test")[0] == 503


def test_two_containers_with_one_host_share_the_load(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion]
) -> None:
    make_companion()
    host = unique_host("pair")
    apps("a", environment={"VIRTUAL_HOST": host, "APP_ID": "first"})
    apps("b", environment={"VIRTUAL_HOST": host, "APP_ID": "second"})

    def both_seen() -> bool:
        return {body(host_nginx, host)[1] for _ in range(6)} == {"first", "second"}

    assert wait_until(both_seen, what="both backends answering")


def test_paths_route_to_their_own_containers(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion]
) -> None:
    make_companion()
    host = unique_host("paths")
    apps("root", environment={"VIRTUAL_HOST": host, "APP_ID": "root"})
    apps("api", environment={"VIRTUAL_HOST": host, "VIRTUAL_PATH": "/api/", "APP_ID": "api", "APP_PATHS": "/api"})
    assert wait_until(lambda: body(host_nginx, host, "/api/") == (200, "api"), what="/api/ routed")
    # nginx reloads gracefully: a worker of the previous generation may still take one connection.
    assert wait_until(lambda: body(host_nginx, host, "/") == (200, "root"), timeout=3, what="/ routed")


def test_broken_container_is_reported_and_does_not_disturb_a_good_one(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion]
) -> None:
    companion = make_companion()
    good = unique_host("good")
    apps("good", environment={"VIRTUAL_HOST": good, "APP_ID": "good"})
    assert wait_until(lambda: body(host_nginx, good) == (200, "good"), what="good site")
    bad = apps("bad", environment={"VIRTUAL_HOST": "evil.test;\n}\nserver{listen 1", "APP_ID": "bad"})
    line = companion.wait_log(rf"container {bad.name}: VIRTUAL_HOST=.* rejected: [^\n]+")
    assert "hostname" in line
    companion.wait_idle()
    assert body(host_nginx, good) == (200, "good")
    assert "evil" not in (host_nginx.conf_dir / "companion.conf").read_text()
    # Reported once per change, not once per pass: a later unrelated event does not repeat it.
    apps("other", environment={"VIRTUAL_HOST": unique_host("other"), "APP_ID": "other"})
    companion.wait_idle()
    assert companion.count(rf"container {bad.name}: VIRTUAL_HOST") == 1


def test_unchanged_world_writes_nothing_and_reloads_nothing(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion]
) -> None:
    host = unique_host("idem")
    # Only this test's container counts: other runs' containers on the daemon would change the world.
    first = make_companion(ALLOWED_DOMAINS=host)
    apps("idem", environment={"VIRTUAL_HOST": host, "APP_ID": "idem"})
    assert wait_until(lambda: body(host_nginx, host) == (200, "idem"), what="site routed")
    first.wait_idle()
    reloads = first.reloads()
    stamps = {p.name: os.stat(p).st_mtime_ns for p in host_nginx.conf_dir.iterdir()}
    assert first.stop() == 0
    second = make_companion(ALLOWED_DOMAINS=host)
    second.wait_log("connected to the Docker daemon")
    second.wait_idle(quiet=1.5)
    assert second.reloads() == reloads, "a restart with an unchanged world must not reload nginx"
    assert {p.name: os.stat(p).st_mtime_ns for p in host_nginx.conf_dir.iterdir()} == stamps
    assert body(host_nginx, host) == (200, "idem")


def test_render_prints_the_configuration_and_writes_nothing(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion]
) -> None:
    companion = Companion(host_nginx, host_nginx.conf_dir.parent / "render-only")
    host = unique_host("render")
    apps("render", environment={"VIRTUAL_HOST": host})
    result = companion.cli("render")
    assert result.returncode == 0, result.stderr
    assert f"server_name {host};" in result.stdout
    assert list(host_nginx.conf_dir.iterdir()) == []
    assert not companion.certs_dir.exists()


def test_render_without_docker_exits_non_zero_with_one_line(host_nginx: HostNginx) -> None:
    companion = Companion(host_nginx, host_nginx.conf_dir.parent / "nodocker", DOCKER_HOST="unix:///nonexistent.sock")
    result = companion.cli("render")
    assert result.returncode == 1
    assert result.stderr.startswith("companion: cannot reach the Docker daemon")
    assert len(result.stderr.strip().splitlines()) == 1
