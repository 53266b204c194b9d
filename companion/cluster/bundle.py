"""What the controller sends every agent: the rendered files and the certificate files they name (pure).

A bundle is canonical JSON (sorted keys, no spaces), so its bytes are what is signed, and its generation
is a digest of its contents: equal contents, equal generation, on every controller start. The
certificate files are exactly those the rendered files name in `ssl_certificate`/`ssl_certificate_key`
directives (placeholder and default certificate included): an agent gets the keys of the certificates
its nginx presents and no others.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

VERSION = 1
MAX_BYTES = 256 * 1024 * 1024
_CERT_DIRECTIVE = re.compile(r"^\s*ssl_(?:certificate|certificate_key|trusted_certificate)\s+(\S+);", re.MULTILINE)
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,254}")


class BadBundle(ValueError):
    """A bundle that does not have the expected shape; nothing of it is applied."""


@dataclass(frozen=True)
class Bundle:
    generation: str
    conf_dir: str
    certs_dir: str
    files: Mapping[str, str]  # conf dir file name -> content
    certs: Mapping[str, str]  # path relative to the certs dir -> PEM

    def body(self) -> bytes:
        return canonical(self.generation, self.conf_dir, self.certs_dir, self.files, self.certs)


def _digest(conf_dir: str, certs_dir: str, files: Mapping[str, str], certs: Mapping[str, str]) -> str:
    content = {"conf_dir": conf_dir, "certs_dir": certs_dir, "files": dict(files), "certs": dict(certs)}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8", "surrogateescape")).hexdigest()[:20]


def canonical(
    generation: str, conf_dir: str, certs_dir: str, files: Mapping[str, str], certs: Mapping[str, str]
) -> bytes:
    value = {
        "version": VERSION,
        "generation": generation,
        "conf_dir": conf_dir,
        "certs_dir": certs_dir,
        "files": dict(files),
        "certs": dict(certs),
    }
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode("utf-8", "surrogateescape")


def cert_paths(files: Mapping[str, str], certs_dir: str) -> tuple[str, ...]:
    """The certificate files the rendered files name below the certs dir, relative to it, sorted.

    Only the certs dir travels to agents: a path elsewhere (an operator's vhost.d file may name one) is
    left to the node, whose nginx -t judges it."""
    root = PurePosixPath(certs_dir)
    found = set()
    for content in files.values():
        for match in _CERT_DIRECTIVE.finditer(content):
            path = PurePosixPath(match.group(1))
            if path.is_relative_to(root):
                found.add(check_relative(str(path.relative_to(root))))
    return tuple(sorted(found))


def build(files: Mapping[str, str], conf_dir: str, certs_dir: str, read_cert: Callable[[str], str]) -> Bundle:
    """The bundle for one pass; `read_cert` reads a file relative to the certs dir (OSError when it cannot)."""
    certs = {path: read_cert(path) for path in cert_paths(files, certs_dir)}
    return Bundle(_digest(conf_dir, certs_dir, files, certs), conf_dir, certs_dir, dict(files), certs)


def check_name(name: str) -> str:
    """A conf dir file name: one plain part, never hidden (the agent's temporary files start with a dot)."""
    if not _PART.fullmatch(name):
        raise BadBundle(f"file name {name.encode('unicode_escape').decode('ascii')!r} is not a plain name")
    return name


def check_relative(path: str) -> str:
    """A path below the certs dir: plain parts only, no '..', no hidden or absolute parts."""
    parts = path.split("/")
    if not parts or len(parts) > 8 or not all(_PART.fullmatch(part) and part != ".." for part in parts):
        raise BadBundle(f"certificate path {path.encode('unicode_escape').decode('ascii')!r} is not a plain path")
    return path


def parse(body: bytes) -> Bundle:
    """A received bundle, checked: shape, names, paths, and that its generation is the digest of its contents."""
    if len(body) > MAX_BYTES:
        raise BadBundle(f"bundle of {len(body)} bytes is over {MAX_BYTES}")
    try:
        value = json.loads(body.decode("utf-8", "surrogateescape"))
    except ValueError as exc:
        raise BadBundle(f"bundle is not JSON: {exc}") from None
    if not isinstance(value, dict) or value.get("version") != VERSION:
        raise BadBundle(f"bundle is not version {VERSION}")
    conf_dir, certs_dir = value.get("conf_dir"), value.get("certs_dir")
    files, certs, generation = value.get("files"), value.get("certs"), value.get("generation")
    if not all(isinstance(v, str) for v in (conf_dir, certs_dir, generation)):
        raise BadBundle("bundle lacks conf_dir, certs_dir or generation")
    for mapping in (files, certs):
        if not isinstance(mapping, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
        ):
            raise BadBundle("bundle files and certs must map names to text")
    assert isinstance(files, dict) and isinstance(certs, dict)
    for name in files:
        check_name(name)
    for path in certs:
        check_relative(path)
    if generation != _digest(conf_dir, certs_dir, files, certs):
        raise BadBundle("bundle generation does not match its contents")
    return Bundle(generation, conf_dir, certs_dir, files, certs)


def is_key(path: str) -> bool:
    """Private keys are written 0600."""
    return path.endswith("privkey.pem") or path.endswith(".key")
