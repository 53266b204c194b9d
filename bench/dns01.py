"""DNS-01 issuance time beside HTTP-01 in the same run: one certificate at a time through the companion.

Starts a private nginx, a private BIND 9 (tests/harness/bind.py: the run's zone, TSIG-signed updates, and a
`*` A record to 127.0.0.1 so HTTP-01 resolves too), Pebble asking that BIND for every name (nonce rejection
off, PEBBLE_VA_NOSLEEP=1) and `companion run` with ACME_DNS_PLUGIN=dns-rfc2136 and the propagation wait at
its minimum (ACME_DNS_PROPAGATION_SECONDS=0). A warm-up HTTP-01 certificate registers the ACME account;
then `-n` rounds each start one HTTP-01 container and, once it is served, one DNS-01 container
(ACME_CHALLENGE=dns-01). Each is timed from the container's start until nginx serves its certificate,
verified against Pebble's root (`/roots/0`), and its certbot run from the companion's `ordering` to
`issued` log lines. Every container is named cbench-<run>-<n> and removed at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shutil
import ssl
import tempfile
import time
from pathlib import Path

from _common import Fleet, median, sigterm_as_exit

from tests.harness.appimage import ensure_app_image
from tests.harness.bind import Bind
from tests.harness.companion import Companion
from tests.harness.dockerd import ensure_dockerd
from tests.harness.nginx import HostNginx
from tests.harness.pebble import Pebble
from tests.harness.wait import wait_until

LINE_RE = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \w+ [\w.]+: "


def stamp(day: str, millis: str) -> float:
    return dt.datetime.strptime(day, "%Y-%m-%d %H:%M:%S").timestamp() + int(millis) / 1000


def certbot_run(log: str, name: str) -> float | None:
    """Seconds from the companion's `ordering` line for `name` to its `issued` line (the certbot run); None
    until both are logged (nginx may serve the new certificate a moment before the worker logs it)."""
    ordering = re.search(LINE_RE + rf"certificate {re.escape(name)} \(.*\): ordering", log, re.M)
    issued = re.search(LINE_RE + rf"certificate {re.escape(name)}: issued for ", log, re.M)
    if not ordering or not issued:
        return None
    return stamp(*issued.groups()) - stamp(*ordering.groups())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--rounds", type=int, default=3, help="HTTP-01 + DNS-01 certificates each (3)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, certs)")
    args = parser.parse_args()
    sigterm_as_exit()

    daemon = ensure_dockerd()
    client = daemon.client()
    fleet = Fleet(client, ensure_app_image(client))
    work = Path(tempfile.mkdtemp(prefix="cbench-dns01-"))
    nginx = HostNginx(prefix=work / "nginx")
    bind: Bind | None = None
    pebble: Pebble | None = None
    companion: Companion | None = None
    try:
        nginx.start()
        bind = Bind(f"{fleet.run_id}.example.test", every_name="127.0.0.1")
        pebble = Pebble(nginx.http_port, nonce_reject=0, workdir=work / "pebble", dnsserver=bind.address)
        companion = Companion(
            nginx,
            work / "companion",
            LOG_LEVEL="INFO",
            ACME_CA_URI=pebble.directory_url,
            CA_BUNDLE=str(pebble.ca_bundle_path),
            ALLOWED_DOMAINS=f"*.{bind.zone}",
            ACME_DNS_PLUGIN="dns-rfc2136",
            ACME_DNS_CREDENTIALS=str(bind.credentials(work / "rfc2136.ini")),
            ACME_DNS_PROPAGATION_SECONDS="0",
        ).start()
        companion.wait_log("connected to the Docker daemon")
        context = ssl.create_default_context(cadata=pebble.roots_pem())
        print(f"run {fleet.run_id}: zone {bind.zone} on {bind.address}; {pebble.directory_url}")

        def issue(host: str, extra: dict[str, str]) -> tuple[float, float]:
            """(container start -> served over verified HTTPS, certbot run) for one certificate."""
            t0 = time.time()
            fleet.start({"VIRTUAL_HOST": host, "LETSENCRYPT_HOST": host, **extra}, {"APP_ID": host})
            wait_until(lambda: nginx.get(host, https=True, context=context, timeout=2)[0] == 200, 120, 0.02, host)
            took = time.time() - t0
            return took, wait_until(lambda: certbot_run(companion.log(), host), 10, what=f"issued line for {host}")

        warm, _ = issue(f"warmup.{bind.zone}", {})
        print(f"warm-up HTTP-01 certificate (registers the account): {warm:.2f} s")
        results: dict[str, list[tuple[float, float]]] = {"http-01": [], "dns-01": []}
        for k in range(args.rounds):
            results["http-01"].append(issue(f"http-{k}.{bind.zone}", {}))
            results["dns-01"].append(issue(f"dns-{k}.{bind.zone}", {"ACME_CHALLENGE": "dns-01"}))
        print(f"\n{'challenge':<10} {'start -> served (median, all)':<40} certbot run (median)")
        for challenge, timed in results.items():
            served = [t for t, _ in timed]
            runs = [r for _, r in timed]
            listed = ", ".join(f"{t:.2f}" for t in served)
            print(f"{challenge:<10} {median(served):6.2f} s  ({listed}){'':<8} {median(runs):6.2f} s")
        print("baseline: the HTTP-01 rows (self-check through nginx included); DNS-01 waits 0 s for propagation")
        left = bind.challenge_records()
        print(f"_acme-challenge TXT records left in the zone: {len(left)}; Pebble orders: {pebble.orders_seen()}")
        return 0
    except BaseException:
        if companion is not None:
            print("companion log (tail):\n" + companion.log()[-3000:])
        raise
    finally:
        if companion is not None:
            companion.stop()
        if pebble is not None:
            pebble.stop()
        if bind is not None:
            bind.cleanup()
        nginx.stop()
        fleet.cleanup()
        client.close()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        print(f"cleaned up: containers of run {fleet.run_id} removed")


if __name__ == "__main__":
    raise SystemExit(main())
