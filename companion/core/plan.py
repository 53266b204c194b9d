"""Desired state: from validated sites to server blocks, upstreams and certificate requests (pure).

Conflict rule (documented in README): when several containers claim the same host, the container
that already decided for the host keeps deciding (remembered by name, see `owners`), else the one
whose name sorts first; it decides the host's settings (HTTPS_METHOD, HSTS, certificate) and, per
path, VIRTUAL_PROTO and VIRTUAL_DEST; every container still joins the upstream as a backend. A
warning names the containers whose settings were overruled.

Certificates belong to names: a lineage is presented only for hosts its names cover, and an order
never rewrites a lineage that holds names the request does not (it gets a lineage of its own).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

from companion.core.certificates import CertFiles
from companion.core.container import ContainerInfo
from companion.core.model import (
    DEFAULT_POLICY,
    TUNING_VARIABLES,
    CertRequest,
    Policy,
    Rejection,
    Site,
    covers,
    ignored_from_image,
)
from companion.core.multiports import parse_sites
from companion.core.problems import Problem
from companion.core.values import HttpsMethod, NetworkAccess, Proto, Tuning
from companion.core.variables import container_problems
from companion.util.logsafe import printable

Backends = tuple[tuple[tuple[str, int], ...], bool]  # (sorted (address, port) pairs, keepalive)


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


LOOPBACK = "127.0.0.1"
HOST_NETWORK = "host"


def lineage_digest(domains: Sequence[str]) -> str:
    return hashlib.sha256(",".join(sorted(domains)).encode()).hexdigest()[:8]


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


SERVED_FIRST, FIRST_BY_NAME = "it served the host first", "first by name"


def why_decides(container: str, before: str | None) -> str:
    """Why `container` decides a host's settings: it decided before (remembered), else its name sorts first."""
    return SERVED_FIRST if container == before else FIRST_BY_NAME


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
    problems: list[str] = []
    left_out: list[tuple[str, str]] = []
    located: list[tuple[Site, str | None]] = []
    for info in sorted(containers, key=lambda c: (c.name, c.id)):
        ignored = ignored_from_image(info, policy.image_trust)
        if ignored:
            problems.append(
                Problem(
                    f"container {info.name}: ignoring values its image sets ({', '.join(ignored)}); "
                    f"set them on the container, or TRUST_IMAGE_LABELS=all",
                    container=info.name,
                )
            )
        problems.extend(container_problems(info))
        sites = parse_sites(info, policy)
        if sites is None:
            continue
        if isinstance(sites, Rejection):
            problems.append(Problem(sites.message, container=info.name, variable=sites.variable))
            left_out.append((info.name, sites.message.removeprefix(f"container {info.name}: ")))
            continue
        if info.health == "unhealthy":
            unhealthy = "unhealthy, left out until its health check passes"
            problems.append(Problem(f"container {info.name}: {unhealthy}", container=info.name))
            left_out.append((info.name, unhealthy))
            continue
        address = pick_address(info, nginx_networks, host_address)
        if address is None:
            problems.append(
                Problem(
                    f"container {info.name}: not reachable ({unreachable_reason(info, nginx_networks)}); "
                    "its paths answer 502 without another backend",
                    container=info.name,
                )
            )
        located.extend((site, address) for site in sites)

    # per host: its deciding site, the certificate served, placeholder, HTTP held, and its routes
    planned: list[tuple[str, Site, CertFiles | None, bool, bool, list[_Route]]] = []
    index = _cert_index(certs)
    decided: dict[str, str] = {}
    for host, claims in _by_host(located).items():
        before = (owners or {}).get(host)
        claims.sort(key=lambda claim: claim[0].container != before)  # stable: otherwise by name
        owner = claims[0][0]
        decided[host] = owner.container
        why = why_decides(owner.container, before)
        _warn_conflicts(host, claims, problems, why)
        routes = []
        for path_claims in _by_path(claims).values():
            backends: set[tuple[str, int]] = set()
            keepalive = True
            for site, address in path_claims:
                if address:
                    backends.add((address, site.port))
                    keepalive = keepalive and site.keepalive
            key = (tuple(sorted(backends)), keepalive) if backends else None
            claimed = tuple(sorted((site.container, address or "", site.port) for site, address in path_claims))
            routes.append(_Route(path_claims[0][0], key, claimed))
        cert = None
        if owner.https_method is not HttpsMethod.NOHTTPS:
            cert = _select_cert(host, owner, certs, index, problems, now)
            if cert is None and default_cert is not None and covers(default_cert.domains, host):
                cert = default_cert
        wants_tls = owner.cert is not None or bool(owner.cert_name)
        is_placeholder = cert is None and wants_tls and owner.https_method is not HttpsMethod.NOHTTPS
        hold = not http_on_missing_cert and owner.https_method in (HttpsMethod.REDIRECT, HttpsMethod.NOHTTP)
        served = (default_cert or placeholder) if is_placeholder else cert
        planned.append((host, owner, served, is_placeholder, hold and cert is None, routes))
    names = upstream_names(route.backends for *_, routes in planned for route in routes if route.backends)
    servers = [
        Server(
            host,
            owner.https_method,
            owner.hsts,
            _locations(routes, names),
            cert,
            placeholder_,
            host == default_host,
            hold,
        )
        for host, owner, cert, placeholder_, hold, routes in planned
    ]
    if default_host and default_host not in decided:
        problems.append(f"DEFAULT_HOST={default_host}: no container serves this host; unknown names answer 503")
    requests = _requests([site for site, _ in located], certs, problems)
    return Desired(
        servers=tuple(servers),
        upstreams=tuple(Upstream(name, servers, keepalive) for (servers, keepalive), name in names.items()),
        certificates=tuple(requests[k] for k in sorted(requests)),
        problems=tuple(problems),
        owners=tuple(sorted(decided.items())),
        default_cert=default_cert,
        left_out=tuple(left_out),
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


def _cert_index(certs: Mapping[str, CertFiles]) -> dict[str, list[CertFiles]]:
    """Lineages by each name they hold, the freshest first, so choosing one per host costs a lookup."""
    index: dict[str, list[CertFiles]] = {}
    for name in sorted(certs):
        for domain in certs[name].domains:
            index.setdefault(domain, []).append(certs[name])
    for found in index.values():
        found.sort(key=lambda files: -files.not_after)
    return index


def _select_cert(
    host: str,
    site: Site,
    certs: Mapping[str, CertFiles],
    index: Mapping[str, list[CertFiles]],
    problems: list[str],
    now: float = 0.0,
) -> CertFiles | None:
    """CERT_NAME's lineage when it covers the host, else the most specific valid certificate: the freshest
    lineage naming the host, else the freshest covering wildcard; an expired one only when no valid one
    covers the host. Never a certificate that is not valid for the host. (nginx-proxy also serves a
    parent's certificate, `example.com` for `a.example.com`; clients refuse it, so it is not chosen.)"""
    if site.cert_name and site.cert_name in certs:
        named = certs[site.cert_name]
        if covers(named.domains, host):
            return named
        problems.append(
            Problem(
                f"container {site.container}: CERT_NAME={site.cert_name}: certificate {site.cert_name} "
                f"does not cover {host}; not presented for it",
                container=site.container,
                variable="CERT_NAME",
                certificate=site.cert_name,
            )
        )
    found = list(index.get(host, ()))
    if not host.startswith("*.") and "." in host:
        found += index.get("*." + host.split(".", 1)[1], ())
    valid = [files for files in found if files.not_after > now]
    return (valid or found or [None])[0]


def _requests(sites: list[Site], certs: Mapping[str, CertFiles], problems: list[str]) -> dict[str, CertRequest]:
    """Certificate orders by lineage name. A request takes its own name (CERT_NAME or its first host)
    unless that lineage holds names the request lacks, or another request took it: then
    `<name>-<digest of its names>`. Requests named after one of their own hosts choose first."""
    wanted = sorted(
        ((site, site.cert) for site in sites if site.cert is not None),
        key=lambda pair: pair[1].name not in pair[1].domains,
    )
    requests: dict[str, CertRequest] = {}
    for site, request in wanted:
        for name in (request.name, f"{request.name}-{lineage_digest(request.domains)}"):
            taken = requests.get(name)
            held = certs.get(name)
            if taken is not None and taken.domains == request.domains:
                break
            if taken is None and (held is None or set(held.domains) <= set(request.domains)):
                requests[name] = dataclasses.replace(request, name=name)
                break
        else:
            problems.append(
                f"container {site.container}: certificate {request.name} holds other names and "
                f"{request.name}-{lineage_digest(request.domains)} is taken; nothing ordered for "
                f"{', '.join(request.domains)}"
            )
    return requests


def _by_host(located: list[tuple[Site, str | None]]) -> dict[str, list[tuple[Site, str | None]]]:
    grouped: dict[str, list[tuple[Site, str | None]]] = {}
    for site, address in located:
        for host in site.hosts:
            grouped.setdefault(host, []).append((site, address))
    return dict(sorted(grouped.items()))


def _by_path(claims: list[tuple[Site, str | None]]) -> dict[str, list[tuple[Site, str | None]]]:
    grouped: dict[str, list[tuple[Site, str | None]]] = {}
    for site, address in claims:
        grouped.setdefault(site.path, []).append((site, address))
    return grouped


def _warn_conflicts(host: str, claims: list[tuple[Site, str | None]], problems: list[str], why: str) -> None:
    owner = claims[0][0]
    for site, _ in claims[1:]:
        differs = disagreements(owner, site)
        if differs:
            problems.append(
                f"host {host}: containers {owner.container} and {site.container} disagree on "
                f"{', '.join(differs)}; using {owner.container}'s ({why})"
            )


_TUNING_FIELDS = tuple(f.name for f in dataclasses.fields(Tuning))


def disagreements(owner: Site, site: Site) -> list[str]:
    """The variables on which `site` differs from the host's deciding site (per path: proto, dest, access, PROXY_*)."""
    pairs = [
        ("HTTPS_METHOD", owner.https_method, site.https_method),
        ("HSTS", owner.hsts, site.hsts),
        ("CERT_NAME", owner.cert_name, site.cert_name),
        ("LETSENCRYPT_HOST", owner.cert, site.cert),
    ]
    if site.path == owner.path:
        pairs += [
            ("VIRTUAL_PROTO", owner.proto, site.proto),
            ("VIRTUAL_DEST", owner.dest, site.dest),
            ("NETWORK_ACCESS", owner.network_access, site.network_access),
            *(
                (name, getattr(owner.tuning, attr), getattr(site.tuning, attr))
                for name, attr in zip(TUNING_VARIABLES, _TUNING_FIELDS, strict=True)
            ),
        ]
    return [name for name, mine, theirs in pairs if mine != theirs]
