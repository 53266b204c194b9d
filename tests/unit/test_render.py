"""render: deterministic text and version-dependent syntax, checked on the text alone (pure). The proofs by
the real `nginx -t` are tests/integration/test_render.py.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace

import pytest

from companion.core import plan
from companion.nginx.render import DHPARAM_FILE, MAIN_FILE, SNIPPETS, RenderOptions, render
from tests.harness.fleet import (
    OLD,
    OPTIONS,
    PLACEHOLDER,
    REAL,
    block_of,
    c,
    default_servers,
    fleet,
    fleet_certs,
    render_fleet,
    root_answers,
    server_blocks,
    upstream_of,
)
from tests.harness.nginx import parse_conf

# -- pure text properties ---------------------------------------------------------------------------


def test_files_owned() -> None:
    _, files = render_fleet()
    assert set(files) == {MAIN_FILE, DHPARAM_FILE, *(name for name, _ in SNIPPETS.values())}
    assert [n for n in files if n.endswith(".conf")] == [MAIN_FILE]  # snippets are never included by the glob
    assert files[DHPARAM_FILE].startswith("-----BEGIN DH PARAMETERS-----")
    assert "include /etc/nginx/conf.d/companion-proxy.inc;" in files[MAIN_FILE]
    assert "root /var/www/acme;" in files["companion-acme.inc"]
    assert "ssl_dhparam /etc/nginx/conf.d/companion-ffdhe2048.pem;" in files["companion-tls.inc"]


@pytest.mark.parametrize("seed", range(6))
def test_byte_identical_for_shuffled_input(seed: int) -> None:
    _, expected = render_fleet()
    containers = fleet()
    random.Random(seed).shuffle(containers)
    certs = dict(reversed(list(fleet_certs().items())))
    _, got = render_fleet(containers=containers, certs=certs)
    assert list(got) == list(expected)
    for name in expected:
        assert got[name].encode() == expected[name].encode(), name


def test_empty_state_renders_default_servers_only() -> None:
    files = render(plan.build([], {}, PLACEHOLDER), OPTIONS)
    assert [(name, https) for name, https, _ in server_blocks(files[MAIN_FILE])] == [("_", False), ("_", True)]
    assert not [d for d in parse_conf(files[MAIN_FILE]) if d.name == "upstream"]


@pytest.mark.parametrize(
    ("version", "in_listen", "directive"),
    [((1, 22, 1), True, False), ((1, 25, 0), True, False), ((1, 25, 1), False, True), ((1, 27, 0), False, True)],
)
def test_http2_syntax_by_version(version: tuple[int, ...], in_listen: bool, directive: bool) -> None:
    _, files = render_fleet(RenderOptions(conf_dir="/c", webroot="/w", nginx_version=version))
    text = files[MAIN_FILE]
    https = [b for name, ssl, b in server_blocks(text) if ssl and name != "_"]
    assert https
    for block in https:
        (listen,) = block.find("listen")
        assert ("http2" in listen.args) is in_listen
        assert bool(block.find("http2")) is directive
        if directive:
            assert block.find("http2")[0].args == ("on",)
    assert ("http2 on;" in text) is directive
    assert ("ssl http2;" in text) is in_listen


@pytest.mark.parametrize(
    ("https_port", "target"), [(443, "https://$host$request_uri"), (8443, "https://$host:8443$request_uri")]
)
def test_redirect_carries_https_port(https_port: int, target: str) -> None:
    options = RenderOptions(conf_dir="/c", webroot="/w", http_port=8080, https_port=https_port, nginx_version=OLD)
    _, files = render_fleet(options)
    text = files[MAIN_FILE]
    block = block_of(text, "a.example.com", https=False)
    assert block.find("listen")[0].args == ("8080",)
    (location,) = block.find("location")
    assert location.find("return")[0].args == ("301", target)
    assert block_of(text, "a.example.com", https=True).find("listen")[0].args[0] == str(https_port)
    # every redirecting host is served by the one block that redirects (the blocks read the same but for the name)
    redirecting = [s.host for s in plan.build(fleet(), fleet_certs(), PLACEHOLDER).servers if s.redirect]
    assert len(redirecting) > 1
    assert [name for name, https, b in server_blocks(text) if not https and b.find("location")[0] == location] == (
        redirecting
    )
    assert text.count("return 301 ") == 1


def test_hsts_only_on_https_with_real_cert_and_redirect_or_nohttp() -> None:
    desired, files = render_fleet()
    text = files[MAIN_FILE]
    seen = 0
    for server in desired.servers:
        for name, https, block in server_blocks(text):
            if name != server.host:
                continue
            headers = [h for h in block.find("add_header") if h.args[0] == "Strict-Transport-Security"]
            expected = (
                https
                and not server.placeholder
                and server.hsts != ""
                and server.https_method.value in ("redirect", "nohttp")
            )
            assert bool(headers) is expected, (server.host, https)
            if headers:
                seen += 1
                assert headers[0].args == ("Strict-Transport-Security", server.hsts, "always")
    assert seen >= 3
    assert 'add_header Strict-Transport-Security "max-age=60; includeSubDomains; preload" always;' in text
    assert "off.example.com" in text and "Strict" not in str(block_of(text, "off.example.com", True))
    assert "Strict" not in str(block_of(text, "nr.example.com", True))  # noredirect
    assert "Strict" not in str(block_of(text, "p.example.com", True))  # placeholder


def test_ocsp_stapling_only_with_ocsp_responder() -> None:
    _, files = render_fleet()
    text = files[MAIN_FILE]
    for name, https, block in server_blocks(text):
        stapling = block.find("ssl_stapling") + block.find("ssl_stapling_verify")
        assert len(stapling) == (2 if name == "o.example.com" and https else 0), name
    assert text.count("ssl_stapling on;") == 1


def test_placeholder_and_real_certificate_paths() -> None:
    _, files = render_fleet()
    text = files[MAIN_FILE]
    assert block_of(text, "p.example.com", True).find("ssl_certificate")[0].args == (PLACEHOLDER.fullchain,)
    assert block_of(text, "a.example.com", True).find("ssl_certificate_key")[0].args == (REAL.privkey,)
    # nohttps: no HTTPS server even though a certificate exists; nohttp with a real cert: no HTTP server
    assert [https for name, https, _ in server_blocks(text) if name == "ns.example.com"] == [False]
    assert [https for name, https, _ in server_blocks(text) if name == "nh.example.com"] == [True]
    # pending nohttp keeps HTTP for the challenge but proxies nothing there
    pending_http = block_of(text, "p.example.com", False)
    assert pending_http.find("location")[0].find("return")[0].args == ("503",)


def test_locations_paths_and_dest() -> None:
    desired, files = render_fleet()
    block = block_of(files[MAIN_FILE], "a.example.com", True)
    locations = {loc.args[0]: loc.find("proxy_pass")[0].args[0] for loc in block.find("location")}
    api = upstream_of(desired, "a.example.com", "/api/")
    assert locations == {"/": f"http://{upstream_of(desired, 'a.example.com')}", "/api/": f"http://{api}/v2/"}
    b = block_of(files[MAIN_FILE], "b.example.com", True)
    assert b.find("location")[0].find("proxy_pass")[0].args == (f"https://{upstream_of(desired, 'b.example.com')}",)
    assert any(loc.args == ("/a/b/c%20d",) for loc in b.find("location"))


@pytest.mark.parametrize("method", ["redirect", "noredirect", "nohttp", "nohttps"])
@pytest.mark.parametrize("cert", ["none", "real", "pending"])
def test_server_without_a_root_location_answers_404_at_root(method: str, cert: str) -> None:
    """Only VIRTUAL_PATH=/api/: `/` (and any other path) is a 404 of ours, never nginx's own html root."""
    labels = {"VIRTUAL_HOST": "a.com", "VIRTUAL_PATH": "/api/", "HTTPS_METHOD": method}
    if cert == "pending":
        labels["LETSENCRYPT_HOST"] = "a.com"
    desired = plan.build([c("api", "10.0.0.2", **labels)], {"a.com": REAL} if cert == "real" else {}, PLACEHOLDER)
    (server,) = desired.servers
    assert not server.has_root
    text = render(desired, OPTIONS)[MAIN_FILE]
    blocks = {https: block for name, https, block in server_blocks(text) if name == "a.com"}
    assert blocks, text
    for https, block in blocks.items():
        paths = [loc.args[0] for loc in block.find("location")]
        if not https and server.redirect:
            assert paths == ["/"] and root_answers(block)[0][0] == "301"
        elif not https and method == "nohttp":
            assert paths == ["/"] and root_answers(block) == [("503",)]
        else:
            assert sorted(paths) == ["/", "/api/"], (https, paths)
            assert root_answers(block) == [("404",)], https
            (api,) = [loc for loc in block.find("location") if loc.args == ("/api/",)]
            assert api.find("proxy_pass")[0].args == ("http://companion_u1",)
    assert text.count("return 404;") == sum(
        1 for https in blocks if https or not (server.redirect or method == "nohttp")
    )


