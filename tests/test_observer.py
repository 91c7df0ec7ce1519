"""watcher._observer: the watchdog side."""

from __future__ import annotations

import time
from pathlib import Path

from watcher._completion import CompletionTracker
from watcher._observer import observer_threads, start_observer

from .helpers import wait_for


def test_a_burst_of_closes_is_recorded_at_once_by_watchdogs_own_reader(tmp_path: Path) -> None:
    """Files closed one a millisecond reach the tracker through inotify, none lost, no scan.

    This is what a patch release of watchdog broke when the service overrode its
    reader: the reader thread died and files waited for the periodic scan. The
    observer is watchdog's own (public API only), so this holds on whatever
    release is installed.
    """
    tracker = CompletionTracker(settle=60)
    observer = start_observer(tmp_path, tracker, polling=False, poll_interval=1.0)
    try:
        for index in range(60):
            (tmp_path / f"MR.{index}").write_bytes(b"x")
            time.sleep(0.001)
        taken: list[object] = []
        wait_for(
            lambda: taken.extend(tracker.take_ready(100)) or len(taken) == 60,
            10,
            "every close to be recorded",
        )
        assert all(thread.is_alive() for thread in observer_threads(observer))
    finally:
        observer.stop()
        observer.join(5)
