"""External account binding against a real CA: a Pebble that requires it, real certbot, real nginx serving
the webroot. The pure rules are in tests/unit/test_profiles_eab.py."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from companion.acme.ordering import ACCOUNTS_FILE, Orderer
from companion.core.model import CertRequest
from companion.settings import config
from companion.settings.config import Settings
from tests.harness.nginx import HostNginx
from tests.harness.pebble import Pebble

pytestmark = [pytest.mark.integration, pytest.mark.acme]

KID = "kid-1"
KEY = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"


def settings_for(tmp_path: Path, pebble: Pebble, env: dict[str, str]) -> Settings:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    base = {
        "CERTS_DIR": str(tmp_path / "certs"),
        "ACME_WEBROOT": str(tmp_path / "webroot"),
        "ACME_CA_URI": pebble.directory_url,
        "CA_BUNDLE": str(pebble.ca_bundle_path),
    }
    return config.load(parser.parse_args([]), {**base, **env})


def every_byte_under(folder: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file())


def test_an_eab_only_ca_issues_with_the_key_and_refuses_without_it(
    tmp_path: Path, host_nginx: HostNginx, make_pebble: Callable[..., Pebble]
) -> None:
    pebble = make_pebble(host_nginx.http_port, eab_keys={KID: KEY})
    (tmp_path / "webroot").mkdir()
    (tmp_path / "certs").mkdir()  # the certs volume: the operator's, there before the companion
    (host_nginx.conf_dir / "webroot.conf").write_text(
        f"server {{ listen {host_nginx.http_port}; location /.well-known/acme-challenge/ "
        f"{{ root {tmp_path / 'webroot'}; }} }}\n"
    )
    host_nginx.reload()
    request = CertRequest("eab.example.test", ("eab.example.test",), "me@example.com")

    # Without the binding the CA refuses the account: one clear error, and no order reaches it.
    unbound = Orderer(settings_for(tmp_path, pebble, {}))
    try:
        refused = unbound.order(request, force=False)
    finally:
        unbound.stop(3.0)
    assert "registering an account at" in refused.failed
    assert "external account" in refused.failed.lower(), refused.failed
    assert pebble.orders_seen() == 0

    # With the key from a file (a Docker secret) the account is bound and the certificate issued.
    secret = tmp_path / "eab_hmac_key"
    secret.write_text(KEY + "\n")
    settings = settings_for(tmp_path, pebble, {"ACME_EAB_KID": KID, "ACME_EAB_HMAC_KEY_FILE": str(secret)})
    bound = Orderer(settings)
    try:
        issued = bound.order(request, force=False)
    finally:
        bound.stop(3.0)
    assert issued.error == "", issued.error
    certs = tmp_path / "certs"
    assert (certs / "live" / "eab.example.test" / "fullchain.pem").is_file()
    assert pebble.orders_seen() == 1
    accounts = json.loads((certs / ACCOUNTS_FILE).read_text())
    assert list(accounts) == [f"{pebble.directory_url} me@example.com {KID}"]
    # certbot's own log (in the certs volume) holds its arguments: the key must be in none of its files.
    assert (certs / "companion" / "logs" / "letsencrypt.log").is_file()
    assert KEY.encode() not in every_byte_under(certs)
    assert KEY.encode() not in every_byte_under(tmp_path / "webroot")
