"""pypx-listener as a real process, next to the real dcmtk storescp."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from .conftest import write_dicom
from .dcmtk import storescp, storescu
from .helpers import FAST, children, installed, proc_stat, wait_for, worker_processes
from .listener import InProcess, Listener, in_process, listener


def assert_fully_repacked(running: Listener | InProcess, count: int) -> None:
    done = running.of("repack.done")
    assert len(done) == count
    destinations = {e["dst"] for e in done}
    assert len(destinations) == count  # one event per instance, none twice
    assert len(running.data_files()) == count
    assert all(Path(d).exists() for d in destinations)
    images = list((running.log / "seriesData").glob("*-img/*.json"))
    assert len(images) == count
    assert running.incoming_files() == []
    assert running.count("repack.failed") == 0


@pytest.mark.dcmtk
@pytest.mark.slow
@pytest.mark.parametrize(
    "storescp_args",
    [(), ("-fe", ".dcm"), ("--fork", "-pm", "-sp")],
    ids=["flat", "fe-dcm", "fork-pm-sp"],
)
def test_everything_storescp_receives_is_repacked(
    tmp_path: Path, example_files: list[Path], storescp_args: tuple[str, ...]
) -> None:
    with listener(tmp_path, *FAST) as running:
        with storescp(running.incoming, *storescp_args) as port:
            storescu(port, example_files)
            running.wait_for(lambda: running.count("repack.done") >= 192, 120, "192 repack.done")
        running.wait_for(lambda: running.count("series.complete") == 1, 20, "series.complete")
        assert running.stop() == 0
    assert_fully_repacked(running, 192)
    (series,) = running.of("series.complete")
    assert series["instances"] == 192
    assert series["folder"].endswith("00005-SAG_MPRAGE_220_FOV-a27cf06")
    event = running.of("repack.done")[0]
    assert {"src", "dst", "size", "PatientID", "SeriesInstanceUID", "duration_ms"} <= set(event)
    assert {"level", "timestamp"} <= set(event)
    (stopped,) = running.of("watcher.stopped")
    assert stopped["repacked"] == 192
    assert stopped["clean"] is True


def test_files_already_there_before_start_are_repacked(
    tmp_path: Path, example_files: list[Path]
) -> None:
    nested = tmp_path / "incoming" / "P_1.2.3"
    nested.mkdir(parents=True)
    for path in example_files[:10]:
        shutil.copy(path, tmp_path / "incoming" / path.stem)
    for path in example_files[10:20]:
        shutil.copy(path, nested / path.stem)
    with in_process(tmp_path, *FAST) as running:
        running.wait_for(lambda: running.count("repack.done") == 20, 60, "20 repack.done")
        assert running.stop() == 0
    assert_fully_repacked(running, 20)


def test_a_file_written_slowly_in_pieces_is_not_picked_up_early(
    tmp_path: Path, example_files: list[Path]
) -> None:
    content = example_files[0].read_bytes()
    with in_process(tmp_path, *FAST, "--quarantine-after", "30", "--log-level", "debug") as running:
        target = running.incoming / "MR.slow"
        pieces = [content[i : i + 40_000] for i in range(0, len(content), 40_000)]
        for index, piece in enumerate(pieces):
            assert running.count("repack.done") == 0  # not before the whole file is there
            with open(target, "ab") as handle:  # a close after every piece
                handle.write(piece)
            if index < len(pieces) - 1:  # each partial version was looked at, and left
                running.wait_for(
                    lambda seen=index + 1: running.count("repack.incomplete") >= seen,
                    30,
                    f"the service to look at piece {index}",
                )
        running.wait_for(lambda: running.count("repack.done") == 1, 30, "the slow file")
        assert running.stop() == 0
    (done,) = running.of("repack.done")
    assert Path(done["dst"]).read_bytes() == content
    assert running.count("repack.failed") == 0
    assert not running.quarantine.exists() or list(running.quarantine.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "reason"), [("MR.truncated", "truncated"), ("notes.txt", "not-dicom")]
)
def test_bad_files_are_quarantined_with_a_note(
    tmp_path: Path, example_files: list[Path], name: str, reason: str
) -> None:
    content = example_files[0].read_bytes()[:100_000] if reason == "truncated" else b"hello" * 1000
    with in_process(tmp_path, *FAST, "--quarantine-after", "1") as running:
        (running.incoming / name).write_bytes(content)
        running.wait_for(lambda: running.count("repack.failed") == 1, 30, "repack.failed")
        assert running.stop() == 0
    (failed,) = running.of("repack.failed")
    assert failed["reason"] == reason
    assert failed["error"]
    quarantined = Path(failed["quarantined"])
    assert quarantined.read_bytes() == content  # nothing lost
    note = orjson.loads(Path(f"{quarantined}.json").read_bytes())
    assert note["reason"] == reason
    assert note["relative_path"] == name
    assert running.incoming_files() == []
    assert running.data_files() == []


@pytest.mark.dcmtk
@pytest.mark.slow
def test_storescp_killed_mid_write_leaves_a_truncated_file_that_is_quarantined(
    tmp_path: Path, example_files: list[Path]
) -> None:
    # +B streams into the final name during the transfer, and --sleep-during
    # pauses it (longer than the settle period: a live slow writer), so the
    # kill leaves a truncated file behind, closed by the kernel.
    with listener(tmp_path, *FAST, "--quarantine-after", "3", "--log-level", "debug") as running:
        with storescp(running.incoming, "+B", "--sleep-during", "1") as port:
            sender = subprocess.Popen(
                ["storescu", "-to", "20", "-ta", "20", "-td", "20", "127.0.0.1", str(port),
                 str(example_files[0])],
                env={**os.environ, "TCP_NODELAY": "1"},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            running.wait_for(
                lambda: any(p.stat().st_size for p in running.incoming_files()),
                20,
                "storescp to start writing",
            )
            # Past the settle period the service looks, and finds storescp still writing.
            running.wait_for(lambda: running.count("repack.busy") >= 1, 20, "repack.busy")
            assert running.count("repack.failed") == 0  # a live writer is never quarantined
        # Leaving the block killed storescp's process group mid-transfer.
        sender.wait(30)
        (partial,) = running.incoming_files()
        size = partial.stat().st_size
        assert 0 < size < example_files[0].stat().st_size
        running.wait_for(lambda: running.count("repack.failed") == 1, 30, "quarantine")
        assert running.stop() == 0
    (failed,) = running.of("repack.failed")
    assert failed["reason"] == "truncated"
    assert Path(failed["quarantined"]).stat().st_size == size
    assert running.count("repack.done") == 0


def test_polling_mode_repacks_everything(tmp_path: Path, example_files: list[Path]) -> None:
    with in_process(tmp_path, *FAST, "--polling", "--poll-interval", "0.2") as running:
        for path in example_files[:30]:
            shutil.copy(path, running.incoming / path.stem)
        running.wait_for(lambda: running.count("repack.done") == 30, 60, "30 repack.done")
        assert running.stop() == 0
    assert_fully_repacked(running, 30)


def test_sigterm_during_busy_ingest_loses_nothing_and_a_restart_finishes(
    tmp_path: Path, example_files: list[Path]
) -> None:
    for path in example_files:
        shutil.copy(path, tmp_path / "incoming" / path.stem) if (
            tmp_path / "incoming"
        ).exists() else (
            (tmp_path / "incoming").mkdir(),
            shutil.copy(path, tmp_path / "incoming" / path.stem),
        )
    with listener(tmp_path, *FAST, "--workers", "2") as running:
        running.wait_for(lambda: running.count("repack.done") >= 20, 60, "some progress")
        assert running.stop() == 0
    first = running.count("repack.done")
    assert 20 <= first <= 192
    # Each instance is either fully repacked (data and log) or still incoming.
    images = {p.name.removesuffix(".json") for p in running.log.glob("seriesData/*-img/*.json")}
    repacked = {p.name for p in running.data_files()}
    assert images == repacked
    incoming = {p.name.split("-", 1)[1] for p in running.incoming_files()}
    assert {name.split("-", 1)[1].removesuffix(".dcm") for name in repacked}.isdisjoint(incoming)
    assert len(repacked) + len(incoming) == 192
    assert list(tmp_path.rglob(".pypx-tmp-*")) == []
    with listener(tmp_path, *FAST) as again:
        again.wait_for(lambda: again.count("repack.done") == 192 - first, 60, "the rest")
        assert again.stop() == 0
    assert len(again.data_files()) == 192
    assert again.incoming_files() == []


def test_second_signal_exits_at_once(tmp_path: Path, example_files: list[Path]) -> None:
    running = Listener(
        tmp_path, *FAST, "--workers", "1", "--stop-timeout", "60", metrics=True
    ).start()
    try:
        assert running.process is not None
        (worker,) = worker_processes(running.process.pid)
        os.kill(worker, signal.SIGSTOP)  # the first stop now waits up to 60 s for it
        shutil.copy(example_files[0], running.incoming / "MR.held")
        running.wait_for(
            lambda: running.metric("pypx_listener_workers_busy") == 1, 10, "the stopped worker"
        )
        running.signal(signal.SIGTERM)
        running.wait_for(lambda: running.count("watcher.stopping") == 1, 10, "the first stop")
        running.signal(signal.SIGTERM)
        code = running.process.wait(10)  # well before the 60 s the first stop would take
        # The service killed its stuck worker on the way out (the test kills nothing yet).
        wait_for(lambda: not Path(f"/proc/{worker}").exists(), 10, "no worker left behind")
        running.stop(timeout=10)
    finally:
        running.kill()
    assert code == 128 + signal.SIGTERM
    assert running.count("watcher.killed") == 1
    assert running.count("watcher.stopped") == 0
    assert list(tmp_path.rglob(".pypx-tmp-*")) == []
    assert (running.incoming / "MR.held").exists()  # nothing lost


def test_copy_mode_keeps_files_and_does_not_reprocess_them(
    tmp_path: Path, example_files: list[Path]
) -> None:
    args = ("--mode", "copy", "--settle", "0.3", "--scan-interval", "0.5")
    with in_process(tmp_path, *args) as running:
        for path in example_files[:10]:
            shutil.copy(path, running.incoming / path.stem)
        running.wait_for(lambda: running.count("repack.done") == 10, 60, "10 repack.done")
        scans = running.metric("pypx_listener_scans_total")
        running.wait_for(
            lambda: running.metric("pypx_listener_scans_total") >= scans + 4, 30, "four scans"
        )
        assert running.stop() == 0
    assert running.count("repack.done") == 10
    assert len(running.incoming_files()) == 10
    assert len(running.data_files()) == 10


def test_a_resent_instance_is_processed_again(tmp_path: Path, example_files: list[Path]) -> None:
    with in_process(tmp_path, *FAST) as running:
        shutil.copy(example_files[0], running.incoming / "MR.x")
        running.wait_for(lambda: running.count("repack.done") == 1, 30, "first")
        shutil.copy(example_files[0], running.incoming / "MR.x")
        running.wait_for(lambda: running.count("repack.done") == 2, 30, "second")
        assert running.stop() == 0
    assert len(running.data_files()) == 1
    assert running.incoming_files() == []


def test_configured_from_the_environment_only(tmp_path: Path, example_files: list[Path]) -> None:
    env = {
        "PYPX_LISTENER_INCOMING": str(tmp_path / "in"),
        "PYPX_LISTENER_DATADIR": str(tmp_path / "d"),
        "PYPX_LISTENER_LOGDIR": str(tmp_path / "l"),
        "PYPX_LISTENER_QUARANTINE": str(tmp_path / "q"),
        "PYPX_LISTENER_LAYOUT": "px-repack-3.10",
        "PYPX_LISTENER_SETTLE": "0.3",
        "PYPX_LISTENER_LOG_FORMAT": "json",
    }
    process = subprocess.Popen(
        [installed("pypx-listener")],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    try:
        wait_for((tmp_path / "in").exists, 30, "the incoming folder")
        shutil.copy(example_files[0], tmp_path / "in" / "MR.1")
        wait_for(lambda: bool(list((tmp_path / "d").rglob("*.dcm"))), 30, "the repacked file")
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode == 0
    events = [orjson.loads(line) for line in out.splitlines()]
    started = next(e for e in events if e["event"] == "watcher.started")
    assert started["layout"] == "px-repack-3.10"
    assert started["settle"] == 0.3
    (data_file,) = list((tmp_path / "d").rglob("*.dcm"))
    assert data_file.parent.name == "00005-SAG_MPRAGE_220_FOV"


def test_help_documents_every_option_and_bad_settings_fail_clearly(tmp_path: Path) -> None:
    exe = installed("pypx-listener")
    shown = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=30, check=True)
    for option in ("--incoming", "--datadir", "--logdir", "--quarantine", "--workers", "--settle",
                   "--polling", "--mode", "--metrics-port", "PYPX_LISTENER_WORKERS"):  # fmt: skip
        assert option in shown.stdout
    bad = subprocess.run(
        [exe, "--incoming", str(tmp_path / "i")],
        env={**os.environ, "PYPX_LISTENER_WORKERS": "many"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert bad.returncode == 2
    assert "PYPX_LISTENER_WORKERS" in bad.stderr
    assert "hint:" in bad.stderr
    overlapping = subprocess.run(
        [exe, "--incoming", str(tmp_path / "x"), "--datadir", str(tmp_path / "x" / "data")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert overlapping.returncode == 2
    assert "overlap" in overlapping.stderr


def test_old_empty_subfolders_are_removed_and_new_ones_kept(tmp_path: Path) -> None:
    incoming = tmp_path / "incoming"
    old = incoming / "anonymized_20260101_120000" / "nested"
    old.mkdir(parents=True)
    fresh = incoming / "anonymized_20261124_230000"
    fresh.mkdir()
    hidden = incoming / ".keep"
    hidden.mkdir()
    long_ago = time.time() - 3600
    for folder in (old, old.parent, hidden):
        os.utime(folder, (long_ago, long_ago))
    args = ("--scan-interval", "0.3", "--empty-dir-age", "60")
    with in_process(tmp_path, *args) as running:
        running.wait_for(lambda: not old.parent.exists(), 10, "the old empty folders to go")
        scans = running.metric("pypx_listener_scans_total")
        running.wait_for(
            lambda: running.metric("pypx_listener_scans_total") >= scans + 2, 30, "two more scans"
        )
        assert fresh.exists()  # storescp may be about to write into it
        assert hidden.exists()
        assert running.stop() == 0


def test_a_backlog_beyond_the_pending_limit_waits_on_disk_and_is_all_repacked(
    tmp_path: Path, example_files: list[Path]
) -> None:
    """120 files found at start with room for 16 in memory: the scan pauses and goes on."""
    incoming = tmp_path / "incoming"
    for index, source in enumerate(example_files[:120]):
        folder = incoming / f"association-{index % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, folder / source.name)
    with in_process(tmp_path, *FAST, "--pending-limit", "16") as running:
        running.wait_for(lambda: running.count("repack.done") == 120, 60, "the whole backlog")
        assert running.stop() == 0
    assert_fully_repacked(running, 120)
    assert running.incoming_files() == []


def test_the_workers_are_the_only_processes_the_service_starts(tmp_path: Path) -> None:
    """No multiprocessing resource tracker (13 MB for nothing): the children are the workers."""
    with listener(tmp_path, *FAST, "--workers", "2") as running:
        assert running.process is not None
        workers = worker_processes(running.process.pid)
        assert len(workers) == 2
        assert sorted(children(running.process.pid)) == sorted(workers)
        assert running.stop() == 0
    for worker in workers:
        wait_for(lambda w=worker: not Path(f"/proc/{w}").exists(), 10, "the workers to exit")


def _scheduling(pid: int) -> tuple[int, int]:
    """The niceness and scheduling policy of process ``pid`` (from /proc/PID/stat)."""
    fields = proc_stat(pid)
    return int(fields[16]), int(fields[38])  # fields 19 (nice) and 41 (policy)


@pytest.mark.parametrize(("nice", "policy"), [(7, os.SCHED_BATCH), (0, os.SCHED_OTHER)])
def test_worker_processes_yield_the_cpu_to_storescp_as_configured(
    tmp_path: Path, nice: int, policy: int
) -> None:
    """Workers run as batch work at the configured niceness; the service itself does not."""
    with listener(tmp_path, *FAST, "--workers", "2", "--worker-nice", str(nice)) as running:
        assert running.process is not None
        workers = worker_processes(running.process.pid)
        assert len(workers) == 2
        for worker in workers:
            assert _scheduling(worker) == (nice, policy)
        assert _scheduling(running.process.pid) == (0, os.SCHED_OTHER)
        write_dicom(tmp_path / "incoming" / "MR.1")
        running.wait_for(lambda: running.count("repack.done") == 1, 30, "the file")
        assert running.stop() == 0


def test_in_process_the_service_says_each_file_and_its_counts(tmp_path: Path) -> None:
    """The service as a library runs it, its events taken by structlog's ``capture_logs``.

    Three good files and a bad one: a ``repack.done`` each, the bad one quarantined,
    and ``watcher.stopped`` counts what ``/metrics`` counts.
    """
    with in_process(tmp_path, *FAST, "--workers", "1") as running:
        for number in range(3):
            write_dicom(running.incoming / f"MR.{number}", SOPInstanceUID=f"1.2.3.{number}")
        (running.incoming / "MR.bad").write_bytes(b"not DICOM at all" * 20)
        running.wait_for(
            lambda: running.count("repack.done") == 3 and running.count("repack.failed") == 1,
            60,
            "4 files",
        )
        assert running.metric("pypx_listener_instances_repacked_total") == 3
        assert running.stop() == 0
    (started,) = running.of("watcher.started")
    assert started["log_level"] == "info"
    (stopped,) = running.of("watcher.stopped")
    assert (stopped["repacked"], stopped["quarantined"], stopped["clean"]) == (3, 1, True)
    assert running.totals is not None
    assert running.totals["repacked"] == 3
    assert len(running.data_files()) == 3
