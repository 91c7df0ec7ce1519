"""The service's four folders: checked at start, with a hint that says what to do."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from repack import probe_writable

from ._errors import EXIT_STARTUP, ConfigError
from ._incoming import IncomingRoot
from ._settings import Settings

__all__ = ["check_folders"]

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
    s = settings
    folders = {"incoming": s.incoming, "datadir": s.datadir, "logdir": s.logdir,
               "quarantine": s.quarantine}  # fmt: skip
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
