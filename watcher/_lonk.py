"""LONK, the Light Oxidicom NotifiKations CUBE relays to ChRIS_ui, over NATS.

Subject ``oxidicom.<pacs_name>.<SeriesInstanceUID>`` (space, ``.``, ``*`` and
``>`` made ``_``); payload ``0x01`` + the instance count as a little-endian u32
(progress), ``0x00`` (done), ``0x02`` + UTF-8 text (an error). Spoken with
NATS's text protocol over TCP (:class:`NatsConnection`): a publish is
confirmed by the PONG to the PING that follows it.
"""

from __future__ import annotations

import contextlib
import queue
import re
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from ._cube import valid_uid
from ._destinations import DELIVERY_TIMEOUT_S, DeliveryError

__all__ = [
    "LONK_DONE",
    "LONK_ERROR",
    "LONK_PROGRESS",
    "LonkDone",
    "LonkProgress",
    "NatsConnection",
    "lonk_subject",
]

#: LONK message types.
LONK_DONE, LONK_PROGRESS, LONK_ERROR = b"\x00", b"\x01", b"\x02"


def lonk_subject(pacs_name: str, series_uid: str) -> str:
    """``oxidicom.<pacs_name>.<SeriesInstanceUID>``, each part made a valid subject token.

    Dots become ``_`` (oxidicom's subjects); so does anything else but a letter,
    a digit, ``-`` or ``_``: white space or a line end would end the protocol's
    line and forge another message.
    """

    def token(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9_-]", "_", text)

    return f"oxidicom.{token(pacs_name)}.{token(series_uid)}"


def _refused(line: bytes) -> DeliveryError:
    return DeliveryError(f"NATS: {line[5:].decode(errors='replace')}")


class NatsConnection:
    """A minimal NATS client (the text protocol over TCP): publish, and flush by PING/PONG.

    One connection, opened when first needed and again after a failure;
    thread-safe. Publishing is confirmed by the PONG to the PING that
    follows it: the server has processed every message before it.
    """

    def __init__(self, url: str) -> None:
        parsed = urllib.parse.urlparse(url if "://" in url else f"nats://{url}")
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 4222
        self._user, self._password = parsed.username, parsed.password
        self._socket: socket.socket | None = None
        self._buffer = b""
        #: Held for each publish; a caller may hold it across a check and a publish.
        self.lock = threading.RLock()

    def _connect(self) -> socket.socket:
        connection = socket.create_connection(
            (self.host, self.port), timeout=DELIVERY_TIMEOUT_S / 3
        )
        self._socket, self._buffer = connection, b""
        info = self._line()
        if not info.startswith(b"INFO "):
            raise DeliveryError(f"not a NATS server at {self.host}:{self.port}: {info[:60]!r}")
        options: dict[str, Any] = {
            "verbose": False,
            "pedantic": False,
            "name": "pypx-listener",
            "lang": "python",
            "version": "0",
            "protocol": 0,
        }
        if self._user:
            options.update(
                user=urllib.parse.unquote(self._user),
                **{"pass": urllib.parse.unquote(self._password or "")},
            )
        connection.sendall(b"CONNECT " + orjson.dumps(options) + b"\r\n")
        return connection

    def _line(self) -> bytes:
        assert self._socket is not None  # noqa: S101 - connected by the caller
        while b"\r\n" not in self._buffer:
            chunk = self._socket.recv(4096)
            if not chunk:
                raise OSError("the NATS server closed the connection")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\r\n", 1)
        return line

    def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish ``(subject, payload)`` pairs and wait until the server has them.

        Under :attr:`lock` (reentrant: a caller may hold it across a check and a publish).
        """
        with self.lock:
            try:
                connection = self._socket or self._connect()
                frames = b"".join(
                    b"PUB %s %d\r\n%s\r\n" % (subject.encode(), len(payload), payload)
                    for subject, payload in messages
                )
                connection.sendall(frames + b"PING\r\n")
                while True:
                    line = self._line()
                    if line == b"PONG":
                        return
                    if line == b"PING":
                        connection.sendall(b"PONG\r\n")
                    elif line.startswith(b"-ERR"):
                        raise _refused(line)
            except (OSError, DeliveryError) as error:
                self.close_locked()
                if isinstance(error, DeliveryError):
                    raise
                raise DeliveryError(f"NATS {self.host}:{self.port}: {error}") from error

    def close_locked(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def close(self) -> None:
        with self.lock:
            self.close_locked()


class LonkDone:
    """The LONK "done" message of a completed series, after its registration."""

    name = "nats"

    def __init__(self, nats: NatsConnection, pacs_name: str) -> None:
        self.nats = nats
        self.pacs_name = pacs_name

    def refuses(self, series: Mapping[str, Any]) -> str | None:
        """A subject is made of the UID: anything but a DICOM UID could forge another."""
        if not valid_uid(series.get("SeriesInstanceUID")):
            return "SeriesInstanceUID is not a valid DICOM UID (digits and dots, at most 64)"
        return None

    def deliver(self, key: str, series: Mapping[str, Any]) -> None:
        subject = lonk_subject(self.pacs_name, series["SeriesInstanceUID"])
        messages = [(subject, LONK_PROGRESS + struct.pack("<I", series["ndicom"]))]
        error = series.get("error")
        if error:
            messages.append((subject, LONK_ERROR + str(error).encode()))
        messages.append((subject, LONK_DONE))
        self.nats.publish(messages)

    def close(self) -> None:
        self.nats.close()


class LonkProgress:
    """Progress of series being received: at most one message per series and interval.

    Called on the pool threads with each new instance count; a thread of its
    own publishes, so a slow or absent NATS server never slows repacking
    (messages that find the queue full are dropped: the next count says more).
    """

    def __init__(self, nats: NatsConnection, pacs_name: str, interval: float) -> None:
        self.nats, self.pacs_name, self.interval = nats, pacs_name, interval
        self._last: dict[str, float] = {}
        #: Per series, how often it completed: a count queued before that is stale.
        self._epochs: dict[str, int] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, int, int] | None] = queue.Queue(maxsize=1024)
        self.thread = threading.Thread(target=self._publish, name="lonk-progress", daemon=True)
        self.thread.start()

    def count(self, series_uid: str, instances: int) -> None:
        if not valid_uid(series_uid):
            return  # the series is refused at its end: no progress either
        now = time.monotonic()
        with self._lock:
            last = self._last.get(series_uid)
            if last is not None and now - last < self.interval:
                return
            self._last[series_uid] = now
            epoch = self._epochs.get(series_uid, 0)
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait((series_uid, instances, epoch))

    def forget(self, series_uid: str) -> None:
        """The series is complete: its last count goes with its "done" record, and no count
        queued before now may follow that."""
        with self._lock:
            self._last.pop(series_uid, None)
            if len(self._epochs) >= 4096:  # bounded: it only guards counts still queued
                self._epochs.clear()
            self._epochs[series_uid] = self._epochs.get(series_uid, 0) + 1

    def _publish(self) -> None:
        while (item := self._queue.get()) is not None:
            series_uid, instances, epoch = item
            subject = lonk_subject(self.pacs_name, series_uid)
            try:
                with self.nats.lock:
                    with self._lock:
                        if self._epochs.get(series_uid, 0) != epoch:
                            continue  # the series completed since: its "done" may be out
                    self.nats.publish([(subject, LONK_PROGRESS + struct.pack("<I", instances))])
            except DeliveryError:
                continue  # progress is news: the next count, or the record, says more

    def stop(self) -> None:
        self._queue.put(None)
        self.thread.join(5)
