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

import base64
import contextlib
import functools
import http.client
import os
import re
import select
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import orjson

from ._cube import cube_registration
from ._series import QuietSeries

CELERY_TASK = "pacsfiles.tasks.register_pacs_series"
#: How long one delivery may take before it counts as failed.
DELIVERY_TIMEOUT_S = 30.0
#: The most of a webhook's answer that is read (its status is what counts).
_ANSWER_LIMIT = 64 * 1024
#: How long a command may run.
COMMAND_TIMEOUT_S = 300.0


def redacted(url: str) -> str:
    """A URL as it may be printed or stored: no user info (a password, a token) and no
    query value (``?token=...``), which can be secrets."""
    parsed = urllib.parse.urlsplit(url)
    netloc = parsed.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = "&".join(
        f"{name}=***" for name, _ in urllib.parse.parse_qsl(parsed.query, keep_blank_values=True)
    )
    return urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path, query, ""))


class DeliveryError(Exception):
    """A delivery failed; the record stays and is tried again later."""


class PermanentDeliveryError(DeliveryError):
    """The destination can never take this record: it is set aside (dead-lettered)."""


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


def dicom_names(folder: str) -> list[str]:
    """The ``.dcm`` files of a series folder (what CUBE counts), sorted."""
    try:
        with os.scandir(folder) as entries:
            return sorted(
                entry.name
                for entry in entries
                if entry.name.endswith(".dcm") and entry.is_file(follow_symlinks=False)
            )
    except OSError:
        return []


def pacs_name_of(
    folder: str, datadir: Path, pacs_name: str | None, *, by_sender: bool = False
) -> str | None:
    """CUBE's name of the PACS a series folder belongs to: ``pacs_name``, or with
    ``by_sender`` the sender's folder it is in (its first below the data folder)."""
    if not by_sender:
        return pacs_name
    return os.path.relpath(folder, datadir).split(os.sep, 1)[0]


def series_document(
    series: QuietSeries, datadir: Path, pacs_name: str | None, *, by_sender: bool = False
) -> dict[str, Any]:
    """What every destination is told about a completed series.

    ``ndicom`` is the number of ``.dcm`` files in its folder now (CUBE waits
    for exactly that many); ``path`` is that folder as CUBE names it,
    ``SERVICES/PACS/<pacs_name>/...``: the data folder is CUBE's
    ``SERVICES/PACS/<pacs_name>``, or with ``by_sender`` CUBE's ``SERVICES/PACS``,
    a folder per sender in it (:func:`pacs_name_of`).
    """
    relative = os.path.relpath(series.folder, datadir)
    pacs_name = pacs_name_of(series.folder, datadir, pacs_name, by_sender=by_sender)
    if by_sender:
        path = f"SERVICES/PACS/{relative}"
    else:
        path = f"SERVICES/PACS/{pacs_name}/{relative}" if pacs_name else relative
    return {
        "SeriesInstanceUID": series.series_uid,
        "StudyInstanceUID": series.study_uid,
        "PatientID": series.patient_id,
        "instances": series.instances,
        "resent": series.resends,
        "ndicom": len(dicom_names(series.folder)),
        "folder": series.folder,
        "path": path,
        "pacs_name": pacs_name,
        "receive_s": series.receive_s,
        "completed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tags": _series_tags(series.log_path),
    }


# -- CUBE's registration ------------------------------------------------------------


