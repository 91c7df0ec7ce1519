"""A small HTTP server for probes and scrapes that never waits on one client.

The port is reachable from outside the pod, so no client may keep the answer
from the kubelet: one thread serves every connection from one selector with
non-blocking sockets (a slowloris client costs a slot, never the thread);
each connection has :data:`REQUEST_TIMEOUT` seconds for the whole exchange;
at most :data:`MAX_CONNECTIONS` are open, a new one closing the oldest. An
answer (``answer(path)``) is computed on the serving thread and must not
block; every answer closes its connection.
"""

from __future__ import annotations

import collections
import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus

#: Connections open at once; one more closes the oldest.
MAX_CONNECTIONS = 64
#: Seconds a connection has for its whole request and answer.
REQUEST_TIMEOUT = 5.0
#: The longest request head read (request line and headers).
MAX_REQUEST_BYTES = 8192
#: An answer: the status, the content type and the body.
Answer = tuple[int, str, bytes]

_ACCEPTS_PER_ROUND = 64


@dataclass(eq=False)
class _Client:
    connection: socket.socket
    deadline: float
    received: bytearray = field(default_factory=bytearray)
    outgoing: memoryview | None = None


class ProbeServer:
    """Serves ``answer(path)`` for GET and HEAD requests; see the module docstring.

    Binds its port when constructed (an :class:`OSError` then means the port
    cannot be served), so a port in use is found before the service starts.
    """

    def __init__(self, host: str, port: int, answer: Callable[[str], Answer]) -> None:
        self.answer = answer
        self._listener = socket.create_server((host, port), backlog=128)
        self._listener.setblocking(False)
        self.port = int(self._listener.getsockname()[1])
        self._selector = selectors.DefaultSelector()
        self._clients: collections.OrderedDict[_Client, None] = collections.OrderedDict()
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, name="metrics", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"\0")
        if self.thread.is_alive():
            self.thread.join(timeout)
        elif not self.thread.ident:  # never started: nothing else closes them
            self._close_all()

    # -- the loop ------------------------------------------------------------

    def _serve(self) -> None:
        selector = self._selector
        selector.register(self._listener, selectors.EVENT_READ, None)
        selector.register(self._wake_reader, selectors.EVENT_READ, self._wake_reader)
        try:
            while not self._stopping.is_set():
                for key, mask in selector.select(self._next_timeout()):
                    if key.data is None:
                        self._accept()
                    elif isinstance(key.data, _Client):
                        if mask & selectors.EVENT_READ:
                            self._read(key.data)
                        if mask & selectors.EVENT_WRITE and key.data in self._clients:
                            self._write(key.data)
                self._expire(time.monotonic())
        finally:
            self._close_all()

    def _next_timeout(self) -> float:
        oldest = next(iter(self._clients), None)
        if oldest is None:
            return 1.0
        return min(1.0, max(0.0, oldest.deadline - time.monotonic()))

    def _accept(self) -> None:
        for _ in range(_ACCEPTS_PER_ROUND):
            try:
                connection, _address = self._listener.accept()
            except BlockingIOError:
                return
            except OSError:
                # Out of descriptors (EMFILE): make room, or the listener stays ready.
                oldest = next(iter(self._clients), None)
                if oldest is not None:
                    self._drop(oldest)
                return
            connection.setblocking(False)
            if len(self._clients) >= MAX_CONNECTIONS:
                self._drop(next(iter(self._clients)))  # the oldest makes room
            client = _Client(connection, time.monotonic() + REQUEST_TIMEOUT)
            self._clients[client] = None
            self._selector.register(connection, selectors.EVENT_READ, client)

    def _read(self, client: _Client) -> None:
        try:
            chunk = client.connection.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""  # reset: as closed
        if not chunk:
            self._drop(client)
            return
        client.received += chunk
        if b"\r\n\r\n" not in client.received:
            if len(client.received) > MAX_REQUEST_BYTES:
                self._respond(client, (431, "text/plain", b"request too large\n"), head=False)
            return
        line = bytes(client.received.split(b"\r\n", 1)[0]).decode("latin-1")
        parts = line.split()
        head = bool(parts) and parts[0] == "HEAD"
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            answer: Answer = (400, "text/plain", b"bad request\n")
        elif parts[0] not in ("GET", "HEAD"):
            answer = (405, "text/plain", b"only GET and HEAD\n")
        else:
            try:
                answer = self.answer(parts[1].split("?", 1)[0])
            except Exception as error:  # a bug in an answer must not end the server
                answer = (500, "text/plain", f"{type(error).__name__}: {error}\n".encode())
        self._respond(client, answer, head=head)

    def _respond(self, client: _Client, answer: Answer, *, head: bool) -> None:
        status, kind, body = answer
        header = (
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
            f"Content-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode("latin-1")
        client.outgoing = memoryview(header if head else header + body)
        self._selector.modify(client.connection, selectors.EVENT_WRITE, client)
        self._write(client)

    def _write(self, client: _Client) -> None:
        if client.outgoing is None:
            return
        try:
            sent = client.connection.send(client.outgoing)
        except BlockingIOError:
            return
        except OSError:
            sent = len(client.outgoing)  # reset: nothing more can be sent
        client.outgoing = client.outgoing[sent:]
        if not client.outgoing:
            self._drop(client)

    def _expire(self, now: float) -> None:
        # Oldest first, and deadlines grow with age: stop at the first one still in time.
        while self._clients:
            oldest = next(iter(self._clients))
            if oldest.deadline > now:
                return
            self._drop(oldest)

    def _drop(self, client: _Client) -> None:
        self._clients.pop(client, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(client.connection)
        client.connection.close()

    def _close_all(self) -> None:
        for client in list(self._clients):
            self._drop(client)
        self._selector.close()
        for sock in (self._listener, self._wake_reader, self._wake_writer):
            sock.close()
