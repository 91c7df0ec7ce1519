"""Concurrent writers: several services on one folder plus storescp-style one-shots."""

from __future__ import annotations

import collections
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from watcher._service import _BATCH

from .helpers import installed
from .listener import Listener
from .workload import plan, write_workload

pytestmark = pytest.mark.slow


class JsonReader(threading.Thread):
    """Parses every log file over and over; remembers any it saw half-written."""

    def __init__(self, log: Path) -> None:
        super().__init__(daemon=True)
        self.log = log
        self.stop = threading.Event()
        self.reads = 0
        self.broken: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            for path in list(self.log.rglob("*.json")) if self.log.exists() else []:
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    continue
                try:
                    orjson.loads(data)
                except orjson.JSONDecodeError:
                    self.broken.append(f"{path}: {data[:80]!r}")
                self.reads += 1


def _one_shot(exe: str, path: Path, root: Path) -> subprocess.Popen[bytes]:
    """``pypx-repack`` as ``storescp -xcr`` runs it, on one file."""
    return subprocess.Popen(
        [exe, "--xcrdir", str(path.parent), "--xcrfile", path.name,
         "--datadir", str(root / "data"), "--logdir", str(root / "log"),
         "--cleanup", "--log-ndjson"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def _reaped(
    running: list[subprocess.Popen[bytes]], events: list[dict[str, object]]
) -> list[subprocess.Popen[bytes]]:
    """The one-shots still running; each that ended succeeded, its event kept."""
    still = []
    for process in running:
        if process.poll() is None:
            still.append(process)
            continue
        out, err = process.communicate(timeout=10)
        assert process.returncode == 0, err
        events.append(orjson.loads(out))
    return still


def _assert_the_tree_is_whole(root: Path, planned: list[Any]) -> None:
    """Every instance in the data tree and logged once; each patient lists its studies."""
    assert len(list((root / "data").rglob("*.dcm"))) == len(planned)
    assert len(list((root / "log").glob("seriesData/*-img/*.json"))) == len(planned)
    expected: dict[str, set[str]] = collections.defaultdict(set)
    for instance in planned:
        expected[instance.patient_id].add(instance.study_uid)
    for patient, studies in expected.items():
        listed = orjson.loads((root / "log" / "patientData" / f"{patient}.json").read_bytes())
        assert sorted(listed[patient]["StudyList"]) == sorted(studies)


def test_services_and_one_shots_together(tmp_path: Path) -> None:
    planned = plan(patients=6, studies=3, series=3, instances=12, seed="C")  # 648 instances
    staging = tmp_path / "staging"
    files = write_workload(staging, planned)
    one_shot = set(files[::9])  # 72 files, spread over every patient and study
    root = tmp_path / "shared"
    (root / "incoming").mkdir(parents=True)
    reader = JsonReader(root / "log")
    reader.start()
    args = ("--settle", "0.3", "--scan-interval", "1", "--workers", "2")
    services = [Listener(root, *args).start() for _ in range(3)]
    exe = installed("pypx-repack")
    one_shot_events: list[dict[str, object]] = []
    try:
        pending = [p for p in files if p not in one_shot]
        shots = sorted(one_shot)
        running: list[subprocess.Popen[bytes]] = []
        killed = False
        while pending or shots or running:
            for path in pending[:20]:
                os.rename(path, root / "incoming" / path.name)  # storescp-like arrival
            pending = pending[20:]
            while shots and len(running) < 12:
                running.append(_one_shot(exe, shots.pop(), root))
            running = _reaped(running, one_shot_events)
            if not killed and services[2].count("repack.done") >= 10:
                services[2].kill()  # a writer dies mid-stream, holding whatever it held
                killed = True
            time.sleep(0.05)
        assert killed, "the third service never got to work"
        survivors = services[:2]
        survivors[0].wait_for(
            lambda: not any((root / "incoming").rglob("MR.*")), 120, "the incoming folder to drain"
        )
        for service in survivors:
            assert service.stop() == 0
    finally:
        for service in services:
            service.kill()
        reader.stop.set()
        reader.join(10)

    assert reader.reads > 100
    assert reader.broken == []
    _assert_the_tree_is_whole(root, planned)
    events = [e for s in services for e in s.of("repack.done")] + one_shot_events
    per_instance = collections.Counter(str(e["dst"]) for e in events)
    assert max(per_instance.values()) == 1, "an instance was repacked twice"
    # The killed service's process group died with it, its two workers too, each
    # perhaps in the middle of a batch: the files a worker had finished in it were
    # repacked (the data and logs above are complete) but never reported. At most a
    # batch per worker; nothing more (a worker whose parent is gone starts no file).
    assert len(planned) - 2 * _BATCH <= len(per_instance) <= len(planned)
    survivors_done = sum(s.count("repack.done") for s in services[:2])
    assert survivors_done > 0
    assert services[2].count("repack.done") > 0  # it did work before it died
