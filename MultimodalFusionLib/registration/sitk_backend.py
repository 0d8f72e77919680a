"""SimpleITK registration: rigid, affine and B-spline stages with mutual information.

The recipe follows SimpleITK's multimodal examples and was checked on MNI152 T1 vs a
synthetic T2-like image (README benchmarks): Mattes MI (50 bins), random sampling of a few
percent of the voxels with a fixed seed, RegularStepGradientDescent with physical-shift
optimizer scales, shrink 4-2-1 with smoothing, CenteredTransformInitializer. B-spline uses
LBFGSB without scales on one control grid.

Stages are chained: each optimises a new transform on top of the previous result (passed to
ITK as the fixed "moving initial transform"); linear chains are flattened into one linear
transform, a B-spline stage gives a composite (linear then B-spline).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any, Callable, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, OperationCancelled, RegistrationError, itk_guard, itk_reason
from ..progress import ProgressCallback, report, scaled, signals_stop
from ..threads import thread_limit
from ..validation import (
    MIN_CONTENT_VOXELS,
    check_deformable_size,
    check_masks_meet,
    masks_intersection,
    small_mask_warnings,
    small_overlap_warnings,
    start_overlap,
)
from .parameters import (
    DEFAULT_LEARNING_RATE,
    ITK_UINT_MAX,
    RegistrationParameters,
    StageParameters,
    check_seed,
    step_scale,
)
from .result import RegistrationResult, StageResult, iterations_per_level

__all__ = ["register_sitk", "linear_parts", "compose", "evaluate_metric", "no_overlap_error", "masks_metric_error",
           "extent_clause", "check_fixed_not_within_a_voxel"]


# ----------------------------------------------------------------------------- transforms
def linear_parts(transform: sitk.Transform, dim: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(matrix, offset) with ``T(x) = M x + offset`` for a linear transform, else None."""
    if not _is_linear(transform):
        return None
    origin = np.zeros(dim)
    offset = np.array(transform.TransformPoint(origin.tolist()))
    matrix = np.zeros((dim, dim))
    for i in range(dim):
        e = np.zeros(dim)
        e[i] = 1.0
        # unit steps at a scale of 100 mm keep round-off small for transforms of image scale
        matrix[:, i] = (np.array(transform.TransformPoint((100.0 * e).tolist())) - offset) / 100.0
    return matrix, offset


def _is_linear(tx: sitk.Transform) -> bool:
    if isinstance(tx, sitk.CompositeTransform):
        return all(_is_linear(tx.GetNthTransform(i)) for i in range(tx.GetNumberOfTransforms()))
    return tx.IsLinear()


def _matrix_transform(matrix: np.ndarray, offset: np.ndarray, center: np.ndarray, rigid: bool) -> sitk.Transform:
    """Euler (when ``rigid`` and the matrix is a rotation) or Affine transform for x -> M x + offset."""
    dim = len(offset)
    translation = offset + matrix @ center - center
    if rigid and np.allclose(matrix @ matrix.T, np.eye(dim), atol=1e-6) and np.linalg.det(matrix) > 0:
        tx = sitk.Euler3DTransform() if dim == 3 else sitk.Euler2DTransform()
        tx.SetCenter(center.tolist())
        tx.SetMatrix(matrix.ravel().tolist(), 1e-6)
        tx.SetTranslation(translation.tolist())
        return tx
    tx = sitk.AffineTransform(dim)
    tx.SetCenter(center.tolist())
    tx.SetMatrix(matrix.ravel().tolist())
    tx.SetTranslation(translation.tolist())
    return tx


def compose(outer: sitk.Transform | None, inner: sitk.Transform, dim: int, center: np.ndarray) -> sitk.Transform:
    """The transform x -> outer(inner(x)), flattened to one linear transform when both are linear."""
    if outer is None:
        return inner
    a = linear_parts(outer, dim)
    b = linear_parts(inner, dim)
    if a is not None and b is not None:
        matrix = a[0] @ b[0]
        offset = a[0] @ b[1] + a[1]
        rigid = all(_is_rigid_type(t) for t in (outer, inner))
        return _matrix_transform(matrix, offset, center, rigid)
    composite = sitk.CompositeTransform(dim)
    composite.AddTransform(outer)   # ITK applies the last added transform first
    composite.AddTransform(inner)
    # a composite inside a composite cannot be written to an .h5 file ("Composite Transform can only be
    # 1st transform"): one level, the parts in the same order
    composite.FlattenTransform()
    return composite


def _is_rigid_type(tx: sitk.Transform) -> bool:
    name = tx.GetName()
    return name in ("Euler2DTransform", "Euler3DTransform", "VersorRigid3DTransform", "TranslationTransform",
                    "IdentityTransform") or (
        isinstance(tx, sitk.CompositeTransform)
        and all(_is_rigid_type(tx.GetNthTransform(i)) for i in range(tx.GetNumberOfTransforms())))


def _image_center(image: sitk.Image) -> np.ndarray:
    idx = [(s - 1) / 2.0 for s in image.GetSize()]
    return np.array(image.TransformContinuousIndexToPhysicalPoint(idx))


#: Percentile of an image's voxel values taken as its background level when some are negative.
BACKGROUND_PERCENTILE = 25.0
#: At most about this many voxels (an even stride through the volume) estimate that percentile.
BACKGROUND_SAMPLES = 1_000_000


