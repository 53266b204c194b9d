"""What nginx serves over TLS, as a client sees it (the leaf certificate, the response body), and a client CA
with certificates it signed, for mTLS."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.harness.certs import ExtendedKeyUsageOID, build_cert, write_pair
from tests.harness.nginx import HostNginx


def served_cert(
    nginx: HostNginx | tuple[str, int], host: str, context: ssl.SSLContext | None = None
) -> x509.Certificate:
    """The leaf nginx (a host nginx, or any address and port) serves for SNI `host`; chain and name verified
    when a context is given, else taken as is."""
    if not isinstance(nginx, tuple):
        nginx.settle()
    endpoint = nginx if isinstance(nginx, tuple) else ("127.0.0.1", nginx.https_port)
    if context is None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(endpoint, timeout=3) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def https_body(nginx: HostNginx, host: str, context: ssl.SSLContext) -> tuple[int, str]:
    status, _, data = nginx.get(host, https=True, context=context)
    return status, data.decode().strip()


def client_ca(directory: Path, name: str = "companion test client CA") -> tuple[Path, Path]:
    """A CA for client certificates (mTLS): its certificate and key as PEM files in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = build_cert(name, ca=True, path_length=0)
    return _write_pair(directory, "ca", cert, key)


def client_cert(ca: tuple[Path, Path], directory: Path, name: str = "client") -> tuple[Path, Path]:
    """A client certificate signed by `ca` (from client_ca), as PEM files for ssl.SSLContext.load_cert_chain."""
    ca_cert = x509.load_pem_x509_certificate(ca[0].read_bytes())
    ca_key = serialization.load_pem_private_key(ca[1].read_bytes(), None)
    cert, key = build_cert(name, issuer=(ca_cert, ca_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH)  # type: ignore[arg-type]
    return _write_pair(directory, name, cert, key)


def _write_pair(
    directory: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    write_pair(cert_path, key_path, cert, key)
    return cert_path, key_path
