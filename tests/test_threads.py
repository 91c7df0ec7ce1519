"""watcher._threads: no thread the service needs may die unseen.

Unit tests of :class:`~watcher._threads.ThreadWatch`, then the real service
with each of its threads killed by fault injection (:mod:`tests.faults`): an
``error`` event names the thread, ``/healthz`` fails, and then the observer is
re-armed or the service stops with exit status 70 for its supervisor.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from watcher._errors import EXIT_THREAD_DIED
from watcher._service import Service
from watcher._settings import parse_settings
from watcher._threads import REARMS_PER_MINUTE, ThreadWatch

from .conftest import ROOT, write_dicom
from .dcmtk import LOOPBACK, free_port
from .faults import _raise_in
from .helpers import FAST, Clock, get, wait_for
from .listener import Listener


class _Log:
    """A structlog-like logger that keeps what it was told."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def error(self, event: str, **fields: Any) -> None:
        self.lines.append({"event": event, **fields})


def _watch() -> tuple[ThreadWatch, _Log, list[str], Clock]:
    log, fatal, clock = _Log(), [], Clock()
    return ThreadWatch(log, fatal.append, clock=clock), log, fatal, clock


def test_a_death_is_reported_once_and_a_stop_is_asked_for() -> None:
    watch, log, fatal, _ = _watch()
    watch.died("dispatcher", "KeyError: 1", restartable=False)
    watch.died("dispatcher", "KeyError: 1", restartable=False)
    assert log.lines == [
        {
            "event": "watcher.thread_died",
            "thread": "dispatcher",
            "error": "KeyError: 1",
            "action": "stop",
        }
    ]
    assert fatal == ["the thread 'dispatcher' died: KeyError: 1"]
    assert watch.problems() == fatal


def test_an_observer_death_asks_for_a_rearm_and_the_rearm_heals_it() -> None:
    watch, log, fatal, _clock = _watch()
    watch.died("Thread-7", "OSError: gone", restartable=True)
    assert watch.observer_died() == "Thread-7"
    assert watch.problems() == ["the thread 'Thread-7' died: OSError: gone"]
    assert log.lines[0]["action"] == "rearm"
    watch.rearmed([])
    assert watch.problems() == []
    assert watch.observer_died() is None
    assert fatal == []


def test_an_observer_that_keeps_dying_stops_the_service() -> None:
    watch, log, fatal, clock = _watch()
    for attempt in range(REARMS_PER_MINUTE):
        watch.died(f"Thread-{attempt}", "OSError: gone", restartable=True)
        watch.rearmed([])
        clock.now += 1
    watch.died("Thread-last", "OSError: gone", restartable=True)
    assert log.lines[-1]["action"] == "stop"
    assert fatal
    assert "within a minute" in fatal[0]


def test_observer_deaths_a_minute_apart_are_each_rearmed() -> None:
    watch, log, fatal, clock = _watch()
    for attempt in range(2 * REARMS_PER_MINUTE):
        watch.died(f"Thread-{attempt}", "OSError: gone", restartable=True)
        watch.rearmed([])
        clock.now += 61
    assert {line["action"] for line in log.lines} == {"rearm"}
    assert fatal == []


def test_a_thread_that_ends_unseen_is_found_by_check() -> None:
    watch, _log, fatal, _ = _watch()
    finished = threading.Thread(target=lambda: None, name="handoff")
    finished.start()
    finished.join(5)
    watch.essential([finished])
    watch.check()
    assert fatal == ["the thread 'handoff' died: the thread ended"]


def test_after_stopping_no_death_is_reported() -> None:
    watch, log, fatal, _ = _watch()
    watch.stopping()
    watch.died("dispatcher", "KeyError: 1", restartable=False)
    assert log.lines == []
    assert fatal == []


def test_the_excepthook_is_chained_while_installed_and_restored_after() -> None:
    watch, _log, fatal, _ = _watch()
    before = threading.excepthook
    watch.install()
    try:

        def fail() -> None:
            raise ValueError("boom")

        thread = threading.Thread(target=fail, name="signals")
        thread.start()
        thread.join(5)
    finally:
        watch.uninstall()
    assert threading.excepthook is before
    assert fatal == ["the thread 'signals' died: ValueError: boom"]


# -- the real service ------------------------------------------------------------


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    settings = parse_settings(
        [
            "--incoming", str(tmp_path / "incoming"),
            "--datadir", str(tmp_path / "data"),
            "--logdir", str(tmp_path / "log"),
            "--quarantine", str(tmp_path / "quarantine"),
            "--workers", "1",
            *FAST,
        ]
    )  # fmt: skip
    running = Service(settings)
    running.start(announce=False)
    try:
        yield running
    finally:
        running.stop(10)


def _thread(name: str) -> threading.Thread:
    found = [t for t in threading.enumerate() if name in (t.name, type(t).__name__)]
    assert found, f"no thread {name}"
    return found[0]


