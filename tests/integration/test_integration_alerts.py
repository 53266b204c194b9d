"""Alerts and JSON logs with the real parts: Pebble, certbot, nginx, Docker, Apprise posting to a loopback receiver."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator

import pytest

from tests.harness.appimage import AppRunner
from tests.harness.companion import Companion
from tests.harness.nginx import HostNginx
from tests.harness.pebble import Pebble
from tests.harness.receiver import Receiver
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.acme]

DOMAIN = f"{uuid.uuid4().hex[:8]}.example.test"  # this module's companions route only its own names


def unique_host(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}.{DOMAIN}"


def acme_env(pebble: Pebble, receiver: Receiver, **extra: str) -> dict[str, str]:
    return {
        "ACME_CA_URI": pebble.directory_url,
        "CA_BUNDLE": str(pebble.ca_bundle_path),
        "ALLOWED_DOMAINS": f"*.{DOMAIN}",
        "NOTIFY_URLS": receiver.url,
        **extra,
    }


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    made = Receiver()
    yield made
    made.close()


def test_failed_order_and_its_recovery_each_send_one_message(
    apps: AppRunner,
    host_nginx: HostNginx,
    pebble: Pebble,
    receiver: Receiver,
    make_companion: Callable[..., Companion],
) -> None:
    companion = make_companion(**acme_env(pebble, receiver, ACME_RETRY_BASE="2"))
    host = unique_host("flaky")
    pebble.set_default_ipv4("")  # the CA's DNS does not know the name: every validation fails
    apps("flaky", environment={"VIRTUAL_HOST": host, "LETSENCRYPT_HOST": host, "APP_ID": "flaky"})
    companion.wait_log(rf"certificate {re.escape(host)}: .*attempt 3 failed", timeout=60)
    failed = receiver.delivered(f"certificate {host}: order failed")
    assert len(failed) == 1, receiver.messages
    assert failed[0]["type"] == "failure"
    reason = re.search(rf"certificate {re.escape(host)}: (.*); attempt 1 failed", companion.log()).group(1)
    assert failed[0]["message"] == f"{host}: {reason}"

    pebble.set_default_ipv4("127.0.0.1")
    companion.wait_log(rf"certificate {re.escape(host)}: issued for", timeout=90)
    recovered = wait_until(lambda: receiver.delivered(f"certificate {host}: issued"), what="recovery message")
    companion.wait_idle(quiet=1.5)
    assert len(receiver.delivered(f"certificate {host}: issued")) == 1
    assert recovered[0]["type"] == "success" and "failed attempts" in recovered[0]["message"]
    assert len(receiver.delivered(f"certificate {host}: order failed")) == 1
    assert len(receiver.messages) == 2, receiver.messages  # nothing else: the 90-day certificate is not near expiry


def test_near_expiry_alert_is_sent_once_across_passes_and_restarts_and_logs_are_json(
    apps: AppRunner,
    host_nginx: HostNginx,
    pebble: Pebble,
    receiver: Receiver,
    make_companion: Callable[..., Companion],
) -> None:
    # Pebble issues 90-day certificates; with 100 days as the limit every one is near expiry.
    env = acme_env(pebble, receiver, NOTIFY_EXPIRY_DAYS="100", LOG_FORMAT="json")
    companion = make_companion(**env)
    host = unique_host("expiring")
    apps("expiring", environment={"VIRTUAL_HOST": host, "LETSENCRYPT_HOST": host, "APP_ID": "expiring"})
    wait_until(lambda: receiver.delivered(f"certificate {host}: expires in"), timeout=60, what="expiry alert")

    # More passes: containers come and go, one of them rejected.
    rejected = apps("rejected", environment={"VIRTUAL_HOST": unique_host("rejected"), "VIRTUAL_PORT": "eighty"})
    for n in range(3):
        other = unique_host(f"plain{n}")
        apps(f"plain{n}", environment={"VIRTUAL_HOST": other, "APP_ID": f"p{n}"})
        wait_until(lambda h=other: host_nginx.get(h)[0] == 200, timeout=20, what=f"{other} routed")
    companion.wait_idle(quiet=1.5)
    assert companion.count(r'"message": "applied ') >= 4  # several passes ran ...
    assert len(receiver.delivered(host)) == 1, receiver.messages  # ... and one alert went out

    # A restart remembers that the alert went out today.
    assert companion.stop() == 0
    restarted = make_companion(**env)
    restarted.wait_log("connected to the Docker daemon")
    last = unique_host("after")
    apps("after", environment={"VIRTUAL_HOST": last, "APP_ID": "after"})
    wait_until(lambda: host_nginx.get(last)[0] == 200, timeout=20, what=f"{last} routed")
    restarted.wait_idle(quiet=1.5)
    assert len(receiver.delivered(host)) == 1, receiver.messages
    message = receiver.delivered(host)[0]
    assert message["type"] == "warning" and "days left" in message["message"]

    lines = [json.loads(line) for line in restarted.log().splitlines()]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    assert all(line["time"].endswith("+00:00") for line in lines)
    refused = [line for line in lines if line.get("container") == rejected.name]
    assert refused and refused[0]["variable"] == "VIRTUAL_PORT" and refused[0]["level"] == "WARNING"
    assert "eighty" in refused[0]["message"]
    about_cert = [line for line in lines if line.get("certificate") == host]
    assert any("issued for" in line["message"] for line in about_cert)
    assert any("sending an alert" in line["message"] for line in about_cert)
