"""Which container decides each host's settings, kept across restarts (certs dir, companion/owners.json).

The rule "the container that already served a host keeps deciding" must survive a companion restart and
the container's own redeploys: otherwise a newcomer whose name sorts first could switch off HTTPS or HSTS
for a host it joined while the companion was away, or while compose recreated the owner. Names, not ids,
are kept (a recreated container keeps its name), and an owner that is away keeps its claim for
OWNER_GRACE seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from companion.util import jsonstate

log = logging.getLogger(__name__)

OWNERS_FILE = "companion/owners.json"
OWNER_GRACE = 3600.0
MAX_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class Claim:
    container: str
    seen: float  # unix time the container last decided for the host


def remembered(claims: Mapping[str, Claim]) -> dict[str, str]:
    """host -> container name, as plan.build takes it."""
    return {host: claim.container for host, claim in claims.items()}


def merge(claims: Mapping[str, Claim], decided: Mapping[str, str], now: float) -> dict[str, Claim]:
    """The claims after a pass (pure): who decided now is seen now; an owner that did not decide (it was
    not running) keeps its claim until OWNER_GRACE has passed since it was last seen."""
    merged = {host: claim for host, claim in claims.items() if now - claim.seen < OWNER_GRACE}
    for host, container in decided.items():
        kept = merged.get(host)
        if kept is None or kept.container == container:
            merged[host] = Claim(container, now)
    return merged


def load(certs_dir: Path) -> dict[str, Claim]:
    """The remembered claims; an unreadable or malformed file is reported and ignored, never fatal."""
    path = certs_dir / OWNERS_FILE

    def report(exc: Exception) -> None:
        log.warning("ignoring unreadable %s: %s", path, exc)

    return jsonstate.load(path, MAX_BYTES, parse_claims, {}, report)


def parse_claims(raw: object) -> dict[str, Claim]:
    """The file's JSON as claims; any exception of the plain JSON types (KeyError, TypeError...) when its
    shape is wrong."""
    return {
        host: Claim(str(entry["container"]), float(entry["seen"]))
        for host, entry in raw.items()  # type: ignore[attr-defined]
        if isinstance(host, str) and isinstance(entry["container"], str)
    }


def save(certs_dir: Path, claims: Mapping[str, Claim]) -> None:
    content = {host: {"container": c.container, "seen": round(c.seen, 3)} for host, c in claims.items()}
    try:
        jsonstate.save(certs_dir, OWNERS_FILE, content)
    except OSError as exc:
        log.error("cannot save %s: %s", certs_dir / OWNERS_FILE, exc)
