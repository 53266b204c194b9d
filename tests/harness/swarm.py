"""A real multi-node Docker Swarm on this one machine: one dockerd per network namespace.

Node N is a dockerd (with its own containerd) in network namespace ``<prefix>N`` with its own hostname,
data ``/var/lib/<prefix>N``, socket ``unix:///run/<prefix>N/docker.sock``; the namespaces hang off a host
bridge at ``<net>.1/24`` and node N has ``<net>.(10+N)``. Node 1 is the manager, the others workers.
Overlay subnets come from ``pool``. The host's FORWARD chain (policy DROP here) gets rules tagged with
a comment: bridged node-to-node traffic is accepted, new connections from the nodes to anywhere else are
rejected at once (no registry is reachable: pulls must fail fast and fall back to loaded images).
``down()`` removes exactly what ``up()`` made. Facts behind each step: ../shared/swarm/NOTES.md.

The names can be moved (``SWARM_TEST_PREFIX``, ``SWARM_TEST_BRIDGE``, ``SWARM_TEST_NET``,
``SWARM_TEST_POOL``) so that two sets can live side by side.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import docker

from tests.harness.dockerd import start_dockerd
from tests.harness.wait import wait_gone, wait_until

TOOLS = {
    "ip": "iproute2",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "iptables": "iptables",
    "dockerd": "docker.io",
    "docker": "docker.io (the docker CLI)",
}


class SwarmUnavailable(RuntimeError):
    """What is missing to bring the nodes up, in words that say what to install or fix."""


def _run(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode:
        raise SwarmUnavailable(f"{shlex.join(cmd)} failed ({done.returncode}): {(done.stderr or done.stdout).strip()}")
    return done


@dataclass
class SwarmNodes:
    count: int = 3
    prefix: str = "swn"
    bridge: str = "swbr"
    net: str = "10.77.0"
    pool: str = "10.78.0.0/16"

    @classmethod
    def from_env(cls, count: int = 3) -> SwarmNodes:
        env = os.environ
        return cls(
            count,
            env.get("SWARM_TEST_PREFIX", "swn"),
            env.get("SWARM_TEST_BRIDGE", "swbr"),
            env.get("SWARM_TEST_NET", "10.77.0"),
            env.get("SWARM_TEST_POOL", "10.78.0.0/16"),
        )

    # -- names --------------------------------------------------------------------------------------

    @property
    def comment(self) -> str:
        return f"companion-swarm-test:{self.bridge}"

    @property
    def state(self) -> Path:
        return Path(f"/run/{self.prefix}-state")

    def ns(self, n: int) -> str:
        return f"{self.prefix}{n}"

    def address(self, n: int) -> str:
        return f"{self.net}.{10 + n}"

    def socket(self, n: int) -> str:
        return f"unix:///run/{self.ns(n)}/docker.sock"

    def client(self, n: int = 1, timeout: int = 30) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.socket(n), version="auto", timeout=timeout)

    @property
    def nodes(self) -> range:
        return range(1, self.count + 1)

    # -- commands on nodes --------------------------------------------------------------------------

    def in_netns(self, n: int, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a command in node n's network namespace (nsenter: `ip netns exec` would remount /sys)."""
        return _run("nsenter", f"--net=/run/netns/{self.ns(n)}", *cmd, check=check, timeout=timeout)

    def docker(self, n: int, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """The docker CLI against node n (what `docker stack deploy` and `service` commands need)."""
        return _run("docker", "-H", self.socket(n), *args, check=check, timeout=timeout)

    def alive(self, n: int) -> bool:
        if not Path(f"/run/{self.ns(n)}/docker.sock").is_socket():
            return False
        try:
            return self.docker(n, "version", "--format", "{{.Server.Version}}", check=False, timeout=5).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def daemon_pid(self, n: int) -> int | None:
        try:
            return int(Path(f"/run/{self.ns(n)}/docker.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    # -- up ------------------------------------------------------------------------------------------

    def check_tools(self) -> None:
        missing = [f"{tool} (apt-get install {package})" for tool, package in TOOLS.items() if not shutil.which(tool)]
        if missing:
            raise SwarmUnavailable("a real Swarm needs " + ", ".join(missing))
        if os.geteuid() != 0:
            raise SwarmUnavailable("a real Swarm needs root (network namespaces, a bridge, iptables, dockerd)")

    def up(self, owner: str) -> SwarmNodes:
        """Bring every node up and into one swarm for `owner` (one test run). A set this owner brought up is
        reused, dead daemons restarted; any other set (of another size, or left by a run that was killed:
        its services, tasks and published ports would still be there) is taken down first."""
        self.check_tools()
        recorded, recorded_owner = self.state / "nodes", self.state / "owner"
        same_size = recorded.exists() and recorded.read_text().split() == [str(n) for n in self.nodes]
        ours = recorded_owner.exists() and recorded_owner.read_text().strip() == owner
        if not (same_size and ours) and self.known():
            self.down()
        self.state.mkdir(parents=True, exist_ok=True)
        recorded.write_text("\n".join(str(n) for n in self.nodes) + "\n")
        recorded_owner.write_text(owner + "\n")
        self._host_network()
        for n in self.nodes:
            self._node_network(n)
        for n in self.nodes:
            self.start_daemon(n, wait=False)
        for n in self.nodes:
            self._wait_alive(n)
        self._form_swarm()
        return self

    def _host_network(self) -> None:
        if _run("ip", "link", "show", self.bridge, check=False).returncode:
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            _run("ip", "addr", "add", f"{self.net}.1/24", "dev", self.bridge)
            (self.state / "bridge").write_text(self.bridge + "\n")
        _run("ip", "link", "set", self.bridge, "up")
        rules = [
            ["-i", self.bridge, "-o", self.bridge, "-j", "ACCEPT"],
            ["-i", self.bridge, "!", "-o", self.bridge, "-m", "conntrack", "--ctstate", "NEW", "-p", "tcp"]
            + ["-j", "REJECT", "--reject-with", "tcp-reset"],
            ["-i", self.bridge, "!", "-o", self.bridge, "-m", "conntrack", "--ctstate", "NEW"]
            + ["-j", "REJECT", "--reject-with", "icmp-port-unreachable"],
        ]
        for position, rule in enumerate(rules, 1):
            tagged = [*rule, "-m", "comment", "--comment", self.comment]
            if _run("iptables", "-w", "-C", "FORWARD", *tagged, check=False).returncode:
                _run("iptables", "-w", "-I", "FORWARD", str(position), *tagged)

    def _node_network(self, n: int) -> None:
        ns, veth = self.ns(n), f"{self.prefix}v{n}"
        if not Path(f"/run/netns/{ns}").exists():
            _run("ip", "netns", "add", ns)
        if _run("ip", "link", "show", veth, check=False).returncode:
            _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _run("ip", "link", "set", veth, "master", self.bridge, "up")
        self.in_netns(n, "ip", "link", "set", "lo", "up")
        self.in_netns(n, "ip", "link", "set", "eth0", "up")
        self.in_netns(n, "ip", "addr", "replace", f"{self.address(n)}/24", "dev", "eth0")
        self.in_netns(n, "ip", "route", "replace", "default", "via", f"{self.net}.1", "dev", "eth0")
        # The host's resolvers unreachable from the node: dockerd's registry look-ups fail at once
        # instead of waiting for the resolver's timeout (rejects from the host are rate-limited).
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            nameserver = len(parts) == 2 and parts[0] == "nameserver" and parts[1].count(".") == 3
            if nameserver and not parts[1].startswith(("127.", self.net + ".")):
                self.in_netns(n, "ip", "route", "replace", "unreachable", f"{parts[1]}/32")

    def start_daemon(self, n: int, wait: bool = True) -> None:
        """Start node n's dockerd unless it answers. Never with --bridge=none: dockerd would then delete the
        host's docker0 (node daemons see the host's /sys)."""
        if self.alive(n):
            return
        ns = self.ns(n)
        Path(f"/run/{ns}").mkdir(parents=True, exist_ok=True)
        Path(f"/var/lib/{ns}").mkdir(parents=True, exist_ok=True)
        command = [
            "nsenter", f"--net=/run/netns/{ns}", "unshare", "--uts", "sh", "-c", 'hostname "$0"; exec "$@"', ns,
            "dockerd",
            "--host", self.socket(n),
            "--data-root", f"/var/lib/{ns}",
            "--exec-root", f"/run/{ns}/exec",
            "--pidfile", f"/run/{ns}/docker.pid",
            "--containerd-namespace", ns,
            "--containerd-plugins-namespace", f"{ns}-plugins",
            "--cgroup-parent", f"/{ns}",
            "--userland-proxy=false",
        ]  # fmt: skip
        start_dockerd(command, Path(f"/run/{ns}/dockerd.log"), lambda: self.alive(n), wait=False)
        if wait:
            self._wait_alive(n)

    def _wait_alive(self, n: int, timeout: float = 30) -> None:
        log = Path(f"/run/{self.ns(n)}/dockerd.log")
        try:
            wait_until(lambda: self.alive(n), timeout, 0.25, f"dockerd of node {n} to answer", logs=[("its log", log)])
        except AssertionError as exc:
            raise SwarmUnavailable(str(exc)) from exc

    def _swarm_state(self, n: int) -> str:
        return self.docker(n, "info", "--format", "{{.Swarm.LocalNodeState}}", check=False).stdout.strip()

    def _form_swarm(self) -> None:
        manager = self.address(1)
        if self._swarm_state(1) != "active":
            self.docker(1, "swarm", "init", "--advertise-addr", manager, "--listen-addr", f"{manager}:2377",
                        "--default-addr-pool", self.pool, "--default-addr-pool-mask-length", "24")  # fmt: skip
        token = self.docker(1, "swarm", "join-token", "-q", "worker").stdout.strip()
        for n in self.nodes:
            if n > 1 and self._swarm_state(n) != "active":
                self.docker(n, "swarm", "join", "--token", token, "--advertise-addr", self.address(n),
                            "--listen-addr", f"{self.address(n)}:2377", f"{manager}:2377")  # fmt: skip
        self.wait_ready(self.count)

    def ready_nodes(self) -> int:
        listed = self.docker(1, "node", "ls", "--format", "{{.Status}}", check=False).stdout.split()
        return listed.count("Ready")

    def wait_ready(self, count: int, timeout: float = 30) -> None:
        try:
            wait_until(self.ready_nodes, timeout, 0.25, f"{count} nodes Ready", until=lambda ready: ready == count)
        except AssertionError as exc:
            raise SwarmUnavailable(str(exc)) from exc

    # -- images, failures ----------------------------------------------------------------------------

    def load(self, *images: str) -> None:
        """`docker save` from the host's daemon, `docker load` into every live node lacking an image (by ID)."""
        wanted = {image: _run("docker", "image", "inspect", "--format", "{{.Id}}", image).stdout for image in images}
        wanted = {image: image_id.strip() for image, image_id in wanted.items()}

        def present(n: int, image: str) -> bool:
            got = self.docker(n, "image", "inspect", "--format", "{{.Id}}", image, check=False).stdout.strip()
            return got == wanted[image]

        live = [n for n in self.nodes if self.alive(n)]
        missing = [image for image in images if not all(present(n, image) for n in live)]
        if missing:
            with tempfile.TemporaryDirectory(prefix="swarm-load-") as tmp:
                archive = f"{tmp}/images.tar"
                _run("docker", "save", "-o", archive, *missing, timeout=300)
                loads = [
                    subprocess.Popen(["docker", "-H", self.socket(n), "load", "-i", archive], stdout=subprocess.DEVNULL)
                    for n in live
                ]
                for process in loads:
                    process.wait(300)
        for n in live:
            for image in images:
                if not present(n, image):
                    raise SwarmUnavailable(f"image {image} did not load into node {n}")

    def kill_daemon(self, n: int) -> None:
        """Stop node n's dockerd (SIGTERM, as a node going away): its containers stop with it."""
        pid = self.daemon_pid(n)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, 15)
        wait_gone(lambda: _pid_alive(pid), 30, 0.1)

    def power_off(self, n: int) -> None:
        """Node n dies at once, as on a power cut: SIGKILL to its dockerd, containerd, shims and every
        container process (its cgroup), nothing stopped gracefully, nothing reported to the manager. The
        namespace and its link stay: packets to its tasks' addresses are silently lost."""
        pids = set(_run("ip", "netns", "pids", self.ns(n), check=False).stdout.split())
        for procs in Path(f"/sys/fs/cgroup/pids/{self.ns(n)}").rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids |= set(procs.read_text().split())
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), 9)
        wait_gone(lambda: any(_pid_alive(int(pid)) for pid in pids), 10)

    # -- down ----------------------------------------------------------------------------------------

    def known(self) -> set[int]:
        found: set[int] = set()
        recorded = self.state / "nodes"
        if recorded.exists():
            found |= {int(word) for word in recorded.read_text().split()}
        for folder in ("/run/netns", "/run", "/var/lib"):
            for path in Path(folder).glob(f"{self.prefix}[0-9]*"):
                suffix = path.name[len(self.prefix) :]
                if suffix.isdigit():
                    found.add(int(suffix))
        return found

    def down(self) -> None:
        """Remove every node, the FORWARD rules and the bridge (only if ours); safe to call twice."""
        for n in sorted(self.known()):
            self._node_down(n)
        while True:
            tagged = [
                line for line in _run("iptables", "-w", "-S", "FORWARD").stdout.splitlines() if self.comment in line
            ]
            if not tagged:
                break
            _run("iptables", "-w", *shlex.split(tagged[0].replace("-A FORWARD", "-D FORWARD", 1)))
        if (self.state / "bridge").exists() or f"{self.net}.1/24" in _run(
            "ip", "-4", "addr", "show", "dev", self.bridge, check=False
        ).stdout:
            _run("ip", "link", "del", self.bridge, check=False)
        shutil.rmtree(self.state, ignore_errors=True)

    def _node_down(self, n: int) -> None:
        ns = self.ns(n)
        if self.alive(n):
            ids = self.docker(n, "ps", "-aq", check=False).stdout.split()
            if ids:
                self.docker(n, "rm", "-f", *ids, check=False)
        pid = self.daemon_pid(n)
        if pid is not None and _pid_alive(pid):
            self.kill_daemon(n)
            if _pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
        # What is left in the node's namespace (containerd, shims) was started by this daemon: ours.
        for sig in (15, 9):
            for pid_text in _run("ip", "netns", "pids", ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid_text), sig)
            time.sleep(0.3)
        for root in (f"/run/{ns}", f"/var/lib/{ns}"):
            for mount in sorted(_mounts_under(root), reverse=True):
                if _run("umount", mount, check=False).returncode:
                    _run("umount", "-l", mount, check=False)
        if Path(f"/run/netns/{ns}").exists():
            _run("ip", "netns", "del", ns, check=False)
        _run("ip", "link", "del", f"{self.prefix}v{n}", check=False)
        for root in (f"/run/{ns}", f"/var/lib/{ns}"):
            _run("rm", "-rf", "--one-file-system", root, check=False)
        for group in Path("/sys/fs/cgroup").glob(f"*/{ns}"):
            for folder in sorted(group.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                if folder.is_dir():
                    with contextlib.suppress(OSError):
                        folder.rmdir()
            with contextlib.suppress(OSError):
                group.rmdir()


def _pid_alive(pid: int) -> bool:
    """True while the process runs (a zombie, left for its parent to reap, does not count)."""
    try:
        return not Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z")
    except OSError:
        return False


def _mounts_under(root: str) -> list[str]:
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4]
        if point == root or point.startswith(root + "/"):
            found.append(point)
    return found
