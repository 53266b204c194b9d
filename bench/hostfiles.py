"""Time what the per-host files add to a pass: reading the folders (scan + choose) and rendering with
their includes, beside the same render without any file (the baseline). Pure apart from a temp folder."""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import median, ms  # sets sys.path for companion

from companion.core import certificates, plan
from companion.core.container import ContainerInfo
from companion.nginx import hostfiles
from companion.nginx.render import RenderOptions, render


def timed(work: Callable[[], object], reps: int) -> float:
    """Median wall time of `reps` runs."""
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return median(times)


def folders(root: Path, hosts: list[str], with_files: int) -> hostfiles.Dirs:
    """A vhost.d, htpasswd and client CA folder with files for the first `with_files` hosts, and a default."""
    for name in ("vhost.d", "htpasswd", "client_ca"):
        (root / name).mkdir()
    for host in hosts[:with_files]:
        (root / "vhost.d" / host).write_text(f"add_header X-Host {host};\n")
        (root / "vhost.d" / f"{host}_location").write_text("proxy_set_header X-Loc 1;\n")
        (root / "htpasswd" / host).write_text("user:$2y$05$" + "a" * 53 + "\n")
    (root / "vhost.d" / "default").write_text("add_header X-Default 1;\n")
    return hostfiles.Dirs(*(str(root / n) for n in ("vhost.d", "htpasswd", "client_ca", "proxy.conf")))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sites", type=int, default=10_000)
    parser.add_argument("--files", type=int, default=200, help="hosts with files of their own")
    parser.add_argument("--reps", type=int, default=9)
    args = parser.parse_args()
    hosts = [f"site{i}.example.org" for i in range(args.sites)]
    containers = [
        ContainerInfo(
            id=f"id{i}",
            name=f"c{i}",
            labels={"VIRTUAL_HOST": h},
            networks={"proxy": f"10.{i // 250 % 250}.{i % 250}.2"},
        )
        for i, h in enumerate(hosts)
    ]
    desired = plan.build(containers, {}, certificates.CertFiles("/p/fullchain.pem", "/p/privkey.pem"))
    options = RenderOptions(conf_dir="/etc/nginx/conf.d", webroot="/var/www")
    with tempfile.TemporaryDirectory() as tmp:
        dirs = folders(Path(tmp), hosts, args.files)
        state = hostfiles.UserFiles()
        chosen, _ = state.choose(hostfiles.scan(dirs, hosts))
        scan = timed(lambda: state.choose(hostfiles.scan(dirs, hosts)), args.reps)
        baseline = timed(lambda: render(desired, options), args.reps)
        with_files = timed(lambda: render(desired, options, chosen), args.reps)
    print(
        f"{args.sites:,} sites, {args.files} with vhost.d/<host>, <host>_location and htpasswd, a default for the rest"
    )
    print(f"   scan + choose      {ms(scan)}")
    print(f"   render, no files   {ms(baseline)}   (baseline)")
    print(f"   render, with files {ms(with_files)}   ratio {with_files / baseline:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
