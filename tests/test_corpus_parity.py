"""Parity with the real px-repack 3.10.16 on files nobody here wrote: pydicom's own test corpus.

``get_examples.sh`` copies every file of pydicom 2.4's ``test_files`` and
``charset_files`` and runs the real px-repack 3.10.16 and 3.12.6 on each,
into a tree of its own. Here each file is repacked again by ``Repacker``
with the ``px-repack-3.10`` and ``px-repack-3.12`` layouts into a fresh
tree, and the two trees are compared: the data file's path and bytes, and
every log file, parsed (stat fields, inode numbers, times and the absolute
form of px's relative paths aside).

A file px repacks and we refuse must be refused for a reason listed in
:data:`REFUSED_FOR_CAUSE` (the README's parity section says why); nothing
else may differ.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from repack import InvalidInstanceError, Layout, Repacker, read_instance

from .conftest import _examples_dir, _need
from .listener import listener

pytestmark = [pytest.mark.parity, pytest.mark.slow]

#: Reasons for which we refuse a file that px repacks, and why (see the README).
REFUSED_FOR_CAUSE = {
    # A file cut short: px repacks what pydicom happens to parse of it.
    "truncated": "a truncated file is never repacked",
    # Without one of the three UIDs px files every such instance under one name.
    "missing-required-tag": "an instance without its UIDs would collide with others",
}
#: Stat fields that describe one particular file on one particular disk.
_VOLATILE_STAT = {"ino", "dev", "rdev", "nlink", "uid", "gid", "blksize", "blocks",
                  "atime", "mtime", "ctime"}  # fmt: skip


def corpus() -> Path:
    return _need(_examples_dir() / "px-repack-corpus" / ".complete", "the px-repack corpus").parent


def corpus_files() -> list[str]:
    root = _examples_dir() / "px-repack-corpus" / "files"
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def tree(root: Path) -> dict[str, Path]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): p for p in root.rglob("*") if p.is_file()}


def load(path: Path) -> Any:
    return orjson.loads(path.read_bytes())


def _absolute(location: str, base: Path) -> str:
    """px's relative location (it stores ``--datadir`` as typed) made absolute."""
    return os.path.normpath(base / location)


def normalised(document: Any, px_cwd: Path | None) -> Any:
    """A log document without what differs between any two runs (stat fields,
    inode numbers, times), and with px's relative data paths made absolute."""
    if isinstance(document, dict):
        out = {}
        for key, value in document.items():
            if key in _VOLATILE_STAT:
                continue
            if key == "mode" and isinstance(value, int):
                # A copy never keeps execute (or set-ID) bits; px's copy did.
                out[key] = value & ~0o7111
                continue
            if key in ("FSlocation", "SeriesBaseDir") and isinstance(value, str):
                location = _absolute(value, px_cwd) if px_cwd is not None else value
                out[key] = "<data>/" + location.split("/data/", 1)[-1]
                continue
            out[key] = normalised(value, px_cwd)
        return out
    if isinstance(document, list):
        return [normalised(v, px_cwd) for v in document]
    return document


#: Where each layout's reference is: what the real px-repack of that version made.
RUNS = {"px-repack-3.10": ("runs", ".complete"), "px-repack-3.12": ("runs-3.12", ".complete-3.12")}


def differences(relative: str, layout: str, scratch: Path) -> list[str]:
    """What differs between px's output for one corpus file and ours."""
    base = corpus()
    runs, complete = RUNS[layout]
    _need(base / complete, f"the {layout} reference")
    run = base / runs / relative
    source = base / "files" / relative
    ours = scratch / relative.replace("/", "_")
    repacker = Repacker(ours / "data", ours / "log", Layout.named(layout), move=False)
    found: list[str] = []
    px_data = tree(run / "data")
    try:
        repacker.repack(source)
    except InvalidInstanceError as error:
        if px_data and error.reason not in REFUSED_FOR_CAUSE:
            found.append(f"px repacks it, we refuse it: {error.reason}: {error}")
        return found
    our_data = tree(ours / "data")
    if not px_data:
        found.append(f"we repack it to {sorted(our_data)}, px refuses it")
        return found
    found += _data_differences(px_data, our_data)
    px_logs = {k: p for k, p in tree(run / "log").items() if k.endswith(".json")}
    if px_logs or read_instance(source).present("PatientID"):
        # (Else px wrote the data file, then died of KeyError: 'PatientID' before any log.)
        found += _log_differences(px_logs, tree(ours / "log"), run)
    shutil.rmtree(ours, ignore_errors=True)
    return found


def _data_differences(px_data: dict[str, Path], our_data: dict[str, Path]) -> list[str]:
    if sorted(our_data) != sorted(px_data):
        return [f"data path: px {sorted(px_data)}, ours {sorted(our_data)}"]
    return [
        f"data bytes differ: {name}"
        for name, path in px_data.items()
        if path.read_bytes() != our_data[name].read_bytes()
    ]


