"""PyTorch registration backend: affine and diffeomorphic instance optimisation, CPU or GPU.

The same images, masks, seed, progress callback and :class:`RegistrationResult` as the
SimpleITK backend; the transform it returns is a plain SimpleITK transform, so resampling,
the CLI, the Slicer module and the report need nothing special:

- linear stages ("rigid", "affine"): ``sitk.AffineTransform`` (x -> A (x - c) + c + t, fixed
  physical point to moving physical point, ITK's resampling convention);
- a deformable stage ("deformable"; "bspline" and "syn" from other parameter sets map to it):
  a stationary velocity field integrated by scaling and squaring (a diffeomorphism),
  exported as ``sitk.DisplacementFieldTransform`` on the fixed grid (displacements in mm,
  LPS) inside ``sitk.CompositeTransform([affine, displacement])``; ITK applies the last
  transform added first, so a fixed point x goes to ``affine(x + u(x))``.

How geometry is handled: torch samples images in normalised coordinates ([-1, 1] across
the voxel centres, ``align_corners=True``). All mappings are built as small homogeneous
matrices in float64 (fixed normalised -> fixed index -> fixed physical -> affine -> moving
physical -> moving index -> moving normalised), so origin, spacing and any direction matrix
are honoured exactly; only the dense grids are float32.

Metrics: mutual information (multimodal; Mattes' B-spline Parzen windows by default, MONAI's
``GlobalMutualInformationLoss`` with ``mi_window="gaussian"``; the linear stages sample a fixed
set of voxels, like SimpleITK's random sampling), local normalised
cross-correlation (MONAI, one modality) and MIND-SSC descriptors (multimodal, the default of
the deformable stage). Regularisation: diffusion or bending energy of the velocity (MONAI's
definitions, re-written with tuple indexing, which torch requires).

torch and MONAI are imported inside the functions (``import MultimodalFusionLib`` stays fast).
"""

from __future__ import annotations

import dataclasses
import math
import secrets
import time
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from ..devices import device_name_ok, select_device
from ..errors import InputError, RegistrationError
from ..progress import ProgressCallback, report, scaled
from ..validation import (
    check_deformable_size,
    check_mask,
    check_masks_meet,
    check_min_axis,
    check_pair,
    did_you_mean,
    masks_reach,
    small_mask_warnings,
    small_overlap_warnings,
    start_overlap,
    whole_number,
)
from .parameters import MAX_SEED, StageParameters, check_seed
from .result import RegistrationResult, StageResult, iterations_per_level
from .rotation_search import search_rotation
from .sitk_backend import (
    SEARCH_SHARE,
    centre_of_mass,
    check_fixed_not_within_a_voxel,
    extent_clause,
    judge_unmasked_start,
    level_list,
    masks_metric_error,
    mean_distance,
    no_overlap_error,
    off_background,
    second_try_applies,
    second_try_result,
    second_try_warning,
    sigma_text,
    start_description,
    start_fix,
    start_kind,
)

__all__ = [
    "TorchRegistrationParameters",
    "TORCH_STAGES",
    "TORCH_METRICS",
    "register_torch",
    "resample_torch",
    "select_device",
    "torch_parameters",
    "conversion_warnings",
]

TORCH_STAGES = ("rigid", "affine", "deformable")
TORCH_METRICS = ("mi", "lncc", "mind")
_STAGE_ALIASES = {"rigid": "rigid", "affine": "affine", "deformable": "deformable", "bspline": "deformable",
                  "syn": "deformable", "diffeomorphic": "deformable"}
#: Largest ``velocity_sigma`` (voxels of the velocity grid): wider smoothing leaves a nearly constant field.
_MAX_VELOCITY_SIGMA = 50.0
_METRIC_ALIASES = {"mi": "mi", "mattes_mi": "mi", "mutual_information": "mi", "lncc": "lncc",
                   "correlation": "lncc", "mean_squares": "lncc", "ncc": "lncc", "mind": "mind"}


@dataclasses.dataclass
class TorchRegistrationParameters:
    """Settings of the torch backend (defaults tuned on MNI152 T1 vs synthetic T2).

    It has the ``seed``, ``validate()``, ``with_stages()`` and ``to_dict()`` of
    :class:`RegistrationParameters`, so ``registration.register(..., parameters=TorchRegistrationParameters(),
    backend="torch")`` works; a :class:`RegistrationParameters` is converted with :func:`torch_parameters`.

    Attributes:
        stages: run in order: "rigid", "affine" (linear) and "deformable" (stationary velocity field).
        initializer: "moments" (align centres of mass, by ``sitk_backend.centre_of_mass``: the rule of
            the sitk backend), "geometry" (align image centres), "none" or
            "search" (centres of mass, then the rotation search of ``rotation_search``, run by
            SimpleITK on the CPU, as the sitk backend runs it; needs a linear first stage); ignored
            when an initial transform is given.
        seed: seed of the voxel sampling (same seed, same device and thread count -> same result).
        linear_metric: "mi" (multimodal), "lncc" or "mind".
        linear_shrink_factors: linear stages' pyramid, coarse to fine (another order runs as given, with a
            warning when a level is coarser than the one before).
        linear_smoothing_sigmas: Gaussian sigma of each linear level, one per ``linear_shrink_factors`` entry, in
            voxels of the finest fixed voxel (the unit of the shrink factors: the same mm along every axis and for
            both images), or in mm with ``linear_smoothing_in_mm``; 0 leaves a level unsmoothed. None (the
            default): half of each coarse level's voxel size, the finest level not at all ([2, 1, 0] for shrink
            [4, 2, 1]). From SimpleITK settings (a preset) the first rigid/affine stage's ``smoothing_sigmas``.
        linear_smoothing_in_mm: ``linear_smoothing_sigmas`` are in mm (SimpleITK's ``smoothing_in_mm``).
        linear_iterations: Adam iterations per level of the linear stages.
        linear_learning_rate: Adam step (about radians of rotation; translation in units of the
            image's half extent).
        linear_samples: fixed voxels sampled per level for the "mi" metric (0: all voxels): inside the fixed mask,
            or without one on the fixed image's content and a rim around it (:meth:`_Context.content_region`).
        histogram_bins: Parzen histogram bins of mutual information.
        mi_window: "bspline" (Mattes' windows as ITK's Mattes MI: O(N) work, the default) or
            "gaussian" (MONAI's ``GlobalMutualInformationLoss``: O(N x bins), slower on the CPU).
        deformable_metric: "mind" (multimodal, default), "mi" or "lncc" (one modality).
        deformable_level_spacing_mm: voxel size of the deformable stage's levels, coarse to fine
            (a level is never finer than the fixed image; levels that coincide are merged). In mm
            rather than shrink factors because MIND and the velocity smoothness are physical
            scales: a 3 mm image shrunk by 4 (12 mm voxels) has no usable descriptors. Another order runs
            as given, with a warning when a level is coarser than the one before.
        deformable_iterations: Adam iterations per deformable level.
        deformable_learning_rate: Adam step of the velocity field, in voxels of the level.
        regularisation: "diffusion" (first derivatives) or "bending" (second derivatives).
        regularisation_weight: weight of the regulariser against the similarity.
        velocity_sigma: Gaussian smoothing of the velocity field, in voxels of its grid (0..50).
        velocity_grid_factor: the velocity field lives on a grid this many times coarser than
            the level's image grid (its displacement is upsampled to warp): smoother and faster.
        deformable_foreground_mask: when no fixed mask is given, the deformable similarity (and the
            linear stages' with ``linear_metric="mind"``) counts only the fixed image's foreground
            (above 2% of its intensity range, dilated by 3 mm): background holds nothing to align,
            while the other modality may show structure there (e.g. the skull and scalp that a
            skull-stripped T1 lacks, or noise that MIND's normalisation turns into descriptors),
            which would pull the field or the affine.
        deformable_samples: fixed voxels (inside the fixed mask) drawn afresh each iteration for
            the "mind" and "mi" similarity of the deformable stage (0: every voxel).
        integration_steps: scaling-and-squaring steps (the field is divided by 2**steps).
        lncc_kernel: window of local NCC, voxels.
        mind_radius: MIND patch radius, voxels.
        mind_dilation: MIND neighbour distance, voxels.
        device: "auto" (CUDA when available, else CPU), "cpu", "cuda", "cuda:1", ...
        mixed_precision: on CUDA, compute the similarity under ``torch.autocast`` (bfloat16 where
            supported); the velocity field, its integration and the geometry stay float32.
        name: name for reports.
        description: what these settings are for.
    """

    stages: list[str] = dataclasses.field(default_factory=lambda: ["affine", "deformable"])
    initializer: str = "moments"
    seed: int | None = 42
    linear_metric: str = "mi"
    linear_shrink_factors: list[int] = dataclasses.field(default_factory=lambda: [4, 2, 1])
    linear_smoothing_sigmas: list[float] | None = None
    linear_smoothing_in_mm: bool = False
    linear_iterations: list[int] = dataclasses.field(default_factory=lambda: [150, 80, 40])
    linear_learning_rate: float = 0.02
    linear_samples: int = 20000
    histogram_bins: int = 32
    mi_window: str = "bspline"
    deformable_metric: str = "mind"
    deformable_level_spacing_mm: list[float] = dataclasses.field(default_factory=lambda: [4.0, 2.0])
    deformable_iterations: list[int] = dataclasses.field(default_factory=lambda: [100, 50])
    deformable_learning_rate: float = 0.2
    regularisation: str = "diffusion"
    regularisation_weight: float = 1.0
    velocity_sigma: float = 2.0
    velocity_grid_factor: int = 2
    deformable_samples: int = 100000
    deformable_foreground_mask: bool = True
    integration_steps: int = 7
    lncc_kernel: int = 7
    mind_radius: int = 1
    mind_dilation: int = 2
    device: str = "auto"
    mixed_precision: bool = True
    name: str = "torch-default"
    description: str = ""

    def validate(self) -> None:
        """Raise InputError naming a bad setting and the allowed values."""
        def bad(field: str, value: Any, allowed: str) -> InputError:
            return InputError(f"Torch registration: invalid {field} {value!r}.", f"Use {allowed}.")

        def number(field: str, *, whole: bool = False, low: float | None = None, high: float | None = None,
                   low_open: bool = False, allowed: str = "") -> None:
            value = getattr(self, field)
            try:
                x = float(value)
            except (TypeError, ValueError):
                x = float("nan")
            ok = (math.isfinite(x) and (not whole or (x == int(x) and not isinstance(value, bool)))
                  and (low is None or (x > low if low_open else x >= low)) and (high is None or x <= high))
            if not ok:
                raise bad(field, value, allowed)

        if isinstance(self.stages, str):
            raise bad("stages", self.stages, "a list of stage names, e.g. ['affine', 'deformable']")
        if not self.stages:
            raise bad("stages", self.stages, "at least one of " + ", ".join(TORCH_STAGES))
        for stage in self.stages:
            if _STAGE_ALIASES.get(str(stage).lower()) is None:
                raise bad("stage", stage, " / ".join(TORCH_STAGES) + did_you_mean(stage, _STAGE_ALIASES))
        for field in ("linear_metric", "deformable_metric"):
            if _METRIC_ALIASES.get(str(getattr(self, field)).lower()) is None:
                raise bad(field, getattr(self, field),
                          " / ".join(TORCH_METRICS) + did_you_mean(getattr(self, field), _METRIC_ALIASES))
        if self.initializer not in ("moments", "geometry", "none", "search"):
            raise bad("initializer", self.initializer, "moments / geometry / none / search")
        if self.initializer == "search" and _STAGE_ALIASES.get(str(self.stages[0]).lower()) not in ("rigid", "affine"):
            raise InputError(f"The 'search' initializer searches rotations for a rigid or affine first stage, but "
                             f"the first stage is '{self.stages[0]}'.",
                             "Put a rigid or affine stage first (e.g. stages affine,deformable), or use initializer "
                             "'moments'.")
        if self.mi_window not in ("bspline", "gaussian"):
            raise bad("mi_window", self.mi_window, "bspline / gaussian")
        if self.regularisation not in ("diffusion", "bending"):
            raise bad("regularisation", self.regularisation, "diffusion / bending")
        for levels_name, iters_name in (("linear_shrink_factors", "linear_iterations"),
                                        ("deformable_level_spacing_mm", "deformable_iterations")):
            levels, iters = getattr(self, levels_name), getattr(self, iters_name)
            for field, value in ((levels_name, levels), (iters_name, iters)):
                if not isinstance(value, (list, tuple, np.ndarray)):
                    raise bad(field, value, "a list with one entry per pyramid level, coarse to fine")
            if not levels or len(levels) != len(iters):
                raise bad(f"{levels_name}/{iters_name}", (levels, iters),
                          "two lists of the same, non-zero length (one entry per pyramid level)")
            # each list named on its own: 1.5 shrink had been truncated to 1 without a word, an infinite
            # iteration count ended in an OverflowError traceback, True counted as 1 iteration
            if levels_name == "linear_shrink_factors":
                if any(whole_number(f, 1) is None for f in levels):
                    raise bad(levels_name, levels, "whole numbers >= 1, coarse to fine, e.g. [4, 2, 1]")
            elif not all(_positive_number(f) for f in levels):
                raise bad(levels_name, levels, "positive, finite voxel sizes in mm, coarse to fine, e.g. [4, 2]")
            if any(whole_number(i, 0) is None for i in iters):
                raise bad(iters_name, iters, f"whole numbers >= 0, one per level of {levels_name}")
        sigmas = self.linear_smoothing_sigmas
        if sigmas is not None:
            # one sigma per linear level, as SimpleITK's smoothing_sigmas per shrink factor: a shorter list would
            # leave levels without one, a NaN or negative sigma ends inside ITK's Gaussian or torch's conv
            levels = len(self.linear_shrink_factors)
            if (not isinstance(sigmas, (list, tuple, np.ndarray)) or len(sigmas) != levels
                    or not all(_finite_at_least_zero(x) for x in sigmas)):
                raise bad("linear_smoothing_sigmas", sigmas,
                          f"{levels} finite number(s) >= 0, one per level of linear_shrink_factors "
                          f"{level_list(self.linear_shrink_factors)} (voxels of the finest fixed voxel, or mm with "
                          "linear_smoothing_in_mm; 0: unsmoothed), e.g. [2, 1, 0] for [4, 2, 1], or None for half "
                          "of each coarse level's voxel size")
        if not isinstance(self.linear_smoothing_in_mm, (bool, np.bool_)):  # "no" would count as True
            raise bad("linear_smoothing_in_mm", self.linear_smoothing_in_mm, "True or False")
        if (any(_STAGE_ALIASES.get(str(s).lower()) == "deformable" for s in self.stages)
                and not any(int(i) for i in self.deformable_iterations)):
            # the stage had run no iteration and returned a zero displacement field, accepted without a word
            # (its metric "improved" from x to x): the linear stages' 0 iterations keep the start transform on
            # purpose (the initializer alone), a deformable stage's 0 would only add an empty field
            raise InputError(f"Torch registration: deformable_iterations {self.deformable_iterations!r} run no "
                             "iteration at any deformable level, so the deformable stage would return a zero "
                             "displacement field.",
                             "Give at least one level some iterations (the default is [100, 50]), or leave "
                             "'deformable' out of stages to keep the linear result alone.")
        number("histogram_bins", whole=True, low=4, high=256, allowed="a whole number 4..256 (typically 32)")
        number("integration_steps", whole=True, low=0, high=16, allowed="0..16 (7 is typical)")
        number("regularisation_weight", low=0, allowed="a finite number >= 0")
        # a Gaussian of sigma s takes 6 s + 1 taps, padded onto every row of the field: 1e9 voxels asked
        # torch for 24 GB (a RuntimeError from its allocator), 1e300 overflowed; 50 voxels is wider than
        # any velocity grid of a head and still costs little
        number("velocity_sigma", low=0, high=_MAX_VELOCITY_SIGMA,
               allowed=f"a number from 0 to {_MAX_VELOCITY_SIGMA:g} voxels of the velocity grid (2 is typical)")
        for field in ("linear_learning_rate", "deformable_learning_rate"):
            number(field, low=0, low_open=True, high=10, allowed="a finite number > 0 (e.g. 0.02 / 0.2)")
        for field in ("linear_samples", "deformable_samples"):
            number(field, whole=True, low=0, allowed="a whole number >= 0 (0: every voxel)")
        number("velocity_grid_factor", whole=True, low=1, high=16, allowed="a whole number 1..16")
        number("mind_radius", whole=True, low=1, high=8, allowed="a whole number 1..8 (1 is typical)")
        number("mind_dilation", whole=True, low=1, high=8, allowed="a whole number 1..8 (2 is typical)")
        number("lncc_kernel", whole=True, low=3, high=31, allowed="an odd whole number 3..31 (7 is typical)")
        if int(self.lncc_kernel) % 2 == 0:
            raise bad("lncc_kernel", self.lncc_kernel, "an odd whole number 3..31 (7 is typical)")
        if self.seed is not None:
            # the SimpleITK backend's range (torch's generators would take 64-bit seeds, this one and seed + 1):
            # one rule for a registration's seed whichever backend runs it
            check_seed(self.seed)
        if not isinstance(self.mixed_precision, (bool, np.bool_)):  # "no" would count as True
            raise bad("mixed_precision", self.mixed_precision, "True or False")
        if not device_name_ok(self.device):
            raise bad("device", self.device, "'auto', 'cpu', 'cuda' or 'cuda:N'")

    def with_stages(self, names: Sequence[str]) -> TorchRegistrationParameters:
        """A copy running ``names`` in order ("rigid", "affine", "deformable"; "bspline"/"syn" = deformable)."""
        stages = []
        for name in names:
            key = _STAGE_ALIASES.get(str(name).strip().lower())
            if key is None:
                raise InputError(f"Unknown torch registration stage '{name}'{did_you_mean(name, _STAGE_ALIASES)}.",
                                 f"Use a comma-separated list of {', '.join(TORCH_STAGES)}.")
            stages.append(key)
        return dataclasses.replace(self, stages=stages)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


