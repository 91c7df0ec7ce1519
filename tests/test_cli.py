"""pypx-repack as a real process: one-shot (storescp -xcr), batch, errors."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from .conftest import run_cli, write_dicom
from .dcmtk import storescp, storescu
from .helpers import installed, wait_for


def test_one_shot_event_line_and_cleanup(
    tmp_path: Path, dicom_factory: Callable[..., Path]
) -> None:
    src = dicom_factory("MR.1.2.3")
    result = run_cli(
        "--xcrdir", src.parent, "--xcrfile", src.name, "--datadir", tmp_path / "data",
        "--logdir", tmp_path / "log", "--cleanup", "--log-ndjson",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    event = orjson.loads(line)
    assert event["event"] == "repack.done"
    assert event["level"] == "info"
    assert event["timestamp"].endswith("Z")
    assert event["src"] == str(src)
    assert Path(event["dst"]).exists()
    assert event["size"] == Path(event["dst"]).stat().st_size
    assert event["PatientID"] == "P001"
    assert {"SeriesInstanceUID", "duration_ms"} <= set(event)
    assert not src.exists()


def test_one_shot_failure_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    junk = tmp_path / "MR.junk"
    junk.write_bytes(b"garbage" * 100)
    result = run_cli("--xcrdir", tmp_path, "--xcrfile", junk.name, "--datadir", tmp_path / "d",
                     "--cleanup", "--log-ndjson")  # fmt: skip
    assert result.returncode == 1
    assert junk.exists()
    event = orjson.loads(result.stdout)
    assert event["event"] == "repack.failed"
    assert "DICM" in event["error"]
    assert len(result.stderr.strip().splitlines()) == 1


def test_xcrdirfile_form(tmp_path: Path, dicom_factory: Callable[..., Path]) -> None:
    src = dicom_factory()
    result = run_cli("--xcrdirfile", src, "--datadir", tmp_path / "data")
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "data").rglob("*.dcm"))) == 1


def test_invalid_template_fails_before_touching_files(
    tmp_path: Path, dicom_factory: Callable[..., Path]
) -> None:
    src = dicom_factory()
    result = run_cli("--datadir", tmp_path / "data", "--seriesDirTemplate", "%_pad|x_SeriesNumber",
                     "--cleanup", src)  # fmt: skip
    assert result.returncode == 2
    assert "invalid template" in result.stderr
    assert "hint:" in result.stderr
    assert src.exists()
    assert not (tmp_path / "data").exists()


def test_nothing_to_do_is_a_usage_error(tmp_path: Path) -> None:
    result = run_cli("--datadir", tmp_path / "data")
    assert result.returncode == 2
    assert "hint:" in result.stderr


def test_batch_reports_and_leaves_failures_untouched(
    tmp_path: Path, example_files: list[Path]
) -> None:
    folder = tmp_path / "in" / "nested"
    folder.mkdir(parents=True)
    for path in example_files[:5]:
        shutil.copy(path, folder / path.stem)  # any name, no .dcm
    (folder / "README.txt").write_text("not dicom")
    truncated = folder / "cut"
    truncated.write_bytes(example_files[5].read_bytes()[:5000])
    result = run_cli("--datadir", tmp_path / "data", "--logdir", tmp_path / "log", "--cleanup",
                     tmp_path / "in")  # fmt: skip
    assert result.returncode == 1
    assert "5 repacked, 1 skipped (not DICOM or not a regular file), 1 failed" in result.stderr
    assert truncated.read_bytes() == example_files[5].read_bytes()[:5000]
    assert (folder / "README.txt").exists()
    assert len(list((tmp_path / "data").rglob("*.dcm"))) == 5
    assert sorted(p.name for p in folder.iterdir()) == ["README.txt", "cut"]


@pytest.mark.dcmtk
@pytest.mark.slow
def test_drop_in_for_rx_repack_under_storescp_xcr(
    tmp_path: Path, example_files: list[Path]
) -> None:
    """The storescp command line rx-repack users have, with pypx-repack swapped in."""
    exe = installed("pypx-repack")
    data, log, events = tmp_path / "data", tmp_path / "log", tmp_path / "events.ndjson"
    handler = (
        f"{exe} --xcrdir #p --xcrfile #f --datadir {data} --logdir {log} --cleanup"
        f" --log-ndjson >> {events}"
    )
    files = example_files[:48]
    with storescp(tmp_path / "incoming", "-xcr", handler) as port:
        storescu(port, files)
        wait_for(
            lambda: (
                len(list(data.rglob("*.dcm"))) == len(files)
                and events.exists()
                and len(events.read_text().splitlines()) == len(files)
            ),
            120,
            "every -xcr handler to finish",
        )
    lines = [orjson.loads(line) for line in events.read_text().splitlines()]
    assert {e["event"] for e in lines} == {"repack.done"}
    assert len(list((log / "seriesData").glob("*-img/*.json"))) == len(files)
    assert list((tmp_path / "incoming").iterdir()) == []


@pytest.mark.parametrize(
    ("xcrdir", "xcrfile"),
    [("F/linkdir", "x.dcm"), ("F", "linkdir/x.dcm")],
    ids=["the-named-folder-a-link", "a-folder-below-it-a-link"],
)
def test_cleanup_never_moves_a_file_out_of_a_linked_folder(
    tmp_path: Path, xcrdir: str, xcrfile: str
) -> None:
    """``-p F/linkdir -f x.dcm --cleanup`` with ``F/linkdir`` a link to an outside folder:
    its file is not moved into the data tree (without --cleanup it is only copied)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    write_dicom(outside / "x.dcm")
    (tmp_path / "F").mkdir()
    (tmp_path / "F" / "linkdir").symlink_to(outside)
    before = (outside / "x.dcm").read_bytes()
    result = run_cli("--xcrdir", tmp_path / xcrdir, "--xcrfile", xcrfile, "--cleanup",
                     "--datadir", tmp_path / "data", "--logdir", tmp_path / "log")  # fmt: skip
    assert result.returncode != 0, result.stderr
    assert (outside / "x.dcm").read_bytes() == before
    assert list(tmp_path.glob("data/**/*.dcm")) == []
    copied = run_cli("--xcrdir", tmp_path / xcrdir, "--xcrfile", xcrfile,
                     "--datadir", tmp_path / "data", "--logdir", tmp_path / "log")  # fmt: skip
    assert copied.returncode == 0, copied.stderr
    assert (outside / "x.dcm").exists()
