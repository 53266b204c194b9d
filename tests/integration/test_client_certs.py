"""Client certificates (mTLS) proven with the real `nginx -t`: every HTTP answer a client-cert host can render,
and a host file of the wrong kind closing its host. The pure decisions are tests/unit/test_client_certs.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from companion.core import plan
from companion.core.plan import HttpAnswer
from companion.nginx import hostfiles
from companion.nginx.hostfiles import HTPASSWD, UserFiles
from companion.nginx.render import MAIN_FILE, render
from tests.harness.containers import app as c
from tests.harness.hostfiles import EXPECTED, HOST, desired_for, dirs_in
from tests.harness.nginx import Directive, make_layout, parse_conf
from tests.harness.tls import client_ca

METHODS = ("redirect", "noredirect", "nohttp", "nohttps")


# how the host stands with certificates: served, wanted but not issued yet, neither
CERT_STATES = ("issued", "missing", "unwanted")


# -- the rendered config, as the real nginx -t reads it ----------------------------------------------------


def server_of(text: str, host: str, https: bool) -> Directive | None:
    found = [
        d
        for d in parse_conf(text)
        if d.name == "server"
        and host in d.find("server_name")[0].args
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
