#!/usr/bin/env python
"""How stiff should the torch deformable stage be? TRE on a known warp vs spurious deformation on a rigid truth.

Usage::

    python benchmarks/deformable_regularisation.py [--threads 1] [--seeds 0,1,2]
        [--weights 1,0.5,0.3,0.1,0.03] [--cases warp3,warp3-truth,warp2,rigid3,rigid1]
        [--metrics mind,lncc,mi] [--json FILE]

Each row registers with ``TorchRegistrationParameters`` (CPU) whose only changes are the deformable
metric and ``regularisation_weight`` (plus the levels of the 3 mm cases), and prints mean / max TRE
(mm, over the brain: each number the mean over the seeds, the max in brackets the worst seed), the
fraction of voxels where the exported displacement field folds (Jacobian determinant of x -> x + u(x)
<= 0, numpy in physical space; the smallest determinant), how many seeds kept the field (a field that
leaves mutual information worse is discarded) and the registration's wall seconds.

Cases (``registration.accuracy``, MNI152 from nilearn's package data, no download):

- ``warp3``: ``bspline_case(spacing_mm=3, magnitude_mm=5)``, T1 (warped, fixed) vs synthetic T2 (or T1
  for ``lncc``), affine + deformable, levels 6 and 3 mm, fixed mask the brain dilated by 2 voxels: the
  README's "known 5 mm warp" row and ``test_known_smooth_deformation_reduced_and_invertible``.
- ``warp3-truth``: the same, the deformable stage alone from the true affine (the identity): what the
  field itself recovers.
- ``bump3``: a local warp: the 3 mm T1 warped by a Gaussian bump (4 mm displacement along (1, 1, 0) at
  its centre, sigma 8 mm, centred 20, 10 and 15 mm from the brain's centre) vs synthetic T2, the
  deformable stage alone from the true affine (the identity), levels 6 and 3 mm, fixed mask the brain
  dilated by 2 voxels; TRE over the brain within 16 mm of the bump's centre.
- ``warp2``: ``bspline_case(spacing_mm=2, magnitude_mm=5)``, every other setting the default (levels
  4 and 2 mm), no mask (the deformable stage counts the fixed foreground).
- ``rigid3``: ``rigid_case(spacing_mm=3)`` (8 degrees, (3, 0, 4) mm), affine + deformable, levels 6 and
  3 mm, no mask: the truth is rigid, so all TRE beyond the affine's is spurious deformation.
- ``rigid1``: the registration benchmark's pair, ``rigid_case()`` at 1 mm (160x192x192), every setting
  the default: what ``benchmarks/registration.py --only torch-deformable`` measures (there the images
  pass through NIfTI files first and the seed is the default 42).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

# Runs from a source checkout without installing the package.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

CASES = ("warp3", "warp3-truth", "bump3", "warp2", "rigid3", "rigid1")
_LEVELS_3MM = {"deformable_level_spacing_mm": [6.0, 3.0], "deformable_iterations": [100, 50]}


def folding(transform) -> tuple[float, float]:
    """(fraction of fixed voxels where x -> x + u(x) folds, smallest Jacobian determinant) of the field of
    a ``CompositeTransform([affine, DisplacementFieldTransform])``; (0, 1) without a field."""
    import SimpleITK as sitk

    if not isinstance(transform, sitk.CompositeTransform):
        return 0.0, 1.0
    field = sitk.DisplacementFieldTransform(transform.GetNthTransform(1)).GetDisplacementField()
    u = sitk.GetArrayFromImage(field).astype(np.float64)  # (z, y, x, 3), components x, y, z in mm
    spacing = np.array(field.GetSpacing())
    direction = np.array(field.GetDirection()).reshape(3, 3)
    # d u / d index along x, y, z (array axes 2, 1, 0), then through direction x spacing to physical space
    d_index = np.stack([np.gradient(u, axis=2 - j) for j in range(3)], axis=-1)  # (..., component, index axis)
    index_to_phys = direction @ np.diag(spacing)
    jac = np.eye(3) + d_index @ np.linalg.inv(index_to_phys)
    det = np.linalg.det(jac)
    return float((det <= 0).mean()), float(det.min())


def bump_case(tissues: dict, contrast: str, amplitude_mm: float = 4.0, sigma_mm: float = 8.0,
              offset_mm: tuple = (20.0, 10.0, 15.0)):
    """A known local warp: fixed(x) = T1(x + u(x)), u a Gaussian bump; moving = the synthetic contrast."""
    import SimpleITK as sitk

    from MultimodalFusionLib import data
    from MultimodalFusionLib.registration import accuracy

    t1, brain = tissues["t1"], tissues["brain_mask"]
    idx = np.argwhere(sitk.GetArrayFromImage(brain) > 0).mean(axis=0)[::-1]  # x, y, z index of the centre
    centre = np.array(t1.TransformContinuousIndexToPhysicalPoint(idx.tolist())) + np.array(offset_mm)
    size = t1.GetSize()
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in size[::-1]], indexing="ij")
    index = np.stack([xx, yy, zz], axis=-1).astype(np.float64)
    points = np.array(t1.GetOrigin()) + index @ (np.array(t1.GetDirection()).reshape(3, 3)
                                                 @ np.diag(t1.GetSpacing())).T
    dist2 = ((points - centre) ** 2).sum(axis=-1)
    direction = np.array([1.0, 1.0, 0.0]) / np.sqrt(2.0)
    u = amplitude_mm * np.exp(-dist2 / (2 * sigma_mm ** 2))[..., None] * direction
    field = sitk.GetImageFromArray(u, isVector=True)
    field.CopyInformation(t1)
    truth = sitk.DisplacementFieldTransform(field)
    fixed = sitk.Resample(t1, t1, truth, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    near = sitk.GetImageFromArray((dist2 <= (2 * sigma_mm) ** 2).astype(np.uint8))
    near.CopyInformation(t1)
    mask = sitk.And(sitk.Resample(brain, t1, truth, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8), near)
    moving = data.synthetic_contrast(tissues, contrast, seed=0)
    return accuracy.KnownCase(fixed=fixed, moving=moving, truth=truth, mask=mask,
                              description=f"MNI152 T1 warped by a {amplitude_mm} mm Gaussian bump (sigma {sigma_mm} mm) "
                                          f"vs synthetic {contrast.upper()}")


def build_cases(names: list[str], metrics: list[str]) -> dict:
    import SimpleITK as sitk

    from MultimodalFusionLib import data
    from MultimodalFusionLib.registration import accuracy

    out = {}
    tissues = {}

    def mni(spacing: float) -> dict:
        if spacing not in tissues:
            tissues[spacing] = data.mni152(spacing_mm=spacing)
        return tissues[spacing]

    contrasts = sorted({"t1" if m == "lncc" else "t2" for m in metrics})
    for name in names:
        for contrast in contrasts:
            if name in ("warp3", "warp3-truth"):
                case = accuracy.bspline_case(spacing_mm=3, magnitude_mm=5.0, contrast=contrast, tissues=mni(3))
                kwargs = {"fixed_mask": sitk.BinaryDilate(case.mask, [2, 2, 2])}
                settings = dict(_LEVELS_3MM, stages=["affine", "deformable"])
                if name == "warp3-truth":
                    settings["stages"] = ["deformable"]
                    kwargs["initial_transform"] = sitk.AffineTransform(3)
            elif name == "bump3":
                case = bump_case(mni(3), contrast)
                kwargs = {"fixed_mask": sitk.BinaryDilate(mni(3)["brain_mask"], [2, 2, 2]),
                          "initial_transform": sitk.AffineTransform(3)}
                settings = dict(_LEVELS_3MM, stages=["deformable"])
            elif name == "warp2":
                case = accuracy.bspline_case(spacing_mm=2, magnitude_mm=5.0, contrast=contrast, tissues=mni(2))
                kwargs, settings = {}, {"stages": ["affine", "deformable"]}
            elif name == "rigid3":
                case = accuracy.rigid_case(spacing_mm=3, contrast=contrast, tissues=mni(3))
                kwargs, settings = {}, dict(_LEVELS_3MM, stages=["affine", "deformable"])
            elif name == "rigid1":
                case = accuracy.rigid_case(spacing_mm=1, contrast=contrast, tissues=mni(1))
                kwargs, settings = {}, {"stages": ["affine", "deformable"]}
            else:
                raise SystemExit(f"unknown case {name!r}; use {', '.join(CASES)}")
            out[(name, contrast)] = (case, settings, kwargs)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--seeds", default="0,1,2", help="registration seeds (default 0,1,2)")
    parser.add_argument("--weights", default="1,0.5,0.3,0.1,0.03", help="regularisation_weight values")
    parser.add_argument("--cases", default="warp3,warp3-truth,rigid3", help=f"of {', '.join(CASES)}")
    parser.add_argument("--metrics", default="mind", help="deformable metrics: mind, lncc (T1 vs T1), mi")
    parser.add_argument("--sigmas", default="2", help="velocity_sigma values (default 2, the default)")
    parser.add_argument("--json", help="also write every run to this JSON file")
    args = parser.parse_args(argv)

    import torch

    from MultimodalFusionLib.registration.torch_backend import TorchRegistrationParameters, register_torch

    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    weights = [float(w) for w in args.weights.split(",")]
    sigmas = [float(s) for s in args.sigmas.split(",")]
    metrics = args.metrics.split(",")
    cases = build_cases(args.cases.split(","), metrics)
    print(f"torch {torch.__version__}, CPU, {args.threads} thread(s), seeds {seeds}; MNI152 2009a (nilearn) T1 vs "
          "synthetic T2 (T1 for lncc); TRE over the brain, mm: mean over seeds of the mean / of the max "
          "[worst seed's max]; folded % of voxels (smallest Jacobian determinant); fields kept; wall (CPU) s per run")
    print()
    print("| case | metric | velocity_sigma | regularisation_weight | before | mean / max TRE [worst max] | folded % "
          "(min det) | fields kept | wall (CPU) s |")
    print("|---|---|---|---|---|---|---|---|---|")
    runs = []
    for name in args.cases.split(","):
        for metric in metrics:
            case, settings, kwargs = cases[(name, "t1" if metric == "lncc" else "t2")]
            before = case.error_before()
            for sigma in sigmas:
                for weight in weights:
                    cell = []
                    for seed in seeds:
                        params = TorchRegistrationParameters(device="cpu", deformable_metric=metric,
                                                             regularisation_weight=weight, velocity_sigma=sigma,
                                                             **settings)
                        t0, c0 = time.perf_counter(), time.process_time()
                        result = register_torch(case.fixed, case.moving, params, seed=seed, **kwargs)
                        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
                        err = case.error(result.transform)
                        folded, smallest = folding(result.transform)
                        kept = bool(result.stages[-1].accepted is not False and result.is_deformable)
                        run = {"case": name, "metric": metric, "velocity_sigma": sigma, "weight": weight,
                               "seed": seed, "mean_mm": err["mean"], "max_mm": err["max"], "folded": folded,
                               "min_det": smallest, "kept": kept, "seconds": seconds,
                               "cpu_seconds": cpu,
                               "before_mean_mm": before["mean"], "before_max_mm": before["max"],
                               "similarity": [result.stages[-1].metric_before, result.stages[-1].metric_after]}
                        runs.append(run)
                        cell.append(run)
                    mean = statistics.mean(r["mean_mm"] for r in cell)
                    mx = statistics.mean(r["max_mm"] for r in cell)
                    worst = max(r["max_mm"] for r in cell)
                    fold = max(r["folded"] for r in cell)
                    det = min(r["min_det"] for r in cell)
                    kept = sum(r["kept"] for r in cell)
                    secs = statistics.mean(r["seconds"] for r in cell)
                    cpu = statistics.mean(r["cpu_seconds"] for r in cell)
                    print(f"| {name} | {metric} | {sigma:g} | {weight:g} | {before['mean']:.2f} / {before['max']:.2f} | "
                          f"{mean:.2f} / {mx:.2f} [{worst:.2f}] | {100 * fold:.3f} ({det:.2f}) | {kept}/{len(cell)} | "
                          f"{secs:.1f} ({cpu:.1f}) |", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(runs, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
