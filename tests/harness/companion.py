"""Run the companion as in production (`python -m companion run`) beside a HostNginx, in host mode."""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import TypeVar

from tests.harness.nginx import HostNginx
from tests.harness.wait import wait_quiet, wait_until

T = TypeVar("T")


class Companion:
    """One `companion run` process with its own conf, certs and webroot folders."""

    def __init__(self, nginx: HostNginx, workdir: Path, **settings: str) -> None:
        self.nginx = nginx
        self.workdir = workdir
        self.certs_dir = workdir / "certs"
        self.webroot = workdir / "webroot"
        self.reload_counter = workdir / "reloads.txt"
        self.log_path = workdir / "companion.log"
        self.control_socket = workdir / "run" / "control.sock"  # each its own, as each container has its own /run
        self.webroot.mkdir(parents=True, exist_ok=True)
        self.env = {
            "CONF_DIR": str(nginx.conf_dir),
            "ACME_WEBROOT": str(self.webroot),
            "CERTS_DIR": str(self.certs_dir),
            "HTTP_PORT": str(nginx.http_port),
            "HTTPS_PORT": str(nginx.https_port),
            "NGINX_TEST": nginx.test_command,
            "NGINX_RELOAD": f"echo x >> {self.reload_counter} && {nginx.reload_command}",
            "HEARTBEAT_FILE": str(workdir / "heartbeat"),
            "CONTROL_SOCKET": str(self.control_socket),
            # Never the real Let's Encrypt from a test: a labelled container of anything else on the
            # daemon would otherwise send an order to the internet. Tests that issue pass Pebble's URL.
            "ACME_CA_URI": "https://127.0.0.1:9/directory",
            "ACME_STAGING_URI": "https://127.0.0.1:9/staging",  # what LETSENCRYPT_TEST=true selects
            "LOG_LEVEL": "DEBUG",
        }
        self.env.update(settings)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Companion:
        env = {**os.environ, **self.env}
        handle = open(self.log_path, "ab")  # noqa: SIM115 - owned by the child for its lifetime
        self.process = subprocess.Popen(
            [sys.executable, "-m", "companion", "run"], stdout=handle, stderr=subprocess.STDOUT, env=env
        )
        handle.close()
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Stop the process; returns its exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def cli(
        self, *args: str, timeout: float = 120.0, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run another companion command (render, certs, renew) with the same settings, `env` on top."""
        return subprocess.run(
            [sys.executable, "-m", "companion", *args],
            env={**os.environ, **self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def count(self, pattern: str) -> int:
        return len(re.findall(pattern, self.log()))

    def reloads(self) -> int:
        return len(self.reload_counter.read_text().splitlines()) if self.reload_counter.exists() else 0

    def wait_log(self, pattern: str, timeout: float = 15.0) -> str:
        match = wait_until(
            lambda: re.search(pattern, self.log()),
            timeout,
            what=f"log line /{pattern}/",
            logs=[("companion log", self.log)],
        )
        return match.group(0)

    def wait_idle(self, quiet: float = 1.0, timeout: float = 20.0) -> None:
        """Wait until the log has not grown for `quiet` seconds (the loop has settled)."""
        wait_quiet(
            lambda: self.log_path.stat().st_size if self.log_path.exists() else 0,
            quiet,
            timeout,
            "the companion's log to stop growing",
            logs=[("companion log", self.log)],
        )


def status_get(
    port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One plain HTTP request to a companion's status server on 127.0.0.1:`port`: status, headers, body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        connection.close()
