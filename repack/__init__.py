"""repack: turn DICOM instances into the pypx data tree and JSON logs.

Usable on its own, without the watcher service::

    from repack import Repacker, Layout
    repacker = Repacker("/data", "/log", Layout.named("rx-repack"), move=True)
    outcome = repacker.repack("/incoming/MR.1.2.3")
    print(outcome.dst)

This is the library's whole interface (:data:`__all__`): repacking, layouts,
reading an instance's header, the events, and the errors, one tree rooted at
:class:`RepackError` (see :mod:`repack._errors`). What the pypx-listener
service builds on besides (opening files beneath descriptors, the store, the
temp-name rules) is :mod:`repack.plumbing`, with no compatibility promise.

The output contract (paths, log files, events, bad input) is described in
the README.
"""

from ._arguments import version as _version
from ._dicom import Instance, read_instance
from ._errors import (
    InvalidInstanceError,
    MalformedFileError,
    MissingRequiredTagError,
    NotDicomError,
    NotRegularFileError,
    RefusedInstanceError,
    RepackError,
    StorageError,
    TemplateError,
    TruncatedFileError,
)
from ._events import Event, configure_logging, get_logger
from ._repack import MissingElement, Repacked, Repacker, plan_placement, repack_file
from ._template import Layout, NamedLayout, Template, parse_template

__all__ = [
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
    "RefusedInstanceError",
    "RepackError",
    "Repacked",
    "Repacker",
    "StorageError",
    "Template",
    "TemplateError",
    "TruncatedFileError",
    "configure_logging",
    "get_logger",
    "parse_template",
    "plan_placement",
    "read_instance",
    "repack_file",
]

__version__ = _version()
