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
import fnmatch
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from .errors import InputError, itk_guard

__all__ = [
    "read_image",
    "write_image",
    "read_transform",
    "write_transform",
    "list_dicom_series",
    "image_info",
    "to_luminance",
    "IMAGE_EXTENSIONS",
    "atomic_path",
    "atomic_output",
    "check_not_overwriting_inputs",
    "write_bytes",
    "write_json",
    "to_json_safe",
]

IMAGE_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".jpeg",
                    ".bmp", ".tif", ".tiff", ".dcm")
_2D_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
# DICOM tags that are safe to show: never patient-identifying ones (name, ID, birth date...).
_SAFE_SERIES_TAGS = {"0008|103e": "description", "0008|0060": "modality", "0020|0011": "series_number"}


def _suffix(path: str | os.PathLike) -> str:
    name = str(path).lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


def to_luminance(image: sitk.Image) -> sitk.Image:
    """Luminance (Y of BT.601 YCbCr: 0.299 R + 0.587 G + 0.114 B) of an RGB(A) image, float32."""
    n = image.GetNumberOfComponentsPerPixel()
    if n == 1:
        return image
    if n not in (3, 4):
        raise InputError(
            f"Image has {n} components per pixel; only grey, RGB and RGBA images are supported.",
            "Convert it to a grey-level or RGB image first.")
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    y = 0.299 * arr[..., 0] + 0.587 * arr[..., 1] + 0.114 * arr[..., 2]
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
        uids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(folder)
        for uid in uids:
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, uid)
            info: dict[str, Any] = {"uid": uid, "files": list(files), "description": "", "modality": "",
                                    "series_number": ""}
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


def _read_dicom_folder(folder: str, series: str | None) -> sitk.Image:
    found = list_dicom_series(folder)
    if not found:
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
        raise InputError(
            f"Folder '{folder}' holds {len(found)} DICOM series; which one should be used?\n"
            + _describe_series(found),
            "Pick one by UID or description: --series UID (CLI) or read_image(folder, series=UID).")
    else:
        pick = found[0]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(pick["files"])
    with itk_guard(f"reading DICOM series '{pick['uid']}'",
                   "Check that the series is complete (no missing slices)."):
        return reader.Execute()


def _describe_series(found: Sequence[dict[str, Any]]) -> str:
    return "\n".join(
        f"  - UID {s['uid']}: '{s['description'] or '(no description)'}' "
        f"{s['modality'] or ''} ({len(s['files'])} files)" for s in found)


def read_image(path: str | os.PathLike, *, series: str | None = None, keep_color: bool = False,
               float32: bool = False) -> sitk.Image:
    """Read an image file, or a DICOM series from a folder.

    Args:
        path: image file, or folder of DICOM files.
        series: DICOM series UID (or unique description substring) when the folder holds several.
        keep_color: keep RGB(A) pixels; by default colour images are converted to luminance.
        float32: cast the result to 32-bit float.

    Returns:
        The image with its geometry (origin, spacing, direction) exactly as stored.

    Raises:
        InputError: the file does not exist, cannot be read, or the folder is ambiguous.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"File not found: '{path}'.", "Check the path and its spelling.")
    if os.path.isdir(path):
        image = _read_dicom_folder(path, series)
    else:
        if os.path.getsize(path) == 0:
            raise InputError(f"File '{path}' is empty (0 bytes).", "Give a complete image file.")
        with itk_guard(f"reading '{path}'",
                       "Use a NIfTI, NRRD, MHA/MHD, PNG/JPEG or DICOM file, and check it is not truncated."):
            image = sitk.ReadImage(path)
    if not keep_color and image.GetNumberOfComponentsPerPixel() > 1:
        image = to_luminance(image)
    if float32 and image.GetNumberOfComponentsPerPixel() == 1:
        image = sitk.Cast(image, sitk.sitkFloat32)
    return image


def atomic_path(path: str | os.PathLike) -> tuple[str, str]:
    """(temporary path next to ``path`` with the same extension, final path)."""
    final = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(final))
    os.makedirs(folder, exist_ok=True)
    suffix = _suffix(final) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=".mmf-tmp-", suffix=suffix, dir=folder)
    os.close(fd)
    return tmp, final


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
    tmp, final = atomic_path(path)
    try:
        yield tmp
        os.chmod(tmp, _NEW_FILE_MODE if mode is None else mode)
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def check_not_overwriting_inputs(outputs: Iterable[str | os.PathLike], inputs: Iterable[Any]) -> None:
    """Refuse, before any work, outputs that would replace an input file.

    Args:
        outputs: output paths; the file name may hold shell wildcards (``out/fused_*``) for outputs
            whose names are known only by pattern.
        inputs: the inputs as given: paths, or anything else (images in memory, None), which is
            skipped; folders (DICOM series) are skipped too, as writing a file into them replaces nothing.

    Raises:
        InputError: an output names one of the input files (also through a symbolic link).
    """
    files = [(os.fspath(src), os.path.realpath(src)) for src in inputs
             if isinstance(src, (str, os.PathLike)) and os.path.isfile(src)]
    for out in outputs:
        real_out = os.path.realpath(os.path.dirname(os.path.abspath(os.fspath(out))))
        pattern = os.path.basename(os.fspath(out))
        for given, real in files:
            if os.path.dirname(real) == real_out and fnmatch.fnmatchcase(os.path.basename(real), pattern):
                raise InputError(f"The output '{out}' would overwrite the input file '{given}'.",
                                 "Write the output elsewhere (another output file or --output-dir); inputs are "
                                 "never overwritten.")


def write_bytes(path: str | os.PathLike, payload: bytes) -> str:
    """Write ``payload`` to ``path`` atomically; returns the path."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(payload)
    return os.fspath(path)


