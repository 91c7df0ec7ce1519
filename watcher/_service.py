"""The long-running service: observer -> dispatcher -> bounded workers -> repack.

Threads, each stoppable:

* the watchdog observer (its handler only records into the :class:`Inbox`);
* one **dispatcher**: applies the records to the :class:`CompletionTracker`,
  hands ready files to the pool while it has room, rescans the folder at
  start, periodically and after any dropped event, and twice a second does
  the housekeeping: notices a replaced incoming folder (and watches the new
  one), kills a worker stuck on one file, announces series that went quiet,
  updates the gauges;
* ``workers`` **repack workers** (:class:`WorkerPool`), each driving one
  :class:`~watcher._engine.Engine` (a child process by default), whose
  results :class:`~watcher._outcomes.OutcomeRouter` acts on.

The service reaches files only through a descriptor of the incoming folder
(:class:`~watcher._incoming.IncomingRoot`), never following a link.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import threading
import time
from pathlib import Path
from typing import Any

from repack import (
    TEMP_PREFIX,
    Store,
    get_logger,
    line_writer,
    output_blocked_for,
    probe_writable,
    sweep_stale_temps,
)

from ._completion import Candidate, CompletionTracker
from ._counts import Counts
from ._engine import Engine, EngineConfig, Job, Outcome, Result
from ._errors import EXIT_STARTUP, ConfigError
from ._incoming import IncomingRoot, identity_of
from ._metrics import Metrics
from ._observer import Inbox, Record, RecordKind, start_observer
from ._outcomes import REPEATS_BEFORE_ERROR, OutcomeRouter
from ._pool import WorkerPool
from ._quarantine import Quarantine
from ._scan import FolderScan
from ._series import SeriesTracker
from ._settings import Settings

__all__ = ["OUTPUT_BLOCKED_S", "Service"]

#: Seconds one event write may wait for its reader before ``/healthz`` fails.
OUTPUT_BLOCKED_S = 10.0
_HOUSEKEEPING_S = 0.5
#: Files a worker takes from the queue in one go (only what is already queued).
_BATCH = 16
#: Entries a scan hands over per dispatcher round (then events get their turn).
_SCAN_STEP = 2_000
#: Records waiting for the dispatcher at most.
_INBOX_CAPACITY = 4_096


def _ignored(name: str) -> bool:
    """Dot-files, and so this package's own temporary files, are never candidates."""
    return name.startswith(".") or name.startswith(TEMP_PREFIX)


def _hidden(path: str, root: str) -> bool:
    """Whether ``path`` is a dot-file or lies in a dot-folder below ``root``."""
    return "/." in path[len(root) :]


def _inside(path: Path, other: Path) -> bool:
    return path == other or path.is_relative_to(other)


_PSEUDO_FILE_SYSTEMS = frozenset(
    {"proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "securityfs",
     "tracefs", "configfs", "fusectl", "pstore", "bpf", "mqueue", "hugetlbfs"}
)  # fmt: skip


def _mount_of(path: Path) -> tuple[str, str, bool]:
    """The mount point holding ``path``, its file system type, and whether it is read-only."""
    best = ("/", "", False)
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return best
    target = str(path)
    for line in lines:
        fields = line.split()
        if " - " not in line or len(fields) < 6:
            continue
        mountpoint = fields[4].replace("\\040", " ")
        inside = target == mountpoint or target.startswith(mountpoint.rstrip("/") + "/")
        if inside and len(mountpoint) >= len(best[0]):
            fstype = line.split(" - ", 1)[1].split()[0]
            best = (mountpoint, fstype, "ro" in fields[5].split(","))
    return best


def _why_not_usable(folder: Path, error: OSError) -> str:
    """A hint that says why ``folder`` cannot be created or written, and what to do."""
    parent = next((p for p in folder.parents if p.exists()), Path("/"))
    existing = folder if folder.exists() else parent
    mountpoint, fstype, read_only = _mount_of(existing)
    if fstype in _PSEUDO_FILE_SYSTEMS:
        return (
            f"{existing} is on the {fstype} pseudo file system ({mountpoint}), which holds no"
            " ordinary folders: choose a folder on a real file system"
        )
    if read_only or error.errno == errno.EROFS:
        return f"{mountpoint} is mounted read-only: choose a writable folder, or remount it"
    if error.errno in (errno.EACCES, errno.EPERM):
        try:
            info = existing.stat()
            owner = f" (owner uid {info.st_uid}, mode {oct(info.st_mode & 0o7777)})"
        except OSError:
            owner = ""
        return (
            f"uid {os.getuid()} may not write in {existing}{owner}: fix its owner or"
            " mode, or choose another folder"
        )
    return f"create {folder} and make it writable for uid {os.getuid()}"


