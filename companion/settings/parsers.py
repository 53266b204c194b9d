"""The text a setting may take, one parser per declared type (core/options names the type of each
setting), so a flag and its environment variable always read alike."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from companion.core.options import Resolvers, SslPolicy
from companion.core.trust import ImageTrust, OwnerRule, parse_owner_rules
from companion.core.values import (
    Challenge,
    InvalidValue,
    parse_ca_url,
    parse_default_root,
    parse_eab_hmac_key,
    parse_eab_kid,
    parse_enum,
    parse_hostname,
    parse_profile,
)
from companion.settings.notify import BadNotifyUrl, parse_notify_urls

TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})
MAX_RESOLVERS = 16


class Refused(ValueError):
    """A value refused with a message of its own, shown after the setting's name."""


def parse_int(raw: str) -> int:
    """Digits only (at most 9): no sign, no underscores, no other base."""
    if not re.fullmatch(r"[0-9]{1,9}", raw.strip()):
        raise ValueError(raw)
    return int(raw)


def parse_bool(raw: str) -> bool:
    """true/false, yes/no, on/off, 1/0 in any case; empty is false."""
    word = raw.strip().lower()
    if word not in TRUE | _FALSE:
        raise ValueError(raw)
    return word in TRUE


def parse_patterns(raw: str) -> tuple[str, ...]:
    """A comma list of name patterns, lower case, empty entries dropped."""
    return tuple(p.strip().lower() for p in raw.split(",") if p.strip())


def parse_ca_urls(raw: str) -> tuple[str, ...]:
    """A comma list of ACME directory URLs, each kept as written."""
    return tuple(parse_ca_url(p) for p in raw.split(",") if p.strip())


def parse_default_host(raw: str) -> str:
    """One host name, or empty for none."""
    return parse_hostname(raw) if raw.strip() else ""


def parse_hmac_key(raw: str) -> str:
    """ACME_EAB_HMAC_KEY: refused with the rule alone, never the text (it is a secret)."""
    try:
        return parse_eab_hmac_key(raw)
    except InvalidValue as exc:
        raise Refused(str(exc)) from None


def parse_image_trust(raw: str) -> ImageTrust:
    """TRUST_IMAGE_LABELS: routing, all or none, in any case."""
    try:
        return ImageTrust(raw.strip().lower())
    except ValueError:
        raise Refused(f"{raw!r} must be one of routing, all, none") from None


def parse_owners(raw: str) -> tuple[OwnerRule, ...]:
    """DOMAIN_OWNERS: the rule's own message names the entry, so it is shown as it is."""
    try:
        return parse_owner_rules(raw)
    except InvalidValue:
        raise
    except ValueError as exc:
        raise Refused(str(exc)) from None


def parse_notify(raw: str) -> tuple[str, ...]:
    """NOTIFY_URLS: the message names an entry by position and scheme, never its secrets."""
    try:
        return parse_notify_urls(raw)
    except BadNotifyUrl as exc:
        raise Refused(str(exc)) from None


def parse_ssl_policy(raw: str) -> SslPolicy:
    """nginx-proxy's spelling, in any case; its AWS-* policies are refused by name rather than guessed at."""
    for policy in SslPolicy:
        if raw.strip().lower() == policy.value.lower():
            return policy
    supported = ", ".join(p.value for p in SslPolicy)
    shown = raw.encode("unicode_escape").decode("ascii")
    if raw.strip().upper().startswith("AWS-"):
        raise Refused(f"{shown!r} is an AWS policy of nginx-proxy, not supported; use one of {supported}")
    raise Refused(f"{shown!r} must be one of {supported}")


def _resolver(word: str) -> str:
    """One resolver address: IP, IP:port or [IPv6]:port, written as nginx takes it."""
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
    return f"{shown}:{port}" if port else shown


def parse_resolvers(text: str) -> Resolvers:
    """RESOLVERS: IP addresses for nginx's `resolver`, each with an optional port; never a name (nginx would
    need a resolver to find its resolver)."""
    found = [_resolver(word) for word in text.replace(",", " ").split()]
    if len(found) > MAX_RESOLVERS:
        raise InvalidValue(f"more than {MAX_RESOLVERS} resolvers")
    return tuple(dict.fromkeys(found))


# Every type core/options declares, and how its text is read; a ValueError means "not a valid <type>".
PARSERS: dict[str, Callable[[str], object]] = {
    "str": str,
    "int": parse_int,
    "float": float,
    "bool": parse_bool,
    "tuple[str, ...]": parse_patterns,
    "CaUrls": parse_ca_urls,
    "HostName": parse_default_host,
    "ImageTrust": parse_image_trust,
    "tuple[OwnerRule, ...]": parse_owners,
    "Challenge": lambda raw: parse_enum(raw, Challenge),
    "RootAnswer | None": parse_default_root,
    "SslPolicy": parse_ssl_policy,
    "NotifyUrls": parse_notify,
    "Resolvers": parse_resolvers,
    "Profile": lambda raw: parse_profile(raw) if raw.strip() else "",
    "EabKid": parse_eab_kid,
    "EabHmacKey": parse_hmac_key,
}
