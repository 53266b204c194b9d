"""acme-companion certificates taken into certbot's layout (companion/imports.py), the supervisor's exit codes
and the host-mode network choice of the single-container image: the pure parts and file-level runs.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from pathlib import Path

import pytest

from companion import cli
from companion.acme import certs, imports
from companion.acme.imports import Candidate, candidates, check_pair, import_all
from companion.core import reach
from companion.core.container import ContainerInfo
from companion.serve.supervisor import final_code, settings_flags, status_code
from tests.harness.acmecompanion import TestCA, snapshot, write_layout

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def ca() -> TestCA:
    return TestCA()


# -- finding pairs -------------------------------------------------------------------------------


def test_hosts_linked_to_one_folder_are_one_lineage_named_after_the_folder() -> None:
    entries = {
        "a.test.crt": "./a.test/fullchain.pem",
        "a.test.key": "./a.test/key.pem",
        "a.test.chain.pem": "./a.test/chain.pem",
        "www.a.test.crt": "./a.test/fullchain.pem",
        "www.a.test.key": "./a.test/key.pem",
        "b.test.crt": None,  # put there by hand
        "b.test.key": None,
        "default.crt": None,  # nginx-proxy's default certificate stays where it is
        "default.key": None,
    }
    found, problems = candidates(entries)
    assert problems == []
    assert found == [
        Candidate("a.test", "a.test.crt", "a.test.key", "a.test.chain.pem"),
        Candidate("b.test", "b.test.crt", "b.test.key", ""),
    ]


def test_a_crt_without_key_or_with_a_strange_name_or_link_is_named() -> None:
    found, problems = candidates(
        {
            "lonely.test.crt": None,
            "UPPER..crt": None,
            "x.test.crt": "../../etc/fullchain.pem",
            "x.test.key": None,
            "y.test.crt": "/abs/olute/fullchain.pem",
            "y.test.key": None,
            "z.test.crt": "./../fullchain.pem",
            "z.test.key": None,
        }
    )
    # A link that is not acme-companion's is read as a plain pair: where it leads is checked when it is read.
    assert [c.name for c in found] == ["x.test", "y.test"]
    assert problems == [
        "UPPER..crt: not named after a host name",
        "lonely.test.crt: no lonely.test.key beside it",
        "z.test.crt: links to ./../fullchain.pem, not to a certificate folder named after a host",
    ]


# -- checking pairs -------------------------------------------------------------------------------


def test_a_good_pair_is_split_into_leaf_chain_and_key(ca: TestCA) -> None:
    issued = ca.issue(["a.test", "www.a.test"])
    pair = check_pair(issued.fullchain_pem, issued.key_pem, b"", NOW)
    assert not isinstance(pair, str)
    assert pair.cert_pem == issued.cert_pem and pair.chain_pem == issued.chain_pem
    assert pair.domains == ("a.test", "www.a.test")
    # A .crt with only the leaf takes its chain from .chain.pem.
    alone = check_pair(issued.cert_pem, issued.key_pem, issued.chain_pem, NOW)
    assert not isinstance(alone, str) and alone.fullchain_pem == issued.fullchain_pem


def test_broken_mismatched_or_expired_pairs_are_refused_with_the_reason(ca: TestCA) -> None:
    one, other = ca.issue(["a.test"]), ca.issue(["a.test"])
    assert check_pair(one.fullchain_pem, other.key_pem, b"", NOW) == "the private key does not match the certificate"
    assert check_pair(b"junk", one.key_pem, b"", NOW).startswith("unreadable certificate or key")
    assert check_pair(one.fullchain_pem, b"junk", b"", NOW).startswith("unreadable certificate or key")
    old = ca.issue(["a.test"], days=10, age_days=20)
    assert str(check_pair(old.fullchain_pem, old.key_pem, b"", NOW)).startswith("expired on ")


# -- importing ------------------------------------------------------------------------------------


def test_import_makes_a_certbot_lineage_and_never_touches_the_originals(tmp_path: Path, ca: TestCA) -> None:
    issued = ca.issue(["a.test", "www.a.test"])
    write_layout(tmp_path, ["a.test", "www.a.test"], issued)
    before = snapshot(tmp_path)

    assert import_all(tmp_path) == ["a.test"]

    assert snapshot(tmp_path) == before
    status = certs.read_lineage(tmp_path, "a.test")
    assert status.problem == "" and status.domains == ("a.test", "www.a.test")
    assert status.serial == f"{issued.serial:x}"
    live = tmp_path / "live" / "a.test"
    assert os.readlink(live / "privkey.pem") == "../../archive/a.test/privkey1.pem"
    assert (tmp_path / "archive" / "a.test" / "privkey1.pem").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "archive" / "a.test").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "archive" / "a.test" / "chain1.pem").read_bytes() == issued.chain_pem
    renewal = (tmp_path / "renewal" / "a.test.conf").read_text()
    assert f"fullchain = {live}/fullchain.pem" in renewal and "server" not in renewal
    assert not (tmp_path / "companion" / "import" / "a.test").exists()
    # At the next start it exists: nothing is imported again, nothing is overwritten.
    assert import_all(tmp_path) == []


def test_a_broken_pair_is_refused_and_does_not_block_the_others(
    tmp_path: Path, ca: TestCA, caplog: pytest.LogCaptureFixture
) -> None:
    write_layout(tmp_path, ["good.test"], ca.issue(["good.test"]))
    bad = ca.issue(["bad.test"])
    write_layout(tmp_path, ["bad.test"], bad)
    (tmp_path / "bad.test" / "key.pem").write_bytes(ca.issue(["bad.test"]).key_pem)  # another key
    outside = tmp_path.parent / f"{tmp_path.name}-outside.pem"
    outside.write_bytes(bad.fullchain_pem)
    (tmp_path / "out.test.crt").symlink_to(outside)
    (tmp_path / "out.test.key").symlink_to(tmp_path / "bad.test" / "key.pem")

    with caplog.at_level(logging.WARNING, logger="companion.acme.imports"):
        assert import_all(tmp_path) == ["good.test"]

    text = caplog.text
    assert "bad.test.crt: the private key does not match the certificate; not imported" in text
    assert f"out.test.crt: {tmp_path / 'out.test.crt'}: leads to {outside}, outside {tmp_path}" in text
    assert not (tmp_path / "live" / "bad.test").exists() and not (tmp_path / "archive" / "bad.test").exists()
    assert sorted(p.name for p in (tmp_path / "live").iterdir()) == ["good.test"]


def test_a_leftover_staging_folder_or_a_failed_write_does_not_stop_the_start(
    tmp_path: Path, ca: TestCA, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for host in ("a.test", "b.test"):
        write_layout(tmp_path, [host], ca.issue([host]))
    (tmp_path / "companion" / "import" / "a.test" / "archive").mkdir(parents=True)  # a crash mid-import
    (tmp_path / "companion" / "import" / "a.test" / "archive" / "cert1.pem").write_text("half")
    rename = os.rename

    def read_only_for_b(source: str, target: str) -> None:
        if str(target).endswith("live/b.test"):  # the last step: what came before is undone
            raise OSError(30, "Read-only file system", str(target))
        rename(source, target)

    monkeypatch.setattr(imports.os, "rename", read_only_for_b)
    with caplog.at_level(logging.WARNING, logger="companion.acme.imports"):
        assert import_all(tmp_path) == ["a.test"]
    assert "b.test.crt: cannot write its lineage ([Errno 30] Read-only file system" in caplog.text
    assert certs.read_lineage(tmp_path, "a.test").problem == ""
    assert not (tmp_path / "companion" / "import" / "b.test").exists()
    assert not (tmp_path / "archive" / "b.test").exists() and not (tmp_path / "renewal" / "b.test.conf").exists()


def test_an_existing_lineage_of_the_same_name_wins(tmp_path: Path, ca: TestCA) -> None:
    write_layout(tmp_path, ["a.test"], ca.issue(["a.test"]))
    (tmp_path / "live" / "a.test").mkdir(parents=True)
    assert import_all(tmp_path) == []
    assert list((tmp_path / "live" / "a.test").iterdir()) == []


# -- the single-container image's pure parts ------------------------------------------------------


def _own(networks: dict[str, str], mode: str = "default", gateways: dict[str, str] | None = None) -> ContainerInfo:
    return ContainerInfo(
        id="self", name="proxy", labels={}, networks=networks, network_mode=mode, gateways=gateways or {}
    )


def test_beside_nginx_in_a_container_backends_are_reached_on_its_own_networks() -> None:
    own = _own({"front": "10.0.1.2", "back": "10.0.2.2"}, gateways={"back": "10.0.2.1", "front": "10.0.1.1"})
    networks, host = reach.local_reach(own)
    assert networks == ("back", "front") and host == "10.0.2.1"
    app = ContainerInfo(id="a", name="app", labels={}, networks={"aaa": "10.9.0.5", "front": "10.0.1.7"})
    assert reach.pick_address(app, networks, host) == "10.0.1.7"  # not aaa, first by name but not shared
    # On the host (no container of our own, or the host's network): any network, the host on loopback.
    assert reach.local_reach(None) == (None, reach.LOOPBACK)
    assert reach.local_reach(_own({"host": ""}, mode="host")) == (None, reach.LOOPBACK)


@pytest.mark.parametrize(
    ("first_death", "codes", "expected"),
    [
        (None, {"nginx": 0, "companion": 0}, 0),  # asked to stop, both stopped cleanly
        (None, {"nginx": 0, "companion": 2}, 2),
        (("nginx", 137), {"nginx": 137, "companion": 0}, 137),  # nginx killed
        (("companion", 0), {"companion": 0, "nginx": 0}, 1),  # ending unasked is a failure too
    ],
)
def test_the_supervisor_fails_when_a_child_dies_on_its_own(
    first_death: tuple[str, int] | None, codes: dict[str, int], expected: int
) -> None:
    assert final_code(first_death, codes) == expected


def test_settings_flags_reach_companion_run_without_the_command_word() -> None:
    assert settings_flags(["--nginx-container", "proxy", "proxy", "--log-level=DEBUG"]) == [
        "--nginx-container",
        "proxy",
        "--log-level=DEBUG",
    ]
    assert settings_flags(["proxy"]) == []


def test_exit_status_of_a_signalled_child_counts_as_128_plus_the_signal() -> None:
    assert status_code(9) == 128 + 9  # os.wait's status for death by SIGKILL
    assert status_code(3 << 8) == 3


def test_proxy_refuses_a_bad_setting_before_starting_anything(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--ssl-policy", "bogus", "proxy"]) == 2
    assert "invalid setting: ssl_policy" in capsys.readouterr().err
