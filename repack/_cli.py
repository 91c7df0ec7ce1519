r"""``pypx-repack``: repack DICOM files once, as a storescp handler or in batch.

As a ``storescp -xcr`` handler (a drop-in for rx-repack and px-repack)::

    storescp -od /incoming -xcr "pypx-repack --xcrdir #p --xcrfile #f \
        --datadir /data --logdir /log --cleanup --log-ndjson" 11113

In batch, over files and folders (recursively)::

    pypx-repack --datadir /data --logdir /log /old/exports

Exit status 0 when every DICOM file was repacked, 1 when one failed, 2 for a
usage error, each with a one-line reason.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ._arguments import (
    CliError,
    OneLineParser,
    add_layout_arguments,
    layout_from_arguments,
    report_error,
    version,
)
from ._errors import NotDicomError, NotRegularFileError, RepackError
from ._events import Event, configure_logging, get_logger, log_repacked
from ._repack import Repacked, Repacker
from ._source import open_beneath, open_root, printable
from ._temps import TEMP_PREFIX

EXIT_OK, EXIT_FAILED = 0, 1


def _jobs(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="pypx-repack",
        description=(
            "Repack DICOM files into <datadir>/<patient>/<study>/<series>/<image>.dcm"
            " and write the pypx JSON logs. One file (--xcrdir/--xcrfile, as storescp -xcr"
            " calls it) or many (PATH arguments, searched recursively)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("paths", nargs="*", metavar="PATH", help="files or folders to repack")
    parser.add_argument("-p", "--xcrdir", help="folder of the received file (storescp's #p)")
    parser.add_argument("-f", "--xcrfile", help="name of the received file (storescp's #f)")
    parser.add_argument("--xcrdirfile", help="full path of the received file")
    parser.add_argument("-d", "--datadir", required=True, help="root of the repacked data tree")
    parser.add_argument("-l", "--logdir", help="pypx log folder (no JSON logs when omitted)")
    parser.add_argument(
        "--cleanup",
        action="store_true",
        help="remove each source once it is repacked with its logs (move instead of copy)",
    )
    parser.add_argument(
        "-v", "--verbosity", type=int, default=1, help="0 quiet, 1 errors, 2 every file"
    )
    parser.add_argument(
        "--log-ndjson", action="store_true", help="print one JSON event line per file on stdout"
    )
    parser.add_argument(
        "-j", "--jobs", type=_jobs, default=2, help="parallel workers in batch mode (1 or more)"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    add_layout_arguments(parser)
    return parser


@dataclass(frozen=True)
class _Input:
    """One file to repack: named by the user, or found below a folder's descriptor."""

    path: Path
    #: Found by a folder walk: skip what is not DICOM, open it beneath ``root``.
    walked: bool = False
    root: int = -1
    relative: str = ""


def _walk(given: Path, root: int, exclude: list[Path]) -> Iterator[_Input]:
    """Every file below ``given`` (links to folders are not followed)."""
    for folder, names, files in os.walk(given):
        here = Path(folder)
        names[:] = sorted(n for n in names if (here / n).resolve() not in exclude)
        for name in sorted(files):
            if not name.startswith(TEMP_PREFIX):
                path = here / name
                yield _Input(path, walked=True, root=root, relative=str(path.relative_to(given)))


class _Progress:
    """A one-line progress bar on a terminal; silent elsewhere."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.enabled = sys.stderr.isatty() and total > 1

    def step(self) -> None:
        self.done += 1
        if self.enabled:
            width = 30
            filled = width * self.done // self.total
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def _repack_one(repacker: Repacker, given: _Input) -> tuple[_Input, Repacked | RepackError]:
    try:
        if given.root < 0:
            return given, repacker.repack(given.path)
        with open_beneath(given.root, given.relative, shown_as=given.path) as source:
            return given, repacker.repack_source(source)
    except RepackError as error:
        return given, error


def _report(
    given: _Input, result: Repacked | RepackError, arguments: argparse.Namespace, log: Any
) -> str:
    """Log one file's result; return "repacked", "skipped" or "failed"."""
    if isinstance(result, Repacked):
        if arguments.log_ndjson:
            log_repacked(log, result.event_fields())
        if arguments.verbosity >= 2:
            print(f"{printable(str(given.path))} -> {result.dst}", file=sys.stderr)
        return "repacked"
    # Inside a folder walk, what is not DICOM (or not a file) is passed over;
    # a file named on the command line that cannot be repacked is a failure.
    skip = given.walked and isinstance(result, NotDicomError | NotRegularFileError)
    kind = "skipped" if skip else "failed"
    if arguments.log_ndjson:
        log.error(
            Event.REPACK_SKIPPED if skip else Event.REPACK_FAILED,
            src=str(given.path.absolute()),
            dst=None,
            error=str(result),
            reason=getattr(result, "reason", "storage"),
        )
    if arguments.verbosity >= (2 if skip else 1):
        print(f"pypx-repack: {printable(str(given.path))}: {result}", file=sys.stderr)
    return kind


