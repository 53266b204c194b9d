"""Trust between containers on one daemon: what a container (or its image) may claim, and what it may not.

Each attack test reproduces an attack against the real parts (dockerd, nginx on the host or in a
container, Pebble + certbot, the companion process) and shows it fails; the legitimate-use tests show
the same rules leave ordinary setups working. Every test sets ALLOWED_DOMAINS to its own names (a uuid
tag), so containers of other tests on the shared daemon never reach its Pebble.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from docker.models.containers import Container

from tests.harness.appimage import CONTAINER_LABEL, NAME_PREFIX, AppRunner, wait_app
from tests.harness.companion import Companion
from tests.harness.images import derived_image
from tests.harness.nginx import HostNginx, body
from tests.harness.nginxcontainer import NGINX_LABEL, NginxContainer
from tests.harness.pebble import Pebble
from tests.harness.tls import https_body, served_cert
from tests.harness.wait import wait_quiet, wait_until

pytestmark = pytest.mark.integration

PLACEHOLDER_CN = "companion placeholder certificate"
COMPOSE_PROJECT = "com.docker.compose.project"


# -- helpers ---------------------------------------------------------------------------------------


def new_tag() -> str:
    return uuid.uuid4().hex[:8]


def domain(tag: str) -> str:
    """The allow-list pattern of one test."""
    return f"*.{tag}.trust.test"


def acme_env(pebble: Pebble, allowed: str, **extra: str) -> dict[str, str]:
    return {
        "ACME_CA_URI": pebble.directory_url,
        "CA_BUNDLE": str(pebble.ca_bundle_path),
        "ALLOWED_DOMAINS": allowed,
        **extra,
    }


def common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def san(cert: x509.Certificate) -> list[str]:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return sorted(ext.value.get_values_for_type(x509.DNSName))


def lineage_cert(certs_dir: Path, name: str) -> x509.Certificate:
    """The leaf of live/<name>/fullchain.pem."""
    return x509.load_pem_x509_certificate((certs_dir / "live" / name / "fullchain.pem").read_bytes())


def lineages(certs_dir: Path) -> dict[str, list[str]]:
    """Every readable lineage under live/ with its certificate's names."""
    out: dict[str, list[str]] = {}
    live = certs_dir / "live"
    if not live.is_dir():
        return out
    for folder in sorted(live.iterdir()):
        if folder.is_dir() and (folder / "fullchain.pem").exists():
            with contextlib.suppress(ValueError, OSError):
                out[folder.name] = san(lineage_cert(certs_dir, folder.name))
    return out


# Lines other tests' containers cause on the shared daemon: wake-ups and allow-list refusals.
NOISE = re.compile(r" DEBUG | is not in the allowed domains ")


def settle(companion: Companion, quiet: float = 1.5, timeout: float = 60.0, since: int = 0) -> None:
    """Wait until the companion logs nothing but other tests' noise for ``quiet`` seconds.

    Companion.wait_idle waits for a silent log, which containers of other test runs on the shared
    daemon may never allow (each start wakes the loop and logs its refusal by our allow-list).
    """

    def relevant() -> int:
        return sum(1 for line in companion.log()[since:].splitlines() if not NOISE.search(line))

    wait_quiet(relevant, quiet, timeout, "the companion to settle", 0.1, logs=[("companion log", companion.log)])


def warning(companion: Companion, pattern: str, timeout: float = 20.0) -> str:
    """Wait for a WARNING line matching ``pattern``; return the whole line."""
    return companion.wait_log(rf"WARNING [^\n]*{pattern}[^\n]*", timeout=timeout)


def image_ignored_line(companion: Companion, name: str, timeout: float = 20.0) -> tuple[str, list[str]]:
    """The 'ignoring values its image sets (...)' warning for container ``name`` and the variables it names."""
    line = warning(companion, rf"container {re.escape(name)}: ignoring values its image sets", timeout)
    match = re.search(r"ignoring values its image sets \(([^)]*)\)", line)
    assert match, line
    return line, [v.strip() for v in match.group(1).split(",")]


@pytest.fixture
def scratch_images(docker_client: docker.DockerClient, apps: AppRunner) -> Iterator[list[str]]:
    """Tags of per-test derived images (their recipe holds the test's uuid); removed after the test,
    once the test's containers are gone (so the images really go, not just their tags)."""
    made: list[str] = []
    yield made
    apps.cleanup()
    for tag in made:
        with contextlib.suppress(docker.errors.APIError):
            docker_client.images.remove(tag, force=True)


