"""Service start -> routable on a real 3-node Swarm (tests/infra/swarm.py), through the manager's nginx.

1. Brings the nodes up (reused when already up; removed at the end unless --keep-nodes), loads the test
   app and nginx images into every node, creates an attachable overlay, starts nginx as a container on
   the manager (port 80 published on the manager's address) and `companion run` on the host against the
   manager's socket (ALLOWED_DOMAINS limited to this run).
2. N times, after a quiet gap: creates one service (1 replica, dnsrr, VIRTUAL_HOST as a service label;
   placement rotates over the nodes) and measures from just before the API call to the first 200 answer
   carrying the task's APP_ID through nginx (polled every 5 ms). Swarm's own share is split off by the
   task's "running" timestamp (the manager's clock, which is this machine's).

What it does not measure yet: routable on *every* node (that needs nginx on each node, fed by agents);
here one nginx on the manager routes to tasks on all three nodes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import tempfile
import time
import uuid
from pathlib import Path

from _common import median, ms, percentile, sigterm_as_exit
from docker.types import ContainerSpec, EndpointSpec, NetworkAttachmentConfig, Placement, TaskTemplate

from companion import controller
from tests.infra.appimage import ensure_app_image
from tests.infra.companion import Companion
from tests.infra.dockerd import ensure_dockerd
from tests.infra.nginx import http_get
from tests.infra.nginxcontainer import NginxContainer, ensure_nginx_image
from tests.infra.swarm import SwarmNodes

POLL = 0.005
TARGET_P50, TARGET_P95 = 1.0, 2.0  # seconds; Swarm's own scheduling and task start are inside


def running_since(api, service_id: str) -> float | None:  # noqa: ANN001 - docker.APIClient
    """time.time() at which the service's first task became running, from Swarm's status timestamp."""
    for task in api.tasks(filters={"service": service_id}):
        status = task.get("Status") or {}
        if status.get("State") == "running":
            stamp = status["Timestamp"].rstrip("Z")
            whole, _, frac = stamp.partition(".")
            moment = dt.datetime.fromisoformat(whole).replace(tzinfo=dt.UTC)
            return moment.timestamp() + float(f"0.{frac or 0}")
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--services", type=int, default=20, help="services created and measured (20)")
    parser.add_argument("--gap", type=float, default=controller.IDLE_GAP + 0.5, help="seconds between starts")
    parser.add_argument("--keep-nodes", action="store_true", help="leave the Swarm nodes up at the end")
    args = parser.parse_args()
    sigterm_as_exit()

    client = ensure_dockerd().client()
    app_image, nginx_image = ensure_app_image(client), ensure_nginx_image(client)
    nodes = SwarmNodes.from_env(3)
    was_up = (nodes.state / "nodes").exists()
    t = time.monotonic()
    nodes.up()
    nodes.load(app_image, nginx_image)
    print(f"nodes up and images loaded in {time.monotonic() - t:.1f}s ({'reused' if was_up else 'fresh'})")
    run = uuid.uuid4().hex[:6]
    domain = f"{run}.cbench.test"
    network = f"cbench-proxy-{run}"
    manager = nodes.client(1)
    api = manager.api
    nodes.docker(1, "network", "create", "-d", "overlay", "--attachable", network)
    work = Path(tempfile.mkdtemp(prefix="cbench-swarm-"))
    nginx = NginxContainer(
        manager, work, work / "nginx" / "conf.d", work / "companion" / "certs", work / "companion" / "webroot",
        name="bench-nginx", endpoint=(nodes.address(1), 80), image=nginx_image, network=network,
        ports={"80/tcp": (nodes.address(1), 80)},
    )  # fmt: skip
    companion = None
    created: list[str] = []
    try:
        nginx.start()
        companion = Companion(
            nginx,  # type: ignore[arg-type]
            work / "companion",
            DOCKER_HOST=nodes.socket(1),
            NGINX_TEST="docker",
            NGINX_RELOAD="docker",
            LOG_LEVEL="INFO",
            ALLOWED_DOMAINS=f"*.{domain}",
        ).start()
        companion.wait_log(r"applied .*nginx reloaded", timeout=30)
        node_names = [nodes.ns(n) for n in nodes.nodes]
        totals, swarm_part, companion_part = [], [], []
        for k in range(args.services):
            time.sleep(args.gap)
            host, app_id = f"s{k}.{domain}", f"s{k}-{run}"
            spec = TaskTemplate(
                ContainerSpec(app_image, env=[f"APP_ID={app_id}"]),
                networks=[NetworkAttachmentConfig(network)],
                placement=Placement(constraints=[f"node.hostname=={node_names[k % len(node_names)]}"]),
            )
            t0 = time.time()
            service = api.create_service(
                spec, name=f"cbench-{run}-{k}", labels={"VIRTUAL_HOST": host}, endpoint_spec=EndpointSpec("dnsrr")
            )["ID"]
            created.append(service)
            while True:
                try:
                    status, _, body = http_get(nodes.address(1), 80, host, timeout=1)
                    if status == 200 and body.decode(errors="replace").strip() == app_id:
                        break
                except OSError:
                    pass
                if time.time() - t0 > 60:
                    raise TimeoutError(f"{host} not routable within 60s")
                time.sleep(POLL)
            t_end = time.time()
            running = running_since(api, service)
            totals.append(t_end - t0)
            if running is not None:
                swarm_part.append(running - t0)
                companion_part.append(t_end - running)
            print(f"  {k:2d} on {node_names[k % len(node_names)]}: {ms(t_end - t0)}", flush=True)
        print(f"\nservice create -> routable through the manager's nginx, {len(totals)} services, 1 task each:")
        for label, values in (
            ("total", totals),
            ("create -> task running (Swarm)", swarm_part),
            ("task running -> routable", companion_part),
        ):
            if values:
                print(
                    f"  {label:<34} p50 {ms(median(values))}  p95 {ms(percentile(values, 95))}  max {ms(max(values))}"
                )
        print(f"targets: total p50 < {TARGET_P50 * 1000:.0f} ms, p95 < {TARGET_P95 * 1000:.0f} ms")
        print(f"companion reloads: {companion.count(r'nginx reloaded')}")
    finally:
        if companion is not None:
            companion.stop()
        for service in created:
            api.remove_service(service)
        nginx.remove()
        nodes.docker(1, "network", "rm", network, check=False)
        if not args.keep_nodes and not was_up:
            nodes.down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
