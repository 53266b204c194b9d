"""render: deterministic text, version-dependent syntax, and proof by the real `nginx -t`."""

from __future__ import annotations

import random
import re
from dataclasses import replace
from pathlib import Path

import pytest

from companion import plan
from companion.model import parse_default_root
from companion.render import DHPARAM_FILE, MAIN_FILE, SNIPPETS, RenderOptions, render
from tests.harness.fleet import (
    NEW,
    OLD,
    OPTIONS,
    PLACEHOLDER,
    REAL,
    block_of,
    c,
    fleet,
    fleet_certs,
    render_fleet,
    server_blocks,
    upstream_of,
)
from tests.harness.nginxcheck import Directive, NginxLayout, make_layout, parse_conf

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
    assert text.count("return 301 ") == sum(
        1 for s in plan.build(fleet(), fleet_certs(), PLACEHOLDER).servers if s.redirect
    )


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


def root_answers(block: Directive) -> list[tuple[str, ...]]:
    """What `location /` does in a server block: its return or proxy_pass arguments."""
    (root,) = [loc for loc in block.find("location") if loc.args == ("/",)]
    return [d.args for d in root.find("return")] or [d.args for d in root.find("proxy_pass")]


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


# -- the real nginx -t --------------------------------------------------------------------------------


@pytest.fixture
def layout(tmp_path: Path) -> NginxLayout:
    return make_layout(tmp_path / "nginx")


def _assert_valid(layout: NginxLayout, files: dict[str, str]) -> None:
    ok, output = layout.check(files)
    assert ok, output
    assert "[emerg]" not in output


def test_nginx_accepts_empty_state(layout: NginxLayout) -> None:
    _assert_valid(layout, render(plan.build([], {}, layout.cert()), layout.options()))


@pytest.mark.parametrize(("http_port", "https_port"), [(80, 443), (8080, 8443)])
def test_nginx_accepts_full_fleet(layout: NginxLayout, http_port: int, https_port: int) -> None:
    real, ocsp = layout.cert(), layout.cert(ocsp=True)
    desired, files = render_fleet(
        layout.options(http_port=http_port, https_port=https_port),
        certs=fleet_certs(real, ocsp),
        placeholder=real,
    )
    assert len(desired.servers) > 70
    _assert_valid(layout, files)


@pytest.mark.parametrize("method", ["redirect", "noredirect", "nohttp", "nohttps"])
@pytest.mark.parametrize("cert", ["none", "real", "pending"])
def test_nginx_accepts_every_https_method(layout: NginxLayout, method: str, cert: str) -> None:
    labels = {"VIRTUAL_HOST": "a.com,*.b.com", "HTTPS_METHOD": method, "VIRTUAL_PATH": "/p/", "VIRTUAL_DEST": "/"}
    if cert == "pending":
        labels["LETSENCRYPT_HOST"] = "a.com"
    real = {name: replace(layout.cert(), domains=(name,)) for name in ("a.com", "*.b.com")}
    certs = real if cert == "real" else {}
    desired = plan.build([c("web", "10.0.0.2", **labels)], certs, layout.cert())
    _assert_valid(layout, render(desired, layout.options()))


def test_nginx_accepts_longest_and_most_names(layout: NginxLayout) -> None:
    longest = "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61
    hosts = [longest, "*." + longest[2:]] + [f"{i}-{'x' * 50}.example.com" for i in range(700)]
    containers = [c(f"c{i:04}", f"10.2.{i // 250}.{i % 250 + 2}", VIRTUAL_HOST=h) for i, h in enumerate(hosts)]
    desired = plan.build(containers, {longest: replace(layout.cert(), domains=(longest,))}, layout.cert())
    assert desired.problems == ()
    _assert_valid(layout, render(desired, layout.options()))


def test_nginx_rejects_broken_config(layout: NginxLayout) -> None:
    """The checker itself is not a rubber stamp."""
    files = render(plan.build([], {}, layout.cert()), layout.options())
    files[MAIN_FILE] += "\nserver { listen 80; server_name x; bogus_directive on; }\n"
    ok, output = layout.check(files)
    assert not ok and "[emerg]" in output and "bogus_directive" in output


