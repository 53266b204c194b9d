"""DNS-01's pure rules: which settings fit, which wildcard requests pass, certbot's arguments, which certificate
a site gets, what the status shows. The real run (BIND 9, Pebble, certbot) is
tests/integration/test_integration_dns01.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from companion.acme import dns
from companion.acme.policy import certbot_command, lineage_request
from companion.core import plan
from companion.core.certificates import CertFiles
from companion.core.inputs import Inputs
from companion.core.model import CertRequest, Policy, Rejection, parse_site
from companion.core.values import Challenge
from companion.observe import status
from companion.observe.explain import explain
from companion.observe.status import served_by
from companion.serve.statusserver import page
from companion.settings.config import Settings, SettingsError, load
from tests.harness.containers import app as c

DNS = Policy(dns_plugin="dns-rfc2136")
PLACEHOLDER = CertFiles("/c/placeholder/fullchain.pem", "/c/placeholder/privkey.pem")


def lineage(name: str, *domains: str, not_after: float = 1.0) -> CertFiles:
    return CertFiles(
        f"/c/live/{name}/fullchain.pem", f"/c/live/{name}/privkey.pem", domains=domains, not_after=not_after
    )


# -- which containers may ask for what ----------------------------------------------------------------------


def test_wildcard_without_a_dns_plugin_is_refused_saying_what_to_set() -> None:
    found = parse_site(c("web", VIRTUAL_HOST="a.example.com", LETSENCRYPT_HOST="*.example.com"))
    assert isinstance(found, Rejection)
    assert found.variable == "LETSENCRYPT_HOST"
    assert "set ACME_DNS_PLUGIN (and ACME_DNS_CREDENTIALS) on the companion" in found.message


def test_wildcard_with_a_dns_plugin_is_ordered_over_dns01_under_its_own_lineage_name() -> None:
    site = parse_site(c("web", VIRTUAL_HOST="a.example.com", ACME_HOST="*.example.com,a.example.com"), DNS)
    assert not isinstance(site, Rejection) and site is not None and site.cert is not None
    assert site.cert == CertRequest(
        "_wildcard_.example.com", ("*.example.com", "a.example.com"), "", challenge=Challenge.DNS01
    )


@pytest.mark.parametrize(
    ("labels", "policy", "reason"),
    [
        ({"ACME_CHALLENGE": "dns-01"}, Policy(), "DNS-01 needs a certbot DNS plugin on the companion"),
        ({"ACME_CHALLENGE": "tls-alpn-01"}, DNS, "must be one of http-01, dns-01"),
        ({"LETSENCRYPT_HOST": "*.other.com"}, DNS, "*.other.com covers none of the VIRTUAL_HOST names"),
        ({"LETSENCRYPT_HOST": "*.example.com", "ACME_CHALLENGE": "http-01"}, DNS, "can only be validated over DNS-01"),
        ({"LETSENCRYPT_HOST": "*.b.example.com"}, DNS, "covers none of the VIRTUAL_HOST names"),
    ],
)
def test_dns01_requests_that_cannot_work_are_refused(labels: dict[str, str], policy: Policy, reason: str) -> None:
    labels = {"VIRTUAL_HOST": "a.example.com", "LETSENCRYPT_HOST": "a.example.com", **labels}
    found = parse_site(c("web", **labels), policy)
    assert isinstance(found, Rejection) and reason in found.message, found


def test_per_container_challenge_overrides_the_companions_default() -> None:
    http_default = Policy(dns_plugin="dns-rfc2136")
    dns_default = Policy(dns_plugin="dns-rfc2136", default_challenge=Challenge.DNS01)
    labels = {"VIRTUAL_HOST": "nas.home.example.com", "LETSENCRYPT_HOST": "nas.home.example.com"}
    for policy, extra, expected in (
        (http_default, {}, Challenge.HTTP01),
        (http_default, {"ACME_CHALLENGE": "DNS-01"}, Challenge.DNS01),  # acme-companion's spelling
        (dns_default, {}, Challenge.DNS01),
        (dns_default, {"ACME_CHALLENGE": "http-01"}, Challenge.HTTP01),
    ):
        site = parse_site(c("nas", **labels, **extra), policy)
        assert site is not None and not isinstance(site, Rejection) and site.cert is not None
        assert site.cert.challenge is expected


# -- settings ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ACME_CHALLENGE": "dns-01"}, "needs a DNS plugin"),
        ({"ACME_DNS_PLUGIN": "rfc2136"}, "must be a certbot DNS plugin name"),
        ({"ACME_DNS_PLUGIN": "dns-rfc2136"}, "needs its credentials file"),
        ({"ACME_DNS_CREDENTIALS": "/run/secrets/dns"}, "no DNS plugin"),
        ({"ACME_DNS_PLUGIN": "dns-rfc2136", "ACME_DNS_CREDENTIALS": "dns.ini"}, "absolute path"),
        ({"ACME_DNS_PLUGIN": "dns-route53", "ACME_DNS_CREDENTIALS": "/run/secrets/aws"}, "from the environment"),
        ({"ACME_DNS_PLUGIN": "dns-route53", "ACME_DNS_PROPAGATION_SECONDS": "30"}, "leave the dns propagation unset"),
    ],
)
def test_dns_settings_that_do_not_fit_stop_the_start(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load(_no_args(), env)


def test_dns_settings_that_fit() -> None:
    settings = load(_no_args(), {"ACME_DNS_PLUGIN": "dns-route53", "ACME_CHALLENGE": "DNS-01"})
    assert (settings.dns_plugin, settings.acme_challenge) == ("dns-route53", Challenge.DNS01)


def _no_args() -> argparse.Namespace:
    return argparse.Namespace()


# -- certbot's command line ----------------------------------------------------------------------------------


def test_dns01_order_runs_the_plugin_with_its_credentials_and_propagation() -> None:
    settings = Settings(
        webroot="/w", dns_plugin="dns-rfc2136", dns_credentials="/run/secrets/dns.ini", dns_propagation_seconds=0
    )
    request = CertRequest("_wildcard_.example.com", ("*.example.com",), "", challenge=Challenge.DNS01)
    joined = " ".join(certbot_command(settings, request, force=False))
    assert (
        "--authenticator dns-rfc2136 --preferred-challenges dns --dns-rfc2136-credentials /run/secrets/dns.ini "
        "--dns-rfc2136-propagation-seconds 0 --cert-name _wildcard_.example.com"
    ) in joined
    assert "--webroot" not in joined and "-d *.example.com" in joined


def test_environment_plugins_get_neither_a_file_nor_a_wait() -> None:
    assert dns.certbot_args("dns-route53", "", -1) == [
        "--authenticator",
        "dns-route53",
        "--preferred-challenges",
        "dns",
    ]


def test_a_wildcard_lineage_on_disk_is_renewed_over_dns01() -> None:
    settings = Settings(dns_plugin="dns-rfc2136", dns_credentials="/x")
    assert lineage_request(settings, "w", ("*.a.com", "a.com"), "").challenge is Challenge.DNS01
    assert lineage_request(settings, "a.com", ("a.com",), "").challenge is Challenge.HTTP01


# -- the credentials file -----------------------------------------------------------------------------------


def test_credentials_file_readable_by_everyone_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dns.ini"
    path.write_text("dns_rfc2136_secret = s3cret\n")
    path.chmod(0o644)
    problem = dns.credentials_problem(str(path))
    assert "can be read by every user (mode 0644)" in problem and "chmod 600" in problem
    assert "s3cret" not in problem
    path.chmod(0o640)  # group-readable, as a secret shared with a group may be: certbot warns, we accept it
    assert dns.credentials_problem(str(path)) == ""
    assert "No such file" in dns.credentials_problem(str(tmp_path / "missing.ini"))
    assert "not a regular file" in dns.credentials_problem(str(tmp_path))


# -- which certificate a site gets, and what the status says ------------------------------------------------


def test_one_wildcard_serves_every_host_under_it_and_a_hosts_own_certificate_wins() -> None:
    wildcard = lineage("_wildcard_.example.com", "*.example.com", not_after=9.0)
    own = lineage("c.example.com", "c.example.com", not_after=2.0)
    containers = [
        c("a", VIRTUAL_HOST="a.example.com", LETSENCRYPT_HOST="*.example.com"),
        c("b", VIRTUAL_HOST="b.example.com", LETSENCRYPT_HOST="*.example.com"),
        c("c", VIRTUAL_HOST="c.example.com", LETSENCRYPT_HOST="c.example.com"),
        c("d", VIRTUAL_HOST="deep.b.example.com"),  # two labels below: the wildcard is not valid for it
    ]
    desired = plan.build(
        containers, {"_wildcard_.example.com": wildcard, "c.example.com": own}, PLACEHOLDER, policy=DNS
    )
    assert [r.name for r in desired.certificates] == ["_wildcard_.example.com", "c.example.com"]  # one order each
    by_host = {s.host: s.cert for s in desired.servers}
    assert by_host["a.example.com"] == by_host["b.example.com"] == wildcard
    assert by_host["c.example.com"] == own
    assert by_host["deep.b.example.com"] is None
    assert served_by(desired) == {
        "_wildcard_.example.com": ("a.example.com", "b.example.com"),
        "c.example.com": ("c.example.com",),
    }


def test_status_report_and_page_show_the_sites_a_wildcard_serves() -> None:
    wildcard = lineage("_wildcard_.example.com", "*.example.com", not_after=9.0)
    containers = [c(n, VIRTUAL_HOST=f"{n}.example.com", LETSENCRYPT_HOST="*.example.com") for n in ("a", "b")]
    desired = plan.build(containers, {"_wildcard_.example.com": wildcard}, PLACEHOLDER, policy=DNS)
    report = status.build(
        now=0.0,
        desired=desired,
        statuses={},
        acme_state={},
        renew_before_days=0.0,
        problems={},
        passes=(),
        nginx_version=None,
        nginx_containers=(),
        last_success=0.0,
    )
    (view,) = report.certificates
    assert (view.name, view.serves) == ("_wildcard_.example.com", ("a.example.com", "b.example.com"))
    shape = json.loads(json.dumps(report.to_json()))
    assert shape["certificates"][0]["serves"] == ["a.example.com", "b.example.com"]
    assert '<td class="mono serves">a.example.com, b.example.com</td>' in page(report, alive="")


def test_explain_says_a_certificate_is_ordered_over_dns01() -> None:
    inputs = Inputs(
        containers=(c("nas", VIRTUAL_HOST="nas.example.com", LETSENCRYPT_HOST="*.example.com"),),
        statuses={},
        certs_dir=Path("/c"),
        policy=DNS,
    )
    text = explain("nas", inputs, {}).text()
    assert "certificate order: lineage _wildcard_.example.com for *.example.com over DNS-01; not issued yet" in text


def test_an_expired_certificate_of_its_own_gives_way_to_a_valid_wildcard() -> None:
    wildcard = lineage("_wildcard_.example.com", "*.example.com", not_after=200.0)
    own = lineage("c.example.com", "c.example.com", not_after=100.0)
    certs = {"_wildcard_.example.com": wildcard, "c.example.com": own}
    site = [c("c", VIRTUAL_HOST="c.example.com", LETSENCRYPT_HOST="c.example.com")]
    for now, expected in ((50.0, own), (150.0, wildcard), (250.0, own)):  # valid own; own expired; both expired
        (served,) = plan.build(site, certs, PLACEHOLDER, policy=DNS, now=now).servers
        assert served.cert == expected, now
