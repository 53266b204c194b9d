"""Typed sites parsed from container labels and environment (pure).

Every value that can reach an nginx file passes through a parser here and becomes a typed value
(hostname, port, path, enum) or a `Rejection` naming the container, the variable and the reason.
Templates only ever see what these parsers return, so no character of a label can add a directive.
"""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import TypeVar

import idna

from companion.core import trust

MAX_HOSTNAME = 253
MAX_LABEL = 63
MAX_PATH = 512
# One container's labels must not be able to make every pass (or nginx -t) slow for everyone.
MAX_HOSTS = 100
MAX_VALUE_BYTES = 32 * 1024
# Patterns end in \Z, not $: "$" also matches before a final "\n", which let "a\n.com" through.
_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
# RFC 3986 unreserved characters plus "/" and "%XX" escapes: nothing nginx treats as syntax.
_PATH_RE = re.compile(r"^/(?:[A-Za-z0-9._~/-]|%[0-9A-Fa-f]{2})*\Z")
_HSTS_RE = re.compile(r"^max-age=[0-9]{1,9}(?:; ?includeSubDomains)?(?:; ?preload)?\Z")
# A DEFAULT_ROOT target: nothing nginx reads as syntax, and a `$` only as one of three whole variables.
_ROOT_CHAR = r"(?:[A-Za-z0-9._~/?&=+,:@-]|%[0-9A-Fa-f]{2}|\$(?:scheme|host|request_uri)(?![A-Za-z0-9_]))"
_ROOT_TARGET_RE = re.compile(rf"^(?:/{_ROOT_CHAR}*|(?:https?|\$scheme)://{_ROOT_CHAR}+)\Z")
MAX_ROOT_TARGET = 2048
REDIRECT_CODES = (301, 302, 303, 307, 308)
_CERT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
# The local part starts with a letter or digit (certbot reads "--email -x@a.com" as a missing value
# and an option, so a leading "-" meant that certificate never came); the domain is RFC 1123 labels,
# at least two of them, the last not all digits.
_EMAIL_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_EMAIL_RE = re.compile(
    rf"^[A-Za-z0-9][A-Za-z0-9._%+-]{{0,63}}@(?=[A-Za-z0-9.-]{{1,253}}\Z)(?:{_EMAIL_LABEL}\.)+"
    rf"(?![0-9]+\Z){_EMAIL_LABEL}\Z"
)
EMAIL_RULE = (
    "must be a plain email address: the part before @ starts with a letter or digit and uses only letters, "
    "digits and . _ % + -; the domain is letters, digits and hyphens separated by dots"
)

