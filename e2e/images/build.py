"""Build the local images the compose e2e tests need, so they run with no container registry.

* ``debian:bookworm-slim``: pulled if possible, else made with ``debootstrap --variant=minbase`` from the
  mirror this host's apt uses and ``docker import``-ed (labelled as our stand-in).
* ``nginx:latest``: pulled if possible, else built from Debian's nginx, laid out like the official image.
* ``companion-pebble:local``: Debian's pebble + pebble-challtestsrv with an entrypoint that creates a
  per-volume CA for Pebble's listener in ``/pebble-ca``.
* ``companion-proxy:local`` (:func:`ensure_proxy_images`, ``--proxy``): ``Dockerfile.proxy``, nginx and the
  companion in one container.
* ``companion:local`` and ``companion-demo:local`` (:func:`ensure_quickstart_images`, ``--quickstart``):
  the top-level Dockerfile and ``examples/quickstart/demo``, tagged as the compose files name them.

Builds are labelled with a hash of their context (and base image) and skipped when such an image exists.
Run ``python e2e/images/build.py`` or call :func:`ensure_images`. Environment: ``E2E_IMAGES_NO_PULL=1``
skips registry pulls; ``E2E_BUILD_NETWORK=host`` forces the build network (default: probed).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import docker
import docker.utils.build
from docker.errors import APIError, DockerException, ImageNotFound

HERE = Path(__file__).resolve().parent
SUITE = "bookworm"
BASE_IMAGE = "debian:bookworm-slim"
NGINX_IMAGE = "nginx:latest"
PEBBLE_IMAGE = "companion-pebble:local"
REPO = HERE.parents[1]
COMPANION_IMAGE = "companion:local"  # the top-level Dockerfile, as docker-compose.yml tags it
DEMO_IMAGE = "companion-demo:local"  # examples/quickstart/demo, as the quickstart tags it
AGENT_IMAGE = "companion-agent:local"  # the top-level Dockerfile's `agent` stage: nginx run by `companion agent`
PROXY_IMAGE = "companion-proxy:local"  # Dockerfile.proxy: nginx and the companion in one container
BUILD_STAGE_REPO = "companion-build-stage"  # the Dockerfiles' `build` stages, kept as the next build's cache
DEFAULT_MIRROR = "http://deb.debian.org/debian"
LABEL_STANDIN = "io.companion.e2e.standin"
LABEL_HASH = "io.companion.e2e.context-hash"
LABEL_MIRROR = "io.companion.e2e.mirror"
MARKER_FILE = "etc/companion-e2e-standin"
SCHEMA = "1"  # bump to force every stand-in to be rebuilt
LOCK_FILE = Path("/var/tmp/companion-e2e-images.lock")
PATH_ENV = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

log = logging.getLogger("e2e.images")
_STARTED: list[subprocess.Popen[bytes]] = []  # a dockerd we started keeps running after we exit


class ImageBuildError(RuntimeError):
    """A stand-in image could not be built."""


# --------------------------------------------------------------------------------------------------
# Docker daemon


def docker_client(start: bool = True, timeout: float = 60.0) -> docker.DockerClient:
    """Return a client for a daemon that answers, starting ``dockerd --live-restore`` if none does."""
    with contextlib.suppress(DockerException):
        client = docker.from_env()
        client.ping()
        return client
    if not start:
        raise RuntimeError("no Docker daemon answers (DOCKER_HOST or /var/run/docker.sock)")
    if shutil.which("dockerd") is None:
        raise RuntimeError("no Docker daemon answers and dockerd is not installed")
    log_path = Path(tempfile.gettempdir()) / "companion-e2e-dockerd.log"
    log.info("starting dockerd --live-restore (log: %s)", log_path)
    with log_path.open("ab") as out:
        _STARTED.append(
            subprocess.Popen(
                ["dockerd", "--live-restore"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        )
    deadline = time.monotonic() + timeout
    while True:
        try:
            client = docker.from_env()
            client.ping()
            return client
        except DockerException as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"dockerd did not answer within {timeout:.0f}s, see {log_path}") from exc
            time.sleep(0.5)


def image_or_none(client: docker.DockerClient, ref: str) -> docker.models.images.Image | None:
    """The local image ``ref``, or None."""
    try:
        return client.images.get(ref)
    except ImageNotFound:
        return None


def try_pull(client: docker.DockerClient, ref: str) -> docker.models.images.Image | None:
    """Pull ``ref`` unless E2E_IMAGES_NO_PULL is set; None when the registry cannot be used."""
    if os.environ.get("E2E_IMAGES_NO_PULL"):
        return None
    repo, _, tag = ref.partition(":")
    try:
        image = client.images.pull(repo, tag=tag or "latest")
    except (APIError, DockerException) as exc:
        log.info("pull %s failed, building a stand-in: %s", ref, str(exc).splitlines()[0][:200])
        return None
    log.info("pulled %s", ref)
    return image


def is_standin(image: docker.models.images.Image) -> bool:
    """Whether ``image`` was made by this script."""
    return bool((image.labels or {}).get(LABEL_STANDIN))


# --------------------------------------------------------------------------------------------------
# Host apt configuration


@dataclass(frozen=True)
class AptSource:
    """One enabled source entry of the host's apt configuration."""

    path: Path
    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    signed_by: str = ""


