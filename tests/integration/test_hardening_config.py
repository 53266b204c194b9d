"""Hardening: faults around the configuration (nginx refusing it, a full or read-only conf dir), hostile
labels among many good containers, and conflicting containers. Real dockerd, nginx and companion process."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.harness.appimage import AppRunner
from tests.harness.companion import Companion
from tests.harness.nginx import HostNginx, body
from tests.harness.wait import wait_until

pytestmark = pytest.mark.integration


def unique_host(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}.hardening.test"


def conf_snapshot(conf_dir: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file in the conf dir (including stray temporaries), byte for byte."""
    return {p.name: p.read_bytes() for p in sorted(conf_dir.iterdir()) if p.is_file() and p.name not in skip}


# -- 1. nginx rejects the configuration ------------------------------------------------------------

REFUSED = r'WARNING [^\n]*nginx rejected the new configuration: [^\n]*\[emerg\] unknown directive "bogus_hardening'


def test_config_rejected_by_nginx_keeps_last_good_and_logs_once(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion]
) -> None:
    conf_dir = host_nginx.conf_dir
    # Count every `nginx -t` the companion runs, to see that it really retries by itself.
    tests_log = host_nginx.prefix / "nginx-tests.txt"
    companion = make_companion(NGINX_TEST=f"date +%s.%N >> {tests_log}; {host_nginx.test_command}")
    live = unique_host("live")
    apps("live", environment={"VIRTUAL_HOST": live, "APP_ID": "live"})
    assert wait_until(lambda: body(host_nginx, live) == (200, "live"), what="first site routed")
    companion.wait_idle()
    good_files = conf_snapshot(conf_dir)
    reloads = companion.reloads()
    master = host_nginx.master_pid()

    # A user's own file in conf.d that the companion cannot know is broken: every nginx -t now fails.
    user = conf_dir / "zz-user.conf"
    user.write_text("bogus_hardening_directive on;\n")
    blocked = unique_host("blocked")
    apps("blocked", environment={"VIRTUAL_HOST": blocked, "APP_ID": "blocked"})
    line = companion.wait_log(r"nginx rejected the new configuration: [^\n]*", timeout=20)
    refused_at = time.monotonic()
    assert '[emerg] unknown directive "bogus_hardening_directive"' in line and "zz-user.conf" in line, line
    tests_at_error = len(tests_log.read_text().splitlines())
    # Retries come after 1 s, 2 s, 4 s ... (sooner when a Docker event wakes the loop): wait for three.
    wait_until(
        lambda: len(tests_log.read_text().splitlines()) >= tests_at_error + 3,
        timeout=15,
        what="the companion to retry the failed pass",
    )
    stamps = [float(x) for x in tests_log.read_text().split()][tests_at_error - 1 :]
    gaps = ", ".join(f"{b - a:.1f}s" for a, b in zip(stamps, stamps[1:], strict=False))
    retries = len(stamps) - 1
    assert companion.count(REFUSED) == 1, "logged once, not per retry"
    assert companion.reloads() == reloads, "nginx must not be reloaded while its configuration is refused"
    assert host_nginx.master_pid() == master
    # Each retry writes the new files for the length of one `nginx -t`, then puts the good ones back.
    wait_until(
        lambda: conf_snapshot(conf_dir, skip=("zz-user.conf",)) == good_files,
        timeout=5,
        interval=0.01,
        what="the last good files back in place",
    )
    assert body(host_nginx, live) == (200, "live"), "the last good configuration keeps serving"
    assert body(host_nginx, blocked)[0] == 503

    # The user fixes the file: the companion's own retry applies the pending change.
    user.write_text("# fixed by the user\n")
    fixed_at = time.monotonic()
    assert wait_until(lambda: body(host_nginx, blocked) == (200, "blocked"), timeout=40, what="pending change applied")
    recovered = time.monotonic() - fixed_at
    companion.wait_log(r"resolved: nginx rejected the new configuration")
    assert companion.reloads() >= reloads + 1
    assert body(host_nginx, live) == (200, "live")
    assert companion.count(REFUSED) == 1
    assert companion.alive
    print(
        f"\nrow 1: refused for {fixed_at - refused_at:.1f}s with {retries} retried nginx -t (gaps {gaps}), "
        f"logged once, 0 reloads while refused; recovered {recovered:.1f}s after the fix"
    )