def to_json_safe(obj: Any) -> Any:
    """JSON-able copy: NaN/inf -> None, numpy scalars/arrays -> Python, objects with to_dict -> dict."""
    import numpy as _np

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
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
    """Write ``obj`` as indented, strictly valid JSON (NaN/inf become null), atomically."""
    text = json.dumps(to_json_safe(obj), indent=2, allow_nan=False)
    return write_bytes(path, (text + "\n").encode("utf-8"))


def write_image(image: sitk.Image, path: str | os.PathLike, *, compress: bool = True) -> str:
    """Write ``image`` atomically; PNG/JPEG outputs are rescaled to 8 bits if needed.

    Returns:
        The path written.
    """
    final = os.fspath(path)
    out = image
    if _suffix(final) in _2D_EXTENSIONS and image.GetPixelID() not in (sitk.sitkUInt8, sitk.sitkVectorUInt8):
        if image.GetNumberOfComponentsPerPixel() == 1:
            out = sitk.Cast(sitk.RescaleIntensity(image, 0, 255), sitk.sitkUInt8)
        else:
            out = sitk.Cast(image, sitk.sitkVectorUInt8)
    with atomic_output(final) as tmp, \
            itk_guard(f"writing '{final}'", "Check the folder is writable and the extension is supported."):
        sitk.WriteImage(out, tmp, compress and _suffix(final) not in _2D_EXTENSIONS)
    return final


def read_transform(path: str | os.PathLike) -> sitk.Transform:
    """Read an ITK transform file (.tfm, .txt, .h5, .mat), as written by Slicer, elastix' transformix
    (ITK format), ANTs or this package."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise InputError(f"Transform file not found: '{path}'.", "Check the path.")
    with itk_guard(f"reading transform '{path}'", "Give an ITK transform file (.tfm, .txt, .h5, .mat)."):
        tx = sitk.ReadTransform(path)
    # A composite read from file nests its transforms; flatten a single one for convenience.
    if isinstance(tx, sitk.CompositeTransform) and tx.GetNumberOfTransforms() == 1:
        tx = tx.GetNthTransform(0)
        tx = tx.Downcast() if hasattr(tx, "Downcast") else tx
    elif hasattr(tx, "Downcast"):
        tx = tx.Downcast()
    return tx


def write_transform(transform: sitk.Transform, path: str | os.PathLike) -> str:
    """Write an ITK transform atomically (.tfm/.txt for linear, .h5 for deformable)."""
    final = os.fspath(path)
    with atomic_output(final) as tmp, \
            itk_guard(f"writing transform '{final}'", "Use .tfm or .txt for linear and .h5 for deformable transforms."):
        sitk.WriteTransform(transform, tmp)
    return final


def image_info(image: sitk.Image) -> dict[str, Any]:
    """Size, spacing, origin, direction, pixel type and intensity range of an image."""
    arr = sitk.GetArrayViewFromImage(image)
    finite = np.isfinite(arr) if np.issubdtype(arr.dtype, np.floating) else None
    has_nan = bool(finite is not None and not finite.all())
    vals = arr[finite] if finite is not None else arr
    return {
        "dimension": image.GetDimension(),
        "size": list(image.GetSize()),
        "spacing": [float(s) for s in image.GetSpacing()],
        "origin": [float(o) for o in image.GetOrigin()],
        "direction": [float(d) for d in image.GetDirection()],
        "pixel_type": image.GetPixelIDTypeAsString(),
        "components": image.GetNumberOfComponentsPerPixel(),
        "min": float(vals.min()) if vals.size else None,
        "max": float(vals.max()) if vals.size else None,
        "mean": float(vals.mean()) if vals.size else None,
        "non_finite_voxels": int((~finite).sum()) if has_nan else 0,
    }
