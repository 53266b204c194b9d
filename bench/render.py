"""Time the pure core (plan.build + render.render) for synthetic sites, and the real `nginx -t` on its output.

No Docker is involved. Sites are server blocks (one per hostname); containers carry one to three
hostnames, every seventh adds a VIRTUAL_PATH location to its neighbour's hosts, every fourth asks for a
certificate (most of which already exist on disk, the rest get the placeholder).

`nginx -t` is also timed on a baseline built in the same run from the same desired state: the same
servers and certificates, each location's proxy_pass straight to one backend's address, no upstream
blocks. Their ratio is what the upstreams cost nginx (target: at most 1.3 at 10,000 sites).

Unless --no-reload, each of the two is then started and reloaded with SIGHUP (as the companion's docker and
agent modes do), timed until a new worker runs and until a new worker answers a request on an extra
marker server that replies with the answering worker's pid.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import http.client
import os
import shutil
import signal
import subprocess
import tempfile
import time
import tracemalloc
from pathlib import Path

from _common import ROOT, median, ms, percentile, verdict  # noqa: F401 - sets sys.path for companion/tests

from companion.acme import certs
from companion.core import certificates, plan
from companion.core.container import ContainerInfo
from companion.nginx.render import RenderOptions, render
from companion.settings.config import parse_nginx_version
from tests.harness.nginx import HostNginx
from tests.harness.ports import free_port

TARGET_RENDER_1000 = 0.050  # seconds: plan + render for 1,000 sites
TARGET_CHECK_RATIO = 1.3  # nginx -t of the generated config over the direct-address baseline, at 10,000 sites
CERT_POOL = 16  # distinct certificate files the existing CertFiles point at


def synthetic(sites: int) -> tuple[list[ContainerInfo], list[tuple[str, ...]]]:
    """Containers whose hostnames add up to exactly `sites` server blocks; also each certificate's names."""
    containers: list[ContainerInfo] = []
    cert_names: list[tuple[str, ...]] = []
    hosts_made = 0
    i = 0
    previous: dict[str, str] = {}
    while hosts_made < sites:
        address = f"172.{16 + i // 65000 % 16}.{i // 250 % 256}.{i % 250 + 2}"
        env = {"APP_ID": f"app{i}"}
        if i % 7 == 3 and previous:
            # The previous container's hosts (and certificate) under a path: a second location, not a new site.
            labels = {**previous, "VIRTUAL_PATH": "/api/v1/"}
        else:
            count = min(1 + i % 3, sites - hosts_made)
            hosts = tuple(f"site{i}-{j}.bench{i % 50}.example.test" for j in range(count))
            hosts_made += count
            labels = {"VIRTUAL_HOST": ",".join(hosts)}
            if i % 5 == 1:
                labels["VIRTUAL_PORT"] = "8080"
            if i % 4 == 0:
                labels["LETSENCRYPT_HOST"] = ",".join(hosts)
                cert_names.append(hosts)
            previous = {k: v for k, v in labels.items() if k != "VIRTUAL_PORT"}
        containers.append(
            ContainerInfo(
                id=f"{i:064x}",
                name=f"app-{i:06d}",
                labels=labels,
                env=env,
                networks={"bridge": address},
                exposed_ports=("80/tcp",),
            )
        )
        i += 1
    return containers, cert_names


def make_cert_pool(certs_dir: Path) -> list[certificates.CertFiles]:
    """A few real self-signed lineages so that nginx -t loads real files (it parses every one it names)."""
    pool = []
    for n in range(CERT_POOL):
        folder = certs_dir / f"pool{n}"
        folder.mkdir(parents=True)
        files = certs.ensure_placeholder(folder)
        pool.append(files)
    return pool


def cert_map(names: list[tuple[str, ...]], pool: list[certificates.CertFiles]) -> dict[str, certificates.CertFiles]:
    """Nine in ten requested certificates already exist (valid for their names); the rest are served
    the placeholder."""
    return {
        hosts[0]: dataclasses.replace(pool[k % len(pool)], domains=hosts)
        for k, hosts in enumerate(names)
        if k % 10 != 9
    }


def nginx_version() -> tuple[int, ...]:
    done = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False)
    return parse_nginx_version(done.stderr + done.stdout)