# Companion-specific, per path: what nginx-proxy users most often put in vhost.d, as typed values.
MAX_BODY_SIZE, READ_TIMEOUT, SEND_TIMEOUT, CONNECT_TIMEOUT, BUFFERING, ALLOW_FROM = TUNING_VARIABLES = (
    "PROXY_MAX_BODY_SIZE",
    "PROXY_READ_TIMEOUT",
    "PROXY_SEND_TIMEOUT",
    "PROXY_CONNECT_TIMEOUT",
    "PROXY_BUFFERING",
    "PROXY_ALLOW_FROM",
)
_SIZE_RE = re.compile(r"^([0-9]{1,9})([kmg]?)\Z")
_DURATION_RE = re.compile(r"^([0-9]{1,9})(ms|s|m|h)?\Z")
_DURATION_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
MAX_SECONDS = 86_400  # read/send: a day; an answer slower than that is a hung backend
MAX_CONNECT_SECONDS = 75  # nginx's own note: a connect timeout usually cannot exceed 75 seconds
MAX_ALLOW = 100
VARIABLES = (
    "VIRTUAL_HOST",
    "VIRTUAL_PORT",
    "VIRTUAL_PROTO",
    "VIRTUAL_PATH",
    "VIRTUAL_DEST",
    "HTTPS_METHOD",
    "HSTS",
    "CERT_NAME",
    "LETSENCRYPT_HOST",
    "LETSENCRYPT_EMAIL",
    "ACME_HOST",
    "ACME_EMAIL",
    "ACME_CA_URI",
    "LETSENCRYPT_TEST",
    "ACME_TEST",
    "VIRTUAL_HOST_MULTIPORTS",
    "NETWORK_ACCESS",
    "VIRTUAL_KEEPALIVE",
    *TUNING_VARIABLES,
    "ACME_CHALLENGE",
)
# acme-companion's current names beside the legacy LETSENCRYPT_* ones: either may be set, or both alike.
ALIASES = (("ACME_HOST", "LETSENCRYPT_HOST"), ("ACME_EMAIL", "LETSENCRYPT_EMAIL"), ("ACME_TEST", "LETSENCRYPT_TEST"))
# An ACME directory URL: https, a host (name, IPv4 or [IPv6]) with an optional port, a plain path; nothing
# certbot or a log line could read as anything else.
_CA_URL_RE = re.compile(
    r"^https://(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~/%-]*)?\Z"
)
MULTIPORTS = "VIRTUAL_HOST_MULTIPORTS"
# nginx-proxy lets VIRTUAL_HOST_MULTIPORTS override these; here a container sets one or the other.
MULTIPORTS_EXCLUDES = ("VIRTUAL_HOST", "VIRTUAL_PORT", "VIRTUAL_PATH", "VIRTUAL_DEST")
DEFAULT_HSTS = "max-age=31536000"
# Every server block includes `location ^~ /.well-known/acme-challenge/`; a VIRTUAL_PATH there would be
# a duplicate location (nginx -t fails for every site) or could never be reached.
ACME_PATH = "/.well-known/acme-challenge/"
E = TypeVar("E", bound="Enum")


class Proto(StrEnum):
    HTTP = "http"
    HTTPS = "https"


class HttpsMethod(StrEnum):
    REDIRECT = "redirect"
    NOREDIRECT = "noredirect"
    NOHTTP = "nohttp"
    NOHTTPS = "nohttps"


class NetworkAccess(StrEnum):
    EXTERNAL = "external"
    INTERNAL = "internal"  # only private source addresses reach the container's locations


class Keepalive(StrEnum):
    ON = "on"  # idle connections to the container are kept open and reused
    OFF = "off"  # one connection per request, `Connection: close`: for apps that mishandle reuse


class Buffering(StrEnum):
    ON = "on"
    OFF = "off"


@dataclass(frozen=True)
class Tuning:
    """Per-path proxy settings from PROXY_* variables, each already in nginx's own syntax; None/() when unset."""

    max_body_size: str | None = None  # client_max_body_size: "10m", "0" for no limit
    read_timeout: str | None = None  # "60s", "1500ms"
    send_timeout: str | None = None
    connect_timeout: str | None = None
    buffering: bool | None = None
    allow_from: tuple[str, ...] = ()  # normalised networks ("10.0.0.0/8", "2001:db8::/32"); others get 403

    @functools.cached_property
    def directives(self) -> tuple[str, ...]:
        """The location directives these values make (the allow-list is rendered apart: it goes before deny)."""
        named = (
            ("client_max_body_size", self.max_body_size),
            ("proxy_connect_timeout", self.connect_timeout),
            ("proxy_read_timeout", self.read_timeout),
            ("proxy_send_timeout", self.send_timeout),
            ("proxy_buffering", None if self.buffering is None else "on" if self.buffering else "off"),
        )
        return tuple(f"{name} {value};" for name, value in named if value is not None)


class Challenge(StrEnum):
    """How the CA checks that a name is ours: a file nginx serves, or a TXT record a certbot DNS plugin sets."""

    HTTP01 = "http-01"
    DNS01 = "dns-01"


