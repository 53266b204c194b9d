"""Where nginx reaches a container (pure): which network and address, or why it cannot.

One place decides reachability; the plan records its answer and `explain` renders that record.
"""

from __future__ import annotations

from collections.abc import Sequence

from companion.core.container import ContainerInfo

LOOPBACK = "127.0.0.1"
HOST_NETWORK = "host"


def pick_address(info: ContainerInfo, nginx_networks: Sequence[str] | None, host_address: str = LOOPBACK) -> str | None:
    """The container's IP on a network shared with nginx, or its first IP when nginx runs on the host.

    A container on the host's network (`network_mode: host`) has no IP of its own: nginx reaches it at
    `host_address`, the host as nginx sees it ("" when nginx has no way to the host).
    """
    if info.network_mode == HOST_NETWORK:
        return host_address or None
    network = chosen_network(info, nginx_networks)
    return info.networks[network] if network else None


def chosen_network(info: ContainerInfo, nginx_networks: Sequence[str] | None) -> str | None:
    """The network pick_address takes the address from: the first by name that nginx shares (any, when
    nginx runs on the host); None when there is none (or the container is on the host's network)."""
    if info.network_mode == HOST_NETWORK:
        return None
    names = sorted(n for n, ip in info.networks.items() if ip)
    if nginx_networks is not None:
        names = [n for n in names if n in nginx_networks]
    return names[0] if names else None


def unreachable_reason(info: ContainerInfo, nginx_networks: Sequence[str] | None) -> str:
    """Why pick_address found no address, in the words the warning and `explain` both use."""
    if info.network_mode == HOST_NETWORK:
        return "on the host's network, and nginx is on no network with a gateway to the host"
    return f"no IP address on {'a network shared with nginx' if nginx_networks is not None else 'any network'}"


def host_address_from(nginx: Sequence[ContainerInfo]) -> str:
    """Where nginx in a container reaches the host: loopback when it shares the host's network, else the
    gateway of its first network by name (the host's address on that network); "" when it has none."""
    if any(info.network_mode == HOST_NETWORK for info in nginx):
        return LOOPBACK
    gateways = sorted((name, gateway) for info in nginx for name, gateway in info.gateways.items() if gateway)
    return gateways[0][1] if gateways else ""


def local_reach(own: ContainerInfo | None) -> tuple[tuple[str, ...] | None, str]:
    """(networks, host address) for an nginx that runs beside the companion (host mode).

    In a container (the single-container image) nginx shares the companion's networks: a backend is
    reached on one of those, never on a network the container is not on. On the host (no container of
    our own, or the host's network) nginx reaches every container: any network, the host on loopback."""
    if own is None or own.network_mode == HOST_NETWORK or not any(own.networks.values()):
        return None, LOOPBACK
    return tuple(sorted(n for n, ip in own.networks.items() if ip)), host_address_from((own,))
