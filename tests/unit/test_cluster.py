"""Fast checks of the Swarm channel's pure parts: bundles, signatures, the publisher's state.
The real proof (controller process, agent containers, real nginx and TLS) is tests/integration/test_agent.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import socket
import ssl
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from companion.cluster import bundle, publisher
from companion.cluster import secret as cluster
from tests.harness.cluster import CONTROLLER, SECRET, _agent, _files, _Server

CONF = "/etc/nginx/conf.d"


def test_a_bundle_carries_exactly_the_certificates_its_files_name_and_round_trips() -> None:
    files = _files("/certs")
    made = bundle.build(files, CONF, "/certs", lambda path: f"PEM of {path}")
    assert sorted(made.certs) == ["live/a/fullchain.pem", "live/a/privkey.pem"]
    again = bundle.build(dict(reversed(list(files.items()))), CONF, "/certs", lambda path: f"PEM of {path}")
    assert again.generation == made.generation and again.body() == made.body()
    assert bundle.parse(made.body()) == made
    changed = bundle.build(files, CONF, "/certs", lambda path: f"renewed {path}")
    assert changed.generation != made.generation  # a renewed certificate is a new generation


def test_a_file_outside_the_certs_dir_is_not_sent() -> None:
    made = bundle.build({"companion.conf": "ssl_certificate_key /etc/shadow;\n"}, CONF, "/certs", lambda p: "read")
    assert made.certs == {}


@pytest.mark.parametrize(
    ("files", "certs"),
    [
        ({"../companion.conf": ""}, {}),
        ({".hidden.conf": ""}, {}),
        ({"a/b.conf": ""}, {}),
        ({}, {"../../etc/passwd": ""}),
        ({}, {"live/../../x": ""}),
        ({}, {"/abs/privkey.pem": ""}),
        ({}, {"live/.x/privkey.pem": ""}),
    ],
)
def test_a_bundle_naming_a_path_outside_its_folders_is_refused_whole(
    files: dict[str, str], certs: dict[str, str]
) -> None:
    forged = bundle.Bundle("0", CONF, "/certs", files, certs)
    body = bundle.canonical(bundle._digest(CONF, "/certs", files, certs), CONF, "/certs", files, certs)
    assert forged.files == files
    with pytest.raises(bundle.BadBundle):
        bundle.parse(body)


def test_a_bundle_whose_generation_does_not_match_its_contents_is_refused() -> None:
    made = bundle.build(_files("/certs"), CONF, "/certs", lambda path: "x")
    forged = bundle.canonical(made.generation, CONF, "/certs", {"companion.conf": "evil"}, made.certs)
    with pytest.raises(bundle.BadBundle, match="generation"):
        bundle.parse(forged)


def _headers(signed: dict[str, str], length: int | None = None) -> dict[str, str]:
    return {**signed, "Content-Length": str(length if length is not None else signed[cluster.LENGTH_HEADER])}


def test_a_signature_holds_only_for_the_same_keys_nonce_length_and_bytes() -> None:
    other = cluster.new_secrets()
    signed = cluster.sign(CONTROLLER, "nonce-1", b"body")
    length, digest = cluster.announced(SECRET, "nonce-1", _headers(signed), 1000)
    assert cluster.check_body(b"body", length, digest) == b"body"
    with pytest.raises(cluster.Refused, match="not the one signed"):
        cluster.check_body(b"bodY", length, digest)
    with pytest.raises(cluster.Refused, match="signature"):
        cluster.announced(SECRET, "nonce-2", _headers(signed), 1000)  # an old answer replayed
    with pytest.raises(cluster.Refused, match="signature"):
        cluster.announced(other.agent, "nonce-1", _headers(signed), 1000)
    with pytest.raises(cluster.Refused, match="signature"):
        cluster.announced(SECRET, "nonce-1", _headers({**signed, cluster.LENGTH_HEADER: "5"}), 1000)
    with pytest.raises(cluster.Refused, match="length"):
        cluster.announced(SECRET, "nonce-1", _headers(signed, length=5), 1000)  # Content-Length disagrees
    with pytest.raises(cluster.Refused, match="over 3"):
        cluster.announced(SECRET, "nonce-1", _headers(signed), 3)


def test_each_role_reads_only_its_own_secret_and_the_old_single_secret_says_what_to_run(tmp_path: Path) -> None:
    assert cluster.parse_controller_secret(CONTROLLER.text().encode()).server_cert == CONTROLLER.server_cert
    assert cluster.parse_agent_secret(SECRET.text().encode()).verify_key == CONTROLLER.sign_key.public_key()
    with pytest.raises(cluster.SecretError, match="agents get the agent secret"):
        cluster.parse_agent_secret(CONTROLLER.text().encode())
    with pytest.raises(cluster.SecretError, match="the controller needs the controller secret"):
        cluster.parse_controller_secret(SECRET.text().encode())
    old = (cluster._pem(CONTROLLER.ca_cert) + cluster._key_pem(CONTROLLER.ca_key)).encode()  # the old layout
    for parse in (cluster.parse_agent_secret, cluster.parse_controller_secret):
        with pytest.raises(cluster.SecretError, match="companion cluster-secret --create"):
            parse(old)
    with pytest.raises(cluster.SecretError, match="cannot read"):
        cluster.load_agent_secret(str(tmp_path / "missing"))
    tampered = {**json.loads(SECRET.text()), "server_cert": cluster._pem(cluster.new_secrets().server_cert)}
    with pytest.raises(cluster.SecretError, match="not from its CA"):
        cluster.parse_agent_secret(json.dumps(tampered).encode())


def test_the_publisher_wakes_a_waiting_agent_only_for_a_new_generation(tmp_path: Path) -> None:
    (tmp_path / "live/a").mkdir(parents=True)
    for name in ("fullchain.pem", "privkey.pem"):
        (tmp_path / "live/a" / name).write_text(name)
    pub = publisher.ClusterPublisher(CONF, str(tmp_path), str(tmp_path / "webroot"), 80)
    assert pub.apply(_files(str(tmp_path))).changed
    first = pub.generation()
    assert pub.apply(_files(str(tmp_path))).changed == ()
    assert pub.wait_newer("", 0.1) is not None
    started = time.monotonic()
    assert pub.wait_newer(first, 0.2) is None and time.monotonic() - started >= 0.2
    files = {**_files(str(tmp_path)), "companion-tls.inc": "ssl_protocols TLSv1.3;\n"}
    threading.Timer(0.1, pub.apply, [files]).start()
    newer = pub.wait_newer(first, 5)
    assert newer is not None and newer[0] != first and time.monotonic() - started < 2


def test_the_publisher_serves_only_token_names_from_the_webroot(tmp_path: Path) -> None:
    folder = tmp_path / ".well-known/acme-challenge"
    folder.mkdir(parents=True)
    (folder / "tok").write_text("answer")
    (folder / "tok\n").write_text("newline")
    (tmp_path / "secret").write_text("secret")
    pub = publisher.ClusterPublisher(CONF, str(tmp_path), str(tmp_path), 80)
    assert pub.challenge("tok") == b"answer"
    for bad in ("tok\n", "../../secret", "", ".x", "tok/"):
        assert pub.challenge(bad) is None


def test_nodes_report_errors_and_the_oldest_nginx_decides_the_rendering(tmp_path: Path) -> None:
    pub = publisher.ClusterPublisher(CONF, str(tmp_path), str(tmp_path), 8080)
    pub.apply({"companion.conf": "#\n"})
    pub.report("n1", "10.0.0.1", {"generation": pub.generation(), "nginx_version": "1.26.3"})
    pub.report("n2", "10.0.0.2", {"generation": "old", "error": "nginx rejected \x1b[31m", "nginx_version": "1.22.1"})
    n1, n2 = pub.nodes()
    assert (n1.current, n2.current) == (True, False)
    assert n2.error == "nginx rejected \\x1b[31m"  # escaped before any page or log shows it
    assert pub.nginx_version() == (1, 22, 1)
    publisher.SELF_CHECK_WAIT, saved = 0.2, publisher.SELF_CHECK_WAIT
    try:
        assert pub.self_check_bases() == ["http://10.0.0.1:8080", "http://10.0.0.2:8080"]
    finally:
        publisher.SELF_CHECK_WAIT = saved


def test_an_agent_refuses_a_bundle_for_other_paths(tmp_path: Path) -> None:
    node = _agent(tmp_path, tmp_path / "certs")
    other = bundle.build({"companion.conf": "#\n"}, "/elsewhere", str(tmp_path / "certs"), lambda path: "")
    assert "set the same on both" in node.apply(other).error
    assert not (tmp_path / "conf").exists()


# -- roles: what the agent secret (every worker holds it) cannot do -------------------------------------------


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> str:
    """'' when `client` accepts `server` in a TLS handshake over a socket pair, else the client's error."""
    near, far = socket.socketpair()

    def serve() -> None:
        with contextlib.suppress(ssl.SSLError, OSError):
            server.wrap_socket(far, server_side=True).close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        client.wrap_socket(near).close()
        return ""
    except ssl.SSLError as exc:
        return str(exc)
    finally:
        near.close()
        thread.join(5)
        far.close()


