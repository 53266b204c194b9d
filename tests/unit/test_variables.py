"""The variables registry, the near-miss rule and VIRTUAL_HOST_MULTIPORTS parsing (pure)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from companion.core import model, plan, trust, values
from companion.core.certificates import CertFiles
from companion.core.model import MULTIPORTS, Policy, Rejection, Site
from companion.core.multiports import Route, parse_multiports, parse_sites
from companion.core.values import InvalidValue
from companion.core.variables import REGISTRY, Status, Where, container_problems, near_miss, setting_problems
from tests.harness.containers import container

PLACEHOLDER = CertFiles("/p/fullchain.pem", "/p/privkey.pem")
# Variables images set for themselves: none of them may ever warn.
IMAGE_ENV = (
    "PATH", "HOME", "LANG", "HOSTNAME", "TERM", "VIRTUAL_ENV", "VIRTUAL_ENV_PROMPT", "PYTHONPATH",
    "PYTHON_VERSION", "GPG_KEY", "NGINX_VERSION", "NJS_VERSION", "PKG_RELEASE", "NODE_VERSION", "YARN_VERSION",
    "JAVA_HOME", "LC_ALL", "TZ", "DEBUG", "HTTP_PORT", "PORT", "HOST", "SSL_CERT_FILE", "SSL_CERT_DIR",
    "CERT_PATH", "PIP_NO_CACHE_DIR", "GOPATH", "HTTPS_PROXY", "NO_PROXY", "APP_PORT", "APP_PATHS",
)  # fmt: skip


def info(name: str = "app", labels: dict[str, str] | None = None, env: dict[str, str] | None = None, **kw: object):
    return container(name, labels=labels, env=env, **kw)


# -- registry -------------------------------------------------------------------------------------------


def test_every_variable_the_model_reads_is_supported_in_the_registry() -> None:
    on_apps = {v.name: v.status for v in REGISTRY if v.where is Where.APP}
    assert {name: on_apps.get(name) for name in model.VARIABLES} == dict.fromkeys(model.VARIABLES, Status.SUPPORTED)


def test_registry_rows_are_unique_and_unsupported_rows_say_why() -> None:
    keys = [(v.name, v.where) for v in REGISTRY]
    assert len(keys) == len(set(keys))
    for v in REGISTRY:
        if v.status in (Status.DIFFERENT, Status.REFUSED):
            assert v.note, v.name


def test_an_unsupported_variable_warns_once_even_set_twice_or_by_the_image() -> None:
    container = info(
        labels={"VIRTUAL_ROOT": "/srv", "com.github.nginx-proxy.nginx-proxy.loadbalance": "hash $remote_addr;"},
        env={"VIRTUAL_ROOT": "/srv", "ACME_PRE_HOOK": "rm -rf /"},
        image_env=frozenset({"ACME_PRE_HOOK"}),
    )
    assert container_problems(container) == (
        "container app: VIRTUAL_ROOT is not supported (not yet: FastCGI upstreams are not supported); see README",
        "container app: com.github.nginx-proxy.nginx-proxy.loadbalance is not supported (refused on purpose: "
        "the value is raw nginx syntax, which no label may write here); see README",
        "container app: ACME_PRE_HOOK is not supported (refused on purpose: a label may not run commands in the "
        "companion); see README",
    )


def test_supported_variables_and_image_env_do_not_warn() -> None:
    env = dict.fromkeys(IMAGE_ENV, "x") | {"VIRTUAL_HOST": "a.example.com", "LETSENCRYPT_HOST": "a.example.com"}
    assert container_problems(info(env=env)) == ()


@pytest.mark.parametrize(
    ("typed", "meant"),
    [
        ("LETSENCRYPT_HOSTS", "LETSENCRYPT_HOST"),
        ("VIRTUAL_PROT", "VIRTUAL_PROTO"),
        ("VIRTUAL_HOTS", "VIRTUAL_HOST"),
        ("virtual_host", "VIRTUAL_HOST"),
        ("hsts", "HSTS"),
        ("Network_Access", "NETWORK_ACCESS"),
        ("VIRTUAL_HOST_MULTIPORT", "VIRTUAL_HOST_MULTIPORTS"),
        ("CERTNAME", "CERT_NAME"),  # one edit from a 9-character name
    ],
)
def test_near_misses(typed: str, meant: str | None) -> None:
    assert near_miss(typed) == meant
    line = f"container app: {typed} is not a variable the companion reads; did you mean {meant}?"
    assert container_problems(info(labels={typed: "x"})) == (line,)


@pytest.mark.parametrize("name", IMAGE_ENV)
def test_common_image_variables_are_never_a_near_miss(name: str) -> None:
    assert near_miss(name) is None
    assert container_problems(info(env={name: "x"})) == ()


def test_a_near_miss_inherited_from_the_image_does_not_warn() -> None:
    assert container_problems(info(env={"VIRTUAL_PROT": "https"}, image_env=frozenset({"VIRTUAL_PROT"}))) == ()


def test_odd_names_are_escaped_and_a_flood_is_capped() -> None:
    lines = container_problems(info(labels={f"VIRTUAL_HOST{i}": "x" for i in range(30)} | {"virtual_hos\x1b": "x"}))
    assert len(lines) == 21 and lines[-1] == "container app: 11 more variables not applied"
    assert all("\x1b" not in line for line in lines)


def test_problems_join_the_plan_and_a_supported_variable_never_warns() -> None:
    container = info(labels={"VIRTUAL_HOST": "a.example.com", "VIRTUAL_PROT": "https"}, networks={"n": "10.0.0.2"})
    desired = plan.build([container], {}, PLACEHOLDER)
    assert desired.problems == (
        "container app: VIRTUAL_PROT is not a variable the companion reads; did you mean VIRTUAL_PROTO?",
    )
    assert [s.host for s in desired.servers] == ["a.example.com"]


def test_settings_left_on_the_companion_are_reported() -> None:
    lines = setting_problems({"DEFAULT_EMAIL": "a@b.example", "DHPARAM_BITS": "4096", "PATH": "/bin"})
    assert lines == (
        "setting DHPARAM_BITS is not supported (supported differently: RFC 7919 ffdhe2048 is shipped; nothing is "
        "generated); see README",
    )


# -- VIRTUAL_HOST_MULTIPORTS ----------------------------------------------------------------------------

DOC_YAML = """\
www.example.org:
service1.example.org:
  "/":
    port: 8000
  "/service1":
    port: 9000
    dest: "/"
