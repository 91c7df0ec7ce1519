"""CUBE's rules for a series registration, held before anything is sent.

CUBE registers a series in its Celery worker (``pacsfiles.tasks.register_pacs_series``)
through ``PACSSeriesSerializer`` onto the ``PACSSeries`` model; a series it
refuses is only an ERROR line in CUBE's log (no result backend, no retry), its
files left unregistered in CUBE's storage. So every rule CUBE applies is
applied here first (read from ChRIS_ultron_backEnd's ``pacsfiles/models.py``,
``serializers.py`` and ``tasks.py``; Django REST framework's ``CharField``
trims white space and refuses NUL and surrogate characters):

=====================  =============================================================
required               ``PatientID`` (1-100), ``StudyDate`` (a date),
                       ``StudyInstanceUID`` and ``SeriesInstanceUID`` (valid DICOM
                       UIDs: digits and dots, at most 64), ``pacs_name`` (1-20, no
                       ``/`` or ``,``), ``path`` (at most 1,024, no ``,``, below
                       ``SERVICES/PACS/<pacs_name>/``), ``ndicom`` (>= 1)
optional (left out)    ``PatientName`` (<= 150), ``PatientBirthDate`` (a date),
                       ``PatientAge`` (days, an integer column), ``PatientSex``
                       (``M``, ``F``, ``O`` or blank), ``AccessionNumber`` (<= 100),
                       ``Modality`` (<= 15), ``ProtocolName`` (<= 64),
                       ``StudyDescription`` and ``SeriesDescription`` (<= 400)
=====================  =============================================================

A required field that breaks a rule makes the series refused
(``handoff.refused``, a LONK error); an optional one is left out, as CUBE's
task leaves out ``None``, and said in the notes.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_NOT_DEFINED = "Not defined"  # px's value for an absent element
_UIDS = ("StudyInstanceUID", "SeriesInstanceUID")
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
#: The largest value of CUBE's integer column (PostgreSQL ``integer``).
_INT_MAX = 2**31 - 1
#: CharField lengths of CUBE's PACSSeries model (optional fields).
_OPTIONAL_LENGTHS = {
    "PatientName": 150,
    "AccessionNumber": 100,
    "Modality": 15,
    "ProtocolName": 64,
    "StudyDescription": 400,
    "SeriesDescription": 400,
}
_SEXES = ("M", "F", "O", "")
_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([DWMY])\s*$")
_DAYS_PER = {"D": 1.0, "W": 7.0, "M": 30.44, "Y": 365.24}  # oxidicom's and pypx's factors


def valid_uid(text: object) -> bool:
    """A DICOM UID: digits and dots, no empty or zero-led component, at most 64 characters.

    Such a value is safe in every protocol it reaches (a NATS subject, a header).
    """
    return isinstance(text, str) and len(text) <= 64 and _UID.fullmatch(text) is not None


def _date(text: str | None) -> str | None:
    """A DICOM DA (``YYYYMMDD``) as ``YYYY-MM-DD``; None when it is not a date."""
    if not text:
        return None
    for pattern in ("%Y%m%d", "%Y-%m-%d"):
        try:
            return datetime.datetime.strptime(text.strip(), pattern).date().isoformat()
        except ValueError:
            continue
    return None


def patient_age_days(age: str | None) -> int | None:
    """A DICOM AS (``034Y``, ``020D``) in days, as CUBE stores it; None when not an age."""
    match = _AGE.match(age or "")
    if match is None:
        return None
    days = round(float(match[1]) * _DAYS_PER[match[2]])
    return days if days <= _INT_MAX else None


def _text(value: object) -> str | None:
    """A value as DRF's CharField takes it (trimmed); None when absent or px's placeholder."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    return None if value in ("", _NOT_DEFINED, "None") else value


def _storable(value: str) -> bool:
    """Whether DRF's CharField accepts the characters: no NUL, no lone surrogate."""
    return "\x00" not in value and not any(0xD800 <= ord(c) <= 0xDFFF for c in value)


