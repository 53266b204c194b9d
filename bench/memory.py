"""nginx's memory with the generated configuration beside a minimal hand-written one, and the companion's own.

For each size (default 1,000 and 10,000 synthetic sites from bench/render.py), two configurations are
written from the same desired state:

* generated: what the companion renders (all its files, its templates and snippets);
* minimal: written here by hand: the same server_names and listen ports, the same certificates, the
  same locations, each `proxy_pass` straight to its first reachable backend's address (502 when none),
  a plain-HTTP server that redirects doing so with one `return 301`; nothing else (nginx's defaults).

Each is checked with the real `nginx -t` (`--check-reps` runs, alternating the two, median kept) and
started as a private nginx (master + 1 worker, own prefix and pid file, high ports on 127.0.0.1). After
start, the proportional set size (PSS, /proc/<pid>/smaps_rollup) of the master and each worker is read
and summed; both are printed side by side with their ratio (target: generated <= 1.5x minimal).

Then the companion's own memory: a fresh Python process builds the plan and renders it for 100 and for
10,000 sites and reports its RSS after the pass and its peak RSS (VmHWM), beside its RSS before.

`--variant NAME` applies one of the text edits in VARIANTS to the generated files before measuring:
how the memory of each kind of directive was found (see bench/README.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import ROOT, median  # noqa: F401 - sets sys.path for companion/tests

from bench.render import cert_map, make_cert_pool, nginx_version, synthetic
from companion.acme import certs
from companion.core import plan
from companion.nginx.render import MAIN_FILE, RenderOptions, render
from tests.harness.nginx import HostNginx

TARGET_PSS_RATIO = 1.5
TARGET_CHECK_RATIO = 1.3


def pss_kb(pid: int) -> int:
    """Proportional set size of one process in kB (shared pages split among their users)."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise RuntimeError(f"no Pss in /proc/{pid}/smaps_rollup")


def loopback(text: str, ports: tuple[int, int]) -> str:
    """The rendered `listen PORT` lines bound to 127.0.0.1 only (the renderer listens on all addresses)."""
    for port in ports:
        text = re.sub(rf"(?m)^(\s*listen ){port}\b", rf"\g<1>127.0.0.1:{port}", text)
    return text


def minimal_conf(desired: plan.Desired, http_port: int, https_port: int) -> str:
    """The same servers, certificates and locations, each proxying straight to one address."""
    out = []

    def locations(server: plan.Server) -> None:
        for loc in server.locations:
            found = [f"{address}:{port}" for _, address, port in loc.backends if address]
            body = f"proxy_pass {loc.proto.value}://{found[0]}{loc.dest};" if found else "return 502;"
            out.append(f"    location {loc.path} {{\n        {body}\n    }}")

    for server in desired.servers:
        if server.serves_http:
            out.append(f"server {{\n    listen 127.0.0.1:{http_port};\n    server_name {server.host};")
            if server.http is plan.HttpAnswer.REDIRECT:
                out.append("    return 301 https://$host$request_uri;")
            else:
                locations(server)
            out.append("}")
        if server.cert:
            out.append(f"server {{\n    listen 127.0.0.1:{https_port} ssl;\n    server_name {server.host};")
            out.append(f"    ssl_certificate {server.cert.fullchain};\n    ssl_certificate_key {server.cert.privkey};")
            locations(server)
            out.append("}")
    names = len(desired.servers) + 1
    head = f"server_names_hash_bucket_size 128;\nserver_names_hash_max_size {1 << (names * 2 - 1).bit_length()};\n"
    return head + "\n".join(out) + "\n"


# Text edits of the generated files for bisecting: each removes or moves one kind of directive.
def _drop_lines(pattern: str) -> Callable[[dict[str, str]], dict[str, str]]:
    def edit(files: dict[str, str]) -> dict[str, str]:
        return {name: re.sub(pattern, "", text) for name, text in files.items()}

    return edit


VARIANTS: dict[str, Callable[[dict[str, str]], dict[str, str]]] = {
    "none": lambda files: files,
    "no-keepalive": _drop_lines(r"(?m)^\s*keepalive \d+;\n"),
    "no-connect-timeout": _drop_lines(r"(?m)^\s*proxy_connect_timeout .*;\n"),
    "no-proxy-include": _drop_lines(r"(?m)^\s*include \S*companion-proxy(-close)?\.inc;\n"),
    "no-tls-include": _drop_lines(r"(?m)^\s*include \S*companion-tls\.inc;\n"),
    "no-acme-include": _drop_lines(r"(?m)^\s*include \S*companion-acme\.inc;\n"),
}


@dataclasses.dataclass
class Config:
    name: str
    nginx: HostNginx
    files: dict[str, str]


def build(sites: int, work: Path, pool: list, version: tuple[int, ...], variant: str) -> tuple[Config, Config, dict]:
    containers, names = synthetic(sites)
    certmap = cert_map(names, pool)
    (work / "placeholder").mkdir(exist_ok=True)
    placeholder = certs.ensure_placeholder(work / "placeholder")
    gen = HostNginx(prefix=work / f"gen-{sites}")
    options = RenderOptions(
        conf_dir=str(gen.conf_dir),
        webroot=str(work / "webroot"),
        http_port=gen.http_port,
        https_port=gen.https_port,
        nginx_version=version,
    )
    desired = plan.build(containers, certmap, placeholder)
    files = VARIANTS[variant](render(desired, options))
    files[MAIN_FILE] = loopback(files[MAIN_FILE], (gen.http_port, gen.https_port))
    mini = HostNginx(prefix=work / f"min-{sites}")
    info = {
        "sites": len(desired.servers),
        "tls": sum(1 for s in desired.servers if s.cert and not s.placeholder),
        "placeholder": sum(1 for s in desired.servers if s.placeholder),
        "upstreams": len(desired.upstreams),
        "locations": sum(len(s.locations) for s in desired.servers),
    }
    minimal = {"minimal.conf": minimal_conf(desired, mini.http_port, mini.https_port)}
    return Config("generated", gen, files), Config("minimal", mini, minimal), info


