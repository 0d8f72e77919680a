"""How well ``sitk.InvertDisplacementField`` inverts the torch deformable stage's exported field.

The torch backend returns no inverse (README, "Registration on PyTorch"); this measures the check the README
suggests on a small oblique, left-handed, anisotropic fixed grid: 48x48x16 voxels of 1x1x3 mm turned 30
degrees about (1, 2, 3) with the y axis flipped, holding the MNI152 T1 (1 mm) around the brain's centre; the
moving image is the synthetic T2 on the same grid after a 3-degree, 2 mm rigid motion. It runs what
``mmfusion register --backend torch --stages affine,deformable --seed 1`` runs (register() without settings:
the torch defaults, ``geometry`` start), inverts the field with SimpleITK's defaults and reports, over the
object (fixed T1 above 5% of its range, 2 voxels in from the grid's faces), the largest displacement and |x - (x + u(x) + v(x + u(x)))|, mean
and max, in mm.

    python benchmarks/torch_inverse_field.py --threads 1
    python benchmarks/torch_inverse_field.py --threads 1 --bins 50   # the affine stage with 50 bins
    python benchmarks/torch_inverse_field.py --threads 1 --quick     # a smoke run: a tenth of the iterations

``--quick`` (the test suite's run) registers with a tenth of the torch defaults' iterations per level (linear
[15, 8, 4], deformable [10, 5]): a smaller field, so not the README's figures; the default run is unchanged.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np
import SimpleITK as sitk

# Runs from a source checkout without installing the package (and measures that checkout, not an installed copy).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_machine


def _rotation(axis: tuple[float, float, float], angle_deg: float) -> np.ndarray:
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = math.radians(angle_deg)
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * k @ k


def case() -> tuple[sitk.Image, sitk.Image]:
    """(fixed T1, moving T2) on the oblique 48x48x16, 1x1x3 mm grid."""
    from MultimodalFusionLib import data

    tissues = data.mni152(spacing_mm=1)
    t1 = sitk.Cast(tissues["t1"], sitk.sitkFloat32)
    t2 = sitk.Cast(data.synthetic_contrast(tissues, "t2", seed=0), sitk.sitkFloat32)
    centre = np.array(t1.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in t1.GetSize()]))
    direction = _rotation((1, 2, 3), 30.0) @ np.diag([1.0, -1.0, 1.0])
    size, spacing = np.array([48, 48, 16]), np.array([1.0, 1.0, 3.0])
    grid = sitk.Image(size.tolist(), sitk.sitkFloat32)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(direction.ravel().tolist())
    grid.SetOrigin((centre - direction @ (spacing * (size - 1) / 2.0)).tolist())
    fixed = sitk.Resample(t1, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    motion = sitk.Euler3DTransform()
    motion.SetCenter(centre.tolist())
    motion.SetRotation(math.radians(3.0), math.radians(-2.0), math.radians(1.0))
    motion.SetTranslation([2.0, -1.0, 1.0])
    moving = sitk.Resample(t2, grid, motion, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return fixed, moving


def measure(bins: int | None, seed: int, quick: bool = False) -> dict[str, float]:
    """The field's largest displacement and the inverse's error (module docstring); ``quick``: a tenth of the
    iterations (``--quick``)."""
    from MultimodalFusionLib import registration

    fixed, moving = case()
    if bins is None and not quick:  # what the CLI command runs
        result = registration.register(fixed, moving, stages="affine,deformable", backend="torch", seed=seed)
    else:
        import dataclasses

        from MultimodalFusionLib.registration.torch_backend import TorchRegistrationParameters

        params = TorchRegistrationParameters(stages=["affine", "deformable"], initializer="geometry")
        if bins is not None:
            params = dataclasses.replace(params, histogram_bins=bins)
        if quick:
            params = dataclasses.replace(
                params, linear_iterations=[max(1, round(i / 10)) for i in params.linear_iterations],
                deformable_iterations=[max(1, round(i / 10)) for i in params.deformable_iterations])
        result = registration.register(fixed, moving, params, backend="torch", seed=seed)
    if not isinstance(result.transform, sitk.CompositeTransform):
        return {"field_max_mm": 0.0, "mean_mm": float("nan"), "max_mm": float("nan")}
    field = sitk.DisplacementFieldTransform(result.transform.GetNthTransform(1)).GetDisplacementField()
    inverse = sitk.DisplacementFieldTransform(sitk.InvertDisplacementField(field))
    forward = sitk.DisplacementFieldTransform(sitk.Image(field))
    arr = sitk.GetArrayFromImage(fixed)
    # the object, 2 voxels in from the grid's faces: InvertDisplacementField holds the inverse at 0 on the
    # boundary (its enforceBoundaryCondition), where the forward field is not
    keep = np.zeros(arr.shape, bool)
    keep[2:-2, 2:-2, 2:-2] = True
    inside = np.argwhere(keep & (arr > arr.min() + 0.05 * (arr.max() - arr.min())))
    errors, lengths = [], []
    for z, y, x in inside:
        point = np.array(fixed.TransformIndexToPhysicalPoint((int(x), int(y), int(z))))
        moved = np.array(forward.TransformPoint(point.tolist()))
        back = np.array(inverse.TransformPoint(moved.tolist()))
        lengths.append(float(np.linalg.norm(moved - point)))
        errors.append(float(np.linalg.norm(back - point)))
    return {"field_max_mm": max(lengths), "mean_mm": float(np.mean(errors)), "max_mm": max(errors),
            "voxels": len(errors), "warnings": len(result.warnings)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bins", type=int, default=None, help="affine stage's histogram bins (default: torch's 32)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--quick", action="store_true",
                   help="a tenth of the iterations per level: a smoke run, not the README's figures")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from bench_machine import describe

    print(describe("auto"))
    out = measure(args.bins, args.seed, args.quick)
    print(f"{'quick (a tenth of the iterations), ' if args.quick else ''}bins {args.bins or 'default (32)'}: field up to {out['field_max_mm']:.2f} mm; inverse after field "
          f"{out['mean_mm']:.4f} mm mean, {out['max_mm']:.3f} mm max over {out.get('voxels', 0)} object voxels")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
