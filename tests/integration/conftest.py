"""The integration tier: fixtures that start real parts (tests/harness/fixtures.py)."""

from tests.harness.fixtures import *  # noqa: F403
