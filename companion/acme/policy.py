"""What the ordering worker decides without touching anything: when a certificate is due, how long a failure
backs off, certbot's command lines, and how the JSON state it keeps is parsed. Pure functions of plain data,
so tests drive them with no certbot, CA or clock."""

from __future__ import annotations

import datetime as dt
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from companion.acme.authenticators import authenticator
from companion.core.certificates import CertStatus
from companion.core.model import CertRequest
from companion.core.values import Challenge
from companion.settings.config import Settings
from companion.util.logsafe import printable

CERTBOT_TIMEOUT = 600

BACKOFF_CAP = 24 * 3600.0

# certbot 5 has no __main__ module; run its entry point with our own interpreter.
CERTBOT = (sys.executable, "-c", "import sys; from certbot.main import main; sys.exit(main())")


def renew_window(status: CertStatus, renew_before_days: float) -> dt.timedelta:
    """How long before expiry to renew: the setting, or a third of the lifetime (as certbot does)."""
    if renew_before_days > 0:
        return dt.timedelta(days=renew_before_days)
    return status.lifetime / 3


def due_reason(request: CertRequest, status: CertStatus | None, now: dt.datetime, renew_before_days: float) -> str:
    """Why this certificate must be ordered now, or '' when what is on disk is fine."""
    if status is None:
        return "no certificate yet"
    if status.problem:
        return f"certificate unusable ({status.problem})"
    if set(status.domains) != set(request.domains):
        return "names changed"
    if status.server and request.server and status.server != request.server:
        return f"CA changed from {status.server} to {request.server}"
    if status.server and status.profile != request.profile:  # "" on both sides: the CA's default profile
        return f"profile changed from {status.profile or 'the default'} to {request.profile or 'the default'}"
    if status.remaining(now) <= renew_window(status, renew_before_days):
        return f"expires {status.not_after:%Y-%m-%d %H:%M} UTC"
    return ""


def renew_at(status: CertStatus, renew_before_days: float) -> dt.datetime:
    assert status.not_after is not None
    return status.not_after - renew_window(status, renew_before_days)


def backoff(failures: int, base: float) -> float:
    """Seconds to wait after the n-th failure in a row: base, 2*base, 4*base, ... capped at a day."""
    return min(base * 2 ** max(0, failures - 1), BACKOFF_CAP)


def certbot_reason(output: str) -> str:
    """certbot's reason for a failure in one line, not its whole output.

    The reason quotes the CA's words, so control characters in them are escaped (logsafe.printable)
    once the line is picked: a CA cannot colour, rewrite or split the companion's log.
    """
    return printable(_certbot_reason(output)[:500])


def _certbot_reason(output: str) -> str:
    details = [m.strip() for m in re.findall(r"^\s*(?:Type|Detail):\s*(.+)$", output, re.MULTILINE)]
    if details:
        return "; ".join(dict.fromkeys(details))
    unexpected = re.search(r"An unexpected error occurred:\s*\n\s*(\S.*)", output)
    if unexpected:  # certbot puts the reason on the line after this one
        return unexpected.group(1).strip()
    lines = [
        line.strip()
        for line in output.splitlines()
        if line.strip() and not line.startswith(("Saving debug log", "Ask for help", "See the logfile"))
    ]
    errors = [line for line in lines if "error" in line.lower() or "failed" in line.lower()]
    return (errors or lines or ["certbot failed without output"])[-1]


def _certbot_base(settings: Settings, verb: str, config_dir: Path, server: str) -> list[str]:
    certs = Path(settings.certs_dir)
    return [
        *CERTBOT,
        verb,
        "--config-dir",
        str(config_dir),
        "--work-dir",
        str(certs / "companion" / "work"),
        "--logs-dir",
        str(certs / "companion" / "logs"),
        "--server",
        server,
        "--non-interactive",
        "--agree-tos",
        "--no-eff-email",
    ]


def _email_args(email: str) -> list[str]:
    return ["--email", email] if email else ["--register-unsafely-without-email"]


def register_command(
    settings: Settings, server: str, email: str, config_dir: Path, eab_key_file: Path | None = None
) -> list[str]:
    """Register one account in a config dir of its own: `certbot register` refuses a second account for a
    server, and with two accounts `certonly` cannot choose without `--account`.

    With external account binding the key id is an argument, but the HMAC key is read from `eab_key_file`
    (certbot's config file syntax): certbot logs its arguments, and its log is in the certs volume."""
    command = [*_certbot_base(settings, "register", config_dir, server), *_email_args(email)]
    if settings.acme_eab_kid:
        assert eab_key_file is not None
        command += ["--config", str(eab_key_file), "--eab-kid", settings.acme_eab_kid]
    return command


def eab_key_config(settings: Settings) -> str:
    """The certbot config file text that hands it the HMAC key (see register_command)."""
    return f"eab-hmac-key = {settings.acme_eab_hmac_key}\n"


def lineage_request(
    settings: Settings, name: str, domains: tuple[str, ...], server: str, profile: str = ""
) -> CertRequest:
    """An order for a lineage on disk that no container asks for: it keeps its CA and profile, and a wildcard
    can only be renewed over DNS-01."""
    wildcard = any(domain.startswith("*.") for domain in domains)
    challenge = Challenge.DNS01 if wildcard else settings.acme_challenge
    return CertRequest(name, domains, settings.default_email, server=server, challenge=challenge, profile=profile)


