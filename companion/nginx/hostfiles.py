"""The operator's own per-host nginx files, the nginx-proxy way: `vhost.d/<host>` (else `default`) in a host's
servers, `vhost.d/<host>_location` (else `default_location`) in its locations, `htpasswd/<host>` for basic
auth, a client CA per host for mTLS, and `proxy.conf` in place of the proxy header snippet.

They are read here (never through a link, never blocking on a FIFO) and copied into the conf dir under a
name made of their content's digest, and the rendered config includes those copies. So nginx reads exactly
what was read; a changed file changes the rendered config, which is then tested and reloaded; and a file
nginx refuses (its error names the copy) is replaced by its last good version, or left out, while every
other host moves on.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from companion.core.ports import ApplyResult
from companion.core.values import InvalidValue, parse_hostname
from companion.util.logsafe import printable
from companion.util.safefiles import UnsafeFile, read_regular, real_dir, write_atomic

log = logging.getLogger(__name__)

VHOST, HTPASSWD, CLIENT_CA, PROXY = "vhost", "htpasswd", "client_ca", "proxy"
COPY_PREFIX = "companion-user-"
_SUFFIX = {VHOST: ".inc", PROXY: ".inc", HTPASSWD: ".htpasswd", CLIENT_CA: ".pem"}
DEFAULT, LOCATION_SUFFIX = "default", "_location"
MAX_BYTES = 1024 * 1024
# Enough for one nginx refusal per file a pass may use, without letting a pathological case spin.
MAX_ROUNDS = 8
GOOD_FILE = "companion/host-files.json"  # in the certs dir: which copy is each file's last good version
_COPY_RE = re.compile(rf"^{COPY_PREFIX}[0-9a-f]{{24}}\.(?:inc|htpasswd|pem)\Z")
_HTPASSWD_LINE = re.compile(r"^[^:\s#][^:\s]{0,254}:[!-~]{1,1024}\Z")
_VERIFY_CLIENT = re.compile(r"(?:^|[\s;{}])ssl_verify_client\s+([\"']?)(?:on|optional|optional_no_ca)\1\s*;")

Key = tuple[str, str]  # (kind, file name in its folder)
ACCESS_KINDS = (HTPASSWD, CLIENT_CA)  # files that guard a host: one that cannot be used closes it


@dataclass(frozen=True)
class Dirs:
    """Where the files are, from the settings (VHOST_DIR, HTPASSWD_DIR, CLIENT_CA_DIR, PROXY_CONF)."""

    vhost: str
    htpasswd: str
    client_ca: str
    proxy_conf: str

    def folder(self, kind: str) -> Path:
        return Path({VHOST: self.vhost, HTPASSWD: self.htpasswd, CLIENT_CA: self.client_ca}[kind])


@dataclass(frozen=True)
class UserFile:
    kind: str
    name: str  # its name in its folder: a host, `default`, `<host>_location`, ...
    source: str  # its path, for messages
    content: str

    @functools.cached_property
    def digest(self) -> str:
        return hashlib.sha256(self.content.encode("utf-8", "surrogateescape")).hexdigest()

    @functools.cached_property
    def copy_name(self) -> str:
        """The copy's name in the conf dir: its content's digest, so a change renders a new include."""
        return f"{COPY_PREFIX}{self.digest[:24]}{_SUFFIX[self.kind]}"


@dataclass(frozen=True)
class Found:
    """The files on disk that the served hosts would use, and why others next to them are not used."""

    files: Mapping[Key, UserFile] = field(default_factory=dict)
    problems: tuple[str, ...] = ()
    unusable: frozenset[Key] = frozenset()  # there, but not a regular file of at most MAX_BYTES
    # host -> the file that makes it require a client certificate: its CLIENT_CA_DIR file (usable or not), else
    # the vhost.d file its servers include when that sets `ssl_verify_client`
    client_certs: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Chosen:
    """The files a render uses, by (kind, name): read from disk, or a refused file's last good version; and
    the hosts whose htpasswd or client CA is there but unusable with no last good: they answer 403 (an
    access control that cannot be applied closes the host rather than open it)."""

    files: Mapping[Key, UserFile] = field(default_factory=dict)
    closed: frozenset[str] = frozenset()

    def server(self, host: str) -> UserFile | None:
        return self.files.get((VHOST, host)) or self.files.get((VHOST, DEFAULT))

    def location(self, host: str) -> UserFile | None:
        return self.files.get((VHOST, host + LOCATION_SUFFIX)) or self.files.get((VHOST, DEFAULT + LOCATION_SUFFIX))

    def htpasswd(self, host: str) -> UserFile | None:
        return self.files.get((HTPASSWD, host))

    def client_ca(self, host: str) -> UserFile | None:
        return self.files.get((CLIENT_CA, host))

    def proxy(self) -> UserFile | None:
        return self.files.get((PROXY, PROXY))


NONE = Chosen()


def used(kind: str, name: str, hosts: set[str]) -> bool:
    """True when a file of `kind` named `name` is one a served host uses. Wildcard hosts use none: nginx
    reads `*` in an include path as a pattern, and a file name must be exactly the host it is for."""
    if kind == VHOST:
        if name in (DEFAULT, DEFAULT + LOCATION_SUFFIX):
            return True
        name = name.removesuffix(LOCATION_SUFFIX)
    return name in hosts and "*" not in name


def normalised(kind: str, name: str) -> str | None:
    """The name a file stands for once its host part is normalised as VIRTUAL_HOST is (lowercase, punycode):
    `Upper.example.com` and `bücher.example` are the files of `upper.example.com` and `xn--bcher-kva.example`.
    None for a name that is no host's (nor `default`, `default_location` spelled exactly)."""
    if kind == VHOST and name in (DEFAULT, DEFAULT + LOCATION_SUFFIX):
        return name
    suffix = LOCATION_SUFFIX if kind == VHOST and name.endswith(LOCATION_SUFFIX) else ""
    try:
        host = parse_hostname(name.removesuffix(suffix), wildcard=False)
    except InvalidValue:
        return None
    return None if host == DEFAULT else host + suffix


