"""Reading DICOM instances: the one place that talks to pydicom.

:func:`read_instance` parses a file's header cheaply (values larger than
:data:`DEFER_BYTES`, such as PixelData, are seeked over, never loaded), checks
that the file is complete, and returns an :class:`Instance`. Every pydicom
and :class:`OSError` failure is translated here into the :mod:`repack._errors`
tree. :class:`Instance` itself works on an in-memory dataset, so the value
rules can be tested without a disk.

Completeness: pydicom parses a truncated file without complaint (it stops at
end-of-file, or returns a short value). A file is complete when its last
top-level element ends exactly at the end of the file, or, for an element of
undefined length, when the file ends with the sequence delimitation item; and
an image (``Rows`` present, or an "Image Storage" SOP class in the file
meta) must carry its pixel data.
"""

from __future__ import annotations

import dataclasses
import errno as errno_codes
import functools
import os
import struct
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydicom import dcmread
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pydicom.valuerep import IS, DSfloat

from . import _warnings
from ._errors import (
    MalformedFileError,
    MissingRequiredTagError,
    NotDicomError,
    StorageError,
    TruncatedFileError,
)
from ._header import read_header
from ._memo import Memo
from ._source import SourceFile, open_path
from ._tags import PIXEL_TAGS, ROWS, UNDEFINED_LENGTH, must_have_pixels

__all__ = [
    "DEFER_BYTES",
    "MAX_HEADER_READS",
    "MAX_LOADED_BYTES",
    "NOT_DEFINED",
    "REQUIRED_KEYWORDS",
    "Instance",
    "ValueCache",
    "read_instance",
    "read_source",
]

#: Values longer than this are not read into memory (PixelData, overlays).
DEFER_BYTES = 64 * 1024

#: Reads of a header (about two per element) after which a file is refused.
MAX_HEADER_READS = 1_000_000

#: Bytes of values one full read may load in all (deferred values included when
#: they are used): a file of many values just under :data:`DEFER_BYTES` each
#: would otherwise load them all, whatever their number.
MAX_LOADED_BYTES = 128 * 1024 * 1024

#: px's value for an element that is absent.
NOT_DEFINED = "Not defined"

#: Without these, an instance cannot be placed without colliding with others.
REQUIRED_KEYWORDS = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")

_DELIMITERS = (b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", b"\xff\xfe\xe0\xdd\x00\x00\x00\x00")
_TAGS: dict[str, int] = {}


class _Seekable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...
    def seek(self, offset: int, whence: int = 0, /) -> int: ...
    def tell(self) -> int: ...


def _tag(keyword: str) -> int:
    tag = _TAGS.get(keyword)
    if tag is None:
        found = tag_for_keyword(keyword)
        if found is None:
            raise KeyError(keyword)
        tag = _TAGS[keyword] = int(found)
    return tag


@functools.lru_cache(maxsize=64)
def _wanted_tags(keywords: tuple[str, ...]) -> frozenset[int]:
    """The tags of ``keywords`` (the same few sets, for every file)."""
    return frozenset(_tag(k) for k in keywords)


_MISSING = object()
_Made = TypeVar("_Made")


class _Converted:
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
                lambda: NOT_DEFINED if self.element is None else _px_string(self.element)
            )
            if quiet:
                self.px = px
        return px  # type: ignore[return-value]


def _quietly(make: Callable[[], _Made]) -> tuple[_Made, bool]:
    """``make()``, and whether pydicom stayed quiet while it ran.

    Only a quiet result is kept for other instances: one that made pydicom
    warn is made again for each file, so every file reports its own warnings.
    """
    warned = _warnings.count()
    made = make()
    return made, _warnings.count() == warned


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
        self._entries: Memo[tuple[Any, ...], _Converted] = Memo(limit)

    def converted(
        self, holder: Dataset, tag: int, raw: RawDataElement, charset: object
    ) -> _Converted:
        """The converted element; ``charset`` is :func:`charset_key` of the instance."""
        key = (tag, raw.VR, raw.value, raw.is_implicit_VR, raw.is_little_endian, charset)
        found = self._entries.find(key)
        if found is not None:
            return found
        converted, quiet = _quietly(lambda: _Converted(_convert(holder, tag)))
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


def _convert(holder: Dataset, tag: int) -> DataElement | None:
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


