"""Parity with the real px-repack 3.10.16 on the SAG-anon set (get_examples.sh)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest

from repack import read_instance

from .conftest import run_cli

pytestmark = pytest.mark.parity
EXAMPLES_CWD = "px-repack-output"  # px ran in the examples folder with relative dirs


def load(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def tree(root: Path) -> dict[str, Path]:
    return {str(p.relative_to(root)): p for p in root.rglob("*") if p.is_file()}


def px_relative(location: str, px_output: Path) -> str:
    """A px-repack location (relative to where it ran) relative to its data dir."""
    return os.path.relpath(px_output.parent / location, px_output / "data")


def values(table: dict[str, dict[str, str]]) -> dict[str, str]:
    return {k: v["value"] for k, v in table.items()}


@pytest.fixture(scope="module")
def ours_px_layout(tmp_path_factory: pytest.TempPathFactory, example_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("ours")
    result = run_cli(
        "--layout",
        "px-repack-3.10",
        "--datadir",
        out / "data",
        "--logdir",
        out / "log",
        example_dir,
    )
    assert result.returncode == 0, result.stderr
    return out


def test_data_tree_is_identical(ours_px_layout: Path, px_output: Path) -> None:
    theirs = tree(px_output / "data")
    ours = tree(ours_px_layout / "data")
    assert len(theirs) == 192
    assert sorted(ours) == sorted(theirs)
    for relative, path in theirs.items():
        assert ours[relative].read_bytes() == path.read_bytes(), relative


def test_every_px_log_file_has_the_same_content(
    ours_px_layout: Path, px_output: Path, example_dir: Path
) -> None:
    theirs = {k: p for k, p in tree(px_output / "log").items() if k.endswith(".json")}
    ours = {k: p for k, p in tree(ours_px_layout / "log").items() if not k.startswith(".locks")}
    assert len(theirs) == 197
    assert sorted(ours) == sorted(theirs)
    extra = {p.name for p in (ours_px_layout / "log").iterdir()} - {
        p.name for p in (px_output / "log").iterdir()
    }
    assert extra == {".locks"}  # the lock folder is the only entry px does not have
    for relative, path in theirs.items():
        assert ours[relative].read_bytes().isascii(), relative  # \uXXXX, as px's json.dump
        px_doc, our_doc = load(path), load(ours[relative])
        if "-img/" in relative:
            compare_image(px_doc, our_doc, px_output, ours_px_layout)
        elif "-series/" in relative:
            compare_study_series(px_doc, our_doc, px_output, ours_px_layout, example_dir)
        else:
            assert our_doc == px_doc, relative


def compare_image(px_doc: Any, our_doc: Any, px_output: Path, ours: Path) -> None:
    ((uid, px_record),) = px_doc.items()
    our_record = our_doc[uid]
    name = px_record["outputFile"]
    px_stat, our_stat = px_record["imageObj"][name], our_record["imageObj"][name]
    assert list(our_stat) == list(px_stat)
    for key in ("size", "mode"):
        assert our_stat[key] == px_stat[key], key
    assert os.path.relpath(our_stat["FSlocation"], ours / "data") == px_relative(
        px_stat["FSlocation"], px_output
    )
    assert os.path.isabs(our_stat["FSlocation"])
    strip = {k: v for k, v in px_record.items() if k != "imageObj"}
    assert {k: v for k, v in our_record.items() if k != "imageObj"} == strip


def compare_study_series(
    px_doc: Any, our_doc: Any, px_output: Path, ours: Path, example_dir: Path
) -> None:
    ((study, px_record),) = px_doc.items()
    our_record = our_doc[study]
    assert our_record["SeriesInstanceUID"] == px_record["SeriesInstanceUID"]
    assert os.path.relpath(our_record["SeriesBaseDir"], ours / "data") == px_relative(
        px_record["SeriesBaseDir"], px_output
    )
    # Each wrote the dump of whichever instance arrived first: compare px's
    # with ours for that same instance, and ours with what we read of ours.
    for record in (px_record, our_record):
        sop = record["DICOM"]["SOPInstanceUID"]["value"]
        (source,) = example_dir.glob(f"*-{sop}.dcm")
        expected = read_instance(source).dicom_dump()
        assert values(record["DICOM"]) == expected  # sequences in pydicom 2.4's spelling
        assert all(v["label"] == k for k, v in record["DICOM"].items())
    assert sorted(our_record["DICOM"]) == sorted(px_record["DICOM"])


def test_default_layout_differs_only_by_the_series_hash(
    tmp_path: Path, example_dir: Path, px_output: Path
) -> None:
    result = run_cli("--datadir", tmp_path / "data", "--logdir", tmp_path / "log", example_dir)
    assert result.returncode == 0, result.stderr
    expected = {
        k.replace("/00005-SAG_MPRAGE_220_FOV/", "/00005-SAG_MPRAGE_220_FOV-a27cf06/")
        for k in tree(px_output / "data")
    }
    assert set(tree(tmp_path / "data")) == expected
