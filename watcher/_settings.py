"""The service's settings: command line first, then ``PYPX_LISTENER_*``, then defaults.

Every option ``--some-option`` can also be set as ``PYPX_LISTENER_SOME_OPTION``
so that a compose file or a Kubernetes manifest needs no command line. The
defaults let the service start with no arguments in a working folder.

A mistake is one line and a ``hint:``: an unknown option, a bad value (from
the command line or the environment, named as given), a layout name that is
not one. A ``PYPX_LISTENER_*`` variable that names no option (a typo) is
reported by :func:`unknown_variables`, and warned about at start.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from repack import Layout
from repack.plumbing import (
    CliError,
    OneLineParser,
    add_layout_arguments,
    layout_from_arguments,
    version,
)

from ._destinations import redacted
from ._errors import ConfigError

ENV_PREFIX = "PYPX_LISTENER_"
#: The service's folders (absolute paths in :class:`Settings`).
_FOLDERS = ("incoming", "datadir", "logdir", "quarantine")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


#: Memory one worker process needs at most, with room (about 45 MB measured).
WORKER_MEMORY = 64 * 1024 * 1024
_CGROUP = Path("/sys/fs/cgroup")


def _cgroup_limits(root: Path = _CGROUP) -> tuple[float | None, int | None]:
    """This container's CPU limit (in cores) and memory limit (bytes), where set.

    cgroup v2 (``cpu.max``, ``memory.max``) or v1 (``cpu.cfs_quota_us`` and
    ``cpu.cfs_period_us``, ``memory.limit_in_bytes``); None for no limit.
    """

    def read(*names: str) -> list[str] | None:
        for name in names:
            try:
                return (root / name).read_text().split()
            except OSError:
                continue
        return None

    cpus: float | None = None
    quota = read("cpu.max")
    if quota and quota[0] != "max" and len(quota) == 2:
        cpus = int(quota[0]) / int(quota[1])
    elif quota is None:
        v1 = read("cpu/cpu.cfs_quota_us", "cpu,cpuacct/cpu.cfs_quota_us")
        period = read("cpu/cpu.cfs_period_us", "cpu,cpuacct/cpu.cfs_period_us")
        if v1 and period and int(v1[0]) > 0:
            cpus = int(v1[0]) / int(period[0])
    memory: int | None = None
    limit = read("memory.max", "memory/memory.limit_in_bytes")
    if limit and limit[0].isdigit() and int(limit[0]) < 1 << 60:  # v1 says "no limit" so
        memory = int(limit[0])
    return cpus, memory


def default_workers(root: Path = _CGROUP) -> int:
    """One worker per core this process may use, within its container's limits.

    The cores of its CPU affinity, but no more than its CPU limit (rounded
    up) and no more than fit its memory limit at :data:`WORKER_MEMORY` each,
    beside the service itself (a 512 MiB pod on a 24-core node was killed at
    start with 24 workers). At least 1.
    """
    try:
        workers = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        workers = os.cpu_count() or 1
    cpus, memory = _cgroup_limits(root)
    if cpus is not None:
        workers = min(workers, math.ceil(cpus))
    if memory is not None:
        workers = min(workers, memory // WORKER_MEMORY - 1)
    return max(1, workers)


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise ValueError(f"must be positive, not {text}")
        return value

    return convert


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"not a yes/no value: {text!r}")


def _niceness(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 19:  # nice(1)'s range
        raise ValueError(f"must be from 0 to 19, not {text}")
    return value


def _umask(text: str) -> int | None:
    if text.strip() in ("", "inherit"):
        return None
    value = int(text, 8)
    if not 0 <= value <= 0o777:
        raise ValueError(f"not a umask (octal, 000-777): {text}")
    return value


def _port(text: str) -> int | None:
    if text.strip() in ("", "0", "off", "none"):
        return None
    value = int(text)
    if not 0 < value < 65536:
        raise ValueError(f"not a TCP port: {text}")
    return value


def _option(
    kind: Callable[[str], Any], default: str | Callable[[], str] | None, help_text: str
) -> Any:
    """A setting's option ``--some-option``: how its text converts, its default (text, or
    made when asked; None: unset) and its help."""
    return field(metadata={"option": (kind, default, help_text)})


@dataclass(frozen=True)
class Settings:
    """Everything the service needs to run; see ``pypx-listener --help``.

    Built by :func:`parse_settings`. Each field but ``layout`` declares its
    option (:func:`_option`): its conversion, default and help; its variable
    follows from its name, and a ``Literal`` type lists the words it takes.
    """

    layout: Layout
    incoming: Path = _option(Path, "incoming", "folder storescp writes into (watched recursively)")
    datadir: Path = _option(Path, "data", "root of the repacked data tree")
    logdir: Path = _option(Path, "log", "pypx log folder (patientData, studyData, seriesData)")
    quarantine: Path = _option(
        Path, "quarantine", "where files that can never be repacked go, with a note"
    )
    mode: Literal["move", "copy"] = _option(
        str, "move", "move: the incoming folder is a spool; copy: keep incoming files"
    )
    workers: int = _option(
        _positive(int),
        lambda: str(default_workers()),
        "repack workers (default: usable cores, within the container's CPU and memory limits)",
    )  # read from the cgroups when asked, not at import
    worker_nice: int = _option(
        _niceness,
        "10",
        "niceness added to worker processes (0-19; 0: none): storescp gets a core first",
    )
    queue_size: int = _option(_positive(int), "64", "files queued for the workers at most")
    settle: float = _option(
        _positive(float), "1.0", "seconds a file must stay unchanged without a close event"
    )
    unleased_settle: float = _option(
        _positive(float),
        "30",
        "seconds a file that no lease can test (another owner, no CAP_LEASE; NFS) must stay"
        " unchanged when no close event was seen",
    )
    scan_interval: float = _option(_positive(float), "30", "seconds between reconciliation scans")
    series_quiet: float = _option(
        _positive(float), "30", "seconds without a new instance before series.complete"
    )
    quarantine_after: float = _option(
        _positive(float), "10", "seconds a bad file must stay unchanged first"
    )
    empty_dir_age: float = _option(
        _positive(float), "60", "age in seconds at which empty subfolders go"
    )
    retry_max_delay: float = _option(
        _positive(float), "60", "longest back-off between retries, seconds"
    )
    polling: bool = _option(
        _boolean, "false", "poll instead of inotify (NFS/SMB shares written elsewhere)"
    )
    poll_interval: float = _option(_positive(float), "1.0", "seconds between polls in polling mode")
    stop_timeout: float = _option(
        _positive(float), "10", "seconds to finish in-flight files on SIGTERM"
    )
    stall_timeout: float = _option(
        _positive(float),
        "300",
        "seconds one file may hold a worker before health fails and the worker is restarted",
    )
    pending_limit: int = _option(
        _positive(int), "10000", "files tracked in memory at most; more wait on disk"
    )
    fsync: bool = _option(
        _boolean, "true", "sync copies across file systems before removing the source"
    )
    umask: int | None = _option(
        _umask,
        None,
        "file mode creation mask (octal) for all the service writes; 002 makes folders"
        " group-writable, so that CUBE running as another user of the group can delete what it"
        " registered (default: the one the service was started with)",
    )
    log_format: Literal["auto", "json", "console"] = _option(
        str, "auto", "auto (JSON unless a terminal), json or console"
    )
    log_level: Literal["debug", "info", "warning", "error"] = _option(
        str, "info", "debug, info, warning or error"
    )
    metrics_port: int | None = _option(
        _port, None, "serve Prometheus /metrics, /healthz, /readyz on this port"
    )
    metrics_host: str = _option(str, "0.0.0.0", "address the metrics server binds")  # noqa: S104
    storescp_port: int | None = _option(_port, None, "also run and supervise storescp on this port")
    storescp_args: str = _option(str, "", "extra storescp arguments in supervised mode")
    storescp_aet: str = _option(str, "PYPX", "AE title of the supervised storescp")
    pacs_name: str | None = _option(
        str,
        None,
        "CUBE's name of the PACS the series come from (at most 20 characters); the data folder"
        " is then <CUBE storage>/SERVICES/PACS/<name>",
    )
    pacs_name_from: Literal["setting", "caller"] = _option(
        str,
        "setting",
        "'caller': each sender is its own PACS in CUBE, named by its calling AE title (as"
        " oxidicom), the data folder <CUBE storage>/SERVICES/PACS, --pacs-name for a file"
        " that names no sender",
    )
    celery_broker: str | None = _option(
        str,
        None,
        "register each completed series with CUBE through its Celery broker (redis://... or"
        " amqp://...)",
    )
    celery_queue: str = _option(str, "main2", "the queue of CUBE's registration task")
    nats_url: str | None = _option(
        str,
        None,
        "send LONK progress and completion of each series to this NATS server (a cluster's"
        " URLs comma-separated; nats://user:password@..., nats://token@..., tls://...)",
    )
    nats_nkey: str | None = _option(
        str, None, "authenticate to NATS with the nkey seed (SU...) in this file"
    )
    nats_creds: str | None = _option(
        str, None, "authenticate to NATS with this credentials (.creds) file"
    )
    progress_interval: float = _option(
        _positive(float), "1.0", "seconds between LONK progress messages"
    )
    webhook_url: str | None = _option(str, None, "POST each completed series (JSON) to this URL")
    on_series_complete: str | None = _option(
        str,
        None,
        "run this command (an argv; no shell) for each completed series, the series on stdin",
    )

    @property
    def folders(self) -> dict[str, Path]:
        """The service's four folders, by option name: it touches nothing outside them."""
        return {name: getattr(self, name) for name in _FOLDERS}

    @property
    def move(self) -> bool:
        return self.mode == "move"

    def describe(self) -> dict[str, Any]:
        """The effective settings, for the startup event."""
        described = asdict(self)
        described["layout"] = self.layout.name
        described["templates"] = [t.source for t in self.layout.templates]
        if self.umask is not None:
            described["umask"] = f"{self.umask:03o}"
        for name in ("celery_broker", "webhook_url"):  # passwords stay unsaid
            if described[name]:
                described[name] = redacted(described[name])
        if self.nats_url:  # a cluster's URLs, each with its own credentials
            described["nats_url"] = ",".join(redacted(u) for u in self.nats_url.split(","))
        return {k: str(v) if isinstance(v, Path) else v for k, v in described.items()}