# -- 2. conf dir full or read-only -----------------------------------------------------------------


@pytest.fixture
def tmpfs_nginx(tmp_path: Path) -> Iterator[HostNginx]:
    """A HostNginx whose conf dir is a tiny tmpfs of its own (mounted before nginx starts)."""
    conf_dir = tmp_path / "nginx" / "conf.d"
    conf_dir.mkdir(parents=True)
    # Small, yet with room for what other tests' containers on the shared daemon may add to companion.conf.
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "companion-hardening", str(conf_dir)],
        check=True,
        capture_output=True,
        text=True,
    )
    nginx = HostNginx(conf_dir=conf_dir, prefix=tmp_path / "nginx")
    try:
        nginx.start()
        yield nginx
    finally:
        nginx.stop()
        done = subprocess.run(["umount", str(conf_dir)], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            subprocess.run(["umount", "-l", str(conf_dir)], check=False)


def fill(path: Path) -> int:
    """Write `path` until the file system is full; return the bytes written."""
    written = 0
    chunk = b"\0" * 4096
    with open(path, "wb", buffering=0) as handle:
        while True:
            try:
                written += handle.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    return written


def test_conf_dir_full_or_read_only_keeps_old_files_and_recovers(
    apps: AppRunner, tmpfs_nginx: HostNginx, tmp_path: Path
) -> None:
    nginx, conf_dir = tmpfs_nginx, tmpfs_nginx.conf_dir
    companion = Companion(nginx, tmp_path / "companion").start()
    try:
        first = unique_host("first")
        apps("first", environment={"VIRTUAL_HOST": first, "APP_ID": "first"})
        assert wait_until(lambda: body(nginx, first) == (200, "first"), what="first site routed")
        companion.wait_idle()

        # Disk full.
        filler = conf_dir / "filler.bin"
        filled = fill(filler)
        old = conf_snapshot(conf_dir, skip=("filler.bin",))
        reloads = companion.reloads()
        second = unique_host("second")
        apps("second", environment={"VIRTUAL_HOST": second, "APP_ID": "second"})
        line = companion.wait_log(r"cannot write [^\n]*", timeout=20)
        assert line == f"cannot write {conf_dir}: No space left on device", line
        time.sleep(1.5)  # at least one retry
        assert conf_snapshot(conf_dir, skip=("filler.bin",)) == old, "old files intact, no temporaries left"
        assert companion.reloads() == reloads
        assert body(nginx, first) == (200, "first") and body(nginx, second)[0] == 503
        assert companion.count(r"cannot write [^\n]*No space left on device") == 1
        filler.unlink()
        freed_at = time.monotonic()
        assert wait_until(lambda: body(nginx, second) == (200, "second"), timeout=40, what="recovery after freeing")
        full_recovery = time.monotonic() - freed_at
        companion.wait_log(r"resolved: cannot write [^\n]*No space left on device")

        # Read-only.
        companion.wait_idle()
        subprocess.run(["mount", "-o", "remount,ro", str(conf_dir)], check=True)
        try:
            old = conf_snapshot(conf_dir)
            reloads = companion.reloads()
            third = unique_host("third")
            apps("third", environment={"VIRTUAL_HOST": third, "APP_ID": "third"})
            line = companion.wait_log(r"cannot write [^\n]*Read-only file system", timeout=20)
            assert conf_snapshot(conf_dir) == old
            assert companion.reloads() == reloads
            assert body(nginx, second) == (200, "second") and body(nginx, third)[0] == 503
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(conf_dir)], check=True)
        rw_at = time.monotonic()
        assert wait_until(lambda: body(nginx, third) == (200, "third"), timeout=40, what="recovery after remount rw")
        ro_recovery = time.monotonic() - rw_at
        assert body(nginx, first) == (200, "first") and body(nginx, second) == (200, "second")
        assert companion.alive, "recovered without a restart"
        assert not list(conf_dir.glob(".companion*.tmp"))
        print(
            f"\nrow 2: filled tmpfs with {filled} bytes; recovered {full_recovery:.1f}s after freeing it; "
            f"read-only recovered {ro_recovery:.1f}s after remount rw"
        )
    finally:
        companion.stop()
        print("---- companion log (tail) ----\n" + companion.log()[-4000:])


