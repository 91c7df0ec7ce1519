"""Liveness and truthful health: no stuck file, no endless retry, health that tells the truth."""

from __future__ import annotations

import contextlib
import io
import os
import select
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import orjson
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian

from watcher import EXIT_OUTPUT_LOST

from .conftest import make_dataset, write_dicom
from .dcmtk import free_port
from .helpers import (
    FAST,
    fill,
    fill_pipe,
    get,
    installed,
    kernel_setting,
    metric,
    read_until,
    small_filesystem,
    wait_for,
    worker_processes,
)
from .listener import listener


def health(base: str) -> tuple[int, dict[str, object]]:
    status, body = get(base + "/healthz")
    return status, orjson.loads(body)


@pytest.mark.slow
def test_health_fails_while_a_worker_is_stuck_and_recovers_once_it_is_restarted(
    tmp_path: Path,
) -> None:
    port = free_port()
    args = (*FAST, "--workers", "1", "--stall-timeout", "2", "--metrics-port", str(port),
            "--metrics-host", "127.0.0.1")  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    with listener(tmp_path, *args) as running:
        assert running.process is not None
        wait_for(lambda: health(base)[0] == 200, 20, "/healthz")
        (worker,) = worker_processes(running.process.pid)
        os.kill(worker, signal.SIGSTOP)  # stuck on the next file
        write_dicom(running.incoming / "MR.1")
        wait_for(lambda: health(base)[0] == 503, 20, "/healthz to report the stuck worker")
        problems = health(base)[1]["problems"]
        assert any("on one file for more than 2 s" in str(p) for p in problems)
        # The stuck worker process is killed and replaced; the file is repacked.
        running.wait_for(lambda: running.count("repack.done") == 1, 30, "the file, after all")
        wait_for(lambda: health(base)[0] == 200, 20, "/healthz to recover")
        assert running.stop() == 0
    (stalled,) = running.of("worker.stalled")
    assert stalled["level"] == "error"
    assert stalled["action"] == "killed"


@pytest.mark.parametrize(
    "name",
    ["é" * 120 + ".txt", "x" * 249 + ".txt"],  # 244 bytes in 124 characters; 253 bytes
    ids=["multibyte-244-bytes", "ascii-253-bytes"],
)
def test_a_bad_file_with_a_long_name_is_quarantined_not_retried_forever(
    tmp_path: Path, name: str
) -> None:
    with listener(tmp_path, *FAST) as running:
        (running.incoming / name).write_bytes(b"not dicom" * 100)
        running.wait_for(lambda: running.count("repack.failed") == 1, 30, "quarantine")
        assert running.stop() == 0
    assert running.count("repack.retry") == 0
    (failed,) = running.of("repack.failed")
    quarantined = Path(str(failed["quarantined"]))
    assert quarantined.read_bytes() == b"not dicom" * 100
    note = Path(f"{quarantined}.json")
    assert len(os.fsencode(note.name)) <= 255
    assert orjson.loads(note.read_bytes())["relative_path"] == name


def failing(port: int) -> float:
    return metric(get(f"http://127.0.0.1:{port}/metrics")[1], "pypx_listener_files_failing")


