"""A bounded pool of worker threads fed by a bounded queue.

The dispatcher submits only while there is room (:meth:`WorkerPool.free_slots`),
so a backlog stays on disk. A worker takes what is queued in one go, up to
``batch`` items (never waiting for more), so a burst crosses to a worker
process in a few messages; it survives whatever a batch raises (``failed`` is
told), and the pool knows since when each holds its batch (a busy worker or a
stuck one). The first worker leads: the others help only when a full batch
waits or an item has waited ``help_after`` seconds, so a trickle keeps one
process warm and a backlog has every worker on it. Stopping is bounded:
queued items are handed back (their files are still in the folder), idle
workers are woken, every join has a deadline.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")


class WorkerPool(Generic[Item]):
    """``workers`` threads calling ``handle(index, items)``; at most ``capacity`` queued.

    ``index`` tells a thread's items apart from the others' (each thread owns
    its own resources, such as a worker process); ``items`` is a batch of one
    to ``batch`` items; ``finish(index)`` runs as the thread ends;
    ``failed(index, items, error)`` when ``handle`` raised.
    """

    def __init__(
        self,
        handle: Callable[[int, list[Item]], None],
        *,
        workers: int,
        capacity: int,
        batch: int = 1,
        help_after: float = 0.1,
        name: str = "repack-worker",
        finish: Callable[[int], None] | None = None,
        failed: Callable[[int, list[Item], Exception], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._handle = handle
        self._batch = max(1, batch)
        self._help_after = help_after
        #: Queued items at which the helpers join in: more than the leader's next batch.
        self._help_depth = 2 * self._batch
        self._finish = finish
        self._failed = failed
        self._clock = clock
        self._capacity = capacity
        #: Queued items, each with the time it was queued.
        self._items: collections.deque[tuple[float, Item]] = collections.deque()
        self._lock = threading.Lock()
        self._lead_wakeup = threading.Condition(self._lock)
        self._helper_wakeup = threading.Condition(self._lock)
        self._stopping = False
        #: Per worker: since when it holds its current item (None when idle).
        self._busy_since: list[float | None] = [None] * workers
        self.threads = [
            threading.Thread(target=self._work, args=(index,), name=f"{name}-{index}", daemon=True)
            for index in range(workers)
        ]
        self._started = False

    def start(self) -> None:
        for thread in self.threads:
            thread.start()
        self._started = True

    def free_slots(self) -> int:
        """How many more items fit in the queue right now."""
        return max(0, self._capacity - len(self._items))

    def busy(self) -> int:
        """Jobs being handled right now."""
        with self._lock:
            return sum(since is not None for since in self._busy_since)

    def stalled(self, after: float) -> list[int]:
        """The workers that have held their current item for more than ``after`` seconds."""
        now = self._clock()
        with self._lock:
            return [
                index
                for index, since in enumerate(self._busy_since)
                if since is not None and now - since > after
            ]

    def submit(self, item: Item) -> bool:
        """Queue ``item`` if there is room; never blocks."""
        with self._lock:
            if self._stopping or len(self._items) >= self._capacity:
                return False
            self._items.append((self._clock(), item))
            self._lead_wakeup.notify()
            if len(self._items) == 1 or len(self._items) >= self._help_depth:
                # A helper either starts to time the wait, or has a full batch.
                self._helper_wakeup.notify()
        return True

    def clock_moved(self) -> None:
        """Wake the waiting helpers to read the clock again (an injected clock moved)."""
        with self._lock:
            self._helper_wakeup.notify_all()

    def _take(self, index: int) -> list[Item] | None:
        """The next batch for worker ``index`` (waiting for it), or None to stop."""
        with self._lock:
            while not self._stopping:
                items = self._items
                if not items:
                    (self._helper_wakeup if index else self._lead_wakeup).wait()
                    continue
                waited = self._clock() - items[0][0]
                if index and len(items) < self._help_depth and waited < self._help_after:
                    self._helper_wakeup.wait(self._help_after - waited)
                    continue
                batch = [items.popleft()[1] for _ in range(min(self._batch, len(items)))]
                self._busy_since[index] = self._clock()
                return batch
            return None

    def _work(self, index: int) -> None:
        try:
            while (items := self._take(index)) is not None:
                try:
                    self._handle(index, items)
                except Exception as error:  # one batch never ends a worker
                    if self._failed is not None:
                        with contextlib.suppress(Exception):  # not even its report
                            self._failed(index, items, error)
                finally:
                    with self._lock:
                        self._busy_since[index] = None
        finally:
            if self._finish is not None:
                self._finish(index)

    def stop(self, timeout: float) -> tuple[int, bool]:
        """Stop within ``timeout`` seconds.

        Returns how many queued items were handed back unstarted, and whether
        every worker finished its current item in time.
        """
        with self._lock:
            handed_back = len(self._items)
            self._items.clear()
            self._stopping = True
            self._lead_wakeup.notify_all()
            self._helper_wakeup.notify_all()
        if not self._started:
            return handed_back, True
        deadline = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return handed_back, not any(t.is_alive() for t in self.threads)
