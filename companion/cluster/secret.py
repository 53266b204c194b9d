"""The agent <-> controller channel's credentials: two secrets with separate roles, mutual TLS, signed bundles.

`companion cluster-secret` makes two secrets from fresh keys. The **controller secret** holds the cluster CA
(certificate and key), the controller's server certificate and key, and the Ed25519 bundle-signing key.
The **agent secret**, which Swarm gives every node, holds only what verifies the controller (its server
certificate, pinned: agents trust that one certificate and no other the CA may sign; the bundle-verify
public key) and a shared enrolment credential (a client certificate of role "agent" and its key).

An agent proves who it is with a node certificate: at first start it makes a key in its state volume and
asks the controller, over the enrolment credential, for a certificate naming its node. The controller issues
one only while no other key holds that node name (a name stays bound to its key while that key was heard
from within NODE_HOLD, across controller restarts) and only up to MAX_NODES names; after that the node's
requests carry its node certificate, and the node name the controller records is the one in it. So a
worker's secret cannot sign a bundle an agent accepts, cannot serve agents, cannot mint certificates, and
cannot speak for a node whose key it lacks.

Everything the controller sends is signed with the bundle key over the agent's nonce, the body's length and
its SHA-256: the agent checks that signature before it reads the body, then reads exactly the signed length.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import ssl
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from companion.util.safefiles import read_regular

SECRET_MAX_BYTES = 64 * 1024
CSR_MAX_BYTES = 8 * 1024
CA_YEARS = 10
NODE_CERT_DAYS = 365
NODE_RENEW_DAYS = 30  # an agent asks for a new node certificate (same key) when less than this is left
ROLE_CONTROLLER, ROLE_AGENT, ROLE_NODE = "controller", "agent", "node"
NONCE_HEADER = "X-Companion-Nonce"
SIGNATURE_HEADER = "X-Companion-Signature"
LENGTH_HEADER = "X-Companion-Length"
DIGEST_HEADER = "X-Companion-Digest"
CONTROLLER_KIND, AGENT_KIND = "companion cluster controller secret", "companion cluster agent secret"
SECRET_VERSION = 2
SPLIT_COMMAND = "companion cluster-secret --create"
CONTROLLER_SECRET_FILE = "/run/secrets/companion_controller"
AGENT_SECRET_FILE = "/run/secrets/companion_agent"
OLD_SECRET_FILE = "/run/secrets/companion_cluster"  # the single secret of earlier versions
OLD_FORMAT = (
    "this is a single cluster secret of the old format, which gives every node the controller's keys; "
    f"make the controller and agent secrets with `{SPLIT_COMMAND}` and deploy the stack file that names them"
)


class SecretError(ValueError):
    """A cluster secret is missing, of the old single-secret format, or not the one this role needs."""


class Refused(ValueError):
    """The controller's answer or a peer's credential does not hold; nothing of it is used."""


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def fingerprint(public_key: ec.EllipticCurvePublicKey) -> str:
    """SHA-256 of a public key (SubjectPublicKeyInfo): what a node name is bound to."""
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()


def role_of(cert: x509.Certificate) -> str:
    units = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    return str(units[0].value) if len(units) == 1 else ""


def common_name(cert: x509.Certificate) -> str:
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if len(names) == 1 else ""


def _issue(
    ca_cert: x509.Certificate | None,
    ca_key: ec.EllipticCurvePrivateKey,
    public_key: ec.EllipticCurvePublicKey,
    role: str,
    name: str,
    days: int,
) -> x509.Certificate:
    """A leaf of `role` naming `name` (a self-signed CA when `ca_cert` is None)."""
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role),
            x509.NameAttribute(NameOID.COMMON_NAME, name[:64]),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject if ca_cert is not None else subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
    )
    if ca_cert is None:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True).add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if role == ROLE_CONTROLLER else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


@dataclass(frozen=True)
class AgentSecret:
    """What every node holds: verifies the controller, and enrols this node (proves nothing else)."""

    ca_cert: x509.Certificate
    server_cert: x509.Certificate  # the controller's, pinned
    verify_key: ed25519.Ed25519PublicKey
    enroll_cert: x509.Certificate
    enroll_key: ec.EllipticCurvePrivateKey

    def text(self) -> str:
        public = self.verify_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        value = {
            "kind": AGENT_KIND,
            "version": SECRET_VERSION,
            "ca_cert": _pem(self.ca_cert),
            "server_cert": _pem(self.server_cert),
            "verify_key": public.decode(),
            "enroll_cert": _pem(self.enroll_cert),
            "enroll_key": _key_pem(self.enroll_key),
        }
        return json.dumps(value, indent=1) + "\n"


@dataclass(frozen=True)
class ControllerSecret:
    """The controller's alone: the CA, its server identity and the bundle-signing key."""

    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    server_cert: x509.Certificate
    server_key: ec.EllipticCurvePrivateKey
    sign_key: ed25519.Ed25519PrivateKey
    agent: AgentSecret  # what `companion cluster-secret` gives the agents, made with it

    def text(self) -> str:
        value = {
            "kind": CONTROLLER_KIND,
            "version": SECRET_VERSION,
            "ca_cert": _pem(self.ca_cert),
            "ca_key": _key_pem(self.ca_key),
            "server_cert": _pem(self.server_cert),
            "server_key": _key_pem(self.server_key),
            "sign_key": _key_pem(self.sign_key),
            "enroll_cert": _pem(self.agent.enroll_cert),
            "enroll_key": _key_pem(self.agent.enroll_key),
        }
        return json.dumps(value, indent=1) + "\n"


