"""LONK, the Light Oxidicom NotifiKations CUBE relays to ChRIS_ui, over NATS.

Subject ``oxidicom.<pacs_name>.<SeriesInstanceUID>`` (anything but a letter, a
digit, ``-`` and ``_`` made ``_``); payload ``0x01`` + the instance count as a little-endian u32
(progress), ``0x00`` (done), ``0x02`` + UTF-8 text (an error). Spoken with
nats-py (:class:`NatsConnection`, as CUBE's own relay): a publish is
confirmed by a flush, the PONG to the PING that follows it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import queue
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import nats.errors
import orjson
from nats.aio.client import Client as NatsClient

from repack.plumbing import token

from ._cube import valid_uid
from ._destinations import DELIVERY_TIMEOUT_S, DeliveryError

#: LONK message types.
LONK_DONE, LONK_PROGRESS, LONK_ERROR = b"\x00", b"\x01", b"\x02"


def lonk_subject(pacs_name: str, series_uid: str) -> str:
    """``oxidicom.<pacs_name>.<SeriesInstanceUID>``, each part made a valid subject token.

    Dots become ``_`` (oxidicom's subjects); so does anything else but a letter,
    a digit, ``-`` or ``_``: white space or a line end would end the protocol's
    line and forge another message.
    """
    return f"oxidicom.{token(pacs_name)}.{token(series_uid)}"


#: The longest INFO line read before connecting.
_MAX_INFO = 64 * 1024


def _server_info(host: str, port: int, timeout: float) -> dict[str, Any]:
    """The INFO line of the NATS server at ``host:port``, read within ``timeout`` seconds.

    Asked before nats-py connects: a peer that is silent, or not a NATS server, fails
    here, on a socket this closes, and nats-py never opens a connection to it."""
    with socket.create_connection((host, port), timeout=timeout) as probe:
        probe.settimeout(timeout)
        line = b""
        deadline = time.monotonic() + timeout
        while b"\r\n" not in line:
            if len(line) > _MAX_INFO or time.monotonic() > deadline:
                raise OSError("no INFO line from the NATS server")
            chunk = probe.recv(4096)
            if not chunk:
                raise OSError("the NATS server closed the connection")
            line += chunk
    info = line.split(b"\r\n", 1)[0]
    if not info.startswith(b"INFO "):
        raise OSError(f"not a NATS server: {info[:60]!r}")
    try:
        parsed = orjson.loads(info[5:])
    except orjson.JSONDecodeError as error:
        raise OSError(f"not a NATS server: {info[:60]!r}") from error
    if not isinstance(parsed, dict):
        raise OSError(f"not a NATS server: {info[:60]!r}")
    return parsed


#: How often the loop's thread checks how busy the server keeps it.
_GUARD_S = 1.0
#: The share of one core the loop's thread may use over a check's interval.
_BUSY_SHARE = 0.5


def _address(url: str) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(url)
    return parsed.hostname or "127.0.0.1", parsed.port or 4222


async def _close_quietly(client: Any) -> None:
    if client is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 2)


async def _shut_down(client: Any) -> None:
    """Close the client, and end whatever else still runs on the loop."""
    await _close_quietly(client)
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


class Publisher(Protocol):
    """What LONK needs of a NATS client (the seam of :class:`LonkDone` and
    :class:`LonkProgress`): :class:`NatsConnection`, or a test's in-memory fake."""

    @property
    def lock(self) -> AbstractContextManager[Any]:
        """Held for each publish; a caller may hold it across a check and a publish."""
        ...

    @property
    def thread(self) -> threading.Thread:
        """The client's own thread, watched with the service's."""
        ...

    def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish ``(subject, payload)`` pairs; raise :class:`DeliveryError` if not taken."""
        ...

    def close(self) -> None: ...


class NatsConnection:
    """A NATS client (nats-py, as CUBE's own LONK relay) behind a synchronous wrapper.

    nats-py is asynchronous: its event loop runs in a thread of its own
    (:attr:`thread`), where it also answers the server's PINGs, so an idle
    connection stays open; it reconnects after a server restart. Each call has
    one deadline for the whole exchange. A publish is confirmed by a flush (the
    PONG to a PING that follows it): the server has processed every message
    before it. The URL may carry a user and password or a token; ``tls://``
    connects only to a server that requires TLS (verified with the system's
    certificates, or ``SSL_CERT_FILE``), never in plain text.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = DELIVERY_TIMEOUT_S,
        nkey_seed_file: str | None = None,
        credentials_file: str | None = None,
    ) -> None:
        """``url``: one server, or a cluster's, comma-separated; ``nkey_seed_file``: a file
        holding an nkey seed (``SU...``); ``credentials_file``: a NATS ``.creds`` file (a
        user JWT and its seed), as the ``nats`` CLI's ``--nkey`` and ``--creds``."""
        self.urls = [u if "://" in u else f"nats://{u}" for u in url.split(",") if u.strip()]
        schemes = {urllib.parse.urlsplit(u).scheme for u in self.urls}
        self.tls = "tls" in schemes
        if self.tls and schemes != {"tls"}:
            raise ValueError("a cluster's URLs are all tls:// or none: never plain text")
        #: The server spoken to (the one that answered the last probe), for messages.
        self.host, self.port = _address(self.urls[0])
        self.timeout = timeout
        self.nkey_seed_file, self.credentials_file = nkey_seed_file, credentials_file
        #: Held for each publish; a caller may hold it across a check and a publish.
        self.lock = threading.RLock()
        self._loop = asyncio.new_event_loop()
        self._client: Any = None
        #: When a connection was last dropped for keeping the loop busy (wall clock).
        self.flooded: float | None = None
        #: The publish in flight on the loop, which the guard may cancel.
        self._exchange: asyncio.Task[None] | None = None
        self.thread = threading.Thread(target=self._loop.run_forever, name="nats", daemon=True)
        self.thread.start()
        self._guarding = asyncio.run_coroutine_threadsafe(self._guard(), self._loop)

    def _call(self, coroutine: Any, timeout: float) -> Any:
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.CancelledError as error:  # by the guard
            raise DeliveryError(
                f"NATS {self.host}:{self.port}: the server kept this service busy (a flood?);"
                " the connection was closed"
            ) from error
        except concurrent.futures.TimeoutError as error:
            future.cancel()
            # A server that took the whole deadline is not trusted with the next exchange.
            asyncio.run_coroutine_threadsafe(self._drop(), self._loop)
            raise DeliveryError(
                f"NATS {self.host}:{self.port}: no answer within {timeout:g} s"
            ) from error

    async def _drop(self) -> None:
        """Close the connection; the next exchange makes a new one."""
        client, self._client = self._client, None
        await _close_quietly(client)

    async def _guard(self) -> None:
        """Drop a connection whose server keeps the loop's thread busy.

        nats-py reads what the server sends without a bound: a server that
        floods one line without a line end makes its parser scan an ever
        longer buffer, a core burnt and memory grown for as long as the
        connection lasts. The loop's own CPU time is the public measure of
        that: over :data:`_BUSY_SHARE` of a core for a :data:`_GUARD_S`
        interval, and the connection is closed (``flooded`` says when).
        """
        used = time.thread_time()
        while True:
            await asyncio.sleep(_GUARD_S)
            now = time.thread_time()
            busy, used = now - used, now
            if busy > _GUARD_S * _BUSY_SHARE and self._client is not None:
                self.flooded = time.time()
                if self._exchange is not None:
                    self._exchange.cancel()  # nats-py's flush would wait out its timeout
                await self._drop()
                used = time.thread_time()

    async def _connected(self) -> Any:
        client = self._client
        if client is not None and not client.is_closed:
            return client
        info, first = await asyncio.to_thread(self._probe)
        if self.tls and not info.get("tls_required"):
            raise DeliveryError(
                f"NATS {self.host}:{self.port} does not require TLS: a tls:// URL never"
                " connects in plain text"
            )

        async def quiet(_error: Exception) -> None:
            return  # nats-py's errors surface as failed publishes: said there, once

        client = NatsClient()
        try:
            await client.connect(
                # The server that answered first; the others after it, as listed.
                servers=[first, *(u for u in self.urls if u != first)],
                dont_randomize=True,
                nkeys_seed=self.nkey_seed_file,
                user_credentials=self.credentials_file,
                name="pypx-listener",
                connect_timeout=max(1, int(self.timeout / 3)),
                reconnect_time_wait=1,
                max_reconnect_attempts=-1,
                allow_reconnect=True,
                error_cb=quiet,
                verbose=False,
                pedantic=False,
            )
        except BaseException:
            await _close_quietly(client)  # what a failed connect opened
            raise
        self._client = client
        return client

    def _probe(self) -> tuple[dict[str, Any], str]:
        """The INFO of the first server that answers, and its URL."""
        reasons = []
        for url in self.urls:
            host, port = _address(url)
            try:
                info = _server_info(host, port, self.timeout / 3 / len(self.urls))
            except OSError as error:
                if len(self.urls) == 1:
                    raise
                reasons.append(f"{host}:{port}: {error}")
                continue
            self.host, self.port = host, port
            return info, url
        raise OSError("; ".join(reasons))

    async def _publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        client = await self._connected()
        self._exchange = asyncio.current_task()
        try:
            for subject, payload in messages:
                await client.publish(subject, payload)
            await client.flush(timeout=max(1, int(self.timeout / 2)))
        except BaseException:
            await self._drop()  # a server that failed an exchange gets a new connection
            raise
        finally:
            self._exchange = None

    def publish(self, messages: Sequence[tuple[str, bytes]]) -> None:
        """Publish ``(subject, payload)`` pairs and wait until the server has them.

        Under :attr:`lock` (reentrant: a caller may hold it across a check and a publish).
        """
        with self.lock:
            if not self.thread.is_alive():
                raise DeliveryError(f"NATS {self.host}:{self.port}: closed (the service stops)")
            try:
                self._call(self._publish(messages), self.timeout)
            except DeliveryError:
                raise
            except (TimeoutError, OSError, nats.errors.Error) as error:
                reason = f"{type(error).__name__}: {error}".rstrip(": ")
                raise DeliveryError(f"NATS {self.host}:{self.port}: {reason}") from error

    def close(self, timeout: float = 2.0) -> None:
        """Close the connection and end the loop's thread, within ``timeout`` seconds
        (a server that never answers does not hold up the service's stop)."""
        client, self._client = self._client, None
        if self.thread.is_alive():
            with contextlib.suppress(Exception):
                self._call(_shut_down(client), timeout)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self.thread.join(timeout)
        if not self.thread.is_alive() and not self._loop.is_closed():
            self._loop.close()


class LonkDone:
    """The LONK "done" message of a completed series, after its registration."""

    name = "nats"

    def __init__(self, nats: Publisher, pacs_name: str) -> None:
        self.nats = nats
        self.pacs_name = pacs_name

    def refuses(self, series: Mapping[str, Any]) -> str | None:
        """A subject is made of the UID: anything but a DICOM UID could forge another."""
        if not valid_uid(series.get("SeriesInstanceUID")):
            return "SeriesInstanceUID is not a valid DICOM UID (digits and dots, at most 64)"
        return None

    def deliver(self, key: str, series: Mapping[str, Any]) -> None:
        pacs_name = str(series.get("pacs_name") or self.pacs_name)  # a sender's, or the one
        subject = lonk_subject(pacs_name, series["SeriesInstanceUID"])
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

    def __init__(self, nats: Publisher, interval: float) -> None:
        self.nats, self.interval = nats, interval
        self._last: dict[str, float] = {}
        #: Per series, how often it completed: a count queued before that is stale.
        self._epochs: dict[str, int] = {}
        self._lock = threading.Lock()
        #: Series whose refusal was said (each once; bounded).
        self._refused: set[str] = set()
        #: (series UID, subject, payload, epoch), or None to stop.
        self._queue: queue.Queue[tuple[str, str, bytes, int] | None] = queue.Queue(maxsize=1024)
        self.thread = threading.Thread(target=self._publish, name="lonk-progress", daemon=True)
        self.thread.start()

    def count(self, pacs_name: str, series_uid: str, instances: int) -> None:
        """The series (of CUBE's PACS ``pacs_name``) has ``instances`` instances now."""
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
            self._queue.put_nowait(
                (
                    series_uid,
                    lonk_subject(pacs_name, series_uid),
                    LONK_PROGRESS + struct.pack("<I", instances),
                    epoch,
                )
            )

    def error(self, pacs_name: str, series_uid: str, message: str) -> None:
        """An instance of the series was refused (quarantined for CUBE): a LONK error, once
        per series, so that the UI is not left waiting for a series that never comes."""
        if not valid_uid(series_uid):
            return
        with self._lock:
            if series_uid in self._refused:
                return
            if len(self._refused) >= 4096:
                self._refused.clear()
            self._refused.add(series_uid)
            epoch = self._epochs.get(series_uid, 0)
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(
                (
                    series_uid,
                    lonk_subject(pacs_name, series_uid),
                    LONK_ERROR + message.encode()[:1000],
                    epoch,
                )
            )

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
            series_uid, subject, payload, epoch = item
            try:
                with self.nats.lock:
                    with self._lock:
                        if self._epochs.get(series_uid, 0) != epoch:
                            continue  # the series completed since: its "done" may be out
                    self.nats.publish([(subject, payload)])
            except DeliveryError:
                continue  # news: the next count, or the record, says more

    def stop(self) -> None:
        self._queue.put(None)
        self.thread.join(5)
