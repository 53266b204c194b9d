"""The status report (pure): what the last pass decided and saw, as one immutable, JSON-ready value.

The loop builds a report after every pass from what the pass already has and publishes it; the
status endpoint only reads the latest one, so a slow client can never hold the loop up.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath

from companion.acme.policy import CertState, renew_at
from companion.core.certificates import CertFiles, CertStatus
from companion.core.plan import Desired
from companion.core.ports import NodeView

VERSION = 1
PASSES_KEPT = 20


@dataclass(frozen=True)
class Backend:
    container: str
    address: str  # "" when nginx cannot reach the container
    port: int


@dataclass(frozen=True)
class PathView:
    path: str
    proto: str
    backends: tuple[Backend, ...]


@dataclass(frozen=True)
class SiteView:
    host: str
    https_method: str
    certificate: str  # lineage name, "" for none (HTTP only)
    placeholder: bool
    default: bool
    paths: tuple[PathView, ...]


@dataclass(frozen=True)
class LeftOut:
    container: str
    reason: str


@dataclass(frozen=True)
class CertView:
    name: str
    names: tuple[str, ...]
    issuer: str
    not_after: str  # ISO 8601 UTC, "" when there is no usable certificate
    days_left: float | None
    state: str  # valid, placeholder, renewing or failing
    problem: str  # why the files on disk are unusable
    failures: int
    last_error: str
    next_try: str  # ISO 8601 UTC of the next attempt while failing
    renew_at: str  # ISO 8601 UTC of the planned renewal while valid
    serves: tuple[str, ...] = ()  # the sites (hosts) nginx presents it for: a wildcard serves several
    profile: str = ""  # the CA profile it was ordered under (certbot's renewal file); "" for the CA's default


@dataclass(frozen=True)
class ProblemView:
    """A warning as the status page shows it: its text (core/problems.Problem is the warning itself) and since when."""

    text: str
    since: str  # when it appeared, ISO 8601 UTC


@dataclass(frozen=True)
class PassView:
    at: str
    duration_seconds: float
    files_changed: int
    reload: str  # ok, failed or none
    skipped: str
    error: str


@dataclass(frozen=True)
class NginxView:
    version: str
    containers: tuple[str, ...]


@dataclass(frozen=True)
class Report:
    generated_at: str
    sites: tuple[SiteView, ...]
    left_out: tuple[LeftOut, ...]
    certificates: tuple[CertView, ...]
    problems: tuple[ProblemView, ...]
    passes: tuple[PassView, ...]
    nginx: NginxView
    last_success: str  # when a pass last applied without error, "" before the first
    nodes: tuple[NodeView, ...] = ()  # Swarm: one per node's agent
    version: int = VERSION

    def to_json(self) -> dict[str, object]:
        return asdict(self)


EMPTY = Report("", (), (), (), (), (), NginxView("", ()), "")


def iso(unix: float) -> str:
    return dt.datetime.fromtimestamp(unix, dt.UTC).isoformat(timespec="seconds") if unix else ""


def lineage_name(files: CertFiles | None) -> str:
    """live/<name>/fullchain.pem -> <name>; the placeholder and default certificates by their folder or file."""
    if files is None:
        return ""
    path = PurePosixPath(files.fullchain)
    return path.parent.name if path.name == "fullchain.pem" else path.name


def cert_state(status: CertStatus | None, entry: CertState) -> str:
    """One word for a certificate: what an order is doing, else whether a usable certificate is on disk."""
    if entry.in_progress:
        return "renewing"
    if entry.failures:
        return "failing"
    if status is None or status.problem or status.not_after is None:
        return "placeholder"
    return "valid"


def served_by(desired: Desired) -> dict[str, tuple[str, ...]]:
    """Lineage name -> the hosts nginx presents it for (a placeholder serves nobody as a certificate)."""
    served: dict[str, list[str]] = {}
    for server in desired.servers:
        if server.cert is not None and not server.placeholder:
            served.setdefault(lineage_name(server.cert), []).append(server.host)
    return {name: tuple(hosts) for name, hosts in served.items()}


def sites(desired: Desired) -> tuple[SiteView, ...]:
    return tuple(
        SiteView(
            host=server.host,
            https_method=str(server.https_method),
            certificate=lineage_name(server.cert),
            placeholder=server.placeholder,
            default=server.default,
            paths=tuple(
                PathView(loc.path, str(loc.proto), tuple(Backend(*backend) for backend in loc.backends))
                for loc in server.locations
            ),
        )
        for server in desired.servers
    )


def certificates(
    statuses: Mapping[str, CertStatus],
    state: Mapping[str, CertState],
    wanted: Iterable[str],
    now: dt.datetime,
    renew_before_days: float,
    served: Mapping[str, tuple[str, ...]] | None = None,
) -> tuple[CertView, ...]:
    """Every lineage on disk, ordered or wanted by a container, by name; `served` names each one's sites."""
    views = []
    for name in sorted(set(statuses) | set(state) | set(wanted)):
        status = statuses.get(name)
        entry = state.get(name, CertState())
        shown = cert_state(status, entry)
        usable = status is not None and not status.problem and status.not_after is not None
        not_after = status.not_after if usable and status is not None else None
        views.append(
            CertView(
                name=name,
                names=status.domains if status is not None and status.domains else tuple(entry.domains),
                issuer=status.issuer if status is not None else "",
                not_after=not_after.isoformat(timespec="seconds") if not_after else "",
                days_left=round((not_after - now).total_seconds() / 86400, 2) if not_after else None,
                state=shown,
                problem=status.problem if status is not None else "",
                failures=entry.failures,
                last_error=entry.last_error,
                next_try=iso(entry.next_try) if shown == "failing" else "",
                renew_at=renew_at(status, renew_before_days).isoformat(timespec="seconds")
                if usable and status is not None and status.not_before is not None
                else "",
                serves=(served or {}).get(name, ()),
                profile=status.profile if status is not None else "",
            )
        )
    return tuple(views)


def build(
    *,
    now: float,
    desired: Desired | None,
    statuses: Mapping[str, CertStatus],
    acme_state: Mapping[str, CertState],
    renew_before_days: float,
    problems: Mapping[str, float],
    passes: Iterable[PassView],
    nginx_version: tuple[int, ...] | None,
    nginx_containers: Iterable[str],
    last_success: float,
    nodes: tuple[NodeView, ...] = (),
) -> Report:
    """The report for one pass. `desired` is None until a pass got as far as planning; `problems` maps each
    current problem to the unix time it appeared."""
    wanted = [request.name for request in desired.certificates] if desired is not None else []
    return Report(
        generated_at=iso(now),
        sites=sites(desired) if desired is not None else (),
        left_out=tuple(LeftOut(*pair) for pair in desired.left_out) if desired is not None else (),
        certificates=certificates(
            statuses,
            acme_state,
            wanted,
            dt.datetime.fromtimestamp(now, dt.UTC),
            renew_before_days,
            served_by(desired) if desired is not None else None,
        ),
        problems=tuple(
            ProblemView(text, iso(since)) for text, since in sorted(problems.items(), key=lambda p: p[::-1])
        ),
        passes=tuple(passes),
        nginx=NginxView(".".join(map(str, nginx_version)) if nginx_version else "", tuple(nginx_containers)),
        last_success=iso(last_success),
        nodes=nodes,
    )
