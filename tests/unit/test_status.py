"""The status report's pure parts: STATUS_LISTEN, certificate states, and what the plan hands the report."""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime as dt
import json
import os
from pathlib import Path

import bcrypt
import pytest

from companion.acme.policy import CertState
from companion.core import certificates, plan
from companion.core.certificates import CertStatus
from companion.core.container import ContainerInfo
from companion.observe import status
from companion.serve import client as service
from companion.serve import htpasswd
from companion.serve.htpasswd import Gate, parse
from companion.serve.statusserver import page
from companion.settings import config
from companion.settings.config import SettingsError

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
PLACEHOLDER = certificates.CertFiles(
    "/certs/companion/placeholder/fullchain.pem", "/certs/companion/placeholder/privkey.pem"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:8081", ("127.0.0.1", 8081)), ("[::1]:9", ("::1", 9)), ("0.0.0.0:1", ("0.0.0.0", 1))],
)
def test_status_listen_accepts_ip_and_port(text: str, expected: tuple[str, int]) -> None:
    assert config.parse_listen(text) == expected
    assert config.load(argparse.Namespace(), {"STATUS_LISTEN": text}).status_listen == text


@pytest.mark.parametrize("text", ["localhost:8081", "8081", "1.2.3.4:0", "1.2.3.4:65536", "::1:80", "1.2.3.4:80x"])
def test_status_listen_refuses_anything_else(text: str) -> None:
    with pytest.raises(SettingsError, match="status listen"):
        config.load(argparse.Namespace(), {"STATUS_LISTEN": text})


def lineage(name: str, days_left: float = 60.0, problem: str = "") -> CertStatus:
    return CertStatus(
        name,
        (name,),
        issuer="Test CA",
        not_before=NOW - dt.timedelta(days=90 - days_left),
        not_after=NOW + dt.timedelta(days=days_left),
        problem=problem,
    )


def test_certificate_states_and_renewal_times() -> None:
    statuses = {"ok.test": lineage("ok.test"), "broken.test": lineage("broken.test", problem="key does not match")}
    state = {
        "ok.test": CertState(["ok.test"]),
        "new.test": CertState(["new.test"], failures=2, next_try=NOW.timestamp() + 600, last_error="refused <x>"),
        "busy.test": CertState(["busy.test"], in_progress=True),
    }
    views = {v.name: v for v in status.certificates(statuses, state, ["wanted.test"], NOW, 0.0)}
    assert {name: v.state for name, v in views.items()} == {
        "ok.test": "valid",
        "broken.test": "placeholder",
        "new.test": "failing",
        "busy.test": "renewing",
        "wanted.test": "placeholder",
    }
    assert views["ok.test"].days_left == 60.0 and views["ok.test"].renew_at == "2030-01-31T00:00:00+00:00"
    assert views["broken.test"].not_after == "" and views["broken.test"].problem == "key does not match"
    assert views["new.test"].next_try == "2030-01-01T00:10:00+00:00" and views["new.test"].names == ("new.test",)
    assert views["ok.test"].profile == ""


def test_a_certificate_shows_the_profile_it_was_ordered_under() -> None:
    short = dataclasses.replace(lineage("short.test"), profile="shortlived")
    (view,) = status.certificates({"short.test": short}, {}, [], NOW, 0.0)
    assert view.profile == "shortlived"


def test_report_carries_backends_left_out_containers_and_problem_times() -> None:
    web = ContainerInfo(
        "1", "web", labels={"VIRTUAL_HOST": "a.test", "LETSENCRYPT_HOST": "a.test"}, networks={"n": "10.0.0.2"}
    )
    lost = ContainerInfo("2", "lost", labels={"VIRTUAL_HOST": "b.test"})
    bad = ContainerInfo("3", "bad", labels={"VIRTUAL_HOST": "<b>.test"}, networks={"n": "10.0.0.3"})
    sick = ContainerInfo("4", "sick", labels={"VIRTUAL_HOST": "c.test"}, networks={"n": "10.0.0.4"}, health="unhealthy")
    desired = plan.build([web, lost, bad, sick], {}, PLACEHOLDER)
    report = status.build(
        now=NOW.timestamp(),
        desired=desired,
        statuses={},
        acme_state={},
        renew_before_days=0.0,
        problems={"second": NOW.timestamp(), "first": NOW.timestamp() - 60},
        passes=(),
        nginx_version=(1, 22, 1),
        nginx_containers=("nginx",),
        last_success=0.0,
    )
    sites = {s.host: s for s in report.sites}
    assert sites["a.test"].placeholder and sites["a.test"].certificate == "placeholder"
    assert sites["a.test"].paths[0].backends == (status.Backend("web", "10.0.0.2", 80),)
    assert sites["b.test"].paths[0].backends == (status.Backend("lost", "", 80),)
    assert [(item.container, item.reason.split(" rejected")[0]) for item in report.left_out] == [
        ("bad", "VIRTUAL_HOST='<b>.test'"),
        ("sick", "unhealthy, left out until its health check passes"),
    ]
    assert [p.text for p in report.problems][:2] == ["first", "second"]
    assert report.nginx == status.NginxView("1.22.1", ("nginx",)) and report.last_success == ""
    shape = json.loads(json.dumps(report.to_json()))
    assert shape["version"] == 1 and shape["certificates"][0]["name"] == "a.test"
    html = page(report, alive="")
    assert "&lt;b&gt;.test" in html and "<b>.test" not in html