def run_raw(
    client: docker.DockerClient,
    apps: AppRunner,
    name: str,
    image: str,
    exposed: dict[str, dict],
    env: dict[str, str],
    labels: dict[str, str] | None = None,
) -> Container:
    """Create and start a container through the raw API, so ``ExposedPorts`` keys stay exactly as given
    (docker-py and the CLI turn ``"81"`` into ``"81/tcp"``; compose's ``expose:`` does not)."""
    api = client.api
    full_name = f"{NAME_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
    response = api._post_json(  # noqa: SLF001 - the public create_container normalises the port keys
        api._url("/containers/create"),  # noqa: SLF001
        params={"name": full_name},
        data={
            "Image": image,
            "ExposedPorts": exposed,
            "Env": [f"{k}={v}" for k, v in env.items()],
            "Labels": {CONTAINER_LABEL: "1", **(labels or {})},
        },
    )
    api._raise_for_status(response)  # noqa: SLF001
    container = client.containers.get(response.json()["Id"])
    apps.containers.append(container)
    container.start()
    return container


# -- 1. CERT_NAME takeover -------------------------------------------------------------------------


@pytest.mark.acme
def test_cert_name_cannot_take_over_another_containers_lineage(
    apps: AppRunner, host_nginx: HostNginx, pebble: Pebble, make_companion: Callable[..., Companion]
) -> None:
    tag = new_tag()
    allowed = domain(tag)
    companion = make_companion(**acme_env(pebble, allowed))
    victim_host, attacker_host = f"victim.{tag}.trust.test", f"attacker.{tag}.trust.test"
    victim = apps(
        "zz-victim", environment={"VIRTUAL_HOST": victim_host, "LETSENCRYPT_HOST": victim_host, "APP_ID": "victim"}
    )
    context = ssl.create_default_context(cadata=pebble.roots_pem())
    original = wait_until(
        lambda: served_cert(host_nginx, victim_host, context), timeout=120, interval=0.5, what="victim"
    )
    assert san(original) == [victim_host]
    settle(companion)
    certs_dir = companion.certs_dir

    # The attacker's name sorts first and asks for its own name under the victim's certificate name.
    attacker = apps(
        "aa-attacker",
        environment={
            "VIRTUAL_HOST": attacker_host,
            "LETSENCRYPT_HOST": attacker_host,
            "CERT_NAME": victim_host,
            "APP_ID": "attacker",
        },
    )
    assert attacker.name < victim.name
    new_lineage = re.compile(rf"{re.escape(victim_host)}-[0-9a-f]{{8}}")
    found = wait_until(
        lambda: {n: names for n, names in lineages(certs_dir).items() if attacker_host in names},
        timeout=120,
        interval=0.5,
        what="the attacker's names ordered into some lineage",
    )
    settle(companion, quiet=2)
    assert victim_host not in found, f"the victim's lineage was rewritten: {found}"
    assert len(found) == 1 and new_lineage.fullmatch(next(iter(found))), found
    assert lineages(certs_dir)[victim_host] == [victim_host]
    on_disk = lineage_cert(certs_dir, victim_host)
    assert on_disk.serial_number == original.serial_number, "the victim's lineage was renewed by the attacker"
    now = served_cert(host_nginx, victim_host, context)  # verified: chain and name
    assert now.serial_number == original.serial_number and san(now) == [victim_host]
    assert https_body(host_nginx, victim_host, context) == (200, "victim")
    orders = pebble.orders_seen()

    # A CERT_NAME outside the allow-list is refused like any other name, and nothing is ordered for it.
    intranet = "intranet.corp.internal"
    intra_host = f"intra.{tag}.trust.test"
    refused = apps(
        "intranet",
        environment={"VIRTUAL_HOST": intra_host, "LETSENCRYPT_HOST": intra_host, "CERT_NAME": intranet},
    )
    line = warning(companion, rf"container {re.escape(refused.name)}: CERT_NAME=")
    assert f"CERT_NAME='{intranet}' rejected: {intranet} is not in the allowed domains ({allowed})" in line, line
    settle(companion, quiet=2)
    assert pebble.orders_seen() == orders, "an order went out for a refused CERT_NAME"
    assert not (certs_dir / "live" / intranet).exists()
    assert not any(intra_host in names for names in lineages(certs_dir).values())
    assert intranet not in (host_nginx.conf_dir / "companion.conf").read_text()
    assert host_nginx.check().returncode == 0, host_nginx.check().stderr
    print(
        f"\ntrust 1: victim's lineage kept serial {original.serial_number:x} and names [{victim_host}]; "
        f"the attacker's names went to {next(iter(found))}; CERT_NAME={intranet} refused, Pebble orders stayed {orders}"
    )


