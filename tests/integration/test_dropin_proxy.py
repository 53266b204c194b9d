"""What an app behind the proxy sees, as nginx-proxy users expect it: real Docker, compose, nginx and TLS.

The app is the busybox test image with a CGI script that prints the request headers it received, so
every assertion is about headers that really crossed nginx.
"""

from __future__ import annotations

import socket
import ssl
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from tests.harness.appimage import IMAGE, AppRunner
from tests.harness.companion import Companion
from tests.harness.echo import ECHO_COMMAND, ECHO_PATH, ECHO_SCRIPT, echoed, request, seen
from tests.harness.nginx import HostNginx, self_signed
from tests.harness.wait import wait_until

pytestmark = pytest.mark.integration

T = TypeVar("T")


def zone() -> str:
    """A name of this test's own, so containers of other runs on the shared daemon never count."""
    return f"dropin-{uuid.uuid4().hex[:10]}.example.test"


def routed(nginx: HostNginx, probe: Callable[[], T | None], what: str) -> T:
    """Wait for the first answer, then for the older nginx workers to leave: each later request is new config's."""
    got = wait_until(probe, timeout=60, what=what)
    wait_until(lambda: len(nginx.worker_pids()) == 1, timeout=30, what="one generation of nginx workers")
    return got


def run_echo(apps: AppRunner, host: str, **environment: str) -> None:
    apps("echo", environment={"VIRTUAL_HOST": host, **environment}, command=ECHO_COMMAND)


def place_certificate(companion_dir: Path, host: str) -> None:
    """A certificate valid for ``host`` where certbot would put it, so the site has HTTPS from the start."""
    live = companion_dir / "certs" / "live" / host
    self_signed(live, host)
    for folder in (live, live.parent, live.parent.parent):
        folder.chmod(0o700)


# -- Host keeps the client's port -------------------------------------------------------------------


def test_compose_app_receives_host_with_the_clients_port_and_forwarded_headers(
    compose: Callable[[dict[str, object] | str], str],
    host_nginx: HostNginx,
    make_companion: Callable[..., Companion],
) -> None:
    """An nginx-proxy compose file, unchanged: VIRTUAL_HOST in environment; nginx listens on a random port."""
    host = f"app.{zone()}"
    make_companion(ALLOWED_DOMAINS=host)
    compose(
        {
            "echo": {
                "image": IMAGE,
                "command": ["/bin/sh", "-c", ECHO_SCRIPT.replace("$", "$$")],  # compose interpolates "$"
                "environment": {"VIRTUAL_HOST": host},
                "labels": {"companion.test": "1"},
            }
        }
    )
    port = host_nginx.http_port
    assert port != 80
    got = routed(host_nginx, lambda: echoed(port, f"{host}:{port}"), "compose app routed")
    assert got["host"] == f"{host}:{port}"  # $host would have dropped the port
    assert got["fhost"] == f"{host}:{port}"
    assert (got["proto"], got["port"], got["ssl"]) == ("http", str(port), "off")
    assert got["for"] == "127.0.0.1"
    # Names are case-insensitive: routing still matches, and the app gets the header as it was sent.
    shouted = f"APP.{host[4:].upper()}:{port}"
    status, _, text = request(port, shouted)
    assert status == 200, text
    assert seen(text) == {**got, "host": shouted, "fhost": shouted}


def test_request_without_a_host_header_gets_the_server_name_as_host(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion]
) -> None:
    """HTTP/1.0 with an absolute URI and no Host header: Host falls back to the name nginx matched."""
    host = f"nohost.{zone()}"
    make_companion(ALLOWED_DOMAINS=host)
    run_echo(apps, host)
    routed(host_nginx, lambda: echoed(host_nginx.http_port, host), "site routed")
    with socket.create_connection(("127.0.0.1", host_nginx.http_port), timeout=3) as sock:
        sock.sendall(f"GET http://{host}{ECHO_PATH} HTTP/1.0\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, text = answer.decode(errors="replace").partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 200"), head
    got = seen(text)
    assert (got["host"], got["fhost"]) == (host, host)


# -- TRUST_DOWNSTREAM_PROXY ---------------------------------------------------------------------------

FORGED = {
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Port": "4443",
    "X-Forwarded-Ssl": "on",
    "X-Forwarded-For": "203.0.113.7",
}


def test_forged_forwarded_headers_are_replaced_by_default_and_kept_when_trusted(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion]
) -> None:
    host = f"trust.{zone()}"
    port = host_nginx.http_port
    companion = make_companion(ALLOWED_DOMAINS=host)
    run_echo(apps, host)
    routed(host_nginx, lambda: echoed(port, host), "site routed")
    got = echoed(port, f"{host}:{port}", headers=FORGED)
    assert got is not None
    assert (got["proto"], got["fhost"], got["port"], got["ssl"]) == ("http", f"{host}:{port}", str(port), "off")
    assert got["for"] == "203.0.113.7, 127.0.0.1"  # appended to, in both modes

    companion.stop()
    make_companion(ALLOWED_DOMAINS=host, TRUST_DOWNSTREAM_PROXY="true")

    def trusted() -> dict[str, str] | None:
        found = echoed(port, f"{host}:{port}", headers=FORGED)
        return found if found and found["proto"] == "https" else None

    got = routed(host_nginx, trusted, "the forwarded headers passed on")
    assert (got["proto"], got["fhost"], got["port"], got["ssl"]) == ("https", "evil.example", "4443", "on")
    assert got["for"] == "203.0.113.7, 127.0.0.1"
    # Without incoming headers, ours fill in; X-Forwarded-Ssl follows a forwarded proto it was not sent with.
    got = echoed(port, f"{host}:{port}")
    assert got is not None
    assert (got["proto"], got["fhost"], got["port"], got["ssl"]) == ("http", f"{host}:{port}", str(port), "off")
    got = echoed(port, f"{host}:{port}", headers={"X-Forwarded-Proto": "https"})
    assert got is not None and (got["proto"], got["ssl"]) == ("https", "on")


