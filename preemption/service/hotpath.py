"""The per-fix hot path, and whether this installation runs it compiled.

NMEA bytes to a RoutePosition with ETAs runs through five modules for every fix
of every engine. A compiled build (``PREEMPTION_COMPILE=1``, see setup.py and
docs/benchmarks.md) turns exactly these into C extensions with mypyc, which
compiles the type-annotated source as it is: the Python modules stay the
reference, are what development installs run, and behave the same compiled
(`make test` runs the whole suite against the compiled build too).
"""

from __future__ import annotations

import importlib
import importlib.machinery

# Kept in step with HOT_MODULES in setup.py (tests/test_hotpath.py checks).
HOT_MODULES: tuple[str, ...] = (
    "gps.nmea",
    "gps.validity",
    "routes.index",
    "routes.matcher",
    "routes.speed",
)


def compiled_modules() -> dict[str, bool]:
    """Each hot module, and whether it was loaded from a compiled extension."""
    out = {}
    for name in HOT_MODULES:
        path = getattr(importlib.import_module(name), "__file__", None) or ""
        out[name] = path.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    return out


def describe() -> str:
    """One line for logs and benchmark output: which build of the hot path runs."""
    state = compiled_modules()
    if all(state.values()):
        return "compiled (mypyc)"
    if not any(state.values()):
        return "pure Python"
    python = sorted(name for name, done in state.items() if not done)
    return f"partly compiled; pure Python: {', '.join(python)}"
