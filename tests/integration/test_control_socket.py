"""The control socket against a neighbour container: real dockerd, a real `companion run` in host mode.

nginx's container mounts the certs volume (read-only), and a read-only mount does not stop a unix-socket
connect: a root process there could order certificates at will. The neighbour here mounts the certs dir
read-only as nginx does and looks for any socket in it; then it is given the socket's own folder (an
operator's mistake) and must still be refused, by the peer check.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness.appimage import AppRunner
from tests.harness.companion import Companion

pytestmark = [pytest.mark.integration]

# Run by the host's python3 inside the app image (host /usr mounted read-only): every socket under the given
# folders, and the answer each gives to a forced order of every certificate.
NEIGHBOUR = r"""
import json, os, socket, stat, sys
found = {}
for top in sys.argv[1:]:
    for folder, _dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(folder, name)
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                continue
            body = b'{"names": [], "force": true}'
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.settimeout(10)
                    s.connect(path)
                    s.sendall(b"POST /renew HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                    answer = b""
                    while chunk := s.recv(65536):
                        answer += chunk
                found[path] = answer.decode(errors="replace")
            except OSError as exc:
                found[path] = f"error: {exc}"
print(json.dumps(found))
"""


def neighbour(apps: AppRunner, mounts: dict[Path, str]) -> dict[str, str]:
    """Run the neighbour as root with `mounts` (host folder -> path) read-only; the sockets it found."""
    volumes: dict[str, dict[str, str]] = {
        "/usr": {"bind": "/usr", "mode": "ro"},
        "/usr/lib": {"bind": "/lib", "mode": "ro"},
        "/usr/lib64": {"bind": "/lib64", "mode": "ro"},
    }
    volumes.update({str(host): {"bind": inside, "mode": "ro"} for host, inside in mounts.items()})
    container: Any = apps(
        "neighbour",
        wait=False,
        network_mode="none",
        volumes=volumes,
        command=["/usr/bin/python3", "-c", NEIGHBOUR, *mounts.values()],
    )
    status = container.wait(timeout=60)
    output = container.logs(stdout=True, stderr=True).decode(errors="replace")
    assert status["StatusCode"] == 0, output
    return json.loads(output.strip().splitlines()[-1])


def test_a_neighbour_with_the_certs_volume_read_only_finds_no_control_socket(
    apps: AppRunner, make_companion: Callable[..., Companion]
) -> None:
    companion = make_companion()
    companion.wait_log("control socket .* orders through the service")
    found = neighbour(apps, {companion.certs_dir: "/etc/letsencrypt"})
    assert found == {}, f"sockets reachable through the certs volume: {found}"
    assert companion.count("asked by `companion renew`") == 0


def test_a_neighbour_given_the_sockets_folder_is_refused_by_the_peer_check(
    apps: AppRunner, make_companion: Callable[..., Companion]
) -> None:
    companion = make_companion()
    companion.wait_log("control socket .* orders through the service")
    found = neighbour(apps, {companion.control_socket.parent: "/run/companion"})
    assert list(found) == ["/run/companion/control.sock"], found
    answer = found["/run/companion/control.sock"]
    assert answer.startswith("HTTP/1.0 403"), answer
    assert "refused: the peer is in another PID namespace (another container)" in answer
    companion.wait_log(r"control socket: refused: the peer is in another PID namespace .*\(pid \d+, uid 0\)")
    # The service's own user on the host still orders through it.
    result = companion.cli("renew", "--force", "missing.test")
    assert result.stdout == f"# asked the running service at {companion.control_socket}\n", result.stderr
    assert "no usable certificate 'missing.test'" in result.stderr, result.stdout + result.stderr
