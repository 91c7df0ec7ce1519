"""What the service does with each worker's result (:data:`~watcher._workers.Result`).

=========  ==============================================================
outcome    action
=========  ==============================================================
repacked   the series is told; copy mode remembers the version (the service
           has written ``repack.done``, the batch's events first)
unclaimed  looked at again after the settle period (another process holds its
           lock; while it does, the file is still counted as waiting)
changed    forgotten (it changed since it was seen: its change brings an event)
busy       looked at again after the settle period (a writer still has it open)
unproven   looked at again once unchanged for ``unleased_settle`` seconds (no
           lease could tell whether a writer holds it, and no close was seen)
vanished   forgotten
invalid    quarantined, once it has not changed for ``quarantine_after``
           seconds, counted from when the service first saw that version
           (a slow or paused sender is never cut off; a future mtime does not
           delay it for ever; a name that is not a regular file cannot be
           "still written" and goes at once). Files waiting so hold at most
           half of ``--pending-limit``; more are left for a later scan.
storage    retried with exponential back-off, the file staying where it is
crashed    retried; after :data:`CRASHES_BEFORE_QUARANTINE` crashes on the same
           file (a file that kills or stalls its worker), quarantined
=========  ==============================================================

A retry that failed the same way :data:`REPEATS_BEFORE_ERROR` times in a
row says so once at error level (``repack.stuck``) and is counted in the
``files_failing`` gauge until it succeeds or goes away. What became of the
files since the start is counted in :class:`~watcher._metrics.Metrics` (``/metrics``, and
``watcher.stopped``).
"""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import Callable
from pathlib import Path
from typing import Any

from repack import Event, NotRegularFileError, Repacked, StorageError
from repack.plumbing import SourceVanishedError

from ._backoff import FILE_RETRY
from ._claim import Outcome, Result
from ._completion import Candidate, CompletionTracker
from ._folders import IncomingRoot
from ._metrics import Metrics
from ._quarantine import Quarantine
from ._series import SeriesTracker
from ._settings import Settings

#: Same failure this many times in a row: an error event and the failing gauge.
REPEATS_BEFORE_ERROR = FILE_RETRY.stuck_after
#: A file on which the worker crashed (or stalled) this often is quarantined.
CRASHES_BEFORE_QUARANTINE = 3


