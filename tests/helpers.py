"""Helpers shared by the test modules (no fixtures here: those live in conftest).

Commands are found next to the interpreter that runs the tests
(``.venv/bin/pypx-listener`` beside ``.venv/bin/python``), never on ``PATH``:
``.venv/bin/python -m pytest`` must pass without the venv activated, and a
command that happens to be on this machine's ``PATH`` must not hide a
missing install step.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

__all__ = [
    "children",
    "fill",
    "fill_pipe",
    "get",
    "installed",
    "kernel_setting",
    "metric",
    "proc_stat",
    "read_until",
    "remount",
    "small_filesystem",
    "thread_count",
    "worker_processes",
]

BIN = Path(sys.executable).parent


#: Short periods for tests that run the service: a file settles in half a second, a bad
#: file is quarantined half a second after it stopped changing, a series is complete after
#: a second of quiet, and the periodic scan stays out of the way (tests that want it say so).
FAST = ("--settle", "0.5", "--quarantine-after", "0.5", "--series-quiet", "1",
        "--scan-interval", "300")  # fmt: skip


class Clock:
    """A clock the test moves by hand (``clock.now += 1``)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def wait_for(
    condition: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    give_up: Callable[[], str | None] = lambda: None,
) -> None:
    """Poll ``condition`` until it is true; fail the test after ``timeout`` seconds.

    ``give_up`` returns why waiting is pointless (a process that exited, with
    its stderr), or None to go on.
    """
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return
        reason = give_up()
        if reason is not None or time.monotonic() >= deadline:
            if condition():
                return
            pytest.fail(f"timed out ({timeout:.0f}s) waiting for {what}{reason or ''}")
        time.sleep(0.05)


def installed(name: str) -> str:
    """The path of the console script ``name`` installed beside ``sys.executable``."""
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed beside {sys.executable} (pip install -e '.[test]')")
    return str(path)


def get(url: str, timeout: float = 5) -> tuple[int, str]:
    """GET ``url`` (a loopback address); the status and the body, errors included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in a Prometheus text exposition."""
    pattern = re.escape(name) + (re.escape("{" + labels + "}") if labels else "") + r" (\S+)"
    match = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    assert match, f"{name}{labels} not in the metrics"
    return float(match.group(1))


def children(pid: int) -> list[int]:
    """The direct child processes of ``pid``."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def worker_processes(pid: int) -> list[int]:
    """The repack worker processes of the service ``pid``."""
    found = []
    for child in children(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"watcher/_worker_main.py" in command:
            found.append(child)
    return found


def proc_stat(pid: int) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name: item ``n - 3`` is proc(5)'s field n.

    Raises :class:`OSError` when the process is gone.
    """
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def thread_count(pid: int) -> int:
    """How many threads the process ``pid`` has."""
    return len(os.listdir(f"/proc/{pid}/task"))


@contextlib.contextmanager
def small_filesystem(mountpoint: Path, size: str = "4m") -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted at ``mountpoint`` (needs root), unmounted after."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if mounted.returncode != 0:
        message = f"cannot mount a tmpfs here: {mounted.stderr.strip()}"
        if os.environ.get("CI") and os.geteuid() == 0:
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False, timeout=30)


def remount(mountpoint: Path, mode: str) -> None:
    """Remount ``mountpoint`` ``ro`` or ``rw``."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mountpoint)], check=True, timeout=30)


def fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` to the last byte."""
    filler = folder / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(descriptor, b"\0" * chunk)
    finally:
        os.close(descriptor)
    return filler


@contextlib.contextmanager
def kernel_setting(knob: Path, value: int) -> Iterator[None]:
    """Set a ``/proc/sys`` knob for the block (needs root), and restore it after.

    Skips the test where it cannot be set, or fails it under CI as root.
    """
    try:
        original = knob.read_text()
        knob.write_text(str(value))
    except OSError as error:
        message = f"cannot set {knob}: {error}"
        if os.environ.get("CI") and os.geteuid() == 0:
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield
    finally:
        knob.write_text(original)


def read_until(descriptor: int, marker: bytes, timeout: float = 60) -> bytes:
    """Read a pipe until ``marker`` has come (fails the test after ``timeout`` s)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen and time.monotonic() < deadline:
        if select.select([descriptor], [], [], 1)[0]:
            seen += os.read(descriptor, 65536)
    assert marker in seen, f"{marker!r} did not come within {timeout:.0f} s"
    return seen


def fill_pipe(write_end: int) -> int:
    """Fill the pipe of ``write_end`` to the last byte; return the filler's descriptor.

    A second open of the same pipe, non-blocking for the test alone. Whole
    pages first, then byte by byte: a pipe refuses a page once less than a
    page is free, and what is left would let a few short lines through.
    The caller closes the descriptor.
    """
    filler = os.open(f"/proc/self/fd/{write_end}", os.O_WRONLY | os.O_NONBLOCK)
    for chunk in (b"#" * 4096, b"#"):
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(filler, chunk)
    return filler
