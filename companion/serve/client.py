"""Asking the running service from a command: `explain` on the status address, `renew` on the control socket.

The command runs beside the service (often `docker compose exec`), so the address it listens on is asked
on loopback when it listens on every address. Plain http.client: no proxy from the environment can be
put between the command and the service.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import time
from pathlib import Path
from urllib.parse import quote

from companion.acme.certs import scan
from companion.acme.orders import load_state
from companion.acme.policy import CERTBOT_TIMEOUT
from companion.settings.config import Settings, parse_listen
from companion.util.safefiles import read_regular

ASK_TIMEOUT = 3.0  # seconds: the service answers from memory, or it is not there
ANSWER_MAX_BYTES = 1024 * 1024
WAIT_INTERVAL = 0.5  # seconds between looks at the state file while the service orders
_ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


class NoAnswer(Exception):
    """Nothing answered, or not as the service does."""


class NoService(NoAnswer):
    """No service listens (on the control socket, or the status address): the command may do the work itself."""


class BadCredentials(ValueError):
    """STATUS_CREDENTIALS cannot be used; the message never shows the password."""


CREDENTIALS_MAX_BYTES = 4096


def read_credentials(path: str) -> str:
    """The Authorization header for STATUS_CREDENTIALS, a file of one `user:password` line ('' when unset)."""
    if not path:
        return ""
    try:
        text = read_regular(Path(path), CREDENTIALS_MAX_BYTES).decode("utf-8")
    except OSError as exc:
        raise BadCredentials(f"STATUS_CREDENTIALS {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise BadCredentials(f"STATUS_CREDENTIALS {path}: not UTF-8 text") from None
    lines = [line for line in text.splitlines() if line.strip()]
    user, sep, password = lines[0].partition(":") if len(lines) == 1 else ("", "", "")
    if not sep or not user or not password:
        raise BadCredentials(f"STATUS_CREDENTIALS {path}: expected one line user:password")
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def status_address(settings: Settings) -> tuple[str, int] | None:
    """Where a command on this host reaches the status endpoint; None when STATUS_LISTEN is off."""
    if not settings.status_listen:
        return None
    host, port = parse_listen(settings.status_listen)
    return _ANY_ADDRESS.get(host, host), port


def url_of(address: tuple[str, int], path: str) -> str:
    host, port = address
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"


def ask_explain(address: tuple[str, int], name: str, auth: str = "") -> tuple[list[str], int]:
    """The service's /explain answer for `name` (its lines and exit code); NoService when nothing listens,
    NoAnswer saying why when the service cannot or will not give one (a password refused, say)."""
    found = _get_json(address, "/explain?name=" + quote(name, safe=""), auth)
    lines, code = found.get("lines"), found.get("exit_code")
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines) or code not in (0, 1, 2):
        raise NoAnswer("an answer of another shape")
    return lines, code


def ask_nodes(address: tuple[str, int], auth: str = "") -> list[dict[str, object]]:
    """The Swarm nodes in the service's /status.json (empty without agents); NoAnswer when it cannot be asked."""
    nodes = _get_json(address, "/status.json", auth).get("nodes", [])
    if not isinstance(nodes, list) or not all(isinstance(node, dict) for node in nodes):
        raise NoAnswer("an answer of another shape")
    return nodes


def _get_json(address: tuple[str, int], path: str, auth: str = "") -> dict:
    """GET `path` from the service's status endpoint (with `auth` as Authorization when given): its JSON object;
    NoService when nothing listens there, NoAnswer saying why not otherwise."""
    connection = http.client.HTTPConnection(*address, timeout=ASK_TIMEOUT)
    try:
        connection.request("GET", path, headers={"Authorization": auth} if auth else {})
        answer = connection.getresponse()
        data = answer.read(ANSWER_MAX_BYTES + 1)
    except ConnectionRefusedError as exc:
        raise NoService(str(exc)) from None
    except TimeoutError:
        raise NoAnswer(f"no answer within {ASK_TIMEOUT:g} s") from None
    except (OSError, http.client.HTTPException) as exc:
        raise NoAnswer(str(exc) or type(exc).__name__) from None
    finally:
        connection.close()
    if answer.status == 401:
        raise NoAnswer(
            "HTTP 401: the credentials in STATUS_CREDENTIALS were refused"
            if auth
            else "HTTP 401: the service requires a STATUS_AUTH password; set STATUS_CREDENTIALS to a user:password file"
        )
    return _answer_json(answer.status, data)


def _answer_json(status: int, data: bytes) -> dict:
    """The service's JSON object; NoAnswer, with the HTTP status and the service's own words, otherwise."""
    try:
        found = json.loads(data)
    except ValueError:
        raise NoAnswer(f"HTTP {status}, not the service's JSON") from None
    if status != 200 or not isinstance(found, dict):
        error = found.get("error", "") if isinstance(found, dict) else ""
        raise NoAnswer(f"HTTP {status}" + (f": {error}" if error else ""))
    return found


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=ASK_TIMEOUT)
        self.socket_path = path

    def connect(self) -> None:
        """A full backlog makes a unix connect with a timeout fail at once (EAGAIN) rather than wait: the
        service is busy accepting, so try again until the timeout."""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        deadline = time.monotonic() + ASK_TIMEOUT
        while True:
            try:
                self.sock.connect(str(self.socket_path))
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"the service accepted no connection within {ASK_TIMEOUT:g} s") from None
                time.sleep(0.05)


def ask_renew(path: Path, names: list[str], force: bool) -> dict[str, str]:
    """Have the service queue the orders: name -> "queued", "in progress", "not due (...)" or why not.

    NoService when no socket is there or nothing listens on it (a companion that was killed); NoAnswer when
    one is there but does not answer as the service does (say, no permission to connect)."""
    connection = _UnixConnection(path)
    try:
        connection.request(
            "POST", "/renew", json.dumps({"names": names, "force": force}), {"Content-Type": "application/json"}
        )
        answer = connection.getresponse()
        data = answer.read(ANSWER_MAX_BYTES + 1)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        raise NoService(str(exc)) from None
    except (OSError, http.client.HTTPException) as exc:
        raise NoAnswer(str(exc) or type(exc).__name__) from None
    finally:
        connection.close()
    orders = _answer_json(answer.status, data).get("orders")
    if not isinstance(orders, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in orders.items()):
        raise NoAnswer("an answer of another shape")
    return orders


def wait_for_orders(certs_dir: Path, names: list[str], serials: dict[str, str]) -> dict[str, str]:
    """Each order's outcome once the service has finished it: '' for a new certificate on disk, else why not.

    Read from the state file the service saves (in progress, failures, last error) and the lineage's serial
    against `serials` from before asking; the orders run one at a time, each within CERTBOT_TIMEOUT."""
    deadline = time.monotonic() + CERTBOT_TIMEOUT * len(names) + 60
    outcomes: dict[str, str] = {}
    pending = set(names)
    while pending and time.monotonic() < deadline:
        state = load_state(certs_dir)
        finished = {name for name in pending if name in state and not state[name].in_progress}
        if finished:
            on_disk = scan(certs_dir)
        for name in finished:
            entry, status = state[name], on_disk.get(name)
            if entry.failures:
                outcomes[name] = entry.last_error or "the order failed"
            elif status is None or status.serial == serials.get(name, ""):
                outcomes[name] = "no new certificate (did the service stop before the order finished?)"
            else:
                outcomes[name] = ""
        pending -= finished
        if pending:
            time.sleep(WAIT_INTERVAL)
    outcomes.update({name: "still being ordered; see `companion certs`" for name in pending})
    return outcomes
