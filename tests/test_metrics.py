"""watcher._metrics: its gauges come from memory; a scrape walks no folder."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from watcher._completion import CompletionTracker
from watcher._http import ProbeServer
from watcher._metrics import Metrics, Readiness, health_answers

from .helpers import Clock, get


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
    metrics.oldest.set_function(tracker.oldest_age)
    answers = health_answers(metrics, Readiness({}, threading.Event()))
    server = ProbeServer("127.0.0.1", 0, answers)
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
