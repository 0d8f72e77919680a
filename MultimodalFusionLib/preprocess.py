"""Preprocessing: resampling onto a reference grid, intensity normalisation, masks, cropping.

Every function takes and returns ``SimpleITK.Image`` objects with their geometry; inputs are
never modified.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from . import tensors
from .errors import InputError, itk_guard
from .io import _with_units_of, as_one_slice_of, one_slice_as_2d, one_slice_axis
from .validation import check_image, physical_bounds, voxels_overlap

__all__ = [
    "resample",
    "chain_transforms",
    "displacement_fields_outside",
    "field_coverage_notes",
    "robust_range",
    "without_padding",
    "padding_mask",
    "unpadded_range",
    "reorient_to_lps",
    "normalize_intensity",
    "foreground_mask",
    "crop_to_overlap",
    "CT_WINDOWS",
    "INTERPOLATORS",
    "LABEL_INTERPOLATORS",
    "COMPONENTS",
]

#: Interpolator names accepted by :func:`resample`, with antsApplyTransforms' names: Linear, BSpline (cubic),
#: NearestNeighbor, LanczosWindowedSinc (a windowed sinc) and, for labels and masks, label-gaussian: ITK's label
#: Gaussian as SimpleITK sets it (sigma 1 input voxel, alpha 1), each output voxel the label of most Gaussian weight
#: around it, ANTs' MultiLabel (not GenericLabel, which interpolates each label linearly and keeps a label one voxel
#: thin): smoother label edges than nearest's, but a label one voxel thin is outvoted even on the same grid.
INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "bspline": sitk.sitkBSpline,
    "nearest": sitk.sitkNearestNeighbor,
    "lanczos": sitk.sitkLanczosWindowedSinc,
    "label-gaussian": sitk.sitkLabelGaussian,
}
#: The interpolators that give a voxel one of the moving image's values (labels): the output keeps its pixel type.
LABEL_INTERPOLATORS = ("nearest", "label-gaussian")

#: CT display windows (level, width) in Hounsfield units, as radiology viewers use them.
CT_WINDOWS = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "bone": (400.0, 1800.0),
    "soft-tissue": (50.0, 400.0),
    "lung": (-600.0, 1500.0),
}


#: Integer pixel types ITK resamples into, scalar and vector, and the numpy type of their values.
_INTEGER_TYPES = {sitk.sitkUInt8: np.uint8, sitk.sitkInt8: np.int8, sitk.sitkUInt16: np.uint16,
                  sitk.sitkInt16: np.int16, sitk.sitkUInt32: np.uint32, sitk.sitkInt32: np.int32,
                  sitk.sitkUInt64: np.uint64, sitk.sitkInt64: np.int64,
                  sitk.sitkVectorUInt8: np.uint8, sitk.sitkVectorInt8: np.int8,
                  sitk.sitkVectorUInt16: np.uint16, sitk.sitkVectorInt16: np.int16,
                  sitk.sitkVectorUInt32: np.uint32, sitk.sitkVectorInt32: np.int32,
                  sitk.sitkVectorUInt64: np.uint64, sitk.sitkVectorInt64: np.int64}
_FLOAT32_TYPES = (sitk.sitkFloat32, sitk.sitkVectorFloat32)
#: Pixel types ITK resamples into: the scalar ones for a grey image, the vector ones for a colour image.
_SCALAR_TYPES = (sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkUInt32, sitk.sitkInt32,
                 sitk.sitkUInt64, sitk.sitkInt64, sitk.sitkFloat32, sitk.sitkFloat64)
_VECTOR_TYPES = (sitk.sitkVectorUInt8, sitk.sitkVectorInt8, sitk.sitkVectorUInt16, sitk.sitkVectorInt16,
                 sitk.sitkVectorUInt32, sitk.sitkVectorInt32, sitk.sitkVectorUInt64, sitk.sitkVectorInt64,
                 sitk.sitkVectorFloat32, sitk.sitkVectorFloat64)


#: What the components of a multi-component image are (:func:`resample`'s ``components``).
COMPONENTS = ("channels", "vector", "tensor")
#: How tensors are turned (:func:`resample`'s ``tensor_reorientation``): preservation of the principal direction
#: (Alexander et al. 2001; ANTs' ReorientTensorImage, Slicer's Resample DTI Volume by default) or finite strain
TENSOR_REORIENTATIONS = ("ppd", "fs")
#: How tensors are interpolated (:func:`resample`'s ``tensor_interpolation``): component by component, or their
#: matrix logarithms (Arsigny et al. 2006), which keeps a determinant between its neighbours' ("no swelling")
TENSOR_INTERPOLATIONS = ("linear", "log-euclidean")


def _linear_part(transform: sitk.Transform, dim: int) -> np.ndarray | None:
    """The matrix of a linear (affine) transform, probed at the origin and the unit points; None for another."""
    if not transform.IsLinear():
        return None
    origin = np.array(transform.TransformPoint((0.0,) * dim))
    return np.stack([np.array(transform.TransformPoint(tuple(np.eye(dim)[k]))) - origin for k in range(dim)], axis=1)


#: Voxels whose Jacobians are held at once (about 250 bytes each while they are computed): a non-linear transform's
#: vectors are turned a slab of this many at a time, so the memory does not grow with the image (a 128^3 field under
#: a B-spline had peaked 485 MB above its start, 8 times what channels take; 256^3 would have needed ~4 GB)
_JACOBIAN_SLAB_VOXELS = 1 << 18


def _jacobians(transform: sitk.Transform, reference: sitk.Image, first: int = 0,
               count: int | None = None) -> np.ndarray:
    """The Jacobian of ``transform`` (d x d) at each voxel of ``reference`` (shape (voxels..., d, d), numpy order),
    or one matrix for a linear transform: central differences of the transform at +-h along each physical axis,
    h a tenth of the smallest spacing. ``first``, ``count``: only the slab of ``count`` slices along the last axis
    (numpy's first) from ``first``."""
    dim = reference.GetDimension()
    matrix = _linear_part(transform, dim)
    if matrix is not None:
        return matrix
    size = list(reference.GetSize())
    count = size[-1] - first if count is None else count
    origin = np.array(reference.TransformIndexToPhysicalPoint([0] * (dim - 1) + [first]))
    size[-1] = count
    h = 0.1 * min(reference.GetSpacing())
    jacobians = np.empty(tuple(reversed(size)) + (dim, dim))
    for k in range(dim):
        step = np.eye(dim)[k] * h
        moved = []
        for sign in (1.0, -1.0):
            field = sitk.TransformToDisplacementField(
                transform, sitk.sitkVectorFloat64, size, tuple(origin + sign * step), reference.GetSpacing(),
                reference.GetDirection())
            moved.append(sitk.GetArrayViewFromImage(field).reshape(tuple(reversed(size)) + (dim,)).copy())
            del field
        # T(x +- h e_k) = x +- h e_k + u(x +- h e_k)
        column = jacobians[..., k]
        np.subtract(moved[0], moved[1], out=column)
        column /= 2.0 * h
        column[..., k] += 1.0
    return jacobians


def _turn_vectors(values: np.ndarray, jacobians: np.ndarray) -> np.ndarray:
    """J^-1 v: vectors (..., d) of the moving image's space in the reference's, ``jacobians`` one (d, d) matrix or
    one per vector."""
    if jacobians.ndim == 2:
        return values @ np.linalg.inv(jacobians).T
    return np.linalg.solve(jacobians, values[..., None])[..., 0]


def _ppd(values: np.ndarray, jacobians: np.ndarray) -> np.ndarray:
    """Symmetric tensors (..., 6, ITK's order) turned by preservation of the principal direction: with F = J^-1
    (the moving image's directions in the reference's, as a vector turns), the principal eigenvector e1 goes to
    n1 = F e1 / |F e1|, the second to F e2 without its n1 part (normalised), the third to n1 x n2; the eigenvalues
    are kept. D' = R D R^T with R the rotation taking e1, e2 to n1, n2: under a rotation finite strain's answer,
    under a shear or a stretch the principal direction is the one a fibre along it takes (finite strain keeps
    only J's rotation, which turns it elsewhere: 11 degrees off under a shear of 0.45)."""
    mats = tensors.matrices(values, tensors.SYMMETRIC)
    eigenvalues, eigenvectors = np.linalg.eigh(mats)  # ascending: the principal direction is the last column
    turned = np.linalg.inv(jacobians) @ eigenvectors  # one matrix, or one per tensor
    n1 = turned[..., :, 2]
    n1 = n1 / np.linalg.norm(n1, axis=-1, keepdims=True)
    n2 = turned[..., :, 1]
    n2 = n2 - np.sum(n1 * n2, axis=-1, keepdims=True) * n1
    n2 = n2 / np.linalg.norm(n2, axis=-1, keepdims=True)
    n3 = np.cross(n1, n2)
    out = np.zeros_like(mats)
    for k, axis in ((0, n3), (1, n2), (2, n1)):  # sum of lambda_k n_k n_k^T
        out += eigenvalues[..., k, None, None] * axis[..., :, None] * axis[..., None, :]
    return tensors.packed(out, tensors.SYMMETRIC)


def _tensor_turner(kind: str, reorientation: str = "ppd"):
    if kind == tensors.SYMMETRIC and reorientation == "ppd":
        return _ppd

    def turn(values: np.ndarray, jacobians: np.ndarray) -> np.ndarray:
        """R^T D R (finite strain, as ANTs' ReorientTensorImage and Slicer's ResampleDTIVolume turn tensors): R the
        rotation of J's polar decomposition (J = R U, R = W V^T from J's SVD W S V^T; a mirror stays in R, which
        mirrors the tensor as it mirrors a vector), so that a tensor turns as a vector J^-1 v turns, its stretch
        and shear left out; tensors (..., 6 or 9) in ITK's order."""
        w, _, vt = np.linalg.svd(jacobians)
        rotation = w @ vt
        return tensors.packed(np.swapaxes(rotation, -1, -2) @ tensors.matrices(values, kind) @ rotation, kind)

    return turn


def _reorient(values: np.ndarray, transform: sitk.Transform, reference: sitk.Image, tensor: str | None = None,
              reorientation: str = "ppd") -> np.ndarray:
    """Vectors of the moving image's space (``values``, (voxels..., d)) in the reference's: J^-1 v, as ITK/ANTs turn
    a displacement or vector field under a transform (T maps reference points to moving ones); with ``tensor``
    (:data:`tensors.SYMMETRIC` or :data:`tensors.FULL`), 3 x 3 tensors (voxels..., 6 or 9), turned by
    ``reorientation`` (see :func:`_ppd` and :func:`_tensor_turner`). A non-linear transform's are turned in place, a slab of voxels at a time, each
    voxel by its own Jacobian."""
    turn = _turn_vectors if tensor is None else _tensor_turner(tensor, reorientation)
    matrix = _linear_part(transform, reference.GetDimension())
    if matrix is not None and tensor is None:
        return turn(values, matrix)
    # tensors a slab at a time under a linear transform too: their 3 x 3 matrices and products had peaked at 263 MB
    # of numpy for a 128 x 128 x 70 DTI volume under a rigid transform
    slices = values.shape[0]
    per_slice = max(1, int(np.prod(values.shape[1:-1])))
    step = max(1, _JACOBIAN_SLAB_VOXELS // per_slice)
    for first in range(0, slices, step):
        count = min(step, slices - first)
        slab = values[first:first + count]
        slab[...] = turn(slab, matrix if matrix is not None else _jacobians(transform, reference, first, count))
    return values


def chain_transforms(transforms: Sequence[sitk.Transform], invert: bool = False) -> sitk.Transform | None:
    """One transform of several, in antsApplyTransforms' order: ``[A, B]`` maps a reference point x to B(A(x)) (the
    first given is applied to the point first, as ``antsApplyTransforms -t A -t B`` and ANTsPy's ``transformlist=[A,
    B]``: ``-t 1Warp.nii.gz -t 0GenericAffine.mat`` moves a fixed point by the warp, on the fixed grid, then by the
    affine); with ``invert``, the inverse of that chain (A^-1(B^-1(y))), e.g. to resample the fixed image onto the moving image's grid with the transform a registration
    returned. None for no transform (the identity).

    Raises:
        InputError: transforms of different dimensions, or ``invert`` with a part that has no inverse here (a
            B-spline or a displacement field: ITK inverts only linear transforms exactly).
    """
    transforms = list(transforms)
    for tx in transforms:
        if not isinstance(tx, sitk.Transform):
            raise InputError(f"A transform to chain is a {type(tx).__name__}, not a SimpleITK transform.",
                             "Read each file first: MultimodalFusionLib.io.read_transform(path).")
    dims = sorted({tx.GetDimension() for tx in transforms})
    if len(dims) > 1:
        raise InputError(f"The transforms to chain are of different dimensions ({' and '.join(f'{d}D' for d in dims)}).",
                         "Give transforms of the images' dimension only.")
    if not transforms:
        return None
    # a CompositeTransform applies its last transform first: reversed, the first given acts first, as in ANTs
    # (the order had been the other way round: -t 1Warp.nii.gz -t 0GenericAffine.mat sampled the warp at the
    # affine's image of the point, where ANTs samples it at the point)
    chain = transforms[0] if len(transforms) == 1 else sitk.CompositeTransform(transforms[::-1])
    if not invert:
        return chain
    try:
        inverse = chain.GetInverse()
    except RuntimeError:
        kinds = sorted({_transform_kind(part) for part in _parts(chain)} - {"linear"})
        raise InputError(f"The transform cannot be inverted: it holds {' and '.join(kinds) or 'a part'} (no exact "
                         "inverse; only linear transforms are inverted).",
                         "Register the other way round (swap FIXED and MOVING: mmfusion register MOVING FIXED) for a "
                         "transform that maps the other way, or invert a linear transform only.") from None
    return inverse.Downcast() if hasattr(inverse, "Downcast") else inverse


def displacement_fields_outside(transforms: Sequence[sitk.Transform], reference: sitk.Image,
                                max_points: int = 1_000_000) -> list[tuple[int, float]]:
    """For each displacement field in a chain (``transforms`` as :func:`chain_transforms` takes them, not inverted),
    the fraction of ``reference``'s voxels whose point, as the parts applied before the field map it, falls outside
    the field's grid, where ITK (and antsApplyTransforms) moves it by nothing: a continuous index outside
    [-0.5, size - 0.5) on an axis, as ``DisplacementFieldTransform`` tests it. A field written on the reference's grid
    gives 0.

    Counted on every voxel of grids up to ``max_points`` voxels, else on every k-th voxel along each axis (a subset
    of the reference's own voxel centres, so a field on the reference's grid still gives 0).

    A one-slice volume (along its last axis) under 2D transforms is counted as the 2D image of its slice, as
    :func:`resample` takes it.

    Returns:
        (index in ``transforms`` of the transform holding the field, fraction outside), one per field; nothing where
        there is no field or the transforms' dimension is not ``reference``'s (nor its slice's).
    """
    if one_slice_axis(reference) is not None and transforms and all(tx.GetDimension() == 2 for tx in transforms):
        # a one-slice volume under a 2D chain is resampled (and scored) as its slice's 2D image (see resample):
        # counted there, as a 2D field covering half the slice had moved half of it without the note
        try:
            reference = one_slice_as_2d(reference, "reference")
        except InputError:  # a slice resample refuses to take in 2D: no field applies to it
            return []
    dim = reference.GetDimension()
    if any(tx.GetDimension() != dim for tx in transforms):
        return []
    # chain_transforms' order: [A, B] maps x to B(A(x)), so a part's earlier parts are applied to x before it; the
    # parts listed in the order they act on the point (a composite's last part first)
    parts = [(i, part) for i, tx in enumerate(transforms) for part in _parts(tx)[::-1]]
    found = [k for k, (_, part) in enumerate(parts) if part.GetName() == "DisplacementFieldTransform"]
    if not found:
        return []
    size = np.array(reference.GetSize())
    stride = max(1, int(np.ceil((np.prod(size, dtype=float) / max_points) ** (1.0 / dim))))
    sub_size = [int(n) for n in -(-size // stride)]
    sub_spacing = [sp * stride for sp in reference.GetSpacing()]
    direction = np.array(reference.GetDirection()).reshape(dim, dim)
    index = np.stack(np.indices(sub_size[::-1])[::-1], axis=-1).astype(np.float64)  # numpy order, (i, j, k) last
    grid = np.array(reference.GetOrigin()) + index @ (direction * np.array(sub_spacing)).T
    out = []
    for k in found:
        points = grid
        before = [part for _, part in parts[:k]][::-1]  # a CompositeTransform applies its last part first
        if before:
            moved = sitk.TransformToDisplacementField(
                sitk.CompositeTransform(before) if len(before) > 1 else before[0], sitk.sitkVectorFloat64,
                sub_size, reference.GetOrigin(), sub_spacing, reference.GetDirection())
            points = grid + sitk.GetArrayViewFromImage(moved)
        fixed = np.array(parts[k][1].GetFixedParameters())
        field_size, field_origin = fixed[:dim], fixed[dim:2 * dim]
        to_index = np.linalg.inv(fixed[3 * dim:].reshape(dim, dim) * fixed[2 * dim:3 * dim])
        cidx = (points - field_origin) @ to_index.T
        inside = np.all((cidx >= -0.5) & (cidx < field_size - 0.5), axis=-1)
        out.append((parts[k][0], float(1.0 - inside.mean())))
    return out


#: the fraction of the grid's voxels a displacement field may leave unmoved without a note: less than one face
#: slice of a 100-voxel axis (a reference a slice longer than the field); a field on the grid leaves none
_FIELD_OUTSIDE_NOTE = 0.01


def field_coverage_notes(names: Sequence[str] | None, transforms: Sequence[sitk.Transform], invert: bool,
                         grid: sitk.Image, grid_name: str, fix: str) -> list[str]:
    """A note for each displacement field of a chain (``transforms`` as :func:`chain_transforms` takes them, each
    named by the entry of ``names`` at its index: its file, or its node) that leaves more than
    :data:`_FIELD_OUTSIDE_NOTE` of ``grid``'s voxels outside its own grid (as the transforms applied before it map
    them, :func:`displacement_fields_outside`): there it moves nothing (ITK's and antsApplyTransforms' zero
    displacement), so a field given with a grid it does not cover moved part of the image without a word. None
    with ``invert`` (an inverted chain holds no field: :func:`chain_transforms` refuses it).

    The one rule of every front end: ``mmfusion resample`` (the reference) and ``evaluate-registration`` (the fixed
    image) for their ``--transform`` chain, and :func:`registration.register` for its ``initial_transform`` (the
    fixed image; so ``register --initial-transform`` and the Slicer Logic's ``initialTransformNode`` too), where the
    registration starts from no move."""
    if invert or not transforms:
        return []
    notes = []
    for i, outside in displacement_fields_outside(transforms, grid):
        if outside > _FIELD_OUTSIDE_NOTE:
            mapped = " as the transforms applied before it map them" if len(transforms) > 1 else ""
            notes.append(f"the displacement field '{list(names or [])[i]}' does not cover {outside:.1%} of the "
                         f"{grid_name}'s voxels (their points{mapped} lie outside its grid): it moves none of them "
                         f"(zero displacement outside its grid, as antsApplyTransforms does). {fix}")
    return notes


def _parts(transform: sitk.Transform) -> list[sitk.Transform]:
    """The transforms a composite holds, nested ones flattened; ``[transform]`` for another."""
    if isinstance(transform, sitk.CompositeTransform) or transform.GetName() == "CompositeTransform":
        composite = sitk.CompositeTransform(transform)
        return [p for k in range(composite.GetNumberOfTransforms()) for p in _parts(composite.GetNthTransform(k))]
    return [transform]


def _transform_kind(transform: sitk.Transform) -> str:
    if transform.IsLinear():
        return "linear"
    name = transform.GetName()
    return {"BSplineTransform": "a B-spline", "DisplacementFieldTransform": "a displacement field"}.get(
        name, f"a {name}")


def resampled_pixel_type(moving: sitk.Image, interpolation: str = "linear", pixel_type: int | None = None) -> int:
    """The pixel type :func:`resample` gives ``moving`` resampled (see its ``pixel_type``): known before the work,
    so that a front end refuses an output format that cannot hold it (float pixels to .dcm) before resampling."""
    if pixel_type == sitk.sitkUnknown:  # ITK's "as the input"
        return moving.GetPixelID()
    if pixel_type is not None:
        return pixel_type
    if interpolation in LABEL_INTERPOLATORS:
        return moving.GetPixelID()
    if moving.GetPixelID() in (sitk.sitkFloat64, sitk.sitkVectorFloat64):
        # double stays double: float32 would round values near 1e8 to steps of 8 and overflow past 3e38
        return moving.GetPixelID()
    return sitk.sitkVectorFloat32 if moving.GetPixelID() in _VECTOR_TYPES else sitk.sitkFloat32


def resample(moving: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None = None,
             interpolation: str = "linear", default_value: float = 0.0,
             pixel_type: int | None = None, components: str | None = None,
             tensor_reorientation: str = "ppd", tensor_interpolation: str = "linear") -> sitk.Image:
    """Resample ``moving`` onto the grid of ``reference`` (size, spacing, origin, direction).

    Args:
        moving: image to resample.
        reference: image whose grid the output takes.
        transform: maps points of the reference's physical space into the moving image's
            (the transform a registration returns); identity when None.
        interpolation: "linear", "bspline" (cubic B-spline, smooth, for display), "lanczos" (a Lanczos windowed
            sinc, antsApplyTransforms' LanczosWindowedSinc: the sharpest, with some ringing), "nearest" (labels,
            masks) or "label-gaussian" (labels, masks: the label of most Gaussian weight, sigma 1 input voxel,
            antsApplyTransforms' MultiLabel; smoother label edges than nearest's, but a label one voxel thin
            vanishes and a small one loses its corners, even on the same grid). B-spline and Lanczos overshoot at edges: into
            integer pixels their values are clipped to the type's range (a 0/255 edge stays within 0..255).
        default_value: value of output voxels that map outside the moving image.
        pixel_type: output pixel type; by default float32 for linear, bspline and lanczos (float64 for a
            float64 image, whose values float32 would round) and the moving image's own type for nearest and
            label-gaussian.
            Interpolated values put into integer pixels are rounded to the nearest integer (half to even,
            as ``mmfusion run`` rounds an 8-bit image) and clipped to the type's range; ITK's own cast
            truncates toward zero.
        components: what the components of a multi-component image are. "channels": independent values (colour,
            time frames, the real and imaginary parts of a complex image), each interpolated on its own. "vector": a
            vector in physical space (LPS) per voxel, e.g. a displacement field: interpolated, then turned into the
            reference's space by the inverse of the transform's Jacobian (at each voxel for a non-linear one), as
            ITK and ANTs (antsApplyTransforms -e 1) do; its number of components must be the dimension. "tensor":
            a 3 x 3 tensor per voxel of a 3D image (a DTI volume: 6 components, xx, xy, xz, yy, yz, zz, or 9, the
            matrix row by row; in LPS, as :func:`io.read_image` gives a DTI file's), interpolated as
            ``tensor_interpolation`` says, then turned with the transform's Jacobian J (at each voxel
            for a non-linear transform) as ``tensor_reorientation`` says; the output keeps the tensor mark of a file's
            image, so that :func:`io.write_image` writes it as a DTI volume. None (the default): an image its file
            says holds tensors (NRRD kinds 3D-symmetric-matrix or 3D-matrix, NIfTI intent SYMMATRIX) is "tensor";
            an integer image of 3 or 4 components (an RGB/RGBA picture) and an image of another number of
            components than its dimension are channels (one of 6 or 9 components in 3D with a warning, under a
            transform that turns it, that tensors need "tensor"); any other multi-component image (2 or 3 float
            components in 2D or 3D), which could be either, is refused under a transform that turns or stretches
            (the same answer either way under a translation, which it takes as channels).
        tensor_reorientation: how tensors are turned. "ppd" (the default): preservation of the principal
            direction (Alexander et al. 2001), as ANTs' ReorientTensorImage and Slicer's Resample DTI Volume (its
            default) do: the principal eigenvector turns as ``components="vector"`` turns a vector (J^-1 v), the
            second follows in the plane J^-1 turns it to, the eigenvalues are kept. "fs": finite strain,
            R^T D R with R the rotation of J's polar decomposition (Slicer's ``--transform_tensor_method FS``):
            the same under a rotation, but a shear or a stretch does not turn the tensor. A 9-component tensor
            (no symmetric one, which has no principal direction) is always turned by finite strain.
        tensor_interpolation: how tensors are interpolated (with ``interpolation`` "linear" or "bspline"; nearest
            takes one voxel's tensor either way). "linear" (the default): component by component, which swells
            them: between two tensors of other directions the determinant grows (by 4/3 half way between a
            prolate tensor along x and the same along y). "log-euclidean" (Arsigny et al. 2006, as ANTs and
            Slicer users pick it against that swelling): the tensors' matrix logarithms are interpolated and the
            result's exponential taken, so that a determinant lies between its neighbours' (their geometric
            mean half way). A tensor that is not positive definite (noise, a fitting failure) is taken with its
            eigenvalues below a floor raised to it (:data:`tensors.LOG_FLOOR` times the non-zero tensors' median
            mean diffusivity); zero tensors (the background) stay zero: an output voxel that draws more than
            half of its interpolation weight from zero tensors is zero (outside the image: the default value),
            the others (half or more from tensors; exactly half too) the log-Euclidean mean of the non-zero
            tensors it draws on, so the edge lies where nearest-neighbour interpolation puts it, within half a
            voxel, where linear interpolation spreads shrunken tensors up to a voxel further. Symmetric tensors
            only (6 components): refused for 9-component ones and for an image resampled as no tensors.

    Two one-slice volumes (2D slices saved as volumes, e.g. 181 x 217 x 1) with a 2D transform, the one
    ``mmfusion register`` writes for them, are resampled as the 2D images of their slices
    (``io.one_slice_as_2d``: an axial slice, along the last axis) and the result put back as a one-slice volume
    on the reference's geometry; with a 3D transform (or none) a one-slice volume is resampled in 3D.

    Returns:
        The resampled image on the reference grid, with the moving image's DICOM Units (0054,1001) where it states
        them (:func:`io.dicom_units`: a PET's BQML or GML): its values are still in them, and what reads them (a
        window's refusal, the web's SUV windows) knows them as for the image read.

    Raises:
        InputError: unknown interpolation, images of different dimension, a transform that is not a
            SimpleITK transform of their dimension (or a 2D one for two one-slice volumes, above), a pixel type
            that cannot hold the image (a scalar type for a colour image, or the reverse), a default value the
            output's pixels cannot hold, a multi-component image under a turning transform without
            ``components``, or ``components="tensor"`` for an image of no 3 x 3 tensors of a 3D image (see above).
    """
    out = _resample(moving, reference, transform, interpolation, default_value, pixel_type, components,
                    tensor_reorientation, tensor_interpolation)
    # ITK's filters keep no metadata: a PET read in Bq/mL (DICOM Units BQML) had come out of resampling onto an MR
    # grid (mmfusion resample, run, the web's Register) with no unit, so a window in SUV on it was refused without
    # naming its units and the web offered it the SUV windows its values passed for
    return _with_units_of(out, moving)


def _resample(moving: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None = None,
              interpolation: str = "linear", default_value: float = 0.0,
              pixel_type: int | None = None, components: str | None = None,
              tensor_reorientation: str = "ppd", tensor_interpolation: str = "linear") -> sitk.Image:
    """:func:`resample` without the units (see it)."""
    if interpolation not in INTERPOLATORS:
        raise InputError(f"Unknown interpolation '{interpolation}'.",
                         f"Use one of: {', '.join(INTERPOLATORS)}.")
    images = (moving, reference)
    if isinstance(transform, sitk.Transform) and transform.GetDimension() == 2 \
            and all(isinstance(i, sitk.Image) for i in images) \
            and any(one_slice_axis(i) is not None for i in images) \
            and all(one_slice_axis(i) is not None or i.GetDimension() == 2 for i in images):
        # 2D slices, one or both saved as one-slice volumes, with the 2D transform of their plane that mmfusion
        # register writes for them: resampled as the 2D images they are, put back on a one-slice reference's
        # geometry (a one-slice moving image onto a 2D reference had been "a 3D image onto a 2D reference")
        flat = resample(one_slice_as_2d(moving, "moving image"), one_slice_as_2d(reference, "reference"), transform,
                        interpolation, default_value, pixel_type, components, tensor_reorientation,
                        tensor_interpolation)
        return as_one_slice_of(flat, reference) if one_slice_axis(reference) is not None else flat
    # a one-slice volume with a 3D transform (or none) is resampled in 3D: ITK takes the points within half
    # a slice's depth of it
    check_image(moving, "moving image", allow_vector=True, allow_constant=True, allow_one_slice=True)
    if not isinstance(reference, sitk.Image):
        raise InputError(f"The reference is a {type(reference).__name__}, not an image.",
                         "Pass a SimpleITK image (only its grid is used).")
    if moving.GetDimension() != reference.GetDimension():
        raise InputError(
            f"Cannot resample a {moving.GetDimension()}D image onto a {reference.GetDimension()}D reference.",
            "Give a reference of the same dimension.")
    if transform is None:
        transform = sitk.Transform(reference.GetDimension(), sitk.sitkIdentity)
    if not isinstance(transform, sitk.Transform):
        if isinstance(transform, (str, os.PathLike)):
            fix = "Read the file first: MultimodalFusionLib.io.read_transform(path)."
        elif isinstance(getattr(transform, "transform", None), sitk.Transform):
            fix = "Pass its .transform (e.g. result.transform of a registration)."
        else:
            fix = "Pass a SimpleITK transform (a registration's result.transform), or None for the identity."
        raise InputError(f"The transform is a {type(transform).__name__}, not a SimpleITK transform.", fix)
    if transform.GetDimension() != reference.GetDimension():
        fix = "Give a transform of the images' dimension."
        if transform.GetDimension() == 2:  # the one-slice case above needs both images to be one-slice volumes
            flat = [f"the {n} is {'a one-slice volume' if one_slice_axis(i) is not None else 'a volume'} "
                    f"(size {i.GetSize()})" for n, i in (("moving image", moving), ("reference", reference))]
            fix = (f"A 2D transform (the one mmfusion register writes for two one-slice volumes) resamples only a "
                   f"one-slice volume onto another, but {' and '.join(flat)}. " + fix)
        raise InputError(f"The transform is {transform.GetDimension()}D but the images are "
                         f"{reference.GetDimension()}D.", fix)
    try:
        float(default_value)
    except (TypeError, ValueError):
        raise InputError(f"The default value {default_value!r} is not a number.",
                         "Give a number, e.g. 0 or the image's background value.") from None
    count = moving.GetNumberOfComponentsPerPixel()
    vector = moving.GetPixelID() in _VECTOR_TYPES  # by type: a vector image may have a single component
    if pixel_type is not None and pixel_type != sitk.sitkUnknown \
            and pixel_type not in (_VECTOR_TYPES if vector else _SCALAR_TYPES):
        # ITK said only "Pixel type: vector of 8-bit unsigned integer is not supported in 2D", and the fix
        # given with it was about the transform's dimension
        kind = f"a vector image ({count} component{'s' if count != 1 else ''})" if vector \
            else "a grey image"
        wanted = "sitk.sitkVectorFloat32 or another vector type" if vector else \
            "sitk.sitkFloat32 or another scalar type"
        name = sitk.GetPixelIDValueAsString(pixel_type) if pixel_type in _VECTOR_TYPES + _SCALAR_TYPES \
            else repr(pixel_type)
        raise InputError(f"The pixel type {name} cannot hold {kind}.",
                         f"Give {wanted}, or pixel_type=None for the default.")
    treat = _components_kind(moving, transform, components)
    if tensor_reorientation not in TENSOR_REORIENTATIONS:
        raise InputError(f"Unknown tensor reorientation '{tensor_reorientation}'.",
                         "Use ppd (preservation of the principal direction) or fs (finite strain).")
    log_euclidean = _log_euclidean_asked(tensor_interpolation, treat, moving)
    pixel_type = resampled_pixel_type(moving, interpolation, pixel_type)
    integer = _INTEGER_TYPES.get(pixel_type)
    limits = None if integer is None else (int(np.iinfo(integer).min), int(np.iinfo(integer).max))
    if limits is not None and not float(default_value).is_integer():
        # ITK would truncate it (0.5 -> 0) into a value that looks like a real voxel
        raise InputError(f"The default value {default_value:g} is not a whole number, but the output has "
                         f"{sitk.GetPixelIDValueAsString(pixel_type)} pixels.",
                         "Give a whole number, or resample with linear interpolation (float output).")
    if limits is not None and not limits[0] <= int(float(default_value)) <= limits[1]:  # exact, also at 2**63
        # ITK would wrap it around (-1 -> 255 in 8-bit labels) into what looks like a real value
        raise InputError(f"The default value {default_value:g} does not fit the output's "
                         f"{sitk.GetPixelIDValueAsString(pixel_type)} pixels ({limits[0]}..{limits[1]}).",
                         f"Give a default value within {limits[0]}..{limits[1]}, or resample with linear "
                         "interpolation (float output).")
    if pixel_type in _FLOAT32_TYPES and abs(float(default_value)) > float(np.finfo(np.float32).max) \
            and np.isfinite(float(default_value)):
        # ITK would store it as inf
        raise InputError(f"The default value {default_value:g} does not fit the output's 32-bit float pixels.",
                         "Give a default value within +-3.4e38, or pixel_type=sitk.sitkFloat64.")
    turned = treat in ("vector", "tensor")
    if turned and interpolation == "label-gaussian":
        raise InputError(f"Label-Gaussian interpolation picks one label per voxel and component, but the moving image "
                         f"holds {'vectors' if treat == 'vector' else 'tensors'}, whose components it would mix from "
                         "different voxels.",
                         "Resample it with interpolation 'linear' (or 'nearest', which takes one voxel's whole "
                         "value).")
    exact = interpolation in LABEL_INTERPOLATORS and moving.GetPixelID() in _INTEGER_TYPES and not turned
    if integer is not None and not exact or turned:
        # ITK truncates interpolated values toward zero (2.97 -> 2, -999.6 -> -999): a bias of -0.3 on the
        # BrainWeb slice, +-0.5 on a CT. Resample in float64, then round and clip as ITK clips
        wide = sitk.sitkVectorFloat64 if vector else sitk.sitkFloat64
        with itk_guard("resampling", "Check the transform matches the images (same dimension)."):
            if log_euclidean and interpolation not in LABEL_INTERPOLATORS:
                values = _log_euclidean(moving, reference, transform, interpolation)
            else:
                values = sitk.GetArrayFromImage(sitk.Resample(moving, reference, transform,
                                                              INTERPOLATORS[interpolation], float(default_value), wide))
        if vector:  # numpy drops the axis of a single component
            values = values.reshape(tuple(reversed(reference.GetSize())) + (moving.GetNumberOfComponentsPerPixel(),))
        if turned:
            values = _reorient(values, transform, reference, _tensor_kind(moving) if treat == "tensor" else None,
                               tensor_reorientation)
            if float(default_value) != 0.0:  # outside, every component is the default value, not a turned vector
                ones = sitk.Image(moving.GetSize(), sitk.sitkUInt8)
                ones.CopyInformation(moving)
                inside = sitk.GetArrayFromImage(sitk.Resample(ones + 1, reference, transform, sitk.sitkNearestNeighbor,
                                                              0.0, sitk.sitkUInt8)) > 0
                values[~inside] = float(default_value)
            if integer is None:
                out = sitk.GetImageFromArray(values.astype(np.float64 if pixel_type == sitk.sitkVectorFloat64
                                                           else np.float32), isVector=True)
                out.CopyInformation(reference)
                return _tensor_marked(out, moving, treat, transform)
        hi = float(limits[1])
        if int(hi) > limits[1]:  # 2**63 - 1 and 2**64 - 1 round up as doubles: one double below
            hi = float(np.nextafter(hi, 0.0))
        out = sitk.GetImageFromArray(np.clip(np.round(values), float(limits[0]), hi).astype(integer),
                                     isVector=vector)
        out.CopyInformation(reference)
        return _tensor_marked(out, moving, treat, transform)
    with itk_guard("resampling", "Check the transform matches the images (same dimension)."):
        out = sitk.Resample(moving, reference, transform, INTERPOLATORS[interpolation], float(default_value),
                            pixel_type)
    return _tensor_marked(out, moving, treat, transform)


def _log_euclidean_asked(tensor_interpolation: str, treat: str, moving: sitk.Image) -> bool:
    """Whether :func:`resample` interpolates tensors log-Euclidean (see its ``tensor_interpolation``)."""
    if tensor_interpolation not in TENSOR_INTERPOLATIONS:
        raise InputError(f"Unknown tensor interpolation '{tensor_interpolation}'.",
                         "Use linear (component by component) or log-euclidean (the tensors' logarithms).")
    if tensor_interpolation == "linear":
        return False
    if treat != "tensor":
        raise InputError(f"Log-Euclidean interpolation is for diffusion tensors, but the moving image is resampled "
                         f"as {'a grey image' if treat == 'scalar' else treat} (its file says it holds no tensors, "
                         "or the components asked are not tensors).",
                         "Give a DTI volume (or components='tensor', mmfusion resample --components tensor, for a "
                         "6-component image of tensors), or tensor_interpolation='linear' (mmfusion resample "
                         "--tensor-interpolation linear).")
    if _tensor_kind(moving) != tensors.SYMMETRIC:
        raise InputError("Log-Euclidean interpolation takes the logarithm of symmetric positive definite tensors, but "
                         "the moving image holds full 3 x 3 matrices (9 components), which have none in general.",
                         "Resample it with tensor_interpolation='linear' (mmfusion resample --tensor-interpolation "
                         "linear), or save its tensors as symmetric ones (6 components, NRRD kinds "
                         "3D-symmetric-matrix).")
    return True


def _log_euclidean(moving: sitk.Image, reference: sitk.Image, transform: sitk.Transform,
                   interpolation: str) -> np.ndarray:
    """Symmetric tensors (``moving``, 6 components) interpolated on ``reference``'s grid by their matrix logarithms
    (float64, (voxels..., 6), not yet turned; see :func:`resample`'s ``tensor_interpolation``): the logarithms of
    the non-zero tensors and the share of weight each output voxel draws from them are interpolated alike, the
    mean logarithm is their ratio, its exponential the tensor; a voxel whose share is under one half is zero."""
    values = sitk.GetArrayViewFromImage(moving)
    support = np.any(values != 0.0, axis=-1)
    # the logarithms of the non-zero tensors only (the background, most of a head's field of view, has none): at
    # 256 x 256 x 150 this halved the time and the memory of taking them for every voxel and zeroing the background
    nonzero = values[support].astype(np.float64)
    del values
    logs = np.zeros(tuple(reversed(moving.GetSize())) + (6,))
    logs[support] = tensors.log_tensors(nonzero, tensors.log_floor(nonzero))
    del nonzero
    log_image = sitk.GetImageFromArray(logs, isVector=True)
    del logs
    weight = sitk.GetImageFromArray(support.astype(np.float64))
    for image in (log_image, weight):
        image.CopyInformation(moving)
    interpolator = INTERPOLATORS[interpolation]
    grid = tuple(reversed(reference.GetSize()))
    resampled = sitk.Resample(log_image, reference, transform, interpolator, 0.0, sitk.sitkVectorFloat64)
    del log_image  # (two copies of the logarithms at a time, not three)
    mean = sitk.GetArrayFromImage(resampled).reshape(grid + (6,))
    del resampled
    share = sitk.GetArrayFromImage(sitk.Resample(weight, reference, transform, interpolator, 0.0,
                                                 sitk.sitkFloat64)).reshape(grid)
    inside = share >= 0.5
    mean[inside] = tensors.exp_tensors(mean[inside] / share[inside, None])
    mean[~inside] = 0.0
    return mean


def _keeps_orientation(matrix: np.ndarray | None) -> bool:
    """Whether a transform of linear part ``matrix`` (:func:`_linear_part`; None: not linear) turns no tensor: a
    multiple of the identity (a translation, an isotropic scaling; a stretch along one axis turns an oblique
    tensor's principal direction)."""
    if matrix is None:
        return False
    return bool(matrix[0, 0] > 0 and np.allclose(matrix, matrix[0, 0] * np.eye(len(matrix)), atol=1e-12))


def _tensor_kind(image: sitk.Image) -> str:
    """The tensors of ``image``: as it is marked (a file that says so), else by its number of components."""
    return tensors.tensor_kind(image) or (tensors.SYMMETRIC if image.GetNumberOfComponentsPerPixel() == 6
                                          else tensors.FULL)


def _tensor_marked(out: sitk.Image, moving: sitk.Image, treat: str, transform: sitk.Transform) -> sitk.Image:
    """``out`` marked as tensors where ``moving`` is (resampled as channels or not: its values are still tensors)
    or was resampled as tensors, so that :func:`io.write_image` writes it as the file it came from (NRRD kinds,
    measurement frame and key/value pairs, less the gradient directions where its tensors were turned: resampled as
    tensors under a ``transform`` that turns them; NIfTI intent). Resampled as channels (``treat`` "channels"),
    its tensors are not turned, so the gradient directions still describe them and are kept."""
    if tensors.tensor_kind(moving) is not None:
        turned = treat == "tensor" and not _keeps_orientation(_linear_part(transform, moving.GetDimension()))
        return tensors.copy_mark(moving, out, turned=turned)
    if treat == "tensor":
        return tensors.mark(out, _tensor_kind(moving))
    return out


def _components_kind(moving: sitk.Image, transform: sitk.Transform, components: str | None) -> str:
    """"scalar", "channels", "vector" or "tensor": how :func:`resample` treats ``moving``'s components (see
    there)."""
    if components is not None and components not in COMPONENTS:
        raise InputError(f"Unknown components '{components}'.",
                         f"Use one of: {', '.join(COMPONENTS)} (or None: colour pictures as channels).")
    count, dim = moving.GetNumberOfComponentsPerPixel(), moving.GetDimension()
    if components == "tensor" and (count not in tensors.COUNTS.values() or dim != 3):
        raise InputError(f"The moving image is a {dim}D image of {count} component{'s' if count != 1 else ''} per "
                         "pixel, so it holds no 3 x 3 tensors of a 3D image (6 components: xx, xy, xz, yy, yz, zz; "
                         "or 9: the matrix row by row): its tensors cannot be turned with the transform.",
                         "Give a 3D DTI volume (e.g. Slicer's DTI NRRD), or components='channels' (each component "
                         "interpolated on its own).")
    if components == "vector" and count != dim:
        raise InputError(f"The moving image has {count} component{'s' if count != 1 else ''} per pixel, so it is no "
                         f"vector field of its {dim}D space (that has {dim}): its vectors cannot be turned with the "
                         "transform.",
                         "Give a field of one vector per voxel in physical space, or components='channels' (each "
                         "component interpolated on its own).")
    if moving.GetPixelID() not in _VECTOR_TYPES:
        return "scalar"
    if components is not None:
        return components
    if tensors.tensor_kind(moving) is not None:
        return "tensor"  # its file says so: a NRRD's kinds, a NIfTI's intent
    matrix = _linear_part(transform, dim)
    if count in tensors.COUNTS.values() and dim == 3 and not _keeps_orientation(matrix):
        import warnings

        warnings.warn(f"The moving image has {count} components per voxel and its file does not say what they are: "
                      "they are resampled as channels, each on its own. If they are diffusion tensors (xx, xy, xz, "
                      "yy, yz, zz, or a 3 x 3 matrix row by row, in LPS), the transform turns the image but not "
                      "them: resample with components='tensor' (mmfusion resample --components tensor), or "
                      "components='channels' to say they are channels.", stacklevel=3)
    if moving.GetPixelID() in _INTEGER_TYPES and count in (3, 4) or count != dim:
        return "channels"  # an RGB/RGBA picture (or colour volume), or no vector of this space
    if matrix is not None and np.allclose(matrix, np.eye(dim), atol=1e-12):
        return "channels"  # a translation moves vectors without turning them: either reading gives this answer
    pixels = moving.GetPixelIDTypeAsString()
    raise InputError(f"The moving image has {count} components per pixel ({pixels}), not an RGB/RGBA picture, and "
                     "the transform turns or stretches it: a vector field's vectors (a displacement field, "
                     "gradients) must be turned with it, while a multi-channel image's channels (colour, time frames, "
                     "a complex image's parts) must not, and the pixels do not say which it is (interpolating "
                     "each component had turned no vector, without a word).",
                     f"Say which: components='vector' (mmfusion resample --components vector: vectors in physical "
                     f"space, {dim} per voxel, turned by the transform as antsApplyTransforms -e 1 does) or "
                     "components='channels' (--components channels: each component on its own).")


#: the lowest value a CT's voxels hold in Hounsfield units (-1024 is air as stored with the usual intercept; -3024 the
#: lowest 12-bit value under it): an image's minimum below it is a fill value (:func:`without_padding`) or no HU
LOWEST_HU = -3100.0


#: padding is its fill value and values within this share of it (B-spline and Lanczos interpolation ring around it:
#: a CT padded with -32768 rotated 10 degrees, float, held -32759 to -36160 where the padding lay)
_PADDING_TOLERANCE = 0.1
#: how many voxels from the fill value its interpolated rim reaches: mixtures of the fill and the image (-20000,
#: -5000...) along the padding's edge in an image resampled from a padded one (2 measured, linear, B-spline and
#: Lanczos; 3 for a finer grid)
_PADDING_RIM_VOXELS = 3
#: an axis of at least this many voxels has an edge where the pockets of a resampled padding lie (see padding_mask)
_PADDING_EDGE_AXIS = 8
#: a fill's next 10% above holds at most this share of its count: more, and the values run on through it (no padding)
_PADDING_APART = 0.25
#: int16's lowest value, the fill of CT exports: a fill near it or below (within :data:`_PADDING_TOLERANCE`, an
#: interpolation's overshoot) lying along the grid's edge is padding whatever lies above it, where the image's own
#: values (a phase map's -4096, a difference of two CTs' HU) stay above half of it
_INT16_FILL = -32768.0


def padding_mask(values: np.ndarray) -> np.ndarray | None:
    """Where ``values`` (an image's voxels, in its shape) are padding, None where none are: a fill value below
    :data:`LOWEST_HU` (-32768, int16's lowest, outside the reconstruction circle of many scanners' CT exports; an MR
    or PET so padded too), the values within 10% of it, and, where other values lie below :data:`LOWEST_HU` (an
    image resampled from a padded one), the values within 3 voxels of those that lie below every value of the
    image farther away: the padding's rim (linear interpolation mixes the fill with the image along its edge,
    -20000, -5000, -500..., B-spline and Lanczos overshoot too), which had read as values below any HU. Other
    values below :data:`LOWEST_HU` (a phase map's, a difference image's, that run on below it) are no padding, nor is
    a fill the image's values run on through (the next 10% above it holding more than a quarter of its count: a
    phase map's -4096, a difference image's tail; at int16's fill, where it does not all lie within 6 voxels of the
    grid's edge: an image of int16's full range, a phase map's or an MR's imaginary part's, whose -32768s are its
    own), nor a fill all farther than 6 voxels from the grid's edge (padding fills the region outside a field of
    view: a difference image saturated at -32768 in a lesion). The edge is that of the box about the voxels other
    than the value beyond the image where the fill does not reach the grid's (a padded image resampled onto a larger
    grid, 0, -1024 or NaN beyond it: :func:`_held_box`). The fill is
    the lowest value, or, where interpolation overshot below it, the median of the values below :data:`LOWEST_HU`:
    the one of the two that more of them lie near; a lowest value at int16's fill, however few lie near it, unless
    the image's values below :data:`LOWEST_HU` away from it reach below -16384 (an image of int16's full range, whose
    -32768s are its own). Behind a fill at int16's lowest, values below :data:`LOWEST_HU`
    within 6 voxels of the padding or on the grid's edge (where an inscribed circle meets it, the padding mixed with
    the 0 beyond the grid) are padding too, with their rim, where none of the image's values farther away lies below
    it. A flat array (no neighbours) has its fill value only."""
    arr = np.asarray(values)
    with np.errstate(invalid="ignore"):
        below = arr < LOWEST_HU  # NaN: not below
    if not below.any():
        return None
    low = arr[below].astype(np.float64)
    candidates = (float(low.min()), float(np.median(low)))
    near = [np.count_nonzero(np.abs(low - c) <= _PADDING_TOLERANCE * abs(c)) for c in candidates]
    fill = candidates[int(np.argmax(near))]
    if candidates[0] <= _INT16_FILL * (1.0 - _PADDING_TOLERANCE) < candidates[1] and arr.ndim >= 2 \
            and _own_values_stay_above(arr, below):
        # a lowest value at int16's fill is the fill, however few lie near it: a small padding, turned, has fewer
        # voxels near -32768 than mixtures in its rim, whose median (-4372) had been taken for the fill and the padding
        # for values running on through it (48^2, r=0.63n, Lanczos: -31967 kept). Not in an image of int16's full
        # range (a phase map scaled to -32768..32767, wrapping), whose own values run on down to -32768 away from
        # any padding: it had lost its lowest 9% from its windows and fusion's min-max
        fill = candidates[0]
    reach = _PADDING_TOLERANCE * abs(fill)
    mask = below & (arr >= fill - reach) & (arr <= fill + reach)
    # a fill stands apart: the next 10% above its own hold few values (its rim's mixtures: 2-10% of its count, CTs,
    # MRs, PETs padded, turned, linear/B-spline/Lanczos). Values that run on through it (a Siemens phase map's
    # -4096..4095: 49%, a difference image's tail: more) are the image's own, no padding: a phase map had lost 21% of
    # its voxels, up to -2379, from its windows and fusion's min-max (clipped to 0)
    with np.errstate(invalid="ignore"):
        above = np.count_nonzero((arr > fill + reach) & (arr <= fill + 2.0 * reach))
    # (not asked of int16's fill where all of it lies along the grid's edge, the image's own values away from it
    # above -16384: a small padding, the corners a wide reconstruction circle leaves, turned, has fewer voxels near
    # -32768 than mixtures in its rim, and had been kept whole, windows from -32768 again. An image of int16's full
    # range runs on from its -32768s across the grid: a phase map, an MR's imaginary part, had lost 29-61% of its
    # voxels, all its values up to 11469 or -655)
    count = np.count_nonzero(mask)
    runs_on = above > _PADDING_APART * count
    at_int16 = fill <= _INT16_FILL * (1.0 - _PADDING_TOLERANCE)
    inner = _inside_the_edge(mask)
    if count and (inner == count or runs_on and at_int16 and inner):
        # the edge of what the image holds, where it was resampled onto a larger grid (0, air or NaN beyond it)
        inner = _inside_the_edge(mask, _held_box(arr))
    if runs_on and not (at_int16 and inner == 0 and _own_values_stay_above(arr, below)):
        return None
    # a padding fills the region outside a field of view, reaching the grid's edge: a fill all farther than 6
    # voxels from it (a difference image saturated at -32768 in a lesion) is the image's own values
    if count and inner == count:
        return None
    if arr.ndim >= 2 and mask.any() and (below & ~mask).any():  # a rim: resampled from a padded image
        _add_rim(arr, mask)
        # pockets: where the circle meets the grid's edge, the padding's mixtures with what lay beyond the grid (0)
        # lie more than 3 voxels from the fill, and had been the floor (windows from -9294: 64^2, turned 10 degrees,
        # linear). Below LOWEST_HU and within 6 voxels of the padding found, they are padding too where none of
        # the image's values farther away lies below it (a phase map's do: it keeps its own -4096..-3100)
        if fill <= _INT16_FILL * (1.0 - _PADDING_TOLERANCE) and (below & ~mask).any():
            if not (below & ~_near_padding(mask)).any():
                mask |= below
                _add_rim(arr, mask)
    return mask


def _own_values_stay_above(arr: np.ndarray, below: np.ndarray) -> bool:
    """Whether the values below :data:`LOWEST_HU` (``below``) that lie away from int16's fill zone (-29491 and below)
    and from the grid's edge (:func:`_near_padding`) stay above half of int16's fill (-16384): as a CT's, a Siemens
    phase map's (-4096) or a difference image's do, where the zone's values are a padding's. An image of int16's full
    range reaches below it away from the zone (a wrapping phase map scaled to -32768..32767: -21900 at 6 voxels from
    its -32768s), its -32768s its own."""
    zone = below & (arr <= _INT16_FILL * (1.0 - _PADDING_TOLERANCE))
    away = below & ~_near_padding(zone)
    return not away.any() or float(arr[away].min()) > _INT16_FILL / 2.0


def _inside_the_edge(mask: np.ndarray, box: Sequence[slice] | None = None) -> int:
    """How many of ``mask``'s voxels lie farther than 6 voxels (twice a padding's rim) from the grid's edge (or the
    faces of ``box``, a region of it), along the axes of at least :data:`_PADDING_EDGE_AXIS` voxels (as
    :func:`_near_padding` takes the edge): 0 where every one lies near it, and where no axis has that many voxels (no
    edge to tell: a flat array, a few small slices)."""
    box = [slice(0, size) for size in mask.shape] if box is None else box
    sizes = [part.stop - part.start for part in box]
    if not any(size >= _PADDING_EDGE_AXIS for size in sizes):
        return 0
    reach = 2 * _PADDING_RIM_VOXELS
    index = tuple(slice(part.start + reach, part.stop - reach) if size >= _PADDING_EDGE_AXIS else slice(None)
                  for part, size in zip(box, sizes))
    return int(np.count_nonzero(mask[index]))


def _held_box(arr: np.ndarray) -> list[slice]:
    """The box (a slice per axis) about ``arr``'s voxels other than the value resampling gives those beyond the
    image it moves: the one value every corner of the grid holds (0, :func:`resample`'s default; -1024 or NaN where
    the user gave it: ``mmfusion resample --default-value``, elastix's DefaultPixelValue, antsApplyTransforms -f),
    else 0: the edge of what a padded image resampled onto a larger grid holds. ``arr`` holds some voxel other than
    it."""
    corners = arr[np.ix_(*[[0, size - 1] for size in arr.shape])].ravel()
    beyond = corners[0] if (corners == corners[0]).all() or np.isnan(corners).all() else 0
    with np.errstate(invalid="ignore"):
        held = ~np.isnan(arr) if beyond != beyond else arr != beyond
    box = []
    for axis in range(arr.ndim):
        hit = np.flatnonzero(held.any(axis=tuple(a for a in range(arr.ndim) if a != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1))
    return box


def _near_padding(mask: np.ndarray) -> np.ndarray:
    """The voxels within 6 of ``mask``'s (a padding found: twice its rim's reach) or on the grid's edge (along axes of
    at least :data:`_PADDING_EDGE_AXIS` voxels: no slices), where a padding's mixtures lie: its rim, and the pockets
    where an inscribed reconstruction circle meets the grid's edge (see :func:`padding_mask`)."""
    near = _within_voxels(mask, 2 * _PADDING_RIM_VOXELS)
    for axis, size in enumerate(mask.shape):
        if size >= _PADDING_EDGE_AXIS:
            index = [slice(None)] * mask.ndim
            for end in (0, size - 1):
                index[axis] = end
                near[tuple(index)] = True
    return near


def _add_rim(arr: np.ndarray, mask: np.ndarray) -> None:
    """Adds to ``mask`` (in place) its rim in ``arr``: the values within 3 voxels of it below every value of the image
    away from it (mixtures above -3100 too, which had made an MR so padded and rotated read as a CT: air near -1000).
    The minimum is taken in place (no copy of the values away from it: 0.8 s of a 512x512x300 float CT's 3 s)."""
    around = _within_voxels(mask, _PADDING_RIM_VOXELS)
    away = ~around
    if np.issubdtype(arr.dtype, np.floating):
        away &= np.isfinite(arr)
    initial = np.inf if np.issubdtype(arr.dtype, np.floating) else np.iinfo(arr.dtype).max
    floor = float(np.min(arr, where=away, initial=initial)) if away.any() else LOWEST_HU
    with np.errstate(invalid="ignore"):
        mask |= around & (arr < floor)


def _within_voxels(mask: np.ndarray, voxels: int) -> np.ndarray:
    """The voxels within ``voxels`` steps of ``mask``'s, diagonals too (a box of side 2 * ``voxels`` + 1 about each;
    none beyond the array's edge): scipy's ``binary_dilation`` by a 3x3x3 box ``voxels`` times, the box taken
    one axis at a time by shifted ORs (1, 2, 4... apart, slab by slab along the first axis so each pass stays in the
    cache): on a 512x512x300 CT's padding 0.3 s where ``binary_dilation`` took 1.2-2.4 s, the same voxels."""
    out = mask.copy()
    steps, reach = [], 0
    while reach < voxels:
        step = min(reach + 1, voxels - reach)
        steps.append(step)
        reach += step
    slab = 8
    for start in range(0, out.shape[0], slab):
        part = out[start:start + slab]
        for axis in range(1, out.ndim):
            for step in steps:
                _or_shifted(part, axis, step)
    for step in steps:
        _or_shifted(out, 0, step)
    return out


def _or_shifted(out: np.ndarray, axis: int, step: int) -> None:
    """``out`` |= ``out`` shifted ``step`` voxels either way along ``axis`` (in place; nothing from beyond the edge)."""
    n = out.shape[axis]
    if step >= n:
        return
    src = out.copy()
    ahead = [slice(None)] * out.ndim
    behind = list(ahead)
    ahead[axis], behind[axis] = slice(step, None), slice(None, n - step)
    out[tuple(ahead)] |= src[tuple(behind)]
    out[tuple(behind)] |= src[tuple(ahead)]


#: ``mask`` of :func:`without_padding`, :func:`unpadded_range` and :func:`robust_range` left out: computed from the values
COMPUTE_MASK: Any = object()


def without_padding(values: np.ndarray, mask: Any = COMPUTE_MASK) -> np.ndarray:
    """The finite ``values`` (flattened) but their padding (:func:`padding_mask`: a fill value below
    :data:`LOWEST_HU`, -32768 outside the reconstruction circle of many scanners' CT exports, with its interpolated
    rim where ``values`` come in the image's shape). All of them when every value is padding. ``mask``:
    :func:`padding_mask` of these very ``values`` (None: no padding), computed once by a caller that takes several
    ranges of one image (the web viewer: 0.4-1 s a call on a 512x512x300 CT), taken as given.

    The one rule of every window taken from an image's own values (the Slicer and web display windows, the web's
    volume rendering and fusion windows, the report's and checkerboard's pictures: :func:`robust_range`) and of
    fusion's min-max scaling (:func:`unpadded_range`), whose low end had been the padding: a padded CT's auto
    window started at -32768 and its fused brain lay in a few grey levels near white. ``web.viewer.looks_like_ct``
    takes it too. Registration sets the padding to the lowest other value in its working copies
    (``registration.padding_filled``)."""
    values = np.asarray(values)
    if mask is COMPUTE_MASK:
        mask = padding_mask(values)
    rest = values.ravel() if mask is None or mask.all() else values[~mask]
    if np.issubdtype(rest.dtype, np.floating):
        rest = rest[np.isfinite(rest)]
    return rest


def unpadded_range(values: np.ndarray, mask: Any = COMPUTE_MASK) -> tuple[float, float]:
    """(min, max) of the finite ``values`` but their padding (:func:`without_padding`): the range fusion scales an
    image by to 0..1 (``fusion.to_unit``, the metrics' 0..255 alike); padding voxels lie below it (clipped to 0).
    (0, 0) when nothing is finite. ``mask``: as :func:`without_padding` takes it."""
    rest = without_padding(values, mask)
    if rest.size == 0:
        return 0.0, 0.0
    return float(rest.min()), float(rest.max())


def robust_range(values: np.ndarray, low: float, high: float, mask: Any = COMPUTE_MASK) -> tuple[float, float]:
    """Display range ``(lo, hi)``: the ``low``/``high`` percentiles of the finite values but the padding
    (:func:`without_padding`: a CT's -32768 outside its reconstruction circle) (robust to hot spots and
    outliers), their min/max where the percentiles coincide, and never an empty range (``hi > lo``); (0, 1) when
    nothing is finite. The report, the checkerboard, the Slicer displays and the web viewer use it. ``mask``: as
    :func:`without_padding` takes it."""
    finite = without_padding(values, mask)
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, [low, high]))
    if hi <= lo:
        lo, hi = float(finite.min()), float(finite.max())
    return lo, (hi if hi > lo else lo + 1.0)


def reorient_to_lps(image: sitk.Image) -> sitk.Image:
    """The image resampled (by axis permutation and flips only) so its axes run toward L, P (and S).

    This is radiological display, as Slicer's axial view: row 0 anterior, column 0 the patient's right
    (the checkerboard PNG and the report's views use it). A 2D image is an axial slice, as Slicer takes
    it: one whose direction flips or swaps x and y (a slice of a NIfTI stored in RAS order) is turned
    back; a PNG has identity and stays. Unusual directions ITK cannot reorient: the image as stored.
    """
    try:
        if image.GetDimension() == 2:
            return _with_units_of(sitk.DICOMOrient(sitk.JoinSeries(image), "LPS")[:, :, 0], image)
        return _with_units_of(sitk.DICOMOrient(image, "LPS"), image)
    except RuntimeError:  # unusual directions: the grid as stored
        return image


def normalize_intensity(image: sitk.Image, method: str = "zscore", *, mask: sitk.Image | None = None,
                        lower_percentile: float = 1.0, upper_percentile: float = 99.0,
                        window: tuple[float, float] | None = None, ct_window: str | None = None,
                        output_range: tuple[float, float] = (0.0, 1.0)) -> sitk.Image:
    """Normalise intensities (float32 output, same geometry).

    Args:
        image: the image.
        method: "zscore" (zero mean, unit standard deviation), "minmax" (the lowest..highest value mapped to
            ``output_range``; with a mask, those inside it, the voxels outside clipped), "percentile" (the
            ``lower_percentile``..``upper_percentile`` range mapped to ``output_range`` and clipped)
            or "window" (``window=(level, width)`` or ``ct_window`` mapped to ``output_range``, clipped).
        mask: statistics are computed inside this mask (same grid) when given; one inside which the image is
            constant is refused (no spread to scale by).
        lower_percentile: see ``method``.
        upper_percentile: see ``method``.
        window: (level, width) for "window" (a CT window name here is read as ``ct_window``).
        ct_window: a CT window preset name (brain, subdural, bone, soft-tissue, lung); implies
            ``method="window"``.
        output_range: target range of "minmax", "percentile" and "window": the low end of the input range goes
            to ``output_range[0]`` and the high end to ``output_range[1]``, so (1, 0) inverts the
            contrast; two equal numbers are refused.

    Returns:
        A float32 image.

    Raises:
        InputError: unknown method or CT window, a window of non-positive width, an output range that
            is not two different finite numbers, or a mask inside which the image is constant.
    """
    # a one-slice volume is normalised as any image (the statistics take no neighbours): it had been refused.
    # Only a range (percentile, minmax) takes the difference of the extremes; z-scores (scaled below) and a window
    # take any finite values, -1e308..1e308 too
    by_range = method in ("percentile", "minmax") and ct_window is None and not isinstance(window, str)
    check_image(image, "image", allow_one_slice=True, allow_any_span=not by_range)
    if isinstance(window, str):
        # window="brain" reads naturally but the name belongs in ct_window: take it rather than
        # failing in float() on its first letter
        if ct_window is not None and ct_window != window:
            raise InputError(f"Two CT windows given: window='{window}' and ct_window='{ct_window}'.",
                             "Give one CT window name, as ct_window (window= takes (level, width)).")
        ct_window, window = window, None
    if ct_window is not None:
        if ct_window not in CT_WINDOWS:
            raise InputError(f"Unknown CT window '{ct_window}'.", f"Use one of: {', '.join(CT_WINDOWS)}.")
        window = CT_WINDOWS[ct_window]
        method = "window"
    if method == "percentile":
        lower, upper = float(lower_percentile), float(upper_percentile)
        if not 0.0 <= lower < upper <= 100.0:  # NaN fails too
            raise InputError(f"The percentiles {lower:g}..{upper:g} are not a range within 0..100.",
                             "Give 0 <= lower_percentile < upper_percentile <= 100 (e.g. 1 and 99).")
    try:
        # a string is refused whole: "01" would be read digit by digit as (0, 1), "59" as (5, 9)
        bounds = [] if isinstance(output_range, (str, bytes)) else [float(v) for v in output_range]
    except (TypeError, ValueError):  # 1.0, None, ("a", "b")
        bounds = []
    if len(bounds) != 2:  # (0, 1, 2) had been a ValueError when unpacked, 1.0 a TypeError
        raise InputError(f"The output range {output_range!r} is not two numbers.", "Give e.g. output_range=(0, 1).")
    if not all(np.isfinite(v) for v in bounds):
        raise InputError(f"The output range {tuple(output_range)} is not finite.", "Give two numbers, e.g. (0, 1).")
    if bounds[0] == bounds[1]:  # every voxel would have been that one value, without a word
        raise InputError(f"The output range ({bounds[0]:g}, {bounds[1]:g}) is empty: every voxel would be "
                         f"{bounds[0]:g}.",
                         "Give two different numbers, e.g. output_range=(0, 1), or (1, 0) to invert the contrast.")
    # float64: a float32 copy of a wide-range image (doubles near 1e8, int32/uint32 counts) loses the
    # differences between neighbouring values, and of huge ones overflows to inf
    arr = sitk.GetArrayFromImage(image).astype(np.float64)
    if mask is not None:
        from .validation import check_mask

        # held in a name: a view of the temporary check_mask returns was read after the image was freed
        checked = check_mask(mask, image)
        sel = sitk.GetArrayViewFromImage(checked).astype(bool)
        values = arr[sel]
    else:
        values = arr.ravel()
    if mask is not None and method != "window" and values.min() == values.max():
        # the statistics would have no spread: z-scores had divided by 1 (the image left in its own units outside
        # the mask, shifted), a percentile or min-max range been widened to 1 unit, without a word
        raise InputError(f"Every voxel of the image inside the mask is {float(values[0]):g} ({values.size} voxels): "
                         f"the '{method}' normalisation has no spread of values to scale by.",
                         "Check that the mask lies on the right structure of this image, or normalise without it.")
    lo_out, hi_out = bounds
    if method == "zscore":
        scale = float(np.abs(values).max()) or 1.0  # statistics of values/scale: no overflow near 1e300
        mean, std = float((values / scale).mean()) * scale, float((values / scale).std()) * scale
        out = (arr - mean) / (std if std > 0 else 1.0)
    elif method in ("percentile", "minmax"):
        if method == "percentile":
            lo, hi = np.percentile(values, [lower_percentile, upper_percentile])
        else:
            lo, hi = float(values.min()), float(values.max())
        if hi <= lo:
            hi = lo + 1.0
        out = lo_out + (np.clip(arr, lo, hi) - lo) / (hi - lo) * (hi_out - lo_out)
    elif method == "window":
        if window is None:
            raise InputError("The 'window' normalisation needs window=(level, width) or a ct_window name.",
                             f"Give e.g. ct_window='brain' (one of {', '.join(CT_WINDOWS)}).")
        try:
            level, width = (float(v) for v in window)
        except (TypeError, ValueError) as exc:
            raise InputError(f"The window {window!r} is not (level, width).",
                             f"Give two numbers, e.g. window=(40, 80), or ct_window= one of "
                             f"{', '.join(CT_WINDOWS)}.") from exc
        if not (np.isfinite(level) and np.isfinite(width)) or width <= 0:
            raise InputError(f"The window (level {level:g}, width {width:g}) needs a finite level and a "
                             "positive, finite width.", "Give e.g. window=(40, 80), or a ct_window name.")
        lo, hi = level - width / 2.0, level + width / 2.0
        out = lo_out + (np.clip(arr, lo, hi) - lo) / (hi - lo) * (hi_out - lo_out)
    else:
        raise InputError(f"Unknown normalisation method '{method}'.",
                         "Use 'zscore', 'minmax', 'percentile' or 'window'.")
    with np.errstate(over="ignore"):
        out32 = out.astype(np.float32)
    if not np.all(np.isfinite(out32)):
        raise InputError("The normalised values do not fit 32-bit floats.",
                         "Use method='zscore' or 'percentile', which bring any range to a few units.")
    result = sitk.GetImageFromArray(out32)
    result.CopyInformation(image)
    return result


def foreground_mask(image: sitk.Image, *, smoothing_sigma_mm: float | None = None, closing_radius: int = 2,
                    opening_radius: int = 1, fill_holes: bool = True, largest_component: bool = True,
                    dilation_radius: int = 0) -> sitk.Image:
    """An automatic foreground (head/body) mask: Otsu threshold plus morphology.

    Otsu splits the histogram where the two classes differ most, so one structure far brighter than the
    rest takes the threshold: a PET with a hot spot (bladder, injection site) gets the hot spot alone (MNI
    head at 2 mm, a spot of 0.5% of the voxels at 14x grey matter's uptake: 2% of the brain covered,
    instead of all of it). Give such an image a mask of your own, or clip it to a robust range first.

    The radii are balls in millimetres, whatever the voxels' shape: ``radius`` voxels along the finest axis,
    the whole number of voxels nearest that length along a coarser axis (on 0.5 x 0.5 x 5 mm voxels the default
    opening's ball is 0.5 mm, 1 x 1 x 0 voxels; a ball of 1 voxel along each axis had erased every structure
    thinner than 3 slices, 15 mm, and returned an empty mask; on nearly isotropic voxels, 0.9375 x 0.9375 x 1 mm,
    it is the isotropic image's, ``radius`` voxels along every axis).

    Args:
        image: the image (any modality; CT air, with or without scanner padding outside the field of
            view, and MR background fall below the Otsu threshold). A thin volume (fewer than 4 voxels
            along an axis, a one-slice volume among them) or a small 2D image is smoothed too.
        smoothing_sigma_mm: Gaussian smoothing before thresholding (default: 1.5 voxel sizes of the finest
            axis), which makes the mask robust to noise; 0: none.
        closing_radius: binary closing radius in voxels of the finest axis (joins gaps).
        opening_radius: binary opening radius in voxels of the finest axis (removes specks).
        fill_holes: fill holes: those enclosed in 3D, and, in a volume, the cavities that only the first or the
            last slice (along the last axis, the file's slices) opens, such as the lungs or the airway cut by the
            field of view. Background that reaches a side of the volume stays out, also where some slices enclose
            it (air between a forearm lying across the belly and the belly).
        largest_component: keep only the largest connected component.
        dilation_radius: final dilation in voxels of the finest axis (a margin around the object).

    Returns:
        UInt8 mask (0/1) on the image's grid.

    Raises:
        InputError: the image is not usable (:func:`validation.check_image`), or the mask comes out empty (the
            opening removed every bright structure).
    """
    check_image(image, "image", allow_one_slice=True)
    img = sitk.Cast(image, sitk.sitkFloat32)
    dim = image.GetDimension()
    finest = min(image.GetSpacing())
    sigma = float(smoothing_sigma_mm) if smoothing_sigma_mm is not None else 1.5 * finest
    if sigma > 0:
        if min(image.GetSize()) >= 4:
            img = sitk.SmoothingRecursiveGaussian(img, sigma)
        else:
            # ITK's recursive Gaussian needs 4 voxels along every axis: a thin volume (3 slices, one slice) had been
            # refused. The discrete Gaussian takes any size (in mm too; a one-voxel axis it leaves as it is)
            smoother = sitk.DiscreteGaussianImageFilter()
            smoother.SetVariance([sigma ** 2] * dim)
            smoother.SetMaximumKernelWidth(max(32, 2 * int(np.ceil(4.0 * sigma / finest)) + 1))
            img = smoother.Execute(img)
    # insideValue=0/outsideValue=1 gives the bright class as 1
    mask = sitk.OtsuThreshold(img, 0, 1, 128)
    if opening_radius > 0:
        mask = sitk.BinaryMorphologicalOpening(mask, _ball(opening_radius, image), sitk.sitkBall, 0, 1)
        if not sitk.GetArrayViewFromImage(mask).any():
            raise InputError(f"The foreground mask is empty: the opening (radius {opening_radius} voxel"
                             f"{'s' if opening_radius != 1 else ''}, {opening_radius * finest:g} mm) removed every "
                             "voxel above the Otsu threshold, whose bright structures are all thinner than its ball.",
                             "Pass opening_radius=0 (no opening), or give a mask of your own.")
    if closing_radius > 0:
        pad = [r + 1 for r in _ball(closing_radius, image)]
        # pad so that closing near the border does not erode the object
        padded = sitk.ConstantPad(mask, pad, pad, 0)
        padded = sitk.BinaryMorphologicalClosing(padded, _ball(closing_radius, image), sitk.sitkBall, 1)
        mask = sitk.Crop(padded, pad, pad)
    if fill_holes:
        mask = _fill_holes_open_at_the_ends(mask) if dim == 3 else sitk.BinaryFillhole(mask, False, 1)
    if largest_component and sitk.GetArrayViewFromImage(mask).any():
        cc = sitk.ConnectedComponent(mask)
        mask = sitk.RelabelComponent(cc, sortByObjectSize=True) == 1
    if dilation_radius > 0:
        mask = sitk.BinaryDilate(mask, _ball(dilation_radius, image), sitk.sitkBall, 0, 1)
    mask = sitk.Cast(mask, sitk.sitkUInt8)
    mask.CopyInformation(image)
    return mask


def _ball(radius: int, image: sitk.Image) -> list[int]:
    """A structuring element's radius per axis, in voxels, for a ball of ``radius`` voxels of ``image``'s finest
    axis: the whole number of each axis's voxels nearest that length (see :func:`foreground_mask`). Nearest, not
    the voxels that fit: on 0.9375 x 0.9375 x 1 mm voxels (an MR T1) the default opening's 1 voxel had become 0
    slices and a dilation of 2 one slice, where an isotropic image keeps its radius on every axis."""
    length = radius * min(image.GetSpacing())
    return [int(np.floor(length / s + 0.5)) for s in image.GetSpacing()]


def _fill_holes_open_at_the_ends(mask: sitk.Image) -> sitk.Image:
    """``mask`` (3D, 0/1) with its holes filled, those in 3D and the cavities that only the first or last slice
    (along the last axis) opens: a slice of foreground put before the first and after the last closes them for a 3D
    hole filling. Lungs or an airway cut by the field of view are filled; background that reaches a side of the
    volume stays out, also where it is enclosed within some slices only. Each slice's holes had been filled on
    their own: the air between a forearm lying across the belly and the belly, enclosed in the forearm's slices
    and open above and below them, had been put in the mask."""
    caps = [0] * (mask.GetDimension() - 1) + [1]
    filled = sitk.BinaryFillhole(sitk.ConstantPad(mask, caps, caps, 1), fullyConnected=False, foregroundValue=1)
    out = sitk.Crop(filled, caps, caps)
    out.CopyInformation(mask)
    return out


def crop_to_overlap(a: sitk.Image, b: sitk.Image, margin_mm: float = 0.0) -> tuple[sitk.Image, sitk.Image]:
    """Crop both images to the physical box where their bounding boxes overlap.

    Each image keeps its own grid (only whole voxels are removed, geometry is exact).

    Args:
        a: first image.
        b: second image.
        margin_mm: extra margin kept around the overlap box (a finite number; negative shrinks the box).

    Returns:
        (a cropped, b cropped).

    Raises:
        InputError: the images do not overlap (their voxels: oblique images whose bounding boxes overlap
            but whose voxels do not, such as two slabs at 45 degrees side by side, are refused too), or the
            margin is not a finite number or leaves nothing.
    """
    check_image(a, "first image", allow_vector=True, allow_constant=True, allow_one_slice=True)
    check_image(b, "second image", allow_vector=True, allow_constant=True, allow_one_slice=True)
    if a.GetDimension() != b.GetDimension():
        raise InputError(f"Cannot crop a {a.GetDimension()}D and a {b.GetDimension()}D image to their overlap.",
                         "Give two images of the same dimension.")
    try:
        margin = float(margin_mm)
    except (TypeError, ValueError):
        margin = float("nan")
    if isinstance(margin_mm, (bool, str)) or not np.isfinite(margin):
        # NaN and inf had reached RegionOfInterest as garbage indices (a TypeError), a string numpy's subtract
        raise InputError(f"The margin {margin_mm!r} is not a finite number of millimetres.",
                         "Give e.g. margin_mm=0 (the overlap itself) or 10.")
    lo_a, hi_a = physical_bounds(a)
    lo_b, hi_b = physical_bounds(b)
    lo, hi = np.maximum(lo_a, lo_b), np.minimum(hi_a, hi_b)
    # oblique grids: boxes that overlap may hold voxels that do not (two slabs at 45 degrees side by side)
    if np.any(hi <= lo) or not voxels_overlap(a, b):
        raise InputError("The two images do not overlap in physical space, so there is nothing to crop to.",
                         "Check the origins in the headers, or align them first (register with the "
                         "'geometry' initializer).")
    sides = hi - lo
    lo, hi = lo - margin, hi + margin
    if np.any(hi <= lo):  # a negative margin: had been reported as images that do not overlap
        raise InputError(f"The margin of {margin:g} mm shrinks the images' overlap ({_extent(sides)}) to nothing.",
                         f"Give a margin above {-float(sides.min()) / 2:g} mm, e.g. 0.")
    return _crop_to_box(a, lo, hi), _crop_to_box(b, lo, hi)


def _extent(sides: Sequence[float]) -> str:
    return " x ".join(f"{float(v):g}" for v in sides) + " mm"


def _crop_to_box(image: sitk.Image, lo: Sequence[float], hi: Sequence[float]) -> sitk.Image:
    """Crop ``image`` to the voxels that reach into the physical box (their extent, half a voxel either side of the
    centre, overlaps it; any direction matrix): the box of two images' bounds keeps each one's border voxels."""
    import itertools

    corners = [image.TransformPhysicalPointToContinuousIndex([float(v) for v in c])
               for c in itertools.product(*zip(lo, hi))]
    idx = np.array(corners)
    size = np.array(image.GetSize())
    start = np.clip(np.floor(idx.min(axis=0) + 0.5), 0, size - 1).astype(int)
    stop = np.clip(np.ceil(idx.max(axis=0) - 0.5), 0, size - 1).astype(int)
    stop = np.maximum(stop, start)
    return _with_units_of(sitk.RegionOfInterest(image, [int(v) for v in stop - start + 1], [int(v) for v in start]),
                          image)
