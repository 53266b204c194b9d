"""The `companion proxy` supervisor with real child processes: when one exits, the other is stopped and the
supervisor fails. The pure parts of imports and the supervisor are tests/unit/test_imports.py.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from companion.serve.supervisor import Child, Supervisor


def test_supervisor_stops_the_other_child_and_fails_when_one_exits(tmp_path: Path) -> None:
    """Real processes: the first child writes the pid file and exits 3; the second must be stopped."""
    pid_file = tmp_path / "nginx.pid"
    first = Child(
        "nginx",
        (sys.executable, "-c", f"open({str(pid_file)!r}, 'w'); import time; time.sleep(0.3); exit(3)"),
        signal.SIGQUIT,
    )
    second = Child("companion", (sys.executable, "-c", "import time; time.sleep(60)"), signal.SIGTERM)
    supervisor = Supervisor((first, second), pid_file)
    previous = {
        sig: signal.getsignal(sig)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGALRM)
    }
    try:
        assert supervisor.run() == 3
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    assert supervisor.running == {}