WILDCARD_LINEAGE_PREFIX = "_wildcard_."  # `*.example.com` is kept as `_wildcard_.example.com`: no host is named so


class InvalidValue(ValueError):
    """A label or environment value that does not fit its type."""


@dataclass(frozen=True)
class ContainerInfo:
    """What the Docker edge tells us about one running container, as plain data."""

    id: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    networks: Mapping[str, str] = field(default_factory=dict)  # network name -> IPv4 address
    gateways: Mapping[str, str] = field(default_factory=dict)  # network name -> its gateway, the host's address there
    network_mode: str = ""  # HostConfig.NetworkMode: "host" shares the host's network stack (no IP of its own)
    exposed_ports: tuple[str, ...] = ()  # ExposedPorts keys as Docker reports them: "80/tcp", "81", "53/udp"
    health: str = ""
    image_labels: frozenset[str] = frozenset()  # label keys whose value the image set, not the container
    image_env: frozenset[str] = frozenset()  # environment names whose value the image set
    mounts: tuple[tuple[str, str], ...] = ()  # (source on the Docker host, destination) per mount
    service: str = ""  # the Swarm service a task belongs to: who owns the task's hosts, across its tasks


@dataclass(frozen=True)
class Policy:
    """The operator's rules every container is parsed under."""

    default_email: str = ""
    allowed_domains: tuple[str, ...] = ()
    image_trust: trust.ImageTrust = trust.ImageTrust.ROUTING
    owners: tuple[trust.OwnerRule, ...] = ()
    acme_server: str = ""  # the companion's own CA: what a container gets when it names none
    staging_server: str = ""  # what LETSENCRYPT_TEST/ACME_TEST=true selects
    # CAs a container may name in ACME_CA_URI besides the two above: the order carries the operator's
    # DEFAULT_EMAIL, which a container must not be able to send to a server of its choosing.
    allowed_servers: tuple[str, ...] = ()
    default_challenge: Challenge = Challenge.HTTP01  # the companion's ACME_CHALLENGE
    dns_plugin: str = ""  # ACME_DNS_PLUGIN: DNS-01 (and so wildcards) only with one

    def may_use(self, server: str) -> bool:
        return server in (self.acme_server, self.staging_server, *self.allowed_servers)


@dataclass(frozen=True)
class Backend:
    """One container's answer to a host: where to send the traffic and how."""

    container: str
    host: str
    path: str
    address: str
    port: int
    proto: Proto
    dest: str


@dataclass(frozen=True)
class CertRequest:
    """A certificate the container asks for (ACME_HOST/LETSENCRYPT_HOST), from which CA ('' = the companion's)."""

    name: str
    domains: tuple[str, ...]
    email: str
    server: str = ""
    challenge: Challenge = Challenge.HTTP01


@dataclass(frozen=True)
class Site:
    """Everything one container asks of the proxy, fully validated."""

    container: str
    hosts: tuple[str, ...]
    port: int
    proto: Proto
    path: str
    dest: str
    https_method: HttpsMethod
    hsts: str
    cert_name: str
    cert: CertRequest | None
    network_access: NetworkAccess = NetworkAccess.EXTERNAL
    keepalive: bool = True  # VIRTUAL_KEEPALIVE
    tuning: Tuning = Tuning()


@dataclass(frozen=True)
class Rejection:
    """Why a container (or one of its values) was left out; `message` is the one log line."""

    container: str
    variable: str
    value: str
    reason: str

    @property
    def message(self) -> str:
        shown = self.value if len(self.value) <= 80 else self.value[:80] + "..."
        return (
            f"container {self.container}: {self.variable}={shown.encode('unicode_escape').decode('ascii')!r} "
            f"rejected: {self.reason}"
        )


