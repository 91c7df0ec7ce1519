"""get_examples.sh: offline, beside ../shared, and after an earlier failure."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import EXAMPLE_NAME, ROOT


def run(script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")},
    )


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A folder holding only the script, as in a fresh clone with no ../shared."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(ROOT / "get_examples.sh", repo)
    return repo / "get_examples.sh"


def test_offline_without_shared_fails_in_one_line_and_leaves_nothing(checkout: Path) -> None:
    for _ in range(2):  # the second run starts as clean as the first
        result = run(checkout, "--instances-only")
        assert result.returncode == 1
        errors = result.stderr.strip().splitlines()
        assert len(errors) == 2
        assert errors[0].startswith("get_examples: error: cannot download")
        assert errors[1].startswith("get_examples: hint: put its 192 .dcm files")
        assert list((checkout.parent / "examples").iterdir()) == []


def test_shared_examples_are_used_and_a_broken_earlier_copy_is_replaced(
    checkout: Path, example_dir: Path
) -> None:
    shared = checkout.parent.parent / "shared" / "examples"
    shared.mkdir(parents=True)
    (shared / EXAMPLE_NAME).symlink_to(example_dir)
    # What an earlier version left after a failure: the set one level too deep.
    too_deep = checkout.parent / "examples" / EXAMPLE_NAME / EXAMPLE_NAME
    too_deep.mkdir(parents=True)
    shutil.copy(next(example_dir.glob("*.dcm")), too_deep)
    result = run(checkout, "--instances-only")
    assert result.returncode == 0, result.stderr
    target = checkout.parent / "examples" / EXAMPLE_NAME
    files = sorted(target.iterdir())
    assert len(files) == 192
    assert all(p.suffix == ".dcm" and p.is_file() for p in files)
    assert not os.access(files[0], os.W_OK) or os.geteuid() == 0
    assert files[0].stat().st_mode & 0o222 == 0
    again = run(checkout, "--instances-only")  # already there: nothing to do
    assert again.returncode == 0
    assert "copying" not in again.stdout
