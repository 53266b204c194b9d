"""Alerts and JSON logs: pure decisions (injected clock) and URL checks. The sender against a real loopback
receiver is tests/integration/test_alerts_sender.py.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
from pathlib import Path

import pytest

from companion.acme.alerts import EXPIRY_REPEAT, Kind, expiring, in_use, order_alert
from companion.core.certificates import CertStatus
from companion.core.plan import Server
from companion.core.problems import Problem, fields_of
from companion.core.values import HttpsMethod
from companion.core.variables import setting_problems
from companion.observe.logformat import JsonFormatter
from companion.settings import config
from companion.settings.notify import parse_notify_urls
from tests.harness.clock import NOW, at

# -- pure decisions ----------------------------------------------------------------------------------


def test_order_alert_only_on_the_first_failure_of_a_streak_and_on_recovery() -> None:
    failed = order_alert("a.com", ("a.com", "b.com"), 0, "DNS problem: NXDOMAIN looking up A for a.com")
    assert failed is not None and failed.kind is Kind.FAILED
    assert "a.com, b.com" in failed.body and "NXDOMAIN" in failed.body
    assert order_alert("a.com", ("a.com",), 1, "again") is None
    assert order_alert("a.com", ("a.com",), 5, "again") is None
    recovered = order_alert("a.com", ("a.com",), 3, "")
    assert recovered is not None and recovered.kind is Kind.RECOVERED and "after 3 failed attempts" in recovered.body
    assert order_alert("a.com", ("a.com",), 0, "") is None  # a routine renewal is no news


def test_order_alert_escapes_the_cas_words() -> None:
    alert = order_alert("a.com", ("a.com",), 0, "bad\x1b[31m red\nsecond line\u202e")
    assert alert is not None
    assert "\x1b" not in alert.body and "\n" not in alert.body and "\u202e" not in alert.body
    assert "\\x1b[31m red\\x0asecond line\\u202e" in alert.body


def test_expiring_once_a_day_per_certificate() -> None:
    certs = {"soon": at(3), "later": at(30), "edge": at(14)}
    assert expiring(certs, {}, NOW, 14) == ("soon",)
    assert expiring(certs, {}, NOW, 14.01) == ("edge", "soon")
    assert expiring(certs, {}, NOW + 60, 14) == ("edge", "soon")  # a minute on, edge has < 14 days too
    sent = {"soon": NOW, "edge": NOW + 60}
    assert expiring(certs, sent, NOW + 120, 14) == ()  # not again within the day
    assert expiring(certs, sent, NOW + EXPIRY_REPEAT - 1, 14) == ()
    assert expiring(certs, sent, NOW + EXPIRY_REPEAT, 14) == ("soon",)
    assert expiring(certs, sent, NOW + EXPIRY_REPEAT + 60, 14) == ("edge", "soon")
    assert expiring(certs, {"later": NOW}, NOW, 40) == ("edge", "soon")
    assert expiring({"gone": at(-1)}, {}, NOW, 14) == ("gone",)  # expired and still served: say so


def test_in_use_counts_only_lineages_nginx_presents(tmp_path: Path) -> None:
    statuses = {
        name: CertStatus(name, (f"{name}.com",), not_after=at(5))
        for name in ("served", "unused", "broken", "placeholder")
    }
    statuses["broken"] = CertStatus("broken", ("broken.com",), not_after=at(5), problem="key does not match")

    def server(name: str, *, placeholder: bool = False) -> Server:
        cert = statuses[name].files(tmp_path)
        return Server(f"{name}.com", HttpsMethod.REDIRECT, "", (), cert, placeholder)

    servers = [server("served"), server("broken"), server("placeholder", placeholder=True)]
    servers.append(Server("none.com", HttpsMethod.REDIRECT, "", (), None, False))
    assert in_use(servers, statuses, tmp_path) == {"served": at(5)}


# -- settings ------------------------------------------------------------------------------------------


def test_notify_urls_are_checked_by_apprise_without_echoing_secrets() -> None:
    good = "json://127.0.0.1:8080, mailtos://user:app-password@gmail.com"
    assert parse_notify_urls(good) == ("json://127.0.0.1:8080", "mailtos://user:app-password@gmail.com")
    with pytest.raises(config.SettingsError) as caught:
        config.load(config.argparse.Namespace(), {"NOTIFY_URLS": "json://127.0.0.1:1,nosuch://s3cr3t-token@host"})
    message = str(caught.value)
    assert "entry 2 of 2" in message and "nosuch://" in message and "notify_urls" in message
    assert "s3cr3t" not in message and "127.0.0.1" not in message
    with pytest.raises(config.SettingsError, match=r"entry 1 of 1 \(not a URL\)"):
        parse_and_load("hunter2-no-scheme")


def parse_and_load(raw: str) -> config.Settings:
    return config.load(config.argparse.Namespace(), {"NOTIFY_URLS": raw})


def test_notify_urls_never_appear_in_the_settings_repr() -> None:
    settings = parse_and_load("mailtos://user:app-password@gmail.com")
    assert settings.notify_urls and "app-password" not in repr(settings)


@pytest.mark.parametrize(
    ("env", "word"),
    [
        ({"NOTIFY_EXPIRY_DAYS": "-1"}, "notify-expiry-days"),
        ({"NOTIFY_EXPIRY_DAYS": "nan"}, "notify-expiry-days"),
        ({"LOG_FORMAT": " "}, "must be text or json"),  # any other value is nginx-proxy's: an access log format
        ({"LOG_FORMAT": "JSON\x1b"}, "\\x1b"),
    ],
)
def test_bad_alert_and_log_settings_stop_startup(env: dict[str, str], word: str) -> None:
    with pytest.raises(config.SettingsError) as caught:
        config.load(config.argparse.Namespace(), env)
    assert word in str(caught.value)


def test_alert_and_log_defaults() -> None:
    settings = config.load(config.argparse.Namespace(), {})
    assert (settings.notify_urls, settings.notify_expiry_days, settings.log_format) == ((), 14.0, "text")
    json_settings = config.load(config.argparse.Namespace(), {"LOG_FORMAT": "json", "NOTIFY_EXPIRY_DAYS": "0"})
    assert (json_settings.log_format, json_settings.notify_expiry_days) == ("json", 0.0)


# -- JSON log lines ------------------------------------------------------------------------------------


def test_json_formatter_one_object_per_line_with_fields() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("companion.test_json")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    try:
        line = Problem("container x: VIRTUAL_PORT='a\\nb' bad", container="x\ny", variable="VIRTUAL_PORT")
        logger.warning("%s", line, extra=fields_of(line))
        logger.info("certificate %s: issued \u202e\x1b", "a.com", extra={"certificate": "a.com"})
        try:
            raise RuntimeError("boom\nsecond")
        except RuntimeError:
            logger.exception("pass failed")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3
    first, second, third = (json.loads(line) for line in lines)
    assert first["container"] == "x\ny" and first["variable"] == "VIRTUAL_PORT" and "certificate" not in first
    assert first["level"] == "WARNING" and first["logger"] == "companion.test_json"
    assert dt.datetime.fromisoformat(first["time"]).utcoffset() == dt.timedelta(0)
    assert second["certificate"] == "a.com" and second["message"].endswith("\u202e\x1b")
    assert all(ord(c) < 128 for c in lines[1])  # json escapes every control and bidi character
    assert "boom" in third["exception"] and third["message"] == "pass failed"


def test_problem_equals_its_text_and_keeps_its_fields() -> None:
    line = Problem("container a: unhealthy", container="a")
    assert line == "container a: unhealthy" and {line} - {"container a: unhealthy"} == set()
    assert fields_of(line) == {"container": "a"} and fields_of("plain") == {}


def test_log_format_on_the_companion_is_its_own_setting_not_nginx_proxys() -> None:
    """Both are settings the companion reads (LOG_FORMAT: its own log for text/json, else nginx's format)."""
    assert setting_problems({"LOG_FORMAT": "json", "LOG_FORMAT_ESCAPE": "json", "LOG_FORMAT_ESCAP": "x"}) == ()
