"""JSON bytes for every file and event line this project writes.

pypx readers are Python's ``json`` module in whatever locale the host has:
px-repack wrote ASCII (``json.dump``'s default), and in a non-UTF-8 locale
pypx's own readers fail on raw UTF-8. So non-ASCII text is written as
``\\uXXXX`` escapes. orjson does the encoding (fast, and it writes no
``NaN``); the escaping pass runs only when the bytes are not already ASCII.

File names are bytes on Linux and reach Python as text with lone surrogates
(``\\udcff`` for the byte ``0xff``), which no JSON encoder accepts: such a
string is written with each undecodable byte spelled ``\\xff``, so an event
or a note names the file readably and never fails.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

__all__ = ["dumps", "json_bytes", "printable"]

_NON_ASCII = re.compile(r"[^\x00-\x7f]")
_INDENT = orjson.OPT_INDENT_2


def printable(text: str) -> str:
    """``text`` with lone surrogates (undecodable name bytes) spelled ``\\xNN``."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raw = text.encode("utf-8", "surrogateescape")
        return raw.decode("utf-8", "backslashreplace")
    return text


def _repair(value: Any) -> Any:
    """A copy of ``value`` whose strings (keys too) are all encodable."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {_repair(k): _repair(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_repair(v) for v in value]
    return value


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def dumps(document: Any, *, indent: bool = False, default: Any = None) -> bytes:
    """``document`` as ASCII JSON bytes (``\\uXXXX`` escapes, as ``json.dump``)."""
    option = _INDENT if indent else 0
    try:
        data = orjson.dumps(document, option=option, default=default)
    except TypeError:  # a str with lone surrogates: a non-UTF-8 file name
        data = orjson.dumps(_repair(document), option=option, default=default)
    if data.isascii():
        return data
    return _NON_ASCII.sub(_escape, data.decode("utf-8")).encode("ascii")


def json_bytes(document: dict[str, Any]) -> bytes:
    """A log file's bytes: indented ASCII JSON, as pypx readers in any locale accept."""
    return dumps(document, indent=True)
