"""plan.build: containers and certificates on disk in, server blocks, upstreams and cert requests out."""

from __future__ import annotations

import itertools
import random

import pytest

from companion.core import certplan, plan, reach
from companion.core.certificates import CertFiles
from companion.core.container import ContainerInfo
from companion.core.model import CertRequest, Policy
from companion.core.plan import Location, Server, Upstream
from companion.core.values import HttpsMethod, Proto
from tests.harness.containers import app as c

PLACEHOLDER = CertFiles("/certs/placeholder/fullchain.pem", "/certs/placeholder/privkey.pem")
REAL = CertFiles(
    "/certs/live/a.com/fullchain.pem", "/certs/live/a.com/privkey.pem", ocsp=True, domains=("a.com", "b.com")
)


U1, U2, U3 = "companion_u1", "companion_u2", "companion_u3"  # numbered over sorted backend sets


def build(*containers: ContainerInfo, certs: dict[str, CertFiles] | None = None, **kw: object) -> plan.Desired:
    return plan.build(list(containers), certs or {}, PLACEHOLDER, **kw)  # type: ignore[arg-type]


def server(desired: plan.Desired, host: str) -> Server:
    (found,) = [s for s in desired.servers if s.host == host]
    return found


def test_single_site() -> None:
    desired = build(c("web", VIRTUAL_HOST="a.com", VIRTUAL_PORT="3000"))
    assert desired.upstreams == (Upstream(U1, (("10.0.0.2", 3000),)),)
    assert desired.servers == (
        Server(
            host="a.com",
            https_method=HttpsMethod.REDIRECT,
            hsts="max-age=31536000",
            locations=(Location("/", U1, Proto.HTTP, ""),),
            cert=None,
            placeholder=False,
        ),
    )
    assert desired.certificates == () and desired.problems == ()
    assert not desired.servers[0].redirect and desired.servers[0].serves_http


def test_containers_without_virtual_host_are_ignored_silently() -> None:
    desired = build(c("db"), c("web", VIRTUAL_HOST="a.com"))
    assert [s.host for s in desired.servers] == ["a.com"] and desired.problems == ()


def test_two_containers_same_host_share_one_upstream() -> None:
    desired = build(
        c("web2", ip="10.0.0.3", VIRTUAL_HOST="a.com", VIRTUAL_PORT="8080"),
        c("web1", ip="10.0.0.2", VIRTUAL_HOST="a.com", VIRTUAL_PORT="8080"),
    )
    assert desired.upstreams == (Upstream(U1, (("10.0.0.2", 8080), ("10.0.0.3", 8080))),)
    assert len(desired.servers) == 1 and desired.problems == ()


def test_multiple_hosts_per_container_share_its_upstream() -> None:
    desired = build(c("web", VIRTUAL_HOST="b.com,a.com"))
    assert [s.host for s in desired.servers] == ["a.com", "b.com"]
    assert desired.upstreams == (Upstream(U1, (("10.0.0.2", 80),)),)
    assert [loc.upstream for s in desired.servers for loc in s.locations] == [U1, U1]


def test_different_paths_get_separate_locations_and_upstreams() -> None:
    desired = build(
        c("api", ip="10.0.0.3", VIRTUAL_HOST="a.com", VIRTUAL_PATH="/api/", VIRTUAL_DEST="/", VIRTUAL_PROTO="https"),
        c("front", ip="10.0.0.2", VIRTUAL_HOST="a.com"),
    )
    assert server(desired, "a.com").locations == (
        Location("/", U1, Proto.HTTP, ""),
        Location("/api/", U2, Proto.HTTPS, "/"),
    )
    assert {u.name: u.servers for u in desired.upstreams} == {U1: (("10.0.0.2", 80),), U2: (("10.0.0.3", 80),)}
    assert desired.problems == ()


def test_one_upstream_per_backend_set_whatever_the_hosts_and_paths() -> None:
    desired = build(
        c("web1", ip="10.0.0.2", VIRTUAL_HOST="a.com,b.com"),
        c("web2", ip="10.0.0.3", VIRTUAL_HOST="a.com,b.com"),
        c("api", ip="10.0.0.3", VIRTUAL_HOST="a.com", VIRTUAL_PATH="/api/"),
        c("docs", ip="10.0.0.3", VIRTUAL_HOST="c.com", VIRTUAL_PATH="/docs/"),
    )
    assert desired.upstreams == (
        Upstream(U1, (("10.0.0.2", 80), ("10.0.0.3", 80))),
        Upstream(U2, (("10.0.0.3", 80),)),
    )
    routes = {(s.host, loc.path): loc.upstream for s in desired.servers for loc in s.locations}
    assert routes == {("a.com", "/"): U1, ("b.com", "/"): U1, ("a.com", "/api/"): U2, ("c.com", "/docs/"): U2}


