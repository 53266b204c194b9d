"""Swarm services as a source of sites: on a manager, every running task of every service is one entry,
routed at the task's own address on an overlay network it shares with nginx.

Why task addresses, not the service's virtual IP: nginx then balances and retries by itself, only tasks
Swarm reports running are listed (a task whose health check has not passed yet is still "starting"), and
it works where the kernel has no IPVS (the VIP and the ingress mesh need it).

Where the variables come from, in rising precedence: the container spec's environment, the container
spec's labels, the service's labels (`deploy.labels` in a stack file), so labels win over environment as
for containers, and a stack file's `deploy.labels` have the last word. All three are written by whoever
deployed the service. What the image sets (`ENV`, `LABEL`, `EXPOSE`) is not read: the manager cannot
inspect the image of a task placed on another node, and a value that counts on one node and not on the
next is worse than one rule, so VIRTUAL_PORT defaults to 80 unless the service sets it.

A task's hosts belong to its service (`ContainerInfo.service`): a rolling update or a scale change
replaces tasks without the service losing the hosts it decided for.

Swarm sends no event when a task on another node starts or stops, so besides service and node events
a poller lists the tasks (one GET /tasks) every POLL_EVERY seconds (POLL_SETTLING while one is on its
way to running) and wakes the loop when the set of running tasks or their addresses changed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping

import docker.errors

from companion.core.container import ContainerInfo
from companion.core.ports import Snapshot
from companion.core.trust import NGINX_LABEL
from companion.sources.daemon import WAKING_EVENTS, DockerEdge, DockerUnavailable, api_client, env_dict

log = logging.getLogger(__name__)

POLL_EVERY = 0.5  # seconds between task listings on a manager
# While a task is on its way to running (pending, preparing, starting), list faster, for a while: a new
# task is then routed about as soon as it runs; a task that never gets healthy does not keep it up.
POLL_SETTLING, SETTLING_FOR = 0.1, 30.0
TASK_LABEL = "com.docker.swarm.task.id"  # on a task's container: the task, listed through its service instead
SWARM_EVENTS = {
    **WAKING_EVENTS,
    "service": ["create", "update", "remove"],
    "node": ["create", "update", "remove"],
}


def is_manager(info: Mapping) -> bool:
    """True when the daemon answering GET /info can list services (a Swarm manager)."""
    return bool((info.get("Swarm") or {}).get("ControlAvailable"))


def task_entries(
    services: Iterable[Mapping], tasks: Iterable[Mapping], own_container: str = ""
) -> tuple[tuple[ContainerInfo, ...], tuple[ContainerInfo, ...]]:
    """(tasks to route, nginx's tasks) from GET /services and GET /tasks (pure).

    Only tasks Swarm wants running and reports running count; tasks of a service carrying the nginx
    label are nginx's, and the companion's own task (its container id) is neither."""
    by_id = {service.get("ID"): service for service in services}
    routed, nginx = [], []
    for task in tasks:
        status = task.get("Status") or {}
        if task.get("DesiredState") != "running" or status.get("State") != "running":
            continue
        service = by_id.get(task.get("ServiceID"))
        if service is None:
            continue  # removed between the two calls
        container_id = (status.get("ContainerStatus") or {}).get("ContainerID") or ""
        if own_container and container_id.startswith(own_container):
            continue
        entry = _entry(service, task)
        (nginx if NGINX_LABEL in entry.labels else routed).append(entry)
    key = lambda info: (info.name, info.id)  # noqa: E731
    return tuple(sorted(routed, key=key)), tuple(sorted(nginx, key=key))


def _entry(service: Mapping, task: Mapping) -> ContainerInfo:
    spec = service.get("Spec") or {}
    name = spec.get("Name") or str(service.get("ID", ""))[:12]
    # The task's own spec: during a rolling update old and new tasks differ, each is what it runs.
    container = (task.get("Spec") or {}).get("ContainerSpec") or {}
    labels = {**(container.get("Labels") or {}), **(spec.get("Labels") or {})}
    slot = task.get("Slot") or str(task.get("NodeID", ""))[:12]  # a global service's tasks have no slot
    return ContainerInfo(
        id=str(task.get("ID", "")),
        name=f"{name}.{slot}",
        labels=labels,
        env=env_dict(container.get("Env")),
        networks=task_addresses(task),
        mounts=tuple((m.get("Source") or "", m.get("Target") or "") for m in container.get("Mounts") or []),
        service=name,
    )


def task_addresses(task: Mapping) -> dict[str, str]:
    """Network name -> the task's IPv4 address there (Swarm writes "10.0.1.5/24")."""
    found = {}
    for attachment in task.get("NetworksAttachments") or []:
        network = ((attachment.get("Network") or {}).get("Spec") or {}).get("Name")
        addresses = [a.split("/")[0] for a in attachment.get("Addresses") or [] if "." in a]
        if network and addresses:
            found[network] = addresses[0]
    return found


def fingerprint(tasks: Iterable[Mapping]) -> str:
    """What the poller compares: the running tasks and their addresses (not timestamps or versions)."""
    seen = sorted(
        (str(t.get("ID")), (t.get("Status") or {}).get("State", ""), sorted(task_addresses(t).items()))
        for t in tasks
        if t.get("DesiredState") == "running"
    )
    return hashlib.sha256(json.dumps(seen).encode()).hexdigest()


class SwarmSource:
    """A Source (companion/loop/reconcile.py): the daemon's containers, and on a Swarm manager its services'
    running tasks beside them. On a daemon that is not a manager it is the container source unchanged."""

    def __init__(self, edge: DockerEdge) -> None:
        self.edge = edge
        self.manager = False

    def snapshot(self) -> Snapshot:
        base = self.edge.snapshot()
        self.manager = self._is_manager()
        if not self.manager:
            return base
        services = self.edge.api.services()
        tasks = self.edge.api.tasks(filters={"desired-state": "running"})
        routed, nginx_tasks = task_entries(services, tasks, self.edge.self_id)
        plain = tuple(info for info in base.containers if TASK_LABEL not in info.labels)
        return dataclasses.replace(base, containers=plain + routed, nginx_tasks=nginx_tasks)

    def _is_manager(self) -> bool:
        try:
            return is_manager(self.edge.api.info())
        except docker.errors.APIError as exc:  # e.g. a socket proxy that denies /info: containers only
            log.debug("GET /info refused (%s); not reading Swarm services", exc)
            return False

    def watch(self, wake: Callable[[str], None], stop: threading.Event) -> threading.Thread:
        thread = self.edge.watch(wake, stop, SWARM_EVENTS)
        threading.Thread(target=self._poll, args=(wake, stop), name="swarm-tasks", daemon=True).start()
        return thread

    def _poll(self, wake: Callable[[str], None], stop: threading.Event) -> None:
        """Wake the loop when the running tasks change (Swarm sends no event for tasks on other nodes)."""
        client = None
        last, changed_at, settling = "", 0.0, False
        while not stop.wait(POLL_SETTLING if settling and time.monotonic() - changed_at < SETTLING_FOR else POLL_EVERY):
            if not self.manager:
                continue
            try:
                client = client or api_client(timeout=10)
                tasks = client.tasks(filters={"desired-state": "running"})
            except DockerUnavailable as exc:
                log.debug("listing tasks failed: %s", exc)
                client = None
                continue
            now = fingerprint(tasks)
            settling = any((t.get("Status") or {}).get("State") != "running" for t in tasks)
            if now != last:
                if last:
                    wake("swarm:tasks")
                last, changed_at = now, time.monotonic()
