"""The controller's side of the cluster: it publishes each pass's files to the agents instead of applying them.

`ClusterPublisher.apply(files)` has the meaning of an applier: it turns the rendered files (and the
certificate files they name) into a bundle and makes it the current generation; agents long-poll for it
over mutual TLS (`ClusterServer`), apply it to their own nginx and report back what they applied and
their last error. The publisher keeps one entry per node: what the status page, `companion certs` and
`companion explain` show. ACME tokens are served to agents here too, so every node answers HTTP-01.

A node's name is the one in its node certificate (cluster.py), never one a request claims: the shared
agent credential may only ask for a node certificate (`POST /v1/enroll`), which is issued while no other
key holds that name (NODE_HOLD) and only for up to MAX_NODES names. The bindings are kept in the certs
volume (`companion/cluster-nodes.json`), and count as just heard from when the controller starts, so that
a restart does not open a window in which another key could take a live node's name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from companion.acme.certs import PEM_MAX_BYTES
from companion.cluster import bundle
from companion.cluster import secret as cluster
from companion.core.container import ContainerInfo
from companion.core.ports import ApplyResult, NodeView
from companion.observe import status
from companion.settings.config import parse_nginx_version
from companion.util.httpserve import CappedServer
from companion.util.logsafe import printable
from companion.util.safefiles import UnsafeFile, read_regular, real_dir, resolve_inside, write_atomic

log = logging.getLogger(__name__)

LONG_POLL = 25.0  # seconds an agent's request waits for a newer generation before answering 304
HANDSHAKE_TIMEOUT = 5.0
MAX_AGENTS = 256  # connections served at once (each agent holds one while it waits)
REPORT_MAX_BYTES = 64 * 1024
TOKEN = re.compile(r"[A-Za-z0-9_-]+")
NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
UP_AFTER = LONG_POLL + 10.0  # a node not heard from for longer is shown as away and not self-checked
CHALLENGE_PREFIX = "/v1/challenge/"
SELF_CHECK_WAIT = 10.0
CHALLENGE_RELAY_PORT = 8079  # on 127.0.0.1 in each agent's container: its nginx passes ACME tokens there
MAX_NODES = 128  # node names bound at once: a holder of the agent secret cannot flood the status page
NODE_HOLD = 600.0  # seconds a node name stays bound to its key after that key was last heard from
BINDINGS_FILE = "companion/cluster-nodes.json"
ENROLL_PATH = "/v1/enroll"


@dataclass(frozen=True)
class _Node:
    address: str
    generation: str = ""
    error: str = ""
    nginx_version: str = ""
    last_seen: float = 0.0


class ClusterPublisher:
    """The current bundle and the nodes' reports; safe to use from the loop and the server's threads.

    The loop's Applier with agents: nginx runs on the nodes, so none is needed here, backends are reached on
    the controller's own networks, and nginx passes ACME tokens to the agent's relay."""

    nginx_here = False
    relay = f"http://127.0.0.1:{CHALLENGE_RELAY_PORT}"
    done = "published to the agents"

    def __init__(self, conf_dir: str, certs_dir: str, webroot: str, http_port: int) -> None:
        self.conf_dir = conf_dir
        self.certs_dir = certs_dir
        self.webroot = Path(webroot)
        self.http_port = http_port
        self._changed = threading.Condition()
        self._bundle: bundle.Bundle | None = None
        self._body = b""
        self._nodes: dict[str, _Node] = {}
        started = time.time()
        self._keys = {name: (key, started) for name, key in self._load_bindings().items()}  # name -> (key, heard)

    # -- which key speaks for which node ------------------------------------------------------------

    def bind(self, node: str, key: str) -> str:
        """Bind `node` to the key `key` (a fingerprint), or say why not ('' when it is bound to it now)."""
        now = time.time()
        with self._changed:
            held = self._keys.get(node)
            if held is not None and held[0] != key and now - held[1] <= NODE_HOLD:
                return f"node name {node} is held by another key (heard from {now - held[1]:.0f}s ago)"
            if held is None:
                for name, (_, heard) in list(self._keys.items()):
                    if now - heard > NODE_HOLD:  # its status entry goes with it: names cannot pile up
                        del self._keys[name]
                        self._nodes.pop(name, None)
                if len(self._keys) >= MAX_NODES:
                    return f"{MAX_NODES} node names are bound already"
            changed = held is None or held[0] != key
            self._keys[node] = (key, now)
            if changed:
                self._save_bindings({name: bound for name, (bound, _) in self._keys.items()})
        if changed:
            log.info("node %s bound to key %s", node, key[:16])
        return ""

    def _load_bindings(self) -> dict[str, str]:
        try:
            value = json.loads(read_regular(Path(self.certs_dir) / BINDINGS_FILE, 1024 * 1024))
        except (OSError, ValueError):
            return {}
        if not isinstance(value, dict):
            return {}
        return {k: v for k, v in value.items() if isinstance(v, str) and NODE_NAME.fullmatch(k)}

    def _save_bindings(self, bindings: dict[str, str]) -> None:
        try:
            real_dir(Path(self.certs_dir), "companion")
            write_atomic(Path(self.certs_dir) / BINDINGS_FILE, json.dumps(bindings, indent=1) + "\n", mode=0o600)
        except OSError as exc:
            log.error("cannot save %s: %s", BINDINGS_FILE, exc.strerror or exc)

    # -- the applier side (the loop) --------------------------------------------------------------

    def start(self) -> None:
        """Nothing to tidy: the conf dir here is not nginx's."""

    def locate(self, nginx: Sequence[ContainerInfo]) -> None:
        """nginx runs on the nodes; the agents find it there."""

    def apply(self, files: Mapping[str, str]) -> ApplyResult:
        """Publish `files`; agents test and reload their own nginx, and report how it went."""
        try:
            made = bundle.build(files, self.conf_dir, self.certs_dir, self._read_cert)
        except (OSError, bundle.BadBundle) as exc:
            return ApplyResult(changed=(), error=f"cannot publish to the agents: {printable(str(exc))}")
        with self._changed:
            previous = self._bundle
            if previous is not None and previous.generation == made.generation:
                return ApplyResult(changed=())
            self._bundle, self._body = made, made.body()
            self._changed.notify_all()
        old_files = previous.files if previous is not None else {}
        changed = [name for name, content in made.files.items() if old_files.get(name) != content]
        log.info("published generation %s to the agents (%d files changed)", made.generation, len(changed))
        return ApplyResult(changed=tuple(changed or ["certificates"]))

    def _read_cert(self, relative: str) -> str:
        """A certificate file under the certs dir: certbot's live/ links are followed only inside it."""
        root = Path(os.path.realpath(self.certs_dir))
        path = resolve_inside(Path(self.certs_dir) / relative, [root])
        try:
            return read_regular(path, PEM_MAX_BYTES).decode("ascii")
        except UnsafeFile as exc:
            raise OSError(str(exc)) from None

    def generation(self) -> str:
        return self._bundle.generation if self._bundle is not None else ""

    def wait_newer(self, have: str, timeout: float) -> tuple[str, bytes] | None:
        """(generation, body) as soon as one other than `have` exists, None after `timeout`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self._bundle is None or self._bundle.generation == have:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)
            return self._bundle.generation, self._body

    # -- the agents' side (the server) --------------------------------------------------------------

    def report(self, node: str, address: str, value: Mapping[str, Any]) -> None:
        """Record what an agent says; a new error or a recovery is logged once."""
        generation = printable(str(value.get("generation", ""))[:64])
        error = printable(str(value.get("error", ""))[:2000])
        version = printable(str(value.get("nginx_version", ""))[:32])
        with self._changed:
            before = self._nodes.get(node)
            self._nodes[node] = _Node(address, generation, error, version, time.time())
        if error and (before is None or before.error != error):
            log.warning("node %s: %s; it keeps serving generation %s", node, error, generation or "(none)")
        elif not error and before is not None and before.error:
            log.info("resolved: node %s: %s", node, before.error)

    def seen(self, node: str, address: str) -> None:
        """A request from a node's agent: it is up."""
        with self._changed:
            before = self._nodes.get(node, _Node(address))
            self._nodes[node] = dataclasses.replace(before, address=address, last_seen=time.time())

    def _up(self) -> list[_Node]:
        now = time.time()
        with self._changed:
            return [n for _, n in sorted(self._nodes.items()) if now - n.last_seen <= UP_AFTER]

    def nodes(self) -> tuple[NodeView, ...]:
        now = time.time()
        with self._changed:
            current = self.generation()
            return tuple(
                NodeView(
                    node=name,
                    address=n.address,
                    generation=n.generation,
                    current=bool(n.generation) and n.generation == current,
                    error=n.error,
                    nginx_version=n.nginx_version,
                    last_seen=status.iso(n.last_seen),
                    up=now - n.last_seen <= UP_AFTER,
                )
                for name, n in sorted(self._nodes.items())
            )

    def nginx_version(self) -> tuple[int, ...] | None:
        """The oldest nginx among the nodes that are up: the rendered files must be valid on every one."""
        versions = []
        for node in self._up():
            with contextlib.suppress(ValueError):
                versions.append(parse_nginx_version(f"nginx/{node.nginx_version}"))
        return min(versions) if versions else None

    def self_check_bases(self, local: str = "") -> list[str]:
        """Where each node that is up answers plain HTTP: HTTP-01 may reach any of them.

        Runs on the ACME worker before an order, often right after the pass that published the host: it
        waits (up to SELF_CHECK_WAIT) for a node to be up and for the nodes that are up to serve the current
        generation, so that a controller just restarted or agents still reloading do not fail the check.
        `local` (where this process would reach a local nginx) is not one of them."""
        deadline = time.monotonic() + SELF_CHECK_WAIT
        while time.monotonic() < deadline:
            up = self._up()
            if up and all(n.generation == self.generation() for n in up):
                break
            time.sleep(0.1)
        return [
            f"http://{'[' + n.address + ']' if ':' in n.address else n.address}:{self.http_port}"
            for n in self._up()
            if n.address
        ]

    def challenge(self, token: str) -> bytes | None:
        """An ACME token's content from the webroot, for a name of [A-Za-z0-9_-] only (as nginx's location)."""
        if not TOKEN.fullmatch(token):
            return None
        try:
            return read_regular(self.webroot / ".well-known" / "acme-challenge" / token, 64 * 1024)
        except OSError:
            return None


