"""``pypx-repack``: repack DICOM files once, as a storescp handler or in batch.

As a ``storescp -xcr`` handler (a drop-in for rx-repack and px-repack)::

    storescp -od /incoming -xcr "pypx-repack --xcrdir #p --xcrfile #f \\
        --datadir /data --logdir /log --cleanup --log-ndjson" 11113

In batch, over files and folders (recursively, every DICOM file whatever its
name)::

    pypx-repack --datadir /data --logdir /log /old/exports

Exit status: 0 when every DICOM file was repacked, 1 when one failed, 2 for
a usage error (bad option or template), each with a one-line reason.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import NotDicomError, RepackError, TemplateError
from ._events import configure_logging, get_logger
from ._repack import Repacker, RepackOutcome
from ._store import TEMP_PREFIX
from ._template import Layout, NamedLayout

__all__ = [
    "CliError",
    "add_layout_arguments",
    "layout_from_arguments",
    "main",
    "report_error",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    """An error the user can fix: a message, a hint and an exit code."""

    def __init__(self, message: str, *, hint: str = "", code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.hint = hint
        self.code = code


def report_error(program: str, message: str, hint: str) -> None:
    """Print a one-line reason, and a fix hint when there is one, on stderr."""
    print(f"{program}: error: {message}", file=sys.stderr)
    if hint:
        print(f"{program}: hint: {hint}", file=sys.stderr)


def add_layout_arguments(
    parser: argparse.ArgumentParser, env: dict[str, str] | None = None
) -> None:
    """Add ``--layout`` and px-repack's four template options to ``parser``.

    ``env`` maps option destinations to defaults (the service reads them
    from the environment).
    """
    env = env or {}
    group = parser.add_argument_group("layout of the data tree")
    group.add_argument(
        "--layout",
        default=env.get("layout", NamedLayout.RX_REPACK.value),
        choices=[n.value for n in NamedLayout],
        help="named layout (default: %(default)s; px-repack-3.10 has no hash in series folders)",
    )
    for option, alias, dest, what in (
        ("--rootDirTemplate", None, "root_template", "patient folder"),
        ("--studyDirTemplate", None, "study_template", "study folder"),
        ("--seriesDirTemplate", None, "series_template", "series folder"),
        ("--imageTemplate", "--imageFileTemplate", "image_template", "image file"),
    ):
        names = [option, alias] if alias else [option]
        group.add_argument(
            *names,
            dest=dest,
            default=env.get(dest),
            metavar="TEMPLATE",
            help=f"px-repack %%-template for the {what} (overrides the layout's)",
        )


def layout_from_arguments(arguments: argparse.Namespace) -> Layout:
    """The validated :class:`Layout`, or a :class:`CliError` explaining the template."""
    try:
        return Layout.named(
            arguments.layout,
            root=arguments.root_template,
            study=arguments.study_template,
            series=arguments.series_template,
            image=arguments.image_template,
        )
    except TemplateError as error:
        raise CliError(
            f"invalid template: {error}",
            hint="fields look like %PatientID or %_pad|5,0_SeriesNumber; see --help",
        ) from error


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
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
    parser.add_argument("-j", "--jobs", type=int, default=2, help="parallel workers in batch mode")
    parser.add_argument("--version", action="version", version="%(prog)s 0.1.0")
    add_layout_arguments(parser)
    return parser


@dataclass
class _Summary:
    repacked: int = 0
    skipped: int = 0
    failed: int = 0


def _walk(paths: Sequence[str], exclude: list[Path]) -> Iterator[Path]:
    for given in paths:
        path = Path(given)
        if path.is_dir():
            for folder, names, files in os.walk(path):
                here = Path(folder).resolve()
                names[:] = sorted(n for n in names if (here / n) not in exclude)
                for name in sorted(files):
                    if not name.startswith(TEMP_PREFIX):
                        yield Path(folder) / name
        else:
            yield path


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


def _repack_one(repacker: Repacker, path: Path) -> tuple[Path, RepackOutcome | RepackError]:
    try:
        return path, repacker.repack(path)
    except RepackError as error:
        return path, error


def _report(
    path: Path, result: RepackOutcome | RepackError, arguments: argparse.Namespace, log: Any
) -> str:
    """Log one file's result; return "repacked", "skipped" or "failed"."""
    if isinstance(result, RepackOutcome):
        if arguments.log_ndjson:
            log.info("repack.done", **result.event_fields())
        if arguments.verbosity >= 2:
            print(f"{path} -> {result.dst}", file=sys.stderr)
        return "repacked"
    kind = "skipped" if isinstance(result, NotDicomError) and arguments.paths else "failed"
    if arguments.log_ndjson:
        log.error(
            "repack.skipped" if kind == "skipped" else "repack.failed",
            src=str(path.absolute()),
            dst=None,
            error=str(result),
            reason=getattr(result, "reason", "storage"),
        )
    if arguments.verbosity >= (2 if kind == "skipped" else 1):
        print(f"pypx-repack: {path}: {result}", file=sys.stderr)
    return kind


def _files(arguments: argparse.Namespace) -> list[Path]:
    if arguments.xcrdirfile:
        return [Path(arguments.xcrdirfile)]
    if arguments.xcrfile:
        return [Path(arguments.xcrdir or ".") / arguments.xcrfile]
    if arguments.paths:
        exclude = [Path(arguments.datadir).resolve()]
        if arguments.logdir:
            exclude.append(Path(arguments.logdir).resolve())
        return list(_walk(arguments.paths, exclude))
    raise CliError(
        "nothing to repack",
        hint="give --xcrdir DIR --xcrfile NAME (as storescp -xcr does) or one or more PATHs",
    )


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command; return its exit status (raises :class:`CliError`)."""
    arguments = _parser().parse_args(argv)
    layout = layout_from_arguments(arguments)
    if arguments.log_ndjson:
        configure_logging(json=True)
    log = get_logger()
    files = _files(arguments)
    repacker = Repacker(arguments.datadir, arguments.logdir, layout, move=arguments.cleanup)
    summary = _Summary()
    started = time.perf_counter()
    progress = _Progress(len(files))
    with ThreadPoolExecutor(max_workers=max(1, arguments.jobs)) as pool:
        for path, result in pool.map(lambda p: _repack_one(repacker, p), files):
            kind = _report(path, result, arguments, log)
            setattr(summary, kind, getattr(summary, kind) + 1)
            progress.step()
    progress.close()
    if arguments.paths and arguments.verbosity >= 1:
        elapsed = time.perf_counter() - started
        print(
            f"pypx-repack: {summary.repacked} repacked, {summary.skipped} skipped (not DICOM),"
            f" {summary.failed} failed in {elapsed:.1f} s",
            file=sys.stderr,
        )
    return EXIT_FAILED if summary.failed else EXIT_OK


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point of ``pypx-repack``."""
    try:
        code = run(argv)
    except CliError as error:
        report_error("pypx-repack", str(error), error.hint)
        code = error.code
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