"""


def test_multiports_yaml_and_json_give_the_same_routes() -> None:
    routes = (
        Route("www.example.org", "/", None, ""),
        Route("service1.example.org", "/", 8000, ""),
        Route("service1.example.org", "/service1", 9000, "/"),
    )
    as_json = json.dumps(
        {
            "www.example.org": {},
            "service1.example.org": {"/": {"port": 8000}, "/service1": {"port": "9000", "dest": "/"}},
        }
    )
    assert parse_multiports(DOC_YAML) == routes
    assert parse_multiports(as_json)[1:] == routes[1:]
    assert parse_multiports(as_json)[0] == Route("www.example.org", "/", None, "")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("a.example.com: [1, 2]", "a.example.com: must map paths to {port, dest}"),
        ("- a.example.com", "must map host names to paths"),
        ("a.example.com;x:", "hostname must be letters"),
        ("'~^a\\d+\\.example\\.com$':", "regular-expression hosts are not supported"),
        ("app.example.*:", "suffix wildcards (name.*) are not supported"),
        ("a.example.com:\n  /x y:", "path must start with /"),
        ("a.example.com:\n  /.well-known/acme-challenge/:", "reserved for ACME challenges"),
        ("a.example.com:\n  /:\n    port: 0", "port must be a number from 1 to 65535"),
        ("a.example.com:\n  /:\n    port: true", "port must be a number"),
        ("a.example.com:\n  /:\n    port: 80.5", "port must be a number"),
        ("a.example.com:\n  /:\n    dest: '/a;b'", "path must start with /"),
        ("a.example.com:\n  /:\n    root: /srv", "must be empty or a mapping with port and/or dest"),
        ("a.example.com:\n  /:\n  ' /':", "a.example.com/ given twice"),
        ("!!python/object/apply:os.system ['true']", "not valid YAML or JSON"),
        ("a.example.com: {", "not valid YAML or JSON"),
        ("1: ", "host name 1 must be text"),
        ("\n".join(f"h{i}.example.com:" for i in range(101)), "more than 100 host names"),
        ("a.example.com:\n" + "\n".join(f"  /p{i}:" for i in range(101)), "more than 100 routes"),
        ("a.example.com:\n  /:\n    dest: " + "/a" * 17000, "longer than 32768 bytes"),
    ],
)
def test_multiports_refuses_every_bad_part(value: str, reason: str) -> None:
    with pytest.raises(InvalidValue) as caught:
        parse_multiports(value)
    assert reason in str(caught.value)


def test_aliases_cannot_multiply_routes_past_the_limit() -> None:
    paths = "{" + ", ".join(f"/p{i}: " for i in range(60)) + "}"
    with pytest.raises(InvalidValue, match="more than 100 routes"):
        parse_multiports(f"a.example.com: &p {paths}\nb.example.com: *p\n")


def test_multiports_sites_share_the_containers_other_settings() -> None:
    container = info(
        env={MULTIPORTS: DOC_YAML, "HTTPS_METHOD": "nohttp", "LETSENCRYPT_HOST": "www.example.org"},
        exposed_ports=("81",),
    )
    sites = parse_sites(container)
    assert isinstance(sites, tuple)
    assert [(s.hosts, s.path, s.port, s.dest) for s in sites] == [
        (("www.example.org",), "/", 81, ""),
        (("service1.example.org",), "/", 8000, ""),
        (("service1.example.org",), "/service1", 9000, "/"),
    ]
    assert {(s.https_method.value, s.cert and s.cert.domains) for s in sites} == {("nohttp", ("www.example.org",))}


@pytest.mark.parametrize("other", ["VIRTUAL_HOST", "VIRTUAL_PORT", "VIRTUAL_PATH", "VIRTUAL_DEST"])
def test_multiports_cannot_be_combined_with_the_single_variables(other: str) -> None:
    sites = parse_sites(info(labels={MULTIPORTS: "a.example.com:", other: "/"}))
    assert isinstance(sites, Rejection) and sites.variable == MULTIPORTS
    assert sites.message == (
        f"container app: VIRTUAL_HOST_MULTIPORTS='a.example.com:' rejected: cannot be combined with {other} "
        "(it sets hosts, paths and ports itself)"
    )


def test_multiports_hosts_meet_allowed_domains_and_owners() -> None:
    value = "a.example.com:\nb.other.org:"
    refused = parse_sites(info(labels={MULTIPORTS: value}), Policy(allowed_domains=("*.example.com",)))
    assert isinstance(refused, Rejection) and refused.variable == MULTIPORTS
    assert "b.other.org is not in the allowed domains" in refused.reason
    owners = trust.parse_owner_rules("*.example.com=project:shop")
    owned = parse_sites(info(labels={MULTIPORTS: value}), Policy(owners=owners))
    assert isinstance(owned, Rejection) and "a.example.com belongs to project:shop" in owned.reason


def test_an_image_may_set_multiports_only_under_routing_trust() -> None:
    container = info(env={MULTIPORTS: "a.example.com:"}, image_env=frozenset({MULTIPORTS}))
    assert isinstance(parse_sites(container, Policy(image_trust=trust.ImageTrust.ROUTING)), tuple)
    assert parse_sites(container, Policy(image_trust=trust.ImageTrust.NONE)) is None


def test_multiports_routes_become_upstreams_on_each_port() -> None:
    container = info(env={MULTIPORTS: DOC_YAML}, networks={"n": "10.0.0.5"})
    desired = plan.build([container], {}, PLACEHOLDER)
    assert desired.problems == ()
    assert sorted(u.servers for u in desired.upstreams) == [
        (("10.0.0.5", 80),),
        (("10.0.0.5", 8000),),
        (("10.0.0.5", 9000),),
    ]


@given(
    st.dictionaries(
        st.text(max_size=12),
        st.one_of(st.none(), st.dictionaries(st.text(max_size=8), st.none(), max_size=3)),
        max_size=4,
    )
)
def test_any_json_value_is_routes_of_typed_parts_or_refused(tree: dict) -> None:
    try:
        routes = parse_multiports(json.dumps(tree))
    except InvalidValue:
        return
    for route in routes:
        assert values.parse_hostname(route.host) == route.host and values.parse_path(route.path) == route.path


def test_network_access_is_typed_and_reaches_the_location() -> None:
    internal = info(labels={"VIRTUAL_HOST": "a.example.com", "NETWORK_ACCESS": "Internal"}, networks={"n": "10.0.0.2"})
    site = model.parse_site(internal)
    assert isinstance(site, Site) and site.network_access is values.NetworkAccess.INTERNAL
    (server,) = plan.build([internal], {}, PLACEHOLDER).servers
    assert [loc.internal for loc in server.locations] == [True]
    bad = model.parse_site(info(labels={"VIRTUAL_HOST": "a.example.com", "NETWORK_ACCESS": "intranet"}))
    assert isinstance(bad, Rejection) and bad.reason == "must be one of external, internal"
