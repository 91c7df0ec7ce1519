"""The watcher's parts in process, without a running service: fast, and no sleeping."""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest.mock import ANY

import pytest
from hypothesis import given
from hypothesis import strategies as st

from repack import Store, dumps, json_bytes, open_root
from watcher import ConfigError, parse_settings
from watcher._completion import CompletionTracker
from watcher._metrics import HealthServer, Metrics, Readiness
from watcher._observer import READ_BURST_S, reads_in_bursts, start_observer
from watcher._pool import WorkerPool
from watcher._quarantine import Quarantine, quarantine_name
from watcher._scan import FolderScan
from watcher._series import SeriesTracker
from watcher._settings import default_workers, unknown_variables

from .conftest import write_dicom
from .dcmtk import wait_for
from .helpers import get


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# -- series ---------------------------------------------------------------------


def test_a_series_goes_quiet_and_counts_each_instance_once() -> None:
    clock = Clock()
    series = SeriesTracker(30, clock=clock)
    for sop in ("1", "2", "3", "2"):  # "2" is sent again
        series.add("S", sop, folder="/data/x", patient_id="P", study_uid="T")
        clock.now += 1
    assert series.take_quiet() == []
    clock.now += 28
    assert series.take_quiet() == []  # 29 s after the last: not yet
    clock.now += 1
    (quiet,) = series.take_quiet()
    assert (quiet.instances, quiet.resends, quiet.receive_s) == (3, 1, 3.0)
    assert series.take_quiet() == []  # announced once
    assert series.active() == 0


@given(st.lists(st.sampled_from([f"1.2.{n}" for n in range(40)]), max_size=200))
def test_a_series_counts_distinct_instances_and_every_resend(sops: list[str]) -> None:
    series = SeriesTracker(0, clock=Clock())
    for sop in sops:
        series.add("S", sop, folder="/data/x", patient_id="P", study_uid="T")
    quiet = series.take_quiet()
    if not sops:
        assert quiet == []
        return
    (only,) = quiet
    assert only.instances == len(set(sops))
    assert only.resends == len(sops) - len(set(sops))


# -- scans ----------------------------------------------------------------------


ScanOf = Callable[..., FolderScan]


@pytest.fixture
def scan_of() -> Iterator[ScanOf]:
    """``scan_of(root, remove_after=None)``: a FolderScan of ``root`` (descriptor closed after)."""
    descriptors: list[int] = []

    def make(root: Path, *, remove_after: float | None = None) -> FolderScan:
        descriptors.append(open_root(root))
        return FolderScan(descriptors[-1], str(root), ignored=lambda name: name.startswith("."),
                          remove_empty_after=remove_after)  # fmt: skip

    yield make
    for descriptor in descriptors:
        os.close(descriptor)


def test_a_scan_pauses_and_goes_on_from_where_it_stopped(tmp_path: Path, scan_of: ScanOf) -> None:
    incoming, outside = tmp_path / "incoming", tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.dcm").write_bytes(b"x")
    expected = set()
    for index in range(30):
        path = incoming / f"a{index % 3}" / "deep" / f"MR.{index}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        expected.add(str(path))
    (incoming / "linked").symlink_to(outside)  # reported like a file, never entered
    expected.add(str(incoming / "linked"))
    (incoming / ".hidden").write_bytes(b"x")
    scan = scan_of(incoming)
    first = list(itertools.islice(scan, 10))
    (incoming / "a0" / "deep" / "late").write_bytes(b"x")  # may or may not be seen
    rest = list(scan)
    found = [path for path, _ in first + rest]
    assert len(first) == 10
    assert len(found) == len(set(found))  # nothing twice
    assert set(found) - {str(incoming / "a0" / "deep" / "late")} == expected
    assert scan.found == len(found)
    assert all(not p.startswith(str(outside)) for p in found)


def test_a_scan_removes_old_empty_folders_below_the_root_and_nothing_else(
    tmp_path: Path, scan_of: ScanOf
) -> None:
    incoming, outside = tmp_path / "incoming", tmp_path / "outside"
    old_empty = incoming / "old" / "nested"
    old_empty.mkdir(parents=True)
    (outside / "empty").mkdir(parents=True)
    (incoming / "to-outside").symlink_to(outside / "empty")
    fresh = incoming / "fresh"
    fresh.mkdir()
    long_ago = time.time() - 3600
    for folder in (old_empty, old_empty.parent, outside / "empty"):
        os.utime(folder, (long_ago, long_ago))
    assert list(scan_of(incoming, remove_after=60)) == [(str(incoming / "to-outside"), ANY)]
    assert not old_empty.parent.exists()
    assert fresh.exists()
    assert (outside / "empty").exists()  # reached only through a link: never touched
    scan = scan_of(incoming, remove_after=60)
    open_before = len(os.listdir("/proc/self/fd"))
    assert next(iter(scan)) == (str(incoming / "to-outside"), ANY)  # a folder is open now
    assert len(os.listdir("/proc/self/fd")) > open_before  # its descriptor, and scandir's
    scan.close()  # stopped midway: the folder it held is closed
    assert len(os.listdir("/proc/self/fd")) == open_before