@dataclass(frozen=True)
class Instance:
    """The header of one DICOM instance, and px's and rx's ways of reading it.

    ``dataset`` holds every top-level element but the deferred large values;
    ``size`` and ``stat`` describe the file as it was when read (absent for
    a dataset built in memory).
    """

    dataset: Dataset
    size: int = 0
    stat: os.stat_result | None = None
    #: The file it came from (for messages).
    source: Path | None = None
    #: The tags ``dataset`` holds when it is partial; None when it is complete.
    wanted: frozenset[int] | None = None
    #: Reads every top-level element, for a partial instance.
    full_reader: Callable[[], Dataset] | None = field(default=None, compare=False, repr=False)
    #: Converted values shared with other instances (a worker's), if any.
    cache: ValueCache | None = field(default=None, compare=False, repr=False)
    #: :func:`charset_key` of ``dataset``, taken with ``cache`` (one per instance).
    charset: object = field(default=None, compare=False, repr=False)
    _complete: list[Dataset] = field(default_factory=list, compare=False, repr=False)
    _elements: dict[str, _Converted] = field(default_factory=dict, compare=False, repr=False)

    @functools.cached_property
    def image_without_pixels(self) -> bool:
        """Whether this is an image storage instance that carries no pixel data.

        Complete as sent (its last element ends the file, and it has no Image
        Pixel module to describe pixels it lacks); repacked as px-repack does,
        and said so in the event. Only a full read can tell: the fast header
        reader hands such a file to it.
        """
        return self.wanted is None and _image_without_pixels(self.dataset)

    def complete_dataset(self) -> Dataset:
        """Every top-level element (read once, on first use, for a partial instance)."""
        if self.wanted is None or self.full_reader is None:
            return self.dataset
        if not self._complete:
            self._complete.append(self.full_reader())
        return self._complete[0]

    def _converted(self, keyword: str) -> _Converted:
        """The converted element (looked up once per keyword) and its strings."""
        try:
            return self._elements[keyword]
        except KeyError:
            pass
        tag = _tag(keyword)
        holder = self.dataset if self.wanted is None or tag in self.wanted else None
        if holder is None:
            holder = self.complete_dataset()
        raw = holder.get_item(tag)
        if isinstance(raw, RawDataElement):
            if raw.value is None and raw.length:
                # Deferred: no name or UID needs more than DEFER_BYTES, and loading
                # gigabytes to find that out is what a hostile sender wants.
                raise MalformedFileError(
                    f"{keyword} declares {raw.length:,} bytes: far too long for its value"
                )
            if self.cache is not None:
                found = self._elements[keyword] = self.cache.converted(
                    holder, tag, raw, self.charset
                )
                return found
        found = self._elements[keyword] = _Converted(_convert(holder, tag))
        return found

    def text(self, keyword: str) -> str | None:
        """The element as path text, or ``None`` when absent or empty.

        Decoded text (pydicom honours SpecificCharacterSet), NUL bytes removed,
        spaces trimmed at both ends; multiple values joined by ``\\``.
        """
        return self._converted(keyword).path_text()

    def present(self, keyword: str) -> bool:
        """Whether the element is in the instance (empty or not) and can be read."""
        return self._converted(keyword).element is not None

    def px_value(self, keyword: str) -> str:
        """The element as px writes it into the JSON logs.

        ``str()`` of the pydicom value; ``""`` when present but empty;
        ``"Not defined"`` when absent.
        """
        return self._converted(keyword).px_string()

    def required_missing(self) -> list[str]:
        """The required UIDs that are absent or empty."""
        return [k for k in REQUIRED_KEYWORDS if self.text(k) is None]

    def dicom_dump(self) -> dict[str, str]:
        """px's ``DICOM`` table: every top-level, non-private keyword element.

        PixelData and the file meta group are left out; keys are sorted.
        """
        table: dict[str, str] = {}
        dataset = self.complete_dataset()
        for tag in list(dataset.keys()):
            if tag.is_private or int(tag) in PIXEL_TAGS:
                continue
            raw = dataset.get_item(tag)
            if isinstance(raw, RawDataElement) and raw.value is None and raw.length:
                keyword = keyword_for_tag(tag)
                if keyword:  # too large to load for a table of text
                    table[keyword] = f"<{raw.length} bytes, not read>"
                continue
            try:
                element = dataset[tag]
            except Exception:  # noqa: S112 - an undecodable element is left out
                continue
            keyword = element.keyword
            if keyword:
                table[keyword] = _px_string(element)
        return dict(sorted(table.items()))


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