#: Histogram bins a SimpleITK stage's count is kept within when converted (the torch MI samples 20 000 voxels).
_MIN_CARRIED_BINS, _MAX_CARRIED_BINS = 8, 64


def _carried_bins(bins: int) -> int:
    """The histogram bins a torch run takes from a SimpleITK stage's ``bins`` (:func:`_given_bins`): kept within
    ``_MIN_CARRIED_BINS``..``_MAX_CARRIED_BINS``."""
    return int(min(max(bins, _MIN_CARRIED_BINS), _MAX_CARRIED_BINS))


def _given_bins(stage: Any) -> int | None:
    """A SimpleITK stage's histogram bins when given, None when left out (``histogram_bins`` None).

    A stage that leaves ``histogram_bins`` out (a preset's ``{"name": "affine"}``, a stage ``--stages`` adds
    that the preset does not list, ``StageParameters(name="affine")``) holds None, which the SimpleITK backend
    runs as 50 and a torch run as its own default (32, as without settings). Any count given is carried, 50
    too: while a stage's default was 50 (and the rigid type's 32), a count equal to either read as not given,
    so an explicit 50 had run 32 bins. The rigid and B-spline stages of ``default_stage`` choose 32, the torch
    default too.
    """
    bins = getattr(stage, "histogram_bins", None)
    return None if whole_number(bins, 1) is None else int(bins)


def _level_sigma_mm(shrink: float, base_spacing: float) -> float:
    """The torch pyramid's own smoothing of a level (mm): half its voxel size, the finest level not at all (with
    ``base_spacing`` 1, in voxels of the finest fixed voxel)."""
    return 0.5 * base_spacing * float(shrink) if float(shrink) > 1.0 + 1e-6 else 0.0


def _linear_sigmas_mm(p: TorchRegistrationParameters, base_spacing: float) -> list[float]:
    """The sigma (mm) each linear level is smoothed by: ``linear_smoothing_sigmas`` (voxels of ``base_spacing``,
    the finest fixed voxel, or mm), or the torch pyramid's own rule when they are None."""
    if p.linear_smoothing_sigmas is None:
        return [_level_sigma_mm(f, base_spacing) for f in p.linear_shrink_factors]
    scale = 1.0 if p.linear_smoothing_in_mm else base_spacing
    return [float(x) * scale for x in p.linear_smoothing_sigmas]


def _torch_sigmas(shrink: Sequence[float]) -> list[float]:
    """The sigmas the torch pyramid smooths its levels of ``shrink`` with, in voxels of the finest fixed voxel
    (:func:`_level_sigma_mm`'s rule)."""
    return [_level_sigma_mm(f, 1.0) for f in shrink]


def _same_smoothing(sigmas: Sequence[float], in_mm: bool, other: Sequence[float], other_in_mm: bool) -> bool:
    """Whether two lists of level sigmas smooth alike: the same numbers in the same unit, or none at all."""
    a, b = [float(x) for x in sigmas], [float(x) for x in other]
    if len(a) != len(b):
        return False
    return a == b and (in_mm == other_in_mm or not any(a))


def _smoothing_words(p: TorchRegistrationParameters) -> str:
    """How the torch run smooths its linear levels, for a warning."""
    if p.linear_smoothing_sigmas is None:
        return (f"each smoothed by half its voxel size (sigmas {level_list(_torch_sigmas(p.linear_shrink_factors))} "
                "in voxels of the finest fixed voxel, the same mm along every axis)")
    unit = "mm" if p.linear_smoothing_in_mm else "voxels of the finest fixed voxel, the same mm along every axis"
    return f"smoothed by linear_smoothing_sigmas {level_list(p.linear_smoothing_sigmas)} ({unit})"


def _pyramid_warnings(parameters: Any, converted: TorchRegistrationParameters) -> list[str]:
    """A warning for each SimpleITK stage whose pyramid (shrink factors, smoothing sigmas) the torch run does not
    follow: a later linear stage's shrink factors and sigmas unless they are those that run (the first linear
    stage's, carried into ``linear_shrink_factors`` and ``linear_smoothing_sigmas``: one pyramid serves every
    linear stage), the first's only where torch settings on the parameters replaced them, and a B-spline stage's
    levels, control grid and metric (its torch stand-in is the deformable stage). They had been dropped without a
    word. The first linear stage's sigmas had been warned about too, on every shipped preset, while the torch
    pyramid smoothed each level by half its voxel size; they are now carried. A stage that ``with_stages`` added
    with its type's defaults (``added_stages``: ``--preset ct-mr-head --stages rigid,deformable``) is not warned
    about: nobody wrote its settings (:func:`_added_stages`)."""
    shrink = [int(f) for f in converted.linear_shrink_factors]
    if converted.linear_smoothing_sigmas is None:
        run_sigmas, run_mm = _torch_sigmas(shrink), False
    else:
        run_sigmas, run_mm = list(converted.linear_smoothing_sigmas), bool(converted.linear_smoothing_in_mm)
    out = []
    first_linear = True
    added = _added_stages(parameters)
    for index, stage in enumerate(parameters.stages):
        kind = _STAGE_ALIASES.get(str(getattr(stage, "name", "")).lower())
        if index in added:
            first_linear = first_linear and kind not in ("rigid", "affine")
            continue
        given_shrink = list(getattr(stage, "shrink_factors", None) or [])
        given_sigmas = list(getattr(stage, "smoothing_sigmas", None) or [])
        in_mm = bool(getattr(stage, "smoothing_in_mm", False))
        if kind in ("rigid", "affine"):
            unused = []
            same_levels = [int(f) for f in given_shrink] == shrink
            if not same_levels:
                unused.append(f"shrink_factors {level_list(given_shrink)}")
            if not same_levels or not _same_smoothing(given_sigmas, in_mm, run_sigmas, run_mm):
                unused.append(f"smoothing_sigmas {level_list(given_sigmas)}" + (" mm" if in_mm else ""))
            if unused:
                levels = ("it runs the levels " if first_linear else
                          "every linear stage runs the first linear stage's levels, ")
                out.append(f"The {stage.name} stage's {' and '.join(unused)} are not used on the torch backend: "
                           f"{levels}linear_shrink_factors {level_list(shrink)}, {_smoothing_words(converted)}; "
                           "the SimpleITK backend runs them as given.")
            first_linear = False
        elif kind == "deformable" and given_shrink:
            metric = str(getattr(stage, "metric", ""))
            metric_note = ("" if _METRIC_ALIASES.get(metric.lower()) == converted.deformable_metric else
                           f", metric {metric} (it runs {converted.deformable_metric})")
            out.append(f"The {stage.name} stage runs as the torch backend's deformable stage (a velocity field, not "
                       f"a B-spline): its shrink_factors {level_list(given_shrink)}, smoothing_sigmas "
                       f"{level_list(given_sigmas)}{' mm' if in_mm else ''}, mesh_size {getattr(stage, 'mesh_size', '')}"
                       f"{metric_note} are not used: it runs deformable_level_spacing_mm "
                       f"{level_list(converted.deformable_level_spacing_mm)} (mm), each smoothed by half its voxel "
                       "size (TorchRegistrationParameters sets its levels and metric).")
    return out


def _added_stages(parameters: Any) -> set[int]:
    """Positions of the stages ``with_stages`` added to SimpleITK settings with their type's defaults (a stage
    ``--stages`` names that the preset does not list): what it holds was never written by anyone, so it is not
    warned about as a preset's own setting would be. ``--preset ct-mr-head --stages rigid,deformable`` had warned
    that the B-spline stage's shrink_factors [2, 1], smoothing_sigmas [1, 0], mesh_size 4 and metric mattes_mi
    were not used, and ``--stages rigid,affine`` that the affine stage's smoothing_sigmas [2, 1, 0] were not."""
    added = getattr(parameters, "added_stages", None) or ()
    return {int(i) for i in added}


def conversion_warnings(parameters: Any) -> list[str]:
    """What :func:`torch_parameters` changes or leaves out of SimpleITK settings, as warnings.

    Empty for torch settings, dicts and None; for a ``RegistrationParameters`` (a preset): bins given
    outside 8..64 (clamped, which had been silent), linear stages after the first that ask for other
    bins or another metric (the torch backend runs every linear stage with one count and one metric, the
    first's), and the stages' pyramids the torch run does not follow (:func:`_pyramid_warnings`). Iterations,
    learning rates, sampling and the optimizer are never carried (Adam's steps are not SimpleITK's), and not
    warned about.
    """
    if parameters is None or isinstance(parameters, (dict, TorchRegistrationParameters)) \
            or not hasattr(parameters, "stages"):
        return []
    converted = torch_parameters(parameters)
    pyramids = _pyramid_warnings(parameters, converted)
    added = _added_stages(parameters)
    linear = [(i in added, s) for i, s in enumerate(parameters.stages)
              if _STAGE_ALIASES.get(str(getattr(s, "name", "")).lower()) in ("rigid", "affine")]
    if not linear:
        return pyramids
    out = []
    first_added, first_stage = linear[0]
    first = _given_bins(first_stage)
    used = TorchRegistrationParameters().histogram_bins if first is None else _carried_bins(first)
    if first is not None and used != first and not first_added:
        out.append(f"The {first_stage.name} stage's {first} histogram bins are outside the {_MIN_CARRIED_BINS}-"
                   f"{_MAX_CARRIED_BINS} the torch backend takes from SimpleITK settings: it runs with {used}. "
                   "Give histogram_bins within that range, or TorchRegistrationParameters(histogram_bins=...) "
                   "for another count.")
    for stage_added, stage in linear[1:]:
        if stage_added:  # its type's defaults, which nobody wrote (an affine stage's mattes_mi after correlation)
            continue
        bins = _given_bins(stage)
        if bins is not None and bins != used:
            out.append(f"The torch backend runs every linear stage with one histogram bin count, the first "
                       f"linear stage's ({used}): the {stage.name} stage's {bins} bins are not used.")
        # one metric serves every linear stage too: [rigid mattes_mi, affine correlation] had run the affine
        # stage on mutual information without a word
        metric = str(getattr(stage, "metric", ""))
        if _METRIC_ALIASES.get(metric.lower(), "mi") != converted.linear_metric:
            out.append(f"The torch backend runs every linear stage with one metric, the first linear stage's "
                       f"({first_stage.metric}: linear_metric {converted.linear_metric}): the {stage.name} stage's "
                       f"metric {metric} is not used.")
    return out + pyramids


def torch_parameters(parameters: Any = None, **overrides: Any) -> TorchRegistrationParameters:
    """Torch settings from the SimpleITK backend's :class:`RegistrationParameters`, a dict, or None.

    From a ``RegistrationParameters`` the stage list ("rigid"/"affine" -> linear stages,
    "bspline" -> "deformable"), the initializer, the seed, the first linear stage's shrink
    factors, smoothing sigmas (``smoothing_in_mm`` with them) and metric and its histogram bins when given (kept
    within 8..64; bins left out (None) run the torch default 32, as without settings; :func:`conversion_warnings`
    says when bins were clamped or differ between linear stages) are kept; optimiser settings (iterations,
    learning rates) are the torch defaults, because Adam steps are not comparable with SimpleITK's optimisers.

    Args:
        parameters: None (defaults), a TorchRegistrationParameters, a RegistrationParameters
            (or anything with a ``stages`` list of objects with ``name``), or a dict of fields.
        overrides: fields of TorchRegistrationParameters to set.

    Raises:
        InputError: unknown fields or values.
    """
    carried_sigmas = None  # the levels a SimpleITK stage's sigmas were carried with
    if parameters is None:
        out = TorchRegistrationParameters()
    elif isinstance(parameters, TorchRegistrationParameters):
        out = dataclasses.replace(parameters)
    elif isinstance(parameters, dict):
        known = {f.name for f in dataclasses.fields(TorchRegistrationParameters)}
        unknown = sorted(set(parameters) - known, key=str)
        if unknown:
            raise InputError("Unknown torch registration setting(s) "
                             + ", ".join(f"'{k}'{did_you_mean(k, known)}" for k in unknown) + ".",
                             f"Use only: {', '.join(sorted(known))}.")
        out = TorchRegistrationParameters(**parameters)
    elif hasattr(parameters, "stages"):
        out = TorchRegistrationParameters()
        stage_objs = list(parameters.stages)
        names = [_STAGE_ALIASES.get(str(getattr(s, "name", s)).lower(), "?") for s in stage_objs]
        if "?" in names:
            raise InputError(f"A registration stage of {[getattr(s, 'name', s) for s in stage_objs]} has no torch "
                             "equivalent.", f"Use stages among {', '.join(TORCH_STAGES)} or 'bspline'.")
        out.stages = names
        linear = [s for s in stage_objs if _STAGE_ALIASES.get(str(getattr(s, "name", "")).lower()) in
                  ("rigid", "affine")]
        if linear:
            first = linear[0]
            metric = _METRIC_ALIASES.get(str(getattr(first, "metric", "mi")).lower(), "mi")
            out.linear_metric = metric
            bins = _given_bins(first)
            if bins is not None:
                out.histogram_bins = _carried_bins(bins)
            shrink = list(getattr(first, "shrink_factors", out.linear_shrink_factors) or out.linear_shrink_factors)
            if shrink and shrink != out.linear_shrink_factors:
                out.linear_iterations = [int(out.linear_iterations[min(i, len(out.linear_iterations) - 1)])
                                         for i in range(len(shrink))]
                out.linear_shrink_factors = [int(f) for f in shrink]
            # its smoothing too, one sigma per shrink factor (StageParameters.validate holds them to one each):
            # the torch pyramid had smoothed every preset's levels by half their voxel size, and warned that the
            # preset's sigmas (4-2-0 voxels for the rigid stage of ct-mr-head) were not used
            sigmas = getattr(first, "smoothing_sigmas", None)
            if isinstance(sigmas, (list, tuple)) and len(sigmas) == len(out.linear_shrink_factors):
                out.linear_smoothing_sigmas = [float(x) for x in sigmas]
                out.linear_smoothing_in_mm = bool(getattr(first, "smoothing_in_mm", False))
                carried_sigmas = list(out.linear_shrink_factors)
        deform = [s for s in stage_objs if _STAGE_ALIASES.get(str(getattr(s, "name", "")).lower()) == "deformable"]
        if deform and _METRIC_ALIASES.get(str(getattr(deform[0], "metric", "")).lower()) == "lncc":
            out.deformable_metric = "lncc"
        init = getattr(parameters, "initializer", None)
        if init in ("moments", "geometry", "none", "search"):
            out.initializer = init
        if getattr(parameters, "seed", None) is not None:  # unseeded: keep the torch default (42)
            out.seed = parameters.seed
        out.name = str(getattr(parameters, "name", out.name))
        # a ``torch`` dict on the parameters (if a preset carries one) overrides the defaults
        extra = getattr(parameters, "torch", None)
        if isinstance(extra, dict):
            out = dataclasses.replace(out, **extra)
            carried_sigmas = _sigmas_replaced(out, extra, carried_sigmas)
    else:
        raise InputError(f"Torch registration parameters of type {type(parameters).__name__} are not supported.",
                         "Pass a TorchRegistrationParameters, a RegistrationParameters, a dict or None.")
    if overrides:
        out = dataclasses.replace(out, **overrides)
        carried_sigmas = _sigmas_replaced(out, overrides, carried_sigmas)
    if carried_sigmas is not None and (not isinstance(out.linear_shrink_factors, (list, tuple, np.ndarray))
                                       or list(out.linear_shrink_factors) != carried_sigmas):
        # the stage's sigmas belong to its shrink factors: levels given in their place (a ``torch`` dict,
        # overrides) without sigmas of their own run the torch rule rather than be refused for the stage's
        out.linear_smoothing_sigmas, out.linear_smoothing_in_mm = None, False
    out.stages = [_STAGE_ALIASES.get(str(s).lower(), str(s)) for s in out.stages]
    out.linear_metric = _METRIC_ALIASES.get(str(out.linear_metric).lower(), str(out.linear_metric))
    out.deformable_metric = _METRIC_ALIASES.get(str(out.deformable_metric).lower(), str(out.deformable_metric))
    out.validate()
    return out


