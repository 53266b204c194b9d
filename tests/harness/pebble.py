"""Debian's Pebble ACME test CA and its challtestsrv DNS, on loopback with free ports."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import requests

from .certs import ExtendedKeyUsageOID, build_cert, cert_pem, write_pair
from .ports import free_port
from .wait import wait_until

PEBBLE = "/usr/bin/pebble"
# Pebble >= 2.10 (ACME profiles): the package of Debian's newest suite, unpacked by .ci/run (binaries need only libc).
PEBBLE_PROFILES = "/opt/pebble-profiles/usr/bin/pebble"
PEBBLE_PROFILES_MISSING = (
    f"{PEBBLE_PROFILES} is missing: ACME profiles need Pebble >= 2.10, which Debian 12 and 13 do not ship. "
    ".ci/run installs it: the pebble package of Debian forky (or sid) from the mirror apt uses, checked "
    "against the SHA256 in that suite's Packages index and unpacked with `dpkg-deb -x` into /opt/pebble-profiles"
)
CHALLTESTSRV = "/usr/bin/pebble-challtestsrv"
NINETY_DAYS = 90 * 24 * 3600
# What Pebble 2.4 logs for newOrder: every request first logs "POST /order-plz -> calling handler()"
# (also requests then rejected, e.g. for a bad nonce); an accepted one then logs
# 'Added order "<id>" to the db' from its memory store.
NEW_ORDER_RE = re.compile(r'Added order "[^"]+" to the db')
ORDER_REQUEST_RE = re.compile(r"POST /order-plz -> calling handler\(\)")
# certbot 5 has no certbot/__main__.py, so ``python -m certbot`` fails; this is the equivalent.
CERTBOT = [sys.executable, "-c", "import sys; from certbot.main import main; sys.exit(main())"]


def _write_listener_certs(directory: Path, listen: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """Create a throwaway CA and a server cert for Pebble's HTTPS listeners (localhost, 127.0.0.1, ``listen``)."""
    now = dt.datetime.now(dt.UTC)
    validity = {"not_before": now - dt.timedelta(minutes=5), "not_after": now + dt.timedelta(days=30)}
    ca, ca_key = build_cert("companion tests: Pebble listener CA", ca=True, path_length=0, key_ids=True, **validity)
    cert, key = build_cert(
        "localhost",
        sans=["localhost"],
        ips=sorted({"127.0.0.1", listen}),
        issuer=(ca, ca_key),
        ca=False,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        key_ids=True,
        **validity,
    )
    ca_path, cert_path, key_path = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    ca_path.write_bytes(cert_pem(ca))
    write_pair(cert_path, key_path, cert, key)
    return ca_path, cert_path, key_path


def acme_env(pebble: Pebble, allowed: str, **extra: str) -> dict[str, str]:
    """The companion's settings for ordering from `pebble`, limited to the names `allowed` (ALLOWED_DOMAINS)."""
    return {
        "ACME_CA_URI": pebble.directory_url,
        "CA_BUNDLE": str(pebble.ca_bundle_path),
        "ALLOWED_DOMAINS": allowed,
        **extra,
    }


