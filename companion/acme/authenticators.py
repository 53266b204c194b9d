"""How certbot proves control of the names: HTTP-01 (a file in the webroot nginx serves) or DNS-01 (a TXT record
set by one of certbot's DNS plugins).

Modelled on certbot's own `Authenticator` interface (perform, then cleanup): each authenticator says which
arguments it adds to the certbot command line, what it checks before an order reaches the CA, and removes
whatever its check left behind once the order is over. `authenticator` picks one per request, so nothing else
branches on the challenge.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import requests

from companion.acme.dns import certbot_args as dns_args
from companion.acme.dns import credentials_problem
from companion.core.model import CertRequest
from companion.core.values import Challenge
from companion.settings.config import Settings
from companion.util.safefiles import write_atomic

SELF_CHECK_TIMEOUT = 5.0
SELF_CHECK_SETTLE = 3.0  # seconds a just-reloaded nginx gets to serve the token

# Where nginx is asked for the self-check token: one base URL, or one per node (Swarm).
SelfCheckUrl = Callable[[], str | list[str]]


class Authenticator(Protocol):
    def certbot_args(self) -> list[str]:
        """certbot's options that choose and configure the challenge."""
        ...

    def precheck(self, request: CertRequest) -> str:
        """Why an order would fail before the CA is asked, or ''."""
        ...

    def cleanup(self) -> None:
        """Remove what precheck left behind; called once the order is over, whatever its outcome."""
        ...


class Dns01:
    """TXT records set by a certbot DNS plugin; the CA never reaches nginx, so the check is the plugin's
    credentials file (its permissions; it is never read here)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def certbot_args(self) -> list[str]:
        return dns_args(self.settings.dns_plugin, self.settings.dns_credentials, self.settings.dns_propagation_seconds)

    def precheck(self, request: CertRequest) -> str:
        if not self.settings.dns_plugin:
            return "DNS-01 needs a DNS plugin on the companion (ACME_DNS_PLUGIN)"
        return credentials_problem(self.settings.dns_credentials)

    def cleanup(self) -> None:
        """The check only looked at a file: nothing to remove (the plugin removes its own TXT records)."""


class Http01:
    """Files in the webroot nginx serves. With a `self_check_url` (the running service) each name is first
    fetched through nginx with a token of our own, so a site nginx cannot serve never costs a failed
    validation at the CA; without one (`companion renew` with no service) nothing is checked."""

    def __init__(self, settings: Settings, self_check_url: SelfCheckUrl | None, stopping: threading.Event) -> None:
        self.settings = settings
        self.self_check_url = self_check_url
        self.stopping = stopping  # a stopping companion gives up waiting for nginx
        self.tokens: list[Path] = []  # the self-check's files in the webroot, until cleanup

    def certbot_args(self) -> list[str]:
        return ["--webroot", "--webroot-path", self.settings.webroot, "--preferred-challenges", "http"]

    def precheck(self, request: CertRequest) -> str:
        return self.self_check(request) if self.self_check_url is not None and self.settings.self_check else ""

    def self_check(self, request: CertRequest) -> str:
        """Serve a token through nginx for each name before ordering; '' when nginx serves them all."""
        assert self.self_check_url is not None
        folder = Path(self.settings.webroot) / ".well-known" / "acme-challenge"
        token = "companion-self-check-" + secrets.token_urlsafe(16)
        body = secrets.token_urlsafe(24)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self.tokens.append(folder / token)
            write_atomic(folder / token, body)
        except OSError as exc:
            return f"self-check: cannot write to the webroot {self.settings.webroot}: {exc.strerror or exc}"
        bases = self.self_check_url()
        if isinstance(bases, str):
            bases = [bases]
        if not bases:
            return "self-check: no node's agent is up to serve the token"
        # The order is queued by the pass that just reloaded nginx, and a reload is asynchronous
        # (`nginx -s reload` returns before the new listeners and workers exist): right after a
        # first apply the port was still closed. Ask again for a moment before calling it failed.
        deadline = time.monotonic() + SELF_CHECK_SETTLE
        while True:
            # Swarm: HTTP-01 may reach any node, so every node that is up must serve the token.
            error = next((e for base in bases if (e := self._fetch_token(base, token, body, request.domains))), "")
            if not error or time.monotonic() >= deadline or self.stopping.is_set():
                return error
            time.sleep(0.1)

    def cleanup(self) -> None:
        """Remove the self-check's tokens, so the webroot holds only what certbot puts there."""
        while self.tokens:
            self.tokens.pop().unlink(missing_ok=True)

    def _fetch_token(self, base: str, token: str, body: str, domains: tuple[str, ...]) -> str:
        for domain in domains:
            url = f"{base}/.well-known/acme-challenge/{token}"
            try:
                answer = requests.get(url, headers={"Host": domain}, timeout=SELF_CHECK_TIMEOUT, allow_redirects=False)
            except requests.RequestException as exc:
                return f"self-check: nginx at {base} did not answer for {domain} ({type(exc).__name__})"
            if answer.status_code != 200 or answer.text.strip() != body:
                return (
                    f"self-check: nginx at {base} did not serve the webroot for {domain} "
                    f"(HTTP {answer.status_code}); is {self.settings.webroot} shared with nginx?"
                )
        return ""


def authenticator(
    settings: Settings,
    challenge: Challenge,
    self_check_url: SelfCheckUrl | None = None,
    stopping: threading.Event | None = None,
) -> Authenticator:
    """The authenticator for a request's challenge."""
    if challenge is Challenge.DNS01:
        return Dns01(settings)
    return Http01(settings, self_check_url, stopping or threading.Event())
