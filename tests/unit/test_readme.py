"""README.md is the front door: its test command must match CI, and the tables in docs/ must match the code."""

from __future__ import annotations

import re
from pathlib import Path

from companion.core.variables import readme_table
from companion.settings.config import environment_table

ROOT = Path(__file__).resolve().parents[2]
TEST_COMMAND = ".venv/bin/python -m tests -q"


def test_settings_table_matches_the_code() -> None:
    assert environment_table() in (ROOT / "docs" / "settings.md").read_text()


def test_readme_and_ci_run_the_same_test_command() -> None:
    assert TEST_COMMAND in (ROOT / "README.md").read_text()
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith(TEST_COMMAND)


def test_variables_table_matches_the_registry() -> None:
    assert readme_table() in (ROOT / "docs" / "variables.md").read_text()


def test_relative_links_in_the_docs_resolve() -> None:
    pages = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            path = target.split("#", 1)[0]
            if re.match(r"[a-z]+:", target) or not path:
                continue
            if not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []
