"""Prometheus metrics and the health endpoints, served over HTTP.

``/metrics``  the Prometheus text format (prometheus-client, own registry);
``/healthz``  200 while the service is alive: its threads run and no worker
              is stuck on one file; 503 with the reasons else;
``/readyz``   200 when watching the folder that is really there, the folders
              are writable and (supervised mode) storescp accepts
              connections; 503 with the reasons else.

The server is reachable from outside the pod: it is one thread that never
waits on a client, with a deadline for each whole request and a cap on open
connections that drops the oldest (see :mod:`watcher._http`).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from repack.plumbing import probe_writable

from ._http import Answer

#: ``watcher.stopped``'s fields, and the counter each is read from.
_TOTALS = {
    "repacked": "instances_repacked",
    "quarantined": "instances_quarantined",
    "retried": "instances_retried",
    "vanished": "instances_vanished",
    "series_completed": "series_completed",
    "handed_back": "instances_handed_back",
}
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Metrics:
    """The service's metrics, in a registry of their own.

    Each counter and gauge is an attribute, used as prometheus-client's own
    (``metrics.retried.inc()``, ``metrics.handoff_sent.labels(destination=...).inc()``);
    the methods are the few updates that touch more than one.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)

        def counter(name: str, text: str, *labels: str) -> Counter:
            return Counter(f"pypx_listener_{name}", text, labels, registry=self.registry)

        def gauge(name: str, text: str, *labels: str) -> Gauge:
            return Gauge(f"pypx_listener_{name}", text, labels, registry=self.registry)

        self.instances_repacked = counter("instances_repacked", "Instances repacked")
        self.bytes_repacked = counter("bytes_repacked", "Bytes of instances repacked")
        self.quarantined = counter("instances_quarantined", "Instances quarantined", "reason")
        self.retried = counter("instances_retried", "Repack attempts retried")
        self.series_completed = counter("series_completed", "Series gone quiet")
        self.files_scanned = counter("files_scanned", "Files seen by folder scans")
        self.scans = counter(
            "scans", "Folder scans completed (at start, periodic, new folders, rescans)"
        )
        self.latency = Histogram(
            "pypx_listener_repack_seconds",
            "Time to repack one instance (read, place, logs)",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = gauge("queue_depth", "Files known and not yet repacked")
        self.workers_busy = gauge("workers_busy", "Workers repacking right now")
        self.files_failing = gauge(
            "files_failing",
            "Files whose last attempts all failed the same way (5 or more in a row)",
        )
        self.warned = counter("dicom_warnings", "pydicom warnings about repacked files")
        self.oldest = gauge(
            "oldest_unprocessed_seconds", "Age of the oldest file waiting in the incoming folder"
        )
        self.handoff_sent = counter("handoff_sent", "Completed series delivered", "destination")
        self.handoff_failed = counter(
            "handoff_failed", "Deliveries that failed (each is tried again)", "destination"
        )
        self.series_late = counter(
            "series_late", "Series that received instances after CUBE registered them"
        )
        self.handoff_dead_lettered = counter(
            "handoff_dead_lettered",
            "Outbox records that can never be delivered, set aside",
            "destination",
        )
        self.handoff_pending = gauge(
            "handoff_pending", "Completed series waiting in the outbox", "destination"
        )
        self.vanished = counter(
            "instances_vanished", "Files gone (or replaced) before they could be repacked"
        )
        self.handed_back = counter(
            "instances_handed_back",
            "Files in flight at a stop, left in the incoming folder for the next start",
        )
        self.storescp_restarts = counter("storescp_restarts", "Supervised storescp restarts")

    def repacked(self, seconds: float, size: int) -> None:
        self.instances_repacked.inc()
        self.bytes_repacked.inc(size)
        self.latency.observe(seconds)

    def totals(self) -> dict[str, int]:
        """The counts since the start that ``watcher.stopped`` reports, read from the
        registry ``/metrics`` serves: one count of each thing, never two."""
        sums: dict[str, float] = {}
        for family in self.registry.collect():
            for sample in family.samples:  # every label's (quarantine reasons)
                sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
        return {
            name: int(sums.get(f"pypx_listener_{metric}_total", 0))
            for name, metric in _TOTALS.items()
        }

    def scanned(self, count: int) -> None:
        """A scan completed, having found ``count`` files."""
        self.scans.inc()
        self.files_scanned.inc(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)


@dataclass
class Readiness:
    """The checks behind ``/readyz``."""

    folders: dict[str, Path]
    watching: threading.Event
    storescp_port: int | None = None
    service_problems: Callable[[], list[str]] = list

    def problems(self) -> list[str]:
        found: list[str] = list(self.service_problems())
        if not self.watching.is_set():
            found.append("not watching the incoming folder")
        for name, folder in self.folders.items():
            try:
                probe_writable(folder, follow_links=name != "incoming")
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):
                    what = "a symbolic link" if os.path.islink(folder) else "something else"
                    found.append(f"{name} {folder} is {what}, not a folder")
                else:
                    found.append(f"{name} {folder} not writable: {error.strerror or error}")
        if self.storescp_port is not None:
            with socket.socket() as probe_socket:
                probe_socket.settimeout(0.5)
                if probe_socket.connect_ex(("127.0.0.1", self.storescp_port)) != 0:
                    found.append(f"storescp not accepting connections on port {self.storescp_port}")
        return found


def health_answers(
    metrics: Metrics, readiness: Readiness, alive: Callable[[], list[str]] = list
) -> Callable[[str], Answer]:
    """What /metrics, /healthz and /readyz answer, for a :class:`~watcher._http.ProbeServer`.

    ``alive()`` gives the reasons the service is not alive (empty when it is).
    """

    def answer(path: str) -> Answer:
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, metrics.render()
        if path == "/healthz":
            problems = alive()
            body = json.dumps({"alive": not problems, "problems": problems}).encode()
            return (503 if problems else 200), "application/json", body
        if path == "/readyz":
            problems = readiness.problems()
            body = json.dumps({"ready": not problems, "problems": problems}).encode()
            return (503 if problems else 200), "application/json", body
        return 404, "text/plain", b"not found\n"

    return answer