class Pebble:
    """Pebble plus challtestsrv (DNS only). Every name resolves to ``default_ipv4`` (127.0.0.1).

    ``http_port`` is where Pebble's VA sends HTTP-01 validations (the port nginx serves HTTP on).
    ``nonce_reject`` sets PEBBLE_WFE_NONCEREJECT (percent); ``None`` keeps Pebble's default of 5.
    ``va_sleep`` keeps Pebble's random pause before each validation (PEBBLE_VA_NOSLEEP is not set), so
    an order stays in flight for seconds.
    ``listen`` is the address Pebble's ACME and management listeners bind (e.g. a bridge address that
    containers on other network namespaces reach); challtestsrv stays on loopback.
    The constructor starts both processes; ``stop()``/``start()`` take them down and up again on the
    same ports (a fresh Pebble has a new issuing root and forgets accounts and orders).
    ``dnsserver`` ("127.0.0.1:PORT", e.g. tests/harness/bind.py's) replaces challtestsrv as the DNS Pebble's VA
    asks: then DNS-01 is validated against the TXT records that server holds, and challtestsrv is not started.
    ``eab_keys`` (key id -> base64url HMAC key) makes Pebble require external account binding with those keys.
    ``profiles`` (name -> validity in seconds) runs Pebble 2.10 offering those ACME profiles (an order naming
    none gets a random one of them, on purpose: name the profile in tests).
    """

    def __init__(
        self,
        http_port: int,
        validity: int = NINETY_DAYS,
        nonce_reject: int | None = 0,
        workdir: str | os.PathLike[str] | None = None,
        tls_port: int | None = None,
        default_ipv4: str = "127.0.0.1",
        start: bool = True,
        va_sleep: bool = False,
        dnsserver: str | None = None,
        listen: str = "127.0.0.1",
        eab_keys: dict[str, str] | None = None,
        profiles: dict[str, int] | None = None,
    ) -> None:
        self.exe = PEBBLE_PROFILES if profiles else PEBBLE
        if profiles and not Path(PEBBLE_PROFILES).exists():
            raise RuntimeError(PEBBLE_PROFILES_MISSING)
        for exe in (PEBBLE,) if dnsserver else (PEBBLE, CHALLTESTSRV):
            if not Path(exe).exists():
                raise RuntimeError(f"{exe} is missing: apt-get install pebble")
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="ctest-pebble-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.http_port = http_port
        self.tls_port = tls_port or free_port()
        self.validity = validity
        self.nonce_reject = nonce_reject
        self.va_sleep = va_sleep
        self.default_ipv4 = default_ipv4
        self.listen = listen
        self.acme_port = free_port()
        self.mgmt_port = free_port()
        self.dnsserver = dnsserver
        self.dns_port = int(dnsserver.rpartition(":")[2]) if dnsserver else free_port(udp=True)
        self.chall_mgmt_port = free_port()
        self.ca_bundle_path, cert, key = _write_listener_certs(self.workdir, listen)
        self.config_path = self.workdir / "pebble-config.json"
        self.config_path.write_text(
            json.dumps(
                {
                    "pebble": {
                        "listenAddress": f"{listen}:{self.acme_port}",
                        "managementListenAddress": f"{listen}:{self.mgmt_port}",
                        "certificate": str(cert),
                        "privateKey": str(key),
                        "httpPort": http_port,
                        "tlsPort": self.tls_port,
                        "ocspResponderURL": "",
                        "externalAccountBindingRequired": bool(eab_keys),
                        "externalAccountMACKeys": eab_keys or {},
                        "certificateValidityPeriod": validity,
                        **(
                            {"profiles": {n: {"description": n, "validityPeriod": s} for n, s in profiles.items()}}
                            if profiles
                            else {}
                        ),
                    }
                },
                indent=2,
            )
        )
        self.log_path = self.workdir / "pebble.log"
        self.chall_log_path = self.workdir / "challtestsrv.log"
        self._pebble: subprocess.Popen[bytes] | None = None
        self._chall: subprocess.Popen[bytes] | None = None
        if start:
            try:
                self.start()
            except BaseException:
                self.stop()
                raise

    @property
    def directory_url(self) -> str:
        """The ACME directory URL (HTTPS, signed by ``ca_bundle_path``)."""
        return f"https://{self.listen}:{self.acme_port}/dir"

    @property
    def mgmt_url(self) -> str:
        return f"https://{self.listen}:{self.mgmt_port}"

    @property
    def chall_url(self) -> str:
        return f"http://127.0.0.1:{self.chall_mgmt_port}"

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self, timeout: float = 20.0) -> None:
        """Start challtestsrv and Pebble and wait until the directory answers."""
        if self._pebble is not None and self._pebble.poll() is None:
            return
        if not self.dnsserver and (self._chall is None or self._chall.poll() is not None):
            self._chall = self._spawn(
                [
                    CHALLTESTSRV,
                    "-management",
                    f"127.0.0.1:{self.chall_mgmt_port}",
                    "-dns01",
                    f"127.0.0.1:{self.dns_port}",
                    "-http01",
                    "",
                    "-https01",
                    "",
                    "-tlsalpn01",
                    "",
                    "-defaultIPv4",
                    self.default_ipv4,
                    "-defaultIPv6",
                    "",
                ],
                self.chall_log_path,
                {},
            )
            self._wait(
                lambda: requests.get(f"{self.chall_url}/", timeout=1),
                self._chall,
                self.chall_log_path,
                timeout,
            )
        env = {} if self.va_sleep else {"PEBBLE_VA_NOSLEEP": "1"}
        if self.nonce_reject is not None:
            env["PEBBLE_WFE_NONCEREJECT"] = str(self.nonce_reject)
        self._pebble = self._spawn(
            [self.exe, "-config", str(self.config_path), "-dnsserver", self.dnsserver or f"127.0.0.1:{self.dns_port}"],
            self.log_path,
            env,
        )
        verify = str(self.ca_bundle_path)
        self._wait(
            lambda: requests.get(self.directory_url, verify=verify, timeout=1).raise_for_status(),
            self._pebble,
            self.log_path,
            timeout,
        )

    def stop(self) -> None:
        """Stop Pebble and challtestsrv (the CA becomes unreachable)."""
        for proc in (self._pebble, self._chall):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)

    def stop_pebble(self) -> None:
        """Stop only Pebble (DNS stays up); ``start()`` brings it back."""
        if self._pebble is not None and self._pebble.poll() is None:
            self._pebble.terminate()
            self._pebble.wait(5)

    def cleanup(self) -> None:
        """Stop everything and remove the work dir."""
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _spawn(self, argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(log, "ab") as f:
            return subprocess.Popen(
                argv,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
                start_new_session=True,
            )

    @staticmethod
    def _wait(probe: Callable[[], object], proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
        def answers() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{_tail(log)}")
            probe()
            return True

        wait_until(answers, timeout, 0.05, f"{proc.args[0]} to answer", errors=requests.RequestException, logs=[log])

    # -- CA material -------------------------------------------------------------------------------
    def _mgmt_get(self, path: str) -> str:
        resp = requests.get(f"{self.mgmt_url}{path}", verify=str(self.ca_bundle_path), timeout=5)
        resp.raise_for_status()
        return resp.text

    def roots_pem(self) -> str:
        """PEM of the current issuing root (new at each Pebble start)."""
        return self._mgmt_get("/roots/0")

    def intermediates_pem(self) -> str:
        """PEM of the current intermediate."""
        return self._mgmt_get("/intermediates/0")

    # -- DNS (challtestsrv) ------------------------------------------------------------------------
    def _chall_post(self, path: str, payload: dict[str, object]) -> None:
        resp = requests.post(f"{self.chall_url}{path}", json=payload, timeout=5)
        resp.raise_for_status()

    def set_default_ipv4(self, ip: str) -> None:
        """Answer every A query without a specific record with ``ip``."""
        self._chall_post("/set-default-ipv4", {"ip": ip})
        self.default_ipv4 = ip

    def add_a_record(self, host: str, ip: str | list[str]) -> None:
        """Answer A queries for ``host`` with ``ip`` (one or more addresses)."""
        self._chall_post("/add-a", {"host": host, "addresses": [ip] if isinstance(ip, str) else ip})

    def clear_a_record(self, host: str) -> None:
        """Drop the A record for ``host`` (the default address applies again)."""
        self._chall_post("/clear-a", {"host": host})

    def resolve_a(self, host: str, timeout: float = 2.0) -> list[str]:
        """Ask challtestsrv's DNS for ``host``'s A records, as Pebble's VA would."""
        qid = random.randrange(65536)
        qname = b"".join(bytes([len(p)]) + p.encode() for p in host.rstrip(".").split(".")) + b"\0"
        query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", 1, 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(query, ("127.0.0.1", self.dns_port))
            data = s.recv(4096)
        _, _, qd, an, _, _ = struct.unpack("!HHHHHH", data[:12])
        pos = 12
        for _ in range(qd):
            pos = _skip_name(data, pos) + 4
        out = []
        for _ in range(an):
            pos = _skip_name(data, pos)
            rtype, _, _, rdlen = struct.unpack("!HHIH", data[pos : pos + 10])
            pos += 10
            if rtype == 1 and rdlen == 4:
                out.append(socket.inet_ntoa(data[pos : pos + 4]))
            pos += rdlen
        return out

    # -- observation -------------------------------------------------------------------------------
    def log_text(self) -> str:
        """Everything Pebble logged (across restarts)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def orders_seen(self) -> int:
        """How many new orders Pebble accepted and stored (from its log, summed across restarts)."""
        return len(NEW_ORDER_RE.findall(self.log_text()))

    def order_requests_seen(self) -> int:
        """How many newOrder POSTs reached Pebble, including ones it rejected (e.g. bad nonce)."""
        return len(ORDER_REQUEST_RE.findall(self.log_text()))

    def __enter__(self) -> Pebble:
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.cleanup()


def _tail(log: Path, chars: int = 3000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def _skip_name(data: bytes, pos: int) -> int:
    while True:
        length = data[pos]
        if length == 0:
            return pos + 1
        if length & 0xC0 == 0xC0:
            return pos + 2
        pos += 1 + length
