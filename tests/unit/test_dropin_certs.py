"""Drop-in certificate variables, pure parts: ACME_* beside LETSENCRYPT_*, the CA a container may choose,
the settings behind it, one account per (CA, email), CA changes, and the operator's default certificate."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import pytest

from companion.acme.certs import default_cert, renewal_params
from companion.acme.policy import (
    account_key,
    certbot_command,
    due_reason,
    parse_accounts,
    register_command,
)
from companion.core import plan
from companion.core.certificates import CertFiles, CertStatus
from companion.core.container import ContainerInfo
from companion.core.model import CertRequest, Policy, Rejection, Site, parse_site
from companion.nginx.render import MAIN_FILE, RenderOptions, render
from companion.settings.config import LETSENCRYPT_STAGING, Settings, SettingsError, load
from tests.harness.containers import container

MAIN, STAGING, OTHER = "https://ca.test/dir", "https://staging.test/dir", "https://other.test/acme/directory"
POLICY = Policy(default_email="ops@x.io", acme_server=MAIN, staging_server=STAGING)
PLACEHOLDER = CertFiles("/c/companion/placeholder/fullchain.pem", "/c/companion/placeholder/privkey.pem")
DEFAULT = CertFiles("/c/default.crt", "/c/default.key", serial="d1")


def parse(policy: Policy = POLICY, **env: str) -> Site | Rejection | None:
    return parse_site(ContainerInfo(id="i", name="web", env={"VIRTUAL_HOST": "a.com,b.com", **env}), policy)


def request(policy: Policy = POLICY, **env: str) -> CertRequest:
    site = parse(policy, **env)
    assert isinstance(site, Site) and site.cert is not None, site
    return site.cert


# -- ACME_HOST / ACME_EMAIL beside LETSENCRYPT_* -----------------------------------------------------


@pytest.mark.parametrize(
    "env",
    [
        {"ACME_HOST": "a.com", "ACME_EMAIL": "me@x.io"},
        {"LETSENCRYPT_HOST": "a.com", "LETSENCRYPT_EMAIL": "me@x.io"},
        {"ACME_HOST": "a.com", "LETSENCRYPT_HOST": " a.com ", "ACME_EMAIL": "me@x.io", "LETSENCRYPT_EMAIL": "me@x.io"},
        {"ACME_HOST": "a.com", "LETSENCRYPT_EMAIL": "me@x.io"},
    ],
)
def test_either_spelling_asks_for_the_same_certificate(env: dict[str, str]) -> None:
    assert request(**env) == CertRequest("a.com", ("a.com",), "me@x.io", MAIN)


@pytest.mark.parametrize(
    ("env", "variable", "other"),
    [
        ({"ACME_HOST": "a.com", "LETSENCRYPT_HOST": "b.com"}, "ACME_HOST", "LETSENCRYPT_HOST='b.com'"),
        (
            {"ACME_HOST": "a.com", "ACME_EMAIL": "me@x.io", "LETSENCRYPT_EMAIL": "you@x.io"},
            "ACME_EMAIL",
            "LETSENCRYPT_EMAIL='you@x.io'",
        ),
        ({"ACME_HOST": "a.com", "ACME_TEST": "true", "LETSENCRYPT_TEST": "false"}, "ACME_TEST", "LETSENCRYPT_TEST"),
    ],
)
def test_two_spellings_that_disagree_refuse_the_container_and_say_which_to_keep(
    env: dict[str, str], variable: str, other: str
) -> None:
    result = parse(**env)
    assert isinstance(result, Rejection) and result.variable == variable
    legacy = other.split("=")[0]
    assert f"rejected: differs from {other}" in result.message
    assert f"keep {variable} (acme-companion's current name) and remove {legacy}" in result.message


def test_acme_host_alone_needs_virtual_host_and_its_names_are_checked() -> None:
    alone = parse_site(ContainerInfo(id="i", name="web", env={"ACME_HOST": "a.com"}), POLICY)
    assert isinstance(alone, Rejection) and alone.variable == "ACME_HOST" and "needs VIRTUAL_HOST" in alone.message
    outside = parse(ACME_HOST="c.com")
    assert isinstance(outside, Rejection) and outside.variable == "ACME_HOST"
    assert outside.message.endswith("rejected: c.com not among the VIRTUAL_HOST names")
    bad_email = parse(ACME_HOST="a.com", ACME_EMAIL="-x@x.io")
    assert isinstance(bad_email, Rejection) and bad_email.variable == "ACME_EMAIL"


# -- the CA of one container --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "server"),
    [
        ({}, MAIN),
        ({"LETSENCRYPT_TEST": "true"}, STAGING),
        ({"ACME_TEST": "TRUE"}, STAGING),
        ({"ACME_TEST": "false"}, MAIN),
        ({"ACME_CA_URI": STAGING}, STAGING),
        ({"ACME_CA_URI": STAGING, "ACME_TEST": "true"}, STAGING),
        ({"ACME_CA_URI": f" {MAIN} "}, MAIN),
    ],
)
def test_the_container_chooses_its_ca_among_the_allowed(env: dict[str, str], server: str) -> None:
    assert request(LETSENCRYPT_HOST="a.com", **env).server == server


def test_an_allowed_extra_ca_may_be_named() -> None:
    policy = Policy(acme_server=MAIN, staging_server=STAGING, allowed_servers=(OTHER,))
    assert request(policy, LETSENCRYPT_HOST="a.com", ACME_CA_URI=OTHER).server == OTHER


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (OTHER, "not a CA this companion may use (its ACME_CA_URI, ACME_STAGING_URI or ACME_CA_URIS_ALLOWED)"),
        ("https://CA.test/dir", "not a CA this companion may use"),  # certbot keeps accounts per exact URL
        ("http://ca.test/dir", "must be an https:// ACME directory URL"),
        ("https://ca.test/dir --server x", "must be an https:// ACME directory URL"),
        ('https://ca.test/"dir', "must be an https:// ACME directory URL"),
        ("https://ca.test/../dir", "must be an https:// ACME directory URL"),
        ("https://user@ca.test/dir", "must be an https:// ACME directory URL"),
        ("https://ca.test/dir?x=1", "must be an https:// ACME directory URL"),
    ],
)
def test_a_ca_outside_the_allow_list_or_not_a_plain_url_is_refused(value: str, reason: str) -> None:
    result = parse(LETSENCRYPT_HOST="a.com", ACME_CA_URI=value)
    assert isinstance(result, Rejection) and result.variable == "ACME_CA_URI", result
    assert reason in result.message


def test_naming_a_ca_and_staging_at_once_is_refused() -> None:
    result = parse(LETSENCRYPT_HOST="a.com", ACME_CA_URI=MAIN, LETSENCRYPT_TEST="true")
    assert isinstance(result, Rejection) and result.variable == "ACME_CA_URI"
    assert "names a CA while LETSENCRYPT_TEST=true asks for staging (https://staging.test/dir); set only one" in (
        result.message
    )
    bad = parse(LETSENCRYPT_HOST="a.com", ACME_TEST="maybe")
    assert isinstance(bad, Rejection) and bad.variable == "ACME_TEST" and "must be true or false" in bad.message


def test_an_image_cannot_choose_a_ca_or_staging_by_default() -> None:
    info = ContainerInfo(
        id="i",
        name="web",
        env={"VIRTUAL_HOST": "a.com", "LETSENCRYPT_HOST": "a.com", "ACME_TEST": "true", "ACME_CA_URI": STAGING},
        image_env=frozenset({"ACME_TEST", "ACME_CA_URI"}),
    )
    site = parse_site(info, POLICY)
    assert isinstance(site, Site) and site.cert is not None and site.cert.server == MAIN


# -- settings -----------------------------------------------------------------------------------------


def test_staging_and_allowed_servers_settings() -> None:
    assert Settings().acme_staging_server == LETSENCRYPT_STAGING
    loaded = load(
        argparse.Namespace(),
        {
            "ACME_STAGING_URI": STAGING,
            "ACME_CA_URIS_ALLOWED": f"{OTHER}, https://Upper.test/Dir",
            "LETSENCRYPT_TEST": "1",
        },
    )
    assert loaded.allowed_acme_servers == (OTHER, "https://Upper.test/Dir")  # kept exactly: case matters
    assert loaded.acme_server == STAGING  # the companion-wide LETSENCRYPT_TEST follows the staging setting
    with pytest.raises(SettingsError, match="allowed_acme_servers: .*must be an https:// ACME directory URL"):
        load(argparse.Namespace(), {"ACME_CA_URIS_ALLOWED": "https://a.test/dir,ftp://x"})
    with pytest.raises(SettingsError, match="acme staging server"):
        load(argparse.Namespace(), {"ACME_STAGING_URI": "https://a.test/d;x"})


# -- certbot: accounts and CA -------------------------------------------------------------------------


def test_certbot_runs_with_the_requests_ca_and_account() -> None:
    settings = Settings(certs_dir="/c", acme_server=MAIN)
    joined = " ".join(
        certbot_command(settings, CertRequest("n", ("a.test",), "me@x.io", STAGING), force=False, account="0" * 32)
    )
    assert f"--server {STAGING}" in joined and f"--account {'0' * 32}" in joined
    assert f"--server {MAIN}" in " ".join(certbot_command(settings, CertRequest("n", ("a.test",), ""), force=False))
    register = " ".join(register_command(settings, STAGING, "", Path("/c/companion/register/x")))
    assert "register --config-dir /c/companion/register/x" in register
    assert f"--server {STAGING}" in register and "--register-unsafely-without-email" in register


def test_accounts_file_shape_is_checked() -> None:
    good = {account_key(MAIN, "a@x.io"): f"accounts/ca.test/dir/{'a' * 32}"}
    assert parse_accounts(good) == good
    for bad in (
        [],
        {"k": 1},
        {"k": "accounts/ca.test/../../../etc/" + "a" * 32},
        {"k": "/etc/" + "a" * 32},
        {"k": "accounts/ca.test/dir/not-an-id"},
    ):
        with pytest.raises(ValueError):
            parse_accounts(bad)


def test_a_lineage_from_another_ca_is_due() -> None:
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    status = CertStatus(
        "a.com",
        ("a.com",),
        not_before=now - dt.timedelta(days=1),
        not_after=now + dt.timedelta(days=80),
        server=MAIN,
    )
    assert due_reason(CertRequest("a.com", ("a.com",), "", MAIN), status, now, 0) == ""
    assert due_reason(CertRequest("a.com", ("a.com",), "", STAGING), status, now, 0) == (
        f"CA changed from {MAIN} to {STAGING}"
    )
    unknown = CertStatus("a.com", ("a.com",), not_before=status.not_before, not_after=status.not_after)
    assert due_reason(CertRequest("a.com", ("a.com",), "", STAGING), unknown, now, 0) == ""  # copied in by hand


def test_renewal_file_gives_the_lineages_ca_account_and_profile(tmp_path: Path) -> None:
    (tmp_path / "renewal").mkdir()
    (tmp_path / "renewal" / "a.com.conf").write_text(
        f"version = 5.0\n[renewalparams]\naccount = {'b' * 32}\nserver = {STAGING}\nkey_type = ecdsa\n"
    )
    assert renewal_params(tmp_path, "a.com") == (STAGING, "b" * 32, "")
    assert renewal_params(tmp_path, "missing") == ("", "", "")
    (tmp_path / "renewal" / "link.conf").symlink_to(tmp_path / "renewal" / "a.com.conf")
    assert renewal_params(tmp_path, "link") == ("", "", "")
    (tmp_path / "renewal" / "b.com.conf").write_text(
        f"version = 5.8.0\n[renewalparams]\naccount = {'c' * 32}\nserver = {MAIN}\npreferred_profile = shortlived\n"
    )
    assert renewal_params(tmp_path, "b.com") == (MAIN, "c" * 32, "shortlived")


# -- the default certificate ----------------------------------------------------------------------------


def c(name: str, **env: str) -> ContainerInfo:
    return container(name, env=env, networks={"proxy": "10.0.0.2"})


def test_selection_order_cert_name_own_wildcard_default_placeholder() -> None:
    own = CertFiles("/c/live/a.p.com/fullchain.pem", "/c/live/a.p.com/privkey.pem", domains=("a.p.com",))
    wild = CertFiles("/c/live/wild/fullchain.pem", "/c/live/wild/privkey.pem", domains=("*.p.com",))
    named = CertFiles("/c/live/named/fullchain.pem", "/c/live/named/privkey.pem", domains=("a.p.com", "b.p.com"))
    parent_only = CertFiles("/c/live/p/fullchain.pem", "/c/live/p/privkey.pem", domains=("q.com",))
    certs = {"a.p.com": own, "wild": wild, "named": named, "q.com": parent_only}
    desired = plan.build(
        [
            c("n", VIRTUAL_HOST="a.p.com", CERT_NAME="named"),
            c("o", VIRTUAL_HOST="a.p.com"),
            c("w", VIRTUAL_HOST="c.p.com"),
            c("s", VIRTUAL_HOST="s.q.com", LETSENCRYPT_HOST="s.q.com"),
            c("h", VIRTUAL_HOST="h.r.com"),
        ],
        certs,
        PLACEHOLDER,
        default_cert=DEFAULT,
    )
    by_host = {s.host: s for s in desired.servers}
    assert by_host["a.p.com"].cert == named
    assert by_host["c.p.com"].cert == wild and not by_host["c.p.com"].placeholder
    # A parent's certificate (q.com) is not valid for s.q.com: the default stands in, as a placeholder would.
    assert by_host["s.q.com"].cert == DEFAULT and by_host["s.q.com"].placeholder and not by_host["s.q.com"].redirect
    assert by_host["h.r.com"].cert is None  # asks for no TLS: its HTTPS goes to the default server
    without = plan.build([c("s", VIRTUAL_HOST="s.q.com", LETSENCRYPT_HOST="s.q.com")], certs, PLACEHOLDER)
    assert without.servers[0].cert == PLACEHOLDER
    own_desired = plan.build([c("o", VIRTUAL_HOST="a.p.com")], {"a.p.com": own}, PLACEHOLDER)
    assert own_desired.servers[0].cert == own


def test_a_default_certificate_that_covers_a_host_counts_as_its_certificate() -> None:
    covering = CertFiles("/c/default.crt", "/c/default.key", domains=("*.d.com",))
    desired = plan.build([c("x", VIRTUAL_HOST="x.d.com")], {}, PLACEHOLDER, default_cert=covering)
    assert desired.servers[0].cert == covering and desired.servers[0].redirect


def test_https_default_server_presents_the_default_or_refuses_the_handshake() -> None:
    options = RenderOptions(conf_dir="/conf", webroot="/w")
    with_default = render(plan.build([], {}, PLACEHOLDER, default_cert=DEFAULT), options)[MAIN_FILE]
    assert "ssl_certificate /c/default.crt;" in with_default and "ssl_reject_handshake" not in with_default
    assert "return 503;" in with_default.split("ssl default_server;")[1].split("}\n}")[0]
    without = render(plan.build([], {}, PLACEHOLDER), options)[MAIN_FILE]
    assert "ssl_reject_handshake on;" in without and "default.crt" not in without


def test_default_certificate_on_disk(tmp_path: Path) -> None:
    assert default_cert(tmp_path) == (None, "")
    (tmp_path / "default.crt").write_text("not a certificate")
    files, problem = default_cert(tmp_path)
    assert files is None
    assert problem.startswith(f"default certificate {tmp_path / 'default.crt'}: ")
    assert problem.endswith("; unknown names are refused instead")
