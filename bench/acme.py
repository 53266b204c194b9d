"""Certificate throughput: 20 single-name certificates from a real Pebble through the companion (host mode).

Starts a private nginx, Pebble (nonce rejection off, PEBBLE_VA_NOSLEEP=1, validating HTTP-01 on nginx's
port) and `companion run` with ACME_CA_URI/CA_BUNDLE pointing at Pebble, then N labelled app containers
(VIRTUAL_HOST = LETSENCRYPT_HOST = bench-<k>.<run>.example.test) at once. Waits until nginx serves every
one of them over HTTPS with a chain that verifies against Pebble's current root and names the host,
then prints the total time, time per certificate, nginx reloads and Pebble's orders.

Every container is named cbench-<run>-<n> and removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shutil
import ssl
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import Fleet, median, percentile, sigterm_as_exit

from tests.harness.appimage import ensure_app_image
from tests.harness.companion import Companion
from tests.harness.dockerd import ensure_dockerd
from tests.harness.nginx import HostNginx
from tests.harness.pebble import Pebble
from tests.harness.wait import wait_gone

LINE_RE = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) \w+ [\w.]+: "
ISSUED_RE = re.compile(LINE_RE + r"certificate (\S+): issued for ", re.M)
ORDERING_RE = re.compile(LINE_RE + r"certificate (\S+) \(.*\): ordering", re.M)
APPLIED_RE = re.compile(LINE_RE + r"applied ", re.M)


def stamp(day: str, millis: str) -> float:
    return dt.datetime.strptime(day, "%Y-%m-%d %H:%M:%S").timestamp() + int(millis) / 1000


def served(nginx: HostNginx, host: str, context: ssl.SSLContext) -> bool:
    """True when nginx serves `host` over HTTPS with a chain from Pebble's root naming `host` (no -k)."""
    try:
        status, _, _ = nginx.get(host, https=True, context=context, timeout=2)
    except (OSError, ssl.SSLError):
        return False
    return status == 200


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--certs", type=int, default=20, help="certificates (one container each) (20)")
    parser.add_argument("--timeout", type=float, default=150, help="give up after this many seconds (150)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, certs)")
    args = parser.parse_args()
    sigterm_as_exit()

    daemon = ensure_dockerd()
    client = daemon.client()
    image = ensure_app_image(client)
    fleet = Fleet(client, image)
    domain = f"{fleet.run_id}.example.test"
    work = Path(tempfile.mkdtemp(prefix="cbench-acme-"))
    nginx = HostNginx(prefix=work / "nginx")
    pebble: Pebble | None = None
    companion: Companion | None = None
    try:
        nginx.start()
        pebble = Pebble(nginx.http_port, nonce_reject=0, workdir=work / "pebble")
        companion = Companion(
            nginx,
            work / "companion",
            LOG_LEVEL="INFO",
            ACME_CA_URI=pebble.directory_url,
            CA_BUNDLE=str(pebble.ca_bundle_path),
            ALLOWED_DOMAINS=f"*.{domain}",
        ).start()
        companion.wait_log("connected to the Docker daemon")
        companion.wait_idle(quiet=1.0)
        context = ssl.create_default_context(cadata=pebble.roots_pem())
        reloads_before = companion.reloads()
        print(f"run {fleet.run_id}: nginx http {nginx.http_port}, https {nginx.https_port}; {pebble.directory_url}")

        hosts = [f"bench-{k}.{domain}" for k in range(args.certs)]
        t0 = time.time()

        def start(host: str) -> None:
            fleet.start({"VIRTUAL_HOST": host, "LETSENCRYPT_HOST": host}, {"APP_ID": host})

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(start, hosts))
        t_started = time.time()
        pending = set(hosts)
        first_served: dict[str, float] = {}

        def still_pending() -> set[str]:
            for host in sorted(pending):
                if served(nginx, host, context):
                    first_served[host] = time.time()
                    pending.discard(host)
            return pending

        wait_gone(still_pending, args.timeout)  # the report below counts what was never served
        t_done = time.time()
        reloads = companion.reloads() - reloads_before
        log = companion.log()

        print(f"\n{args.certs} containers started (API) after {t_started - t0:6.2f} s")
        if pending:
            print(f"TIMED OUT after {args.timeout:.0f}s: {len(pending)} not served, e.g. {sorted(pending)[0]}")
        total = (max(first_served.values()) if first_served else t_done) - t0
        print(f"all {len(first_served)} certificates served over HTTPS after {total:6.2f} s (from the first start)")
        if first_served:
            print(f"time per certificate                     {total / len(first_served):6.2f} s")
        print(f"nginx reloads                            {reloads:6d}")
        print(
            f"Pebble orders seen                       {pebble.orders_seen():6d}"
            f"   (newOrder requests {pebble.order_requests_seen()})"
        )

        ordering = {m[2]: stamp(m[0], m[1]) for m in ORDERING_RE.findall(log)}
        issued = sorted((stamp(m[0], m[1]), m[2]) for m in ISSUED_RE.findall(log))
        if issued:
            # certbot runs one at a time: the gap between consecutive "issued" lines is one certbot run
            # (self-check included); the first one also registers the ACME account.
            first_order = min(ordering.values()) if ordering else t0
            runs = [issued[0][0] - first_order] + [b[0] - a[0] for a, b in zip(issued, issued[1:], strict=False)]
            print(f"first 'ordering' log line after          {first_order - t0:6.2f} s")
            print(
                f"one certbot run (ordering/previous issued -> issued): median {median(runs):.2f} s, "
                f"p95 {percentile(runs, 95):.2f} s, first {runs[0]:.2f} s"
            )
            lags = [first_served[h] - t for t, h in issued if h in first_served]
            if lags:
                print(f"'issued' log line -> served over HTTPS:   median {median(lags):.2f} s, max {max(lags):.2f} s")
        applied = [stamp(m[0], m[1]) - t0 for m in APPLIED_RE.findall(log)]
        print("'applied' (reload) lines at s: " + ", ".join(f"{a:.1f}" for a in applied if a >= 0))
        certs = companion.cli("certs")
        valid = sum(1 for line in certs.stdout.splitlines() if line.rstrip().endswith("valid"))
        print(f"`companion certs`: {valid} valid")
        return 1 if pending else 0
    except BaseException:
        if companion is not None:
            print("companion log (tail):\n" + companion.log()[-3000:])
        raise
    finally:
        if companion is not None:
            companion.stop()
        if pebble is not None:
            pebble.stop()
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
