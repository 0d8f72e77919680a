"""The rotation search initializer (``initializer="search"``): start beyond the capture range.

A rigid stage started from aligned centres recovers rotations up to about 30 degrees (README,
"Capture range"); a patient scanned prone vs supine, or a header 90 degrees off, is far outside it.
This initializer does what ANTs' ``antsAI`` and SimpleITK's ``ImageRegistrationMethodExhaustive``
example do:

1. align the centres of mass (as ``initializer="moments"``: ``sitk_backend.centre_of_mass``, an offset
   background such as a CT's air weighing nothing);
2. on one coarse, smoothed level of both images (about ``SEARCH_VOXELS`` fixed voxels) evaluate the
   first stage's metric (Mattes MI with at most 32 bins by default) over a grid of rotations about
   the fixed centre of mass: in 3D Euler angles in steps of 45 degrees about each axis over
   +-180 degrees (duplicate rotations dropped: 208), in 2D the in-plane angle in steps of 15 degrees,
   and for a 3D slab (:func:`slab_axis`: a few slices, thick or thin) the angle about its thin axis in
   steps of 15 degrees (24);
3. run a short rigid optimisation on that level from the ``SEARCH_REFINE`` best candidates (a grid
   point can lie up to about 39 degrees from the truth, near the edge of the capture range) and
   hand the best result to the first stage as its starting transform, in 3D as Euler angles in
   whichever of ITK's two angle orders keeps it at least 45 degrees from that order's gimbal lock
   (the stage optimises the angles: near the lock it stopped 1-3 mm off).

The metric uses every voxel of the coarse level (no random sampling), so the search is the same
from run to run; masks restrict it as they restrict the stages. On the 3 mm and the 1 mm MNI head it
takes about 1.2-1.7 s (README, "Rotation search").
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..errors import itk_guard
from ..progress import ProgressCallback, report, signals_stop
from .parameters import StageParameters

__all__ = ["search_rotation", "rotation_candidates", "slab_axis", "SEARCH_STEP_DEG", "SEARCH_VOXELS", "SEARCH_REFINE",
           "SLAB_EXTENT_RATIO"]

#: Rotation grid step (degrees) per image dimension.
SEARCH_STEP_DEG = {2: 15.0, 3: 45.0}
#: Fixed-image voxels of the coarse search level (a 1 mm head becomes about 8 mm voxels).
SEARCH_VOXELS = 20_000
#: Best grid candidates refined by a short optimisation (a first trial on 20 random 3D rotations of the
#: 3 mm MNI head left one far off with 5, none with 8; README, "Rotation search": random rotations).
SEARCH_REFINE = 8
#: Iterations of each refinement (coarse level only: it needs to come close, not to converge).
SEARCH_REFINE_ITERATIONS = 50
#: Histogram bins of Mattes MI at the coarse level (20 000 voxels fill 50 bins squared thinly).
SEARCH_BINS = 32
#: A 3D image whose shortest physical extent is below this share of the next shortest is a slab: the
#: search turns it about its thin axis only (see :func:`slab_axis`). A head at 1-3 mm (160 x 192 x 192 mm:
#: 0.83) or a 512 x 512 x 200 CT at 0.5 x 0.5 x 1 mm (0.78) is not one; 30 slices of 5 mm across 256 mm
#: (0.59) are.
SLAB_EXTENT_RATIO = 2.0 / 3.0


@functools.lru_cache(maxsize=4)
def _candidate_matrices(dim: int, step_deg: float) -> tuple[np.ndarray, ...]:
    if dim == 2:
        angles = np.radians(np.arange(0.0, 360.0, step_deg))  # the identity first, as in 3D
        return tuple(np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) for a in angles)
    # the identity first, so that a tie keeps the moments start
    xs = np.arange(0.0, 360.0, step_deg)
    ys = np.arange(-90.0, 90.0 + 1e-9, step_deg)
    kept: list[np.ndarray] = []
    for ax in xs:
        for ay in sorted(ys, key=abs):
            for az in xs:
                tx = sitk.Euler3DTransform()
                tx.SetRotation(*[math.radians(a) for a in (ax, ay, az)])
                m = np.array(tx.GetMatrix()).reshape(3, 3)
                # Euler angles repeat rotations (ay = +-90 degrees is gimbal lock): drop any within
                # a third of a step of one already kept
                if kept:
                    cos = (np.einsum("kij,ij->k", np.array(kept), m) - 1.0) / 2.0
                    if np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))).min() < step_deg / 3.0:
                        continue
                kept.append(m)
    return tuple(kept)


@functools.lru_cache(maxsize=8)
def _in_plane_matrices(axis: tuple[float, float, float], step_deg: float) -> tuple[np.ndarray, ...]:
    """Rotations about the unit vector ``axis`` in steps of ``step_deg`` over 360 degrees, the identity first."""
    k = np.array(axis, float)
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return tuple(np.eye(3) + math.sin(a) * cross + (1.0 - math.cos(a)) * (cross @ cross)  # Rodrigues
                 for a in np.radians(np.arange(0.0, 360.0, step_deg)))


def slab_axis(image: sitk.Image) -> np.ndarray | None:
    """The physical (LPS) unit direction of a 3D slab's thin axis, or None for a 2D image or a volume.

    A slab: the shortest physical extent (size x spacing) is below ``SLAB_EXTENT_RATIO`` of the next
    shortest, e.g. 6-24 axial slices of 1 mm across a 160 x 192 mm head, or 20-30 slices of 5 mm across
    256 mm.
    """
    if image.GetDimension() != 3:
        return None
    extent = np.array(image.GetSpacing()) * np.array(image.GetSize())
    order = np.argsort(extent, kind="stable")
    if extent[order[0]] >= SLAB_EXTENT_RATIO * extent[order[1]]:
        return None
    return np.array(image.GetDirection()).reshape(3, 3)[:, order[0]]


def rotation_candidates(dim: int, step_deg: float | None = None) -> list[np.ndarray]:
    """The rotation matrices the search tries (the identity first).

    Args:
        dim: 2 (the in-plane angle over +-180 degrees) or 3 (Euler angles about x, y, z).
        step_deg: grid step; default ``SEARCH_STEP_DEG[dim]``.
    """
    return [m.copy() for m in _candidate_matrices(int(dim), float(step_deg or SEARCH_STEP_DEG[dim]))]


def _coarse(image: sitk.Image, coarse_mm: float, mask: sitk.Image | None) -> tuple[sitk.Image, sitk.Image | None]:
    """``image`` block-averaged to about ``coarse_mm`` voxels and smoothed by one such voxel; its mask shrunk alike."""
    factors = [max(1, min(int(round(coarse_mm / sp)), size // 4))
               for sp, size in zip(image.GetSpacing(), image.GetSize())]
    small = sitk.BinShrink(image, factors) if max(factors) > 1 else image
    small = sitk.DiscreteGaussian(small, coarse_mm * coarse_mm, 32, 0.01, True)
    if mask is not None:
        # a coarse voxel counts when any of its voxels is in the mask (a thin mask must not vanish)
        shrunk = sitk.BinShrink(sitk.Cast(mask != 0, sitk.sitkFloat32), factors) if max(factors) > 1 \
            else sitk.Cast(mask != 0, sitk.sitkFloat32)
        mask = sitk.Cast(shrunk > 0, sitk.sitkUInt8)
    return small, mask


def _method(stage: StageParameters, fixed_mask: sitk.Image | None,
            moving_mask: sitk.Image | None) -> sitk.ImageRegistrationMethod:
    """The stage's metric as the stages set it up, with at most ``SEARCH_BINS`` bins and every voxel."""
    import dataclasses

    from .sitk_backend import _configure_metric

    method = sitk.ImageRegistrationMethod()
    # every coarse voxel: no random sample set, so the search does not depend on a seed
    coarse = dataclasses.replace(stage, histogram_bins=min(stage.effective_histogram_bins(), SEARCH_BINS),
                                 sampling_strategy="none")
    _configure_metric(method, coarse, None, fixed_mask, moving_mask)
    return method


