"""The ACME worker's queue for orders an operator asks for: it runs a real worker (certbot's process), so it
is an integration test; the pure decisions are in tests/unit/test_acme.py.
"""

from __future__ import annotations

import threading
from pathlib import Path

from companion.acme.orders import AcmeManager, load_state
from companion.acme.policy import CertState
from companion.settings.config import Settings
from tests.harness.certs import LINEAGE_NOW, make_lineage

NOW = LINEAGE_NOW


def test_order_now_queues_what_an_operator_asks_for_once(tmp_path: Path) -> None:
    """Not due unless forced, a backoff does not hold it, an order in progress is not queued twice; the
    worker is held before its self-check, so nothing here reaches a CA."""
    make_lineage(tmp_path, "fresh.test", ["fresh.test"])
    make_lineage(tmp_path, "old.test", ["old.test"], age_days=80)
    make_lineage(tmp_path, "companion-default", ["default.test"], age_days=80)
    release = threading.Event()
    settings = Settings(certs_dir=str(tmp_path), webroot=str(tmp_path / "webroot"))
    manager = AcmeManager(
        settings, lambda _reason: None, lambda: release.wait() and "http://127.0.0.1:9", clock=NOW.timestamp
    )
    try:
        manager.state["old.test"] = CertState(["old.test"], failures=3, next_try=NOW.timestamp() + 3600, last_error="x")
        assert manager.order_now(["fresh.test", "gone.test"], False) == {
            "fresh.test": "not due (expires 2027-02-25)",
            "gone.test": f"no usable certificate 'gone.test' in {tmp_path / 'live'}",
        }
        assert load_state(tmp_path) == {}  # nothing queued, nothing saved
        assert manager.order_now(["fresh.test"], True) == {"fresh.test": "queued"}
        assert manager.order_now(["fresh.test"], True) == {"fresh.test": "in progress"}
        # All lineages on disk but the companion's own; the failing one is due and ordered despite its backoff.
        assert manager.order_now([], False) == {"fresh.test": "in progress", "old.test": "queued"}
        saved = load_state(tmp_path)
        assert saved["fresh.test"].in_progress and saved["old.test"].in_progress
        assert saved["old.test"].failures == 3
    finally:
        release.set()
        manager.stop()
