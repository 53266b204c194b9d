"""Which certificate each host presents, and which orders are placed (pure).

Certificates belong to names: a lineage is presented only for hosts its names cover, and an order
never rewrites a lineage that holds names the request does not (it gets a lineage of its own).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import NamedTuple

from companion.core.certificates import CertFiles
from companion.core.model import CertRequest, Site, covers
from companion.core.problems import Problem


class CertWhy(StrEnum):
    """Why a host presents the certificate it does: the plan records it, reports render it."""

    NOHTTPS = "nohttps"  # HTTPS_METHOD=nohttps: no HTTPS server
    CERT_NAME = "cert_name"  # its CERT_NAME's lineage covers it
    NAMED = "named"  # the freshest lineage naming the host
    WILDCARD = "wildcard"  # a covering wildcard lineage
    DEFAULT = "default"  # the operator's default certificate covers it
    PLACEHOLDER = "placeholder"  # none issued yet: a stand-in is presented
    NONE = "none"  # it asks for none and none covers it: HTTP only


class CertChoice(NamedTuple):
    """The certificate chosen for a host: its files, the lineage name ("" for none) and why."""

    files: CertFiles | None
    lineage: str
    why: CertWhy


def lineage_digest(domains: Sequence[str]) -> str:
    return hashlib.sha256(",".join(sorted(domains)).encode()).hexdigest()[:8]


def cert_index(certs: Mapping[str, CertFiles]) -> dict[str, list[tuple[str, CertFiles]]]:
    """Lineages by each name they hold, the freshest first, so choosing one per host costs a lookup."""
    index: dict[str, list[tuple[str, CertFiles]]] = {}
    for name in sorted(certs):
        for domain in certs[name].domains:
            index.setdefault(domain, []).append((name, certs[name]))
    for found in index.values():
        found.sort(key=lambda pair: -pair[1].not_after)
    return index


def select_cert(
    host: str,
    site: Site,
    certs: Mapping[str, CertFiles],
    index: Mapping[str, list[tuple[str, CertFiles]]],
    problems: list[str],
    now: float = 0.0,
) -> CertChoice | None:
    """CERT_NAME's lineage when it covers the host, else the most specific valid certificate: the freshest
    lineage naming the host, else the freshest covering wildcard; an expired one only when no valid one
    covers the host. Never a certificate that is not valid for the host. (nginx-proxy also serves a
    parent's certificate, `example.com` for `a.example.com`; clients refuse it, so it is not chosen.)"""
    named = _named(host, site, certs, problems)
    if named is not None:
        return named
    found = list(index.get(host, ()))
    if not host.startswith("*.") and "." in host:
        found += index.get("*." + host.split(".", 1)[1], ())
    valid = [pair for pair in found if pair[1].not_after > now]
    if not found:
        return None
    name, files = (valid or found)[0]
    return CertChoice(files, name, CertWhy.NAMED if host in files.domains else CertWhy.WILDCARD)


def _named(host: str, site: Site, certs: Mapping[str, CertFiles], problems: list[str]) -> CertChoice | None:
    """CERT_NAME's lineage when it exists and covers the host; a warning when it exists and does not."""
    if not site.cert_name or site.cert_name not in certs:
        return None
    named = certs[site.cert_name]
    if covers(named.domains, host):
        return CertChoice(named, site.cert_name, CertWhy.CERT_NAME)
    problems.append(
        Problem(
            f"container {site.container}: CERT_NAME={site.cert_name}: certificate {site.cert_name} "
            f"does not cover {host}; not presented for it",
            container=site.container,
            variable="CERT_NAME",
            certificate=site.cert_name,
        )
    )
    return None


def requests(sites: list[Site], certs: Mapping[str, CertFiles], problems: list[str]) -> dict[str, CertRequest]:
    """Certificate orders by lineage name. A request takes its own name (CERT_NAME or its first host)
    unless that lineage holds names the request lacks, or another request took it: then
    `<name>-<digest of its names>`. Requests named after one of their own hosts choose first."""
    wanted = sorted(
        ((site, site.cert) for site in sites if site.cert is not None),
        key=lambda pair: pair[1].name not in pair[1].domains,
    )
    chosen: dict[str, CertRequest] = {}
    for site, request in wanted:
        name = _lineage_for(request, chosen, certs)
        if name is None:
            problems.append(
                f"container {site.container}: certificate {request.name} holds other names and "
                f"{request.name}-{lineage_digest(request.domains)} is taken; nothing ordered for "
                f"{', '.join(request.domains)}"
            )
        elif name not in chosen:
            chosen[name] = dataclasses.replace(request, name=name)
    return chosen


def _lineage_for(request: CertRequest, chosen: Mapping[str, CertRequest], certs: Mapping[str, CertFiles]) -> str | None:
    """The lineage `request` is ordered under (one already chosen for the same names counts), else None."""
    for name in (request.name, f"{request.name}-{lineage_digest(request.domains)}"):
        taken = chosen.get(name)
        held = certs.get(name)
        if taken is not None and taken.domains == request.domains:
            return name
        if taken is None and (held is None or set(held.domains) <= set(request.domains)):
            return name
    return None
