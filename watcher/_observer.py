"""The watchdog side: an observer on the incoming folder and a recording handler.

watchdog calls handlers on its single dispatch thread, so the handler only
records a :class:`Record` into an :class:`Inbox` and returns. The inbox is
bounded: when it is full, events are dropped and the inbox says so, and the
service rescans the folder (the files are on disk; nothing is lost).

watchdog's inotify observer hands every event through three threads (the
reader of the inotify descriptor, the emitter, the dispatcher), and each
hand-over wakes a thread. While storescp writes a file at a time, its reader
woke for nearly every event. :class:`_BurstReader` lets the events of a few
milliseconds gather in the kernel's queue before it reads them, so the three
threads wake once per burst instead of once per event.
"""

from __future__ import annotations

import collections
import os
import threading
import time
from enum import Enum
from pathlib import Path
from typing import NamedTuple

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

__all__ = [
    "READ_BURST_S",
    "Inbox",
    "Record",
    "RecordKind",
    "Recorder",
    "reads_in_bursts",
    "start_observer",
]


class RecordKind(Enum):
    """What happened to a path."""

    #: Created or moved in from outside: wait for it to settle.
    CHANGED = "changed"
    #: Closed after writing, or renamed into place within the folder: complete.
    CLOSED = "closed"
    DELETED = "deleted"
    #: A new subfolder: scan it (its watch may come too late for its first files).
    NEW_FOLDER = "new-folder"


class Record(NamedTuple):
    """Something that happened to a path in the incoming folder."""

    kind: RecordKind
    path: str


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


class Inbox:
    """A bounded, thread-safe list of :class:`Record`."""

    def __init__(self, capacity: int) -> None:
        self._records: collections.deque[Record] = collections.deque()
        self._capacity = capacity
        self._condition = threading.Condition()
        self._overflowed = False

    def put(self, kind: RecordKind, path: str) -> None:
        with self._condition:
            if len(self._records) >= self._capacity:
                self._overflowed = True
                return
            self._records.append(Record(kind, path))
            self._condition.notify()

    def wake(self) -> None:
        """Wake a waiting :meth:`take` (used when stopping)."""
        with self._condition:
            self._condition.notify_all()

    def take(self, timeout: float, limit: int = 10_000) -> tuple[list[Record], bool]:
        """Wait up to ``timeout`` for records; return them and whether any were dropped."""
        with self._condition:
            if not self._records and timeout > 0:
                self._condition.wait(timeout)
            count = min(limit, len(self._records))
            records = [self._records.popleft() for _ in range(count)]
            overflowed, self._overflowed = self._overflowed, False
            return records, overflowed


def _text(path: str | bytes) -> str:
    return path if isinstance(path, str) else os.fsdecode(path)


class Recorder(FileSystemEventHandler):
    """Translates watchdog events into inbox records; does nothing else."""

    def __init__(self, inbox: Inbox) -> None:
        self._inbox = inbox

    def on_any_event(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        path = _text(event.src_path)
        if event.is_directory:
            if kind == "created":
                self._inbox.put(RecordKind.NEW_FOLDER, path)
        elif kind == "closed":
            self._inbox.put(RecordKind.CLOSED, path)
        elif kind == "moved":
            # Renamed into place within the folder: complete, by the atomic-rename
            # convention (a move from outside arrives as "created" and settles).
            self._inbox.put(RecordKind.DELETED, path)
            self._inbox.put(RecordKind.CLOSED, _text(event.dest_path))
        elif kind == "deleted":
            self._inbox.put(RecordKind.DELETED, path)
        elif kind == "created":
            self._inbox.put(RecordKind.CHANGED, path)


#: How long the inotify reader lets events gather once the first one is there.
#: Whole service, CPU per instance while storescp writes 1,920 SAG-anon instances
#: (tmpfs, interleaved runs): 0.68-0.94 ms reading at once, 0.59-0.66 with 5 ms; in a
#: later, slower set 0.72-0.88 with 5 ms and 0.70-0.80 with 10 ms. It adds at most
#: this much to a file's latency.
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
    folder: Path, inbox: Inbox, *, polling: bool, poll_interval: float, deletions: bool = False
) -> BaseObserver:
    """Start a recursive observer (inotify, or polling for network file systems).

    ``deletions``: also report deleted files (copy mode forgets their versions).
    """
    observer: BaseObserver = PollingObserver(timeout=poll_interval) if polling else _BurstObserver()
    wanted = [*_WANTED, FileDeletedEvent] if deletions else _WANTED
    observer.schedule(Recorder(inbox), str(folder), recursive=True, event_filter=wanted)
    observer.daemon = True
    observer.start()
    return observer