def measure(sites: int, reps: int, work: Path, pool: list[certificates.CertFiles], version: tuple[int, ...]) -> dict:
    containers, names = synthetic(sites)
    certmap = cert_map(names, pool)
    (work / "placeholder").mkdir(exist_ok=True)
    placeholder = certs.ensure_placeholder(work / "placeholder")
    # A private nginx (not started yet) whose loopback ports the rendered files listen on.
    nginx = HostNginx(conf_dir=work / f"conf-{sites}" / "conf.d", prefix=work / f"conf-{sites}")
    options = RenderOptions(
        conf_dir=str(nginx.conf_dir),
        webroot=str(work / "webroot"),
        http_port=nginx.http_port,
        https_port=nginx.https_port,
        nginx_version=version,
    )
    plan_times, render_times = [], []
    files: dict[str, str] = {}
    desired = None
    for _ in range(reps):
        gc.collect()
        t0 = time.perf_counter()
        desired = plan.build(containers, certmap, placeholder)
        t1 = time.perf_counter()
        files = render(desired, options)
        t2 = time.perf_counter()
        plan_times.append(t1 - t0)
        render_times.append(t2 - t1)
    assert desired is not None
    gc.collect()
    tracemalloc.start()
    tracemalloc.reset_peak()
    before, _ = tracemalloc.get_traced_memory()
    render(plan.build(containers, certmap, placeholder), options)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    totals = [p + r for p, r in zip(plan_times, render_times, strict=True)]
    baseline = HostNginx(conf_dir=work / f"direct-{sites}" / "conf.d", prefix=work / f"direct-{sites}")
    return {
        "baseline_files": render(direct(desired), dataclasses.replace(options, conf_dir=str(baseline.conf_dir))),
        "baseline_nginx": baseline,
        "sites": len(desired.servers),
        "containers": len(containers),
        "upstreams": len(desired.upstreams),
        "tls": sum(1 for s in desired.servers if s.cert and not s.placeholder),
        "placeholder": sum(1 for s in desired.servers if s.placeholder),
        "problems": len(desired.problems),
        "plan": plan_times,
        "render": render_times,
        "total": totals,
        "bytes": sum(len(c.encode()) for c in files.values()),
        "main_bytes": len(files["companion.conf"].encode()),
        "peak": peak - before,
        "files": files,
        "nginx": nginx,
    }


def direct(desired: plan.Desired) -> plan.Desired:
    """The baseline: the same servers and certificates, each location's proxy_pass straight to its first
    reachable backend's address and port, and no upstream blocks."""

    def straight(location: plan.Location) -> plan.Location:
        found = [f"{address}:{port}" for _, address, port in location.backends if address]
        return dataclasses.replace(location, upstream=found[0] if found else "")

    servers = tuple(
        dataclasses.replace(server, locations=tuple(map(straight, server.locations))) for server in desired.servers
    )
    return dataclasses.replace(desired, servers=servers, upstreams=())


def timed_check(nginx: HostNginx, files: dict[str, str], reps: int) -> tuple[float, subprocess.CompletedProcess]:
    """Write `files` where the private nginx includes them; the fastest of `reps` real `nginx -t` runs."""
    for name, content in files.items():
        (nginx.conf_dir / name).write_text(content)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        done = nginx.check()
        best = min(best, time.perf_counter() - t0)
        if done.returncode != 0:
            break
    return best, done


def nginx_check(result: dict, reload: bool, reps: int) -> dict:
    """Time `nginx -t` on the rendered files and on the direct-address baseline (and a start and reload)."""
    nginx: HostNginx = result["nginx"]
    out: dict = {}
    out["test"], done = timed_check(nginx, result["files"], reps)
    out["baseline"], base = timed_check(result["baseline_nginx"], result["baseline_files"], reps)
    out["ok"] = done.returncode == 0 and base.returncode == 0
    out["stderr"] = (done.stderr + base.stderr).strip()
    if out["ok"] and reload:
        for key, server in (("generated", nginx), ("direct", result["baseline_nginx"])):
            marker = free_port()
            (server.conf_dir / "bench-marker.conf").write_text(MARKER.format(port=marker))
            try:
                t0 = time.perf_counter()
                server.start(timeout=120)
                start = time.perf_counter() - t0
                out[key] = (start, *timed_reload(server, marker, timeout=120))
            finally:
                server.stop()
    return out


