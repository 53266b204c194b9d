"""The loop that ties the edges to the pure core: wake (debounced), snapshot, reconcile, apply.

It sees the edges through the protocols of companion/core/ports.py: a Source of snapshots and an Applier
that tests and reloads nginx (or, with agents, publishes to them).

Events only wake the loop; every pass starts from a fresh snapshot, so a missed event or a daemon
restart costs one pass, never correctness. Problems are logged when they appear and when they go
away, not on every pass.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from companion.acme import certs
from companion.acme.alerts import in_use
from companion.acme.policy import CertState
from companion.core import certificates, plan, reach
from companion.core.inputs import Inputs
from companion.core.model import CertRequest, Policy
from companion.core.ports import Applier, ApplyResult, Snapshot, Source
from companion.core.problems import Problem, fields_of
from companion.core.trust import NGINX_LABEL
from companion.loop import owner_claims
from companion.loop.reconcile import Reconciled, policy_of, reconcile, render_options
from companion.nginx import hostfiles
from companion.nginx.apply import OLDEST_ASSUMED
from companion.observe import status
from companion.observe.explain import Explanation, explain, with_nodes
from companion.observe.metrics import Metrics
from companion.settings.config import Settings
from companion.sources.daemon import DockerUnavailable, short_reason

log = logging.getLogger(__name__)

IDLE_GAP = 2.0  # seconds without a pass after which the next event is applied at once
FIRST_QUIET, FIRST_MAX = 0.02, 0.1
# In a burst the longest wait grows 4, 16, 30 s: a 100-container start (~16 s here) costs 3 reloads.
BURST_QUIET, BURST_FIRST_MAX, BURST_GROWTH, BURST_MAX_CAP = 0.5, 4.0, 4.0, 30.0
HEARTBEAT_EVERY = 30.0
HEARTBEAT_MAX_AGE = 120.0  # `companion check` and /healthz call the loop dead after this long without a pass
RETRY_FIRST, RETRY_MAX = 1.0, 30.0
NO_NGINX = (
    "no nginx container found (the label com.github.nginx-proxy.nginx on a container that mounts the conf dir, "
    "or NGINX_PROXY_CONTAINER); waiting"
)


class CertificateManager(Protocol):
    def update(self, requests: tuple[CertRequest, ...], statuses: dict[str, certificates.CertStatus]) -> None: ...

    def seconds_until_due(self) -> float | None: ...

    def states(self) -> dict[str, CertState]: ...


class ExpiryWatch(Protocol):
    def check_expiry(self, in_use: dict[str, dt.datetime]) -> None: ...


@dataclass
class PassReport:
    result: ApplyResult | None = None
    skipped: str = ""


class Debouncer:
    """Decides how long to wait for a burst to settle: quick after a quiet spell, patient in a burst.

    Only passes that changed something count: a no-op pass (say, woken by the network event Docker
    sends just before a container starts) must not make the next real change wait as if in a burst.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.last_change = float("-inf")
        self.burst_passes = 0

    def windows(self) -> tuple[float, float]:
        """(quiet period, longest wait) for the wake that just arrived."""
        if self.clock() - self.last_change >= IDLE_GAP:
            self.burst_passes = 0
            return FIRST_QUIET, FIRST_MAX
        self.burst_passes += 1
        return BURST_QUIET, min(BURST_FIRST_MAX * BURST_GROWTH ** (self.burst_passes - 1), BURST_MAX_CAP)

    def changed(self) -> None:
        self.last_change = self.clock()


