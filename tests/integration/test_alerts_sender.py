"""The alert sender against a loopback receiver: failed sends, hanging receivers, state kept across restarts
and on disk. It opens sockets, so it is an integration test; the pure decisions are in tests/unit/test_alerts.py.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from companion.acme import alerts
from companion.acme.alerts import EXPIRY_REPEAT, QUEUE_MAX, SENT_FILE, Alert, Kind, Notifier
from tests.harness.clock import NOW, at
from tests.harness.receiver import Receiver
from tests.harness.wait import wait_until


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


# -- the sender ----------------------------------------------------------------------------------------


def test_failed_sends_are_logged_once_per_outage(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="companion.acme.alerts")
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
    messages = [r.getMessage() for r in caplog.records if r.name == "companion.acme.alerts"]
    assert sum("cannot deliver a notification" in m for m in messages) == 1, messages
    assert sum("delivered again" in m for m in messages) == 1, messages
    assert {m["type"] for m in receiver.messages} == {"failure", "success"}


def test_a_hanging_receiver_never_blocks_send(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A receiver that accepts and never answers: send() keeps returning, beyond the queue's size."""
    caplog.set_level(logging.DEBUG, logger="companion.acme.alerts")
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