# One extra server, added after the timed `nginx -t`: it answers with the pid of the worker that took the request.
MARKER = """server {{
    listen 127.0.0.1:{port};
    access_log off;
    return 200 "$pid";
}}
"""


def answering_pid(port: int) -> int:
    """The pid of the worker that answers on the marker port."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/")
        return int(conn.getresponse().read())
    finally:
        conn.close()


def timed_reload(nginx: HostNginx, marker: int, timeout: float) -> tuple[float, float]:
    """SIGHUP to the master (as the companion's docker and agent modes reload); seconds until a new
    worker runs and until a new worker answers a request (old workers answer meanwhile)."""
    old = set(nginx.worker_pids())
    master = nginx.master_pid()
    assert master is not None and answering_pid(marker) in old
    t0 = time.perf_counter()
    os.kill(master, signal.SIGHUP)
    running = None
    while time.perf_counter() - t0 < timeout:
        if running is None and set(nginx.worker_pids()) - old:
            running = time.perf_counter() - t0
        if answering_pid(marker) not in old:
            return running if running is not None else time.perf_counter() - t0, time.perf_counter() - t0
        time.sleep(0.01)
    raise TimeoutError(f"no new nginx worker answered within {timeout} s:\n{nginx.error_log_text()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000", help="comma list of site counts (default 1000,10000)")
    parser.add_argument("--reps", type=int, default=7, help="repetitions per size (default 7)")
    parser.add_argument("--no-nginx", action="store_true", help="skip the real nginx -t")
    parser.add_argument("--check-reps", type=int, default=1, help="nginx -t runs per config, fastest kept (1)")
    parser.add_argument("--no-reload", action="store_true", help="skip starting nginx and timing one reload")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (rendered files) for a look")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    work = Path(tempfile.mkdtemp(prefix="cbench-render-"))
    try:
        version = nginx_version()
        pool = make_cert_pool(work / "pool")
        print(f"nginx {'.'.join(map(str, version))}; {args.reps} repetitions per size; work dir {work}")
        print(f"target: 1,000 sites plan+render < {TARGET_RENDER_1000 * 1000:.0f} ms\n")
        failed = False
        for sites in sizes:
            r = measure(sites, args.reps, work, pool, version)
            print(
                f"== {r['sites']} sites ({r['containers']} containers, {r['upstreams']} upstreams, "
                f"{r['tls']} with certificates, {r['placeholder']} on the placeholder, {r['problems']} problems)"
            )
            for key in ("plan", "render", "total"):
                values = r[key]
                line = f"   {key:<7} median {ms(median(values))}   p95 {ms(percentile(values, 95))}"
                line += f"   min {ms(min(values))}"
                if key == "total" and sites == 1000:
                    line += f"   target < 50 ms: {verdict(median(values), TARGET_RENDER_1000)}"
                print(line)
            print(f"   output  {r['bytes']:,} bytes ({r['main_bytes']:,} in companion.conf)")
            print(f"   peak    {r['peak'] / 1e6:.1f} MB traced (tracemalloc, one plan+render)")
            if not args.no_nginx:
                n = nginx_check(r, reload=not args.no_reload, reps=args.check_reps)
                status = "passes" if n["ok"] else "FAILS"
                ratio = n["test"] / n["baseline"]
                line = f"   nginx -t {status}: {ms(n['test'])}   baseline (direct addresses) {ms(n['baseline'])}"
                line += f"   ratio {ratio:.2f}"
                if sites == 10000:
                    line += f"   target <= {TARGET_CHECK_RATIO}: {'meets' if ratio <= TARGET_CHECK_RATIO else 'MISSES'}"
                print(line)
                for key in ("generated", "direct"):
                    if key in n:
                        start, run, answer = n[key]
                        print(
                            f"   {key:<9} nginx start {ms(start)}; reload (SIGHUP): new workers run {ms(run)}, "
                            f"new workers answer {ms(answer)}"
                        )
                if "generated" in n and "direct" in n:
                    print(f"   reload until new workers answer, ratio {n['generated'][2] / n['direct'][2]:.2f}")
                if not n["ok"]:
                    print("   " + n["stderr"].replace("\n", "\n   "))
                    failed = failed or sites == 1000
            print()
        return 1 if failed else 0
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
