"""Command line: run (the service), render (print what would be written), certs, renew, check, explain."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import http.client
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from companion.acme import certs, imports
from companion.acme.alerts import Notifier
from companion.acme.dns import credentials_problem
from companion.acme.orders import AcmeManager, load_state
from companion.acme.policy import CertState, certbot_command, certbot_reason, describe, due_reason, lineage_request
from companion.cluster import agent
from companion.cluster import secret as cluster
from companion.cluster.publisher import ClusterPublisher, ClusterServer, start_cluster_server
from companion.core.inputs import Inputs
from companion.core.ports import Snapshot
from companion.core.values import Challenge
from companion.core.variables import setting_problems
from companion.loop import owners
from companion.loop.controller import Controller, heartbeat_problem, read_inputs
from companion.loop.reconcile import Reconciled, policy_of, reconcile, render_options
from companion.nginx import hostfiles
from companion.nginx.apply import OLDEST_ASSUMED, LocalApplier, NginxControl
from companion.nginx.render import MAIN_FILE
from companion.observe import explain, logformat
from companion.observe import status as status_report
from companion.serve import client as service
from companion.serve import supervisor
from companion.serve.control import start_control_server
from companion.serve.htpasswd import MAX_BYTES as HTPASSWD_MAX_BYTES
from companion.serve.htpasswd import Gate, HtpasswdError, parse
from companion.serve.statusserver import start_status_server
from companion.settings import config
from companion.sources.docker import DockerEdge, DockerUnavailable, wait_for_daemon
from companion.sources.swarm import SwarmSource
from companion.sources.watch import watch_certs, watch_host_files
from companion.util.logsafe import printable
from companion.util.safefiles import read_regular

log = logging.getLogger("companion")


def build_parser() -> argparse.ArgumentParser:
    """Settings flags work before or after the command (`companion --conf-dir X run` or `run --conf-dir X`).

    Abbreviations are off: with many `--allowed-*` settings, `render --all` was read as an ambiguous prefix.
    """
    settings = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    config.add_arguments(settings)
    parser = argparse.ArgumentParser(prog="companion", description=__doc__, parents=[settings], allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", parents=[settings], help="watch Docker and keep nginx and certificates in line")
    render = sub.add_parser(
        "render", parents=[settings], allow_abbrev=False, help="print the nginx configuration it would write"
    )
    render.add_argument("--all", action="store_true", help="print the included snippets too")
    sub.add_parser("certs", parents=[settings], help="list managed certificates and their state")
    renew = sub.add_parser("renew", parents=[settings], help="renew now (the running service reloads nginx)")
    renew.add_argument("--force", action="store_true", help="renew even when not due")
    renew.add_argument("name", nargs="?", default="", help="only this certificate")
    check = sub.add_parser("check", parents=[settings], help="exit 0 when the service's loop is alive (HEALTHCHECK)")
    check.add_argument(
        "--nginx", action="store_true", help="and nginx answers HTTP on 127.0.0.1:HTTP_PORT (single-container image)"
    )
    sub.add_parser(
        "proxy",
        parents=[settings],
        help="run nginx and the companion together, as PID 1 of the single-container image",
    )
    explainer = sub.add_parser("explain", parents=[settings], help="why a container or host is served or left out")
    explainer.add_argument("name", help="a container name or id prefix, or a host name")
    sub.add_parser(
        "agent", parents=[settings], help="Swarm node: run nginx and keep it in line with the controller's files"
    )
    secrets = sub.add_parser(
        "cluster-secret", help="make a Swarm cluster's controller and agent secrets from fresh keys"
    ).add_mutually_exclusive_group(required=True)
    secrets.add_argument(
        "--create",
        action="store_true",
        help="as Docker secrets companion_controller and companion_agent (DOCKER_HOST: a manager)",
    )
    secrets.add_argument("--out", metavar="DIR", help="as files DIR/companion_controller and DIR/companion_agent")
    return parser


def load_gate(path: str) -> Gate:
    """The STATUS_AUTH users, read once at start (no link followed); an unusable file stops the service."""
    return Gate(parse(read_regular(Path(path), HTPASSWD_MAX_BYTES).decode("utf-8", "replace")))


def edge_for(settings: config.Settings) -> DockerEdge:
    return DockerEdge(settings.nginx_container, settings.conf_dir, settings.image_trust)


def make_applier(settings: config.Settings, edge: DockerEdge | None) -> LocalApplier:
    control = NginxControl(
        settings.nginx_test,
        settings.reload,
        exec_in=edge.exec if edge else None,
        signal=edge.signal if edge else None,
    )
    return LocalApplier(Path(settings.conf_dir), control)


def inputs_here(settings: config.Settings, snapshot: Snapshot) -> tuple[Inputs, str]:
    """A pass's inputs computed in this process, with the owners the service remembers on disk and the hosts
    the operator's files make require a client certificate (as a pass reads them, after the plan names the hosts)."""
    certs_dir = Path(settings.certs_dir)
    remembered = owners.remembered(owners.load(certs_dir))
    inputs, problem = read_inputs(settings, snapshot, policy_of(settings), remembered, certs_dir)
    found = hostfiles.scan(host_dirs(settings), (server.host for server in inputs.desired().servers))
    return dataclasses.replace(inputs, client_certs=found.client_certs), problem


