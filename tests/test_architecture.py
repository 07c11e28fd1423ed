"""The house holds its shape: each folder of device/ imports only the folders before it (the order
in device/__init__.py's docstring and docs/architecture.md), there is no import cycle, and no class
or function grows past what one person keeps in mind."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "device"
LAYERS = ["core", "storage", "audio", "wake", "speech", "control", "recording", "integrations", "web"]
"""Bottom to top; the modules directly in device/ (app, cli, doctor) are the wiring above them all."""
MAX_CLASS_LINES, MAX_FUNCTION_LINES = 300, 60


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), str(path))
    return out


def imports_of(tree: ast.Module, known: set[str]) -> set[str]:
    """The device modules a module imports (at any depth: a deferred import counts too)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m in known}


def rank(module: str) -> int:
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return len(LAYERS) if module != "device" else -1  # the wiring on top; device itself: constants


def test_no_folder_imports_a_folder_above_it() -> None:
    mods = modules()
    upward = [f"{m} -> {target}" for m, tree in mods.items() for target in imports_of(tree, set(mods))
              if rank(target) > rank(m)]
    assert not upward, "\n".join(upward)
    unknown = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()} - set(LAYERS)
    assert not unknown, f"a folder not placed in LAYERS: {unknown}"


def test_no_import_cycles() -> None:
    mods = modules()
    graph = {m: imports_of(tree, set(mods)) - {m} for m, tree in mods.items()}
    packages = {"device", *(f"device.{folder}" for folder in LAYERS)}  # their faces hold no code
    graph = {m: {t for t in targets if t not in packages} for m, targets in graph.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, path: list[str]) -> bool:
        state[m] = 1
        for t in graph.get(m, ()):
            if state.get(t) == 1:
                cycle.extend(path[path.index(t):] + [t] if t in path else [m, t])
                return True
            if t not in state and visit(t, [*path, t]):
                return True
        state[m] = 2
        return False

    for m in graph:
        if m not in state and visit(m, [m]):
            break
    assert not cycle, " -> ".join(cycle)


def test_no_class_or_function_grows_past_what_one_person_keeps_in_mind() -> None:
    too_long = []
    for name, tree in modules().items():
        for node in ast.walk(tree):
            limit = (MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
                     if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) else None)
            if limit and (lines := node.end_lineno - node.lineno + 1) > limit:  # type: ignore[attr-defined]
                too_long.append(f"{name}.{node.name}: {lines} lines (at most {limit})")  # type: ignore[attr-defined]
    assert not too_long, "\n".join(too_long)
