"""The package tree is the architecture: these tests read the product's imports (every one, type-only and
function-level included) and fail when a change breaks the layering. `lint-imports` in CI checks the same
layers with import-linter's own graph; this test also forbids cycles inside a package, TYPE_CHECKING
imports, I/O libraries in the core and modules too long to read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "companion"
# top to bottom: a module may import only from its own package or from packages below it
LAYERS = ("cli", "serve", "loop", "cluster", "observe", "acme", "sources", "nginx", "settings", "core", "util")
# what the pure core may not import: anything that talks to a daemon, a file's content, the network or a process
IO_LIBRARIES = frozenset(
    {"docker", "requests", "jinja2", "watchdog", "apprise", "cryptography", "certbot", "prometheus_client", "bcrypt"}
    | {"subprocess", "socket", "ssl", "selectors", "http", "urllib", "shutil", "tempfile", "os", "logging"}
)
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file, resolved to a module of ours when it names one."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}:{node.lineno}: relative import; write companion.<package>.<module>"
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.append((node.lineno, full if full in MODULES else node.module))
    return out


def _layer(module: str) -> str:
    parts = module.split(".")
    return "cli" if len(parts) < 3 else parts[1]


def _graph() -> dict[str, set[str]]:
    return {
        module: {name for _, name in _imports(path) if name in MODULES and name != module}
        for module, path in MODULES.items()
    }


def test_every_module_sits_in_a_known_layer() -> None:
    assert {_layer(m) for m in MODULES if m != "companion"} <= set(LAYERS)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "companion"))
def test_imports_only_point_down_the_layers(module: str) -> None:
    own = LAYERS.index(_layer(module))
    up = [
        f"line {line}: {name} ({_layer(name)})"
        for line, name in _imports(MODULES[module])
        if name in MODULES and name != "companion" and LAYERS.index(_layer(name)) < own
    ]
    assert not up, f"{module} ({_layer(module)}) imports from a higher layer: {up}"


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path (first == last), or [] when the graph has none."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def test_no_import_cycle_type_only_imports_included() -> None:
    assert find_cycle(_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_type_checking_imports(module: str) -> None:
    assert "TYPE_CHECKING" not in MODULES[module].read_text(), f"{module}: a type-only import hides a cycle"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) == "core"))
def test_the_core_imports_no_io_library(module: str) -> None:
    used = [f"line {line}: {name}" for line, name in _imports(MODULES[module]) if name.split(".")[0] in IO_LIBRARIES]
    assert not used, f"{module} is pure core and may not import I/O libraries: {used}"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_over_500_lines(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines: split it by what its parts do"
