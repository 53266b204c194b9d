"""A DNS-01 order through the real worker: it skips the HTTP self-check and checks the credentials file before
certbot runs. The pure rules are tests/unit/test_dns01.py.
"""

from __future__ import annotations

import os
from pathlib import Path

from companion.acme.orders import AcmeManager
from companion.core.model import CertRequest
from companion.core.values import Challenge
from companion.settings.config import Settings


def test_dns01_order_skips_the_http_self_check_and_checks_the_credentials(tmp_path: Path) -> None:
    credentials = tmp_path / "dns.ini"
    credentials.write_text("x")
    os.chmod(credentials, 0o604)
    settings = Settings(certs_dir=str(tmp_path / "certs"), dns_plugin="dns-rfc2136", dns_credentials=str(credentials))
    manager = AcmeManager(settings, wake=lambda _r: None, self_check_url=lambda: "http://127.0.0.1:9")
    try:
        request = CertRequest("a.com", ("a.com",), "", challenge=Challenge.DNS01)
        assert "can be read by every user" in manager.orderer.authenticator(request).precheck(request)
        credentials.chmod(0o600)
        # no nginx answers at :9: the HTTP self-check was not run
        assert manager.orderer.authenticator(request).precheck(request) == ""
        http = CertRequest("a.com", ("a.com",), "")
        assert "self-check" in manager.orderer.authenticator(http).precheck(http)
    finally:
        manager.stop()
