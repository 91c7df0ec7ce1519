"""Importing configures nothing: every module of ``repack`` and ``watcher``, imported in a
fresh interpreter, leaves Python's warnings, logging, signals and pydicom's configuration as
they were, and reads no cgroup file (as pydicom's own ``config``: the command lines opt in)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import orjson

_ROOT = Path(__file__).resolve().parent.parent

_PROBE = r"""
import logging, signal, sys, warnings
import orjson
import pydicom.config

opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" else None)


def state():
    root, pydicom_logger = logging.getLogger(), logging.getLogger("pydicom")
    return repr((
        warnings.showwarning, list(warnings.filters),
        root.handlers[:], root.level, pydicom_logger.handlers[:], pydicom_logger.propagate,
        pydicom.config.settings.reading_validation_mode,
        pydicom.config.settings.writing_validation_mode,
        [signal.getsignal(s) for s in (signal.SIGIO, signal.SIGTERM, signal.SIGINT)],
    ))


changed = {}
for name in sys.argv[1:]:
    before = state()
    opened.clear()
    __import__(name)
    after = state()
    cgroups = [path for path in opened if path.startswith("/sys/fs/cgroup")]
    if after != before or cgroups:
        changed[name] = {"before": before, "after": after, "cgroups": cgroups}
sys.stdout.write(orjson.dumps(changed).decode())
"""


def _modules() -> list[str]:
    names = []
    for package in ("repack", "watcher"):
        names.append(package)
        names.extend(
            f"{package}.{module.name}"
            for module in pkgutil.iter_modules([str(_ROOT / package)])
            if module.name != "__main__"
        )
    return names


def test_importing_any_module_changes_no_global_state() -> None:
    modules = _modules()
    assert len(modules) > 40
    probe = subprocess.run(
        [sys.executable, "-c", _PROBE, *modules],
        capture_output=True, check=True, timeout=120, cwd=_ROOT,
    )  # fmt: skip
    assert orjson.loads(probe.stdout) == {}
