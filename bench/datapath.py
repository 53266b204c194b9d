"""Requests per second and p50/p99 latency through nginx with the generated config, beside a hand-written one.

One host, one backend: a static nginx on loopback. Three proxies serve it, each a private nginx (one
worker) started side by side: the config `plan.build` + `render.render` make for the host, the same with
VIRTUAL_KEEPALIVE=off (a new backend connection per request, as before upstream keepalive), and a
reference written by the book (upstream keepalive 32, proxy_http_version 1.1, Connection "", HTTP/2 on TLS
with a self-signed certificate). Each is loaded over plain HTTP/1.1 and HTTPS/1.1 (wrk) and HTTP/2 on TLS
(h2load, latency from its per-request log) in --rounds rounds that run the generated config and the
reference back to back in alternating order, so a noisy machine weighs on both alike. Printed per line:
medians over the rounds, and the median and range of the per-round ratio generated ÷ reference (target:
at least 0.95 for requests per second). No Docker is involved; traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from _common import median, percentile  # sets sys.path for companion/tests

from companion.acme import certs
from companion.core import certificates, plan
from companion.core.container import ContainerInfo
from companion.nginx.render import HTTP2_DIRECTIVE_SINCE, RenderOptions, render
from companion.settings.config import parse_nginx_version
from tests.harness.nginx import HostNginx
from tests.harness.ports import free_port, wait_tcp

HOST = "bench.test"
TARGET_RATIO = 0.95  # generated ÷ reference, requests per second

Run = tuple[float, float, float, str]  # requests/s, p50 s, p99 s, problems

BACKEND = """\
server {{
    listen 127.0.0.1:{port};
    access_log off;
    location / {{ return 200 "ok\\n"; }}
}}
"""

REFERENCE = """\
upstream reference_backend {{
    server 127.0.0.1:{backend};
    keepalive 32;
}}
server {{
    listen 127.0.0.1:{http} default_server;
    listen 127.0.0.1:{https} ssl{http2_listen} default_server;
    {http2_directive}
    server_name {host};
    ssl_certificate {fullchain};
    ssl_certificate_key {privkey};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:reference:10m;
    location / {{
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_pass http://reference_backend;
    }}
}}
"""


def self_signed(folder: Path) -> certificates.CertFiles:
    """A self-signed certificate (the companion's placeholder kind), valid for HOST as far as plan knows."""
    folder.mkdir(parents=True)
    return dataclasses.replace(certs.ensure_placeholder(folder), domains=(HOST,))


def nginx_version() -> tuple[int, ...]:
    done = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
    return parse_nginx_version(done.stderr + done.stdout)


def generated(work: Path, name: str, backend: int, keepalive: str, version: tuple[int, ...]) -> HostNginx:
    """A private nginx serving what the companion renders for one host-network app on 127.0.0.1:`backend`."""
    nginx = HostNginx(prefix=work / name)
    cert = self_signed(work / name / "certs")
    app = ContainerInfo(
        id=f"{len(name):064x}",
        name=name,
        labels={
            "VIRTUAL_HOST": HOST,
            "VIRTUAL_PORT": str(backend),
            "LETSENCRYPT_HOST": HOST,
            "HTTPS_METHOD": "noredirect",
            "VIRTUAL_KEEPALIVE": keepalive,
        },
        network_mode="host",
    )
    # DEFAULT_HOST: the site is the default server, so clients need no SNI for it (h2load sends the IP's).
    desired = plan.build([app], {HOST: cert}, cert, default_host=HOST)
    assert not desired.problems, desired.problems
    options = RenderOptions(
        conf_dir=str(nginx.conf_dir),
        webroot=str(work / name / "webroot"),
        http_port=nginx.http_port,
        https_port=nginx.https_port,
        nginx_version=version,
    )
    for file, content in render(desired, options).items():
        (nginx.conf_dir / file).write_text(content)
    return nginx


def reference(work: Path, backend: int, version: tuple[int, ...]) -> HostNginx:
    nginx = HostNginx(prefix=work / "reference")
    cert = self_signed(work / "reference" / "certs")
    directive = version >= HTTP2_DIRECTIVE_SINCE
    (nginx.conf_dir / "reference.conf").write_text(
        REFERENCE.format(
            backend=backend,
            http=nginx.http_port,
            https=nginx.https_port,
            http2_listen="" if directive else " http2",
            http2_directive="http2 on;" if directive else "",
            host=HOST,
            fullchain=cert.fullchain,
            privkey=cert.privkey,
        )
    )
    return nginx


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def seconds(text: str) -> float:
    value, unit = re.fullmatch(r"([0-9.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * _UNITS[unit]


def wrk(url: str, duration: int, threads: int, connections: int) -> tuple[float, float, float, str]:
    """(requests/s, p50 s, p99 s, problems) from wrk with its latency distribution."""
    done = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "-H", f"Host: {HOST}", url],
        capture_output=True,
        text=True,
        check=False,
    )
    out = done.stdout
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = seconds(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = seconds(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", out)
    return rps, p50, p99, bad.group(0) if bad else ""


# nginx ends an HTTP/2 connection after keepalive_requests (1000 by default) and h2load does not open a
# new one: a timed run then measures how soon the connections run out (a faster proxy spends more of its
# 1000 in the warm-up and scores lower). So h2load sends a fixed count per connection, below that cap.
H2_PER_CONNECTION = 900


def h2load(url: str, per_connection: int, threads: int, connections: int, log: Path) -> Run:
    """(requests/s, p50 s, p99 s, problems) from h2load over TLS (ALPN h2); latencies from its request log."""
    done = subprocess.run(
        ["h2load", f"-t{threads}", f"-c{connections}", f"-n{per_connection * connections}"]
        + ["-H", f":authority: {HOST}", f"--log-file={log}", url],
        capture_output=True,
        text=True,
        check=False,
    )
    out = done.stdout
    rps = float(re.search(r"finished in .*?, ([0-9.]+) req/s", out).group(1))  # type: ignore[union-attr]
    # Each line: start time (µs since epoch), status, duration (µs).
    durations = [int(line.split()[2]) * 1e-6 for line in log.read_text().splitlines() if line.strip()]
    bad = ""
    if "Application protocol: h2" not in out:
        bad = "not HTTP/2"
    failed = re.search(r"requests: .* (\d+) failed, .* (\d+) errored", out)
    if failed and (failed.group(1) != "0" or failed.group(2) != "0"):
        bad = failed.group(0)
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if status and status.group(2, 3, 4) != ("0", "0", "0"):
        bad = status.group(0)
    return rps, percentile(durations, 50), percentile(durations, 99), bad


PROTOCOLS = ("HTTP/1.1", "HTTPS/1.1", "HTTP/2 (TLS)")
# Each round runs the generated config and the reference back to back, in turns, so slow phases of a
# shared machine hit both alike. The keepalive-off config opens a backend connection per request and
# leaves tens of thousands of sockets in TIME_WAIT; it runs first in every round so that each of the two
# follows it equally often.
ORDERS = (
    ("generated, keepalive off", "generated", "reference"),
    ("generated, keepalive off", "reference", "generated"),
)


def load(protocol: str, nginx: HostNginx, args: argparse.Namespace, log: Path, warmup: bool = False) -> Run:
    """One load run against one proxy over one protocol: `args.duration` seconds (wrk) or
    H2_PER_CONNECTION requests per connection (h2load); a warm-up is a 1 s or 200-request run."""
    duration = 1 if warmup else args.duration
    if protocol == "HTTP/1.1":
        return wrk(f"http://127.0.0.1:{nginx.http_port}/", duration, args.threads, args.connections)
    url = f"https://127.0.0.1:{nginx.https_port}/"
    if protocol == "HTTPS/1.1":
        return wrk(url, duration, args.threads, args.connections)
    return h2load(url, 200 if warmup else H2_PER_CONNECTION, args.threads, args.connections, log)


def rounds(protocol: str, proxies: dict[str, HostNginx], args: argparse.Namespace, work: Path) -> dict[str, list[Run]]:
    """`args.rounds` rounds over every proxy, after one unrecorded 1 s warm-up run each."""
    log = work / "h2.log"
    for nginx in proxies.values():
        load(protocol, nginx, args, log, warmup=True)
    runs: dict[str, list[Run]] = {label: [] for label in proxies}
    for n in range(args.rounds):
        for label in ORDERS[n % 2]:
            runs[label].append(load(protocol, proxies[label], args, log))
    return runs


def report(protocol: str, runs: dict[str, list[Run]]) -> bool:
    """Print medians over the rounds and the per-round ratio to the reference; True if any run saw errors."""
    base = [rps for rps, *_ in runs["reference"]]
    failed = False
    for label, done in runs.items():
        ratios = sorted(rps / ref for (rps, *_), ref in zip(done, base, strict=True))
        ratio = median(ratios)
        rps, p50, p99 = (median([run[k] for run in done]) for k in range(3))
        line = f"{protocol:<14} {label:<26} {rps:9.0f} {p50 * 1000:7.2f}ms {p99 * 1000:7.2f}ms {ratio:6.2f}"
        line += f"  {ratios[0]:.2f}-{ratios[-1]:.2f}"
        if label == "generated":
            line += f"  target >= {TARGET_RATIO}: {'meets' if ratio >= TARGET_RATIO else 'MISSES'}"
        bad = "; ".join(sorted({run[3] for run in done if run[3]}))
        if bad:
            line += f"  ({bad})"
            failed = True
        print(line)
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--duration",
        type=int,
        default=2,
        help="seconds per wrk run (default 2); h2load sends 900 requests per connection",
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds per protocol, medians reported (default 5)")
    parser.add_argument("--threads", type=int, default=2, help="load generator threads (default 2)")
    parser.add_argument("--connections", type=int, default=50, help="client connections (default 50)")
    args = parser.parse_args()
    for tool in ("wrk", "h2load"):
        if not shutil.which(tool):
            print(f"{tool} is missing: apt-get install wrk nghttp2-client")
            return 2
    version = nginx_version()
    work = Path(tempfile.mkdtemp(prefix="cbench-datapath-"))
    backend_port = free_port()
    backend = HostNginx(prefix=work / "backend")
    (backend.conf_dir / "backend.conf").write_text(BACKEND.format(port=backend_port))
    proxies = {
        "generated": generated(work, "generated", backend_port, "on", version),
        "generated, keepalive off": generated(work, "nokeepalive", backend_port, "off", version),
        "reference": reference(work, backend_port, version),
    }
    started: list[HostNginx] = []
    failed = False
    try:
        for nginx in [backend, *proxies.values()]:
            nginx.start()
            started.append(nginx)
        wait_tcp("127.0.0.1", backend_port)
        print(
            f"nginx {'.'.join(map(str, version))}, one worker per proxy; backend: static nginx on loopback; "
            f"{args.rounds} rounds of {args.duration} s per config, {args.threads} threads, "
            f"{args.connections} connections; medians over the rounds, ratio = median of the per-round "
            "ratios to the reference, then their range\n"
        )
        print(f"{'protocol':<14} {'config':<26} {'req/s':>9} {'p50':>9} {'p99':>9} {'ratio':>6}  range")
        for protocol in PROTOCOLS:
            failed = report(protocol, rounds(protocol, proxies, args, work)) or failed
        return 1 if failed else 0
    finally:
        for nginx in started:
            nginx.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
