"""Fast checks of the Swarm channel's pure parts: bundles, signatures, the publisher's state, an agent's apply.

The real proof (controller process, agent containers, real nginx and TLS) is tests/test_agent.py.
"""

from __future__ import annotations

import json
import stat
import threading
import time
from pathlib import Path

import pytest

from companion import agent, bundle, cluster, publisher
from companion.config import Settings
from companion.nginx import NginxControl, NginxError

CONTROLLER = cluster.new_secrets()
SECRET = CONTROLLER.agent
CONF = "/etc/nginx/conf.d"


def _files(certs_dir: str) -> dict[str, str]:
    return {
        "companion.conf": f"server {{\n    ssl_certificate {certs_dir}/live/a/fullchain.pem;\n"
        f"    ssl_certificate_key {certs_dir}/live/a/privkey.pem;\n}}\n",
        "companion-tls.inc": "ssl_protocols TLSv1.2;\n",
    }


def test_a_bundle_carries_exactly_the_certificates_its_files_name_and_round_trips() -> None:
    files = _files("/certs")
    made = bundle.build(files, CONF, "/certs", lambda path: f"PEM of {path}")
    assert sorted(made.certs) == ["live/a/fullchain.pem", "live/a/privkey.pem"]
    again = bundle.build(dict(reversed(list(files.items()))), CONF, "/certs", lambda path: f"PEM of {path}")
    assert again.generation == made.generation and again.body() == made.body()
    assert bundle.parse(made.body()) == made
    changed = bundle.build(files, CONF, "/certs", lambda path: f"renewed {path}")
    assert changed.generation != made.generation  # a renewed certificate is a new generation


def test_a_file_outside_the_certs_dir_is_not_sent() -> None:
    made = bundle.build({"companion.conf": "ssl_certificate_key /etc/shadow;\n"}, CONF, "/certs", lambda p: "read")
    assert made.certs == {}


@pytest.mark.parametrize(
    ("files", "certs"),
    [
        ({"../companion.conf": ""}, {}),
        ({".hidden.conf": ""}, {}),
        ({"a/b.conf": ""}, {}),
        ({}, {"../../etc/passwd": ""}),
        ({}, {"live/../../x": ""}),
        ({}, {"/abs/privkey.pem": ""}),
        ({}, {"live/.x/privkey.pem": ""}),
    ],
)
def test_a_bundle_naming_a_path_outside_its_folders_is_refused_whole(
    files: dict[str, str], certs: dict[str, str]
) -> None:
    forged = bundle.Bundle("0", CONF, "/certs", files, certs)
    body = bundle.canonical(bundle._digest(CONF, "/certs", files, certs), CONF, "/certs", files, certs)
    assert forged.files == files
    with pytest.raises(bundle.BadBundle):
        bundle.parse(body)


def test_a_bundle_whose_generation_does_not_match_its_contents_is_refused() -> None:
    made = bundle.build(_files("/certs"), CONF, "/certs", lambda path: "x")
    forged = bundle.canonical(made.generation, CONF, "/certs", {"companion.conf": "evil"}, made.certs)
    with pytest.raises(bundle.BadBundle, match="generation"):
        bundle.parse(forged)


def _headers(signed: dict[str, str], length: int | None = None) -> dict[str, str]:
    return {**signed, "Content-Length": str(length if length is not None else signed[cluster.LENGTH_HEADER])}


def test_a_signature_holds_only_for_the_same_keys_nonce_length_and_bytes() -> None:
    other = cluster.new_secrets()
    signed = cluster.sign(CONTROLLER, "nonce-1", b"body")
    length, digest = cluster.announced(SECRET, "nonce-1", _headers(signed), 1000)
    assert cluster.check_body(b"body", length, digest) == b"body"
    with pytest.raises(cluster.Refused, match="not the one signed"):
        cluster.check_body(b"bodY", length, digest)
    with pytest.raises(cluster.Refused, match="signature"):
        cluster.announced(SECRET, "nonce-2", _headers(signed), 1000)  # an old answer replayed
    with pytest.raises(cluster.Refused, match="signature"):
        cluster.announced(other.agent, "nonce-1", _headers(signed), 1000)
    with pytest.raises(cluster.Refused, match="signature"):
        cluster.announced(SECRET, "nonce-1", _headers({**signed, cluster.LENGTH_HEADER: "5"}), 1000)
    with pytest.raises(cluster.Refused, match="length"):
        cluster.announced(SECRET, "nonce-1", _headers(signed, length=5), 1000)  # Content-Length disagrees
    with pytest.raises(cluster.Refused, match="over 3"):
        cluster.announced(SECRET, "nonce-1", _headers(signed), 3)


def test_each_role_reads_only_its_own_secret_and_the_old_single_secret_says_what_to_run(tmp_path: Path) -> None:
    assert cluster.parse_controller_secret(CONTROLLER.text().encode()).server_cert == CONTROLLER.server_cert
    assert cluster.parse_agent_secret(SECRET.text().encode()).verify_key == CONTROLLER.sign_key.public_key()
    with pytest.raises(cluster.SecretError, match="agents get the agent secret"):
        cluster.parse_agent_secret(CONTROLLER.text().encode())
    with pytest.raises(cluster.SecretError, match="the controller needs the controller secret"):
        cluster.parse_controller_secret(SECRET.text().encode())
    old = (cluster._pem(CONTROLLER.ca_cert) + cluster._key_pem(CONTROLLER.ca_key)).encode()  # the old layout
    for parse in (cluster.parse_agent_secret, cluster.parse_controller_secret):
        with pytest.raises(cluster.SecretError, match="companion cluster-secret --create"):
            parse(old)
    with pytest.raises(cluster.SecretError, match="cannot read"):
        cluster.load_agent_secret(str(tmp_path / "missing"))
    tampered = {**json.loads(SECRET.text()), "server_cert": cluster._pem(cluster.new_secrets().server_cert)}
    with pytest.raises(cluster.SecretError, match="not from its CA"):
        cluster.parse_agent_secret(json.dumps(tampered).encode())


