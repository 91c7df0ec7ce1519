"""Defects found in the field: deployments, a hostile local user, pypx's readers during ingest.

Each test here reproduces one defect of the field-hardening issue against a
real service (or the real ``pypx-repack``) and fails on the code before its
fix.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import shutil
import signal
import site
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from repack import Repacker
from repack._sanitize import safe_log_name

from .conftest import make_dataset, run_cli, write_dicom
from .dcmtk import free_port
from .helpers import fill_pipe, get, installed, metric, read_until, small_filesystem, wait_for
from .listener import listener
from .workload import plan, write_workload

pytestmark = pytest.mark.slow


# -- re-sends across file systems ----------------------------------------------


def test_an_instance_sent_again_is_repacked_when_incoming_and_data_are_separate_mounts(
    tmp_path: Path, example_files: list[Path]
) -> None:
    """Every compose and Kubernetes layout: the incoming volume is not the data volume.

    linkat says EEXIST for the repacked copy first and EXDEV for a temporary
    name next: the second copy must fall back to a copy, as the first did.
    """
    with small_filesystem(tmp_path / "spool", "16m") as spool:
        incoming = spool / "incoming"
        incoming.mkdir()
        args = ("--incoming", str(incoming), "--settle", "0.2", "--retry-max-delay", "0.5")
        with listener(tmp_path, *args) as running:
            for round_number in (1, 2, 3):
                for path in example_files[:3]:
                    shutil.copy(path, incoming / f"MR.{path.stem}")
                running.wait_for(
                    lambda n=round_number: running.count("repack.done") == 3 * n,
                    30,
                    f"round {round_number} repacked",
                )
            assert running.count("repack.retry") == 0
            assert running.stop() == 0
        assert running.incoming_files() == []
    data = sorted(running.data.rglob("*.dcm"))
    assert len(data) == 3
    assert sorted(p.read_bytes() for p in data) == sorted(p.read_bytes() for p in example_files[:3])


# -- probes: a name planted where the service proves a folder writable ------------

#: The service as PID 1 of a PID namespace of its own, as in every container.
AS_PID_1 = ("unshare", "--pid", "--fork", "--mount-proc", "--kill-child")
FOLDERS = ("incoming", "data", "log", "quarantine")


def _plant(tmp_path: Path, kind: str, outside: Path) -> list[Path]:
    """Plant, in each of the four folders, what a predictable probe name would open."""
    planted = []
    for name in FOLDERS:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        for probe in (".pypx-tmp-probe-1", ".pypx-tmp-probe-2"):
            target = folder / probe
            if kind == "link":
                target.symlink_to(outside)
            elif kind == "fifo":
                os.mkfifo(target)
            else:
                target.mkdir()
            planted.append(target)
    return planted


@pytest.mark.parametrize("kind", ["link", "fifo", "folder"])
def test_names_planted_at_the_start_up_probe_are_never_opened(tmp_path: Path, kind: str) -> None:
    """A link is not followed (the outside file keeps its bytes), a FIFO cannot hang the
    start, a folder cannot make the service refuse to start."""
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious\n")
    planted = _plant(tmp_path, kind, outside)
    with listener(tmp_path, prefix=AS_PID_1) as running:
        assert running.of("watcher.started")[0]["pid"] == 1
        running.kill()
    assert outside.read_bytes() == b"precious\n"
    assert all(os.path.lexists(path) for path in planted)


def test_readiness_never_writes_through_an_incoming_folder_replaced_by_a_link(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    port = free_port()
    args = ("--metrics-port", str(port), "--metrics-host", "127.0.0.1")
    with listener(tmp_path, *args) as running:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: get(base + "/readyz")[0] == 200, 20, "/readyz")
        running.incoming.rename(tmp_path / "incoming.old")
        running.incoming.symlink_to(outside)
        before = os.stat(outside).st_mtime_ns
        for _ in range(5):
            status, body = get(base + "/readyz")
            assert status == 503
            assert "symbolic link" in body or "not a folder" in body
        # A name made and removed in a folder changes its mtime.
        assert os.stat(outside).st_mtime_ns == before
        assert list(outside.iterdir()) == []
        assert running.stop() == 0


# -- pypx-repack and a link to an outside folder ------------------------------------


def test_pypx_repack_cleanup_refuses_a_link_to_a_folder_named_on_its_command_line(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside"
    files = [write_dicom(outside / f"MR.{n}") for n in range(3)]
    before = {path: path.read_bytes() for path in files}
    given = tmp_path / "given"
    given.mkdir()
    (given / "linkdir").symlink_to(outside)
    data = tmp_path / "data"
    refused = run_cli("--datadir", data, "--cleanup", given / "linkdir")
    assert refused.returncode == 2
    assert "symbolic link to a folder" in refused.stderr
    assert "hint:" in refused.stderr
    assert {path: path.read_bytes() for path in files} == before
    assert not data.exists() or list(data.rglob("*.dcm")) == []
    # Without --cleanup the link is followed for reading only: copies, the originals stay.
    copied = run_cli("--datadir", data, given / "linkdir")
    assert copied.returncode == 0, copied.stderr
    assert len(list(data.rglob("*.dcm"))) == 3
    assert {path: path.read_bytes() for path in files} == before


# -- a sender keeps no write access to its repacked file ----------------------------


def _write_through(descriptor: int) -> None:
    """What the sender does after the repack: open its descriptor again, for writing."""
    with open(f"/proc/self/fd/{descriptor}", "r+b") as again:
        again.write(b"TAMPERED")


@pytest.mark.parametrize("how", ["another owner", "a descriptor held open"])
def test_a_sender_keeps_no_write_access_to_its_repacked_file(tmp_path: Path, how: str) -> None:
    """An inode the service cannot prove its own is copied into a file it owns."""
    staged = write_dicom(tmp_path / "staged" / "MR.1")
    original = staged.read_bytes()
    if how == "another owner":
        os.chown(staged, 65534, 65534)
    with listener(tmp_path, "--settle", "0.2") as running:
        descriptor = os.open(staged, os.O_RDONLY)
        try:
            staged.rename(running.incoming / "MR.1")  # same file system: the same inode
            running.wait_for(lambda: running.count("repack.done") == 1, 20, "repack.done")
            (repacked,) = running.data_files()
            assert repacked.stat().st_ino != os.fstat(descriptor).st_ino
            assert repacked.stat().st_uid == os.geteuid()
            _write_through(descriptor)
        finally:
            os.close(descriptor)
        assert repacked.read_bytes() == original
        assert running.stop() == 0


def test_a_file_nobody_else_holds_is_still_linked_not_copied(tmp_path: Path) -> None:
    """The common case keeps its speed: storescp's own file, closed, is linked."""
    staged = write_dicom(tmp_path / "staged" / "MR.1")
    inode = staged.stat().st_ino
    with listener(tmp_path, "--settle", "0.2") as running:
        staged.rename(running.incoming / "MR.1")
        running.wait_for(lambda: running.count("repack.done") == 1, 20, "repack.done")
        assert running.stop() == 0
    (repacked,) = running.data_files()
    assert repacked.stat().st_ino == inode