# -- 2. a fake nginx container ---------------------------------------------------------------------


def _events(client: docker.DockerClient, container: Container, since: float) -> list[str]:
    """Actions Docker recorded for ``container`` since ``since`` (exec_create, kill, ...)."""
    events = client.api.events(
        since=int(since), until=int(time.time()) + 1, decode=True, filters={"container": container.id}
    )
    return [str(e.get("Action", "")) for e in events]


def test_only_the_labelled_nginx_that_mounts_the_conf_dir_is_used(
    docker_client: docker.DockerClient, apps: AppRunner, scratch_images: list[str], tmp_path: Path
) -> None:
    tag = new_tag()
    allowed = domain(tag)
    workdir = tmp_path / "companion"
    nginx = NginxContainer(
        docker_client,
        tmp_path,
        conf_dir=tmp_path / "nginx" / "conf.d",
        certs_dir=workdir / "certs",
        webroot=workdir / "webroot",
        name="zz-real-nginx",
    )
    # A network whose name sorts before "bridge": an nginx counted on it would steer upstream addresses there.
    decoy_net = docker_client.networks.create(f"aaa-ctest-trust-{tag}", labels={CONTAINER_LABEL: "1"})
    companion: Companion | None = None
    started = time.time()
    try:
        nginx.start()
        # A labelled container with no nginx in it, on the decoy network only.
        fake = apps("aa-fake-nginx", labels={NGINX_LABEL: ""}, network=decoy_net.name)
        # An image that carries the nginx label itself (an image from a registry could).
        labelled_image = derived_image(docker_client, labels={NGINX_LABEL: ""})
        from_image = apps("aa-image-nginx", image=labelled_image)
        assert NGINX_LABEL in docker_client.images.get(labelled_image).labels

        site_host = f"site.{tag}.trust.test"
        site = apps("site", environment={"VIRTUAL_HOST": site_host, "APP_ID": "site"})
        decoy_net.connect(site)
        wait_app(site)

        companion = Companion(
            nginx,  # type: ignore[arg-type] - duck-typed like a HostNginx
            workdir,
            NGINX_TEST="docker",
            NGINX_RELOAD="docker",
            ALLOWED_DOMAINS=allowed,
        ).start()
        t0 = time.monotonic()
        assert wait_until(
            lambda: nginx.body(site_host) == (200, "site"), timeout=30, what="site through real nginx", stable=3
        )
        served_after = time.monotonic() - t0
        for impostor in (fake, from_image):
            line = warning(
                companion,
                rf"{re.escape(impostor.name)}[^\n]*not used as nginx|not used as nginx[^\n]*"
                rf"{re.escape(impostor.name)}",
            )
            assert impostor.name in line and "not used as nginx" in line, line
        settle(companion, quiet=2)
        code, output = nginx.check()
        assert code == 0, output
        conf = (nginx.conf_dir / "companion.conf").read_text()
        site.reload()
        decoy_ip = site.attrs["NetworkSettings"]["Networks"][decoy_net.name]["IPAddress"]
        bridge_ip = site.attrs["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
        assert decoy_ip and decoy_ip not in conf, "a fake nginx's network steered the upstream address"
        assert f"{bridge_ip}:80" in conf
        for _ in range(10):
            assert nginx.body(site_host) == (200, "site")
        # nginx -t and the reload went to the real nginx only.
        real_actions = _events(docker_client, nginx.container, started)  # type: ignore[arg-type]
        assert any(a.startswith("exec_create") for a in real_actions), real_actions
        assert any(a == "kill" for a in real_actions), real_actions
        for impostor in (fake, from_image):
            actions = _events(docker_client, impostor, started)
            assert not [a for a in actions if a.startswith("exec_") or a == "kill"], (impostor.name, actions)
        fake.reload()
        assert fake.status == "running"
        assert companion.count(rf"WARNING [^\n]*{re.escape(fake.name)}[^\n]*not used as nginx") <= 1
        assert companion.alive
        print(
            f"\ntrust 2: 2 impostor nginx containers reported and ignored; site served through the real nginx "
            f"container {served_after:.1f}s after start; nginx -t in it passed; no exec or signal reached the fakes"
        )
    finally:
        if companion is not None:
            companion.stop()
            lines = [line for line in companion.log().splitlines() if " DEBUG " not in line]
            print("---- companion log (tail, without DEBUG) ----\n" + "\n".join(lines[-80:]))
        nginx.remove()
        apps.cleanup()
        with contextlib.suppress(docker.errors.APIError):
            decoy_net.remove()


# -- 3. wildcard + CERT_NAME -----------------------------------------------------------------------


@pytest.mark.acme
def test_wildcard_with_cert_name_does_not_present_the_victims_certificate(
    apps: AppRunner, host_nginx: HostNginx, pebble: Pebble, make_companion: Callable[..., Companion]
) -> None:
    tag = new_tag()
    companion = make_companion(**acme_env(pebble, domain(tag)))
    victim_host = f"victim.{tag}.trust.test"
    victim = apps(
        "zz-victim", environment={"VIRTUAL_HOST": victim_host, "LETSENCRYPT_HOST": victim_host, "APP_ID": "victim"}
    )
    context = ssl.create_default_context(cadata=pebble.roots_pem())
    original = wait_until(
        lambda: served_cert(host_nginx, victim_host, context), timeout=120, interval=0.5, what="victim"
    )
    settle(companion)

    wildcard = f"*.{tag}.trust.test"
    apps("aa-attacker", environment={"VIRTUAL_HOST": wildcard, "CERT_NAME": victim_host, "APP_ID": "attacker"})
    other = f"other.{tag}.trust.test"
    assert wait_until(lambda: body(host_nginx, other)[1] == "attacker", what="the wildcard routed")
    # While the victim runs, its own server block keeps its certificate.
    assert served_cert(host_nginx, victim_host, context).serial_number == original.serial_number
    victim.stop(timeout=1)
    stopped_at = time.monotonic()

    def presented() -> x509.Certificate | None:
        cert = served_cert(host_nginx, victim_host)
        return cert if cert.serial_number != original.serial_number else None

    cert = wait_until(presented, timeout=20, what="the victim's certificate gone from SNI victim")
    line = warning(companion, "does not cover")
    assert victim_host in line and wildcard in line, line
    switched = time.monotonic() - stopped_at
    settle(companion)
    cert = served_cert(host_nginx, victim_host)
    assert cert.serial_number != original.serial_number
    assert common_name(cert) == PLACEHOLDER_CN, (common_name(cert), san(cert))
    assert victim_host not in san(cert)
    # The lineage itself is untouched and nothing was ordered for the wildcard.
    assert lineage_cert(companion.certs_dir, victim_host).serial_number == original.serial_number
    assert not any(n.startswith("*") for names in lineages(companion.certs_dir).values() for n in names)
    assert host_nginx.check().returncode == 0
    print(
        f"\ntrust 3: wildcard + CERT_NAME={victim_host} got the placeholder ('does not cover' logged); "
        f"SNI victim stopped presenting serial {original.serial_number:x} {switched:.1f}s after the victim stopped"
    )


# -- 4. generated upstream names -------------------------------------------------------------------


def test_a_host_named_like_a_path_upstream_cannot_replace_its_backends(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion]
) -> None:
    tag = new_tag()
    shop = f"shop.{tag}.trust.test"
    suffix = hashlib.sha1(b"/api/").hexdigest()[:10]
    lookalike = f"{shop}-{suffix}"
    # The allow-list admits the look-alike too: the point is what happens when it is a valid name.
    companion = make_companion(ALLOWED_DOMAINS=f"{shop},{shop}-*")
    apps(
        "zz-victim",
        environment={"VIRTUAL_HOST": shop, "VIRTUAL_PATH": "/api/", "APP_PATHS": "/api", "APP_ID": "victim-api"},
    )
    assert wait_until(lambda: body(host_nginx, shop, "/api/") == (200, "victim-api"), what="victim routed")
    settle(companion)
    apps("aa-attacker", environment={"VIRTUAL_HOST": lookalike, "APP_PATHS": "/api", "APP_ID": "attacker"})
    assert wait_until(lambda: body(host_nginx, lookalike) == (200, "attacker"), what="look-alike routed")
    settle(companion)
    answers = [body(host_nginx, shop, "/api/") for _ in range(20)]
    assert set(answers) == {(200, "victim-api")}, answers
    assert body(host_nginx, lookalike, "/api/") == (200, "attacker")
    conf = (host_nginx.conf_dir / "companion.conf").read_text()
    names = re.findall(r"^upstream (\S+) \{", conf, re.MULTILINE)
    assert len(names) == len(set(names)), names
    check = host_nginx.check()
    assert check.returncode == 0, check.stderr
    print(f"\ntrust 4: {shop}/api/ answered the victim 20/20 beside {lookalike}; {len(names)} distinct upstreams")


