"""Defects found in the field: deployments, a hostile local user, pypx's readers during ingest.

Each test here reproduces one defect of the field-hardening issue against a
real service (or the real ``pypx-repack``) and fails on the code before its
fix.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .helpers import small_filesystem
from .listener import listener

pytestmark = pytest.mark.slow


# -- re-sends across file systems ----------------------------------------------


def test_an_instance_sent_again_is_repacked_when_incoming_and_data_are_separate_mounts(
    tmp_path: Path, example_files: list[Path]
) -> None:
    """Every compose and Kubernetes layout: the incoming volume is not the data volume.

    linkat says EEXIST for the repacked copy first and EXDEV for a temporary
    name next: the second copy must fall back to a copy, as the first did.
    """
    with small_filesystem(tmp_path / "spool", "16m") as spool:
        incoming = spool / "incoming"
        incoming.mkdir()
        args = ("--incoming", str(incoming), "--settle", "0.2", "--retry-max-delay", "0.5")
        with listener(tmp_path, *args) as running:
            for round_number in (1, 2, 3):
                for path in example_files[:3]:
                    shutil.copy(path, incoming / f"MR.{path.stem}")
                running.wait_for(
                    lambda n=round_number: running.count("repack.done") == 3 * n,
                    30,
                    f"round {round_number} repacked",
                )
            assert running.count("repack.retry") == 0
            assert running.stop() == 0
        assert running.incoming_files() == []
    data = sorted(running.data.rglob("*.dcm"))
    assert len(data) == 3
    assert sorted(p.read_bytes() for p in data) == sorted(p.read_bytes() for p in example_files[:3])
