"""The repack worker processes, and how one file is claimed and repacked.

Each pool thread owns one child process (``python -P .../_worker_main.py``)
and hands it a batch of candidates at a time over a socket pair; the child
answers with one result per file: the :class:`~repack.Repacked` instance, or
why it was not (:class:`NotRepacked`). Events, series and metrics stay in the
parent, which writes every ``repack.done``.

Claiming a file (:func:`repack_candidate`): open it beneath the incoming
folder's descriptor (:func:`repack.plumbing.open_beneath`: no link followed, nothing
but a regular file), ``flock`` it (several services on one folder repack it
once), check that its name still holds that version, and ask who else holds
it (:meth:`repack.plumbing.SourceFile.others`, a lease test): a writer means later, any
other descriptor means a copy, never a link. Without a lease only a close, or
the parent's quiet period, lets a file through (:attr:`Candidate.closed`).

A child ignores SIGINT and SIGTERM and exits when its pipe closes, so it
finishes the file it holds even if the parent is killed (and then logs what
it finished itself); the parent kills a child that overruns a deadline or
stalls. Children run as batch work (:func:`yield_to_others`), so storescp
gets a core first.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, replace
from enum import StrEnum
from multiprocessing.connection import Connection
from pathlib import Path

from repack import (
    InvalidInstanceError,
    Layout,
    RefusedInstanceError,
    Repacked,
    Repacker,
    StorageError,
    configure_logging,
    get_logger,
)
from repack.plumbing import (
    Others,
    SourceFile,
    SourceVanishedError,
    collected_warnings,
    log_repacked,
    open_beneath,
    try_claim,
)

from ._completion import Candidate
from ._cube import cube_admits
from ._folders import Identity, IncomingRoot
from ._settings import Settings

__all__ = [
    "NotRepacked",
    "Outcome",
    "Result",
    "WorkerConfig",
    "WorkerProcess",
    "repack_candidate",
]


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker process needs to build its :class:`~repack.Repacker` (picklable)."""

    incoming: str
    datadir: str
    logdir: str
    templates: tuple[str, str, str, str]
    layout_name: str
    move: bool
    fsync: bool
    log_json: bool | None = None
    log_level: str = "info"
    #: Added to a worker process's niceness, with ``SCHED_BATCH`` (0: neither).
    nice: int = 0
    #: The CUBE destination is set: what CUBE would refuse never enters its storage.
    cube: bool = False
    #: ``--pacs-name-from caller``: a folder per sender, this name for a file naming none.
    by_sender: str | None = None

    @classmethod
    def of(cls, settings: Settings) -> WorkerConfig:
        return cls(
            str(settings.incoming), str(settings.datadir), str(settings.logdir),
            settings.layout.sources, settings.layout.name, settings.move, settings.fsync,
            log_json={"auto": None, "json": True, "console": False}[settings.log_format],
            log_level=settings.log_level, nice=settings.worker_nice,
            cube=settings.celery_broker is not None,
            by_sender=settings.pacs_name if settings.pacs_name_from == "caller" else None,
        )  # fmt: skip

    def repacker(self) -> Repacker:
        layout = Layout.from_sources(self.templates, self.layout_name)
        admit = cube_admits if self.cube else None
        return Repacker(
            self.datadir, self.logdir, layout, move=self.move, fsync=self.fsync, admit=admit,
            by_sender=self.by_sender, lease_test=True,  # the worker process ignores SIGIO
        )  # fmt: skip


class Outcome(StrEnum):
    """Why a file was not repacked (the routing table of :mod:`watcher._outcomes`)."""

    #: Another process holds its lock (another service, a one-shot): look again later.
    UNCLAIMED = "unclaimed"
    #: It changed since it was seen: leave it (its change brings a new event).
    CHANGED = "changed"
    #: A process still has it open for writing: look again later.
    BUSY = "busy"
    #: No lease could tell whether a writer holds it, and no close was seen.
    UNPROVEN = "unproven"
    VANISHED = "vanished"
    #: It can never be repacked: quarantine it.
    INVALID = "invalid"
    #: The file system refused: retry with back-off.
    STORAGE = "storage"
    #: A bug, or the worker died: retry, then quarantine.
    CRASHED = "crashed"


@dataclass(frozen=True)
class NotRepacked:
    """Why one file was not repacked, as it crosses back to the parent."""

    outcome: Outcome
    reason: str = ""
    message: str = ""
    errno: int | None = None
    #: pydicom's warnings about this file, each once.
    warnings: tuple[str, ...] = ()
    #: The series of an instance refused for CUBE (its LONK subject hears of it).
    series_uid: str | None = None
    #: And its sender's folder, with ``--pacs-name-from caller``.
    sender: str | None = None


