"""Prometheus metrics and the health endpoints, served over HTTP.

``/metrics``  the Prometheus text format (prometheus-client, own registry);
``/healthz``  200 while the service's threads are alive;
``/readyz``   200 when watching, the folders are writable and (supervised
              mode) storescp accepts connections; 503 with the reasons else.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from repack import TEMP_PREFIX

__all__ = ["HealthServer", "Metrics", "Readiness"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Metrics:
    """The service's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._repacked = Counter(
            "pypx_listener_instances_repacked", "Instances repacked", registry=r
        )
        self._bytes = Counter(
            "pypx_listener_bytes_repacked", "Bytes of instances repacked", registry=r
        )
        self._quarantined = Counter(
            "pypx_listener_instances_quarantined", "Instances quarantined", ["reason"], registry=r
        )
        self._retried = Counter(
            "pypx_listener_instances_retried", "Repack attempts retried", registry=r
        )
        self._series = Counter("pypx_listener_series_completed", "Series gone quiet", registry=r)
        self._scanned = Counter(
            "pypx_listener_files_scanned", "Files seen by folder scans", registry=r
        )
        self._latency = Histogram(
            "pypx_listener_repack_seconds",
            "Time to repack one instance (read, place, logs)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._queue = Gauge(
            "pypx_listener_queue_depth", "Files known and not yet repacked", registry=r
        )
        self._busy = Gauge("pypx_listener_workers_busy", "Workers repacking right now", registry=r)
        self.oldest = Gauge(
            "pypx_listener_oldest_unprocessed_seconds",
            "Age of the oldest file waiting in the incoming folder",
            registry=r,
        )
        self.storescp_restarts = Counter(
            "pypx_listener_storescp_restarts", "Supervised storescp restarts", registry=r
        )

    def repacked(self, seconds: float, size: int) -> None:
        self._repacked.inc()
        self._bytes.inc(size)
        self._latency.observe(seconds)

    def quarantined(self, reason: str) -> None:
        self._quarantined.labels(reason=reason).inc()

    def retried(self) -> None:
        self._retried.inc()

    def series_completed(self) -> None:
        self._series.inc()

    def scanned(self, count: int) -> None:
        self._scanned.inc(count)

    def gauges(self, *, queue_depth: int, busy: int) -> None:
        self._queue.set(queue_depth)
        self._busy.set(busy)

    def watch_oldest(self, oldest_age: Callable[[], float]) -> None:
        """Compute the oldest-file gauge on each scrape."""
        self.oldest.set_function(oldest_age)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def oldest_file_age(folder: Path, limit: int = 50_000) -> float:
    """Seconds since the oldest regular file below ``folder`` was modified (0 if none)."""
    oldest = None
    seen = 0
    for directory, folders, files in os.walk(folder):
        folders[:] = [f for f in folders if not f.startswith(".")]
        for name in files:
            if name.startswith((".", TEMP_PREFIX)):
                continue
            try:
                mtime = os.stat(os.path.join(directory, name)).st_mtime
            except OSError:
                continue
            oldest = mtime if oldest is None else min(oldest, mtime)
            seen += 1
            if seen >= limit:
                break
    return 0.0 if oldest is None else max(0.0, time.time() - oldest)


class Readiness:
    """The checks behind ``/readyz``."""

    def __init__(
        self,
        folders: dict[str, Path],
        watching: threading.Event,
        storescp_port: int | None = None,
    ) -> None:
        self.folders = folders
        self.watching = watching
        self.storescp_port = storescp_port

    def problems(self) -> list[str]:
        found: list[str] = []
        if not self.watching.is_set():
            found.append("not watching the incoming folder")
        for name, folder in self.folders.items():
            probe = folder / f"{TEMP_PREFIX}ready-{os.getpid()}-{threading.get_ident()}"
            try:
                probe.write_bytes(b"")
                probe.unlink()
            except OSError as error:
                found.append(f"{name} {folder} not writable: {error.strerror or error}")
        if self.storescp_port is not None:
            with socket.socket() as probe_socket:
                probe_socket.settimeout(0.5)
                if probe_socket.connect_ex(("127.0.0.1", self.storescp_port)) != 0:
                    found.append(f"storescp not accepting connections on port {self.storescp_port}")
        return found


class HealthServer:
    """A small threaded HTTP server for /metrics, /healthz and /readyz."""

    def __init__(
        self,
        host: str,
        port: int,
        metrics: Metrics,
        readiness: Readiness,
        alive: Callable[[], bool],
    ) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.answer(self)

            def log_message(self, format: str, *args: Any) -> None:
                return  # scrapes are not events

        self.metrics = metrics
        self.readiness = readiness
        self.alive = alive
        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(
            target=self.server.serve_forever, name="metrics", daemon=True
        )

    def answer(self, request: BaseHTTPRequestHandler) -> None:
        path = request.path.split("?", 1)[0]
        if path == "/metrics":
            body, status, kind = self.metrics.render(), 200, CONTENT_TYPE_LATEST
        elif path == "/healthz":
            ok = self.alive()
            body = json.dumps({"alive": ok}).encode()
            status, kind = (200 if ok else 503), "application/json"
        elif path == "/readyz":
            problems = self.readiness.problems()
            body = json.dumps({"ready": not problems, "problems": problems}).encode()
            status, kind = (503 if problems else 200), "application/json"
        else:
            body, status, kind = b"not found\n", 404, "text/plain"
        request.send_response(status)
        request.send_header("Content-Type", kind)
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)
