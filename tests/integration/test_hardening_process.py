"""Fault injection around the companion's process and its Docker daemon (issue "Hardening").

Each test runs the real `python -m companion run` in host mode beside a private nginx and breaks one
real part: the Docker daemon restarts, the daemon is not there at start (then reached through an
allow-listing socket proxy), the companion is SIGKILLed in the middle of an apply, and it gets SIGTERM
while certbot has an order in flight at a Pebble that sleeps before validating.

The Docker daemon is shared with other work on this machine: every test confines the companion to
its own domain (ALLOWED_DOMAINS), so other people's labelled containers cannot change its files or
reloads, and it only ever removes its own containers.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.appimage import AppRunner
from tests.harness.companion import Companion
from tests.harness.dockerd import DockerDaemon
from tests.harness.nginx import HostNginx, body
from tests.harness.pebble import Pebble
from tests.harness.socketproxy import DockerSocketProxy, allowlist_from_readme
from tests.harness.wait import wait_quiet, wait_until

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "docs" / "security.md"
TEMP_GLOB = ".companion*.tmp"


def unique_zone() -> str:
    return f"h{uuid.uuid4().hex[:10]}.example.test"


def conf_state(conf_dir: Path) -> dict[str, tuple[bytes, int]]:
    """Every file in the conf dir with its bytes and mtime."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(conf_dir.iterdir()) if p.is_file()}


def settle(companion: Companion, quiet: float = 1.0, timeout: float = 20.0) -> int:
    """Wait until the reload count has not moved for `quiet` seconds; return it.

    (Companion.wait_idle watches the log, which other people's containers keep growing here.)
    """
    return wait_quiet(  # type: ignore[return-value]
        companion.reloads,
        quiet,
        timeout,
        "the companion to stop reloading nginx",
        logs=[("companion log", companion.log)],
    )


def heartbeat_ns(companion: Companion) -> int:
    path = companion.workdir / "heartbeat"
    return path.stat().st_mtime_ns if path.exists() else 0


