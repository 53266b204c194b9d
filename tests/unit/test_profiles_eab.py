"""ACME profiles (ACME_CERT_PROFILE) and external account binding (ACME_EAB_*): parsing, decisions and the
certbot command lines, with no CA. The orders through a real CA are in tests/integration."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import pytest

from companion.acme.policy import (
    account_key,
    certbot_command,
    due_reason,
    eab_key_config,
    lineage_request,
    parse_accounts,
    profile_refusal,
    register_command,
)
from companion.core.certificates import CertStatus
from companion.core.model import CertRequest, Policy, Rejection, Site, parse_site
from companion.core.values import InvalidValue, parse_eab_hmac_key, parse_eab_kid, parse_profile
from companion.core.variables import container_problems, setting_problems
from companion.loop.reconcile import policy_of
from companion.settings import config
from companion.settings.config import Settings, SettingsError
from tests.harness.containers import container

KEY = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"  # Pebble's example EAB key
MAIN = "https://ca.test/dir"


def load(env: dict[str, str]) -> Settings:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return config.load(parser.parse_args([]), env)


def parsed(env: dict[str, str], policy: Policy | None = None) -> Site | Rejection | None:
    info = container("web", env={"VIRTUAL_HOST": "a.test", "LETSENCRYPT_HOST": "a.test", **env})
    return parse_site(info, policy or Policy())


# -- ACME_CERT_PROFILE -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["classic", "shortlived", "tlsserver", "Custom.Profile_2", " shortlived "])
def test_a_profile_name_is_kept_as_the_ca_spells_it(value: str) -> None:
    assert parse_profile(value) == value.strip()


@pytest.mark.parametrize("value", ["", "-x", "short lived", "a;b", ".hidden", "x" * 65, "é"])
def test_a_profile_name_that_is_not_one_is_refused(value: str) -> None:
    with pytest.raises(InvalidValue):
        parse_profile(value)


def test_the_containers_profile_wins_over_the_companions_default() -> None:
    own = parsed({"ACME_CERT_PROFILE": "shortlived"}, Policy(default_profile="classic"))
    default = parsed({}, Policy(default_profile="classic"))
    none = parsed({})
    assert isinstance(own, Site) and own.cert is not None and own.cert.profile == "shortlived"
    assert isinstance(default, Site) and default.cert is not None and default.cert.profile == "classic"
    assert isinstance(none, Site) and none.cert is not None and none.cert.profile == ""


def test_a_bad_profile_rejects_the_container_naming_the_variable() -> None:
    result = parsed({"ACME_CERT_PROFILE": "--staging"})
    assert isinstance(result, Rejection)
    assert (result.container, result.variable) == ("web", "ACME_CERT_PROFILE")
    assert "ACME profile name" in result.message


def test_the_profile_is_read_and_no_longer_warned_about() -> None:
    info = container("web", env={"VIRTUAL_HOST": "a.test", "ACME_CERT_PROFILE": "shortlived"})
    assert container_problems(info) == ()
    assert setting_problems({"ACME_CERT_PROFILE": "x", "ACME_EAB_KID": "k", "ACME_EAB_HMAC_KEY": KEY}) == ()
    # a container's own EAB is not applied: it says so rather than being ignored
    info = container("web", env={"VIRTUAL_HOST": "a.test", "ACME_EAB_KID": "k"})
    assert any("ACME_EAB_KID is not supported" in line for line in container_problems(info))


def test_the_companions_profile_setting() -> None:
    assert load({"ACME_CERT_PROFILE": "shortlived"}).acme_cert_profile == "shortlived"
    assert load({"ACME_CERT_PROFILE": ""}).acme_cert_profile == ""
    with pytest.raises(SettingsError, match="acme_cert_profile: 'a b'"):
        load({"ACME_CERT_PROFILE": "a b"})


def test_certbot_is_asked_for_the_profile() -> None:
    settings = Settings(acme_server=MAIN)
    asked = certbot_command(settings, CertRequest("n", ("a.test",), "", profile="shortlived"), force=False)
    assert asked[asked.index("--preferred-profile") + 1] == "shortlived"
    assert "--preferred-profile" not in certbot_command(settings, CertRequest("n", ("a.test",), ""), force=False)


def test_a_change_of_profile_reorders() -> None:
    now = dt.datetime(2026, 1, 10, tzinfo=dt.UTC)
    status = CertStatus(
        "a.test",
        ("a.test",),
        not_before=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        not_after=dt.datetime(2026, 4, 1, tzinfo=dt.UTC),
        server=MAIN,
        profile="classic",
    )
    same = CertRequest("a.test", ("a.test",), "", MAIN, profile="classic")
    assert due_reason(same, status, now, 0) == ""
    changed = CertRequest("a.test", ("a.test",), "", MAIN, profile="shortlived")
    assert due_reason(changed, status, now, 0) == "profile changed from classic to shortlived"
    back = CertRequest("a.test", ("a.test",), "", MAIN)
    assert due_reason(back, status, now, 0) == "profile changed from classic to the default"
    # a certificate copied in by hand (no renewal file) has no recorded profile: nothing to compare
    by_hand = CertStatus("a.test", ("a.test",), not_before=status.not_before, not_after=status.not_after)
    assert due_reason(changed, by_hand, now, 0) == ""


def test_a_lineage_renewed_with_no_container_keeps_its_profile() -> None:
    request = lineage_request(Settings(), "a.test", ("a.test",), MAIN, "shortlived")
    assert (request.server, request.profile) == (MAIN, "shortlived")


def test_a_profile_the_ca_does_not_offer_is_refused_naming_those_it_does() -> None:
    directory = {"newOrder": "x", "meta": {"profiles": {"default": "90 days", "shortlived": "6 days"}}}
    assert profile_refusal("shortlived", MAIN, directory) == ""
    assert profile_refusal("", MAIN, {}) == ""
    assert profile_refusal("tlsserver", MAIN, directory) == (
        f"ACME_CERT_PROFILE=tlsserver: the CA at {MAIN} offers only default, shortlived"
    )
    assert "offers no profiles" in profile_refusal("classic", MAIN, {"meta": {}})
    assert "offers no profiles" in profile_refusal("classic", MAIN, ["not", "a", "directory"])


# -- external account binding -----------------------------------------------------------------------------


def test_eab_values() -> None:
    assert parse_eab_kid(" kid-1 ") == "kid-1"
    assert parse_eab_hmac_key(KEY) == KEY
    for kid in ("-x", "a b", "k\ny"):
        with pytest.raises(InvalidValue):
            parse_eab_kid(kid)
    for key in ("short", "has space" * 4, "+/+/+/+/+/+/+/+/+/"):
        with pytest.raises(InvalidValue):
            parse_eab_hmac_key(key)


def test_eab_needs_both_halves() -> None:
    settings = load({"ACME_EAB_KID": "kid-1", "ACME_EAB_HMAC_KEY": KEY})
    assert (settings.acme_eab_kid, settings.acme_eab_hmac_key) == ("kid-1", KEY)
    with pytest.raises(SettingsError, match="ACME_EAB_KID needs its HMAC key"):
        load({"ACME_EAB_KID": "kid-1"})
    with pytest.raises(SettingsError, match="ACME_EAB_HMAC_KEY needs its key id"):
        load({"ACME_EAB_HMAC_KEY": KEY})


def test_the_hmac_key_never_shows_in_an_error_or_the_settings_repr() -> None:
    bad = "secret value that is not base64"
    with pytest.raises(SettingsError) as refused:
        load({"ACME_EAB_KID": "kid-1", "ACME_EAB_HMAC_KEY": bad})
    assert "secret" not in str(refused.value) and "base64url" in str(refused.value)
    settings = load({"ACME_EAB_KID": "kid-1", "ACME_EAB_HMAC_KEY": KEY})
    assert KEY not in repr(settings) and "kid-1" in repr(settings)


def test_the_hmac_key_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "eab_key"
    secret.write_text(KEY + "\n")
    settings = load({"ACME_EAB_KID": "kid-1", "ACME_EAB_HMAC_KEY_FILE": str(secret)})
    assert settings.acme_eab_hmac_key == KEY
    with pytest.raises(SettingsError, match="not both"):
        load({"ACME_EAB_KID": "kid-1", "ACME_EAB_HMAC_KEY": KEY, "ACME_EAB_HMAC_KEY_FILE": str(secret)})
    with pytest.raises(SettingsError, match="cannot read .*missing"):
        load({"ACME_EAB_KID": "kid-1", "ACME_EAB_HMAC_KEY_FILE": str(tmp_path / "missing")})
    with pytest.raises(SettingsError, match="absolute path"):
        load({"ACME_EAB_KID": "kid-1", "ACME_EAB_HMAC_KEY_FILE": "eab_key"})
    secret.write_text("not a key, but a secret all the same")
    with pytest.raises(SettingsError, match="the key must be") as refused:
        load({"ACME_EAB_KID": "kid-1", "ACME_EAB_HMAC_KEY_FILE": str(secret)})
    assert "secret all the same" not in str(refused.value)


def test_registration_binds_the_account_without_the_key_on_the_command_line(tmp_path: Path) -> None:
    settings = Settings(acme_server=MAIN, acme_eab_kid="kid-1", acme_eab_hmac_key=KEY)
    command = register_command(settings, MAIN, "me@a.test", tmp_path / "scratch", tmp_path / "eab.ini")
    assert command[command.index("--eab-kid") + 1] == "kid-1"
    assert command[command.index("--config") + 1] == str(tmp_path / "eab.ini")
    assert not any(KEY in part for part in command)  # certbot logs its arguments into the certs volume
    assert eab_key_config(settings) == f"eab-hmac-key = {KEY}\n"
    plain = register_command(Settings(acme_server=MAIN), MAIN, "me@a.test", tmp_path / "scratch")
    assert "--eab-kid" not in plain and "--config" not in plain


def test_accounts_are_kept_per_ca_email_and_key_id() -> None:
    assert account_key(MAIN, "me@a.test") == f"{MAIN} me@a.test"  # accounts registered before EAB keep theirs
    assert account_key(MAIN, "me@a.test", "kid-1") == f"{MAIN} me@a.test kid-1"
    assert (
        len(
            {
                account_key(MAIN, "me@a.test"),
                account_key(MAIN, "me@a.test", "kid-1"),
                account_key(MAIN, "me@a.test", "kid-2"),
            }
        )
        == 3
    )
    folder = "accounts/ca.test/dir/" + "a" * 32
    assert parse_accounts({account_key(MAIN, "", "kid-1"): folder}) == {f"{MAIN}  kid-1": folder}


def test_the_companions_profile_reaches_the_containers_rules() -> None:
    assert policy_of(load({"ACME_CERT_PROFILE": "shortlived"})).default_profile == "shortlived"
