"""watcher._quarantine: setting aside what can never be repacked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from repack.plumbing import Store, open_root
from watcher._quarantine import Quarantine, quarantine_name


def test_quarantine_names_are_cut_by_bytes_and_stay_apart() -> None:
    long_a, long_b = "é" * 200 + "a.txt", "é" * 200 + "b.txt"
    name_a, name_b = quarantine_name("STAMP", long_a), quarantine_name("STAMP", long_b)
    assert name_a != name_b
    for name in (name_a, name_b):
        assert len(os.fsencode(name + ".json")) <= 255
        name.encode("utf-8")  # never half a character at the cut
    assert quarantine_name("STAMP", "short.txt") == "STAMP-short.txt"


@pytest.mark.parametrize("keep_source", [False, True], ids=["move", "copy"])
def test_quarantine_moves_or_copies_a_file_and_notes_a_fifo(
    tmp_path: Path, keep_source: bool
) -> None:
    incoming, folder = tmp_path / "in", tmp_path / "q"
    incoming.mkdir()
    folder.mkdir()
    (incoming / "junk").write_bytes(b"junk")
    os.mkfifo(incoming / "pipe")
    quarantine = Quarantine(folder, Store(None))
    root = open_root(incoming)
    try:
        kept = quarantine.put(root, "junk", shown_as=incoming / "junk", reason="not-dicom",
                              error="no DICM", keep_source=keep_source)  # fmt: skip
        note_path = quarantine.put(root, "pipe", shown_as=incoming / "pipe",
                                   reason="not-a-regular-file", error="a FIFO",
                                   keep_source=keep_source)  # fmt: skip
    finally:
        os.close(root)
    assert kept.read_bytes() == b"junk"
    assert (incoming / "junk").exists() is keep_source
    assert os.path.lexists(incoming / "pipe") is keep_source
    note = json.loads(note_path.read_bytes())
    assert (note["type"], note["file"], note["name_removed"]) == ("FIFO", None, not keep_source)
    assert sorted(p.name.endswith(".json") for p in folder.iterdir()) == [False, True, True]


def test_a_sparse_bad_file_is_set_aside_without_copying_its_data(tmp_path: Path) -> None:
    """2 GiB that use no disk stay 2 GiB that use no disk: the inode is linked, not copied
    (a copy would write every byte). Move mode; the name in the incoming folder goes."""
    incoming, folder = tmp_path / "in", tmp_path / "q"
    incoming.mkdir()
    folder.mkdir()
    with (incoming / "sparse").open("wb") as sparse:
        sparse.truncate(2 << 30)
    inode = (incoming / "sparse").stat().st_ino
    quarantine = Quarantine(folder, Store(None))
    root = open_root(incoming)
    try:
        kept = quarantine.put(root, "sparse", shown_as=incoming / "sparse",
                              reason="not-dicom", error="no DICM")  # fmt: skip
    finally:
        os.close(root)
    assert not (incoming / "sparse").exists()
    info = kept.stat()
    assert info.st_size == 2 << 30
    assert info.st_ino == inode
    assert info.st_blocks * 512 < 1 << 20