def _leaf_server(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cluster._load_leaf(context, cluster._pem(cert), cluster._key_pem(key))
    return context


def _node_identity(node: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    return cluster.issue_node_cert(CONTROLLER, node, key.public_key()), key


def test_the_agent_secret_holds_no_key_that_signs_answers_serves_agents_or_mints_certificates() -> None:
    fields = json.loads(SECRET.text())
    assert [name for name, value in fields.items() if "PRIVATE KEY" in str(value)] == ["enroll_key"]
    for held in (CONTROLLER.ca_key, CONTROLLER.server_key, CONTROLLER.sign_key):
        assert cluster._key_pem(held) not in SECRET.text()
    # Posing as the controller: sign an answer with every private key a worker holds, and with one of its own.
    body = b'{"files": {"companion.conf": "server { listen 80; location / { alias /run/secrets/; } }"}}'
    digest = hashlib.sha256(body).hexdigest()
    statement = cluster._statement("nonce-1", len(body), digest)
    forged = [
        SECRET.enroll_key.sign(statement, ec.ECDSA(hashes.SHA256())).hex(),
        ed25519.Ed25519PrivateKey.generate().sign(statement).hex(),
    ]
    for signature in forged:
        headers = {
            cluster.LENGTH_HEADER: str(len(body)),
            cluster.DIGEST_HEADER: digest,
            cluster.SIGNATURE_HEADER: signature,
            "Content-Length": str(len(body)),
        }
        with pytest.raises(cluster.Refused, match="signature"):
            cluster.announced(SECRET, "nonce-1", headers, bundle.MAX_BYTES)


def test_the_agent_secret_cannot_serve_an_agent_only_the_pinned_controller_can() -> None:
    node_cert, node_key = _node_identity("n1")
    agent_side = cluster.client_context(SECRET, node_cert, node_key)
    assert _handshake(cluster.server_context(CONTROLLER), agent_side) == ""
    # What a worker holds (the enrolment certificate, its node certificate), and even a server certificate the
    # cluster CA signed (a worker cannot make one: it has no CA key): none is the pinned one.
    other_key = ec.generate_private_key(ec.SECP256R1())
    minted = cluster._issue(
        CONTROLLER.ca_cert,
        CONTROLLER.ca_key,
        other_key.public_key(),
        cluster.ROLE_CONTROLLER,
        "companion controller",
        1,
    )
    for cert, key in ((SECRET.enroll_cert, SECRET.enroll_key), (node_cert, node_key), (minted, other_key)):
        assert "certificate verify failed" in _handshake(_leaf_server(cert, key), agent_side)


def _ask(
    pub: publisher.ClusterPublisher, client: ssl.SSLContext, method: str, path: str, body: bytes = b""
) -> tuple[int, bytes]:
    """One request to the controller's real handler over TLS on a socket pair (no port)."""
    near, far = socket.socketpair()
    served = cluster.server_context(CONTROLLER).wrap_socket(far, server_side=True, do_handshake_on_connect=False)
    thread = threading.Thread(target=publisher._Handler, args=(served, ("10.0.0.9", 1), _Server(pub)), daemon=True)
    thread.start()
    connection = http.client.HTTPConnection("controller")
    connection.sock = client.wrap_socket(near)
    try:
        connection.request(method, path, body=body or None)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()
        thread.join(5)
        far.close()


def _enroll(pub: publisher.ClusterPublisher, node: str) -> tuple[int, ssl.SSLContext | None]:
    key = ec.generate_private_key(ec.SECP256R1())
    enrol = cluster.client_context(SECRET, SECRET.enroll_cert, SECRET.enroll_key)
    status, pem = _ask(pub, enrol, "POST", f"/v1/enroll?node={node}", cluster.node_request(key, node))
    if status != 200:
        return status, None
    cert = x509.load_pem_x509_certificate(pem)
    assert cluster.node_cert_problem(SECRET, cert, key, node) == ""
    return status, cluster.client_context(SECRET, cert, key)


def test_the_agent_secret_cannot_speak_for_another_node(tmp_path: Path) -> None:
    pub = publisher.ClusterPublisher(CONF, str(tmp_path), str(tmp_path), 80)
    pub.apply({"companion.conf": "#\n"})
    status, node_b = _enroll(pub, "node-b")
    assert status == 200 and node_b is not None
    assert _ask(pub, node_b, "POST", "/v1/report", b'{"generation": "g1"}')[0] == 204
    # The attacker holds the agent secret. Its enrolment certificate speaks for no node, whatever ?node= says.
    enrol = cluster.client_context(SECRET, SECRET.enroll_cert, SECRET.enroll_key)
    status, answer = _ask(pub, enrol, "POST", "/v1/report?node=node-b", b'{"error": "forged"}')
    assert status == 403 and b"node certificate" in answer
    assert _ask(pub, enrol, "GET", "/v1/bundle?node=node-b&have=&wait=0")[0] == 403
    # It cannot have node-b's name certified for a key of its own while node-b's key is heard from.
    status, _ = _enroll(pub, "node-b")
    assert status == 409
    # Its own node certificate makes it a node of its own name, whatever it claims.
    status, evil = _enroll(pub, "evil")
    assert status == 200 and evil is not None
    assert _ask(pub, evil, "POST", "/v1/report?node=node-b", b'{"error": "forged"}')[0] == 204
    nodes = {n.node: n for n in pub.nodes()}
    assert nodes["node-b"].generation == "g1" and nodes["node-b"].error == ""
    assert nodes["evil"].error == "forged"
    # The binding outlives a controller restart (kept in the certs dir, heard from at start).
    again = publisher.ClusterPublisher(CONF, str(tmp_path), str(tmp_path), 80)
    assert "held by another key" in again.bind("node-b", "another key")


def test_node_names_are_capped_and_a_silent_name_is_freed_after_the_hold(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publisher, "MAX_NODES", 3)
    pub = publisher.ClusterPublisher(CONF, str(tmp_path), str(tmp_path), 80)
    assert [pub.bind(f"n{i}", f"key{i}") for i in range(3)] == ["", "", ""]
    assert "3 node names are bound already" in pub.bind("n3", "key3")
    assert pub.bind("n0", "key0") == ""  # a bound node keeps working
    assert _enroll(pub, "n4")[0] == 409
    pub.report("n1", "10.0.0.1", {})
    monkeypatch.setattr(publisher, "NODE_HOLD", 0.05)
    time.sleep(0.1)
    assert pub.bind("n0", "new key") == ""  # its old key silent for longer than the hold
    assert pub.bind("n3", "key3") == ""
    assert [n.node for n in pub.nodes()] == []  # the silent names' status entries went with their bindings


def test_an_agent_reads_no_more_of_an_answer_than_the_controller_signed(tmp_path: Path) -> None:
    node = _agent(tmp_path, tmp_path / "certs")
    node._use_node_cert(cluster.issue_node_cert(CONTROLLER, "n1", node.key.public_key()))
    assert node.context is not None
    made = bundle.build({"companion.conf": "#\n"}, str(tmp_path / "conf"), str(tmp_path / "certs"), lambda p: "")

    def answer(sign: bool, announced: int) -> tuple[int, Exception | bundle.Bundle | None]:
        """Serve one answer announcing `announced` bytes and streaming them; (bytes sent, what fetch gave)."""
        near, far = socket.socketpair()
        sent = [0]

        def serve() -> None:
            with (
                contextlib.suppress(OSError),
                cluster.server_context(CONTROLLER).wrap_socket(far, server_side=True) as s,
            ):
                request = b""
                while b"\r\n\r\n" not in request:
                    request += s.recv(4096)
                nonce = next(
                    line.split(b":", 1)[1].strip().decode()
                    for line in request.split(b"\r\n")
                    if line.lower().startswith(cluster.NONCE_HEADER.lower().encode())
                )
                body = made.body() if sign else b"x" * announced
                headers = cluster.sign(CONTROLLER, nonce, body) if sign else {}
                head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                s.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{head}\r\n".encode())
                for start in range(0, len(body), 65536):
                    s.sendall(body[start : start + 65536])
                    sent[0] += len(body[start : start + 65536])

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        connection = http.client.HTTPConnection("controller")
        connection.sock = node.context.wrap_socket(near)  # type: ignore[union-attr]
        node._connection = lambda timeout: connection  # type: ignore[method-assign]
        result: Exception | bundle.Bundle | None
        try:
            result = node.fetch("", 0)
        except cluster.Refused as exc:
            result = exc
        thread.join(10)
        far.close()
        return sent[0], result

    size = 64 * 1024 * 1024
    sent, result = answer(sign=False, announced=size)
    assert isinstance(result, cluster.Refused) and "length" in str(result)
    assert sent < 8 * 1024 * 1024, f"{sent} bytes of an unsigned {size}-byte answer were sent before the refusal"
    sent, result = answer(sign=True, announced=0)
    assert result == made
