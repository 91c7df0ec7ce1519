"""The hand-off of completed series: a durable outbox under the log tree, delivered at least once.

::

    <logdir>/outbox/<destination>/<key>.json

A completed series becomes one record per destination (:mod:`watcher._destinations`),
each written atomically before anything is sent. A delivered record is
removed; a failed one stays, and is tried again after a back-off that doubles
from 1 s to :data:`MAX_BACKOFF_S`, for ever: ``handoff.retry`` each time,
``handoff.stuck`` (an error) when it failed :data:`STUCK_AFTER` times in a
row, ``handoff.sent`` when it is through. A broker outage, a webhook that
answers 500, a SIGKILL or a restart lose nothing: the record is on disk until
its destination took it. A record whose delivery was cut short (SIGKILL after
the send, before the removal) is sent again; every destination is told the
record's key (Celery's task id, the webhook's ``Idempotency-Key``,
``PYPX_SERIES_KEY``), and CUBE refuses a second registration of a series.

Several services on one log tree share the outbox: a record is delivered by
whoever holds its ``flock`` (taken without waiting; the others pass it by),
and only while its name still holds the file that was locked, the discipline
of the repack.

A series being received is marked in ``<logdir>/outbox/.receiving/`` (a small
file its service holds an ``flock`` on), from its first instance until its
records are written. A service killed in between leaves the mark unlocked: the
next service to start adopts the series, and announces it once it has been
quiet for ``--series-quiet`` (``handoff.adopted``), so that no series that
reached the data tree is left unregistered.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import orjson

from repack import Event, Repacked, StorageError
from repack.plumbing import Store, json_bytes, try_claim

from ._backoff import HANDOFF_RETRY
from ._destinations import (
    DeliveryError,
    Destination,
    PermanentDeliveryError,
    dicom_names,
    pacs_name_of,
    series_document,
)
from ._metrics import Metrics
from ._series import QuietSeries, SeriesTracker

if TYPE_CHECKING:  # nats-py only when --nats-url asks for it
    from ._lonk import LonkProgress

#: The longest wait between two tries of one record.
MAX_BACKOFF_S = HANDOFF_RETRY.cap
#: Failures in a row after which a record is reported stuck (an error).
STUCK_AFTER = HANDOFF_RETRY.stuck_after
#: A destination whose oldest failing record has failed this long makes ``/readyz`` fail.
UNREADY_AFTER_S = 300.0
#: The largest record read (a series document is a few kilobytes).
MAX_RECORD_BYTES = 1 << 20
#: Where records that can never be delivered are set aside, per destination.
DEAD_LETTER = ".dead-letter"
#: What CUBE was asked to register, per series: the files it knows.
REGISTERED = ".registered"
#: Names of files CUBE does not know listed in one ``series.late`` event (the rest counted).
_LATE_LISTED = 50


def _malformed_mark(mark: Mapping[str, Any], datadir: Path, logdir: Path) -> str | None:
    """Why a mark in ``.receiving`` is not one a service wrote, or None."""
    for key in ("SeriesInstanceUID", "folder", "log_path", "PatientID", "StudyInstanceUID"):
        if not isinstance(mark.get(key), str):
            return f"its {key!r} is missing or not text"
    if not _inside(mark["folder"], datadir):
        return "its folder is not in the data folder"
    if mark["log_path"] and not _inside(mark["log_path"], logdir):
        return "its log path is not in the log folder"
    return None


def _inside(path: str, folder: Path) -> bool:
    """Whether ``path``, as written (no link resolved), names something below ``folder``."""
    normal = os.path.normpath(path)
    return os.path.isabs(normal) and normal.startswith(os.path.normpath(folder) + os.sep)


def _malformed(record: object) -> str | None:
    """Why a record read from the outbox cannot be one this service wrote, or None."""
    if not isinstance(record, dict):
        return "not a JSON object"
    kinds: dict[str, type | tuple[type, ...]] = {
        "key": str,
        "attempts": int,
        "due": (int, float),
        "series": dict,
    }
    for name, kind in kinds.items():
        if not isinstance(record.get(name), kind) or isinstance(record.get(name), bool):
            return f"its {name!r} is missing or of the wrong type"
    for name in ("first_failure", "last_error"):
        if (
            name in record
            and record[name] is not None
            and not isinstance(record[name], int | float | str)
        ):
            return f"its {name!r} is of the wrong type"
    if not isinstance(record["series"].get("SeriesInstanceUID"), str):
        return "its series has no SeriesInstanceUID"
    return None


def _locked(path: Path) -> int | None:
    """A descriptor of ``path`` holding its ``flock``, or None when it is gone or locked."""
    return _locked_beneath(None, str(path))


_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_OPEN_FOLDER = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _locked_beneath(folder: int | None, name: str) -> int | None:
    """A descriptor of the regular file ``name`` (in the folder descriptor ``folder``)
    holding its ``flock``; None when it is gone, locked, a link, or no regular file
    (a FIFO is opened without waiting for a writer, and let go)."""
    try:
        descriptor = os.open(name, _OPEN_FILE, dir_fd=folder)
    except OSError:
        return None
    try:
        regular = stat.S_ISREG(os.fstat(descriptor).st_mode) and try_claim(descriptor)
    except OSError:
        regular = False
    if not regular:
        os.close(descriptor)
        return None
    return descriptor


def _still_named(folder: int, name: str, descriptor: int) -> bool:
    """Whether ``name`` in ``folder`` is still the file open at ``descriptor``."""
    try:
        here = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return here.st_ino == os.fstat(descriptor).st_ino


def _series_file_name(series_uid: str) -> str:
    """A series' file name in the outbox's own folders (a hash: any UID makes one safe name)."""
    return f"{hashlib.sha256(series_uid.encode()).hexdigest()[:32]}.json"


def _private(path: Path) -> None:
    """A record names a patient: readable by this service's user alone (0600)."""
    with contextlib.suppress(OSError):
        os.chmod(path, 0o600)