def _named_file(path: Path) -> _Input:
    if not os.path.lexists(path):
        raise CliError(f"no such file: {printable(str(path))}", hint="check the path")
    return _Input(path)


def _open_folder(folder: Path, *, cleanup: bool, roots: list[int]) -> int:
    """A descriptor of ``folder``, appended to ``roots``.

    With ``--cleanup`` the folder must not be a link itself: its files would be
    moved out of wherever it points. It is then opened as named, so that
    :func:`open_root` refuses a link swapped in after the check. Without
    ``--cleanup`` its files are only read (copied), and a link is followed.
    """
    if cleanup and folder.is_symlink():
        raise CliError(
            f"{printable(str(folder))} is a symbolic link to a folder; --cleanup never follows one",
            hint="name the folder itself, or leave out --cleanup to copy what it holds",
        )
    try:
        root = open_root(folder if cleanup else folder.resolve())
    except OSError as error:
        raise CliError(
            f"cannot open the folder {printable(str(folder))}: {error.strerror}",
            hint="check that it is a folder and its permissions",
            exit_code=EXIT_FAILED,
        ) from error
    roots.append(root)
    return root


def _beneath(folder: Path, relative: str, roots: list[int]) -> _Input:
    """A file to be moved (``--cleanup``): opened beneath its folder, no link followed
    (neither the folder named nor any below it on the way to the file)."""
    root = _open_folder(folder, cleanup=True, roots=roots)
    return replace(_named_file(folder / relative), root=root, relative=relative)


def _inputs_of(arguments: argparse.Namespace, roots: list[int]) -> list[_Input]:
    """The files to repack; descriptors of walked folders are appended to ``roots``."""
    given = [arguments.xcrdirfile is not None, arguments.xcrfile is not None, bool(arguments.paths)]
    if sum(given) > 1:
        raise CliError(
            "give one of --xcrdir/--xcrfile, --xcrdirfile or PATHs, not several",
            hint="storescp -xcr calls: --xcrdir #p --xcrfile #f",
        )
    if arguments.xcrdir is not None and arguments.xcrfile is None:
        raise CliError(
            "--xcrdir needs --xcrfile (the name of the file in that folder)",
            hint="storescp -xcr calls: --xcrdir #p --xcrfile #f",
        )
    if arguments.xcrdirfile or arguments.xcrfile:
        named = Path(arguments.xcrdirfile or Path(arguments.xcrdir or ".") / arguments.xcrfile)
        if not arguments.cleanup:
            return [_named_file(named)]
        if arguments.xcrdirfile:
            return [_beneath(named.parent, named.name, roots)]
        return [_beneath(Path(arguments.xcrdir or "."), arguments.xcrfile, roots)]
    if not arguments.paths:
        raise CliError(
            "nothing to repack",
            hint="give --xcrdir DIR --xcrfile NAME (as storescp -xcr does) or one or more PATHs",
        )
    exclude = [Path(arguments.datadir).resolve()]
    if arguments.logdir:
        exclude.append(Path(arguments.logdir).resolve())
    inputs: list[_Input] = []
    for text in arguments.paths:
        inputs.extend(_inputs_at(text, arguments.cleanup, exclude, roots))
    return inputs


def _inputs_at(text: str, cleanup: bool, exclude: list[Path], roots: list[int]) -> list[_Input]:
    """The file named ``text``, or the files of the folder it names (walked beneath it)."""
    path = Path(text)
    if not path.is_dir():
        return [_named_file(path)]
    return list(_walk(path, _open_folder(path, cleanup=cleanup, roots=roots), exclude))


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit status (raises :class:`CliError`)."""
    arguments = _parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGIO, signal.SIG_IGN)  # the lease tests' breaks (SourceFile.others)
    layout = layout_from_arguments(arguments)
    if arguments.log_ndjson:
        configure_logging(json=True)
    log = get_logger()
    roots: list[int] = []
    try:
        inputs = _inputs_of(arguments, roots)
        repacker = Repacker(
            arguments.datadir, arguments.logdir, layout, move=arguments.cleanup,
            lease_test=signal.getsignal(signal.SIGIO) is signal.SIG_IGN,
        )  # fmt: skip
        summary: Counter[str] = Counter()
        started = time.perf_counter()
        progress = _Progress(len(inputs))
        with ThreadPoolExecutor(max_workers=arguments.jobs) as pool:
            for given, result in pool.map(lambda j: _repack_one(repacker, j), inputs):
                kind = _report(given, result, arguments, log)
                summary[kind] += 1
                progress.step()
        progress.close()
    finally:
        for root in roots:
            os.close(root)
    if arguments.paths and arguments.verbosity >= 1:
        elapsed = time.perf_counter() - started
        print(
            f"pypx-repack: {summary['repacked']} repacked, {summary['skipped']} skipped (not DICOM"
            f" or not a regular file), {summary['failed']} failed in {elapsed:.1f} s",
            file=sys.stderr,
        )
    return EXIT_FAILED if summary["failed"] else EXIT_OK


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``pypx-repack``."""
    try:
        code = run(argv)
    except CliError as error:
        report_error("pypx-repack", str(error), error.hint)
        code = error.exit_code
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
