"""Every variable nginx-proxy and acme-companion document, and what the companion does with it (pure).

A drop-in replacement must never drop a setting silently: a variable we do not apply, or a near-miss
of one we read (a typo, lowercase), becomes one problem line naming the container. This registry is
the single source for those lines and for README's table, so a variable that becomes supported stops
warning by changing its row here.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from companion.core.container import ContainerInfo
from companion.core.options import ENV_NAMES
from companion.core.problems import Problem


class Where(StrEnum):
    APP = "app container"
    APP_LABEL = "app container label"
    PROXY = "nginx-proxy container"
    ACME = "acme-companion container"


class Status(StrEnum):
    SUPPORTED = "supported"
    DIFFERENT = "supported differently"
    REFUSED = "refused on purpose"
    NOT_YET = "not yet"


@dataclass(frozen=True)
class Variable:
    name: str
    where: Where
    status: Status
    note: str = ""  # how it differs, why it is refused, or what to do meanwhile


_A, _L, _P, _C = Where.APP, Where.APP_LABEL, Where.PROXY, Where.ACME
_S, _D, _R, _N = Status.SUPPORTED, Status.DIFFERENT, Status.REFUSED, Status.NOT_YET
_RAW = "the value is raw nginx syntax, which no label may write here"
_DNS_PLUGINS = "DNS-01 runs through certbot's DNS plugins: ACME_DNS_PLUGIN and ACME_DNS_CREDENTIALS on the companion"
_ONE_KEY = "one key type for all certificates: the companion's KEY_TYPE and RSA_KEY_SIZE"
_RENEW = "the companion's RENEW_BEFORE_DAYS, for all certificates"
_HOOKS = "no shell commands run around orders"
_EAB = "one binding for all certificates: ACME_EAB_KID and ACME_EAB_HMAC_KEY on the companion"

REGISTRY: tuple[Variable, ...] = (
    # -- on the app containers (nginx-proxy) -------------------------------------------------------
    Variable(
        "VIRTUAL_HOST",
        _A,
        _S,
        "regex hosts (`~^...`) and suffix wildcards (`app.example.*`) are refused: no restricted syntax "
        "proven safe yet",
    ),
    Variable("VIRTUAL_PORT", _A, _S),
    Variable("VIRTUAL_HOST_MULTIPORTS", _A, _S, "not together with VIRTUAL_HOST/PORT/PATH/DEST"),
    Variable("VIRTUAL_PROTO", _A, _S, "`http` and `https`; `uwsgi`, `fastcgi`, `grpc`, `grpcs` are refused"),
    Variable("VIRTUAL_PATH", _A, _S, "plain prefixes; regex paths (`~^/...`) are refused"),
    Variable("VIRTUAL_DEST", _A, _S),
    Variable("VIRTUAL_ROOT", _A, _N, "FastCGI upstreams are not supported"),
    Variable("NETWORK_ACCESS", _A, _S, "`internal`: private source addresses only, others get 403"),
    Variable(
        "VIRTUAL_KEEPALIVE",
        _A,
        _S,
        "companion-specific: upstream keepalive is on (32 idle connections); `off` for apps that mishandle reuse",
    ),
    Variable("PROXY_MAX_BODY_SIZE", _A, _S, "companion-specific: `client_max_body_size` (`10m`; `0`: no limit)"),
    Variable("PROXY_READ_TIMEOUT", _A, _S, "companion-specific: `proxy_read_timeout` (`60s`, `5m`; at most 1 day)"),
    Variable("PROXY_SEND_TIMEOUT", _A, _S, "companion-specific: `proxy_send_timeout` (at most 1 day)"),
    Variable("PROXY_CONNECT_TIMEOUT", _A, _S, "companion-specific: `proxy_connect_timeout` (at most 75s)"),
    Variable("PROXY_BUFFERING", _A, _S, "companion-specific: `proxy_buffering` `on` or `off`"),
    Variable(
        "PROXY_ALLOW_FROM",
        _A,
        _S,
        "companion-specific: comma list of IPs/CIDRs (IPv4, IPv6); others get 403, the ACME challenge stays open",
    ),
    Variable("HTTPS_METHOD", _A, _S),
    Variable("HSTS", _A, _S),
    Variable("CERT_NAME", _A, _S),
    Variable("SSL_POLICY", _A, _N, "one policy for all sites: set SSL_POLICY on the companion"),
    Variable("com.github.nginx-proxy.nginx-proxy.loadbalance", _L, _R, _RAW),
    Variable(
        "com.github.nginx-proxy.nginx-proxy.keepalive", _L, _N, "keepalive is on; `VIRTUAL_KEEPALIVE=off` ends it"
    ),
    Variable("com.github.nginx-proxy.nginx-proxy.http2.enable", _L, _D, "HTTP/2 is always on"),
    Variable("com.github.nginx-proxy.nginx-proxy.http3.enable", _L, _N),
    # -- on the app containers (acme-companion) ----------------------------------------------------
    Variable("LETSENCRYPT_HOST", _A, _S),
    Variable("LETSENCRYPT_EMAIL", _A, _S),
    Variable("ACME_HOST", _A, _S),
    Variable("ACME_EMAIL", _A, _S),
    Variable("ACME_CA_URI", _A, _S),
    Variable("LETSENCRYPT_TEST", _A, _S),
    Variable("ACME_TEST", _A, _S),
    Variable("LETSENCRYPT_KEYSIZE", _A, _D, _ONE_KEY),
    Variable("ACME_KEYSIZE", _A, _D, _ONE_KEY),
    Variable("LETSENCRYPT_RESTART_CONTAINER", _A, _N),
    Variable("ACME_RESTART_CONTAINER", _A, _N),
    Variable("LETSENCRYPT_SINGLE_DOMAIN_CERTS", _A, _N, "give each name its own container or CERT_NAME"),
    Variable("ACME_SINGLE_DOMAIN_CERTS", _A, _N, "give each name its own container or CERT_NAME"),
    Variable("LETSENCRYPT_MIN_VALIDITY", _A, _D, _RENEW),
    Variable("ACME_RENEW_AFTER", _A, _D, _RENEW),
    Variable("ACME_RENEW_PRIVATE_KEYS", _A, _N),
    Variable("ACME_OCSP", _A, _D, "stapling is on whenever the certificate names an OCSP responder"),
    Variable("ACME_PRE_HOOK", _A, _R, "a label may not run commands in the companion"),
    Variable("ACME_POST_HOOK", _A, _R, "a label may not run commands in the companion"),
    Variable("ACME_PREFERRED_CHAIN", _A, _N),
    Variable(
        "ACME_CERT_PROFILE",
        _A,
        _S,
        "a profile the CA's directory does not offer refuses the certificate, naming those it offers; "
        "a change reorders",
    ),
    Variable("ACME_CHALLENGE", _A, _S, "`http-01` or `dns-01` (needs a DNS plugin on the companion)"),
    Variable("ACMESH_DNS_API_CONFIG", _A, _D, _DNS_PLUGINS),
    Variable("ACME_EAB_KID", _A, _N, _EAB),
    Variable("ACME_EAB_HMAC_KEY", _A, _N, _EAB),
    Variable("ZEROSSL_API_KEY", _A, _N),
    # -- on the nginx-proxy container: set them on the companion -----------------------------------
    Variable("DEFAULT_HOST", _P, _S),
    Variable("DEFAULT_ROOT", _P, _S),
    Variable("ENABLE_IPV6", _P, _S),
    Variable("SSL_POLICY", _P, _S),
    Variable("TRUST_DOWNSTREAM_PROXY", _P, _S),
    Variable("ENABLE_HTTP_ON_MISSING_CERT", _P, _S),
    Variable("NON_GET_REDIRECT", _P, _S),
    Variable("HTTP_PORT", _P, _S),
    Variable("HTTPS_PORT", _P, _S),
    Variable("HTTPS_METHOD", _P, _N, "set HTTPS_METHOD on each app container"),
    Variable("HSTS", _P, _N, "set HSTS on each app container"),
    Variable("RESOLVERS", _P, _S, "IP addresses only (IP, IP:port, [IPv6]:port)"),
    Variable("ENABLE_HTTP2", _P, _D, "HTTP/2 is always on"),
    Variable("ENABLE_HTTP3", _P, _N),
    Variable("PREFER_IPV6_NETWORK", _P, _N),
    Variable("DHPARAM_BITS", _P, _D, "RFC 7919 ffdhe2048 is shipped; nothing is generated"),
    Variable("DHPARAM_GENERATION", _P, _D, "RFC 7919 ffdhe2048 is shipped; nothing is generated"),
    Variable("DHPARAM_SKIP", _P, _D, "RFC 7919 ffdhe2048 is shipped; nothing is generated"),
    Variable("ACME_HTTP_CHALLENGE_LOCATION", _P, _D, "the challenge location is always generated"),
    Variable("SHA1_UPSTREAM_NAME", _P, _D, "upstream names are short and numbered, one per backend set"),
    Variable(
        "LOG_FORMAT",
        _P,
        _S,
        "`text` and `json` name the companion's own log format; any other value is nginx's access log format, "
        "as in nginx-proxy",
    ),
    Variable("LOG_FORMAT_ESCAPE", _P, _S),
    Variable("LOG_JSON", _P, _S, "written to ACCESS_LOG_PATH in the companion's JSON format"),
    Variable("DISABLE_ACCESS_LOGS", _P, _S),
    Variable("DEBUG_ENDPOINT", _P, _N),
    # -- on the acme-companion container: set them on the companion --------------------------------
    Variable("DEFAULT_EMAIL", _C, _S),
    Variable("ACME_CA_URI", _C, _S),
    Variable("LETSENCRYPT_TEST", _C, _S),
    Variable("CA_BUNDLE", _C, _S),
    Variable("NGINX_PROXY_CONTAINER", _C, _S),
    Variable("DOCKER_HOST", _C, _S),
    Variable("DOCKER_TLS_VERIFY", _C, _S),
    Variable("DOCKER_CERT_PATH", _C, _S),
    Variable("ENABLE_IPV6", _C, _S),
    Variable("NGINX_DOCKER_GEN_CONTAINER", _C, _D, "no docker-gen: the companion writes nginx's config itself"),
    Variable("DEBUG", _C, _D, "LOG_LEVEL=DEBUG"),
    Variable("DEFAULT_KEY_SIZE", _C, _D, "KEY_TYPE=rsa and RSA_KEY_SIZE"),
    Variable("ACME_RENEW_AFTER", _C, _D, "RENEW_BEFORE_DAYS"),
    Variable("DEFAULT_RENEW", _C, _D, "RENEW_BEFORE_DAYS"),
    Variable("CERTS_UPDATE_INTERVAL", _C, _D, "Docker events wake the companion; renewals are checked every pass"),
    Variable("RELOAD_NGINX_ONLY_ONCE", _C, _D, "nginx is reloaded only when a rendered file changed"),
    Variable("CREATE_DEFAULT_CERTIFICATE", _C, _D, "a self-signed placeholder is always created"),
    Variable("RENEW_PRIVATE_KEYS", _C, _N),
    Variable("FILES_UID", _C, _R, "keys are always 0600 in 0700 folders"),
    Variable("FILES_GID", _C, _R, "keys are always 0600 in 0700 folders"),
    Variable("FILES_PERMS", _C, _R, "keys are always 0600 in 0700 folders"),
    Variable("FOLDERS_PERMS", _C, _R, "keys are always 0600 in 0700 folders"),
    Variable("DOCKER_CONTAINER_FILTERS", _C, _N),
    Variable("ACME_PRE_HOOK", _C, _N, _HOOKS),
    Variable("ACME_POST_HOOK", _C, _N, _HOOKS),
    Variable("ACME_CHALLENGE", _C, _S, "`http-01` or `dns-01` (with ACME_DNS_PLUGIN)"),
    Variable("ACMESH_DNS_API_CONFIG", _C, _D, _DNS_PLUGINS),
    Variable("ACME_CERT_PROFILE", _C, _S, "the default for containers that set none"),
    Variable("ACME_EAB_KID", _C, _S, "accounts are kept per CA, email and key id"),
    Variable(
        "ACME_EAB_HMAC_KEY",
        _C,
        _S,
        "or ACME_EAB_HMAC_KEY_FILE (a Docker secret); never logged, shown or written to the certs volume",
    ),
    Variable("ZEROSSL_API_KEY", _C, _N),
)

_ON_APPS = {v.name: v for v in REGISTRY if v.where in (Where.APP, Where.APP_LABEL)}
# What a near-miss may be a miss of: the app variables we read.
_READ = tuple(sorted(name for name, v in _ON_APPS.items() if v.status is Status.SUPPORTED and v.where is Where.APP))
# Names that are never a near-miss: every documented name, the companion's own settings, and
# variables images set for themselves (Python's venv sets VIRTUAL_ENV, one edit from nothing we read,
# but close enough to VIRTUAL_DEST/PORT to be worth pinning).
_NEVER_A_MISS = frozenset({v.name for v in REGISTRY} | ENV_NAMES | {"VIRTUAL_ENV", "VIRTUAL_ENV_PROMPT"})
MAX_LINES = 20  # per container: a container with thousands of odd names must not flood the log


def osa_distance(a: str, b: str) -> int:
    """Edits (insert, delete, substitute, swap two neighbours) that turn `a` into `b`."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        row = [i]
        for j, cb in enumerate(b, 1):
            cost = min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (ca != cb))
            if i > 1 and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cost = min(cost, prev2[j - 2] + 1)
            row.append(cost)
        prev2, prev = prev, row
    return prev[-1]