def test_upstream_names_are_numbered_over_sorted_backend_sets_only() -> None:
    one, two = ((("10.0.0.2", 80),), True), ((("10.0.0.10", 80), ("10.0.0.2", 80)), True)
    names = plan.upstream_names([two, one, two])
    assert names == plan.upstream_names([one, two]) == {two: U1, one: U2}  # "10.0.0.10" sorts first
    assert plan.upstream_names([one, (one[0], False)]) == {(one[0], False): U1, one: U2}  # False sorts first
    # the world's order, container names and hosts never change the output
    shuffled = build(c("b", ip="10.0.0.3", VIRTUAL_HOST="x.com"), c("a", ip="10.0.0.2", VIRTUAL_HOST="y.com"))
    assert shuffled == build(c("a", ip="10.0.0.2", VIRTUAL_HOST="y.com"), c("b", ip="10.0.0.3", VIRTUAL_HOST="x.com"))
    assert [(u.name, u.servers) for u in shuffled.upstreams] == [(U1, (("10.0.0.2", 80),)), (U2, (("10.0.0.3", 80),))]


def test_keepalive_is_on_unless_a_backend_of_the_set_turns_it_off() -> None:
    desired = build(
        c("web", ip="10.0.0.2", VIRTUAL_HOST="a.com"),
        c("old", ip="10.0.0.3", VIRTUAL_HOST="b.com", VIRTUAL_KEEPALIVE="off"),
        c("mixed", ip="10.0.0.4", VIRTUAL_HOST="b.com", VIRTUAL_KEEPALIVE=" On "),
    )
    assert [(u.servers, u.keepalive) for u in desired.upstreams] == [
        ((("10.0.0.2", 80),), True),
        ((("10.0.0.3", 80), ("10.0.0.4", 80)), False),
    ]
    assert [loc.keepalive for s in desired.servers for loc in s.locations] == [True, False]
    bad = build(c("bad", VIRTUAL_HOST="a.com", VIRTUAL_KEEPALIVE="false"))
    assert bad.servers == () and bad.problems == (
        "container bad: VIRTUAL_KEEPALIVE='false' rejected: must be one of on, off",
    )


def test_one_backend_set_with_keepalive_on_and_off_gets_two_upstreams() -> None:
    """Two containers on the host's network can stand for one address and port: each keeps its own choice."""

    def hostnet(name: str, host: str, **env: str) -> ContainerInfo:
        env = {"VIRTUAL_HOST": host, "VIRTUAL_PORT": "8081", **env}
        return ContainerInfo(id=name, name=name, env=env, networks={"host": ""}, network_mode="host")

    desired = build(hostnet("on", "a.com"), hostnet("off", "b.com", VIRTUAL_KEEPALIVE="off"))
    assert desired.upstreams == (
        Upstream(U1, (("127.0.0.1", 8081),), keepalive=False),
        Upstream(U2, (("127.0.0.1", 8081),), keepalive=True),
    )
    assert [loc.upstream for s in desired.servers for loc in s.locations] == [U2, U1]


def test_conflict_first_container_name_wins_and_warns() -> None:
    desired = build(
        c("zeta", ip="10.0.0.3", VIRTUAL_HOST="a.com", HTTPS_METHOD="noredirect", VIRTUAL_PROTO="https", HSTS="off"),
        c("alpha", ip="10.0.0.2", VIRTUAL_HOST="a.com"),
    )
    s = server(desired, "a.com")
    assert s.https_method is HttpsMethod.REDIRECT and s.hsts == "max-age=31536000"
    assert s.locations == (Location("/", U1, Proto.HTTP, ""),)
    assert desired.upstreams[0].servers == (("10.0.0.2", 80), ("10.0.0.3", 80))
    (warning,) = desired.problems
    assert "alpha" in warning and "zeta" in warning and "a.com" in warning
    assert "HTTPS_METHOD" in warning and "HSTS" in warning and "VIRTUAL_PROTO" in warning