#: What a worker answers for each file.
Result = Repacked | NotRepacked


def _refusal(source: SourceFile, *, closed: bool) -> Outcome | None:
    """Why this worker must not repack ``source`` now, or None when it may."""
    try:
        if not try_claim(source.descriptor):
            return Outcome.UNCLAIMED
    except OSError as error:
        raise StorageError(
            f"cannot lock {source.display()}: {error.strerror}", errno=error.errno
        ) from error
    if not source.unchanged():
        return Outcome.CHANGED
    others = source.others()
    if others is Others.WRITER:
        return Outcome.BUSY
    if others is Others.UNKNOWN and not closed:
        return Outcome.UNPROVEN
    return None


def repack_candidate(
    repacker: Repacker, root: IncomingRoot, identity: Identity, candidate: Candidate
) -> Result:
    """Claim and repack one candidate of the folder ``identity``; never raises."""
    descriptor = root.current(identity)
    if descriptor is None:  # the folder this file was seen in is no longer there
        return NotRepacked(Outcome.VANISHED)
    relative = root.relative(candidate.path)
    result: Result
    with collected_warnings() as warned:
        try:
            with open_beneath(descriptor, relative, shown_as=Path(candidate.path)) as source:
                refused = _refusal(source, closed=candidate.closed)
                result = NotRepacked(refused) if refused else repacker.repack_source(source)
        except SourceVanishedError:
            result = NotRepacked(Outcome.VANISHED)
        except InvalidInstanceError as error:
            refusal = error if isinstance(error, RefusedInstanceError) else None
            result = NotRepacked(
                Outcome.INVALID, reason=error.reason, message=str(error),
                series_uid=refusal.series_uid if refusal else None,
                sender=refusal.sender if refusal else None,
            )  # fmt: skip
        except StorageError as error:
            result = NotRepacked(Outcome.STORAGE, message=str(error), errno=error.errno)
        except Exception as error:  # a bug must not kill the worker or lose the file
            result = NotRepacked(Outcome.CRASHED, message=f"{type(error).__name__}: {error}")
    return replace(result, warnings=tuple(dict.fromkeys(warned))) if warned else result


# -- the worker process's side -------------------------------------------------


def _made_up_instance() -> bytes:
    """A small valid instance, as bytes, to rehearse on."""
    from pydicom.dataset import Dataset, FileMetaDataset  # noqa: PLC0415 - warm-up only
    from pydicom.uid import UID, ExplicitVRLittleEndian  # noqa: PLC0415
    from pydicom.uid import SecondaryCaptureImageStorage as SC  # noqa: PLC0415, N814

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SC
    ds.SOPInstanceUID = ds.StudyInstanceUID = ds.SeriesInstanceUID = UID("1.2.3.4")
    ds.PatientID, ds.PatientName, ds.SeriesNumber, ds.InstanceNumber = "W", "Warm^Up", 1, 1
    ds.Rows = ds.Columns = 1
    ds.BitsAllocated, ds.SamplesPerPixel, ds.PixelData = 8, 1, b"\0\0"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SC
    ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.3.4")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def warm_up(repacker: Repacker) -> None:
    """Rehearse one repack of a made-up instance held in memory (a ``memfd``).

    A fresh process imports and initialises what its first repack needs
    (pydicom's converters, character sets); doing it here keeps that pause
    off the first real files, and writes nothing anywhere.
    """
    descriptor = os.memfd_create("pypx-warm-up", os.MFD_CLOEXEC)
    try:
        os.pwrite(descriptor, _made_up_instance(), 0)
    except BaseException:
        os.close(descriptor)
        raise
    with SourceFile.unnamed(Path("<warm-up>"), descriptor) as source:
        repacker.rehearse(source)


def yield_to_others(nice: int) -> None:
    """Let this process have a core only after every ordinary process that wants one.

    storescp answers the sender only after each file is written, so the
    transfer waits whenever storescp waits for a core; repacking can wait a
    millisecond. ``SCHED_BATCH`` keeps this process from preempting others
    when it wakes, and ``nice`` (added to the service's own) lowers its share
    while they run. Neither needs a privilege.
    """
    if nice > 0:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
        os.nice(nice)


