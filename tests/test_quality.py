"""The code passes ruff and mypy --strict, as configured in pyproject.toml."""

from __future__ import annotations

import subprocess
import sys

import pytest

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
