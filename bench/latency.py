"""Start-to-routable latency through a real companion (host mode), real dockerd and the host's nginx.

1. Starts a private nginx and `companion run` (LOG_LEVEL=INFO, ALLOWED_DOMAINS limited to this run's
   names so other containers on the daemon never enter the config), then 100 background app containers.
2. Sequential: N times, starts one more labelled container after a quiet gap and measures from just
   before the API create call to the first 200 answer carrying the container's APP_ID through nginx
   (polled every 5 ms with its Host header). The Docker `start` event time (timeNano) and the
   companion's "applied ... nginx reloaded" log line split that into phases.
3. Burst: starts 100 more containers at once (8 threads) and counts the companion's nginx reloads until
   all of them are routable.

Every container is named cbench-<run>-<n> and removed at the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import re
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import RUN_LABEL, Fleet, median, ms, percentile, sigterm_as_exit, verdict

from companion.loop import controller
from tests.harness.appimage import ensure_app_image
from tests.harness.companion import Companion
from tests.harness.dockerd import ensure_dockerd
from tests.harness.nginx import HostNginx
from tests.harness.wait import wait_until

TARGET_P50, TARGET_P95 = 0.250, 0.750
TARGET_BURST_RELOADS = 3
POLL = 0.005
APPLIED_RE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) INFO companion\.controller: applied ", re.M)


class StartEvents:
    """Docker `start` event times (seconds, from timeNano) of this run's containers, by container id."""

    def __init__(self, client, run_id: str) -> None:  # noqa: ANN001 - docker.DockerClient
        self.times: dict[str, float] = {}
        self.cond = threading.Condition()
        self.stream = client.api.events(
            decode=True, filters={"type": "container", "event": "start", "label": f"{RUN_LABEL}={run_id}"}
        )
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with contextlib.suppress(Exception):
            for event in self.stream:
                with self.cond:
                    self.times[event["id"]] = event["timeNano"] / 1e9
                    self.cond.notify_all()

    def get(self, cid: str, timeout: float = 2.0) -> float | None:
        with self.cond:
            self.cond.wait_for(lambda: cid in self.times, timeout)
            return self.times.get(cid)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stream.close()


def applied_times(log: str) -> list[float]:
    """time.time() of every "applied ... nginx reloaded" line (the companion logs local time, ms precision)."""
    out = []
    for stamp, millis in APPLIED_RE.findall(log):
        local = dt.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S")
        out.append(local.timestamp() + int(millis) / 1000)
    return out


def routable(nginx: HostNginx, host: str, app_id: str) -> bool:
    try:
        status, _, body = nginx.get(host, timeout=1)
    except OSError:
        return False
    return status == 200 and body.decode(errors="replace").strip() == app_id


def wait_all_routable(nginx: HostNginx, sites: dict[str, str], timeout: float) -> float:
    """Poll every (host -> app id) until all answer; return time.time() when the last one did."""
    pending = dict(sites)

    def still_pending() -> dict[str, str]:
        for host, app_id in list(pending.items()):
            if routable(nginx, host, app_id):
                del pending[host]
        return pending

    wait_until(still_pending, timeout, 0.02, f"all {len(sites)} sites routable", until=lambda left: not left, errors=())
    return time.time()


def start_many(fleet: Fleet, sites: dict[str, str], threads: int) -> None:
    def one(item: tuple[str, str]) -> None:
        host, app_id = item
        fleet.start({"VIRTUAL_HOST": host}, {"APP_ID": app_id})

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, sites.items()))


