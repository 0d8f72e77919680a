"""The few geometry tags of a DICOM file, functional groups included, read without pydicom.

ITK's DICOM reader (GDCM) keeps no sequence in the metadata it hands out, so the pixel size and frame
positions an enhanced (multi-frame) image keeps in its functional groups cannot be checked through it;
pydicom is an optional extra. This walks the file's data set up to its pixel data, keeping only the
values of :data:`GEOMETRY_TAGS` (never a patient-identifying one) at the top level and inside
:data:`KEPT_SEQUENCES`, and skipping every other value unread.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from typing import Any, BinaryIO

__all__ = ["read_geometry_tags", "GEOMETRY_TAGS", "KEPT_SEQUENCES"]

#: Values kept (as text): the pixel and frame geometry, nothing else
GEOMETRY_TAGS = {
    0x00280008: "NumberOfFrames",
    0x00280030: "PixelSpacing",
    0x00181164: "ImagerPixelSpacing",
    0x00182010: "NominalScannedPixelSpacing",
    0x00180088: "SpacingBetweenSlices",
    0x00180050: "SliceThickness",
    0x00200032: "ImagePositionPatient",
    0x00200037: "ImageOrientationPatient",
}
#: Sequences read into (as lists of items, each a dict like the top level)
KEPT_SEQUENCES = {
    0x52009229: "SharedFunctionalGroupsSequence",
    0x52009230: "PerFrameFunctionalGroupsSequence",
    0x00289110: "PixelMeasuresSequence",
    0x00209113: "PlanePositionSequence",
    0x00209116: "PlaneOrientationSequence",
}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_IMPLICIT, _BIG_ENDIAN, _DEFLATED = "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"


class _Walker:
    def __init__(self, fh: BinaryIO, size: int, *, explicit: bool, little: bool):
        self.fh, self.size, self.explicit = fh, size, explicit
        self.order = "<" if little else ">"

    def _unpack(self, fmt: str, n: int) -> tuple:
        raw = self.fh.read(n)
        if len(raw) != n:
            raise EOFError
        return struct.unpack(self.order + fmt, raw)

    def header(self, explicit: bool) -> tuple[int, bytes | None, int]:
        group, element = self._unpack("HH", 4)
        tag = group << 16 | element
        if group == 0xFFFE or not explicit:  # items and delimiters never have a VR
            return tag, None, self._unpack("I", 4)[0]
        vr = self.fh.read(2)
        if vr in _LONG_VRS:
            self.fh.read(2)
            return tag, vr, self._unpack("I", 4)[0]
        return tag, vr, self._unpack("H", 2)[0]

    def skip(self, length: int) -> None:
        if self.fh.tell() + length > self.size:
            raise ValueError("a value runs past the end of the file")
        self.fh.seek(length, os.SEEK_CUR)

    def data_set(self, end: int | None, keep: bool, explicit: bool) -> dict[int, Any]:
        """Elements until ``end`` (a byte offset), an item delimiter, the pixel data or the end of the file."""
        found: dict[int, Any] = {}
        while end is None or self.fh.tell() < end:
            try:
                tag, vr, length = self.header(explicit)
            except EOFError:
                break
            if tag == _ITEM_END or tag == _PIXEL_DATA:
                break
            # an SQ, or an undefined length (only a sequence has one outside the pixel data; an UN one is
            # a sequence in implicit VR), or a known sequence in implicit VR
            if vr == b"SQ" or length == _UNDEFINED or (vr is None and tag in KEPT_SEQUENCES):
                inner = explicit and vr == b"SQ"
                if keep and tag in KEPT_SEQUENCES:
                    found[tag] = self.sequence(length, True, inner)
                elif length == _UNDEFINED:
                    self.sequence(length, False, inner)
                else:
                    self.skip(length)
            elif keep and tag in GEOMETRY_TAGS and length <= 1024:
                found[tag] = self.fh.read(length).decode("ascii", "replace").strip("\0 ")
            else:
                self.skip(length)
        return found

    def sequence(self, length: int, keep: bool, explicit: bool) -> list[dict[int, Any]]:
        end = None if length == _UNDEFINED else self.fh.tell() + length
        items = []
        while end is None or self.fh.tell() < end:
            tag, _, item_length = self.header(explicit)
            if tag == _SEQUENCE_END:
                break
            if tag != _ITEM:
                raise ValueError(f"expected a sequence item, found tag {tag:08X}")
            item_end = None if item_length == _UNDEFINED else self.fh.tell() + item_length
            item = self.data_set(item_end, keep, explicit)
            if keep:
                items.append(item)
        return items


def read_geometry_tags(path: str) -> dict[int, Any] | None:
    """The :data:`GEOMETRY_TAGS` at the top level of a DICOM file and, under each of the
    :data:`KEPT_SEQUENCES` found, a list of items holding the same; None when the file cannot be walked
    (not DICOM, damaged, or encoded in a way this reader does not know).

    Args:
        path: a DICOM file, Part 10 (with the "DICM" prefix) or a bare data set (implicit VR little endian).

    Returns:
        ``{tag: text or [item, ...]}`` with tags as integers (``0x00280030`` for PixelSpacing).
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            head = fh.read(132)
            syntax = None
            if head[128:132] == b"DICM":
                meta = _Walker(fh, size, explicit=True, little=True)
                while True:  # the file meta group: always explicit VR little endian
                    start = fh.tell()
                    tag, _, length = meta.header(True)
                    if tag >> 16 != 0x0002:
                        fh.seek(start)
                        break
                    value = fh.read(length)
                    if tag == 0x00020010:
                        syntax = value.rstrip(b"\0 ").decode("ascii", "replace")
            else:  # a bare data set: explicit VR if a VR follows the first tag
                fh.seek(0)
                explicit_guess = len(head) >= 6 and head[4:6].isalpha() and head[4:6].isupper()
                syntax = "1.2.840.10008.1.2.1" if explicit_guess else _IMPLICIT
            if syntax == _DEFLATED:
                rest = zlib.decompress(fh.read(), -zlib.MAX_WBITS)
                walker = _Walker(io.BytesIO(rest), len(rest), explicit=True, little=True)
            else:
                walker = _Walker(fh, size, explicit=syntax != _IMPLICIT, little=syntax != _BIG_ENDIAN)
            return walker.data_set(None, True, walker.explicit)
    except (OSError, ValueError, EOFError, struct.error, zlib.error):
        return None
