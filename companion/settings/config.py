"""Settings from command-line flags and environment variables (the flag wins), as one typed object."""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from companion.core.options import LETSENCRYPT_STAGING, OPTIONS, Option, Options, SslPolicy
from companion.core.values import EMAIL_RULE, InvalidValue, is_email, parse_ca_url
from companion.settings import dns
from companion.settings.parsers import PARSERS, TRUE, Refused, parse_hmac_key

SERVER_TOKENS = ("on", "off", "build")
OWN_LOG_FORMATS = ("text", "json")  # LOG_FORMAT's values for the companion's own log; others are nginx-proxy's
LOG_ESCAPES = ("default", "json", "none")
MAX_LOG_FORMAT = 4096
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the closing NUL
# NON_GET_REDIRECT: how plain HTTP sends a POST, PUT, ... to HTTPS. 303 is not one: it turns the request into
# a GET and drops its body. Not DEFAULT_ROOT's set (core/values.py RETURN_REDIRECT_CODES).
NON_GET_REDIRECT_CODES = (301, 302, 307, 308)


@dataclass(frozen=True)
class Settings(Options):
    """The companion's settings, loaded and validated: each field is declared once in core/options (type,
    default, flag, environment name, help); this class adds what is derived from them."""

    @property
    def own_log_format(self) -> str:
        """The companion's own log: LOG_FORMAT when it is text or json, else text (the value is nginx's)."""
        return self.log_format if self.log_format in OWN_LOG_FORMATS else "text"

    @property
    def access_log_format(self) -> str:
        """nginx-proxy's LOG_FORMAT: a custom access log format ("" when LOG_FORMAT is text or json)."""
        return "" if self.log_format in OWN_LOG_FORMATS else self.log_format

    @property
    def access_log_directive(self) -> str:
        """What the servers' access_log says: "" (nginx.conf's), "off", or the file LOG_JSON or a custom
        LOG_FORMAT writes to."""
        if self.disable_access_logs:
            return "off"
        return self.access_log if self.log_json or self.access_log_format else ""

    @property
    def docker_mode(self) -> bool:
        """True when nginx runs in a container that we exec into and signal."""
        return self.reload == "docker" or self.nginx_test == "docker"


class SettingsError(ValueError):
    """A flag or environment value that does not fit its setting."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every setting as a flag; unset flags are left out of the namespace so the environment fills them in."""
    for option in OPTIONS:
        parser.add_argument(
            option.flag, dest=option.name, default=argparse.SUPPRESS, help=f"{option.help} (env {option.env})"
        )


def _convert(option: Option, raw: str) -> object:
    """The setting's value from its text, by its declared type; a refusal names the setting."""
    try:
        return PARSERS[option.kind](raw)
    except Refused as exc:
        raise SettingsError(f"{option.name}: {exc}") from None
    except InvalidValue as exc:
        raise SettingsError(f"{option.name}: {raw!r}: {exc}") from None
    except ValueError:
        raise SettingsError(f"{option.name}: {raw!r} is not a valid {option.kind}") from None


