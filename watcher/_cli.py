"""``pypx-listener``: run the service until SIGTERM or SIGINT.

Everything that can fail at start (settings, folders, the metrics port, the
worker processes, the inotify limits) is checked before ``watcher.started``
is announced; a failure is one line, a ``hint:`` and exit status 2 (a
setting) or 3 (a folder, port or worker).

The first signal stops watching and lets the workers finish (or hand back)
what they hold, within ``--stop-timeout``; the exit status is then 0. A
second signal exits at once: every write is atomic and a source is only
removed after its copy and logs exist, so even that loses nothing.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from repack import configure_logging, get_logger
from repack._arguments import report_error

from ._engine import install_warning_collector
from ._errors import ConfigError
from ._service import Service
from ._settings import ENV_PREFIX, parse_settings, unknown_variables
from ._supervisor import build_operations

__all__ = ["main", "run"]


def run(argv: Sequence[str] | None = None) -> int:
    """Run the service in the foreground; return the exit status."""
    settings = parse_settings(argv)
    json = {"auto": None, "json": True, "console": False}[settings.log_format]
    configure_logging(json=json, level=settings.log_level)
    install_warning_collector()
    log = get_logger()
    for name in unknown_variables(os.environ):
        log.warning(
            "watcher.unknown_setting",
            variable=name,
            hint=f"no option is named so; see pypx-listener --help for the {ENV_PREFIX}* names",
        )
    stop_requested = threading.Event()
    running: list[Service] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop_requested.is_set():
            log.warning("watcher.killed", signal=signal.Signals(signum).name)
            for service in running:  # no worker process outlives the service
                service.kill_workers()
            sys.stdout.flush()
            os._exit(128 + signum)
        log.info("watcher.stopping", signal=signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGIO, signal.SIG_IGN)  # a lease break must never end the service
    operations = build_operations(settings)
    service = Service(settings, metrics=operations.metrics)
    running.append(service)
    service.start(announce=False)
    try:
        operations.start(service)
        service.announce()
        stop_requested.wait()
    finally:
        operations.stop()
        service.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``pypx-listener``."""
    try:
        code = run(argv)
    except ConfigError as error:
        report_error("pypx-listener", str(error), error.hint)
        code = error.exit_code
    sys.exit(code)
