"""Drop-in certificate variables against the real parts: two Pebbles (the companion's CA and its "staging"
one), certbot, nginx, dockerd and the companion process; and certificates the operator put in the certs dir.

Every test sets ALLOWED_DOMAINS to its own names, so labelled containers that other tests run on the
shared daemon never reach this test's Pebbles.
"""

from __future__ import annotations

import datetime as dt
import json
import ssl
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.harness.appimage import AppRunner
from tests.harness.certs import build_cert, common_name, write_pair
from tests.harness.companion import Companion
from tests.harness.nginx import HostNginx
from tests.harness.pebble import Pebble
from tests.harness.tls import https_body, served_cert
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.acme]


def trusting(pebble: Pebble) -> ssl.SSLContext:
    """Trust only this Pebble's issuing root: a certificate from the other Pebble fails verification."""
    return ssl.create_default_context(cadata=pebble.roots_pem())


def accounts_at(certs_dir: Path, pebble: Pebble) -> list[Path]:
    """certbot's account folders for one Pebble (accounts/<host:port>/<path>/<id>)."""
    folder = certs_dir / "accounts" / f"127.0.0.1:{pebble.acme_port}" / "dir"
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def test_staging_and_emails_choose_ca_and_account_and_a_switch_to_staging_reorders(
    apps: AppRunner,
    host_nginx: HostNginx,
    make_pebble: Callable[..., Pebble],
    make_companion: Callable[..., Companion],
    tmp_path: Path,
) -> None:
    tag = uuid.uuid4().hex[:8]
    main, staging = make_pebble(host_nginx.http_port), make_pebble(host_nginx.http_port)
    bundle = tmp_path / "pebbles-ca.pem"
    bundle.write_text(main.ca_bundle_path.read_text() + staging.ca_bundle_path.read_text())
    companion = make_companion(
        ACME_CA_URI=main.directory_url,
        ACME_STAGING_URI=staging.directory_url,
        CA_BUNDLE=str(bundle),
        ALLOWED_DOMAINS=f"*.{tag}.dropin.test",
    )
    one, two, test = (f"{name}.{tag}.dropin.test" for name in ("one", "two", "test"))
    first = apps("one", environment={"VIRTUAL_HOST": one, "ACME_HOST": one, "ACME_EMAIL": "one@example.com"})
    apps("two", environment={"VIRTUAL_HOST": two, "LETSENCRYPT_HOST": two, "LETSENCRYPT_EMAIL": "two@example.com"})
    apps("test", environment={"VIRTUAL_HOST": test, "ACME_HOST": test, "ACME_TEST": "true", "APP_ID": "test"})
    # A container naming a CA of its own, and one whose two spellings disagree: refused, nothing ordered.
    evil, both = f"evil.{tag}.dropin.test", f"both.{tag}.dropin.test"
    evil_app = apps(
        "evil", environment={"VIRTUAL_HOST": evil, "ACME_HOST": evil, "ACME_CA_URI": "https://127.0.0.1:9/evil"}
    )
    both_app = apps(
        "both", environment={"VIRTUAL_HOST": both, "ACME_HOST": both, "LETSENCRYPT_HOST": f"x.{tag}.dropin.test"}
    )

    on_main, on_staging = trusting(main), trusting(staging)
    for host in (one, two):
        wait_until(lambda h=host: served_cert(host_nginx, h, on_main), timeout=90, interval=0.5, what=host)
    assert wait_until(lambda: https_body(host_nginx, test, on_staging) == (200, "test"), timeout=90, interval=0.5)
    with pytest.raises(ssl.SSLCertVerificationError):
        served_cert(host_nginx, test, on_main)
    companion.wait_idle()
    assert (main.orders_seen(), staging.orders_seen()) == (2, 1)
    # One account per (CA, email): two at the main CA, one at staging, each remembered.
    assert len(accounts_at(companion.certs_dir, main)) == 2
    assert len(accounts_at(companion.certs_dir, staging)) == 1
    remembered = json.loads((companion.certs_dir / "companion" / "accounts.json").read_text())
    assert sorted(remembered) == sorted(
        [
            f"{main.directory_url} one@example.com",
            f"{main.directory_url} two@example.com",
            f"{staging.directory_url} ",
        ]
    )
    log = companion.log()
    assert f"container {evil_app.name}: ACME_CA_URI='https://127.0.0.1:9/evil' rejected: not a CA this companion" in log
    assert (
        f"container {both_app.name}: ACME_HOST='{both}' rejected: differs from "
        f"LETSENCRYPT_HOST='x.{tag}.dropin.test'; keep ACME_HOST" in log
    )
    assert not (companion.certs_dir / "live" / evil).exists() and not (companion.certs_dir / "live" / both).exists()

    # The container is redeployed with ACME_TEST=true: its lineage comes again, from staging, with its
    # own email's account there.
    first.remove(force=True)
    apps("one2", environment={"VIRTUAL_HOST": one, "ACME_HOST": one, "ACME_EMAIL": "one@example.com", "ACME_TEST": "1"})
    wait_until(lambda: served_cert(host_nginx, one, on_staging), timeout=90, interval=0.5, what="staging lineage")
    companion.wait_idle()
    assert (main.orders_seen(), staging.orders_seen()) == (2, 2)
    assert len(accounts_at(companion.certs_dir, staging)) == 2
    renewal = (companion.certs_dir / "renewal" / f"{one}.conf").read_text()
    assert f"server = {staging.directory_url}" in renewal
    # The renewal keeps its CA: a forced renewal from the command line orders at staging again.
    assert companion.cli("renew", "--force", one).returncode == 0
    assert (main.orders_seen(), staging.orders_seen()) == (2, 3)
    wait_until(lambda: served_cert(host_nginx, one, on_staging), timeout=20, what="renewed at staging")


