"""Read landmark (corresponding point) files as ITK physical points: LPS, in mm.

Formats, chosen by the file's extension:

- 3D Slicer markups ``.fcsv``, read as Slicer 5 reads them (vtkMRMLMarkupsFiducialStorageNode; checked
  against slicer-core's reader): with a ``# Markups fiducial file version`` line, the ``# CoordinateSystem = LPS``
  (or ``RAS``; ``1`` = LPS, ``0`` = RAS as older Slicer versions wrote it) line says the system, LPS when there is
  none (the default of Slicer's storage node since 4.11; RAS before); x, y, z are the 2nd to 4th fields and the label the 12th, whatever the
  ``# columns`` line says (one that names other places is refused), and a 15th field, the position status Slicer
  5 writes, other than 2 (defined) marks the point unplaced. Without a version line the file is a Slicer 3
  list, ``label,x,y,z,...`` in RAS (such a file that says LPS is refused: Slicer would ignore the line).
- 3D Slicer markups ``.mrk.json`` (``.json``): ``coordinateSystem`` (``LPS`` when absent, as Slicer's reader
  has it) and ``controlPoints``; ``coordinateUnits`` other than mm is refused (Slicer does not convert units).
  A file holding several markups is refused (save each point list to its own file).
- elastix / transformix input point files (``.txt``, ``.pts``): a first line ``point`` (physical points, LPS
  mm: elastix works in ITK's space) or ``index`` (voxel indices of an image, rounded to whole voxels and put
  in physical space through that image's geometry, as transformix does), then the number of points, then
  one point a line. A file without the ``point``/``index`` line, which elastix reads as indices, is refused:
  say which it holds.
- ANTs point tables (``.csv``), as ``antsApplyTransformsToPoints`` reads them (itk::CSVArray2DFileReader with
  column headers: the first line is the header; the first 2 or 3 columns are the point, in ITK's physical
  space, LPS mm): the header starts ``x,y`` or ``x,y,z`` (``t`` and any further columns, such as ``label``,
  ignored); a header naming them elsewhere is refused, since ANTs reads the first columns whatever their names.

Unplaced points (a Slicer control point whose ``positionStatus`` is not ``defined``, or an ``.fcsv`` row with
empty coordinates) are kept as rows of NaN, so that the i-th point of a fixed file still pairs with the i-th
of the moving one; :func:`paired_landmarks` drops each pair with an unplaced point, naming it. Points pair by
their order in the files (as elastix, ANTs and DirLab's lists pair them), never by label.
"""

from __future__ import annotations

import csv
import io as _stdio
import json
import math
import os
import re
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .mrml import ras_points_to_lps

__all__ = [
    "Landmarks",
    "read_landmarks",
    "paired_landmarks",
    "LANDMARK_EXTENSIONS",
]

#: The extensions :func:`read_landmarks` reads, with the format each one is read as.
LANDMARK_EXTENSIONS = {".fcsv": "Slicer markups (.fcsv)", ".mrk.json": "Slicer markups (.mrk.json)",
                       ".json": "Slicer markups (.mrk.json)", ".txt": "elastix point file",
                       ".pts": "elastix point file", ".csv": "ANTs point table (.csv)"}

@dataclass
class Landmarks:
    """Points of one landmark file.

    Attributes:
        points: (n, dim) array of LPS physical coordinates in mm; a row of NaN where a point is unplaced.
        labels: one label a point ("" where the file has none).
        path: the file read.
        format: what it was read as (a value of :data:`LANDMARK_EXTENSIONS`).
        coordinate_system: what the file said its coordinates are ("LPS", "RAS", "voxel index", and where it
            said nothing, what was assumed and why).
    """

    points: np.ndarray
    labels: list[str]
    path: str
    format: str
    coordinate_system: str

    @property
    def placed(self) -> np.ndarray:
        """Whether each point has a position (bool array)."""
        return np.all(np.isfinite(self.points), axis=1)

    def __len__(self) -> int:
        return int(self.points.shape[0])


def _kind(path: str) -> str:
    lower = path.lower()
    for ext in sorted(LANDMARK_EXTENSIONS, key=len, reverse=True):
        if lower.endswith(ext):
            return ext
    raise InputError(f"Landmark file '{path}' has an extension that names no landmark format.",
                     "Give a 3D Slicer markups file (.fcsv, .mrk.json), an elastix point file (.txt, .pts: first "
                     "line 'point' or 'index') or an ANTs point table (.csv with columns x,y,z).")


