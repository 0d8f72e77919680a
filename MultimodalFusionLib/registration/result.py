"""Result objects of registration (shared by the SimpleITK and torch backends)."""

from __future__ import annotations

import dataclasses
from typing import Any

import SimpleITK as sitk

__all__ = ["StageResult", "RegistrationResult"]


@dataclasses.dataclass
class StageResult:
    """One stage (rigid, affine, bspline, ...) of a registration.

    Attributes:
        name: stage name ("rigid", "affine", "bspline", "syn", ...).
        metric_name: the similarity metric optimised (e.g. "mattes_mi"; lower is better as ITK reports it).
        metric_before: metric value at the stage's starting transform.
        metric_after: metric value at the stage's final transform.
        iterations: optimizer iterations run (summed over resolution levels).
        stop_reason: the optimizer's own stop condition text.
        seconds: wall time of the stage.
        history: per-iteration (level, iteration, metric value) triples.
        accepted: False when the stage made the metric worse and its result was discarded.
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

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["history"] = [list(h) for h in self.history]
        return d


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
        parameters: the parameters used (a JSON-able dict).
    """

    transform: sitk.Transform
    stages: list[StageResult]
    metric_before: float
    metric_after: float
    warnings: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0
    backend: str = "sitk"
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def is_deformable(self) -> bool:
        """True when the transform is not a single linear (matrix + offset) transform."""
        return not _is_linear(self.transform)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (no transform parameters; those go to the transform file)."""
        return {
            "backend": self.backend,
            "metric_before": self.metric_before,
            "metric_after": self.metric_after,
            "seconds": self.seconds,
            "deformable": self.is_deformable,
            "transform_type": self.transform.GetName(),
            "warnings": list(self.warnings),
            "stages": [s.to_dict() for s in self.stages],
            "parameters": self.parameters,
        }


def _is_linear(tx: sitk.Transform) -> bool:
    if isinstance(tx, sitk.CompositeTransform):
        return all(_is_linear(tx.GetNthTransform(i)) for i in range(tx.GetNumberOfTransforms()))
    return tx.IsLinear()
