"""VIRTUAL_HOST_MULTIPORTS: one container, several (host, path, port, dest) routes (pure).

nginx-proxy's value is YAML (or JSON, which YAML reads too): `host: {path: {port: N, dest: /x}}`, where
an empty host means path `/` and an empty path means the default port and no dest. It is read with
YAML's safe loader (plain data only: no tags, no objects) and every part goes through the same parsers
as VIRTUAL_HOST/PATH/PORT/DEST, so the routes it yields are as typed as the single-variable ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import yaml

from companion.core import model
from companion.core.container import ContainerInfo
from companion.core.model import (
    ACME_PATH,
    DEFAULT_POLICY,
    MAX_VALUE_BYTES,
    MULTIPORTS,
    MULTIPORTS_EXCLUDES,
    Policy,
    Rejection,
    Site,
    parse_site,
    settings_of,
)
from companion.core.values import MAX_HOSTS, InvalidValue, parse_hostname, parse_path, parse_port

_ROUTE_KEYS = frozenset({"port", "dest"})


@dataclass(frozen=True)
class Route:
    host: str
    path: str
    port: int | None  # None: the container's default port
    dest: str


def parse_multiports(value: str) -> tuple[Route, ...]:
    """Every route the value describes, in its order; InvalidValue names the first bad part."""
    tree = _load(value)
    routes: list[Route] = []
    seen: set[tuple[str, str]] = set()
    for raw_host, paths in tree.items():
        host = parse_hostname(_text(raw_host, "host name"))
        paths = _paths_of(host, paths)
        if len(routes) + len(paths) > MAX_HOSTS:
            raise InvalidValue(f"more than {MAX_HOSTS} routes")
        for raw_path, spec in paths.items():
            path = _route_path(host, _text(raw_path, "path"), seen)
            routes.append(Route(host, path, *_spec(host, path, spec)))
    return tuple(routes)


def _load(value: str) -> Mapping[object, object]:
    """The value as a non-empty mapping of at most MAX_HOSTS hosts."""
    if len(value.encode("utf-8", "surrogateescape")) > MAX_VALUE_BYTES:
        raise InvalidValue(f"longer than {MAX_VALUE_BYTES} bytes")
    try:
        tree = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise InvalidValue(f"not valid YAML or JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(tree, Mapping) or not tree:
        raise InvalidValue("must map host names to paths (host: {path: {port: N, dest: /x}})")
    # Sizes are checked before walking: aliases let a short value name the same mapping many times.
    if len(tree) > MAX_HOSTS:
        raise InvalidValue(f"more than {MAX_HOSTS} host names")
    return tree


def _paths_of(host: str, paths: object) -> Mapping[object, object]:
    """A host's paths; nothing (or an empty mapping) means `/` on the default port."""
    if paths is None or paths == {}:
        return {"/": None}
    if not isinstance(paths, Mapping):
        raise InvalidValue(f"{host}: must map paths to {{port, dest}}")
    return paths


def _route_path(host: str, raw: str, seen: set[tuple[str, str]]) -> str:
    """A route's path: valid, not the ACME challenge's, and given once per host (recorded in `seen`)."""
    path = parse_path(raw)
    if path.startswith(ACME_PATH):
        raise InvalidValue(f"{ACME_PATH} is reserved for ACME challenges")
    if (host, path) in seen:
        raise InvalidValue(f"{host}{path} given twice")
    seen.add((host, path))
    return path


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidValue(f"{what} {value!r} must be text")
    return value


def _spec(host: str, path: str, spec: object) -> tuple[int | None, str]:
    if spec is None:
        return None, ""
    if not isinstance(spec, Mapping) or not set(spec) <= _ROUTE_KEYS:
        raise InvalidValue(f"{host}{path}: must be empty or a mapping with port and/or dest")
    return _spec_port(host, path, spec.get("port")), _spec_dest(host, path, spec.get("dest"))


def _spec_port(host: str, path: str, port: object) -> int | None:
    if port is None:
        return None
    if isinstance(port, bool) or not isinstance(port, int | str):
        raise InvalidValue(f"{host}{path}: port must be a number from 1 to 65535")
    return parse_port(str(port))


def _spec_dest(host: str, path: str, dest: object) -> str:
    if dest is not None and not isinstance(dest, str):
        raise InvalidValue(f"{host}{path}: dest must be a path")
    return parse_path(dest) if dest else ""


def parse_sites(info: ContainerInfo, policy: Policy = DEFAULT_POLICY) -> tuple[Site, ...] | Rejection | None:
    """parse_site, with VIRTUAL_HOST_MULTIPORTS expanded to one Site per route.

    Everything but the routes (HTTPS_METHOD, HSTS, certificate, ...) is parsed by parse_site itself,
    with the routes' hosts standing in for VIRTUAL_HOST, so both forms follow one set of rules.
    """
    values = settings_of(info, policy.image_trust)
    raw = values.get(MULTIPORTS)
    if raw is None:
        site = parse_site(info, policy)
        return (site,) if isinstance(site, Site) else site
    try:
        routes, hosts, default_port = _routes_of(info, policy, values, raw)
    except InvalidValue as exc:
        return Rejection(info.name, MULTIPORTS, raw, str(exc))
    stand_in = dataclasses.replace(
        info,
        labels={**info.labels, "VIRTUAL_HOST": ",".join(hosts)},
        image_labels=info.image_labels - {"VIRTUAL_HOST"},
    )
    site = parse_site(stand_in, policy)
    if not isinstance(site, Site):
        return site
    return tuple(
        dataclasses.replace(
            site, hosts=(route.host,), path=route.path, port=route.port or default_port, dest=route.dest
        )
        for route in routes
    )


def _routes_of(
    info: ContainerInfo, policy: Policy, values: Mapping[str, str], raw: str
) -> tuple[tuple[Route, ...], tuple[str, ...], int]:
    """The routes of VIRTUAL_HOST_MULTIPORTS, their hosts (checked like VIRTUAL_HOST's), and the port of
    a route that names none."""
    mixed = [name for name in MULTIPORTS_EXCLUDES if name in values]
    if mixed:
        raise InvalidValue(f"cannot be combined with {', '.join(mixed)} (it sets hosts, paths and ports itself)")
    routes = parse_multiports(raw)
    hosts = tuple(dict.fromkeys(route.host for route in routes))
    model.check_names(info, hosts, policy)
    default_port = model.default_port(info) if any(route.port is None for route in routes) else 80
    return routes, hosts, default_port
