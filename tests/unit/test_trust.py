"""The pure trust rules: image provenance, nginx identification, domain owners, certificate ownership,
bounded work and collision-free names. The same attacks run against the real parts in test_trust.py."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from companion.core import certplan, plan, trust
from companion.core.certificates import CertFiles
from companion.core.container import ContainerInfo
from companion.core.model import (
    MAX_VALUE_BYTES,
    CertRequest,
    Policy,
    Rejection,
    Site,
    VariableUse,
    ignored_from_image,
    parse_site,
    settings_of,
    variable_sources,
)
from companion.core.trust import ImageTrust, OwnerRule
from companion.core.values import MAX_HOSTS, HttpsMethod
from companion.loop import owner_claims
from companion.settings.config import SettingsError, load
from tests.harness.containers import app as c

PLACEHOLDER = CertFiles("/certs/placeholder/fullchain.pem", "/certs/placeholder/privkey.pem")


def lineage(name: str, *domains: str, not_after: float = 1000.0) -> CertFiles:
    return CertFiles(
        f"/certs/live/{name}/fullchain.pem", f"/certs/live/{name}/privkey.pem", domains=domains, not_after=not_after
    )


def server(desired: plan.Desired, host: str) -> plan.Server:
    (found,) = [s for s in desired.servers if s.host == host]
    return found


# -- provenance ------------------------------------------------------------------------------------


def from_image(labels: dict[str, str], env: dict[str, str] | None = None) -> ContainerInfo:
    """A container all of whose values came from its image."""
    env = env or {}
    return ContainerInfo(
        id="id-img",
        name="img",
        labels=labels,
        env=env,
        networks={"proxy": "10.0.0.9"},
        image_labels=frozenset(labels),
        image_env=frozenset(env),
    )


IMAGE_VALUES = {"VIRTUAL_HOST": "a.com", "VIRTUAL_PORT": "3000", "LETSENCRYPT_HOST": "a.com", "CERT_NAME": "a.com"}


@pytest.mark.parametrize(
    ("level", "counted", "ignored"),
    [
        (ImageTrust.ROUTING, {"VIRTUAL_HOST", "VIRTUAL_PORT"}, ("CERT_NAME", "LETSENCRYPT_HOST")),
        (ImageTrust.ALL, set(IMAGE_VALUES), ()),
        (ImageTrust.NONE, set(), ("CERT_NAME", "LETSENCRYPT_HOST", "VIRTUAL_HOST", "VIRTUAL_PORT")),
    ],
)
def test_image_values_count_only_as_far_as_trusted(level: ImageTrust, counted: set[str], ignored: tuple) -> None:
    for info in (from_image(IMAGE_VALUES), from_image({}, IMAGE_VALUES)):
        assert set(settings_of(info, level)) == counted
        assert ignored_from_image(variable_sources(info, level)) == ignored


def test_a_value_set_on_the_container_overrides_the_image_and_is_not_reported() -> None:
    info = ContainerInfo(
        id="x",
        name="x",
        labels={"VIRTUAL_HOST": "a.com", "LETSENCRYPT_HOST": "a.com"},
        env={"LETSENCRYPT_HOST": "a.com"},  # the operator's own
        image_labels=frozenset({"LETSENCRYPT_HOST"}),
    )
    assert settings_of(info)["LETSENCRYPT_HOST"] == "a.com"
    assert ignored_from_image(variable_sources(info, ImageTrust.ROUTING)) == ()


@pytest.mark.parametrize("level", list(ImageTrust))
def test_each_value_says_where_it_came_from_and_the_rule_that_decides_it(level: ImageTrust) -> None:
    info = ContainerInfo(
        id="x",
        name="x",
        labels={"VIRTUAL_HOST": "a.com", "CERT_NAME": "img"},
        env={"VIRTUAL_HOST": "b.com", "VIRTUAL_PORT": "81", "CERT_NAME": "own"},
        image_labels=frozenset({"CERT_NAME"}),
        image_env=frozenset({"VIRTUAL_PORT"}),
    )
    uses = {(v.name, v.source): (v.value, v.from_image, v.use) for v in variable_sources(info, level)}
    trusted_cert = level is ImageTrust.ALL
    trusted_port = level is not ImageTrust.NONE
    assert uses == {
        ("VIRTUAL_HOST", "label"): ("a.com", False, VariableUse.COUNTS),
        ("VIRTUAL_HOST", "environment"): ("b.com", False, VariableUse.LABEL_WINS),
        ("VIRTUAL_PORT", "environment"): (
            "81",
            True,
            VariableUse.COUNTS if trusted_port else VariableUse.IMAGE_NOT_TRUSTED,
        ),
        ("CERT_NAME", "label"): ("img", True, VariableUse.COUNTS if trusted_cert else VariableUse.IMAGE_NOT_TRUSTED),
        ("CERT_NAME", "environment"): ("own", False, VariableUse.LABEL_WINS if trusted_cert else VariableUse.COUNTS),
    }
    # the values that count are exactly those settings_of passes on: the two read the same rules
    counted = {v.name: v.value for v in variable_sources(info, level) if v.use is VariableUse.COUNTS}
    assert counted == settings_of(info, level)


def test_an_image_cannot_ask_for_a_certificate_by_default_and_is_reported() -> None:
    desired = plan.build([from_image(IMAGE_VALUES)], {}, PLACEHOLDER)
    assert desired.certificates == ()
    assert [s.host for s in desired.servers] == ["a.com"]  # routing from the image still counts
    assert desired.upstreams[0].servers == (("10.0.0.9", 3000),)
    (problem,) = desired.problems
    assert problem.startswith("container img: ignoring values its image sets (CERT_NAME, LETSENCRYPT_HOST)")
    trusted = plan.build([from_image(IMAGE_VALUES)], {}, PLACEHOLDER, policy=Policy(image_trust=ImageTrust.ALL))
    assert trusted.certificates == (CertRequest("a.com", ("a.com",), ""),) and trusted.problems == ()


# -- nginx identification --------------------------------------------------------------------------


def nginx(mounts: tuple[tuple[str, str], ...], inherited: bool = False) -> ContainerInfo:
    return ContainerInfo(
        id="n",
        name="nginx",
        labels={trust.NGINX_LABEL: "true"},
        mounts=mounts,
        image_labels=frozenset({trust.NGINX_LABEL}) if inherited else frozenset(),
    )


def test_conf_dir_source_follows_the_companions_own_mount() -> None:
    own = ContainerInfo(id="me", name="me", mounts=(("/var/lib/docker/volumes/p_conf/_data", "/etc/nginx/conf.d"),))
    assert trust.conf_dir_source("/etc/nginx/conf.d", own) == "/var/lib/docker/volumes/p_conf/_data"
    parent = ContainerInfo(id="me", name="me", mounts=(("/srv/nginx", "/etc/nginx"),))
    assert trust.conf_dir_source("/etc/nginx/conf.d", parent) == "/srv/nginx/conf.d"
    assert trust.conf_dir_source("/etc/nginx/conf.d", ContainerInfo(id="me", name="me")) is None
    assert trust.conf_dir_source("/srv/conf", None) == "/srv/conf"  # on the host: the path itself


def test_nginx_needs_its_own_label_and_the_conf_dir() -> None:
    source = "/var/lib/docker/volumes/p_conf/_data"
    assert trust.nginx_verdict(nginx(((source, "/etc/nginx/conf.d"),)), source, ImageTrust.ROUTING) == ""
    assert trust.nginx_verdict(nginx((("/var/lib/docker/volumes/p_conf", "/x"),)), source, ImageTrust.ROUTING) == ""
    assert "does not mount" in trust.nginx_verdict(nginx((("/elsewhere", "/etc/nginx/conf.d"),)), source, "routing")  # type: ignore[arg-type]
    assert "does not mount" in trust.nginx_verdict(nginx(((source + "x", "/c"),)), source, ImageTrust.ROUTING)
    inherited = nginx(((source, "/etc/nginx/conf.d"),), inherited=True)
    assert "comes from its image" in trust.nginx_verdict(inherited, source, ImageTrust.ROUTING)
    assert trust.nginx_verdict(inherited, source, ImageTrust.ALL) == ""
    assert "not on a mount" in trust.nginx_verdict(nginx(((source, "/c"),)), None, ImageTrust.ROUTING)


# -- domain owners ---------------------------------------------------------------------------------


def test_owner_rules_parse_and_refuse_bad_entries() -> None:
    rules = trust.parse_owner_rules("*.A.example.com=project:shop, *.b.example.com=label:team=B")
    assert rules == (
        OwnerRule("*.a.example.com", "project", trust.PROJECT_LABEL, "shop"),
        OwnerRule("*.b.example.com", "label", "team", "B"),
    )
    for bad in ("a.com", "a.com=project:", "a.com=team:x", "a.com=label:team", "a com=project:x", "a.com=project:a=b"):
        with pytest.raises(ValueError, match="a"):
            trust.parse_owner_rules(bad)
    with pytest.raises(SettingsError, match="DOMAIN_OWNERS|domain_owners"):
        load(_args(), {"DOMAIN_OWNERS": "a.com=team:x"})
    with pytest.raises(SettingsError, match="routing, all, none"):
        load(_args(), {"TRUST_IMAGE_LABELS": "some"})
    assert load(_args(), {"TRUST_IMAGE_LABELS": "ALL"}).image_trust is ImageTrust.ALL


def _args():  # noqa: ANN202 - an empty argparse namespace
    import argparse

    return argparse.Namespace()


@pytest.mark.parametrize(
    ("host", "pattern", "claims"),
    [
        ("x.a.example.com", "*.a.example.com", True),
        ("a.example.com", "*.a.example.com", False),
        ("*.a.example.com", "*.a.example.com", True),
        ("*.example.com", "*.a.example.com", True),  # a wider wildcard receives the owned names too
        ("*.b.example.com", "*.a.example.com", False),
        ("*.com", "shop.example.com", True),
    ],
)
def test_a_name_claims_what_an_owner_pattern_covers(host: str, pattern: str, claims: bool) -> None:
    assert trust.name_matches(host, pattern) is claims


def test_outsiders_cannot_claim_join_or_certify_owned_names() -> None:
    policy = Policy(owners=trust.parse_owner_rules("*.shop.example=project:shop,*.b.example=label:team=b"))
    owner = c("shop-web", **{"VIRTUAL_HOST": "www.shop.example", trust.PROJECT_LABEL: "shop"})
    outsiders = [
        c("evil1", VIRTUAL_HOST="www.shop.example"),
        c("evil2", VIRTUAL_HOST="*.example"),
        c("evil3", VIRTUAL_HOST="evil.other", CERT_NAME="www.shop.example"),
        c("evil4", **{"VIRTUAL_HOST": "www.shop.example", trust.PROJECT_LABEL: "other"}),
    ]
    # The project label from an image does not make a container the owner.
    impostor = ContainerInfo(
        id="id-evil5",
        name="evil5",
        labels={"VIRTUAL_HOST": "www.shop.example", trust.PROJECT_LABEL: "shop"},
        networks={"proxy": "10.0.0.5"},
        image_labels=frozenset({trust.PROJECT_LABEL}),
    )
    desired = plan.build([owner, *outsiders, impostor], {}, PLACEHOLDER, policy=policy)
    assert [s.host for s in desired.servers] == ["www.shop.example"]
    assert desired.upstreams[0].servers == (("10.0.0.2", 80),)
    assert len(desired.problems) == 5
    assert all("belongs to project:shop (DOMAIN_OWNERS)" in p for p in desired.problems)
    team = parse_site(c("t", **{"VIRTUAL_HOST": "x.b.example", "team": "b"}), policy)
    assert isinstance(team, Site)


# -- certificates belong to names ------------------------------------------------------------------


def test_cert_name_is_checked_against_the_allow_list() -> None:
    result = parse_site(
        c("x", VIRTUAL_HOST="a.example.com", CERT_NAME="intranet.corp.internal"),
        Policy(allowed_domains=("*.example.com",)),
    )
    assert isinstance(result, Rejection) and result.variable == "CERT_NAME"
    assert "intranet.corp.internal is not in the allowed domains" in result.message


def test_a_lineage_is_presented_only_for_names_it_covers() -> None:
    victim = lineage("victim.example.com", "victim.example.com")
    certs = {"victim.example.com": victim}
    desired = plan.build(
        [c("attacker", VIRTUAL_HOST="*.example.com,attacker.example.com", CERT_NAME="victim.example.com")],
        certs,
        PLACEHOLDER,
    )
    for host in ("*.example.com", "attacker.example.com"):
        assert server(desired, host).cert == PLACEHOLDER and server(desired, host).placeholder
    assert any("does not cover *.example.com" in p for p in desired.problems)
    # the victim's own site gets it, without asking by name
    own = plan.build([c("victim", VIRTUAL_HOST="victim.example.com")], certs, PLACEHOLDER)
    assert server(own, "victim.example.com").cert == victim


def test_the_most_specific_and_freshest_covering_certificate_is_chosen() -> None:
    certs = {
        "wild": lineage("wild", "*.example.com"),
        "old": lineage("old", "a.example.com", "b.example.com", not_after=10.0),
        "new": lineage("new", "a.example.com", not_after=20.0),
    }
    desired = plan.build(
        [c("w", VIRTUAL_HOST="a.example.com,b.example.com,z.example.com,x.y.example.com")], certs, PLACEHOLDER
    )
    assert server(desired, "a.example.com").cert == certs["new"]
    assert server(desired, "b.example.com").cert == certs["old"]
    assert server(desired, "z.example.com").cert == certs["wild"]
    assert server(desired, "x.y.example.com").cert is None  # a wildcard covers one label only
    named = plan.build([c("w", VIRTUAL_HOST="a.example.com", CERT_NAME="old")], certs, PLACEHOLDER)
    assert server(named, "a.example.com").cert == certs["old"]


def test_an_order_never_rewrites_a_lineage_that_holds_other_names() -> None:
    certs = {"victim.example.com": lineage("victim.example.com", "victim.example.com")}
    attacker = c(
        "aa-attacker",
        VIRTUAL_HOST="attacker.example.com",
        LETSENCRYPT_HOST="attacker.example.com",
        CERT_NAME="victim.example.com",
    )
    victim = c("zz-victim", ip="10.0.0.3", VIRTUAL_HOST="victim.example.com", LETSENCRYPT_HOST="victim.example.com")
    for containers in ([attacker, victim], [attacker]):
        desired = plan.build(containers, certs, PLACEHOLDER)
        names = {r.name: r.domains for r in desired.certificates}
        assert names.get("victim.example.com", ("victim.example.com",)) == ("victim.example.com",)
        digest = certplan.lineage_digest(("attacker.example.com",))
        assert names[f"victim.example.com-{digest}"] == ("attacker.example.com",)
    # Before the victim's lineage exists, the request named after one of its own hosts gets the name.
    fresh = plan.build([attacker, victim], {}, PLACEHOLDER)
    assert {r.name: r.domains for r in fresh.certificates}["victim.example.com"] == ("victim.example.com",)


def test_adding_a_name_reuses_the_lineage_and_dropping_one_gets_a_new_one() -> None:
    certs = {"a.com": lineage("a.com", "a.com", "b.com")}
    grow = plan.build(
        [c("w", VIRTUAL_HOST="a.com,b.com,c.com", LETSENCRYPT_HOST="a.com,b.com,c.com")], certs, PLACEHOLDER
    )
    assert [r.name for r in grow.certificates] == ["a.com"]
    shrink = plan.build([c("w", VIRTUAL_HOST="a.com", LETSENCRYPT_HOST="a.com")], certs, PLACEHOLDER)
    assert [r.name for r in shrink.certificates] == [f"a.com-{certplan.lineage_digest(('a.com',))}"]
    assert server(shrink, "a.com").cert == certs["a.com"]  # still valid for a.com until the new one exists


# -- stable conflicts ------------------------------------------------------------------------------


def test_the_container_that_decided_for_a_host_keeps_deciding() -> None:
    owner = c("zz-owner", VIRTUAL_HOST="a.com")
    newcomer = c("aa-newcomer", ip="10.0.0.3", VIRTUAL_HOST="a.com", HTTPS_METHOD="noredirect", HSTS="off")
    first = plan.build([owner], {}, PLACEHOLDER)
    assert dict(first.owners) == {"a.com": "zz-owner"}
    later = plan.build([owner, newcomer], {}, PLACEHOLDER, owners=dict(first.owners))
    s = server(later, "a.com")
    assert s.https_method is HttpsMethod.REDIRECT and s.hsts == "max-age=31536000"
    assert later.upstreams[0].servers == (("10.0.0.2", 80), ("10.0.0.3", 80))
    (warning,) = later.problems
    assert "using zz-owner's (it served the host first)" in warning and "aa-newcomer" in warning
    assert dict(later.owners) == {"a.com": "zz-owner"}
    # Without memory (or once the owner is gone) the first name decides.
    assert server(plan.build([owner, newcomer], {}, PLACEHOLDER), "a.com").https_method is HttpsMethod.NOREDIRECT
    gone = plan.build([newcomer], {}, PLACEHOLDER, owners=dict(later.owners))
    assert dict(gone.owners) == {"a.com": "aa-newcomer"}


# -- bounded work and names ------------------------------------------------------------------------


def test_host_lists_and_values_are_bounded() -> None:
    many = ",".join(f"h{i}.example.com" for i in range(MAX_HOSTS + 1))
    result = parse_site(c("many", VIRTUAL_HOST=many))
    assert isinstance(result, Rejection) and result.reason == f"more than {MAX_HOSTS} host names"
    exactly = ",".join(f"h{i}.example.com" for i in range(MAX_HOSTS))
    assert isinstance(parse_site(c("ok", VIRTUAL_HOST=exactly)), Site)
    huge = "a.com" + "," * MAX_VALUE_BYTES
    result = parse_site(c("huge", VIRTUAL_HOST=huge))
    assert isinstance(result, Rejection) and result.reason == f"longer than {MAX_VALUE_BYTES} bytes"
    assert len(result.message) < 300
    result = parse_site(c("huge", VIRTUAL_HOST="a.com", HSTS="max-age=1" + " " * MAX_VALUE_BYTES))
    assert isinstance(result, Rejection) and result.variable == "HSTS"


def test_an_invalid_exposed_port_refuses_only_its_container() -> None:
    bad = ContainerInfo(
        id="z", name="zero", labels={"VIRTUAL_HOST": "z.com"}, networks={"p": "10.0.0.4"}, exposed_ports=("0/tcp",)
    )
    desired = plan.build([bad, c("good", VIRTUAL_HOST="g.com")], {}, PLACEHOLDER)
    assert [s.host for s in desired.servers] == ["g.com"]
    (problem,) = desired.problems
    assert problem == "container zero: EXPOSE='0/tcp' rejected: port must be a number from 1 to 65535"
    pinned = ContainerInfo(
        id="z", name="z", labels={"VIRTUAL_HOST": "z.com", "VIRTUAL_PORT": "8080"}, exposed_ports=("0/tcp",)
    )
    assert isinstance(parse_site(pinned), Site)


def test_generated_upstream_names_cannot_collide() -> None:
    """A host named like another host's path upstream (any scheme's) or like an upstream name gets its own
    backends: upstream names come from backend sets (typed addresses and ports) alone, never from a label."""
    lookalikes = (
        "shop.example.com-" + hashlib.sha1(b"/api/").hexdigest()[:10],  # nginx-proxy's SHA1_UPSTREAM_NAME
        "companion-shop.example.com-" + hashlib.sha256(b"/api/").hexdigest()[:16],  # this project's old names
        "companion-u1",
        "companion_u1",  # not a host name: refused
    )
    containers = [c("victim", VIRTUAL_HOST="shop.example.com", VIRTUAL_PATH="/api/")]
    containers += [c(f"attacker{n}", ip=f"10.6.6.{n}", VIRTUAL_HOST=host) for n, host in enumerate(lookalikes, 2)]
    desired = plan.build(containers, {}, PLACEHOLDER)
    by_name = {u.name: u.servers for u in desired.upstreams}
    routes = {(s.host, loc.path): by_name[loc.upstream] for s in desired.servers for loc in s.locations}
    assert routes == {
        ("shop.example.com", "/api/"): (("10.0.0.2", 80),),
        **{(host, "/"): ((f"10.6.6.{n}", 80),) for n, host in enumerate(lookalikes[:3], 2)},
    }
    assert len(by_name) == len(desired.upstreams) == 4
    assert all(re.fullmatch(r"companion_u[0-9]+", name) for name in by_name)
    assert any("attacker5: VIRTUAL_HOST='companion_u1' rejected" in p for p in desired.problems)


def test_an_owner_away_for_a_redeploy_keeps_its_claim_for_the_grace_period() -> None:
    claims = owner_claims.merge({}, {"a.com": "zz-owner"}, now=1000.0)
    # compose recreates the owner: for a moment only the newcomer claims the host
    during = owner_claims.merge(claims, {"a.com": "aa-newcomer"}, now=1010.0)
    assert owner_claims.remembered(during) == {"a.com": "zz-owner"} and during["a.com"].seen == 1000.0
    back = owner_claims.merge(during, {"a.com": "zz-owner"}, now=1020.0)
    assert back["a.com"] == owner_claims.Claim("zz-owner", 1020.0)
    later = owner_claims.merge(during, {"a.com": "aa-newcomer"}, now=1000.0 + owner_claims.OWNER_GRACE)
    assert owner_claims.remembered(later) == {"a.com": "aa-newcomer"}
    assert owner_claims.merge(claims, {}, now=1000.0 + owner_claims.OWNER_GRACE) == {}


def test_owners_file_round_trips_and_a_broken_one_is_ignored(tmp_path: Path) -> None:
    claims = {"a.com": owner_claims.Claim("web", 12.5)}
    owner_claims.save(tmp_path, claims)
    assert owner_claims.load(tmp_path) == claims
    assert oct((tmp_path / owner_claims.OWNERS_FILE).stat().st_mode & 0o777) == "0o600"
    for broken in ("[1, 2]", '{"a.com": "web"}', '{"a.com": {"container": 1, "seen": 2}}', "{", ""):
        (tmp_path / owner_claims.OWNERS_FILE).write_text(broken)
        assert owner_claims.load(tmp_path) == {}
    secret = tmp_path / "secret.json"
    secret.write_text('{"a.com": {"container": "evil", "seen": 1}}')
    (tmp_path / owner_claims.OWNERS_FILE).unlink()
    (tmp_path / owner_claims.OWNERS_FILE).symlink_to(secret)
    assert owner_claims.load(tmp_path) == {}  # never read through a link
    owner_claims.save(tmp_path, claims)
    assert not (tmp_path / owner_claims.OWNERS_FILE).is_symlink() and "evil" in secret.read_text()