def search_rotation(fixed: sitk.Image, moving: sitk.Image, stage: StageParameters, *,
                    fixed_mask: sitk.Image | None = None, moving_mask: sitk.Image | None = None,
                    progress: ProgressCallback | None = None, step_deg: float | None = None,
                    refine: int = SEARCH_REFINE) -> tuple[sitk.Transform, dict[str, Any]]:
    """The best starting rigid transform over a grid of rotations about the centres of mass.

    Args:
        fixed, moving: the float images of the registration.
        stage: the first stage (its metric and bins are used; the result has its transform type:
            Euler for "rigid", Affine for "affine").
        fixed_mask, moving_mask: metric regions, as for the stages.
        progress: ``progress(fraction, message)`` over the search; returning False cancels.
        step_deg: rotation grid step (default ``SEARCH_STEP_DEG``).
        refine: how many of the best grid candidates get a short optimisation.

    Returns:
        (starting transform, summary dict for the result: candidates, refined, best rotation angle
        from the moments start in degrees, coarse voxel size in mm, the slab's thin axis (LPS unit
        vector; None for a volume or 2D), metric value, seconds).

    Raises:
        InputError: the moments initializer fails (an empty image).
        OperationCancelled: the progress callback asked to stop.
    """
    t0 = time.perf_counter()
    dim = fixed.GetDimension()
    euler = sitk.Euler3DTransform() if dim == 3 else sitk.Euler2DTransform()
    from .sitk_backend import moments_start

    start = moments_start(fixed, moving, euler, fixed_mask, moving_mask)
    extent = np.prod([sp * sz for sp, sz in zip(fixed.GetSpacing(), fixed.GetSize())])
    coarse_mm = max(min(fixed.GetSpacing()), float((extent / SEARCH_VOXELS) ** (1.0 / dim)))
    with itk_guard("preparing the coarse level of the rotation search"):
        fixed_c, fixed_mask_c = _coarse(fixed, coarse_mm, fixed_mask)
        moving_c, moving_mask_c = _coarse(moving, coarse_mm, moving_mask)

    # a slab (either image) is turned about its thin axis only: out of its plane a few slices overlap the
    # other image in a narrow band, whose mutual information scored above the true pose (6-24 slices of
    # 1 mm, 8 of 5 mm: the search started the stage 70-87 mm off; README, "Thin slabs")
    thin = slab_axis(fixed)
    if thin is None:
        thin = slab_axis(moving)
    if thin is None:
        candidates = _candidate_matrices(dim, float(step_deg or SEARCH_STEP_DEG[dim]))
    else:
        candidates = _in_plane_matrices(tuple(float(v) for v in thin), float(step_deg or SEARCH_STEP_DEG[2]))
    n = len(candidates)
    evaluate = _method(stage, fixed_mask_c, moving_mask_c)
    evaluate.MetricUseFixedImageGradientFilterOff()
    evaluate.MetricUseMovingImageGradientFilterOff()
    scored: list[tuple[float, int]] = []
    for k, matrix in enumerate(candidates):
        if k % 16 == 0:
            report(progress, 0.7 * k / n, f"rotation search: {k}/{n} rotations")
        tx = type(euler)(start)
        tx.SetMatrix(matrix.ravel().tolist())
        evaluate.SetInitialTransform(tx)
        try:
            value = float(evaluate.MetricEvaluate(fixed_c, moving_c))
        except RuntimeError:  # too few points map inside the moving image at this rotation
            value = math.inf
        if math.isfinite(value):
            scored.append((value, k))
    # stable sort: among equal values the earlier candidate (the identity first) wins
    scored.sort(key=lambda pair: pair[0])
    best: tuple[float, sitk.Transform] | None = None
    picks = scored[: max(1, int(refine))]
    for j, (_, k) in enumerate(picks):
        report(progress, 0.7 + 0.3 * j / len(picks), f"rotation search: refining candidate {j + 1}/{len(picks)}")
        tx = type(euler)(start)
        tx.SetMatrix(candidates[k].ravel().tolist())
        value = _refine(tx, fixed_c, moving_c, stage, fixed_mask_c, moving_mask_c, coarse_mm, progress,
                        0.7 + 0.3 * j / len(picks), f"rotation search: refining candidate {j + 1}/{len(picks)}")
        if math.isfinite(value) and (best is None or value < best[0]):
            best = (value, tx)
    if best is None:  # no rotation (or refinement) kept the images overlapping: the moments start, as "moments" gives
        best = (math.nan, start)
    report(progress, 1.0, "rotation search done")
    from .accuracy import rotation_angle_deg

    summary = {"name": "search", "candidates": n, "refined": len(picks), "coarse_voxel_mm": coarse_mm,
               "slab_axis": None if thin is None else [float(v) for v in thin],
               "rotation_deg": abs(rotation_angle_deg(np.array(best[1].GetMatrix()).reshape(dim, dim))),
               "metric": best[0] if math.isfinite(best[0]) else None, "seconds": time.perf_counter() - t0}
    return _as_stage_type(_away_from_gimbal_lock(best[1]), stage), summary