# -- SSL_POLICY ----------------------------------------------------------------------------------------


def handshake(port: int, sni: str, low: ssl.TLSVersion, high: ssl.TLSVersion, ciphers: str = "") -> str:
    """The TLS version negotiated with nginx on loopback (raises ssl.SSLError when it refuses)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if ciphers:
        context.set_ciphers(ciphers)
    context.minimum_version, context.maximum_version = low, high
    with (
        socket.create_connection(("127.0.0.1", port), timeout=3) as raw,
        context.wrap_socket(raw, server_hostname=sni) as tls,
    ):
        return str(tls.version())


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")  # old versions on purpose
@pytest.mark.parametrize(
    ("policy", "accepted", "refused"),
    [
        ("Mozilla-Modern", ["TLSv1.3"], ["TLSv1.2"]),
        ("Mozilla-Intermediate", ["TLSv1.3", "TLSv1.2"], ["TLSv1.1"]),
        ("Mozilla-Old", ["TLSv1.3", "TLSv1.2", "TLSv1.1", "TLSv1"], []),
    ],
)
def test_ssl_policy_decides_which_tls_versions_a_real_handshake_gets(
    apps: AppRunner,
    host_nginx: HostNginx,
    make_companion: Callable[..., Companion],
    tmp_path: Path,
    policy: str,
    accepted: list[str],
    refused: list[str],
) -> None:
    host = f"tls.{zone()}"
    place_certificate(tmp_path / "companion", host)
    make_companion(ALLOWED_DOMAINS=host, SSL_POLICY=policy)
    run_echo(apps, host)
    port = host_nginx.https_port
    routed(host_nginx, lambda: echoed(port, host, https=True), "HTTPS site routed")
    # The client side must be able to speak old versions too (OpenSSL 3 needs security level 0 for them).
    old_ciphers = "DEFAULT:@SECLEVEL=0"
    for version in accepted:
        tls_version = ssl.TLSVersion[version.replace(".", "_")]
        assert handshake(port, host, tls_version, tls_version, old_ciphers) == version, (policy, version)
    for version in refused:
        tls_version = ssl.TLSVersion[version.replace(".", "_")]
        with pytest.raises(ssl.SSLError):
            handshake(port, host, ssl.TLSVersion.MINIMUM_SUPPORTED, tls_version, old_ciphers)


# -- ENABLE_IPV6 ---------------------------------------------------------------------------------------


def loopback_has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def test_ipv6_listens_on_loopback_for_http_and_https(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion], tmp_path: Path
) -> None:
    if not loopback_has_ipv6():
        pytest.fail("this machine's loopback has no ::1 (IPv6 disabled in the kernel?): ENABLE_IPV6 cannot be proven")
    host = f"six.{zone()}"
    place_certificate(tmp_path / "companion", host)
    make_companion(ALLOWED_DOMAINS=host, ENABLE_IPV6="true")
    run_echo(apps, host, HTTPS_METHOD="noredirect")
    http_port, https_port = host_nginx.http_port, host_nginx.https_port
    got = routed(host_nginx, lambda: echoed(http_port, f"{host}:{http_port}", address="::1"), "HTTP over ::1")
    assert got["host"] == f"{host}:{http_port}"
    got = echoed(https_port, f"{host}:{https_port}", https=True, sni=host, address="::1")
    assert got is not None and (got["proto"], got["ssl"]) == ("https", "on")
    # The default servers listen on [::] too: an unknown name gets the 503, an unknown SNI no handshake.
    assert request(http_port, f"other.{zone()}", address="::1")[0] == 503
    with pytest.raises(ssl.SSLError):
        request(https_port, f"other.{zone()}", https=True, address="::1")


# -- EXTERNAL_HTTPS_PORT and NON_GET_REDIRECT --------------------------------------------------------


def test_redirects_carry_the_published_port_and_non_get_code(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion], tmp_path: Path
) -> None:
    host = f"redir.{zone()}"
    place_certificate(tmp_path / "companion", host)
    make_companion(ALLOWED_DOMAINS=host, EXTERNAL_HTTPS_PORT="8443", NON_GET_REDIRECT="308")
    run_echo(apps, host)
    port = host_nginx.http_port

    def redirected() -> tuple[int, str] | None:
        status, headers, _ = request(port, host, path="/x?y=1")
        return (status, headers["Location"]) if status in (301, 308) else None

    assert routed(host_nginx, redirected, "HTTP redirected to HTTPS") == (301, f"https://{host}:8443/x?y=1")
    for method, code in (("HEAD", 301), ("POST", 308), ("PUT", 308), ("DELETE", 308), ("OPTIONS", 308)):
        status, headers, _ = request(port, host, path="/x?y=1", method=method)
        assert (status, headers["Location"]) == (code, f"https://{host}:8443/x?y=1"), method
    # HTTPS itself still proxies every method (nginx listens on its own port, not the published one).
    got = echoed(host_nginx.https_port, host, https=True, method="POST")
    assert got is not None and got["method"] == "POST" and got["port"] == "8443"
