"""Make sure a Docker daemon answers; start (and later restart) ``dockerd`` ourselves when needed."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import docker

from tests.harness.wait import wait_gone, wait_until

PID_FILE = Path("/var/run/docker.pid")
LOG_PATH = Path("/tmp/companion-test-dockerd.log")
START_TIMEOUT = 30.0


def _ping(timeout: float = 3.0) -> bool:
    """True when the daemon behind DOCKER_HOST (or the default socket) answers a ping."""
    try:
        client = docker.from_env(timeout=timeout)
    except docker.errors.DockerException:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def _pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # the state letter follows the parenthesised command name
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def start_dockerd(
    argv: list[str], log_path: Path, ping: Callable[[], bool], timeout: float = START_TIMEOUT, *, wait: bool = True
) -> subprocess.Popen[bytes]:
    """The one way the harness starts a dockerd (the host's, or a Swarm node's in its own namespace).

    Runs `argv` in its own session with output appended to `log_path` (after a header line), then, unless
    `wait` is off, waits until `ping()` answers: fails at once if the process exits, and after `timeout`
    with the log's tail."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:  # the child keeps its own descriptor
        log.write(f"\n=== {time.strftime('%F %T')} starting {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    if wait:
        wait_dockerd(proc, log_path, ping, timeout)
    return proc


def wait_dockerd(proc: subprocess.Popen[bytes], log_path: Path, ping: Callable[[], bool], timeout: float) -> None:
    """Wait until `ping()` answers; fail at once if `proc` exits, and after `timeout` with the log's tail."""

    def answers() -> bool:
        if ping():
            return True
        if proc.poll() is not None:
            raise RuntimeError(f"dockerd exited with {proc.returncode}; see {log_path}:\n" + _tail(log_path))
        return False

    wait_until(
        answers, timeout, 0.1, f"dockerd to answer (pid {proc.pid})", errors=(), logs=[("dockerd log", log_path)]
    )


def _tail(log_path: Path, size: int = 4000) -> str:
    try:
        return log_path.read_text(errors="replace")[-size:]
    except OSError:
        return ""


class DockerDaemon:
    """A Docker daemon the tests can use, and stop/start/restart when we know its pid.

    ``started_by_us`` is true when this process launched dockerd; only then is it stopped at exit.
    """

    def __init__(self, started_by_us: bool = False, log_path: Path = LOG_PATH) -> None:
        self.started_by_us = started_by_us
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._argv: list[str] | None = None

    # -- discovery ---------------------------------------------------------------------------------
    def pid(self) -> int | None:
        """Pid of the running dockerd: ours if we started it, else from /var/run/docker.pid."""
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        try:
            pid = int(PID_FILE.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_alive(pid) else None

    def ping(self) -> bool:
        """True when the daemon answers."""
        return _ping()

    def client(self) -> docker.DockerClient:
        """A fresh client for this daemon."""
        return docker.from_env(timeout=120)

    def _argv_for_start(self) -> list[str]:
        if self._argv is not None:
            return self._argv
        exe = shutil.which("dockerd")
        if exe is None:
            raise RuntimeError("dockerd is not installed: apt-get install docker.io")
        return [exe, "--live-restore"]

    def _remember_argv(self, pid: int) -> None:
        """Keep the command line of a daemon we did not start, so a restart uses the same flags."""
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return
        argv = [a.decode() for a in raw.split(b"\0") if a]
        if argv:
            if "--live-restore" not in argv:
                argv.append("--live-restore")
            self._argv = argv

    # -- control -----------------------------------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT) -> float:
        """Start dockerd with --live-restore and wait for a ping; return time.time() of the first answer."""
        argv = self._argv_for_start()
        self._proc = start_dockerd(argv, self.log_path, _ping, wait=False)  # kept at once: stopped at exit
        wait_dockerd(self._proc, self.log_path, _ping, timeout)
        return time.time()

    def stop(self, timeout: float = 30.0) -> None:
        """Send SIGTERM to dockerd and wait for it to exit (containers keep running with live-restore)."""
        pid = self.pid()
        if pid is None:
            raise RuntimeError("cannot stop dockerd: we did not start it and /var/run/docker.pid is missing")
        if self._argv is None and (self._proc is None or self._proc.pid != pid):
            self._remember_argv(pid)
        os.kill(pid, signal.SIGTERM)
        started = time.monotonic()
        if self._proc is not None and self._proc.pid == pid:
            proc = self._proc
            exited = wait_gone(lambda: proc.poll() is None, timeout)
        else:
            exited = wait_gone(lambda: _pid_alive(pid), timeout)
        if not exited:
            raise TimeoutError(f"dockerd (pid {pid}) did not exit within {timeout}s after SIGTERM")
        # the socket may linger for a moment; wait until pings fail so callers see a real outage
        wait_gone(lambda: _ping(timeout=0.5), max(0.0, timeout - (time.monotonic() - started)))

    def restart(self, timeout: float = START_TIMEOUT) -> float:
        """Stop and start again with --live-restore; return time.time() when the daemon answered again."""
        self.stop()
        return self.start(timeout=timeout)

    def log_tail(self, lines: int = 30) -> str:
        """Last lines of the dockerd log we write (empty if we never started it)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _stop_at_exit(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            with contextlib.suppress(Exception):
                self.stop()


_daemon: DockerDaemon | None = None


def ensure_dockerd() -> DockerDaemon:
    """Return a DockerDaemon that answers pings, starting ``dockerd --live-restore`` if none does."""
    global _daemon
    if _daemon is not None and _daemon.ping():
        return _daemon
    if _ping():
        _daemon = DockerDaemon(started_by_us=False)
        return _daemon
    if shutil.which("dockerd") is None:
        raise RuntimeError("no Docker daemon answers and dockerd is not installed: apt-get install docker.io")
    daemon = DockerDaemon(started_by_us=True)
    daemon.start()
    atexit.register(daemon._stop_at_exit)
    _daemon = daemon
    return daemon
