"""Fault injection: the real ``pypx-listener``, with any of its threads killed on request.

``python -m tests.faults FIFO -- PROGRAM ARGS...`` runs pypx-listener's own
``main`` with ``ARGS`` (``PROGRAM``, the listener's path, only stands where a
:class:`~tests.listener.Listener` puts its program). Each line written to
``FIFO`` names a thread: its name (``dispatcher``, ``repack-worker-0``,
``signals``, ...) or the class of one of watchdog's (``InotifyObserver``,
``InotifyEmitter``, ``InotifyFD``). :class:`InjectedFaultError` is raised in that
thread at its next Python instruction, wherever it is (the fault a bug there
would be), and ``faults: raised in NAME`` goes to stderr. A thread blocked in
a system call meets it when it wakes: the test then gives it something to do
(a file, a signal). SIGUSR2 has a Python handler here, so sending it wakes
the ``signals`` thread (through its wake-up pipe) without stopping anything.
"""

from __future__ import annotations

import ctypes
import signal
import sys
import threading


class InjectedFaultError(Exception):
    """Raised in a thread by this module: never by the service itself."""


def _find(name: str) -> threading.Thread | None:
    for thread in threading.enumerate():
        if name in (thread.name, type(thread).__name__):
            return thread
    return None


def _raise_in(thread: threading.Thread) -> bool:
    assert thread.ident is not None
    changed = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident), ctypes.py_object(InjectedFaultError)
    )
    return int(changed) == 1


def _inject(fifo: str) -> None:
    with open(fifo, encoding="utf-8") as requests:
        for line in requests:
            name = line.strip()
            thread = _find(name)
            if thread is None or not _raise_in(thread):
                print(f"faults: no thread {name}", file=sys.stderr, flush=True)
                continue
            print(f"faults: raised in {name}", file=sys.stderr, flush=True)


def main() -> None:
    fifo, separator, _program, *args = sys.argv[1:]
    assert separator == "--", "usage: python -m tests.faults FIFO -- PROGRAM ARGS..."
    signal.signal(signal.SIGUSR2, lambda _number, _frame: None)
    threading.Thread(target=_inject, args=(fifo,), name="fault-injector", daemon=True).start()
    from watcher._cli import main as listener  # noqa: PLC0415 - after the handler

    listener(args)


if __name__ == "__main__":
    main()
