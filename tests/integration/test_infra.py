"""Prove the test helpers drive the real parts: dockerd + app image, host nginx, Pebble + certbot."""

from __future__ import annotations

import datetime as dt
import os
import ssl
import subprocess
from pathlib import Path

import docker
from cryptography import x509
from cryptography.x509.verification import PolicyBuilder, Store

from tests.harness.appimage import IMAGE, AppRunner, container_ip
from tests.harness.nginx import HostNginx, http_get
from tests.harness.pebble import CERTBOT, Pebble


def test_app_container_answers_with_app_id(apps: AppRunner, docker_client: docker.DockerClient) -> None:
    named = apps("infra-a", environment={"APP_ID": "alpha"})
    unnamed = apps("infra-b", hostname="bravo-host")
    other_port = apps("infra-c", environment={"APP_ID": "charlie", "APP_PORT": "8080", "APP_PATHS": "/api /x/y"})
    assert named.name.startswith("ctest-infra-a-")
    assert docker_client.images.get(IMAGE).attrs["Config"]["ExposedPorts"] == {"80/tcp": {}}

    status, _, body = http_get(container_ip(named), 80, "whatever")
    assert (status, body) == (200, b"alpha\n")
    status, _, body = http_get(container_ip(unnamed), 80, "whatever")
    assert (status, body) == (200, b"bravo-host\n")
    assert http_get(container_ip(unnamed), 80, "whatever", path="/nope/")[0] == 404
    for path in ("/", "/api/", "/x/y/"):
        status, _, body = http_get(container_ip(other_port), 8080, "whatever", path=path)
        assert (status, body) == (200, b"charlie\n"), path


def test_apps_fixture_removes_its_containers(docker_client: docker.DockerClient, app_image: str) -> None:
    runner = AppRunner(docker_client)
    container = runner("infra-cleanup")
    runner.cleanup()
    assert not docker_client.containers.list(all=True, filters={"name": container.name})


def test_host_nginx_empty_then_proxying_to_app(host_nginx: HostNginx, apps: AppRunner) -> None:
    assert host_nginx.master_pid() is not None
    assert host_nginx.worker_pids()
    assert list(host_nginx.conf_dir.iterdir()) == []
    check = subprocess.run(host_nginx.test_command, shell=True, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr

    app = apps("infra-proxy", environment={"APP_ID": "proxied"})
    (host_nginx.conf_dir / "site.conf").write_text(
        f"server {{\n"
        f"    listen 127.0.0.1:{host_nginx.http_port};\n"
        f"    server_name app.test;\n"
        f"    location / {{ proxy_pass http://{container_ip(app)}:80; }}\n"
        f"}}\n"
    )
    check = subprocess.run(host_nginx.test_command, shell=True, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    workers_before = set(host_nginx.worker_pids())
    host_nginx.reload()
    assert set(host_nginx.worker_pids()) - workers_before

    status, headers, body = host_nginx.get("app.test")
    assert (status, body) == (200, b"proxied\n"), host_nginx.error_log_text()
    assert headers["Server"].startswith("nginx")

    # a broken config is refused by the test command and by reload; the old config keeps serving
    (host_nginx.conf_dir / "broken.conf").write_text("server { listen nonsense; }\n")
    assert subprocess.run(host_nginx.test_command, shell=True, capture_output=True).returncode != 0
    assert subprocess.run(host_nginx.reload_command, shell=True, capture_output=True).returncode != 0
    assert host_nginx.get("app.test")[2] == b"proxied\n"


def test_pebble_issues_certificate_via_host_nginx_webroot(
    pebble: Pebble, host_nginx: HostNginx, tmp_path: Path
) -> None:
    webroot = tmp_path / "webroot"
    (webroot / ".well-known" / "acme-challenge").mkdir(parents=True)
    (host_nginx.conf_dir / "acme.conf").write_text(
        f"server {{\n"
        f"    listen 127.0.0.1:{host_nginx.http_port};\n"
        f"    server_name infra.test;\n"
        f"    location /.well-known/acme-challenge/ {{ root {webroot}; }}\n"
        f"}}\n"
    )
    host_nginx.reload()
    assert pebble.resolve_a("infra.test") == ["127.0.0.1"]
    orders_before = pebble.orders_seen()

    certbot_dir = tmp_path / "certbot"
    result = subprocess.run(
        [
            *CERTBOT,
            "certonly",
            "--webroot",
            "-w",
            str(webroot),
            "-d",
            "infra.test",
            "--server",
            pebble.directory_url,
            "--config-dir",
            str(certbot_dir / "config"),
            "--work-dir",
            str(certbot_dir / "work"),
            "--logs-dir",
            str(certbot_dir / "logs"),
            "--register-unsafely-without-email",
            "--agree-tos",
            "--non-interactive",
        ],
        env={**os.environ, "REQUESTS_CA_BUNDLE": str(pebble.ca_bundle_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}\n{pebble.log_text()}"
    assert pebble.orders_seen() == orders_before + 1
    assert "infra.test" in host_nginx.access_log_text() or "acme-challenge" in host_nginx.access_log_text()

    live = certbot_dir / "config" / "live" / "infra.test"
    chain = x509.load_pem_x509_certificates((live / "fullchain.pem").read_bytes())
    leaf, intermediates = chain[0], chain[1:]
    roots = x509.load_pem_x509_certificates(pebble.roots_pem().encode())
    validity = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert dt.timedelta(days=89) < validity <= dt.timedelta(days=91)
    verifier = PolicyBuilder().store(Store(roots)).build_server_verifier(x509.DNSName("infra.test"))
    verified = verifier.verify(leaf, intermediates)
    assert verified[-1] == roots[0]

    # and over TLS through nginx, with ssl trusting only Pebble's current root
    (host_nginx.conf_dir / "tls.conf").write_text(
        f"server {{\n"
        f"    listen 127.0.0.1:{host_nginx.https_port} ssl;\n"
        f"    server_name infra.test;\n"
        f"    ssl_certificate {live / 'fullchain.pem'};\n"
        f"    ssl_certificate_key {live / 'privkey.pem'};\n"
        f"    location / {{ return 200 'tls ok\\n'; }}\n"
        f"}}\n"
    )
    host_nginx.reload()
    context = ssl.create_default_context(cadata=pebble.roots_pem())
    status, _, body = host_nginx.get("infra.test", https=True, context=context)
    assert (status, body) == (200, b"tls ok\n")


def test_pebble_restart_has_new_root_and_dns_overrides(pebble: Pebble) -> None:
    root_before = pebble.roots_pem()
    assert pebble.intermediates_pem().startswith("-----BEGIN CERTIFICATE-----")
    pebble.add_a_record("pinned.test", "10.9.8.7")
    assert pebble.resolve_a("pinned.test") == ["10.9.8.7"]
    pebble.clear_a_record("pinned.test")
    pebble.set_default_ipv4("127.0.0.2")
    assert pebble.resolve_a("pinned.test") == ["127.0.0.2"]

    pebble.stop()
    try:
        http_get("127.0.0.1", pebble.acme_port, "127.0.0.1", https=True, timeout=1)
        raise AssertionError("Pebble still answers after stop()")
    except OSError:
        pass
    pebble.start()
    assert pebble.roots_pem() != root_before
