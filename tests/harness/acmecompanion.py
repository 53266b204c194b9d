"""acme-companion's certificate layout in nginx-proxy's certs folder, written as acme-companion writes it.

    <certs>/<first host>/cert.pem, chain.pem, fullchain.pem, key.pem
    <certs>/<host>.crt -> ./<first host>/fullchain.pem       (one set of links per host of the certificate)
    <certs>/<host>.key -> ./<first host>/key.pem
    <certs>/<host>.chain.pem -> ./<first host>/chain.pem
    <certs>/<host>.dhparam.pem -> ./dhparam.pem

plus a small test CA (root -> intermediate -> leaf) for certificates a client can verify without an ACME CA.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.harness.certs import build_cert

PEM = serialization.Encoding.PEM


@dataclass(frozen=True)
class Issued:
    """A leaf certificate as acme-companion stores it."""

    cert_pem: bytes
    chain_pem: bytes  # the intermediates
    key_pem: bytes
    serial: int

    @property
    def fullchain_pem(self) -> bytes:
        return self.cert_pem + self.chain_pem


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


class TestCA:
    """A root and an intermediate; `issue` signs leaves with the intermediate, `root_pem` is what clients trust."""

    __test__ = False  # not a pytest class

    def __init__(self, name: str = "companion test root") -> None:
        now = dt.datetime.now(dt.UTC)
        validity = {"not_before": now - dt.timedelta(days=1), "not_after": now + dt.timedelta(days=365)}
        self.root, self.root_key = build_cert(name, ca=True, **validity)
        self.intermediate, self.key = build_cert(
            f"{name} intermediate", issuer=(self.root, self.root_key), ca=True, **validity
        )
        self.name = self.intermediate.subject

    @property
    def root_pem(self) -> bytes:
        return self.root.public_bytes(PEM)

    def issue(self, domains: Sequence[str], days: float = 90, age_days: float = 1) -> Issued:
        start = dt.datetime.now(dt.UTC) - dt.timedelta(days=age_days)
        cert, key = build_cert(
            domains[0],
            sans=domains,
            issuer=(self.name, self.key),
            not_before=start,
            not_after=start + dt.timedelta(days=days),
            ca=False,
        )
        return Issued(cert.public_bytes(PEM), self.intermediate.public_bytes(PEM), _key_pem(key), cert.serial_number)


def write_layout(certs_dir: Path, domains: Sequence[str], issued: Issued) -> None:
    """Write one certificate for `domains` as acme-companion does: a folder named after the first host and
    links for every host (files 0644, the key 0600 as acme-companion's defaults leave them readable by root)."""
    base = certs_dir / domains[0]
    base.mkdir(parents=True, exist_ok=True)
    files = {
        "cert.pem": issued.cert_pem,
        "chain.pem": issued.chain_pem,
        "fullchain.pem": issued.fullchain_pem,
        "key.pem": issued.key_pem,
    }
    for name, data in files.items():
        (base / name).write_bytes(data)
    (base / "key.pem").chmod(0o600)
    dhparam = certs_dir / "dhparam.pem"
    if not dhparam.exists():
        dhparam.write_text("not read by the companion\n")
    for host in domains:
        for suffix, target in ((".crt", "fullchain.pem"), (".key", "key.pem"), (".chain.pem", "chain.pem")):
            link = certs_dir / f"{host}{suffix}"
            link.unlink(missing_ok=True)
            link.symlink_to(f"./{domains[0]}/{target}")
        (certs_dir / f"{host}.dhparam.pem").unlink(missing_ok=True)
        (certs_dir / f"{host}.dhparam.pem").symlink_to("./dhparam.pem")


def snapshot(certs_dir: Path) -> dict[str, tuple[bytes | str, int, int]]:
    """Every acme-companion entry (not certbot's folders, not ours): content or link target, mode, mtime."""
    ours = {"live", "archive", "renewal", "accounts", "companion", "keys", "csr"}
    found: dict[str, tuple[bytes | str, int, int]] = {}
    for path in sorted(certs_dir.rglob("*")):
        if path.relative_to(certs_dir).parts[0] in ours:
            continue
        st = path.lstat()
        if path.is_symlink():
            found[str(path.relative_to(certs_dir))] = (str(path.readlink()), st.st_mode, st.st_mtime_ns)
        elif path.is_file():
            found[str(path.relative_to(certs_dir))] = (path.read_bytes(), st.st_mode, st.st_mtime_ns)
    return found
