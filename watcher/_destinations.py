"""Where a completed series is handed on: CUBE's Celery task, LONK on NATS, a webhook, a command.

Each destination delivers one outbox record (:mod:`watcher._handoff`) or
raises :class:`DeliveryError`; a record is delivered when this returns:

=============  =================================================================
``celery``     CUBE's task ``pacsfiles.tasks.register_pacs_series`` on the
               ``--celery-queue`` (``main2``), Celery message protocol 2, JSON,
               every argument a keyword; delivered once the broker took it
               (Redis: the push returned; RabbitMQ: a publisher confirm)
``nats``       the LONK "done" message (``0x00``) on
               ``oxidicom.<pacs_name>.<SeriesInstanceUID>``, after the series'
               ``celery`` record, if any, was delivered; delivered once the
               server answered the PING that follows it
``webhook``    a POST of the series document as JSON, with an
               ``Idempotency-Key`` header (the record's key); delivered on 2xx
``command``    an argv (never a shell), the series document as JSON on stdin and
               as ``PYPX_SERIES_*`` variables; delivered on exit status 0
=============  =================================================================

Progress (LONK ``0x01`` + the count as a little-endian u32) is not kept in
the outbox: it is news, sent at most once per ``--progress-interval`` per
series, the first and the last always (:class:`watcher._lonk.LonkProgress`).
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import orjson

from ._series import QuietSeries

__all__ = [
    "CELERY_TASK",
    "CeleryRegistration",
    "Command",
    "DeliveryError",
    "Destination",
    "Webhook",
    "celery_arguments",
    "patient_age_days",
    "series_document",
]

CELERY_TASK = "pacsfiles.tasks.register_pacs_series"
#: How long one delivery may take before it counts as failed.
DELIVERY_TIMEOUT_S = 30.0
#: How long a command may run.
COMMAND_TIMEOUT_S = 300.0
_NOT_DEFINED = "Not defined"  # px's value for an absent element


class DeliveryError(Exception):
    """A delivery failed; the record stays and is tried again later."""


class Destination(Protocol):
    name: str

    def refuses(self, series: Mapping[str, Any]) -> str | None:
        """Why this series can never be delivered here (it gets no record), or None."""
        ...

    def deliver(self, key: str, series: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


#: Tags of the study's series log that the series document carries (CUBE's arguments).
DOCUMENT_TAGS = (
    "PatientName",
    "PatientBirthDate",
    "PatientAge",
    "PatientSex",
    "StudyDate",
    "AccessionNumber",
    "Modality",
    "ProtocolName",
    "StudyDescription",
    "SeriesDescription",
)


def _series_tags(log_path: str) -> dict[str, str]:
    """The series' tags from its ``studyData/<Study>-series/<Series>-meta.json`` (px strings)."""
    try:
        document = orjson.loads(Path(log_path).read_bytes())
        (study,) = document.values()
        table = study["DICOM"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
    return {k: str(table[k]["value"]) for k in DOCUMENT_TAGS if isinstance(table.get(k), dict)}


def _count_dicom(folder: str) -> int:
    try:
        with os.scandir(folder) as entries:
            return sum(
                1 for e in entries if e.name.endswith(".dcm") and e.is_file(follow_symlinks=False)
            )
    except OSError:
        return 0


def series_document(series: QuietSeries, datadir: Path, pacs_name: str | None) -> dict[str, Any]:
    """What every destination is told about a completed series.

    ``ndicom`` is the number of ``.dcm`` files in its folder now (CUBE waits
    for exactly that many); ``path`` is that folder as CUBE names it,
    ``SERVICES/PACS/<pacs_name>/...`` (the data folder is CUBE's
    ``SERVICES/PACS/<pacs_name>``).
    """
    relative = os.path.relpath(series.folder, datadir)
    return {
        "SeriesInstanceUID": series.series_uid,
        "StudyInstanceUID": series.study_uid,
        "PatientID": series.patient_id,
        "instances": series.instances,
        "resent": series.resends,
        "ndicom": _count_dicom(series.folder),
        "folder": series.folder,
        "path": f"SERVICES/PACS/{pacs_name}/{relative}" if pacs_name else relative,
        "receive_s": series.receive_s,
        "completed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tags": _series_tags(series.log_path),
    }


# -- CUBE's registration ------------------------------------------------------------


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


_AGE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([DWMY])\s*$")
_DAYS_PER = {"D": 1.0, "W": 7.0, "M": 30.44, "Y": 365.24}  # oxidicom's and pypx's factors


def patient_age_days(age: str | None) -> int | None:
    """A DICOM AS (``034Y``, ``020D``) in days, as CUBE stores it; None when not an age."""
    match = _AGE.match(age or "")
    if match is None:
        return None
    return round(float(match[1]) * _DAYS_PER[match[2]])


def _tag(series: Mapping[str, Any], keyword: str) -> str | None:
    value = series.get("tags", {}).get(keyword)
    if not isinstance(value, str) or value in ("", _NOT_DEFINED, "None"):
        return None
    return value


def celery_arguments(series: Mapping[str, Any], pacs_name: str) -> dict[str, Any]:
    """The keyword arguments of ``register_pacs_series`` for a series document."""
    return {
        "PatientID": series["PatientID"],
        "StudyDate": _date(_tag(series, "StudyDate")),
        "StudyInstanceUID": series["StudyInstanceUID"],
        "SeriesInstanceUID": series["SeriesInstanceUID"],
        "pacs_name": pacs_name,
        "path": series["path"],
        "ndicom": series["ndicom"],
        "PatientName": _tag(series, "PatientName"),
        "PatientBirthDate": _date(_tag(series, "PatientBirthDate")),
        "PatientAge": patient_age_days(_tag(series, "PatientAge")),
        "PatientSex": _tag(series, "PatientSex"),
        "AccessionNumber": _tag(series, "AccessionNumber"),
        "Modality": _tag(series, "Modality"),
        "ProtocolName": _tag(series, "ProtocolName"),
        "StudyDescription": _tag(series, "StudyDescription"),
        "SeriesDescription": _tag(series, "SeriesDescription"),
    }


class CeleryRegistration:
    """Sends CUBE's registration task through a Redis or RabbitMQ broker."""

    name = "celery"

    def __init__(self, broker: str, queue_name: str, pacs_name: str) -> None:
        from celery import Celery  # noqa: PLC0415 - only when a broker is configured

        self.app = Celery("pypx-listener", broker=broker, set_as_current=False)
        self.app.conf.update(
            task_serializer="json",
            accept_content=["json"],
            task_protocol=2,
            broker_connection_timeout=DELIVERY_TIMEOUT_S / 3,
            broker_connection_retry_on_startup=False,
            # RabbitMQ: a publish is done when the broker confirmed it.
            broker_transport_options={"confirm_publish": True, "socket_timeout": 10},
        )
        self.queue_name = queue_name
        self.pacs_name = pacs_name

    def refuses(self, series: Mapping[str, Any]) -> str | None:
        """What CUBE (and oxidicom) would refuse: no StudyDate, no PatientID, a comma."""
        if _date(_tag(series, "StudyDate")) is None:
            return "no valid StudyDate: CUBE cannot register the series"
        if series["PatientID"] in ("", _NOT_DEFINED):
            return "no PatientID: CUBE cannot register the series"
        if "," in series["path"]:
            return f"its path has a comma, which CUBE refuses: {series['path']}"
        return None

    def deliver(self, key: str, series: Mapping[str, Any]) -> None:
        try:
            self.app.send_task(
                CELERY_TASK,
                kwargs=celery_arguments(series, self.pacs_name),
                queue=self.queue_name,
                task_id=key,
                retry=False,
            )
        except Exception as error:  # kombu's and the transports' errors: all mean "not taken"
            raise DeliveryError(f"{type(error).__name__}: {error}") from error

    def close(self) -> None:
        self.app.close()


# -- any consumer -----------------------------------------------------------------


class Webhook:
    """POSTs the series document; 2xx is delivered."""

    name = "webhook"

    def __init__(self, url: str) -> None:
        self.url = url

    def refuses(self, series: Mapping[str, Any]) -> str | None:
        return None

    def deliver(self, key: str, series: Mapping[str, Any]) -> None:
        request = urllib.request.Request(  # noqa: S310 - the operator's URL
            self.url,
            data=orjson.dumps(series),
            method="POST",
            headers={
                "Content-Type": "application/json",
                "Idempotency-Key": key,
                "User-Agent": "pypx-listener",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=DELIVERY_TIMEOUT_S) as answer:  # noqa: S310
                status = answer.status
        except urllib.error.HTTPError as error:
            raise DeliveryError(f"{self.url} answered {error.code}") from error
        except (OSError, ValueError) as error:
            raise DeliveryError(f"{self.url}: {error}") from error
        if not 200 <= status < 300:
            raise DeliveryError(f"{self.url} answered {status}")

    def close(self) -> None:
        pass


def _environment(key: str, series: Mapping[str, Any]) -> dict[str, str]:
    variables = {"PYPX_SERIES_KEY": key}
    for name, value in series.items():
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).upper()
            variables[f"PYPX_SERIES_{snake}"] = str(value)
    return variables


class Command:
    """Runs an argv with the series on stdin and in the environment; exit 0 is delivered."""

    name = "command"

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)

    def refuses(self, series: Mapping[str, Any]) -> str | None:
        return None

    def deliver(self, key: str, series: Mapping[str, Any]) -> None:
        try:
            done = subprocess.run(
                self.argv,
                input=orjson.dumps(series),
                env={**os.environ, **_environment(key, series)},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=COMMAND_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise DeliveryError(
                f"{self.argv[0]} ran longer than {COMMAND_TIMEOUT_S:g} s"
            ) from error
        except OSError as error:
            raise DeliveryError(f"cannot run {self.argv[0]}: {error.strerror or error}") from error
        if done.returncode != 0:
            said = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise DeliveryError(f"{self.argv[0]} exited {done.returncode}: {said[0][:200]}")

    def close(self) -> None:
        pass