def host_dirs(settings: config.Settings) -> hostfiles.Dirs:
    return hostfiles.Dirs(settings.vhost_dir, settings.htpasswd_dir, settings.client_ca_dir, settings.proxy_conf)


def reconciled_here(settings: config.Settings, edge: DockerEdge, snapshot: Snapshot) -> Reconciled:
    """What a pass would decide now, computed in this process (render, certs): no Controller, nothing written."""
    applier = make_applier(settings, edge)
    applier.locate(snapshot.nginx)
    inputs, default_problem = inputs_here(settings, snapshot)
    return reconcile(inputs, render_options(settings, applier.nginx_version() or OLDEST_ASSUMED), default_problem)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = config.load(args)
    except config.SettingsError as exc:
        print(f"companion: invalid setting: {exc}", file=sys.stderr)
        return 2
    logformat.setup(settings.log_level, settings.own_log_format)
    for noisy in ("urllib3", "docker", "watchdog"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.command == "proxy":
        # Checked above, so a bad setting stops the container at once; `companion run` reads the same flags
        # (and the environment it inherits) itself.
        return supervisor.main(supervisor.settings_flags(sys.argv[1:] if argv is None else argv))
    handler = {
        "run": cmd_run,
        "render": cmd_render,
        "check": cmd_check,
        "certs": cmd_certs,
        "renew": cmd_renew,
        "explain": cmd_explain,
        "agent": cmd_agent,
        "cluster-secret": cmd_cluster_secret,
    }[args.command]
    return handler(args, settings)


def cmd_render(args: argparse.Namespace, settings: config.Settings) -> int:
    try:
        edge = edge_for(settings)
        snapshot = SwarmSource(edge).snapshot()
    except DockerUnavailable as exc:
        print(f"companion: cannot reach the Docker daemon: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    done = reconciled_here(settings, edge, snapshot)
    for problem in done.desired.problems:
        print(f"# {problem}", file=sys.stderr)
    certs_dir, conf_dir = Path(settings.certs_dir), Path(settings.conf_dir)
    user, _ = hostfiles.UserFiles(certs_dir, conf_dir).choose(
        hostfiles.scan(host_dirs(settings), (server.host for server in done.desired.servers))
    )
    for name, content in done.files(user).items():
        if name == MAIN_FILE or (args.all and name.endswith(".inc")):
            if args.all:
                print(f"# ---- {name}")
            sys.stdout.write(content)
    return 0


def cmd_explain(args: argparse.Namespace, settings: config.Settings) -> int:
    """0 when served, 1 when left out, 2 when the name is unknown or Docker cannot be asked.

    The running service is asked first, so the answer is what it decided; when nothing listens there, the
    same rules run on a fresh snapshot here. A service that answers but cannot be used (a password refused,
    say) is an error that says why: a fresh snapshot could tell another story than the service's."""
    address = service.status_address(settings)
    if address is not None:
        url = service.url_of(address, "/explain")
        try:
            lines, code = service.ask_explain(address, args.name, service.read_credentials(settings.status_credentials))
        except service.BadCredentials as exc:
            print(f"companion: cannot ask the service at {url}: {printable(str(exc))}", file=sys.stderr)
            return 2
        except service.NoService as exc:
            print(f"# the service did not answer at {url} ({printable(str(exc))})")
        except service.NoAnswer as exc:
            print(f"companion: the service at {url} did not explain: {printable(str(exc))}", file=sys.stderr)
            return 2
        else:
            print(f"# asked the running service at {url}")
            for line in lines:
                print(printable(line))
            return code
    try:
        edge = edge_for(settings)
        snapshot = SwarmSource(edge).snapshot()
    except DockerUnavailable as exc:
        print(f"companion: cannot reach the Docker daemon: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    inputs, _ = inputs_here(settings, snapshot)
    found = explain.explain(args.name, inputs, load_state(Path(settings.certs_dir)))
    print(f"# {explain.SOURCE}")
    sys.stdout.write(found.text())
    return found.exit_code


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM (docker stop) or SIGINT (Ctrl-C): the long-running commands finish their
    current step and exit cleanly instead of dying mid-write."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def cmd_run(args: argparse.Namespace, settings: config.Settings) -> int:
    stop = stop_on_signals()
    for problem in setting_problems(os.environ):
        log.warning("%s", problem)
    try:
        gate = load_gate(settings.status_auth) if settings.status_auth else None
    except (OSError, HtpasswdError) as exc:
        log.error(
            "STATUS_AUTH %s cannot be used: %s", settings.status_auth, exc.strerror if isinstance(exc, OSError) else exc
        )
        return 2
    edge = wait_for_daemon(lambda: edge_for(settings), stop)
    if edge is None:
        return 0
    log.info("connected to the Docker daemon; conf dir %s, certs dir %s", settings.conf_dir, settings.certs_dir)
    imports.import_all(Path(settings.certs_dir))  # before the first pass: an imported pair is not ordered
    notifier = None
    if settings.notify_urls:
        notifier = Notifier(settings.notify_urls, Path(settings.certs_dir), settings.notify_expiry_days)
    try:
        cluster_server = start_cluster(settings) if settings.cluster_listen else None
    except (OSError, cluster.SecretError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        log.error("cannot serve agents on %s: %s", settings.cluster_listen, reason)
        return 2
    source = SwarmSource(edge)
    applier = cluster_server.publisher if cluster_server is not None else make_applier(settings, edge)
    controller = Controller(settings, source, applier, expiry=notifier)
    try:
        server = start_status_server(settings, controller, gate) if settings.status_listen else None
    except OSError as exc:
        log.error("cannot listen on %s for the status page: %s", settings.status_listen, exc.strerror or exc)
        return 1
    metrics = controller.metrics
    acme = AcmeManager(
        settings,
        controller.wake,
        controller.self_check_bases,
        on_order=lambda ok: metrics.orders.labels("ok" if ok else "failed").inc(),
        notify=notifier.send if notifier else None,
    )
    controller.acme = acme
    observer = watch_certs(Path(settings.certs_dir), controller.wake)  # makes the certs dir's folders
    host_files = watch_host_files(controller.host_dirs, controller.wake)
    control = start_control_server(Path(settings.control_socket), Path(settings.certs_dir), acme.order_now)

    def on_event(reason: str) -> None:
        if reason != "events-connected":  # the stream (re)connecting, not an event
            metrics.docker_events.inc()
        controller.wake(reason)

    source.watch(on_event, stop)
    try:
        controller.run(stop)
    finally:
        if server is not None:
            server.shutdown()
        if cluster_server is not None:
            cluster_server.shutdown()
        if control is not None:
            control.stop()
        acme.stop()
        observer.stop()
        host_files.stop()
        if notifier is not None:
            notifier.stop()
    log.info("stopped")
    return 0


def start_cluster(settings: config.Settings) -> ClusterServer:
    """The controller's side of Swarm: publish each pass to the agents over mutual TLS."""
    secret = cluster.load_controller_secret(settings.cluster_secret_file)
    publisher = ClusterPublisher(settings.conf_dir, settings.certs_dir, settings.webroot, settings.http_port)
    return start_cluster_server(config.parse_listen(settings.cluster_listen, "cluster listen"), publisher, secret)


SECRET_NAMES = ("companion_controller", "companion_agent")


def cmd_cluster_secret(args: argparse.Namespace, settings: config.Settings) -> int:
    """Both secrets of one cluster, made together from fresh keys, written where no terminal or log sees them:
    as Docker secrets on the manager (`--create`), or as 0600 files (`--out`). Nothing is replaced."""
    made = cluster.new_secrets()
    contents = dict(zip(SECRET_NAMES, (made.text(), made.agent.text()), strict=True))
    if args.out:
        folder = Path(args.out)
        existing = [name for name in SECRET_NAMES if (folder / name).exists()]
        if existing:
            print(f"companion: {folder / existing[0]} exists; nothing written", file=sys.stderr)
            return 1
        for name, text in contents.items():
            fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
        print(f"wrote {', '.join(str(folder / name) for name in SECRET_NAMES)}")
        return 0
    import docker  # only here: the other commands reach Docker through DockerEdge

    client = docker.from_env()
    try:
        existing = [s.name for s in client.secrets.list() if s.name in SECRET_NAMES]
        if existing:
            print(f"companion: the Docker secret {existing[0]} exists; nothing created", file=sys.stderr)
            return 1
        for name, text in contents.items():
            client.secrets.create(name=name, data=text.encode())
    except docker.errors.DockerException as exc:
        print(f"companion: cannot create the secrets: {printable(str(exc))}", file=sys.stderr)
        return 1
    finally:
        client.close()
    print(f"created the Docker secrets {' and '.join(SECRET_NAMES)}")
    return 0


def cmd_agent(args: argparse.Namespace, settings: config.Settings) -> int:
    """Run nginx as a child and keep it serving the controller's latest good generation (see agent.py)."""
    stop = stop_on_signals()
    try:
        secret = cluster.load_agent_secret(settings.cluster_secret_file)
        node = agent.node_name(settings)
        runner = agent.Agent(settings, secret, node, agent.ChildNginx())
    except (cluster.SecretError, ValueError, OSError) as exc:
        log.error("cannot start the agent: %s", printable(str(exc)))
        return 2
    code = runner.run(stop)
    log.info("stopped")
    return code


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
    """One row per certificate on disk or ordered: name, names, issuer, not-after, days left, state."""
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
        rows.append((name, names, status.issuer if status and status.issuer else "-", expiry, days, shown))
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
    rows = [("NAME", "NAMES", "ISSUER", "NOT AFTER (UTC)", "DAYS LEFT", "STATE")]
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
    """Renew lineages on disk with a certbot of our own, one at a time, when no service runs."""
    certs_dir = Path(settings.certs_dir)
    statuses = certs.scan(certs_dir)
    names = [args.name] if args.name else sorted(n for n in statuses if not n.startswith("companion"))
    failed = 0
    now = dt.datetime.now(dt.UTC)
    for name in names:
        status = statuses.get(name)
        if status is None or not status.domains:
            print(f"companion: no usable certificate {name!r} in {certs_dir / 'live'}", file=sys.stderr)
            failed += 1
            continue
        # The lineage keeps its CA and the account that ordered it (certbot's renewal file).
        request = lineage_request(settings, name, status.domains, status.server)
        if not args.force and not due_reason(request, status, now, settings.renew_before_days):
            print(f"{name}: not due (expires {status.not_after:%Y-%m-%d})")
            continue
        refused = credentials_problem(settings.dns_credentials) if request.challenge is Challenge.DNS01 else ""
        if refused:
            print(f"{name}: renewal refused: {refused}", file=sys.stderr)
            failed += 1
            continue
        env = dict(os.environ)
        if settings.ca_bundle:
            env["REQUESTS_CA_BUNDLE"] = settings.ca_bundle
        done = subprocess.run(
            certbot_command(settings, request, force=True, account=status.account),
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if done.returncode:
            print(f"{name}: renewal failed: {certbot_reason(done.stdout + done.stderr)}", file=sys.stderr)
            failed += 1
        else:
            certs.tighten(certs_dir, name)
            print(f"{name}: renewed")
    return 1 if failed else 0