def test_new_version_syntax_text_only(layout: NginxLayout) -> None:
    """The local nginx is 1.22, so the 1.25+ variant can only be checked as text (and parsed)."""
    kw = {"certs": fleet_certs(layout.cert(), layout.cert()), "placeholder": layout.cert()}
    _, old = render_fleet(layout.options(nginx_version=OLD), **kw)
    _, new = render_fleet(layout.options(nginx_version=NEW), **kw)
    _assert_valid(layout, old)
    assert old[MAIN_FILE].replace(" http2;", ";").replace("\n    http2 on;", "") == new[MAIN_FILE].replace(
        "\n    http2 on;", ""
    )
    parse_conf(new[MAIN_FILE])
    assert new[MAIN_FILE].count("http2 on;") == old[MAIN_FILE].count("ssl http2;") > 0


def test_a_renewed_certificate_changes_the_rendered_file() -> None:
    from dataclasses import replace

    _, before = render_fleet(certs=fleet_certs(real=replace(REAL, serial="1a2b")))
    _, after = render_fleet(certs=fleet_certs(real=replace(REAL, serial="3c4d")))
    assert before[MAIN_FILE] != after[MAIN_FILE]
    assert before[MAIN_FILE].replace("1a2b", "3c4d") == after[MAIN_FILE]
    assert "# certificate serial 3c4d: a renewal changes it" in after[MAIN_FILE]


def test_challenge_regex_ends_at_the_true_end() -> None:
    """PCRE's "$" also matches before a final newline; "\\z" only at the end (tok%0a must not match)."""

    snippet = render(plan.build([], {}, PLACEHOLDER), OPTIONS)["companion-acme.inc"]
    (pattern,) = re.findall(r'location ~ "([^"]+)"', snippet)
    assert pattern == r"^/\.well-known/acme-challenge/[A-Za-z0-9_-]+\z"
    assert "$" not in pattern
    python_pattern = re.compile(pattern.replace(r"\z", r"\Z"))  # Python spells PCRE's \z as \Z
    assert python_pattern.match("/.well-known/acme-challenge/Tok_en-1")
    for path in ("tok\n", "tok\r\n", "tok.txt", "../x", ".htpasswd", ""):
        assert not python_pattern.match("/.well-known/acme-challenge/" + path), path


# -- DEFAULT_HOST, DEFAULT_ROOT, ENABLE_HTTP_ON_MISSING_CERT, unreachable backends ----------------------


def default_servers(text: str) -> dict[bool, list[str]]:
    """The server_name of every server whose listen says default_server, by HTTPS or not."""
    found: dict[bool, list[str]] = {False: [], True: []}
    for name, https, block in server_blocks(text):
        if any("default_server" in listen.args for listen in block.find("listen")):
            found[https].append(name)
    return found


@pytest.mark.parametrize("method", ["redirect", "noredirect", "nohttp", "nohttps"])
@pytest.mark.parametrize("cert", ["none", "real", "pending"])
def test_default_host_is_the_default_server_where_it_serves(layout: NginxLayout, method: str, cert: str) -> None:
    labels = {"VIRTUAL_HOST": "a.com", "HTTPS_METHOD": method}
    if cert == "pending":
        labels["LETSENCRYPT_HOST"] = "a.com"
    certs = {"a.com": replace(layout.cert(), domains=("a.com",))} if cert == "real" else {}
    containers = [c("web", "10.0.0.2", **labels), c("other", "10.0.0.3", VIRTUAL_HOST="b.com")]
    desired = plan.build(containers, certs, layout.cert(), default_host="a.com")
    (server,) = [s for s in desired.servers if s.host == "a.com"]
    files = render(desired, layout.options())
    found = default_servers(files[MAIN_FILE])
    assert found[False] == (["a.com"] if server.serves_http else ["_"])
    real = cert == "real" and method != "nohttps"
    assert found[True] == (["a.com"] if real else ["_"])
    _assert_valid(layout, files)


