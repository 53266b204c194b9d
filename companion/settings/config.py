"""Settings from command-line flags and environment variables (the flag wins), as one typed object."""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from urllib.parse import urlsplit

from companion.core.options import OPTIONS
from companion.core.trust import ImageTrust, OwnerRule, parse_owner_rules
from companion.core.values import (
    EMAIL_RULE,
    Challenge,
    InvalidValue,
    RootAnswer,
    is_email,
    parse_ca_url,
    parse_default_root,
    parse_enum,
    parse_hostname,
)
from companion.settings import dns
from companion.settings.notify import BadNotifyUrl, parse_notify_urls

LETSENCRYPT_PRODUCTION = "https://acme-v02.api.letsencrypt.org/directory"
LETSENCRYPT_STAGING = "https://acme-staging-v02.api.letsencrypt.org/directory"
CaUrls = tuple[str, ...]  # ACME directory URLs, kept exactly as written (their case matters)
NotifyUrls = tuple[str, ...]  # Apprise URLs; they hold tokens and passwords, so never shown
Resolvers = tuple[str, ...]  # nginx `resolver` addresses: an IP, an IP:port or [IPv6]:port, normalised
SERVER_TOKENS = ("on", "off", "build")
OWN_LOG_FORMATS = ("text", "json")  # LOG_FORMAT's values for the companion's own log; others are nginx-proxy's
LOG_ESCAPES = ("default", "json", "none")
MAX_LOG_FORMAT = 4096
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the closing NUL


class SslPolicy(StrEnum):
    """Mozilla's TLS configurations, by nginx-proxy's names for them."""

    MODERN = "Mozilla-Modern"  # TLS 1.3 only
    INTERMEDIATE = "Mozilla-Intermediate"  # TLS 1.2 and 1.3
    OLD = "Mozilla-Old"  # TLS 1.0 to 1.3, for clients that cannot do better


# NON_GET_REDIRECT: how plain HTTP sends a POST, PUT, ... to HTTPS. 303 is not one: it turns the request into
# a GET and drops its body. Not DEFAULT_ROOT's set (core/values.py RETURN_REDIRECT_CODES).
NON_GET_REDIRECT_CODES = (301, 302, 307, 308)


