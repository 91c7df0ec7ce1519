"""Where files are repacked: in worker processes, or in threads.

Repacking is CPU-bound Python (header parsing, value conversion), so threads
share one GIL and one core. In process mode each pool thread owns one child
process (``python -P .../watcher/_worker.py``, a fresh interpreter) and hands it a
batch of files at a time over a socket pair; the child claims each file,
repacks it and answers with a small :class:`Result` per file. Events, series
tracking and metrics stay in the parent.

Claiming a file (:func:`repack_claimed`), in this order:

1. open it beneath the incoming folder's descriptor (:func:`repack.open_beneath`:
   no link is followed, nothing but a regular file is opened);
2. take an ``flock`` on it, so that several services on one folder repack
   each instance once (the lock dies with its process);
3. check that its name still holds that same version;
4. ask who else holds it open (:meth:`repack.SourceFile.others`, a lease
   test): a writer means it may still grow (a pause at an element boundary
   looks like a complete file), so it is looked at again later; any other
   descriptor means it is copied, never linked, into the data tree. Where
   no lease can be taken (another owner without ``CAP_LEASE``, network file
   systems) only a close event, or a quiet period the parent measures, lets
   the file through (:attr:`Job.closed`).

A child ignores SIGINT and SIGTERM (the parent decides when to stop) and
exits when its pipe closes, so it finishes the file it holds even if the
parent is killed, and then reports the files it finished for that parent
itself; the parent kills a child that overruns a stop deadline or stalls on
one file. A child runs as batch work at a lower priority
(:func:`yield_to_others`), so that storescp gets a core first.
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import fcntl
import io
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from enum import StrEnum
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, NamedTuple

from repack import (
    InvalidInstanceError,
    Layout,
    Others,
    Repacker,
    SourceFile,
    SourceVanishedError,
    StorageError,
    configure_logging,
    get_logger,
    line_renderer,
    line_writer,
    open_beneath,
)

from ._incoming import Identity, IncomingRoot

__all__ = [
    "Engine",
    "EngineConfig",
    "Job",
    "Outcome",
    "Result",
    "SeriesRef",
    "install_warning_collector",
    "repack_claimed",
]


@dataclass(frozen=True)
class EngineConfig:
    """What a worker needs to build its :class:`~repack.Repacker` (picklable)."""

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

    def repacker(self) -> Repacker:
        layout = Layout.from_sources(self.templates, self.layout_name)
        return Repacker(self.datadir, self.logdir, layout, move=self.move, fsync=self.fsync)


class Outcome(StrEnum):
    """What became of one file."""

    DONE = "done"
    #: Another process holds its lock (another service, a one-shot): look again later.
    UNCLAIMED = "unclaimed"
    #: It changed since it was seen: leave it (its change brings a new event).
    CHANGED = "changed"
    #: A process still has it open for writing: look again later.
    BUSY = "busy"
    #: No lease could tell whether a writer holds it, and no close was seen:
    #: wait until it has been quiet long enough.
    UNPROVEN = "unproven"
    VANISHED = "vanished"
    #: It can never be repacked: quarantine it.
    INVALID = "invalid"
    #: The file system refused: retry with back-off.
    STORAGE = "storage"
    #: A bug, or the worker died: retry, then quarantine.
    CRASHED = "crashed"


class Job(NamedTuple):
    """One file for a worker: its path below the incoming folder, which folder, which try."""

    relative: str
    root: Identity
    attempt: int = 0
    #: Its writer closed it, or it has been quiet long enough: no lease is needed.
    closed: bool = False


class SeriesRef(NamedTuple):
    """The series (and instance) a repacked file belongs to."""

    series_uid: str
    folder: str
    patient_id: str
    study_uid: str
    sop_uid: str


@dataclass(frozen=True)
class Result:
    """The outcome of one file, as it crosses back to the parent."""

    outcome: Outcome
    #: The ``repack.done`` event's fields (empty when ``line`` holds it rendered).
    event: dict[str, Any] = field(default_factory=dict)
    #: The ``repack.done`` event as its JSON line, rendered by the worker.
    line: bytes | None = None
    series: SeriesRef | None = None
    size: int = 0
    seconds: float = 0.0
    reason: str = ""
    message: str = ""
    errno: int | None = None
    #: pydicom's warnings about this file, each once.
    warnings: tuple[str, ...] = ()


# -- pydicom's warnings, per file -------------------------------------------

_collecting = threading.local()


class _PydicomLogHandler(logging.Handler):
    """pydicom's log records: into the current file's list, else on to the root."""

    def emit(self, record: logging.LogRecord) -> None:
        bucket: list[str] | None = getattr(_collecting, "messages", None)
        if bucket is None:
            logging.getLogger().handle(record)
        elif record.levelno >= logging.WARNING:
            bucket.append(record.getMessage())


def install_warning_collector() -> None:
    """Route pydicom's warnings and log records into the file being repacked.

    pydicom reports each problem twice (a log record and a warning with the
    same text); collected per file and deduplicated, each becomes one
    ``repack.warning`` event in the parent, the same in thread and process
    mode. Outside a repack they go where they went before.
    """
    pydicom_logger = logging.getLogger("pydicom")
    if not any(isinstance(h, _PydicomLogHandler) for h in pydicom_logger.handlers):
        pydicom_logger.addHandler(_PydicomLogHandler())
        pydicom_logger.propagate = False
    previous = warnings.showwarning
    if getattr(previous, "collects_per_file", False):
        return

    def show(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        bucket: list[str] | None = getattr(_collecting, "messages", None)
        if bucket is None:
            previous(message, category, *args, **kwargs)
        else:
            bucket.append(str(message))

    show.collects_per_file = True  # type: ignore[attr-defined]
    warnings.showwarning = show
    # A warning of the same place is shown each time: each file gets its own.
    warnings.filterwarnings("always", category=UserWarning, module=r"pydicom(\.|$)")


@contextlib.contextmanager
def _collected() -> Iterator[list[str]]:
    messages: list[str] = []
    _collecting.messages = messages
    try:
        yield messages
    finally:
        _collecting.messages = None


# -- claiming and repacking one file -----------------------------------------


def _claim(source: SourceFile, *, closed: bool) -> Outcome | None:
    """Why this worker must not repack ``source`` now, or None when it may."""
    try:
        fcntl.flock(source.descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno_codes.EWOULDBLOCK, errno_codes.EAGAIN):
            return Outcome.UNCLAIMED
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


def repack_claimed(
    repacker: Repacker, root: int, relative: str, shown_as: Path, *, closed: bool = False
) -> Result:
    """Claim and repack the file ``relative`` below the folder ``root``; never raises.

    ``closed``: its writer is known to have closed it (see :attr:`Job.closed`).
    """
    started = time.perf_counter()
    with _collected() as warned:
        result = _repack(repacker, root, relative, shown_as, closed)
    if result.outcome is Outcome.DONE:
        result = replace(result, seconds=time.perf_counter() - started)
    if warned:
        result = replace(result, warnings=tuple(dict.fromkeys(warned)))
    return result


def _repack(repacker: Repacker, root: int, relative: str, shown_as: Path, closed: bool) -> Result:
    try:
        with open_beneath(root, relative, shown_as=shown_as) as source:
            refused = _claim(source, closed=closed)
            if refused is not None:
                return Result(refused)
            outcome = repacker.repack_source(source)
    except SourceVanishedError:
        return Result(Outcome.VANISHED)
    except InvalidInstanceError as error:
        return Result(Outcome.INVALID, reason=error.reason, message=str(error))
    except StorageError as error:
        return Result(Outcome.STORAGE, message=str(error), errno=error.errno)
    except Exception as error:  # a bug must not kill the worker or lose the file
        return Result(Outcome.CRASHED, message=f"{type(error).__name__}: {error}")
    return Result(
        Outcome.DONE,
        event=outcome.event_fields(),
        series=SeriesRef(
            outcome.series_instance_uid,
            str(outcome.series_dir),
            outcome.patient_id,
            outcome.study_instance_uid,
            outcome.sop_instance_uid,
        ),
        size=outcome.size,
    )


# -- warming up ---------------------------------------------------------------


def _made_up_instance() -> bytes:
    """A small valid instance, as bytes, to rehearse on."""
    from pydicom.dataset import Dataset, FileMetaDataset  # noqa: PLC0415 - warm-up only
    from pydicom.uid import (  # noqa: PLC0415
        UID,
        ExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
    )

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.StudyInstanceUID = ds.SeriesInstanceUID = UID("1.2.3.4")
    ds.PatientID, ds.PatientName, ds.SeriesNumber, ds.InstanceNumber = "W", "Warm^Up", 1, 1
    ds.Rows = ds.Columns = 1
    ds.BitsAllocated, ds.SamplesPerPixel, ds.PixelData = 8, 1, b"\0\0"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = UID("1.2.3.4")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def warm_up(repacker: Repacker) -> None:
    """Rehearse one repack of a made-up instance held in memory (a ``memfd``).

    The first repack in a fresh process imports and initialises what it
    needs (pydicom's converters, character sets); doing it here keeps that
    pause off the first real files, and writes nothing anywhere.
    """
    descriptor = os.memfd_create("pypx-warm-up", os.MFD_CLOEXEC)
    try:
        os.pwrite(descriptor, _made_up_instance(), 0)
    except BaseException:
        os.close(descriptor)
        raise
    with SourceFile.unnamed(Path("<warm-up>"), descriptor) as source:
        repacker.rehearse(source)


# -- engines ------------------------------------------------------------------


Renderer = Callable[..., bytes | None]


def _render(result: Result, job: Job, renderer: Renderer | None) -> Result:
    """Render a done file's event line here, so the parent only writes bytes."""
    if renderer is None or result.outcome is not Outcome.DONE:
        return result
    fields = dict(result.event)
    if job.attempt:
        fields["attempt"] = job.attempt
    return replace(result, event={}, line=renderer("repack.done", **fields))


def _prepare(repacker: Repacker, root: IncomingRoot, config: EngineConfig) -> Renderer | None:
    """A worker's start, in either mode: open the incoming folder, warm up, get the renderer."""
    root.open()
    warm_up(repacker)
    return line_renderer(config.log_level)


def serve(connection: Connection) -> None:
    """A worker process's life: read the config, warm up, then repack batches.

    Reports ``("ready", None)`` or ``("failed", reason)`` first; returns when
    the parent sends ``None`` or goes away.
    """
    try:
        config: EngineConfig = connection.recv()
    except (EOFError, OSError):
        return
    try:
        yield_to_others(config.nice)
        configure_logging(json=config.log_json, level=config.log_level)
        install_warning_collector()
        repacker = config.repacker()
        root = IncomingRoot(Path(config.incoming))
        renderer = _prepare(repacker, root, config)
    except Exception as error:  # reported once by the parent, which then exits
        connection.send(("failed", f"{type(error).__name__}: {error}"))
        return
    connection.send(("ready", None))
    parent = os.getppid()
    while True:
        try:
            jobs: list[Job] | None = connection.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if jobs is None:
            return
        results: list[Result] = []
        for job in jobs:
            if os.getppid() != parent:
                # The parent died (SIGKILL, OOM) mid-batch. Report what this
                # batch already repacked, and start nothing more: the rest stays
                # where another service, or this one restarted, finds it.
                _report_orphaned(results)
                return
            results.append(_render(_run(repacker, root, job), job, renderer))
        try:
            connection.send(results)
        except OSError:
            _report_orphaned(results)  # the parent died during the batch's last file
            return


def _report_orphaned(results: list[Result]) -> None:
    """Write the events of files repacked for a parent that died, on this worker's own stdout.

    The worker inherited the service's event stream, so a monitor still sees
    every file that left the incoming folder, even when the service was
    killed before it could report the batch.
    """
    write_lines = line_writer()
    log = get_logger()
    for result in results:
        if result.outcome is not Outcome.DONE:
            continue  # nothing happened to the file: whoever takes it next reports it
        if result.line is not None and write_lines is not None:
            write_lines(result.line)
        else:
            log.info("repack.done", **result.event)


def yield_to_others(nice: int) -> None:
    """Let this worker process have a core only after every ordinary process that wants one.

    storescp answers the sender only after each file is written, so the
    transfer waits whenever storescp (or a local storescu) waits for a core;
    repacking is throughput work that can wait a millisecond. ``SCHED_BATCH``
    keeps this process from preempting others when it wakes, and ``nice``
    (added to the service's own, as ``nice -n`` does) lowers its share while
    they run. Neither needs a privilege. Between containers the CPU is shared
    by cgroup weight first, so this orders it within one container (the
    supervised storescp) or one machine.
    """
    if nice <= 0:
        return
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    os.nice(nice)


def _run(repacker: Repacker, root: IncomingRoot, job: Job) -> Result:
    descriptor = root.current(job.root)
    if descriptor is None:  # the folder this file was seen in is no longer there
        return Result(Outcome.VANISHED)
    return repack_claimed(
        repacker, descriptor, job.relative, root.path / job.relative, closed=job.closed
    )


def worker_command(descriptor: int) -> list[str]:
    """How a worker process is started (``-P``: no script folder on its path)."""
    here = Path(__file__).resolve()
    return [sys.executable, "-P", str(here.with_name("_worker.py")), str(here.parent.parent),
            str(descriptor)]  # fmt: skip


class Engine:
    """Repacks one file at a time, in a child process or in the calling thread."""

    def __init__(self, config: EngineConfig, *, process: bool) -> None:
        self.config = config
        self.use_process = process
        self._repacker = None if process else config.repacker()
        self._root = None if process else IncomingRoot(Path(config.incoming))
        self._process: subprocess.Popen[bytes] | None = None
        self._connection: Connection | None = None
        self._renderer: Renderer | None = None
        #: Why the worker process could not even be started (see :meth:`wait_ready`).
        self._start_failure: str | None = None

    def start(self) -> None:
        if not self.use_process:
            return
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
        """Wait until the worker has warmed up; the reason it could not, or None."""
        if self._start_failure is not None:
            return self._start_failure
        if self._connection is None:
            if self._repacker is None or self._root is None:
                return "the worker was not started"
            try:
                self._renderer = _prepare(self._repacker, self._root, self.config)
            except Exception as error:
                return f"{type(error).__name__}: {error}"
            return None
        try:
            if not self._connection.poll(timeout):
                return f"it did not warm up within {timeout:.0f} s"
            state, detail = self._connection.recv()
        except (EOFError, OSError):
            return "the worker process exited during its start"
        return None if state == "ready" else str(detail)

    def repack(self, jobs: list[Job]) -> list[Result]:
        """Repack a batch of files; one result per job, in order."""
        if self._repacker is not None and self._root is not None:
            repacker, root, renderer = self._repacker, self._root, self._renderer
            return [_render(_run(repacker, root, job), job, renderer) for job in jobs]
        if self._connection is None:
            self.start()
            problem = self.wait_ready(60)
            if problem is not None:
                self._restart()
                crashed = Result(Outcome.CRASHED, message=f"worker did not start: {problem}")
                return [crashed] * len(jobs)
        assert self._connection is not None  # noqa: S101 - started just above
        try:
            self._connection.send(jobs)
            results: list[Result] = self._connection.recv()
        except (EOFError, OSError) as error:
            self._restart()
            crashed = Result(Outcome.CRASHED, message=f"worker process died: {error or 'EOF'}")
            return [crashed] * len(jobs)
        return results

    def _restart(self) -> None:
        self.stop(1.0)
        self._connection = None

    def kill(self) -> None:
        """Kill the worker process now (a stalled file, or a missed stop deadline)."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
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
                self._process.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._process.wait(1.0)
            self._process = None
        if self._root is not None:
            self._root.close()
