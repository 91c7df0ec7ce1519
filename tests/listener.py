"""Running pypx-listener as a real process in tests, and reading its events."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from .dcmtk import LOOPBACK, free_port
from .helpers import get, installed, metric, wait_for

#: Every listener a test started; the ``stop_every_listener`` fixture stops them.
STARTED: list[Listener] = []


class Listener:
    """A running ``pypx-listener`` whose JSON event lines are collected."""

    def __init__(
        self,
        root: Path,
        *args: str,
        env: dict[str, str] | None = None,
        prefix: tuple[str, ...] = (),
        metrics: bool = False,
    ) -> None:
        self.root = root
        #: The port of its /metrics, when started with ``metrics=True``.
        self.metrics_port = free_port() if metrics else None
        if self.metrics_port is not None:
            args = (*args, "--metrics-port", str(self.metrics_port), "--metrics-host", LOOPBACK)
        self.incoming = root / "incoming"
        self.data = root / "data"
        self.log = root / "log"
        self.quarantine = root / "quarantine"
        self.command = [
            *prefix,  # a wrapper such as ``unshare``: the service is its last program
            installed("pypx-listener"),
            "--incoming", str(self.incoming),
            "--datadir", str(self.data),
            "--logdir", str(self.log),
            "--quarantine", str(self.quarantine),
            "--log-format", "json",
            *args,
        ]  # fmt: skip
        self.env = {**os.environ, **(env or {})}
        self.events: list[dict[str, Any]] = []
        self.stderr = ""
        self._lock = threading.Lock()
        self.process: subprocess.Popen[bytes] | None = None
        self._readers: list[threading.Thread] = []

    def start(self) -> Listener:
        self.process = subprocess.Popen(
            self.command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
            start_new_session=True,
        )
        STARTED.append(self)
        self._readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        try:
            self.wait_for(lambda: self.count("watcher.started") == 1, 30, "watcher.started")
        except BaseException:
            self.kill()  # a service that did not start never outlives its test
            raise
        return self

    def _read(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                pytest.fail(f"not a JSON event line: {line!r}")
            with self._lock:
                self.events.append(event)

    def _read_stderr(self) -> None:
        assert self.process is not None
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._lock:
                self.stderr += line.decode(errors="replace")

    def of(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.events if e.get("event") == name]

    def count(self, name: str) -> int:
        return len(self.of(name))

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """:func:`~tests.helpers.wait_for`, giving up (with its stderr) when the service exited."""

        def exited() -> str | None:
            if self.process is None or self.process.poll() is None:
                return None
            with self._lock:
                return f"; it exited ({self.process.returncode}): {self.stderr[-3000:]}"

        wait_for(condition, timeout, what, give_up=exited)

    def metric(self, name: str, labels: str = "") -> float:
        """One sample of its /metrics (started with ``metrics=True``)."""
        status, text = get(f"http://{LOOPBACK}:{self.metrics_port}/metrics")
        assert status == 200, text
        return metric(text, name, labels)

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signum)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then wait (bounded); return the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail("pypx-listener did not exit within the stop timeout")
        self._close_pipes()
        return code

    def _close_pipes(self) -> None:
        """Let the readers take the last lines, then close both pipes.

        Whatever is left of the service's process group (a worker it could not
        stop) is killed first: it holds the pipes open, and a reader blocked on
        a pipe would never end.
        """
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        for reader in self._readers:
            reader.join(10)
        assert self.process is not None
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        if self.process is not None:
            self._close_pipes()

    def data_files(self) -> list[Path]:
        return sorted(self.data.rglob("*.dcm")) if self.data.exists() else []

    def incoming_files(self) -> list[Path]:
        if not self.incoming.exists():
            return []
        return sorted(p for p in self.incoming.rglob("*") if p.is_file())


@contextlib.contextmanager
def listener(
    root: Path,
    *args: str,
    env: dict[str, str] | None = None,
    prefix: tuple[str, ...] = (),
    metrics: bool = False,
) -> Iterator[Listener]:
    """Start a listener; always stop (or kill) it afterwards."""
    running = Listener(root, *args, env=env, prefix=prefix, metrics=metrics).start()
    try:
        yield running
    finally:
        if running.process is not None and running.process.poll() is None:
            running.stop()
        running.kill()


class InProcess:
    """The service run in the test's own process, as a library caller runs it.

    The same reading API as :class:`Listener` (``of``, ``count``, ``wait_for``,
    ``stop``, ``metric``, the folders), with the events taken by structlog's
    ``capture_logs`` rather than parsed from a child's stdout, and the metrics read
    from the registry rather than over HTTP. For what needs no process of its own:
    signals, the CLI's exit codes and stdout stay with :class:`Listener`.
    """

    def __init__(self, root: Path, events: list[Any], *args: str) -> None:
        """Built inside ``capture_logs``, whose list ``events`` is."""
        from watcher import Service, parse_settings  # noqa: PLC0415

        self.root = root
        self.incoming = root / "incoming"
        self.data = root / "data"
        self.log = root / "log"
        self.quarantine = root / "quarantine"
        folders = {"incoming": self.incoming, "datadir": self.data, "logdir": self.log,
                   "quarantine": self.quarantine}  # fmt: skip
        self.settings = parse_settings(
            [*(f"--{name}={path}" for name, path in folders.items()), *args], environ={}
        )
        self.events: list[dict[str, Any]] = events
        self.totals: dict[str, Any] | None = None
        self.service = Service(self.settings)

    def of(self, name: str) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e.get("event") == name]

    def count(self, name: str) -> int:
        return len(self.of(name))

    def wait_for(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        wait_for(condition, timeout, what)

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float:
        value = self.service.metrics.registry.get_sample_value(name, labels or {})
        assert value is not None, f"no metric {name}"
        return value

    def stop(self, timeout: float = 30) -> int:
        """Stop the service (once); 0 when the stop was clean, as the CLI exits."""
        if self.totals is None:
            self.totals = self.service.stop(timeout)
        return 0 if self.totals["clean"] else 1

    data_files = Listener.data_files
    incoming_files = Listener.incoming_files


@contextlib.contextmanager
def in_process(root: Path, *args: str) -> Iterator[InProcess]:
    """Run the service in this process, its events captured; always stop it afterwards."""
    from structlog.testing import capture_logs  # noqa: PLC0415

    with capture_logs() as events:
        running = InProcess(root, events, *args)
        running.service.start()
        try:
            yield running
        finally:
            running.stop()
