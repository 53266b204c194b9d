"""DNS-01 settings that must fit together (plugin, credentials file, propagation wait): checked when the
settings load, so a mismatch stops the start with one message instead of failing every order."""

from __future__ import annotations

import re

from companion.core.values import Challenge

# certbot names an authenticator by its entry point: `dns-` and a provider, as every DNS plugin does.
PLUGIN_RE = re.compile(r"^dns-[a-z0-9]+(?:-[a-z0-9]+)*\Z")
# Plugins that take their credentials from the environment (boto3: AWS_* or ~/.aws) and wait for the
# provider's own "change applied" answer: they have neither --<plugin>-credentials nor -propagation-seconds.
ENVIRONMENT_CREDENTIALS = frozenset({"dns-route53"})
_PATH_RE = re.compile(r"^/[^\x00-\x1f\x7f]*\Z")


def settings_problem(challenge: Challenge, plugin: str, credentials: str, propagation: int) -> str:
    """Why the companion's DNS-01 settings do not fit together, or ''."""
    if plugin and not PLUGIN_RE.match(plugin):
        shown = plugin[:80].encode("unicode_escape").decode("ascii")
        return f"dns plugin {shown!r} must be a certbot DNS plugin name such as dns-rfc2136 (dns- and a provider)"
    if challenge is Challenge.DNS01 and not plugin:
        return "acme challenge dns-01 needs a DNS plugin (ACME_DNS_PLUGIN, e.g. dns-rfc2136)"
    if credentials and not plugin:
        return "dns credentials are set but no DNS plugin (ACME_DNS_PLUGIN) would use them"
    if credentials and not _PATH_RE.match(credentials):
        return "dns credentials must be an absolute path (e.g. /run/secrets/dns.ini)"
    if plugin in ENVIRONMENT_CREDENTIALS:
        if credentials:
            return f"{plugin} reads its credentials from the environment (AWS_ACCESS_KEY_ID, ...), not from a file"
        if propagation >= 0:
            return f"{plugin} waits until the change is applied by itself; leave the dns propagation unset"
    elif plugin and not credentials:
        return f"dns plugin {plugin} needs its credentials file (ACME_DNS_CREDENTIALS, e.g. a Docker secret)"
    return ""
