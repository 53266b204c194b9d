"""ACME profiles against a real CA: Pebble 2.10 offering two profiles, real certbot, real nginx serving the
webroot. Orders go through the Orderer the worker and `companion renew` use. The pure rules are in
tests/unit/test_profiles_eab.py."""

from __future__ import annotations

import datetime as dt
import re
import ssl
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from companion.acme.certs import scan
from companion.acme.ordering import Orderer
from companion.acme.policy import due_reason
from companion.core.certificates import CertStatus
from companion.core.model import CertRequest
from companion.settings.config import Settings
from tests.harness.appimage import AppRunner
from tests.harness.companion import Companion
from tests.harness.nginx import HostNginx
from tests.harness.pebble import Pebble
from tests.harness.tls import served_cert
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.acme]

DAY = 24 * 3600
PROFILES = {"default": 90 * DAY, "shortlived": 6 * DAY}


def days(lifetime: dt.timedelta) -> int:
    """A lifetime in whole days: Pebble's notAfter is inclusive (validity minus one second)."""
    return round(lifetime.total_seconds() / DAY)


@pytest.fixture
def orderer(
    tmp_path: Path, host_nginx: HostNginx, make_pebble: Callable[..., Pebble]
) -> Iterator[tuple[Orderer, Pebble]]:
    pebble = make_pebble(host_nginx.http_port, profiles=PROFILES)
    (tmp_path / "webroot").mkdir()
    (tmp_path / "certs").mkdir()  # the certs volume: the operator's, there before the companion
    (host_nginx.conf_dir / "webroot.conf").write_text(
        f"server {{ listen {host_nginx.http_port}; location /.well-known/acme-challenge/ "
        f"{{ root {tmp_path / 'webroot'}; }} }}\n"
    )
    host_nginx.reload()
    settings = Settings(
        certs_dir=str(tmp_path / "certs"),
        webroot=str(tmp_path / "webroot"),
        acme_server=pebble.directory_url,
        ca_bundle=str(pebble.ca_bundle_path),
    )
    made = Orderer(settings)
    yield made, pebble
    made.stop(3.0)


def lineage(tmp_path: Path, name: str) -> CertStatus:
    status = scan(tmp_path / "certs")[name]
    assert not status.problem, status.problem
    return status


def test_each_certificate_gets_its_profile_and_a_change_of_profile_reorders(
    tmp_path: Path, orderer: tuple[Orderer, Pebble]
) -> None:
    place, pebble = orderer
    short = CertRequest("short.example.test", ("short.example.test",), "", profile="shortlived")
    normal = CertRequest("normal.example.test", ("normal.example.test",), "", profile="default")
    for request in (short, normal):
        assert place.order(request, force=False).error == ""
    # The lifetime is the CA's profile's (validity read from the issued certificate), side by side.
    assert days(lineage(tmp_path, "short.example.test").lifetime) == 6
    assert days(lineage(tmp_path, "normal.example.test").lifetime) == 90
    # certbot recorded the profile; asking for another one makes the certificate due, and it is reordered.
    status = lineage(tmp_path, "short.example.test")
    assert status.profile == "shortlived"
    now = dt.datetime.now(dt.UTC)
    assert due_reason(short, status, now, 0) == ""
    moved = CertRequest("short.example.test", ("short.example.test",), "", profile="default")
    assert due_reason(moved, status, now, 0) == "profile changed from shortlived to default"
    assert place.order(moved, force=True).error == ""
    again = lineage(tmp_path, "short.example.test")
    assert (again.profile, days(again.lifetime)) == ("default", 90)
    assert again.serial != status.serial
    assert pebble.orders_seen() == 3


def test_a_profile_the_ca_does_not_offer_is_refused_before_any_order(
    tmp_path: Path, orderer: tuple[Orderer, Pebble]
) -> None:
    place, pebble = orderer
    asked = CertRequest("classic.example.test", ("classic.example.test",), "", profile="classic")
    outcome = place.order(asked, force=False)
    assert (
        outcome.refused
        == f"ACME_CERT_PROFILE=classic: the CA at {pebble.directory_url} offers only default, shortlived"
    )
    assert pebble.orders_seen() == 0
    assert not (tmp_path / "certs" / "live" / "classic.example.test").exists()
    # Another certificate from the same CA is not affected.
    fine = CertRequest("fine.example.test", ("fine.example.test",), "", profile="shortlived")
    assert place.order(fine, force=False).error == ""
    assert pebble.orders_seen() == 1


def test_a_containers_profile_and_the_companions_default_reach_the_served_certificates(
    apps: AppRunner, host_nginx: HostNginx, make_pebble: Callable[..., Pebble], make_companion: Callable[..., Companion]
) -> None:
    """Through the running service: ACME_CERT_PROFILE on one container, the companion's default for the other;
    the lifetimes are read from what nginx serves, its chain verified against Pebble's root."""
    pebble = make_pebble(host_nginx.http_port, profiles=PROFILES)
    domain = f"{uuid.uuid4().hex[:8]}.example.test"
    companion = make_companion(
        ACME_CA_URI=pebble.directory_url,
        CA_BUNDLE=str(pebble.ca_bundle_path),
        ALLOWED_DOMAINS=f"*.{domain}",
        ACME_CERT_PROFILE="default",
    )
    short, normal = f"short.{domain}", f"normal.{domain}"
    apps("short", environment={"VIRTUAL_HOST": short, "LETSENCRYPT_HOST": short, "ACME_CERT_PROFILE": "shortlived"})
    apps("normal", environment={"VIRTUAL_HOST": normal, "LETSENCRYPT_HOST": normal})
    context = ssl.create_default_context(cadata=pebble.roots_pem())
    lifetimes = {}
    for host in (short, normal):
        cert = wait_until(
            lambda h=host: served_cert(host_nginx, h, context),
            timeout=60,
            what=f"a certificate from Pebble served for {host}",
            logs=[("companion", companion.log), ("pebble", pebble.log_text)],
        )
        lifetimes[host] = days(cert.not_valid_after_utc - cert.not_valid_before_utc)
    assert lifetimes == {short: 6, normal: 90}
    table = companion.cli("certs").stdout
    for host, profile in ((short, "shortlived"), (normal, "default")):
        row = rf"^{re.escape(host)}\s+{re.escape(host)}\s+Pebble Intermediate CA \S+\s+{profile}\s"
        assert re.search(row, table, re.MULTILINE), table