def serve(connection: Connection) -> None:
    """A worker process's life: read the config, warm up, then repack batches.

    Reports ``("ready", None)`` or ``("failed", reason)`` first; returns when
    the parent sends ``None`` or goes away.
    """
    try:
        config: WorkerConfig = connection.recv()
    except (EOFError, OSError):
        return
    try:
        yield_to_others(config.nice)
        configure_logging(json=config.log_json, level=config.log_level)
        repacker = config.repacker()
        root = IncomingRoot(Path(config.incoming))
        root.open()
        warm_up(repacker)
    except Exception as error:  # reported once by the parent, which then exits
        connection.send(("failed", f"{type(error).__name__}: {error}"))
        return
    connection.send(("ready", None))
    parent = os.getppid()
    while True:
        try:
            batch: tuple[Identity, list[Candidate]] | None = connection.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if batch is None:
            return
        identity, candidates = batch
        results: list[Result] = []
        for candidate in candidates:
            if os.getppid() != parent:
                # The parent died (SIGKILL, OOM) mid-batch: report what this batch
                # repacked, and start nothing more (the rest stays for a restart).
                _report_orphaned(results)
                return
            results.append(repack_candidate(repacker, root, identity, candidate))
        try:
            connection.send(results)
        except OSError:
            _report_orphaned(results)  # the parent died during the batch's last file
            return


def _report_orphaned(results: list[Result]) -> None:
    """Log the files repacked for a parent that died, on this process's own stdout.

    It inherited the service's event stream, so a monitor still sees every
    file that left the incoming folder.
    """
    log = get_logger()
    for result in results:
        if isinstance(result, Repacked):
            log_repacked(log, result.event_fields())


def worker_command(descriptor: int) -> list[str]:
    """How a worker process is started (``-P``: no script folder on its path)."""
    here = Path(__file__).resolve()
    return [sys.executable, "-P", str(here.with_name("_worker_main.py")), str(here.parent.parent),
            str(descriptor)]  # fmt: skip


class WorkerProcess:
    """One worker process, as its pool thread sees it: start, repack batches, stop."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self._process: subprocess.Popen[bytes] | None = None
        self._connection: Connection | None = None
        #: Why the process could not even be started (see :meth:`wait_ready`).
        self._start_failure: str | None = None

    def start(self) -> None:
        ours, theirs = socket.socketpair()
        with ours, theirs:
            command = worker_command(theirs.fileno())
            try:
                self._process = subprocess.Popen(
                    command, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL
                )
            except OSError as error:
                self._start_failure = (
                    f"cannot run the worker interpreter {command[0]}: {error.strerror or error}"
                )
                return
            self._start_failure = None
            self._connection = Connection(ours.detach())
        with contextlib.suppress(OSError):  # it died at once: wait_ready reports it
            self._connection.send(self.config)

    def wait_ready(self, timeout: float) -> str | None:
        """Wait until the process has warmed up; the reason it could not, or None."""
        if self._start_failure is not None:
            return self._start_failure
        if self._connection is None:
            return "the worker was not started"
        try:
            if not self._connection.poll(timeout):
                return f"it did not warm up within {timeout:.0f} s"
            state, detail = self._connection.recv()
        except (EOFError, OSError):
            return "the worker process exited during its start"
        return None if state == "ready" else str(detail)

    def repack(self, identity: Identity, candidates: list[Candidate]) -> list[Result]:
        """Repack a batch of candidates; one result each, in order (a new process if needed)."""
        if self._connection is None:
            self.start()
            problem = self.wait_ready(60)
            if problem is not None:
                self._restart()
                failed = NotRepacked(Outcome.CRASHED, message=f"worker did not start: {problem}")
                return [failed] * len(candidates)
        assert self._connection is not None  # noqa: S101 - started just above
        try:
            self._connection.send((identity, candidates))
            results: list[Result] = self._connection.recv()
        except (EOFError, OSError) as error:
            self._restart()
            crashed = NotRepacked(Outcome.CRASHED, message=f"worker process died: {error or 'EOF'}")
            return [crashed] * len(candidates)
        return results

    def _restart(self) -> None:
        self.stop(1.0)
        self._connection = None

    def kill(self, *, reap: bool = True) -> None:
        """Kill the process now (a stalled file, or a missed stop deadline).

        ``reap=False``: for a service that exits right after (its init reaps).
        """
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            if reap:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(1.0)  # reaped here: nothing is left a zombie

    def stop(self, timeout: float) -> None:
        if self._connection is not None:
            with contextlib.suppress(OSError):
                self._connection.send(None)
            self._connection.close()
            self._connection = None
        if self._process is not None:
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
            self._process = None
