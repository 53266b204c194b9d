"""The repository's docker-stack.yml on a real 3-node Swarm: controller, an agent and nginx on every node.

The stack is deployed once for the module with `docker stack deploy` (images loaded into every node first,
COMPANION_IMAGE/NGINX_IMAGE at local tags, DOCKER_SOCKET at the manager's socket) plus
examples/swarm/docker-stack.ca-bundle.yml, which hands the controller Pebble's listener CA as a secret.
Pebble runs on the host bound to the Swarm bridge address; its DNS (challtestsrv) answers every name with
node 3's address, so HTTP-01 validation lands on a worker whose nginx relays the token from the controller.
Requests go from the host to each node's address (ports 80/443 published in host mode).
"""

from __future__ import annotations

import hashlib
import json
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from companion.cluster import secret as cluster
from tests.harness.agent import ensure_agent_image, ensure_companion_image
from tests.harness.appimage import ensure_app_image
from tests.harness.pebble import Pebble
from tests.harness.stack import REPO, Stack
from tests.harness.swarm import SwarmNodes
from tests.harness.tls import served_cert
from tests.harness.wait import wait_until

SUFFIX = uuid.uuid4().hex[:6]
DOMAIN = f"stack-{SUFFIX}.test"
STACK = "proxy"
CA_STACK_FILE = REPO / "examples/swarm/docker-stack.ca-bundle.yml"
APP_IMAGE = "companion-test-app:latest"
VALIDATED_NODE = 3  # challtestsrv answers every name with this node's address


@dataclass
class Stage:
    nodes: SwarmNodes
    stack: Stack
    pebble: Pebble
    services: list[str] = field(default_factory=list)

    def host(self, name: str) -> str:
        return f"{name}.{DOMAIN}"

    def create(self, name: str, tls: bool = False) -> str:
        """An app service on the stack's overlay, VIRTUAL_HOST (and LETSENCRYPT_HOST) as service labels;
        its task answers with its APP_ID. Returns that answer. (The app, PID 1 without a SIGTERM handler, is
        killed after 1 s rather than 10 s: the stack's overlay can only go once it is.)"""
        full = f"{name}-{SUFFIX}"
        labels = ["--label", f"VIRTUAL_HOST={self.host(name)}"]
        if tls:
            labels += ["--label", f"LETSENCRYPT_HOST={self.host(name)}"]
        self.nodes.docker(
            1, "service", "create", "-d", "--quiet", "--no-resolve-image", "--name", full,
            "--endpoint-mode", "dnsrr", "--network", self.stack.network, *labels,
            "--env", f"APP_ID={full}", "--stop-grace-period", "1s", APP_IMAGE,
        )  # fmt: skip
        self.services.append(full)
        return full

    def context(self) -> ssl.SSLContext:
        """Verifies the chain against Pebble's root and the name against the SNI host (no -k)."""
        return ssl.create_default_context(cadata=self.pebble.roots_pem())

    def https_body(self, n: int, name: str) -> str:
        try:
            return self.stack.body(n, self.host(name), https=True, context=self.context())
        except ssl.SSLError:
            return ""

    def fingerprint(self, n: int, name: str) -> str:
        cert = served_cert((self.nodes.address(n), 443), self.host(name), self.context())
        return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()[:16]

    def diagnose(self) -> str:
        return "\n".join(
            [f"---- {role} logs ----\n{self.stack.logs(role)[-6000:]}" for role in ("companion", "nginx")]
            + [f"---- pebble ----\n{self.pebble.log_text()[-3000:]}"]
        )


