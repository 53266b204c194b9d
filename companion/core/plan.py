"""Desired state: from validated sites to server blocks, upstreams and certificate requests (pure).

Conflict rule (documented in README): when several containers claim the same host, the container
that already decided for the host keeps deciding (remembered by name, see `owners`), else the one
whose name sorts first; it decides the host's settings (HTTPS_METHOD, HSTS, certificate) and, per
path, VIRTUAL_PROTO and VIRTUAL_DEST; every container still joins the upstream as a backend. A
warning names the containers whose settings were overruled.

`build` runs in stages: each container is decided (core/decisions), then each host (its owner, see
core/owners; its routes; its certificate, see core/certplan), then upstreams are numbered. Every stage's
decision is kept in the returned record, which the reports render.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

from companion.core.certificates import CertFiles
from companion.core.certplan import CertChoice, CertWhy, cert_index, requests, select_cert
from companion.core.container import ContainerInfo
from companion.core.decisions import ContainerDecision, HostDecision, decide_container
from companion.core.model import DEFAULT_POLICY, CertRequest, Policy, Site, covers
from companion.core.owners import conflict_warnings, overruled, why_decides
from companion.core.problems import Problem
from companion.core.reach import LOOPBACK
from companion.core.values import HttpsMethod, NetworkAccess, Proto, Tuning
from companion.util.logsafe import printable

Backends = tuple[tuple[tuple[str, int], ...], bool]  # (sorted (address, port) pairs, keepalive)
_Claim = tuple[Site, str | None]  # a site and the address nginx reaches its container at (None: unreachable)


@dataclass(frozen=True)
class Upstream:
    """One per distinct backend set, shared by every host and path routed to exactly those backends."""

    name: str
    servers: tuple[tuple[str, int], ...]
    keepalive: bool = True  # idle connections to the backends kept open; off if any says VIRTUAL_KEEPALIVE=off


@dataclass(frozen=True)
class Location:
    path: str
    upstream: str  # "" when no container of the path is reachable: it answers 502 (nginx refuses an empty upstream)
    proto: Proto
    dest: str
    internal: bool = False  # NETWORK_ACCESS=internal: private source addresses only
    keepalive: bool = True  # its upstream's: without keepalive, requests say `Connection: close` as before
    tuning: Tuning = Tuning()  # PROXY_* of the path's deciding container
    # (container, address, port) of every claim, for the status report only (address "" when unreachable)
    backends: tuple[tuple[str, str, int], ...] = field(default=(), compare=False)


class HttpAnswer(StrEnum):
    """What a host's plain-HTTP server answers outside the ACME challenge (which is always served)."""

    PROXY = "proxy"  # its locations, as over HTTPS
    REDIRECT = "redirect"  # to the same URL over HTTPS
    UNAVAILABLE = "unavailable"  # 503: HTTPS_METHOD=nohttp, or held until the certificate exists
    REFUSED = "refused"  # 403: it requires a client certificate and has no HTTPS server to send the client to


@dataclass(frozen=True)
class Server:
    host: str
    https_method: HttpsMethod
    hsts: str
    locations: tuple[Location, ...]
    cert: CertFiles | None
    placeholder: bool
    default: bool = False  # DEFAULT_HOST: answers names no server knows
    hold_http: bool = False  # ENABLE_HTTP_ON_MISSING_CERT=false: HTTP answers 503 until a real certificate exists
    # A client CA guards the host (see `require_client_certs`): plain HTTP, where no certificate can be
    # asked for, never reaches its app.
    client_cert: bool = False

    @property
    def redirect(self) -> bool:
        """HTTP answers with a redirect only once a real certificate is served: when HTTPS_METHOD=redirect,
        and whatever it says for a host that requires a client certificate."""
        real = self.cert is not None and not self.placeholder
        return real and (self.https_method is HttpsMethod.REDIRECT or self.client_cert)

    @property
    def http(self) -> HttpAnswer:
        """The one place that decides what plain HTTP answers; the template only renders it."""
        if self.redirect:
            return HttpAnswer.REDIRECT
        if self.client_cert:
            return HttpAnswer.REFUSED
        if self.https_method is HttpsMethod.NOHTTP or self.hold_http:
            return HttpAnswer.UNAVAILABLE
        return HttpAnswer.PROXY

    @property
    def has_root(self) -> bool:
        """True when a container answers `/`. Otherwise the server renders `location / { return 404; }`:
        without it nginx answered every other path from its own default root (html/ under its prefix)."""
        return any(location.path == "/" for location in self.locations)

    @property
    def serves_http(self) -> bool:
        return self.https_method is not HttpsMethod.NOHTTP or self.cert is None or self.placeholder

    @property
    def default_http(self) -> bool:
        return self.default and self.serves_http

    @property
    def default_https(self) -> bool:
        """Only with a real certificate: a placeholder would answer unknown names no better than a refused handshake."""
        return self.default and self.cert is not None and not self.placeholder


