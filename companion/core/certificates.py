"""The certificate vocabulary. Each type answers one question, and each lives in exactly one place:

* CertRequest (core/model.py): which certificate a container asks for: lineage name, names, email, CA and
  challenge. The plan's orders are CertRequests; the worker and `companion renew` order them.
* CertStatus (here): what a lineage on disk is, as acme/certs.scan read it: names, issuer, validity,
  serial, why it is unusable, and the CA and account that ordered it. Decides whether an order is due.
* CertFiles (here): what nginx loads for a host: the file paths, plus what makes a renewal visible (serial)
  and which of two covering lineages wins (not_after). Derived from a CertStatus, or the placeholder.
* CertChoice and CertWhy (core/certplan.py): the CertFiles a host presents, its lineage and why.
* CertState (acme/policy.py): the worker's order record per lineage (failures, backoff, last error,
  in progress), kept across restarts in the certs volume.
* CertView (observe/status.py): one certificate as /status.json shows it, from a CertStatus and a CertState.

Pure data: reading the store and ordering live in acme/."""

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
    server: str = ""  # the CA it came from, the account that ordered it and the profile it was ordered
    account: str = ""  # under (certbot's renewal file)
    profile: str = ""

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
