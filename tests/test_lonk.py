"""watcher._lonk without a server: LONK's messages, through an in-memory publisher.

:class:`~watcher._lonk.LonkDone` and :class:`~watcher._lonk.LonkProgress` speak
to a :class:`~watcher._lonk.Publisher`; here that is :class:`MemoryNats`, which
keeps what was published (as httpx's ``MockTransport`` stands in for the
network). The real client against a real nats-server is ``tests/test_nats.py``.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Sequence

import pytest

from watcher._destinations import DeliveryError
from watcher._lonk import LONK_DONE, LONK_ERROR, LONK_PROGRESS, LonkDone, LonkProgress

from .helpers import wait_for

UID = "1.2.840.1.2"
SUBJECT = "oxidicom.PYPX.1_2_840_1_2"


class MemoryNats:
    """A :class:`~watcher._lonk.Publisher` that keeps every message; ``refuse`` fails
    that many publishes first (a server that is down)."""

    def __init__(self, refuse: int = 0) -> None:
        self.lock = threading.RLock()
        self.thread = threading.current_thread()
        self.published: list[tuple[str, bytes]] = []
        self.refuse = refuse
        self.closed = False
        self.arrived = threading.Condition()

    def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        if self.refuse > 0:
            self.refuse -= 1
            raise DeliveryError("NATS 127.0.0.1:4222: refused")
        with self.arrived:
            self.published.extend(messages)
            self.arrived.notify_all()

    def close(self) -> None:
        self.closed = True


def _count(payload: bytes) -> int:
    assert payload[:1] == LONK_PROGRESS
    return int(struct.unpack("<I", payload[1:])[0])


def test_done_says_the_count_any_error_then_done_on_the_series_subject() -> None:
    nats = MemoryNats()
    done = LonkDone(nats, "PYPX")
    done.deliver("k", {"SeriesInstanceUID": UID, "ndicom": 192, "error": "late instances"})
    (s1, count), (s2, error), (s3, last) = nats.published
    assert s1 == s2 == s3 == SUBJECT
    assert _count(count) == 192
    assert error == LONK_ERROR + b"late instances"
    assert last == LONK_DONE


def test_done_goes_to_the_senders_pacs_when_the_series_names_one() -> None:
    nats = MemoryNats()
    LonkDone(nats, "FALLBACK").deliver(
        "k", {"SeriesInstanceUID": UID, "ndicom": 1, "pacs_name": "ORTHANC"}
    )
    assert {subject for subject, _ in nats.published} == {"oxidicom.ORTHANC.1_2_840_1_2"}


def test_a_refused_publish_is_a_failed_delivery_and_close_closes_the_client() -> None:
    nats = MemoryNats(refuse=1)
    done = LonkDone(nats, "PYPX")
    with pytest.raises(DeliveryError):
        done.deliver("k", {"SeriesInstanceUID": UID, "ndicom": 1})
    done.deliver("k", {"SeriesInstanceUID": UID, "ndicom": 1})
    assert nats.published[-1] == (SUBJECT, LONK_DONE)
    done.close()
    assert nats.closed


@pytest.mark.parametrize("uid", ["1.2\r\nPUB x 1", "", "1..2", "abc"])
def test_done_refuses_a_series_whose_uid_could_forge_a_subject(uid: str) -> None:
    assert LonkDone(MemoryNats(), "PYPX").refuses({"SeriesInstanceUID": uid}) is not None


def _published(nats: MemoryNats, count: int) -> list[tuple[str, bytes]]:
    with nats.arrived:
        assert nats.arrived.wait_for(lambda: len(nats.published) >= count, timeout=10)
        return list(nats.published)


def test_progress_sends_at_most_one_count_per_interval_and_the_first_always() -> None:
    nats = MemoryNats()
    progress = LonkProgress(nats, interval=3600.0)
    try:
        for count in range(1, 11):
            progress.count("PYPX", UID, count)
        (only,) = _published(nats, 1)
        assert only == (SUBJECT, LONK_PROGRESS + struct.pack("<I", 1))
        progress.forget(UID)  # the series completed: the next one is a first again
        progress.count("PYPX", UID, 1)
        assert len(_published(nats, 2)) == 2
    finally:
        progress.stop()
    assert not progress.thread.is_alive()


def test_a_count_queued_before_the_series_completed_is_never_sent_after_it() -> None:
    """Its "done" may be out already: a stale count after it would reopen the series."""
    nats = MemoryNats()
    progress = LonkProgress(nats, interval=0.0)
    try:
        with nats.lock:  # the publishing thread waits here, the count queued
            progress.count("PYPX", UID, 5)
            progress.forget(UID)
        progress.count("PYPX", "1.2.3", 1)  # another series, to know the queue moved on
        wait_for(lambda: any(s.endswith("1_2_3") for s, _ in nats.published), 10, "the other")
        assert all(not s.endswith("1_2_840_1_2") for s, _ in nats.published)
    finally:
        progress.stop()


def test_a_refusal_is_said_once_per_series_on_the_senders_subject() -> None:
    nats = MemoryNats()
    progress = LonkProgress(nats, interval=3600.0)
    try:
        for _ in range(3):
            progress.error("ORTHANC", UID, "CUBE needs a StudyDate")
        ((subject, payload),) = _published(nats, 1)
        assert subject == "oxidicom.ORTHANC.1_2_840_1_2"
        assert payload == LONK_ERROR + b"CUBE needs a StudyDate"
    finally:
        progress.stop()


def test_progress_of_a_series_that_is_not_a_dicom_uid_is_never_published() -> None:
    nats = MemoryNats()
    progress = LonkProgress(nats, interval=0.0)
    try:
        progress.count("PYPX", "1.2\r\nPUB x", 3)
        progress.error("PYPX", "", "x")
        progress.count("PYPX", "1.2.3", 1)
        assert _published(nats, 1) == [
            ("oxidicom.PYPX.1_2_3", LONK_PROGRESS + struct.pack("<I", 1))
        ]
    finally:
        progress.stop()


def test_a_server_that_refuses_news_loses_news_only() -> None:
    """Progress is news: a failed publish is dropped; the next count says more."""
    nats = MemoryNats(refuse=1)
    progress = LonkProgress(nats, interval=0.0)
    try:
        progress.count("PYPX", UID, 1)
        progress.count("PYPX", UID, 2)
        ((_, payload),) = _published(nats, 1)
        assert _count(payload) == 2
    finally:
        progress.stop()
