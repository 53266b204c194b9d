"""The version string of the host's real nginx, parsed as the companion parses it. The pure settings checks
are tests/unit/test_config.py.
"""

from __future__ import annotations

import subprocess

from companion.settings import config
from tests.harness.nginx import nginx_binary


def test_parse_nginx_version_of_the_real_nginx() -> None:
    done = subprocess.run([nginx_binary(), "-v"], capture_output=True, text=True, check=False)
    version = config.parse_nginx_version(done.stderr + done.stdout)
    assert len(version) == 3 and version >= (1, 18, 0)
