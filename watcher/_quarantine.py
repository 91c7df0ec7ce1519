"""Setting aside files that can never be repacked, with a note saying why.

Nothing is lost. A regular file goes to ``<quarantine>/<UTC time>-<random>-<name>``
(a link to the opened inode then the removal of its name, or a synced copy
when the inode has other names or lies on another file system) with a JSON
note ``<same name>.json`` beside it; in copy mode the incoming file stays. A
name that is not a regular file (link, FIFO, socket, device) is never opened
nor placed there, where a live FIFO would be a trap: its note records its
type, mode and a link's target, and in move mode the name alone is removed.
Files are reached through the incoming folder's descriptor, as the workers
reach them. Names are cut by bytes, with a hash of the whole name.
"""

from __future__ import annotations

import datetime
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from repack import NotRegularFileError, StorageError
from repack.plumbing import (
    SourceVanishedError,
    Store,
    file_type,
    folder_beneath,
    json_bytes,
    open_beneath,
    printable,
    shorten,
    storage_error,
)

_NAME_BYTES = 255 - len(".json")


def quarantine_name(stamp: str, original: str) -> str:
    """``<stamp>-<original>``, cut to fit one file name with ``.json`` added."""
    prefix = f"{stamp}-".encode()
    raw = os.fsencode(original)
    room = _NAME_BYTES - len(prefix)
    return os.fsdecode(prefix + shorten(raw, room))


@dataclass(frozen=True)
class Quarantine:
    """The quarantine folder and the store that writes into it."""

    folder: Path
    store: Store

    def put(
        self,
        root: int,
        relative: str,
        *,
        shown_as: Path,
        reason: str,
        error: str,
        keep_source: bool = False,
    ) -> Path:
        """Set aside the file ``relative`` below the folder ``root``, with a note.

        Returns the quarantined file, or the note alone for a name that is
        not a regular file. Raises :class:`repack.plumbing.SourceVanishedError` when it
        is gone, :class:`repack.StorageError` when the quarantine cannot be
        written (the file then stays where it is).
        """
        now = datetime.datetime.now(datetime.UTC)
        stamp = f"{now.strftime('%Y%m%dT%H%M%S.%fZ')}-{secrets.token_hex(3)}"
        note: dict[str, Any] = {
            "reason": reason,
            "error": error,
            "src": printable(str(shown_as)),
            "relative_path": printable(relative),
            "quarantined_at": now.isoformat().replace("+00:00", "Z"),
        }
        try:
            source = open_beneath(root, relative, shown_as=shown_as)
        except NotRegularFileError:
            return self._record_special(root, relative, stamp, note, keep_source=keep_source)
        with source:
            name = quarantine_name(stamp, source.name)
            target = self.folder / name
            # Moved aside: the opened inode linked, no data copied (a sparse file of
            # terabytes costs nothing); a copy only across file systems.
            self.store.place(source, target, link=not keep_source, shared_ok=True)
            note.update(size=source.stat.st_size, file=printable(name))
            self.store.write_atomic(self.folder / f"{name}.json", json_bytes(note))
            if not keep_source:
                source.remove()
        return target

    def _record_special(
        self, root: int, relative: str, stamp: str, note: dict[str, Any], *, keep_source: bool
    ) -> Path:
        try:
            folder, name = folder_beneath(root, relative)
        except OSError as error:
            raise SourceVanishedError(f"{note['src']}: gone", errno=error.errno) from error
        try:
            try:
                found = os.stat(name, dir_fd=folder, follow_symlinks=False)
            except OSError as error:
                raise SourceVanishedError(f"{note['src']}: gone", errno=error.errno) from error
            if stat.S_ISREG(found.st_mode):
                raise StorageError(f"{note['src']} became a regular file meanwhile: look again")
            note.update(
                type=file_type(found.st_mode),
                mode=oct(stat.S_IMODE(found.st_mode)),
                file=None,
                name_removed=not keep_source,
            )
            if stat.S_ISLNK(found.st_mode):
                note["link_target"] = printable(os.readlink(name, dir_fd=folder))
            if stat.S_ISCHR(found.st_mode) or stat.S_ISBLK(found.st_mode):
                note["device"] = [os.major(found.st_rdev), os.minor(found.st_rdev)]
            note_path = self.folder / f"{quarantine_name(stamp, name)}.json"
            self.store.write_atomic(note_path, json_bytes(note))
            if not keep_source:
                again = os.stat(name, dir_fd=folder, follow_symlinks=False)
                if (again.st_dev, again.st_ino) == (found.st_dev, found.st_ino):
                    os.unlink(name, dir_fd=folder)
        except FileNotFoundError as error:
            raise SourceVanishedError(f"{note['src']}: gone", errno=error.errno) from error
        except OSError as error:
            raise storage_error(error, "set aside", note["src"]) from error
        finally:
            os.close(folder)
        return note_path