@pytest.mark.slow
def test_repeated_failures_are_errors_with_their_errno_and_counted(tmp_path: Path) -> None:
    port = free_port()
    with small_filesystem(tmp_path / "small") as small:
        args = (*FAST, "--quarantine", str(small / "q"), "--retry-max-delay", "0.3",
                "--metrics-port", str(port), "--metrics-host", "127.0.0.1")  # fmt: skip
        with listener(tmp_path, *args) as running:
            filler = fill(small)
            (running.incoming / "junk.bin").write_bytes(b"junk" * 5000)
            running.wait_for(lambda: running.count("repack.stuck") == 1, 30, "repack.stuck")
            wait_for(lambda: failing(port) == 1, 5, "the failing gauge")
            filler.unlink()  # space returns
            running.wait_for(lambda: running.count("repack.failed") == 1, 30, "quarantine")
            wait_for(lambda: failing(port) == 0, 5, "the failing gauge to clear")
            assert running.stop() == 0
    retries = running.of("repack.retry")
    assert retries
    assert {e["errno"] for e in retries} == {"ENOSPC"}
    (stuck,) = running.of("repack.stuck")
    assert stuck["level"] == "error"
    assert stuck["errno"] == "ENOSPC"
    assert stuck["repeated"] == 5


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_data_and_log_folders_removed_mid_series_are_made_again(
    tmp_path: Path, workers: str
) -> None:
    # One worker: the one that remembers the series (and its locks folder) meets the loss.
    first = make_dataset()
    same = {
        "StudyInstanceUID": first.StudyInstanceUID,
        "SeriesInstanceUID": first.SeriesInstanceUID,
    }
    with listener(tmp_path, *FAST, "--workers", workers) as running:
        for index in range(3):
            write_dicom(running.incoming / f"MR.{index}",
                        make_dataset(InstanceNumber=index, **same))  # fmt: skip
        running.wait_for(lambda: running.count("repack.done") == 3, 30, "the first three")
        shutil.rmtree(running.data)
        shutil.rmtree(running.log)
        running.data.mkdir()  # as an operator might, or not
        for index in range(3, 6):
            write_dicom(running.incoming / f"MR.{index}",
                        make_dataset(InstanceNumber=index, **same))  # fmt: skip
        running.wait_for(lambda: running.count("repack.done") == 6, 30, "the next three")
        assert running.stop() == 0
    assert running.of("repack.retry") == []
    assert len(running.data_files()) == 3
    seriesdata = running.log / "seriesData"
    assert len(list(seriesdata.glob("*-img/*.json"))) == 3
    assert len(list(seriesdata.glob("*-meta.json"))) == 1
    assert len(list(seriesdata.glob("*-pack.json"))) == 1
    assert len(list((running.log / "studyData").glob("*-meta.json"))) == 1
    assert len(list((running.log / "patientData").glob("*.json"))) == 1


def test_an_incoming_folder_renamed_and_made_again_is_watched_again(tmp_path: Path) -> None:
    port = free_port()
    args = (*FAST, "--metrics-port", str(port), "--metrics-host", "127.0.0.1")
    ready = f"http://127.0.0.1:{port}/readyz"
    with listener(tmp_path, *args) as running:
        wait_for(lambda: get(ready)[0] == 200, 20, "ready")
        old = tmp_path / "incoming.old"
        running.incoming.rename(old)
        running.incoming.mkdir()
        running.wait_for(lambda: running.count("watcher.rearmed") == 1, 10, "watcher.rearmed")
        write_dicom(running.incoming / "MR.new")
        write_dicom(old / "MR.old")  # no longer ours
        # The periodic scan is 300 s away: only the new watch can find it.
        running.wait_for(lambda: running.count("repack.done") == 1, 20, "the new file")
        assert get(ready)[0] == 200
        # A link in its place is not a folder to watch: not ready, and said why.
        shutil.rmtree(running.incoming)
        running.incoming.symlink_to(old)
        assert get(ready)[0] == 503  # the folder probe never follows the link
        wait_for(lambda: "missing or not a folder" in get(ready)[1], 10, "the watcher's reason")
        status, body = get(ready)
        assert status == 503
        problems = orjson.loads(body)["problems"]
        assert any("is a symbolic link, not a folder" in str(p) for p in problems)
        running.incoming.unlink()
        running.incoming.mkdir()
        wait_for(lambda: get(ready)[0] == 200, 10, "/readyz to recover")
        assert running.stop() == 0
    (done,) = running.of("repack.done")
    assert str(done["src"]).endswith("/incoming/MR.new")
    assert (old / "MR.old").exists()
    assert running.count("watcher.incoming_lost") == 1


def _text_report_pieces() -> tuple[bytes, bytes]:
    """A Basic Text SR (no pixel data) as bytes, cut at an element boundary."""
    ds = make_dataset(SOPClassUID=BasicTextSRStorage, Rows=None, Columns=None,
                      BitsAllocated=None, BitsStored=None, HighBit=None, PixelData=None,
                      SamplesPerPixel=None, PhotometricInterpretation=None,
                      PixelRepresentation=None)  # fmt: skip
    head = io.BytesIO()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(head, enforce_file_format=True)
    ds.add_new(0x00FF0010, "LO", "a last element, written after a pause")
    whole = io.BytesIO()
    ds.save_as(whole, enforce_file_format=True)
    first, full = head.getvalue(), whole.getvalue()
    assert full.startswith(first)  # the first piece ends exactly at an element boundary
    return first, full[len(first) :]


