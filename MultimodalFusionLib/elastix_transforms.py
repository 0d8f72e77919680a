"""Read elastix transform parameter files (``TransformParameters.0.txt``) as SimpleITK transforms.

elastix writes its result in its own format (one ``(Name value ...)`` a line), which ITK's transform reader
refuses. The transforms below are converted to the SimpleITK transform that maps points as transformix does
(fixed -> moving, ITK's LPS physical space, the same convention as an ITK ``.tfm``):

- ``TranslationTransform``;
- ``EulerTransform`` (2D: angle, translation; 3D: three angles, translation, ``ComputeZYX``), about
  ``CenterOfRotationPoint``;
- ``SimilarityTransform`` (2D: scale, angle, translation; 3D: versor, translation, scale);
- ``AffineTransform`` (matrix row by row, translation), ``AffineDTITransform`` (angles, shears, scales,
  translation, composed as elastix composes them) and ``AffineLogTransform`` (the matrix' logarithm row by row,
  translation: the matrix is its exponential), about ``CenterOfRotationPoint``;
- ``BSplineTransform`` and ``RecursiveBSplineTransform`` of spline order 1, 2 or 3 (``GridSize``, ``GridIndex``,
  ``GridSpacing``, ``GridOrigin``, ``GridDirection``; not cyclic; a ``RecursiveBSplineTransform`` in 3D only:
  transformix maps a 2D one otherwise than its coefficients as a B-spline, with a field up to 1e28). ITK's B-spline counts a point on the upper face
  of the grid's valid region (continuous index size - 1 - (order - 1) / 2 exactly) as inside, elastix as outside
  (no move): the two differ on that face alone, for every order;
- ``File``: the ITK transform file elastix wrote beside it (``ITKTransformOutputFileNameExtension``).

A chain through ``InitialTransformParameterFileName`` (``InitialTransformParametersFileName``, elastix' older
name) is followed, the name resolved as elastix 5 resolves it: as written when it is absolute or names a file
from the working folder, else relative to the folder of the file that names it; each link must combine by
``Compose`` (the current transform applied to the initial one's result). Everything else (``Add``, spline
order 0 or above 3, a 2D ``RecursiveBSplineTransform``, other transform kinds, parameters kept in a binary file,
``UseDirectionCosines "false"``) is refused, naming what was found, with the way to an ITK file that elastix writes
itself (for a 2D ``RecursiveBSplineTransform``: to run elastix again with a ``BSplineTransform``).
"""

from __future__ import annotations

import math
import os
import re

import numpy as np
import SimpleITK as sitk

from .errors import InputError, itk_guard

__all__ = ["is_elastix_parameter_file", "read_elastix_transform"]

#: the fix for what is not converted here: elastix writes the ITK file itself
_ITK_FILE_FIX = ('Have elastix write the ITK file too: add (ITKTransformOutputFileNameExtension "tfm") (and '
                 '(WriteITKCompositeTransform "true") for a chain of transforms) to the elastix parameter file and '
                 "run elastix again, as SlicerElastix does; give the TransformParameters.0.tfm it writes beside "
                 "this file (the same fixed -> moving convention, in LPS).")

_LINE = re.compile(r"^\((\w+)(.*)\)$")
_TOKEN = re.compile(r'"([^"]*)"|(\S+)')
_CHAIN_LIMIT = 64


