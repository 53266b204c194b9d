"""The proxy settings nginx-proxy users bring along, parsed and rendered (pure): TRUST_DOWNSTREAM_PROXY,
SSL_POLICY, ENABLE_IPV6, EXTERNAL_HTTP(S)_PORT, NON_GET_REDIRECT, and the Host / X-Forwarded-* headers every
proxied request carries. The real `nginx -t` is tests/integration/test_proxy_options.py.
"""

from __future__ import annotations

import argparse
import itertools
from dataclasses import replace

import pytest

from companion.core import plan
from companion.nginx.render import MAIN_FILE, RenderOptions, render
from companion.settings import config
from companion.settings.config import Settings, SettingsError, SslPolicy
from tests.harness.fleet import (
    OPTIONS,
    PLACEHOLDER,
    block_of,
    fleet,
    fleet_certs,
    render_fleet,
    server_blocks,
)
from tests.harness.nginx import Directive, parse_conf


def load(env: dict[str, str], argv: list[str] | None = None) -> Settings:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return config.load(parser.parse_args(argv or []), env)


def headers(files: dict[str, str]) -> dict[str, str]:
    """proxy_set_header name -> value in the proxy snippet."""
    return {d.args[0]: d.args[1] for d in parse_conf(files["companion-proxy.inc"]) if d.name == "proxy_set_header"}


def maps(files: dict[str, str]) -> dict[str, tuple[str, dict[str, str]]]:
    """Variable defined by each top-level map -> (source variable, {key: value})."""
    out = {}
    for d in parse_conf(files[MAIN_FILE]):
        if d.name == "map":
            out[d.args[1]] = (d.args[0], {entry.name: entry.args[0] for entry in d.block or ()})
    return out


def tls(files: dict[str, str]) -> dict[str, tuple[str, ...]]:
    return {d.name: d.args for d in parse_conf(files["companion-tls.inc"])}


# -- settings ---------------------------------------------------------------------------------------


def test_defaults_keep_todays_behaviour() -> None:
    s = load({})
    assert s.trust_downstream_proxy is False
    assert s.ssl_policy is SslPolicy.INTERMEDIATE
    assert s.enable_ipv6 is False
    assert (s.external_http_port, s.external_https_port, s.non_get_redirect) == (0, 0, 301)


@pytest.mark.parametrize(
    ("env", "field", "expected"),
    [
        ({"TRUST_DOWNSTREAM_PROXY": "true"}, "trust_downstream_proxy", True),
        ({"ENABLE_IPV6": "on"}, "enable_ipv6", True),
        ({"SSL_POLICY": "Mozilla-Modern"}, "ssl_policy", SslPolicy.MODERN),
        ({"SSL_POLICY": " mozilla-old "}, "ssl_policy", SslPolicy.OLD),
        ({"SSL_POLICY": "MOZILLA-INTERMEDIATE"}, "ssl_policy", SslPolicy.INTERMEDIATE),
        ({"EXTERNAL_HTTPS_PORT": "8443"}, "external_https_port", 8443),
        ({"EXTERNAL_HTTP_PORT": "8080"}, "external_http_port", 8080),
        ({"NON_GET_REDIRECT": "308"}, "non_get_redirect", 308),
        ({"NON_GET_REDIRECT": "302"}, "non_get_redirect", 302),
    ],
)
def test_settings_are_read_typed(env: dict[str, str], field: str, expected: object) -> None:
    assert getattr(load(env), field) == expected


def test_flags_win_over_environment() -> None:
    s = load(
        {"SSL_POLICY": "Mozilla-Old", "NON_GET_REDIRECT": "302"},
        ["--ssl-policy", "Mozilla-Modern", "--non-get-redirect", "307"],
    )
    assert (s.ssl_policy, s.non_get_redirect) == (SslPolicy.MODERN, 307)


@pytest.mark.parametrize(
    ("env", "words"),
    [
        (
            {"SSL_POLICY": "AWS-TLS-1-2-2017-01"},
            ["'AWS-TLS-1-2-2017-01'", "AWS policy", "Mozilla-Modern, Mozilla-Intermediate, Mozilla-Old"],
        ),
        ({"SSL_POLICY": "aws-fs-1-2-2019-08"}, ["AWS policy", "Mozilla-Old"]),
        ({"SSL_POLICY": "modern"}, ["'modern'", "must be one of Mozilla-Modern, Mozilla-Intermediate, Mozilla-Old"]),
        ({"SSL_POLICY": "Mozilla-Modern;\n"}, ["'Mozilla-Modern;\\\\n'"]),
        ({"TRUST_DOWNSTREAM_PROXY": "perhaps"}, ["trust_downstream_proxy", "'perhaps'"]),
        ({"ENABLE_IPV6": "v6"}, ["enable_ipv6", "'v6'"]),
        ({"NON_GET_REDIRECT": "303"}, ["303", "301, 302, 307 or 308"]),
        ({"NON_GET_REDIRECT": "30x"}, ["non_get_redirect", "'30x'"]),
        ({"EXTERNAL_HTTPS_PORT": "70000"}, ["external port 70000", "1-65535"]),
        ({"EXTERNAL_HTTP_PORT": "-1"}, ["external_http_port", "'-1'"]),
    ],
)
def test_bad_values_are_refused_with_a_clear_message(env: dict[str, str], words: list[str]) -> None:
    with pytest.raises(SettingsError) as caught:
        load(env)
    for word in words:
        assert word in str(caught.value)


