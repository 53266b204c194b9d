"""Check rendered files with the host's real ``nginx -t`` in a private prefix (no daemon is started).

Layout (the same shape as ``tests/harness/nginx.py`` uses for a running nginx)::

    <prefix>/nginx.conf      user root root; pid, error_log and temp paths inside <prefix>;
                             http { include /etc/nginx/mime.types; include <conf_dir>/*.conf; }
    <prefix>/conf.d/         where the companion's files go (RenderOptions.conf_dir)
    <prefix>/webroot/        the ACME webroot
    <prefix>/certs/          a self-signed certificate and key (``CertFiles``) for HTTPS servers

nginx missing is a test failure, never a skip: the proof that generated config is valid is the point.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from companion.plan import CertFiles
from companion.render import RenderOptions
from tests.harness.certs import self_signed

NGINX = "/usr/sbin/nginx"

NGINX_CONF = """\
user root root;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;

events {{ }}

http {{
    include /etc/nginx/mime.types;
    client_body_temp_path {prefix}/tmp/client_body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    include {conf_dir}/*.conf;
}}
"""


def nginx_binary() -> str:
    """The nginx executable, or fail the test loudly (a missing nginx must not look like a pass)."""
    found = NGINX if Path(NGINX).exists() else shutil.which("nginx")
    if not found:
        pytest.fail(f"{NGINX} is missing: apt-get install nginx (these tests prove config with the real nginx -t)")
    return found


@dataclass(frozen=True)
class NginxLayout:
    prefix: Path

    @property
    def conf_dir(self) -> Path:
        return self.prefix / "conf.d"

    @property
    def conf_path(self) -> Path:
        return self.prefix / "nginx.conf"

    @property
    def webroot(self) -> Path:
        return self.prefix / "webroot"

    def cert(self, *, ocsp: bool = False) -> CertFiles:
        return self_signed(self.prefix / "certs", ocsp=ocsp)

    def options(self, **overrides: object) -> RenderOptions:
        """RenderOptions pointing at this layout (nginx 1.22 syntax unless overridden)."""
        values: dict[str, object] = {
            "conf_dir": str(self.conf_dir),
            "webroot": str(self.webroot),
            "nginx_version": (1, 22, 1),
        }
        values.update(overrides)
        return RenderOptions(**values)  # type: ignore[arg-type]

    @property
    def test_command(self) -> str:
        """A shell command for ``NginxControl`` that tests this layout."""
        return f"{shlex.quote(nginx_binary())} -t -q -p {shlex.quote(str(self.prefix))} -c {self.conf_path}"

    def write(self, files: Mapping[str, str], *, clean: bool = True) -> None:
        """Put ``files`` into the conf dir (removing what was there first unless ``clean`` is off)."""
        if clean:
            for old in self.conf_dir.iterdir():
                old.unlink()
        for name, content in files.items():
            (self.conf_dir / name).write_text(content)

    def test(self) -> tuple[bool, str]:
        """Run the real ``nginx -t`` on what is in the conf dir; (ok, nginx's output)."""
        done = subprocess.run(
            [nginx_binary(), "-t", "-p", str(self.prefix), "-c", str(self.conf_path)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return done.returncode == 0, (done.stderr + done.stdout).strip()

    def check(self, files: Mapping[str, str]) -> tuple[bool, str]:
        self.write(files)
        return self.test()


def make_layout(prefix: Path) -> NginxLayout:
    """Create the private prefix: nginx.conf, conf.d, webroot, temp dirs."""
    nginx_binary()
    layout = NginxLayout(prefix)
    for sub in ("conf.d", "webroot", "tmp", "logs"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    layout.conf_path.write_text(NGINX_CONF.format(prefix=prefix, conf_dir=layout.conf_dir))
    return layout


def nginx_check(files: Mapping[str, str], prefix: Path) -> tuple[bool, str]:
    """One-shot: write ``files`` (rendered with ``make_layout(prefix).options()``) and run ``nginx -t``."""
    return make_layout(prefix).check(files)


@dataclass(frozen=True)
class Directive:
    """One nginx directive: its name, its arguments (quotes removed) and its block, if it has one."""

    name: str
    args: tuple[str, ...]
    block: tuple[Directive, ...] | None = None

    def find(self, name: str) -> list[Directive]:
        return [d for d in self.block or () if d.name == name]


def tokenize(text: str) -> list[tuple[str, bool]]:
    """nginx's lexer in small: words, quoted strings and the three separators ``;`` ``{`` ``}``.

    Returns (token, quoted) pairs; ``#`` starts a comment outside quotes.
    """
    tokens: list[tuple[str, bool]] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif ch in ";{}":
            tokens.append((ch, False))
            i += 1
        elif ch in "\"'":
            j, word = i + 1, []
            while j < n and text[j] != ch:
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                word.append(text[j])
                j += 1
            if j >= n:
                raise ValueError(f"unterminated quote at offset {i}")
            tokens.append(("".join(word), True))
            i = j + 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in ";{}\"'":
                j += 2 if text[j] == "\\" else 1
            tokens.append((text[i:j], False))
            i = j
    return tokens


def parse_conf(text: str) -> tuple[Directive, ...]:
    """Parse an nginx file into directives; raises ValueError on unbalanced braces or a missing ``;``."""
    tokens = tokenize(text)
    pos = 0

    def block(top: bool) -> tuple[Directive, ...]:
        nonlocal pos
        out: list[Directive] = []
        words: list[str] = []
        while pos < len(tokens):
            token, quoted = tokens[pos]
            pos += 1
            if quoted or token not in ";{}":
                words.append(token)
            elif token == ";":
                if not words:
                    raise ValueError("empty directive")
                out.append(Directive(words[0], tuple(words[1:])))
                words = []
            elif token == "{":
                if not words:
                    raise ValueError("block without a name")
                out.append(Directive(words[0], tuple(words[1:]), block(top=False)))
                words = []
            else:  # "}"
                if top or words:
                    raise ValueError("unexpected }")
                return tuple(out)
        if not top or words:
            raise ValueError("unexpected end of file")
        return tuple(out)

    return block(top=True)


def walk(directives: tuple[Directive, ...], parents: tuple[str, ...] = ()):  # noqa: ANN201
    """Every directive with the names of the blocks around it."""
    for directive in directives:
        yield parents, directive
        if directive.block is not None:
            yield from walk(directive.block, (*parents, directive.name))
