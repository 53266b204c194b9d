"""Apply rendered files safely: atomic writes, the real `nginx -t`, reload, rollback on failure."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from companion.core.container import ContainerInfo
from companion.core.ports import ApplyResult, NodeView
from companion.nginx.render import MAIN_FILE
from companion.settings.config import SettingsError, parse_nginx_version
from companion.util.logsafe import printable
from companion.util.safefiles import UnsafeFile, read_regular, write_atomic

log = logging.getLogger(__name__)
COMMAND_TIMEOUT = 60
OLDEST_ASSUMED = (1, 22, 0)
T = TypeVar("T")


class NginxError(RuntimeError):
    """nginx could not be tested or reloaded; the message is nginx's own words."""


class NginxControl:
    """Test and reload nginx, either on this host (shell commands) or in containers (docker exec/kill)."""

    def __init__(
        self,
        test_command: str,
        reload_command: str,
        exec_in: Callable[[str, list[str]], tuple[int, str]] | None = None,
        signal: Callable[[str], None] | None = None,
    ) -> None:
        self.test_command = test_command
        self.reload_command = reload_command
        self._exec = exec_in
        self._signal = signal
        self.containers: Sequence[str] = ()  # ids of nginx containers, refreshed every pass

    def _need_containers(self) -> Sequence[str]:
        if not self.containers:
            raise NginxError("no nginx container found (label com.github.nginx-proxy.nginx or NGINX_PROXY_CONTAINER)")
        return self.containers

    def test(self) -> None:
        if self.test_command == "docker":
            assert self._exec is not None
            code, output = _docker("nginx -t", self._exec, self._need_containers()[0], ["nginx", "-t"])
        else:
            code, output = _shell(self.test_command)
        if code != 0:
            raise NginxError(_nginx_error(output))

    def reload(self) -> None:
        if self.reload_command == "docker":
            assert self._signal is not None
            for container in self._need_containers():
                _docker("SIGHUP", self._signal, container)
        else:
            code, output = _shell(self.reload_command)
            if code != 0:
                raise NginxError(_nginx_error(output))

    def version(self) -> tuple[int, ...] | None:
        """nginx's version decides between `http2 on;` and `listen ... http2`; None when it cannot be told."""
        try:
            if self.test_command == "docker":
                assert self._exec is not None
                _, output = self._exec(self._need_containers()[0], ["nginx", "-v"])
            else:
                _, output = _shell("nginx -v")
            return parse_nginx_version(output)
        except (NginxError, SettingsError, OSError) as exc:
            log.debug("cannot tell nginx's version: %s", exc)
            return None


def _docker(what: str, call: Callable[..., T], *args: object) -> T:
    """Docker API errors (nginx's container gone, restarting, paused) become NginxError, so that apply()
    restores the previous files instead of leaving untested ones behind that no later pass would test."""
    try:
        return call(*args)
    except Exception as exc:  # noqa: BLE001 - docker-py, requests and OS errors alike
        first = printable(str(exc).splitlines()[0][:300]) if str(exc) else type(exc).__name__
        raise NginxError(f"{what} in the nginx container failed: {first}") from exc


def _shell(command: str) -> tuple[int, str]:
    try:
        done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return 124, f"{command!r} timed out after {COMMAND_TIMEOUT}s"
    return done.returncode, (done.stderr + done.stdout).strip()


def _nginx_error(output: str) -> str:
    """nginx's [emerg]/[error] lines, without the 'test failed' trailer, control characters escaped.

    nginx echoes what it could not parse, and a file in the conf dir that is not ours may hold anything."""
    lines = [line for line in output.splitlines() if "[emerg]" in line or "[error]" in line or "[crit]" in line]
    return printable("; ".join(lines or output.splitlines()[-3:] or ["nginx test failed with no output"]))


CONF_MAX_BYTES = 64 * 1024 * 1024


def read_current(conf_dir: Path, names: Sequence[str]) -> dict[str, str | None]:
    """Our files as they are now, None when absent. A link, FIFO or anything but a regular file in place of
    one counts as absent: never read through (a refused nginx -t would copy its target into the conf dir),
    and replaced by the rename that writes our file, or removed again by the restore."""
    current: dict[str, str | None] = {}
    for name in names:
        try:
            current[name] = read_regular(conf_dir / name, CONF_MAX_BYTES).decode("utf-8", "surrogateescape")
        except FileNotFoundError:
            current[name] = None
        except UnsafeFile as exc:
            log.warning("%s; treated as absent and replaced by the companion's own file", exc)
            current[name] = None
    return current


