"""Known-answer registration cases and the error of a recovered transform against the truth.

Target registration error (TRE) here is the distance between where the recovered and the true
transform send each point of a mask (e.g. the brain), in mm: mean, median and max. The cases
are built from the MNI152 template (``data.mni152``) and a synthetic second contrast, so the
true mapping is known exactly.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

__all__ = [
    "transform_error",
    "rotation_angle_deg",
    "euler_angles_deg",
    "rigid_transform",
    "KnownCase",
    "rigid_case",
    "bspline_case",
    "slab_motion_case",
    "itk_brainweb_band_case",
    "itk_brainweb_truth",
    "itk_brainweb_pair",
    "ITK_BRAINWEB_ENCODED_TRANSLATION",
]


def transform_error(recovered: sitk.Transform, truth: sitk.Transform, reference: sitk.Image,
                    mask: sitk.Image | None = None) -> dict[str, float]:
    """Distance between ``recovered(x)`` and ``truth(x)`` over the voxels ``x`` of ``reference`` (in ``mask``).

    Args:
        recovered: transform found by registration (fixed -> moving points).
        truth: the true transform (fixed -> moving points).
        reference: grid of the points (usually the fixed image).
        mask: only voxels where the mask is non-zero (on ``reference``'s grid: size, origin, spacing and
            direction, else an InputError).

    Returns:
        dict with "mean", "median", "max" (mm, or pixels for unit spacing) and "points".
    """
    d_rec = _displacements(recovered, reference)
    d_true = _displacements(truth, reference)
    err = np.linalg.norm(d_rec - d_true, axis=-1)
    if mask is not None:
        from ..validation import check_mask

        # the whole grid (origin, spacing, direction), not only the size: a mask placed elsewhere would
        # pick other points voxel by voxel
        err = err[sitk.GetArrayFromImage(check_mask(mask, reference, "error mask", "reference image")).astype(bool)]
    if err.size == 0:
        raise InputError("The error mask is empty.", "Give a non-empty mask.")
    return {"mean": float(err.mean()), "median": float(np.median(err)), "max": float(err.max()),
            "points": int(err.size)}


def _displacements(transform: sitk.Transform, reference: sitk.Image) -> np.ndarray:
    """T(x) - x at every voxel of ``reference``, as an array (z, y, x, dim) / (y, x, dim)."""
    field = sitk.TransformToDisplacementField(
        transform, sitk.sitkVectorFloat64, reference.GetSize(), reference.GetOrigin(), reference.GetSpacing(),
        reference.GetDirection())
    return sitk.GetArrayFromImage(field)


def rotation_angle_deg(matrix_or_transform: np.ndarray | sitk.Transform) -> float:
    """Rotation angle (degrees) of a rotation matrix, or of a linear transform's matrix (signed in 2D).

    A matrix that is not a rotation (an affine's, with scaling or shear) is taken by its rotation part, the
    orthogonal factor of its polar decomposition (the rotation nearest to it in the Frobenius norm). That
    factor is exact for a rotation with any scaling along its own axes; with shear an affine has no unique
    rotation (a QR split, as FSL's avscale uses, gives another angle: 10 degrees and shear 0.3 read 1.5
    degrees here). Read off the matrix itself, an affine of a 10 degree turn and 10% scaling had read
    0 degrees (3D: ``(trace - 1) / 2`` above 1, clipped). A matrix with a reflection (negative
    determinant) has no rotation angle: an InputError.
    """
    if isinstance(matrix_or_transform, sitk.Transform):
        from .sitk_backend import linear_parts

        dim = matrix_or_transform.GetDimension()
        parts = linear_parts(matrix_or_transform, dim)
        if parts is None:
            raise InputError("The transform is not linear, so it has no single rotation angle.",
                             "Give a rigid or affine transform.")
        matrix = parts[0]
    else:
        matrix = np.asarray(matrix_or_transform, float)
    dim = matrix.shape[0]
    if not np.all(np.isfinite(matrix)):  # a diverged registration's: numpy's 'SVD did not converge', or 0 degrees
        raise InputError(f"The matrix {matrix.tolist()} holds NaN or infinite values, so it has no rotation angle.",
                         "Give the transform of a registration that converged (check its metric and parameters).")
    if np.linalg.matrix_rank(matrix) < dim:  # it flattens space onto a plane or line: nothing flips, nothing turns
        raise InputError(f"The matrix {matrix.tolist()} is singular (determinant {np.linalg.det(matrix):.3g}): it "
                         "flattens the image along an axis, so it has no rotation angle.",
                         "Give a rotation, or a linear transform that keeps every axis (a scale of 0 is no transform "
                         "to measure).")
    if np.linalg.det(matrix) < 0:
        raise InputError(f"The matrix {matrix.tolist()} flips (determinant {np.linalg.det(matrix):.3g}), so it has "
                         "no rotation angle.", "Give a rotation, or a linear transform without a reflection.")
    if not np.allclose(matrix.T @ matrix, np.eye(dim), rtol=0, atol=1e-9):
        u, _, vt = np.linalg.svd(matrix)  # the polar decomposition's rotation: U V^T (determinant +1 here)
        matrix = u @ vt
    if matrix.shape == (2, 2):
        return math.degrees(math.atan2(matrix[1, 0], matrix[0, 0]))
    cos = (np.trace(matrix) - 1.0) / 2.0
    return math.degrees(math.acos(float(np.clip(cos, -1.0, 1.0))))


def euler_angles_deg(matrix: np.ndarray, zyx: bool = False) -> list[float]:
    """The angles (degrees) about x, y and z that ITK's ``Euler3DTransform`` holds for a 3D rotation matrix.

    ITK builds the matrix as ``Rz @ Rx @ Ry`` (about y first, then x, then z), or ``Rz @ Ry @ Rx`` when
    ``ComputeZYX`` is set (``zyx=True``); its parameters are these angles in radians, so the result is
    what a transform file's first three parameters read in degrees (for angles within ITK's ranges: the
    middle one within +-90 degrees, the others within +-180). At the order's lock (the middle angle at +-90
    degrees) the angle about z is 0 and the remaining one takes the rest, one of the angle sets giving the matrix
    (ITK's own ``SetMatrix`` sets x to 0 there for ZYX, and at x = -90 degrees for ZXY gives angles that do
    not give the matrix back).
    """
    r = np.asarray(matrix, float)
    if zyx:  # Rz Ry Rx: r[2, 0] = -sin(y)
        y = math.asin(float(np.clip(-r[2, 0], -1.0, 1.0)))
        if abs(math.cos(y)) > 1e-9:
            x, z = math.atan2(r[2, 1], r[2, 2]), math.atan2(r[1, 0], r[0, 0])
        else:  # Ry Rx alone: row 1 is (0, cos x, -sin x)
            x, z = math.atan2(-r[1, 2], r[1, 1]), 0.0
    else:  # Rz Rx Ry: r[2, 1] = sin(x)
        x = math.asin(float(np.clip(r[2, 1], -1.0, 1.0)))
        if abs(math.cos(x)) > 1e-9:
            y, z = math.atan2(-r[2, 0], r[2, 2]), math.atan2(-r[0, 1], r[1, 1])
        else:  # Rx Ry alone: row 0 is (cos y, 0, sin y)
            y, z = math.atan2(r[0, 2], r[0, 0]), 0.0
    return [math.degrees(a) for a in (x, y, z)]


def rigid_transform(center: Sequence[float], angles_deg: Sequence[float], translation: Sequence[float]) -> sitk.Transform:
    """Euler2D (one angle) or Euler3D (angles about x, y, z) about ``center`` with ``translation`` (mm)."""
    if len(center) == 2:
        tx = sitk.Euler2DTransform()
        tx.SetCenter([float(c) for c in center])
        tx.SetAngle(math.radians(float(angles_deg[0])))
    else:
        tx = sitk.Euler3DTransform()
        tx.SetCenter([float(c) for c in center])
        tx.SetRotation(*[math.radians(float(a)) for a in angles_deg])
    tx.SetTranslation([float(t) for t in translation])
    return tx


#: The translation (pixels) that BrainProtonDensitySliceR10X13Y17.png actually encodes for a 10 degree
#: rotation about the image centre (110, 128) of the 221x257 slices. The file name says (13, 17), but
#: the pixels were not made with the centre as rotation centre: ITK's Software Guide
#: (ImageRegistration5, same-modality PD -> PD registration) recovers angle 0.174474 rad, centre
#: (109.658, 129.124), translation (12.9044, 15.8459), which is (13.09, 15.92) about (110, 128);
#: (13, 17) about the centre is 1.08 pixels away from what the images hold.
ITK_BRAINWEB_ENCODED_TRANSLATION = (13.09, 15.92)


def itk_brainweb_pair() -> tuple[sitk.Image, sitk.Image]:
    """(fixed T1 BrainT1SliceBorder20, moving PD BrainProtonDensitySliceR10X13Y17) as float32 grey images.

    The bundled PNGs are stored as RGB, so they are read through ``io.read_image`` (luminance).
    """
    from .. import data

    return data.itk_brainweb_pair()


def itk_brainweb_truth(fixed: sitk.Image, nominal: bool = False) -> sitk.Transform:
    """The true fixed->moving mapping of ITK's BrainT1SliceBorder20 / BrainProtonDensitySliceR10X13Y17 pair.

    Args:
        fixed: the fixed slice (its centre is the rotation centre).
        nominal: use the file name's translation (13, 17) about the image centre instead of the
            translation the pixels encode (see ``ITK_BRAINWEB_ENCODED_TRANSLATION``; 1.08 px apart).

    Returns:
        Euler2D(center = image centre, angle = +10 degrees, translation): ITK maps fixed-image points
        to moving-image points.
    """
    from ..data import ITK_BRAINWEB_TRUTH

    idx = [(s - 1) / 2.0 for s in fixed.GetSize()]
    center = fixed.TransformContinuousIndexToPhysicalPoint(idx)
    translation = ITK_BRAINWEB_TRUTH["translation"] if nominal else ITK_BRAINWEB_ENCODED_TRANSLATION
    return rigid_transform(center, [ITK_BRAINWEB_TRUTH["angle_deg"]], translation)


def itk_brainweb_scaled_pair(pixel_mm: float) -> tuple[sitk.Image, sitk.Image, sitk.Transform]:
    """The ITK BrainWeb pair with ``pixel_mm`` pixels (its whole geometry scaled, so the answer in pixels is
    the same at every size) and its true fixed->moving transform: the voxel-size and mask checks' case."""
    fixed, moving = itk_brainweb_pair()
    for image in (fixed, moving):
        image.SetSpacing((pixel_mm, pixel_mm))
    truth = sitk.Euler2DTransform(itk_brainweb_truth(fixed))
    truth.SetTranslation([t * pixel_mm for t in ITK_BRAINWEB_ENCODED_TRANSLATION])
    return fixed, moving, truth


