"""Which container decides each host's settings, kept across restarts (certs dir, companion/owners.json).

The rule "the container that already served a host keeps deciding" must survive a companion restart and
the container's own redeploys: otherwise a newcomer whose name sorts first could switch off HTTPS or HSTS
for a host it joined while the companion was away, or while compose recreated the owner. Names, not ids,
are kept (a recreated container keeps its name), and an owner that is away keeps its claim for
OWNER_GRACE seconds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from companion.util.safefiles import read_regular, real_dir, write_atomic

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
    try:
        raw = json.loads(read_regular(path, MAX_BYTES))
        return {
            host: Claim(str(entry["container"]), float(entry["seen"]))
            for host, entry in raw.items()
            if isinstance(host, str) and isinstance(entry["container"], str)
        }
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return {}


def save(certs_dir: Path, claims: Mapping[str, Claim]) -> None:
    path = certs_dir / OWNERS_FILE
    content = {host: {"container": c.container, "seen": round(c.seen, 3)} for host, c in sorted(claims.items())}
    try:
        real_dir(certs_dir, "companion")
        write_atomic(path, json.dumps(content, indent=1) + "\n", mode=0o600)
    except OSError as exc:
        log.error("cannot save %s: %s", path, exc)
