"""The fast header reader gives exactly what the full pydicom read gives."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
)

from repack import InvalidInstanceError, Repacker, read_instance
from repack._header import read_header

from .conftest import make_dataset
from .malformed import base_file, element_offsets, fuzz_inputs

KEYWORDS = Repacker("/unused")._keywords  # what the service asks for


def assert_same(path: Path) -> None:
    fast, full = read_instance(path, KEYWORDS), read_instance(path)
    assert fast.wanted is not None, "the fast path was not taken"
    for keyword in KEYWORDS:
        assert fast.text(keyword) == full.text(keyword), keyword
        assert fast.px_value(keyword) == full.px_value(keyword), keyword
    assert fast.px_value("ImageType") == full.px_value("ImageType")  # read lazily
    assert fast.dicom_dump() == full.dicom_dump()


def test_real_instances(example_files: list[Path]) -> None:
    for path in example_files[::8]:
        assert_same(path)


def _write(path: Path, ds: Dataset, syntax: str) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    ds.file_meta = meta
    ds.save_as(path, enforce_file_format=True)
    return path


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    syntax=st.sampled_from([ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
    charset=st.sampled_from(["ISO_IR 100", "ISO_IR 192", "ISO_IR 144", "GB18030"]),
    name=st.text(alphabet="abcXYZ^ 017", max_size=30),
    description=st.text(alphabet="ab -/.é", max_size=40),
    nested=st.integers(0, 3),
)
def test_generated_instances(
    tmp_path: Path, *, syntax: str, charset: str, name: str, description: str, nested: int
) -> None:
    ds = make_dataset(SpecificCharacterSet=charset, PatientName=name or None,
                      SeriesDescription=description or None)  # fmt: skip
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3"
    for _ in range(nested):
        wrapper = Dataset()
        wrapper.ReferencedImageSequence = Sequence([item])
        item = wrapper
    ds.ReferencedStudySequence = Sequence([item, item])
    assert_same(_write(tmp_path / f"x-{os.getpid()}.dcm", ds, syntax))


@pytest.mark.parametrize("syntax", [ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian])
def test_other_encodings_fall_back_to_the_full_read(tmp_path: Path, syntax: str) -> None:
    path = _write(tmp_path / "x.dcm", make_dataset(), syntax)
    instance = read_instance(path, KEYWORDS)
    assert instance.wanted is None
    assert instance.px_value("PatientID") == "P001"


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns and reads on, in production
def test_never_accepts_what_the_full_read_rejects(tmp_path: Path) -> None:
    base = base_file(tmp_path)
    inputs = fuzz_inputs(base, element_offsets(base, tmp_path), random.Random(11))[:6000]
    path = tmp_path / "fuzz"
    accepted = rejected = 0
    reasons: set[str] = set()
    for data in inputs:
        if data[128:132] != b"DICM":
            continue  # read_instance checks the marker before the fast path
        path.write_bytes(data)
        try:
            with open(path, "rb") as handle:
                partial = read_header(handle.fileno(), len(data), frozenset({0x00100020}))
        except InvalidInstanceError as verdict:
            # Its own verdicts (a value past the end) are the full read's too.
            rejected += 1
            reasons.add(verdict.reason)
            with pytest.raises(InvalidInstanceError):
                read_instance(path)
            continue
        if partial is None:
            continue
        accepted += 1
        try:
            read_instance(path)
        except InvalidInstanceError as error:
            if error.reason != "missing-required-tag":
                pytest.fail(f"fast path accepted a file the full read calls {error.reason}")
    assert accepted > 100
    assert rejected > 100
    assert reasons == {"truncated"}


@pytest.mark.parametrize("window", [13, 64, 509])
def test_the_same_with_any_read_window(
    tmp_path: Path, example_files: list[Path], monkeypatch: pytest.MonkeyPatch, window: int
) -> None:
    """Element headers and values that straddle the read window's edge read the same."""
    monkeypatch.setattr("repack._header._WINDOW", window)
    for path in example_files[::48]:
        assert_same(path)
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3"
    ds = make_dataset(ReferencedStudySequence=Sequence([item, item]))
    for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        assert_same(_write(tmp_path / f"{window}.dcm", ds, syntax))
    base = base_file(tmp_path)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(base[:-7])
    with open(truncated, "rb") as handle, pytest.raises(InvalidInstanceError) as verdict:
        read_header(handle.fileno(), truncated.stat().st_size, frozenset({0x00100020}))
    assert verdict.value.reason == "truncated"
