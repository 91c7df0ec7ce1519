"""A bounded pool of worker threads fed by a bounded queue.

The dispatcher only submits while there is room (:meth:`WorkerPool.free_slots`),
so a backlog stays on disk in the incoming folder, not in this queue. Stopping
is explicit and bounded: queued jobs that no worker started are handed back
(their files are still in the incoming folder), one sentinel per worker wakes
each idle worker, and every join has a deadline.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["WorkerPool"]

Job = TypeVar("Job")
_SENTINEL = object()


class WorkerPool(Generic[Job]):
    """``workers`` threads calling ``handle(index, job)``; at most ``capacity`` queued.

    ``index`` tells a thread's jobs apart from the others' (each thread owns
    its own resources, such as a worker process); ``finish(index)`` runs as
    the thread ends.
    """

    def __init__(
        self,
        handle: Callable[[int, Job], None],
        *,
        workers: int,
        capacity: int,
        name: str = "repack-worker",
        finish: Callable[[int], None] | None = None,
    ) -> None:
        self._handle = handle
        self._finish = finish
        self._queue: queue.Queue[object] = queue.Queue(maxsize=capacity)
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work, args=(index,), name=f"{name}-{index}", daemon=True)
            for index in range(workers)
        ]
        self._started = False

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        self._started = True

    def free_slots(self) -> int:
        """How many more jobs fit in the queue right now."""
        return max(0, self._queue.maxsize - self._queue.qsize())

    def depth(self) -> int:
        """Jobs waiting in the queue (not counting those being handled)."""
        return self._queue.qsize()

    def busy(self) -> int:
        """Jobs being handled right now."""
        with self._busy_lock:
            return self._busy

    def submit(self, job: Job) -> bool:
        """Queue ``job`` if there is room; never blocks."""
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            return False
        return True

    def _work(self, index: int) -> None:
        try:
            while True:
                job = self._queue.get()
                if job is _SENTINEL:
                    return
                with self._busy_lock:
                    self._busy += 1
                try:
                    self._handle(index, job)  # type: ignore[arg-type]
                finally:
                    with self._busy_lock:
                        self._busy -= 1
        finally:
            if self._finish is not None:
                self._finish(index)

    def stop(self, timeout: float) -> tuple[int, bool]:
        """Stop within ``timeout`` seconds.

        Returns how many queued jobs were handed back unstarted, and whether
        every worker finished its current job in time.
        """
        handed_back = 0
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not _SENTINEL:
                handed_back += 1
        if not self._started:
            return handed_back, True
        deadline = time.monotonic() + timeout
        for _ in self._threads:
            try:
                self._queue.put(_SENTINEL, timeout=max(0.01, deadline - time.monotonic()))
            except queue.Full:
                break  # every worker is stuck on a job; the joins below time out
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return handed_back, not any(t.is_alive() for t in self._threads)
