"""Per-host files and typed per-path settings: reading the folders safely and choosing what counts, pure.
The proofs with the real `nginx -t` and htpasswd are tests/integration/test_hostfiles.py.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from companion.core import certificates, plan, values
from companion.core.model import Rejection, parse_site
from companion.core.values import InvalidValue, Tuning
from companion.nginx import hostfiles
from companion.nginx.hostfiles import HTPASSWD, VHOST, UserFiles
from companion.sources.watch import watch_host_files
from tests.harness.containers import app as c
from tests.harness.hostfiles import dirs_in
from tests.harness.wait import wait_until

# -- typed per-path settings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"), [("10m", "10m"), ("0", "0"), ("512K", "512k"), (" 1g ", "1g"), ("007", "7")]
)
def test_body_size_takes_nginx_sizes(value: str, expected: str) -> None:
    assert values.parse_size(value) == expected


@pytest.mark.parametrize("value", ["10 m", "1.5m", "10mb", "-1", "", "10m;", "1t", "9999999999"])
def test_body_size_refuses_anything_else(value: str) -> None:
    with pytest.raises(InvalidValue, match="size in nginx syntax"):
        values.parse_size(value)


@pytest.mark.parametrize(
    ("value", "expected"), [("60", "60s"), ("60s", "60s"), ("5m", "300s"), ("1500ms", "1500ms"), ("1h", "3600s")]
)
def test_durations_are_normalised(value: str, expected: str) -> None:
    assert values.parse_duration(value) == expected


@pytest.mark.parametrize("value", ["0", "0s", "2d", "25h", "1.5s", "60 s", "$x", "1s;"])
def test_durations_are_bounded(value: str) -> None:
    with pytest.raises(InvalidValue, match="duration from 1ms to 86400s"):
        values.parse_duration(value)


def test_allow_list_parses_ipv4_ipv6_and_says_what_is_wrong() -> None:
    assert values.parse_allow_list("10.0.0.0/8, 192.0.2.7,2001:db8::/32,10.0.0.0/8") == (
        "10.0.0.0/8",
        "192.0.2.7/32",
        "2001:db8::/32",
    )
    with pytest.raises(InvalidValue, match="host bits set; the network is 10.0.0.0/8"):
        values.parse_allow_list("10.1.2.3/8")
    with pytest.raises(InvalidValue, match="not an IP address or CIDR"):
        values.parse_allow_list("10.0.0.0/8; deny all")
    with pytest.raises(InvalidValue, match="no address"):
        values.parse_allow_list(" , ")


def test_a_bad_typed_value_refuses_the_container_naming_the_variable() -> None:
    got = parse_site(c("app", "10.0.0.2", VIRTUAL_HOST="a.example.com", PROXY_CONNECT_TIMEOUT="90s"))
    assert isinstance(got, Rejection)
    assert got.variable == "PROXY_CONNECT_TIMEOUT"
    assert "container app: PROXY_CONNECT_TIMEOUT='90s' rejected: must be a duration from 1ms to 75s" in got.message


def test_typed_values_reach_the_location_and_conflicts_are_named() -> None:
    fleet = [
        c("a", "10.0.0.2", VIRTUAL_HOST="t.example.com", PROXY_MAX_BODY_SIZE="20m", PROXY_BUFFERING="off"),
        c("b", "10.0.0.3", VIRTUAL_HOST="t.example.com", PROXY_MAX_BODY_SIZE="1m"),
    ]
    desired = plan.build(fleet, {}, certificates.CertFiles("/p/f.pem", "/p/k.pem"))
    (location,) = desired.servers[0].locations
    assert location.tuning == Tuning(max_body_size="20m", buffering=False)
    assert any("disagree on PROXY_MAX_BODY_SIZE, PROXY_BUFFERING; using a's" in p for p in desired.problems)


# -- reading the folders --------------------------------------------------------------------------------


def test_only_files_named_exactly_for_a_served_host_are_read_and_never_through_a_link(tmp_path: Path) -> None:
    dirs = dirs_in(tmp_path / "nginx")
    vhost = Path(dirs.vhost)
    (vhost / "a.example.com").write_text("add_header X-A a;\n")
    (vhost / "default_location").write_text("add_header X-L l;\n")
    (vhost / "other.example.com").write_text("not read: no such host\n")
    secret = tmp_path / "secret"
    secret.write_text("secret\n")
    (vhost / "b.example.com").symlink_to(secret)
    os.mkfifo(vhost / "c.example.com")
    (Path(dirs.htpasswd) / "a.example.com").write_text("u:$apr1$x$y\n")
    found = hostfiles.scan(dirs, ["a.example.com", "b.example.com", "c.example.com", "*.w.example.com"])
    assert sorted(found.files) == [(HTPASSWD, "a.example.com"), (VHOST, "a.example.com"), (VHOST, "default_location")]
    assert all("secret" not in f.content for f in found.files.values())
    assert any("b.example.com: not used" in p and "symbolic link" in p for p in found.problems)
    assert any("c.example.com: not used" in p and "FIFO" in p for p in found.problems)
    chosen, _ = UserFiles().choose(found)
    assert chosen.server("a.example.com").content == "add_header X-A a;\n"
    assert chosen.server("b.example.com") is None
    assert chosen.location("a.example.com").name == "default_location"


@pytest.mark.parametrize(
    ("content", "problem"),
    [("", "no user in the file"), ("# only a comment\n", "no user"), ("user\n", "line 1"), ("a:b c\n", "line 1")],
)
def test_an_htpasswd_file_nginx_could_not_use_is_refused(content: str, problem: str) -> None:
    assert problem in hostfiles.htpasswd_problem(content)


def test_the_watch_wakes_for_a_change_but_not_for_the_companions_own_reads(tmp_path: Path) -> None:
    """Reading the folders every pass must not wake the next pass (a loop); a write does, and in
    PROXY_CONF's folder only PROXY_CONF itself."""
    dirs = dirs_in(tmp_path)
    (Path(dirs.vhost) / "a.example.com").write_text("add_header X-A a;\n")
    wakes: list[str] = []
    observer = watch_host_files(dirs, wakes.append)
    try:
        time.sleep(0.2)
        for _ in range(3):
            hostfiles.scan(dirs, ["a.example.com"])
        (tmp_path / "unrelated.conf").write_text("x\n")
        time.sleep(0.5)
        assert wakes == []
        (Path(dirs.htpasswd) / "a.example.com").write_text("u:$apr1$x$y\n")
        wait_until(lambda: wakes, 5.0, 0.02, "a wake")
        wakes.clear()
        Path(dirs.proxy_conf).write_text("proxy_http_version 1.1;\n")
        wait_until(lambda: wakes, 5.0, 0.02, "a wake")
    finally:
        observer.stop()


def test_a_wildcard_host_gets_only_the_default_files(tmp_path: Path) -> None:
    dirs = dirs_in(tmp_path)
    vhost = Path(dirs.vhost)
    (vhost / "default").write_text("add_header X-D d;\n")
    (vhost / "*.w.example.com").write_text("add_header X-W w;\n")
    (Path(dirs.htpasswd) / "*.w.example.com").write_text("u:$apr1$x$y\n")
    found = hostfiles.scan(dirs, ["*.w.example.com"])
    assert sorted(found.files) == [(VHOST, "default")]
    chosen, _ = UserFiles().choose(found)
    assert chosen.server("*.w.example.com").name == "default" and chosen.htpasswd("*.w.example.com") is None
