"""Crash consistency: SIGKILL at random moments, restart, repeat; nothing lost or doubled."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from .conftest import run_cli, write_dicom
from .dcmtk import storescp, storescu
from .helpers import proc_stat
from .listener import Listener, listener
from .trees import snapshot, temp_files
from .workload import Instance, plan, write_workload

pytestmark = pytest.mark.slow


def check_each_instance_is_incoming_or_fully_repacked(
    running: Listener, planned: list[Instance]
) -> int:
    """The invariant at an arbitrary instant; returns how many are repacked."""
    incoming = {p.name.removeprefix("MR.") for p in running.incoming_files()}
    data = {p.name.split("-", 1)[1].removesuffix(".dcm"): p for p in running.data_files()}
    images = {
        p.name.split("-", 1)[1].removesuffix(".dcm.json"): p
        for p in running.log.glob("seriesData/*-img/*.json")
    }
    patients: dict[str, list[str]] = {}
    for path in running.log.glob("patientData/*.json"):
        for patient, record in orjson.loads(path.read_bytes()).items():
            patients[patient] = record["StudyList"]
    repacked = 0
    for instance in planned:
        if instance.sop_uid in incoming:
            continue  # still incoming: will be (re)done
        repacked += 1
        assert instance.sop_uid in data, f"lost: {instance.sop_uid}"
        assert instance.sop_uid in images, f"data without its log: {instance.sop_uid}"
        log = running.log
        assert (log / "seriesData" / f"{instance.series_uid}-meta.json").exists()
        assert (log / "seriesData" / f"{instance.series_uid}-pack.json").exists()
        assert (log / "studyData" / f"{instance.study_uid}-meta.json").exists()
        series_meta = (
            log / "studyData" / f"{instance.study_uid}-series" / f"{instance.series_uid}-meta.json"
        )
        assert series_meta.exists()
        assert instance.study_uid in patients[instance.patient_id]
    for listed in patients.values():
        assert len(listed) == len(set(listed)), "duplicate StudyList entry"
    assert len(data) == len(running.data_files())  # no instance twice in the tree
    return repacked


def test_repeated_sigkill_during_ingest(tmp_path: Path) -> None:
    planned = plan(patients=4, studies=2, series=5, instances=100)  # 4,000 instances
    staging = tmp_path / "staging"
    write_workload(staging, planned)
    reference = tmp_path / "reference"
    result = run_cli("--datadir", reference / "data", "--logdir", reference / "log", staging)
    assert result.returncode == 0, result.stderr

    service_root = tmp_path / "service"
    shutil.copytree(staging, service_root / "incoming")
    rng = random.Random(20261124)
    kills = 0
    for _ in range(40):
        running = Listener(service_root, "--settle", "0.3", "--workers", "2").start()
        try:
            time.sleep(rng.uniform(0.02, 0.3))
            running.kill()  # SIGKILL, at a random moment
        finally:
            running.kill()
        kills += 1
        repacked = check_each_instance_is_incoming_or_fully_repacked(running, planned)
        if repacked == len(planned):
            break
    assert kills >= 6, "the workload finished too fast to be interrupted"
    with listener(service_root, "--settle", "0.3") as final:
        final.wait_for(lambda: not final.incoming_files(), 120, "the rest of the workload")
        final.wait_for(lambda: final.count("housekeeping.swept") == 1, 30, "the temp sweep")
        assert final.stop() == 0
    assert check_each_instance_is_incoming_or_fully_repacked(final, planned) == len(planned)
    assert temp_files(service_root) == []
    assert not (service_root / "quarantine").exists() or not any(
        (service_root / "quarantine").iterdir()
    )
    ours = snapshot(service_root / "data", service_root / "log")
    theirs = snapshot(reference / "data", reference / "log")
    assert sorted(ours) == sorted(theirs)
    for key, value in theirs.items():
        assert ours[key] == value, key


_ORPHANED_PARENT = """
import os, sys, time
from repack import Layout
from watcher._completion import Candidate, Signature
from watcher._workers import WorkerConfig, WorkerProcess

