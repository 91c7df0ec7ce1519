"""How an element's value becomes text: for paths, and as px wrote it (pydicom 2.4's ``str()``).

Pure: no file is read here. :class:`ValueCache` keeps what a worker converted
(most values are the same bytes in every instance of a series); a conversion
that made pydicom warn is not kept, so that every file reports its own
warnings.

pydicom reports a problem with a value on its ``pydicom`` logger, and some
also as a Python warning; both reach one hook, installed by
:func:`install_warning_hook` (:func:`repack.configure_logging` calls it: the
command lines opt in, importing changes nothing). Inside
:func:`collected_warnings` (a worker repacking one file)
each message goes into that file's list (the service's ``repack.warning``
events); :func:`warning_count` lets the cache tell a quiet conversion; any
other message goes on to the root logger (structlog, once configured).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any, TextIO, TypeVar

from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.valuerep import IS, DSfloat

from ._memo import Memo

#: px's value for an element that is absent.
NOT_DEFINED = "Not defined"

_MISSING = object()
_Made = TypeVar("_Made")


class Converted:
    """A converted element (None: absent or unconvertible), and the strings made of it.

    The strings are made once, when first asked for, and kept unless making
    them made pydicom warn (so every file that warns says so itself). Shared
    by every instance whose raw element was the same.
    """

    __slots__ = ("element", "px", "text")

    def __init__(self, element: DataElement | None) -> None:
        self.element = element
        self.text: str | object | None = _MISSING
        self.px: str | object = _MISSING

    def path_text(self) -> str | None:
        text = self.text
        if text is _MISSING:
            text, quiet = _quietly(lambda: _path_text(self.element))
            if quiet:
                self.text = text
        return text  # type: ignore[return-value]

    def px_string(self) -> str:
        px = self.px
        if px is _MISSING:
            px, quiet = _quietly(
                lambda: NOT_DEFINED if self.element is None else px_string(self.element)
            )
            if quiet:
                self.px = px
        return px  # type: ignore[return-value]


def _quietly(make: Callable[[], _Made]) -> tuple[_Made, bool]:
    """``make()``, and whether pydicom stayed quiet while it ran.

    Only a quiet result is kept for other instances: one that made pydicom
    warn is made again for each file, so every file reports its own warnings.
    """
    warned = warning_count()
    made = make()
    return made, warning_count() == warned


class ValueCache:
    """Converted elements, by what they were converted from.

    pydicom turns a raw element (its tag, VR, bytes and the character set)
    into a value, and the same input always gives the same value. Most of the
    twenty or so elements a repack reads are the same bytes in every instance
    of a series (names, dates, descriptions), so a long-running worker
    converts each distinct one once, and makes its text once. A conversion
    that made pydicom warn is not kept, so every file still reports its own
    warnings. Bounded (a :class:`~repack._memo.Memo` of :attr:`LIMIT` entries).
    Thread-safe (a race converts twice).
    """

    #: A series needs about twenty entries; two values of every instance are new
    #: (SOPInstanceUID, InstanceNumber) and fill the rest until it is emptied.
    LIMIT = 512

    def __init__(self, limit: int = LIMIT) -> None:
        self._entries: Memo[tuple[Any, ...], Converted] = Memo(limit)

    def converted(
        self, holder: Dataset, tag: int, raw: RawDataElement, charset: object
    ) -> Converted:
        """The converted element; ``charset`` is :func:`charset_key` of the instance."""
        key = (tag, raw.VR, raw.value, raw.is_implicit_VR, raw.is_little_endian, charset)
        found = self._entries.get(key)
        if found is not None:
            return found
        converted, quiet = _quietly(lambda: Converted(converted_element(holder, tag)))
        if quiet:
            self._entries.put(key, converted)
        return converted


def charset_key(dataset: Dataset) -> object:
    """What decides how the text of ``dataset`` is decoded, for :class:`ValueCache` keys.

    Taken once per instance, before any value is converted: the raw bytes of
    SpecificCharacterSet (converting a text value converts it too).
    """
    charset = dataset.get_item(0x00080005)
    if isinstance(charset, RawDataElement):
        return ("raw", charset.value)
    if isinstance(charset, DataElement):
        value = charset.value
        return ("value", tuple(value) if isinstance(value, MultiValue | list) else value)
    return None


def converted_element(holder: Dataset, tag: int) -> DataElement | None:
    """The converted element, or None when it is absent or cannot be converted."""
    try:
        element = holder.get(tag)
    except Exception:  # an unconvertible value reads as absent
        return None
    return element if isinstance(element, DataElement) else None


def _is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str):  # most values, and the cheapest test
        return not value
    if isinstance(value, bytes | MultiValue | list | Sequence):
        return len(value) == 0
    return False


def _path_text(element: DataElement | None) -> str | None:
    """The element as path text (see :meth:`Instance.text`)."""
    if element is None or _is_empty(element.value):
        return None
    value = element.value
    try:
        if isinstance(value, MultiValue | list):
            text = "\\".join(str(v) for v in value)
        elif isinstance(value, bytes):
            text = value.decode("latin-1")
        else:
            text = str(value)
    except Exception:  # an unprintable value reads as absent
        return None
    # Trailing NULs are padding (pydicom strips them from most values, px too);
    # one inside a value is a character like any other, which the sanitiser maps.
    text = text.rstrip("\x00 ").lstrip(" ")
    return text or None


def _tag_24(tag: BaseTag) -> str:
    """A tag as pydicom 2.4 printed it (px ran on it): ``(0008, 114a)``, not ``(0008,114A)``."""
    return f"({tag.group:04x}, {tag.element:04x})"


def _dump_item(item: Dataset, indent: int) -> str:
    """pydicom's dump of one sequence item (``Dataset._pretty_str``), with 2.4's tags."""
    lines = []
    here, deeper = item.indent_chars * indent, item.indent_chars * (indent + 1)
    for element in item:
        if element.VR == "SQ":
            lines.append(
                f"{here}{_tag_24(element.tag)}  {element.name}  {len(element.value)} item(s) ---- "
            )
            for nested in element.value:
                lines.append(_dump_item(nested, indent + 1))
                lines.append(deeper + "---------")
        else:
            text = str(element)
            repval = element.repval
            if text.endswith(repval) and not repval.startswith("Array of"):
                text = text[: len(text) - len(repval)] + _repr_24(element.value)
            lines.append(here + _tag_24(element.tag) + text[len(str(element.tag)) :])
    return "\n".join(lines)


def _repr_24(value: Any) -> str:
    """``repr()`` of a value as pydicom 2.4 wrote it in a dump.

    Where 3 differs: a UID shows its name, a DS its float (``'1000.0'``, not
    the file's ``'1000.00000000000'``), an IS its int, a tag ``(0062, 000b)``.
    """
    if isinstance(value, UID):
        return value.name
    if isinstance(value, DSfloat):
        return f"'{float.__repr__(value)}'"
    if isinstance(value, IS):
        return f"'{int.__repr__(value)}'"
    tags = _tags_24(value)
    return repr(value) if tags is None else tags


def _tags_24(value: Any) -> str | None:
    """An AT value (a tag, or several) as pydicom 2.4 spelled it; None for any other."""
    if isinstance(value, BaseTag):
        return _tag_24(value)
    if isinstance(value, MultiValue | list) and value and isinstance(value[0], BaseTag):
        return "[" + ", ".join(_tag_24(tag) for tag in value) + "]"
    return None


def px_string(element: DataElement) -> str:
    """``str()`` of the value, as px (on pydicom 2.4) wrote it.

    An empty number is ``None`` there (``"None"``), an empty sequence ``[]``,
    an empty text ``""``; tags are spelled as 2.4 spelled them.
    """
    value = element.value
    try:
        if isinstance(value, Sequence):  # items are joined with no separator, as pydicom does
            return "[" + "".join(_dump_item(item, 0) for item in value) + "]"
        tags = _tags_24(value)
        return str(value) if tags is None else tags
    except Exception:  # never let one odd value (or a deep sequence) stop the logs
        return f"<unprintable {type(value).__name__}>"


# -- pydicom's warnings: one hook, collected per file

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


def install_warning_hook() -> None:
    """Put the hook on the ``pydicom`` logger and on Python's warnings (idempotent)."""
    pydicom_logger = logging.getLogger("pydicom")
    if not any(isinstance(h, _Hook) for h in pydicom_logger.handlers):
        pydicom_logger.addHandler(_Hook())
        pydicom_logger.propagate = False
    warnings.showwarning = _show
    # A warning of the same place is shown every time: each file reports its own.
    warnings.filterwarnings("always", category=UserWarning, module=r"pydicom(\.|$)")


def warning_count() -> int:
    """How many pydicom messages this thread has seen."""
    return int(getattr(_local, "count", 0))


@contextlib.contextmanager
def collected_warnings() -> Iterator[list[str]]:
    """Collect this thread's pydicom messages into the list yielded (one file's)."""
    messages: list[str] = []
    _local.messages = messages
    try:
        yield messages
    finally:
        _local.messages = None
