"""Who may set what (pure): values a container inherits from its image, which container is nginx,
and which containers own which names.

Labels and environment variables do not only come from the operator: every `LABEL` and `ENV` of an
image pulled from any registry reaches us as if the operator had written it. The Docker edge marks
which values came from the image; the rules here decide which of those count.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from companion.core.container import ContainerInfo

NGINX_LABEL = "com.github.nginx-proxy.nginx"
PROJECT_LABEL = "com.docker.compose.project"
# What an image may set under the default policy: where its traffic goes, as nginx-proxy users expect
# of their own images. Certificates, HTTPS policy and the nginx label need the operator's word.
ROUTING_VARIABLES = frozenset(
    {"VIRTUAL_HOST", "VIRTUAL_PORT", "VIRTUAL_PROTO", "VIRTUAL_PATH", "VIRTUAL_DEST", "VIRTUAL_HOST_MULTIPORTS"}
)


class ImageTrust(StrEnum):
    ROUTING = "routing"
    ALL = "all"
    NONE = "none"


def image_may_set(name: str, trust: ImageTrust) -> bool:
    """True when a value of `name` inherited from the image counts under `trust`."""
    if trust is ImageTrust.ALL:
        return True
    return trust is ImageTrust.ROUTING and name in ROUTING_VARIABLES


def own_label(info: ContainerInfo, key: str) -> str | None:
    """A label set on the container itself (not inherited from its image), or None."""
    if key in info.image_labels:
        return None
    return info.labels.get(key)


def trusted_label(info: ContainerInfo, key: str, trust: ImageTrust) -> str | None:
    """A label's value when it counts: set on the container, or inherited and trusted."""
    if key in info.image_labels and not image_may_set(key, trust):
        return None
    return info.labels.get(key)


# -- the nginx container -----------------------------------------------------------------------------


def conf_dir_source(conf_dir: str, own: ContainerInfo | None) -> str | None:
    """Where the conf dir really lives on the Docker host: the source of the companion's own mount
    that holds it, or the path itself when the companion runs on the host. None: not on any mount,
    so no nginx container can see what we write."""
    if own is None:
        return conf_dir
    for source, destination in own.mounts:
        if conf_dir == destination or conf_dir.startswith(destination.rstrip("/") + "/"):
            return source.rstrip("/") + conf_dir[len(destination.rstrip("/")) :]
    return None


def mounts_path(info: ContainerInfo, host_path: str) -> bool:
    """True when one of the container's mounts is `host_path` or a folder above it."""
    return any(host_path == src or host_path.startswith(src.rstrip("/") + "/") for src, _ in info.mounts)


def nginx_verdict(info: ContainerInfo, conf_source: str | None, trust: ImageTrust) -> str:
    """'' when a container carrying the nginx label qualifies as our nginx, else why it does not.

    A label alone is not enough (an image can carry it): nginx must also mount the conf dir we write,
    which only the operator can arrange.
    """
    if trusted_label(info, NGINX_LABEL, trust) is None:
        return f"its label {NGINX_LABEL} comes from its image (TRUST_IMAGE_LABELS={trust.value})"
    if conf_source is None:
        return "the companion's conf dir is not on a mount nginx could share"
    if not mounts_path(info, conf_source):
        return f"it does not mount the companion's conf dir ({conf_source})"
    return ""


# -- domain owners -----------------------------------------------------------------------------------

_PATTERN_RE = re.compile(r"^[a-z0-9*?.\-]+\Z")


@dataclass(frozen=True)
class OwnerRule:
    """Names matching `pattern` belong to containers carrying label `key` with `value`."""

    pattern: str
    kind: str  # "project" or "label"
    key: str
    value: str

    @property
    def owner(self) -> str:
        return f"project:{self.value}" if self.kind == "project" else f"label:{self.key}={self.value}"

    def satisfied_by(self, info: ContainerInfo) -> bool:
        return own_label(info, self.key) == self.value


def parse_owner_rules(raw: str) -> tuple[OwnerRule, ...]:
    """`*.a.example.com=project:shop,*.b.example.com=label:team=b` -> rules; ValueError names the bad entry."""
    return tuple(_owner_rule(entry) for entry in (part.strip() for part in raw.split(",")) if entry)


def _owner_rule(entry: str) -> OwnerRule:
    """One `PATTERN=project:NAME` or `PATTERN=label:KEY=VALUE` entry; ValueError names it."""
    pattern, _, owner = entry.partition("=")
    pattern = pattern.strip().lower()
    kind, _, rest = owner.strip().partition(":")
    if not _PATTERN_RE.match(pattern) or kind not in ("project", "label") or not rest or " " in rest:
        raise ValueError(f"{entry!r} is not PATTERN=project:NAME or PATTERN=label:KEY=VALUE")
    if kind == "project":
        if "=" in rest:
            raise ValueError(f"{entry!r}: a project name has no '='")
        return OwnerRule(pattern, kind, PROJECT_LABEL, rest)
    key, sep, value = rest.partition("=")
    if not sep or not key:
        raise ValueError(f"{entry!r}: label owners are written label:KEY=VALUE")
    return OwnerRule(pattern, kind, key, value)


def name_matches(host: str, pattern: str) -> bool:
    """True when `host` (possibly an nginx wildcard `*.example.com`) may receive a name `pattern` covers.

    A wildcard host claims every name below it, so `*.example.com` overlaps `*.a.example.com`.
    """
    if fnmatch.fnmatchcase(host, pattern):
        return True
    if host.startswith("*."):
        sample = re.sub(r"\[[^\]]*\]|[*?]", "x", pattern)
        return sample.endswith(host[1:])
    return False


def owner_of(name: str, rules: Sequence[OwnerRule]) -> OwnerRule | None:
    """The first rule whose pattern matches `name` decides; None when no rule does."""
    for rule in rules:
        if name_matches(name, rule.pattern):
            return rule
    return None