# -- 5. bounded work -------------------------------------------------------------------------------


def test_oversized_and_invalid_values_are_refused_alone_and_others_keep_applying(
    docker_client: docker.DockerClient,
    apps: AppRunner,
    host_nginx: HostNginx,
    make_companion: Callable[..., Companion],
) -> None:
    tag = new_tag()
    companion = make_companion(ALLOWED_DOMAINS=domain(tag))
    before = apps("before", environment={"VIRTUAL_HOST": f"before.{tag}.trust.test", "APP_ID": "before"})
    assert before and wait_until(lambda: body(host_nginx, f"before.{tag}.trust.test") == (200, "before"))
    settle(companion)

    huge_value = ",".join(f"n{i}.{tag}.trust.test" for i in range(30_000))
    many_value = ",".join(f"m{i}.{tag}.trust.test" for i in range(101))
    padded_value = f"padded.{tag}.trust.test" + "," * 40_000
    assert len(many_value) < 32768 < len(padded_value)
    huge = apps("huge", labels={"VIRTUAL_HOST": huge_value})
    many = apps("many", labels={"VIRTUAL_HOST": many_value})
    padded = apps("padded", labels={"VIRTUAL_HOST": padded_value})
    zero_image = derived_image(docker_client, expose=["0/tcp"])
    zero = apps("zero", image=zero_image, environment={"VIRTUAL_HOST": f"zero.{tag}.trust.test"})
    assert list(docker_client.images.get(zero_image).attrs["Config"]["ExposedPorts"]) == ["0/tcp"]

    settle(companion)

    # A normal container, and one whose exposed port key is bare ("81", as compose's `expose:` sends it).
    bare_image = derived_image(docker_client, expose=[])
    normal_host, bare_host = f"normal.{tag}.trust.test", f"bare.{tag}.trust.test"
    t0 = time.monotonic()
    apps("normal", environment={"VIRTUAL_HOST": normal_host, "APP_ID": "normal"})
    bare = run_raw(
        docker_client,
        apps,
        "bare",
        bare_image,
        exposed={"81": {}},
        env={"VIRTUAL_HOST": bare_host, "APP_ID": "bare", "APP_PORT": "81"},
    )
    assert list(bare.attrs["Config"]["ExposedPorts"]) == ["81"]
    assert wait_until(lambda: body(host_nginx, normal_host) == (200, "normal"), timeout=10, what="normal served")
    normal_after = time.monotonic() - t0
    assert normal_after < 5, f"a normal container took {normal_after:.1f}s"
    assert wait_until(lambda: body(host_nginx, bare_host) == (200, "bare"), timeout=10, what="bare port 81 served")
    line = warning(companion, rf"container {re.escape(huge.name)}: VIRTUAL_HOST=", timeout=30)
    assert re.search(r"rejected: (more than 100 host names|[^\n]*longer than 32768 bytes)", line), line
    line = warning(companion, rf"container {re.escape(many.name)}: VIRTUAL_HOST=")
    assert "rejected: more than 100 host names" in line, line
    line = warning(companion, rf"container {re.escape(padded.name)}: VIRTUAL_HOST=")
    assert "longer than 32768 bytes" in line, line
    line = warning(companion, rf"container {re.escape(zero.name)}: EXPOSE=")
    assert "EXPOSE='0/tcp' rejected: port must be a number from 1 to 65535" in line, line
    for line in companion.log().splitlines():
        assert len(line) < 2000, f"a log line of {len(line)} characters"

    check = host_nginx.check()
    assert check.returncode == 0, check.stderr
    conf = (host_nginx.conf_dir / "companion.conf").read_text()
    assert f"n0.{tag}" not in conf and f"m0.{tag}" not in conf and f"zero.{tag}" not in conf
    assert body(host_nginx, f"before.{tag}.trust.test") == (200, "before")
    assert companion.alive
    print(
        f"\ntrust 5: 30,000 names ({len(huge_value)} bytes), 101 names, a {len(padded_value)}-byte value and "
        f"EXPOSE 0/tcp refused alone; a normal container served {normal_after:.1f}s after start; bare '81' served"
    )