def test_a_file_still_open_for_writing_is_not_repacked_even_when_it_looks_complete(
    tmp_path: Path,
) -> None:
    first, rest = _text_report_pieces()
    with listener(tmp_path, *FAST, "--log-level", "debug") as running:
        target = running.incoming / "SR.paused"
        with open(target, "wb") as writer:
            writer.write(first)
            writer.flush()
            # A pause past the settle period, the file still open: it is looked at, and left.
            running.wait_for(lambda: running.count("repack.busy") >= 1, 30, "repack.busy")
            assert running.count("repack.done") == 0
            writer.write(rest)
        running.wait_for(lambda: running.count("repack.done") == 1, 20, "the closed file")
        assert running.stop() == 0
    (done,) = running.of("repack.done")
    assert done["size"] == len(first) + len(rest)
    assert running.count("repack.failed") == 0


def test_a_metrics_port_in_use_fails_before_the_service_announces_itself(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [installed("pypx-listener"), "--incoming", str(tmp_path / "i"), "--datadir",
             str(tmp_path / "d"), "--logdir", str(tmp_path / "l"), "--quarantine",
             str(tmp_path / "q"), "--metrics-port", str(port), "--metrics-host", "127.0.0.1",
             "--log-format", "json"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 3
    assert "watcher.started" not in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("pypx-listener: error: --metrics-port")
    assert lines[1].startswith("pypx-listener: hint:")


def test_the_inotify_limit_fails_the_start_with_a_hint(tmp_path: Path) -> None:
    with kernel_setting(Path("/proc/sys/fs/inotify/max_user_instances"), 0):
        result = subprocess.run(
            [installed("pypx-listener"), "--incoming", str(tmp_path / "i"), "--datadir",
             str(tmp_path / "d"), "--logdir", str(tmp_path / "l"), "--quarantine",
             str(tmp_path / "q"), "--log-format", "json"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 3
    assert "watcher.started" not in result.stdout
    assert "inotify" in result.stderr
    assert "--polling" in result.stderr


def test_pydicom_warnings_are_one_event_each(tmp_path: Path) -> None:
    with listener(tmp_path, *FAST) as running:
        with pytest.warns(UserWarning, match="ISO_IR 999"):  # the test writes it, too
            write_dicom(
                running.incoming / "MR.odd", make_dataset(SpecificCharacterSet="ISO_IR 999")
            )
        running.wait_for(lambda: running.count("repack.done") == 1, 30, "the odd file")
        assert running.stop() == 0
    warned = running.of("repack.warning")
    assert warned
    messages = [str(e["warning"]) for e in warned]
    assert len(messages) == len(set(messages))  # each once
    assert any("ISO_IR 999" in m for m in messages)
    assert all(e["src"].endswith("/MR.odd") for e in warned)  # type: ignore[union-attr]
    assert running.stderr == ""  # nothing raw beside the JSON lines


def test_copy_mode_quarantines_same_named_bad_files_apart(tmp_path: Path) -> None:
    with listener(tmp_path, *FAST, "--mode", "copy") as running:
        for folder in ("a", "b"):
            (running.incoming / folder).mkdir()
            (running.incoming / folder / "bad.txt").write_text(f"not dicom from {folder}")
        running.wait_for(lambda: running.count("repack.failed") == 2, 30, "both quarantined")
        assert running.stop() == 0
    contents = sorted(Path(str(e["quarantined"])).read_text() for e in running.of("repack.failed"))
    assert contents == ["not dicom from a", "not dicom from b"]
    assert len(running.incoming_files()) == 2  # copy mode keeps them


def test_a_closed_event_stream_stops_the_service_cleanly_and_loses_no_file(
    tmp_path: Path, example_files: list[Path]
) -> None:
    """The log reader goes away (``pypx-listener | head -1``): a clean stop, status 141."""
    incoming = tmp_path / "incoming"
    process = subprocess.Popen(
        [installed("pypx-listener"), "--incoming", str(incoming),
         "--datadir", str(tmp_path / "data"), "--logdir", str(tmp_path / "log"),
         "--quarantine", str(tmp_path / "quarantine"), "--log-format", "json",
         "--settle", "0.3", "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        assert process.stderr is not None
        deadline, seen = time.monotonic() + 60, b""
        # Its start-up events all written (the sweep's comes last), so the next line is the file's.
        while b"watcher.started" not in seen or b"housekeeping.swept" not in seen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "pypx-listener did not start"
            if select.select([process.stdout], [], [], remaining)[0]:
                chunk = os.read(process.stdout.fileno(), 65536)
                assert chunk, "pypx-listener closed its output before it started"
                seen += chunk
        process.stdout.close()  # the reader goes away
        shutil.copy(example_files[0], incoming / "MR.after-the-reader-left")
        code = process.wait(30)  # its repack.done cannot be written: the service stops
        stderr = process.stderr.read().decode()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
        if process.stderr is not None:
            process.stderr.close()
    assert code == EXIT_OUTPUT_LOST, stderr
    assert "the event stream (stdout) was closed" in stderr
    assert "hint:" in stderr
    assert "Traceback" not in stderr
    assert len(list((tmp_path / "data").rglob("*.dcm"))) == 1  # repacked, not lost
    assert not (incoming / "MR.after-the-reader-left").exists()


def _blocked_writing_events(pid: int, thread: int | None = None) -> bool:
    """Whether a thread of ``pid`` (the main one, or any) is inside a write(2) to stdout."""
    if thread is None:
        tasks = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    else:
        tasks = [thread]
    for task in tasks:
        try:
            call = Path(f"/proc/{pid}/task/{task}/syscall").read_text().split()
        except OSError:
            continue
        if len(call) > 1 and call[0] == "1" and int(call[1], 16) == 1:
            return True
    return False


def test_a_signal_during_start_up_while_events_are_written_stops_the_service(
    tmp_path: Path,
) -> None:
    """SIGTERM at start, while the main thread waits inside an event write: a clean stop.

    Nobody reads the event stream at first, and hundreds of misspelt
    ``PYPX_LISTENER_*`` variables make the main thread warn until the pipe is
    full. Then SIGTERM, then the stream is read: the service starts, stops,
    and says so (it used to die of the signal, before its handling was set).
    """
    env = {**os.environ, **{f"PYPX_LISTENER_TYPO_{n}": "x" for n in range(1_500)}}
    folders = [f"--{name}={tmp_path / name}" for name in ("incoming", "datadir", "logdir")]
    process = subprocess.Popen(
        [installed("pypx-listener"), *folders, f"--quarantine={tmp_path / 'q'}", *FAST],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        wait_for(
            lambda: _blocked_writing_events(process.pid, process.pid),
            30,
            "the event stream to fill up",
        )
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):  # it hung: it and its workers go
            os.killpg(process.pid, signal.SIGKILL)
        if process.returncode is None:
            process.communicate(timeout=10)
    assert process.returncode == 0, err.decode(errors="replace")
    events = [orjson.loads(line)["event"] for line in out.splitlines()]
    assert events.count("watcher.unknown_setting") == 1_500
    assert "watcher.stopping" in events
    assert events[-1] == "watcher.stopped"


def test_a_second_signal_exits_at_once_even_while_the_event_stream_is_stalled(
    tmp_path: Path,
) -> None:
    """Two SIGTERMs while nobody reads the events: the second ends the service at once.

    Once the service runs, the test fills its event pipe itself, so every
    event write waits. The first signal asks for a stop; the second must kill
    the workers and exit, whatever the waiting threads hold. A signal handler
    that logged ran inside the first one's blocked write and waited forever
    for the lock its own thread held.
    """
    read_end, write_end = os.pipe()
    folders = [f"--{name}={tmp_path / name}" for name in ("incoming", "datadir", "logdir")]
    process = subprocess.Popen(
        [installed("pypx-listener"), *folders, f"--quarantine={tmp_path / 'q'}", *FAST],
        stdout=write_end, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    filler = -1
    workers: list[int] = []
    try:
        read_until(read_end, b'"watcher.started"')
        workers = worker_processes(process.pid)
        filler = fill_pipe(write_end)
        process.send_signal(signal.SIGTERM)
        wait_for(lambda: _blocked_writing_events(process.pid), 30, "a write to the full stream")
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 128 + signal.SIGTERM
        for worker in workers:
            wait_for(lambda w=worker: not Path(f"/proc/{w}").exists(), 10, "the workers to die")
    finally:
        with contextlib.suppress(ProcessLookupError):  # whatever is left of it goes
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        for descriptor in (filler, read_end, write_end):
            if descriptor >= 0:
                os.close(descriptor)
