"""Count the calls across modules on one file's path, from watchdog's event to ``repack.done``.

Runs the path's steps in one process, in the order the service runs them on
its threads and its worker process: the watchdog handler, the tracker, the
claim and repack, ``repack.done``'s writer, the router. A profiler records
every call from a module of ``repack``/``watcher`` into a *different* one.
This script plays the service's part (the dispatcher, the pool thread, the
socket pair to the worker process), so the service's own calls are listed
by hand beside what is traced.

    .venv/bin/python -m benchmarks.path_calls [FILE.dcm]

Prints each caller -> callee pair once, in the order first made, then the
main line: the calls the steps make themselves (not what those call in
turn), traced, and the service's own. Events are logged as JSON lines, as the
service logs them (to a discarded stream); a call made through ``contextlib``
(a ``with`` of a context manager of ours) counts as its caller's.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from watchdog.events import FileClosedEvent

from repack import Repacked, configure_logging, get_logger
from repack.plumbing import Store, log_repacked
from watcher import parse_settings
from watcher._claim import repack_candidate
from watcher._completion import CompletionTracker
from watcher._folders import IncomingRoot
from watcher._metrics import Metrics
from watcher._observer import Recorder
from watcher._outcomes import ResultRouter
from watcher._quarantine import Quarantine
from watcher._series import SeriesTracker
from watcher._workers import WorkerConfig

_OURS = ("repack.", "watcher.")
_SERVICE_CALLS = (
    "watcher._service._dispatch_loop -> watcher._completion.take_ready",
    "watcher._service._dispatch_loop -> watcher._pool.submit",
    "watcher._pool._work -> watcher._service._handle (the pool's queue)",
    "watcher._service._handle -> watcher._workers.repack (the socket pair: repack_candidate)",
    "watcher._service._handle -> repack._repack.event_fields",
    "watcher._service._handle -> repack._events.log_repacked",
    "watcher._service._handle -> watcher._outcomes.route",
)


def _module(frame: FrameType) -> str:
    return str(frame.f_globals.get("__name__", ""))


def main(argv: list[str]) -> int:
    example = Path(argv[0]) if argv else min(Path("examples/FNNDSC-SAG-anon-3d6e850").glob("*.dcm"))
    work = Path(tempfile.mkdtemp(prefix="path-calls-"))
    try:
        return _trace(example, work)
    finally:
        shutil.rmtree(work)


class _Tracer:
    """A profile function that records each cross-module call of ours once, and which of
    them the path's steps make themselves (the main line)."""

    steps = frozenset({"on_any_event", "take_ready", "repack_candidate", "log_repacked", "route"})

    def __init__(self) -> None:
        self.pairs: dict[tuple[str, str], int] = {}
        self.main_line: list[str] = []

    def profile(self, frame: FrameType, event: str, _: Any) -> None:
        caller = frame.f_back
        while caller is not None and _module(caller) == "contextlib":
            caller = caller.f_back  # a with statement's context manager: its caller's call
        if event != "call" or caller is None:
            return
        callee, calling = _module(frame), _module(caller)
        if callee == calling or not (callee.startswith(_OURS) and calling.startswith(_OURS)):
            return
        pair = (f"{calling}.{caller.f_code.co_name}", f"{callee}.{frame.f_code.co_name}")
        if pair not in self.pairs:
            self.pairs[pair] = len(self.pairs)
            if caller.f_code.co_name in self.steps:
                self.main_line.append(f"{pair[0]} -> {pair[1]}")


def _trace(example: Path, work: Path) -> int:
    with open(os.devnull, "w") as discarded:
        return _traced(example, work, discarded)


def _traced(example: Path, work: Path, discarded: TextIO) -> int:
    incoming = work / "incoming"
    incoming.mkdir()
    settings = parse_settings(
        ["--incoming", str(incoming), "--datadir", str(work / "data"), "--logdir",
         str(work / "log"), "--quarantine", str(work / "quarantine"), "--settle", "1"],
        environ={},
    )  # fmt: skip
    configure_logging(json=True, stream=discarded)
    tracker = CompletionTracker(0.0)
    root = IncomingRoot(incoming)
    root.open()
    log = get_logger()
    router = ResultRouter(
        settings, tracker=tracker, quarantine=Quarantine(settings.quarantine, Store(None)),
        root=root, series=SeriesTracker(30), metrics=Metrics(), log=log,
    )  # fmt: skip
    recorder = Recorder(tracker, str(incoming))
    repacker = WorkerConfig.of(settings).repacker()
    tracer = _Tracer()
    pairs, main_line, profile = tracer.pairs, tracer.main_line, tracer.profile

    # Warm up on a first file, so that the traced one takes the steady path.
    for name in ("MR.0", "MR.1"):
        path = incoming / name
        shutil.copyfile(example, path)
        if name == "MR.1":
            sys.setprofile(profile)
        try:
            recorder.on_any_event(FileClosedEvent(str(path)))
            (candidate,) = tracker.take_ready(1)
            result = repack_candidate(repacker, root, root.identity, candidate)
            if not isinstance(result, Repacked):
                raise SystemExit(f"not repacked: {result}")
            log_repacked(log, result.event_fields())
            router.route(candidate, result)
        finally:
            sys.setprofile(None)
    root.close()
    for caller, callee in pairs:
        print(f"{caller} -> {callee}")
    print("\nmain line, traced (the calls the steps make themselves):")
    print("\n".join(main_line))
    print("\nmain line, the service's own calls (this script plays the service):")
    print("\n".join(_SERVICE_CALLS))
    print(
        f"\ncross-module pairs traced: {len(pairs)}; on the main line: {len(main_line)} traced"
        f" + {len(_SERVICE_CALLS)} of the service"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
