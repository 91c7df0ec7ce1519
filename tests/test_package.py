"""The package as users receive it: sdist and wheel built, checked, installed, run.

``python -m build`` makes both from this checkout (the wheel from the sdist, as
PyPI's users get it), ``twine check`` reads their metadata as PyPI would, and the
wheel goes into a fresh venv (only the versions of ``constraints.txt``) where
its three commands run: ``pypx-repack`` on one real instance, ``pypx-listener``
repacking a file dropped into its folder, ``pypx-healthcheck`` asking it.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import ROOT
from .dcmtk import LOOPBACK, free_port
from .helpers import installed, wait_for
from .listener import Listener

pytestmark = pytest.mark.slow


def _run(*command: str | Path, cwd: Path | None = None, timeout: float = 600) -> str:
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    installed("twine")
    out = tmp_path_factory.mktemp("dist")
    _run(sys.executable, "-m", "build", "--outdir", out, ROOT)
    return out


@pytest.fixture(scope="module")
def venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with only the wheel and its dependencies (as constraints.txt pins them)."""
    folder = tmp_path_factory.mktemp("venv") / "venv"
    _run(sys.executable, "-m", "venv", folder)
    (wheel,) = dist.glob("*.whl")
    pip = (folder / "bin" / "python", "-m", "pip", "--disable-pip-version-check")
    _run(*pip, "install", "--quiet", "-c", ROOT / "constraints.txt", wheel)
    return folder


def test_twine_finds_both_distributions_valid(dist: Path) -> None:
    files = sorted(dist.iterdir())
    assert sorted(f.suffix for f in files) == [".gz", ".whl"], files
    output = _run(sys.executable, "-m", "twine", "check", "--strict", *files)
    assert output.count("PASSED") == 2, output


def test_the_wheel_holds_the_library_and_nothing_of_the_tests(dist: Path) -> None:
    (wheel,) = dist.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {
        str(path.relative_to(ROOT))
        for package in ("repack", "watcher")
        for path in (ROOT / package).iterdir()
        if path.suffix == ".py" or path.name == "py.typed"
    }
    assert sources <= names, sorted(sources - names)
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "examples/"))]
    (entry_points,) = [n for n in names if n.endswith("entry_points.txt")]
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    for command in ("pypx-listener", "pypx-repack", "pypx-healthcheck"):
        assert f"{command} = " in scripts


def test_the_installed_commands_repack_serve_and_answer(
    venv: Path, example_files: list[Path], tmp_path: Path
) -> None:
    bin_dir = venv / "bin"
    # Nothing of this checkout on the way: the venv's own copy is what runs.
    where = _run(
        bin_dir / "python", "-c", "import repack, watcher; print(repack.__file__)", cwd=tmp_path
    )
    assert str(venv) in where, where
    one = example_files[0]
    _run(
        bin_dir / "pypx-repack",
        "--xcrdir", one.parent, "--xcrfile", one.name,
        "--datadir", tmp_path / "once" / "data", "--logdir", tmp_path / "once" / "log",
        cwd=tmp_path,
    )  # fmt: skip
    assert len(list((tmp_path / "once" / "data").rglob("*.dcm"))) == 1
    port = free_port()
    service = Listener(tmp_path / "service")
    service.command = [
        str(bin_dir / "pypx-listener"),
        "--incoming", str(service.incoming), "--datadir", str(service.data),
        "--logdir", str(service.log), "--quarantine", str(service.quarantine),
        "--log-format", "json", "--settle", "0.5",
        "--metrics-port", str(port), "--metrics-host", LOOPBACK,
    ]  # fmt: skip
    service.start()
    try:
        (service.incoming / "MR.smoke").write_bytes(one.read_bytes())
        wait_for(lambda: service.count("repack.done") == 1, 30, "repack.done")
        assert service.process is not None
        _run(bin_dir / "pypx-healthcheck", "--pid", str(service.process.pid))
    finally:
        assert service.stop() == 0
