"""The routing table of watcher._outcomes: each outcome's action, without a running service.

A real tracker (on a clock the test moves), a real quarantine and incoming
folder on disk, real counters and metrics; the log is a recorder.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import LogCapture

from repack import Event, Repacked
from repack.plumbing import Store
from watcher import parse_settings
from watcher._claim import NotRepacked, Outcome
from watcher._completion import Candidate, CompletionTracker, signature_of
from watcher._folders import IncomingRoot
from watcher._metrics import Metrics
from watcher._outcomes import CRASHES_BEFORE_QUARANTINE, REPEATS_BEFORE_ERROR, ResultRouter
from watcher._quarantine import Quarantine
from watcher._series import SeriesTracker

from .helpers import Clock, metric


class Log:
    """The logger a part of the service is given, its events kept by structlog's own
    capture (:class:`structlog.testing.LogCapture`, what ``capture_logs`` installs):
    a real bound logger, per instance, no global configuration touched.
    ``lines``: (level, event, fields) in order."""

    def __init__(self) -> None:
        self.capture = LogCapture()
        self.logger = structlog.wrap_logger(
            structlog.ReturnLogger(), processors=[self.capture], wrapper_class=structlog.BoundLogger
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self.logger, name)

    @property
    def lines(self) -> list[tuple[str, str, dict[str, Any]]]:
        return [
            (entry["log_level"], str(entry["event"]),
             {k: v for k, v in entry.items() if k not in ("log_level", "event")})
            for entry in self.capture.entries
        ]  # fmt: skip

    def events(self) -> list[str]:
        return [event for _, event, _ in self.lines]


class Routed:
    """A router and everything it acts on, for one file ``MR.1`` in a real incoming folder."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        self.incoming = tmp_path / "incoming"
        self.incoming.mkdir()
        self.file = self.incoming / "MR.1"
        self.file.write_bytes(b"not yet DICOM")
        self.settings = parse_settings(
            ["--incoming", str(self.incoming), "--datadir", str(tmp_path / "data"),
             "--logdir", str(tmp_path / "log"), "--quarantine", str(tmp_path / "quarantine"),
             "--settle", "1", "--quarantine-after", "10", *args],
            environ={},
        )  # fmt: skip
        self.clock = Clock()
        self.tracker = CompletionTracker(1.0, capacity=8, clock=self.clock)
        self.root = IncomingRoot(self.incoming)
        self.root.open()
        self.series = SeriesTracker(30, clock=self.clock)
        self.metrics = Metrics()
        self.log = Log()
        self.router = ResultRouter(
            self.settings,
            tracker=self.tracker,
            quarantine=Quarantine(self.settings.quarantine, Store(None, fsync=False)),
            root=self.root,
            series=self.series,
            metrics=self.metrics,
            log=self.log,
        )

    def candidate(self) -> Candidate:
        """The file, taken from the tracker as the dispatcher takes it (in flight)."""
        self.tracker.closed(str(self.file))
        (taken,) = self.tracker.take_ready(1)
        return taken

    def again(self) -> list[Candidate]:
        """What the tracker hands out now."""
        return self.tracker.take_ready(8)

    def metric(self, name: str, labels: str = "") -> float:
        from prometheus_client import generate_latest  # noqa: PLC0415

        return metric(generate_latest(self.metrics.registry).decode(), name, labels)


@pytest.fixture
def routed(tmp_path: Path) -> Iterator[Routed]:
    made = Routed(tmp_path)
    yield made
    made.root.close()


def _repacked(tmp_path: Path) -> Repacked:
    return Repacked(
        src=tmp_path / "incoming" / "MR.1", dst=tmp_path / "data" / "x.dcm", size=10,
        patient_id="P", study_instance_uid="1.2", series_instance_uid="1.2.3",
        sop_instance_uid="1.2.3.4", series_dir=tmp_path / "data", duration_ms=2.0,
    )  # fmt: skip


def test_done_tells_the_series_counts_and_forgets_the_file_in_move_mode(
    routed: Routed, tmp_path: Path
) -> None:
    routed.router.route(routed.candidate(), _repacked(tmp_path))
    assert routed.metrics.totals()["repacked"] == 1
    routed.clock.now += 30
    assert len(routed.series.take_quiet()) == 1
    assert routed.tracker.pending_count() == 0
    routed.tracker.found(str(routed.file), os.lstat(routed.file))  # move mode remembers nothing
    assert routed.tracker.pending_count() == 1
    assert routed.metric("pypx_listener_instances_repacked_total") == 1
    assert routed.log.lines == []  # the service writes repack.done, not the router


def test_done_in_copy_mode_remembers_the_version(tmp_path: Path) -> None:
    routed = Routed(tmp_path, "--mode", "copy")
    candidate = routed.candidate()
    routed.router.route(candidate, _repacked(tmp_path))
    routed.tracker.found(str(routed.file), os.lstat(routed.file))
    assert routed.tracker.pending_count() == 0  # the same version is not taken again


@pytest.mark.parametrize(
    ("outcome", "event"),
    [(Outcome.BUSY, Event.REPACK_BUSY), (Outcome.UNCLAIMED, Event.REPACK_UNCLAIMED)],
)
def test_busy_and_unclaimed_are_looked_at_again_after_the_settle_period(
    routed: Routed, outcome: Outcome, event: Event
) -> None:
    routed.router.route(routed.candidate(), NotRepacked(outcome))
    assert routed.log.lines == [("debug", str(event), {"src": str(routed.file)})]
    assert routed.again() == []
    routed.clock.now += 1.0
    (again,) = routed.again()
    assert again.attempt == 0  # no attempt counted
    assert routed.metrics.totals()["retried"] == 0


