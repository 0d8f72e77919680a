"""Registration parameters (dataclasses with defaults that work) and presets (JSON files).

Presets live in ``Resources/Presets/<name>.json`` next to the ``MultimodalFusionLib`` folder,
which is where both a source checkout and an installed Slicer extension keep them
(``MMFUSION_PRESETS_DIR`` overrides the folder, e.g. for a pip-installed engine).
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from pathlib import Path
from typing import Any, Sequence

from ..errors import InputError
from ..validation import did_you_mean, whole_number

#: The largest registration seed, on both backends: SimpleITK's sampler takes an ITK seed from 1 to 2^31 - 1 (a C
#: int; 0 is its wall clock, so seed k runs as k + 1), and the torch backend keeps to the same range so that a seed
#: means one rule whichever backend runs it. A larger seed had been wrapped modulo 2^31 - 2 on the SimpleITK backend
#: (seeds k and k + 2147483646 gave the same transform) and taken up to 2^62 by torch.
MAX_SEED = 2**31 - 2


def check_seed(seed: Any) -> int:
    """``seed`` as an int when it is a whole number from 0 to :data:`MAX_SEED` (an int, or a float without a
    fraction: JSON's 3.0): different seeds give different samplings on either backend.

    Raises:
        InputError: anything else (1.5, True, "1", -1, 2**70), naming the range.
    """
    number = whole_number(seed, 0, MAX_SEED)
    if number is None:
        raise InputError(f"The registration seed must be a whole number from 0 to {MAX_SEED} (2^31 - 2), not "
                         f"{seed!r}: SimpleITK's sampler tells no more seeds apart, and a larger one would give "
                         "the run of a smaller one.",
                         f"Give a whole number from 0 to {MAX_SEED}: --seed 0 on the command line, seed=0 in "
                         "Python or the Slicer Logic, the panel's Random seed box, \"seed\": 0 in a preset (None, "
                         "or null in a preset, for a seed drawn from the clock).")
    return number

__all__ = [
    "StageParameters",
    "RegistrationParameters",
    "STAGE_TYPES",
    "METRICS",
    "OPTIMIZERS",
    "INITIALIZERS",
    "default_stage",
    "step_scale",
    "presets_dir",
    "list_presets",
    "load_preset",
]

STAGE_TYPES = ("rigid", "affine", "bspline")
METRICS = ("mattes_mi", "joint_histogram_mi", "correlation", "mean_squares")
OPTIMIZERS = ("regular_step", "lbfgsb", "gradient_descent_line_search")
INITIALIZERS = ("geometry", "moments", "none", "search")
#: What each initializer does, in one sentence: the CLI's --initializer help and the web UI's choices.
INITIALIZER_HELP = {
    "geometry": "Image centres aligned, no rotation (rotations up to about 30 degrees are recovered).",
    "moments": "Centres of mass aligned, no rotation.",
    "none": "Where the volumes lie (their headers' placement).",
    "search": "Centres of mass, then the best of a grid of rotations at a coarse level: for volumes rotated "
              "more than about 30 degrees apart (e.g. prone vs supine); about 1-2 s more for a head; needs a "
              "rigid or affine first stage.",
}
SAMPLING = ("random", "regular", "none")
#: Default ``StageParameters.max_samples``: binds only on levels of more than 20 M voxels at 1% (a
#: 512x512x200 CT's finest level: 524 k samples); 256^3 at 1% (168 k) and everything smaller is unchanged.
MAX_SAMPLES = 200_000
#: Fewest samples ``number_of_samples`` / ``max_samples`` may ask for: a joint histogram of 32-50 bins
#: squared needs thousands of points (elastix's default is 2000 fresh points per iteration).
MIN_SAMPLE_COUNT = 1000
#: Most Mattes MI histogram bins a stage may ask for (elastix and ANTs use 32-64).
MAX_HISTOGRAM_BINS = 1024
#: The histogram bins a SimpleITK stage whose ``histogram_bins`` is None runs with (the class's default; the
#: rigid and B-spline stages of :func:`default_stage` choose 32). The torch backend runs its own default instead.
DEFAULT_HISTOGRAM_BINS = 50
#: Largest iterations, mesh size or thread count ITK takes: it keeps them in 32-bit unsigned ints, and
#: a larger one failed in SimpleITK's wrapper with an OverflowError after the checks had passed.
ITK_UINT_MAX = 2**32 - 1
#: The step a stage whose ``learning_rate`` is None (not given) starts from, per stage type, in mm of physical
#: shift (rigid, affine; ITK's physical-shift scales) or of control-point displacement (B-spline), times
#: :func:`step_scale`.
DEFAULT_LEARNING_RATE = {"rigid": 2.0, "affine": 1.0, "bspline": 1.0}
#: The fixed image's smallest voxel size (mm) for which the default steps are used as they are: the engine's
#: figures and known-answer tests lie in it (0.5 mm CT in-plane voxels to the demo's 20 mm); outside it the
#: default steps follow the voxel size (:func:`step_scale`).
STEP_SCALE_VOXEL_MM = (0.5, 20.0)


def step_scale(spacing: Sequence[float]) -> float:
    """The factor on a stage's default steps (``learning_rate`` and ``min_step`` left as None) for a fixed image of
    voxel size ``spacing`` (mm per axis): 1 when its smallest voxel size ``v`` lies in ``STEP_SCALE_VOXEL_MM``
    (0.5-20 mm), ``v / 0.5`` below it and ``v / 20`` above it.

    ITK's regular-step optimizer takes its steps in mm (physical-shift scales), and the default 2 mm rigid step
    and 0.001 mm minimum were tuned on 1-4 mm images: on 0.05 mm micro-CT voxels the first step jumped 40 voxels
    (the 2D BrainWeb pair with 0.05 mm pixels ended 26 degrees off its 10, accepted) and on 50 mm voxels 200
    steps of 2 mm could not cover a 17-pixel shift (1.2 degrees, at the iteration limit). Scaled, the default
    rigid step stays between a tenth of a voxel and 4 voxels, as the step sizes ITK and elastix estimate follow
    the voxel size (ITK v4's estimated largest step is the fixed image's smallest spacing, elastix's adaptive
    stochastic gradient descent's default MaximumStepLength the mean voxel spacing of both images; their
    regular-step optimizers' defaults are fixed numbers, elastix's 16 / 2^level); inside the range nothing
    changed. A ``learning_rate`` or ``min_step`` given is used as given, in mm.
    """
    low, high = STEP_SCALE_VOXEL_MM
    finest = float(min(spacing))
    if finest < low:
        return finest / low
    if finest > high:
        return finest / high
    return 1.0


@dataclasses.dataclass
class StageParameters:
    """Settings of one registration stage.

    Attributes:
        name: "rigid" (2D/3D Euler), "affine" or "bspline".
        metric: "mattes_mi" (multimodal, default), "correlation" or "mean_squares" (one modality).
        histogram_bins: Mattes mutual information histogram bins; None (not given): ``DEFAULT_HISTOGRAM_BINS``
            (50) on the SimpleITK backend (:meth:`effective_histogram_bins`, metrics.json's ``effective``), the
            torch backend's own default (32) there. A count given, 50 too, is what both backends run (the torch
            backend within 8-64), which a default of 50 had not let it tell apart.
        sampling_strategy: "random", "regular" or "none" (all voxels).
        sampling_percentage: fraction (0..1] of voxels sampled per iteration.
        number_of_samples: when set, sample about this many voxels per level instead of a
            percentage (B-spline cost grows with samples x parameters, so it uses a fixed count).
            With a fixed mask, this count, ``max_samples`` and the engine's floor of 3000 count the
            samples inside the mask (ITK drops those outside it).
        max_samples: at most this many samples per level from ``sampling_percentage`` (None: no
            cap). ITK draws one sample set per level and evaluates all of it every iteration, so
            a percentage of a clinical CT (1% of 512x512x200 is 524 k points) costs time without
            adding accuracy; the cap binds only on levels of more than ``max_samples /
            sampling_percentage`` voxels. Not applied to ``number_of_samples`` (an explicit count)
            nor to sampling_strategy "none".
        optimizer: "regular_step" (RegularStepGradientDescent; physical-shift scales for rigid and
            affine, unit scales for B-spline), "lbfgsb" (B-spline stages only: ITK's LBFGSB takes no
            scales) or "gradient_descent_line_search".
        learning_rate: initial step (regular_step: maximal step in mm of physical shift; a B-spline's in mm of
            control-point displacement), used as given; None: the stage type's default
            (``DEFAULT_LEARNING_RATE``: 2 mm rigid, 1 mm affine and B-spline) times :func:`step_scale` of the
            fixed image (1 for voxels of 0.5-20 mm; the steps follow the voxel size outside that range).
            No effect on a rigid or affine gradient_descent_line_search stage: ITK estimates that learning rate at
            every iteration (its largest step: the fixed image's smallest voxel size); one given there gets a
            warning naming it and the fix (optimizer 'regular_step', or leave it out).
        min_step: regular_step: stop when the step falls below this (mm of physical shift), used as given; None:
            0.01 mm for 3D rigid and affine stages of at least 1M voxels of content (``sitk_backend.signal_share``:
            inside the fixed mask and off a uniform background; on the 1 mm MNI152 pair 0.001 mm gave
            the same error, 0.10 mm affine, about 30% slower) and 0.001 mm otherwise (2D slices need it; B-spline
            stages always), times :func:`step_scale` as ``learning_rate``.
        relaxation_factor: regular_step: step shrink factor on direction change; None: 0.5 for
            3D volumes of at least 1M voxels of content, as ``min_step`` (fewer full-resolution iterations, about
            twice as fast) and 0.8 for smaller volumes, skull-stripped 2 mm heads and 2D (a 2D slice
            has few pixels and a noisy metric: the step must shrink slowly to reach the optimum;
            0.5 stops ITK's 10-degree T1/PD case at 3-5 degrees).
        iterations: maximal iterations per resolution level.
        gradient_tolerance: lbfgsb / regular_step gradient magnitude tolerance.
        shrink_factors: per level image shrink factors, coarse to fine (another order runs as given,
            as in ITK, with a warning in the result when a level is coarser than the one before).
        smoothing_sigmas: per level Gaussian smoothing sigmas, in voxels of the full-resolution
            image unless ``smoothing_in_mm`` (ITK's ImageRegistrationMethodv4 smooths each input
            before shrinking it, with the variance in its own voxel units: on a 0.7x0.7x3 mm CT,
            sigma 2 is 1.4 mm in-plane and 6 mm across slices; give mm for isotropic smoothing).
            Coarse to fine too: sigmas that grow from one level to the next run as given, with a
            warning (the stage ends smoothed).
        smoothing_in_mm: interpret ``smoothing_sigmas`` in mm.
        mesh_size: B-spline control grid cells per dimension (int, or one per dimension).
    """

    name: str = "rigid"
    metric: str = "mattes_mi"
    histogram_bins: int | None = None
    sampling_strategy: str = "random"
    sampling_percentage: float = 0.01
    number_of_samples: int | None = None
    max_samples: int | None = MAX_SAMPLES
    optimizer: str = "regular_step"
    learning_rate: float | None = None
    min_step: float | None = None
    relaxation_factor: float | None = None
    iterations: int = 200
    gradient_tolerance: float = 1e-6
    shrink_factors: list[int] = dataclasses.field(default_factory=lambda: [4, 2, 1])
    smoothing_sigmas: list[float] = dataclasses.field(default_factory=lambda: [2.0, 1.0, 0.0])
    smoothing_in_mm: bool = False
    mesh_size: Any = 8

    def validate(self) -> None:
        """Raise InputError naming the bad field and the allowed values."""
        def bad(field: str, value: Any, allowed: str) -> InputError:
            return InputError(f"Stage '{self.name}': invalid {field} {value!r}.", f"Use {allowed}.")

        for field, choices in (("stage name", STAGE_TYPES), ("metric", METRICS), ("optimizer", OPTIMIZERS),
                               ("sampling_strategy", SAMPLING)):
            value = getattr(self, "name" if field == "stage name" else field)
            if value not in choices:
                raise bad(field, value, " / ".join(choices) + did_you_mean(value, choices))
        if not _is_number(self.sampling_percentage) or not 0.0 < float(self.sampling_percentage) <= 1.0:
            raise bad("sampling_percentage", self.sampling_percentage, "a fraction in (0, 1], e.g. 0.01 for 1%")
        for field in ("number_of_samples", "max_samples"):
            count = getattr(self, field)
            if count is not None and whole_number(count, MIN_SAMPLE_COUNT) is None:
                raise bad(field, count, f"a whole number of at least {MIN_SAMPLE_COUNT} (samples per resolution "
                                        "level), or null for none")
        if self.histogram_bins is not None and whole_number(self.histogram_bins, 4, MAX_HISTOGRAM_BINS) is None:
            # ITK's joint histogram is bins x bins per thread: a billion bins ran a minute, then failed
            # null is "not given", which is not a stage type's default: a rigid stage that leaves the bins out
            # runs 32, one that gives null 50 on the SimpleITK backend ("null for the default" had not said so)
            raise bad("histogram_bins", self.histogram_bins, f"a whole number from 4 to {MAX_HISTOGRAM_BINS} "
                                                             "(typically 32-64), or null for not given (50 on the "
                                                             "SimpleITK backend, 32 on torch; leave it out for the "
                                                             "stage type's default: rigid and bspline 32)")
        if whole_number(self.iterations, 1, ITK_UINT_MAX) is None:
            raise bad("iterations", self.iterations, f"a whole number from 1 to {ITK_UINT_MAX} (iterations per "
                                                     "resolution level; ITK keeps it in 32 bits)")
        # a zero or negative step runs ITK's optimizer without moving, or uphill, and reports success
        if self.learning_rate is not None and (not _is_number(self.learning_rate) or self.learning_rate <= 0):
            raise bad("learning_rate", self.learning_rate, "a positive number (regular_step: the largest step, mm), "
                                                           "or null for the default")
        if self.min_step is not None and (not _is_number(self.min_step) or self.min_step <= 0):
            raise bad("min_step", self.min_step, "a positive number (mm), or null for the default")
        if self.relaxation_factor is not None and (not _is_number(self.relaxation_factor)
                                                   or not 0.0 < self.relaxation_factor < 1.0):
            raise bad("relaxation_factor", self.relaxation_factor, "a number between 0 and 1 (exclusive), or null "
                                                                   "for the default")
        if not _is_number(self.gradient_tolerance) or self.gradient_tolerance < 0:
            raise bad("gradient_tolerance", self.gradient_tolerance, "a number >= 0, e.g. 1e-6")
        if not isinstance(self.smoothing_in_mm, bool):
            raise bad("smoothing_in_mm", self.smoothing_in_mm, "true or false")
        levels = "lists with one entry per resolution level, coarse to fine, e.g. [4, 2, 1] and [2, 1, 0]"
        if not isinstance(self.shrink_factors, (list, tuple)) or not isinstance(self.smoothing_sigmas, (list, tuple)):
            raise bad("shrink_factors/smoothing_sigmas", (self.shrink_factors, self.smoothing_sigmas), levels)
        if not self.shrink_factors or len(self.shrink_factors) != len(self.smoothing_sigmas):
            raise bad("shrink_factors/smoothing_sigmas", (self.shrink_factors, self.smoothing_sigmas),
                      "two lists of the same, non-zero length (one entry per resolution level)")
        if self.optimizer == "lbfgsb" and self.name in ("rigid", "affine"):
            # ITK's LBFGSB takes no parameter scales: one radian of rotation (or one unit of a matrix
            # entry) then weighs as much as one mm of translation, and on MNI152 at 3 mm a rigid stage
            # stopped 9.6 mm from an 11.6 mm misalignment without a warning
            raise InputError(f"Stage '{self.name}': the lbfgsb optimizer cannot be used for a {self.name} stage "
                             "(ITK's LBFGSB ignores parameter scales, so rotations and translations are "
                             "mis-weighted and it stops far from the answer).",
                             "Use optimizer 'regular_step' (or 'gradient_descent_line_search') for rigid and "
                             "affine stages; lbfgsb suits B-spline stages.")
        if any(whole_number(f, 1) is None for f in self.shrink_factors):
            raise bad("shrink_factors", self.shrink_factors, "integers >= 1")
        if not all(_is_number(s) and s >= 0 for s in self.smoothing_sigmas):
            raise bad("smoothing_sigmas", self.smoothing_sigmas, "numbers >= 0 (0: no smoothing)")
        mesh = self.mesh_size if isinstance(self.mesh_size, (list, tuple)) else [self.mesh_size]
        if not mesh or any(whole_number(m, 1, ITK_UINT_MAX) is None for m in mesh):
            raise bad("mesh_size", self.mesh_size, f"a positive number of control-grid cells (at most {ITK_UINT_MAX} "
                                                   "per axis)")

    def effective_histogram_bins(self) -> int:
        """The histogram bins this stage runs with on the SimpleITK backend: ``histogram_bins``, or
        ``DEFAULT_HISTOGRAM_BINS`` when it is None (not given)."""
        return DEFAULT_HISTOGRAM_BINS if self.histogram_bins is None else int(self.histogram_bins)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_number(value: Any) -> bool:
    """``value`` is a finite real number (not a bool, a string or None): JSON may hold any of them."""
    return not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)


def default_stage(name: str) -> StageParameters:
    """The default settings of a stage type (tuned on MNI152 T1 vs synthetic T2, see README)."""
    if name == "rigid":
        # 32 bins and a coarsest level smoothed by 4 voxels (the class defaults: 50 bins, 2 voxels): at 1 mm
        # the 2-voxel level kept detail whose local optima stopped a 20-degree turn 12-13 mm off (3D MNI152,
        # any axis), and 50 bins left a 2D slice's coarse level (1920 pixels) fewer samples than joint-histogram
        # cells (2500), a metric of noise (19 mm off). Now 0.05-0.09 mm up to 30 degrees at 1 mm (README,
        # "Capture range"). elastix smooths its coarsest (8x) level by 4 voxels and both it and ANTs use 32 bins.
        return StageParameters(name="rigid", histogram_bins=32, smoothing_sigmas=[4.0, 2.0, 0.0])
    if name == "affine":
        # learning_rate None: 1 mm (DEFAULT_LEARNING_RATE), following the voxel size outside 0.5-20 mm
        return StageParameters(name="affine", sampling_percentage=0.01)
    if name == "bspline":
        # RegularStepGradientDescent with unit scales (control-point displacements are in mm) on
        # one control grid, with a fixed number of samples: ITK's Mattes MI gradient costs
        # samples x parameters per iteration for a B-spline. Measured on MNI T1 vs synthetic T2
        # with a 5 mm warp: 83% of it recovered; LBFGSB stopped earlier (68%) and LBFGSB with
        # mesh refinement crashes in SimpleITK (scales size mismatch).
        # learning_rate and min_step None: 1 mm and 0.001 mm, following the voxel size outside 0.5-20 mm
        return StageParameters(name="bspline", histogram_bins=32, number_of_samples=4000,
                               optimizer="regular_step", iterations=60,
                               shrink_factors=[2, 1], smoothing_sigmas=[1.0, 0.0], mesh_size=4)
    raise InputError(f"Unknown registration stage '{name}'.", f"Use one of: {', '.join(STAGE_TYPES)}.")


@dataclasses.dataclass
class RegistrationParameters:
    """Settings of a whole (possibly staged) registration.

    Attributes:
        stages: the stages, run in order, each starting from the previous result.
        initializer: "geometry" (align image centres), "moments" (align centres of mass), "none"
            (identity) or "search" (centres of mass, then the best of a grid of rotations at a coarse
            level: for images rotated beyond the rigid stage's capture range of about 30 degrees; see
            ``rotation_search``; needs a rigid or affine first stage); ignored when an initial
            transform is given (``register`` refuses one together with "search").
        seed: seed of the random metric sampling. With a seed the metric runs on one ITK thread
            and the result is bit-identical from run to run (ITK's multi-threaded metric sums in a
            varying order, which changes results at round-off level and, through the optimizer's
            path, by up to about 0.01 mm). None: wall-clock seed, all threads (fastest).
        number_of_threads: ITK threads; None: 1 with a seed, ITK's default without. Setting it
            with a seed trades bit-identity for speed.
        name: preset name, for reports.
        description: what the preset is for.
        added_stages: positions in ``stages`` of the stages :meth:`with_stages` added with their type's defaults
            (``--stages`` naming a stage the preset does not list): settings nobody wrote, which the torch
            backend's conversion warnings leave out. Not saved with the settings (``to_dict``), not a preset key.
    """

    stages: list[StageParameters] = dataclasses.field(default_factory=lambda: [default_stage("rigid")])
    initializer: str = "geometry"
    seed: int | None = None
    number_of_threads: int | None = None
    name: str = "default"
    description: str = ""
    added_stages: tuple[int, ...] = dataclasses.field(default=(), repr=False, compare=False)

    def validate(self) -> None:
        """Raise InputError if any setting is invalid."""
        if not self.stages:
            raise InputError("No registration stage given.", f"Give at least one of {', '.join(STAGE_TYPES)}.")
        if self.initializer not in INITIALIZERS:
            raise InputError(f"Unknown initializer '{self.initializer}'.",
                             f"Use one of {', '.join(INITIALIZERS)}{did_you_mean(self.initializer, INITIALIZERS)}.")
        if self.initializer == "search" and self.stages[0].name not in ("rigid", "affine"):
            raise InputError(f"The 'search' initializer searches rotations for a rigid or affine first stage, but "
                             f"the first stage is '{self.stages[0].name}'.",
                             "Run a rigid stage first (e.g. --stages rigid,bspline), or use another initializer.")
        if self.seed is not None:
            check_seed(self.seed)
        if self.number_of_threads is not None and whole_number(self.number_of_threads, 1, ITK_UINT_MAX) is None:
            raise InputError(f"Invalid number_of_threads {self.number_of_threads!r}.",
                             f"Use a whole number from 1 to {ITK_UINT_MAX} (ITK clamps it to its own "
                             "maximum), or null for ITK's default.")
        for stage in self.stages:
            if not isinstance(stage, StageParameters):
                raise InputError(f"Registration stage {stage!r} is not a stage's settings.",
                                 f"Give each stage as a name ({', '.join(STAGE_TYPES)}) or an object of settings "
                                 "with a \"name\", e.g. {\"name\": \"rigid\", \"iterations\": 200}.")
            stage.validate()

    def with_stages(self, names: Sequence[str]) -> RegistrationParameters:
        """A copy running ``names`` (in that order); stages this object defines keep their settings, the others
        take their type's defaults (:func:`default_stage`) and are listed in ``added_stages``."""
        known = {s.name: i for i, s in enumerate(self.stages)}
        stages: list[StageParameters] = []
        added: list[int] = []
        for name in names:
            name = name.strip().lower()
            if name not in STAGE_TYPES:
                raise InputError(f"Unknown registration stage '{name}'{did_you_mean(name, STAGE_TYPES)}.",
                                 f"Use a comma-separated list of {', '.join(STAGE_TYPES)}, e.g. rigid,affine.")
            if name in known:
                stages.append(dataclasses.replace(self.stages[known[name]]))
                if known[name] in self.added_stages:  # added by an earlier with_stages: still nobody's settings
                    added.append(len(stages) - 1)
            else:
                stages.append(default_stage(name))
                added.append(len(stages) - 1)
        return dataclasses.replace(self, stages=stages, added_stages=tuple(added))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "initializer": self.initializer,
                "seed": self.seed, "number_of_threads": self.number_of_threads,
                "stages": [s.to_dict() for s in self.stages]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RegistrationParameters:
        """Build from a preset-style dict; each stage's missing keys take that stage type's defaults."""
        example = '{"stages": [{"name": "rigid", "iterations": 200}], "initializer": "geometry"}'
        if not isinstance(data, dict):
            raise InputError(f"Registration settings must be an object of named settings, not a "
                             f"{type(data).__name__}.", f"Write them as an object, e.g. {example}.")
        data = dict(data)
        fields = {f.name for f in dataclasses.fields(StageParameters)}
        stages = []
        raw_stages = data.pop("stages", [{"name": "rigid"}])
        if not isinstance(raw_stages, (list, tuple)):
            raise InputError(f"Registration \"stages\" must be a list, not {raw_stages!r}.",
                             f"List the stages in order, e.g. {example}.")
        for index, raw in enumerate(raw_stages, 1):
            if isinstance(raw, str):
                raw = {"name": raw}
            if not isinstance(raw, dict):
                raise InputError(f"Registration stage {raw!r} is neither a stage name nor an object of settings.",
                                 f"Give each stage as a name ({', '.join(STAGE_TYPES)}) or an object with a "
                                 "\"name\", e.g. {\"name\": \"rigid\", \"iterations\": 200}.")
            if "name" not in raw:
                # it had become a rigid stage without a word: {"iterations": 50} meant for the affine stage of
                # [rigid, affine, bspline] ran as a second rigid stage
                raise InputError(f"Registration stage {index} of {len(raw_stages)} has no \"name\" ({raw!r}).",
                                 f"Add \"name\": one of {', '.join(STAGE_TYPES)}, e.g. "
                                 "{\"name\": \"rigid\", \"iterations\": 200}.")
            # which stage, and the likely spelling: "Unknown stage setting(s) ['shrink_factor']" had named neither
            where = f"Registration stage {index} of {len(raw_stages)} ({raw['name']!r})"
            if raw["name"] not in STAGE_TYPES:
                raise InputError(f"{where}: unknown stage name{did_you_mean(raw['name'], STAGE_TYPES)}.",
                                 f"Use \"name\": one of {', '.join(STAGE_TYPES)}.")
            # a metrics.json's "parameters" load as a preset: its "effective" records what ran, and is not read
            raw = {k: v for k, v in raw.items() if k != "effective"}
            unknown = sorted(set(raw) - fields, key=str)
            if unknown:
                raise InputError(f"{where}: unknown setting(s) "
                                 + ", ".join(f"'{k}'{did_you_mean(k, fields)}" for k in unknown) + ".",
                                 f"Use only: {', '.join(sorted(fields))}.")
            stages.append(dataclasses.replace(default_stage(raw["name"]), **raw))
        top = {f.name for f in dataclasses.fields(cls)} - {"added_stages"}  # with_stages' record, not a setting
        data.pop("effective", None)
        unknown = sorted(set(data) - top, key=str)
        if unknown:
            raise InputError("Unknown registration setting(s) "
                             + ", ".join(f"'{k}'{did_you_mean(k, top)}" for k in unknown) + ".",
                             f"Use only: {', '.join(sorted(top))}.")
        params = cls(stages=stages, **data)
        params.validate()
        return params


class _DuplicateKey(Exception):
    def __init__(self, key: str, first: Any, second: Any) -> None:
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json``'s object hook refusing a key given twice: ``{"iterations": 100, "iterations": 5}`` had
    run 5 iterations without a word."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key, out[key], value)
        out[key] = value
    return out


def presets_dir() -> Path:
    """The folder of preset JSON files (``Resources/Presets`` beside ``MultimodalFusionLib``)."""
    from ..data import bundled_folder

    # checkout root or Slicer module folder beside MultimodalFusionLib, or an installed wheel's share/
    return bundled_folder("Resources/Presets", "MMFUSION_PRESETS_DIR")


def list_presets() -> list[str]:
    """Names of the available presets (sorted)."""
    folder = presets_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.json"))


def load_preset(name: str) -> RegistrationParameters:
    """Load ``Resources/Presets/<name>.json`` (or a path to a JSON file) as parameters.

    Raises:
        InputError: unknown preset (the message lists the available ones) or invalid JSON.
    """
    text = str(name)
    path = Path(text)
    # a path (a .json name, or a folder in it) is a file of the user's: one that is not there is named as such,
    # where it had been "Unknown registration preset" with the shipped names for a fix (a typo in a path)
    if path.suffix.lower() == ".json" or "/" in text or "\\" in text:
        if not path.is_file():
            raise InputError(f"Preset file '{text}' does not exist (or is not a file).",
                             f"Check the path, or give a preset name: {', '.join(list_presets()) or '(none found)'}.")
    else:
        path = presets_dir() / f"{text}.json"
    if not path.is_file():
        raise InputError(f"Unknown registration preset '{name}'.",
                         f"Use one of: {', '.join(list_presets()) or '(no presets found in ' + str(presets_dir()) + ')'}.")
    try:
        # utf-8-sig: a file saved by Windows Notepad starts with a byte-order mark, which json refused
        data = json.loads(path.read_bytes().decode("utf-8-sig"), object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise InputError(f"Preset file '{path}' sets \"{exc.key}\" twice ({exc.first!r}, then {exc.second!r}): JSON "
                         "keeps the last one without a word.", f"Keep one \"{exc.key}\" in that object.") from exc
    except (OSError, ValueError) as exc:
        raise InputError(f"Preset file '{path}' is not valid JSON ({exc}).", "Fix or remove the file.") from exc
    if not isinstance(data, dict):
        raise InputError(f"Preset file '{path}' holds a JSON {type(data).__name__}, not an object of settings.",
                         "Write the preset as an object, as the shipped ones in Resources/Presets are, e.g. "
                         '{"stages": [{"name": "rigid"}], "initializer": "geometry"}.')
    data.setdefault("name", path.stem)
    return RegistrationParameters.from_dict(data)
