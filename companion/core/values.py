"""Typed values: one parser per kind of value a label may carry (hostname, port, path, duration, e-mail, CA URL,
...). Each returns the typed value or raises InvalidValue with one precise reason; nothing else reaches a template."""

from __future__ import annotations

import fnmatch
import functools
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import TypeVar

import idna

MAX_HOSTNAME = 253
MAX_HOSTS = 100

MAX_LABEL = 63

MAX_PATH = 512

# Patterns end in \Z, not $: "$" also matches before a final "\n", which let "a\n.com" through.
_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")

# RFC 3986 unreserved characters plus "/" and "%XX" escapes: nothing nginx treats as syntax.
_PATH_RE = re.compile(r"^/(?:[A-Za-z0-9._~/-]|%[0-9A-Fa-f]{2})*\Z")

_HSTS_RE = re.compile(r"^max-age=[0-9]{1,9}(?:; ?includeSubDomains)?(?:; ?preload)?\Z")

# A DEFAULT_ROOT target: nothing nginx reads as syntax, and a `$` only as one of three whole variables.
_ROOT_CHAR = r"(?:[A-Za-z0-9._~/?&=+,:@-]|%[0-9A-Fa-f]{2}|\$(?:scheme|host|request_uri)(?![A-Za-z0-9_]))"

_ROOT_TARGET_RE = re.compile(rf"^(?:/{_ROOT_CHAR}*|(?:https?|\$scheme)://{_ROOT_CHAR}+)\Z")

MAX_ROOT_TARGET = 2048

# The codes nginx's `return CODE URL` sends as a redirect (any other code with a URL would send the URL as
# the body): what DEFAULT_ROOT may pair with a target. Not NON_GET_REDIRECT's set (settings/config.py).
RETURN_REDIRECT_CODES = (301, 302, 303, 307, 308)

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

_SIZE_RE = re.compile(r"^([0-9]{1,9})([kmg]?)\Z")

_DURATION_RE = re.compile(r"^([0-9]{1,9})(ms|s|m|h)?\Z")

_DURATION_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}

MAX_SECONDS = 86_400  # read/send: a day; an answer slower than that is a hung backend

MAX_CONNECT_SECONDS = 75  # nginx's own note: a connect timeout usually cannot exceed 75 seconds

MAX_ALLOW = 100

# An ACME directory URL: https, a host (name, IPv4 or [IPv6]) with an optional port, a plain path; nothing
# certbot or a log line could read as anything else.
_CA_URL_RE = re.compile(
    r"^https://(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?(?:/[A-Za-z0-9._~/%-]*)?\Z"
)

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


class InvalidValue(ValueError):
    """A label or environment value that does not fit its type."""


def parse_hostname(value: str, *, wildcard: bool = True) -> str:
    """Return the canonical (lowercase, punycode) form of a hostname or raise InvalidValue."""
    prefix, raw = _split_wildcard(value.strip(), wildcard)
    raw = raw.rstrip(".") if raw.endswith(".") and not raw.endswith("..") else raw
    name = _ascii(raw).lower()
    if len(prefix + name) > MAX_HOSTNAME:
        raise InvalidValue(f"hostname longer than {MAX_HOSTNAME} characters")
    _check_labels(name.split("."))
    return prefix + name


def _split_wildcard(raw: str, wildcard: bool) -> tuple[str, str]:
    """("*.", the rest) for a leading wildcard (when allowed), else ("", raw); the forms never supported refused."""
    if not raw:
        raise InvalidValue("empty hostname")
    if raw.startswith("~"):
        raise InvalidValue("regular-expression hosts are not supported (no restricted syntax proven safe yet)")
    if raw.endswith(".*"):
        raise InvalidValue("suffix wildcards (name.*) are not supported (no restricted syntax proven safe yet)")
    if not raw.startswith("*."):
        return "", raw
    if not wildcard:
        raise InvalidValue(WILDCARD_NEEDS_DNS)
    return "*.", raw[2:]


def _ascii(raw: str) -> str:
    """IDNA 2008 with UTS 46 mapping, as browsers resolve names (Python's own codec is IDNA 2003)."""
    try:
        return raw if raw.isascii() else idna.encode(raw, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise InvalidValue(f"not a valid internationalised hostname ({exc})") from None


def _check_labels(labels: list[str]) -> None:
    for label in labels:
        if len(label) > MAX_LABEL:
            raise InvalidValue(f"hostname label longer than {MAX_LABEL} characters")
        if not _LABEL_RE.match(label):
            raise InvalidValue("hostname must be letters, digits and hyphens separated by dots (RFC 1123)")
    if labels[-1].isdigit():
        raise InvalidValue("IP addresses are not hostnames")


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
    if int(code) not in RETURN_REDIRECT_CODES:
        raise InvalidValue(f"a target needs a redirect code ({', '.join(map(str, RETURN_REDIRECT_CODES))})")
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


# An ACME profile name (draft-aaron-acme-profiles: the keys of the directory's meta.profiles), as certbot's
# --preferred-profile takes it: Let's Encrypt's are classic, tlsserver and shortlived.
_PROFILE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")
# An EAB key id, as CAs hand them out (ZeroSSL, Google: letters, digits, - and _); it goes on certbot's
# command line and into the accounts file's keys, so no space and no leading -.
_EAB_KID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._~+/=-]{0,255}\Z")
# An EAB HMAC key: base64url (RFC 8555 section 7.3.4), padded or not.
_EAB_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{16,1024}={0,2}\Z")


def parse_profile(value: str) -> str:
    """An ACME profile name, exactly as the CA spells it (profile names are case-sensitive)."""
    text = value.strip()
    if not _PROFILE_RE.match(text):
        raise InvalidValue("must be an ACME profile name: letters, digits, . _ - (at most 64, not starting with . _ -)")
    return text


def parse_eab_kid(value: str) -> str:
    """An external account binding key id; "" for none."""
    text = value.strip()
    if text and not _EAB_KID_RE.match(text):
        raise InvalidValue("must be the CA's key id: letters, digits, . _ ~ + / = - (at most 256, no spaces)")
    return text


def parse_eab_hmac_key(value: str) -> str:
    """An external account binding HMAC key (base64url); "" for none. The message never quotes the key."""
    text = value.strip()
    if text and not _EAB_KEY_RE.match(text):
        raise InvalidValue("must be the CA's HMAC key in base64url (letters, digits, - and _; 16 to 1024 characters)")
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


def parse_bool(value: str) -> bool:
    text = value.strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no", ""):
        raise InvalidValue("must be true or false")
    return text in ("true", "1", "yes")


def domain_allowed(host: str, patterns: Sequence[str]) -> bool:
    """True when no allow-list is set or the host matches one of its glob patterns."""
    return not patterns or any(fnmatch.fnmatchcase(host, pattern) for pattern in patterns)
