"""The repack worker processes, as the parent sees them.

Each pool thread owns one child process (``python -P .../_worker_main.py``,
whose life is :mod:`watcher._child`) and hands it a batch of candidates at a
time over a socket pair; the child answers with one result per file
(:mod:`watcher._claim`). Events, series and metrics stay in the parent, which
writes every ``repack.done``. The parent kills a child that overruns a
deadline or stalls.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from repack import Layout, Repacker

from ._claim import NotRepacked, Outcome, Result
from ._completion import Candidate
from ._cube import cube_admits
from ._folders import Identity
from ._settings import Settings


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker process needs to build its :class:`~repack.Repacker` (picklable)."""

    incoming: str
    datadir: str
    logdir: str
    templates: tuple[str, str, str, str]
    layout_name: str
    move: bool
    fsync: bool
    log_json: bool | None = None
    log_level: str = "info"
    #: Added to a worker process's niceness, with ``SCHED_BATCH`` (0: neither).
    nice: int = 0
    #: The CUBE destination is set: what CUBE would refuse never enters its storage.
    cube: bool = False
    #: ``--pacs-name-from caller``: a folder per sender, this name for a file naming none.
    by_sender: str | None = None

    @classmethod
    def of(cls, settings: Settings) -> WorkerConfig:
        return cls(
            str(settings.incoming), str(settings.datadir), str(settings.logdir),
            settings.layout.sources, settings.layout.name, settings.move, settings.fsync,
            log_json={"auto": None, "json": True, "console": False}[settings.log_format],
            log_level=settings.log_level, nice=settings.worker_nice,
            cube=settings.celery_broker is not None,
            by_sender=settings.pacs_name if settings.pacs_name_from == "caller" else None,
        )  # fmt: skip

    def repacker(self) -> Repacker:
        layout = Layout.from_sources(self.templates, self.layout_name)
        admit = cube_admits if self.cube else None
        return Repacker(
            self.datadir, self.logdir, layout, move=self.move, fsync=self.fsync, admit=admit,
            by_sender=self.by_sender, lease_test=True,  # the worker process ignores SIGIO
        )  # fmt: skip


def worker_command(descriptor: int) -> list[str]:
    """How a worker process is started (``-P``: no script folder on its path)."""
    here = Path(__file__).resolve()
    return [sys.executable, "-P", str(here.with_name("_worker_main.py")), str(here.parent.parent),
            str(descriptor)]  # fmt: skip


class WorkerProcess:
    """One worker process, as its pool thread sees it: start, repack batches, stop."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self._process: subprocess.Popen[bytes] | None = None
        self._connection: Connection | None = None
        #: Why the process could not even be started (see :meth:`wait_ready`).
        self._start_failure: str | None = None

    def start(self) -> None:
        ours, theirs = socket.socketpair()
        with ours, theirs:
            command = worker_command(theirs.fileno())
            try:
                self._process = subprocess.Popen(
                    command, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL
                )
            except OSError as error:
                self._start_failure = (
                    f"cannot run the worker interpreter {command[0]}: {error.strerror or error}"
                )
                return
            self._start_failure = None
            self._connection = Connection(ours.detach())
        with contextlib.suppress(OSError):  # it died at once: wait_ready reports it
            self._connection.send(self.config)

    def wait_ready(self, timeout: float) -> str | None:
        """Wait until the process has warmed up; the reason it could not, or None."""
        if self._start_failure is not None:
            return self._start_failure
        if self._connection is None:
            return "the worker was not started"
        try:
            if not self._connection.poll(timeout):
                return f"it did not warm up within {timeout:.0f} s"
            state, detail = self._connection.recv()
        except (EOFError, OSError):
            return "the worker process exited during its start"
        return None if state == "ready" else str(detail)

    def repack(self, identity: Identity, candidates: list[Candidate]) -> list[Result]:
        """Repack a batch of candidates; one result each, in order (a new process if needed)."""
        if self._connection is None:
            self.start()
            problem = self.wait_ready(60)
            if problem is not None:
                return self._crashed(f"worker did not start: {problem}", len(candidates))
        assert self._connection is not None  # noqa: S101 - started just above
        try:
            self._connection.send((identity, candidates))
            results: list[Result] = self._connection.recv()
        except (EOFError, OSError) as error:
            return self._crashed(f"worker process died: {error or 'EOF'}", len(candidates))
        return results

    def _crashed(self, message: str, count: int) -> list[Result]:
        """A batch of ``count`` that this process failed as a whole; the next starts afresh."""
        self.stop(1.0)
        self._connection = None
        return [NotRepacked(Outcome.CRASHED, message=message)] * count

    def kill(self, *, reap: bool = True) -> None:
        """Kill the process now (a stalled file, or a missed stop deadline).

        ``reap=False``: for a service that exits right after (its init reaps).
        """
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            if reap:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(1.0)  # reaped here: nothing is left a zombie

    def stop(self, timeout: float) -> None:
        if self._connection is not None:
            with contextlib.suppress(OSError):
                self._connection.send(None)
            self._connection.close()
            self._connection = None
        if self._process is not None:
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
            self._process = None
