"""Shared by every tier: the repository root on sys.path and Hypothesis's profile. No real part is imported
here, so the pure unit tier never loads Docker; the tiers that need real parts load tests.harness.fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import settings

# Hypothesis's per-example deadline is a timed assertion: on a loaded 2-core machine a slow example
# is noise, not a failure (speed is measured under bench/, never asserted in tests).
settings.register_profile("companion", deadline=None)
settings.load_profile("companion")

# make ``tests.harness`` importable however pytest was started (plain ``pytest`` does not add the cwd)
_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)
