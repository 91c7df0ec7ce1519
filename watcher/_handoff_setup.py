"""The hand-off the settings ask for: its destinations checked and built before the start."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Any

from ._destinations import Command, Destination, Webhook
from ._errors import ConfigError
from ._handoff import Handoff
from ._metrics import Metrics
from ._settings import Settings

if TYPE_CHECKING:  # nats-py only when --nats-url asks for it
    from ._lonk import LonkProgress


def build_handoff(settings: Settings, metrics: Metrics, log: Any) -> Handoff | None:
    """The hand-off the settings ask for (None when no destination is set); raise ConfigError."""
    s = settings
    _check_pacs_name(s)
    destinations: list[Destination] = []
    progress = None
    if s.celery_broker:
        destinations.append(_celery(s, s.celery_broker))
    if s.nats_url:
        done, progress = _lonk(s, s.nats_url)
        destinations.append(done)
    if s.webhook_url:
        if not s.webhook_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"--webhook-url {s.webhook_url!r} is not an http(s) URL",
                hint="e.g. --webhook-url https://host/series",
            )
        destinations.append(Webhook(s.webhook_url))
    if s.on_series_complete:
        destinations.append(_command(s.on_series_complete))
    if not destinations:
        return None
    return Handoff(s.logdir, destinations, metrics=metrics, log=log, fsync=s.fsync,
                   progress=progress, datadir=s.datadir, pacs_name=s.pacs_name,
                   by_sender=s.pacs_name_from == "caller")  # fmt: skip


def _check_pacs_name(s: Settings) -> None:
    """``--pacs-name``: there when CUBE or LONK needs it, and a name CUBE accepts."""
    if (s.celery_broker or s.nats_url or s.pacs_name_from == "caller") and not s.pacs_name:
        raise ConfigError(
            "--celery-broker, --nats-url and --pacs-name-from caller need --pacs-name",
            hint="set --pacs-name to CUBE's name of the PACS (at most 20 characters); with"
            " --pacs-name-from caller, the name of files that name no sender",
        )
    if s.pacs_name is not None and (
        len(s.pacs_name) > 20 or not s.pacs_name.strip() or any(c in s.pacs_name for c in "/,")
    ):
        raise ConfigError(
            f"--pacs-name {s.pacs_name!r} is not a name CUBE accepts",
            hint="1 to 20 characters, no '/' and no ','",
        )


def _celery(s: Settings, broker: str) -> Destination:
    """CUBE's registration; the data folder must be where CUBE looks for the files."""
    if s.pacs_name_from == "caller" and s.datadir.parts[-2:] != ("SERVICES", "PACS"):
        raise ConfigError(
            f"--datadir {s.datadir} is not CUBE's folder of PACS for --pacs-name-from caller",
            hint="set --datadir to <CUBE storage>/SERVICES/PACS: a folder per sender goes"
            " in it, and CUBE finds a registered series below its storage by that path",
        )
    if s.pacs_name_from != "caller" and s.datadir.parts[-3:] != ("SERVICES", "PACS", s.pacs_name):
        raise ConfigError(
            f"--datadir {s.datadir} is not CUBE's folder for --pacs-name {s.pacs_name}",
            hint=f"set --datadir to <CUBE storage>/SERVICES/PACS/{s.pacs_name}: CUBE finds"
            " a registered series below its storage by that path",
        )
    try:
        from ._destinations import CeleryRegistration  # noqa: PLC0415
    except ImportError as error:
        raise ConfigError(
            f"--celery-broker needs Celery: {error}", hint="pip install 'pypx-listener[chris]'"
        ) from error
    return CeleryRegistration(broker, s.celery_queue, str(s.pacs_name))


def _lonk(s: Settings, url: str) -> tuple[Destination, LonkProgress]:
    """LONK's "done" and its progress, over one NATS connection."""
    try:
        from ._lonk import LonkDone, LonkProgress, NatsConnection  # noqa: PLC0415
    except ImportError as error:
        raise ConfigError(
            f"--nats-url needs nats-py: {error}", hint="pip install 'pypx-listener[chris]'"
        ) from error
    for option, path in (("--nats-nkey", s.nats_nkey), ("--nats-creds", s.nats_creds)):
        if path is not None:
            _check_credentials(option, path)
    try:
        nats = NatsConnection(url, nkey_seed_file=s.nats_nkey, credentials_file=s.nats_creds)
    except ValueError as error:
        raise ConfigError(
            f"--nats-url: {error}", hint="e.g. --nats-url tls://a:4222,tls://b:4222"
        ) from error
    return LonkDone(nats, str(s.pacs_name)), LonkProgress(nats, s.progress_interval)


def _check_credentials(option: str, path: str) -> None:
    """A credentials file nats-py can use: nkeys installed, the file readable."""
    try:
        import nkeys  # noqa: F401, PLC0415 - nats-py signs with it
    except ImportError as error:
        raise ConfigError(
            f"{option} needs nkeys: {error}", hint="pip install 'pypx-listener[chris]'"
        ) from error
    try:
        with open(path, "rb"):
            pass
    except OSError as error:
        raise ConfigError(
            f"{option} {path}: {error.strerror}",
            hint="the file must be readable by the service's user",
        ) from error


def _command(text: str) -> Destination:
    try:
        argv = shlex.split(text)
    except ValueError as error:
        raise ConfigError(
            f"--on-series-complete: {error}", hint="quote it as a shell would; it runs without one"
        ) from error
    if not argv:
        raise ConfigError("--on-series-complete is empty", hint="name a program")
    return Command(argv)
