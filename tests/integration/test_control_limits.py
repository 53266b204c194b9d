"""The control socket's cap, deadline and limit on a real unix socket in front of a real AcmeManager: sockets,
so integration. The pure rate limit and peer check are tests/unit/test_control.py.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from companion.acme.orders import AcmeManager
from companion.serve import client as service
from companion.serve.control import start_control_server
from companion.settings.config import Settings
from tests.harness.certs import make_lineage
from tests.harness.clock import Clock
from tests.harness.wait import wait_until

# -- the real control socket -----------------------------------------------------------------------


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[AcmeManager, Clock]]:
    """A real AcmeManager on a certs dir with one lineage; its self-check goes to a closed loopback port, so an
    order fails there and nothing reaches a CA."""
    make_lineage(tmp_path / "certs", "site.test", ["site.test"])
    clock = Clock()
    settings = Settings(certs_dir=str(tmp_path / "certs"), webroot=str(tmp_path / "webroot"))
    acme = AcmeManager(settings, lambda _reason: None, lambda: "http://127.0.0.1:9", clock=clock)
    yield acme, clock
    acme.stop()


def settled(acme: AcmeManager, name: str) -> bool:
    return not acme.states()[name].in_progress


def test_forced_orders_through_the_socket_are_rate_limited_and_say_when_the_next_is_allowed(
    tmp_path: Path, manager: tuple[AcmeManager, Clock]
) -> None:
    """The attack: `{"names": [...], "force": true}` again and again made one order at the CA each time."""
    acme, clock = manager
    path = tmp_path / "run" / "control.sock"
    server = start_control_server(path, tmp_path / "certs", acme.order_now)
    assert server is not None
    try:
        assert service.ask_renew(path, ["site.test"], True) == {"site.test": "queued"}
        wait_until(lambda: settled(acme, "site.test"), what="the first order to finish")
        answers = [service.ask_renew(path, ["site.test"], True)["site.test"] for _ in range(12)]
        assert answers == [answers[0]] * 12
        assert answers[0].startswith("refused: next order of site.test allowed at 2030-01-01 01:00:00 UTC")
        assert acme.states()["site.test"].failures == 1  # one order made, not thirteen
        clock.now += 3600
        assert service.ask_renew(path, ["site.test"], True) == {"site.test": "queued"}
    finally:
        server.stop()
    assert not path.exists()


def test_the_socket_lives_outside_the_certs_dir_and_an_old_one_there_is_removed(
    tmp_path: Path, manager: tuple[AcmeManager, Clock]
) -> None:
    acme, _ = manager
    old = tmp_path / "certs" / "companion" / "control.sock"
    old.parent.mkdir(mode=0o700, exist_ok=True)
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(old))
    path = tmp_path / "run" / "companion" / "control.sock"
    server = start_control_server(path, tmp_path / "certs", acme.order_now)
    assert server is not None
    try:
        assert not old.exists()
        assert oct(path.stat().st_mode & 0o777) == "0o600" and oct(path.parent.stat().st_mode & 0o777) == "0o700"
    finally:
        server.stop()


def _slow(path: Path) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(path))
    client.sendall(b"POST /renew HTTP/1.1\r\nContent-Length: 40\r\n")  # and then nothing more, for now
    return client


def test_slow_connections_are_capped_and_cost_no_thread_and_a_quick_one_is_answered(
    tmp_path: Path, manager: tuple[AcmeManager, Clock]
) -> None:
    """The attack: 4,000 slow connections made 4,000 threads; here 300 of them."""
    acme, _ = manager
    path = tmp_path / "run" / "control.sock"
    server = start_control_server(path, tmp_path / "certs", acme.order_now)
    assert server is not None
    before = threading.active_count()
    slow: list[socket.socket] = []
    try:
        for _ in range(300):
            slow.append(_slow(path))
        assert service.ask_renew(path, ["gone.test"], False)["gone.test"].startswith("no usable certificate")
        assert threading.active_count() <= before + 2, threading.enumerate()
        wait_until(lambda: len(server.reading) <= 16, what=f"at most 16 open (open: {len(server.reading)})")
    finally:
        for client in slow:
            client.close()
        server.stop()


def test_a_request_trickling_in_is_cut_off_at_the_whole_request_deadline(
    tmp_path: Path, manager: tuple[AcmeManager, Clock]
) -> None:
    """One byte every 0.2 s keeps a per-read timeout happy forever; the deadline from the connect ends it."""
    acme, _ = manager
    path = tmp_path / "run" / "control.sock"
    server = start_control_server(path, tmp_path / "certs", acme.order_now)
    assert server is not None
    try:
        client = _slow(path)
        client.settimeout(0.2)
        answer = b""
        for _ in range(100):  # 20 s at most: four times the deadline
            try:
                client.send(b"X")
                chunk = client.recv(4096)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            answer += chunk
            if not chunk:
                break
        client.close()
        assert answer.startswith(b"HTTP/1.0 408"), answer
    finally:
        server.stop()


def test_a_refused_peer_is_answered_403_with_the_reason_and_nothing_is_ordered(
    tmp_path: Path, manager: tuple[AcmeManager, Clock], monkeypatch: pytest.MonkeyPatch
) -> None:
    acme, _ = manager
    monkeypatch.setattr("companion.serve.control.same_pid_namespace", lambda _pid: False)
    path = tmp_path / "run" / "control.sock"
    server = start_control_server(path, tmp_path / "certs", acme.order_now)
    assert server is not None
    try:
        with pytest.raises(service.NoAnswer, match="HTTP 403: refused: the peer is in another PID namespace"):
            service.ask_renew(path, ["site.test"], True)
        assert not acme.states()  # never asked
    finally:
        server.stop()
