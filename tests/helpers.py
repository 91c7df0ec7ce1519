"""Helpers shared by the test modules (no fixtures here: those live in conftest).

Commands are found next to the interpreter that runs the tests
(``.venv/bin/pypx-listener`` beside ``.venv/bin/python``), never on ``PATH``:
``.venv/bin/python -m pytest`` must pass without the venv activated, and a
command that happens to be on this machine's ``PATH`` must not hide a
missing install step.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

__all__ = ["installed"]

BIN = Path(sys.executable).parent


def installed(name: str) -> str:
    """The path of the console script ``name`` installed beside ``sys.executable``."""
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed beside {sys.executable} (pip install -e '.[test]')")
    return str(path)
