"""The incoming folder is untrusted: attacks by whoever can write into it.

Each test is an attack that worked on an earlier version (see the README's
guarantee table): the service must never read, move or delete anything
outside its four folders, no single file may stop it, and its health must
not lie.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from repack import MalformedFileError, Repacker, TruncatedFileError
from repack._header import read_header

from .conftest import make_dataset, write_dicom
from .dcmtk import free_port
from .helpers import FAST, get, installed, thread_count, wait_for, worker_processes
from .listener import Listener, listener


class Outside:
    """Files outside the service's folders, and proof that they were not touched."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True)
        self.dicom = write_dicom(folder / "a.dcm")
        self.text = folder / "passwd"
        self.text.write_text("root:x:0:0:root:/root:/bin/bash\n")
        self._before = self._state()

    def _state(self) -> dict[str, tuple[int, bytes]]:
        return {p.name: (p.stat().st_ino, p.read_bytes()) for p in sorted(self.folder.iterdir())}

    def assert_untouched(self) -> None:
        assert self._state() == self._before


@pytest.fixture
def outside(tmp_path: Path) -> Outside:
    return Outside(tmp_path / "outside")


def notes(running: Listener) -> list[dict[str, object]]:
    return [orjson.loads(p.read_bytes()) for p in sorted(running.quarantine.glob("*.json"))]


def test_a_folder_swapped_for_a_link_mid_flight_reaches_nothing_outside(
    tmp_path: Path, outside: Outside
) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    shutil.copy(outside.dicom, staging / "a.dcm")
    shutil.copy(outside.text, staging / "passwd")
    # A long settle period: the swap happens while the service waits on the files.
    with listener(tmp_path, "--settle", "2", "--quarantine-after", "0.5",
                  "--scan-interval", "300", metrics=True) as running:  # fmt: skip
        depth = "pypx_listener_queue_depth"
        folder = running.incoming / "d"
        folder.mkdir()
        os.rename(staging / "a.dcm", folder / "a.dcm")
        os.rename(staging / "passwd", folder / "passwd")
        running.wait_for(lambda: running.metric(depth) == 2, 10, "both files to be waited on")
        shutil.rmtree(folder)
        folder.symlink_to(outside.folder)
        running.wait_for(lambda: running.count("repack.failed") == 1, 30, "the link set aside")
        # Past the settle period of both files: nothing is left to decide.
        running.wait_for(lambda: running.metric(depth) == 0, 30, "nothing left waiting")
        assert running.stop() == 0
    (failed,) = running.of("repack.failed")
    assert failed["reason"] == "not-a-regular-file"
    assert "symbolic link" in str(failed["error"])
    (note,) = notes(running)
    assert note["link_target"] == str(outside.folder)
    assert note["name_removed"] is True
    assert not os.path.lexists(folder)  # the link's name, only
    outside.assert_untouched()
    assert running.data_files() == []
    assert running.count("repack.done") == 0
    assert [p.suffix for p in running.quarantine.iterdir()] == [".json"]  # no outside file


def test_hard_links_to_outside_files_are_copied_never_linked(
    tmp_path: Path, outside: Outside
) -> None:
    with listener(tmp_path, *FAST) as running:
        os.link(outside.dicom, running.incoming / "x.dcm")
        os.link(outside.text, running.incoming / "h.dcm")
        running.wait_for(
            lambda: running.count("repack.done") == 1 and running.count("repack.failed") == 1,
            30,
            "one repacked, one quarantined",
        )
        assert running.stop() == 0
    (data,) = running.data_files()
    quarantined = Path(str(running.of("repack.failed")[0]["quarantined"]))
    assert data.stat().st_ino != outside.dicom.stat().st_ino
    assert quarantined.stat().st_ino != outside.text.stat().st_ino
    assert data.read_bytes() == outside.dicom.read_bytes()
    assert quarantined.read_bytes() == outside.text.read_bytes()
    assert data.stat().st_mode & 0o7111 == 0  # a copy never keeps set-ID or execute bits
    outside.assert_untouched()
    assert outside.dicom.stat().st_nlink == outside.text.stat().st_nlink == 1
    assert running.incoming_files() == []


