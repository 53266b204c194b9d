"""README.md is the front door: its settings table and test command must match the code and CI."""

from __future__ import annotations

from pathlib import Path

from companion.config import environment_table
from companion.variables import readme_table

ROOT = Path(__file__).resolve().parents[2]
TEST_COMMAND = ".venv/bin/python -m tests -q"


def test_settings_table_matches_the_code() -> None:
    assert environment_table() in (ROOT / "README.md").read_text()


def test_readme_and_ci_run_the_same_test_command() -> None:
    assert TEST_COMMAND in (ROOT / "README.md").read_text()
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith(TEST_COMMAND)


def test_variables_table_matches_the_registry() -> None:
    assert readme_table() in (ROOT / "README.md").read_text()
