"""nginx.apply against the host's real nginx -t: idempotence, minimal writes, rollback, no stray files."""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from companion.core import plan
from companion.core.container import ContainerInfo
from companion.core.ports import ApplyResult
from companion.nginx.apply import NginxControl, apply
from companion.nginx.render import MAIN_FILE, render
from tests.harness.containers import app as c
from tests.harness.nginx import NginxLayout, make_layout

BASE = [
    c("web", "10.0.0.2", VIRTUAL_HOST="a.example.com", LETSENCRYPT_HOST="a.example.com"),
    c("api", "10.0.0.3", VIRTUAL_HOST="a.example.com", VIRTUAL_PATH="/api/"),
    c("blog", "10.0.0.4", VIRTUAL_HOST="blog.example.com", HTTPS_METHOD="noredirect"),
]


class Rig:
    def __init__(self, layout: NginxLayout) -> None:
        self.layout = layout
        self.conf_dir = layout.conf_dir
        self.reloads_file = layout.prefix / "reloads.txt"
        self.control = NginxControl(layout.test_command, f"echo x >> {shlex.quote(str(self.reloads_file))}")

    def files(self, containers: list[ContainerInfo]) -> dict[str, str]:
        cert = self.layout.cert()
        desired = plan.build(containers, {"blog.example.com": replace(cert, domains=("blog.example.com",))}, cert)
        return render(desired, self.layout.options())

    def apply(self, files: dict[str, str], conf_dir: Path | None = None) -> ApplyResult:
        result = apply(conf_dir or self.conf_dir, files, self.control)
        self.assert_no_stray_files(conf_dir or self.conf_dir)
        return result

    @property
    def reloads(self) -> int:
        return len(self.reloads_file.read_text().splitlines()) if self.reloads_file.exists() else 0

    def snapshot(self) -> dict[str, tuple[bytes, int]]:
        return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(self.conf_dir.iterdir())}

    def assert_no_stray_files(self, conf_dir: Path) -> None:
        if conf_dir.is_dir():
            stray = [p.name for p in conf_dir.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]
            assert stray == [], stray


@pytest.fixture
def rig(tmp_path: Path) -> Rig:
    return Rig(make_layout(tmp_path / "nginx"))


def _age(conf_dir: Path) -> None:
    """Push every mtime into the past so a rewrite is visible even on coarse-grained clocks."""
    for path in conf_dir.iterdir():
        os.utime(path, ns=(1_000_000_000, 1_000_000_000))


def test_first_apply_writes_everything_and_reloads_once(rig: Rig) -> None:
    files = rig.files(BASE)
    result = rig.apply(files)
    assert result.ok and result.error == ""
    assert set(result.changed) == set(files) and result.changed[-1] == MAIN_FILE  # main file last
    assert rig.reloads == 1
    assert {p.name: p.read_text() for p in rig.conf_dir.iterdir()} == files
    ok, output = rig.layout.test()
    assert ok, output


def test_identical_apply_writes_nothing_and_does_not_reload(rig: Rig) -> None:
    files = rig.files(BASE)
    assert rig.apply(files).ok
    _age(rig.conf_dir)
    before = rig.snapshot()
    result = rig.apply(rig.files(list(reversed(BASE))))
    assert result == ApplyResult(changed=())
    assert rig.snapshot() == before
    assert rig.reloads == 1


def test_a_change_rewrites_only_the_changed_file(rig: Rig) -> None:
    assert rig.apply(rig.files(BASE)).ok
    _age(rig.conf_dir)
    before = rig.snapshot()
    changed = rig.files([*BASE, c("new", "10.0.0.9", VIRTUAL_HOST="new.example.com")])
    result = rig.apply(changed)
    assert result.ok and result.changed == (MAIN_FILE,)
    after = rig.snapshot()
    for name in before:
        if name == MAIN_FILE:
            assert after[name][0] == changed[MAIN_FILE].encode() and after[name][1] != before[name][1]
        else:
            assert after[name] == before[name], name
    assert rig.reloads == 2


def test_nginx_rejection_restores_previous_files(rig: Rig) -> None:
    assert rig.apply(rig.files(BASE)).ok
    before = rig.snapshot()
    (rig.conf_dir / "broken.conf").write_text("this_is_not_a_directive on;\n")
    result = rig.apply(rig.files([*BASE, c("new", "10.0.0.9", VIRTUAL_HOST="new.example.com")]))
    assert not result.ok and result.changed == ()
    assert "nginx rejected the new configuration" in result.error
    assert "[emerg]" in result.error and "this_is_not_a_directive" in result.error
    after = rig.snapshot()
    del after["broken.conf"]
    assert {n: v[0] for n, v in after.items()} == {n: v[0] for n, v in before.items()}
    assert rig.reloads == 1
    # once the user fixes their file the same apply goes through
    (rig.conf_dir / "broken.conf").unlink()
    assert rig.apply(rig.files([*BASE, c("new", "10.0.0.9", VIRTUAL_HOST="new.example.com")])).ok
    assert rig.reloads == 2


