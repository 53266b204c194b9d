"""Helpers the compose e2e suites share: e2e/images/build.py as a module, and waiting with diagnostics."""

from __future__ import annotations

import http.client
import importlib.util
import ssl
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TypeVar

import pytest

BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "e2e/images/build.py"
T = TypeVar("T")


def load_build() -> ModuleType:
    """Import e2e/images/build.py (e2e/ is not a package), once per session."""
    name = "e2e_images_build"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BUILD_SCRIPT)
    assert spec and spec.loader, f"cannot load {BUILD_SCRIPT}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, diagnose: Callable[[], str]) -> T:
    """Call probe until it returns something other than None; fail with diagnostics after timeout."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = probe()
            if result is not None:
                return result
        except (OSError, ssl.SSLError, http.client.HTTPException) as exc:
            last = exc
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last})\n{diagnose()}")
        time.sleep(0.3)
