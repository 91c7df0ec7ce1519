"""Walking the incoming folder to find files nobody announced, a bounded step at a time.

A :class:`FolderScan` walks beneath the incoming folder's descriptor (a link
is reported like a file, never followed) and yields one entry at a time, so
the dispatcher stops when the tracker is full and goes on later from there: a
backlog of 100,000 files costs the tracker's bound, not a list of names. In
move mode a scan ends by removing the subfolders that were already empty and
older than ``empty_dir_age`` when it passed them, deepest first, each by its
name in its parent's descriptor.
"""

from __future__ import annotations

import collections
import contextlib
import os
import stat
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import KW_ONLY, dataclass, field

from repack.plumbing import SourceVanishedError, folder_beneath, open_folder_beneath

from ._completion import CompletionTracker
from ._folders import IncomingRoot


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


@dataclass(eq=False)
class Scans:
    """The walks under way, handed to the tracker while it has room, a bounded step at a time.

    A scan pauses when the tracker is full and goes on from the same place
    later: a backlog waits on disk, not in memory. ``done(found)`` is told
    when a walk ends.
    """

    root: IncomingRoot
    tracker: CompletionTracker
    _: KW_ONLY
    ignored: Callable[[str], bool]
    remove_empty_after: float | None
    done: Callable[[int], None]
    walks: collections.deque[FolderScan] = field(default_factory=collections.deque, init=False)

    def start(self, path: str | None = None) -> None:
        """Walk the whole folder, or the subfolder at ``path`` (as watchdog reported it)."""
        top = "" if path is None else self.root.relative(path)
        self.walks.append(FolderScan(self.root.descriptor, str(self.root.path), top,
                                      ignored=self.ignored,
                                      remove_empty_after=self.remove_empty_after))  # fmt: skip

    def more_to_hand_over(self) -> bool:
        return bool(self.walks) and self.tracker.room() > 0

    def full_scan_under_way(self) -> bool:
        return any(walk.full for walk in self.walks)

    def advance(self, step: int) -> None:
        """Hand over at most ``step`` entries (then events get their turn)."""
        while self.walks and step > 0:
            walk = self.walks[0]
            room = min(step, self.tracker.room())
            if room <= 0:
                return
            taken = 0
            for path, info in walk:
                self.tracker.found(path, info)
                taken += 1
                if taken >= room:
                    break
            step -= taken
            if taken < room:  # the walk is over
                self.walks.popleft()
                self.done(walk.found)

    def close(self) -> None:
        """Stop every walk (a replaced folder, or the end)."""
        for walk in self.walks:
            walk.close()
        self.walks.clear()
