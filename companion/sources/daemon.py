"""Docker edge: snapshots of running containers, the event stream with reconnect, exec and signals.

The only Docker API calls the companion makes (README lists them for socket proxies):
GET /_ping, GET /version, GET /containers/json, GET /containers/{id}/json, GET /images/{id}/json, GET /events,
POST /containers/{id}/exec + POST /exec/{id}/start + GET /exec/{id}/json (nginx -t, nginx -v),
POST /containers/{id}/kill?signal=SIGHUP (reload), GET /containers/{id}/top (wait for the reload);
on a Swarm manager also GET /info, GET /services and GET /tasks (companion/sources/swarm.py).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import docker
import docker.errors
import docker.utils
import requests.exceptions

from companion.core import trust
from companion.core.container import ContainerInfo
from companion.core.ports import Snapshot
from companion.core.trust import NGINX_LABEL, ImageTrust
from companion.util.logsafe import printable

log = logging.getLogger(__name__)

RELOAD_WAIT = 5.0  # seconds to wait for nginx to start new workers after SIGHUP
WAKING_EVENTS = {
    "container": ["start", "stop", "die", "destroy", "health_status", "pause", "unpause"],
    "network": ["connect", "disconnect"],
}
DockerUnavailable = (docker.errors.DockerException, requests.exceptions.RequestException, OSError)


@dataclass(frozen=True)
class _Facts:
    """What inspecting a container tells us once for its lifetime."""

    env: dict[str, str]
    ports: tuple[str, ...]
    image_labels: frozenset[str]
    image_env: frozenset[str]


class DockerEdge:
    """Everything the companion asks of the Docker daemon, through docker-py's low-level client."""

    def __init__(
        self,
        nginx_name: str = "",
        conf_dir: str = "/etc/nginx/conf.d",
        image_trust: ImageTrust = ImageTrust.ROUTING,
        timeout: int = 10,
    ) -> None:
        self.api = api_client(timeout)
        self.nginx_name = nginx_name.lstrip("/")
        self.conf_dir = conf_dir
        self.image_trust = image_trust
        self._inspected: dict[str, _Facts] = {}
        self._images: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
        self.self_id = _own_container_id()

    def ping(self) -> None:
        self.api.ping()

    def snapshot(self) -> Snapshot:
        """List running containers afresh; env, exposed ports and what came from the image are cached
        per container id (fixed for its lifetime), image configs per image id."""
        listed = self.api.containers(filters={"status": "running"})
        seen = set()
        infos = []
        for item in listed:
            cid = item["Id"]
            seen.add(cid)
            if cid not in self._inspected:
                try:
                    self._inspected[cid] = self._facts(self.api.inspect_container(cid))
                except docker.errors.NotFound:
                    continue
            infos.append(_info(item, self._inspected[cid]))
        for gone in set(self._inspected) - seen:
            del self._inspected[gone]
        used = {item.get("ImageID") for item in listed}
        for image in set(self._images) - used:
            del self._images[image]
        own = next((i for i in infos if self.self_id and i.id.startswith(self.self_id)), None)
        nginx, impostors = self._nginx_among([i for i in infos if i is not own], own)
        others = tuple(i for i in infos if i is not own and i not in nginx)
        return Snapshot(
            containers=others,
            nginx=nginx,
            own_networks=tuple(own.networks) if own else (),
            own=own,
            impostors=impostors,
        )

    def _nginx_among(
        self, infos: list[ContainerInfo], own: ContainerInfo | None
    ) -> tuple[tuple[ContainerInfo, ...], tuple[tuple[ContainerInfo, str], ...]]:
        """nginx is the container NGINX_PROXY_CONTAINER names, else every container that carries the label
        and mounts our conf dir; labelled containers that do not qualify come back with the reason."""
        if self.nginx_name:
            named = tuple(i for i in infos if i.name == self.nginx_name or i.id.startswith(self.nginx_name))
            return named, ()
        if self.self_id and own is None:
            source = None  # we run in a container we cannot see: no mount to compare with
        else:
            source = trust.conf_dir_source(self.conf_dir if own else os.path.realpath(self.conf_dir), own)
        nginx, impostors = [], []
        for info in infos:
            if NGINX_LABEL not in info.labels:
                continue
            reason = trust.nginx_verdict(info, source, self.image_trust)
            if reason:
                impostors.append((info, reason))
            else:
                nginx.append(info)
        return tuple(nginx), tuple(impostors)

    def _facts(self, inspect: dict) -> _Facts:
        """Environment, exposed ports, and which labels and variables the image set rather than the container."""
        config = inspect.get("Config") or {}
        env = env_dict(config.get("Env"))
        image_labels: dict[str, str] = {}
        image_env: dict[str, str] = {}
        image_id = inspect.get("Image") or ""
        if image_id:
            if image_id not in self._images:
                try:
                    image_config = self.api.inspect_image(image_id).get("Config") or {}
                except docker.errors.NotFound:
                    image_config = {}  # the image is gone (rmi -f): nothing can be told apart
                self._images[image_id] = (image_config.get("Labels") or {}, env_dict(image_config.get("Env")))
            image_labels, image_env = self._images[image_id]
        labels = config.get("Labels") or {}
        return _Facts(
            env=env,
            ports=tuple(sorted(config.get("ExposedPorts") or {})),
            # The same value on container and image is the image's: the container did not change it.
            image_labels=frozenset(k for k, v in labels.items() if image_labels.get(k) == v),
            image_env=frozenset(k for k, v in env.items() if image_env.get(k) == v),
        )

    def exec(self, container_id: str, cmd: list[str]) -> tuple[int, str]:
        """Run a command in a container; return its exit code and combined output."""
        exec_id = self.api.exec_create(container_id, cmd, stdout=True, stderr=True)["Id"]
        output = self.api.exec_start(exec_id).decode(errors="replace")
        code = self.api.exec_inspect(exec_id)["ExitCode"]
        return int(code if code is not None else 1), output

    def signal(self, container_id: str, sig: str = "SIGHUP") -> None:
        """Send ``sig``; for SIGHUP (nginx reload) also wait until nginx runs the new configuration.

        nginx handles SIGHUP asynchronously: it reads the files, starts new workers, then tells the
        old ones to stop accepting. Returning before that let the ACME self-check, run right after
        the first apply, reach an old worker (HTTP 404) and back a fresh install's first order off
        for minutes. The wait ends when only new workers accept (the old ones are gone or titled
        "worker process is shutting down", per GET /containers/{id}/top), or after RELOAD_WAIT
        seconds; without `top` (e.g. a socket proxy that denies it) it is skipped.
        """
        before = self._workers(container_id) if sig == "SIGHUP" else None
        self.api.kill(container_id, signal=sig)
        if not before:
            return
        deadline = time.monotonic() + RELOAD_WAIT
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = self._workers(container_id)
            if now is None or (now and not now & before):  # only new workers accept connections
                return
        log.warning("nginx in %s still runs its old workers %.0fs after SIGHUP", container_id[:12], RELOAD_WAIT)

    def _workers(self, container_id: str) -> set[str] | None:
        """PIDs of nginx's accepting workers in the container, or None when they cannot be listed."""
        try:
            top = self.api.top(container_id)
        except DockerUnavailable:
            return None
        try:
            column = top["Titles"].index("CMD")
        except (KeyError, ValueError):
            return None
        pid = top["Titles"].index("PID") if "PID" in top["Titles"] else 1
        return {row[pid] for row in top.get("Processes") or [] if row[column].strip() == "nginx: worker process"}

    def watch(
        self, wake: Callable[[str], None], stop: threading.Event, events: Mapping[str, list[str]] = WAKING_EVENTS
    ) -> threading.Thread:
        """Start a daemon thread that wakes the loop on every event of `events` (type -> actions) and
        reconnects forever."""

        def run() -> None:
            delay = 0.2
            connected_before = False
            last_failure = ""
            while not stop.is_set():
                try:
                    stream = api_client(timeout=None).events(decode=True, filters={"type": list(events)})
                    if connected_before:
                        log.info("docker event stream reconnected")
                    # A reconnect may have missed events: a full pass makes up for them.
                    wake("events-connected")
                    connected_before, delay, last_failure = True, 0.2, ""
                    for event in stream:
                        if stop.is_set():
                            return
                        if event.get("Action", "").split(":")[0] in events.get(event.get("Type", ""), ()):
                            wake(f"{event.get('Type')}:{event.get('Action')}")
                    log.warning("docker event stream ended; reconnecting")
                except DockerUnavailable as exc:
                    # Once per outage (and per new reason), not every second while the daemon is away.
                    reason = short_reason(exc)
                    level = logging.DEBUG if reason == last_failure else logging.WARNING
                    log.log(level, "docker event stream unavailable (%s); retrying", reason)
                    last_failure = reason
                stop.wait(delay)
                # Capped low: a container started right after the daemon returns must be routed quickly.
                delay = min(delay * 2, 1.0)

        thread = threading.Thread(target=run, name="docker-events", daemon=True)
        thread.start()
        return thread


