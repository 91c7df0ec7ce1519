"""Malformed inputs made from a small valid instance: cuts, flipped bits, lies, noise.

Shared by the hostile-input tests and the fast header reader's equivalence
test.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from repack import read_instance

from .conftest import make_dataset, write_dicom

__all__ = ["base_file", "deep_sequence", "element_offsets", "fuzz_inputs"]


def base_file(tmp: Path) -> bytes:
    item = Dataset()
    item.ReferencedSOPInstanceUID = "1.2.3.4"
    ds = make_dataset()
    ds.ReferencedImageSequence = Sequence([item, item])
    return write_dicom(tmp / "base.dcm", ds).read_bytes()


def element_offsets(data: bytes, tmp: Path) -> list[int]:
    """Where each top-level element's value starts (its length field is just before)."""
    path = tmp / "offsets.dcm"
    path.write_bytes(data)
    instance = read_instance(path)
    return [
        e.value_tell
        for e in instance.dataset._dict.values()  # the raw elements, in file order
        if hasattr(e, "value_tell")
    ]


def deep_sequence(depth: int, base: bytes) -> bytes:
    """A valid header followed by ``depth`` nested undefined-length sequences."""
    item_start, item_end = b"\xfe\xff\x00\xe0\xff\xff\xff\xff", b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
    seq_end = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    sequence_header = struct.pack("<HH", 0x0008, 0x1140) + b"SQ\x00\x00\xff\xff\xff\xff"
    body = (sequence_header + item_start) * depth + (item_end + seq_end) * depth
    return base[: 132 + 12 + 200] + body  # the preamble and the start of the meta group


def fuzz_inputs(base: bytes, offsets: list[int], rng: random.Random) -> list[bytes]:
    inputs: list[bytes] = []
    inputs += [base[:cut] for cut in range(len(base))]  # truncation at every byte
    for position in range(len(base)):  # a flipped byte everywhere
        mutated = bytearray(base)
        mutated[position] ^= 1 << rng.randrange(8)
        inputs.append(bytes(mutated))
    for offset in offsets:  # corrupt declared lengths: tiny, odd, huge, undefined
        for value in (0, 1, 3, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFF0, 0xFFFFFFFF):
            for width, fmt in ((4, "<I"), (2, "<H")):
                if offset - width >= 0 and value < 1 << (8 * width):
                    mutated = bytearray(base)
                    mutated[offset - width : offset] = struct.pack(fmt, value)
                    inputs.append(bytes(mutated))
    inputs += [rng.randbytes(rng.randrange(0, 4000)) for _ in range(300)]  # noise
    inputs += [b"\x00" * 128 + b"DICM" + rng.randbytes(rng.randrange(0, 2000)) for _ in range(600)]
    inputs += [deep_sequence(depth, base) for depth in (1, 10, 100, 500, 2000, 20000)]
    while len(inputs) < 10_500:  # several random mutations at once
        mutated = bytearray(base)
        for _ in range(rng.randrange(1, 8)):
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        inputs.append(bytes(mutated[: rng.randrange(len(mutated) // 2, len(mutated) + 1)]))
    return inputs
