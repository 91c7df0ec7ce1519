"""The code passes ruff and mypy --strict, as configured in pyproject.toml."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from benchmarks import lines

from .conftest import ROOT
from .helpers import installed


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "ruff", "check", "."],
        [sys.executable, "-m", "ruff", "format", "--check", "."],
        [sys.executable, "-m", "mypy"],
    ],
    ids=["ruff-check", "ruff-format", "mypy-strict"],
)
def test_static_checks(command: list[str]) -> None:
    installed(command[2])  # fails clearly when the test extra is missing
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


_SAMPLE = '''"""Module doc.

More.
"""

import os  # a comment

# a full-line comment
X = """not a docstring

with a blank line"""


def f() -> None:
    """Only a docstring."""


class C:
    """Doc."""

    def g(self) -> int:
        # why
        return 1
'''


class _NoDocstrings(ast.NodeTransformer):
    """Drops docstrings (a body of only one gets ``...``), as the floor does."""

    def generic_visit(self, node: ast.AST) -> ast.AST:
        super().generic_visit(node)
        body = getattr(node, "body", None)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef) and body:
            first = body[0]
            value = first.value if isinstance(first, ast.Expr) else None
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                node.body = body[1:] or [ast.Expr(ast.Constant(...))]
        return node


def _program(source: str) -> str:
    return ast.dump(_NoDocstrings().visit(ast.parse(source)))


def test_line_count_by_kind() -> None:
    count = lines.count_source(_SAMPLE)
    assert (count.lines, count.code, count.docstrings, count.comments, count.blank) == (
        23, 8, 6, 2, 7,
    )  # fmt: skip
    bare = lines.bare_code(_SAMPLE)
    assert '"""not a docstring\n\nwith a blank line"""' in bare  # a string is left whole
    assert "#" not in bare.replace("# a comment", "")
    assert "Doc." not in bare
    assert "\n\n\n" not in bare


@pytest.mark.parametrize(
    "module", ["SAMPLE", *(str(p.relative_to(ROOT)) for p in lines.library_modules())]
)
def test_the_floor_is_the_same_program(module: str) -> None:
    """What the floor counts is each module's code itself, laid out by ruff as it is."""
    installed("ruff")
    path = ROOT / ("repack/sample.py" if module == "SAMPLE" else module)
    source = _SAMPLE if module == "SAMPLE" else path.read_text()
    floor = lines.formatted_bare_code(source, path)
    assert _program(floor) == _program(source)
    assert len(floor.splitlines()) < lines.count_source(source).lines
