"""Result objects of registration (shared by the SimpleITK and torch backends)."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import numpy as np
import SimpleITK as sitk

from .accuracy import euler_angles_deg, rotation_angle_deg

__all__ = ["StageResult", "RegistrationResult", "transform_summary", "transform_rows", "settings_rows",
           "iterations_per_level",
           "iterations_text",
           "ran_again", "RAN_AGAIN_NOTE",
           "TRANSFORM_CONVENTION"]

#: What the numbers of :func:`transform_summary` mean (written next to them in metrics.json).
TRANSFORM_CONVENTION = (
    "itk_*: the transform as the transform file holds it: it maps fixed-image points to moving-image points, "
    "in LPS (ITK, ANTs, elastix; resample the moving image with it). slicer_*: what Slicer's Transforms module "
    "shows once that file is loaded: the 'to parent' matrix in RAS, the inverse, which moves the moving volume "
    "onto the fixed one (its translation column is the LR, PA, IS sliders). itk_translation_lps is the "
    "translation about the centre itk_center_lps (the file's translation parameters; (0, 0) or (0, 0, 0) "
    "when the transform has no centre), itk_offset_lps where the origin goes (the 4x4 matrix's last "
    "column): x -> M (x - c) + c + t = M x + offset. rotation_deg: the rotation's angle; euler_angles_deg: "
    "ITK Euler3DTransform's angles about x, y, z in degrees, matrix = Rz Rx Ry (about y first; "
    "Rz Ry Rx where euler_order says ZYX).")


@dataclasses.dataclass
class StageResult:
    """One stage (rigid, affine, bspline, ...) of a registration.

    Attributes:
        name: stage name ("rigid", "affine", "bspline", "syn", ...).
        metric_name: the similarity metric optimised (e.g. "mattes_mi"; lower is better as ITK reports it).
        metric_before: metric value at the stage's starting transform.
        metric_after: metric value at the stage's final transform.
        iterations: optimizer iterations run (summed over resolution levels).
        stop_reason: the optimizer's own stop condition text; ITK's is its last level's (its "after 45
            iterations" counts that level only), and says so: "last level (3 of 3): ...".
        seconds: wall time of the stage; for a masked first stage checked against its coarsest level run
            without the masks (either backend's second try), with that check (the level and its judging)
            and, where it ran again, both runs. The stages' seconds sum to the registration's less its own
            work around them (the input checks, the initializer or rotation search, the overall metric).
        history: per-iteration (level, iteration, metric value) triples.
        accepted: False when the stage made the metric worse and its result was discarded.
        level_iterations: iterations run at each resolution level, coarsest first (they sum to
            ``iterations``); taken from ``history`` when not given.
    """

    name: str
    metric_name: str
    metric_before: float
    metric_after: float
    iterations: int
    stop_reason: str
    seconds: float
    history: list[tuple[int, int, float]] = dataclasses.field(default_factory=list)
    accepted: bool = True
    level_iterations: list[int] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.level_iterations and self.history:
            self.level_iterations = iterations_per_level(self.history)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["history"] = [list(h) for h in self.history]
        return d


def iterations_per_level(history: list[tuple[int, int, float]], levels: int | None = None) -> list[int]:
    """Iterations at each resolution level, coarsest first, counted from a stage's (level, iteration,
    metric) ``history``; ``levels`` (the stage's number of levels) also counts the last levels that ran
    no iteration, which the history alone cannot show (a stage that converged at once there)."""
    if levels is None:
        levels = max((int(h[0]) for h in history), default=-1) + 1
    return [sum(1 for h in history if int(h[0]) == level) for level in range(levels)]


def iterations_text(stage: StageResult | dict[str, Any]) -> str:
    """A stage's iterations as a reader compares them with its stop reason: per level and their sum
    ("43+53+45 = 141"), or the total alone for a single level (or a stage given without levels)."""
    get = stage.get if isinstance(stage, dict) else lambda key: getattr(stage, key, None)
    levels = get("level_iterations") or []
    total = get("iterations")
    if len(levels) > 1:
        return "+".join(str(int(n)) for n in levels) + f" = {total}"
    return str(total)


#: Said beside a masked first stage that ran again from its coarsest level aligned without the masks (either
#: backend's second try): its iterations and stop reason are the second run's, its metric_before the initializer's
#: start and its seconds both runs' and the check's.
RAN_AGAIN_NOTE = "run again from its coarsest level aligned without the masks"


def ran_again(parameters: Any) -> bool:
    """Whether a registration's first stage ran again from its coarsest level aligned without the masks, read from
    its recorded ``parameters`` (:attr:`RegistrationResult.parameters`, metrics.json's ``parameters``):
    ``effective.masked_start.used`` of the first stage (the SimpleITK backend), or of the settings themselves (the
    torch backend, which records its stages by name and its settings once; a torch run that ran again had been
    reported as run once). False where there is no such record (an unmasked run has no ``masked_start``)."""
    if not isinstance(parameters, Mapping):
        return False
    stages = parameters.get("stages")
    first = stages[0] if isinstance(stages, (list, tuple)) and stages else None
    for owner in (first, parameters):
        effective = owner.get("effective") if isinstance(owner, Mapping) else None
        masked_start = effective.get("masked_start") if isinstance(effective, Mapping) else None
        if isinstance(masked_start, Mapping):
            return bool(masked_start.get("used"))
    return False


@dataclasses.dataclass
class RegistrationResult:
    """What a registration returns.

    Attributes:
        transform: maps points of the fixed image's physical space to the moving image's
            (ITK convention: resample the moving image on the fixed grid with it).
        stages: per-stage results, in order.
        metric_before: metric of the whole registration at its initial transform.
        metric_after: metric at the final transform (never worse than ``metric_before``:
            a registration that made it worse keeps the better transform, with a warning).
        warnings: plain-language warnings (metric got worse, hit iteration limit, ...).
        seconds: total wall time.
        backend: "sitk" or "torch".
        parameters: the parameters used (a JSON-able dict); its ``effective`` (and each sitk stage's) records
            what ran where the engine chose it from the images and the seed (thread count, capped shrink
            factors, optimizer defaults, sampling per level; the torch backend's level grids).
        initializer: what the "search" initializer found (candidates, refined, rotation_deg from the
            centre-of-mass start, coarse_voxel_mm, metric, seconds); None for the other initializers.
    """

    transform: sitk.Transform
    stages: list[StageResult]
    metric_before: float
    metric_after: float
    warnings: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    backend: str = "sitk"
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    initializer: dict[str, Any] | None = None

    @property
    def is_deformable(self) -> bool:
        """True when the transform is not a single linear (matrix + offset) transform."""
        return not _is_linear(self.transform)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary: metrics, stages, and a linear transform's numbers in ITK's and Slicer's
        conventions (:func:`transform_summary`; a deformable one is only in the transform file)."""
        out = {
            "backend": self.backend,
            "metric_before": self.metric_before,
            "metric_after": self.metric_after,
            "seconds": self.seconds,
            "deformable": self.is_deformable,
            "transform_type": _own_type(self.transform).GetName(),
            "transform": transform_summary(self.transform),
            "warnings": list(self.warnings),
            "stages": [s.to_dict() for s in self.stages],
            "parameters": self.parameters,
        }
        if self.initializer is not None:  # only the search reports one: other outputs stay as they were
            out["initializer"] = dict(self.initializer)
        return out


def _is_linear(tx: sitk.Transform) -> bool:
    if isinstance(tx, sitk.CompositeTransform):
        return all(_is_linear(tx.GetNthTransform(i)) for i in range(tx.GetNumberOfTransforms()))
    return tx.IsLinear()


def settings_rows(parameters: Any) -> list[tuple[str, str]]:
    """The preset and the sampling seed a registration ran with, as (name, text) rows read from its recorded
    ``parameters`` (:attr:`RegistrationResult.parameters`, metrics.json's ``registration.parameters``): the web
    panel's table and report.html show them, so the seed of the result in front of a user is the one it ran with,
    not what a field holds now. Preset "none" where the settings came from no preset (their ``name`` "default");
    seed "none" where none was given (the SimpleITK backend's sampling then follows the clock)."""
    recorded = parameters if isinstance(parameters, Mapping) else {}
    name, seed = recorded.get("name"), recorded.get("seed")
    return [("preset", "none" if name in (None, "", "default") else str(name)),
            ("seed", "none (drawn from the clock: another run samples differently)" if seed is None else str(seed))]


def transform_rows(summary: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """A linear result's numbers, each with its convention, as (name, text) rows: ``mmfusion register``/``run``
    print them (``transform: ...``, then ``rotation ...``, ``translation ...``, ``in Slicer ...``) and the web
    panel shows them, since users check them in Slicer or ITK tools.

    Args:
        summary: :func:`transform_summary`'s dict (None or empty for a deformable transform: no rows).
    """
    if not summary:
        return []

    def vec(values: Any) -> str:
        return "(" + ", ".join(f"{v + 0.0:.3f}" for v in values) + ")"
    rows = [("transform", "the file maps fixed -> moving points in LPS (ITK, ANTs, elastix)")]
    angle = summary.get("rotation_deg")
    if angle is not None:
        if summary.get("euler_angles_deg") is not None:
            order = "Rz Ry Rx" if summary.get("euler_order") == "ZYX" else "Rz Rx Ry"
            rows.append(("rotation", f"{angle:.3f} deg; Euler angles about x, y, z {vec(summary['euler_angles_deg'])} "
                                     f"deg (ITK's Euler3D: matrix {order})"))
        else:
            rows.append(("rotation", f"{angle:.3f} deg" + (" (from +x toward +y)"
                                                           if len(summary["itk_offset_lps"]) == 2 else "")))
    # the translation a transform file holds is about its centre; the offset is where (0, 0, 0) goes: the
    # two differ by (M - I) c, e.g. 8 degrees about a centre 40 mm from the origin move it by 6 mm
    center = summary.get("itk_center_lps")
    about = f"about the centre {vec(center)} mm (the file's)" if center is not None else "about the origin"
    rows.append(("translation", f"{vec(summary['itk_translation_lps'])} mm {about}; "
                                f"offset {vec(summary['itk_offset_lps'])} mm (where the origin goes)"))
    if "slicer_translation_ras" in summary:
        lr, pa, is_ = summary["slicer_translation_ras"]
        rows.append(("in Slicer", f"(Transforms module, RAS, moves the moving volume onto the fixed one): "
                                  f"translation LR {lr + 0.0:.3f}, PA {pa + 0.0:.3f}, IS {is_ + 0.0:.3f} mm"))
    return rows


def transform_summary(transform: sitk.Transform) -> dict[str, Any] | None:
    """A linear transform's numbers as ITK (LPS, fixed -> moving) and Slicer (RAS, moving -> fixed) show them.

    Returns:
        None for a deformable transform, else a dict with ``convention`` (:data:`TRANSFORM_CONVENTION`),
        ``itk_matrix_lps`` (rows), ``itk_center_lps`` (the transform's centre, as the file's
        FixedParameters hold it; None when it has none, e.g. a composite), ``itk_translation_lps``
        (``T(c) - c`` about that centre, or about the origin when there is none: the file's translation
        parameters), ``itk_offset_lps`` (where the origin goes: the homogeneous matrix's last column;
        differs from the translation when the centre is not the origin), ``itk_parameters`` and
        ``itk_fixed_parameters`` (the transform file's Parameters and FixedParameters lines; absent for
        a composite), ``rotation_deg`` (rigid transforms only: the rotation's angle, signed in 2D,
        counterclockwise from +x toward +y), for a 3D rigid transform ``euler_angles_deg`` (about x,
        y, z, as ITK's Euler3DTransform holds them, :func:`euler_angles_deg`) and ``euler_order``
        ("ZXY": matrix ``Rz Rx Ry``, ITK's default; "ZYX" for an Euler3DTransform set so), and for 3D
        ``slicer_matrix_to_parent_ras`` (4x4 rows) and ``slicer_translation_ras`` (mm).
    """
    from ..mrml import linear_transform_matrix, slicer_matrix_to_parent

    if not _is_linear(transform):
        return None
    # as its own type (held as a plain sitk.Transform, an Euler3D's angle order and a composite were missed)
    transform = _own_type(transform)
    dim = transform.GetDimension()
    homogeneous = linear_transform_matrix(transform)
    matrix, offset = homogeneous[:dim, :dim], homogeneous[:dim, 3]
    rigid = np.allclose(matrix.T @ matrix, np.eye(dim), atol=1e-6) and np.linalg.det(matrix) > 0
    angle = rotation_angle_deg(matrix) if rigid else None
    center = _center(transform)
    # T(c) - c: what a transform file's translation parameters hold, about the centre its FixedParameters hold
    translation = np.array(transform.TransformPoint(center or [0.0] * dim)) - np.array(center or [0.0] * dim)
    summary: dict[str, Any] = {
        "convention": TRANSFORM_CONVENTION,
        "itk_matrix_lps": [[float(v) for v in row] for row in matrix],
        "itk_center_lps": center,
        "itk_translation_lps": [float(v) + 0.0 for v in translation],
        "itk_offset_lps": [float(v) for v in offset],
        "rotation_deg": angle,
    }
    if rigid and dim == 3:
        euler = isinstance(transform, sitk.Euler3DTransform)
        zyx = euler and transform.GetComputeZYX()
        # an Euler3DTransform's own angles are the file's parameters, also outside the ranges the matrix
        # gives back ((100, 20, -30) degrees would read (80, -160, 150), the same rotation)
        angles = (np.degrees([transform.GetAngleX(), transform.GetAngleY(), transform.GetAngleZ()]) if euler
                  else euler_angles_deg(matrix, zyx=zyx))
        summary["euler_angles_deg"] = [float(v) + 0.0 for v in angles]
        summary["euler_order"] = "ZYX" if zyx else "ZXY"
    if not isinstance(transform, sitk.CompositeTransform):
        summary["itk_parameters"] = [float(v) for v in transform.GetParameters()]
        summary["itk_fixed_parameters"] = [float(v) for v in transform.GetFixedParameters()]
    if dim == 3:
        slicer = slicer_matrix_to_parent(transform)
        summary["slicer_matrix_to_parent_ras"] = [[float(v) + 0.0 for v in row] for row in slicer]
        summary["slicer_translation_ras"] = [float(v) + 0.0 for v in slicer[:3, 3]]
    return summary


def _own_type(transform: sitk.Transform) -> sitk.Transform:
    """The transform as its own class (e.g. Euler3DTransform) when it is held as a plain sitk.Transform."""
    if type(transform) is sitk.Transform and hasattr(transform, "Downcast"):
        return transform.Downcast()
    return transform


def _center(transform: sitk.Transform) -> list[float] | None:
    """The centre of a centred linear transform (Euler, similarity, versor, affine), None for others."""
    get = getattr(transform, "GetCenter", None)
    return [float(v) for v in get()] if get is not None else None
