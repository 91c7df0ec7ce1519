"""px's value rules for the logs and rx's for paths, on datasets built in memory."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from repack import Instance, read_instance
from repack.plumbing import NOT_DEFINED

from .conftest import make_dataset, write_dicom


def test_px_values_absent_empty_and_present() -> None:
    ds = make_dataset(PatientAge=None)
    ds.PerformedStationAETitle = ""
    instance = Instance(ds)
    assert instance.px_value("PatientAge") == NOT_DEFINED == "Not defined"
    assert instance.px_value("PerformedStationAETitle") == ""
    assert instance.px_value("PatientID") == "P001"
    assert instance.px_value("PatientName") == "Doe^Jane"


def test_series_number_is_a_string_and_empty_values_are_as_px_wrote_them(
    tmp_path: Path,
) -> None:
    """px wrote str() of pydicom 2.4's value: an empty number is None there."""
    ds = make_dataset()
    ds.AcquisitionNumber = None
    ds.EchoTime = ""
    ds.StudyDescription = ""
    ds.add_new(0x00081140, "SQ", [])  # ReferencedImageSequence, empty
    instance = read_instance(write_dicom(tmp_path / "empty", ds))
    assert instance.px_value("SeriesNumber") == "3"
    assert instance.px_value("AcquisitionNumber") == "None"
    assert instance.px_value("EchoTime") == "None"
    assert instance.px_value("StudyDescription") == ""
    assert instance.px_value("ReferencedImageSequence") == "[]"
    assert instance.text("AcquisitionNumber") is None


def test_multi_valued() -> None:
    ds = make_dataset()
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
    instance = Instance(ds)
    assert instance.px_value("ImageType") == "['ORIGINAL', 'PRIMARY', 'M']"
    assert instance.text("ImageType") == "ORIGINAL\\PRIMARY\\M"


def test_sequences_are_dumped_inside_brackets() -> None:
    item = Dataset()
    item.ScheduledProcedureStepDescription = "MR Brain"
    ds = make_dataset()
    ds.RequestAttributesSequence = Sequence([item])
    value = Instance(ds).dicom_dump()["RequestAttributesSequence"]
    assert value.startswith(
        "[(0040, 0007) Scheduled Procedure Step Descriptio LO: 'MR Brain'"
    )  # px's pydicom 2.4 spelling
    assert value.endswith("]")


def test_bytes_values() -> None:
    ds = make_dataset()
    ds.add_new(0x00091001, "LO", "private")  # private: never in the dump
    ds.add_new(0x00189089, "FD", [0.0, 1.0, 0.0])
    ds.add_new(0x00420011, "OB", b"\x01\x02")
    table = Instance(ds).dicom_dump()
    assert table["EncapsulatedDocument"] == "b'\\x01\\x02'"
    assert "PixelData" not in table
    assert all(not k.startswith("0009") for k in table)
    assert list(table) == sorted(table)


def test_path_text_trims_spaces_and_nul() -> None:
    ds = make_dataset(PatientName=" Doe^Jane \x00", StudyDescription="   ")
    instance = Instance(ds)
    assert instance.text("PatientName") == "Doe^Jane"
    assert instance.text("StudyDescription") is None
    assert instance.text("OperatorsName") is None


@pytest.mark.parametrize(
    ("charset", "raw", "expected"),
    [
        ("ISO_IR 100", "Müller^Jürgen".encode("latin-1"), "Müller^Jürgen"),
        ("ISO_IR 192", "Ødegård^Åse".encode(), "Ødegård^Åse"),
        ("ISO_IR 144", "Иванов^Иван".encode("iso8859-5"), "Иванов^Иван"),
        ("ISO_IR 126", "Παπαδόπουλος".encode("iso8859-7"), "Παπαδόπουλος"),
        ("ISO_IR 127", "قباني^لنزار".encode("iso8859-6"), "قباني^لنزار"),
        ("GB18030", "王^小东".encode("gb18030"), "王^小东"),
    ],
)
def test_non_ascii_decoded_with_specific_character_set(
    tmp_path: Path, charset: str, raw: bytes, expected: str
) -> None:
    ds = make_dataset(SpecificCharacterSet=charset)
    ds.add_new(0x00100010, "PN", raw)
    instance = read_instance(write_dicom(tmp_path / "x.dcm", ds))
    assert instance.px_value("PatientName") == expected
    assert instance.text("PatientName") == expected


def test_undecodable_bytes_do_not_crash(tmp_path: Path) -> None:
    ds = make_dataset(SpecificCharacterSet="ISO_IR 192")
    ds.add_new(0x00100010, "PN", b"\xff\xfe\xfa bad")
    instance = read_instance(write_dicom(tmp_path / "x.dcm", ds))
    assert isinstance(instance.px_value("PatientName"), str)
    assert isinstance(instance.text("PatientName"), str | None)