def test_conflict_on_other_path_does_not_warn_about_proto() -> None:
    desired = build(
        c("alpha", VIRTUAL_HOST="a.com"),
        c("beta", ip="10.0.0.3", VIRTUAL_HOST="a.com", VIRTUAL_PATH="/b", VIRTUAL_PROTO="https"),
    )
    assert desired.problems == ()
    assert server(desired, "a.com").locations[1].proto is Proto.HTTPS


def test_rejected_container_is_left_out_with_a_problem() -> None:
    desired = build(c("bad", VIRTUAL_HOST="a.com;evil"), c("good", VIRTUAL_HOST="b.com"))
    assert [s.host for s in desired.servers] == ["b.com"]
    (problem,) = desired.problems
    assert problem.startswith("container bad: VIRTUAL_HOST=")


def test_container_without_shared_network_is_left_out_of_the_upstream() -> None:
    desired = build(
        c("lonely", ip="10.1.0.2", network="other", VIRTUAL_HOST="a.com"),
        c("web", ip="10.0.0.2", network="proxy", VIRTUAL_HOST="b.com"),
        c("shared", ip="10.0.0.3", network="proxy", VIRTUAL_HOST="a.com"),
        nginx_networks=["proxy"],
    )
    assert [s.host for s in desired.servers] == ["a.com", "b.com"]
    assert {u.name: u.servers for u in desired.upstreams} == {U1: (("10.0.0.2", 80),), U2: (("10.0.0.3", 80),)}
    assert [s.locations[0].upstream for s in desired.servers] == [U2, U1]
    (problem,) = desired.problems
    assert problem == (
        "container lonely: not reachable (no IP address on a network shared with nginx); "
        "its paths answer 502 without another backend"
    )


def test_container_with_no_address_keeps_its_host_which_answers_502() -> None:
    """A running container that left nginx's network: its host is not handed to nginx's default server."""
    desired = build(
        c("noip", ip="", VIRTUAL_HOST="a.com", LETSENCRYPT_HOST="a.com"),
        c("front", ip="", VIRTUAL_HOST="b.com"),
        c("api", ip="10.0.0.3", VIRTUAL_HOST="b.com", VIRTUAL_PATH="/api/"),
    )
    assert [s.host for s in desired.servers] == ["a.com", "b.com"]
    assert server(desired, "a.com").locations == (Location("/", "", Proto.HTTP, ""),)
    assert server(desired, "a.com").has_root and server(desired, "a.com").placeholder
    assert server(desired, "b.com").locations == (
        Location("/", "", Proto.HTTP, ""),
        Location("/api/", U1, Proto.HTTP, ""),
    )
    assert desired.upstreams == (Upstream(U1, (("10.0.0.3", 80),)),)
    assert [r.domains for r in desired.certificates] == [("a.com",)]
    assert [p.split(":")[0] for p in desired.problems] == ["container front", "container noip"]
    assert all("not reachable (no IP address on any network)" in p for p in desired.problems)


def test_host_network_container_is_reached_at_the_host_address() -> None:
    hostnet = ContainerInfo(
        id="h",
        name="hostnet",
        env={"VIRTUAL_HOST": "h.com", "VIRTUAL_PORT": "8081"},
        networks={"host": ""},
        network_mode="host",
    )
    in_host_mode = build(hostnet)
    assert in_host_mode.upstreams == (Upstream(U1, (("127.0.0.1", 8081),)),)
    in_docker_mode = build(hostnet, nginx_networks=["proxy"], host_address="172.18.0.1")
    assert in_docker_mode.upstreams == (Upstream(U1, (("172.18.0.1", 8081),)),)
    assert in_docker_mode.problems == ()
    no_gateway = build(hostnet, nginx_networks=["proxy"], host_address="")
    assert no_gateway.upstreams == () and server(no_gateway, "h.com").locations[0].upstream == ""
    (problem,) = no_gateway.problems
    assert "hostnet: not reachable (on the host's network, and nginx is on no network with a gateway" in problem


def test_host_network_container_without_virtual_port_uses_its_exposed_port() -> None:
    info = ContainerInfo(
        id="h",
        name="h",
        env={"VIRTUAL_HOST": "h.com"},
        networks={"host": ""},
        network_mode="host",
        exposed_ports=("9000/tcp",),
    )
    assert build(info).upstreams[0].servers == (("127.0.0.1", 9000),)