#: Each option: its name, its type, its default, its help (from :class:`Settings`).
_OPTIONS: list[tuple[str, Callable[[str], Any], str | Callable[[], str] | None, str]] = [
    (f.name.replace("_", "-"), *f.metadata["option"]) for f in fields(Settings) if f.metadata
]
#: The options whose type is one of a few words (a ``Literal``), and the words.
_CHOICES = {
    name.replace("_", "-"): list(get_args(hint))
    for name, hint in get_type_hints(Settings).items()
    if get_origin(hint) is Literal
}
#: The layout's settings (add_layout_arguments), each set by PYPX_LISTENER_<NAME> too.
_LAYOUT_NAMES = ("layout", "root_template", "study_template", "series_template", "image_template")


def env_name(option: str) -> str:
    return ENV_PREFIX + option.upper().replace("-", "_")


def _made(default: str | Callable[[], str] | None) -> str | None:
    return default() if callable(default) else default


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """``PYPX_LISTENER_*`` variables that set nothing (typos), sorted."""
    known = {env_name(option) for option, *_ in _OPTIONS}
    known.update(ENV_PREFIX + name.upper() for name in _LAYOUT_NAMES)
    return sorted(name for name in environ if name.startswith(ENV_PREFIX) and name not in known)


def _parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="pypx-listener",
        description=(
            "Watch the folder an unmodified storescp writes into and repack every DICOM instance"
            " it receives into the pypx data tree and logs. Every option can also be set in the"
            f" environment as {ENV_PREFIX}<OPTION> (e.g. {ENV_PREFIX}DATADIR)."
        ),
    )
    for option, kind, default, help_text in _OPTIONS:
        variable = env_name(option)
        shown = environ.get(variable, _made(default))
        if kind is _boolean:
            parser.add_argument(
                f"--{option}",
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{help_text} [{variable}; default: {shown}]",
            )
            continue
        choices = _CHOICES.get(option)
        parser.add_argument(
            f"--{option}",
            default=None,
            metavar="|".join(choices) if choices else None,
            help=f"{help_text} [{variable}; default: {shown if shown is not None else 'off'}]",
        )
    layout_env = {name: environ[ENV_PREFIX + name.upper()] for name in _LAYOUT_NAMES
                  if ENV_PREFIX + name.upper() in environ}  # fmt: skip
    add_layout_arguments(parser, layout_env)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    return parser


