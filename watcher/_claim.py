"""How a worker claims and repacks one file, and what it answers for it.

Claiming a file (:func:`repack_candidate`): open it beneath the incoming
folder's descriptor (:func:`repack.plumbing.open_beneath`: no link followed,
nothing but a regular file), take its ``flock`` (:func:`repack.plumbing.try_claim`:
several services on one folder repack it once), check that its name still
holds that version, and ask who else holds it
(:meth:`repack.plumbing.SourceFile.others`, a lease test): a writer means
later, any other descriptor means a copy, never a link. Without a lease only a
close, or the parent's quiet period, lets a file through
(:attr:`Candidate.closed`).

The answer crosses back to the parent: the :class:`~repack.Repacked`
instance, or why it was not (:class:`NotRepacked`, an :class:`Outcome`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

from repack import InvalidInstanceError, RefusedInstanceError, Repacked, Repacker, StorageError
from repack.plumbing import (
    Others,
    SourceFile,
    SourceVanishedError,
    collected_warnings,
    open_beneath,
    storage_error,
    try_claim,
)

from ._completion import Candidate
from ._folders import Identity, IncomingRoot


class Outcome(StrEnum):
    """Why a file was not repacked (the routing table of :mod:`watcher._outcomes`)."""

    #: Another process holds its lock (another service, a one-shot): look again later.
    UNCLAIMED = "unclaimed"
    #: It changed since it was seen: leave it (its change brings a new event).
    CHANGED = "changed"
    #: A process still has it open for writing: look again later.
    BUSY = "busy"
    #: No lease could tell whether a writer holds it, and no close was seen.
    UNPROVEN = "unproven"
    VANISHED = "vanished"
    #: It can never be repacked: quarantine it.
    INVALID = "invalid"
    #: The file system refused: retry with back-off.
    STORAGE = "storage"
    #: A bug, or the worker died: retry, then quarantine.
    CRASHED = "crashed"


@dataclass(frozen=True)
class NotRepacked:
    """Why one file was not repacked, as it crosses back to the parent."""

    outcome: Outcome
    reason: str = ""
    message: str = ""
    errno: int | None = None
    #: pydicom's warnings about this file, each once.
    warnings: tuple[str, ...] = ()
    #: The series of an instance refused for CUBE (its LONK subject hears of it).
    series_uid: str | None = None
    #: And its sender's folder, with ``--pacs-name-from caller``.
    sender: str | None = None


#: What a worker answers for each file.
Result = Repacked | NotRepacked


def _refusal(source: SourceFile, *, closed: bool) -> Outcome | None:
    """Why this worker must not repack ``source`` now, or None when it may."""
    try:
        if not try_claim(source.descriptor):
            return Outcome.UNCLAIMED
    except OSError as error:
        raise storage_error(error, "lock", source.path) from error
    if not source.unchanged():
        return Outcome.CHANGED
    others = source.others()
    if others is Others.WRITER:
        return Outcome.BUSY
    if others is Others.UNKNOWN and not closed:
        return Outcome.UNPROVEN
    return None


def repack_candidate(
    repacker: Repacker, root: IncomingRoot, identity: Identity, candidate: Candidate
) -> Result:
    """Claim and repack one candidate of the folder ``identity``; never raises."""
    descriptor = root.current(identity)
    if descriptor is None:  # the folder this file was seen in is no longer there
        return NotRepacked(Outcome.VANISHED)
    relative = root.relative(candidate.path)
    result: Result
    with collected_warnings() as warned:
        try:
            with open_beneath(descriptor, relative, shown_as=Path(candidate.path)) as source:
                refused = _refusal(source, closed=candidate.closed)
                result = NotRepacked(refused) if refused else repacker.repack_source(source)
        except SourceVanishedError:
            result = NotRepacked(Outcome.VANISHED)
        except InvalidInstanceError as error:
            refusal = error if isinstance(error, RefusedInstanceError) else None
            result = NotRepacked(
                Outcome.INVALID, reason=error.reason, message=str(error),
                series_uid=refusal.series_uid if refusal else None,
                sender=refusal.sender if refusal else None,
            )  # fmt: skip
        except StorageError as error:
            result = NotRepacked(Outcome.STORAGE, message=str(error), errno=error.errno)
        except Exception as error:  # a bug must not kill the worker or lose the file
            result = NotRepacked(Outcome.CRASHED, message=f"{type(error).__name__}: {error}")
    return replace(result, warnings=tuple(dict.fromkeys(warned))) if warned else result