def is_elastix_parameter_file(path: str) -> bool:
    """Whether ``path`` is an elastix transform parameter file: its first line that is no comment is a
    ``(Name value ...)`` line and one line is ``(Transform ...)``."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536).decode("latin-1")
    except OSError:
        return False
    lines = [line.strip() for line in head.splitlines()]
    lines = [line for line in lines if line and not line.startswith("//")]  # elastix' comments
    return bool(lines) and lines[0].startswith("(") \
        and re.search(r"^\s*\(Transform\s", head, re.MULTILINE) is not None


def read_elastix_transform(path: str | os.PathLike) -> sitk.Transform:
    """The transform an elastix transform parameter file holds, with its chain of initial transforms, as one
    SimpleITK transform mapping fixed-image points to moving-image points (as transformix maps them).

    Raises:
        InputError: a transform kind, option or combination not converted here (named, with the way to the ITK
            file elastix writes), a missing or looping initial transform file, or a malformed file.
    """
    path = os.fspath(path)
    parts: list[sitk.Transform] = []  # the current transform first, then its initial one, ...
    seen: list[str] = []
    current: str | None = path
    while current is not None:
        real = os.path.realpath(current)
        if real in seen:
            raise InputError(f"The elastix chain of initial transforms from '{path}' loops: '{current}' names a "
                             "file of the chain again (InitialTransformParameterFileName).",
                             "Correct InitialTransformParameterFileName in the files of the chain.")
        if len(seen) >= _CHAIN_LIMIT:
            raise InputError(f"The elastix chain of initial transforms from '{path}' is longer than {_CHAIN_LIMIT}.",
                             "Correct InitialTransformParameterFileName in the files of the chain.")
        seen.append(real)
        parameters = _parse(current)
        parts.append(_transform(parameters, current))
        current = _initial_file(parameters, current)
    dims = sorted({part.GetDimension() for part in parts})
    if len(dims) > 1:
        raise InputError(f"The elastix chain of initial transforms from '{path}' mixes dimensions "
                         f"({' and '.join(f'{d}D' for d in dims)}).",
                         "Give a chain of transforms of one dimension.")
    if len(parts) == 1:
        return parts[0]
    # SimpleITK's CompositeTransform applies its last transform first: [current, initial] maps x to
    # current(initial(x)), elastix' "Compose"
    return sitk.CompositeTransform(parts)


def _parse(path: str) -> dict[str, list]:
    """The ``(Name value ...)`` lines of an elastix parameter file: name -> values (numbers as float, quoted
    strings as str), as elastix' ParameterFileParser reads them (one parameter a line, ``//`` comments)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError as exc:
        raise InputError(f"Could not read the elastix transform parameter file '{path}': {exc.strerror}.",
                         "Check the path and its permissions.") from None
    parameters: dict[str, list] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = _without_comment(raw).strip()
        if not line:
            continue
        match = _LINE.match(line)
        if not match:
            raise InputError(f"Line {number} of the elastix transform parameter file '{path}' is not a "
                             f"(Name value ...) line: '{raw.strip()[:80]}'.",
                             "Give the file as elastix wrote it.")
        values: list = []
        for quoted, bare in _TOKEN.findall(match.group(2)):
            if bare:
                try:
                    values.append(float(bare))
                except ValueError:
                    values.append(bare)
            else:
                values.append(quoted)
        parameters[match.group(1)] = values
    return parameters


def _without_comment(line: str) -> str:
    """``line`` up to a ``//`` outside quotes (a path in quotes may hold ``//``)."""
    quoted = False
    for k, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif not quoted and line.startswith("//", k):
            return line[:k]
    return line


def _text(parameters: dict, name: str, default: str | None = None) -> str | None:
    values = parameters.get(name)
    if not values:
        return default
    value = values[0]
    return value if isinstance(value, str) else f"{value:g}"


def _numbers(parameters: dict, name: str, path: str, count: int | None = None,
             default: list[float] | None = None) -> list[float]:
    values = parameters.get(name)
    if values is None:
        if default is not None:
            return list(default)
        raise InputError(f"The elastix transform parameter file '{path}' has no ({name} ...) line.",
                         "Give the file as elastix wrote it.")
    if any(isinstance(v, str) for v in values) or (count is not None and len(values) != count):
        shown = " ".join(v if isinstance(v, str) else f"{v:g}" for v in values[:8])
        raise InputError(f"({name} ...) in the elastix transform parameter file '{path}' holds "
                         f"{len(values)} value(s) ({shown}"
                         f"{' ...' if len(values) > 8 else ''})"
                         f"{f', where {count} numbers are expected' if count is not None else ', not numbers'}.",
                         "Give the file as elastix wrote it.")
    return [float(v) for v in values]


def _flag(parameters: dict, name: str, default: bool) -> bool:
    value = _text(parameters, name)
    return default if value is None else value.strip().lower() == "true"


def _refuse(path: str, problem: str, fix: str = _ITK_FILE_FIX) -> InputError:
    return InputError(f"'{path}' is an elastix transform parameter file (elastix' own format) {problem}", fix)


