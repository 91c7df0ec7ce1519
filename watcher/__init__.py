"""watcher: the storescp sidecar service behind ``pypx-listener``.

Watches the folder an unmodified dcmtk ``storescp`` writes into, decides when
each instance is completely written, and repacks it with :mod:`repack` on a
bounded pool of workers::

    from watcher import Service, parse_settings
    service = Service(parse_settings(["--incoming", "/incoming", "--datadir", "/data"]))
    service.start()
    ...
    service.stop()

Errors form one tree, rooted at :class:`WatcherError` (see
:mod:`watcher._errors`).
"""

from ._completion import Candidate, CompletionTracker, Signature, signature_of
from ._errors import EXIT_CONFIG, EXIT_FOLDER, ConfigError, WatcherError
from ._metrics import HealthServer, Metrics, Readiness
from ._observer import Inbox, Recorder, start_observer
from ._pool import WorkerPool
from ._quarantine import Quarantine
from ._service import Counts, Service
from ._settings import ENV_PREFIX, Settings, parse_settings
from ._supervisor import Extras, StorescpSupervisor, build_extras

__all__ = [
    "ENV_PREFIX",
    "EXIT_CONFIG",
    "EXIT_FOLDER",
    "Candidate",
    "CompletionTracker",
    "ConfigError",
    "Counts",
    "Extras",
    "HealthServer",
    "Inbox",
    "Metrics",
    "Quarantine",
    "Readiness",
    "Recorder",
    "Service",
    "Settings",
    "Signature",
    "StorescpSupervisor",
    "WatcherError",
    "WorkerPool",
    "build_extras",
    "parse_settings",
    "signature_of",
    "start_observer",
]
