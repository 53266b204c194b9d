"""DNS-01 with real parts: Debian's BIND 9 (TSIG-signed RFC 2136 updates), Pebble validating against it,
certbot's dns-rfc2136 plugin run by the companion, and a real nginx serving what was issued."""

from __future__ import annotations

import base64
import re
import ssl
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from tests.harness.appimage import AppRunner
from tests.harness.bind import Bind
from tests.harness.companion import Companion
from tests.harness.nginx import HostNginx
from tests.harness.pebble import Pebble
from tests.harness.ports import free_port
from tests.harness.tls import https_body, served_cert
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.acme]


def dns_env(pebble: Pebble, bind9: Bind, credentials: Path, **extra: str) -> dict[str, str]:
    """A companion that orders from `pebble` over DNS-01 through `bind9`, routing only the module's zone."""
    return {
        "ACME_CA_URI": pebble.directory_url,
        "CA_BUNDLE": str(pebble.ca_bundle_path),
        "ALLOWED_DOMAINS": f"*.{bind9.zone}",
        "ACME_DNS_PLUGIN": "dns-rfc2136",
        "ACME_DNS_CREDENTIALS": str(credentials),
        "ACME_DNS_PROPAGATION_SECONDS": "0",
        **extra,
    }


def dns_pebble(make_pebble: Callable[..., Pebble], bind9: Bind) -> Pebble:
    """Pebble asking bind9 for every name; its HTTP-01 port is one nothing listens on, so only DNS-01 can pass."""
    return make_pebble(free_port(), dnsserver=bind9.address)


def sans(cert: x509.Certificate) -> list[str]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def files_holding(folder: Path, secret: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink() and secret.encode() in p.read_bytes()]


def test_one_wildcard_serves_two_sites_and_a_host_pebble_cannot_reach_gets_its_own(
    bind9: Bind,
    apps: AppRunner,
    host_nginx: HostNginx,
    make_pebble: Callable[..., Pebble],
    make_companion: Callable[..., Companion],
    tmp_path: Path,
) -> None:
    pebble = dns_pebble(make_pebble, bind9)
    credentials = bind9.credentials(tmp_path / "rfc2136.ini")
    companion = make_companion(**dns_env(pebble, bind9, credentials))
    zone, tag = bind9.zone, uuid.uuid4().hex[:6]
    first, second = f"one-{tag}.{zone}", f"two-{tag}.{zone}"
    wildcard = f"*.{zone}"
    apps("dns-one", environment={"VIRTUAL_HOST": first, "LETSENCRYPT_HOST": wildcard, "APP_ID": "one"})
    apps("dns-two", environment={"VIRTUAL_HOST": second, "LETSENCRYPT_HOST": wildcard, "APP_ID": "two"})
    context = ssl.create_default_context(cadata=pebble.roots_pem())  # Pebble's root only: no -k
    for host, body in ((first, "one"), (second, "two")):
        assert wait_until(lambda h=host, b=body: https_body(host_nginx, h, context) == (200, b), timeout=90, what=host)
        # a worker of the previous nginx generation may still hand out the placeholder for a moment
        assert wait_until(lambda h=host: sans(served_cert(host_nginx, h, context)) == [wildcard], timeout=5)
    assert pebble.orders_seen() == 1  # one wildcard order for both sites, none per host
    assert bind9.challenge_records() == {}  # certbot removed its TXT record from the zone
    lineage = f"_wildcard_.{zone}"
    table = companion.cli("certs").stdout
    assert re.search(rf"^{re.escape(lineage)}\s+{re.escape(wildcard)}\s.*\svalid$", table, re.MULTILINE), table
    assert f"  serves: {first}, {second}" in table, table

    # A host whose HTTP port Pebble cannot reach: DNS-01 alone proves it, and its own certificate (more
    # specific than the wildcard that covers it meanwhile) is the one served once issued.
    third = f"lan-{tag}.{zone}"
    apps("dns-lan", environment={"VIRTUAL_HOST": third, "LETSENCRYPT_HOST": third, "ACME_CHALLENGE": "dns-01"})
    assert wait_until(lambda: sans(served_cert(host_nginx, third, context)) == [third], timeout=90, what="own cert")
    assert pebble.orders_seen() == 2
    assert bind9.challenge_records() == {}
    assert sans(served_cert(host_nginx, first, context)) == [wildcard]

    # Renewal takes the same path: through the service's worker, then by the command alone.
    before = served_cert(host_nginx, second, context).serial_number
    asked = companion.cli("renew", "--force", lineage)
    assert asked.returncode == 0 and asked.stdout.endswith(f"{lineage}: renewed\n"), asked.stdout + asked.stderr
    assert wait_until(lambda: served_cert(host_nginx, second, context).serial_number != before, timeout=20)
    assert pebble.orders_seen() == 3
    companion.wait_idle()
    assert companion.stop() == 0
    alone = companion.cli("renew", "--force", lineage)
    assert alone.returncode == 0 and alone.stdout == f"{lineage}: renewed\n", alone.stdout + alone.stderr
    assert pebble.orders_seen() == 4
    assert bind9.challenge_records() == {}

    # The TSIG secret went to certbot by file name only: not in the log, not in the certs volume.
    assert bind9.secret not in companion.log() + asked.stdout + asked.stderr + alone.stdout + alone.stderr
    assert files_holding(companion.certs_dir, bind9.secret) == []
    assert "Traceback" not in companion.log()