def read_landmarks(path: str | os.PathLike, image: sitk.Image | None = None) -> Landmarks:
    """Read a landmark file (see the module docstring for the formats) as LPS points in mm.

    Args:
        path: the file.
        image: the image whose voxel indices an elastix ``index`` file holds (the fixed image for the fixed
            points, the moving image for the moving ones); not used by the other formats.

    Raises:
        InputError: a missing or unreadable file, an unknown extension, a file holding no point, a count or a
            coordinate system it does not keep to, a coordinate that is no number, or an ``index`` file
            without an image.
    """
    path = os.fspath(path)
    kind = _kind(path)
    if not os.path.isfile(path):
        raise InputError(f"Landmark file not found: '{path}'.", "Check the path.")
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Landmark file '{path}' could not be read as text ({exc}).",
                         "Give a landmark file as Slicer, elastix or ANTs write it (text).") from None
    if kind == ".fcsv":
        out = _read_fcsv(path, text)
    elif kind in (".mrk.json", ".json"):
        out = _read_markups_json(path, text)
    elif kind == ".csv":
        out = _read_ants_csv(path, text)
    else:
        out = _read_elastix(path, text, image)
    if len(out) == 0:
        raise InputError(f"Landmark file '{path}' holds no point.", "Give a file with at least one landmark.")
    if not out.placed.any():
        raise InputError(f"Landmark file '{path}' holds no placed point ({len(out)} unplaced).",
                         "Place the points (Slicer's Markups module) and save the file again.")
    return out


# ----------------------------------------------------------------------------- Slicer
def _system(path: str, value: str, where: str) -> str:
    v = value.strip().upper()
    if v in ("LPS", "1"):
        return "LPS"
    if v in ("RAS", "0"):
        return "RAS"
    raise InputError(f"Landmark file '{path}' names the coordinate system {value.strip()!r} ({where}); Slicer "
                     "writes LPS or RAS (0 = RAS, 1 = LPS in files of Slicer 4.6 to 4.10).",
                     "Correct the line to LPS or RAS, as the points were saved.")