def cube_admits(instance: Any) -> str | None:
    """Why CUBE would refuse the series of ``instance`` (a :class:`repack.Instance`), or None.

    With the CUBE destination set, an instance of such a series is quarantined
    (``refused-by-cube``) instead of being put into CUBE's storage, where CUBE
    would never register it (as oxidicom does not store it either).
    """
    uids = {keyword: instance.text(keyword) for keyword in _UIDS}
    return _identity_refused(instance.text("PatientID"), instance.text("StudyDate"), uids)


def _identity_refused(
    patient: str | None, study_date: str | None, uids: Mapping[str, object]
) -> str | None:
    """CUBE's rules for what names a series (the same for an instance and a series)."""
    if patient is None:
        return "CUBE needs a PatientID"
    if len(patient) > 100 or not _storable(patient):
        return "CUBE needs a PatientID of at most 100 characters, without NUL"
    if _date(study_date) is None:
        return "CUBE needs a valid StudyDate"
    for keyword, uid in uids.items():
        if not valid_uid(uid):
            return f"CUBE needs a valid {keyword} (a DICOM UID: digits and dots, at most 64)"
    return None


@dataclass
class Registration:
    """The task's keyword arguments, or why CUBE would refuse the series."""

    arguments: dict[str, Any]
    refused: str | None = None
    #: Optional fields left out, each with the rule it broke.
    left_out: list[str] = field(default_factory=list)


def _required(series: Mapping[str, Any], pacs_name: str) -> str | None:
    """Why CUBE would refuse the series, or None."""
    refused = _identity_refused(
        _text(series.get("PatientID")),
        _text(series.get("tags", {}).get("StudyDate")),
        {keyword: series.get(keyword) for keyword in _UIDS},
    )
    if refused is not None:
        return refused
    if not 1 <= len(pacs_name) <= 20 or "/" in pacs_name or "," in pacs_name:
        return f"the PACS name {pacs_name!r} is not 1-20 characters without '/' or ','"
    path = str(series.get("path", ""))
    if "," in path:
        return f"its path has a comma, which CUBE refuses: {path}"
    if len(path) > 1024 or not path.startswith(f"SERVICES/PACS/{pacs_name}/"):
        return f"its path is longer than 1024 characters or not below SERVICES/PACS/{pacs_name}/"
    if not isinstance(series.get("ndicom"), int) or series["ndicom"] < 1:
        return "its folder holds no .dcm file (ndicom < 1)"
    return None


def cube_registration(series: Mapping[str, Any], pacs_name: str) -> Registration:
    """``register_pacs_series``'s keyword arguments for a series document, held to CUBE's rules."""
    refused = _required(series, pacs_name)
    tags = series.get("tags", {})
    left_out: list[str] = []
    optional: dict[str, Any] = {}
    for keyword, limit in _OPTIONAL_LENGTHS.items():
        value = _text(tags.get(keyword))
        if value is not None and (len(value) > limit or not _storable(value)):
            left_out.append(f"{keyword}: longer than {limit} characters or holds a NUL")
            value = None
        optional[keyword] = value
    sex = _text(tags.get("PatientSex"))
    if sex is not None and sex not in _SEXES:
        left_out.append(f"PatientSex {sex!r}: CUBE takes M, F, O or blank")
        sex = None
    birth = _text(tags.get("PatientBirthDate"))
    if birth is not None and _date(birth) is None:
        left_out.append("PatientBirthDate: not a date")
    age = _text(tags.get("PatientAge"))
    if age is not None and patient_age_days(age) is None:
        left_out.append("PatientAge: not an age CUBE can store")
    arguments = {
        "PatientID": _text(series.get("PatientID")),
        "StudyDate": _date(_text(tags.get("StudyDate"))),
        "StudyInstanceUID": series.get("StudyInstanceUID"),
        "SeriesInstanceUID": series.get("SeriesInstanceUID"),
        "pacs_name": pacs_name,
        "path": series.get("path"),
        "ndicom": series.get("ndicom"),
        "PatientName": optional["PatientName"],
        "PatientBirthDate": _date(birth),
        "PatientAge": patient_age_days(age),
        "PatientSex": sex,
        "AccessionNumber": optional["AccessionNumber"],
        "Modality": optional["Modality"],
        "ProtocolName": optional["ProtocolName"],
        "StudyDescription": optional["StudyDescription"],
        "SeriesDescription": optional["SeriesDescription"],
    }
    return Registration(arguments, refused, left_out)