def _sigmas_replaced(out: TorchRegistrationParameters, given: dict[str, Any],
                     carried: list[int] | None) -> list[int] | None:
    """After torch settings ``given`` (a ``torch`` dict, overrides) were applied to ``out``: the levels a SimpleITK
    stage's sigmas are still carried with, None where ``given`` replaced the sigmas. The stage's
    ``smoothing_in_mm`` goes with its sigmas: sigmas given without ``linear_smoothing_in_mm`` are in the torch
    unit (voxels), as :class:`TorchRegistrationParameters` documents; a stage in mm had made ``[2, 1, 0]`` given in
    a preset's ``torch`` dict run as 2 mm (half a voxel of a 4 mm image, not 8 mm), and left ``linear_smoothing_in_mm``
    true beside sigmas given as None."""
    if carried is None or "linear_smoothing_sigmas" not in given:
        return carried
    if "linear_smoothing_in_mm" not in given:
        out.linear_smoothing_in_mm = False
    return None


def _finite_number(value: Any) -> bool:
    """``value`` is a finite real number (not a bool, a string or None)."""
    return (not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, float, np.integer, np.floating))
            and math.isfinite(float(value)))


def _finite_at_least_zero(value: Any) -> bool:
    """``value`` is a finite real number >= 0 (not a bool, a string or None)."""
    return _finite_number(value) and float(value) >= 0


def _positive_number(value: Any) -> bool:
    """``value`` is a finite number > 0 (not a bool or a string)."""
    return _finite_number(value) and float(value) > 0


# --------------------------------------------------------------------------------------------
# geometry: homogeneous matrices between normalised, index and physical coordinates (float64)

def _index_to_physical(image: sitk.Image) -> np.ndarray:
    """(d+1)x(d+1) matrix: continuous index (x, y, z) -> physical LPS point."""
    dim = image.GetDimension()
    direction = np.array(image.GetDirection(), float).reshape(dim, dim)
    out = np.eye(dim + 1)
    out[:dim, :dim] = direction @ np.diag(image.GetSpacing())
    out[:dim, dim] = image.GetOrigin()
    return out


def _normalised_to_index(size: Sequence[int]) -> np.ndarray:
    """(d+1)x(d+1) matrix: torch normalised coordinate (align_corners=True) -> continuous index."""
    half = (np.asarray(size, float) - 1.0) / 2.0
    out = np.eye(len(size) + 1)
    out[:-1, :-1] = np.diag(half)
    out[:-1, -1] = half
    return out


def _normalised_to_physical(image: sitk.Image) -> np.ndarray:
    return _index_to_physical(image) @ _normalised_to_index(image.GetSize())


def _physical_to_normalised(image: sitk.Image) -> np.ndarray:
    return np.linalg.inv(_normalised_to_physical(image))


def _affine_matrix(matrix: np.ndarray, center: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Homogeneous matrix of ITK's x -> A (x - c) + c + t."""
    dim = len(center)
    out = np.eye(dim + 1)
    out[:dim, :dim] = matrix
    out[:dim, dim] = center + translation - matrix @ center
    return out


def _image_center(image: sitk.Image) -> np.ndarray:
    return np.array(image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in image.GetSize()]))


def _linear_parts(transform: sitk.Transform, dim: int) -> tuple[np.ndarray, np.ndarray] | None:
    from .sitk_backend import linear_parts

    return linear_parts(transform, dim)


def _identity_grid(shape: Sequence[int], device: Any) -> Any:
    """Normalised coordinates of a grid of torch ``shape`` (z, y, x), as (*shape, d) in (x, y, z) order."""
    import torch

    axes = [torch.linspace(-1.0, 1.0, int(n), device=device) for n in shape]
    mesh = torch.meshgrid(*axes, indexing="ij")
    return torch.stack(mesh[::-1], dim=-1)


def _grid_points(shape: Sequence[int], index: Any, device: Any) -> Any:
    """``_identity_grid(shape).reshape(-1, d)[index]`` (the same values) for flat voxel indices ``index``, without
    the whole grid: (N, d) in (x, y, z) order. The whole grid of a 512x512x300 CT's finest level is 0.9 GB."""
    import torch

    coords = []
    rest = index
    for n in reversed([int(n) for n in shape]):  # the last torch axis (x) varies fastest
        coords.append(torch.linspace(-1.0, 1.0, n, device=device)[rest % n])
        rest = rest // n
    return torch.stack(coords, dim=-1)


def _dilated(mask: Any, rim: int) -> Any:
    """A bool (1, 1, *shape) ``mask`` grown by ``rim`` voxels along every axis (a (2 rim + 1)^d box, as
    ``max_pool`` of that kernel), one axis at a time by shifted ors: max_pool3d's 125-voxel window took 8.2 s of CPU
    (one thread) on a 512x512x300 level and needs the mask as float32 (315 MB)."""
    out = mask
    for axis in range(2, mask.dim()):
        grown = out.clone()
        n = out.shape[axis]
        for step in range(1, min(rim, n - 1) + 1):
            grown.narrow(axis, step, n - step).logical_or_(out.narrow(axis, 0, n - step))
            grown.narrow(axis, 0, n - step).logical_or_(out.narrow(axis, step, n - step))
        out = grown
    return out


def _apply(points: Any, matrix: Any) -> Any:
    """Apply a (d+1)x(d+1) homogeneous matrix to points (..., d)."""
    dim = points.shape[-1]
    return points @ matrix[:dim, :dim].transpose(0, 1) + matrix[:dim, dim]


# --------------------------------------------------------------------------------------------
# images as tensors and the pyramid