def scan(dirs: Dirs, hosts: Iterable[str]) -> Found:
    """Read the files the hosts use: one listing per folder, then only names that normalise to a served host's
    (validated, so no `/` or `..`); a link, FIFO, folder or oversized file there is reported and not used,
    never followed or opened. When several names stand for one host (`a.example.com`, `A.example.com`), the
    exact one is used, else the first by code point, and the others are reported as not used."""
    served = set(hosts)
    named: dict[Key, list[str]] = {}
    for kind in (VHOST, HTPASSWD, CLIENT_CA):
        for name in _names(dirs.folder(kind)):
            key = name if used(kind, name, served) else normalised(kind, name)
            if key is not None and used(kind, key, served):
                named.setdefault((kind, key), []).append(name)
    files: dict[Key, UserFile] = {}
    problems: list[str] = []
    unusable: set[Key] = set()
    paths: dict[Key, Path] = {}
    for (kind, key), names in sorted(named.items()):
        first, *others = sorted(names, key=lambda name: (name != key, name))
        paths[(kind, key)] = dirs.folder(kind) / first
        problems.extend(
            printable(f"{dirs.folder(kind) / other}: not used ({paths[(kind, key)]} is the file for {key})")
            for other in others
        )
    paths[(PROXY, PROXY)] = Path(dirs.proxy_conf)
    for (kind, name), path in paths.items():
        try:
            data = read_regular(path, MAX_BYTES)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except (UnsafeFile, OSError) as exc:
            problems.append(printable(f"{path}: not used ({exc.strerror or exc})"))
            unusable.add((kind, name))
            continue
        files[(kind, name)] = UserFile(kind, name, str(path), data.decode("utf-8", "surrogateescape"))
    return Found(files, tuple(problems), frozenset(unusable), _client_certs(served, files, unusable, paths))


