"""The plan's record of what it decided per container and per host, and why (pure).

Warnings, `explain`, the status report and metrics render these records; none of them re-derives a
decision, so what they say cannot drift from what the service does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from companion.core.certplan import CertWhy
from companion.core.container import ContainerInfo
from companion.core.model import Policy, Rejection, Site, VariableSource, ignored_from_image, variable_sources
from companion.core.multiports import parse_sites
from companion.core.problems import Problem
from companion.core.reach import chosen_network, pick_address, unreachable_reason
from companion.core.variables import container_problems

UNHEALTHY = "unhealthy, left out until its health check passes"


@dataclass(frozen=True)
class ContainerDecision:
    """One container: what it asks (parsed), whether it is routed, where nginx reaches it or why not."""

    name: str
    parsed: tuple[Site, ...] | Rejection | None  # None: it asks for nothing
    variables: tuple[VariableSource, ...] = ()  # each value it carries, where from, whether it counts
    unhealthy: bool = False
    address: str | None = None  # None: not routed, or unreachable
    network: str | None = None  # the network the address is on (None on the host's network)
    unreachable: str = ""  # why a routed container has no address
    problems: tuple[str, ...] = ()  # the warnings about it, in the order they are logged

    @property
    def ignored(self) -> tuple[str, ...]:
        """Variables its image sets that do not count (and that it does not set itself)."""
        return ignored_from_image(self.variables)

    @property
    def sites(self) -> tuple[Site, ...]:
        return self.parsed if isinstance(self.parsed, tuple) else ()

    @property
    def routed(self) -> bool:
        """It claims its hosts: parsed and healthy (reachable or not: unreachable paths answer 502)."""
        return bool(self.sites) and not self.unhealthy

    @property
    def left_out(self) -> str:
        """Why it routes nothing, "" when it routes (or asks for nothing)."""
        if isinstance(self.parsed, Rejection):
            return self.parsed.message.removeprefix(f"container {self.name}: ")
        return UNHEALTHY if self.sites and self.unhealthy else ""


@dataclass(frozen=True)
class HostDecision:
    """One host: who decides its settings and why, whose variables lost, which certificate and why."""

    host: str
    owner: str
    why: str  # why `owner` decides (see owners.why_decides)
    overruled: tuple[tuple[str, str, tuple[str, ...]], ...]  # (container, path, variables that lost)
    certificate: str  # the lineage presented, "" for none or a stand-in
    cert_why: CertWhy


def decide_container(
    info: ContainerInfo, policy: Policy, nginx_networks: Sequence[str] | None, host_address: str
) -> ContainerDecision:
    """Parse one container, then (when it routes) find where nginx reaches it; every warning on the way."""
    variables = variable_sources(info, policy.image_trust)
    ignored = ignored_from_image(variables)
    problems = [_ignored_problem(info.name, ignored)] if ignored else []
    problems.extend(container_problems(info))
    parsed = parse_sites(info, policy)
    if isinstance(parsed, Rejection):
        problems.append(Problem(parsed.message, container=info.name, variable=parsed.variable))
    if not isinstance(parsed, tuple):
        return ContainerDecision(info.name, parsed, variables, problems=tuple(problems))
    if info.health == "unhealthy":
        problems.append(Problem(f"container {info.name}: {UNHEALTHY}", container=info.name))
        return ContainerDecision(info.name, parsed, variables, unhealthy=True, problems=tuple(problems))
    address = pick_address(info, nginx_networks, host_address)
    why = "" if address is not None else unreachable_reason(info, nginx_networks)
    if why:
        problems.append(
            Problem(
                f"container {info.name}: not reachable ({why}); its paths answer 502 without another backend",
                container=info.name,
            )
        )
    network = chosen_network(info, nginx_networks)
    return ContainerDecision(info.name, parsed, variables, False, address, network, why, tuple(problems))


def _ignored_problem(name: str, ignored: Sequence[str]) -> Problem:
    return Problem(
        f"container {name}: ignoring values its image sets ({', '.join(ignored)}); "
        f"set them on the container, or TRUST_IMAGE_LABELS=all",
        container=name,
    )
