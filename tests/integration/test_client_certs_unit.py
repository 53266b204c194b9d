"""Hosts that require a client certificate, and access files named for a host in another case or IDN form:
the pure decisions (plan, hostfiles.scan) and the rendered config, proved by the real `nginx -t` (no daemon)."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import pytest

from companion import hostfiles, plan
from companion.explain import Inputs, explain
from companion.hostfiles import CLIENT_CA, HTPASSWD, VHOST, Dirs, UserFiles
from companion.logformat import Problem
from companion.model import Policy
from companion.plan import HttpAnswer
from companion.render import MAIN_FILE, render
from tests.harness.containers import app as c
from tests.harness.nginxcheck import Directive, make_layout, parse_conf
from tests.harness.tls import client_ca

HOST = "a.example.com"
METHODS = ("redirect", "noredirect", "nohttp", "nohttps")
# how the host stands with certificates: served, wanted but not issued yet, neither
CERT_STATES = ("issued", "missing", "unwanted")


def dirs_in(root: Path) -> Dirs:
    for name in ("vhost.d", "htpasswd", "client_ca"):
        (root / name).mkdir(parents=True, exist_ok=True)
    return Dirs(str(root / "vhost.d"), str(root / "htpasswd"), str(root / "client_ca"), str(root / "proxy.conf"))


def desired_for(method: str, state: str, placeholder: plan.CertFiles) -> plan.Desired:
    labels = {"VIRTUAL_HOST": HOST, "HTTPS_METHOD": method}
    if state != "unwanted":
        labels["LETSENCRYPT_HOST"] = HOST
    certs = {HOST: replace(placeholder, domains=(HOST,))} if state == "issued" else {}
    return plan.build([c("web", **labels)], certs, placeholder)


# -- the decision (pure) --------------------------------------------------------------------------------

# (method, certificate state) -> what plain HTTP answers, and the variable a warning names ("" for none)
EXPECTED = {
    ("redirect", "issued"): (HttpAnswer.REDIRECT, ""),
    ("redirect", "missing"): (HttpAnswer.REFUSED, ""),
    ("redirect", "unwanted"): (HttpAnswer.REFUSED, "LETSENCRYPT_HOST"),
    ("noredirect", "issued"): (HttpAnswer.REDIRECT, "HTTPS_METHOD"),
    ("noredirect", "missing"): (HttpAnswer.REFUSED, "HTTPS_METHOD"),
    ("noredirect", "unwanted"): (HttpAnswer.REFUSED, "HTTPS_METHOD"),
    ("nohttp", "issued"): (None, ""),  # no HTTP server for the host at all: the catch-all answers 503
    ("nohttp", "missing"): (HttpAnswer.REFUSED, ""),
    ("nohttp", "unwanted"): (HttpAnswer.REFUSED, "LETSENCRYPT_HOST"),
    ("nohttps", "issued"): (HttpAnswer.REFUSED, "HTTPS_METHOD"),
    ("nohttps", "missing"): (HttpAnswer.REFUSED, "HTTPS_METHOD"),
    ("nohttps", "unwanted"): (HttpAnswer.REFUSED, "HTTPS_METHOD"),
}


@pytest.mark.parametrize(("method", "state"), sorted(EXPECTED))
def test_a_client_cert_host_never_proxies_plain_http_and_overrules_are_named(method: str, state: str) -> None:
    placeholder = plan.CertFiles("/certs/f.pem", "/certs/k.pem")
    before = desired_for(method, state, placeholder)
    source = "/etc/nginx/client_ca/a.example.com"
    guarded = plan.require_client_certs(before, {HOST: source})
    (server,) = guarded.servers
    answer, variable = EXPECTED[(method, state)]
    assert server.client_cert
    assert (server.http if server.serves_http else None) == answer
    added = [p for p in guarded.problems if p not in before.problems]
    if not variable:
        assert added == []
        return
    (line,) = added
    assert isinstance(line, Problem) and (line.container, line.variable) == ("web", variable)
    assert line.startswith("container web: ") and f"{HOST} requires a client certificate ({source})" in line
    assert ("plain HTTP redirects to HTTPS" if method == "noredirect" else "plain HTTP answers 403") in line


@pytest.mark.parametrize(("method", "state"), sorted(EXPECTED))
def test_without_a_client_ca_nothing_changes(method: str, state: str) -> None:
    placeholder = plan.CertFiles("/certs/f.pem", "/certs/k.pem")
    before = desired_for(method, state, placeholder)
    assert plan.require_client_certs(before, {"other.example.com": "/x"}) == before
    assert not before.servers[0].client_cert
    proxied = before.servers[0].http is HttpAnswer.PROXY
    assert proxied == (method in ("noredirect", "nohttps") or (method == "redirect" and state != "issued"))


def test_the_warning_shows_control_characters_escaped() -> None:
    before = desired_for("noredirect", "issued", plan.CertFiles("/certs/f.pem", "/certs/k.pem"))
    (line,) = plan.require_client_certs(before, {HOST: "/ca\x1b[31m\n/a.example.com"}).problems
    assert "\\x1b[31m\\x0a/a.example.com" in line and "\n" not in line and "\x1b" not in line


# -- the rendered config, as the real nginx -t reads it ----------------------------------------------------


def server_of(text: str, host: str, https: bool) -> Directive | None:
    found = [
        d
        for d in parse_conf(text)
        if d.name == "server"
        and d.find("server_name")[0].args == (host,)
        and any("ssl" in listen.args for listen in d.find("listen")) == https
    ]
    return found[0] if found else None


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("state", CERT_STATES)
def test_plain_http_of_a_client_cert_host_renders_only_redirect_or_403_beside_the_challenge(
    tmp_path: Path, method: str, state: str
) -> None:
    layout = make_layout(tmp_path / "nginx")
    dirs = dirs_in(tmp_path / "user")
    ca, _ = client_ca(tmp_path / "ca")
    (Path(dirs.client_ca) / HOST).write_bytes(ca.read_bytes())
    before = desired_for(method, state, layout.cert())
    found = hostfiles.scan(dirs, [HOST])
    assert found.client_certs == {HOST: str(Path(dirs.client_ca) / HOST)}
    desired = plan.require_client_certs(before, found.client_certs)
    chosen, problems = UserFiles().choose(found)
    assert not problems
    files = render(desired, layout.options(), chosen)
    ok, output = layout.check(files)
    assert ok, output
    http = server_of(files[MAIN_FILE], HOST, False)
    answer, _ = EXPECTED[(method, state)]
    if answer is None:
        assert http is None
    else:
        assert http is not None
        assert [d.args for d in http.find("include")] == [(str(layout.conf_dir / "companion-acme.inc"),)]
        (root,) = http.find("location")
        assert root.args == ("/",)
        expected = "301" if answer is HttpAnswer.REDIRECT else "403"
        assert [d.args[0] for d in root.find("return")] == [expected]
        assert "proxy_pass" not in str(http)
    https = server_of(files[MAIN_FILE], HOST, True)
    if https is not None:
        assert https.find("ssl_verify_client")[0].args == ("on",)


# -- which files make a host require a client certificate -----------------------------------------------


@pytest.mark.parametrize(
    ("content", "verifies"),
    [
        ("ssl_client_certificate /etc/ca.pem;\nssl_verify_client on;\n", True),
        ("ssl_verify_client   optional ;", True),
        ('ssl_verify_client "optional_no_ca";', True),
        ("add_header X-A a; ssl_verify_client on;", True),
        ("# ssl_verify_client on;\n", False),
        ("ssl_verify_client off;\n", False),
        ("add_header X-Note 'no_ssl_verify_client on';\n", False),
        ("", False),
    ],
)
def test_ssl_verify_client_in_a_vhost_file_counts(content: str, verifies: bool) -> None:
    assert hostfiles.verifies_clients(content) is verifies


def test_client_cert_hosts_from_the_ca_folder_and_from_vhost_files(tmp_path: Path) -> None:
    dirs = dirs_in(tmp_path)
    vhost, ca = Path(dirs.vhost), Path(dirs.client_ca)
    (ca / "a.example.com").write_text("PEM\n")
    (ca / "b.example.com").symlink_to(tmp_path / "elsewhere")  # unusable: still asks for client certificates
    (vhost / "c.example.com").write_text("ssl_verify_client on;\n")
    (vhost / "default").write_text("ssl_verify_client optional;\n")
    (vhost / "d.example.com").write_text("add_header X-D d;\n")  # its own file replaces default's
    hosts = [f"{n}.example.com" for n in "abcde"]
    assert hostfiles.scan(dirs, hosts).client_certs == {
        "a.example.com": str(ca / "a.example.com"),
        "b.example.com": str(ca / "b.example.com"),
        "c.example.com": str(vhost / "c.example.com"),
        "e.example.com": str(vhost / "default"),
    }


# -- names in another case or IDN form ------------------------------------------------------------------


def test_access_files_named_in_another_case_or_idn_form_are_applied(tmp_path: Path) -> None:
    dirs = dirs_in(tmp_path)
    htpasswd, ca, vhost = Path(dirs.htpasswd), Path(dirs.client_ca), Path(dirs.vhost)
    (htpasswd / "Upper.example.com").write_text("alice:$apr1$x$y\n")
    (htpasswd / "bücher.example").write_text("bob:$apr1$x$y\n")
    (ca / "MTLS.Example.COM").write_text("PEM\n")
    (vhost / "Upper.example.com_location").write_text("add_header X-L l;\n")
    (vhost / "Default").write_text("not the default file\n")
    (vhost / "UNSERVED.example.com").write_text("not read\n")
    hosts = ["upper.example.com", "xn--bcher-kva.example", "mtls.example.com"]
    found = hostfiles.scan(dirs, hosts)
    assert sorted(found.files) == [
        (CLIENT_CA, "mtls.example.com"),
        (HTPASSWD, "upper.example.com"),
        (HTPASSWD, "xn--bcher-kva.example"),
        (VHOST, "upper.example.com_location"),
    ]
    assert found.problems == ()
    assert found.files[(HTPASSWD, "xn--bcher-kva.example")].source == str(htpasswd / "bücher.example")
    assert found.client_certs == {"mtls.example.com": str(ca / "MTLS.Example.COM")}
    chosen, problems = UserFiles().choose(found)
    assert not problems
    assert chosen.htpasswd("upper.example.com").content == "alice:$apr1$x$y\n"
    assert chosen.htpasswd("xn--bcher-kva.example").content == "bob:$apr1$x$y\n"
    assert chosen.location("upper.example.com").content == "add_header X-L l;\n"
    assert chosen.server("upper.example.com") is None


def test_two_names_for_one_host_use_the_exact_one_else_the_first_and_name_the_other(tmp_path: Path) -> None:
    dirs = dirs_in(tmp_path)
    htpasswd = Path(dirs.htpasswd)
    (htpasswd / "a.example.com").write_text("exact:$apr1$x$y\n")
    (htpasswd / "A.example.com").write_text("upper:$apr1$x$y\n")
    (htpasswd / "b.EXAMPLE.com").write_text("second:$apr1$x$y\n")
    (htpasswd / "B.example.com").write_text("first:$apr1$x$y\n")  # "B" sorts before "b"
    for _ in range(2):  # the same answer every pass, whatever order the folder lists them in
        found = hostfiles.scan(dirs, ["a.example.com", "b.example.com"])
        assert found.files[(HTPASSWD, "a.example.com")].content == "exact:$apr1$x$y\n"
        assert found.files[(HTPASSWD, "b.example.com")].content == "first:$apr1$x$y\n"
        assert sorted(found.problems) == [
            f"{htpasswd / 'A.example.com'}: not used ({htpasswd / 'a.example.com'} is the file for a.example.com)",
            f"{htpasswd / 'b.EXAMPLE.com'}: not used ({htpasswd / 'B.example.com'} is the file for b.example.com)",
        ]


def test_a_link_or_fifo_named_in_another_case_closes_its_host(tmp_path: Path) -> None:
    """Read with the same no-follow, size-capped rule as an exactly named file: never followed or opened."""
    layout = make_layout(tmp_path / "nginx")
    dirs = dirs_in(tmp_path / "user")
    secret = tmp_path / "secret"
    secret.write_text("secret:$apr1$x$y\n")
    (Path(dirs.htpasswd) / "A.example.com").symlink_to(secret)
    os.mkfifo(Path(dirs.htpasswd) / "B.example.com")
    (Path(dirs.htpasswd) / "C.example.com").write_bytes(b"u:" + b"x" * hostfiles.MAX_BYTES)
    hosts = ["a.example.com", "b.example.com", "c.example.com"]
    found = hostfiles.scan(dirs, hosts)
    assert found.files == {}
    assert found.unusable == {(HTPASSWD, h) for h in hosts}
    chosen, problems = UserFiles().choose(found)
    assert chosen.closed == set(hosts)
    assert any("A.example.com: not used" in p and "symbolic link" in p for p in problems)
    desired = plan.build([c(h.split(".")[0], VIRTUAL_HOST=h) for h in hosts], {}, layout.cert())
    files = render(desired, layout.options(), chosen)
    ok, output = layout.check(files)
    assert ok, output
    for host in hosts:
        (location,) = server_of(files[MAIN_FILE], host, False).find("location")
        assert location.find("return") == [Directive("return", ("403",))]


def test_explain_shows_what_overrules_a_container_for_its_client_ca() -> None:
    """`companion explain` renders the pass's record: the warning for the container it overrules."""
    web = c("web", VIRTUAL_HOST=HOST, HTTPS_METHOD="noredirect")
    inputs = Inputs(containers=(web,), statuses={}, certs_dir=Path("/certs"), policy=Policy())
    guarded = replace(inputs, client_certs={HOST: "/etc/nginx/client_ca/a.example.com"})
    assert "overruled" not in explain("web", inputs, {}).text()
    assert (
        "HTTPS_METHOD=noredirect overruled: a.example.com requires a client certificate "
        "(/etc/nginx/client_ca/a.example.com)" in explain("web", guarded, {}).text()
    )
