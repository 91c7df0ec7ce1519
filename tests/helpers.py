"""Helpers shared by the test modules (no fixtures here: those live in conftest).

Commands are found next to the interpreter that runs the tests
(``.venv/bin/pypx-listener`` beside ``.venv/bin/python``), never on ``PATH``:
``.venv/bin/python -m pytest`` must pass without the venv activated, and a
command that happens to be on this machine's ``PATH`` must not hide a
missing install step.
"""

from __future__ import annotations

import os
import re
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

__all__ = ["children", "get", "installed", "metric", "thread_count", "worker_processes"]

BIN = Path(sys.executable).parent


def installed(name: str) -> str:
    """The path of the console script ``name`` installed beside ``sys.executable``."""
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed beside {sys.executable} (pip install -e '.[test]')")
    return str(path)


def get(url: str, timeout: float = 5) -> tuple[int, str]:
    """GET ``url`` (a loopback address); the status and the body, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in a Prometheus text exposition."""
    pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else "") + r" (\S+)"
    match = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    assert match, f"{name}{labels} not in the metrics"
    return float(match.group(1))


def children(pid: int) -> list[int]:
    """The direct child processes of ``pid``."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def worker_processes(pid: int) -> list[int]:
    """The repack worker processes (multiprocessing children) of the service ``pid``."""
    found = []
    for child in children(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"multiprocessing.spawn" in command and b"resource_tracker" not in command:
            found.append(child)
    return found


def thread_count(pid: int) -> int:
    """How many threads the process ``pid`` has."""
    return len(os.listdir(f"/proc/{pid}/task"))