def write(config: Config) -> None:
    for name, content in config.files.items():
        (config.nginx.conf_dir / name).write_text(content)


def timed_checks(configs: tuple[Config, Config], reps: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {c.name: [] for c in configs}
    for _ in range(reps):
        for config in configs:
            t0 = time.perf_counter()
            done = config.nginx.check()
            times[config.name].append(time.perf_counter() - t0)
            if done.returncode != 0:
                raise RuntimeError(f"nginx -t fails on the {config.name} config:\n{done.stderr}")
    return times


def measure_pss(config: Config, settle: float) -> tuple[int, int, int]:
    """Start it, let the worker settle, read PSS of master and workers (kB); stop it."""
    nginx = config.nginx
    try:
        nginx.start(timeout=300)
        time.sleep(settle)
        master = nginx.master_pid()
        workers = nginx.worker_pids()
        assert master is not None and len(workers) == 1, (master, workers)
        m = pss_kb(master)
        w = sum(pss_kb(pid) for pid in workers)
        return m, w, m + w
    finally:
        nginx.stop(timeout=60)


def companion_child(sites: int) -> None:
    """Run in a fresh interpreter: one plan+render pass, then print RSS figures as JSON."""

    def status() -> dict[str, int]:
        fields = {}
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
        return fields

    work = Path(tempfile.mkdtemp(prefix="cbench-memory-child-"))
    try:
        pool = make_cert_pool(work / "pool")
        containers, names = synthetic(sites)
        certmap = cert_map(names, pool)
        placeholder = certs.ensure_placeholder(work / "pool" / "pool0")
        before = status()
        desired = plan.build(containers, certmap, placeholder)
        files = render(desired, RenderOptions(conf_dir="/etc/nginx/conf.d", webroot="/var/www"))
        after = status()
        print(json.dumps({"before": before["VmRSS"], "after": after["VmRSS"], "peak": after["VmHWM"], "n": len(files)}))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def companion_memory(sites: int) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, __file__, "--companion-child", str(sites)], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def mb(kb: float) -> str:
    return f"{kb / 1024:,.1f} MB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000", help="comma list of site counts (default 1000,10000)")
    parser.add_argument("--check-reps", type=int, default=5, help="nginx -t runs per config, median kept (5)")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds between start and reading PSS (1)")
    parser.add_argument("--companion-sizes", default="100,10000", help="site counts for the companion's RSS")
    parser.add_argument("--variant", default="none", choices=sorted(VARIANTS), help="edit the generated files")
    parser.add_argument("--no-check", action="store_true", help="skip timing nginx -t")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--companion-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.companion_child:
        companion_child(args.companion_child)
        return 0
    work = Path(tempfile.mkdtemp(prefix="cbench-memory-"))
    failed = False
    try:
        version = nginx_version()
        pool = make_cert_pool(work / "pool")
        print(f"nginx {'.'.join(map(str, version))}; variant {args.variant}; work dir {work}")
        for sites in [int(s) for s in args.sizes.split(",") if s.strip()]:
            gen, mini, info = build(sites, work, pool, version, args.variant)
            print(
                f"== {info['sites']:,} sites ({info['tls']:,} with certificates, {info['placeholder']:,} on the "
                f"placeholder, {info['locations']:,} locations, {info['upstreams']:,} upstreams)"
            )
            for config in (gen, mini):
                write(config)
            if not args.no_check:
                times = timed_checks((gen, mini), args.check_reps)
                g, m = median(times["generated"]), median(times["minimal"])
                print(
                    f"   nginx -t   generated {g:.2f} s   minimal {m:.2f} s   ratio {g / m:.2f}"
                    f"   (median of {args.check_reps}; all: {', '.join(f'{t:.2f}' for t in times['generated'])}"
                    f" / {', '.join(f'{t:.2f}' for t in times['minimal'])})"
                )
            pss = {c.name: measure_pss(c, args.settle) for c in (gen, mini)}
            for name, (master, worker, total) in pss.items():
                print(f"   PSS {name:<9} master {mb(master)} + worker {mb(worker)} = {mb(total)}")
            ratio = pss["generated"][2] / pss["minimal"][2]
            verdict = "meets" if ratio <= TARGET_PSS_RATIO else "MISSES"
            print(f"   PSS ratio  {ratio:.2f}   target <= {TARGET_PSS_RATIO}: {verdict}")
            failed = failed or ratio > TARGET_PSS_RATIO
        for sites in [int(s) for s in args.companion_sizes.split(",") if s.strip()]:
            c = companion_memory(sites)
            print(
                f"== companion, {sites:,} sites: RSS {mb(c['before'])} before, {mb(c['after'])} after one "
                f"plan+render pass, peak {mb(c['peak'])}"
            )
        return 1 if failed else 0
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