# -- without lease rights, a file whose writer may come back is not cut -----------

AS_NOBODY = ("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups")


def _non_image_in_two_parts() -> tuple[bytes, bytes]:
    """A non-image instance (a text SR: no pixel data to prove it whole), split at an
    element boundary after its three UIDs, so that its first part looks complete."""
    ds = make_dataset(SOPClassUID="1.2.840.10008.5.1.4.1.1.88.11")
    for keyword in ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
                    "PixelRepresentation", "SamplesPerPixel", "PhotometricInterpretation",
                    "PixelData"):  # fmt: skip
        if keyword in ds:
            delattr(ds, keyword)
    ds.ImageComments = "x" * 2000  # LT: a long value, within its VR
    with tempfile.TemporaryDirectory() as scratch:
        whole = write_dicom(Path(scratch) / "whole", ds).read_bytes()
        head_ds = copy.deepcopy(ds)
        for element in list(head_ds):
            if element.tag > 0x0020000E:
                del head_ds[element.tag]
        head = write_dicom(Path(scratch) / "head", head_ds).read_bytes()
    assert whole.startswith(head)
    assert len(head) < len(whole)
    return head, whole[len(head) :]


@pytest.fixture
def unprivileged_root() -> Iterator[Path]:
    """Folders for a service running as nobody (pytest's own temporary folders are 0700).

    nobody must also reach the checkout and its venv: a folder on their way that
    others may not search (CI clones into a private mktemp folder) is made
    searchable (not readable) for the test, and restored after.
    """
    root = Path(tempfile.mkdtemp(prefix="pypx-nobody-"))
    for name in FOLDERS:
        (root / name).mkdir()
        os.chown(root / name, 65534, 65534)
    os.chmod(root / "incoming", 0o1777)  # noqa: S103 - a shared spool: others write into it
    os.chmod(root, 0o755)  # noqa: S103 - nobody must reach the folders
    checkout = Path(__file__).resolve().parent.parent
    private = [p for p in (checkout, *checkout.parents) if not p.stat().st_mode & 0o001]
    modes = {p: p.stat().st_mode & 0o7777 for p in private}
    for folder, mode in modes.items():
        os.chmod(folder, mode | 0o001)
    try:
        yield root
    finally:
        for folder, mode in modes.items():
            os.chmod(folder, mode)
        shutil.rmtree(root, ignore_errors=True)