def test_unproven_waits_for_the_unleased_settle_period_since_first_seen(routed: Routed) -> None:
    candidate = routed.candidate()
    routed.router.route(candidate, NotRepacked(Outcome.UNPROVEN))
    routed.clock.now += 29.0
    assert routed.again() == []
    routed.clock.now += 1.0
    (again,) = routed.again()
    assert again.closed  # quiet long enough: no lease needed now


@pytest.mark.parametrize("outcome", [Outcome.CHANGED, Outcome.VANISHED])
def test_changed_and_vanished_are_forgotten(routed: Routed, outcome: Outcome) -> None:
    routed.router.route(routed.candidate(), NotRepacked(outcome))
    assert routed.tracker.pending_count() == 0
    assert routed.metrics.totals()["vanished"] == (outcome is Outcome.VANISHED)


def test_invalid_and_long_unchanged_is_quarantined_at_once(routed: Routed) -> None:
    os.utime(routed.file, (0, 0))  # unchanged since 1970
    candidate = routed.candidate()
    routed.router.route(candidate, NotRepacked(Outcome.INVALID, reason="not-dicom", message="no"))
    assert routed.log.events() == [Event.REPACK_FAILED]
    assert not routed.file.exists()
    assert routed.metrics.totals()["quarantined"] == 1
    assert routed.metric("pypx_listener_instances_quarantined_total", 'reason="not-dicom"') == 1


def test_invalid_and_still_changing_is_held_then_quarantined(routed: Routed) -> None:
    candidate = routed.candidate()
    routed.clock.now += 2.0  # the tracker saw it 2 s ago; its mtime is now
    routed.router.route(candidate, NotRepacked(Outcome.INVALID, reason="truncated", message="cut"))
    assert routed.log.events() == [Event.REPACK_INCOMPLETE]
    assert routed.file.exists()
    routed.clock.now += 7.9
    assert routed.again() == []
    routed.clock.now += 0.2  # ten seconds since first seen (and since its mtime, or not)
    (again,) = routed.again()
    os.utime(routed.file, (0, 0))
    routed.router.route(again, NotRepacked(Outcome.INVALID, reason="truncated", message="cut"))
    assert routed.log.events()[-1] == Event.REPACK_FAILED
    assert not routed.file.exists()


def test_storage_failures_back_off_and_say_stuck_once(routed: Routed) -> None:
    candidate = routed.candidate()
    delays = []
    for attempt in range(REPEATS_BEFORE_ERROR + 1):
        failed = NotRepacked(Outcome.STORAGE, message="disk full", errno=errno.ENOSPC)
        routed.router.route(candidate, failed)
        _, event, fields = routed.log.lines[-1]
        delays.append(fields["retry_in_s"])
        assert fields["attempt"] == attempt + 1
        assert fields["errno"] == "ENOSPC"
        expected = Event.REPACK_STUCK if attempt + 1 == REPEATS_BEFORE_ERROR else Event.REPACK_RETRY
        assert event == expected
        routed.clock.now += fields["retry_in_s"]
        (candidate,) = routed.again()
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]
    assert routed.tracker.failing(REPEATS_BEFORE_ERROR) == 1
    assert routed.file.exists()  # a storage failure never quarantines


def test_a_file_that_crashes_its_worker_is_quarantined_after_three_crashes(
    routed: Routed,
) -> None:
    candidate = routed.candidate()
    for crash in range(CRASHES_BEFORE_QUARANTINE):
        routed.router.route(candidate, NotRepacked(Outcome.CRASHED, message="worker process died"))
        if crash + 1 < CRASHES_BEFORE_QUARANTINE:
            routed.clock.now += 60
            (candidate,) = routed.again()
    assert routed.log.events().count(Event.REPACK_CRASHED) == CRASHES_BEFORE_QUARANTINE
    assert routed.log.events()[-1] == Event.REPACK_FAILED
    assert routed.log.lines[-1][2]["reason"] == "repack-crashed"
    assert not routed.file.exists()


def test_warnings_become_one_event_each_and_a_metric(routed: Routed, tmp_path: Path) -> None:
    result = replace(_repacked(tmp_path), warnings=("odd charset", "bad date"))
    routed.router.route(routed.candidate(), result)
    assert routed.log.events() == [Event.REPACK_WARNING, Event.REPACK_WARNING]
    assert routed.metric("pypx_listener_dicom_warnings_total") == 2


def test_a_file_gone_before_its_quarantine_counts_as_vanished(routed: Routed) -> None:
    os.utime(routed.file, (0, 0))
    candidate = routed.candidate()
    routed.file.unlink()
    routed.router.route(candidate, NotRepacked(Outcome.INVALID, reason="not-dicom", message="no"))
    assert routed.metrics.totals()["vanished"] == 1
    assert routed.metrics.totals()["quarantined"] == 0
    assert signature_of(os.stat(routed.incoming)) is not None


def test_one_backoff_policy_for_files_and_for_the_outbox() -> None:
    from watcher._backoff import FILE_RETRY, HANDOFF_RETRY, Backoff  # noqa: PLC0415

    assert [FILE_RETRY.delay(n) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert [HANDOFF_RETRY.delay(n) for n in (1, 2, 3, 20)] == [1.0, 2.0, 4.0, 300.0]
    assert Backoff(start=1.0, cap=10.0).delay(10_000) == 10.0  # no overflow, the cap
    assert [n for n in range(1, 10) if HANDOFF_RETRY.stuck(n)] == [5]
