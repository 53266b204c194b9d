"""The unit tier stays pure: a test here that starts a process or opens a socket fails at once.

Pure tests are the ones that run anywhere in seconds and never flake on a busy machine; a test that
needs `nginx -t`, htpasswd, a loopback listener or a daemon belongs in tests/integration, where the
shared lock and the harness are. The guard replaces subprocess.Popen (which run/check_output use) and
socket connect/bind for every test of this folder.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator

import pytest

MOVE = "move this test to tests/integration (the unit tier is pure: no processes, no sockets)"


def _refuse(what: str, tripped: list[str]):  # noqa: ANN202
    def refused(*args: object, **kwargs: object) -> None:
        tripped.append(f"unit test tried to {what} {args[1:2] or args[:1]!r}: {MOVE}")
        raise AssertionError(tripped[-1])

    return refused


@pytest.fixture(autouse=True)
def _pure(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    tripped: list[str] = []  # checked after the test too: code under test may swallow the AssertionError
    monkeypatch.setattr(subprocess, "Popen", _refuse("start a process", tripped))
    monkeypatch.setattr(socket.socket, "connect", _refuse("connect a socket to", tripped))
    monkeypatch.setattr(socket.socket, "connect_ex", _refuse("connect a socket to", tripped))
    monkeypatch.setattr(socket.socket, "bind", _refuse("bind a socket to", tripped))
    yield
    if tripped:
        pytest.fail(tripped[0], pytrace=False)
