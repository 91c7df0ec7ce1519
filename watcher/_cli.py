"""``pypx-listener``: run the service until SIGTERM or SIGINT.

Everything that can fail at start is checked before ``watcher.started``: a
failure is one line, a ``hint:`` and exit status 2 (a setting) or 3 (a folder,
port or worker). A closed stdout stops the service as SIGTERM does, with exit
status 141 (128 + SIGPIPE) and one line on stderr.

The first signal stops watching and lets the workers finish or hand back what
they hold, within ``--stop-timeout`` (exit 0). A second signal, or a clean stop
that cannot finish in time (nothing reads the event stream), kills the
workers and exits with 128 + the signal: every write is atomic and a source
goes only after its copy and logs, so nothing is lost. Signals are acted on by
a thread of their own (:class:`_SignalWatch`): a Python signal handler runs
wherever the main thread is, such as inside an event write that holds the
stream's lock, and one that logged there waited for ever.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from repack import Event, configure_logging, get_logger
from repack.plumbing import report_error

from ._errors import EXIT_OUTPUT_LOST, EXIT_THREAD_DIED, ConfigError
from ._operations import build_operations
from ._service import Service
from ._settings import ENV_PREFIX, parse_settings, unknown_variables


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
    log = get_logger()
    running: list[Service] = []
    signals: list[tuple[int, float]] = []
    watch = _SignalWatch(stop_requested, signals, running, log, settings.stop_timeout)
    signals_thread = watch.start()
    fatal: list[str] = []

    def on_fatal(reason: str) -> None:
        fatal.append(reason)
        stop_requested.set()

    for name in unknown_variables(os.environ):
        log.warning(
            Event.WATCHER_UNKNOWN_SETTING,
            variable=name,
            hint=f"no option is named so; see pypx-listener --help for the {ENV_PREFIX}* names",
        )
    if settings.umask is not None:  # before any folder or worker: they all inherit it
        os.umask(settings.umask)
    service = Service(settings, on_fatal=on_fatal)
    operations = build_operations(settings, service)
    running.append(service)
    service.threads.essential([signals_thread])
    service.start(announce=False)
    try:
        operations.start(service)
        service.announce()
        # The main thread watches the others: a thread that ended unseen is a death too.
        while not stop_requested.wait(_WATCH_S):
            service.threads.check()
        if signals:
            log.info(Event.WATCHER_STOPPING, signal=signal.Signals(signals[0][0]).name)
        elif fatal:
            log.info(Event.WATCHER_STOPPING, reason=fatal[0])
    finally:
        operations.stop(service)
        service.stop(_time_left_to_stop(settings.stop_timeout, signals))
    return _exit_status(output_lost=output_lost.is_set(), fatal=fatal)


def _time_left_to_stop(stop_timeout: float, signals: list[tuple[int, float]]) -> float | None:
    """After a signal: finish before the signals thread's deadline (None: no deadline)."""
    if not signals:
        return None
    left = stop_timeout - (time.monotonic() - signals[0][1])
    return max(0.1, left - _STOP_MARGIN_S)


def _exit_status(*, output_lost: bool, fatal: list[str]) -> int:
    """The exit status of a stop, with its reason on stderr when it is not a clean one."""
    if output_lost:
        # Nothing more goes to the closed pipe, not even the interpreter's last flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        report_error(
            "pypx-listener",
            "the event stream (stdout) was closed; stopped after finishing the files in hand",
            "keep whatever reads pypx-listener's output running (a log shipper, a pipe)",
        )
        return EXIT_OUTPUT_LOST
    if fatal:
        report_error(
            "pypx-listener",
            f"stopped: {fatal[0]}",
            "this is a bug (see the watcher.thread_died event); the service's supervisor"
            " (compose restart:, Kubernetes) starts it again, and nothing received is lost",
        )
        return EXIT_THREAD_DIED
    return 0


#: How often the main thread checks that every thread the service needs is alive.
_WATCH_S = 0.25
#: How long a forced exit waits for its ``watcher.killed`` line to be written.
_LAST_WORD_S = 1.0
#: Held by a forced exit until ``os._exit``: the main thread, which may finish
#: the clean stop meanwhile (the kill freed a stuck worker), must not exit 0.
_EXITING = threading.Lock()
#: What the clean stop leaves of ``--stop-timeout`` for a forced exit's last word.
_STOP_MARGIN_S = 1.0


@dataclass
class _SignalWatch:
    """The ``signals`` thread: the first signal is noted in ``signals`` with its time
    and asks the service to stop (the main thread says so); a later one (or one after
    the event stream was lost), or ``stop_timeout`` seconds after the first without a
    clean exit, kills the workers and exits at once, whatever the other threads hold.
    It never waits for the event stream, so a stalled reader cannot keep it from
    exiting."""

    stop_requested: threading.Event
    signals: list[tuple[int, float]]
    running: list[Service]
    log: Any
    stop_timeout: float
    read_end: int = -1

    def start(self) -> threading.Thread:
        """Act on SIGTERM and SIGINT in a thread of their own (returned); call from the
        main thread.

        The C-level handler only writes the signal's number into a pipe
        (``signal.set_wakeup_fd``); the Python-level handler does nothing. The
        ``signals`` thread reads the pipe (:meth:`act`).
        """
        self.read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _noted_by_the_wakeup_fd)
        signal.signal(signal.SIGIO, signal.SIG_IGN)  # a lease break must never end the service
        thread = threading.Thread(target=self.act, name="signals", daemon=True)
        thread.start()
        return thread

    def act(self) -> None:
        while True:
            deadline = None
            if self.signals:
                elapsed = time.monotonic() - self.signals[0][1]
                deadline = max(0.0, self.stop_timeout - elapsed)
            if not select.select([self.read_end], [], [], deadline)[0]:
                self.exit_now(
                    self.signals[0][0], f"the stop did not finish within {self.stop_timeout:g} s"
                )
            for number in os.read(self.read_end, 64):
                if number not in (signal.SIGTERM, signal.SIGINT):
                    continue
                if not self.stop_requested.is_set():
                    self.signals.append((number, time.monotonic()))
                    self.stop_requested.set()
                    continue
                self.exit_now(number, "a second signal")

    def exit_now(self, number: int, reason: str) -> None:
        _EXITING.acquire()  # never released: this process ends here
        # A stalled stream must not hold up the exit: the line gets a second.
        last_word = threading.Thread(
            target=lambda: self.log.warning(
                Event.WATCHER_KILLED, signal=signal.Signals(number).name, reason=reason
            ),
            daemon=True,
        )
        last_word.start()
        last_word.join(_LAST_WORD_S)
        # Last, right before the exit: a killed worker frees the main thread's stop,
        # which must not get as far as watcher.stopped.
        for service in self.running:  # no worker process outlives the service
            service.kill_workers(reap=False)
        os._exit(128 + number)


def _noted_by_the_wakeup_fd(_signum: int, _frame: FrameType | None) -> None:
    """Nothing: the wakeup pipe carries the signal to the ``signals`` thread."""


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``pypx-listener``."""
    try:
        code = run(argv)
    except ConfigError as error:
        report_error("pypx-listener", str(error), error.hint)
        code = error.exit_code
    with _EXITING:
        sys.exit(code)
