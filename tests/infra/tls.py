"""What nginx serves over TLS, as a client sees it: the leaf certificate and the response body."""

from __future__ import annotations

import socket
import ssl

from cryptography import x509

from tests.infra.nginx import HostNginx


def served_cert(nginx: HostNginx, host: str, context: ssl.SSLContext | None = None) -> x509.Certificate:
    """The leaf nginx serves for SNI `host`; chain and name verified when a context is given, else taken as is."""
    if context is None:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", nginx.https_port), timeout=3) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def https_body(nginx: HostNginx, host: str, context: ssl.SSLContext) -> tuple[int, str]:
    status, _, data = nginx.get(host, https=True, context=context)
    return status, data.decode().strip()
