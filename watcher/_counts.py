"""What the service did since it started: the counts of ``watcher.stopped``."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["CountName", "Counts"]

CountName = Literal[
    "repacked", "quarantined", "retried", "vanished", "series_completed", "handed_back"
]


@dataclass
class Counts:
    """Thread-safe counters, one per :data:`CountName`."""

    repacked: int = 0
    quarantined: int = 0
    retried: int = 0
    vanished: int = 0
    series_completed: int = 0
    handed_back: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, name: CountName, amount: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + amount)

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in vars(self).items() if not k.startswith("_")}
