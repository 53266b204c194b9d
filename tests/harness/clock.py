"""A fixed clock for pure tests of time-based decisions (alerts, the control socket's rate limit): a fixed
NOW, days from it, and a clock the test moves by hand. Shared by the unit and integration halves."""

from __future__ import annotations

import datetime as dt

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC).timestamp()
DAY = 86400.0


def at(days: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(NOW + days * DAY, dt.UTC)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
