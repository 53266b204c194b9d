"""The seams between the reconcile loop and its edges: a Source of snapshots, an Applier of rendered files
(the local nginx or the cluster publisher), and the plain data that crosses them. Everything here is a type:
the loop depends on these, never on an edge's module."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from companion.core.container import ContainerInfo


@dataclass(frozen=True)
class ApplyResult:
    changed: tuple[str, ...]  # files written (and kept)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass(frozen=True)
class Snapshot:
    containers: tuple[ContainerInfo, ...]
    nginx: tuple[ContainerInfo, ...]  # the nginx container(s): by name, or by label and the shared conf dir
    own_networks: tuple[str, ...] = ()  # the companion's own networks when it runs in a container
    own: ContainerInfo | None = None  # the companion's own container, when it runs in one it can see
    # containers carrying the nginx label that do not qualify, with the reason; routed like any other
    impostors: tuple[tuple[ContainerInfo, str], ...] = ()
    # nginx's Swarm tasks (a service carrying the nginx label): their networks are nginx's too, but they are
    # reached by agents, not tested or signalled from here
    nginx_tasks: tuple[ContainerInfo, ...] = ()


class Source(Protocol):
    def snapshot(self) -> Snapshot: ...

    def watch(self, wake: Callable[[str], None], stop: threading.Event) -> threading.Thread: ...


class Applier(Protocol):
    def locate(self, nginx: Sequence[ContainerInfo]) -> None: ...

    def nginx_version(self) -> tuple[int, ...] | None: ...

    def apply(self, files: Mapping[str, str]) -> ApplyResult: ...
