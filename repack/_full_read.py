"""pydicom's full read of a file, bounded, checked complete, its errors translated.

The authority on errors: the fast reader hands every file it is unsure of to
:func:`read_full`, and every pydicom and :class:`OSError` failure becomes a
:mod:`repack._errors` error here. pydicom parses a truncated file without
complaint, so a file is complete only when its last top-level element ends
the file (or it ends with a sequence delimiter, for an undefined length), and
an Image Pixel module (``Rows``) comes with its pixel data.
"""

from __future__ import annotations

import os
import struct
import weakref

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import DeflatedExplicitVRLittleEndian

from ._errors import MalformedFileError, NotDicomError, TruncatedFileError
from ._header import PIXEL_TAGS, ROWS, UNDEFINED_LENGTH, must_have_pixels
from ._source import SourceFile, storage_error

#: Values longer than this are not read into memory (PixelData, overlays).
DEFER_BYTES = 64 * 1024

#: Reads of a header (about two per element) after which a file is refused.
MAX_HEADER_READS = 1_000_000

#: Bytes of values one full read may load in all (deferred values included when
#: they are used): a file of many values just under :data:`DEFER_BYTES` each
#: would otherwise load them all, whatever their number.
MAX_LOADED_BYTES = 128 * 1024 * 1024

_DELIMITERS = (b"\xfe\xff\xdd\xe0\x00\x00\x00\x00", b"\xff\xfe\xe0\xdd\x00\x00\x00\x00")


def _check_complete(dataset: Dataset, fp: _BoundedFile, size: int) -> str | None:
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


def _ends_complete(dataset: Dataset, fp: _BoundedFile, size: int) -> str | None:
    """Why the file is incomplete, or ``None`` when it is complete.

    Judged by position, not by the order of the dataset's keys: where pydicom
    stopped reading, and the raw element that reaches furthest into the file.
    """
    stopped = fp.tell()
    if stopped > size:
        return "the file ends inside a value that it declares longer"
    tags = list(dataset.keys())
    if not tags:
        return "no data elements after the file meta header"
    # get_item: each element as read, never converted nor read if deferred.
    items: list[object] = [dataset.get_item(tag, keep_deferred=True) for tag in tags]
    raw = [e for e in items if isinstance(e, RawDataElement)]
    ending = _how_it_ends(max(raw, key=_value_tell, default=None), fp, size, stopped)
    if ending is not None:
        return ending
    if ROWS in tags and not PIXEL_TAGS.intersection(tags):
        # What a file cut after its header looks like. An image storage instance
        # with no Image Pixel module at all is another thing: sent so (px-repack
        # repacks it too), and reported by Instance.image_without_pixels.
        return "its Image Pixel module describes pixel data that is not there"
    return None


def _how_it_ends(
    furthest: RawDataElement | None, fp: _BoundedFile, size: int, stopped: int
) -> str | None:
    """Why the file does not end where its furthest raw element (``furthest``) says it
    must, or None when it does."""
    if furthest is None or furthest.length == UNDEFINED_LENGTH:
        return None if _tail_is_delimiter(fp, size) else "undefined-length value not closed"
    if furthest.value is not None and len(furthest.value) < furthest.length:
        return "the file ends inside its last value"
    trailing = size - furthest.value_tell - furthest.length
    # Past the furthest raw element there may only be an undefined-length
    # value that pydicom parsed (a sequence), closed by its delimiter.
    if trailing and not (stopped == size and _tail_is_delimiter(fp, size)):
        return f"{trailing} trailing byte(s) after the last element"
    return None


def _value_tell(element: RawDataElement) -> int:
    return int(element.value_tell)


def image_without_pixels(dataset: Dataset) -> bool:
    """Whether an image storage instance carries no pixel data (nor any Rows)."""
    tags = dataset.keys()
    if PIXEL_TAGS.intersection(tags):
        return False
    # Its raw bytes: converting a corrupt meta element would raise here, past
    # the translation boundary.
    item = dataset.file_meta.get_item(0x00020002)  # MediaStorageSOPClassUID
    value = item.value if item is not None else None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace").rstrip("\x00 ")
    return must_have_pixels(ROWS in tags, str(value) if value else None)


def _tail_is_delimiter(fp: _BoundedFile, size: int) -> bool:
    if size < 8:
        return False
    fp.seek(size - 8)
    return fp.read(8) in _DELIMITERS


class _WorkLimitError(MalformedFileError):
    """The header takes more reads, or loads more bytes, than any real instance needs.

    A :class:`MalformedFileError` wherever it is raised: deferred values are
    read long after :func:`read_full` returned.
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


def read_full(source: SourceFile) -> Dataset:
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
            raise storage_error(error, "read", source.path) from error
        # pydicom reports some format errors as a bare OSError.
        raise MalformedFileError(f"cannot parse the DICOM structure: {error}") from error
    except Exception as error:
        raise MalformedFileError(
            f"cannot parse the DICOM structure: {type(error).__name__}: {error}"
        ) from error
    try:
        reason = _check_complete(dataset, fp, size)
    except OSError as error:
        raise storage_error(error, "read", source.path) from error
    if reason is not None:
        raise TruncatedFileError(f"incomplete file ({size} bytes): {reason}")
    return dataset