@runtime_checkable
class _Notes(Protocol):
    """A destination that leaves some of a series out (CUBE's optional fields)."""

    def notes(self, series: Mapping[str, Any]) -> list[str]: ...


def _read_document(descriptor: int) -> tuple[dict[str, Any], str | None]:
    """A JSON object from a regular file of one name and bounded size, or why not."""
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode):
        return {}, "not a regular file"
    if info.st_nlink != 1:
        return {}, "a file with more than one name (a hard link)"
    if info.st_size > MAX_RECORD_BYTES:
        return {}, f"larger than {MAX_RECORD_BYTES} bytes"
    try:
        document = orjson.loads(os.read(descriptor, MAX_RECORD_BYTES + 1))
    except orjson.JSONDecodeError as error:
        return {}, f"not JSON: {error}"
    if not isinstance(document, dict):
        return {}, "not a JSON object"
    return document, None


def _read_record(descriptor: int) -> tuple[dict[str, Any], str | None]:
    """The record behind ``descriptor``, or why it is not one this service wrote.

    Only a regular file with one name, of a bounded size, holding a record of
    the right shape: anything else someone put in the outbox (a folder, a FIFO,
    a hard link to another file, a huge file, not JSON) is reported, not read.
    """
    record, problem = _read_document(descriptor)
    problem = problem or _malformed(record)
    return (record if problem is None else {}), problem


