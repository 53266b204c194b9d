"""Who decides a host's settings, and which variables of the other claimants that overrules (pure).

The container that decided for a host before keeps deciding (remembered by name), else the one whose
name sorts first; the plan records the owner, why, and what was overruled, and every report renders that.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from companion.core.model import TUNING_VARIABLES, Site
from companion.core.values import Tuning

SERVED_FIRST, FIRST_BY_NAME = "it served the host first", "first by name"

_TUNING_FIELDS = tuple(f.name for f in dataclasses.fields(Tuning))


def why_decides(container: str, before: str | None) -> str:
    """Why `container` decides a host's settings: it decided before (remembered), else its name sorts first."""
    return SERVED_FIRST if container == before else FIRST_BY_NAME


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


def conflict_warnings(host: str, claims: Sequence[Site], why: str) -> list[str]:
    """One warning per claimant that differs from the owner's first site (`claims[0]`) on the host."""
    owner = claims[0]
    warnings = []
    for site in claims[1:]:
        differs = disagreements(owner, site)
        if differs:
            warnings.append(
                f"host {host}: containers {owner.container} and {site.container} disagree on "
                f"{', '.join(differs)}; using {owner.container}'s ({why})"
            )
    return warnings


def overruled(claims: Sequence[Site]) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """(container, path, variables that lost) for each claimant but the owner (`claims[0]`'s container),
    compared with the owner's site on the same path, else its first site on the host."""
    owner = claims[0].container
    mine = [site for site in claims if site.container == owner]
    found = []
    for site in claims:
        if site.container == owner:
            continue
        decider = next((s for s in mine if s.path == site.path), mine[0])
        found.append((site.container, site.path, tuple(disagreements(decider, site))))
    return tuple(found)
