"""Full disks and unwritable folders, on a real small tmpfs (needs root to mount)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .helpers import fill, remount, small_filesystem
from .listener import listener
from .trees import temp_files

pytestmark = pytest.mark.slow


def test_full_disk_keeps_files_and_retries_until_space_returns(
    tmp_path: Path, example_files: list[Path]
) -> None:
    with small_filesystem(tmp_path / "small") as small:
        args = ("--datadir", str(small / "data"), "--logdir", str(small / "log"),
                "--settle", "0.3", "--retry-max-delay", "0.5")  # fmt: skip
        with listener(tmp_path, *args) as running:
            filler = fill(small)
            for path in example_files[:5]:
                shutil.copy(path, running.incoming / path.stem)
            running.wait_for(lambda: running.count("repack.retry") >= 10, 30, "retries")
            assert running.process is not None
            assert running.process.poll() is None  # still up
            assert len(running.incoming_files()) == 5  # nothing lost, nothing moved
            assert running.count("repack.done") == 0
            retry = running.of("repack.retry")[0]
            assert retry["errno"] == "ENOSPC"
            assert "No space left" in retry["error"]
            filler.unlink()
            running.wait_for(
                lambda: running.count("repack.done") == 5, 30, "repack after space returns"
            )
            assert running.stop() == 0
        assert running.incoming_files() == []
        assert len(list((small / "data").rglob("*.dcm"))) == 5
        assert len(list((small / "log").glob("seriesData/*-img/*.json"))) == 5
        assert temp_files(small) == []
        assert running.count("repack.failed") == 0


def test_unwritable_data_folder_keeps_files_and_retries(
    tmp_path: Path, example_files: list[Path]
) -> None:
    with small_filesystem(tmp_path / "small", "16m") as small:
        args = ("--datadir", str(small / "data"), "--logdir", str(small / "log"),
                "--settle", "0.3", "--retry-max-delay", "0.5")  # fmt: skip
        with listener(tmp_path, *args) as running:
            remount(small, "ro")
            try:
                for path in example_files[:3]:
                    shutil.copy(path, running.incoming / path.stem)
                running.wait_for(lambda: running.count("repack.retry") >= 6, 30, "retries")
                assert running.of("repack.retry")[0]["errno"] == "EROFS"
                assert len(running.incoming_files()) == 3
            finally:
                remount(small, "rw")
            running.wait_for(lambda: running.count("repack.done") == 3, 30, "repack when writable")
            assert running.stop() == 0
        assert running.incoming_files() == []
        assert len(list((small / "data").rglob("*.dcm"))) == 3
