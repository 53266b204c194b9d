"""nginx-proxy's per-host files and the typed PROXY_* settings, against a real Docker daemon, real app
containers, the real nginx and a running companion (host mode): what a client sees."""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from tests.harness.appimage import AppRunner
from tests.harness.companion import Companion
from tests.harness.echo import ECHO_COMMAND, echoed
from tests.harness.nginx import HostNginx, body, self_signed
from tests.harness.nginxcontainer import NginxContainer
from tests.harness.tls import client_ca, client_cert
from tests.harness.wait import wait_until

pytestmark = pytest.mark.integration
T = TypeVar("T")

# busybox httpd with a CGI that reads the whole request body, so a POST of any size can answer 200.
UPLOAD = (
    "mkdir -p /www/cgi-bin && echo up > /www/index.html && printf '%s\\n' '#!/bin/sh' "
    "'/bin/busybox head -c \"$CONTENT_LENGTH\" > /dev/null' 'echo \"Content-Type: text/plain\"' 'echo' "
    "'echo \"got $CONTENT_LENGTH\"' > /www/cgi-bin/upload && /bin/busybox chmod 755 /www/cgi-bin/upload "
    "&& exec /bin/busybox httpd -f -p 80 -h /www"
)


@pytest.fixture
def tag() -> str:
    return uuid.uuid4().hex[:8]


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    """The operator's folders, as the companion's settings name them."""
    made = {name: tmp_path / "user" / name for name in ("vhost.d", "htpasswd", "client_ca")}
    for folder in made.values():
        folder.mkdir(parents=True)
    return made


def settings(folders: dict[str, Path], tag: str) -> dict[str, str]:
    return {
        "ALLOWED_DOMAINS": f"*-{tag}.example.test",
        "VHOST_DIR": str(folders["vhost.d"]),
        "HTPASSWD_DIR": str(folders["htpasswd"]),
        "CLIENT_CA_DIR": str(folders["client_ca"]),
        "PROXY_CONF": str(folders["vhost.d"].parent / "proxy.conf"),
    }


def header(nginx: HostNginx, host: str, name: str) -> str | None:
    status, headers, _ = nginx.get(host)
    return headers.get(name) if status == 200 else None


def wait_stable(probe: Callable[[], T], expected: T, what: str, timeout: float = 30, times: int = 5) -> None:
    """Until `probe()` answers `expected` `times` in a row (old workers answer for a moment after a reload);
    fail with what it last answered (or raised)."""
    wait_until(
        probe,
        timeout,
        0.05,
        what,
        until=lambda answer: answer == expected,
        stable=times,
        errors=(OSError, http.client.HTTPException),
    )


def settled(nginx: HostNginx) -> None:
    """Wait for older nginx workers to leave, so every later request is answered by the newest config."""
    wait_until(lambda: len(nginx.worker_pids()) == 1, timeout=30, what="one generation of nginx workers")


