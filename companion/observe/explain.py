"""`companion explain NAME`: why a container or a host is served or left out, in plain words (pure).

The explanation renders the decision record plan.build returns for the same inputs a pass decides from
(`Inputs`): it re-derives no decision, so it cannot drift from what the service does. Every value from
outside (labels, environment, a CA's words) is escaped before it becomes a line.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from companion.acme.policy import CertState, describe
from companion.core.certplan import CertWhy
from companion.core.container import ContainerInfo
from companion.core.decisions import ContainerDecision, HostDecision
from companion.core.inputs import Inputs
from companion.core.model import MULTIPORTS, Rejection, Site, VariableUse
from companion.core.multiports import parse_multiports
from companion.core.values import Challenge, InvalidValue, parse_hostname
from companion.observe.status import NodeView
from companion.util.logsafe import printable

SOURCE = "computed from a fresh snapshot; the service was not asked"
_HOST_VARIABLES = ("VIRTUAL_HOST", "LETSENCRYPT_HOST", "ACME_HOST")


class Verdict(StrEnum):
    SERVED = "served"
    LEFT_OUT = "left out"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Explanation:
    """What `explain` found: the lines to show (escaped) and the verdict with its one-line reason."""

    subject: str
    verdict: Verdict
    reason: str
    lines: tuple[str, ...] = ()

    @property
    def exit_code(self) -> int:
        return {Verdict.SERVED: 0, Verdict.LEFT_OUT: 1, Verdict.UNKNOWN: 2}[self.verdict]

    def text(self) -> str:
        return "\n".join((*self.lines, f"verdict: {self.verdict.value}: {self.reason}")) + "\n"


def _made(subject: str, verdict: Verdict, reason: str, lines: Sequence[str]) -> Explanation:
    """The one place an Explanation is made: every line escaped, whatever went into it."""
    return Explanation(printable(subject), verdict, printable(reason), tuple(printable(line) for line in lines))


def quoted(value: str) -> str:
    shown = value if len(value) <= 80 else value[:80] + "..."
    return '"' + printable(shown) + '"'


def explain(name: str, inputs: Inputs, acme_state: Mapping[str, CertState]) -> Explanation:
    """Explain a container (by name or id prefix) or else a host name; UNKNOWN when it is neither."""
    wanted = name.strip().lstrip("/")
    matches = [info for info in inputs.containers if info.name == wanted]
    if not matches and wanted:
        matches = [info for info in inputs.containers if info.id.startswith(wanted.lower())]
    if len(matches) > 1:
        names = ", ".join(sorted(info.name for info in matches))
        return _made(name, Verdict.UNKNOWN, f"{quoted(wanted)} starts the id of several containers ({names})", ())
    world = _World(inputs, acme_state)
    if matches:
        return world.container(matches[0])
    tasks = sorted((info for info in inputs.containers if info.service and info.service == wanted), key=_task_order)
    if tasks:
        # Every task of a Swarm service carries the service's variables: its first task stands for them all.
        found = world.container(tasks[0])
        names = ", ".join(info.name for info in tasks)
        said = f"Swarm service {wanted}: {len(tasks)} running task(s) ({names}); as its task {tasks[0].name}:"
        return dataclasses.replace(found, lines=(printable(said), *found.lines))
    try:
        host = parse_hostname(wanted)
    except InvalidValue:
        host = ""
    found = world.host(host) if host else None
    if found is None:
        return _made(name, Verdict.UNKNOWN, f"no running container and no host is named {quoted(wanted)}", ())
    return found


def _task_order(info: ContainerInfo) -> tuple[int, str]:
    """Tasks are named `<service>.<slot>`: slot 2 before slot 10."""
    slot = info.name.rpartition(".")[2]
    return (int(slot) if slot.isdigit() else 0, info.name)


class _World:
    """One desired state and its decision records, shared by the questions about it."""

    def __init__(self, inputs: Inputs, acme_state: Mapping[str, CertState]) -> None:
        self.inputs = inputs
        self.acme_state = acme_state
        self.desired = inputs.desired()
        self.servers = {server.host: server for server in self.desired.servers}
        self.decisions = {decision.name: decision for decision in self.desired.containers}
        self.hosts = {decision.host: decision for decision in self.desired.hosts}

    # -- a container ------------------------------------------------------------------------------

    def container(self, info: ContainerInfo) -> Explanation:
        lines = [f"container {info.name} (id {info.id[:12]})"]
        decision = self.decisions[info.name]
        lines += self._variables(decision)
        sites = decision.parsed
        hosts = sorted({host for site in decision.sites for host in site.hosts})
        reported = self._reported(decision, hosts)
        if sites is None:
            return _made(info.name, Verdict.LEFT_OUT, self._asks_nothing(decision), lines + reported)
        if isinstance(sites, Rejection):
            return _made(info.name, Verdict.LEFT_OUT, sites.message, lines + reported)
        lines += _parsed(sites)
        if decision.unhealthy:
            why = "its health check reports unhealthy; left out until it passes"
            return _made(info.name, Verdict.LEFT_OUT, why, lines + reported)
        lines.append(self._network(info, decision))
        for site in sites:
            for host in site.hosts:
                lines += self._host_role(info, site, self.hosts[host])
        lines += reported
        if decision.address is None:
            why = f"not reachable ({decision.unreachable}); its paths answer 502"
            return _made(info.name, Verdict.LEFT_OUT, why, lines)
        routes = ", ".join(f"{host}{site.path}" for site in sites for host in site.hosts)
        return _made(info.name, Verdict.SERVED, f"{routes} (port {sites[0].port})", lines)

    def _variables(self, decision: ContainerDecision) -> list[str]:
        """Each variable the companion reads, where it came from and whether it counts (labels win)."""
        image_trust = self.inputs.policy.image_trust.value
        verdicts = {
            VariableUse.IMAGE_NOT_TRUSTED: f"ignored: TRUST_IMAGE_LABELS={image_trust} does not let an image set it",
            VariableUse.LABEL_WINS: "not used: the label wins",
        }
        lines = []
        for variable in decision.variables:
            origin = "from its image" if variable.from_image else "set on the container"
            verdict = verdicts.get(variable.use) or "counts" + (
                f" (TRUST_IMAGE_LABELS={image_trust} lets an image set it)" if variable.from_image else ""
            )
            lines.append(f"  {variable.name}={quoted(variable.value)}: {variable.source}, {origin}; {verdict}")
        if not lines:
            return ["variables: none of the companion's variables is set"]
        return ["variables (label or environment; a label wins):", *lines]

    def _asks_nothing(self, decision: ContainerDecision) -> str:
        ignored = [name for name in decision.ignored if name in (*_HOST_VARIABLES, MULTIPORTS)]
        if ignored:
            return (
                f"its image sets {', '.join(ignored)}, which TRUST_IMAGE_LABELS="
                f"{self.inputs.policy.image_trust.value} ignores; it sets no VIRTUAL_HOST itself"
            )
        return "it sets no VIRTUAL_HOST or VIRTUAL_HOST_MULTIPORTS: the companion does not route it"

    def _network(self, info: ContainerInfo, decision: ContainerDecision) -> str:
        address, chosen = decision.address, decision.network
        if address is None:
            return f"network: none ({decision.unreachable})"
        if chosen is None:
            return f"network: the host's (network_mode: host); nginx reaches it at {address}"
        how = (
            "the first by name that nginx shares"
            if self.inputs.nginx_networks is not None
            else "nginx runs on the host: the first by name"
        )
        others = sorted(set(info.networks) - {chosen})
        also = f"; also on {', '.join(others)}" if others else ""
        return f"network: {chosen}, address {address} ({how}){also}"

    def _host_role(self, info: ContainerInfo, site: Site, decided: HostDecision) -> list[str]:
        host, owner, why = decided.host, decided.owner, decided.why
        partners = sorted(
            other.name
            for other in self.decisions.values()
            if other.name != info.name and any(host in s.hosts and s.path == site.path for s in other.sites)
        )
        shared = f"; load-balanced with {', '.join(partners)}" if partners else ""
        if owner == info.name:
            lines = [f"host {host}{site.path}: this container decides the host's settings ({why}){shared}"]
        else:
            differs = next(
                (lost for name, path, lost in decided.overruled if (name, path) == (site.container, site.path)), ()
            )
            lost = f"its {', '.join(differs)} lost" if differs else "they agree"
            lines = [f"host {host}{site.path}: {owner} decides the host's settings ({why}); {lost}{shared}"]
        lines.append(f"  certificate for {host}: {self._presented(decided)}")
        if owner == info.name or site.cert is not None:
            lines.append(f"  certificate order: {self._order(site)}")
        return lines

    def _presented(self, decided: HostDecision) -> str:
        """Which certificate nginx presents for the host, and why that one, as the plan recorded it."""
        lineage, host = decided.certificate, decided.host
        said = {
            CertWhy.NOHTTPS: "none: HTTPS_METHOD=nohttps",
            CertWhy.NONE: "none: no certificate covers it and it asks for none "
            "(ACME_HOST/LETSENCRYPT_HOST or CERT_NAME)",
            CertWhy.DEFAULT: "the operator's default certificate (default.crt), which covers it",
            CertWhy.CERT_NAME: "its CERT_NAME",
            CertWhy.NAMED: "the freshest certificate naming the host",
            CertWhy.WILDCARD: f"a wildcard certificate (*.{host.partition('.')[2]})",
        }
        if decided.cert_why is CertWhy.PLACEHOLDER:
            stand_in = "the operator's default certificate" if self.inputs.default_cert else "a self-signed placeholder"
            return f"none issued yet; {stand_in} stands in"
        if not lineage:
            return said[decided.cert_why]
        return f"lineage {lineage} ({said[decided.cert_why]}); {self._state(lineage)}"

    def _order(self, site: Site) -> str:
        if site.cert is None:
            return "none (no ACME_HOST/LETSENCRYPT_HOST)"
        ordered = [
            request
            for request in self.desired.certificates
            if (request.domains, request.email, request.server)
            == (site.cert.domains, site.cert.email, site.cert.server)
        ]
        names = ", ".join(site.cert.domains)
        if not ordered:
            return f"nothing ordered for {names} (see the warnings)"
        name = ordered[0].name
        over = " over DNS-01" if site.cert.challenge is Challenge.DNS01 else ""
        return f"lineage {name} for {names}{over}; {self._state(name)}"

    def _state(self, lineage: str) -> str:
        status = self.inputs.statuses.get(lineage)
        shown = describe(status, self.acme_state.get(lineage, CertState()))
        if shown == "valid" and status is not None and status.not_after is not None:
            shown += f" until {status.not_after:%Y-%m-%d %H:%M} UTC"
        if status is None and shown == "placeholder":
            shown = "not issued yet"
        return shown

    def _reported(self, decision: ContainerDecision, hosts: Sequence[str]) -> list[str]:
        """What the service logs about the container and its hosts (unsupported and misspelled variables,
        image values ignored, rejections, conflicts), word for word."""
        prefixes = (f"container {decision.name}: ", *(f"host {host}: " for host in hosts))
        found = [p for p in self.desired.problems if p.startswith(prefixes)]
        found += [p for p in decision.problems if p not in found]
        return ["the service reports:", *(f"  {line}" for line in found)] if found else []

    # -- a host -----------------------------------------------------------------------------------

    def host(self, host: str) -> Explanation | None:
        server = self.servers.get(host)
        refused = [(info, why) for info in self.inputs.containers if (why := self._refused_for(info, host))]
        if server is None and not refused:
            return None
        lines = [f"host {host}"]
        if server is not None:
            decided = self.hosts[host]
            lines.append(
                f"settings decided by {decided.owner} ({decided.why}): HTTPS_METHOD={server.https_method.value}, "
                f"HSTS={server.hsts or 'off'}"
            )
            for location in server.locations:
                lines.append(f"path {location.path}: {self._backends(host, location.path)}")
            lines.append(f"certificate: {self._presented(decided)}")
        lines += [f"container {info.name} claims it but is left out: {why}" for info, why in refused]
        problems = [p for p in self.desired.problems if p.startswith(f"host {host}: ")]
        lines += ["the service reports:", *(f"  {p}" for p in problems)] if problems else []
        reachable = server is not None and any(location.upstream for location in server.locations)
        if reachable:
            return _made(host, Verdict.SERVED, f"by {', '.join(self._serving(host))}", lines)
        if server is not None:
            return _made(host, Verdict.LEFT_OUT, "no container of the host is reachable; it answers 502", lines)
        return _made(host, Verdict.LEFT_OUT, "; ".join(why for _, why in refused), lines)

    def _serving(self, host: str) -> list[str]:
        return sorted(
            decision.name
            for decision in self.decisions.values()
            if decision.routed and decision.address and any(host in site.hosts for site in decision.sites)
        )

    def _backends(self, host: str, path: str) -> str:
        found = []
        for name in sorted(self.decisions):
            decision = self.decisions[name]
            for site in decision.sites if decision.routed else ():
                if host in site.hosts and site.path == path:
                    address = decision.address
                    where = f"{address}:{site.port}" if address else "unreachable: answers 502 unless another serves"
                    found.append(f"{name} ({where})")
        return ", ".join(found)

    def _refused_for(self, info: ContainerInfo, host: str) -> str:
        """Why a container that names `host` is not among its backends, or '' (it serves, or names it not)."""
        decision = self.decisions[info.name]
        parsed = decision.parsed
        if isinstance(parsed, tuple):
            claims = any(host in site.hosts for site in parsed)
            return "its health check reports unhealthy" if claims and decision.unhealthy else ""
        if isinstance(parsed, Rejection) and host in _named_hosts(decision):
            return parsed.message
        return ""


def _named_hosts(decision: ContainerDecision) -> set[str]:
    """The host names a container's values mention, read leniently (for a container that was refused)."""
    values = {variable.name: variable.value for variable in decision.variables if variable.use is VariableUse.COUNTS}
    names: set[str] = set()
    for variable in _HOST_VARIABLES:
        for part in values.get(variable, "").split(","):
            try:
                names.add(parse_hostname(part))
            except InvalidValue:
                names.add(part.strip().lower())
    if MULTIPORTS in values:
        with contextlib.suppress(InvalidValue):
            names.update(route.host for route in parse_multiports(values[MULTIPORTS]))
    return names


