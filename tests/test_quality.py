"""The code passes ruff and mypy --strict, as configured in pyproject.toml."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

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
        if (
            isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and body
        ):
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


#: Underscore names that are public API of the standard library.
_PUBLIC_UNDERSCORE = {"_exit", "_replace", "_asdict", "_fields", "_make"}
#: What the library imports from outside itself.
_DEPENDENCIES = ("pydicom", "watchdog", "structlog", "orjson", "celery", "kombu",
                 "prometheus_client", "nats", "redis")  # fmt: skip


def _private_uses(tree: ast.AST) -> list[str]:
    """Underscore names reached on anything but ``self``/``cls``, and imported from a dependency.

    A patch release of a dependency may change any of its private names (watchdog
    7.1.1 changed the signature of a method the service once overrode), so the
    library reaches none of them: neither an attribute of another object nor a
    private module or name of a dependency, nor a dependency's class subclassed
    to override an underscore method.
    """
    found = []
    imported = {
        alias.asname or alias.name: getattr(importlib.import_module(node.module), alias.name, None)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
        and node.module.split(".")[0] in _DEPENDENCIES
        for alias in node.names
    }  # fmt: skip
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            bases = [imported.get(ast.unparse(base)) for base in node.bases]
            found.extend(
                f"{item.lineno}: {node.name}.{item.name} overrides a private method"
                for item in node.body
                if isinstance(item, ast.FunctionDef)
                and item.name.startswith("_") and not item.name.startswith("__")
                and any(hasattr(base, item.name) for base in bases)
            )  # fmt: skip
        if isinstance(node, ast.Attribute) and node.attr.startswith("_"):
            owner = node.value
            own = isinstance(owner, ast.Name) and owner.id in ("self", "cls")
            if not own and not node.attr.startswith("__") and node.attr not in _PUBLIC_UNDERSCORE:
                found.append(f"{node.lineno}: {ast.unparse(node)}")
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.level == 0
            and node.module.split(".")[0] in _DEPENDENCIES
        ):
            names = [node.module, *(alias.name for alias in node.names)]
            if any(part.startswith("_") for name in names for part in name.split(".")):
                found.append(f"{node.lineno}: from {node.module} import ...")
    return sorted(found, key=lambda line: int(line.split(":")[0]))


@pytest.mark.parametrize(
    "module", lines.library_modules(), ids=lambda path: str(path.relative_to(ROOT))
)
def test_no_private_name_of_a_dependency(module: Path) -> None:
    assert _private_uses(ast.parse(module.read_text())) == []


def test_the_private_name_check_finds_what_it_looks_for() -> None:
    sample = (
        "from watchdog.observers.inotify_c import InotifyFD\n"
        "from pydicom.config import _private\n"
        "class Reader(InotifyFD):\n"
        "    def _check_inotify_fd(self):\n"
        "        ...\n"
        "    def _mine(self):\n"
        "        return super()._check_inotify_fd()\n"
        "elements = dataset._dict\n"
        "self._mine = os._exit\n"
    )
    assert _private_uses(ast.parse(sample)) == [
        "2: from pydicom.config import ...",
        "4: Reader._check_inotify_fd overrides a private method",
        "7: super()._check_inotify_fd",
        "8: dataset._dict",
    ]


def test_the_readme_figures_of_the_path_are_the_scripts() -> None:
    """``benchmarks.path_calls``'s counts, as the README states them."""
    import re  # noqa: PLC0415

    shown = subprocess.run(
        [sys.executable, "-m", "benchmarks.path_calls"],
        capture_output=True, text=True, timeout=120, check=True, cwd=ROOT,
    )  # fmt: skip
    found = re.search(
        r"cross-module pairs traced: (\d+); on the main line: (\d+) traced \+ (\d+) of the service",
        shown.stdout,
    )
    assert found, shown.stdout[-500:]
    total, traced, service = map(int, found.groups())
    readme = " ".join((ROOT / "README.md").read_text().split())
    stated = (
        f"{traced + service} caller -> callee pairs on the main line ({traced} traced, {service}"
        f" of the service's own threads), {total} pairs in all"
    )
    assert stated in readme


def test_the_readme_states_the_floor_the_script_counts() -> None:
    """``benchmarks.lines``'s floor of the library (hand-off aside), as the README states it."""
    import json  # noqa: PLC0415

    shown = subprocess.run(
        [sys.executable, "-m", "benchmarks.lines", "--json"],
        capture_output=True, text=True, timeout=300, check=True, cwd=ROOT,
    )  # fmt: skip
    counted = json.loads(shown.stdout)["without the hand-off"]
    readme = " ".join((ROOT / "README.md").read_text().split())
    assert f"{counted['lines']:,} lines, of which {counted['code']:,} code" in readme
    assert f"is **{counted['floor']:,}** lines" in readme