def _px_string(element: DataElement) -> str:
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


def _check_complete(dataset: Dataset, fp: _Seekable, size: int) -> str | None:
    """Why the file is incomplete (None if complete); a corrupt header is malformed.

    Looking at the parsed elements converts raw values, which raises pydicom's
    errors for corrupt ones: this is part of the translation boundary.
    """
    try:
        deflated = dataset.file_meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian
        return None if deflated else _ends_complete(dataset, fp, size)
    except OSError as error:
        if error.errno is not None:
            raise
        raise MalformedFileError(f"cannot parse the DICOM structure: {error}") from error
    except Exception as error:  # pydicom's many value errors, translated here
        raise MalformedFileError(
            f"cannot parse the DICOM header: {type(error).__name__}: {error}"
        ) from error


def _ends_complete(dataset: Dataset, fp: _Seekable, size: int) -> str | None:
    """Why the file is incomplete, or ``None`` when it is complete.

    Judged by position, not by the order of the dataset's keys: where pydicom
    stopped reading, and the raw element that reaches furthest into the file.
    """
    stopped = fp.tell()
    if stopped > size:
        return "the file ends inside a value that it declares longer"
    elements = dataset._dict
    if not elements:
        return "no data elements after the file meta header"
    raw = [e for e in elements.values() if isinstance(e, RawDataElement)]
    furthest = max(raw, key=lambda e: e.value_tell, default=None)
    if furthest is not None and furthest.length != UNDEFINED_LENGTH:
        if furthest.value is not None and len(furthest.value) < furthest.length:
            return "the file ends inside its last value"
        trailing = size - furthest.value_tell - furthest.length
        # Past the furthest raw element there may only be an undefined-length
        # value that pydicom parsed (a sequence), closed by its delimiter.
        if trailing and not (stopped == size and _tail_is_delimiter(fp, size)):
            return f"{trailing} trailing byte(s) after the last element"
    elif not _tail_is_delimiter(fp, size):
        return "undefined-length value not closed"
    if ROWS in elements and not PIXEL_TAGS.intersection(elements):
        # What a file cut after its header looks like. An image storage instance
        # with no Image Pixel module at all is another thing: sent so (px-repack
        # repacks it too), and reported by Instance.image_without_pixels.
        return "its Image Pixel module describes pixel data that is not there"
    return None


def _image_without_pixels(dataset: Dataset) -> bool:
    """Whether an image storage instance carries no pixel data (nor any Rows)."""
    if PIXEL_TAGS.intersection(dataset._dict):
        return False
    # Its raw bytes: converting a corrupt meta element would raise here, past
    # the translation boundary.
    item = dataset.file_meta.get_item(0x00020002)  # MediaStorageSOPClassUID
    value = item.value if item is not None else None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace").rstrip("\x00 ")
    return must_have_pixels(ROWS in dataset._dict, str(value) if value else None)


def _tail_is_delimiter(fp: _Seekable, size: int) -> bool:
    if size < 8:
        return False
    fp.seek(size - 8)
    return fp.read(8) in _DELIMITERS


class _WorkLimitError(MalformedFileError):
    """The header takes more reads, or loads more bytes, than any real instance needs.

    A :class:`MalformedFileError` wherever it is raised: deferred values are
    read long after :func:`_read_full` returned.
    """


class _BoundedFile:
    """The file as pydicom reads it: through its own duplicate of the descriptor.

    A duplicate, so that values pydicom defers stay readable for as long as
    the dataset lives and can never come from another file that reuses the
    descriptor's number. Each read is counted: a crafted file (gigabytes of
    zeros after a ``DICM`` marker parse as millions of empty elements) is
    refused after :data:`MAX_HEADER_READS` reads instead of keeping a worker
    busy for half an hour, and the bytes read are counted too, so that one
    file never loads more than :data:`MAX_LOADED_BYTES` into a worker (a
    sparse file of many values just under the deferral size). Having no
    ``name``, it is what pydicom reads deferred values from, never a path
    opened again.
    """

    def __init__(self, descriptor: int) -> None:
        self._file = open(os.dup(descriptor), "rb", buffering=16 * 1024)  # noqa: SIM115
        # Closed when the dataset that reads deferred values through it goes.
        weakref.finalize(self, self._file.close)
        self.reads = 0
        self.loaded = 0

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        if self.reads > MAX_HEADER_READS:
            raise _WorkLimitError(
                f"the header needs more than {MAX_HEADER_READS:,} reads: not a DICOM header"
            )
        if size < 0 or self.loaded + size > MAX_LOADED_BYTES:
            size = MAX_LOADED_BYTES + 1 - self.loaded  # never more than one past the bound
        data = self._file.read(size)
        self.loaded += len(data)
        if self.loaded > MAX_LOADED_BYTES:
            raise _WorkLimitError(
                f"its values add up to more than {MAX_LOADED_BYTES >> 20} MiB: refused, so that"
                " one file cannot exhaust a worker's memory"
            )
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()


