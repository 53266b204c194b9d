"""logsafe.printable and the places that log other programs' words through it (pure, no real parts)."""

from __future__ import annotations

import re
import unicodedata

import docker.errors
import pytest
import requests.exceptions
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.nginx.apply import NginxError, _docker, _nginx_error
from companion.sources.daemon import short_reason
from companion.util.logsafe import printable

UNSAFE = (
    [chr(c) for c in range(0x20)]
    + ["\x7f"]
    + [chr(c) for c in range(0x80, 0xA0)]
    + ["\u2028", "\u2029"]
    + [chr(c) for c in range(0x202A, 0x202F)]
    + [chr(c) for c in range(0x2066, 0x206A)]
)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("bell\x07", "bell\\x07"),
        ("a\rb\nc\td", "a\\x0db\\x0ac\\x09d"),
        ("\x00\x7f\x85\x9b", "\\x00\\x7f\\x85\\x9b"),
        ("line\u2028sep\u2029", "line\\u2028sep\\u2029"),
        ("\u202eevil\u202c \u2066iso\u2069", "\\u202eevil\\u202c \\u2066iso\\u2069"),
        ("lone \udc80", "lone \\udc80"),
    ],
)
def test_printable_escapes_control_characters(text: str, shown: str) -> None:
    assert printable(text) == shown


@pytest.mark.parametrize(
    "text",
    ["", "plain ascii: [emerg] x", "bücher.example", "日本語 ещё ελληνικά 👍", "a\\x1b stays as typed", "\xa0\xe9"],
)
def test_printable_keeps_ordinary_text(text: str) -> None:
    assert printable(text) == text


def test_every_listed_character_is_escaped() -> None:
    for char in UNSAFE:
        shown = printable("<" + char + ">")
        assert char not in shown and shown.startswith("<\\") and shown.endswith(">"), repr(char)
        assert shown.isascii() and shown.isprintable()


def unescape(shown: str) -> str:
    return re.sub(r"\\x([0-9a-f]{2})|\\u([0-9a-f]{4})", lambda m: chr(int(m.group(1) or m.group(2), 16)), shown)


@settings(max_examples=500, deadline=None, database=None)
@given(st.text(alphabet=st.characters(blacklist_characters="\\"), max_size=60))
def test_printable_leaves_no_control_or_bidi_character_and_loses_nothing(text: str) -> None:
    shown = printable(text)
    assert not any(unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") for ch in shown)
    assert not any(ch in shown for ch in UNSAFE)
    assert len(shown.splitlines()) <= 1
    assert unescape(shown) == text  # every character is still there, readable or escaped
    # Everything that needs no escape passes through untouched and in order.
    kept = "".join(ch for ch in text if ch not in UNSAFE and not "\ud800" <= ch <= "\udfff")  # lone surrogates too
    assert re.sub(r"\\x[0-9a-f]{2}|\\u[0-9a-f]{4}", "", shown) == kept


def test_nginx_error_escapes_what_nginx_echoes() -> None:
    output = (
        'nginx: [emerg] unknown directive "bogus\x1b[31mx" in /etc/nginx/conf.d/zz.conf:1\n'
        "nginx: configuration file /etc/nginx/nginx.conf test failed\n"
    )
    error = _nginx_error(output)
    assert error == 'nginx: [emerg] unknown directive "bogus\\x1b[31mx" in /etc/nginx/conf.d/zz.conf:1'
    assert "\x1b" not in _nginx_error("no emerg line\x07\nbut output\r\n")


def test_docker_errors_are_escaped() -> None:
    exc = docker.errors.APIError("500 Server Error: \x1b]0;pwned\x07 container gone\nsecond line")
    with pytest.raises(NginxError) as caught:
        _docker("nginx -t", lambda: (_ for _ in ()).throw(exc))
    assert "\x1b" not in str(caught.value) and "\x07" not in str(caught.value)
    assert "\\x1b]0;pwned\\x07 container gone" in str(caught.value)
    first_line = requests.exceptions.ConnectionError("refused \x1b[2K by \u202eproxy\x9b\rsecond line")
    assert short_reason(first_line) == "refused \\x1b[2K by \\u202eproxy\\x9b"
    assert short_reason(OSError()) == "OSError"
