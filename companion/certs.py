"""Certificates on disk, read and made with `cryptography`: expiry, names, issuer, key match, placeholder.

The store uses certbot's layout (`live/<name>/fullchain.pem` and `privkey.pem`). A lineage whose
files are missing, unreadable, corrupt or whose key does not match is reported with a reason and is
not handed to nginx, so that one broken certificate never stops nginx from loading the others.
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID, NameOID

from .nginx import write_atomic
from .plan import CertFiles

PLACEHOLDER_DIR = "companion/placeholder"


@dataclass(frozen=True)
class CertStatus:
    name: str
    domains: tuple[str, ...] = ()
    issuer: str = ""
    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None
    ocsp: bool = False
    serial: str = ""
    problem: str = ""

    def files(self, certs_dir: Path) -> CertFiles:
        live = certs_dir / "live" / self.name
        return CertFiles(
            str(live / "fullchain.pem"),
            str(live / "privkey.pem"),
            self.ocsp,
            self.serial,
            domains=self.domains,
            not_after=self.not_after.timestamp() if self.not_after else 0.0,
        )

    def remaining(self, now: dt.datetime) -> dt.timedelta:
        assert self.not_after is not None
        return self.not_after - now

    @property
    def lifetime(self) -> dt.timedelta:
        assert self.not_after is not None and self.not_before is not None
        return self.not_after - self.not_before


_cache: dict[str, tuple[tuple[str, str], CertStatus]] = {}


def _stamp(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"


def read_lineage(certs_dir: Path, name: str) -> CertStatus:
    live = certs_dir / "live" / name
    return _read_pair(name, live / "fullchain.pem", live / "privkey.pem")


def _read_pair(name: str, chain: Path, key: Path) -> CertStatus:
    """Parse a certificate and its key, cached per folder by the files' inode, mtime and size: a pass
    that finds nothing new on disk parses nothing, and a renewal replaces its folder's entry."""
    try:
        stamp = (_stamp(chain), _stamp(key))
    except OSError as exc:
        return CertStatus(name, problem=f"{exc.filename}: {exc.strerror}")
    cached = _cache.get(str(chain.parent))
    if cached is None or cached[0] != stamp:
        cached = (stamp, _parse(name, chain, key))
        _cache[str(chain.parent)] = cached
    return cached[1]


def _parse(name: str, chain: Path, key_path: Path) -> CertStatus:
    try:
        certs = x509.load_pem_x509_certificates(chain.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        return CertStatus(name, problem=f"unreadable certificate or key ({type(exc).__name__}: {exc})")
    leaf = certs[0]
    if key.public_key().public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        return CertStatus(name, problem="private key does not match the certificate")
    # cryptography skips a PEM block cut off before its END line; OpenSSL (nginx) refuses the whole file,
    # and nginx -t would then fail for every site. Load the pair as nginx does, with OpenSSL itself.
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(chain, key_path)
    except (OSError, ssl.SSLError) as exc:
        return CertStatus(name, problem=f"unreadable certificate or key (OpenSSL: {exc})")
    return CertStatus(
        name=name,
        domains=_domains(leaf),
        issuer=_issuer(leaf),
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        ocsp=_has_ocsp(leaf),
        serial=f"{leaf.serial_number:x}",
    )


def _domains(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_oid(ExtensionOID.SUBJECT_ALTERNATIVE_NAME).value
        return tuple(sorted(san.get_values_for_type(x509.DNSName)))
    except x509.ExtensionNotFound:
        return ()


def _issuer(cert: x509.Certificate) -> str:
    names = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.issuer.rfc4514_string()


def _has_ocsp(cert: x509.Certificate) -> bool:
    try:
        aia = cert.extensions.get_extension_for_oid(ExtensionOID.AUTHORITY_INFORMATION_ACCESS).value
    except x509.ExtensionNotFound:
        return False
    return any(d.access_method == AuthorityInformationAccessOID.OCSP for d in aia)


def scan(certs_dir: Path) -> dict[str, CertStatus]:
    """Every lineage under live/, by name."""
    live = certs_dir / "live"
    try:
        names = sorted(p.name for p in live.iterdir() if p.is_dir())
    except OSError:
        return {}
    return {name: read_lineage(certs_dir, name) for name in names}


def usable(statuses: dict[str, CertStatus], certs_dir: Path) -> dict[str, CertFiles]:
    return {name: s.files(certs_dir) for name, s in statuses.items() if not s.problem}


def placeholder_files(certs_dir: Path) -> CertFiles:
    folder = certs_dir / PLACEHOLDER_DIR
    return CertFiles(str(folder / "fullchain.pem"), str(folder / "privkey.pem"))


def ensure_placeholder(certs_dir: Path) -> CertFiles:
    """A self-signed certificate that lets nginx serve :443 before a real certificate exists."""
    folder = certs_dir / PLACEHOLDER_DIR
    files = placeholder_files(certs_dir)
    if not _read_pair("placeholder", Path(files.fullchain), Path(files.privkey)).problem:
        return files
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "companion placeholder certificate")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_atomic(folder / "privkey.pem", key_pem.decode(), mode=0o600)
    write_atomic(folder / "fullchain.pem", cert.public_bytes(serialization.Encoding.PEM).decode())
    return files


def tighten(certs_dir: Path, name: str) -> None:
    """Keys stay private: certbot leaves a lineage's own folders 0755, we make them 0700."""
    for folder in (certs_dir / "live" / name, certs_dir / "archive" / name):
        if folder.is_dir():
            os.chmod(folder, 0o700)
