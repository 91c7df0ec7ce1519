"""SeaHash, the 64-bit hash that rx-repack uses for the ``seahash`` function.

A small pure-Python port of the reference algorithm (the ``seahash`` Rust
crate's ``reference`` module): four lanes of state, each 8-byte little-endian
word of the input mixed into the next lane with ``diffuse``, the lanes and the
length folded together at the end.
"""

from __future__ import annotations

__all__ = ["seahash", "seahash_hex"]

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