def stats_line(label: str, values: list[float]) -> str:
    return f"  {label:<34} p50 {ms(median(values))}  p95 {ms(percentile(values, 95))}  max {ms(max(values))}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--background", type=int, default=100, help="routed containers already running (100)")
    parser.add_argument("-n", "--starts", type=int, default=20, help="sequential starts measured (20)")
    parser.add_argument(
        "--gap",
        type=float,
        default=controller.IDLE_GAP + 0.5,
        help=f"seconds between a site becoming routable and the next start (default IDLE_GAP+0.5 = "
        f"{controller.IDLE_GAP + 0.5}); below the controller's IDLE_GAP a start counts as part of a burst",
    )
    parser.add_argument("--burst", type=int, default=100, help="containers in the burst test (100, 0 to skip)")
    parser.add_argument("--threads", type=int, default=8, help="threads starting burst containers (8)")
    parser.add_argument("--log-level", default="INFO", help="the companion's LOG_LEVEL (INFO; DEBUG shows wakes)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (companion log, nginx conf)")
    args = parser.parse_args()
    sigterm_as_exit()

    daemon = ensure_dockerd()
    client = daemon.client()
    image = ensure_app_image(client)
    fleet = Fleet(client, image)
    domain = f"{fleet.run_id}.cbench.test"
    work = Path(tempfile.mkdtemp(prefix="cbench-latency-"))
    nginx = HostNginx(prefix=work / "nginx")
    companion: Companion | None = None
    events: StartEvents | None = None
    try:
        nginx.start()
        companion = Companion(nginx, work / "companion", LOG_LEVEL=args.log_level, ALLOWED_DOMAINS=f"*.{domain}")
        companion.start()
        companion.wait_log("connected to the Docker daemon")
        events = StartEvents(client, fleet.run_id)
        print(f"run {fleet.run_id}: nginx on 127.0.0.1:{nginx.http_port}, work dir {work}")
        print(
            f"controller debounce: idle gap {controller.IDLE_GAP}s; after idle quiet {controller.FIRST_QUIET}s "
            f"max {controller.FIRST_MAX}s; in a burst quiet {controller.BURST_QUIET}s, "
            f"max {controller.BURST_FIRST_MAX}s growing x{controller.BURST_GROWTH} up to {controller.BURST_MAX_CAP}s"
        )

        background = {f"bg{i}.{domain}": f"bg{i}" for i in range(args.background)}
        t = time.time()
        start_many(fleet, background, args.threads)
        started = time.time()
        done = wait_all_routable(nginx, background, timeout=120)
        print(
            f"\nbackground: {len(background)} containers started in {started - t:.1f}s, all routable after "
            f"{done - t:.1f}s, {companion.reloads()} reloads so far"
        )

        rows = []
        for k in range(args.starts):
            time.sleep(args.gap)
            host, app_id = f"seq{k}.{domain}", f"seq{k}"
            polls = {"503": 0, "502": 0, "other": 0}
            cid, t0, t_created, t_started = fleet.start({"VIRTUAL_HOST": host}, {"APP_ID": app_id})

            def answered(host: str = host, app_id: str = app_id, polls: dict[str, int] = polls) -> bool:
                try:
                    status, _, body = nginx.get(host, timeout=1)
                except OSError:
                    polls["other"] += 1
                    return False
                if status == 200 and body.decode(errors="replace").strip() == app_id:
                    return True
                polls[str(status) if str(status) in polls else "other"] += 1
                return False

            wait_until(answered, 30 - (time.time() - t0), POLL, f"{host} routable", errors=())
            t_end = time.time()
            t_event = events.get(cid)
            applied = [a for a in applied_times(companion.log()) if t_event is not None and a >= t_event - 0.002]
            rows.append(
                {
                    "total": t_end - t0,
                    "create": t_created - t0,
                    "start_api": t_started - t_created,
                    "event": t_event,
                    "event_to_end": t_end - t_event if t_event else None,
                    "event_to_applied": (applied[0] - t_event) if applied and t_event else None,
                    "applied_to_end": (t_end - applied[0]) if applied else None,
                    "t0_to_event": (t_event - t0) if t_event else None,
                    "polls": polls,
                }
            )

        print(f"\nsequential starts: {len(rows)} (gap {args.gap:.1f}s, {args.background} sites already routed)")
        total = [r["total"] for r in rows]
        print(stats_line("create call -> routable", total))
        for key, label in (
            ("create", "  API create"),
            ("start_api", "  API start (returns)"),
            ("t0_to_event", "create call -> `start` event"),
            ("event_to_end", "`start` event -> routable"),
            ("event_to_applied", "  event -> 'applied' log line"),
            ("applied_to_end", "  'applied' line -> routable"),
        ):
            values = [r[key] for r in rows if r[key] is not None]
            if values:
                print(stats_line(label, values))
        started = [r["event_to_end"] for r in rows if r["event_to_end"] is not None]
        for label, values in (("container started (`start` event)", started), ("create call, incl. Docker", total)):
            if values:
                print(
                    f"  targets from {label}: p50 < {TARGET_P50 * 1000:.0f} ms: "
                    f"{verdict(median(values), TARGET_P50)}; "
                    f"p95 < {TARGET_P95 * 1000:.0f} ms: {verdict(percentile(values, 95), TARGET_P95)}"
                )
        non200 = {key: sum(r["polls"][key] for r in rows) for key in ("503", "502", "other")}
        print(f"  non-200 polls seen before routable (all starts): {non200}")

        # What the companion's pass costs besides waiting: the snapshot call and nginx -t on this config.
        snaps = []
        for _ in range(5):
            t = time.perf_counter()
            client.api.containers(filters={"status": "running"})
            snaps.append(time.perf_counter() - t)
        tests = []
        for _ in range(5):
            t = time.perf_counter()
            nginx.check()
            tests.append(time.perf_counter() - t)
        print(
            f"  for scale: docker list (the snapshot) median {ms(median(snaps))}, `nginx -t` on the "
            f"{args.background + args.starts}-site config median {ms(median(tests))}"
        )

        if args.burst:
            companion.wait_idle(quiet=controller.IDLE_GAP + 0.5, timeout=30)
            burst = {f"burst{i}.{domain}": f"burst{i}" for i in range(args.burst)}
            before = companion.reloads()
            t = time.time()
            start_many(fleet, burst, args.threads)
            started = time.time()
            done = wait_all_routable(nginx, burst, timeout=120)
            during = companion.reloads() - before
            companion.wait_idle(quiet=controller.IDLE_GAP + 0.5, timeout=60)
            after = companion.reloads() - before
            print(f"\nburst: {args.burst} containers, {args.threads} threads")
            print(f"  all started (API) after        {started - t:6.2f} s")
            print(f"  all routable after             {done - t:6.2f} s")
            print(
                f"  nginx reloads until routable   {during:6d}   target <= {TARGET_BURST_RELOADS}: "
                f"{'meets' if during <= TARGET_BURST_RELOADS else 'MISSES'}"
            )
            print(f"  nginx reloads once settled     {after:6d}")
            applied = [a - t for a in applied_times(companion.log()) if a >= t]
            print("  'applied' lines at (s after the first start): " + ", ".join(f"{a:.2f}" for a in applied))
        return 0
    except BaseException:
        if companion is not None:
            print("companion log (tail):\n" + companion.log()[-3000:])
        raise
    finally:
        if events is not None:
            events.close()
        if companion is not None:
            companion.stop()
        nginx.stop()
        fleet.cleanup()
        client.close()
        if args.keep:
            print(f"\nkept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        print(f"\ncleaned up: containers of run {fleet.run_id} removed")


if __name__ == "__main__":
    raise SystemExit(main())
