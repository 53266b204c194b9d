"""The host's real nginx in a private prefix, the one nginx harness of the tests.

Two uses, one module (they were tests/harness/nginx.py and tests/harness/nginxcheck.py, each with its own
nginx lookup, nginx.conf and command line):

* `HostNginx`: a running nginx on loopback ports chosen per instance, for requests through it.
* `NginxLayout` / `make_layout` / `nginx_check`: the real ``nginx -t`` on rendered files, no daemon::

    <prefix>/nginx.conf      user root root; pid, error_log and temp paths inside <prefix>;
                             http { include /etc/nginx/mime.types; include <conf_dir>/*.conf; }
    <prefix>/conf.d/         where the companion's files go (RenderOptions.conf_dir)
    <prefix>/webroot/        the ACME webroot
    <prefix>/certs/          a self-signed certificate and key (``CertFiles``) for HTTPS servers

  nginx missing is a test failure, never a skip: the proof that generated config is valid is the point.

Plus `parse_conf`, a small nginx config parser for assertions on rendered text.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest

from companion.core.certificates import CertFiles
from companion.nginx.render import RenderOptions
from tests.harness.certs import self_signed

from .ports import free_port
from .wait import wait_gone, wait_until

log = logging.getLogger(__name__)

NGINX = "/usr/sbin/nginx"

CONF_TEMPLATE = """\
user root root;
daemon on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;

events {{ worker_connections 1024; }}

http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log {prefix}/access.log;
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
        pytest.fail(f"{NGINX} is missing: apt-get install nginx (these tests prove config with the real nginx)")
    return found


def nginx_argv(prefix: str | os.PathLike[str], conf_path: str | os.PathLike[str]) -> list[str]:
    """nginx with a private prefix and config: what every run, check and signal of the harness starts from."""
    return [nginx_binary(), "-p", str(prefix), "-c", str(conf_path)]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