def certbot_processes(certs_dir: Path) -> list[str]:
    """Command lines of certbot processes working on this certs dir."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "certbot.main" in cmdline and str(certs_dir) in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def parse_render_all(output: str) -> dict[str, str]:
    """`companion render --all` prints each file after a '# ---- <name>' line."""
    parts = re.split(r"^# ---- (\S+)\n", output, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short folder for unix sockets (sun_path holds 107 bytes; pytest's tmp_path can be longer)."""
    path = Path(tempfile.mkdtemp(prefix="ctest-sock-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- 1. the Docker daemon restarts under a running companion ------------------------------------------


def test_docker_daemon_restart_reconnects_without_reload_and_routes_new_container_fast(
    docker_daemon: DockerDaemon, apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion]
) -> None:
    """Restarts the shared daemon once (--live-restore keeps containers running); keep runs of it rare."""
    zone = unique_zone()
    companion = make_companion(ALLOWED_DOMAINS=f"*.{zone}")
    old_host, new_host = f"old.{zone}", f"new.{zone}"
    apps("rst-old", environment={"VIRTUAL_HOST": old_host, "APP_ID": "old"})
    assert wait_until(lambda: body(host_nginx, old_host) == (200, "old"), what="site routed before the restart")
    reloads = settle(companion)
    files = conf_state(host_nginx.conf_dir)
    beat = heartbeat_ns(companion)
    mark = len(companion.log())

    daemon_back = docker_daemon.restart()
    # The companion notices by itself: the event stream comes back, and a full pass follows it.
    wait_until(lambda: "docker event stream reconnected" in companion.log()[mark:], timeout=5, interval=0.01)
    reconnected = time.time() - daemon_back
    wait_until(lambda: heartbeat_ns(companion) != beat, timeout=3, interval=0.01, what="a pass after reconnecting")
    time.sleep(0.2)  # a (spurious) reload would be run right after that pass's writes
    assert companion.reloads() == reloads, "reconnecting to a restarted daemon reloaded nginx with nothing changed"
    assert conf_state(host_nginx.conf_dir) == files, "reconnecting rewrote conf.d with nothing changed"
    assert body(host_nginx, old_host) == (200, "old")

    apps("rst-new", environment={"VIRTUAL_HOST": new_host, "APP_ID": "new"}, wait=False)
    wait_until(lambda: body(host_nginx, new_host) == (200, "new"), timeout=10, interval=0.01, what="new site routed")
    routed = time.time() - daemon_back
    print(
        f"\ndaemon restart: event stream back after {reconnected:.2f}s, "
        f"new container routed {routed:.2f}s after the daemon answered"
    )
    assert routed < 2.0, f"a container started after a daemon restart took {routed:.2f}s to be routed"
    assert settle(companion) == reloads + 1, "exactly one reload, for the new container"
    assert companion.alive
    assert "Traceback" not in companion.log()
    warned = re.findall(r" (?:WARNING|ERROR) companion[.\w]*: (.*)", companion.log()[mark:])
    assert sum("docker event stream unavailable" in line for line in warned) <= 1, warned


# -- 2. no daemon at start; then reached through an allow-listing socket proxy ------------------------


def test_unreachable_daemon_at_start_waits_quietly_then_works_through_an_allowlisting_proxy(
    short_tmp: Path, apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion]
) -> None:
    socket_path = short_tmp / "docker.sock"
    zone = unique_zone()
    companion = make_companion(DOCKER_HOST=f"unix://{socket_path}", ALLOWED_DOMAINS=f"*.{zone}")
    companion.wait_log("cannot reach the Docker daemon")
    time.sleep(4)  # retries at 0.5, 1, 2 s ... : several attempts, one message
    assert companion.alive, companion.log()
    unreachable = [line for line in companion.log().splitlines() if "cannot reach the Docker daemon" in line]
    assert len(unreachable) == 1, unreachable
    assert str(socket_path) in unreachable[0], f"the message should say where it looked: {unreachable[0]}"
    print(f"\nlogged once: {unreachable[0]}")

    assert companion.process is not None
    pid = companion.process.pid
    rules = allowlist_from_readme(README)
    proxies = [DockerSocketProxy(socket_path, allow=rules).start()]
    try:
        started = time.monotonic()
        companion.wait_log("connected to the Docker daemon", timeout=5)
        connected = time.monotonic() - started
        host = f"proxied.{zone}"
        app = apps("proxied", environment={"VIRTUAL_HOST": host, "APP_ID": "proxied"})
        assert wait_until(lambda: body(host_nginx, host) == (200, "proxied"), what="site routed through the proxy")
        app.stop(timeout=1)
        wait_until(lambda: body(host_nginx, host)[0] == 503, what="site removed after stop")

        # Then the daemon goes away under the running companion (the proxy drops every connection and
        # its socket) for a few seconds of retries, and comes back: one warning, and it works again.
        mark = len(companion.log())
        proxies[-1].stop()
        time.sleep(3)
        outage = companion.log()[mark:]
        proxies.append(DockerSocketProxy(socket_path, allow=rules).start())
        companion.wait_log("docker event stream reconnected", timeout=5)
        again = f"again.{zone}"
        apps("again", environment={"VIRTUAL_HOST": again, "APP_ID": "again"})
        assert wait_until(lambda: body(host_nginx, again) == (200, "again"), what="routed after the outage")
        assert companion.alive and companion.process.pid == pid, "the companion was restarted"
        assert companion.stop() == 0
    finally:
        for proxy in proxies:
            proxy.stop()
    warned = re.findall(r" (?:WARNING|ERROR) companion[.\w]*: (.*)", outage)
    print(f"during a 3 s outage the companion logged: {warned}")
    # Each part that notices (event stream, loop) says so once, not on every retry (~5 in 3 s).
    for kind in ("docker event stream unavailable", "cannot reach the Docker daemon"):
        assert sum(kind in line for line in warned) <= 1, f"{kind!r} repeated: {warned}"
    assert len(warned) <= 3, warned
    calls = [call for proxy in proxies for call in proxy.calls]
    rejected = [call for proxy in proxies for call in proxy.rejected]
    observed = sorted({c for proxy in proxies for c in proxy.distinct_calls()})
    print(f"connected {connected:.2f}s after the socket appeared; Docker API calls seen: {observed}")
    assert calls, "no request went through the proxy"
    assert rejected == [], f"calls outside README's table: {sorted(set(rejected))}"
    outside = [call for call in calls if not any(rule.matches(*call) for rule in rules)]
    assert outside == [], f"recorded calls that README's table does not list: {outside}"
    assert not [error for proxy in proxies for error in proxy.errors]
    # docker-py words a refusal "403 Client Error ... Forbidden"; a bare "403" also matches a timestamp's milliseconds
    log_text = companion.log()
    assert "403 Client Error" not in log_text and "Forbidden" not in log_text and "Traceback" not in log_text


# -- 3. SIGKILL between writing a temporary file and renaming it ---------------------------------------


