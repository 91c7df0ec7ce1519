"""Setting aside files that can never be repacked, with a note saying why.

Nothing is deleted: the file is moved to ``<quarantine>/<UTC time>-<name>``
(a hard link then the removal of the source, or a synced copy across file
systems) and a JSON note ``<same name>.json`` is written beside it, atomically.
"""

from __future__ import annotations

import datetime
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repack import Store, json_bytes

__all__ = ["Quarantine"]


@dataclass(frozen=True)
class Quarantine:
    """The quarantine folder and the store that writes into it."""

    folder: Path
    store: Store

    def put(self, source: Path, reason: str, error: str, *, relative_to: Path) -> Path:
        """Move ``source`` here with a note; return its new path."""
        now = datetime.datetime.now(datetime.UTC)
        stamp = now.strftime("%Y%m%dT%H%M%S.%fZ")
        name = f"{stamp}-{secrets.token_hex(3)}-{source.name}"[:240]
        target = self.folder / name
        expected = os.stat(source)
        self.store.place(source, target, link=True)
        note: dict[str, Any] = {
            "reason": reason,
            "error": error,
            "src": str(source),
            "relative_path": str(source.relative_to(relative_to))
            if source.is_relative_to(relative_to)
            else source.name,
            "size": expected.st_size,
            "quarantined_at": now.isoformat().replace("+00:00", "Z"),
            "file": name,
        }
        self.store.write_atomic(self.folder / f"{name}.json", json_bytes(note))
        self.store.remove_source(source, expected)
        return target
