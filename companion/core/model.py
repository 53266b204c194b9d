"""Typed sites parsed from container labels and environment (pure).

Every value that can reach an nginx file passes through a parser here and becomes a typed value
(hostname, port, path, enum) or a `Rejection` naming the container, the variable and the reason.
Templates only ever see what these parsers return, so no character of a label can add a directive.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass
from enum import StrEnum

from companion.core import trust
from companion.core.container import ContainerInfo
from companion.core.values import (
    MAX_CONNECT_SECONDS,
    Buffering,
    Challenge,
    HttpsMethod,
    InvalidValue,
    Keepalive,
    NetworkAccess,
    Proto,
    Tuning,
    domain_allowed,
    parse_allow_list,
    parse_bool,
    parse_ca_url,
    parse_cert_name,
    parse_duration,
    parse_email,
    parse_enum,
    parse_host_list,
    parse_hsts,
    parse_path,
    parse_port,
    parse_profile,
    parse_size,
)

# One container's labels must not be able to make every pass (or nginx -t) slow for everyone.
MAX_VALUE_BYTES = 32 * 1024

# Companion-specific, per path: what nginx-proxy users most often put in vhost.d, as typed values.
MAX_BODY_SIZE, READ_TIMEOUT, SEND_TIMEOUT, CONNECT_TIMEOUT, BUFFERING, ALLOW_FROM = TUNING_VARIABLES = (
    "PROXY_MAX_BODY_SIZE",
    "PROXY_READ_TIMEOUT",
    "PROXY_SEND_TIMEOUT",
    "PROXY_CONNECT_TIMEOUT",
    "PROXY_BUFFERING",
    "PROXY_ALLOW_FROM",
)
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
    "ACME_CERT_PROFILE",
)
# acme-companion's current names beside the legacy LETSENCRYPT_* ones: either may be set, or both alike.
ALIASES = (("ACME_HOST", "LETSENCRYPT_HOST"), ("ACME_EMAIL", "LETSENCRYPT_EMAIL"), ("ACME_TEST", "LETSENCRYPT_TEST"))
MULTIPORTS = "VIRTUAL_HOST_MULTIPORTS"
# nginx-proxy lets VIRTUAL_HOST_MULTIPORTS override these; here a container sets one or the other.
MULTIPORTS_EXCLUDES = ("VIRTUAL_HOST", "VIRTUAL_PORT", "VIRTUAL_PATH", "VIRTUAL_DEST")
DEFAULT_HSTS = "max-age=31536000"
# Every server block includes `location ^~ /.well-known/acme-challenge/`; a VIRTUAL_PATH there would be
# a duplicate location (nginx -t fails for every site) or could never be reached.
ACME_PATH = "/.well-known/acme-challenge/"


WILDCARD_LINEAGE_PREFIX = "_wildcard_."  # `*.example.com` is kept as `_wildcard_.example.com`: no host is named so


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
    default_profile: str = ""  # the companion's ACME_CERT_PROFILE; "" for the CA's default

    def may_use(self, server: str) -> bool:
        return server in (self.acme_server, self.staging_server, *self.allowed_servers)


@dataclass(frozen=True)
class CertRequest:
    """A certificate the container asks for (ACME_HOST/LETSENCRYPT_HOST), from which CA ('' = the companion's)."""

    name: str
    domains: tuple[str, ...]
    email: str
    server: str = ""
    challenge: Challenge = Challenge.HTTP01
    profile: str = ""  # the CA's profile to issue under (ACME_CERT_PROFILE); "" for the CA's default


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


def settings_of(info: ContainerInfo, image_trust: trust.ImageTrust = trust.ImageTrust.ROUTING) -> dict[str, str]:
    """The companion's variables for one container that count: environment first, labels win; a value
    the image set counts only where `image_trust` lets it."""
    env = _counted(info.env, info.image_env, image_trust)
    labels = _counted(info.labels, info.image_labels, image_trust)
    values = {name: env[name] for name in VARIABLES if name in env}
    values.update({name: labels[name] for name in VARIABLES if name in labels})
    return values


def _counted(values: Mapping[str, str], inherited: Set[str], image_trust: trust.ImageTrust) -> Mapping[str, str]:
    """`values` without those its image set that `image_trust` does not let an image set."""
    if not inherited:
        return values
    return {k: v for k, v in values.items() if k not in inherited or trust.image_may_set(k, image_trust)}


class VariableUse(StrEnum):
    """Whether one value of a variable counts, and if not, which trust rule set it aside."""

    COUNTS = "counts"
    IMAGE_NOT_TRUSTED = "image not trusted"  # inherited from the image, which TRUST_IMAGE_LABELS does not trust
    LABEL_WINS = "label wins"  # an environment value under a label that counts


@dataclass(frozen=True)
class VariableSource:
    """One value of one of the companion's variables on a container: where it came from and its use."""

    name: str
    value: str
    source: str  # "label" or "environment"
    from_image: bool
    use: VariableUse


def variable_sources(info: ContainerInfo, image_trust: trust.ImageTrust) -> tuple[VariableSource, ...]:
    """Every value of the companion's variables a container carries, in VARIABLES order, label before
    environment, each with the rule that decides whether it counts (the rules settings_of applies)."""
    counted_labels = _counted(info.labels, info.image_labels, image_trust)
    found = []
    for name in VARIABLES:
        for source, values, inherited in (
            ("label", info.labels, info.image_labels),
            ("environment", info.env, info.image_env),
        ):
            if name not in values:
                continue
            from_image = name in inherited
            if from_image and not trust.image_may_set(name, image_trust):
                use = VariableUse.IMAGE_NOT_TRUSTED
            elif source == "environment" and name in counted_labels:
                use = VariableUse.LABEL_WINS
            else:
                use = VariableUse.COUNTS
            found.append(VariableSource(name, values[name], source, from_image, use))
    return tuple(found)


def ignored_from_image(sources: Sequence[VariableSource]) -> tuple[str, ...]:
    """Variables the image sets that do not count and that the container does not set itself."""
    counted = {source.name for source in sources if source.use is not VariableUse.IMAGE_NOT_TRUSTED}
    return tuple(sorted({s.name for s in sources if s.use is VariableUse.IMAGE_NOT_TRUSTED and s.name not in counted}))


DEFAULT_POLICY = Policy()


def parse_site(info: ContainerInfo, policy: Policy = DEFAULT_POLICY) -> Site | Rejection | None:
    """Turn one container into a validated Site, a Rejection, or None when it asks for nothing."""
    values = settings_of(info, policy.image_trust)
    asked = [name for name in ("LETSENCRYPT_HOST", "ACME_HOST") if name in values]
    if "VIRTUAL_HOST" not in values and not asked:
        return None
    if "VIRTUAL_HOST" not in values:
        return Rejection(info.name, asked[0], values[asked[0]], "needs VIRTUAL_HOST as well")
    get = _Reader(values)
    try:
        return _read_site(info, policy, get)
    except InvalidValue as exc:
        shown = ",".join(info.exposed_ports) if get.current == "EXPOSE" else values.get(get.current, "")
        return Rejection(info.name, get.current, shown, str(exc))


class _Reader:
    """Reads a container's values by name and remembers the last one read: a rejection names that variable."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = values
        self.current = "VIRTUAL_HOST"

    def __call__(self, name: str) -> str:
        self.current = name
        return self.values.get(name, "")


def _read_site(info: ContainerInfo, policy: Policy, get: _Reader) -> Site:
    """The staged parse: sizes, names, routing, TLS settings, tuning, certificate; InvalidValue on the first fault."""
    _check_sizes(get)
    hosts = parse_host_list(get("VIRTUAL_HOST"))
    check_names(info, hosts, policy)
    port = _port(info, get)
    proto, path, dest = _routing(get)
    method, hsts = _tls_settings(get)
    access = parse_enum(get("NETWORK_ACCESS") or "external", NetworkAccess)
    keepalive = not get("VIRTUAL_KEEPALIVE") or parse_enum(get("VIRTUAL_KEEPALIVE"), Keepalive) is Keepalive.ON
    tuning = parse_tuning(get)
    cert_name = _cert_name(info, policy, get)
    for new, legacy in ALIASES:
        get.current = new
        _check_same(get.values, new, legacy)
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
        cert=_cert_request(info, policy, get, hosts, cert_name),
        network_access=access,
        keepalive=keepalive,
        tuning=tuning,
    )


def _check_sizes(get: _Reader) -> None:
    """No value may exceed MAX_VALUE_BYTES (the cheap length test first: most values are short)."""
    for name, value in get.values.items():
        if len(value) * 4 > MAX_VALUE_BYTES and len(value.encode("utf-8", "surrogateescape")) > MAX_VALUE_BYTES:
            get.current = name
            raise InvalidValue(f"longer than {MAX_VALUE_BYTES} bytes")


def check_names(info: ContainerInfo, names: Sequence[str], policy: Policy) -> None:
    """Every name must be in the allowed domains and, where DOMAIN_OWNERS names an owner, this container's."""
    _check_allowed(names, policy.allowed_domains)
    _check_owner(info, names, policy.owners)


def _port(info: ContainerInfo, get: _Reader) -> int:
    if get("VIRTUAL_PORT"):
        return parse_port(get("VIRTUAL_PORT"))
    get.current = "EXPOSE"
    return default_port(info)


def _routing(get: _Reader) -> tuple[Proto, str, str]:
    """VIRTUAL_PROTO, VIRTUAL_PATH (never under the ACME challenge path) and VIRTUAL_DEST."""
    proto = parse_enum(get("VIRTUAL_PROTO") or "http", Proto)
    path = parse_path(get("VIRTUAL_PATH") or "/")
    if path.startswith(ACME_PATH):
        raise InvalidValue(f"{ACME_PATH} is reserved for ACME challenges")
    dest = parse_path(get("VIRTUAL_DEST")) if get("VIRTUAL_DEST") else ""
    return proto, path, dest


def _tls_settings(get: _Reader) -> tuple[HttpsMethod, str]:
    method = parse_enum(get("HTTPS_METHOD") or "redirect", HttpsMethod)
    return method, parse_hsts(get("HSTS") or DEFAULT_HSTS)


def _cert_name(info: ContainerInfo, policy: Policy, get: _Reader) -> str:
    """CERT_NAME, "" when unset. A certificate name is a name too: it may not point outside what the operator allows."""
    cert_name = parse_cert_name(get("CERT_NAME")) if get("CERT_NAME") else ""
    if cert_name:
        check_names(info, (cert_name.lower(),), policy)
    return cert_name


def _cert_request(
    info: ContainerInfo, policy: Policy, get: _Reader, hosts: Sequence[str], cert_name: str
) -> CertRequest | None:
    """The certificate ACME_HOST (or LETSENCRYPT_HOST) asks for, None when neither is set."""
    host_var = "ACME_HOST" if get("ACME_HOST") else "LETSENCRYPT_HOST"
    if not get(host_var):
        return None
    challenge = _challenge(get, policy, get(host_var))
    get.current = host_var
    domains = parse_host_list(get(host_var), wildcard=challenge is Challenge.DNS01)
    # A name outside the allow-list is refused as such (not just as "not a VIRTUAL_HOST name"),
    # so the message says why a certificate will never be ordered for it.
    check_names(info, domains, policy)
    _check_within(domains, hosts)
    email_var = "ACME_EMAIL" if get("ACME_EMAIL") else "LETSENCRYPT_EMAIL"
    email = parse_email(get(email_var)) if get(email_var) else policy.default_email
    return CertRequest(
        name=cert_name or lineage_of(domains[0]),
        domains=domains,
        email=email,
        server=_server(get, policy),
        challenge=challenge,
        profile=parse_profile(get("ACME_CERT_PROFILE")) if get("ACME_CERT_PROFILE") else policy.default_profile,
    )


def _check_within(domains: Sequence[str], hosts: Sequence[str]) -> None:
    """A certificate's names must be VIRTUAL_HOST names (or wildcards), and each must cover one of them."""
    outside = [d for d in domains if d not in hosts and not d.startswith("*.")]
    if outside:
        raise InvalidValue(f"{', '.join(outside)} not among the VIRTUAL_HOST names")
    idle = [d for d in domains if not any(covers((d,), host) for host in hosts)]
    if idle:
        raise InvalidValue(f"{', '.join(idle)} covers none of the VIRTUAL_HOST names")


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


def default_port(info: ContainerInfo) -> int:
    """The single exposed TCP port (validated like VIRTUAL_PORT: it comes from the image), else 80, as
    nginx-proxy does. A bare key ("81", as compose sends `expose:`) is TCP, as the Engine treats it."""
    tcp = [spec for spec in info.exposed_ports if spec.partition("/")[2] in ("", "tcp")]
    if len(tcp) != 1:
        return 80
    return parse_port(tcp[0].partition("/")[0])


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
