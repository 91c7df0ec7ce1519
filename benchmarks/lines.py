"""Count the library's lines by kind, and the least its code could be laid out in.

For each module of ``repack`` and ``watcher``: all its lines, and how many
are code, docstrings, comments and blank. Then the **floor**: the same code
with every docstring and comment removed and every blank line that ruff's
format does not demand (the two around a top-level definition, the one
between methods), formatted by ruff with the project's settings. It is what
a line budget would cost if documentation cost nothing: what stays above a
budget after that can only go with code, that is with behaviour.

    .venv/bin/python -m benchmarks.lines [--json]

The hand-off to ChRIS (issue 20 asked for it in modules of its own) is
totalled apart.
"""

from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
import tokenize
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("repack", "watcher")
#: The hand-off's modules, counted apart.
HANDOFF = ("_handoff.py", "_handoff_setup.py", "_destinations.py", "_lonk.py", "_cube.py")


@dataclass(frozen=True)
class LineCount:
    """The lines of one source text by kind, and its floor (see the module docstring)."""

    lines: int
    code: int
    docstrings: int
    comments: int
    blank: int
    floor: int = 0


def _docstrings(tree: ast.Module) -> list[tuple[ast.Expr, bool]]:
    """The docstring statements of a module, its classes and its functions.

    Each with whether it is its body's only statement.
    """
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                found.append((first, len(node.body) == 1))
    return found


def _inside_strings(source: str) -> set[int]:
    """Line numbers (1-based) that continue a string begun on an earlier line."""
    inside: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.STRING and token.end[0] > token.start[0]:
            inside.update(range(token.start[0] + 1, token.end[0] + 1))
    return inside


def count_source(source: str) -> LineCount:
    """Count the lines of ``source`` by kind (no floor)."""
    lines = source.splitlines()
    kinds = ["code"] * len(lines)
    for statement, _ in _docstrings(ast.parse(source)):
        end = statement.end_lineno or statement.lineno
        kinds[statement.lineno - 1 : end] = ["docstring"] * (end - statement.lineno + 1)
    inside = _inside_strings(source)
    for number, line in enumerate(lines, start=1):
        if kinds[number - 1] == "docstring" or number in inside:
            continue
        stripped = line.strip()
        if not stripped:
            kinds[number - 1] = "blank"
        elif stripped.startswith("#"):
            kinds[number - 1] = "comment"
    return LineCount(
        lines=len(lines),
        code=kinds.count("code"),
        docstrings=kinds.count("docstring"),
        comments=kinds.count("comment"),
        blank=kinds.count("blank"),
    )


def bare_code(source: str) -> str:
    """``source`` without docstrings, comment lines and blank lines (not yet formatted).

    A body that was only a docstring becomes ``...``; lines inside any other
    string that spans several lines are kept as they are.
    """
    lines = source.splitlines()
    dropped: set[int] = set()
    for statement, alone in _docstrings(ast.parse(source)):
        end = statement.end_lineno or statement.lineno
        dropped.update(range(statement.lineno, end + 1))
        if alone:
            lines[statement.lineno - 1] = " " * statement.col_offset + "..."
            dropped.discard(statement.lineno)
    inside = _inside_strings(source)
    kept = []
    for number, line in enumerate(lines, start=1):
        if number in dropped:
            continue
        if number in inside or (line.strip() and not line.strip().startswith("#")):
            kept.append(line)
    return "\n".join(kept) + "\n"


def formatted_bare_code(source: str, path: Path) -> str:
    """:func:`bare_code` as ruff formats it for ``path`` (the project's settings)."""
    return subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--stdin-filename", str(path), "-"],
        input=bare_code(source),
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        timeout=60,
    ).stdout


def floor_of(source: str, path: Path) -> int:
    """The lines of ``source``'s code at the least (see the module docstring)."""
    return len(formatted_bare_code(source, path).splitlines())


def _total(counts: list[LineCount]) -> LineCount:
    return LineCount(*(sum(getattr(c, f.name) for c in counts) for f in fields(LineCount)))


def library_modules() -> list[Path]:
    """The modules of :data:`PACKAGES`, sorted."""
    return sorted(path for package in PACKAGES for path in (ROOT / package).glob("*.py"))


def main(argv: list[str]) -> int:
    counted = {}
    for path in library_modules():
        source = path.read_text(encoding="utf-8")
        counted[str(path.relative_to(ROOT))] = replace(
            count_source(source), floor=floor_of(source, path)
        )
    core = [c for name, c in counted.items() if Path(name).name not in HANDOFF]
    handoff = [c for name, c in counted.items() if Path(name).name in HANDOFF]
    totals = {
        "without the hand-off": _total(core),
        "the hand-off": _total(handoff),
        "all": _total(list(counted.values())),
    }
    if "--json" in argv:
        print(json.dumps({k: asdict(v) for k, v in {**counted, **totals}.items()}, indent=1))
        return 0
    header = f"{'':30} {'lines':>6} {'code':>6} {'doc':>6} {'comment':>7} {'blank':>6} {'floor':>6}"
    print(header)
    for name, c in [*counted.items(), *totals.items()]:
        print(
            f"{name:30} {c.lines:6} {c.code:6} {c.docstrings:6} {c.comments:7} {c.blank:6}"
            f" {c.floor:6}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