def near_miss(name: str) -> str | None:
    """The variable we read that `name` was probably meant to be, or None.

    The rule: the same name in other letter case always counts; otherwise, compared in upper case, one
    edit (a swap of two neighbours is one) for names of 9 to 11 characters and two for longer ones.
    Names under 9 characters (HSTS) only match by case: HOST, PORT and such are too common in images.
    Between equally close names, the most similar by difflib's ratio wins.
    Documented names, the companion's own settings and VIRTUAL_ENV are never a miss.
    """
    if name in _NEVER_A_MISS or len(name) > 64:
        return None
    upper = name.upper()
    if upper in _READ:
        return upper
    # Ties (VIRTUAL_PROT is one edit from VIRTUAL_PORT and VIRTUAL_PROTO) go to the most similar.
    close = [found for known in _READ if (found := _closeness(upper, known)) is not None]
    return min(close)[2] if close else None


def _closeness(upper: str, known: str) -> tuple[int, float, str] | None:
    """(edits, -similarity, known) when `upper` is within the edits allowed for `known`'s length, else None."""
    allowed = 0 if len(known) < 9 else 1 if len(known) < 12 else 2
    if abs(len(upper) - len(known)) > allowed:
        return None
    distance = osa_distance(upper, known)
    if distance > allowed:
        return None
    return distance, -difflib.SequenceMatcher(None, upper, known).ratio(), known


