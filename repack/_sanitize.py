"""Turning tag values into file-name components that are always safe.

Pure functions, no file system: a component produced here is never empty,
never ``.`` or ``..``, contains no path separator, and is at most
:data:`MAX_COMPONENT_BYTES` bytes long, so a path joined from them can never
leave the directory it is joined onto.

SeaHash, the 64-bit hash that rx-repack uses (its ``seahash`` template
function, and here to keep shortened names apart), is a pure-Python port of
the reference algorithm (the ``seahash`` crate's ``reference`` module).
"""

from __future__ import annotations

import re

#: The longest file name (in bytes) that Linux file systems accept.
MAX_COMPONENT_BYTES = 255

_DISALLOWED = re.compile(r"[^A-Za-z0-9.\-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


_NOT_TOKEN = re.compile(r"[^A-Za-z0-9_-]")


def token(text: str) -> str:
    """``text`` with anything but a letter, a digit, ``-`` and ``_`` made ``_``: one
    word of a NATS subject, and a sender's folder (the same rule, so the names agree)."""
    return _NOT_TOKEN.sub("_", text)


def shorten(raw: bytes, limit: int, suffix: bytes = b"") -> bytes:
    """``raw + suffix`` if it fits in ``limit`` bytes; else as much of the head of
    ``raw`` as fits (never half a UTF-8 character), ``-`` and 16 hex digits of the
    SeaHash of ``raw + suffix``, then ``suffix``. The one shortener of names: two long
    names that differ only in their tails stay apart."""
    whole = raw + suffix
    if len(whole) <= limit:
        return whole
    digest = b"-" + format(seahash(whole), "016x").encode()
    return _whole_characters(raw[: limit - len(digest) - len(suffix)]) + digest + suffix


def _whole_characters(head: bytes) -> bytes:
    """``head`` without a UTF-8 character cut short at its end."""
    for back in range(1, min(4, len(head)) + 1):
        byte = head[-back]
        if byte & 0xC0 != 0x80:  # an ASCII byte or the lead of a character
            need = 1 if byte < 0x80 else 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return head if need <= back else head[:-back]
    return head


def _shorten(name: str, limit: int) -> str:
    """Cut ``name`` to ``limit`` UTF-8 bytes (:func:`shorten`), keeping its extension."""
    stem, dot, extension = name.rpartition(".")
    if stem and dot and len(extension) <= 8:
        raw, suffix = stem.encode("utf-8"), (dot + extension).encode("utf-8")
    else:
        raw, suffix = name.encode("utf-8"), b""
    return shorten(raw, limit, suffix).decode("utf-8")


def sanitize_component(text: str, *, max_bytes: int = MAX_COMPONENT_BYTES) -> str:
    """Make ``text`` a safe single path component, as px-repack names folders.

    Every run of characters outside ``[A-Za-z0-9.-]`` becomes one ``_``
    (px-repack's rule; a NUL inside a value too, so ``1.2\\x003`` never
    becomes the different UID ``1.23``). A result that is empty, ``.`` or
    ``..`` becomes ``_`` or underscores; one longer than ``max_bytes`` is
    shortened with a hash suffix.
    """
    cleaned = _DISALLOWED.sub("_", text)
    if cleaned in ("", ".", ".."):
        cleaned = "_" * max(1, len(cleaned))
    return _shorten(cleaned, max_bytes)


def is_safe_name(name: str, *, suffix: str = "") -> bool:
    """Whether ``name + suffix`` can be used as-is as one file name.

    Ordinary PatientIDs and UIDs (including ones with spaces, which pypx
    readers look up verbatim) are safe, and so is an empty one whose suffix
    makes a name (px writes an empty PatientID's file as ``.json``, and pypx's
    readers look it up so); separators, NUL and control characters, and names
    that are empty, ``.``, ``..`` or over-long once the suffix is added, are not.
    """
    return (
        name + suffix not in ("", ".", "..")
        and "/" not in name
        and _CONTROL.search(name) is None
        and len((name + suffix).encode("utf-8", "surrogatepass")) <= MAX_COMPONENT_BYTES
    )


def safe_log_name(name: str, *, suffix: str = "", several: bool = False) -> str:
    """The name under which a log file for ``name`` is stored, without ``suffix``.

    ``name`` itself when :func:`is_safe_name` and it is one value; else
    (``several``: the element holds several values, and ``name`` is their
    text joined by ``\\``) its sanitised form followed by ``-`` and 16 hex digits of
    the SeaHash of ``name``, short enough that ``result + suffix`` fits in
    one component. The hash keeps apart names that sanitise alike (``a/b``
    and ``a_b``; ``1.2\\x003`` and ``1.23``), so two IDs never share a file.
    """
    if not several and is_safe_name(name, suffix=suffix):
        return name
    digest = "-" + format(seahash(name.encode("utf-8", "surrogatepass")), "016x")
    room = MAX_COMPONENT_BYTES - len(suffix.encode("utf-8")) - len(digest)
    return sanitize_component(name, max_bytes=room) + digest


_MASK = 0xFFFF_FFFF_FFFF_FFFF
_PRIME = 0x6EED0E9DA4D94A4F
_SEED = (0x16F11FE89B0D677C, 0xB480A793D8E6C86C, 0x6FE2E5AAF078EBC9, 0x14F994A4C5259381)


def _diffuse(x: int) -> int:
    x = (x * _PRIME) & _MASK
    x ^= (x >> 32) >> (x >> 60)
    return (x * _PRIME) & _MASK


def seahash(data: bytes) -> int:
    """Return the 64-bit SeaHash of ``data``."""
    lanes = list(_SEED)
    for lane, start in enumerate(range(0, len(data), 8)):
        word = int.from_bytes(data[start : start + 8], "little")
        lanes[lane % 4] = _diffuse(lanes[lane % 4] ^ word)
    a, b, c, d = lanes
    return _diffuse(a ^ b ^ c ^ d ^ (len(data) & _MASK))


def seahash_hex(text: str) -> str:
    """Lowercase hex of the SeaHash of ``text``'s UTF-8 bytes, not zero-padded."""
    return format(seahash(text.encode("utf-8")), "x")
