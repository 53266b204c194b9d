"""Swarm agents without a Swarm: containers of the agent image (`companion agent` with its own nginx).

Each agent's conf dir, certs dir and state dir are host folders (the node's volumes) mounted where the
controller's settings say (the rendered files name those paths), so a test can read what landed on the
node, break it, and restart the container on the same state. The controller is a `companion run` on the
host in cluster mode; agents reach it at their network's gateway address.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import docker
from docker.models.containers import Container

from .appimage import CONTAINER_LABEL, NAME_PREFIX, container_ip
from .e2e import load_build
from .nginx import http_get

STATE_DIR = "/var/lib/companion-agent"
SECRET_PATH = "/run/secrets/companion_agent"  # the agent secret, where the stack file puts it


def ensure_agent_image(client: docker.DockerClient) -> str:
    """``companion-agent:local``, built from the top-level Dockerfile's ``agent`` stage (cached by its context)."""
    return str(load_build().ensure_agent_image(client))


def ensure_companion_image(client: docker.DockerClient) -> str:
    """``companion:local``, the controller's image (the top-level Dockerfile, cached by its context)."""
    return str(load_build().ensure_companion_image(client))


@dataclass
class NoLocalNginx:
    """What a cluster-mode controller gets where a host-mode one gets its nginx: nothing is applied locally."""

    conf_dir: Path
    http_port: int = 80
    https_port: int = 443
    test_command: str = "false"
    reload_command: str = "false"


class AgentContainer:
    """One node: an agent container on `network`, with its volumes in `workdir`."""

    def __init__(
        self,
        client: docker.DockerClient,
        image: str,
        network: str,
        workdir: Path,
        node: str,
        controller_url: str,
        secret_file: Path | None,
        conf_dir: str,
        certs_dir: str,
    ) -> None:
        self.client = client
        self.image = image
        self.network = network
        self.node = node
        self.controller_url = controller_url
        self.secret_file = secret_file
        self.conf_dir_path, self.certs_dir_path = conf_dir, certs_dir
        self.conf_dir = workdir / "conf"  # on the host, what the node's nginx reads
        self.certs_dir = workdir / "certs"
        self.state_dir = workdir / "state"
        for folder in (self.conf_dir, self.certs_dir, self.state_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.container: Container | None = None
        self.logs_before = ""  # output of earlier containers of this node (a restart recreates it)

    def start(self) -> AgentContainer:
        volumes = {
            str(self.conf_dir): {"bind": self.conf_dir_path, "mode": "rw"},
            str(self.certs_dir): {"bind": self.certs_dir_path, "mode": "rw"},
            str(self.state_dir): {"bind": STATE_DIR, "mode": "rw"},
        }
        if self.secret_file is not None:
            volumes[str(self.secret_file)] = {"bind": SECRET_PATH, "mode": "ro"}
        self.container = self.client.containers.run(
            self.image,
            name=f"{NAME_PREFIX}agent-{self.node}-{uuid.uuid4().hex[:6]}",
            network=self.network,
            labels={CONTAINER_LABEL: "1"},
            environment={
                "CONTROLLER_URL": self.controller_url,
                "NODE_NAME": self.node,
                "CONF_DIR": self.conf_dir_path,
                "CERTS_DIR": self.certs_dir_path,
                "LOG_LEVEL": "DEBUG",
            },
            volumes=volumes,
            detach=True,
        )
        return self

    def remove(self) -> None:
        """Remove the container, keeping its output and the node's folders."""
        if self.container is not None:
            with contextlib.suppress(docker.errors.APIError):
                self.logs_before += self.logs()
            with contextlib.suppress(docker.errors.NotFound):
                self.container.remove(force=True, v=True)
            self.container = None

    def restart(self, controller_url: str | None = None) -> AgentContainer:
        """A new container (agent and nginx) on the same node folders, perhaps pointed elsewhere."""
        self.remove()
        if controller_url is not None:
            self.controller_url = controller_url
        return self.start()

    @property
    def address(self) -> str:
        assert self.container is not None
        return container_ip(self.container)

    def logs(self) -> str:
        assert self.container is not None
        return self.container.logs().decode(errors="replace")

    def all_logs(self) -> str:
        return self.logs_before + (self.logs() if self.container is not None else "")

    def exit_code(self, timeout: float = 15.0) -> int:
        assert self.container is not None
        return int(self.container.wait(timeout=timeout)["StatusCode"])

    def get(self, host: str, path: str = "/", https: bool = False) -> tuple[int, Message, bytes]:
        return http_get(self.address, 443 if https else 80, host, path, https=https, timeout=2)

    def body(self, host: str, path: str = "/", https: bool = False) -> str:
        """The text served for `host`, or '' when nginx answers anything but 200 or is not listening."""
        try:
            status, _, data = self.get(host, path, https=https)
        except OSError:
            return ""
        return data.decode(errors="replace").strip() if status == 200 else ""


def wait_serving(
    agents: list[AgentContainer], host: str, expected: str, timeout: float = 20.0, https: bool = False
) -> float:
    """Seconds until every agent serves `expected` for `host` (polled every 20 ms); fails after `timeout`."""
    started = time.monotonic()
    pending = list(agents)
    while pending and time.monotonic() - started < timeout:
        pending = [agent for agent in pending if agent.body(host, https=https) != expected]
        if pending:
            time.sleep(0.02)
    if pending:
        names = ", ".join(f"{a.node} ({a.body(host, https=https)!r})" for a in pending)
        raise AssertionError(f"{host} not served as {expected!r} by {names} after {timeout}s")
    return time.monotonic() - started
