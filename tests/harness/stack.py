"""The repository's docker-stack.yml deployed on the test Swarm (tests/harness/swarm.py), as a user would.

`docker stack deploy -c docker-stack.yml [-c extra.yml] NAME` on the manager with the images pointed at local
tags and the manager's socket at its path on this machine (nodes share the host's filesystem). The cluster's
two secrets are made with `companion cluster-secret --create`, as the stack file's header says. ``remove()``
takes down the stack, waits for its containers to be gone on every node, and removes its volumes and secrets.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from email.message import Message
from pathlib import Path

from tests.harness.wait import wait_gone

from .nginx import http_get
from .swarm import SwarmNodes

REPO = Path(__file__).resolve().parents[2]
STACK_FILE = REPO / "docker-stack.yml"
SECRETS = ("companion_controller", "companion_agent")


def swarm_time(stamp: str) -> float:
    """A Swarm timestamp ("2026-11-27T15:20:01.123456789Z") as time.time() (the manager's clock is ours)."""
    whole, _, frac = stamp.rstrip("Z").partition(".")
    return dt.datetime.fromisoformat(whole).replace(tzinfo=dt.UTC).timestamp() + float(f"0.{frac or 0}")


class Stack:
    """One deployed stack: its services are ``<name>_companion`` and ``<name>_nginx``, apps join ``<name>_proxy``."""

    def __init__(self, nodes: SwarmNodes, name: str, env: dict[str, str], extra_files: tuple[Path, ...] = ()) -> None:
        self.nodes, self.name, self.env, self.extra_files = nodes, name, env, extra_files

    @property
    def network(self) -> str:
        return f"{self.name}_proxy"

    def service(self, role: str) -> str:
        return f"{self.name}_{role}"

    def deploy(self) -> Stack:
        subprocess.run(
            [sys.executable, "-m", "companion", "cluster-secret", "--create"],
            env={**os.environ, "DOCKER_HOST": self.nodes.socket(1)}, capture_output=True, check=True, timeout=60,
        )  # fmt: skip
        files = [arg for path in (STACK_FILE, *self.extra_files) for arg in ("-c", str(path))]
        subprocess.run(
            ["docker", "-H", self.nodes.socket(1), "stack", "deploy", "--resolve-image", "never", *files, self.name],
            env={**os.environ, **self.env}, capture_output=True, text=True, check=True, timeout=120,
        )  # fmt: skip
        return self

    def scale(self, role: str, replicas: int) -> None:
        self.nodes.docker(1, "service", "scale", "-d", f"{self.service(role)}={replicas}")

    def running_since(self, role: str) -> float | None:
        """time.time() at which the role's newest running task started running (Swarm's status), or None."""
        client = self.nodes.client(1)
        try:
            tasks = client.api.tasks(filters={"service": self.service(role), "desired-state": "running"})
        finally:
            client.close()
        stamps = [swarm_time(t["Status"]["Timestamp"]) for t in tasks if t["Status"].get("State") == "running"]
        return max(stamps) if stamps else None

    def containers(self, n: int, role: str) -> list[str]:
        """IDs of the role's running containers on node n."""
        return self.nodes.docker(
            n, "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={self.service(role)}"
        ).stdout.split()

    def get(self, n: int, host: str, https: bool = False, **kw: object) -> tuple[int, Message, bytes]:
        """GET through node n's nginx (host-mode published ports on the node's address)."""
        return http_get(self.nodes.address(n), 443 if https else 80, host, https=https, **kw)  # type: ignore[arg-type]

    def body(self, n: int, host: str, https: bool = False, **kw: object) -> str:
        """The text node n serves for `host`, or '' for anything but a 200 (or nothing listening)."""
        try:
            status, _, data = self.get(n, host, https=https, timeout=2, **kw)
        except OSError:
            return ""
        return data.decode(errors="replace").strip() if status == 200 else ""

    def logs(self, role: str) -> str:
        return self.nodes.docker(1, "service", "logs", "--raw", "--tail", "200", self.service(role), check=False).stdout

    def leftovers(self) -> list[str]:
        """What of the stack is still on the nodes (services, containers, volumes, secrets, its network)."""
        label = f"label=com.docker.stack.namespace={self.name}"
        found = [f"service {s}" for s in self.nodes.docker(1, "service", "ls", "-q", "--filter", label).stdout.split()]
        found += [f"secret {s}" for s in self.nodes.docker(1, "secret", "ls", "-q", "--filter", label).stdout.split()]
        names = self.nodes.docker(1, "secret", "ls", "--format", "{{.Name}}").stdout.split()
        found += [f"secret {name}" for name in SECRETS if name in names]
        found += [f"network {self.network}"] * (
            self.network in self.nodes.docker(1, "network", "ls", "--format", "{{.Name}}").stdout.split()
        )
        for n in self.nodes.nodes:
            if self.nodes.alive(n):
                found += [
                    f"{self.nodes.ns(n)} container {c}"
                    for c in self.nodes.docker(n, "ps", "-aq", "--filter", label).stdout.split()
                ]
                found += [
                    f"{self.nodes.ns(n)} volume {v}"
                    for v in self.nodes.docker(n, "volume", "ls", "-q", "--filter", label).stdout.split()
                ]
        return found

    def remove(self) -> None:
        """Stack, its containers on every node, its volumes and the secret: nothing of it is left."""
        self.nodes.docker(1, "stack", "rm", self.name, check=False)
        label = f"label=com.docker.stack.namespace={self.name}"
        deadline = time.monotonic() + 60
        for n in self.nodes.nodes:
            if not self.nodes.alive(n):
                continue
            wait_gone(
                lambda n=n: self.nodes.docker(n, "ps", "-aq", "--filter", label, check=False).stdout.split(),
                max(0.0, deadline - time.monotonic()),
                0.2,
            )
            volumes = self.nodes.docker(n, "volume", "ls", "-q", "--filter", label, check=False).stdout.split()
            if volumes:
                self.nodes.docker(n, "volume", "rm", "-f", *volumes, check=False)
        self.nodes.docker(1, "secret", "rm", *SECRETS, check=False)
        network = ["network", "ls", "-q", "--filter", f"name={self.network}"]
        wait_gone(
            lambda: self.nodes.docker(1, *network, check=False).stdout.split(),
            max(0.0, deadline - time.monotonic()),
            0.2,
        )
