"""The exceptions of the ``watcher`` package.

::

    WatcherError
    └── ConfigError        a setting or folder is unusable: the service cannot start
                           (a :class:`repack.plumbing.CliError`: one message, a hint
                           for the operator, an exit code, as ``pypx-repack``'s errors)

Errors about single files never escape the service: they come from
:mod:`repack` (:class:`repack.InvalidInstanceError` -> quarantine,
:class:`repack.StorageError` -> retry with back-off) and are handled per file.
"""

from __future__ import annotations

from repack.plumbing import CliError

#: Exit status for an invalid option, environment variable or template.
EXIT_CONFIG = 2
#: Exit status for a folder, port or worker that cannot be used at start.
EXIT_STARTUP = 3
#: Exit status when a thread the service needs died (EX_SOFTWARE): its supervisor restarts it.
EXIT_THREAD_DIED = 70
#: Exit status when the event stream's reader went away (128 + SIGPIPE, as a shell reports it).
EXIT_OUTPUT_LOST = 141


class WatcherError(Exception):
    """Base class of every error raised by :mod:`watcher`."""


class ConfigError(WatcherError, CliError):
    """The service cannot start with these settings."""

    default_exit_code = EXIT_CONFIG
