"""The ordering worker: which certificates are due, one order at a time (ordering.Orderer), backoff.

A failed order keeps whatever is
served now and is retried with exponential backoff per certificate; the backoff is kept in a state
file in the certs dir so a restart cannot turn a broken site into a stream of failed validations.
New certificates reach nginx through the certs watcher, which wakes the loop.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from companion.acme.alerts import Alert, order_alert
from companion.acme.authenticators import SelfCheckUrl
from companion.acme.certs import scan
from companion.acme.ordering import Orderer
from companion.acme.orderlimit import OrderLimit
from companion.acme.policy import (
    CertState,
    backoff,
    due_reason,
    lineage_request,
    parse_state,
    renew_at,
)
from companion.core.certificates import CertStatus
from companion.core.model import CertRequest
from companion.settings.config import Settings
from companion.util import jsonstate
from companion.util.safefiles import UnsafeFile

log = logging.getLogger(__name__)

STATE_FILE = "companion/acme-state.json"


# -- state kept across restarts ------------------------------------------------------------------


STATE_MAX_BYTES = 16 * 1024 * 1024


def load_state(certs_dir: Path) -> dict[str, CertState]:
    """The state saved by the last run. A file that is not a regular file or has the wrong shape is moved
    aside (kept for a look) with one warning and the state starts empty: never fatal, and one bad file must
    not stop every later order."""
    path = certs_dir / STATE_FILE

    def set_aside(exc: Exception) -> None:
        if isinstance(exc, OSError) and not isinstance(exc, UnsafeFile):
            log.warning("cannot read %s (%s); starting with an empty ACME state", path, exc.strerror or exc)
            return
        reason = exc.strerror if isinstance(exc, UnsafeFile) else str(exc)
        aside = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        try:
            os.replace(path, aside)  # the entry itself: a link is moved, not what it points to
        except OSError as err:
            log.warning("ignoring %s (%s); cannot move it aside: %s", path, reason, err.strerror or err)
        else:
            log.warning(
                "ignoring %s (%s); moved it aside to %s and starting with an empty ACME state", path, reason, aside
            )

    return jsonstate.load(path, STATE_MAX_BYTES, parse_state, {}, set_aside)


def save_state(certs_dir: Path, state: dict[str, CertState]) -> None:
    jsonstate.save(certs_dir, STATE_FILE, {name: asdict(entry) for name, entry in state.items()})


# -- the edge ------------------------------------------------------------------------------------


class AcmeManager:
    """Decides which certificates are due and orders them, one certbot at a time, in a worker thread."""

    def __init__(
        self,
        settings: Settings,
        wake: Callable[[str], None],
        self_check_url: SelfCheckUrl,
        clock: Callable[[], float] = time.time,
        on_order: Callable[[bool], None] = lambda _ok: None,
        notify: Callable[[Alert | None], None] | None = None,
    ) -> None:
        self.settings = settings
        self.on_order = on_order  # told each order's outcome (the metrics count them)
        self.notify = notify  # must not block: it runs on the certbot worker
        self.certs_dir = Path(settings.certs_dir)
        self.wake = wake
        self.clock = clock
        self.asked = OrderLimit(settings.renew_limit_minutes * 60, settings.renew_limit_per_hour, clock)
        self.lock = threading.Lock()
        self.state = load_state(self.certs_dir)
        self.orderer = Orderer(settings, self_check_url)
        for entry in self.state.values():
            entry.in_progress = False
        self.queue: queue.Queue[tuple[CertRequest, bool]] = queue.Queue()
        self.requests: dict[str, CertRequest] = {}  # the last pass's, by name: what `order_now` orders
        self.next_due: float | None = None
        self.stopping = self.orderer.stopping
        self.worker = threading.Thread(target=self._work, name="acme", daemon=True)
        self.worker.start()

    def update(self, requests_: tuple[CertRequest, ...], statuses: dict[str, CertStatus]) -> None:
        """Queue every certificate that is due and not backing off; remember when to look again."""
        now = self.clock()
        now_dt = dt.datetime.fromtimestamp(now, dt.UTC)
        upcoming: list[float] = []
        queued = False
        with self.lock:
            self.requests = {request.name: request for request in requests_}
            for request in requests_:
                status = statuses.get(request.name)
                entry = self.state.setdefault(request.name, CertState(domains=list(request.domains)))
                if entry.in_progress:
                    # The worker settles this entry when certbot returns: a pass that already sees the new
                    # certificate on disk must not reset the failure count it reports the recovery with.
                    continue
                if entry.domains != list(request.domains):
                    entry.domains, entry.failures, entry.next_try = list(request.domains), 0, 0.0
                reason = due_reason(request, status, now_dt, self.settings.renew_before_days)
                if not reason:
                    entry.failures, entry.next_try, entry.last_error = 0, 0.0, ""
                    if status is not None and status.not_after is not None:
                        upcoming.append(renew_at(status, self.settings.renew_before_days).timestamp())
                    continue
                if entry.next_try > now:
                    upcoming.append(entry.next_try)
                    continue
                log.info(
                    "certificate %s (%s): ordering, %s",
                    request.name,
                    ", ".join(request.domains),
                    reason,
                    extra={"certificate": request.name},
                )
                entry.in_progress = True
                queued = True
                self.queue.put((request, status is not None))
            self.next_due = min(upcoming) if upcoming else None
            if queued:
                self._save()  # so `companion certs` shows "renewing" while certbot runs

    def order_now(self, names: Sequence[str], force: bool) -> dict[str, str]:
        """Queue the named lineages (all on disk when none is named) for `companion renew`, through the same
        worker, self-check, backoff and state file as every order. An operator asked, so a backoff does not
        hold it, but RENEW_LIMIT_* do (self.asked); one already being ordered is left to that order. Answers
        "queued", "in progress", "not due (...)", "refused: next order ... allowed at ..." or why it cannot be
        ordered, per name."""
        statuses = scan(self.certs_dir)
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        chosen = list(names) or sorted(name for name in statuses if not name.startswith("companion"))
        answers: dict[str, str] = {}
        with self.lock:
            for name in chosen:
                status = statuses.get(name)
                request = self.requests.get(name)
                if request is None and (status is None or not status.domains):
                    answers[name] = f"no usable certificate {name!r} in {self.certs_dir / 'live'}"
                    continue
                if request is None:  # on disk but no container asks for it: it keeps its CA
                    assert status is not None
                    request = lineage_request(self.settings, name, status.domains, status.server, status.profile)
                entry = self.state.setdefault(name, CertState(domains=list(request.domains)))
                if entry.in_progress:
                    answers[name] = "in progress"
                    continue
                reason = "forced" if force else due_reason(request, status, now, self.settings.renew_before_days)
                if not reason:  # due_reason is '' only for a usable certificate on disk
                    assert status is not None and status.not_after is not None
                    answers[name] = f"not due (expires {status.not_after:%Y-%m-%d})"
                    continue
                refused = self.asked.refusal(name)
                if refused:
                    answers[name] = refused
                    continue
                self.asked.record(name)
                log.info(
                    "certificate %s (%s): ordering, asked by `companion renew` (%s)",
                    name,
                    ", ".join(request.domains),
                    reason,
                    extra={"certificate": name},
                )
                entry.in_progress = True
                self.queue.put((request, status is not None))
                answers[name] = "queued"
            if "queued" in answers.values():
                self._save()
        return answers

    def seconds_until_due(self) -> float | None:
        return None if self.next_due is None else max(0.0, self.next_due - self.clock())

    def states(self) -> dict[str, CertState]:
        """A copy of every certificate's order state, for the status report."""
        with self.lock:
            return {name: dataclasses.replace(entry, domains=list(entry.domains)) for name, entry in self.state.items()}

    def stop(self, timeout: float = 3.0) -> None:
        """Stop the worker; a running certbot is terminated so none is left orphaned."""
        self.orderer.stop(timeout)
        self.queue.put_nowait((CertRequest("", (), ""), False))
        self.worker.join(timeout)
        # Orders still queued were saved as in progress; none is any more.
        with self.lock:
            if any(entry.in_progress for entry in self.state.values()):
                for entry in self.state.values():
                    entry.in_progress = False
                self._save()

    def _work(self) -> None:
        while not self.stopping.is_set():
            request, renewing = self.queue.get()
            if self.stopping.is_set():
                return
            error = self.orderer.order(request, force=renewing).error
            with self.lock:
                entry = self.state.setdefault(request.name, CertState(domains=list(request.domains)))
                entry.in_progress = False
                if self.stopping.is_set():
                    self._save()
                    return
                if self.notify is not None:
                    self.notify(order_alert(request.name, request.domains, entry.failures, error))
                if error:
                    entry.failures += 1
                    entry.last_error = error
                    entry.next_try = self.clock() + backoff(entry.failures, self.settings.acme_retry_base)
                    when = dt.datetime.fromtimestamp(entry.next_try, dt.UTC)
                    log.error(
                        "certificate %s: %s; attempt %d failed, next try %s UTC",
                        request.name,
                        error,
                        entry.failures,
                        f"{when:%Y-%m-%d %H:%M:%S}",
                        extra={"certificate": request.name},
                    )
                else:
                    entry.failures, entry.next_try, entry.last_error = 0, 0.0, ""
                    log.info(
                        "certificate %s: issued for %s",
                        request.name,
                        ", ".join(request.domains),
                        extra={"certificate": request.name},
                    )
                self._save()
            self.on_order(not error)
            self.wake(f"acme:{request.name}")

    def _save(self) -> None:
        try:
            save_state(self.certs_dir, self.state)
        except OSError as exc:
            log.error("cannot save %s: %s", self.certs_dir / STATE_FILE, exc)