def new_secrets() -> ControllerSecret:
    """Fresh keys for one cluster; `.text()` and `.agent.text()` are the two secrets' contents."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue(
        None, ca_key, ca_key.public_key(), "ca", f"companion cluster {secrets.token_hex(4)}", 365 * CA_YEARS
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue(
        ca_cert, ca_key, server_key.public_key(), ROLE_CONTROLLER, "companion controller", 365 * CA_YEARS
    )
    enroll_key = ec.generate_private_key(ec.SECP256R1())
    enroll_cert = _issue(ca_cert, ca_key, enroll_key.public_key(), ROLE_AGENT, "companion agent", 365 * CA_YEARS)
    sign_key = ed25519.Ed25519PrivateKey.generate()
    agent = AgentSecret(ca_cert, server_cert, sign_key.public_key(), enroll_cert, enroll_key)
    return ControllerSecret(ca_cert, ca_key, server_cert, server_key, sign_key, agent)


def _fields(data: bytes, kind: str) -> Mapping[str, str]:
    if data.lstrip().startswith(b"-----BEGIN"):
        raise SecretError(OLD_FORMAT)
    try:
        value = json.loads(data)
    except ValueError:
        raise SecretError(f"not a cluster secret (make them with `{SPLIT_COMMAND}`)") from None
    found = value.get("kind") if isinstance(value, dict) else None
    if found == CONTROLLER_KIND and kind == AGENT_KIND:
        raise SecretError("this is the controller's secret: agents get the agent secret, or every node holds its keys")
    if found == AGENT_KIND and kind == CONTROLLER_KIND:
        raise SecretError("this is the agent secret: the controller needs the controller secret")
    if found != kind or value.get("version") != SECRET_VERSION:
        raise SecretError(f"not a {kind} of version {SECRET_VERSION} (make them with `{SPLIT_COMMAND}`)")
    return value  # type: ignore[no-any-return]


def _cert(fields: Mapping[str, str], name: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(str(fields[name]).encode())
    except (KeyError, ValueError):
        raise SecretError(f"its {name} is missing or not a PEM certificate") from None


def _private(fields: Mapping[str, str], name: str, kind: type) -> object:
    try:
        key = serialization.load_pem_private_key(str(fields[name]).encode(), password=None)
    except (KeyError, ValueError, TypeError):
        raise SecretError(f"its {name} is missing or not a PEM private key") from None
    if not isinstance(key, kind):
        raise SecretError(f"its {name} is not of the expected type")
    return key


def _matches(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, name: str) -> None:
    if key.public_key() != cert.public_key():
        raise SecretError(f"its {name} key is not its certificate's")


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def parse_agent_secret(data: bytes) -> AgentSecret:
    fields = _fields(data, AGENT_KIND)
    ca_cert, server_cert, enroll_cert = (_cert(fields, n) for n in ("ca_cert", "server_cert", "enroll_cert"))
    enroll_key = _private(fields, "enroll_key", ec.EllipticCurvePrivateKey)
    assert isinstance(enroll_key, ec.EllipticCurvePrivateKey)
    _matches(enroll_cert, enroll_key, "enrolment")
    try:
        verify_key = serialization.load_pem_public_key(str(fields["verify_key"]).encode())
    except (KeyError, ValueError):
        raise SecretError("its verify_key is missing or not a PEM public key") from None
    if not isinstance(verify_key, ed25519.Ed25519PublicKey):
        raise SecretError("its verify_key is not an Ed25519 key")
    if not (_signed_by(server_cert, ca_cert) and _signed_by(enroll_cert, ca_cert)):
        raise SecretError("its certificates are not from its CA")
    return AgentSecret(ca_cert, server_cert, verify_key, enroll_cert, enroll_key)


def parse_controller_secret(data: bytes) -> ControllerSecret:
    fields = _fields(data, CONTROLLER_KIND)
    ca_cert, server_cert, enroll_cert = (_cert(fields, n) for n in ("ca_cert", "server_cert", "enroll_cert"))
    ca_key, server_key, enroll_key = (
        _private(fields, n, ec.EllipticCurvePrivateKey) for n in ("ca_key", "server_key", "enroll_key")
    )
    sign_key = _private(fields, "sign_key", ed25519.Ed25519PrivateKey)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey) and isinstance(server_key, ec.EllipticCurvePrivateKey)
    assert isinstance(enroll_key, ec.EllipticCurvePrivateKey) and isinstance(sign_key, ed25519.Ed25519PrivateKey)
    _matches(ca_cert, ca_key, "CA")
    _matches(server_cert, server_key, "server")
    _matches(enroll_cert, enroll_key, "enrolment")
    agent = AgentSecret(ca_cert, server_cert, sign_key.public_key(), enroll_cert, enroll_key)
    return ControllerSecret(ca_cert, ca_key, server_cert, server_key, sign_key, agent)


def _read(setting: str, default: str) -> tuple[Path, bytes]:
    """The secret file (a regular file, never through a link): the setting, else the role's default. Only the
    old single secret where the new one should be says which command makes the new ones."""
    path = Path(setting or default)
    try:
        return path, read_regular(path, SECRET_MAX_BYTES)
    except FileNotFoundError:
        if not setting and os.path.exists(OLD_SECRET_FILE):
            raise SecretError(f"{path} is missing and {OLD_SECRET_FILE} is there: {OLD_FORMAT}") from None
        raise SecretError(f"cannot read {path}: it does not exist") from None
    except OSError as exc:
        raise SecretError(f"cannot read {path}: {exc.strerror or exc}") from None


def load_controller_secret(setting: str) -> ControllerSecret:
    """The controller secret (CLUSTER_SECRET_FILE, else CONTROLLER_SECRET_FILE); SecretError says what is wrong."""
    path, data = _read(setting, CONTROLLER_SECRET_FILE)
    try:
        return parse_controller_secret(data)
    except SecretError as exc:
        raise SecretError(f"{path}: {exc}") from None


def load_agent_secret(setting: str) -> AgentSecret:
    """The agent secret (CLUSTER_SECRET_FILE, else AGENT_SECRET_FILE); SecretError says what is wrong."""
    path, data = _read(setting, AGENT_SECRET_FILE)
    try:
        return parse_agent_secret(data)
    except SecretError as exc:
        raise SecretError(f"{path}: {exc}") from None


# -- TLS ------------------------------------------------------------------------------------------------


def _load_leaf(context: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    """ssl reads certificates from files only: a private 0700 folder, removed at once."""
    with tempfile.TemporaryDirectory(prefix="companion-leaf-") as folder:
        path = Path(folder) / "leaf.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(cert_pem + key_pem)
        context.load_cert_chain(path)


def server_context(secret: ControllerSecret) -> ssl.SSLContext:
    """The controller's side: its own server certificate; clients need a certificate from the cluster CA
    (the handler then decides by its role what it may ask)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=_pem(secret.ca_cert))
    _load_leaf(context, _pem(secret.server_cert), _key_pem(secret.server_key))
    return context


