"""Opening an input file without trusting the folder it lies in.

Anyone may write into the incoming folder, so a path is only a hint: any
folder on it may be swapped for a link, and the name itself may be a link,
FIFO, socket, device or a hard link to an outside file. An input is opened
once, safely, and everything after goes through descriptors:

* :func:`open_beneath` walks from the root folder's descriptor one component
  at a time (``O_NOFOLLOW | O_DIRECTORY``); a link or ``..`` ends the walk;
* the final name is ``lstat``-ed in its folder and opened only if a regular
  file (``O_NOFOLLOW | O_NONBLOCK``, checked again with ``fstat``), else
  :class:`NotRegularFileError`: a FIFO or device is never opened for reading;
* data is read with ``pread``, linked from ``/proc/self/fd`` or copied;
* the name is removed in its folder's descriptor, only while it still names
  the same unchanged inode in the folder reached from the root.

Every :class:`OSError` of these steps becomes a :mod:`repack._errors` error here.
"""

from __future__ import annotations

import errno as errno_codes
import fcntl
import operator
import os
import signal
import stat as stat_module
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from ._errors import NotRegularFileError, SourceVanishedError, StorageError

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_GONE = (errno_codes.ENOENT, errno_codes.ENOTDIR, errno_codes.ELOOP)
#: What tells one version of a file from another.
_version = operator.attrgetter("st_dev", "st_ino", "st_size", "st_mtime_ns")

_TYPES = {
    stat_module.S_IFLNK: "symbolic link",
    stat_module.S_IFIFO: "FIFO",
    stat_module.S_IFSOCK: "socket",
    stat_module.S_IFCHR: "character device",
    stat_module.S_IFBLK: "block device",
    stat_module.S_IFDIR: "directory",
    stat_module.S_IFREG: "regular file",
}


def file_type(mode: int) -> str:
    """A readable name for the type of a file (``"FIFO"``, ``"symbolic link"``...)."""
    return _TYPES.get(stat_module.S_IFMT(mode), "unknown file type")


