"""Service start -> routable on a real 3-node Swarm (tests/harness/swarm.py), through the manager's nginx.

1. Brings the nodes up (reused when already up; removed at the end unless --keep-nodes), loads the test
   app and nginx images into every node, creates an attachable overlay, starts nginx as a container on
   the manager (port 80 published on the manager's address) and `companion run` on the host against the
   manager's socket (ALLOWED_DOMAINS limited to this run).
2. N times, after a quiet gap: creates one service (1 replica, dnsrr, VIRTUAL_HOST as a service label;
   placement rotates over the nodes) and measures from just before the API call to the first 200 answer
   carrying the task's APP_ID through nginx (polled every 5 ms). Swarm's own share is split off by the
   task's "running" timestamp (the manager's clock, which is this machine's).

3. Then the same on the repository's docker-stack.yml, deployed with `docker stack deploy` (the companion
   and agent images loaded into every node; the controller on the manager, an agent and its nginx on every
   node, ports published in host mode): N services, each measured until its APP_ID answers through every
   node's nginx (10.77.0.1N), with the time until the first node answers beside it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

from _common import median, ms, percentile, sigterm_as_exit
from docker.types import ContainerSpec, EndpointSpec, NetworkAttachmentConfig, Placement, TaskTemplate

from companion.loop import controller
from tests.harness.agent import ensure_agent_image, ensure_companion_image
from tests.harness.appimage import ensure_app_image
from tests.harness.companion import Companion
from tests.harness.dockerd import ensure_dockerd
from tests.harness.nginx import http_get
from tests.harness.nginxcontainer import NginxContainer, ensure_nginx_image
from tests.harness.stack import Stack, swarm_time
from tests.harness.swarm import SwarmNodes

POLL = 0.005
TARGET_P50, TARGET_P95 = 1.0, 2.0  # seconds; Swarm's own scheduling and task start are inside


def running_since(api, service_id: str) -> float | None:  # noqa: ANN001 - docker.APIClient
    """time.time() at which the service's first task became running, from Swarm's status timestamp."""
    for task in api.tasks(filters={"service": service_id}):
        status = task.get("Status") or {}
        if status.get("State") == "running":
            return swarm_time(status["Timestamp"])
    return None


def answers(address: str, host: str, app_id: str) -> bool:
    try:
        status, _, body = http_get(address, 80, host, timeout=1)
    except OSError:
        return False
    return status == 200 and body.decode(errors="replace").strip() == app_id


def measure(
    args: argparse.Namespace,
    api,  # noqa: ANN001 - docker.APIClient
    nodes: SwarmNodes,
    network: str,
    run: str,
    domain: str,
    addresses: list[str],
    created: list[str],
) -> dict[str, list[float]]:
    """Create `args.services` services one by one (their IDs appended to `created`); seconds from create until
    the first and every address answers with the task's APP_ID, and Swarm's share (create -> task running)."""
    node_names = [nodes.ns(n) for n in nodes.nodes]
    figures: dict[str, list[float]] = {"first": [], "all": [], "swarm": [], "companion": []}
    for k in range(args.services):
        time.sleep(args.gap)
        host, app_id = f"s{k}.{domain}", f"s{k}-{run}"
        spec = TaskTemplate(
            ContainerSpec(args.app_image, env=[f"APP_ID={app_id}"]),
            networks=[NetworkAttachmentConfig(network)],
            placement=Placement(constraints=[f"node.hostname=={node_names[k % len(node_names)]}"]),
        )
        t0 = time.time()
        service = api.create_service(
            spec, name=f"cbench-{run}-{k}", labels={"VIRTUAL_HOST": host}, endpoint_spec=EndpointSpec("dnsrr")
        )["ID"]
        created.append(service)
        seen: dict[str, float] = {}
        while len(seen) < len(addresses):
            for address in addresses:
                if address not in seen and answers(address, host, app_id):
                    seen[address] = time.time()
            if time.time() - t0 > 60:
                raise TimeoutError(f"{host} not routable on {sorted(set(addresses) - set(seen))} within 60s")
            time.sleep(POLL)
        first, last = min(seen.values()) - t0, max(seen.values()) - t0
        figures["first"].append(first)
        figures["all"].append(last)
        running = running_since(api, service)
        if running is not None:
            figures["swarm"].append(running - t0)
            figures["companion"].append(t0 + last - running)
        spread = f" (first node {ms(first)})" if len(addresses) > 1 else ""
        print(f"  {k:2d} on {node_names[k % len(node_names)]}: {ms(last)}{spread}", flush=True)
    return figures


def report(title: str, figures: dict[str, list[float]], many: bool) -> None:
    print(f"\n{title}:")
    rows = [("total (routable on every node)" if many else "total", figures["all"])]
    if many:
        rows.append(("total (routable on the first node)", figures["first"]))
    rows += [("create -> task running (Swarm)", figures["swarm"]), ("task running -> routable", figures["companion"])]
    for label, values in rows:
        if values:
            print(f"  {label:<36} p50 {ms(median(values))}  p95 {ms(percentile(values, 95))}  max {ms(max(values))}")


def single_nginx(args: argparse.Namespace, nodes: SwarmNodes, nginx_image: str, run: str) -> dict[str, list[float]]:
    """Phase 1: one nginx container on the manager, `companion run` on the host against the manager's socket."""
    domain = f"{run}.cbench.test"
    network = f"cbench-proxy-{run}"
    manager = nodes.client(1)
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
        figures = measure(args, manager.api, nodes, network, run, domain, [nodes.address(1)], created)
        print(f"companion reloads: {companion.count(r'nginx reloaded')}")
        return figures
    finally:
        if companion is not None:
            companion.stop()
        for service in created:
            manager.api.remove_service(service)
        nginx.remove()
        nodes.docker(1, "network", "rm", network, check=False)