def test_vhost_files_reach_only_their_host_a_change_applies_and_a_broken_one_keeps_its_last_good(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion], folders: dict[str, Path], tag: str
) -> None:
    vhost = folders["vhost.d"]
    (vhost / f"a-{tag}.example.test").write_text("add_header X-Custom only-a;\n")
    (vhost / "default").write_text("add_header X-Custom default;\n")
    companion = make_companion(**settings(folders, tag))
    a, b = f"a-{tag}.example.test", f"b-{tag}.example.test"
    apps("a", environment={"VIRTUAL_HOST": a, "APP_ID": "a"})
    apps("b", environment={"VIRTUAL_HOST": b, "APP_ID": "b"})
    wait_until(lambda: (header(host_nginx, a, "X-Custom"), header(host_nginx, b, "X-Custom")) == ("only-a", "default"))
    pid = companion.process.pid if companion.process else None

    # a change is picked up by the watch, without a restart
    (vhost / a).write_text("add_header X-Custom a-two;\n")
    wait_until(lambda: header(host_nginx, a, "X-Custom") == "a-two", what="the changed file applied")

    # a's file breaks: a keeps its last good version while default's change and a new container still apply
    (vhost / a).write_text("add_header X-Custom broken\n")  # no ";"
    (vhost / "default").write_text("add_header X-Custom default-two;\n")
    c = f"c-{tag}.example.test"
    apps("c", environment={"VIRTUAL_HOST": c, "APP_ID": "c"})
    wait_until(lambda: body(host_nginx, c) == (200, "c"), what="a new container routed beside the broken file")
    wait_until(lambda: header(host_nginx, b, "X-Custom") == "default-two", what="default's change applied")
    settled(host_nginx)
    assert header(host_nginx, a, "X-Custom") == "a-two"
    assert header(host_nginx, c, "X-Custom") == "default-two"
    line = companion.wait_log(rf"{vhost / a}: refused \([^\n]*\); its last good version stays in use")
    assert "add_header" in line or "unexpected" in line
    assert companion.alive and companion.process is not None and companion.process.pid == pid
    assert host_nginx.check().returncode == 0

    # a restart keeps the last good version of the still broken file (recorded in the certs dir)
    companion.stop()
    seen = companion.count("its last good version stays in use")
    companion = make_companion(**settings(folders, tag))
    wait_until(lambda: companion.count("its last good version stays in use") > seen, what="the restart reports it")
    settled(host_nginx)
    assert header(host_nginx, a, "X-Custom") == "a-two"

    # fixed: the new version applies and the problem is resolved
    (vhost / a).write_text("add_header X-Custom a-fixed;\n")
    wait_until(lambda: header(host_nginx, a, "X-Custom") == "a-fixed", what="the fixed file applied")
    companion.wait_log(rf"resolved: {vhost / a}: refused")
    # `companion render --all` shows the same includes and copies, writing nothing
    shown = companion.cli("render", "--all")
    assert shown.returncode == 0, shown.stderr
    assert "add_header X-Custom a-fixed;" in shown.stdout and "add_header X-Custom default-two;" in shown.stdout
    assert shown.stdout.count(f"include {host_nginx.conf_dir}/companion-user-") >= 3


