"""repack: turn DICOM instances into the pypx data tree and JSON logs.

Usable on its own, without the watcher service::

    from repack import Repacker, Layout
    repacker = Repacker("/data", "/log", Layout.named("rx-repack"), move=True)
    outcome = repacker.repack("/incoming/MR.1.2.3")
    print(outcome.dst)

A service reading a folder others can write into opens each file beneath a
descriptor of that folder (:func:`open_root`, :func:`open_beneath`) and calls
:meth:`Repacker.repack_source`, so that no link is ever followed.

The output contract (paths, log files, events, bad input) is described in
the README. Errors form one tree, rooted at :class:`RepackError` (see
:mod:`repack._errors`).
"""

from importlib import metadata as _metadata

from ._dicom import NOT_DEFINED, REQUIRED_KEYWORDS, Instance, read_instance, read_source
from ._errors import (
    InvalidInstanceError,
    MalformedFileError,
    MissingRequiredTagError,
    NotDicomError,
    NotRegularFileError,
    RefusedInstanceError,
    RepackError,
    SourceVanishedError,
    StorageError,
    TemplateError,
    TruncatedFileError,
)
from ._events import Event, configure_logging, get_logger, log_repacked, output_blocked_for
from ._logs import dumps, json_bytes, printable
from ._repack import (
    MissingElement,
    Repacked,
    Repacker,
    plan_placement,
    repack_file,
    sender_folder,
)
from ._sanitize import sanitize_component, seahash_hex
from ._source import (
    Others,
    SourceFile,
    file_type,
    folder_beneath,
    open_beneath,
    open_folder_beneath,
    open_path,
    open_root,
)
from ._store import LOCK_DIR, Store
from ._template import Layout, NamedLayout, Template, parse_template
from ._temps import TEMP_PREFIX, probe_writable, sweep_stale_temps
from ._values import collected_warnings

__all__ = [
    "LOCK_DIR",
    "NOT_DEFINED",
    "REQUIRED_KEYWORDS",
    "TEMP_PREFIX",
    "Event",
    "Instance",
    "InvalidInstanceError",
    "Layout",
    "MalformedFileError",
    "MissingElement",
    "MissingRequiredTagError",
    "NamedLayout",
    "NotDicomError",
    "NotRegularFileError",
    "Others",
    "RefusedInstanceError",
    "RepackError",
    "Repacked",
    "Repacker",
    "SourceFile",
    "SourceVanishedError",
    "StorageError",
    "Store",
    "Template",
    "TemplateError",
    "TruncatedFileError",
    "collected_warnings",
    "configure_logging",
    "dumps",
    "file_type",
    "folder_beneath",
    "get_logger",
    "json_bytes",
    "log_repacked",
    "open_beneath",
    "open_folder_beneath",
    "open_path",
    "open_root",
    "output_blocked_for",
    "parse_template",
    "plan_placement",
    "printable",
    "probe_writable",
    "read_instance",
    "read_source",
    "repack_file",
    "sanitize_component",
    "seahash_hex",
    "sender_folder",
    "sweep_stale_temps",
]

try:
    __version__ = _metadata.version("pypx-listener")
except _metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"
