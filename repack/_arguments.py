"""Command-line plumbing shared by ``pypx-repack`` and ``pypx-listener``.

Both commands print errors the same way (one line, then a ``hint:`` line,
then an exit code), parse the same layout options, and read the version
from the installed package. This module is imported by the two CLIs
(``repack._cli`` and ``watcher._settings``) and is deliberately not part of
:mod:`repack`'s public API.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from importlib import metadata
from typing import NoReturn

from ._errors import TemplateError
from ._template import Layout, NamedLayout

#: Exit status for a usage error: a bad option, value or template.
EXIT_USAGE = 2


def version() -> str:
    """The installed version of the ``pypx-listener`` distribution."""
    try:
        return metadata.version("pypx-listener")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"


class CliError(Exception):
    """An error the user can fix: a message, a hint and an exit code."""

    #: The exit status when none is given.
    default_exit_code = EXIT_USAGE

    def __init__(self, message: str, *, hint: str = "", exit_code: int | None = None) -> None:
        super().__init__(message)
        self.hint = hint
        self.exit_code = self.default_exit_code if exit_code is None else exit_code


def report_error(program: str, message: str, hint: str) -> None:
    """Print a one-line reason, and a fix hint when there is one, on stderr."""
    print(f"{program}: error: {message}", file=sys.stderr)
    if hint:
        print(f"{program}: hint: {hint}", file=sys.stderr)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line and a hint, not the whole usage."""

    def error(self, message: str) -> NoReturn:
        raise CliError(message, hint=f"see {self.prog} --help")


def add_layout_arguments(
    parser: argparse.ArgumentParser, env: Mapping[str, str] | None = None
) -> None:
    """Add ``--layout`` and px-repack's four template options to ``parser``.

    ``env`` maps option destinations to defaults (the service reads them
    from the environment). The layout name is validated by
    :func:`layout_from_arguments`, so a bad name from the environment gets
    the same message as one from the command line.
    """
    env = env or {}
    names = ", ".join(n.value for n in NamedLayout)
    group = parser.add_argument_group("layout of the data tree")
    group.add_argument(
        "--layout",
        default=env.get("layout", NamedLayout.RX_REPACK.value),
        metavar="NAME",
        help=f"named layout: {names} (default: %(default)s; px-repack-3.10 has no hash"
        " in series folders)",
    )
    for option, alias, dest, what in (
        ("--rootDirTemplate", None, "root_template", "patient folder"),
        ("--studyDirTemplate", None, "study_template", "study folder"),
        ("--seriesDirTemplate", None, "series_template", "series folder"),
        ("--imageTemplate", "--imageFileTemplate", "image_template", "image file"),
    ):
        flags = [option, alias] if alias else [option]
        group.add_argument(
            *flags,
            dest=dest,
            default=env.get(dest),
            metavar="TEMPLATE",
            help=f"px-repack %%-template for the {what} (overrides the layout's)",
        )


def layout_from_arguments(
    arguments: argparse.Namespace, *, layout_source: str = "--layout"
) -> Layout:
    """The validated :class:`Layout`, or a :class:`CliError` saying what to fix.

    ``layout_source`` names where the layout name came from (an option or an
    environment variable), for the message.
    """
    names = [n.value for n in NamedLayout]
    if arguments.layout not in names:
        raise CliError(
            f"{layout_source}={arguments.layout!r} is not a layout name",
            hint=f"use one of {', '.join(names)} (or give the four templates)",
        )
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
