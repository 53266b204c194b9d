"""Which container decides each host's settings, kept across restarts (certs dir, companion/owners.json).

The rule "the container that already served a host keeps deciding" must survive a companion restart or
upgrade: otherwise a newcomer whose name sorts first could switch off HTTPS or HSTS for a host it joined
while the companion was away. Names, not ids, are kept: a redeployed container keeps its name.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

from .nginx import write_atomic

log = logging.getLogger(__name__)

OWNERS_FILE = "companion/owners.json"
MAX_BYTES = 8 * 1024 * 1024


def load(certs_dir: Path) -> dict[str, str]:
    """The remembered owners; an unreadable or malformed file is reported and ignored, never fatal."""
    path = certs_dir / OWNERS_FILE
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
        if len(data) > MAX_BYTES:
            raise ValueError(f"larger than {MAX_BYTES} bytes")
        raw = json.loads(data)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return {}
    if not isinstance(raw, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in raw.items()):
        log.warning("ignoring %s: not a mapping of host names to container names", path)
        return {}
    return raw


def save(certs_dir: Path, owners: Mapping[str, str]) -> None:
    path = certs_dir / OWNERS_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(dict(sorted(owners.items())), indent=1) + "\n", mode=0o600)
    except OSError as exc:
        log.error("cannot save %s: %s", path, exc)