# -- completion -----------------------------------------------------------------


def test_the_oldest_waiting_file_is_known_without_looking_at_the_folder(tmp_path: Path) -> None:
    wall = Clock(5000.0)
    tracker = CompletionTracker(1.0, clock=Clock(), wall_clock=wall)
    assert tracker.oldest_age() == 0.0
    tracker.changed(str(tmp_path / "a"))
    wall.now += 10
    tracker.changed(str(tmp_path / "b"))
    wall.now += 5
    assert tracker.oldest_age() == 15.0


def test_a_scrape_walks_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tracker = CompletionTracker(1.0)
    tracker.changed(str(tmp_path / "waiting"))
    metrics = Metrics()
    metrics.watch_oldest(tracker.oldest_age)
    server = HealthServer("127.0.0.1", 0, metrics, Readiness({}, threading.Event()))
    server.start()
    try:

        def refuse(*_: object, **__: object) -> None:
            raise AssertionError("a scrape listed a folder")

        for name in ("scandir", "listdir", "walk", "fwalk"):
            monkeypatch.setattr(os, name, refuse)
        status, text = get(f"http://127.0.0.1:{server.port}/metrics")
    finally:
        monkeypatch.undo()
        server.stop()
    assert status == 200
    assert "pypx_listener_oldest_unprocessed_seconds" in text


# -- pool -----------------------------------------------------------------------


def test_a_job_that_raises_never_ends_its_worker() -> None:
    done: list[int] = []
    failed: list[tuple[int, Exception]] = []
    finished = threading.Event()

    def handle(_index: int, jobs: list[int]) -> None:
        (job,) = jobs
        if job == 0:
            raise UnicodeEncodeError("utf-8", "\udcff", 0, 1, "surrogates not allowed")
        done.append(job)
        if len(done) == 3:
            finished.set()

    pool: WorkerPool[int] = WorkerPool(
        handle,
        workers=1,
        capacity=8,
        failed=lambda _i, jobs, error: failed.extend((job, error) for job in jobs),
    )
    pool.start()
    for job in range(4):
        assert pool.submit(job)
    assert finished.wait(10)
    assert pool.running()
    handed_back, clean = pool.stop(5)
    assert (handed_back, clean) == (0, True)
    assert done == [1, 2, 3]
    assert [job for job, _ in failed] == [0]


def test_stop_hands_back_what_no_worker_started_and_knows_a_stuck_worker() -> None:
    release = threading.Event()
    started = threading.Event()
    clock = Clock()

    def handle(_index: int, _jobs: list[int]) -> None:
        started.set()
        release.wait(10)

    pool: WorkerPool[int] = WorkerPool(handle, workers=1, capacity=8, clock=clock)
    pool.start()
    for job in range(5):
        pool.submit(job)
    assert started.wait(10)
    clock.now += 61
    assert pool.stalled(60) == [0]
    assert pool.stalled(62) == []
    handed_back, clean = pool.stop(0.2)  # the worker holds its job past the deadline
    assert (handed_back, clean) == (4, False)
    release.set()


def test_a_worker_takes_what_is_queued_in_one_batch_and_never_waits_for_more() -> None:
    batches: list[list[int]] = []
    gate, finished = threading.Event(), threading.Event()

    def handle(_index: int, jobs: list[int]) -> None:
        batches.append(jobs)
        gate.wait(10)  # hold the first batch while more arrive
        if sum(len(b) for b in batches) == 21:
            finished.set()

    pool: WorkerPool[int] = WorkerPool(handle, workers=1, capacity=32, batch=16)
    pool.start()
    pool.submit(0)
    wait_for(lambda: bool(batches), 10, "the lone job, at once and alone")
    for job in range(1, 21):
        pool.submit(job)
    gate.set()
    assert finished.wait(10)
    assert pool.stop(5) == (0, True)
    assert [len(b) for b in batches] == [1, 16, 4]
    assert [job for b in batches for job in b] == list(range(21))


