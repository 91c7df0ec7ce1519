"""Optional parts of the service: a supervised storescp and the metrics server.

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

from repack import get_logger

from ._errors import ConfigError
from ._metrics import HealthServer, Metrics, Readiness, oldest_file_age
from ._settings import Settings

if TYPE_CHECKING:
    from ._service import Service

__all__ = ["Extras", "StorescpSupervisor", "build_extras"]


class StorescpSupervisor:
    """Keeps one storescp running; restarts it when it exits unexpectedly."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        executable = shutil.which("storescp")
        if executable is None:
            raise ConfigError(
                "--storescp-port needs dcmtk's storescp on PATH",
                hint="apt-get install -y dcmtk, or run storescp yourself and drop --storescp-port",
            )
        assert settings.storescp_port is not None  # noqa: S101 - checked by build_extras
        self.command = [
            executable,
            "-od", str(settings.incoming),
            "-aet", settings.storescp_aet,
            *shlex.split(settings.storescp_args),
            str(settings.storescp_port),
        ]  # fmt: skip
        self.metrics = metrics
        self.log = get_logger(component="storescp")
        self._process: subprocess.Popen[bytes] | None = None
        self._launched_at = 0.0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="storescp", daemon=True)
        self.restarts = 0

    def start(self) -> None:
        self._launch()
        self._thread.start()

    def _launch(self) -> None:
        self._process = subprocess.Popen(
            self.command,
            env={**os.environ, "TCP_NODELAY": "1"},
            start_new_session=True,
            stdin=subprocess.DEVNULL,
        )
        self._launched_at = time.monotonic()
        self.log.info("storescp.started", pid=self._process.pid, command=self.command)

    def _supervise(self) -> None:
        delay = 1.0
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
                delay = 1.0  # it ran fine for a while: start the back-off afresh
            self.log.error("storescp.exited", pid=process.pid, returncode=code, restart_in_s=delay)
            self._kill_group(process)
            if self._stopping.wait(delay):
                return
            delay = min(30.0, delay * 2)
            self.restarts += 1
            if self.metrics is not None:
                self.metrics.storescp_restarts.inc()
            self._launch()

    @staticmethod
    def _kill_group(process: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        process = self._process
        if process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
            self._kill_group(process)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
            self.log.info("storescp.stopped", pid=process.pid, returncode=process.returncode)
        if self._thread.is_alive():
            self._thread.join(timeout)


@dataclass
class Extras:
    """The optional parts, started after the service and stopped before it."""

    settings: Settings
    metrics: Metrics | None = None
    storescp: StorescpSupervisor | None = None
    server: HealthServer | None = None

    def start(self, service: Service) -> None:
        if self.storescp is not None:
            self.storescp.start()
        if self.metrics is not None and self.settings.metrics_port is not None:
            incoming = self.settings.incoming
            self.metrics.watch_oldest(lambda: oldest_file_age(incoming))
            readiness = Readiness(
                {
                    "incoming": self.settings.incoming,
                    "datadir": self.settings.datadir,
                    "logdir": self.settings.logdir,
                },
                service.watching,
                self.settings.storescp_port,
            )
            self.server = HealthServer(
                self.settings.metrics_host,
                self.settings.metrics_port,
                self.metrics,
                readiness,
                service.alive,
            )
            self.server.start()
            get_logger().info("metrics.serving", port=self.server.port)

    def stop(self) -> None:
        if self.storescp is not None:
            self.storescp.stop()
        if self.server is not None:
            self.server.stop()


def build_extras(settings: Settings) -> Extras:
    """The optional parts the settings ask for (validated before anything starts)."""
    metrics = Metrics() if settings.metrics_port is not None else None
    storescp = StorescpSupervisor(settings, metrics) if settings.storescp_port is not None else None
    return Extras(settings, metrics, storescp)