@dataclass(frozen=True)
class Desired:
    servers: tuple[Server, ...]
    upstreams: tuple[Upstream, ...]
    certificates: tuple[CertRequest, ...]
    problems: tuple[str, ...] = field(default=())
    owners: tuple[tuple[str, str], ...] = ()  # (host, container that decides for it), sorted
    default_cert: CertFiles | None = None  # the operator's, for unknown names on the HTTPS default server
    left_out: tuple[tuple[str, str], ...] = ()  # (container, why) for containers that route nothing
    # The decision records, by container name and by host, that reports render (see core/decisions).
    containers: tuple[ContainerDecision, ...] = field(default=(), compare=False)
    hosts: tuple[HostDecision, ...] = field(default=(), compare=False)

    @property
    def longest_name(self) -> int:
        return max((len(s.host) for s in self.servers), default=1)

    @property
    def default_http_taken(self) -> bool:
        """True when DEFAULT_HOST's server is HTTP's default_server (nginx allows one per port)."""
        return any(s.default_http for s in self.servers)

    @property
    def default_https_taken(self) -> bool:
        return any(s.default_https for s in self.servers)


UPSTREAM_PREFIX = "companion_u"


def upstream_names(sets: Iterable[Backends]) -> dict[Backends, str]:
    """`companion_u1`, `companion_u2`, ... for the distinct backend sets in sorted order.

    A name depends only on typed addresses, ports and a flag, never on a host or path a label wrote, so
    no label can produce another route's name; the same world always numbers the same way. Short,
    shared names keep nginx's linear lookup of upstream names cheap (it is quadratic in their count).
    """
    return {key: f"{UPSTREAM_PREFIX}{number}" for number, key in enumerate(sorted(set(sets)), 1)}


def build(
    containers: Sequence[ContainerInfo],
    certs: Mapping[str, CertFiles],
    placeholder: CertFiles,
    *,
    nginx_networks: Sequence[str] | None = None,
    policy: Policy = DEFAULT_POLICY,
    owners: Mapping[str, str] | None = None,
    host_address: str = LOOPBACK,
    default_host: str = "",
    http_on_missing_cert: bool = True,
    default_cert: CertFiles | None = None,
    now: float = 0.0,
) -> Desired:
    """Compute the whole desired state from a snapshot of containers and the certificates on disk.

    `certs` are the usable lineages by name; `owners` the containers that decided for each host
    before (by name), so that a newcomer cannot take over a host's settings. A container nginx cannot
    reach still claims its hosts (they answer 502, not another site or nginx's 503); `host_address` is
    where nginx reaches containers on the host's network. `default_cert`, when the operator configured
    one, stands in for the placeholder: the one certificate that may be presented for names it does not
    cover, because the operator chose it for exactly that. `now` (unix time) lets a valid certificate win
    over an expired one that covers the host too (0: every certificate counts as valid).
    """
    decided = tuple(
        decide_container(info, policy, nginx_networks, host_address)
        for info in sorted(containers, key=lambda c: (c.name, c.id))
    )
    located = [(site, decision.address) for decision in decided if decision.routed for site in decision.sites]
    context = _CertContext(certs, cert_index(certs), placeholder, default_cert, http_on_missing_cert, now)
    planned = _plan_hosts(located, owners or {}, context)
    problems = _problems(decided, planned, default_host)
    ordered = requests([site for site, _ in located], certs, problems)
    return _desired(decided, planned, ordered, problems, default_host, default_cert)