def deployed_stack(
    args: argparse.Namespace, nodes: SwarmNodes, images: tuple[str, str], run: str
) -> dict[str, list[float]]:
    """Phase 2: docker-stack.yml deployed; every node's nginx, fed by its agent, must answer."""
    stack = Stack(
        nodes,
        "cbench",
        {"COMPANION_IMAGE": images[0], "NGINX_IMAGE": images[1], "DOCKER_SOCKET": f"/run/{nodes.ns(1)}/docker.sock"},
    )
    manager = nodes.client(1)
    created: list[str] = []
    try:
        t = time.monotonic()
        stack.deploy()
        addresses = [nodes.address(n) for n in nodes.nodes]
        while not all(_listening(address) for address in addresses):
            if time.monotonic() - t > 120:
                raise TimeoutError("the stack's nginx did not answer on every node within 120s")
            time.sleep(0.2)
        print(f"stack deployed, nginx answering on every node in {time.monotonic() - t:.1f}s")
        figures = measure(args, manager.api, nodes, stack.network, run, f"{run}.cbench-stack.test", addresses, created)
        return figures
    finally:
        for service in created:
            manager.api.remove_service(service)
        stack.remove()


def _listening(address: str) -> bool:
    try:
        http_get(address, 80, "nobody.invalid", timeout=1)
    except OSError:
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--services", type=int, default=20, help="services created and measured (20)")
    parser.add_argument("--gap", type=float, default=controller.IDLE_GAP + 0.5, help="seconds between starts")
    parser.add_argument("--keep-nodes", action="store_true", help="leave the Swarm nodes up at the end")
    parser.add_argument("--stack-only", action="store_true", help="skip the single-nginx phase")
    args = parser.parse_args()
    sigterm_as_exit()

    client = ensure_dockerd().client()
    args.app_image, nginx_image = ensure_app_image(client), ensure_nginx_image(client)
    stack_images = ensure_companion_image(client), ensure_agent_image(client)
    nodes = SwarmNodes.from_env(3)
    was_up = (nodes.state / "nodes").exists()
    t = time.monotonic()
    nodes.up(owner="bench")  # a set kept by an earlier bench run (--keep-nodes) is reused
    nodes.load(args.app_image, nginx_image, *stack_images)
    print(f"nodes up and images loaded in {time.monotonic() - t:.1f}s ({'reused' if was_up else 'fresh'})")
    run = uuid.uuid4().hex[:6]
    try:
        single = None if args.stack_only else single_nginx(args, nodes, nginx_image, run)
        stacked = deployed_stack(args, nodes, stack_images, run)
    finally:
        if not args.keep_nodes and not was_up:
            nodes.down()
    many = f"{args.services} services, 1 task each, placed on the 3 nodes in turn"
    if single is not None:
        report(
            f"service create -> routable through the manager's nginx (one nginx, companion on the host), {many}",
            single,
            False,
        )
    report(
        f"service create -> routable through every node's nginx (docker-stack.yml: controller + agents), {many}",
        stacked,
        True,
    )
    print(f"targets: total p50 < {TARGET_P50 * 1000:.0f} ms, p95 < {TARGET_P95 * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