def _transform(parameters: dict, path: str) -> sitk.Transform:
    """The transform of one elastix parameter file alone (its initial transform left out)."""
    kind = _text(parameters, "Transform") or "?"
    if kind == "File":
        return _itk_file(parameters, path)
    if _flag(parameters, "UseBinaryFormatForTransformationParameters", False):
        raise _refuse(path, f"({kind}) whose parameters are in a binary file "
                      '(UseBinaryFormatForTransformationParameters "true"), which is not read here.')
    if "ITKTransformParameters" in parameters:
        raise _refuse(path, f"({kind}) given by ITKTransformParameters, which are not read here.")
    if not _flag(parameters, "UseDirectionCosines", True):
        raise _refuse(path, f'({kind}) of a registration run with (UseDirectionCosines "false"): its points are '
                      "not the images' physical points, so it cannot be used as an ITK transform.",
                      'Run elastix again with (UseDirectionCosines "true"), its default.')
    dim = int(_numbers(parameters, "FixedImageDimension", path, 1)[0])
    moving_dim = int(_numbers(parameters, "MovingImageDimension", path, 1, default=[dim])[0])
    if dim != moving_dim or dim not in (2, 3):
        raise _refuse(path, f"({kind}) of a {dim}D fixed and {moving_dim}D moving image: only 2D and 3D "
                      "transforms of images of one dimension are read here.")
    converters = {"TranslationTransform": _translation, "EulerTransform": _euler,
                  "SimilarityTransform": _similarity, "AffineTransform": _affine, "AffineDTITransform": _affine_dti,
                  "AffineLogTransform": _affine_log,
                  "BSplineTransform": _bspline, "RecursiveBSplineTransform": _bspline}
    if kind not in converters:
        raise _refuse(path, f"of a {kind}, which is not converted here (read: {', '.join(converters)} and File).")
    count = int(_numbers(parameters, "NumberOfParameters", path, 1)[0])
    values = _numbers(parameters, "TransformParameters", path, count)
    with itk_guard(f"converting the elastix {kind} of '{path}'", "Give the file as elastix wrote it."):
        return converters[kind](parameters, path, dim, values)


def _expect(values: list[float], count: int, kind: str, dim: int, path: str) -> None:
    if len(values) != count:
        raise InputError(f"The elastix {kind} of '{path}' ({dim}D) has {len(values)} parameters where it has "
                         f"{count}.", "Give the file as elastix wrote it.")


def _center(parameters: dict, path: str, dim: int) -> list[float]:
    if "CenterOfRotationPoint" not in parameters and "CenterOfRotation" in parameters:
        raise _refuse(path, "from an old elastix (CenterOfRotation, its centre as a voxel index), which is not read "
                      "here.", "Run the registration again with elastix 4.3 or later, which writes "
                      "CenterOfRotationPoint (in mm), or " + _ITK_FILE_FIX[0].lower() + _ITK_FILE_FIX[1:])
    return _numbers(parameters, "CenterOfRotationPoint", path, dim, default=[0.0] * dim)


def _translation(parameters: dict, path: str, dim: int, values: list[float]) -> sitk.Transform:
    _expect(values, dim, "TranslationTransform", dim, path)
    return sitk.TranslationTransform(dim, values)


def _euler(parameters: dict, path: str, dim: int, values: list[float]) -> sitk.Transform:
    center = _center(parameters, path, dim)
    if dim == 2:
        _expect(values, 3, "EulerTransform", dim, path)
        tx = sitk.Euler2DTransform()
    else:
        _expect(values, 6, "EulerTransform", dim, path)
        tx = sitk.Euler3DTransform()
        # elastix' default is Z X Y (ITK's too); set before the angles, which it gives their meaning
        tx.SetComputeZYX(_flag(parameters, "ComputeZYX", False))
    tx.SetCenter(center)
    tx.SetParameters(values)
    return tx


def _similarity(parameters: dict, path: str, dim: int, values: list[float]) -> sitk.Transform:
    center = _center(parameters, path, dim)
    if dim == 2:  # scale, angle, translation (itk::Similarity2DTransform's order, elastix' too)
        _expect(values, 4, "SimilarityTransform", dim, path)
        tx = sitk.Similarity2DTransform()
    else:  # versor (3), translation (3), scale
        _expect(values, 7, "SimilarityTransform", dim, path)
        if sum(v * v for v in values[:3]) > 1.0:
            raise InputError(f"The elastix SimilarityTransform of '{path}' has a versor longer than 1 "
                             f"({values[0]:g}, {values[1]:g}, {values[2]:g}).", "Give the file as elastix wrote it.")
        tx = sitk.Similarity3DTransform()
    tx.SetCenter(center)
    tx.SetParameters(values)
    return tx


def _affine(parameters: dict, path: str, dim: int, values: list[float]) -> sitk.Transform:
    center = _center(parameters, path, dim)
    _expect(values, dim * dim + dim, "AffineTransform", dim, path)
    tx = sitk.AffineTransform(dim)
    tx.SetCenter(center)
    tx.SetParameters(values)  # the matrix row by row, then the translation, as elastix writes them
    return tx


