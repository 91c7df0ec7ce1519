"""pydicom's warnings, caught by one hook and collected per file.

pydicom reports a problem with a value as a record on its ``pydicom`` logger,
and some also as a Python warning. Both reach this one hook, installed when
:mod:`repack` is imported (and again, harmlessly, by ``configure_logging``):

* inside :func:`collected` (a worker repacking one file), each message goes
  into that file's list: the service turns it into ``repack.warning`` events;
* :func:`count` says how many arrived on this thread, so that a value whose
  conversion made pydicom warn is not cached for other files (each file
  reports its own);
* anything else goes on to the root logger (structlog, once configured).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Iterator
from typing import TextIO

__all__ = ["collected", "count", "install"]

_local = threading.local()


class _Hook(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if not _take(record.getMessage(), record.levelno >= logging.WARNING):
            logging.getLogger().handle(record)


def _take(message: str, keep: bool) -> bool:
    """Count ``message``; keep it for the current file; False outside a file."""
    _local.count = getattr(_local, "count", 0) + 1
    bucket: list[str] | None = getattr(_local, "messages", None)
    if bucket is None:
        return False
    if keep:
        bucket.append(message)
    return True


def _show(  # noqa: PLR0917 - warnings.showwarning's signature
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    if "pydicom" in filename and _take(str(message), keep=True):
        return
    logging.getLogger("py.warnings").warning("%s: %s", category.__name__, message)


def install() -> None:
    """Put the hook on the ``pydicom`` logger and on Python's warnings (idempotent)."""
    pydicom_logger = logging.getLogger("pydicom")
    if not any(isinstance(h, _Hook) for h in pydicom_logger.handlers):
        pydicom_logger.addHandler(_Hook())
        pydicom_logger.propagate = False
    warnings.showwarning = _show
    # A warning of the same place is shown every time: each file reports its own.
    warnings.filterwarnings("always", category=UserWarning, module=r"pydicom(\.|$)")


def count() -> int:
    """How many pydicom messages this thread has seen."""
    return int(getattr(_local, "count", 0))


@contextlib.contextmanager
def collected() -> Iterator[list[str]]:
    """Collect this thread's pydicom messages into the list yielded (one file's)."""
    messages: list[str] = []
    _local.messages = messages
    try:
        yield messages
    finally:
        _local.messages = None


install()
