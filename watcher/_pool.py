"""A bounded pool of worker threads fed by a bounded queue.

The dispatcher only submits while there is room (:meth:`WorkerPool.free_slots`),
so a backlog stays on disk in the incoming folder, not in this queue. Stopping
is explicit and bounded: queued jobs that no worker started are handed back
(their files are still in the incoming folder), one sentinel per worker wakes
each idle worker, and every join has a deadline.

A worker takes what is queued in one go, up to ``batch`` jobs (never waiting
for more: a lone job goes at once), so that a burst crosses to a worker
process in a few messages rather than one per file. A worker survives
whatever a batch raises (``failed(index, jobs, error)`` is told), and the
pool knows since when each worker holds its batch, so health can tell a busy
worker from a stuck one.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar, cast

__all__ = ["WorkerPool"]

Job = TypeVar("Job")
_SENTINEL = object()


class WorkerPool(Generic[Job]):
    """``workers`` threads calling ``handle(index, jobs)``; at most ``capacity`` queued.

    ``index`` tells a thread's jobs apart from the others' (each thread owns
    its own resources, such as a worker process); ``jobs`` is a batch of one
    to ``batch`` jobs; ``finish(index)`` runs as the thread ends;
    ``failed(index, jobs, error)`` when ``handle`` raised.
    """

    def __init__(
        self,
        handle: Callable[[int, list[Job]], None],
        *,
        workers: int,
        capacity: int,
        batch: int = 1,
        name: str = "repack-worker",
        finish: Callable[[int], None] | None = None,
        failed: Callable[[int, list[Job], Exception], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._handle = handle
        self._batch = max(1, batch)
        self._finish = finish
        self._failed = failed
        self._clock = clock
        self._queue: queue.Queue[object] = queue.Queue(maxsize=capacity)
        self._busy_lock = threading.Lock()
        #: Per worker: since when it holds its current job (None when idle).
        self._busy_since: list[float | None] = [None] * workers
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
            return sum(since is not None for since in self._busy_since)

    def stalled(self, after: float) -> list[int]:
        """The workers that have held their current job for more than ``after`` seconds."""
        now = self._clock()
        with self._busy_lock:
            return [
                index
                for index, since in enumerate(self._busy_since)
                if since is not None and now - since > after
            ]

    def running(self) -> bool:
        """Whether every worker thread is alive (before :meth:`stop`)."""
        return self._started and all(thread.is_alive() for thread in self._threads)

    def submit(self, job: Job) -> bool:
        """Queue ``job`` if there is room; never blocks."""
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            return False
        return True

    def _take(self) -> tuple[list[Job], bool]:
        """A batch: one job (waiting for it), then what is queued already; and whether to stop."""
        first = self._queue.get()
        if first is _SENTINEL:
            return [], True
        jobs = [cast(Job, first)]
        while len(jobs) < self._batch:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                break
            if more is _SENTINEL:
                return jobs, True
            jobs.append(cast(Job, more))
        return jobs, False

    def _work(self, index: int) -> None:
        try:
            stop = False
            while not stop:
                jobs, stop = self._take()
                if not jobs:
                    continue
                with self._busy_lock:
                    self._busy_since[index] = self._clock()
                try:
                    self._handle(index, jobs)
                except Exception as error:  # one batch never ends a worker
                    if self._failed is not None:
                        with contextlib.suppress(Exception):  # not even its report
                            self._failed(index, jobs, error)
                finally:
                    with self._busy_lock:
                        self._busy_since[index] = None
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