def _refine(tx: sitk.Transform, fixed: sitk.Image, moving: sitk.Image, stage: StageParameters,
            fixed_mask: sitk.Image | None, moving_mask: sitk.Image | None, coarse_mm: float,
            progress: ProgressCallback | None, fraction: float, message: str) -> float:
    """Optimise ``tx`` in place on the coarse level for a few iterations; its final metric value.

    The angles are optimised as they are, also near their gimbal lock: optimising a versor instead
    (no lock) was tried and did worse (3 mm head, 160 random rotations: a 170-degree rotation then
    picked a wrong candidate and ended 90 mm off); what the misses needed was the stage's start
    handed over away from the lock (``_away_from_gimbal_lock``).
    """
    method = _method(stage, fixed_mask, moving_mask)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0 * coarse_mm, minStep=0.01 * coarse_mm, numberOfIterations=SEARCH_REFINE_ITERATIONS,
        relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6, estimateLearningRate=method.Never)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetInitialTransform(tx, inPlace=True)
    from .sitk_backend import raise_if_stopped, report_or_stop

    state: dict[str, Any] = {"cancelled": False, "error": None}
    if progress is not None:
        method.AddCommand(sitk.sitkIterationEvent, lambda: report_or_stop(method, state, progress, fraction, message))
    try:
        with signals_stop(method.StopRegistration):  # Ctrl-C: stop at the next iteration, then exit 130
            method.Execute(fixed, moving)
    except RuntimeError:  # drifted out of the moving image: this candidate loses
        return math.inf
    finally:
        method.RemoveAllCommands()
    raise_if_stopped(state)
    # the metric at the final parameters (GetMetricValue is that of the last iteration's start)
    score = _method(stage, fixed_mask, moving_mask)
    score.SetInitialTransform(tx)
    try:
        return float(score.MetricEvaluate(fixed, moving))
    except RuntimeError:
        return math.inf