def test_without_lease_rights_a_paused_writer_is_not_cut_at_an_element_boundary(
    unprivileged_root: Path,
) -> None:
    """The service runs as nobody; root writes a non-image with one descriptor and
    pauses where the file looks complete: no lease can prove the writer is still there,
    so no close event means no repack until it has been quiet for --unleased-settle."""
    head, tail = _non_image_in_two_parts()
    args = ("--settle", "0.2", "--quarantine-after", "60", "--unleased-settle", "60",
            "--log-level", "debug")  # fmt: skip
    with listener(unprivileged_root, *args, prefix=AS_NOBODY) as running:
        path = running.incoming / "SR.1"
        with open(path, "wb") as writer:
            writer.write(head)
            writer.flush()
            # Settled, looked at without a lease, and left until a close or 60 s of quiet.
            running.wait_for(lambda: running.count("repack.unproven") >= 1, 30, "unproven")
            assert running.count("repack.done") == 0, "cut while its writer held it"
            writer.write(tail)
        running.wait_for(lambda: running.count("repack.done") == 1, 20, "repack at the close")
        assert running.stop() == 0
    (done,) = running.of("repack.done")
    assert done["size"] == len(head) + len(tail)
    (repacked,) = running.data_files()
    assert repacked.read_bytes() == head + tail


def test_without_lease_rights_a_quiet_file_without_a_close_event_is_repacked_later(
    unprivileged_root: Path,
) -> None:
    """A file whose close watchdog missed (a new subfolder's first file) still goes,
    once it has not changed for --unleased-settle seconds."""
    head, tail = _non_image_in_two_parts()
    staged = unprivileged_root / "staged"
    staged.write_bytes(head + tail)  # root's file: no lease for nobody
    args = ("--settle", "0.2", "--unleased-settle", "1.5")
    with listener(unprivileged_root, *args, prefix=AS_NOBODY) as running:
        started = time.monotonic()
        staged.rename(running.incoming / "SR.1")  # no close event: only a move
        running.wait_for(lambda: running.count("repack.done") == 1, 20, "repack.done")
        assert time.monotonic() - started >= 1.5
        assert running.stop() == 0


# -- files that cannot progress never stop the others ---------------------------------

FUTURE = time.time() + 365 * 86400


def _junk(folder: Path, count: int, *, mtime: float = FUTURE) -> list[Path]:
    made = []
    for n in range(count):
        path = folder / f"junk.{n:05d}"
        path.write_bytes(b"not DICOM at all\n" * 8)
        os.utime(path, (mtime, mtime))
        made.append(path)
    return made


def test_junk_with_a_future_mtime_is_quarantined_after_the_quarantine_delay(
    tmp_path: Path,
) -> None:
    args = ("--settle", "0.2", "--quarantine-after", "1", "--scan-interval", "1")
    with listener(tmp_path, *args) as running:
        _junk(running.incoming, 3)
        running.wait_for(lambda: running.count("repack.failed") == 3, 15, "3 quarantined")
        assert running.stop() == 0
    assert running.incoming_files() == []
    assert {e["reason"] for e in running.of("repack.failed")} == {"not-dicom"}


def test_junk_that_fills_the_pending_limit_does_not_starve_a_good_file(tmp_path: Path) -> None:
    """Junk waiting out its quarantine delay holds half the pending limit at most; a
    good file announced by its close gets in at once, and the junk still all goes."""
    args = ("--settle", "0.2", "--quarantine-after", "2", "--scan-interval", "1",
            "--pending-limit", "40", "--log-level", "debug")  # fmt: skip
    with listener(tmp_path, *args) as running:
        _junk(running.incoming, 100)
        # The junk is read, found bad and held (the rest waits on disk).
        running.wait_for(lambda: running.count("repack.incomplete") >= 20, 10, "junk held")
        write_dicom(running.incoming / "MR.good")
        running.wait_for(lambda: running.count("repack.done") == 1, 5, "the good file")
        running.wait_for(lambda: running.count("repack.failed") == 100, 60, "all junk quarantined")
        assert running.stop() == 0
    assert running.incoming_files() == []


