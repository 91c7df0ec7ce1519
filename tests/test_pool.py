"""watcher._pool: the bounded pool of worker threads (on a clock the test moves)."""

from __future__ import annotations

import threading

from watcher._pool import WorkerPool

from .helpers import Clock, wait_for


def test_a_job_that_raises_never_ends_its_worker() -> None:
    done: list[int] = []
    failed: list[tuple[int, Exception]] = []
    finished = threading.Event()

    def handle(_index: int, jobs: list[int]) -> None:
        (job,) = jobs
        if job == 0:
            raise UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed")
        done.append(job)
        if len(done) == 3:
            finished.set()

    pool: WorkerPool[int] = WorkerPool(
        handle,
        workers=1,
        capacity=8,
        failed=lambda _i, jobs, error: failed.extend((job, error) for job in jobs),
    )
    pool.start()
    for job in range(4):
        assert pool.submit(job)
    assert finished.wait(10)
    assert all(thread.is_alive() for thread in pool.threads)
    handed_back, clean = pool.stop(5)
    assert (handed_back, clean) == (0, True)
    assert done == [1, 2, 3]
    assert [job for job, _ in failed] == [0]


def test_stop_hands_back_what_no_worker_started_and_knows_a_stuck_worker() -> None:
    release = threading.Event()
    started = threading.Event()
    clock = Clock()

    def handle(_index: int, _jobs: list[int]) -> None:
        started.set()
        release.wait(10)

    pool: WorkerPool[int] = WorkerPool(handle, workers=1, capacity=8, clock=clock)
    pool.start()
    for job in range(5):
        pool.submit(job)
    assert started.wait(10)
    clock.now += 61
    assert pool.stalled(60) == [0]
    assert pool.stalled(62) == []
    handed_back, clean = pool.stop(0.2)  # the worker holds its job past the deadline
    assert (handed_back, clean) == (4, False)
    release.set()


def test_a_worker_takes_what_is_queued_in_one_batch_and_never_waits_for_more() -> None:
    batches: list[list[int]] = []
    gate, finished = threading.Event(), threading.Event()

    def handle(_index: int, jobs: list[int]) -> None:
        batches.append(jobs)
        gate.wait(10)  # hold the first batch while more arrive
        if sum(len(b) for b in batches) == 21:
            finished.set()

    pool: WorkerPool[int] = WorkerPool(handle, workers=1, capacity=32, batch=16)
    pool.start()
    pool.submit(0)
    wait_for(lambda: bool(batches), 10, "the lone job, at once and alone")
    for job in range(1, 21):
        pool.submit(job)
    gate.set()
    assert finished.wait(10)
    assert pool.stop(5) == (0, True)
    assert [len(b) for b in batches] == [1, 16, 4]
    assert [job for b in batches for job in b] == list(range(21))


def test_the_first_worker_leads_and_the_others_help_with_a_backlog_or_a_wait() -> None:
    taken: list[tuple[int, list[int]]] = []
    lead_free = threading.Event()
    lead_free.set()

    def handle(index: int, jobs: list[int]) -> None:
        taken.append((index, jobs))
        if index == 0:
            lead_free.wait(10)

    clock = Clock()
    pool: WorkerPool[int] = WorkerPool(
        handle, workers=2, capacity=64, batch=4, help_after=1.0, clock=clock
    )
    pool.start()
    try:
        # A trickle: each job alone, the lead free: the lead does all of it.
        for job in range(5):
            pool.submit(job)
            wait_for(lambda: pool.free_slots() == 64 and pool.busy() == 0, 10, "the job to be done")
        assert [index for index, _ in taken] == [0] * 5
        # The lead is held: one job waits, and is helped with once it has waited.
        taken.clear()
        lead_free.clear()
        pool.submit(100)
        wait_for(lambda: pool.busy() == 1, 10, "the lead to take its job")
        pool.submit(101)
        assert len(taken) == 1  # it has not waited yet
        clock.now += 1.0
        pool.clock_moved()
        wait_for(lambda: len(taken) == 2, 10, "a helper to take the job that waited")
        assert taken[1] == (1, [101])
        # More than the lead's next batch waiting is helped with at once.
        pool.submit(102)
        wait_for(lambda: pool.free_slots() == 63, 10, "the job to be queued")
        assert len(taken) == 2, "a helper took a lone job before it had waited"
        for job in range(103, 110):  # two batches: the helpers' depth
            pool.submit(job)
        wait_for(lambda: len(taken) == 3, 10, "a helper to take a batch")
        assert taken[2] == (1, [102, 103, 104, 105])
        clock.now += 1.0
        pool.clock_moved()
        wait_for(lambda: len(taken) == 4, 10, "a helper to take the rest, once it waited")
        assert taken[3] == (1, [106, 107, 108, 109])
    finally:
        lead_free.set()
        assert pool.stop(5) == (0, True)