# -- STATUS_AUTH ----------------------------------------------------------------------------------


def _bcrypt_line(user: str, password: str) -> str:
    import bcrypt

    return f"{user}:$2y${bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4))[4:].decode()}"


def test_htpasswd_takes_bcrypt_entries_only_and_names_the_line_not_the_hash() -> None:
    from companion.serve.htpasswd import HtpasswdError, parse

    users = parse(f"# operators\n\n{_bcrypt_line('admin', 'pw')}\n{_bcrypt_line('ops', 'x')}\n")
    assert set(users) == {"admin", "ops"}
    for bad, why in (
        ("admin:$apr1$abc$0123456789012345678901", "line 1: only bcrypt"),
        ("admin:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "line 1: only bcrypt"),
        ("admin:plain", "line 1: only bcrypt"),
        ("no-colon-here", "line 1: expected user:hash"),
        ("# only a comment", "no user"),
    ):
        with pytest.raises(HtpasswdError, match=why) as caught:
            parse(bad)
        assert "$apr1$" not in str(caught.value) and "W6ph5" not in str(caught.value)


def test_gate_checks_basic_credentials_and_remembers_good_ones() -> None:
    import base64

    from companion.serve.htpasswd import Gate, parse

    gate = Gate(parse(_bcrypt_line("admin", "s3cret")))

    def header(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    assert gate.allows(header("admin", "s3cret"))
    assert gate.allows(header("admin", "s3cret"))  # the second time from the cache
    for refused in (
        header("admin", "wrong"),
        header("other", "s3cret"),
        None,
        "",
        "Bearer x",
        "Basic not-base64!",
        "Basic " + "A" * 2000,
    ):
        assert not gate.allows(refused), refused


def _line(user: str, password: str, rounds: int) -> str:
    return f"{user}:{bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds)).decode()}"


def _basic(user: str, password: str, scheme: str = "Basic") -> str:
    return f"{scheme} " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_an_unknown_user_costs_the_same_bcrypt_check_as_a_known_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Counted, not timed: each refusal runs exactly one bcrypt check, against a hash of the same cost."""
    gate = Gate(parse(_line("admin", "s3cret", 5) + "\n" + _line("ops", "pw", 6)))
    checked: list[bytes] = []
    real = bcrypt.checkpw

    def counting(password: bytes, digest: bytes) -> bool:
        checked.append(digest)
        return real(password, digest)

    monkeypatch.setattr(htpasswd.bcrypt, "checkpw", counting)
    for header in (_basic("admin", "wrong"), _basic("nobody", "wrong"), _basic("", "x"), _basic("a" * 200, "x")):
        checked.clear()
        assert not gate.allows(header)
        assert len(checked) == 1, header
        assert checked[0][:7] in (b"$2b$06$", b"$2y$06$") or checked[0].startswith(b"$2b$05$"), checked
    checked.clear()
    gate.allows(_basic("nobody", "x"))
    assert checked[0][4:6] == b"06"  # an unknown name: the file's highest cost


def test_the_basic_scheme_is_accepted_in_any_case() -> None:
    gate = Gate(parse(_line("admin", "s3cret", 4)))
    for scheme in ("basic", "BASIC", "bAsIc"):
        assert gate.allows(_basic("admin", "s3cret", scheme)), scheme
    assert not gate.allows(_basic("admin", "s3cret", "Bearer"))


# -- STATUS_CREDENTIALS ----------------------------------------------------------------------------


def test_status_credentials_make_a_basic_header_and_a_bad_file_says_why_without_the_password(
    tmp_path: Path,
) -> None:
    good = tmp_path / "good"
    good.write_text("admin:s3:cret\n")
    assert service.read_credentials(str(good)) == _basic("admin", "s3:cret")
    assert service.read_credentials("") == ""
    bad = tmp_path / "bad"
    for text in ("admin\n", "admin:\n", ":pw\n", "a:b\nc:d\n", ""):
        bad.write_text(text)
        with pytest.raises(service.BadCredentials, match="expected one line user:password") as caught:
            service.read_credentials(str(bad))
        assert "pw" not in str(caught.value)
    with pytest.raises(service.BadCredentials, match="No such file"):
        service.read_credentials(str(tmp_path / "missing"))
    link = tmp_path / "link"
    os.symlink(good, link)
    with pytest.raises(service.BadCredentials):
        service.read_credentials(str(link))
