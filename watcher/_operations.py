"""The operational parts around the service: the metrics server and a supervised storescp.

Supervised mode (``--storescp-port``) runs an *unmodified* dcmtk storescp as
a child writing into the incoming folder, restarts it with back-off if it
dies, and stops its whole process group on shutdown (storescp has no SIGTERM
handler, and ``--fork`` children share the group). It is stopped before the
workers drain, so no file arrives after the service stopped watching.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from repack import Event, get_logger

from ._backoff import STORESCP_RESTART
from ._errors import EXIT_STARTUP, ConfigError
from ._http import ProbeServer
from ._metrics import Metrics, Readiness, health_answers
from ._settings import Settings

if TYPE_CHECKING:
    from ._service import Service


#: storescp's options that choose which transfer syntaxes it accepts.
_SYNTAX_CHOICES = ("+x", "--prefer-", "--accept-all", "--implicit", "-xf", "--config-file")


def storescp_command(
    incoming: str, aet: str, extra: str, port: int, *, executable: str = "storescp"
) -> list[str]:
    """The supervised storescp's command line.

    ``+xa`` (accept every transfer syntax dcmtk supports: JPEG, JPEG-LS, JPEG 2000,
    RLE, deflate, ...; files are written as received) unless ``extra`` chooses
    the transfer syntaxes itself: a PACS that cannot convert what it holds
    fails the push on storescp's default, uncompressed-only proposals.
    """
    options = shlex.split(extra)
    chosen = any(option.startswith(_SYNTAX_CHOICES) for option in options)
    return [
        executable,
        "-od", incoming,
        "-aet", aet,
        *([] if chosen else ["+xa"]),
        *options,
        str(port),
    ]  # fmt: skip


class StorescpSupervisor:
    """Keeps one storescp running; restarts it when it exits unexpectedly."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        executable = shutil.which("storescp")
        if executable is None:
            raise ConfigError(
                "--storescp-port needs dcmtk's storescp on PATH",
                hint="apt-get install -y dcmtk, or run storescp yourself and drop --storescp-port",
            )
        assert settings.storescp_port is not None  # noqa: S101 - checked by build_operations
        self.command = storescp_command(
            str(settings.incoming),
            settings.storescp_aet,
            settings.storescp_args,
            settings.storescp_port,
            executable=executable,
        )
        self.metrics = metrics
        self.log = get_logger(component="storescp")
        self._process: subprocess.Popen[bytes] | None = None
        self._launched_at = 0.0
        self._stopping = threading.Event()
        self.thread = threading.Thread(target=self._supervise, name="storescp", daemon=True)

    def start(self) -> None:
        self._launch()
        self.thread.start()

    def _launch(self) -> None:
        self._process = subprocess.Popen(
            self.command,
            env={**os.environ, "TCP_NODELAY": "1"},
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )
        self._launched_at = time.monotonic()
        self.log.info(Event.STORESCP_STARTED, pid=self._process.pid, command=self.command)

    def _supervise(self) -> None:
        failures = 0  # in a row: exits within a minute of their start
        while not self._stopping.wait(0.25):
            process = self._process
            if process is None:
                return
            code = process.poll()
            if code is None:
                continue
            if self._stopping.is_set():
                return
            if time.monotonic() - self._launched_at > 60:
                failures = 0  # it ran fine for a while: start the back-off afresh
            failures += 1
            delay = STORESCP_RESTART.delay(failures)
            self.log.error(
                Event.STORESCP_EXITED, pid=process.pid, returncode=code, restart_in_s=delay
            )
            self._kill_group(process)
            if self._stopping.wait(delay):
                return
            self.metrics.storescp_restarts.inc()
            self._launch()

    @staticmethod
    def _kill_group(process: subprocess.Popen[bytes], signum: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signum)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        process = self._process
        if process is not None:
            self._kill_group(process, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
            self._kill_group(process)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
            self.log.info(Event.STORESCP_STOPPED, pid=process.pid, returncode=process.returncode)
        if self.thread.is_alive():
            self.thread.join(timeout)


@dataclass
class Operations:
    """The metrics server and the supervised storescp, as the settings ask for them.

    Built from the service (ports bound, storescp found) before it starts, so
    their start-up errors come before ``watcher.started``; started after the
    service, stopped before it (no file arrives after it stopped watching).
    """

    storescp: StorescpSupervisor | None = None
    server: ProbeServer | None = None

    def start(self, service: Service) -> None:
        if self.server is not None:
            self.server.start()
            service.threads.essential([self.server.thread])
            get_logger().info(Event.METRICS_SERVING, port=self.server.port)
        if self.storescp is not None:
            self.storescp.start()
            service.threads.essential([self.storescp.thread])

    def stop(self, service: Service) -> None:
        service.threads.stopping()
        if self.storescp is not None:
            self.storescp.stop()
        if self.server is not None:
            self.server.stop()


def build_operations(settings: Settings, service: Service) -> Operations:
    """The operational parts the settings ask for, reading ``service`` (not started
    yet) for their answers; raise :class:`ConfigError`."""
    metrics = service.metrics
    storescp = StorescpSupervisor(settings, metrics) if settings.storescp_port is not None else None
    server = None
    if settings.metrics_port is not None:
        readiness = Readiness(
            settings.folders, service.watching, settings.storescp_port, service.ready_problems
        )
        try:
            answers = health_answers(metrics, readiness, service.alive_problems)
            server = ProbeServer(settings.metrics_host, settings.metrics_port, answers)
        except OSError as error:
            raise ConfigError(
                f"--metrics-port {settings.metrics_port} on {settings.metrics_host} cannot be"
                f" served: {error.strerror or error}",
                hint="choose a free port (--metrics-port), or stop what listens on it",
                exit_code=EXIT_STARTUP,
            ) from error
        metrics.oldest.set_function(service.tracker.oldest_age)
    return Operations(storescp, server)
