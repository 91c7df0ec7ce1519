"""The incoming folder, held by a descriptor.

Every candidate is opened beneath this descriptor (see
:func:`repack.open_beneath`), never by its full path, so nothing outside the
folder can be reached through it. The folder itself can be renamed away and
a new one made under its name (a clean-up script, an operator, an attacker
with write access to its parent): :meth:`IncomingRoot.current` notices that
its identity changed and opens the new one, so a worker never keeps working
in a folder nobody watches any more.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from repack import open_root

__all__ = ["Identity", "IncomingRoot", "identity_of"]

#: A folder's device and inode numbers.
Identity = tuple[int, int]


def identity_of(path: Path) -> Identity | None:
    """The identity of the folder at ``path`` (not following a link), or None."""
    try:
        found = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    if not stat.S_ISDIR(found.st_mode):
        return None
    return found.st_dev, found.st_ino


class IncomingRoot:
    """A descriptor of the incoming folder, opened again when the folder is replaced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.descriptor = -1
        self.identity: Identity = (0, 0)
        # Descriptors of replaced folders: another thread may still be using one,
        # and a closed number can be reused for another file. Closed by close().
        self._retired: list[int] = []

    def open(self) -> None:
        """Open the folder (raises :class:`OSError`, e.g. when it is a link or gone)."""
        descriptor = open_root(self.path)
        opened = os.fstat(descriptor)
        if self.descriptor >= 0:
            self._retired.append(self.descriptor)
        self.descriptor, self.identity = descriptor, (opened.st_dev, opened.st_ino)

    def current(self, expected: Identity) -> int | None:
        """The descriptor of the folder whose identity is ``expected``, or None.

        Opens the folder again when this one is not it (the folder was
        replaced since this root was opened).
        """
        if self.descriptor < 0 or self.identity != expected:
            try:
                self.open()
            except OSError:
                return None
        return self.descriptor if self.identity == expected else None

    def relative(self, path: str) -> str:
        """``path`` (a path below this folder, as watchdog reports it) relative to it."""
        return os.path.relpath(path, self.path)

    def close(self) -> None:
        """Close the descriptor and those of replaced folders (when no thread uses them)."""
        for descriptor in [*self._retired, self.descriptor]:
            if descriptor >= 0:
                os.close(descriptor)
        self._retired.clear()
        self.descriptor = -1