def client_context(secret: AgentSecret, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> ssl.SSLContext:
    """An agent's side, presenting `cert`: the server must present exactly the controller's pinned certificate
    (the only trust anchor; the CA is not one, so no other certificate it signed passes). The host name is
    not checked: Swarm may reach the controller under any name, and the pin is stronger."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.load_verify_locations(cadata=_pem(secret.server_cert))
    _load_leaf(context, _pem(cert), _key_pem(key))
    return context


# -- node certificates ------------------------------------------------------------------------------------


def node_request(key: ec.EllipticCurvePrivateKey, node: str) -> bytes:
    """A CSR for `node` (PEM): proves the agent holds the key it asks a certificate for."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node[:64])])
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


def requested_key(csr_pem: bytes) -> ec.EllipticCurvePublicKey:
    """The key a CSR asks a certificate for, once its signature shows the asker holds it."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise Refused("not a PEM certificate request") from None
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not csr.is_signature_valid:
        raise Refused("the request is not signed by an EC key")
    return key


def issue_node_cert(secret: ControllerSecret, node: str, key: ec.EllipticCurvePublicKey) -> x509.Certificate:
    """The node certificate for `key`, naming `node` (the controller names it, not the request)."""
    return _issue(secret.ca_cert, secret.ca_key, key, ROLE_NODE, node, NODE_CERT_DAYS)


def node_cert_problem(secret: AgentSecret, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, node: str) -> str:
    """Why a stored node certificate cannot be used ('' when it can): another cluster, node, key, or near its end."""
    if not _signed_by(cert, secret.ca_cert):
        return "it is from another cluster CA"
    if role_of(cert) != ROLE_NODE or common_name(cert) != node:
        return f"it does not name node {node}"
    if cert.public_key() != key.public_key():
        return "it is not for this node's key"
    if cert.not_valid_after_utc - dt.datetime.now(dt.UTC) < dt.timedelta(days=NODE_RENEW_DAYS):
        return "it is near its end"
    return ""


# -- signed answers ----------------------------------------------------------------------------------------


def _statement(nonce: str, length: int, digest: str) -> bytes:
    return f"companion answer\n{nonce}\n{length}\n{digest}".encode()


def sign(secret: ControllerSecret, nonce: str, body: bytes) -> dict[str, str]:
    """Headers announcing the body: its length and SHA-256, signed with the agent's nonce."""
    digest = hashlib.sha256(body).hexdigest()
    signature = secret.sign_key.sign(_statement(nonce, len(body), digest)).hex()
    return {LENGTH_HEADER: str(len(body)), DIGEST_HEADER: digest, SIGNATURE_HEADER: signature}


def announced(secret: AgentSecret, nonce: str, headers: Mapping[str, str], max_bytes: int) -> tuple[int, str]:
    """(length, digest) the controller signed for this nonce, checked before a byte of the body is read."""
    length_text = headers.get(LENGTH_HEADER, "")
    digest, signature = headers.get(DIGEST_HEADER, ""), headers.get(SIGNATURE_HEADER, "")
    if not length_text.isdigit() or len(length_text) > 12 or headers.get("Content-Length", "") != length_text:
        raise Refused("the answer does not announce its length")
    length = int(length_text)
    try:
        secret.verify_key.verify(bytes.fromhex(signature), _statement(nonce, length, digest))
    except (ValueError, InvalidSignature):
        raise Refused("the answer's signature does not match (altered on the way, or another cluster)") from None
    if length > max_bytes:
        raise Refused(f"the answer announces {length} bytes, over {max_bytes}")
    return length, digest


def check_body(body: bytes, length: int, digest: str) -> bytes:
    if len(body) != length or hashlib.sha256(body).hexdigest() != digest:
        raise Refused("the answer's body is not the one signed")
    return body
