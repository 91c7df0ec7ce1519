"""The exceptions of the ``repack`` package.

Every error the package raises is a :class:`RepackError`. Third-party errors
(pydicom's parse errors, :class:`OSError`) are translated into this tree at one
boundary each (:mod:`repack._dicom` for reading, :mod:`repack._store` for
writing), so callers never need to know which library failed::

    RepackError
    ├── TemplateError             a path template is invalid (a start-up error)
    ├── InvalidInstanceError      this file can never be repacked: quarantine it
    │   ├── NotDicomError         not a DICOM Part 10 file at all
    │   ├── TruncatedFileError    shorter than its own header says (cut mid-write)
    │   ├── MalformedFileError    DICOM, but its structure cannot be parsed
    │   ├── NotRegularFileError   a link, FIFO, socket, device: never opened
    │   ├── MissingRequiredTagError
    │   │                         no SOP, Study or Series Instance UID
    │   └── RefusedInstanceError  refused by the caller's own check (Repacker's admit)
    └── StorageError              the file system refused; may work later: retry
        └── SourceVanishedError   the input file disappeared before it was read

``InvalidInstanceError`` and ``StorageError`` are the two families a caller
must tell apart: the first is about the *file* (retrying cannot help), the
second about the *environment* (disk full, permission denied, I/O error).
"""

from __future__ import annotations


class RepackError(Exception):
    """Base class of every error raised by :mod:`repack`."""


class TemplateError(RepackError, ValueError):
    """A path template (or layout name) is invalid."""


class InvalidInstanceError(RepackError):
    """The input file can never be repacked; retrying will not help."""

    #: A short machine-readable reason, used in quarantine notes and events.
    reason: str = "invalid"


class NotDicomError(InvalidInstanceError):
    """The file is not a DICOM Part 10 file."""

    reason = "not-dicom"


class TruncatedFileError(InvalidInstanceError):
    """The file is shorter than its last element says: it was cut mid-write."""

    reason = "truncated"


class MalformedFileError(InvalidInstanceError):
    """The file claims to be DICOM but its structure cannot be parsed."""

    reason = "malformed"


class NotRegularFileError(InvalidInstanceError):
    """The name is a symbolic link, FIFO, socket or device: it is never read."""

    reason = "not-a-regular-file"

    def __init__(self, file_type: str) -> None:
        self.file_type = file_type
        super().__init__(f"not a regular file: a {file_type}")


class MissingRequiredTagError(InvalidInstanceError):
    """A UID that is needed to place the instance is absent or empty."""

    reason = "missing-required-tag"

    def __init__(self, keywords: list[str]) -> None:
        self.keywords = keywords
        super().__init__("required element(s) missing or empty: " + ", ".join(keywords))


class RefusedInstanceError(InvalidInstanceError):
    """The caller's own check refused the instance (:class:`~repack.Repacker`'s ``admit``):
    for example, the service does not put into CUBE's storage what CUBE would refuse."""

    reason = "refused-by-cube"

    def __init__(
        self, message: str, *, series_uid: str | None = None, sender: str | None = None
    ) -> None:
        #: The series of the refused instance, when it has one (to tell the series' watchers).
        self.series_uid = series_uid
        #: Its sender's folder, when instances are placed by sender (``by_sender``).
        self.sender = sender
        super().__init__(message)


class StorageError(RepackError):
    """The file system refused an operation; the same input may succeed later."""

    def __init__(self, message: str, *, errno: int | None = None) -> None:
        self.errno = errno
        super().__init__(message)


class SourceVanishedError(StorageError):
    """The input file was removed (or replaced) before it could be read."""
