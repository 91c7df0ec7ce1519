"""Every file-system effect of repacking, and the translation of ``OSError``.

* **Atomic writes**: a new file is an unnamed ``O_TMPFILE`` linked into place
  when complete; a replacement goes through a temporary name
  (:data:`TEMP_PREFIX`) and ``os.replace``. Readers never see a partial file.
* **Create once**: files that keep their first writer's content are published
  with a link, which fails if the name exists: no lock, no lost race.
* **Locked updates**: the one read-modify-write (a patient's ``StudyList``)
  runs under ``flock`` on a file below ``<logdir>/.locks``; the lock dies with
  its process (and each thread opens its own), so no stale lock is left.
* **Placing data**: the opened :class:`~repack._source.SourceFile` (never a
  path) is hard-linked from ``/proc/self/fd``, else copied from its descriptor
  to a temporary name, synced, then published. An inode with other names is
  always copied, and a copy keeps no set-ID or execute bit.
* **Folders that vanish** (someone removed the tree): the folder is made again,
  the write tried once more, and :attr:`Store.generation` moves on so that
  callers forget what they wrote.

Every :class:`OSError` becomes a :class:`~repack._errors.StorageError` (or
:class:`~repack._errors.SourceVanishedError` for a missing source) here.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson

from ._errors import SourceVanishedError, StorageError
from ._logs import dumps
from ._memo import Memo
from ._sanitize import seahash
from ._source import SourceFile, printable, storage_error
from ._temps import temp_name

#: Folder below the log dir that holds the lock files.
LOCK_DIR = ".locks"
_LOCK_BUCKETS = 256
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK, errno.EOPNOTSUPP}
_COPY_CHUNK = 1024 * 1024
#: Permission bits a copy keeps: read and write, never set-ID or execute.
_COPY_MODE_BITS = 0o666
_T = TypeVar("_T")


@contextlib.contextmanager
def _translated(action: str, path: Path | str) -> Iterator[None]:
    try:
        yield
    except OSError as error:
        raise storage_error(error, action, path) from error


def _link(descriptor: int, target: Path) -> None:
    """A new name ``target`` for the file open at ``descriptor``."""
    # A dir fd makes CPython call linkat(AT_SYMLINK_FOLLOW), which follows the /proc
    # magic link (plain link() does not): the link is made to the opened inode (an
    # unnamed one too), whatever its name has become meanwhile.
    os.link(f"/proc/self/fd/{descriptor}", target, src_dir_fd=descriptor, follow_symlinks=True)


def _unlink_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


#: Folders known to exist; forgetting only costs a mkdir, so memory stays flat.
_REMEMBER_DIRS = 4_096


class Store:
    """File-system operations for one log dir (locks live below it).

    ``fsync`` makes a copy durable before its source may be removed (moves
    across file systems); hard links need no copy and so no sync.
    """

    def __init__(self, lock_root: Path | None, *, fsync: bool = True) -> None:
        self._lock_root = lock_root / LOCK_DIR if lock_root is not None else None
        self._fsync = fsync
        self._made_dirs: Memo[Path, bool] = Memo(_REMEMBER_DIRS)
        self._unnamed = hasattr(os, "O_TMPFILE")
        self._proc_links = os.path.isdir("/proc/self/fd")
        #: Moves on whenever a remembered folder was found gone and made again.
        self.generation = 0

    # -- directories ---------------------------------------------------------

    def ensure_dir(self, directory: Path) -> None:
        """Create ``directory`` and its parents if needed (remembered once made)."""
        if directory in self._made_dirs:
            return
        with _translated("create folder", directory):
            directory.mkdir(parents=True, exist_ok=True)
        self._made_dirs.put(directory, True)

    def _in_folder(self, directory: Path, operation: Callable[[], _T]) -> _T:
        """Run ``operation`` (which writes into ``directory``), making the folder again
        once if it vanished since it was made."""
        self.ensure_dir(directory)
        try:
            return operation()
        except FileNotFoundError:
            # Gone (another writer may have made it again already): once more.
            pass
        self._made_dirs.clear()
        self.generation += 1
        self.ensure_dir(directory)
        return operation()

    def _write_temp(self, directory: Path, data: bytes) -> Path:
        temp = temp_name(directory)

        def write() -> None:
            with open(temp, "xb") as handle:
                handle.write(data)

        try:
            self._in_folder(directory, write)
        except OSError as error:
            _unlink_quietly(temp)
            raise storage_error(error, "write", temp) from error
        return temp

    # -- JSON files ----------------------------------------------------------

    def _publish_unnamed(self, path: Path, data: bytes, folder: Path) -> bool | None:
        """Create ``path`` (in ``folder``) from an unnamed (``O_TMPFILE``) file: no temporary name.

        True when created, False when ``path`` exists, None where the file
        system cannot do it (then the caller uses a named temporary file).
        """
        if not self._unnamed:
            return None
        try:
            descriptor = self._in_folder(
                folder, lambda: os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o666)
            )
        except OSError as error:
            if error.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                self._unnamed = False
                return None
            raise storage_error(error, "write", path) from error
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view) :]
            _link(descriptor, path)
        except FileExistsError:
            return False
        except OSError as error:
            if error.errno == errno.ENOENT and not self._proc_links:
                self._unnamed = False
                return None
            raise storage_error(error, "write", path) from error
        finally:
            os.close(descriptor)
        return True

    def write_atomic(
        self, path: Path, data: bytes, *, temp_dir: Path | None = None, folder: Path | None = None
    ) -> None:
        """Replace ``path`` with ``data`` atomically.

        A new file is published from an unnamed file, so the folder never
        shows a temporary name. Replacing an existing file goes through a
        named temporary file in ``temp_dir`` (same file system; by default the
        destination folder). ``folder``: ``path.parent``, if the caller has it.
        """
        folder = folder if folder is not None else path.parent
        if self._publish_unnamed(path, data, folder):
            return
        temp = self._write_temp(temp_dir or folder, data)
        try:
            self._in_folder(folder, lambda: os.replace(temp, path))
        except OSError as error:
            _unlink_quietly(temp)
            raise storage_error(error, "write", path) from error

    def create_once(self, path: Path, data: bytes) -> bool:
        """Create ``path`` with ``data`` unless it exists; True if this call created it."""
        if path.exists():
            return False
        published = self._publish_unnamed(path, data, path.parent)
        if published is not None:
            return published
        temp = self._write_temp(path.parent, data)
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        except OSError as error:
            if error.errno not in _NO_LINK:
                raise storage_error(error, "write", path) from error
            # No hard links here (some network file systems): serialise instead.
            with self.locked(str(path)):
                if path.exists():
                    return False
                with _translated("write", path):
                    os.replace(temp, path)
                return True
        finally:
            _unlink_quietly(temp)
        return True

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        """Hold an exclusive, crash-safe lock for ``key`` (one of 256 buckets)."""
        if self._lock_root is None:
            yield
            return
        bucket = seahash(key.encode("utf-8", "surrogatepass")) % _LOCK_BUCKETS
        lock_path = self._lock_root / f"{bucket:02x}.lock"
        with _translated("lock", lock_path):
            descriptor = self._in_folder(
                self._lock_root, lambda: os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            )
        try:
            with _translated("lock", lock_path):
                fcntl.flock(descriptor, fcntl.LOCK_EX)
            yield
        finally:
            os.close(descriptor)  # closing releases the lock

    def update_json(
        self, path: Path, update: Callable[[dict[str, Any] | None], dict[str, Any] | None]
    ) -> None:
        """Read-modify-write ``path`` under its lock; ``update`` returns None to skip.

        ``update`` gets the current document (None if there is none or it is
        unreadable) and returns the new one.
        """
        with self.locked(str(path)):
            current: dict[str, Any] | None = None
            try:
                loaded = orjson.loads(path.read_bytes())
                current = loaded if isinstance(loaded, dict) else None
            except FileNotFoundError:
                current = None
            except orjson.JSONDecodeError:
                current = None
            except OSError as error:
                raise storage_error(error, "read", path) from error
            new = update(current)
            if new is not None:
                self.write_atomic(path, dumps(new, indent=True))

    # -- data files ----------------------------------------------------------

    def place(
        self,
        source: SourceFile,
        destination: Path,
        *,
        link: bool,
        folder: Path | None = None,
        shared_ok: bool = False,
    ) -> os.stat_result:
        """Make ``destination`` a complete copy of the opened ``source``, which stays put.

        With ``link``, a hard link to the opened inode when it is on the same
        file system and has no other name (only for a source that is removed
        right after: storescp rewrites a re-sent file in place, which would
        change a long-lived link too); otherwise a copy, synced when the
        source is about to go. Published atomically either way. Returns the
        destination's stat. ``folder``: ``destination.parent``, if the caller
        has it (then its hash is not computed again). ``shared_ok``: link even an
        inode another process may hold or its owner reopen (:attr:`SourceFile.shared`),
        though never one with another name: for a destination that is not the data
        tree, such as the quarantine, where a copy of a sparse file would fill the disk.
        """
        folder = folder if folder is not None else destination.parent
        # Durable before its source may go; a kept source needs no sync.
        sync = link and self._fsync
        # A second name (a hard link to an outside file) is never linked, shared_ok or not.
        allowed = not source.shared or (shared_ok and source.stat.st_nlink == 1)
        link = link and self._proc_links and allowed
        if link:
            first = self._link_first(source, destination, folder)
            if isinstance(first, os.stat_result):
                return first
            link = first
        return self._place_via_temp(source, destination, folder, link=link, sync=sync)

    def _link_first(
        self, source: SourceFile, destination: Path, folder: Path
    ) -> os.stat_result | bool:
        """The common case, a new instance: a link straight to the final name. Its stat
        when made; else whether a link may still be made (True: the name exists, a
        re-sent instance to replace; False: no link here, another file system)."""
        try:
            self._in_folder(folder, lambda: _link(source.descriptor, destination))
        except FileExistsError:
            return True  # sent again: replaced through a temporary name
        except OSError as error:
            if error.errno not in _NO_LINK:
                raise self._placing_error(error, source, destination) from error
            return False
        # The link is the opened inode: its stat, without a walk of the path.
        with _translated("stat", destination):
            return os.fstat(source.descriptor)

    def _place_via_temp(
        self, source: SourceFile, destination: Path, folder: Path, *, link: bool, sync: bool
    ) -> os.stat_result:
        """A link or a copy under a temporary name, then renamed over ``destination``."""
        temp = temp_name(folder)
        try:
            try:
                if link:
                    try:
                        self._in_folder(folder, lambda: _link(source.descriptor, temp))
                    except OSError as error:
                        # A re-sent instance across file systems: linkat says EEXIST
                        # for the final name before it says EXDEV for the temporary one.
                        if error.errno not in _NO_LINK:
                            raise
                        link = False
                if not link:
                    self._in_folder(folder, lambda: self._copy(source, temp, sync=sync))
            except OSError as error:
                raise self._placing_error(error, source, temp) from error
            with _translated("write", destination):
                os.replace(temp, destination)
                return os.stat(destination)
        finally:
            _unlink_quietly(temp)

    @staticmethod
    def _copy(source: SourceFile, temp: Path, *, sync: bool) -> None:
        """Copy the opened version of ``source`` (exactly its size) to ``temp``."""
        size = source.stat.st_size
        writer = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            offset = 0
            while offset < size:
                chunk = os.pread(source.descriptor, min(_COPY_CHUNK, size - offset), offset)
                if not chunk:
                    raise SourceVanishedError(
                        f"{printable(source.path)} shrank while it was copied", errno=errno.EIO
                    )
                view = memoryview(chunk)
                while view:
                    view = view[os.write(writer, view) :]
                offset += len(chunk)
            os.fchmod(writer, source.stat.st_mode & _COPY_MODE_BITS)
            if sync:
                os.fsync(writer)
        finally:
            os.close(writer)

    @staticmethod
    def _placing_error(error: OSError, source: SourceFile, target: Path) -> StorageError:
        if error.errno == errno.ENOENT:
            try:
                gone = os.fstat(source.descriptor).st_nlink == 0
            except OSError:
                gone = True
            if gone:  # linkat refuses an inode whose last name was removed
                return SourceVanishedError(
                    f"{printable(source.path)} was removed while it was repacked", errno=error.errno
                )
        return storage_error(error, "write", target)
