"""The few geometry and rescale tags of a DICOM file, functional groups included, read with pydicom.

ITK's DICOM reader (GDCM) keeps no sequence in the metadata it hands out, so the pixel size, frame
positions and per-frame rescale an enhanced (multi-frame) image keeps in its functional groups cannot be
checked through it.
pydicom (which 3D Slicer ships, for its DICOM module) reads the header; only the values of
:data:`GEOMETRY_TAGS` (never a patient-identifying one) at the top level and inside
:data:`KEPT_SEQUENCES` are taken from it, as their stored text, never converted, and the file meta's
SOP class (which decides what ITK's reader applies of the rescale).
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

__all__ = ["read_geometry_tags", "quiet_pydicom", "GEOMETRY_TAGS", "KEPT_SEQUENCES", "MEDIA_STORAGE_SOP_CLASS"]

#: Values kept (as text): the pixel and frame geometry and the rescale of stored values, nothing else
GEOMETRY_TAGS = {
    0x00280008: "NumberOfFrames",
    0x00280030: "PixelSpacing",
    0x00181164: "ImagerPixelSpacing",
    0x00182010: "NominalScannedPixelSpacing",
    0x00180088: "SpacingBetweenSlices",
    0x00180050: "SliceThickness",
    0x00200032: "ImagePositionPatient",
    0x00200037: "ImageOrientationPatient",
    0x00281053: "RescaleSlope",
    0x00281052: "RescaleIntercept",
}
#: The file meta information's MediaStorageSOPClassUID (0002,0002), kept under its tag where the file has one
MEDIA_STORAGE_SOP_CLASS = 0x00020002
#: Sequences read into (as lists of items, each a dict like the top level)
KEPT_SEQUENCES = {
    0x52009229: "SharedFunctionalGroupsSequence",
    0x52009230: "PerFrameFunctionalGroupsSequence",
    0x00289110: "PixelMeasuresSequence",
    0x00209113: "PlanePositionSequence",
    0x00209116: "PlaneOrientationSequence",
    0x00289145: "PixelValueTransformationSequence",  # a frame's (or all frames') RescaleSlope/Intercept
    0x00540022: "DetectorInformationSequence",  # where an NM image keeps its position and orientation
}


@contextlib.contextmanager
def quiet_pydicom() -> Iterator[None]:
    """A block in which pydicom's warnings are not shown: what it finds odd in a header, or in a value as it reads
    or writes it (a SeriesInstanceUID such as '1.2.3.abc', a Modality in lower case). This package names what
    matters of a file in its own words; pydicom's, naming elements, had been shown beside them. The one block of
    :func:`read_geometry_tags` and of the DICOM reading in :mod:`MultimodalFusionLib.io`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _text(value: Any) -> str:
    """A value pydicom has already converted (an element it read eagerly), as DICOM's stored text:
    multiple values joined by backslashes."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value)


def _kept(data_set: Dataset) -> dict[int, Any]:
    found: dict[int, Any] = {}
    for tag in data_set.keys() & GEOMETRY_TAGS.keys():
        # the stored bytes (pydicom converts a value only when asked): a damaged number stays text
        # for io to refuse, and no value is validated, so no warning can quote one
        raw = data_set.get_item(tag).value
        found[int(tag)] = raw.decode("ascii", "replace").strip("\0 ") if isinstance(raw, bytes) else _text(raw)
    for tag in data_set.keys() & KEPT_SEQUENCES.keys():
        items = data_set[tag].value
        found[int(tag)] = [_kept(item) for item in items if isinstance(item, Dataset)]
    return found


def read_geometry_tags(path: str) -> dict[int, Any] | None:
    """The :data:`GEOMETRY_TAGS` at the top level of a DICOM file and, under each of the
    :data:`KEPT_SEQUENCES` found, a list of items holding the same; None when pydicom cannot read the
    file's header (not DICOM, damaged).

    Args:
        path: a DICOM file, Part 10 (with the "DICM" prefix) or a bare data set, in any uncompressed or
            deflated transfer syntax (pydicom's ``force=True``: ITK reads bare data sets too).

    Returns:
        ``{tag: text or [item, ...]}`` with tags as integers (``0x00280030`` for PixelSpacing), and the file meta's
        MediaStorageSOPClassUID under :data:`MEDIA_STORAGE_SOP_CLASS` where it has one.
    """
    try:
        with quiet_pydicom():
            data_set = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            found = _kept(data_set)
            # the file meta's SOP class: ITK's reader (GDCM) goes by it where the data set states none, and what it
            # applies of the rescale depends on the class (see io._itk_applied_rescale)
            media = getattr(data_set, "file_meta", None) or {}
            media_class = media.get(MEDIA_STORAGE_SOP_CLASS)
            if media_class is not None and media_class.value:
                found[MEDIA_STORAGE_SOP_CLASS] = _text(media_class.value).strip("\0 ")
            return found
    except Exception:  # noqa: BLE001 - pydicom fails on damaged files in many ways; None says "unreadable"
        return None
