"""More files than the inotify queue holds, and a watcher restarted mid-stream."""

from __future__ import annotations

import collections
import contextlib
import os
import threading
import time
from pathlib import Path

import pytest

from .helpers import kernel_setting
from .listener import Listener, listener
from .workload import plan, write_workload

pytestmark = pytest.mark.slow
QUEUE_LIMIT = Path("/proc/sys/fs/inotify/max_queued_events")


def small_inotify_queue(events: int) -> contextlib.AbstractContextManager[None]:
    """Make inotify instances created meanwhile hold only ``events`` events."""
    return kernel_setting(QUEUE_LIMIT, events)


def arrive(staging: list[Path], incoming: Path) -> None:
    for path in staging:
        os.rename(path, incoming / path.name)


def exactly_once(events: list[dict[str, object]], count: int) -> None:
    per_instance = collections.Counter(str(e["dst"]) for e in events)
    assert len(per_instance) == count
    assert max(per_instance.values()) == 1


def test_more_files_than_the_event_queue_holds(tmp_path: Path) -> None:
    files = write_workload(tmp_path / "staging", plan(2, 2, 3, 250))  # 3,000 instances
    with small_inotify_queue(64):
        running = Listener(tmp_path, "--settle", "0.3", "--scan-interval", "2").start()
    try:
        arrive(files, running.incoming)  # all at once: the queue overflows
        running.wait_for(lambda: running.count("repack.done") == len(files), 120, "every file")
        assert running.stop() == 0
    finally:
        running.kill()
    exactly_once(running.of("repack.done"), len(files))
    assert running.incoming_files() == []


def test_watcher_restarted_mid_stream(tmp_path: Path) -> None:
    files = write_workload(tmp_path / "staging", plan(2, 2, 2, 300))  # 2,400 instances
    (tmp_path / "incoming").mkdir()
    done = threading.Event()

    def steady_sender() -> None:
        for start in range(0, len(files), 20):
            arrive(files[start : start + 20], tmp_path / "incoming")
            time.sleep(0.02)
        done.set()

    sender = threading.Thread(target=steady_sender, daemon=True)
    with listener(tmp_path, "--settle", "0.3", "--scan-interval", "2") as first:
        sender.start()
        first.wait_for(lambda: first.count("repack.done") >= 500, 60, "the first 500")
        assert first.stop() == 0  # files keep arriving while nobody watches
    with listener(tmp_path, "--settle", "0.3", "--scan-interval", "2") as second:
        sender.join(60)
        assert done.is_set()
        second.wait_for(
            lambda: first.count("repack.done") + second.count("repack.done") == len(files),
            120,
            "every file across both runs",
        )
        assert second.stop() == 0
    exactly_once(first.of("repack.done") + second.of("repack.done"), len(files))
    assert second.incoming_files() == []