class CeleryRegistration:
    """Sends CUBE's registration task through a Redis or RabbitMQ broker.

    One deadline (``timeout``) for the whole exchange, connection and
    confirmation included: kombu's timeouts hold for each read, so a broker
    that answers a byte at a time would hold the hand-off for ever. The send
    runs on a thread of its own (``celery-send``); one that outlives its
    deadline is left to end (the broker's socket timeouts, or :meth:`close`),
    and until it has, every delivery fails at once, reported like a refusal:
    at most one thread waits on a broker, and the hand-off never does.
    """

    name = "celery"

    def __init__(
        self, broker: str, queue_name: str, pacs_name: str, *, timeout: float = DELIVERY_TIMEOUT_S
    ) -> None:
        from celery import Celery  # noqa: PLC0415 - only when a broker is configured

        self.app = Celery("pypx-listener", broker=broker, set_as_current=False)
        self.app.conf.update(
            task_serializer="json",
            accept_content=["json"],
            task_protocol=2,
            broker_connection_timeout=max(1.0, timeout / 3),
            broker_connection_retry_on_startup=False,
            # RabbitMQ: a publish is done when the broker confirmed it.
            broker_transport_options={
                "confirm_publish": True,
                "socket_timeout": max(1.0, timeout / 3),
            },
        )
        self.queue_name = queue_name
        self.pacs_name = pacs_name
        self.timeout = timeout
        self.broker, self.shown = broker, redacted(broker)
        #: The send that outlived its deadline, since when (monotonic), and its outcome.
        self._overdue: tuple[threading.Thread, float, list[Exception | None]] | None = None
        #: Set when the send in flight ended, or the service stops.
        self._ended = threading.Event()

    def _pacs_name(self, series: Mapping[str, Any]) -> str:
        """The series' own PACS name (a sender's, with ``--pacs-name-from caller``); the
        setting's for a record written before documents carried it."""
        return str(series.get("pacs_name") or self.pacs_name)

    def refuses(self, series: Mapping[str, Any]) -> str | None:
        """What CUBE would refuse (:mod:`watcher._cube`)."""
        return cube_registration(series, self._pacs_name(series)).refused

    def notes(self, series: Mapping[str, Any]) -> list[str]:
        """The optional fields CUBE would refuse, left out of the registration."""
        return cube_registration(series, self._pacs_name(series)).left_out

    def deliver(self, key: str, series: Mapping[str, Any]) -> None:
        registration = cube_registration(series, self._pacs_name(series))
        if registration.refused is not None:  # a record written before the rule existed
            raise PermanentDeliveryError(registration.refused)
        if self._overdue is not None:
            thread, since, ended_with = self._overdue
            if not ended_with and thread.is_alive():
                raise DeliveryError(
                    f"{self.shown}: the send before this one has had no whole answer"
                    f" for {time.monotonic() - since:.0f} s"
                )
            self._overdue = None
        # What the send ended with (None: taken), once it has: the thread may still be
        # alive for a moment after it set ``ended``, so its life is not the test.
        outcome: list[Exception | None] = []
        ended = self._ended = threading.Event()

        def send() -> None:
            try:
                self.app.send_task(
                    CELERY_TASK,
                    kwargs=registration.arguments,
                    queue=self.queue_name,
                    task_id=key,
                    retry=False,
                    # Celery's default repeats every argument in the message headers,
                    # where brokers and monitors (Flower) show them: no patient data there.
                    kwargsrepr=f"{{'SeriesInstanceUID': {series['SeriesInstanceUID']!r}}}",
                    argsrepr="()",
                )
                outcome.append(None)
            except Exception as error:  # kombu's and the transports' errors: "not taken"
                outcome.append(error)
            finally:
                ended.set()

        thread = threading.Thread(target=send, name="celery-send", daemon=True)
        started = time.monotonic()
        thread.start()
        ended.wait(self.timeout)
        if not outcome:  # still sending (or the service stops)
            self._overdue = (thread, started, outcome)
            raise DeliveryError(f"{self.shown}: no whole answer within {self.timeout:g} s")
        error = outcome[0]
        if error is not None:
            reason = str(error).replace(self.broker, self.shown)
            raise DeliveryError(f"{self.shown}: {type(error).__name__}: {reason}") from error

    def close(self) -> None:
        """Close the broker connections; a send in flight fails now (its record stays)."""
        self._ended.set()
        self.app.close()


# -- any consumer -----------------------------------------------------------------


class HttpRequest(NamedTuple):
    """One POST as a webhook's transport receives it."""

    target: str
    body: bytes
    headers: dict[str, str]


#: What sends a webhook's request and gives the answer's status: :func:`http_post`, or a
#: test's in-memory stand-in (as httpx's ``MockTransport``). Raises :class:`DeliveryError`.
HttpTransport = Callable[[HttpRequest], int]


class Webhook:
    """POSTs the series document; 2xx is delivered.

    A redirect is a failure (a client that follows a 302 re-sends as a GET
    without the body). ``user:password@`` in the URL is sent as Basic
    authentication and never shown. ``transport`` sends the request
    (:func:`http_post` for the URL, with one deadline for the whole exchange).
    """

    name = "webhook"

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DELIVERY_TIMEOUT_S,
        transport: HttpTransport | None = None,
    ) -> None:
        self.url, self.timeout = url, timeout
        self.shown = redacted(url)
        parsed = urllib.parse.urlsplit(url)
        self._target = urllib.parse.urlunsplit(("", "", parsed.path or "/", parsed.query, ""))
        self._authorization = None
        if parsed.username is not None:
            user = urllib.parse.unquote(parsed.username)
            password = urllib.parse.unquote(parsed.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            self._authorization = f"Basic {token}"
        self.transport = transport or functools.partial(http_post, url, timeout=timeout)

    def refuses(self, series: Mapping[str, Any]) -> str | None:
        return None

    def deliver(self, key: str, series: Mapping[str, Any]) -> None:
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": key,
            "User-Agent": "pypx-listener",
        }
        if self._authorization is not None:
            headers["Authorization"] = self._authorization
        status = self.transport(HttpRequest(self._target, orjson.dumps(series), headers))
        if 300 <= status < 400:
            raise DeliveryError(f"{self.shown} answered {status} (a redirect is not a delivery)")
        if not 200 <= status < 300:
            raise DeliveryError(f"{self.shown} answered {status}")

    def close(self) -> None:
        pass


