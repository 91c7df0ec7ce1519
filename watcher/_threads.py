"""Every thread the service depends on, watched: none may die unseen.

A thread dies when an exception escapes it (reported by
:func:`threading.excepthook`, which :class:`ThreadWatch` chains while the
service runs) or when it ends before the service stops (found by
:meth:`ThreadWatch.check`, which the main thread calls a few times a second).
Either way, at once:

- an ``error`` event ``watcher.thread_died`` names the thread and the exception;
- ``/healthz`` answers 503 with the reason (:meth:`ThreadWatch.problems`);
- then the part comes back or the service ends. watchdog's threads (its
  observer, emitters and inotify reader) are re-armed by the dispatcher, as a
  replaced incoming folder is; any other thread, or an observer that keeps
  dying, stops the service with exit status :data:`~watcher._errors.EXIT_THREAD_DIED`
  so that its supervisor (compose ``restart:``, Kubernetes) starts it afresh.
  Never a service that runs on half dead.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from repack import Event

#: Observer deaths re-armed within a minute; one more stops the service.
REARMS_PER_MINUTE = 3


def _is_watchdogs(thread: threading.Thread | None) -> bool:
    """Whether a thread is one of watchdog's (its classes live in its modules)."""
    return thread is not None and type(thread).__module__.split(".")[0] == "watchdog"


class ThreadWatch:
    """Deaths of the service's threads: reported once each, then re-armed or fatal.

    ``on_fatal(reason)`` is called (once) when the service must stop; the CLI
    stops it then and exits with :data:`~watcher._errors.EXIT_THREAD_DIED`.
    """

    def __init__(
        self,
        log: Any,
        on_fatal: Callable[[str], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._on_fatal = on_fatal
        self._clock = clock
        self._lock = threading.Lock()
        self._essential: dict[str, threading.Thread] = {}
        self._observer: list[threading.Thread] = []
        self._problems: dict[str, str] = {}
        self._observer_died: str | None = None
        #: The problems that a re-armed observer heals.
        self._healed_by_rearm: set[str] = set()
        self._rearms: collections.deque[float] = collections.deque()
        self._fatal: str | None = None
        self._stopping = False
        self._previous_hook: Callable[[threading.ExceptHookArgs], Any] | None = None

    # -- what is watched -------------------------------------------------------

    def essential(self, threads: Iterable[threading.Thread]) -> None:
        """Watch these threads: each must live until the service stops."""
        with self._lock:
            for thread in threads:
                self._essential[thread.name] = thread

    def observer(self, threads: Iterable[threading.Thread]) -> None:
        """The current observer's threads (after a start or a re-arm): re-armed if one dies."""
        with self._lock:
            self._observer = list(threads)

    def install(self) -> None:
        """Chain :func:`threading.excepthook` (process-wide) until :meth:`uninstall`."""
        self._previous_hook = threading.excepthook
        threading.excepthook = self._excepthook

    def uninstall(self) -> None:
        if self._previous_hook is not None and threading.excepthook == self._excepthook:
            threading.excepthook = self._previous_hook
        self._previous_hook = None

    def stopping(self) -> None:
        """From now on threads end because the service stops: no more deaths."""
        with self._lock:
            self._stopping = True

    # -- deaths ----------------------------------------------------------------

    def _excepthook(self, args: threading.ExceptHookArgs) -> None:
        thread = args.thread
        name = thread.name if thread is not None else "an unnamed thread"
        error = f"{args.exc_type.__name__}: {args.exc_value}"
        with self._lock:
            restartable = _is_watchdogs(thread) or thread in self._observer
        self.died(name, error, restartable=restartable)

    def check(self) -> None:
        """Report every watched thread that has ended although the service has not stopped."""
        with self._lock:
            watched = [(t, False) for t in self._essential.values()]
            watched += [(t, True) for t in self._observer]
            ended = [
                (thread.name, restartable)
                for thread, restartable in watched
                if not thread.is_alive() and thread.name not in self._problems
            ]
        for name, restartable in ended:
            self.died(name, "the thread ended", restartable=restartable)

    def died(self, name: str, error: str, *, restartable: bool) -> None:
        """Report one thread's death; ask for a re-arm, or stop the service."""
        with self._lock:
            if self._stopping or name in self._problems:
                return
            self._problems[name] = f"the thread {name!r} died: {error}"
            now = self._clock()
            while self._rearms and now - self._rearms[0] > 60:
                self._rearms.popleft()
            if restartable and len(self._rearms) < REARMS_PER_MINUTE:
                self._observer_died = name
                self._healed_by_rearm.add(name)
                action = "rearm"
            else:
                action = "stop"
                if restartable:
                    error += f" (the observer died {REARMS_PER_MINUTE + 1} times within a minute)"
        self._log.error(Event.WATCHER_THREAD_DIED, thread=name, error=error, action=action)
        if action == "stop":
            self._fatal_once(f"the thread {name!r} died: {error}")

    def _fatal_once(self, reason: str) -> None:
        with self._lock:
            if self._fatal is not None:
                return
            self._fatal = reason
        self._on_fatal(reason)

    def observer_died(self) -> str | None:
        """The observer thread that died and waits to be re-armed, if any."""
        with self._lock:
            return self._observer_died

    def rearmed(self, threads: Iterable[threading.Thread]) -> None:
        """The observer is running again with these threads: its deaths are healed."""
        with self._lock:
            self._rearms.append(self._clock())
            self._observer_died = None
            self._observer = list(threads)
            for name in self._healed_by_rearm:
                self._problems.pop(name, None)
            self._healed_by_rearm.clear()

    def rearm_failed(self, error: str) -> None:
        self._fatal_once(f"the observer could not be re-armed: {error}")

    def problems(self) -> list[str]:
        """Why the service is not alive, as far as its threads go (``/healthz``)."""
        with self._lock:
            return list(self._problems.values())
