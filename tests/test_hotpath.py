"""Which build of the per-fix hot path runs, and the compiled build's guard rails."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from preemption.service import hotpath

ROOT = Path(__file__).resolve().parent.parent


def test_setup_compiles_exactly_the_hot_modules() -> None:
    tree = ast.parse((ROOT / "setup.py").read_text())
    listed = next(
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "HOT_MODULES" for t in node.targets)
    )
    paths = ast.literal_eval(listed)
    assert [p.removesuffix(".py").replace("/", ".") for p in paths] == list(hotpath.HOT_MODULES)
    for p in paths:
        assert (ROOT / p).is_file()


def test_the_build_under_test_is_the_one_expected() -> None:
    # `make test-compiled` sets PREEMPTION_EXPECT_COMPILED=1 and must run the C
    # extensions; every other run must run the sources themselves (a compiled module
    # left beside its source would shadow every later edit of it).
    expect = os.environ.get("PREEMPTION_EXPECT_COMPILED") == "1"
    assert hotpath.compiled_modules() == dict.fromkeys(hotpath.HOT_MODULES, expect)
    assert hotpath.describe() == ("compiled (mypyc)" if expect else "pure Python")


def test_an_editable_compiled_install_is_refused_before_anything_is_built() -> None:
    done = subprocess.run(
        [sys.executable, "setup.py", "editable_wheel"],
        cwd=ROOT,
        env={**os.environ, "PREEMPTION_COMPILE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "shadow every later edit" in done.stderr
