r"""The pypx "smdb" JSON log files: where they live and what they contain.

Pure functions: from an :class:`~repack._dicom.Instance` (and, for the image
file, an :class:`os.stat_result`) to JSON-ready dictionaries, and from tag
values to confined file names. The shapes are fixed by the downstream pypx
readers (``px-status``, ``px-push``, ``px-register``, ``px-smdb``)::

    <logdir>/patientData/<PatientID>.json
    <logdir>/studyData/<StudyInstanceUID>-meta.json
    <logdir>/studyData/<StudyInstanceUID>-series/<SeriesInstanceUID>-meta.json
    <logdir>/seriesData/<SeriesInstanceUID>-meta.json
    <logdir>/seriesData/<SeriesInstanceUID>-img/<image>.json
    <logdir>/seriesData/<SeriesInstanceUID>-pack.json

Every file and event line is ASCII JSON (:func:`json_bytes`, :func:`dumps`):
pypx's readers are Python's ``json`` in whatever locale the host has, and
px-repack wrote ``\uXXXX`` escapes. orjson encodes; the escaping pass runs
only on bytes that are not ASCII already. A file name's undecodable bytes
(lone surrogates, which no encoder accepts) are spelled ``\xff``.
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ._dicom import Instance
from ._sanitize import safe_log_name
from ._source import printable

PATIENT_FIELDS = ("PatientID", "PatientName", "PatientAge", "PatientSex", "PatientBirthDate")
STUDY_FIELDS = (
    "PatientID",
    "StudyDescription",
    "StudyDate",
    "StudyInstanceUID",
    "PerformedStationAETitle",
)
SERIES_FIELDS = (
    "PatientID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesDescription",
    "SeriesNumber",
    "SeriesDate",
    "Modality",
)
#: The ``os.stat_result`` fields px records for each image, in its order.
STAT_FIELDS = (
    "atime", "blksize", "blocks", "ctime", "dev", "gid", "ino",
    "mode", "mtime", "nlink", "rdev", "size", "uid",
)  # fmt: skip

# The longest suffix any log file name adds to a UID, so one UID maps to
# one confined name in every file that uses it.
_UID_SUFFIX = "-meta.json"


def _fields(instance: Instance, keywords: tuple[str, ...]) -> dict[str, str]:
    return {k: instance.px_value(k) for k in keywords}


def series_fields(instance: Instance) -> dict[str, str]:
    """The seven series fields shared by the series meta and image files."""
    return _fields(instance, SERIES_FIELDS)


def patient_document(instance: Instance, study_list: list[str]) -> dict[str, Any]:
    """``patientData/<PatientID>.json``: the patient and its studies."""
    record: dict[str, Any] = _fields(instance, PATIENT_FIELDS)
    record["StudyList"] = study_list
    return {instance.px_value("PatientID"): record}


def study_meta_document(instance: Instance) -> dict[str, Any]:
    """``studyData/<StudyInstanceUID>-meta.json``."""
    return {instance.px_value("StudyInstanceUID"): _fields(instance, STUDY_FIELDS)}


def study_series_document(instance: Instance, series_dir: str) -> dict[str, Any]:
    """``studyData/<Study>-series/<Series>-meta.json``: the full tag table."""
    table = instance.dicom_dump()
    return {
        instance.px_value("StudyInstanceUID"): {
            "SeriesInstanceUID": instance.px_value("SeriesInstanceUID"),
            "SeriesBaseDir": series_dir,
            "DICOM": {k: {"value": v, "label": k} for k, v in table.items()},
        }
    }


def series_meta_document(instance: Instance) -> dict[str, Any]:
    """``seriesData/<SeriesInstanceUID>-meta.json``."""
    return {instance.px_value("SeriesInstanceUID"): series_fields(instance)}


def stat_fields(stat: os.stat_result, *, nlink: int | None = None) -> dict[str, Any]:
    """px's record of a file's ``stat``: times as local naive timestamps.

    ``nlink`` overrides the link count (the count the file will have once a
    source hard-linked to it is removed).
    """
    record: dict[str, Any] = {}
    for name in STAT_FIELDS:
        value = getattr(stat, "st_" + name)
        if name == "nlink" and nlink is not None:
            value = nlink
        if name.endswith("time"):
            value = str(datetime.datetime.fromtimestamp(value))
        record[name] = value
    return record


def image_document(
    instance: Instance, destination: Path, stat: os.stat_result, *, nlink: int | None = None
) -> dict[str, Any]:
    """``seriesData/<Series>-img/<image>.json``: the record of one instance, stored at
    ``destination``."""
    record: dict[str, Any] = series_fields(instance)
    record["outputFile"] = destination.name
    stored = {**stat_fields(stat, nlink=nlink), "FSlocation": str(destination)}
    record["imageObj"] = {destination.name: stored}
    return {instance.px_value("SeriesInstanceUID"): record}


@dataclass(frozen=True)
class LogPaths:
    """Where the log files of one series go, every name confined to the log folder.

    One object per series serves all its instances (a repacker keeps them):
    its paths are built once, and their hashes are computed once.
    """

    patient: Path
    study_meta: Path
    study_series: Path
    series_data: Path
    series_meta: Path
    #: The folder of the per-instance files (it holds nothing else).
    images: Path
    pack: Path

    @classmethod
    def of(cls, logdir: Path, instance: Instance) -> LogPaths:
        """The paths for the series of ``instance``."""

        def name(keyword: str, suffix: str) -> str:
            # A value of several values (path text joins them with "\\", which no
            # single value of these VRs holds) is no name: px would use its list repr.
            text = instance.text(keyword) or ""
            if "\\" in text:
                return safe_log_name(text, suffix=suffix, several=True)
            return safe_log_name(instance.px_value(keyword), suffix=suffix)

        patient = name("PatientID", ".json")
        study = name("StudyInstanceUID", _UID_SUFFIX)
        series = name("SeriesInstanceUID", _UID_SUFFIX)
        studies, series_data = logdir / "studyData", logdir / "seriesData"
        return cls(
            patient=logdir / "patientData" / f"{patient}.json",
            study_meta=studies / f"{study}-meta.json",
            study_series=studies / f"{study}-series" / f"{series}-meta.json",
            series_data=series_data,
            series_meta=series_data / f"{series}-meta.json",
            images=series_data / f"{series}-img",
            pack=series_data / f"{series}-pack.json",
        )

    def image(self, image_name: str) -> Path:
        """The file of the instance stored under ``image_name`` in the data tree."""
        return self.images / f"{safe_log_name(image_name, suffix='.json')}.json"


_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_INDENT = orjson.OPT_INDENT_2


def _repair(value: Any) -> Any:
    """A copy of ``value`` whose strings (keys too) are all encodable."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {_repair(k): _repair(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_repair(v) for v in value]
    return value


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def dumps(document: Any, *, indent: bool = False, default: Any = None) -> bytes:
    """``document`` as ASCII JSON bytes (``\\uXXXX`` escapes, as ``json.dump``)."""
    option = _INDENT if indent else 0
    try:
        data = orjson.dumps(document, option=option, default=default)
    except TypeError:  # a str with lone surrogates: a non-UTF-8 file name
        data = orjson.dumps(_repair(document), option=option, default=default)
    if data.isascii():
        return data
    return _NON_ASCII.sub(_escape, data.decode("utf-8")).encode("ascii")


def json_bytes(document: dict[str, Any]) -> bytes:
    """A log file's bytes: indented ASCII JSON, as pypx readers in any locale accept."""
    return dumps(document, indent=True)
