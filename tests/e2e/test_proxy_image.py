"""The single-container image (Dockerfile.proxy) with real compose, tested like the two-container stack.

Two stacks, one per module scope, each with its own Pebble + challtestsrv (every name resolves to the
proxy's fixed address on the project network) and the proxy's ports published on free 127.0.0.1 ports:

* `single`: the image with a Pebble certificate, an app also on a network the proxy is not on (and whose
  name sorts first), restarts, and the supervisor failing the container when nginx or the companion dies.
* `migrated`: a compose file written for nginx-proxy + acme-companion, turned into a single-container one the
  way README says (image name replaced, acme-companion's service removed), with a certs dir in
  acme-companion's layout: every site answers with its old certificate and nothing is ordered.

Images come from e2e/images/build.py (cached by context hash); nothing here skips.
"""

from __future__ import annotations

import base64
import copy
import http.client
import json
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import docker
import pytest
import requests
from cryptography import x509
from docker.models.containers import Container

from tests.harness.acmecompanion import TestCA, write_layout
from tests.harness.compose import ComposeProject, free_subnet
from tests.harness.e2e import load_build
from tests.harness.ports import free_port
from tests.harness.wait import NETWORK_ERRORS, is_not_none, wait_until

pytestmark = pytest.mark.e2e


class ProxyStack:
    """A compose project around the single-container image service `proxy_service`, plus Pebble."""

    def __init__(self, client: docker.DockerClient, folder: Path, proxy_service: str) -> None:
        self.client = client
        self.folder = folder
        self.project = ComposeProject(folder)
        self.proxy_service = proxy_service
        self.subnet = free_subnet(client, 30)
        self.proxy_ip = str(self.subnet.network_address + 10)
        self.http_port, self.https_port, self.mgmt_port = free_port(), free_port(), free_port()
        self.root_pem = b""

    def acme_services(self) -> dict[str, object]:
        """Pebble (ACME at https://pebble:14000/dir, listener CA in the pebble-ca volume) and challtestsrv."""
        return {
            "pebble": {
                "image": "companion-pebble:local",
                "environment": {"PEBBLE_DNS": "challtestsrv:8053", "PEBBLE_VA_NOSLEEP": "1"},
                "volumes": ["pebble-ca:/pebble-ca"],
                "ports": [f"127.0.0.1:{self.mgmt_port}:15000"],
            },
            "challtestsrv": {
                "image": "companion-pebble:local",
                "command": ["pebble-challtestsrv", "-defaultIPv4", self.proxy_ip, "-defaultIPv6", "", "-dns01", ":8053"]
                + ["-http01", "", "-https01", "", "-tlsalpn01", "", "-management", ":8055"],
                "tmpfs": ["/pebble-ca"],
            },
        }

    def proxy_settings(self, tag: str) -> dict[str, str]:
        """What a test adds to the proxy's service: its Pebble, and only its own names (a shared daemon)."""
        return {
            "ACME_CA_URI": "https://pebble:14000/dir",
            "CA_BUNDLE": "/pebble-ca/ca.pem",
            "ALLOWED_DOMAINS": f"*.{tag}.proxy.test",
            "ACME_RETRY_BASE": "5",
        }

    def up(self, compose: dict[str, object]) -> None:
        networks = compose.setdefault("networks", {})
        assert isinstance(networks, dict)
        networks["default"] = {"ipam": {"config": [{"subnet": str(self.subnet)}]}}
        volumes = compose.setdefault("volumes", {})
        assert isinstance(volumes, dict)
        volumes["pebble-ca"] = {}
        self.project.up(json.dumps(compose, indent=2))

    def down(self) -> None:
        self.project.down()

    def container(self, service: str) -> Container:
        found = self.client.containers.list(
            all=True,
            filters={
                "label": [f"com.docker.compose.project={self.project.name}", f"com.docker.compose.service={service}"]
            },
        )
        assert len(found) == 1, f"expected one {service} container, found {found}"
        return found[0]

    @property
    def proxy(self) -> Container:
        return self.container(self.proxy_service)

    def logs(self, service: str = "") -> str:
        try:
            return self.container(service or self.proxy_service).logs().decode(errors="replace")
        except Exception as exc:  # noqa: BLE001 - diagnostics only
            return f"<no logs: {exc}>"

    def diagnose(self) -> str:
        ours = [line for line in self.logs().splitlines() if "not in the allowed domains" not in line]
        return "---- proxy (tail) ----\n" + "\n".join(ours[-60:]) + "\n---- pebble ----\n" + self.logs("pebble")[-3000:]

    def orders(self) -> int:
        """Orders Pebble accepted since it started (it logs `Added order` for each)."""
        return self.logs("pebble").count("Added order")

    def fetch_pebble_root(self) -> bytes:
        listener_ca = self.folder / "pebble-listener-ca.pem"

        def probe() -> bytes | None:
            code, out = self.container("pebble").exec_run(["cat", "/pebble-ca/ca.pem"])
            if code != 0 or b"BEGIN CERTIFICATE" not in out:
                return None
            listener_ca.write_bytes(out)
            answer = requests.get(f"https://127.0.0.1:{self.mgmt_port}/roots/0", verify=str(listener_ca), timeout=5)
            return answer.content if answer.status_code == 200 else None

        return wait_until(
            probe, 60, 0.3, "Pebble's /roots/0", until=is_not_none, logs=self.diagnose, errors=NETWORK_ERRORS
        )

    def http(self, host: str, path: str = "/") -> tuple[int, dict[str, str], str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=5)
        try:
            conn.request("GET", path, headers={"Host": host, "Connection": "close"})
            answer = conn.getresponse()
            return answer.status, dict(answer.getheaders()), answer.read().decode(errors="replace")
        finally:
            conn.close()

    def https(self, host: str, root_pem: bytes) -> tuple[int, str, int]:
        """(status, body, serial of the served leaf), verified against `root_pem` with SNI = host."""
        status, _, body, serial = self.exchange(host, root_pem)
        return status, body, serial

    def exchange(
        self, host: str, root_pem: bytes, auth: tuple[str, str] | None = None
    ) -> tuple[int, dict[str, str], str, int]:
        """(status, headers, body, serial of the served leaf) of one GET / over verified TLS, with
        basic-auth credentials when given."""
        context = ssl.create_default_context(cadata=root_pem.decode())
        extra = ""
        if auth is not None:
            extra = "Authorization: Basic " + base64.b64encode(":".join(auth).encode()).decode() + "\r\n"
        with (
            socket.create_connection(("127.0.0.1", self.https_port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            tls.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode())
            answer = http.client.HTTPResponse(tls)  # type: ignore[arg-type]
            answer.begin()
            body = answer.read().decode(errors="replace")
        headers = {k.lower(): v for k, v in answer.getheaders()}
        return answer.status, headers, body.strip(), x509.load_der_x509_certificate(der).serial_number

    def wait_site(
        self, host: str, body: str, root_pem: bytes, timeout: float = 120, auth: tuple[str, str] | None = None
    ) -> int:
        """Wait until https://host/ answers 200 with `body` under a certificate that verifies; its serial."""

        def probe() -> int | None:
            try:
                status, _, text, serial = self.exchange(host, root_pem, auth)
            except ssl.SSLCertVerificationError:
                return None  # the placeholder until the certificate is there
            return serial if status == 200 and text == body else None

        return wait_until(
            probe,
            timeout,
            0.3,
            f"https://{host}/ to answer {body!r}",
            until=is_not_none,
            logs=self.diagnose,
            errors=NETWORK_ERRORS,
        )

    def wait_restarted(self, count: int) -> None:
        """Wait until Docker's restart policy has restarted the proxy `count` times and it runs again."""

        def probe() -> bool | None:
            proxy = self.proxy
            running = proxy.status == "running" and proxy.attrs["RestartCount"] >= count
            return True if running else None

        wait_until(
            probe,
            60,
            0.3,
            f"restart #{count} of the proxy",
            until=is_not_none,
            logs=self.diagnose,
            errors=NETWORK_ERRORS,
        )


@pytest.fixture(scope="module")
def client() -> docker.DockerClient:
    build = load_build()
    client = build.docker_client(start=True)
    started = time.monotonic()
    refs = build.ensure_proxy_images(client)
    print(f"ensure_proxy_images took {time.monotonic() - started:.1f}s: {refs}")
    return client


# -- the image on its own -----------------------------------------------------------------------


SINGLE_TAG = uuid.uuid4().hex[:8]
SITE = f"app.{SINGLE_TAG}.proxy.test"


@pytest.fixture(scope="module")
def single(
    client: docker.DockerClient, app_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyStack]:
    stack = ProxyStack(client, tmp_path_factory.mktemp("single"), "proxy")
    compose: dict[str, object] = {
        "services": {
            "proxy": {
                "image": "companion-proxy:local",
                "restart": "on-failure",
                "ports": [f"127.0.0.1:{stack.http_port}:80", f"127.0.0.1:{stack.https_port}:443"],
                "volumes": [
                    "certs:/etc/nginx/certs",
                    "/var/run/docker.sock:/tmp/docker.sock:ro",
                    "pebble-ca:/pebble-ca:ro",
                ],
                "environment": stack.proxy_settings(SINGLE_TAG),
                "networks": {"default": {"ipv4_address": stack.proxy_ip}},
            },
            # Also on `aaa`, which sorts first and which the proxy is not on: only `default` reaches it.
            "app": {
                "image": app_image,
                "environment": {"VIRTUAL_HOST": SITE, "LETSENCRYPT_HOST": SITE, "APP_ID": "single app"},
                "networks": ["aaa", "default"],
            },
            **stack.acme_services(),
        },
        "networks": {"aaa": {}},
        "volumes": {"certs": {}},
    }
    try:
        stack.up(compose)
        stack.root_pem = stack.fetch_pebble_root()
        yield stack
    finally:
        stack.down()


@pytest.fixture(scope="module")
def issued(single: ProxyStack) -> int:
    """The serial of the site's Pebble certificate, once it is served (the first order happens here)."""
    return single.wait_site(SITE, "single app", single.root_pem)


def test_the_image_routes_and_serves_a_certificate_from_pebble(single: ProxyStack, issued: int) -> None:
    status, headers, _ = single.http(SITE, "/x?y=1")
    assert status == 301 and headers["Location"] == f"https://{SITE}/x?y=1"
    assert single.orders() >= 1
    assert single.http(f"unknown.{SINGLE_TAG}.proxy.test")[0] == 503
    # The backend's address is on the network the proxy shares, not the first by name.
    conf = single.proxy.exec_run(["cat", "/etc/nginx/conf.d/companion.conf"]).output.decode()
    app_ip = single.container("app").attrs["NetworkSettings"]["Networks"][f"{single.project.name}_default"]["IPAddress"]
    assert f"server {app_ip}:80" in conf, conf


def test_its_health_check_covers_nginx_and_the_companion(single: ProxyStack, issued: int) -> None:
    image = single.client.images.get(single.proxy.attrs["Image"])
    assert image.attrs["Config"]["Healthcheck"]["Test"] == ["CMD", "companion", "check", "--nginx"]
    assert image.attrs["Config"]["Entrypoint"] == ["companion"] and image.attrs["Config"]["Cmd"] == ["proxy"]
    assert single.proxy.exec_run(["companion", "check", "--nginx"]).exit_code == 0
    stale = single.proxy.exec_run(["companion", "--heartbeat-file", "/nonexistent", "check", "--nginx"])
    assert stale.exit_code == 1 and b"no heartbeat" in stale.output
    no_nginx = single.proxy.exec_run(["companion", "--http-port", "9", "check", "--nginx"])
    assert no_nginx.exit_code == 1 and b"nginx does not answer on 127.0.0.1:9" in no_nginx.output


def test_a_restart_keeps_the_certificate(single: ProxyStack, issued: int) -> None:
    orders = single.orders()
    single.proxy.restart(timeout=10)
    assert single.wait_site(SITE, "single app", single.root_pem, timeout=60) == issued
    time.sleep(2)  # the first pass has run (the site works): room for an order to show
    assert single.orders() == orders
    assert "stopping nginx and the companion" in single.logs()


def _kill_and_see_a_restart(single: ProxyStack, issued: int, command: str, what: str) -> None:
    restarts = single.proxy.attrs["RestartCount"]
    orders = single.orders()
    assert single.proxy.exec_run(["sh", "-c", command]).exit_code == 0
    # `restart: on-failure` restarts only a container that exited non-zero: the restart proves the exit code.
    single.wait_restarted(restarts + 1)
    assert f"{what} exited unexpectedly (exit code 137); stopping the container" in single.logs()
    assert single.wait_site(SITE, "single app", single.root_pem, timeout=60) == issued
    assert single.orders() == orders


def test_the_container_fails_when_nginx_dies(single: ProxyStack, issued: int) -> None:
    _kill_and_see_a_restart(single, issued, "kill -9 $(cat /run/nginx.pid)", "nginx")


def test_the_container_fails_when_the_companion_dies(single: ProxyStack, issued: int) -> None:
    find = (
        "for d in /proc/[0-9]*; do tr '\\0' ' ' < $d/cmdline 2>/dev/null | grep -q -- '-m companion[ ]run' "
        "&& kill -9 ${d#/proc/}; done; true"
    )
    _kill_and_see_a_restart(single, issued, find, "companion")


# -- migrating a compose file written for nginx-proxy + acme-companion ---------------------------

MIGRATION_TAG = uuid.uuid4().hex[:8]
SHOP, BLOG, WWW_BLOG = (f"{name}.{MIGRATION_TAG}.proxy.test" for name in ("shop", "blog", "www.blog"))

# nginx-proxy + acme-companion as their docs set them up (two containers sharing the volumes), two apps.
NGINX_PROXY_COMPOSE: dict[str, object] = {
    "services": {
        "nginx-proxy": {
            "image": "nginxproxy/nginx-proxy",
            "ports": ["80:80", "443:443"],
            "volumes": [
                "certs:/etc/nginx/certs",
                "vhost:/etc/nginx/vhost.d",
                "htpasswd:/etc/nginx/htpasswd",
                "html:/usr/share/nginx/html",
                "/var/run/docker.sock:/tmp/docker.sock:ro",
            ],
        },
        "acme-companion": {
            "image": "nginxproxy/acme-companion",
            "environment": {"DEFAULT_EMAIL": "ops@example.com", "NGINX_PROXY_CONTAINER": "nginx-proxy"},
            "volumes_from": ["nginx-proxy"],
            "volumes": ["/var/run/docker.sock:/var/run/docker.sock:ro", "acme:/etc/acme.sh"],
        },
        "shop": {
            "environment": {
                "VIRTUAL_HOST": SHOP,
                "VIRTUAL_PORT": "8080",
                "LETSENCRYPT_HOST": SHOP,
                "LETSENCRYPT_EMAIL": "shop@example.com",
            },
        },
        "blog": {"environment": {"VIRTUAL_HOST": f"{BLOG},{WWW_BLOG}", "LETSENCRYPT_HOST": f"{BLOG},{WWW_BLOG}"}},
    },
    "volumes": {"certs": {}, "vhost": {}, "htpasswd": {}, "html": {}, "acme": {}},
}
# Files the migrated proxy finds in its vhost.d and htpasswd folders (name -> content), as nginx-proxy
# users write them: a header for the shop only, another for every other host, basic auth on the blog.
VHOST_FILES: dict[str, str] = {
    SHOP: 'add_header X-Site-File "shop" always;\n',
    "default": 'add_header X-Site-File "default" always;\n',
}
BLOG_USER = ("editor", "s3cret-words")
HTPASSWD_FILES: dict[str, str] = {
    BLOG: f"{BLOG_USER[0]}:{bcrypt.hashpw(BLOG_USER[1].encode(), bcrypt.gensalt(rounds=4)).decode()}\n",
}


def migrate(original: dict[str, object], image: str) -> dict[str, object]:
    """README's migration: nginx-proxy's image replaced, acme-companion's service removed (its
    DEFAULT_EMAIL moved to the proxy), everything else kept."""
    compose = copy.deepcopy(original)
    services = compose["services"]
    assert isinstance(services, dict)
    acme = services.pop("acme-companion")
    proxy = services["nginx-proxy"]
    proxy["image"] = image
    proxy.setdefault("environment", {})["DEFAULT_EMAIL"] = acme["environment"]["DEFAULT_EMAIL"]
    volumes = compose["volumes"]
    assert isinstance(volumes, dict)
    volumes.pop("acme")
    return compose


@pytest.fixture(scope="module")
def migrated(
    client: docker.DockerClient, app_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ProxyStack, TestCA, dict[str, int]]]:
    """The migrated stack, with acme-companion's certificates (from a CA the client trusts) in its certs
    folder; returns the stack, that CA and the serial issued for each host."""
    folder = tmp_path_factory.mktemp("migrated")
    stack = ProxyStack(client, folder, "nginx-proxy")
    ca = TestCA()
    certs, vhost, htpasswd = folder / "certs", folder / "vhost.d", folder / "htpasswd"
    for path, files in ((certs, {}), (vhost, VHOST_FILES), (htpasswd, HTPASSWD_FILES)):
        path.mkdir()
        for name, text in files.items():
            (path / name).write_text(text)
    serials = {}
    for names in ([SHOP], [BLOG, WWW_BLOG]):
        issued = ca.issue(names)
        write_layout(certs, names, issued)
        serials.update(dict.fromkeys(names, issued.serial))

    compose = migrate(NGINX_PROXY_COMPOSE, "companion-proxy:local")
    services = compose["services"]
    assert isinstance(services, dict)
    proxy = services["nginx-proxy"]
    # What only this test changes: loopback ports, the prepared folders, its own Pebble and names.
    proxy["ports"] = [f"127.0.0.1:{stack.http_port}:80", f"127.0.0.1:{stack.https_port}:443"]
    folders = {"certs:": f"{certs}:", "vhost:": f"{vhost}:", "htpasswd:": f"{htpasswd}:"}
    proxy["volumes"] = [
        next((f + v[len(k) :] for k, f in folders.items() if v.startswith(k)), v) for v in proxy["volumes"]
    ]
    proxy["volumes"].append("pebble-ca:/pebble-ca:ro")
    proxy["environment"].update(stack.proxy_settings(MIGRATION_TAG))
    proxy["networks"] = {"default": {"ipv4_address": stack.proxy_ip}}
    services["shop"].update(image=app_image)
    services["shop"]["environment"].update(APP_ID="shop", APP_PORT="8080")
    services["blog"].update(image=app_image)
    services["blog"]["environment"].update(APP_ID="blog")
    services.update(stack.acme_services())
    for name in ("certs", "vhost", "htpasswd"):
        compose["volumes"].pop(name)
    try:
        stack.up(compose)
        yield stack, ca, serials
    finally:
        stack.down()


def test_a_migrated_stack_serves_every_site_with_its_imported_certificate(
    migrated: tuple[ProxyStack, TestCA, dict[str, int]],
) -> None:
    stack, ca, serials = migrated
    for host, body, auth in ((SHOP, "shop", None), (BLOG, "blog", BLOG_USER), (WWW_BLOG, "blog", None)):
        assert stack.wait_site(host, body, ca.root_pem, timeout=60, auth=auth) == serials[host], host
        assert stack.http(host)[0] == 301
    time.sleep(3)  # the passes after start have run (sites work): room for an order to show
    assert stack.orders() == 0, "a certificate was ordered although acme-companion's are valid"
    logs = stack.logs()
    assert f"certificate {SHOP} ({SHOP}): imported from acme-companion's" in logs
    assert f"certificate {BLOG} ({BLOG}, {WWW_BLOG}): imported from acme-companion's" in logs


def test_a_migrated_stack_reads_its_vhost_d_and_htpasswd_files(
    migrated: tuple[ProxyStack, TestCA, dict[str, int]],
) -> None:
    """nginx-proxy's per-host files keep working: the shop's own vhost.d file reaches only the shop,
    `default` every other host, and the blog asks for the credentials of its htpasswd file."""
    stack, ca, _ = migrated
    stack.wait_site(BLOG, "blog", ca.root_pem, timeout=60, auth=BLOG_USER)
    status, headers, _, _ = stack.exchange(SHOP, ca.root_pem)
    assert (status, headers.get("x-site-file")) == (200, "shop")
    status, headers, _, _ = stack.exchange(WWW_BLOG, ca.root_pem)
    assert (status, headers.get("x-site-file")) == (200, "default")
    assert stack.exchange(BLOG, ca.root_pem)[0] == 401
    assert stack.exchange(BLOG, ca.root_pem, (BLOG_USER[0], "wrong"))[0] == 401
    status, headers, body, _ = stack.exchange(BLOG, ca.root_pem, BLOG_USER)
    assert (status, body, headers.get("x-site-file")) == (200, "blog", "default")


def test_a_migrated_stack_warns_about_nothing(migrated: tuple[ProxyStack, TestCA, dict[str, int]]) -> None:
    """Every variable the compose file uses is one README's table lists as applied: no warning at all
    (other tests' containers on the shared daemon are left out of what is read here)."""
    stack, ca, _ = migrated
    stack.wait_site(SHOP, "shop", ca.root_pem, timeout=60)
    stack.wait_site(BLOG, "blog", ca.root_pem, timeout=60, auth=BLOG_USER)
    ours = stack.project.name
    warnings = [
        line
        for line in stack.logs().splitlines()
        if (" WARNING " in line or "[warn]" in line or "[emerg]" in line)
        and ("container " not in line or f"container {ours}-" in line)
    ]
    assert warnings == [], "\n".join(warnings)
