"""`companion agent`: one per Swarm node, beside (in fact above) that node's nginx, without a Docker socket.

Swarm gives services no shared PID namespace and, by design, no Docker socket on workers, so the agent
cannot `docker exec` into a separate nginx nor signal it. Instead the agent image runs nginx as the agent's
own child (`nginx -g 'daemon off;'`): it tests with the real `nginx -t` in the same filesystem, reloads
with SIGHUP to its child, and exits non-zero when nginx dies, so Swarm restarts the pair together.

It holds the agent secret only (cluster.py): at first start it makes a node key in its state volume and
enrols it for a node certificate naming its node, then long-polls the controller over mutual TLS with that
certificate (the controller's own certificate pinned) with the generation it serves, applies a
newer one with the same rule as the controller does locally (write beside, `nginx -t`, keep the last
good, reload; certificates first, put back too when nginx refuses), and reports the generation its
nginx serves and its last error. The conf dir and certs dir are volumes on the node: after a restart,
with the controller away, nginx starts from the last good files and certificates.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import logging
import os
import secrets
import signal
import socket
import ssl
import subprocess
import threading
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from companion.cluster import bundle
from companion.cluster import secret as cluster
from companion.cluster.publisher import CHALLENGE_PREFIX, CHALLENGE_RELAY_PORT, ENROLL_PATH, LONG_POLL, NODE_NAME, TOKEN
from companion.nginx.apply import COMMAND_TIMEOUT, NginxControl, NginxError, apply
from companion.nginx.render import MAIN_FILE
from companion.settings.config import Settings
from companion.util.logsafe import printable
from companion.util.safefiles import UnsafeFile, read_regular, real_dir, write_atomic

log = logging.getLogger(__name__)

RETRY_FIRST, RETRY_MAX = 0.5, 30.0
RECONNECT_EVERY = 0.5  # with the controller away: it is back in use within this much of its return
RESOLVE_TIMEOUT = 1.0
_RESOLVER = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="resolve")
STATE_FILE = "state.json"
NODE_KEY_FILE, NODE_CERT_FILE = "node-key.pem", "node-cert.pem"  # in the state volume: this node's identity
NGINX_COMMAND = ("nginx", "-g", "daemon off;")


class ChildNginx(NginxControl):
    """nginx as this process's child: tested with `nginx -t`, reloaded with SIGHUP, watched for its exit."""

    def __init__(self, command: tuple[str, ...] = NGINX_COMMAND) -> None:
        super().__init__("nginx -t", "SIGHUP")
        self.command = command
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command)  # its output is the container's log, as in the nginx image
        log.info("started nginx (pid %d)", self.process.pid)

    def reload(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise NginxError("nginx is not running")
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: finish the requests in flight
            try:
                self.process.wait(COMMAND_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Outcome:
    generation: str  # what nginx serves after the attempt
    error: str = ""


class Agent:
    def __init__(self, settings: Settings, secret: cluster.AgentSecret, node: str, nginx: ChildNginx) -> None:
        self.settings = settings
        self.secret = secret
        self.node = node
        self.nginx = nginx
        self.conf_dir = Path(settings.conf_dir)
        self.certs_dir = Path(settings.certs_dir)
        self.state_dir = Path(settings.agent_state_dir)
        url = urlsplit(settings.controller_url)
        self.host, self.port = url.hostname or "", url.port or 443
        self.enroll_context = cluster.client_context(secret, secret.enroll_cert, secret.enroll_key)
        self.key = self._node_key()
        self.context: ssl.SSLContext | None = None  # with this node's certificate, once it has a good one
        self._use_node_cert(self._stored_node_cert())
        state = self._load_state()
        # A generation counts only while its files are there (a conf volume replaced or emptied: ask again).
        self.generation = str(state.get("generation", "")) if (self.conf_dir / MAIN_FILE).is_file() else ""
        self.cert_files = [str(p) for p in state.get("certs", []) if isinstance(p, str)]
        self.error = ""
        self.version = ""

    # -- this node's identity --------------------------------------------------------------------------

    def _node_key(self) -> ec.EllipticCurvePrivateKey:
        """This node's key, made once and kept 0600 in the state volume: the controller binds the node name to it."""
        path = self.state_dir / NODE_KEY_FILE
        try:
            key = serialization.load_pem_private_key(read_regular(path, 64 * 1024), password=None)
            if isinstance(key, ec.EllipticCurvePrivateKey):
                return key
            log.warning("%s is not an EC key; making a new node key", path)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("cannot use %s (%s); making a new node key", path, printable(str(exc)))
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(path, pem.decode(), mode=0o600)
        return key

    def _stored_node_cert(self) -> x509.Certificate | None:
        try:
            cert = x509.load_pem_x509_certificate(read_regular(self.state_dir / NODE_CERT_FILE, 64 * 1024))
        except (OSError, ValueError):
            return None
        problem = cluster.node_cert_problem(self.secret, cert, self.key, self.node)
        if problem:
            log.info("the stored node certificate is not used: %s", problem)
            return None
        return cert

    def _use_node_cert(self, cert: x509.Certificate | None) -> None:
        self.node_cert = cert
        self.context = cluster.client_context(self.secret, cert, self.key) if cert is not None else None

    def enroll(self) -> None:
        """Ask the controller (over the agent secret's certificate) for a certificate naming this node and key."""
        connection = self._connection(10, self.enroll_context)
        try:
            connection.request(
                "POST",
                f"{ENROLL_PATH}?node={quote(self.node)}",
                body=cluster.node_request(self.key, self.node),
                headers={"Content-Type": "application/pkcs10"},
            )
            answer = connection.getresponse()
            data = answer.read(64 * 1024)
        finally:
            connection.close()
        if answer.status != 200:
            reason = printable(data.decode("utf-8", "replace").strip()[:300])
            raise cluster.Refused(f"the controller refused to enrol node {self.node} (HTTP {answer.status}: {reason})")
        try:
            cert = x509.load_pem_x509_certificate(data)
        except ValueError:
            raise cluster.Refused("the controller's node certificate is not PEM") from None
        problem = cluster.node_cert_problem(self.secret, cert, self.key, self.node)
        if problem:
            raise cluster.Refused(f"the controller's node certificate cannot be used: {problem}")
        write_atomic(self.state_dir / NODE_CERT_FILE, data.decode("ascii"), mode=0o644)
        self._use_node_cert(cert)
        log.info("node %s enrolled (key %s)", self.node, cluster.fingerprint(self.key.public_key())[:16])

    def _enrolled(self) -> None:
        """Enrol when there is no usable node certificate, or it nears its end (the same key: the binding holds)."""
        if self.node_cert is None or cluster.node_cert_problem(self.secret, self.node_cert, self.key, self.node):
            self.enroll()

    # -- the channel --------------------------------------------------------------------------------

    def _connection(self, timeout: float, context: ssl.SSLContext | None = None) -> http.client.HTTPSConnection:
        """To the controller, with this node's certificate (or `context`, the enrolment one)."""
        context = context or self.context
        if context is None:
            raise cluster.Refused(f"node {self.node} is not enrolled yet")
        return http.client.HTTPSConnection(self._address(), self.port, context=context, timeout=timeout)

    def _address(self) -> str:
        """The controller's address, looked up with a bound: while the controller's task is down its name
        does not exist, and a resolver that forwards the question outside may take its full timeout (10 s
        seen in a swarm without outside DNS) to say so; the agent must notice its return within a second."""
        future = _RESOLVER.submit(socket.getaddrinfo, self.host, self.port, type=socket.SOCK_STREAM)
        try:
            return str(future.result(timeout=RESOLVE_TIMEOUT)[0][4][0])
        except concurrent.futures.TimeoutError:
            raise OSError(f"{self.host} not resolved within {RESOLVE_TIMEOUT:.0f}s") from None

    def fetch(self, have: str, wait: float) -> bundle.Bundle | None:
        """The controller's bundle when it has one other than `have` (None after `wait` seconds).

        Raises OSError/ssl errors when the controller cannot be reached, Refused or BadBundle when the answer is
        refused: its signed length and digest are checked before the body is read, and no more than that is read."""
        nonce = secrets.token_urlsafe(24)
        connection = self._connection(wait + 10)
        try:
            connection.request(
                "GET", f"/v1/bundle?have={quote(have)}&wait={wait:.1f}", headers={cluster.NONCE_HEADER: nonce}
            )
            answer = connection.getresponse()
            if answer.status == 304:
                return None
            if answer.status != 200:
                reason = printable(answer.read(1024).decode("utf-8", "replace").strip()[:300])
                raise cluster.Refused(f"the controller answered HTTP {answer.status}: {reason}")
            length, digest = announced(self.secret, nonce, answer.headers)
            body = cluster.check_body(answer.read(length), length, digest)
        finally:
            connection.close()
        return bundle.parse(body)

    def report(self) -> None:
        data = json.dumps({"generation": self.generation, "error": self.error, "nginx_version": self.version}).encode()
        connection = self._connection(10)
        try:
            connection.request("POST", "/v1/report", body=data, headers={"Content-Type": "application/json"})
            connection.getresponse().read()
        finally:
            connection.close()

    def challenge(self, token: str) -> bytes | None:
        """An ACME token from the controller's webroot, for the local relay nginx passes tokens to."""
        connection = self._connection(10)
        try:
            connection.request("GET", CHALLENGE_PREFIX + token)
            answer = connection.getresponse()
            data = answer.read(64 * 1024)
        finally:
            connection.close()
        return data if answer.status == 200 else None

    # -- applying -----------------------------------------------------------------------------------

    def apply(self, received: bundle.Bundle) -> Outcome:
        """Certificates, then the conf files through nginx.apply; everything put back when nginx refuses."""
        if (received.conf_dir, received.certs_dir) != (self.settings.conf_dir, self.settings.certs_dir):
            return Outcome(
                self.generation,
                f"the controller writes for CONF_DIR={received.conf_dir} and CERTS_DIR={received.certs_dir}, "
                f"this agent has {self.settings.conf_dir} and {self.settings.certs_dir}; set the same on both",
            )
        previous: dict[str, str | None] = {}
        try:
            self.certs_dir.mkdir(parents=True, exist_ok=True)
            for relative, content in sorted(received.certs.items()):
                old = self._read_cert(relative)
                if old == content:
                    continue
                previous[relative] = old
                path = self.certs_dir / relative
                parent = str(PurePosixPath(relative).parent)
                if parent != ".":
                    real_dir(self.certs_dir, parent, 0o700)
                write_atomic(path, content, mode=0o600 if bundle.is_key(relative) else 0o644)
        except OSError as exc:
            self._restore_certs(previous)
            return Outcome(self.generation, f"cannot write certificates to {self.certs_dir}: {exc.strerror or exc}")
        result = apply(self.conf_dir, received.files, self.nginx)
        if not result.ok and not result.changed:  # refused or unwritable: the conf dir is as it was
            self._restore_certs(previous)
            return Outcome(self.generation, result.error)
        if not result.ok:  # written and tested, the reload failed: the files are good, nginx will load them
            return Outcome(received.generation, result.error)
        self._forget_certs(set(received.certs))
        return Outcome(received.generation)

    def _read_cert(self, relative: str) -> str | None:
        try:
            return read_regular(self.certs_dir / relative, 1024 * 1024).decode("ascii", "replace")
        except FileNotFoundError:
            return None
        except UnsafeFile:
            return None  # replaced by our own regular file, never read through

    def _restore_certs(self, previous: dict[str, str | None]) -> None:
        for relative, old in previous.items():
            path = self.certs_dir / relative
            try:
                if old is None:
                    path.unlink(missing_ok=True)
                else:
                    write_atomic(path, old, mode=0o600 if bundle.is_key(relative) else 0o644)
            except OSError as exc:
                log.error("could not restore %s: %s", path, exc.strerror or exc)

    def _forget_certs(self, kept: set[str]) -> None:
        """Certificate files the previous generation needed and this one does not: keys leave the node."""
        for relative in set(self.cert_files) - kept:
            try:
                bundle.check_relative(relative)
                (self.certs_dir / relative).unlink(missing_ok=True)
            except (OSError, bundle.BadBundle) as exc:
                log.warning("could not remove %s: %s", printable(relative), exc)
        self.cert_files = sorted(kept)

    def _load_state(self) -> dict[str, Any]:
        try:
            value = json.loads(read_regular(self.state_dir / STATE_FILE, 1024 * 1024))
        except (OSError, ValueError):
            return {}
        return value if isinstance(value, dict) else {}

    def _save_state(self) -> None:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            state = {"generation": self.generation, "certs": self.cert_files}
            write_atomic(self.state_dir / STATE_FILE, json.dumps(state, indent=1) + "\n", mode=0o600)
        except OSError as exc:
            log.error("cannot save %s: %s", self.state_dir / STATE_FILE, exc.strerror or exc)

    # -- the loop -----------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> int:
        """Until `stop`: 0 then, 1 when nginx exits by itself (the container is restarted with it)."""
        self.version = ".".join(map(str, self.nginx.version() or ()))
        self.nginx.start()
        log.info(
            "agent %s: serving generation %s; controller %s:%d",
            self.node,
            self.generation or "(none yet)",
            self.host,
            self.port,
        )
        relay = start_challenge_relay(self)
        threading.Thread(target=self._watch_nginx, args=(stop,), name="nginx-watch", daemon=True).start()
        try:
            return self._loop(stop)
        finally:
            relay.shutdown()
            self.nginx.stop()

    def _watch_nginx(self, stop: threading.Event) -> None:
        """nginx gone by itself: exit at once (the loop may be waiting on the controller for 25 s), non-zero,
        so that Swarm restarts the agent and nginx together and nginx starts again from the node's files."""
        assert self.nginx.process is not None
        code = self.nginx.process.wait()
        if not stop.is_set():
            log.error("nginx exited with code %d; stopping so that the agent and nginx restart together", code)
            logging.shutdown()
            os._exit(1)

    def _loop(self, stop: threading.Event) -> int:
        retry = 0.0
        reported = False
        unreachable = ""
        while not stop.is_set():
            try:
                self._enrolled()
                if not reported:
                    self.report()
                    reported = True
                # After a failure wait for a newer generation, or retry this one after `retry` seconds.
                wait = min(retry, LONG_POLL) if retry else LONG_POLL
                received = self.fetch(self.generation, wait)
            except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
                reason = printable(str(exc) or type(exc).__name__)
                if not unreachable:  # once until it is reached again; the reason may vary meanwhile
                    log.warning(
                        "cannot reach the controller at %s:%d (%s); nginx keeps serving generation %s",
                        self.host,
                        self.port,
                        reason,
                        self.generation or "(none)",
                    )
                    unreachable = reason
                reported = False
                stop.wait(RECONNECT_EVERY)
                continue
            except (bundle.BadBundle, cluster.Refused) as exc:
                self._set_error(f"refused the controller's answer: {exc}")
                reported = False
                retry = min(max(retry * 2, RETRY_FIRST), RETRY_MAX)
                stop.wait(retry)
                continue
            if unreachable:
                log.info("reached the controller again")
                unreachable = ""
            if received is None:
                continue
            outcome = self.apply(received)
            self.generation = outcome.generation
            self._set_error(outcome.error)
            if outcome.error:
                retry = min(max(retry * 2, RETRY_FIRST), RETRY_MAX)
            else:
                retry = 0.0
                log.info("applied generation %s", received.generation)
            self._save_state()
            reported = False
        return 0

    def _set_error(self, error: str) -> None:
        if error and error != self.error:
            log.error("%s; nginx keeps serving generation %s", error, self.generation or "(none)")
        elif not error and self.error:
            log.info("resolved: %s", self.error)
        self.error = error


def announced(secret: cluster.AgentSecret, nonce: str, headers: Message) -> tuple[int, str]:
    """The signed (length, digest) of an answer, from its headers, before its body is read."""
    names = (cluster.LENGTH_HEADER, cluster.DIGEST_HEADER, cluster.SIGNATURE_HEADER, "Content-Length")
    return cluster.announced(secret, nonce, {name: headers.get(name, "") for name in names}, bundle.MAX_BYTES)


class _RelayHandler(BaseHTTPRequestHandler):
    """nginx's ACME location passes token requests here; the token comes from the controller's webroot."""

    server: ChallengeRelay
    timeout = 10
    server_version = "companion-agent"
    sys_version = ""

    def do_GET(self) -> None:
        prefix = "/.well-known/acme-challenge/"
        token = self.path[len(prefix) :] if self.path.startswith(prefix) else ""
        content = None
        if TOKEN.fullmatch(token):
            try:
                content = self.server.agent.challenge(token)
            except (OSError, ssl.SSLError, http.client.HTTPException, cluster.Refused) as exc:
                log.warning("ACME token not fetched from the controller: %s", printable(str(exc)))
        self.send_response(200 if content is not None else 404)
        self.send_header("Content-Type", "text/plain")
        data = content if content is not None else b"not found\n"
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
        log.debug("challenge relay: %s", printable(format % args))


class ChallengeRelay(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        super().__init__(("127.0.0.1", CHALLENGE_RELAY_PORT), _RelayHandler)


def start_challenge_relay(agent: Agent) -> ChallengeRelay:
    relay = ChallengeRelay(agent)
    threading.Thread(target=relay.serve_forever, name="challenge-relay", daemon=True).start()
    return relay


def node_name(settings: Settings) -> str:
    """NODE_NAME, else this host's name (Swarm sets it per task, e.g. `{{.Node.Hostname}}`)."""
    name = settings.node_name or os.uname().nodename
    if not NODE_NAME.fullmatch(name):
        raise ValueError(f"node name {name!r} must be 1-63 letters, digits, '.', '_' or '-'")
    return name
