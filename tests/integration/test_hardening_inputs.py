"""Hardening against what comes from outside: request paths at the challenge location, label values
certbot would misread, control characters in other programs' output, and paths no container claims.
Real nginx, dockerd and companion process; nothing is mocked."""

from __future__ import annotations

import re
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from companion.acme.policy import certbot_command
from companion.core import certificates, plan
from companion.core.model import CertRequest
from companion.nginx.render import MAIN_FILE, RenderOptions, render
from companion.settings.config import Settings
from tests.harness.appimage import AppRunner
from tests.harness.companion import Companion
from tests.harness.nginx import HostNginx, body
from tests.harness.wait import wait_until

pytestmark = pytest.mark.integration

CHALLENGE = "/.well-known/acme-challenge/"
# Containers other tests run on the shared daemon stay out of this file's companions (and their nginx -t).
ALLOWED = "*.inputs.test"


def unique_host(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}.inputs.test"


def more_passes(companion: Companion, count: int = 2) -> None:
    """Wake the loop and wait until it has run `count` more passes (each one rewrites the heartbeat).

    Used instead of waiting for a quiet log, which other tests' containers on the shared daemon may
    never allow: their events keep the loop (and its DEBUG lines) busy."""
    heartbeat = Path(companion.env["HEARTBEAT_FILE"])
    for i in range(count):
        stamp = heartbeat.stat().st_mtime_ns
        (companion.certs_dir / "live" / f"nudge-{uuid.uuid4().hex[:6]}-{i}.txt").write_text("wake up\n")
        wait_until(lambda s=stamp: heartbeat.stat().st_mtime_ns != s, timeout=40, what="another loop pass")


# -- 1. the challenge regex is anchored at the true end ------------------------------------------------


def serve_rendered(nginx: HostNginx, webroot: Path, *, main_file: Callable[[str], str] = lambda text: text) -> None:
    """Render the empty state (default servers with the challenge snippet) into nginx and reload it."""
    options = RenderOptions(
        conf_dir=str(nginx.conf_dir),
        webroot=str(webroot),
        http_port=nginx.http_port,
        https_port=nginx.https_port,
        nginx_version=(1, 22, 1),
    )
    files = render(plan.build([], {}, certificates.CertFiles("/unused/fullchain.pem", "/unused/privkey.pem")), options)
    files[MAIN_FILE] = main_file(files[MAIN_FILE])  # its map picks the token names the snippet serves
    for name, text in files.items():
        (nginx.conf_dir / name).write_text(text)
    check = nginx.check()
    assert check.returncode == 0, check.stderr
    before = set(nginx.worker_pids())
    nginx.reload()
    # A worker of the previous generation may still accept for a moment after the new one started.
    wait_until(lambda: not before & set(nginx.worker_pids()), timeout=10, what="the old nginx workers to exit")


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
    serve_rendered(host_nginx, webroot, main_file=lambda text: text.replace('+\\z"', '+$"'))
    assert body(host_nginx, "any.inputs.test", CHALLENGE + "tok%0a") == (200, secret), "the probe must reach tok\\n"

    # What the companion renders: only token names are served.
    serve_rendered(host_nginx, webroot)
    assert '[A-Za-z0-9_-]+\\z" $uri;' in (host_nginx.conf_dir / MAIN_FILE).read_text()
    for path in ("tok%0a", "tok%0A", "tok%0d%0a", token + "%0a"):
        status, _, data = host_nginx.get("any.inputs.test", CHALLENGE + path)
        assert status == 404 and secret.encode() not in data, (path, status)
    status, headers, data = host_nginx.get("any.inputs.test", CHALLENGE + token)
    assert (status, data.decode()) == (200, token_body)
    assert headers.get_content_type() == "text/plain"


# -- 2. an email certbot would read as an option -------------------------------------------------------


def test_email_starting_with_a_dash_is_refused_and_the_container_beside_it_served(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion], tmp_path: Path
) -> None:
    # Why: the real certbot, given the command the companion builds, reads "-x@example.com" as an option
    # and stops at its arguments (before any network traffic), so such a certificate never came.
    (tmp_path / "certbot-webroot").mkdir()
    settings = Settings(
        certs_dir=str(tmp_path / "certbot-certs"),
        webroot=str(tmp_path / "certbot-webroot"),
        acme_server="https://127.0.0.1:9/directory",
    )
    command = certbot_command(settings, CertRequest("x.inputs.test", ("x.inputs.test",), "-x@example.com"), force=False)
    refused = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "argument -m/--email: expected one argument" in refused.stderr

    companion = make_companion(ALLOWED_DOMAINS=ALLOWED)
    dash_host, good_host = unique_host("dash"), unique_host("beside")
    dash = apps(
        "dash",
        environment={
            "VIRTUAL_HOST": dash_host,
            "LETSENCRYPT_HOST": dash_host,
            "LETSENCRYPT_EMAIL": "-x@example.com",
            "APP_ID": "dash",
        },
    )
    apps("beside", environment={"VIRTUAL_HOST": good_host, "APP_ID": "beside"})
    assert wait_until(lambda: body(host_nginx, good_host) == (200, "beside"), timeout=60, what="the neighbour served")
    warning = (
        rf"WARNING [^\n]*container {re.escape(dash.name)}: LETSENCRYPT_EMAIL='-x@example\.com' rejected: "
        r"must not start with - \(certbot would read it as an option, so no certificate\)\n"
    )
    companion.wait_log(warning, timeout=30)
    more_passes(companion)
    assert companion.count(warning) == 1
    assert companion.count(re.escape(dash.name)) == 1, "one warning, and nothing else about that container"
    assert not re.search(rf"ordering[^\n]*{re.escape(dash_host)}", companion.log()), "no certbot run for it"
    assert dash_host not in (host_nginx.conf_dir / "companion.conf").read_text()
    assert host_nginx.get(dash_host)[0] == 503
    assert body(host_nginx, good_host) == (200, "beside")
    assert companion.alive