def parse_hostname(value: str, *, wildcard: bool = True) -> str:
    """Return the canonical (lowercase, punycode) form of a hostname or raise InvalidValue."""
    raw = value.strip()
    if not raw:
        raise InvalidValue("empty hostname")
    if raw.startswith("~"):
        raise InvalidValue("regular-expression hosts are not supported (no restricted syntax proven safe yet)")
    if raw.endswith(".*"):
        raise InvalidValue("suffix wildcards (name.*) are not supported (no restricted syntax proven safe yet)")
    prefix = ""
    if raw.startswith("*."):
        if not wildcard:
            raise InvalidValue(WILDCARD_NEEDS_DNS)
        prefix, raw = "*.", raw[2:]
    raw = raw.rstrip(".") if raw.endswith(".") and not raw.endswith("..") else raw
    try:
        # IDNA 2008 with UTS 46 mapping, as browsers resolve names (Python's own codec is IDNA 2003).
        ascii_name = raw if raw.isascii() else idna.encode(raw, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise InvalidValue(f"not a valid internationalised hostname ({exc})") from None
    name = ascii_name.lower()
    if len(prefix + name) > MAX_HOSTNAME:
        raise InvalidValue(f"hostname longer than {MAX_HOSTNAME} characters")
    labels = name.split(".")
    for label in labels:
        if len(label) > MAX_LABEL:
            raise InvalidValue(f"hostname label longer than {MAX_LABEL} characters")
        if not _LABEL_RE.match(label):
            raise InvalidValue("hostname must be letters, digits and hyphens separated by dots (RFC 1123)")
    if labels[-1].isdigit():
        raise InvalidValue("IP addresses are not hostnames")
    return prefix + name


WILDCARD_NEEDS_DNS = (
    "a wildcard certificate can only be validated over DNS-01: set ACME_DNS_PLUGIN (and ACME_DNS_CREDENTIALS) "
    "on the companion, then ACME_CHALLENGE=dns-01 here or on the companion"
)


def parse_host_list(value: str, *, wildcard: bool = True) -> tuple[str, ...]:
    """Parse a comma list of at most MAX_HOSTS hostnames, dropping duplicates but keeping order."""
    parts = [part for part in value.split(",") if part.strip()]
    if len(parts) > MAX_HOSTS:
        raise InvalidValue(f"more than {MAX_HOSTS} host names")
    hosts = tuple(dict.fromkeys(parse_hostname(part, wildcard=wildcard) for part in parts))
    if not hosts:
        raise InvalidValue("no hostname given")
    return hosts


def parse_port(value: str) -> int:
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        raise InvalidValue("port must be a number from 1 to 65535")
    port = int(text)
    if not 1 <= port <= 65535:
        raise InvalidValue("port must be a number from 1 to 65535")
    return port


def parse_path(value: str) -> str:
    text = value.strip()
    if len(text) > MAX_PATH:
        raise InvalidValue(f"path longer than {MAX_PATH} characters")
    if not _PATH_RE.match(text):
        raise InvalidValue("path must start with / and use only letters, digits, . _ ~ - / and %XX escapes")
    if "/../" in text + "/" or "/./" in text + "/" or "//" in text:
        raise InvalidValue("path must not contain empty, . or .. segments")
    return text


@dataclass(frozen=True)
class RootAnswer:
    """What `/` answers on a host no container claims `/` for: `return <code> [<target>];` (DEFAULT_ROOT)."""

    code: int
    target: str = ""

    def __str__(self) -> str:
        return f"{self.code} {self.target}" if self.target else str(self.code)


def parse_default_root(value: str) -> RootAnswer | None:
    """DEFAULT_ROOT: a status code, a redirect code and target, or None for `none` (no `location /` at all).

    nginx-proxy passes the text to `return` as it is; here only what `return` takes without quoting
    passes: a target is a path or an http(s) URL of unreserved characters, `%XX` and `?&=+,:@`, with
    `$scheme`, `$host` and `$request_uri` as the only variables (`$uri` is decoded: `%0d%0a` would split
    the Location header).
    """
    text = value.strip()
    if text.lower() == "none":
        return None
    code, _, target = text.partition(" ")
    target = target.strip()
    if not re.fullmatch(r"[1-5][0-9]{2}", code):
        raise InvalidValue("must be none, a status code from 100 to 599, or a redirect code and target")
    if not target:
        return RootAnswer(int(code))
    if int(code) not in REDIRECT_CODES:
        raise InvalidValue(f"a target needs a redirect code ({', '.join(map(str, REDIRECT_CODES))})")
    if len(target) > MAX_ROOT_TARGET or not _ROOT_TARGET_RE.match(target):
        raise InvalidValue(
            "target must be a path or http(s) URL of letters, digits, . _ ~ - / ? & = + , : @ and %XX, "
            "with only $scheme, $host and $request_uri as variables"
        )
    return RootAnswer(int(code), target)


def parse_enum(value: str, enum: type[E]) -> E:
    text = value.strip().lower()
    try:
        return enum(text)
    except ValueError:
        choices = ", ".join(str(member.value) for member in enum)
        raise InvalidValue(f"must be one of {choices}") from None


def parse_hsts(value: str) -> str:
    """HSTS header value, or "" when switched off."""
    text = value.strip()
    if text.lower() == "off":
        return ""
    if not _HSTS_RE.match(text):
        raise InvalidValue('must be "off" or "max-age=<seconds>[; includeSubDomains][; preload]"')
    return text


def parse_cert_name(value: str) -> str:
    text = value.strip()
    if not _CERT_NAME_RE.match(text) or ".." in text:
        raise InvalidValue("certificate name must be letters, digits, . _ - (at most 128)")
    return text


def is_email(text: str) -> bool:
    """True for an email address certbot takes as the value of --email, exactly as given."""
    return bool(_EMAIL_RE.match(text)) and ".." not in text


def parse_email(value: str) -> str:
    text = value.strip()
    if text.startswith("-"):
        raise InvalidValue("must not start with - (certbot would read it as an option, so no certificate)")
    if not is_email(text):
        raise InvalidValue(EMAIL_RULE)
    return text


def parse_ca_url(value: str) -> str:
    """An ACME directory URL, exactly as given (certbot keeps one account folder per URL)."""
    text = value.strip()
    if not _CA_URL_RE.match(text) or ".." in text:
        raise InvalidValue(
            "must be an https:// ACME directory URL (a host, an optional port, a path of letters, digits, . _ ~ - / %)"
        )
    return text


def parse_size(value: str) -> str:
    """An nginx size (client_max_body_size): digits with an optional k, m or g; 0 means no limit."""
    text = value.strip().lower()
    found = _SIZE_RE.match(text)
    if not found:
        raise InvalidValue(
            "must be a size in nginx syntax: a whole number with an optional k, m or g (10m), or 0 for no limit"
        )
    return f"{int(found.group(1))}{found.group(2)}"


def parse_duration(value: str, most: int = MAX_SECONDS) -> str:
    """An nginx time for proxy timeouts: a whole number with ms, s (the default), m or h; 1 ms to `most` seconds."""
    text = value.strip().lower()
    found = _DURATION_RE.match(text)
    rule = f"must be a duration from 1ms to {most}s: a whole number with ms, s, m or h (60s, 5m)"
    if not found:
        raise InvalidValue(rule)
    ms = int(found.group(1)) * _DURATION_MS[found.group(2) or "s"]
    if not 1 <= ms <= most * 1000:
        raise InvalidValue(rule)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def parse_allow_list(value: str) -> tuple[str, ...]:
    """A comma list of IP addresses and CIDR networks (IPv4 and IPv6), normalised, duplicates dropped."""
    parts = [part.strip() for part in value.split(",") if part.strip()]
    if not parts:
        raise InvalidValue("no address given")
    if len(parts) > MAX_ALLOW:
        raise InvalidValue(f"more than {MAX_ALLOW} addresses")
    networks = []
    for part in parts:
        try:
            network = ipaddress.ip_network(part)
        except ValueError:
            try:
                loose = ipaddress.ip_network(part, strict=False)
            except ValueError:
                raise InvalidValue(
                    f"{part!r} is not an IP address or CIDR network (10.0.0.0/8, 2001:db8::/32)"
                ) from None
            raise InvalidValue(f"{part!r} has host bits set; the network is {loose}") from None
        networks.append(str(network))
    return tuple(dict.fromkeys(networks))


def parse_tuning(get: Callable[[str], str]) -> Tuning:
    """The PROXY_* variables of one container, each parsed by its own type (`get` records which is read)."""
    return Tuning(
        max_body_size=parse_size(get(MAX_BODY_SIZE)) if get(MAX_BODY_SIZE) else None,
        read_timeout=parse_duration(get(READ_TIMEOUT)) if get(READ_TIMEOUT) else None,
        send_timeout=parse_duration(get(SEND_TIMEOUT)) if get(SEND_TIMEOUT) else None,
        connect_timeout=parse_duration(get(CONNECT_TIMEOUT), MAX_CONNECT_SECONDS) if get(CONNECT_TIMEOUT) else None,
        buffering=parse_enum(get(BUFFERING), Buffering) is Buffering.ON if get(BUFFERING) else None,
        allow_from=parse_allow_list(get(ALLOW_FROM)) if get(ALLOW_FROM) else (),
    )


def parse_bool(value: str) -> bool:
    text = value.strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no", ""):
        raise InvalidValue("must be true or false")
    return text in ("true", "1", "yes")


def domain_allowed(host: str, patterns: Sequence[str]) -> bool:
    """True when no allow-list is set or the host matches one of its glob patterns."""
    return not patterns or any(fnmatch.fnmatchcase(host, pattern) for pattern in patterns)


def settings_of(info: ContainerInfo, image_trust: trust.ImageTrust = trust.ImageTrust.ROUTING) -> dict[str, str]:
    """The companion's variables for one container that count: environment first, labels win; a value
    the image set counts only where `image_trust` lets it."""
    env, labels = info.env, info.labels
    if info.image_env:
        env = {k: v for k, v in env.items() if k not in info.image_env or trust.image_may_set(k, image_trust)}
    if info.image_labels:
        labels = {k: v for k, v in labels.items() if k not in info.image_labels or trust.image_may_set(k, image_trust)}
    values = {name: env[name] for name in VARIABLES if name in env}
    values.update({name: labels[name] for name in VARIABLES if name in labels})
    return values


def ignored_from_image(info: ContainerInfo, image_trust: trust.ImageTrust) -> tuple[str, ...]:
    """Variables the image sets that do not count and that the container does not set itself."""
    if not info.image_labels and not info.image_env:
        return ()
    counted = settings_of(info, image_trust)
    inherited = {name for name in VARIABLES if name in info.image_labels or name in info.image_env}
    return tuple(sorted(name for name in inherited if name not in counted))


DEFAULT_POLICY = Policy()


def parse_site(info: ContainerInfo, policy: Policy = DEFAULT_POLICY) -> Site | Rejection | None:
    """Turn one container into a validated Site, a Rejection, or None when it asks for nothing."""
    values = settings_of(info, policy.image_trust)
    allowed_domains = policy.allowed_domains
    asked = [name for name in ("LETSENCRYPT_HOST", "ACME_HOST") if name in values]
    if "VIRTUAL_HOST" not in values and not asked:
        return None
    if "VIRTUAL_HOST" not in values:
        return Rejection(info.name, asked[0], values[asked[0]], "needs VIRTUAL_HOST as well")
    current = "VIRTUAL_HOST"

    def get(name: str) -> str:
        nonlocal current
        current = name
        return values.get(name, "")

    try:
        for name, value in values.items():
            if len(value) * 4 > MAX_VALUE_BYTES and len(value.encode("utf-8", "surrogateescape")) > MAX_VALUE_BYTES:
                current = name
                raise InvalidValue(f"longer than {MAX_VALUE_BYTES} bytes")
        hosts = parse_host_list(get("VIRTUAL_HOST"))
        _check_allowed(hosts, allowed_domains)
        _check_owner(info, hosts, policy.owners)
        if get("VIRTUAL_PORT"):
            port = parse_port(get("VIRTUAL_PORT"))
        else:
            current = "EXPOSE"
            port = _default_port(info)
        proto = parse_enum(get("VIRTUAL_PROTO") or "http", Proto)
        path = parse_path(get("VIRTUAL_PATH") or "/")
        if path.startswith(ACME_PATH):
            raise InvalidValue(f"{ACME_PATH} is reserved for ACME challenges")
        dest = parse_path(get("VIRTUAL_DEST")) if get("VIRTUAL_DEST") else ""
        method = parse_enum(get("HTTPS_METHOD") or "redirect", HttpsMethod)
        hsts = parse_hsts(get("HSTS") or DEFAULT_HSTS)
        access = parse_enum(get("NETWORK_ACCESS") or "external", NetworkAccess)
        keepalive = not get("VIRTUAL_KEEPALIVE") or parse_enum(get("VIRTUAL_KEEPALIVE"), Keepalive) is Keepalive.ON
        tuning = parse_tuning(get)
        cert_name = parse_cert_name(get("CERT_NAME")) if get("CERT_NAME") else ""
        if cert_name:
            # A certificate name is a name too: it may not point outside what the operator allows.
            _check_allowed((cert_name.lower(),), allowed_domains)
            _check_owner(info, (cert_name.lower(),), policy.owners)
        for new, legacy in ALIASES:
            current = new
            _check_same(values, new, legacy)
        host_var = "ACME_HOST" if get("ACME_HOST") else "LETSENCRYPT_HOST"
        cert = None
        if get(host_var):
            challenge = _challenge(get, policy, get(host_var))
            current = host_var
            domains = parse_host_list(get(host_var), wildcard=challenge is Challenge.DNS01)
            # A name outside the allow-list is refused as such (not just as "not a VIRTUAL_HOST name"),
            # so the message says why a certificate will never be ordered for it.
            _check_allowed(domains, allowed_domains)
            _check_owner(info, domains, policy.owners)
            outside = [d for d in domains if d not in hosts and not d.startswith("*.")]
            if outside:
                raise InvalidValue(f"{', '.join(outside)} not among the VIRTUAL_HOST names")
            idle = [d for d in domains if not any(covers((d,), host) for host in hosts)]
            if idle:
                raise InvalidValue(f"{', '.join(idle)} covers none of the VIRTUAL_HOST names")
            email_var = "ACME_EMAIL" if get("ACME_EMAIL") else "LETSENCRYPT_EMAIL"
            email = parse_email(get(email_var)) if get(email_var) else policy.default_email
            cert = CertRequest(
                name=cert_name or lineage_of(domains[0]),
                domains=domains,
                email=email,
                server=_server(get, policy),
                challenge=challenge,
            )
    except InvalidValue as exc:
        shown = ",".join(info.exposed_ports) if current == "EXPOSE" else values.get(current, "")
        return Rejection(info.name, current, shown, str(exc))
    return Site(
        container=info.service or info.name,
        hosts=hosts,
        port=port,
        proto=proto,
        path=path,
        dest=dest,
        https_method=method,
        hsts=hsts,
        cert_name=cert_name,
        cert=cert,
        network_access=access,
        keepalive=keepalive,
        tuning=tuning,
    )


def lineage_of(name: str) -> str:
    """The lineage a certificate is kept under when no CERT_NAME names it: its first name, a wildcard spelled
    without the `*` (a file name every tool handles)."""
    return WILDCARD_LINEAGE_PREFIX + name[2:] if name.startswith("*.") else name


def covers(names: Sequence[str], host: str) -> bool:
    """True when a certificate for `names` is valid for `host` (exactly, or by a one-label wildcard)."""
    if host in names:
        return True
    return not host.startswith("*.") and "." in host and "*." + host.split(".", 1)[1] in names


def _challenge(get: Callable[[str], str], policy: Policy, names: str) -> Challenge:
    """The container's ACME_CHALLENGE, else the companion's; a wildcard among `names` alone picks DNS-01 when
    the companion can do it. DNS-01 without a DNS plugin on the companion is refused: nothing could answer it."""
    if get("ACME_CHALLENGE"):
        challenge = parse_enum(get("ACME_CHALLENGE"), Challenge)
    elif policy.dns_plugin and any(part.strip().startswith("*.") for part in names.split(",")):
        challenge = Challenge.DNS01
    else:
        challenge = policy.default_challenge
    if challenge is Challenge.DNS01 and not policy.dns_plugin:
        raise InvalidValue(
            "DNS-01 needs a certbot DNS plugin on the companion: set ACME_DNS_PLUGIN (and ACME_DNS_CREDENTIALS)"
        )
    return challenge


def _check_same(values: Mapping[str, str], new: str, legacy: str) -> None:
    """Both spellings of one variable must agree: silently preferring one would drop the other."""
    if new in values and legacy in values and values[new].strip() != values[legacy].strip():
        other = values[legacy].strip()[:80].encode("unicode_escape").decode("ascii")
        raise InvalidValue(
            f"differs from {legacy}={other!r}; keep {new} (acme-companion's current name) "
            f"and remove {legacy}, or give both the same value"
        )


def _server(get: Callable[[str], str], policy: Policy) -> str:
    """The CA this container's certificate comes from: ACME_CA_URI, else staging when asked, else the
    companion's own; a URL the operator did not allow is refused, and so is naming a CA and staging at once."""
    test_var = "ACME_TEST" if get("ACME_TEST") else "LETSENCRYPT_TEST"
    staging = parse_bool(get(test_var))
    if not get("ACME_CA_URI"):
        return policy.staging_server if staging else policy.acme_server
    server = parse_ca_url(get("ACME_CA_URI"))
    if staging and server != policy.staging_server:
        raise InvalidValue(f"names a CA while {test_var}=true asks for staging ({policy.staging_server}); set only one")
    if not policy.may_use(server):
        raise InvalidValue(
            "not a CA this companion may use (its ACME_CA_URI, ACME_STAGING_URI or ACME_CA_URIS_ALLOWED); "
            "a container cannot send the account email to a server of its own choosing"
        )
    return server


def _check_allowed(hosts: Sequence[str], allowed_domains: Sequence[str]) -> None:
    for host in hosts:
        if not domain_allowed(host, allowed_domains):
            raise InvalidValue(f"{host} is not in the allowed domains ({', '.join(allowed_domains)})")


def _check_owner(info: ContainerInfo, names: Sequence[str], rules: Sequence[trust.OwnerRule]) -> None:
    if not rules:
        return
    for name in names:
        rule = trust.owner_of(name, rules)
        if rule is not None and not rule.satisfied_by(info):
            raise InvalidValue(f"{name} belongs to {rule.owner} (DOMAIN_OWNERS)")


def _default_port(info: ContainerInfo) -> int:
    """The single exposed TCP port (validated like VIRTUAL_PORT: it comes from the image), else 80, as
    nginx-proxy does. A bare key ("81", as compose sends `expose:`) is TCP, as the Engine treats it."""
    tcp = [spec for spec in info.exposed_ports if spec.partition("/")[2] in ("", "tcp")]
    if len(tcp) != 1:
        return 80
    return parse_port(tcp[0].partition("/")[0])
