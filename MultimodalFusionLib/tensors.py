"""Diffusion tensor images: what a file says of its tensors, and their components in memory.

SimpleITK has no tensor pixel type: it refuses a Slicer DTI NRRD (``kinds: 3D-symmetric-matrix``) and a NIfTI of
intent SYMMATRIX ("Unknown PixelType"), and reads a ``3D-matrix`` NRRD as 9 plain channels. Here such a file is
read as the vector image ITK reads once its header says "vector", its tensors put in one convention, and marked:

- in memory, a tensor image's components are ITK's (a symmetric tensor: xx, xy, xz, yy, yz, zz, the upper triangle
  row by row; a full one: the 9 row by row) and its tensors are in the image's physical space (LPS, as ITK and
  ANTs take them), whatever the file's order and measurement frame;
- the metadata key :data:`KIND_KEY` says which tensor it is, :data:`FRAME_KEY` the file's measurement frame (its
  axes in LPS), in which :func:`to_file` puts the tensors back when the image is written, :data:`KEYVALUES_KEY` a
  NRRD's key/value pairs (``modality:=DTMRI``, ``DWMRI_b-value:=...``), which :func:`tag_written_file` writes back
  into a NRRD (Slicer's Resample DTI Volume keeps them so).

Files: NRRD ``3D-symmetric-matrix`` (xx, xy, xz, yy, yz, zz) and ``3D-matrix`` (row by row), their tensors in the
``measurement frame`` (its vectors the frame's axes in the header's ``space``, e.g. right-anterior-superior);
NIfTI-1 intent SYMMATRIX (1005, ``intent_p1`` 3, or 0 with 6 values a voxel as ITK and ANTs write it; the lower
triangle row by row: xx, yx, yy, zx, zy, zz) and
GENMATRIX (1004, 3 x 3, row by row), whose tensors ITK and ANTs take in LPS.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import struct
import tempfile
from typing import Iterator, NamedTuple

import numpy as np
import SimpleITK as sitk

from .errors import InputError

__all__ = [
    "KIND_KEY",
    "FRAME_KEY",
    "KEYVALUES_KEY",
    "SYMMETRIC",
    "FULL",
    "TensorLayout",
    "file_layout",
    "readable_copy",
    "from_file",
    "to_file",
    "tensor_kind",
    "mark",
    "matrices",
    "packed",
    "tag_written_file",
    "keyvalues_of",
    "log_tensors",
    "exp_tensors",
    "LOG_FLOOR",
]

#: metadata keys of a tensor image in memory (see the module's text); never written to a file
KIND_KEY = "MultimodalFusion_tensor"
FRAME_KEY = "MultimodalFusion_tensor_frame"
KEYVALUES_KEY = "MultimodalFusion_tensor_keyvalues"
#: the two kinds, by their NRRD names: 6 components (a symmetric 3 x 3 tensor) or 9 (any 3 x 3 matrix)
SYMMETRIC = "3D-symmetric-matrix"
FULL = "3D-matrix"
COUNTS = {SYMMETRIC: 6, FULL: 9}
#: NIfTI-1 intent codes
_SYMMATRIX, _GENMATRIX, _VECTOR = 1005, 1004, 1007
#: NIfTI's symmetric order (xx, yx, yy, zx, zy, zz) from ITK's (xx, xy, xz, yy, yz, zz) and back: swap yy and xz
_NIFTI_ORDER = [0, 1, 3, 2, 4, 5]
#: NRRD kinds of tensors this package does not resample: named in the refusal
_OTHER_TENSOR_KINDS = ("3D-masked-symmetric-matrix", "3D-masked-matrix", "2D-symmetric-matrix",
                       "2D-masked-symmetric-matrix", "2D-matrix", "2D-masked-matrix")
#: NRRD spaces whose axes differ from LPS: the sign of each axis (ITK turns their geometry to LPS as well)
_SPACE_SIGNS = {"right-anterior-superior": (-1.0, -1.0, 1.0), "ras": (-1.0, -1.0, 1.0),
                "left-anterior-superior": (1.0, -1.0, 1.0), "las": (1.0, -1.0, 1.0)}


class TensorLayout(NamedTuple):
    """What a file says of its tensors."""

    kind: str  #: SYMMETRIC or FULL
    format: str  #: "nrrd" or "nifti"
    frame: np.ndarray  #: 3 x 3: the measurement frame's axes (columns) in LPS; identity for NIfTI
    #: a NRRD's key/value pairs (``key:=value`` lines, the value as written, escapes and all), in the file's order
    keyvalues: tuple = ()


#: the end of a NRRD header
_BLANK_LINE = re.compile(rb"\r?\n\r?\n")


def _nrrd_header(path: str) -> tuple[list[str], int] | None:
    """The header lines of a NRRD file (``NRRD000x`` first) and the byte where its data start (its size for a
    detached header); None for another file."""
    with open(path, "rb") as fh:
        head = fh.read(1 << 16)
        if not head.startswith(b"NRRD000"):
            return None
        # read on to the blank line, however long the header: a DTI's key/value pairs (a gradient direction a
        # line, ~60 bytes) pass 64 KB at ~1000 of them, and a header cut there had been taken to end at 64 KB, its
        # data read from the middle of its text (garbage tensors, up to 7.6e31) and its output broken
        end = _BLANK_LINE.search(head)
        while end is None:
            more = fh.read(1 << 20)
            if not more:
                break
            searched = max(0, len(head) - 3)  # a blank line may straddle the two reads
            head += more
            end = _BLANK_LINE.search(head, searched)
    text = head[:end.start()] if end else head
    return text.decode("latin-1").splitlines(), (end.end() if end else len(head))


def _is_keyvalue(line: str) -> bool:
    """Whether a NRRD header line is a key/value pair (``key:=value``), by teem's rule (``_nrrdReadNrrdParseField``,
    which ITK's NrrdIO runs): the line is cut at its first ``": "`` and is a pair where the part before holds
    ``":="``; else it is a field (``field: description``) or, starting with ``#``, a comment. A field's description
    may hold ``":="`` (``content: a:=b``, a ``data file:`` path): taken for a pair, such a line had been skipped as a
    field, so a detached header's data file was not found, and dropped from an output's header."""
    return not line.startswith("#") and ":=" in line.split(": ", 1)[0]


def _field_parts(line: str) -> tuple[str, str] | None:
    """A NRRD header line's field name and description (``field: description``), cut as teem cuts it: at its first
    ``": "``; None for a comment, a key/value pair, or a line without ``": "`` (``kinds:vector``), which teem
    refuses ("didn't see ": " or ":=" in line"), so ITK reads no such file: taken for the field, such a line had
    named a data file that was then reported missing, or been written as ``data file: <path>`` into the readable
    copy of a DTI header, which was then read though ITK and Slicer refuse the file."""
    if line.startswith("#") or _is_keyvalue(line):
        return None
    key, colon, value = line.partition(": ")
    return (key, value) if colon else None


def unreadable_line(lines: list[str]) -> str | None:
    """The first line of a NRRD header (its lines after the magic) that teem refuses: neither a comment, nor a
    field (``": "``), nor a key/value pair (``":="``); None where there is none."""
    return next((line for line in lines[1:] if not line.startswith("#") and ": " not in line and ":=" not in line),
                None)


def _is_field(key: str, name: str) -> bool:
    """Whether a NRRD header line's field name ``key`` is the field ``name`` (``"data file"``), as teem reads it: in
    any case, and a name of two words also without its space (``datafile``, ``byteskip``, ``measurementframe``:
    teem's ``_nrrdFieldStrEqv``). Each caller had listed the second spelling or not: ``measurementframe:`` was
    not seen, and a DTI file so written read its tensors in the wrong frame, without a word."""
    key = key.strip().lower()
    return key == name or (" " in name and key == name.replace(" ", ""))


def _field(lines: list[str], name: str) -> str | None:
    """The description of the field ``name`` (lower case, its words spaced: ``"data file"``) of a NRRD header's
    lines (see :func:`_is_field`); None where it has none."""
    for line in lines[1:]:
        parts = _field_parts(line)
        if parts is not None and _is_field(parts[0], name):
            return parts[1].strip()
    return None


def _refuse(path: str, what: str) -> InputError:
    return InputError(f"'{path}' holds {what}: only 3 x 3 tensors of a 3D image are read (a DTI volume: NRRD "
                      f"kinds {SYMMETRIC} or {FULL}, NIfTI intent SYMMATRIX of 6 values a voxel).",
                      "Save the tensors as a 3D volume of 3 x 3 tensors (Slicer saves a DTI volume so), or, if they "
                      "are no tensors, as a vector image (NRRD kinds vector, NIfTI intent VECTOR).")


def _nrrd_layout(path: str, lines: list[str]) -> TensorLayout | None:
    kinds = (_field(lines, "kinds") or "").split()
    tensor = [k for k in kinds if k in COUNTS or k in _OTHER_TENSOR_KINDS]
    if not tensor:
        return None
    kind = tensor[0]
    if kind not in COUNTS:
        raise _refuse(path, f"tensors of NRRD kind {kind}")
    domain = len(kinds) - 1
    if len(tensor) > 1 or domain != 3:
        raise _refuse(path, f"a {domain}D image of {kind} tensors (kinds: {' '.join(kinds)})")
    signs = _SPACE_SIGNS.get((_field(lines, "space") or "").lower(), (1.0, 1.0, 1.0))
    frame = np.eye(3)
    text = _field(lines, "measurement frame")
    if text:
        try:
            columns = [[float(v) for v in vector.split(",")] for vector in re.findall(r"\(([^)]*)\)", text)]
            frame = np.array(columns, dtype=float).T  # each vector is one column: a frame axis in world space
        except ValueError:
            columns = []
        if frame.shape != (3, 3) or not np.all(np.isfinite(frame)) or abs(np.linalg.det(frame)) < 1e-6:
            raise InputError(f"'{path}': its measurement frame ({text}) is not three independent 3D vectors, so "
                             "its tensors cannot be placed in space.",
                             "Correct the 'measurement frame:' line of its header (Slicer writes the frame of the "
                             "acquisition, e.g. (1,0,0) (0,1,0) (0,0,1)).")
    return TensorLayout(kind, "nrrd", np.diag(signs) @ frame, _keyvalues(lines))


def _keyvalues(lines: list[str]) -> tuple:
    """A NRRD header's key/value pairs (``key:=value``, see :func:`_is_keyvalue`; NRRD's spec: the key holds no
    ``:=``), in order."""
    pairs = []
    for line in lines[1:]:
        if not _is_keyvalue(line):
            continue
        key, _, value = line.partition(":=")
        if key:
            pairs.append((key, value))
    return tuple(pairs)


def _nifti_header(path: str) -> bytes | None:
    """The 348 bytes of a ``.nii``/``.nii.gz``'s header, decompressed where it is gzip (io's header read); None for
    another name, or a file too short or damaged to hold them (ITK's reading names it)."""
    import zlib

    from .io import _head  # io imports this module

    if not path.lower().endswith((".nii", ".nii.gz")):
        return None
    try:
        head = _head(path, 348)
    except (OSError, EOFError, zlib.error):  # zlib.error: damaged compressed data
        return None
    return head if len(head) == 348 else None


def _open_nifti(path: str):
    """``path`` opened for reading, decompressed where it is gzip (by its content, as ITK reads it, whatever its
    name: an uncompressed ``.nii.gz`` had not been seen as tensors)."""
    from .io import _is_gzip  # io imports this module

    return gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")


def _nifti_order(head: bytes) -> str | None:
    """The byte order ("<" or ">") of a NIfTI-1 header (348 bytes), as :func:`io._nifti_byte_order` tells it; None
    for another header."""
    from .io import _nifti_byte_order  # io imports this module

    found = _nifti_byte_order(head)
    return found[0] if found is not None and found[1] == 348 else None


def _nifti_layout(path: str, head: bytes) -> TensorLayout | None:
    order = _nifti_order(head)
    if order is None:
        return None
    dims = struct.unpack(order + "8h", head[40:56])
    p1, p2 = struct.unpack(order + "ff", head[56:64])
    intent = struct.unpack(order + "h", head[68:70])[0]
    if intent not in (_SYMMATRIX, _GENMATRIX):
        return None
    count = dims[5] if dims[0] >= 5 else 1
    if intent == _GENMATRIX and not (p1 == 3 and p2 == 3 and count == 9):
        return None  # a matrix of another shape: no tensor of the image's space, left as ITK reads it
    # ITK writes SYMMATRIX with intent_p1 left 0 (its NiftiImageIO sets the intent code only), so ANTs' DTI volumes say
    # nothing of the matrices' size: 6 values a voxel are then a symmetric 3 x 3 tensor, as ITK reads them
    if intent == _SYMMATRIX and dims[0] == 4 and dims[4] == 6 and p1 in (0, 3):
        # NIfTI keeps a voxel's values on the 5th axis (dim[5]); 6 volumes on the 4th are a time series to it
        raise InputError(f"'{path}' holds 6 volumes on its 4th axis with intent SYMMATRIX: NIfTI keeps a voxel's "
                         "tensor values on the 5th axis (dimensions x, y, z, 1, 6), and reads these as 6 time points.",
                         "Write the tensors with dimensions (x, y, z, 1, 6), as ITK, ANTs and Slicer do (nibabel: "
                         "reshape the data to (x, y, z, 1, 6) and keep the intent), or save them as a NRRD DTI volume.")
    if intent == _SYMMATRIX and not ((p1 == 3 or p1 == 0) and count == 6):
        raise _refuse(path, f"symmetric {p1:g} x {p1:g} matrices ({count} values a voxel; NIfTI intent SYMMATRIX)"
                      if p1 else f"symmetric matrices of {count} values a voxel (NIfTI intent SYMMATRIX)")
    if dims[0] != 5 or dims[4] != 1 or min(dims[1:4]) < 2:
        raise _refuse(path, f"tensors on a grid of {' x '.join(str(d) for d in dims[1:5])} voxels (a 3D image "
                            "has three axes of two voxels or more, and one volume)")
    return TensorLayout(SYMMETRIC if intent == _SYMMATRIX else FULL, "nifti", np.eye(3))


def file_layout(path: str | os.PathLike) -> TensorLayout | None:
    """What the file ``path`` says of its tensors (a NRRD's kinds and measurement frame, a NIfTI's intent); None
    for a file that holds no tensors or says nothing of them.

    Raises:
        InputError: tensors this package cannot resample (not 3 x 3, masked, of a 2D image, over time), or a
            measurement frame that is no frame.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        return None
    try:
        nrrd = _nrrd_header(path)
    except OSError:
        return None
    if nrrd is not None:
        return _nrrd_layout(path, nrrd[0])
    head = _nifti_header(path)
    return None if head is None else _nifti_layout(path, head)


def _absolute_data_files(lines: list[str], folder: str) -> list[str]:
    """A detached header's lines with its data file(s) named by absolute paths (for a copy of it elsewhere)."""
    out = list(lines)
    for i, line in enumerate(out):
        parts = _field_parts(line)
        if parts is None or not _is_field(parts[0], "data file"):
            continue
        key, value = parts[0], parts[1].strip()
        parts = value.split()
        if parts and parts[0] == "LIST":  # the names follow, one a line, to the header's end
            out[i + 1:] = [n if os.path.isabs(n) else os.path.join(folder, n) for n in out[i + 1:]]
        elif len(parts) >= 4 and "%" in parts[0]:  # a format, then min max step [subdim]
            parts[0] = parts[0] if os.path.isabs(parts[0]) else os.path.join(folder, parts[0])
            out[i] = f"{key}: {' '.join(parts)}"
        else:
            out[i] = f"{key}: {value if os.path.isabs(value) else os.path.join(folder, value)}"
        break
    return out


@contextlib.contextmanager
def readable_copy(path: str | os.PathLike, layout: TensorLayout) -> Iterator[str]:
    """A copy of ``path`` (in a private temporary folder) that ITK reads as a vector image of the tensors'
    components in the file's order: the NRRD kind or NIfTI intent rewritten as "vector", nothing else."""
    path = os.fspath(path)
    with tempfile.TemporaryDirectory(prefix="mmf-tensor-") as folder:
        if layout.format == "nrrd":
            header = _nrrd_header(path)
            assert header is not None
            lines, start = header
            lines = [re.sub(rf"(?<!\S){re.escape(layout.kind)}(?!\S)", "vector", line)
                     if line.lower().startswith("kinds:") else line for line in lines]
            detached = _field(lines, "data file") is not None
            lines = _absolute_data_files(lines, os.path.dirname(os.path.abspath(path)))
            copy = os.path.join(folder, "tensors.nhdr" if detached else "tensors.nrrd")
            with open(copy, "wb") as out:
                out.write(("\n".join(lines) + "\n\n").encode("latin-1"))
                if not detached:
                    with open(path, "rb") as fh:
                        fh.seek(start)
                        shutil.copyfileobj(fh, out, 1 << 24)
        else:
            copy = os.path.join(folder, "tensors.nii")
            with _open_nifti(path) as fh, open(copy, "wb") as out:
                head = bytearray(fh.read(348))
                head[68:70] = struct.pack(_nifti_order(bytes(head)) + "h", _VECTOR)
                out.write(head)
                shutil.copyfileobj(fh, out, 1 << 24)
        yield copy


def matrices(values: np.ndarray, kind: str) -> np.ndarray:
    """The 3 x 3 matrices (shape (..., 3, 3)) of tensors in ITK's order (shape (..., 6) or (..., 9))."""
    if kind == FULL:
        return values.reshape(values.shape[:-1] + (3, 3))
    xx, xy, xz, yy, yz, zz = (values[..., k] for k in range(6))
    return np.stack([np.stack([xx, xy, xz], -1), np.stack([xy, yy, yz], -1), np.stack([xz, yz, zz], -1)], -2)


def packed(mats: np.ndarray, kind: str) -> np.ndarray:
    """The tensors of 3 x 3 matrices in ITK's order (the inverse of :func:`matrices`; a symmetric tensor keeps the
    mean of its two off-diagonal halves, equal but for rounding)."""
    if kind == FULL:
        return mats.reshape(mats.shape[:-2] + (9,))
    sym = (mats + np.swapaxes(mats, -1, -2)) / 2.0
    return np.stack([sym[..., 0, 0], sym[..., 0, 1], sym[..., 0, 2], sym[..., 1, 1], sym[..., 1, 2],
                     sym[..., 2, 2]], -1)


def _in_frame(values: np.ndarray, kind: str, frame: np.ndarray) -> np.ndarray:
    """Tensors given in ``frame``'s axes, in the axes ``frame`` is written in: F D F^T."""
    if np.array_equal(frame, np.eye(3)):
        return values
    return packed(frame @ matrices(values.astype(np.float64), kind) @ frame.T, kind)


def from_file(image: sitk.Image, layout: TensorLayout) -> sitk.Image:
    """The tensor image ITK read from a file of ``layout`` (see :func:`readable_copy`) in this package's convention
    (ITK's order, LPS), marked with ``layout``'s kind and frame."""
    count = image.GetNumberOfComponentsPerPixel()
    if count != COUNTS[layout.kind] or image.GetDimension() != 3:
        raise InputError(f"The file's header says it holds {layout.kind} tensors ({COUNTS[layout.kind]} values a "
                         f"voxel of a 3D image), but ITK reads a {image.GetDimension()}D image of {count} values a "
                         "voxel.", "Check the header's sizes and kinds (or intent) against its data.")
    values = sitk.GetArrayFromImage(image)
    if layout.format == "nifti" and layout.kind == SYMMETRIC:
        values = values[..., _NIFTI_ORDER]
    values = _in_frame(values, layout.kind, layout.frame).astype(values.dtype, copy=False)
    out = sitk.GetImageFromArray(values, isVector=True)
    out.CopyInformation(image)
    mark(out, layout.kind, layout.frame, layout.keyvalues)
    return out


def tensor_kind(image: sitk.Image) -> str | None:
    """SYMMETRIC or FULL for an image marked as tensors (:func:`mark`), else None."""
    if not image.HasMetaDataKey(KIND_KEY):
        return None
    kind = image.GetMetaData(KIND_KEY)
    return kind if kind in COUNTS and image.GetNumberOfComponentsPerPixel() == COUNTS[kind] else None


def _frame_of(image: sitk.Image) -> np.ndarray:
    try:
        frame = np.array([float(v) for v in image.GetMetaData(FRAME_KEY).split()]).reshape(3, 3)
    except (RuntimeError, ValueError):
        return np.eye(3)
    return frame if np.all(np.isfinite(frame)) and abs(np.linalg.det(frame)) > 1e-6 else np.eye(3)


def mark(image: sitk.Image, kind: str, frame: np.ndarray | None = None, keyvalues=()) -> sitk.Image:
    """Mark ``image`` (in place) as tensors of ``kind`` whose file's measurement frame is ``frame`` (LPS axes) and
    whose NRRD key/value pairs are ``keyvalues`` ((key, value) pairs)."""
    image.SetMetaData(KIND_KEY, kind)
    image.SetMetaData(FRAME_KEY, " ".join(repr(float(v)) for v in np.asarray(
        np.eye(3) if frame is None else frame, dtype=float).ravel()))
    if keyvalues:
        image.SetMetaData(KEYVALUES_KEY, json.dumps([list(pair) for pair in keyvalues]))
    elif image.HasMetaDataKey(KEYVALUES_KEY):
        image.EraseMetaData(KEYVALUES_KEY)
    return image


def keyvalues_of(image: sitk.Image) -> tuple:
    """The NRRD key/value pairs a tensor image was read with (:func:`mark`), in order."""
    if not image.HasMetaDataKey(KEYVALUES_KEY):
        return ()
    try:
        pairs = json.loads(image.GetMetaData(KEYVALUES_KEY))
        return tuple((str(k), str(v)) for k, v in pairs)
    except (ValueError, TypeError):
        return ()


#: key/values of a DWI acquisition's directions (NRRD's DWMRI convention, in the measurement frame): no longer the
#: directions of tensors a transform has turned
_DIRECTION_KEYS = re.compile(r"DWMRI_(gradient|B-matrix|NEX)_\d+$")


def copy_mark(source: sitk.Image, target: sitk.Image, turned: bool = False) -> sitk.Image:
    """Give ``target`` the tensor mark of ``source`` (if any), with its NRRD key/value pairs as Slicer's Resample
    DTI Volume keeps them (all of them), except, when ``turned`` (its tensors turned by a transform), the
    acquisition's gradient directions and B-matrices (``DWMRI_gradient_NNNN``, ``DWMRI_B-matrix_NNNN``,
    ``DWMRI_NEX_NNNN``), which would describe directions the tensors no longer have."""
    kind = tensor_kind(source)
    if kind is not None and target.GetNumberOfComponentsPerPixel() == COUNTS[kind]:
        pairs = keyvalues_of(source)
        if turned:
            pairs = tuple((k, v) for k, v in pairs if not _DIRECTION_KEYS.match(k.strip()))
        mark(target, kind, _frame_of(source), pairs)
    return target


#: outputs whose header says "tensor" (:func:`tag_written_file`) and that :func:`file_layout` reads back as tensors;
#: the others (MetaImage, which has no tensor type; an Analyze/NIfTI pair) get a vector image
TAGGED_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz")


def to_file(image: sitk.Image, suffix: str) -> sitk.Image:
    """What ITK is to write of the tensor image ``image`` as a ``suffix`` file: its components in the file's order
    and frame (a NRRD's: the measurement frame ``image`` was read in; NIfTI's: LPS), without the mark."""
    kind = tensor_kind(image)
    assert kind is not None
    values = sitk.GetArrayFromImage(image)
    if suffix in (".nrrd", ".nhdr"):
        values = _in_frame(values, kind, np.linalg.inv(_frame_of(image))).astype(values.dtype, copy=False)
    elif suffix in (".nii", ".nii.gz") and kind == SYMMETRIC:
        values = values[..., _NIFTI_ORDER]
    out = sitk.GetImageFromArray(np.ascontiguousarray(values), isVector=True)
    out.CopyInformation(image)
    return out


def _vectors(frame: np.ndarray) -> str:
    return " ".join("(" + ",".join(f"{float(v) + 0.0:.17g}" for v in frame[:, k]) + ")" for k in range(3))


def tag_written_file(path: str, suffix: str, image: sitk.Image) -> None:
    """Make the file ITK wrote at ``path`` (a ``suffix`` output of :func:`to_file`'s image) say it holds
    ``image``'s tensors: a NRRD's kinds and measurement frame, a NIfTI's intent (SYMMATRIX with intent_p1 3, or
    GENMATRIX 3 x 3), as Slicer, ITK and ANTs read DTI volumes."""
    kind = tensor_kind(image)
    assert kind is not None
    if suffix in (".nrrd", ".nhdr"):
        header = _nrrd_header(path)
        assert header is not None
        lines, start = header
        lines = [line for line in lines if not line.lower().startswith("measurement frame:")]
        for i, line in enumerate(lines):
            if line.lower().startswith("kinds:"):
                words = line.split(":", 1)[1].split()
                words[words.index("vector")] = kind
                lines[i] = "kinds: " + " ".join(words)
                lines.insert(i + 1, f"measurement frame: {_vectors(_frame_of(image))}")
                break
        # the key/value pairs it was read with (modality:=DTMRI, which Slicer and teem read; ITK had dropped them)
        lines = [line for line in lines if not _is_keyvalue(line)]
        lines += [f"{key}:={value}" for key, value in keyvalues_of(image)]
        retagged = path + ".tensor"  # beside the (temporary) file ITK wrote, replaced by it at once
        try:
            with open(retagged, "wb") as out:
                out.write(("\n".join(lines) + "\n\n").encode("latin-1"))
                if _field(lines, "data file") is None:
                    with open(path, "rb") as fh:
                        fh.seek(start)
                        shutil.copyfileobj(fh, out, 1 << 24)
            os.replace(retagged, path)
        finally:
            if os.path.exists(retagged):
                os.remove(retagged)
        return
    header = path
    gz = suffix == ".nii.gz"
    with (gzip.open(header, "rb") if gz else open(header, "rb")) as fh:
        data = bytearray(fh.read())
    order = _nifti_order(bytes(data[:348]))
    assert order is not None
    data[56:64] = struct.pack(order + "ff", 3.0, 3.0 if kind == FULL else 0.0)
    data[68:70] = struct.pack(order + "h", _SYMMATRIX if kind == SYMMETRIC else _GENMATRIX)
    with (gzip.open(header, "wb", compresslevel=6) if gz else open(header, "wb")) as fh:
        fh.write(data)


#: log-Euclidean interpolation (:func:`log_tensors`): eigenvalues below this fraction of the non-zero tensors' median
#: mean diffusivity (trace / 3) are raised to it; 1.5e-6 mm^2/s for a brain's 1.5e-3 (the log of 0 or of a negative
#: eigenvalue, which noise gives, is no number)
LOG_FLOOR = 1e-3
#: tensors taken at once by :func:`log_tensors` and :func:`exp_tensors` (their eigen-decompositions, ~400 bytes each)
_SLAB = 1 << 18


def _eigen_map(values: np.ndarray, function) -> np.ndarray:
    """``function`` applied to the eigenvalues of symmetric tensors (..., 6, ITK's order): V f(L) V^T, float64, a
    slab of tensors at a time."""
    flat = np.asarray(values, dtype=np.float64).reshape(-1, 6)
    out = np.empty_like(flat)
    for first in range(0, len(flat), _SLAB):
        eigenvalues, eigenvectors = np.linalg.eigh(matrices(flat[first:first + _SLAB], SYMMETRIC))
        mapped = (eigenvectors * function(eigenvalues)[..., None, :]) @ np.swapaxes(eigenvectors, -1, -2)
        out[first:first + _SLAB] = packed(mapped, SYMMETRIC)
    return out.reshape(np.shape(values))


def log_floor(values: np.ndarray) -> float:
    """The smallest eigenvalue :func:`log_tensors` takes for the non-zero symmetric tensors ``values`` (n, 6):
    :data:`LOG_FLOOR` times their median mean diffusivity (or, where that is not positive, as in noise, their
    largest component), 1.0 where there is none."""
    inside = np.asarray(values, dtype=np.float64).reshape(-1, 6)
    if inside.size == 0:
        return 1.0
    diffusivity = float(np.median((inside[:, 0] + inside[:, 3] + inside[:, 5]) / 3.0))
    scale = diffusivity if diffusivity > 0 else float(np.max(np.abs(inside)))
    return LOG_FLOOR * scale if scale > 0 else 1.0


def log_tensors(values: np.ndarray, floor: float) -> np.ndarray:
    """The matrix logarithms of symmetric tensors (..., 6, ITK's order), in the same order: V log(max(L, floor))
    V^T, so that a tensor that is not positive definite (a zero or negative eigenvalue: noise, a fitting failure)
    is taken with those eigenvalues raised to ``floor``."""
    return _eigen_map(values, lambda eigenvalues: np.log(np.maximum(eigenvalues, floor)))


def exp_tensors(values: np.ndarray) -> np.ndarray:
    """The matrix exponentials of symmetric matrices (..., 6, ITK's order): the inverse of :func:`log_tensors`."""
    return _eigen_map(values, np.exp)