class HostNginx:
    """``/usr/sbin/nginx`` with its own prefix, pid file and logs; it includes ``conf_dir/*.conf``.

    It listens on nothing by itself: the config under test adds ``listen`` directives, typically on
    ``127.0.0.1:{http_port}`` and ``127.0.0.1:{https_port}``, two free ports chosen at construction.
    """

    def __init__(
        self, conf_dir: str | os.PathLike[str] | None = None, prefix: str | os.PathLike[str] | None = None
    ) -> None:
        nginx_binary()
        self.prefix = Path(prefix) if prefix else Path(tempfile.mkdtemp(prefix="ctest-nginx-"))
        self.conf_dir = Path(conf_dir) if conf_dir else self.prefix / "conf.d"
        self.http_port = free_port()
        self.https_port = free_port()
        while self.https_port == self.http_port:
            self.https_port = free_port()
        self.conf_path = self.prefix / "nginx.conf"
        self.pid_path = self.prefix / "nginx.pid"
        self.error_log = self.prefix / "error.log"
        self.access_log = self.prefix / "access.log"
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        (self.prefix / "tmp").mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(CONF_TEMPLATE.format(prefix=self.prefix, conf_dir=self.conf_dir))

    # -- commands ----------------------------------------------------------------------------------
    @property
    def base_argv(self) -> list[str]:
        """nginx with this instance's prefix, config and startup error log."""
        return [*nginx_argv(f"{self.prefix}/", self.conf_path), "-e", str(self.error_log)]

    @property
    def test_command(self) -> str:
        """Shell command that checks the config (for the companion's ``--nginx-test``)."""
        return shlex.join([*self.base_argv, "-t", "-q"])

    @property
    def reload_command(self) -> str:
        """Shell command that reloads this nginx (for the companion's ``--nginx-reload``)."""
        return shlex.join([*self.base_argv, "-s", "reload"])

    def check(self) -> subprocess.CompletedProcess[str]:
        """Run ``nginx -t`` on the current config; the result carries stderr for assertions."""
        return subprocess.run([*self.base_argv, "-t", "-q"], capture_output=True, text=True, check=False)

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> None:
        """Start the master (it daemonizes) and wait for its pid file and first worker."""
        proc = subprocess.run(self.base_argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"nginx failed to start: {proc.stderr}\n{self.error_log_text()}")
        wait_until(
            lambda: self.master_pid() and self.worker_pids(),
            timeout,
            0.02,
            "nginx to come up",
            logs=[("nginx error log", self.error_log_text)],
        )

    def reload(self, timeout: float = 10.0) -> None:
        """Run the reload command and wait until a new generation of workers runs."""
        before = set(self.worker_pids())
        proc = subprocess.run(shlex.split(self.reload_command), capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"nginx reload failed: {proc.stderr}")
        wait_until(
            lambda: set(self.worker_pids()) - before,
            timeout,
            0.02,
            "nginx to start new workers",
            logs=[("nginx error log", self.error_log_text)],
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the master (SIGTERM, then SIGKILL) and its workers; no-op when not running."""
        pid = self.master_pid()
        if pid is None:
            return
        workers = self.worker_pids()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        wait_gone(lambda: _alive(pid) or any(_alive(w) for w in workers), timeout, 0.02)
        for p in [pid, *workers]:
            if _alive(p):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            self.pid_path.unlink()

    def cleanup(self) -> None:
        """Stop and delete the prefix directory."""
        self.stop()
        shutil.rmtree(self.prefix, ignore_errors=True)

    # -- inspection --------------------------------------------------------------------------------
    def master_pid(self) -> int | None:
        """Pid of the running master, from the pid file, or None."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _alive(pid) else None

    def worker_pids(self) -> list[int]:
        """Pids of the master's live children (workers, cache helpers), from /proc."""
        master = self.master_pid()
        if master is None:
            return []
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == master and fields[0] not in ("Z", "X"):
                pids.append(int(entry.name))
        return sorted(pids)

    def _titles(self) -> list[str]:
        """Process titles of the master's live children ('nginx: worker process', '... is shutting down')."""
        titles = []
        for pid in self.worker_pids():
            with contextlib.suppress(OSError):
                titles.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip())
        return titles

    def settle(self, timeout: float = 5.0) -> None:
        """Wait until one generation of workers answers: after a reload, nginx runs the new worker beside
        the old one for about 100 ms before telling the old one to quit, and the old one serves its
        last connections while 'shutting down'. A request sent in that time can meet the old config.

        Returns at once when nginx is not running. A test that holds connections open keeps an old
        worker alive: after `timeout` the request goes ahead and the titles are in the debug log."""
        titles: list[str] = []

        def settled() -> bool:
            if self.master_pid() is None:
                return True
            titles[:] = self._titles()
            workers = [t for t in titles if "worker process" in t]
            return len(workers) == 1 and "shutting down" not in workers[0]

        try:
            wait_until(settled, timeout, 0.02, "one generation of nginx workers", errors=())
        except AssertionError:
            log.debug("nginx workers did not settle within %ss: %s", timeout, titles)

    def error_log_text(self) -> str:
        """Contents of the error log ('' if none yet)."""
        try:
            return self.error_log.read_text(errors="replace")
        except OSError:
            return ""

    def access_log_text(self) -> str:
        """Contents of the access log ('' if none yet)."""
        try:
            return self.access_log.read_text(errors="replace")
        except OSError:
            return ""

    # -- requests ----------------------------------------------------------------------------------
    def get(
        self,
        host: str,
        path: str = "/",
        https: bool = False,
        timeout: float = 2,
        context: ssl.SSLContext | None = None,
        port: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Message, bytes]:
        """GET ``path`` from 127.0.0.1 with ``Host: host``; return (status, headers, body).

        With ``https`` the TLS SNI is ``host``; without a ``context`` the server certificate is not
        verified (pass a context that trusts Pebble's root to verify it). Waits for one generation of
        workers first (`settle`), so an answer never comes from the config before the last reload.
        """
        self.settle()
        return http_get(
            "127.0.0.1",
            port or (self.https_port if https else self.http_port),
            host,
            path,
            https=https,
            timeout=timeout,
            context=context,
            headers=headers,
        )


def body(nginx: HostNginx, host: str, path: str = "/") -> tuple[int, str]:
    """Status and stripped text of a plain-HTTP GET through nginx with ``Host: host``."""
    status, _, data = nginx.get(host, path)
    return status, data.decode(errors="replace").strip()


def http_get(
    address: str,
    port: int,
    host: str,
    path: str = "/",
    https: bool = False,
    timeout: float = 2,
    context: ssl.SSLContext | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Message, bytes]:
    """GET from ``address:port`` with ``Host: host`` (and SNI ``host`` over TLS); no redirects followed."""
    if https:
        if context is None:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        conn: http.client.HTTPConnection = _SNIConnection(address, port, sni=host, context=context, timeout=timeout)
    else:
        conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Host", host)
        for k, v in (headers or {}).items():
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, resp.headers, body
    finally:
        conn.close()


class _SNIConnection(http.client.HTTPSConnection):
    """HTTPS connection to an address whose TLS server name (SNI, hostname check) is another name."""

    def __init__(self, address: str, port: int, sni: str, context: ssl.SSLContext, timeout: float):
        super().__init__(address, port, timeout=timeout, context=context)
        self._sni = sni
        self._ctx = context

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self._sni)


# -- `nginx -t` on rendered files, no daemon -------------------------------------------------------

CHECK_CONF = """\
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
        return shlex.join([*nginx_argv(self.prefix, self.conf_path), "-t", "-q"])

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
            [*nginx_argv(self.prefix, self.conf_path), "-t"],
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
    layout.conf_path.write_text(CHECK_CONF.format(prefix=prefix, conf_dir=layout.conf_dir))
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