_ONE_LINE = re.compile(r"^(deb|deb-src)\s+(?:\[([^\]]*)\]\s+)?(\S+)\s+(\S+)")


def _parse_one_line(text: str, path: Path) -> list[AptSource]:
    sources = []
    for line in text.splitlines():
        match = _ONE_LINE.match(line.split("#", 1)[0].strip())
        if not match:
            continue
        kind, options, uri, suite = match.groups()
        signed_by = ""
        for option in (options or "").split():
            key, _, value = option.partition("=")
            if key.lower() == "signed-by":
                signed_by = value
        sources.append(AptSource(path, (kind,), (uri,), (suite,), signed_by))
    return sources


def _parse_deb822(text: str, path: Path) -> list[AptSource]:
    sources = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace() and key:
                fields[key] += "\n" + line.strip()
                continue
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
        if not fields.get("uris") or fields.get("enabled", "yes").lower() in ("no", "false", "0"):
            continue
        sources.append(
            AptSource(
                path,
                tuple(fields.get("types", "deb").split()),
                tuple(fields["uris"].split()),
                tuple(fields.get("suites", "").split()),
                fields.get("signed-by", ""),
            )
        )
    return sources


def apt_source_files(etc_apt: Path = Path("/etc/apt")) -> list[Path]:
    """The host's enabled apt source files, in apt's order."""
    files = [etc_apt / "sources.list"] if (etc_apt / "sources.list").is_file() else []
    d = etc_apt / "sources.list.d"
    if d.is_dir():
        files += sorted(p for p in d.iterdir() if p.is_file() and p.suffix in (".list", ".sources"))
    return files


def read_apt_sources(etc_apt: Path = Path("/etc/apt")) -> list[AptSource]:
    """Every enabled source entry of the host's apt configuration."""
    sources: list[AptSource] = []
    for path in apt_source_files(etc_apt):
        text = path.read_text(errors="replace")
        sources += _parse_deb822(text, path) if path.suffix == ".sources" else _parse_one_line(text, path)
    return sources


def detect_mirror(etc_apt: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this host's apt uses for the bookworm suite (deb.debian.org if none is found)."""
    for source in read_apt_sources(etc_apt):
        if "deb" in source.types and SUITE in source.suites and source.uris:
            return source.uris[0].rstrip("/")
    log.warning("no '%s' source found in %s, using %s", SUITE, etc_apt, DEFAULT_MIRROR)
    return DEFAULT_MIRROR


def _usable_in(source: AptSource, rootfs: Path) -> bool:
    """Whether ``source`` is a bookworm source whose signing key the new rootfs has."""
    if not source.suites or not all(s == SUITE or s.startswith(SUITE + "-") for s in source.suites):
        return False
    return not source.signed_by.startswith("/") or (rootfs / source.signed_by.lstrip("/")).is_file()


# --------------------------------------------------------------------------------------------------
# Base image


_DPKG_EXCLUDES = """\
# Keep images small, like the official debian slim images.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
"""

_APT_CONF = {
    "docker-clean": 'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\n',
    "docker-gzip-indexes": 'Acquire::GzipIndexes "true";\n',
    "docker-no-languages": 'Acquire::Languages "none";\n',
    "docker-autoremove-suggests": 'Apt::AutoRemove::SuggestsImportant "false";\n',
}


def _empty_dir(path: Path) -> None:
    if not path.is_dir():
        return
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path.resolve()) + "/"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    return sorted((p for p in points if p.startswith(prefix)), reverse=True)


