"""The status endpoint of a real running companion: real dockerd, nginx, Pebble + certbot, and Chromium."""

from __future__ import annotations

import base64
import datetime as dt
import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from companion.serve.statusserver import MAX_REQUEST_BYTES
from tests.harness.appimage import AppRunner
from tests.harness.companion import Companion
from tests.harness.companion import status_get as get
from tests.harness.nginx import HostNginx, body
from tests.harness.pebble import Pebble
from tests.harness.ports import free_port, wait_tcp
from tests.harness.tls import https_body
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.integration]

DOMAIN = f"{uuid.uuid4().hex[:8]}.example.test"
# Not a valid host: the container is left out, and the rejection quotes the value on the page.
HOSTILE = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>.test'


def unique_host(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}.{DOMAIN}"


def status_json(port: int) -> dict[str, Any]:
    code, headers, data = get(port, "/status.json")
    assert code == 200 and headers["Content-Type"] == "application/json"
    return json.loads(data)


def metrics(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by (name, sorted labels), parsed by prometheus_client's own parser."""
    code, _, data = get(port, "/metrics")
    assert code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(data.decode())
        for sample in family.samples
    }


def report_when(port: int, check: Callable[[dict[str, Any]], object]) -> Callable[[], dict[str, Any] | None]:
    """A probe for wait_until: the report once `check` holds for it."""

    def probe() -> dict[str, Any] | None:
        report = status_json(port)
        return report if check(report) else None

    return probe


def site(report: dict[str, Any], host: str) -> dict[str, Any] | None:
    return next((s for s in report["sites"] if s["host"] == host), None)