def try_claim(descriptor: int) -> bool:
    """Take the ``flock`` of the file open at ``descriptor``, without waiting: True when
    taken, False when another process holds it. The one claim of the service (an input,
    an outbox record, a series' mark): several services on one tree pass each other's
    files by rather than wait. Any other failure is raised (:class:`OSError`)."""
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def printable(text: str | os.PathLike[str]) -> str:
    """A name (or any text holding one) as printable text: names are bytes, and the
    undecodable ones, lone surrogates in a ``str``, are spelled ``\\xNN``. The one
    printer of paths, for messages, events and the JSON logs."""
    text = os.fspath(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogateescape")
        return raw.decode("utf-8", "backslashreplace")
    return text


def storage_error(error: OSError, action: str, path: str | os.PathLike[str]) -> StorageError:
    """An OSError of the file system, translated: ``cannot <action> <path>: <why>``."""
    return StorageError(f"cannot {action} {printable(path)}: {error.strerror or error}",
                        errno=error.errno)  # fmt: skip


def _failed(
    error: OSError, action: str, shown_as: Path | str
) -> SourceVanishedError | StorageError:
    """An OSError of opening an input, translated: gone, or refused by the system."""
    if error.errno in _GONE:
        return SourceVanishedError(f"{printable(shown_as)}: no such file", errno=error.errno)
    return storage_error(error, action, shown_as)


def relative_parts(relative: str | os.PathLike[str]) -> list[str]:
    """The components of a path relative to a root; refuses ``..`` and absolute paths."""
    text = os.fspath(relative)
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if not parts or text.startswith("/") or ".." in parts:
        raise SourceVanishedError(f"{printable(text)} is not a path inside the folder")
    return parts


#: Pauses between write-lease tests while only readers hold a file (then: READERS).
_READER_PAUSES = (0.001, 0.002, 0.0)


class Others(StrEnum):
    """Who else holds an input file open (see :meth:`SourceFile.others`)."""

    #: Nobody: no other descriptor of the file exists.
    NONE = "none"
    #: Other processes have it open, none of them for writing.
    READERS = "readers"
    #: A process has it open for writing: it may still be written.
    WRITER = "writer"
    #: No lease could be taken (another owner and no ``CAP_LEASE``, or no leases here).
    UNKNOWN = "unknown"


@dataclass
class SourceFile:
    """An input file opened by :func:`open_beneath`: its descriptor and its folder's.

    ``path`` is the path it was opened as (for messages and events only);
    ``stat`` is its ``fstat`` when opened. Close it (or use it as a context
    manager) when done.
    """

    path: Path
    descriptor: int
    folder: int
    name: str
    stat: os.stat_result
    #: The root the walk started from, and the folder components below it.
    root: int = -1
    folders: tuple[str, ...] = ()
    #: Whether another process may hold a descriptor of it: None until
    #: :meth:`others` has asked (and then taken as True by :attr:`shared`).
    open_elsewhere: bool | None = None
    _owns_folder: bool = field(default=True, repr=False)
    _closed: bool = field(default=False, repr=False)

    @classmethod
    def unnamed(cls, shown_as: Path, descriptor: int) -> SourceFile:
        """An input that has no folder (a ``memfd``): it can be read, never removed.

        Takes ownership of ``descriptor``.
        """
        return cls(shown_as, descriptor, -1, "", os.fstat(descriptor), _owns_folder=False)

    @property
    def shared(self) -> bool:
        """Whether anyone else may reach the inode: then it is copied, never linked.

        A hard link into the data tree would publish the very inode, so it is
        only made for a file this process can prove is its own to keep: no
        other name links it (a hard link to an outside file), its owner is
        this process's user (an owner can always open it for writing again,
        through ``/proc/PID/fd``), no group or other write bit, and no other
        process holds it open (:attr:`open_elsewhere`).
        """
        info = self.stat
        return (
            info.st_nlink > 1
            or info.st_uid != os.geteuid()
            or bool(info.st_mode & (stat_module.S_IWGRP | stat_module.S_IWOTH))
            or self.open_elsewhere is not False
        )

    def others(self) -> Others:
        """Who else holds the file open, as far as a lease can tell; sets :attr:`open_elsewhere`.

        A write lease (``F_SETLEASE``) is granted only while no other
        descriptor of the file exists; a read lease only while none is open
        for writing. Each is released at once: this is a test, not a hold.
        Leases need the file's owner or ``CAP_LEASE``, and a file system
        that has them (not NFS): else :attr:`Others.UNKNOWN`. A lease break
        sends the holder ``SIGIO``, whose default action ends the process: a
        process that neither ignores nor handles it takes no lease (UNKNOWN).
        """
        descriptor = self.descriptor
        self.open_elsewhere = True
        if signal.getsignal(signal.SIGIO) is signal.SIG_DFL:
            return Others.UNKNOWN
        for pause in _READER_PAUSES:
            try:
                fcntl.fcntl(descriptor, fcntl.F_SETLEASE, fcntl.F_WRLCK)
            except OSError as error:
                if error.errno != errno_codes.EAGAIN:
                    return Others.UNKNOWN
            else:
                fcntl.fcntl(descriptor, fcntl.F_SETLEASE, fcntl.F_UNLCK)
                self.open_elsewhere = False
                return Others.NONE
            try:
                fcntl.fcntl(descriptor, fcntl.F_SETLEASE, fcntl.F_RDLCK)
            except OSError as error:
                return Others.WRITER if error.errno == errno_codes.EAGAIN else Others.UNKNOWN
            fcntl.fcntl(descriptor, fcntl.F_SETLEASE, fcntl.F_UNLCK)
            # Readers only: often another service's worker that opened the file just
            # to try its flock, and closes it at once. Look again before copying.
            if pause:
                time.sleep(pause)
        return Others.READERS

    def unchanged(self) -> bool:
        """Whether the name still holds the very version that was opened."""
        if self.folder < 0:
            return False
        try:
            now = os.stat(self.name, dir_fd=self.folder, follow_symlinks=False)
        except OSError:
            return False
        return _version(now) == _version(self.stat)

    def _folder_is_current(self) -> bool:
        """Whether the root still reaches this file's folder by the same components."""
        if not self.folders or self.root < 0:
            return True
        try:
            reached = _walk(self.root, self.folders)
        except OSError:
            return False
        try:
            now, then = os.fstat(reached), os.fstat(self.folder)
        finally:
            os.close(reached)
        return (now.st_dev, now.st_ino) == (then.st_dev, then.st_ino)

    def remove(self) -> bool:
        """Remove the name if it still holds the opened, unchanged version.

        A file sent again meanwhile (another inode, size or mtime), or a
        folder moved away from under the root, is left alone. Returns
        whether the name was removed.
        """
        if not (self.unchanged() and self._folder_is_current()):
            return False
        try:
            os.unlink(self.name, dir_fd=self.folder)
        except FileNotFoundError:
            return False
        except OSError as error:
            raise storage_error(error, "remove", self.path) from error
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        os.close(self.descriptor)
        if self._owns_folder:
            os.close(self.folder)

    def __enter__(self) -> SourceFile:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _walk(root: int, folders: tuple[str, ...] | list[str]) -> int:
    """A new descriptor of ``root/folders...``, never following a link (raises OSError)."""
    current = os.dup(root)
    try:
        for name in folders:
            following = os.open(name, _DIRECTORY_FLAGS, dir_fd=current)
            os.close(current)
            current = following
    except BaseException:
        os.close(current)
        raise
    return current


def open_root(folder: str | os.PathLike[str]) -> int:
    """A descriptor of ``folder`` itself (its last component must not be a link)."""
    return os.open(folder, _DIRECTORY_FLAGS)


def folder_beneath(root: int, relative: str | os.PathLike[str]) -> tuple[int, str]:
    """A new descriptor of the folder of ``relative`` below ``root``, and the name in it.

    Raises :class:`OSError` (``ELOOP``/``ENOTDIR`` when a folder on the way is
    a link or not a folder) and :class:`SourceVanishedError` for a path that
    does not stay inside.
    """
    *folders, name = relative_parts(relative)
    return _walk(root, folders), name


def open_folder_beneath(root: int, relative: str | os.PathLike[str]) -> int:
    """A new descriptor of the folder ``relative`` below ``root`` ("" or "." is ``root``).

    No link is followed on the way or at the end. Raises :class:`OSError`
    (``ELOOP``/``ENOTDIR``: a link or not a folder) and
    :class:`SourceVanishedError` for a path that does not stay inside.
    """
    if os.fspath(relative) in ("", "."):
        return os.dup(root)
    return _walk(root, relative_parts(relative))


def open_beneath(root: int, relative: str | os.PathLike[str], *, shown_as: Path) -> SourceFile:
    """Open the regular file ``relative`` below the folder ``root`` (a descriptor).

    ``shown_as`` is the path used in messages. Raises
    :class:`SourceVanishedError` when the name is gone or has left the folder
    (a folder on its way became a link), :class:`NotRegularFileError` for
    anything but a regular file, :class:`StorageError` when the system
    refuses.
    """
    *folders, name = relative_parts(relative)
    try:
        folder = _walk(root, folders)
    except OSError as error:
        if error.errno in _GONE:
            raise SourceVanishedError(
                f"{printable(shown_as)}: a folder on its path is gone or is no longer a folder",
                errno=error.errno,
            ) from error
        raise storage_error(error, "open the folder of", shown_as) from error
    try:
        source = _open_in(folder, name, shown_as)
    except BaseException:
        os.close(folder)
        raise
    source.root, source.folders = root, tuple(folders)
    return source


def open_path(path: str | os.PathLike[str]) -> SourceFile:
    """Open the regular file at ``path``, a path given by a user.

    The folders on the way are the user's to choose (links among them are
    followed); the file itself must be a regular file, not a link.
    """
    path = Path(path)
    try:
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as error:
        raise _failed(error, "open the folder of", path) from error
    try:
        return _open_in(folder, path.name, path)
    except BaseException:
        os.close(folder)
        raise


def _open_in(folder: int, name: str, shown_as: Path) -> SourceFile:
    try:
        before = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except OSError as error:
        raise _failed(error, "stat", shown_as) from error
    if not stat_module.S_ISREG(before.st_mode):
        raise NotRegularFileError(file_type(before.st_mode))
    try:
        descriptor = os.open(name, _FILE_FLAGS, dir_fd=folder)
    except OSError as error:
        if error.errno == errno_codes.ELOOP:  # swapped for a link since the lstat
            raise NotRegularFileError("symbolic link") from error
        raise _failed(error, "open", shown_as) from error
    try:
        opened = os.fstat(descriptor)
    except OSError as error:
        os.close(descriptor)
        raise storage_error(error, "stat", shown_as) from error
    if not stat_module.S_ISREG(opened.st_mode) or opened.st_ino != before.st_ino:
        os.close(descriptor)
        if not stat_module.S_ISREG(opened.st_mode):
            raise NotRegularFileError(file_type(opened.st_mode))
        raise SourceVanishedError(f"{printable(shown_as)}: replaced while it was opened")
    return SourceFile(shown_as, descriptor, folder, name, opened)
