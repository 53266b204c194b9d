"""The one certificate factory for tests, the harness and bench/.

Eleven hand-written `x509.CertificateBuilder` chains (CAs, leaves, client certificates, listener
certificates, certbot lineages) differed only in a few knobs and drifted apart. `build_cert` has those
knobs; the writers below put a certificate where each consumer looks for it (a PEM pair, a certbot
lineage in live/ or archive/ + live/ links, a CertFiles for the renderer).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from companion.core.certificates import CertFiles

PEM = serialization.Encoding.PEM
Key = ec.EllipticCurvePrivateKey
# The clock of lineages written by make_lineage: tests compare expiry dates against it.
LINEAGE_NOW = dt.datetime(2026, 11, 27, 12, 0, tzinfo=dt.UTC)
# the subject of the companion's own placeholder certificate, as served before a real one exists
PLACEHOLDER_CN = "companion placeholder certificate"
# keyCertSign and cRLSign only
CA_KEY_USAGE = x509.KeyUsage(False, False, False, False, False, True, True, False, False)


def new_key() -> Key:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: Key) -> bytes:
    return key.private_bytes(PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(PEM)


def name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def build_cert(
    common_name: str,
    *,
    sans: Sequence[str] = (),
    ips: Sequence[str] = (),
    key: Key | None = None,
    issuer: tuple[x509.Certificate | x509.Name, Key] | None = None,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    ca: bool | None = None,
    path_length: int | None = None,
    ca_key_usage: bool = True,
    usage: x509.ObjectIdentifier | None = None,
    ocsp_url: str | None = None,
    key_ids: bool = False,
) -> tuple[x509.Certificate, Key]:
    """A certificate for `common_name` and its key.

    issuer: (certificate or name, key) that signs it; None for self-signed. The validity defaults to
    from a day ago to 30 days ahead. ca=True adds BasicConstraints(ca) (and, with ca_key_usage, the CA
    key usage), ca=False BasicConstraints(not a CA), None neither. usage: one ExtendedKeyUsage OID
    (SERVER_AUTH, CLIENT_AUTH). ocsp_url: an AIA OCSP responder. key_ids: subject/authority key ids.
    """
    key = key or new_key()
    now = dt.datetime.now(dt.UTC)
    subject = name(common_name)
    if issuer is None:
        issuer_name, signer = subject, key
    else:
        issuer_name = issuer[0].subject if isinstance(issuer[0], x509.Certificate) else issuer[0]
        signer = issuer[1]
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - dt.timedelta(days=1))
        .not_valid_after(not_after or now + dt.timedelta(days=30))
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
    if ca and ca_key_usage:
        builder = builder.add_extension(CA_KEY_USAGE, critical=True)
    if key_ids and ca:
        builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    if sans or ips:
        general: list[x509.GeneralName] = [x509.DNSName(n) for n in sans]
        general += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        builder = builder.add_extension(x509.SubjectAlternativeName(general), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if key_ids and not ca:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False
        )
    if ocsp_url:
        builder = builder.add_extension(
            x509.AuthorityInformationAccess(
                [x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url))]
            ),
            critical=False,
        )
    return builder.sign(signer, hashes.SHA256()), key


def common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def write_pair(cert_path: Path, key_path: Path, cert: x509.Certificate, key: Key, *, key_mode: int = 0o600) -> None:
    """The certificate and its key as PEM files (the key with `key_mode`)."""
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    cert_path.write_bytes(cert_pem(cert))
    key_path.write_bytes(key_pem(key))
    key_path.chmod(key_mode)


def self_signed(directory: Path, common_name: str = "companion.test", *, ocsp: bool = False) -> CertFiles:
    """A throw-away ECDSA certificate and key written to ``directory`` (created once, then reused)."""
    directory.mkdir(parents=True, exist_ok=True)
    fullchain, privkey = directory / "fullchain.pem", directory / "privkey.pem"
    if not (fullchain.exists() and privkey.exists()):
        cert, key = build_cert(common_name, sans=[common_name])
        write_pair(fullchain, privkey, cert, key)
    return CertFiles(fullchain=str(fullchain), privkey=str(privkey), ocsp=ocsp, domains=(common_name,))


def make_lineage(
    certs_dir: Path,
    lineage: str,
    domains: list[str],
    *,
    days: int = 90,
    age_days: int = 0,
    ocsp: bool = False,
    key: Key | None = None,
) -> Key:
    """A live/<lineage> lineage with a real certificate and key, issued by "Test Issuer" at LINEAGE_NOW."""
    key = key or new_key()
    start = LINEAGE_NOW - dt.timedelta(days=age_days)
    cert, _ = build_cert(
        domains[0],
        sans=domains,
        key=key,
        issuer=(name("Test Issuer"), key),  # signed by its own key under another name, as the tests need
        not_before=start,
        not_after=start + dt.timedelta(days=days),
        ocsp_url="http://o" if ocsp else None,
    )
    live = certs_dir / "live" / lineage
    live.mkdir(parents=True, exist_ok=True)
    (live / "fullchain.pem").write_bytes(cert_pem(cert))
    (live / "privkey.pem").write_bytes(key_pem(key))
    return key


def link_into_archive(certs_dir: Path, lineage: str, *, mkdir: bool = True) -> None:
    """Move a lineage's live files into archive/<lineage>/ and link them from live/<lineage>/, as certbot does."""
    archive = certs_dir / "archive" / lineage
    if mkdir:
        archive.mkdir(parents=True)
    for pem in ("fullchain", "privkey"):
        (certs_dir / "live" / lineage / f"{pem}.pem").rename(archive / f"{pem}1.pem")
        (certs_dir / "live" / lineage / f"{pem}.pem").symlink_to(f"../../archive/{lineage}/{pem}1.pem")


def certbot_layout(certs_dir: Path, lineage: str, domains: list[str] | None = None) -> None:
    """A lineage in certbot's layout: files in archive/<lineage>/, linked from live/<lineage>/."""
    make_lineage(certs_dir, lineage, domains or [lineage])
    link_into_archive(certs_dir, lineage)


__all__ = [
    "CA_KEY_USAGE",
    "LINEAGE_NOW",
    "PEM",
    "PLACEHOLDER_CN",
    "ExtendedKeyUsageOID",
    "build_cert",
    "cert_pem",
    "certbot_layout",
    "common_name",
    "key_pem",
    "link_into_archive",
    "make_lineage",
    "name",
    "new_key",
    "self_signed",
    "write_pair",
]
