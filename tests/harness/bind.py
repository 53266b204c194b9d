"""Debian's BIND 9 as a private authoritative server on a loopback port: one zone, TSIG-signed dynamic updates.

Not the system service: `named -g` with its own config, zone and journal in a folder of its own under
/var/cache/bind (the package's cache dir: Debian's AppArmor profile for named lets it write there, not
in /tmp), run as the current user. Pebble's `-dnsserver` points at it for DNS-01 validation, and
certbot's dns-rfc2136 plugin adds and removes the `_acme-challenge` TXT records with the TSIG key
(RFC 2136).
"""

from __future__ import annotations

import base64
import contextlib
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from .ports import free_port
from .wait import wait_until

NAMED = "/usr/sbin/named"
DIG = "/usr/bin/dig"
CACHE = Path("/var/cache/bind")
KEY_NAME = "companion-test-key"
ALGORITHM = "hmac-sha256"


class Bind:
    """An authoritative `named` for `zone` on 127.0.0.1:`port` (UDP and TCP); updates need the TSIG key."""

    def __init__(self, zone: str, every_name: str = "") -> None:
        """`every_name`, an IPv4 address, answers A queries for every name in the zone (a `*` record), as
        challtestsrv does, so the same Pebble can validate HTTP-01 too."""
        for exe, package in ((NAMED, "bind9"), (DIG, "bind9-dnsutils")):
            if not Path(exe).exists():
                raise RuntimeError(f"{exe} is missing: apt-get install {package}")
        self.zone = zone.rstrip(".")
        if not CACHE.is_dir():
            raise RuntimeError(f"{CACHE} is missing: apt-get install bind9")
        self.workdir = Path(tempfile.mkdtemp(prefix="companion-test-", dir=CACHE))
        self.port = free_port(udp=True)
        self.secret = base64.b64encode(secrets.token_bytes(32)).decode()
        self.log_path = self.workdir / "named.log"
        self.config_path = self.workdir / "named.conf"
        (self.workdir / f"{self.zone}.zone").write_text(
            "$TTL 60\n"
            f"@ IN SOA ns.{self.zone}. hostmaster.{self.zone}. 1 60 60 600 60\n"
            f"@ IN NS ns.{self.zone}.\n"
            "ns IN A 127.0.0.1\n" + (f"* IN A {every_name}\n" if every_name else "")
        )
        self.config_path.write_text(
            f"""options {{
    directory "{self.workdir}";
    pid-file "{self.workdir}/named.pid";
    session-keyfile "{self.workdir}/session.key";
    managed-keys-directory "{self.workdir}";
    listen-on port {self.port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
    allow-transfer {{ 127.0.0.1; }};
}};
controls {{ }};
key "{KEY_NAME}" {{ algorithm {ALGORITHM}; secret "{self.secret}"; }};
zone "{self.zone}" {{
    type primary;
    file "{self.workdir}/{self.zone}.zone";
    update-policy {{ grant {KEY_NAME} subdomain {self.zone}. TXT; }};
}};
"""
        )
        self._process: subprocess.Popen[bytes] | None = None
        try:
            self.start()
        except BaseException:
            self.stop()
            raise

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                [NAMED, "-g", "-4", "-c", str(self.config_path)],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = self._process

        def answers() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"named exited with {process.returncode}:\n{self.log()[-3000:]}")
            return bool(self._dig("SOA", self.zone))

        wait_until(answers, timeout, 0.1, f"named to answer for {self.zone}", errors=(), logs=[("named log", self.log)])

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _dig(self, rtype: str, name: str) -> list[str]:
        done = subprocess.run(
            [DIG, "@127.0.0.1", "-p", str(self.port), "+short", "+time=1", "+tries=1", rtype, name],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        return done.stdout.split("\n")[:-1] if done.returncode == 0 else []

    def txt(self, name: str) -> list[str]:
        """The TXT records `named` answers for `name` right now (dig, as any resolver would ask)."""
        return self._dig("TXT", name)

    def challenge_records(self) -> dict[str, list[str]]:
        """Every `_acme-challenge` TXT record left in the zone, by name (an AXFR: the zone as the server holds it)."""
        done = subprocess.run(
            [DIG, "@127.0.0.1", "-p", str(self.port), "+noall", "+answer", "AXFR", self.zone],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        found: dict[str, list[str]] = {}
        for line in done.stdout.splitlines():
            fields = line.split(None, 4)
            if len(fields) == 5 and fields[3] == "TXT" and fields[0].startswith("_acme-challenge."):
                found.setdefault(fields[0], []).append(fields[4])
        return found

    def credentials(self, path: Path, secret: str | None = None, mode: int = 0o600) -> Path:
        """Write certbot's dns-rfc2136 credentials file for this server (the right secret unless one is given)."""
        path.write_text(
            f"dns_rfc2136_server = 127.0.0.1\n"
            f"dns_rfc2136_port = {self.port}\n"
            f"dns_rfc2136_name = {KEY_NAME}\n"
            f"dns_rfc2136_secret = {self.secret if secret is None else secret}\n"
            f"dns_rfc2136_algorithm = {ALGORITHM.upper()}\n"
        )
        path.chmod(mode)
        return path

    def __enter__(self) -> Bind:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.cleanup()
