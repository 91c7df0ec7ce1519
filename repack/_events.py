"""Structured events: structlog set up once for both command-line tools.

One event per line. When stdout is not a terminal (a container's log, a
pipe into ``jq``) each event is a JSON object rendered by orjson, with an
ISO 8601 UTC ``timestamp`` and a ``level``; on a terminal the same events are
printed readably. Standard-library logging (watchdog, pydicom) and Python
warnings are routed through the same renderer (pydicom's by the one hook of
:mod:`repack._values`), so the stream stays one format. Event names are
the constants of :class:`Event`.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Any, BinaryIO, TextIO, cast

import structlog
from pydicom import config as pydicom_config

from ._logs import dumps
from ._values import install_warning_hook


class Event(StrEnum):
    """Every event name, declared once (the README's event table lists them)."""

    REPACK_DONE = "repack.done"
    REPACK_FAILED = "repack.failed"
    REPACK_SKIPPED = "repack.skipped"
    REPACK_WARNING = "repack.warning"
    REPACK_RETRY = "repack.retry"
    REPACK_STUCK = "repack.stuck"
    REPACK_CRASHED = "repack.crashed"
    REPACK_BUSY = "repack.busy"
    REPACK_UNCLAIMED = "repack.unclaimed"
    REPACK_UNPROVEN = "repack.unproven"
    REPACK_INCOMPLETE = "repack.incomplete"
    REPACK_LEFT_FOR_LATER = "repack.left_for_later"
    SERIES_COMPLETE = "series.complete"
    SERIES_LATE = "series.late"
    WATCHER_STARTED = "watcher.started"
    WATCHER_STOPPING = "watcher.stopping"
    WATCHER_STOPPED = "watcher.stopped"
    WATCHER_KILLED = "watcher.killed"
    WATCHER_RESCAN = "watcher.rescan"
    WATCHER_REARMED = "watcher.rearmed"
    WATCHER_INCOMING_LOST = "watcher.incoming_lost"
    WATCHER_UNKNOWN_SETTING = "watcher.unknown_setting"
    WATCHER_THREAD_DIED = "watcher.thread_died"
    WORKER_ERROR = "worker.error"
    WORKER_STALLED = "worker.stalled"
    STORESCP_STARTED = "storescp.started"
    STORESCP_EXITED = "storescp.exited"
    STORESCP_STOPPED = "storescp.stopped"
    METRICS_SERVING = "metrics.serving"
    HOUSEKEEPING_SWEPT = "housekeeping.swept"
    HANDOFF_SENT = "handoff.sent"
    HANDOFF_RETRY = "handoff.retry"
    HANDOFF_STUCK = "handoff.stuck"
    HANDOFF_LOST = "handoff.lost"
    HANDOFF_CRASHED = "handoff.crashed"
    HANDOFF_ADOPTED = "handoff.adopted"
    HANDOFF_REFUSED = "handoff.refused"
    HANDOFF_LEFT_OUT = "handoff.left_out"
    HANDOFF_DEAD_LETTERED = "handoff.dead_lettered"
    HANDOFF_OUTBOX_UNSAFE = "handoff.outbox_unsafe"


def log_repacked(log: Any, fields: dict[str, Any]) -> None:
    """Log ``repack.done``: the one writer of the event, an ``info`` event in both programs."""
    log.info(Event.REPACK_DONE, **fields)


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}


class _ToStructlog(logging.Handler):
    """Forwards standard-library log records to structlog."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        structlog.get_logger().log(record.levelno, message, logger=record.name)


class _GuardedOutput:
    """The binary event stream; a reader that went away ends it, not the thread that logs.

    Writing to a closed pipe raises ``BrokenPipeError`` in whichever thread
    logs (a watcher thread would die of it). Instead the line is dropped,
    every later one too, and ``on_lost`` is called once so the program can
    stop cleanly.
    """

    def __init__(self, binary: BinaryIO, on_lost: Callable[[], None] | None) -> None:
        self._binary = binary
        self._on_lost = on_lost
        self._lost = False
        self._lock = threading.Lock()
        #: When the write under way started (monotonic), or None: a reader that
        #: stopped reading blocks it for as long as it does not read.
        self.writing_since: float | None = None

    def blocked_for(self) -> float:
        """Seconds the write under way has waited (0 when none is under way)."""
        since = self.writing_since
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    def _lose(self) -> None:
        with self._lock:
            if self._lost:
                return
            self._lost = True
        if self._on_lost is not None:
            self._on_lost()

    def write(self, data: bytes) -> int:
        self._guarded(self._binary.write, data)
        return len(data)  # all of it, or dropped

    def flush(self) -> None:
        self._guarded(self._binary.flush)

    def _guarded(self, call: Callable[..., object], *arguments: bytes) -> None:
        if self._lost:
            return
        self.writing_since = time.monotonic()
        try:
            call(*arguments)
        except (BrokenPipeError, ConnectionResetError):
            self._lose()
        finally:
            self.writing_since = None


#: The JSON event stream configured last (None on a terminal, or before any).
_output: _GuardedOutput | None = None


def output_blocked_for() -> float:
    """Seconds the event stream's current write has waited for its reader (0 if none).

    A pipe or log shipper that stops reading blocks every event (and so
    every thread that logs) without an error: this is how a health check
    sees it.
    """
    return 0.0 if _output is None else _output.blocked_for()


def _orjson_dumps(event: Any, **_: Any) -> bytes:
    # Never fails: a non-UTF-8 file name is spelled with \xNN escapes.
    return dumps(event, default=str)


def configure_logging(
    *,
    json: bool | None = None,
    level: str = "info",
    stream: TextIO | None = None,
    on_output_lost: Callable[[], None] | None = None,
) -> None:
    """Configure structlog (and route stdlib logging and warnings through it).

    ``json=None`` chooses JSON lines unless ``stream`` (default stdout) is a
    terminal. ``on_output_lost`` is called once if the JSON stream's reader
    goes away (a closed pipe); events are dropped from then on.
    """
    stream = stream or sys.stdout
    if json is None:
        json = not stream.isatty()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]
    renderer: Any
    factory: Any
    if json:
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        binary = getattr(stream, "buffer", None)
        if binary is None:
            raise ValueError("JSON events need a stream with a binary buffer (such as stdout)")
        guarded = _GuardedOutput(cast(BinaryIO, binary), on_output_lost)
        factory = structlog.BytesLoggerFactory(cast(BinaryIO, guarded))
    else:
        guarded = None
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())
        factory = structlog.PrintLoggerFactory(stream)
    global _output  # noqa: PLW0603 - one event stream per process, as structlog's config
    _output = guarded
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level.lower(), 20)),
        logger_factory=factory,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _ToStructlog):
            root.removeHandler(handler)
    root.addHandler(_ToStructlog())
    root.setLevel(logging.WARNING)
    install_warning_hook()
    # Values that break the standard's VR rules are still repacked as they are;
    # pydicom's per-value complaints would only flood the event stream.
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE


def get_logger(**context: Any) -> Any:
    """A structlog logger bound to ``context``."""
    return structlog.get_logger().bind(**context)