def centre_of_mass(image: sitk.Image, what: str = "image", mask: sitk.Image | None = None) -> np.ndarray:
    """The centre of mass of the object in ``image`` (inside ``mask``, when given), in physical (LPS)
    coordinates.

    The one rule of the ``moments`` initializer on both backends and of the rotation search's start.
    The weights are the voxel values above the image's background level: ``max(value - level, 0)``,
    with ``level = min(0, 25th percentile of the values)``. An image with no negative value (MR
    magnitude, PET) has level 0: its values are the weights as they are, the centre ITK's moments give
    (bit-identical to the signed rule used before). An image with an offset background (CT: air at
    -1000 HU) weighs its air near zero instead of pulling the centre towards it: ITK's moments use
    the signed values, and on the 3 mm MNI head a synthetic CT's centre came 38.7 mm from the
    object's, a T2 minus 1000 19.0 mm (README, "Centre of mass"). The percentile rather than the
    minimum: the minimum lies 3-5 sigma of the noise below the background, which it weighs by that much
    a voxel: 3.4-4.6 mm off on the CT, T2 and PET, 15.4 mm with 90 mm more air beside the CT; the
    percentile 0.4-0.5 and 2.8 mm (``benchmarks/centre_of_mass.py``). Values below the level (noise, a
    padding floor) weigh nothing; padding covering more than a quarter of the image (-3024 outside a
    circular field of view) sets the level itself and still pulls the centre. A registration mask (on
    the image's grid) limits the weights to its voxels, as elastix's centre-of-gravity initialisation
    uses its masks: a head mask leaves out a CT's couch or that padding.

    Computed here rather than by ITK's ``CenteredTransformInitializer(MOMENTS)``: ITK's moments
    calculator sums over the image's *requested* region, which a filter run on the same image
    earlier in the process may have narrowed (``RegionOfInterest``, a ``BinShrink`` of an odd size):
    after ``RegionOfInterest(fixed, [20, 20], [100, 100])`` the moments start of the 2D BrainWeb
    pair moved by 21 mm, so the same call gave another registration depending on what ran before.
    The sums are per axis.

    Raises:
        InputError: a vector image, or the weights sum to zero (nothing above the background) or are
            not finite: no centre of mass.
    """
    arr = sitk.GetArrayViewFromImage(image)
    if image.GetNumberOfComponentsPerPixel() > 1:
        raise InputError(f"The {what} has {image.GetNumberOfComponentsPerPixel()} components per pixel; its "
                         "centre of mass needs a grey image.", "Convert it to grey first.")
    weights = arr
    if arr.size and float(arr.min()) < 0.0:
        flat = arr.reshape(-1)
        sample = flat[:: max(1, flat.size // BACKGROUND_SAMPLES)]
        level = min(0.0, float(np.percentile(sample, BACKGROUND_PERCENTILE)))
        weights = np.maximum(arr - level, 0.0)
    if mask is not None:  # the level is the whole image's background; the weights are the mask's voxels
        weights = np.where(sitk.GetArrayViewFromImage(mask) != 0, weights, 0)
    total = float(weights.sum(dtype=np.float64))
    if total == 0.0 or not np.isfinite(total):
        inside = " inside its mask" if mask is not None else ""
        raise InputError(f"The {what} has no centre of mass (its voxel values above the background level{inside} "
                         f"sum to {total:g}).",
                         "Use the 'geometry' initializer (CLI --initializer geometry; Python "
                         "initializer='geometry'): moments needs a non-empty foreground.")
    dim = image.GetDimension()
    index = []
    for axis in range(dim):  # numpy axis (dim - 1 - axis) is ITK index axis ``axis``
        others = tuple(a for a in range(dim) if a != dim - 1 - axis)
        profile = weights.sum(axis=others, dtype=np.float64)
        index.append(float(np.dot(profile, np.arange(profile.size, dtype=np.float64)) / total))
    return np.array(image.TransformContinuousIndexToPhysicalPoint(index))


def moments_start(fixed: sitk.Image, moving: sitk.Image, base: sitk.Transform,
                  fixed_mask: sitk.Image | None = None, moving_mask: sitk.Image | None = None) -> sitk.Transform:
    """``base`` (Euler or affine) centred on the fixed centre of mass and shifted onto the moving one
    (:func:`centre_of_mass`, each inside its registration mask when given): ITK's
    ``CenteredTransformInitializer(MOMENTS)`` with an offset background weighing nothing."""
    centre = centre_of_mass(fixed, "fixed image", fixed_mask)
    shift = centre_of_mass(moving, "moving image", moving_mask) - centre
    out = type(base)(base)
    out.SetCenter(centre.tolist())
    out.SetTranslation(shift.tolist())
    return out


# ----------------------------------------------------------------------------- set-up
# Fewest metric samples per level that land on the fixed image's content (signal_share: inside the mask and off
# its uniform background): 1% of a small (2D or coarse) image is too few for a stable joint histogram, so small
# levels are sampled more densely.
MIN_SAMPLES = 3000
# The lowest value, zero or the lowest value this share of the grid shares is a uniform background (off_background)
# where it fills at least this share of the grid
BACKGROUND_SHARE = 0.1
# ... give or take this share of the image's robust range (its 1st to 99th percentile): the ringing of a B-spline
# resampling or a smoothing leaves a background near, not at, one value
BACKGROUND_TOLERANCE = 1e-3
# The percentiles off_background needs are taken on every n-th voxel, about this many of them
_PERCENTILE_VOXELS = 1 << 20
EVAL_VOXELS = 250_000
GRADIENT_IMAGE_VOXELS = 1 << 20
# Images larger than this (256^3; a 512x512x200 CT is 52 M) get their coarse pyramid levels made by
# _reduced_level instead of ITK's full-resolution smoothing; smaller ones keep ITK's pyramid exactly.
REDUCED_PYRAMID_VOXELS = 1 << 24


def _share(flags: np.ndarray) -> float:
    """The share of ``flags`` (a mask's voxels) that are non-zero, at least one voxel's."""
    return max(float(np.count_nonzero(flags)) / flags.size, 1.0 / flags.size)


def signal_share(fixed: sitk.Image, fixed_mask: sitk.Image | None = None) -> float:
    """The share of ``fixed``'s grid that carries its content: voxels inside ``fixed_mask`` (if given) off its
    uniform background (:func:`off_background`: the voxels at or near the lowest value, zero or the lowest value
    ``BACKGROUND_SHARE`` of the grid shares, whichever fill more of it, where they fill at least that share). A
    skull-stripped MR (BraTS: the brain is 17% of the grid), a template on a zero background (MNI152: 32%) or a CT
    whose padding or air was set to one value has most of its grid at that value, or near it where a B-spline
    resampling's ringing, a smoothing or a bias correction left it (the 2 mm B-spline-resampled BraTS FLAIR: 75% at
    its value, a ringing 1.0 below it; the 3 mm MNI152: 56% within 0.001 of zero); an image with noise or
    structure everywhere has none (its few voxels at the lowest value are content, and the share is the mask's, or
    1). An image that is all one value (nothing to tell apart) and a mask on another grid are taken at the mask's
    share.

    It sets the floor of metric samples (:func:`_level_percentages`) and the optimizer's relaxation
    (:func:`regular_step_defaults`): both are about how noisy the sampled metric is, which follows the samples
    that see content, not the size of the grid."""
    values = sitk.GetArrayViewFromImage(fixed)
    if values.size == 0:
        return 1.0
    content = off_background(fixed)
    if fixed_mask is not None:
        mask = sitk.GetArrayViewFromImage(fixed_mask)
        if mask.shape != values.shape or content is None:
            return _share(mask)
        content &= mask != 0
    elif content is None:
        return 1.0
    return _share(content)


def off_background(image: sitk.Image) -> np.ndarray | None:
    """The voxels of ``image`` off its uniform background (bool array, numpy axis order), by :func:`signal_share`'s
    rule: the background is the voxels within ``BACKGROUND_TOLERANCE`` of the image's 1st-99th percentile span of
    its lowest value, of zero or of the lowest value that a ``BACKGROUND_SHARE`` of the grid shares (give or take
    that tolerance), whichever fills more of the grid, where that fills at least ``BACKGROUND_SHARE`` of it and not
    all of it and less than ``BACKGROUND_SHARE`` of the grid lies below it (a CT's water at 0 HU, its air below it,
    is no background: 54% of a water phantom's water had been); None where the image has no such background (noise
    or structure everywhere). The tolerance takes in
    the ringing a B-spline resampling or a smoothing leaves around a background (the 3 mm MNI152 template: 56% of
    the grid within 0.001 of zero, down to -0.35), the third value a background with an undershoot below it and
    not at zero (a z-scored MR); on an integer image of a span under 1000 (8-bit) the tolerance is under one step,
    so only its exact values count."""
    values = sitk.GetArrayViewFromImage(image)
    if values.size == 0:
        return None
    every = values.reshape(-1)
    # float64: the spans of an int16 CT padded with -32768 overflow int16. NaNs are refused before any backend
    ranked = np.sort(every[::max(1, every.size // _PERCENTILE_VOXELS)].astype(np.float64))
    last = ranked.size - 1
    # each end scaled before the difference: the span of values near float64's limits (+-1e308) overflows
    tolerance = (BACKGROUND_TOLERANCE * float(ranked[round(0.99 * last)])
                 - BACKGROUND_TOLERANCE * float(ranked[round(0.01 * last)]))
    # the lowest run of a BACKGROUND_SHARE of the ranked values within twice the tolerance, and its middle value
    run = max(1, int(np.ceil(BACKGROUND_SHARE * ranked.size)))
    with np.errstate(over="ignore"):  # a run wider than float64's range is infinitely wide: no background there
        dense = np.flatnonzero(ranked[run - 1:] - ranked[:ranked.size - run + 1] <= 2 * tolerance)
    candidates = {float(values.min()), 0.0}
    if dense.size:
        candidates.add(float(ranked[dense[0] + run // 2]))
    content = None
    flat_voxels = 0
    for candidate in candidates:
        # a background is the image's low end, with at most a ringing below it: a value with a background's share
        # of the grid below it is a tissue (a CT's water at 0 HU above its air), counted on the ranked voxels
        if np.searchsorted(ranked, candidate - tolerance) >= BACKGROUND_SHARE * ranked.size:
            continue
        if tolerance > 0:
            with np.errstate(over="ignore"):  # a bound past a float32 image's range compares as its infinity
                flat = values >= candidate - tolerance
                flat &= values <= candidate + tolerance
        else:
            flat = values == candidate
        count = int(np.count_nonzero(flat))
        if BACKGROUND_SHARE * values.size <= count < values.size and count > flat_voxels:
            content, flat_voxels = ~flat, count
    return content


def content_voxels(fixed: sitk.Image, fixed_mask: sitk.Image | None = None) -> int:
    """How many of ``fixed``'s voxels carry content (:func:`signal_share` of its size)."""
    return int(round(signal_share(fixed, fixed_mask) * fixed.GetNumberOfPixels()))


def _level_percentages(stage: StageParameters, fixed: sitk.Image | None,
                       shrink_factors: list[int] | None, fixed_mask: sitk.Image | None = None,
                       content: float | None = None) -> list[float]:
    """The fraction of each level's fixed grid ITK is asked to sample.

    ITK draws that fraction of the level's whole grid and then drops the points outside the fixed
    mask (``ImageRegistrationMethodv4::SetMetricSamplePoints``; ANTs does the same), so the counts
    (``number_of_samples``, ``max_samples``) are counts of points inside the mask:
    with a mask over a third of the grid they are divided by that third. Counted over the whole grid, a
    brain mask (32% of the 3 mm MNI grid) had left the B-spline stage's 4000 samples at about 1300 and
    every level of a rigid stage there at about 960, under the 3000-point floor. ``sampling_percentage``
    stays a share of the voxels (of those inside the mask, as in ITK and ANTs).

    The floor, ``MIN_SAMPLES``, counts the samples that land on the image's content (:func:`signal_share`: inside
    the mask and off a uniform background), because a sample where the fixed image is its flat background tells
    the histogram little: on a skull-stripped BraTS FLAIR (the brain 17% of the grid) the floor had left about
    500 samples in the brain at every level of a 3 mm rigid stage, which ended 0.50 mm (mean over the brain, seeds
    0-4) from the known answer; counted over the brain, 0.27 mm (at 1 mm 0.18 -> 0.08 mm, 2 mm 0.39 -> 0.31).
    ``content`` is that share of the full-resolution image (None: ``signal_share(fixed, fixed_mask)``): a level
    of the reduced pyramid (:func:`_reduced_level`) is block-averaged and smoothed, which spreads the content
    over its background, and lies on another grid than the full-size mask, so counted on it the floor had put
    about 760 of its 3000 samples on the content of a stripped 64^3 image with a box mask (1040 without the
    mask) where ITK's own pyramid puts 3000.
    """
    pct = float(stage.sampling_percentage)
    if fixed is None or shrink_factors is None:
        return [pct]
    inside = 1.0
    if fixed_mask is not None:
        mask = sitk.GetArrayViewFromImage(fixed_mask)
        inside = _share(mask)
    if content is None:
        content = signal_share(fixed, fixed_mask)
    out = []
    for f in shrink_factors:
        voxels = float(np.prod([max(1, s // int(f)) for s in fixed.GetSize()]))
        counted = voxels * inside  # the level's voxels whose samples ITK keeps
        if stage.number_of_samples:
            out.append(min(1.0, float(stage.number_of_samples) / counted))
        else:
            level_pct = max(pct, MIN_SAMPLES / (voxels * content))
            if stage.max_samples:
                level_pct = min(level_pct, float(stage.max_samples) / counted)
            out.append(min(1.0, level_pct))
    return out


def itk_seed(seed: int) -> int:
    """The ITK sampling seed for a user seed: ``seed + 1``, because ITK reads 0 as "seed from
    the wall clock" (``sitkWallClock``), which made ``seed=0`` silently non-reproducible."""
    return check_seed(seed) + 1  # 1..2^31 - 1: a larger one had been wrapped into this range


def _configure_metric(method: sitk.ImageRegistrationMethod, stage: StageParameters, seed: int | None,
                      fixed_mask: sitk.Image | None, moving_mask: sitk.Image | None,
                      fixed: sitk.Image | None = None, shrink_factors: list[int] | None = None,
                      content: float | None = None) -> list[float] | None:
    """Set the metric, its sampling and the masks; returns the sampling fraction of each level's grid ITK was
    given (None: every voxel). ``content``: the full-resolution fixed image's share of content
    (:func:`_level_percentages`)."""
    if stage.metric == "mattes_mi":
        method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=stage.effective_histogram_bins())
    elif stage.metric == "joint_histogram_mi":
        method.SetMetricAsJointHistogramMutualInformation(numberOfHistogramBins=stage.effective_histogram_bins(),
                                                          varianceForJointPDFSmoothing=1.5)
    elif stage.metric == "correlation":
        method.SetMetricAsCorrelation()
    else:
        method.SetMetricAsMeanSquares()
    pcts = _level_percentages(stage, fixed, shrink_factors, fixed_mask, content)
    every_voxel = stage.sampling_strategy == "none" or stage.sampling_percentage >= 1.0
    if every_voxel and stage.sampling_strategy != "none" and not stage.number_of_samples and min(pcts) < 1.0:
        # sampling_percentage 1.0 with a level above max_samples: capped as any other percentage (ITK's
        # NONE evaluated all 52 M voxels of a clinical CT every iteration); levels below the cap then
        # sample a fraction of 1.0
        every_voxel = False
    if every_voxel:
        method.SetMetricSamplingStrategy(method.NONE)
        pcts = None
    else:
        method.SetMetricSamplingStrategy(method.RANDOM if stage.sampling_strategy == "random" else method.REGULAR)
        if seed is None:
            method.SetMetricSamplingPercentagePerLevel(pcts)
        else:
            method.SetMetricSamplingPercentagePerLevel(pcts, itk_seed(seed))
    if fixed_mask is not None:
        method.SetMetricFixedMask(fixed_mask)
    if moving_mask is not None:
        method.SetMetricMovingMask(moving_mask)
    method.SetInterpolator(sitk.sitkLinear)
    return pcts


def evaluation_factors(fixed: sitk.Image) -> list[int]:
    """Per-axis steps of :func:`evaluate_metric`'s subgrid: at most ``EVAL_VOXELS`` voxels, spaced as
    evenly in millimetres as whole steps allow.

    The smallest whole ``k`` such that taking every ``round(k * s / s_i)``-th voxel along axis ``i``
    (``s`` the finest spacing, at least 1) leaves at most ``EVAL_VOXELS`` voxels. On an isotropic grid
    that is every k-th voxel along every axis, as it always was; on thick slices the slices are kept and
    only the fine axes thinned: a 256x256x20 stack of 5 mm slices had lost every second slice, and the
    before/after check then discarded a rigid stage that had reached 0.12-0.19 mm because the search's
    start, 0.9 mm off, scored better on half the slices.
    """
    size = fixed.GetSize()
    spacing = fixed.GetSpacing()
    finest = min(spacing)
    k = max(1, int(math.ceil((fixed.GetNumberOfPixels() / EVAL_VOXELS) ** (1.0 / fixed.GetDimension()) - 1e-9)))
    while True:
        factors = [min(n, max(1, int(round(k * finest / s)))) for n, s in zip(size, spacing)]
        if math.prod(n // f for n, f in zip(size, factors)) <= EVAL_VOXELS or factors == list(size):
            return factors
        k += 1


def evaluate_metric(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, stage: StageParameters,
                    seed: int | None = 0, fixed_mask: sitk.Image | None = None,
                    moving_mask: sitk.Image | None = None, every_voxel: bool = False) -> float:
    """The stage's metric at ``transform`` (lower is better), on a regular subgrid of the fixed image.

    ITK's MetricEvaluate ignores sampling settings and visits every fixed voxel (about 2 s for
    a 1 mm head), so the fixed image is subsampled to at most ``EVAL_VOXELS`` voxels by taking
    every k-th voxel, fewer along thick axes (:func:`evaluation_factors`; geometry kept, no smoothing). The same points are used at every
    transform, so two values are directly comparable. ``every_voxel``: on every fixed voxel instead (the
    masked start's near ties, see :func:`judge_unmasked_start`).
    """
    factors = [1] * fixed.GetDimension() if every_voxel else evaluation_factors(fixed)
    if max(factors) > 1:
        fixed = sitk.Shrink(fixed, factors)
        if fixed_mask is not None:
            fixed_mask = sitk.Shrink(fixed_mask, factors)
            if not sitk.GetArrayViewFromImage(fixed_mask).any():
                fixed_mask = None
    method = sitk.ImageRegistrationMethod()
    full = dataclasses.replace(stage, sampling_strategy="none")
    _configure_metric(method, full, seed, fixed_mask, moving_mask)
    # no gradient images: a metric value needs none, and filtering a 1 mm head costs seconds
    method.MetricUseFixedImageGradientFilterOff()
    method.MetricUseMovingImageGradientFilterOff()
    method.SetInitialTransform(sitk.Transform(transform))
    try:
        value = float(method.MetricEvaluate(fixed, moving))
    except RuntimeError:
        # ITK raises when too few samples map inside the moving image: worst possible value
        return math.inf
    # correlation and mean squares do not raise when no point is valid (none inside both masks, or inside
    # the moving image): they print "No valid points" to stderr and return the largest double, which a
    # stage then "kept" as its unchanged starting transform
    return math.inf if value >= _NO_VALID_POINTS else value


#: What ITK's correlation and mean squares metrics return when no sample point is valid.
_NO_VALID_POINTS = float(np.finfo(np.float64).max)


def _stage_transform(stage: StageParameters, fixed: sitk.Image, moving: sitk.Image,
                     start: sitk.Transform | None, initializer: str,
                     searched: sitk.Transform | None = None, fixed_mask: sitk.Image | None = None,
                     moving_mask: sitk.Image | None = None) -> sitk.Transform:
    """The transform the stage optimises, before optimisation.

    The first stage starts from the initializer (when ``start`` is None; for "search", from
    ``searched``, the rotation search's result); later stages start at identity on top of the
    previous result.
    """
    dim = fixed.GetDimension()
    center = _image_center(fixed)
    if stage.name in ("rigid", "affine"):
        base = sitk.Euler3DTransform() if dim == 3 else sitk.Euler2DTransform()
        if stage.name == "affine":
            base = sitk.AffineTransform(dim)
        if start is None and initializer == "search":
            assert searched is not None, "the rotation search runs before the first stage"
            return type(searched)(searched)
        if start is None and initializer == "moments":
            return moments_start(fixed, moving, base, fixed_mask, moving_mask)
        if start is None and initializer == "geometry":
            with itk_guard("initialising the transform (geometry)"):
                return sitk.CenteredTransformInitializer(fixed, moving, base,
                                                         sitk.CenteredTransformInitializerFilter.GEOMETRY)
        base.SetCenter(center.tolist())
        return base
    # B-spline: control grid over the fixed image domain
    with itk_guard("setting up the B-spline grid"):
        return sitk.BSplineTransformInitializer(fixed, _bspline_mesh(stage, fixed), order=3)


def _bspline_mesh(stage: StageParameters, fixed: sitk.Image) -> list[int]:
    """The control grid (cells per axis) of B-spline ``stage`` on ``fixed``.

    :func:`register_sitk` calls this for every B-spline stage before any stage runs: a grid of the
    wrong dimension or an image too small for it is refused up front, not after the linear stages ran.

    Raises:
        InputError: a 2D fixed image below 16 pixels along an axis, a mesh_size of the wrong length, or a
            grid of more control points than the fixed image has voxels.
    """
    check_deformable_size(fixed, "B-spline")
    dim = fixed.GetDimension()
    mesh = stage.mesh_size if isinstance(stage.mesh_size, (list, tuple)) else [stage.mesh_size] * dim
    if len(mesh) != dim:
        raise InputError(f"Stage '{stage.name}': mesh_size {list(mesh)} has {len(mesh)} entries but the images are "
                         f"{dim}D.", f"Give one number for every axis, or {dim} numbers (one per axis).")
    mesh = [int(m) for m in mesh]
    # a cubic B-spline has mesh + 3 control points per axis. More of them than voxels cannot be fitted, and a
    # large grid is worse than slow: mesh_size 1e9 on a 40x40 image killed the process inside ITK (a double
    # free), 100000 too under a 4 GB limit, and 300 ran 13.5 s in 3 GB for 3 iterations
    points = int(np.prod([m + 3 for m in mesh], dtype=object))
    if points > fixed.GetNumberOfPixels():
        raise InputError(f"Stage '{stage.name}': mesh_size {mesh} makes a grid of {points:,} control points, more "
                         f"than the {fixed.GetNumberOfPixels()} voxels of the fixed image {fixed.GetSize()}.",
                         "Use a coarser mesh: a cell should span several voxels (the default is 8 cells per axis).")
    return mesh


# Volumes with at least this many voxels of content (signal_share: inside the mask, off a uniform background) get
# the faster relaxation 0.5 (1 mm heads: about twice as fast at the same error); smaller or coarser volumes have few
# voxels per iteration and a noisier metric, and 0.5 stopped them early (a 4 mm phantom: 2.1 mm error with 0.5,
# 1.0 mm with 0.8). Counted over the whole grid, a 2 mm skull-stripped BraTS FLAIR (1.1 M voxels, 0.19 M of them
# brain) got 0.5 and ended 0.31 mm from the known answer (mean over the brain, seeds 0-4), 0.19 mm with 0.8.
FAST_RELAXATION_VOXELS = 1_000_000


def regular_step_defaults(stage: StageParameters, dim: int, voxels: int,
                          spacing: Sequence[float] | None = None) -> tuple[float, float, float]:
    """(learning_rate, min_step, relaxation_factor) a stage runs with: its own, or the defaults for a ``dim``-D
    fixed image of ``voxels`` voxels of content (:func:`signal_share` times its size) of ``spacing`` mm (see
    ``StageParameters``; None: steps as at 1 mm). The
    default steps are multiplied by :func:`~.parameters.step_scale` of the spacing (1 for voxels of 0.5-20 mm)."""
    scale = 1.0 if spacing is None else step_scale(spacing)
    large = dim == 3 and voxels >= FAST_RELAXATION_VOXELS
    learning_rate = float(stage.learning_rate if stage.learning_rate is not None
                          else DEFAULT_LEARNING_RATE.get(stage.name, DEFAULT_LEARNING_RATE["rigid"]) * scale)
    # B-spline stages keep 0.001 mm at any size (the default stage had given it explicitly)
    min_step = float(stage.min_step if stage.min_step is not None
                     else (1e-2 if large and stage.name != "bspline" else 1e-3) * scale)
    relaxation = float(stage.relaxation_factor if stage.relaxation_factor is not None else (0.5 if large else 0.8))
    return learning_rate, min_step, relaxation


def learning_rate_used(stage: StageParameters) -> bool:
    """Whether ITK steps by ``stage``'s ``learning_rate``: a regular_step stage's, and a B-spline stage's under
    gradient_descent_line_search (unit scales). Not a rigid or affine line search: with physical-shift scales ITK
    estimates its learning rate at every iteration (the largest step: the fixed image's smallest spacing), so the
    2D BrainWeb pair ran the same transform with learning_rate 0.001 and 100; nor lbfgsb, which has none."""
    return stage.optimizer == "regular_step" or (stage.optimizer == "gradient_descent_line_search"
                                                 and stage.name == "bspline")


def ignored_learning_rate_warning(stage: StageParameters, fixed: sitk.Image) -> str | None:
    """A warning for a ``learning_rate`` given to a stage that does not step by it (:func:`learning_rate_used`: a
    rigid or affine gradient_descent_line_search stage), or None (none given, or one ITK takes).

    ITK estimates that stage's learning rate at every iteration, so the value given changes nothing (the 2D
    BrainWeb pair ran the same transform with 0.001 and 100) and had been dropped without a word; the settings
    that leave it out (the defaults, every shipped preset) get no warning."""
    if stage.learning_rate is None or learning_rate_used(stage) or stage.optimizer != "gradient_descent_line_search":
        return None
    return (f"Stage '{stage.name}': learning_rate {stage.learning_rate:g} is not used: the "
            "gradient_descent_line_search optimizer of a rigid or affine stage estimates its step at every "
            f"iteration (its largest: the fixed image's smallest voxel size, {min(fixed.GetSpacing()):g} mm). "
            "For a step of your choosing use optimizer 'regular_step' (learning_rate: its largest step, in mm); "
            "otherwise leave learning_rate out.")


def _configure_optimizer(method: sitk.ImageRegistrationMethod, stage: StageParameters, dim: int,
                         voxels: int = 0, spacing: Sequence[float] | None = None) -> None:
    if stage.optimizer == "lbfgsb":
        method.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=float(stage.gradient_tolerance),
                                    numberOfIterations=int(stage.iterations),
                                    maximumNumberOfCorrections=5,
                                    # 4 per iteration, within ITK's 32-bit unsigned int as iterations are
                                    maximumNumberOfFunctionEvaluations=min(4 * int(stage.iterations), ITK_UINT_MAX),
                                    costFunctionConvergenceFactor=1e7)
        return
    learning_rate, min_step, relaxation = regular_step_defaults(stage, dim, voxels, spacing)
    if stage.optimizer == "regular_step":
        method.SetOptimizerAsRegularStepGradientDescent(
            learningRate=learning_rate, minStep=min_step,
            numberOfIterations=int(stage.iterations), relaxationFactor=relaxation,
            gradientMagnitudeTolerance=float(stage.gradient_tolerance),
            estimateLearningRate=method.Never)
    else:
        method.SetOptimizerAsGradientDescentLineSearch(
            learningRate=learning_rate, numberOfIterations=int(stage.iterations),
            convergenceMinimumValue=1e-6, convergenceWindowSize=10,
            estimateLearningRate=method.EachIteration)
    if stage.name == "bspline":
        # B-spline parameters are control-point displacements in mm already: unit scales fit, and
        # estimating thousands of physical-shift scales would cost more than the optimisation
        return
    # one unit of every parameter moves the image by about the same number of mm
    method.SetOptimizerScalesFromPhysicalShift()


def _stage_method(stage: StageParameters, seed: int | None, fixed_mask: sitk.Image | None,
                  moving_mask: sitk.Image | None, fixed: sitk.Image, shrink: list[int], sigmas: list[float],
                  full_voxels: int, sampled: list[float | None] | None = None,
                  full_spacing: Sequence[float] | None = None,
                  signal_voxels: int | None = None) -> sitk.ImageRegistrationMethod:
    """An ITK registration method for ``stage`` on the levels (``shrink``, ``sigmas``) of ``fixed``.

    ``full_voxels`` is the full-resolution fixed image's size, which picks the gradient computation (the same
    for every level, whether ITK or _reduced_level makes them), ``signal_voxels`` its voxels of content
    (:func:`content_voxels`; None: ``full_voxels``), which pick the optimizer's relaxation and, as a share of
    ``full_voxels``, the floor of samples at every level (None: counted on ``fixed``), and
    ``full_spacing`` its voxel size, which scales the default steps (None: ``fixed``'s).
    ``sampled`` (a list) gets each level's sampling fraction appended (None: every voxel).
    """
    method = sitk.ImageRegistrationMethod()
    content = None if signal_voxels is None else signal_voxels / max(full_voxels, 1)
    pcts = _configure_metric(method, stage, seed, fixed_mask, moving_mask, fixed, shrink, content)
    if sampled is not None:
        sampled.extend(pcts if pcts is not None else [None] * len(shrink))
    if full_voxels > GRADIENT_IMAGE_VOXELS:
        # Large volumes: image gradients at the sample points only (central differences) instead of
        # gradient images of every voxel at every level: saves about 2 CPU-seconds on a 1 mm head.
        # Small images (2D slices) keep the smoother gradient images, which the 2D T1/PD case needs.
        method.MetricUseFixedImageGradientFilterOff()
        method.MetricUseMovingImageGradientFilterOff()
    _configure_optimizer(method, stage, fixed.GetDimension(), full_voxels if signal_voxels is None else signal_voxels,
                         fixed.GetSpacing() if full_spacing is None else full_spacing)
    method.SetShrinkFactorsPerLevel(shrink)
    method.SetSmoothingSigmasPerLevel(sigmas)
    if stage.smoothing_in_mm:
        method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    else:
        method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return method


def _run_shrink_factors(stage: StageParameters, fixed: sitk.Image, moving: sitk.Image) -> list[int]:
    """The shrink factors ``stage`` runs with on these images: ITK's pyramid smooths every axis, which needs 4
    voxels along it, so no level may shrink the smaller image below that (a thin slab or a small cube registers
    at fewer shrink steps, not an ITK error: a 6-slice slab asked for 4-2-1 runs 1-1-1)."""
    most = max(1, min(min(fixed.GetSize()), min(moving.GetSize())) // 4)
    return [min(int(f), most) for f in stage.shrink_factors]


def level_list(values: list[Any]) -> str:
    """Pyramid levels as a warning quotes them: ``[4, 2, 1]``, ``[2.5, 1]`` (both backends)."""
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def sigma_text(value: float, in_mm: bool) -> str:
    """A level's smoothing as a warning quotes it: ``sigma 2 voxels``, ``sigma 1 voxel``, ``sigma 0.5 mm`` (both
    backends)."""
    return f"sigma {value:g} " + ("mm" if in_mm else "voxel" if value == 1 else "voxels")


def _level_order_warning(stage: StageParameters, shrink: list[int]) -> str | None:
    """A warning for a stage whose pyramid levels grow coarser from one level to the next, or None.

    ITK runs the levels in the order given (as ANTs and elastix do, so any order is taken), but given fine to
    coarse, e.g. ``shrink_factors=[1, 2, 4]`` with ``smoothing_sigmas=[0, 1, 2]``, the stage ends on its
    coarsest level, not its finest, without a word (MNI152 T1 vs synthetic T2 at 2 mm, affine, seed 3: 0.61 mm
    mean error where [4, 2, 1] with [2, 1, 0] gives 0.16 mm). Sigmas that grow end the stage smoothed and cost
    as much, whether the shrink factor stays put or falls ([1, 1, 1] or [4, 2, 1] with [0, 1, 2]: 0.58 mm), so
    a level is coarser than the one before when its shrink factor or its sigma is larger. ``shrink`` are the
    factors as they run (:func:`_run_shrink_factors`): factors capped to the same value are one grid.
    """
    sigmas = [float(s) for s in stage.smoothing_sigmas]
    shrink = [int(f) for f in shrink]
    grows_shrink = any(b > a for a, b in zip(shrink, shrink[1:]))
    if not grows_shrink and not any(b > a for a, b in zip(sigmas, sigmas[1:])):
        return None
    given = [int(f) for f in stage.shrink_factors]

    def sigma(value: float) -> str:
        return sigma_text(value, stage.smoothing_in_mm)

    ran = "" if shrink == given else (f", run as {level_list(shrink)}: no level may shrink the smaller image "
                                      "below 4 voxels a side")
    if grows_shrink:
        setting = f"shrink_factors {level_list(given)}" + (f" ({ran[2:]})" if ran else "") + (
            " grow coarser from one level to the next")
    else:
        setting = (f"smoothing_sigmas {level_list(sigmas)} grow from one level to the next "
                   f"(shrink_factors {level_list(given)}{ran})")
    if shrink[-1] != min(shrink):
        ends = f"ends at shrink factor {shrink[-1]}, not at its finest ({min(shrink)})"
    elif sigmas[-1] != min(sigmas):
        ends = (f"ends smoothed by {sigma(sigmas[-1])} at shrink factor {shrink[-1]}, not at its least "
                f"({sigma(min(sigmas))})")
    else:
        ends = f"runs a coarser level before it ends at its finest (shrink factor {shrink[-1]}, {sigma(sigmas[-1])})"
    return (f"Stage '{stage.name}': {setting}: the levels run in the order given, so the stage {ends}. Pyramid "
            f"levels are usually given coarse to fine, e.g. shrink_factors {level_list(sorted(given, reverse=True))} "
            f"with smoothing_sigmas {level_list(sorted(sigmas, reverse=True))}.")


def _block_average_factor(image: sitk.Image, factor: int) -> int:
    """How many voxels per axis :func:`_reduced_level` averages into one for a level of shrink ``factor``:
    the factor for an image above ``REDUCED_PYRAMID_VOXELS``, 1 (none) otherwise."""
    return factor if factor > 1 and image.GetNumberOfPixels() > REDUCED_PYRAMID_VOXELS else 1


def _reduced_level(fixed: sitk.Image, moving: sitk.Image, factor: int, sigma: float,
                   stage: StageParameters) -> tuple[sitk.Image, sitk.Image, list[int], list[float]]:
    """One pyramid level of a large pair as ITK then registers it: (fixed, moving, [shrink], [0.0]).

    ITK's ImageRegistrationMethodv4 smooths the full-resolution fixed and moving images at every
    level (DiscreteGaussian) and only shrinks the grid of sample points; on a 512x512x200 CT that
    is 2-7 s per image and level, more than the optimisation itself. Here an image of more than
    ``REDUCED_PYRAMID_VOXELS`` voxels is first block-averaged by the level's shrink factor
    (elastix's recursive pyramid does the same: smooth and downsample) and then smoothed with the
    same sigma (in full-resolution voxels, or mm), on the small image; a smaller image is smoothed
    as ITK would and, when it is the fixed one, ITK still shrinks its sample grid. ITK itself
    then runs this one level unsmoothed. The finest level (factor 1, sigma 0) is the images as
    they are.
    """
    dim = fixed.GetDimension()

    def level_image(image: sitk.Image) -> tuple[sitk.Image, int]:
        reduce = _block_average_factor(image, factor)
        if reduce > 1:
            image = sitk.BinShrink(image, [reduce] * dim)
        if sigma > 0:
            # the block average already smoothed by about (reduce^2 - 1) / 12 voxels^2: close enough
            # to ITK's full-resolution smoothing at the coarse levels, where the optimisation only has
            # to come close (the finest level is exact)
            scaled = sigma if stage.smoothing_in_mm else sigma / reduce
            image = sitk.DiscreteGaussian(image, scaled * scaled, 32, 0.01, bool(stage.smoothing_in_mm))
        return image, reduce

    fixed_level, fixed_reduce = level_image(fixed)
    moving_level, _ = level_image(moving)
    return fixed_level, moving_level, [factor // fixed_reduce], [0.0]


def report_or_stop(method: sitk.ImageRegistrationMethod, state: dict[str, Any], progress: ProgressCallback | None,
                   fraction: float, message: str) -> None:
    """Report progress from inside ITK's iteration loop; a cancel or any error stops ``method`` and is
    kept in ``state`` ("cancelled" / "error") for the caller to raise once ITK has returned (an
    exception must not cross ITK's C++ loop)."""
    try:
        report(progress, fraction, message)
    except OperationCancelled:
        state["cancelled"] = True
        method.StopRegistration()
    except Exception as exc:  # noqa: BLE001
        state["error"] = exc
        method.StopRegistration()


def raise_if_stopped(state: dict[str, Any]) -> None:
    """After ITK returned: raise what :func:`report_or_stop` kept (a cancel, or the callback's error)."""
    if state["cancelled"]:
        raise OperationCancelled()
    if state["error"] is not None:
        raise state["error"]


def _execute(method: sitk.ImageRegistrationMethod, fixed: sitk.Image, moving: sitk.Image, stage: StageParameters,
             first_level: int, levels: int, history: list[tuple[int, int, float]],
             progress: ProgressCallback | None, span: tuple[float, float],
             fixed_mask: sitk.Image | None = None,
             moving_mask_error: Callable[[str], InputError | None] | None = None,
             label: str | None = None, given: tuple[sitk.Image, sitk.Image] | None = None) -> None:
    """Run ``method`` (its levels are the stage's levels from ``first_level`` on), appending to ``history``;
    progress messages name ``label`` (default: the stage's name). ``given``: the fixed and moving images as the
    caller gave them (``fixed`` and ``moving`` may be a reduced level), whose spacing the error for samples outside
    the moving image names where one image's extent dwarfs the other's (:func:`extent_clause`).

    Raises:
        InputError: ``fixed_mask`` left a level no sample point (see :func:`_small_mask_error`), or too few
            samples mapped inside the moving image and ``moving_mask_error(ITK's reason)`` names the moving
            mask as the cause.
        RegistrationError: ITK failed otherwise.
    """
    state: dict[str, Any] = {"cancelled": False, "error": None, "signalled": False}

    def stop_on_signal() -> None:
        state["signalled"] = True
        method.StopRegistration()

    def on_iteration() -> None:
        if state["signalled"]:  # SimpleITK's stop ends the current level only: stop each later one at once
            method.StopRegistration()
            return
        level = first_level + method.GetCurrentLevel()
        it = method.GetOptimizerIteration()
        value = method.GetMetricValue()
        history.append((int(level), int(it), float(value)))
        frac = (level + min(it / max(stage.iterations, 1), 1.0)) / levels
        report_or_stop(method, state, progress, span[0] + (span[1] - span[0]) * frac,
                       f"{label or stage.name}: level {level + 1}/{levels}, iteration {it}, metric {value:.4f}")

    method.AddCommand(sitk.sitkIterationEvent, on_iteration)
    try:
        with signals_stop(stop_on_signal):  # Ctrl-C: stop at the next iteration, then exit 130
            method.Execute(fixed, moving)
    except RuntimeError as exc:
        detail = itk_reason(str(exc)).rstrip(".")
        if fixed_mask is not None and _SMALL_MASK_ITK_TEXTS.search(detail):
            raise _small_mask_error(stage, fixed_mask, first_level + method.GetCurrentLevel(), levels,
                                    detail) from exc
        if "samples" in detail.lower() or "valid points" in detail.lower():
            masks = moving_mask_error(detail) if moving_mask_error is not None else None
            if masks is not None:
                raise masks from exc
            raise RegistrationError(
                f"Stage '{stage.name}' failed: too few sample points map inside the moving image ({detail})."
                f"{extent_clause(*given) if given is not None else ''}",
                "The images probably drifted apart: check the initial alignment, use masks, or raise "
                "sampling_percentage.") from exc
        raise RegistrationError(f"Stage '{stage.name}' failed inside ITK: {detail}.",
                                "Try another preset or initializer, or check the inputs.") from exc
    finally:
        method.RemoveAllCommands()
    raise_if_stopped(state)


#: What ITK says when a fixed mask leaves a level no sample point ("VirtualSampledPointSet must have 1 or
#: more points"), or Mattes MI samples of a single fixed value ("Zero-valued spacing is not supported"):
#: with a mask of a few voxels, its own words, naming neither the mask nor the fix
_SMALL_MASK_ITK_TEXTS = re.compile(r"SampledPointSet must have 1 or more points|Zero-valued spacing", re.I)


def _small_mask_error(stage: StageParameters, fixed_mask: sitk.Image, level: int, levels: int,
                      detail: str) -> InputError:
    """The InputError for a fixed mask too small for a level of ``stage``: its voxel count and the fixes.

    ITK samples a level on the fixed grid shrunk by the level's factor and keeps the points inside the mask
    (with random or regular sampling, ``sampling_percentage`` of them): a mask a few voxels across can hold
    none of them at a coarse level, or too few for a histogram.
    """
    voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(fixed_mask)))
    shrink = list(stage.shrink_factors)
    factor = shrink[level] if 0 <= level < len(shrink) else shrink[-1]
    return InputError(
        f"Stage '{stage.name}': the fixed mask ({voxels} voxel{'s' if voxels != 1 else ''}) is too small for the "
        f"metric at level {level + 1} of {levels} (shrink factor {factor}): ITK found too few sample points "
        f"inside it ({detail}).",
        "Give a larger fixed mask (dilate it so that it spans several voxels of the coarsest level), sample every "
        "voxel (sampling_strategy 'none'), use smaller shrink_factors (e.g. [2, 1] or [1]), or register "
        "without the mask.")


def masks_metric_error(stage_name: str, metric: str, fixed: sitk.Image, fixed_mask: sitk.Image | None,
                       moving_mask: sitk.Image | None, start: sitk.Transform, start_from: str,
                       detail: str = "") -> InputError:
    """The InputError for a stage (named ``stage_name``, its metric ``metric``) whose metric cannot be computed
    over the masks from ``start`` (ITK could not; the torch backend finds it before its first stage): the
    masks' voxel counts and, with a moving mask, how many fixed voxels ``start`` sends inside it; the fix
    names what has not been tried, by what made ``start`` (``start_from``, as for :func:`start_fix`)."""
    def voxels(mask: sitk.Image) -> str:
        count = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
        return f"{count} voxel{'s' if count != 1 else ''}"

    masks = " and ".join([f"the {name} mask ({voxels(mask)})" for name, mask in (("fixed", fixed_mask),
                                                                               ("moving", moving_mask))
                          if mask is not None])
    if moving_mask is not None:
        count = masks_intersection(fixed, fixed_mask, moving_mask, start)
        region = "the fixed mask" if fixed_mask is not None else "the fixed image"
        why = (f"only {count} voxel{'s' if count != 1 else ''} of {region} map{'s' if count == 1 else ''} inside "
               "the moving mask there, too few for the metric")
    else:
        why = "too few of its voxels map inside the moving image, or the mask is too small for the metric"
    reason = f" (ITK: {detail})" if detail else ""
    larger = ("larger masks" if fixed_mask is not None and moving_mask is not None
              else f"a larger {'fixed' if fixed_mask is not None else 'moving'} mask")
    return InputError(
        f"Stage '{stage_name}': the {metric} metric cannot be computed at the starting transform over "
        f"{masks}: {why}{reason}.",
        f"Give {larger}, check that the masks cover the same anatomy (each on its own image's grid), "
        f"or {start_fix(start_from, masks=True)}.")


#: Margin, as a share of the fixed image's extent on each side, of the grid that a moving image is
#: resampled on through a non-linear start (:func:`_moving_through`): room for the stage to move it.
START_GRID_MARGIN = 0.15
#: Most voxels of that grid (coarser than the fixed grid beyond this): 64 M float32 voxels are 256 MB.
START_GRID_VOXELS = 64_000_000


def _moving_through(start: sitk.Transform, fixed: sitk.Image, moving: sitk.Image,
                    moving_mask: sitk.Image | None) -> tuple[sitk.Image, sitk.Image | None] | None:
    """The moving image (and mask) resampled through a non-linear ``start``, for a stage to register
    the fixed image to; None for a linear ``start`` (ITK composes that one itself).

    A stage after a non-linear start optimises ``x -> start(stage(x))``. Handed to ITK as the moving
    initial transform, the start's Jacobian with respect to position is needed: ``BSplineTransform``
    does not implement it (every stage after a B-spline start, e.g. an earlier rigid+bspline result given
    as ``--initial-transform``, failed inside ITK), and ``DisplacementFieldTransform`` reads it outside
    the field's memory for points beyond it (the 2D BrainWeb rigid stage then ended 3-4 degrees off)
    and, even inside, not the same from run to run (0.15 px apart with one seed). Registering to
    ``moving(start(y))`` instead is the same problem with deterministic resampling: the image is
    resampled once per stage on the fixed grid widened by ``START_GRID_MARGIN`` on each side (coarser
    above ``START_GRID_VOXELS``). The metric before and after and the result use ``start`` itself.
    """
    if _is_linear(start):
        return None
    dim = fixed.GetDimension()
    spacing = np.array(fixed.GetSpacing())
    extent = (np.array(fixed.GetSize()) - 1) * spacing
    wide = extent * (1.0 + 2.0 * START_GRID_MARGIN)
    factor = max(1.0, (np.prod(wide / spacing + 1) / START_GRID_VOXELS) ** (1.0 / dim))
    new_spacing = (spacing * factor).tolist()
    size = [max(2, int(math.ceil(w / sp)) + 1) for w, sp in zip(wide, new_spacing)]
    direction = np.array(fixed.GetDirection()).reshape(dim, dim)
    origin = (np.array(fixed.GetOrigin()) - direction @ (extent * START_GRID_MARGIN)).tolist()
    with itk_guard("resampling the moving image through the non-linear start transform"):
        warped = sitk.Resample(moving, size, start, sitk.sitkLinear, origin, new_spacing, fixed.GetDirection(),
                               0.0, moving.GetPixelID())
        mask = None
        if moving_mask is not None:
            mask = sitk.Resample(moving_mask, size, start, sitk.sitkNearestNeighbor, origin, new_spacing,
                                 fixed.GetDirection(), 0, moving_mask.GetPixelID())
    return warped, mask


# ----------------------------------------------------------------------------- masked start
#: How much better (a share of the metric's magnitude) the masked metric must score the unmasked coarse level's
#: end than the masked first stage's own result for the stage to run again from there (see
#: :func:`_unmasked_start`); the 1% of a stage's "small change".
SECOND_TRY_MARGIN = 0.01

#: How far apart (mean distance over the fixed mask, in coarsest-level voxels: the shrink factor times the fixed
#: image's smallest voxel side) the stage's own end and the unmasked coarse level's must lie for the stage to run
#: again on the check metric alone (see :func:`_unmasked_start`): the near ties the check metric misjudged lay
#: 0.08 voxels apart, the failures 0.95 (a box over the middle 60% of the 2D slice at 0.5 mm, 7 px off over the
#: slice) and more. Nearer ends are judged on every voxel (:func:`judge_unmasked_start`).
SECOND_TRY_APART = 0.5


def second_try_applies(first_stage: str, fixed_mask: sitk.Image | None, moving_mask: sitk.Image | None,
                       start_given: bool) -> bool:
    """Whether a first stage may run again from its coarsest level run without the masks (the rule of both
    backends, :func:`_unmasked_start` and the torch backend's ``_unmasked_coarse_level``): a rigid or affine first
    stage (``first_stage``) with a mask, started by an initializer (``start_given``: an initial transform or the
    rotation search's start, which searches with the masks, is the user's or the search's, not replaced). Not
    with a mask of fewer than MIN_CONTENT_VOXELS voxels (warned about as too small to align)."""
    masks = [mask for mask in (fixed_mask, moving_mask) if mask is not None]
    return bool(masks and not start_given and first_stage in ("rigid", "affine")
                and all(np.count_nonzero(sitk.GetArrayViewFromImage(mask)) >= MIN_CONTENT_VOXELS for mask in masks))


def judge_unmasked_start(info: dict[str, Any], reached: float, score: float, apart_mm: float,
                         coarse_voxel_mm: float, every_voxel: tuple[float, float] | None = None) -> bool:
    """Whether the stage runs again from the unmasked coarse level's end (the decision of both backends): the
    masked metric scores that end (``score``) better than the stage's own result (``reached``) by more than
    ``SECOND_TRY_MARGIN``, and that end lies more than ``SECOND_TRY_APART`` coarse voxels (``coarse_voxel_mm``)
    from what the stage reached (``apart_mm``, mean over the fixed mask) or, nearer, the masked metric on every
    fixed voxel (``every_voxel``: the stage's own result's value and the coarse level's end's; the SimpleITK
    backend's, whose check metric takes every k-th voxel) scores it better by that margin too. Records them in
    ``info`` (metrics.json's ``masked_start``: ``used``, ``metric_unmasked_level``, ``apart_mm``, and
    ``metric_stage_reached_every_voxel`` and ``metric_unmasked_level_every_voxel`` where asked).

    Better by a margin: on the 1 mm MNI152 head the stage's own end (0.08 mm off) scored 0.05% worse than the
    unmasked coarse level's (0.34 mm off, about as far apart as the truth and either), run again from there it
    ended 0.34 mm off; the failures it is for score 50-500% worse (2D BrainWeb, -0.07 against -0.42). And apart by
    more than half a coarse voxel: the 256x256x200 head's two ends, 0.3 mm apart (0.08 of its 4 mm voxels), scored
    3% apart. Nearer, on every voxel: the check metric's every k-th voxel, unsmoothed, had scored the coarse
    level's end 1.4-4.4% better in 5 of 15 near ties on MNI152 heads (1 mm 160x192x192 and 256x256x200, 2 mm;
    0.06-0.11 coarse voxels apart), where every voxel scores the stage's own end 2.1-5.9% better (0.08-0.09 mm
    off against 0.20-0.52); but the 2D BrainWeb slice (every pixel checked), fixed mask ``fixed > 30`` at 0.5 mm,
    seed 2, ended its first run 1.51 px off and 0.19 coarse voxels from the coarse level's end, which scores 9.8%
    better (-0.417 against -0.380): not run again for the distance alone, it now is, to 0.19 px. The other 61
    near ends of that slice's 120 masked runs scored the coarse level's end at most 0.32% better."""
    better = math.isfinite(score) and score < reached - SECOND_TRY_MARGIN * abs(reached)
    if apart_mm > SECOND_TRY_APART * coarse_voxel_mm or not better:
        used = better
    elif every_voxel is not None:
        own, coarse = every_voxel
        info.update(metric_stage_reached_every_voxel=float(own), metric_unmasked_level_every_voxel=float(coarse))
        used = math.isfinite(coarse) and coarse < own - SECOND_TRY_MARGIN * abs(own)
    else:
        used = False
    info.update(used=bool(used), metric_unmasked_level=float(score), apart_mm=float(apart_mm))
    return bool(used)


def second_try_warning(stage_name: str, metric: str, second: StageResult, reached: float) -> str:
    """The warning for a stage run again from the unmasked coarse level that made the masked ``metric`` worse
    (``second``: that run; ``reached``: the masked metric of the stage's own first result): the coarse alignment
    is kept, as either backend keeps a discarded stage's start.

    Worse by less than ``SECOND_TRY_MARGIN`` (a stage's "small change") is said as one, as a first stage that did
    not improve its start is: the coarse level's end was already at the answer. On the 2D BrainWeb slice with a
    box fixed or moving mask over the middle 40% or 60% (seeds 0-3, 1 and 3 mm), 6 of 32 SimpleITK runs ended
    0.04-0.17% worse from there and 12 of 32 torch runs (all with the moving box) 0.02-0.20%,
    each returned within 0.3 px of the truth, each told it had "made the masked metric worse", to "Check the
    result" and to change its masks."""
    change = abs(second.metric_after - second.metric_before) / max(abs(second.metric_before), 1e-12)
    if math.isfinite(second.metric_after) and change < SECOND_TRY_MARGIN:
        return (f"Stage '{stage_name}', run again from its coarsest level aligned without the masks, ended "
                f"{100 * change:.2f}% worse on the masked {metric} metric than that coarse alignment "
                f"({second.metric_before:.5g} -> {second.metric_after:.5g}), which was kept (the stage's own result "
                f"scored {reached:.5g}). A small change, usual where the coarse alignment already aligned the images "
                "as well as this stage's transform can.")
    return (f"Stage '{stage_name}', run again from its coarsest level aligned without the masks, made the masked "
            f"{metric} metric worse ({second.metric_before:.5g} -> {second.metric_after:.5g}); that coarse alignment "
            f"was kept, which the masked metric scores better than the stage's own result ({reached:.5g}). Check the "
            "result, or give the stage a start (initial transform) or masks with a margin of background.")


def mean_distance(a: sitk.Transform, b: sitk.Transform, fixed: sitk.Image, fixed_mask: sitk.Image | None) -> float:
    """Mean distance (mm) between where ``a`` and ``b`` send the fixed voxels (those in ``fixed_mask``, where one
    is given and any of it lies on the grid), on :func:`evaluate_metric`'s subgrid."""
    factors = evaluation_factors(fixed)
    grid = sitk.Shrink(fixed, factors) if max(factors) > 1 else fixed
    inside = None
    if fixed_mask is not None:
        # a copy: a view of the shrunk mask would outlive the image it views (freed before the comparison)
        inside = sitk.GetArrayFromImage(sitk.Shrink(fixed_mask, factors) if max(factors) > 1 else fixed_mask) != 0
        inside = inside if inside.any() else None
    fields = []
    for transform in (a, b):
        field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, grid.GetSize(), grid.GetOrigin(),
                                                  grid.GetSpacing(), grid.GetDirection())
        fields.append(sitk.GetArrayFromImage(field))
    distance = np.linalg.norm(fields[0] - fields[1], axis=-1)
    return float(distance[inside].mean() if inside is not None else distance.mean())


def _unmasked_start(fixed: sitk.Image, moving: sitk.Image, stage: StageParameters, start: sitk.Transform,
                    seed: int | None, fixed_mask: sitk.Image | None, moving_mask: sitk.Image | None,
                    reached: float, reached_transform: sitk.Transform, progress: ProgressCallback | None = None,
                    span: tuple[float, float] = (0.0, 1.0)) -> tuple[sitk.Transform | None, dict[str, Any]]:
    """Another start for a masked first rigid or affine stage: the stage's coarsest level run from the
    initializer's ``start`` without the masks, when the masked metric scores it better than ``reached`` (the
    value of ``reached_transform``, what the stage reached from ``start``, on the same points) by more than
    ``SECOND_TRY_MARGIN`` and it lies more than ``SECOND_TRY_APART`` coarsest-level voxels from that transform
    (mean distance over the fixed mask) or, nearer, the metric on every voxel scores it better by the margin too;
    None otherwise. Also what was found (metrics.json's ``masked_start``). The level
    reports progress over ``span`` and stops on a cancel or Ctrl-C as a stage does.

    A mask drawn at the object's edge (a brain mask, ``fixed > 30``), or inside it, leaves the metric none of the
    object-against-background contrast that gives an unmasked stage its capture range: on the 2D BrainWeb pair
    (10 degrees, 21 px from the centres) Mattes MI over the fixed mask is flat beyond about 10-15 px at the
    coarsest level (-0.28 to -0.31 around the 'geometry' start, -0.64 at the truth; the unmasked metric falls
    all the way), so the masked stage ended 10-33 px off in about half the seeds and pixel sizes, each accepted
    (its end scored better than its start) and each a local optimum of the metric, not a sampling effect (every
    pixel sampled: the same). ITK's and ANTs' metrics take a mask as given too, and ANTs' users found masked
    linear stages less robust than unmasked ones followed by masked ones (ANTs issue #348; ANTsPy applies a mask
    to the last stage only unless asked, antsRegistration takes one per stage). The unmasked coarse level
    (cheap: a sixteenth of a 2D image, a 64th of a volume) brings the images within the masked metric's range.
    It is a second try, not the start of every masked stage: started there, near the optimum, the stage's first
    2 mm steps (halved at each turn) ended the 1 mm MNI152 head 0.34 mm off where it had reached 0.08 mm from
    the centres. Where the two ends lie within half a coarse voxel of each other the check metric (every k-th
    voxel, unsmoothed) cannot tell them apart: on a 256x256x200 1 mm MNI152 pair with its brain mask it scored the
    coarse level's end (0.28 mm off) 3% better than the stage's own (0.08 mm off) and better than the truth
    itself; run again from there the stage ended no better, and the 0.28 mm were returned, in 9.0 s instead of
    3.8 (the 2 mm pair the same: 0.52 mm instead of 0.09). There the two ends are scored again on every voxel,
    which ranks the stage's own end first in those near ties (:func:`judge_unmasked_start`), and the stage runs
    again only where that too scores the coarse level's end better by the margin. The capture-range failures it is
    for end 2-56 px from the coarse level's end (mean over the mask; 4 px coarse voxels). The masked metric decides, so a mask that
    excludes misleading structure (a couch, another field of view) keeps the stage's own result when that scores
    better.
    """
    shrink = _run_shrink_factors(stage, fixed, moving)[:1]
    sigmas = [float(s) for s in stage.smoothing_sigmas][:1]
    if max(fixed.GetNumberOfPixels(), moving.GetNumberOfPixels()) > REDUCED_PYRAMID_VOXELS:
        fixed_in, moving_in, shrink_in, sigmas_in = _reduced_level(fixed, moving, shrink[0], sigmas[0], stage)
    else:
        fixed_in, moving_in, shrink_in, sigmas_in = fixed, moving, shrink, sigmas
    method = _stage_method(stage, seed, None, None, fixed_in, shrink_in, sigmas_in, fixed.GetNumberOfPixels(),
                           None, fixed.GetSpacing(), content_voxels(fixed))
    aligned = type(start)(start)
    method.SetInitialTransform(aligned, inPlace=True)
    coarse_voxel = float(shrink[0] * min(fixed.GetSpacing()))
    info: dict[str, Any] = {"shrink_factor": int(shrink[0]), "smoothing_sigma": sigmas[0],
                            "metric_stage_reached": float(reached), "coarse_voxel_mm": coarse_voxel}
    try:
        # through _execute, as a stage's levels: progress, a cancel and Ctrl-C stop it (it had run silent, 2.9 s
        # on a 256x256x200 pair, and the bar had gone back to 0 for the second run)
        _execute(method, fixed_in, moving_in, stage, 0, 1, [], progress, span,
                 label=f"{stage.name} (without the masks, coarsest level)", given=(fixed, moving))
    except RegistrationError as exc:  # the unmasked level could not run: the stage's own result stands
        info.update(used=False, reason=exc.problem)
        return None, info
    apart = mean_distance(aligned, reached_transform, fixed, fixed_mask)
    score = evaluate_metric(fixed, moving, aligned, stage, seed, fixed_mask, moving_mask)
    every_voxel = None
    if (apart <= SECOND_TRY_APART * coarse_voxel and math.isfinite(score)
            and score < reached - SECOND_TRY_MARGIN * abs(reached)):
        # a near end the check metric prefers: scored again on every voxel, where the check took every k-th
        # (0.04 s on a 2 mm head, 0.4 s on a 1 mm 160x192x192 one); a 2D slice of up to EVAL_VOXELS pixels
        # was checked on every pixel already
        if max(evaluation_factors(fixed)) > 1:
            every_voxel = (evaluate_metric(fixed, moving, reached_transform, stage, seed, fixed_mask, moving_mask,
                                           every_voxel=True),
                           evaluate_metric(fixed, moving, aligned, stage, seed, fixed_mask, moving_mask,
                                           every_voxel=True))
        else:
            every_voxel = (reached, score)
    used = judge_unmasked_start(info, reached, score, apart, coarse_voxel, every_voxel)
    return (aligned if used else None), info


def second_try_result(first: StageResult, second: StageResult, seconds: float) -> StageResult:
    """The stage's result when it ran again from the unmasked coarse level: the second run's, measured from the
    initializer's start (``first.metric_before``) as the stage's first run was, over both runs' ``seconds``. Its
    end scores better than that start (the second run's start did by the margin), so the stage is accepted:
    reported from the second run's own start, the stage had said "did not improve ... the transform before it
    was kept" (0.02% worse than the coarse level's end) for a run that moved 21 px to the answer, and metrics.json
    gave that end as the registration's "before"."""
    after = second.metric_after if second.accepted else second.metric_before
    return dataclasses.replace(second, metric_before=first.metric_before, metric_after=after,
                               accepted=bool(after <= first.metric_before), seconds=seconds)


# ----------------------------------------------------------------------------- one stage
#: What to try when a stage's start leaves the images, or the masks, apart, by what made that start
#: (:func:`start_kind`): each names only what has not been tried (the fixes had named the geometry and
#: moments initializers, also to runs that used them, and the masks' fixes the moments initializer or an
#: initial transform, also to runs that used moments or gave one). Per start: the fix when the images barely
#: overlap (no mask), and a clause for masks that do not meet or hold too few voxels for the metric there
#: (:func:`start_fix`), which follows "check that the masks cover the same anatomy; then" or "or".
_START_FIXES: dict[str, tuple[str, str]] = {
    "none": ("Use the 'geometry' or 'moments' initializer (CLI --initializer; they align the centres), or give an "
             "initial transform that roughly aligns them.",
             "start from a transform that brings them together (the 'moments' initializer aligns the masks' "
             "centres of mass; or give an initial transform)"),
    "geometry": ("Their centres were aligned (initializer 'geometry'): check that both show the same anatomy (one "
                 "field of view much smaller or elsewhere: crop the other to it), try the 'moments' initializer "
                 "(centres of mass), or give an initial transform that roughly aligns them.",
                 "start from a transform that brings them together (the 'moments' initializer aligns the masks' "
                 "centres of mass, where 'geometry' aligned the image centres; or give an initial transform)"),
    "moments": ("Their centres of mass were aligned (initializer 'moments'): check that both show the same anatomy "
                "(one field of view much smaller or elsewhere: crop the other to it), try the 'geometry' "
                "initializer (image centres), or give an initial transform that roughly aligns them.",
                "give an initial transform that roughly aligns them (initializer 'moments' already aligned the "
                "masks' centres of mass)"),
    "search": ("The rotation search's start leaves them apart: check that both show the same anatomy, try the "
               "'geometry' or 'moments' initializer, or give an initial transform that roughly aligns them.",
               "start from a transform that brings them together where the rotation search's did not (the "
               "'moments' initializer aligns the masks' centres of mass; or give an initial transform)"),
    "initial transform": ("The initial transform places them apart: check it (it maps fixed-image points to "
                          "moving-image points, ITK's convention; an inverted one moves the other way), or leave it "
                          "out so that the 'geometry' or 'moments' initializer aligns the centres.",
                          "check the initial transform given (it maps fixed-image points to moving-image points, "
                          "ITK's convention; an inverted one moves the other way), or leave it out so that the "
                          "'moments' initializer aligns the masks' centres of mass"),
    "earlier stages": ("The earlier stages moved them apart: check their settings and the masks, or run this stage "
                       "alone.",
                       "check the settings of the earlier stages, which moved the masks apart, or run this stage "
                       "alone"),
}


def start_fix(start_from: str, masks: bool = False) -> str:
    """What to try instead of the start ``start_from`` (a :func:`start_kind`, or "earlier stages"):
    the fix for images that barely overlap there, or with ``masks`` the clause for masks that do not meet."""
    images, masks_clause = _START_FIXES.get(start_from, _START_FIXES["none"])
    return masks_clause if masks else images


#: How many times larger one image's extent must be than the other's for the "barely overlap" error to name their
#: spacings: a header spacing off by orders of magnitude (1e12 mm, a unit or exponent error) had been told only that
#: the images barely overlap. 1000: a 300 mm field of view against a 0.3 mm one; real pairs differ by far less.
EXTENT_RATIO_NAMED = 1000.0


def extent_clause(fixed: sitk.Image | None, moving: sitk.Image | None) -> str:
    """" The fixed image spans ... mm (spacing ...), N times the moving image's ...": the likely cause of a start
    with nothing to compare where one image's extent dwarfs the other's by :data:`EXTENT_RATIO_NAMED`; "" else.
    Both backends' errors for a start with nothing, or too few samples, to compare add it (:func:`no_overlap_error`,
    :func:`_execute`, ``torch_backend._few_inside_error``): a 2D pair's start often keeps a few samples inside."""
    if fixed is None or moving is None:
        return ""
    extents = [max(size * spacing for size, spacing in zip(image.GetSize(), image.GetSpacing()))
               for image in (fixed, moving)]
    big = 0 if extents[0] >= extents[1] else 1
    if not extents[1 - big] > 0 or extents[big] / extents[1 - big] < EXTENT_RATIO_NAMED:
        return ""
    names, images = ("fixed", "moving"), (fixed, moving)
    spacing = ", ".join(f"{v:g}" for v in images[big].GetSpacing())
    return (f" The {names[big]} image spans {extents[big]:g} mm (spacing {spacing} mm), {extents[big] / extents[1 - big]:.3g}"
            f" times the {names[1 - big]} image's {extents[1 - big]:g} mm: check the spacing in its header "
            "(mmfusion info); a unit or exponent error there leaves its voxels far apart.")


def check_fixed_not_within_a_voxel(stage_name: str, fixed: sitk.Image, moving: sitk.Image) -> None:
    """Refuse a pair whose whole fixed image fits inside one voxel of the moving image (its diagonal no longer than
    the moving image's smallest spacing) where :func:`extent_clause` names the moving image's extent as dwarfing the
    fixed one's: a moving header spacing of 1e12 mm. Every fixed sample then falls between the same few moving voxels,
    so the metric has nothing to compare, yet both backends had run and returned a translation of about 1e14 mm with
    mutual information ~0 before and after, as a success; a huge fixed spacing is refused by the backends themselves
    (too few samples inside the moving image, or no overlap), with the same clause. Both backends call it before any
    stage runs."""
    diagonal = math.sqrt(sum((size * spacing) ** 2 for size, spacing in zip(fixed.GetSize(), fixed.GetSpacing())))
    clause = extent_clause(fixed, moving)
    if clause and diagonal <= min(moving.GetSpacing()):
        raise RegistrationError(
            f"Stage '{stage_name}': the whole fixed image ({diagonal:g} mm across) lies inside one voxel of the "
            f"moving image, so the metric cannot be computed.{clause}",
            "Correct the moving image's spacing in its header (e.g. Slicer's Volumes module, Volume Information), "
            "then register again.")


def no_overlap_error(stage_name: str, start_from: str, fixed: sitk.Image | None = None,
                     moving: sitk.Image | None = None) -> RegistrationError:
    """The error for a metric that cannot be computed at stage ``stage_name``'s start without masks (with
    one, ``masks_metric_error`` names the masks instead): its fix depends on what started the stage
    (``start_from``, as for :func:`start_fix`). The one text of both backends: the SimpleITK backend raises
    it when ITK finds no fixed point inside the moving image there, the torch backend when no fixed voxel
    maps inside it (``validation.voxels_inside``), before any stage runs. Given the images, it names a spacing
    that makes one image's extent dwarf the other's (:func:`extent_clause`)."""
    return RegistrationError(
        f"Stage '{stage_name}': the images barely overlap at the starting transform, so the metric cannot "
        f"be computed.{extent_clause(fixed, moving)}", start_fix(start_from))


def _run_stage(fixed: sitk.Image, moving: sitk.Image, stage: StageParameters, previous: sitk.Transform | None,
               params: RegistrationParameters, fixed_mask: sitk.Image | None, moving_mask: sitk.Image | None,
               progress: ProgressCallback | None, span: tuple[float, float],
               searched: sitk.Transform | None = None,
               start_from: str = "earlier stages",
               start: sitk.Transform | None = None) -> tuple[sitk.Transform, StageResult, dict[str, Any]]:
    """Optimise one stage; returns (accumulated transform, stage result, the settings it ran with where the
    engine chose them: :func:`_effective_settings`).

    ``start_from`` names what ``previous`` is when it is given ("initial transform" or "earlier stages"),
    for the fix when the images or the masks do not overlap there; without ``previous`` the initializer
    starts it. ``start``: the stage's own transform before optimisation (:func:`_stage_transform`), when the
    caller has built it already (it is not modified).
    """
    t0 = time.perf_counter()
    dim = fixed.GetDimension()
    center = _image_center(fixed)
    seed = params.seed
    if previous is None:
        start_from = params.initializer
    if start is None:
        start = _stage_transform(stage, fixed, moving, previous, params.initializer, searched, fixed_mask,
                                 moving_mask)
    start_total = compose(previous, start, dim, center)
    metric_before = evaluate_metric(fixed, moving, start_total, stage, seed, fixed_mask, moving_mask)
    if not math.isfinite(metric_before) and (fixed_mask is not None or moving_mask is not None):
        raise masks_metric_error(stage.name, stage.metric, fixed, fixed_mask, moving_mask, start_total, start_from)
    if not math.isfinite(metric_before):
        raise no_overlap_error(stage.name, start_from, fixed, moving)

    def moving_mask_error(detail: str) -> InputError | None:
        # ITK found too few samples inside the moving image and its mask during the stage: a moving mask that
        # held fewer than MIN_CONTENT_VOXELS of the fixed voxels at the stage's start is named as the cause
        if moving_mask is None or masks_intersection(fixed, fixed_mask, moving_mask, start_total) >= MIN_CONTENT_VOXELS:
            return None
        return masks_metric_error(stage.name, stage.metric, fixed, fixed_mask, moving_mask, start_total, start_from, detail)

    # a non-linear start: the stage registers to the moving image resampled through it (see _moving_through)
    warped = _moving_through(previous, fixed, moving, moving_mask) if previous is not None else None
    stage_moving, stage_mask = warped if warped is not None else (moving, moving_mask)

    shrink = _run_shrink_factors(stage, fixed, moving)
    sigmas = [float(s) for s in stage.smoothing_sigmas]
    content = content_voxels(fixed, fixed_mask)
    # ITK optimises in place: give it a copy, so that ``start`` (and ``start_total``, which is ``start``
    # itself for a first stage, or a composite holding it for a B-spline stage) stays the starting
    # transform a discarded stage falls back to (optimising ``start`` itself returned the discarded result)
    optimized = type(start)(start)
    reduced_levels: list[dict[str, Any]] | None = None
    if max(fixed.GetNumberOfPixels(), stage_moving.GetNumberOfPixels()) > REDUCED_PYRAMID_VOXELS:
        # one ITK run per level on images reduced here (see _reduced_level): ITK's own pyramid would
        # smooth both full-resolution images at every level
        runs = (_reduced_level(fixed, stage_moving, f, sigma, stage) for f, sigma in zip(shrink, sigmas))
        reduced_levels = [{"fixed_block_average": _block_average_factor(fixed, f),
                           "moving_block_average": _block_average_factor(stage_moving, f),
                           "smoothing_sigma": float(sigma),
                           "itk_shrink_factor": int(f) // _block_average_factor(fixed, f)}
                          for f, sigma in zip(shrink, sigmas)]
    else:
        runs = iter([(fixed, stage_moving, shrink, sigmas)])

    history: list[tuple[int, int, float]] = []
    levels = len(stage.shrink_factors)
    stop_reason = ""
    sampled: list[float | None] = []
    for first_level, (fixed_in, moving_in, shrink_in, sigmas_in) in enumerate(runs):
        method = _stage_method(stage, seed, fixed_mask, stage_mask, fixed_in, shrink_in, sigmas_in,
                               fixed.GetNumberOfPixels(), sampled, fixed.GetSpacing(), content)
        if previous is not None and warped is None:
            method.SetMovingInitialTransform(previous)
        method.SetInitialTransform(optimized, inPlace=True)
        _execute(method, fixed_in, moving_in, stage, first_level, levels, history, progress, span, fixed_mask,
                 moving_mask_error, given=(fixed, moving))
        stop_reason = method.GetOptimizerStopConditionDescription()

    final_total = compose(previous, optimized, dim, center)
    metric_after = evaluate_metric(fixed, moving, final_total, stage, seed, fixed_mask, moving_mask)
    # iterations summed over levels: the history restarts its counter at every level
    iterations = len(history)
    if levels > 1:  # ITK's text ("after 45 iterations") is its last level's: a reader compares it with the total
        stop_reason = f"last level ({levels} of {levels}): {stop_reason}"
    accepted = math.isfinite(metric_after) and metric_after <= metric_before
    result_tx = final_total if accepted else start_total
    if not accepted and stage.name == "bspline":
        # a discarded B-spline stage gives back the transform before it, not its composite with the stage's
        # zero B-spline: that had made a kept rigid result a deformable transform.h5, its rotation and
        # translation no longer printed (the torch backend gives back its linear result). A copy: a given initial
        # transform is the caller's object. Before a first stage started from no move (initializer "none"), the
        # identity, where the zero B-spline alone had come back
        result_tx = (type(previous)(previous) if previous is not None
                     else _matrix_transform(np.eye(dim), np.zeros(dim), center, rigid=True))
    stage_result = StageResult(
        name=stage.name, metric_name=stage.metric, metric_before=metric_before,
        metric_after=metric_after if math.isfinite(metric_after) else float("nan"),
        iterations=iterations, stop_reason=stop_reason,
        seconds=time.perf_counter() - t0, history=history, accepted=accepted,
        level_iterations=iterations_per_level(history, levels))  # with levels that ran no iteration
    return result_tx, stage_result, _effective_settings(stage, fixed, shrink, sigmas, sampled, reduced_levels,
                                                        content)


def _effective_settings(stage: StageParameters, fixed: sitk.Image, shrink: list[int], sigmas: list[float],
                        sampled: list[float | None],
                        reduced_levels: list[dict[str, Any]] | None = None,
                        signal_voxels: int | None = None) -> dict[str, Any]:
    """What a stage ran with where the engine chose it from the images (metrics.json's ``effective``): the
    step where ITK takes it (:func:`learning_rate_used`: ``learning_rate``, and ``step_scale``, the factor on the
    default steps from the fixed image's voxel size), the regular_step optimizer's ``min_step`` and
    ``relaxation_factor`` (null in the settings: picked from the fixed image's voxels of content,
    ``signal_voxels``, None: its size, and its voxel size; ``content_voxels`` says how many), the shrink
    factors (capped at a quarter of the smaller image's shortest side: a 6-slice slab runs shrink 1 throughout),
    the sigmas ITK's pyramid smoothed with, the sampling fraction of each level's grid (raised to the floor of
    samples, capped at ``max_samples``; null: every voxel), a B-spline's control grid, and a mutual-information
    metric's histogram bins (null in the settings: 50). ``pyramid`` says who made the levels: "itk", or
    "reduced" for images above
    ``REDUCED_PYRAMID_VOXELS``, where the engine block-averaged and smoothed each level itself
    (``reduced_levels``, see :func:`_reduced_level`) and ITK ran every level unsmoothed (sigmas 0)."""
    out: dict[str, Any] = {"shrink_factors": [int(f) for f in shrink],
                           "pyramid": "itk" if reduced_levels is None else "reduced",
                           "smoothing_sigmas": ([float(s) for s in sigmas] if reduced_levels is None
                                                else [0.0] * len(sigmas)),
                           "smoothing_in_mm": bool(stage.smoothing_in_mm),
                           "sampling_percentage_per_level": [None if p is None else float(p) for p in sampled]}
    if reduced_levels is not None:
        out["reduced_levels"] = reduced_levels
    if stage.metric in ("mattes_mi", "joint_histogram_mi"):
        out["histogram_bins"] = stage.effective_histogram_bins()
    voxels = fixed.GetNumberOfPixels() if signal_voxels is None else int(signal_voxels)
    learning_rate, min_step, relaxation = regular_step_defaults(stage, fixed.GetDimension(), voxels,
                                                                fixed.GetSpacing())
    if learning_rate_used(stage):
        out["step_scale"] = step_scale(fixed.GetSpacing())
        out["learning_rate"] = learning_rate
    if stage.optimizer == "regular_step":
        out["min_step"], out["relaxation_factor"] = min_step, relaxation
        out["content_voxels"] = voxels
    if stage.name == "bspline":
        out["mesh_size"] = [int(m) for m in _bspline_mesh(stage, fixed)]
    return out


# ----------------------------------------------------------------------------- pipeline
#: Share of the progress range the rotation search takes (the stages share the rest).
SEARCH_SHARE = 0.2

def register_sitk(fixed: sitk.Image, moving: sitk.Image, parameters: RegistrationParameters, *,
                  fixed_mask: sitk.Image | None = None, moving_mask: sitk.Image | None = None,
                  initial_transform: sitk.Transform | None = None,
                  progress: ProgressCallback | None = None) -> RegistrationResult:
    """Run the staged SimpleITK registration (inputs already validated) on the images' working copies
    (``registration.working_copies``: float32, a CT's padding filled, made here once).

    See :func:`MultimodalFusionLib.registration.register` for the arguments.
    """
    from . import working_copies

    t0 = time.perf_counter()
    dim = fixed.GetDimension()
    if initial_transform is not None and initial_transform.GetDimension() != dim:
        raise InputError(f"The initial transform is {initial_transform.GetDimension()}D but the images are {dim}D.",
                         "Give a transform of the images' dimension.")
    for stage in parameters.stages:
        if stage.name == "bspline":
            # here, not in register(): register_sitk is public too, and the refusal must come before any stage runs
            _bspline_mesh(stage, fixed)
    # before the working copies: a moving voxel holding the whole fixed image had registered to ~1e14 mm
    check_fixed_not_within_a_voxel(parameters.stages[0].name, fixed, moving)
    fixed, moving, sparse = working_copies(fixed, moving)
    threads = parameters.number_of_threads or (1 if parameters.seed is not None else None)
    limit = thread_limit()  # --threads / threads.limit_threads: the global default is that limit already
    if threads and limit is not None:
        threads = min(int(threads), limit)
    saved_threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    if threads:
        # the metric's threader takes the global default (the method's own setting does not reach it)
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(int(threads))
    try:
        result = _register_stages(fixed, moving, parameters, fixed_mask, moving_mask, initial_transform, progress, t0)
        result.warnings[:0] = sparse
        # the thread count that ran (ITK clamps a request to its maximum): null in the settings is 1 with a
        # seed, ITK's default (the CPU's cores) without
        result.parameters["effective"] = {
            "number_of_threads": int(sitk.ProcessObject.GetGlobalDefaultNumberOfThreads())}
        return result
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(saved_threads)


def _register_stages(fixed: sitk.Image, moving: sitk.Image, parameters: RegistrationParameters,
                     fixed_mask: sitk.Image | None, moving_mask: sitk.Image | None,
                     initial_transform: sitk.Transform | None, progress: ProgressCallback | None,
                     t0: float) -> RegistrationResult:
    dim = fixed.GetDimension()
    # a B-spline first stage starts from the initializer's translation (centres or centres of mass aligned), as a
    # linear first stage and the torch backend do: it had started from the headers' placement, the initializer
    # ignored without a word (2D BrainWeb moved 32 mm: 32 mm off, reported as accepted)
    linear_start = _initializer_translation(fixed, moving, parameters, initial_transform, fixed_mask, moving_mask)
    previous = initial_transform if initial_transform is not None else linear_start
    stage_results: list[StageResult] = []
    # levels that grow coarser run as given (ITK takes any order) but end the stage coarse: a warning per stage,
    # as the torch backend gives, on the shrink factors as they run (every listed stage runs)
    order = (_level_order_warning(stage, _run_shrink_factors(stage, fixed, moving)) for stage in parameters.stages)
    warnings: list[str] = [w for w in order if w] + small_mask_warnings(fixed_mask, moving_mask)
    # a learning_rate that the optimizer does not take: said, not dropped without a word
    warnings += [w for w in (ignored_learning_rate_warning(stage, fixed) for stage in parameters.stages) if w]
    searched: sitk.Transform | None = None
    search_info: dict[str, Any] | None = None
    if parameters.initializer == "search" and initial_transform is None:
        from .rotation_search import search_rotation

        report(progress, 0.0, "rotation search: starting")
        searched, search_info = search_rotation(fixed, moving, parameters.stages[0], fixed_mask=fixed_mask,
                                                moving_mask=moving_mask, progress=scaled(progress, 0.0, SEARCH_SHARE))
        progress = scaled(progress, SEARCH_SHARE, 1.0)
    # a first linear stage started from the centres cannot come back from a rotation beyond about 30 degrees;
    # its failures say so (a rigid stage far off often hits its iteration limit, or is discarded)
    hint = (" If the images may be rotated more than about 30 degrees apart (e.g. prone vs supine), try the "
            "rotation search: initializer 'search' (CLI --initializer search)."
            if searched is None and initial_transform is None and parameters.stages[0].name in ("rigid", "affine")
            else "")
    # the first stage's own start, made once for the overlap and masks' checks, the stage itself and the overall
    # "before": a moments start sums both images, 0.07 s on a 160x192x192 volume and 0.15 s at 256^3 (one
    # thread), and it had been made twice, once for the checks and again when the stage ran
    first_stage_tx = _stage_transform(parameters.stages[0], fixed, moving, previous, parameters.initializer,
                                      searched, fixed_mask, moving_mask)
    first_start = compose(previous, first_stage_tx, dim, _image_center(fixed))
    first = start_kind(parameters.initializer, initial_transform is not None)
    # the fixed voxels (in the fixed mask) that the start sends inside the moving image (its mask), counted once
    # for both checks below: each had resampled the moving mask itself (about 0.1 s each at 256x256x200, one thread)
    overlap = start_overlap(fixed, moving, first_start, fixed_mask, moving_mask)
    if moving_mask is not None:
        # masks that do not meet where the first stage starts leave its metric no voxel (refused); few
        # voxels inside both, almost nothing (a warning)
        warnings += check_masks_meet(fixed, fixed_mask, moving_mask, first_start, start_description(first),
                                     start_fix(first, masks=True), count=overlap[1])
    # a start that shares under a fifth of the smaller image (or mask region, validation.MIN_START_OVERLAP) with the other: a warning
    warnings += small_overlap_warnings(fixed, moving, first_start, start_description(first), start_fix(first),
                                       fixed_mask, moving_mask, overlap=overlap)
    masked_start: dict[str, Any] | None = None
    # a mask narrows the metric's capture range: a masked first stage that the masked metric scores worse than the
    # unmasked coarsest level is run again from there (see _unmasked_start). Not with a mask of fewer than
    # MIN_CONTENT_VOXELS voxels (warned about above as too small to align, and refused as before where ITK cannot
    # sample it), nor a given start or the rotation search's (which searches with the masks)
    second_try = second_try_applies(parameters.stages[0].name, fixed_mask, moving_mask,
                                    initial_transform is not None or searched is not None)
    n = len(parameters.stages)
    effective: list[dict[str, Any]] = []
    for i, stage in enumerate(parameters.stages):
        report(progress, i / n, f"{stage.name}: starting")
        t_stage = time.perf_counter()
        before_stage = previous
        # a stage that may run again shares its part of the bar: its first run half, the check a tenth, the second
        # run the rest (the second run had gone back to the stage's start, 1.0 -> 0.0 for one stage)
        checked = i == 0 and second_try
        previous, res, ran_with = _run_stage(fixed, moving, stage, previous, parameters, fixed_mask, moving_mask,
                                             progress, ((i / n, (i + 0.5) / n) if checked else (i / n, (i + 1) / n)),
                                             searched if i == 0 else None,
                                             first if i == 0 else "earlier stages", first_stage_tx if i == 0 else None)
        if checked:
            report(progress, (i + 0.5) / n, f"{stage.name}: checking the result against an alignment without the masks")
            reached = res.metric_after if res.accepted else res.metric_before
            aligned, masked_start = _unmasked_start(fixed, moving, stage, first_stage_tx, parameters.seed,
                                                    fixed_mask, moving_mask, reached, previous, progress,
                                                    ((i + 0.5) / n, (i + 0.6) / n))
            if aligned is not None:
                first_res = res
                previous, second, ran_with = _run_stage(fixed, moving, stage, before_stage, parameters, fixed_mask,
                                                        moving_mask, progress, ((i + 0.6) / n, (i + 1) / n), None,
                                                        first, aligned)
                masked_start["second_try_accepted"] = bool(second.accepted)
                res = second_try_result(first_res, second, time.perf_counter() - t_stage)
                if not second.accepted:
                    warnings.append(second_try_warning(stage.name, stage.metric, second, reached))
            else:
                # the check is the stage's time too: its seconds had been the first run's alone, the unmasked coarse
                # level and its judging missing from every time shown (0.10 of 0.20 s on the 2D BrainWeb slice)
                res = dataclasses.replace(res, seconds=time.perf_counter() - t_stage)
        stage_results.append(res)
        effective.append(ran_with)
        if not res.accepted:
            change = abs(res.metric_after - res.metric_before) / max(abs(res.metric_before), 1e-12)
            if math.isfinite(res.metric_after) and change < 0.01:
                # before the first stage, or after earlier stages that were all discarded too, it is the start
                applied = any(r.accepted for r in stage_results[:-1])
                before = "the earlier stages" if applied else f"the start ({start_description(first)})"
                # a mutual information or correlation of about 0 is no shared information (a start that leaves
                # little overlap), not an alignment this stage could not better; mean squares of 0 is a match
                empty = stage.metric != "mean_squares" and abs(res.metric_before) < 1e-6
                why = (f"The metric is about 0 at {before}: the images share almost no information there "
                       "(little or no overlap, or a start far from the truth), so this stage had nothing to "
                       "improve; check the start." if empty else
                       f"A small change, usual where {before} already aligned the images as well as this stage's "
                       "transform can.")
                warnings.append(
                    f"Stage '{stage.name}' did not improve the {stage.metric} metric ({res.metric_before:.5g} -> "
                    f"{res.metric_after:.5g}, {100 * change:.2f}% worse on the same fixed points at its start and end); "
                    f"the transform before it was kept. " + why)
            else:
                warnings.append(
                    f"Stage '{stage.name}' made the {stage.metric} metric worse ({res.metric_before:.5g} -> "
                    f"{res.metric_after:.5g}); its result was discarded and the transform before it kept. "
                    "The stage probably failed: check the initial alignment, masks or preset." + hint)
        elif "maximum number of iterations" in res.stop_reason.lower():
            warnings.append(f"Stage '{stage.name}' stopped at its iteration limit ({stage.iterations} per level); "
                            "it may not have fully converged (raise 'iterations' if the result looks off)."
                            + (hint if i == 0 and stage.name == "rigid" else ""))
    report(progress, 1.0, "registration done")
    assert previous is not None
    # Overall before/after with the last stage's metric settings at both ends (stages may differ).
    last = parameters.stages[-1]
    if len(stage_results) == 1:
        # one stage: its own before/after are the overall ones (same points, same settings)
        only = stage_results[0]
        metric_before = only.metric_before
        metric_after = only.metric_after if only.accepted else only.metric_before
        start_total = previous
    else:
        start_total = first_start
        metric_before = evaluate_metric(fixed, moving, start_total, last, parameters.seed, fixed_mask, moving_mask)
        metric_after = evaluate_metric(fixed, moving, previous, last, parameters.seed, fixed_mask, moving_mask)
    if metric_after > metric_before:
        warnings.append(f"Registration made the {last.metric} metric worse overall ({metric_before:.5g} -> "
                        f"{metric_after:.5g}); the starting transform was kept. Check the inputs, masks and "
                        "initial alignment." + hint)
        previous, metric_after = start_total, metric_before
    recorded = parameters.to_dict()  # the settings as given; beside each stage's, what ran where they left it open
    for stage_dict, ran_with in zip(recorded["stages"], effective):
        stage_dict["effective"] = ran_with
    if masked_start is not None:
        recorded["stages"][0]["effective"]["masked_start"] = masked_start
    return RegistrationResult(
        transform=previous, stages=stage_results, metric_before=float(metric_before),
        metric_after=float(metric_after), warnings=warnings, seconds=time.perf_counter() - t0, backend="sitk",
        parameters=recorded, initializer=search_info)


def _initializer_translation(fixed: sitk.Image, moving: sitk.Image, parameters: RegistrationParameters,
                             initial_transform: sitk.Transform | None, fixed_mask: sitk.Image | None,
                             moving_mask: sitk.Image | None) -> sitk.Transform | None:
    """The linear start of a B-spline first stage: the initializer's translation ("geometry": the image
    centres, "moments": the centres of mass), None for "none", a given initial transform, or a first
    stage that is linear (which starts from the initializer itself, see :func:`_stage_transform`)."""
    if (initial_transform is not None or parameters.stages[0].name != "bspline"
            or parameters.initializer not in ("geometry", "moments")):
        return None
    return _stage_transform(StageParameters(name="rigid"), fixed, moving, None, parameters.initializer, None,
                            fixed_mask, moving_mask)


def start_kind(initializer: str, initial_transform: bool) -> str:
    """What made the first stage's starting transform, the key of :func:`start_fix` and
    :func:`start_description`: "initial transform" when one was given, else the initializer's name."""
    return "initial transform" if initial_transform else initializer


def start_description(kind: str) -> str:
    """How the first stage's starting transform was made (``kind``, from :func:`start_kind`), for messages:
    "initializer 'moments'", ..."""
    if kind == "initial transform":
        return "the initial transform given"
    if kind == "search":
        return "initializer 'search': the rotation search's best start"
    return f"initializer '{kind}'"


def describe_transform(transform: sitk.Transform) -> dict[str, Any]:
    """Type and parameters of a transform (for metrics.json; B-spline coefficients are summarised)."""
    info: dict[str, Any] = {"type": transform.GetName()}
    if isinstance(transform, sitk.CompositeTransform):
        info["transforms"] = [describe_transform(transform.GetNthTransform(i))
                              for i in range(transform.GetNumberOfTransforms())]
        return info
    params = transform.GetParameters()
    if len(params) <= 12:
        info["parameters"] = list(params)
        info["fixed_parameters"] = list(transform.GetFixedParameters())
    else:
        info["number_of_parameters"] = len(params)
    return info
