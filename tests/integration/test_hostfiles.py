"""Per-host files proven with the real `nginx -t` (no daemon started) and apache2-utils' htpasswd: every kind of
file renders what nginx accepts, a file nginx refuses falls back to its last good version, and last good
versions survive a restart. The pure checks are tests/unit/test_hostfiles.py.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from companion.core import certificates, plan
from companion.nginx import hostfiles
from companion.nginx.apply import NginxControl, apply
from companion.nginx.hostfiles import UserFiles
from companion.nginx.render import MAIN_FILE, render
from tests.harness.containers import app as c
from tests.harness.hostfiles import dirs_in
from tests.harness.nginx import Directive, NginxLayout, make_layout, parse_conf, walk
from tests.harness.tls import client_ca

# -- proved by the real nginx -t ------------------------------------------------------------------------


def servers(tree: tuple[Directive, ...], host: str) -> list[Directive]:
    return [
        d for _, d in walk(tree) if d.name == "server" and d.block is not None and host in d.find("server_name")[0].args
    ]


def everything(layout: NginxLayout, tmp_path: Path) -> tuple[plan.Desired, hostfiles.Found]:
    """A fleet using every typed value, and a file of every kind on disk."""
    fleet = [
        c(
            "tuned",
            "10.0.0.2",
            VIRTUAL_HOST="a.example.com",
            PROXY_MAX_BODY_SIZE="0",
            PROXY_READ_TIMEOUT="5m",
            PROXY_SEND_TIMEOUT="1500ms",
            PROXY_CONNECT_TIMEOUT="75s",
            PROXY_BUFFERING="off",
            PROXY_ALLOW_FROM="10.0.0.0/8,2001:db8::/32",
            NETWORK_ACCESS="internal",
        ),
        c("allow", "10.0.0.3", VIRTUAL_HOST="b.example.com", PROXY_ALLOW_FROM="192.0.2.1"),
        c("plain", "10.0.0.4", VIRTUAL_HOST="c.example.com"),
    ]
    cert = layout.cert()
    certs = {"a": certificates.CertFiles(cert.fullchain, cert.privkey, domains=("a.example.com", "b.example.com"))}
    desired = plan.build(fleet, certs, cert)
    dirs = dirs_in(tmp_path / "user")
    vhost = Path(dirs.vhost)
    (vhost / "a.example.com").write_text("add_header X-Only-A yes;\n")
    (vhost / "default").write_text("add_header X-Default yes;\n")
    (vhost / "a.example.com_location").write_text("proxy_set_header X-Loc a;\n")
    (Path(dirs.htpasswd) / "a.example.com").write_text("user:$2y$05$" + "a" * 53 + "\n")
    ca, _ = client_ca(tmp_path / "ca")
    (Path(dirs.client_ca) / "a.example.com").write_bytes(ca.read_bytes())
    # as written for nginx-proxy: its variable names work here too
    Path(dirs.proxy_conf).write_text(
        "proxy_http_version 1.1;\nproxy_set_header Host $host;\nproxy_set_header Connection $proxy_connection;\n"
        "proxy_set_header X-Forwarded-Proto $proxy_x_forwarded_proto;\n"
        "proxy_set_header X-Forwarded-Host $proxy_x_forwarded_host;\n"
        "proxy_set_header X-Forwarded-Port $proxy_x_forwarded_port;\n"
        "proxy_set_header X-Forwarded-Ssl $proxy_x_forwarded_ssl;\n"
    )
    return desired, hostfiles.scan(dirs, [s.host for s in desired.servers])


@pytest.mark.parametrize(
    "proxy_wide",
    [
        {"server_tokens": "off", "access_log": "off", "resolvers": ("127.0.0.11",)},
        {"server_tokens": "build", "access_log": "LOG", "resolvers": ("[::1]:53", "10.0.0.1:5353")},
        {"trust_downstream_proxy": True, "external_http_port": 8080, "external_https_port": 8443},
        # nginx-proxy's LOG_FORMAT: quotes and backslashes stay text inside the one quoted string
        {"access_log": "LOG", "access_log_format": "$host '$request' \\\" \\' {x};", "access_log_escape": "json"},
    ],
)
def test_every_kind_of_file_and_typed_value_renders_what_nginx_accepts(tmp_path: Path, proxy_wide: dict) -> None:
    layout = make_layout(tmp_path / "nginx")
    desired, found = everything(layout, tmp_path)
    chosen, problems = UserFiles().choose(found)
    assert not problems
    if proxy_wide.get("access_log") == "LOG":
        proxy_wide = {**proxy_wide, "access_log": str(layout.prefix / "logs" / "access.json")}
    files = render(desired, layout.options(**proxy_wide), chosen)
    ok, output = layout.check(files)
    assert ok, output
    tree = parse_conf(files[MAIN_FILE])
    if "access_log_format" in proxy_wide:
        (log_format,) = [d for d in tree if d.name == "log_format"]
        assert log_format.args == ("companion_custom", "escape=json", proxy_wide["access_log_format"])
    for _, server in walk(tree):
        if server.name == "server" and server.block is not None and "server_tokens" in proxy_wide:
            assert server.find("server_tokens")[0].args == (proxy_wide["server_tokens"],)
            assert [d.args for d in server.find("resolver")] == [proxy_wide["resolvers"]]
    https_a = next(s for s in servers(tree, "a.example.com") if s.find("ssl_certificate"))
    assert https_a.find("ssl_verify_client")[0].args == ("on",)
    assert https_a.find("auth_basic_user_file")[0].args[0].endswith(".htpasswd")
    location = https_a.find("location")[-1]
    assert [d.args[0] for d in location.find("allow")] == ["10.0.0.0/8", "2001:db8::/32"]
    assert {d.name: d.args for d in location.block if d.name.startswith(("client_", "proxy_"))} == {
        "client_max_body_size": ("0",),
        "proxy_connect_timeout": ("75s",),
        "proxy_read_timeout": ("300s",),
        "proxy_send_timeout": ("1500ms",),
        "proxy_buffering": ("off",),
        "proxy_pass": ("http://companion_u1",),
    }
    b = servers(tree, "b.example.com")
    assert all(not s.find("ssl_verify_client") and not s.find("auth_basic") for s in b)
    assert [d.args for d in b[-1].find("location")[-1].find("deny")] == [("all",)]
    copies = {name: content for name, content in files.items() if name.startswith(hostfiles.COPY_PREFIX)}
    assert "add_header X-Only-A yes;\n" in copies.values() and "add_header X-Default yes;\n" in copies.values()
    acme = files["companion-acme.inc"]
    assert "auth_basic off;" in acme and "allow all;" in acme


def test_a_file_nginx_refuses_falls_back_to_its_last_good_and_the_others_move_on(tmp_path: Path) -> None:
    layout = make_layout(tmp_path / "nginx")
    fleet = [c("a", "10.0.0.2", VIRTUAL_HOST="a.example.com"), c("b", "10.0.0.3", VIRTUAL_HOST="b.example.com")]
    desired = plan.build(fleet, {}, layout.cert())
    dirs = dirs_in(tmp_path / "user")
    vhost = Path(dirs.vhost)
    control = NginxControl(layout.test_command, "true")
    state = UserFiles()

    def one_pass() -> tuple[bool, set[str]]:
        found = hostfiles.scan(dirs, ["a.example.com", "b.example.com"])
        result, problems = state.apply(
            found,
            lambda chosen: render(desired, layout.options(), chosen),
            lambda f: apply(layout.conf_dir, f, control),
            layout.conf_dir,
        )
        return result.ok, problems

    (vhost / "a.example.com").write_text("add_header X-A good;\n")
    (vhost / "b.example.com").write_text("add_header X-B one;\n")
    assert one_pass() == (True, set())
    (vhost / "a.example.com").write_text("add_header X-A broken\n")  # no ";": nginx -t fails in this file
    (vhost / "b.example.com").write_text("add_header X-B two;\n")
    ok, problems = one_pass()
    assert ok
    (line,) = problems
    assert f"{vhost / 'a.example.com'}: refused (" in line and "its last good version stays in use" in line
    conf = (layout.conf_dir / MAIN_FILE).read_text()
    included = {p.name: p.read_text() for p in layout.conf_dir.glob(hostfiles.COPY_PREFIX + "*")}
    assert sorted(included.values()) == ["add_header X-A good;\n", "add_header X-B two;\n"]  # stale copies gone
    assert all(name in conf for name in included)
    assert layout.test()[0]
    # fixed: the new version is used and the problem goes away
    (vhost / "a.example.com").write_text("add_header X-A fixed;\n")
    assert one_pass() == (True, set())
    assert "add_header X-A fixed;\n" in {p.read_text() for p in layout.conf_dir.glob(hostfiles.COPY_PREFIX + "*")}


def test_a_broken_file_without_a_last_good_is_left_out(tmp_path: Path) -> None:
    layout = make_layout(tmp_path / "nginx")
    desired = plan.build([c("a", "10.0.0.2", VIRTUAL_HOST="a.example.com")], {}, layout.cert())
    dirs = dirs_in(tmp_path / "user")
    (Path(dirs.vhost) / "a.example.com_location").write_text("no_such_directive on;\n")
    Path(dirs.proxy_conf).write_text("proxy_set_header Host $proxy_host_of_nginx_proxy;\n")  # unknown variable
    state = UserFiles()
    found = hostfiles.scan(dirs, ["a.example.com"])
    control = NginxControl(layout.test_command, "true")
    result, problems = state.apply(
        found,
        lambda chosen: render(desired, layout.options(), chosen),
        lambda f: apply(layout.conf_dir, f, control),
        layout.conf_dir,
    )
    assert result.ok, result.error
    assert len(problems) == 2 and all("left out until it changes" in p for p in problems)
    assert any("unknown directive" in p and "a.example.com_location" in p for p in problems)
    assert not list(layout.conf_dir.glob(hostfiles.COPY_PREFIX + "*"))


def test_htpasswd_made_by_apache2_utils_is_accepted(tmp_path: Path) -> None:
    done = subprocess.run(["htpasswd", "-nbB", "alice", "s3cret"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, "htpasswd is missing: apt-get install apache2-utils"
    assert hostfiles.htpasswd_problem(done.stdout) == ""


def test_a_foreign_broken_file_in_conf_d_blames_no_host_file(tmp_path: Path) -> None:
    """nginx refuses because of a file that is not ours: no host file is refused for it, and once it is
    fixed the host files apply as they are."""
    layout = make_layout(tmp_path / "nginx")
    desired = plan.build([c("a", "10.0.0.2", VIRTUAL_HOST="a.example.com")], {}, layout.cert())
    dirs = dirs_in(tmp_path / "user")
    (Path(dirs.vhost) / "a.example.com").write_text("add_header X-A a;\n")
    (layout.conf_dir / "foreign.conf").write_text("set $x $undefined_variable_here;\n")
    state = UserFiles()
    found = hostfiles.scan(dirs, ["a.example.com"])
    control = NginxControl(layout.test_command, "true")

    def one_pass() -> tuple[bool, set[str]]:
        result, problems = state.apply(
            found,
            lambda chosen: render(desired, layout.options(), chosen),
            lambda f: apply(layout.conf_dir, f, control),
            layout.conf_dir,
        )
        return result.ok, problems

    assert one_pass() == (False, set())
    assert not state.refused
    (layout.conf_dir / "foreign.conf").unlink()
    assert one_pass() == (True, set())
    assert [p.read_text() for p in layout.conf_dir.glob(hostfiles.COPY_PREFIX + "*")] == ["add_header X-A a;\n"]


def test_an_access_file_that_cannot_be_used_closes_its_host_not_opens_it(tmp_path: Path) -> None:
    """A refused htpasswd (or client CA) with no last good, or a link in its place, would otherwise serve the
    host without its access control: its proxied locations answer 403 instead; a last good one stays."""
    layout = make_layout(tmp_path / "nginx")
    fleet = [c(n, f"10.0.0.{i}", VIRTUAL_HOST=f"{n}.example.com") for i, n in enumerate(("a", "b", "c", "d"), 2)]
    cert = layout.cert()
    desired = plan.build(fleet, {"c": replace(cert, domains=("c.example.com",))}, cert)  # a CA needs HTTPS
    dirs = dirs_in(tmp_path / "user")
    htpasswd, ca = Path(dirs.htpasswd), Path(dirs.client_ca)
    (htpasswd / "a.example.com").write_text("alice\n")  # not user:hash
    (htpasswd / "b.example.com").symlink_to(tmp_path / "elsewhere")
    (ca / "c.example.com").write_text("not a certificate\n")
    state = UserFiles()
    control = NginxControl(layout.test_command, "true")
    hosts = [f"{n}.example.com" for n in "abcd"]
    result, problems = state.apply(
        hostfiles.scan(dirs, hosts),
        lambda chosen: render(desired, layout.options(), chosen),
        lambda f: apply(layout.conf_dir, f, control),
        layout.conf_dir,
    )
    assert result.ok, result.error
    tree = parse_conf((layout.conf_dir / MAIN_FILE).read_text())
    for host, closed in (("a", True), ("b", True), ("c", True), ("d", False)):
        server = servers(tree, f"{host}.example.com")[-1]  # c: its HTTPS server
        location = server.find("location")[-1]
        assert (location.find("return") == [Directive("return", ("403",))]) is closed, host
        assert server.find("include")  # the ACME challenge location stays
    assert any("a.example.com: refused (line 1 is not user:hash); a.example.com answers 403" in p for p in problems)
    assert any("host b.example.com: its htpasswd file cannot be used; it answers 403" in p for p in problems)
    assert any("c.example.com: refused (" in p and "c.example.com answers 403" in p for p in problems)


def test_last_good_versions_survive_a_restart_and_a_tampered_record_is_dropped(tmp_path: Path) -> None:
    layout = make_layout(tmp_path / "nginx")
    desired = plan.build([c("a", "10.0.0.2", VIRTUAL_HOST="a.example.com")], {}, layout.cert())
    dirs = dirs_in(tmp_path / "user")
    certs_dir = tmp_path / "certs"
    certs_dir.mkdir()
    control = NginxControl(layout.test_command, "true")

    def one_pass(state: UserFiles) -> tuple[bool, set[str]]:
        result, problems = state.apply(
            hostfiles.scan(dirs, ["a.example.com"]),
            lambda chosen: render(desired, layout.options(), chosen),
            lambda f: apply(layout.conf_dir, f, control),
            layout.conf_dir,
        )
        return result.ok, problems

    (Path(dirs.vhost) / "a.example.com").write_text("add_header X-A good;\n")
    (Path(dirs.htpasswd) / "a.example.com").write_text("alice:$apr1$x$y\n")
    assert one_pass(UserFiles(certs_dir, layout.conf_dir)) == (True, set())
    record = certs_dir / hostfiles.GOOD_FILE
    assert record.stat().st_mode & 0o777 == 0o600
    # broken while the companion was away: the restarted one still has the last good versions
    (Path(dirs.vhost) / "a.example.com").write_text("add_header X-A broken\n")
    (Path(dirs.htpasswd) / "a.example.com").write_text("alice\n")
    ok, problems = one_pass(UserFiles(certs_dir, layout.conf_dir))
    assert ok and len(problems) == 2 and all("its last good version stays in use" in p for p in problems)
    conf = (layout.conf_dir / MAIN_FILE).read_text()
    assert "auth_basic_user_file" in conf and "return 403" not in conf
    # a record naming a copy whose content is not what its name says is not believed
    entries = json.loads(record.read_text())
    copy = layout.conf_dir / entries[0]["copy"]
    copy.write_text("tampered\n")
    assert (entries[0]["kind"], entries[0]["name"]) not in hostfiles.load_good(certs_dir, layout.conf_dir)