# -- certificates the operator put there ----------------------------------------------------------


def _issue(directory: Path, stem: tuple[str, str], common: str, names: list[str], ca: tuple) -> None:
    """A certificate signed by the local `ca`, written as `stem` (chain file, key file) in `directory`."""
    now = dt.datetime.now(dt.UTC)
    cert, key = build_cert(
        common, sans=names, issuer=ca, not_before=now - dt.timedelta(hours=1), not_after=now + dt.timedelta(days=30)
    )
    write_pair(directory / stem[0], directory / stem[1], cert, key)


def _local_ca() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    now = dt.datetime.now(dt.UTC)
    return build_cert(
        "companion tests: operator CA",
        ca=True,
        ca_key_usage=False,
        not_before=now - dt.timedelta(hours=1),
        not_after=now + dt.timedelta(days=30),
    )


def test_parent_wildcard_serves_a_sub_domain_and_a_default_certificate_answers_unknown_names(
    apps: AppRunner, host_nginx: HostNginx, pebble: Pebble, make_companion: Callable[..., Companion], tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    parent = f"{tag}.dropin.test"
    env = {
        "ACME_CA_URI": pebble.directory_url,
        "CA_BUNDLE": str(pebble.ca_bundle_path),
        "ALLOWED_DOMAINS": f"*.{parent},plain-{parent}",
    }
    ca = _local_ca()
    context = ssl.create_default_context(cadata=ca[0].public_bytes(serialization.Encoding.PEM).decode())
    certs_dir = tmp_path / "companion" / "certs"
    _issue(certs_dir / "live" / f"wild-{tag}", ("fullchain.pem", "privkey.pem"), "parent", [f"*.{parent}"], ca)
    sub, plain, unknown = f"sub.{parent}", f"plain-{parent}", f"unknown.{parent}"
    companion = make_companion(**env)
    apps("sub", environment={"VIRTUAL_HOST": sub, "APP_ID": "sub"})
    apps("plain", environment={"VIRTUAL_HOST": plain, "APP_ID": "plain"})

    # The parent's wildcard serves the sub-domain, verified against the operator's CA; nothing ordered.
    assert wait_until(lambda: https_body(host_nginx, sub, context) == (200, "sub"), timeout=30)
    assert host_nginx.get(sub)[0] == 301
    # Without a default certificate, unknown names and a host without a certificate are refused.
    for name in (unknown, plain):
        with pytest.raises(ssl.SSLError):
            served_cert(host_nginx, name)
    companion.wait_idle()
    assert companion.stop() == 0

    # The operator adds default.crt/default.key (nginx-proxy's convention): it answers both.
    _issue(certs_dir, ("default.crt", "default.key"), "operator default", [], ca)
    make_companion(**env)
    for name in (unknown, plain):
        presented = wait_until(lambda n=name: served_cert(host_nginx, n), timeout=30, what=f"default cert for {name}")
        assert common_name(presented) == "operator default"
    loose = ssl.create_default_context(cadata=ca[0].public_bytes(serialization.Encoding.PEM).decode())
    loose.check_hostname = False
    assert host_nginx.get(unknown, https=True, context=loose)[0] == 503
    assert https_body(host_nginx, sub, context) == (200, "sub")
    assert host_nginx.get(plain)[:1] == (200,)
    assert pebble.orders_seen() == 0
