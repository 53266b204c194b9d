"""Hardening around certificates: broken lineages on disk, the domain allow-list, the ACME challenge
location and the secrecy of keys. Real Pebble, certbot, nginx, dockerd and companion process.

Every test sets ALLOWED_DOMAINS to its own names, so labelled containers that other tests run on the
shared daemon never reach this test's Pebble.
"""

from __future__ import annotations

import base64
import json
import os
import re
import ssl
import stat
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.harness.appimage import AppRunner
from tests.harness.certs import PLACEHOLDER_CN, common_name
from tests.harness.companion import Companion
from tests.harness.nginx import HostNginx
from tests.harness.pebble import Pebble, acme_env
from tests.harness.tls import https_body, served_cert
from tests.harness.wait import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.acme]

# -- 3. broken certificate files ------------------------------------------------------------------


def test_broken_certificates_fall_back_to_the_placeholder_one_by_one(
    apps: AppRunner, host_nginx: HostNginx, pebble: Pebble, make_companion: Callable[..., Companion]
) -> None:
    tag = uuid.uuid4().hex[:8]
    companion = make_companion(**acme_env(pebble, f"*.{tag}.hardening.test"))
    hosts = [f"site{i}.{tag}.hardening.test" for i in range(4)]
    for i, host in enumerate(hosts):
        apps(f"cert{i}", environment={"VIRTUAL_HOST": host, "LETSENCRYPT_HOST": host, "APP_ID": f"site{i}"})
    roots = pebble.roots_pem()
    context = ssl.create_default_context(cadata=roots)
    started = time.monotonic()
    originals = {
        host: wait_until(lambda h=host: served_cert(host_nginx, h, context), timeout=120, interval=0.5, what=host)
        for host in hosts
    }
    issued = time.monotonic() - started
    companion.wait_idle()
    master = host_nginx.master_pid()
    # The CA goes away: re-orders for the broken ones cannot repair anything during the test.
    pebble.stop_pebble()
    live = companion.certs_dir / "live"
    truncated, unlinked, mismatched, healthy = hosts

    # (a) truncated chain in the archive (what live/ links to)
    chain = (live / truncated / "fullchain.pem").resolve()
    assert chain.parent.parent.name == "archive"
    data = chain.read_bytes()
    chain.write_bytes(data[: len(data) // 2])
    # (b) the live/<name>/privkey.pem link is gone
    (live / unlinked / "privkey.pem").unlink()
    # (c) another valid key in place of the right one
    key_path = (live / mismatched / "privkey.pem").resolve()
    other = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_path.write_bytes(other)
    broken_at = time.monotonic()

    expected = {
        truncated: r"unreadable certificate or key",
        unlinked: rf"{re.escape(str(live / unlinked / 'privkey.pem'))}: No such file or directory",
        mismatched: r"private key does not match the certificate",
    }
    for host, reason in expected.items():
        wait_until(
            lambda h=host: common_name(served_cert(host_nginx, h)) == PLACEHOLDER_CN,
            timeout=20,
            what=f"{host} served with the placeholder",
        )
        companion.wait_log(rf"WARNING [^\n]*certificate {re.escape(host)}: {reason}[^\n]*fall back to the placeholder")
        assert host_nginx.check().returncode == 0, host_nginx.check().stderr
        # Still served over plain HTTP (no redirect to a certificate that does not exist).
        assert wait_until(lambda h=host: host_nginx.get(h)[0] == 200, timeout=5)
    fallen_back = time.monotonic() - broken_at
    companion.wait_idle()
    # The healthy one keeps its real certificate, verified against Pebble's root.
    assert served_cert(host_nginx, healthy, context).serial_number == originals[healthy].serial_number
    assert https_body(host_nginx, healthy, context) == (200, "site3")
    assert host_nginx.master_pid() == master, "nginx kept running (reloaded, never restarted)"
    check = host_nginx.check()
    assert check.returncode == 0, check.stderr
    for host, reason in expected.items():
        assert companion.count(rf"WARNING [^\n]*certificate {re.escape(host)}: {reason}") == 1
    assert companion.alive
    print(
        f"\nrow 3: 4 certificates issued in {issued:.1f}s; 3 broken lineages on the placeholder "
        f"{fallen_back:.1f}s after breaking them; the 4th still verified; nginx -t passed throughout"
    )


# -- 6. allow-list ---------------------------------------------------------------------------------


def test_allow_list_refuses_foreign_names_and_orders_nothing_for_them(
    apps: AppRunner, host_nginx: HostNginx, pebble: Pebble, make_companion: Callable[..., Companion]
) -> None:
    tag = uuid.uuid4().hex[:8]
    allowed = f"*.allowed-{tag}.test"
    companion = make_companion(**acme_env(pebble, allowed))
    good = f"x.allowed-{tag}.test"
    apps("allowed", environment={"VIRTUAL_HOST": good, "LETSENCRYPT_HOST": good, "APP_ID": "allowed"})
    context = ssl.create_default_context(cadata=pebble.roots_pem())
    assert wait_until(lambda: https_body(host_nginx, good, context) == (200, "allowed"), timeout=60)
    companion.wait_idle()
    orders = pebble.orders_seen()
    assert orders == 1

    evil = f"evil-{tag}.example.test"
    lookalike = f"x.allowed-{tag}.test.evil-{tag}.example.test"
    claims = {
        # variable the message must name, settings
        "evil-vhost": ("VIRTUAL_HOST", {"VIRTUAL_HOST": evil, "LETSENCRYPT_HOST": evil}),
        "evil-mixed": ("VIRTUAL_HOST", {"VIRTUAL_HOST": f"y.allowed-{tag}.test,{lookalike}"}),
        "evil-cert": ("LETSENCRYPT_HOST", {"VIRTUAL_HOST": f"z.allowed-{tag}.test", "LETSENCRYPT_HOST": evil}),
    }
    containers = {key: apps(key, labels=settings) for key, (_, settings) in claims.items()}
    for key, (variable, _) in claims.items():
        name = containers[key].name
        line = companion.wait_log(rf"WARNING [^\n]*container {re.escape(name)}: [^\n]*")
        assert f"container {name}: {variable}=" in line, line
        assert "rejected" in line and f"not in the allowed domains ({allowed})" in line, line
    companion.wait_idle(quiet=2)
    assert pebble.orders_seen() == orders, "no certificate may be ordered for a refused name"
    assert not re.search(rf"ordering[^\n]*{re.escape(evil)}", companion.log())
    assert not (companion.certs_dir / "live" / evil).exists()
    conf = (host_nginx.conf_dir / "companion.conf").read_text()
    assert evil not in conf and f"y.allowed-{tag}" not in conf and f"z.allowed-{tag}" not in conf
    assert host_nginx.get(evil)[0] == 503
    assert https_body(host_nginx, good, context) == (200, "allowed")
    print(f"\nrow 6: 3 foreign claims refused naming container, variable and {allowed}; Pebble orders stayed {orders}")


# -- 7. the challenge location and secrets ---------------------------------------------------------


def tree(root: Path) -> tuple[list[str], list[str]]:
    """(folders, files) under root, relative."""
    folders, files = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath).relative_to(root)
        folders += [str(base / d) for d in dirnames]
        files += [str(base / f) for f in filenames]
    return sorted(folders), sorted(files)


def test_challenge_location_serves_only_tokens_and_secrets_stay_secret(
    apps: AppRunner, host_nginx: HostNginx, pebble: Pebble, make_companion: Callable[..., Companion]
) -> None:
    tag = uuid.uuid4().hex[:8]
    companion = make_companion(**acme_env(pebble, f"*.{tag}.hardening.test"))
    host = f"secret.{tag}.hardening.test"
    apps("secret", environment={"VIRTUAL_HOST": host, "LETSENCRYPT_HOST": host, "APP_ID": "secret-app"})
    context = ssl.create_default_context(cadata=pebble.roots_pem())
    assert wait_until(lambda: https_body(host_nginx, host, context) == (200, "secret-app"), timeout=60)
    companion.wait_idle()

    # (a) the webroot holds nothing but the (now empty) challenge folders
    webroot = companion.webroot
    folders, files = tree(webroot)
    assert files == [], files
    assert set(folders) <= {".well-known", ".well-known/acme-challenge"}, folders

    # (b) only token names are served from the challenge folder, and nothing outside it
    challenge = webroot / ".well-known" / "acme-challenge"
    secrets = {
        challenge / ".htpasswd": "SECRET-HTPASSWD-" + uuid.uuid4().hex,
        challenge / "token.txt": "SECRET-DOTTED-" + uuid.uuid4().hex,
        webroot / "secret-root": "SECRET-WEBROOT-" + uuid.uuid4().hex,
        webroot.parent / "secret-parent": "SECRET-PARENT-" + uuid.uuid4().hex,
    }
    for path, content in secrets.items():
        path.write_text(content + "\n")
    token, token_body = "Valid_Token-" + uuid.uuid4().hex, "token-body-" + uuid.uuid4().hex
    (challenge / token).write_text(token_body)
    base = "/.well-known/acme-challenge/"
    must_404 = [base, base + ".htpasswd", base + "token.txt", base + "%2ehtpasswd", base + "token%2etxt"]
    traversals = [
        base + up + name
        for name in ("secret-root", "secret-parent")
        for up in (
            "../",
            "../../",
            "../../../",
            "%2e%2e/",
            "%2e%2e/%2e%2e/",
            "..%2f",
            "..%2f..%2f",
            "%2e%2e%2f%2e%2e%2f",
            "..%5c..%5c",
            "%252e%252e/%252e%252e/",
            "....//....//",
            ".%2e/.%2e/",
        )
    ]
    traversals += [base + "..", base + "%2e%2e", "/.well-known/acme-challenge/../../../../../etc/passwd"]
    leaked: list[str] = []
    requests_sent = 0
    statuses: Counter[int] = Counter()
    hosts = [(host, False), (host, True), (f"unknown-{tag}.example.test", False)]
    for name, https in hosts:
        for path in must_404 + traversals + [base + token]:
            status, headers, data = host_nginx.get(name, path, https=https, context=context if https else None)
            requests_sent += 1
            statuses[status] += 1
            text = data.decode(errors="replace")
            leaked += [f"{name} {path}: {content}" for content in secrets.values() if content in text]
            assert "root:x:0:0" not in text, path
            if path in must_404:
                assert status == 404, (name, https, path, status)
            elif path == base + token:
                assert status == 200 and text == token_body, (name, https, status, text)
                assert headers.get_content_type() == "text/plain", headers["Content-Type"]
            else:
                assert status != 200 or not text.startswith("SECRET"), (name, https, path, status)
    assert leaked == []

    # (c) private keys 0600 in 0700 folders
    certs_dir = companion.certs_dir
    keys = [
        p for p in certs_dir.rglob("*") if p.is_file() and not p.is_symlink() and re.match(r"privkey\d*\.pem$", p.name)
    ]
    assert len(keys) >= 2, keys  # the certificate's and the placeholder's
    account_keys = list((certs_dir / "accounts").rglob("private_key.json"))
    assert account_keys, "certbot's account key was not found"
    loose = []
    for key in keys + account_keys:
        mode = stat.S_IMODE(key.stat().st_mode)
        folder = stat.S_IMODE(key.parent.stat().st_mode)
        if mode & 0o077 or (key in keys and mode != 0o600) or folder != 0o700:
            loose.append(f"{key.relative_to(certs_dir)} {mode:o} in {folder:o}")
    live_link = certs_dir / "live" / host / "privkey.pem"
    assert stat.S_IMODE(live_link.parent.stat().st_mode) == 0o700
    assert loose == [], loose

    # (d) no key material in the companion's log or certbot's logs
    needles = ["PRIVATE KEY"]
    for account_key in account_keys:
        needles.append(json.loads(account_key.read_text())["d"])
    for key in keys:
        # The private number itself, as a JWK, base64 or hex would show it (the PEM body also carries the
        # public key, which certbot rightly logs inside the CSR, so its lines are no test).
        numbers = serialization.load_pem_private_key(key.read_bytes(), password=None).private_numbers()
        secret = getattr(numbers, "private_value", None) or numbers.d  # type: ignore[union-attr]
        raw = secret.to_bytes((secret.bit_length() + 7) // 8, "big")
        needles += [
            base64.urlsafe_b64encode(raw).decode().rstrip("="),
            base64.b64encode(raw).decode().rstrip("="),
            raw.hex(),
            raw.hex().upper(),
        ]
    logs = {"companion.log": companion.log()}
    for log_file in (certs_dir / "companion" / "logs").rglob("*"):
        if log_file.is_file():
            logs[str(log_file.relative_to(certs_dir))] = log_file.read_text(errors="replace")
    assert any("letsencrypt.log" in name for name in logs), list(logs)
    found = [(name, needle[:20]) for name, text in logs.items() for needle in needles if needle in text]
    assert found == []
    print(
        f"\nrow 7: {requests_sent} requests at the challenge location (statuses {dict(sorted(statuses.items()))}), "
        f"none leaked; {len(keys)} keys and "
        f"{len(account_keys)} account key private; {len(logs)} logs free of {len(needles)} secrets"
    )
