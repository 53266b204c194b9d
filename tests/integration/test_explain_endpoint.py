"""The status server's /explain endpoint on a loopback port: lines, verdict and exit code, and refusals.
The pure parts of the report are tests/unit/test_status.py.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from companion.observe import status
from companion.observe.explain import Explanation, Verdict
from companion.observe.metrics import Metrics
from companion.serve.statusserver import StatusServer


@pytest.fixture
def explain_port(tmp_path: Path) -> Iterator[int]:
    """A StatusServer on a free loopback port whose explainer knows only "web" (and "none" before a pass)."""

    def explainer(name: str) -> Explanation | None:
        if name == "none":
            return None
        return Explanation(name, Verdict.SERVED, "web.test/ (port 80)", (f"container {name}", "  a\\x1b line"))

    server = StatusServer(
        ("127.0.0.1", 0), lambda: status.EMPTY, Metrics(lambda: status.EMPTY), tmp_path / "heartbeat", explainer
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def ask(port: int, query: str) -> tuple[int, dict[str, object]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/explain" + query)
        answer = connection.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        connection.close()


def test_explain_endpoint_answers_the_lines_verdict_and_exit_code(explain_port: int) -> None:
    assert ask(explain_port, "?name=we%62") == (
        200,
        {
            "subject": "web",
            "verdict": "served",
            "reason": "web.test/ (port 80)",
            "exit_code": 0,
            "lines": ["container web", "  a\\x1b line", "verdict: served: web.test/ (port 80)"],
        },
    )
    code, answer = ask(explain_port, "?name=none")
    assert (code, answer) == (503, {"error": "the service has not finished a pass yet"})


@pytest.mark.parametrize("query", ["", "?name=", "?other=web", "?name=a&name=b", "?name=%1b", "?name=" + "a" * 254])
def test_explain_endpoint_refuses_a_missing_or_unfit_name(explain_port: int, query: str) -> None:
    code, answer = ask(explain_port, query)
    assert code == 400 and answer == {"error": "expected ?name=NAME, 1 to 253 printable characters"}
