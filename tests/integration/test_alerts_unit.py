"""Alerts and JSON logs: pure decisions (injected clock), URL checks, the sender against a loopback receiver."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from companion import alerts, config
from companion.alerts import (
    EXPIRY_REPEAT,
    QUEUE_MAX,
    SENT_FILE,
    Alert,
    Kind,
    Notifier,
    expiring,
    in_use,
    order_alert,
    parse_notify_urls,
)
from companion.certs import CertStatus
from companion.logformat import JsonFormatter, Problem, fields_of
from companion.model import HttpsMethod
from companion.plan import Server
from companion.variables import setting_problems
from tests.harness.receiver import Receiver
from tests.harness.wait import wait_until

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC).timestamp()
DAY = 86400.0


def at(days: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(NOW + days * DAY, dt.UTC)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


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


# -- the sender ----------------------------------------------------------------------------------------


def test_failed_sends_are_logged_once_per_outage(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="companion.alerts")
    notifier = Notifier((receiver.url,), tmp_path, 14)
    receiver.status = 500
    for n in range(3):
        notifier.send(Alert(Kind.FAILED, f"c{n}.com", f"title {n}", "body"))
    wait_until(lambda: len(receiver.messages) == 3, what="three refused posts")
    receiver.status = 200
    notifier.send(Alert(Kind.RECOVERED, "c0.com", "title ok", "body"))
    notifier.send(Alert(Kind.RECOVERED, "c1.com", "title ok", "body"))
    notifier.stop(timeout=10)
    assert len(receiver.delivered("title ok")) == 2
    messages = [r.getMessage() for r in caplog.records if r.name == "companion.alerts"]
    assert sum("cannot deliver a notification" in m for m in messages) == 1, messages
    assert sum("delivered again" in m for m in messages) == 1, messages
    assert {m["type"] for m in receiver.messages} == {"failure", "success"}


def test_a_hanging_receiver_never_blocks_send(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A receiver that accepts and never answers: send() keeps returning, beyond the queue's size."""
    caplog.set_level(logging.DEBUG, logger="companion.alerts")
    with socket.socket() as hanging:
        hanging.bind(("127.0.0.1", 0))
        hanging.listen(200)
        notifier = Notifier((f"json://127.0.0.1:{hanging.getsockname()[1]}",), tmp_path, 14)
        for n in range(QUEUE_MAX * 2):
            notifier.send(Alert(Kind.FAILED, f"c{n}.com", "t", "b"))
        assert any("queue full" in r.getMessage() for r in caplog.records)
        notifier.stop(timeout=0.1)


def test_expiry_alerts_persist_across_a_restart(tmp_path: Path, receiver: Receiver) -> None:
    now = [NOW]
    certs = {"soon.com": at(3), "later.com": at(60)}
    first = Notifier((receiver.url,), tmp_path, 14, clock=lambda: now[0])
    for _ in range(5):
        first.check_expiry(certs)
    first.stop(timeout=10)
    saved = tmp_path / SENT_FILE
    assert json.loads(saved.read_text()) == {"soon.com": NOW}
    assert oct(os.stat(saved).st_mode & 0o777) == "0o600"

    now[0] = NOW + 3600  # a restart an hour later sends nothing again
    second = Notifier((receiver.url,), tmp_path, 14, clock=lambda: now[0])
    second.check_expiry(certs)
    now[0] = NOW + EXPIRY_REPEAT  # a day after the first: once more
    second.check_expiry(certs)
    second.check_expiry(certs)
    second.stop(timeout=10)
    titles = [m["title"] for m in receiver.delivered()]
    assert len(titles) == 2 and all("soon.com" in t and "expires in" in t for t in titles)
    assert {m["type"] for m in receiver.delivered()} == {"warning"}


def test_a_link_in_place_of_the_sent_file_is_not_followed(tmp_path: Path, receiver: Receiver) -> None:
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"soon.com": NOW}))
    certs_dir = tmp_path / "certs"
    (certs_dir / "companion").mkdir(parents=True)
    (certs_dir / SENT_FILE).symlink_to(outside)
    notifier = Notifier((receiver.url,), certs_dir, 14, clock=lambda: NOW)
    notifier.check_expiry({"soon.com": at(3)})  # the link's content is not believed: sent once
    notifier.stop(timeout=10)
    assert len(receiver.delivered("soon.com")) == 1
    assert not (certs_dir / SENT_FILE).is_symlink()
    assert json.loads(outside.read_text()) == {"soon.com": NOW}


def test_zero_expiry_days_sends_no_expiry_alert(tmp_path: Path, receiver: Receiver) -> None:
    notifier = Notifier((receiver.url,), tmp_path, 0, clock=lambda: NOW)
    notifier.check_expiry({"gone.com": at(-1)})
    notifier.stop(timeout=10)
    assert receiver.messages == [] and not (tmp_path / alerts.SENT_FILE).exists()


def test_log_format_on_the_companion_is_its_own_setting_not_nginx_proxys() -> None:
    """Both are settings the companion reads (LOG_FORMAT: its own log for text/json, else nginx's format)."""
    assert setting_problems({"LOG_FORMAT": "json", "LOG_FORMAT_ESCAPE": "json", "LOG_FORMAT_ESCAP": "x"}) == ()
