"""The house rules: which package may import which (docs/architecture.md).

Read from the source with ast, so a new import against the direction fails here
and not in a review a year later.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from preemption.kernel import errors

ROOT = Path(__file__).resolve().parents[1]
OURS = ("preemption", "routes", "gps", "signal_adapters", "sim")

# layer -> the layers (package prefixes) it may import besides itself
ALLOWED: dict[str, tuple[str, ...]] = {
    "preemption.kernel": (),
    "routes": ("preemption.kernel",),
    "gps": ("preemption.kernel",),
    "signal_adapters": ("preemption.kernel",),
    "preemption.decisions": ("preemption.kernel",),
    "sim": ("preemption.kernel", "preemption.decisions", "routes", "gps", "signal_adapters"),
    "preemption.service": (
        "preemption.kernel",
        "preemption.decisions",
        "routes",
        "gps",
        "signal_adapters",
    ),
    "preemption.cli": (
        "preemption.kernel",
        "preemption.decisions",
        "preemption.service",
        "routes",
        "gps",
        "signal_adapters",
        "sim",
    ),
}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> str | None:
    best = None
    for layer in ALLOWED:
        if (module == layer or module.startswith(layer + ".")) and (
            best is None or len(layer) > len(best)
        ):
            best = layer
    return best


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
            # "from preemption.service import hotpath" names a module too
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return [(n, m) for n, m in out if m.split(".")[0] in OURS]


def _sources() -> list[Path]:
    return sorted(p for pkg in OURS for p in (ROOT / pkg).rglob("*.py"))


def test_every_module_belongs_to_a_layer() -> None:
    loose = [_module(p) for p in _sources() if _layer(_module(p)) is None]
    assert loose == ["preemption"], f"modules outside every layer: {loose}"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down_the_layers(path: Path) -> None:
    layer = _layer(_module(path))
    if layer is None:
        return
    wrong = []
    for line, target in _imports(path):
        to = _layer(target)
        if to is None or to == layer or to in ALLOWED[layer]:
            continue
        wrong.append(f"line {line}: {target} ({to})")
    assert not wrong, f"{layer} may import only {ALLOWED[layer]}: " + "; ".join(wrong)


def test_every_layer_says_what_it_may_import() -> None:
    for layer in ALLOWED:
        if not layer.startswith("preemption."):
            continue
        init = ROOT / layer.replace(".", "/") / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc, f"{init}: no docstring"
        assert "import" in doc, f"{init}: its docstring does not say what it may import"


def test_the_error_tree_has_one_root() -> None:
    """Every error class a module defines for people to read derives from PreemptionError."""
    offenders = []
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
                continue
            bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
            if bases & {"Exception", "ValueError", "RuntimeError", "LookupError", "OSError"}:
                offenders.append(f"{_module(path)}.{node.name}")
    root = f"{errors.__name__}.{errors.PreemptionError.__name__}"
    assert offenders == [root], f"errors outside the tree of {root}: {offenders}"
