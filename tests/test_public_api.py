"""The public surface of both packages: what a user of the library may call.

A name added to or removed from ``__all__`` is a decision, not an accident:
this test changes with it.
"""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from importlib import metadata

import pytest

from .helpers import installed

SURFACES = {
    # The library, for its users: about 20 names, as httpx holds its own exports.
    "repack": {
        "Repacker", "Repacked", "repack_file", "MissingElement", "plan_placement",
        "Instance", "read_instance",
        "Layout", "NamedLayout", "Template", "parse_template",
        "Event", "configure_logging", "get_logger",
        "RepackError", "TemplateError", "InvalidInstanceError", "NotDicomError",
        "TruncatedFileError", "MalformedFileError", "NotRegularFileError",
        "MissingRequiredTagError", "RefusedInstanceError", "StorageError",
    },
    # What the service builds on, documented as such, with no compatibility promise.
    "repack.plumbing": {
        "LOCK_DIR", "NOT_DEFINED", "REQUIRED_KEYWORDS", "TEMP_PREFIX",
        "SourceFile", "open_root", "open_beneath", "open_path", "folder_beneath", "file_type",
        "open_folder_beneath", "Others", "SourceVanishedError", "read_source", "try_claim",
        "Store", "sweep_stale_temps", "probe_writable", "json_bytes", "dumps", "printable",
        "sanitize_component", "seahash_hex", "sender_folder", "shorten", "token", "storage_error",
        "log_repacked", "output_blocked_for", "collected_warnings",
        "CliError", "OneLineParser", "add_layout_arguments", "layout_from_arguments",
        "report_error", "version",
    },
    "watcher": {
        "ENV_PREFIX", "EXIT_CONFIG", "EXIT_OUTPUT_LOST", "EXIT_STARTUP", "ConfigError", "Service",
        "Settings", "WatcherError", "parse_settings",
    },
}  # fmt: skip


@pytest.mark.parametrize("package", sorted(SURFACES))
def test_the_public_surface_is_what_it_is_meant_to_be(package: str) -> None:
    module = importlib.import_module(package)
    assert set(module.__all__) == SURFACES[package]
    assert len(module.__all__) == len(set(module.__all__))
    for name in module.__all__:
        member = getattr(module, name)
        if inspect.isclass(member) or inspect.isfunction(member):
            # Defined in this package's private modules, re-exported here.
            root = package.split(".", maxsplit=1)[0]
            assert member.__module__.startswith(f"{root}._"), (name, member.__module__)


def test_one_version_from_the_package_metadata() -> None:
    import repack  # noqa: PLC0415

    version = metadata.version("pypx-listener")
    assert repack.__version__ == version
    for command in ("pypx-repack", "pypx-listener"):
        shown = subprocess.run([installed(command), "--version"], capture_output=True,
                               text=True, timeout=60, check=True)  # fmt: skip
        assert shown.stdout.split() == [command, version]


@pytest.mark.parametrize("package", ["repack", "watcher"])
def test_each_package_runs_with_python_m(package: str) -> None:
    shown = subprocess.run([sys.executable, "-m", package, "--help"], capture_output=True,
                           text=True, timeout=60, check=False)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "usage:" in shown.stdout


def test_no_package_imports_a_private_module_of_another() -> None:
    """``watcher`` reaches ``repack`` through ``repack`` and ``repack.plumbing`` only."""
    import ast  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    root = Path(__file__).resolve().parent.parent
    found = []
    for package, other in (("watcher", "repack"), ("repack", "watcher")):
        for path in sorted((root / package).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                modules = []
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                elif isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                found += [
                    f"{path.name}: {module}"
                    for module in modules
                    if module.split(".")[0] == other
                    and any(part.startswith("_") for part in module.split(".")[1:])
                ]
    assert found == []
