"""Temporary files: their names, which of them a dead writer left, and the writability probe.

Every temporary file this package makes starts with :data:`TEMP_PREFIX` (the
watcher ignores such names) and carries its host and pid, so that a later
sweep can tell whether its writer is dead.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import socket
import time
from pathlib import Path

#: Prefix of every temporary file this package creates (the watcher ignores them).
TEMP_PREFIX = ".pypx-tmp-"
_HOST = re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname())[:32] or "host"
_STARTED = time.time()
_TEMP_NAME = re.compile(
    re.escape(TEMP_PREFIX) + r"(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.[0-9a-f]+$"
)
_FOREIGN_TEMP_AGE = 3600.0


def temp_name(directory: Path) -> Path:
    """A fresh temporary name in ``directory`` (host and pid tell a sweep if its writer died)."""
    return directory / f"{TEMP_PREFIX}{_HOST}.{os.getpid()}.{secrets.token_hex(8)}"


def _writer_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_stale_temp(name: str, mtime: float, *, now: float | None = None) -> bool:
    """Whether a temporary file was left behind by a writer that died.

    On this host: its process is gone, or it is this process's pid from an
    earlier life (a container restarts with the same pid). From another host
    sharing the volume: older than an hour.
    """
    age = (time.time() if now is None else now) - mtime
    match = _TEMP_NAME.match(name)
    if match is None or match["host"] != _HOST:
        return name.startswith(TEMP_PREFIX) and age > _FOREIGN_TEMP_AGE
    pid = int(match["pid"])
    if pid == os.getpid():
        return mtime < _STARTED
    return not _writer_alive(pid)


def sweep_stale_temps(root: Path) -> int:
    """Remove temporary files of dead writers below ``root``; return how many."""
    removed = 0
    for folder, _folders, files in os.walk(root):
        for name in files:
            if not name.startswith(TEMP_PREFIX):
                continue
            path = Path(folder) / name
            try:
                if is_stale_temp(name, path.lstat().st_mtime):
                    path.unlink()
                    removed += 1
            except OSError:
                continue  # gone already, or not ours to remove
    return removed


_PROBE_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NONBLOCK | os.O_CLOEXEC
_NEW_FILE_FLAGS = (
    os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
)


def probe_writable(folder: str | os.PathLike[str], *, follow_links: bool = True) -> None:
    """Prove that a file can be made in ``folder``, touching no name anyone else can plant.

    The folder may be writable by others (the incoming folder is), so a
    predictable name in it could be a planted link, FIFO or folder: the
    probe is an unnamed file (``O_TMPFILE``) in the folder's descriptor, or,
    where the file system has none, a fresh random name created exclusively
    (``O_CREAT | O_EXCL | O_NOFOLLOW | O_NONBLOCK``) and removed at once.
    Nothing can block it. ``follow_links=False`` refuses a folder that is
    itself a symbolic link (``ELOOP``). Raises :class:`OSError`.
    """
    flags = _PROBE_FOLDER_FLAGS | (0 if follow_links else os.O_NOFOLLOW)
    directory = os.open(folder, flags)
    try:
        try:
            descriptor = os.open(
                ".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=directory
            )
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            name = temp_name(Path()).name
            descriptor = os.open(name, _NEW_FILE_FLAGS, 0o600, dir_fd=directory)
            os.unlink(name, dir_fd=directory)
        os.close(descriptor)
    finally:
        os.close(directory)