@dataclass(frozen=True)
class Settings:
    conf_dir: str = "/etc/nginx/conf.d"
    webroot: str = "/var/www/letsencrypt"
    certs_dir: str = "/etc/letsencrypt"
    http_port: int = 80
    https_port: int = 443
    reload: str = "docker"
    nginx_test: str = "docker"
    nginx_container: str = ""
    default_email: str = ""
    acme_server: str = LETSENCRYPT_PRODUCTION
    acme_staging_server: str = LETSENCRYPT_STAGING
    allowed_acme_servers: CaUrls = ()
    ca_bundle: str = ""
    key_type: str = "ecdsa"
    rsa_key_size: int = 2048
    renew_before_days: float = 0.0  # 0 = when a third of the lifetime is left
    acme_retry_base: float = 300.0
    allowed_domains: tuple[str, ...] = ()
    image_trust: ImageTrust = ImageTrust.ROUTING
    domain_owners: tuple[OwnerRule, ...] = ()
    self_check: bool = True
    acme_challenge: Challenge = Challenge.HTTP01
    dns_plugin: str = ""  # a certbot DNS plugin (dns-rfc2136, ...); DNS-01 and wildcards need one
    dns_credentials: str = ""  # that plugin's credentials file; never read here, only checked and passed on
    dns_propagation_seconds: int = -1  # -1: the plugin's own default
    default_host: str = ""
    default_root: RootAnswer | None = RootAnswer(404)
    http_on_missing_cert: bool = True
    heartbeat_file: str = "/tmp/companion.heartbeat"
    log_level: str = "INFO"
    # nginx-proxy trusts by default; here the proxy is the edge, so a client must not be able to forge
    # the X-Forwarded-Proto/Host/Port/Ssl that apps believe.
    trust_downstream_proxy: bool = False
    ssl_policy: SslPolicy = SslPolicy.INTERMEDIATE
    enable_ipv6: bool = False
    external_http_port: int = 0  # 0: the port nginx listens on
    external_https_port: int = 0
    non_get_redirect: int = 301
    status_listen: str = ""  # HOST:PORT of the status endpoint; "" keeps it off
    status_auth: str = ""  # htpasswd file (bcrypt) whose users may read the status endpoint
    status_credentials: str = ""  # `user:password` file the commands send to a status endpoint with STATUS_AUTH
    # In the companion's own container, never in a volume another container mounts (nginx mounts the certs).
    control_socket: str = "/run/companion/control.sock"
    renew_limit_minutes: float = 60.0
    renew_limit_per_hour: int = 20
    notify_urls: NotifyUrls = field(default=(), repr=False)
    notify_expiry_days: float = 14.0
    log_format: str = "text"
    log_format_escape: str = "default"
    vhost_dir: str = "/etc/nginx/vhost.d"
    htpasswd_dir: str = "/etc/nginx/htpasswd"
    client_ca_dir: str = "/etc/nginx/client_ca"
    proxy_conf: str = "/etc/nginx/proxy.conf"
    server_tokens: str = ""  # "": nginx's own (nginx.conf)
    log_json: bool = False
    disable_access_logs: bool = False
    access_log: str = "/var/log/nginx/access.log"
    resolvers: Resolvers = ()
    cluster_listen: str = ""  # IP:PORT where the controller serves its agents; "" keeps the cluster off
    cluster_secret_file: str = ""  # "" is the role's Swarm secret: companion_controller or companion_agent
    controller_url: str = "https://companion:8443"
    agent_state_dir: str = "/var/lib/companion-agent"
    node_name: str = ""

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


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


class SettingsError(ValueError):
    """A flag or environment value that does not fit its setting."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every setting as a flag; unset flags are left out of the namespace so the environment fills them in."""
    for flag, env, name, text in OPTIONS:
        parser.add_argument(flag, dest=name, default=argparse.SUPPRESS, help=f"{text} (env {env})")


def _convert(name: str, raw: str) -> object:
    kind = {f.name: f.type for f in fields(Settings)}[name]
    if kind == "SslPolicy":
        return _ssl_policy(raw)
    try:
        if kind == "Challenge":
            return parse_enum(raw, Challenge)
        if name == "default_host":
            return parse_hostname(raw) if raw.strip() else ""
        if kind == "RootAnswer | None":
            return parse_default_root(raw)
        if kind == "int":
            if not re.fullmatch(r"[0-9]{1,9}", raw.strip()):
                raise ValueError(raw)
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if raw.strip().lower() not in _TRUE | _FALSE:
                raise ValueError(raw)
            return raw.strip().lower() in _TRUE
        if kind == "tuple[str, ...]":
            return tuple(p.strip().lower() for p in raw.split(",") if p.strip())
        if kind == "ImageTrust":
            return ImageTrust(raw.strip().lower())
        if kind == "tuple[OwnerRule, ...]":
            return parse_owner_rules(raw)
        if kind == "CaUrls":
            return tuple(parse_ca_url(p) for p in raw.split(",") if p.strip())
        if kind == "NotifyUrls":
            return parse_notify_urls(raw)
        if kind == "Resolvers":
            return parse_resolvers(raw)
    except InvalidValue as exc:
        raise SettingsError(f"{name}: {raw!r}: {exc}") from None
    except BadNotifyUrl as exc:
        raise SettingsError(f"{name}: {exc}") from None
    except ValueError as exc:
        if kind == "ImageTrust":
            raise SettingsError(f"{name}: {raw!r} must be one of routing, all, none") from None
        if kind == "tuple[OwnerRule, ...]":
            raise SettingsError(f"{name}: {exc}") from None
        raise SettingsError(f"{name}: {raw!r} is not a valid {kind}") from None
    return raw


