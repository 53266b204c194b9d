"""Certificates acme-companion left in nginx-proxy's certs folder, taken into certbot's layout at start.

acme-companion keeps each certificate in a folder named after its first name (`<certs>/<name>/` with
`cert.pem`, `chain.pem`, `fullchain.pem`, `key.pem`) and links every name it holds to that folder:
`<host>.crt -> ./<name>/fullchain.pem`, `<host>.key -> ./<name>/key.pem`, `<host>.chain.pem ->
./<name>/chain.pem`. A pair an operator put there by hand is two plain files, `<host>.crt` and `<host>.key`.

Each usable pair becomes a certbot lineage of the same name (`archive/<name>/*1.pem`, `live/<name>/` links,
`renewal/<name>.conf`): it is served at once, and when it is due the ordinary certbot renewal replaces it,
so a migration does not order every certificate again. Their files are only read, never changed or removed;
a lineage that already exists is never overwritten, so running this at every start imports each pair once.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from companion.acme import certs
from companion.util import safefiles
from companion.util.logsafe import printable

log = logging.getLogger(__name__)

STAGING = "companion/import"  # lineages are put together here, then moved into archive/ and live/
_HOST = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_FOLDER_LINK = re.compile(r"^(?:\./)?([^/]+)/fullchain\.pem$")


@dataclass(frozen=True)
class Candidate:
    """One pair to import: the lineage name and the files it was found through."""

    name: str
    crt: str  # file names in the certs dir
    key: str
    chain: str = ""


@dataclass(frozen=True)
class Pair:
    """A checked certificate and key, split the way certbot stores them."""

    cert_pem: bytes
    chain_pem: bytes
    key_pem: bytes
    domains: tuple[str, ...]
    not_after: dt.datetime

    @property
    def fullchain_pem(self) -> bytes:
        return self.cert_pem + self.chain_pem


def candidates(entries: Mapping[str, str | None]) -> tuple[list[Candidate], list[str]]:
    """The pairs among a certs dir's top-level entries (file name -> link target, None for a plain file).

    A `<host>.crt` linked to `<name>/fullchain.pem` belongs to lineage `<name>` (acme-companion names
    every host of a certificate that way; they are imported once); a plain one is lineage `<host>`.
    `default.crt` is nginx-proxy's default certificate, read where it is, not imported. Returns the
    candidates and a line for each `.crt` that cannot be one."""
    problems: list[str] = []
    by_name: dict[str, list[Candidate]] = {}
    for filename in sorted(entries):
        if not filename.endswith(".crt") or filename == certs.DEFAULT_CERT:
            continue
        host = filename[: -len(".crt")]
        if not _HOST.fullmatch(host):
            problems.append(f"{filename}: not named after a host name")
            continue
        key = f"{host}.key"
        if key not in entries:
            problems.append(f"{filename}: no {key} beside it")
            continue
        target = entries[filename]
        linked = _FOLDER_LINK.match(target) if target is not None else None
        name = linked.group(1) if linked else host
        if not _HOST.fullmatch(name):
            problems.append(f"{filename}: links to {target}, not to a certificate folder named after a host")
            continue
        chain = f"{host}.chain.pem" if f"{host}.chain.pem" in entries else ""
        by_name.setdefault(name, []).append(Candidate(name, filename, key, chain))
    chosen = [next((c for c in found if c.crt == f"{name}.crt"), found[0]) for name, found in by_name.items()]
    return sorted(chosen, key=lambda c: c.name), problems


def check_pair(crt_pem: bytes, key_pem: bytes, chain_pem: bytes, now: dt.datetime) -> Pair | str:
    """The pair split into leaf, chain and key, or why it cannot be served: unreadable, a key that does not
    match, no host name in it, or expired. A `.crt` holding only the leaf gets its chain from `.chain.pem`."""
    try:
        found = x509.load_pem_x509_certificates(crt_pem)
        extra = x509.load_pem_x509_certificates(chain_pem) if chain_pem.strip() and len(found) == 1 else []
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        return f"unreadable certificate or key ({type(exc).__name__}: {exc})"
    leaf, chain = found[0], [*found[1:], *extra]
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != leaf.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ):
        return "the private key does not match the certificate"
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        domains = tuple(sorted(name.lower() for name in san.get_values_for_type(x509.DNSName)))
    except x509.ExtensionNotFound:
        domains = ()
    if not domains:
        return "the certificate names no host (no DNS subject alternative name)"
    if leaf.not_valid_after_utc <= now:
        return f"expired on {leaf.not_valid_after_utc:%Y-%m-%d}"
    pem = serialization.Encoding.PEM
    return Pair(
        cert_pem=leaf.public_bytes(pem),
        chain_pem=b"".join(c.public_bytes(pem) for c in chain),
        key_pem=key_pem,
        domains=domains,
        not_after=leaf.not_valid_after_utc,
    )


def renewal_conf(certs_dir: Path, name: str, source: str) -> str:
    """certbot's renewal file for an imported lineage: where its files are; the account and CA are set by
    the first renewal, which the companion runs with its own (the file's `server` stays unknown until then)."""
    live, archive = certs_dir / "live" / name, certs_dir / "archive" / name
    return (
        f"# imported by the companion from {source}\n"
        f"archive_dir = {archive}\n"
        f"cert = {live}/cert.pem\n"
        f"privkey = {live}/privkey.pem\n"
        f"chain = {live}/chain.pem\n"
        f"fullchain = {live}/fullchain.pem\n"
        "\n[renewalparams]\nauthenticator = webroot\n"
    )


def import_all(certs_dir: Path, now: dt.datetime | None = None) -> list[str]:
    """Import every acme-companion pair in `certs_dir` whose lineage does not exist yet; the names imported.

    Each refused pair is logged with its reason and harms no other."""
    now = now or dt.datetime.now(dt.UTC)
    try:
        entries = {
            entry.name: (os.readlink(entry.path) if entry.is_symlink() else None)
            for entry in os.scandir(certs_dir)
            if entry.name.endswith((".crt", ".key", ".chain.pem"))
        }
    except FileNotFoundError:
        return []  # a first start: the certs dir is made later
    except OSError as exc:
        log.warning("cannot look for acme-companion certificates in %s: %s", certs_dir, exc.strerror or exc)
        return []
    found, problems = candidates(entries)
    for line in problems:
        log.warning("acme-companion certificate %s; not imported", printable(line))
    imported = []
    for candidate in found:
        if any(os.path.lexists(certs_dir / kind / candidate.name) for kind in ("live", "archive")):
            continue  # ours already (imported before, or ordered): never overwritten
        problem = _import(certs_dir, candidate, now)
        if problem:
            log.warning(
                "acme-companion certificate %s: %s; not imported",
                printable(str(certs_dir / candidate.crt)),
                printable(problem),
                extra={"certificate": candidate.name},
            )
        else:
            imported.append(candidate.name)
    return imported


def _read(certs_dir: Path, filename: str) -> bytes:
    """A file of the certs dir, through its links only when they stay inside the certs dir."""
    real = safefiles.resolve_inside(certs_dir / filename, (Path(os.path.realpath(certs_dir)),))
    return safefiles.read_regular(real, certs.PEM_MAX_BYTES)


def _import(certs_dir: Path, candidate: Candidate, now: dt.datetime) -> str:
    """Build the lineage in a staging folder, check it as nginx will load it, then move it into place."""
    try:
        chain = _read(certs_dir, candidate.chain) if candidate.chain else b""
        pair = check_pair(_read(certs_dir, candidate.crt), _read(certs_dir, candidate.key), chain, now)
    except OSError as exc:
        return str(exc.strerror or exc) if not isinstance(exc, safefiles.UnsafeFile) else str(exc)
    if isinstance(pair, str):
        return pair
    leftover = certs_dir / STAGING / candidate.name
    shutil.rmtree(leftover, ignore_errors=True)  # from an import a crash cut short (ours; a link is not followed)
    try:
        staging = safefiles.real_dir(certs_dir, f"{STAGING}/{candidate.name}", 0o700)
        try:
            return _place(certs_dir, candidate, pair, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        return f"cannot write its lineage ({exc})"


def _place(certs_dir: Path, candidate: Candidate, pair: Pair, staging: Path) -> str:
    archive, live = staging / "archive", staging / "live"
    archive.mkdir(mode=0o700)
    live.mkdir(mode=0o700)
    files = {"cert": pair.cert_pem, "chain": pair.chain_pem, "fullchain": pair.fullchain_pem, "privkey": pair.key_pem}
    for kind, data in files.items():
        mode = 0o600 if kind == "privkey" else 0o644
        safefiles.write_atomic(archive / f"{kind}1.pem", data.decode("ascii", "replace"), mode)
        os.symlink(f"../../archive/{candidate.name}/{kind}1.pem", live / f"{kind}.pem")
    problem = certs.check_files(archive / "fullchain1.pem", archive / "privkey1.pem")
    if problem:
        return problem
    for kind, mode in (("archive", 0o700), ("live", 0o700), ("renewal", 0o755)):  # certbot's modes
        if (certs_dir / kind).is_symlink() or not (certs_dir / kind).is_dir():
            safefiles.real_dir(certs_dir, kind, mode)
    placed, renewal = certs_dir / "archive" / candidate.name, certs_dir / "renewal" / f"{candidate.name}.conf"
    os.rename(archive, placed)
    try:
        safefiles.write_atomic(renewal, renewal_conf(certs_dir, candidate.name, str(certs_dir / candidate.crt)))
        os.rename(live, certs_dir / "live" / candidate.name)
    except OSError:
        # Half a lineage would stop certbot from ever making this one ("archive directory exists"): undo ours.
        shutil.rmtree(placed, ignore_errors=True)
        renewal.unlink(missing_ok=True)
        raise
    certs.tighten(certs_dir, candidate.name)
    log.info(
        "certificate %s (%s): imported from acme-companion's %s, valid until %s UTC; served until its renewal",
        candidate.name,
        printable(", ".join(pair.domains)),  # names from the certificate: outside values
        printable(str(certs_dir / candidate.crt)),
        f"{pair.not_after:%Y-%m-%d %H:%M}",
        extra={"certificate": candidate.name},
    )
    return ""