def test_htpasswd_file_asks_for_credentials_but_the_acme_challenge_stays_open(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion], folders: dict[str, Path], tag: str
) -> None:
    companion = make_companion(**settings(folders, tag))
    guarded, open_ = f"guarded-{tag}.example.test", f"open-{tag}.example.test"
    apps("guarded", environment={"VIRTUAL_HOST": guarded, "APP_ID": "guarded"})
    apps("open", environment={"VIRTUAL_HOST": open_, "APP_ID": "open"})
    wait_until(lambda: body(host_nginx, guarded) == (200, "guarded"), what="routed before the htpasswd file")
    done = subprocess.run(
        ["htpasswd", "-cbB", str(folders["htpasswd"] / guarded), "alice", "s3cret pass"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"htpasswd (apt-get install apache2-utils) failed: {done.stderr}"
    wait_until(lambda: host_nginx.get(guarded)[0] == 401, what="401 without credentials")
    settled(host_nginx)
    status, headers, _ = host_nginx.get(guarded)
    assert status == 401 and headers["WWW-Authenticate"] == f'Basic realm="{guarded}"'
    good = {"Authorization": "Basic " + base64.b64encode(b"alice:s3cret pass").decode()}
    bad = {"Authorization": "Basic " + base64.b64encode(b"alice:wrong").decode()}
    assert host_nginx.get(guarded, headers=good)[0] == 200
    assert host_nginx.get(guarded, headers=bad)[0] == 401
    assert body(host_nginx, open_) == (200, "open")
    token = companion.webroot / ".well-known" / "acme-challenge" / "tok-auth"
    token.parent.mkdir(parents=True, exist_ok=True)
    token.write_text("token-body")
    assert body(host_nginx, guarded, "/.well-known/acme-challenge/tok-auth") == (200, "token-body")
    # an htpasswd file that cannot be applied closes its host (403) instead of serving it without auth
    broken = f"broken-{tag}.example.test"
    (folders["htpasswd"] / broken).write_text("alice\n")
    apps("broken", environment={"VIRTUAL_HOST": broken, "APP_ID": "broken"})
    wait_until(lambda: body(host_nginx, broken)[0] == 403, what="a host with an unusable htpasswd closed")
    assert body(host_nginx, broken, "/.well-known/acme-challenge/tok-auth") == (200, "token-body")
    companion.wait_log(rf"{folders['htpasswd'] / broken}: refused \(line 1 is not user:hash\); {broken} answers 403")


def https_status(nginx: HostNginx, host: str, cert: tuple[Path, Path] | None = None) -> int | str:
    """The HTTPS status for `host`, presenting `cert` as the client certificate; a refused handshake says why."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if cert is not None:
        context.load_cert_chain(*cert)
    try:
        return nginx.get(host, https=True, context=context)[0]
    except (ssl.SSLError, ConnectionError, http.client.HTTPException) as exc:
        return f"refused: {exc}"


def test_a_client_ca_file_requires_a_certificate_it_signed(
    apps: AppRunner,
    host_nginx: HostNginx,
    make_companion: Callable[..., Companion],
    folders: dict[str, Path],
    tag: str,
    tmp_path: Path,
) -> None:
    host, other = f"mtls-{tag}.example.test", f"plain-{tag}.example.test"
    for name in (host, other):
        live = tmp_path / "companion" / "certs" / "live" / name
        self_signed(live, name)
        for folder in (live, live.parent, live.parent.parent):
            folder.chmod(0o700)
    make_companion(**settings(folders, tag))
    apps("mtls", environment={"VIRTUAL_HOST": host, "APP_ID": "mtls"})
    apps("plain", environment={"VIRTUAL_HOST": other, "APP_ID": "plain"})
    wait_until(lambda: https_status(host_nginx, host) == 200, what="HTTPS before the CA file")
    ca = client_ca(tmp_path / "ca")
    signed = client_cert(ca, tmp_path / "ca", "alice")
    stranger = client_cert(client_ca(tmp_path / "other-ca"), tmp_path / "other-ca", "mallory")
    (folders["client_ca"] / host).write_bytes(ca[0].read_bytes())
    wait_until(lambda: https_status(host_nginx, host) == 400, what="a client without a certificate refused")
    settled(host_nginx)
    assert https_status(host_nginx, host) == 400  # nginx: "No required SSL certificate was sent"
    assert https_status(host_nginx, host, signed) == 200
    assert https_status(host_nginx, host, stranger) == 400  # "The SSL certificate error"
    assert https_status(host_nginx, other) == 200


# HTTPS_METHOD, whether a certificate is served, wanted but not issued yet, or neither; and what plain HTTP
# answers once the host requires a client certificate: a redirect to HTTPS, 403 when there is no HTTPS to
# redirect to, or (nohttp with a certificate) no HTTP server for the host, so the catch-all's 503.
CLIENT_CERT_CASES = {
    "redirect-issued": ("redirect", "issued", 301),
    "redirect-missing": ("redirect", "missing", 403),
    "noredirect-issued": ("noredirect", "issued", 301),
    "noredirect-missing": ("noredirect", "missing", 403),
    "nohttp-issued": ("nohttp", "issued", 503),
    "nohttp-missing": ("nohttp", "missing", 403),
    "nohttps": ("nohttps", "unwanted", 403),
    "unwanted": ("redirect", "unwanted", 403),
}


def test_plain_http_never_reaches_a_client_cert_host_whatever_https_method_says(
    apps: AppRunner,
    host_nginx: HostNginx,
    make_companion: Callable[..., Companion],
    folders: dict[str, Path],
    tag: str,
    tmp_path: Path,
) -> None:
    """The attack: `http://<host>/` served the app while HTTPS asked for a client certificate."""
    live = tmp_path / "companion" / "certs" / "live"
    hosts = {case: f"{case}-{tag}.example.test" for case in CLIENT_CERT_CASES}
    ca = client_ca(tmp_path / "ca")
    signed = client_cert(ca, tmp_path / "ca", "alice")
    for case, (_, state, _) in CLIENT_CERT_CASES.items():
        (folders["client_ca"] / hosts[case]).write_bytes(ca[0].read_bytes())
        if state == "issued":
            self_signed(live / hosts[case], hosts[case])
    for folder in (live, live.parent):
        folder.chmod(0o700)
    companion = make_companion(**settings(folders, tag))
    names = {}
    for case, (method, state, _) in CLIENT_CERT_CASES.items():
        environment = {"VIRTUAL_HOST": hosts[case], "HTTPS_METHOD": method, "APP_ID": case}
        if state != "unwanted":
            environment["LETSENCRYPT_HOST"] = hosts[case]
        names[case] = apps(case, environment=environment).name
    expected = {case: answer for case, (_, _, answer) in CLIENT_CERT_CASES.items()}

    def answers() -> dict[str, int]:
        return {case: host_nginx.get(hosts[case])[0] for case in CLIENT_CERT_CASES}

    wait_stable(answers, expected, f"plain HTTP answering {expected}")
    settled(host_nginx)
    port = host_nginx.https_port
    for case in ("redirect-issued", "noredirect-issued"):
        _, headers, _ = host_nginx.get(hosts[case], "/x?y=1")
        assert headers["Location"] == f"https://{hosts[case]}:{port}/x?y=1"
    # every host is routed: its HTTPS answers with a signed client certificate (and only with one)
    for case in ("redirect-issued", "noredirect-issued", "nohttp-issued"):
        assert https_status(host_nginx, hosts[case]) == 400
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        context.load_cert_chain(*signed)
        status, _, data = host_nginx.get(hosts[case], https=True, context=context)
        assert (status, data.decode().strip()) == (200, case)
    # the ACME challenge stays open on port 80, so the missing certificates can still be issued
    token = companion.webroot / ".well-known" / "acme-challenge" / "tok-mtls"
    token.parent.mkdir(parents=True, exist_ok=True)
    token.write_text("token-body")
    for case in CLIENT_CERT_CASES:
        assert body(host_nginx, hosts[case], "/.well-known/acme-challenge/tok-mtls") == (200, "token-body")
    # what overrules a container's settings is logged, naming the container, the variable and the file
    for case, words in (
        ("noredirect-issued", "HTTPS_METHOD=noredirect overruled: "),
        ("noredirect-missing", "HTTPS_METHOD=noredirect overruled: "),
        ("nohttps", "HTTPS_METHOD=nohttps: "),
        ("unwanted", ""),
    ):
        file = folders["client_ca"] / hosts[case]
        line = companion.wait_log(
            rf"container {names[case]}: {words}{hosts[case]} requires a client certificate \({file}\)[^\n]*"
        )
        assert ("asks for none (LETSENCRYPT_HOST)" in line) is (case == "unwanted"), line
    # the missing certificate arrives: that host now redirects instead of refusing
    self_signed(live / hosts["redirect-missing"], hosts["redirect-missing"])
    wait_stable(answers, {**expected, "redirect-missing": 301}, "a redirect once the certificate is issued")
    assert host_nginx.check().returncode == 0


def test_access_files_named_in_another_case_or_idn_form_guard_their_host(
    apps: AppRunner,
    host_nginx: HostNginx,
    make_companion: Callable[..., Companion],
    folders: dict[str, Path],
    tag: str,
    tmp_path: Path,
) -> None:
    """The attack: `htpasswd/Upper.example.com` and `htpasswd/bücher.example` were skipped, the hosts served open."""
    upper, idn = f"upper-{tag}.example.test", f"xn--bcher-kva.idn-{tag}.example.test"
    mtls, twice = f"mtls-{tag}.example.test", f"twice-{tag}.example.test"
    live = tmp_path / "companion" / "certs" / "live" / mtls
    self_signed(live, mtls)
    for folder in (live, live.parent, live.parent.parent):
        folder.chmod(0o700)
    htpasswd = folders["htpasswd"]
    for name, user in ((f"Upper-{tag}.example.test", "alice"), (f"bücher.idn-{tag}.example.test", "bob")):
        made = subprocess.run(
            ["htpasswd", "-cbB", str(htpasswd / name), user, "s3cret"], capture_output=True, text=True, check=False
        )
        assert made.returncode == 0, f"htpasswd (apt-get install apache2-utils) failed: {made.stderr}"
    # two files for one host: the exact name is used, the other reported
    subprocess.run(["htpasswd", "-cbB", str(htpasswd / twice), "carol", "s3cret"], check=True, capture_output=True)
    subprocess.run(
        ["htpasswd", "-cbB", str(htpasswd / f"TWICE-{tag}.example.test"), "mallory", "s3cret"],
        check=True,
        capture_output=True,
    )
    ca = client_ca(tmp_path / "ca")
    (folders["client_ca"] / f"MTLS-{tag}.Example.Test").write_bytes(ca[0].read_bytes())
    companion = make_companion(**settings(folders, tag))
    for host, app in ((upper, "upper"), (idn, "idn"), (mtls, "mtls"), (twice, "twice")):
        apps(app, environment={"VIRTUAL_HOST": host, "APP_ID": app})

    def auth(user: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:s3cret".encode()).decode()}

    def seen() -> tuple[int, int, int, int, int | str]:
        return (
            host_nginx.get(upper)[0],
            host_nginx.get(idn)[0],
            host_nginx.get(twice)[0],
            host_nginx.get(mtls)[0],
            https_status(host_nginx, mtls),
        )

    guarded = (401, 401, 401, 301, 400)
    wait_stable(seen, guarded, f"every host guarded {guarded}")
    settled(host_nginx)
    assert host_nginx.get(upper, headers=auth("alice"))[0] == 200
    assert host_nginx.get(idn, headers=auth("bob"))[0] == 200
    assert host_nginx.get(twice, headers=auth("carol"))[0] == 200
    assert host_nginx.get(twice, headers=auth("mallory"))[0] == 401
    companion.wait_log(
        rf"{htpasswd / f'TWICE-{tag}.example.test'}: not used \({htpasswd / twice} is the file for {twice}\)"
    )


def post(nginx: HostNginx, host: str, size: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", nginx.http_port, timeout=10)
    try:
        conn.request("POST", "/cgi-bin/upload", body=b"x" * size, headers={"Host": host})
        response = conn.getresponse()
        response.read()
        return response.status
    except (ConnectionError, http.client.HTTPException):
        return 0  # nginx may close while the body is still being sent
    finally:
        conn.close()


def test_typed_labels_set_the_body_limit_and_the_allow_list(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion], tag: str, tmp_path: Path
) -> None:
    """Also the proxy-wide SERVER_TOKENS and LOG_JSON, as a client and the log file see them."""
    access = tmp_path / "access.json"
    companion = make_companion(
        ALLOWED_DOMAINS=f"*-{tag}.example.test", SERVER_TOKENS="off", LOG_JSON="true", ACCESS_LOG_PATH=str(access)
    )
    host = f"upload-{tag}.example.test"
    command = ["/bin/sh", "-c", UPLOAD]
    first = apps("upload", environment={"VIRTUAL_HOST": host}, command=command)
    wait_until(lambda: body(host_nginx, host) == (200, "up"), what="upload app routed")
    assert host_nginx.get(host)[1]["Server"] == "nginx"  # no version
    logged = [json.loads(line) for line in access.read_text().splitlines()]
    assert {"host": host, "status": 200, "request": "GET / HTTP/1.1"}.items() <= logged[-1].items()
    two_mib = 2 * 1024 * 1024
    assert post(host_nginx, host, 1000) == 200
    assert post(host_nginx, host, two_mib) == 413  # nginx's default limit is 1m
    first.remove(force=True)
    apps("upload2", environment={"VIRTUAL_HOST": host}, labels={"PROXY_MAX_BODY_SIZE": "10m"}, command=command)
    wait_until(
        lambda: post(host_nginx, host, two_mib) == 200, what="a 2 MiB body accepted with PROXY_MAX_BODY_SIZE=10m"
    )
    settled(host_nginx)
    assert post(host_nginx, host, 11 * 1024 * 1024) == 413

    listed, unlisted = f"listed-{tag}.example.test", f"unlisted-{tag}.example.test"
    apps("listed", environment={"VIRTUAL_HOST": listed, "APP_ID": "listed"}, labels={"PROXY_ALLOW_FROM": "127.0.0.1"})
    apps(
        "unlisted",
        environment={"VIRTUAL_HOST": unlisted, "APP_ID": "unlisted"},
        labels={"PROXY_ALLOW_FROM": "192.0.2.0/24, 2001:db8::/32"},
    )
    wait_until(lambda: body(host_nginx, listed) == (200, "listed"), what="a listed client served")
    wait_until(lambda: body(host_nginx, unlisted)[0] == 403, what="an unlisted client refused")
    token = companion.webroot / ".well-known" / "acme-challenge" / "tok-allow"
    token.parent.mkdir(parents=True, exist_ok=True)
    token.write_text("token-body")
    assert body(host_nginx, unlisted, "/.well-known/acme-challenge/tok-allow") == (200, "token-body")
    bad = f"bad-{tag}.example.test"
    apps("bad", environment={"VIRTUAL_HOST": bad}, labels={"PROXY_ALLOW_FROM": "10.1.2.3/8"})
    companion.wait_log(r"PROXY_ALLOW_FROM='10.1.2.3/8' rejected: '10.1.2.3/8' has host bits set")


def test_a_proxy_conf_written_for_nginx_proxy_replaces_the_header_snippet(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion], folders: dict[str, Path], tag: str
) -> None:
    """nginx-proxy's variable names work in it, and its Host (no port) replaces ours (with the port)."""
    proxy_conf = folders["vhost.d"].parent / "proxy.conf"
    make_companion(**settings(folders, tag))
    host = f"echo-{tag}.example.test"
    apps("echo", environment={"VIRTUAL_HOST": host}, command=ECHO_COMMAND)
    port = host_nginx.http_port
    before = wait_until(lambda: echoed(port, f"{host}:{port}"), what="echo app routed")
    assert before["host"] == f"{host}:{port}"  # the companion's snippet passes the client's Host, port included
    proxy_conf.write_text(
        "proxy_http_version 1.1;\n"
        "proxy_set_header Host $host;\n"
        "proxy_set_header Connection $proxy_connection;\n"
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n"
        "proxy_set_header X-Forwarded-Proto $proxy_x_forwarded_proto;\n"
        "proxy_set_header X-Forwarded-Host $proxy_x_forwarded_host;\n"
        "proxy_set_header X-Forwarded-Port $proxy_x_forwarded_port;\n"
        "proxy_set_header X-Forwarded-Ssl $proxy_x_forwarded_ssl;\n"
    )
    after = wait_until(
        lambda: (got := echoed(port, f"{host}:{port}")) and got["host"] == host and got, what="proxy.conf applied"
    )
    assert (after["proto"], after["fhost"], after["port"], after["ssl"]) == ("http", f"{host}:{port}", str(port), "off")


def test_with_nginx_in_a_container_only_the_companion_needs_the_folders(
    apps: AppRunner,
    docker_nginx: NginxContainer,
    docker_companion: Callable[..., Companion],
    folders: dict[str, Path],
    tag: str,
) -> None:
    """nginx (a container mounting only the conf dir, certs and webroot) serves the copies; `nginx -t` by
    docker exec names a broken copy, and that host keeps its last good version."""
    vhost = folders["vhost.d"]
    a, b = f"a-{tag}.example.test", f"b-{tag}.example.test"
    (vhost / a).write_text("add_header X-Custom only-a;\n")
    (vhost / "default").write_text("add_header X-Custom default;\n")
    companion = docker_companion(**settings(folders, tag))
    apps("a", environment={"VIRTUAL_HOST": a, "APP_ID": "a"})
    apps("b", environment={"VIRTUAL_HOST": b, "APP_ID": "b"})

    def custom(host: str) -> str | None:
        status, headers, _ = docker_nginx.get(host)
        return headers.get("X-Custom") if status == 200 else None

    wait_until(lambda: (custom(a), custom(b)) == ("only-a", "default"), timeout=30, what="copies served by nginx")
    (vhost / a).write_text("add_header X-Custom broken\n")
    (vhost / "default").write_text("add_header X-Custom default-two;\n")
    wait_until(lambda: custom(b) == "default-two", timeout=30, what="default's change applied beside a broken file")
    companion.wait_log(rf"{vhost / a}: refused \([^\n]*companion-user-[0-9a-f]+\.inc[^\n]*\); its last good")
    assert custom(a) == "only-a"
    code, output = docker_nginx.check()
    assert code == 0, output