def test_unsafe_or_wrong_credentials_fail_once_with_the_reason_and_back_off(
    bind9: Bind,
    apps: AppRunner,
    host_nginx: HostNginx,
    make_pebble: Callable[..., Pebble],
    make_companion: Callable[..., Companion],
    tmp_path: Path,
) -> None:
    pebble = dns_pebble(make_pebble, bind9)
    wrong = base64.b64encode(b"not the key bind9 knows, 32 byte").decode()
    credentials = bind9.credentials(tmp_path / "rfc2136.ini", secret=wrong, mode=0o644)
    base = 2.0
    companion = make_companion(**dns_env(pebble, bind9, credentials, ACME_RETRY_BASE=str(base)))
    host = f"bad-{uuid.uuid4().hex[:6]}.{bind9.zone}"
    apps("dns-bad", environment={"VIRTUAL_HOST": host, "LETSENCRYPT_HOST": host, "ACME_CHALLENGE": "dns-01"})

    # World-readable: refused before anything reaches the CA or the DNS server.
    line = companion.wait_log(rf"certificate {re.escape(host)}: .*attempt 1 failed.*", timeout=30)
    assert f"dns credentials {credentials} can be read by every user (mode 0644)" in line
    assert pebble.order_requests_seen() == 0

    # Private now, but the TSIG secret is wrong: certbot's reason, in one line, then the backoff.
    credentials.chmod(0o600)
    started = time.monotonic()
    line = companion.wait_log(rf"certificate {re.escape(host)}: .*attempt 2 failed.*", timeout=30)
    assert "\n" not in line and len(line) < 700
    assert ": Encountered error adding TXT record: The peer didn't like the signature we sent; attempt 2" in line
    time.sleep(5)
    elapsed = time.monotonic() - started + base  # attempt 2 came `base` seconds after attempt 1
    attempts = companion.count(rf"certificate {re.escape(host)}: .*attempt \d+ failed")
    allowed = sum(1 for n in range(10) if base * (2**n - 1) <= elapsed)
    assert 2 <= attempts <= allowed, (attempts, allowed, elapsed)
    assert pebble.orders_seen() <= attempts - 1  # the refused attempt never ordered
    assert companion.cli("certs").stdout.count("failing") == 1
    assert wrong not in companion.log()
    assert files_holding(companion.certs_dir, wrong) == []
    assert bind9.challenge_records() == {}
    assert "Traceback" not in companion.log()


def test_wildcard_without_dns01_is_refused_with_what_to_set(
    bind9: Bind, apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion]
) -> None:
    companion = make_companion(ALLOWED_DOMAINS=f"*.{bind9.zone}")
    host = f"web-{uuid.uuid4().hex[:6]}.{bind9.zone}"
    apps("dns-none", environment={"VIRTUAL_HOST": host, "LETSENCRYPT_HOST": f"*.{bind9.zone}", "APP_ID": "web"})
    line = companion.wait_log(r"container ctest-dns-none-\S+: LETSENCRYPT_HOST=.* rejected: .*", timeout=30)
    assert "a wildcard certificate can only be validated over DNS-01: set ACME_DNS_PLUGIN" in line
    assert "ordering" not in companion.log()