def load(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """Merge flags over environment over defaults, then validate."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for option in OPTIONS:
        raw = getattr(args, option.name, None)
        if raw is None:
            raw = env.get(option.env)
        if raw is not None:
            values[option.name] = _convert(option, raw)
    if "acme_server" not in values and env.get("LETSENCRYPT_TEST", "").lower() in TRUE:
        values["acme_server"] = values.get("acme_staging_server", LETSENCRYPT_STAGING)
    if values.get("acme_eab_hmac_key_file"):
        values["acme_eab_hmac_key"] = _hmac_key_from_file(str(values["acme_eab_hmac_key_file"]), values)
    settings = Settings(**values)  # type: ignore[arg-type]
    _validate(settings)
    return settings


EAB_KEY_FILE_MAX_BYTES = 4096


def _hmac_key_from_file(path: str, values: Mapping[str, object]) -> str:
    """ACME_EAB_HMAC_KEY_FILE's key (a Docker secret), read once at start; errors name the file, never its text."""
    if values.get("acme_eab_hmac_key"):
        raise SettingsError("acme_eab_hmac_key_file: set ACME_EAB_HMAC_KEY or ACME_EAB_HMAC_KEY_FILE, not both")
    if not path.startswith("/"):
        raise SettingsError(f"acme_eab_hmac_key_file: {_escaped(path)!r} must be an absolute path")
    try:
        with open(path, "rb") as file:
            raw = file.read(EAB_KEY_FILE_MAX_BYTES + 1)
    except OSError as exc:
        raise SettingsError(f"acme_eab_hmac_key_file: cannot read {_escaped(path)!r}: {exc.strerror or exc}") from None
    if len(raw) > EAB_KEY_FILE_MAX_BYTES:
        raise SettingsError(f"acme_eab_hmac_key_file: {_escaped(path)!r} is over {EAB_KEY_FILE_MAX_BYTES} bytes")
    try:
        return parse_hmac_key(raw.decode("ascii"))
    except (Refused, UnicodeDecodeError) as exc:
        reason = str(exc) if isinstance(exc, Refused) else "must be the CA's HMAC key in base64url"
        raise SettingsError(f"acme_eab_hmac_key_file: {_escaped(path)!r}: the key {reason}") from None


def _escaped(text: str) -> str:
    """A value as it may be shown in one line of an error: control characters escaped."""
    return text.encode("unicode_escape").decode("ascii")


# -- checks, one concern each; the first that fails stops the start ------------------------------------


def _check_listening(s: Settings) -> None:
    """What nginx listens on and answers with: ports, TLS policy, the redirect of other methods."""
    for port in (s.http_port, s.https_port):
        if not 1 <= port <= 65535:
            raise SettingsError(f"port {port} out of range 1-65535")
    for port in (s.external_http_port, s.external_https_port):
        if not 0 <= port <= 65535:
            raise SettingsError(f"external port {port} out of range 1-65535 (0: the port nginx listens on)")
    if not isinstance(s.ssl_policy, SslPolicy):
        raise SettingsError(f"SSL policy {s.ssl_policy!r} must be one of {', '.join(p.value for p in SslPolicy)}")
    if s.non_get_redirect not in NON_GET_REDIRECT_CODES:
        raise SettingsError(f"non-GET redirect code {s.non_get_redirect} must be 301, 302, 307 or 308")


def _check_orders(s: Settings) -> None:
    """What certbot is asked for: the key, and how soon a failed order is retried."""
    if s.key_type not in ("ecdsa", "rsa"):
        raise SettingsError(f"key type {s.key_type!r} must be ecdsa or rsa")
    if s.rsa_key_size not in (2048, 3072, 4096):
        raise SettingsError(f"RSA key size {s.rsa_key_size} must be 2048, 3072 or 4096")
    if s.acme_retry_base <= 0:
        raise SettingsError("acme retry base must be positive")


def _check_log_level(s: Settings) -> None:
    if s.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingsError(f"log level {s.log_level!r} must be DEBUG, INFO, WARNING or ERROR")


def _check_days(s: Settings) -> None:
    """Days before expiry that trigger a renewal or an alert."""
    if not math.isfinite(s.renew_before_days) or s.renew_before_days < 0:
        raise SettingsError("renew-before must be a finite, non-negative number of days")
    if not math.isfinite(s.notify_expiry_days) or s.notify_expiry_days < 0:
        raise SettingsError("notify-expiry-days must be a finite, non-negative number of days")


def _check_log_formats(s: Settings) -> None:
    """LOG_FORMAT is either the companion's own log format or nginx's access log format, which nginx.conf
    quotes: one printable line of bounded length."""
    if s.log_format not in OWN_LOG_FORMATS and (
        not s.log_format.strip() or len(s.log_format) > MAX_LOG_FORMAT or not s.log_format.isprintable()
    ):
        raise SettingsError(
            f"log format {_escaped(s.log_format[:80])!r} must be text or json (the companion's own log), or "
            f"nginx's access log format (nginx-proxy's meaning): printable, at most {MAX_LOG_FORMAT} characters"
        )
    if s.log_format_escape not in LOG_ESCAPES:
        raise SettingsError(
            f"log format escape {_escaped(s.log_format_escape)!r} must be one of {', '.join(LOG_ESCAPES)}"
        )


def _check_account(s: Settings) -> None:
    """The staging CA a container may select and the account email certbot registers."""
    try:
        parse_ca_url(s.acme_staging_server)
    except InvalidValue as exc:
        raise SettingsError(f"acme staging server {s.acme_staging_server!r}: {exc}") from None
    if s.default_email and not is_email(s.default_email):
        raise SettingsError(f"default email {_escaped(s.default_email)!r} {EMAIL_RULE}")


def _check_eab(s: Settings) -> None:
    """External account binding needs both halves: a key id alone (or a key alone) could never register."""
    if s.acme_eab_kid and not s.acme_eab_hmac_key:
        raise SettingsError("ACME_EAB_KID needs its HMAC key: set ACME_EAB_HMAC_KEY or ACME_EAB_HMAC_KEY_FILE")
    if s.acme_eab_hmac_key and not s.acme_eab_kid:
        raise SettingsError("ACME_EAB_HMAC_KEY needs its key id: set ACME_EAB_KID")


def _check_listeners(s: Settings) -> None:
    """The companion's own endpoints: an IP address and port each, never a name to resolve."""
    if s.status_listen:
        parse_listen(s.status_listen)
    if s.cluster_listen:
        parse_listen(s.cluster_listen, "cluster listen")


def _check_controller_url(s: Settings) -> None:
    """An agent reaches its controller over HTTPS at a bare origin."""
    url = urlsplit(s.controller_url)
    try:
        url.port  # noqa: B018 - raises for a bad port
    except ValueError:
        url = url._replace(scheme="")
    if url.scheme != "https" or not url.hostname or url.path not in ("", "/") or url.query:
        raise SettingsError(f"controller url {_escaped(s.controller_url)!r} must be https://HOST:PORT")


def _check_dns(s: Settings) -> None:
    problem = dns.settings_problem(s.acme_challenge, s.dns_plugin, s.dns_credentials, s.dns_propagation_seconds)
    if problem:
        raise SettingsError(problem)


def _check_renew_control(s: Settings) -> None:
    """`companion renew`: the socket it speaks through and how often it may make the service order."""
    if not s.control_socket.startswith("/") or not 0 < len(s.control_socket.encode()) <= MAX_SOCKET_PATH:
        raise SettingsError(
            f"control socket {_escaped(s.control_socket)!r} must be an absolute path of at most {MAX_SOCKET_PATH} bytes"
        )
    if not math.isfinite(s.renew_limit_minutes) or s.renew_limit_minutes < 0:
        raise SettingsError("renew-limit-minutes must be a finite, non-negative number of minutes")
    if s.renew_limit_per_hour < 1:
        raise SettingsError("renew-limit-per-hour must be at least 1")


def _check_status_files(s: Settings) -> None:
    """The status endpoint's password files."""
    if s.status_credentials and not s.status_credentials.startswith("/"):
        raise SettingsError(
            f"status credentials {_escaped(s.status_credentials)!r} must be an absolute path to a user:password file"
        )
    if s.status_auth and not s.status_auth.startswith("/"):
        raise SettingsError(f"status auth {s.status_auth!r} must be an absolute path to an htpasswd file")


def _check_nginx_files(s: Settings) -> None:
    """Paths nginx reads or writes; those written into nginx's files must not break their syntax."""
    for path in (s.conf_dir, s.webroot, s.certs_dir, s.access_log):
        if not path.startswith("/") or any(c in path for c in " ;{}'\"\n\t$#"):
            raise SettingsError(f"path {path!r} must be absolute and free of spaces and nginx syntax")
    for path in (s.vhost_dir, s.htpasswd_dir, s.client_ca_dir, s.proxy_conf):
        if not path.startswith("/"):
            raise SettingsError(f"path {path!r} must be absolute")
    if s.server_tokens.strip().lower() not in ("", *SERVER_TOKENS):
        raise SettingsError(
            f"server tokens {_escaped(s.server_tokens)!r} must be on, off or build (or empty for nginx.conf's)"
        )


_CHECKS: tuple[Callable[[Settings], None], ...] = (
    _check_listening,
    _check_orders,
    _check_log_level,
    _check_days,
    _check_log_formats,
    _check_account,
    _check_eab,
    _check_listeners,
    _check_controller_url,
    _check_dns,
    _check_renew_control,
    _check_status_files,
    _check_nginx_files,
)


def _validate(s: Settings) -> None:
    """Every check in turn, so a Settings built in code is held to the same rules as a loaded one."""
    for check in _CHECKS:
        check(s)


def parse_listen(text: str, what: str = "status listen") -> tuple[str, int]:
    """'127.0.0.1:8081' or '[::1]:8081' -> (host, port): an IP address, never a name to resolve."""
    host, sep, port = text.strip().rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    shown = _escaped(text)
    try:
        if ":" in host and not bracketed:  # '::1:80' reads two ways
            raise ValueError(host)
        ipaddress.ip_address(host)
    except ValueError:
        raise SettingsError(f"{what} {shown!r} must be IP:PORT, e.g. 0.0.0.0:8081 or [::1]:8081") from None
    if not sep or not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
        raise SettingsError(f"{what} {shown!r}: the port must be 1-65535") from None
    return host, int(port)


def parse_nginx_version(text: str) -> tuple[int, ...]:
    """'nginx version: nginx/1.22.1' -> (1, 22, 1)."""
    for word in text.split():
        if word.startswith("nginx/"):
            return tuple(int(p) for p in word.split("/", 1)[1].split(".") if p.isdigit())
    raise SettingsError(f"cannot read an nginx version from {text.strip()!r}")


def environment_table() -> str:
    """The settings table for the docs, so the docs follow the code."""
    defaults = Settings()
    lines = ["| flag | env | meaning | default |", "| --- | --- | --- | --- |"]
    for option in OPTIONS:
        default = getattr(defaults, option.name)
        if isinstance(default, bool):
            default = str(default).lower()
        shown = f"`{default}`" if default not in ("", ()) else "(none)"
        lines.append(f"| `{option.flag}` | `{option.env}` | {option.help} | {shown} |")
    return "\n".join(lines)
