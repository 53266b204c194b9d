"""Upstream keepalive against the real parts: a backend replaced under steady traffic, and the
`Connection` header an app receives for plain and websocket-upgrade requests, with keepalive on and off.

The app for the header checks is the busybox test image with the CGI script of test_dropin_proxy.py,
printing the request headers it received, so every assertion is about headers that crossed nginx.
"""

from __future__ import annotations

import re
import shlex
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness.appimage import AppRunner, container_ip
from tests.harness.companion import Companion
from tests.harness.nginx import HostNginx, body
from tests.harness.ports import free_port
from tests.harness.wait import wait_until

pytestmark = pytest.mark.integration

ECHO_PATH = "/cgi-bin/headers"
_CGI = [
    "#!/bin/sh",
    'echo "Content-Type: text/plain"',
    "echo",
    'echo "connection=$HTTP_CONNECTION"',
    'echo "upgrade=$HTTP_UPGRADE"',
]
ECHO_COMMAND = [
    "/bin/sh",
    "-c",
    f"mkdir -p /www/cgi-bin && printf '%s\\n' {' '.join(shlex.quote(line) for line in _CGI)} > /www{ECHO_PATH}"
    f" && /bin/busybox chmod 755 /www{ECHO_PATH} && exec /bin/busybox httpd -f -v -p 80 -h /www",
]


def zone() -> str:
    return f"{uuid.uuid4().hex[:10]}.keepalive.test"


def upstream_block(nginx: HostNginx, address: str) -> str:
    """The upstream block that holds `address` (port 80) in the live config ("" while there is none)."""
    return upstream_block_at(nginx, f"{address}:80")


def upstream_block_at(nginx: HostNginx, server: str) -> str:
    """The upstream block that holds `server` ("address:port") in the live config ("" while there is none)."""
    conf = (nginx.conf_dir / "companion.conf").read_text()
    found = re.search(rf"upstream companion_u[0-9]+ \{{[^}}]*server {re.escape(server)};[^}}]*\}}", conf)
    return found.group(0) if found else ""


def test_a_backend_replaced_under_traffic_with_keepalive_fails_no_request(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion]
) -> None:
    """Two backends with keepalive on; one is replaced by a new container (new IP) while a client keeps
    requesting: every request answers 200, and the new backend takes traffic."""
    host = f"app.{zone()}"
    make_companion(ALLOWED_DOMAINS=host)
    old = apps("old", environment={"VIRTUAL_HOST": host, "APP_ID": "old"})
    apps("steady", environment={"VIRTUAL_HOST": host, "APP_ID": "steady"})
    old_ip = container_ip(old)
    seen: set[str] = set()

    def both(want: set[str]) -> bool:
        status, text = body(host_nginx, host)
        if status == 200:
            seen.add(text)
        return want <= seen

    assert wait_until(lambda: both({"old", "steady"}), timeout=30, what="both backends answering")
    assert "keepalive 32;" in upstream_block(host_nginx, old_ip)
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def poll() -> None:
        for _ in range(3000):  # bounded: about a minute at most
            if stop.is_set():
                return
            try:
                status, _, data = host_nginx.get(host, timeout=10)
                results.append((status, data.decode(errors="replace").strip()))
            except OSError as exc:
                results.append((0, repr(exc)))
            time.sleep(0.01)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    time.sleep(1)
    new = apps("new", environment={"VIRTUAL_HOST": host, "APP_ID": "new"})
    assert container_ip(new) != old_ip
    wait_until(lambda: any(text == "new" for _, text in results[-50:]), timeout=30, what="new backend serving")
    old.stop(timeout=1)
    wait_until(lambda: upstream_block(host_nginx, old_ip) == "", timeout=30, what="old address out of the config")
    mark = len(results)
    wait_until(lambda: len(results) > mark + 50, timeout=30, what="50 more requests")
    stop.set()
    poller.join(30)
    failed = [r for r in results if r[0] != 200]
    assert failed == [], failed[:5]
    assert {text for _, text in results} <= {"old", "steady", "new"}
    assert {text for _, text in results[mark:]} == {"steady", "new"}
    assert "keepalive 32;" in upstream_block(host_nginx, container_ip(new))
    print(f"\nkeepalive: {len(results)} requests while a backend was replaced (new IP), 0 failed")


