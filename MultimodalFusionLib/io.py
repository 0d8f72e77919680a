"""Read and write images and transforms, keeping geometry exactly.

Formats: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), 2D PNG/JPEG/BMP/TIFF
(grey; colour converted to luminance, the Y of ITU-R BT.601 YCbCr, unless ``keep_color``),
and DICOM series from a folder. Every image is a ``SimpleITK.Image`` in ITK's physical
(LPS) space: origin, spacing and direction are never dropped.

Outputs are written atomically: to a temporary file in the destination folder, then
renamed, so a crash never leaves a half-written result and an input is never overwritten.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools
import json
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import SimpleITK as sitk

from . import tensors
from .errors import InputError, itk_guard, itk_reason

__all__ = [
    "read_image",
    "UNITS_KEY",
    "dicom_units",
    "bids_sidecar_path",
    "segment_layers",
    "describe_segment_layers",
    "write_image",
    "check_output_name",
    "check_output_pixels",
    "plain_labels",
    "read_transform",
    "write_transform",
    "list_dicom_series",
    "image_info",
    "orientation_code",
    "to_luminance",
    "IMAGE_EXTENSIONS",
    "atomic_path",
    "atomic_output",
    "check_not_overwriting_inputs",
    "display_name",
    "make_output_dir",
    "output_folder",
    "missing_data_file",
    "remove_dead_leftovers",
    "replacing_outputs",
    "volume_extension",
    "write_bytes",
    "write_json",
    "staged_output",
    "to_json_safe",
    "JSON_INFINITY",
    "NOT_AVAILABLE",
    "number_text",
    "one_slice_axis",
    "one_slice_pixels",
    "one_slice_as_2d",
    "as_one_slice_of",
    "one_slice_inputs_as_2d",
    "UNPLACED_EXTENSIONS",
    "UNTURNED_EXTENSIONS",
]

IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".jpeg",
                    ".bmp", ".tif", ".tiff", ".dcm")
_2D_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
#: Formats whose files keep no origin or direction (ITK reads them at origin 0, identity direction): the 2D picture
#: formats, and TIFF (which keeps the spacing, and holds volumes too), BioRad PIC and Zeiss LSM
UNPLACED_EXTENSIONS = _2D_EXTENSIONS + (".tif", ".tiff", ".pic", ".lsm")
#: Formats that keep the origin and spacing but no direction (read as the identity): VTK legacy, GIPL and MRC
UNTURNED_EXTENSIONS = (".vtk", ".gipl", ".gipl.gz", ".mrc")
# DICOM tags that are safe to show: never patient-identifying ones (name, ID, birth date...).
_SAFE_SERIES_TAGS = {"0008|103e": "description", "0008|0060": "modality", "0020|0011": "series_number",
                     "0054|1001": "units"}
#: The metadata key (ITK's, of DICOM's Units (0054,1001)) of the units a DICOM PET or NM image states its values in:
#: BQML (Bq/mL), GML (SUV body weight, g/mL), CNTS (counts)... The one tag a DICOM image :func:`read_image` returns
#: keeps (it names no patient): what reads the values may know them (the web's SUV windows, a refused window's words)
UNITS_KEY = "0054|1001"
#: DICOM transfer syntaxes by UID: the pixel data as stored (those GDCM reads without a codec first)
_TRANSFER_SYNTAXES = {
    "1.2.840.10008.1.2": "Implicit VR Little Endian (uncompressed)",
    "1.2.840.10008.1.2.1": "Explicit VR Little Endian (uncompressed)",
    "1.2.840.10008.1.2.1.99": "Deflated Explicit VR Little Endian",
    "1.2.840.10008.1.2.2": "Explicit VR Big Endian (uncompressed)",
    "1.2.840.10008.1.2.4.50": "JPEG Baseline", "1.2.840.10008.1.2.4.51": "JPEG Extended",
    "1.2.840.10008.1.2.4.57": "JPEG Lossless", "1.2.840.10008.1.2.4.70": "JPEG Lossless SV1",
    "1.2.840.10008.1.2.4.80": "JPEG-LS Lossless", "1.2.840.10008.1.2.4.81": "JPEG-LS Near-Lossless",
    "1.2.840.10008.1.2.4.90": "JPEG 2000 Lossless", "1.2.840.10008.1.2.4.91": "JPEG 2000",
    "1.2.840.10008.1.2.4.92": "JPEG 2000 Part 2 Lossless", "1.2.840.10008.1.2.4.93": "JPEG 2000 Part 2",
    "1.2.840.10008.1.2.4.94": "JPIP Referenced", "1.2.840.10008.1.2.4.95": "JPIP Referenced Deflate",
    "1.2.840.10008.1.2.4.100": "MPEG-2 video", "1.2.840.10008.1.2.4.101": "MPEG-2 video",
    "1.2.840.10008.1.2.4.102": "MPEG-4 AVC/H.264 video", "1.2.840.10008.1.2.4.103": "MPEG-4 AVC/H.264 video",
    "1.2.840.10008.1.2.4.104": "MPEG-4 AVC/H.264 video", "1.2.840.10008.1.2.4.105": "MPEG-4 AVC/H.264 video",
    "1.2.840.10008.1.2.4.106": "MPEG-4 AVC/H.264 video", "1.2.840.10008.1.2.4.107": "HEVC/H.265 video",
    "1.2.840.10008.1.2.4.108": "HEVC/H.265 video", "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression", "1.2.840.10008.1.2.4.112": "JPEG XL",
    "1.2.840.10008.1.2.4.201": "High-Throughput JPEG 2000 Lossless",
    "1.2.840.10008.1.2.4.202": "High-Throughput JPEG 2000 (RPCL) Lossless",
    "1.2.840.10008.1.2.4.203": "High-Throughput JPEG 2000", "1.2.840.10008.1.2.5": "RLE Lossless",
}
#: Deflated Explicit VR Little Endian: the whole data set deflated, its pixel data native once inflated
_DEFLATED = "1.2.840.10008.1.2.1.99"
#: syntaxes ITK's GDCM has no decoder for: named before ITK tries (and prints codec noise to stderr)
_UNDECODABLE = {uid for uid, name in _TRANSFER_SYNTAXES.items() if "video" in name or "JPIP" in name
                or "JPEG XL" in name}
_DECOMPRESS_FIX = ("Convert the files to an uncompressed transfer syntax (Explicit VR Little Endian) first, e.g. "
                   "with GDCM's `gdcmconv --raw IN OUT`, DCMTK's dcmdjpeg/dcmdjpls/dcmdrle, or pydicom "
                   "(ds.decompress(), with pylibjpeg installed); a video holds no slices: export the images.")


def _dicom_transfer_syntax(path: str) -> str | None:
    """The Transfer Syntax UID (0002,0010) of a DICOM Part 10 file (read from its file meta group, as
    GDCM gives no access to it), or None for a file without the "DICM" prefix."""
    import struct

    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 14)
    except OSError:
        return None
    if head[128:132] != b"DICM":
        return None
    pos = 132
    while pos + 8 <= len(head):  # the file meta group is always explicit VR little endian
        group, element = struct.unpack("<HH", head[pos:pos + 4])
        if group != 0x0002:
            break
        vr = head[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            length, start = struct.unpack("<I", head[pos + 8:pos + 12])[0], pos + 12
        else:
            length, start = struct.unpack("<H", head[pos + 6:pos + 8])[0], pos + 8
        if element == 0x0010:
            return head[start:start + length].rstrip(b"\0 ").decode("ascii", "replace")
        pos = start + length
    return None


def _transfer_syntax_error(what: str, uid: str, itk_message: str | None = None) -> InputError:
    name = _TRANSFER_SYNTAXES.get(uid)
    stored = (f"{what} is stored as {name} (transfer syntax {uid})," if name else
              f"{what} is stored in an unknown (e.g. private) transfer syntax, {uid},")
    if itk_message is None:
        return InputError(f"{stored} which ITK's DICOM reader (GDCM) cannot decode.", _DECOMPRESS_FIX)
    return InputError(f"{stored} and ITK's DICOM reader (GDCM) could not decode its pixel data ({itk_message}): "
                      "the files may be damaged, or use a variant of that compression GDCM lacks.",
                      _DECOMPRESS_FIX + " If the converter fails too, the files are damaged: export them again.")


def _check_decodable(what: str, path: str, *, unknown_too: bool = False) -> str | None:
    """Refuse a DICOM file whose transfer syntax GDCM has no decoder for (``unknown_too``: or one not in
    the table, once GDCM has skipped the file); returns the syntax (None: not a DICOM file)."""
    uid = _dicom_transfer_syntax(path)
    if uid is not None and (uid in _UNDECODABLE or (unknown_too and uid not in _TRANSFER_SYNTAXES)):
        raise _transfer_syntax_error(what, uid)
    return uid


@contextlib.contextmanager
def _naming_transfer_syntax(what: str, uid: str | None) -> Iterator[None]:
    """An ITK failure reading compressed DICOM pixels ("Failed to change to Implicit Transfer Syntax")
    names the compression and the fix instead."""
    try:
        yield
    except InputError as exc:
        if uid is None or "uncompressed" in _TRANSFER_SYNTAXES.get(uid, ""):
            raise
        raise _transfer_syntax_error(what, uid, exc.problem) from exc


def _suffix(path: str | os.PathLike) -> str:
    name = str(path).lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def to_luminance(image: sitk.Image, name: str = "image", *, path: str | os.PathLike | None = None) -> sitk.Image:
    """Luminance (Y of BT.601 YCbCr: 0.299 R + 0.587 G + 0.114 B) of an RGB(A) image, float32.

    Raises:
        InputError: another number of components than 1, 3 or 4 (``validation.check_components``, naming
            ``name``, and a 2-component image by the file it came from, ``path`` where given).
    """
    n = image.GetNumberOfComponentsPerPixel()
    if n == 1:
        return image
    from .validation import check_components  # (validation imports io)

    check_components(image, name, path=path)
    # in float64, rounded to float32 once: summed in float32, a grey picture stored as RGB (R = G = B) had come out
    # off its grey value (209 as 209.00002: 7-9% of the pixels of Testing/Data's PNGs), so that the same slice
    # stored grey and stored as RGB were registered and resampled as different images
    # (each product in float64 too: 0.587 * a float32 channel is float32 under NumPy 2's promotion, so that a grey
    # float32 RGB had come out off its grey value in 5% of its pixels; one float64 channel at a time, in place)
    arr = sitk.GetArrayViewFromImage(image)
    y = np.multiply(arr[..., 0], 0.299, dtype=np.float64)
    y += np.multiply(arr[..., 1], 0.587, dtype=np.float64)
    y += np.multiply(arr[..., 2], 0.114, dtype=np.float64)
    out = sitk.GetImageFromArray(y.astype(np.float32))
    out.CopyInformation(sitk.VectorIndexSelectionCast(image, 0))
    return out


def list_dicom_series(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """The DICOM series in ``folder``: uid, description, modality, series_number, files.

    Only non-identifying tags are read (no patient name, ID or birth date).
    """
    folder = str(folder)
    if not os.path.isdir(folder):
        raise InputError(f"'{folder}' is not a folder.", "Give the folder that holds the DICOM files.")
    series = []
    with itk_guard(f"scanning DICOM folder '{folder}'"):
        # ITK prints "No Series were found" to stderr for a folder without DICOM; the clear error
        # below says it instead
        shown = sitk.ProcessObject.GetGlobalWarningDisplay()
        sitk.ProcessObject.SetGlobalWarningDisplay(False)
        try:
            uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
        finally:
            sitk.ProcessObject.SetGlobalWarningDisplay(shown)
        for uid in uids:
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid)
            info: dict[str, Any] = {"uid": uid, "files": list(files), "description": "", "modality": "",
                                    "series_number": "", "units": ""}
            try:
                reader = sitk.ImageFileReader()
                reader.SetFileName(files[0])
                reader.LoadPrivateTagsOff()
                reader.ReadImageInformation()
                for tag, key in _SAFE_SERIES_TAGS.items():
                    if reader.HasMetaDataKey(tag):
                        info[key] = reader.GetMetaData(tag).strip()
            except RuntimeError:
                pass
            series.append(info)
    return series


class SeveralDicomSeries(InputError):
    """A DICOM folder holds several series and none was picked (the problem lists them).

    ``series`` holds, for each, what a picker shows: ``uid``, ``description``, ``modality`` and
    ``files`` (the number of files); no patient-identifying tag.
    """

    def __init__(self, problem: str, fix: str | None = None, series: Sequence[dict[str, Any]] = ()):
        super().__init__(problem, fix)
        self.series = [{"uid": s["uid"], "description": s["description"], "modality": s["modality"],
                        "files": len(s["files"])} for s in series]


def _read_dicom_folder(folder: str, series: str | None, slice_as_2d: bool = True) -> sitk.Image:
    found = list_dicom_series(folder)
    if not found and _dicomdir(folder):
        # a CD or PACS export: the DICOMDIR indexes images kept in sub-folders (PT000000/ST000000/...)
        for sub, _ in _folders_below(folder, 4999):
            found += list_dicom_series(sub)
    if not found:
        for name in sorted(os.listdir(folder)):  # DICOM files GDCM skipped: say why
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                _check_decodable(f"DICOM file '{path}'", path, unknown_too=True)
                cut = _dicom_cut_short(path)
                if cut is not None:
                    raise _dicom_cut_error(path, cut)
        below = _folders_with_dicom(folder)
        if below:  # a study exported one folder per series (GDCM looks in the folder itself only)
            shown = ", ".join(f"'{path}'" for path in below[:10]) + (f" and {len(below) - 10} more"
                                                                    if len(below) > 10 else "")
            raise InputError(f"Folder '{folder}' holds no DICOM series itself, but its sub-folders do: {shown} (e.g. a "
                             "study exported one folder per series).",
                             "Give the folder of one series (one of those sub-folders); a study exported with a "
                             "DICOMDIR is read through it.")
        raise InputError(f"No DICOM series found in folder '{folder}'.",
                         "Point to a folder of DICOM files (.dcm), or to an image file.")
    if series is not None:
        chosen = [s for s in found if s["uid"] == series] or \
                 [s for s in found if series.lower() in s["description"].lower()]
        if len(chosen) != 1:
            raise InputError(
                f"Series '{series}' matches {len(chosen)} of the {len(found)} series in '{folder}':\n"
                + _describe_series(found),
                "Give the exact series UID (or a description that matches one series).")
        pick = chosen[0]
    elif len(found) > 1:
        raise SeveralDicomSeries(
            f"Folder '{folder}' holds {len(found)} DICOM series; which one should be used?\n"
            + _describe_series(found),
            "Pick one by UID or description: --series UID (CLI; --fixed-series / --moving-series / "
            "--reference-series when the inputs differ) or read_image(folder, series=UID).", found)
    else:
        pick = found[0]
    _check_no_file_cut_short(pick, found)
    label = f"DICOM series '{pick['description'] or pick['uid']}'"
    syntax = _check_decodable(label, pick["files"][0])
    rows: list[dict[str, str]] = []
    if len(pick["files"]) > 1:
        rows = _series_rows(pick["files"])
        pick, rows = _without_copies(label, pick, rows)
    if len(pick["files"]) == 1:
        # one file (one slice, or an enhanced multi-frame image): read as the file alone is, a slice as
        # 2D; ITK's series reader gives a one-slice volume and takes no geometry from functional groups
        return _read_file(pick["files"][0], stacklevel=5, as_slice=slice_as_2d)  # its warnings: read_image's caller
    if any(_needs_own_geometry(row) for row in rows):
        return _with_units(_read_multiframe_series(pick, rows), pick.get("units", ""))
    float_values, slice_step, sizes = _check_series_geometry(pick, rows)
    _check_pixel_data_whole(rows)  # each file by its own transfer syntax: a series may mix them
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(pick["files"])
    if float_values:  # per-slice or fractional rescale (PET): the first slice's integer type would round
        reader.SetOutputPixelType(sitk.sitkFloat32)
    try:
        with _naming_transfer_syntax(label, syntax), itk_guard(f"reading DICOM series '{pick['uid']}'",
                                                              "Check that the series is complete (no missing slices)."):
            image = reader.Execute()
    except InputError as exc:
        # a pixel depth GDCM cannot read (BitsAllocated 24): named, where GDCM's error had named neither file nor tag
        # (the files' headers are read only now, the series having failed)
        unreadable = _series_bits_error(pick["files"])
        if unreadable is not None:
            raise unreadable from exc
        raise
    image = _slices_stacked(image, rows, slice_step)
    # a RescaleSlope/Intercept stated as one value repeated (1\1), read as it: warned once for the series
    notes = [note for row in rows for note in _rescale_repeat_notes(row["path"], row["slope"], row["intercept"])]
    if sizes:  # the first slice's, by the rule for one file: ITK's series reader takes a radiograph's (CR, DX,
        # MG, XA, RF, IO) ImagerPixelSpacing over its PixelSpacing and reads one with only PixelSpacing at 1 mm
        _set_pixel_size(image, rows[0]["path"], *sizes[0], [])  # warned below, once for the series
        notes += [note for row, size in zip(rows, sizes) for note in [_pixel_size_note(row["path"], *size)] if note]
    _warn_once_per_kind(label, len(pick["files"]), notes, stacklevel=4)
    return _with_units(_with_slice_step(image, slice_step), pick.get("units", ""))


def _slices_stacked(image: sitk.Image, rows: Sequence[Mapping[str, str]], step: np.ndarray | None) -> sitk.Image:
    """``image``, ITK's series reading of the files of ``rows`` (in their order), as columns x rows x slices.

    ITK's series reader drops a slice's trailing axes of one pixel before it stacks the slices along the next
    axis: a series of slices of one row (1 x N) came out as N x slices x 1 and one of 1 x 1 slices as slices x
    1 x 1, with the slice distance and the direction cosines on the wrong axes, a sign flipped (6 slices of
    1 x 1 at 0.9 x 0.8 mm, 2.5 mm apart: 6 x 1 x 1 voxels of 0.8 x 0.9 x 1 mm). Its buffer holds each file's
    pixels in the files' order, as for any series, so they are put on the grid ITK gives a series of larger
    slices: the first slice's ImagePositionPatient, its row and column directions and their normal, the slice
    distance along that normal (``step``: from slice to slice, or None to take it from the first and last);
    the pixel size and a sheared grid are then set as for any series. N x 1 slices (one column) read right.
    """
    columns, height = (int(v) for v in rows[0]["size"].split("x"))
    if image.GetSize() == (columns, height, len(rows)):
        return image
    points = np.array([_dicom_numbers(row["position"]) for row in rows], dtype=float)
    cosines = np.array(_dicom_numbers(rows[0]["orientation"]), dtype=float).reshape(2, 3).T
    normal = np.cross(cosines[:, 0], cosines[:, 1])
    if step is None:
        step = (points[-1] - points[0]) / (len(points) - 1)
    components = image.GetNumberOfComponentsPerPixel()
    values = sitk.GetArrayViewFromImage(image).reshape(len(rows), height, columns, *([components] * (components > 1)))
    stacked = sitk.GetImageFromArray(values, isVector=components > 1)
    stacked.SetOrigin([float(v) for v in points[0]])
    stacked.SetSpacing([*image.GetSpacing()[:2], abs(float(step @ normal))])  # in-plane: set by the caller
    stacked.SetDirection([float(v) for v in np.column_stack([cosines, normal]).ravel()])
    return stacked


def _without_copies(label: str, pick: dict[str, Any], rows: list[dict[str, str]]
                    ) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """The series ``pick`` and its ``rows`` (:func:`_series_rows`) without the files that are a copy of another of its
    files (the same SOPInstanceUID (0008,0018), byte for byte: one file copied under two names), with a warning
    naming them, as 3D Slicer's DICOM database keeps one file per SOPInstanceUID. GDCM lists both copies, and the
    series had been refused as 'two slices at one position ... e.g. echoes, time points', which they are not.

    Files of one SOPInstanceUID whose bytes differ are refused (which is the image is unknown) where they may be one
    image: at one ImagePositionPatient (0020,0032), or where one of them states none. Files at different positions
    are different images whose UID was not made unique (an anonymiser or converter that gave every slice one UID):
    they are read as the slices they are, with a warning that 3D Slicer's DICOM database would keep one of them (a
    series whose slices all had one UID had been refused, and its fix, to remove 'the file that is not the image's
    own', would have had the user delete all slices but one). Bytes are compared only between files of one UID at
    one position."""
    import filecmp

    alike: dict[str, list[str]] = {}
    position: dict[str, tuple[float, ...]] = {}
    for row in rows:
        if row.get("instance"):
            alike.setdefault(row["instance"], []).append(row["path"])
            values = _dicom_numbers(row.get("position", ""))
            if len(values) == 3 and all(map(math.isfinite, values)):
                position[row["path"]] = tuple(values)
    copies: list[tuple[str, str]] = []  # (the file kept: the first by name, its copy)
    shared: list[tuple[str, str]] = []  # (the first file of a UID, another image with that UID)
    for paths in alike.values():
        kept: list[str] = []
        for other in sorted(paths):
            # kept files that may be the same image: at the same position, or one of the two stating none
            twins = [path for path in kept if position.get(path) is None or position.get(other) is None
                     or position[path] == position[other]]
            same = next((path for path in twins if filecmp.cmp(path, other, shallow=False)), None)
            if same is not None:
                copies.append((same, other))
                continue
            if twins:
                raise InputError(f"{label} has two files of one image (the same SOPInstanceUID (0008,0018)), "
                                 f"'{twins[0]}' and '{other}', whose contents differ, so which of them is the image "
                                 "is unknown.",
                                 "Remove the file that is not the image's own (e.g. the one a tool changed or "
                                 "exported again), or move it out of the folder, then load the folder again.")
            if kept:
                shared.append((kept[0], other))
            kept.append(other)
    if shared:
        shared.sort()
        warnings.warn(f"{label} has different images with one SOPInstanceUID (0008,0018), at different positions: "
                      f"'{shared[0][0]}' and '{shared[0][1]}'"
                      + (f", and {len(shared) - 1} more" if len(shared) > 1 else "") + ". They are read as the "
                      "slices they are, but 3D Slicer's DICOM database keeps one file per SOPInstanceUID and would "
                      "load one of them only. Give each image its own SOPInstanceUID (export the series again from "
                      "the scanner or PACS, or have the anonymiser make new UIDs).", stacklevel=4)
    if not copies:
        return pick, rows
    copies.sort()
    dropped = {other for _, other in copies}
    warnings.warn(f"{label} holds the same file twice under two names (the same SOPInstanceUID (0008,0018), byte "
                  f"for byte): '{copies[0][0]}' and '{copies[0][1]}'"
                  + (f", and {len(copies) - 1} more such copies" if len(copies) > 1 else "") + "; each image is read "
                  "once. Remove the copies from the folder to read it without this warning.", stacklevel=4)
    return (dict(pick, files=[path for path in pick["files"] if path not in dropped]),
            [row for row in rows if row["path"] not in dropped])


class _CutDicom(NamedTuple):
    """A DICOM file cut short (:func:`_dicom_cut_short`)."""
    series: str | None  # its SeriesInstanceUID ("" where its header has none); None where the file ends before it
    image: bool  # whether it may be an image (a slice): its SOP class is an image storage one, or unknown
    missing: str  # what is missing, in words ("is truncated: ...", "holds no pixel data: ...")
    floats: str = ""  # or the float pixel data tag it holds instead of Pixel Data (not cut: unreadable by ITK)
    short: bool = False  # whole, but its Pixel Data element holds another number of bytes than its header describes
    # (:func:`_pixel_data_misfit`: fewer, a frame's or more beyond, or a 12-bit length GDCM misreads)


#: Pixel data ITK's DICOM reader (GDCM) does not read: a file holding them (a Parametric Map, or one written under
#: an MR/CT/XA class) has no Pixel Data (7FE0,0010) for it, and had been called truncated ("holds no pixel data: it
#: ends after 1146 bytes", fix: copy it again) or given ITK's "Unable to determine ImageIO reader" with the fix to
#: check it is not truncated
_FLOAT_PIXEL_DATA = {0x7FE00008: "Float Pixel Data (7FE0,0008)", 0x7FE00009: "Double Float Pixel Data (7FE0,0009)"}
_FLOAT_PIXELS_FIX = ("Convert it to NIfTI or NRRD with a tool that reads float pixel data, e.g. in Python: pydicom's "
                     "dcmread(path).pixel_array gives its values (highdicom reads a Parametric Map's geometry too); "
                     "save them with their origin, spacing and direction (sitk.GetImageFromArray, SetOrigin, "
                     "SetSpacing, SetDirection, sitk.WriteImage to .nii.gz or .nrrd) and give that file.")


def _dicom_cut_short(path: str) -> _CutDicom | None:
    """What is missing of a DICOM file (``DICM`` after its 128-byte preamble) that ends before its pixel data do,
    or before the end of a data element its header has begun; None for any other file, a complete DICOM file
    without pixel data among them (a DICOMDIR, an RT plan, a structured report: they hold no image, and are not
    "truncated"). GDCM skips a cut file without a word: in a series, the series had been read without that slice (a
    first or last one: a volume 1 slice short, its extent silently wrong)."""
    try:
        with open(path, "rb") as fh:  # a file gone or unreadable since it was listed: None, ITK's reading names it
            size = os.fstat(fh.fileno()).st_size
            if fh.read(132)[128:] != b"DICM":
                return None
            from pydicom import dcmread
            from pydicom.uid import UID

            from .dicom_header import quiet_pydicom

            fh.seek(0)
            # its values' warnings too: it checks a value when it is read, and a SeriesInstanceUID such as
            # '1.2.3.abc' had given a stray "Invalid value for VR UI" beside the truncation error or warning
            with quiet_pydicom():
                tags = dcmread(fh, defer_size=256)  # it reads a cut file without an error: the lengths tell
                # the raw elements (their length and where their value starts), before any is read as a value
                last = tags.get_item(max(tags.keys()), keep_deferred=True) if len(tags) else None
                pixels = tags.get_item(0x7FE00010, keep_deferred=True) if 0x7FE00010 in tags else None
                floats = next((name for tag, name in _FLOAT_PIXEL_DATA.items() if tag in tags), "")
                # a header that goes on past (0020,000E) has no SeriesInstanceUID: "" as GDCM groups such files (one
                # series of every file without it); None only where the file ends before that tag. A float file
                # without it (complete: its pixel data come after) had been taken as cut before its series and
                # refused the whole series beside it, where one of another UID is left out with a warning
                uid = str(tags.get("SeriesInstanceUID", "")) or (
                    "" if len(tags) and max(tags.keys()) > 0x0020000E else None)
                sop_class = str(tags.get("SOPClassUID", "") or tags.file_meta.get("MediaStorageSOPClassUID", ""))
                name = UID(sop_class).name if sop_class else ""
                # a deflated data set's positions are in its inflated stream: the file's size tells nothing
                if tags.file_meta.get("TransferSyntaxUID", "") == _DEFLATED:
                    size = math.inf
                expected = _native_pixel_bytes(*(str(tags[tag].value) if tag in tags and tags[tag].value is not None
                                                 else "" for tag in _PIXEL_LAYOUT_TAGS))
            image = "Image Storage" in name or name in ("", sop_class)  # an image, or a class pydicom does not know
    except Exception:  # noqa: BLE001 - pydicom's errors on a damaged file are of many kinds: GDCM's reading stands
        return None
    if pixels is None and floats:
        # an image whatever its class (a Parametric Map's is no "Image Storage"): skipped without a word otherwise
        return _CutDicom(uid, True, f"holds its values as {floats}, which ITK's DICOM reader (GDCM), hence this "
                         "package, does not read (it reads Pixel Data (7FE0,0010) only)", floats)
    if pixels is None:
        length, start = getattr(last, "length", None), getattr(last, "value_tell", None)
        if last is None or length is not None and start is not None and length != 0xFFFFFFFF and \
                start + length > size:
            return _CutDicom(uid, image, f"is truncated: it ends inside its header, before its pixel data ({size} "
                             "bytes)")
        if image and sop_class:
            return _CutDicom(uid, image, f"holds no pixel data: it ends after {size} bytes, with a complete header "
                             "element (cut short in its header, or a file without an image)")
        return None  # complete: an object without pixel data, which GDCM names
    length, start = getattr(pixels, "length", None), getattr(pixels, "value_tell", None)
    if length is None or start is None or length == 0xFFFFFFFF:
        return None  # compressed (encapsulated) pixel data: their frames' lengths are left to GDCM
    if start + length > size:
        return _CutDicom(uid, image, f"is truncated: its pixel data need {length} bytes from byte {start} "
                         f"({start + length} bytes in all) but the file holds only {size} bytes")
    # the bytes beyond the first ``offset`` of the element, where excess padding would be (a deflated data set's
    # positions are in its inflated stream: not looked at, its excess goes by its length alone)
    beyond = None if size == math.inf else functools.partial(_zero_bytes, path, start, start + length)
    misfit = _pixel_data_misfit(length, expected, beyond) if expected is not None else None
    if misfit is not None:  # fewer bytes (GDCM fills the rest from memory), or a frame's or more beyond
        return _CutDicom(uid, image, misfit, short=True)
    return None


def _zero_bytes(path: str, start: int, end: int, offset: int) -> bool:
    """Whether the bytes of file ``path`` from ``start + offset`` to ``end`` are all zero (False where it cannot be
    read), read 1 MiB at a time: the first byte that is not zero ends the reading."""
    try:
        with open(path, "rb") as fh:
            fh.seek(start + offset)
            left = end - start - offset
            while left > 0:
                chunk = fh.read(min(left, 1 << 20))
                if not chunk or chunk.count(0) != len(chunk):
                    return False
                left -= len(chunk)
    except OSError:
        return False
    return True


#: The tags that size native (uncompressed) pixel data, in the order of :func:`_native_pixel_bytes`' arguments
_PIXEL_LAYOUT_TAGS = (0x00280010, 0x00280011, 0x00280008, 0x00280002, 0x00280100, 0x00280004)


def _native_pixel_bytes(rows: str, columns: str, frames: str, samples: str, bits: str, photometric: str
                        ) -> tuple[int, str, int, int] | None:
    """The bytes native (uncompressed) Pixel Data (7FE0,0010) hold by the header's Rows, Columns, NumberOfFrames
    (1 where absent), SamplesPerPixel, BitsAllocated and PhotometricInterpretation (their text), with the layout in
    words, one frame's bytes (BitsAllocated 12: in 16-bit words), and for BitsAllocated 12 the bytes of its pixels
    each in 16 bits (else 0); None where
    one is missing or unusable (ITK's reading decides). YBR_FULL_422 (and the retired YBR_PARTIAL_422) hold 2
    samples a pixel, not their 3: Cb and Cr once for each pair of pixels in a row (PS3.3 C.7.6.3.1.2; PS3.5 8.2: Y1
    Y2 Cb Cr); 1-bit pixels are packed 8 to a byte across frames (PS3.5 8.1.1), 12-bit ones (retired) 2 in 3 bytes,
    which ITK's reader (GDCM) also reads from 16-bit words (see :func:`_pixel_data_misfit`). Other BitsAllocated that
    are no multiple of 8 GDCM refuses ("Unhandled PixelFormat")."""
    try:
        dims = [int(float(text)) for text in (rows, columns, frames or "1", samples, bits)]
    except ValueError:
        return None
    rows_n, columns_n, frames_n, samples_n, bits_n = dims
    if min(dims) < 1 or bits_n not in (1, 12) and bits_n % 8:
        return None
    stored = 2 if photometric.strip() in ("YBR_FULL_422", "YBR_PARTIAL_422") and samples_n == 3 else samples_n
    voxels = rows_n * columns_n * frames_n
    layout = (f"{columns_n} x {rows_n} pixels x {frames_n} frame(s), {samples_n} sample(s) of {bits_n} bit(s)"
              + (f" ({photometric.strip()}: {stored} a pixel)" if stored != samples_n else ""))
    # a frame's bytes: 12-bit ones in 16-bit words, as the frame rule counts beyond those (see _pixel_data_misfit)
    return (-(-voxels * stored * bits_n // 8), layout, -(-rows_n * columns_n * stored * (16 if bits_n == 12 else bits_n)
                                                         // 8), voxels * stored * 2 if bits_n == 12 else 0)


def _pixel_data_misfit(length: int, expected: tuple[int, str, int, int],
                       zeros_beyond: Callable[[int], bool] | None = None) -> str | None:
    """What is wrong with native Pixel Data (7FE0,0010) of ``length`` bytes for the layout :func:`_native_pixel_bytes`
    gives (``expected``), and what ITK's reader (GDCM) makes of it, in words; None where they fit: the bytes it
    describes, one more (an odd length padded to even), up to a frame's bytes more (a few bytes of padding), or more
    bytes that are all zero where ``zeros_beyond`` (whether the element's bytes beyond its first ``n`` are) says so:
    excess padding, which DICOM tells readers to accept from older writers (PS3.5 8.1.1, note) and GDCM reads past
    (a 2 x 2 8-bit image held in 8 bytes, or a 1 x 1 16-bit one in 4, had been refused as a frame too long).

    Fewer bytes: GDCM copies those there are and leaves the rest of the image as its memory held it. A whole frame
    or more beyond it (NumberOfFrames (0028,0008) left out or 1 beside two frames' bytes, Rows or Columns too
    small): GDCM reads the first frame(s) and drops the rest without a word. BitsAllocated 12: GDCM unpacks 12-bit
    pixels only from exactly their packed bytes (2 pixels in 3, an even count of them), else reads the element as
    16-bit words (right where it holds that many): a packed length padded to even, or one short, had given values
    far off (e.g. -32765..24557 for -24..60), or GDCM's "Failed to get the buffer"."""
    total, layout, frame, words = expected
    held = f"holds {length} bytes of pixel data (Pixel Data (7FE0,0010)) where its header describes"
    if words:
        if length == words or length == total and total * 8 == words * 6:
            return None
        if length < words:
            return (f"{held} {total} ({layout}, 2 pixels packed in 3 bytes) or {words} (each pixel in 16 bits), the "
                    "two lengths ITK's DICOM reader (GDCM) reads 12-bit pixels from, so its values would be wrong "
                    "(GDCM would have read its bytes as 16-bit pixels, without a word)")
        total = words  # more than 16-bit words: as any other layout's
    if length < total:
        return (f"{held} {total} ({layout}), so part of its image is missing (ITK's DICOM reader would have read it "
                "without an error, the missing pixels as whatever its memory held)")
    excess = length - total - total % 2
    if excess >= frame and not (zeros_beyond is not None and zeros_beyond(total)):
        return (f"{held} {total} ({layout}): {excess} bytes more, {excess / frame:.3g} frame(s), so its "
                "NumberOfFrames (0028,0008), Rows (0028,0010), Columns (0028,0011) or BitsAllocated (0028,0100) may "
                f"be wrong (ITK's DICOM reader would have read the first {total} bytes only, without a word)")
    return None


def _ends_with_pixel_data(path: str, length: int) -> bool:
    """Whether a Pixel Data (7FE0,0010) element of ``length`` bytes (or ``length + 1``, padded to an even length)
    ends within the last 4 KiB of the file, as a native DICOM file's does (after it at most a few elements: a data
    set's trailing padding (FFFC,FFFC)): one read of the 4 KiB before its last ``length`` bytes confirms a file of a
    series whole (0.03-0.06 ms a file), where a header parse (:func:`_dicom_cut_short`) takes 0.8-1.9 ms. False for
    anything else (a shorter element, encapsulated pixel data, more after it): :func:`_dicom_cut_short` decides."""
    import struct

    tail = 4096
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            begin = max(0, size - length - tail - 12)
            fh.seek(begin)
            window = fh.read(max(0, size - length - begin))  # the element's header must start in it
    except OSError:  # gone or unreadable since it was listed: :func:`_dicom_cut_short` (then ITK) names it
        return False
    for tag, explicit, order in ((b"\xe0\x7f\x10\x00", True, "<"), (b"\xe0\x7f\x10\x00", False, "<"),
                                 (b"\x7f\xe0\x00\x10", True, ">")):
        at = window.find(tag)
        while at >= 0:
            head = window[at:at + 12] if explicit else window[at:at + 8]
            if len(head) == (12 if explicit else 8) and (not explicit or head[4:6] in (b"OB", b"OW")
                                                          and head[6:8] == b"\0\0"):
                held = struct.unpack(order + "I", head[-4:])[0]
                if held in (length, length + length % 2) and begin + at + len(head) + held <= size:
                    return True
            at = window.find(tag, at + 1)
    return False


def _check_pixel_data_whole(rows: Sequence[Mapping[str, str]]) -> None:
    """Refuse a file of a series whose Pixel Data (7FE0,0010) hold fewer bytes than its header describes (see
    :func:`_dicom_cut_short`): ITK's series reader reads it without a word, the missing voxels as whatever its
    memory held. ``rows``: :func:`_series_rows`' (their layout tags as ITK read them); a file is parsed only where
    the 4 KiB before its last pixel bytes do not show a Pixel Data element of its length
    (:func:`_ends_with_pixel_data`) and its own transfer syntax is not a compressed one (GDCM's codecs refuse a
    frame cut short: RLE, JPEG, JPEG-LS, JPEG 2000). The check had been decided for the series by its first file's
    syntax: an uncompressed file cut short in a series whose first file is compressed (GDCM reads such a mix) had
    been read without a word, its missing voxels from memory."""
    for row in rows:
        expected = _native_pixel_bytes(*(row[key] for key in ("rows", "columns", "frames", "samples", "bits",
                                                              "photometric")))
        if expected is None or not expected[3] and _ends_with_pixel_data(row["path"], expected[0]):
            continue  # (BitsAllocated 12, retired and rare: parsed, as GDCM takes two lengths)
        syntax = _dicom_transfer_syntax(row["path"])  # 16 KiB read; the file meta is not in ITK's metadata
        if syntax in _TRANSFER_SYNTAXES and "uncompressed" not in _TRANSFER_SYNTAXES[syntax] and \
                syntax != _DEFLATED:
            continue
        cut = _dicom_cut_short(row["path"])
        if cut is not None and cut.short:  # not its other kinds: a header pydicom reads short, GDCM whole
            raise _dicom_cut_error(row["path"], cut)


def _dicom_cut_error(path: str, cut: _CutDicom, fix: str = "") -> InputError:
    """The error for a file :func:`_dicom_cut_short` found cut short (``fix`` added to the fix), or holding float
    pixel data."""
    if cut.floats:
        return InputError(f"DICOM file '{path}' {cut.missing}.", _FLOAT_PIXELS_FIX + fix)
    if cut.short:  # a whole file, written so: a copy of it is no better
        return InputError(f"DICOM file '{path}' {cut.missing}.",
                          "Export the series again from the scanner or PACS (or transfer it again, from the source, "
                          "not from a copy of this file); or move this file out of the folder and read the series "
                          f"without it, where a slice less is acceptable.{fix}")
    return _dicom_truncated_error(path, cut.missing, fix)


def _dicom_truncated_error(path: str, missing: str, fix: str = "") -> InputError:
    return InputError(f"DICOM file '{path}' {missing}.",
                      "Copy or download the file again, complete (or the whole series); check the disk was not full "
                      f"when it was written.{fix}")


def _check_no_file_cut_short(pick: Mapping[str, Any], found: Sequence[Mapping[str, Any]]) -> None:
    """Refuse a series one of whose files is cut short (GDCM leaves it out of the series, see
    :func:`_dicom_cut_short`): the files of the series' folders that are in no series found, and that are DICOM
    images of this series, or cut before their series is named (it may be this series' first or last slice). A cut
    file of another series is warned of, once; a non-image object (a DICOMDIR, an RT plan) is no slice of it.
    Reads only the files GDCM skipped."""
    listed = {os.path.normcase(os.path.abspath(f)) for s in found for f in s["files"]}
    others: list[str] = []
    floats: list[str] = []
    for folder in sorted({os.path.dirname(f) for f in pick["files"]}):
        try:
            names = sorted(os.listdir(folder or "."))
        except OSError:
            continue
        for name in names:
            path = os.path.join(folder, name)
            if os.path.normcase(os.path.abspath(path)) in listed or not os.path.isfile(path):
                continue
            cut = _dicom_cut_short(path)
            if cut is None or not cut.image:
                continue
            if cut.series is None:
                raise _dicom_cut_error(path, cut, " Or, where it is no file of this series, move it "
                                             "out of the folder: it ends before it names its series, and a first or "
                                             "last slice left out would change the volume's extent without a word.")
            if cut.series == pick["uid"]:
                raise _dicom_cut_error(path, cut, "" if cut.series else (
                    " Or, where it is no file of this series, move it out of the folder: it names no "
                    "SeriesInstanceUID (0020,000E), nor do the series' files, so it is taken as one of them, as "
                    "ITK's reader groups such files."))
            (floats if cut.floats else others).append(path)
    # a file of float pixel data is whole: it had been called truncated here ("read without 1 truncated file(s) of
    # another series"), sending the user to copy a complete file again
    for files, what in ((others, "truncated file(s) of another series in its folder"),
                        (floats, "file(s) of another series in its folder holding Float or Double Float Pixel Data, "
                                 "which ITK's DICOM reader does not read")):
        if files:
            warnings.warn(f"DICOM series '{pick['description'] or pick['uid']}' was read without {len(files)} "
                          f"{what}: '{files[0]}'" + (f" and {len(files) - 1} more" if len(files) > 1 else "") + ".",
                          stacklevel=4)


def _with_slice_step(image: sitk.Image, step: np.ndarray | None) -> sitk.Image:
    """The series' slice axis as its ImagePositionPatient give it: ITK stacks the slices along the
    normal of the slice plane, one position-to-position distance apart, so a gantry-tilted CT (each
    slice shifted within its plane) would be placed wrong, more so with every slice; its grid is sheared.
    A drift under 0.01 mm over the whole series is left as ITK reads it (an orthonormal grid)."""
    if step is None or image.GetDimension() != 3:
        return image
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    axis = direction[:, 2]
    drift = np.linalg.norm(step - (step @ axis) * axis) * (image.GetSize()[2] - 1)
    if drift <= 0.01:
        return image
    direction[:, 2] = step / np.linalg.norm(step)
    spacing = list(image.GetSpacing())
    spacing[2] = float(np.linalg.norm(step))
    image.SetDirection([float(v) for v in direction.ravel()])
    image.SetSpacing(spacing)
    return image


def _folders_below(folder: str, most: int) -> Iterator[tuple[str, list[str]]]:
    """The folders below ``folder`` (at most ``most``), each with its files' names, top-down in sorted order: the
    first level too (os.walk lists it in the file system's order, e.g. CT_03, CT_05, CT_09, ... on ext4, and sorting
    the names of each folder it yields sorts only those below the first)."""
    walk = os.walk(folder)
    next(walk, (folder, [], []))[1].sort()
    for sub, dirs, files in itertools.islice(walk, most):
        dirs.sort()
        yield sub, files


def _folders_with_dicom(folder: str, most: int = 2000) -> list[str]:
    """The folders below ``folder`` (at most ``most`` looked in) that hold a DICOM Part 10 file ("DICM" after its
    128-byte preamble) among their first 5 files, in sorted order."""
    found = []
    for sub, files in _folders_below(folder, most):
        for name in sorted(files)[:5]:
            try:
                with open(os.path.join(sub, name), "rb") as fh:
                    if fh.read(132)[128:] == b"DICM":
                        found.append(sub)
                        break
            except OSError:
                continue
    return found


def _dicomdir(folder: str) -> str | None:
    """The DICOMDIR file in ``folder`` (any case), if there is one."""
    return next((os.path.join(folder, name) for name in sorted(os.listdir(folder))
                 if name.upper() == "DICOMDIR" and os.path.isfile(os.path.join(folder, name))), None)


def _dicom_numbers(text: str) -> list[float]:
    """The numbers of a DICOM multi-valued decimal string ("0.8\\0.9"); [] when it holds anything else."""
    try:
        return [float(v) for v in text.replace("\\", " ").split()] if text else []
    except ValueError:
        return []


def _dicom_pixel_size(text: str) -> list[float]:
    """The two sizes (mm) of a DICOM pixel-spacing string ("0.8\\0.9"); [] unless they are two positive
    finite numbers (GDCM reads a 0 as 1 mm, and ITK refuses a zero or negative spacing with a traceback)."""
    values = _dicom_numbers(text)
    return values if len(values) == 2 and all(math.isfinite(v) and v > 0 for v in values) else []


#: Tags that give one DICOM image's pixel size (row spacing, then column spacing, mm), in the order taken
_SPACING_TAGS = (("0028|0030", "PixelSpacing (0028,0030)"), ("0018|1164", "ImagerPixelSpacing (0018,1164)"),
                 ("0018|2010", "NominalScannedPixelSpacing (0018,2010)"))


class _FileWarning(NamedTuple):
    """A warning about one DICOM file, kept back while the files of a series are read to be given once for
    all the files that give it (see :func:`_warn_once_per_kind`)."""

    kind: str  #: what the files that give the same warning share (e.g. the tag their pixel size came from)
    path: str
    message: str  #: the warning for this file alone
    for_several: str  #: the same for several files, after "N of the M files of SERIES (the first: 'PATH') "


def _warn_once_per_kind(label: str, total: int, notes: Sequence[_FileWarning], stacklevel: int = 5) -> None:
    """Give the warnings kept back while reading the ``total`` files of ``label`` (a series): one for each kind,
    naming how many files gave it and the first of them, as a file alone does where only one gave it."""
    for kind in dict.fromkeys(note.kind for note in notes):
        alike = [note for note in notes if note.kind == kind]
        warnings.warn(alike[0].message if len(alike) == 1 else
                      f"{len(alike)} of the {total} files of {label} (the first: '{alike[0].path}') "
                      + alike[0].for_several, stacklevel=stacklevel)


def _meta_text(image: sitk.Image, tag: str) -> str:
    """An image's metadata entry (a DICOM tag "gggg|eeee", a NRRD key) as stripped text, "" where it has none."""
    return image.GetMetaData(tag).strip() if image.HasMetaDataKey(tag) else ""


def _units_code(text: str) -> str:
    """``text`` as a DICOM Units code, upper case; "" where it is none (a code string, CS: 16 characters at most)."""
    units = text.strip().upper()
    return units if re.fullmatch(r"[A-Z0-9_]{1,16}", units) else ""


def dicom_units(image: sitk.Image) -> str:
    """The units a DICOM image states its values in (Units (0054,1001): "BQML", "GML", "CNTS"...), upper case, as
    :func:`read_image` keeps them (:data:`UNITS_KEY`); "" where it states none (a NIfTI, a CT) or states no code."""
    return _units_code(_meta_text(image, UNITS_KEY))


def _with_units(image: sitk.Image, units: str) -> sitk.Image:
    """``image`` with the DICOM Units ``units`` in its metadata (:data:`UNITS_KEY`), where they are a code."""
    units = _units_code(units)
    if units:
        image.SetMetaData(UNITS_KEY, units)
    return image


def _with_units_of(image: sitk.Image, source: sitk.Image) -> sitk.Image:
    """``image``, of ``source``'s quantity (resampled, cropped, reoriented, a slice of it), with ``source``'s DICOM
    Units (:func:`dicom_units`): ITK's filters keep no metadata."""
    return _with_units(image, dicom_units(source))


# A NIfTI keeps no units; PET-BIDS keeps them in the JSON sidecar beside it (``sub-01_pet.json`` by
# ``sub-01_pet.nii.gz``): "Units" is REQUIRED there, "SI unit for radioactivity (Becquerel) should be used (for
# example, "Bq/mL"). Corresponds to DICOM Tag 0054, 1001 Units" (bids-specification,
# src/schema/rules/sidecars/pet.yaml). dcm2niix writes the DICOM code as it stands ("Units": "BQML",
# console/nii_dicom_batch.cpp, nii_SaveBIDSX), PET2BIDS the BIDS text: both are read.
#: The BIDS sidecar's text of each DICOM Units (0054,1001) defined term (PS3.3 C.8.9.1.1.3) that names an SI unit, as
#: :func:`write_image` writes it; the others (CNTS, CPS, PCNT, PROPCNTS, PROPCPS, STDDEV, NONE) are written as their
#: code, as dcm2niix writes every one of them
_BIDS_UNITS = {"BQML": "Bq/mL", "GML": "g/mL", "MLG": "mL/g", "MLMING": "mL/min/g", "MLML": "mL/mL",
               "MLMINML": "mL/min/mL", "UMOLML": "umol/mL", "UMOLMINML": "umol/min/mL", "MGMINML": "mg/min/mL",
               "CM2": "cm2", "CM2ML": "cm2/mL", "1CM": "1/cm"}
#: The DICOM defined terms of Units (0054,1001): a sidecar may state them as they are (dcm2niix does)
_DICOM_UNITS_TERMS = frozenset(_BIDS_UNITS) | {"CNTS", "CPS", "PCNT", "PROPCNTS", "PROPCPS", "STDDEV", "NONE"}
#: A sidecar's text (in upper case: BIDS texts are matched whatever their case, 'Bq/ml' as 'Bq/mL') -> the DICOM code;
#: 'Bq/cc' and 'Bq/cm3' (ECAT's, some vendors') are Bq/mL. A prefixed unit (kBq/mL, MBq/mL) is not: its values are
#: 1000 or 10^6 times smaller, and taking it for BQML would be a wrong answer; it is read without units, with a warning
_SIDECAR_UNITS = {**{text.upper(): code for code, text in _BIDS_UNITS.items()}, "BQ/CC": "BQML", "BQ/CM3": "BQML",
                  **{code: code for code in _DICOM_UNITS_TERMS}}
#: A sidecar's Units (in upper case) that BIDS gives images other than a PET's: a fieldmap's, "Hz", "rad/s" or "T"
#: (bids-specification, 01-magnetic-resonance-imaging-data.md, Case 3: direct field mapping; dcm2niix writes
#: "Units": "Hz" beside a B0 map, e.g. neurolabusc/dcm_qa_fmap, Ref/Ph_801_WIP_B0_NS_e2_fieldmaphz.json). Such an image
#: is read without DICOM Units, silently: its units are no PET's, and it had warned on every read
_NON_PET_BIDS_UNITS = frozenset({"HZ", "RAD/S", "T"})


def bids_sidecar_path(path: str | os.PathLike) -> str | None:
    """The BIDS JSON sidecar of a NIfTI file (``x.json`` beside ``x.nii`` or ``x.nii.gz``), where :func:`read_image`
    reads a PET's Units and :func:`write_image` writes them; None for any other format."""
    path = os.fspath(path)
    suffix = _read_suffix(path)
    if suffix not in (".nii", ".nii.gz"):
        return None
    return path[:len(path) - len(suffix)] + ".json"


def _read_sidecar(sidecar: str, what: str, stacklevel: int, notes: list[str] | None = None) -> dict[str, Any] | None:
    """The JSON object of ``sidecar``; None, with a warning naming the file (never its content: a sidecar may hold
    the patient's name, weight, dates...), where it cannot be read or holds no JSON object. ``what``: the warning's
    ending, what follows from it. ``notes``: where given, the warning's text is added to it instead (issued later
    by the caller)."""
    note = None
    try:
        with open(sidecar, encoding="utf-8") as fh:
            content = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = (f"no valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
                  if isinstance(exc, json.JSONDecodeError) else
                  "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else f"unreadable: {exc.strerror or exc}")
        note = f"The JSON sidecar '{sidecar}' is {reason}; {what}."
    else:
        if isinstance(content, dict):
            return content
        note = f"The JSON sidecar '{sidecar}' holds no JSON object (a {type(content).__name__}); {what}."
    _warn_or_note(note, notes, stacklevel + 1)
    return None


def _sidecar_units(path: str, stacklevel: int) -> str:
    """The DICOM Units code the BIDS sidecar of the NIfTI ``path`` states ("Units": "Bq/mL" -> BQML; see
    ``_SIDECAR_UNITS``); "" where it has no sidecar or states no Units, and, with a warning naming the file, where
    the sidecar is malformed or states units this package does not know; a non-PET image's BIDS Units (a fieldmap's
    "Hz": ``_NON_PET_BIDS_UNITS``) are no DICOM Units, without a warning. Only the Units key is read."""
    sidecar = bids_sidecar_path(path)
    if sidecar is None or not os.path.isfile(sidecar):
        return ""
    content = _read_sidecar(sidecar, f"'{path}' is read without units", stacklevel + 1)
    if content is None or "Units" not in content:
        return ""
    stated = content["Units"]
    code = _SIDECAR_UNITS.get(stated.strip().upper()) if isinstance(stated, str) else None
    if code is None and isinstance(stated, str) and stated.strip().upper() in _NON_PET_BIDS_UNITS:
        return ""  # an MR fieldmap's Hz...: no PET's units, and known
    if code is None:
        shown = repr(stated)[:40] if isinstance(stated, str) else f"a JSON {type(stated).__name__}"
        warnings.warn(f"The JSON sidecar '{sidecar}' states Units {shown}, which this package does not know: '{path}' "
                      "is read without units (a window in SUV is then checked, and the web's SUV windows offered, by "
                      "the values alone). Known: " + ", ".join(_BIDS_UNITS.values()) + ", or a DICOM Units code ("
                      + ", ".join(sorted(_DICOM_UNITS_TERMS - set(_BIDS_UNITS))) + ").",
                      stacklevel=stacklevel + 1)
        return ""
    return code


def _stage_sidecar_units(final: str, units: str, notes: list[str]) -> tuple[str, str | None] | None:
    """Prepare the BIDS sidecar of the NIfTI ``final`` for ``units`` (a DICOM Units code, "" for none), changing
    nothing yet: None where it is left as it is, else (sidecar, a temporary file beside it holding its new content,
    or None where it is to be removed), which :func:`_commit_sidecar` puts in place once the image is. A new
    sidecar holds the Units alone; an existing one keeps its other keys (a converter's tracer, timing...) and only
    its Units are set. An image without units removes the Units an old sidecar states (the file then written is
    not in them), with a note, and a sidecar left empty so is removed; a sidecar that is not a JSON object is left
    as it is, with a note. Where another NIfTI of the same name shares the sidecar (``x.nii`` beside ``x.nii.gz``:
    :func:`_sidecar_sharers`), a change of its Units is that file's too: a note names both files and the fix. The
    notes (warnings' texts) go into ``notes``, for the caller to issue once the files are in place."""
    sidecar = bids_sidecar_path(final)
    assert sidecar is not None
    exists = os.path.isfile(sidecar)
    if not units and not exists:
        return None
    content: dict[str, Any] | None = {}
    if exists:
        content = _read_sidecar(sidecar, "it is left as it is" + (
            f", without the Units {units} of the image written ('{final}' is read back without units)" if units else
            f", and the Units it may state are not those of '{final}', which states none"), 0, notes)
        if content is None:
            return None
    stated = content.get("Units")
    if units and isinstance(stated, str) and _SIDECAR_UNITS.get(stated.strip().upper()) == units:
        return None  # it says so already (e.g. dcm2niix's "BQML"): the user's file is not rewritten
    sharers = _sidecar_sharers(final)
    if not units:
        if "Units" not in content:
            return None
        old = content.pop("Units")
        if sharers:
            notes.append(_shared_sidecar_note(final, sidecar, sharers, repr(old)[:40], "", emptied=not content))
        else:
            notes.append(f"'{final}' is written without units over a file whose JSON sidecar '{sidecar}' stated "
                         f"Units {repr(old)[:40]}: they are removed from it (they were the old file's), its other "
                         "keys kept" + ("" if content else "; the sidecar, left empty, is removed") + ".")
        if not content:
            return sidecar, None
    else:
        if sharers:
            notes.append(_shared_sidecar_note(final, sidecar, sharers,
                                              repr(stated)[:40] if "Units" in content else "", units))
        content["Units"] = _BIDS_UNITS.get(units, units)
    tmp, _ = atomic_path(sidecar)
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(content, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
        os.chmod(tmp, (os.stat(sidecar).st_mode & 0o7777) if exists else _NEW_FILE_MODE)
    except BaseException as exc:
        os.remove(tmp)
        if isinstance(exc, OSError):  # a full disk: named, not a traceback
            raise InputError(f"Cannot write '{sidecar}', the JSON sidecar of '{final}' ({exc.strerror or exc}).",
                             "Free some disk space, or give an output path you can write to.") from exc
        raise
    return sidecar, tmp


def _sidecar_sharers(final: str) -> list[str]:
    """The other NIfTI files whose BIDS sidecar is ``final``'s: ``x.nii`` beside ``x.nii.gz`` (BIDS names a sidecar by
    the image's name without its extension, so the two are one name)."""
    stem = final[:len(final) - len(_read_suffix(final))]
    sharers: list[str] = []
    for other in (stem + ext for ext in (".nii", ".nii.gz", ".NII", ".NII.GZ")):
        if os.path.isfile(other) and not any(_same_place(other, seen) for seen in (final, *sharers)):
            sharers.append(other)
    return sharers


def _shared_sidecar_note(final: str, sidecar: str, sharers: Sequence[str], old: str, units: str, *,
                         emptied: bool = False) -> str:
    """The note of a write that changes the Units of a sidecar ``sharers`` (:func:`_sidecar_sharers`) read too:
    ``old`` the Units it stated (their repr, "" for none), ``units`` the DICOM code it states now ("" for none),
    ``emptied`` where the sidecar, left empty, is removed."""
    others = " and ".join(f"'{other}'" for other in sharers)
    now = (f"Units {_BIDS_UNITS.get(units, units)!r}" if units else
           "no Units (left empty, it is removed)" if emptied else "no Units, its other keys kept")
    return (f"'{final}' is written {f'in {units}' if units else 'without units'}, and its JSON sidecar '{sidecar}' is "
            f"also that of {others}, beside it (BIDS names a sidecar by the image's name without its extension: the "
            f"two are one name): it now states {now} where it stated {f'Units {old}' if old else 'none'}, so {others} "
            f"is now read {f'in {units}' if units else 'without units'} too. To keep each its own units, give the two "
            "images different names (or remove the one no longer wanted).")


def _commit_sidecar(final: str, staged: tuple[str, str | None]) -> None:
    """Put in place the sidecar :func:`_stage_sidecar_units` prepared (``final``, the image, being in place)."""
    sidecar, tmp = staged
    try:
        if tmp is None:
            os.remove(sidecar)
        else:
            os.replace(tmp, sidecar)
    except OSError as exc:
        raise InputError(f"'{final}' is written, but its JSON sidecar '{sidecar}' could not be "
                         f"{'removed' if tmp is None else 'replaced'} ({exc.strerror or exc}): the Units it states "
                         "may not be those of the image.",
                         "Check that the folder is writable, and write the image again.") from exc


def _set_dicom_file_spacing(image: sitk.Image, path: str, notes: list[_FileWarning],
                            tags: Mapping[int, Any] | None = None) -> None:
    """Give a single-frame DICOM image the pixel size its tags state, or refuse it when none does.

    ITK's DICOM reader (GDCM) reads a file without PixelSpacing (0028,0030) at 1 mm without a word (its
    series reader refuses a series without it; a classic series follows the rule here, see
    :func:`_check_series_geometry`), and for radiographs (CR, DX, MG,
    XA) takes ImagerPixelSpacing (0018,1164) even where PixelSpacing is present. Here PixelSpacing comes
    first (DICOM's size in the patient, calibrated where the two differ); without it ImagerPixelSpacing
    (the size at the detector: larger than in the patient by the geometric magnification) or
    NominalScannedPixelSpacing (0018,2010, a digitised film's) stand in, with a warning. A multi-frame
    file (one with NumberOfFrames) is placed by :func:`_set_multiframe_geometry` (from ``tags``, its header as
    :func:`dicom_header.read_geometry_tags` gives it, where already read). Only these tags are read,
    and the warning and the error name the file and the tags only. With ``notes``, the warnings are kept
    there instead of given (see :func:`_warn_once_per_kind`).
    """
    if image.HasMetaDataKey("0028|0008"):  # NumberOfFrames: a multi-frame IOD, e.g. an enhanced CT or MR
        _set_multiframe_geometry(image, path, notes, tags)
        return
    text_of = functools.partial(_meta_text, image)

    usable = _usable_pixel_size(text_of)
    if usable is None:
        raise _no_pixel_size(path, "")
    _set_pixel_size(image, path, *usable, notes)
    position = _dicom_numbers(text_of("0020|0032"))
    if len(position) != 3 or not all(map(math.isfinite, position)):  # ITK's origin stands, (0, 0, 0)
        notes.append(_unplaced_note(path, image.GetDimension(), multiframe=False))
    cosines = _dicom_numbers(text_of("0020|0037"))
    if len(cosines) != 6 or not all(map(math.isfinite, cosines)):  # ITK's direction stands: the identity
        notes.append(_unturned_note(path, multiframe=False, picture=_image_picture(image)))


def _usable_pixel_size(text_of: Callable[[str], str]) -> tuple[str, str, list[float]] | None:
    """The first of :data:`_SPACING_TAGS` that holds a usable pixel size, as (tag, name, row and column
    spacing), or None; ``text_of`` gives a tag's text ("" where absent). One rule for a file and for each
    slice of a classic series."""
    return next(((tag, name, values) for tag, name in _SPACING_TAGS
                 for values in [_dicom_pixel_size(text_of(tag))] if values), None)


def _no_pixel_size(path: str, where: str) -> InputError:
    return InputError(f"DICOM file '{path}' has no usable PixelSpacing (0028,0030){where}, nor ImagerPixelSpacing "
                      "(0018,1164) or NominalScannedPixelSpacing (0018,2010), so its pixel size is unknown "
                      "(ITK would assume 1 mm).",
                      "Export it again with its PixelSpacing (from the scanner or PACS), or set it, e.g. with "
                      "DCMTK: dcmodify -i \"(0028,0030)=0.5\\0.5\" FILE (row spacing\\column spacing, mm), or "
                      "convert it to NIfTI with the right spacing and load that.")


def _set_pixel_size(image: sitk.Image, path: str, tag: str, name: str, values: list[float],
                    notes: list[_FileWarning]) -> None:
    """Set the in-plane spacing (``values``: row spacing, column spacing) taken from ``tag``; a warning,
    kept in ``notes``, says so when it is the detector's or the film's pixel size rather than the patient's."""
    spacing = list(image.GetSpacing())
    spacing[0], spacing[1] = values[1], values[0]
    image.SetSpacing(spacing)
    note = _pixel_size_note(path, tag, name, values)
    if note is not None:
        notes.append(note)


def _pixel_size_note(path: str, tag: str, name: str, values: list[float]) -> _FileWarning | None:
    """The warning for a file whose pixel size (``values``: row spacing, column spacing) came from ``tag``: None
    for PixelSpacing, the size in the patient; else the detector's or the film's size stands in for it."""
    if tag not in ("0018|1164", "0018|2010"):
        return None
    why = (", the size at the detector: distances in the patient are smaller by the geometric magnification."
           if tag == "0018|1164" else ", the digitised film's.")
    return _FileWarning(tag, path, f"DICOM file '{path}' has no PixelSpacing (0028,0030): its pixel size, "
                                   f"{values[0]:g} x {values[1]:g} mm (rows x columns), is its {name}{why}",
                        f"have no PixelSpacing (0028,0030): their pixel size, {values[0]:g} x {values[1]:g} mm "
                        f"(rows x columns) in the first, is their {name}{why}")


def _first_item(item: Mapping[int, Any], sequence: int) -> Mapping[int, Any]:
    """The first item of ``sequence`` in the tags read by :func:`dicom_header.read_geometry_tags`, or {}."""
    items = item.get(sequence)
    return items[0] if isinstance(items, list) and items else {}


_SHARED_GROUPS, _PER_FRAME_GROUPS = 0x52009229, 0x52009230
_PIXEL_MEASURES, _PLANE_POSITION, _PLANE_ORIENTATION = 0x00289110, 0x00209113, 0x00209116
_DETECTOR_INFORMATION = 0x00540022


def _set_multiframe_geometry(image: sitk.Image, path: str, notes: list[_FileWarning],
                             tags: Mapping[int, Any] | None = None) -> None:
    """Place a multi-frame DICOM image (one with NumberOfFrames, e.g. an enhanced CT/MR/PET) by its own
    tags, or refuse it where they do not say where its voxels are.

    ITK's DICOM reader (GDCM) reads the functional groups of enhanced images, but it read such a file at
    1 mm without a word when no pixel size was anywhere, ignored a top-level PixelSpacing (0028,0030) in
    an enhanced or secondary-capture file, and when the frames' ImagePositionPatient were not evenly
    spaced in frame order (a missing frame, frames out of order, several time points or echoes of one
    volume) it dropped every spacing, the pixel size included, to 1 mm without a word. A multi-frame file
    without per-frame positions (NM, a legacy multi-frame CT) got 1 mm between its frames without
    SpacingBetweenSlices (0018,0088). Here the pixel size is, in this order: the top-level PixelSpacing,
    the shared functional groups' PixelMeasuresSequence (0028,9110), the first frame's, then (with a
    warning, as for one frame) ImagerPixelSpacing or NominalScannedPixelSpacing; the frame axis is the
    frames' ImagePositionPatient (0020,0032) in their PlanePositionSequence (0020,9113) where every
    frame has one (evenly spaced along one line, else refused); a file of several frames whose one
    PlanePositionSequence is in its shared functional groups (which hold what every frame shares) has them all
    at one position, a cine of one plane rather than a volume, and is refused; else SpacingBetweenSlices, else
    SliceThickness (0018,0050) with a warning (contiguous slices assumed), else refused. A file whose functional
    groups place no frame has its first frame where :func:`_first_frame_position` says: ITK (GDCM) takes the
    origin of an enhanced file only from its functional groups and of an NM file only from its
    DetectorInformationSequence (0054,0022), and put one with only a top-level ImagePositionPatient at
    (0, 0, 0) without a word; a file that states no position anywhere stays at (0, 0, 0), with a warning that
    nothing places it (header-based placement is meaningless for it). Those warnings are kept in ``notes``
    (:func:`_read_file` gives them, once per kind for a series). ``tags``: the file's header as
    :func:`dicom_header.read_geometry_tags` gives it, where the caller has read it (a file of a series), else
    read here.
    """
    from .dicom_header import read_geometry_tags

    if tags is None:
        tags = read_geometry_tags(path)
    if tags is None or 0x00280008 not in tags:  # unreadable, or cut short before the NumberOfFrames ITK saw
        # kept, as the other warnings are, for _read_file to give from its caller's line (or once for a series)
        notes.append(_FileWarning("header unread", path,
                                  f"DICOM file '{path}': its header could not be read to check its pixel size and "
                                  "frame positions, so its geometry is as ITK's reader (GDCM) gives it.",
                                  "have headers that could not be read to check their pixel size and frame "
                                  "positions, so their geometry is as ITK's reader (GDCM) gives it."))
        return
    shared = _first_item(tags, _SHARED_GROUPS)
    frames = [f for f in tags.get(_PER_FRAME_GROUPS) or [] if isinstance(f, dict)]
    _set_pixel_size(image, path, *_multiframe_pixel_size(path, tags, shared, frames), notes)
    cosines = _stated_cosines(tags, shared, frames)
    if not cosines:  # ITK's direction stands: the identity
        notes.append(_unturned_note(path, multiframe=True, picture=_image_picture(image)))
    if image.GetDimension() != 3:
        return
    if cosines:  # ITK takes them from the functional groups only for the classes it knows as enhanced
        image.SetDirection([float(v) for v in _direction_of(path, cosines).ravel()])
    unplaced = False
    if not any(_first_item(item, _PLANE_POSITION).get(0x00200032) for item in (shared, *frames)):
        position = _first_frame_position(tags)  # else ITK's origin stands: from the functional groups
        if position:
            image.SetOrigin(position)
        unplaced = not position  # ITK's origin stands, (0, 0, 0): nothing says where the file lies
    if image.GetSize()[2] >= 2:
        _set_frame_axis(image, path, tags, shared, frames, notes)
    else:
        _place_one_frame(image, shared, frames)
    if unplaced:  # once placed (a file refused for its frame spacing gets no warning besides)
        notes.append(_unplaced_note(path, image.GetDimension(), multiframe=True))


def _place_one_frame(image: sitk.Image, shared: Mapping[int, Any], frames: Sequence[Mapping[int, Any]]) -> None:
    """The origin of a multi-frame file of one frame (a one-slice volume) where its functional groups state it: the
    frame's own PlanePositionSequence (0020,9113), else the shared one (one frame: no cine). ITK's reader (GDCM)
    takes it from the functional groups only for the classes it knows as enhanced (CT, MR, PET, X-ray 3D, ...): a
    one-frame Enhanced XA, or an NM file with functional groups, at (3, 4, 16) was read at the origin without a
    word (a file of two or more frames is placed by :func:`_set_frame_axis`); one that states no position there
    keeps the origin :func:`_set_multiframe_geometry` gives it."""
    at = next((values for values in (_dicom_numbers(_first_item(item, _PLANE_POSITION).get(0x00200032) or "")
                                     for item in (*frames[:1], shared)) if values), [])
    if len(at) == 3 and all(map(math.isfinite, at)):
        image.SetOrigin([float(v) for v in at])


def _direction_of(path: str, cosines: Sequence[float]) -> np.ndarray:
    """The 3 x 3 direction (columns: the rows' direction, the columns' direction, the normal of the plane they make)
    of ImageOrientationPatient ``cosines`` (six finite numbers) of multi-frame DICOM file ``path``, as ITK (GDCM)
    builds it for the classes it places. Refuses cosines that are not two perpendicular unit vectors within 0.01
    (e.g. six zeros), on which ITK's reader fails ("Bad direction, determinant is 0") for those classes, and for
    the others had read the file as axial without a word."""
    row, column = np.array(cosines[:3], dtype=float), np.array(cosines[3:], dtype=float)
    if not (abs(np.linalg.norm(row) - 1) <= 1e-2 and abs(np.linalg.norm(column) - 1) <= 1e-2
            and abs(float(row @ column)) <= 1e-2):
        raise InputError(f"DICOM file '{path}' has an ImageOrientationPatient (0020,0037) that is not two "
                         "perpendicular unit vectors ("
                         + "\\".join(f"{v:g}" for v in cosines) + "), so which way its rows and columns run is "
                         "unknown.",
                         "Export it again with its geometry (from the scanner or PACS), or convert it to NIfTI "
                         "with the right orientation and load that.")
    row, column = row / np.linalg.norm(row), column / np.linalg.norm(column)
    return np.column_stack([row, column, np.cross(row, column)])


def _unplaced_note(path: str, dimension: int, multiframe: bool) -> _FileWarning:
    """The warning for a DICOM file that states no position, read at the origin as ITK reads it: ``dimension``
    the image's (a slice read alone is 2D, see :func:`_dicom_slice_as_2d`), ``multiframe`` whether a
    multi-frame file's other places for a position were looked in too. One text for both kinds of file."""
    origin = "(" + ", ".join(["0"] * dimension) + ")"

    def text(has: str, its: str, it_is: str, it: str) -> str:
        where = (f" in {its} functional groups' PlanePositionSequence (0020,9113), DetectorInformationSequence "
                 f"(0054,0022) or at {its} top level" if multiframe else "")
        return (f"{has} no ImagePositionPatient (0020,0032){where}, so {it_is} placed at the origin, {origin} "
                "(as ITK's reader places it): where it lies in the patient is unknown. Header-based placement "
                f"(initializer 'none') is meaningless for {it}; the 'geometry' or 'moments' initializers align the "
                "images' centres.")

    return _FileWarning(_UNPLACED, path, f"DICOM file '{path}' " + text("has", "its", "it is", "it"),
                        text("have", "their", "they are", "them"))


#: The kind of :func:`_unplaced_note`'s warning
_UNPLACED = "at the origin"

def _unturned_note(path: str, multiframe: bool, picture: str | None = None) -> _FileWarning:
    """The warning for a DICOM file that states no ImageOrientationPatient, read as axial as ITK reads it (the
    identity direction); a series without it is refused (see :func:`_check_series_geometry`). ``picture``: what the
    image is where its SOP class or modality images no plane of the patient (see :func:`_flat_picture`), e.g. "a
    projection X-ray image (Modality CR)": such an image states no orientation by definition, and is said to be
    read as the flat picture it is (the warning for a slice, that a coronal or sagittal image would be registered
    turned, had been given for every radiograph, ultrasound image and secondary capture)."""
    if picture is not None:
        return _FileWarning("flat picture", path,
                            f"DICOM file '{path}' is {picture}, which lies in no plane of the patient that its header "
                            "states (it has no ImageOrientationPatient (0020,0037), as such images need not): it is "
                            "read as a flat picture, its rows along x and its columns along y, as ITK's reader reads "
                            "it, so its axes are not the patient's. Align it to a CT, MR or PET image by its content, "
                            "not by the headers (initializer 'none').",
                            "are projection images or pictures, which lie in no plane of the patient that their "
                            "headers state (no ImageOrientationPatient (0020,0037)): they are read as flat pictures, "
                            "rows along x and columns along y, as ITK's reader reads them, so their axes are not the "
                            "patient's.")

    def text(has: str, its: str, it_is: str, it_lies: str, image: str) -> str:
        where = (f" in {its} functional groups' PlaneOrientationSequence (0020,9116), DetectorInformationSequence "
                 f"(0054,0022) or at {its} top level" if multiframe else "")
        return (f"{has} no ImageOrientationPatient (0020,0037){where}, so {it_is} taken as axial (rows running to "
                "the patient's left, columns to the back, as ITK's reader takes it): which way "
                f"{it_lies} in the patient is unknown, and {image} would be shown and registered turned.")

    return _FileWarning("not turned", path, f"DICOM file '{path}' " + text("has", "its", "it is", "it lies",
                                                                           "a coronal or sagittal image"),
                        text("have", "their", "they are", "they lie", "coronal or sagittal images"))


#: SOP classes whose images lie in no plane of the patient (no Image Plane module): projection radiographs (CR, DX,
#: MG, intra-oral, XA, RF and their enhanced classes, breast projection), ultrasound, secondary capture, RT image and
#: visible-light photographs, by their UID's last parts after 1.2.840.10008.5.1.4.1.1.
_PICTURE_CLASSES = {
    "1": "a projection X-ray image", "1.1": "a projection X-ray image", "1.1.1": "a projection X-ray image",
    "1.2": "a projection X-ray image", "1.2.1": "a projection X-ray image", "1.3": "a projection X-ray image",
    "1.3.1": "a projection X-ray image", "12.1": "a projection X-ray image", "12.1.1": "a projection X-ray image",
    "12.2": "a projection X-ray image", "12.2.1": "a projection X-ray image", "13.1.4": "a projection X-ray image",
    "13.1.5": "a projection X-ray image", "481.1": "a projection X-ray image",
    "6.1": "an ultrasound image", "3.1": "an ultrasound image",
    "7": "a secondary capture", "7.1": "a secondary capture", "7.2": "a secondary capture",
    "7.3": "a secondary capture", "7.4": "a secondary capture",
    "77.1.1": "a photograph", "77.1.1.1": "a photograph", "77.1.2": "a photograph", "77.1.2.1": "a photograph",
    "77.1.4": "a photograph", "77.1.4.1": "a photograph", "77.1.5.1": "a photograph", "77.1.5.2": "a photograph",
}
#: Modalities of such images, for a file whose SOP class is none of those above nor one with an Image Plane
_PICTURE_MODALITIES = {
    "CR": "a projection X-ray image", "DX": "a projection X-ray image", "MG": "a projection X-ray image",
    "IO": "a projection X-ray image", "PX": "a projection X-ray image", "RG": "a projection X-ray image",
    "XA": "a projection X-ray image", "RF": "a projection X-ray image", "US": "an ultrasound image",
    "OP": "a photograph", "XC": "a photograph", "ES": "a photograph", "GM": "a photograph", "SM": "a photograph",
}
#: SOP classes whose images do lie in a plane of the patient: CT, MR, PET, NM and their enhanced classes (the
#: warning that a coronal or sagittal image would be registered turned stands for them, whatever the Modality says)
_SLICE_CLASS_PREFIXES = ("2", "4", "20", "128", "130")


def _flat_picture(sop_class: str, modality: str) -> str | None:
    """What a DICOM image is, in words with its modality (e.g. "an ultrasound image (Modality US)"), where its SOP
    class (else its modality) images no plane of the patient, so that it states no ImageOrientationPatient by
    definition; None for any other image (a CT, MR, PET or NM slice, or a class and modality not known here)."""
    prefix = "1.2.840.10008.5.1.4.1.1."
    own = sop_class[len(prefix):] if sop_class.startswith(prefix) else ""
    what = _PICTURE_CLASSES.get(own)
    if what is None and not (own and own.split(".")[0] in _SLICE_CLASS_PREFIXES):
        what = _PICTURE_MODALITIES.get(modality.upper())
    if what is None:
        return None
    return what + (f" (Modality {modality})" if modality and modality.isalnum() else "")


def _image_picture(image: sitk.Image) -> str | None:
    """:func:`_flat_picture` for an image ITK read from a DICOM file, by the SOP class and modality in its metadata."""
    text_of = functools.partial(_meta_text, image)

    return _flat_picture(text_of("0008|0016"), text_of("0008|0060"))


def _stated_cosines(tags: Mapping[int, Any], shared: Mapping[int, Any], frames: Sequence[Mapping[int, Any]]
                    ) -> list[float]:
    """A multi-frame file's ImageOrientationPatient wherever it states one: as :func:`_frame_cosines` finds it, else
    in its DetectorInformationSequence (0054,0022), where an NM file keeps it; [] where none holds six finite
    numbers."""
    for values in (_frame_cosines(tags, shared, frames),
                   _dicom_numbers(_first_item(tags, _DETECTOR_INFORMATION).get(0x00200037) or "")):
        if len(values) == 6 and all(map(math.isfinite, values)):
            return values
    return []


def _first_frame_position(tags: Mapping[int, Any]) -> list[float]:
    """Where a multi-frame file whose functional groups place no frame puts its first frame (LPS, mm): the
    ImagePositionPatient (0020,0032) in its DetectorInformationSequence (0054,0022), where the NM IOD keeps it,
    else at its top level (as in a legacy multi-frame CT: the first voxel of the first frame, the others
    following along the normal, see :func:`_set_frame_axis`); [] where neither holds three finite numbers."""
    for text in (_first_item(tags, _DETECTOR_INFORMATION).get(0x00200032), tags.get(0x00200032)):
        values = _dicom_numbers(text) if isinstance(text, str) else []
        if len(values) == 3 and all(map(math.isfinite, values)):
            return values
    return []


def _multiframe_pixel_size(path: str, tags: Mapping[int, Any], shared: Mapping[int, Any],
                           frames: Sequence[Mapping[int, Any]]) -> tuple[str, str, list[float]]:
    """(tag, its name, [row spacing, column spacing]) of a multi-frame file, found in the order of
    :func:`_set_multiframe_geometry`; refuses a file without any, or with frames of different sizes."""
    shared_measures = _first_item(shared, _PIXEL_MEASURES)
    first_measures = _first_item(frames[0], _PIXEL_MEASURES) if frames else {}
    candidates = [("0028|0030", "PixelSpacing (0028,0030)", tags.get(0x00280030)),
                  ("shared", "", shared_measures.get(0x00280030)),
                  ("per-frame", "", first_measures.get(0x00280030)),
                  ("0018|1164", "ImagerPixelSpacing (0018,1164)", tags.get(0x00181164)),
                  ("0018|2010", "NominalScannedPixelSpacing (0018,2010)", tags.get(0x00182010))]
    usable = [(tag, name, values) for tag, name, text in candidates
              for values in [_dicom_pixel_size(text) if isinstance(text, str) else []] if values]
    if not usable:
        raise _no_pixel_size(path, " at its top level or in its shared or per-frame functional groups' "
                                   "PixelMeasuresSequence (0028,9110)")
    if usable[0][0] == "per-frame":
        sizes = {tuple(_dicom_pixel_size(m.get(0x00280030) or "")) for m in
                 (_first_item(f, _PIXEL_MEASURES) for f in frames) if m.get(0x00280030)}
        if len(sizes) > 1:
            raise InputError(f"DICOM file '{path}' has frames of different pixel sizes (PixelSpacing (0028,0030) "
                             "in its per-frame functional groups), so no one grid holds them.",
                             "Split the file into single-frame files (e.g. with dcm2niix, or Slicer's DICOM "
                             "module), then load the frames of one pixel size as a series.")
    return usable[0]


def _frame_positions(frames: Sequence[Mapping[int, Any]]) -> np.ndarray | None:
    """Each frame's ImagePositionPatient from its PlanePositionSequence (frames x 3, LPS mm), or None
    unless there are at least two frames and every one has a usable position."""
    positions = [_dicom_numbers(_first_item(f, _PLANE_POSITION).get(0x00200032) or "") for f in frames]
    if len(positions) < 2 or not all(len(p) == 3 and all(map(math.isfinite, p)) for p in positions):
        return None
    return np.array(positions, dtype=float)


def _even_step(points: np.ndarray) -> tuple[np.ndarray, int | None, float]:
    """The step from the first of ``points`` (two or more, LPS mm) to the last in even steps; the index of the
    point farthest from where those steps put it where it is off by more than 0.01 mm and 1% of a step (no
    regular grid holds them: a missing frame, frames out of order, a slice shifted sideways), else None; and
    that farthest distance (mm). One rule for a file's frames, a series' slices and the frames of its files."""
    step = (points[-1] - points[0]) / (len(points) - 1)
    off = np.linalg.norm(points - (points[0] + np.outer(np.arange(len(points)), step)), axis=1)
    worst = int(np.argmax(off))
    return step, worst if float(off[worst]) > max(0.01, 0.01 * float(np.linalg.norm(step))) else None, float(off[worst])


#: How to load one frame of a multi-frame file whose frames make no volume (see :func:`_no_depth`)
_ONE_FRAME = ("split the file into single-frame files (e.g. with dcm2niix, or Slicer's DICOM module), then give one "
              "frame's file.")


def _frame_step(path: str, points: np.ndarray, normal: np.ndarray | None) -> np.ndarray:
    """The step from frame to frame (LPS, mm); refuses frames not evenly spaced along one line in frame
    order, the order in which ITK stacks them, and frames that do not reach along ``normal`` (the normal of
    the frame plane; None where the file has no orientation), see :func:`_no_depth`."""
    count = len(points)
    step, worst, off = _even_step(points)
    if worst is not None:
        raise InputError(f"DICOM file '{path}' has {count} frames whose ImagePositionPatient (0020,0032) are not "
                         f"evenly spaced along one line in frame order (frame {worst + 1} lies {off:.4g} mm "
                         "from where even steps from the first frame to the last put it): e.g. a missing frame, "
                         "frames out of order, or several time points or echoes in one file. ITK's reader would "
                         "give it 1 mm spacing, in plane too, without a word (or fail).",
                         "Split the file into single-frame files (e.g. with dcm2niix, or Slicer's DICOM module, "
                         "which sort frames by position and time), then load one volume as a series.")
    error = _no_depth(f"DICOM file '{path}'", "frames", points, normal,
                      "ITK's reader fails on such a file (\"Zero-valued spacing is not supported\"), or, where "
                      "the frames step a trace along the normal, stacks them that trace apart.", _ONE_FRAME)
    if error is not None:
        raise error
    return step


def _no_depth(subject: str, noun: str, points: np.ndarray, normal: np.ndarray | None, itk: str,
              one_frame: str) -> InputError | None:
    """The error for frames or slices (``points``: the first voxel of each, LPS mm) that do not reach along the
    ``normal`` of their plane, so that no volume holds them: all at one position (a cine or dynamic series, time
    points or echoes of one plane), or moving within their plane (e.g. a cine of a moving table), or an
    ImageOrientationPatient that does not fit the positions; None where they reach along it by more than
    0.01 mm per frame and more than 1% of their spread (``normal`` None: the spread stands for the reach).

    ``subject`` names the file or series (never a patient tag), ``itk`` says what ITK did, ``one_frame`` how
    to load one frame."""
    count = len(points)
    spread = float(np.linalg.norm(points - points[0], axis=1).max())
    reach = float(np.ptp(points @ normal)) if normal is not None else spread
    if reach > max(0.01 * (count - 1), 0.01 * spread):
        return None
    if spread <= 0.01 * (count - 1):
        return InputError(f"{subject} has {count} {noun} at one position (ImagePositionPatient (0020,0032)"
                          + (f", all within {spread:.2g} mm" if spread > 0 else "") + "): no volume but one plane "
                          f"imaged {count} times, e.g. a cine or dynamic series, or time points or echoes of one "
                          "slice." + (f" {itk}" if itk else ""), f"Load one frame: {one_frame}")
    return InputError(f"{subject} has {count} {noun} whose ImagePositionPatient (0020,0032) spread {spread:.4g} mm "
                      "within the plane of their ImageOrientationPatient (0020,0037) but "
                      f"{reach:.2g} mm along its normal: the {noun} move within their plane, so they make no volume "
                      "(e.g. a cine of one plane moving with the table), or the orientation does not fit the "
                      "positions." + (f" {itk}" if itk else ""),
                      "Check ImageOrientationPatient (0020,0037) against the positions (e.g. with dcmdump or "
                      "pydicom) and export the images again from the scanner or PACS where it is wrong; otherwise "
                      f"load one frame: {one_frame}")


def _two_at_one_position(subject: str, noun: str, depth: float, first: str, second: str) -> InputError:
    """The error for a series (``subject``) whose ``noun`` (frames, slices) ``first`` and ``second`` lie at one
    position, ``depth`` mm along the slice normal: echoes or time points of one volume saved in one series, which
    no one volume holds. One wording for the frames of multi-frame files and for classic slices."""
    return InputError(f"{subject} has two {noun} at one position along the slice normal ({depth:.4g} mm): {first} "
                      f"and {second}, e.g. echoes, time points or repeated acquisitions of one volume saved in one "
                      f"series, so no one volume holds its {noun}.",
                      "Move the files of one echo or time point into a folder of their own (Slicer's DICOM module or "
                      "dcm2niix split them), then load that folder; or give one file's path to read that file alone.")


def _check_even_depths(subject: str, noun: str, depth: np.ndarray, name: Callable[[int], str]) -> None:
    """Refuse a series (``subject``) whose ``noun`` (frames, slices), at ``depth`` mm along the slice normal in
    ascending order, are not evenly spaced: two at one position (:func:`_two_at_one_position`), or a gap, e.g. a
    missing one, that reading it as evenly spaced would misplace every later one at. ``name(i)`` names the i-th.
    One rule (steps equal within 0.01 mm or 1 %) and one wording for the frames of multi-frame files and for
    classic slices."""
    steps = np.diff(depth)
    if not steps.size:
        return
    typical = float(np.median(steps))
    tolerance = max(0.01, 0.01 * typical)
    if float(steps.min()) <= tolerance:
        at = int(np.argmin(steps))
        raise _two_at_one_position(subject, f"{noun}s", float(depth[at]), name(at), name(at + 1))
    if float(steps.max() - steps.min()) > tolerance:
        at = int(np.argmax(np.abs(steps - typical)))
        raise InputError(f"{subject} has uneven {noun} spacing: steps from {steps.min():.4g} to {steps.max():.4g} mm "
                         f"along the slice normal (a {noun} may be missing between {name(at)} at {depth[at]:.4g} mm "
                         f"and {name(at + 1)} at {depth[at + 1]:.4g} mm); reading it as evenly spaced would misplace "
                         f"every {noun} after the gap.",
                         "Load the complete series, or resample it onto a regular grid first (e.g. in Slicer, with "
                         "the DICOM module's acquisition-geometry regularization).")


def _frame_cosines(tags: Mapping[int, Any], shared: Mapping[int, Any], frames: Sequence[Mapping[int, Any]]) -> list[float]:
    """A multi-frame file's ImageOrientationPatient (row, then column cosines): at its top level, else in its
    shared functional groups, else its first frame's; [] where none holds six numbers first."""
    first = _first_item(frames[0], _PLANE_ORIENTATION).get(0x00200037) if frames else None
    return (_dicom_numbers(tags.get(0x00200037) or "")
            or _dicom_numbers(_first_item(shared, _PLANE_ORIENTATION).get(0x00200037) or "")
            or _dicom_numbers(first or ""))


def _explain_multiframe_failure(path: str) -> None:
    """Where ITK failed to read a multi-frame DICOM file, refuse it for its pixel size or frame positions
    if they are the cause: ITK fails on a zero spacing ("Zero-valued spacing is not supported"), e.g. a
    PixelSpacing of 0 in the functional groups, or frames all at one position, and on an orientation that is no
    two perpendicular unit vectors ("Bad direction, determinant is 0", see :func:`_direction_of`)."""
    from .dicom_header import read_geometry_tags

    tags = read_geometry_tags(path)
    if tags is not None and tags.get(0x00280008):
        frames = [f for f in tags.get(_PER_FRAME_GROUPS) or [] if isinstance(f, dict)]
        shared = _first_item(tags, _SHARED_GROUPS)
        _multiframe_pixel_size(path, tags, shared, frames)
        cosines = _stated_cosines(tags, shared, frames)
        if cosines:  # ITK: "Bad direction, determinant is 0" where they are e.g. six zeros
            _direction_of(path, cosines)
        points = _frame_positions(frames)
        if points is not None:
            first = _frame_cosines(tags, shared, frames)
            _frame_step(path, points, np.cross(first[:3], first[3:]) if len(first) == 6 else None)
        if not cosines:  # ITK (GDCM): "An invalid logic behavior occurred ... cosines"
            raise InputError(f"DICOM file '{path}' has no usable ImageOrientationPatient (0020,0037) in its "
                             "functional groups' PlaneOrientationSequence (0020,9116), DetectorInformationSequence "
                             "(0054,0022) or at its top level, so which way its rows and columns run is unknown (ITK's "
                             "reader fails on it).",
                             "Export it again with its geometry (from the scanner or PACS), or convert it to NIfTI "
                             "with the right orientation and load that.")


def _set_frame_axis(image: sitk.Image, path: str, tags: Mapping[int, Any], shared: Mapping[int, Any],
                    frames: Sequence[Mapping[int, Any]], notes: list[_FileWarning]) -> None:
    """The origin, frame spacing and frame direction of a multi-frame image (see :func:`_set_multiframe_geometry`)."""
    count = image.GetSize()[2]
    points = _frame_positions(frames)
    if points is not None and len(points) == count:
        orientations = [_dicom_numbers(_first_item(f, _PLANE_ORIENTATION).get(0x00200037) or "") for f in frames]
        cosines = _frame_cosines(tags, shared, frames)
        if len(cosines) == 6 and any(len(o) == 6 and not np.allclose(o, cosines, atol=1e-4) for o in orientations):
            raise InputError(f"DICOM file '{path}' mixes frame orientations (ImageOrientationPatient (0020,0037) "
                             "in its per-frame functional groups), so no one grid holds its frames.",
                             "Split the file into single-frame files (e.g. with dcm2niix, or Slicer's DICOM "
                             "module), then load the frames of one orientation as a series.")
        direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
        if len(cosines) == 6:
            direction[:, 0], direction[:, 1] = cosines[:3], cosines[3:]
        normal = np.cross(direction[:, 0], direction[:, 1])
        step = _frame_step(path, points, normal)
        length = float(np.linalg.norm(step))
        direction[:, 2] = normal if step @ normal > 0 else -normal  # the orthonormal grid ITK builds
        spacing = list(image.GetSpacing())
        spacing[2] = length
        image.SetOrigin([float(v) for v in points[0]])
        image.SetSpacing(spacing)
        image.SetDirection([float(v) for v in direction.ravel()])
        _with_slice_step(image, step)  # frames shifted within their plane: a sheared grid, as for a series
        return
    at = _dicom_numbers(_first_item(shared, _PLANE_POSITION).get(0x00200032) or "")
    if (len(at) == 3 and all(map(math.isfinite, at))
            and not any(_first_item(f, _PLANE_POSITION).get(0x00200032) for f in frames)):
        # the shared groups hold what every frame shares (DICOM PS3.3 C.7.6.16): all frames at that one position
        raise _no_depth(f"DICOM file '{path}'", "frames", np.tile(np.array(at, dtype=float), (count, 1)), None,
                        "Its one PlanePositionSequence (0020,9113) is in its shared functional groups, which hold what "
                        "all its frames share (DICOM PS3.3 C.7.6.16), so every frame lies there. ITK's reader (GDCM) "
                        "reads it as a volume of 1 x 1 x 1 mm voxels.", _ONE_FRAME)
    measures = _first_item(shared, _PIXEL_MEASURES)
    for tag, name, text in (("0018|0088", "SpacingBetweenSlices (0018,0088)", tags.get(0x00180088)),
                            ("0018|0088", "", measures.get(0x00180088)),
                            ("0018|0050", "SliceThickness (0018,0050)", tags.get(0x00180050)),
                            ("0018|0050", "SliceThickness (0018,0050)", measures.get(0x00180050))):
        values = _dicom_numbers(text) if isinstance(text, str) else []
        if len(values) == 1 and math.isfinite(values[0]) and values[0] > 0:
            spacing = list(image.GetSpacing())
            spacing[2] = values[0]
            image.SetSpacing(spacing)
            if tag == "0018|0050":
                notes.append(_FileWarning("contiguous frames", path,
                                    f"DICOM file '{path}' has no per-frame ImagePositionPatient (0020,0032) nor "
                                    f"SpacingBetweenSlices (0018,0088): its {count} frames are taken as contiguous "
                                    f"slices, {values[0]:g} mm apart (its {name}).",
                                    "have no per-frame ImagePositionPatient (0020,0032) nor SpacingBetweenSlices "
                                    "(0018,0088): their frames are taken as contiguous slices, "
                                    f"{values[0]:g} mm apart in the first (its {name})."))
            return
    raise InputError(f"DICOM file '{path}' has {count} frames but neither per-frame ImagePositionPatient (0020,0032), "
                     "SpacingBetweenSlices (0018,0088) nor SliceThickness (0018,0050), so the distance between its "
                     "frames is unknown (ITK would assume 1 mm); its frames may also be time points, not slices.",
                     "Export it again with its geometry (from the scanner or PACS), or convert it to NIfTI with the "
                     "right spacing and load that; a cine or dynamic file holds no volume: export one frame.")


_PIXEL_VALUE_TRANSFORMATION = 0x00289145
_RESCALE_SLOPE, _RESCALE_INTERCEPT = 0x00281053, 0x00281052
#: how an error names them
_RESCALE_NAMES = {_RESCALE_SLOPE: "RescaleSlope (0028,1053)", _RESCALE_INTERCEPT: "RescaleIntercept (0028,1052)"}


def _rescale_fault(slope: str | None, intercept: str | None) -> tuple[int, str, str] | None:
    """What makes the RescaleSlope and RescaleIntercept a DICOM file states (their text; None where it has no such
    element) unusable: the tag at fault, it and its value in words (no patient tag: the value may be shown), and
    why; None where they are usable. Each must be one finite number, the slope not 0 (it would make every voxel the
    intercept). No pair, an empty pair, an empty intercept (0), and a slope left out or stated empty beside an
    intercept (1) are read as ITK's reader reads them: DICOM requires the slope there (PS3.3 C.11.1.1, Type 1C: present
    and not empty), which an absent slope breaks as an empty one does, and ITK's reader takes either as 1 in a
    classic file (an empty one had been refused beside an intercept where a left-out one was read). ITK's reader (GDCM)
    had read an unusable value without a word, as 1 or as 0 (every voxel the intercept) depending on where the file
    states it, and a series had ended in a bare ValueError for NaN or infinity. One value stated several times
    (``1\\1``: DICOM's VM is 1) is read as that value, at the file's top level (where ITK's reader takes the first
    value) and in an enhanced file's functional groups alike (:func:`_rescale_repeat_notes` warns of it); different
    values stay refused."""
    for tag, text in ((_RESCALE_SLOPE, slope), (_RESCALE_INTERCEPT, intercept)):
        if text is None or not text.strip():
            continue
        named = f"{_RESCALE_NAMES[tag]} '{text.strip()[:40]}{'...' if len(text.strip()) > 40 else ''}'"
        values = _dicom_numbers(text)  # [] for text that is no number (it is not empty)
        if not values:
            return tag, named, ", which is not a number"
        if len(set(values)) != 1:
            return tag, named, f", {len(values)} values where DICOM allows one"
        if not math.isfinite(values[0]):
            return tag, named, ", which is not a finite number"
        if tag == _RESCALE_SLOPE and values[0] == 0:
            return tag, named, ": a slope of 0 would make every voxel its RescaleIntercept, whatever its stored value"
    return None


#: The BitsAllocated (0028,0100) ITK's DICOM reader (GDCM) reads integer pixels of (12: packed, retired); 64 only as
#: float pixel data, refused on its own (_FLOAT_PIXELS_FIX)
_READABLE_BITS = (1, 8, 12, 16, 32)


def _unreadable_bits(text: str) -> int | None:
    """The BitsAllocated a DICOM file states (``text``, as read) where ITK's reader cannot read it: GDCM had refused 2,
    4, 10, 14, 40, 48 and 64 with its 'Unhandled PixelFormat: SamplesPerPixel :1; BitsAllocated :N ...' and 24 with
    'An invalid logic behavior occurred0'; None for a readable one, or text that is no whole number."""
    try:
        bits = int(text.strip())
    except (AttributeError, ValueError):
        return None
    return None if bits in _READABLE_BITS else bits


def _dicom_bits_allocated(path: str) -> str:
    """The BitsAllocated (0028,0100) DICOM file ``path`` states, as text ("" where it states none, or pydicom cannot
    read its header): read only once ITK has failed on the file, for its error."""
    import pydicom

    from .dicom_header import quiet_pydicom

    try:
        with quiet_pydicom():
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[0x00280100], force=True)
        return str(header[0x00280100].value) if 0x00280100 in header else ""
    except Exception:  # noqa: BLE001 - any header pydicom cannot read: ITK's own error stands
        return ""


def _bits_error(path: str, bits: int, others: str = "") -> InputError:
    """The error for a DICOM file whose BitsAllocated (0028,0100), ``bits``, ITK's reader cannot read (``others``: how
    many more files of its series state such a value)."""
    return InputError(f"DICOM file '{path}' has BitsAllocated (0028,0100) {bits}, a pixel depth ITK's DICOM reader "
                      f"(GDCM) cannot read: it reads {', '.join(map(str, _READABLE_BITS[:-1]))} and "
                      f"{_READABLE_BITS[-1]} bits a sample{others}.",
                      "Export the image again from the scanner or PACS with 8, 16 or 32 bits allocated, or convert it "
                      "with a tool that reads this depth (e.g. pydicom: ds.pixel_array) to NIfTI, and load that.")


def _series_bits_error(files: Sequence[str]) -> InputError | None:
    """The error for a series whose ``files`` include one whose BitsAllocated (0028,0100) ITK's reader cannot read
    (:func:`_bits_error`: the first such file, and how many more), None where none does: each file's header is read
    (one tag), so only once ITK has failed on the series."""
    unreadable = [(path, bits) for path in files
                  for bits in [_unreadable_bits(_dicom_bits_allocated(path))] if bits is not None]
    if not unreadable:
        return None
    return _bits_error(*unreadable[0], others=f"; so do {len(unreadable) - 1} more of the series' {len(files)} files"
                       if len(unreadable) > 1 else "")


def _rescale_repeat_notes(path: str, slope: str | None, intercept: str | None, where: str = "") -> list[_FileWarning]:
    """The warnings for a file whose RescaleSlope or RescaleIntercept states one value several times (``1\\1``),
    which :func:`_rescale_fault` lets through: read as the value, as ITK's reader (GDCM) reads it (its first value;
    pydicom's apply_rescale fails on it), where DICOM allows one (PS3.3 C.11.1.1: VM 1); one for each tag so stated
    (a file repeating both had been warned of its slope alone). ``where``: in the file, where not its top level (an
    enhanced file's functional groups, see :func:`_check_frame_rescales`), as :func:`_rescale_error` says it."""
    notes = []
    for tag, text in ((_RESCALE_SLOPE, slope), (_RESCALE_INTERCEPT, intercept)):
        values = _dicom_numbers(text) if text else []
        if len(values) > 1 and len(set(values)) == 1:
            named = f"{_RESCALE_NAMES[tag]} '{text.strip()[:40]}'{where}"
            why = (f"{len(values)} equal values where DICOM allows one (VM 1): read as {values[0]:g}, the value ITK's "
                   "DICOM reader (GDCM) takes (different values are refused)")
            notes.append(_FileWarning(f"repeated {_RESCALE_NAMES[tag]}", path,
                                      f"DICOM file '{path}' states {named}, {why}.", f"state {named}, {why}."))
    return notes


def _rescale_error(path: str, fault: tuple[int, str, str], where: str = "", others: str = "") -> InputError:
    """The error for a file whose RescaleSlope/RescaleIntercept :func:`_rescale_fault` found unusable (``where`` in the
    file it states them, ``others``: how many more files of its series do)."""
    tag, named, why = fault
    return InputError(f"DICOM file '{path}' states {named}{where}{why}, so its voxel values (stored value x "
                      "RescaleSlope + RescaleIntercept) are unknown (ITK's DICOM reader (GDCM) had read it without a "
                      f"word, taking another value in its place){others}.",
                      f"Set {_RESCALE_NAMES[tag]} to the value the scanner used, in a copy of the file (e.g. with "
                      "pydicom, or DCMTK's dcmodify), and read the copy; or export the series again from the "
                      "scanner or PACS.")


def _check_frame_rescales(path: str, tags: Mapping[int, Any], notes: list[_FileWarning]) -> None:
    """Refuse a multi-frame file one of whose functional groups' PixelValueTransformationSequence (0028,9145) states
    an unusable RescaleSlope/RescaleIntercept (:func:`_rescale_fault`; its top-level pair is checked as any file's,
    from ITK's metadata): ITK's reader had applied a slope of 0, or 'abc', as 0 (every voxel the intercept). One value
    repeated (``2\\2``) is read as that value, as at the top level, with the same warning kept in ``notes`` (once a
    tag for the file, where it is first so stated); it had been refused there alone."""
    frames = [f for f in tags.get(_PER_FRAME_GROUPS) or [] if isinstance(f, dict)]
    for where, item in [("its shared functional groups", _first_item(tags, _SHARED_GROUPS))] + [
            (f"frame {k + 1}'s functional groups", frame) for k, frame in enumerate(frames)]:
        rescale = _first_item(item, _PIXEL_VALUE_TRANSFORMATION)
        stated = rescale.get(_RESCALE_SLOPE), rescale.get(_RESCALE_INTERCEPT)
        at = f" (in {where}' PixelValueTransformationSequence (0028,9145))"
        fault = _rescale_fault(*stated)
        if fault is not None:
            raise _rescale_error(path, fault, at)
        warned = {note.kind for note in notes if note.path == path}
        notes += [note for note in _rescale_repeat_notes(path, *stated, at) if note.kind not in warned]


def _frame_rescales(tags: Mapping[int, Any]) -> list[tuple[float, float]] | None:
    """Each frame's (RescaleSlope, RescaleIntercept) of a multi-frame file, where DICOM puts them: in the frame's own
    PixelValueTransformationSequence (0028,9145), else in the shared functional groups', else at the top level (1 and
    0 where none says); one pair for a file without per-frame groups, None where a value is no number."""
    shared = _first_item(_first_item(tags, _SHARED_GROUPS), _PIXEL_VALUE_TRANSFORMATION)
    frames = [f for f in tags.get(_PER_FRAME_GROUPS) or [] if isinstance(f, dict)]
    pairs = []
    for frame in frames or [{}]:
        own = _first_item(frame, _PIXEL_VALUE_TRANSFORMATION)
        source = next((item for item in (own, shared, tags) if 0x00281053 in item or 0x00281052 in item), None)
        pair = _stated_pair(source) if source is not None else (1.0, 0.0)
        if pair is None:  # a value that is no number
            return None
        pairs.append(pair)
    return pairs


class _Rescale(NamedTuple):
    """How :func:`_read_file` gives a multi-frame DICOM file the values it states (:func:`_rescale_to_apply`)."""
    pairs: list[tuple[float, float]]  #: each frame's (RescaleSlope, RescaleIntercept), as the file states them
    itk_stored: bool  #: whether ITK's reading holds the stored values (it applied none), else they are read again


def _stated_pair(item: Mapping[int, Any]) -> tuple[float, float] | None:
    """The (RescaleSlope, RescaleIntercept) ``item`` states (1 and 0 for the one it leaves out); None where it
    states neither, or a value that is no number."""
    if 0x00281053 not in item and 0x00281052 not in item:
        return None
    pair = []
    for tag, default in ((0x00281053, 1.0), (0x00281052, 0.0)):
        text = item.get(tag)
        values = _dicom_numbers(text) if isinstance(text, str) and text.strip() else [default]
        if len(set(values)) != 1 or not math.isfinite(values[0]):  # one value, or it repeated (1\1)
            return None
        pair.append(values[0])
    return pair[0], pair[1]


def _same_pair(one: tuple[float, float], other: tuple[float, float]) -> bool:
    """Whether two (slope, intercept) pairs are one (ITK's float64 arithmetic leaves a fractional slope a trace
    off)."""
    return all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) for a, b in zip(one, other))


def _rescale_to_apply(image: sitk.Image, path: str, tags: Mapping[int, Any], notes: list[_FileWarning]
                      ) -> _Rescale | None:
    """What a multi-frame DICOM image read by ITK needs for its values to be those its file states (each frame's
    stored values times its RescaleSlope plus its RescaleIntercept, see :func:`_frame_rescales`); None where ITK's
    reading has them (it stands, type and values).

    ITK's reader (GDCM) applies one pair to every frame, and which one depends on the SOP class: the first frame's
    PixelValueTransformationSequence (0028,9145) (or the shared groups') for the enhanced CT, MR and PET classes
    (legacy converted too), X-ray 3D and breast tomosynthesis, else the top-level pair only. So a PET whose frames
    had slopes 0.5, 1, 2 and 4 was read with its last frame's values 8 times too small, and an Enhanced XA, a
    multi-frame secondary capture, NM or ultrasound file whose one pair is in its functional groups was read with
    none applied (1024 off for an intercept of -1024), without a word. Frames whose pairs differ are read again
    (:func:`_stored_values`); where they share one, what ITK applied is found by reading a probe of the file
    (:func:`_itk_applied_rescale`: no rule by SOP class kept here, which a GDCM version could change) and compared.
    A probe that cannot be read (a temporary folder that cannot be written) leaves ITK's reading, with a warning
    kept in ``notes``."""
    _check_frame_rescales(path, tags, notes)
    pairs = _frame_rescales(tags)
    if pairs is None or image.GetNumberOfComponentsPerPixel() != 1:
        return None
    count = image.GetSize()[2] if image.GetDimension() == 3 else 1
    if len(set(pairs)) > 1:
        if count != len(pairs):
            raise InputError(f"DICOM file '{path}' has {count} frames but {len(pairs)} per-frame functional groups "
                             "whose RescaleSlope (0028,1053) and RescaleIntercept (0028,1052) differ, so which "
                             "frame's values are scaled by which is unknown.",
                             "Split the file into single-frame files (e.g. with dcm2niix, or Slicer's DICOM module), "
                             "then load them as a series.")
        return _Rescale(pairs, itk_stored=False)  # no one pair is right for every frame: read the stored values
    stated = [pair for pair in (pairs[0], _stated_pair(tags)) if pair is not None]
    if all(_same_pair(pair, (1.0, 0.0)) for pair in stated):
        return None  # nothing for ITK to apply, nor to leave out
    try:
        applied = _itk_applied_rescale(image, path, tags)
    except OSError as exc:  # a full or unwritable temporary folder
        notes.append(_FileWarning(
            "rescale unchecked", path,
            f"DICOM file '{path}': whether ITK's reader applied its RescaleSlope/Intercept could not be checked (a "
            f"probe could not be written to the temporary folder '{tempfile.gettempdir()}': "
            f"{exc.strerror or exc}), so its values are as ITK's reader (GDCM) gives them. Point TMPDIR at a "
            "writable folder.",
            "could not be checked for whether ITK's reader applied their RescaleSlope/Intercept (the temporary "
            f"folder '{tempfile.gettempdir()}' could not be written), so their values are as ITK's reader (GDCM) "
            "gives them. Point TMPDIR at a writable folder."))
        return None
    if applied is None or _same_pair(applied, pairs[0]):
        return None
    return _Rescale([pairs[0]] * count, itk_stored=_same_pair(applied, (1.0, 0.0)))


def _itk_applied_rescale(image: sitk.Image, path: str, tags: Mapping[int, Any]) -> tuple[float, float] | None:
    """The (RescaleSlope, RescaleIntercept) ITK's reader (GDCM) applied to multi-frame DICOM file ``path`` (read as
    ``image``, its metadata not yet erased; ``tags`` its header, see :func:`dicom_header.read_geometry_tags`): found
    by having ITK read a probe, a file of one frame of 2 pixels, stored values 0 and k, that states the file's SOP
    class, modality, pixel format and rescale tags where the file states them (top level, shared functional groups,
    first frame's), in a private temporary folder removed on every path (no patient, study or date tag in it); None
    for a pixel format it does not make (bits allocated other than 8, 16, 32). Raises OSError where the temporary
    folder cannot take it. The files of a series whose probes would be alike are probed once (:data:`_PROBED`)."""
    from .dicom_header import MEDIA_STORAGE_SOP_CLASS

    text_of = functools.partial(_meta_text, image)

    def number_of(tag: str) -> int | None:
        return int(text_of(tag)) if text_of(tag).isdigit() else None

    allocated, stored_bits, signed = number_of("0028|0100"), number_of("0028|0101") or 0, number_of("0028|0103")
    if allocated not in (8, 16, 32) or signed not in (0, 1):
        return None
    top = min(100, 2 ** (min(stored_bits or allocated, allocated) - 1) - 1)  # fits the stored bits, signed or not
    if top < 1:
        return None

    def rescale_of(stated: Mapping[int, Any]) -> tuple[Any, Any]:
        return stated.get(0x00281053), stated.get(0x00281052)

    # everything the probe states: files alike (a series of one-frame files) are probed once
    first_frame = next((f for f in tags.get(_PER_FRAME_GROUPS) or [] if isinstance(f, dict)), {})
    key = (text_of("0008|0016"), tags.get(MEDIA_STORAGE_SOP_CLASS), text_of("0008|0060"), text_of("0028|0004"),
           allocated, stored_bits, signed, rescale_of(tags), _SHARED_GROUPS in tags or _PER_FRAME_GROUPS in tags,
           rescale_of(_first_item(_first_item(tags, _SHARED_GROUPS), _PIXEL_VALUE_TRANSFORMATION)),
           rescale_of(_first_item(first_frame, _PIXEL_VALUE_TRANSFORMATION)))
    probed = _PROBED.get()
    if probed is not None and key in probed:
        return probed[key]
    applied = _probe_rescale(tags, text_of, allocated, stored_bits, signed, top)
    if probed is not None:
        probed[key] = applied
    return applied


#: While a series is read (:func:`_read_multiframe_series`), what :func:`_itk_applied_rescale` found, by everything
#: its probe states (ITK's reading of a probe depends on nothing else): a probe had been written and read for every
#: file of a series, which made 300 one-frame enhanced files 2-3 s slower to read (1.7-2.2 s had become 3.5-5.6 s)
_PROBED: contextvars.ContextVar[dict[tuple, tuple[float, float] | None] | None] = contextvars.ContextVar(
    "_PROBED", default=None)


def _probe_rescale(tags: Mapping[int, Any], text_of: Callable[[str], str], allocated: int, stored_bits: int,
                   signed: int, top: int) -> tuple[float, float] | None:
    """The pair ITK's reader applies to a probe of a file (see :func:`_itk_applied_rescale`, whose ``tags``,
    metadata (``text_of``) and pixel format are given) of stored values 0 and ``top``; None where ITK cannot read
    it. Raises OSError where the temporary folder cannot take it."""
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from .dicom_header import MEDIA_STORAGE_SOP_CLASS, quiet_pydicom

    def with_rescale(item: Dataset, stated: Mapping[int, Any]) -> Dataset:
        for tag, keyword in ((0x00281053, "RescaleSlope"), (0x00281052, "RescaleIntercept")):
            if isinstance(stated.get(tag), str):  # an empty one too: GDCM reads it otherwise than one left out (an
                # enhanced CT's groups' empty slope beside -1024 gave -394240..-26624 for stored 24..723)
                setattr(item, keyword, stated[tag].strip() or None)
        return item

    with quiet_pydicom():
        # the SOP class where the file states it: in its data set, its file meta, or both (GDCM goes by the data
        # set's, else the meta's: a probe stating the data set's alone had been read as a secondary capture where
        # only the meta said Enhanced CT, and the pair ITK had applied was applied again)
        own_class = text_of("0008|0016")
        media_class = tags.get(MEDIA_STORAGE_SOP_CLASS)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = (media_class if isinstance(media_class, str) and media_class else own_class
                                        or "1.2.840.10008.5.1.4.1.1.7")
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        probe = FileDataset("probe.dcm", Dataset(), file_meta=meta, preamble=b"\0" * 128)
        probe.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        if own_class:
            probe.SOPClassUID = own_class
        if text_of("0008|0060"):
            probe.Modality = text_of("0008|0060")
        probe.Rows, probe.Columns, probe.NumberOfFrames = 1, 2, 1
        probe.SamplesPerPixel, probe.PhotometricInterpretation = 1, text_of("0028|0004") or "MONOCHROME2"
        probe.BitsAllocated, probe.BitsStored = allocated, stored_bits or allocated
        probe.HighBit, probe.PixelRepresentation = probe.BitsStored - 1, signed
        with_rescale(probe, tags)
        if _SHARED_GROUPS in tags or _PER_FRAME_GROUPS in tags:  # the geometry macros GDCM needs, and the rescale
            measures, orientation, position, shared, frame = Dataset(), Dataset(), Dataset(), Dataset(), Dataset()
            measures.PixelSpacing, measures.SliceThickness = [1, 1], 1
            orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            position.ImagePositionPatient = [0, 0, 0]
            shared.PixelMeasuresSequence = DicomSequence([measures])
            shared.PlaneOrientationSequence = DicomSequence([orientation])
            frame.PlanePositionSequence = DicomSequence([position])
            frames = [f for f in tags.get(_PER_FRAME_GROUPS) or [] if isinstance(f, dict)]
            for item, stated in ((shared, _first_item(tags, _SHARED_GROUPS)), (frame, frames[0] if frames else {})):
                rescale = _first_item(stated, _PIXEL_VALUE_TRANSFORMATION)
                if rescale:
                    item.PixelValueTransformationSequence = DicomSequence([with_rescale(Dataset(), rescale)])
            probe.SharedFunctionalGroupsSequence = DicomSequence([shared])
            probe.PerFrameFunctionalGroupsSequence = DicomSequence([frame])
        probe.PixelData = np.array([0, top], dtype=f"<{'i' if signed else 'u'}{allocated // 8}").tobytes()
        try:
            values = _read_dicom_copy(probe, "probe.dcm")
        except (RuntimeError, ValueError):  # ITK cannot read a probe of this file (or pydicom write it, where it is
            return None  # set to raise on an odd value): its reading stands
    first, last = (float(v) for v in sitk.GetArrayViewFromImage(values).ravel()[:2])
    return (last - first) / top, first


def _scaled_frames(held: list[sitk.Image], pairs: Sequence[tuple[float, float]], origin: Sequence[float],
                   spacing: Sequence[float], direction: Sequence[float]) -> sitk.Image:
    """The stored values of a multi-frame DICOM file (``held``: one image, ITK's reading of them, let go here once
    read), each frame scaled by its own pair of ``pairs``, on the grid given (ITK's, as placed from the file's tags):
    as float32 where the pairs differ or one is fractional (as a classic series with per-slice or fractional slopes
    is read), else as 32-bit integers (as ITK reads an enhanced CT's), or float64 where those do not hold them."""
    stored = held.pop()
    view = sitk.GetArrayViewFromImage(stored)
    frames = view if view.ndim == 3 else view[None]  # a 2D image: one frame
    whole = len(set(pairs)) == 1 and all(float(v).is_integer() for pair in pairs for v in pair)
    dtype: Any = np.float32
    if whole and frames.size:
        slope, intercept = pairs[0]
        ends = [float(frames.min()) * slope + intercept, float(frames.max()) * slope + intercept]
        dtype = np.int32 if all(-2 ** 31 <= v < 2 ** 31 for v in ends) else np.float64
    values = np.empty(frames.shape, dtype=dtype)
    for k, (slope, intercept) in enumerate(pairs):  # a frame at a time, in 64 bits (one frame's extra memory)
        if dtype is np.int32:
            values[k] = frames[k].astype(np.int64) * int(slope) + int(intercept)
        else:
            values[k] = frames[k] * slope + intercept
    del view, frames, stored
    out = sitk.GetImageFromArray(values.reshape(values.shape[-2:]) if len(origin) == 2 else values)
    del values
    out.SetOrigin(origin)
    out.SetSpacing(spacing)
    out.SetDirection(direction)
    return out


def _rescaled_frames(path: str, pairs: Sequence[tuple[float, float]], origin: Sequence[float],
                     spacing: Sequence[float], direction: Sequence[float]) -> sitk.Image:
    """The frames of multi-frame DICOM file ``path``, each scaled by its own pair of ``pairs`` (see
    :func:`_scaled_frames`), from its stored values read again: from ITK's reading of a copy of the file without its
    rescale tags (GDCM has no option to leave them out; the copy keeps the pixel data as they are, compressed or
    not), see :func:`_stored_values`. The caller drops its first reading of the file before (its float64 image,
    where GDCM applied a fractional slope, had been held beside the stored values and their float32 scaling)."""
    return _scaled_frames([_stored_values(path)], pairs, origin, spacing, direction)


#: What the copy :func:`_stored_values` has ITK read keeps of the file at its top level: the image pixel module
#: (group 0028, less the rescale), the SOP class and modality, the geometry tags and the pixel data; and in its
#: functional groups (:data:`_STORED_COPY_GROUPS`) the geometry macros, without which ITK (GDCM) fails on an
#: enhanced file. No patient, study, date or institution tag: the copy lies in the shared temporary folder
_STORED_COPY_TOP = (0x00080016, 0x00080060, 0x00180050, 0x00180088, 0x00200032, 0x00200037, 0x00540022,
                    0x7FE00008, 0x7FE00009, 0x7FE00010)
_STORED_COPY_GROUPS = ("PixelMeasuresSequence", "PlanePositionSequence", "PlaneOrientationSequence")
_RESCALE_TAGS = (0x00281052, 0x00281053, 0x00281054)


def _stored_copy(path: str) -> Any:
    """The pydicom data set :func:`_stored_values` writes for ``path``: its pixel data and what decodes and places
    them (:data:`_STORED_COPY_TOP`), without the rescale tags."""
    import pydicom
    from pydicom.dataset import Dataset, FileDataset
    from pydicom.sequence import Sequence as DicomSequence

    from .dicom_header import quiet_pydicom

    with quiet_pydicom():
        data_set = pydicom.dcmread(path, force=True)
        copy = FileDataset("stored.dcm", Dataset(), file_meta=data_set.file_meta, preamble=b"\0" * 128)
        for element in data_set:
            tag = int(element.tag)
            if (tag >> 16 == 0x0028 and tag not in _RESCALE_TAGS) or tag in _STORED_COPY_TOP:
                copy.add(element)
        for keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
            if keyword in data_set:
                items = []
                for item in data_set.get(keyword) or []:
                    kept = Dataset()
                    for name in _STORED_COPY_GROUPS:
                        if name in item:
                            setattr(kept, name, item.get(name))
                    items.append(kept)
                setattr(copy, keyword, DicomSequence(items))
    return copy


def _stored_values(path: str) -> sitk.Image:
    """A DICOM file's stored values, unscaled (see :func:`_rescaled_frames`), read by ITK from a copy of the file
    without its rescale tags, nor any tag but those that decode its pixels (:func:`_stored_copy`), see
    :func:`_read_dicom_copy`."""
    try:
        with itk_guard(f"reading the stored values of '{path}'", "Check the file is complete."):
            return _read_dicom_copy(_stored_copy(path), "stored.dcm")
    except OSError as exc:  # a full or unwritable temporary folder
        raise InputError(f"Cannot read DICOM file '{path}': its frames' RescaleSlope/Intercept are not those ITK's "
                         "reader applies, and the copy of its pixel data without them that ITK's reader reads could "
                         f"not be written to the temporary folder '{tempfile.gettempdir()}' ({exc.strerror or exc}).",
                         "Free space there, or point TMPDIR at a writable folder with room for a copy of the "
                         "file.") from exc


def _read_dicom_copy(data_set: Any, name: str) -> sitk.Image:
    """ITK's reading of pydicom ``data_set`` (a copy of a file's pixel data and the tags that decode them, or a
    probe: no patient, study or date tag), written as ``name`` in a private temporary folder ('mmfusion-rescale-*',
    :func:`_private_temp_folder`) removed on every path. Raises OSError where the temporary folder cannot take it,
    RuntimeError where ITK fails."""
    from .dicom_header import quiet_pydicom

    with _private_temp_folder("mmfusion-rescale-") as folder:
        copy = os.path.join(folder, name)
        with quiet_pydicom():
            data_set.save_as(copy)
        del data_set
        reader = sitk.ImageFileReader()
        reader.SetFileName(copy)
        return reader.Execute()


@contextlib.contextmanager
def _private_temp_folder(prefix: str, unmade: Callable[[OSError], Exception] | None = None) -> Iterator[str]:
    """A private temporary folder (``tempfile.mkdtemp``: mode 0700, named ``prefix*``) for the block, removed on
    every path: the one helper of :func:`_readable_name` (links to a file under another name) and
    :func:`_read_dicom_copy` (copies of DICOM pixel data). A Ctrl-C while it is made or removed is raised once it is
    gone (the work inside, in ITK's C++, is not interrupted either way): from TemporaryDirectory's cleanup it had
    left the folder behind. An OSError from making it is raised as ``unmade(error)`` where given (a full or
    unwritable temporary folder, in the caller's words), as it is otherwise; the block's own errors pass as they
    are."""
    from .progress import signals_stop

    with signals_stop(lambda: None):
        try:
            folder = tempfile.mkdtemp(prefix=prefix)
        except OSError as exc:
            if unmade is None:
                raise
            raise unmade(exc) from exc
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)


#: The top-level tags of a series' files that its checks read (geometry, rescale, frame count, SOPInstanceUID): no
#: other
_SERIES_ROW_TAGS = {"position": "0020|0032", "orientation": "0020|0037", "spacing": "0028|0030",
                    "imager spacing": "0018|1164", "scanned spacing": "0018|2010", "slope": "0028|1053",
                    "intercept": "0028|1052", "frames": "0028|0008", "instance": "0008|0018",
                    # what sizes the pixel data (see _check_pixel_data_whole)
                    "rows": "0028|0010", "columns": "0028|0011", "samples": "0028|0002", "bits": "0028|0100",
                    "photometric": "0028|0004"}


def _series_rows(files: Sequence[str]) -> list[dict[str, str]]:
    """The :data:`_SERIES_ROW_TAGS` of each file ITK can read the header of (as text, "" where absent), its
    ``path``, ``size`` ("columns x rows", e.g. "10x12") and ``components`` (samples per pixel); files it cannot
    read are left out (their read fails later, naming them)."""
    rows = []
    for path in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        reader.LoadPrivateTagsOff()
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            continue
        rows.append({"path": path, "size": "x".join(map(str, reader.GetSize()[:2])),
                     "components": str(reader.GetNumberOfComponents()),
                     **{k: reader.GetMetaData(t).strip() if reader.HasMetaDataKey(t) else ""
                        for k, t in _SERIES_ROW_TAGS.items()}})
    return rows


def _check_series_geometry(pick: dict[str, Any], rows: Sequence[dict[str, str]]
                           ) -> tuple[bool, np.ndarray | None, list[tuple[str, str, list[float]]]]:
    """Refuse a series whose geometry would be made up; returns whether its values need floats,
    the step from slice to slice (LPS, mm) in the files' order, the order ITK stacks them in, and each
    row's pixel size as :func:`_usable_pixel_size` finds it (tag, name, row and column spacing).

    ITK reads a series without ImagePositionPatient (0020,0032) or PixelSpacing (0028,0030) as if
    it had 1 mm spacing at the origin, a series with a missing slice as evenly spaced, with
    every later slice misplaced, and one whose slices differ in pixel size at the first slice's,
    printing at most a warning; the slices must share one grid (:func:`_check_one_grid`). A slice without PixelSpacing takes its
    pixel size as a file alone does (ImagerPixelSpacing, else NominalScannedPixelSpacing: the caller
    warns). Only geometry and rescale tags are read (``rows``, from :func:`_series_rows`).
    """
    label = pick.get("description") or pick["uid"]
    if not rows:
        return False, None, []

    fix = ("Export the series again with its geometry tags (from the scanner or PACS), or convert it with a "
           "tool that knows its geometry, then load the converted file.")
    keys = {tag: key for key, tag in _SERIES_ROW_TAGS.items()}
    sizes = [_usable_pixel_size(lambda tag, row=row: row[keys[tag]]) for row in rows]
    if any(size is None for size in sizes):
        raise InputError(f"DICOM series '{label}' has no usable PixelSpacing (0028,0030) on every slice, nor "
                         "ImagerPixelSpacing (0018,1164) or NominalScannedPixelSpacing (0018,2010), so its pixel "
                         "size is unknown (ITK would assume 1 mm).", fix)
    if len(rows) > 1:
        positions = [_dicom_numbers(r["position"]) for r in rows]
        if any(len(p) != 3 for p in positions):
            raise InputError(f"DICOM series '{label}' has no usable ImagePositionPatient (0020,0032) on every "
                             "slice, so where its slices lie is unknown (ITK would stack them 1 mm apart at "
                             "the origin).", fix)
        orientations = [_dicom_numbers(r["orientation"]) for r in rows]
        if any(len(o) != 6 for o in orientations):
            raise InputError(f"DICOM series '{label}' has no usable ImageOrientationPatient (0020,0037) on every "
                             "slice, so which way its rows and columns run is unknown (ITK would take the "
                             "slices as axial).", fix)
        cosines = orientations[0]
        turned = [row["path"] for row, o in zip(rows, orientations) if not np.allclose(o, cosines, atol=1e-4)]
        if turned:
            raise InputError(f"DICOM series '{label}' mixes slice orientations: {len(turned)} of the {len(rows)} "
                             f"slices (the first: '{turned[0]}') have another ImageOrientationPatient (0020,0037) "
                             f"than the series' first file ('{rows[0]['path']}') (e.g. localizer images saved in "
                             "the series), so no one grid holds its slices.",
                             "Move the slices of the other orientation into another folder (or export each "
                             "orientation as its own series), then load the folder of one orientation.")
        # one grid: ITK's series reader stacks the slices at the first one's pixel size without a word, and
        # fails on other rows x columns ("Size mismatch!", or an IO region error, "Check that the series is complete")
        _check_one_grid(f"DICOM series '{label}'", [
            _Grid(row["path"], int(row["components"]), tuple(map(int, row["size"].split("x"))),
                  (size[2][1], size[2][0]), None) for row, size in zip(rows, sizes)], "its slices")
        normal = np.cross(cosines[:3], cosines[3:6])
        error = _no_depth(f"DICOM series '{label}'", "slices", np.array(positions, dtype=float), normal,
                          "ITK's series reader stacked such slices along the normal, 1 mm apart or as far apart as "
                          "they are in their plane, without a word.",
                          f"give the path of one slice's file (e.g. '{rows[0]['path']}').")
        if error is not None:
            raise error
        order = np.argsort(np.array(positions) @ normal, kind="stable")
        depth = (np.array(positions) @ normal)[order]
        _check_even_depths(f"DICOM series '{label}'", "slice", depth, lambda i: f"'{rows[order[i]]['path']}'")
    slice_step = None
    if len(rows) > 1 and len(rows) == len(pick["files"]):
        # evenly spaced along the normal; each slice must also lie on the line from the first to the last
        # (a gantry tilt shifts every slice by the same amount: a sheared grid; other shifts fit no grid)
        points = np.array(positions, dtype=float)
        slice_step, worst, off = _even_step(points)
        if worst is not None:
            raise InputError(f"DICOM series '{label}' has slices whose ImagePositionPatient (0020,0032) are not on "
                             "one straight line: slice "
                             f"{worst + 1} of {len(points)} lies {off:.4g} mm off the "
                             "line from the first slice to the last, so no regular grid holds the series.",
                             "Load the series as the scanner exported it, or resample it onto a regular grid first "
                             "(e.g. in Slicer, with the DICOM module's acquisition-geometry regularization).")
    faults = [(row["path"], fault) for row in rows for fault in [_rescale_fault(row["slope"], row["intercept"])]
              if fault is not None]
    if faults:
        raise _rescale_error(*faults[0], others=f"; so do {len(faults) - 1} more of the series' {len(rows)} files"
                             if len(faults) > 1 else "")
    slopes = {r["slope"] or "1" for r in rows}
    intercepts = {r["intercept"] or "0" for r in rows}
    values = [v for t in slopes | intercepts for v in _dicom_numbers(t)]
    return len(slopes) > 1 or len(intercepts) > 1 or any(v != int(v) for v in values), slice_step, sizes


def _needs_own_geometry(row: Mapping[str, str]) -> bool:
    """Whether a file of a series of several must be placed by :func:`_read_multiframe_series`: one with
    NumberOfFrames (0028,0008) above 1, or with it but not the top-level PixelSpacing, ImagePositionPatient and
    ImageOrientationPatient a classic slice has (an enhanced file of one frame keeps them in its functional
    groups). A series of single-frame files that say NumberOfFrames 1 is read as any classic series."""
    if not row["frames"]:
        return False
    try:
        count = int(row["frames"])
    except ValueError:
        return True
    return count != 1 or not (_dicom_pixel_size(row["spacing"]) and len(_dicom_numbers(row["position"])) == 3
                              and len(_dicom_numbers(row["orientation"])) == 6)


def _check_part_placed(label: str, path: str, row: Mapping[str, str]) -> dict[int, Any] | None:
    """Refuse a file of a series of several whose tags do not say where it lies: its frames could not be put
    among those of the other files (ITK would stack them at the origin, or along the axial normal). Returns the
    header of a multi-frame file (as :func:`dicom_header.read_geometry_tags` gives it, for :func:`_read_file` to
    place the file by without parsing it again), None for a single-frame one (its row holds its tags)."""
    from .dicom_header import read_geometry_tags

    fix = ("Give the file's own path to read it alone, or export the series again with its geometry (from the "
           "scanner or PACS).")
    tags = None
    if not row["frames"]:
        has_position = len(_dicom_numbers(row["position"])) == 3
        has_orientation = len(_dicom_numbers(row["orientation"])) == 6
        where = ""
    else:
        tags = read_geometry_tags(path)
        if tags is None:
            raise InputError(f"DICOM file '{path}' of {label} is multi-frame, but its header could not be read to "
                             "place its frames among the series' other files.", fix)
        shared = _first_item(tags, _SHARED_GROUPS)
        frames = [f for f in tags.get(_PER_FRAME_GROUPS) or [] if isinstance(f, dict)]
        # placed by its functional groups (shared: one position for all its frames, e.g. a file of one frame;
        # else every frame's), else by its first frame's position, as _set_multiframe_geometry places it alone
        per_frame = [_dicom_numbers(_first_item(f, _PLANE_POSITION).get(0x00200032) or "") for f in frames]
        has_position = (len(_dicom_numbers(_first_item(shared, _PLANE_POSITION).get(0x00200032) or "")) == 3
                        or bool(per_frame) and all(len(p) == 3 for p in per_frame)
                        or bool(_first_frame_position(tags)))
        has_orientation = any(len(_dicom_numbers(text or "")) == 6 for text in (
            tags.get(0x00200037), _first_item(tags, _DETECTOR_INFORMATION).get(0x00200037),
            _first_item(shared, _PLANE_ORIENTATION).get(0x00200037),
            _first_item(frames[0], _PLANE_ORIENTATION).get(0x00200037) if frames else None))
        where = (" (at its top level or in its DetectorInformationSequence (0054,0022), or in its shared or every "
                 "frame's functional groups)")
    if not has_position:
        raise InputError(f"DICOM file '{path}' of {label} has no usable ImagePositionPatient (0020,0032){where}, so "
                         "where it lies among the series' other files is unknown (ITK would put it at the origin).",
                         fix)
    if not has_orientation:
        raise InputError(f"DICOM file '{path}' of {label} has no usable ImageOrientationPatient (0020,0037){where}, "
                         "so which way its rows and columns run is unknown (ITK would take it as axial).", fix)
    return tags


class _Grid(NamedTuple):
    """What one file of a series must share with the others to be stacked on one grid with them."""

    path: str
    components: int  #: samples per pixel
    size: tuple[int, ...]  #: columns, rows
    spacing: tuple[float, ...]  #: column spacing, row spacing (mm), as ITK's spacing holds them
    in_plane: np.ndarray | None  #: the row and column directions (3 x 2); None where checked before


def _check_one_grid(label: str, grids: Sequence[_Grid], held: str) -> None:
    """Refuse a series (``label``) whose files do not all share the first one's grid, naming the first file that
    differs and the first file (never a patient tag): no one grid holds ``held`` (its slices, or the frames of
    its files). One check and one wording for a classic series and for a series of multi-frame files."""
    first = grids[0]
    for grid in grids[1:]:
        for what, theirs, ours, same in (
                ("samples per pixel", grid.components, first.components, None),
                ("columns x rows", "x".join(map(str, grid.size)), "x".join(map(str, first.size)), None),
                ("a pixel size (columns x rows, mm) of", "x".join(f"{v:g}" for v in grid.spacing),
                 "x".join(f"{v:g}" for v in first.spacing),
                 np.allclose(grid.spacing, first.spacing, rtol=1e-4, atol=0)),
                ("another ImageOrientationPatient (0020,0037)", "", "",
                 None if grid.in_plane is None or first.in_plane is None else
                 np.allclose(grid.in_plane, first.in_plane, atol=1e-4))):
            if same is False or (same is None and theirs != ours):
                raise InputError(f"DICOM file '{grid.path}' of {label} has {what}"
                                 + (f" {theirs}, the series' first file ('{first.path}') {ours}" if theirs != "" else
                                    f" than the series' first file ('{first.path}')")
                                 + f", so no one grid holds {held}.",
                                 "Move the files of the other grid into another folder (or export each as its own "
                                 "series), then load the folder of one grid; or give one file's path to read that "
                                 "file alone.")


def _read_multiframe_series(pick: dict[str, Any], rows: Sequence[dict[str, str]]) -> sitk.Image:
    """A series of several files, at least one of them multi-frame (an enhanced MR split into files, a
    multi-frame file among single-frame slices): each file is read and placed as it is alone (see
    :func:`_set_multiframe_geometry`), then the frames of all files are stacked by their positions along the
    slice normal, on one grid: same rows x columns, pixel size and orientation in every file, frames evenly
    spaced along one line (sheared where the line is not the normal, as for a gantry-tilted series), no two at
    one position; otherwise refused, naming the file.

    ITK's series reader (SimpleITK 2.5.7) read a series of multi-frame files with top-level geometry as a 4D
    image of one volume per file at 1 x 1 x 1 mm, without a word, and failed on a mix of multi-frame and
    single-frame files ("Size mismatch!"); with the geometry only in functional groups, the series was refused
    for having no PixelSpacing.
    """
    label = f"DICOM series '{pick['description'] or pick['uid']}'"
    by_path = {row["path"]: row for row in rows}
    parts: list[tuple[str, sitk.Image]] = []
    notes: list[_FileWarning] = []  # each file's warnings, given once per kind for the series (not 30 alike)
    probed = _PROBED.set({})  # files alike are probed for their rescale once (see _itk_applied_rescale)
    try:
        for path in pick["files"]:
            tags = None  # a multi-frame file's header, parsed once (it took ~13% of the read, parsed twice)
            if path in by_path:  # else ITK cannot read its header: reading it fails below, naming it
                tags = _check_part_placed(label, path, by_path[path])
            try:
                image = _read_file(path, notes, geometry_tags=tags)
            except InputError as exc:  # its pixel depth named (_read_file), now with the series' other such files
                if _unreadable_bits(_dicom_bits_allocated(path)) is None:  # (had named this file alone)
                    raise
                raise _series_bits_error(pick["files"]) from exc
            if image.GetDimension() != 3:
                raise InputError(f"DICOM file '{path}' of {label} is a {image.GetDimension()}D image (size "
                                 f"{image.GetSize()}), which cannot be stacked with the series' other files.",
                                 "Give the file's own path to read it alone.")
            parts.append((path, image))
    finally:
        _PROBED.reset(probed)
        _warn_once_per_kind(label, len(pick["files"]), notes)

    first_path, first = parts[0]
    in_plane = np.array(first.GetDirection(), dtype=float).reshape(3, 3)[:, :2]
    _check_one_grid(label, [_Grid(path, image.GetNumberOfComponentsPerPixel(), image.GetSize()[:2],
                                  image.GetSpacing()[:2], np.array(image.GetDirection()).reshape(3, 3)[:, :2])
                            for path, image in parts], "the frames of its files")

    # every frame: (file, frame index, centre of its first voxel); then in order along the slice normal
    frames = [(path, k, np.array(image.TransformIndexToPhysicalPoint((0, 0, k)), dtype=float))
              for path, image in parts for k in range(image.GetSize()[2])]
    counts = {path: image.GetSize()[2] for path, image in parts}
    normal = np.cross(in_plane[:, 0], in_plane[:, 1])
    order = sorted(range(len(frames)), key=lambda i: float(frames[i][2] @ normal))  # stable: file order at ties
    points = np.array([frames[i][2] for i in order])
    depth = points @ normal

    def name(i: int) -> str:
        path, k, _ = frames[order[i]]
        return f"'{path}'" + (f" (frame {k + 1})" if counts[path] > 1 else "")

    error = _no_depth(label, "frames in its files", points, normal, "",
                      "give one file's path to read that file alone (a file of one frame is one slice).")
    if error is not None:
        raise error
    _check_even_depths(label, "frame", depth, name)
    step, at, off = _even_step(points)
    if at is not None:
        raise InputError(f"{label} has frames whose ImagePositionPatient (0020,0032) are not on one straight line: "
                         f"{name(at)} lies {off:.4g} mm off the line from the first frame to the last, so "
                         "no regular grid holds the frames of its files.",
                         "Load the series as the scanner exported it, or resample it onto a regular grid first "
                         "(e.g. in Slicer, with the DICOM module's acquisition-geometry regularization).")

    # one array of the frames in order, filled file by file, each file let go once its frames are in: the volume
    # is held twice at most (the array, then the image made from it); a concatenation, reordered, then copied into
    # the image had held it three times (3.0 x a 1 GB volume over the memory before the read, now 2.0)
    components, pixel_size = first.GetNumberOfComponentsPerPixel(), first.GetSpacing()[:2]
    views = [sitk.GetArrayViewFromImage(image) for _, image in parts]
    values = np.empty((len(frames), *views[0].shape[1:]), np.result_type(*views))
    del views, first, image  # (image: the last file read) only parts holds the files now
    slot = np.empty(len(order), dtype=int)
    slot[order] = np.arange(len(order))  # where each frame, in file order, goes
    start = 0
    while parts:
        part = parts.pop(0)[1]
        view = sitk.GetArrayViewFromImage(part)  # a view of part's buffer: part must outlive it
        values[slot[start:start + len(view)]] = view
        start += len(view)
        del view, part
    image = sitk.GetImageFromArray(values, isVector=components > 1)
    del values
    direction = np.column_stack([in_plane, normal])
    image.SetOrigin([float(v) for v in points[0]])
    image.SetSpacing([*pixel_size, float(np.linalg.norm(step))])
    image.SetDirection([float(v) for v in direction.ravel()])
    return _with_slice_step(image, step)  # frames shifted within their plane: a sheared grid, as for a series


def _describe_series(found: Sequence[dict[str, Any]]) -> str:
    return "\n".join(
        f"  - UID {s['uid']}: '{s['description'] or '(no description)'}' "
        f"{s['modality'] or ''} ({len(s['files'])} files)" for s in found)


def read_image(path: str | os.PathLike, *, series: str | None = None, keep_color: bool = False,
               float32: bool = False, segment_layers: bool = False, keep_alpha: bool = False,
               slice_as_2d: bool = True) -> sitk.Image:
    """Read an image file, or a DICOM series from a folder.

    Args:
        path: image file, folder of DICOM files, or a DICOMDIR (or its folder: the series in the
            sub-folders it indexes).
        series: DICOM series UID (or unique description substring) when the folder holds several; refused
            for a file.
        keep_color: keep RGB(A) pixels; by default colour images are converted to luminance.
        float32: cast the result to 32-bit float.
        segment_layers: keep the layers of a 3D Slicer ``.seg.nrrd`` as its components (as
            :func:`segmentations.read_segmentation_file` reads them). Without it such a file of several layers is
            refused, colour kept or not: its 3 or 4 layers are no RGB(A) picture, nor 2 a vector field.
        keep_alpha: the caller keeps an RGBA picture's alpha (``mmfusion resample``, ``info``). Without it a
            picture whose alpha is not one value (a transparent background: a mask drawn in the alpha) is read
            with a warning naming the file and its share of transparent pixels (:func:`_warn_alpha_unused`):
            registration, fusion and deep-fusion training see its colour (its grey) only, the colour under
            the transparent pixels included; it had been dropped without a word. An opaque one (alpha one
            value) loses nothing and reads silently.
        slice_as_2d: a DICOM file of one slice (given, or the one file of a series) lying in an axial plane is read
            as the 2D image it is (:func:`_dicom_slice_as_2d`), which keeps no depth. False: as the one-slice volume
            ITK reads, its slice where ImagePositionPatient puts it (S 37.5 mm, as Slicer shows the file), for
            callers that take one-slice volumes as the 2D images of their slices themselves and put results back
            on the volume (:func:`one_slice_inputs_as_2d`: ``register``, ``run``, the web app).

    Returns:
        The image with its geometry (origin, spacing, direction) exactly as stored; a DICOM PET's or NM image's
        Units (:func:`dicom_units`), or a NIfTI's from its BIDS JSON sidecar (:func:`bids_sidecar_path`: its
        "Units" key alone is read; a malformed sidecar or unknown units: a warning, no units).

    Raises:
        InputError: the file does not exist, cannot be read, or the folder is ambiguous.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"File not found: '{path}'.", "Check the path and its spelling.")
    if os.path.basename(path).upper() == "DICOMDIR" and os.path.isfile(path):
        path = os.path.dirname(path) or "."  # an index of the images below it, not an image
    if os.path.isdir(path):
        image = _read_dicom_folder(path, series, slice_as_2d)
    else:
        if series:  # it had been ignored without a word
            raise InputError(f"A DICOM series ({series}) was asked of '{path}', a file: a series is picked among "
                             "the series of a DICOM folder.",
                             "Give no series for a file, or give the DICOM folder that holds the series.")
        if os.path.getsize(path) == 0:
            raise InputError(f"File '{path}' is empty (0 bytes).", "Give a complete image file.")
        # a DICOM file is known by its content, not its name (PACS exports name files by UID, "1.2.840....1"):
        # _read_file reads one slice as 2D whatever its name; as_slice leaves other formats alone
        nifti = _read_suffix(path) in (".nii", ".nii.gz", *_PAIR_PARTS)
        if not nifti:  # before ITK, which names some of these files otherwise ("Unable to determine ImageIO reader")
            _check_complete(path)
        layout = tensors.file_layout(path)  # a DTI volume, which SimpleITK reads only through a copy
        image = _read_file(path, as_slice=slice_as_2d) if layout is None else _read_tensor_file(path, layout)
        if nifti:
            image = _check_nifti_voxels(path, image)
    if not keep_alpha and not segment_layers:
        _warn_alpha_unused(image, path)
    if not keep_color and image.GetNumberOfComponentsPerPixel() == 4 and os.path.isfile(path) \
            and (_png_grey_alpha_depth(path) is not None or _png_grey_transparency(path) is not None):
        image = sitk.VectorIndexSelectionCast(image, 0)  # its grey, in its own type (the luminance is float32)
    if not segment_layers and image.GetNumberOfComponentsPerPixel() > 1 and image.HasMetaDataKey("Segment0_ID"):
        # to_luminance had called 2 layers a vector field's channels, and with keep_color 3 or 4 layers were taken
        # for RGB(A): resample interpolated them as colour, fuse blended them into a picture, rc 0
        _refuse_segment_layers(path, image)
    if not keep_color and image.GetNumberOfComponentsPerPixel() > 1:
        image = to_luminance(image, f"image '{path}'", path=path)
    if os.path.isfile(path) and not dicom_units(image):
        image = _with_units(image, _sidecar_units(path, stacklevel=2))  # a NIfTI's BIDS sidecar's
    if float32 and image.GetNumberOfComponentsPerPixel() == 1:
        from .validation import check_pixel_type  # (validation imports io)

        check_pixel_type(image, f"image '{path}'")  # before the cast, which ITK refuses for these with a RuntimeError
        if image.GetDimension() not in (2, 3):  # ITK's filters (Cast included) exist for 2D and 3D only
            raise InputError(f"'{path}' is a {image.GetDimension()}D image (size {image.GetSize()}); registration "
                             "and fusion work on 2D and 3D images.",
                             "Extract one 3D volume first (e.g. one time frame or one echo of the series).")
        if image.GetPixelID() != sitk.sitkFloat32:
            # the same values: a PET's Units kept (ITK's Cast keeps no metadata; `register`'s had been dropped)
            image = _with_units_of(sitk.Cast(image, sitk.sitkFloat32), image)
    return image


def _warn_alpha_unused(image: sitk.Image, path: str) -> None:
    """Warn, naming ``path``, that the alpha of an RGBA picture (4 unsigned integer components, a grey+alpha PNG's
    too) is not used, where it is not one value: a transparent background (a mask drawn in the alpha) is
    registered and fused as the colour stored under it, as no mask would be. Not for a 3D Slicer segmentation's
    4 layers (refused or kept as layers by :func:`read_image`), a float vector image, nor one whose file says its
    components are a vector (NRRD kind 4-vector: echoes, gradients; refused as no colour picture by
    ``validation.check_components``, which this warning had contradicted, its fourth component called an alpha)."""
    from .validation import file_says_vector  # (validation imports io)

    if image.GetNumberOfComponentsPerPixel() != 4 or image.HasMetaDataKey("Segment0_ID") \
            or image.GetPixelID() not in (sitk.sitkVectorUInt8, sitk.sitkVectorUInt16) or file_says_vector(image):
        return
    alpha = sitk.GetArrayViewFromImage(image)[..., 3]
    if not alpha.size or np.all(alpha == alpha.flat[0]):
        return  # opaque (or evenly translucent): nothing is lost
    full = int(alpha.max())
    transparent = float(np.mean(alpha < full)) * 100
    warnings.warn(f"'{path}' is an RGBA picture whose alpha is not one value ({transparent:.1f}% of its pixels "
                  "transparent or partly so): the alpha is not used; registration, fusion and training see its "
                  "colour only (a mask its non-zero colour), the colour stored under the transparent pixels "
                  "included. A region drawn in the alpha is not read: save it as a 0/1 grey image of its own (a "
                  "mask, e.g. for register --fixed-mask/--moving-mask), or save the picture without alpha "
                  "(flattened on the background you mean).", stacklevel=3)


def segment_layers(image: sitk.Image, path: str = "") -> dict[str, list[str]]:
    """The segments a 3D Slicer ``.seg.nrrd`` lists in its header, by layer (component): {layer: [names]}, layers
    in order, each as text (a JSON key); {} for any other image. The header is read by
    :func:`segmentations.header_segments` (a missing layer is the segment's index, as Slicer reads files written
    before layers existed; a layer that is no whole number is refused, naming ``path``)."""
    from .segmentations import header_segments

    layers: dict[int, list[str]] = {}
    for segment in header_segments(image, path):
        layers.setdefault(segment.layer, []).append(segment.name)
    return {str(layer): layers[layer] for layer in sorted(layers)}


def describe_segment_layers(layers: dict[str, list[str]]) -> str:
    """``layer 0: 'liver', 'kidney'; layer 1: 'both'``: a ``.seg.nrrd``'s segments by layer (:func:`segment_layers`'s
    dict), as the refusal of a file of several layers and ``mmfusion info`` name them."""
    return "; ".join(f"layer {k}: " + ", ".join("'" + n + "'" for n in v) for k, v in layers.items())


def _refuse_segment_layers(path: str, image: sitk.Image) -> None:
    """A 3D Slicer ``.seg.nrrd`` of several layers (overlapping segments, one component a layer) read as one image:
    refused for what it is, where it had been called a vector or displacement field (2 layers) or taken for a colour
    picture (3 or 4: RGB or RGBA where colour is kept)."""
    count = image.GetNumberOfComponentsPerPixel()
    raise InputError(f"'{path}' is a 3D Slicer segmentation whose segments are saved in {count} layers "
                     f"({describe_segment_layers(segment_layers(image, path))}), as Slicer saves segments that "
                     "overlap: it holds no single value a voxel to read as one image, and its layers are no colour "
                     "channels.",
                     "Give it to `mmfusion evaluate-registration` as --fixed-labels/--moving-labels (its segments are "
                     "read layer by layer there), or export the segments you need to a label map in 3D Slicer "
                     "(Segmentations module: Export to label map) and give that.")


def _read_tensor_file(path: str, layout: tensors.TensorLayout) -> sitk.Image:
    """A file of tensors (a NRRD of kinds 3D-symmetric-matrix or 3D-matrix, a NIfTI of intent SYMMATRIX): SimpleITK
    refuses the first ("Unknown PixelType: float(11)") and reads the second as 9 plain channels. Read through a copy
    whose header says "vector", in the package's convention (ITK's order, LPS: see :mod:`.tensors`)."""
    with tensors.readable_copy(path, layout) as copy:
        try:
            image = _read_file(copy)
        except InputError as exc:  # name the file given, not its copy
            raise InputError(exc.problem.replace(copy, path), exc.fix) from exc
    return tensors.from_file(image, layout)


def _read_file(path: str, notes: list[_FileWarning] | None = None, stacklevel: int = 4,
               as_slice: bool = False, geometry_tags: Mapping[int, Any] | None = None) -> sitk.Image:
    """One image file. A DICOM file's warnings (its pixel size from ImagerPixelSpacing, ...) are kept in ``notes``
    where given (a file of a series), else given with ``stacklevel`` counted from here (4: read_image's caller).
    With ``as_slice``, a DICOM file of one slice is read as the 2D image it is (see :func:`_dicom_slice_as_2d`),
    before its warnings are given, so that they name its 2D origin. ``geometry_tags``: a DICOM file's header as
    :func:`dicom_header.read_geometry_tags` gives it, where the caller has read it already (else read as needed)."""
    _check_data_file(path)
    grey_alpha = _png_grey_alpha_depth(path)
    if grey_alpha is not None:  # ITK reads no grey+alpha PNG ("Unknown PixelType: unsigned_char(1)")
        return _read_grey_alpha_png(path, grey_alpha)
    transparency = _png_grey_transparency(path)
    if transparency is not None:  # nor a grey one with a transparency colour (libpng makes it grey+alpha)
        return _read_grey_transparency_png(path, *transparency)
    compressed = _check_metaimage_size(path) if _suffix(path) in (".mha", ".mhd") else None
    _check_nifti_vector_scaling(path)
    what = f"DICOM file '{path}'"
    syntax = _check_decodable(what, path)
    reader = sitk.ImageFileReader()
    try:
        with _readable_name(path) as (readable, image_io), _naming_transfer_syntax(what, syntax), itk_guard(
                f"reading '{path}'", "Use a NIfTI, NRRD, MHA/MHD, PNG/JPEG or DICOM file, and check it is not truncated."):
            reader.SetFileName(readable)
            if image_io:
                reader.SetImageIO(image_io)
            try:
                image = reader.Execute()
            except RuntimeError as exc:  # ITK names the link, gone by the time the message is read
                raise RuntimeError(str(exc).replace(readable, path)) from exc
            dicom = syntax is not None or (not image_io and
                                           sitk.ImageFileReader.GetImageIOFromFileName(readable) == "GDCMImageIO")
    except InputError as exc:
        if _is_nifti2(path):
            raise _nifti2_error(path) from exc
        unreadable = _nrrd_unreadable_line(path)
        if unreadable is not None:
            raise unreadable from exc
        cut_nrrd = _nrrd_cut_short(path)
        if cut_nrrd is not None:
            raise cut_nrrd from exc
        cut = _dicom_cut_short(path)
        if cut is not None:
            raise _dicom_cut_error(path, cut) from exc
        if syntax is not None:
            bits = _unreadable_bits(_dicom_bits_allocated(path))
            if bits is not None:
                raise _bits_error(path, bits) from exc
            _explain_multiframe_failure(path)
        elif "Zero-valued spacing" in exc.problem:  # the header's: the generic fix had named formats and truncation
            raise InputError(f"'{path}' gives a voxel spacing of 0 in its header, which ITK cannot read (a voxel has "
                             "no size along that axis).",
                             "Correct the spacing in the header (MetaImage ElementSpacing, NRRD spacings or space "
                             "directions, NIfTI pixdim) to the voxel size in mm, e.g. with a text editor for .mhd or "
                             ".nhdr.") from exc
        raise
    if dicom and syntax is not None:  # a Part 10 file: one whose Pixel Data are short was read without a word
        cut = _dicom_cut_short(path)
        if cut is not None and cut.short:  # (its other kinds, ITK having read it: a header pydicom reads short)
            raise _dicom_cut_error(path, cut)
    if _read_suffix(path) in (".mnc", ".mnc2") and _itk_minc_unconverted():
        vectors = _minc_vectors(image, path, writing=False)
        image = _swap_ras_lps(image, bool(vectors))  # MINC's RAS to ITK's LPS (see _RAS_LPS)
        if vectors is not None:  # what they were taken for, for write_image to write them back the same way
            image.SetMetaData(_MINC_COMPONENTS_KEY, "vector" if vectors else "channels")
    if compressed is not None:
        _check_compressed_voxels(image, compressed)
    if dicom:
        stated = [image.GetMetaData(tag) if image.HasMetaDataKey(tag) else None for tag in ("0028|1053", "0028|1052")]
        fault = _rescale_fault(*stated)
        if fault is not None:
            raise _rescale_error(path, fault)
        units = _meta_text(image, UNITS_KEY)  # kept, as read (a slice made 2D below has no metadata)
        kept: list[_FileWarning] = [] if notes is None else notes
        kept += _rescale_repeat_notes(path, *stated)
        multiframe = image.HasMetaDataKey("0028|0008")
        try:
            if multiframe and geometry_tags is None:
                from .dicom_header import read_geometry_tags

                geometry_tags = read_geometry_tags(path)
            _set_dicom_file_spacing(image, path, kept, geometry_tags)
            rescale = _rescale_to_apply(image, path, geometry_tags, kept) if multiframe and geometry_tags else None
            if rescale is not None:
                placed = image.GetOrigin(), image.GetSpacing(), image.GetDirection()
                if rescale.itk_stored:  # ITK applied no rescale: its values are the stored ones
                    held, image = [image], None
                    image = _scaled_frames(held, rescale.pairs, *placed)
                else:
                    del image  # not held while the stored values are read and scaled (its float64: 4 bytes more)
                    image = _rescaled_frames(path, rescale.pairs, *placed)
            if as_slice and image.GetDimension() == 3 and image.GetSize()[2] == 1:
                image = _dicom_slice_as_2d(image)
                kept[:] = [_unplaced_note(path, image.GetDimension(), multiframe) if note.kind == _UNPLACED else note
                           for note in kept]
        finally:  # given here, not where they arise: they point at the caller, as a series' warnings do
            if notes is None:
                _warn_once_per_kind(what, 1, kept, stacklevel)
        # ITK keeps every tag of the file (patient name, ID, birth date...) in the image, and the NRRD and
        # MetaImage writers put them in the header of anything written from it: no tag travels on, but a PET's Units
        for key in image.GetMetaDataKeys():
            image.EraseMetaData(key)
        _with_units(image, units)
    return image


#: The readers ITK picks by the extension in lower case only (or, NIfTI's, JPEG's, MINC's and BioRad's, in lower or
#: upper case: 'x.NII' is read, 'x.Nii' is not): ``x.MHA``, ``x.GIPL``, ``x.Nii.gz`` had been refused ("Unable to
#: determine ImageIO reader") though Windows tools and old scanners' exports name files so. Another spelling is read
#: by the reader named here (MetaImage, Stimulate: their header's data file is found beside it), or, for the others
#: (whose reader checks the name itself), through a link named in lower case in a private temporary folder.
_CASE_SENSITIVE_READERS = {
    ".mha": "MetaImageIO", ".mhd": "MetaImageIO", ".spr": "StimulateImageIO",
    ".gipl": None, ".gipl.gz": None, ".nii": None, ".nii.gz": None, ".hdr": None, ".img": None, ".hdr.gz": None,
    ".img.gz": None, ".jp2": None, ".j2k": None, ".mnc": None, ".mnc2": None, ".pic": None, ".jpg": None,
    ".jpeg": None,
}
#: an Analyze/NIfTI pair's two files: a header's link needs its data file's beside it, and the other way round
_PAIR_PARTS = (".hdr", ".hdr.gz", ".img", ".img.gz")


def _read_suffix(path: str) -> str:
    """The extension a reader takes ``path`` by, in lower case: ``.nii.gz``, ``.gipl.gz``, ``.hdr.gz``, ``.img.gz``
    whole, else the last one (see :func:`_suffix`)."""
    name = path.lower()
    for double in (".gipl.gz", ".hdr.gz", ".img.gz"):
        if name.endswith(double):
            return double
    return _suffix(path)


def _link_or_copy(source: str, alias: str) -> None:
    try:
        os.symlink(os.path.abspath(source), alias)
    except OSError:  # no symbolic links (Windows without the privilege): a hard link, else a copy
        try:
            os.link(source, alias)
        except OSError:
            shutil.copyfile(source, alias)


@contextlib.contextmanager
def _readable_name(path: str) -> Iterator[tuple[str, str | None]]:
    """``path`` as ITK's reader opens it, and the ImageIO to name (None: ITK picks it by the name): ``path`` itself,
    unless its extension is spelt otherwise than in lower case for a reader that takes it so only (see
    ``_CASE_SENSITIVE_READERS``). The user's file is never renamed or changed; a link (or copy) made for it lies in
    a private temporary folder, removed when the block ends."""
    suffix = _read_suffix(path)
    beside = _single_file_beside(path) if suffix == ".nii.gz" else None
    if suffix not in _CASE_SENSITIVE_READERS or (path.endswith(suffix) and beside is None):
        yield path, None
        return
    if _CASE_SENSITIVE_READERS[suffix]:
        yield path, _CASE_SENSITIVE_READERS[suffix]
        return
    parts = [(path, suffix)]
    files = _nifti_files(path) if suffix in _PAIR_PARTS else None
    if files is not None:  # the pair's header and data file, in whichever case spelt, those _check_nifti_voxels checks
        parts += [(other, _read_suffix(other)) for other in dict.fromkeys(files[:2]) if other != path]

    def no_link(exc: OSError) -> InputError:  # a full or unwritable temporary folder
        if beside is not None:
            return InputError(f"Cannot read '{path}': ITK's NIfTI reader takes its voxels from '{beside}' beside it, "
                              "and a link to it alone could not be made in the temporary folder "
                              f"'{tempfile.gettempdir()}' ({exc.strerror or exc}).",
                              f"Point TMPDIR at a writable folder, or move '{beside}' away (or remove it if it is "
                              "an old copy).")
        return InputError(f"Cannot read '{path}': a link to it, named '{suffix}' in lower case as ITK's reader takes "
                          f"it, could not be made in the temporary folder '{tempfile.gettempdir()}' "
                          f"({exc.strerror or exc}).",
                          f"Point TMPDIR at a writable folder, or rename the file to end in '{suffix}'.")

    # Only the folder's and the links' OSErrors are "no link": one from the block had been reported as one
    with _private_temp_folder("mmfusion-read-", no_link) as private:
        try:
            for source, ext in parts:
                _link_or_copy(source, os.path.join(private, "image" + ext))
        except OSError as exc:
            raise no_link(exc) from exc
        yield os.path.join(private, "image" + suffix), None


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_grey_alpha_depth(path: str) -> int | None:
    """The bit depth (8 or 16) of a grey+alpha PNG (colour type 4, PIL's mode "LA"), known by its content; None for
    any other file."""
    try:
        with open(path, "rb") as f:
            head = f.read(33)
    except OSError:
        return None
    if len(head) < 33 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR" or head[25] != 4:
        return None
    return head[24] if head[24] in (8, 16) else None


def _read_grey_alpha_png(path: str, depth: int) -> sitk.Image:
    """A grey+alpha PNG, which ITK's PNG reader refuses ("Unknown PixelType"), as ITK reads an RGBA one: its pixels
    (grey, grey, grey, alpha) in its own 8 or 16 bits, its spacing from its sCAL chunk, and its grey channel alone
    where its alpha is one value (an opaque picture: nothing is lost). libpng still decodes it: the header is
    relabelled as a layout of the same bytes per pixel that ITK reads (8-bit grey+alpha as 16-bit grey, 16-bit
    grey+alpha as 8-bit RGBA; the row filters and the interlacing work on whole pixels, so the data is unchanged),
    and the bytes are split back here. Chunks that would not fit the new header are left out: all but IHDR, sCAL,
    IDAT and IEND (ITK reads no other here but sBIT, whose shift to the significant bits is applied here)."""
    import struct
    import zlib

    with open(path, "rb") as f:
        data = f.read()
    parts, pos, significant = [_PNG_SIGNATURE], 8, None
    fix = "Check the PNG file is not truncated, or save it again (e.g. as a grey PNG without alpha)."
    while pos + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        stored_crc = data[pos + 8 + length:pos + 12 + length]
        critical = kind in (b"IHDR", b"IDAT", b"IEND")
        if len(stored_crc) < 4 or struct.unpack(">I", stored_crc)[0] != zlib.crc32(kind + body) & 0xFFFFFFFF:
            # the copy's chunks get new CRCs, so the check libpng makes of the file's is made here: a damaged
            # chunk had been read as good (a critical one is refused, an ancillary one left out, as libpng does)
            if critical or len(stored_crc) < 4:
                what = "ends inside its" if len(stored_crc) < 4 else "has a damaged (CRC mismatch)"
                raise InputError(f"The PNG file '{path}' {what} {kind.decode('latin-1')} chunk (at byte {pos}).",
                                 fix)
            pos += 12 + length
            continue
        if kind == b"IHDR":
            body = body[:8] + (bytes([16, 0]) if depth == 8 else bytes([8, 6])) + body[10:]
        elif kind == b"sBIT" and length == 2:
            significant = (body[0], body[1])
        if kind in (b"IHDR", b"sCAL", b"IDAT", b"IEND"):
            parts.append(struct.pack(">I", len(body)) + kind + body
                         + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
        if kind == b"IEND":
            break
        pos += 12 + length
    stored = _read_png_copy(path, parts, "grey+alpha", fix)
    # in the narrowest types (a picture of 36 Mpixels had peaked at 1.3 GB, 3 times what its RGBA twin takes)
    arr = sitk.GetArrayViewFromImage(stored)
    kind = np.uint8 if depth == 8 else np.uint16
    if depth == 8:  # one 16-bit grey value: the grey byte high, the alpha byte low
        grey, alpha = (arr >> 8).astype(kind), (arr & 0xFF).astype(kind)
    else:  # RGBA bytes: the grey's high and low bytes, then the alpha's
        grey = arr[..., 0].astype(kind) << 8 | arr[..., 1]
        alpha = arr[..., 2].astype(kind) << 8 | arr[..., 3]
    return _grey_and_alpha(stored, grey, alpha, depth, significant)


def _read_png_copy(path: str, parts: list[bytes], what: str, fix: str) -> sitk.Image:
    """Read the PNG made of ``parts`` (a rewritten copy of ``path``; emptied once written) through a file in the
    temporary folder, naming ``path`` in any error."""
    try:
        with tempfile.TemporaryDirectory(prefix="mmfusion-png-") as folder:
            relabelled = os.path.join(folder, what.replace("+", "-") + ".png")
            with open(relabelled, "wb") as f:
                f.write(b"".join(parts))
            parts.clear()  # the caller's copy of the file too: not held while ITK decodes it
            try:
                with itk_guard(f"reading '{path}'", fix):
                    return sitk.ReadImage(relabelled)
            except InputError as exc:  # ITK names the relabelled copy, gone by the time the message is read
                raise InputError(str(exc.problem).replace(relabelled, path), exc.fix) from exc
    except OSError as exc:  # a full or unwritable temporary folder: a traceback had come out of tempfile
        raise InputError(f"Cannot read the {what} PNG '{path}': its rewritten copy could not be written to "
                         f"the temporary folder '{tempfile.gettempdir()}' ({exc.strerror or exc}).",
                         "Free space there, or point TMPDIR at a writable folder with room for a copy of the "
                         "file.") from exc


def _grey_and_alpha(stored: sitk.Image, grey: np.ndarray, alpha: np.ndarray, depth: int,
                    significant: tuple[int, int] | None) -> sitk.Image:
    """A grey PNG's grey and alpha as ITK reads an RGBA one's: (grey, grey, grey, alpha), or the grey alone where
    the alpha is one value (an opaque picture: nothing is lost); sBIT's shift to the significant bits applied."""
    if significant is not None:  # as ITK does for the other PNGs (png_set_shift)
        grey = grey >> (depth - significant[0]) if 0 < significant[0] < depth else grey
        alpha = alpha >> (depth - significant[1]) if 0 < significant[1] < depth else alpha
    kind = grey.dtype
    if alpha.size and np.all(alpha == alpha.flat[0]):
        out = sitk.GetImageFromArray(grey)
    else:
        both = np.empty(grey.shape + (4,), kind)
        both[..., 0], both[..., 1], both[..., 2], both[..., 3] = grey, grey, grey, alpha
        del grey, alpha
        out = sitk.GetImageFromArray(both, isVector=True)
    out.CopyInformation(stored)
    return out


def _png_grey_transparency(path: str) -> tuple[int, int] | None:
    """(bit depth, transparent grey value) of a grey PNG (colour type 0) with a transparency colour (a ``tRNS``
    chunk of good CRC before its image data: PIL writes one for mode "L" saved with ``transparency=N``); None for
    any other file. libpng reads it as grey+alpha (``png_set_tRNS_to_alpha``), which ITK refuses as it does a
    grey+alpha PNG ("Unknown PixelType: unsigned_char(1)")."""
    import struct
    import zlib

    try:
        with open(path, "rb") as f:
            head = f.read(33)
            if len(head) < 33 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR" or head[25] != 0:
                return None
            depth = head[24]
            while True:
                top = f.read(8)
                if len(top) < 8:
                    return None
                length, kind = struct.unpack(">I4s", top)
                if kind in (b"IDAT", b"IEND"):
                    return None
                if kind != b"tRNS":
                    f.seek(length + 4, os.SEEK_CUR)
                    continue
                body, crc = f.read(length), f.read(4)
                if length != 2 or len(crc) < 4 or struct.unpack(">I", crc)[0] != zlib.crc32(kind + body) & 0xFFFFFFFF:
                    return None  # libpng leaves a damaged one out: ITK reads the grey as it is
                return depth, struct.unpack(">H", body)[0]
    except OSError:
        return None


def _read_grey_transparency_png(path: str, depth: int, transparent: int) -> sitk.Image:
    """A grey PNG with a transparency colour as a grey+alpha one is read (see :func:`_read_grey_alpha_png`): ITK
    reads a copy without its ``tRNS`` chunk (and its ``sBIT``, applied here after the comparison, as libpng
    compares the stored values), and the alpha is 0 where the grey is the transparent value, full elsewhere."""
    import struct

    with open(path, "rb") as f:
        data = f.read()
    parts, pos, significant = [_PNG_SIGNATURE], 8, None
    while pos + 12 <= len(data):  # the other chunks as they are, their CRCs for libpng to check
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"sBIT" and length == 1:
            significant = (data[pos + 8], depth) if depth >= 8 else None  # (1 to 4 bits: ITK widens them)
        elif kind != b"tRNS":
            parts.append(data[pos:pos + 12 + length])
        pos += 12 + length
        if kind == b"IEND":
            break
    else:
        parts.append(data[pos:])  # a truncated file: libpng says so, naming it
    del data
    stored = _read_png_copy(path, parts, "grey+transparency", "Check the PNG file is not truncated, or save it "
                            "again (e.g. as a grey PNG without transparency).")
    grey = sitk.GetArrayViewFromImage(stored)
    # ITK widens a grey of 1, 2 or 4 bits to 8 bits scaled to 0..255 (png_set_expand_gray_1_2_4_to_8)
    value = transparent * (255 // (2 ** depth - 1)) if depth < 8 else transparent
    full = np.iinfo(grey.dtype).max
    alpha = np.where(grey == value, 0, full).astype(grey.dtype)
    return _grey_and_alpha(stored, np.array(grey), alpha, max(depth, 8), significant)


#: NIfTI datatype codes of real floating-point voxels: ITK's NIfTI reader turns their NaN/inf into 0
_NIFTI_FLOATS = {16: np.float32, 64: np.float64}
#: Bytes per voxel of each NIfTI datatype: nifti1_io (ITK's reader) sizes voxels by the datatype and
#: ignores a bitpix that disagrees, so the size check must too (uint8 .. rgba32)
_NIFTI_BYTES = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8,
                1536: 16, 1792: 16, 2048: 32, 2304: 4}


def _nifti_byte_order(header: bytes) -> tuple[str, int] | None:
    """(byte order, "<" or ">"; header size: 348 for NIfTI-1 and Analyze 7.5, 540 for NIfTI-2) of a NIfTI or Analyze
    header, told by its first field (sizeof_hdr) in either order; None for anything else, or a header cut short."""
    import struct

    for order in "<>":
        for size in (348, 540):
            if len(header) >= size and struct.unpack(order + "i", header[:4])[0] == size:
                return order, size
    return None


def _nifti_layout(header: bytes, pair: bool = False) -> tuple[str, int, int, int, int, float] | None:
    """(byte order, datatype, bytes per voxel, voxel count, data offset, the value a stored 0 reads as
    after the scl_slope/scl_inter scaling) from a NIfTI-1 or NIfTI-2 header; None for anything else
    (then ITK's own reading stands). With ``pair``, the header of an Analyze 7.5 or NIfTI pair (``.hdr``, whose
    layout is NIfTI-1's): its voxels start at ``vox_offset`` in the ``.img`` (0 as ITK writes it)."""
    import struct

    found = _nifti_byte_order(header)
    if found is None:
        return None
    order, size = found
    if size == 348:
        datatype, bitpix = struct.unpack(order + "hh", header[70:74])
        dims = struct.unpack(order + "8h", header[40:56])
        vox_offset = struct.unpack(order + "f", header[108:112])[0]
        vox_offset = int(vox_offset) if math.isfinite(vox_offset) else 0
        offset = max(0, vox_offset) if pair else max(352, vox_offset)
        slope, inter = struct.unpack(order + "ff", header[112:120])
    else:
        datatype, bitpix = struct.unpack(order + "hh", header[12:16])
        dims = struct.unpack(order + "8q", header[16:80])
        offset = max(544, int(struct.unpack(order + "q", header[168:176])[0]))
        slope, inter = struct.unpack(order + "dd", header[176:192])
    voxel_bytes = _NIFTI_BYTES.get(int(datatype)) or (bitpix // 8 if bitpix > 0 and bitpix % 8 == 0 else 0)
    if not 1 <= dims[0] <= 7 or not voxel_bytes:
        return None
    count = int(np.prod([max(1, int(d)) for d in dims[1:dims[0] + 1]], dtype=np.int64))
    zero = float(inter) if slope != 0 and math.isfinite(slope) and math.isfinite(inter) else 0.0
    return order, int(datatype), voxel_bytes, count, offset, zero


#: the intent codes for which ITK's NIfTI reader reads the 5th axis as the components of a vector
_NIFTI_VECTOR_INTENTS = {1006: "DISPVECT", 1007: "VECTOR"}


def _nifti1_header(path: str) -> tuple[str, bytes] | None:
    """(byte order, "<" or ">"; its 348 bytes) of the NIfTI-1 header of the image ``path`` names (a single file or a
    pair, as ITK finds it: :func:`_nifti_files`); None for any other file, or one ITK will name as unreadable."""
    import zlib

    files = _nifti_files(path)
    if files is None:
        return None
    try:
        header = _head(files[0], 348)
    except (OSError, EOFError, zlib.error):
        return None  # named by ITK's reading
    found = _nifti_byte_order(header)
    if found is None or found[1] != 348 or header[344:347] not in (b"n+1", b"ni1"):
        return None
    return found[0], header


def _check_nifti_vector_scaling(path: str) -> None:
    """Refuse a NIfTI-1 vector image (intent VECTOR or DISPVECT, several components: a displacement field) whose
    header scales its values (scl_slope not 0 or 1, or scl_inter not 0), before ITK reads it: ITK 5.4's reader
    scales only the first third (1/components) of the buffer, so a float field came out wrong in two thirds of
    its voxels without a word (slope 0.5: 1 mm in the first third, 2 mm in the rest), and an integer one
    (int16 with a slope, read into float) corrupted the heap and aborted the process."""
    import struct

    found = _nifti1_header(path)
    if found is None:
        return
    order, header = found
    dims = struct.unpack(order + "8h", header[40:56])
    intent = struct.unpack(order + "h", header[68:70])[0]
    datatype = struct.unpack(order + "h", header[70:72])[0]
    slope, inter = struct.unpack(order + "ff", header[112:120])
    if intent not in _NIFTI_VECTOR_INTENTS or not 5 <= dims[0] <= 7 or dims[5] <= 1:
        return
    if slope == 0 or not math.isfinite(slope) or (slope == 1 and inter == 0):
        return  # no scaling (NIfTI: a slope of 0 scales nothing)
    raise InputError(f"'{path}' is a NIfTI vector image (intent {_NIFTI_VECTOR_INTENTS[intent]}, {dims[5]} components "
                     f"a voxel, NIfTI datatype {datatype}) whose header scales its values (scl_slope {slope:g}, "
                     f"scl_inter {inter:g}), which ITK (SimpleITK {sitk.Version.VersionString()}) reads wrongly: it "
                     "scales only the first part of the voxels (or, for integers, crashes).",
                     "Write the vectors unscaled as float32, e.g. with nibabel (Python): `img = nib.load(PATH); "
                     "nib.save(nib.Nifti1Image(img.get_fdata(dtype='float32'), img.affine, img.header), COPY)` "
                     "(nibabel applies the scaling and writes scl_slope 1), and give the copy.")


def _is_nifti2(path: str) -> bool:
    """True for a NIfTI-2 file (its header is 540 bytes long, and says so first), gzip-compressed or not."""
    import gzip
    import struct
    import zlib

    try:
        with (gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")) as fh:
            head = fh.read(8)
    except (OSError, EOFError, zlib.error):
        return False
    return len(head) == 8 and head[4:7] in (b"n+2", b"ni2") and 540 in (struct.unpack("<i", head[:4])[0],
                                                                         struct.unpack(">i", head[:4])[0])


def _nifti2_error(path: str) -> InputError:
    """SimpleITK 2.5 (ITK 5.4) reads no NIfTI-2 file; nibabel converts it to a NIfTI-1 ITK reads."""
    base = path[:-len(_suffix(path))] if _suffix(path) in (".nii", ".nii.gz") else path
    copy = base + "_nifti1" + (_suffix(path) if _suffix(path) in (".nii", ".nii.gz") else ".nii.gz")
    code = (f"import nibabel as nib; img = nib.load({path!r}); "
            f"nib.save(nib.Nifti1Image(img.dataobj, img.affine, img.header), {copy!r})")
    return InputError(f"'{path}' is a NIfTI-2 file, which ITK (SimpleITK {sitk.Version.VersionString()}) "
                      "does not read.",
                      f"Convert it to NIfTI-1 with nibabel (Python), then give the copy: `{code}` (NIfTI-1 "
                      "holds up to 32767 voxels along an axis).")


def _is_gzip(path: str) -> bool:
    """Whether ``path`` starts as a gzip stream does (ITK's readers take either, whatever the name)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(2) == b"\x1f\x8b"
    except OSError:
        return False


def _gunzip_blocks(path: str, block: int = 1 << 24, start: int = 0) -> Iterator[bytes]:
    """The decompressed bytes of the gzip file ``path`` (of its gzip stream from byte ``start``: a NRRD file's
    voxels, after its header), in blocks of at most ``block`` bytes, as zlib's ``gzread`` (ITK's readers, teem's
    for NRRD) gives them: its members one after another, and bytes after the last member that start no
    other (zeros, padding, anything a copy tool appended) ignored, as ``gzread`` ignores them (Python's ``gzip``
    refuses other bytes than zeros there: "Not a gzipped file", for a file ITK reads whole). EOFError where a
    member ends before its end (in its data or in its 8-byte trailer); ``zlib.error`` for damaged data."""
    import zlib

    with open(path, "rb") as fh:
        fh.seek(start)
        inflate = zlib.decompressobj(31)
        data = fh.read(1 << 16)
        while True:
            out = inflate.decompress(data, block)
            if out:
                yield out
            if inflate.eof:
                rest = inflate.unused_data
                rest += fh.read(max(0, 2 - len(rest)))
                if rest[:2] != b"\x1f\x8b":
                    return
                inflate, data = zlib.decompressobj(31), rest
                continue
            data = inflate.unconsumed_tail or fh.read(1 << 16)
            if not data:
                raise EOFError(f"'{path}': the compressed stream ends before its end")


def _gzip_trailer_says(path: str, size: int) -> bool:
    """Whether a gzip file's last 4 bytes (ISIZE: its last member's uncompressed size modulo 2^32) say ``size``:
    a single-member stream is whole without being read. A file of several members, or with bytes after its stream,
    says another size: its stream is read then (:func:`_gunzip_blocks`)."""
    with open(path, "rb") as raw:
        if raw.seek(0, os.SEEK_END) < 4:
            return False
        raw.seek(-4, os.SEEK_END)
        return int.from_bytes(raw.read(4), "little") == size % 2**32


class _Gunzipped:
    """``read(n)`` over :func:`_gunzip_blocks` (what ``gzip.open`` gives, with zlib's reading of a file's end), inflating
    at most ``block`` bytes at a time (a header's size: no more of the stream is inflated than is read)."""

    def __init__(self, path: str, block: int = 1 << 24) -> None:
        self._blocks = _gunzip_blocks(path, block)
        self._buffer = b""

    def read(self, size: int, *, partial: bool = False) -> bytes:
        """The next ``size`` bytes (fewer at the stream's end). A stream cut short raises EOFError, or with
        ``partial`` gives the bytes it holds."""
        parts, held = [self._buffer], len(self._buffer)
        try:
            while held < size:
                block = next(self._blocks, b"")
                if not block:
                    break
                parts.append(block)
                held += len(block)
        except EOFError:
            if not partial:
                raise
        joined = b"".join(parts)
        self._buffer = joined[size:]
        return joined[:size]

    def __enter__(self) -> _Gunzipped:
        return self

    def __exit__(self, *exc: object) -> None:
        self._blocks.close()


def _head(path: str, size: int) -> bytes:
    """The first ``size`` bytes of ``path`` (fewer where it is shorter), decompressed where it is gzip-compressed:
    unlike ``gzip.open(...).read(size)``, a stream cut short gives the bytes it holds (a header to check against
    it) instead of an EOFError."""
    if not _is_gzip(path):
        with open(path, "rb") as fh:
            return fh.read(size)
    with _Gunzipped(path, size) as fh:
        return fh.read(size, partial=True)


#: nifti1_io's (ITK's NIfTI reader's) extensions, in the order it looks for them beside a name: a header from a data
#: file's name (``nifti_findhdrname``), a data file from the header's (``nifti_findimgname``; a ``.nii`` header whose
#: magic says single-file, ``n+1``, looks for ``.nii`` first)
_NIFTI_HEADER_ORDER = (".hdr", ".hdr.gz", ".nii", ".nii.gz")
_NIFTI_DATA_ORDER = (".img", ".img.gz", ".nii", ".nii.gz")
#: the data files taken for a pair's header (``.hdr``, ``.hdr.gz``): nifti1_io goes on to ``x.nii`` and ``x.nii.gz``
#: where neither is there, and reads the voxels of a two-file header (``vox_offset`` 0) from that file's start, its
#: own header's bytes among them (x.hdr beside x.nii alone: values such as -13107, no error): such a pair is
#: refused as missing its ``.img`` (see :func:`missing_data_file`)
_PAIR_DATA_ORDER = _NIFTI_DATA_ORDER[:2]


def _nifti_lookup(base: str, exts: Sequence[str], spelt: str, any_case: bool) -> str | None:
    """The first of ``base + ext`` that exists, as nifti1_io looks: the extensions in upper case where ``spelt`` (the
    extension of the name it starts from) is (``x.HDR`` -> ``x.IMG``), else in lower case, each file opened by that
    name (so a folder that ignores case finds ``x.IMG`` for ``x.img``, as nifti1_io does there). With ``any_case``,
    then any spelling of them, in the same order (a name read through a lower-case link: see
    :func:`_readable_name`)."""
    exts = [ext.upper() if spelt.isupper() else ext for ext in exts]
    for ext in exts:
        if os.path.isfile(base + ext):
            return base + ext
    if not any_case:
        return None
    folder = os.path.dirname(base) or "."
    stem = os.path.basename(base)
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return None
    for ext in exts:
        for name in names:
            if name.lower() == (stem + ext).lower() and os.path.isfile(os.path.join(folder, name)):
                return os.path.join(os.path.dirname(base), name)
    return None


def _folder_beside(base: str, spelt: str) -> str | None:
    """A folder named ``x.nii`` (``X.NII``) beside ``x.nii.gz``: nifti1_io opens it as the voxels' file (fopen of a
    folder succeeds on Linux) and, reading nothing from it, gives zeros under the .nii.gz's header (measured: a
    6x5x3 image of 3s read as 0s by sitk.ReadImage and read_image)."""
    name = base + (".NII" if spelt.isupper() else ".nii")
    return name if os.path.isdir(name) else None


def _nii_beside(path: str) -> str | None:
    """The ``x.nii`` file (or folder, :func:`_folder_beside`) beside the ``x.nii.gz`` ``path`` (``X.NII`` beside
    ``X.NII.GZ``) that ITK's NIfTI reader opens for its voxels (:func:`_single_file_beside`), if there is one: the
    one lookup of the reader's check and the writer's (:func:`_uncompressed_single_file_beside`)."""
    base, spelt = path[:-len(".nii.gz")], path[-len(".nii.gz"):]
    return _nifti_lookup(base, (".nii",), spelt, any_case=False) or _folder_beside(base, spelt)


def _single_file_beside(path: str) -> str | None:
    """The ``x.nii`` beside the ``x.nii.gz`` ``path`` whose voxels ITK's NIfTI reader (nifti1_io's
    ``nifti_findimgname``) reads under ``path``'s header: for a single-file header (magic ``n+1``, as every .nii.gz
    ITK writes) it looks for ``x.nii`` before ``x.nii.gz`` (in upper case from ``X.NII.GZ``). Measured: a 6x5x3
    image of 3s written as x.nii.gz beside a 6x5x4 x.nii of 1s was read back, by sitk.ReadImage and read_image,
    as 6x5x3 of 1s. None where there is none, or where ``path`` exists and is not a single-file header."""
    import zlib

    beside = _nii_beside(path)
    if beside is None:
        return None
    if os.path.isfile(path):
        try:
            if _head(path, 348)[344:348] != b"n+1\0":
                return None
        except (OSError, EOFError, zlib.error):
            return None  # a damaged header: ITK names it
    return beside


def _nifti_files(path: str) -> tuple[str, str, bool] | None:
    """(header, data file, is a pair) of the NIfTI or Analyze image ``path`` names, as nifti1_io (ITK's reader)
    finds them: a ``.nii``/``.nii.gz`` is both; from a pair's ``x.img`` (or ``.img.gz``) its header is the first of
    ``x.hdr``, ``x.hdr.gz``, ``x.nii``, ``x.nii.gz``, and from the header its data file is the first of ``x.img``,
    ``x.img.gz``, ``x.nii``, ``x.nii.gz`` (``.nii`` first for an ``x.nii`` of magic ``n+1``; for an ``x.hdr`` or
    ``x.hdr.gz`` only ``x.img`` and ``x.img.gz``, see ``_PAIR_DATA_ORDER``), whichever of the two was
    given: ``x.img.gz`` given beside an ``x.img`` is read with ``x.img``. The extensions are looked for in upper case
    from a name whose extension is (``x.HDR.GZ``: ``x.IMG``, then ``x.IMG.GZ``), else in lower case; a name ITK reads
    through a lower-case link (its extension not in lower case, see :func:`_readable_name`) takes any spelling
    where nifti1_io's finds none. None where a file is missing (named by :func:`_check_data_file` or ITK)."""
    import zlib

    suffix = _read_suffix(path)
    if suffix in (".nii", ".nii.gz"):
        return path, path, False
    if suffix not in _PAIR_PARTS:
        return None
    base, spelt = path[:-len(suffix)], path[-len(suffix):]
    linked = spelt != suffix
    if suffix in (".hdr", ".hdr.gz"):
        header = path
    else:
        header = _nifti_lookup(base, _NIFTI_HEADER_ORDER, spelt, linked)
        if header is None:
            return None
    header_suffix = _read_suffix(header)
    single = False  # a .hdr looks for .img first whatever its magic (measured: x.hdr of magic n+1 reads x.img)
    if header_suffix in (".nii", ".nii.gz"):  # an x.img beside no x.hdr: a single file reads itself
        try:
            single = _head(header, 348)[344:348] == b"n+1\0"
        except (OSError, EOFError, zlib.error):
            pass  # a damaged header: ITK names it
    order = _NIFTI_DATA_ORDER[2:] + _NIFTI_DATA_ORDER[:2] if single else _NIFTI_DATA_ORDER
    if header_suffix in (".hdr", ".hdr.gz"):
        order = _PAIR_DATA_ORDER
    data = _nifti_lookup(header[:-len(header_suffix)], order, header[-len(header_suffix):], linked)
    return None if data is None else (header, data, data != header)


def _truncated_error(path: str, what: str, held: str) -> InputError:
    """A truncated image file, named with what its header describes and what it holds."""
    return InputError(f"'{path}' is truncated: its header describes {what} but {held} (ITK would have read it "
                      "without an error, the missing voxels as 0, as other values or as fewer slices).", _TRUNCATED_FIX)


def _held(data_file: str, gz: bool, path: str) -> str:
    """What the file holds, in the words of :func:`_truncated_error`."""
    where = "the file" if data_file == path else f"its data file '{os.path.basename(data_file)}'"
    if gz:
        return f"{where} ({os.path.getsize(data_file)} bytes, gzip-compressed) ends before its compressed stream does"
    return f"{where} holds only {os.path.getsize(data_file)} bytes"


def _check_nifti_voxels(path: str, image: sitk.Image) -> sitk.Image:
    """What ITK's NIfTI reader hides: a truncated file (it pads the missing voxels with 0, no error) and
    NaN/inf voxels (it reads them as 0). Refuses the first; puts the second back, so that the checks
    that refuse NaN before registration and fusion see them and ``mmfusion info`` counts them. Covers
    ``.nii``, ``.nii.gz`` and the Analyze/NIfTI pairs (``.hdr`` with ``.img`` or ``.img.gz``), whatever case
    their names are spelt in.

    Reads the voxels once more, in blocks, only for a floating-point image holding zeros or a gzip file whose size
    trailer does not match the header; other files are checked by their size alone. A gzip file whose size trailer
    matches is not decompressed again for its zeros: the voxels ITK read are checked against the CRC-32 its stream
    ends with (:func:`_itk_read_the_stream`, 0.02 s for a 256^3 float32 file, where a second decompression took
    0.22 s); only a mismatch (a NaN/inf read as 0, a scaled file) reads the stream again.
    """
    import zlib

    files = _nifti_files(path)
    if files is None:
        return image
    header, data_file, pair = files
    gz = _is_gzip(data_file)
    try:
        layout = _nifti_layout(_head(header, 544), pair=pair)
    except (OSError, zlib.error):
        return image  # a damaged header: ITK's reading stands
    if layout is None:
        return image
    order, datatype, voxel_bytes, count, offset, zero = layout
    expected = offset + count * voxel_bytes
    floats = _NIFTI_FLOATS.get(datatype)
    with_header = "with the header" if data_file == header else "in the data file"
    what = f"{count} voxels ({expected} bytes {with_header}{', decompressed' if gz else ''})"

    def truncated() -> InputError:
        return _truncated_error(path, what, _held(data_file, gz, path))

    if not gz:
        size_ok = os.path.getsize(data_file) >= expected
        if not size_ok:
            raise truncated()
    else:
        size_ok = _gzip_trailer_says(data_file, expected)  # else the stream is read
    if floats is not None and (image.GetNumberOfComponentsPerPixel() != 1 or image.GetNumberOfPixels() != count):
        floats = None  # vector NIfTI: ITK reorders the components; only the truncation check applies
    # a NaN/inf read as 0 (scaled: as scl_inter) leaves that value: an image without it has none to put back
    if size_ok and (floats is None or not np.any(sitk.GetArrayViewFromImage(image) == zero)):
        return image
    if gz and size_ok and floats is not None and _itk_read_the_stream(image, data_file, offset, order):
        return image  # its zeros are the file's: no NaN/inf was read as 0
    dtype = np.dtype(floats or np.uint8).newbyteorder(order)
    bad_index: list[np.ndarray] = []
    bad_value: list[np.ndarray] = []
    block = (1 << 24) // voxel_bytes  # 16 MB of voxels at a time
    try:
        with (_Gunzipped(data_file) if gz else open(data_file, "rb")) as fh:
            fh.read(offset) if gz else fh.seek(offset)
            done = 0
            while done < count:
                want = min(block, count - done) * voxel_bytes
                chunk = fh.read(want)
                if len(chunk) < want:
                    raise truncated()
                if floats is not None:
                    values = np.frombuffer(chunk, dtype=dtype)
                    where = np.flatnonzero(~np.isfinite(values))
                    if where.size:
                        bad_index.append(where + done)
                        bad_value.append(values[where])
                done += want // voxel_bytes
            while gz and fh.read(1 << 20):  # to the stream's end, whose trailer zlib checks: a file cut in its
                pass  # last 8 bytes held every voxel, and ITK had read the last ones as other values
    except (EOFError, zlib.error) as exc:
        raise truncated() from exc
    if not bad_index:
        return image
    arr = sitk.GetArrayFromImage(image)
    arr.reshape(-1)[np.concatenate(bad_index)] = np.concatenate(bad_value).astype(arr.dtype)
    out = sitk.GetImageFromArray(arr, isVector=False)
    out.CopyInformation(image)
    for key in image.GetMetaDataKeys():
        out.SetMetaData(key, image.GetMetaData(key))
    return out


def _itk_read_the_stream(image: sitk.Image, data_file: str, offset: int, order: str) -> bool:
    """Whether the voxels ITK read from the single-member gzip file ``data_file`` (its size trailer matching the
    header: checked by the caller) are the bytes its stream holds after its first ``offset`` bytes, by the CRC-32
    its trailer gives for the whole stream: the header's bytes are decompressed (``offset``: a NIfTI file's
    header and extensions; 0 for a pair's .img.gz), the voxels are ITK's buffer, in the file's byte order. False
    where ITK read other values (NaN/inf as 0, a scaled file's values) or the CRC cannot be read."""
    import zlib

    arr = sitk.GetArrayViewFromImage(image)  # in the machine's byte order
    if (order == ">") != (sys.byteorder == "big") and arr.dtype.itemsize > 1:
        arr = arr.byteswap()  # back to the order the stream holds
    try:
        head = _head(data_file, offset) if offset else b""
        with open(data_file, "rb") as raw:
            raw.seek(-8, os.SEEK_END)
            trailer = raw.read(4)
    except (OSError, zlib.error):
        return False
    if len(head) != offset or len(trailer) != 4:
        return False
    crc = zlib.crc32(memoryview(np.ascontiguousarray(arr)).cast("B"), zlib.crc32(head))
    return crc == int.from_bytes(trailer, "little")


#: Bytes per value of the NRRD types (each spelling the format allows)
_NRRD_BYTES = {
    **dict.fromkeys(("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1),
    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort",
                     "unsigned short", "unsigned short int", "uint16", "uint16_t"), 2),
    **dict.fromkeys(("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"),
                    4),
    **dict.fromkeys(("longlong", "long long", "long long int", "signed long long", "signed long long int", "int64",
                     "int64_t", "ulonglong", "unsigned long long", "unsigned long long int", "uint64", "uint64_t",
                     "double"), 8),
}


def _readable_nrrd_header(path: str) -> tuple[list[str], int] | None:
    """``tensors._nrrd_header`` of ``path`` (its lines and data start), None for another file or one that cannot be
    read (ITK's reader names it): what the NRRD checks made after or before ITK start from."""
    try:
        return tensors._nrrd_header(path)
    except OSError:
        return None


def _nrrd_unreadable_line(path: str) -> InputError | None:
    """The error for a NRRD header holding a line teem (ITK's and Slicer's NRRD reader) refuses, a field without a
    space after its colon (``data file:t.raw``), naming the line; ITK says only "didn't see ": " or ":=" in line",
    and such a header had been reported truncated (its data file not found, the data looked for after it). None
    for any other file. Called only once ITK has failed."""
    found = _readable_nrrd_header(path)
    line = None if found is None else tensors.unreadable_line(found[0])
    if line is None:
        return None
    name, colon, value = line.partition(":")
    fixed = f"'{name}: {value.lstrip()}'" if colon else f"'{line.strip()}: ...' or '#{line}'"
    return InputError(f"'{path}' is a NRRD file whose header holds the line '{line}', which NRRD readers (teem, and "
                      "so ITK and Slicer) refuse: a field is written 'name: value', with a space after the colon.",
                      f"Correct the line in the header (e.g. {fixed}), or save the image again.")


def _nrrd_cut_short(path: str) -> InputError | None:
    """The error for a NRRD file (``.nrrd``, or a detached ``.nhdr`` and its data file) whose voxels end before
    those its header describes, naming the file, the bytes it holds and the bytes its header needs, as the other
    formats' truncation errors do; None for any other file or failure (ITK's error stands). ITK's NRRD reader
    fails on such a file, in teem's words: "fread got only 2023 4-sized things, not 2048 (98.7793% of expected)"
    (raw), "expected 8192 bytes but received 8092" or "data read error" (gzip). Called only once ITK has failed.
    Raw and gzip encodings, one data file (attached, or named by ``data file``); a list or pattern of data files,
    ``line skip`` and ``byte skip: -1`` are left to ITK."""
    import zlib

    found = _readable_nrrd_header(path)
    if found is None:
        return None
    lines, data_start = found
    field = lambda name: tensors._field(lines, name)  # noqa: E731 - one header, several fields
    try:
        sizes = [int(v) for v in (field("sizes") or "").split()]
        skip = int(field("byte skip") or 0)  # "byteskip" too, teem's other spelling (tensors._is_field)
        lines_skipped = int(field("line skip") or 0)
    except ValueError:
        return None
    value_bytes = _NRRD_BYTES.get((field("type") or "").lower())
    encoding = (field("encoding") or "").lower()
    named = field("data file")
    if not sizes or value_bytes is None or encoding not in ("raw", "gzip", "gz") or skip < 0 or lines_skipped:
        return None
    if named is not None and (named.upper().startswith("LIST") or len(named.split()) > 1):
        return None
    data_file = path if named is None else os.path.join(os.path.dirname(path), named)
    start = data_start if named is None else 0
    if not os.path.isfile(data_file):
        return None  # named by _check_data_file
    count = int(np.prod(sizes, dtype=np.int64))
    needed = count * value_bytes
    where = "the file" if data_file == path else f"its data file '{named}'"
    held_bytes = os.path.getsize(data_file)
    if encoding == "raw":
        expected = start + skip + needed
        if held_bytes >= expected:
            return None
        held = f"{where} holds only {held_bytes} bytes" + (f" ({max(held_bytes - start - skip, 0)} of them voxels)"
                                                            if start + skip else "")
        what = f"{count} voxels ({needed} bytes{f', from byte {start + skip}' if start + skip else ''})"
    else:  # gzip: the voxels are the stream's bytes after byte skip, its members one after another as teem reads them
        produced, whole = 0, True
        try:
            for block in _gunzip_blocks(data_file, start=start):
                produced += len(block)
        except EOFError:
            whole = False
        except (OSError, zlib.error):
            return None  # damaged, not cut short: ITK's error stands
        voxels = max(produced - skip, 0)
        if voxels >= needed and whole:
            return None
        what = f"{count} voxels ({needed} bytes, decompressed)"
        held = (f"{where} ({held_bytes} bytes, gzip-compressed) decompresses to only {voxels} bytes of them"
                if voxels < needed else
                f"{where} ({held_bytes} bytes, gzip-compressed) ends inside the 8-byte trailer (checksum and size) "
                "its compressed stream ends with")
    return InputError(f"'{path}' is truncated: its header describes {what} but {held}.", _TRUNCATED_FIX)


#: Bytes per value of GIPL's image types (its header: 256 bytes, big-endian; the binary type is left to ITK)
_GIPL_BYTES = {7: 1, 8: 1, 15: 2, 16: 2, 31: 4, 32: 4, 64: 4, 65: 8, 144: 4, 160: 8, 192: 8, 193: 16}
_GIPL_MAGIC = (0xEFFFE9B0, 0x2AE389B8)
#: Bytes per voxel of MRC's modes that ITK reads (int8, int16, float32, complex int16, complex float32, uint16, RGB)
_MRC_BYTES = {0: 1, 1: 2, 2: 4, 3: 4, 4: 8, 6: 2, 16: 3}
#: Bytes per value of the VTK legacy types (``long``, whose size differs between writers, is left to ITK)
_VTK_BYTES = {"bit": 0, "unsigned_char": 1, "char": 1, "unsigned_short": 2, "short": 2, "unsigned_int": 4, "int": 4,
              "float": 4, "double": 8, "vtktypeint64": 8, "vtktypeuint64": 8}


def _gipl_layout(head: bytes) -> tuple[int, int] | None:
    import struct

    if len(head) < 256 or struct.unpack(">I", head[252:256])[0] not in _GIPL_MAGIC:
        return None
    dims = struct.unpack(">4H", head[:8])
    size = _GIPL_BYTES.get(struct.unpack(">H", head[8:10])[0])
    if size is None:
        return None
    return 256, int(np.prod([max(1, d) for d in dims], dtype=np.int64)) * size


def _mrc_layout(head: bytes) -> tuple[int, int] | None:
    import struct

    if len(head) < 1024:
        return None
    for order in "<>":
        nx, ny, nz, mode = struct.unpack(order + "4i", head[:16])
        extended = struct.unpack(order + "i", head[92:96])[0]
        if mode in _MRC_BYTES and min(nx, ny, nz) > 0 and 0 <= extended < 1 << 31:
            return 1024 + extended, nx * ny * nz * _MRC_BYTES[mode]
    return None


def _vtk_layout(head: bytes) -> tuple[int, int] | None:
    """A binary VTK legacy file of structured points: where its voxels start (after the line that ends the
    header: LOOKUP_TABLE after SCALARS, or VECTORS/COLOR_SCALARS/TENSORS itself) and their size."""
    lines = head.split(b"\n")
    if len(lines) < 4 or not lines[0].startswith(b"# vtk DataFile") or lines[2].strip().upper() != b"BINARY":
        return None
    pos = len(lines[0]) + len(lines[1]) + len(lines[2]) + 3
    count = None
    for i, line in enumerate(lines[3:-1], start=3):
        pos += len(line) + 1
        words = line.decode("latin-1").split()
        key = words[0].upper() if words else ""
        if key == "POINT_DATA" and len(words) == 2 and words[1].isdigit():
            count = int(words[1])
        elif key in ("SCALARS", "VECTORS", "TENSORS", "COLOR_SCALARS") and count is not None and len(words) >= 3:
            if key == "COLOR_SCALARS":
                size, components = 1, int(words[2]) if words[2].isdigit() else 0
            else:
                size = _VTK_BYTES.get(words[2].lower(), 0)
                components = {"VECTORS": 3, "TENSORS": 9}.get(key, int(words[3]) if len(words) > 3
                                                                and words[3].isdigit() else 1)
            if not size or not components:
                return None
            if key == "SCALARS":  # its LOOKUP_TABLE line follows
                if not lines[i + 1].upper().startswith(b"LOOKUP_TABLE") or i + 2 >= len(lines):
                    return None
                pos += len(lines[i + 1]) + 1
            return pos, count * components * size
    return None


def _bmp_layout(head: bytes) -> tuple[int, int] | None:
    """An uncompressed BMP: where its rows start and their bytes (each row padded to 4 bytes: ITK reads the last
    row's padding too, and a file cut there had been read with other values); a header cut short needs its
    header's bytes."""
    import struct

    if len(head) < 18 or head[:2] != b"BM":
        return None
    start, dib = struct.unpack("<II", head[10:18])
    if dib in (12, 40, 52, 56, 64, 108, 124) and len(head) < 14 + dib:
        return 14 + dib, 0
    if dib == 12:
        width, height, _, bits = struct.unpack("<HHHH", head[18:26])
        compression = 0
    elif dib >= 40 and len(head) >= 34:
        width, height, _, bits, compression = struct.unpack("<iiHHI", head[18:34])
    else:
        return None
    if compression not in (0, 3) or width <= 0 or bits not in (1, 4, 8, 16, 24, 32):
        return None  # run-length encoded: left to ITK
    row = (bits * width + 31) // 32 * 4
    return start, row * abs(height)


def _pic_layout(head: bytes) -> tuple[int, int] | None:
    """A BioRad PIC file: a 76-byte header (little-endian: nx, ny, npic, ..., byte_format at 14, file_id 12345 at
    54), then the voxels (8-bit where byte_format is 1, else 16-bit), then notes."""
    import struct

    if len(head) < 76 or struct.unpack("<H", head[54:56])[0] != 12345:
        return None
    nx, ny, npic = struct.unpack("<3H", head[:6])
    byte_format = struct.unpack("<H", head[14:16])[0]
    return 76, nx * ny * max(1, npic) * (1 if byte_format == 1 else 2)


_RAW_LAYOUTS = {".gipl": _gipl_layout, ".gipl.gz": _gipl_layout, ".mrc": _mrc_layout, ".vtk": _vtk_layout,
                ".bmp": _bmp_layout, ".pic": _pic_layout}


def _check_complete(path: str) -> None:
    """Refuse an image file that ends before the voxels its header describes, for the formats whose ITK reader
    reads such a file without an error: GIPL (``.gipl``, ``.gipl.gz``), MRC, VTK legacy and BMP had given the
    missing voxels as 0 or as other values (whatever lay in memory), TIFF had given fewer slices and JPEG grey
    blocks. (NIfTI and Analyze: :func:`_check_nifti_voxels`; MetaImage: :func:`_check_metaimage_size`; NRRD,
    PNG and DICOM readers fail on a truncated file.) Reads the header, and a compressed file's size trailer: a
    compressed stream is read again only where that trailer disagrees with the header."""
    import zlib

    suffix = _read_suffix(path)
    if suffix in (".tif", ".tiff"):
        return _check_tiff_complete(path)
    if suffix in (".jpg", ".jpeg"):
        return _check_jpeg_complete(path)
    layout_of = _RAW_LAYOUTS.get(suffix)
    if layout_of is None:
        return None
    gz = _is_gzip(path)
    try:
        layout = layout_of(_head(path, 4096))
    except (OSError, zlib.error):
        return None  # ITK has read it: its reading stands
    if layout is None:
        return None
    start, data_bytes = layout
    expected = start + data_bytes
    what = f"{data_bytes} bytes of voxels ({expected} bytes with the header{', decompressed' if gz else ''})"
    if not data_bytes and len(_head(path, start)) < start:
        raise InputError(f"'{path}' is truncated: it ends inside its {start}-byte header.", _TRUNCATED_FIX)
    if not gz:
        if os.path.getsize(path) < expected:
            raise _truncated_error(path, what, _held(path, False, path))
        return None
    if _gzip_trailer_says(path, expected):
        return None
    total = 0
    try:
        for block in _gunzip_blocks(path):
            total += len(block)
    except (EOFError, zlib.error) as exc:
        raise _truncated_error(path, what, _held(path, True, path)) from exc
    if total < expected:
        raise _truncated_error(path, what, f"the file decompresses to {total} bytes")
    return None


def _check_tiff_complete(path: str) -> int | None:
    """A TIFF file's directories (one per slice) and the strips or tiles they point at must lie inside the file:
    libtiff stops at a directory past the end without an error, and ITK had read a 12-slice volume cut in half
    as 6 slices. Reads the directories only (classic TIFF; BigTIFF is left to ITK). Returns how many directories the
    file chains (None: not a classic TIFF)."""
    import struct

    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8 or head[:4] not in (b"II*\0", b"MM\0*"):
            return None
        order = "<" if head[:2] == b"II" else ">"
        where, seen, needed = struct.unpack(order + "I", head[4:8])[0], set(), 8
        while where and where not in seen and len(seen) < 1 << 20:
            seen.add(where)
            fh.seek(where)
            raw = fh.read(2)
            entries = struct.unpack(order + "H", raw)[0] if len(raw) == 2 else 0
            needed = max(needed, where + 2 + 12 * entries + 4)
            block = fh.read(12 * entries + 4)
            if len(raw) < 2 or len(block) < 12 * entries + 4:
                needed = max(needed, where + 2 + 12 * entries + 4, where + 6)
                break
            fields = {}
            for k in range(entries):
                tag, kind, count = struct.unpack(order + "HHI", block[12 * k:12 * k + 8])
                if tag in (273, 279, 324, 325) and kind in (3, 4):
                    width = 2 if kind == 3 else 4
                    if count * width <= 4:
                        data = block[12 * k + 8:12 * k + 8 + count * width]
                    else:
                        fh.seek(struct.unpack(order + "I", block[12 * k + 8:12 * k + 12])[0])
                        data = fh.read(count * width)
                        if len(data) < count * width:
                            needed = max(needed, size + 1)
                            continue
                    fields[tag] = struct.unpack(f"{order}{count}{'H' if kind == 3 else 'I'}", data)
            for offsets, counts in ((273, 279), (324, 325)):
                if offsets in fields and counts in fields and len(fields[offsets]) == len(fields[counts]):
                    needed = max([needed] + [o + c for o, c in zip(fields[offsets], fields[counts])])
            where = struct.unpack(order + "I", block[-4:])[0]
            if where:
                needed = max(needed, where + 2)
            if needed > size:
                break
    if needed > size:
        raise _truncated_error(path, f"slices (strips) up to byte {needed}", f"the file holds only {size} bytes")
    return len(seen)


def _check_jpeg_complete(path: str) -> None:
    """A JPEG file must reach its end-of-image marker: libjpeg reads one cut short with only a warning ("Premature
    end of JPEG file"), and ITK had given the missing part as grey. The markers are followed from the start
    (so that an embedded thumbnail's end is not taken for the image's) to the first scan, then its end is looked
    for."""
    import struct

    with open(path, "rb") as fh:
        data = fh.read()
    if data[:2] != b"\xff\xd8":
        return
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return  # not a marker where one belongs: left to ITK
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:
            return
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        if marker == 0xDA:  # the first scan: the image's end marker follows its data (a progressive file's too)
            if data.find(b"\xff\xd9", pos + 2 + length) >= 0:
                return
            break
        pos += 2 + length
    raise _truncated_error(path, "a JPEG image", f"the file ({len(data)} bytes) ends before its end-of-image "
                           "marker")


#: A MetaImage header's last line, naming where its voxels are
_ELEMENT_DATA_FILE = re.compile(rb"(?m)^[ \t]*ElementDataFile[ \t]*=[ \t]*([^\r\n]*?)[ \t]*(?:\r?\n|\Z)")
#: Headers whose voxels may lie in another file, and the field that names it
_DATA_FILE_FIELDS = {".mha": "ElementDataFile", ".mhd": "ElementDataFile", ".nrrd": "data file",
                     ".nhdr": "data file", ".hdr": "the .img file of the same name"}


def missing_data_file(path: str | os.PathLike) -> str | None:
    """The data file an image header names, when it is not there; None when nothing is missing.

    A MetaImage (``.mhd``, or ``.mha``) names its voxels' file in ``ElementDataFile`` (``LOCAL``: they
    follow the header); a detached NRRD header (``.nhdr``, or ``.nrrd``) in its ``data file`` field; an
    Analyze or NIfTI-pair header (``.hdr``, or ``.hdr.gz``) keeps them in the ``.img`` (or ``.img.gz``) of the same
    name, spelt as nifti1_io looks for it (``x.hdr``: ``x.img``, not ``x.IMG``; see :func:`_nifti_files`), and an
    ``x.nii`` beside it is no data file (nifti1_io would read its header's bytes as voxels). Relative names are
    relative to the header's folder. Lists and numbered patterns of data files are
    not checked (ITK's reader reports them). ITK names none of these files when one is missing: it says
    "nifti_image_load failed", or "couldn't open" advising another format.

    Returns:
        The data file's name as the header gives it (a ``.hdr``'s: ``NAME.img``; a ``.hdr.gz``'s:
        ``NAME.img.gz``), or None (not such a header, or its data file exists).
    """
    path = os.fspath(path)
    suffix = _data_file_suffix(path)
    if suffix not in _DATA_FILE_FIELDS or not os.path.isfile(path):
        return None
    folder = os.path.dirname(path)
    if suffix == ".hdr":
        import struct
        import zlib

        try:
            head = _head(path, 4)  # a .hdr.gz decompressed
        except (OSError, EOFError, zlib.error):
            return None  # ITK's reader names an unreadable file
        if len(head) < 4 or 348 not in (struct.unpack("<i", head)[0], struct.unpack(">i", head)[0]):
            return None  # not an Analyze/NIfTI header: ITK says what it is not
        if _nifti_files(path) is not None:  # the data file nifti1_io (ITK's reader) takes, as it looks for it
            return None
        spelt = path[-len(_read_suffix(path)):]
        return os.path.basename(path)[:-len(spelt)] + {".HDR": ".IMG", ".HDR.GZ": ".IMG.GZ"}.get(
            spelt, ".img.gz" if spelt.lower() == ".hdr.gz" else ".img")
    if suffix in (".mha", ".mhd"):
        try:
            with open(path, "rb") as fh:
                head = fh.read(1 << 20)
        except OSError:
            return None
        match = _ELEMENT_DATA_FILE.search(head)
        if match is None:
            return None
        named = match.group(1).decode("utf-8", "replace")
    else:
        # the field as teem reads it: a key/value pair named "data file" (data file:=x) is none
        found = _readable_nrrd_header(path)
        if found is None:
            return None
        named = tensors._field(found[0], "data file")  # or "datafile" (tensors._is_field)
        if named is None:
            return None
    if not named or named.upper() in ("LOCAL", "LIST") or named.upper().startswith("LIST ") or "%" in named:
        return None
    return None if os.path.isfile(os.path.join(folder, named)) else named


def _data_file_suffix(path: str) -> str:
    """The key of ``_DATA_FILE_FIELDS`` for ``path``: its extension in lower case, ``.hdr`` for a ``.hdr.gz`` too
    (a compressed pair's header: its data file had not been checked, and beside an ``x.nii.gz`` alone ITK read that
    file's header bytes as voxels)."""
    return ".hdr" if _read_suffix(path) == ".hdr.gz" else _suffix(path)


def _check_data_file(path: str) -> None:
    """Refuse an image header whose data file is missing, naming it (see :func:`missing_data_file`)."""
    named = missing_data_file(path)
    if named is None:
        return
    suffix = _data_file_suffix(path)
    field = _DATA_FILE_FIELDS[suffix]
    where = os.path.join(os.path.dirname(path), named)
    said = f"in '{named}' ({field})" if suffix != ".hdr" else f"in '{named}', {field}"
    raise InputError(f"'{path}' is a header: its voxels are {said}, which does not exist ('{where}').",
                     "Keep the header and its data file together, with the name the header gives (copy or "
                     "upload both), or give a single-file image (.nii.gz, .nrrd, .mha).")


#: Bytes per value of the MetaImage element types whose size is the same on every platform
_MET_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
              "MET_FLOAT": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_DOUBLE": 8}
_TRUNCATED_FIX = "Copy or download the file again, complete; check the disk was not full when it was written."


class _CompressedVoxels(NamedTuple):
    """Where a MetaImage's compressed voxels lie, and what they decompress to."""

    where: str  # the file as an error names it
    data_file: str
    start: int
    length: int  # bytes of the compressed stream (CompressedDataSize, or to the end of the file)
    raw_bytes: int | None  # their size decompressed (None: an element type of no fixed size)
    msb: bool  # stored big-endian: ITK swaps the values to the machine's order
    unsized: bool  # in the header's own file, which gives no CompressedDataSize


def _check_metaimage_size(path: str) -> _CompressedVoxels | None:
    """Refuse a truncated MetaImage before ITK reads it: ITK's MetaIO prints "data not read completely" (or
    "Cannot parse file") on stderr and fails with "Reason: No such file or directory", a stale errno.

    Only what the header pins down is checked: the data's byte count (uncompressed: the voxels times their
    size; compressed: ``CompressedDataSize``) against what the file (or the data file an .mhd names)
    holds. Headers this does not follow (ASCII data, a list of data files, ``HeaderSize = -1``) are left to
    ITK, and so is the size of a compressed file without ``CompressedDataSize`` (its stream is taken to end
    with the file).

    Returns:
        Where the compressed voxels of a compressed file lie, for :func:`_check_compressed_voxels` once ITK
        has read them; None for an uncompressed file or a header this does not follow.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 20)
    except OSError as exc:  # read before ITK, whose failure is an InputError: so must this one be
        raise InputError(f"Cannot read '{path}' ({exc.strerror or exc}).",
                         "Check the file's permissions (it must be readable), or copy it somewhere readable.") from exc
    end = _ELEMENT_DATA_FILE.search(head)
    if not re.match(rb"\s*\w+\s*=", head):
        return None  # not a MetaImage header: ITK chooses its reader from the contents
    if end is None:
        if len(head) < (1 << 20) and re.search(rb"(?m)^\s*(?:NDims|DimSize|ObjectType)\s*=", head):
            raise InputError(f"'{path}' is truncated: its MetaImage header is incomplete (it ends before the "
                             "ElementDataFile line, which closes a header).", _TRUNCATED_FIX)
        return None
    fields = {}
    for line in head[:end.start()].decode("latin-1").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key.strip()] = value.strip()
    try:
        dims = [int(v) for v in fields["DimSize"].split()]
        channels = int(fields.get("ElementNumberOfChannels", "1"))
        header_size = int(fields.get("HeaderSize", "0"))
    except (KeyError, ValueError):
        return None
    binary = fields.get("BinaryData", "True").lower() in ("true", "1")
    compressed = fields.get("CompressedData", "False").lower() in ("true", "1")
    target = end.group(1).decode("latin-1")
    if not binary or header_size < 0 or target.upper().startswith("LIST") or "%" in target:
        return None
    if target.upper() == "LOCAL":
        data_file, start = path, end.end() + header_size
    else:
        data_file, start = os.path.join(os.path.dirname(path), target), header_size
        if not os.path.isfile(data_file):
            return None  # named by _check_data_file
    available = os.path.getsize(data_file) - start
    where = f"'{path}'" if data_file == path else f"'{path}' (its data file '{target}')"
    size = _MET_BYTES.get(fields.get("ElementType", ""))
    count = int(np.prod(dims, dtype=np.int64))
    raw_bytes = None if size is None else count * channels * size
    if compressed:
        try:
            expected = int(fields.get("CompressedDataSize", available))
        except ValueError:
            return None
        msb = any(fields.get(k, "False").lower() in ("true", "1")
                  for k in ("BinaryDataByteOrderMSB", "ElementByteOrderMSB"))
        voxels = _CompressedVoxels(where, data_file, start, min(expected, available), raw_bytes, msb,
                                   data_file == path and "CompressedDataSize" not in fields)
        what = f"{expected} bytes of compressed data"
    elif raw_bytes is None:
        return None
    else:
        voxels, expected = None, raw_bytes
        what = f"{count} voxels ({expected} bytes)"
    if available < expected:
        raise InputError(f"{where} is truncated: its header describes {what} but the file holds only "
                         f"{max(available, 0)} bytes of them.", _TRUNCATED_FIX)
    return voxels


def _check_compressed_voxels(image: sitk.Image, data: _CompressedVoxels) -> None:
    """Refuse a compressed MetaImage whose compressed stream is damaged: ITK's MetaIO inflates it without
    failing, and gives other values (a flipped byte changed 1 to 60000 voxels, with no error or warning)
    or, for a stream cut short, zeros after a stray "Uncompress failed" on stdout.

    The voxels ITK read are checked against the checksum the stream ends with (zlib's Adler-32, gzip's
    CRC-32): about 0.02 s for a 256^3 float32 volume, a tenth of its reading. Only where they differ
    (or the stream's format is another) is the stream itself inflated again, in blocks, to tell a damaged
    stream from voxels ITK had to convert.
    """
    import zlib

    arr = sitk.GetArrayViewFromImage(image)
    if data.msb and arr.dtype.itemsize > 1:
        arr = arr.byteswap()  # back to the order the stream holds
    buffer = memoryview(np.ascontiguousarray(arr)).cast("B")
    with open(data.data_file, "rb") as fh:
        fh.seek(data.start)
        first = fh.read(2)
        fh.seek(data.start + max(data.length - 8, 0))
        tail = fh.read(8)
    compared = False  # ITK's voxels were compared with the checksum (and differ)
    if len(first) == 2 and len(tail) == 8 and (data.raw_bytes is None or data.raw_bytes == buffer.nbytes):
        if first == b"\x1f\x8b":  # gzip: CRC-32, then the size, little-endian
            if zlib.crc32(buffer) == int.from_bytes(tail[:4], "little"):
                return
            compared = data.raw_bytes is not None
        elif first[0] & 0x0F == 8 and int.from_bytes(first, "big") % 31 == 0:  # zlib: Adler-32, big-endian
            if zlib.adler32(buffer) == int.from_bytes(tail[4:], "big"):
                return
            compared = data.raw_bytes is not None
    problem = None
    inflate = zlib.decompressobj(47)  # zlib or gzip, as MetaIO takes either
    produced, remaining = 0, data.length
    try:
        with open(data.data_file, "rb") as fh:
            fh.seek(data.start)
            while remaining > 0 and not inflate.eof:
                chunk = fh.read(min(remaining, 1 << 24))
                if not chunk:
                    break
                remaining -= len(chunk)
                while chunk and not inflate.eof:  # at most 16 MB out at a time, however well it compressed
                    produced += len(inflate.decompress(chunk, 1 << 24))
                    chunk = inflate.unconsumed_tail
    except zlib.error as exc:
        problem = f"its compressed voxel data do not decompress ({exc})"
    if problem is None and not inflate.eof:
        problem = "its compressed voxel data end before their end-of-stream mark"
    if problem is None and data.raw_bytes is not None and produced != data.raw_bytes:
        problem = f"its compressed voxel data decompress to {produced} bytes, not the {data.raw_bytes} its header describes"
    if problem is not None:
        raise InputError(f"{data.where} is damaged: {problem}; ITK would have read other voxel values without "
                         "an error.", "Copy or download the file again, or write it again from its source (a "
                         "damaged compressed file cannot be repaired).")
    if compared:  # a sound stream, and ITK read other values from it
        size = data.length - remaining - len(inflate.unused_data)  # what the stream took of what was read
        if data.unsized:
            raise InputError(f"{data.where} has no CompressedDataSize in its header, without which ITK's MetaImage "
                             "reader reads other values than its compressed voxels hold (without an error).",
                             f"Add the line 'CompressedDataSize = {size}' to its header, before ElementDataFile "
                             "(the stream's length in bytes), or write the image again from its source.")
        raise InputError(f"ITK's MetaImage reader read other values from {data.where} than its compressed voxels "
                         "hold (their checksum differs).",
                         "Convert the file with another tool (e.g. to .nrrd or .nii.gz), or write it again from "
                         "its source.")


def display_name(path: str | os.PathLike, default: str = "") -> str:
    """The name an input is shown by (reports, tables): its file or folder name, the last part of the path
    and never the folders above it (which may name the patient), a trailing separator ignored (``ct/``, as a
    shell completes a DICOM folder, is ``ct``); ``default`` where the path has no last part (``/``)."""
    return os.path.basename(os.path.normpath(os.fspath(path))) or default


def check_output_folder(path: str | os.PathLike) -> str:
    """Refuse, before any work and without making anything, an output folder that :func:`make_output_dir` could not
    make because a file has its name or a parent's (``fuse --report a.nii.gz``, ``register -o a.nii.gz``: refused
    only once the fusion or the registration had run). Returns ``path`` as a string.

    Raises:
        InputError: ``path``, or one of its parents, is an existing file.
    """
    path = os.fspath(path)
    probe = os.path.abspath(path)
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe) if os.path.dirname(probe) != probe else ""
    if probe and not os.path.isdir(probe):
        raise InputError(f"The output folder '{path}' cannot be made: '{probe}' is a file.",
                         f"Give a folder path with no existing file in it, or move '{probe}' away.")
    return path


def make_output_dir(path: str | os.PathLike) -> str:
    """Create an output folder (and its parents) if needed; a clear error when a file has its name.

    Raises:
        InputError: ``path``, or one of its parents, is an existing file.
    """
    path = check_output_folder(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:  # read-only or special file system, no permission, a name too long
        raise InputError(f"The output folder '{path}' cannot be created ({exc.strerror or exc}).",
                         "Give an output folder you can write to (e.g. one in your home folder).") from exc
    return path


@contextlib.contextmanager
def output_folder(path: str | os.PathLike) -> Iterator[str]:
    """:func:`make_output_dir` for a job that writes into the folder in the block: on an error or a cancellation
    in it, or when the folder cannot be made whole (a name too long made its parents first), the folders this call
    made that are still empty are removed again, so a refused job (a blank input, no overlap, Ctrl-C) leaves no
    empty results folder behind; folders that existed, or hold anything, stay."""
    path = os.fspath(path)
    made = _missing_folders(path)
    try:
        yield make_output_dir(path)
    except BaseException:
        _remove_empty(made)
        raise


def _missing_folders(path: str) -> list[str]:
    """The folders ``os.makedirs(path)`` would make, deepest first, named as the system finds them: by the path as
    given, not normalised, since ``new/../x`` makes ``new`` too, and ``link/..`` is the parent of the link's target
    (os.path.abspath had named neither: 'new' was left behind and the folder made beside the target kept)."""
    parts = []
    probe = os.path.join(os.getcwd(), path)
    while True:
        head, tail = os.path.split(probe)
        if head == probe:  # the root
            break
        if tail not in ("", os.curdir, os.pardir) and not os.path.lexists(probe):  # '' after a trailing '/'
            parts.append(probe)
        probe = head
    return parts


def _remove_empty(folders: Sequence[str]) -> None:
    """Remove those of ``folders`` (the deepest first) that are empty."""
    for folder in folders:
        try:
            os.rmdir(folder)  # only when empty
        except OSError:
            continue  # not empty, or gone: a folder above it may still be one this call made, empty


def _dicom_slice_as_2d(image: sitk.Image) -> sitk.Image:
    """One DICOM file is one slice, which ITK reads as a volume of one slice: the 2D image it is
    (in-plane origin, spacing and direction kept) when it lies in an axial plane; a slice out of that
    plane (coronal, sagittal, or tilted from axial) stays a one-slice volume, as no 2D direction holds
    it: ITK's sub-matrix of a tilted slice's direction is sheared (a slice tilted 20 degrees had every
    row 6% short), and singular for a coronal or sagittal one."""
    extract = sitk.ExtractImageFilter()
    extract.SetSize([image.GetSize()[0], image.GetSize()[1], 0])
    extract.SetIndex([0, 0, 0])
    extract.SetDirectionCollapseToStrategy(sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX)
    try:
        slice_2d = extract.Execute(image)
    except RuntimeError:
        return image
    return slice_2d if _orthonormal(slice_2d) else image


def one_slice_axis(image: sitk.Image) -> int | None:
    """The axis of a one-slice volume's single slice (0, 1 or 2: a 2D slice as Slicer, ITK-SNAP and
    :func:`write_image` save it, e.g. 181 x 217 x 1), or None for any other image (a 2D image, a volume, a
    line of voxels) and for anything that is not an image (left to the caller's check to name: a mask passed as
    a path had ended in AttributeError)."""
    if not isinstance(image, sitk.Image) or image.GetDimension() != 3:
        return None
    size = image.GetSize()
    flat = [axis for axis in range(3) if size[axis] == 1]
    return flat[0] if len(flat) == 1 else None


def one_slice_pixels(image: sitk.Image) -> sitk.Image:
    """A one-slice volume's pixels as a 2D image with the in-plane spacing, without origin or direction: what
    fusion of two images on one grid needs (any slice axis, any direction; :func:`as_one_slice_of` puts a
    result back on the volume's geometry). Other images are returned as they are."""
    axis = one_slice_axis(image)
    if axis is None:
        return image
    arr = np.take(sitk.GetArrayFromImage(image), 0, axis=2 - axis)  # numpy's axes are ITK's reversed
    out = sitk.GetImageFromArray(arr, isVector=image.GetNumberOfComponentsPerPixel() > 1)
    out.SetSpacing([image.GetSpacing()[k] for k in range(3) if k != axis])
    return out


def as_one_slice_of(image: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """A 2D result put back on the one-slice volume ``reference``'s exact geometry (its slice axis, origin,
    spacing and direction), so that Slicer or ITK-SNAP shows it where ``reference`` is."""
    axis = one_slice_axis(reference)
    if axis is None:
        raise ValueError(f"the reference (size {reference.GetSize()}) is not a one-slice volume")
    arr = np.expand_dims(sitk.GetArrayFromImage(image), 2 - axis)
    out = sitk.GetImageFromArray(arr, isVector=image.GetNumberOfComponentsPerPixel() > 1)
    out.CopyInformation(reference)
    return _with_units_of(out, image)  # the same values: a PET's DICOM Units, where it states them


def one_slice_as_2d(image: sitk.Image, name: str = "image") -> sitk.Image:
    """A one-slice volume as the 2D image of its slice, with its in-plane origin, spacing and direction (for
    registration, which needs them); other images as they are.

    Raises:
        InputError: the single slice is not along the last axis, or lies out of an axial plane (coronal,
            sagittal, tilted): a 2D image's geometry cannot hold it (see :func:`_dicom_slice_as_2d`).
    """
    axis = one_slice_axis(image)
    if axis is None:
        return image
    fix = ("Register the 3D volumes the slices were cut from, or save the slices as axial slices (one slice "
           "along the third axis); two slices already on one grid can be fused as they are (mmfusion fuse).")
    if axis != 2:
        raise InputError(f"The {name} is a one-slice volume (size {image.GetSize()}) whose single slice is along "
                         f"axis {axis}, not the last: a 2D image cannot hold where its pixels lie.", fix)
    slice_2d = _dicom_slice_as_2d(image)
    if slice_2d.GetDimension() != 2:
        raise InputError(f"The {name} is a one-slice volume (size {image.GetSize()}) in a plane that is not axial "
                         f"(direction {[round(v, 4) for v in image.GetDirection()]}): a 2D image's direction "
                         "cannot hold it.", fix)
    return _with_units_of(slice_2d, image)  # its values: a PET's DICOM Units, where it states them


def one_slice_inputs_as_2d(fixed: sitk.Image, moving: sitk.Image, fixed_mask: sitk.Image | None = None,
                           moving_mask: sitk.Image | None = None, *, fixed_name: str = "fixed image",
                           moving_name: str = "moving image"
                           ) -> tuple[sitk.Image | None, sitk.Image, sitk.Image, sitk.Image | None, sitk.Image | None]:
    """A registration's inputs with each one-slice volume as the 2D image of its slice (:func:`one_slice_as_2d`),
    as ``(slice_volume, fixed, moving, fixed_mask, moving_mask)``: ``slice_volume`` is the one-slice volume
    ``fixed`` was (None where it was none), on whose geometry results go back (:func:`as_one_slice_of`).

    A one-slice mask of a one-slice image is checked on its image's grid as the volumes they are
    (``validation.check_mask``) before both lose their depth: as 2D images a mask of another slice, 100 mm away,
    had been taken as on the image's grid."""
    from .validation import check_mask  # (validation imports io)

    thin = [one_slice_axis(image) is not None for image in (fixed, moving)]
    if thin[0] != thin[1] and all(isinstance(i, sitk.Image) and i.GetDimension() == 3 for i in (fixed, moving)):
        # a one-slice volume with a volume of several slices had been told "the fixed image is 2D but the
        # moving image is 3D", though the user gave two 3D files
        (one, one_name), (many, many_name) = ((fixed, fixed_name), (moving, moving_name))[::1 if thin[0] else -1]
        raise InputError(f"The {one_name} is a volume of one slice (size {one.GetSize()}) and the {many_name} a "
                         f"volume of several (size {many.GetSize()}): registering a slice to a volume is not "
                         "supported.", "Give two volumes, or two one-slice volumes (the volume's matching slice "
                         "with its place kept: in SimpleITK volume[:, :, k:k + 1]).")
    masks = []
    for mask, image, name, image_name in ((fixed_mask, fixed, "fixed mask", fixed_name),
                                          (moving_mask, moving, "moving mask", moving_name)):
        if one_slice_axis(mask) is not None and one_slice_axis(image) is not None:
            mask = check_mask(mask, image, name, image_name)
        masks.append(one_slice_as_2d(mask, name) if mask is not None else None)
    slice_volume = fixed if one_slice_axis(fixed) is not None else None
    return slice_volume, one_slice_as_2d(fixed, fixed_name), one_slice_as_2d(moving, moving_name), masks[0], masks[1]


#: Temporary files and staging folders are named ``.mmf-tmp-OWNER-PID-...`` / ``.mmf-staging-OWNER-PID-...``
#: (:func:`temporary_prefix`): OWNER stands for the machine (host name and, on Linux, PID namespace) and PID is
#: the writing process, so a later write into the folder can tell a dead process's leftovers from a live one's.
_LEFTOVER_NAME = re.compile(r"\.mmf-(?:tmp|staging)-([0-9a-f]{8})-([0-9]+)-")
#: When each folder was last swept (time.monotonic()): again after _SWEEP_AGAIN_S, so a long-lived process (3D
#: Slicer, the web app) also removes what a command killed later in the same folder left
_swept_folders: dict[str, float] = {}
_SWEEP_AGAIN_S = 60.0


def _owner() -> str:
    """8 hex digits naming where this process's PID means something: the host name, the machine id and, on
    Linux, the PID namespace (a container on the same host, or another host sharing the folder, gets another;
    the machine id tells apart cloned machines that kept one host name, whose PID namespaces read alike)."""
    import hashlib
    import socket

    parts = [socket.gethostname()]
    for read in (lambda: os.readlink("/proc/self/ns/pid"), lambda: Path("/etc/machine-id").read_text().strip()):
        try:
            parts.append(read())
        except OSError:
            parts.append("")
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()[:8]


def temporary_prefix(kind: str = "tmp") -> str:
    """The name prefix of a temporary file (``kind`` "tmp") or staging folder ("staging") written beside an
    output: ``.mmf-KIND-OWNER-PID-`` (see :func:`remove_dead_leftovers`)."""
    return f".mmf-{kind}-{_owner()}-{os.getpid()}-"


def _process_gone(pid: int) -> bool:
    """Whether no process ``pid`` exists (False where that cannot be told: it may be alive)."""
    if os.name == "nt":  # os.kill(pid, 0) would end the process there (TerminateProcess)
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: another user's live process
        return False
    except (OverflowError, ValueError):  # a name that only looks like ours (no pid_t holds it): not ours to judge
        return False
    return False


def remove_dead_leftovers(folder: str | os.PathLike) -> list[str]:
    """Remove from ``folder`` the temporary files and staging folders of processes that died while writing
    into it (``kill -9``, a power cut: nothing of theirs could clean up); returns their paths.

    Only names this machine's processes wrote (the owner in :func:`temporary_prefix` is this host's and PID
    namespace's) and whose PID no longer exists: a live process's (another ``mmfusion`` writing into the same
    folder) are never touched, and neither are other hosts' (a shared network folder: their PIDs cannot be
    checked from here) nor names without a PID (written before it was in the name). A reused PID keeps a
    leftover, never the reverse. Symbolic links are left alone. A folder is swept again only a minute after
    its last sweep (a long-lived process writes into it often).
    """
    folder = os.path.abspath(os.fspath(folder))
    now = time.monotonic()
    if now - _swept_folders.get(folder, -math.inf) < _SWEEP_AGAIN_S:
        return []
    _swept_folders[folder] = now
    owner, removed = _owner(), []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _LEFTOVER_NAME.match(name)
        if not match or match.group(1) != owner or int(match.group(2)) == os.getpid():
            continue
        path = os.path.join(folder, name)
        if os.path.islink(path) or not _process_gone(int(match.group(2))):
            continue
        try:
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        except OSError:  # gone already (another run swept it), or not ours to remove after all
            continue
        removed.append(path)
    return removed


def atomic_path(path: str | os.PathLike) -> tuple[str, str]:
    """(temporary path next to ``path`` with the same extension, final path)."""
    final = os.fspath(path)
    if os.path.isdir(final):
        raise InputError(f"The output '{final}' is a folder, not a file.", "Give a file name for the output.")
    folder = os.path.dirname(os.path.abspath(final))
    make_output_dir(folder)
    remove_dead_leftovers(folder)
    suffix = _read_suffix(final) or ".tmp"  # whole: a '.gz' alone would not be a GIPL file to ITK
    try:
        fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(), suffix=suffix, dir=folder)
    except OSError as exc:  # read-only folder or disk, no permission, a name too long; the temporary
        # file's name is internal, so name the output the user gave
        raise InputError(f"Cannot write '{final}' ({exc.strerror or exc}).",
                         "Give an output path in a folder you can write to (and a file name of at most "
                         "a few hundred characters).") from exc
    os.close(fd)
    return tmp, final


def check_writable(path: str | os.PathLike) -> None:
    """Raise the :func:`atomic_path` error now if ``path`` cannot be written (a long job checks before it runs).
    The folders the check made are removed again (the write makes them): a job refused after it (train-fusion on
    pairs it cannot read) had left them behind, empty, where :func:`output_folder` leaves none."""
    made = _missing_folders(os.path.dirname(os.path.abspath(os.fspath(path))))
    tmp, _ = atomic_path(path)
    os.remove(tmp)
    _remove_empty(made)


def _file_mode_from_umask() -> int:
    # os.umask can only be read by setting it; done once, at import, before any worker thread
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


#: What a plain open() would create: mkstemp's temporary files are 0600, which would leave
#: results unreadable to the other users of a shared folder.
_NEW_FILE_MODE = _file_mode_from_umask()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: int | None = None) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success rename it to ``path``, on error remove it.

    Args:
        path: the final file.
        mode: permission bits of the result; default: as a new file under the user's umask.
    """
    # a refused write (a full disk, the file size limit, a cut file) leaves no new empty folder behind
    with output_folder(os.path.dirname(os.path.abspath(os.fspath(path)))):
        tmp, final = atomic_path(path)
        try:
            yield tmp
            try:
                os.chmod(tmp, _NEW_FILE_MODE if mode is None else mode)
                os.replace(tmp, final)
            except OSError as exc:
                raise InputError(f"Cannot write '{final}' ({exc.strerror or exc}).",
                                 "Give an output path you can write to.") from exc
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def check_not_overwriting_inputs(outputs: Iterable[str | os.PathLike], inputs: Iterable[Any], *,
                                 patterns: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse, before any work, outputs that would replace an input file.

    Args:
        outputs: output paths, taken literally (``scan[1].png`` is that name).
        inputs: the inputs as given: paths, or anything else (images in memory, None), which is
            skipped; folders (DICOM series) are skipped too, as writing a file into them replaces nothing.
        patterns: outputs known only by pattern (``out/fused_*``): ``*`` in the file name matches
            any text, every other character itself.

    Raises:
        InputError: an output names one of the input files (also through a symbolic link, a hard
            link or another spelling of the path, and on case-insensitive disks).
    """
    files = [os.fspath(src) for src in inputs if isinstance(src, (str, os.PathLike)) and os.path.isfile(src)]

    def refuse(out: Any, given: str) -> None:
        raise InputError(f"The output '{out}' would overwrite the input file '{given}'.",
                         "Write the output elsewhere (another output file or --output-dir); inputs are "
                         "never overwritten.")

    for out in outputs:
        out_path = os.fspath(out)
        for given in files:
            if os.path.exists(out_path):
                if os.path.samefile(out_path, given):
                    refuse(out, given)
            elif os.path.normcase(os.path.realpath(out_path)) == os.path.normcase(os.path.realpath(given)):
                refuse(out, given)
        sidecar = bids_sidecar_path(out_path)
        for given in files if sidecar is not None else ():
            # x.nii written beside the input x.nii.gz: its Units would be written into (or removed from) the input's
            # BIDS sidecar, which would then misstate the input
            theirs = bids_sidecar_path(given)
            if theirs is not None and _same_place(sidecar, theirs):
                raise InputError(f"The output '{out}' would share its JSON sidecar '{sidecar}' with the input file "
                                 f"'{given}': writing the output's Units there would change what the input states.",
                                 "Give the output another name (or write it elsewhere); inputs are never changed.")
    for pattern in patterns:
        folder = os.path.normcase(os.path.realpath(os.path.dirname(os.path.abspath(os.fspath(pattern)))))
        regex = _name_pattern(os.path.basename(os.fspath(pattern)))
        for given in files:
            real = os.path.realpath(given)
            if os.path.normcase(os.path.dirname(real)) == folder and regex.fullmatch(os.path.basename(real)):
                refuse(pattern, given)


def _same_place(one: str, other: str) -> bool:
    """Whether two paths name one file, existing or not (through links, and case-blind where the disk is)."""
    return os.path.normcase(os.path.realpath(one)) == os.path.normcase(os.path.realpath(other))


def _name_pattern(pattern: str) -> re.Pattern:
    """A file-name pattern (``*`` any text, every other character itself) as a regex, case-blind where the disk is."""
    flags = re.IGNORECASE if os.path.normcase("A") == "a" else 0
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), flags)


@contextlib.contextmanager
def replacing_outputs(output_dir: str | os.PathLike, *, previous: Iterable[str] = (),
                      keep: Iterable[Any] = ()) -> Iterator[str]:
    """Write a set of results into ``output_dir`` as a whole: all of them replace the earlier ones, or none.

    Yields a hidden staging folder inside ``output_dir`` to write every result into. When the block
    ends without an error, the files of an earlier run that match ``previous`` (file-name patterns,
    ``*`` for any text) and that this run did not write are removed, then the staged files are moved
    in (a rename each, on the same disk). On an error or a cancellation ``output_dir`` is left as it
    was. Either way the staging folder is removed.

    Args:
        output_dir: the results folder (created if needed).
        previous: names an earlier run of the same job may have left, e.g. ``["transform.h5", "fused_*.*"]``.
        keep: files never removed, whatever their names (the job's inputs, when they live in the folder).

    Raises:
        InputError: the folder cannot be made or written to.
    """
    with output_folder(output_dir) as out:
        remove_dead_leftovers(out)
        with _staged_results(out, previous, keep) as stage:
            yield stage


@contextlib.contextmanager
def _staged_results(out: str, previous: Iterable[str], keep: Iterable[Any]) -> Iterator[str]:
    """:func:`replacing_outputs` in the folder ``out``, which exists."""
    try:
        stage = tempfile.mkdtemp(prefix=temporary_prefix("staging"), dir=out)
    except OSError as exc:
        raise InputError(f"Cannot write into the output folder '{out}' ({exc.strerror or exc}).",
                         "Give an output folder you can write to.") from exc
    try:
        try:
            yield stage
        except InputError as exc:  # name the file the user will look for, not its staged copy
            if type(exc) is not InputError or stage not in exc.problem:
                raise
            raise InputError(exc.problem.replace(os.path.join(stage, ""), os.path.join(out, "")),
                             exc.fix) from exc
        written = set(os.listdir(stage))
        kept = {os.path.normcase(os.path.realpath(os.fspath(k))) for k in keep
                if isinstance(k, (str, os.PathLike)) and os.path.isfile(k)}
        patterns = [_name_pattern(p) for p in previous]
        try:
            for name in os.listdir(out):
                path = os.path.join(out, name)
                if (name in written or not os.path.isfile(path)
                        or os.path.normcase(os.path.realpath(path)) in kept
                        or not any(p.fullmatch(name) for p in patterns)):
                    continue
                os.remove(path)
            for name in sorted(written):
                os.replace(os.path.join(stage, name), os.path.join(out, name))
        except OSError as exc:
            raise InputError(f"Cannot write the results into '{out}' ({exc.strerror or exc}).",
                             "Give an output folder you can write to.") from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_bytes(path: str | os.PathLike, payload: bytes) -> str:
    """Write ``payload`` to ``path`` atomically; returns the path."""
    with atomic_output(path) as tmp:
        try:
            with open(tmp, "wb") as fh:
                fh.write(payload)
        except OSError as exc:  # a full disk or a file size limit: it had escaped as an OSError (a traceback)
            raise InputError(f"Cannot write '{os.fspath(path)}' ({exc.strerror or exc}).",
                             "Free space on that disk, or write the output to another one.") from exc
    return os.fspath(path)


#: How strict JSON (which has no NaN or infinity) holds the floats that are not finite: NaN (undefined) as null,
#: infinities as these strings, which float() in Python, Number() in JavaScript and Double.parseDouble in Java
#: read back as infinities. Both had been null, so an infinite PSNR (identical images) read as undefined.
JSON_INFINITY = {True: "Infinity", False: "-Infinity"}


#: How a number that is not there is written for a reader: NaN or None (nothing compared: MI before images overlap,
#: Qabf without edges), a registration metric with no valid sample point (inf) or a value that is no number.
NOT_AVAILABLE = "n/a"


#: The binary units :func:`size_text` writes sizes in (the web app's size options read them too), largest first.
BINARY_UNITS = (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10))


def size_text(size: int) -> str:
    """``size`` bytes for a person: "4 GiB", "1.5 GiB", "1000 bytes" (the web app's upload limits, train-fusion's
    memory check)."""
    for unit, factor in BINARY_UNITS:
        if size >= factor:
            return f"{size / factor:.3g} {unit}"
    return f"{size} bytes"


def number_text(value: Any, spec: str = ".4g", *, infinity: str | None = None) -> str:
    """``value`` as ``spec`` writes it for a reader: the console, the web panel, Slicer's status line and metrics
    table, the report. None, NaN and what is no number are :data:`NOT_AVAILABLE`; so is an infinity (the sitk
    backend's metric where no sample point is valid, which had printed "inf" in the console and the panels and "∞" in
    the report), unless ``infinity`` says how to write one that is a real value (the PSNR of identical images: "inf"
    in the console, "∞" in the report), with "-" before it for -inf. The one rule of every printed number (the CLI's
    tables had two copies of it)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return NOT_AVAILABLE
    except OverflowError:  # an integer beyond float's range (10**400) had escaped as a traceback
        number = math.inf if value > 0 else -math.inf
    if number != number:
        return NOT_AVAILABLE
    if math.isinf(number):
        return NOT_AVAILABLE if infinity is None else ("" if number > 0 else "-") + infinity
    return format(number + 0.0, spec)


def to_json_safe(obj: Any) -> Any:
    """JSON-able copy: NaN -> None, +/-inf -> "Infinity"/"-Infinity" (``JSON_INFINITY``), numpy scalars/arrays ->
    Python, objects with to_dict -> dict."""
    import numpy as _np

    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        return obj if math.isfinite(obj) else JSON_INFINITY[obj > 0]
    if isinstance(obj, (_np.floating, _np.integer, _np.bool_)):
        return to_json_safe(obj.item())
    if isinstance(obj, _np.ndarray):
        return to_json_safe(obj.tolist())
    if isinstance(obj, Mapping):
        return {str(k): to_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_safe(v) for v in obj]
    if hasattr(obj, "to_dict"):
        return to_json_safe(obj.to_dict())
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def write_json(path: str | os.PathLike, obj: Any) -> str:
    """Write ``obj`` as indented, strictly valid JSON (NaN becomes null, +/-inf "Infinity"/"-Infinity"), atomically."""
    text = json.dumps(to_json_safe(obj), indent=2, allow_nan=False)
    return write_bytes(path, (text + "\n").encode("utf-8"))


#: ITK's run-length label maps (``sitk.Cast(image, sitk.sitkLabelUInt8)``, what sitk.BinaryImageToLabelMap and the
#: other LabelMap filters give), by the plain integer type each is written as. SimpleITK reads no voxel of one
#: (sitk.GetArrayFromImage aborted the whole process with an uncaught C++ exception, "This method is not supported
#: for LabelMaps") and its writers take none ("Pixel type: label of 8-bit unsigned integer is not supported").
#: Only ids this SimpleITK build has.
_LABEL_MAP_AS = {getattr(sitk, f"sitkLabelUInt{bits}"): getattr(sitk, f"sitkUInt{bits}")
                 for bits in (8, 16, 32, 64) if getattr(sitk, f"sitkLabelUInt{bits}", -1) >= 0}


def plain_labels(image: sitk.Image) -> sitk.Image:
    """``image`` as a plain image of integer labels where it is an ITK label map (see ``_LABEL_MAP_AS``): the same
    labels, background and geometry (sitk.LabelMapToLabel), in an image whose voxels can be read and written; any
    other image as it is."""
    if image.GetPixelID() not in _LABEL_MAP_AS:
        return image
    return sitk.LabelMapToLabel(image)


def _orthonormal(image: sitk.Image) -> bool:
    d = np.array(image.GetDirection(), dtype=float).reshape(image.GetDimension(), image.GetDimension())
    return bool(np.allclose(d @ d.T, np.eye(image.GetDimension()), atol=1e-4))


def _warn_or_note(text: str, notes: list[str] | None, stacklevel: int) -> None:
    """Warn ``text`` (``stacklevel`` as for warnings.warn, from the caller), or, where ``notes`` is given, add it there
    for :func:`write_image` to issue once the file is in place (with warnings turned into errors, one issued before
    had stopped the write, though it says what is written)."""
    if notes is None:
        warnings.warn(text, stacklevel=stacklevel + 1)
    else:
        notes.append(text)


def _for_2d_format(image: sitk.Image, final: str, notes: list[str] | None = None) -> sitk.Image:
    """An image as a PNG/JPEG/BMP can hold it: its values kept where the format allows.

    Integer values in 0..255 are written as they are (labels stay labels); in 0..65535 as 16-bit
    PNG; grey values on the 0..255 scale are rounded. Anything else (CT in HU, PET in Bq/ml, a
    0..1 probability map, which rounding would reduce to 0 and 1) has to be rescaled to 0..255,
    with a warning; a volume cannot be a PNG. ``notes``: where given, the warnings' texts go there instead.
    """
    if image.GetDimension() == 3:  # of one slice: check_output_name refuses a volume
        image = image[:, :, 0]
    if image.GetPixelID() in (sitk.sitkUInt8, sitk.sitkVectorUInt8):
        return image
    arr = sitk.GetArrayFromImage(image)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    whole = bool(np.all(np.mod(arr, 1) == 0)) if np.issubdtype(arr.dtype, np.floating) else True
    vector = image.GetNumberOfComponentsPerPixel() > 1
    if lo >= 0 and hi <= 255 and (whole or hi > 1.0):
        # integers, or grey values on the 0..255 display scale (a fused image): rounded, not stretched
        out = sitk.GetImageFromArray(np.round(arr).astype(np.uint8), isVector=vector)
    elif lo >= 0 and hi <= 65535 and whole and _suffix(final) == ".png":
        out = sitk.GetImageFromArray(arr.astype(np.uint16), isVector=vector)
    else:
        _warn_or_note(f"'{final}': values {lo:g}..{hi:g} rescaled to 0..255 for an 8-bit image; write .nrrd, "
                      ".mha or .nii.gz to keep them.", notes, stacklevel=3)
        scaled = (arr.astype(np.float64) - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros(arr.shape)
        out = sitk.GetImageFromArray(np.round(scaled).astype(np.uint8), isVector=vector)
    out.CopyInformation(image)
    if any(abs(o) > 1e-6 for o in image.GetOrigin()) or not np.allclose(image.GetDirection(), [1, 0, 0, 1]):
        _warn_or_note(f"'{final}': a PNG/JPEG/BMP keeps no origin or direction (the image has origin "
                      f"{[round(o, 3) for o in image.GetOrigin()]} mm, LPS); write .nrrd or .mha to keep them.", notes,
                      stacklevel=3)
    return out


def _warn_geometry_lost(image: sitk.Image, final: str, direction_only: bool, notes: list[str] | None = None) -> None:
    """Warn, as for a PNG, where a TIFF (or PIC, LSM) would drop ``image``'s origin or direction, or a VTK
    file its direction: read back, it would lie elsewhere (a TIFF written by mmfusion fuse had been refused by
    mmfusion evaluate as off its sources' grid, and nothing had said why). ``notes``: where given, the warning's
    text goes there instead."""
    dim = image.GetDimension()
    turned = not np.allclose(image.GetDirection(), np.eye(dim).ravel())
    moved = any(abs(o) > 1e-6 for o in image.GetOrigin())
    if turned or (moved and not direction_only):
        kept = "no direction" if direction_only else "no origin or direction"
        _warn_or_note(f"'{final}': a {_read_suffix(final).split('.')[1].upper()} file keeps {kept} (the image has origin "
                      f"{[round(o, 3) for o in image.GetOrigin()]} mm, LPS, direction "
                      f"{[round(v, 4) for v in image.GetDirection()]}); write .nrrd or .mha to keep them.", notes,
                      stacklevel=3)


def volume_extension(image: sitk.Image) -> str:
    """The file extension that keeps ``image``'s geometry: ``.nii.gz``, or ``.mha`` when the
    direction is sheared (non-orthonormal): NIfTI cannot store it, MetaImage keeps it exactly (NRRD
    keeps the voxel-to-world mapping but re-normalises direction and spacing)."""
    return ".nii.gz" if _orthonormal(image) else ".mha"


#: The extensions ITK writes an image as, each with the spellings its reader opens again: "any" case, "lower or upper"
#: (the NIfTI, JPEG, MINC and BioRad readers: 'x.NII' is read, 'x.Nii' is not) or "lower" only (the MetaImage,
#: GIPL, Stimulate and JPEG 2000 readers; the Analyze/NIfTI pair's writer). Found by writing and reading back each
#: (Testing/test_io.py checks this table against the ITK installed). Not here: NIfTI's ASCII .nia (written, never
#: read), JPEG 2000's .jpt (its writer fails), and compressed names other than .nii.gz, .gipl.gz and the pair's
#: .hdr.gz/.img.gz (.nrrd.gz, .mha.gz: no writer).
_OUTPUT_CASES = {
    ".nii.gz": "lower or upper", ".nii": "lower or upper", ".jpg": "lower or upper", ".jpeg": "lower or upper",
    ".mnc": "lower or upper", ".mnc2": "lower or upper", ".pic": "lower or upper",
    ".mha": "lower", ".mhd": "lower", ".gipl": "lower", ".spr": "lower", ".jp2": "lower", ".j2k": "lower",
    ".hdr": "lower", ".img": "lower", ".gipl.gz": "lower", ".hdr.gz": "lower", ".img.gz": "lower",
    ".nrrd": "any", ".nhdr": "any", ".png": "any", ".bmp": "any", ".tif": "any", ".tiff": "any", ".vtk": "any",
    ".mrc": "any", ".rec": "any", ".lsm": "any", ".dcm": "any", ".dicom": "any", ".h5": "any", ".hdf5": "any",
    ".hdf": "any", ".hd5": "any", ".hdf4": "any", ".he4": "any", ".he5": "any",
}
_ANY_IMAGE_FIX = "Name the output .nii.gz, .nrrd or .mha (any image), or .png (2D slices)."

_U8, _I8, _U16, _I16 = sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16
_RGB8, _RGB16 = sitk.sitkVectorUInt8, sitk.sitkVectorUInt16
#: The pixel types a format holds, as ITK writes them and reads them back (the same type, the same values), for the
#: 2D and for the 3D image; a format not here (NIfTI, NRRD, MetaImage, VTK, HDF5, Analyze) holds every type,
#: and PNG/JPEG/BMP are converted (see :func:`_for_2d_format`). Measured with SimpleITK 2.5 on 16x16(x4) images:
#: the others were refused by ITK only once written, after the fusion or registration (a float image to DICOM:
#: "A Floating point buffer was passed but the stored pixel type was not specified"), or written as another image
#: (BioRad 16-bit: other values; GIPL, BioRad colour: grey; Stimulate 32-bit integers: 16-bit, doubles:
#: a one-component vector image, colour: grey; JPEG 2000 16-bit colour: 8-bit). JPEG 2000 beyond its types was
#: written as files ITK cannot read, and a float image corrupted the heap (SIGABRT or SIGSEGV).
#: Testing/test_io.py checks the table against the ITK installed.
_TIFF_PIXELS = (_U8, _I8, _U16, _I16, sitk.sitkUInt32, sitk.sitkInt32, sitk.sitkFloat32, _RGB8, _RGB16,
                sitk.sitkVectorInt16, sitk.sitkVectorFloat32)
_DICOM_PIXELS = ("DICOM", frozenset({_U8, _I8, _U16, _I16, sitk.sitkUInt32, sitk.sitkInt32, _RGB8, _RGB16,
                                     sitk.sitkVectorInt16}), frozenset({_U8, _U16, _RGB8}))
_GIPL_PIXELS = (_U8, _I8, _U16, _I16, sitk.sitkFloat32, sitk.sitkFloat64)
_JPEG_2000_PIXELS = ("JPEG 2000", frozenset({_U8, _U16, _RGB8}), frozenset({_U8, _U16, _RGB8}))
#: MINC (.mnc, .mnc2): every type but 64-bit integers (refused by ITK once written, "Could not read datatype", which
#: had been reported with the fix "Check the folder is writable") and complex ones (read back as 2-component vectors)
_MINC_TYPES = frozenset(getattr(sitk, f"sitk{vector}{kind}") for vector in ("", "Vector") for kind in (
    "UInt8", "Int8", "UInt16", "Int16", "UInt32", "Int32", "Float32", "Float64"))
_MINC_PIXELS = ("MINC", _MINC_TYPES, _MINC_TYPES)
_FORMAT_PIXELS: dict[str, tuple[str, frozenset, frozenset]] = {
    ".mnc": _MINC_PIXELS, ".mnc2": _MINC_PIXELS,
    ".dcm": _DICOM_PIXELS, ".dicom": _DICOM_PIXELS, ".jp2": _JPEG_2000_PIXELS, ".j2k": _JPEG_2000_PIXELS,
    **{ext: (label, frozenset(types), frozenset(types)) for ext, label, types in (
        (".pic", "BioRad PIC", (_U8,)), (".lsm", "LSM", (_U8, _U16, _RGB8, _RGB16)),
        (".gipl", "GIPL", _GIPL_PIXELS), (".gipl.gz", "GIPL", _GIPL_PIXELS),
        (".mrc", "MRC", (_U8, _U16, _I16, sitk.sitkFloat32, _RGB8)),
        (".spr", "Stimulate", (_I8, _I16, sitk.sitkFloat32)),
        (".tif", "TIFF", _TIFF_PIXELS), (".tiff", "TIFF", _TIFF_PIXELS))},
}


def check_output_pixels(path: str | os.PathLike, pixel_type: int, dimension: int | None = None) -> None:
    """Refuse an output whose format cannot hold ``pixel_type`` (a ``sitk.sitk*`` pixel ID), before the work: a front
    end calls it (through :func:`check_output_name`) with the pixel type its output will have (a fused image is
    32-bit float, or 8-bit RGB), write_image with the image's own.

    Args:
        path: the output file.
        pixel_type: the output's pixel ID.
        dimension: 2 or 3 (a one-slice volume counts as 2D); None: accepted if either holds it.

    Raises:
        InputError: naming the format's pixel types and a format that holds them all.
    """
    final = os.fspath(path)
    pixel_type = _LABEL_MAP_AS.get(pixel_type, pixel_type)  # written as its plain labels (see plain_labels)
    entry = _FORMAT_PIXELS.get(_read_suffix(final))
    if entry is None:
        return
    label, two, three = entry
    held = two if dimension == 2 else three if dimension == 3 else two | three
    if pixel_type in held:
        return
    names = ", ".join(sitk.GetPixelIDValueAsString(p) for p in sorted(held))
    image = f"{dimension}D " if dimension else ""
    raise InputError(f"'{final}': {label} files hold {names} pixels ({image}as ITK writes and reads them), not this "
                     f"{image}image's {sitk.GetPixelIDValueAsString(pixel_type)}.",
                     "Name the output .nii.gz, .nrrd or .mha, which hold every pixel type.")


def check_output_name(path: str | os.PathLike, image: sitk.Image | None = None, *,
                      pixel_type: int | None = None) -> str:
    """Refuse an image output name that :func:`write_image` would refuse, before any work: a front end calls it
    with the name alone as soon as it has it, and with an image on the output's grid once the inputs are read,
    before registering, resampling or fusing (``fuse -o fused.GIPL`` had fused, then been refused). write_image
    calls it first too, so the two cannot disagree.

    From the name: a folder, an extension ITK writes no image as (``x.xyz``, ``x.nrrd.gz``, none), one its reader takes in
    lower (or upper) case only (``fused.GIPL``, ``.MHA``, ``.Nii``: written, then opened by no ITK reader; read_image
    reads such names, other tools may not), NIfTI's ASCII ``.nia`` (never read back), ``x.nii.hdr`` (written as the one file ``x.nii``),
    a ``.nhdr`` whose second character is ``:`` (``c:d.nhdr``: its data file was written into the current folder).
    From the folder: a ``x.hdr.gz`` or ``x.img.gz`` pair beside an uncompressed ``x.hdr`` or ``x.img`` (ITK would read the
    new pair with the old file, see :func:`_uncompressed_pair_beside`). From
    ``image``'s dimension, size and direction (not its pixels): a volume to a 2D format (.png, .jpg, .bmp) or
    to JPEG 2000 (written as its first slice, or ITK crashed), an image that is not a volume of several slices
    to LSM (unreadable), a sheared direction to NIfTI, a 4D image to MINC (ITK's writer crashed).

    Args:
        path: the output file.
        image: the image to be written, or one on its grid (the fixed or reference image); None: the name only.
        pixel_type: the pixel ID the output will have, where known before the work (see
            :func:`check_output_pixels`); None: not checked.

    Returns:
        ``path`` as a string.

    Raises:
        InputError: naming the problem and a name that works.
    """
    final = os.fspath(path)
    if os.path.isdir(final):  # as atomic_path says it, not as a name without an extension
        raise InputError(f"The output '{final}' is a folder, not a file.", "Give a file name for the output.")
    suffix = _read_suffix(final)
    given = final[len(final) - len(suffix):]
    if suffix == ".nia":
        raise InputError(f"'{final}': ITK writes .nia files (NIfTI as ASCII text) but cannot read them back.",
                         _ANY_IMAGE_FIX)
    if suffix not in _OUTPUT_CASES:
        inner = _suffix(final[:-len(suffix)]) if suffix == ".gz" else ""
        if inner in _OUTPUT_CASES:  # .nrrd.gz, .mha.gz: the format's own compression is meant
            raise InputError(f"No image format is written as '{final}' (extension '.gz'): of the compressed names, "
                             "only .nii.gz, .gipl.gz and an Analyze/NIfTI pair's .hdr.gz/.img.gz are written.",
                             "Name the output .nii.gz, or .nrrd or .mha (which compress the voxels inside the file).")
        raise InputError(f"No image format is written as '{final}' (extension '{suffix or 'none'}').", _ANY_IMAGE_FIX)
    if suffix == ".nhdr" and os.path.basename(final)[1:2] == ":":
        # ITK's NRRD writer names the data file by the header's name ('c:d.raw.gz', 'o:=p.raw.gz') and takes it, as
        # teem's reader does, for a path from a Windows drive ('c:'): the voxels went into the current folder, not
        # beside the header (which then read back only from that folder, else "couldn't open")
        raise InputError(f"'{final}': a detached NRRD header's data file is named after it "
                         f"('{os.path.basename(final)[:-len(suffix)]}.raw.gz'), and a name whose second character is "
                         "':' is taken by ITK and Slicer for a path from a Windows drive ('c:'): the voxels would be "
                         "written into the current folder, not beside the header, and not be found from elsewhere.",
                         "Name the output without ':' as its second character, or as a single file (.nrrd).")
    if suffix in _PAIR_PARTS and final.lower()[:-len(suffix)].endswith((".nii", ".nii.gz")):
        # ITK writes 'x.nii.hdr' as the one file 'x.nii' ('x.nii.hdr.gz' as 'x.nii.gz'): the check that the pair was
        # written whole then found no 'x.nii.hdr' and refused it as "a full disk"
        single = final[:-len(suffix)]
        if suffix.endswith(".gz") and not single.lower().endswith(".gz"):
            single += ".gz"
        raise InputError(f"'{final}': ITK writes '{os.path.basename(final)}' as the single NIfTI file "
                         f"'{os.path.basename(single)}', not as the .hdr/.img pair the name asks for.",
                         f"Name the output '{os.path.basename(single)}' (one file), or end it in .hdr without "
                         "'.nii' before it (a pair).")
    cases = _OUTPUT_CASES[suffix]
    if given != suffix and not (cases == "any" or (cases == "lower or upper" and given == suffix.upper())):
        raise _lower_case_only(final, "writes" if suffix in (*_PAIR_PARTS, ".gipl.gz") else "reads",
                               upper_too=cases == "lower or upper")
    if suffix in (".hdr.gz", ".img.gz"):
        _uncompressed_pair_beside(final)
    if suffix == ".nii.gz":
        _uncompressed_single_file_beside(final)
    if image is None:
        if pixel_type is not None and suffix not in _2D_EXTENSIONS:  # those are converted (see _for_2d_format)
            check_output_pixels(final, pixel_type)
        return final
    size = tuple(image.GetSize())
    volume = image.GetDimension() == 3 and size[2] != 1
    if suffix in _2D_EXTENSIONS and volume:
        raise InputError(f"'{final}' is a 2D format but the image is a volume (size {size}).",
                         "Write volumes as .nii.gz, .nrrd or .mha.")
    if suffix in (".jp2", ".j2k") and image.GetDimension() != 2:
        # ITK writes the first slice (and crashed on some volumes); a one-slice volume is read back as 2D, unplaced
        raise InputError(f"'{final}': ITK writes this image (size {size}) as a {suffix} file of size {size[:2]}: "
                         "it would be read back as another image.",
                         "Write volumes as .nii.gz, .nrrd or .mha; JPEG 2000 holds 2D images only.")
    if suffix == ".lsm" and not volume:
        raise InputError(f"'{final}': ITK writes an image of one slice (size {size}) as a .lsm file that it cannot "
                         "read back (LSM holds volumes of several slices).", _ANY_IMAGE_FIX)
    if suffix in (".mnc", ".mnc2") and image.GetDimension() > 3:
        # ITK's MINC writer ends the process on any 4D image (SIGSEGV, scalar or vector, before writing a byte)
        raise InputError(f"'{final}': ITK's MINC writer crashes the program on a {image.GetDimension()}D image "
                         f"(size {size}); it writes 2D and 3D images only.",
                         "Write it as .nrrd, .mha or .nii.gz, which hold 4D images, or write each 3D volume as .mnc.")
    if suffix in (".nii", ".nii.gz") and not _orthonormal(image):
        raise InputError(f"'{final}': NIfTI cannot store this image's sheared (non-orthonormal) direction "
                         f"{[round(v, 4) for v in image.GetDirection()]}; it would be written as another one.",
                         "Write it as .mha, which keeps the direction exactly (see io.volume_extension).")
    if pixel_type is not None and suffix not in _2D_EXTENSIONS:  # those are converted (see _for_2d_format)
        check_output_pixels(final, pixel_type, 2 if not volume else 3)
    return final


def write_image(image: sitk.Image, path: str | os.PathLike, *, compress: bool = True) -> str:
    """Write ``image`` atomically, its values and geometry kept as far as the format allows.

    PNG/JPEG/BMP: integer values in 0..255 are kept exactly (16-bit PNG up to 65535), grey values on
    the 0..255 scale rounded, others rescaled with a warning; a volume is refused. NIfTI cannot hold
    a non-orthonormal (sheared) direction: such an image is refused there (.mha keeps it). An image's DICOM Units
    (:func:`dicom_units`) go into a NIfTI's BIDS JSON sidecar (:func:`bids_sidecar_path`; an existing one keeps its
    other keys, and an image without units removes the Units it states, with a warning); written to a file whose
    header, read back, states none (TIFF, VTK, MINC...): a warning (.nrrd, .mha, HDF5 and DICOM keep them). The name is checked first, as :func:`check_output_name` checks
    it (front ends call that before the work).

    Returns:
        The path written.

    Raises:
        InputError: a name :func:`check_output_name` refuses, pixels the format cannot hold, or an unwritable
            file.
    """
    image = plain_labels(image)  # a label map's voxels cannot be read or written (it aborted the process as .png)
    final = check_output_name(path, image, pixel_type=image.GetPixelID())
    out = image
    suffix = _read_suffix(final)
    # warnings' texts (what the file keeps, how it is written), issued once the image (and its sidecar) are in place:
    # with warnings turned into errors (python -W error) one issued before had stopped the write, though it says
    # what is written
    notes: list[str] = []
    if suffix in _2D_EXTENSIONS:
        out = _for_2d_format(image, final, notes)
    elif suffix in (".nii", ".nii.gz") and image.GetNumberOfComponentsPerPixel() > 1 and one_slice_axis(image) == 2:
        # ITK writes it right (dim 5: x, y, 1, 1, colour) but reads it back as a 2D image, without its slice's
        # position: an overlay of a one-slice volume would be shown away from its inputs
        raise InputError(f"'{final}': a colour image of one slice (size {image.GetSize()}) written as NIfTI is read "
                         "back (by ITK, hence Slicer and this package) as a 2D image, without its slice's position.",
                         "Write it as .nrrd or .mha, which keep it a one-slice volume in place.")
    if suffix in UNPLACED_EXTENSIONS + UNTURNED_EXTENSIONS and suffix not in _2D_EXTENSIONS:
        _warn_geometry_lost(image, final, suffix in UNTURNED_EXTENSIONS, notes)
    if compress and suffix in (".dcm", ".dicom"):
        compress = _dicom_compressible(out, final, notes)
    tensor = tensors.tensor_kind(image) is not None
    if tensor:  # in the file's component order and measurement frame; the header says "tensor" once written
        out = tensors.to_file(image, suffix)
        if suffix not in tensors.TAGGED_SUFFIXES:
            notes.append(f"'{final}': no tensor type is written to {suffix} files: the tensors are written as a "
                         f"vector image of {image.GetNumberOfComponentsPerPixel()} components (xx, xy, xz, yy, yz, "
                         "zz for a symmetric one, in LPS), which Slicer does not show as a DTI volume. Write .nrrd "
                         "(or .nii.gz) to keep them tensors.")
    if suffix in (".mnc", ".mnc2") and _itk_minc_unconverted():  # (after to_file, which takes image's)
        vectors = _minc_vectors(out, final, writing=True, notes=notes)
        out = _swap_ras_lps(out, bool(vectors))  # written in MINC's RAS, as MNI's tools read it (see _RAS_LPS)
        if vectors is not None:  # (out is a copy) said in the file, for read_image to take them back the same way
            out.SetMetaData(_MINC_COMPONENTS_KEY, "vector" if vectors else "channels")
    staged = suffix in _TWO_FILES
    sidecar: tuple[str, str | None] | None = None
    made = _missing_folders(os.path.dirname(os.path.abspath(final)))  # the folders the write makes
    try:
        with (staged_output(final) if staged else atomic_output(final)) as tmp:
            if suffix in (".jpg", ".jpeg"):
                _room_for_jpeg(out, final, tmp)
            elif suffix in _HDF5_IMAGE_EXTENSIONS:
                _room_for_hdf5_image(out, final, tmp)
            try:
                with itk_guard(f"writing '{final}'", "Check the folder is writable and the extension is supported."):
                    sitk.WriteImage(out, tmp, compress and _suffix(final) not in _2D_EXTENSIONS)
            except InputError as exc:
                if suffix in _TWO_FILES and _not_lower_case(final) and (
                        "Unable to determine ImageIO writer" in str(exc) or "file name" in str(exc)):
                    # staged under the name as given (the others under a lower-case temporary name): 'x.HDR' is
                    # "Bad Nifti file name", 'x.Hdr' has no writer
                    raise _lower_case_only(final, "writes") from exc
                if "Unable to determine ImageIO writer" in str(exc):  # ITK names the temporary file, not the output
                    raise InputError(f"No image format is written as '{final}' (extension "
                                     f"'{_suffix(final) or 'none'}').",
                                     _ANY_IMAGE_FIX) from exc
                stopped = _stopped_by_disk(final, tmp, str(exc.problem), staged=staged, need=_most_image_bytes(out))
                if stopped is not None:
                    raise stopped from exc
                raise InputError(str(exc.problem).replace(tmp, final), exc.fix) from exc
            if suffix in (".nii", ".nii.gz", *_PAIR_PARTS) and not _nifti_written_whole(tmp):
                # ITK's NIfTI writer reports no write error (it prints "** ERROR: NWAD: wrote only 0 of ... bytes"
                # and returns): on a full disk the output was a cut-off file, and the command said it wrote it
                raise _written_cut_short(final, tmp, "NIfTI", staged=staged)
            if suffix in _RAW_LAYOUTS:
                # nor do its GIPL (.gipl, .gipl.gz) and BMP writers: a file cut at the size limit was the output
                try:
                    _check_complete(tmp)
                except InputError as exc:
                    writer = {".gipl": "GIPL", ".gipl.gz": "GIPL", ".pic": "BioRad PIC"}.get(suffix, suffix[1:].upper())
                    raise _written_cut_short(final, tmp, writer, staged=staged) from exc
            if suffix in (".tif", ".tiff", ".lsm"):
                _check_tiff_written_whole(final, tmp, out)
            if suffix == ".j2k" and not _j2k_written_whole(tmp):
                # nor does its JPEG 2000 writer for a bare codestream (.jp2's reports it): cut at the size limit, it was
                # the output, and no reader opened it ("opj_decode_tile_data returns false")
                raise _written_cut_short(final, tmp, "JPEG 2000", staged=staged)
            if suffix == ".spr":
                _name_stimulate_data_file(tmp)
                if not _stimulate_written_whole(tmp):  # nor does its Stimulate writer: x.sdt cut at the size limit
                    raise _written_cut_short(final, tmp, "Stimulate", staged=staged)
            units = dicom_units(image)
            header_units = _check_reads_back(tmp, final, out)
            if suffix not in (".nii", ".nii.gz") and header_units != units and units:
                # a PET's Units (BQML...), which resample and the rest keep, had been dropped without a word by
                # `mmfusion resample -o x.nii.gz` and run's resampled moving image in NIfTI
                notes.append(f"'{final}': a {suffix} file keeps no DICOM Units (0054,1001): the values are written "
                             f"in {units} as they are, but read back nothing states it (a window in SUV is then "
                             "checked, and the web's SUV windows offered, by the values alone); write .nrrd or .mha "
                             "to keep them (or .nii.gz, which keeps them in its BIDS JSON sidecar).")
            if tensor and suffix in tensors.TAGGED_SUFFIXES:
                tensors.tag_written_file(tmp, suffix, image)
            if suffix in (".nii", ".nii.gz"):  # a NIfTI's: in the BIDS sidecar beside it, as PET-BIDS keeps them
                sidecar = _stage_sidecar_units(final, units, notes)  # put in place after the image
        if sidecar is not None:
            _commit_sidecar(final, sidecar)
            sidecar = None
    finally:
        if sidecar is not None and sidecar[1] is not None and os.path.exists(sidecar[1]):
            os.remove(sidecar[1])  # the image failed: its sidecar is left as it was
            # and the folders the write made, which the staged sidecar had kept from being removed as empty
            _remove_empty(made)
    # the notes once the files are in place: warnings turned into errors (python -W error) had stopped the write
    # before the image was renamed into place, though their text says it is written
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return final


#: The most bytes a JPEG file takes per 8x8 block of one component: 64 coefficients of at most 16 bits of Huffman
#: code, 11 of value and 2 of progressive refinement (ITK writes progressive JPEG: up to 10 scans), with the end-of-band
#: and zero-run codes of each scan (253 bytes), doubled for the 0x00 stuffed after every 0xFF byte
_JPEG_BLOCK_BYTES = 600
#: and for what is not blocks: the markers, quantisation and Huffman tables of each scan
_JPEG_HEADER_BYTES = 1 << 16


def _room_for_jpeg(image: sitk.Image, final: str, tmp: str) -> None:
    """Refuse a JPEG output, before ITK writes it, that may not fit (see :func:`_check_room`): libjpeg, in ITK's JPEG
    writer, ends the whole process on a write error ("Output file write error --- out of disk space?", exit status
    1), which inside Slicer took the application down. At most 600 bytes an 8x8 block of each component (see
    ``_JPEG_BLOCK_BYTES``): 2.5 MB for a 512x512 grey image, whose files measured at most 0.3 MB (random noise at
    quality 100)."""
    width, height = image.GetSize()[:2]
    blocks = 4 * -(-width // 16) * -(-height // 16)  # 16x16 macroblocks: the chroma's are subsampled, counted whole
    bound = blocks * image.GetNumberOfComponentsPerPixel() * _JPEG_BLOCK_BYTES + _JPEG_HEADER_BYTES
    _check_room(final, tmp, bound, f"a JPEG file of this {width}x{height} image",
                "ITK's JPEG writer ends the whole program when the disk fills", "as .png")


#: ITK's HDF5 image writers (its HDF5 format and MINC 2, which is HDF5 inside)
_HDF5_IMAGE_EXTENSIONS = (".h5", ".hdf5", ".hdf", ".hd5", ".hdf4", ".he4", ".he5", ".mnc", ".mnc2")
#: What an HDF5 or MINC image file holds besides its voxels: the file's superblock and ITK's groups (geometry,
#: version: 13-14 KB measured), per chunk (ITK's HDF5 writer: one a row in 2D, one a slice in 3D) its index entry
#: (55-86 bytes measured), per metadata entry its dataset's header (~400 bytes) and text
_HDF5_FILE_BYTES = 1 << 16
_HDF5_CHUNK_BYTES = 128
_HDF5_ENTRY_BYTES = 512


def _room_for_hdf5_image(image: sitk.Image, final: str, tmp: str) -> None:
    """Refuse an HDF5 (``.h5``, ``.hdf5``...) or MINC (``.mnc``, ``.mnc2``) image output, before ITK writes it, that
    may not fit (see :func:`_check_room`): the HDF5 library inside ITK ends the process on a write error (SIGABRT,
    "terminate called after throwing an instance of 'H5::DataSetIException'"), or (MINC) leaves it in a state that
    crashes it later (SIGSEGV at exit); a cut temporary file was left. The bound: the voxels uncompressed (ITK's
    deflate is dropped for a chunk it does not shrink: random bytes were written at their raw size), plus what
    ``_HDF5_FILE_BYTES``, ``_HDF5_CHUNK_BYTES`` and ``_HDF5_ENTRY_BYTES`` say; measured within 14-23 KB of the
    voxels for 8x8 to 256x256x100 images of 1-9 components of 8- to 64-bit values (1.3 MB for 20000 slices of 2x2)."""
    size = image.GetSize()
    voxels = int(np.prod(size, dtype=np.int64)) * image.GetNumberOfComponentsPerPixel() * \
        _component_bytes(image.GetPixelID())
    chunks = size[-1]  # along the last axis: rows in 2D, slices in 3D
    metadata = sum(_HDF5_ENTRY_BYTES + 2 * (len(key) + len(image.GetMetaData(key)))
                   for key in image.GetMetaDataKeys())
    bound = voxels + chunks * _HDF5_CHUNK_BYTES + metadata + _HDF5_FILE_BYTES
    label = "a MINC" if _read_suffix(final) in (".mnc", ".mnc2") else "an HDF5"
    _check_room(final, tmp, bound, f"{label} file of this {'x'.join(map(str, size))} image",
                "The HDF5 library inside ITK ends (or breaks) the whole program when the disk fills",
                "as .nii.gz, .nrrd or .mha")


def _component_bytes(pixel_id: int) -> int:
    """Bytes of one value of a ``sitk.sitk*`` pixel type (a complex one's two parts: both)."""
    name = sitk.GetPixelIDValueAsString(pixel_id)
    bits = {"8-bit": 1, "16-bit": 2, "32-bit": 4, "64-bit": 8}
    count = next((n for word, n in bits.items() if word in name), 8)
    return 2 * count if "complex" in name else count


def _check_room(final: str, tmp: str, bound: int, what: str, why: str, other: str) -> None:
    """Refuse an output, before ITK writes it, where the file size limit (``ulimit -f``) or the room on its disk
    (reserved for the temporary file ``tmp``, and given back before ITK writes) is less than ``bound``, the most
    ``what`` can take: for ITK writers that end (or break) the whole process on a write error (``why``), where a
    clear refusal beforehand is the only one the user can get. The limit is compared arithmetically (before any
    write, so no SIGXFSZ), the disk by posix_fallocate (quotas included), else by its free space. A disk filled by
    another program while the file is written still ends the process.

    Args:
        final: the output, as the user named it.
        tmp: the temporary file it is written to first (exists, empty).
        bound: the most bytes the file can take.
        what: the file, e.g. "a JPEG file of this 400x400 image".
        why: what the writer does on a full disk, e.g. "ITK's JPEG writer ends the whole program when the disk fills".
        other: an output name that is not refused so, e.g. "as .png".
    """
    import errno

    folder = os.path.dirname(os.path.abspath(tmp))
    short, fix = None, f"Free space on that disk, or write the output to another one (or {other})."
    limit = _file_size_limit()
    if limit is not None and limit < bound:
        short = f"the file size limit is {limit} bytes (ulimit -f)"
        fix = f"Raise the file size limit (ulimit -f), or write the output {other}."
    if short is None:
        try:
            with open(tmp, "r+b") as fh:
                os.posix_fallocate(fh.fileno(), 0, bound)  # the disk's room, quotas included
                fh.truncate(0)
        except (AttributeError, OSError) as exc:  # AttributeError: no posix_fallocate (macOS, Windows)
            refused = isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG,
                                                                  getattr(errno, "EDQUOT", errno.ENOSPC))
            free = shutil.disk_usage(folder).free
            if refused or free < bound:  # else a file system without fallocate: its free space is the room
                short = f"{free} bytes are free there"
    if short is not None:
        raise InputError(f"Cannot write '{final}': {what} may take up to {bound} bytes and {short}. {why}, so it is "
                         "not started.", fix)


def _j2k_written_whole(path: str) -> bool:
    """Whether a JPEG 2000 codestream (``.j2k``) just written ends with its end-of-codestream marker (0xFFD9)."""
    with open(path, "rb") as fh:
        if fh.read(2) != b"\xff\x4f":  # not a codestream (its start-of-codestream marker): left to ITK
            return True
        fh.seek(0, os.SEEK_END)
        if fh.tell() < 4:
            return False
        fh.seek(-2, os.SEEK_END)
        return fh.read(2) == b"\xff\xd9"


def _file_size_limit() -> int | None:
    """This process's file size limit (``ulimit -f``, RLIMIT_FSIZE) in bytes; None where there is none (Windows)."""
    try:
        import resource
    except ImportError:  # Windows: no file size limit
        return None
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return None if limit == resource.RLIM_INFINITY else int(limit)


#: ITK's words (and the C library's, which it passes on) for a write that a full disk or the file size limit stopped
_DISK_WORDS = re.compile(r"File too large|No space left|out of disk space|Disk quota exceeded", re.IGNORECASE)


def _most_image_bytes(image: sitk.Image) -> int:
    """The most bytes an image file of ``image`` takes in any format ITK writes: its voxels uncompressed, an eighth
    more (PNG's filter byte a row, TIFF's strip tables, deflate's worst case on random data) and 64 KiB of header
    (DICOM's is the largest, a few KB)."""
    voxels = int(np.prod(image.GetSize(), dtype=np.int64)) * image.GetNumberOfComponentsPerPixel() * \
        _component_bytes(image.GetPixelID())
    return voxels + voxels // 8 + (1 << 16)


def _short_of_room(free: int, need: int, written: int) -> bool:
    """Whether a failed write can have been stopped by the disk filling, by its room left: ``free`` bytes free on it
    after the failure, less than 1 MiB (a full disk keeps some for its own use: 0 measured on tmpfs) and less than
    the ``need - written`` bytes the file still needed at most (``need``: the most it takes, ``written``: what it
    holds). A write that failed for another reason on a nearly full disk (a pixel type the format does not hold,
    with 900 KB free and 80 KB to write) had been said to be the disk's fault."""
    return free < min(1 << 20, need - written)


def _written_sizes(tmp: str, staged: bool = False) -> list[int]:
    """The sizes of the files a write made: ``tmp``, or with ``staged`` every file in its staging folder (a detached
    header's data file, an Analyze pair's other half)."""
    folder = os.path.dirname(os.path.abspath(tmp))
    written = [os.path.join(folder, name) for name in os.listdir(folder)] if staged else [tmp]
    return [os.path.getsize(name) for name in written if os.path.isfile(name)]


def _limit_reached(sizes: Sequence[int]) -> int | None:
    """The file size limit (``ulimit -f``) where one of the files of these ``sizes`` reached it, else None: the one
    rule by which a failed or cut-short write is blamed on the limit rather than the disk."""
    limit = _file_size_limit()
    return limit if limit is not None and any(size >= limit for size in sizes) else None


def _stopped_by_disk(final: str, tmp: str, said: str, *, need: int, staged: bool = False) -> InputError | None:
    """The error for an ITK write that failed (``said``: its reason) because the disk filled or a file reached the
    file size limit, or None where neither did. ITK's writers say so in their own words, or not at all: MetaImage
    and PNG "Reason: File too large", TIFF/LSM "error out of disk space", NRRD "failed to write to file", VTK and
    MRC "Could not write file", DICOM "DICOM does not support this component type" (a wrong reason), each with
    the fix "Check the folder is writable and the extension is supported". Told by the words, by a file written
    (``tmp``; with ``staged``, every file in its staging folder) having reached the file size limit
    (:func:`_limit_reached`), or by the disk having too little room left for the rest of the file (see
    :func:`_short_of_room`; ``need``: the most bytes the output takes)."""
    free = shutil.disk_usage(os.path.dirname(os.path.abspath(tmp))).free
    sizes = _written_sizes(tmp, staged)
    limit = _limit_reached(sizes)
    if not (limit is not None or _short_of_room(free, need, sum(sizes)) or _DISK_WORDS.search(said)):
        return None
    said = said.replace(tmp, final).split("': ", 1)[-1] if said.startswith("ITK failed while") else said
    if limit is not None:
        return InputError(f"Cannot write '{final}': the file reached the file size limit ({limit} bytes, ulimit -f) "
                          f"and ITK stopped writing it: {said}",
                          "Raise the file size limit (ulimit -f), or write a smaller output.")
    return InputError(f"Cannot write '{final}': the disk is full ({free} bytes free there; or a quota or file size "
                      f"limit was reached), and ITK stopped writing it: {said}",
                      "Free space on that disk, or write the output to another one.")


def _check_tiff_written_whole(final: str, tmp: str, image: sitk.Image) -> None:
    """Refuse a TIFF or LSM file (``tmp``, to be ``final``) that ITK's writer left cut short without reporting it, as
    the disk or the file size limit: its LSM writer returns when libtiff cannot write the file's header ("Error
    writing TIFF header", printed): on a full disk an empty file had been refused as one "ITK writes but cannot read
    back"; and both report no failure to write a slice or its directory ("IO error writing directory"): a 64x64x32
    volume cut there had been refused as "read back as another image" of 31 slices. Told by a file without its
    header, a directory or strip past its end, or fewer directories than slices."""
    writer = "LSM" if _read_suffix(final) == ".lsm" else "TIFF"
    slices = image.GetSize()[2] if image.GetDimension() == 3 else 1
    try:
        if os.path.getsize(tmp) < 8:
            raise InputError(f"'{final}': no TIFF header.")
        pages = _check_tiff_complete(tmp)
        if pages is not None and pages < slices:  # the last slices' data or directories not written
            raise InputError(f"'{final}': {pages} of {slices} slices.")
    except InputError:
        said = f"ITK's {writer} writer left the file cut short without reporting it."
        stopped = _stopped_by_disk(final, tmp, said, need=_most_image_bytes(image))
        raise stopped or _written_cut_short(final, tmp, writer) from None


def _written_cut_short(final: str, tmp: str, writer: str, staged: bool = False) -> InputError:
    """The error for an output ITK's ``writer`` stopped writing before its end without reporting it: the file size
    limit where a file written reached it (:func:`_limit_reached`, the rule :func:`_stopped_by_disk` follows), else
    a full disk. "A full disk or a file size limit; 79565365248 bytes free there" had sent a user at the limit to
    free space, and then any limit set (1 GiB, a file cut at 10 bytes by a full disk) had been named as the cause."""
    free = shutil.disk_usage(os.path.dirname(os.path.abspath(tmp))).free
    limit = _limit_reached(_written_sizes(tmp, staged))
    if limit is not None:
        return InputError(f"Cannot write '{final}': ITK's {writer} writer stopped before the end of the file (the file "
                          f"size limit is {limit} bytes (ulimit -f), which the file reached).",
                          "Raise the file size limit (ulimit -f), or write a smaller output.")
    return InputError(f"Cannot write '{final}': ITK's {writer} writer stopped before the end of the file (a full disk; "
                      f"{free} bytes free there).",
                      "Free space on that disk, or write the output to another one.")


#: ITK's DICOM writer compresses (JPEG 2000, lossless) 8- and 16-bit grey slices of at least this many pixels a side
_DICOM_COMPRESSED_SIDE = 16


def _dicom_compressible(image: sitk.Image, final: str, notes: list[str] | None = None) -> bool:
    """Whether ITK's DICOM writer (GDCM, JPEG 2000 lossless) can compress ``image``; where not, a warning that it is
    written uncompressed. Small slices crashed the process (SIGSEGV or SIGABRT, the heap corrupted: measured with
    SimpleITK 2.5 in 2D at 1x1 to 8x8 8-bit, to 6x6 16-bit, in 3D to 9x9 a slice, and any slice 1 pixel wide,
    e.g. 1x512), while 16x16 and up were written and read back equal; and GDCM compresses no 32-bit integer or
    colour pixels ("Could not change the Transfer Syntax for Compression"). Written uncompressed, each is read
    back equal. ``notes``: where given, the warning's text goes there instead."""
    size = image.GetSize()
    grey = image.GetPixelID() in (sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16)
    if grey and min(size[:2]) >= _DICOM_COMPRESSED_SIDE:
        return True
    why = (f"its slices ({size[0]}x{size[1]}) are under {_DICOM_COMPRESSED_SIDE}x{_DICOM_COMPRESSED_SIDE} "
           "pixels, which ITK's JPEG 2000 compression crashed on") if grey else \
        f"ITK compresses no {image.GetPixelIDTypeAsString()} pixels in DICOM"
    _warn_or_note(f"'{final}': written uncompressed: {why}.", notes, stacklevel=3)
    return False


def _not_lower_case(path: str) -> bool:
    suffix = _read_suffix(path)
    return bool(suffix) and not path.endswith(suffix)


def _lower_case_only(final: str, verb: str, upper_too: bool = False) -> InputError:
    """``final``'s extension refused for its case: ITK ``verb``s ("reads", "writes") such files by the extension in
    lower case only (``upper_too``: or in upper case)."""
    suffix = _read_suffix(final)
    given = final[len(final) - len(suffix):]
    written = (" (written so, ITK's reader would not open it by that name: this package reads such a file, "
               "other ITK-based tools may not)") \
        if verb == "reads" else ""
    cases = f"in lower case only (or {suffix.upper()})" if upper_too else "in lower case only"
    return InputError(f"'{final}': ITK {verb} {suffix} files by the extension {cases}, not "
                      f"'{given}'{written}.",
                      f"Name the output '{os.path.basename(final)[:-len(suffix)]}{suffix}'.")


def _name_stimulate_data_file(header: str) -> None:
    """Make a Stimulate header (``x.spr``) name its data file (``x.sdt``) by its name alone: ITK writes the path it
    was given (``stimFileName: /folder/.mmf-staging-.../x.sdt``), and its reader opens that path first, so the
    header pointed at the staging folder, gone once the pair was moved into place (written to a temporary
    name before, it named a hidden '.mmf-tmp-....sdt' left beside it). A bare name is read beside the header."""
    with open(header, encoding="latin-1") as fh:
        lines = fh.read().splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith("stimFileName:"):
            named = line.split(":", 1)[1].strip()
            lines[i] = f"stimFileName: {os.path.basename(named)}\n"
    with open(header, "w", encoding="latin-1") as fh:
        fh.write("".join(lines))


#: Bytes per value of Stimulate's data types (its header's ``dataType``)
_STIMULATE_BYTES = {"BYTE": 1, "WORD": 2, "LWORD": 4, "REAL": 4, "COMPLEX": 8}


def _stimulate_written_whole(header: str) -> bool:
    """Whether the data file (``x.sdt``, beside it) of the Stimulate header ``header`` just written holds the voxels
    its ``dim`` and ``dataType`` describe: ITK's writer reports no write error, and on a full disk a cut ``x.sdt``
    had been the output (its reader then fails: "Wanted 524288 bytes, but read 100000 bytes")."""
    fields = {}
    with open(header, encoding="latin-1") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    try:
        count = int(np.prod([int(v) for v in fields["dim"].split()], dtype=np.int64))
        value_bytes = _STIMULATE_BYTES[fields.get("dataType", "").upper()]
        data = os.path.join(os.path.dirname(header), fields.get("stimFileName") or
                            os.path.basename(header)[:-len(".spr")] + ".sdt")
        return os.path.getsize(data) >= count * value_bytes
    except (KeyError, ValueError, OSError):
        return False


def _check_reads_back(written: str, final: str, image: sitk.Image) -> str:
    """Refuse an output ITK wrote but cannot read back as ``image`` (its header read, not its voxels); return the
    DICOM Units (:func:`dicom_units`) the header read back states ("" where none).

    ITK's writers and readers do not agree on every name: the MetaImage, GIPL, Stimulate, JPEG 2000 and MINC
    readers take the extension in lower case only (``-o fused.GIPL`` was written, then refused by every reader:
    "Unable to determine ImageIO reader"), NIfTI's ``.nia`` (ASCII) is written and never read, and the JPEG 2000
    writer keeps one slice of a volume.
    """
    suffix = _read_suffix(final)
    given = final[len(final) - len(suffix):]
    alias = None
    if not written.endswith(given):  # a temporary file, named in lower case: read under the name as given
        alias = f"{written[:-len(suffix)]}-as{given}"
        try:
            os.link(written, alias)
        except OSError:  # no hard links here (FAT, some network shares)
            os.symlink(os.path.abspath(written), alias)
    reader = sitk.ImageFileReader()
    reader.SetFileName(alias or written)
    try:
        if not os.path.isfile(written):  # the MetaImage writer names 'x.MHD' 'x.mhd'
            raise RuntimeError(f"no file '{written}'")
        reader.ReadImageInformation()
    except RuntimeError as exc:
        if _not_lower_case(final):
            raise _lower_case_only(final, "reads") from exc
        raise InputError(f"'{final}': ITK writes {suffix} files but cannot read them back "
                         f"({itk_reason(str(exc)).replace(written, final)})",
                         _ANY_IMAGE_FIX) from exc
    finally:
        if alias is not None and os.path.lexists(alias):
            os.remove(alias)
    size = list(reader.GetSize())
    want = list(image.GetSize())
    while len(size) > len(want) and size[-1] == 1:  # a 2D image as a one-slice volume (GIPL, MRC)
        size.pop()
    if size != want:  # (not its components: a grey BMP is read back as RGB, from its palette)
        raise InputError(f"'{final}': ITK writes this image (size {tuple(want)}) as a {suffix} file of size "
                         f"{tuple(reader.GetSize())}: it would be read back as another image.",
                         _ANY_IMAGE_FIX)
    return _units_code(reader.GetMetaData(UNITS_KEY)) if reader.HasMetaDataKey(UNITS_KEY) else ""


#: Headers whose voxels ITK writes to a second file named after the header (``x.nhdr`` + ``x.raw.gz``,
#: ``x.mhd`` + ``x.zraw``, ``x.hdr`` + ``x.img``, ``x.hdr.gz`` + ``x.img.gz``, Stimulate's ``x.spr`` + ``x.sdt``).
_DETACHED_HEADERS = (".nhdr", ".mhd", ".hdr", ".hdr.gz", ".spr")
#: Outputs ITK writes as two files named alike: those headers, and an Analyze/NIfTI pair named by its ``.img``
#: (``x.img`` + ``x.hdr``, ``x.img.gz`` + ``x.hdr.gz``; written as one temporary file, its header stayed as
#: ``.mmf-tmp-....hdr``).
_TWO_FILES = _DETACHED_HEADERS + (".img", ".img.gz")


@contextlib.contextmanager
def staged_output(final: str | os.PathLike) -> Iterator[str]:
    """:func:`atomic_output` for a file that may come with others named after it: yield a path of the final
    name in a hidden staging folder beside ``final``; when the block ends without an error, move what was
    written there into place, the other files first (a header's data file), then ``final``, each by a rename;
    on an error (or Ctrl-C) remove it all, leaving the folder as it was.

    Used for headers with a data file: written to a temporary name as one file, the header named the temporary
    data file (``data file: .mmf-tmp-x.raw.gz``, left beside it and one more at every rerun), and a ``.hdr``
    lost its voxels (its ``.img`` kept the temporary name); an ``x.img`` left its header as ``.mmf-tmp-....hdr``.
    Also for an output that must not appear before other work is done (``fuse -o F --report R``: F only with
    its report).

    Raises:
        InputError: the folder cannot be written, or a file other than ``final`` would replace one that is
            already there while ``final`` is not (another image's data file).
    """
    final = os.fspath(final)
    folder = os.path.dirname(os.path.abspath(final))
    with output_folder(folder):  # as atomic_output: a refused write leaves no new empty folder behind
        yield from _staged_in(final, folder)


def _staged_in(final: str, folder: str) -> Iterator[str]:
    """:func:`staged_output`'s work, in ``folder`` (``final``'s, made)."""
    tmp, _ = atomic_path(final)  # the same checks and errors as every other output (folder, permission)
    os.remove(tmp)
    stage = tempfile.mkdtemp(prefix=temporary_prefix("staging"), dir=folder)
    try:
        staged = os.path.join(stage, os.path.basename(final))
        try:
            yield staged
        except InputError as exc:  # name the file the user will look for, not its staged copy
            if type(exc) is not InputError or staged not in exc.problem:
                raise
            raise InputError(exc.problem.replace(staged, final), exc.fix) from exc
        data = [name for name in sorted(os.listdir(stage)) if name != os.path.basename(final)]
        for name in data:
            # x.mhd's x.raw may be another header's voxels (an input x.nhdr's): replaced only as x.mhd's own
            if os.path.exists(os.path.join(folder, name)) and not os.path.isfile(final):
                raise InputError(f"Writing '{final}' would replace '{os.path.join(folder, name)}', the data file (or "
                                 "header) it writes beside it, which is already there (another image's?).",
                                 f"Give the output another name, or remove '{name}' if nothing uses it.")
        try:
            for name in data:  # the data file(s) first: the header then names a whole file
                os.replace(os.path.join(stage, name), os.path.join(folder, name))
            os.replace(staged, final)
        except OSError as exc:
            raise InputError(f"Cannot write '{final}' ({exc.strerror or exc}).",
                             "Give an output path you can write to.") from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _uncompressed_pair_beside(final: str) -> None:
    """Refuse a compressed Analyze/NIfTI pair output (``x.hdr.gz`` + ``x.img.gz``) where an uncompressed ``x.hdr`` or
    ``x.img`` lies beside it: ITK's NIfTI reader (nifti1_io, hence Slicer and this package) looks for ``x.img`` before
    ``x.img.gz`` and ``x.hdr`` before ``x.hdr.gz``, so the new pair would be read with the old file's voxels or
    header (measured: a 6x5x3 image of 3s written beside a 6x5x4 pair of 1s read back as 6x5x3 of 1s)."""
    base = final[:-len(_read_suffix(final))]
    found = [base + ext for ext in (".hdr", ".img") if os.path.isfile(base + ext)]
    if found:
        names = " and ".join(f"'{os.path.basename(name)}'" for name in found)
        raise InputError(f"'{final}': {names} {'lie' if len(found) > 1 else 'lies'} beside it, and ITK's NIfTI reader "
                         "(hence Slicer and this package) takes an uncompressed .hdr/.img before the .hdr.gz/.img.gz of "
                         "the same name: the output would be read back with that file's header or voxels, not its own.",
                         f"Give the output another name, or remove {names} if nothing uses them (or write "
                         f"'{os.path.basename(base)}.hdr', uncompressed, to replace them).")


def _uncompressed_single_file_beside(final: str) -> None:
    """Refuse an ``x.nii.gz`` output where an ``x.nii`` lies beside it: ITK's NIfTI reader (hence Slicer, and
    sitk.ReadImage) takes the new file's header with the old file's voxels (see :func:`_single_file_beside`), the
    only stale neighbour that changes what a NIfTI or Analyze output reads back as (measured over every pair of
    .nii, .nii.gz, .hdr, .img, .hdr.gz, .img.gz names written one beside the other; a .hdr.gz/.img.gz pair beside an
    uncompressed one is :func:`_uncompressed_pair_beside`'s). The old file is not removed: it may be an input."""
    beside = _nii_beside(final)
    if beside is None:
        return
    base, spelt = final[:-len(".nii.gz")], final[-len(".nii.gz"):]
    name = os.path.basename(beside)
    raise InputError(f"'{final}': '{name}' lies beside it, and ITK's NIfTI reader (hence Slicer and sitk.ReadImage) "
                     f"reads a .nii.gz's voxels from the .nii of the same name first: the output would be read back "
                     f"with '{name}''s voxels under its own header, not its own image.",
                     f"Give the output another name, or remove '{name}' if nothing uses it (or write "
                     f"'{os.path.basename(base)}{spelt[:-3]}', uncompressed, to replace it).")


def _nifti_written_whole(path: str) -> bool:
    """Whether the NIfTI file ``path``, just written by ITK, holds its header and every voxel it declares:
    its size (``.nii``) or gzip's size trailer (``.nii.gz``; ITK writes one gzip member); for a pair
    (``x.hdr`` + ``x.img``, either named) the ``.img``'s size, for a compressed pair (``x.hdr.gz`` + ``x.img.gz``)
    the ``.img.gz``'s size trailer."""
    import zlib

    suffix = _read_suffix(path)
    gz = suffix in (".nii.gz", ".hdr.gz", ".img.gz")
    try:
        if suffix in _PAIR_PARTS:  # the pair's voxels start the .img (ITK writes vox_offset 0)
            base, zipped = path[:-len(suffix)], ".gz" if gz else ""
            layout = _nifti_layout(_head(base + ".hdr" + zipped, 348), pair=True)
            if layout is None:
                return False
            data, expected = base + ".img" + zipped, layout[3] * layout[2]
            return _gzip_trailer_says(data, expected) if gz else os.path.getsize(data) >= expected
        layout = _nifti_layout(_head(path, 544))
        if layout is None:
            return False
        _, _, voxel_bytes, count, offset, _ = layout
        expected = offset + count * voxel_bytes
        if not gz:
            return os.path.getsize(path) >= expected
        return _gzip_trailer_says(path, expected)
    except (OSError, EOFError, zlib.error):
        return False


@contextlib.contextmanager
def _lower_case_name(path: str) -> Iterator[str]:
    """``path``, or where its extension is not lower case (``T.TFM``, ``T.Mat``: Windows and some PACS tools
    name files so) a link to it (a copy where links cannot be made) named with the lower-case extension: ITK
    picks its transform reader by the extension, in lower case only ("Could not create Transform IO object")."""
    suffix = _suffix(path)
    if not suffix or path.endswith(suffix):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="mmf-transform-") as folder:
        alias = os.path.join(folder, "transform" + suffix)
        try:
            os.symlink(os.path.abspath(path), alias)
        except OSError:  # no symbolic links (Windows without the privilege)
            shutil.copyfile(path, alias)
        yield alias


def read_transform(path: str | os.PathLike) -> sitk.Transform:
    """Read an ITK transform file (.tfm, .txt, .h5, .mat), as written by Slicer, elastix' transformix
    (ITK format), ANTs or this package, a MINC one (.xfm; several transforms in it composed in MNI's order), a
    displacement field image (.nii.gz, .nii, .nrrd, .nhdr, .mha, .mhd: ANTs' ``*Warp.nii.gz``, see
    :func:`_read_displacement_field`), or an elastix transform parameter file (``TransformParameters.0.txt``,
    with its chain of initial transforms; see :mod:`.elastix_transforms`)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"Transform file not found: '{path}'.", "Check the path.")
    if _suffix(path) in _FIELD_EXTENSIONS:
        return _read_displacement_field(path)
    from .elastix_transforms import is_elastix_parameter_file, read_elastix_transform

    if is_elastix_parameter_file(path):  # TransformParameters.0.txt: ITK's reader had refused it
        return read_elastix_transform(path)
    with _lower_case_name(path) as readable:
        try:
            if _suffix(path) == ".xfm":
                tx = _read_minc_transform(readable)
                if _itk_minc_unconverted():  # MINC's RAS to ITK's LPS (see _RAS_LPS)
                    tx = _swap_transform_ras_lps(tx)
            else:
                with itk_guard(f"reading transform '{path}'", "Give an ITK transform file (.tfm, .txt, .h5, .mat)."):
                    tx = sitk.ReadTransform(readable)
        except InputError as exc:
            raise InputError(str(exc.problem).replace(readable, path), exc.fix) from exc
    # A composite read from file nests its transforms; flatten a single one for convenience.
    if isinstance(tx, sitk.CompositeTransform) and tx.GetNumberOfTransforms() == 1:
        tx = tx.GetNthTransform(0)
        tx = tx.Downcast() if hasattr(tx, "Downcast") else tx
    elif hasattr(tx, "Downcast"):
        tx = tx.Downcast()
    return tx


#: image files read as a transform when they hold a displacement field (ITK's transform reader opens none of them)
_FIELD_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def _read_displacement_field(path: str) -> sitk.Transform:
    """A displacement field image as the transform it is (``sitk.DisplacementFieldTransform``: x -> x + u(x), u in
    physical LPS mm on the field's grid, fixed -> moving), as antsApplyTransforms reads ANTs' ``*Warp.nii.gz`` and
    ``*InverseWarp.nii.gz`` (and ITK's own readers a field written by ITK, Slicer or this package). ITK's transform
    reader opens no image file: ``--transform 1Warp.nii.gz --transform 0GenericAffine.mat``, antsRegistration's
    output in antsApplyTransforms' order, had been refused with "Could not create Transform IO object". A 3D NIfTI
    field of one slice, which ITK reads as 2D with 3 components, is read as 3D (:func:`_one_slice_nifti_field`).

    Raises:
        InputError: the image is no displacement field (not as many floating-point components as axes, or not
            2D or 3D): a grey image given as a transform, e.g. arguments in the wrong places; a field of signed
            integer vectors is named as such, with the way to a float one (unsigned ones, which hold no negative
            displacement, as an RGB image is, are named as images).
    """
    image = read_image(path, keep_color=True, keep_alpha=True)  # (an RGBA picture is refused below, not warned of)
    dim, components = image.GetDimension(), image.GetNumberOfComponentsPerPixel()
    kind = image.GetPixelIDTypeAsString()
    if dim == 2 and components == 3 and "unsigned" not in kind:
        image = _one_slice_nifti_field(path, image)  # antsRegistration -d 3's warp of one slice, read as 2D
        dim = image.GetDimension()
    if dim in (2, 3) and components == dim and "signed integer" in kind and "unsigned" not in kind:
        # a field in every way but its type had been called "an image ..., not a transform", hiding the one fix;
        # not an unsigned one: it holds no negative displacement (the cast keeps a -1 stored as 65535), and 8-bit
        # RGB is a colour image (mmfusion fuse --method overlay writes one), which had been offered the cast
        raise InputError(f"'{path}' holds {dim}D vectors of {image.GetPixelIDTypeAsString()} ({components} "
                         "components a voxel), and a displacement field must hold floating-point vectors (LPS mm, "
                         "fractions of a millimetre included): integers are not read as displacements (or it is a "
                         "colour image, not a transform).",
                         "If it is a displacement field in mm, write it as float32, e.g. with SimpleITK: "
                         "sitk.WriteImage(sitk.Cast(sitk.ReadImage(IN), sitk.sitkVectorFloat32), OUT) (ANTs and "
                         "this package write float fields); if it is an image, give the transform file there, or "
                         "check the order of the arguments.")
    if dim not in (2, 3) or components != dim \
            or image.GetPixelID() not in (sitk.sitkVectorFloat32, sitk.sitkVectorFloat64):
        raise InputError(f"'{path}' is an image ({dim}D, {components} component(s) of "
                         f"{image.GetPixelIDTypeAsString()} a voxel), not a transform: an image is read as a "
                         "transform only when it is a displacement field (as ANTs' *Warp.nii.gz: a 2D or 3D image "
                         "of floating-point vectors, as many components as axes, in LPS mm).",
                         "Give the transform file (mmfusion register writes DIR/transform.tfm, or .h5 when "
                         "deformable; ANTs *GenericAffine.mat or *Warp.nii.gz), or check the order of the arguments.")
    return sitk.DisplacementFieldTransform(sitk.Cast(image, sitk.sitkVectorFloat64))


def _one_slice_nifti_field(path: str, image: sitk.Image) -> sitk.Image:
    """``image`` (read from ``path`` as 2D, 3 components a voxel) as the one-slice 3D field its NIfTI-1 header
    describes (dim[3] 1, dim[4] 1, dim[5] 3: a 64x64x1 field of 3D vectors, as antsRegistration -d 3 writes the warp
    of one slice); ``image`` itself for any other file. ITK's NIfTI reader drops a last axis of length 1, so it read
    such a field as a 2D image of 3 components, its z spacing, z origin and the third column of its direction lost,
    and read_transform refused it as an image ("2D, 3 component(s)"), where the same field as .nrrd was read. The 3D
    grid is ITK's own reading of the same header with 2 slices (its choice of sform or qform, its LPS), so the
    field lies where a field of several slices with that header would; the vectors are those ITK read.

    antsApplyTransforms (ITK's reader into a 3D image) gives such a file z spacing 1 and z origin 0 instead: it moves
    a slice lying at z 0 (within half a millimetre) as this reading does, and one lying elsewhere not at all."""
    import struct

    found = _nifti1_header(path)
    if found is None or found[1][344:348] != b"n+1\0":  # a single file (.nii, .nii.gz)
        return image
    order, header = found
    dims = list(struct.unpack(order + "8h", header[40:56]))
    if not 5 <= dims[0] <= 7 or dims[3:6] != [1, 1, 3] or any(d > 1 for d in dims[6:dims[0] + 1]) \
            or tuple(dims[1:3]) != image.GetSize():
        return image
    dims[3] = 2  # ITK keeps the third axis of a header of 2 slices; only the header is read (no voxels)
    two_slices = header[:40] + struct.pack(order + "8h", *dims) + header[56:108] + struct.pack(order + "f", 352.0) \
        + header[112:348] + bytes(4)
    with _private_temp_folder("mmf-field-") as folder:
        name = os.path.join(folder, "header.nii")
        with open(name, "wb") as fh:
            fh.write(two_slices)
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            return image
    if reader.GetDimension() != 3 or reader.GetSize()[:2] != image.GetSize():
        return image
    field = sitk.GetImageFromArray(sitk.GetArrayViewFromImage(image)[np.newaxis], isVector=True)
    field.SetSpacing(reader.GetSpacing())
    field.SetOrigin(reader.GetOrigin())
    field.SetDirection(reader.GetDirection())
    return field


#: antsRegistration's names of a deformable stage's field and of its inverse (``{prefix}{stage}Warp.nii.gz``,
#: ``{prefix}{stage}InverseWarp.nii.gz``, beside each other)
_ANTS_WARP_NAME = re.compile(r"^(?P<head>.*\d)(?P<inverse>Inverse)?Warp(?P<ext>\.nii(?:\.gz)?)$")


def ants_inverse_warp(path: str | os.PathLike) -> str | None:
    """The file antsRegistration writes beside a displacement field named as its ``out1Warp.nii.gz`` as that field's
    inverse (``out1InverseWarp.nii.gz``), or beside an ``*InverseWarp`` as its forward field; None for a file not so
    named. A field has no exact inverse here (``--invert`` refuses it), but ANTs' own inverse is one file away."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    match = _ANTS_WARP_NAME.match(name)
    if match is None:
        return None
    other = f"{match['head']}{'' if match['inverse'] else 'Inverse'}Warp{match['ext']}"
    return os.path.join(folder, other)


def write_transform(transform: sitk.Transform, path: str | os.PathLike) -> str:
    """Write an ITK transform atomically: .tfm/.txt (ITK text) or .h5 (HDF5) for any transform, .mat
    (ITK's MATLAB format, as ANTs writes affine transforms) for a single one, .xfm (MINC, in its RAS) for 3D linear
    transforms, 3D displacement fields and composites of them (each run of linear parts as one affine, each field's
    grid beside the file as ``NAME_grid_N.mnc``; see :func:`_for_minc`).

    Raises:
        InputError: an extension ITK writes no transform as, a composite of several transforms to .mat
            (ITK writes it, but neither ITK nor ANTs reads it back), a part .xfm does not hold (a B-spline, a 2D
            transform), or an unwritable file.
    """
    final = os.fspath(path)
    if _suffix(final) == ".mat" and type(transform) is sitk.Transform and hasattr(transform, "Downcast"):
        # a composite held as a plain sitk.Transform (sitk.Transform(composite)) is one too: ITK wrote it unreadable
        transform = transform.Downcast()
    if _suffix(final) == ".mat" and isinstance(transform, sitk.CompositeTransform):
        if transform.GetNumberOfTransforms() == 1:  # the same mapping, in a form the format holds
            transform = transform.GetNthTransform(0)
        else:
            kinds = ", ".join(transform.GetNthTransform(i).GetName() for i in range(transform.GetNumberOfTransforms()))
            raise InputError(f"'{final}': a .mat file holds one transform, and this is a composite of "
                             f"{transform.GetNumberOfTransforms()} ({kinds}); ITK would write a file that "
                             "its reader (which Slicer and ANTs use) cannot read back.",
                             "Write it as .h5 (or .tfm), which hold composite transforms.")
    # MINC (.xfm): ITK writes a displacement field's grid beside the file, named after it (x_grid_0.mnc) and named
    # in it; written to a temporary name, the .xfm pointed at '.mmf-tmp-..._grid_0.mnc', left behind (and one more
    # at every rerun), and a copy of x.xfm and its visible files was unreadable. Staged under the final name instead.
    xfm = _suffix(final) == ".xfm"
    stale: list[str] = []
    if xfm:
        transform = _for_minc(transform, final)
        if _itk_minc_unconverted():  # written in MINC's RAS, as MNI's tools read it (see _RAS_LPS)
            transform = _swap_transform_ras_lps(transform)
        stale = _minc_grids(final) if os.path.isfile(final) else []
    with (staged_output(final) if xfm else atomic_output(final)) as tmp:
        if xfm:
            open(tmp, "wb").close()  # the room is reserved on it (as atomic_output's temporary file)
        _room_for_transform(transform, final, tmp)
        try:
            with itk_guard(f"writing transform '{final}'", "Check the folder is writable."):
                sitk.WriteTransform(transform, tmp)
        except InputError as exc:
            if "Could not create Transform IO object" in str(exc):  # ITK names the temporary file, not the output
                raise InputError(f"No transform format is written as '{final}' (extension "
                                 f"'{_suffix(final) or 'none'}').",
                                 "Name the transform .tfm or .txt (ITK text), .h5 (HDF5) or .mat (one "
                                 "linear transform, as ANTs writes); all hold deformable transforms too, "
                                 "but only .tfm, .txt and .h5 hold a composite.") from exc
            raise InputError(str(exc.problem).replace(tmp, final), exc.fix) from exc
    if stale:  # grids the old .xfm named that the new one does not: nothing else names NAME_grid_N.mnc
        for name in sorted(set(stale) - set(_minc_grids(final))):
            with contextlib.suppress(OSError):
                os.remove(name)
    return final


#: MINC's world coordinates are RAS (x from left to right, y from back to front), ITK's LPS. ITK 5.4's MINC image and
#: transform IO pass them through unchanged (they convert only where ITK was built with ``ITK_MINC_IO_RAS_TO_LPS``,
#: off in SimpleITK's build): a MINC file written by MNI's tools was read mirrored in x and y (nibabel's small.mnc,
#: RAS origin (-98, -134, -72), came back with the LPS origin (-98, -134, -72), i.e. RAS (98, 134, -72)), a
#: hand-written .xfm translation (10, 20, 30) in RAS moved LPS points by (10, 20, 30), and ITK wrote LPS values as
#: MINC's. This package converts where the ITK installed does not.
_RAS_LPS = (-1.0, -1.0, 1.0)


#: The probe's answer once it had one (see _itk_minc_unconverted), and the lock that makes it run once
_MINC_PROBED: list[bool] = []
_MINC_PROBE_LOCK = threading.Lock()


def _itk_minc_unconverted() -> bool:
    """Whether the ITK installed passes MINC's world coordinates through unchanged (ITK 5.4 as SimpleITK builds
    it; its ``ITK_MINC_IO_RAS_TO_LPS`` build option, off there, converts both its MINC image and transform IO):
    probed once a process, under a lock, by writing a translation of (1, 2, 3) as an .xfm (a small text file) and
    reading its first row's shift (1 unchanged, -1 converted to RAS).

    Not by writing a .mnc: that is an HDF5 file, and a failed HDF5 write (a full temporary folder, a file size
    limit) left the process to crash at exit (SIGSEGV), where reading a .mnc had written nothing. Where the probe
    cannot be written (no usable temporary folder: an OSError had escaped from read_image), the answer is ITK's
    default, unchanged, and is not kept: the next call probes again."""
    with _MINC_PROBE_LOCK:
        if not _MINC_PROBED:
            answer = _probe_minc_transform_writer()
            if answer is None:
                return True
            _MINC_PROBED.append(answer)
        return _MINC_PROBED[0]


def _probe_minc_transform_writer() -> bool | None:
    """See :func:`_itk_minc_unconverted`: True (unchanged), False (converted) or None (the probe failed)."""
    shift = sitk.AffineTransform(3)
    shift.SetTranslation((1.0, 2.0, 3.0))
    try:
        with tempfile.TemporaryDirectory(prefix="mmf-minc-") as folder:
            probe = os.path.join(folder, "probe.xfm")
            sitk.WriteTransform(shift, probe)
            first = float(dict(_minc_statements(probe))["Linear_Transform"].split()[3])
    except (RuntimeError, OSError, KeyError, IndexError, ValueError):
        return None
    return first > 0 if abs(abs(first) - 1.0) < 1e-9 else None


def _swap_ras_lps(image: sitk.Image, vectors: bool = False) -> sitk.Image:
    """``image`` with its geometry taken from RAS to LPS (or back: the same flip of x and y), its voxels where they
    are; with ``vectors``, its vectors' x and y too (a displacement field's)."""
    dim = image.GetDimension()
    flip = np.array(_RAS_LPS[:dim]) if dim <= 3 else np.array(_RAS_LPS + (1.0,) * (dim - 3))
    out = image
    if vectors:
        arr = sitk.GetArrayFromImage(image)
        arr[..., :2] *= -1
        out = sitk.GetImageFromArray(arr, isVector=True)
        for key in image.GetMetaDataKeys():
            out.SetMetaData(key, image.GetMetaData(key))
    else:
        out = sitk.Image(image)
    direction = np.array(image.GetDirection(), dtype=float).reshape(dim, dim)
    out.SetSpacing(image.GetSpacing())
    out.SetOrigin(tuple(float(v) for v in flip * np.array(image.GetOrigin(), dtype=float)))
    out.SetDirection(tuple(float(v) for v in (flip[:, None] * direction).ravel()))
    return out


#: The MINC attribute (group "mmfusion", attribute "components") in which :func:`write_image` says what a .mnc's
#: floating-point components are, "vector" (turned to MINC's RAS with the geometry) or "channels" (as they are), and
#: which :func:`read_image` follows; the same metadata key on an image (set by read_image, or by a caller) tells
#: write_image. ITK's MINC IO writes and reads a "group:attribute" key as that attribute.
_MINC_COMPONENTS_KEY = "mmfusion:components"

#: The name MINC's tools (volume_io's output_transform_file), ITK and :func:`write_transform` give the grid of an
#: .xfm's grid transform: ``NAME_grid_N.mnc``
_MINC_GRID_NAME = re.compile(r"_grid_\d+\.mnc2?$", re.IGNORECASE)


def _minc_vectors(image: sitk.Image, path: str, writing: bool, notes: list[str] | None = None) -> bool | None:
    """Whether a .mnc image's components are a vector in world space, turned with its geometry between MINC's RAS
    and ITK's LPS (a displacement field: MINC's grid files hold RAS vectors, as ITK's .xfm reader and MINC's tools
    read them); None where the image is no candidate (integer components, as colour, or another count than its
    dimension: echoes, a tensor's 6 or 9, written in LPS as the tensor warning says).

    A floating-point image of as many components as dimensions may be a field or channels (three echoes, float
    colour), and MINC's vector_dimension, which holds both, does not say which: taken as a field, channels 0 and 1
    had been negated without a word (c5bcc42 turned every such image). They are turned only where something says
    so: the ``mmfusion:components`` attribute this package writes (or the same metadata key on an image to write),
    else the name MINC's tools and ITK give an .xfm's grid (``NAME_grid_0.mnc``). Otherwise they are read and
    written as stored, with a warning that says how to have a field turned."""
    if image.GetNumberOfComponentsPerPixel() != image.GetDimension() or \
            image.GetPixelID() not in (sitk.sitkVectorFloat32, sitk.sitkVectorFloat64):
        return None
    mark = _meta_text(image, _MINC_COMPONENTS_KEY)
    if mark in ("vector", "channels"):
        return mark == "vector"
    if _MINC_GRID_NAME.search(os.path.basename(path)):
        return True
    n = image.GetNumberOfComponentsPerPixel()
    if writing:
        _warn_or_note(f"'{path}': its {n} floating-point components a voxel are written as they are, as channels "
                      "(echoes, colour): MINC does not say whether they are channels or a vector field. If they are "
                      "a displacement field, MINC's tools read its vectors in RAS: write it with write_transform("
                      "sitk.DisplacementFieldTransform(field), 'NAME.xfm') (its grid, NAME_grid_0.mnc, in RAS), name "
                      f"the output NAME_grid_0.mnc, or set the image's metadata '{_MINC_COMPONENTS_KEY}' to "
                      "'vector'.", notes, stacklevel=3)
    else:
        warnings.warn(f"'{path}': its {n} floating-point components a voxel are read as stored, as channels "
                      "(echoes, colour): the file does not say whether they are channels or a vector field. If they "
                      "are a displacement field (a MINC grid, in RAS), their x and y are not turned to ITK's LPS: "
                      "read it as a transform, through an .xfm that names it (Transform_Type = Grid_Transform; "
                      "Displacement_Volume = its file name;), or name it NAME_grid_0.mnc as MINC's tools do.",
                      stacklevel=5)
    return False


def _swap_transform_ras_lps(transform: sitk.Transform) -> sitk.Transform:
    """``transform`` (3D linear parts and displacement fields, as .xfm holds) from RAS to LPS or back: F T F, with F
    the flip of x and y. A linear part's matrix M, centre c and translation t become F M F, F c, F t; a field's grid
    is flipped as an image and its vectors' x and y with it."""
    flip = np.diag(_RAS_LPS)
    out = []
    for part in _transform_parts(transform):
        if part.GetName() == "DisplacementFieldTransform":
            field = sitk.DisplacementFieldTransform(part).GetDisplacementField()
            out.append(sitk.DisplacementFieldTransform(_swap_ras_lps(field, vectors=True)))
            continue
        matrix, offset = _matrix_offset(part)
        out.append(sitk.AffineTransform((flip @ matrix @ flip).ravel().tolist(), (flip @ offset).tolist()))
    return out[0] if len(out) == 1 else sitk.CompositeTransform(out)


def _matrix_offset(linear: sitk.Transform) -> tuple[np.ndarray, np.ndarray]:
    """The 3 x 3 matrix M and the offset t of a 3D linear transform (x -> M x + t, its centre folded into t),
    from the points it maps: of any linear kind (translation, Euler, versor, scale, a composite of them)."""
    offset = np.array(linear.TransformPoint((0.0, 0.0, 0.0)))
    matrix = np.column_stack([np.array(linear.TransformPoint(tuple(axis))) - offset for axis in np.eye(3)])
    return matrix, offset


def _for_minc(transform: sitk.Transform, final: str) -> sitk.Transform:
    """``transform`` as ITK's MINC writer (.xfm) takes it: its parts flattened, each run of 3D linear ones as one
    AffineTransform (a translation, an identity or an empty composite had been refused as not linear, or crashed
    the process: SIGSEGV; a nested composite was "Composite Transform can only be 1st transform in a file"), 3D
    displacement fields as they are. The file lists them in the order they apply to a point (MNI's convention),
    which :func:`read_transform` composes back.

    Raises:
        InputError: a part .xfm does not hold (a B-spline, a 2D transform).
    """
    parts = _transform_parts(transform)
    unheld = [part for part in parts if part.GetDimension() != 3 or not (
        part.IsLinear() or part.GetName() == "DisplacementFieldTransform")]
    if unheld or transform.GetDimension() != 3:
        kinds = ", ".join(dict.fromkeys(part.GetName() for part in unheld or parts))
        raise InputError(f"'{final}': ITK's MINC transform writer (.xfm) holds 3D linear transforms and 3D "
                         f"displacement fields only, and this is {kinds} ({transform.GetDimension()}D).",
                         "Write it as .h5 or .tfm, which hold every ITK transform.")
    out: list[sitk.Transform] = []
    run: list[sitk.Transform] = []
    for part in [*parts, None]:
        if part is not None and part.IsLinear():
            run.append(part)
            continue
        if run or (part is None and not out):  # an empty composite: the identity
            linear = sitk.CompositeTransform(3)
            for piece in run:
                linear.AddTransform(piece)
            matrix, offset = _matrix_offset(linear)
            out.append(sitk.AffineTransform(matrix.ravel().tolist(), offset.tolist()))
            run = []
        if part is not None:
            out.append(part)
    return out[0] if len(out) == 1 else sitk.CompositeTransform(out)


#: A MINC transform file's statements: 'Transform_Type = Linear;', 'Displacement_Volume = t_grid_0.mnc;'
_MINC_STATEMENT = re.compile(r"(\w+)\s*=\s*([^;]*);")


def _minc_statements(path: str) -> list[tuple[str, str]]:
    """The (name, value) statements of a MINC transform file (.xfm), in order, its comments ('%' lines) dropped."""
    with open(path, errors="replace") as fh:
        text = "\n".join(line.split("%", 1)[0] for line in fh)
    return [(name, value.strip()) for name, value in _MINC_STATEMENT.findall(text)]


def _minc_grids(final: str) -> list[str]:
    """The grid files of ``final`` (an .xfm) that ITK's writer names after it (``NAME_grid_N.mnc`` beside it), as
    the file names them: the only ones a rewrite may remove."""
    folder, base = os.path.split(os.path.abspath(final))
    own = re.compile(re.escape(base[:-len(".xfm")]) + r"_grid_\d+\.mnc")
    try:
        statements = _minc_statements(final)
    except OSError:
        return []
    return [os.path.join(folder, value) for name, value in statements
            if name == "Displacement_Volume" and own.fullmatch(value)]


def _read_minc_transform(path: str) -> sitk.Transform:
    """A MINC transform file (.xfm) as one transform: ITK reads its transforms as a list, of which SimpleITK had
    taken the first only (a warning): a linear transform then a grid, as MNI's tools write, was read as the linear
    one. MNI's convention: the transforms apply to a point in file order, so the composite holds them last first
    (a CompositeTransform applies its last one first). Each is read by ITK from a file of its own, its grid linked
    beside it.

    Raises:
        InputError: a grid marked inverted (ITK reads it as a transform without a displacement field, which fails
            at its first point), or a part ITK does not read.
    """
    statements = _minc_statements(path)
    blocks: list[list[tuple[str, str]]] = []
    for name, value in statements:
        if name == "Transform_Type":
            blocks.append([])
        if blocks:
            blocks[-1].append((name, value))
    for block in blocks:
        values = dict(block)
        if values["Transform_Type"] == "Grid_Transform" and values.get("Invert_Flag", "").lower() == "true":
            raise InputError(f"'{path}': it holds an inverted grid transform (Invert_Flag = True), which ITK's MINC "
                             "reader (hence this package) reads as a transform without its displacement field.",
                             "Invert the grid with MINC's tools (e.g. invert_xfm then resample it into a grid), or "
                             "give the transform as .h5 or .tfm.")
    if len(blocks) < 2:
        with itk_guard(f"reading transform '{path}'", "Give an ITK transform file (.tfm, .txt, .h5, .mat, .xfm)."):
            return sitk.ReadTransform(path)
    parts = []
    folder = os.path.dirname(os.path.realpath(path))  # the file's own folder, also through _lower_case_name's link
    with tempfile.TemporaryDirectory(prefix="mmf-transform-") as tmp:
        for i, block in enumerate(blocks):
            lines = ["MNI Transform File"]
            for name, value in block:
                if name == "Displacement_Volume":
                    grid = os.path.join(folder, value)
                    value = f"grid_{i}.mnc"
                    try:
                        os.symlink(grid, os.path.join(tmp, value))
                    except OSError:  # no symbolic links (Windows without the privilege)
                        shutil.copyfile(grid, os.path.join(tmp, value))
                lines.append(f"{name} = {value};")
            one = os.path.join(tmp, f"part_{i}.xfm")
            with open(one, "w") as fh:
                fh.write("\n".join(lines) + "\n")
            with itk_guard(f"reading transform {i + 1} of {len(blocks)} in '{path}'",
                           "Give an ITK transform file (.tfm, .txt, .h5, .mat, .xfm)."):
                part = sitk.ReadTransform(one)
            parts.append(part.Downcast() if hasattr(part, "Downcast") else part)
    return sitk.CompositeTransform(parts[::-1])


#: The most bytes a transform file takes per parameter and per transform (a composite's each), by its format: ITK's
#: text (.tfm, .txt) writes a double in at most 25 characters (measured 19.6 a value, and 130 bytes for a rigid
#: transform), MATLAB (.mat) and HDF5 8 bytes a value (HDF5: 8.4 KB a file and ~2 KB a transform besides)
_TRANSFORM_BYTES = {".tfm": (32, 4096), ".txt": (32, 4096), ".mat": (16, 4096)}
_TRANSFORM_HDF5_BYTES = (16, 8192)
_TRANSFORM_FILE_BYTES = 1 << 16


def _transform_parts(transform: sitk.Transform) -> list[sitk.Transform]:
    """The transforms a (possibly composite, possibly nested) transform is written as."""
    if type(transform) is sitk.Transform and hasattr(transform, "Downcast"):
        transform = transform.Downcast()
    if isinstance(transform, sitk.CompositeTransform):
        return [part for i in range(transform.GetNumberOfTransforms())
                for part in _transform_parts(transform.GetNthTransform(i))]
    return [transform]


def _room_for_transform(transform: sitk.Transform, final: str, tmp: str) -> None:
    """Refuse a transform output, before ITK writes it, that may not fit (see :func:`_check_room`): on a full disk
    or past the file size limit ITK's HDF5 transform writer (.h5) raised "H5Dwrite failed" and left the HDF5 library
    broken (the process crashed later: SIGSEGV at exit), and its text (.tfm, .txt) and MATLAB (.mat) writers report
    no write error at all: a B-spline's .tfm cut at 100000 of its 4.7 MB was the output, and was read back as a
    transform without an error."""
    parts = _transform_parts(transform)
    values = sum(len(part.GetParameters()) + len(part.GetFixedParameters()) for part in parts)
    check_room_for_transform(final, tmp, values, [part.GetName() for part in parts])


def check_room_for_transform(final: str, tmp: str, values: int, kinds: Sequence[str]) -> None:
    """Refuse a transform file ``final`` (written first as ``tmp``, which exists) of ``values`` parameters in all
    that may not fit, before it is written: see :func:`_room_for_transform`. Also for the ``.h5`` files through
    which ``mrml`` hands transforms to Slicer and back (Slicer's writer is ITK's: the same crash).

    Args:
        final: the file, as the user named it (its extension picks the bound).
        tmp: the file ITK will write (exists, empty).
        values: parameters and fixed parameters of all its transforms.
        kinds: the class name of each transform it holds (e.g. ``["Euler3DTransform", "BSplineTransform"]``).
    """
    suffix = _suffix(final)
    per_value, per_part = _TRANSFORM_BYTES.get(suffix, _TRANSFORM_HDF5_BYTES)
    bound = values * per_value + len(kinds) * per_part + (0 if suffix in _TRANSFORM_BYTES else _TRANSFORM_FILE_BYTES)
    why = ("The HDF5 library inside ITK breaks the whole program when the disk fills" if suffix not in _TRANSFORM_BYTES
           else "ITK's transform writer does not report a file cut short")
    _check_room(final, tmp, bound,
                f"a {suffix} file of this transform ({', '.join(dict.fromkeys(kinds))}: {values} values)", why,
                "as .h5, which takes the least room" if suffix in (".tfm", ".txt") else "to a disk with more room")


_OPPOSITE_LETTERS = str.maketrans("LRPASI", "RLAPIS")


def orientation_code(image: sitk.Image) -> tuple[str, float] | None:
    """The letters naming where each image axis points, and how oblique the grid is.

    The code is the one nibabel's ``aff2axcodes``, ITK's ``DICOMOrientImageFilter`` and NRRD's
    "space" name: the direction each axis runs *toward* ("LPS" for an identity direction, "RAS"
    for a NIfTI stored the usual way). ITK-SNAP's "RAI code" names where each axis comes *from*,
    the opposite letters (``code.translate`` with R<->L, A<->P, S<->I). For an oblique grid the
    letters name the nearest anatomical axes.

    Returns:
        (code, degrees): the code (two letters for a 2D image, taken as an axial slice as Slicer
        takes it) and the largest angle between an image axis and its nearest anatomical axis
        (0 for an axis-aligned grid); None for other dimensions.
    """
    dim = image.GetDimension()
    if dim not in (2, 3):
        return None
    direction = np.eye(3)
    direction[:dim, :dim] = np.array(image.GetDirection(), dtype=float).reshape(dim, dim)
    code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines([float(v) for v in direction.ravel()])
    unit = direction / np.linalg.norm(direction, axis=0)
    degrees = float(np.degrees(np.arccos(np.clip(np.abs(unit).max(axis=0), -1.0, 1.0))).max())
    return code[:dim], degrees


def axis_shear(image: sitk.Image) -> tuple[float, tuple[int, int] | None, list[float]]:
    """How far ``image``'s grid is from orthonormal, which ``oblique_degrees`` does not say: a sheared direction
    (a gantry-tilted series, an edited header) keeps its axes' nearest anatomical letters and an obliquity.

    Returns:
        (degrees, pair, lengths): the largest departure from a right angle between two image axes (0 for an
        orthogonal grid), the pair of axes (0-based) it is between (None when orthogonal), and the lengths of the
        direction's columns (1 for a direction of unit vectors; ITK steps ``spacing * length`` mm along an axis).
    """
    dim = image.GetDimension()
    direction = np.array(image.GetDirection(), dtype=float).reshape(dim, dim)
    lengths = np.linalg.norm(direction, axis=0)
    unit = direction / lengths
    worst, pair = 0.0, None
    for i, j in itertools.combinations(range(dim), 2):
        off = abs(90.0 - float(np.degrees(np.arccos(np.clip(unit[:, i] @ unit[:, j], -1.0, 1.0)))))
        if off > worst:
            worst, pair = off, (i, j)
    return worst, pair, [float(v) for v in lengths]


def image_info(image: sitk.Image) -> dict[str, Any]:
    """Size, spacing, geometry, orientation, pixel type and intensity range of an image.

    ``origin`` and ``direction`` (row-major; column j is image axis j) are ITK's, in LPS, as
    SimpleITK, ANTs and elastix give them; ``origin_ras`` and ``direction_ras`` are what Slicer's
    Volumes module shows (x and y negated). ``orientation`` is the code nibabel's aff2axcodes and
    ITK's DICOMOrient give; ``orientation_itksnap`` is ITK-SNAP's RAI code for the same grid (see
    :func:`orientation_code`). ``min``, ``max`` and ``mean`` are of the values, or of the magnitude
    (``|re + i im|``) for complex pixels, as ``statistics_of`` says.
    """
    from .mrml import ras_geometry

    arr = sitk.GetArrayViewFromImage(image)
    complex_pixels = bool(np.iscomplexobj(arr))
    if complex_pixels:  # numpy's float() of a complex drops its imaginary part: they were the real part's
        arr = np.abs(arr)
    finite = np.isfinite(arr) if np.issubdtype(arr.dtype, np.floating) else None
    has_nan = bool(finite is not None and not finite.all())
    vals = arr[finite] if finite is not None else arr
    origin_ras, direction_ras = ras_geometry(image)
    orientation = orientation_code(image)
    shear = axis_shear(image)
    return {
        "dimension": image.GetDimension(),
        "size": list(image.GetSize()),
        "spacing": [float(s) for s in image.GetSpacing()],
        "origin": [float(o) for o in image.GetOrigin()],
        "direction": [float(d) for d in image.GetDirection()],
        "origin_ras": origin_ras,
        "direction_ras": direction_ras,
        "orientation": orientation[0] if orientation else None,
        "orientation_itksnap": orientation[0].translate(_OPPOSITE_LETTERS) if orientation else None,
        "oblique_degrees": orientation[1] if orientation else None,
        "shear_degrees": shear[0],
        "sheared_axes": list(shear[1]) if shear[1] is not None else None,
        "direction_lengths": shear[2],
        "pixel_type": image.GetPixelIDTypeAsString(),
        "components": image.GetNumberOfComponentsPerPixel(),
        "min": float(vals.min()) if vals.size else None,
        "max": float(vals.max()) if vals.size else None,
        "mean": float(vals.mean()) if vals.size else None,
        "non_finite_voxels": int((~finite).sum()) if has_nan else 0,
        "statistics_of": "magnitude" if complex_pixels else "values",
    }
