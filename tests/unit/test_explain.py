"""explain.explain: the pure explanation of one container or host, from the inputs a pass uses."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from companion.acme.orders import load_state, save_state
from companion.acme.policy import CertState, describe
from companion.core import trust
from companion.core.certificates import CertStatus
from companion.core.container import ContainerInfo
from companion.core.inputs import Inputs
from companion.core.model import Policy
from companion.observe.explain import Explanation, Verdict, explain
from tests.harness.containers import container

CERTS = Path("/certs")
NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)


def c(name: str, ip: str = "10.0.0.2", network: str = "proxy", **labels: str) -> ContainerInfo:
    return container(name, id=f"{abs(hash(name)):x}0000000000", labels=labels, networks={network: ip})


def valid(name: str, *domains: str) -> CertStatus:
    return CertStatus(name, domains=domains, issuer="Pebble", not_before=NOW, not_after=NOW + dt.timedelta(days=90))


def ask(name: str, *containers: ContainerInfo, acme: dict[str, CertState] | None = None, **kw: object) -> Explanation:
    kw.setdefault("policy", Policy())
    inputs = Inputs(containers=containers, statuses=kw.pop("statuses", {}), certs_dir=CERTS, **kw)  # type: ignore[arg-type]
    return explain(name, inputs, acme or {})


def test_served_container_names_its_variables_network_conflict_role_and_certificate() -> None:
    web = ContainerInfo(
        id="abcdef0123456789",
        name="web",
        labels={"VIRTUAL_HOST": "a.example.com", "LETSENCRYPT_HOST": "a.example.com"},
        env={"VIRTUAL_HOST": "ignored.example.com", "VIRTUAL_PORT": "8080"},
        networks={"proxy": "10.0.0.2", "zz-back": "10.9.0.2"},
    )
    found = ask("web", web, statuses={"a.example.com": valid("a.example.com", "a.example.com")}, policy=Policy())
    assert found.verdict is Verdict.SERVED and found.exit_code == 0
    assert found.reason == "a.example.com/ (port 8080)"
    text = found.text()
    assert 'VIRTUAL_HOST="a.example.com": label, set on the container; counts' in text
    assert 'VIRTUAL_HOST="ignored.example.com": environment, set on the container; not used: the label wins' in text
    assert 'VIRTUAL_PORT="8080": environment, set on the container; counts' in text
    assert "network: proxy, address 10.0.0.2 (nginx runs on the host: the first by name); also on zz-back" in text
    assert "host a.example.com/: this container decides the host's settings (first by name)" in text
    assert (
        "certificate for a.example.com: lineage a.example.com (the freshest certificate naming the host); "
        "valid until 2030-04-01 00:00 UTC" in text
    )
    assert "certificate order: lineage a.example.com for a.example.com; valid" in text
    assert text.endswith("verdict: served: a.example.com/ (port 8080)\n")
    # The same container by an id prefix.
    assert ask("abcdef01", web, policy=Policy()).verdict is Verdict.SERVED


def test_typed_proxy_settings_are_shown_parsed() -> None:
    labels = {"VIRTUAL_HOST": "t.example.com", "PROXY_MAX_BODY_SIZE": "10M", "PROXY_READ_TIMEOUT": "5m"}
    tuned = c("tuned", **labels, PROXY_BUFFERING="off", PROXY_ALLOW_FROM="10.0.0.0/8, ::1")
    text = ask("tuned", tuned, policy=Policy()).text()
    assert (
        "PROXY_MAX_BODY_SIZE=10m, PROXY_READ_TIMEOUT=300s, PROXY_BUFFERING=off, PROXY_ALLOW_FROM=10.0.0.0/8,::1/128"
        in text
    )


def test_hostile_value_is_left_out_naming_the_variable_and_shown_escaped() -> None:
    hostile = "evil.test;\n}\x1b[31m\u202e"
    found = ask("bad", c("bad", VIRTUAL_HOST=hostile), policy=Policy())
    assert found.verdict is Verdict.LEFT_OUT and found.exit_code == 1
    assert found.reason.startswith("container bad: VIRTUAL_HOST='evil.test;")
    assert " rejected: not a valid internationalised hostname" in found.reason
    text = found.text()
    for raw in ("\x1b", "\u202e", ";\n}"):
        assert raw not in text
    assert 'VIRTUAL_HOST="evil.test;\\x0a}\\x1b[31m\\u202e": label, set on the container; counts' in text
    assert all("\n" not in line for line in found.lines)


def test_container_on_no_network_shared_with_nginx_is_not_served() -> None:
    found = ask("lonely", c("lonely", network="back", VIRTUAL_HOST="a.example.com"), nginx_networks=("front",))
    assert found.verdict is Verdict.LEFT_OUT
    assert found.reason == "not reachable (no IP address on a network shared with nginx); its paths answer 502"
    assert "network: none (no IP address on a network shared with nginx)" in found.lines


def test_unhealthy_container_is_left_out_until_healthy() -> None:
    sick = ContainerInfo(id="1234", name="sick", labels={"VIRTUAL_HOST": "a.example.com"}, health="unhealthy")
    found = ask("sick", sick)
    assert found.verdict is Verdict.LEFT_OUT
    assert found.reason == "its health check reports unhealthy; left out until it passes"
    host = ask("a.example.com", sick)
    assert host.verdict is Verdict.LEFT_OUT
    assert "container sick claims it but is left out: its health check reports unhealthy" in host.lines


def test_lost_conflict_names_the_winner_the_variables_and_why() -> None:
    alpha = c("alpha", "10.0.0.2", VIRTUAL_HOST="a.example.com", HTTPS_METHOD="noredirect", HSTS="off")
    zeta = c("zeta", "10.0.0.3", VIRTUAL_HOST="a.example.com")
    remembered = ask("alpha", alpha, zeta, owners={"a.example.com": "zeta"})
    assert remembered.verdict is Verdict.SERVED  # it still serves as a backend
    assert (
        "host a.example.com/: zeta decides the host's settings (it served the host first); its HTTPS_METHOD, HSTS "
        "lost; load-balanced with zeta" in remembered.lines
    )
    assert any("disagree on HTTPS_METHOD, HSTS; using zeta's" in line for line in remembered.lines)
    by_name = ask("zeta", alpha, zeta)
    assert "host a.example.com/: alpha decides the host's settings (first by name); its HTTPS_METHOD, HSTS lost" in (
        by_name.text()
    )
    host = ask("a.example.com", alpha, zeta, owners={"a.example.com": "zeta"})
    assert host.verdict is Verdict.SERVED and host.reason == "by alpha, zeta"
    assert "settings decided by zeta (it served the host first): HTTPS_METHOD=redirect, HSTS=max-age=31536000" in (
        host.lines
    )
    assert "path /: alpha (10.0.0.2:80), zeta (10.0.0.3:80)" in host.lines


def test_name_outside_allowed_domains_or_owned_by_another_project_is_refused() -> None:
    outsider = c("outsider", VIRTUAL_HOST="x.evil.test")
    policy = Policy(allowed_domains=("*.example.com",))
    found = ask("outsider", outsider, policy=policy)
    assert found.verdict is Verdict.LEFT_OUT
    assert found.reason == (
        "container outsider: VIRTUAL_HOST='x.evil.test' rejected: x.evil.test is not in the allowed domains "
        "(*.example.com)"
    )
    host = ask("x.evil.test", outsider, policy=policy)
    assert host.verdict is Verdict.LEFT_OUT and host.exit_code == 1
    assert host.lines[-1].startswith("container outsider claims it but is left out: container outsider: VIRTUAL_HOST")
    owners = Policy(owners=trust.parse_owner_rules("*.shop.example.com=project:shop"))
    owned = ask("outsider", c("outsider", VIRTUAL_HOST="a.shop.example.com"), policy=owners)
    assert owned.reason.endswith("rejected: a.shop.example.com belongs to project:shop (DOMAIN_OWNERS)")


def test_failing_certificate_shows_the_last_error_and_next_retry(tmp_path: Path) -> None:
    retry = dt.datetime(2030, 1, 2, 3, 4, tzinfo=dt.UTC).timestamp()
    save_state(
        tmp_path,
        {
            "a.example.com": CertState(
                domains=["a.example.com"], failures=3, next_try=retry, last_error="Connection refused\x1b[2J"
            )
        },
    )
    web = c("web", VIRTUAL_HOST="a.example.com", LETSENCRYPT_HOST="a.example.com")
    found = ask("web", web, acme=load_state(tmp_path))
    assert found.verdict is Verdict.SERVED
    assert (
        "  certificate order: lineage a.example.com for a.example.com; failing (3x), next try 2030-01-02 03:04 UTC: "
        "Connection refused\\x1b[2J" in found.lines
    )
    assert "  certificate for a.example.com: none issued yet; a self-signed placeholder stands in" in found.lines


def test_image_set_certificate_variable_is_ignored_under_routing_and_said_so() -> None:
    info = ContainerInfo(
        id="5678",
        name="imaged",
        labels={"VIRTUAL_HOST": "a.example.com", "LETSENCRYPT_HOST": "a.example.com", "HSTS": "off"},
        image_labels=frozenset({"VIRTUAL_HOST", "LETSENCRYPT_HOST", "HSTS"}),
        networks={"proxy": "10.0.0.2"},
    )
    found = ask("imaged", info)
    assert found.verdict is Verdict.SERVED
    text = found.text()
    assert 'VIRTUAL_HOST="a.example.com": label, from its image; counts (TRUST_IMAGE_LABELS=routing lets' in text
    assert (
        'LETSENCRYPT_HOST="a.example.com": label, from its image; ignored: TRUST_IMAGE_LABELS=routing does not let '
        "an image set it" in text
    )
    assert "  certificate order: none (no ACME_HOST/LETSENCRYPT_HOST)" in found.lines
    assert "HSTS=max-age=31536000" in text
    assert "container imaged: ignoring values its image sets (HSTS, LETSENCRYPT_HOST)" in text
    nothing = ask("imaged", info, policy=Policy(image_trust=trust.ImageTrust.NONE))
    assert nothing.verdict is Verdict.LEFT_OUT
    assert nothing.reason == (
        "its image sets LETSENCRYPT_HOST, VIRTUAL_HOST, which TRUST_IMAGE_LABELS=none ignores; "
        "it sets no VIRTUAL_HOST itself"
    )


def test_unsupported_and_misspelled_variables_are_reported() -> None:
    web = c("web", VIRTUAL_HOST="a.example.com", VIRTUAL_PORTT="8080", ACME_PRE_HOOK="rm -rf /")
    text = ask("web", web).text()
    assert "container web: VIRTUAL_PORTT is not a variable the companion reads; did you mean VIRTUAL_PORT?" in text
    assert "container web: ACME_PRE_HOOK is not supported (refused on purpose" in text


def test_certificate_chosen_by_cert_name_or_wildcard_says_which_and_why() -> None:
    statuses = {
        "shared": valid("shared", "a.example.com", "b.example.com"),
        "wild": valid("wild", "*.example.com"),
    }
    named = ask("a.example.com", c("web", VIRTUAL_HOST="a.example.com", CERT_NAME="shared"), statuses=statuses)
    assert "certificate: lineage shared (its CERT_NAME); valid until 2030-04-01 00:00 UTC" in named.lines
    wild = ask("c.example.com", c("web", VIRTUAL_HOST="c.example.com"), statuses=statuses)
    assert "certificate: lineage wild (a wildcard certificate (*.example.com)); valid until 2030-04-01 00:00 UTC" in (
        wild.lines
    )


def test_unknown_or_ambiguous_names_exit_2() -> None:
    web = ContainerInfo(id="abc1", name="web", labels={"VIRTUAL_HOST": "a.example.com"})
    other = ContainerInfo(id="abc2", name="other")
    assert ask("nothing.example.com", web, other).exit_code == 2
    assert ask("no such thing!", web).exit_code == 2
    ambiguous = ask("abc", web, other)
    assert ambiguous.exit_code == 2 and "(other, web)" in ambiguous.reason
    plain = ask("other", web, other)
    assert plain.exit_code == 1
    assert plain.reason == "it sets no VIRTUAL_HOST or VIRTUAL_HOST_MULTIPORTS: the companion does not route it"


def test_certificate_state_words_are_the_certs_commands_and_escape_the_ca() -> None:
    entry = CertState(failures=2, next_try=NOW.timestamp(), last_error="refused\n\x1b[31m" + "x" * 100)
    assert describe(None, entry) == "failing (2x), next try 2030-01-01 00:00 UTC: refused\\x0a\\x1b[31m" + "x" * 67
    assert describe(None, CertState(in_progress=True)) == "renewing"
    assert describe(CertStatus("a", problem="no key"), CertState()) == "placeholder (no key)"
    assert describe(valid("a", "a.com"), CertState()) == "valid"


def test_a_swarm_service_is_explained_by_its_name_through_its_first_task() -> None:
    """`companion explain web` on a Swarm controller: the service, not only its tasks `web.1`, `web.2`."""

    def task(slot: int, ip: str) -> ContainerInfo:
        return ContainerInfo(
            id=f"task{slot}",
            name=f"web.{slot}",
            service="web",
            labels={"VIRTUAL_HOST": "web.example.com"},
            networks={"proxy": ip},
        )

    found = ask("web", task(10, "10.0.0.10"), task(2, "10.0.0.2"), c("other", VIRTUAL_HOST="o.example.com"))
    assert found.exit_code == 0
    assert found.lines[0] == "Swarm service web: 2 running task(s) (web.2, web.10); as its task web.2:"
    assert found.subject == "web.2"
    assert ask("we", task(1, "10.0.0.1")).exit_code == 2  # a service name is matched whole, not as a prefix