def test_a_file_locked_by_another_process_stays_visible_until_it_is_repacked(
    tmp_path: Path,
) -> None:
    """Another service or a one-shot holds its flock: it is still a file waiting, in the
    queue depth and the age of the oldest, and it goes once the lock is released."""
    port = free_port()
    args = ("--settle", "0.2", "--metrics-port", str(port), "--metrics-host", "127.0.0.1")
    staged = write_dicom(tmp_path / "staged" / "MR.1")
    with listener(tmp_path, *args) as running:
        base = f"http://127.0.0.1:{port}"
        with open(staged, "rb") as holder:
            fcntl.flock(holder, fcntl.LOCK_EX)
            staged.rename(running.incoming / "MR.1")
            wait_for(
                lambda: (
                    metric(get(base + "/metrics")[1], "pypx_listener_oldest_unprocessed_seconds")
                    > 1.5
                ),
                20,
                "the locked file to be counted as waiting",
            )
            assert metric(get(base + "/metrics")[1], "pypx_listener_queue_depth") == 1
            assert running.count("repack.done") == 0
        running.wait_for(lambda: running.count("repack.done") == 1, 20, "repack once unlocked")
        assert running.stop() == 0


# -- the health answer under a slow-client attack ----------------------------------


def test_health_stays_reachable_while_slow_clients_trickle_their_requests(
    tmp_path: Path,
) -> None:
    """40 clients send a request a byte at a time, reconnecting when dropped: each read
    is quick, so a per-read timeout never fires; the probe must still be answered."""
    port = free_port()
    args = ("--metrics-port", str(port), "--metrics-host", "127.0.0.1")
    with listener(tmp_path, *args):
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: get(base + "/healthz")[0] == 200, 20, "/healthz")
        stop = threading.Event()
        connected: list[int] = []

        def trickle() -> None:
            while not stop.is_set():
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=2) as slow:
                        connected.append(1)
                        for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 10_000:
                            slow.send(bytes([byte]))
                            if stop.wait(0.2):
                                return
                except OSError:
                    continue  # dropped: connect again, as an attacker would

        attackers = [threading.Thread(target=trickle, daemon=True) for _ in range(40)]
        for attacker in attackers:
            attacker.start()
        try:
            wait_for(lambda: len(connected) >= 40, 10, "every attacker connected")
            answered = 0
            for _ in range(10):
                status, _body = get(base + "/healthz", timeout=1)
                answered += status == 200
        finally:
            stop.set()
            for attacker in attackers:
                attacker.join(5)
        assert answered == 10


# -- a blocked event stream ------------------------------------------------------------