def cert(report: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((c for c in report["certificates"] if c["name"] == name), None)


@pytest.fixture
def status_companion(make_companion: Callable[..., Companion]) -> Callable[..., tuple[Companion, int]]:
    """``status_companion(**ENV)``: a companion with STATUS_LISTEN on a free loopback port, once it listens."""

    def make(**settings: str) -> tuple[Companion, int]:
        port = free_port()
        companion = make_companion(STATUS_LISTEN=f"127.0.0.1:{port}", ALLOWED_DOMAINS=f"*.{DOMAIN}", **settings)
        wait_tcp("127.0.0.1", port, timeout=30)
        return companion, port

    return make


@pytest.mark.acme
def test_report_and_metrics_follow_sites_left_out_containers_and_certificates(
    apps: AppRunner, host_nginx: HostNginx, pebble: Pebble, status_companion: Callable[..., tuple[Companion, int]]
) -> None:
    companion, port = status_companion(ACME_CA_URI=pebble.directory_url, CA_BUNDLE=str(pebble.ca_bundle_path))
    valid, failing = unique_host("valid"), unique_host("failing")
    served = apps("served", environment={"VIRTUAL_HOST": valid, "LETSENCRYPT_HOST": valid, "APP_ID": "served"})
    # LETSENCRYPT_TEST selects the staging CA, which nothing answers in tests: the order fails, the site
    # keeps the placeholder.
    apps("pending", environment={"VIRTUAL_HOST": failing, "LETSENCRYPT_HOST": failing, "LETSENCRYPT_TEST": "true"})
    hostile = apps("hostile", environment={"VIRTUAL_HOST": HOSTILE})

    assert wait_until(lambda: body(host_nginx, valid)[0] == 200, timeout=30, what="site routed")
    # The report is replaced by the very pass that applied the site.
    report = wait_until(report_when(port, lambda r: site(r, valid)), timeout=2, what="site reported")
    assert report["version"] == 1
    shown = site(report, valid)
    assert shown is not None and [p["path"] for p in shown["paths"]] == ["/"]
    [backend] = shown["paths"][0]["backends"]
    assert backend["container"] == served.name and backend["address"] and backend["port"] == 80
    assert {"container": hostile.name, "reason": wait_until(lambda: reason_of(port, hostile.name))} in (
        status_json(port)["left_out"]
    )

    context = ssl.create_default_context(cadata=pebble.roots_pem())
    assert wait_until(lambda: https_body(host_nginx, valid, context) == (200, "served"), timeout=60, what="HTTPS")
    report = wait_until(
        report_when(
            port, lambda r: (cert(r, valid) or {}).get("state") == "valid" and not site(r, valid)["placeholder"]
        ),
        timeout=5,
        what="valid certificate reported",
    )
    valid_cert = cert(report, valid)
    assert valid_cert is not None and valid_cert["names"] == [valid] and valid_cert["issuer"].startswith("Pebble")
    assert 89 <= valid_cert["days_left"] <= 90 and valid_cert["renew_at"] < valid_cert["not_after"]
    assert site(report, valid)["certificate"] == valid  # type: ignore[index]

    report = wait_until(
        report_when(port, lambda r: (cert(r, failing) or {}).get("state") == "failing"),
        timeout=30,
        what="failing order reported",
    )
    failing_cert = cert(report, failing)
    assert failing_cert is not None and failing_cert["failures"] >= 1
    assert failing_cert["last_error"] and failing_cert["next_try"] and failing_cert["not_after"] == ""
    pending = site(report, failing)
    assert pending is not None and pending["placeholder"] and pending["certificate"] == "placeholder"
    assert any(HOSTILE in p["text"] for p in report["problems"])
    assert all(p["since"] for p in report["problems"])
    assert report["passes"] and report["passes"][0]["at"] >= report["passes"][-1]["at"]
    assert any(p["reload"] == "ok" and p["files_changed"] >= 1 for p in report["passes"])
    assert report["nginx"]["version"] and report["last_success"]

    samples = metrics(port)
    not_after = samples[("companion_certificate_not_after_timestamp_seconds", (("name", valid),))]
    assert abs(not_after - dt.datetime.fromisoformat(valid_cert["not_after"]).timestamp()) < 1
    assert ("companion_certificate_not_after_timestamp_seconds", (("name", failing),)) not in samples
    assert samples[("companion_sites", ())] >= 2
    assert samples[("companion_containers_left_out", ())] >= 1
    assert samples[("companion_problems", ())] >= 1
    assert samples[("companion_nginx_reloads_total", (("result", "ok"),))] >= 1
    assert samples[("companion_acme_orders_total", (("result", "ok"),))] >= 1
    assert samples[("companion_acme_orders_total", (("result", "failed"),))] >= 1
    assert samples[("companion_apply_duration_seconds_count", ())] >= 1
    assert samples[("companion_docker_events_total", ())] >= 3  # three containers started
    assert samples[("companion_last_success_timestamp_seconds", ())] > 0

    # Gone within the pass that follows the change.
    served.stop(timeout=1)
    wait_until(lambda: body(host_nginx, valid)[0] == 503, what="site removed")
    wait_until(lambda: site(status_json(port), valid) is None, timeout=2, what="site gone from the report")
    assert companion.alive


def reason_of(port: int, container: str) -> str:
    return next((item["reason"] for item in status_json(port)["left_out"] if item["container"] == container), "")


def test_routes_methods_and_hostile_clients(
    apps: AppRunner, host_nginx: HostNginx, status_companion: Callable[..., tuple[Companion, int]]
) -> None:
    companion, port = status_companion()
    hostile = apps("hostile", environment={"VIRTUAL_HOST": HOSTILE})
    wait_until(lambda: reason_of(port, hostile.name), what="left-out container reported")
    code, headers, html = get(port, "/")
    assert code == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert (
        "script-src" not in headers["Content-Security-Policy"]
        and "default-src 'none'" in headers["Content-Security-Policy"]
    )
    page = html.decode()
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;window.pwned=2&lt;/script&gt;" in page
    assert wait_until(lambda: get(port, "/healthz")[0] == 200, what="healthz once the loop ran")
    assert get(port, "/healthz")[2] == b"ok\n"
    assert get(port, "/nothing")[0] == 404
    code, headers, data = get(port, "/status.json", "HEAD")
    assert code == 200 and int(headers["Content-Length"]) > 0 and data == b""
    assert get(port, "/", "POST")[0] == 405

    # A client that connects and sends nothing, and one that sends half a request, stall no one.
    silent = socket.create_connection(("127.0.0.1", port))
    half = socket.create_connection(("127.0.0.1", port))
    half.sendall(b"GET /status.json HTTP/1.1\r\nHost: x\r\n")
    try:
        assert get(port, "/healthz")[0] == 200
        assert get(port, "/metrics")[0] == 200
        # A request larger than the cap is refused, not read on and on.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as big:
            big.sendall(b"GET / HTTP/1.0\r\n" + b"X-Pad: " + b"a" * MAX_REQUEST_BYTES + b"\r\n\r\n")
            assert big.recv(64).startswith(b"HTTP/1.0 431")
    finally:
        silent.close()
        half.close()
    assert companion.alive


def test_sixty_clients_trickling_bytes_never_make_healthz_fail(
    host_nginx: HostNginx, status_companion: Callable[..., tuple[Companion, int]]
) -> None:
    """The attack: sixty clients send a request line and then one byte a second, reconnecting when closed.
    Every /healthz probe meanwhile must answer 200, and every slow connection is ended by the whole-request
    deadline (5 s from the connect), which a per-read timeout never reached."""
    companion, port = status_companion()
    wait_until(lambda: get(port, "/healthz")[0] == 200, what="alive")
    stop = threading.Event()
    lifetimes: list[float] = []  # seconds each slow connection lasted until the server closed it
    lock = threading.Lock()

    def slow_client() -> None:
        while not stop.is_set():
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /status.json HTTP/1.1\r\n")
                while not stop.is_set():
                    try:
                        sock.sendall(b"X")
                        sock.recv(4096)  # the server's 408, or its close: either way it ended the request
                    except TimeoutError:
                        continue  # a second went by without an answer: the next byte
                    except OSError:
                        pass  # reset: ended too
                    with lock:
                        lifetimes.append(time.monotonic() - started)
                    break

    clients = [threading.Thread(target=slow_client, daemon=True) for _ in range(60)]
    for client in clients:
        client.start()
    probes: list[tuple[float, object]] = []
    try:
        end = time.monotonic() + 15
        while time.monotonic() < end:
            try:
                probes.append((time.monotonic(), get(port, "/healthz")[0]))
            except OSError as exc:
                probes.append((time.monotonic(), exc))
            time.sleep(0.5)
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=10)
    failed = [probe for probe in probes if probe[1] != 200]
    assert not failed, f"{len(failed)} of {len(probes)} probes failed: {failed[:5]}"
    assert len(lifetimes) >= 60, f"only {len(lifetimes)} slow connections were ended by the server"
    assert max(lifetimes) < 10, sorted(lifetimes)[-5:]  # 5 s from the connect; trickling went on for 15 s
    assert companion.alive


