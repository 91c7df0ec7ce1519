"""watcher._destinations without a broker or a server: CUBE's Celery message as it leaves the
service, and the webhook's request.

kombu's in-memory transport (``memory://``) stands in for Redis or RabbitMQ (as
httpx's ``MockTransport`` stands in for the network): the message is read back
with kombu itself and checked field by field against what CUBE's worker takes.
The webhook speaks through its transport, here an in-memory one. The same
through real brokers, a Celery worker with CUBE's checks and a loopback HTTP
server is ``tests/test_handoff.py`` and ``tests/test_handoff_attacks.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import kombu
import orjson
import pytest

from watcher._destinations import (
    CELERY_TASK,
    CeleryRegistration,
    DeliveryError,
    HttpRequest,
    PermanentDeliveryError,
    Webhook,
)

from .cube_worker import validate


def _series(**fields: Any) -> dict[str, Any]:
    tags = {"StudyDate": "20240101", "PatientName": "Doe^Jane", "PatientBirthDate": "19700101",
            "PatientSex": "F", "Modality": "MR"}  # fmt: skip
    return {"SeriesInstanceUID": "1.2.3.4", "StudyInstanceUID": "1.2.3", "PatientID": "P1",
            "ndicom": 3, "path": "SERVICES/PACS/PYPX/P1/s", "pacs_name": "PYPX",
            "tags": tags, **fields}  # fmt: skip


@pytest.fixture
def sent() -> Iterator[tuple[CeleryRegistration, Any]]:
    """A registration on the in-memory broker, and a reader of its queue."""
    registration = CeleryRegistration("memory://", "main2", "PYPX")
    with kombu.Connection("memory://") as connection:
        queue = connection.SimpleQueue("main2")
        yield registration, queue
        queue.close()
    registration.close()


def test_the_task_message_is_cubes_with_the_key_as_its_id(sent: Any) -> None:
    registration, queue = sent
    registration.deliver("k-1", _series())
    message = queue.get(timeout=5)
    message.ack()
    assert message.content_type == "application/json"
    assert message.headers["task"] == CELERY_TASK
    assert message.headers["id"] == "k-1"  # a resend is the same task
    args, kwargs, _embed = message.payload
    assert args == []
    assert kwargs["StudyDate"] == "2024-01-01"  # CUBE's DateField
    assert kwargs["PatientBirthDate"] == "1970-01-01"
    assert kwargs["pacs_name"] == "PYPX"
    assert validate(kwargs) is None  # what CUBE's serializer decides


def test_no_patient_data_in_the_message_headers(sent: Any) -> None:
    """Brokers and Flower show the headers: Celery repeats every argument there by default."""
    registration, queue = sent
    registration.deliver("k-2", _series())
    message = queue.get(timeout=5)
    message.ack()
    headers = repr(message.headers)
    for value in ("Doe^Jane", "P1", "1970", "SERVICES/PACS"):
        assert value not in headers
    assert message.headers["kwargsrepr"] == "{'SeriesInstanceUID': '1.2.3.4'}"


def test_the_senders_pacs_name_is_the_one_registered(sent: Any) -> None:
    registration, queue = sent
    registration.deliver("k-3", _series(pacs_name="ORTHANC", path="SERVICES/PACS/ORTHANC/P1/s"))
    message = queue.get(timeout=5)
    message.ack()
    kwargs = message.payload[1]
    assert (kwargs["pacs_name"], kwargs["path"]) == ("ORTHANC", "SERVICES/PACS/ORTHANC/P1/s")


def test_a_send_that_ended_is_never_taken_for_an_overdue_one(sent: Any) -> None:
    """The send's thread outlives its ``ended`` signal by a moment: its life is not the test.

    (Taking it for one failed about one run in three under Python 3.13.)
    """
    registration, queue = sent
    for number in range(100):
        registration.deliver(f"k-many-{number}", _series())
    for _ in range(100):
        queue.get(timeout=5).ack()
    assert queue.qsize() == 0


def test_a_record_cube_would_refuse_is_refused_for_good_and_nothing_is_sent(sent: Any) -> None:
    registration, queue = sent
    with pytest.raises(PermanentDeliveryError, match="CUBE needs"):
        registration.deliver("k-4", _series(PatientID=""))
    assert queue.qsize() == 0


# -- the webhook, through an in-memory transport -------------------------------------


class MemoryHttp:
    """A webhook transport that answers ``statuses`` in turn and keeps each request."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.requests: list[HttpRequest] = []

    def __call__(self, request: HttpRequest) -> int:
        self.requests.append(request)
        return self.statuses.pop(0)


def test_a_webhook_posts_the_document_with_its_key() -> None:
    http = MemoryHttp(204)
    Webhook("https://lonk:s3cret@hooks.example/series?a=1", transport=http).deliver(
        "k-5", _series()
    )
    (request,) = http.requests
    assert request.target == "/series?a=1"
    assert request.headers["Idempotency-Key"] == "k-5"
    assert request.headers["Authorization"] == "Basic bG9uazpzM2NyZXQ="  # lonk:s3cret
    assert orjson.loads(request.body)["SeriesInstanceUID"] == "1.2.3.4"


@pytest.mark.parametrize(
    ("status", "said"), [(302, "a redirect is not a delivery"), (500, "answered 500")]
)
def test_a_webhook_answer_that_is_not_2xx_is_a_failure_without_secrets(
    status: int, said: str
) -> None:
    hook = Webhook("https://lonk:s3cret@hooks.example/x?token=t0ken", transport=MemoryHttp(status))
    with pytest.raises(DeliveryError, match=said) as raised:
        hook.deliver("k-6", _series())
    assert "s3cret" not in str(raised.value)
    assert "t0ken" not in str(raised.value)
