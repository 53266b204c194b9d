"""How often `companion renew` may make the service order: per certificate and in all (pure, clock injected).

An order asked on the control socket skips the backoff that holds failing certificates, and a forced one
renews a certificate that is not due. Each order counts against the CA's limits (Let's Encrypt allows five
certificates for the same names a week), so a script or a hand that asks again and again must be told
"not yet", with the time it may ask again, rather than burn them.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Callable

HOUR = 3600.0


class OrderLimit:
    """At most one asked order per certificate every `interval` seconds, and `per_hour` in any hour in all."""

    def __init__(self, interval: float, per_hour: int, clock: Callable[[], float]) -> None:
        self.interval = interval
        self.per_hour = per_hour
        self.clock = clock
        self.last: dict[str, float] = {}  # certificate -> when its last asked order was queued
        self.recent: deque[float] = deque()  # when each asked order of the last hour was queued, oldest first

    def next_allowed(self, name: str) -> float | None:
        """None when an order of `name` may be queued now, else the earliest time (epoch seconds) it may."""
        now = self.clock()
        while self.recent and self.recent[0] + HOUR <= now:
            self.recent.popleft()
        times = []
        if name in self.last and self.last[name] + self.interval > now:
            times.append(self.last[name] + self.interval)
        if len(self.recent) >= self.per_hour:
            times.append(self.recent[len(self.recent) - self.per_hour] + HOUR)
        return max(times) if times else None

    def record(self, name: str) -> None:
        """An order of `name` was queued now."""
        now = self.clock()
        self.last[name] = now
        self.recent.append(now)

    def refusal(self, name: str) -> str:
        """The answer for a refused order: when the next may be asked for, in UTC ('' when allowed now)."""
        when = self.next_allowed(name)
        if when is None:
            return ""
        shown = dt.datetime.fromtimestamp(when, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return (
            f"refused: next order of {name} allowed at {shown} (`companion renew` may order each certificate "
            f"once every {self.interval / 60:g} min, {self.per_hour} in all per hour)"
        )