def _away_from_gimbal_lock(tx: sitk.Transform) -> sitk.Transform:
    """A 3D Euler ``tx`` in whichever of ITK's two angle orders keeps its middle angle within 45 degrees.

    A rigid first stage optimises the Euler angles of the transform it is handed. ITK's default order
    (z, x, y) locks at x = +-90 degrees; near it (x beyond about 65 degrees) the stage crawls and stops
    1-2 mm off from a start the search brought within 3 mm. The other order (z, y, x:
    ``ComputeZYX``) locks at y = +-90 degrees, and a rotation cannot be near both (the sines of the
    two middle angles are two entries of one unit row of the matrix), so one of them is always at
    least 45 degrees from its lock. The rotation is unchanged; the flag travels in the transform's
    fixed parameters (and .tfm files).
    """
    if not isinstance(tx, sitk.Euler3DTransform) or tx.GetComputeZYX():
        return tx
    matrix = np.array(tx.GetMatrix()).reshape(3, 3)
    # ZXY: x = asin(R[2, 1]); ZYX: y = -asin(R[2, 0])
    if abs(matrix[2, 1]) <= math.sqrt(0.5) or abs(matrix[2, 0]) >= abs(matrix[2, 1]):
        return tx  # the default order is at least 45 degrees from its lock: keep it
    flipped = sitk.Euler3DTransform()
    flipped.SetComputeZYX(True)
    flipped.SetCenter(tx.GetCenter())
    flipped.SetMatrix(matrix.ravel().tolist())
    flipped.SetTranslation(tx.GetTranslation())
    return flipped


def _as_stage_type(tx: sitk.Transform, stage: StageParameters) -> sitk.Transform:
    """``tx`` (an Euler transform) as the transform type ``stage`` optimises."""
    if stage.name != "affine":
        return tx
    dim = tx.GetDimension()
    affine = sitk.AffineTransform(dim)
    affine.SetCenter(tx.GetCenter())
    affine.SetMatrix(tx.GetMatrix())
    affine.SetTranslation(tx.GetTranslation())
    return affine
