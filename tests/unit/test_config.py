"""Settings: flags over environment over defaults; nginx version parsing (of given text); the loop's
Debouncer. Pure: the real `nginx -v` is tests/integration/test_config.py.
"""

from __future__ import annotations

import argparse

import pytest

from companion.core.options import LETSENCRYPT_PRODUCTION, LETSENCRYPT_STAGING, OPTIONS
from companion.core.values import RootAnswer
from companion.loop.controller import BURST_MAX_CAP, BURST_QUIET, FIRST_MAX, FIRST_QUIET, IDLE_GAP, Debouncer
from companion.settings import config
from companion.settings.config import Settings, SettingsError


def load(argv: list[str] | None = None, env: dict[str, str] | None = None) -> Settings:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    return config.load(parser.parse_args(argv or []), env or {})


def test_defaults() -> None:
    assert load() == Settings()
    assert Settings().acme_server == LETSENCRYPT_PRODUCTION


@pytest.mark.parametrize(
    ("env", "field", "expected"),
    [
        ({"HTTP_PORT": "8080"}, "http_port", 8080),
        ({"HTTPS_PORT": "8443"}, "https_port", 8443),
        ({"CONF_DIR": "/srv/conf.d"}, "conf_dir", "/srv/conf.d"),
        ({"DEFAULT_EMAIL": "ops@example.com"}, "default_email", "ops@example.com"),
        ({"ACME_CA_URI": "https://ca.test/dir"}, "acme_server", "https://ca.test/dir"),
        ({"NGINX_PROXY_CONTAINER": "proxy"}, "nginx_container", "proxy"),
        ({"KEY_TYPE": "rsa", "RSA_KEY_SIZE": "4096"}, "rsa_key_size", 4096),
        ({"RENEW_BEFORE_DAYS": "30.5"}, "renew_before_days", 30.5),
        ({"ACME_SELF_CHECK": "no"}, "self_check", False),
        ({"ACME_SELF_CHECK": "TRUE"}, "self_check", True),
        ({"ACME_SELF_CHECK": ""}, "self_check", False),
        ({"ALLOWED_DOMAINS": "*.Example.com, b.org,"}, "allowed_domains", ("*.example.com", "b.org")),
    ],
)
def test_environment_over_defaults(env: dict[str, str], field: str, expected: object) -> None:
    assert getattr(load(env=env), field) == expected


@pytest.mark.parametrize(
    ("argv", "env", "field", "expected"),
    [
        (["--http-port", "9090"], {"HTTP_PORT": "8080"}, "http_port", 9090),
        (["--conf-dir", "/flag"], {"CONF_DIR": "/env"}, "conf_dir", "/flag"),
        (["--self-check", "on"], {"ACME_SELF_CHECK": "off"}, "self_check", True),
        (["--acme-server", "https://flag/dir"], {"ACME_CA_URI": "https://env/dir"}, "acme_server", "https://flag/dir"),
        (["--allowed-domains", "a.com"], {"ALLOWED_DOMAINS": "b.com"}, "allowed_domains", ("a.com",)),
    ],
)
def test_flags_over_environment(argv: list[str], env: dict[str, str], field: str, expected: object) -> None:
    assert getattr(load(argv, env), field) == expected


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {"LETSENCRYPT_TEST": "true"}, LETSENCRYPT_STAGING),
        ([], {"LETSENCRYPT_TEST": "1"}, LETSENCRYPT_STAGING),
        ([], {"LETSENCRYPT_TEST": "false"}, LETSENCRYPT_PRODUCTION),
        ([], {}, LETSENCRYPT_PRODUCTION),
        ([], {"LETSENCRYPT_TEST": "true", "ACME_CA_URI": "https://pebble:14000/dir"}, "https://pebble:14000/dir"),
        (["--acme-server", "https://x/dir"], {"LETSENCRYPT_TEST": "true"}, "https://x/dir"),
    ],
)
def test_letsencrypt_test_selects_staging(argv: list[str], env: dict[str, str], expected: str) -> None:
    assert load(argv, env).acme_server == expected


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"HTTP_PORT": "http"}, ["http_port", "'http'"]),
        ({"HTTP_PORT": "0"}, ["port 0", "1-65535"]),
        ({"HTTPS_PORT": "70000"}, ["port 70000"]),
        ({"ACME_SELF_CHECK": "maybe"}, ["self_check", "'maybe'"]),
        ({"RENEW_BEFORE_DAYS": "soon"}, ["renew_before_days", "'soon'"]),
        ({"RENEW_BEFORE_DAYS": "-1"}, ["negative"]),
        ({"KEY_TYPE": "dsa"}, ["'dsa'", "ecdsa or rsa"]),
        ({"RSA_KEY_SIZE": "1024"}, ["1024", "2048, 3072 or 4096"]),
        ({"CONF_DIR": "relative/conf.d"}, ["relative/conf.d", "absolute"]),
        ({"WEBROOT": "/ok", "ACME_WEBROOT": "/var/www/a b"}, ["'/var/www/a b'"]),
        ({"CERTS_DIR": "/etc/le;"}, ["'/etc/le;'"]),
        ({"CONF_DIR": "/etc/nginx/conf.d\n"}, ["must be absolute and free of spaces"]),
        ({"DEFAULT_EMAIL": "-x@example.com"}, ["default email '-x@example.com'", "starts with a letter or digit"]),
        ({"DEFAULT_EMAIL": "--help"}, ["default email '--help'", "must be a plain email address"]),
        ({"DEFAULT_EMAIL": "ops@localhost"}, ["default email 'ops@localhost'", "separated by dots"]),
        ({"DEFAULT_EMAIL": " ops@x.io"}, ["default email ' ops@x.io'"]),
        ({"DEFAULT_EMAIL": "ops@x.io\n-v"}, ["default email 'ops@x.io\\\\n-v'"]),
    ],
)
def test_bad_values_raise_settings_error(env: dict[str, str], words: list[str]) -> None:
    with pytest.raises(SettingsError) as caught:
        load(env=env)
    for word in words:
        assert word in str(caught.value)