def test_nginx_rejection_on_first_apply_removes_new_files(rig: Rig) -> None:
    (rig.conf_dir / "broken.conf").write_text("server { listen 80; bogus; }\n")
    result = rig.apply(rig.files(BASE))
    assert not result.ok and "[emerg]" in result.error
    assert sorted(p.name for p in rig.conf_dir.iterdir()) == ["broken.conf"]
    assert rig.reloads == 0


def test_failed_reload_is_reported_and_files_kept(rig: Rig) -> None:
    rig.control.reload_command = "echo 'kill: no such process' >&2; exit 1"
    files = rig.files(BASE)
    result = rig.apply(files)
    assert not result.ok and "reload failed" in result.error and "no such process" in result.error
    assert set(result.changed) == set(files)
    assert {p.name: p.read_text() for p in rig.conf_dir.iterdir()} == files


def test_conf_dir_under_a_regular_file(rig: Rig, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    result = rig.apply(rig.files(BASE), conf_dir=blocker / "conf.d")
    assert not result.ok and result.changed == ()
    assert "cannot read" in result.error and str(blocker) in result.error
    assert blocker.read_text() == "x" and rig.reloads == 0


@contextlib.contextmanager
def _tmpfs(path: Path, size: str = "1m") -> Iterator[None]:
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs (the test needs root and mount): {done.stderr.decode().strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_read_only_conf_dir_keeps_old_files(rig: Rig, tmp_path: Path) -> None:
    conf_dir = tmp_path / "ro"
    with _tmpfs(conf_dir):
        old = rig.files(BASE)
        assert rig.apply(old, conf_dir=conf_dir).ok  # nginx -t tests the layout's dir; that is fine here
        before = {p.name: p.read_bytes() for p in conf_dir.iterdir()}
        subprocess.run(["mount", "-o", "remount,ro", str(conf_dir)], check=True)
        result = rig.apply(rig.files([*BASE, c("n", "10.0.0.7", VIRTUAL_HOST="n.example.com")]), conf_dir=conf_dir)
        assert not result.ok and result.changed == ()
        assert "cannot write" in result.error and "Read-only file system" in result.error
        assert {p.name: p.read_bytes() for p in conf_dir.iterdir()} == before
        assert rig.reloads == 1


def test_disk_full_part_way_restores_written_files(rig: Rig, tmp_path: Path) -> None:
    """The snippet is written, then the (big) main file hits ENOSPC: the snippet is rolled back."""
    conf_dir = tmp_path / "small"
    with _tmpfs(conf_dir, size="64k"):
        assert rig.apply(rig.files(BASE), conf_dir=conf_dir).ok
        before = {p.name: p.read_bytes() for p in conf_dir.iterdir()}
        many = [
            c(f"s{i:03}", f"10.1.{i // 200}.{i % 200 + 2}", VIRTUAL_HOST=f"site{i}.example.org") for i in range(400)
        ]
        cert = rig.layout.cert()
        files = render(plan.build([*BASE, *many], {}, cert), rig.layout.options(webroot="/srv/other-webroot"))
        assert (
            len(files[MAIN_FILE]) > 128 * 1024 and files["companion-acme.inc"] != before["companion-acme.inc"].decode()
        )
        result = rig.apply(files, conf_dir=conf_dir)
        assert not result.ok and result.changed == ()
        assert "cannot write" in result.error and "No space left on device" in result.error
        assert {p.name: p.read_bytes() for p in conf_dir.iterdir()} == before
        assert rig.reloads == 1


def test_a_link_in_place_of_our_file_is_never_read_through_nor_restored(rig: Rig, tmp_path: Path) -> None:
    """A refused nginx -t restores what was there: a planted link counts as absent, so its target's content
    never lands in the conf dir; our file is removed again and the target is untouched."""
    assert rig.apply(rig.files(BASE)).ok
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-" + os.urandom(8).hex())
    (rig.conf_dir / MAIN_FILE).unlink()
    (rig.conf_dir / MAIN_FILE).symlink_to(secret)
    (rig.conf_dir / "broken.conf").write_text("this_is_not_a_directive on;\n")
    result = rig.apply(rig.files(BASE))
    assert not result.ok and "nginx rejected the new configuration" in result.error
    assert not (rig.conf_dir / MAIN_FILE).exists() and not (rig.conf_dir / MAIN_FILE).is_symlink()
    leaked = [p.name for p in rig.conf_dir.iterdir() if secret.read_text() in p.read_text()]
    assert leaked == [] and secret.read_text().startswith("SECRET-")
    # nginx accepts it again: the link's place now holds our regular file.
    (rig.conf_dir / "broken.conf").unlink()
    files = rig.files(BASE)
    assert rig.apply(files).changed == (MAIN_FILE,)
    assert not (rig.conf_dir / MAIN_FILE).is_symlink() and (rig.conf_dir / MAIN_FILE).read_text() == files[MAIN_FILE]
