"""watcher._observer: the watchdog side."""

from __future__ import annotations

import time
from pathlib import Path

from watcher._completion import CompletionTracker
from watcher._observer import READ_BURST_S, reads_in_bursts, start_observer

from .helpers import wait_for


def test_the_inotify_reader_reads_a_burst_of_events_at_once(tmp_path: Path) -> None:
    """Files closed one a millisecond: read a few milliseconds' worth at a time, none lost.

    Reading at once would wake the reader (and watchdog's two threads after
    it) for nearly every file, about once a millisecond. The burst reader
    waits ``READ_BURST_S`` after the descriptor becomes readable, so it reads
    at most once per that period, however slowly the files come.
    """
    assert reads_in_bursts(), "this watchdog no longer has the wait the burst reader extends"
    tracker = CompletionTracker(settle=60)
    observer = start_observer(tmp_path, tracker, polling=False, poll_interval=1.0)
    reader = observer._inotify_fd
    reads = 0
    read_events = reader.read_events

    def counted(**kwargs: int) -> list[object]:
        nonlocal reads
        reads += 1
        return list(read_events(**kwargs))

    reader.read_events = counted
    try:
        started = time.monotonic()
        for index in range(60):
            (tmp_path / f"MR.{index}").write_bytes(b"x")
            time.sleep(0.001)
        elapsed = time.monotonic() - started
        taken: list[object] = []
        wait_for(
            lambda: taken.extend(tracker.take_ready(100)) or len(taken) == 60,
            10,
            "every close to be recorded",
        )
    finally:
        observer.stop()
        observer.join(5)
    assert reads <= elapsed / READ_BURST_S + 2, (reads, elapsed)
