"""The Swarm channel's test parts: one controller secret, a bundle's files, an agent on a temporary folder,
and the server object the publisher's handler needs. Shared by the pure and the process-level cluster tests."""

from __future__ import annotations

from pathlib import Path

from companion.cluster import agent, publisher
from companion.cluster import secret as cluster
from companion.settings.config import Settings

CONTROLLER = cluster.new_secrets()
SECRET = CONTROLLER.agent


def _files(certs_dir: str) -> dict[str, str]:
    return {
        "companion.conf": f"server {{\n    ssl_certificate {certs_dir}/live/a/fullchain.pem;\n"
        f"    ssl_certificate_key {certs_dir}/live/a/privkey.pem;\n}}\n",
        "companion-tls.inc": "ssl_protocols TLSv1.2;\n",
    }


def _agent(tmp_path: Path, certs_dir: Path, node: str = "n1") -> agent.Agent:
    settings = Settings(
        conf_dir=str(tmp_path / "conf"), certs_dir=str(certs_dir), agent_state_dir=str(tmp_path / f"s-{node}")
    )
    return agent.Agent(settings, SECRET, node, agent.ChildNginx())


class _Server:
    """What publisher._Handler needs of its ClusterServer."""

    def __init__(self, pub: publisher.ClusterPublisher) -> None:
        self.publisher, self.secret, self.long_poll = pub, CONTROLLER, 0.2
