"""acme-companion's certificates imported at start, against the real parts: Pebble, certbot, nginx, dockerd.

A certificate Pebble issued is laid out as acme-companion keeps it; a companion starting on that certs dir
serves it without ordering (orders counted at Pebble), and its renewal is an ordinary certbot renewal.
"""

from __future__ import annotations

import shutil
import ssl
import uuid
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from tests.harness.acmecompanion import Issued, snapshot, write_layout
from tests.harness.appimage import AppRunner
from tests.harness.companion import Companion
from tests.harness.nginx import HostNginx
from tests.harness.pebble import Pebble
from tests.harness.tls import https_body, served_cert
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.acme]


def test_an_imported_certificate_is_served_without_an_order_and_renewed_normally(
    apps: AppRunner, host_nginx: HostNginx, pebble: Pebble, make_companion: Callable[..., Companion]
) -> None:
    tag = uuid.uuid4().hex[:8]
    host, www, bad = f"{tag}.import.test", f"www.{tag}.import.test", f"bad.{tag}.import.test"
    settings = {
        "ACME_CA_URI": pebble.directory_url,
        "CA_BUNDLE": str(pebble.ca_bundle_path),
        "ALLOWED_DOMAINS": f"{tag}.import.test,*.{tag}.import.test",
    }
    apps("site", environment={"VIRTUAL_HOST": f"{host},{www}", "LETSENCRYPT_HOST": f"{host},{www}", "APP_ID": "site"})
    apps("bad", environment={"VIRTUAL_HOST": bad, "APP_ID": "bad"})  # served over HTTP only: no LETSENCRYPT_HOST
    trust = ssl.create_default_context(cadata=pebble.roots_pem())

    # acme-companion's certificate: one Pebble issued (through a first companion, whose store is then put away).
    first = make_companion(**settings)
    issued = wait_until(lambda: served_cert(host_nginx, host, trust), timeout=90, interval=0.5, what="first order")
    first.wait_idle()
    assert first.stop() == 0
    assert pebble.orders_seen() == 1
    certs_dir = first.certs_dir
    lineage = certs_dir / "live" / host
    pem = Issued(
        (lineage / "cert.pem").read_bytes(),
        (lineage / "chain.pem").read_bytes(),
        (lineage / "privkey.pem").read_bytes(),
        issued.serial_number,
    )
    shutil.rmtree(certs_dir)
    certs_dir.mkdir()
    write_layout(certs_dir, [host, www], pem)
    # A pair whose key belongs to another certificate: refused, and it stops nothing else.
    stranger = ec.generate_private_key(ec.SECP256R1())
    key_pem = stranger.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    write_layout(certs_dir, [bad], Issued(pem.cert_pem, pem.chain_pem, key_pem, pem.serial))
    before = snapshot(certs_dir)

    companion = make_companion(**settings)
    companion.wait_log(rf"certificate {host} \({host}, {www}\): imported from acme-companion's")
    for name in (host, www):
        served = wait_until(lambda n=name: served_cert(host_nginx, n, trust), timeout=30, interval=0.3, what=name)
        assert served.serial_number == pem.serial, "the served certificate is not the imported one"
    assert https_body(host_nginx, host, trust) == (200, "site")
    companion.wait_idle()
    assert pebble.orders_seen() == 1, "an order was placed although the imported certificate is valid"
    this_run = companion.log().rsplit("connected to the Docker daemon", 1)[-1]
    assert "ordering" not in this_run
    assert (
        f"acme-companion certificate {certs_dir / f'{bad}.crt'}: the private key does not match the certificate; "
        "not imported" in this_run
    )
    assert snapshot(certs_dir) == before, "acme-companion's files were changed"

    # The renewal is certbot's own, on the imported lineage: a new certificate, the originals untouched.
    renewed = companion.cli("renew", "--force", host)
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    assert pebble.orders_seen() == 2
    fresh = wait_until(
        lambda: (c := served_cert(host_nginx, host, trust)).serial_number != pem.serial and c,
        timeout=30,
        interval=0.3,
        what="the renewed certificate served",
    )
    assert (certs_dir / "archive" / host / "cert2.pem").is_file()
    assert f"{fresh.serial_number:x}" != f"{pem.serial:x}"
    assert snapshot(certs_dir) == before
