"""What the Docker edge (or a Swarm service's task) tells the core about one container, as plain data: every
decision in the core starts from these facts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ContainerInfo:
    """What the Docker edge tells us about one running container, as plain data."""

    id: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    networks: Mapping[str, str] = field(default_factory=dict)  # network name -> IPv4 address
    gateways: Mapping[str, str] = field(default_factory=dict)  # network name -> its gateway, the host's address there
    network_mode: str = ""  # HostConfig.NetworkMode: "host" shares the host's network stack (no IP of its own)
    exposed_ports: tuple[str, ...] = ()  # ExposedPorts keys as Docker reports them: "80/tcp", "81", "53/udp"
    health: str = ""
    image_labels: frozenset[str] = frozenset()  # label keys whose value the image set, not the container
    image_env: frozenset[str] = frozenset()  # environment names whose value the image set
    mounts: tuple[tuple[str, str], ...] = ()  # (source on the Docker host, destination) per mount
    service: str = ""  # the Swarm service a task belongs to: who owns the task's hosts, across its tasks