def _affine_dti(parameters: dict, path: str, dim: int, values: list[float]) -> sitk.Transform:
    """elastix' AffineDTI2DTransform (angle, 2 shears, 2 scales, translation: R Gx Gy S) and AffineDTI3DTransform
    (3 angles, 3 shears, 3 scales, translation: Rx Ry Rz Gx Gy Gz S), rotations of the opposite sign to Euler's,
    as elastix' ComputeMatrix builds them."""
    center = _center(parameters, path, dim)
    if dim == 2:
        _expect(values, 7, "AffineDTITransform", dim, path)
        angle, gx, gy, sx, sy = values[:5]
        c, s = math.cos(angle), math.sin(angle)
        matrix = (np.array([[c, s], [-s, c]]) @ np.array([[1, gx], [0, 1]]) @ np.array([[1, 0], [gy, 1]])
                  @ np.diag([sx, sy]))
    else:
        _expect(values, 12, "AffineDTITransform", dim, path)
        (ax, ay, az), (gx, gy, gz), scales = values[0:3], values[3:6], values[6:9]
        cx, sx, cy, sy, cz, sz = (math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay), math.cos(az),
                                  math.sin(az))
        matrix = (np.array([[1, 0, 0], [0, cx, sx], [0, -sx, cx]]) @ np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])
                  @ np.array([[cz, sz, 0], [-sz, cz, 0], [0, 0, 1]]) @ np.array([[1, 0, gx], [0, 1, 0], [0, 0, 1]])
                  @ np.array([[1, 0, 0], [gy, 1, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, 1, 0], [0, gz, 1]])
                  @ np.diag(scales))
    return sitk.AffineTransform(matrix.ravel().tolist(), values[-dim:], center)


def _affine_log(parameters: dict, path: str, dim: int, values: list[float]) -> sitk.Transform:
    """elastix' AffineLogTransform: the matrix is the exponential of the matrix its first dim x dim parameters give
    row by row (its logarithm, which elastix optimises), then the translation, about CenterOfRotationPoint (which
    elastix requires of this kind). The exponential is scipy's (Pade, scaling and squaring); elastix' vnl_matrix_exp
    sums the Taylor series to 1e-10."""
    from scipy.linalg import expm

    if "CenterOfRotationPoint" not in parameters:
        _center(parameters, path, dim)  # an old elastix' CenterOfRotation is named as such
        raise InputError(f"The elastix AffineLogTransform of '{path}' has no (CenterOfRotationPoint ...) line, "
                         "which elastix requires of it.", "Give the file as elastix wrote it.")
    center = _center(parameters, path, dim)
    _expect(values, dim * dim + dim, "AffineLogTransform", dim, path)
    matrix = expm(np.array(values[:dim * dim]).reshape(dim, dim))
    if not np.all(np.isfinite(matrix)):
        raise InputError(f"The elastix AffineLogTransform of '{path}' has a matrix logarithm whose exponential is "
                         "not finite.", "Give the file as elastix wrote it.")
    return sitk.AffineTransform(matrix.ravel().tolist(), values[-dim:], center)


def _bspline(parameters: dict, path: str, dim: int, values: list[float]) -> sitk.Transform:
    """elastix' (Recursive)BSplineTransform as ITK's BSplineTransform: the same kernel of order 1, 2 or 3 (each order
    checked against transformix, on and around the grid's valid region), the coefficients
    in the same order (all x displacements over the grid, x fastest, then y, then z), zero displacement outside
    the grid's support; elastix' grid starts at GridIndex, ITK's at index 0, so its origin moves there."""
    kind = _text(parameters, "Transform")
    order = int(_numbers(parameters, "BSplineTransformSplineOrder", path, 1, default=[3])[0])
    if order not in (1, 2, 3):
        raise _refuse(path, f"({kind}) of spline order {order}: only orders 1, 2 and 3 are read here.")
    if kind == "RecursiveBSplineTransform" and dim == 2:
        # transformix maps a 2D one otherwise than the same file as a BSplineTransform (measured, order 3: (0, 0) ->
        # (-1.2577, 1.2484) against (-0.6412, -0.9783)), and its 2D deformation field reaches 8.8e28 mm (itk-elastix
        # 0.25.4): no ITK transform reproduces it, and reading it as a plain B-spline is an answer mm away
        raise _refuse(path, f"({kind}, 2D), which transformix maps otherwise than the same coefficients in a "
                      "BSplineTransform (elastix' 2D recursive B-spline is not consistent: its deformation field "
                      "reaches values of 1e28), so it is not read here; a 3D one is.",
                      'Run the 2D registration again with (Transform "BSplineTransform") in the elastix parameter '
                      "file (the same B-spline, evaluated otherwise), and give its TransformParameters file.")
    if _flag(parameters, "UseCyclicTransform", False):
        raise _refuse(path, f'({kind}) that is cyclic (UseCyclicTransform "true"), which is not read here.')
    size = [int(round(v)) for v in _numbers(parameters, "GridSize", path, dim)]
    index = _numbers(parameters, "GridIndex", path, dim, default=[0.0] * dim)
    spacing = _numbers(parameters, "GridSpacing", path, dim)
    origin = _numbers(parameters, "GridOrigin", path, dim)
    # elastix writes a direction matrix column by column (itk::Matrix' storage transposed), as its Direction
    direction = np.array(_numbers(parameters, "GridDirection", path, dim * dim,
                                  default=np.eye(dim).ravel().tolist())).reshape(dim, dim).T
    _expect(values, dim * int(np.prod(size)), kind, dim, path)
    start = np.asarray(origin) + direction @ (np.asarray(spacing) * np.asarray(index))
    tx = sitk.BSplineTransform(dim, order)
    tx.SetFixedParameters([float(v) for v in size] + start.tolist() + list(spacing) + direction.ravel().tolist())
    tx.SetParameters(values)
    return tx


