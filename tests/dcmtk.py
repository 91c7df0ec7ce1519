"""Running the real dcmtk storescp and storescu, on loopback only (tests and benchmark).

Every wait is bounded. storescp is started in its own session (``setsid``) so
that it and any ``--fork`` children are stopped together by process group.
Both programs get ``TCP_NODELAY=1``, or every instance costs ~44 ms.

The plain functions raise :class:`DcmtkError`; :func:`storescp` and
:func:`storescu` are their test forms, which fail the test instead.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

LOOPBACK = "127.0.0.1"


class DcmtkError(RuntimeError):
    """storescp did not listen, or storescu failed."""


def require_dcmtk() -> None:
    """Skip (or, under CI, fail) when dcmtk is not installed."""
    if shutil.which("storescp") and shutil.which("storescu"):
        return
    message = "dcmtk storescp/storescu not on PATH (apt-get install -y dcmtk)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.2)
        return probe.connect_ex((LOOPBACK, port)) == 0


def stop_group(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Stop a process started with ``start_new_session`` and all of its group."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def start_storescp(output: Path, *extra: str, port: int) -> subprocess.Popen[bytes]:
    """Start ``storescp -od OUTPUT [extra] PORT`` and wait until it listens."""
    output.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        ["storescp", "-od", str(output), *extra, str(port)],
        env=dcmtk_env(),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if _port_open(port):
            return process
        if process.poll() is not None:
            raise DcmtkError(f"storescp exited with {process.returncode}")
        time.sleep(0.02)
    stop_group(process)
    raise DcmtkError("storescp did not listen within 10 s")


def send(port: int, files: Sequence[Path], *options: str, timeout: float = 120) -> None:
    """Send ``files`` to ``127.0.0.1:port`` in one association; raise on any failure.

    ``options``: more of storescu's, such as the transfer syntax to propose (``-xv``).
    """
    result = subprocess.run(
        ["storescu", "-aec", "ANY-SCP", "-to", "20", "-ta", "20", "-td", "60", *options,
         LOOPBACK, str(port), *map(str, files)],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise DcmtkError(f"storescu failed ({result.returncode}): {result.stderr[-2000:]}")


@contextlib.contextmanager
def storescp(output: Path, *extra: str, port: int | None = None) -> Iterator[int]:
    """Run storescp for a test; yield the port once it listens; always stop it."""
    require_dcmtk()
    port = port or free_port()
    try:
        process = start_storescp(output, *extra, port=port)
    except DcmtkError as error:
        pytest.fail(str(error))
    try:
        yield port
    finally:
        stop_group(process)


def storescu(port: int, files: Sequence[Path], *options: str, timeout: float = 120) -> None:
    """Send ``files`` for a test (``options``: more of storescu's); fail the test on any error."""
    require_dcmtk()
    try:
        send(port, files, *options, timeout=timeout)
    except DcmtkError as error:
        pytest.fail(str(error))