def _plan_hosts(located: list[_Claim], owners: Mapping[str, str], context: _CertContext) -> list[_HostPlan]:
    return [_plan_host(host, claims, owners.get(host), context) for host, claims in _by_host(located).items()]


def _problems(decided: Sequence[ContainerDecision], planned: Sequence[_HostPlan], default_host: str) -> list[str]:
    """The warnings in the order they are logged: per container, per host, then DEFAULT_HOST's."""
    problems = [problem for decision in decided for problem in decision.problems]
    problems += [problem for host_plan in planned for problem in host_plan.problems]
    if default_host and all(host_plan.decision.host != default_host for host_plan in planned):
        problems.append(f"DEFAULT_HOST={default_host}: no container serves this host; unknown names answer 503")
    return problems


def _desired(
    decided: tuple[ContainerDecision, ...],
    planned: Sequence[_HostPlan],
    ordered: Mapping[str, CertRequest],
    problems: Sequence[str],
    default_host: str,
    default_cert: CertFiles | None,
) -> Desired:
    """Number the upstreams and assemble the desired state with its decision records."""
    names = upstream_names(route.backends for route in _routes(planned) if route.backends)
    return Desired(
        servers=tuple(_server(host_plan, names, default_host) for host_plan in planned),
        upstreams=tuple(Upstream(name, servers, keepalive) for (servers, keepalive), name in names.items()),
        certificates=tuple(ordered[k] for k in sorted(ordered)),
        problems=tuple(problems),
        owners=tuple((host_plan.decision.host, host_plan.decision.owner) for host_plan in planned),
        default_cert=default_cert,
        left_out=tuple((decision.name, decision.left_out) for decision in decided if decision.left_out),
        containers=decided,
        hosts=tuple(host_plan.decision for host_plan in planned),
    )


def require_client_certs(desired: Desired, guarded: Mapping[str, str]) -> Desired:
    """`desired` with plain HTTP closed to the apps of the hosts in `guarded` (host -> the operator's file
    that asks for a client certificate): only HTTPS can ask for one, so such a host redirects to HTTPS once
    it serves a real certificate and answers 403 until then (the ACME challenge stays served).

    Where that overrides what the deciding container asked for (HTTPS_METHOD=noredirect or nohttps, or no
    certificate at all), a warning names the container, the variable and the file."""
    if not guarded:
        return desired
    owners = dict(desired.owners)
    problems: list[str] = []
    servers = []
    for server in desired.servers:
        source = guarded.get(server.host)
        if source is None:
            servers.append(server)
            continue
        servers.append(dataclasses.replace(server, client_cert=True))
        container, host = owners.get(server.host, ""), server.host
        why = f"{host} requires a client certificate ({source}), which only HTTPS can ask for"
        if server.https_method is HttpsMethod.NOREDIRECT:
            variable, said = "HTTPS_METHOD", f"HTTPS_METHOD=noredirect overruled: {why}; plain HTTP redirects to HTTPS"
            said += " (403 until its certificate is served)"
        elif server.https_method is HttpsMethod.NOHTTPS:
            variable, said = "HTTPS_METHOD", f"HTTPS_METHOD=nohttps: {why}; plain HTTP answers 403"
        elif server.cert is None:
            variable = "LETSENCRYPT_HOST"
            said = f"{why}, and it has no certificate and asks for none (LETSENCRYPT_HOST); plain HTTP answers 403"
        else:
            continue
        problems.append(Problem(printable(f"container {container}: {said}"), container=container, variable=variable))
    return dataclasses.replace(desired, servers=tuple(servers), problems=(*desired.problems, *problems))


class _Route(NamedTuple):
    """One path of a host before upstreams are numbered: the deciding site, its backend set, every claim."""

    site: Site
    backends: Backends | None  # None: no claim is reachable
    claimed: tuple[tuple[str, str, int], ...]


def _routes(planned: Sequence[_HostPlan]) -> Iterator[_Route]:
    for host_plan in planned:
        yield from host_plan.routes


class _CertContext(NamedTuple):
    """What choosing a host's certificate needs besides the host and its owner."""

    certs: Mapping[str, CertFiles]
    index: Mapping[str, list[tuple[str, CertFiles]]]
    placeholder: CertFiles
    default_cert: CertFiles | None
    http_on_missing_cert: bool
    now: float


