"""The long-running service: observer -> dispatcher -> bounded workers -> repack.

Threads, each stoppable:

* the watchdog observer (its handler only records into the :class:`Inbox`);
* one **dispatcher**: applies the records to the :class:`CompletionTracker`,
  hands ready files to the pool while it has room, rescans the folder at
  start, periodically and after any dropped event, removes old empty
  subfolders, and announces series that went quiet;
* ``workers`` **repack workers** (:class:`WorkerPool`).

Per file, a worker (a child process by default, see :mod:`watcher._engine`)
first takes an ``flock`` on the incoming file (so several services on one
folder repack each instance once; the lock dies with its process), then
calls :meth:`repack.Repacker.repack`; the parent sorts the outcome:
done; :class:`repack.InvalidInstanceError` -> quarantine once the file has
not changed for ``quarantine_after`` seconds (a slow writer is never
quarantined early); :class:`repack.StorageError` -> retry with exponential
back-off, the file staying where it is; anything unexpected -> logged and
retried, the worker survives.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from repack import (
    TEMP_PREFIX,
    StorageError,
    Store,
    get_logger,
    sweep_stale_temps,
)

from ._completion import Candidate, CompletionTracker
from ._engine import Engine, EngineConfig, Result
from ._errors import EXIT_FOLDER, ConfigError
from ._observer import CHANGED, CLOSED, DELETED, NEW_FOLDER, Inbox, start_observer
from ._pool import WorkerPool
from ._quarantine import Quarantine
from ._settings import Settings

__all__ = ["Counts", "Service"]


@dataclass
class Counts:
    """What the service did since it started."""

    repacked: int = 0
    quarantined: int = 0
    retried: int = 0
    vanished: int = 0
    series_completed: int = 0
    handed_back: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in vars(self).items() if not k.startswith("_")}


@dataclass
class _Series:
    folder: str
    patient_id: str
    study_uid: str
    first: float
    last: float
    instances: int = 0


def _ignored(name: str) -> bool:
    """Dot-files, and so this package's own temporary files, are never candidates."""
    return name.startswith(".") or name.startswith(TEMP_PREFIX)


def _hidden(path: str, root: str) -> bool:
    """Whether ``path`` is a dot-file or lies in a dot-folder below ``root``."""
    return "/." in path[len(root) :]


def _inside(path: Path, other: Path) -> bool:
    return path == other or path.is_relative_to(other)


