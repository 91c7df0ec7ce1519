"""Series bookkeeping: which series are being received, and which went quiet.

A PACS pushes a series as a burst of instances; nothing in DICOM says "the
series is complete". A series is announced as complete (``series.complete``)
once no new instance of it arrived for ``quiet`` seconds. Instances are
counted by SOPInstanceUID, so an instance sent twice counts once, and the
resends are reported apart.

The clock is injected, so the rule is tested without sleeping.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field

from repack import Repacked


@dataclass(slots=True)
class _Series:
    folder: str
    log_path: str
    patient_id: str
    study_uid: str
    first: float
    last: float
    #: Hashes of the SOPInstanceUIDs seen, sorted (64-bit: distinct enough), 8 bytes
    #: each: a set of Python ints costs eight times as much per instance.
    instances: array[int] = field(default_factory=lambda: array("q"))
    resends: int = 0

    def add(self, key: int) -> bool:
        """Count the instance ``key``; a key seen before is a resend (False)."""
        at = bisect.bisect_left(self.instances, key)
        if at < len(self.instances) and self.instances[at] == key:
            self.resends += 1
            return False
        self.instances.insert(at, key)
        return True


@dataclass(frozen=True)
class QuietSeries:
    """A series that received no new instance for the quiet period."""

    series_uid: str
    study_uid: str
    patient_id: str
    folder: str
    instances: int
    resends: int
    receive_s: float
    #: Its tag table in the log tree (``studyData/<Study>-series/<Series>-meta.json``).
    log_path: str = ""


def as_on_disk(series: QuietSeries, ignored: Callable[[str], bool]) -> QuietSeries:
    """The series as its folder has it: what a service that restarted mid-series knows.

    A service killed while a series arrived is followed by one that saw only the
    rest of it; the folder holds every instance (one file each) and their
    modification times (kept by a move: when storescp wrote them). The counts
    are the larger of what this process saw and what the folder says; a folder
    that cannot be read changes nothing. ``ignored``: names that are not
    instances (dot-files, temporary files).
    """
    files, first, last = 0, float("inf"), float("-inf")
    try:
        with os.scandir(series.folder) as entries:
            for entry in entries:
                if ignored(entry.name) or not entry.is_file(follow_symlinks=False):
                    continue
                modified = entry.stat(follow_symlinks=False).st_mtime
                files, first, last = files + 1, min(first, modified), max(last, modified)
    except OSError:
        return series
    if not files:
        return series
    return dataclasses.replace(
        series,
        instances=max(series.instances, files),
        receive_s=max(series.receive_s, round(last - first, 3)),
    )


class SeriesTracker:
    """Series seen since they last went quiet; thread-safe."""

    def __init__(self, quiet: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.quiet = quiet
        self._clock = clock
        self._lock = threading.Lock()
        self._series: dict[str, _Series] = {}

    def add(self, repacked: Repacked) -> int:
        """An instance was repacked; return how many new instances its series has now, or 0
        when this one was a resend."""
        now = self._clock()
        with self._lock:
            series = self._series.get(repacked.series_instance_uid)
            if series is None:
                series = self._series[repacked.series_instance_uid] = _Series(
                    str(repacked.series_dir), repacked.series_log, repacked.patient_id,
                    repacked.study_instance_uid, now, now,
                )  # fmt: skip
            series.last = now
            return len(series.instances) if series.add(hash(repacked.sop_instance_uid)) else 0

    def adopt(
        self, series_uid: str, *, folder: str, patient_id: str, study_uid: str, log_path: str
    ) -> None:
        """Track a series another service started to receive and never announced."""
        now = self._clock()
        with self._lock:
            if series_uid not in self._series:
                self._series[series_uid] = _Series(
                    folder, log_path, patient_id, study_uid, now, now
                )

    def take_quiet(self) -> list[QuietSeries]:
        """The series that went quiet (each returned once, then forgotten)."""
        now = self._clock()
        with self._lock:
            quiet = [uid for uid, s in self._series.items() if now - s.last >= self.quiet]
            taken = [(uid, self._series.pop(uid)) for uid in quiet]
        return [
            QuietSeries(
                series_uid=uid,
                study_uid=s.study_uid,
                patient_id=s.patient_id,
                folder=s.folder,
                instances=len(s.instances),
                resends=s.resends,
                receive_s=round(s.last - s.first, 3),
                log_path=s.log_path,
            )
            for uid, s in taken
        ]