def test_bad_flag_value_raises_settings_error() -> None:
    with pytest.raises(SettingsError, match="https_port"):
        load(["--https-port", "x"])


def test_environment_table_lists_every_option() -> None:
    table = config.environment_table()
    for option in OPTIONS:
        assert f"`{option.flag}`" in table and f"`{option.env}`" in table


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nginx version: nginx/1.22.1", (1, 22, 1)),
        ("nginx version: nginx/1.27.0\n", (1, 27, 0)),
        ("nginx version: nginx/1.25.1 (Ubuntu)", (1, 25, 1)),
        ("  nginx version: nginx/1.19.10  ", (1, 19, 10)),
    ],
)
def test_parse_nginx_version(text: str, expected: tuple[int, ...]) -> None:
    assert config.parse_nginx_version(text) == expected


@pytest.mark.parametrize("text", ["", "nginx: command not found", "nginx version: openresty/1.21.4.1", "1.22.1"])
def test_parse_nginx_version_rejects(text: str) -> None:
    with pytest.raises(SettingsError, match="cannot read an nginx version"):
        config.parse_nginx_version(text)


# -- Debouncer ---------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_debouncer_first_wake_is_quick() -> None:
    clock = FakeClock()
    debouncer = Debouncer(clock)
    assert debouncer.windows() == (FIRST_QUIET, FIRST_MAX)
    assert FIRST_QUIET <= FIRST_MAX < BURST_QUIET


def test_debouncer_burst_backs_off_up_to_the_cap() -> None:
    clock = FakeClock()
    debouncer = Debouncer(clock)
    assert debouncer.windows() == (FIRST_QUIET, FIRST_MAX)
    debouncer.changed()
    waits = []
    for _ in range(8):
        clock.now += IDLE_GAP / 4  # events keep coming shortly after each pass
        quiet, longest = debouncer.windows()
        assert quiet == BURST_QUIET
        waits.append(longest)
        clock.now += longest
        debouncer.changed()
    assert waits == [4.0, 16.0, 30.0, 30.0, 30.0, 30.0, 30.0, 30.0]
    assert max(waits) == BURST_MAX_CAP


def test_debouncer_resets_after_an_idle_gap() -> None:
    clock = FakeClock()
    debouncer = Debouncer(clock)
    debouncer.windows()
    debouncer.changed()
    clock.now += 0.1
    assert debouncer.windows()[0] == BURST_QUIET
    debouncer.changed()
    clock.now += IDLE_GAP - 0.001
    assert debouncer.windows() == (BURST_QUIET, 16.0)
    debouncer.changed()
    clock.now += IDLE_GAP
    assert debouncer.windows() == (FIRST_QUIET, FIRST_MAX)
    assert debouncer.burst_passes == 0
    debouncer.changed()
    clock.now += 0.1
    assert debouncer.windows() == (BURST_QUIET, 4.0)


def test_debouncer_counts_from_the_last_change_not_the_last_wake() -> None:
    clock = FakeClock()
    debouncer = Debouncer(clock)
    debouncer.changed()
    for _ in range(5):  # many wakes without a change: still measured from the one change
        clock.now += 0.3
        debouncer.windows()
    clock.now = 1000.0 + IDLE_GAP
    assert debouncer.windows() == (FIRST_QUIET, FIRST_MAX)


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_renew_before_must_be_a_finite_number(value: str) -> None:
    with pytest.raises(SettingsError):
        load(env={"RENEW_BEFORE_DAYS": value})


def test_flags_work_before_and_after_the_command() -> None:
    from companion.cli import build_parser

    args = build_parser().parse_args(["--conf-dir", "/before", "run", "--http-port", "8080"])
    settings = config.load(args, {"HTTP_PORT": "9090", "CERTS_DIR": "/env"})
    assert (settings.conf_dir, settings.http_port, settings.certs_dir) == ("/before", 8080, "/env")


