"""Real brokers and consumers for the hand-off tests, each started here on loopback.

``redis-server``, ``rabbitmq-server`` and ``nats-server`` from Debian; CUBE's
task in a real Celery worker (``tests/cube_worker.py``); a NATS subscriber
(``nats-py``); a local HTTP server for the webhook. Each is a context
manager that stops what it started, whatever happens; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from .dcmtk import LOOPBACK, _port_open, free_port
from .helpers import BIN, wait_for

ROOT = Path(__file__).resolve().parent.parent


def need(program: str) -> str:
    found = shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin")
    if found is None:
        message = (
            f"{program} is not installed (apt-get install redis-server rabbitmq-server nats-server)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


class Server:
    """A server process on a loopback port; :meth:`stop` and :meth:`start` again (same port)."""

    def __init__(
        self,
        command: list[str],
        port: int,
        env: dict[str, str] | None = None,
        ready_timeout: float = 30,
    ) -> None:
        self.command, self.port, self.env = command, port, env
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        self.process = subprocess.Popen(
            self.command,
            env={**os.environ, **(self.env or {})},
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        process = self.process
        wait_for(
            lambda: _port_open(self.port),
            self.ready_timeout,
            f"{self.command[0]} to listen",
            give_up=lambda: None if process.poll() is None else f"; it exited {process.returncode}",
        )
        return self

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)
            self.process = None
        wait_for(lambda: not _port_open(self.port), 30, f"{self.command[0]} to stop listening")


@contextlib.contextmanager
def redis_server(tmp: Path) -> Iterator[Server]:
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    server = Server(
        [
            need("redis-server"),
            "--port",
            str(port),
            "--bind",
            LOOPBACK,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp),
        ],
        port,
    )
    try:
        yield server.start()
    finally:
        server.stop()


@contextlib.contextmanager
def rabbitmq_server(tmp: Path) -> Iterator[Server]:
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "enabled_plugins").write_text("[].\n")
    env = {
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_NODE_IP_ADDRESS": LOOPBACK,
        "RABBITMQ_NODENAME": f"pypx{port}@localhost",
        "RABBITMQ_DIST_PORT": str(free_port()),
        "RABBITMQ_MNESIA_BASE": str(tmp / "mnesia"),
        "RABBITMQ_LOG_BASE": str(tmp / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(tmp / "enabled_plugins"),
        "RABBITMQ_CONFIG_FILE": str(tmp / "rabbitmq"),
        "HOME": str(tmp),
    }
    need("rabbitmq-server")
    # The server script itself: the wrapper on PATH would switch to the rabbitmq user, who
    # cannot enter the test's private folder.
    server = Server(["/usr/lib/rabbitmq/bin/rabbitmq-server"], port, env, ready_timeout=120)
    epmd_was_running = _port_open(4369)  # Erlang's port mapper, which the server starts
    try:
        yield server.start()
    finally:
        server.stop()
        if not epmd_was_running:  # nothing the test started outlives it
            subprocess.run(["epmd", "-kill"], capture_output=True, timeout=30, check=False)


@contextlib.contextmanager
def nats_server() -> Iterator[Server]:
    port = free_port()
    server = Server([need("nats-server"), "-a", LOOPBACK, "-p", str(port)], port)
    try:
        yield server.start()
    finally:
        server.stop()


class CubeWorker:
    """CUBE's task in a real Celery worker; what it registered and what it refused."""

    def __init__(self, broker: str, storage: Path, registry: Path) -> None:
        self.broker, self.storage, self.registry = broker, storage, registry
        self.process: subprocess.Popen[bytes] | None = None
        self.log = registry.with_suffix(".log")

    def start(self) -> CubeWorker:
        env = {
            **os.environ,
            "CUBE_BROKER": self.broker,
            "CUBE_STORAGE": str(self.storage),
            "CUBE_REGISTRY": str(self.registry),
            "PYTHONPATH": str(ROOT),
        }
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [
                    str(BIN / "celery"),
                    "-A",
                    "tests.cube_worker",
                    "worker",
                    "-Q",
                    "main2",
                    "--pool",
                    "solo",
                    "--without-heartbeat",
                    "--without-gossip",
                    "--without-mingle",
                    "--loglevel",
                    "INFO",
                ],
                env=env,
                cwd=ROOT,
                start_new_session=True,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        return self

    def registered(self) -> list[dict[str, Any]]:
        if not self.registry.exists():
            return []
        return [orjson.loads(line) for line in self.registry.read_text().splitlines()]

    def refused(self) -> list[dict[str, Any]]:
        refused = Path(f"{self.registry}.refused")
        return (
            [orjson.loads(line) for line in refused.read_text().splitlines()]
            if refused.exists()
            else []
        )

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(30)


@contextlib.contextmanager
def cube_worker(broker: str, storage: Path, registry: Path) -> Iterator[CubeWorker]:
    worker = CubeWorker(broker, storage, registry).start()
    try:
        yield worker
    finally:
        worker.stop()


class NatsSubscriber:
    """nats-py subscribed to ``oxidicom.>``, in a thread of its own: every message it got."""

    def __init__(self, url: str, **options: Any) -> None:
        """``options``: nats-py's ``connect`` options (credentials)."""
        self.url, self.options = url, options
        self.messages: list[tuple[str, bytes]] = []
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self._subscribe())
        finally:
            self._loop.close()

    async def _subscribe(self) -> None:
        import nats  # noqa: PLC0415 - the chris extra

        client = await nats.connect(self.url, **self.options)
        self._stop = asyncio.Event()

        async def received(message: Any) -> None:
            self.messages.append((message.subject, message.data))

        await client.subscribe("oxidicom.>", cb=received)
        await client.flush()
        self._ready.set()
        await self._stop.wait()
        await client.drain()

    def __enter__(self) -> NatsSubscriber:
        self._thread.start()
        assert self._ready.wait(30), "the NATS subscriber did not connect"
        return self

    def __exit__(self, *_: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


class Webhook:
    """A local HTTP server that records each POST; ``fail`` answers 500 that many times first."""

    def __init__(self, fail: int = 0, *, redirect: bool = False) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.fail = fail
        #: Answer every POST with a 302 to another path (which answers a GET with 200).
        self.redirect = redirect
        #: Every POST, answered 500 or not; every GET.
        self.attempts = 0
        self.gets = 0
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hook.gets += 1
                self.send_response(200)
                self.end_headers()

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hook.attempts += 1
                if hook.redirect:
                    self.send_response(302)
                    self.send_header("Location", "/elsewhere")
                elif hook.fail > 0:
                    hook.fail -= 1
                    self.send_response(500)
                else:
                    hook.received.append((self.headers["Idempotency-Key"], orjson.loads(body)))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.url = f"http://{LOOPBACK}:{self.server.server_address[1]}/series"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Webhook:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def python_command(code: str) -> str:
    """A ``--on-series-complete`` value that runs ``code`` with this interpreter."""
    import shlex  # noqa: PLC0415

    return shlex.join([sys.executable, "-c", code])
