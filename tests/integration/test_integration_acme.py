"""Certificates against a real Pebble + challtestsrv, real certbot and real nginx, companion in host mode."""

from __future__ import annotations

import re
import ssl
import stat
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from companion.acme.orders import AcmeManager
from companion.core.model import CertRequest
from companion.settings.config import Settings
from tests.harness.appimage import AppRunner
from tests.harness.companion import Companion
from tests.harness.nginx import HostNginx
from tests.harness.pebble import Pebble
from tests.harness.tls import https_body, served_cert
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.acme]


# Each test module run claims its own domain, and its companions route only that domain, so labelled
# containers of anything else on the same Docker daemon never add orders to the counts asserted here.
DOMAIN = f"{uuid.uuid4().hex[:8]}.example.test"


def unique_host(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}.{DOMAIN}"


def acme_env(pebble: Pebble, **extra: str) -> dict[str, str]:
    return {
        "ACME_CA_URI": pebble.directory_url,
        "CA_BUNDLE": str(pebble.ca_bundle_path),
        "ALLOWED_DOMAINS": f"*.{DOMAIN}",
        **extra,
    }


def verified_context(pebble: Pebble) -> ssl.SSLContext:
    """Trust only Pebble's issuing root, fetched from its management port: no -k anywhere."""
    return ssl.create_default_context(cadata=pebble.roots_pem())


