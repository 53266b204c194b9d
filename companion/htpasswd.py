"""STATUS_AUTH: an htpasswd file whose users may read the status endpoint (bcrypt entries only).

The page names every host and container, so an operator who publishes it beyond loopback can require a
password. Only bcrypt (`htpasswd -B`, `$2y$`/`$2b$`/`$2a$`) is accepted: the other htpasswd formats
(MD5-apr1, SHA1, crypt) are fast hashes a stolen file gives up easily. Parsing is pure; checking caches
each accepted Authorization header, so a polling client pays for bcrypt once, not on every request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import threading
from collections.abc import Mapping

import bcrypt

MAX_BYTES = 1024 * 1024
_BCRYPT_RE = re.compile(r"^\$2[aby]\$[0-9]{2}\$[./A-Za-z0-9]{53}\Z")
_USER_RE = re.compile(r"^[^:\s]{1,255}\Z")


class HtpasswdError(ValueError):
    """The file cannot be used; the message names the line, never a hash."""


def parse(text: str) -> dict[str, bytes]:
    """user -> bcrypt hash; blank lines and `#` comments are skipped."""
    users: dict[str, bytes] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, digest = line.partition(":")
        if not sep or not _USER_RE.match(user):
            raise HtpasswdError(f"line {number}: expected user:hash")
        if not _BCRYPT_RE.match(digest):
            raise HtpasswdError(f"line {number}: only bcrypt entries (htpasswd -B) are accepted")
        users[user] = digest.encode()
    if not users:
        raise HtpasswdError("no user in the file")
    return users


class Gate:
    """Checks an Authorization header against the users; thread-safe (the server answers in threads)."""

    def __init__(self, users: Mapping[str, bytes]) -> None:
        self.users = dict(users)
        self._accepted: set[bytes] = set()  # digests of headers already checked with bcrypt
        self._lock = threading.Lock()

    def allows(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic ") or len(header) > 1024:
            return False
        key = hashlib.sha256(header.encode()).digest()
        with self._lock:
            if key in self._accepted:
                return True
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        digest = self.users.get(user)
        if digest is None or not bcrypt.checkpw(password.encode(), digest):
            return False
        with self._lock:
            self._accepted.add(key)
        return True