class Controller:
    def __init__(
        self,
        settings: Settings,
        source: Source,
        applier: Applier,
        acme: CertificateManager | None = None,
        expiry: ExpiryWatch | None = None,
    ) -> None:
        self.settings = settings
        self.source = source
        self.applier = applier
        self.acme = acme
        self.expiry = expiry
        self.certs_dir = Path(settings.certs_dir)
        self.conf_dir = Path(settings.conf_dir)
        self._wake = threading.Event()
        self._last_wake = 0.0
        self._reported: dict[str, float] = {}  # problem -> unix time it appeared
        self._desired: plan.Desired | None = None
        self._statuses: dict[str, certificates.CertStatus] = {}
        self._passes: deque[status.PassView] = deque(maxlen=status.PASSES_KEPT)
        self._last_success = 0.0
        self.latest = status.EMPTY  # replaced whole after every pass; the status endpoint only reads it
        self.inputs: Inputs | None = None  # what the last pass decided from, replaced whole like the report
        self.metrics = Metrics(lambda: self.latest)
        self._nginx_version: tuple[int, ...] | None = None  # as the applier (or the agents) last told it
        self.debouncer = Debouncer()
        self._nginx_address = "127.0.0.1"
        self._nginx_names: tuple[str, ...] = ()
        self.policy = policy_of(settings)
        self.owners = owner_claims.load(self.certs_dir)
        self._owners_saved = 0.0
        self.user_files = hostfiles.UserFiles(self.certs_dir, self.conf_dir)
        self.host_dirs = hostfiles.Dirs(
            settings.vhost_dir, settings.htpasswd_dir, settings.client_ca_dir, settings.proxy_conf
        )

    def self_check_url(self) -> str:
        """Where nginx answers plain HTTP: on this host, or at the nginx container's address."""
        return f"http://{self._nginx_address}:{self.settings.http_port}"

    def wake(self, reason: str = "") -> None:
        log.debug("wake: %s", reason)
        self._last_wake = time.monotonic()
        self._wake.set()

    # -- one pass -------------------------------------------------------------------------------

    def explain(self, name: str) -> Explanation | None:
        """Explain `name` as the last pass decided it (None before the first pass). Runs in the caller's
        thread: it reads the kept inputs once and the ACME state under its own short lock."""
        inputs = self.inputs
        if inputs is None:
            return None
        return with_nodes(
            explain(name, inputs, self.acme.states() if self.acme is not None else {}), self.applier.nodes()
        )

    def self_check_bases(self) -> str | list[str]:
        """Where the ACME self-check reaches nginx: as this process reaches it, or the agents' nodes."""
        return self.applier.self_check_bases(self.self_check_url())

    def run_pass(self) -> PassReport:
        """Converge once. Docker being unreachable keeps everything as it is."""
        try:
            snapshot = self.source.snapshot()
        except DockerUnavailable as exc:
            reason = short_reason(exc)
            self._report({*self._reported, f"cannot reach the Docker daemon ({reason}); keeping the configuration"})
            return PassReport(skipped="docker unavailable")
        impostors = self._locate(snapshot)
        if self.settings.docker_mode and self.applier.nginx_here and not (snapshot.nginx or snapshot.nginx_tasks):
            self._report({*self._reported, NO_NGINX, *impostors})
            return PassReport(skipped="no nginx")
        done, found = self._decide(snapshot)
        result, file_problems = self._apply(done, found)
        problems = set(done.problems) | impostors | file_problems
        if result.error:
            problems.add(result.error)
        self._report(problems)
        if result.ok:
            self._follow(done)
        return PassReport(result=result)

    def _locate(self, snapshot: Snapshot) -> set[str]:
        """Tell the applier where nginx is, keep where the self-check reaches it; the impostors' problems."""
        self.applier.locate(snapshot.nginx)
        self._nginx_names = tuple(info.name for info in snapshot.nginx)
        if not self.settings.docker_mode:
            return set()
        # The self-check reaches nginx on a network we share with it, when we run in a container.
        addresses = sorted(
            (name not in snapshot.own_networks, name, ip)
            for info in snapshot.nginx
            for name, ip in info.networks.items()
            if ip
        )
        if addresses:
            self._nginx_address = addresses[0][2]
        return {
            Problem(
                f"container {info.name}: has the label {NGINX_LABEL} but {reason}; not used as nginx",
                container=info.name,
            )
            for info, reason in snapshot.impostors
        }

    def _decide(self, snapshot: Snapshot) -> tuple[Reconciled, hostfiles.Found]:
        """Read the inputs and reconcile them (pure), with the operator's per-host files found on disk."""
        certs.ensure_placeholder(self.certs_dir)
        inputs, default_problem = read_inputs(
            self.settings,
            snapshot,
            self.policy,
            owner_claims.remembered(self.owners),
            self.certs_dir,
            agents=not self.applier.nginx_here,
        )
        self._nginx_version = self.applier.nginx_version()
        if self._nginx_version is None:
            log.debug("nginx's version unknown; rendering for %s", OLDEST_ASSUMED)
        options = render_options(self.settings, self._nginx_version or OLDEST_ASSUMED, self.applier.relay)
        done = reconcile(inputs, options, default_problem)
        found = hostfiles.scan(self.host_dirs, (server.host for server in done.desired.servers))
        done = done.with_client_certs(found.client_certs)
        self._desired, self._statuses = done.desired, dict(inputs.statuses)
        self.inputs = dataclasses.replace(inputs, client_certs=found.client_certs)
        return done, found

    def _apply(self, done: Reconciled, found: hostfiles.Found) -> tuple[ApplyResult, set[str]]:
        """Apply the rendered files (timed and counted); the problems of the operator's files."""
        started = time.monotonic()
        result, file_problems = self.user_files.apply(found, done.files, self.applier.apply, self.conf_dir)
        self.metrics.apply_seconds.observe(time.monotonic() - started)
        if result.changed:
            self.metrics.reloads.labels("ok" if result.ok else "failed").inc()
        if result.ok:
            self._last_success = time.time()
        if result.changed and result.ok:
            log.info(
                "applied %s (%d sites); %s", ", ".join(result.changed), len(done.desired.servers), self.applier.done
            )
        return result, file_problems

    def _follow(self, done: Reconciled) -> None:
        """After nginx runs the files: remember the owners, order the certificates, watch their expiry."""
        self._remember_owners(done.owners)
        if self.acme is not None:
            self.acme.update(done.certificates, self._statuses)
        if self.expiry is not None:
            self.expiry.check_expiry(in_use(done.desired.servers, self._statuses, self.certs_dir))

    def _remember_owners(self, decided: dict[str, str]) -> None:
        """Saved when an owner changes, and refreshed every OWNER_GRACE/10 while nothing does, so that
        an owner's last-seen time on disk is never far behind."""
        now = time.time()
        merged = owner_claims.merge(self.owners, decided, now)
        changed = owner_claims.remembered(merged) != owner_claims.remembered(self.owners)
        if changed or now - self._owners_saved >= owner_claims.OWNER_GRACE / 10:
            owner_claims.save(self.certs_dir, merged)
            self._owners_saved = now
        self.owners = merged

    def _report(self, problems: set[str]) -> None:
        for line in sorted(problems - self._reported.keys()):
            log.warning("%s", line, extra=fields_of(line))
        for line in sorted(self._reported.keys() - problems):
            log.info("resolved: %s", line, extra=fields_of(line))
        now = time.time()
        self._reported = {line: self._reported.get(line, now) for line in problems}

    def report(self) -> status.Report:
        """The latest pass's report; with agents, their nodes as of now (they report between passes)."""
        return dataclasses.replace(self.latest, nodes=self.applier.nodes())

    def publish(self, report: PassReport | None, started: float, duration: float) -> None:
        """Record the pass and replace the status report (one reference swap: readers never wait)."""
        result = report.result if report is not None else None
        reload = "none"
        if result is not None and result.changed:
            reload = "ok" if result.ok else "failed"
        self._passes.append(
            status.PassView(
                at=status.iso(started),
                duration_seconds=round(duration, 4),
                files_changed=len([name for name in result.changed if name != "reload"]) if result else 0,
                reload=reload,
                skipped=report.skipped if report is not None else "",
                error=(result.error if result else "") if report is not None else "the pass raised; see the log",
            )
        )
        self.latest = status.build(
            now=time.time(),
            desired=self._desired,
            statuses=self._statuses,
            acme_state=self.acme.states() if self.acme is not None else {},
            renew_before_days=self.settings.renew_before_days,
            problems=self._reported,
            passes=reversed(self._passes),
            nginx_version=self._nginx_version,
            nginx_containers=self._nginx_names,
            last_success=self._last_success,
            nodes=self.applier.nodes(),
        )

    # -- the loop --------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        stop_waker = threading.Thread(target=lambda: (stop.wait(), self._wake.set()), daemon=True)
        stop_waker.start()
        self.applier.start()
        self.wake("start")
        retry = 0.0
        while not stop.is_set():
            # After a failed pass (nginx refused, disk full, Docker away) look again soon, backing off.
            timeout = retry or HEARTBEAT_EVERY
            if self.acme is not None:
                due = self.acme.seconds_until_due()
                if due is not None:
                    timeout = max(0.05, min(timeout, due))
            woke = self._wake.wait(timeout)
            if stop.is_set():
                break
            if woke:
                self._settle(stop)
            self._wake.clear()
            started, clock = time.time(), time.monotonic()
            report = None
            try:
                report = self.run_pass()
                failed = bool(report.skipped) or (report.result is not None and not report.result.ok)
                if report.result is not None and report.result.changed:
                    self.debouncer.changed()
            except Exception:  # noqa: BLE001 - the loop must survive any single pass
                log.exception("pass failed; the current configuration stays in place")
                failed = True
            try:
                self.publish(report, started, time.monotonic() - clock)
            except Exception:  # noqa: BLE001 - the status report must never stop the loop
                log.exception("status report not updated")
            retry = min(max(retry * 2, RETRY_FIRST), RETRY_MAX) if failed else 0.0
            self.heartbeat()

    def _settle(self, stop: threading.Event) -> None:
        quiet, longest = self.debouncer.windows()
        start = time.monotonic()
        while not stop.is_set():
            now = time.monotonic()
            since_last = now - self._last_wake
            if since_last >= quiet or now - start >= longest:
                return
            stop.wait(min(quiet - since_last, longest - (now - start)))

    def heartbeat(self) -> None:
        try:
            Path(self.settings.heartbeat_file).write_text(dt.datetime.now(dt.UTC).isoformat() + "\n")
        except OSError as exc:
            log.debug("heartbeat not written: %s", exc)


