"""watcher._scan: walking the incoming folder a bounded step at a time."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest.mock import ANY

import pytest

from repack.plumbing import open_root
from watcher._scan import FolderScan

ScanOf = Callable[..., FolderScan]


@pytest.fixture
def scan_of() -> Iterator[ScanOf]:
    """``scan_of(root, remove_after=None)``: a FolderScan of ``root`` (descriptor closed after)."""
    descriptors: list[int] = []

    def make(root: Path, *, remove_after: float | None = None) -> FolderScan:
        descriptors.append(open_root(root))
        return FolderScan(descriptors[-1], str(root), ignored=lambda name: name.startswith("."),
                          remove_empty_after=remove_after)  # fmt: skip

    yield make
    for descriptor in descriptors:
        os.close(descriptor)


def test_a_scan_pauses_and_goes_on_from_where_it_stopped(tmp_path: Path, scan_of: ScanOf) -> None:
    incoming, outside = tmp_path / "incoming", tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.dcm").write_bytes(b"x")
    expected = set()
    for index in range(30):
        path = incoming / f"a{index % 3}" / "deep" / f"MR.{index}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        expected.add(str(path))
    (incoming / "linked").symlink_to(outside)  # reported like a file, never entered
    expected.add(str(incoming / "linked"))
    (incoming / ".hidden").write_bytes(b"x")
    scan = scan_of(incoming)
    first = list(itertools.islice(scan, 10))
    (incoming / "a0" / "deep" / "late").write_bytes(b"x")  # may or may not be seen
    rest = list(scan)
    found = [path for path, _ in first + rest]
    assert len(first) == 10
    assert len(found) == len(set(found))  # nothing twice
    assert set(found) - {str(incoming / "a0" / "deep" / "late")} == expected
    assert scan.found == len(found)
    assert all(not p.startswith(str(outside)) for p in found)


def test_a_scan_removes_old_empty_folders_below_the_root_and_nothing_else(
    tmp_path: Path, scan_of: ScanOf
) -> None:
    incoming, outside = tmp_path / "incoming", tmp_path / "outside"
    old_empty = incoming / "old" / "nested"
    old_empty.mkdir(parents=True)
    (outside / "empty").mkdir(parents=True)
    (incoming / "to-outside").symlink_to(outside / "empty")
    fresh = incoming / "fresh"
    fresh.mkdir()
    long_ago = time.time() - 3600
    for folder in (old_empty, old_empty.parent, outside / "empty"):
        os.utime(folder, (long_ago, long_ago))
    assert list(scan_of(incoming, remove_after=60)) == [(str(incoming / "to-outside"), ANY)]
    assert not old_empty.parent.exists()
    assert fresh.exists()
    assert (outside / "empty").exists()  # reached only through a link: never touched
    scan = scan_of(incoming, remove_after=60)
    open_before = len(os.listdir("/proc/self/fd"))
    assert next(iter(scan)) == (str(incoming / "to-outside"), ANY)  # a folder is open now
    assert len(os.listdir("/proc/self/fd")) > open_before  # its descriptor, and scandir's
    scan.close()  # stopped midway: the folder it held is closed
    assert len(os.listdir("/proc/self/fd")) == open_before


def test_one_rule_ignores_dot_names_and_so_the_services_own_temporary_files() -> None:
    """The observer, the scans and a series' count on disk share :func:`ignored`."""
    from repack.plumbing import TEMP_PREFIX  # noqa: PLC0415
    from watcher._folders import ignored, ignored_below  # noqa: PLC0415

    assert ignored(TEMP_PREFIX + "MR.1")
    assert ignored(".hidden")
    assert not ignored("MR.1.2.3")
    assert ignored_below("/study/.partial/MR.1")
    assert ignored_below(f"/{TEMP_PREFIX}x")
    assert not ignored_below("/study/MR.1.2")