# -- 3. other programs' words are logged without terminal control characters -----------------------


def test_nginx_refusal_quoting_a_control_character_is_logged_escaped_on_one_line(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion]
) -> None:
    companion = make_companion(ALLOWED_DOMAINS=ALLOWED)
    live = unique_host("esc-live")
    apps("esc-live", environment={"VIRTUAL_HOST": live, "APP_ID": "live"})
    assert wait_until(lambda: body(host_nginx, live) == (200, "live"), timeout=60, what="first site routed")

    # A user's file in conf.d whose directive name carries an ANSI colour: the real nginx -t echoes it raw.
    user = host_nginx.conf_dir / "zz-user.conf"
    user.write_bytes(b"bogus\x1b[31mdirective on;\n")
    check = host_nginx.check()
    assert check.returncode != 0 and 'unknown directive "bogus\x1b[31mdirective"' in check.stderr, check.stderr
    blocked = unique_host("esc-blocked")
    apps("esc-blocked", environment={"VIRTUAL_HOST": blocked, "APP_ID": "blocked"})
    line = companion.wait_log(r"WARNING [^\n]*nginx rejected the new configuration: [^\n]*\n", timeout=20)
    assert '[emerg] unknown directive "bogus\\x1b[31mdirective" in ' in line and "zz-user.conf:1" in line, line
    assert b"\x1b" not in companion.log_path.read_bytes(), "a raw ESC reached the log"
    assert body(host_nginx, live) == (200, "live"), "the last good configuration keeps serving"

    user.unlink()
    assert wait_until(lambda: body(host_nginx, blocked) == (200, "blocked"), timeout=40, what="pending change applied")
    companion.wait_log(r"resolved: nginx rejected the new configuration: [^\n]*bogus\\x1b\[31mdirective")
    assert b"\x1b" not in companion.log_path.read_bytes()
    assert companion.count(r"WARNING [^\n]*nginx rejected the new configuration") == 1


# -- 4. a host whose containers claim only sub-paths -------------------------------------------------


def test_host_with_only_a_sub_path_answers_404_at_root_not_nginx_default_page(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion]
) -> None:
    # nginx's default root is html/ under its prefix: a page there is what the host answered at `/`.
    default_page = "NGINX-DEFAULT-ROOT-" + uuid.uuid4().hex
    (host_nginx.prefix / "html").mkdir(exist_ok=True)
    (host_nginx.prefix / "html" / "index.html").write_text(default_page + "\n")
    companion = make_companion(ALLOWED_DOMAINS=ALLOWED)
    host = unique_host("subpath")
    # CERT_NAME without a certificate on disk: an HTTPS server with the placeholder, and no ACME order.
    apps(
        "subpath",
        labels={"VIRTUAL_HOST": host, "VIRTUAL_PATH": "/api/", "CERT_NAME": f"cert-{uuid.uuid4().hex[:8]}.inputs.test"},
        environment={"APP_ID": "api-app", "APP_PATHS": "/api"},
    )
    assert wait_until(lambda: body(host_nginx, host, "/api/") == (200, "api-app"), timeout=60, what="/api/ routed")
    for https in (False, True):
        status, _, data = host_nginx.get(host, "/api/", https=https)
        assert (status, data.decode().strip()) == (200, "api-app"), https
        for path in ("/", "/index.html", "/other", "/apix"):
            status, _, data = host_nginx.get(host, path, https=https)
            assert status == 404 and default_page.encode() not in data, (https, path, status, data[:200])
    check = host_nginx.check()
    assert check.returncode == 0, check.stderr
    conf = (host_nginx.conf_dir / "companion.conf").read_text()
    ours = [block for block in conf.split("\nserver {") if f"server_name {host};" in block]
    assert len(ours) == 2 and all("location / {\n        return 404;\n    }" in block for block in ours), ours

    # The hole, with the same real parts: without that location nginx serves its default page at `/`.
    companion.stop()
    without = conf.replace("    location / {\n        return 404;\n    }\n", "")
    (host_nginx.conf_dir / "companion.conf").write_text(without)
    before = set(host_nginx.worker_pids())
    host_nginx.reload()
    wait_until(lambda: not before & set(host_nginx.worker_pids()), timeout=10, what="the old nginx workers to exit")
    assert body(host_nginx, host, "/") == (200, default_page)
