"""render proven by the real `nginx -t`: every fleet, HTTPS method, name length and version syntax the renderer
produces is accepted, and broken config is refused. The text-only checks are tests/unit/test_render.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from companion.core import plan
from companion.core.values import parse_default_root
from companion.nginx.render import MAIN_FILE, render
from tests.harness.fleet import (
    NEW,
    OLD,
    block_of,
    c,
    default_servers,
    fleet_certs,
    render_fleet,
    root_answers,
    server_blocks,
)
from tests.harness.nginx import NginxLayout, make_layout, parse_conf

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
