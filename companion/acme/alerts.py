"""Alerts through Apprise: an order failed, a failing certificate was issued, a certificate in use expires soon.

What to send is decided by pure functions (an injectable clock); sending happens in a thread of its own
behind a bounded queue, so a slow or dead receiver never holds up the loop or the certbot worker. When each
expiry alert went out is kept in the certs dir, so a restart does not send it again.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import apprise

from companion.core.certificates import CertStatus
from companion.core.plan import Server
from companion.util import jsonstate
from companion.util.logsafe import printable

log = logging.getLogger(__name__)

SENT_FILE = "companion/notify-state.json"
SENT_MAX_BYTES = 1024 * 1024
EXPIRY_REPEAT = 24 * 3600.0  # an expiry alert for one certificate goes out at most once a day
QUEUE_MAX = 100


class Kind(StrEnum):
    FAILED = "failure"  # Apprise's notify types
    RECOVERED = "success"
    EXPIRING = "warning"


@dataclass(frozen=True)
class Alert:
    kind: Kind
    certificate: str
    title: str
    body: str


# -- pure decisions ------------------------------------------------------------------------------


def order_alert(name: str, domains: tuple[str, ...], failures_before: int, error: str) -> Alert | None:
    """An alert for an order's outcome: the first failure of a streak, or the success that ends one.

    Later failures of the same streak stay quiet: backoff retries them for as long as the fault lasts.
    """
    names = ", ".join(domains)
    if error and failures_before == 0:
        return Alert(Kind.FAILED, name, f"certificate {name}: order failed", f"{names}: {printable(error)}")
    if not error and failures_before > 0:
        return Alert(
            Kind.RECOVERED,
            name,
            f"certificate {name}: issued",
            f"{names}: issued after {failures_before} failed attempts",
        )
    return None


def in_use(servers: Iterable[Server], statuses: Mapping[str, CertStatus], certs_dir: Path) -> dict[str, dt.datetime]:
    """The lineages nginx presents for some host (placeholders are not lineages), with their expiry."""
    served = {server.cert.fullchain for server in servers if server.cert is not None and not server.placeholder}
    return {
        name: status.not_after
        for name, status in statuses.items()
        if not status.problem and status.not_after is not None and status.files(certs_dir).fullchain in served
    }


def expiring(in_use: Mapping[str, dt.datetime], sent: Mapping[str, float], now: float, days: float) -> tuple[str, ...]:
    """Certificates in use with fewer than `days` days left whose last expiry alert is a day old or more."""
    limit = dt.datetime.fromtimestamp(now, dt.UTC) + dt.timedelta(days=days)
    return tuple(
        name
        for name, not_after in sorted(in_use.items())
        if not_after < limit and now - sent.get(name, -math.inf) >= EXPIRY_REPEAT
    )


def expiry_alert(name: str, not_after: dt.datetime, now: float) -> Alert:
    left = (not_after.timestamp() - now) / 86400
    return Alert(
        Kind.EXPIRING,
        name,
        f"certificate {name}: expires in {left:.1f} days",
        f"certificate {name} expires {not_after:%Y-%m-%d %H:%M} UTC ({left:.1f} days left)",
    )


# -- when expiry alerts were sent, across restarts -----------------------------------------------


def parse_sent(raw: object) -> dict[str, float]:
    if not isinstance(raw, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in raw.values()
    ):
        raise ValueError("expected an object of certificate name -> unix time")
    return {str(k): float(v) for k, v in raw.items()}


def load_sent(certs_dir: Path) -> dict[str, float]:
    """A missing or unusable file starts empty: at worst one expiry alert is sent again."""
    path = certs_dir / SENT_FILE

    def report(exc: Exception) -> None:
        log.warning("ignoring %s (%s); expiry alerts may be sent again", path, printable(str(exc)))

    return jsonstate.load(path, SENT_MAX_BYTES, parse_sent, {}, report)


def save_sent(certs_dir: Path, sent: Mapping[str, float]) -> None:
    jsonstate.save(certs_dir, SENT_FILE, sent)


# -- the edge ------------------------------------------------------------------------------------


class Notifier:
    """Queues alerts and sends them from its own thread; a failed send is logged once per outage."""

    def __init__(
        self, urls: tuple[str, ...], certs_dir: Path, expiry_days: float, clock: Callable[[], float] = time.time
    ) -> None:
        logging.getLogger("apprise").setLevel(logging.CRITICAL + 1)  # its lines may quote URLs: ours say enough
        self.apprise = apprise.Apprise()
        for url in urls:
            self.apprise.add(url)
        self.receivers = len(urls)
        self.certs_dir = certs_dir
        self.expiry_days = expiry_days
        self.clock = clock
        self.sent = load_sent(certs_dir)
        self.queue: queue.Queue[Alert | None] = queue.Queue(QUEUE_MAX)
        self.down = False  # touched by the sender thread only
        self.worker = threading.Thread(target=self._work, name="notify", daemon=True)
        self.worker.start()

    def send(self, alert: Alert | None) -> None:
        """Never blocks: with the queue full (the receiver has been away a while) the alert is dropped."""
        if alert is None:
            return
        try:
            self.queue.put_nowait(alert)
        except queue.Full:
            log.debug("notification queue full; dropped the alert for %s", alert.certificate)

    def check_expiry(self, in_use: Mapping[str, dt.datetime]) -> None:
        """Called every pass with the certificates nginx serves; sends only what is due."""
        if self.expiry_days <= 0:
            return
        now = self.clock()
        due = expiring(in_use, self.sent, now, self.expiry_days)
        if not due:
            return
        for name in due:
            log.warning(
                "certificate %s: expires %s UTC, fewer than %g days left; sending an alert",
                name,
                f"{in_use[name]:%Y-%m-%d %H:%M}",
                self.expiry_days,
                extra={"certificate": name},
            )
            self.send(expiry_alert(name, in_use[name], now))
            self.sent[name] = now
        self.sent = {name: when for name, when in self.sent.items() if now - when < EXPIRY_REPEAT}
        try:
            save_sent(self.certs_dir, self.sent)
        except OSError as exc:
            log.error("cannot save %s: %s", self.certs_dir / SENT_FILE, printable(str(exc)))

    def stop(self, timeout: float = 1.0) -> None:
        """Gives alerts already queued a moment to go out; the thread is a daemon, so exit never waits longer."""
        try:
            self.queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self.worker.join(timeout)

    def _work(self) -> None:
        while (alert := self.queue.get()) is not None:
            try:
                ok = bool(self.apprise.notify(body=alert.body, title=alert.title, notify_type=alert.kind.value))
            except Exception:  # noqa: BLE001 - a receiver's failure must never end the sender
                ok = False
            if not ok and not self.down:
                log.warning(
                    "cannot deliver a notification to every one of the %d NOTIFY_URLS (dropped, not retried); "
                    "logged once until one gets through",
                    self.receivers,
                    extra={"certificate": alert.certificate},
                )
            elif ok and self.down:
                log.info("notifications are delivered again")
            self.down = not ok