# -- 4. one hostile container among fifty good ones ------------------------------------------------


HOSTILE_PATH = "/x { return 200 'pwned'; } location /y"


class PassCounter:
    """Counts loop passes by watching the heartbeat file, which every pass rewrites."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.passes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = None
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                stamp = os.stat(self.path).st_mtime_ns
                if last is not None and stamp != last:
                    self.passes += 1
                last = stamp
            time.sleep(0.01)

    def __enter__(self) -> PassCounter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_hostile_container_among_fifty_is_reported_once_per_change(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion]
) -> None:
    companion = make_companion()
    tag = uuid.uuid4().hex[:6]
    hosts = [f"good{i}-{tag}.hardening.test" for i in range(50)]
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        futures = [
            pool.submit(apps, f"good{i}", environment={"VIRTUAL_HOST": h, "APP_ID": f"good{i}"})
            for i, h in enumerate(hosts)
        ]
        hostile = apps(
            "hostile",
            labels={
                "VIRTUAL_HOST": f"hostile-{tag}.hardening.test",
                "VIRTUAL_PATH": HOSTILE_PATH,
            },
            environment={"APP_ID": "hostile"},
        )
        for future in futures:
            future.result()
    launched = time.monotonic() - started

    def missing() -> list[str]:
        return [h for i, h in enumerate(hosts) if body(host_nginx, h) != (200, f"good{i}")]

    wait_until(lambda: not missing(), timeout=60, interval=0.5, what="all 50 good sites served")
    routed = time.monotonic() - started
    shown = re.escape(repr(HOSTILE_PATH))
    pattern = rf"WARNING [^\n]*container {re.escape(hostile.name)}: VIRTUAL_PATH={shown} rejected: path must"
    companion.wait_log(pattern)
    conf = (host_nginx.conf_dir / "companion.conf").read_text()
    assert "pwned" not in conf and f"hostile-{tag}" not in conf
    assert host_nginx.check().returncode == 0

    # Unrelated changes and passes without any change must not repeat the report.
    with PassCounter(Path(companion.env["HEARTBEAT_FILE"])) as passes:
        extra = [apps(f"extra{i}", environment={"VIRTUAL_HOST": unique_host(f"extra{i}")}) for i in range(3)]
        extra[0].stop(timeout=1)
        companion.wait_idle()
        # Passes that change nothing: a file appearing in the certs dir wakes the loop (certs watcher).
        for i in range(4):
            (companion.certs_dir / "live" / f"nudge-{i}.txt").write_text("wake up\n")
            companion.wait_idle(quiet=0.6)
    assert passes.passes >= 6, f"only {passes.passes} passes observed"
    assert companion.count(pattern) == 1, "the hostile container must be reported once, not once per pass"
    # It goes away: reported as resolved once; it comes back: reported once more.
    hostile.stop(timeout=1)
    companion.wait_log(rf"resolved: container {re.escape(hostile.name)}: VIRTUAL_PATH")
    hostile.start()
    wait_until(lambda: companion.count(pattern) == 2, what="report when the container is back")
    companion.wait_idle()
    assert companion.count(pattern) == 2
    assert companion.count(rf"resolved: container {re.escape(hostile.name)}") == 1
    assert missing() == []
    print(
        f"\nrow 4: 50 good + 1 hostile launched in {launched:.1f}s, all routed after {routed:.1f}s; "
        f"{passes.passes} later passes, hostile reported {companion.count(pattern)}x (appear, reappear)"
    )


# -- 5. conflicting containers for one host --------------------------------------------------------


def routed(conf: str, host: str) -> tuple[str, str] | None:
    """(scheme, upstream) the host's `/` is proxied to over HTTP; upstream names are numbered per backend set."""
    found = re.search(
        rf"server_name {re.escape(host)};[^{{}}]*location / \{{[^}}]*proxy_pass (https?)://(companion_u[0-9]+);", conf
    )
    return (found.group(1), found.group(2)) if found else None


