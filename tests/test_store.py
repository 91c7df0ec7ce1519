"""repack._store and repack._temps: every file-system effect of a repack, on a real disk."""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from pathlib import Path

import orjson
import pytest

from repack import StorageError
from repack._temps import is_stale_temp, sweep_stale_temps, temp_name
from repack.plumbing import LOCK_DIR, TEMP_PREFIX, Store, open_path, probe_writable


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_new_file_is_published_whole_and_no_temporary_name_is_left(tmp_path: Path) -> None:
    store = Store(tmp_path)
    target = tmp_path / "a" / "b" / "x.json"
    store.write_atomic(target, b"one")
    store.write_atomic(target, b"two")  # a replacement goes through a temporary name
    assert target.read_bytes() == b"two"
    assert names(target.parent) == ["x.json"]


def test_create_once_keeps_the_first_writers_content(tmp_path: Path) -> None:
    store = Store(tmp_path)
    target = tmp_path / "meta.json"
    assert store.create_once(target, b"first") is True
    assert store.create_once(target, b"second") is False
    assert target.read_bytes() == b"first"


def test_locked_updates_from_many_threads_lose_nothing(tmp_path: Path) -> None:
    target = tmp_path / "patient.json"

    def add(value: int) -> None:
        def update(current: dict[str, list[int]] | None) -> dict[str, list[int]]:
            document = current or {"values": []}
            document["values"].append(value)
            return document

        Store(tmp_path).update_json(target, update)  # a store each: as separate processes

    threads = [threading.Thread(target=add, args=(n,)) for n in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(orjson.loads(target.read_bytes())["values"]) == list(range(40))
    assert (tmp_path / LOCK_DIR).is_dir()


@pytest.mark.usefixtures("leases")
def test_a_linked_source_stays_one_inode_and_a_shared_one_is_copied_without_exec_bits(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path, fsync=False)
    source_path = tmp_path / "in.dcm"
    source_path.write_bytes(b"DICM" * 10)
    with open_path(str(source_path)) as source:
        source.others()
        placed = store.place(source, tmp_path / "out" / "linked.dcm", link=True)
    assert placed.st_ino == source_path.stat().st_ino
    other = tmp_path / "other.dcm"
    other.write_bytes(b"DICM" * 10)
    os.chmod(other, 0o4755)  # noqa: S103 - a set-user-ID file the copy must not keep
    os.link(other, tmp_path / "second-name")  # another name: never linked into the tree
    with open_path(str(other)) as source:
        source.others()
        placed = store.place(source, tmp_path / "out" / "copied.dcm", link=True)
    assert placed.st_ino != other.stat().st_ino
    mode = stat.S_IMODE((tmp_path / "out" / "copied.dcm").stat().st_mode)
    assert mode & (stat.S_ISUID | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH) == 0


def test_a_folder_removed_under_the_store_is_made_again_and_the_generation_moves(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path)
    target = tmp_path / "series" / "x.json"
    store.write_atomic(target, b"1")
    generation = store.generation
    for child in target.parent.iterdir():
        child.unlink()
    target.parent.rmdir()
    store.write_atomic(target, b"2")
    assert target.read_bytes() == b"2"
    assert store.generation == generation + 1


def test_an_os_error_becomes_a_storage_error_with_its_errno(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(StorageError) as raised:
        Store(tmp_path).write_atomic(blocker / "x.json", b"{}")
    assert raised.value.errno == errno.EEXIST  # mkdir where a file is
    assert "not-a-folder" in str(raised.value)


# -- temporary names ------------------------------------------------------------


def test_temporary_names_say_whose_they_are_and_only_dead_writers_are_swept(
    tmp_path: Path,
) -> None:
    ours = temp_name(tmp_path)
    assert ours.name.startswith(TEMP_PREFIX)
    ours.write_bytes(b"x")
    assert not is_stale_temp(ours.name, time.time())  # this process is alive
    dead = tmp_path / ours.name.replace(f".{os.getpid()}.", ".999999999.")
    dead.write_bytes(b"x")
    foreign_old = tmp_path / f"{TEMP_PREFIX}elsewhere.12.00ff"
    foreign_old.write_bytes(b"x")
    os.utime(foreign_old, (0, 0))
    foreign_new = tmp_path / f"{TEMP_PREFIX}elsewhere.13.00ff"
    foreign_new.write_bytes(b"x")
    assert sweep_stale_temps(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ours.name, foreign_new.name])


def test_the_probe_touches_no_name_and_refuses_a_linked_folder(tmp_path: Path) -> None:
    folder = tmp_path / "incoming"
    folder.mkdir()
    probe_writable(folder, follow_links=False)
    assert names(folder) == []
    link = tmp_path / "link"
    link.symlink_to(folder)
    probe_writable(link)  # followed where that is asked for
    with pytest.raises(OSError) as raised:
        probe_writable(link, follow_links=False)
    assert raised.value.errno in (errno.ELOOP, errno.ENOTDIR)