def _number(path: str, text: str, where: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise InputError(f"Landmark file '{path}': {where} is {text!r}, not a number.",
                         "Correct the file (coordinates are numbers in mm).") from None
    if not math.isfinite(value):
        raise InputError(f"Landmark file '{path}': {where} is {text!r}.",
                         "Give every coordinate as a finite number, or leave the point out.")
    return value


#: Where Slicer's .fcsv reader (vtkMRMLMarkupsFiducialStorageNode) finds each field of a point line: fixed
#: positions, whatever the file's '# columns' line says; Slicer 5 appends the position status (field 14:
#: 2 defined, 0 undefined, 1 preview, 3 missing) after associatedNodeID without naming it in that line.
_FCSV_X, _FCSV_LABEL, _FCSV_STATUS = 1, 11, 14
_FCSV_DEFINED = "2"


def _read_fcsv(path: str, text: str) -> Landmarks:
    """Read an .fcsv as Slicer 5 reads it (Slicer/Slicer vtkMRMLMarkupsFiducialStorageNode::ReadDataInternal,
    checked against slicer-core 5.11's reader): a file without the '# Markups fiducial file version' line is a
    Slicer 3 list (label,x,y,z,sel,vis), RAS, its '# CoordinateSystem' line ignored; a versioned file is in the
    system its '# CoordinateSystem' line names (LPS/RAS, or 0 = RAS, 1 = LPS), LPS when it has none (the
    default of vtkMRMLMarkupsStorageNode since Slicer 4.11)."""
    system = version = None
    system_line = ""
    columns: list[str] | None = None
    rows: list[tuple[int, list[str]]] = []
    for n, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            key, sep, value = stripped[1:].partition("=")
            key = key.strip().lower()
            if sep and key == "markups fiducial file version":
                version = value.strip()
            elif sep and key == "coordinatesystem":
                system, system_line = _system(path, value, f"line {n}"), value.strip()
            elif sep and key == "columns":
                columns = [c.strip().lower() for c in value.split(",")]
            continue
        rows.append((n, next(csv.reader([line]))))
    if version is None:
        if system == "LPS":
            raise InputError(f"Landmark file '{path}' says '# CoordinateSystem = {system_line}' but has no '# Markups "
                             "fiducial file version' line: Slicer reads such a file as a Slicer 3 point list "
                             "(label,x,y,z) in RAS and ignores the coordinate system line, so it would not read these "
                             "points as LPS.",
                             "Add the line '# Markups fiducial file version = 4.11' above it (Slicer then reads the "
                             "columns id,x,y,z,... in LPS), or save the points again from Slicer.")
        system = "RAS"
        stated = ("RAS (no '# Markups fiducial file version' line: a Slicer 3 point list, label,x,y,z in RAS, as Slicer "
                  "reads it)")
        il, status_at = 0, None
    else:
        if columns and [columns.index(k) if k in columns else None for k in "xyz"] != [1, 2, 3]:
            raise InputError(f"Landmark file '{path}' has a '# columns' line that puts x, y, z elsewhere than the "
                             f"2nd to 4th columns ({', '.join(columns)}); Slicer reads x, y, z from those columns "
                             "whatever the line says, so it would read other numbers than the line names.",
                             "Write the points as Slicer does: id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,"
                             "associatedNodeID.")
        stated = system or "LPS (no '# CoordinateSystem' line: LPS, as Slicer 4.11 and later read such a file)"
        system = system or "LPS"
        il, status_at = _FCSV_LABEL, _FCSV_STATUS
    points, labels = [], []
    for n, cells in rows:
        if len(cells) <= _FCSV_X + 2:
            raise InputError(f"Landmark file '{path}': line {n} has {len(cells)} fields, too few for x, y, z.",
                             "Give a Slicer .fcsv file: id,x,y,z,... one point a line.")
        raw = [c.strip() for c in cells[_FCSV_X:_FCSV_X + 3]]
        status = cells[status_at].strip() if status_at is not None and len(cells) > status_at else ""
        if all(not c for c in raw) or status not in ("", _FCSV_DEFINED):  # a point without a position
            points.append([math.nan] * 3)
        else:
            points.append([_number(path, c, f"line {n}, {name}") for c, name in zip(raw, "xyz")])
        labels.append(cells[il].strip() if len(cells) > il else "")
    arr = np.array(points, dtype=np.float64).reshape(-1, 3)
    if system == "RAS":
        arr = ras_points_to_lps(arr)  # mrml.py holds the one RAS <-> LPS conversion (DESIGN.md)
    return Landmarks(arr, labels, path, LANDMARK_EXTENSIONS[".fcsv"], stated)


def _read_markups_json(path: str, text: str) -> Landmarks:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise InputError(f"Landmark file '{path}' is not valid JSON ({exc}).",
                         "Give a Slicer markups file (.mrk.json) as Slicer saves it.") from None
    markups = doc.get("markups") if isinstance(doc, dict) else None
    if not isinstance(markups, list) or not markups:
        raise InputError(f"Landmark file '{path}' holds no 'markups' list: it is no Slicer markups file.",
                         "Give a Slicer markups file (.mrk.json) as Slicer saves it.")
    with_points = [m for m in markups if isinstance(m, dict) and m.get("controlPoints")]
    if len(with_points) != 1:
        raise InputError(f"Landmark file '{path}' holds {len(with_points)} markups with control points; one "
                         "point list is read.",
                         "Save each point list to its own file (Slicer: one markups node a file).")
    markup = with_points[0]
    system = _system(path, str(markup.get("coordinateSystem", "LPS")), "its coordinateSystem")
    stated = system if "coordinateSystem" in markup else "LPS (no coordinateSystem: LPS, Slicer's default)"
    units = markup.get("coordinateUnits", "mm")
    units = units.get("CodeValue", units) if isinstance(units, dict) else units  # UCUM coded entry, or a string
    if str(units).strip() != "mm":
        # Slicer (vtkMRMLMarkupsJsonStorageNode) does not convert coordinates between units: it reads the numbers
        # as they are, for a scene whose length unit is the file's; the images here are in mm
        raise InputError(f"Landmark file '{path}' has coordinateUnits {units!r}, not mm: Slicer does not convert "
                         "such coordinates (it reads the numbers as they are, in a scene of that unit), and the "
                         "images here are in mm.",
                         "Save the points from a scene whose length unit is mm (coordinateUnits mm), or convert "
                         "them to mm and set coordinateUnits to mm.")
    points, labels = [], []
    for i, cp in enumerate(markup["controlPoints"]):
        if not isinstance(cp, dict):
            raise InputError(f"Landmark file '{path}': control point {i} is no JSON object.",
                             "Give a Slicer markups file (.mrk.json) as Slicer saves it.")
        labels.append(str(cp.get("label", "")))
        status = str(cp.get("positionStatus", "defined"))
        pos = cp.get("position")
        if status != "defined" or pos is None:
            points.append([math.nan] * 3)
            continue
        if not isinstance(pos, list) or len(pos) != 3:
            raise InputError(f"Landmark file '{path}': control point {i} ({labels[-1]!r}) has the position {pos!r}, "
                             "not three numbers.", "Correct the file, or place the point again in Slicer.")
        points.append([_number(path, str(c), f"control point {i} ({labels[-1]!r})") for c in pos])
    arr = np.array(points, dtype=np.float64).reshape(-1, 3)
    if system == "RAS":
        arr = ras_points_to_lps(arr)
    return Landmarks(arr, labels, path, LANDMARK_EXTENSIONS[".mrk.json"], stated)


# ----------------------------------------------------------------------------- elastix
def _read_elastix(path: str, text: str, image: sitk.Image | None) -> Landmarks:
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    fix = ("Give an elastix point file: a line 'point' (LPS mm) or 'index' (voxel indices), a line with the number "
           "of points, then one point a line.")
    if not lines:
        raise InputError(f"Landmark file '{path}' is empty.", fix)
    head = lines[0][0].lower()
    if head.startswith("point") and any("InputPoint" in tok for tok in lines[0]):
        raise InputError(f"Landmark file '{path}' is transformix' output (outputpoints.txt), not a point file.",
                         "Give the point file given to transformix (-def), or the points themselves.")
    if head not in ("point", "index"):
        raise InputError(f"Landmark file '{path}' does not start with 'point' or 'index' (it starts with "
                         f"{lines[0][0]!r}): elastix reads such a file as voxel indices, which may not be what it "
                         "holds.", "Add a first line 'point' (physical LPS mm) or 'index' (voxel indices).")
    if len(lines[0]) > 2:
        raise InputError(f"Landmark file '{path}': its first line holds more than '{lines[0][0]}' and the count.", fix)
    # the count on the first line (after the word) or on the second, as elastix' stream reader takes either
    count_text, body = (lines[0][1], lines[1:]) if len(lines[0]) == 2 else \
        ((lines[1][0] if len(lines[1]) == 1 else " ".join(lines[1])) if len(lines) > 1 else "", lines[2:])
    if not re.fullmatch(r"\d+", count_text):
        raise InputError(f"Landmark file '{path}': after '{lines[0][0]}' comes {count_text!r}, not the number of "
                         "points.", fix)
    count = int(count_text)
    if len(body) != count:
        raise InputError(f"Landmark file '{path}' says it holds {count} points but has {len(body)} point lines.",
                         "Correct the count on the second line, or the points.")
    dims = {len(ln) for ln in body}
    if len(dims) > 1 or (dims and dims.pop() not in (2, 3)):
        raise InputError(f"Landmark file '{path}': its point lines do not all hold 2 or all hold 3 coordinates.",
                         "Give one point a line, its 2 or 3 coordinates separated by spaces.")
    points = np.array([[_number(path, tok, f"point {i + 1}") for tok in ln] for i, ln in enumerate(body)],
                      dtype=np.float64).reshape(len(body), -1)
    if head == "point":
        return Landmarks(points, [""] * len(body), path, LANDMARK_EXTENSIONS[".txt"], "LPS (elastix 'point')")
    if image is None:
        raise InputError(f"Landmark file '{path}' holds voxel indices ('index'): the image they index is needed.",
                         "Give the image too (the fixed image for fixed points, the moving one for moving points), "
                         "or a 'point' file.")
    if points.shape[1] != image.GetDimension():
        raise InputError(f"Landmark file '{path}' holds {points.shape[1]}D indices for a {image.GetDimension()}D "
                         "image.", "Give indices with one value per image axis.")
    # transformix rounds each index to a whole voxel (itk::Math::Round) before taking it to physical space
    physical = [image.TransformIndexToPhysicalPoint([int(math.floor(v + 0.5)) for v in p]) for p in points]
    return Landmarks(np.array(physical, dtype=np.float64), [""] * len(body), path, LANDMARK_EXTENSIONS[".txt"],
                     "voxel index (elastix 'index', rounded to whole voxels as transformix does), taken to LPS "
                     "through the image's geometry")


# ----------------------------------------------------------------------------- ANTs
def _read_ants_csv(path: str, text: str) -> Landmarks:
    rows = [r for r in csv.reader(_stdio.StringIO(text)) if any(c.strip() for c in r)]
    if not rows:
        raise InputError(f"Landmark file '{path}' is empty.", "Give a csv file with a header x,y,z,t and one point "
                                                              "a line.")
    header = [c.strip().lower() for c in rows[0]]
    if not {"x", "y"} <= set(header):
        raise InputError(f"Landmark file '{path}' has no header naming its x, y (and z) columns (its first line is "
                         f"{','.join(rows[0])!r}); antsApplyTransformsToPoints takes the first line as the header.",
                         "Add a first line x,y,z,t (LPS mm).")
    names = ["x", "y", "z"] if "z" in header else ["x", "y"]
    if header[:len(names)] != names:
        # antsApplyTransformsToPoints reads the first Dimension columns as the point, whatever their names
        raise InputError(f"Landmark file '{path}' has the columns {','.join(rows[0])!r}: antsApplyTransformsToPoints "
                         f"takes the first {len(names)} columns as {', '.join(names)}, whatever the header names, so "
                         "it would read other numbers than the header says.",
                         f"Put the columns {','.join(names)} first (x,y,z,t,label,... as ANTs writes them).")
    cols = list(range(len(names)))
    il = header.index("label") if "label" in header else None
    points, labels = [], []
    for n, row in enumerate(rows[1:], start=2):
        if len(row) <= max(cols):
            raise InputError(f"Landmark file '{path}': line {n} has {len(row)} fields, fewer than its header.",
                             "Give every point all its coordinates.")
        points.append([_number(path, row[i].strip(), f"line {n}, {k}") for i, k in zip(cols, names)])
        labels.append(row[il].strip() if il is not None and len(row) > il else "")
    return Landmarks(np.array(points, dtype=np.float64).reshape(-1, len(names)), labels, path,
                     LANDMARK_EXTENSIONS[".csv"], "LPS (ANTs)")


# ----------------------------------------------------------------------------- pairs
def paired_landmarks(fixed: Landmarks, moving: Landmarks) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The corresponding points of two landmark files, pair by pair in file order.

    Returns:
        (fixed points, moving points, notes): the pairs where both points are placed, and one note a pair
        left out (which, and why).

    Raises:
        InputError: the files hold different numbers of points or points of different dimensions, or no pair
            has both points placed.
    """
    if len(fixed) != len(moving):
        raise InputError(f"The landmark files hold different numbers of points: {len(fixed)} in '{fixed.path}', "
                         f"{len(moving)} in '{moving.path}'; points pair by their order.",
                         "Give the same landmarks, in the same order, in both files.")
    if fixed.points.shape[1] != moving.points.shape[1]:
        raise InputError(f"The landmark files hold points of different dimensions ({fixed.points.shape[1]}D in "
                         f"'{fixed.path}', {moving.points.shape[1]}D in '{moving.path}').",
                         "Give both files in the images' dimension.")
    keep = fixed.placed & moving.placed
    notes = []
    for i in np.nonzero(~keep)[0]:
        side = " and ".join(f"'{lm.path}'" for lm in (fixed, moving) if not lm.placed[i])
        label = fixed.labels[i] or moving.labels[i]
        notes.append(f"landmark {i + 1}{f' ({label})' if label else ''} left out: unplaced in {side}")
    if not keep.any():
        raise InputError("No landmark is placed in both files.", "Place the points in both files.")
    return fixed.points[keep], moving.points[keep], notes