def _scaled_intensities(image: sitk.Image, mask: sitk.Image | None) -> np.ndarray:
    """Intensities mapped to [0, 1] between the 0.5 and 99.5 percentiles (inside the mask if any)."""
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    values = arr[sitk.GetArrayViewFromImage(mask).astype(bool)] if mask is not None else arr
    lo, hi = np.percentile(values, [0.5, 99.5])
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((arr - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


class _Pyramid:
    """One image (and optional mask) as a tensor, with cached smoothed and shrunk levels."""

    def __init__(self, image: sitk.Image, mask: sitk.Image | None, device: Any):
        import torch

        self.image = image
        self.dim = image.GetDimension()
        self.size = tuple(int(s) for s in image.GetSize())           # (x, y, z)
        self.shape = self.size[::-1]                                   # torch order
        self.spacing = np.array(image.GetSpacing(), float)
        arr = _scaled_intensities(image, mask)
        self.tensor = torch.from_numpy(arr)[None, None].to(device)
        self.scaled = sitk.GetImageFromArray(arr)
        self.scaled.CopyInformation(image)
        self.mask = None
        if mask is not None:
            self.mask = torch.from_numpy(sitk.GetArrayFromImage(mask).astype(np.float32))[None, None].to(device)
        self.device = device
        self._cache: dict[float, tuple[Any, Any]] = {}

    def level(self, sigma_mm: float, spacing_mm: float) -> tuple[Any, Any]:
        """(image, mask) smoothed by ``sigma_mm`` and resampled to voxels of about ``spacing_mm``."""
        import torch
        import torch.nn.functional as F

        from .torch_losses import gaussian_blur

        key = (round(sigma_mm, 6), round(spacing_mm, 6))
        if key in self._cache:
            return self._cache[key]
        shape = self.level_shape(spacing_mm)
        mask = self.mask
        mode = "trilinear" if self.dim == 3 else "bilinear"
        if self.device.type == "cpu" and sigma_mm > 0:
            # on the CPU, ITK's recursive Gaussian (cost independent of sigma) and a linear resampling
            # onto the level grid (same corner voxel centres: torch's align_corners=True) are several
            # times faster than convolutions
            smooth = sitk.SmoothingRecursiveGaussian(self.scaled, float(sigma_mm))
            spacing = [(n - 1) * sp / max(m - 1, 1) for n, sp, m in zip(self.size, self.spacing, shape[::-1])]
            level = sitk.Resample(smooth, list(shape[::-1]), sitk.Transform(), sitk.sitkLinear, self.image.GetOrigin(),
                                  spacing, self.image.GetDirection(), 0.0, sitk.sitkFloat32)
            img = torch.from_numpy(sitk.GetArrayFromImage(level))[None, None]
        else:
            sigmas = [sigma_mm / s for s in self.spacing[::-1]]
            img = gaussian_blur(self.tensor, sigmas) if sigma_mm > 0 else self.tensor
            if tuple(shape) != tuple(self.shape):
                img = F.interpolate(img, size=shape, mode=mode, align_corners=True)
        if tuple(shape) != tuple(self.shape):
            if mask is not None:
                full = mask
                mask = (F.interpolate(full, size=shape, mode=mode, align_corners=True) > 0.5).float()
                if not bool(mask.any()):
                    # a mask a few voxels wide can fall between the level's voxel centres: the level then
                    # counted nothing (LNCC and MIND optimised a loss of 0 with a zero gradient, MI silently
                    # used every voxel, a deformable stage on 2-4 mm levels of a 1 mm image did nothing at
                    # all). Such a level keeps the voxels nearest to the mask's (a max-pool rule, as the
                    # rotation search shrinks masks); any other mask is downsampled exactly as before.
                    mask = _nearest_level_voxels(full, shape)
        self._cache[key] = (img, mask)
        return img, mask

    def level_shape(self, spacing_mm: float) -> list[int]:
        """Torch shape of the level whose voxels are about ``spacing_mm`` (never finer than the image)."""
        shape = []
        for n, s in zip(self.shape, self.spacing[::-1]):
            extent = (n - 1) * s
            shape.append(int(min(n, max(min(n, 4), round(extent / max(spacing_mm, s)) + 1))))
        return shape


def _nearest_level_voxels(mask: Any, shape: Sequence[int]) -> Any:
    """A level mask of torch ``shape`` holding the level voxel nearest to each voxel of ``mask`` (1, 1, *full).

    Level voxel ``j`` of ``m`` along an axis of ``n`` voxels lies at full-resolution index ``j (n - 1) / (m - 1)``
    (``align_corners=True``), so full-resolution voxel ``i`` is nearest to ``round(i (m - 1) / (n - 1))``: every
    voxel of the mask marks one level voxel, and no level of a non-empty mask is empty.
    """
    import torch

    index = torch.nonzero(mask[0, 0] > 0)  # (k, d), torch axis order
    full = torch.as_tensor(mask.shape[2:], dtype=torch.float64, device=mask.device)
    level = torch.as_tensor(list(shape), dtype=torch.float64, device=mask.device)
    scale = (level - 1.0) / (full - 1.0).clamp_min(1.0)
    nearest = torch.round(index.to(torch.float64) * scale).long()
    out = torch.zeros((1, 1, *[int(n) for n in shape]), dtype=mask.dtype, device=mask.device)
    out[(0, 0) + tuple(nearest.unbind(dim=1))] = 1.0
    return out


# --------------------------------------------------------------------------------------------
# the optimisation

class _Context:
    """What every stage shares: device, images, geometry, the evaluation sample."""

    def __init__(self, fixed: sitk.Image, moving: sitk.Image, fixed_mask: sitk.Image | None,
                 moving_mask: sitk.Image | None, params: TorchRegistrationParameters, seed: int, device: Any):
        import torch

        self.params = params
        self.device = device
        self.dim = fixed.GetDimension()
        self.fixed = _Pyramid(fixed, fixed_mask, device)
        self.moving = _Pyramid(moving, moving_mask, device)
        self.fixed_image = fixed
        self.moving_image = moving
        self.f_norm_to_phys = _normalised_to_physical(fixed)
        self.m_phys_to_norm = _physical_to_normalised(moving)
        # on the device once: made from the numpy arrays in every iteration (total_matrix), each was a blocking
        # host-to-device copy, which waits for the GPU's queue (two host synchronisations per linear iteration)
        self._f_norm_to_phys = torch.as_tensor(self.f_norm_to_phys, dtype=torch.float64, device=device)
        self._m_phys_to_norm = torch.as_tensor(self.m_phys_to_norm, dtype=torch.float64, device=device)
        # ITK's inside-the-buffer test in moving-normalised units (align_corners=True: the outer voxel centres at
        # -1 and 1, half a voxel beyond them is 1 / (size - 1)), (x, y, z) order as the points
        half = torch.as_tensor([1.0 / max(int(n) - 1, 1) for n in moving.GetSize()], dtype=torch.float32,
                               device=device)
        self._buffer_low, self._buffer_high = -1.0 - half, 1.0 + half
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(int(seed))
        self.device_generator = torch.Generator(device=device)
        self.device_generator.manual_seed(int(seed) + 1)
        self.amp = bool(params.mixed_precision and device.type == "cuda" and torch.cuda.is_bf16_supported())
        self.base_spacing = float(min(fixed.GetSpacing()))
        extent = (np.array(fixed.GetSize()) - 1) * np.array(fixed.GetSpacing())
        # translations are optimised in units of the half extent, so that one Adam step moves
        # the image edge by about as much as one step of rotation (radians) does
        self.radius = float(max(extent.mean() / 2.0, 1.0))
        # whether the moving mask was left out (see _both_masks) since moving_mask_left_out() last asked: a
        # flag of the host, and one of the device (or'ed there, read once per stage: no synchronisation)
        self._left_out_host = False
        self._left_out_device = None
        # the fewest samples inside the moving image where mutual information fell back to every sample
        # (:meth:`inside_moving_image`) since few_inside() last asked, on the device (no synchronisation); None: never
        self._few_inside = None
        # the most of a fixed sample a moving image of its size can hold (its area or volume over the fixed
        # image's, or the fixed mask's; 1 at most): the fallback's floor scales with it (inside_moving_image)
        fixed_count = (float(np.count_nonzero(sitk.GetArrayViewFromImage(fixed_mask))) if fixed_mask is not None
                       else float(np.prod(fixed.GetSize())))
        moving_size = float(np.prod(np.array(moving.GetSize()) * np.array(moving.GetSpacing())))
        self._inside_share = min(1.0, moving_size / max(fixed_count * float(np.prod(fixed.GetSpacing())), 1e-12))
        # the fixed image's content (off its uniform background, sitk_backend.off_background) where no fixed mask
        # is given: the linear stages' mutual information draws its samples there, grown by a rim (content_region)
        content = off_background(fixed) if fixed_mask is None else None
        self._content = None if content is None else torch.from_numpy(content)[None, None].to(device)  # bool
        self._content_regions: dict[tuple[int, ...], Any] = {}
        self.whole_grid_levels: set[int] = set()  # linear levels sampled on the whole grid (linear_sample)
        # linear_samples 0 (every voxel): every voxel here too. max(0, 20000) had drawn 20000, so a moving image
        # of few voxels (14x14 px inside the 2D BrainWeb slice: 66 of 20000 inside) was refused as too few
        # samples inside it with 'raise linear_samples (now 0)', where sampling every voxel (196) was the fix
        eval_count = 0 if not params.linear_samples else max(params.linear_samples, 20000)
        self.eval_points, self.eval_values = self.sample(fixed_level=None, count=eval_count)

    def note_left_out(self, left_out: Any) -> None:
        """Record that the moving mask was left out: ``left_out`` is True, or a device bool tensor."""
        if isinstance(left_out, bool):
            self._left_out_host = self._left_out_host or left_out
        else:
            self._left_out_device = left_out if self._left_out_device is None else self._left_out_device | left_out

    def moving_mask_left_out(self) -> bool:
        """Whether the moving mask was left out of a similarity since the last call (then cleared)."""
        out = self._left_out_host or (self._left_out_device is not None and bool(self._left_out_device))
        self._left_out_host, self._left_out_device = False, None
        return out

    def autocast(self, metric: str) -> Any:
        """bfloat16 autocast on CUDA for the conv/elementwise metrics; never for MI, whose joint
        histogram needs float32 (a bfloat16 matmul would quantise the probabilities). LNCC turns it off
        again for its window statistics (torch_losses.lncc_loss: its variances cancel in bfloat16), and
        MIND-SSC has no operation autocast lowers, so both compute in float32 (benchmarks/mixed_precision_cpu.py
        emulates this on the CPU)."""
        import contextlib

        import torch

        if self.amp and metric != "mi":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def level_images(self, shrink: float, sigma_mm: float | None = None) -> tuple[Any, Any, Any, Any]:
        """Fixed image/mask and moving image/mask of a pyramid level (``shrink`` x the finest fixed voxel),
        smoothed by ``sigma_mm`` (None: half the level's voxel size, the finest level not at all)."""
        spacing = self.base_spacing * max(float(shrink), 1.0)
        sigma = _level_sigma_mm(shrink, self.base_spacing) if sigma_mm is None else float(sigma_mm)
        fixed, fixed_mask = self.fixed.level(sigma, spacing)
        moving, moving_mask = self.moving.level(sigma, spacing)
        return fixed, fixed_mask, moving, moving_mask

    def sample(self, fixed_level: tuple[Any, Any] | None, count: int) -> tuple[Any, Any]:
        """Normalised coordinates (N, d) and values (1, N) of fixed voxels (inside the fixed mask)."""
        import torch

        image, mask = fixed_level if fixed_level is not None else (self.fixed.tensor, self.fixed.mask)
        shape = image.shape[2:]
        values = image.reshape(-1)
        index = None
        if mask is not None:  # never empty: check_mask refuses an empty mask, and no level of one is empty
            index = torch.nonzero(mask.reshape(-1) > 0).reshape(-1)
        available = values.numel() if index is None else index.numel()
        if count and available > count:
            pick = torch.randperm(available, generator=self.generator)[:count].to(self.device)
            index = pick if index is None else index[pick]
        if index is None:
            return _identity_grid(shape, self.device).reshape(-1, self.dim), values[None]
        # the points drawn alone (the same draw and values as indexing the whole grid): on a 512x512x300 CT the
        # whole grid and its content's part had been 0.9 + 0.75 GB at the finest level
        return _grid_points(shape, index, self.device), values[index][None]

    def content_region(self, shape: Sequence[int]) -> Any | None:
        """The voxels of a level of torch ``shape`` that the linear stages' mutual information samples when no
        fixed mask is given: the fixed image's content (off its uniform background) on the level's grid, dilated
        by ``_CONTENT_RIM`` of the level's voxels, so that the content's edge and a rim of background around it
        stay in (1, 1, *shape) bool; None for an image with no uniform background (the whole grid, as before).

        On a skull-stripped MR the brain is 17% of the grid (BraTS pat0001): drawn over the whole grid, 3300 of the
        20000 samples landed on it and the flat background filled the rest, which holds nothing to align. The rim
        keeps the brain's outline, the strongest feature mutual information has there: the content alone (no
        rim) ended worse than the whole grid (README, "Registration on PyTorch")."""
        import torch.nn.functional as F

        if self._content is None:
            return None
        key = tuple(int(n) for n in shape)
        if key not in self._content_regions:
            full = self._content
            region = full
            if key != tuple(full.shape[2:]):
                mode = "trilinear" if self.dim == 3 else "bilinear"
                region = F.interpolate(full.float(), size=key, mode=mode, align_corners=True) > 0
                if not bool(region.any()):  # content between the level's voxel centres: the nearest ones
                    region = _nearest_level_voxels(full.float(), key) > 0
            # bool, as the content: a 512x512x300 CT's finest level is 79 MB so, 315 MB as float32
            self._content_regions[key] = _dilated(region, _CONTENT_RIM)
        return self._content_regions[key]

    def linear_sample(self, image: Any, mask: Any | None, count: int, level: int, start: Any) -> tuple[Any, Any]:
        """The linear stages' mutual-information sample of a level (:meth:`sample`): inside the fixed ``mask`` if
        given, else on :meth:`content_region`; the whole grid, as without a uniform background, where the content
        region's sample leaves too few points inside the moving image at the level's start ``start`` (fixed
        normalised -> moving normalised), by :meth:`inside_moving_image`'s floor: a start that overlaps the moving
        image only on the fixed image's background (the 2D BrainWeb pair shifted 11 px onto its 20 px border) runs
        and is warned about as before, not refused as drifted apart. Such levels are recorded (metrics.json's
        ``effective``, ``linear_whole_grid_levels``)."""
        import torch

        region = mask if mask is not None else self.content_region(image.shape[2:])
        points, values = self.sample((image, region), count)
        if mask is not None or region is None:
            return points, values
        with torch.no_grad():
            inside = int(self._in_moving_buffer(_apply(points.double(), start).float()).sum())
        if inside > min(_MIN_MASKED, int(points.shape[0] * self._inside_share) // 2):
            return points, values
        self.whole_grid_levels.add(int(level))
        return self.sample((image, None), count)

    def total_matrix(self, affine: Any) -> Any:
        """Fixed normalised -> moving normalised, float64 (d+1)x(d+1) tensor, for a homogeneous ``affine``."""
        return self._m_phys_to_norm @ affine @ self._f_norm_to_phys

    def sample_moving(self, image: Any, points: Any, padding: str = "zeros") -> Any:
        """Moving values (C, N) at moving-normalised points (N, d)."""
        import torch.nn.functional as F

        n = points.shape[0]
        shape = (1, 1, 1, n, self.dim) if self.dim == 3 else (1, 1, n, self.dim)
        out = F.grid_sample(image, points.reshape(shape).to(image.dtype), mode="bilinear", padding_mode=padding,
                            align_corners=True)
        return out.reshape(image.shape[1], n)

    def mi_loss(self, fixed_values: Any, moving_values: Any, counted: Any | None = None) -> Any:
        """Negative mutual information of two (1, N) value sets in [0, 1]; ``counted`` (N,) 0/1: only those."""
        from .torch_losses import mattes_mutual_information_loss, mutual_information_loss

        if self.params.mi_window == "gaussian":
            if counted is not None:  # MONAI's loss takes no weights: index (reads the count back, opt-in metric)
                keep = counted.reshape(-1) > 0.5
                fixed_values, moving_values = fixed_values[:, keep], moving_values[:, keep]
            return mutual_information_loss(fixed_values, moving_values, self.params.histogram_bins)
        return mattes_mutual_information_loss(fixed_values, moving_values, self.params.histogram_bins, counted)

    def inside_moving_image(self, moved: Any) -> Any:
        """(N,) 0/1: which moving-normalised points ``moved`` (N, d) lie inside the moving image, by ITK's rule
        (a continuous index from -0.5 to under size - 0.5 on every axis, as its metrics count a sample); every point
        (all ones) while ``_MIN_MASKED`` or fewer do (half the sample, of 200 points or fewer), chosen on the device
        (no host synchronisation).

        Mutual information counts only these, as ITK's, ANTs' and elastix' do: sampled as zeros outside the moving
        image, the points there had counted as background, so a moving slab (15 slices of a head, or a band of 60
        rows of the 2D BrainWeb PD slice) drew an affine stage into squeezing the whole fixed image into it
        (determinant 0.16-0.55, 54-60 px off from a 24 px start, mutual information "improved", no warning)."""
        import torch

        with torch.no_grad():
            inside = self._in_moving_buffer(moved).to(torch.float32)
            # the floor of the moving mask's fallback (_MIN_MASKED), not tuned for this: a transform that sends
            # almost every sample out of the moving image is scored on every sample, zero outside the image, as
            # before this rule, and noted (few_inside): register_torch refuses the run, as ITK refuses one whose
            # samples all map outside ("All samples map outside moving image buffer"), because that score is
            # highest for a transform that squeezes the fixed image into the few samples inside (one column of
            # the 2D BrainWeb pair inside: determinant 0.04, 81 px off, "improved", no warning). Recorded where
            # a moving mask's test counts instead too: more than _MIN_MASKED inside the mask are inside the image
            count = inside.sum()
            # half the sample where it has 200 or fewer points (a 4x4x4 image, every one of its 64 voxels inside,
            # is no fallback, and was refused as one); and half of what a small moving image can hold of the
            # sample wholly inside the fixed one: a 40x40 px patch inside the 2D BrainWeb slice holds 100 of the
            # 3550 voxels of the shrink-4 level, and was refused as drifted apart with 99 inside
            enough = count > min(_MIN_MASKED, int(inside.numel() * self._inside_share) // 2)
            few = torch.where(enough, torch.full_like(count, float("inf")), count)
            self._few_inside = few if self._few_inside is None else torch.minimum(self._few_inside, few)
            return torch.where(enough, inside, torch.ones_like(inside))

    def few_inside(self) -> int | None:
        """The fewest samples inside the moving image where mutual information fell back to every sample
        (:meth:`inside_moving_image`, ``_MIN_MASKED`` or fewer inside, or half a smaller sample) since the last call (then cleared), or None
        where it never did. Read once per stage (one host synchronisation), as :meth:`moving_mask_left_out`."""
        few, self._few_inside = self._few_inside, None
        if few is None:
            return None
        value = float(few)
        return int(value) if math.isfinite(value) else None

    def note_few_inside(self, count: int | None) -> None:
        """Record again a fallback that :meth:`few_inside` returned (``count`` samples inside; None: none)."""
        import torch

        if count is not None:
            few = torch.tensor(float(count), device=self.device)
            self._few_inside = few if self._few_inside is None else torch.minimum(self._few_inside, few)

    def _in_moving_buffer(self, moved: Any) -> Any:
        """(N,) bool: ITK's IsInsideBuffer of moving-normalised points (half a voxel beyond the outer centres)."""
        return ((moved >= self._buffer_low) & (moved < self._buffer_high)).all(dim=-1)

    def sample_for_mi(self, image: Any, moved: Any) -> tuple[Any, Any]:
        """Moving values (1, N) at moving-normalised points ``moved`` (N, d) as ITK's metrics read them, and which
        count (:meth:`inside_moving_image`).

        In the half voxel beyond the outer voxel centres, which ITK counts as inside, its linear interpolator
        repeats the edge voxel; ``grid_sample``'s zero padding had blended it with zeros there (down to half the edge
        value), a darker rim on every side of the moving image that an affine stage matched against the fixed
        image: 0.72-0.77 px off on the 2D BrainWeb band pair of the tests (seeds 0-1), 0.31-0.35 px with the edge
        repeated. Outside that half voxel the values are zeros, as before (counted only in the fallback)."""
        import torch

        sampled = self.sample_moving(image, moved, padding="border")
        with torch.no_grad():
            in_buffer = self._in_moving_buffer(moved)
        return sampled * in_buffer.to(sampled.dtype), self.inside_moving_image(moved)

    def mi_at_points(self, points: Any, values: Any, matrix: Any, moving: Any) -> Any:
        """MI of fixed ``values`` at ``points`` and the full-resolution ``moving`` image through ``matrix``;
        with a moving mask, only the points that land inside it count (as in the stages)."""
        moved = _apply(points.double(), matrix).float()
        sampled, counted = self.sample_for_mi(moving, moved)
        if self.moving.mask is not None:
            inside = self.counted_inside_moving_mask(moved)
            if inside is not None:
                return self.mi_loss(values[:, inside], sampled[:, inside])
            self.note_left_out(True)
        return self.mi_loss(values, sampled, counted)

    def counted_inside_moving_mask(self, moved: Any) -> Any | None:
        """Which moving-normalised points ``moved`` (N, d) :meth:`mi_at_points` counts with a moving mask: those
        inside it (a (N,) bool tensor), or None where ``_MIN_MASKED`` or fewer are (every point counts instead)."""
        inside = _inside_moving_mask(self.moving.mask, moved)[0] > 0.5
        return inside if int(inside.sum()) > _MIN_MASKED else None


#: the rim of background (voxels of each level) that :meth:`_Context.content_region` keeps around the fixed
#: image's content: measured on BraTS pat0001 (seeds 0-4, 3/2 mm), 1-3 voxels end alike (0.10-0.15 mm), 0 worse
#: than the whole grid (0.29-0.30 mm), 4 between (0.14-0.18 mm)
_CONTENT_RIM = 2

#: this many voxels or fewer inside both masks (a moving mask the current transform puts out of the fixed
#: one): the similarity falls back to the fixed mask alone rather than average over nothing, and
#: register_torch warns that it did (README, "Masks"). Counted in each level's own voxels on purpose: a
#: small moving mask used at the coarse levels too (counted at full resolution) registered the 2D BrainWeb
#: pair far worse than the whole images there do (benchmarks/small_moving_masks.py)
_MIN_MASKED = 100


def _inside_moving_mask(mask: Any, moved: Any) -> Any:
    """1 where a moving point falls inside the moving mask, 0 elsewhere and outside the moving image.

    As ITK's metrics test a moving point against the moving mask at that point, the mask (0/1, a pyramid
    level of it) is sampled at the point, linearly, and thresholded at 0.5; it is not differentiated.

    Args:
        mask: moving mask tensor ``(1, 1, *spatial)``.
        moved: moving-normalised points, ``(N, d)`` or a dense grid ``(1, *shape, d)``.

    Returns:
        ``(1, N)`` or ``(1, 1, *shape)`` float tensor of 0/1.
    """
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        dim = mask.ndim - 2
        grid = moved if moved.ndim == dim + 2 else moved.reshape((1, 1, 1, -1, dim) if dim == 3 else (1, 1, -1, dim))
        out = F.grid_sample(mask, grid.to(mask.dtype), mode="bilinear", padding_mode="zeros", align_corners=True)
        inside = (out > 0.5).to(mask.dtype)
        return inside if moved.ndim == dim + 2 else inside.reshape(1, -1)


def _both_masks(ctx: _Context, fixed_mask: Any | None, inside: Any) -> tuple[Any, Any]:
    """(voxels to count, voxels LNCC's windows may use) with a moving mask.

    The voxels counted are those inside the fixed mask (if any) whose moving point is inside the moving
    mask (``inside``); the windows use every voxel whose moving point is inside the moving mask. While
    ``_MIN_MASKED`` voxels or fewer are counted, the moving mask is left out: the fixed mask alone
    (or every voxel) and windows over every voxel (chosen on the device: no host synchronisation), and
    ``ctx`` notes it (register_torch warns).
    """
    import torch

    both = inside if fixed_mask is None else inside * fixed_mask
    enough = both.sum() > _MIN_MASKED
    ctx.note_left_out(~enough)
    ones = torch.ones_like(inside)
    fallback = fixed_mask if fixed_mask is not None else ones
    return torch.where(enough, both, fallback), torch.where(enough, inside, ones)


class _Adam:
    """Adam (Kingma and Ba), as torch.optim.Adam with default betas, for a few tensors.

    Written out because constructing ``torch.optim.Adam`` imports ``torch._dynamo`` in recent
    torch releases, which costs seconds per process: too much for a registration meant to take
    a few seconds on a GPU.
    """

    def __init__(self, params: list[Any], lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        import torch

        self.params = params
        self.lr = float(lr)
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.steps = 0
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        import torch

        self.steps += 1
        c1 = 1.0 - self.beta1 ** self.steps
        c2 = 1.0 - self.beta2 ** self.steps
        with torch.no_grad():
            for p, m, v in zip(self.params, self.m, self.v):
                if p.grad is None:
                    continue
                m.mul_(self.beta1).add_(p.grad, alpha=1.0 - self.beta1)
                v.mul_(self.beta2).addcmul_(p.grad, p.grad, value=1.0 - self.beta2)
                denom = (v / c2).sqrt_().add_(self.eps)
                p.addcdiv_(m, denom, value=-self.lr / c1)


def _flush(torch: Any, pending: list[Any], history: list[tuple[int, int, float]], level: int, it: int) -> float:
    """Move the metric values of the last iterations (tensors) into ``history``; returns the last one."""
    values = torch.stack(pending).tolist()
    first = it - len(values) + 1
    history.extend((level, first + k, float(v)) for k, v in enumerate(values))
    pending.clear()
    return float(values[-1])


def _homogeneous(torch: Any, matrix: Any, center: Any, translation: Any) -> Any:
    dim = center.shape[0]
    top = torch.cat([matrix, (center + translation - matrix @ center)[:, None]], dim=1)
    bottom = torch.zeros(1, dim + 1, dtype=matrix.dtype, device=matrix.device)
    bottom[0, dim] = 1.0
    return torch.cat([top, bottom], dim=0)


def _skew(torch: Any, w: Any, dim: int) -> Any:
    if dim == 2:
        zero = torch.zeros((), dtype=w.dtype, device=w.device)
        return torch.stack([torch.stack([zero, -w[0]]), torch.stack([w[0], zero])])
    zero = torch.zeros((), dtype=w.dtype, device=w.device)
    return torch.stack([torch.stack([zero, -w[2], w[1]]), torch.stack([w[2], zero, -w[0]]),
                        torch.stack([-w[1], w[0], zero])])


def _dense_similarity(ctx: _Context, metric: str, fixed_feat: Any, warped: Any, mask: Any,
                      window_mask: Any = None, mask_index: Any = None, counted: Any = None) -> Any:
    """The metric over the fixed grid, averaged over ``mask``; LNCC's windows use ``window_mask`` only
    (None: every voxel), MIND and MI are per voxel. ``mask_index``: MI's voxels, the indices of ``mask``'s
    (:func:`_mask_index`), for a loop that would otherwise find them again every iteration. ``counted``: MI's
    0/1 weights of every grid voxel (flattened; :meth:`_Context.sample_for_mi`), None: all count."""
    from .torch_losses import lncc_loss, mind_loss

    if metric == "mind":
        return mind_loss(fixed_feat, warped, mask)
    if metric == "lncc":
        return lncc_loss(fixed_feat, warped, mask, ctx.params.lncc_kernel, window_mask)
    fixed_values, warped_values = fixed_feat.reshape(1, -1), warped.reshape(1, -1)
    if mask is not None:
        keep = _mask_index(mask) if mask_index is None else mask_index
        fixed_values, warped_values = fixed_values[:, keep], warped_values[:, keep]
        counted = None if counted is None else counted.reshape(-1)[keep]
    return ctx.mi_loss(fixed_values, warped_values, counted)


def _mask_index(mask: Any) -> Any:
    """Flat indices of a mask's voxels, ascending (what indexing with ``mask > 0`` selects). Finding them
    waits for the device (their count sets the shape): done once per level, indexing with them does not."""
    import torch

    return torch.nonzero(mask.reshape(-1) > 0).flatten()


def _features(ctx: _Context, metric: str, image: Any) -> Any:
    from .torch_losses import mind_ssc

    if metric == "mind":
        return mind_ssc(image, ctx.params.mind_radius, ctx.params.mind_dilation)
    return image


def _linear_stage(ctx: _Context, name: str, matrix0: np.ndarray, translation0: np.ndarray, center: np.ndarray,
                  progress: ProgressCallback | None, span: tuple[float, float], *, levels: int | None = None,
                  masks: bool = True, label: str | None = None) -> tuple[np.ndarray, np.ndarray, StageResult]:
    """Optimise a rigid or affine transform over the linear pyramid; returns (A, t, StageResult).

    ``levels``: run only the first this many levels that iterate (None: all). ``masks`` False optimises without
    the masks (the unmasked coarse level of :func:`_unmasked_coarse_level`); the metric before and after is the
    masked one either way. ``label`` names the run in the progress messages (default: ``name``).
    """
    import torch
    import torch.nn.functional as F

    p = ctx.params
    label = name if label is None else label
    iterations = [int(i) for i in p.linear_iterations]
    if levels is not None:
        running = [k for k, i in enumerate(iterations) if i][:levels]
        iterations = [i if k in running else 0 for k, i in enumerate(iterations)]
    dim = ctx.dim
    start = time.perf_counter()
    metric = p.linear_metric
    dev = ctx.device
    c = torch.as_tensor(center, dtype=torch.float64, device=dev)
    a_cur = torch.as_tensor(matrix0, dtype=torch.float64, device=dev)
    t_cur = torch.as_tensor(translation0, dtype=torch.float64, device=dev)

    def evaluate(a: Any, t: Any) -> float:
        with torch.no_grad():
            moving_full = ctx.moving.tensor
            return float(ctx.mi_at_points(ctx.eval_points, ctx.eval_values,
                                          ctx.total_matrix(_homogeneous(torch, a, c, t)), moving_full))

    before = evaluate(a_cur, t_cur)
    history: list[tuple[int, int, float]] = []
    pending: list[Any] = []
    total_iters = sum(iterations)
    done = 0
    ran = 0  # levels that iterated before this one
    sigmas_mm = _linear_sigmas_mm(p, ctx.base_spacing)
    for level, (shrink, iters) in enumerate(zip(p.linear_shrink_factors, iterations)):
        if not iters:
            # skipped (ANTs' 100x0): it had drawn its sample from the generator, and halved the step of every
            # level after it, so [0, 80, 40] at shrink [4, 2, 1] did not run as [80, 40] at [2, 1]
            continue
        fixed_img, fixed_mask, moving_img, moving_mask = ctx.level_images(int(shrink), sigmas_mm[level])
        if not masks:
            fixed_mask = moving_mask = None
        if metric == "mind" and fixed_mask is None and p.deformable_foreground_mask:
            # as in the deformable stage: MIND over the fixed background (flat in a skull-stripped T1, while
            # a T2 shows noise, skull and scalp there) pulled the known 3 mm affine case from 7.2 to 9.6 mm
            fixed_mask = _foreground(fixed_img, ctx.base_spacing * int(shrink))
        if metric == "mi":
            points, values = ctx.linear_sample(fixed_img, fixed_mask, int(p.linear_samples), level,
                                               ctx.total_matrix(_homogeneous(torch, a_cur, c, t_cur)))
        else:
            grid = _identity_grid(fixed_img.shape[2:], dev)
            fixed_feat = _features(ctx, metric, fixed_img)
            # MIND compares neighbour voxels at fixed offsets: taken on the moving image's own grid,
            # its descriptors would depend on how that image's voxels are stored (axis order,
            # spacing, obliquity). They are computed on the warped image, on the fixed grid.
            moving_feat = _features(ctx, metric, moving_img) if metric != "mind" else moving_img
        n_rot = (3 if dim == 3 else 1) if name == "rigid" else dim * dim
        rot = torch.zeros(n_rot, dtype=torch.float64, device=dev, requires_grad=True)
        shift = torch.zeros(dim, dtype=torch.float64, device=dev, requires_grad=True)
        lr = p.linear_learning_rate / (2 ** ran)  # halved per level that runs
        ran += 1
        optimizer = _Adam([rot, shift], lr=lr)

        def current(rot: Any = rot, shift: Any = shift, a0: Any = a_cur, t0: Any = t_cur) -> tuple[Any, Any]:
            if name == "rigid":
                a = torch.linalg.matrix_exp(_skew(torch, rot, dim)) @ a0
            else:
                a = a0 + rot.reshape(dim, dim)
            return a, t0 + shift * ctx.radius

        for it in range(iters):
            optimizer.lr = lr * (1.0 - 0.9 * it / max(iters - 1, 1))  # linear decay to 10% within a level
            optimizer.zero_grad()
            a, t = current()
            total = ctx.total_matrix(_homogeneous(torch, a, c, t))
            with ctx.autocast(metric):
                if metric == "mi":
                    moved = _apply(points.double(), total).float()
                    sampled, counted = ctx.sample_for_mi(moving_img, moved)
                    if moving_mask is not None:
                        inside = _inside_moving_mask(moving_mask, moved)[0] > 0.5
                        if int(inside.sum()) > _MIN_MASKED:
                            loss = ctx.mi_loss(values[:, inside], sampled[:, inside])
                        else:
                            ctx.note_left_out(True)
                            loss = ctx.mi_loss(values, sampled, counted)
                    else:
                        loss = ctx.mi_loss(values, sampled, counted)
                else:
                    moved = _apply(grid.double(), total).float()
                    warped = F.grid_sample(moving_feat, moved[None], mode="bilinear", padding_mode="border",
                                           align_corners=True)
                    if metric == "mind":
                        warped = _features(ctx, metric, warped)
                    mask, window = fixed_mask, None
                    if moving_mask is not None:
                        mask, window = _both_masks(ctx, fixed_mask, _inside_moving_mask(moving_mask, moved[None]))
                    loss = _dense_similarity(ctx, metric, fixed_feat, warped, mask, window)
            loss = loss.float()
            loss.backward()
            optimizer.step()
            pending.append(loss.detach())
            done += 1
            if it % 10 == 0 or it == iters - 1:
                # values are read back only here: a GPU is not synchronised every iteration
                last = _flush(torch, pending, history, level, it)
                if not math.isfinite(last):
                    raise RegistrationError(f"The {name} stage produced a non-finite metric at level {level + 1}.",
                                            "Check the images' intensities, or lower linear_learning_rate.")
                frac = span[0] + (span[1] - span[0]) * done / max(total_iters, 1)
                report(progress, frac, f"{label}: level {level + 1}/{len(p.linear_iterations)}, "
                                       f"iteration {it + 1}/{iters}, metric {last:.4f}")
        with torch.no_grad():
            a_cur, t_cur = (x.detach() for x in current())
    after = evaluate(a_cur, t_cur)
    # linear_iterations of 0 keep the start (the initializer alone, on purpose): the result says so
    stop = ("iteration budget of every level spent" if done else
            "no iterations (linear_iterations are all 0): the start transform kept")
    stage = StageResult(name=name, metric_name="mi (torch, negative mutual information)",
                        metric_before=before, metric_after=after, iterations=done,
                        stop_reason=stop, seconds=time.perf_counter() - start,
                        history=history,
                        # every level, as the sitk backend counts them: from the history alone a last level of 0
                        # iterations went missing ([6, 4, 0] read "6+4 = 10", [0, 6, 4] "0+6+4 = 10")
                        level_iterations=iterations_per_level(history, len(iterations)))
    return a_cur.cpu().numpy(), t_cur.cpu().numpy(), stage


def _masked_linear_stage(ctx: _Context, name: str, matrix: np.ndarray, translation: np.ndarray, center: np.ndarray,
                         fixed: sitk.Image, fixed_mask: sitk.Image | None, progress: ProgressCallback | None,
                         span: tuple[float, float], warnings: list[str]
                         ) -> tuple[np.ndarray, np.ndarray, StageResult, dict[str, Any]]:
    """A masked first linear stage with the SimpleITK backend's second try (``sitk_backend._unmasked_start``):
    run from the initializer's start (``matrix``, ``translation``), then its coarsest level from the same start
    without the masks (:func:`_unmasked_coarse_level`), and the stage again from that level's end when
    ``sitk_backend.judge_unmasked_start`` prefers it. Returns (A, t, the stage's result, metrics.json's
    ``masked_start``).

    The masked metric's capture range is as narrow here as there: on the 2D BrainWeb pair (10 degrees, 21 px
    from the centres) mutual information over a box on the middle 60% of the slice is flat over the first half
    of the way from the 'geometry' start to the truth at the coarsest level (-0.24 to -0.28, -0.81 at the truth),
    so the default rigid stage ended 20 px off at every seed and pixel size (every voxel sampled: the same), and
    started half way it ends 0.05 px off. The coarse level draws its samples from the context's generator, which
    is set back afterwards: a run that is not run again, and every stage after it, draws what it drew before (the
    second run draws the first run's samples, as the SimpleITK backend's same seed does).
    """
    width = span[1] - span[0]
    t_stage = time.perf_counter()
    drawn = ctx.generator.get_state()
    # whether the moving mask was left out at the initializer's start (register_torch's metric_before, the stage's
    # too, run again or not), apart from the first run's iterations, which a stage run again does not return
    start_left_out = ctx.moving_mask_left_out()
    # the stage's first run takes half of its part of the bar, the check a tenth, the second run the rest
    first_m, first_t, first = _linear_stage(ctx, name, matrix, translation, center, progress,
                                            (span[0], span[0] + 0.5 * width))
    report(progress, span[0] + 0.5 * width, f"{name}: checking the result against an alignment without the masks")
    # whether the first run left the moving mask out, for its warning if its result is the one returned: not if the
    # stage runs again, whose warning had said the first run's (50x50 px boxes at the same anatomy of the 2D BrainWeb
    # pair: left out at the coarse levels from the 'geometry' start, never in the run from the coarse level's end,
    # yet "left out of the rigid stage")
    first_left_out = ctx.moving_mask_left_out()
    first_few = ctx.few_inside()  # likewise for mutual information's fallback (register_torch refuses it)
    kept = first.metric_after <= first.metric_before  # as register_torch keeps a stage
    reached = first.metric_after if kept else first.metric_before
    reached_m, reached_t = (first_m, first_t) if kept else (matrix, translation)
    after_first = ctx.generator.get_state()
    aligned, info = _unmasked_coarse_level(ctx, name, matrix, translation, center, reached,
                                           _affine_transform(reached_m, center, reached_t), fixed, fixed_mask,
                                           progress, (span[0] + 0.5 * width, span[0] + 0.6 * width))
    if aligned is None:
        ctx.generator.set_state(after_first)
        if start_left_out or first_left_out:
            ctx.note_left_out(True)
        ctx.note_few_inside(first_few)
        # the check is the stage's time too: its seconds had been the first run's alone, the unmasked coarse level
        # and its judging missing from every time shown (0.25 of 1.0 s on the 2D BrainWeb slice)
        first.seconds = time.perf_counter() - t_stage
        return first_m, first_t, first, info
    ctx.generator.set_state(drawn)
    if start_left_out:
        ctx.note_left_out(True)
    second_m, second_t, second = _linear_stage(ctx, name, aligned[0], aligned[1], center, progress,
                                               (span[0] + 0.6 * width, span[1]))
    second.accepted = bool(second.metric_after <= second.metric_before)
    info["second_try_accepted"] = second.accepted
    stage = second_try_result(first, second, time.perf_counter() - t_stage)
    if not second.accepted:
        warnings.append(second_try_warning(name, "mutual information", second, reached))
        second_m, second_t = aligned
    return second_m, second_t, stage, info


def _unmasked_coarse_level(ctx: _Context, name: str, matrix: np.ndarray, translation: np.ndarray,
                           center: np.ndarray, reached: float, reached_transform: sitk.Transform, fixed: sitk.Image,
                           fixed_mask: sitk.Image | None, progress: ProgressCallback | None,
                           span: tuple[float, float]) -> tuple[tuple[np.ndarray, np.ndarray] | None, dict[str, Any]]:
    """The first linear level that iterates, run from the initializer's start without the masks: its end (A, t)
    when ``sitk_backend.judge_unmasked_start`` prefers it to what the stage reached (``reached``, the masked
    metric of ``reached_transform``), else None; and what was found (metrics.json's ``masked_start``, as the
    SimpleITK backend records it, with the level's smoothing in mm). Its progress messages say "without the
    masks"; a cancel stops it as it stops a stage."""
    import torch

    p = ctx.params
    level = next(k for k, i in enumerate(p.linear_iterations) if int(i))
    shrink = int(p.linear_shrink_factors[level])
    coarse_voxel = float(shrink * ctx.base_spacing)
    info: dict[str, Any] = {"shrink_factor": shrink,
                            "smoothing_sigma_mm": float(_linear_sigmas_mm(p, ctx.base_spacing)[level]),
                            "metric_stage_reached": float(reached), "coarse_voxel_mm": coarse_voxel}
    try:
        m, t, run = _linear_stage(ctx, name, matrix, translation, center, progress, span, levels=1, masks=False,
                                  label=f"{name} (without the masks, coarsest level)")
    except RegistrationError as exc:  # the unmasked level could not run: the stage's own result stands
        info.update(used=False, reason=exc.problem)
        return None, info
    finally:
        ctx.moving_mask_left_out()  # the level's own (its iterations have no masks): not the stage's
        ctx.few_inside()  # likewise: a try whose result is judged below, not what the stage returns
    # asked of the level's end alone: its flag also counted its start, the initializer's, shared with the stage's
    # first run, where masks that barely meet leave the moving mask out (a 20x20 px box on each of the 2D
    # BrainWeb pair's images at the same anatomy, 7 voxels inside both there: refused as scored alone at the end,
    # where all 400 are, and 33 px off)
    scored_alone = False
    if ctx.moving.mask is not None:
        with torch.no_grad():
            end = ctx.total_matrix(torch.as_tensor(_affine_matrix(m, center, t), dtype=torch.float64,
                                                   device=ctx.device))
            scored_alone = ctx.counted_inside_moving_mask(_apply(ctx.eval_points.double(), end).float()) is None
    if scored_alone:
        # the masked metric at the level's end counted the fixed mask alone: not comparable with the stage's own
        info.update(used=False, reason="too few voxels of the fixed mask mapped inside the moving mask at the "
                                       "unmasked coarse level's end")
        return None, info
    apart = mean_distance(_affine_transform(m, center, t), reached_transform, fixed, fixed_mask)
    used = judge_unmasked_start(info, reached, run.metric_after, apart, coarse_voxel)
    return ((m, t) if used else None), info


def _integrate(torch: Any, velocity: Any, grid: Any, steps: int) -> Any:
    """Scaling and squaring: displacement (1, d, *shape) of exp(velocity), all in normalised units."""
    import torch.nn.functional as F

    disp = velocity / (2 ** steps)
    for _ in range(steps):
        moved = grid[None] + disp.movedim(1, -1)
        disp = disp + F.grid_sample(disp, moved, mode="bilinear", padding_mode="border", align_corners=True)
    return disp


def _to_normalised_scale(torch: Any, shape: Sequence[int], device: Any) -> Any:
    """Per-channel factor voxel -> normalised units; channel k is axis x, y, z (torch axis d-1-k)."""
    dim = len(shape)
    factors = [2.0 / max(int(shape[dim - 1 - k]) - 1, 1) for k in range(dim)]
    return torch.tensor(factors, dtype=torch.float32, device=device).reshape(1, dim, *([1] * dim))


def _foreground(image: Any, spacing_mm: float, margin_mm: float = 3.0, threshold: float = 0.02) -> Any:
    """Fixed-image foreground at a level: intensity above ``threshold`` of its [0, 1] range, dilated."""
    import torch.nn.functional as F

    radius = max(1, int(round(margin_mm / max(spacing_mm, 1e-6))))
    pool = F.max_pool3d if image.ndim == 5 else F.max_pool2d
    mask = pool((image > threshold).float(), 2 * radius + 1, stride=1, padding=radius)
    return mask if float(mask.sum()) > 0 else None


def _deformable_stage(ctx: _Context, affine: np.ndarray, progress: ProgressCallback | None,
                      span: tuple[float, float]) -> tuple[Any, StageResult]:
    """Optimise a stationary velocity field (fixed grid); returns (smoothed velocity in normalised units, result)."""
    import torch
    import torch.nn.functional as F

    from .torch_losses import bending_regularisation, diffusion_regularisation, gaussian_blur

    p = ctx.params
    dim = ctx.dim
    dev = ctx.device
    start = time.perf_counter()
    metric = p.deformable_metric
    total = ctx.total_matrix(torch.as_tensor(affine, dtype=torch.float64, device=dev)).float()
    regulariser = diffusion_regularisation if p.regularisation == "diffusion" else bending_regularisation
    history: list[tuple[int, int, float]] = []
    pending: list[Any] = []
    velocity_norm = None  # smoothed velocity of the previous level, normalised units
    total_iters = sum(int(i) for i in p.deformable_iterations)
    done = 0
    before = after = float("nan")
    levels = _deformable_levels(p, ctx.base_spacing)
    mode = "trilinear" if dim == 3 else "bilinear"
    sigmas = [p.velocity_sigma] * dim
    for level, (shrink, iters) in enumerate(levels):
        fixed_img, fixed_mask, moving_img, moving_mask = ctx.level_images(shrink)
        if fixed_mask is None and p.deformable_foreground_mask:
            fixed_mask = _foreground(fixed_img, ctx.base_spacing * shrink)
        image_shape = list(fixed_img.shape[2:])
        image_grid = _identity_grid(image_shape, dev)
        window = None
        if moving_mask is not None:
            # the fixed voxels whose point the affine sends into the moving mask count, for the whole level.
            # Tested through the field each iteration (as ITK tests the current transform), a voxel the
            # field pushed out of the mask dropped out of the similarity and nothing brought it back: on the
            # 2D BrainWeb pair with a mismatched band masked out, 16 mm maximum error instead of 4 mm.
            fixed_mask, window = _both_masks(ctx, fixed_mask, _inside_moving_mask(moving_mask,
                                                                                  _apply(image_grid[None], total)))
        factor = max(int(p.velocity_grid_factor), 1)
        shape = [max(min(n, 4), int(round((n - 1) / factor)) + 1) for n in image_shape]  # velocity grid
        grid = _identity_grid(shape, dev)
        with torch.no_grad():
            fixed_feat = _features(ctx, metric, fixed_img)
            if metric == "mind":
                # descriptors of the affinely aligned moving image on the fixed grid (see the linear
                # stage): independent of how the moving voxels are stored; the field then warps them
                on_fixed = F.grid_sample(moving_img, _apply(image_grid[None], total), mode="bilinear",
                                         padding_mode="border", align_corners=True)
                moving_feat = _features(ctx, metric, on_fixed)
                warp = torch.eye(dim + 1, dtype=total.dtype, device=dev)
            else:
                moving_feat = _features(ctx, metric, moving_img)
                warp = total
        to_norm = _to_normalised_scale(torch, shape, dev)
        if velocity_norm is None:
            v = torch.zeros(1, dim, *shape, device=dev)
        else:
            v = F.interpolate(velocity_norm, size=shape, mode=mode, align_corners=True) / to_norm
        v.requires_grad_(True)
        optimizer = _Adam([v], lr=p.deformable_learning_rate)
        padding = "border" if metric == "mind" else "zeros"

        # voxels the sampled similarity may use (inside the fixed mask), flattened
        candidates = flat_grid = flat_feat = None
        n_samples = int(p.deformable_samples)
        if metric != "lncc" and n_samples and n_samples < fixed_img[0, 0].numel():
            flat_grid = image_grid.reshape(-1, dim)
            candidates = torch.arange(flat_grid.shape[0], device=dev)
            if fixed_mask is not None:
                candidates = candidates[fixed_mask.reshape(-1) > 0]
            flat_feat = fixed_feat.reshape(fixed_feat.shape[1], -1)
        # MI over the whole grid counts the masked voxels: indexed by a boolean mask, each iteration waited for
        # the device to count them
        mask_index = _mask_index(fixed_mask) if metric == "mi" and fixed_mask is not None else None

        def similarity(vel: Any, fixed_feat: Any = fixed_feat, moving_feat: Any = moving_feat,
                       fixed_mask: Any = fixed_mask, grid: Any = grid, to_norm: Any = to_norm,
                       padding: str = padding, image_grid: Any = image_grid,
                       image_shape: list[int] = image_shape, sampled: bool = False,
                       candidates: Any = candidates, n_samples: int = n_samples,
                       flat_grid: Any = flat_grid, flat_feat: Any = flat_feat, warp: Any = warp,
                       window: Any = window, mask_index: Any = mask_index) -> tuple[Any, Any]:
            smooth = gaussian_blur(vel, sigmas) if p.velocity_sigma > 0 else vel
            disp = _integrate(torch, smooth * to_norm, grid, int(p.integration_steps))
            if sampled and candidates is not None and candidates.numel() > n_samples:
                # a fresh random subset of fixed voxels each iteration (seeded): the cost of an
                # iteration no longer grows with the image, only with ``deformable_samples``
                # drawn with replacement: O(samples) work, where a permutation of all voxels would
                # cost more than the iteration itself on a 256^3 image
                pick = candidates[torch.randint(0, candidates.numel(), (n_samples,), device=dev,
                                                generator=ctx.device_generator)]
                points = flat_grid[pick]
                shape5 = (1, 1, 1, -1, dim) if dim == 3 else (1, 1, -1, dim)
                d_pts = F.grid_sample(disp, points.reshape(shape5), mode="bilinear", padding_mode="border",
                                      align_corners=True).reshape(dim, -1).transpose(0, 1)
                moved = _apply(points + d_pts, warp)
                with ctx.autocast(metric):
                    fixed_pts = flat_feat[:, pick]
                    if metric == "mind":
                        warped_pts = ctx.sample_moving(moving_feat, moved, padding)
                        sim = ((fixed_pts - warped_pts) ** 2).mean()
                    else:  # the linear stages' rule: only the points inside the moving image count
                        warped_pts, counted = ctx.sample_for_mi(moving_feat, moved)
                        sim = ctx.mi_loss(fixed_pts, warped_pts, counted)
                return sim.float(), smooth
            if list(disp.shape[2:]) != image_shape:
                disp = F.interpolate(disp, size=image_shape, mode=mode, align_corners=True)
            moved = _apply(image_grid[None] + disp.movedim(1, -1), warp)
            with ctx.autocast(metric):
                if metric == "mi":  # as above, over the grid
                    warped, counted = ctx.sample_for_mi(moving_feat, moved.reshape(-1, dim))
                    sim = _dense_similarity(ctx, metric, fixed_feat, warped, fixed_mask, window, mask_index, counted)
                else:
                    warped = F.grid_sample(moving_feat, moved, mode="bilinear", padding_mode=padding,
                                           align_corners=True)
                    sim = _dense_similarity(ctx, metric, fixed_feat, warped, fixed_mask, window, mask_index)
            return sim.float(), smooth

        if level == len(levels) - 1:
            with torch.no_grad():
                before = float(similarity(torch.zeros_like(v))[0])
        iters = int(iters)
        for it in range(iters):
            optimizer.zero_grad()
            sim, smooth = similarity(v, sampled=True)
            loss = sim + p.regularisation_weight * regulariser(smooth)
            loss.backward()
            optimizer.step()
            pending.append(sim.detach())
            done += 1
            if it % 10 == 0 or it == iters - 1:
                last = _flush(torch, pending, history, level, it)
                if not math.isfinite(last):
                    raise RegistrationError(f"The deformable stage produced a non-finite metric at level {level + 1}.",
                                            "Lower deformable_learning_rate or raise regularisation_weight.")
                frac = span[0] + (span[1] - span[0]) * done / max(total_iters, 1)
                report(progress, frac, f"deformable: level {level + 1}/{len(levels)}, iteration {it + 1}/{iters}, "
                                       f"metric {last:.4f}")
        with torch.no_grad():
            smooth = gaussian_blur(v, sigmas) if p.velocity_sigma > 0 else v
            velocity_norm = (smooth * to_norm).detach()
            if level == len(levels) - 1:
                after = float(similarity(v)[0])
    stage = StageResult(name="deformable", metric_name=f"{metric} (torch)", metric_before=before, metric_after=after,
                        iterations=done, stop_reason="iteration budget of every level spent",
                        seconds=time.perf_counter() - start, history=history,
                        level_iterations=iterations_per_level(history, len(levels)))  # the merged levels, all
    return velocity_norm, stage


def _folding(torch: Any, disp: Any) -> tuple[float, float]:
    """(fraction of voxels whose Jacobian determinant is <= 0, smallest determinant) of the mapping
    x + u(x), for a displacement (1, d, *shape) in normalised units (channels x, y, z)."""
    dim = disp.shape[1]
    shape = list(disp.shape[2:])
    scale = torch.tensor([(shape[dim - 1 - k] - 1) / 2.0 for k in range(dim)], dtype=disp.dtype,
                         device=disp.device).reshape(dim, *([1] * dim))
    u = disp[0] * scale  # voxel units
    folded, smallest, count = 0, float("inf"), 0
    step = 16  # slabs along the first tensor axis keep the 3x3 Jacobians small on a 1 mm head
    for lo in range(0, shape[0], step):
        part = u[:, max(lo - 1, 0):min(lo + step + 1, shape[0])]
        # d u_i / d x_j: spatial axis j (x, y, z) is tensor axis dim - 1 - j of each channel
        grads = [torch.gradient(part, dim=1 + (dim - 1 - j))[0] for j in range(dim)]
        jac = torch.stack(grads, dim=1) + torch.eye(dim, dtype=u.dtype, device=u.device).reshape(
            dim, dim, *([1] * dim))
        keep = slice(1 if lo > 0 else 0, None if lo + step + 1 > shape[0] else -1)
        det = torch.linalg.det(jac.movedim(0, -1).movedim(0, -1))[keep]
        folded += int((det <= 0).sum())
        count += det.numel()
        smallest = min(smallest, float(det.min()))
    return folded / max(count, 1), smallest


def _full_resolution_displacement(ctx: _Context, velocity_norm: Any) -> Any:
    """Integrate the velocity on the full fixed grid: displacement (1, d, *shape), normalised units."""
    import torch
    import torch.nn.functional as F

    shape = list(ctx.fixed.shape)
    mode = "trilinear" if ctx.dim == 3 else "bilinear"
    with torch.no_grad():
        v = F.interpolate(velocity_norm, size=shape, mode=mode, align_corners=True)
        return _integrate(torch, v, _identity_grid(shape, ctx.device), int(ctx.params.integration_steps))


def _displacement_transform(ctx: _Context, disp_norm: Any) -> sitk.DisplacementFieldTransform:
    """DisplacementFieldTransform on the fixed grid (physical mm) from a normalised displacement."""
    dim = ctx.dim
    linear = ctx.f_norm_to_phys[:dim, :dim]
    d = disp_norm[0].movedim(0, -1).double().cpu().numpy()  # (*shape, d) normalised, (x, y, z) order
    physical = d @ linear.T
    field = sitk.GetImageFromArray(physical.astype(np.float64), isVector=True)
    field.CopyInformation(ctx.fixed_image)
    return sitk.DisplacementFieldTransform(field)


def _affine_transform(matrix: np.ndarray, center: np.ndarray, translation: np.ndarray) -> sitk.AffineTransform:
    dim = len(center)
    tx = sitk.AffineTransform(dim)
    tx.SetMatrix([float(v) for v in np.asarray(matrix).ravel()])
    tx.SetCenter([float(v) for v in center])
    tx.SetTranslation([float(v) for v in translation])
    return tx


def _deformable_levels(p: TorchRegistrationParameters, base_spacing: float) -> list[tuple[float, int]]:
    """(shrink relative to the finest fixed voxel, iterations) of each deformable level; levels of the same
    spacing (e.g. several at or below the image's voxel) are merged into one."""
    levels: list[tuple[float, int]] = []
    for spacing_mm, iters in zip(p.deformable_level_spacing_mm, p.deformable_iterations):
        shrink = max(float(spacing_mm) / base_spacing, 1.0)
        if levels and abs(levels[-1][0] - shrink) < 1e-6:
            levels[-1] = (shrink, levels[-1][1] + int(iters))  # coincident levels: merge
        else:
            levels.append((shrink, int(iters)))
    return levels


def _coarse_to_fine(levels: Sequence[float], *alongside: Sequence[Any]) -> list[list[Any]]:
    """``levels`` sorted coarse to fine (largest first, ties in their order), each list of ``alongside`` (a
    level's iterations, sigmas) reordered with them: the suggestion of a level-order warning."""
    order = sorted(range(len(levels)), key=lambda i: -float(levels[i]))
    return [[values[i] for i in order] for values in (levels, *alongside)]


def _linear_source(given: Any, params: TorchRegistrationParameters) -> Any:
    """The SimpleITK stage whose shrink factors ``params`` runs as ``linear_shrink_factors`` (the first linear stage
    of ``given``, the settings the caller passed, when they were converted), or None when they are torch's own."""
    if given is None or isinstance(given, (dict, TorchRegistrationParameters)) or not hasattr(given, "stages"):
        return None
    for stage in given.stages:
        if _STAGE_ALIASES.get(str(getattr(stage, "name", "")).lower()) in ("rigid", "affine"):
            shrink = list(getattr(stage, "shrink_factors", None) or [])
            return stage if [int(f) for f in shrink] == [int(f) for f in params.linear_shrink_factors] else None
    return None


def _level_order_warnings(params: TorchRegistrationParameters, base_spacing: float, given: Any = None) -> list[str]:
    """Warnings for pyramid levels that grow coarser from one level to the next.

    Levels run in the order given (as ANTs and elastix/ITK run theirs, so any order is taken), but given fine to
    coarse, e.g. ``deformable_level_spacing_mm=[2, 4]`` or ``linear_shrink_factors=[1, 2, 4]``, a stage ends on
    its coarser grid, not its finest, without a word: the field is the 4 mm level's, the linear result the
    shrink-4 level's, where coarse to fine would refine both on the finest grid. The deformable levels are
    compared as they run (a level is never finer than the fixed voxel ``base_spacing``, and levels that
    coincide are merged). ``given`` are the settings the caller passed: when the linear levels are a SimpleITK
    stage's shrink factors (a preset), the warning names that stage's setting, which is what the user wrote
    (it had named ``linear_shrink_factors``, a setting the preset does not have). The suggested order keeps each
    level's iterations (a preset stage's sigmas) with it.
    """
    out = []
    if any(s in ("rigid", "affine") for s in params.stages):
        # a level of 0 iterations leaves the transform as it is (skipped, ANTs' 100x0): only those that run count
        factors = [int(f) for f, i in zip(params.linear_shrink_factors, params.linear_iterations) if int(i) > 0]
        if any(b > a for a, b in zip(factors, factors[1:])):
            asked = [int(f) for f in params.linear_shrink_factors]
            # [2, 4, 1] ends at its finest: it had said "end at shrink factor 1, not at their finest (1)". A finer
            # level of 0 iterations is skipped: [4, 8, 2, 1] with [3, 3, 3, 0] ends at the finest that runs, 2,
            # which "their finest (shrink factor 2)" had contradicted (the 1 listed)
            finest = "their finest" if min(factors) == min(asked) else "the finest that runs"
            ends = (f"end at shrink factor {factors[-1]}, not at the finest that runs ({min(factors)})"
                    if factors[-1] != min(factors) else
                    f"run a coarser level before they end at {finest} (shrink factor {factors[-1]})")
            source = _linear_source(given, params)
            if source is None:
                iters = [int(i) for i in params.linear_iterations]
                own_sigmas = [float(x) for x in params.linear_smoothing_sigmas or []]
                usual, usual_iters, usual_sigmas = _coarse_to_fine(asked, iters, own_sigmas or asked)
                with_iters = "" if usual_iters == iters else f" with linear_iterations {level_list(usual_iters)}"
                if own_sigmas and usual_sigmas != own_sigmas:  # a level's sigma goes with it, as its iterations do
                    with_iters += f"{' and' if with_iters else ' with'} linear_smoothing_sigmas {level_list(usual_sigmas)}"
                out.append(f"linear_shrink_factors {level_list(asked)} grow coarser from one level to the next: the "
                           f"levels run in the order given, so the linear stages {ends}. Pyramid levels are usually "
                           f"given coarse to fine, e.g. {level_list(usual)}{with_iters}.")
            else:
                sigmas = [float(x) for x in getattr(source, "smoothing_sigmas", None) or []]
                usual, usual_sigmas = _coarse_to_fine(asked, sigmas if len(sigmas) == len(asked) else asked)
                with_sigmas = ("" if len(sigmas) != len(asked) or usual_sigmas == sigmas else
                               f" with smoothing_sigmas {level_list(usual_sigmas)}")
                out.append(f"The {source.name} stage's shrink_factors {level_list(asked)} grow coarser from one level "
                           "to the next: the torch backend runs them as its linear_shrink_factors, in the order "
                           f"given, so the linear stages {ends}. Pyramid levels are usually given coarse to fine, "
                           f"e.g. shrink_factors {level_list(usual)}{with_sigmas}.")
        else:
            out.extend(_sigma_order_warnings(params, factors, given))
    if "deformable" in params.stages:
        levels = _deformable_levels(params, base_spacing)
        # levels of 0 iterations before the first that iterates carry a zero field onto their grid, which leaves
        # it zero: skipped, as a linear level of 0 iterations is ([1, 4, 2] mm with [0, 3, 3] runs as [4, 2] mm,
        # bit for bit, and had been warned as ending off its 1 mm level). One after it still counts: the field is
        # carried onto its grid and smoothed there
        first = next((i for i, (_, iters) in enumerate(levels) if iters > 0), 0)
        shrinks = [f for f, _ in levels[first:]]
        if any(b > a + 1e-6 for a, b in zip(shrinks, shrinks[1:])):
            asked_mm = [float(f) for f in params.deformable_level_spacing_mm]
            iters = [int(i) for i in params.deformable_iterations]
            usual_mm, usual_iters = _coarse_to_fine(asked_mm, iters)
            with_iters = "" if usual_iters == iters else f" with deformable_iterations {level_list(usual_iters)}"
            runs = "" if min(f for f, _ in levels) > min(shrinks) - 1e-6 else " that runs"  # a finer one skipped
            ends = (f"the deformation field ends on the {shrinks[-1] * base_spacing:g} mm level's grid, not the "
                    f"finest{runs} ({min(shrinks) * base_spacing:g} mm)" if shrinks[-1] > min(shrinks) + 1e-6 else
                    f"the deformable stage runs a coarser level before it ends on the finest grid{runs} "
                    f"({shrinks[-1] * base_spacing:g} mm)")
            out.append(f"deformable_level_spacing_mm {level_list(asked_mm)} grow coarser from one level to the next: "
                       f"the levels run in the order given, so {ends}. Pyramid levels are usually given coarse to "
                       f"fine, e.g. {level_list(usual_mm)}{with_iters}.")
    return out


def _sigma_order_warnings(params: TorchRegistrationParameters, factors: list[int], given: Any) -> list[str]:
    """A warning for ``linear_smoothing_sigmas`` (given, or a SimpleITK stage's carried) that grow from one level
    to the next while the shrink factors ``factors`` (of the levels that run) do not: in the SimpleITK backend's
    words (:func:`sitk_backend._level_order_warning`), where sigmas that grow end the stage smoothed and cost as
    much ([4, 2, 1] with [0, 1, 2]: 0.58 mm mean error where [2, 1, 0] gives 0.16 mm). The torch run had taken
    them without a word, a preset's [0, 1, 2] too, which the SimpleITK backend warns about. Levels of 0
    iterations are skipped, as for the shrink factors."""
    if params.linear_smoothing_sigmas is None:  # the rule: half each level's voxel size, never growing here
        return []
    asked_sigmas = [float(x) for x in params.linear_smoothing_sigmas]
    sigmas = [x for x, i in zip(asked_sigmas, params.linear_iterations) if int(i) > 0]
    if not any(b > a for a, b in zip(sigmas, sigmas[1:])):
        return []
    asked = [int(f) for f in params.linear_shrink_factors]
    in_mm = bool(params.linear_smoothing_in_mm)

    def sigma(value: float) -> str:
        return sigma_text(value, in_mm)

    if sigmas[-1] != min(sigmas):
        ends = (f"end smoothed by {sigma(sigmas[-1])} at shrink factor {factors[-1]}, not at their least "
                f"({sigma(min(sigmas))})")
    else:
        ends = f"run a coarser level before they end at their finest (shrink factor {factors[-1]}, {sigma(sigmas[-1])})"
    usual, usual_sigmas = sorted(asked, reverse=True), sorted(asked_sigmas, reverse=True)
    source = _linear_source(given, params)
    if source is not None and ([float(x) for x in getattr(source, "smoothing_sigmas", None) or []] != asked_sigmas
                               or bool(getattr(source, "smoothing_in_mm", False)) != in_mm):
        source = None  # the stage's levels, but sigmas given in torch settings: named as those
    if source is None:
        return [f"linear_smoothing_sigmas {level_list(asked_sigmas)}{' mm' if in_mm else ''} grow from one level to "
                f"the next (linear_shrink_factors {level_list(asked)}): the levels run in the order given, so the "
                f"linear stages {ends}. Pyramid levels are usually given coarse to fine, e.g. linear_shrink_factors "
                f"{level_list(usual)} with linear_smoothing_sigmas {level_list(usual_sigmas)}."]
    return [f"The {source.name} stage's smoothing_sigmas {level_list(asked_sigmas)}{' mm' if in_mm else ''} grow from "
            f"one level to the next (shrink_factors {level_list(asked)}): the torch backend runs them as its "
            f"linear_smoothing_sigmas, in the order given, so the linear stages {ends}. Pyramid levels are usually "
            f"given coarse to fine, e.g. shrink_factors {level_list(usual)} with smoothing_sigmas "
            f"{level_list(usual_sigmas)}."]


def _check_levels_fit(params: TorchRegistrationParameters, fixed: sitk.Image) -> None:
    """Refuse a pyramid level whose voxels are coarser than the fixed image's largest extent.

    Such a level keeps the 4 voxels a level never goes below, smoothed by half the asked voxel size: nothing
    to register. ``deformable_level_spacing_mm=[1e9]`` had ended in "non-finite metric ... lower the learning
    rate" (ITK's recursive Gaussian returns NaN at sigma 5e8 mm), ``linear_shrink_factors=[1e9]`` in a torch
    RuntimeError (an index out of bounds in the MI histogram), and a 100 mm level of a 48 mm image ran and
    was discarded as worse.

    The image's extent is what its voxels cover (size x spacing), so that the default shrink factors [4, 2, 1]
    fit every image the backend takes (4 voxels along each axis at least): measured from the first to the last
    voxel centre, a 4x4x4 image had refused its default rigid stage. The default deformable levels ([4, 2] mm,
    which the CLI offers no way to change) are not refused either: on an image less than 4 mm across (microscopy,
    a small animal's organ) they run as they did before this check, the coarse level held at 4 voxels; a level
    list that differs from the default is refused there, and the fix names one that fits (4 and 2 x the finest
    voxel) instead of the default, which does not. ``linear_smoothing_sigmas`` wider than that extent are refused
    alike: such a level is flat.
    """
    extent = float(max(n * s for n, s in zip(fixed.GetSize(), fixed.GetSpacing())))
    base = float(min(fixed.GetSpacing()))
    size = "x".join(str(n) for n in fixed.GetSize())
    stages = set(params.stages)
    checks = []
    if stages & {"rigid", "affine"}:
        checks.append(("linear_shrink_factors", [float(f) for f in params.linear_shrink_factors],
                       [base * float(f) for f in params.linear_shrink_factors],
                       f"shrink factors whose voxels (factor x {base:g} mm, the finest fixed voxel) stay within "
                       f"it, e.g. [4, 2, 1]"))
    spacing_mm = [float(f) for f in params.deformable_level_spacing_mm]
    if "deformable" in stages and spacing_mm != TorchRegistrationParameters().deformable_level_spacing_mm:
        example = "[4, 2]" if extent >= 4.0 else f"[{4 * base:g}, {2 * base:g}] (4 and 2 x the finest voxel)"
        checks.append(("deformable_level_spacing_mm", spacing_mm, spacing_mm,
                       f"level voxel sizes in mm within it, coarse to fine, e.g. {example}"))
    if stages & {"rigid", "affine"} and params.linear_smoothing_sigmas is not None:
        # a Gaussian wider than the whole image leaves it flat: ITK's recursive Gaussian returns NaN from about
        # 5e8 mm (the CPU), torch's kernel of 6 sigma + 1 taps fills the memory (CUDA)
        unit = "mm" if params.linear_smoothing_in_mm else f"voxels of {base:g} mm, the finest fixed voxel"
        checks.append(("linear_smoothing_sigmas", [float(x) for x in params.linear_smoothing_sigmas],
                       _linear_sigmas_mm(params, base),
                       f"sigmas ({unit}) whose width stays within it, e.g. [2, 1, 0]"))
    for field, asked, voxels_mm, allowed in checks:
        too_coarse = [a for a, mm in zip(asked, voxels_mm) if mm > extent]
        if too_coarse:
            listed = level_list(asked)
            widths = ', '.join(f'{mm:g} mm' for a, mm in zip(asked, voxels_mm) if a in too_coarse)
            what = (f"smooths levels by a Gaussian of sigma {widths}, wider" if field == "linear_smoothing_sigmas"
                    else f"asks for levels of {widths} voxels, coarser")
            raise InputError(f"Torch registration: {field} {listed} {what} than the whole fixed image ({size} voxels, "
                             f"{extent:g} mm across at most): such a level has nothing left to register.",
                             f"Use {allowed}.")


def _effective_settings(ctx: _Context, p: TorchRegistrationParameters, device: Any) -> dict[str, Any]:
    """What ran where the engine chose it (metrics.json's ``effective``): each level's fixed grid (x, y[, z]:
    a thin axis keeps at least 4 voxels, or all it has, so a 6-slice slab keeps 4-6 slices at every level), the
    linear levels' smoothing in mm, the deformable levels after merging, and the CPU threads (same seed, device
    and threads: same result)."""
    import torch

    def size(shrink: float) -> list[int]:
        return [int(n) for n in ctx.fixed.level_shape(ctx.base_spacing * max(float(shrink), 1.0))[::-1]]

    out: dict[str, Any] = {"number_of_threads": int(torch.get_num_threads()) if device.type == "cpu" else None}
    if any(s in ("rigid", "affine") for s in p.stages):
        out["linear_level_sizes"] = [size(int(f)) for f in p.linear_shrink_factors]
        # the Gaussian each level was smoothed by, in mm along every axis, whichever rule or setting chose it
        out["linear_level_sigmas_mm"] = [round(x, 6) for x in _linear_sigmas_mm(p, ctx.base_spacing)]
        if p.linear_metric == "mi":
            # where mutual information drew its samples: the fixed mask, the content and its rim
            # (_Context.content_region: its voxels per level), or the whole grid (an image with no uniform background)
            shapes = [ctx.fixed.level_shape(ctx.base_spacing * max(float(f), 1.0)) for f in p.linear_shrink_factors]
            regions = [ctx.content_region(shape) for shape in shapes] if ctx.fixed.mask is None else []
            out["linear_samples_from"] = ("fixed mask" if ctx.fixed.mask is not None else
                                          "content" if regions and regions[0] is not None else "whole grid")
            if out["linear_samples_from"] == "content":
                out["linear_content_rim_voxels"] = _CONTENT_RIM
                out["linear_content_voxels"] = [int(r.sum()) for r in regions]
                if ctx.whole_grid_levels:
                    out["linear_whole_grid_levels"] = sorted(ctx.whole_grid_levels)
    if "deformable" in p.stages:
        levels = _deformable_levels(p, ctx.base_spacing)
        out["deformable_level_sizes"] = [size(f) for f, _ in levels]
        out["deformable_iterations"] = [int(i) for _, i in levels]
    return out


def register_torch(fixed: sitk.Image, moving: sitk.Image, parameters: Any = None, *,
                   fixed_mask: sitk.Image | None = None, moving_mask: sitk.Image | None = None,
                   initial_transform: sitk.Transform | None = None, seed: int | None = None,
                   progress: ProgressCallback | None = None) -> RegistrationResult:
    """Register ``moving`` to ``fixed`` with PyTorch (GPU when available): linear stages, then an SVF.

    Args:
        fixed: reference image (2D or 3D).
        moving: image to align (same dimension, any modality).
        parameters: TorchRegistrationParameters, the SimpleITK backend's RegistrationParameters
            (converted by :func:`torch_parameters`), a dict of fields, or None for the defaults.
        fixed_mask: the similarity is computed inside this mask only (fixed grid), in every stage and metric. A
            masked first rigid/affine stage started by the initializer is checked against its coarsest level run
            without the masks, and run again from there when the SimpleITK backend's rule prefers it
            (``effective.masked_start``; see :func:`_masked_linear_stage`).
        moving_mask: only fixed voxels whose moving point lands inside this mask count, in every stage and
            metric (through the current transform in the linear stages, through the affine in the deformable
            stage); with both masks, voxels inside both. LNCC's windows also leave out the voxels outside it.
        initial_transform: a linear transform (fixed -> moving points) to start from; replaces
            the initializer.
        seed: seed of the voxel sampling (overrides the parameters' seed), a whole number from 0 to
            :data:`MAX_SEED` as everywhere; with the same seed, device and thread count the result is identical.
        progress: ``progress(fraction, message)``; returning False cancels.

    Returns:
        RegistrationResult with backend "torch": an AffineTransform, or
        ``CompositeTransform([affine, DisplacementFieldTransform])`` when a deformable stage ran.

    Raises:
        InputError: bad images, masks, parameters, a non-linear initial transform, or no GPU
            when one was requested.
        RegistrationError: the optimisation diverged (non-finite metric).
        OperationCancelled: the progress callback asked to stop.
    """
    import torch

    from . import working_copies

    t_start = time.perf_counter()
    converted = conversion_warnings(parameters)
    params = torch_parameters(parameters)
    if seed is None:
        seed = params.seed
    if seed is None:
        seed = secrets.randbelow(MAX_SEED + 1)  # a seed the result records, which a rerun may be given
    # register_torch is public: its seed= had been taken through int() (1.5 and True ran as seed 1, -1 and 2^40 ran)
    params = dataclasses.replace(params, seed=check_seed(seed))
    # as the sitk backend: the moments/geometry initialisers align the centres, so only a start from
    # an initial transform or from no initialiser needs the images to overlap as they lie
    check_pair(fixed, moving, transform=initial_transform,
               require_overlap=initial_transform is not None or params.initializer == "none")
    check_min_axis(fixed, moving)
    check_fixed_not_within_a_voxel(params.stages[0], fixed, moving)
    if "deformable" in params.stages:
        check_deformable_size(fixed, "deformable")
    _check_levels_fit(params, fixed)
    fixed_mask = check_mask(fixed_mask, fixed, "fixed mask", "fixed image") if fixed_mask is not None else None
    moving_mask = check_mask(moving_mask, moving, "moving mask", "moving image") if moving_mask is not None else None
    dim = fixed.GetDimension()
    if initial_transform is not None:
        if initial_transform.GetDimension() != dim:
            raise InputError(f"The initial transform is {initial_transform.GetDimension()}D but the images are {dim}D.",
                             "Give a transform of the images' dimension.")
        parts = _linear_parts(initial_transform, dim)
        if parts is None:
            raise InputError("The torch backend starts only from a linear initial transform "
                             f"(got {initial_transform.GetName()}).",
                             "Give a rigid/affine initial transform, or use backend='sitk'.")
    device = select_device(params.device)
    fixed_f, moving_f, sparse = working_copies(fixed, moving)  # float32, a CT's padding filled: once, here
    search_info = None
    if params.initializer == "search" and initial_transform is None:
        initial_transform, search_info = _search_start(fixed_f, moving_f, params, fixed_mask, moving_mask, progress)
        parts = _linear_parts(initial_transform, dim)
        progress = scaled(progress, SEARCH_SHARE, 1.0)

    # Reproducibility: the CPU kernels used here are deterministic for a given thread count (tested).
    # On CUDA, cuDNN is told to be deterministic; grid_sample's backward accumulates with atomic
    # adds on a GPU and has no deterministic version, so GPU runs agree only to round-off.
    # (torch.use_deterministic_algorithms is not called: it imports torch._inductor, ~3 s.)
    cudnn_before = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    if device.type == "cuda":
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    # All sampling draws from the context's own generators (seeded below), never from torch's
    # global one: a registration leaves the caller's torch.rand & co. as they were.
    try:
        report(progress, 0.0, f"torch registration on {device}")
        ctx = _Context(fixed_f, moving_f, fixed_mask, moving_mask, params, int(seed), device)
        # the sitk backend's centre of mass: one rule for both backends and the rotation search
        center = centre_of_mass(fixed_f, "fixed image", fixed_mask) if params.initializer == "moments" \
            else _image_center(fixed_f)
        if initial_transform is not None:
            matrix, offset = parts
            translation = offset - center + matrix @ center
        else:
            matrix = np.eye(dim)
            if params.initializer == "moments":
                translation = centre_of_mass(moving_f, "moving image", moving_mask) - center
            elif params.initializer == "geometry":
                translation = _image_center(moving_f) - center
            else:
                translation = np.zeros(dim)
        stage_results: list[StageResult] = []
        # masks that do not meet at the start are refused, few voxels inside both warned about, as on the
        # sitk backend (here the moving mask was left out without a word: see _both_masks)
        first = start_kind(params.initializer, initial_transform is not None and search_info is None)
        start_tx = _affine_transform(matrix, center, translation)
        # the fixed voxels inside the moving image, and those of the fixed mask inside the moving mask (or image),
        # from one resampling for the three checks below: each had resampled the moving mask (or a mask of the
        # whole moving image) itself, three times per masked registration (about 0.1 s each at 256x256x200)
        in_image, in_masks = masks_reach(fixed_f, moving_f, start_tx, fixed_mask, moving_mask)
        warnings: list[str] = sparse + converted + _level_order_warnings(params, ctx.base_spacing, parameters) + small_mask_warnings(
            fixed_mask, moving_mask) + check_masks_meet(
            fixed_f, fixed_mask, moving_mask, start_tx, start_description(first), start_fix(first, masks=True),
            count=in_masks)
        overlap = start_overlap(fixed_f, moving_f, start_tx, fixed_mask, moving_mask, inside=in_masks)
        if in_image == 0:
            # the SimpleITK backend's refusal, in its words: no fixed voxel maps inside the moving image, so no
            # metric can be computed there. Sampling zeros outside the moving image, the stages had run anyway
            # and returned a transform from nothing without a word (a 0.4 px sliver of the 2D BrainWeb pair:
            # moved 19 px, mutual information -0.0000 -> -0.0003)
            raise no_overlap_error(params.stages[0], first, fixed, moving)
        if fixed_mask is not None and moving_mask is None and overlap[1] == 0:
            # no voxel of the fixed mask inside the moving image (masks that do not meet are check_masks_meet's):
            # the SimpleITK backend's refusal in its words; the stages had run on zeros and returned a transform
            first_stage = params.stages[0]
            metric = params.deformable_metric if first_stage == "deformable" else params.linear_metric
            raise masks_metric_error(first_stage, metric, fixed_f, fixed_mask, None, start_tx, first)
        # little overlap (under a fifth of the smaller image or mask region): the sitk backend's warning
        warnings += small_overlap_warnings(fixed_f, moving_f, start_tx, start_description(first), start_fix(first),
                                           fixed_mask, moving_mask, overlap=overlap)
        stages = params.stages
        n = len(stages)
        weights = [1.0 if s != "deformable" else 2.0 for s in stages]
        bounds = np.concatenate([[0.0], np.cumsum(weights) / sum(weights) * 0.95])
        velocity = None
        left_out_warned = False  # a stage's warning says it: the final evaluation's would repeat it
        with torch.no_grad():
            metric_before = float(ctx.mi_at_points(ctx.eval_points, ctx.eval_values, ctx.total_matrix(
                torch.as_tensor(_affine_matrix(matrix, center, translation), dtype=torch.float64, device=device)),
                ctx.moving.tensor))
        samples = int(params.linear_samples)
        few = ctx.few_inside()
        if few is not None:
            # 100 or fewer of the evaluation sample inside the moving image (some, or no_overlap_error above)
            raise _few_inside_error(stages[0], few, samples, first, fixed, moving)
        # a mask narrows the metric's capture range: a masked first rigid or affine stage is checked against its
        # coarsest level run without the masks, and run again from there when that is better, by the SimpleITK
        # backend's rule (see _masked_linear_stage)
        second_try = (second_try_applies(stages[0], fixed_mask, moving_mask, initial_transform is not None)
                      and any(int(k) for k in params.linear_iterations))
        masked_start: dict[str, Any] | None = None
        for i, name in enumerate(stages):
            span = (float(bounds[i]), float(bounds[i + 1]))
            if name in ("rigid", "affine"):
                if i == 0 and second_try:
                    new_m, new_t, stage, masked_start = _masked_linear_stage(
                        ctx, name, matrix, translation, center, fixed_f, fixed_mask, progress, span, warnings)
                else:
                    new_m, new_t, stage = _linear_stage(ctx, name, matrix, translation, center, progress, span)
                if stage.metric_after <= stage.metric_before:
                    matrix, translation = new_m, new_t
                else:
                    stage.accepted = False
                    warnings.append(f"The {name} stage made the metric worse ({stage.metric_before:.4f} -> "
                                    f"{stage.metric_after:.4f}); its result was discarded.")
            else:
                if i != n - 1:
                    warnings.append("Stages after the deformable stage are ignored by the torch backend.")
                velocity, stage = _deformable_stage(ctx, _affine_matrix(matrix, center, translation), progress, span)
                if not stage.metric_after <= stage.metric_before:
                    stage.accepted = False
                    velocity = None
                    warnings.append(f"The deformable stage made its metric worse ({stage.metric_before:.4f} -> "
                                    f"{stage.metric_after:.4f}); its result was discarded.")
            stage_results.append(stage)
            few = ctx.few_inside()
            if few is not None:
                raise _few_inside_error(name, few, samples, None, fixed, moving)
            if ctx.moving_mask_left_out():
                warnings.append(_left_out_warning(f"the {name} stage", fixed_mask is not None))
                left_out_warned = True
            if name == "deformable":
                break
        report(progress, 0.96, "converting the result to SimpleITK transforms")
        affine_tx = _affine_transform(matrix, center, translation)
        transform: sitk.Transform = affine_tx
        total = ctx.total_matrix(torch.as_tensor(_affine_matrix(matrix, center, translation),
                                                 dtype=torch.float64, device=device))
        with torch.no_grad():
            if velocity is not None:
                disp = _full_resolution_displacement(ctx, velocity)
                transform = sitk.CompositeTransform([affine_tx, _displacement_transform(ctx, disp)])
                # metric of the final mapping at the evaluation points (their displacement sampled)
                shape = (1, 1, 1, -1, dim) if dim == 3 else (1, 1, -1, dim)
                d_pts = torch.nn.functional.grid_sample(disp, ctx.eval_points.reshape(shape), mode="bilinear",
                                                        padding_mode="border", align_corners=True)
                points = ctx.eval_points + d_pts.reshape(dim, -1).transpose(0, 1)
                metric_after = float(ctx.mi_at_points(points, ctx.eval_values, total, ctx.moving.tensor))
                linear_only = float(ctx.mi_at_points(ctx.eval_points, ctx.eval_values, total, ctx.moving.tensor))
                if metric_after > metric_before + 1e-6 and linear_only < metric_after:
                    # the field lowered its own similarity (MIND) but left the images less alike than at
                    # the start: as the sitk backend does with a stage that makes things worse, drop it
                    stage_results[-1].accepted = False
                    warnings.append(f"The deformable stage made mutual information at the evaluation voxels worse "
                                    f"({linear_only:.4f} -> {metric_after:.4f}); its result was discarded.")
                    transform, metric_after = affine_tx, linear_only
                else:
                    fraction, smallest = _folding(torch, disp)
                    if fraction > 0:  # scaling and squaring is diffeomorphic only in the limit
                        warnings.append(f"The deformation folds in {100 * fraction:.2f}% of the voxels (Jacobian "
                                        f"determinant down to {smallest:.2f}): raise regularisation_weight or "
                                        "velocity_sigma.")
            else:
                metric_after = float(ctx.mi_at_points(ctx.eval_points, ctx.eval_values, total, ctx.moving.tensor))
        few = ctx.few_inside()
        if few is not None:  # the final mapping (a deformation) sent the evaluation sample out of the moving image
            raise _few_inside_error(stage_results[-1].name, few, samples, None, fixed, moving)
        if ctx.moving_mask_left_out() and not left_out_warned:
            warnings.append(_left_out_warning("the final mutual information (metric_after)", fixed_mask is not None))
        if metric_after > metric_before + 1e-6 and not any(s.accepted is False for s in stage_results):
            warnings.append(f"Mutual information at the evaluation voxels got worse ({metric_before:.4f} -> "
                            f"{metric_after:.4f}); check the result.")
        report(progress, 1.0, "torch registration done")
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn_before
    info = params.to_dict()
    info["device"] = str(device)
    info["mixed_precision_active"] = bool(ctx.amp)
    info["effective"] = _effective_settings(ctx, params, device)
    if masked_start is not None:
        # where the SimpleITK backend records it beside its first stage's settings; the torch backend's stages are
        # names, its settings one set (result.ran_again reads either)
        info["effective"]["masked_start"] = masked_start
    return RegistrationResult(transform=transform, stages=stage_results, metric_before=metric_before,
                              metric_after=metric_after,
                              warnings=warnings, seconds=time.perf_counter() - t_start, backend="torch",
                              parameters=info, initializer=search_info)


def _few_inside_error(stage: str, count: int, samples: int, start_from: str | None,
                      fixed: sitk.Image | None = None, moving: sitk.Image | None = None) -> RegistrationError:
    """The refusal of a run whose mutual information fell back to every sample (:meth:`_Context.few_inside`:
    ``count`` samples, ``_MIN_MASKED`` or fewer, inside the moving image) at stage ``stage``: at its start
    (``start_from``, a :func:`start_kind`, for the fix) or during it (None). In the SimpleITK backend's words for
    ITK's refusal of samples that map outside the moving image (``sitk_backend._execute``), with the torch
    setting in place of ``sampling_percentage``; given the images, naming a spacing that makes one image's extent
    dwarf the other's (``sitk_backend.extent_clause``)."""
    detail = (f"{count} of the fixed voxels sampled for mutual information "
              f"{'at the starting transform' if start_from else 'at some iterations'}, where the torch backend "
              f"needs more than {_MIN_MASKED}, or half of what a smaller sample or moving image holds")
    # linear_samples 0 samples every voxel already: raising it is no fix (a moving image of few voxels; the
    # coarse levels, shrunk, hold fewer of them)
    more = (f"raise linear_samples (now {samples}; 0 samples every voxel) so that more of them land inside"
            if samples else "every fixed voxel is sampled already (linear_samples 0): for a moving image of "
            "this few voxels, use finer linear_shrink_factors (e.g. [1]), whose levels hold more of them, or "
            "a larger moving image")
    extent = extent_clause(fixed, moving)
    if start_from is not None:
        return RegistrationError(f"Stage '{stage}': too few sample points map inside the moving image ({detail}), "
                                 f"so the metric cannot be computed.{extent}", f"{start_fix(start_from)} Or {more}.")
    return RegistrationError(f"Stage '{stage}' failed: too few sample points map inside the moving image "
                             f"({detail}).{extent}",
                             f"The images probably drifted apart: check the initial alignment, use masks, or {more}.")


def _left_out_warning(where: str, fixed_mask: bool) -> str:
    """The warning that ``where`` left the moving mask out (:func:`_both_masks`)."""
    voxels = "voxels of the fixed mask" if fixed_mask else "fixed voxels"
    alone = "the fixed mask alone" if fixed_mask else "every voxel"
    return (f"The moving mask was left out of {where} at some iterations or evaluations: {_MIN_MASKED} {voxels} "
            f"or fewer (of a pyramid level's, which at shrink factor 4 has 1/16 of the voxels in 2D, 1/64 in 3D) "
            f"mapped inside it through the transform there, so {alone} counted instead, including what the moving "
            "mask excludes. Check that the masks cover the same anatomy and that the start roughly aligns them, "
            "or use larger masks (or smaller linear_shrink_factors).")


def _search_start(fixed: sitk.Image, moving: sitk.Image, params: TorchRegistrationParameters,
                  fixed_mask: sitk.Image | None, moving_mask: sitk.Image | None,
                  progress: ProgressCallback | None) -> tuple[sitk.Transform, dict[str, Any]]:
    """The rotation search's start for the first linear stage (SimpleITK on the CPU, as on the sitk backend).

    The search scores Mattes mutual information with the torch settings' histogram bins (at most 32
    at its coarse level) whatever the linear metric: MI serves one modality as well as two, and the
    search only has to land inside the linear stage's capture range.
    """
    first = _STAGE_ALIASES[str(params.stages[0]).lower()]
    stage = StageParameters(name=first, metric="mattes_mi", histogram_bins=int(params.histogram_bins))
    report(progress, 0.0, "rotation search: starting")
    return search_rotation(fixed, moving, stage, fixed_mask=fixed_mask, moving_mask=moving_mask,
                           progress=scaled(progress, 0.0, SEARCH_SHARE))


# --------------------------------------------------------------------------------------------
# resampling with torch (the sitk transforms this backend returns, read back)

def _transform_points(torch: Any, transform: sitk.Transform, points: Any) -> Any:
    """Map physical points (N, d) float64 through a linear / displacement-field / composite transform."""
    import torch.nn.functional as F

    dim = transform.GetDimension()
    if isinstance(transform, sitk.CompositeTransform):
        # ITK applies the last transform added first
        for i in reversed(range(transform.GetNumberOfTransforms())):
            points = _transform_points(torch, transform.GetNthTransform(i), points)
        return points
    parts = _linear_parts(transform, dim)
    if parts is not None:
        matrix, offset = (torch.as_tensor(x, dtype=torch.float64, device=points.device) for x in parts)
        return points @ matrix.T + offset
    if isinstance(transform, sitk.DisplacementFieldTransform) or transform.GetName() == "DisplacementFieldTransform":
        field_img = sitk.DisplacementFieldTransform(transform).GetDisplacementField()
        field = torch.from_numpy(sitk.GetArrayFromImage(field_img).astype(np.float32)).to(points.device)
        field = field.movedim(-1, 0)[None]
        to_norm = torch.as_tensor(_physical_to_normalised(field_img), dtype=torch.float64, device=points.device)
        norm = _apply(points, to_norm)
        shape = (1, 1, 1, -1, dim) if dim == 3 else (1, 1, -1, dim)
        disp = F.grid_sample(field, norm.float().reshape(shape), mode="bilinear", padding_mode="border",
                             align_corners=True).reshape(dim, -1).transpose(0, 1).double()
        inside = _inside_buffer(torch, norm, field_img.GetSize())
        return points + disp * inside[:, None]
    raise InputError(f"resample_torch cannot apply a {transform.GetName()}.",
                     "Use linear transforms and displacement fields, or preprocess.resample (SimpleITK).")


def _inside_buffer(torch: Any, norm: Any, size: Sequence[int]) -> Any:
    """ITK's IsInsideBuffer for continuous indices: -0.5 <= index < size - 0.5 on every axis."""
    half = torch.as_tensor([(s - 1) / 2.0 for s in size], dtype=torch.float64, device=norm.device)
    index = (norm + 1.0) * half
    upper = torch.as_tensor([s - 0.5 for s in size], dtype=torch.float64, device=norm.device)
    return ((index >= -0.5) & (index < upper)).all(dim=1).to(torch.float64)


def resample_torch(moving: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None = None, *,
                   default_value: float = 0.0, device: str = "auto") -> sitk.Image:
    """Linear resampling of ``moving`` on ``reference``'s grid through ``transform``, with torch.

    Matches ``sitk.Resample(moving, reference, transform, sitk.sitkLinear, default_value)``
    (same inside/outside rule), for linear transforms, displacement fields and composites of
    them, e.g. the transforms :func:`register_torch` returns; fast on a GPU.

    Args:
        moving: image to resample (scalar).
        reference: output grid.
        transform: reference physical point -> moving physical point (None: identity).
        default_value: value outside the moving image.
        device: "auto", "cpu" or "cuda".

    Returns:
        float32 image on the reference grid.
    """
    import torch
    import torch.nn.functional as F

    dev = select_device(device)
    dim = reference.GetDimension()
    with torch.no_grad():
        shape = reference.GetSize()[::-1]
        grid = _identity_grid(shape, dev).reshape(-1, dim).double()
        points = _apply(grid, torch.as_tensor(_normalised_to_physical(reference), dtype=torch.float64, device=dev))
        if transform is not None:
            points = _transform_points(torch, transform, points)
        norm = _apply(points, torch.as_tensor(_physical_to_normalised(moving), dtype=torch.float64, device=dev))
        arr = torch.from_numpy(sitk.GetArrayFromImage(sitk.Cast(moving, sitk.sitkFloat32)))[None, None].to(dev)
        grid_shape = (1, 1, 1, -1, dim) if dim == 3 else (1, 1, -1, dim)
        values = F.grid_sample(arr, norm.float().reshape(grid_shape), mode="bilinear", padding_mode="border",
                               align_corners=True).reshape(-1).double()
        inside = _inside_buffer(torch, norm, moving.GetSize())
        values = torch.where(inside > 0, values, torch.full_like(values, float(default_value)))
        out = sitk.GetImageFromArray(values.float().reshape(shape).cpu().numpy())
    out.CopyInformation(reference)
    return out
