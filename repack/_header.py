"""A fast, partial reader of DICOM Part 10 headers, for the common case.

Repacking needs about twenty elements of a header of a hundred or more, and
the proof that the file is complete. This reader walks the top-level elements
with ``os.pread`` (little endian, explicit or implicit VR: what storescp
writes), seeks over every value it does not need (PixelData included), skips
undefined-length sequences item by item, and keeps the raw bytes of the
wanted elements only. pydicom then converts those same raw elements, so every
value is exactly what a full ``dcmread`` gives.

It decides that a file is bad in two cases only, both of which the full read
would also reject, at far greater cost: a defined length that runs past the
end of the file (:class:`~repack._errors.TruncatedFileError`: the file was
cut, or lies), and a wanted value longer than ``max_value``
(:class:`~repack._errors.MalformedFileError`: no name or UID is that long,
and loading it is what a hostile sender wants). On anything else unusual
(big endian, deflate, a short read, an odd VR, a file that does not end where
its last element ends) it returns ``None`` and the caller falls back to the
full pydicom read, which is the authority on errors. The one rule both readers
apply, when an instance must carry pixel data (:func:`must_have_pixels`), is here.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

from ._errors import MalformedFileError, TruncatedFileError

#: A value length that means "until the delimiter".
UNDEFINED_LENGTH = 0xFFFF_FFFF
#: Pixel Data, Float Pixel Data, Double Float Pixel Data.
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
#: Rows: an instance that has it is an image.
ROWS = 0x00280010
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})  # fmt: skip
_SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS",
                        b"LO", b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL",
                        b"US"})  # fmt: skip
_KNOWN_VRS = _LONG_VRS | _SHORT_VRS
#: Each known VR: whether its length takes four bytes after two reserved ones.
_IS_LONG = {vr: vr in _LONG_VRS for vr in _KNOWN_VRS}
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_IMPLICIT = "1.2.840.10008.1.2"
_EXPLICIT_BIG = "1.2.840.10008.1.2.2"
_DEFLATED = "1.2.840.10008.1.2.1.99"
#: Bytes read at a time: headers hold few large values (a Siemens CSA header,
#: PixelData) that the walk seeks over, and a small window copies little of them.
_WINDOW = 8 * 1024
_MAX_ELEMENTS = 200_000
_MAX_DEPTH = 64
_TAG = struct.Struct("<HH")
_TAG_LENGTH = struct.Struct("<HHI")
_EXPLICIT_SHORT = struct.Struct("<HH2sH")
_LONG_LENGTH = struct.Struct("<I")


class _UnsureError(Exception):
    """Something the fast path does not handle: use the full read."""


class _Reader:
    """Random access by ``os.pread`` through a small window."""

    def __init__(self, descriptor: int, size: int) -> None:
        self.descriptor = descriptor
        self.size = size
        self.start = 0
        self.window = b""

    def read(self, offset: int, length: int) -> bytes:
        if offset + length > self.size:
            raise _UnsureError("beyond the end of the file")
        end = self.start + len(self.window)
        if offset < self.start or offset + length > end:
            self.start = offset
            self.window = os.pread(self.descriptor, max(length, _WINDOW), offset)
            if len(self.window) < length:
                raise _UnsureError("short read")
        begin = offset - self.start
        return self.window[begin : begin + length]


class _Walker:
    def __init__(self, reader: _Reader, implicit: bool) -> None:
        self.reader = reader
        self.implicit = implicit
        self.count = 0

    def past_end(self, tag: int, length: int, value: int) -> TruncatedFileError:
        return TruncatedFileError(
            f"incomplete file ({self.reader.size} bytes): element ({tag >> 16:04X},"
            f"{tag & 0xFFFF:04X}) declares {length:,} bytes at offset {value:,}"
        )

    def element(self, position: int) -> tuple[int, bytes | None, int, int]:
        """Parse one element header at ``position``: tag, VR, length, value offset."""
        self.count += 1
        if self.count > _MAX_ELEMENTS:
            raise _UnsureError("too many elements")
        reader = self.reader
        offset = position - reader.start
        window = reader.window
        if offset < 0 or offset + 12 > len(window):  # refill the window from here
            reader.read(position, min(12, reader.size - position))
            offset, window = position - reader.start, reader.window
            if offset + 8 > len(window):
                raise _UnsureError("short element header")
        if self.implicit:
            group, number, length = _TAG_LENGTH.unpack_from(window, offset)
            return (group << 16) | number, None, length, position + 8
        group, number, vr, length = _EXPLICIT_SHORT.unpack_from(window, offset)
        tag = (group << 16) | number
        if group == 0xFFFE:  # items and delimiters have no VR
            return tag, None, _LONG_LENGTH.unpack_from(window, offset + 4)[0], position + 8
        if vr not in _KNOWN_VRS:
            raise _UnsureError("not a VR")
        if vr in _LONG_VRS:
            if offset + 12 > len(window):
                raise _UnsureError("short element header")
            return tag, vr, _LONG_LENGTH.unpack_from(window, offset + 8)[0], position + 12
        return tag, vr, length, position + 8

    def skip_undefined(self, position: int, depth: int) -> int:
        """Skip the items of an undefined-length value; return the offset after it."""
        if depth > _MAX_DEPTH:
            raise _UnsureError("nested too deeply")
        while True:
            tag, _, length, value = self.element(position)
            if tag == _SEQUENCE_END:
                return value
            if tag != _ITEM:
                raise _UnsureError("expected an item")
            if length != UNDEFINED_LENGTH:
                if value + length > self.reader.size:
                    raise self.past_end(tag, length, value)
                position = value + length
                continue
            position = self._skip_item(value, depth)

    def _skip_item(self, position: int, depth: int) -> int:
        """Skip the elements of an item of undefined length; return the offset after it."""
        while True:
            tag, _, length, value = self.element(position)
            if tag == _ITEM_END:
                return value
            if length == UNDEFINED_LENGTH:
                position = self.skip_undefined(value, depth + 1)
            elif value + length > self.reader.size:
                raise self.past_end(tag, length, value)
            else:
                position = value + length


def must_have_pixels(has_rows: bool, sop_class_uid: str | None) -> bool:
    """Whether an instance must carry pixel data to be complete."""
    if has_rows:
        return True
    return sop_class_uid is not None and "Image Storage" in getattr(UID(sop_class_uid), "name", "")


def _uid(raw: bytes) -> str:
    return raw.decode("ascii", "replace").rstrip("\x00 ")


def read_header(
    descriptor: int, size: int, wanted: Iterable[int], *, max_value: int = 1 << 32
) -> Dataset | None:
    """The wanted top-level elements of a complete file, or ``None`` if unsure.

    ``descriptor`` is an open file of ``size`` bytes whose DICM marker was
    checked. The dataset holds raw (unconverted) elements, in file order, and
    its original encoding, like one from ``dcmread``. Raises
    :class:`TruncatedFileError` for a value that runs past the end of the file
    and :class:`MalformedFileError` for a wanted value over ``max_value`` bytes.
    """
    try:
        return _read(_Reader(descriptor, size), size, frozenset(wanted), max_value)
    except (_UnsureError, struct.error, OSError, UnicodeError):
        return None


def _read(  # noqa: C901, PLR0911, PLR0912, PLR0915 - one loop over every element of every file: the benchmark pays for each call taken out of it (benchmarks/HISTORY.md)
    reader: _Reader, size: int, wanted: frozenset[int], max_value: int
) -> Dataset | None:
    meta_walker = _Walker(reader, implicit=False)
    position = 132
    transfer_syntax = sop_class = ""
    #: File meta elements asked for (the sender's AE title, say): kept as file_meta.
    meta: dict[BaseTag, DataElement | RawDataElement] = {}
    while position < size:
        group = _TAG.unpack(reader.read(position, 4))[0]
        if group != 0x0002:
            break
        tag, meta_vr, length, value = meta_walker.element(position)
        if length == UNDEFINED_LENGTH:
            return None
        if value + length > size:
            raise meta_walker.past_end(tag, length, value)
        if tag == 0x00020010:
            transfer_syntax = _uid(reader.read(value, length))
        elif tag == 0x00020002:
            sop_class = _uid(reader.read(value, length))
        if tag in wanted and length <= max_value:
            meta[BaseTag(tag)] = RawDataElement(
                BaseTag(tag),
                meta_vr.decode() if meta_vr is not None else None,
                length,
                reader.read(value, length),
                value,
                False,
                True,
            )
        position = value + length
    if transfer_syntax in ("", _EXPLICIT_BIG, _DEFLATED):
        return None
    implicit = transfer_syntax == _IMPLICIT
    walker = _Walker(reader, implicit)
    elements: dict[BaseTag, DataElement | RawDataElement] = {}
    seen_pixels = seen_rows = False
    unpack, unpack_long, long_vr = _EXPLICIT_SHORT.unpack_from, _LONG_LENGTH.unpack_from, _IS_LONG
    # The window as locals, taken again whenever something may have refilled it.
    window, start = reader.window, reader.start
    end = start + len(window)
    count = 0
    while position < size:
        # The common element inline (explicit VR, a known VR, its header in the
        # window): the same decisions as _Walker.element without a call, kept
        # because the benchmark says it pays (benchmarks/HISTORY.md).
        is_long = None
        if not implicit and start <= position and position + 12 <= end:
            group, number, vr, length = unpack(window, position - start)
            if group != 0xFFFE:
                is_long = long_vr.get(vr)
        if is_long is None:  # implicit, an item or delimiter, an odd VR, a refill: the rules
            walker.count = count
            tag, vr, length, value = walker.element(position)
            count = walker.count
            window, start = reader.window, reader.start
            end = start + len(window)
            group = tag >> 16
        else:
            tag = (group << 16) | number
            if is_long:
                length, value = unpack_long(window, position - start + 8)[0], position + 12
            else:
                value = position + 8
            count += 1
            if count > _MAX_ELEMENTS:
                return None
        if group in (0xFFFE, 0x0002):  # an item or delimiter out of place, file meta
            return None
        if length == UNDEFINED_LENGTH:
            if tag in wanted and tag not in PIXEL_TAGS:
                return None
            if implicit and tag not in PIXEL_TAGS and dictionary_vr(tag) != "SQ":
                return None
            walker.count = count
            position = walker.skip_undefined(value, 0)
            count = walker.count
            window, start = reader.window, reader.start
            end = start + len(window)
        else:
            if value + length > size:
                raise walker.past_end(tag, length, value)
            if tag in wanted:
                if length > max_value:
                    raise MalformedFileError(
                        f"element ({group:04X},{tag & 0xFFFF:04X}) declares {length:,}"
                        " bytes: far too long for its value"
                    )
                raw_vr = vr.decode() if vr is not None else None
                elements[BaseTag(tag)] = RawDataElement(
                    BaseTag(tag), raw_vr, length, reader.read(value, length), value, implicit, True
                )
                window, start = reader.window, reader.start
                end = start + len(window)
            position = value + length
        if tag >= ROWS:  # neither Rows nor pixel data comes before Rows' tag
            seen_pixels = seen_pixels or tag in PIXEL_TAGS
            seen_rows = seen_rows or tag == ROWS
    if position != size:
        return None
    if must_have_pixels(seen_rows, sop_class or None) and not seen_pixels:
        return None
    dataset = Dataset(elements)
    dataset.set_original_encoding(implicit, True, None)
    if meta:
        dataset.file_meta = FileMetaDataset(meta)
    return dataset


def dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"
