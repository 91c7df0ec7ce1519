"""repack_file / Repacker: the data tree, the six log files, move and copy."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from repack import Layout, Repacker, repack_file
from repack.plumbing import TEMP_PREFIX

from .conftest import make_dataset, write_dicom


def load(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_one_instance_writes_tree_and_six_logs(
    tmp_path: Path, dicom_factory: Callable[..., Path]
) -> None:
    ds = make_dataset()
    src = dicom_factory(ds=ds)
    outcome = repack_file(src, datadir=tmp_path / "data", logdir=tmp_path / "log")
    series_hash = outcome.series_dir.name.rsplit("-", 1)[1]
    assert outcome.dst == (
        tmp_path
        / "data"
        / "P001-Doe_Jane-20000101"
        / "Brain-ACC1-20240102"
        / f"00003-T1_axial-{series_hash}"
        / f"0007-{ds.SOPInstanceUID}.dcm"
    )
    assert outcome.dst.read_bytes() == src.read_bytes()
    assert src.exists()  # copy mode by default
    log = tmp_path / "log"
    study, series = ds.StudyInstanceUID, ds.SeriesInstanceUID
    patient = load(log / "patientData" / "P001.json")
    assert patient == {
        "P001": {
            "PatientID": "P001",
            "PatientName": "Doe^Jane",
            "PatientAge": "024Y",
            "PatientSex": "F",
            "PatientBirthDate": "20000101",
            "StudyList": [study],
        }
    }
    assert load(log / "studyData" / f"{study}-meta.json") == {
        study: {
            "PatientID": "P001",
            "StudyDescription": "Brain",
            "StudyDate": "20240102",
            "StudyInstanceUID": study,
            "PerformedStationAETitle": "Not defined",
        }
    }
    series_fields = {
        "PatientID": "P001",
        "StudyInstanceUID": study,
        "SeriesInstanceUID": series,
        "SeriesDescription": "T1 axial",
        "SeriesNumber": "3",
        "SeriesDate": "20240102",
        "Modality": "MR",
    }
    assert load(log / "seriesData" / f"{series}-meta.json") == {series: series_fields}
    assert load(log / "seriesData" / f"{series}-pack.json") == {"seriesPack": True}
    study_series = load(log / "studyData" / f"{study}-series" / f"{series}-meta.json")[study]
    assert study_series["SeriesInstanceUID"] == series
    assert study_series["SeriesBaseDir"] == str(outcome.series_dir)
    assert study_series["DICOM"]["Modality"] == {"value": "MR", "label": "Modality"}
    image_name = outcome.dst.name
    image = load(log / "seriesData" / f"{series}-img" / f"{image_name}.json")[series]
    assert {k: image[k] for k in series_fields} == series_fields
    assert image["outputFile"] == image_name
    record = image["imageObj"][image_name]
    assert list(record) == [
        "atime", "blksize", "blocks", "ctime", "dev", "gid", "ino",
        "mode", "mtime", "nlink", "rdev", "size", "uid", "FSlocation",
    ]  # fmt: skip
    assert record["size"] == outcome.dst.stat().st_size
    assert record["FSlocation"] == str(outcome.dst)
    assert os.path.isabs(record["FSlocation"])


def test_relative_dirs_are_stored_absolute(
    tmp_path: Path, dicom_factory: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    outcome = repack_file(dicom_factory(), datadir="data", logdir="log")
    assert outcome.dst.is_absolute()
    assert outcome.dst.is_relative_to(tmp_path / "data")


def test_studies_accumulate_and_patient_fields_are_the_first_writers(
    tmp_path: Path, dicom_factory: Callable[..., Path]
) -> None:
    repacker = Repacker(tmp_path / "data", tmp_path / "log")
    studies = []
    for index in range(3):
        ds = make_dataset(PatientName=f"Name{index}")
        studies.append(ds.StudyInstanceUID)
        repacker.repack(dicom_factory(ds=ds))
        # A new Repacker (another process) sees the same file.
        Repacker(tmp_path / "data", tmp_path / "log").repack(dicom_factory(ds=ds))
    patient = load(tmp_path / "log" / "patientData" / "P001.json")["P001"]
    assert patient["StudyList"] == studies
    assert patient["PatientName"] == "Name0"


def test_the_same_instance_again_overwrites_without_duplicates(
    tmp_path: Path, dicom_factory: Callable[..., Path]
) -> None:
    ds = make_dataset()
    first = repack_file(dicom_factory(ds=ds), datadir=tmp_path / "data", logdir=tmp_path / "log")
    ds.ImageComments = "sent again"
    second = repack_file(dicom_factory(ds=ds), datadir=tmp_path / "data", logdir=tmp_path / "log")
    assert first.dst == second.dst
    assert len(list((tmp_path / "data").rglob("*.dcm"))) == 1
    assert b"sent again" in second.dst.read_bytes()
    image_dir = tmp_path / "log" / "seriesData" / f"{ds.SeriesInstanceUID}-img"
    assert len(list(image_dir.iterdir())) == 1
    patient = load(tmp_path / "log" / "patientData" / "P001.json")["P001"]
    assert patient["StudyList"] == [ds.StudyInstanceUID]


def test_move_removes_source_only_after_everything_is_written(
    tmp_path: Path, dicom_factory: Callable[..., Path]
) -> None:
    src = dicom_factory()
    data = src.read_bytes()
    outcome = repack_file(src, datadir=tmp_path / "data", logdir=tmp_path / "log", move=True)
    assert not src.exists()
    assert outcome.source_removed
    assert outcome.dst.read_bytes() == data
    assert outcome.dst.stat().st_nlink == 1
    image = next((tmp_path / "log" / "seriesData").glob("*-img/*.json"))
    record = next(iter(load(image).values()))["imageObj"][outcome.dst.name]
    assert record["nlink"] == 1


def test_copy_mode_never_shares_the_inode(
    tmp_path: Path, dicom_factory: Callable[..., Path]
) -> None:
    # storescp rewrites a re-sent file in place: a shared inode would change too.
    src = dicom_factory()
    outcome = repack_file(src, datadir=tmp_path / "data", logdir=tmp_path / "log")
    assert outcome.dst.stat().st_ino != src.stat().st_ino


def test_without_logdir_only_data_is_written(
    tmp_path: Path, dicom_factory: Callable[..., Path]
) -> None:
    outcome = repack_file(dicom_factory(), datadir=tmp_path / "data")
    assert outcome.dst.exists()
    assert not (tmp_path / "log").exists()


def test_missing_elements_are_reported_and_placeholders_used(
    tmp_path: Path, dicom_factory: Callable[..., Path]
) -> None:
    src = dicom_factory(PatientID=None, PatientBirthDate="", SeriesNumber=None)
    outcome = repack_file(src, datadir=tmp_path / "data", logdir=tmp_path / "log")
    relative = outcome.dst.relative_to(tmp_path / "data")
    assert relative.parts[0] == "PatientID-Doe_Jane-PatientBirthDate"
    assert relative.parts[2].startswith("SeriesNumber-T1_axial-")
    missing = {m.name: m for m in outcome.missing}
    assert set(missing) == {"PatientID", "PatientBirthDate", "SeriesNumber"}
    assert missing["PatientID"].tag == "(0010,0020)"
    assert missing["PatientBirthDate"].error == "empty value"
    assert missing["PatientID"].error == "element not present"
    assert outcome.event_fields()["missing"][0]["tag"] == "(0010,0020)"
    assert (tmp_path / "log" / "patientData" / "Not defined.json").exists()


@pytest.mark.parametrize(
    "patient_id", ["../../escape", "A/B", "/abs/path", "..", "x" * 300, "a\nb", "\x1b[31m"]
)
def test_hostile_patient_ids_stay_inside_the_log_dir(
    tmp_path: Path, dicom_factory: Callable[..., Path], patient_id: str
) -> None:
    repack_file(
        dicom_factory(PatientID=patient_id), datadir=tmp_path / "data", logdir=tmp_path / "log"
    )
    for path in all_files(tmp_path):
        assert path.is_relative_to(tmp_path)
        assert all(len(part.encode()) <= 255 for part in path.parts)
    patient_files = list((tmp_path / "log" / "patientData").iterdir())
    assert len(patient_files) == 1
    ((key, record),) = load(patient_files[0]).items()
    assert record["PatientID"] == key


def test_hostile_uids_in_log_names(tmp_path: Path, dicom_factory: Callable[..., Path]) -> None:
    repack_file(
        dicom_factory(StudyInstanceUID="../../../study", SeriesInstanceUID="/series/x"),
        datadir=tmp_path / "data",
        logdir=tmp_path / "log",
    )
    for path in all_files(tmp_path):
        assert (
            path.resolve().is_relative_to(tmp_path / "data")
            or path.resolve().is_relative_to(tmp_path / "log")
            or path.resolve().is_relative_to(tmp_path / "incoming")
        )


def test_threads_on_many_patients_lose_no_study(
    tmp_path: Path, dicom_factory: Callable[..., Path]
) -> None:
    repacker = Repacker(tmp_path / "data", tmp_path / "log", Layout.named(), move=True)
    expected: dict[str, set[str]] = {}
    files = []
    for index in range(120):
        patient = f"P{index % 4}"
        ds = make_dataset(PatientID=patient)
        expected.setdefault(patient, set()).add(ds.StudyInstanceUID)
        files.append(dicom_factory(ds=ds))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(repacker.repack, files))
    for patient, studies in expected.items():
        listed = load(tmp_path / "log" / "patientData" / f"{patient}.json")[patient]["StudyList"]
        assert set(listed) == studies
        assert len(listed) == len(studies)
    leftovers = [p for p in all_files(tmp_path) if p.name.startswith(TEMP_PREFIX)]
    assert leftovers == []


def test_moved_files_keep_every_stat_field(
    tmp_path: Path, dicom_factory: Callable[..., Path]
) -> None:
    outcome = repack_file(dicom_factory(), datadir=tmp_path / "d", logdir=tmp_path / "l", move=True)
    image = next((tmp_path / "l" / "seriesData").glob("*-img/*.json"))
    record = next(iter(load(image).values()))["imageObj"][outcome.dst.name]
    stat = outcome.dst.stat()
    assert record["rdev"] == stat.st_rdev
    assert record["blocks"] == stat.st_blocks
    assert record["blksize"] == stat.st_blksize
    assert record["ino"] == stat.st_ino
    assert all(value is not None for value in record.values())


# -- a folder per sender (--pacs-name-from caller) ----------------------------------------


def _from_sender(path: Path, title: bytes | None) -> Path:
    """A file whose meta names ``title`` as its sender, as storescp writes it."""
    from pydicom.dataelem import DataElement  # noqa: PLC0415

    from .conftest import make_dataset  # noqa: PLC0415

    dataset = make_dataset()
    write_dicom(path, dataset)
    if title is not None:
        dataset.file_meta[0x00020016] = DataElement(0x00020016, "AE", title)
        dataset.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize(
    ("title", "folder"),
    [
        (b"ORTHANC", "ORTHANC"),
        (b"MY PACS ", "MY_PACS"),
        (b"../../etc", "______etc"),
        (b"A/B,C", "A_B_C"),
        (b"", "FALLBACK"),
        (None, "FALLBACK"),
        (b"X" * 17, "FALLBACK"),  # longer than an AE title
    ],
)
@pytest.mark.parametrize("keywords", [None, "header"], ids=["full-read", "header-read"])
def test_the_sender_folder_is_the_calling_ae_title(
    tmp_path: Path, title: bytes | None, folder: str, keywords: str | None
) -> None:
    from repack import read_instance  # noqa: PLC0415
    from repack.plumbing import sender_folder  # noqa: PLC0415

    path = _from_sender(tmp_path / "x.dcm", title)
    wanted = ["SourceApplicationEntityTitle", "PatientID"] if keywords else None
    assert sender_folder(read_instance(path, wanted), "FALLBACK") == folder


@given(st.binary(max_size=64))
def test_a_sender_folder_is_one_safe_component(title: bytes) -> None:
    """Whatever a file claims as its sender: one path component, never ``.`` or ``..``."""
    from pydicom.dataelem import RawDataElement  # noqa: PLC0415
    from pydicom.dataset import Dataset, FileMetaDataset  # noqa: PLC0415
    from pydicom.tag import Tag  # noqa: PLC0415

    from repack import Instance  # noqa: PLC0415
    from repack.plumbing import sender_folder  # noqa: PLC0415

    dataset = Dataset()
    tag = Tag(0x00020016)
    raw = RawDataElement(tag, "AE", len(title), title, 0, False, True)  # as read from a file
    dataset.file_meta = FileMetaDataset({tag: raw})
    try:
        folder = sender_folder(Instance(dataset), "FALLBACK")
    except Exception as error:  # a value pydicom cannot read at all is the reader's refusal
        pytest.fail(f"{title!r}: {error}")
    assert folder
    assert "/" not in folder
    assert folder not in (".", "..")
    assert all(c.isascii() and (c.isalnum() or c in "_-") for c in folder)


def test_a_repacker_by_sender_places_below_the_senders_folder(tmp_path: Path) -> None:
    source = _from_sender(tmp_path / "in" / "x.dcm", b"ORTHANC")
    repacked = Repacker(tmp_path / "data", tmp_path / "log", by_sender="FALLBACK").repack(source)
    assert repacked.dst.relative_to(tmp_path / "data").parts[0] == "ORTHANC"


@pytest.mark.parametrize("lease_test", [False, True])
@pytest.mark.usefixtures("leases")
def test_a_library_repacker_links_only_when_asked_to_test_leases(
    tmp_path: Path, lease_test: bool
) -> None:
    """Whether a source may be linked (nobody else holds it) is a lease test, which needs
    ``SIGIO`` ignored: a parameter says so, not whether someone ignored the signal."""
    source = write_dicom(tmp_path / "in" / "x.dcm")
    inode = source.stat().st_ino
    repacker = Repacker(tmp_path / "data", tmp_path / "log", move=True, lease_test=lease_test)
    repacked = repacker.repack(source)
    assert (repacked.dst.stat().st_ino == inode) is lease_test
    assert not source.exists()
