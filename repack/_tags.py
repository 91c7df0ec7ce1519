"""DICOM numbers and one rule shared by the fast header reader and the full read.

Kept in one place so that the two readers cannot disagree on what a complete
instance is: an instance must carry pixel data when it is an image, that is
when it has ``Rows`` or its SOP class is an "Image Storage" class.
"""

from __future__ import annotations

from pydicom.uid import UID

__all__ = ["PIXEL_TAGS", "ROWS", "UNDEFINED_LENGTH", "must_have_pixels"]

#: A value length that means "until the delimiter".
UNDEFINED_LENGTH = 0xFFFF_FFFF
#: Pixel Data, Float Pixel Data, Double Float Pixel Data.
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
#: Rows: an instance that has it is an image.
ROWS = 0x00280010


def must_have_pixels(has_rows: bool, sop_class_uid: str | None) -> bool:
    """Whether an instance must carry pixel data to be complete."""
    if has_rows:
        return True
    return sop_class_uid is not None and "Image Storage" in getattr(UID(sop_class_uid), "name", "")