def test_pick_address_prefers_shared_network_sorted_by_name() -> None:
    info = ContainerInfo(id="x", name="x", networks={"zz": "10.9.0.2", "bb": "10.8.0.2", "aa": ""})
    assert reach.pick_address(info, None) == "10.8.0.2"
    assert reach.pick_address(info, ["zz"]) == "10.9.0.2"
    assert reach.pick_address(info, ["aa"]) is None
    assert reach.pick_address(info, []) is None


def test_unhealthy_container_left_out() -> None:
    desired = build(
        c("sick", ip="10.0.0.3", health="unhealthy", VIRTUAL_HOST="a.com"),
        c("well", ip="10.0.0.2", health="healthy", VIRTUAL_HOST="a.com"),
        c("starting", ip="10.0.0.4", health="starting", VIRTUAL_HOST="a.com"),
    )
    assert desired.upstreams[0].servers == (("10.0.0.2", 80), ("10.0.0.4", 80))
    assert any("sick" in p and "unhealthy" in p for p in desired.problems)


def test_certificate_on_disk_gives_redirect_and_https_server() -> None:
    desired = build(c("web", VIRTUAL_HOST="a.com"), certs={"a.com": REAL})
    s = server(desired, "a.com")
    assert s.cert == REAL and not s.placeholder and s.redirect and s.serves_http


def test_letsencrypt_host_without_certificate_uses_placeholder_and_no_redirect() -> None:
    desired = build(c("web", VIRTUAL_HOST="a.com", LETSENCRYPT_HOST="a.com", LETSENCRYPT_EMAIL="me@a.com"))
    s = server(desired, "a.com")
    assert s.cert == PLACEHOLDER and s.placeholder and not s.redirect and s.serves_http
    assert desired.certificates == (CertRequest("a.com", ("a.com",), "me@a.com"),)


def test_letsencrypt_host_with_certificate_issued() -> None:
    desired = build(c("web", VIRTUAL_HOST="a.com", LETSENCRYPT_HOST="a.com"), certs={"a.com": REAL})
    s = server(desired, "a.com")
    assert s.cert == REAL and not s.placeholder and s.redirect


def test_cert_name_selects_the_certificate() -> None:
    desired = build(
        c("web", VIRTUAL_HOST="a.com,b.com", CERT_NAME="shared"),
        certs={"shared": REAL, "a.com": PLACEHOLDER},
    )
    assert server(desired, "a.com").cert == REAL and server(desired, "b.com").cert == REAL
    missing = build(c("web", VIRTUAL_HOST="a.com", CERT_NAME="shared"))
    assert server(missing, "a.com").placeholder and missing.certificates == ()


def test_default_email_fills_requests() -> None:
    desired = build(c("web", VIRTUAL_HOST="a.com", LETSENCRYPT_HOST="a.com"), policy=Policy(default_email="ops@x.io"))
    assert desired.certificates[0].email == "ops@x.io"


def test_same_certificate_name_with_different_names_gets_a_lineage_of_its_own() -> None:
    desired = build(
        c("one", VIRTUAL_HOST="a.com", LETSENCRYPT_HOST="a.com", CERT_NAME="shared"),
        c("two", VIRTUAL_HOST="b.com", LETSENCRYPT_HOST="b.com", CERT_NAME="shared"),
    )
    assert desired.certificates == (
        CertRequest("shared", ("a.com",), ""),
        CertRequest(f"shared-{certplan.lineage_digest(('b.com',))}", ("b.com",), ""),
    )
    assert desired.problems == ()


