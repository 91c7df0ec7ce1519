"""The watchdog side: an observer on the incoming folder and a recording handler.

watchdog calls handlers on its single dispatch thread, so :class:`Recorder`
only tells the (bounded) :class:`~watcher._completion.CompletionTracker` and
returns. Only watchdog's public API is used: its inotify reader gathers a
burst of events itself (watchdog 7.1.1), so the threads wake once per burst.
"""

from __future__ import annotations

import os
import threading
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
from watchdog.observers.api import BaseObserver
from watchdog.observers.inotify import InotifyObserver
from watchdog.observers.polling import PollingObserver

from ._completion import CompletionTracker
from ._folders import ignored_below

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
        return ignored_below(path[self._root_length :])

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


def observer_threads(observer: BaseObserver) -> list[threading.Thread]:
    """The observer's own threads that the service can see: its dispatcher and its emitters.

    watchdog's inotify reader is a thread it does not expose; its death is seen
    by :class:`~watcher._threads.ThreadWatch` (``threading.excepthook``).
    """
    return [observer, *observer.emitters]


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
    observer: BaseObserver = (
        PollingObserver(timeout=poll_interval) if polling else InotifyObserver()
    )
    wanted = [*_WANTED, FileDeletedEvent] if deletions else _WANTED
    observer.schedule(
        Recorder(tracker, str(folder)), str(folder), recursive=True, event_filter=wanted
    )
    observer.daemon = True
    observer.start()
    return observer
