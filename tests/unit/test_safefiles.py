"""No-follow file access (companion/util/safefiles.py) and its users, on real files, links, FIFOs and device
nodes: nothing is read through a link, nothing blocks on a FIFO, nothing outside our folders is chmod-ed or
written, and a state file of the wrong shape is moved aside."""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import stat
from pathlib import Path

import pytest

from companion.acme import certs
from companion.acme.orders import load_state, save_state
from companion.acme.policy import _STATE_FIELDS, CertState
from companion.core import certificates
from companion.nginx.apply import read_current
from companion.util import safefiles
from tests.harness.certs import certbot_layout

pytestmark = pytest.mark.timeout(30)  # a FIFO opened by mistake would block for ever


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def hostile(folder: Path, kind: str, target: Path) -> Path:
    """An entry of `kind` named `folder/thing`: a link to `target`, a FIFO, a directory or /dev/null's twin."""
    path = folder / "thing"
    if kind == "link":
        path.symlink_to(target)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    return path


KINDS = {
    "link": "a symbolic link",
    "fifo": "a FIFO",
    "directory": "a directory",
    "device": "a character device",
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_read_regular_refuses_anything_but_a_regular_file(tmp_path: Path, kind: str) -> None:
    secret = tmp_path / "secret"
    secret.write_text("SECRET")
    path = hostile(tmp_path, kind, secret)
    with pytest.raises(safefiles.UnsafeFile) as caught:
        safefiles.read_regular(path, 1000)
    assert str(caught.value) == f"{path}: is {KINDS[kind]}, not a regular file"
    assert isinstance(caught.value, OSError) and caught.value.filename == str(path)


def test_read_regular_reads_a_regular_file_up_to_a_limit(tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_bytes(b"x" * 10)
    assert safefiles.read_regular(path, 10) == b"x" * 10
    with pytest.raises(OSError) as caught:
        safefiles.read_regular(path, 9)
    assert caught.value.errno == errno.EFBIG and not isinstance(caught.value, safefiles.UnsafeFile)
    with pytest.raises(FileNotFoundError):
        safefiles.read_regular(tmp_path / "missing", 10)


def test_resolve_inside_accepts_links_into_the_folders_only(tmp_path: Path) -> None:
    inside, outside = tmp_path / "archive", tmp_path / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    (inside / "cert1.pem").write_text("in")
    (outside / "cert.pem").write_text("out")
    good, bad = tmp_path / "good.pem", tmp_path / "bad.pem"
    good.symlink_to("archive/cert1.pem")
    bad.symlink_to(outside / "cert.pem")
    assert safefiles.resolve_inside(good, [inside]) == inside / "cert1.pem"
    with pytest.raises(safefiles.UnsafeFile, match=rf"bad.pem: leads to {outside}/cert.pem, outside {inside}$"):
        safefiles.resolve_inside(bad, [inside])


def test_chmod_dir_and_real_dir_never_touch_a_link_target(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o755)
    (outside / "keep").write_text("keep")
    link = tmp_path / "link"
    link.symlink_to(outside)
    with pytest.raises(safefiles.UnsafeFile, match="is a symbolic link, not a directory"):
        safefiles.chmod_dir(link, 0o700)
    assert mode(outside) == 0o755

    root = tmp_path / "root"
    (root / "ours").mkdir(parents=True)
    (root / "ours" / "sub").symlink_to(outside)
    made = safefiles.real_dir(root, "ours/sub/deeper", 0o700)
    assert made == root / "ours" / "sub" / "deeper"
    assert all(stat.S_ISDIR(os.lstat(p).st_mode) for p in (root / "ours" / "sub", made))
    assert mode(made) == 0o700 and mode(root / "ours" / "sub") == 0o700
    assert mode(outside) == 0o755 and sorted(p.name for p in outside.iterdir()) == ["keep"]
    # A FIFO (or any other entry) in place of a folder is removed the same way.
    (root / "ours" / "sub" / "deeper").rmdir()
    os.mkfifo(root / "ours" / "sub" / "deeper")
    assert stat.S_ISDIR(os.lstat(safefiles.real_dir(root, "ours/sub/deeper")).st_mode)


def test_write_atomic_replaces_a_link_and_sets_the_mode_whatever_the_umask(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("SECRET")
    target = tmp_path / "conf" / "companion.conf"
    target.parent.mkdir()
    target.symlink_to(secret)
    old = os.umask(0o077)
    try:
        safefiles.write_atomic(target, "ours\n")
    finally:
        os.umask(old)
    assert not target.is_symlink() and target.read_text() == "ours\n" and mode(target) == 0o644
    assert secret.read_text() == "SECRET"
    assert sorted(p.name for p in target.parent.iterdir()) == ["companion.conf"]


@pytest.mark.parametrize("kind", ["link", "fifo"])
def test_read_current_counts_a_planted_entry_as_absent(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("SECRET")
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "ours.conf").write_text("ours")
    planted = hostile(conf, kind, secret)
    with caplog.at_level(logging.WARNING):
        assert read_current(conf, ["ours.conf", planted.name, "missing.conf"]) == {
            "ours.conf": "ours",
            planted.name: None,
            "missing.conf": None,
        }
    assert [r.getMessage() for r in caplog.records] == [
        f"{planted}: is {KINDS[kind]}, not a regular file; treated as absent and replaced by the companion's own file"
    ]


# -- certificates ------------------------------------------------------------------------------------


def test_certbots_links_into_its_archive_are_accepted(tmp_path: Path) -> None:
    certbot_layout(tmp_path, "a.test")
    status = certs.read_lineage(tmp_path, "a.test")
    assert status.problem == "" and status.domains == ("a.test",)


@pytest.mark.parametrize("kind", list(KINDS))
def test_anything_else_at_a_certificate_makes_only_that_lineage_unusable(tmp_path: Path, kind: str) -> None:
    certbot_layout(tmp_path, "bad.test")
    certbot_layout(tmp_path, "good.test")
    # The outside file is a perfectly good certificate: only where it is makes it unacceptable.
    outside = (tmp_path / "archive" / "good.test" / "fullchain1.pem").read_bytes()
    (tmp_path.parent / f"outside-{tmp_path.name}.pem").write_bytes(outside)
    chain = tmp_path / "live" / "bad.test" / "fullchain.pem"
    chain.unlink()
    hostile(chain.parent, kind, tmp_path.parent / f"outside-{tmp_path.name}.pem").rename(chain)
    statuses = certs.scan(tmp_path)
    if kind == "link":
        reason = f"leads to {tmp_path.parent}/outside-{tmp_path.name}.pem, outside {tmp_path}/live/bad.test and"
    else:
        reason = f"is {KINDS[kind]}, not a regular file"
    assert statuses["bad.test"].problem.startswith(f"{chain}: {reason}"), statuses["bad.test"].problem
    assert set(certificates.usable(statuses, tmp_path)) == {"good.test"}


def test_a_link_from_archive_to_outside_is_refused_too(tmp_path: Path) -> None:
    certbot_layout(tmp_path, "a.test")
    key = tmp_path / "archive" / "a.test" / "privkey1.pem"
    elsewhere = tmp_path.parent / f"key-{tmp_path.name}.pem"
    key.rename(elsewhere)
    key.symlink_to(elsewhere)
    problem = certs.read_lineage(tmp_path, "a.test").problem
    assert problem.startswith(f"{tmp_path}/live/a.test/privkey.pem: leads to {elsewhere}, outside"), problem


def test_placeholder_folder_behind_a_link_is_replaced_never_followed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o755)
    certs_dir = tmp_path / "certs"
    (certs_dir / "companion").mkdir(parents=True)
    (certs_dir / "companion" / "placeholder").symlink_to(outside)
    with caplog.at_level(logging.WARNING):
        files = certs.ensure_placeholder(certs_dir)
    folder = certs_dir / "companion" / "placeholder"
    assert stat.S_ISDIR(os.lstat(folder).st_mode) and mode(folder) == 0o700
    assert mode(Path(files.privkey)) == 0o600
    assert mode(outside) == 0o755 and list(outside.iterdir()) == []
    assert f"{folder} was a symbolic link, not the companion's folder; removed it" in caplog.text
    assert certs.ensure_placeholder(certs_dir) == files


def test_tighten_chmods_real_folders_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    certbot_layout(tmp_path, "a.test")
    os.chmod(tmp_path / "live" / "a.test", 0o755)
    outside = tmp_path / "outside"
    outside.mkdir(mode=0o755)
    os.chmod(outside, 0o755)
    (tmp_path / "archive" / "a.test").rename(tmp_path / "archive-moved")
    (tmp_path / "archive" / "a.test").symlink_to(outside)
    with caplog.at_level(logging.WARNING):
        certs.tighten(tmp_path, "a.test")
    assert mode(tmp_path / "live" / "a.test") == 0o700
    assert mode(outside) == 0o755
    assert f"not tightening {tmp_path}/archive/a.test: is a symbolic link, not a directory" in caplog.text
    certs.tighten(tmp_path, "missing.test")  # nothing there: nothing to do, no error


# -- the ACME state file ---------------------------------------------------------------------------


def test_state_fields_checked_are_exactly_certstates() -> None:
    assert list(_STATE_FIELDS) == [f.name for f in dataclasses.fields(CertState)]


GOOD = {"domains": ["a.test"], "failures": 1, "next_try": 5, "last_error": "", "in_progress": False}


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("[1, 2]", "expected an object of certificate names, found list"),
        ('{"a.test": [1]}', "'a.test': expected an object, found list"),
        (json.dumps({"a.test": {**GOOD, "extra": 1}}), "'a.test': unknown extra"),
        (json.dumps({"a.test": {"domains": ["a.test"]}}), "'a.test': missing failures, in_progress, last_error"),
        (json.dumps({"a.test": {**GOOD, "domains": "a.test"}}), "'a.test': domains must be a list of names"),
        (json.dumps({"a.test": {**GOOD, "failures": True}}), "'a.test': failures must be a count, not True"),
        (json.dumps({"a.test": {**GOOD, "failures": -1}}), "'a.test': failures must be a count, not -1"),
        (json.dumps({"a.test": {**GOOD, "next_try": "soon"}}), "'a.test': next_try must be a unix time"),
        ('{"a.test": ' + json.dumps(GOOD).replace("5", "NaN") + "}", "next_try must be a unix time, not nan"),
        (json.dumps({"a.test": {**GOOD, "last_error": 5}}), "'a.test': last_error must be a text, not 5"),
        (json.dumps({"a.test": {**GOOD, "in_progress": 0}}), "'a.test': in_progress must be true or false"),
        ("{not json", "Expecting property name"),
        (b"\xff\xfe\xfa", "codec can't decode"),
    ],
)
def test_a_state_file_of_the_wrong_shape_is_moved_aside(
    tmp_path: Path, content: str | bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "companion" / "acme-state.json"
    path.parent.mkdir()
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with caplog.at_level(logging.WARNING):
        assert load_state(tmp_path) == {}
    [aside] = path.parent.glob("acme-state.json.bad-*")
    assert aside.read_bytes() == (content if isinstance(content, bytes) else content.encode())
    assert not path.exists()
    [record] = caplog.records
    assert record.getMessage().startswith(f"ignoring {path} (")
    assert reason in record.getMessage() and f"moved it aside to {aside}" in record.getMessage()
    # The next save starts a fresh, valid file.
    save_state(tmp_path, {"a.test": CertState(domains=["a.test"])})
    assert load_state(tmp_path) == {"a.test": CertState(domains=["a.test"])}


def test_a_state_file_that_is_a_link_is_moved_aside_not_read_through(tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text(json.dumps({"a.test": GOOD}))
    path = tmp_path / "companion" / "acme-state.json"
    path.parent.mkdir()
    path.symlink_to(secret)
    assert load_state(tmp_path) == {}
    [aside] = path.parent.glob("acme-state.json.bad-*")
    assert aside.is_symlink() and secret.read_text() == json.dumps({"a.test": GOOD})
    save_state(tmp_path, {})
    assert not path.is_symlink() and mode(path) == 0o600 and secret.read_text() == json.dumps({"a.test": GOOD})


def test_a_good_state_file_loads_with_integer_times(tmp_path: Path) -> None:
    path = tmp_path / "companion" / "acme-state.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"a.test": GOOD}))
    assert load_state(tmp_path) == {"a.test": CertState(["a.test"], 1, 5.0, "", False)}
    assert list(path.parent.iterdir()) == [path]
