"""A fleet of containers covering every rendering feature, rendered through plan and render, and ways to
find server blocks in the result: shared by the render tests of every tier (pure text checks in
tests/unit, `nginx -t` proofs in tests/integration) so that no test module imports another."""

from __future__ import annotations

from dataclasses import replace

from companion.core import plan
from companion.core.certificates import CertFiles
from companion.core.container import ContainerInfo
from companion.loop.reconcile import render_options
from companion.nginx.render import RenderOptions, render
from companion.settings.config import Settings
from tests.harness.containers import app as c
from tests.harness.nginx import Directive, parse_conf

OPTIONS = RenderOptions(conf_dir="/etc/nginx/conf.d", webroot="/var/www/acme", nginx_version=(1, 22, 1))
# what the reconcile loop renders with for a companion configured with /conf and /webroot
LOOP_OPTIONS = render_options(Settings(conf_dir="/conf", webroot="/webroot"), (1, 26, 3))
PLACEHOLDER = CertFiles("/certs/default/fullchain.pem", "/certs/default/privkey.pem")
REAL = CertFiles("/certs/live/a/fullchain.pem", "/certs/live/a/privkey.pem")
REAL_OCSP = CertFiles("/certs/live/o/fullchain.pem", "/certs/live/o/privkey.pem", ocsp=True)
OLD, NEW = (1, 22, 1), (1, 27, 0)


def fleet() -> list[ContainerInfo]:
    """Many sites covering every feature: paths, dest, wildcard, IDN, every HTTPS method, conflicts."""
    out = [
        c("app", "10.0.0.2", VIRTUAL_HOST="a.example.com,www.a.example.com", LETSENCRYPT_HOST="a.example.com"),
        c("app2", "10.0.0.3", VIRTUAL_HOST="a.example.com", VIRTUAL_PORT="8080"),
        c("api", "10.0.0.4", VIRTUAL_HOST="a.example.com", VIRTUAL_PATH="/api/", VIRTUAL_DEST="/v2/"),
        c("tls-backend", "10.0.0.5", VIRTUAL_HOST="b.example.com", VIRTUAL_PROTO="https", VIRTUAL_PORT="443"),
        c("wild", "10.0.0.6", VIRTUAL_HOST="*.wild.example.com", HSTS="max-age=60; includeSubDomains; preload"),
        c("idn", "10.0.0.7", VIRTUAL_HOST="bücher.example.com"),
        c("noredirect", "10.0.0.8", VIRTUAL_HOST="nr.example.com", HTTPS_METHOD="noredirect"),
        c("nohttp", "10.0.0.9", VIRTUAL_HOST="nh.example.com", HTTPS_METHOD="nohttp"),
        c(
            "nohttps",
            "10.0.0.10",
            VIRTUAL_HOST="ns.example.com",
            HTTPS_METHOD="nohttps",
            LETSENCRYPT_HOST="ns.example.com",
        ),
        c(
            "pending",
            "10.0.0.11",
            VIRTUAL_HOST="p.example.com",
            LETSENCRYPT_HOST="p.example.com",
            HTTPS_METHOD="nohttp",
        ),
        c("hsts-off", "10.0.0.12", VIRTUAL_HOST="off.example.com", HSTS="off"),
        c("shared", "10.0.0.13", VIRTUAL_HOST="s1.example.com,s2.example.com", CERT_NAME="shared"),
        c("ocsp", "10.0.0.14", VIRTUAL_HOST="o.example.com"),
        c("deep", "10.0.0.15", VIRTUAL_HOST="b.example.com", VIRTUAL_PATH="/a/b/c%20d", VIRTUAL_DEST="/x"),
        c("rejected", "10.0.0.16", VIRTUAL_HOST="x.example.com;"),
    ]
    out += [c(f"bulk{i:03}", f"10.1.{i // 250}.{i % 250 + 2}", VIRTUAL_HOST=f"site{i}.example.org") for i in range(60)]
    return out


def fleet_certs(real: CertFiles = REAL, ocsp: CertFiles = REAL_OCSP) -> dict[str, CertFiles]:
    """Lineages by name, each valid for the names it is named after (`shared` for both s1 and s2)."""
    named = ("a.example.com", "b.example.com", "*.wild.example.com", "nr.example.com", "nh.example.com")
    return {name: replace(real, domains=(name,)) for name in (*named, "ns.example.com", "off.example.com")} | {
        "shared": replace(real, domains=("s1.example.com", "s2.example.com")),
        "o.example.com": replace(ocsp, domains=("o.example.com",)),
    }


def render_fleet(options: RenderOptions = OPTIONS, containers: list[ContainerInfo] | None = None, **kw: object):  # noqa: ANN201
    certs = kw.pop("certs", fleet_certs())
    placeholder = kw.pop("placeholder", PLACEHOLDER)
    desired = plan.build(containers if containers is not None else fleet(), certs, placeholder)  # type: ignore[arg-type]
    return desired, render(desired, options)


def upstream_of(desired: plan.Desired, host: str, path: str = "/") -> str:
    """The upstream name a host's path is proxied to (names are numbered over backend sets)."""
    (name,) = [loc.upstream for s in desired.servers if s.host == host for loc in s.locations if loc.path == path]
    return name


def server_blocks(text: str) -> list[tuple[str, bool, Directive]]:
    """(server_name, listens with ssl, block) for every name of every server block in the main file (hosts
    whose blocks would read the same share one, under one server_name directive)."""
    out = []
    for directive in parse_conf(text):
        if directive.name == "server":
            (names,) = directive.find("server_name")
            https = any("ssl" in listen.args for listen in directive.find("listen"))
            out += [(name, https, directive) for name in names.args]
    return out


def block_of(text: str, host: str, https: bool) -> Directive:
    (found,) = [b for name, ssl, b in server_blocks(text) if name == host and ssl == https]
    return found


def root_answers(block: Directive) -> list[tuple[str, ...]]:
    """What `location /` does in a server block: its return or proxy_pass arguments."""
    (root,) = [loc for loc in block.find("location") if loc.args == ("/",)]
    return [d.args for d in root.find("return")] or [d.args for d in root.find("proxy_pass")]


def default_servers(text: str) -> dict[bool, list[str]]:
    """The server_name of every server whose listen says default_server, by HTTPS or not."""
    found: dict[bool, list[str]] = {False: [], True: []}
    for name, https, block in server_blocks(text):
        if any("default_server" in listen.args for listen in block.find("listen")):
            found[https].append(name)
    return found
