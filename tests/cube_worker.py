"""CUBE's registration task, as a real Celery worker runs it in tests.

The task has ``pacsfiles.tasks.register_pacs_series``'s exact signature and
CUBE's checks (read from ChRIS_ultron_backEnd's ``pacsfiles``), rule by rule in
:func:`validate` (the model's lengths and choices, dates, the serializer's
path, PACS name and ``ndicom`` rules, DRF's blank, NUL and surrogate rules);
the storage is listed for up to 30 s until exactly
``ndicom`` ``.dcm`` files are there (more is an error); a second
registration of the same (pacs_name, SeriesInstanceUID) is refused. Instead
of a database, registrations go to ``$CUBE_REGISTRY`` (one JSON line each)
and refusals to ``$CUBE_REGISTRY.refused``.

Run: ``celery -A tests.cube_worker worker -Q main2 --pool solo``, with
``CUBE_BROKER``, ``CUBE_STORAGE`` and ``CUBE_REGISTRY`` set.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from celery import Celery

app = Celery("cube", broker=os.environ.get("CUBE_BROKER", "redis://127.0.0.1:6379/0"))
app.conf.update(
    accept_content=["json"],
    task_serializer="json",
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


class RegistrationError(Exception):
    """What CUBE's serializer raises (a ValidationError there)."""


def _registry() -> Path:
    return Path(os.environ["CUBE_REGISTRY"])


def _refuse(reason: str, **fields: object) -> None:
    with open(f"{_registry()}.refused", "a") as refused:
        refused.write(json.dumps({"reason": reason, **fields}) + "\n")
    raise RegistrationError(reason)


#: CharField max_length of CUBE's PACSSeries model (pacsfiles/models.py).
MAX_LENGTH = {
    "PatientID": 100,
    "PatientName": 150,
    "AccessionNumber": 100,
    "Modality": 15,
    "ProtocolName": 64,
    "StudyInstanceUID": 100,
    "StudyDescription": 400,
    "SeriesInstanceUID": 100,
    "SeriesDescription": 400,
    "pacs_name": 20,  # the serializer's own CharField
    "path": 1024,  # likewise
}
#: Fields the model requires (blank=False) or the serializer declares without a default.
REQUIRED = ("PatientID", "StudyDate", "StudyInstanceUID", "SeriesInstanceUID", "pacs_name",
            "path", "ndicom")  # fmt: skip
SEXES = ("M", "F", "O")


def validate(arguments: dict[str, object]) -> str | None:
    """Why CUBE's ``PACSSeriesSerializer`` would refuse these task arguments, or None.

    Rule by rule as CUBE has them: the task drops ``None`` values; DRF's CharField
    trims white space, refuses a blank value unless the model allows it
    (``blank=True``), refuses NUL and surrogate characters and anything longer
    than ``max_length``; a ``choices`` field takes only its choices (or blank);
    a DateField takes ISO dates; an IntegerField a 32-bit integer;
    ``validate_path``, ``validate_pacs_name``, ``validate_ndicom`` and
    ``validate`` add the path's prefix and comma rules and ``ndicom >= 1``.
    """
    data = {k: v for k, v in arguments.items() if v is not None}
    missing = next((name for name in REQUIRED if name not in data), None)
    if missing is not None:
        return f"{missing}: This field is required."
    return _char_fields(data) or _typed_fields(data) or _cube_validators(data)


def _char_fields(data: dict[str, object]) -> str | None:
    """DRF's CharField: trimmed; no NUL, no surrogate, within max_length, not blank."""
    for name, value in data.items():
        if not isinstance(value, str):
            continue
        text = value.strip()
        if "\x00" in text:
            return f"{name}: Null characters are not allowed."
        if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
            return f"{name}: Surrogate characters are not allowed."
        if name in MAX_LENGTH and len(text) > MAX_LENGTH[name]:
            return f"{name}: Ensure this field has no more than {MAX_LENGTH[name]} characters."
        if not text and name in REQUIRED:
            return f"{name}: This field may not be blank."
    return None


def _typed_fields(data: dict[str, object]) -> str | None:
    """The choices field, the DateFields and the IntegerField."""
    if data.get("PatientSex", "") not in (*SEXES, ""):
        return f'PatientSex: "{data["PatientSex"]}" is not a valid choice.'
    for name in ("StudyDate", "PatientBirthDate"):
        if name in data:
            try:
                time.strptime(str(data[name]), "%Y-%m-%d")
            except ValueError:
                return f"{name}: Date has wrong format."
    age = data.get("PatientAge", 0)
    if not isinstance(age, int) or not -(2**31) <= age < 2**31:
        return "PatientAge: A valid integer is required."
    return None


def _cube_validators(data: dict[str, object]) -> str | None:
    """``validate_path``, ``validate_pacs_name``, ``validate_ndicom``, then ``validate``."""
    pacs_name, path = str(data["pacs_name"]), str(data["path"])
    if "," in path:
        return "path: Cannot contain commas."
    if not path.strip().strip("/").startswith("SERVICES/PACS/"):
        return "path: This field must start with 'SERVICES/PACS/'."
    if "/" in pacs_name or "," in pacs_name:
        return "pacs_name: Cannot contain commas or slashes."
    if not isinstance(data["ndicom"], int) or data["ndicom"] < 1:
        return "ndicom: This field must be a postive integer."
    if not path.startswith(f"SERVICES/PACS/{pacs_name}/"):
        return f"The path field must start with 'SERVICES/PACS/{pacs_name}/'."
    return None


@app.task(name="pacsfiles.tasks.register_pacs_series")
def register_pacs_series(  # noqa: PLR0917 - CUBE's signature, as it is
    PatientID: str,  # noqa: N803
    StudyDate: str,  # noqa: N803
    StudyInstanceUID: str,  # noqa: N803
    SeriesInstanceUID: str,  # noqa: N803
    pacs_name: str,
    path: str,
    ndicom: int,
    PatientName: str | None = None,  # noqa: N803
    PatientBirthDate: str | None = None,  # noqa: N803
    PatientAge: int | None = None,  # noqa: N803
    PatientSex: str | None = None,  # noqa: N803
    AccessionNumber: str | None = None,  # noqa: N803
    Modality: str | None = None,  # noqa: N803
    ProtocolName: str | None = None,  # noqa: N803
    StudyDescription: str | None = None,  # noqa: N803
    SeriesDescription: str | None = None,  # noqa: N803
) -> None:
    arguments = dict(locals())
    problem = validate(arguments)
    if problem is not None:
        _refuse(problem, SeriesInstanceUID=SeriesInstanceUID)
    folder = Path(os.environ["CUBE_STORAGE"]) / path
    deadline = time.monotonic() + 30
    while True:
        found = sorted(folder.glob("*.dcm")) if folder.is_dir() else []
        if len(found) == ndicom:
            break
        if len(found) > ndicom:
            _refuse("more files than ndicom", path=path, ndicom=ndicom, found=len(found))
        if time.monotonic() > deadline:
            _refuse("files missing after 30 s", path=path, ndicom=ndicom, found=len(found))
        time.sleep(0.5)
    with open(_registry(), "a+") as registry:
        fcntl.flock(registry, fcntl.LOCK_EX)
        registry.seek(0)
        for line in registry:
            known = json.loads(line)
            if (known["pacs_name"], known["SeriesInstanceUID"]) == (pacs_name, SeriesInstanceUID):
                _refuse("already registered", SeriesInstanceUID=SeriesInstanceUID)
        registry.write(json.dumps(arguments) + "\n")
