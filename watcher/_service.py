"""The long-running service: observer -> tracker -> dispatcher -> worker processes.

Threads, each stoppable: the watchdog observer (its handler only tells the
:class:`~watcher._completion.CompletionTracker`); one **dispatcher**, which hands ready
files to the pool while it has room, scans the folder (at start, periodically, after
dropped events) and twice a second does the housekeeping (a replaced incoming folder, a
stuck worker, quiet series -> the hand-off, the gauges); ``workers`` **pool threads**
(:class:`~watcher._pool.WorkerPool`), each driving one
:class:`~watcher._workers.WorkerProcess`, whose results
:class:`~watcher._outcomes.ResultRouter` acts on; the hand-off's thread, if any
(:mod:`watcher._handoff`). Files are reached only beneath a descriptor of the incoming
folder (:class:`~watcher._folders.IncomingRoot`), never through a link.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from repack import Event, Repacked, get_logger
from repack.plumbing import Store, log_repacked, output_blocked_for, sweep_stale_temps

from ._claim import NotRepacked, Outcome
from ._completion import Candidate, CompletionTracker
from ._errors import EXIT_STARTUP, ConfigError
from ._folders import IncomingRoot, check_folders, identity_of, ignored
from ._handoff_setup import build_handoff
from ._metrics import Metrics
from ._observer import observer_threads, start_observer
from ._outcomes import REPEATS_BEFORE_ERROR, ResultRouter
from ._pool import WorkerPool
from ._quarantine import Quarantine
from ._scan import Scans
from ._series import SeriesTracker, as_on_disk
from ._settings import Settings
from ._threads import ThreadWatch
from ._workers import WorkerConfig, WorkerProcess

#: Seconds one event write may wait for its reader before ``/healthz`` fails.
OUTPUT_BLOCKED_S = 10.0
_HOUSEKEEPING_S = 0.5
#: Files a worker takes from the queue in one go (only what is already queued).
_BATCH = 16
#: Entries the scans hand over per dispatcher round (then events get their turn).
_SCAN_STEP = 2_000


_WORKER_HINTS = {
    False: "check that the package is installed completely (pip install .) and that the folders"
    " are readable",
    True: "workers run the service's own interpreter (sys.executable): make it executable for"
    " this user",
}


def _stop_observer(observer: Any, timeout: float) -> None:
    """Stop an observer, waiting at most ``timeout`` seconds.

    A broken observer (one of its threads died holding one of watchdog's locks)
    can block its own stop for ever: the stop runs in a thread of its own, so
    neither the dispatcher nor the service's stop waits on it unbounded.
    """
    stopper = threading.Thread(target=observer.stop, name="observer-stop", daemon=True)
    stopper.start()
    stopper.join(timeout)


class Service:
    """The pypx-listener service; :meth:`start`, then :meth:`stop`."""

    def __init__(
        self, settings: Settings, *, on_fatal: Callable[[str], None] | None = None
    ) -> None:
        """``on_fatal(reason)``: a thread the service needs died for good; stop it (the CLI
        does, and exits non-zero). Without it, :attr:`threads` only records the reason."""
        self.settings = settings
        self.log = get_logger()
        self.threads = ThreadWatch(self.log, on_fatal or (lambda _reason: None))
        self.metrics = Metrics()
        self.workers = [WorkerProcess(WorkerConfig.of(settings)) for _ in range(settings.workers)]
        self.root = IncomingRoot(settings.incoming)
        self.tracker = CompletionTracker(
            settings.settle,
            capacity=settings.pending_limit,
            unleased_settle=settings.unleased_settle,
        )
        self.series = SeriesTracker(settings.series_quiet)
        self.handoff = build_handoff(settings, self.metrics, self.log)
        self.router = ResultRouter(
            settings,
            tracker=self.tracker,
            quarantine=Quarantine(settings.quarantine, Store(None, fsync=settings.fsync)),
            root=self.root,
            series=self.series,
            metrics=self.metrics,
            log=self.log,
            on_instance=self.handoff.instance if self.handoff is not None else None,
            on_refused=self.handoff.refused_instance if self.handoff is not None else None,
        )
        self.pool: WorkerPool[Candidate] = WorkerPool(
            self._handle,
            workers=settings.workers,
            capacity=settings.queue_size,
            batch=_BATCH,
            finish=lambda index: self.workers[index].stop(settings.stop_timeout),
            failed=self._handler_failed,
        )
        self._stopping = threading.Event()
        self._dispatcher = threading.Thread(target=self._dispatch, name="dispatcher", daemon=True)
        self._observer: Any = None
        self._started = 0.0
        self._incoming_problem: str | None = None
        self._stall_reported: set[int] = set()
        self._scans = Scans(
            self.root,
            self.tracker,
            ignored=ignored,
            remove_empty_after=settings.empty_dir_age if settings.move else None,
            done=self.metrics.scanned,
        )
        self.watching = threading.Event()

    # -- lifecycle -----------------------------------------------------------

    def start(self, *, announce: bool = True) -> None:
        """Check the folders, start the workers, the observer and the dispatcher.

        Everything that can fail at start fails here, as a
        :class:`ConfigError`, before ``watcher.started`` is announced.
        """
        check_folders(self.settings, self.root)
        if self.handoff is not None:
            self.handoff.start(self.series)
            self.threads.essential(self.handoff.threads())
        self._started = time.monotonic()
        for worker in self.workers:  # spawn the worker processes before any thread
            worker.start()
        for worker in self.workers:
            problem = worker.wait_ready(60)
            if problem is not None:
                self.kill_workers()
                raise ConfigError(
                    f"a repack worker could not start: {problem}",
                    hint=_WORKER_HINTS[problem.startswith("cannot run the worker interpreter")],
                    exit_code=EXIT_STARTUP,
                )
        # From here on nothing fails before the observer: the hook is taken off again there.
        # (The hand-off's threads, started above, are watched by the main thread's check.)
        self.threads.install()
        self.pool.start()
        self.threads.essential(self.pool.threads)
        try:
            self._observer = self._start_observer()
        except ConfigError:
            self.pool.stop(1.0)
            self.kill_workers()
            self.threads.uninstall()
            raise
        self.threads.observer(observer_threads(self._observer))
        self.watching.set()
        self._dispatcher.start()
        self.threads.essential([self._dispatcher])
        threading.Thread(target=self._sweep, name="sweeper", daemon=True).start()
        if announce:
            self.announce()

    def announce(self) -> None:
        """Log ``watcher.started`` with the effective settings."""
        self.log.info(Event.WATCHER_STARTED, pid=os.getpid(), **self.settings.describe())

    def _start_observer(self) -> Any:
        try:
            return start_observer(
                self.settings.incoming,
                self.tracker,
                polling=self.settings.polling,
                poll_interval=self.settings.poll_interval,
                deletions=not self.settings.move,
            )
        except OSError as error:
            raise ConfigError(
                f"cannot watch {self.settings.incoming}: {error.strerror or error}",
                hint="raise the inotify limits (sysctl fs.inotify.max_user_watches and"
                " fs.inotify.max_user_instances), or use --polling",
                exit_code=EXIT_STARTUP,
            ) from error

    def alive_problems(self) -> list[str]:
        """Why the service is not alive (empty when it is): what ``/healthz`` reports."""
        self.threads.check()
        problems = self.threads.problems()
        for index in self.pool.stalled(self.settings.stall_timeout):
            problems.append(
                f"repack worker {index} has been on one file for more than"
                f" {self.settings.stall_timeout:g} s"
            )
        blocked = output_blocked_for()
        if blocked >= OUTPUT_BLOCKED_S:
            problems.append(
                f"the event stream (stdout) has taken no line for {blocked:.0f} s: nothing reads"
                " it, and repacking waits for it"
            )
        return problems

    def ready_problems(self) -> list[str]:
        """What keeps the service from being ready, beyond writable folders."""
        problems = [self._incoming_problem] if self._incoming_problem else []
        return problems + (self.handoff.problems() if self.handoff is not None else [])

    def stop(self, timeout: float | None = None) -> dict[str, Any]:
        """Stop watching, finish or hand back in-flight files; return the counts.

        Within ``timeout`` (default ``--stop-timeout``): a worker still busy then is killed,
        which is safe (every write is atomic; a source goes only after its copy and logs).
        """
        timeout = self.settings.stop_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        self.threads.stopping()
        self._stopping.set()
        self.watching.clear()
        self.tracker.wake()
        if self._observer is not None:
            _stop_observer(self._observer, max(0.1, deadline - time.monotonic()))
        if self._dispatcher.is_alive():
            self._dispatcher.join(max(0.1, deadline - time.monotonic()))
        handed_back, clean = self.pool.stop(max(0.1, deadline - time.monotonic()))
        self.metrics.handed_back.inc(handed_back)
        if not clean:
            self.kill_workers()
        if self._observer is not None:
            self._observer.join(max(0.1, deadline - time.monotonic()))
        if self.handoff is not None:  # what is not delivered yet stays in the outbox
            self.handoff.stop(max(0.1, deadline - time.monotonic()))
        self.root.close()
        self.threads.uninstall()
        summary: dict[str, Any] = {
            **self.metrics.totals(),
            "clean": clean,
            "uptime_s": round(time.monotonic() - self._started, 3),
        }
        self.log.info(Event.WATCHER_STOPPED, **summary)
        return summary

    def kill_workers(self, *, reap: bool = True) -> None:
        """Kill the worker processes now (safe: every write is atomic)."""
        for worker in self.workers:
            worker.kill(reap=reap)

    def _sweep(self) -> None:
        """Remove temporary files that writers killed mid-write left behind."""
        folders = (self.settings.datadir, self.settings.logdir, self.settings.quarantine)
        removed = sum(sweep_stale_temps(folder) for folder in folders)
        self.log.info(Event.HOUSEKEEPING_SWEPT, stale_temp_files_removed=removed)

    # -- dispatcher ----------------------------------------------------------

    def _dispatch(self) -> None:
        self._scans.start()
        next_scan = time.monotonic() + self.settings.scan_interval
        next_housekeeping = time.monotonic() + _HOUSEKEEPING_S
        rescan = False
        while not self._stopping.is_set():
            rescan = self._wait_for_work() or rescan
            if self._stopping.is_set():
                break
            self._hand_over()
            now = time.monotonic()
            if (now >= next_scan or rescan) and not self._scans.full_scan_under_way():
                if rescan:
                    self.log.warning(
                        Event.WATCHER_RESCAN, reason="events dropped or too many pending"
                    )
                self._scans.start()
                rescan, next_scan = False, now + self.settings.scan_interval
            if now >= next_housekeeping:
                self._housekeeping()
                next_housekeeping = now + _HOUSEKEEPING_S
        self._scans.close()

    def _wait_for_work(self) -> bool:
        """Wait (at most 0.2 s) for a file to be due, a pool slot or a scan step; start
        scans of new folders. Whether events were dropped (then a rescan is due)."""
        due = self.tracker.next_due()
        wait = 0.2 if due is None else min(0.2, max(0.0, due - time.monotonic()))
        if self.pool.free_slots() == 0:
            wait = 0.02
        if self._scans.more_to_hand_over():
            wait = 0.0
        # Events come in bursts (the observer reads a few milliseconds of them
        # at once), so a trickle reaches the workers several files at a time.
        self.tracker.wait(wait)
        for folder in self.tracker.take_new_folders():
            self._scans.start(folder)
        return self.tracker.clear_overflow()

    def _hand_over(self) -> None:
        """A step of the scans under way, then as many ready files as the pool takes."""
        self._scans.advance(_SCAN_STEP)
        free = self.pool.free_slots()
        if free:
            for candidate in self.tracker.take_ready(free):
                self.pool.submit(candidate)

    def _housekeeping(self) -> None:
        self._check_observer()
        self._check_incoming()
        self._check_stalls()
        self._announce_quiet_series()
        self._update_gauges()

    # -- housekeeping --------------------------------------------------------

    def _check_incoming(self) -> None:
        """Notice that the incoming folder was replaced or removed; watch the new one."""
        incoming = self.settings.incoming
        identity = identity_of(incoming)
        if identity is None and not os.path.lexists(incoming):
            with contextlib.suppress(OSError):
                incoming.mkdir(parents=True)  # storescp needs it to write into
            identity = identity_of(incoming)
        problem = None
        if identity is None:
            problem = f"the incoming folder {incoming} is missing or not a folder"
            if problem != self._incoming_problem:
                self.log.error(Event.WATCHER_INCOMING_LOST, folder=str(incoming), error=problem)
        elif identity != self.root.identity:
            before = self.root.identity
            try:
                self.root.open()
                self._rearm("the incoming folder was replaced", old_inode=before[1])
            except (OSError, ConfigError) as error:
                problem = f"cannot watch the new incoming folder: {error}"
        self._incoming_problem = problem

    def _check_observer(self) -> None:
        """Re-arm the observer when one of its threads died (:class:`ThreadWatch`)."""
        died = self.threads.observer_died()
        if died is None:
            return
        try:
            self._rearm(f"the observer's thread {died!r} died")
        except (OSError, ConfigError) as error:
            self.threads.rearm_failed(str(error))

    def _rearm(self, reason: str, **fields: Any) -> None:
        """A new observer on the incoming folder, the old one stopped, a full scan for
        what happened meanwhile. Raises :class:`ConfigError` when it cannot watch."""
        observer = self._start_observer()
        old, self._observer = self._observer, observer
        self.threads.rearmed(observer_threads(observer))
        if old is not None:
            _stop_observer(old, 0.0)
        self.log.warning(
            Event.WATCHER_REARMED,
            folder=str(self.settings.incoming),
            reason=reason,
            **fields,
            new_inode=self.root.identity[1],
        )
        self._scans.close()  # they may walk a folder that was replaced
        self._scans.start()

    def _check_stalls(self) -> None:
        """Kill a worker process that has held one file for too long (it is retried)."""
        limit = self.settings.stall_timeout
        stalled = set(self.pool.stalled(limit))
        for index in stalled - self._stall_reported:
            self.log.error(Event.WORKER_STALLED, worker=index, seconds=limit, action="killed")
            self.workers[index].kill()
        self._stall_reported = stalled  # each stall reported once

    def _announce_quiet_series(self) -> None:
        for quiet in self.series.take_quiet():
            series = as_on_disk(quiet, ignored)  # a restart mid-series saw only its rest
            self.metrics.series_completed.inc()
            self.log.info(
                Event.SERIES_COMPLETE,
                SeriesInstanceUID=series.series_uid,
                StudyInstanceUID=series.study_uid,
                PatientID=series.patient_id,
                instances=series.instances,
                resent=series.resends,
                folder=series.folder,
                receive_s=series.receive_s,
            )
            if self.handoff is not None:
                self.handoff.complete(series)

    def _update_gauges(self) -> None:
        metrics = self.metrics
        metrics.queue_depth.set(self.tracker.pending_count())  # queued and in-flight included
        metrics.workers_busy.set(self.pool.busy())
        metrics.files_failing.set(self.tracker.failing(REPEATS_BEFORE_ERROR))

    # -- workers -------------------------------------------------------------

    def _handle(self, index: int, candidates: list[Candidate]) -> None:
        results = self.workers[index].repack(self.root.identity, candidates)
        # The batch's events first: a service killed now loses no event of a file
        # its workers finished.
        for candidate, result in zip(candidates, results, strict=True):
            if isinstance(result, Repacked):
                fields = result.event_fields()
                if candidate.attempt:
                    fields["attempt"] = candidate.attempt
                log_repacked(self.log, fields)
        for candidate, result in zip(candidates, results, strict=True):
            self.router.route(candidate, result)

    def _handler_failed(self, index: int, candidates: list[Candidate], error: Exception) -> None:
        """A bug between the worker and the router: log it and retry the files."""
        message = f"{type(error).__name__}: {error}"
        for candidate in candidates:
            self.log.error(Event.WORKER_ERROR, worker=index, src=candidate.shown, error=message)
            self.router.route(candidate, NotRepacked(Outcome.CRASHED, message=message))
