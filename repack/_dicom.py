"""Reading DICOM instances: what a repack knows of a file.

:func:`read_source` parses a file's header cheaply (:mod:`repack._header`
reads the wanted elements and seeks over the rest, PixelData included), and
falls back to pydicom's full read (:mod:`repack._full_read`, the authority
on errors) when unsure. :class:`Instance` works on an in-memory dataset, so
the value rules (:mod:`repack._values`) are tested without a disk.
"""

from __future__ import annotations

import dataclasses
import errno as errno_codes
import functools
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.datadict import dictionary_has_tag, keyword_for_tag, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

from ._errors import MalformedFileError, MissingRequiredTagError, NotDicomError
from ._full_read import DEFER_BYTES, image_without_pixels, read_full
from ._header import PIXEL_TAGS, read_header
from ._source import SourceFile, open_path, storage_error
from ._values import Converted, ValueCache, charset_key, converted_element, px_string

#: Without these, an instance cannot be placed without colliding with others.
REQUIRED_KEYWORDS = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


@functools.cache  # the keywords are the few our code names
def _tag(keyword: str) -> int:
    found = tag_for_keyword(keyword)
    if found is None:
        raise KeyError(keyword)
    return int(found)


@functools.lru_cache(maxsize=64)
def _wanted_tags(keywords: tuple[str, ...]) -> frozenset[int]:
    """The tags of ``keywords`` (the same few sets, for every file)."""
    return frozenset(_tag(k) for k in keywords)


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
    _elements: dict[str, Converted] = field(default_factory=dict, compare=False, repr=False)

    @functools.cached_property
    def image_without_pixels(self) -> bool:
        """Whether this is an image storage instance that carries no pixel data.

        Complete as sent (its last element ends the file, and it has no Image
        Pixel module to describe pixels it lacks); repacked as px-repack does,
        and said so in the event. Only a full read can tell: the fast header
        reader hands such a file to it.
        """
        return self.wanted is None and image_without_pixels(self.dataset)

    def complete_dataset(self) -> Dataset:
        """Every top-level element (read once, on first use, for a partial instance)."""
        if self.wanted is None or self.full_reader is None:
            return self.dataset
        if not self._complete:
            self._complete.append(self.full_reader())
        return self._complete[0]

    def _converted(self, keyword: str) -> Converted:
        """The converted element (looked up once per keyword) and its strings."""
        try:
            return self._elements[keyword]
        except KeyError:
            pass
        tag = _tag(keyword)
        holder = self.dataset if self.wanted is None or tag in self.wanted else None
        if holder is None:
            holder = self.complete_dataset()
        if tag >> 16 == 0x0002:  # the file meta (the sender's AE title, say)
            holder = getattr(holder, "file_meta", None) or Dataset()
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
        found = self._elements[keyword] = Converted(converted_element(holder, tag))
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

        PixelData and the file meta group are left out; keys are sorted. A repeating
        group's elements are :data:`NO_ATTRIBUTE`, as px wrote them.
        """
        table: dict[str, str] = {}
        dataset = self.complete_dataset()
        for tag in list(dataset.keys()):
            if tag.is_private or int(tag) in PIXEL_TAGS:
                continue
            repeater = keyword_for_tag(tag)
            if repeater and not dictionary_has_tag(tag):
                # A repeating group (overlays 60xx, curves 50xx): px's pydicom 2.4
                # lists its keyword (Dataset.dir) but cannot read it by that name.
                table[repeater] = NO_ATTRIBUTE
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
                table[keyword] = px_string(element)
        return dict(sorted(table.items()))


#: What px wrote for a keyword it listed but could not read.
NO_ATTRIBUTE = "no attribute"


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
        raise storage_error(error, "read", source.path) from error
    if marker != b"DICM":
        raise NotDicomError("no DICM marker at byte 128: not a DICOM Part 10 file")
    wanted = _wanted_tags(tuple(keywords)) if keywords is not None else None
    dataset = None
    if wanted is not None:
        dataset = read_header(source.descriptor, size, wanted, max_value=DEFER_BYTES)
    if dataset is None:  # every element wanted, or an encoding left to pydicom
        dataset, wanted = read_full(source), None
    instance = Instance(
        dataset,
        size,
        source.stat,
        source.path,
        wanted,
        full_reader=(lambda: read_full(source)) if wanted is not None else None,
        cache=cache,
        charset=charset_key(dataset) if cache is not None else None,
    )
    missing = instance.required_missing()  # never raises: bad values read as absent
    if missing:
        raise MissingRequiredTagError(missing)
    return instance


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
