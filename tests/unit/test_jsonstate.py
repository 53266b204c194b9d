"""util/jsonstate: the one way the companion's JSON state files are read and written."""

from __future__ import annotations

import os
from pathlib import Path

from companion.util import jsonstate


def _parse(raw: object) -> dict[str, int]:
    if not isinstance(raw, dict):
        raise ValueError("expected an object")
    return {str(k): int(v) for k, v in raw.items()}


def test_save_then_load_round_trips_with_sorted_keys_and_a_private_mode(tmp_path: Path) -> None:
    jsonstate.save(tmp_path, "companion/x.json", {"b": 2, "a": 1})
    path = tmp_path / "companion" / "x.json"
    assert path.read_text() == '{\n "a": 1,\n "b": 2\n}\n'
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert jsonstate.load(path, 1024, _parse, {}, lambda exc: None) == {"a": 1, "b": 2}


def test_a_missing_file_is_the_default_without_a_report(tmp_path: Path) -> None:
    reported: list[Exception] = []
    assert jsonstate.load(tmp_path / "none.json", 1024, _parse, {"d": 0}, reported.append) == {"d": 0}
    assert reported == []


def test_bad_content_a_link_and_a_large_file_are_reported_and_give_the_default(tmp_path: Path) -> None:
    (tmp_path / "list.json").write_text("[1]")
    (tmp_path / "broken.json").write_text("{")
    (tmp_path / "big.json").write_text('{"a": 1}' + " " * 100)
    (tmp_path / "target.json").write_text('{"a": 1}')
    (tmp_path / "link.json").symlink_to(tmp_path / "target.json")
    for name in ("list.json", "broken.json", "big.json", "link.json"):
        reported: list[Exception] = []
        assert jsonstate.load(tmp_path / name, 50, _parse, {}, reported.append) == {}
        assert len(reported) == 1, name
