"""`companion proxy`: PID 1 of the single-container image (nginx and the companion in one container).

It starts nginx in the foreground and then `companion run`, forwards the stop signal Docker sends,
reaps orphaned processes (as PID 1 must), and exits non-zero as soon as either child dies on its own:
the other one is stopped too, so a crash is never hidden behind a half-working container and Docker's
restart policy starts both afresh.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("companion.proxy")

NGINX_PID_FILE = Path("/run/nginx.pid")
STOP_GRACE = 20  # seconds the children get to stop before they are killed
NGINX_START_WAIT = 10.0  # seconds nginx gets to write its pid file before the companion starts anyway


@dataclass(frozen=True)
class Child:
    """A supervised program and the signal that stops it gracefully."""

    name: str
    argv: tuple[str, ...]
    stop_signal: signal.Signals


def children(companion_args: Sequence[str]) -> tuple[Child, Child]:
    """nginx (SIGQUIT: finish the requests in flight) and the companion with the given settings flags."""
    nginx = Child("nginx", ("nginx", "-g", "daemon off;"), signal.SIGQUIT)
    companion = Child("companion", (sys.executable, "-m", "companion", *companion_args, "run"), signal.SIGTERM)
    return nginx, companion


def settings_flags(argv: Sequence[str]) -> list[str]:
    """`companion [flags] proxy [flags]` without the command word, for `companion [flags] run`. Every
    settings flag takes a value (`--flag value` or `--flag=value`), so the command is the first bare word."""
    flags = list(argv)
    index = 0
    while index < len(flags):
        if not flags[index].startswith("--"):
            return flags[:index] + flags[index + 1 :]
        index += 1 if "=" in flags[index] else 2
    return flags


def status_code(wait_status: int) -> int:
    """A child's exit code from os.wait's status; a death by signal N counts as 128 + N, as in a shell."""
    code = os.waitstatus_to_exitcode(wait_status)
    return 128 - code if code < 0 else code


def final_code(first_death: tuple[str, int] | None, codes: dict[str, int]) -> int:
    """The supervisor's exit code: a child that died on its own makes it fail (1 if that child exited 0:
    nginx or the companion ending unasked is a failure too); after a requested stop, the first non-zero code."""
    if first_death is not None:
        return first_death[1] or 1
    return next((code for code in codes.values() if code), 0)


class Supervisor:
    """Runs the children and waits for them; signal handlers only set state and forward signals."""

    def __init__(self, programs: Sequence[Child], pid_file: Path = NGINX_PID_FILE) -> None:
        self.programs = programs
        self.pid_file = pid_file
        self.running: dict[int, Child] = {}
        self.stopping = False

    def _stop_all(self) -> None:
        self.stopping = True
        for pid, child in self.running.items():
            _signal(pid, child.stop_signal)
        signal.alarm(STOP_GRACE)

    def _on_stop(self, signum: int, _frame: object) -> None:
        log.info("received %s, stopping nginx and the companion", signal.Signals(signum).name)
        self._stop_all()

    def _on_hup(self, _signum: int, _frame: object) -> None:
        for pid, child in self.running.items():
            if child.name == "nginx":
                _signal(pid, signal.SIGHUP)  # reload nginx, as `docker kill -s HUP` does with nginx-proxy

    def _on_alarm(self, _signum: int, _frame: object) -> None:
        for pid, child in self.running.items():
            log.error("%s did not stop within %ss; killing it", child.name, STOP_GRACE)
            _signal(pid, signal.SIGKILL)

    def _start(self, child: Child) -> None:
        process = subprocess.Popen(child.argv)  # noqa: S603 - fixed argv, no shell
        self.running[process.pid] = child
        log.info("started %s (pid %d)", child.name, process.pid)

    def _wait_for_nginx(self) -> None:
        """The companion's first reload needs nginx's pid file; a dead nginx is noticed by the main loop."""
        deadline = time.monotonic() + NGINX_START_WAIT
        while not self.pid_file.exists() and time.monotonic() < deadline and not self.stopping:
            pid, _ = os.waitpid(-1, os.WNOHANG) if self.running else (0, 0)
            if pid and pid in self.running:
                self.running.pop(pid)
                return
            time.sleep(0.05)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGQUIT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        signal.signal(signal.SIGALRM, self._on_alarm)
        self.pid_file.unlink(missing_ok=True)  # a restarted container keeps the last run's file
        first, *rest = self.programs
        self._start(first)
        self._wait_for_nginx()
        if first not in self.running.values():
            log.error("%s exited at start; not starting the companion", first.name)
            return 1
        for child in rest:
            if not self.stopping:
                self._start(child)
        return self._reap()

    def _reap(self) -> int:
        first_death: tuple[str, int] | None = None
        codes: dict[str, int] = {}
        while self.running:
            try:
                pid, wait_status = os.wait()
            except ChildProcessError:
                break
            child = self.running.pop(pid, None)
            if child is None:
                continue  # an orphan that was re-parented to us
            code = status_code(wait_status)
            codes[child.name] = code
            if self.stopping:
                log.info("%s stopped (exit code %d)", child.name, code)
                continue
            log.error("%s exited unexpectedly (exit code %d); stopping the container", child.name, code)
            first_death = (child.name, code)
            self._stop_all()
        signal.alarm(0)
        return final_code(first_death, codes)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it is exiting; os.wait reports it
        os.kill(pid, sig)


def main(companion_args: Sequence[str]) -> int:
    """Entry point of `companion proxy [settings flags]`."""
    return Supervisor(children(companion_args)).run()