def test_a_killed_dispatcher_fails_healthz_within_a_second(service: Service) -> None:
    assert service.alive_problems() == []
    with capture_logs() as logs:
        assert _raise_in(_thread("dispatcher"))
        started = time.monotonic()
        wait_for(lambda: service.alive_problems() != [], 1.0, "/healthz's problems")
    assert time.monotonic() - started < 1.0
    assert "the thread 'dispatcher' died: InjectedFaultError" in service.alive_problems()[0]
    died = [e for e in logs if e["event"] == "watcher.thread_died"]
    assert died == [
        {
            "event": "watcher.thread_died",
            "log_level": "error",
            "thread": "dispatcher",
            "error": "InjectedFaultError: ",
            "action": "stop",
        }
    ]


def test_a_killed_observer_is_rearmed_and_files_are_seen_again(
    service: Service, tmp_path: Path
) -> None:
    with capture_logs() as logs:
        assert _raise_in(_thread("InotifyObserver"))
        # watchdog's observer thread meets the fault when an event wakes it.
        write_dicom(tmp_path / "incoming" / "MR.wake", SOPInstanceUID="1.2.3.1")
        wait_for(lambda: any(e["event"] == "watcher.rearmed" for e in logs), 5, "watcher.rearmed")
    assert service.alive_problems() == []
    write_dicom(tmp_path / "incoming" / "MR.after", SOPInstanceUID="1.2.3.2")
    wait_for(lambda: len(list((tmp_path / "data").rglob("*.dcm"))) == 2, 10, "both repacked")


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "faults.fifo"
    os.mkfifo(path)
    return path


#: Each thread, what it needs running, and how it is woken to meet its fault.
_FATAL = {
    "dispatcher": (),
    "repack-worker-0": (),
    "signals": (),
    "metrics": (),
    "handoff": ("--on-series-complete", "true"),
    "storescp": ("--storescp-port", "PORT"),
}


def _start_with_faults(tmp_path: Path, fifo: Path, *args: str) -> tuple[Listener, Any]:
    process = Listener(
        tmp_path,
        *FAST,
        *args,
        "--workers",
        "1",
        prefix=(sys.executable, "-m", "tests.faults", str(fifo), "--"),
        env={"PYTHONPATH": str(ROOT)},
        metrics=True,
    ).start()
    return process, open(fifo, "w", encoding="utf-8")


def _kill(process: Listener, requests: Any, name: str, wake: int) -> None:
    requests.write(name + "\n")
    requests.flush()
    process.wait_for(lambda: f"faults: raised in {name}" in process.stderr, 10, "the fault")
    # Whatever the thread waits for: a file for the readers and the pool, a signal
    # for the signals thread; the others wake on a timer.
    write_dicom(process.incoming / f"MR.wake{wake}", SOPInstanceUID=f"1.2.3.{wake}")
    assert process.process is not None
    os.kill(process.process.pid, signal.SIGUSR2)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(_FATAL))
def test_a_killed_thread_stops_the_service_for_its_supervisor(
    tmp_path: Path, fifo: Path, name: str
) -> None:
    args = _FATAL[name]
    args = tuple(str(free_port()) if a == "PORT" else a for a in args)
    process, requests = _start_with_faults(tmp_path, fifo, *args)
    with requests:
        _kill(process, requests, name, 1)
        # The hand-off thread sleeps up to 5 s between passes: it meets the fault then.
        process.wait_for(lambda: process.count("watcher.thread_died") == 1, 15, "the death")
        assert process.process is not None
        process.process.wait(30)  # it stops by itself: no signal
        code = process.stop(30)
    assert code == EXIT_THREAD_DIED, process.stderr
    died = process.of("watcher.thread_died")[0]
    assert died["level"] == "error"
    assert (died["thread"], died["action"]) == (name, "stop")
    assert died["error"].startswith("InjectedFaultError")
    assert process.count("watcher.stopped") == 1
    assert "hint:" in process.stderr


@pytest.mark.slow
@pytest.mark.parametrize("name", ["InotifyObserver", "InotifyEmitter", "InotifyFD"])
def test_a_killed_watchdog_thread_is_rearmed_within_a_second(
    tmp_path: Path, fifo: Path, name: str
) -> None:
    process, requests = _start_with_faults(tmp_path, fifo)
    with requests:
        _kill(process, requests, name, 1)
        process.wait_for(lambda: process.count("watcher.rearmed") == 1, 5, "the re-arm")
        died = process.of("watcher.thread_died")[0]
        assert died["action"] == "rearm"
        status, body = get(f"http://{LOOPBACK}:{process.metrics_port}/healthz")
        assert status == 200, body
        write_dicom(process.incoming / "MR.after", SOPInstanceUID="1.2.3.9")
        process.wait_for(lambda: len(process.data_files()) == 2, 10, "both files repacked")
        assert process.stop(30) == 0