class _HostPlan(NamedTuple):
    """One host before upstreams are numbered: its decision, owner's site, certificate, routes, warnings."""

    decision: HostDecision
    owner: Site
    cert: CertChoice
    hold_http: bool
    routes: list[_Route]
    problems: list[str]


def _plan_host(host: str, claims: list[_Claim], before: str | None, context: _CertContext) -> _HostPlan:
    """Decide one host: its owner (the one that decided before, else first by name), routes and certificate."""
    claims.sort(key=lambda claim: claim[0].container != before)  # stable: otherwise by name
    owner = claims[0][0]
    why = why_decides(owner.container, before)
    sites = [site for site, _ in claims]
    problems = conflict_warnings(host, sites, why)
    routes = [_route(path_claims) for path_claims in _by_path(claims).values()]
    cert = _choose_cert(host, owner, context, problems)
    hold = not context.http_on_missing_cert and owner.https_method in (HttpsMethod.REDIRECT, HttpsMethod.NOHTTP)
    decision = HostDecision(host, owner.container, why, overruled(sites), cert.lineage, cert.why)
    return _HostPlan(decision, owner, cert, hold and cert.why in _NO_CERT, routes, problems)


_NO_CERT = (CertWhy.PLACEHOLDER, CertWhy.NONE)


def _choose_cert(host: str, owner: Site, context: _CertContext, problems: list[str]) -> CertChoice:
    """The certificate the host presents: none for nohttps, a lineage that covers it, the operator's default
    when it covers it, else a stand-in when it asks for one (the operator's default, else the placeholder)."""
    if owner.https_method is HttpsMethod.NOHTTPS:
        return CertChoice(None, "", CertWhy.NOHTTPS)
    chosen = select_cert(host, owner, context.certs, context.index, problems, context.now)
    if chosen is not None:
        return chosen
    default = context.default_cert
    if default is not None and covers(default.domains, host):
        return CertChoice(default, "", CertWhy.DEFAULT)
    if owner.cert is not None or owner.cert_name:
        return CertChoice(default or context.placeholder, "", CertWhy.PLACEHOLDER)
    return CertChoice(None, "", CertWhy.NONE)


def _route(path_claims: list[_Claim]) -> _Route:
    """One path: every reachable claim joins its backend set; keepalive only if all of those keep it."""
    backends = {(address, site.port) for site, address in path_claims if address}
    keepalive = all(site.keepalive for site, address in path_claims if address)
    key = (tuple(sorted(backends)), keepalive) if backends else None
    claimed = tuple(sorted((site.container, address or "", site.port) for site, address in path_claims))
    return _Route(path_claims[0][0], key, claimed)


def _server(host_plan: _HostPlan, names: Mapping[Backends, str], default_host: str) -> Server:
    owner, host = host_plan.owner, host_plan.decision.host
    return Server(
        host,
        owner.https_method,
        owner.hsts,
        _locations(host_plan.routes, names),
        host_plan.cert.files,
        host_plan.cert.why is CertWhy.PLACEHOLDER,
        host == default_host,
        host_plan.hold_http,
    )


def _locations(routes: list[_Route], names: Mapping[Backends, str]) -> tuple[Location, ...]:
    located = (
        Location(
            route.site.path,
            names[route.backends] if route.backends else "",
            route.site.proto,
            route.site.dest,
            route.site.network_access is NetworkAccess.INTERNAL,
            route.backends[1] if route.backends else True,
            route.site.tuning,
            route.claimed,
        )
        for route in routes
    )
    return tuple(sorted(located, key=lambda location: location.path))


def _by_host(located: list[_Claim]) -> dict[str, list[_Claim]]:
    grouped: dict[str, list[_Claim]] = {}
    for site, address in located:
        for host in site.hosts:
            grouped.setdefault(host, []).append((site, address))
    return dict(sorted(grouped.items()))


def _by_path(claims: list[_Claim]) -> dict[str, list[_Claim]]:
    grouped: dict[str, list[_Claim]] = {}
    for site, address in claims:
        grouped.setdefault(site.path, []).append((site, address))
    return grouped
