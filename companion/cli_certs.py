"""The commands an operator runs about certificates and health: check, certs and renew (through the
control socket, or through the worker's own Orderer when no service runs)."""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import sys
from pathlib import Path

from companion.acme import certs
from companion.acme.ordering import Orderer
from companion.acme.orders import load_state
from companion.acme.policy import CertState, describe, due_reason, lineage_request
from companion.loop.controller import heartbeat_problem
from companion.observe import status as status_report
from companion.serve import client as service
from companion.settings import config
from companion.sources.daemon import DockerUnavailable
from companion.sources.swarm import SwarmSource
from companion.util.logsafe import printable
from companion.wiring import edge_for, reconciled_here


def cmd_check(args: argparse.Namespace, settings: config.Settings) -> int:
    problem = heartbeat_problem(Path(settings.heartbeat_file), dt.datetime.now(dt.UTC))
    if not problem and args.nginx:
        problem = nginx_problem(settings.http_port)
    if problem:
        print(f"companion: {problem}", file=sys.stderr)
        return 1
    return 0


def nginx_problem(port: int) -> str:
    """Why nginx counts as dead ('' when it answers): any HTTP answer on loopback will do, even a 503."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": "companion-healthcheck.invalid"})
        conn.getresponse().read()
    except (OSError, http.client.HTTPException) as exc:
        return f"nginx does not answer on 127.0.0.1:{port} ({exc})"
    finally:
        conn.close()
    return ""


def cert_rows(settings: config.Settings, now: dt.datetime) -> list[tuple[str, ...]]:
    """One row per certificate on disk or ordered: name, names, issuer, profile, not-after, days left, state."""
    certs_dir = Path(settings.certs_dir)
    statuses = certs.scan(certs_dir)
    state = load_state(certs_dir)
    rows = []
    for name in sorted(set(statuses) | set(state)):
        status = statuses.get(name)
        entry = state.get(name, CertState())
        shown = describe(status, entry)
        if status is not None and status.not_after is not None:
            expiry = f"{status.not_after:%Y-%m-%d %H:%M}"
            days = f"{(status.not_after - now).total_seconds() / 86400:.1f}"
            names = ",".join(status.domains)
        else:
            expiry, days, names = "-", "-", ",".join(entry.domains)
        issuer = status.issuer if status and status.issuer else "-"
        rows.append((name, names, issuer, status.profile if status and status.profile else "-", expiry, days, shown))
    return rows


def served_now(settings: config.Settings) -> dict[str, tuple[str, ...]] | None:
    """Which sites each certificate serves, decided from a fresh snapshot as `render` does; None without Docker."""
    try:
        edge = edge_for(settings)
        snapshot = SwarmSource(edge).snapshot()
    except DockerUnavailable as exc:
        print(f"# sites not shown: cannot reach the Docker daemon: {str(exc).splitlines()[0]}", file=sys.stderr)
        return None
    return status_report.served_by(reconciled_here(settings, edge, snapshot).desired)


def cmd_certs(args: argparse.Namespace, settings: config.Settings) -> int:
    """The table of certificates; under each one the sites nginx presents it for (a wildcard serves several)."""
    rows = [("NAME", "NAMES", "ISSUER", "PROFILE", "NOT AFTER (UTC)", "DAYS LEFT", "STATE")]
    rows += cert_rows(settings, dt.datetime.now(dt.UTC))
    print_table(rows, served_now(settings) or {})
    address = service.status_address(settings)
    if address is not None:
        try:
            nodes = service.ask_nodes(address, service.read_credentials(settings.status_credentials))
        except service.NoService:
            nodes = []
        except (service.NoAnswer, service.BadCredentials) as exc:
            print(f"# Swarm nodes not shown: {printable(str(exc))}", file=sys.stderr)
            nodes = []
        if nodes:
            print(f"\n# Swarm nodes, as the running service at {service.url_of(address, '/')} last heard from them")
            print_table(
                [("NODE", "ADDRESS", "GENERATION", "NGINX", "LAST SEEN (UTC)", "LAST ERROR")] + node_rows(nodes)
            )
    return 0


def node_rows(nodes: list[dict[str, object]]) -> list[tuple[str, ...]]:
    """One row per node: its agent's address, the generation it serves (and whether current), its last error."""
    rows = []
    for node in nodes:
        generation = str(node.get("generation") or "none") + ("" if node.get("current") else " (behind)")
        seen = str(node.get("last_seen", "")) + ("" if node.get("up") else " (away)")
        fields = (node.get("node"), node.get("address"), generation, node.get("nginx_version"), seen)
        rows.append((*(printable(str(v or "-")) for v in fields), printable(str(node.get("error") or "-"))))
    return rows


