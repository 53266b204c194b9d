"""The echo app: the busybox test image with a CGI script that prints the request headers it received,
and a client that sends exactly the Host header given. Shared by the drop-in suites (proxy headers,
operator host files) so that no test module imports another."""

from __future__ import annotations

import http.client
import shlex
import socket
import ssl

ECHO_PATH = "/cgi-bin/headers"
# name printed by the CGI script -> the CGI variable busybox httpd sets from the request header
FIELDS = {
    "host": "HTTP_HOST",
    "proto": "HTTP_X_FORWARDED_PROTO",
    "fhost": "HTTP_X_FORWARDED_HOST",
    "port": "HTTP_X_FORWARDED_PORT",
    "ssl": "HTTP_X_FORWARDED_SSL",
    "for": "HTTP_X_FORWARDED_FOR",
    "method": "REQUEST_METHOD",
}
_CGI = ["#!/bin/sh", 'echo "Content-Type: text/plain"', "echo", *(f'echo "{k}=${v}"' for k, v in FIELDS.items())]
ECHO_SCRIPT = (
    f"mkdir -p /www/cgi-bin && printf '%s\\n' {' '.join(shlex.quote(line) for line in _CGI)} > /www{ECHO_PATH}"
    f" && /bin/busybox chmod 755 /www{ECHO_PATH} && exec /bin/busybox httpd -f -v -p 80 -h /www"
)
ECHO_COMMAND = ["/bin/sh", "-c", ECHO_SCRIPT]


def request(
    port: int,
    host: str,
    path: str = ECHO_PATH,
    method: str = "GET",
    https: bool = False,
    sni: str | None = None,
    headers: dict[str, str] | None = None,
    address: str = "127.0.0.1",
) -> tuple[int, http.client.HTTPMessage, str]:
    """One request with exactly the ``Host`` header given (port included if wanted); no redirects followed."""
    if https:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        raw = socket.create_connection((address, port), timeout=3)
        conn = http.client.HTTPConnection(address, port, timeout=3)
        conn.sock = context.wrap_socket(raw, server_hostname=sni or host.split(":")[0])
    else:
        conn = http.client.HTTPConnection(address, port, timeout=3)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read().decode(errors="replace")
    finally:
        conn.close()


def seen(text: str) -> dict[str, str]:
    """The echo app's answer as {field: value}."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def echoed(port: int, host: str, **kw: object) -> dict[str, str] | None:
    """What the echo app received, or None while the site is not routed yet."""
    status, _, text = request(port, host, **kw)  # type: ignore[arg-type]
    return seen(text) if status == 200 and "method=" in text else None