def test_the_first_worker_leads_and_the_others_help_with_a_backlog_or_a_wait() -> None:
    taken: list[tuple[int, list[int]]] = []
    lead_free = threading.Event()
    lead_free.set()

    def handle(index: int, jobs: list[int]) -> None:
        taken.append((index, jobs))
        if index == 0:
            lead_free.wait(10)

    clock = Clock()
    pool: WorkerPool[int] = WorkerPool(
        handle, workers=2, capacity=64, batch=4, help_after=1.0, clock=clock
    )
    pool.start()
    try:
        # A trickle: each job alone, the lead free: the lead does all of it.
        for job in range(5):
            pool.submit(job)
            wait_for(lambda: pool.depth() == 0 and pool.busy() == 0, 10, "the job to be done")
        assert [index for index, _ in taken] == [0] * 5
        # The lead is held: one job waits, and is helped with once it has waited.
        taken.clear()
        lead_free.clear()
        pool.submit(100)
        wait_for(lambda: pool.busy() == 1, 10, "the lead to take its job")
        pool.submit(101)
        assert len(taken) == 1  # it has not waited yet
        clock.now += 1.0
        pool.clock_moved()
        wait_for(lambda: len(taken) == 2, 10, "a helper to take the job that waited")
        assert taken[1] == (1, [101])
        # More than the lead's next batch waiting is helped with at once.
        pool.submit(102)
        wait_for(lambda: pool.depth() == 1, 10, "the job to be queued")
        assert len(taken) == 2, "a helper took a lone job before it had waited"
        for job in range(103, 110):  # two batches: the helpers' depth
            pool.submit(job)
        wait_for(lambda: len(taken) == 3, 10, "a helper to take a batch")
        assert taken[2] == (1, [102, 103, 104, 105])
        clock.now += 1.0
        pool.clock_moved()
        wait_for(lambda: len(taken) == 4, 10, "a helper to take the rest, once it waited")
        assert taken[3] == (1, [106, 107, 108, 109])
    finally:
        lead_free.set()
        assert pool.stop(5) == (0, True)


# -- observer -------------------------------------------------------------------


def test_the_inotify_reader_reads_a_burst_of_events_at_once(tmp_path: Path) -> None:
    """Files closed one a millisecond: read a few milliseconds' worth at a time, none lost.

    Reading at once would wake the reader (and watchdog's two threads after
    it) for nearly every file, about once a millisecond. The burst reader
    waits ``READ_BURST_S`` after the descriptor becomes readable, so it reads
    at most once per that period, however slowly the files come.
    """
    assert reads_in_bursts(), "this watchdog no longer has the wait the burst reader extends"
    tracker = CompletionTracker(settle=60)
    observer = start_observer(tmp_path, tracker, polling=False, poll_interval=1.0)
    reader = observer._inotify_fd
    reads = 0
    read_events = reader.read_events

    def counted(**kwargs: int) -> list[object]:
        nonlocal reads
        reads += 1
        return list(read_events(**kwargs))

    reader.read_events = counted
    try:
        started = time.monotonic()
        for index in range(60):
            (tmp_path / f"MR.{index}").write_bytes(b"x")
            time.sleep(0.001)
        elapsed = time.monotonic() - started
        taken: list[object] = []
        wait_for(
            lambda: taken.extend(tracker.take_ready(100)) or len(taken) == 60,
            10,
            "every close to be recorded",
        )
    finally:
        observer.stop()
        observer.join(5)
    assert reads <= elapsed / READ_BURST_S + 2, (reads, elapsed)


# -- quarantine -----------------------------------------------------------------


def test_quarantine_names_are_cut_by_bytes_and_stay_apart() -> None:
    long_a, long_b = "é" * 200 + "a.txt", "é" * 200 + "b.txt"
    name_a, name_b = quarantine_name("STAMP", long_a), quarantine_name("STAMP", long_b)
    assert name_a != name_b
    for name in (name_a, name_b):
        assert len(os.fsencode(name + ".json")) <= 255
        name.encode("utf-8")  # never half a character at the cut
    assert quarantine_name("STAMP", "short.txt") == "STAMP-short.txt"


