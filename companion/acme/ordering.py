"""One certificate order, as the worker and `companion renew` (with no service running) both place it: the
authenticator's check, the profile's check against the CA's directory, the ACME account, one certbot run,
then the new lineage's folders made private.

One certbot process at a time (certbot locks its directories); `stop` ends a running one and starts no more.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import requests

from companion.acme.authenticators import Authenticator, SelfCheckUrl, authenticator
from companion.acme.certs import tighten
from companion.acme.policy import (
    ACCOUNT_PATH_RE,
    CERTBOT_TIMEOUT,
    account_key,
    certbot_command,
    certbot_reason,
    eab_key_config,
    parse_accounts,
    profile_refusal,
    register_command,
)
from companion.core.model import CertRequest
from companion.settings.config import Settings
from companion.util import jsonstate
from companion.util.safefiles import real_dir

log = logging.getLogger(__name__)

# -- ACME accounts: one per (CA, email) ----------------------------------------------------------

DIRECTORY_TIMEOUT = 10.0
DIRECTORY_MAX_BYTES = 256 * 1024
ACCOUNTS_FILE = "companion/accounts.json"
ACCOUNTS_MAX_BYTES = 1024 * 1024
# certbot keeps an account in accounts/<server host[:port]>/<server path>/<id>, its id 32 hex digits.


def load_accounts(certs_dir: Path) -> dict[str, str]:
    """The saved mapping; a missing or unusable file starts empty (the accounts are registered again)."""
    path = certs_dir / ACCOUNTS_FILE

    def report(exc: Exception) -> None:
        log.warning("ignoring %s (%s); accounts will be registered again", path, exc)

    return jsonstate.load(path, ACCOUNTS_MAX_BYTES, parse_accounts, {}, report)


@dataclass(frozen=True)
class Outcome:
    """How an order ended: refused before an order reached the CA (the authenticator's check, or a profile
    the CA does not offer), failed (account or certbot), or neither (issued)."""

    refused: str = ""
    failed: str = ""

    @property
    def error(self) -> str:
        return self.refused or self.failed


class Orderer:
    """Places orders, one certbot at a time. Without a `self_check_url` (no nginx of ours to ask) HTTP-01
    orders are not self-checked."""

    def __init__(self, settings: Settings, self_check_url: SelfCheckUrl | None = None) -> None:
        self.settings = settings
        self.certs_dir = Path(settings.certs_dir)
        self.self_check_url = self_check_url
        self.accounts = load_accounts(self.certs_dir)  # only the thread that orders uses them
        self.process: subprocess.Popen[str] | None = None
        self.process_lock = threading.Lock()  # starting certbot vs. stop(): none may start after stop()
        self.stopping = threading.Event()

    def order(self, request: CertRequest, *, force: bool, account: str | None = None) -> Outcome:
        """Order one certificate. `account` is the certbot account id to use (a lineage's own, from its renewal
        file; '' lets certbot pick the only account it has); None uses the one registered for the request's
        (CA, email, EAB key id), registering it first if needed."""
        checked = self.authenticator(request)
        try:
            refused = checked.precheck(request) or self.profile_check(request)
            if refused:
                return Outcome(refused=refused)
            if account is None:
                error, account = self.account_for(request)
                if error:
                    return Outcome(failed=error)
            failed = self.run(certbot_command(self.settings, request, force=force, account=account))
        finally:
            checked.cleanup()
        if not failed:
            tighten(self.certs_dir, request.name)
        return Outcome(failed=failed)

    def authenticator(self, request: CertRequest) -> Authenticator:
        """The request's challenge, checked through our nginx when there is one to ask."""
        return authenticator(self.settings, request.challenge, self.self_check_url, self.stopping)

    def profile_check(self, request: CertRequest) -> str:
        """Why the request's profile cannot be ordered, '' when the CA's directory offers it (or none is named).
        A directory that cannot be read is left to certbot, which reads it too and says why it failed."""
        if not request.profile:
            return ""
        server = request.server or self.settings.acme_server
        try:
            answer = requests.get(server, timeout=DIRECTORY_TIMEOUT, verify=self.settings.ca_bundle or True)
            answer.raise_for_status()
            if len(answer.content) > DIRECTORY_MAX_BYTES:
                raise ValueError(f"directory over {DIRECTORY_MAX_BYTES} bytes")
            directory = answer.json()
        except (requests.RequestException, ValueError) as exc:
            log.warning("cannot read the ACME directory %s to check profile %s: %s", server, request.profile, exc)
            return ""
        return profile_refusal(request.profile, server, directory)

    def account_for(self, request: CertRequest) -> tuple[str, str]:
        """(error, account id) for the request's (CA, email, EAB key id): the one registered before, else a new
        one.

        certbot registers in a scratch config dir and the account folder is moved into the certs dir,
        where `--account` finds it; the key is remembered in ACCOUNTS_FILE. The EAB HMAC key reaches certbot
        in a config file outside the certs volume, removed once certbot has read it."""
        server = request.server or self.settings.acme_server
        key = account_key(server, request.email, self.settings.acme_eab_kid)
        known = self.accounts.get(key)
        if known is not None and (self.certs_dir / known / "regr.json").is_file():
            return "", Path(known).name
        scratch_root = real_dir(self.certs_dir, "companion/register")
        scratch = Path(tempfile.mkdtemp(dir=scratch_root))
        secret: Path | None = None  # a private folder in the system's temp dir: not the certs volume
        try:
            eab_file = None
            if self.settings.acme_eab_kid:
                secret = Path(tempfile.mkdtemp(prefix="companion-eab-"))
                eab_file = secret / "eab.ini"
                eab_file.touch(mode=0o600)
                eab_file.write_text(eab_key_config(self.settings))
            error = self.run(register_command(self.settings, server, request.email, scratch, eab_file))
            if error:
                return f"registering an account at {server}: {error}", ""
            found = sorted(meta.parent.relative_to(scratch) for meta in scratch.glob("accounts/**/meta.json"))
            if len(found) != 1 or not ACCOUNT_PATH_RE.match(str(found[0])):
                return f"registering an account at {server}: certbot left {len(found)} account folders", ""
            relative = found[0]
            real_dir(self.certs_dir, str(relative.parent))
            os.replace(scratch / relative, self.certs_dir / relative)
            self.accounts[key] = str(relative)
            jsonstate.save(self.certs_dir, ACCOUNTS_FILE, self.accounts)
        except OSError as exc:
            return f"registering an account at {server}: {exc.strerror or exc}", ""
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            if secret is not None:
                shutil.rmtree(secret, ignore_errors=True)
        binding = f" bound to EAB key id {self.settings.acme_eab_kid}" if self.settings.acme_eab_kid else ""
        log.info("registered an ACME account at %s for %s%s", server, request.email or "no email", binding)
        return "", relative.name

    def run(self, command: list[str]) -> str:
        """Run one certbot command (never two at once); '' on success, certbot's reason otherwise."""
        env = dict(os.environ)
        if self.settings.ca_bundle:
            env["REQUESTS_CA_BUNDLE"] = self.settings.ca_bundle
        try:
            with self.process_lock:
                if self.stopping.is_set():
                    return "stopped before certbot ran"
                self.process = subprocess.Popen(
                    command,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    env=env,
                    start_new_session=True,
                )
            output, _ = self.process.communicate(timeout=CERTBOT_TIMEOUT)
            code = self.process.returncode
        except subprocess.TimeoutExpired:
            self.process.kill()
            return f"certbot did not finish within {CERTBOT_TIMEOUT}s"
        except OSError as exc:
            return f"cannot run certbot: {exc}"
        except BaseException:
            # Ctrl-C in `companion renew`: certbot runs in a session of its own, so the terminal's
            # interrupt never reaches it; kill it rather than leave it running.
            if self.process is not None:
                self.process.kill()
            raise
        finally:
            self.process = None
        return certbot_reason(output) if code != 0 else ""

    def stop(self, timeout: float) -> None:
        """Start no more certbots; a running one is terminated so none is left orphaned."""
        with self.process_lock:  # run() starts no certbot once this is set
            self.stopping.set()
            process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
