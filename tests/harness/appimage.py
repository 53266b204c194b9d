"""A tiny HTTP app image built from the host's static busybox, with no registry, plus helpers to run it.

Each container runs ``busybox httpd`` and answers ``/`` with one line: ``$APP_ID`` if set, else its
hostname. ``APP_PORT`` (default 80) selects the listening port. ``APP_PATHS`` (space separated, e.g.
``"/api /static/v1"``) adds directories that answer the same line at ``/api/`` etc.; any other path is
busybox's 404 page.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
from docker.models.containers import Container

from .locks import file_lock

IMAGE = "companion-test-app:latest"
RECIPE_LABEL = "companion.test.recipe"
CONTAINER_LABEL = "companion.test"
NAME_PREFIX = "ctest-"
BUSYBOX = Path("/bin/busybox")
APPLETS = (
    "sh",
    "httpd",
    "echo",
    "cat",
    "hostname",
    "sleep",
    "ls",
    "env",
    "wget",
    "kill",
    "ps",
    "true",
    "mkdir",
    "cp",
)
SCRIPT = (
    'id="${APP_ID:-$(hostname)}"; echo "$id" > /www/index.html; '
    'for p in $APP_PATHS; do mkdir -p "/www$p" && echo "$id" > "/www$p/index.html"; done; '
    'exec /bin/busybox httpd -f -v -p "${APP_PORT:-80}" -h /www'
)
CMD = ["/bin/sh", "-c", SCRIPT]
CHANGES = ["EXPOSE 80", "ENV PATH=/bin", f"CMD {json.dumps(CMD)}"]


def _is_static(path: Path) -> bool:
    """True when ``path`` is an ELF file without a program interpreter (statically linked)."""
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except OSError:
        return False
    if head[:4] != b"\x7fELF" or head[4] != 2:  # 64-bit ELF only
        return False
    order = "little" if head[5] == 1 else "big"
    phoff = int.from_bytes(head[0x20:0x28], order)
    phentsize = int.from_bytes(head[0x36:0x38], order)
    phnum = int.from_bytes(head[0x38:0x3A], order)
    for i in range(phnum):
        off = phoff + i * phentsize
        if int.from_bytes(head[off : off + 4], order) == 3:  # PT_INTERP: dynamically linked
            return False
    return True


def ensure_busybox() -> Path:
    """Return the path of a static busybox, installing Debian's busybox-static when it is missing."""
    if _is_static(BUSYBOX):
        return BUSYBOX
    if shutil.which("apt-get"):
        subprocess.run(
            ["apt-get", "install", "-y", "busybox-static"],
            env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
    if not _is_static(BUSYBOX):
        raise RuntimeError("a static /bin/busybox is needed for the test app image: apt-get install -y busybox-static")
    return BUSYBOX


def _recipe_hash(busybox: bytes) -> str:
    h = hashlib.sha256()
    h.update(hashlib.sha256(busybox).digest())
    h.update(json.dumps([APPLETS, CHANGES, 2]).encode())
    return h.hexdigest()[:16]


def _rootfs_tar(busybox: bytes, dest: Path) -> None:
    """Write a minimal root filesystem with busybox and a few applet symlinks as a tar file."""
    with tarfile.open(dest, "w") as tar:
        for d in ("bin", "www", "tmp", "etc", "proc", "sys", "dev"):
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        info = tarfile.TarInfo("bin/busybox")
        info.size = len(busybox)
        info.mode = 0o755
        tar.addfile(info, io.BytesIO(busybox))
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type = tarfile.SYMTYPE
            link.linkname = "busybox"
            tar.addfile(link)
        for name, text in (("etc/passwd", "root:x:0:0:root:/:/bin/sh\n"), ("etc/group", "root:x:0:\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))


def ensure_app_image(client: docker.DockerClient) -> str:
    """Build ``companion-test-app:latest`` with ``docker import`` unless an image of this recipe exists.

    Under a file lock: the xdist workers of a run all ask for it at their start."""
    with file_lock("app-image"):
        return _ensure_app_image(client)


def _ensure_app_image(client: docker.DockerClient) -> str:
    busybox = ensure_busybox().read_bytes()
    recipe = _recipe_hash(busybox)
    cached = client.images.list(filters={"label": f"{RECIPE_LABEL}={recipe}"})
    if cached:
        image = cached[0]
        if IMAGE not in image.tags:
            image.tag(IMAGE)
        return IMAGE
    with tempfile.TemporaryDirectory() as tmp:
        tar_path = Path(tmp) / "rootfs.tar"
        _rootfs_tar(busybox, tar_path)
        repo, tag = IMAGE.rsplit(":", 1)
        client.api.import_image(
            src=str(tar_path), repository=repo, tag=tag, changes=[*CHANGES, f"LABEL {RECIPE_LABEL}={recipe}"]
        )
    client.images.get(IMAGE)  # raises if the import did not produce the image
    for stale in client.images.list(filters={"label": RECIPE_LABEL, "dangling": True}):
        with contextlib.suppress(docker.errors.APIError):
            client.images.remove(stale.id)
    return IMAGE


def container_ip(container: Container) -> str:
    """First IPv4 address of the container on any network ('' if it has none)."""
    container.reload()
    settings = container.attrs["NetworkSettings"]
    if settings.get("IPAddress"):
        return settings["IPAddress"]
    for net in (settings.get("Networks") or {}).values():
        if net.get("IPAddress"):
            return net["IPAddress"]
    return ""


def wait_app(container: Container, port: int = 80, timeout: float = 15.0) -> str:
    """Wait until the app in ``container`` accepts TCP on ``port``; return its IP."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        container.reload()
        if container.status == "exited":
            raise RuntimeError(f"{container.name} exited: {container.logs().decode(errors='replace')}")
        ip = container_ip(container)
        if ip:
            with contextlib.suppress(OSError), socket.create_connection((ip, port), timeout=0.5):
                return ip
        time.sleep(0.05)
    raise TimeoutError(f"{container.name} did not listen on port {port} within {timeout}s")


def run_app(
    client: docker.DockerClient,
    name: str,
    labels: dict[str, str] | None = None,
    environment: dict[str, str] | None = None,
    wait: bool = True,
    **kw: Any,
) -> Container:
    """Run a detached app container named ``ctest-<name>-<random>``; wait until it listens if ``wait``.

    Extra keyword arguments go to ``client.containers.run``. The caller removes the container (the
    ``apps`` fixture does it for you).
    """
    full_name = f"{NAME_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
    all_labels = {CONTAINER_LABEL: "1", **(labels or {})}
    image = kw.pop("image", IMAGE)
    try:
        container = client.containers.run(
            image, name=full_name, labels=all_labels, environment=environment or {}, detach=True, **kw
        )
    except docker.errors.APIError:
        # run = create + start: a failed start leaves a created container behind
        with contextlib.suppress(docker.errors.APIError):
            client.containers.get(full_name).remove(force=True, v=True)
        raise
    if wait and kw.get("network_mode") not in ("none", "host"):
        port = int((environment or {}).get("APP_PORT", 80))
        wait_app(container, port=port)
    return container


class AppRunner:
    """Runs app containers and force-removes every one of them at ``cleanup()``."""

    def __init__(self, client: docker.DockerClient) -> None:
        self.client = client
        self.containers: list[Container] = []

    def __call__(
        self,
        name: str,
        labels: dict[str, str] | None = None,
        environment: dict[str, str] | None = None,
        wait: bool = True,
        **kw: Any,
    ) -> Container:
        """Same as :func:`run_app`, with the container tracked for removal."""
        container = run_app(self.client, name, labels=labels, environment=environment, wait=False, **kw)
        self.containers.append(container)
        if wait and kw.get("network_mode") not in ("none", "host"):
            wait_app(container, port=int((environment or {}).get("APP_PORT", 80)))
        return container

    run = __call__

    def cleanup(self) -> None:
        """Force-remove all containers started through this runner (a few at a time: a test that ran fifty waited
        for fifty removals one after the other, on the one lane every test of the shared daemon runs in)."""

        def remove(container: Container) -> None:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True, v=True)

        if len(self.containers) > 1:
            with ThreadPoolExecutor(max_workers=8) as pool:
                list(pool.map(remove, self.containers))
        else:
            for container in self.containers:
                remove(container)
        self.containers.clear()
