"""The certificate vocabulary the core decides with: CertFiles (what nginx loads) and CertStatus (what is on
disk, as the certificate store read it). Pure data: reading and ordering live in acme/."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CertFiles:
    """A certificate nginx can load: paths on disk, whether it names an OCSP responder, and its serial.

    The serial is rendered as a comment: a renewed certificate keeps its paths, and the changed
    serial is what makes the rendered files differ, so the apply step reloads nginx.
    """

    fullchain: str
    privkey: str
    ocsp: bool = False
    serial: str = ""
    domains: tuple[str, ...] = ()  # the names the certificate is valid for
    not_after: float = 0.0  # unix time; the fresher of two covering certificates wins


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
    server: str = ""  # the CA it came from and the account that ordered it (certbot's renewal file)
    account: str = ""

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


def usable(statuses: dict[str, CertStatus], certs_dir: Path) -> dict[str, CertFiles]:
    return {name: s.files(certs_dir) for name, s in statuses.items() if not s.problem}


def placeholder_files(certs_dir: Path) -> CertFiles:
    folder = certs_dir / PLACEHOLDER_DIR
    return CertFiles(str(folder / "fullchain.pem"), str(folder / "privkey.pem"))
