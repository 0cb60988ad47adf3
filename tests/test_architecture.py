"""The package's shape, checked from the source (no imports run): packages that name the architecture, imports that
run one way (entry -> run -> tasks / methods / training -> calibration, telemetry -> data -> models), no cycles, no
re-export hubs, no private name imported from another package, and no module much past 300 lines."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "astra"

# Higher imports lower (or its own package), never the other way. report reads result files (and their cell
# identity from run.skip_existing); compare runs cells through run and uses report's intervals. calibration and telemetry never import methods, tasks or run.
LAYERS = {
    "compare": 7,
    "report": 6,
    "run": 5,
    "tasks": 4, "methods": 4, "training": 4,
    "calibration": 3, "telemetry": 3,
    "data": 2,
    "models": 1,
}  # fmt: skip


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def astra_imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) of every ``astra`` import in a file, function-level imports included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "astra" and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names if alias.name.split(".")[0] == "astra"]
    return found


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_top_level_holds_only_packages():
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert not loose, f"modules at the package's top level: {loose}; each belongs in a package (run, models, ...)"
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert packages == set(LAYERS), f"packages {sorted(packages)} differ from the layers {sorted(LAYERS)}"


def test_imports_run_one_way():
    wrong = []
    for name, path in modules().items():
        here = package_of(name)
        for module, _, line in astra_imports(path):
            there = package_of(module)
            if there and there != here and LAYERS[there] >= LAYERS[here]:
                wrong.append(f"{path.relative_to(PACKAGE)}:{line}: {here} imports {module} ({there})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_no_private_name_crosses_a_module():
    names = modules()
    wrong = []
    for name, path in names.items():
        for module, imported, line in astra_imports(path):
            if module != name:
                wrong += [f"{path.relative_to(PACKAGE)}:{line}: {module}.{n}" for n in imported if n.startswith("_")]
    assert not wrong, "private names imported from another module:\n" + "\n".join(wrong)


def test_no_import_cycles_between_modules():
    names = modules()
    graph = defaultdict(set)
    for name, path in names.items():
        for module, imported, _ in astra_imports(path):
            targets = [f"{module}.{n}" for n in imported if f"{module}.{n}" in names] or [module]
            graph[name].update(t for t in targets if t in names and t != name)
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*trail[trail.index(nxt):], nxt]) if nxt in trail else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for node in sorted(names):
        if node not in state:
            visit(node, [node])
    # A package's __init__ importing its own submodule is not a cycle of code (there are none left anyway).
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_re_export_hubs():
    """A name is imported from the module that defines it: no ``noqa: F401`` re-exports, no ``import *``."""
    wrong = []
    for path in modules().values():
        text = path.read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), start=1):
            if "noqa: F401" in line and "import" in line or "import *" in line:
                wrong.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert not wrong, "re-exports:\n" + "\n".join(wrong)


MODULE_LINES = 330  # "modules ~300 lines at most" (the design card), with a little slack for a docstring


def test_modules_stay_small():
    """A module past the limit is split by what its parts do (as calibration.moments and tasks.code_execution were)."""
    long = {path.relative_to(PACKAGE): len(path.read_text(encoding="utf-8").splitlines()) for path in modules().values()}
    wrong = [f"{path}: {lines} lines" for path, lines in sorted(long.items()) if lines > MODULE_LINES]
    assert not wrong, f"modules over {MODULE_LINES} lines:\n" + "\n".join(wrong)
