"""STATUS_AUTH: an htpasswd file whose users may read the status endpoint (bcrypt entries only).

The page names every host and container, so an operator who publishes it beyond loopback can require a
password. Only bcrypt (`htpasswd -B`, `$2y$`/`$2b$`/`$2a$`) is accepted: the other htpasswd formats
(MD5-apr1, SHA1, crypt) are fast hashes a stolen file gives up easily. Parsing is pure; checking caches
each accepted Authorization header, so a polling client pays for bcrypt once, not on every request.
An unknown user name costs the same as a known one (a bcrypt check against a dummy hash of the file's
highest cost, names compared in constant time), so the answer's timing does not tell which names exist.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
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
        self.users = [(_name_key(user), digest) for user, digest in users.items()]
        cost = max(int(digest[4:6]) for _, digest in self.users)
        self.dummy = bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(rounds=cost))  # for unknown names
        self._accepted: set[bytes] = set()  # digests of headers already checked with bcrypt
        self._lock = threading.Lock()

    def allows(self, header: str | None) -> bool:
        if not header or len(header) > 1024:
            return False
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() != "basic":  # auth schemes are case-insensitive (RFC 9110 11.1)
            return False
        key = hashlib.sha256(header.encode()).digest()
        with self._lock:
            if key in self._accepted:
                return True
        try:
            user, _, password = base64.b64decode(credentials.strip(), validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        digest = self.lookup(user)
        # Always one bcrypt check, the dummy's for an unknown name: the time taken does not tell them apart.
        matched = bcrypt.checkpw(password.encode(), digest or self.dummy)
        if digest is None or not matched:
            return False
        with self._lock:
            self._accepted.add(key)
        return True

    def lookup(self, user: str) -> bytes | None:
        """The user's hash, found by comparing every name in constant time (no early exit, no length leak)."""
        wanted = _name_key(user)
        found = None
        for name, digest in self.users:
            if hmac.compare_digest(name, wanted):
                found = digest
        return found


def _name_key(user: str) -> bytes:
    return hashlib.sha256(user.encode("utf-8", "surrogatepass")).digest()
