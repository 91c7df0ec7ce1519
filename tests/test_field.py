"""Defects found in the field: deployments, a hostile local user, pypx's readers during ingest.

Each test here reproduces one defect of the field-hardening issue against a
real service (or the real ``pypx-repack``) and fails on the code before its
fix.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from .conftest import run_cli, write_dicom
from .dcmtk import free_port, wait_for
from .helpers import get, small_filesystem
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


# -- probes: a name planted where the service proves a folder writable ------------

#: The service as PID 1 of a PID namespace of its own, as in every container.
AS_PID_1 = ("unshare", "--pid", "--fork", "--mount-proc", "--kill-child")
FOLDERS = ("incoming", "data", "log", "quarantine")


def _plant(tmp_path: Path, kind: str, outside: Path) -> list[Path]:
    """Plant, in each of the four folders, what a predictable probe name would open."""
    planted = []
    for name in FOLDERS:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        for probe in (".pypx-tmp-probe-1", ".pypx-tmp-probe-2"):
            target = folder / probe
            if kind == "link":
                target.symlink_to(outside)
            elif kind == "fifo":
                os.mkfifo(target)
            else:
                target.mkdir()
            planted.append(target)
    return planted


@pytest.mark.parametrize("kind", ["link", "fifo", "folder"])
def test_names_planted_at_the_start_up_probe_are_never_opened(tmp_path: Path, kind: str) -> None:
    """A link is not followed (the outside file keeps its bytes), a FIFO cannot hang the
    start, a folder cannot make the service refuse to start."""
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious\n")
    planted = _plant(tmp_path, kind, outside)
    with listener(tmp_path, prefix=AS_PID_1) as running:
        assert running.of("watcher.started")[0]["pid"] == 1
        running.kill()
    assert outside.read_bytes() == b"precious\n"
    assert all(os.path.lexists(path) for path in planted)


def test_readiness_never_writes_through_an_incoming_folder_replaced_by_a_link(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    port = free_port()
    args = ("--metrics-port", str(port), "--metrics-host", "127.0.0.1")
    with listener(tmp_path, *args) as running:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: get(base + "/readyz")[0] == 200, 20, "/readyz")
        running.incoming.rename(tmp_path / "incoming.old")
        running.incoming.symlink_to(outside)
        before = os.stat(outside).st_mtime_ns
        for _ in range(5):
            status, body = get(base + "/readyz")
            assert status == 503
            assert "symbolic link" in body or "not a folder" in body
        # A name made and removed in a folder changes its mtime.
        assert os.stat(outside).st_mtime_ns == before
        assert list(outside.iterdir()) == []
        assert running.stop() == 0


# -- pypx-repack and a link to an outside folder ------------------------------------


def test_pypx_repack_cleanup_refuses_a_link_to_a_folder_named_on_its_command_line(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "outside"
    files = [write_dicom(outside / f"MR.{n}") for n in range(3)]
    before = {path: path.read_bytes() for path in files}
    given = tmp_path / "given"
    given.mkdir()
    (given / "linkdir").symlink_to(outside)
    data = tmp_path / "data"
    refused = run_cli("--datadir", data, "--cleanup", given / "linkdir")
    assert refused.returncode == 2
    assert "symbolic link to a folder" in refused.stderr
    assert "hint:" in refused.stderr
    assert {path: path.read_bytes() for path in files} == before
    assert not data.exists() or list(data.rglob("*.dcm")) == []
    # Without --cleanup the link is followed for reading only: copies, the originals stay.
    copied = run_cli("--datadir", data, given / "linkdir")
    assert copied.returncode == 0, copied.stderr
    assert len(list(data.rglob("*.dcm"))) == 3
    assert {path: path.read_bytes() for path in files} == before