def _log_differences(px_logs: dict[str, Path], ours: dict[str, Path], run: Path) -> list[str]:
    our_logs = {k: p for k, p in ours.items() if not k.startswith(".locks")}
    found = []
    if sorted(px_logs) != sorted(our_logs):
        found.append(f"log files: only px {sorted(set(px_logs) - set(our_logs))},"
                     f" only ours {sorted(set(our_logs) - set(px_logs))}")  # fmt: skip
    for name in sorted(set(px_logs) & set(our_logs)):
        theirs = normalised(load(px_logs[name]), run)
        mine = normalised(load(our_logs[name]), None)
        if theirs != mine:
            found.append(f"log {name}: {_first_difference(theirs, mine)}")
    return found


def _first_difference(theirs: Any, mine: Any, where: str = "") -> str:
    if isinstance(theirs, dict) and isinstance(mine, dict):
        for key in sorted(set(theirs) | set(mine)):
            if key not in mine:
                return f"{where}/{key}: only px ({theirs[key]!r:.80})"
            if key not in theirs:
                return f"{where}/{key}: only ours ({mine[key]!r:.80})"
            if theirs[key] != mine[key]:
                return _first_difference(theirs[key], mine[key], f"{where}/{key}")
    if isinstance(theirs, str) and isinstance(mine, str):
        at = next((i for i, (a, b) in enumerate(zip(theirs, mine, strict=False)) if a != b), None)
        at = min(len(theirs), len(mine)) if at is None else at
        return f"{where} at {at}: px {theirs[at - 40 : at + 60]!r} ours {mine[at - 40 : at + 60]!r}"
    return f"{where}: px {theirs!r:.120} ours {mine!r:.120}"


# pydicom warns about many of these files; the service reports them, here they are noise.
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("layout", sorted(RUNS))
def test_every_corpus_file_lands_where_px_puts_it_with_the_same_logs(
    layout: str, tmp_path: Path
) -> None:
    files = corpus_files()
    corpus()
    assert len(files) >= 90
    report = {}
    for relative in files:
        found = differences(relative, layout, tmp_path)
        if found:
            report[relative] = found
    lines = [f"{name}: {d}" for name, found in report.items() for d in found]
    assert not report, f"{len(report)} of {len(files)} files differ:\n" + "\n".join(lines)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("layout", sorted(RUNS))
def test_repeating_groups_are_listed_as_px_lists_them(layout: str, tmp_path: Path) -> None:
    """Overlays (60xx) and curves (50xx): px lists each keyword that pydicom 2.4's
    ``Dataset.dir()`` gives, with ``'no attribute'`` (it cannot read them by name)."""
    _need(corpus() / ".complete-pydicom-3", "pydicom 3's files with repeating groups")
    files = [f for f in corpus_files() if f.startswith("pydicom-3/")]
    assert files
    for relative in files:
        assert differences(relative, layout, tmp_path) == [], relative


def test_the_service_accounts_for_every_corpus_file(tmp_path: Path) -> None:
    """Every file of the corpus, dropped into a running service at once, is repacked or
    quarantined with a reason: none is lost, none stays behind."""
    files_root = corpus() / "files"
    files = corpus_files()
    args = ("--layout", "px-repack-3.10", "--settle", "0.2", "--quarantine-after", "1",
            "--scan-interval", "2")  # fmt: skip
    with listener(tmp_path, *args) as running:
        staged = tmp_path / "staged"
        for number, relative in enumerate(files):
            target = staged / f"{number:04d}" / Path(relative).name
            target.parent.mkdir(parents=True)
            shutil.copyfile(files_root / relative, target)
        staged.rename(running.incoming / "corpus")
        running.wait_for(
            lambda: running.count("repack.done") + running.count("repack.failed") == len(files),
            120,
            "every corpus file repacked or quarantined",
        )
        assert running.stop() == 0
    assert running.incoming_files() == []
    # Several corpus files are one instance in other encodings: one destination.
    destinations = {event["dst"] for event in running.of("repack.done")}
    assert {str(p) for p in running.data_files()} == destinations
    # Each quarantined file lies beside its note, <name>.json, and nothing else is there.
    kept = set(running.quarantine.iterdir())
    for event in running.of("repack.failed"):
        quarantined = Path(str(event["quarantined"]))
        assert quarantined in kept
        assert quarantined.with_name(quarantined.name + ".json") in kept
    assert len(kept) == 2 * running.count("repack.failed")
    reasons = {event["reason"] for event in running.of("repack.failed")}
    assert reasons <= {"not-dicom", "truncated", "missing-required-tag", "malformed"}