incoming, datadir, logdir = sys.argv[1:4]
layout = Layout.named("rx-repack")
config = WorkerConfig(incoming, datadir, logdir, layout.sources, layout.name, True, False)
engine = WorkerProcess(config)
engine.start()
assert engine.wait_ready(60) is None
print(engine._process.pid, flush=True)
sys.stdin.readline()
root = os.stat(incoming)
candidates = []
for name in sys.argv[4:]:
    found = os.stat(os.path.join(incoming, name))
    signature = Signature(found.st_ino, found.st_size, found.st_mtime_ns)
    candidates.append(Candidate(os.path.join(incoming, name), signature, closed=True))
engine._connection.send(((root.st_dev, root.st_ino), candidates))
print("sent", flush=True)
time.sleep(60)
"""


def _gone(pid: int) -> bool:
    try:
        state = proc_stat(pid)[0]  # field 3
    except OSError:
        return True
    return state in ("Z", "X")


class _OrphanedWorker:
    """A worker process whose parent (a stand-in for the service) is SIGKILLed on cue.

    The parent starts one :class:`~watcher._workers.WorkerProcess`,
    prints its pid, and sends one batch of every name when told to.
    """

    def __init__(self, root: Path, names: list[str]) -> None:
        folders = [str(root / part) for part in ("incoming", "data", "log")]
        self.parent = subprocess.Popen(
            [sys.executable, "-c", _ORPHANED_PARENT, *folders, *names],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert self.parent.stdin is not None
        assert self.parent.stdout is not None
        self.stdin, self.stdout = self.parent.stdin, self.parent.stdout
        self.worker = 0
        self.output = b""

    def __enter__(self) -> _OrphanedWorker:
        self.worker = int(self.stdout.readline())  # the parent's own deadline bounds this read
        return self

    def send_batch(self) -> None:
        self.stdin.write(b"go\n")
        self.stdin.flush()
        assert self.stdout.readline() == b"sent\n"

    def kill_parent_then_resume(self) -> None:
        """SIGKILL the parent; let the (stopped) worker go on without it; wait for it to exit."""
        self.parent.kill()
        self.parent.wait(10)
        os.kill(self.worker, signal.SIGCONT)
        deadline = time.monotonic() + 20
        while not _gone(self.worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(self.worker), "the orphaned worker did not exit"

    def __exit__(self, *_: object) -> None:
        self.parent.kill()
        if self.worker and not _gone(self.worker):
            os.kill(self.worker, signal.SIGKILL)
        # The worker shares the parent's stdout: this reads what it wrote too.
        self.output = self.parent.communicate(timeout=10)[0]

    def events(self, name: str) -> list[dict[str, object]]:
        lines = [orjson.loads(line) for line in self.output.splitlines() if line.startswith(b"{")]
        return [event for event in lines if event.get("event") == name]


def test_a_worker_whose_service_died_repacks_nothing_more_and_exits(tmp_path: Path) -> None:
    """SIGKILL of the service while a batch waits: nobody would report it, so it stays incoming.

    The worker is stopped while its dead parent's batch waits in the socket,
    so the order is certain: parent gone first, then the worker reads the jobs.
    """
    names = [f"MR.{n}" for n in range(8)]
    for name in names:
        write_dicom(tmp_path / "incoming" / name)
    with _OrphanedWorker(tmp_path, names) as orphan:
        os.kill(orphan.worker, signal.SIGSTOP)
        orphan.send_batch()
        orphan.kill_parent_then_resume()
    assert sorted(p.name for p in (tmp_path / "incoming").iterdir()) == names
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").rglob("*.dcm"))
    assert orphan.events("repack.done") == []


def test_a_worker_whose_service_died_mid_batch_reports_every_file_it_moved(
    tmp_path: Path,
) -> None:
    """SIGKILL of the service while its worker is inside a batch: no moved file goes unreported.

    The batch is long (200 files); the worker is stopped as soon as the first
    file has left the incoming folder, the parent killed, the worker resumed.
    Every file that is no longer incoming has its ``repack.done`` line on the
    service's stream (the worker writes what its dead parent cannot), and the
    worker started no file after it noticed.
    """
    incoming = tmp_path / "incoming"
    files = write_workload(incoming, plan(1, 1, 1, 200, seed="O"))
    names = sorted(path.name for path in files)
    with _OrphanedWorker(tmp_path, names) as orphan:
        orphan.send_batch()
        deadline = time.monotonic() + 30
        while len(os.listdir(incoming)) == len(names) and time.monotonic() < deadline:
            pass  # a tight loop: stop the worker within a file or two of its first
        os.kill(orphan.worker, signal.SIGSTOP)
        orphan.kill_parent_then_resume()
    left = {path.name for path in incoming.iterdir()}
    moved = set(names) - left
    assert moved, "the worker repacked nothing before its parent died"
    assert left, "the worker went on through the whole batch without its parent"
    reported = {Path(str(event["src"])).name for event in orphan.events("repack.done")}
    assert reported == moved
    assert len(list((tmp_path / "data").rglob("*.dcm"))) == len(moved)


def test_a_series_in_flight_at_a_sigkill_is_reported_whole_after_the_restart(
    tmp_path: Path, example_files: list[Path]
) -> None:
    """SIGKILL while a 192-instance series is repacked; the restarted service finishes it
    and its ``series.complete`` (and what a hand-off is told) counts the whole series
    and the time since its first instance, from the folder, not the 100-odd it saw."""
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    received = time.time() - 60
    for number, path in enumerate(example_files):
        target = incoming / f"MR.{number:03d}"
        shutil.copyfile(path, target)
        # When storescp wrote each one: 10 ms apart, as a push arrives.
        os.utime(target, (received + number * 0.01, received + number * 0.01))
    hand_off = tmp_path / "series.ndjson"
    command = f"tee -a {hand_off}"  # an argv, no shell: the document is its stdin
    args = ("--settle", "0.2", "--series-quiet", "2", "--on-series-complete", command)
    first = Listener(tmp_path, *args, "--workers", "1").start()
    first.wait_for(lambda: first.count("repack.done") >= 40, 60, "40 instances repacked")
    first.kill()  # the whole process group, workers included
    assert first.count("series.complete") == 0
    with listener(tmp_path, *args) as second:
        second.wait_for(lambda: second.count("series.complete") == 1, 60, "series.complete")
        assert second.count("repack.done") < 192  # it saw only the rest
        (complete,) = second.of("series.complete")
        assert complete["instances"] == 192
        assert complete["receive_s"] >= 1.9
        second.wait_for(lambda: second.count("handoff.sent") == 1, 30, "the hand-off")
    (document,) = [orjson.loads(line) for line in hand_off.read_text().splitlines()]
    assert document["instances"] == 192
    assert document["ndicom"] == 192
    assert document["receive_s"] >= 1.9


@pytest.mark.dcmtk
def test_a_series_received_through_storescp_and_cut_by_a_sigkill_is_reported_whole(
    tmp_path: Path, example_files: list[Path]
) -> None:
    """Through the real storescp: 100 of 192 instances pushed and repacked, the service
    SIGKILLed before the series went quiet, restarted, the other 92 pushed. Its
    ``series.complete`` counts the folder's 192 files and the span of their write times
    (when storescp wrote them: a move keeps them), not the 92 the new process saw."""
    args = ("--settle", "0.2", "--series-quiet", "2", "--workers", "1")
    first = Listener(tmp_path, *args).start()
    with storescp(first.incoming, "--fork", "+xa", "-pm", "-sp") as port:
        storescu(port, example_files[:100])
        first.wait_for(lambda: first.count("repack.done") == 100, 60, "100 instances repacked")
        first.kill()
        assert first.count("series.complete") == 0
        with listener(tmp_path, *args) as second:
            storescu(port, example_files[100:])
            second.wait_for(lambda: second.count("series.complete") == 1, 60, "series.complete")
            (complete,) = second.of("series.complete")
            assert second.count("repack.done") == 92
    assert complete["instances"] == 192
    written = [path.stat().st_mtime for path in Path(complete["folder"]).glob("*.dcm")]
    assert len(written) == 192
    assert complete["receive_s"] == pytest.approx(max(written) - min(written), abs=0.002)
    assert complete["receive_s"] > 0