@pytest.mark.parametrize(
    ("method", "cert", "has_cert", "placeholder", "redirect", "serves_http"),
    [
        # no certificate anywhere: plain HTTP whatever the method (except the cert is never invented)
        ("redirect", None, False, False, False, True),
        ("noredirect", None, False, False, False, True),
        ("nohttp", None, False, False, False, True),
        ("nohttps", None, False, False, False, True),
        # real certificate
        ("redirect", "real", True, False, True, True),
        ("noredirect", "real", True, False, False, True),
        ("nohttp", "real", True, False, False, False),
        ("nohttps", "real", False, False, False, True),
        # LETSENCRYPT_HOST set, not issued yet: placeholder, HTTP stays up for the challenge
        ("redirect", "pending", True, True, False, True),
        ("noredirect", "pending", True, True, False, True),
        ("nohttp", "pending", True, True, False, True),
        ("nohttps", "pending", False, False, False, True),
    ],
)
def test_https_methods(
    method: str, cert: str | None, has_cert: bool, placeholder: bool, redirect: bool, serves_http: bool
) -> None:
    labels = {"VIRTUAL_HOST": "a.com", "HTTPS_METHOD": method}
    if cert == "pending":
        labels["LETSENCRYPT_HOST"] = "a.com"
    desired = build(c("web", **labels), certs={"a.com": REAL} if cert == "real" else {})
    s = server(desired, "a.com")
    assert (s.cert is not None, s.placeholder, s.redirect, s.serves_http) == (
        has_cert,
        placeholder,
        redirect,
        serves_http,
    )
    assert s.https_method is HttpsMethod(method)


def test_wildcard_host() -> None:
    desired = build(c("web", VIRTUAL_HOST="*.a.com"))
    assert desired.servers[0].host == "*.a.com"
    assert desired.upstreams[0].name == U1 and desired.servers[0].locations[0].upstream == U1


def test_longest_name() -> None:
    assert build().longest_name == 1
    assert build(c("web", VIRTUAL_HOST="a.com,abcdefgh.com")).longest_name == len("abcdefgh.com")


def _fleet() -> list[ContainerInfo]:
    return [
        c("w1", ip="10.0.0.11", VIRTUAL_HOST="a.com,b.com", LETSENCRYPT_HOST="a.com"),
        c("w2", ip="10.0.0.12", VIRTUAL_HOST="a.com", VIRTUAL_PATH="/api", HTTPS_METHOD="nohttp"),
        c("w3", ip="10.0.0.13", VIRTUAL_HOST="b.com", VIRTUAL_PORT="9000"),
        c("w4", ip="10.0.0.14", VIRTUAL_HOST="*.c.com", HSTS="off"),
        c("w5", ip="10.0.0.15", VIRTUAL_HOST="bad host"),
        c("w6", ip="10.0.0.16", network="elsewhere", VIRTUAL_HOST="d.com"),
        c("w7", ip="10.0.0.9", VIRTUAL_HOST="a.com", VIRTUAL_PATH="/api", CERT_NAME="x"),
        c("w8", ip="10.0.0.8", VIRTUAL_HOST="e.com", LETSENCRYPT_HOST="e.com", CERT_NAME="a.com"),
    ]


@pytest.mark.parametrize("seed", range(8))
def test_deterministic_regardless_of_input_order(seed: int) -> None:
    fleet = _fleet()
    kw = {"certs": {"a.com": REAL}, "nginx_networks": ["proxy"], "policy": Policy(default_email="ops@x.io")}
    expected = build(*fleet, **kw)  # type: ignore[arg-type]
    shuffled = fleet[:]
    random.Random(seed).shuffle(shuffled)
    assert build(*shuffled, **kw) == expected  # type: ignore[arg-type]


def test_every_permutation_of_a_conflict_gives_the_same_result() -> None:
    fleet = _fleet()[:3] + _fleet()[6:7]
    results = {build(*perm) for perm in itertools.permutations(fleet)}
    assert len(results) == 1


def test_default_host_marks_its_server_and_warns_when_no_container_serves_it() -> None:
    desired = build(c("web", VIRTUAL_HOST="a.com"), c("other", VIRTUAL_HOST="b.com"), default_host="a.com")
    assert [(s.host, s.default) for s in desired.servers] == [("a.com", True), ("b.com", False)]
    assert desired.default_http_taken and not desired.default_https_taken  # no certificate yet
    assert desired.problems == ()
    with_cert = build(c("web", VIRTUAL_HOST="a.com"), certs={"a.com": REAL}, default_host="a.com")
    assert with_cert.default_http_taken and with_cert.default_https_taken
    pending = build(c("web", VIRTUAL_HOST="a.com", LETSENCRYPT_HOST="a.com"), default_host="a.com")
    assert server(pending, "a.com").placeholder and not pending.default_https_taken
    https_only = build(
        c("web", VIRTUAL_HOST="a.com", HTTPS_METHOD="nohttp"), certs={"a.com": REAL}, default_host="a.com"
    )
    assert not https_only.default_http_taken and https_only.default_https_taken
    missing = build(c("other", VIRTUAL_HOST="b.com"), default_host="a.com")
    assert not missing.default_http_taken and not any(s.default for s in missing.servers)
    assert missing.problems == ("DEFAULT_HOST=a.com: no container serves this host; unknown names answer 503",)


