"""Comparing repacked trees: data files and parsed logs, minus what is machine-specific."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

from repack.plumbing import LOCK_DIR, TEMP_PREFIX

# The once-per-series tag table is of whichever instance arrived first.
_PER_INSTANCE_TAGS = {"SOPInstanceUID", "InstanceNumber"}
# Stat fields that differ between two correct runs (other inode, other time).
_VOLATILE_STAT = {
    "atime",
    "ctime",
    "mtime",
    "ino",
    "dev",
    "nlink",
    "blocks",
    "blksize",
    "uid",
    "gid",
}


def _normalise(document: Any, root: Path) -> Any:
    if isinstance(document, dict):
        normal = {}
        for key, original in document.items():
            if key in _VOLATILE_STAT:
                continue
            value = original
            if key in ("FSlocation", "SeriesBaseDir") and isinstance(value, str):
                value = os.path.relpath(value, root)
            if key == "DICOM" and isinstance(value, dict):
                value = {k: v for k, v in value.items() if k not in _PER_INSTANCE_TAGS}
            normal[key] = _normalise(value, root)
        return normal
    if isinstance(document, list):
        return [_normalise(v, root) for v in document]
    return document


def snapshot(data: Path, log: Path) -> dict[str, Any]:
    """Every data file (its bytes) and log file (its normalised JSON), by relative path."""
    found: dict[str, Any] = {}
    for path in sorted(data.rglob("*")) if data.exists() else []:
        if path.is_file():
            found["data/" + str(path.relative_to(data))] = path.read_bytes()
    for path in sorted(log.rglob("*")) if log.exists() else []:
        relative = path.relative_to(log)
        if path.is_file() and relative.parts[0] != LOCK_DIR:
            document = orjson.loads(path.read_bytes())
            if relative.parts[0] == "patientData":
                for record in document.values():
                    record["StudyList"] = sorted(record["StudyList"])
            found["log/" + str(relative)] = _normalise(document, data)
    return found


def temp_files(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob(f"{TEMP_PREFIX}*")]