def upstream_servers(conf: str, upstream: str) -> int:
    block = re.search(rf"upstream {upstream} \{{([^}}]*)\}}", conf)
    assert block, conf
    return block.group(1).count("server ")


def test_conflicting_containers_the_one_serving_first_decides_whatever_the_names(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion]
) -> None:
    companion = make_companion()
    conf_path = host_nginx.conf_dir / "companion.conf"
    # The decider starts first: plain HTTP to the app, no TLS at all. The newcomer asks for HTTPS to the
    # app (which only speaks HTTP, so 502 if it decided), TLS with a CERT_NAME, HSTS off. Once the
    # decider's name sorts first ("ctest-cfla-a-..."), once last ("ctest-cflb-b-..." decides over "a").
    decider = {"VIRTUAL_PROTO": "http", "HTTPS_METHOD": "nohttps"}
    newcomer = {"VIRTUAL_PROTO": "https", "HTTPS_METHOD": "noredirect", "CERT_NAME": "cfl-cert", "HSTS": "off"}
    results = []
    for order in ("a-first", "b-first"):
        host = unique_host(f"cfl-{order}")
        tag = order[0]
        first, second = ("a", "b") if order == "a-first" else ("b", "a")
        names = {}
        for letter, settings in ((first, decider), (second, newcomer)):
            container = apps(
                f"cfl{tag}-{letter}", labels={"VIRTUAL_HOST": host, **settings}, environment={"APP_ID": letter}
            )
            names[letter] = container.name
            if letter == first:
                wait_until(lambda h=host: routed(conf_path.read_text(), h) is not None)
        assert names["a"] < names["b"]

        def both_backends(h: str = host) -> bool:
            return {body(host_nginx, h) for _ in range(8)} == {(200, "a"), (200, "b")}

        assert wait_until(both_backends, timeout=20, what=f"{order}: {first} decides and both backends serve")
        conf = conf_path.read_text()
        scheme, upstream = routed(conf, host) or ("", "")
        assert scheme == "http" and f"https://{upstream};" not in conf
        assert upstream_servers(conf, upstream) == 2
        assert "cfl-cert" not in conf, "the newcomer's CERT_NAME must not be used"
        assert not re.search(
            rf"listen {host_nginx.https_port} ssl[^\n]*\n(?:[^\n]*\n)?\s*server_name {re.escape(host)};", conf
        )
        warning = companion.wait_log(rf"host {re.escape(host)}: containers [^\n]*")
        assert warning == (
            f"host {host}: containers {names[first]} and {names[second]} disagree on "
            f"HTTPS_METHOD, HSTS, CERT_NAME, VIRTUAL_PROTO; using {names[first]}'s (it served the host first)"
        ), warning
        results.append(order)
    companion.wait_idle()
    for order in results:
        assert companion.count(rf"host cfl-{order}-[0-9a-f]+\.hardening\.test: containers") == 1
    print("\nrow 5: the container serving first decided in both name orders; one warning per host naming both")