def _read_full(source: SourceFile) -> Dataset:
    """Every top-level element of ``source`` (large values deferred), checked complete."""
    size = source.stat.st_size
    fp = _BoundedFile(source.descriptor)
    try:
        dataset = dcmread(fp, defer_size=DEFER_BYTES)
    except _WorkLimitError:
        raise
    except InvalidDicomError as error:
        raise NotDicomError(f"not a DICOM file: {error}") from error
    except (EOFError, struct.error, StopIteration) as error:
        raise TruncatedFileError(f"the file ends inside its header ({error!s})") from error
    except OSError as error:
        if error.errno is not None:
            raise StorageError(
                f"cannot read {source.display()}: {error.strerror}", errno=error.errno
            ) from error
        # pydicom reports some format errors as a bare OSError.
        raise MalformedFileError(f"cannot parse the DICOM structure: {error}") from error
    except Exception as error:
        raise MalformedFileError(
            f"cannot parse the DICOM structure: {type(error).__name__}: {error}"
        ) from error
    try:
        reason = _check_complete(dataset, fp, size)
    except OSError as error:
        raise StorageError(
            f"cannot read {source.display()}: {error.strerror}", errno=error.errno
        ) from error
    if reason is not None:
        raise TruncatedFileError(f"incomplete file ({size} bytes): {reason}")
    return dataset


def read_source(
    source: SourceFile, keywords: Iterable[str] | None = None, cache: ValueCache | None = None
) -> Instance:
    """Read and check the header of an opened input file.

    With ``keywords``, only those elements are read up front (a fast path for
    the common encodings; see :mod:`repack._header`); any other element is
    read from the same descriptor when first asked for, while ``source`` is
    open.

    Raises :class:`NotDicomError`, :class:`TruncatedFileError`,
    :class:`MalformedFileError` or :class:`MissingRequiredTagError` for a file
    that can never be repacked, :class:`StorageError` when it could not be
    read.
    """
    size = source.stat.st_size
    if size < 132:
        raise NotDicomError(f"{size} bytes: too short for a DICOM file")
    try:
        marker = os.pread(source.descriptor, 4, 128)
    except OSError as error:
        if error.errno == errno_codes.EISDIR:
            raise NotDicomError("a directory, not a file") from error
        raise StorageError(
            f"cannot read {source.display()}: {error.strerror}", errno=error.errno
        ) from error
    if marker != b"DICM":
        raise NotDicomError("no DICM marker at byte 128: not a DICOM Part 10 file")
    if keywords is not None:
        wanted = _wanted_tags(tuple(keywords))
        partial = read_header(source.descriptor, size, wanted, max_value=DEFER_BYTES)
        if partial is not None:
            return _checked(
                Instance(
                    partial,
                    size,
                    source.stat,
                    source.path,
                    wanted,
                    full_reader=lambda: _read_full(source),
                    cache=cache,
                    charset=charset_key(partial) if cache is not None else None,
                )
            )
    dataset = _read_full(source)
    charset = charset_key(dataset) if cache is not None else None
    return _checked(Instance(dataset, size, source.stat, source.path, cache=cache, charset=charset))


def read_instance(path: str | os.PathLike[str], keywords: Iterable[str] | None = None) -> Instance:
    """Read and check the header of the DICOM file at ``path`` (a path a user gave).

    The file itself must be a regular file (not a link); see
    :func:`read_source` for the rest. An element not among ``keywords`` is
    read from the file at ``path`` when first asked for.
    """
    with open_path(path) as source:
        instance = read_source(source, keywords)
    if instance.wanted is None:
        return instance
    return dataclasses.replace(instance, full_reader=lambda: read_instance(path).dataset)


def _checked(instance: Instance) -> Instance:
    missing = instance.required_missing()  # never raises: bad values read as absent
    if missing:
        raise MissingRequiredTagError(missing)
    return instance