def _client_certs(
    hosts: set[str], files: Mapping[Key, UserFile], unusable: set[Key], paths: Mapping[Key, Path]
) -> dict[str, str]:
    """The hosts that require a client certificate, each with the file that says so (each vhost.d file is
    searched once: `default` may stand for thousands of hosts)."""
    servers = [key for key in files if key[0] == VHOST and not key[1].endswith(LOCATION_SUFFIX)]
    verifying = {key for key in servers if verifies_clients(files[key].content)}
    guarded: dict[str, str] = {}
    for host in sorted(hosts):
        server = (VHOST, host) if (VHOST, host) in files else (VHOST, DEFAULT)
        if (CLIENT_CA, host) in files or (CLIENT_CA, host) in unusable:
            guarded[host] = printable(str(paths[(CLIENT_CA, host)]))
        elif server in verifying:
            guarded[host] = printable(files[server].source)
    return guarded


def verifies_clients(content: str) -> bool:
    """True when an nginx file sets `ssl_verify_client` to anything but `off` (nginx-proxy users' way to ask
    for client certificates, in `vhost.d/<host>`). Comments are skipped; nothing else is interpreted."""
    text = "\n".join(line.partition("#")[0] for line in content.splitlines())
    return bool(_VERIFY_CLIENT.search(text))


def _names(folder: Path) -> frozenset[str]:
    """The entry names in `folder`; none when it is missing or not a folder (the operator's to create)."""
    try:
        return frozenset(os.listdir(folder))
    except OSError:
        return frozenset()