def test_server_with_a_root_location_gets_no_404() -> None:
    desired, files = render_fleet()
    text = files[MAIN_FILE]
    assert all(server.has_root for server in desired.servers)
    assert "return 404;" not in text
    assert root_answers(block_of(text, "a.example.com", True)) == [(f"http://{upstream_of(desired, 'a.example.com')}",)]
    # A second container at `/` beside the /api/ one takes the 404's place.
    desired = plan.build(
        [c("api", "10.0.0.2", VIRTUAL_HOST="a.com", VIRTUAL_PATH="/api/"), c("web", "10.0.0.3", VIRTUAL_HOST="a.com")],
        {},
        PLACEHOLDER,
    )
    assert "return 404;" not in render(desired, OPTIONS)[MAIN_FILE]


def test_root_404_is_rendered_byte_identically() -> None:
    containers = [
        c("api", "10.0.0.2", VIRTUAL_HOST="a.com,b.com", VIRTUAL_PATH="/api/", LETSENCRYPT_HOST="a.com"),
        c("static", "10.0.0.3", VIRTUAL_HOST="b.com", VIRTUAL_PATH="/static/"),
    ]
    first = render(plan.build(containers, {}, PLACEHOLDER), OPTIONS)
    again = render(plan.build(list(reversed(containers)), {}, PLACEHOLDER), OPTIONS)
    assert first == again
    # HTTP and HTTPS (placeholder) for both: b.com's owner is "api", whose LETSENCRYPT_HOST asks for TLS.
    assert first[MAIN_FILE].count("return 404;") == 4


