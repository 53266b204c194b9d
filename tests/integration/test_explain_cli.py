"""`companion explain NAME` against a real Docker daemon: exit codes and the key phrases."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness.appimage import AppRunner
from tests.harness.companion import Companion
from tests.harness.companion import status_get as get
from tests.harness.nginx import HostNginx, body
from tests.harness.ports import free_port
from tests.harness.wait import wait_until

pytestmark = pytest.mark.integration

SOURCE = "# computed from a fresh snapshot; the service was not asked\n"


def unique_host(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}.example.test"


def test_explain_a_served_container_and_its_host(apps: AppRunner, host_nginx: HostNginx) -> None:
    companion = Companion(host_nginx, host_nginx.conf_dir.parent / "explain-served")
    host = unique_host("explain")
    app = apps("explain", environment={"VIRTUAL_HOST": host, "VIRTUAL_PORT": "80"})
    result = companion.cli("explain", app.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(SOURCE + f"container {app.name} (id {app.id[:12]})\n")
    assert f'VIRTUAL_HOST="{host}": environment, set on the container; counts' in result.stdout
    assert "network: bridge, address " in result.stdout
    assert f"host {host}/: this container decides the host's settings (first by name)" in result.stdout
    assert result.stdout.endswith(f"verdict: served: {host}/ (port 80)\n")
    by_id = companion.cli("explain", app.id[:10])
    assert by_id.returncode == 0 and f"container {app.name} " in by_id.stdout
    by_host = companion.cli("explain", host)
    assert by_host.returncode == 0, by_host.stdout
    assert f"path /: {app.name} (" in by_host.stdout
    assert by_host.stdout.endswith(f"verdict: served: by {app.name}\n")
    unknown = companion.cli("explain", unique_host("nobody"))
    assert unknown.returncode == 2
    assert "verdict: unknown: no running container and no host is named" in unknown.stdout


def test_explain_a_hostile_value_leaves_it_out_escaped(apps: AppRunner, host_nginx: HostNginx) -> None:
    companion = Companion(host_nginx, host_nginx.conf_dir.parent / "explain-hostile")
    app = apps("explain-bad", labels={"VIRTUAL_HOST": "evil.test;\n}\x1b[31mserver{"})
    result = companion.cli("explain", app.name)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "\x1b" not in result.stdout and ";\n}" not in result.stdout
    assert 'VIRTUAL_HOST="evil.test;\\x0a}\\x1b[31mserver{": label, set on the container; counts' in result.stdout
    assert f"verdict: left out: container {app.name}: VIRTUAL_HOST='evil.test;" in result.stdout
    assert "rejected: hostname must be letters, digits and hyphens" in result.stdout


def test_explain_the_container_that_lost_a_conflict_names_the_winner_and_why(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion]
) -> None:
    companion = make_companion()
    host = unique_host("lost")
    # The decider starts first, while its name sorts last: only "it served the host first" explains it.
    decider = apps("explain-zz", labels={"VIRTUAL_HOST": host, "HTTPS_METHOD": "nohttps"}, environment={"APP_ID": "z"})
    owners = companion.certs_dir / "companion" / "owners.json"
    wait_until(
        lambda: json.loads(owners.read_text()).get(host, {}).get("container") == decider.name, what="owner saved"
    )
    newcomer = apps("explain-aa", labels={"VIRTUAL_HOST": host, "HTTPS_METHOD": "noredirect", "HSTS": "off"})
    assert newcomer.name < decider.name
    assert wait_until(lambda: {body(host_nginx, host)[1] for _ in range(6)} >= {"z"}, what="host served")
    result = companion.cli("explain", newcomer.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        f"host {host}/: {decider.name} decides the host's settings (it served the host first); "
        f"its HTTPS_METHOD, HSTS lost; load-balanced with {decider.name}" in result.stdout
    )
    assert f"disagree on HTTPS_METHOD, HSTS; using {decider.name}'s (it served the host first)" in result.stdout
    by_host = companion.cli("explain", host)
    assert by_host.returncode == 0
    assert f"settings decided by {decider.name} (it served the host first): HTTPS_METHOD=nohttps" in by_host.stdout


def test_explain_a_name_outside_allowed_domains(apps: AppRunner, host_nginx: HostNginx) -> None:
    companion = Companion(
        host_nginx, host_nginx.conf_dir.parent / "explain-allowed", ALLOWED_DOMAINS="*.allowed.example.test"
    )
    host = unique_host("outside")
    app = apps("explain-out", environment={"VIRTUAL_HOST": host})
    result = companion.cli("explain", app.name)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.endswith(
        f"verdict: left out: container {app.name}: VIRTUAL_HOST='{host}' rejected: {host} is not in the allowed "
        "domains (*.allowed.example.test)\n"
    )
    by_host = companion.cli("explain", host)
    assert by_host.returncode == 1
    assert f"container {app.name} claims it but is left out: container {app.name}: VIRTUAL_HOST=" in by_host.stdout


def test_explain_asks_the_running_service_and_falls_back_when_it_is_gone(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion]
) -> None:
    domain = f"{uuid.uuid4().hex[:8]}.example.test"
    port = free_port()
    companion = make_companion(STATUS_LISTEN=f"0.0.0.0:{port}", ALLOWED_DOMAINS=f"*.{domain}")
    served_host, outside = f"svc.{domain}", unique_host("outside")
    served = apps("explain-svc", environment={"VIRTUAL_HOST": served_host})
    refused = apps("explain-svc-out", environment={"VIRTUAL_HOST": outside})
    assert wait_until(lambda: body(host_nginx, served_host)[0] == 200, timeout=30, what="site served")
    asked = f"# asked the running service at http://127.0.0.1:{port}/explain\n"

    result = companion.cli("explain", served.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(asked + f"container {served.name} (id {served.id[:12]})\n")
    assert result.stdout.endswith(f"verdict: served: {served_host}/ (port 80)\n")
    left_out = companion.cli("explain", refused.name)
    assert left_out.returncode == 1, left_out.stdout + left_out.stderr
    assert left_out.stdout.startswith(asked)
    assert left_out.stdout.endswith(
        f"verdict: left out: container {refused.name}: VIRTUAL_HOST='{outside}' rejected: {outside} is not in "
        f"the allowed domains (*.{domain})\n"
    )
    code, _, data = get(port, "/explain?name=" + "a" * 254)
    assert code == 400 and b"1 to 253 printable characters" in data
    assert get(port, "/explain?name=x&name=y")[0] == 400

    assert companion.stop() == 0
    fallback = companion.cli("explain", served.name)
    assert fallback.returncode == 0, fallback.stdout + fallback.stderr
    assert fallback.stdout.startswith(f"# the service did not answer at http://127.0.0.1:{port}/explain (")
    assert SOURCE + f"container {served.name} " in fallback.stdout
    assert fallback.stdout.endswith(f"verdict: served: {served_host}/ (port 80)\n")


def test_explain_authenticates_to_a_service_with_status_auth_and_says_why_when_it_cannot(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion], tmp_path: Path
) -> None:
    """Without STATUS_CREDENTIALS (or with wrong ones) explain used to fall back to a fresh snapshot without
    saying the service had refused it."""
    import bcrypt

    users = tmp_path / "status.htpasswd"
    users.write_text(f"admin:{bcrypt.hashpw(b's3cret', bcrypt.gensalt(rounds=4)).decode()}\n")
    good, wrong = tmp_path / "good", tmp_path / "wrong"
    good.write_text("admin:s3cret\n")
    wrong.write_text("admin:guess\n")
    port = free_port()
    companion = make_companion(STATUS_LISTEN=f"127.0.0.1:{port}", STATUS_AUTH=str(users))
    served_host = unique_host("auth")
    served = apps("explain-auth", environment={"VIRTUAL_HOST": served_host})
    assert wait_until(lambda: body(host_nginx, served_host)[0] == 200, timeout=30, what="site served")
    url = f"http://127.0.0.1:{port}/explain"

    result = companion.cli("explain", served.name, env={"STATUS_CREDENTIALS": str(good)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"# asked the running service at {url}\n")
    assert result.stdout.endswith(f"verdict: served: {served_host}/ (port 80)\n")

    missing = companion.cli("explain", served.name)
    assert (missing.returncode, missing.stdout) == (2, "")
    assert missing.stderr == (
        f"companion: the service at {url} did not explain: HTTP 401: the service requires a STATUS_AUTH password; "
        "set STATUS_CREDENTIALS to a user:password file\n"
    )
    refused = companion.cli("explain", served.name, env={"STATUS_CREDENTIALS": str(wrong)})
    assert (refused.returncode, refused.stdout) == (2, "")
    assert "HTTP 401: the credentials in STATUS_CREDENTIALS were refused" in refused.stderr
    assert "guess" not in refused.stderr
