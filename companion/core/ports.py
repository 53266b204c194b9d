"""The seams between the reconcile loop and its edges: a Source of snapshots, an Applier of rendered files
(the local nginx or the cluster publisher), and the plain data that crosses them. Everything here is a type:
the loop depends on these, never on an edge's module."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from companion.core.container import ContainerInfo

REFUSED = "nginx rejected the new configuration: "  # how a refused `nginx -t` is worded


@dataclass(frozen=True)
class ApplyResult:
    """How one apply went, so the loop can log, count and retry it without knowing the applier.

    `refused` holds nginx's own words when `nginx -t` refused the files: only then are the files to blame
    (not a full disk, nor a failed reload), so the operator's files are tried one by one on it alone."""

    changed: tuple[str, ...]  # files written (and kept)
    error: str = ""
    refused: str = ""  # nginx -t's words when it refused the files ("" otherwise)

    @property
    def ok(self) -> bool:
        return not self.error

    @classmethod
    def refusal(cls, words: str) -> ApplyResult:
        """nginx -t refused the files: nothing was kept, and the error says so in nginx's words."""
        return cls(changed=(), error=REFUSED + words, refused=words)


@dataclass(frozen=True)
class Snapshot:
    """Everything one pass decides from, read at once, so a pass never mixes two moments of Docker's state."""

    containers: tuple[ContainerInfo, ...]
    nginx: tuple[ContainerInfo, ...]  # the nginx container(s): by name, or by label and the shared conf dir
    own_networks: tuple[str, ...] = ()  # the companion's own networks when it runs in a container
    own: ContainerInfo | None = None  # the companion's own container, when it runs in one it can see
    # containers carrying the nginx label that do not qualify, with the reason; routed like any other
    impostors: tuple[tuple[ContainerInfo, str], ...] = ()
    # nginx's Swarm tasks (a service carrying the nginx label): their networks are nginx's too, but they are
    # reached by agents, not tested or signalled from here
    nginx_tasks: tuple[ContainerInfo, ...] = ()


@dataclass(frozen=True)
class NodeView:
    """A Swarm node's agent as the controller last heard from it."""

    node: str
    address: str
    generation: str  # the generation its nginx serves ("" before the first)
    current: bool  # that is the controller's current generation
    error: str  # its last error ("" when its last apply succeeded)
    nginx_version: str
    last_seen: str
    up: bool  # heard from within the last LONG_POLL + 10 s


class Source(Protocol):
    """Where sites come from (Docker, or a Swarm manager's services too): the loop only ever asks for a whole
    snapshot, so a missed event costs a pass, never correctness."""

    def snapshot(self) -> Snapshot: ...

    def watch(self, wake: Callable[[str], None], stop: threading.Event) -> threading.Thread: ...


class Applier(Protocol):
    """How rendered files reach nginx: the local nginx (tested and reloaded here) or the agents on every Swarm
    node (published to them). Each says what differs between the two, so the loop never asks which it has."""

    nginx_here: bool  # nginx runs beside this process: it must be found, and backends are reached on its networks
    relay: str  # where nginx passes ACME tokens instead of reading the webroot ("" for the webroot)
    done: str  # how the log says the files now run ("nginx reloaded")

    def start(self) -> None:
        """Once, before the first pass: tidy what a killed process left behind."""

    def locate(self, nginx: Sequence[ContainerInfo]) -> None: ...

    def nginx_version(self) -> tuple[int, ...] | None: ...

    def apply(self, files: Mapping[str, str]) -> ApplyResult: ...

    def nodes(self) -> tuple[NodeView, ...]:
        """The Swarm nodes' agents as last heard from (none for the local nginx)."""
        ...

    def self_check_bases(self, local: str) -> str | list[str]:
        """Where HTTP-01 reaches nginx: `local` (as this process reaches it), or the nodes that are up."""
        ...
