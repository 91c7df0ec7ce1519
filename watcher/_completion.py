"""Deciding when a file in the incoming folder is completely written.

storescp writes each instance under its final name (no temporary name, no
rename), and watchdog does not always report the close (a new sub-folder's
first file may only get a synthetic "created"; polling reports no closes).
So a file is a **candidate** on a close-after-write, or once its
``(inode, size, mtime)`` has not changed for ``settle`` seconds after its
last event or a scan found it (at once when the scan finds it older than
that); the read then checks that it is complete. Each
``(path, inode, size, mtime)`` version is taken once: a re-sent instance is a
new version. :attr:`Candidate.closed` says that its writer closed it, or that
it has not changed for ``unleased_settle`` seconds (what a worker without a
lease needs). Ages count from when the tracker first saw a version, never
from an mtime, which anyone can set to the future.

Bounded: at most ``capacity`` pending paths and :data:`NEW_FOLDERS_AT_MOST`
new folders; past that, what it is told is dropped, :attr:`~CompletionTracker.overflowed`
is raised and the service rescans later (a backlog waits on disk). Scans get
at most :data:`SCAN_SHARE` of the room and files waiting for their quarantine
at most :data:`HELD_SHARE`, so that files which cannot progress never starve
those that can. Thread-safe: the watchdog handler records (and wakes the
dispatcher), the dispatcher takes, the pool threads report back.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from repack.plumbing import printable

#: The share of the capacity that scans may fill; the rest is for files events announce.
SCAN_SHARE = 0.75
#: The share of the capacity that files waiting to be quarantined may hold.
HELD_SHARE = 0.5
#: New subfolders waiting to be scanned at most (more: a rescan of everything).
NEW_FOLDERS_AT_MOST = 1_024


class Signature(NamedTuple):
    """A file version (of the name itself: a link is not followed)."""

    inode: int
    size: int
    mtime_ns: int


def signature_of(stat: os.stat_result) -> Signature:
    return Signature(stat.st_ino, stat.st_size, stat.st_mtime_ns)


class Candidate(NamedTuple):
    """A file version that is ready to be repacked: the job a worker process gets."""

    path: str
    signature: Signature
    attempt: int = 0
    #: Its writer closed it, or it has been quiet for the unleased settle period.
    closed: bool = False
    #: When the tracker first saw this version (its monotonic clock).
    seen: float = 0.0

    @property
    def shown(self) -> str:
        """The path as printable text (undecodable name bytes spelled ``\\xNN``)."""
        return printable(self.path)

    @property
    def mtime(self) -> float:
        """The version's modification time, in seconds since the epoch."""
        return self.signature.mtime_ns / 1e9


@dataclass(slots=True)
class _Pending:
    signature: Signature | None
    due: float
    #: Wall-clock time the file was first seen (the age of the backlog).
    since: float
    closed: bool = False
    attempt: int = 0
    in_flight: bool = False
    #: When ``signature`` was first seen (monotonic).
    seen: float = 0.0
    #: The last failure, and how many attempts in a row failed that way.
    failure: str = ""
    repeats: int = 0


