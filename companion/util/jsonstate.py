"""The small JSON files the companion keeps across restarts (ACME state, accounts, sent alerts, owners).

Each is read the same way, without following a link and with a size cap (safefiles.read_regular), and
parsed by a function that refuses a wrong shape; each is written the same way, atomically and private
(0600), its top-level keys sorted so the file does not churn. A bad file is never fatal: the caller says
what is lost (logged by `on_error`) and starts from the default.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from companion.util.safefiles import read_regular, real_dir, write_atomic

T = TypeVar("T")

# What a bad file raises: I/O (UnsafeFile is an OSError), JSON and UTF-8 (ValueError), deep nesting, and
# whatever a parser of the plain JSON types lets through.
BAD_FILE = (OSError, ValueError, RecursionError, TypeError, KeyError, AttributeError)


def load(
    path: Path, max_bytes: int, parse: Callable[[object], T], default: T, on_error: Callable[[Exception], None]
) -> T:
    """The parsed file; `default` when it does not exist, or (after `on_error` logged why) when unusable."""
    try:
        return parse(json.loads(read_regular(path, max_bytes)))
    except FileNotFoundError:
        return default
    except BAD_FILE as exc:
        on_error(exc)
        return default


def save(root: Path, relative: str, value: Mapping[str, object]) -> None:
    """Write root/relative (its folders real directories of ours); OSError when it cannot."""
    real_dir(root, str(Path(relative).parent))
    write_atomic(root / relative, json.dumps(dict(sorted(value.items())), indent=1) + "\n", mode=0o600)