def parse_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Build :class:`Settings` from ``argv`` and ``environ``; raise :class:`ConfigError`."""
    environ = os.environ if environ is None else environ
    try:
        arguments = _parser(environ).parse_args(argv)
    except CliError as error:
        raise ConfigError(str(error), hint=error.hint) from error
    values: dict[str, Any] = {}
    for option, kind, default, _ in _OPTIONS:
        name, variable = option.replace("-", "_"), env_name(option)
        given = getattr(arguments, name)
        source = f"--{option}" if given is not None else variable
        text = given if given is not None else environ.get(variable, _made(default))
        if text is None or isinstance(text, bool):  # unset; --option or --no-option
            values[name] = text
            continue
        if option in _CHOICES and text not in _CHOICES[option]:
            raise ConfigError(
                f"{source}={text!r} is not one of {', '.join(_CHOICES[option])}",
                hint=f"set {source} to one of the listed values",
            )
        try:
            values[name] = kind(text)
        except (ValueError, TypeError) as error:
            raise ConfigError(
                f"{source}={text!r}: {error}", hint=f"fix {source} (see pypx-listener --help)"
            ) from error
    given = sys.argv[1:] if argv is None else list(argv)
    on_command_line = any(a == "--layout" or a.startswith("--layout=") for a in given)
    layout_source = "--layout" if on_command_line else env_name("layout")
    try:
        layout = layout_from_arguments(arguments, layout_source=layout_source)
    except CliError as error:
        raise ConfigError(str(error), hint=error.hint) from error
    for folder in _FOLDERS:
        values[folder] = Path(os.path.abspath(values[folder]))
    return Settings(layout=layout, **values)