def test_upstreams() -> None:
    desired, files = render_fleet()
    text = files[MAIN_FILE]
    upstreams = {d.args[0]: d for d in parse_conf(text) if d.name == "upstream"}
    assert list(upstreams) == [f"companion_u{n}" for n in range(1, len(upstreams) + 1)]
    assert [s.args for s in upstreams[upstream_of(desired, "a.example.com")].find("server")] == [
        ("10.0.0.2:80",),
        ("10.0.0.3:8080",),
    ]
    assert all(u.find("keepalive")[0].args == ("32",) for u in upstreams.values())
    # www.a.example.com is served by app alone: its own set, not a.example.com's
    assert [s.args for s in upstreams[upstream_of(desired, "www.a.example.com")].find("server")] == [("10.0.0.2:80",)]
    # one upstream per distinct backend set: s1 and s2 share the container "shared"
    assert upstream_of(desired, "s1.example.com") == upstream_of(desired, "s2.example.com")
    assert len(upstreams) == len({u.servers for u in desired.upstreams}) == len(fleet()) - 1  # not "rejected"
    assert "10.0.0.16" not in text  # the rejected container
    assert "upstream " not in files["companion-proxy.inc"] and text.count("keepalive 32;") == len(upstreams)


@pytest.mark.parametrize(
    ("hosts", "bucket", "max_size"),
    [
        (["a.com"], 64, 512),
        (["a" * 32 + ".com"], 128, 512),  # 36 + 32 > 64
        (["a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61], 512, 512),
        ([f"s{i}.com" for i in range(300)], 64, 1024),
        ([f"s{i}.com" for i in range(1000)], 64, 2048),
    ],
)
def test_server_names_hash_sizes(hosts: list[str], bucket: int, max_size: int) -> None:
    containers = [
        c(f"c{i}", f"10.{i // 60000}.{i // 250 % 240}.{i % 250 + 2}", VIRTUAL_HOST=h) for i, h in enumerate(hosts)
    ]
    files = render(plan.build(containers, {}, PLACEHOLDER), OPTIONS)
    top = {d.name: d.args for d in parse_conf(files[MAIN_FILE])}
    assert top["server_names_hash_bucket_size"] == (str(bucket),)
    assert top["server_names_hash_max_size"] == (str(max_size),)


def _sizes(hosts: list[str]) -> tuple[int, int]:
    containers = [c(f"c{i}", f"10.0.{i // 250}.{i % 250 + 2}", VIRTUAL_HOST=h) for i, h in enumerate(hosts)]
    top = {d.name: d.args for d in parse_conf(render(plan.build(containers, {}, PLACEHOLDER), OPTIONS)[MAIN_FILE])}
    return int(top["server_names_hash_bucket_size"][0]), int(top["server_names_hash_max_size"][0])


def test_hash_sizes_grow_monotonically() -> None:
    def name(length: int) -> str:  # labels of at most 63 characters
        text = ".".join("x" * 60 for _ in range(5))[: length - 4].strip(".")
        return text + ".com"

    assert len(name(253)) == 253
    buckets = [_sizes([name(length)])[0] for length in range(5, 254, 7)]
    assert buckets == sorted(buckets) and buckets[0] == 64 and buckets[-1] >= 253 + 32
    max_sizes = [_sizes([f"s{i}.com" for i in range(n)])[1] for n in (1, 100, 300, 700, 1500)]
    assert max_sizes == sorted(max_sizes) and max_sizes[0] == 512 and max_sizes[-1] >= 2 * 1500


def test_a_renewed_certificate_changes_the_rendered_file() -> None:

    _, before = render_fleet(certs=fleet_certs(real=replace(REAL, serial="1a2b")))
    _, after = render_fleet(certs=fleet_certs(real=replace(REAL, serial="3c4d")))
    assert before[MAIN_FILE] != after[MAIN_FILE]
    assert before[MAIN_FILE].replace("1a2b", "3c4d") == after[MAIN_FILE]
    assert "# certificate serial 3c4d: a renewal changes it" in after[MAIN_FILE]


def test_challenge_regex_ends_at_the_true_end() -> None:
    """PCRE's "$" also matches before a final newline; "\\z" only at the end (tok%0a must not match)."""

    files = render(plan.build([], {}, PLACEHOLDER), OPTIONS)
    # The snippet looks up only what the main file's map lets through; any other URI maps to "" (404).
    assert "try_files $companion_acme_token =404;" in files["companion-acme.inc"]
    # (read as text: the harness's parser drops the backslashes nginx keeps)
    (block,) = re.findall(r"(?ms)^map \$uri \$companion_acme_token \{\n(.*?)^\}", files[MAIN_FILE])
    (pattern,) = re.findall(r'^    "~([^"]+)" \$uri;$', block, re.M)
    assert block == f'    default "";\n    "~{pattern}" $uri;\n'
    assert pattern == r"^/\.well-known/acme-challenge/[A-Za-z0-9_-]+\z"
    assert "$" not in pattern
    python_pattern = re.compile(pattern.replace(r"\z", r"\Z"))  # Python spells PCRE's \z as \Z
    assert python_pattern.match("/.well-known/acme-challenge/Tok_en-1")
    for path in ("tok\n", "tok\r\n", "tok.txt", "../x", ".htpasswd", ""):
        assert not python_pattern.match("/.well-known/acme-challenge/" + path), path


def test_without_default_host_the_catch_all_servers_stay_default() -> None:
    desired = plan.build([c("web", "10.0.0.2", VIRTUAL_HOST="a.com")], {"a.com": REAL}, PLACEHOLDER)
    assert default_servers(render(desired, OPTIONS)[MAIN_FILE]) == {False: ["_"], True: ["_"]}
    missing = plan.build([c("web", "10.0.0.2", VIRTUAL_HOST="a.com")], {}, PLACEHOLDER, default_host="z.com")
    assert default_servers(render(missing, OPTIONS)[MAIN_FILE]) == {False: ["_"], True: ["_"]}


def test_one_connect_timeout_per_location_the_containers_or_the_short_default() -> None:
    """The short default (a vanished Swarm node must not hold a request 60 s) and PROXY_CONNECT_TIMEOUT
    never meet in one location: nginx refuses a duplicate directive."""
    containers = [
        c("own", "10.0.0.2", VIRTUAL_HOST="own.example.com", PROXY_CONNECT_TIMEOUT="20s"),
        c("plain", "10.0.0.3", VIRTUAL_HOST="plain.example.com"),
    ]
    _, files = render_fleet(containers=containers)
    for host, expected in (("own.example.com", ("20s",)), ("plain.example.com", ("3s",))):
        (location,) = block_of(files[MAIN_FILE], host, False).find("location")
        assert [d.args for d in location.find("proxy_connect_timeout")] == [expected], host
    assert "proxy_connect_timeout" not in files[SNIPPETS["proxy"][0]]


def test_hosts_whose_blocks_read_the_same_share_one_block_and_no_others() -> None:
    """One container's hosts (and every redirecting host) share a server block under one server_name;
    a host with other locations, the default host and a LOG_FORMAT naming $server_name keep their own."""
    containers = [
        c("multi", "10.0.0.2", VIRTUAL_HOST="a.com,b.com,d.com", LETSENCRYPT_HOST="a.com,b.com,d.com"),
        c("other", "10.0.0.3", VIRTUAL_HOST="c.com"),
    ]
    cert = replace(REAL, domains=("a.com", "b.com", "d.com"))
    certs = {"a.com": cert, "b.com": cert, "d.com": cert}

    def blocks(desired: plan.Desired, options: RenderOptions = OPTIONS) -> dict[tuple[str, bool], int]:
        """(host, https) -> which block (numbered in order) serves it."""
        found = server_blocks(render(desired, options)[MAIN_FILE])
        ids = {id(b): n for n, b in enumerate(dict.fromkeys(b for _, _, b in found))}
        return {(name, https): ids[id(b)] for name, https, b in found}

    shared = blocks(plan.build(containers, certs, PLACEHOLDER))
    assert shared[("a.com", True)] == shared[("b.com", True)] == shared[("d.com", True)]
    assert shared[("a.com", False)] == shared[("b.com", False)] == shared[("d.com", False)]  # all redirect
    assert shared[("c.com", False)] != shared[("a.com", False)]
    defaulted = blocks(plan.build(containers, certs, PLACEHOLDER, default_host="b.com"))
    assert defaulted[("b.com", True)] != defaulted[("a.com", True)] == defaulted[("d.com", True)]
    logged = replace(OPTIONS, access_log="/var/log/x.log", access_log_format="$server_name $status")
    apart = blocks(plan.build(containers, certs, PLACEHOLDER), logged)
    assert len(set(apart.values())) == len(apart)


def test_a_host_with_a_file_of_its_own_keeps_its_blocks_and_its_headers_per_location() -> None:
    """A client CA (or any file) of one host of a container: that host's blocks are its own; a vhost.d file
    (which may set proxy_set_header, stopping nginx's inheritance) also keeps the headers in each location."""
    from companion.nginx.hostfiles import CLIENT_CA, VHOST, Chosen, UserFile

    cert = replace(REAL, domains=("a.com", "b.com", "d.com"))
    containers = [c("multi", "10.0.0.2", VIRTUAL_HOST="a.com,b.com,d.com", LETSENCRYPT_HOST="a.com,b.com,d.com")]
    desired = plan.build(containers, dict.fromkeys(("a.com", "b.com", "d.com"), cert), PLACEHOLDER)
    user = Chosen(
        {
            (CLIENT_CA, "b.com"): UserFile(CLIENT_CA, "b.com", "/ca/b.com", "CA"),
            (VHOST, "d.com"): UserFile(VHOST, "d.com", "/vhost.d/d.com", "proxy_set_header X-Own d;\n"),
        }
    )
    text = render(desired, OPTIONS, user)[MAIN_FILE]
    https = {name: b for name, ssl, b in server_blocks(text) if ssl}
    assert https["b.com"] is not https["a.com"] and https["d.com"] is not https["a.com"]
    assert https["b.com"].find("ssl_verify_client") and not https["a.com"].find("ssl_verify_client")
    proxy = "/etc/nginx/conf.d/companion-proxy.inc"
    for host, server_level, location_level in (("a.com", [(proxy,)], []), ("d.com", [], [(proxy,)])):
        block = https[host]
        assert [d.args for d in block.find("include") if d.args == (proxy,)] == server_level, host
        (location,) = block.find("location")
        assert [d.args for d in location.find("include") if d.args == (proxy,)] == location_level, host
