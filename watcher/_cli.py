"""``pypx-listener``: run the service until SIGTERM or SIGINT.

Everything that can fail at start (settings, folders, the metrics port, the
worker processes, the inotify limits) is checked before ``watcher.started``
is announced; a failure is one line, a ``hint:`` and exit status 2 (a
setting) or 3 (a folder, port or worker).

If whatever reads the event stream goes away (stdout is a closed pipe), the
service stops as on SIGTERM and exits with 141 (128 + SIGPIPE) and one line
on stderr, rather than losing a thread to ``BrokenPipeError`` and running on
without its events.

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
from ._errors import EXIT_OUTPUT_LOST, ConfigError
from ._service import Service
from ._settings import ENV_PREFIX, parse_settings, unknown_variables
from ._supervisor import build_operations

__all__ = ["main", "run"]


def run(argv: Sequence[str] | None = None) -> int:
    """Run the service in the foreground; return the exit status."""
    settings = parse_settings(argv)
    json = {"auto": None, "json": True, "console": False}[settings.log_format]
    stop_requested = threading.Event()
    output_lost = threading.Event()

    def on_output_lost() -> None:
        output_lost.set()
        stop_requested.set()

    configure_logging(json=json, level=settings.log_level, on_output_lost=on_output_lost)
    install_warning_collector()
    log = get_logger()
    for name in unknown_variables(os.environ):
        log.warning(
            "watcher.unknown_setting",
            variable=name,
            hint=f"no option is named so; see pypx-listener --help for the {ENV_PREFIX}* names",
        )
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
    if output_lost.is_set():
        # Nothing more goes to the closed pipe, not even the interpreter's last flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        report_error(
            "pypx-listener",
            "the event stream (stdout) was closed; stopped after finishing the files in hand",
            "keep whatever reads pypx-listener's output running (a log shipper, a pipe)",
        )
        return EXIT_OUTPUT_LOST
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``pypx-listener``."""
    try:
        code = run(argv)
    except ConfigError as error:
        report_error("pypx-listener", str(error), error.hint)
        code = error.exit_code
    sys.exit(code)