def _ssl_policy(raw: str) -> SslPolicy:
    """nginx-proxy's spelling, in any case; its AWS-* policies are refused by name rather than guessed at."""
    for policy in SslPolicy:
        if raw.strip().lower() == policy.value.lower():
            return policy
    supported = ", ".join(p.value for p in SslPolicy)
    shown = raw.encode("unicode_escape").decode("ascii")
    if raw.strip().upper().startswith("AWS-"):
        raise SettingsError(
            f"ssl_policy: {shown!r} is an AWS policy of nginx-proxy, not supported; use one of {supported}"
        )
    raise SettingsError(f"ssl_policy: {shown!r} must be one of {supported}")


def load(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """Merge flags over environment over defaults, then validate."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for _flag, var, name, _text in OPTIONS:
        raw = getattr(args, name, None)
        if raw is None:
            raw = env.get(var)
        if raw is not None:
            values[name] = _convert(name, raw)
    if "acme_server" not in values and env.get("LETSENCRYPT_TEST", "").lower() in _TRUE:
        values["acme_server"] = values.get("acme_staging_server", LETSENCRYPT_STAGING)
    settings = Settings(**values)  # type: ignore[arg-type]
    _validate(settings)
    return settings


def _validate(s: Settings) -> None:
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
    if s.key_type not in ("ecdsa", "rsa"):
        raise SettingsError(f"key type {s.key_type!r} must be ecdsa or rsa")
    if s.rsa_key_size not in (2048, 3072, 4096):
        raise SettingsError(f"RSA key size {s.rsa_key_size} must be 2048, 3072 or 4096")
    if s.acme_retry_base <= 0:
        raise SettingsError("acme retry base must be positive")
    if s.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise SettingsError(f"log level {s.log_level!r} must be DEBUG, INFO, WARNING or ERROR")
    if not math.isfinite(s.renew_before_days) or s.renew_before_days < 0:
        raise SettingsError("renew-before must be a finite, non-negative number of days")
    if not math.isfinite(s.notify_expiry_days) or s.notify_expiry_days < 0:
        raise SettingsError("notify-expiry-days must be a finite, non-negative number of days")
    if s.log_format not in OWN_LOG_FORMATS and (
        not s.log_format.strip() or len(s.log_format) > MAX_LOG_FORMAT or not s.log_format.isprintable()
    ):
        shown = s.log_format[:80].encode("unicode_escape").decode("ascii")
        raise SettingsError(
            f"log format {shown!r} must be text or json (the companion's own log), or nginx's access log format "
            f"(nginx-proxy's meaning): printable, at most {MAX_LOG_FORMAT} characters"
        )
    if s.log_format_escape not in LOG_ESCAPES:
        shown = s.log_format_escape.encode("unicode_escape").decode("ascii")
        raise SettingsError(f"log format escape {shown!r} must be one of {', '.join(LOG_ESCAPES)}")
    try:
        parse_ca_url(s.acme_staging_server)
    except InvalidValue as exc:
        raise SettingsError(f"acme staging server {s.acme_staging_server!r}: {exc}") from None
    if s.default_email and not is_email(s.default_email):
        raise SettingsError(f"default email {s.default_email.encode('unicode_escape').decode('ascii')!r} {EMAIL_RULE}")
    if s.status_listen:
        parse_listen(s.status_listen)
    if s.cluster_listen:
        parse_listen(s.cluster_listen, "cluster listen")
    url = urlsplit(s.controller_url)
    try:
        url.port  # noqa: B018 - raises for a bad port
    except ValueError:
        url = url._replace(scheme="")
    if url.scheme != "https" or not url.hostname or url.path not in ("", "/") or url.query:
        shown = s.controller_url.encode("unicode_escape").decode("ascii")
        raise SettingsError(f"controller url {shown!r} must be https://HOST:PORT")
    problem = dns.settings_problem(s.acme_challenge, s.dns_plugin, s.dns_credentials, s.dns_propagation_seconds)
    if problem:
        raise SettingsError(problem)
    if not s.control_socket.startswith("/") or not 0 < len(s.control_socket.encode()) <= MAX_SOCKET_PATH:
        shown = s.control_socket.encode("unicode_escape").decode("ascii")
        raise SettingsError(f"control socket {shown!r} must be an absolute path of at most {MAX_SOCKET_PATH} bytes")
    if not math.isfinite(s.renew_limit_minutes) or s.renew_limit_minutes < 0:
        raise SettingsError("renew-limit-minutes must be a finite, non-negative number of minutes")
    if s.renew_limit_per_hour < 1:
        raise SettingsError("renew-limit-per-hour must be at least 1")
    if s.status_credentials and not s.status_credentials.startswith("/"):
        shown = s.status_credentials.encode("unicode_escape").decode("ascii")
        raise SettingsError(f"status credentials {shown!r} must be an absolute path to a user:password file")
    if s.status_auth and not s.status_auth.startswith("/"):
        raise SettingsError(f"status auth {s.status_auth!r} must be an absolute path to an htpasswd file")
    for path in (s.conf_dir, s.webroot, s.certs_dir, s.access_log):
        if not path.startswith("/") or any(c in path for c in " ;{}'\"\n\t$#"):
            raise SettingsError(f"path {path!r} must be absolute and free of spaces and nginx syntax")
    for path in (s.vhost_dir, s.htpasswd_dir, s.client_ca_dir, s.proxy_conf):
        if not path.startswith("/"):
            raise SettingsError(f"path {path!r} must be absolute")
    if s.server_tokens.strip().lower() not in ("", *SERVER_TOKENS):
        shown = s.server_tokens.encode("unicode_escape").decode("ascii")
        raise SettingsError(f"server tokens {shown!r} must be on, off or build (or empty for nginx.conf's)")


def parse_resolvers(text: str) -> Resolvers:
    """RESOLVERS: IP addresses for nginx's `resolver`, each with an optional port; never a name (nginx would
    need a resolver to find its resolver)."""
    found = []
    for word in text.replace(",", " ").split():
        host, port = word, ""
        if word.startswith("["):
            host, _, rest = word[1:].partition("]")
            port = rest.removeprefix(":") if rest.startswith(":") else ("x" if rest else "")
        elif word.count(":") == 1:
            host, _, port = word.partition(":")
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            raise InvalidValue(f"{word!r} is not an IP address (IP, IP:port or [IPv6]:port)") from None
        if port and (not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535):
            raise InvalidValue(f"{word!r}: the port must be 1-65535")
        shown = f"[{address}]" if address.version == 6 else str(address)
        found.append(f"{shown}:{port}" if port else shown)
    if len(found) > 16:
        raise InvalidValue("more than 16 resolvers")
    return tuple(dict.fromkeys(found))


def parse_listen(text: str, what: str = "status listen") -> tuple[str, int]:
    """'127.0.0.1:8081' or '[::1]:8081' -> (host, port): an IP address, never a name to resolve."""
    host, sep, port = text.strip().rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    shown = text.encode("unicode_escape").decode("ascii")
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


def environment_table(rows: Sequence[tuple[str, str, str, str]] = OPTIONS) -> str:
    """The settings table for README.md, so the docs follow the code."""
    defaults = Settings()
    lines = ["| flag | env | meaning | default |", "| --- | --- | --- | --- |"]
    for flag, env, name, text in rows:
        default = getattr(defaults, name)
        if isinstance(default, bool):
            default = str(default).lower()
        shown = f"`{default}`" if default not in ("", ()) else "(none)"
        lines.append(f"| `{flag}` | `{env}` | {text} | {shown} |")
    return "\n".join(lines)