class _Handler(BaseHTTPRequestHandler):
    server: ClusterServer
    timeout = LONG_POLL + 10
    server_version = "companion"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    peer: x509.Certificate

    def setup(self) -> None:
        self.request.settimeout(HANDSHAKE_TIMEOUT)
        self.request.do_handshake()  # in this thread: a slow client never holds up the others
        self.request.settimeout(self.timeout)
        # The handshake verified it against the cluster CA; its role and name decide what it may ask.
        self.peer = x509.load_der_x509_certificate(self.request.getpeercert(binary_form=True))
        super().setup()

    def _node(self) -> str | None:
        """The node this request speaks for, from its node certificate; None once refused (answer sent)."""
        role, name = cluster.role_of(self.peer), cluster.common_name(self.peer)
        if role != cluster.ROLE_NODE or not NODE_NAME.fullmatch(name):
            self._send(403, f"a node certificate is needed (enrol with POST {ENROLL_PATH})\n".encode(), "text/plain")
            return None
        reason = self.server.publisher.bind(name, cluster.fingerprint(self.peer.public_key()))
        if reason:
            log.warning("refused a request for node %s from %s: %s", name, self.client_address[0], reason)
            self._send(403, (reason + "\n").encode(), "text/plain")
            return None
        return name

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query, max_num_fields=4)
        publisher = self.server.publisher
        node = self._node()
        if node is None:
            return
        if url.path.startswith(CHALLENGE_PREFIX):
            content = publisher.challenge(url.path[len(CHALLENGE_PREFIX) :])
            if content is None:
                self._send(404, b"not found\n", "text/plain")
            else:
                self._send(200, content, "text/plain")
            return
        nonce = self.headers.get(cluster.NONCE_HEADER, "")
        if url.path != "/v1/bundle" or not 16 <= len(nonce) <= 128:
            self._send(400, b"expected /v1/bundle?have=GENERATION with a nonce\n", "text/plain")
            return
        publisher.seen(node, self.client_address[0])
        have = query.get("have", [""])[0]
        try:
            wait = min(max(float(query.get("wait", [""])[0]), 0.0), self.server.long_poll)
        except ValueError:
            wait = self.server.long_poll
        newer = publisher.wait_newer(have, wait)
        if newer is None:
            self._send(304, b"", "application/json")
            return
        _, body = newer
        self._send(200, body, "application/json", cluster.sign(self.server.secret, nonce, body))

    def _body(self, limit: int) -> bytes | None:
        try:
            length = int(self.headers.get("Content-Length", "-1"))
        except ValueError:
            length = -1
        return self.rfile.read(length) if 0 <= length <= limit else None

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        if url.path == ENROLL_PATH:
            self._enroll(parse_qs(url.query, max_num_fields=4).get("node", []))
            return
        node = self._node()
        if node is None:
            return
        data = self._body(REPORT_MAX_BYTES)
        if url.path != "/v1/report" or data is None:
            self._send(400, b"expected /v1/report with a JSON body\n", "text/plain")
            return
        try:
            value = json.loads(data)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            self._send(400, b"expected a JSON object\n", "text/plain")
            return
        self.server.publisher.report(node, self.client_address[0], value)
        self._send(204, b"", "text/plain")

    def _enroll(self, names: list[str]) -> None:
        """A node certificate for the key in the request, if that node name is free or already this key's."""
        if cluster.role_of(self.peer) != cluster.ROLE_AGENT:
            self._send(403, b"enrolment needs the agent secret's certificate\n", "text/plain")
            return
        data = self._body(cluster.CSR_MAX_BYTES)
        if len(names) != 1 or not NODE_NAME.fullmatch(names[0]) or data is None:
            self._send(400, f"expected {ENROLL_PATH}?node=NAME with a CSR\n".encode(), "text/plain")
            return
        try:
            key = cluster.requested_key(data)
        except cluster.Refused as exc:
            self._send(400, f"{exc}\n".encode(), "text/plain")
            return
        reason = self.server.publisher.bind(names[0], cluster.fingerprint(key))
        if reason:
            log.warning("refused to enrol node %s from %s: %s", names[0], self.client_address[0], reason)
            self._send(409, (reason + "\n").encode(), "text/plain")
            return
        cert = cluster.issue_node_cert(self.server.secret, names[0], key)
        self._send(200, cert.public_bytes(serialization.Encoding.PEM), "application/x-pem-file")

    def _send(self, code: int, data: bytes, kind: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if code >= 400:  # a refused request's body may be unread: never take it for the next request
            self.send_header("Connection", "close")
            self.close_connection = True
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if data:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("cluster %s: %s", self.address_string(), printable(format % args))


class ClusterServer(CappedServer):
    """Mutual TLS: a client without a certificate from the cluster CA is refused in the handshake."""

    def __init__(self, address: tuple[str, int], publisher: ClusterPublisher, secret: cluster.ControllerSecret) -> None:
        self.publisher = publisher
        self.secret = secret
        self.long_poll = LONG_POLL
        self.context = cluster.server_context(secret)
        super().__init__(address, _Handler, MAX_AGENTS, "cluster")

    def get_request(self) -> tuple[Any, Any]:
        sock, address = self.socket.accept()
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address


def start_cluster_server(
    listen: tuple[str, int], publisher: ClusterPublisher, secret: cluster.ControllerSecret
) -> ClusterServer:
    server = ClusterServer(listen, publisher, secret)
    threading.Thread(target=server.serve_forever, name="cluster", daemon=True).start()
    log.info(
        "agents are served on https://%s:%d/ (mutual TLS, node certificates)",
        *listen,
    )
    return server