# -- legitimate uses -------------------------------------------------------------------------------


def test_blue_green_both_serve_and_stopping_one_fails_no_request(
    apps: AppRunner, host_nginx: HostNginx, make_companion: Callable[..., Companion]
) -> None:
    tag = new_tag()
    make_companion(ALLOWED_DOMAINS=domain(tag))
    host = f"app.{tag}.trust.test"
    blue = apps("blue", environment={"VIRTUAL_HOST": host, "APP_ID": "blue"})
    apps("green", environment={"VIRTUAL_HOST": host, "APP_ID": "green"})
    seen: set[str] = set()

    def both() -> bool:
        status, text = body(host_nginx, host)
        if status == 200:
            seen.add(text)
        return seen == {"blue", "green"}

    assert wait_until(both, timeout=20, what="both colours answering")
    results: list[tuple[int, str, float]] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            start = time.monotonic()
            try:
                status, _, data = host_nginx.get(host, timeout=15)
                results.append((status, data.decode(errors="replace").strip(), time.monotonic() - start))
            except OSError as exc:
                results.append((0, repr(exc), time.monotonic() - start))
            time.sleep(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    time.sleep(1)
    blue.stop(timeout=1)
    stopped_at = time.monotonic()
    wait_until(lambda: all(text == "green" for _, text, _ in results[-20:]) and len(results) > 40, timeout=20)
    time.sleep(1)
    stop.set()
    poller.join(20)
    failed = [r for r in results if r[0] != 200]
    assert failed == [], failed[:5]
    assert {text for _, text, _ in results} <= {"blue", "green"}
    assert [text for _, text, _ in results[-10:]] == ["green"] * 10
    slowest = max(r[2] for r in results)
    print(
        f"\nlegit blue/green: {len(results)} requests while blue stopped, 0 failed (slowest {slowest:.2f}s); "
        f"green alone {time.monotonic() - stopped_at:.1f}s after the stop"
    )


@pytest.mark.acme
def test_cert_name_shares_one_lineage_between_a_containers_hosts(
    apps: AppRunner, host_nginx: HostNginx, pebble: Pebble, make_companion: Callable[..., Companion]
) -> None:
    tag = new_tag()
    name = f"shared-{tag}"
    # CERT_NAME is checked against the allow-list like a host name, so the list admits it.
    companion = make_companion(**acme_env(pebble, f"{domain(tag)},{name}"))
    a, b = f"a.{tag}.trust.test", f"b.{tag}.trust.test"
    apps(
        "shared",
        environment={"VIRTUAL_HOST": f"{a},{b}", "LETSENCRYPT_HOST": f"{a},{b}", "CERT_NAME": name, "APP_ID": "shared"},
    )
    context = ssl.create_default_context(cadata=pebble.roots_pem())
    cert_a = wait_until(lambda: served_cert(host_nginx, a, context), timeout=120, interval=0.5, what=a)
    cert_b = wait_until(lambda: served_cert(host_nginx, b, context), timeout=30, interval=0.5, what=b)
    settle(companion)
    assert cert_a.serial_number == cert_b.serial_number
    assert san(cert_a) == sorted([a, b])
    assert lineages(companion.certs_dir) == {name: sorted([a, b])}
    assert lineage_cert(companion.certs_dir, name).serial_number == cert_a.serial_number
    assert https_body(host_nginx, a, context) == (200, "shared") == https_body(host_nginx, b, context)
    assert pebble.orders_seen() == 1
    assert "does not cover" not in companion.log()
    print(f"\nlegit shared certificate: one lineage {name} (1 order) presented for {a} and {b}")


@pytest.mark.acme
def test_image_routing_values_count_and_image_certificate_values_need_trust_all(
    docker_client: docker.DockerClient,
    apps: AppRunner,
    host_nginx: HostNginx,
    pebble: Pebble,
    make_companion: Callable[..., Companion],
    scratch_images: list[str],
) -> None:
    tag = new_tag()
    allowed = domain(tag)
    companion = make_companion(**acme_env(pebble, allowed))
    # (a) VIRTUAL_PORT from the image counts under the default `routing`: the app listens only there.
    port_image = derived_image(docker_client, env={"VIRTUAL_PORT": "8080", "APP_PORT": "8080"})
    port_host = f"port.{tag}.trust.test"
    port_app = apps(
        "image-port", image=port_image, environment={"VIRTUAL_HOST": port_host, "APP_ID": "port"}, wait=False
    )
    assert wait_app(port_app, port=8080)
    assert wait_until(lambda: body(host_nginx, port_host) == (200, "port"), what="image VIRTUAL_PORT honoured")
    # (b) LETSENCRYPT_HOST and HSTS from the image are ignored and reported once; nothing is ordered.
    cert_host = f"cert.{tag}.trust.test"
    cert_image = derived_image(docker_client, env={"LETSENCRYPT_HOST": cert_host, "HSTS": "off"})
    scratch_images.append(cert_image)
    cert_app = apps("image-cert", image=cert_image, environment={"VIRTUAL_HOST": cert_host, "APP_ID": "cert"})
    line, variables = image_ignored_line(companion, cert_app.name)
    assert {"LETSENCRYPT_HOST", "HSTS"} <= set(variables), line
    assert "VIRTUAL_PORT" not in variables
    assert wait_until(lambda: body(host_nginx, cert_host) == (200, "cert"), what="image-cert served over HTTP")
    settle(companion, quiet=2)
    assert pebble.orders_seen() == 0
    assert not (companion.certs_dir / "live" / cert_host).exists()
    assert companion.count(r"ignoring values its image sets[^\n]*") >= 1
    assert companion.count(rf"container {re.escape(cert_app.name)}: ignoring values its image sets") == 1
    assert not re.search(rf"container {re.escape(port_app.name)}: ignoring values", companion.log())

    # (c) TRUST_IMAGE_LABELS=all: the image's LETSENCRYPT_HOST is ordered.
    companion.stop()
    offset = len(companion.log())
    trusting = make_companion(**acme_env(pebble, allowed, TRUST_IMAGE_LABELS="all"))
    context = ssl.create_default_context(cadata=pebble.roots_pem())
    cert = wait_until(lambda: served_cert(host_nginx, cert_host, context), timeout=120, interval=0.5, what="ordered")
    assert san(cert) == [cert_host]
    assert https_body(host_nginx, cert_host, context) == (200, "cert")
    settle(trusting)
    assert "ignoring values its image sets" not in trusting.log()[offset:]
    assert "strict-transport-security" not in {k.lower() for k in host_nginx.get(cert_host, https=True)[1]}
    assert host_nginx.get(cert_host)[0] == 301
    assert body(host_nginx, port_host) == (200, "port")

    # (d) TRUST_IMAGE_LABELS=none: not even the image's VIRTUAL_PORT counts (port 80, where nothing listens).
    trusting.stop()
    offset = len(trusting.log())
    distrusting = make_companion(**acme_env(pebble, allowed, TRUST_IMAGE_LABELS="none"))
    assert wait_until(lambda: body(host_nginx, port_host)[0] == 502, what="image VIRTUAL_PORT ignored under none")
    line, variables = image_ignored_line(distrusting, port_app.name)
    assert "VIRTUAL_PORT" in variables, line
    assert distrusting.log()[offset:].count(f"container {port_app.name}: ignoring values its image sets") == 1
    print(
        "\nlegit image values: VIRTUAL_PORT from the image routed under routing (ignored under none); "
        "LETSENCRYPT_HOST/HSTS from it ignored and reported once under routing (0 orders), ordered under all"
    )


# -- DOMAIN_OWNERS ---------------------------------------------------------------------------------


@pytest.mark.acme
def test_domain_owners_serve_the_owner_and_refuse_outsiders(
    docker_client: docker.DockerClient,
    apps: AppRunner,
    host_nginx: HostNginx,
    pebble: Pebble,
    make_companion: Callable[..., Companion],
    scratch_images: list[str],
) -> None:
    tag = new_tag()
    project, team = f"shop-{tag}", f"b-{tag}"
    owners = f"*.a.{tag}.trust.test=project:{project},*.b.{tag}.trust.test=label:team={team}"
    companion = make_companion(**acme_env(pebble, domain(tag), DOMAIN_OWNERS=owners))
    www, evil, team_host = f"www.a.{tag}.trust.test", f"evil.a.{tag}.trust.test", f"site.b.{tag}.trust.test"
    apps(
        "owner",
        labels={COMPOSE_PROJECT: project},
        environment={"VIRTUAL_HOST": www, "LETSENCRYPT_HOST": www, "APP_ID": "owner"},
    )
    apps("team-b", labels={"team": team}, environment={"VIRTUAL_HOST": team_host, "APP_ID": "team-b"})
    context = ssl.create_default_context(cadata=pebble.roots_pem())
    assert wait_until(lambda: https_body(host_nginx, www, context) == (200, "owner"), timeout=120, interval=0.5)
    assert body(host_nginx, team_host) == (200, "team-b")
    settle(companion)
    orders = pebble.orders_seen()

    # Outsiders: a new name under the owner's pattern, the owner's own name, a name of team b, and a
    # container whose *image* carries the project label.
    outsider = apps("outsider", environment={"VIRTUAL_HOST": evil, "LETSENCRYPT_HOST": evil, "APP_ID": "evil"})
    squatter = apps("aa-squatter", environment={"VIRTUAL_HOST": www, "LETSENCRYPT_HOST": www, "APP_ID": "evil"})
    wrong_team = apps("wrong-team", labels={"team": "a"}, environment={"VIRTUAL_HOST": team_host, "APP_ID": "evil"})
    project_image = derived_image(docker_client, labels={COMPOSE_PROJECT: project})
    scratch_images.append(project_image)
    via_image = apps(
        "via-image", image=project_image, environment={"VIRTUAL_HOST": evil, "LETSENCRYPT_HOST": evil, "APP_ID": "evil"}
    )
    for container, host, owner in (
        (outsider, evil, f"project:{project}"),
        (squatter, www, f"project:{project}"),
        (wrong_team, team_host, f"label:team={team}"),
        (via_image, evil, f"project:{project}"),
    ):
        line = warning(companion, rf"container {re.escape(container.name)}: [^\n]*belongs to")
        assert f"rejected: {host} belongs to {owner} (DOMAIN_OWNERS)" in line, line
    settle(companion, quiet=2)
    assert pebble.orders_seen() == orders, "an outsider's name was ordered"
    assert not any(evil in names for names in lineages(companion.certs_dir).values())
    assert host_nginx.get(evil)[0] == 503
    answers = {https_body(host_nginx, www, context) for _ in range(10)} | {
        body(host_nginx, team_host) for _ in range(10)
    }
    assert answers == {(200, "owner"), (200, "team-b")}, answers
    assert san(served_cert(host_nginx, www, context)) == [www]
    check = host_nginx.check()
    assert check.returncode == 0, check.stderr
    print(
        f"\nlegit DOMAIN_OWNERS: owner and team b served (owner with its certificate); 4 outsiders refused, "
        f"Pebble orders stayed {orders}"
    )


# -- stable conflicts ------------------------------------------------------------------------------


def _hsts(nginx: HostNginx, host: str, context: ssl.SSLContext) -> str | None:
    status, headers, _ = nginx.get(host, https=True, context=context)
    assert status == 200, status
    return headers.get("Strict-Transport-Security")


@pytest.mark.acme
def test_the_container_that_served_a_host_first_keeps_deciding_across_a_restart(
    apps: AppRunner, host_nginx: HostNginx, pebble: Pebble, make_companion: Callable[..., Companion]
) -> None:
    tag = new_tag()
    settings = acme_env(pebble, domain(tag))
    companion = make_companion(**settings)
    host = f"conflict.{tag}.trust.test"
    owner = apps("zz-owner", environment={"VIRTUAL_HOST": host, "LETSENCRYPT_HOST": host, "APP_ID": "owner"})
    context = ssl.create_default_context(cadata=pebble.roots_pem())
    assert wait_until(lambda: https_body(host_nginx, host, context) == (200, "owner"), timeout=120, interval=0.5)
    assert wait_until(lambda: host_nginx.get(host)[0] == 301, what="HTTP redirect")
    assert _hsts(host_nginx, host, context) == "max-age=31536000"
    settle(companion)

    newcomer = apps(
        "aa-newcomer",
        environment={"VIRTUAL_HOST": host, "HTTPS_METHOD": "noredirect", "HSTS": "off", "APP_ID": "newcomer"},
    )
    assert newcomer.name < owner.name
    pattern = rf"host {re.escape(host)}: containers {re.escape(owner.name)} and {re.escape(newcomer.name)} disagree on"
    line = warning(companion, pattern)
    assert "HSTS" in line and "HTTPS_METHOD" in line, line
    assert f"using {owner.name}'s (it served the host first)" in line, line

    def holds(c: Companion) -> tuple[int, str | None, set[str]]:
        settle(c)
        seen = {https_body(host_nginx, host, context)[1] for _ in range(10)}
        return host_nginx.get(host)[0], _hsts(host_nginx, host, context), seen

    status, hsts, seen = holds(companion)
    assert (status, hsts) == (301, "max-age=31536000"), (status, hsts)
    assert seen <= {"owner", "newcomer"}

    # A restart (same work folder) sees both containers at once, and still remembers the owner.
    companion.stop()
    offset = len(companion.log())
    restarted = make_companion(**settings)
    line = wait_until(
        lambda: re.search(rf"WARNING [^\n]*{pattern}[^\n]*", restarted.log()[offset:]),
        timeout=20,
        what="the conflict reported again after the restart",
    ).group(0)
    assert f"using {owner.name}'s (it served the host first)" in line, line
    status, hsts, _ = holds(restarted)
    assert (status, hsts) == (301, "max-age=31536000"), (status, hsts)
    assert served_cert(host_nginx, host, context)
    assert host_nginx.check().returncode == 0
    print(
        f"\nlegit stable conflicts: {owner.name} kept HTTPS_METHOD=redirect and HSTS over {newcomer.name} "
        f"(sorting first), also after a companion restart"
    )
