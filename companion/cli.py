"""Command line: run (the service), render (print what would be written), certs, renew, check, explain."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from companion.acme import imports
from companion.acme.alerts import Notifier
from companion.acme.orders import AcmeManager, load_state
from companion.cli_certs import cmd_certs, cmd_check, cmd_renew
from companion.cluster import agent
from companion.cluster import secret as cluster
from companion.cluster.publisher import ClusterPublisher, ClusterServer, start_cluster_server
from companion.core.variables import setting_problems
from companion.loop.controller import Controller
from companion.nginx import hostfiles
from companion.nginx.render import MAIN_FILE
from companion.observe import explain, logformat
from companion.serve import client as service
from companion.serve import supervisor
from companion.serve.control import start_control_server
from companion.serve.htpasswd import MAX_BYTES as HTPASSWD_MAX_BYTES
from companion.serve.htpasswd import Gate, HtpasswdError, parse
from companion.serve.statusserver import start_status_server
from companion.settings import config
from companion.sources.daemon import DockerUnavailable, wait_for_daemon
from companion.sources.swarm import SwarmSource
from companion.sources.watch import watch_certs, watch_host_files
from companion.util.logsafe import printable
from companion.util.safefiles import read_regular
from companion.wiring import edge_for, host_dirs, inputs_here, make_applier, reconciled_here

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
