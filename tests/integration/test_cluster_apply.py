"""An agent applying a bundle with its real child nginx and enrolling over a loopback channel: processes and
sockets, so integration. The pure parts of the channel are tests/unit/test_cluster.py.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import stat
import threading
from pathlib import Path

from companion.cluster import agent, bundle, publisher
from companion.cluster import secret as cluster
from companion.nginx.apply import NginxControl, NginxError
from tests.harness.cluster import CONTROLLER, _agent, _files, _Server


class _Refusing(NginxControl):
    def __init__(self, refuse: bool) -> None:
        super().__init__("true", "true")
        self.refuse = refuse

    def test(self) -> None:
        if self.refuse:
            raise NginxError("[emerg] refused")


def test_an_agent_writes_keys_0600_and_puts_certificates_back_when_nginx_refuses(tmp_path: Path) -> None:
    certs_dir = tmp_path / "certs"
    node = _agent(tmp_path, certs_dir)
    files = _files(str(certs_dir))
    first = bundle.build(files, str(tmp_path / "conf"), str(certs_dir), lambda path: f"one {path}")
    node.nginx = _Refusing(False)  # type: ignore[assignment]
    assert node.apply(first).error == ""
    key = certs_dir / "live/a/privkey.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((certs_dir / "live/a").stat().st_mode) == 0o700
    second = bundle.build(
        {**files, "companion-tls.inc": "x"}, str(tmp_path / "conf"), str(certs_dir), lambda path: f"two {path}"
    )
    node.nginx = _Refusing(True)  # type: ignore[assignment]
    node.generation = first.generation
    outcome = node.apply(second)
    assert outcome.generation == first.generation and "refused" in outcome.error
    assert key.read_text() == "one live/a/privkey.pem"  # the last good certificate, not the refused one
    assert (tmp_path / "conf/companion-tls.inc").read_text() == files["companion-tls.inc"]


def test_an_agent_enrols_its_own_key_and_then_speaks_only_as_its_node(tmp_path: Path) -> None:
    certs_dir = tmp_path / "certs"
    pub = publisher.ClusterPublisher(str(tmp_path / "conf"), str(certs_dir), str(tmp_path), 80)  # the agent's paths
    pub.apply({"companion.conf": "# for node-a\n"})
    node = _agent(tmp_path, certs_dir, "node-a")
    node.nginx = _Refusing(False)  # type: ignore[assignment]

    def connection(timeout: float, context: ssl.SSLContext | None = None) -> http.client.HTTPConnection:
        near, far = socket.socketpair()
        served = cluster.server_context(CONTROLLER).wrap_socket(far, server_side=True, do_handshake_on_connect=False)
        threading.Thread(target=publisher._Handler, args=(served, ("10.0.0.7", 1), _Server(pub)), daemon=True).start()
        made = http.client.HTTPConnection("controller")
        chosen = context or node.context
        assert chosen is not None
        made.sock = chosen.wrap_socket(near)
        return made

    node._connection = connection  # type: ignore[method-assign,assignment]
    assert node.context is None
    node._enrolled()
    assert node.context is not None and (tmp_path / "s-node-a" / agent.NODE_KEY_FILE).stat().st_mode & 0o777 == 0o600
    received = node.fetch("", 0)
    assert received is not None and received.files == {"companion.conf": "# for node-a\n"}
    assert node.apply(received).error == ""
    node.generation = received.generation
    node.report()
    (seen,) = pub.nodes()
    assert (seen.node, seen.current, seen.address) == ("node-a", True, "10.0.0.7")
    # A restart keeps the key and the certificate: no new enrolment, the same binding.
    again = _agent(tmp_path, certs_dir, "node-a")
    assert again.context is not None and again.key.private_numbers() == node.key.private_numbers()
