"""Render the desired state into nginx files with jinja2 (pure: same input, byte-identical output)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import PurePosixPath

import jinja2

from companion.core.plan import Desired, HttpAnswer, Server
from companion.core.values import RootAnswer
from companion.nginx.hostfiles import NONE, Chosen, UserFile
from companion.settings.config import SslPolicy

MAIN_FILE = "companion.conf"
# Included by the main file only; their names do not end in .conf so nginx's conf.d glob skips them.
SNIPPETS = {
    "acme": ("companion-acme.inc", "acme-challenge.inc.j2"),
    "tls": ("companion-tls.inc", "tls.inc.j2"),
    "proxy": ("companion-proxy.inc", "proxy.inc.j2"),
    "proxy_close": ("companion-proxy-close.inc", "proxy.inc.j2"),  # VIRTUAL_KEEPALIVE=off
    "internal": ("companion-internal.inc", "network-internal.inc.j2"),
}
DHPARAM_FILE = "companion-ffdhe2048.pem"
HTTP2_DIRECTIVE_SINCE = (1, 25, 1)
# Idle connections each worker keeps per upstream: enough for a busy app's concurrency between
# requests (with 16, 50 clients in flight made nginx close and reopen the rest: 0.71-0.83 of a tuned
# reference's requests/s in bench/datapath.py; 32 reaches it), few enough that thousands of upstreams
# hold no more sockets than the apps would see anyway (+13 MB at 10,000 sites, no nginx -t cost).
KEEPALIVE = 32
# Backends share a host or an overlay with nginx and accept in milliseconds; a connect that takes longer
# is to one that is gone (a Swarm node that died drops packets), and nginx should try the next server.
CONNECT_TIMEOUT = "3s"


@dataclass(frozen=True)
class RenderOptions:
    conf_dir: str
    webroot: str
    http_port: int = 80
    https_port: int = 443
    nginx_version: tuple[int, ...] = (1, 25, 1)
    trust_downstream_proxy: bool = False
    ssl_policy: SslPolicy = SslPolicy.INTERMEDIATE
    enable_ipv6: bool = False
    external_http_port: int = 0  # 0: http_port
    external_https_port: int = 0  # 0: https_port
    non_get_redirect: int = 301
    default_root: RootAnswer | None = RootAnswer(404)  # DEFAULT_ROOT; None: no `location /` is added
    acme_proxy: str = ""  # Swarm agents: tokens are passed to this URL (the agent's relay), not read from a webroot
    server_tokens: str = ""  # "": nginx.conf's
    access_log: str = ""  # "": nginx.conf's; "off"; else the file LOG_JSON or a custom LOG_FORMAT writes to
    access_log_format: str = ""  # a custom LOG_FORMAT (nginx-proxy's); "": JSON
    access_log_escape: str = "default"
    resolvers: tuple[str, ...] = ()


@dataclass(frozen=True)
class HostIncludes:
    """A host's own files as the lines its servers and locations get (each line starts with its newline
    and indent; made here once per host, not by a template macro per server)."""

    server: str = ""  # basic auth and the vhost.d include, at the end of each proxying server
    location: str = ""  # the <host>_location include, in each proxied location
    client_ca: str = ""  # mTLS, in the HTTPS server


NO_FILES = HostIncludes()


def _host_includes(server: str, location: str, htpasswd: str, client_ca: str, host: str, closed: bool) -> HostIncludes:
    """The lines for the copies at these paths ("" for none). `closed` (an access file cannot be used): every
    proxied location answers 403, while the ACME challenge, a location of its own, stays served."""
    server_lines = ""
    if htpasswd:
        server_lines += f'\n    auth_basic "{host}";\n    auth_basic_user_file {htpasswd};'
    if server:
        server_lines += f"\n    include {server};"
    return HostIncludes(
        server_lines,
        ("\n        return 403;" if closed else "") + (f"\n        include {location};" if location else ""),
        f"\n    ssl_client_certificate {client_ca};\n    ssl_verify_client on;" if client_ca else "",
    )


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("companion.nginx", "templates"),
    autoescape=False,
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=False,
)

# Shipped, never generated: RFC 7919's ffdhe2048 group. Read once, not on every pass.
_DHPARAM = resources.files("companion.nginx").joinpath("templates/ffdhe2048.pem").read_text()


def _server_lines(options: RenderOptions) -> str:
    """The proxy-wide directives every server repeats (the same text for all: made once, not per server)."""
    lines = []
    if options.server_tokens:
        lines.append(f"server_tokens {options.server_tokens};")
    if options.access_log == "off":
        lines.append("access_log off;")
    elif options.access_log:
        named = "companion_custom" if options.access_log_format else "companion_json"
        lines.append(f"access_log {options.access_log} {named};")
    if options.resolvers:
        lines.append(f"resolver {' '.join(options.resolvers)};")
    return "".join(f"\n    {line}" for line in lines)


def _quoted(text: str) -> str:
    """`text` as one single-quoted nginx string: a backslash or quote in it stays text ("" for none)."""
    if not text:
        return ""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


@dataclass
class Block:
    """One server block: the first of its servers renders it, for every name in `names`."""

    https: bool
    server: Server
    names: list[str]
    # The proxy headers set once in the server, which its locations inherit (nginx builds them per level that
    # sets any: once per location cost 0.9 MB per 100 locations, bench/memory.py). Not under PROXY_CONF, nor
    # for a host with files of its own: a proxy_set_header in them would stop the inheritance, so each of its
    # locations includes the snippet as before.
    shared: bool

    @property
    def server_name(self) -> str:
        return "\n                ".join(self.names)  # one name a line, under the first


def _blocks(
    servers: tuple[Server, ...], includes: dict[str, HostIncludes], merge: bool, proxy_conf: bool
) -> list[Block]:
    """The server blocks, in the servers' order. With `merge`, hosts whose block would read the same but for
    its server_name share one block (the hosts of one container, every host that redirects to HTTPS): nginx
    allocates the settings of a server and of each of its locations once per block (bench/memory.py).
    Never merged: default servers, and hosts with files of their own (the realm of their basic auth and
    their includes are theirs)."""
    blocks: list[Block] = []
    seen: dict[tuple, Block] = {}

    def add(https: bool, server: Server, key: tuple | None) -> None:
        own = includes.get(server.host, NO_FILES)
        block = Block(https, server, [server.host], shared=not proxy_conf and not (own.server or own.location))
        if merge and key is not None and own == NO_FILES:
            if key in seen:
                seen[key].names.append(server.host)
                return
            seen[key] = block
        blocks.append(block)

    for server in servers:
        if server.serves_http:
            answer = server.http
            locations = server.locations if answer is HttpAnswer.PROXY else ()
            add(False, server, None if server.default_http else (False, answer, locations))
        if server.cert:
            hsts = server.hsts if server.https_method.value in ("redirect", "nohttp") and not server.placeholder else ""
            add(True, server, None if server.default_https else (True, server.cert, hsts, server.locations))
    return blocks


def render(desired: Desired, options: RenderOptions, user: Chosen = NONE) -> dict[str, str]:
    """Return every file the companion owns in the conf dir, by file name (`user`'s copies included)."""
    conf_dir = PurePosixPath(options.conf_dir)
    files = {key: str(conf_dir / name) for key, (name, _) in SNIPPETS.items()}
    files["dhparam"] = str(conf_dir / DHPARAM_FILE)
    copies: dict[str, str] = {}

    def copy(file: UserFile | None) -> str:
        if file is None:
            return ""
        copies[file.copy_name] = file.content
        return str(conf_dir / file.copy_name)

    proxy_conf = copy(user.proxy())
    if proxy_conf:  # PROXY_CONF replaces both header snippets (with and without keepalive)
        files["proxy"] = files["proxy_close"] = proxy_conf
    # Only when a file is in use: otherwise the template skips every lookup (no cost for sites without any).
    includes = {
        server.host: _host_includes(
            copy(user.server(server.host)),
            copy(user.location(server.host)),
            copy(user.htpasswd(server.host)),
            copy(user.client_ca(server.host)),
            server.host,
            server.host in user.closed,
        )
        for server in (desired.servers if user.files or user.closed else ())
    }
    names = len(desired.servers) + 1
    external_http = options.external_http_port or options.http_port
    external_https = options.external_https_port or options.https_port
    context = {
        "files": files,
        "webroot": options.webroot,
        "acme_proxy": options.acme_proxy,
        "http_port": options.http_port,
        "https_port": options.https_port,
        "https_port_suffix": "" if external_https == 443 else f":{external_https}",
        # Published ports that differ from the listening ones: tell apps the port clients used.
        "external_ports": (external_http, external_https)
        if (external_http, external_https) != (options.http_port, options.https_port)
        else None,
        "trust_downstream_proxy": options.trust_downstream_proxy,
        "ssl_policy": options.ssl_policy.value,
        "ipv6": options.enable_ipv6,
        "non_get_redirect": options.non_get_redirect,
        "http2_directive": options.nginx_version >= HTTP2_DIRECTIVE_SINCE,
        "http2_in_listen": options.nginx_version < HTTP2_DIRECTIVE_SINCE,
        # A bucket must hold the longest name plus nginx's per-entry overhead.
        "hash_bucket_size": max(64, _next_power_of_two(desired.longest_name + 32)),
        "hash_max_size": max(512, _next_power_of_two(names * 2)),
        "default_root": options.default_root,
        "default_http_taken": desired.default_http_taken,
        "default_https_taken": desired.default_https_taken,
        # Without merging when a custom LOG_FORMAT or PROXY_CONF may name $server_name (a block's first name).
        "blocks": _blocks(
            desired.servers,
            includes,
            merge=not proxy_conf and "server_name" not in options.access_log_format,
            proxy_conf=bool(proxy_conf),
        ),
        "upstreams": desired.upstreams,
        "default_cert": desired.default_cert,
        "keepalive": KEEPALIVE,
        "connect_timeout": CONNECT_TIMEOUT,
        "includes": includes,
        "server_lines": _server_lines(options),
        "proxy_conf": bool(proxy_conf),
        "json_log": options.access_log not in ("", "off") and not options.access_log_format,
        "custom_log": _quoted(options.access_log_format) if options.access_log not in ("", "off") else "",
        "custom_log_escape": options.access_log_escape,
    }
    out = {MAIN_FILE: _ENV.get_template("companion.conf.j2").render(context)}
    for key, (name, template) in SNIPPETS.items():
        out[name] = _ENV.get_template(template).render(context, close=key == "proxy_close")
    out[DHPARAM_FILE] = _DHPARAM
    out.update(sorted(copies.items()))
    return out
