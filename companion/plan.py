"""Desired state: from validated sites to server blocks, upstreams and certificate requests (pure).

Conflict rule (documented in README): when several containers claim the same host, the one whose
container name sorts first decides the host's settings (HTTPS_METHOD, HSTS, certificate) and, per
path, VIRTUAL_PROTO and VIRTUAL_DEST; every container still joins the upstream as a backend. A
warning names the containers whose settings were overruled.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .model import CertRequest, ContainerInfo, HttpsMethod, Proto, Rejection, Site, parse_site


@dataclass(frozen=True)
class CertFiles:
    """A certificate nginx can load: paths on disk, whether it names an OCSP responder, and its serial.

    The serial is rendered as a comment: a renewed certificate keeps its paths, and the changed
    serial is what makes the rendered files differ, so the apply step reloads nginx.
    """

    fullchain: str
    privkey: str
    ocsp: bool = False
    serial: str = ""


@dataclass(frozen=True)
class Upstream:
    name: str
    servers: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Location:
    path: str
    upstream: str
    proto: Proto
    dest: str


@dataclass(frozen=True)
class Server:
    host: str
    https_method: HttpsMethod
    hsts: str
    locations: tuple[Location, ...]
    cert: CertFiles | None
    placeholder: bool

    @property
    def redirect(self) -> bool:
        """HTTP answers with a redirect only once a real certificate is served."""
        return self.cert is not None and not self.placeholder and self.https_method is HttpsMethod.REDIRECT

    @property
    def has_root(self) -> bool:
        """True when a container answers `/`. Otherwise the server renders `location / { return 404; }`:
        without it nginx answered every other path from its own default root (html/ under its prefix)."""
        return any(location.path == "/" for location in self.locations)

    @property
    def serves_http(self) -> bool:
        return self.https_method is not HttpsMethod.NOHTTP or self.cert is None or self.placeholder


@dataclass(frozen=True)
class Desired:
    servers: tuple[Server, ...]
    upstreams: tuple[Upstream, ...]
    certificates: tuple[CertRequest, ...]
    problems: tuple[str, ...] = field(default=())

    @property
    def longest_name(self) -> int:
        return max((len(s.host) for s in self.servers), default=1)


def upstream_name(host: str, path: str) -> str:
    """A stable upstream name; the path is hashed so it never needs escaping."""
    suffix = "" if path == "/" else "-" + hashlib.sha1(path.encode()).hexdigest()[:10]
    return "companion-" + host.replace("*", "_wildcard_") + suffix


def pick_address(info: ContainerInfo, nginx_networks: Sequence[str] | None) -> str | None:
    """The container's IP on a network shared with nginx, or its first IP when nginx runs on the host."""
    names = sorted(n for n, ip in info.networks.items() if ip)
    if nginx_networks is not None:
        names = [n for n in names if n in nginx_networks]
    return info.networks[names[0]] if names else None


def build(
    containers: Sequence[ContainerInfo],
    certs: Mapping[str, CertFiles],
    placeholder: CertFiles,
    *,
    nginx_networks: Sequence[str] | None = None,
    default_email: str = "",
    allowed_domains: Sequence[str] = (),
) -> Desired:
    """Compute the whole desired state from a snapshot of containers and the certificates on disk."""
    problems: list[str] = []
    located: list[tuple[Site, str]] = []
    for info in sorted(containers, key=lambda c: (c.name, c.id)):
        site = parse_site(info, default_email=default_email, allowed_domains=allowed_domains)
        if site is None:
            continue
        if isinstance(site, Rejection):
            problems.append(site.message)
            continue
        if info.health == "unhealthy":
            problems.append(f"container {info.name}: unhealthy, left out until its health check passes")
            continue
        address = pick_address(info, nginx_networks)
        if address is None:
            where = "a network shared with nginx" if nginx_networks is not None else "any network"
            problems.append(f"container {info.name}: not reachable (no IP address on {where}), left out")
            continue
        located.append((site, address))

    servers: list[Server] = []
    upstreams: dict[str, Upstream] = {}
    requests: dict[str, CertRequest] = {}
    for host, claims in _by_host(located).items():
        owner = claims[0][0]
        _warn_conflicts(host, claims, problems)
        locations = []
        for path, path_claims in _by_path(claims).items():
            first = path_claims[0][0]
            name = upstream_name(host, path)
            backends = tuple(sorted({(address, site.port) for site, address in path_claims}))
            upstreams[name] = Upstream(name, backends)
            locations.append(Location(path, name, first.proto, first.dest))
        cert_name = owner.cert_name or (owner.cert.name if owner.cert else host)
        cert = certs.get(cert_name)
        wants_tls = owner.cert is not None or bool(owner.cert_name)
        is_placeholder = cert is None and wants_tls and owner.https_method is not HttpsMethod.NOHTTPS
        if owner.https_method is HttpsMethod.NOHTTPS:
            cert = None
        servers.append(
            Server(
                host=host,
                https_method=owner.https_method,
                hsts=owner.hsts,
                locations=tuple(sorted(locations, key=lambda loc: loc.path)),
                cert=placeholder if is_placeholder else cert,
                placeholder=is_placeholder,
            )
        )
    for site, _ in located:
        if site.cert is not None:
            _add_request(requests, site, problems)
    return Desired(
        servers=tuple(servers),
        upstreams=tuple(upstreams[k] for k in sorted(upstreams)),
        certificates=tuple(requests[k] for k in sorted(requests)),
        problems=tuple(problems),
    )


def _by_host(located: list[tuple[Site, str]]) -> dict[str, list[tuple[Site, str]]]:
    grouped: dict[str, list[tuple[Site, str]]] = {}
    for site, address in located:
        for host in site.hosts:
            grouped.setdefault(host, []).append((site, address))
    return dict(sorted(grouped.items()))


def _by_path(claims: list[tuple[Site, str]]) -> dict[str, list[tuple[Site, str]]]:
    grouped: dict[str, list[tuple[Site, str]]] = {}
    for site, address in claims:
        grouped.setdefault(site.path, []).append((site, address))
    return grouped


def _warn_conflicts(host: str, claims: list[tuple[Site, str]], problems: list[str]) -> None:
    owner = claims[0][0]
    for site, _ in claims[1:]:
        differs = [
            name
            for name, mine, theirs in (
                ("HTTPS_METHOD", owner.https_method, site.https_method),
                ("HSTS", owner.hsts, site.hsts),
                ("CERT_NAME", owner.cert_name, site.cert_name),
                ("LETSENCRYPT_HOST", owner.cert, site.cert),
            )
            if mine != theirs
        ]
        if site.path == owner.path:
            differs += [
                name
                for name, mine, theirs in (
                    ("VIRTUAL_PROTO", owner.proto, site.proto),
                    ("VIRTUAL_DEST", owner.dest, site.dest),
                )
                if mine != theirs
            ]
        if differs:
            problems.append(
                f"host {host}: containers {owner.container} and {site.container} disagree on "
                f"{', '.join(differs)}; using {owner.container}'s (first by name)"
            )


def _add_request(requests: dict[str, CertRequest], site: Site, problems: list[str]) -> None:
    assert site.cert is not None
    known = requests.get(site.cert.name)
    if known is None:
        requests[site.cert.name] = site.cert
    elif known.domains != site.cert.domains:
        problems.append(
            f"container {site.container}: certificate {site.cert.name} already requested for "
            f"{', '.join(known.domains)}; its own names {', '.join(site.cert.domains)} are ignored"
        )