class Service:
    """The pypx-listener service; :meth:`start`, then :meth:`stop`."""

    def __init__(self, settings: Settings, *, metrics: Any = None) -> None:
        self.settings = settings
        self.log = get_logger()
        self.counts = Counts()
        self.metrics = metrics
        config = EngineConfig(
            str(settings.datadir),
            str(settings.logdir),
            settings.layout.sources,
            settings.layout.name,
            settings.move,
            settings.fsync,
        )
        self.engines = [
            Engine(config, process=settings.worker_mode == "process")
            for _ in range(settings.workers)
        ]
        self.quarantine = Quarantine(settings.quarantine, Store(None, fsync=settings.fsync))
        self.tracker = CompletionTracker(settings.settle, capacity=settings.pending_limit)
        self.inbox = Inbox(capacity=max(10_000, settings.pending_limit))
        self.pool: WorkerPool[Candidate] = WorkerPool(
            self._handle,
            workers=settings.workers,
            capacity=settings.queue_size,
            finish=lambda index: self.engines[index].stop(settings.stop_timeout),
        )
        self._root = str(settings.incoming)
        self._series: dict[str, _Series] = {}
        self._series_lock = threading.Lock()
        self._stopping = threading.Event()
        self._dispatcher = threading.Thread(target=self._dispatch, name="dispatcher", daemon=True)
        self._observer: Any = None
        self._started = 0.0
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
                probe = folder / f"{TEMP_PREFIX}probe-{os.getpid()}"
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as error:
                raise ConfigError(
                    f"--{name} {folder} is not usable: {error.strerror or error}",
                    hint=f"create {folder} and make it writable for uid {os.getuid()}",
                    exit_code=EXIT_FOLDER,
                ) from error

    def start(self) -> None:
        """Check the folders, then start the workers, the observer and the dispatcher."""
        self.check_folders()
        self._started = time.monotonic()
        for engine in self.engines:  # spawn the worker processes before any thread
            engine.start()
        for engine in self.engines:
            if not engine.wait_ready(60):
                self.log.warning("worker.slow_start", detail="a worker did not warm up in 60 s")
        self.pool.start()
        self._observer = start_observer(
            self.settings.incoming,
            self.inbox,
            polling=self.settings.polling,
            poll_interval=self.settings.poll_interval,
            deletions=not self.settings.move,
        )
        self.watching.set()
        self._dispatcher.start()
        threading.Thread(target=self._sweep, name="sweeper", daemon=True).start()
        self.log.info("watcher.started", pid=os.getpid(), **self.settings.describe())

    def alive(self) -> bool:
        """Whether the dispatcher and the observer are running."""
        observer_alive = self._observer is not None and self._observer.is_alive()
        return self._dispatcher.is_alive() and observer_alive

    def stop(self, timeout: float | None = None) -> dict[str, Any]:
        """Stop watching, finish or hand back in-flight files; return the counts."""
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
        if self._observer is not None:
            self._observer.join(max(0.1, deadline - time.monotonic()))
        summary: dict[str, Any] = {
            **self.counts.as_dict(),
            "clean": clean,
            "uptime_s": round(time.monotonic() - self._started, 3),
        }
        self.log.info("watcher.stopped", **summary)
        return summary

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
        self._scan()
        next_scan = time.monotonic() + settings.scan_interval
        next_housekeeping = time.monotonic() + 0.5
        rescan = False
        while not self._stopping.is_set():
            now = time.monotonic()
            due = self.tracker.next_due()
            wait = 0.2 if due is None else min(0.2, max(0.0, due - now))
            if self.pool.free_slots() == 0:
                wait = 0.02
            records, dropped = self.inbox.take(wait)
            for kind, path in records:
                self._record(kind, path)
            if dropped or self.tracker.clear_overflow():
                rescan = True
            if self._stopping.is_set():
                break
            free = self.pool.free_slots()
            if free:
                for candidate in self.tracker.take_ready(free):
                    self.pool.submit(candidate)
            now = time.monotonic()
            if now >= next_scan or (
                rescan and self.tracker.pending_count() < settings.pending_limit // 2
            ):
                if rescan:
                    self.log.warning("watcher.rescan", reason="events dropped or too many pending")
                rescan = False
                self._scan()
                next_scan = time.monotonic() + settings.scan_interval
            if now >= next_housekeeping:
                self._announce_quiet_series(now)
                self._update_gauges()
                next_housekeeping = now + 0.5

    def _record(self, kind: str, path: str) -> None:
        if _hidden(path, self._root):
            return
        if kind == CLOSED:
            self.tracker.closed(path)
        elif kind == CHANGED:
            self.tracker.changed(path)
        elif kind == DELETED:
            self.tracker.deleted(path)
        elif kind == NEW_FOLDER:
            # The watch on a new folder can come too late for its first files.
            self._scan(Path(path))

    def _scan(self, top: Path | None = None) -> int:
        """Find files nobody announced; remove old empty subfolders (move mode)."""
        root = self.settings.incoming
        top = top or root
        found = 0
        folders_seen: list[tuple[str, bool, float]] = []
        for folder, folders, files in os.walk(top):
            folders[:] = [name for name in folders if not _ignored(name)]
            for name in files:
                if _ignored(name):
                    continue
                path = os.path.join(folder, name)
                try:
                    stat = os.stat(path)
                except OSError:
                    continue
                self.tracker.found(path, stat)
                found += 1
            if self.settings.move and folder != str(root):
                try:
                    # Its age before this scan removed anything below it.
                    folders_seen.append((folder, bool(files), os.stat(folder).st_mtime))
                except OSError:
                    continue
        now = time.time()
        for folder, had_files, mtime in reversed(folders_seen):  # deepest first
            if not had_files and now - mtime >= self.settings.empty_dir_age:
                self._remove_if_empty(folder)
        if self.metrics is not None:
            self.metrics.scanned(found)
        return found

    def _remove_if_empty(self, folder: str) -> None:
        try:
            os.rmdir(folder)
        except OSError:
            return  # not empty (a file arrived, or a subfolder stays), or gone
        self.log.debug("incoming.folder_removed", folder=folder)

    # -- workers -------------------------------------------------------------

    def _handle(self, index: int, candidate: Candidate) -> None:
        result = self.engines[index].repack(candidate.path)
        if result.kind == "done":
            self._done(candidate, result)
        elif result.kind in ("unclaimed", "vanished"):
            if result.kind == "vanished":
                self.counts.add("vanished")
            self.tracker.finished(candidate, remember=False)
        elif result.kind == "invalid":
            self._invalid(candidate, result.reason, result.message)
        elif result.kind == "storage":
            self._retry(candidate, result.message, errno_code=result.errno)
        else:
            self.log.error("repack.crashed", src=candidate.path, error=result.message)
            self._retry(candidate, result.message)

    def _done(self, candidate: Candidate, result: Result) -> None:
        self.tracker.finished(candidate, remember=not self.settings.move)
        self.counts.add("repacked")
        fields = dict(result.event)
        if candidate.attempt:
            fields["attempt"] = candidate.attempt
        self.log.info("repack.done", **fields)
        if self.metrics is not None:
            self.metrics.repacked(result.seconds, result.size)
        series_uid, folder, patient_id, study_uid = result.series
        now = time.monotonic()
        with self._series_lock:
            series = self._series.get(series_uid)
            if series is None:
                series = self._series[series_uid] = _Series(folder, patient_id, study_uid, now, now)
            series.instances += 1
            series.last = now

    def _invalid(self, candidate: Candidate, reason: str, message: str) -> None:
        age = time.time() - candidate.signature[2] / 1e9
        wait = self.settings.quarantine_after - age
        if wait > 0:
            # Maybe still being written (a slow or paused sender): look again.
            self.log.debug("repack.incomplete", src=candidate.path, error=message, recheck_s=wait)
            self.tracker.recheck(candidate, wait + 0.05)
            return
        source = Path(candidate.path)
        try:
            if self.settings.move:
                target = self.quarantine.put(
                    source, reason, message, relative_to=self.settings.incoming
                )
            else:
                target = self._quarantine_copy(source, reason, message)
        except (StorageError, OSError) as failure:
            self._retry(candidate, f"cannot quarantine: {failure}")
            return
        self.tracker.finished(candidate, remember=not self.settings.move)
        self.counts.add("quarantined")
        if self.metrics is not None:
            self.metrics.quarantined(reason)
        self.log.error(
            "repack.failed",
            src=candidate.path,
            dst=None,
            error=message,
            reason=reason,
            quarantined=str(target),
        )

    def _quarantine_copy(self, source: Path, reason: str, message: str) -> Path:
        # Copy mode keeps every incoming file: quarantine a copy instead.
        copy = self.settings.quarantine / ".copy-staging" / source.name
        self.quarantine.store.place(source, copy, link=False)
        return self.quarantine.put(copy, reason, message, relative_to=copy.parent)

    def _retry(self, candidate: Candidate, message: str, *, errno_code: int | None = None) -> None:
        delay = min(self.settings.retry_max_delay, 0.5 * 2 ** min(candidate.attempt, 16))
        self.tracker.retry(candidate, delay)
        self.counts.add("retried")
        if self.metrics is not None:
            self.metrics.retried()
        self.log.warning(
            "repack.retry",
            src=candidate.path,
            error=message,
            errno=errno.errorcode.get(errno_code or 0),
            attempt=candidate.attempt + 1,
            retry_in_s=delay,
        )

    # -- housekeeping --------------------------------------------------------

    def _announce_quiet_series(self, now: float) -> None:
        quiet = self.settings.series_quiet
        with self._series_lock:
            done = [(uid, s) for uid, s in self._series.items() if now - s.last >= quiet]
            for uid, _ in done:
                del self._series[uid]
        for uid, series in done:
            self.counts.add("series_completed")
            if self.metrics is not None:
                self.metrics.series_completed()
            self.log.info(
                "series.complete",
                SeriesInstanceUID=uid,
                StudyInstanceUID=series.study_uid,
                PatientID=series.patient_id,
                instances=series.instances,
                folder=series.folder,
                receive_s=round(series.last - series.first, 3),
            )

    def _update_gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.gauges(
                queue_depth=self.pool.depth() + self.tracker.pending_count(),
                busy=self.pool.busy(),
            )
