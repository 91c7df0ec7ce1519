"""What the pypx-listener service builds on, beside :mod:`repack`'s interface.

Not the library's interface: these names serve :mod:`watcher` (and
``pypx-repack``'s own command line), and may change in any release. A
library user needs :mod:`repack` alone.

==========================  ==================================================
opening untrusted inputs    :func:`open_root`, :func:`open_beneath`,
                            :func:`open_folder_beneath`, :func:`folder_beneath`,
                            :func:`open_path`, :func:`file_type`,
                            :class:`SourceFile`, :class:`Others`,
                            :class:`SourceVanishedError`, :func:`read_source`,
                            :func:`try_claim`
writing                     :class:`Store`, :data:`LOCK_DIR`, :data:`TEMP_PREFIX`,
                            :func:`sweep_stale_temps`, :func:`probe_writable`,
                            :func:`json_bytes`, :func:`dumps`
naming                      :func:`sanitize_component`, :func:`seahash_hex`, :func:`shorten`,
                            :func:`token`,
                            :func:`sender_folder`, :func:`printable`,
                            :data:`NOT_DEFINED`, :data:`REQUIRED_KEYWORDS`
events                      :func:`log_repacked`,
                            :func:`output_blocked_for`, :func:`collected_warnings`
command lines               :class:`CliError`, :class:`OneLineParser`,
                            :func:`add_layout_arguments`,
                            :func:`layout_from_arguments`, :func:`report_error`,
                            :func:`version`
==========================  ==================================================
"""

from ._arguments import (
    CliError,
    OneLineParser,
    add_layout_arguments,
    layout_from_arguments,
    report_error,
    version,
)
from ._dicom import REQUIRED_KEYWORDS, read_source
from ._errors import SourceVanishedError
from ._events import log_repacked, output_blocked_for
from ._logs import dumps, json_bytes
from ._repack import sender_folder
from ._sanitize import sanitize_component, seahash_hex, shorten, token
from ._source import (
    Others,
    SourceFile,
    file_type,
    folder_beneath,
    open_beneath,
    open_folder_beneath,
    open_path,
    open_root,
    printable,
    storage_error,
    try_claim,
)
from ._store import LOCK_DIR, Store
from ._temps import TEMP_PREFIX, probe_writable, sweep_stale_temps
from ._values import NOT_DEFINED, collected_warnings

__all__ = [
    "LOCK_DIR",
    "NOT_DEFINED",
    "REQUIRED_KEYWORDS",
    "TEMP_PREFIX",
    "CliError",
    "OneLineParser",
    "Others",
    "SourceFile",
    "SourceVanishedError",
    "Store",
    "add_layout_arguments",
    "collected_warnings",
    "dumps",
    "file_type",
    "folder_beneath",
    "json_bytes",
    "layout_from_arguments",
    "log_repacked",
    "open_beneath",
    "open_folder_beneath",
    "open_path",
    "open_root",
    "output_blocked_for",
    "printable",
    "probe_writable",
    "read_source",
    "report_error",
    "sanitize_component",
    "seahash_hex",
    "sender_folder",
    "shorten",
    "storage_error",
    "sweep_stale_temps",
    "token",
    "try_claim",
    "version",
]
