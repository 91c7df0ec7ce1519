"""watcher._workers: claiming one file, and the parent's side of a worker process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from repack import Layout, Repacked
from repack.plumbing import open_beneath
from watcher._claim import NotRepacked, Outcome, _refusal, repack_candidate
from watcher._completion import Candidate, signature_of
from watcher._folders import IncomingRoot
from watcher._workers import WorkerConfig, WorkerProcess, worker_command

from .conftest import write_dicom


def candidate(path: Path, *, closed: bool = True) -> Candidate:
    return Candidate(str(path), signature_of(os.lstat(path)), closed=closed)


def config(tmp_path: Path) -> WorkerConfig:
    layout = Layout.named("rx-repack")
    return WorkerConfig(str(tmp_path / "incoming"), str(tmp_path / "data"), str(tmp_path / "log"),
                        layout.sources, layout.name, True, False)  # fmt: skip


@pytest.fixture
def incoming(tmp_path: Path) -> Iterator[IncomingRoot]:
    (tmp_path / "incoming").mkdir()
    root = IncomingRoot(tmp_path / "incoming")
    root.open()
    yield root
    root.close()


# -- claiming, in this process ---------------------------------------------------


@pytest.fixture
def warning_hook() -> Iterator[None]:
    """pydicom's warnings collected per file, as a worker process has them (its
    ``configure_logging``): importing :mod:`repack` no longer installs the hook."""
    import logging  # noqa: PLC0415
    import warnings  # noqa: PLC0415

    from repack._values import install_warning_hook  # noqa: PLC0415

    logger = logging.getLogger("pydicom")
    handlers, propagate = logger.handlers[:], logger.propagate
    with warnings.catch_warnings():
        install_warning_hook()
        yield
    logger.handlers[:], logger.propagate = handlers, propagate


@pytest.mark.usefixtures("warning_hook")
def test_a_claimed_file_is_repacked_and_its_warnings_come_with_it(
    tmp_path: Path, incoming: IncomingRoot
) -> None:
    from tests.conftest import make_dataset  # noqa: PLC0415

    path = write_dicom(incoming.path / "MR.1")
    odd = incoming.path / "MR.odd"
    with pytest.warns(UserWarning, match="ISO_IR 999"):
        write_dicom(odd, make_dataset(SpecificCharacterSet="ISO_IR 999"))
    repacker = config(tmp_path).repacker()
    done = repack_candidate(repacker, incoming, incoming.identity, candidate(path))
    assert isinstance(done, Repacked)
    assert done.dst.exists()
    assert not path.exists()  # move mode
    warned = repack_candidate(repacker, incoming, incoming.identity, candidate(odd))
    assert isinstance(warned, Repacked)
    assert any("ISO_IR 999" in w for w in warned.warnings)
    assert len(warned.warnings) == len(set(warned.warnings))


def test_a_file_another_process_holds_locked_is_unclaimed(
    tmp_path: Path, incoming: IncomingRoot
) -> None:
    path = write_dicom(incoming.path / "MR.1")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl,sys; f=open(sys.argv[1],'rb');"
         "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "held\n"
        found = repack_candidate(
            config(tmp_path).repacker(), incoming, incoming.identity, candidate(path)
        )
    finally:
        holder.communicate("", timeout=10)
    assert found.outcome is Outcome.UNCLAIMED
    assert path.exists()


def test_a_file_replaced_after_it_was_opened_is_left_for_its_own_event(
    incoming: IncomingRoot,
) -> None:
    path = write_dicom(incoming.path / "MR.1")
    with open_beneath(incoming.descriptor, "MR.1", shown_as=path) as source:
        write_dicom(incoming.path / "MR.new").rename(path)  # a re-send, in place
        assert _refusal(source, closed=True) is Outcome.CHANGED


@pytest.mark.usefixtures("leases")
def test_a_file_open_for_writing_is_busy(tmp_path: Path, incoming: IncomingRoot) -> None:
    path = write_dicom(incoming.path / "MR.1")
    with open(path, "ab"):
        found = repack_candidate(
            config(tmp_path).repacker(), incoming, incoming.identity, candidate(path)
        )
    assert found.outcome is Outcome.BUSY
    assert path.exists()


def test_a_file_of_a_replaced_folder_has_vanished(tmp_path: Path, incoming: IncomingRoot) -> None:
    path = write_dicom(incoming.path / "MR.1")
    found = repack_candidate(config(tmp_path).repacker(), incoming, (0, 0), candidate(path))
    assert found.outcome is Outcome.VANISHED
    assert path.exists()


def test_a_file_that_is_not_dicom_is_invalid_with_its_reason(
    tmp_path: Path, incoming: IncomingRoot
) -> None:
    path = incoming.path / "notes.txt"
    path.write_text("hello")
    found = repack_candidate(
        config(tmp_path).repacker(), incoming, incoming.identity, candidate(path)
    )
    assert (found.outcome, found.reason) == (Outcome.INVALID, "not-dicom")


# -- the parent's side of a worker process --------------------------------------


def test_a_worker_process_repacks_batches_and_is_started_again_after_it_died(
    tmp_path: Path, incoming: IncomingRoot
) -> None:
    worker = WorkerProcess(config(tmp_path))
    worker.start()
    try:
        assert worker.wait_ready(60) is None
        files = [
            write_dicom(incoming.path / f"MR.{n}", SOPInstanceUID=f"1.2.3.{n}") for n in (1, 2)
        ]
        gone = candidate(files[1])
        files[1].unlink()
        results = worker.repack(incoming.identity, [candidate(files[0]), gone])
        assert isinstance(results[0], Repacked)
        assert isinstance(results[1], NotRepacked)
        assert results[1].outcome is Outcome.VANISHED
        assert worker._process is not None
        os.kill(worker._process.pid, signal.SIGKILL)
        worker._process.wait(10)
        third = write_dicom(incoming.path / "MR.3", SOPInstanceUID="1.2.3.3")
        (crashed,) = worker.repack(incoming.identity, [candidate(third)])
        assert isinstance(crashed, NotRepacked)
        assert crashed.outcome is Outcome.CRASHED
        assert "died" in crashed.message
        (done,) = worker.repack(incoming.identity, [candidate(third)])  # a new process
        assert isinstance(done, Repacked)
    finally:
        worker.stop(5)
    assert worker._process is None


def test_a_worker_that_cannot_be_run_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-such-python"))
    worker = WorkerProcess(config(tmp_path))
    worker.start()
    problem = worker.wait_ready(5)
    assert problem is not None
    assert problem.startswith("cannot run the worker interpreter")


def test_a_worker_that_stalls_is_killed_and_reaped(tmp_path: Path, incoming: IncomingRoot) -> None:
    worker = WorkerProcess(config(tmp_path))
    worker.start()
    assert worker.wait_ready(60) is None
    assert worker._process is not None
    pid = worker._process.pid
    os.kill(pid, signal.SIGSTOP)
    worker.kill()
    assert worker._process.poll() == -signal.SIGKILL  # reaped: no zombie left
    worker.stop(1)


def test_the_worker_entry_point_refuses_to_run_by_hand() -> None:
    """It is started by the service with a socket; by hand it says so and exits 2."""
    command = worker_command(0)[:-2]  # no PACKAGES, no FD
    ran = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 2
    assert "started by pypx-listener" in ran.stderr
    assert command[0] == sys.executable
