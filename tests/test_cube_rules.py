"""CUBE's registration rules, held before sending (watcher._cube), rule by rule.

For each rule: the value as it came would be refused by CUBE's serializer
(:func:`tests.cube_worker.validate`, CUBE's checks as its code has them), and
the service either refuses the series before sending (a required field) or
sends it without the field, which CUBE then accepts (an optional one).
"""

from __future__ import annotations

from typing import Any

import pytest

from watcher._cube import cube_registration

from .cube_worker import validate

PACS = "PYPX"


def _series(**tags: str) -> dict[str, Any]:
    return {
        "SeriesInstanceUID": "1.2.3.4",
        "StudyInstanceUID": "1.2.3",
        "PatientID": "P1",
        "ndicom": 3,
        "path": BELOW + "P1/study/series",
        "tags": {"StudyDate": "20240101", "PatientSex": "F", "PatientName": "Doe^Jane", **tags},
    }


def test_an_ordinary_series_is_accepted_as_it_is() -> None:
    registration = cube_registration(_series(PatientAge="034Y"), PACS)
    assert registration.refused is None
    assert registration.left_out == []
    assert validate(registration.arguments) is None
    assert registration.arguments["PatientAge"] == round(34 * 365.24)


#: A PN of three components: DICOM allows 3 x 64 characters, CUBE stores 150.
LONG_NAME = "A" * 64 + "^" + "B" * 64 + "^" + "C" * 22
LONG_UID = "1." + "2" * 100
BELOW = f"SERVICES/PACS/{PACS}/"

#: (tag, hostile value, the value CUBE's task would have been given)
OPTIONAL = [
    ("PatientName", LONG_NAME, LONG_NAME),
    ("PatientName", "Doe\x00Jane", "Doe\x00Jane"),
    ("PatientSex", "U", "U"),
    ("AccessionNumber", "9" * 101, "9" * 101),
    ("Modality", "M" * 16, "M" * 16),
    ("ProtocolName", "p" * 65, "p" * 65),
    ("StudyDescription", "s" * 401, "s" * 401),
    ("SeriesDescription", "s" * 401, "s" * 401),
    ("PatientBirthDate", "2024", "2024"),
    ("PatientAge", "9999999999Y", 3652399999635),
]  # fmt: skip


@pytest.mark.parametrize(
    ("tag", "value", "raw"), OPTIONAL, ids=[f"{t}-{i}" for i, (t, *_) in enumerate(OPTIONAL)]
)
def test_an_optional_field_cube_would_refuse_is_left_out(tag: str, value: str, raw: object) -> None:
    registration = cube_registration(_series(**{tag: value}), PACS)
    assert validate({**registration.arguments, tag: raw}) is not None  # CUBE's rule is real
    assert registration.refused is None
    assert registration.arguments[tag] is None
    assert any(note.startswith(tag) for note in registration.left_out)
    assert validate(registration.arguments) is None  # and what is sent, CUBE takes


#: (the argument, the change to the series, the argument as it would have been)
REQUIRED: list[tuple[str, dict[str, Any], Any]] = [
    ("PatientID", {"PatientID": "9" * 101}, "9" * 101),
    ("PatientID", {"PatientID": "  "}, "  "),
    ("PatientID", {"PatientID": "P\x001"}, "P\x001"),
    ("StudyDate", {"tags": {"StudyDate": "2024-13-45"}}, "2024-13-45"),
    ("SeriesInstanceUID", {"SeriesInstanceUID": LONG_UID}, LONG_UID),
    ("path", {"path": BELOW + "a,b"}, BELOW + "a,b"),
    ("path", {"path": BELOW + "x" * 1024}, BELOW + "x" * 1024),
    ("path", {"path": "SERVICES/PACS/OTHER/x"}, "SERVICES/PACS/OTHER/x"),
    ("ndicom", {"ndicom": 0}, 0),
]


@pytest.mark.parametrize(
    ("name", "change", "raw"), REQUIRED, ids=[f"{r[0]}-{i}" for i, r in enumerate(REQUIRED)]
)
def test_a_required_field_cube_would_refuse_refuses_the_series(
    name: str, change: dict[str, Any], raw: object
) -> None:
    registration = cube_registration({**_series(), **change}, PACS)
    assert validate({**registration.arguments, name: raw}) is not None  # CUBE's rule is real
    assert registration.refused is not None, name


@pytest.mark.parametrize("pacs_name", ["P" * 21, "a/b", "a,b"])
def test_a_pacs_name_cube_would_refuse_refuses_every_series(pacs_name: str) -> None:
    series = _series()
    series["path"] = f"SERVICES/PACS/{pacs_name}/x"
    registration = cube_registration(series, pacs_name)
    assert validate(registration.arguments) is not None
    assert registration.refused is not None


def test_values_are_sent_trimmed_as_cube_stores_them() -> None:
    registration = cube_registration(_series(PatientName="  Doe^Jane  ", Modality=" MR "), PACS)
    assert registration.arguments["PatientName"] == "Doe^Jane"
    assert registration.arguments["Modality"] == "MR"
    assert validate(registration.arguments) is None
