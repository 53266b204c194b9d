"""Docker edge: snapshots of running containers, the event stream with reconnect, exec and signals.

The only Docker API calls the companion makes (README lists them for socket proxies):
GET /_ping, GET /version, GET /containers/json, GET /containers/{id}/json, GET /events,
POST /containers/{id}/exec + POST /exec/{id}/start + GET /exec/{id}/json (nginx -t, nginx -v),
POST /containers/{id}/kill?signal=SIGHUP (reload), GET /containers/{id}/top (wait for the reload).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import docker
import docker.errors
import docker.utils
import requests.exceptions

from .logsafe import printable
from .model import ContainerInfo

log = logging.getLogger(__name__)

NGINX_LABEL = "com.github.nginx-proxy.nginx"
RELOAD_WAIT = 5.0  # seconds to wait for nginx to start new workers after SIGHUP
WAKING_EVENTS = {
    "container": ["start", "stop", "die", "destroy", "health_status", "pause", "unpause"],
    "network": ["connect", "disconnect"],
}
DockerUnavailable = (docker.errors.DockerException, requests.exceptions.RequestException, OSError)


@dataclass(frozen=True)
class Snapshot:
    containers: tuple[ContainerInfo, ...]
    nginx: tuple[ContainerInfo, ...]  # the nginx container(s), found by label or name
    own_networks: tuple[str, ...] = ()  # the companion's own networks when it runs in a container


class DockerEdge:
    """Everything the companion asks of the Docker daemon, through docker-py's low-level client."""

    def __init__(self, nginx_name: str = "", timeout: int = 10) -> None:
        self.api = _client(timeout)
        self.nginx_name = nginx_name.lstrip("/")
        self._inspected: dict[str, tuple[dict[str, str], tuple[int, ...]]] = {}
        self.self_id = _own_container_id()

    def ping(self) -> None:
        self.api.ping()

    def snapshot(self) -> Snapshot:
        """List running containers afresh; env and exposed ports come from a per-id inspect cache."""
        listed = self.api.containers(filters={"status": "running"})
        seen = set()
        infos = []
        for item in listed:
            cid = item["Id"]
            seen.add(cid)
            if cid not in self._inspected:
                try:
                    self._inspected[cid] = _static_facts(self.api.inspect_container(cid))
                except docker.errors.NotFound:
                    continue
            env, ports = self._inspected[cid]
            infos.append(_info(item, env, ports))
        for gone in set(self._inspected) - seen:
            del self._inspected[gone]
        nginx = tuple(i for i in infos if self._is_nginx(i))
        own = [i for i in infos if self.self_id and i.id.startswith(self.self_id)]
        others = tuple(i for i in infos if i not in nginx and i not in own)
        return Snapshot(containers=others, nginx=nginx, own_networks=tuple(n for i in own for n in i.networks))

    def _is_nginx(self, info: ContainerInfo) -> bool:
        if self.nginx_name:
            return info.name == self.nginx_name or info.id.startswith(self.nginx_name)
        return NGINX_LABEL in info.labels

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

    def watch_events(self, wake: Callable[[str], None], stop: threading.Event) -> threading.Thread:
        """Start a daemon thread that wakes the loop on every relevant event and reconnects forever."""

        def run() -> None:
            delay = 0.2
            connected_before = False
            last_failure = ""
            while not stop.is_set():
                try:
                    stream = _client(timeout=None).events(decode=True, filters={"type": list(WAKING_EVENTS)})
                    if connected_before:
                        log.info("docker event stream reconnected")
                    # A reconnect may have missed events: a full pass makes up for them.
                    wake("events-connected")
                    connected_before, delay, last_failure = True, 0.2, ""
                    for event in stream:
                        if stop.is_set():
                            return
                        if event.get("Action", "").split(":")[0] in WAKING_EVENTS.get(event.get("Type", ""), ()):
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


def _client(timeout: int | None) -> docker.APIClient:
    """A low-level client for DOCKER_HOST (or the default socket), API version negotiated."""
    kwargs = docker.utils.kwargs_from_env()
    return docker.APIClient(version="auto", timeout=timeout, **kwargs)


def short_reason(exc: BaseException) -> str:
    """The first line of a Docker error, control characters escaped (it may quote a daemon or proxy's words)."""
    return printable(str(exc).splitlines()[0][:200]) if str(exc) else type(exc).__name__


def _static_facts(inspect: dict) -> tuple[dict[str, str], tuple[int, ...]]:
    """Environment and exposed TCP ports: fixed for a container's lifetime, so cached by id."""
    config = inspect.get("Config") or {}
    env = {}
    for entry in config.get("Env") or []:
        key, sep, value = entry.partition("=")
        if sep:
            env[key] = value
    ports = sorted(int(spec.split("/")[0]) for spec in (config.get("ExposedPorts") or {}) if spec.endswith("/tcp"))
    return env, tuple(ports)


def _info(item: dict, env: dict[str, str], ports: tuple[int, ...]) -> ContainerInfo:
    networks = {
        name: net.get("IPAddress") or ""
        for name, net in ((item.get("NetworkSettings") or {}).get("Networks") or {}).items()
    }
    status = item.get("Status") or ""
    health = "unhealthy" if "(unhealthy)" in status else ("starting" if "health: starting" in status else "")
    return ContainerInfo(
        id=item["Id"],
        name=(item.get("Names") or ["/" + item["Id"][:12]])[0].lstrip("/"),
        labels=item.get("Labels") or {},
        env=env,
        networks=networks,
        exposed_ports=ports,
        health=health,
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