def _find(name: str, path: str, key: str) -> str:
    """The file ``name`` that ``path`` (an elastix parameter file) names by ``key``, resolved as elastix 5 resolves
    it: as written when absolute or found from the working folder, else relative to the folder of ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isabs(name) or os.path.exists(name):
        found = name
    else:
        found = os.path.join(folder, name)
    if os.path.exists(found):
        if os.path.realpath(found) == os.path.realpath(path):
            raise InputError(f"The elastix transform parameter file '{path}' names itself as {key}.",
                             f"Correct {key}.")
        return found
    # elastix names the file by the path it had when it was written: a moved folder loses it. The file of that
    # name beside this one is most likely it, but not surely: say so rather than take it.
    beside = os.path.join(folder, os.path.basename(name))
    hint = (f" A file of that name is beside it ('{beside}'): if it is the one, give {key} as "
            f'"{os.path.basename(name)}" (a name without a folder is looked for beside the file that names it).'
            if os.path.basename(name) != name and os.path.exists(beside) else "")
    raise InputError(f"The file '{name}' that the elastix transform parameter file '{path}' names ({key}) was not "
                     f"found{'' if os.path.isabs(name) else f', neither from the working folder nor as {found!r}'}."
                     + hint,
                     f"Put that file where it is named, or correct {key} (elastix writes the path the file had "
                     "when it was written, so a moved output folder loses it).")


def _initial_file(parameters: dict, path: str) -> str | None:
    """The file of the initial transform ``path`` names (None for ``NoInitialTransform``), checked to combine
    by composition."""
    key = "InitialTransformParameterFileName" if _text(parameters, "InitialTransformParameterFileName") \
        else "InitialTransformParametersFileName"  # elastix' older name
    name = _text(parameters, key)
    if not name or name == "NoInitialTransform":
        return None
    how = _text(parameters, "HowToCombineTransforms", "Compose")  # elastix 5's default
    if how != "Compose":
        raise _refuse(path, f'that adds its transform to its initial one (HowToCombineTransforms "{how}": '
                      "x -> T(x) + T0(x) - x), which is no chain of ITK transforms and is not read here.",
                      'Run elastix with (HowToCombineTransforms "Compose"), its default, or ' + _ITK_FILE_FIX[0].lower()
                      + _ITK_FILE_FIX[1:])
    return _find(name, path, key)


def _itk_file(parameters: dict, path: str) -> sitk.Transform:
    """``(Transform "File")``: elastix wrote the transform to the ITK file ``TransformFileName``."""
    name = _text(parameters, "TransformFileName")
    if not name:
        raise InputError(f"The elastix transform parameter file '{path}' says (Transform \"File\") and names no "
                         "TransformFileName.", "Give the file as elastix wrote it.")
    found = _find(name, path, "TransformFileName")
    if is_elastix_parameter_file(found):  # not the ITK file elastix writes: reading it could loop
        raise InputError(f"The elastix transform parameter file '{path}' names another elastix parameter file, "
                         f"'{found}', as its ITK transform file (TransformFileName).",
                         "Give TransformFileName as the .tfm (or .h5) file elastix wrote beside it.")
    from .io import read_transform  # the ITK file, in any format read_transform reads

    return read_transform(found)