def profile_refusal(profile: str, server: str, directory: object) -> str:
    """Why the CA at `server` cannot issue under `profile`, '' when its directory offers it (or none is asked
    for). certbot would silently order the CA's default profile instead."""
    if not profile:
        return ""
    meta = directory.get("meta") if isinstance(directory, dict) else None
    offered = meta.get("profiles") if isinstance(meta, dict) else None
    names = sorted(str(name) for name in offered) if isinstance(offered, dict) else []
    if profile in names:
        return ""
    if not names:
        return f"ACME_CERT_PROFILE={profile}: the CA at {server} offers no profiles; remove ACME_CERT_PROFILE"
    return f"ACME_CERT_PROFILE={profile}: the CA at {server} offers only {', '.join(printable(n) for n in names)}"


def certbot_command(settings: Settings, request: CertRequest, *, force: bool, account: str = "") -> list[str]:
    cmd = [
        *_certbot_base(settings, "certonly", Path(settings.certs_dir), request.server or settings.acme_server),
        *authenticator(settings, request.challenge).certbot_args(),
        "--cert-name",
        request.name,
        "--no-random-sleep-on-renew",
        "--max-log-backups",
        "5",
        "--key-type",
        settings.key_type,
    ]
    if settings.key_type == "rsa":
        cmd += ["--rsa-key-size", str(settings.rsa_key_size)]
    else:
        cmd += ["--elliptic-curve", "secp256r1"]
    cmd += _email_args(request.email)
    if request.profile:
        cmd += ["--preferred-profile", request.profile]
    if account:
        cmd += ["--account", account]
    if force:
        cmd.append("--force-renewal")
    for domain in request.domains:
        cmd += ["-d", domain]
    return cmd


@dataclass
class CertState:
    domains: list[str] = field(default_factory=list)
    failures: int = 0
    next_try: float = 0.0  # unix time
    last_error: str = ""
    in_progress: bool = False


def describe(status: CertStatus | None, entry: CertState) -> str:
    """A certificate's state in words, as `companion certs` and `companion explain` show it. The last
    error is the CA's text (kept in a file): escaped, so it cannot write to the terminal."""
    if entry.in_progress:
        return "renewing"
    if entry.failures:
        retry = dt.datetime.fromtimestamp(entry.next_try, dt.UTC)
        return f"failing ({entry.failures}x), next try {retry:%Y-%m-%d %H:%M} UTC: {printable(entry.last_error[:80])}"
    if status is None or status.problem:
        return "placeholder" + (f" ({status.problem})" if status and status.problem else "")
    return "valid"


_STATE_FIELDS: dict[str, tuple[str, Callable[[object], bool]]] = {
    "domains": ("a list of names", lambda v: isinstance(v, list) and all(isinstance(d, str) for d in v)),
    "failures": ("a count", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "next_try": ("a unix time", lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)),
    "last_error": ("a text", lambda v: isinstance(v, str)),
    "in_progress": ("true or false", lambda v: isinstance(v, bool)),
}


def parse_state(raw: object) -> dict[str, CertState]:
    """The state file's JSON as CertStates; ValueError naming the first part of the wrong shape, so that a
    bad file is refused as a whole here instead of raising later on every pass."""
    if not isinstance(raw, dict):
        raise ValueError(f"expected an object of certificate names, found {type(raw).__name__}")
    state: dict[str, CertState] = {}
    for name, value in raw.items():
        if not isinstance(value, dict):
            raise ValueError(f"{name!r}: expected an object, found {type(value).__name__}")
        if set(value) != set(_STATE_FIELDS):
            missing, unknown = sorted(set(_STATE_FIELDS) - set(value)), sorted(set(value) - set(_STATE_FIELDS))
            parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
                [f"unknown {', '.join(unknown)}"] if unknown else []
            )
            raise ValueError(f"{name!r}: {'; '.join(parts)}")
        for key, (what, valid) in _STATE_FIELDS.items():
            if not valid(value[key]):
                raise ValueError(f"{name!r}: {key} must be {what}, not {value[key]!r:.60}")
        state[name] = CertState(**{**value, "next_try": float(value["next_try"])})
    return state


ACCOUNT_PATH_RE = re.compile(r"^accounts/[A-Za-z0-9.:\[\]_~%/-]+/[0-9a-f]{32}\Z")


def account_key(server: str, email: str, eab_kid: str = "") -> str:
    """One JSON key per (CA, email, EAB key id): a URL, an email and a key id hold no space, so the key splits
    back unambiguously; without a key id it is the (CA, email) key of the accounts registered before EAB."""
    return f"{server} {email} {eab_kid}" if eab_kid else f"{server} {email}"


def parse_accounts(raw: object) -> dict[str, str]:
    """The accounts file's JSON, (CA, email) key -> account folder relative to the certs dir; ValueError
    when it has another shape, or a folder could lead outside accounts/."""
    if not isinstance(raw, dict):
        raise ValueError(f"expected an object, found {type(raw).__name__}")
    for key, value in raw.items():
        if not isinstance(value, str) or not ACCOUNT_PATH_RE.match(value) or "/../" in value or "/./" in value:
            raise ValueError(f"{key!r}: not an account folder under accounts/: {value!r:.80}")
    return dict(raw)
