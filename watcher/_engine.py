"""Where files are repacked: in worker processes, or in threads.

Repacking is CPU-bound Python (header parsing, value conversion), so threads
share one GIL and one core. In process mode each pool thread owns one child
process (started with ``spawn``, before any other thread exists in it) and
hands it one file at a time over a pipe; the child claims the file, repacks
it and answers with a small :class:`Result`. Events, series tracking and
metrics stay in the parent.

A child ignores SIGINT and SIGTERM (the parent decides when to stop) and
exits when its pipe closes, so it finishes the file it holds even if the
parent is killed, and never outlives it by more than that file.
"""

from __future__ import annotations

import contextlib
import errno as errno_codes
import fcntl
import multiprocessing
import os
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from repack import (
    InvalidInstanceError,
    Layout,
    Repacker,
    SourceVanishedError,
    StorageError,
)

__all__ = ["Engine", "EngineConfig", "Result", "repack_claimed"]


@dataclass(frozen=True)
class EngineConfig:
    """What a worker needs to build its :class:`~repack.Repacker` (picklable)."""

    datadir: str
    logdir: str
    templates: tuple[str, str, str, str]
    layout_name: str
    move: bool
    fsync: bool

    def repacker(self) -> Repacker:
        layout = Layout.from_sources(self.templates, self.layout_name)
        return Repacker(self.datadir, self.logdir, layout, move=self.move, fsync=self.fsync)


@dataclass(frozen=True)
class Result:
    """The outcome of one file, as it crosses back to the parent.

    ``kind`` is ``done``, ``unclaimed`` (another service holds it, or it
    changed), ``vanished``, ``invalid``, ``storage`` or ``crashed``.
    """

    kind: str
    event: dict[str, Any] = field(default_factory=dict)
    series: tuple[str, str, str, str] = ("", "", "", "")
    size: int = 0
    seconds: float = 0.0
    reason: str = ""
    message: str = ""
    errno: int | None = None


@contextlib.contextmanager
def _claim(path: str) -> Iterator[bool]:
    """Hold an exclusive flock on the incoming file while it is repacked.

    Several services on one folder then repack each file once; the lock dies
    with its process, so a crashed service never blocks a file.
    """
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        yield False
        return
    except OSError as error:
        raise StorageError(f"cannot open {path}: {error.strerror}", errno=error.errno) from error
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno in (errno_codes.EWOULDBLOCK, errno_codes.EAGAIN):
                yield False
                return
            raise StorageError(
                f"cannot lock {path}: {error.strerror}", errno=error.errno
            ) from error
        try:
            same = os.stat(path).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            same = False
        yield same
    finally:
        os.close(descriptor)


def repack_claimed(repacker: Repacker, path: str) -> Result:
    """Claim and repack one file; never raises."""
    started = time.perf_counter()
    try:
        with _claim(path) as claimed:
            if not claimed:
                return Result("unclaimed")
            outcome = repacker.repack(path)
    except SourceVanishedError:
        return Result("vanished")
    except InvalidInstanceError as error:
        return Result("invalid", reason=error.reason, message=str(error))
    except StorageError as error:
        return Result("storage", message=str(error), errno=error.errno)
    except Exception as error:  # a bug must not kill the worker or lose the file
        return Result("crashed", message=f"{type(error).__name__}: {error}")
    return Result(
        "done",
        event=outcome.event_fields(),
        series=(
            outcome.series_instance_uid,
            str(outcome.series_dir),
            outcome.patient_id,
            outcome.study_instance_uid,
        ),
        size=outcome.size,
        seconds=time.perf_counter() - started,
    )


def warm_up(config: EngineConfig) -> None:
    """Repack one throwaway instance in a temporary folder.

    The first repack in a fresh process imports and initialises what it
    needs (pydicom's converters, character sets); doing it here keeps that
    pause off the first real files.
    """
    from pydicom.dataset import Dataset, FileMetaDataset  # noqa: PLC0415 - warm-up only
    from pydicom.uid import (  # noqa: PLC0415
        UID,
        ExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
    )

    with tempfile.TemporaryDirectory(prefix="pypx-warm-up-") as folder:
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
        source = os.path.join(folder, "warm-up.dcm")
        ds.save_as(source, enforce_file_format=True)
        layout = Layout.from_sources(config.templates, config.layout_name)
        repacker = Repacker(os.path.join(folder, "data"), os.path.join(folder, "log"), layout)
        repack_claimed(repacker, source)


def _child(connection: Connection, config: EngineConfig) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    repacker = config.repacker()
    warm_up(config)
    connection.send("ready")
    while True:
        try:
            path = connection.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if path is None:
            return
        connection.send(repack_claimed(repacker, path))


class Engine:
    """Repacks one file at a time, in a child process or in the calling thread."""

    def __init__(self, config: EngineConfig, *, process: bool) -> None:
        self.config = config
        self.use_process = process
        self._repacker = None if process else config.repacker()
        self._process: Any = None
        self._connection: Connection | None = None

    def start(self) -> None:
        if not self.use_process:
            return
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self._process = context.Process(
            target=_child, args=(child, self.config), name="pypx-repack-worker", daemon=True
        )
        self._process.start()
        child.close()
        self._connection = parent

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the worker has warmed up; False if it did not in time."""
        if self._connection is None:
            if self._repacker is not None:
                warm_up(self.config)
            return True
        try:
            if self._connection.poll(timeout):
                return bool(self._connection.recv() == "ready")
        except (EOFError, OSError):
            pass
        return False

    def repack(self, path: str) -> Result:
        if self._repacker is not None:
            return repack_claimed(self._repacker, path)
        if self._connection is None:
            self.start()
            self.wait_ready(60)
        assert self._connection is not None  # noqa: S101 - started just above
        try:
            self._connection.send(path)
            result: Result = self._connection.recv()
        except (EOFError, OSError) as error:
            self._restart()
            return Result("crashed", message=f"worker process died: {error or 'EOF'}")
        return result

    def _restart(self) -> None:
        self.stop(1.0)
        self._connection = None

    def stop(self, timeout: float) -> None:
        if self._connection is not None:
            with contextlib.suppress(OSError):
                self._connection.send(None)
            self._connection.close()
            self._connection = None
        if self._process is not None:
            self._process.join(timeout)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(1.0)
            self._process = None