def _escaped(name: str) -> str:
    shown = name if len(name) <= 80 else name[:80] + "..."
    return shown.encode("unicode_escape").decode("ascii")


@functools.lru_cache(maxsize=4096)
def _verdict(name: str, inherited: bool) -> str | None:
    """What to say about one name on an app container, or None; cached: the same names come every pass."""
    known = _ON_APPS.get(name)
    if known is not None:
        if known.status is Status.SUPPORTED:
            return None
        why = known.status.value + (f": {known.note}" if known.note else "")
        return f"{_escaped(name)} is not supported ({why}); see README"
    if inherited:  # an image's own variables are not the user's typing
        return None
    meant = near_miss(name)
    return f"{_escaped(name)} is not a variable the companion reads; did you mean {meant}?" if meant else None


def container_problems(info: ContainerInfo) -> tuple[str, ...]:
    """One line per variable on the container that the companion does not apply as the user meant."""
    lines: list[str] = []
    for values, inherited in ((info.labels, info.image_labels), (info.env, info.image_env)):
        for name in values:
            said = _verdict(name, name in inherited)
            if said is not None:
                lines.append(Problem(f"container {info.name}: {said}", container=info.name, variable=name))
    lines = list(dict.fromkeys(lines))
    if len(lines) > MAX_LINES:
        more = f"container {info.name}: {len(lines) - MAX_LINES} more variables not applied"
        lines[MAX_LINES:] = [Problem(more, container=info.name)]
    return tuple(lines)


def setting_problems(environ: Mapping[str, str]) -> tuple[str, ...]:
    """Lines for nginx-proxy and acme-companion settings in the companion's own environment that it
    does not apply (kept on the companion's service from the old compose file)."""
    lines = []
    for v in REGISTRY:
        own = v.name in ENV_NAMES  # the companion's own setting of that name (LOG_FORMAT), checked by config
        if v.where in (Where.PROXY, Where.ACME) and v.status is not Status.SUPPORTED and v.name in environ and not own:
            why = v.status.value + (f": {v.note}" if v.note else "")
            lines.append(f"setting {v.name} is not supported ({why}); see README")
    return tuple(dict.fromkeys(lines))


def readme_table() -> str:
    """README's table of every documented variable, so the docs follow the registry."""
    lines = ["| variable | where nginx-proxy / acme-companion read it | here | note |", "| --- | --- | --- | --- |"]
    for v in REGISTRY:
        lines.append(f"| `{v.name}` | {v.where.value} | {v.status.value} | {v.note} |")
    return "\n".join(lines)