def test_healthz_follows_the_loop_like_companion_check(
    host_nginx: HostNginx, status_companion: Callable[..., tuple[Companion, int]]
) -> None:
    companion, port = status_companion()
    wait_until(lambda: get(port, "/healthz")[0] == 200, what="alive")
    heartbeat = Path(companion.env["HEARTBEAT_FILE"])
    heartbeat.write_text("2000-01-01T00:00:00+00:00\n")  # what a loop stuck since then leaves behind
    code, _, text = get(port, "/healthz")
    assert code == 503 and text.startswith(b"last loop pass")
    assert companion.cli("check").returncode == 1


def test_status_auth_asks_every_route_but_healthz_for_an_htpasswd_password(
    tmp_path: Path, host_nginx: HostNginx, status_companion: Callable[..., tuple[Companion, int]]
) -> None:
    """STATUS_AUTH with a file made by Apache's own `htpasswd -B` (apache2-utils), as an operator would."""
    if not shutil.which("htpasswd"):
        pytest.fail("htpasswd is missing: apt-get install -y apache2-utils")
    users = tmp_path / "status.htpasswd"
    made = subprocess.run(
        ["htpasswd", "-B", "-b", "-c", str(users), "admin", "s3cret"], capture_output=True, check=False
    )
    assert made.returncode == 0, made.stderr
    companion, port = status_companion(STATUS_AUTH=str(users))
    wait_until(lambda: get(port, "/healthz")[0] == 200, what="/healthz open without a password")

    def basic(user: str, password: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    for path in ("/", "/status.json", "/metrics", "/explain?name=x"):
        code, headers, _ = get(port, path)
        assert code == 401 and headers["WWW-Authenticate"].startswith("Basic "), (path, code)
        assert get(port, path, headers=basic("admin", "wrong"))[0] == 401
        assert get(port, path, headers=basic("nobody", "s3cret"))[0] == 401
    assert get(port, "/status.json", headers=basic("admin", "s3cret"))[0] == 200
    assert get(port, "/metrics", headers=basic("admin", "s3cret"))[0] == 200
    # An MD5 (apr1) file is refused at start: a stolen fast hash gives the password up.
    weak = tmp_path / "weak.htpasswd"
    subprocess.run(["htpasswd", "-m", "-b", "-c", str(weak), "admin", "s3cret"], capture_output=True, check=True)
    refused = companion.cli(
        "run", timeout=60, env={"STATUS_AUTH": str(weak), "STATUS_LISTEN": f"127.0.0.1:{free_port()}"}
    )
    assert refused.returncode == 2, refused.stderr
    assert "only bcrypt entries (htpasswd -B)" in refused.stderr and "$apr1$" not in refused.stderr


# -- a real browser ------------------------------------------------------------------------------

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium driven by chromedriver (Debian packages), with a fresh profile."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: apt-get install -y chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def test_status_page_in_a_real_browser_shows_hostile_values_as_text(
    apps: AppRunner,
    host_nginx: HostNginx,
    status_companion: Callable[..., tuple[Companion, int]],
    browser: Any,
    tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By

    _, port = status_companion()
    host = unique_host("shown")
    app = apps("shown", environment={"VIRTUAL_HOST": host, "APP_ID": "shown"})
    hostile = apps("hostile", environment={"VIRTUAL_HOST": HOSTILE})
    wait_until(lambda: site(status_json(port), host) and reason_of(port, hostile.name), what="both reported")

    browser.get(f"http://127.0.0.1:{port}/")
    assert browser.title == "companion status"
    sites = browser.find_element(By.ID, "sites-table")
    assert host in [cell.text for cell in sites.find_elements(By.CSS_SELECTOR, ".host")]
    assert app.name in [cell.text for cell in sites.find_elements(By.CSS_SELECTOR, ".container")]
    assert browser.find_element(By.ID, "certificates-table").is_displayed()
    reasons = [cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "#left-out-table .reason")]
    assert any(HOSTILE in text for text in reasons), reasons
    # Shown as text: nothing it carries became an element, and nothing of it ran.
    assert browser.find_elements(By.CSS_SELECTOR, "script, img, iframe, object") == []
    assert browser.execute_script("return window.pwned === undefined") is True
    screenshot = tmp_path / "status.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 10_000
