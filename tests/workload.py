"""Workloads for tests and benchmarks: many patients, studies, series and instances.

Either tiny synthetic instances (fast to make, for crash and concurrency
tests) or copies of the real SAG-anon instances with fresh Patient IDs and
Study, Series and SOP Instance UIDs (for throughput figures that mean
something). Files are named as storescp names them (``MR.<SOPInstanceUID>``).
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

__all__ = ["Instance", "plan", "synthetic_dataset", "write_workload"]


@dataclass(frozen=True)
class Instance:
    """One instance of a workload: who it belongs to and its UIDs."""

    patient_id: str
    study_uid: str
    series_uid: str
    sop_uid: str
    series_number: int
    instance_number: int


def plan(
    patients: int, studies: int, series: int, instances: int, *, seed: str = ""
) -> list[Instance]:
    """``patients x studies x series x instances`` instances with fresh UIDs."""
    planned: list[Instance] = []
    for p in range(patients):
        patient_id = f"PX{seed}{p:04d}"
        for _ in range(studies):
            study_uid = generate_uid()
            for s in range(series):
                series_uid = generate_uid()
                for i in range(instances):
                    planned.append(
                        Instance(patient_id, study_uid, series_uid, generate_uid(), s + 1, i + 1)
                    )
    return planned


def synthetic_dataset() -> Dataset:
    """A small but complete MR instance (4x4 pixels)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = MRImageStorage
    ds.PatientName = "Synthetic^Patient"
    ds.PatientBirthDate = "19800101"
    ds.PatientSex = "O"
    ds.PatientAge = "044Y"
    ds.StudyDescription = "Workload study"
    ds.AccessionNumber = "WL1"
    ds.StudyDate = "20260101"
    ds.SeriesDescription = "Workload series"
    ds.SeriesDate = "20260101"
    ds.Modality = "MR"
    ds.Rows = 4
    ds.Columns = 4
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(range(32))
    return ds


def _bases(sources: list[Path] | None) -> Iterator[Dataset]:
    if not sources:
        base = synthetic_dataset()
        return itertools.repeat(base)
    return itertools.cycle([dcmread(p) for p in sources])


def write_workload(
    folder: Path, planned: list[Instance], *, sources: list[Path] | None = None
) -> list[Path]:
    """Write every planned instance into ``folder``; return the paths.

    ``sources``: real instances to copy (cycled), else synthetic ones.
    """
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for instance, base in zip(planned, _bases(sources), strict=False):
        ds = copy.copy(base)  # a shallow copy: only the top-level UIDs change
        ds.PatientID = instance.patient_id
        ds.StudyInstanceUID = instance.study_uid
        ds.SeriesInstanceUID = instance.series_uid
        ds.SOPInstanceUID = instance.sop_uid
        ds.SeriesNumber = instance.series_number
        ds.InstanceNumber = instance.instance_number
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", MRImageStorage)
        meta.MediaStorageSOPInstanceUID = instance.sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta = meta
        path = folder / f"MR.{instance.sop_uid}"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written