def test_a_settings_object_built_in_code_is_validated_too() -> None:
    with pytest.raises(SettingsError, match="SSL policy 'Mozilla-Modern' must be one of"):
        config._validate(Settings(ssl_policy="Mozilla-Modern"))  # type: ignore[arg-type]


# -- rendered text ----------------------------------------------------------------------------------


def test_defaults_send_the_clients_host_with_its_port_and_our_own_forwarded_headers() -> None:
    _, files = render_fleet()
    assert headers(files) == {
        "Host": "$companion_host",
        "Upgrade": "$http_upgrade",
        "Connection": "$companion_connection",
        "X-Real-IP": "$remote_addr",
        "X-Forwarded-For": "$proxy_add_x_forwarded_for",
        "X-Forwarded-Proto": "$scheme",
        "X-Forwarded-Host": "$companion_host",
        "X-Forwarded-Port": "$server_port",
        "X-Forwarded-Ssl": "$companion_ssl",
        "Proxy": "",
    }
    found = maps(files)
    assert found["$companion_host"] == ("$http_host", {"default": "$http_host", "": "$host"})
    assert found["$companion_ssl"] == ("$scheme", {"default": "off", "https": "on"})
    # keepalive: a plain request sends no Connection header (an empty value drops it), an upgrade says so;
    # VIRTUAL_KEEPALIVE=off keeps the old `close`
    assert found["$companion_connection"] == ("$http_upgrade", {"default": "upgrade", "": ""})
    assert found["$companion_connection_close"] == ("$http_upgrade", {"default": "upgrade", "": "close"})
    close = {
        d.args[0]: d.args[1] for d in parse_conf(files["companion-proxy-close.inc"]) if d.name == "proxy_set_header"
    }
    assert close == {**headers(files), "Connection": "$companion_connection_close"}
    # (and the ACME token map, which has nothing to do with headers)
    assert set(found) == {
        "$companion_connection",
        "$companion_connection_close",
        "$companion_host",
        "$companion_ssl",
        "$companion_acme_token",
    }
    assert "$http_x_forwarded" not in files[MAIN_FILE] + files["companion-proxy.inc"]


def test_trusting_a_downstream_proxy_passes_its_headers_on_and_fills_in_ours() -> None:
    _, files = render_fleet(replace(OPTIONS, trust_downstream_proxy=True))
    sent = headers(files)
    assert sent["X-Forwarded-For"] == "$proxy_add_x_forwarded_for"
    found = maps(files)
    for header, ours in (
        ("proto", "$scheme"),
        ("host", "$companion_host"),
        ("port", "$server_port"),
        ("ssl", "$companion_ssl"),
    ):
        variable = f"$companion_forwarded_{header}"
        assert sent[f"X-Forwarded-{header.capitalize()}"] == variable
        assert found[variable] == (f"$http_x_forwarded_{header}", {"default": f"$http_x_forwarded_{header}", "": ours})
    # X-Forwarded-Ssl follows the proto the downstream proxy saw when it sent no Ssl header itself.
    assert found["$companion_ssl"][0] == "$companion_forwarded_proto"


@pytest.mark.parametrize(
    ("listen", "external", "suffix", "port_map"),
    [
        ((80, 443), (0, 0), "", None),
        ((80, 443), (0, 8443), ":8443", ("80", "8443")),
        ((8080, 8443), (0, 443), "", ("8080", "443")),
        ((8080, 8443), (0, 0), ":8443", None),
        ((80, 443), (8080, 0), "", ("8080", "443")),
        ((80, 443), (80, 443), "", None),
    ],
)
def test_external_ports_go_into_redirects_and_x_forwarded_port(
    listen: tuple[int, int], external: tuple[int, int], suffix: str, port_map: tuple[str, str] | None
) -> None:
    options = replace(
        OPTIONS,
        http_port=listen[0],
        https_port=listen[1],
        external_http_port=external[0],
        external_https_port=external[1],
    )
    _, files = render_fleet(options)
    text = files[MAIN_FILE]
    http = block_of(text, "a.example.com", https=False)
    assert http.find("listen")[0].args == (str(listen[0]),)
    assert block_of(text, "a.example.com", https=True).find("listen")[0].args[0] == str(listen[1])
    (location,) = http.find("location")
    assert location.find("return")[0].args == ("301", f"https://$host{suffix}$request_uri")
    if port_map is None:
        assert headers(files)["X-Forwarded-Port"] == "$server_port"
        assert "$companion_port" not in text
    else:
        assert headers(files)["X-Forwarded-Port"] == "$companion_port"
        assert maps(files)["$companion_port"] == ("$scheme", {"default": port_map[0], "https": port_map[1]})