@pytest.mark.parametrize("keep_source", [False, True], ids=["move", "copy"])
def test_quarantine_moves_or_copies_a_file_and_notes_a_fifo(
    tmp_path: Path, keep_source: bool
) -> None:
    incoming, folder = tmp_path / "in", tmp_path / "q"
    incoming.mkdir()
    folder.mkdir()
    (incoming / "junk").write_bytes(b"junk")
    os.mkfifo(incoming / "pipe")
    quarantine = Quarantine(folder, Store(None))
    root = open_root(incoming)
    try:
        kept = quarantine.put(root, "junk", shown_as=incoming / "junk", reason="not-dicom",
                              error="no DICM", keep_source=keep_source)  # fmt: skip
        note_path = quarantine.put(root, "pipe", shown_as=incoming / "pipe",
                                   reason="not-a-regular-file", error="a FIFO",
                                   keep_source=keep_source)  # fmt: skip
    finally:
        os.close(root)
    assert kept.read_bytes() == b"junk"
    assert (incoming / "junk").exists() is keep_source
    assert os.path.lexists(incoming / "pipe") is keep_source
    note = json.loads(note_path.read_bytes())
    assert (note["type"], note["file"], note["name_removed"]) == ("FIFO", None, not keep_source)
    assert sorted(p.name.endswith(".json") for p in folder.iterdir()) == [False, True, True]


# -- settings -------------------------------------------------------------------


def test_settings_come_from_the_command_line_then_the_environment_then_defaults(
    tmp_path: Path,
) -> None:
    environ = {"PYPX_LISTENER_SETTLE": "2.5", "PYPX_LISTENER_WORKERS": "3"}
    settings = parse_settings(["--workers", "1", "--incoming", str(tmp_path)], environ)
    assert (settings.workers, settings.settle, settings.mode) == (1, 2.5, "move")
    assert settings.incoming == tmp_path
    assert parse_settings([], {}).workers == default_workers()
    assert parse_settings(["--no-fsync"], {}).fsync is False
    assert parse_settings([], {}).worker_nice == 10
    assert parse_settings([], {"PYPX_LISTENER_WORKER_NICE": "0"}).worker_nice == 0


@pytest.mark.parametrize(
    ("argv", "environ", "message", "hint"),
    [
        (["--bogus"], {}, "unrecognized arguments: --bogus", "pypx-listener --help"),
        (["--layout", "weird"], {}, "--layout='weird' is not a layout name", "rx-repack"),
        ([], {"PYPX_LISTENER_LAYOUT": "weird"}, "PYPX_LISTENER_LAYOUT='weird'", "rx-repack"),
        (["--mode", "mirror"], {}, "--mode='mirror' is not one of move, copy", "--mode"),
        ([], {"PYPX_LISTENER_WORKERS": "many"}, "PYPX_LISTENER_WORKERS='many'", "fix"),
        (["--fsync", "false"], {}, "unrecognized arguments: false", "--help"),
        (["--worker-nice", "20"], {}, "--worker-nice='20': must be from 0 to 19", "fix"),
        ([], {"PYPX_LISTENER_WORKER_NICE": "-5"}, "must be from 0 to 19, not -5", "fix"),
    ],
)
def test_a_bad_setting_is_one_message_and_a_hint(
    argv: list[str], environ: dict[str, str], message: str, hint: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_settings(argv, environ)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
    assert hint in raised.value.hint


def test_unknown_variables_are_found() -> None:
    environ = {"PYPX_LISTENER_SETTLE": "1", "PYPX_LISTENER_SETLE": "1", "HOME": "/root",
               "PYPX_LISTENER_SERIES_TEMPLATE": "%SeriesNumber"}  # fmt: skip
    assert unknown_variables(environ) == ["PYPX_LISTENER_SETLE"]


# -- JSON -----------------------------------------------------------------------


def test_json_is_ascii_and_never_fails_on_a_non_utf8_name(tmp_path: Path) -> None:
    document = {
        "PatientName": "Müller^Zoë 山田",
        "emoji": "🙂",
        "src": os.fsdecode(b"/in/\xff.dcm"),
    }
    data = dumps(document)
    assert data.isascii()
    parsed = json.loads(data)
    assert parsed["PatientName"] == "Müller^Zoë 山田"
    assert parsed["emoji"] == "🙂"
    assert parsed["src"] == "/in/\\xff.dcm"
    assert json.loads(json_bytes(document)) == parsed
    path = write_dicom(tmp_path / "x.dcm")
    assert path.exists()


def test_the_worker_entry_point_refuses_to_run_by_hand() -> None:
    """It is started by the service with a socket; by hand it says so and exits 2."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from watcher._workers import worker_command  # noqa: PLC0415

    command = worker_command(0)[:-2]  # no PACKAGES, no FD
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2
    assert "started by pypx-listener" in done.stderr
    assert command[0] == sys.executable