def read_inputs(
    settings: Settings,
    snapshot: Snapshot,
    policy: Policy,
    remembered: dict[str, str],
    certs_dir: Path,
    agents: bool = False,
) -> tuple[Inputs, str]:
    """What a pass decides from (reads the certs dir and the clock), and the default certificate's problem.

    nginx in a container is reached on its networks (a Swarm service carrying the nginx label counts too);
    with agents (`agents`), backends are reached on the networks the companion's own container is on."""
    nginx_networks: tuple[str, ...] | None
    if settings.docker_mode and not agents:
        nginx_networks = tuple(sorted({n for info in (*snapshot.nginx, *snapshot.nginx_tasks) for n in info.networks}))
        host_address = reach.host_address_from(snapshot.nginx)
    else:
        nginx_networks, host_address = reach.local_reach(snapshot.own)
    default, problem = certs.default_cert(certs_dir)
    inputs = Inputs(
        containers=snapshot.containers,
        statuses=certs.scan(certs_dir),
        certs_dir=certs_dir,
        policy=policy,
        owners=remembered,
        nginx_networks=nginx_networks,
        host_address=host_address,
        default_host=settings.default_host,
        http_on_missing_cert=settings.http_on_missing_cert,
        default_cert=default,
        now=time.time(),
    )
    return inputs, problem


def heartbeat_problem(path: Path, now: dt.datetime) -> str:
    """Why the loop counts as dead ('' while alive): no heartbeat, or none for HEARTBEAT_MAX_AGE."""
    try:
        stamp = dt.datetime.fromisoformat(path.read_text().strip())
    except (OSError, ValueError):
        return f"no heartbeat at {path}"
    age = (now - stamp).total_seconds()
    return f"last loop pass {age:.0f}s ago" if age > HEARTBEAT_MAX_AGE else ""
