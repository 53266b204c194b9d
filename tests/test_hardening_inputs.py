"""Hardening against what comes from outside: request paths at the challenge location, label values
certbot would misread, control characters in other programs' output, and paths no container claims.
Real nginx, dockerd and companion process; nothing is mocked."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from companion import plan
from companion.render import RenderOptions, render
from tests.infra.companion import wait_for
from tests.infra.nginx import HostNginx, body

pytestmark = pytest.mark.integration

CHALLENGE = "/.well-known/acme-challenge/"


def unique_host(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}.inputs.test"


# -- 1. the challenge regex is anchored at the true end ------------------------------------------------


def serve_rendered(nginx: HostNginx, webroot: Path, *, acme_snippet: Callable[[str], str] = lambda text: text) -> None:
    """Render the empty state (default servers with the challenge snippet) into nginx and reload it."""
    options = RenderOptions(
        conf_dir=str(nginx.conf_dir),
        webroot=str(webroot),
        http_port=nginx.http_port,
        https_port=nginx.https_port,
        nginx_version=(1, 22, 1),
    )
    files = render(plan.build([], {}, plan.CertFiles("/unused/fullchain.pem", "/unused/privkey.pem")), options)
    files["companion-acme.inc"] = acme_snippet(files["companion-acme.inc"])
    for name, text in files.items():
        (nginx.conf_dir / name).write_text(text)
    check = nginx.check()
    assert check.returncode == 0, check.stderr
    before = set(nginx.worker_pids())
    nginx.reload()
    # A worker of the previous generation may still accept for a moment after the new one started.
    wait_for(lambda: not before & set(nginx.worker_pids()), timeout=10, what="the old nginx workers to exit")


def test_challenge_location_does_not_serve_a_file_named_with_a_trailing_newline(
    host_nginx: HostNginx, tmp_path: Path
) -> None:
    webroot = tmp_path / "webroot"
    folder = webroot / ".well-known" / "acme-challenge"
    folder.mkdir(parents=True)
    secret = "SECRET-NEWLINE-" + uuid.uuid4().hex
    (folder / "tok\n").write_text(secret)
    token, token_body = "Tok_en-" + uuid.uuid4().hex, "token-body-" + uuid.uuid4().hex
    (folder / token).write_text(token_body)

    # The hole, with the real nginx: the regex ending in "$" matches "/…/tok\n" (nginx decodes %0a).
    serve_rendered(host_nginx, webroot, acme_snippet=lambda text: text.replace('+\\z"', '+$"'))
    assert body(host_nginx, "any.inputs.test", CHALLENGE + "tok%0a") == (200, secret), "the probe must reach tok\\n"

    # What the companion renders: only token names are served.
    serve_rendered(host_nginx, webroot)
    assert '[A-Za-z0-9_-]+\\z"' in (host_nginx.conf_dir / "companion-acme.inc").read_text()
    for path in ("tok%0a", "tok%0A", "tok%0d%0a", token + "%0a"):
        status, _, data = host_nginx.get("any.inputs.test", CHALLENGE + path)
        assert status == 404 and secret.encode() not in data, (path, status)
    status, headers, data = host_nginx.get("any.inputs.test", CHALLENGE + token)
    assert (status, data.decode()) == (200, token_body)
    assert headers.get_content_type() == "text/plain"
