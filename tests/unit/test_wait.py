"""The kit's own promises: wait_until's stable runs and its timeout message, and the certificate and container
factories, so a harness change that weakens them fails here in a second instead of as flaky integration."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from tests.harness.certs import build_cert, certbot_layout, common_name, make_lineage
from tests.harness.containers import app, container
from tests.harness.wait import wait_quiet, wait_until


def test_wait_until_returns_the_value_that_held_and_asks_for_a_stable_run() -> None:
    answers = iter([1, 2, 1, 2, 2, 2, 3])
    assert wait_until(lambda: next(answers), 5, 0, until=lambda v: v == 2, stable=3) == 2
    assert next(answers) == 3  # the third 2 in a row ended the wait, not the first


def test_wait_until_fails_with_the_last_value_or_error_and_the_logs(tmp_path: Path) -> None:
    log = tmp_path / "error.log"
    log.write_text("nginx: [emerg] something\n")
    with pytest.raises(AssertionError) as failed:
        wait_until(lambda: 503, 0.05, 0.01, "the site", until=lambda v: v == 200, logs=[("nginx", log), lambda: "tail"])
    message = str(failed.value)
    assert "waiting for the site" in message and "last: 503" in message
    assert "nginx: [emerg] something" in message and "tail" in message

    def refused() -> int:
        raise ConnectionRefusedError("no")

    with pytest.raises(AssertionError, match="ConnectionRefusedError"):
        wait_until(refused, 0.05, 0.01)
    with pytest.raises(ConnectionRefusedError):  # not a "not yet" when errors says so
        wait_until(refused, 0.05, 0.01, errors=())


def test_wait_quiet_returns_once_the_value_stops_moving() -> None:
    values = iter([1, 2, 3] + [3] * 1000)
    assert wait_quiet(lambda: next(values), 0.05, 5, interval=0.01) == 3


def test_certificates_carry_what_was_asked(tmp_path: Path) -> None:
    ca, ca_key = build_cert("test CA", ca=True)
    leaf, _ = build_cert("a.test", sans=["a.test", "b.test"], ips=["127.0.0.1"], issuer=(ca, ca_key), ca=False)
    assert leaf.issuer == ca.subject and common_name(leaf) == "a.test"
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["a.test", "b.test"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    make_lineage(tmp_path, "l", ["l.test"], days=10, age_days=1)
    pem = (tmp_path / "live" / "l" / "fullchain.pem").read_bytes()
    assert x509.load_pem_x509_certificate(pem).not_valid_after_utc - dt.datetime.now(dt.UTC) < dt.timedelta(days=10)
    certbot_layout(tmp_path, "c")
    assert (tmp_path / "live" / "c" / "privkey.pem").is_symlink()
    assert (tmp_path / "archive" / "c" / "privkey1.pem").is_file()


def test_containers_default_to_one_proxy_network() -> None:
    assert app("web", VIRTUAL_HOST="a.test").networks == {"proxy": "10.0.0.2"}
    assert app("web", "").networks == {}
    assert container("x", network_mode="host").id == "id-x"
