"""``pypx-listener``: run the service until SIGTERM or SIGINT.

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

from repack import configure_logging, get_logger, report_error

from ._errors import ConfigError
from ._service import Service
from ._settings import Settings, parse_settings

__all__ = ["main", "run"]


def _configure(settings: Settings) -> None:
    json = {"auto": None, "json": True, "console": False}[settings.log_format]
    configure_logging(json=json, level=settings.log_level)


def run(argv: Sequence[str] | None = None) -> int:
    """Run the service in the foreground; return the exit status."""
    settings = parse_settings(argv)
    _configure(settings)
    stop_requested = threading.Event()
    log = get_logger()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop_requested.is_set():
            log.warning("watcher.killed", signal=signal.Signals(signum).name)
            sys.stdout.flush()
            os._exit(128 + signum)
        log.info("watcher.stopping", signal=signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    from ._supervisor import build_extras  # noqa: PLC0415 - optional parts, imported late

    extras = build_extras(settings)
    service = Service(settings, metrics=extras.metrics)
    service.start()
    try:
        extras.start(service)
        stop_requested.wait()
    finally:
        extras.stop()
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
