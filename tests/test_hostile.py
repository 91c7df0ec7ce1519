"""Hostile tag values and malformed files, through the service's entry point.

The service calls :meth:`repack.Repacker.repack` for every candidate and
quarantines on :class:`repack.InvalidInstanceError`; anything else escaping
it would be a crash. These tests feed it what a hostile or broken sender can.
"""

from __future__ import annotations

import os
import random
import resource
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.charset import python_encoding
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from repack import InvalidInstanceError, Repacked, Repacker
from repack._sanitize import MAX_COMPONENT_BYTES

from .conftest import make_dataset
from .malformed import base_file, element_offsets, fuzz_inputs

# Hostile values make pydicom complain (it warns about each invalid value);
# what counts here is that nothing crashes and nothing escapes.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

HOSTILE_TEXT = st.one_of(
    st.sampled_from(["", " ", ".", "..", "../..", "/", "/etc/passwd", "a/../../b", "\x00",
                     "..\x00..", "\\..\\..", "x" * 5000, "~root", "$(reboot)", "\x1b[2J"]),
    st.text(max_size=400),
    st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=50),
)  # fmt: skip
RAW_BYTES = st.binary(max_size=300)
TEXT_TAGS = {
    0x00100020: "LO",  # PatientID
    0x00100010: "PN",  # PatientName
    0x00100030: "LO",  # PatientBirthDate (a hostile sender ignores the VR)
    0x00081030: "LO",  # StudyDescription
    0x00080050: "SH",  # AccessionNumber
    0x0008103E: "LO",  # SeriesDescription
    0x00200011: "LO",  # SeriesNumber
    0x00200013: "LO",  # InstanceNumber
}


def assert_confined(root: Path, outcome: Repacked | None) -> None:
    for folder, folders, files in os.walk(root):
        for name in folders + files:
            assert len(name.encode("utf-8", "surrogateescape")) <= MAX_COMPONENT_BYTES
            path = Path(folder, name)
            assert os.path.realpath(path).startswith(str(root) + os.sep)
    if outcome is not None:
        assert os.path.realpath(outcome.dst).startswith(str(root / "data") + os.sep)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    charset=st.sampled_from(sorted(python_encoding)),
    values=st.dictionaries(st.sampled_from(sorted(TEXT_TAGS)), st.one_of(HOSTILE_TEXT, RAW_BYTES)),
    uids=st.dictionaries(
        st.sampled_from(["SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]),
        st.one_of(HOSTILE_TEXT, st.just("1.2.3")),
    ),
)
def test_hostile_values_never_escape_and_never_crash(
    tmp_path_factory: pytest.TempPathFactory,
    charset: str,
    values: dict[int, str | bytes],
    uids: dict[str, str],
) -> None:
    root = tmp_path_factory.mktemp("hostile")
    ds = make_dataset(SpecificCharacterSet=charset or None)
    for tag, value in values.items():
        ds.add_new(tag, TEXT_TAGS[tag], value if isinstance(value, bytes) else value.encode(
            "utf-8", "surrogateescape"))  # fmt: skip
    for keyword, value in uids.items():
        raw = value.encode("utf-8", "surrogateescape").decode("latin-1")  # any bytes at all
        ds.add_new(ds.data_element(keyword).tag, "UI", raw)
    source = root / "incoming" / "MR.hostile"
    source.parent.mkdir()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = "1.2.3"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(source, enforce_file_format=True)
    outcome = None
    try:
        outcome = Repacker(root / "data", root / "log", move=True).repack(source)
    except InvalidInstanceError:
        assert source.exists()  # left for the quarantine, never lost
    assert_confined(root, outcome)


# -- malformed files --------------------------------------------------------


@pytest.mark.slow
def test_ten_thousand_malformed_files(tmp_path: Path) -> None:
    base = base_file(tmp_path)
    inputs = fuzz_inputs(base, element_offsets(base, tmp_path), random.Random(5))
    assert len(inputs) >= 10_000
    repacker = Repacker(tmp_path / "data", tmp_path / "log", move=True)
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    slowest = 0.0
    outcomes = {"repacked": 0, "invalid": 0}
    for index, data in enumerate(inputs):
        source = incoming / f"MR.{index}"
        source.write_bytes(data)
        started = time.perf_counter()
        failure: InvalidInstanceError | None = None
        try:
            repacker.repack(source)
        except InvalidInstanceError as error:
            failure = error
        if failure is None:
            assert not source.exists()
            outcomes["repacked"] += 1
        else:
            assert failure.reason in {"not-dicom", "truncated", "malformed", "missing-required-tag"}
            assert str(failure)
            assert source.read_bytes() == data  # left intact for the quarantine
            source.unlink()
            outcomes["invalid"] += 1
        slowest = max(slowest, time.perf_counter() - started)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert slowest < 5.0, f"one input took {slowest:.1f}s"
    assert grown_mb < 300, f"memory grew by {grown_mb:.0f} MB"
    assert outcomes["invalid"] > 9000
    assert outcomes["repacked"] > 0
    assert_confined(tmp_path, None)
