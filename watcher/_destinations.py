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
series, the first and the last always (:class:`LonkProgress`).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import queue
import re
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import orjson

__all__ = [
    "CELERY_TASK",
    "CeleryRegistration",
    "Command",
    "DeliveryError",
    "Destination",
    "LonkDone",
    "LonkProgress",
    "NatsConnection",
    "Webhook",
    "celery_arguments",
    "lonk_subject",
    "patient_age_days",
]

CELERY_TASK = "pacsfiles.tasks.register_pacs_series"
#: LONK message types (https://chrisproject.org/docs/oxidicom, "LONK").
LONK_DONE, LONK_PROGRESS, LONK_ERROR = b"\x00", b"\x01", b"\x02"
#: How long one delivery may take before it counts as failed.
DELIVERY_TIMEOUT_S = 30.0
#: How long a command may run.
COMMAND_TIMEOUT_S = 300.0
_NOT_DEFINED = "Not defined"  # px's value for an absent element


class DeliveryError(Exception):
    """A delivery failed; the record stays and is tried again later."""


class Destination(Protocol):
    name: str

    def deliver(self, key: str, series: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


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
        "StudyDate": _date(_tag(series, "StudyDate")) or "1900-01-01",
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


# -- LONK on NATS -------------------------------------------------------------------


def lonk_subject(pacs_name: str, series_uid: str) -> str:
    """``oxidicom.<pacs_name>.<SeriesInstanceUID>``, each part made a valid subject token."""

    def token(text: str) -> str:
        return re.sub(r"[ .*>]", "_", text).replace("\0", "")

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
        self._lock = threading.Lock()

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
        """Publish ``(subject, payload)`` pairs and wait until the server has them."""
        with self._lock:
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
        with self._lock:
            self.close_locked()


class LonkDone:
    """The LONK "done" message of a completed series, after its registration."""

    name = "nats"

    def __init__(self, nats: NatsConnection, pacs_name: str) -> None:
        self.nats = nats
        self.pacs_name = pacs_name

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
        self._queue: queue.Queue[tuple[str, int] | None] = queue.Queue(maxsize=1024)
        self._thread = threading.Thread(target=self._publish, name="lonk-progress", daemon=True)
        self._thread.start()

    def count(self, series_uid: str, instances: int) -> None:
        now = time.monotonic()
        last = self._last.get(series_uid)
        if last is not None and now - last < self.interval:
            return
        self._last[series_uid] = now
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait((series_uid, instances))

    def forget(self, series_uid: str) -> None:
        """The series is complete (its last count goes with its "done" record)."""
        self._last.pop(series_uid, None)

    def _publish(self) -> None:
        while (item := self._queue.get()) is not None:
            series_uid, instances = item
            try:
                self.nats.publish(
                    [
                        (
                            lonk_subject(self.pacs_name, series_uid),
                            LONK_PROGRESS + struct.pack("<I", instances),
                        )
                    ]
                )
            except DeliveryError:
                continue  # progress is news: the next count, or the record, says more

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(5)


# -- any consumer -----------------------------------------------------------------


class Webhook:
    """POSTs the series document; 2xx is delivered."""

    name = "webhook"

    def __init__(self, url: str) -> None:
        self.url = url

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