@dataclasses.dataclass(eq=False)
class ResultRouter:
    """Routes each result to its action; called on the pool threads.

    ``on_instance(repacked, count)``: a series has a new instance, its ``count``-th.
    ``on_refused(series_uid, message, sender)``: an instance of that series (from that
    sender's folder, with ``--pacs-name-from caller``) was refused for CUBE.
    """

    settings: Settings
    _: dataclasses.KW_ONLY
    tracker: CompletionTracker
    quarantine: Quarantine
    root: IncomingRoot
    series: SeriesTracker
    metrics: Metrics
    log: Any
    on_instance: Callable[[Repacked, int], None] | None = None
    on_refused: Callable[[str, str, str | None], None] | None = None

    def __post_init__(self) -> None:
        self.backoff = dataclasses.replace(FILE_RETRY, cap=self.settings.retry_max_delay)

    def route(self, candidate: Candidate, result: Result) -> None:
        self.metrics.warned.inc(len(result.warnings))
        for warning in result.warnings:
            self.log.warning(Event.REPACK_WARNING, src=candidate.shown, warning=warning)
        if isinstance(result, Repacked):
            self._done(candidate, result)
        elif result.outcome in (Outcome.BUSY, Outcome.UNCLAIMED, Outcome.UNPROVEN):
            self._later(candidate, result.outcome)
        elif result.outcome in (Outcome.CHANGED, Outcome.VANISHED):
            if result.outcome is Outcome.VANISHED:
                self.metrics.vanished.inc()
            self.tracker.finished(candidate, remember=False)
        elif result.outcome is Outcome.INVALID:
            self._invalid(candidate, result.reason, result.message)
            if result.series_uid is not None and self.on_refused is not None:
                self.on_refused(result.series_uid, result.message, result.sender)
        elif result.outcome is Outcome.STORAGE:
            self._retry(candidate, result.message, result.errno, key=f"storage:{result.errno}")
        else:
            self._crashed(candidate, result.message)

    def _later(self, candidate: Candidate, outcome: Outcome) -> None:
        """Not now: held by a writer or another service (again after the settle time), or
        unproven without a lease (once it has been quiet for the unleased settle)."""
        if outcome is Outcome.UNPROVEN:
            self.log.debug(Event.REPACK_UNPROVEN, src=candidate.shown)
            self.tracker.until_quiet(candidate)
            return
        busy = outcome is Outcome.BUSY
        self.log.debug(Event.REPACK_BUSY if busy else Event.REPACK_UNCLAIMED, src=candidate.shown)
        self.tracker.recheck(candidate, self.settings.settle)

    def _crashed(self, candidate: Candidate, message: str) -> None:
        self.log.error(Event.REPACK_CRASHED, src=candidate.shown, error=message)
        repeats = self._retry(candidate, message, None, key="crashed")
        if repeats >= CRASHES_BEFORE_QUARANTINE:
            self._quarantine(candidate, "repack-crashed", f"crashed {repeats} times: {message}")

    def _done(self, candidate: Candidate, repacked: Repacked) -> None:
        self.tracker.finished(candidate, remember=not self.settings.move)
        self.metrics.repacked(repacked.duration_ms / 1000, repacked.size)
        count = self.series.add(repacked)
        if count and self.on_instance is not None:
            self.on_instance(repacked, count)

    def _invalid(self, candidate: Candidate, reason: str, message: str) -> None:
        if reason != NotRegularFileError.reason:
            wait = self.settings.quarantine_after - self.tracker.quiet_for(candidate)
            if wait > 0:
                # Maybe still being written (a slow or paused sender): look again.
                self.log.debug(
                    Event.REPACK_INCOMPLETE, src=candidate.shown, error=message, recheck_s=wait
                )
                if not self.tracker.hold(candidate, wait + 0.05):
                    self.log.debug(Event.REPACK_LEFT_FOR_LATER, src=candidate.shown)
                return
        self._quarantine(candidate, reason, message)

    def _quarantine(self, candidate: Candidate, reason: str, message: str) -> None:
        relative = self.root.relative(candidate.path)
        try:
            target = self.quarantine.put(
                self.root.descriptor,
                relative,
                shown_as=Path(candidate.path),
                reason=reason,
                error=message,
                keep_source=not self.settings.move,
            )
        except SourceVanishedError:
            self.metrics.vanished.inc()
            self.tracker.finished(candidate, remember=False)
            return
        except StorageError as failure:
            self._retry(
                candidate,
                f"cannot quarantine: {failure}",
                failure.errno,
                key=f"quarantine:{failure.errno}",
            )
            return
        self.tracker.finished(candidate, remember=not self.settings.move)
        self.metrics.quarantined.labels(reason=reason).inc()
        self.log.error(
            Event.REPACK_FAILED,
            src=candidate.shown,
            dst=None,
            error=message,
            reason=reason,
            quarantined=str(target),
        )

    def _retry(
        self, candidate: Candidate, message: str, errno_code: int | None, *, key: str
    ) -> int:
        """Schedule another attempt; return how often it failed this way in a row.

        ``key`` names the way it failed (what was attempted and the errno; not
        the message, which names temporary files).
        """
        delay = self.backoff.delay(candidate.attempt + 1)
        repeats = self.tracker.retry(candidate, delay, key)
        self.metrics.retried.inc()
        fields: dict[str, Any] = {
            "src": candidate.shown,
            "error": message,
            "errno": errno.errorcode.get(errno_code or 0),
            "attempt": candidate.attempt + 1,
            "retry_in_s": delay,
        }
        if self.backoff.stuck(repeats):
            self.log.error(Event.REPACK_STUCK, repeated=repeats, **fields)
        else:
            self.log.warning(Event.REPACK_RETRY, repeated=repeats, **fields)
        return repeats