@pytest.mark.parametrize("method", ["redirect", "noredirect", "nohttp", "nohttps"])
@pytest.mark.parametrize("cert", ["none", "pending", "real"])
def test_http_on_missing_cert_false_holds_http_only_for_redirect_and_nohttp_without_a_real_cert(
    method: str, cert: str
) -> None:
    labels = {"VIRTUAL_HOST": "a.com", "HTTPS_METHOD": method}
    if cert == "pending":
        labels["LETSENCRYPT_HOST"] = "a.com"
    certs = {"a.com": REAL} if cert == "real" else {}
    held = server(build(c("web", **labels), certs=certs, http_on_missing_cert=False), "a.com")
    assert held.hold_http is (method in ("redirect", "nohttp") and cert != "real")
    assert not server(build(c("web", **labels), certs=certs), "a.com").hold_http  # the default: true


def test_host_address_from_the_nginx_containers() -> None:
    def nginx(name: str, mode: str = "", **gateways: str) -> ContainerInfo:
        return ContainerInfo(
            id=name, name=name, networks=dict.fromkeys(gateways, "10.0.0.9"), gateways=gateways, network_mode=mode
        )

    assert reach.host_address_from([nginx("n", zz="172.20.0.1", proxy="172.18.0.1")]) == "172.18.0.1"
    assert reach.host_address_from([nginx("n", mode="host")]) == "127.0.0.1"
    assert reach.host_address_from([nginx("n")]) == ""
    assert reach.host_address_from([]) == ""


def test_the_plan_records_each_container_decision() -> None:
    desired = build(
        c("ok", VIRTUAL_HOST="a.com"),
        c("far", network="other", VIRTUAL_HOST="b.com"),
        c("sick", health="unhealthy", VIRTUAL_HOST="c.com"),
        c("bad", VIRTUAL_HOST="a.com", VIRTUAL_PORT="x"),
        c("db"),
        nginx_networks=["proxy"],
    )
    decided = {decision.name: decision for decision in desired.containers}
    assert (decided["ok"].address, decided["ok"].network, decided["ok"].unreachable) == ("10.0.0.2", "proxy", "")
    assert decided["far"].routed and decided["far"].address is None
    assert decided["far"].unreachable == reach.unreachable_reason(c("far", network="other"), ["proxy"])
    assert decided["sick"].unhealthy and not decided["sick"].routed
    assert decided["bad"].left_out.startswith("VIRTUAL_PORT=") and not decided["bad"].routed
    assert decided["db"].parsed is None and decided["db"].left_out == ""
    assert desired.left_out == tuple((d.name, d.left_out) for d in desired.containers if d.left_out)
    assert [p for d in desired.containers for p in d.problems] == list(desired.problems)


def test_the_plan_records_each_host_decision() -> None:
    desired = build(
        c("a", VIRTUAL_HOST="a.com", HTTPS_METHOD="noredirect"),
        c("b", ip="10.0.0.3", VIRTUAL_HOST="a.com"),
        c("w", VIRTUAL_HOST="w.b.com", LETSENCRYPT_HOST="w.b.com"),
        c("n", VIRTUAL_HOST="n.com", HTTPS_METHOD="nohttps"),
        certs={"a.com": REAL},
        owners={"a.com": "b"},
    )
    hosts = {decision.host: decision for decision in desired.hosts}
    assert (hosts["a.com"].owner, hosts["a.com"].why) == ("b", "it served the host first")
    assert hosts["a.com"].overruled == (("a", "/", ("HTTPS_METHOD",)),)
    assert (hosts["a.com"].certificate, hosts["a.com"].cert_why) == ("a.com", certplan.CertWhy.NAMED)
    assert (hosts["w.b.com"].certificate, hosts["w.b.com"].cert_why) == ("", certplan.CertWhy.PLACEHOLDER)
    assert hosts["n.com"].cert_why is certplan.CertWhy.NOHTTPS
    assert desired.owners == tuple((d.host, d.owner) for d in desired.hosts)