@pytest.mark.parametrize("code", [302, 307, 308])
def test_non_get_redirect_code_for_other_methods_only(code: int) -> None:
    desired, files = render_fleet(replace(OPTIONS, non_get_redirect=code))
    text = files[MAIN_FILE]
    assert maps(files)["$companion_non_get"] == ("$request_method", {"default": "1", "GET": "", "HEAD": ""})
    redirects = [s for s in desired.servers if s.redirect]
    assert redirects
    for server in redirects:
        (location,) = block_of(text, server.host, https=False).find("location")
        (condition,) = location.find("if")
        assert condition.args == ("($companion_non_get)",)
        assert condition.find("return")[0].args == (str(code), "https://$host$request_uri")
        assert location.find("return")[0].args == ("301", "https://$host$request_uri")
    # the redirecting hosts share one block (it reads the same for all of them but for the server_name)
    assert text.count("if ($companion_non_get)") == 1 < len(redirects)


def test_default_301_renders_no_method_map_at_all() -> None:
    _, files = render_fleet(replace(OPTIONS, non_get_redirect=301))
    assert "$companion_non_get" not in files[MAIN_FILE] and " if " not in files[MAIN_FILE]


def listens(block: Directive) -> list[tuple[str, ...]]:
    return [d.args for d in block.find("listen")]


@pytest.mark.parametrize("version", [(1, 22, 1), (1, 27, 0)])
def test_ipv6_listens_beside_every_ipv4_listen(version: tuple[int, ...]) -> None:
    _, v4 = render_fleet(replace(OPTIONS, nginx_version=version))
    _, v6 = render_fleet(replace(OPTIONS, nginx_version=version, enable_ipv6=True))
    blocks4 = server_blocks(v4[MAIN_FILE])
    blocks6 = server_blocks(v6[MAIN_FILE])
    assert [(n, s) for n, s, _ in blocks4] == [(n, s) for n, s, _ in blocks6]
    for (name, _, b4), (_, _, b6) in zip(blocks4, blocks6, strict=True):
        (plain,) = listens(b4)
        expected = [plain, (f"[::]:{plain[0]}", *plain[1:])]
        if name == "_":
            expected[1] = (*expected[1], "ipv6only=on")
        assert listens(b6) == expected, name
    assert "[::]" not in v4[MAIN_FILE]


def test_ssl_policies_and_the_default_server_carries_them() -> None:
    seen = {}
    for policy in SslPolicy:
        _, files = render_fleet(replace(OPTIONS, ssl_policy=policy))
        seen[policy] = tls(files)
        (default,) = [b for name, https, b in server_blocks(files[MAIN_FILE]) if name == "_" and https]
        assert [d.args for d in default.find("include")] == [("/etc/nginx/conf.d/companion-tls.inc",)]
    assert seen[SslPolicy.MODERN]["ssl_protocols"] == ("TLSv1.3",) and "ssl_ciphers" not in seen[SslPolicy.MODERN]
    assert seen[SslPolicy.INTERMEDIATE]["ssl_protocols"] == ("TLSv1.2", "TLSv1.3")
    assert seen[SslPolicy.INTERMEDIATE]["ssl_prefer_server_ciphers"] == ("off",)
    assert seen[SslPolicy.OLD]["ssl_protocols"] == ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3")
    assert seen[SslPolicy.OLD]["ssl_ciphers"][0].endswith(":DES-CBC3-SHA:@SECLEVEL=0")
    assert seen[SslPolicy.OLD]["ssl_prefer_server_ciphers"] == ("on",)


def test_every_option_combination_renders_byte_identically_for_shuffled_input() -> None:
    for trust, ipv6, code, policy in itertools.product((False, True), (False, True), (301, 308), SslPolicy):
        options = replace(
            OPTIONS,
            trust_downstream_proxy=trust,
            enable_ipv6=ipv6,
            non_get_redirect=code,
            ssl_policy=policy,
            external_https_port=8443,
        )
        containers = fleet()
        first = render(plan.build(containers, fleet_certs(), PLACEHOLDER), options)
        again = render(plan.build(list(reversed(containers)), fleet_certs(), PLACEHOLDER), options)
        assert first == again


def test_render_options_default_to_the_settings_defaults() -> None:
    """The controller hands settings over one by one; both default to the same proxy."""
    defaults, options = Settings(), RenderOptions(conf_dir="/c", webroot="/w")
    for name in (
        "trust_downstream_proxy",
        "ssl_policy",
        "enable_ipv6",
        "external_http_port",
        "external_https_port",
        "non_get_redirect",
    ):
        assert getattr(options, name) == getattr(defaults, name), name