def _special_files(incoming: Path, outside: Outside) -> Iterator[socket.socket]:
    """FIFOs, a socket, links and (as root) a device in ``incoming``."""
    os.mkfifo(incoming / "fifo-1.dcm")
    os.mkfifo(incoming / "fifo-2")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(incoming / "socket.dcm"))
    (incoming / "link.dcm").symlink_to(outside.dicom)
    (incoming / "folder-link").symlink_to(outside.folder)
    if os.geteuid() == 0:
        os.mknod(incoming / "null.dcm", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    yield server


def test_links_fifos_sockets_and_devices_are_never_opened_and_set_aside(
    tmp_path: Path, outside: Outside, dicom_factory: object
) -> None:
    (tmp_path / "incoming").mkdir()
    specials = _special_files(tmp_path / "incoming", outside)
    server = next(specials)
    expected = 6 if os.geteuid() == 0 else 5
    try:
        with listener(tmp_path, *FAST, "--workers", "2", "--stop-timeout", "5") as running:
            for index in range(5):
                write_dicom(running.incoming / f"MR.{index}")
            running.wait_for(
                lambda: (
                    running.count("repack.done") == 5 and running.count("repack.failed") == expected
                ),
                30,
                "5 repacked and every special name set aside",
            )
            assert running.stop(timeout=20) == 0
    finally:
        server.close()
    failed = running.of("repack.failed")
    assert {e["reason"] for e in failed} == {"not-a-regular-file"}
    types = sorted(str(n["type"]) for n in notes(running))
    assert types == sorted(
        ["FIFO", "FIFO", "socket", "symbolic link", "symbolic link"]
        + (["character device"] if os.geteuid() == 0 else [])
    )
    assert running.incoming_files() == []
    assert list(running.incoming.iterdir()) == []
    assert [p.suffix for p in running.quarantine.iterdir()] == [".json"] * expected
    outside.assert_untouched()


def test_pypx_repack_walks_past_fifos_and_links(tmp_path: Path, outside: Outside) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    os.mkfifo(folder / "fifo")
    (folder / "link.dcm").symlink_to(outside.dicom)
    (folder / "folder-link").symlink_to(outside.folder)
    write_dicom(folder / "MR.1")
    import subprocess  # noqa: PLC0415

    result = subprocess.run(
        [installed("pypx-repack"), "--datadir", str(tmp_path / "data"), "--cleanup", str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "1 repacked, 2 skipped" in result.stderr
    assert len(list((tmp_path / "data").rglob("*.dcm"))) == 1
    assert sorted(p.name for p in folder.iterdir()) == ["fifo", "folder-link", "link.dcm"]
    outside.assert_untouched()


def test_file_names_that_are_not_utf8_are_repacked_and_reported(tmp_path: Path) -> None:
    port = free_port()
    args = (*FAST, "--metrics-port", str(port), "--metrics-host", "127.0.0.1")
    with listener(tmp_path, *args) as running:
        incoming = os.fsencode(running.incoming)
        for index, name in enumerate([b"\xff\xfe.dcm", b"\xfe\xff-2.dcm", b"caf\xe9.dcm"]):
            write_dicom(
                Path(os.fsdecode(incoming + b"/" + name)), make_dataset(InstanceNumber=index)
            )
        Path(os.fsdecode(incoming + b"/\xff.txt")).write_bytes(b"not dicom" * 100)
        for index in range(3):
            write_dicom(running.incoming / f"MR.{index}")
        running.wait_for(
            lambda: running.count("repack.done") == 6 and running.count("repack.failed") == 1,
            30,
            "every file, whatever its name",
        )
        status, body = get(f"http://127.0.0.1:{port}/healthz")
        assert (status, orjson.loads(body)["alive"]) == (200, True)
        assert running.stop() == 0
    sources = sorted(str(e["src"]) for e in running.of("repack.done"))
    assert any(s.endswith("/\\xff\\xfe.dcm") for s in sources)
    assert any(s.endswith("/caf\\xe9.dcm") for s in sources)
    (failed,) = running.of("repack.failed")
    assert str(failed["src"]).endswith("/\\xff.txt")
    (note,) = notes(running)
    assert str(note["relative_path"]) == "\\xff.txt"
    assert running.incoming_files() == []
    assert "Traceback" not in running.stderr
    assert "Exception in thread" not in running.stderr


def test_warming_a_worker_up_writes_nothing_anywhere(tmp_path: Path) -> None:
    from watcher._child import warm_up  # noqa: PLC0415

    repacker = Repacker(tmp_path / "data", tmp_path / "log")
    written: list[tuple[str, object]] = []
    watching = [True]
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def audit(event: str, args: tuple[object, ...]) -> None:
        if not watching[0]:
            return
        if event == "open" and len(args) >= 3:
            mode, flags = args[1], args[2]
            if (isinstance(mode, str) and set(mode) & set("wax+")) or (
                isinstance(flags, int) and flags & writes
            ):
                written.append((event, args[0]))
        elif event in ("os.mkdir", "os.link", "os.rename", "os.remove", "os.symlink"):
            written.append((event, args[0]))

    sys.addaudithook(audit)
    try:
        warm_up(repacker)
    finally:
        watching[0] = False
    assert written == []
    assert list(tmp_path.iterdir()) == []


def test_a_worker_that_cannot_start_is_reported_once_and_the_service_does_not_start(
    tmp_path: Path,
) -> None:
    from watcher import EXIT_STARTUP, ConfigError, Service, parse_settings  # noqa: PLC0415
    from watcher._workers import WorkerConfig, WorkerProcess  # noqa: PLC0415

    settings = parse_settings(
        [*("--incoming", str(tmp_path / "in"), "--datadir", str(tmp_path / "d")),
         *("--logdir", str(tmp_path / "l"), "--quarantine", str(tmp_path / "q")),
         "--workers", "1"],
        environ={},
    )  # fmt: skip
    service = Service(settings)
    # A worker whose repacker cannot be built (a template only a bug could let through).
    broken = WorkerConfig(str(tmp_path / "in"), str(tmp_path / "d"), str(tmp_path / "l"),
                          ("%_pad|x_PatientID", "s", "s", "s"), "custom", True, True)  # fmt: skip
    service.workers = [WorkerProcess(broken)]
    with pytest.raises(ConfigError, match="a repack worker could not start") as raised:
        service.start()
    assert raised.value.exit_code == EXIT_STARTUP
    assert "TemplateError" in str(raised.value)
    assert not service.watching.is_set()


def _sparse_dicom(path: Path, size: int) -> Path:
    """A valid file meta header followed by ``size`` bytes of nothing (a sparse file)."""
    write_dicom(path, make_dataset())
    header = path.read_bytes()
    meta_end = 132 + 12 + int.from_bytes(header[140:144], "little")
    with open(path, "r+b") as handle:
        handle.truncate(meta_end)
        handle.truncate(meta_end + size)
    return path


def test_a_sparse_file_of_gigabytes_is_refused_after_bounded_work(tmp_path: Path) -> None:
    path = _sparse_dicom(tmp_path / "sparse.dcm", 2 * 1024**3)
    code = (
        "import sys\nfrom repack import read_instance, MalformedFileError\n"
        "try:\n    read_instance(sys.argv[1], ['PatientID'])\n"
        "except MalformedFileError as error:\n    print(error)\n"
    )
    import subprocess  # noqa: PLC0415

    # The bound is a guard against a hang, not a timing: the work itself is
    # bounded by counting reads (an earlier version read for 35 minutes).
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "reads: not a DICOM header" in result.stdout


def test_a_value_longer_than_the_file_is_decided_on_its_header(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "cut.dcm")
    data = path.read_bytes()
    position = data.rindex(b"\xe0\x7f\x10\x00")  # PixelData
    lied = data[: position + 8] + (2**31).to_bytes(4, "little") + data[position + 12 :]
    path.write_bytes(lied)
    with open(path, "rb") as handle, pytest.raises(TruncatedFileError, match="declares"):
        read_header(handle.fileno(), len(lied), frozenset({0x00100020}))


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns while the test writes it
def test_a_huge_name_value_is_refused_without_being_loaded(tmp_path: Path) -> None:
    import tracemalloc  # noqa: PLC0415

    from pydicom.uid import ImplicitVRLittleEndian  # noqa: PLC0415

    ds = make_dataset()
    ds.PatientName = "A" * (16 * 1024 * 1024)
    path = write_dicom(tmp_path / "big.dcm", ds)
    # Implicit VR: a 32-bit length for any element, as a hostile sender may write.
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=True)
    tracemalloc.start()
    try:
        with pytest.raises(MalformedFileError, match="far too long"):
            Repacker(tmp_path / "data").repack(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024  # the 16 MB value was never read
    assert path.exists()


@pytest.mark.slow
def test_sigterm_returns_within_the_stop_timeout_even_with_a_stuck_worker(tmp_path: Path) -> None:
    running = Listener(
        tmp_path, *FAST, "--workers", "1", "--stop-timeout", "2", metrics=True
    ).start()
    try:
        assert running.process is not None
        (worker,) = worker_processes(running.process.pid)
        os.kill(worker, signal.SIGSTOP)  # stuck, as on a file that never ends
        source = write_dicom(running.incoming / "MR.stuck")
        running.wait_for(
            lambda: running.metric("pypx_listener_workers_busy") == 1, 10, "the stuck worker"
        )
        code = running.stop(timeout=20)  # fails the test (and kills) if it hangs
    finally:
        running.kill()
    assert code == 0
    (stopped,) = running.of("watcher.stopped")
    assert stopped["clean"] is False
    assert source.exists()  # nothing lost: still there for the next start


def closed_by_peer(connection: socket.socket) -> bool:
    try:
        return connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True


def healthy(base: str) -> bool:
    try:
        return get(base + "/healthz", timeout=2)[0] == 200
    except OSError:  # refused while at the connection cap
        return False


@pytest.mark.slow
def test_the_metrics_server_answers_health_through_a_flood_of_idle_connections(
    tmp_path: Path,
) -> None:
    from watcher._http import REQUEST_TIMEOUT  # noqa: PLC0415

    port = free_port()
    args = ("--metrics-port", str(port), "--metrics-host", "127.0.0.1")
    with listener(tmp_path, *args) as running:
        assert running.process is not None
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: get(base + "/healthz")[0] == 200, 20, "/healthz")
        before = thread_count(running.process.pid)
        idle = []
        try:
            for _ in range(300):
                connection = socket.create_connection(("127.0.0.1", port), timeout=5)
                idle.append(connection)
            # No thread per connection, and health answers while they are all open.
            assert thread_count(running.process.pid) == before
            for _ in range(5):
                assert healthy(base)
            # Idle connections are dropped after the request timeout.
            wait_for(
                lambda: all(closed_by_peer(c) for c in idle),
                REQUEST_TIMEOUT + 20,
                "the idle connections to be closed",
            )
        finally:
            for connection in idle:
                connection.close()
        assert running.stop() == 0
