"""Pure decisions of the certificate side: when to order, backoff, certbot's command and reason, and reading
certificates from disk with cryptography (made here, so nothing is mocked). No process, no socket: the unit tier.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from companion.acme import certs
from companion.acme.orders import AcmeManager, load_state, save_state
from companion.acme.policy import (
    BACKOFF_CAP,
    CertState,
    backoff,
    certbot_command,
    certbot_reason,
    due_reason,
)
from companion.core import certificates
from companion.core.model import CertRequest
from companion.serve.control import parse_renew
from companion.settings.config import Settings
from tests.harness.certs import LINEAGE_NOW, make_lineage

NOW = LINEAGE_NOW


def request(name: str = "a.test", *domains: str) -> CertRequest:
    return CertRequest(name, domains or (name,), "")


def test_reading_a_lineage_gives_names_expiry_issuer_and_ocsp(tmp_path: Path) -> None:
    make_lineage(tmp_path, "a.test", ["a.test", "b.test"], ocsp=True)
    status = certs.read_lineage(tmp_path, "a.test")
    assert status.problem == ""
    assert status.domains == ("a.test", "b.test")
    assert status.issuer == "Test Issuer"
    assert status.not_after == NOW + dt.timedelta(days=90)
    assert status.ocsp is True
    assert certificates.usable({"a.test": status}, tmp_path)["a.test"].fullchain.endswith("live/a.test/fullchain.pem")


@pytest.mark.parametrize(
    ("breakage", "problem"),
    [
        (lambda live: (live / "fullchain.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n"), "unreadable"),
        (lambda live: (live / "privkey.pem").write_bytes(b""), "unreadable"),
        (lambda live: (live / "privkey.pem").unlink(), "No such file"),
        (
            lambda live: (live / "privkey.pem").write_bytes(
                ec.generate_private_key(ec.SECP256R1()).private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            ),
            "does not match",
        ),
    ],
    ids=["truncated-chain", "empty-key", "missing-key", "mismatched-key"],
)
def test_broken_lineages_are_reported_and_not_usable(tmp_path: Path, breakage, problem: str) -> None:
    make_lineage(tmp_path, "bad.test", ["bad.test"])
    make_lineage(tmp_path, "good.test", ["good.test"])
    breakage(tmp_path / "live" / "bad.test")
    statuses = certs.scan(tmp_path)
    assert problem in statuses["bad.test"].problem
    assert set(certificates.usable(statuses, tmp_path)) == {"good.test"}


def test_placeholder_is_made_once_with_a_private_key(tmp_path: Path) -> None:
    files = certs.ensure_placeholder(tmp_path)
    key = Path(files.privkey)
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert oct(key.parent.stat().st_mode & 0o777) == "0o700"
    before = Path(files.fullchain).read_bytes()
    assert certs.ensure_placeholder(tmp_path) == files
    assert Path(files.fullchain).read_bytes() == before
    Path(files.fullchain).write_text("garbage")
    certs.ensure_placeholder(tmp_path)
    assert Path(files.fullchain).read_bytes() != b"garbage"


@pytest.mark.parametrize(
    ("domains", "days", "age", "renew_before", "expected"),
    [
        (["a.test"], 90, 0, 0.0, ""),
        (["a.test"], 90, 59, 0.0, ""),  # 31 days left, window is 30
        (["a.test"], 90, 61, 0.0, "expires"),  # 29 days left
        (["a.test"], 90, 50, 45.0, "expires"),  # explicit window
        (["a.test", "b.test"], 90, 0, 0.0, "names changed"),
    ],
)
def test_due_reason(
    tmp_path: Path, domains: list[str], days: int, age: int, renew_before: float, expected: str
) -> None:
    make_lineage(tmp_path, "a.test", domains, days=days, age_days=age)
    status = certs.read_lineage(tmp_path, "a.test")
    reason = due_reason(request("a.test"), status, NOW, renew_before)
    assert (expected in reason) if expected else reason == ""


def test_due_reason_without_or_with_broken_certificate(tmp_path: Path) -> None:
    assert due_reason(request(), None, NOW, 0.0) == "no certificate yet"
    broken = certificates.CertStatus("a.test", problem="private key does not match the certificate")
    assert "unusable" in due_reason(request(), broken, NOW, 0.0)


def test_backoff_doubles_and_stays_inside_lets_encrypts_failed_validation_limit() -> None:
    assert [backoff(n, 300) for n in range(1, 6)] == [300, 600, 1200, 2400, 4800]
    assert backoff(40, 300) == BACKOFF_CAP
    # With the default base, at most 5 failures fit in any hour (Let's Encrypt: 5 per name per hour).
    times = [0.0]
    for n in range(1, 10):
        times.append(times[-1] + backoff(n, 300))
    assert max(sum(1 for t in times if start <= t < start + 3600) for start in times) <= 5


def test_certbot_reason_is_one_line_from_the_ca() -> None:
    output = """Saving debug log to /x/letsencrypt.log
Requesting a certificate for bad.test

Certbot failed to authenticate some domains (authenticator: webroot). The Certificate Authority reported these problems:
  Domain: bad.test
  Type:   dns
  Detail: DNS problem: NXDOMAIN looking up A for bad.test

