"""Shared fixtures: the example set, px-repack's reference output, DICOM factories."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

from .helpers import installed
from .listener import STARTED
from .workload import synthetic_dataset

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_NAME = "FNNDSC-SAG-anon-3d6e850"


def _examples_dir() -> Path:
    return Path(os.environ.get("PYPX_EXAMPLES", ROOT / "examples"))


def _need(path: Path, what: str) -> Path:
    if path.exists():
        return path
    message = f"{what} not found at {path}: run ./get_examples.sh first"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def stop_every_listener() -> Iterator[None]:
    """Whatever the outcome of a test, no service it started outlives it."""
    yield
    while STARTED:
        STARTED.pop().kill()


@pytest.fixture(scope="session")
def example_dir() -> Path:
    """The 192 SAG-anon instances (from get_examples.sh, or ../shared)."""
    local = _examples_dir() / EXAMPLE_NAME
    if local.exists():
        return local
    return _need(ROOT.parent / "shared" / "examples" / EXAMPLE_NAME, "the SAG-anon examples")


@pytest.fixture(scope="session")
def example_files(example_dir: Path) -> list[Path]:
    files = sorted(example_dir.glob("*.dcm"))
    assert len(files) == 192
    return files


@pytest.fixture(scope="session")
def px_output() -> Path:
    """The real px-repack 3.10.16 output of the example set."""
    return _need(_examples_dir() / "px-repack-output" / ".complete", "px-repack output").parent


def make_dataset(**overrides: Any) -> Dataset:
    """A small, valid MR instance with known values; keyword overrides (``None`` deletes)."""
    ds = synthetic_dataset()
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "P001"
    ds.PatientName = "Doe^Jane"
    ds.PatientBirthDate = "20000101"
    ds.PatientAge = "024Y"
    ds.PatientSex = "F"
    ds.StudyDescription = "Brain"
    ds.AccessionNumber = "ACC1"
    ds.StudyDate = "20240102"
    ds.SeriesDescription = "T1 axial"
    ds.SeriesNumber = 3
    ds.SeriesDate = "20240102"
    ds.InstanceNumber = 7
    for keyword, value in overrides.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def write_dicom(path: Path, ds: Dataset | None = None, **overrides: Any) -> Path:
    """Write ``ds`` (or a fresh :func:`make_dataset`) as a Part 10 file."""
    ds = ds if ds is not None else make_dataset(**overrides)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", MRImageStorage)
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", generate_uid())
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def dicom_factory(tmp_path: Path) -> Callable[..., Path]:
    """Write a DICOM file into ``tmp_path/incoming`` with keyword overrides."""
    counter = iter(range(1_000_000))

    def factory(name: str | None = None, ds: Dataset | None = None, **overrides: Any) -> Path:
        target = tmp_path / "incoming" / (name or f"MR.{next(counter)}")
        return write_dicom(target, ds, **overrides)

    return factory


def run_cli(
    *args: str | Path, check: bool = False, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``pypx-repack`` as a real process (the installed console script)."""
    return subprocess.run(
        [installed("pypx-repack"), *map(str, args)],
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
    )


@pytest.fixture
def leases() -> Iterator[None]:
    """Let this process take write leases, as a worker process does (SIGIO ignored).

    A lease break signals its holder with SIGIO, whose default action kills;
    without this, :meth:`repack.plumbing.SourceFile.others` does not test (UNKNOWN).
    """
    previous = signal.signal(signal.SIGIO, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGIO, previous)
