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

from ._errors import EXIT_CONFIG, EXIT_OUTPUT_LOST, EXIT_STARTUP, ConfigError, WatcherError
from ._service import Service
from ._settings import ENV_PREFIX, Settings, parse_settings

__all__ = [
    "ENV_PREFIX",
    "EXIT_CONFIG",
    "EXIT_OUTPUT_LOST",
    "EXIT_STARTUP",
    "ConfigError",
    "Service",
    "Settings",
    "WatcherError",
    "parse_settings",
]