def _unmount_all(path: Path) -> None:
    for point in _mounts_under(path):
        subprocess.run(["umount", "-l", point], check=False)
    if _mounts_under(path):
        raise ImageBuildError(f"filesystems still mounted under {path}: {_mounts_under(path)}")


def install_apt_sources(rootfs: Path, mirror: str, etc_apt: Path = Path("/etc/apt")) -> list[str]:
    """Copy the host's bookworm apt sources into ``rootfs`` (else one for ``mirror``); return copied names."""
    target = rootfs / "etc/apt"
    (target / "sources.list").unlink(missing_ok=True)
    sources = read_apt_sources(etc_apt)
    copied: list[str] = []
    for path in apt_source_files(etc_apt):
        mine = [s for s in sources if s.path == path]
        if mine and all(_usable_in(s, rootfs) for s in mine):
            dest = target / path.relative_to(etc_apt)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
            copied.append(str(path))
    if not copied:
        (target / "sources.list").write_text(f"deb {mirror} {SUITE} main\n")
    return copied


def slim_rootfs(rootfs: Path, mirror: str) -> None:
    """Make a debootstrapped tree container-ready: CA bundle, apt sources, no docs/man/lists/caches."""
    host_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    if host_bundle.is_file():
        (rootfs / "etc/ssl/certs").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(host_bundle, rootfs / "etc/ssl/certs/ca-certificates.crt")
    else:
        log.warning("host has no %s; https inside builds may fail", host_bundle)
    copied = install_apt_sources(rootfs, mirror)
    log.info("apt sources in the image: %s", ", ".join(copied) or f"deb {mirror} {SUITE} main")

    (rootfs / "etc/dpkg/dpkg.cfg.d/docker").write_text(_DPKG_EXCLUDES)
    for name, text in _APT_CONF.items():
        (rootfs / "etc/apt/apt.conf.d" / name).write_text(text)
    policy = rootfs / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\n# No daemons are started by package installs inside containers.\nexit 101\n")
    policy.chmod(0o755)

    for rel in ("usr/share/man", "usr/share/info", "usr/share/groff", "usr/share/lintian"):
        _empty_dir(rootfs / rel)
    doc = rootfs / "usr/share/doc"
    for top, dirs, files in os.walk(doc, topdown=False):
        # Keep only the copyright files, as the dpkg excludes above do for later installs.
        for name in files:
            if name != "copyright" or Path(top).parent != doc:
                (Path(top) / name).unlink()
        for name in dirs:
            if not (Path(top) / name).is_symlink():
                with contextlib.suppress(OSError):
                    (Path(top) / name).rmdir()
    locale = rootfs / "usr/share/locale"
    if locale.is_dir():
        for child in locale.iterdir():
            if child.name != "locale.alias":
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    for rel in ("var/lib/apt/lists", "var/cache/apt", "var/cache/debconf", "var/log", "tmp", "var/tmp"):
        _empty_dir(rootfs / rel)
    (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
    (rootfs / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
    (rootfs / "var/cache/debconf").mkdir(parents=True, exist_ok=True)
    (rootfs / "tmp").chmod(0o1777)
    (rootfs / "var/tmp").chmod(0o1777)
    for rel in ("dev", "proc", "sys", "run"):
        _empty_dir(rootfs / rel)
    for rel in ("etc/resolv.conf", "etc/hostname", "etc/machine-id"):
        path = rootfs / rel
        if path.is_symlink():
            path.unlink()
        path.write_text("")
    (rootfs / MARKER_FILE).write_text(
        json.dumps({"built_by": "e2e/images/build.py", "suite": SUITE, "mirror": mirror}) + "\n"
    )


def build_base(client: docker.DockerClient, mirror: str | None = None) -> docker.models.images.Image:
    """Create ``debian:bookworm-slim`` with debootstrap and docker import."""
    if shutil.which("debootstrap") is None:
        raise ImageBuildError("debootstrap is not installed (apt-get install debootstrap)")
    if os.geteuid() != 0:
        raise ImageBuildError("debootstrap needs root")
    mirror = mirror or detect_mirror()
    log.info("debootstrap --variant=minbase %s from %s", SUITE, mirror)
    tmp = Path(tempfile.mkdtemp(prefix="companion-rootfs-", dir="/var/tmp"))
    rootfs = tmp / "rootfs"
    try:
        started = time.monotonic()
        proc = subprocess.run(
            ["debootstrap", "--variant=minbase", SUITE, str(rootfs), mirror],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        _unmount_all(rootfs)
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.splitlines()[-20:])
            raise ImageBuildError(f"debootstrap failed ({proc.returncode}):\n{tail}")
        log.info("debootstrap took %.1fs", time.monotonic() - started)
        slim_rootfs(rootfs, mirror)
        started = time.monotonic()
        changes = [
            f"ENV PATH={PATH_ENV}",
            'CMD ["bash"]',
            f"LABEL {LABEL_STANDIN}=debootstrap {LABEL_MIRROR}={mirror}",
        ]
        tar = subprocess.Popen(
            ["tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-C", str(rootfs), "-c", "."],
            stdout=subprocess.PIPE,
        )
        assert tar.stdout is not None
        repo, _, tag = BASE_IMAGE.partition(":")
        try:
            client.api.import_image_from_stream(tar.stdout, repository=repo, tag=tag, changes=changes)
        finally:
            tar.stdout.close()
            if tar.wait() != 0:
                raise ImageBuildError(f"tar of {rootfs} failed ({tar.returncode})")
        log.info("docker import took %.1fs", time.monotonic() - started)
    finally:
        _unmount_all(rootfs)
        shutil.rmtree(tmp, ignore_errors=True)
    return client.images.get(BASE_IMAGE)


def ensure_base(client: docker.DockerClient, mirror: str | None = None) -> docker.models.images.Image:
    """The local ``debian:bookworm-slim``: existing, pulled, or debootstrapped."""
    return image_or_none(client, BASE_IMAGE) or try_pull(client, BASE_IMAGE) or build_base(client, mirror)


# --------------------------------------------------------------------------------------------------
# Dockerfile builds


def _context_files(context: Path, dockerfile: str = "Dockerfile") -> list[Path]:
    """The files Docker sends as the build context: all of them, or those ``.dockerignore`` keeps."""
    ignore = context / ".dockerignore"
    if not ignore.is_file():
        return [p for p in context.rglob("*") if p.is_file()]
    patterns = [line.strip() for line in ignore.read_text().splitlines()]
    patterns = [p for p in patterns if p and not p.startswith("#")]
    kept = docker.utils.build.exclude_paths(str(context), patterns, dockerfile=dockerfile)
    return [context / rel for rel in kept if (context / rel).is_file()]


def context_hash(context: Path, *extra: str, dockerfile: str = "Dockerfile") -> str:
    """sha256 over the build context's paths, exec bits and contents, plus ``extra`` strings."""
    digest = hashlib.sha256(f"schema {SCHEMA}\n".encode())
    if dockerfile != "Dockerfile":  # another image from the same context
        digest.update(f"dockerfile {dockerfile}\n".encode())
    for path in sorted(p for p in _context_files(context, dockerfile) if "__pycache__" not in p.parts):
        rel = path.relative_to(context).as_posix()
        executable = "x" if path.stat().st_mode & 0o111 else "-"  # not the rest: umask differs per checkout
        digest.update(f"{rel}\0{executable}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    for item in extra:
        digest.update(f"\0{item}".encode())
    return digest.hexdigest()


def build_network_mode(client: docker.DockerClient, mirror: str) -> str | None:
    """None when containers on the default bridge reach ``mirror`` (DNS and TCP), else ``"host"``."""
    forced = os.environ.get("E2E_BUILD_NETWORK")
    if forced:
        return forced
    url = urlsplit(mirror)
    host = url.hostname or "deb.debian.org"
    port = url.port or (443 if url.scheme == "https" else 80)
    probe = f"getent hosts {host} && timeout 10 bash -c 'exec 3<>/dev/tcp/{host}/{port}'"
    try:
        client.containers.run(BASE_IMAGE, ["bash", "-c", probe], remove=True, network_mode="bridge")
        log.info("containers on the default bridge reach %s:%s; builds use the default network", host, port)
        return None
    except DockerException as exc:
        log.warning(
            "bridge containers cannot reach %s:%s (%s); builds use network_mode=host",
            host,
            port,
            str(exc).splitlines()[0][:200],
        )
        return "host"


def build_image(
    client: docker.DockerClient,
    context: Path,
    ref: str,
    role: str,
    network_mode: Callable[[], str | None] = lambda: None,
    dockerfile: str = "Dockerfile",
    target: str | None = None,
) -> docker.models.images.Image:
    """Build ``context`` (with ``dockerfile``, up to stage ``target`` when given) as ``ref`` unless an image
    with the same context hash exists.

    ``network_mode`` is only asked when a build is needed (probing the network costs a container run).
    """
    base = client.images.get(BASE_IMAGE)
    digest = context_hash(context, base.id, *([f"target {target}"] if target else []), dockerfile=dockerfile)
    repo, _, tag = ref.partition(":")
    for image in client.images.list(filters={"label": f"{LABEL_HASH}={digest}"}):
        if ref not in image.tags:
            image.tag(repo, tag)
        log.info("%s is up to date (%s)", ref, image.short_id)
        return image
    log.info("building %s from %s", ref, context)
    started = time.monotonic()
    network = network_mode()
    if re.search(r"^FROM\s+\S+\s+AS\s+build\s*$", (context / dockerfile).read_text(), re.IGNORECASE | re.MULTILINE):
        # The `build` stage (apt, then the dependencies from pyproject.toml, then the package) tagged on its own,
        # so that it is not a dangling image `_remove_stale` removes: the next build after a code change reuses
        # its layers up to the package's and reinstalls no dependency.
        stage_ref = f"{BUILD_STAGE_REPO}:{dockerfile.lower().replace('.', '-')}"
        _build(client, context, role, dockerfile=dockerfile, tag=stage_ref, network_mode=network, target="build")
    _build(
        client, context, role, dockerfile=dockerfile, tag=ref, network_mode=network, target=target,
        labels={LABEL_HASH: digest, LABEL_STANDIN: role},
    )  # fmt: skip
    image = client.images.get(ref)
    log.info("built %s (%s) in %.1fs", ref, image.short_id, time.monotonic() - started)
    _remove_stale(client, role, image.id)
    return image


def _build(client: docker.DockerClient, context: Path, role: str, **build: object) -> None:
    """One classic-builder build; its output at DEBUG, its last 30 lines in the error when it fails."""
    output: list[str] = []
    stream = client.api.build(path=str(context), rm=True, forcerm=True, pull=False, decode=True, **build)
    for chunk in stream:
        if "stream" in chunk:
            for line in chunk["stream"].splitlines():
                output.append(line)
                log.debug("%s | %s", role, line)
        if "error" in chunk:
            tail = "\n".join(output[-30:])
            raise ImageBuildError(f"building {build['tag']} failed: {chunk['error'].strip()}\n{tail}")


def _remove_stale(client: docker.DockerClient, role: str, keep: str) -> None:
    """Remove untagged older stand-ins of ``role`` and the companion's left-over build stages."""
    stale = client.images.list(filters={"label": f"{LABEL_STANDIN}={role}", "dangling": True})
    stale += client.images.list(filters={"label": "io.companion.build-stage=true", "dangling": True})
    for image in stale:
        if image.id != keep:
            with contextlib.suppress(APIError):
                client.images.remove(image.id)


# --------------------------------------------------------------------------------------------------
# Entry points


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """Serialise concurrent runs on this host (e.g. pytest-xdist workers)."""
    with LOCK_FILE.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_images(client: docker.DockerClient) -> dict[str, str]:
    """Make sure the e2e images exist locally; return ``{"base"|"nginx"|"pebble": image reference}``."""
    with _lock():
        base = ensure_base(client)
        mirror = (base.labels or {}).get(LABEL_MIRROR) or detect_mirror()
        network: list[str | None] = []

        def net() -> str | None:
            if not network:
                network.append(build_network_mode(client, mirror))
            return network[0]

        nginx = image_or_none(client, NGINX_IMAGE)
        if nginx is not None and not is_standin(nginx):
            log.info("%s is a real image (%s); not replacing it", NGINX_IMAGE, nginx.short_id)
        elif nginx is not None or try_pull(client, NGINX_IMAGE) is None:
            build_image(client, HERE / "nginx", NGINX_IMAGE, "nginx", net)
        build_image(client, HERE / "pebble", PEBBLE_IMAGE, "pebble", net)
    return {"base": BASE_IMAGE, "nginx": NGINX_IMAGE, "pebble": PEBBLE_IMAGE}


def ensure_quickstart_images(client: docker.DockerClient) -> dict[str, str]:
    """ensure_images plus the companion image (top-level Dockerfile) and the quickstart's demo app.

    Both are built here with the classic builder under the tags the compose files use, so
    ``docker compose up --no-build`` finds them; a changed package or Dockerfile changes the context
    hash and triggers a rebuild, an unchanged one costs a hash of a few files.
    """
    refs = ensure_images(client)
    with _lock():
        network: list[str | None] = []
        mirror = (client.images.get(BASE_IMAGE).labels or {}).get(LABEL_MIRROR) or detect_mirror()

        def net() -> str | None:
            if not network:
                network.append(build_network_mode(client, mirror))
            return network[0]

        build_image(client, REPO, COMPANION_IMAGE, "companion", net)
        build_image(client, REPO / "examples/quickstart/demo", DEMO_IMAGE, "demo", net)
    return {**refs, "companion": COMPANION_IMAGE, "demo": DEMO_IMAGE}


def ensure_proxy_images(client: docker.DockerClient) -> dict[str, str]:
    """ensure_images plus the single-container image (``Dockerfile.proxy``), cached by its context hash."""
    refs = ensure_images(client)
    with _lock():
        mirror = (client.images.get(BASE_IMAGE).labels or {}).get(LABEL_MIRROR) or detect_mirror()
        build_image(client, REPO, PROXY_IMAGE, "proxy", lambda: build_network_mode(client, mirror), "Dockerfile.proxy")
    return {**refs, "proxy": PROXY_IMAGE}


def ensure_companion_image(client: docker.DockerClient) -> str:
    """The companion image (the top-level Dockerfile's last stage), as docker-compose.yml and docker-stack.yml
    name it."""
    ensure_base(client)
    with _lock():
        mirror = (client.images.get(BASE_IMAGE).labels or {}).get(LABEL_MIRROR) or detect_mirror()
        build_image(client, REPO, COMPANION_IMAGE, "companion", lambda: build_network_mode(client, mirror))
    return COMPANION_IMAGE


def ensure_agent_image(client: docker.DockerClient) -> str:
    """The Swarm agent image (the Dockerfile's ``agent`` stage: Debian's nginx under `companion agent`)."""
    ensure_base(client)
    with _lock():
        mirror = (client.images.get(BASE_IMAGE).labels or {}).get(LABEL_MIRROR) or detect_mirror()
        build_image(client, REPO, AGENT_IMAGE, "agent", lambda: build_network_mode(client, mirror), target="agent")
    return AGENT_IMAGE


def main(argv: list[str] | None = None) -> int:
    """Command line: build missing images and print their references as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="show build output")
    parser.add_argument("--no-pull", action="store_true", help="do not try the registry first")
    parser.add_argument(
        "--quickstart", action="store_true", help="also build the companion and demo images of the quickstart"
    )
    parser.add_argument("--agent", action="store_true", help="also build the Swarm agent image")
    parser.add_argument("--proxy", action="store_true", help="also build the single-container image (Dockerfile.proxy)")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(message)s", datefmt="%X"
    )
    if not args.verbose:
        logging.getLogger("urllib3").setLevel(logging.WARNING)
        logging.getLogger("docker").setLevel(logging.WARNING)
    if args.no_pull:
        os.environ["E2E_IMAGES_NO_PULL"] = "1"
    started = time.monotonic()
    client = docker_client()
    refs = ensure_quickstart_images(client) if args.quickstart else ensure_images(client)
    if args.agent:
        refs["agent"] = ensure_agent_image(client)
    if args.proxy:
        refs.update(ensure_proxy_images(client))
    for ref in refs.values():
        image = client.images.get(ref)
        log.info(
            "%-24s %s %6.1f MB%s",
            ref,
            image.short_id,
            image.attrs["Size"] / 1e6,
            " (stand-in)" if is_standin(image) else "",
        )
    log.info("done in %.1fs", time.monotonic() - started)
    json.dump(refs, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
