"""Asking the running service from a command: `explain` on the status address.

The command runs beside the service (often `docker compose exec`), so the address it listens on is asked
on loopback when it listens on every address. Plain http.client: no proxy from the environment can be
put between the command and the service.
"""

from __future__ import annotations

import http.client
import json
from urllib.parse import quote

from .config import Settings, parse_listen

ASK_TIMEOUT = 3.0  # seconds: the service answers from memory, or it is not there
ANSWER_MAX_BYTES = 1024 * 1024
_ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "::": "::1"}


class NoAnswer(Exception):
    """Nothing answered, or not as the service does."""


def status_address(settings: Settings) -> tuple[str, int] | None:
    """Where a command on this host reaches the status endpoint; None when STATUS_LISTEN is off."""
    if not settings.status_listen:
        return None
    host, port = parse_listen(settings.status_listen)
    return _ANY_ADDRESS.get(host, host), port


def url_of(address: tuple[str, int], path: str) -> str:
    host, port = address
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"


def ask_explain(address: tuple[str, int], name: str) -> tuple[list[str], int]:
    """The service's /explain answer for `name` (its lines and exit code); NoAnswer when it cannot give one."""
    connection = http.client.HTTPConnection(*address, timeout=ASK_TIMEOUT)
    try:
        connection.request("GET", "/explain?name=" + quote(name, safe=""))
        answer = connection.getresponse()
        data = answer.read(ANSWER_MAX_BYTES + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise NoAnswer(str(exc) or type(exc).__name__) from None
    finally:
        connection.close()
    try:
        found = json.loads(data)
    except ValueError:
        raise NoAnswer(f"HTTP {answer.status}, not the service's JSON") from None
    if answer.status != 200 or not isinstance(found, dict):
        error = found.get("error", "") if isinstance(found, dict) else ""
        raise NoAnswer(f"HTTP {answer.status}" + (f": {error}" if error else ""))
    lines, code = found.get("lines"), found.get("exit_code")
    if not isinstance(lines, list) or not all(isinstance(line, str) for line in lines) or code not in (0, 1, 2):
        raise NoAnswer("an answer of another shape")
    return lines, code
