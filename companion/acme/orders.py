"""Certificates from an ACME CA: when to order, certbot runs (webroot or a DNS plugin), self-check, backoff.

One certbot process at a time (certbot locks its directories). A failed order keeps whatever is
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
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import requests

from companion.acme.alerts import Alert, order_alert
from companion.acme.certs import scan, tighten
from companion.acme.dns import credentials_problem
from companion.acme.orderlimit import OrderLimit
from companion.acme.policy import (
    ACCOUNT_PATH_RE,
    CERTBOT_TIMEOUT,
    CertState,
    account_key,
    backoff,
    certbot_command,
    certbot_reason,
    due_reason,
    lineage_request,
    parse_accounts,
    parse_state,
    register_command,
    renew_at,
)
from companion.core.certificates import CertStatus
from companion.core.model import CertRequest
from companion.core.values import Challenge
from companion.settings.config import Settings
from companion.util import jsonstate
from companion.util.safefiles import UnsafeFile, real_dir, write_atomic

log = logging.getLogger(__name__)

STATE_FILE = "companion/acme-state.json"
SELF_CHECK_TIMEOUT = 5.0
SELF_CHECK_SETTLE = 3.0  # seconds a just-reloaded nginx gets to serve the token


# -- state kept across restarts ------------------------------------------------------------------


STATE_MAX_BYTES = 16 * 1024 * 1024
# What each field of a saved CertState must hold (JSON true/false are ints to Python: not counts or times).


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


# -- ACME accounts: one per (CA, email) ----------------------------------------------------------

ACCOUNTS_FILE = "companion/accounts.json"
ACCOUNTS_MAX_BYTES = 1024 * 1024
# certbot keeps an account in accounts/<server host[:port]>/<server path>/<id>, its id 32 hex digits.


def load_accounts(certs_dir: Path) -> dict[str, str]:
    """The saved mapping; a missing or unusable file starts empty (the accounts are registered again)."""
    path = certs_dir / ACCOUNTS_FILE

    def report(exc: Exception) -> None:
        log.warning("ignoring %s (%s); accounts will be registered again", path, exc)

    return jsonstate.load(path, ACCOUNTS_MAX_BYTES, parse_accounts, {}, report)


# -- the edge ------------------------------------------------------------------------------------


class AcmeManager:
    """Decides which certificates are due and orders them, one certbot at a time, in a worker thread."""

    def __init__(
        self,
        settings: Settings,
        wake: Callable[[str], None],
        self_check_url: Callable[[], str | list[str]],
        clock: Callable[[], float] = time.time,
        on_order: Callable[[bool], None] = lambda _ok: None,
        notify: Callable[[Alert | None], None] | None = None,
    ) -> None:
        self.settings = settings
        self.on_order = on_order  # told each order's outcome (the metrics count them)
        self.notify = notify  # must not block: it runs on the certbot worker
        self.certs_dir = Path(settings.certs_dir)
        self.wake = wake
        self.self_check_url = self_check_url
        self.clock = clock
        self.asked = OrderLimit(settings.renew_limit_minutes * 60, settings.renew_limit_per_hour, clock)
        self.lock = threading.Lock()
        self.state = load_state(self.certs_dir)
        self.accounts = load_accounts(self.certs_dir)  # only the worker thread uses them
        for entry in self.state.values():
            entry.in_progress = False
        self.queue: queue.Queue[tuple[CertRequest, bool]] = queue.Queue()
        self.requests: dict[str, CertRequest] = {}  # the last pass's, by name: what `order_now` orders
        self.next_due: float | None = None
        self.process: subprocess.Popen[str] | None = None
        self.process_lock = threading.Lock()  # starting certbot vs. stop(): none may start after stop()
        self.stopping = threading.Event()
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
                    request = lineage_request(self.settings, name, status.domains, status.server)
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
        with self.process_lock:  # run_certbot starts no certbot once this is set
            self.stopping.set()
            process = self.process
        self.queue.put_nowait((CertRequest("", (), ""), False))
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
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
            error = self.precheck(request)
            account = ""
            if not error:
                error, account = self.account_for(request)
            if not error:
                error = self.run_certbot(request, force=renewing, account=account)
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
                    tighten(self.certs_dir, request.name)
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

    def precheck(self, request: CertRequest) -> str:
        """Why an order would fail before the CA is asked, or '': for HTTP-01 the self-check through nginx;
        for DNS-01 (the CA never reaches nginx) the credentials file's permissions."""
        if request.challenge is Challenge.DNS01:
            if not self.settings.dns_plugin:
                return "DNS-01 needs a DNS plugin on the companion (ACME_DNS_PLUGIN)"
            return credentials_problem(self.settings.dns_credentials)
        return self.self_check(request) if self.settings.self_check else ""

    def self_check(self, request: CertRequest) -> str:
        """Serve a token through nginx for each name before ordering; '' when nginx serves them all."""
        folder = Path(self.settings.webroot) / ".well-known" / "acme-challenge"
        token = "companion-self-check-" + secrets.token_urlsafe(16)
        body = secrets.token_urlsafe(24)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write_atomic(folder / token, body)
        except OSError as exc:
            return f"self-check: cannot write to the webroot {self.settings.webroot}: {exc.strerror or exc}"
        try:
            bases = self.self_check_url()
            if isinstance(bases, str):
                bases = [bases]
            if not bases:
                return "self-check: no node's agent is up to serve the token"
            # The order is queued by the pass that just reloaded nginx, and a reload is asynchronous
            # (`nginx -s reload` returns before the new listeners and workers exist): right after a
            # first apply the port was still closed. Ask again for a moment before calling it failed.
            deadline = time.monotonic() + SELF_CHECK_SETTLE
            while True:
                # Swarm: HTTP-01 may reach any node, so every node that is up must serve the token.
                error = next((e for base in bases if (e := self._fetch_token(base, token, body, request.domains))), "")
                if not error or time.monotonic() >= deadline or self.stopping.is_set():
                    return error
                time.sleep(0.1)
        finally:
            (folder / token).unlink(missing_ok=True)

    def _fetch_token(self, base: str, token: str, body: str, domains: tuple[str, ...]) -> str:
        for domain in domains:
            url = f"{base}/.well-known/acme-challenge/{token}"
            try:
                answer = requests.get(url, headers={"Host": domain}, timeout=SELF_CHECK_TIMEOUT, allow_redirects=False)
            except requests.RequestException as exc:
                return f"self-check: nginx at {base} did not answer for {domain} ({type(exc).__name__})"
            if answer.status_code != 200 or answer.text.strip() != body:
                return (
                    f"self-check: nginx at {base} did not serve the webroot for {domain} "
                    f"(HTTP {answer.status_code}); is {self.settings.webroot} shared with nginx?"
                )
        return ""

    def account_for(self, request: CertRequest) -> tuple[str, str]:
        """(error, account id) for the request's (CA, email): the one registered before, else a new one.

        certbot registers in a scratch config dir and the account folder is moved into the certs dir,
        where `--account` finds it; the pair is remembered in ACCOUNTS_FILE."""
        server = request.server or self.settings.acme_server
        key = account_key(server, request.email)
        known = self.accounts.get(key)
        if known is not None and (self.certs_dir / known / "regr.json").is_file():
            return "", Path(known).name
        scratch_root = real_dir(self.certs_dir, "companion/register")
        scratch = Path(tempfile.mkdtemp(dir=scratch_root))
        try:
            error = self._certbot(register_command(self.settings, server, request.email, scratch))
            if error:
                return f"registering an account at {server}: {error}", ""
            found = sorted(meta.parent.relative_to(scratch) for meta in scratch.glob("accounts/**/meta.json"))
            if len(found) != 1 or not ACCOUNT_PATH_RE.match(str(found[0])):
                return f"registering an account at {server}: certbot left {len(found)} account folders", ""
            relative = found[0]
            real_dir(self.certs_dir, str(relative.parent))
            os.replace(scratch / relative, self.certs_dir / relative)
            self.accounts[key] = str(relative)
            jsonstate.save(self.certs_dir, ACCOUNTS_FILE, self.accounts)
        except OSError as exc:
            return f"registering an account at {server}: {exc.strerror or exc}", ""
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        log.info("registered an ACME account at %s for %s", server, request.email or "no email")
        return "", relative.name

    def run_certbot(self, request: CertRequest, *, force: bool, account: str = "") -> str:
        """Run certbot for one certificate; '' on success, certbot's reason otherwise."""
        return self._certbot(certbot_command(self.settings, request, force=force, account=account))

    def _certbot(self, command: list[str]) -> str:
        """Run one certbot command (never two at once); '' on success, certbot's reason otherwise."""
        env = dict(os.environ)
        if self.settings.ca_bundle:
            env["REQUESTS_CA_BUNDLE"] = self.settings.ca_bundle
        try:
            with self.process_lock:
                if self.stopping.is_set():
                    return "stopped before certbot ran"
                self.process = subprocess.Popen(
                    command,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    env=env,
                    start_new_session=True,
                )
            output, _ = self.process.communicate(timeout=CERTBOT_TIMEOUT)
            code = self.process.returncode
        except subprocess.TimeoutExpired:
            self.process.kill()
            return f"certbot did not finish within {CERTBOT_TIMEOUT}s"
        except OSError as exc:
            return f"cannot run certbot: {exc}"
        finally:
            self.process = None
        return certbot_reason(output) if code != 0 else ""