Hint: The Certificate Authority failed to download the temporary challenge files created by Certbot.

Some challenges have failed.
Ask for help or search for solutions at https://community.letsencrypt.org. See the logfile /x for more details.
"""
    assert certbot_reason(output) == "dns; DNS problem: NXDOMAIN looking up A for bad.test"
    unexpected = "Saving debug log to /x\nAn unexpected error occurred:\nConnectionError: refused\nAsk for help\n"
    assert certbot_reason(unexpected) == "ConnectionError: refused"
    nonce = "An unexpected error occurred:\nJWS has an invalid anti-replay nonce: 0cO0\nAsk for help or search\n"
    assert certbot_reason(nonce) == "JWS has an invalid anti-replay nonce: 0cO0"
    assert "\n" not in certbot_reason(output)


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        # A CA's Detail line with an ANSI colour, a bell and a carriage return inside it.
        (
            "Certbot failed to authenticate some domains\n  Type:   unauthorized\n"
            "  Detail: 1.2.3.4: Invalid response \x1b[31mred\x1b[0m\x07\roverwritten\n",
            "unauthorized; 1.2.3.4: Invalid response \\x1b[31mred\\x1b[0m\\x07\\x0doverwritten",
        ),
        (
            "An unexpected error occurred:\n\x1b]0;title\x07 boom\u202e\nAsk for help\n",
            "\\x1b]0;title\\x07 boom\\u202e",
        ),
        ("Some error \x9b2J happened\n", "Some error \\x9b2J happened"),
    ],
)
def test_certbot_reason_escapes_control_characters_from_the_ca(output: str, reason: str) -> None:
    got = certbot_reason(output)
    assert got == reason
    assert got.isprintable() and len(got.splitlines()) == 1


def test_certbot_reason_is_cut_before_escaping() -> None:
    got = certbot_reason("  Detail: " + "x" * 498 + "\x1b\x1b\x1b\n")
    assert got == "x" * 498 + "\\x1b\\x1b"


def test_certbot_command_carries_every_setting() -> None:
    settings = Settings(certs_dir="/c", webroot="/w", acme_server="https://ca/dir", key_type="rsa", rsa_key_size=4096)
    cmd = certbot_command(settings, CertRequest("n", ("a.test", "b.test"), "me@example.com"), force=True)
    joined = " ".join(cmd)
    for part in (
        "certonly --config-dir /c --work-dir /c/companion/work --logs-dir /c/companion/logs --server https://ca/dir",
        "--webroot --webroot-path /w --preferred-challenges http --cert-name n",
        "--non-interactive --agree-tos",
        "--no-random-sleep-on-renew",
        "--key-type rsa --rsa-key-size 4096",
        "--email me@example.com",
        "--force-renewal",
        "-d a.test -d b.test",
    ):
        assert part in joined
    anonymous = certbot_command(Settings(), CertRequest("n", ("a.test",), ""), force=False)
    assert "--register-unsafely-without-email" in anonymous
    assert "--force-renewal" not in anonymous
    assert "--elliptic-curve" in anonymous


def test_state_survives_a_round_trip_and_bad_files(tmp_path: Path) -> None:
    state = {"a.test": CertState(domains=["a.test"], failures=2, next_try=123.0, last_error="dns")}
    save_state(tmp_path, state)
    path = tmp_path / "companion" / "acme-state.json"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert load_state(tmp_path) == state
    path.write_text("{not json")
    assert load_state(tmp_path) == {}
    path.write_text(json.dumps({"a.test": {"unknown": 1}}))
    assert load_state(tmp_path) == {}


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'{"names": []}',
        b'{"names": [], "force": 1}',
        b'{"names": ["a\\u001b"], "force": true}',
        b'{"names": "a.test", "force": true}',
        b'{"names": [], "force": true, "x": 1}',
        b"\xff",
    ],
)
def test_a_renew_request_of_another_shape_is_refused(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse_renew(body)
    assert parse_renew(b'{"names": ["a.test"], "force": false}') == (["a.test"], False)


def test_a_pass_during_an_order_leaves_its_entry_to_the_worker(tmp_path: Path) -> None:
    """The new certificate is on disk (the watcher woke a pass) before the worker settles the order: the
    pass must not reset the failure count, or the recovery would go unreported."""
    make_lineage(tmp_path, "back.test", ["back.test"])
    release = threading.Event()
    settings = Settings(certs_dir=str(tmp_path), webroot=str(tmp_path / "webroot"))
    manager = AcmeManager(
        settings, lambda _reason: None, lambda: release.wait() and "http://127.0.0.1:9", clock=NOW.timestamp
    )
    try:
        manager.state["back.test"] = CertState(["back.test"], failures=3, last_error="x", in_progress=True)
        manager.update((request("back.test"),), certs.scan(tmp_path))
        assert manager.state["back.test"].failures == 3 and manager.state["back.test"].in_progress
        manager.state["back.test"].in_progress = False
        manager.update((request("back.test"),), certs.scan(tmp_path))
        assert manager.state["back.test"].failures == 0  # settled: a usable certificate clears the streak
    finally:
        release.set()
        manager.stop()
