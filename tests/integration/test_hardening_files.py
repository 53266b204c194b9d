"""Hardening around the files the companion owns (issue 8, item 6): links, FIFOs and bad state planted in
the conf dir and the certs dir. Each test plants what an attacker with write access to those folders would,
against the real companion process, the real nginx, dockerd and (for orders) Pebble and certbot.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import stat
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509

from tests.harness.appimage import AppRunner
from tests.harness.certs import PLACEHOLDER_CN, certbot_layout, common_name
from tests.harness.companion import Companion
from tests.harness.nginx import HostNginx, body
from tests.harness.pebble import Pebble, acme_env
from tests.harness.tls import https_body, served_cert
from tests.harness.wait import wait_until

pytestmark = pytest.mark.integration


def unique_host(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}.hardening.test"


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# -- a link in place of our conf file, and nginx refusing the new configuration ----------------------


def test_link_in_place_of_our_conf_file_is_never_read_through(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion], tmp_path: Path
) -> None:
    conf_dir = host_nginx.conf_dir
    companion = make_companion()
    first = unique_host("first")
    apps("first", environment={"VIRTUAL_HOST": first, "APP_ID": "first"})
    assert wait_until(lambda: body(host_nginx, first) == (200, "first"), timeout=60, what="first site routed")
    companion.wait_idle()
    secret_text = "SECRET-" + uuid.uuid4().hex
    secret = tmp_path / "secret.txt"
    secret.write_text(secret_text + "\n")
    os.chmod(secret, 0o600)

    # Every nginx -t fails from now on, then companion.conf becomes a link to the secret (in one rename).
    user = conf_dir / "zz-user.conf"
    user.write_text("bogus_files_directive on;\n")
    main = conf_dir / "companion.conf"
    (conf_dir / "planted").symlink_to(secret)
    os.replace(conf_dir / "planted", main)
    blocked = unique_host("blocked")
    apps("blocked", environment={"VIRTUAL_HOST": blocked, "APP_ID": "blocked"})
    companion.wait_log(r"nginx rejected the new configuration: [^\n]*bogus_files_directive", timeout=60)

    # For a few retries (1 s, 2 s, ...), look at the conf dir as often as possible: the secret never lands.
    seen: set[str] = set()
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        for path in conf_dir.iterdir():
            try:
                if secret_text in path.read_text(errors="replace"):
                    seen.add(path.name)
            except OSError:
                continue  # a temporary renamed away in between
        time.sleep(0.01)
    assert seen == set(), f"the secret was copied into the conf dir as {seen}"
    assert not main.is_symlink(), "the restore must not put the link (or its content) back"
    warning = companion.wait_log(r"WARNING [^\n]*companion\.conf: is a symbolic link[^\n]*", timeout=5)
    assert warning.endswith(
        f"{main}: is a symbolic link, not a regular file; treated as absent and replaced by the companion's own file"
    ), warning
    assert secret.read_text() == secret_text + "\n" and mode(secret) == 0o600
    assert companion.count(r"companion\.conf: is a symbolic link") == 1, "reported once, not per retry"
    assert body(host_nginx, first) == (200, "first"), "nginx keeps serving its last good configuration"

    # The user fixes their file: our own regular file takes the link's place and serves both sites.
    user.write_text("# fixed\n")
    assert wait_until(lambda: body(host_nginx, blocked) == (200, "blocked"), timeout=60, what="pending change applied")
    assert stat.S_ISREG(os.lstat(main).st_mode) and secret_text not in main.read_text()
    assert body(host_nginx, first) == (200, "first")
    assert companion.alive


# -- the placeholder folder behind a link ---------------------------------------------------------------


def test_placeholder_folder_behind_a_link_is_replaced_not_followed(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion], tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.chmod(outside, 0o755)
    (outside / "keep.txt").write_text("keep\n")
    certs_dir = tmp_path / "companion" / "certs"  # the folder make_companion's companion uses
    (certs_dir / "companion").mkdir(parents=True)
    (certs_dir / "companion" / "placeholder").symlink_to(outside)
    companion = make_companion()
    host = unique_host("placeholder")
    apps("placeholder", labels={"VIRTUAL_HOST": host, "CERT_NAME": f"none-{uuid.uuid4().hex[:8]}"})

    served = wait_until(lambda: served_cert(host_nginx, host), timeout=60, what=f"{host} over TLS")
    assert common_name(served) == PLACEHOLDER_CN
    folder = certs_dir / "companion" / "placeholder"
    assert stat.S_ISDIR(os.lstat(folder).st_mode), "a real folder in place of the link"
    assert mode(folder) == 0o700 and mode(folder / "privkey.pem") == 0o600
    on_disk = x509.load_pem_x509_certificate((folder / "fullchain.pem").read_bytes())
    assert served.serial_number == on_disk.serial_number, "nginx serves the placeholder from the real folder"
    assert mode(outside) == 0o755, "the link's target was chmod-ed"
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"], "something was written through the link"
    companion.wait_log(rf"WARNING [^\n]*{re.escape(str(folder))} was a symbolic link, not the companion's folder", 60)
    assert companion.count(r"was a symbolic link, not the companion's folder") == 1
    assert companion.alive


# -- a FIFO at a certificate ------------------------------------------------------------------------------


def test_fifo_at_a_certificate_does_not_hang_the_loop(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion], tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:8]
    certs_dir = tmp_path / "companion" / "certs"
    good_name, fifo_name = f"good-{tag}", f"fifo-{tag}"
    good, fifo = unique_host("good"), unique_host("fifo")
    certbot_layout(certs_dir, good_name, [good])  # a certificate is presented only for the names it holds
    good_serial = x509.load_pem_x509_certificate((certs_dir / "live" / good_name / "fullchain.pem").read_bytes())
    companion = make_companion()
    apps("good", labels={"VIRTUAL_HOST": good, "CERT_NAME": good_name}, environment={"APP_ID": "good"})
    apps("fifo", labels={"VIRTUAL_HOST": fifo, "CERT_NAME": fifo_name}, environment={"APP_ID": "fifo"})
    assert wait_until(lambda: served_cert(host_nginx, good).serial_number == good_serial.serial_number, timeout=60)
    assert wait_until(lambda: common_name(served_cert(host_nginx, fifo)) == PLACEHOLDER_CN, timeout=60)

    # The lineage appears with a good key and a FIFO for its chain (the certs watcher wakes the loop).
    certbot_layout(tmp_path / "donor", fifo_name, [fifo])
    live = certs_dir / "live" / fifo_name
    live.mkdir(parents=True)
    (live / "privkey.pem").write_bytes((tmp_path / "donor" / "archive" / fifo_name / "privkey1.pem").read_bytes())
    os.mkfifo(live / "fullchain.pem")
    heartbeat = Path(companion.env["HEARTBEAT_FILE"])
    planted_at = time.time()
    companion.wait_log(
        rf"WARNING [^\n]*certificate {re.escape(fifo_name)}: {re.escape(str(live / 'fullchain.pem'))}: "
        r"is a FIFO, not a regular file; its sites fall back to the placeholder",
        timeout=60,
    )
    # The loop keeps running: a later container is routed, and the heartbeat moves on.
    later = unique_host("later")
    apps("later", environment={"VIRTUAL_HOST": later, "APP_ID": "later"})
    assert wait_until(lambda: body(host_nginx, later) == (200, "later"), timeout=60, what="a later site routed")
    assert wait_until(lambda: heartbeat.stat().st_mtime > planted_at, timeout=60, what="a heartbeat after the FIFO")
    assert common_name(served_cert(host_nginx, fifo)) == PLACEHOLDER_CN
    assert served_cert(host_nginx, good).serial_number == good_serial.serial_number
    assert https_body(host_nginx, good, _unverified()) == (200, "good")
    assert stat.S_ISFIFO(os.lstat(live / "fullchain.pem").st_mode), "the FIFO is left alone, not replaced"
    assert companion.count(rf"certificate {re.escape(fifo_name)}: [^\n]*is a FIFO") == 1
    assert companion.alive


def _unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


# -- a state file of the wrong shape ------------------------------------------------------------------------


@pytest.mark.acme
def test_state_file_of_the_wrong_shape_is_moved_aside_and_orders_go_on(
    apps: AppRunner,
    host_nginx: HostNginx,
    pebble: Pebble,
    make_companion: Callable[..., Companion],
    tmp_path: Path,
) -> None:
    tag = uuid.uuid4().hex[:8]
    host = f"state.{tag}.hardening.test"
    state = tmp_path / "companion" / "certs" / "companion" / "acme-state.json"
    state.parent.mkdir(parents=True)
    # Valid JSON, but a time that is a text: before, comparing it raised on every pass and nothing was ordered.
    planted = json.dumps(
        {host: {"domains": [host], "failures": 0, "next_try": "soon", "last_error": "", "in_progress": False}}
    )
    state.write_text(planted)
    companion = make_companion(**acme_env(pebble, f"*.{tag}.hardening.test"))
    apps("state", environment={"VIRTUAL_HOST": host, "LETSENCRYPT_HOST": host, "APP_ID": "state"})
    context = ssl.create_default_context(cadata=pebble.roots_pem())
    assert wait_until(lambda: https_body(host_nginx, host, context) == (200, "state"), timeout=120, interval=0.5)

    line = companion.wait_log(r"WARNING [^\n]*ignoring [^\n]*acme-state\.json[^\n]*", 60)
    assert f"ignoring {state} ('{host}': next_try must be a unix time, not 'soon'); moved it aside to {state}.bad-" in (
        line
    ), line
    [aside] = state.parent.glob("acme-state.json.bad-*")
    assert aside.read_text() == planted, "the bad file is kept for a look"
    saved = wait_until(lambda: json.loads(state.read_text()), what="the state saved again")
    assert saved[host] == {"domains": [host], "failures": 0, "next_try": 0.0, "last_error": "", "in_progress": False}
    assert mode(state) == 0o600
    assert companion.count(r"ignoring [^\n]*acme-state\.json") == 1
    assert "pass failed" not in companion.log()
    assert pebble.orders_seen() == 1
    assert companion.alive