def htpasswd_problem(content: str) -> str:
    """Why nginx could not use an htpasswd file ('' when it can): nginx -t never reads it, so it is checked here."""
    users = 0
    for number, line in enumerate(content.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        if not _HTPASSWD_LINE.match(line):
            return f"line {number} is not user:hash"
        users += 1
    return "" if users else "no user in the file"


class UserFiles:
    """What the loop remembers across passes: the last version of each file nginx accepted, and which
    contents (by digest) nginx refused, so a refused file is not tried again until it changes."""

    def __init__(self, certs_dir: Path | None = None, conf_dir: Path | None = None) -> None:
        """With `certs_dir` and `conf_dir`, the last good versions survive a restart (GOOD_FILE names their
        copies in the conf dir); without, they are kept in memory only."""
        self.certs_dir = certs_dir
        self.good: dict[Key, UserFile] = load_good(certs_dir, conf_dir) if certs_dir and conf_dir else {}
        self.refused: dict[str, str] = {}  # digest -> nginx's reason

    def choose(self, found: Found, trial: Mapping[str, str] | None = None) -> tuple[Chosen, set[str]]:
        """The files to render: each as found, or, when refused (or left out on `trial`), its last good version."""
        refused = {**self.refused, **(trial or {})}
        chosen: dict[Key, UserFile] = {}
        problems = set(found.problems)
        closed: set[str] = set()
        for key in sorted(k for k in found.unusable if k[0] in ACCESS_KINDS):
            last = self.good.get(key)
            if last is not None:
                chosen[key] = last
            else:
                closed.add(key[1])
                problems.add(printable(f"host {key[1]}: its {key[0]} file cannot be used; it answers 403 until it can"))
        for key, file in found.files.items():
            if file.kind == HTPASSWD and file.digest not in refused:
                reason = htpasswd_problem(file.content)
                if reason:
                    self.refused[file.digest] = refused[file.digest] = reason
            reason = refused.get(file.digest)
            if reason is None:
                chosen[key] = file
                continue
            last = self.good.get(key)
            if last is not None and last.digest not in refused:
                chosen[key] = last
                outcome = "its last good version stays in use"
            elif key[0] in ACCESS_KINDS:
                closed.add(key[1])
                outcome = f"{key[1]} answers 403 until it changes"
            else:
                outcome = "left out until it changes"
            problems.add(printable(f"{file.source}: refused ({reason}); {outcome}"))
        return Chosen(chosen, frozenset(closed)), problems

    def apply(
        self,
        found: Found,
        render: Callable[[Chosen], Mapping[str, str]],
        apply: Callable[[Mapping[str, str]], ApplyResult],
        conf_dir: Path,
    ) -> tuple[ApplyResult, set[str]]:
        """Render and apply. When nginx refuses, the files to blame are those its error names (a copy's path);
        when it names none (`unknown "x" variable` names no file), those not yet accepted, tried one at a time.
        Each is refused and the rest applied, so one broken file holds back only the hosts that use it."""
        rounds = 0

        def attempt(trial: Mapping[str, str] | None = None) -> tuple[ApplyResult, Chosen, set[str], Mapping[str, str]]:
            nonlocal rounds
            rounds += 1
            chosen, problems = self.choose(found, trial)
            files = render(chosen)
            return apply(files), chosen, problems, files

        result, chosen, problems, files = attempt()
        # Only nginx -t's refusals are the files' doing (not a full disk, nor a failed reload).
        while not result.ok and result.refused and rounds < MAX_ROUNDS:
            reason = _nginx_words(result.refused)
            fresh = [file for file in chosen.files.values() if file.digest not in self.refused]
            named = [file for file in fresh if file.copy_name in result.error or file.source in result.error]
            if named:
                self.refused.update((file.digest, reason) for file in named)
                result, chosen, problems, files = attempt()
                continue
            suspects = [file for file in fresh if self.good.get((file.kind, file.name)) != file]
            if not suspects:
                break
            for suspect in suspects:
                if rounds >= MAX_ROUNDS:
                    break
                result, chosen, problems, files = attempt({suspect.digest: reason})
                if result.ok:
                    self.refused[suspect.digest] = reason
                    problems = self.choose(found)[1]
                    break
            else:
                before = dict(self.refused)
                self.refused.update((file.digest, reason) for file in suspects)
                result, chosen, problems, files = attempt()
                if not result.ok:  # not theirs after all (a foreign file in conf.d, say): blame none of them
                    self.refused = before
                    problems = self.choose(found)[1]
                    break
        if result.ok:
            if dict(chosen.files) != self.good and self.certs_dir is not None:
                save_good(self.certs_dir, chosen.files)
            self.good = dict(chosen.files)
            present = {file.digest for file in found.files.values()}
            self.refused = {digest: why for digest, why in self.refused.items() if digest in present}
            remove_stale_copies(conf_dir, files)
        return result, problems


def load_good(certs_dir: Path, conf_dir: Path) -> dict[Key, UserFile]:
    """The last good versions recorded before a restart, read back from their copies in the conf dir; an
    entry whose copy is gone or does not match its digest is dropped, an unreadable record reported."""
    path = certs_dir / GOOD_FILE
    try:
        entries = json.loads(read_regular(path, MAX_BYTES))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return {}
    good: dict[Key, UserFile] = {}
    for entry in entries if isinstance(entries, list) else ():
        try:
            kind, name, source, copy = (str(entry[k]) for k in ("kind", "name", "source", "copy"))
            if kind not in _SUFFIX or not _COPY_RE.match(copy):
                continue
            content = read_regular(conf_dir / copy, MAX_BYTES).decode("utf-8", "surrogateescape")
        except (OSError, TypeError, KeyError):
            continue
        file = UserFile(kind, name, source, content)
        if file.copy_name == copy:
            good[(kind, name)] = file
    return good


def save_good(certs_dir: Path, files: Mapping[Key, UserFile]) -> None:
    entries = [
        {"kind": f.kind, "name": f.name, "source": f.source, "copy": f.copy_name} for _, f in sorted(files.items())
    ]
    try:
        real_dir(certs_dir, "companion")
        write_atomic(certs_dir / GOOD_FILE, json.dumps(entries, indent=1) + "\n", mode=0o600)
    except OSError as exc:
        log.error("cannot save %s: %s", certs_dir / GOOD_FILE, exc.strerror or exc)


def _nginx_words(text: str) -> str:
    """nginx's refusal, short enough for one log line."""
    return text if len(text) <= 300 else text[:300] + "..."


def remove_stale_copies(conf_dir: Path, files: Mapping[str, str]) -> None:
    """Copies no rendered file includes any more (unlink removes the entry itself, never a link's target)."""
    try:
        entries = [entry.name for entry in os.scandir(conf_dir)]
    except OSError:
        return
    for name in entries:
        if name.startswith(COPY_PREFIX) and name not in files:
            try:
                (conf_dir / name).unlink()
            except OSError as exc:
                log.warning("cannot remove %s: %s", conf_dir / name, exc.strerror or exc)
