"""The worker process's side: settle in, warm up, then repack the batches its parent sends.

Started by :mod:`watcher._worker_main` (which sets the signals before this
heavy import). A child ignores SIGINT and SIGTERM and exits when its pipe
closes, so it finishes the file it holds even if the parent is killed (and
then logs what it finished itself). Children run as batch work
(:func:`yield_to_others`), so storescp gets a core first.
"""

from __future__ import annotations

import io
import os
from multiprocessing.connection import Connection
from pathlib import Path

from repack import Repacked, Repacker, configure_logging, get_logger
from repack.plumbing import SourceFile, log_repacked

from ._claim import Result, repack_candidate
from ._completion import Candidate
from ._folders import Identity, IncomingRoot
from ._workers import WorkerConfig


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