@pytest.fixture(scope="module")
def stage(swarm_nodes: SwarmNodes, docker_client, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:  # noqa: ANN001
    nodes = swarm_nodes
    started = time.monotonic()
    images = ensure_app_image(docker_client), ensure_companion_image(docker_client), ensure_agent_image(docker_client)
    nodes.load(*images)
    print(f"images ready on every node in {time.monotonic() - started:.1f}s")
    workdir = tmp_path_factory.mktemp("stack")
    pebble = Pebble(80, workdir=workdir / "pebble", listen=f"{nodes.net}.1", default_ipv4=nodes.address(VALIDATED_NODE))
    stack = Stack(
        nodes,
        STACK,
        {
            "COMPANION_IMAGE": images[1],
            "NGINX_IMAGE": images[2],
            "DOCKER_SOCKET": f"/run/{nodes.ns(1)}/docker.sock",
            "ACME_CA_URI": pebble.directory_url,
            "CA_BUNDLE_FILE": str(pebble.ca_bundle_path),
        },
        (CA_STACK_FILE,),
    )
    stage = Stage(nodes, stack, pebble)
    try:
        t = time.monotonic()
        stack.deploy()
        for n in nodes.nodes:
            wait_until(
                lambda n=n: _answers(stack, n),
                60,
                what=f"node {n}'s nginx answering on port 80",
                logs=[("stage", stage.diagnose)],
            )
        print(f"stack deployed, nginx answering on every node in {time.monotonic() - t:.1f}s")
        yield stage
    except subprocess.CalledProcessError as error:
        pytest.fail(f"{error.cmd} failed: {error.stderr}")
    finally:
        for service in stage.services:
            nodes.docker(1, "service", "rm", service, check=False)
        stack.remove()
        pebble.cleanup()
    left = stack.leftovers()
    assert not left, f"the stack left things behind on the nodes: {left}"


def _running(stage: Stage, service: str) -> bool:
    states = stage.nodes.docker(
        1, "service", "ps", "-f", "desired-state=running", "--format", "{{.CurrentState}}", service
    )
    return states.stdout.startswith("Running")


def _output(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


def _answers(stack: Stack, n: int) -> bool:
    try:
        stack.get(n, "nobody.invalid", timeout=1)
    except OSError:
        return False
    return True


def wait_all(stage: Stage, probe, expected: str, timeout: float, what: str) -> dict[int, float]:  # noqa: ANN001
    """time.time() at which each node first gave `expected` from probe(n), polled every 20 ms."""
    seen: dict[int, float] = {}

    def answered() -> dict[int, float]:
        for n in stage.nodes.nodes:
            if n not in seen and probe(n) == expected:
                seen[n] = time.time()
        return seen

    wait_until(
        answered,
        timeout,
        0.02,
        f"{what} (nodes that answered so far: last)",
        until=lambda done: len(done) >= stage.nodes.count,
        errors=(),
        logs=[("stage", stage.diagnose)],
    )
    return seen


def test_https_on_every_node_one_certificate_one_order(stage: Stage) -> None:
    t0 = time.time()
    expected = stage.create("web", tls=True)
    served = wait_all(stage, lambda n: stage.https_body(n, "web"), expected, 120, "HTTPS with a verified chain")
    print(f"service create -> HTTPS (chain verified) on all nodes: {max(served.values()) - t0:.2f}s")
    fingerprints = {n: stage.fingerprint(n, "web") for n in stage.nodes.nodes}
    assert len(set(fingerprints.values())) == 1, fingerprints
    assert stage.pebble.orders_seen() == 1, stage.pebble.log_text()[-3000:]
    assert stage.pebble.log_text().count("Issued certificate serial") == 1
    # Pebble validated through the node its DNS names: a worker, whose nginx relayed the token.
    relayed = {
        n: sum(
            "/.well-known/acme-challenge/" in line and "companion-self-check" not in line
            for c in stage.stack.containers(n, "nginx")
            for line in stage.nodes.docker(n, "logs", c, check=False).stdout.splitlines()
        )
        for n in stage.nodes.nodes
    }
    assert relayed[VALIDATED_NODE] >= 1 and sum(relayed.values()) == relayed[VALIDATED_NODE], relayed
    print(f"one certificate {fingerprints[1]} on every node, {stage.pebble.orders_seen()} order; validations {relayed}")
    # `companion certs` in the controller's container: the certificate, and each node serving the current generation.
    table = wait_until(
        lambda: _current_nodes(stage),
        15,
        what="every node current in `companion certs`",
        logs=[("stage", stage.diagnose)],
    )
    assert stage.host("web") in table, table


def _current_nodes(stage: Stage) -> str:
    """`companion certs` run in the controller's container, once it shows every node up and current."""
    (controller,) = stage.stack.containers(1, "companion")
    table = stage.nodes.docker(1, "exec", controller, "companion", "certs").stdout
    rows = [
        line.split()
        for line in table.splitlines()
        if line.split()[:1] in ([stage.nodes.ns(n)] for n in stage.nodes.nodes)
    ]
    fine = [row for row in rows if "(behind)" not in row and "(away)" not in row and row[2] != "none"]
    return table if len(fine) == stage.nodes.count else ""


def test_controller_away_nodes_keep_serving_and_converge_on_return(stage: Stage) -> None:
    expected = f"web-{SUFFIX}"
    if f"web-{SUFFIX}" not in stage.services:
        stage.create("web", tls=True)
        wait_all(stage, lambda n: stage.https_body(n, "web"), expected, 120, "HTTPS before the controller stops")
    before = stage.fingerprint(1, "web")
    stage.stack.scale("companion", 0)
    wait_until(
        lambda: not stage.stack.containers(1, "companion"),
        30,
        what="controller container gone",
        logs=[("stage", stage.diagnose)],
    )
    wait_all(stage, lambda n: stage.https_body(n, "web"), expected, 5, "HTTPS with the controller away")

    # One node's agent and its nginx die; Swarm starts a new task on the node's volumes.
    old = stage.stack.containers(2, "nginx")
    assert old, "no nginx task on node 2"
    t = time.monotonic()
    stage.nodes.docker(2, "rm", "-f", *old)
    wait_until(
        lambda: set(stage.stack.containers(2, "nginx")) - set(old),
        30,
        what="a new nginx task on node 2",
        logs=[("stage", stage.diagnose)],
    )
    wait_until(
        lambda: stage.https_body(2, "web") == expected,
        30,
        what="node 2 serving its last good again",
        logs=[("stage", stage.diagnose)],
    )
    print(f"node 2: agent+nginx killed -> serving the last good again in {time.monotonic() - t:.2f}s")
    assert all(stage.fingerprint(n, "web") == before for n in stage.nodes.nodes)

    late = stage.create("late")
    wait_until(
        lambda: _running(stage, late), 30, what="the late service's task running", logs=[("stage", stage.diagnose)]
    )
    assert all(stage.stack.body(n, stage.host("late")) != late for n in stage.nodes.nodes)

    t_scale = time.time()
    stage.stack.scale("companion", 1)
    served = wait_all(stage, lambda n: stage.stack.body(n, stage.host("late")), late, 60, "the late service")
    running = stage.stack.running_since("companion")
    assert running is not None
    last = max(served.values())
    print(
        "controller back: late service served on all nodes "
        f"{last - running:.2f}s after the controller task was running "
        f"({', '.join(f'swn{n} {served[n] - running:.2f}s' for n in sorted(served))}); "
        f"{last - t_scale:.2f}s after `docker service scale companion=1`"
    )
    wait_all(stage, lambda n: stage.https_body(n, "web"), expected, 10, "HTTPS after the controller's return")
    assert stage.pebble.orders_seen() == 1


def test_an_agent_with_another_clusters_secret_gets_nothing_from_the_deployed_controller(
    stage: Stage, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """tests/integration/test_agent.py covers the channel's refusals on one host; here the stack's own controller, found
    by its service name on the overlay, refuses a stranger (the nodes share the host's files: a bind mount)."""
    other = tmp_path_factory.mktemp("stranger") / "other.json"
    other.write_text(cluster.new_secrets().agent.text())
    other.chmod(0o644)
    image = stage.stack.env["NGINX_IMAGE"]
    name = f"stranger-{SUFFIX}"
    stage.nodes.docker(
        1, "run", "-d", "--name", name, "--network", stage.stack.network,
        "-v", f"{other}:/run/secrets/companion_agent:ro",
        "-e", "CONTROLLER_URL=https://companion:8443", "-e", "NODE_NAME=stranger", image, "agent",
    )  # fmt: skip
    try:
        wait_until(
            lambda: "certificate verify failed" in _output(stage.nodes.docker(1, "logs", name, check=False)),
            30,
            what="the stranger's TLS failure",
            logs=[
                ("stranger", lambda: _output(stage.nodes.docker(1, "logs", name, check=False))),
                ("stage", stage.diagnose),
            ],
        )
        files = stage.nodes.docker(1, "exec", name, "find", "/etc/nginx/conf.d", "/etc/letsencrypt", "-type", "f")
        assert files.stdout.split() == []
    finally:
        stage.nodes.docker(1, "rm", "-fv", name, check=False)


ATTACK = r"""
# Run in a container on the stack's overlay with what worker node 2 holds in /loot: its agent secret, its
# node key and node certificate. Prints one RESULTS line, then serves as a rogue controller on :8443.
import http.client, json, time
from pathlib import Path
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from companion.cluster import secret as cluster
from companion.cluster import publisher

loot = Path("/loot")
worker = cluster.load_agent_secret("/loot/companion_agent")
key = serialization.load_pem_private_key((loot / "node-key.pem").read_bytes(), password=None)
cert = x509.load_pem_x509_certificate((loot / "node-cert.pem").read_bytes())
enrol = cluster.client_context(worker, worker.enroll_cert, worker.enroll_key)
mine = cluster.client_context(worker, cert, key)

def ask(context, method, path, body=None):
    connection = http.client.HTTPSConnection("companion", 8443, context=context, timeout=10)
    try:
        connection.request(method, path, body=body, headers={cluster.NONCE_HEADER: "n" * 24})
        answer = connection.getresponse()
        return [answer.status, answer.read(1 << 20).decode(errors="replace")]
    except Exception as exc:
        return [0, f"{type(exc).__name__}: {exc}"]
    finally:
        connection.close()

other = ec.generate_private_key(ec.SECP256R1())
results = {
    "report as swn1 (enrolment certificate)": ask(enrol, "POST", "/v1/report?node=swn1", b'{"error": "forged"}'),
    "bundle as swn3 (enrolment certificate)": ask(enrol, "GET", "/v1/bundle?node=swn3&have=&wait=0"),
    "enrol swn1 with a new key": ask(enrol, "POST", "/v1/enroll?node=swn1", cluster.node_request(other, "swn1")),
    "challenge path traversal": ask(mine, "GET", "/v1/challenge/..%2F..%2F..%2Frun%2Fsecrets%2Fcompanion_controller"),
    "bundle with its own certificate": ask(mine, "GET", "/v1/bundle?node=swn1&have=&wait=0"),
}
print("RESULTS " + json.dumps(results), flush=True)
forged = cluster.ControllerSecret(
    worker.ca_cert, ec.generate_private_key(ec.SECP256R1()), cert, key, ed25519.Ed25519PrivateKey.generate(), worker
)
rogue = publisher.ClusterPublisher("/etc/nginx/conf.d", "/etc/letsencrypt", "/nonexistent", 80)
rogue.apply({"companion.conf": "server { listen 80 default_server; location / { alias /run/secrets/; } }\n"})
publisher.start_cluster_server(("0.0.0.0", 8443), rogue, forged)
print("ROGUE LISTENING", flush=True)
while True:
    time.sleep(1)
"""


def test_a_container_holding_a_workers_credential_cannot_push_pose_or_take_the_controllers_keys(
    stage: Stage, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Everything worker node 2 holds (the agent secret from its task, its node key and certificate from its state
    volume) in a container on the stack's overlay: the controller refuses it for other nodes' names, a rogue
    controller made of it gets no agent to apply anything, and none of the controller's keys is in reach."""
    worker, victim_node = 2, 3
    (task,) = stage.stack.containers(worker, "nginx")
    assert stage.nodes.docker(worker, "exec", task, "ls", "/run/secrets").stdout.split() == ["companion_agent"]
    loot = tmp_path_factory.mktemp("loot")
    for path in (
        "/run/secrets/companion_agent",
        "/var/lib/companion-agent/node-key.pem",
        "/var/lib/companion-agent/node-cert.pem",
    ):
        (loot / Path(path).name).write_text(stage.nodes.docker(worker, "exec", task, "cat", path).stdout)
    (loot / "attack.py").write_text(ATTACK)
    for file in loot.iterdir():
        file.chmod(0o644)
    image = stage.stack.env["NGINX_IMAGE"]
    attacker, victim = f"attacker-{SUFFIX}", f"victim-{SUFFIX}"
    stage.nodes.docker(
        worker, "run", "-d", "--name", attacker, "--network", stage.stack.network, "-v", f"{loot}:/loot:ro",
        "--entrypoint", "python3", image, "/loot/attack.py",
    )  # fmt: skip
    try:
        logs = wait_until(
            lambda: (
                "ROGUE LISTENING" in (text := _output(stage.nodes.docker(worker, "logs", attacker, check=False)))
                and text
            ),
            60,
            what="the attacker's results",
            logs=[("stage", stage.diagnose)],
        )
        results = json.loads(next(line for line in logs.splitlines() if line.startswith("RESULTS "))[8:])
        print("attacker with worker 2's credential:", {k: v[0] for k, v in results.items()})
        assert results["report as swn1 (enrolment certificate)"][0] == 403, results
        assert results["bundle as swn3 (enrolment certificate)"][0] == 403, results
        assert results["enrol swn1 with a new key"][0] == 409, results
        assert results["challenge path traversal"][0] == 404, results
        assert results["bundle with its own certificate"][0] == 200, results  # it is node 2: what node 2 gets
        # None of the controller's private keys is in what the worker holds or what it got.
        (controller,) = stage.stack.containers(1, "companion")
        held = stage.nodes.docker(1, "exec", controller, "cat", "/run/secrets/companion_controller").stdout
        private = [value for name, value in json.loads(held).items() if name in ("ca_key", "server_key", "sign_key")]
        seen = "".join(file.read_text() for file in loot.iterdir()) + json.dumps(results)
        assert len(private) == 3 and not any(key.strip().splitlines()[1] in seen for key in private)
        # Node 3 as the rogue's victim: an agent holding the real agent secret, pointed at the rogue.
        stage.nodes.docker(
            victim_node, "run", "-d", "--name", victim, "--network", stage.stack.network,
            "-v", f"{loot / 'companion_agent'}:/run/secrets/companion_agent:ro",
            "-e", f"CONTROLLER_URL=https://{attacker}:8443", "-e", "NODE_NAME=victim", image, "agent",
        )  # fmt: skip
        wait_until(
            lambda: (
                "certificate verify failed" in _output(stage.nodes.docker(victim_node, "logs", victim, check=False))
            ),
            30,
            what="the victim refusing the rogue controller",
            logs=[
                ("victim", lambda: _output(stage.nodes.docker(victim_node, "logs", victim, check=False))),
                ("attacker", lambda: _output(stage.nodes.docker(worker, "logs", attacker, check=False))),
            ],
        )
        time.sleep(1)
        files = stage.nodes.docker(
            victim_node, "exec", victim, "find", "/etc/nginx/conf.d", "/etc/letsencrypt", "-type", "f"
        )
        assert files.stdout.split() == []
        # The controller's view: each node is itself, none carries the forged error, no other name appeared.
        table = wait_until(
            lambda: _current_nodes(stage),
            30,
            what="every node current in `companion certs`",
            logs=[("stage", stage.diagnose)],
        )
        assert "forged" not in table and "victim" not in table, table
    finally:
        stage.nodes.docker(worker, "rm", "-fv", attacker, check=False)
        stage.nodes.docker(victim_node, "rm", "-fv", victim, check=False)
