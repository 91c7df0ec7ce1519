"""CUBE's registration task, as a real Celery worker runs it in tests.

The task has ``pacsfiles.tasks.register_pacs_series``'s exact signature and
CUBE's checks (read from ChRIS_ultron_backEnd's ``pacsfiles``): ``path`` is
below ``SERVICES/PACS/<pacs_name>/`` and has no comma; ``pacs_name`` has at
most 20 characters; the storage is listed for up to 30 s until exactly
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
    if len(pacs_name) > 20:
        _refuse("pacs_name longer than 20 characters", pacs_name=pacs_name)
    if not path.startswith(f"SERVICES/PACS/{pacs_name}/") or "," in path:
        _refuse("invalid path", path=path)
    time.strptime(StudyDate, "%Y-%m-%d")  # a DateField: raises on anything else
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
