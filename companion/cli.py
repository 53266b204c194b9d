"""Command line: run (the service), render (print what would be written), certs, renew, check."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import signal
import sys
import threading
from pathlib import Path

from . import config
from .controller import Controller
from .docker import DockerEdge, DockerUnavailable, wait_for_daemon
from .nginx import NginxControl
from .render import MAIN_FILE

log = logging.getLogger("companion")
HEARTBEAT_MAX_AGE = 120.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="companion", description=__doc__)
    config.add_arguments(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="watch Docker and keep nginx and certificates in line (the service)")
    render = sub.add_parser("render", help="print the nginx configuration for the running containers")
    render.add_argument("--all", action="store_true", help="print the included snippets too")
    sub.add_parser("check", help="exit 0 when the running service's loop is alive (for HEALTHCHECK)")
    return parser


def make_control(settings: config.Settings, edge: DockerEdge | None) -> NginxControl:
    return NginxControl(
        settings.nginx_test,
        settings.reload,
        exec_in=edge.exec if edge else None,
        signal=edge.signal if edge else None,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = config.load(args)
    except config.SettingsError as exc:
        print(f"companion: invalid setting: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    handler = {"run": cmd_run, "render": cmd_render, "check": cmd_check}[args.command]
    return handler(args, settings)


def cmd_render(args: argparse.Namespace, settings: config.Settings) -> int:
    try:
        edge = DockerEdge(settings.nginx_container)
        snapshot = edge.snapshot()
    except DockerUnavailable as exc:
        print(f"companion: cannot reach the Docker daemon: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    controller = Controller(settings, edge, make_control(settings, edge))
    controller.control.containers = [info.id for info in snapshot.nginx]
    desired, _ = controller.desired_state(snapshot)
    for problem in desired.problems:
        print(f"# {problem}", file=sys.stderr)
    files = controller.render_files(desired)
    for name, content in files.items():
        if name == MAIN_FILE or (args.all and name.endswith(".inc")):
            if args.all:
                print(f"# ---- {name}")
            sys.stdout.write(content)
    return 0


def cmd_run(args: argparse.Namespace, settings: config.Settings) -> int:
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s, stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    edge = wait_for_daemon(lambda: DockerEdge(settings.nginx_container), stop)
    if edge is None:
        return 0
    log.info("connected to the Docker daemon; conf dir %s, certs dir %s", settings.conf_dir, settings.certs_dir)
    controller = Controller(settings, edge, make_control(settings, edge))
    edge.watch_events(controller.wake, stop)
    controller.run(stop)
    log.info("stopped")
    return 0


def cmd_check(args: argparse.Namespace, settings: config.Settings) -> int:
    path = Path(settings.heartbeat_file)
    try:
        stamp = dt.datetime.fromisoformat(path.read_text().strip())
    except (OSError, ValueError):
        print(f"companion: no heartbeat at {path}", file=sys.stderr)
        return 1
    age = (dt.datetime.now(dt.UTC) - stamp).total_seconds()
    if age > HEARTBEAT_MAX_AGE:
        print(f"companion: last loop pass {age:.0f}s ago", file=sys.stderr)
        return 1
    return 0
