"""The watchdog side: an observer on the incoming folder and a recording handler.

watchdog calls handlers on its single dispatch thread, so :class:`Recorder`
only tells the (bounded) :class:`~watcher._completion.CompletionTracker` and
returns. watchdog hands every event through three threads, each hand-over a
wake-up; :class:`_BurstReader` lets a few milliseconds of events gather in
the kernel's queue, so the threads wake once per burst, not once per event.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from watchdog.events import (
    DirCreatedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.api import DEFAULT_OBSERVER_TIMEOUT, BaseObserver
from watchdog.observers.inotify import InotifyEmitter, InotifyObserver
from watchdog.observers.inotify_c import InotifyFD
from watchdog.observers.polling import PollingObserver

from ._completion import CompletionTracker

__all__ = ["READ_BURST_S", "Recorder", "reads_in_bursts", "start_observer"]


# Only what decides something is asked for. Opened and closed-without-write
# come from every reader, this service included. Modified fires for every
# write() call and attribute change (our own hard links included), and adds
# nothing: a file that changes during its settle period is caught by the
# signature comparison anyway. Deleted matters only for the versions that
# copy mode remembers.
_WANTED: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileClosedEvent,
    FileMovedEvent,
    DirCreatedEvent,
]


def _text(path: str | bytes) -> str:
    return path if isinstance(path, str) else os.fsdecode(path)


class Recorder(FileSystemEventHandler):
    """Tells the completion tracker what watchdog saw; does nothing else.

    Dot-files and anything in a dot-folder (this package's temporary files
    among them) are never candidates.
    """

    def __init__(self, tracker: CompletionTracker, root: str) -> None:
        self._tracker = tracker
        self._root_length = len(root)

    def _hidden(self, path: str) -> bool:
        return "/." in path[self._root_length :]

    def on_any_event(self, event: FileSystemEvent) -> None:
        kind, tracker = event.event_type, self._tracker
        if kind == "moved" and not event.is_directory:
            # Renamed into place within the folder: complete, by the atomic-rename
            # convention (a move from outside arrives as "created" and settles).
            destination = _text(event.dest_path)
            if not self._hidden(destination):
                tracker.closed(destination)
        path = _text(event.src_path)
        if self._hidden(path):
            return
        if event.is_directory:
            if kind == "created":
                tracker.new_folder(path)
        elif kind == "closed":
            tracker.closed(path)
        elif kind in ("moved", "deleted"):
            tracker.deleted(path)
        elif kind == "created":
            tracker.changed(path)


#: How long the inotify reader lets events gather once the first one is there
#: (measured: see benchmarks/HISTORY.md). It adds at most this much to a file's latency.
READ_BURST_S = 0.005


class _BurstReader(InotifyFD):
    """watchdog's inotify reader, reading what a few milliseconds bring at once.

    It extends watchdog's own wait for the descriptor to become readable
    (``_check_inotify_fd``, watchdog 7); :func:`reads_in_bursts` tells
    whether the installed watchdog still has it.
    """

    def _check_inotify_fd(self) -> bool:
        readable = super()._check_inotify_fd()
        if readable:
            time.sleep(READ_BURST_S)  # the rest of the burst queues in the kernel
        return readable


class _BurstObserver(InotifyObserver):
    """watchdog's inotify observer, built as its ``__init__`` does, with the burst reader."""

    def __init__(self) -> None:
        self._inotify_fd = _BurstReader()
        self._inotify_fd.start()
        BaseObserver.__init__(
            self, InotifyEmitter, timeout=DEFAULT_OBSERVER_TIMEOUT, inotify_fd=self._inotify_fd
        )


def reads_in_bursts() -> bool:
    """Whether the installed watchdog's reader waits where :class:`_BurstReader` extends it."""
    return callable(getattr(InotifyFD, "_check_inotify_fd", None))


def start_observer(
    folder: Path,
    tracker: CompletionTracker,
    *,
    polling: bool,
    poll_interval: float,
    deletions: bool = False,
) -> BaseObserver:
    """Start a recursive observer (inotify, or polling for network file systems).

    ``deletions``: also report deleted files (copy mode forgets their versions).
    """
    observer: BaseObserver = PollingObserver(timeout=poll_interval) if polling else _BurstObserver()
    wanted = [*_WANTED, FileDeletedEvent] if deletions else _WANTED
    observer.schedule(
        Recorder(tracker, str(folder)), str(folder), recursive=True, event_filter=wanted
    )
    observer.daemon = True
    observer.start()
    return observer