class Service:
    """The pypx-listener service; :meth:`start`, then :meth:`stop`."""

    def __init__(self, settings: Settings, *, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.log = get_logger()
        self.counts = Counts()
        self.metrics = metrics
        config = EngineConfig(
            str(settings.incoming),
            str(settings.datadir),
            str(settings.logdir),
            settings.layout.sources,
            settings.layout.name,
            settings.move,
            settings.fsync,
            log_json={"auto": None, "json": True, "console": False}[settings.log_format],
            log_level=settings.log_level,
            nice=settings.worker_nice,
        )
        self.engines = [
            Engine(config, process=settings.worker_mode == "process")
            for _ in range(settings.workers)
        ]
        self.root = IncomingRoot(settings.incoming)
        self.tracker = CompletionTracker(
            settings.settle,
            capacity=settings.pending_limit,
            unleased_settle=settings.unleased_settle,
        )
        self.series = SeriesTracker(settings.series_quiet)
        # Small: the dispatcher empties it every round; a storm beyond it costs a rescan.
        self.inbox = Inbox(capacity=_INBOX_CAPACITY)
        self.router = OutcomeRouter(
            settings,
            tracker=self.tracker,
            quarantine=Quarantine(settings.quarantine, Store(None, fsync=settings.fsync)),
            root=self.root,
            series=self.series,
            counts=self.counts,
            metrics=metrics,
            log=self.log,
        )
        self.pool: WorkerPool[Candidate] = WorkerPool(
            self._handle,
            workers=settings.workers,
            capacity=settings.queue_size,
            batch=_BATCH,
            finish=lambda index: self.engines[index].stop(settings.stop_timeout),
            failed=self._handler_failed,
        )
        self._stopping = threading.Event()
        self._dispatcher = threading.Thread(target=self._dispatch, name="dispatcher", daemon=True)
        self._observer: Any = None
        self._started = 0.0
        self._incoming_problem: str | None = None
        self._stall_reported: set[int] = set()
        self._scans: collections.deque[FolderScan] = collections.deque()
        # Events the workers rendered are written as they are, with the others.
        self._write_lines = line_writer()
        self.watching = threading.Event()

    # -- lifecycle -----------------------------------------------------------

    def check_folders(self) -> None:
        """Create the folders and prove they are usable; raise :class:`ConfigError`."""
        s = self.settings
        folders = {"incoming": s.incoming, "datadir": s.datadir, "logdir": s.logdir,
                   "quarantine": s.quarantine}  # fmt: skip
        for other_name in ("datadir", "logdir", "quarantine"):
            other = folders[other_name]
            if _inside(s.incoming, other) or _inside(other, s.incoming):
                raise ConfigError(
                    f"--incoming {s.incoming} and --{other_name} {other} overlap",
                    hint="use separate folders for incoming, data, log and quarantine",
                )
        for name, folder in folders.items():
            try:
                folder.mkdir(parents=True, exist_ok=True)
                # Others may write into the incoming folder: never follow it as a link.
                probe_writable(folder, follow_links=name != "incoming")
            except OSError as error:
                if name == "incoming" and error.errno in (errno.ELOOP, errno.ENOTDIR):
                    break  # said just below, with its own hint
                raise ConfigError(
                    f"--{name} {folder} is not usable: {error.strerror or error}",
                    hint=_why_not_usable(folder, error),
                    exit_code=EXIT_STARTUP,
                ) from error
        try:
            self.root.open()
        except OSError as error:
            raise ConfigError(
                f"--incoming {s.incoming} cannot be opened as a folder: {error.strerror}",
                hint="the incoming folder itself must be a real folder, not a symbolic link",
                exit_code=EXIT_STARTUP,
            ) from error

    def start(self, *, announce: bool = True) -> None:
        """Check the folders, start the workers, the observer and the dispatcher.

        Everything that can fail at start fails here, as a
        :class:`ConfigError`, before ``watcher.started`` is announced.
        """
        self.check_folders()
        self._started = time.monotonic()
        for engine in self.engines:  # spawn the worker processes before any thread
            engine.start()
        for engine in self.engines:
            problem = engine.wait_ready(60)
            if problem is not None:
                self.kill_workers()
                hint = (
                    "check that the package is installed completely (pip install .)"
                    " and that the folders are readable"
                )
                if problem.startswith("cannot run the worker interpreter"):
                    hint = (
                        "workers run the service's own interpreter (sys.executable): make it"
                        " executable for this user, or use --worker-mode thread"
                    )
                raise ConfigError(
                    f"a repack worker could not start: {problem}",
                    hint=hint,
                    exit_code=EXIT_STARTUP,
                )
        self.pool.start()
        try:
            self._observer = self._start_observer()
        except ConfigError:
            self.pool.stop(1.0)
            self.kill_workers()
            raise
        self.watching.set()
        self._dispatcher.start()
        threading.Thread(target=self._sweep, name="sweeper", daemon=True).start()
        if announce:
            self.announce()

    def announce(self) -> None:
        """Log ``watcher.started`` with the effective settings."""
        self.log.info("watcher.started", pid=os.getpid(), **self.settings.describe())

    def _start_observer(self) -> Any:
        try:
            return start_observer(
                self.settings.incoming,
                self.inbox,
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
        problems = []
        if not self._dispatcher.is_alive():
            problems.append("the dispatcher thread is not running")
        if self._observer is None or not self._observer.is_alive():
            problems.append("the folder observer is not running")
        if not self.pool.running():
            problems.append("a repack worker thread is not running")
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

    def alive(self) -> bool:
        return not self.alive_problems()

    def ready_problems(self) -> list[str]:
        """What keeps the service from being ready, beyond writable folders."""
        return [self._incoming_problem] if self._incoming_problem else []

    def stop(self, timeout: float | None = None) -> dict[str, Any]:
        """Stop watching, finish or hand back in-flight files; return the counts.

        Returns within ``timeout`` (default ``--stop-timeout``): a worker
        process still busy at the deadline is killed, which is safe (every
        write is atomic, and a source is removed only after its copy and
        logs exist).
        """
        timeout = self.settings.stop_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        self._stopping.set()
        self.watching.clear()
        self.inbox.wake()
        if self._observer is not None:
            self._observer.stop()
        if self._dispatcher.is_alive():
            self._dispatcher.join(max(0.1, deadline - time.monotonic()))
        handed_back, clean = self.pool.stop(max(0.1, deadline - time.monotonic()))
        self.counts.add("handed_back", handed_back)
        if not clean:
            self.kill_workers()
        if self._observer is not None:
            self._observer.join(max(0.1, deadline - time.monotonic()))
        self.root.close()
        summary: dict[str, Any] = {
            **self.counts.as_dict(),
            "clean": clean,
            "uptime_s": round(time.monotonic() - self._started, 3),
        }
        self.log.info("watcher.stopped", **summary)
        return summary

    def kill_workers(self) -> None:
        """Kill the worker processes now (safe: every write is atomic)."""
        for engine in self.engines:
            engine.kill()

    def _sweep(self) -> None:
        """Remove temporary files that writers killed mid-write left behind."""
        s = self.settings
        removed = sum(sweep_stale_temps(folder) for folder in (s.datadir, s.logdir, s.quarantine))
        self.log.info("housekeeping.swept", stale_temp_files_removed=removed)

    # -- dispatcher ----------------------------------------------------------

    def _dispatch(self) -> None:
        try:
            self._dispatch_loop()
        except Exception:
            self.log.exception("watcher.dispatcher_crashed")
            raise

    def _dispatch_loop(self) -> None:
        settings = self.settings
        self._scans.append(self._folder_scan())
        next_scan = time.monotonic() + settings.scan_interval
        next_housekeeping = time.monotonic() + _HOUSEKEEPING_S
        rescan = False
        while not self._stopping.is_set():
            now = time.monotonic()
            due = self.tracker.next_due()
            wait = 0.2 if due is None else min(0.2, max(0.0, due - now))
            if self.pool.free_slots() == 0:
                wait = 0.02
            if self._scans and self.tracker.room() > 0:
                wait = 0.0  # a scan has more to hand over
            # Records come in bursts (the observer reads a few milliseconds of
            # events at once), so a trickle already reaches the pool and the
            # workers several files at a time.
            records, dropped = self.inbox.take(wait)
            for record in records:
                self._record(record)
            if dropped or self.tracker.clear_overflow():
                rescan = True
            if self._stopping.is_set():
                break
            self._advance_scans()
            free = self.pool.free_slots()
            if free:
                for candidate in self.tracker.take_ready(free):
                    self.pool.submit(candidate)
            now = time.monotonic()
            if (now >= next_scan or rescan) and not any(scan.full for scan in self._scans):
                if rescan:
                    self.log.warning("watcher.rescan", reason="events dropped or too many pending")
                rescan = False
                self._scans.append(self._folder_scan())
                next_scan = now + settings.scan_interval
            if now >= next_housekeeping:
                self._check_incoming()
                self._check_stalls()
                self._announce_quiet_series()
                self._update_gauges()
                next_housekeeping = now + _HOUSEKEEPING_S
        for scan in self._scans:
            scan.close()

    def _record(self, record: Record) -> None:
        kind, path = record
        if _hidden(path, str(self.settings.incoming)):
            return
        if kind is RecordKind.CLOSED:
            self.tracker.closed(path)
        elif kind is RecordKind.CHANGED:
            self.tracker.changed(path)
        elif kind is RecordKind.DELETED:
            self.tracker.deleted(path)
        elif kind is RecordKind.NEW_FOLDER:
            # The watch on a new folder can come too late for its first files.
            self._scans.append(self._folder_scan(self.root.relative(path)))

    def _folder_scan(self, top: str = "") -> FolderScan:
        """A walk of the incoming folder (or of ``top`` in it) to find files nobody announced."""
        return FolderScan(
            self.root.descriptor,
            str(self.settings.incoming),
            top,
            ignored=_ignored,
            remove_empty_after=self.settings.empty_dir_age if self.settings.move else None,
        )

    def _advance_scans(self) -> None:
        """Hand what the scans find to the tracker while it has room, a bounded step at a time.

        A scan pauses when the tracker is full and goes on from the same place
        later: a backlog waits on disk, not in memory.
        """
        budget = _SCAN_STEP
        while self._scans and budget > 0:
            scan = self._scans[0]
            room = min(budget, self.tracker.room())
            if room <= 0:
                return
            taken = 0
            for path, info in scan:
                self.tracker.found(path, info)
                taken += 1
                if taken >= room:
                    break
            budget -= taken
            if taken < room:  # the walk is over
                self._scans.popleft()
                if self.metrics is not None:
                    self.metrics.scanned(scan.found)

    # -- housekeeping --------------------------------------------------------

    def _check_incoming(self) -> None:
        """Notice that the incoming folder was replaced or removed; watch the new one."""
        incoming = self.settings.incoming
        identity = identity_of(incoming)
        if identity == self.root.identity:
            self._incoming_problem = None
            return
        if identity is None and not os.path.lexists(incoming):
            with contextlib.suppress(OSError):
                incoming.mkdir(parents=True)  # storescp needs it to write into
            identity = identity_of(incoming)
        if identity is None:
            problem = f"the incoming folder {incoming} is missing or not a folder"
            if problem != self._incoming_problem:
                self.log.error("watcher.incoming_lost", folder=str(incoming), error=problem)
            self._incoming_problem = problem
            return
        before = self.root.identity
        try:
            self.root.open()
            observer = self._start_observer()
        except (OSError, ConfigError) as error:
            self._incoming_problem = f"cannot watch the new incoming folder: {error}"
            return
        old, self._observer = self._observer, observer
        if old is not None:
            old.stop()
        self._incoming_problem = None
        self.log.warning(
            "watcher.rearmed",
            folder=str(incoming),
            reason="the incoming folder was replaced",
            old_inode=before[1],
            new_inode=self.root.identity[1],
        )
        for scan in self._scans:  # they walk the folder that was replaced
            scan.close()
        self._scans.clear()
        self._scans.append(self._folder_scan())

    def _check_stalls(self) -> None:
        """Kill a worker process that has held one file for too long (it is retried)."""
        limit = self.settings.stall_timeout
        stalled = set(self.pool.stalled(limit))
        for index in stalled - self._stall_reported:
            self.log.error(
                "worker.stalled",
                worker=index,
                seconds=limit,
                action="killed" if self.engines[index].use_process else "cannot stop a thread",
            )
            self.engines[index].kill()
        self._stall_reported = stalled  # each stall reported once

    def _announce_quiet_series(self) -> None:
        for series in self.series.take_quiet():
            self.counts.add("series_completed")
            if self.metrics is not None:
                self.metrics.series_completed()
            self.log.info(
                "series.complete",
                SeriesInstanceUID=series.series_uid,
                StudyInstanceUID=series.study_uid,
                PatientID=series.patient_id,
                instances=series.instances,
                resent=series.resends,
                folder=series.folder,
                receive_s=series.receive_s,
            )

    def _update_gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.gauges(
                queue_depth=self.pool.depth() + self.tracker.pending_count(),
                busy=self.pool.busy(),
                failing=self.tracker.failing(REPEATS_BEFORE_ERROR),
            )

    # -- workers -------------------------------------------------------------

    def _handle(self, index: int, candidates: list[Candidate]) -> None:
        identity = self.root.identity
        jobs = [Job(self.root.relative(c.path), identity, c.attempt, c.closed) for c in candidates]
        results = self.engines[index].repack(jobs)
        lines = [result.line for result in results if result.line is not None]
        if lines and self._write_lines is not None:
            # The batch's events in one write, first: a service killed now loses
            # no event of a file its workers finished.
            self._write_lines(b"\n".join(lines))
        for candidate, result in zip(candidates, results, strict=True):
            if self.metrics is not None and result.warnings:
                self.metrics.warned(len(result.warnings))
            self.router.route(candidate, result)

    def _handler_failed(self, index: int, candidates: list[Candidate], error: Exception) -> None:
        """A bug between the worker and the router: log it and retry the files."""
        message = f"{type(error).__name__}: {error}"
        for candidate in candidates:
            self.log.error("worker.error", worker=index, src=candidate.shown, error=message)
            self.router.route(candidate, Result(Outcome.CRASHED, message=message))