def test_without_default_host_the_catch_all_servers_stay_default() -> None:
    desired = plan.build([c("web", "10.0.0.2", VIRTUAL_HOST="a.com")], {"a.com": REAL}, PLACEHOLDER)
    assert default_servers(render(desired, OPTIONS)[MAIN_FILE]) == {False: ["_"], True: ["_"]}
    missing = plan.build([c("web", "10.0.0.2", VIRTUAL_HOST="a.com")], {}, PLACEHOLDER, default_host="z.com")
    assert default_servers(render(missing, OPTIONS)[MAIN_FILE]) == {False: ["_"], True: ["_"]}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("404", [("404",)]),
        ("418", [("418",)]),
        ("301 https://example.org/docs/", [("301", "https://example.org/docs/")]),
        ("302 $scheme://$host/app1$request_uri", [("302", "$scheme://$host/app1$request_uri")]),
        ("308 /app/?from=root&x=%20", [("308", "/app/?from=root&x=%20")]),
        ("none", None),
    ],
)
def test_default_root_is_what_slash_answers_without_a_root_container(
    layout: NginxLayout, value: str, expected: list[tuple[str, ...]] | None
) -> None:
    desired = plan.build(
        [c("api", "10.0.0.2", VIRTUAL_HOST="a.com", VIRTUAL_PATH="/api/", LETSENCRYPT_HOST="a.com")],
        {},
        layout.cert(),
    )
    files = render(desired, layout.options(default_root=parse_default_root(value)))
    for https in (False, True):
        block = block_of(files[MAIN_FILE], "a.com", https)
        paths = sorted(loc.args[0] for loc in block.find("location"))
        if expected is None:
            assert paths == ["/api/"], https
        else:
            assert paths == ["/", "/api/"] and root_answers(block) == expected, https
    _assert_valid(layout, files)
    # A container at `/` is never overridden by DEFAULT_ROOT.
    served = plan.build([c("web", "10.0.0.3", VIRTUAL_HOST="a.com")], {}, layout.cert())
    text = render(served, layout.options(default_root=parse_default_root(value)))[MAIN_FILE]
    assert root_answers(block_of(text, "a.com", False)) == [("http://companion_u1",)]


def test_a_path_whose_only_container_is_unreachable_answers_502(layout: NginxLayout) -> None:
    containers = [
        c("a-front", "", VIRTUAL_HOST="a.com", LETSENCRYPT_HOST="a.com"),
        c("api", "10.0.0.3", VIRTUAL_HOST="a.com", VIRTUAL_PATH="/api/"),
        c("gone", "", VIRTUAL_HOST="b.com"),
        c("web", "10.0.0.4", VIRTUAL_HOST="c.com"),
    ]
    desired = plan.build(containers, {}, layout.cert())
    files = render(desired, layout.options())
    text = files[MAIN_FILE]
    for host, https in (("a.com", False), ("a.com", True), ("b.com", False)):
        assert root_answers(block_of(text, host, https)) == [("502",)], (host, https)
    (api,) = [loc for loc in block_of(text, "a.com", False).find("location") if loc.args == ("/api/",)]
    assert api.find("proxy_pass")[0].args == ("http://companion_u1",)
    upstreams = {d.args[0]: d.find("server")[0].args for d in parse_conf(text) if d.name == "upstream"}
    assert upstreams == {"companion_u1": ("10.0.0.3:80",), "companion_u2": ("10.0.0.4:80",)}
    assert text.count("return 502;") == 3
    _assert_valid(layout, files)
    again = plan.build(list(reversed(containers)), {}, layout.cert())
    assert render(again, layout.options()) == files


@pytest.mark.parametrize("method", ["redirect", "nohttp"])
def test_http_held_at_503_until_a_real_certificate_keeps_the_challenge(layout: NginxLayout, method: str) -> None:
    labels = {"VIRTUAL_HOST": "a.com", "LETSENCRYPT_HOST": "a.com", "HTTPS_METHOD": method}
    pending = plan.build([c("web", "10.0.0.2", **labels)], {}, layout.cert(), http_on_missing_cert=False)
    files = render(pending, layout.options())
    block = block_of(files[MAIN_FILE], "a.com", False)
    assert root_answers(block) == [("503",)] and [loc.args for loc in block.find("location")] == [("/",)]
    assert block.find("include")[0].args == (str(layout.conf_dir / "companion-acme.inc"),)
    _assert_valid(layout, files)
    issued = plan.build(
        [c("web", "10.0.0.2", **labels)],
        {"a.com": replace(layout.cert(), domains=("a.com",))},
        layout.cert(),
        http_on_missing_cert=False,
    )
    text = render(issued, layout.options())[MAIN_FILE]
    if method == "redirect":
        assert root_answers(block_of(text, "a.com", False))[0][0] == "301"
    else:
        assert [https for name, https, _ in server_blocks(text) if name == "a.com"] == [True]


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