def test_the_publisher_wakes_a_waiting_agent_only_for_a_new_generation(tmp_path: Path) -> None:
    (tmp_path / "live/a").mkdir(parents=True)
    for name in ("fullchain.pem", "privkey.pem"):
        (tmp_path / "live/a" / name).write_text(name)
    pub = publisher.ClusterPublisher(CONF, str(tmp_path), str(tmp_path / "webroot"), 80)
    assert pub.apply(_files(str(tmp_path))).changed
    first = pub.generation()
    assert pub.apply(_files(str(tmp_path))).changed == ()
    assert pub.wait_newer("", 0.1) is not None
    started = time.monotonic()
    assert pub.wait_newer(first, 0.2) is None and time.monotonic() - started >= 0.2
    files = {**_files(str(tmp_path)), "companion-tls.inc": "ssl_protocols TLSv1.3;\n"}
    threading.Timer(0.1, pub.apply, [files]).start()
    newer = pub.wait_newer(first, 5)
    assert newer is not None and newer[0] != first and time.monotonic() - started < 2


def test_the_publisher_serves_only_token_names_from_the_webroot(tmp_path: Path) -> None:
    folder = tmp_path / ".well-known/acme-challenge"
    folder.mkdir(parents=True)
    (folder / "tok").write_text("answer")
    (folder / "tok\n").write_text("newline")
    (tmp_path / "secret").write_text("secret")
    pub = publisher.ClusterPublisher(CONF, str(tmp_path), str(tmp_path), 80)
    assert pub.challenge("tok") == b"answer"
    for bad in ("tok\n", "../../secret", "", ".x", "tok/"):
        assert pub.challenge(bad) is None


def test_nodes_report_errors_and_the_oldest_nginx_decides_the_rendering(tmp_path: Path) -> None:
    pub = publisher.ClusterPublisher(CONF, str(tmp_path), str(tmp_path), 8080)
    pub.apply({"companion.conf": "#\n"})
    pub.report("n1", "10.0.0.1", {"generation": pub.generation(), "nginx_version": "1.26.3"})
    pub.report("n2", "10.0.0.2", {"generation": "old", "error": "nginx rejected \x1b[31m", "nginx_version": "1.22.1"})
    n1, n2 = pub.nodes()
    assert (n1.current, n2.current) == (True, False)
    assert n2.error == "nginx rejected \\x1b[31m"  # escaped before any page or log shows it
    assert pub.nginx_version() == (1, 22, 1)
    publisher.SELF_CHECK_WAIT, saved = 0.2, publisher.SELF_CHECK_WAIT
    try:
        assert pub.self_check_bases() == ["http://10.0.0.1:8080", "http://10.0.0.2:8080"]
    finally:
        publisher.SELF_CHECK_WAIT = saved


class _Refusing(NginxControl):
    def __init__(self, refuse: bool) -> None:
        super().__init__("true", "true")
        self.refuse = refuse

    def test(self) -> None:
        if self.refuse:
            raise NginxError("[emerg] refused")


def _agent(tmp_path: Path, certs_dir: Path, node: str = "n1") -> agent.Agent:
    settings = Settings(
        conf_dir=str(tmp_path / "conf"), certs_dir=str(certs_dir), agent_state_dir=str(tmp_path / f"s-{node}")
    )
    return agent.Agent(settings, SECRET, node, agent.ChildNginx())


def test_an_agent_writes_keys_0600_and_puts_certificates_back_when_nginx_refuses(tmp_path: Path) -> None:
    certs_dir = tmp_path / "certs"
    node = _agent(tmp_path, certs_dir)
    files = _files(str(certs_dir))
    first = bundle.build(files, str(tmp_path / "conf"), str(certs_dir), lambda path: f"one {path}")
    node.nginx = _Refusing(False)  # type: ignore[assignment]
    assert node.apply(first).error == ""
    key = certs_dir / "live/a/privkey.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((certs_dir / "live/a").stat().st_mode) == 0o700
    second = bundle.build(
        {**files, "companion-tls.inc": "x"}, str(tmp_path / "conf"), str(certs_dir), lambda path: f"two {path}"
    )
    node.nginx = _Refusing(True)  # type: ignore[assignment]
    node.generation = first.generation
    outcome = node.apply(second)
    assert outcome.generation == first.generation and "refused" in outcome.error
    assert key.read_text() == "one live/a/privkey.pem"  # the last good certificate, not the refused one
    assert (tmp_path / "conf/companion-tls.inc").read_text() == files["companion-tls.inc"]


def test_an_agent_refuses_a_bundle_for_other_paths(tmp_path: Path) -> None:
    node = _agent(tmp_path, tmp_path / "certs")
    other = bundle.build({"companion.conf": "#\n"}, "/elsewhere", str(tmp_path / "certs"), lambda path: "")
    assert "set the same on both" in node.apply(other).error
    assert not (tmp_path / "conf").exists()
