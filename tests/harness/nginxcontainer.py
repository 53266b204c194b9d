"""A real nginx container (the e2e nginx image) as the proxy of a docker-mode companion running on the host.

It bind-mounts the companion's conf dir, certificate store and webroot at their host paths (the
rendered files name them by those paths) and replaces ``/etc/nginx/conf.d`` with one file that
includes the conf dir. It listens on ports 80 and 443 of its own address on the default bridge; the
tests reach it there (no published ports).
"""

from __future__ import annotations

import contextlib
import importlib.util
import socket
import ssl
import sys
import uuid
from email.message import Message
from pathlib import Path
from types import ModuleType

import docker
from cryptography import x509
from docker.models.containers import Container

from .appimage import CONTAINER_LABEL, NAME_PREFIX, container_ip
from .nginx import http_get
from .wait import wait_until

NGINX_LABEL = "com.github.nginx-proxy.nginx"
REPO = Path(__file__).resolve().parents[2]


def _load_build() -> ModuleType:
    """e2e/images/build.py (e2e/ is not a package)."""
    name = "e2e_images_build"
    if name in sys.modules:
        return sys.modules[name]
    path = REPO / "e2e/images/build.py"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def ensure_nginx_image(client: docker.DockerClient) -> str:
    """``nginx:latest``: the local one, or the registry-free stand-in e2e/images/build.py makes (cached)."""
    return _load_build().ensure_images(client)["nginx"]


class NginxContainer:
    """One nginx container serving ``conf_dir`` (mounted at its host path), with the given labels.

    It offers what :class:`tests.harness.companion.Companion` reads from a HostNginx (``conf_dir``,
    ports, commands, which are ``docker`` here) and what tests ask of it: ``get``, ``served_cert``,
    ``check`` (``nginx -t`` inside the container) and ``reloads`` seen in its error log.
    """

    http_port = 80
    https_port = 443
    test_command = "docker"
    reload_command = "docker"

    def __init__(
        self,
        client: docker.DockerClient,
        workdir: Path,
        conf_dir: Path,
        certs_dir: Path,
        webroot: Path,
        labels: dict[str, str] | None = None,
        name: str = "nginx",
        endpoint: tuple[str, int] | None = None,
        image: str = "",
        **run_options: object,
    ) -> None:
        """`run_options` go to ``containers.run`` (e.g. ``network``, ``ports``); `endpoint` is where tests
        reach its port 80 when not at its own address (a published port), HTTPS then being unused; `image`
        one already on `client`'s daemon (by default the e2e nginx image, built there if missing)."""
        self.client = client
        self.workdir = workdir
        self.conf_dir = conf_dir
        self.certs_dir = certs_dir
        self.webroot = webroot
        self.labels = {CONTAINER_LABEL: "1", NGINX_LABEL: "", **(labels or {})}
        self.name = f"{NAME_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
        self.container: Container | None = None
        self.endpoint = endpoint
        self.image = image
        self.run_options = run_options

    def start(self, timeout: float = 20.0) -> NginxContainer:
        image = self.image or ensure_nginx_image(self.client)
        include_dir = self.workdir / "nginx-include"
        for folder in (include_dir, self.conf_dir, self.certs_dir, self.webroot):
            folder.mkdir(parents=True, exist_ok=True)
        (include_dir / "companion-include.conf").write_text(f"include {self.conf_dir}/*.conf;\n")
        volumes = [
            f"{include_dir}:/etc/nginx/conf.d:ro",
            f"{self.conf_dir}:{self.conf_dir}:ro",
            f"{self.certs_dir}:{self.certs_dir}:ro",
            f"{self.webroot}:{self.webroot}:ro",
        ]
        self.container = self.client.containers.run(
            image, name=self.name, labels=self.labels, volumes=volumes, detach=True, **self.run_options
        )

        def up() -> bool:
            self.container.reload()
            if self.container.status == "exited":
                raise RuntimeError(f"{self.name} exited: {self.container.logs().decode(errors='replace')}")
            return bool(container_ip(self.container)) and self.check()[0] == 0

        wait_until(up, timeout, 0.1, f"{self.name} to come up", errors=(), logs=[(self.name, self.logs)])
        return self

    @property
    def address(self) -> str:
        assert self.container is not None
        return container_ip(self.container)

    def check(self) -> tuple[int, str]:
        """``nginx -t`` in the container: (exit code, output)."""
        assert self.container is not None
        code, output = self.container.exec_run(["nginx", "-t"])
        return code, output.decode(errors="replace")

    def logs(self) -> str:
        assert self.container is not None
        return self.container.logs().decode(errors="replace")

    def get(
        self,
        host: str,
        path: str = "/",
        https: bool = False,
        timeout: float = 2,
        context: ssl.SSLContext | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Message, bytes]:
        """GET through this nginx with ``Host: host`` (and SNI ``host`` over TLS)."""
        port = self.https_port if https else self.http_port
        address = self.address
        if self.endpoint is not None and not https:
            address, port = self.endpoint
        return http_get(address, port, host, path, https=https, timeout=timeout, context=context, headers=headers)

    def body(self, host: str, path: str = "/") -> tuple[int, str]:
        status, _, data = self.get(host, path)
        return status, data.decode(errors="replace").strip()

    def served_cert(self, host: str) -> x509.Certificate:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with (
            socket.create_connection((self.address, self.https_port), timeout=3) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der)

    def remove(self) -> None:
        if self.container is not None:
            with contextlib.suppress(docker.errors.NotFound):
                self.container.remove(force=True, v=True)
            self.container = None
