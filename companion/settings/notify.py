"""NOTIFY_URLS: the comma list of Apprise URLs, checked by Apprise itself when the settings load, so a bad
URL is a start-up error naming its position and scheme (never its secrets) instead of a lost alert later."""

from __future__ import annotations

import re

import apprise

_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,30}(?=://)")


class BadNotifyUrl(ValueError):
    """A NOTIFY_URLS entry Apprise cannot use; the message names it by position and scheme, never its secrets."""


def parse_notify_urls(raw: str) -> tuple[str, ...]:
    """The comma list of Apprise URLs, each one checked by Apprise itself."""
    urls = tuple(part.strip() for part in raw.split(",") if part.strip())
    for position, url in enumerate(urls, 1):
        if apprise.Apprise.instantiate(url) is None:
            scheme = _SCHEME_RE.match(url)
            shown = f"a {scheme.group()}:// URL" if scheme else "not a URL"
            raise BadNotifyUrl(f"entry {position} of {len(urls)} ({shown}) is not a URL Apprise can send to")
    return urls