def test_unknown_log_level_is_refused() -> None:
    with pytest.raises(SettingsError, match="log level"):
        load(env={"LOG_LEVEL": "LOUD"})


@pytest.mark.parametrize(
    ("env", "field", "expected"),
    [
        ({}, "default_host", ""),
        ({"DEFAULT_HOST": "WWW.Example.COM."}, "default_host", "www.example.com"),
        ({"DEFAULT_HOST": "bücher.example"}, "default_host", "xn--bcher-kva.example"),
        ({"DEFAULT_HOST": ""}, "default_host", ""),
        ({}, "default_root", RootAnswer(404)),
        ({"DEFAULT_ROOT": "none"}, "default_root", None),
        (
            {"DEFAULT_ROOT": "301 $scheme://$host/app$request_uri"},
            "default_root",
            RootAnswer(301, "$scheme://$host/app$request_uri"),
        ),
        ({}, "http_on_missing_cert", True),
        ({"ENABLE_HTTP_ON_MISSING_CERT": "false"}, "http_on_missing_cert", False),
        ({"VHOST_DIR": "/srv/vhost.d"}, "vhost_dir", "/srv/vhost.d"),
        ({"SERVER_TOKENS": "off"}, "server_tokens", "off"),
        ({"RESOLVERS": "127.0.0.11"}, "resolvers", ("127.0.0.11",)),
        (
            {"RESOLVERS": "1.1.1.1:53, 2001:db8::1 [::1]:5353"},
            "resolvers",
            ("1.1.1.1:53", "[2001:db8::1]", "[::1]:5353"),
        ),
        ({"LOG_JSON": "true"}, "log_json", True),
        ({"DISABLE_ACCESS_LOGS": "true"}, "disable_access_logs", True),
        ({"LOG_FORMAT": "json"}, "own_log_format", "json"),
        ({"LOG_FORMAT": "json"}, "access_log_format", ""),
        ({"LOG_FORMAT": "$host $status"}, "own_log_format", "text"),
        ({"LOG_FORMAT": "$host $status"}, "access_log_format", "$host $status"),
        ({"LOG_FORMAT": "$host $status"}, "access_log_directive", "/var/log/nginx/access.log"),
        ({"LOG_FORMAT": "$host", "DISABLE_ACCESS_LOGS": "true"}, "access_log_directive", "off"),
        ({"LOG_FORMAT": "text"}, "access_log_directive", ""),
    ],
)
def test_drop_in_settings(env: dict[str, str], field: str, expected: object) -> None:
    assert getattr(load(env=env), field) == expected


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"DEFAULT_HOST": "a.com;evil"}, ["default_host", "'a.com;evil'", "RFC 1123"]),
        ({"DEFAULT_HOST": "~^a"}, ["default_host", "regular-expression"]),
        ({"DEFAULT_ROOT": "301 /x;return 200 hi"}, ["default_root", "target must be"]),
        ({"DEFAULT_ROOT": "4040"}, ["default_root", "status code from 100 to 599"]),
        ({"ENABLE_HTTP_ON_MISSING_CERT": "maybe"}, ["http_on_missing_cert", "'maybe'"]),
        ({"SERVER_TOKENS": "off; x"}, ["server tokens", "on, off or build"]),
        ({"RESOLVERS": "dns.google"}, ["resolvers", "not an IP address"]),
        ({"RESOLVERS": "1.1.1.1:99999"}, ["resolvers", "port must be 1-65535"]),
        ({"ACCESS_LOG_PATH": "/var/log/a b.log"}, ["must be absolute and free of spaces"]),
        ({"VHOST_DIR": "vhost.d"}, ["'vhost.d' must be absolute"]),
        ({"LOG_FORMAT": "$host\n$status"}, ["log format", "text or json (the companion's own log)", "printable"]),
        ({"LOG_FORMAT_ESCAPE": "xml"}, ["log format escape 'xml' must be one of default, json, none"]),
    ],
)
def test_bad_drop_in_settings_stop_startup_naming_the_setting(env: dict[str, str], words: list[str]) -> None:
    with pytest.raises(SettingsError) as caught:
        load(env=env)
    for word in words:
        assert word in str(caught.value)
    assert "\n" not in str(caught.value)


def test_default_root_flag_over_environment() -> None:
    assert load(["--default-root", "418"], {"DEFAULT_ROOT": "none"}).default_root == RootAnswer(418)


def test_command_flags_are_never_read_as_a_prefix_of_a_setting() -> None:
    """`render --all` once became ambiguous when a second `--allowed-*` setting arrived."""
    from companion.cli import build_parser

    args = build_parser().parse_args(["render", "--all"])
    assert args.all is True and not hasattr(args, "allowed_domains")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--allowed", "*.a.com"])  # abbreviations are refused, not guessed