def test_labelled_container_gets_a_verified_certificate_and_redirect(
    apps: AppRunner,
    host_nginx: HostNginx,
    pebble: Pebble,
    make_companion: Callable[..., Companion],
) -> None:
    companion = make_companion(**acme_env(pebble))
    host = unique_host("tls")
    apps("tls", environment={"VIRTUAL_HOST": host, "LETSENCRYPT_HOST": host, "APP_ID": "tls-app"})
    context = verified_context(pebble)
    assert wait_until(lambda: https_body(host_nginx, host, context) == (200, "tls-app"), timeout=60, what="HTTPS")
    # Graceful reload: a worker of the previous generation may still take a connection for a moment.
    status, headers, _ = wait_until(lambda: (r := host_nginx.get(host, "/some/path?q=1"))[0] == 301 and r, timeout=3)
    assert headers["Location"] == f"https://{host}:{host_nginx.https_port}/some/path?q=1"
    _, https_headers, _ = wait_until(lambda: host_nginx.get(host, https=True, context=context), timeout=3)
    assert https_headers["Strict-Transport-Security"] == "max-age=31536000"

    live = companion.certs_dir / "live" / host
    key = (live / "privkey.pem").resolve()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(key.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(live.stat().st_mode) == 0o700
    assert pebble.orders_seen() == 1
    table = companion.cli("certs")
    row = rf"{re.escape(host)}\s+{re.escape(host)}\s+Pebble Intermediate CA \S+\s+-\s+\S+ \S+\s+(89|90)\.\d\s+valid"
    assert re.search(row, table.stdout), table.stdout

    # A second start finds the certificate on disk and orders nothing.
    companion.wait_idle()
    assert companion.stop() == 0
    again = make_companion(**acme_env(pebble))
    again.wait_log("connected to the Docker daemon")
    again.wait_idle(quiet=1.5)
    assert pebble.orders_seen() == 1
    assert "ordering" not in again.log().split("connected to the Docker daemon")[-1]
    assert https_body(host_nginx, host, context) == (200, "tls-app")


def test_forced_renewal_is_served_without_restarting_anything(
    apps: AppRunner,
    host_nginx: HostNginx,
    pebble: Pebble,
    make_companion: Callable[..., Companion],
) -> None:
    companion = make_companion(**acme_env(pebble))
    host = unique_host("renew")
    apps("renew", environment={"VIRTUAL_HOST": host, "LETSENCRYPT_HOST": host, "APP_ID": "renew"})
    context = verified_context(pebble)
    first = wait_until(lambda: served_cert(host_nginx, host, context), timeout=60, what="first certificate")
    master = host_nginx.master_pid()
    orders = pebble.orders_seen()
    result = companion.cli("renew", "--force", host)
    assert result.returncode == 0, result.stdout + result.stderr
    socket = companion.control_socket
    assert result.stdout == f"# asked the running service at {socket}\n{host}: renewed\n"
    assert stat.S_IMODE(socket.stat().st_mode) == 0o600
    # The service's own worker ordered it: one order, and its log says who asked.
    assert pebble.orders_seen() == orders + 1
    assert companion.count(rf"certificate {re.escape(host)} \({re.escape(host)}\): ordering, asked by") == 1
    renewed = wait_until(
        lambda: (c := served_cert(host_nginx, host, context)).serial_number != first.serial_number and c,
        timeout=20,
        what="renewed certificate served",
    )
    assert renewed.not_valid_after_utc >= first.not_valid_after_utc
    assert host_nginx.master_pid() == master, "nginx was reloaded, not restarted"
    assert companion.alive
    for text in (result.stdout + result.stderr, companion.log()):
        assert "Another instance of Certbot is already running" not in text
    assert pebble.orders_seen() == orders + 1

    # Without a service the command orders by itself, as before; the socket left with the service.
    assert companion.stop() == 0
    assert not socket.exists()
    alone = companion.cli("renew", "--force", host)
    assert alone.returncode == 0, alone.stdout + alone.stderr
    assert alone.stdout == f"{host}: renewed\n"
    assert pebble.orders_seen() == orders + 2


def test_short_lived_certificate_renews_by_itself(
    apps: AppRunner,
    host_nginx: HostNginx,
    make_pebble: Callable[..., Pebble],
    make_companion: Callable[..., Companion],
) -> None:
    pebble = make_pebble(host_nginx.http_port, validity=24)
    make_companion(**acme_env(pebble))
    host = unique_host("short")
    apps("short", environment={"VIRTUAL_HOST": host, "LETSENCRYPT_HOST": host, "APP_ID": "short"})
    context = verified_context(pebble)
    first = wait_until(lambda: served_cert(host_nginx, host, context), timeout=60, what="first certificate")
    # Default window: renew when a third of the lifetime is left, i.e. ~16 s after issuance.
    renewed = wait_until(
        lambda: (c := served_cert(host_nginx, host, context)).serial_number != first.serial_number and c,
        timeout=40,
        interval=0.5,
        what="automatic renewal",
    )
    assert renewed.not_valid_after_utc > first.not_valid_after_utc


def test_certificate_is_obtained_with_pebbles_nonce_rejection_on(
    apps: AppRunner,
    host_nginx: HostNginx,
    make_pebble: Callable[..., Pebble],
    make_companion: Callable[..., Companion],
) -> None:
    pebble = make_pebble(host_nginx.http_port, nonce_reject=None)  # Pebble's default: 5% bad nonces
    # certbot retries a bad nonce once; two in a row fail the run, and the companion's own retry
    # (backoff base 2 s here) must then still get the certificate by itself.
    make_companion(**acme_env(pebble, ACME_RETRY_BASE="2"))
    hosts = [unique_host(f"nonce{i}") for i in range(3)]
    for i, host in enumerate(hosts):
        apps(f"nonce{i}", environment={"VIRTUAL_HOST": host, "LETSENCRYPT_HOST": host, "APP_ID": f"n{i}"})
    context = verified_context(pebble)
    for i, host in enumerate(hosts):
        assert wait_until(lambda h=host, i=i: https_body(host_nginx, h, context) == (200, f"n{i}"), timeout=90)


def test_failed_validation_backs_off_keeps_other_sites_and_recovers(
    apps: AppRunner,
    host_nginx: HostNginx,
    pebble: Pebble,
    make_companion: Callable[..., Companion],
) -> None:
    base = 2.0
    companion = make_companion(**acme_env(pebble, ACME_RETRY_BASE=str(base)))
    good, bad = unique_host("good"), unique_host("bad")
    apps("good", environment={"VIRTUAL_HOST": good, "LETSENCRYPT_HOST": good, "APP_ID": "good"})
    context = verified_context(pebble)
    assert wait_until(lambda: https_body(host_nginx, good, context) == (200, "good"), timeout=60)
    orders_before = pebble.orders_seen()

    # The CA's DNS no longer knows the name: every validation of it fails.
    pebble.set_default_ipv4("")
    pebble.add_a_record(good, "127.0.0.1")
    started = time.monotonic()
    apps("bad", environment={"VIRTUAL_HOST": bad, "LETSENCRYPT_HOST": bad, "APP_ID": "bad"})
    companion.wait_log(rf"certificate {re.escape(bad)}: .*attempt 1 failed", timeout=30)
    time.sleep(9)
    elapsed = time.monotonic() - started
    failures = companion.count(rf"certificate {re.escape(bad)}: .*attempt \d+ failed")
    orders = pebble.orders_seen() - orders_before
    # Attempts at 0, base, 3*base, 7*base, ... : never more than the backoff allows in the time elapsed.
    allowed = sum(1 for n in range(10) if base * (2**n - 1) <= elapsed)
    assert 2 <= orders <= allowed, (orders, allowed, elapsed)
    assert orders - 1 <= failures <= orders  # the latest attempt may still be in flight at the CA
    reason_line = re.search(rf"certificate {re.escape(bad)}: (.*)attempt 1 failed", companion.log()).group(1)
    assert len(reason_line) < 600 and "\n" not in reason_line
    assert "Traceback" not in companion.log()
    # Meanwhile the good site keeps its certificate; the bad one is served over HTTP.
    assert https_body(host_nginx, good, context) == (200, "good")
    assert wait_until(lambda: host_nginx.get(bad)[0] == 200)
    assert companion.cli("certs").stdout.count("failing") == 1

    # The backoff survives a restart: a new companion does not order again straight away.
    companion.stop()
    orders_at_restart = pebble.orders_seen()
    restarted = make_companion(**acme_env(pebble, ACME_RETRY_BASE=str(base)))
    restarted.wait_log("connected to the Docker daemon")
    time.sleep(1)
    assert pebble.orders_seen() == orders_at_restart

    # The fault goes away: the companion recovers by itself at its next retry.
    pebble.set_default_ipv4("127.0.0.1")
    assert wait_until(lambda: https_body(host_nginx, bad, context) == (200, "bad"), timeout=90, interval=0.5)
    assert restarted.alive


def test_self_check_failure_orders_nothing(tmp_path: Path, host_nginx: HostNginx, pebble: Pebble) -> None:
    """When nginx does not serve the webroot, no order reaches the CA and the reason says why."""
    woken: list[str] = []
    settings = Settings(
        certs_dir=str(tmp_path / "certs"),
        webroot=str(tmp_path / "webroot"),
        acme_server=pebble.directory_url,
        ca_bundle=str(pebble.ca_bundle_path),
    )
    manager = AcmeManager(settings, woken.append, lambda: f"http://127.0.0.1:{host_nginx.http_port}")
    request = CertRequest("nowhere.example.test", ("nowhere.example.test",), "")
    tokens = tmp_path / "webroot" / ".well-known" / "acme-challenge"
    try:
        # nginx not listening at all ...
        assert "did not answer for nowhere.example.test" in manager.orderer.order(request, force=False).refused
        # ... and nginx answering without serving the companion's webroot.
        (host_nginx.conf_dir / "other.conf").write_text(
            f"server {{ listen {host_nginx.http_port}; root {tmp_path / 'elsewhere'}; }}\n"
        )
        host_nginx.reload()
        checked = manager.orderer.authenticator(request)
        error = checked.precheck(request)
        assert len(list(tokens.iterdir())) == 1  # the token stays until the order is over ...
        checked.cleanup()
    finally:
        manager.stop()
    assert "did not serve the webroot for nowhere.example.test (HTTP 404)" in error
    assert pebble.orders_seen() == 0
    assert list(tokens.iterdir()) == []  # ... and cleanup removes it


def test_changed_names_reissue_the_certificate(
    apps: AppRunner,
    host_nginx: HostNginx,
    pebble: Pebble,
    make_companion: Callable[..., Companion],
) -> None:
    make_companion(**acme_env(pebble))
    first, second = unique_host("one"), unique_host("two")
    both = f"{first},{second}"
    shared = unique_host("shared")  # a certificate name is checked against ALLOWED_DOMAINS too
    app = apps("names", environment={"VIRTUAL_HOST": both, "LETSENCRYPT_HOST": first, "CERT_NAME": shared})
    context = verified_context(pebble)
    cert = wait_until(lambda: served_cert(host_nginx, first, context), timeout=60, what="first certificate")
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    ) == [first]
    app.remove(force=True)
    apps("names2", environment={"VIRTUAL_HOST": both, "LETSENCRYPT_HOST": both, "CERT_NAME": shared})

    def covers_both() -> bool:
        leaf = served_cert(host_nginx, second, context)
        names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return sorted(names.get_values_for_type(x509.DNSName)) == sorted([first, second])

    assert wait_until(covers_both, timeout=60, interval=0.3, what="certificate expanded to both names")
