"""Bad input: not DICOM, truncated, missing UIDs; clear errors, nothing moved."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread

from repack import (
    InvalidInstanceError,
    MissingRequiredTagError,
    NotDicomError,
    TruncatedFileError,
    read_instance,
    repack_file,
)
from repack.plumbing import SourceVanishedError

from .conftest import make_dataset, write_dicom


def test_example_instance_reads(example_files: list[Path]) -> None:
    instance = read_instance(example_files[0])
    assert instance.size == example_files[0].stat().st_size
    assert instance.px_value("PatientID") == "1449c1d"


@pytest.mark.parametrize("content", [b"", b"hello", b"\x00" * 200, b"x" * 128 + b"DICM"])
def test_not_dicom(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk"
    path.write_bytes(content)
    with pytest.raises((NotDicomError, TruncatedFileError)):
        read_instance(path)


def test_every_truncation_of_a_real_instance_is_rejected(
    tmp_path: Path, example_files: list[Path]
) -> None:
    data = example_files[0].read_bytes()
    path = tmp_path / "cut"
    rows = dcmread(example_files[0]).get_item(0x00280010)
    rows_starts_at = rows.value_tell - 8  # tag, VR and a 2-byte length: explicit VR
    # Every byte of the header, then through the pixel data.
    cuts = [*range(0, 3000), *range(3000, len(data), 1009), len(data) - 1]
    accepted = []
    for cut in cuts:
        path.write_bytes(data[:cut])
        try:
            instance = read_instance(path)
        except InvalidInstanceError:
            continue
        # A cut exactly between two elements before the Image Pixel module is a
        # complete dataset, as an image storage instance sent without pixels is
        # (px-repack repacks those): it passes only as such, and says so.
        assert cut <= rows_starts_at, cut
        assert instance.image_without_pixels, cut
        accepted.append(cut)
    # Only element boundaries: a handful among thousands of cuts.
    assert len(accepted) < 40
    path.write_bytes(data)
    assert not read_instance(path).image_without_pixels


def test_truncated_inside_pixel_data_has_a_clear_reason(
    tmp_path: Path, example_files: list[Path]
) -> None:
    data = example_files[0].read_bytes()
    path = tmp_path / "cut"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TruncatedFileError, match="incomplete file"):
        read_instance(path)


def test_trailing_garbage_is_incomplete(tmp_path: Path, example_files: list[Path]) -> None:
    path = tmp_path / "long"
    path.write_bytes(example_files[0].read_bytes() + b"\x00\x01")
    with pytest.raises(TruncatedFileError, match="trailing"):
        read_instance(path)


@pytest.mark.parametrize("keyword", ["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"])
def test_missing_required_uid(dicom_factory: Callable[..., Path], keyword: str) -> None:
    path = dicom_factory(**{keyword: None})
    with pytest.raises(MissingRequiredTagError, match=keyword):
        read_instance(path)


def test_empty_required_uid(dicom_factory: Callable[..., Path]) -> None:
    path = dicom_factory(SeriesInstanceUID="")
    with pytest.raises(MissingRequiredTagError):
        read_instance(path)


def test_bad_files_are_left_where_they_were(
    tmp_path: Path, dicom_factory: Callable[..., Path]
) -> None:
    junk = tmp_path / "incoming" / "junk"
    junk.parent.mkdir(parents=True, exist_ok=True)
    junk.write_bytes(b"not dicom at all")
    no_uid = dicom_factory(StudyInstanceUID=None)
    for path in (junk, no_uid):
        before = path.read_bytes()
        with pytest.raises(InvalidInstanceError):
            repack_file(path, datadir=tmp_path / "data", logdir=tmp_path / "log", move=True)
        assert path.read_bytes() == before
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").rglob("*.dcm"))


def test_vanished_source(tmp_path: Path) -> None:
    with pytest.raises(SourceVanishedError):
        read_instance(tmp_path / "gone")


def test_repeating_groups_are_in_the_dicom_table_as_px_wrote_them(tmp_path: Path) -> None:
    """Curves (50xx) and overlays (60xx), several groups of each: each keyword once,
    ``'no attribute'`` (px's pydicom 2.4 lists them in ``dir()`` but cannot read them)."""
    ds = make_dataset()
    for group in (0x5000, 0x5002):
        ds.add_new((group << 16) | 0x0005, "US", 1)  # CurveDimensions
        ds.add_new((group << 16) | 0x3000, "OW", b"\0\1")  # CurveData
    for group in (0x6000, 0x601E):
        ds.add_new((group << 16) | 0x0010, "US", 4)  # OverlayRows
        ds.add_new((group << 16) | 0x3000, "OW", b"\0" * 8)  # OverlayData
    table = read_instance(write_dicom(tmp_path / "curves.dcm", ds)).dicom_dump()
    for keyword in ("CurveDimensions", "CurveData", "OverlayRows", "OverlayData"):
        assert table[keyword] == "no attribute"
    assert table["PatientID"] == ds.PatientID
