"""Certificates on disk, read and made with `cryptography`: expiry, names, issuer, key match, placeholder.

The store uses certbot's layout (`live/<name>/fullchain.pem` and `privkey.pem`). A lineage whose
files are missing, unreadable, corrupt or whose key does not match is reported with a reason and is
not handed to nginx, so that one broken certificate never stops nginx from loading the others.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import re
import ssl
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtensionOID, NameOID

from companion.core.certificates import PLACEHOLDER_DIR, CertFiles, CertStatus, placeholder_files
from companion.util import safefiles

log = logging.getLogger(__name__)


_cache: dict[str, tuple[tuple[str, str], CertStatus]] = {}
PEM_MAX_BYTES = 1024 * 1024


def read_lineage(certs_dir: Path, name: str) -> CertStatus:
    live = certs_dir / "live" / name
    real = Path(os.path.realpath(certs_dir))
    # certbot's live/<name>/*.pem are links into archive/<name>/; nothing may lead anywhere else.
    folders = (real / "live" / name, real / "archive" / name)
    status = _read_pair(name, live / "fullchain.pem", live / "privkey.pem", folders)
    params = renewal_params(certs_dir, name)
    if params != (status.server, status.account, status.profile):
        status = dataclasses.replace(status, server=params.server, account=params.account, profile=params.profile)
    return status


class RenewalParams(NamedTuple):
    """What certbot recorded about how a lineage was ordered; "" for what it did not record."""

    server: str  # the CA's directory URL
    account: str  # the account id
    profile: str  # --preferred-profile


_RENEWAL_RE = re.compile(r"^(server|account|preferred_profile) = (\S+)$", re.MULTILINE)
_renewal_cache: dict[str, tuple[tuple[int, int, int], RenewalParams]] = {}


def renewal_params(certs_dir: Path, name: str) -> RenewalParams:
    """What certbot recorded for a lineage, all "" when it has no renewal file (a certificate copied in by
    hand): read without following links, again only when the file changed."""
    path = certs_dir / "renewal" / f"{name}.conf"
    try:
        st = safefiles.regular_lstat(path)
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = _renewal_cache.get(str(path))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        found = dict(_RENEWAL_RE.findall(safefiles.read_regular(path, PEM_MAX_BYTES).decode("utf-8", "replace")))
    except OSError:
        return RenewalParams("", "", "")
    params = RenewalParams(found.get("server", ""), found.get("account", ""), found.get("preferred_profile", ""))
    _renewal_cache[str(path)] = (stamp, params)
    return params


def _read_pair(name: str, chain: Path, key: Path, folders: tuple[Path, ...]) -> CertStatus:
    """Parse a certificate and its key, cached per folder by the files' path, inode, mtime and size: a pass
    that finds nothing new on disk parses nothing, and a renewal replaces its folder's entry.

    Each file must be a regular file, or lead by links to one, inside `folders`: a FIFO (whose open would
    block the loop), a device, a directory or a link elsewhere makes the pair unusable, with the reason."""
    found: list[Path] = []
    stamps: list[str] = []
    for path in (chain, key):
        try:
            real = safefiles.resolve_inside(path, folders)
            st = safefiles.regular_lstat(real)
        except OSError as exc:
            return CertStatus(name, problem=f"{path}: {exc.strerror}")
        found.append(real)
        stamps.append(f"{real}:{st.st_ino}:{st.st_mtime_ns}:{st.st_size}")
    stamp = (stamps[0], stamps[1])
    cached = _cache.get(str(chain.parent))
    if cached is None or cached[0] != stamp:
        cached = (stamp, _parse(name, found[0], found[1]))
        _cache[str(chain.parent)] = cached
    return cached[1]


def check_files(chain: Path, key: Path) -> str:
    """Why nginx could not serve this pair of regular files ('' when it can), checked as lineages are."""
    return _parse("check", chain, key).problem


def _parse(name: str, chain: Path, key_path: Path) -> CertStatus:
    """`chain` and `key_path` are the checked regular files themselves (no links left to follow)."""
    try:
        certs = x509.load_pem_x509_certificates(safefiles.read_regular(chain, PEM_MAX_BYTES))
        key = serialization.load_pem_private_key(safefiles.read_regular(key_path, PEM_MAX_BYTES), password=None)
    except (OSError, ValueError, TypeError) as exc:
        return CertStatus(name, problem=f"unreadable certificate or key ({type(exc).__name__}: {exc})")
    leaf = certs[0]
    if key.public_key().public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != leaf.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        return CertStatus(name, problem="private key does not match the certificate")
    # cryptography skips a PEM block cut off before its END line; OpenSSL (nginx) refuses the whole file,
    # and nginx -t would then fail for every site. Load the pair as nginx does, with OpenSSL itself
    # (it opens the files by name: only the checked regular files, never the links or anything unchecked).
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


DEFAULT_CERT, DEFAULT_KEY = "default.crt", "default.key"


def default_cert(certs_dir: Path) -> tuple[CertFiles | None, str]:
    """The operator's default certificate (nginx-proxy's convention: default.crt and default.key in the
    certs dir), with a problem when it is there but unusable; (None, '') when the operator set none."""
    chain, key = certs_dir / DEFAULT_CERT, certs_dir / DEFAULT_KEY
    if not os.path.lexists(chain) and not os.path.lexists(key):
        return None, ""
    status = _read_pair("default", chain, key, (Path(os.path.realpath(certs_dir)),))
    if status.problem:
        return None, f"default certificate {chain}: {status.problem}; unknown names are refused instead"
    return CertFiles(str(chain), str(key), status.ocsp, status.serial, status.domains), ""


def ensure_placeholder(certs_dir: Path) -> CertFiles:
    """A self-signed certificate that lets nginx serve :443 before a real certificate exists.

    Its folder must be our own real directory: a link planted there would have us chmod and write the key
    outside the certs dir, so it is removed (the link only) and a real 0700 folder made in its place."""
    files = placeholder_files(certs_dir)
    placeholder = (Path(os.path.realpath(certs_dir)) / PLACEHOLDER_DIR,)
    if not _read_pair("placeholder", Path(files.fullchain), Path(files.privkey), placeholder).problem:
        return files
    folder = safefiles.real_dir(certs_dir, PLACEHOLDER_DIR, 0o700)
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
    safefiles.write_atomic(folder / "privkey.pem", key_pem.decode(), mode=0o600)
    safefiles.write_atomic(folder / "fullchain.pem", cert.public_bytes(serialization.Encoding.PEM).decode())
    return files


def tighten(certs_dir: Path, name: str) -> None:
    """Keys stay private: certbot leaves a lineage's own folders 0755, we make them 0700. Only real
    directories: a link there is left alone, so no folder outside the certs dir is ever chmod-ed."""
    for folder in (certs_dir / "live" / name, certs_dir / "archive" / name):
        try:
            safefiles.chmod_dir(folder, 0o700)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.warning("not tightening %s: %s", folder, exc.strerror or exc)