def http_post(url: str, request: HttpRequest, *, timeout: float) -> int:
    """POST ``request`` to ``url``'s host; the answer's status.

    One deadline for the whole exchange (connect, send, the answer), not per
    read: a peer that answers a byte at a time fails like one that refuses.
    The answer is read bounded.
    """
    shown = redacted(url)
    parsed = urllib.parse.urlsplit(url)
    kind = http.client.HTTPSConnection if parsed.scheme == "https" else http.client.HTTPConnection
    connection = kind(parsed.hostname or "", parsed.port, timeout=timeout)
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        if connection.sock is not None:
            with contextlib.suppress(OSError):
                connection.sock.shutdown(socket.SHUT_RDWR)

    deadline = threading.Timer(timeout, expire)
    deadline.start()
    try:
        connection.request("POST", request.target, body=request.body, headers=request.headers)
        answer = connection.getresponse()
        answer.read(_ANSWER_LIMIT)
    except (OSError, http.client.HTTPException, ValueError) as error:
        if expired.is_set():
            raise DeliveryError(f"{shown}: no whole answer within {timeout:g} s") from error
        reason = str(error).replace(url, shown)
        raise DeliveryError(f"{shown}: {type(error).__name__}: {reason}") from error
    finally:
        deadline.cancel()
        connection.close()
    return answer.status


def _environment(key: str, series: Mapping[str, Any]) -> dict[str, str]:
    """``PYPX_SERIES_*``: the document's plain values. One holding a NUL (which no
    environment can carry) is left out: the whole document is on stdin as JSON."""
    variables = {"PYPX_SERIES_KEY": key}
    for name, value in series.items():
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).upper()
            if "\0" not in str(value):
                variables[f"PYPX_SERIES_{snake}"] = str(value)
    return variables


#: What a command inherits of the service's environment; the rest (passwords among
#: it) stays with the service.
COMMAND_INHERITS = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR")
#: How much of a command's stderr is kept (its end, for the error message).
_STDERR_TAIL = 4096


class Command:
    """Runs an argv with the series on stdin and in the environment; exit 0 is delivered.

    Its environment is :data:`COMMAND_INHERITS` of the service's and the
    ``PYPX_SERIES_*`` variables; its stderr is read as it comes, keeping only
    its end; it runs in a session of its own, whose whole process group is
    ended when it runs too long and when the service stops.
    """

    name = "command"

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)
        self._running: subprocess.Popen[bytes] | None = None

    def refuses(self, series: Mapping[str, Any]) -> str | None:
        return None

    def deliver(self, key: str, series: Mapping[str, Any]) -> None:
        inherited = {name: os.environ[name] for name in COMMAND_INHERITS if name in os.environ}
        try:
            process = subprocess.Popen(
                self.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env={**inherited, **_environment(key, series)},
                start_new_session=True,
            )
        except (OSError, ValueError) as error:
            raise DeliveryError(f"cannot run {self.argv[0]}: {error}") from error
        self._running = process
        try:
            tail = _run_bounded(process, orjson.dumps(series), COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired as error:
            raise DeliveryError(
                f"{self.argv[0]} ran longer than {COMMAND_TIMEOUT_S:g} s"
            ) from error
        finally:
            self._running = None
            _end_group(process)
        if process.returncode != 0:
            said = tail.decode(errors="replace").strip().splitlines()[-1:] or [""]
            raise DeliveryError(f"{self.argv[0]} exited {process.returncode}: {said[0][:200]}")

    def close(self) -> None:
        """End a command still running (the service stops), its children too."""
        process = self._running
        if process is not None:
            _end_group(process)


def _end_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)


def _run_bounded(process: subprocess.Popen[bytes], data: bytes, timeout: float) -> bytes:
    """Feed ``data`` to stdin, read stderr keeping its last :data:`_STDERR_TAIL` bytes,
    wait for the exit; all within ``timeout`` seconds (else TimeoutExpired)."""
    assert process.stdin is not None  # noqa: S101 - Popen made it a pipe
    assert process.stderr is not None  # noqa: S101
    deadline = time.monotonic() + timeout
    with contextlib.suppress(BrokenPipeError):  # a command need not read its stdin
        process.stdin.write(data)  # a few kilobytes: within the pipe's buffer
    with contextlib.suppress(BrokenPipeError):
        process.stdin.close()
    tail = b""
    errors = process.stderr.fileno()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise subprocess.TimeoutExpired(process.args, timeout)
        if not select.select([errors], [], [], left)[0]:
            continue
        chunk = os.read(errors, 65536)
        if not chunk:
            break
        tail = (tail + chunk)[-_STDERR_TAIL:]
    process.stderr.close()
    process.wait(max(0.0, deadline - time.monotonic()))
    return tail
