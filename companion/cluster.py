"""The agent <-> controller channel's credentials: one cluster secret, mutual TLS, and signed bundles.

The cluster secret is a private CA (certificate and key, PEM) that `companion cluster-secret` makes and
Swarm delivers to the controller and every agent as a secret. Each process mints a short-lived leaf
certificate from it at start: the controller's server accepts only clients whose certificate chains to
that CA, and agents accept only a server whose certificate does. The channel therefore needs no
encrypted overlay. Everything the controller sends is also signed with an HMAC key derived from the CA
key, over the agent's nonce and the exact body bytes, so a response altered on the way (a misconfigured
TLS proxy, a leaked leaf) is refused as well, and an old answer cannot be replayed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import os
import secrets
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .safefiles import read_regular

SECRET_MAX_BYTES = 64 * 1024
LEAF_DAYS = 30  # a process mints a new leaf at every start; a month covers long uptimes
CA_YEARS = 10
ROLE_CONTROLLER, ROLE_AGENT = "controller", "agent"
SIGNATURE_HEADER = "X-Companion-Signature"
NONCE_HEADER = "X-Companion-Nonce"


class SecretError(ValueError):
    """The cluster secret is missing or not a CA certificate with its key."""


@dataclass(frozen=True)
class ClusterSecret:
    ca_cert: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    mac_key: bytes  # derived from the CA key: only holders of the secret can sign bundles

    @property
    def ca_pem(self) -> bytes:
        return self.ca_cert.public_bytes(serialization.Encoding.PEM)


def new_secret() -> str:
    """A fresh cluster secret: a P-256 CA certificate and its key, PEM (what `companion cluster-secret` prints)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"companion cluster {secrets.token_hex(4)}")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),  # cert and CRL signing
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode() + key_pem.decode()


def parse_secret(data: bytes) -> ClusterSecret:
    """The CA certificate and key from the secret's PEM; the key must be the certificate's."""
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise SecretError("no PEM certificate in it (make one with `companion cluster-secret`)") from None
    start = data.find(b"-----BEGIN PRIVATE KEY-----")
    if start < 0:
        raise SecretError("no PEM private key in it (make one with `companion cluster-secret`)")
    try:
        key = serialization.load_pem_private_key(data[start:], password=None)
    except (ValueError, TypeError):
        raise SecretError("its private key cannot be read") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise SecretError("its private key is not the certificate's")
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    mac_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"companion bundle signature").derive(der)
    return ClusterSecret(cert, key, mac_key)


def load_secret(path: Path) -> ClusterSecret:
    """Read the secret file (a regular file, never through a link); SecretError says what is wrong."""
    try:
        data = read_regular(path, SECRET_MAX_BYTES)
    except OSError as exc:
        raise SecretError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        return parse_secret(data)
    except SecretError as exc:
        raise SecretError(f"{path}: {exc}") from None


def _leaf(secret: ClusterSecret, role: str, name: str) -> tuple[bytes, bytes]:
    """A fresh leaf certificate and key (PEM) signed by the cluster CA, for one process's lifetime."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if role == ROLE_CONTROLLER else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"companion {role} {name}"[:64])]))
        .issuer_name(secret.ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(secret.ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _load_leaf(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """ssl reads certificates from files only: a private 0700 folder, removed at once."""
    with tempfile.TemporaryDirectory(prefix="companion-leaf-") as folder:
        path = Path(folder) / "leaf.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(cert_pem + key_pem)
        context.load_cert_chain(path)


def server_context(secret: ClusterSecret, name: str = "controller") -> ssl.SSLContext:
    """The controller's side: TLS 1.2+, a client certificate from the cluster CA required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=secret.ca_pem.decode())
    _load_leaf(context, *_leaf(secret, ROLE_CONTROLLER, name))
    return context


def client_context(secret: ClusterSecret, name: str) -> ssl.SSLContext:
    """An agent's side: the server's certificate must chain to the cluster CA. Its host name is not checked:
    every holder of the secret is equally trusted, and Swarm may reach the controller under any name."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=secret.ca_pem.decode())
    _load_leaf(context, *_leaf(secret, ROLE_AGENT, name))
    return context


def sign(secret: ClusterSecret, nonce: str, body: bytes) -> str:
    """HMAC-SHA256 over the agent's nonce and the exact body bytes."""
    return hmac.new(secret.mac_key, nonce.encode() + b"\0" + body, hashlib.sha256).hexdigest()


def verify(secret: ClusterSecret, nonce: str, body: bytes, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, nonce, body), signature or "")