def test_a_blocked_event_stream_fails_health_and_sigterm_still_exits_in_time(
    tmp_path: Path,
) -> None:
    """stdout is a pipe nobody reads: repacking waits on it (events are never dropped),
    /healthz says so, one SIGTERM exits within --stop-timeout, and no file is lost."""
    from watcher._service import OUTPUT_BLOCKED_S  # noqa: PLC0415

    port = free_port()
    read_end, write_end = os.pipe()
    folders = {name: tmp_path / name for name in ("incoming", "datadir", "logdir", "quarantine")}
    process = subprocess.Popen(
        [installed("pypx-listener"), *(f"--{k}={v}" for k, v in folders.items()),
         "--settle", "0.2", "--stop-timeout", "3", "--metrics-port", str(port),
         "--metrics-host", "127.0.0.1"],
        stdout=write_end, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    filler = -1
    try:
        read_until(read_end, b'"watcher.started"')
        wait_for(lambda: get(f"http://127.0.0.1:{port}/healthz")[0] == 200, 20, "/healthz")
        filler = fill_pipe(write_end)
        sent = [write_dicom(folders["incoming"] / f"MR.{n}") for n in range(20)]
        wait_for(
            lambda: "event stream" in get(f"http://127.0.0.1:{port}/healthz")[1],
            OUTPUT_BLOCKED_S + 20,
            "/healthz to report the blocked event stream",
        )
        assert get(f"http://127.0.0.1:{port}/healthz")[0] == 503
        asked = time.monotonic()
        process.send_signal(signal.SIGTERM)
        code = process.wait(3 + 5)
        assert time.monotonic() - asked <= 3 + 1.5
        assert code == 128 + signal.SIGTERM
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        for descriptor in (filler, read_end, write_end):
            if descriptor >= 0:
                os.close(descriptor)
    # Nothing lost: each instance is still waiting, or repacked with its image log.
    waiting = {p.name for p in folders["incoming"].iterdir()}
    repacked = list(folders["datadir"].rglob("*.dcm"))
    assert len(waiting) + len(repacked) == len(sent)
    assert len(list(folders["logdir"].glob("seriesData/*-img/*.json"))) == len(repacked)


# -- memory is bounded by what a worker loads, not by the file ---------------------


def _sparse_header_bomb(path: Path, count: int = 16_000, length: int = 64_000) -> int:
    """A valid non-image instance followed by ``count`` private OB values of ``length``
    bytes each, just under the deferral size, all holes on disk; returns its size."""
    head, tail = _non_image_in_two_parts()
    with path.open("wb") as out:
        out.write(head + tail)
        group, element = 0x7001, 0x1000
        out.write(struct.pack("<HH2sH", group, 0x0010, b"LO", 4) + b"PYPX")
        for _ in range(count):
            if element > 0x10FF:  # this creator's block is full: the next private group
                group, element = group + 2, 0x1000
                out.write(struct.pack("<HH2sH", group, 0x0010, b"LO", 4) + b"PYPX")
            out.write(struct.pack("<HH2sHI", group, element, b"OB", 0, length))
            out.seek(length, os.SEEK_CUR)
            element += 1
        out.truncate()
        return out.tell()


def test_one_file_cannot_make_a_worker_load_more_than_the_bound(tmp_path: Path) -> None:
    from repack._full_read import MAX_LOADED_BYTES  # noqa: PLC0415

    bomb = tmp_path / "incoming" / "SR.bomb"
    bomb.parent.mkdir()
    size = _sparse_header_bomb(bomb)
    assert size > 1_000_000_000
    assert os.stat(bomb).st_blocks * 512 < 100_000_000  # holes: almost nothing on disk
    measured = subprocess.run(
        [sys.executable, "-c",
         "import resource, subprocess, sys;"
         "code = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
         "print(code.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss);"
         "print(code.stderr, file=sys.stderr)",
         installed("pypx-repack"), "--datadir", str(tmp_path / "data"),
         "--logdir", str(tmp_path / "log"), str(bomb)],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    code, peak_kib = map(int, measured.stdout.split())
    assert code == 1, measured.stderr
    assert f"more than {MAX_LOADED_BYTES >> 20} MiB" in measured.stderr
    assert peak_kib * 1024 < MAX_LOADED_BYTES + 150_000_000
    assert bomb.exists()  # refused, untouched


# -- pypx's readers during ingest ------------------------------------------------------


@pytest.mark.parity
def test_pypx_readers_never_find_a_parent_whose_children_are_missing(
    tmp_path: Path, px_output: Path
) -> None:
    """px-status's reads of pypx 3.10.16, in a loop while the service ingests 200 new
    studies: no exception, and no patient, study or series that leads to nothing."""
    python = px_output.parent / "pypx" / "bin" / "python"
    stopfile = tmp_path / "stop"
    with listener(tmp_path, "--settle", "0.2") as running:
        running.log.mkdir(parents=True, exist_ok=True)
        reader = subprocess.Popen(
            [str(python), str(Path(__file__).with_name("pypx_reader.py")), str(running.log),
             str(stopfile)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            staged = write_workload(tmp_path / "staged", plan(4, 50, 1, 1))
            # Ten new studies at a time, each batch repacked before the next: the readers
            # read throughout, whatever the speed of the machine.
            for start in range(0, len(staged), 10):
                for path in staged[start : start + 10]:
                    path.rename(running.incoming / path.name)
                running.wait_for(
                    lambda n=start + 10: running.count("repack.done") == n, 60, "a batch"
                )
        finally:
            stopfile.touch()
            out, err = reader.communicate(timeout=120)
        assert running.stop() == 0
    assert reader.returncode == 0, err
    result = json.loads(out)
    assert result["reads"] >= 40, result  # at least two reads while each batch came in
    assert result["errors"] == 0, result["first_errors"]
    assert result["dangling"] == 0, result["first_dangling"]


# -- names that sanitise alike never share a file -----------------------------------


def test_a_nul_inside_a_uid_never_makes_it_another_uid(tmp_path: Path) -> None:
    """``1.2.3\\x004`` is not ``1.2.34``: both instances keep their data file and log."""
    series = make_dataset()
    first = write_dicom(tmp_path / "in" / "a", make_dataset(
        SOPInstanceUID="1.2.3\x004", StudyInstanceUID=series.StudyInstanceUID,
        SeriesInstanceUID=series.SeriesInstanceUID))  # fmt: skip
    second = write_dicom(tmp_path / "in" / "b", make_dataset(
        SOPInstanceUID="1.2.34", StudyInstanceUID=series.StudyInstanceUID,
        SeriesInstanceUID=series.SeriesInstanceUID))  # fmt: skip
    repacker = Repacker(tmp_path / "data", tmp_path / "log")
    outcomes = [repacker.repack(first), repacker.repack(second)]
    assert outcomes[0].dst != outcomes[1].dst
    assert str(outcomes[0].dst).endswith("1.2.3_4.dcm")
    assert len(list((tmp_path / "data").rglob("*.dcm"))) == 2
    assert len(list((tmp_path / "log").glob("seriesData/*-img/*.json"))) == 2
    assert safe_log_name("1.2.3\x004") != safe_log_name("1.2.34")
    assert safe_log_name("a/b") != safe_log_name("a_b") == "a_b"


def test_a_multi_valued_patient_id_names_no_log_file_after_a_python_list(
    tmp_path: Path,
) -> None:
    source = write_dicom(tmp_path / "in" / "a", PatientID=["a", "b", "..", ".."])
    Repacker(tmp_path / "data", tmp_path / "log").repack(source)
    (patient,) = (tmp_path / "log" / "patientData").iterdir()
    assert "[" not in patient.name
    assert "'" not in patient.name
    assert patient.name.startswith("a_b_.._..-")
    # The file's content keeps px's value, as px's readers compare it.
    assert list(orjson.loads(patient.read_bytes())) == ["['a', 'b', '..', '..']"]


# -- a worker interpreter that cannot be run --------------------------------------------


def test_a_worker_interpreter_that_cannot_be_run_is_one_line_and_exit_3(tmp_path: Path) -> None:
    """The service runs from an interpreter it may not execute (started through the
    dynamic loader, as some sandboxes do): its workers cannot start."""
    loader = next(iter(sorted(Path("/").glob("lib*/ld-linux*.so.*"))), None)
    assert loader is not None, "no dynamic loader found"
    interpreter = tmp_path / "bin" / "python3"
    interpreter.parent.mkdir()
    shutil.copy(os.path.realpath(sys.executable), interpreter)
    interpreter.chmod(0o644)  # readable, not executable
    root = Path(__file__).resolve().parent.parent
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONHOME": sys.base_prefix,
        "PYTHONPATH": os.pathsep.join([*site.getsitepackages(), str(root)]),
    }
    result = subprocess.run(
        [str(loader), str(interpreter), "-c",
         "import sys; sys.argv = ['pypx-listener']; from watcher._cli import main; main()"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2
    assert "cannot run the worker interpreter" in lines[0]
    assert "Permission denied" in lines[0]
    assert lines[1].startswith("pypx-listener: hint: ")
    assert '"watcher.started"' not in result.stdout


# -- the level of repack.done -----------------------------------------------------------


@pytest.mark.parametrize("level", ["debug", "info"])
def test_repack_done_is_an_info_event_whatever_the_configured_level(
    tmp_path: Path, level: str
) -> None:
    """The worker rendered it at the configured level: "debug" under --log-level debug."""
    with listener(tmp_path, "--settle", "0.2", "--log-level", level) as running:
        write_dicom(running.incoming / "MR.1")
        running.wait_for(lambda: running.count("repack.done") == 1, 20, "repack.done")
        assert running.stop() == 0
    assert running.of("repack.done")[0]["level"] == "info"


@pytest.mark.parametrize(("level", "shown"), [("warning", False), ("debug", True)])
def test_repack_done_is_left_out_below_info(level: str, *, shown: bool) -> None:
    """Under --log-level warning it was printed anyway, labelled "warning"."""
    code = (
        "import sys; from repack import configure_logging;"
        "from repack import get_logger; from repack.plumbing import log_repacked;"
        f"configure_logging(json=True, level={level!r});"
        "log_repacked(get_logger(), {'src': 'x'})"
    )
    lines = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=60, check=True).stdout.splitlines()  # fmt: skip
    assert [orjson.loads(line)["level"] for line in lines] == (["info"] if shown else [])
