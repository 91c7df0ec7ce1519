"""repack._source: opening an input someone else may control, and what it can tell of it.

Units of its own (the attacks through the whole service are ``tests/test_attacks.py``
and ``tests/test_hostile.py``): every opening refuses what is not a regular file
and never follows a link below the folder it starts from; a claim is taken once;
a removal removes only the version that was opened.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from repack import NotRegularFileError
from repack._source import relative_parts
from repack.plumbing import (
    SourceVanishedError,
    file_type,
    open_beneath,
    open_path,
    open_root,
    printable,
    try_claim,
)


@pytest.fixture
def root(tmp_path: Path) -> Iterator[int]:
    descriptor = open_root(tmp_path)
    yield descriptor
    os.close(descriptor)


def test_a_regular_file_beneath_the_root_opens(tmp_path: Path, root: int) -> None:
    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "MR.1").write_bytes(b"DICM")
    with open_beneath(root, "study/MR.1", shown_as=tmp_path / "study/MR.1") as source:
        assert os.pread(source.descriptor, 4, 0) == b"DICM"
        assert source.unchanged()


def _bound_and_closed(path: Path) -> None:
    """A socket's name left in the folder (a closed socket leaves it)."""
    with socket.socket(socket.AF_UNIX) as bound:
        bound.bind(str(path))


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (lambda p: os.symlink("/etc/passwd", p), "symbolic link"),
        (os.mkfifo, "FIFO"),
        (lambda p: p.mkdir(), "directory"),
        (_bound_and_closed, "socket"),
    ],
    ids=["link", "fifo", "folder", "socket"],
)
def test_anything_but_a_regular_file_is_refused_by_its_kind(
    tmp_path: Path, root: int, make: object, kind: str
) -> None:
    target = tmp_path / "MR.1"
    make(target)  # type: ignore[operator]
    with pytest.raises(NotRegularFileError, match=kind):
        open_beneath(root, "MR.1", shown_as=target)
    with pytest.raises(NotRegularFileError, match=kind):
        open_path(target)


def test_a_folder_on_the_way_that_is_a_link_is_never_followed(tmp_path: Path, root: int) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / "MR.1").write_bytes(b"DICM")
    os.symlink(outside, tmp_path / "study")
    with pytest.raises(SourceVanishedError, match="no longer a folder"):
        open_beneath(root, "study/MR.1", shown_as=tmp_path / "study/MR.1")


@pytest.mark.parametrize("relative", ["../x", "/etc/passwd", "", "a/../../b", "."])
def test_a_path_that_leaves_the_root_is_refused(relative: str) -> None:
    with pytest.raises(SourceVanishedError, match="not a path inside the folder"):
        relative_parts(relative)


def test_a_claim_is_taken_once(tmp_path: Path) -> None:
    path = tmp_path / "MR.1"
    path.write_bytes(b"DICM")
    first, second = os.open(path, os.O_RDONLY), os.open(path, os.O_RDONLY)
    try:
        assert try_claim(first)
        assert not try_claim(second)  # another open file: another service's claim
    finally:
        os.close(first)
    try:
        assert try_claim(second)  # the first claim ended with its descriptor
    finally:
        os.close(second)


def test_remove_removes_only_the_version_that_was_opened(tmp_path: Path, root: int) -> None:
    path = tmp_path / "MR.1"
    path.write_bytes(b"first")
    with open_beneath(root, "MR.1", shown_as=path) as source:
        path.unlink()
        path.write_bytes(b"sent again")  # another inode under the same name
        assert not source.unchanged()
        assert not source.remove()
    assert path.read_bytes() == b"sent again"
    with open_beneath(root, "MR.1", shown_as=path) as source:
        assert source.remove()
    assert not path.exists()


def test_a_file_gone_before_it_is_opened_has_vanished(tmp_path: Path, root: int) -> None:
    with pytest.raises(SourceVanishedError, match="no such file"):
        open_beneath(root, "MR.gone", shown_as=tmp_path / "MR.gone")


def test_file_types_are_named() -> None:
    import stat  # noqa: PLC0415

    assert file_type(stat.S_IFREG) == "regular file"
    assert file_type(stat.S_IFCHR) == "character device"
    assert file_type(stat.S_IFBLK) == "block device"


@given(st.binary(max_size=64))
def test_any_name_prints_as_valid_text(raw: bytes) -> None:
    shown = printable(os.fsdecode(raw))
    shown.encode("utf-8")  # never a lone surrogate
    assert os.fsdecode(raw) == shown or "\\x" in shown
