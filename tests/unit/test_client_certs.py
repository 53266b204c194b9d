"""Client certificates (mTLS) as rendered: what plain HTTP answers for a client-cert host and which host files
count, decided without nginx. The `nginx -t` proofs are tests/integration/test_client_certs.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from companion.core import certificates, plan
from companion.core.inputs import Inputs
from companion.core.model import Policy
from companion.core.plan import HttpAnswer
from companion.core.problems import Problem
from companion.nginx import hostfiles
from companion.nginx.hostfiles import CLIENT_CA, HTPASSWD, VHOST, UserFiles
from companion.observe.explain import explain
from tests.harness.containers import app as c
from tests.harness.hostfiles import EXPECTED, HOST, desired_for, dirs_in


@pytest.mark.parametrize(("method", "state"), sorted(EXPECTED))
def test_a_client_cert_host_never_proxies_plain_http_and_overrules_are_named(method: str, state: str) -> None:
    placeholder = certificates.CertFiles("/certs/f.pem", "/certs/k.pem")
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
    placeholder = certificates.CertFiles("/certs/f.pem", "/certs/k.pem")
    before = desired_for(method, state, placeholder)
    assert plan.require_client_certs(before, {"other.example.com": "/x"}) == before
    assert not before.servers[0].client_cert
    proxied = before.servers[0].http is HttpAnswer.PROXY
    assert proxied == (method in ("noredirect", "nohttps") or (method == "redirect" and state != "issued"))


def test_the_warning_shows_control_characters_escaped() -> None:
    before = desired_for("noredirect", "issued", certificates.CertFiles("/certs/f.pem", "/certs/k.pem"))
    (line,) = plan.require_client_certs(before, {HOST: "/ca\x1b[31m\n/a.example.com"}).problems
    assert "\\x1b[31m\\x0a/a.example.com" in line and "\n" not in line and "\x1b" not in line


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
