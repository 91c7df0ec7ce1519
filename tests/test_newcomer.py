"""A newcomer's first ten minutes: the README's commands, and messages that help."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .conftest import ROOT, run_cli, write_dicom
from .helpers import installed
from .listener import listener

README = (ROOT / "README.md").read_text()


def listener_run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [installed("pypx-listener"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **(env or {})},
    )


def one_line_and_a_hint(stderr: str, program: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 2, stderr
    assert lines[0].startswith(f"{program}: error: ")
    assert lines[1].startswith(f"{program}: hint: ")
    return lines[0]


# -- the README's commands ------------------------------------------------------


def test_the_readme_starts_with_two_commands_that_need_no_sudo_and_no_venv() -> None:
    block = README.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2
    for command in commands:
        assert command.startswith("S=$(command -v sudo); $S apt-get update && ")
        assert "sudo " not in command.replace("command -v sudo", "")
        assert "activate" not in command
    assert commands[0].endswith(".venv/bin/pypx-listener")
    assert commands[1].endswith(".venv/bin/python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "env -i" in ci
    assert "README.md" in ci  # CI reads the commands from here, not from a copy


def test_every_storescu_example_sends_without_nagle_delays() -> None:
    documents = README + (ROOT / "docker-compose.yml").read_text()
    lines = [line for line in documents.splitlines() if re.search(r"storescu\s+-[a-z]", line)]
    assert lines
    for line in lines:
        assert "TCP_NODELAY=1 storescu" in line, line


def test_jq_recipes_say_how_events_are_kept_and_read_live() -> None:
    assert "jq --unbuffered" in README
    assert "pypx-listener > events.ndjson" in README


def test_the_default_run_leaves_nothing_for_git_to_pick_up() -> None:
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    for folder in ("/incoming/", "/data/", "/log/", "/quarantine/", "/examples/", "/.venv/"):
        assert folder in ignored or folder.strip("/") + "/" in ignored, folder


# -- tests stop what they start -------------------------------------------------


def test_a_failing_test_leaves_no_service_running(tmp_path: Path) -> None:
    failing = tmp_path / "test_fails.py"
    pid_file = tmp_path / "pid"
    failing.write_text(
        textwrap.dedent(
            f"""
            from pathlib import Path
            from tests.listener import Listener

            def test_fails(tmp_path):
                running = Listener(tmp_path).start()
                Path({str(pid_file)!r}).write_text(str(running.process.pid))
                assert False, "a test that fails before it stops its service"
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "-q", str(failing)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout
    assert "1 failed" in result.stdout
    pid = int(pid_file.read_text())
    assert not Path(f"/proc/{pid}").exists()


# -- pypx-listener messages -------------------------------------------------------


def test_an_unknown_option_is_one_line_and_a_hint() -> None:
    result = listener_run("--no-such-option")
    assert result.returncode == 2
    assert "unrecognized arguments: --no-such-option" in one_line_and_a_hint(
        result.stderr, "pypx-listener"
    )


def test_help_shows_every_switch_both_ways() -> None:
    shown = listener_run("--help").stdout
    for option in ("--fsync", "--no-fsync", "--polling", "--no-polling", "--stall-timeout"):
        assert option in shown
    assert "usable cores" in shown


def test_a_folder_that_cannot_exist_says_why(tmp_path: Path) -> None:
    result = listener_run(
        *("--incoming", str(tmp_path / "in"), "--datadir", "/proc/pypx/data"),
        *("--logdir", str(tmp_path / "l"), "--quarantine", str(tmp_path / "q")),
    )
    assert result.returncode == 3
    one_line_and_a_hint(result.stderr, "pypx-listener")
    assert "proc pseudo file system" in result.stderr
    assert "create /proc" not in result.stderr


def test_a_metrics_port_in_use_says_so_before_anything_starts(tmp_path: Path) -> None:
    import socket  # noqa: PLC0415

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = listener_run(
            *("--incoming", str(tmp_path / "in"), "--datadir", str(tmp_path / "d")),
            *("--logdir", str(tmp_path / "l"), "--quarantine", str(tmp_path / "q")),
            *("--metrics-host", "127.0.0.1", "--metrics-port", str(port)),
        )
    assert result.returncode == 3
    one_line_and_a_hint(result.stderr, "pypx-listener")
    assert f"--metrics-port {port}" in result.stderr
    assert "watcher.started" not in result.stdout


def test_a_mistyped_environment_variable_is_warned_about(tmp_path: Path) -> None:
    with listener(tmp_path, env={"PYPX_LISTENER_SETLE": "3"}) as running:
        assert running.stop() == 0
    (warned,) = running.of("watcher.unknown_setting")
    assert warned["variable"] == "PYPX_LISTENER_SETLE"
    assert warned["level"] == "warning"


# -- pypx-repack messages ---------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/no/such/file"], "no such file: /no/such/file"),
        (["--jobs", "0", "."], "argument -j/--jobs: must be at least 1, not 0"),
        (["--xcrdir", "/tmp"], "--xcrdir needs --xcrfile"),
        (["--no-such-option"], "unrecognized arguments: --no-such-option"),
        (["--layout", "weird", "."], "--layout='weird' is not a layout name"),
    ],
)
def test_pypx_repack_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = run_cli("--datadir", tmp_path / "data", *args)
    assert result.returncode == 2
    assert message in one_line_and_a_hint(result.stderr, "pypx-repack")
    assert not (tmp_path / "data").exists()


def test_a_named_file_that_cannot_be_repacked_is_a_failure(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("not dicom" * 100)
    good = write_dicom(tmp_path / "MR.1")
    result = run_cli("--datadir", tmp_path / "data", junk, good)
    assert result.returncode == 1
    assert "1 repacked, 0 skipped (not DICOM or not a regular file), 1 failed" in result.stderr
    assert "notes.txt: no DICM marker" in result.stderr
    assert junk.exists()
