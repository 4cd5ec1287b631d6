"""The repository's own rules for its source, checked so they stay true.

One module per concern (no file over ~400 lines outside the kernels), no module reaching into
another's underscore names, and every rule cited from docs/semantics.md, which must exist and hold
the cited section.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "fastgen"
PY_FILES = sorted(p for p in SRC.rglob("*.py") if "_ext" not in p.parts)
MAX_LINES = 400


@pytest.mark.parametrize("path", PY_FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_is_over_the_size_limit(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


@pytest.mark.parametrize("path", PY_FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_cross_module_underscore_access(path):
    """``obj._name`` only on ``self``/``cls``; ``from x import _name`` never."""
    tree = ast.parse(path.read_text(), str(path))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                bad.append(f"line {node.lineno}: .{node.attr}")
        if isinstance(node, ast.ImportFrom) and node.module != "_ext" and not (node.module or "").startswith("_"):
            bad += [f"line {node.lineno}: import {a.name}" for a in node.names
                    if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, bad


def test_rules_are_cited_from_the_repository():
    semantics = (ROOT / "docs" / "semantics.md").read_text()
    sections = set(re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", semantics, re.M))
    assert {"1", "2", "3", "3.3", "4.4", "5.4", "6.4", "9"} <= sections
    cited, stale = set(), []
    outside = "SP" + "EC"                 # the document outside the repository
    for path in [*SRC.rglob("*.py"), *SRC.rglob("*.pyx"), *SRC.rglob("*.h"), *ROOT.glob("tests/*.py"),
                 *ROOT.glob("bench/*.py")]:
        text = path.read_text()
        if re.search(rf"\b{outside}\b", text):
            stale.append(str(path.relative_to(ROOT)))
        for group in re.findall(r"docs/semantics\.md ((?:§[\d.]+[-–/, ]*)+)", text):
            cited |= {s.rstrip(".") for s in re.findall(r"§?(\d+(?:\.\d+)?)", group)}
    assert not stale, stale
    assert cited and cited <= sections, sorted(cited - sections)
