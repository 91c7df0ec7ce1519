"""watcher._settings: command line, then environment, then the one table of defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from watcher import ConfigError, parse_settings
from watcher._settings import default_workers, unknown_variables


def test_settings_come_from_the_command_line_then_the_environment_then_defaults(
    tmp_path: Path,
) -> None:
    environ = {"PYPX_LISTENER_SETTLE": "2.5", "PYPX_LISTENER_WORKERS": "3"}
    settings = parse_settings(["--workers", "1", "--incoming", str(tmp_path)], environ)
    assert (settings.workers, settings.settle, settings.mode) == (1, 2.5, "move")
    assert settings.incoming == tmp_path
    assert parse_settings([], {}).workers == default_workers()
    assert parse_settings(["--no-fsync"], {}).fsync is False
    assert parse_settings([], {}).worker_nice == 10
    assert parse_settings([], {"PYPX_LISTENER_WORKER_NICE": "0"}).worker_nice == 0


@pytest.mark.parametrize(
    ("argv", "environ", "message", "hint"),
    [
        (["--bogus"], {}, "unrecognized arguments: --bogus", "pypx-listener --help"),
        (["--layout", "weird"], {}, "--layout='weird' is not a layout name", "rx-repack"),
        ([], {"PYPX_LISTENER_LAYOUT": "weird"}, "PYPX_LISTENER_LAYOUT='weird'", "rx-repack"),
        (["--mode", "mirror"], {}, "--mode='mirror' is not one of move, copy", "--mode"),
        ([], {"PYPX_LISTENER_WORKERS": "many"}, "PYPX_LISTENER_WORKERS='many'", "fix"),
        (["--fsync", "false"], {}, "unrecognized arguments: false", "--help"),
        (["--worker-nice", "20"], {}, "--worker-nice='20': must be from 0 to 19", "fix"),
        ([], {"PYPX_LISTENER_WORKER_NICE": "-5"}, "must be from 0 to 19, not -5", "fix"),
    ],
)
def test_a_bad_setting_is_one_message_and_a_hint(
    argv: list[str], environ: dict[str, str], message: str, hint: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_settings(argv, environ)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)
    assert hint in raised.value.hint


def test_unknown_variables_are_found() -> None:
    environ = {"PYPX_LISTENER_SETTLE": "1", "PYPX_LISTENER_SETLE": "1", "HOME": "/root",
               "PYPX_LISTENER_SERIES_TEMPLATE": "%SeriesNumber"}  # fmt: skip
    assert unknown_variables(environ) == ["PYPX_LISTENER_SETLE"]