class Handoff:
    """The outbox and its delivery thread; :meth:`start`, :meth:`series_complete`, :meth:`stop`."""

    def __init__(
        self,
        logdir: Path,
        destinations: list[Destination],
        *,
        metrics: Metrics,
        log: Any,
        fsync: bool = True,
        progress: LonkProgress | None = None,
        datadir: Path | None = None,
        pacs_name: str | None = None,
        by_sender: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``progress``: LONK progress to report; ``datadir`` and ``pacs_name`` name CUBE's
        path; ``by_sender``: the data folder holds a folder per sender, each its own PACS
        (``pacs_name`` names the folder of files that name no sender)."""
        self.progress, self.datadir, self.pacs_name = progress, datadir or logdir, pacs_name
        self.by_sender = by_sender
        self.folder = logdir / "outbox"
        self.destinations = {d.name: d for d in destinations}
        self.metrics, self.log, self._clock = metrics, log, clock
        self._store = Store(None, fsync=fsync)
        self._wakeup = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="handoff", daemon=True)
        #: Per destination: when its oldest failing record first failed (wall clock).
        self._failing_since: dict[str, float] = {}
        #: Outbox folders that are links or no folders: why (each said once).
        self._unsafe_folders: dict[str, str] = {}
        self._receiving = self.folder / ".receiving"
        #: Marks of the series this service is receiving: series UID -> locked descriptor.
        self._marks: dict[str, int] = {}
        self._marks_lock = threading.Lock()

    def start(self, series: SeriesTracker) -> None:
        """Make the folders, adopt the series a killed service left, start delivering."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self.folder.is_symlink():  # a link is never followed (each pass says so)
            os.chmod(self.folder, 0o700)  # records name patients: for this service's user alone
        for name in [*self.destinations, ".receiving"]:
            (self.folder / name).mkdir(parents=True, exist_ok=True)
        self._adopt(series)
        self._thread.start()

    # -- series being received -----------------------------------------------------

    def instance(self, repacked: Repacked, count: int) -> None:
        """A series has its ``count``-th instance: mark it as being received, report progress."""
        if count == 1:
            self.receiving(
                repacked.series_instance_uid,
                str(repacked.series_dir),
                repacked.series_log,
                repacked.patient_id,
                repacked.study_instance_uid,
            )
        if self.progress is not None:
            pacs_name = pacs_name_of(
                str(repacked.series_dir), self.datadir, self.pacs_name, by_sender=self.by_sender
            )
            if pacs_name is not None:
                self.progress.count(pacs_name, repacked.series_instance_uid, count)

    def complete(self, series: QuietSeries) -> str:
        """The series went quiet: write its records (see :meth:`series_complete`)."""
        if self.progress is not None:
            self.progress.forget(series.series_uid)
        return self.series_complete(
            series_document(series, self.datadir, self.pacs_name, by_sender=self.by_sender)
        )

    def refused_instance(self, series_uid: str, message: str, sender: str | None = None) -> None:
        """An instance of the series was refused for CUBE (quarantined): LONK says so, on
        the subject of the PACS it came from."""
        pacs_name = sender or self.pacs_name
        if self.progress is not None and pacs_name is not None:
            self.progress.error(pacs_name, series_uid, message)

    def receiving(
        self, series_uid: str, folder: str, log_path: str, patient_id: str, study_uid: str
    ) -> None:
        """Mark a series this service has started to receive (its first instance)."""
        path = self._mark_path(series_uid)
        mark = {
            "SeriesInstanceUID": series_uid,
            "folder": folder,
            "log_path": log_path,
            "PatientID": patient_id,
            "StudyInstanceUID": study_uid,
        }
        with self._marks_lock:
            if series_uid in self._marks:
                return
            try:
                self._store.create_once(path, json_bytes(mark))
            except StorageError:
                return  # the log tree is unwritable: the series is announced all the same
            descriptor = _locked(path)
            if descriptor is not None:  # else another live service marked it first
                self._marks[series_uid] = descriptor

    def _mark_path(self, series_uid: str) -> Path:
        """Where a series' mark lives."""
        return self._receiving / _series_file_name(series_uid)

    def _unmark(self, series_uid: str) -> None:
        with self._marks_lock:
            descriptor = self._marks.pop(series_uid, None)
            if descriptor is None:
                return
            with contextlib.suppress(OSError):
                os.unlink(self._mark_path(series_uid))
            os.close(descriptor)

    def _adopt(self, series: SeriesTracker) -> None:
        """Take over the marks of series whose service died before announcing them."""
        try:
            folder = self._folder_beneath(".receiving")
        except OSError as error:
            self._unsafe(".receiving", error)
            return
        try:
            names = sorted(os.listdir(folder))
            for name in names:
                self._adopt_one(series, folder, name)
        finally:
            os.close(folder)

    def _adopt_one(self, series: SeriesTracker, folder: int, name: str) -> None:
        descriptor = _locked_beneath(folder, name)
        if descriptor is None:
            return  # held by a live service, gone, or no regular file
        mark, problem = _read_document(descriptor)
        problem = problem or _malformed_mark(mark, self.datadir, self.folder.parent)
        if problem is not None:
            os.close(descriptor)
            self._dead_letter(".receiving", self._receiving / name, problem, None)
            return
        uid = mark["SeriesInstanceUID"]
        with self._marks_lock:
            self._marks[uid] = descriptor
        series.adopt(
            uid,
            folder=mark["folder"],
            patient_id=mark["PatientID"],
            study_uid=mark["StudyInstanceUID"],
            log_path=mark["log_path"],
        )
        self.log.warning(Event.HANDOFF_ADOPTED, SeriesInstanceUID=uid, folder=mark["folder"])

    def stop(self, timeout: float) -> None:
        """Stop delivering (records stay for the next start); marks are left to be adopted."""
        if self.progress is not None:
            self.progress.stop()
        self._stopping.set()
        self._wakeup.set()
        # Closed first: a delivery in flight (a command, a broker that trickles) ends now
        # and fails, its record kept for the next start, rather than hold up the stop.
        for destination in self.destinations.values():
            destination.close()
        if self._thread.is_alive():
            self._thread.join(timeout)
        with self._marks_lock:
            for descriptor in self._marks.values():
                os.close(descriptor)
            self._marks.clear()

    def threads(self) -> list[threading.Thread]:
        """The hand-off's threads, each to live until :meth:`stop`."""
        if self.progress is None:
            return [self._thread]
        return [self._thread, self.progress.thread, self.progress.nats.thread]

    # -- recording ---------------------------------------------------------------

    def series_complete(self, document: Mapping[str, Any]) -> str:
        """Write one record per destination for the series; return its key."""
        key = f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:16]}"
        document = dict(document)
        refused = self._refusals(key, document)
        for name, destination in self.destinations.items():
            if name in refused:
                continue
            notes = destination.notes(document) if isinstance(destination, _Notes) else []
            if notes:
                self.log.warning(
                    Event.HANDOFF_LEFT_OUT,
                    destination=name,
                    key=key,
                    fields=notes,
                    SeriesInstanceUID=document["SeriesInstanceUID"],
                )
            self._write_record(key, name, document)
        self._unmark(document["SeriesInstanceUID"])
        self._wakeup.set()
        return key

    def _refusals(self, key: str, document: dict[str, Any]) -> dict[str, str]:
        """Which destinations refuse the series, and why (each said); a refusal is put in
        ``document["error"]``, which LONK says (0x02) before "done"."""
        refused = {}
        for name, destination in self.destinations.items():
            reason = destination.refuses(document)
            if reason is not None:
                refused[name] = reason
                document["error"] = reason
                self.log.error(
                    Event.HANDOFF_REFUSED,
                    destination=name,
                    key=key,
                    error=reason,
                    SeriesInstanceUID=document["SeriesInstanceUID"],
                )
        if "celery" in self.destinations and "celery" not in refused:
            registered = self._registered_before(document)
            if registered is not None:
                reason, late = registered
                refused["celery"] = reason
                if late:
                    document["error"] = reason
        return refused

    def _write_record(self, key: str, name: str, document: dict[str, Any]) -> None:
        now = self._clock()
        record = {"key": key, "destination": name, "created": now, "attempts": 0, "due": now,
                  "first_failure": None, "last_error": None, "series": document}  # fmt: skip
        path = self.folder / name / f"{key}.json"
        try:
            self._store.create_once(path, json_bytes(record))
            _private(path)
            if name == "celery":
                self._remember_registration(document)
        except StorageError as error:
            # The log tree is unwritable: said like any other failure, the series
            # stays in its folder, and the operator registers it by hand.
            self.log.error(  # noqa: TRY400 - a failure said, not a bug
                Event.HANDOFF_LOST,
                destination=name,
                key=key,
                error=str(error),
                SeriesInstanceUID=document["SeriesInstanceUID"],
            )

    # -- delivering ----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                next_due = self.deliver_due()
            except Exception:  # a bug must not end the hand-off: logged, tried again
                self.log.exception(Event.HANDOFF_CRASHED)
                next_due = self._clock() + 5.0
            self._wakeup.wait(max(0.05, min(5.0, next_due - self._clock())))
            self._wakeup.clear()

    def deliver_due(self) -> float:
        """One pass over the outbox; return when the next record is due."""
        next_due = self._clock() + 5.0
        for name, destination in self.destinations.items():
            pending = 0
            try:
                folder = self._folder_beneath(name)
            except OSError as error:
                self._unsafe(name, error)
                continue
            self._unsafe_folders.pop(name, None)
            try:
                names = sorted(
                    n for n in os.listdir(folder) if n.endswith(".json") and not n.startswith(".")
                )
            except OSError:
                names = []
            oldest_failure: float | None = None
            # After one failure, the destination's other records wait for the next pass: a
            # broker that is down costs one timeout per pass, not one per record.
            down = False
            for file_name in names:
                if self._stopping.is_set():
                    os.close(folder)
                    return next_due
                state = self._try(destination, folder, file_name, deliver=not down)
                if state is None:
                    continue
                pending += 1
                due, first_failure, failed = state
                down = down or failed
                next_due = min(next_due, due)
                if first_failure is not None:
                    oldest_failure = min(first_failure, oldest_failure or first_failure)
            os.close(folder)
            self.metrics.handoff_pending.labels(destination=name).set(pending)
            if oldest_failure is None:
                self._failing_since.pop(name, None)
            else:
                self._failing_since[name] = oldest_failure
        return next_due

    def _try(
        self, destination: Destination, folder: int, name: str, *, deliver: bool
    ) -> tuple[float, float | None, bool] | None:
        """Deliver the record ``name`` (in the folder descriptor ``folder``) if it is due
        and ours to take (and ``deliver``).

        Returns None when it is gone (delivered), else when it is due next,
        since when it has been failing, and whether it failed just now.
        """
        try:
            descriptor = os.open(name, _OPEN_FILE, dir_fd=folder)
        except OSError:
            return None
        try:
            if not try_claim(descriptor):
                return (self._clock() + 1.0, None, False)  # another service has it now
            if not _still_named(folder, name, descriptor):
                return None  # delivered (or replaced) by another service meanwhile
            record, problem = _read_record(descriptor)
            if problem is not None:
                self._dead_letter(destination.name, self.folder / destination.name / name,
                                  problem, None)  # fmt: skip
                return None
            now = self._clock()
            waiting = record["due"] > now or self._waits_for_registration(destination, record)
            if waiting or not deliver:
                return (max(record["due"], now + 0.5), record["first_failure"], False)
            return self._deliver(destination, folder, name, record)
        finally:
            os.close(descriptor)

    def _deliver(
        self, destination: Destination, folder: int, name: str, record: dict[str, Any]
    ) -> tuple[float, float, bool] | None:
        """Hand the claimed record to its destination: removed when delivered, set aside
        when it never can be, else kept for another try (see :meth:`_try`)."""
        path = self.folder / destination.name / name
        try:
            destination.deliver(record["key"], record["series"])
        except PermanentDeliveryError as error:
            self._dead_letter(destination.name, path, str(error), record)
            return None
        except DeliveryError as error:
            return self._failed(path, record, str(error))
        os.unlink(name, dir_fd=folder)
        self.metrics.handoff_sent.labels(destination=destination.name).inc()
        self.log.info(
            Event.HANDOFF_SENT,
            destination=destination.name,
            key=record["key"],
            attempt=record["attempts"] + 1,
            SeriesInstanceUID=record["series"]["SeriesInstanceUID"],
        )
        return None

    def _folder_beneath(self, name: str) -> int:
        """A descriptor of ``outbox/<name>``, opened without following a link at either step."""
        outbox = os.open(self.folder, _OPEN_FOLDER)
        try:
            return os.open(name, _OPEN_FOLDER, dir_fd=outbox)
        finally:
            os.close(outbox)

    def _unsafe(self, name: str, error: OSError) -> None:
        """``outbox`` or ``outbox/<name>`` is a link, or no folder: never followed; said once."""
        problem = f"outbox/{name} is a link or not a folder, and is not followed ({error.strerror})"
        if self._unsafe_folders.get(name) != problem:
            self.log.error(
                Event.HANDOFF_OUTBOX_UNSAFE, folder=str(self.folder / name), error=problem
            )
        self._unsafe_folders[name] = problem

    def _registration_path(self, series_uid: str) -> Path:
        """Where what CUBE was asked to register for a series lives."""
        return self.folder / REGISTERED / _series_file_name(series_uid)

    def _remember_registration(self, document: Mapping[str, Any]) -> None:
        """What CUBE is asked to register: a later completion of the series is late."""
        memo = {
            "SeriesInstanceUID": document["SeriesInstanceUID"],
            "path": document.get("path"),
            "files": dicom_names(str(document.get("folder", ""))),
        }
        path = self._registration_path(document["SeriesInstanceUID"])
        path.parent.mkdir(parents=True, exist_ok=True)
        self._store.write_atomic(path, json_bytes(memo))
        _private(path)

    def _registered_before(self, document: dict[str, Any]) -> tuple[str, bool] | None:
        """Why the series gets no registration, and whether instances came late: CUBE
        has it already (None: it has not).

        CUBE refuses a second registration of a series, so instances that
        arrived after the first one are never registered: said as an error
        (``series.late``, the files CUBE does not know), a LONK error, a metric.
        """
        path = self._registration_path(document["SeriesInstanceUID"])
        try:
            descriptor = os.open(path, _OPEN_FILE)
        except OSError:
            return None
        try:
            memo, problem = _read_document(descriptor)
        finally:
            os.close(descriptor)
        known = memo.get("files") if problem is None else None
        if not isinstance(known, list):
            return None  # an unreadable memo: registering again is what CUBE will judge
        unknown = sorted(set(dicom_names(str(document.get("folder", "")))) - set(known))
        if not unknown:
            return "already registered with CUBE (the same instances sent again)", False
        self.metrics.series_late.inc()
        self.log.error(
            Event.SERIES_LATE,
            SeriesInstanceUID=document["SeriesInstanceUID"],
            path=document.get("path"),
            registered=len(known),
            ndicom=document.get("ndicom"),
            unknown_to_cube=len(unknown),
            files=unknown[:_LATE_LISTED],
        )
        reason = (
            f"{len(unknown)} instance(s) arrived after the series was registered with CUBE"
            f" ({len(known)} files): CUBE does not know them"
        )
        return reason, True

    def _dead_letter(
        self, destination: str, path: Path, reason: str, record: Mapping[str, Any] | None
    ) -> None:
        """Set a record aside that can never be delivered: the others go on."""
        folder = self.folder / DEAD_LETTER / destination
        try:
            folder.mkdir(parents=True, exist_ok=True)
            os.rename(path, folder / path.name)
            where: str | None = str(folder / path.name)
        except OSError:
            where = None  # cannot move it: it is left, and reported at each pass
        self.metrics.handoff_dead_lettered.labels(destination=destination).inc()
        series = record.get("series", {}) if record is not None else {}
        self.log.error(
            Event.HANDOFF_DEAD_LETTERED,
            destination=destination,
            record=path.name,
            error=reason,
            moved_to=where,
            SeriesInstanceUID=series.get("SeriesInstanceUID"),
        )

    def _waits_for_registration(self, destination: Destination, record: Mapping[str, Any]) -> bool:
        """LONK's "done" goes after the series' registration (when there is one)."""
        if destination.name != "nats" or "celery" not in self.destinations:
            return False
        return (self.folder / "celery" / f"{record['key']}.json").exists()

    def _failed(
        self, path: Path, record: dict[str, Any], message: str
    ) -> tuple[float, float, bool]:
        now = self._clock()
        attempts = record["attempts"] + 1
        delay = HANDOFF_RETRY.delay(attempts)
        record.update(
            attempts=attempts,
            due=now + delay,
            last_error=message,
            first_failure=record["first_failure"] or now,
        )
        try:
            self._store.write_atomic(path, json_bytes(record))
            _private(path)
        except StorageError as error:
            message = f"{message} (and the record could not be updated: {error})"
        self.metrics.handoff_failed.labels(destination=record["destination"]).inc()
        fields = {
            "destination": record["destination"],
            "key": record["key"],
            "error": message,
            "attempt": attempts,
            "retry_in_s": delay,
            "SeriesInstanceUID": record["series"]["SeriesInstanceUID"],
        }
        if HANDOFF_RETRY.stuck(attempts):
            self.log.error(Event.HANDOFF_STUCK, **fields)
        else:
            self.log.warning(Event.HANDOFF_RETRY, **fields)
        return (now + delay, record["first_failure"], True)

    def problems(self) -> list[str]:
        """Destinations that have been failing for longer than :data:`UNREADY_AFTER_S`, and
        outbox folders that are links (never followed)."""
        now = self._clock()
        return [
            f"the {name} hand-off has failed for {now - since:.0f} s"
            for name, since in sorted(self._failing_since.items())
            if now - since >= UNREADY_AFTER_S
        ] + sorted(self._unsafe_folders.values())
