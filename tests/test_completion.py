"""The completion rule, with a fake clock and a fake file system."""

from __future__ import annotations

import os

import pytest

from watcher._completion import Candidate, CompletionTracker


class FakeFiles:
    """Paths -> (inode, size, mtime) and a clock, standing in for the disk."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.files: dict[str, tuple[int, int, float]] = {}

    def write(self, path: str, size: int, inode: int = 1) -> None:
        self.files[path] = (inode, size, self.now)

    def stat(self, path: str) -> os.stat_result:
        if path not in self.files:
            raise FileNotFoundError(path)
        inode, size, mtime = self.files[path]
        return os.stat_result((0o100644, inode, 0, 1, 0, 0, size, mtime, mtime, mtime))

    def clock(self) -> float:
        return self.now


@pytest.fixture
def disk() -> FakeFiles:
    return FakeFiles()


@pytest.fixture
def tracker(disk: FakeFiles) -> CompletionTracker:
    return CompletionTracker(
        2.0, capacity=5, clock=disk.clock, wall_clock=disk.clock, stat=disk.stat
    )


def paths(candidates: list[Candidate]) -> list[str]:
    return [c.path for c in candidates]


def test_closed_file_is_ready_at_once(disk: FakeFiles, tracker: CompletionTracker) -> None:
    disk.write("/in/a", 100)
    tracker.changed("/in/a")
    tracker.closed("/in/a")
    assert paths(tracker.take_ready(10)) == ["/in/a"]


def test_created_file_waits_for_the_settle_period(
    disk: FakeFiles, tracker: CompletionTracker
) -> None:
    disk.write("/in/a", 100)
    tracker.changed("/in/a")
    assert tracker.take_ready(10) == []
    disk.now += 2.0
    assert tracker.take_ready(10) == []  # first look records the signature
    disk.now += 2.0
    assert paths(tracker.take_ready(10)) == ["/in/a"]


def test_a_growing_file_is_never_ready(disk: FakeFiles, tracker: CompletionTracker) -> None:
    disk.write("/in/a", 100)
    tracker.changed("/in/a")
    for size in range(200, 2000, 100):
        disk.now += 2.0
        disk.write("/in/a", size)  # no event: polling, or events lost
        assert tracker.take_ready(10) == []
    disk.now += 2.0
    assert paths(tracker.take_ready(10)) == ["/in/a"]


def test_scan_of_an_old_file_is_ready_at_once(disk: FakeFiles, tracker: CompletionTracker) -> None:
    disk.write("/in/old", 100)
    disk.now += 60
    disk.write("/in/new", 100)
    tracker.found("/in/old", disk.stat("/in/old"))
    tracker.found("/in/new", disk.stat("/in/new"))
    assert paths(tracker.take_ready(10)) == ["/in/old"]
    disk.now += 2.0
    assert paths(tracker.take_ready(10)) == ["/in/new"]


def test_each_version_once_and_a_new_version_again(
    disk: FakeFiles, tracker: CompletionTracker
) -> None:
    disk.write("/in/a", 100)
    tracker.closed("/in/a")
    (candidate,) = tracker.take_ready(10)
    tracker.finished(candidate, remember=True)  # copy mode: the file stays
    tracker.found("/in/a", disk.stat("/in/a"))
    tracker.closed("/in/a")
    assert tracker.take_ready(10) == []
    disk.now += 1
    disk.write("/in/a", 120)  # re-sent: rewritten in place
    tracker.closed("/in/a")
    assert paths(tracker.take_ready(10)) == ["/in/a"]


def test_in_flight_files_are_not_offered_twice(disk: FakeFiles, tracker: CompletionTracker) -> None:
    disk.write("/in/a", 100)
    tracker.closed("/in/a")
    assert len(tracker.take_ready(10)) == 1
    tracker.closed("/in/a")
    tracker.changed("/in/a")
    disk.now += 10
    assert tracker.take_ready(10) == []


def test_deleted_and_vanished_files_are_forgotten(
    disk: FakeFiles, tracker: CompletionTracker
) -> None:
    disk.write("/in/a", 100)
    disk.write("/in/b", 100)
    tracker.changed("/in/a")
    tracker.closed("/in/b")
    tracker.deleted("/in/a")
    del disk.files["/in/b"]
    disk.now += 10
    assert tracker.take_ready(10) == []
    assert tracker.pending_count() == 0


def test_retry_counts_attempts_and_waits(disk: FakeFiles, tracker: CompletionTracker) -> None:
    disk.write("/in/a", 100)
    tracker.closed("/in/a")
    (candidate,) = tracker.take_ready(10)
    assert tracker.retry(candidate, 5.0, "disk full") == 1
    disk.now += 4
    assert tracker.take_ready(10) == []
    disk.now += 1
    (again,) = tracker.take_ready(10)
    assert again.attempt == 1


def test_limit_is_respected_and_capacity_overflows(
    disk: FakeFiles, tracker: CompletionTracker
) -> None:
    for index in range(7):
        disk.write(f"/in/{index}", 10)
        tracker.closed(f"/in/{index}")
    assert tracker.pending_count() == 5
    assert tracker.clear_overflow() is True
    assert tracker.clear_overflow() is False
    assert len(tracker.take_ready(3)) == 3
    assert len(tracker.take_ready(10)) == 2