def _restore(conf_dir: Path, previous: Mapping[str, str | None]) -> None:
    # The main file first: it must never include a snippet that is about to disappear.
    for name in sorted(previous, key=lambda n: n != MAIN_FILE):
        old = previous[name]
        try:
            if old is None:
                (conf_dir / name).unlink(missing_ok=True)
            else:
                write_atomic(conf_dir / name, old)
        except OSError as exc:
            log.error("could not restore %s: %s", conf_dir / name, exc)


def apply(conf_dir: Path, files: Mapping[str, str], control: NginxControl) -> ApplyResult:
    """Make the conf dir hold `files`; nothing changes on disk or in nginx when they already match."""
    try:
        current = read_current(conf_dir, list(files))
    except OSError as exc:
        return ApplyResult(changed=(), error=f"cannot read {conf_dir}: {exc.strerror or exc}")
    changed = [name for name, content in files.items() if current[name] != content]
    if not changed:
        return ApplyResult(changed=())
    # Snippets before the main file, so the main file never refers to something not yet there.
    changed.sort(key=lambda n: n == MAIN_FILE)
    written: dict[str, str | None] = {}
    try:
        conf_dir.mkdir(parents=True, exist_ok=True)
        for name in changed:
            write_atomic(conf_dir / name, files[name])
            written[name] = current[name]
    except OSError as exc:
        _restore(conf_dir, written)
        return ApplyResult(changed=(), error=f"cannot write {conf_dir}: {exc.strerror or exc}")
    try:
        control.test()
    except NginxError as exc:
        _restore(conf_dir, written)
        return ApplyResult.refusal(str(exc))
    try:
        control.reload()
    except NginxError as exc:
        return ApplyResult(changed=tuple(changed), error=f"nginx reload failed: {exc}")
    return ApplyResult(changed=tuple(changed))


class LocalApplier:
    """The Applier for an nginx this process can test and signal: on this host, or in containers of the
    Docker daemon it reads (docker exec/kill). See companion/core/ports.py for the protocol."""

    nginx_here = True
    relay = ""
    done = "nginx reloaded"

    def __init__(self, conf_dir: Path, control: NginxControl) -> None:
        self.conf_dir = conf_dir
        self.control = control
        self._reload_pending = False
        self._version: tuple[tuple[str, ...], tuple[int, ...]] | None = None

    def start(self) -> None:
        remove_stale_temporaries(self.conf_dir)

    def nodes(self) -> tuple[NodeView, ...]:
        return ()

    def self_check_bases(self, local: str) -> str:
        return local

    def locate(self, nginx: Sequence[ContainerInfo]) -> None:
        self.control.containers = [info.id for info in nginx]

    def nginx_version(self) -> tuple[int, ...] | None:
        """Asked once per set of nginx containers; an unknown version is asked again next pass."""
        key = tuple(self.control.containers)
        if self._version is None or self._version[0] != key:
            version = self.control.version()
            if version is None:
                return None
            self._version = (key, version)
        return self._version[1]

    def apply(self, files: Mapping[str, str]) -> ApplyResult:
        result = apply(self.conf_dir, files, self.control)
        if result.ok and not result.changed and self._reload_pending:
            result = self._retry_reload()
        self._reload_pending = bool(result.changed) and not result.ok
        return result

    def _retry_reload(self) -> ApplyResult:
        try:
            self.control.reload()
        except Exception as exc:  # noqa: BLE001 - reported, retried on the next pass
            return ApplyResult(changed=("reload",), error=f"nginx reload failed: {exc}")
        return ApplyResult(changed=("reload",))


def remove_stale_temporaries(conf_dir: Path) -> None:
    """Temporary files left by a killed companion; nginx never included them (no .conf suffix). unlink removes
    the entry itself (a link, never its target); something it cannot remove is reported, not fatal."""
    for stale in conf_dir.glob(".companion*.tmp"):
        try:
            stale.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove %s: %s", stale, exc.strerror or exc)
