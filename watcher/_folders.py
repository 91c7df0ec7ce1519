"""The service's four folders, checked at start (with a hint), and the incoming one held open.

Every candidate is opened beneath a descriptor of the incoming folder
(:class:`IncomingRoot`, :func:`repack.plumbing.open_beneath`), never by its full path.
The folder can be renamed away and a new one made under its name (a clean-up
script, an operator, an attacker): :meth:`IncomingRoot.current` notices that
its identity changed and opens the new one, so no worker keeps working in a
folder nobody watches any more.

What in the incoming folder is never a candidate is one rule, :func:`ignored`,
for the observer, the scans and the count of a series on disk (as watchfiles'
filters): a name that starts with ``.``.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from repack.plumbing import open_root, probe_writable

from ._errors import EXIT_STARTUP, ConfigError
from ._settings import Settings


def ignored(name: str) -> bool:
    """Whether a name in the incoming folder is never a candidate, nor a folder entered:
    one that starts with ``.`` (dot-files and dot-folders, and so this service's own
    temporary files, whose prefix is :data:`repack.plumbing.TEMP_PREFIX`)."""
    return name.startswith(".")


def ignored_below(tail: str) -> bool:
    """:func:`ignored` for any component of ``tail``, a path's part below the incoming
    folder (``/a/b``): one test of the string, for the observer's every event."""
    return "/." in tail


_PSEUDO_FILE_SYSTEMS = frozenset(
    {"proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "securityfs",
     "tracefs", "configfs", "fusectl", "pstore", "bpf", "mqueue", "hugetlbfs"}
)  # fmt: skip


def _inside(path: Path, other: Path) -> bool:
    return path == other or path.is_relative_to(other)


def _mount_of(path: Path) -> tuple[str, str, bool]:
    """The mount point holding ``path``, its file system type, and whether it is read-only."""
    best = ("/", "", False)
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return best
    target = str(path)
    for line in lines:
        fields = line.split()
        if " - " not in line or len(fields) < 6:
            continue
        mountpoint = fields[4].replace("\\040", " ")
        inside = target == mountpoint or target.startswith(mountpoint.rstrip("/") + "/")
        if inside and len(mountpoint) >= len(best[0]):
            fstype = line.split(" - ", 1)[1].split()[0]
            best = (mountpoint, fstype, "ro" in fields[5].split(","))
    return best


def _why_not_usable(folder: Path, error: OSError) -> str:
    """A hint that says why ``folder`` cannot be created or written, and what to do."""
    parent = next((p for p in folder.parents if p.exists()), Path("/"))
    existing = folder if folder.exists() else parent
    mountpoint, fstype, read_only = _mount_of(existing)
    if fstype in _PSEUDO_FILE_SYSTEMS:
        return (
            f"{existing} is on the {fstype} pseudo file system ({mountpoint}), which holds no"
            " ordinary folders: choose a folder on a real file system"
        )
    if read_only or error.errno == errno.EROFS:
        return f"{mountpoint} is mounted read-only: choose a writable folder, or remount it"
    if error.errno in (errno.EACCES, errno.EPERM):
        try:
            info = existing.stat()
            owner = f" (owner uid {info.st_uid}, mode {oct(info.st_mode & 0o7777)})"
        except OSError:
            owner = ""
        return (
            f"uid {os.getuid()} may not write in {existing}{owner}: fix its owner or"
            " mode, or choose another folder"
        )
    return f"create {folder} and make it writable for uid {os.getuid()}"


def check_folders(settings: Settings, root: IncomingRoot) -> None:
    """Create the folders, prove them usable and open ``root``; raise :class:`ConfigError`."""
    s, folders = settings, settings.folders
    for other_name in ("datadir", "logdir", "quarantine"):
        other = folders[other_name]
        if _inside(s.incoming, other) or _inside(other, s.incoming):
            raise ConfigError(
                f"--incoming {s.incoming} and --{other_name} {other} overlap",
                hint="use separate folders for incoming, data, log and quarantine",
            )
    for name, folder in folders.items():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # Others may write into the incoming folder: never follow it as a link.
            probe_writable(folder, follow_links=name != "incoming")
        except OSError as error:
            if name == "incoming" and error.errno in (errno.ELOOP, errno.ENOTDIR):
                break  # said just below, with its own hint
            raise ConfigError(
                f"--{name} {folder} is not usable: {error.strerror or error}",
                hint=_why_not_usable(folder, error),
                exit_code=EXIT_STARTUP,
            ) from error
    try:
        root.open()
    except OSError as error:
        raise ConfigError(
            f"--incoming {s.incoming} cannot be opened as a folder: {error.strerror}",
            hint="the incoming folder itself must be a real folder, not a symbolic link",
            exit_code=EXIT_STARTUP,
        ) from error


#: A folder's device and inode numbers.
Identity = tuple[int, int]


def identity_of(path: Path) -> Identity | None:
    """The identity of the folder at ``path`` (not following a link), or None."""
    try:
        found = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    if not stat.S_ISDIR(found.st_mode):
        return None
    return found.st_dev, found.st_ino


class IncomingRoot:
    """A descriptor of the incoming folder, opened again when the folder is replaced."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.descriptor = -1
        self.identity: Identity = (0, 0)
        # Descriptors of replaced folders: another thread may still be using one,
        # and a closed number can be reused for another file. Closed by close().
        self._retired: list[int] = []

    def open(self) -> None:
        """Open the folder (raises :class:`OSError`, e.g. when it is a link or gone)."""
        descriptor = open_root(self.path)
        opened = os.fstat(descriptor)
        if self.descriptor >= 0:
            self._retired.append(self.descriptor)
        self.descriptor, self.identity = descriptor, (opened.st_dev, opened.st_ino)

    def current(self, expected: Identity) -> int | None:
        """The descriptor of the folder whose identity is ``expected``, or None.

        Opens the folder again when this one is not it (the folder was
        replaced since this root was opened).
        """
        if self.descriptor < 0 or self.identity != expected:
            try:
                self.open()
            except OSError:
                return None
        return self.descriptor if self.identity == expected else None

    def relative(self, path: str) -> str:
        """``path`` (a path below this folder, as watchdog reports it) relative to it."""
        return os.path.relpath(path, self.path)

    def close(self) -> None:
        """Close the descriptor and those of replaced folders (when no thread uses them)."""
        for descriptor in [*self._retired, self.descriptor]:
            if descriptor >= 0:
                os.close(descriptor)
        self._retired.clear()
        self.descriptor = -1
