"""The one way tests, the harness and bench/ wait for something: `wait_until`.

Hand-rolled deadline loops each failed differently (some with the last value, some with nothing, a
few silently), so a timeout in CI rarely said what was wrong. `wait_until` polls a probe until a
condition holds and, on timeout, fails with what it last saw (the value or the exception) and the
tails of the log sources passed in (companion log, nginx error log, container logs).

`stable=N` asks for the condition to hold N polls in a row: after an nginx reload the old workers
keep answering for about 100 ms, so the first good answer proves nothing; N good answers in a row do.
"""

from __future__ import annotations

import http.client
import ssl
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

LogSource = Callable[[], str] | Path | tuple[str, "Callable[[], str] | Path"]
Logs = Callable[[], str] | Iterable[LogSource] | None

TAIL = 3000

# what a network probe raises while a server is still coming up (ssl.SSLError is an OSError; kept for the reader)
NETWORK_ERRORS = (OSError, ssl.SSLError, http.client.HTTPException)


def is_not_none(value: object) -> bool:
    """For probes that return None for "not yet" and a falsy value (0, {}, "") as a real answer."""
    return value is not None


def _read(source: Callable[[], str] | Path) -> str:
    if isinstance(source, Path):
        return source.read_text(errors="replace") if source.exists() else "(missing)"
    return source()


def render_logs(logs: Logs, tail: int = TAIL) -> str:
    """The tails of each log source, each under a header naming it; never raises."""
    if logs is None:
        return ""
    sources = [logs] if callable(logs) else list(logs)
    parts = []
    for source in sources:
        name, reader = source if isinstance(source, tuple) else (getattr(source, "__name__", str(source)), source)
        try:
            text = _read(reader)
        except Exception as exc:  # noqa: BLE001 - diagnostics must not hide the timeout
            text = f"(could not read: {exc!r})"
        parts.append(f"--- {name} (last {tail} chars) ---\n{text[-tail:]}")
    return "\n" + "\n".join(parts)


def wait_until(
    probe: Callable[[], T],
    timeout: float = 15.0,
    interval: float = 0.05,
    what: str = "condition",
    *,
    until: Callable[[T], object] = bool,
    stable: int = 1,
    logs: Logs = None,
    errors: type[BaseException] | tuple[type[BaseException], ...] = Exception,
) -> T:
    """Poll probe() until until(value) holds `stable` times in a row; return that last value.

    An exception of a type in `errors` counts as "not yet" (and breaks a stable run); anything else
    propagates. On timeout raise AssertionError with the last value or exception and the log tails.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    streak = 0
    while True:
        try:
            value = probe()
        except errors as exc:
            last, streak = exc, 0
        else:
            last = value
            if until(value):
                streak += 1
                if streak >= stable:
                    return value
            else:
                streak = 0
        if time.monotonic() >= deadline:
            held = f" (held {streak} of {stable} polls in a row)" if stable > 1 else ""
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what}{held}; last: {last!r}{render_logs(logs)}"
            )
        time.sleep(interval)


def wait_quiet(
    measure: Callable[[], object],
    quiet: float,
    timeout: float,
    what: str = "quiet",
    interval: float = 0.05,
    *,
    logs: Logs = None,
) -> object:
    """Poll measure() until its value has not changed for `quiet` seconds (a log that stopped growing, a
    reload count that stopped moving); return that value, or fail as wait_until does."""
    seen: dict[str, object] = {"value": object(), "since": time.monotonic()}

    def unchanged_for() -> float:
        value = measure()
        if value != seen["value"]:
            seen.update(value=value, since=time.monotonic())
        return time.monotonic() - seen["since"]  # type: ignore[operator]

    wait_until(unchanged_for, timeout, interval, what, until=lambda held: held >= quiet, errors=(), logs=logs)
    return seen["value"]


def wait_gone(alive: Callable[[], object], timeout: float, interval: float = 0.05) -> bool:
    """Poll until alive() is falsy; return False (never raise) on timeout, for teardown paths."""
    try:
        wait_until(alive, timeout, interval, "gone", until=lambda value: not value)
    except AssertionError:
        return False
    return True