class CompletionTracker:
    """Tracks the files of the incoming folder until each version is processed."""

    def __init__(
        self,
        settle: float,
        *,
        capacity: int = 10_000,
        unleased_settle: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        stat: Callable[[str], os.stat_result] = os.lstat,
    ) -> None:
        self.settle = settle
        self.capacity = capacity
        self.unleased_settle = unleased_settle
        self._clock = clock
        self._wall_clock = wall_clock
        self._stat = stat
        self._lock = threading.Lock()
        #: Wakes the dispatcher: something is due now, or it must stop.
        self._wakeup = threading.Condition(self._lock)
        self._new_folders: list[str] = []
        self._woken = False
        self._pending: dict[str, _Pending] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._order = itertools.count()
        self._done: dict[str, Signature] = {}
        #: Paths waiting out their quarantine delay (see :meth:`hold`).
        self._held: set[str] = set()
        #: Set when something was dropped for lack of room: rescan later.
        self.overflowed = False

    # -- recording (cheap: called for every event) ---------------------------

    def _schedule(self, path: str, entry: _Pending, due: float) -> None:
        entry.due = due
        self._held.discard(path)
        heapq.heappush(self._heap, (due, next(self._order), path))

    def _forget(self, path: str) -> None:
        del self._pending[path]
        self._held.discard(path)

    def _entry(self, path: str) -> _Pending | None:
        entry = self._pending.get(path)
        if entry is None:
            if len(self._pending) >= self.capacity:
                self.overflowed = True
                return None
            entry = self._pending[path] = _Pending(None, 0.0, self._wall_clock())
        return entry

    def changed(self, path: str) -> None:
        """The file was created, modified or moved here: wait for it to settle."""
        with self._lock:
            entry = self._entry(path)
            if entry is not None and not entry.in_flight:
                entry.closed = False
                entry.signature = None
                self._schedule(path, entry, self._clock() + self.settle)

    def closed(self, path: str) -> None:
        """The writer closed the file: it is a candidate now."""
        with self._lock:
            entry = self._entry(path)
            if entry is not None and not entry.in_flight:
                entry.closed = True
                self._schedule(path, entry, self._clock())
                self._wake()

    def new_folder(self, path: str) -> None:
        """A subfolder appeared: scan it (its watch may come too late for its first files)."""
        with self._lock:
            if len(self._new_folders) >= NEW_FOLDERS_AT_MOST:
                self.overflowed = True
            else:
                self._new_folders.append(path)
            self._wake()

    def take_new_folders(self) -> list[str]:
        with self._lock:
            folders, self._new_folders = self._new_folders, []
            return folders

    def wait(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for :meth:`wake` or a file or folder due now."""
        with self._lock:
            if timeout > 0 and not self._woken:
                self._wakeup.wait(timeout)
            self._woken = False

    def wake(self) -> None:
        with self._lock:
            self._wake()

    def _wake(self) -> None:
        self._woken = True  # a wake before the wait is not lost
        self._wakeup.notify_all()

    def found(self, path: str, stat: os.stat_result) -> None:
        """A scan found the file (startup, reconciliation, new folder)."""
        signature = signature_of(stat)
        with self._lock:
            if self._done.get(path) == signature or path in self._pending:
                return
            entry = self._entry(path)
            if entry is None:
                return
            entry.signature = signature
            entry.seen = self._clock()
            settled = self._wall_clock() - stat.st_mtime >= self.settle
            self._schedule(path, entry, entry.seen + (0 if settled else self.settle))

    def deleted(self, path: str) -> None:
        """The file is gone: forget it (unless a worker holds it)."""
        with self._lock:
            self._done.pop(path, None)
            entry = self._pending.get(path)
            if entry is not None and not entry.in_flight:
                self._forget(path)

    # -- deciding ------------------------------------------------------------

    def next_due(self) -> float | None:
        """When the earliest pending file should be looked at (monotonic time)."""
        with self._lock:
            return self._heap[0][0] if self._heap else None

    def take_ready(self, limit: int) -> list[Candidate]:
        """Up to ``limit`` candidates, marked in flight; stats only what is due."""
        ready: list[Candidate] = []
        now = self._clock()
        with self._lock:
            while self._heap and len(ready) < limit and self._heap[0][0] <= now:
                due, _, path = heapq.heappop(self._heap)
                entry = self._pending.get(path)
                if entry is None or entry.in_flight or entry.due != due:
                    continue  # superseded by a later schedule
                try:
                    signature = signature_of(self._stat(path))
                except OSError:
                    self._forget(path)
                    continue
                if self._done.get(path) == signature:
                    self._forget(path)
                    continue
                if entry.signature != signature:
                    entry.signature, entry.seen = signature, now
                    if not entry.closed:
                        self._schedule(path, entry, now + self.settle)
                        continue
                entry.in_flight = True
                self._held.discard(path)
                closed = entry.closed or now - entry.seen >= self.unleased_settle
                ready.append(Candidate(path, signature, entry.attempt, closed, entry.seen))
        return ready

    # -- outcomes (from workers) ---------------------------------------------

    def finished(self, candidate: Candidate, *, remember: bool) -> None:
        """The version was processed; ``remember`` it if the file stays (copy mode)."""
        with self._lock:
            entry = self._pending.get(candidate.path)
            if entry is not None and entry.in_flight:
                self._forget(candidate.path)
            if remember:
                self._done[candidate.path] = candidate.signature
            else:
                self._done.pop(candidate.path, None)

    def retry(self, candidate: Candidate, delay: float, failure: str) -> int:
        """Look at the file again in ``delay`` seconds (one more attempt).

        ``failure`` says how this attempt failed; returns how many attempts
        in a row failed that same way.
        """
        with self._lock:
            entry = self._pending.get(candidate.path)
            if entry is None:
                return 1
            entry.in_flight = False
            entry.closed = True  # it was complete enough to try: no new settle
            entry.attempt = candidate.attempt + 1
            entry.repeats = entry.repeats + 1 if entry.failure == failure else 1
            entry.failure = failure
            self._schedule(candidate.path, entry, self._clock() + delay)
            return entry.repeats

    def _requeue(self, candidate: Candidate, due: float) -> None:
        """Put a candidate back to wait until ``due``, no attempt counted (lock held)."""
        entry = self._pending.get(candidate.path)
        if entry is None:
            return
        entry.in_flight = False
        entry.closed = False
        entry.signature = candidate.signature
        self._schedule(candidate.path, entry, due)

    def recheck(self, candidate: Candidate, delay: float) -> None:
        """Look again after ``delay`` without counting an attempt (a file still changing)."""
        with self._lock:
            self._requeue(candidate, self._clock() + delay)

    def until_quiet(self, candidate: Candidate) -> None:
        """Look again once the version has been quiet for the unleased settle period."""
        with self._lock:
            self._requeue(candidate, max(self._clock(), candidate.seen + self.unleased_settle))

    def hold(self, candidate: Candidate, delay: float) -> bool:
        """Keep a file that cannot be repacked for ``delay`` seconds before it is quarantined.

        False, and the file is forgotten (a later scan finds it again), when
        held files already fill :data:`HELD_SHARE` of the capacity.
        """
        with self._lock:
            if candidate.path not in self._pending:
                return False
            if len(self._held) >= self.capacity * HELD_SHARE:
                self._forget(candidate.path)
                return False
            self._requeue(candidate, self._clock() + delay)
            self._held.add(candidate.path)
            return True

    def quiet_for(self, candidate: Candidate) -> float:
        """Seconds the candidate's version has not changed: since its mtime, or since the
        tracker first saw it when that is longer (an mtime can be set to the future)."""
        return max(self._wall_clock() - candidate.mtime, self._clock() - candidate.seen)

    # -- introspection -------------------------------------------------------

    def pending_count(self) -> int:
        with self._lock:
            return len(self._pending)

    def room(self) -> int:
        """How many more paths a scan may hand over (:data:`SCAN_SHARE` of the capacity)."""
        with self._lock:
            return max(0, int(self.capacity * SCAN_SHARE) - len(self._pending))

    def failing(self, repeats: int) -> int:
        """How many files failed at least ``repeats`` times in a row the same way."""
        with self._lock:
            return sum(1 for entry in self._pending.values() if entry.repeats >= repeats)

    def oldest_age(self) -> float:
        """Seconds since the longest-waiting known file was first seen (0 if none)."""
        with self._lock:
            oldest = min((entry.since for entry in self._pending.values()), default=None)
        return 0.0 if oldest is None else max(0.0, self._wall_clock() - oldest)

    def clear_overflow(self) -> bool:
        """Return and reset :attr:`overflowed` (the caller rescans)."""
        with self._lock:
            overflowed, self.overflowed = self.overflowed, False
            return overflowed