def test_sigkill_during_apply_leaves_nginx_valid_and_a_restart_converges(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion]
) -> None:
    zone = unique_zone()
    first = make_companion(ALLOWED_DOMAINS=f"*.{zone}")
    old_host, new_host = f"old.{zone}", f"new.{zone}"
    apps("kill-old", environment={"VIRTUAL_HOST": old_host, "APP_ID": "old"})
    assert wait_until(lambda: body(host_nginx, old_host) == (200, "old"), what="site routed before the kill")
    settle(first)
    assert first.stop() == 0
    before = {name: content for name, (content, _) in conf_state(host_nginx.conf_dir).items()}

    paused = make_companion(ALLOWED_DOMAINS=f"*.{zone}", COMPANION_TEST_APPLY_PAUSE="2")
    paused.wait_log("connected to the Docker daemon")
    wait_until(lambda: heartbeat_ns(paused) > 0, what="the paused companion's first pass")
    apps("kill-new", environment={"VIRTUAL_HOST": new_host, "APP_ID": "new"})
    temporaries = wait_until(lambda: list(host_nginx.conf_dir.glob(TEMP_GLOB)), timeout=10, interval=0.01)
    assert paused.stop(sig=signal.SIGKILL) == -signal.SIGKILL
    print(f"\nSIGKILL while {[t.name for t in temporaries]} waited to be renamed")
    assert all(t.exists() for t in temporaries), "the killed companion's temporary file is still there"

    check = host_nginx.check()
    assert check.returncode == 0, check.stderr
    host_nginx.reload()
    # Nothing nginx includes is partial: each file is what it was, or exactly what the new state renders.
    rendered = parse_render_all(paused.cli("render", "--all").stdout)
    assert "companion.conf" in rendered
    for path in sorted(host_nginx.conf_dir.iterdir()):
        if path.match(TEMP_GLOB):
            continue
        content = path.read_bytes()
        assert content in (before.get(path.name), rendered.get(path.name, "").encode()), f"{path.name} is partial"
    assert body(host_nginx, old_host) == (200, "old"), "the site routed before the kill stopped answering"

    started = time.monotonic()
    fresh = make_companion(ALLOWED_DOMAINS=f"*.{zone}")
    assert wait_until(lambda: body(host_nginx, new_host) == (200, "new"), what="a fresh companion converges")
    print(f"a fresh companion routed the new site {time.monotonic() - started:.2f}s after it was started")
    assert body(host_nginx, old_host) == (200, "old")
    assert not list(host_nginx.conf_dir.glob(TEMP_GLOB)), "stale temporary file left behind"
    assert fresh.alive


# -- 4. SIGTERM while certbot has an order in flight -----------------------------------------------------


@pytest.mark.acme
def test_sigterm_with_an_order_in_flight_exits_cleanly(
    apps: AppRunner,
    host_nginx: HostNginx,
    make_pebble: Callable[..., Pebble],
    make_companion: Callable[..., Companion],
) -> None:
    pebble = make_pebble(host_nginx.http_port, va_sleep=True)  # validation waits seconds before it starts
    zone = unique_zone()
    hosts = [f"tls{i}.{zone}" for i in range(2)]
    # Both exist before the companion starts: its first pass queues both, one runs and one waits.
    for i, host in enumerate(hosts):
        apps(f"term{i}", environment={"VIRTUAL_HOST": host, "LETSENCRYPT_HOST": host, "APP_ID": f"term{i}"})
    companion = make_companion(
        ACME_CA_URI=pebble.directory_url, CA_BUNDLE=str(pebble.ca_bundle_path), ALLOWED_DOMAINS=f"*.{zone}"
    )
    certs_dir = companion.certs_dir
    wait_until(
        lambda: pebble.orders_seen() >= 1 and certbot_processes(certs_dir),
        timeout=30,
        interval=0.02,
        what="certbot running with an order at Pebble",
    )
    assert not list((certs_dir / "live").glob("*/fullchain.pem")), "an order finished before SIGTERM"
    assert companion.process is not None
    started = time.monotonic()
    companion.process.send_signal(signal.SIGTERM)
    try:
        code = companion.process.wait(15)
    finally:
        elapsed = time.monotonic() - started
    print(f"\nSIGTERM with an order in flight: exit code {code} after {elapsed:.2f}s")
    left = certbot_processes(certs_dir)
    log = companion.log()
    assert code == 0, log[-3000:]
    assert elapsed < 5.0, f"took {elapsed:.2f}s to exit"
    assert not left, f"certbot left behind: {left}"
    state = json.loads((certs_dir / "companion" / "acme-state.json").read_text())
    assert set(hosts) <= set(state), state
    assert not [name for name, entry in state.items() if entry.get("in_progress")], state
    # nginx was serving the webroot: a failed self-check here would be the companion racing nginx's reload.
    assert "self-check" not in log, [line for line in log.splitlines() if "self-check" in line]
    assert "Traceback" not in log
