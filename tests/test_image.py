"""The container image, built and run as users run it: compose up, send, resend, health, stop.

The image test builds the Dockerfile and brings up the project's own
``docker-compose.yml`` with podman and podman-compose (Docker's files, a
daemonless engine), sends the example set from the host with dcmtk's
storescu over loopback, and checks the data volume, the events, both
HEALTHCHECKs and the stop. Marked ``image`` and ``slow``: the fast loop
leaves it out, the README's test command (and so CI) runs it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from watcher._settings import WORKER_MEMORY, default_workers

# -- the worker count within a container's limits ----------------------------------


def _cgroup(tmp_path: Path, cpu: str, memory: str) -> Path:
    (tmp_path / "cpu.max").write_text(cpu + "\n")
    (tmp_path / "memory.max").write_text(memory + "\n")
    return tmp_path


@pytest.mark.parametrize(
    ("cpu", "memory", "expected"),
    [
        ("max 100000", "max", 2),  # no limits: every core (this machine has 2)
        ("50000 100000", "max", 1),  # half a core
        ("max 100000", str(3 * WORKER_MEMORY), 2),  # room for 2 beside the service
        ("max 100000", str(WORKER_MEMORY), 1),  # never fewer than one
    ],
)
def test_the_default_worker_count_keeps_within_the_container_limits(
    tmp_path: Path, cpu: str, memory: str, expected: int
) -> None:
    assert default_workers(_cgroup(tmp_path, cpu, memory)) == min(expected, default_workers())