def connection_seen(nginx: HostNginx, host: str, **headers: str) -> tuple[str, str] | None:
    status, _, data = nginx.get(host, ECHO_PATH, headers=headers)
    text = data.decode(errors="replace")
    if status != 200 or "connection=" not in text:
        return None
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    return fields["connection"], fields["upgrade"]


@pytest.mark.parametrize("keepalive", ["on", "off"])
def test_the_app_gets_connection_upgrade_for_websockets_and_close_only_without_keepalive(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion], keepalive: str
) -> None:
    host = f"ws.{zone()}"
    make_companion(ALLOWED_DOMAINS=host)
    app = apps("echo", environment={"VIRTUAL_HOST": host, "VIRTUAL_KEEPALIVE": keepalive}, command=ECHO_COMMAND)
    plain = wait_until(lambda: connection_seen(host_nginx, host), timeout=30, what="echo app routed")
    assert plain == (("", "") if keepalive == "on" else ("close", ""))
    upgrade = connection_seen(host_nginx, host, Upgrade="websocket", Connection="Upgrade")
    assert upgrade == ("upgrade", "websocket")
    block = upstream_block(host_nginx, container_ip(app))
    assert ("keepalive 32;" in block) == (keepalive == "on"), block


def backend_nginx(prefix: Path, port: int) -> HostNginx:
    """A second private nginx on 127.0.0.1:`port` that answers "backend" and logs, per request, the number of
    its client connection and how many requests that connection has carried: the proxy's reuse, seen from
    the backend. Unlike busybox httpd it keeps connections open."""
    nginx = HostNginx(prefix=prefix)
    (nginx.conf_dir / "backend.conf").write_text(
        "log_format conns '$uri $connection $connection_requests';\n"
        "server {\n"
        f"    listen 127.0.0.1:{port};\n"
        f"    access_log {prefix}/conns.log conns;\n"
        '    location / { return 200 "backend\\n"; }\n'
        "}\n"
    )
    nginx.start()
    return nginx


def counted(log: Path) -> list[tuple[int, int]]:
    """(connection, requests on it so far) of every request to /counted in the backend's log."""
    lines = [line.split() for line in log.read_text().splitlines()]
    return [(int(connection), int(count)) for uri, connection, count in lines if uri == "/counted"]


@pytest.mark.parametrize("keepalive", ["on", "off"])
def test_nginx_reuses_backend_connections_with_keepalive_and_opens_one_per_request_without(
    apps: AppRunner,
    host_nginx: HostNginx,
    make_companion: Callable[..., Companion],
    tmp_path: Path,
    keepalive: str,
) -> None:
    """A host-network app routed to 127.0.0.1:<port>, where a backend nginx logs its connections: 40
    requests through the proxy arrive on a handful of connections with keepalive, on 40 without."""
    host, port = f"reuse.{zone()}", free_port()
    backend = backend_nginx(tmp_path / "backend", port)
    try:
        make_companion(ALLOWED_DOMAINS=host)
        # The container only stands for the app: on the host's network it is routed to 127.0.0.1:<port>.
        apps(
            "reuse",
            environment={"VIRTUAL_HOST": host, "VIRTUAL_PORT": str(port), "VIRTUAL_KEEPALIVE": keepalive},
            network_mode="host",
            command=["/bin/sleep", "600"],
        )
        wait_until(lambda: body(host_nginx, host) == (200, "backend"), timeout=30, what="backend routed")
        # Until the reload's old worker has left, it may still take a request, with the config before.
        wait_until(lambda: len(host_nginx.worker_pids()) == 1, timeout=30, what="old nginx worker gone")
        assert ("keepalive 32;" in upstream_block_at(host_nginx, f"127.0.0.1:{port}")) == (keepalive == "on")
        requests = 40
        answers = [body(host_nginx, host, "/counted") for _ in range(requests)]
        assert answers == [(200, "backend")] * requests
        # The backend writes its log line just after answering: wait for the last one.
        wait_until(lambda: len(counted(tmp_path / "backend" / "conns.log")) == requests, timeout=10, what="log lines")
        logged = counted(tmp_path / "backend" / "conns.log")
    finally:
        backend.stop()
    assert len(logged) == requests
    connections = {connection for connection, _ in logged}
    if keepalive == "on":
        assert len(connections) <= requests // 10, logged
        assert max(count for _, count in logged) > 1
    else:
        assert len(connections) == requests, logged
        assert {count for _, count in logged} == {1}
    print(f"\nkeepalive {keepalive}: {requests} requests on {len(connections)} backend connections")