def _parsed(sites: tuple[Site, ...]) -> list[str]:
    first = sites[0]
    settings = (
        f"parsed: HTTPS_METHOD={first.https_method.value}, HSTS={first.hsts or 'off'}, "
        f"NETWORK_ACCESS={first.network_access.value}"
    )
    if first.cert_name:
        settings += f", CERT_NAME={first.cert_name}"
    tuning = first.tuning
    for name, value in (
        ("PROXY_MAX_BODY_SIZE", tuning.max_body_size),
        ("PROXY_READ_TIMEOUT", tuning.read_timeout),
        ("PROXY_SEND_TIMEOUT", tuning.send_timeout),
        ("PROXY_CONNECT_TIMEOUT", tuning.connect_timeout),
        ("PROXY_BUFFERING", None if tuning.buffering is None else "on" if tuning.buffering else "off"),
        ("PROXY_ALLOW_FROM", ",".join(tuning.allow_from) or None),
    ):
        if value is not None:
            settings += f", {name}={value}"
    if first.cert is not None:
        server = first.cert.server or "the companion's CA"
        settings += f", certificate for {', '.join(first.cert.domains)} from {server}"
        settings += f" (account email {first.cert.email})" if first.cert.email else " (no account email)"
    routes = [
        f"  route {host}{site.path} -> {site.proto.value} port {site.port}"
        + (f", path upstream {site.dest}" if site.dest else "")
        for site in sites
        for host in site.hosts
    ]
    return [settings, *routes]


def with_nodes(found: Explanation, nodes: Sequence[NodeView]) -> Explanation:
    """Swarm: what each node's agent serves, since a site is served on a node only once its agent applied it."""
    if not nodes:
        return found
    lines = ["nodes (Swarm agents; a node serves what its generation holds):"]
    for node in nodes:
        state = "current" if node.current else "behind"
        line = f"  {node.node} at {node.address or '?'}: generation {node.generation or 'none'} ({state})"
        line += "" if node.up else f", away since {node.last_seen}"
        lines.append(line + (f"; last error: {node.error}" if node.error else ""))
    return _made(found.subject, found.verdict, found.reason, (*found.lines, *lines))
