"""Cost of the status report: a loop pass (plan, render, apply, publish) with 1,000 synthetic sites, with and
without a client polling the status endpoint every 100 ms, and the process's RSS.

No Docker: the snapshot is synthetic and nginx -t / reload are `true`, so the figures are the companion's
own work. The baseline is the same pass without the endpoint running.
"""

from __future__ import annotations

import argparse
import http.client
import tempfile
import threading
import time
from pathlib import Path

from _common import median, ms, percentile  # noqa: F401 - sets sys.path for companion/tests

from bench.render import synthetic
from companion.core.ports import Snapshot
from companion.loop.controller import Controller
from companion.nginx.apply import NginxControl
from companion.serve.statusserver import StatusServer
from companion.settings.config import Settings
from tests.harness.ports import free_port

POLL_EVERY = 0.1
PATHS = ("/", "/status.json", "/metrics")


class SyntheticDocker:
    def __init__(self, sites: int) -> None:
        self.snapshot_value = Snapshot(containers=tuple(synthetic(sites)[0]), nginx=())

    def snapshot(self) -> Snapshot:
        return self.snapshot_value


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def passes(controller: Controller, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        started = time.monotonic()
        report = controller.run_pass()
        controller.publish(report, time.time(), time.monotonic() - started)
        times.append(time.monotonic() - started)
    return times


def poll(port: int, stop: threading.Event, served: list[int]) -> None:
    while not stop.is_set():
        for path in PATHS:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", path)
            answer = connection.getresponse()
            answer.read()
            connection.close()
            served.append(answer.status)
        stop.wait(POLL_EVERY)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sites", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cbench-status-") as tmp:
        work = Path(tmp)
        for folder in ("conf", "certs", "webroot"):
            (work / folder).mkdir()
        settings = Settings(
            conf_dir=str(work / "conf"),
            certs_dir=str(work / "certs"),
            webroot=str(work / "webroot"),
            reload="true",
            nginx_test="true",
            heartbeat_file=str(work / "heartbeat"),
        )
        control = NginxControl("true", "true")
        control.version = lambda: (1, 22, 1)  # type: ignore[method-assign] - no nginx binary asked
        controller = Controller(settings, SyntheticDocker(args.sites), control)  # type: ignore[arg-type]
        passes(controller, 3)  # first apply writes everything; warm caches
        baseline = passes(controller, args.reps)
        rss_before = rss_mb()

        port = free_port()
        server = StatusServer(("127.0.0.1", port), lambda: controller.latest, controller.metrics, work / "heartbeat")
        threading.Thread(target=server.serve_forever, daemon=True).start()
        stop, served = threading.Event(), []
        poller = threading.Thread(target=poll, args=(port, stop, served), daemon=True)
        poller.start()
        polled = passes(controller, args.reps)
        rss_after = rss_mb()
        stop.set()
        poller.join()
        page_bytes = {}
        for path in PATHS:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            connection.request("GET", path)
            page_bytes[path] = len(connection.getresponse().read())
            connection.close()
        server.shutdown()
        server.server_close()

    print(f"{args.sites:,} sites, {args.reps} passes each (plan + render + apply no-op + publish the report)")
    print(f"  baseline, endpoint off     median {ms(median(baseline))}  p95 {ms(percentile(baseline, 95))}")
    print(f"  polled every {POLL_EVERY * 1000:.0f} ms ({len(served)} requests to {', '.join(PATHS)})")
    print(f"                             median {ms(median(polled))}  p95 {ms(percentile(polled, 95))}")
    print(f"  RSS {rss_before:.1f} MB before polling, {rss_after:.1f} MB after")
    print("  answer sizes " + ", ".join(f"{path} {size / 1024:.0f} KiB" for path, size in page_bytes.items()))
    return 0 if all(code == 200 for code in served) else 1


if __name__ == "__main__":
    raise SystemExit(main())