@dataclasses.dataclass
class KnownCase:
    """A registration problem with a known answer.

    Attributes:
        fixed: fixed image (T1-like).
        moving: moving image (another contrast, misaligned by ``truth``).
        truth: true fixed->moving transform.
        mask: fixed-grid mask over which the error is measured (the brain).
        description: what was done.
        moving_mask: where the moving image holds what ``truth`` describes (moving grid), for cases
            with a region to exclude; None when all of it does.
    """

    fixed: sitk.Image
    moving: sitk.Image
    truth: sitk.Transform
    mask: sitk.Image
    description: str
    moving_mask: sitk.Image | None = None

    def error(self, recovered: sitk.Transform) -> dict[str, float]:
        """TRE of ``recovered`` against the truth over the mask (mm)."""
        return transform_error(recovered, self.truth, self.fixed, self.mask)

    def error_before(self) -> dict[str, float]:
        """TRE of the identity (the misalignment to recover)."""
        return self.error(sitk.Transform(self.fixed.GetDimension(), sitk.sitkIdentity))


def _center(image: sitk.Image) -> list[float]:
    return list(image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in image.GetSize()]))


def rigid_case(spacing_mm: float = 1.0, angles_deg: Sequence[float] = (8.0, 0.0, 0.0),
               translation: Sequence[float] = (3.0, 0.0, 4.0), contrast: str = "t2", seed: int = 0,
               shape: tuple[int, int, int] | None = (160, 192, 192), affine_scale: Sequence[float] | None = None,
               tissues: dict[str, sitk.Image] | None = None) -> KnownCase:
    """MNI152 T1 (fixed) vs a synthetic contrast moved by a known rigid (or affine) transform.

    The defaults are the reference benchmark pair (README, REFERENCE): 160x192x192 at 1 mm,
    8 degrees about the left-right axis and (3, 0, 4) mm.

    Args:
        spacing_mm: voxel size (2-3 mm for quick tests).
        angles_deg: rotation about x (left-right), y, z, about the image centre.
        translation: translation in mm.
        contrast: synthetic contrast of the moving image ("t2", "pd", "flair", "ct", "pet").
        seed: noise / bias-field seed.
        shape: crop of the template at 1 mm (see ``data.mni152``).
        affine_scale: optional per-axis scaling added to the truth (an affine case).
        tissues: a ``data.mni152`` dict to reuse (saves reloading).

    Returns:
        KnownCase; the moving image is the contrast resampled through the inverse truth, so
        registering it to the fixed image should recover ``truth``.
    """
    from .. import data

    tissues = tissues or data.mni152(spacing_mm=spacing_mm, shape=shape)
    fixed = tissues["t1"]
    other = data.synthetic_contrast(tissues, contrast, seed=seed)
    truth: sitk.Transform = rigid_transform(_center(fixed), angles_deg, translation)
    desc = f"rotation {list(angles_deg)} deg, translation {list(translation)} mm"
    if affine_scale is not None:
        aff = sitk.AffineTransform(3)
        aff.SetCenter(_center(fixed))
        aff.SetMatrix((np.array(truth.GetMatrix()).reshape(3, 3) @ np.diag(affine_scale)).ravel().tolist())
        aff.SetTranslation(truth.GetTranslation())
        truth = aff
        desc += f", scale {list(affine_scale)}"
    # moving(y) = other(truth^-1(y)) so that moving(truth(x)) = other(x), aligned with fixed(x)
    moving = sitk.Resample(other, other, truth.GetInverse(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return KnownCase(fixed=fixed, moving=moving, truth=truth, mask=tissues["brain_mask"],
                     description=f"MNI152 T1 vs synthetic {contrast.upper()} moved by {desc}")


def bspline_case(spacing_mm: float = 2.0, magnitude_mm: float = 5.0, mesh: int = 3, contrast: str = "t2",
                 seed: int = 0, shape: tuple[int, int, int] | None = (160, 192, 192),
                 tissues: dict[str, sitk.Image] | None = None) -> KnownCase:
    """A known smooth B-spline warp of mean magnitude ``magnitude_mm`` over the brain.

    The fixed image is the T1 warped by the truth (fixed(x) = T1(truth(x))) and the moving
    image the unwarped synthetic contrast, so ``truth`` is exactly the fixed->moving mapping
    (no inverse of a deformable transform is needed).
    """
    from .. import data

    tissues = tissues or data.mni152(spacing_mm=spacing_mm, shape=shape)
    t1 = tissues["t1"]
    moving = data.synthetic_contrast(tissues, contrast, seed=seed)
    truth = sitk.BSplineTransformInitializer(t1, [mesh] * 3, order=3)
    rng = np.random.default_rng(seed)
    coeffs = rng.normal(0.0, 1.0, len(truth.GetParameters()))
    truth.SetParameters(coeffs.tolist())
    brain = tissues["brain_mask"]
    size = transform_error(truth, sitk.Transform(3, sitk.sitkIdentity), t1, brain)["mean"]
    truth.SetParameters((coeffs * magnitude_mm / size).tolist())
    fixed = sitk.Resample(t1, t1, truth, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    mask = sitk.Resample(brain, t1, truth, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return KnownCase(fixed=fixed, moving=moving, truth=truth, mask=mask,
                     description=f"MNI152 T1 warped by a smooth B-spline ({mesh}^3 grid, mean {magnitude_mm} mm) "
                                 f"vs synthetic {contrast.upper()}")


def slab_motion_case(spacing_mm: float = 3.0, contrast: str = "t2", slab_fraction: float = 0.4,
                     angles_deg: Sequence[float] = (6.0, 0.0, 0.0), translation: Sequence[float] = (4.0, -3.0, 3.0),
                     slab_angles_deg: Sequence[float] = (14.0, 0.0, 0.0),
                     slab_translation: Sequence[float] = (4.0, 9.0, 3.0), seed: int = 0,
                     shape: tuple[int, int, int] | None = (160, 192, 192),
                     tissues: dict[str, sitk.Image] | None = None) -> KnownCase:
    """A rigid case whose moving image has a slab that misleads: the head moved during the acquisition.

    The moving image is :func:`rigid_case`'s, except its last ``slab_fraction`` of slices (the top of
    the head on the template's grid), which show the head where a second rigid transform puts it (by
    default 8 degrees further about the left-right axis and 12 mm further along y at the centre), as
    slices acquired after the patient moved would. ``moving_mask`` covers the other slices; the error
    ``mask`` is the fixed brain that ``truth`` sends into them. A registration that weighs the slab is
    pulled between the two positions; one that excludes it (a moving mask) should recover ``truth``.
    """
    from .. import data

    if not 0.0 < float(slab_fraction) < 1.0:
        raise InputError(f"slab_fraction must lie strictly between 0 and 1 (got {slab_fraction}).",
                         "Give e.g. 0.4 for the top 40% of the slices.")
    tissues = tissues or data.mni152(spacing_mm=spacing_mm, shape=shape)
    case = rigid_case(spacing_mm=spacing_mm, angles_deg=angles_deg, translation=translation, contrast=contrast,
                      seed=seed, tissues=tissues)
    other = data.synthetic_contrast(tissues, contrast, seed=seed)
    slab_truth = rigid_transform(_center(case.fixed), slab_angles_deg, slab_translation)
    slab = sitk.GetArrayFromImage(sitk.Resample(other, other, slab_truth.GetInverse(), sitk.sitkLinear, 0.0,
                                                sitk.sitkFloat32))
    pixels = sitk.GetArrayFromImage(case.moving)
    cut = int(round(pixels.shape[0] * (1.0 - float(slab_fraction))))
    pixels[cut:] = slab[cut:]
    moving = sitk.GetImageFromArray(pixels)
    moving.CopyInformation(case.moving)
    kept = np.zeros(pixels.shape, np.uint8)
    kept[:cut] = 1
    moving_mask = sitk.GetImageFromArray(kept)
    moving_mask.CopyInformation(case.moving)
    # fixed voxels x whose true moving point truth(x) lies in the kept slices, inside the brain
    reached = sitk.Resample(moving_mask, case.fixed, case.truth, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    mask = sitk.And(reached, case.mask)
    return KnownCase(fixed=case.fixed, moving=moving, truth=case.truth, mask=mask, moving_mask=moving_mask,
                     description=f"{case.description}; its top {100 * float(slab_fraction):.0f}% of slices show "
                                 f"the head moved by rotation {list(slab_angles_deg)} deg, translation "
                                 f"{list(slab_translation)} mm instead (outside moving_mask)")


def itk_brainweb_band_case(band_rows: int = 100, band_angle_deg: float = 12.0,
                           band_translation: Sequence[float] = (0.0, 10.0)) -> KnownCase:
    """ITK's 2D T1/PD pair (:func:`itk_brainweb_pair`) whose moving slice has a band that misleads.

    The moving slice's first ``band_rows`` rows (the top of the head) show the head turned
    ``band_angle_deg`` further and moved by ``band_translation`` pixels, about the image centre;
    ``moving_mask`` covers the other rows, and the error ``mask`` is the fixed head (T1 > 30) that the
    truth (:func:`itk_brainweb_truth`) sends into them.
    """
    fixed, moving = itk_brainweb_pair()
    truth = itk_brainweb_truth(fixed)
    further = sitk.Resample(moving, moving, rigid_transform(_center(fixed), [band_angle_deg], band_translation),
                            sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    pixels = sitk.GetArrayFromImage(moving)
    pixels[:band_rows] = sitk.GetArrayFromImage(further)[:band_rows]
    banded = sitk.GetImageFromArray(pixels)
    banded.CopyInformation(moving)
    kept = np.zeros(pixels.shape, np.uint8)
    kept[band_rows:] = 1
    moving_mask = sitk.GetImageFromArray(kept)
    moving_mask.CopyInformation(moving)
    mask = sitk.And(sitk.Resample(moving_mask, fixed, truth, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8),
                    sitk.Cast(fixed > 30, sitk.sitkUInt8))
    return KnownCase(fixed=fixed, moving=banded, truth=truth, mask=mask, moving_mask=moving_mask,
                     description=f"ITK BrainWeb T1 vs PD (10 degrees); the PD's first {band_rows} rows turned "
                                 f"{band_angle_deg} degrees and moved {list(band_translation)} px further "
                                 "(outside moving_mask)")