def api_client(timeout: int | None) -> docker.APIClient:
    """A low-level client for DOCKER_HOST (or the default socket), API version negotiated."""
    kwargs = docker.utils.kwargs_from_env()
    return docker.APIClient(version="auto", timeout=timeout, **kwargs)


def short_reason(exc: BaseException) -> str:
    """The first line of a Docker error, control characters escaped (it may quote a daemon or proxy's words)."""
    return printable(str(exc).splitlines()[0][:200]) if str(exc) else type(exc).__name__


def env_dict(entries: list[str] | None) -> dict[str, str]:
    env = {}
    for entry in entries or []:
        key, sep, value = entry.partition("=")
        if sep:
            env[key] = value
    return env


def _info(item: dict, facts: _Facts) -> ContainerInfo:
    attached = ((item.get("NetworkSettings") or {}).get("Networks") or {}).items()
    networks = {name: net.get("IPAddress") or "" for name, net in attached}
    gateways = {name: net.get("Gateway") or "" for name, net in attached if net.get("Gateway")}
    status = item.get("Status") or ""
    health = "unhealthy" if "(unhealthy)" in status else ("starting" if "health: starting" in status else "")
    return ContainerInfo(
        id=item["Id"],
        name=(item.get("Names") or ["/" + item["Id"][:12]])[0].lstrip("/"),
        labels=item.get("Labels") or {},
        env=facts.env,
        networks=networks,
        gateways=gateways,
        network_mode=(item.get("HostConfig") or {}).get("NetworkMode") or "",
        exposed_ports=facts.ports,
        health=health,
        image_labels=facts.image_labels,
        image_env=facts.image_env,
        mounts=tuple((m.get("Source") or "", m.get("Destination") or "") for m in item.get("Mounts") or []),
    )


def _own_container_id() -> str:
    """Our own container id when we run in Docker (so we never route to ourselves), else ''."""
    try:
        with open("/proc/self/mountinfo") as handle:
            for line in handle:
                if "/containers/" in line and "/hostname" in line:
                    return line.split("/containers/")[1].split("/")[0]
    except OSError:
        pass
    return ""


def wait_for_daemon(edge_factory: Callable[[], DockerEdge], stop: threading.Event) -> DockerEdge | None:
    """Retry until the daemon answers, logging the reason once per distinct failure."""
    delay, last = 0.5, ""
    while not stop.is_set():
        try:
            edge = edge_factory()
            edge.ping()
            return edge
        except DockerUnavailable as exc:
            reason = short_reason(exc)
            if reason != last:
                # docker-py's reason ("No such file or directory") does not say where it looked.
                address = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
                log.error("cannot reach the Docker daemon at %s (%s); retrying", address, reason)
                last = reason
        stop.wait(delay)
        delay = min(delay * 2, 2.0)
    return None