def print_table(rows: list[tuple[str, ...]], serves: dict[str, tuple[str, ...]] | None = None) -> None:
    """Columns padded to their widest cell; under a row whose first cell `serves` names, the sites it serves."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1])
        if serves and serves.get(row[0]):
            print(f"  serves: {', '.join(serves[row[0]])}")


def cmd_renew(args: argparse.Namespace, settings: config.Settings) -> int:
    """Renew through the running service when one listens on the control socket: one ordering path (its
    lock, self-check, backoff and state file), and its watcher reloads nginx. Without one, renew here."""
    certs_dir = Path(settings.certs_dir)
    serials = {name: status.serial for name, status in certs.scan(certs_dir).items()}
    where = Path(settings.control_socket)
    try:
        orders = service.ask_renew(where, [args.name] if args.name else [], args.force)
    except service.NoService:
        return renew_here(args, settings)
    except service.NoAnswer as exc:
        print(f"companion: the service did not answer on {where}: {printable(str(exc))}", file=sys.stderr)
        return 1
    print(f"# asked the running service at {where}")
    failed = 0
    waiting = []
    for name, answer in sorted(orders.items()):
        if answer in ("queued", "in progress"):
            waiting.append(name)
        elif answer.startswith("not due"):
            print(f"{printable(name)}: {printable(answer)}")
        else:
            print(f"companion: {printable(answer)}", file=sys.stderr)
            failed += 1
    for name, error in sorted(service.wait_for_orders(certs_dir, waiting, serials).items()):
        if error:
            print(f"{printable(name)}: renewal failed: {printable(error)}", file=sys.stderr)
            failed += 1
        else:
            print(f"{printable(name)}: renewed")
    return 1 if failed else 0


def renew_here(args: argparse.Namespace, settings: config.Settings) -> int:
    """Renew lineages on disk when no service runs, through the worker's own Orderer.order (its checks,
    certbot command and folder permissions), one at a time. There is no nginx of ours to ask, so HTTP-01 is
    not self-checked; each lineage keeps its CA, profile and the account that ordered it (certbot's renewal file)."""
    certs_dir = Path(settings.certs_dir)
    statuses = certs.scan(certs_dir)
    names = [args.name] if args.name else sorted(n for n in statuses if not n.startswith("companion"))
    failed = 0
    now = dt.datetime.now(dt.UTC)
    orderer = Orderer(settings)
    try:
        for name in names:
            status = statuses.get(name)
            if status is None or not status.domains:
                print(f"companion: no usable certificate {name!r} in {certs_dir / 'live'}", file=sys.stderr)
                failed += 1
                continue
            request = lineage_request(settings, name, status.domains, status.server, status.profile)
            if not args.force and not due_reason(request, status, now, settings.renew_before_days):
                print(f"{name}: not due (expires {status.not_after:%Y-%m-%d})")
                continue
            outcome = orderer.order(request, force=True, account=status.account)
            if outcome.refused:
                print(f"{name}: renewal refused: {outcome.refused}", file=sys.stderr)
            elif outcome.failed:
                print(f"{name}: renewal failed: {outcome.failed}", file=sys.stderr)
            else:
                print(f"{name}: renewed")
            failed += bool(outcome.error)
    finally:
        orderer.stop(timeout=3.0)
    return 1 if failed else 0
