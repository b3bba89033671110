"""The package's layers (docs/architecture.md): no import cycle between modules, no import from
a lower layer up into a higher one, and mdkstep imports at module top (lazy ones only for
optional heavy dependencies, which are not mdkstep's own)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: bottom to top; a module may import only from its own layer or below. The first dotted
#: prefix that matches a module names its layer.
LAYERS: list[tuple[str, ...]] = [
    ("mdkstep.utils", "mdkstep.config", "mdkstep.trajectory", "mdkstep.engines.units", "mdkstep.progress"),
    ("mdkstep.molecule", "mdkstep.dynamics", "mdkstep.constraints", "mdkstep.runner", "mdkstep.engines"),
    ("mdkstep.baselines", "mdkstep.model"),
    ("mdkstep.data",),
    ("mdkstep.analysis",),
    ("mdkstep.training", "mdkstep.hybrid"),
    ("mdkstep.exact",),
    ("mdkstep.pipeline",),
    ("mdkstep.shipped", "mdkstep.adapt"),
    ("mdkstep.bench",),
    ("mdkstep.ase", "mdkstep.cli"),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in (SRC / "mdkstep").rglob("*.py")}


def layer(mod: str) -> int:
    best, best_len = None, -1
    for i, prefixes in enumerate(LAYERS):
        for pre in prefixes:
            if (mod == pre or mod.startswith(pre + ".")) and len(pre) > best_len:
                best, best_len = i, len(pre)
    if mod == "mdkstep":
        return 0
    assert best is not None, f"{mod}: in no layer of tests/test_architecture.py LAYERS"
    return best


def imports(path: Path, mods: dict[str, Path]) -> list[tuple[str, bool, int]]:
    """(imported mdkstep module, at module top?, line) for every mdkstep import of ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    guarded = {id(n) for b in tree.body if isinstance(b, ast.If) for n in ast.walk(b)}  # `if TYPE_CHECKING:`
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.level:
            out.append(("<relative>", False, n.lineno))
        elif isinstance(n, ast.ImportFrom) and (n.module or "").startswith("mdkstep"):
            for a in n.names:
                sub = f"{n.module}.{a.name}"
                out.append((sub if sub in mods else n.module, id(n) in top or id(n) in guarded, n.lineno))
        elif isinstance(n, ast.Import):
            for a in n.names:
                if a.name.startswith("mdkstep"):
                    out.append((a.name, id(n) in top, n.lineno))
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: {t for t, _, _ in imports(p, mods) if t != m} for m, p in mods.items()}


def test_every_module_is_in_a_layer():
    for m in modules():
        layer(m)


def test_mdkstep_imports_are_absolute_and_at_module_top():
    mods = modules()
    bad = [f"{p.relative_to(SRC)}:{line}: {t}" for m, p in mods.items() for t, at_top, line in imports(p, mods)
           if t == "<relative>" or not at_top]
    assert not bad, "imports inside functions or relative imports:\n" + "\n".join(bad)


def test_no_upward_import():
    bad = [f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})"
           for m, targets in graph().items() for t in targets if layer(t) > layer(m)]
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    g = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(g.get(m, ())):
            if state.get(t) == 1:
                pytest.fail("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t in g and not state.get(t):
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(g):
        if not state.get(m):
            visit(m)
