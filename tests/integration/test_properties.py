"""Property: whatever a container's labels say, the container is rejected or the real nginx accepts a
config in which every directive is one the companion writes and every argument is a typed value.

Values come from ``st.text()``, a corpus of strings that broke other proxies, valid values, and valid
values with hostile suffixes (so that many examples are accepted and the render path is exercised).
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from companion.core import model, plan, reach
from companion.core.certificates import CertFiles
from companion.core.container import ContainerInfo
from companion.core.model import MULTIPORTS, Rejection, Site
from companion.core.multiports import parse_sites
from companion.nginx.render import MAIN_FILE, render
from tests.harness.nginx import NginxLayout, make_layout, parse_conf, walk

BAD = [
    "~^foo\\..*$",
    "~^(?<sub>.+)\\.example\\.com$",
    "{",
    "}",
    ";",
    "a;b",
    "x; include /etc/passwd;",
    "x } server { listen 81; }",
    "\n",
    "a\nb",
    "a\n",
    "evil\n.",
    "x\n.evil.",
    "\r",
    "a\r\nb",
    "$host",
    "$request_uri",
    '"',
    "'",
    '"; return 200 "x',
    " ",
    "a b",
    "\t",
    "#",
    "a#b",
    "\x00",
    "a\x00b",
    "\\",
    "x" * 300,
    "a" * 64 + ".com",
    "bücher.de",
    "ｅｘａｍｐｌｅ.com",
    "ａ；b.com",
    "exаmple.com",
    "\u2028",
    "\u202e",
    "８０",
    "0",
    "65536",
    "80;",
    "/../",
    "/a/../b",
    "/{",
    "/a b",
    "/.well-known/acme-challenge/",
    "*.example.com",
    "*",
    "",
]
GOOD = {
    "VIRTUAL_HOST": [
        "a.example.com",
        "A.Example.COM.",
        "a.example.com, b.example.com",
        "*.wild.example.com,a.example.com",
        "bücher.example.com,a.example.com",
        "x.example.com,*.y.example.com,a.example.com",
    ],
    "VIRTUAL_PORT": ["80", "8080", " 3000 ", "65535", "1"],
    "VIRTUAL_PROTO": ["http", "HTTPS", "https"],
    "VIRTUAL_PATH": ["/", "/api", "/api/", "/a/b%20c/", "/v1.0~x_y-z"],
    "VIRTUAL_DEST": ["/", "/x", "/x/y/", ""],
    "HTTPS_METHOD": ["redirect", "noredirect", "nohttp", "nohttps", "NoHttp"],
    "HSTS": ["off", "max-age=1", "max-age=31536000; includeSubDomains; preload", "max-age=5;preload"],
    "CERT_NAME": ["shared", "a.example.com", "even-cert"],
    "ACME_CERT_PROFILE": ["shortlived", "classic", "tlsserver"],
    "LETSENCRYPT_HOST": ["a.example.com", "A.example.com.", "a.example.com,b.example.com", "bücher.example.com"],
    "LETSENCRYPT_EMAIL": ["me@example.com", "a+b@x.io"],
    "ACME_HOST": ["a.example.com", "a.example.com,b.example.com"],
    "ACME_EMAIL": ["me@example.com", "a+b@x.io"],
    "ACME_CA_URI": ["https://ca.example.com/directory", "https://127.0.0.1:14000/dir"],
    "LETSENCRYPT_TEST": ["true", "false"],
    "ACME_TEST": ["TRUE", "0"],
    "NETWORK_ACCESS": ["external", "internal", "Internal"],
    "VIRTUAL_KEEPALIVE": ["on", "off", " OFF "],
    "PROXY_MAX_BODY_SIZE": ["10m", "0", "512K", " 1g "],
    "PROXY_READ_TIMEOUT": ["60", "60s", "5m", "1500ms"],
    "PROXY_SEND_TIMEOUT": ["30s", "1h"],
    "PROXY_CONNECT_TIMEOUT": ["5s", "75s"],
    "PROXY_BUFFERING": ["on", "OFF"],
    "PROXY_ALLOW_FROM": ["10.0.0.0/8", "192.0.2.1, 2001:db8::/32", "::1"],
    "ACME_CHALLENGE": ["http-01", "HTTP-01"],  # dns-01 needs a DNS plugin (tests/integration/test_dns01_unit.py)
    MULTIPORTS: [
        "a.example.com:",
        '{"a.example.com": {"/": {"port": 8081}, "/x/": {"port": "8082", "dest": "/"}}}',
        "a.example.com:\n  /:\n  /api/:\n    port: 9000\nb.example.com:\n  /:\n    port: 9001\n    dest: /v2/",
    ],
}
ONLY_WITH_A_CERTIFICATE = {
    "LETSENCRYPT_EMAIL",
    "ACME_EMAIL",
    "ACME_CA_URI",
    "LETSENCRYPT_TEST",
    "ACME_TEST",
    "ACME_CHALLENGE",
    "ACME_CERT_PROFILE",
}
SPECIAL = set(" ;{}\"'$#\\\n\r\t\x00")


def hostile_for(name: str) -> st.SearchStrategy[str]:
    good = st.sampled_from(GOOD[name])
    bad = st.sampled_from(BAD)
    return st.one_of(
        bad, st.text(max_size=40), st.builds(lambda g, b: g + b, good, bad), st.builds(lambda b, g: b + g, bad, good)
    )


# Valid labels (VIRTUAL_HOST or VIRTUAL_HOST_MULTIPORTS, never both); valid labels with one hostile
# value; and anything at all (mostly rejected). The acme-companion spellings and a container's own CA are
# left out of the valid mixes: two spellings with different values, or a CA together with ACME_TEST, are
# refused by design (tests/unit/test_dropin_certs.py).
ALTERNATIVES = {"ACME_HOST", "ACME_EMAIL", "ACME_CA_URI"}
good_labels = st.one_of(
    st.fixed_dictionaries(
        {"VIRTUAL_HOST": st.sampled_from(GOOD["VIRTUAL_HOST"])},
        optional={
            name: st.sampled_from(GOOD[name])
            for name in model.VARIABLES
            if name not in {"VIRTUAL_HOST", MULTIPORTS, *ALTERNATIVES}
        },
    ),
    st.fixed_dictionaries(
        {MULTIPORTS: st.sampled_from(GOOD[MULTIPORTS])},
        optional={name: st.sampled_from(GOOD[name]) for name in ("HTTPS_METHOD", "HSTS", "NETWORK_ACCESS")},
    ),
)
one_bad = st.sampled_from(model.VARIABLES).flatmap(
    lambda name: st.builds(lambda base, bad: {**base, name: bad}, good_labels, hostile_for(name))
)
anything = st.dictionaries(
    st.sampled_from(model.VARIABLES),
    st.one_of(st.text(max_size=30), st.sampled_from(BAD), st.sampled_from(GOOD["VIRTUAL_HOST"])),
    max_size=6,
)
labels_strategy = st.one_of(good_labels, one_bad, one_bad, anything)


def some_certs(cert: CertFiles, sites: list[Site]) -> dict[str, CertFiles]:
    """Certificates "on disk" for every name of even length, so HTTPS and HTTP-only servers both occur."""
    hosts = {host for site in sites for host in site.hosts if len(host) % 2 == 0}
    return {host: replace(cert, domains=(host,)) for host in sorted(hosts)}


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> NginxLayout:
    return make_layout(tmp_path_factory.mktemp("props") / "nginx")


ALLOWED = {
    (): {"server_names_hash_bucket_size", "server_names_hash_max_size", "map", "server", "upstream"},
    # the last: the ACME token regex (as the harness's parser reads it, without the backslashes nginx keeps)
    ("map",): {"default", "", "https", "~^/.well-known/acme-challenge/[A-Za-z0-9_-]+z"},
    ("upstream",): {"server", "keepalive"},
    ("server",): {
        "listen",
        "server_name",
        "include",
        "location",
        "ssl_certificate",
        "ssl_certificate_key",
        "add_header",
        "http2",
        "ssl_reject_handshake",
        "ssl_stapling",
        "ssl_stapling_verify",
    },
    ("server", "location"): {
        "include",
        "proxy_pass",
        "return",
        "allow",
        "deny",
        "client_max_body_size",
        "proxy_connect_timeout",
        "proxy_read_timeout",
        "proxy_send_timeout",
        "proxy_buffering",
    },
}
GOOD_CONTAINER = ContainerInfo(
    id="id-good", name="good", labels={"VIRTUAL_HOST": "good.example.org"}, networks={"proxy": "10.0.0.2"}
)


def check_typed(
    text: str, hostile: tuple[Site, ...], layout: NginxLayout, cert: CertFiles, placeholder: CertFiles
) -> None:
    """Every directive is allowed in its context and every argument comes from typed values."""
    sites = [*hostile, *(s for s in (model.parse_site(GOOD_CONTAINER),) if isinstance(s, Site))]
    hosts = {"_", *(h for s in sites for h in s.hosts)}
    paths = {"/", *(s.path for s in sites)}
    # upstream names are numbered over backend sets (typed addresses and ports), never taken from a label
    upstreams = {f"{plan.UPSTREAM_PREFIX}{n}" for n in range(1, len(sites) + 1)}
    proxy = {f"{s.proto.value}://{u}{s.dest}" for s in sites for u in upstreams}
    backends = {"10.0.0.2:80", *(f"10.0.0.3:{s.port}" for s in sites)}
    snippets = (
        "companion-acme.inc",
        "companion-proxy.inc",
        "companion-proxy-close.inc",
        "companion-tls.inc",
        "companion-internal.inc",
    )
    includes = {str(layout.conf_dir / n) for n in snippets}
    certs = {cert.fullchain, cert.privkey, placeholder.fullchain, placeholder.privkey}
    hsts = {s.hsts for s in sites}
    networks = {network for s in sites for network in s.tuning.allow_from}
    for parents, d in walk(parse_conf(text)):
        assert d.name in ALLOWED[parents], (parents, d)
        args = d.args
        if d.name == "server" and parents == ("upstream",):
            assert len(args) == 1 and args[0] in backends, d
        elif d.name == "server_name":
            assert len(args) >= 1 and set(args) <= hosts, d
        elif d.name == "listen":
            assert args[0] in ("80", "443") and set(args[1:]) <= {"ssl", "http2", "default_server"}, d
        elif d.name == "location":
            assert len(args) == 1 and args[0] in paths, d
        elif d.name == "proxy_pass":
            assert len(args) == 1 and args[0] in proxy, d
        elif d.name == "upstream":
            assert len(args) == 1 and args[0] in upstreams, d
        elif d.name == "keepalive":
            assert args == ("32",), d
        elif d.name == "include":
            assert len(args) == 1 and args[0] in includes, d
        elif d.name in ("ssl_certificate", "ssl_certificate_key"):
            assert len(args) == 1 and args[0] in certs, d
        elif d.name == "add_header":
            assert len(args) == 3 and args[0] == "Strict-Transport-Security" and args[1] in hsts, d
            assert args[2] == "always"
        elif d.name == "return":
            assert args in (("503",), ("404",), ("301", "https://$host$request_uri")), d
        elif d.name in ("http2", "ssl_reject_handshake", "ssl_stapling", "ssl_stapling_verify"):
            assert args == ("on",), d
        elif d.name == "allow":
            assert len(args) == 1 and args[0] in networks, d
        elif d.name == "deny":
            assert args == ("all",), d
        elif d.name == "client_max_body_size":
            assert len(args) == 1 and re.fullmatch(r"[0-9]{1,9}[kmg]?", args[0]), d
        elif d.name in ("proxy_connect_timeout", "proxy_read_timeout", "proxy_send_timeout"):
            assert len(args) == 1 and re.fullmatch(r"[0-9]{1,9}m?s", args[0]), d
        elif d.name == "proxy_buffering":
            assert args in (("on",), ("off",)), d


TIMES: list[float] = []
OUTCOMES: list[bool] = []


@settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    labels=labels_strategy,
    env=st.one_of(
        st.just({}), st.dictionaries(st.sampled_from(model.VARIABLES), st.sampled_from(BAD), min_size=1, max_size=2)
    ),
)
# Regressions found while writing these tests, always run first.
@example(labels={"VIRTUAL_HOST": "evil\n.a.example.com"}, env={})  # "$" matched before "\n"
@example(labels={"VIRTUAL_HOST": "a.example.com", "LETSENCRYPT_HOST": "x\n.a.example.com"}, env={})
@example(labels={"VIRTUAL_HOST": "a.example.com", "VIRTUAL_PATH": "/.well-known/acme-challenge/"}, env={})
@example(labels={"VIRTUAL_HOST": "a.example.com", "ACME_CERT_PROFILE": "~^foo\\..*$"}, env={})
@example(labels={"VIRTUAL_HOST": "a.example.com"}, env={"VIRTUAL_PATH": "/{", "HSTS": "max-age=1\n; preload"})
def test_labels_are_rejected_or_render_a_valid_typed_config(
    layout: NginxLayout, labels: dict[str, str], env: dict[str, str]
) -> None:
    cert, placeholder = layout.cert(), layout.cert(ocsp=True)
    hostile = ContainerInfo(
        id="id-hostile",
        name="hostile",
        labels=labels,
        env=env,
        networks={"proxy": "10.0.0.3"},
        exposed_ports=("8080/tcp",),
    )
    parsed = parse_sites(hostile)
    if isinstance(parsed, Rejection):
        assert parsed.container == "hostile" and parsed.variable in model.VARIABLES
        assert "\n" not in parsed.message and "\r" not in parsed.message and "\x00" not in parsed.message
    sites = parsed if isinstance(parsed, tuple) else ()
    good = model.parse_site(GOOD_CONTAINER)
    assert isinstance(good, Site)
    certs = some_certs(cert, [good, *sites])
    desired = plan.build([hostile, GOOD_CONTAINER], certs, placeholder)
    files = render(desired, layout.options())
    text = files[MAIN_FILE]
    assert "good.example.org" in text  # one bad container never takes others down
    OUTCOMES.append(bool(sites))
    if not sites:
        assert "10.0.0.3" not in text
    check_typed(text, sites, layout, cert, placeholder)
    # snippets never depend on labels
    empty = render(plan.build([], {}, placeholder), layout.options())
    assert {n: v for n, v in files.items() if n != MAIN_FILE} == {n: v for n, v in empty.items() if n != MAIN_FILE}
    if sites:
        # an accepted value carries no nginx syntax (HSTS's "; " is written inside quotes, checked above);
        # VIRTUAL_HOST_MULTIPORTS is YAML: its parts reach nginx only as the routes checked above
        for name, value in model.settings_of(hostile).items():
            if (name in ONLY_WITH_A_CERTIFICATE and sites[0].cert is None) or name == MULTIPORTS:
                continue  # only read with a certificate request; never written to nginx either way
            allowed = set("; ") if name == "HSTS" else set()
            lists = ("VIRTUAL_HOST", "LETSENCRYPT_HOST", "ACME_HOST", "PROXY_ALLOW_FROM")
            parts = value.split(",") if name in lists else [value]
            for part in parts:
                assert not (SPECIAL - allowed) & set(part.strip()), (name, value)
    started = time.perf_counter()
    ok, output = layout.check(files)
    TIMES.append(time.perf_counter() - started)
    assert ok, output


def test_nginx_t_is_fast_enough(layout: NginxLayout) -> None:
    """Measured: one nginx -t on a rendered config takes about 10 ms here; keep the property test cheap."""
    files = render(plan.build([GOOD_CONTAINER], {}, layout.cert()), layout.options())
    layout.write(files)
    started = time.perf_counter()
    for _ in range(5):
        ok, output = layout.test()
        assert ok, output
    assert (time.perf_counter() - started) / 5 < 0.5


def test_property_examples_were_mixed() -> None:
    """Runs after the property test: both outcomes occurred, so the render path was really exercised."""
    if len(OUTCOMES) < 50:  # the property test was deselected or failed (and reported) early
        return
    accepted = sum(OUTCOMES)
    assert 0.1 * len(OUTCOMES) < accepted < len(OUTCOMES), (accepted, len(OUTCOMES))
    print(f"{accepted}/{len(OUTCOMES)} accepted; nginx -t mean {1000 * sum(TIMES) / len(TIMES):.1f} ms")


# -- routing equivalence: one upstream per backend set routes exactly as one upstream per host and path ----

Routes = dict[tuple[str, str], tuple[frozenset[tuple[str, int]], bool]]  # (host, path) -> (backends, keepalive)
FLEET_HOSTS = ("a.test", "b.test", "c.test", "*.w.test")
FLEET_PATHS = ("/", "/api/", "/api/v2/")
FLEET_ADDRESSES = ("10.0.0.2", "10.0.0.3", "10.0.0.4", "", "host")  # "": on no network; "host": network_mode host


@st.composite
def fleet_member(draw: st.DrawFn, number: int) -> ContainerInfo:
    """One app container of a random fleet: few hosts, paths and addresses, so backend sets are shared."""
    hosts = draw(st.lists(st.sampled_from(FLEET_HOSTS), min_size=1, max_size=3, unique=True))
    labels = {"VIRTUAL_HOST": ",".join(hosts), "VIRTUAL_PORT": draw(st.sampled_from(("80", "8080")))}
    path = draw(st.sampled_from(FLEET_PATHS))
    if path != "/":
        labels["VIRTUAL_PATH"] = path
    if draw(st.booleans()):
        labels = {MULTIPORTS: f'{{"{hosts[0]}": {{"/": {{"port": 81}}, "/api/": {{"port": 82}}}}}}'}
    keepalive = draw(st.sampled_from(("", "on", "off")))
    if keepalive:
        labels["VIRTUAL_KEEPALIVE"] = keepalive
    address = draw(st.sampled_from(FLEET_ADDRESSES))
    return ContainerInfo(
        id=f"id-{number}",
        name=f"app{number}",
        labels=labels,
        networks={"proxy": address} if address not in ("", "host") else {},
        network_mode="host" if address == "host" else "",
        health=draw(st.sampled_from(("", "healthy", "starting", "unhealthy"))),
    )


fleets = st.integers(min_value=0, max_value=12).flatmap(
    lambda size: st.tuples(*(fleet_member(n) for n in range(size))).map(list)
)


def routes_from_sites(containers: list[ContainerInfo]) -> Routes:
    """What every (host, path) must reach, computed from the parsed sites alone: the address and port of
    each healthy, reachable container claiming it (none: it answers 502); keepalive unless one says off."""
    backends: dict[tuple[str, str], set[tuple[str, int]]] = {}
    keepalive: dict[tuple[str, str], bool] = {}
    for info in containers:
        sites = parse_sites(info)
        if not isinstance(sites, tuple) or info.health == "unhealthy":
            continue
        address = reach.LOOPBACK if info.network_mode == "host" else info.networks.get("proxy")
        for site in sites:
            for host in site.hosts:
                found = backends.setdefault((host, site.path), set())
                if address:
                    found.add((address, site.port))
                    keepalive[host, site.path] = keepalive.get((host, site.path), True) and site.keepalive
    return {route: (frozenset(found), keepalive.get(route, True)) for route, found in backends.items()}


def routes_from_desired(desired: plan.Desired) -> Routes:
    by_name = {u.name: u for u in desired.upstreams}
    assert len(by_name) == len(desired.upstreams)
    routes: Routes = {}
    for server in desired.servers:
        for loc in server.locations:
            upstream = by_name.get(loc.upstream)
            assert (upstream is None) == (loc.upstream == ""), loc
            assert upstream is None or upstream.keepalive == loc.keepalive
            routes[server.host, loc.path] = (frozenset(upstream.servers if upstream else ()), loc.keepalive)
    return routes


def routes_from_text(text: str, layout: NginxLayout) -> Routes:
    """The same table read back from the rendered nginx config: server_name, location, proxy_pass or 502,
    the upstream block's servers and keepalive, and which proxy snippet (Connection header) it includes or,
    without one of its own, inherits from its server."""
    top = parse_conf(text)
    upstreams = {
        d.args[0]: (
            frozenset((a, int(p)) for a, _, p in (s.args[0].rpartition(":") for s in d.find("server"))),
            bool(d.find("keepalive")),
        )
        for d in top
        if d.name == "upstream"
    }
    snippet = {
        True: str(layout.conf_dir / "companion-proxy.inc"),
        False: str(layout.conf_dir / "companion-proxy-close.inc"),
    }
    acme = str(layout.conf_dir / "companion-acme.inc")
    routes: Routes = {}
    for block in top:
        if block.name != "server" or any("ssl" in d.args for d in block.find("listen")):
            continue
        (names,) = block.find("server_name")  # hosts whose blocks would read the same share one
        assert ("include", (acme,)) in [(d.name, d.args) for d in block.block or ()], names  # ACME on every server
        if names.args == ("_",):
            continue
        for host, loc in ((host, loc) for host in names.args for loc in block.find("location")):
            if loc.find("return") and loc.find("return")[0].args == ("404",):
                continue  # DEFAULT_ROOT's `/` beside a sub-path: no container claims it
            if loc.find("return"):
                assert loc.find("return")[0].args == ("502",), loc
                routes[host, loc.args[0]] = (frozenset(), True)
                continue
            name = re.match(r"https?://(companion_u[0-9]+)", loc.find("proxy_pass")[0].args[0])
            assert name, loc
            servers, keepalive = upstreams[name.group(1)]
            # keepalive: the server's proxy snippet, which its locations inherit unless one includes its own
            # (VIRTUAL_KEEPALIVE=off: the snippet that says `Connection: close`)
            own = [d.args for d in loc.find("include")]
            shared = [d.args for d in block.find("include") if d.args == (snippet[True],)]
            assert own[-1:] == [(snippet[keepalive],)] or (keepalive and not own and shared), loc
            assert (snippet[False],) not in [d.args for d in block.find("include")], host
            routes[host, loc.args[0]] = (servers, keepalive)
    return routes


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(containers=fleets, seed=st.randoms(use_true_random=False))
def test_shared_upstreams_route_every_host_and_path_as_the_sites_ask(
    layout: NginxLayout, containers: list[ContainerInfo], seed: random.Random
) -> None:
    desired = plan.build(containers, {}, layout.cert())
    expected = routes_from_sites(containers)
    assert routes_from_desired(desired) == expected
    # one upstream per distinct backend set (and keepalive choice), numbered from 1, each one used
    used = {(u.servers, u.keepalive) for u in desired.upstreams}
    assert len(used) == len(desired.upstreams) == len({route for route in expected.values() if route[0]})
    assert [u.name for u in desired.upstreams] == [f"companion_u{n}" for n in range(1, len(used) + 1)]
    files = render(desired, layout.options())
    assert routes_from_text(files[MAIN_FILE], layout) == expected
    shuffled = list(containers)
    seed.shuffle(shuffled)
    assert render(plan.build(shuffled, {}, layout.cert()), layout.options()) == files  # byte-identical
    ok, output = layout.check(files)
    assert ok, output
