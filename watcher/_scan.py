"""Walking the incoming folder to find files nobody announced, a bounded step at a time.

A :class:`FolderScan` walks beneath a descriptor of the incoming folder (never
following a link: a link, to a file or a folder, is reported like a file and
set aside by the workers) and yields what it finds one entry at a time, so
the dispatcher can stop when the completion tracker is full and go on later
from the same place. A backlog of 100,000 files then costs the memory of the
tracker's bound, not of a list of every name in the folder.

At its end a scan in move mode removes the subfolders that were already
empty and older than ``empty_dir_age`` when it passed them (deepest first,
each by its name in its parent's descriptor, so nothing outside is touched).
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from collections.abc import Callable, Generator, Iterator

from repack import SourceVanishedError, folder_beneath, open_folder_beneath

__all__ = ["FolderScan"]


class FolderScan:
    """One walk of (part of) the incoming folder; iterate to get ``(path, stat)`` pairs."""

    def __init__(
        self,
        root: int,
        root_path: str,
        top: str = "",
        *,
        ignored: Callable[[str], bool],
        remove_empty_after: float | None = None,
    ) -> None:
        """Walk ``top`` (relative, "" for all) below the folder ``root`` shown as ``root_path``.

        ``ignored`` names are skipped (and folders so named not entered);
        ``remove_empty_after``: remove subfolders empty for that many seconds
        (None: never).
        """
        top = "" if top in ("", ".") else top
        self.root = root
        self.root_path = root_path
        self.full = top == ""
        self.found = 0
        self._ignored = ignored
        self._remove_empty_after = remove_empty_after
        self._empty: list[tuple[str, float]] = []
        self._entries = self._walk(top)

    def __iter__(self) -> Iterator[tuple[str, os.stat_result]]:
        return self._entries

    def _walk(self, top: str) -> Generator[tuple[str, os.stat_result], None, None]:
        pending = [top]
        while pending:
            relative = pending.pop()
            try:
                descriptor = open_folder_beneath(self.root, relative)
            except (OSError, SourceVanishedError):
                continue  # gone, or no longer a folder: nothing to find there
            try:
                has_files = False
                with os.scandir(descriptor) as entries:
                    for entry in entries:
                        name = entry.name
                        if self._ignored(name):
                            continue
                        try:
                            info = entry.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        below = os.path.join(relative, name)
                        if stat.S_ISDIR(info.st_mode):
                            pending.append(below)
                            continue
                        has_files = True
                        self.found += 1
                        yield os.path.join(self.root_path, below), info
                if relative and not has_files and self._remove_empty_after is not None:
                    with contextlib.suppress(OSError):
                        # Its age before this scan removed anything below it.
                        self._empty.append((relative, os.fstat(descriptor).st_mtime))
            finally:
                os.close(descriptor)
        self._remove_empty_folders()

    def _remove_empty_folders(self) -> None:
        if self._remove_empty_after is None:
            return
        now = time.time()
        for relative, mtime in sorted(self._empty, key=lambda item: -item[0].count("/")):
            if now - mtime < self._remove_empty_after:
                continue
            try:
                parent, name = folder_beneath(self.root, relative)
            except (OSError, SourceVanishedError):
                continue
            try:
                os.rmdir(name, dir_fd=parent)
            except OSError:
                pass  # not empty (a file arrived, or a subfolder stays), or gone
            finally:
                os.close(parent)

    def close(self) -> None:
        """Stop early: its open folder is closed; folders are removed only by a finished walk."""
        self._entries.close()
