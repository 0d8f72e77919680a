#!/usr/bin/env python
"""Why is a local deformation's torch field discarded? Where the field moves, and what the check sees.

Usage::

    python benchmarks/bump_field_check.py [--threads 1] [--seed 1]
        [--runs mind:t2:1,mind:t2:0.1,mind:t1:1,lncc:t1:1,mi:t2:1]

The case is ``deformable_regularisation.py``'s ``bump3``: the 3 mm MNI152 T1 warped by a 4 mm Gaussian bump
(sigma 8 mm) is the fixed image, the synthetic contrast (``t2``, or the T1 itself) the moving one; the torch
deformable stage alone, from the true affine, levels 6 and 3 mm, the brain dilated by 2 voxels as fixed mask.
Each run (``metric:contrast:regularisation_weight``) registers with ``register_torch`` (whether it kept the
field), then optimises the same stage again (same seed: the same field) to look at the field whatever the
check decided, and prints:

- TRE (mean / max, mm) of that field near the bump (the brain within 16 mm of its centre, the benchmark's
  mask) and elsewhere in the brain, where the truth is (almost) the identity;
- mutual information at register_torch's evaluation voxels (what the check compares), all / near / elsewhere,
  for the identity, the field and the true warp;
- the dense MIND loss of the last level (what the MIND stage lowers) near / elsewhere, for the same three;
- the largest difference between the moving values the check samples through the field and SimpleITK's
  resampling of the exported transform at the same voxels (0: the check sees the transform it returns);
- then, per run, voxel counts, the whole brain's TRE, TRE in the brain's outer 2 voxels vs deeper, MI on
  SimpleITK's values, ``resample_torch`` vs SimpleITK, and MI elsewhere under uniform shifts (does MI fall
  with misalignment, or only with interpolation off the grid?).
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

# Runs from a source checkout without installing the package.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--seed", type=int, default=1, help="registration seed (default 1)")
    parser.add_argument("--runs", default="mind:t2:1,mind:t2:0.1,mind:t1:1,lncc:t1:1,mi:t2:1",
                        help="metric:contrast:regularisation_weight, comma separated")
    args = parser.parse_args(argv)

    import SimpleITK as sitk
    import torch
    import torch.nn.functional as F
    from deformable_regularisation import _LEVELS_3MM, bump_case

    from MultimodalFusionLib import data
    from MultimodalFusionLib.registration import torch_backend as tb
    from MultimodalFusionLib.registration.accuracy import _displacements
    from MultimodalFusionLib.registration.torch_losses import mind_ssc

    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    tissues = data.mni152(spacing_mm=3)
    fixed_mask = sitk.BinaryDilate(tissues["brain_mask"], [2, 2, 2])
    print(f"torch {torch.__version__}, CPU, {args.threads} thread(s), seed {args.seed}; bump3 (4 mm bump, sigma 8 mm); "
          "TRE mean / max mm; MI = -mutual information at the evaluation voxels (lower is better); "
          "MIND = dense MIND loss of the last level")
    print()
    print("| metric | moving | weight | kept | TRE near: identity -> field | TRE elsewhere: field | "
          "MI all: identity / field / truth | MI near | MI elsewhere | MIND near | MIND elsewhere | check vs sitk |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    details = []
    for run in args.runs.split(","):
        metric, contrast, weight = run.split(":")
        case = bump_case(tissues, contrast)
        params = tb.TorchRegistrationParameters(device="cpu", deformable_metric=metric, seed=args.seed,
                                                regularisation_weight=float(weight), stages=["deformable"],
                                                **_LEVELS_3MM)
        identity = sitk.AffineTransform(3)
        result = tb.register_torch(case.fixed, case.moving, params, fixed_mask=fixed_mask, initial_transform=identity)
        kept = result.is_deformable

        # the same stage again (same seed and thread count: the same field), kept or not
        fixed = sitk.Cast(case.fixed, sitk.sitkFloat32)
        ctx = tb._Context(fixed, sitk.Cast(case.moving, sitk.sitkFloat32), fixed_mask, None, params, args.seed, cpu)
        center = tb._image_center(fixed)
        affine = tb._affine_matrix(np.eye(3), center, np.zeros(3))
        velocity, _ = tb._deformable_stage(ctx, affine, None, (0.0, 1.0))
        disp = tb._full_resolution_displacement(ctx, velocity)
        exported = sitk.CompositeTransform([tb._affine_transform(np.eye(3), center, np.zeros(3)),
                                            tb._displacement_transform(ctx, disp)])

        # TRE near the bump and elsewhere in the brain
        d_field = _displacements(exported, case.fixed)
        d_true = _displacements(case.truth, case.fixed)
        near = sitk.GetArrayFromImage(case.mask) > 0
        brain = sitk.GetArrayFromImage(sitk.Resample(tissues["brain_mask"], case.fixed, case.truth,
                                                     sitk.sitkNearestNeighbor)) > 0
        elsewhere = brain & ~near
        err = np.linalg.norm(d_field - d_true, axis=-1)
        before = np.linalg.norm(d_true, axis=-1)

        # MI at the evaluation voxels, as register_torch's check computes it
        total = ctx.total_matrix(torch.as_tensor(affine, dtype=torch.float64))
        linear = ctx.f_norm_to_phys[:3, :3]
        truth = torch.from_numpy((d_true @ np.linalg.inv(linear).T).astype(np.float32)).permute(3, 0, 1, 2)[None]
        size = torch.tensor(ctx.fixed.shape[::-1], dtype=torch.float32)
        index = ((ctx.eval_points + 1) / 2 * (size - 1)).round().long()
        near_pts = torch.from_numpy(near)[index[:, 2], index[:, 1], index[:, 0]]

        def moved(field, points):
            if field is None:
                return points
            d = F.grid_sample(field, points.reshape(1, 1, 1, -1, 3), mode="bilinear", padding_mode="border",
                              align_corners=True)
            return points + d.reshape(3, -1).transpose(0, 1)

        def mi(field, keep=None, ctx=ctx, total=total):
            points, values = ctx.eval_points, ctx.eval_values
            if keep is not None:
                points, values = points[keep], values[:, keep]
            with torch.no_grad():
                return float(ctx.mi_at_points(moved(field, points), values, total, ctx.moving.tensor))

        fields = (None, disp, truth)
        mi_all = " / ".join(f"{mi(f):.3f}" for f in fields)
        mi_near = " / ".join(f"{mi(f, near_pts):.3f}" for f in fields)
        mi_else = " / ".join(f"{mi(f, ~near_pts):.3f}" for f in fields)

        # the dense MIND loss of the last level (the stage's own similarity, unsampled)
        with torch.no_grad():
            fixed_img, _, moving_img, _ = ctx.level_images(1.0)
            grid = tb._identity_grid(list(fixed_img.shape[2:]), cpu)[None]
            fixed_feat = mind_ssc(fixed_img, params.mind_radius, params.mind_dilation)
            on_fixed = F.grid_sample(moving_img, tb._apply(grid, total.float()), mode="bilinear",
                                     padding_mode="border", align_corners=True)
            moving_feat = mind_ssc(on_fixed, params.mind_radius, params.mind_dilation)
            near_t, else_t = torch.from_numpy(near), torch.from_numpy(elsewhere)
            mind_near, mind_else = [], []
            for f in (torch.zeros_like(disp), disp, truth):
                warped = F.grid_sample(moving_feat, grid + f.movedim(1, -1), mode="bilinear", padding_mode="border",
                                       align_corners=True)
                per_voxel = ((fixed_feat - warped) ** 2).mean(dim=1)[0]
                mind_near.append(f"{float(per_voxel[near_t].mean()):.4f}")
                mind_else.append(f"{float(per_voxel[else_t].mean()):.4f}")

            # the check's moving values through the field vs SimpleITK's resampling of the exported transform
            check = ctx.sample_moving(ctx.moving.tensor, tb._apply(moved(disp, ctx.eval_points).double(),
                                                                   total).float())[0].numpy()
        resampled = sitk.GetArrayFromImage(sitk.Resample(ctx.moving.scaled, fixed, exported, sitk.sitkLinear, 0.0))
        by_sitk = resampled[index[:, 2], index[:, 1], index[:, 0]]
        diff = np.abs(check - by_sitk)
        # details: voxel counts, the whole brain, the brain's outer 2 voxels vs deeper, the check's MI on ITK's
        # values, resample_torch vs SimpleITK, and MI elsewhere for uniform shifts along the bump's direction
        inner = sitk.GetArrayFromImage(sitk.BinaryErode(sitk.GetImageFromArray(brain.astype(np.uint8)), [2, 2, 2])) > 0
        mi_sitk = float(ctx.mi_loss(ctx.eval_values, torch.from_numpy(by_sitk)[None]))
        by_torch = sitk.GetArrayFromImage(tb.resample_torch(ctx.moving.scaled, fixed, exported))
        shifts = []
        for mm in (0.75, 1.5, 3.0):
            step = np.linalg.inv(linear) @ (np.array([1.0, 1.0, 0.0]) / np.sqrt(2.0) * mm)
            shift = torch.as_tensor(step, dtype=torch.float32).reshape(1, 3, 1, 1, 1).expand(1, 3, *ctx.fixed.shape)
            shifts.append(f"{mm:g} mm {mi(shift.contiguous(), ~near_pts):.3f}")
        details.append(f"- {metric}, {contrast.upper()}, weight {float(weight):g}: {int(near.sum())} brain voxels near the "
                       f"bump, {int(elsewhere.sum())} elsewhere ({int(near_pts.sum())} and {int((~near_pts).sum())} "
                       f"evaluation voxels); whole-brain TRE identity {before[brain].mean():.2f} / {before[brain].max():.2f}, "
                       f"field {err[brain].mean():.2f} / {err[brain].max():.2f} mm; elsewhere, the brain's outer 2 voxels "
                       f"{err[elsewhere & ~inner].mean():.2f} / {err[elsewhere & ~inner].max():.2f}, deeper "
                       f"{err[elsewhere & inner].mean():.2f} / {err[elsewhere & inner].max():.2f} mm; MI of the field on "
                       f"SimpleITK's values {mi_sitk:.4f} (the check's {mi(disp):.4f}); resample_torch vs SimpleITK "
                       f"{np.abs(by_torch - resampled)[brain].max():.1e}; MI elsewhere under a uniform shift along "
                       f"(1, 1, 0): {', '.join(shifts)}")
        print(f"| {metric} | {contrast.upper()} | {float(weight):g} | {'yes' if kept else 'no'} | "
              f"{before[near].mean():.2f} / {before[near].max():.2f} -> {err[near].mean():.2f} / {err[near].max():.2f} | "
              f"{err[elsewhere].mean():.2f} / {err[elsewhere].max():.2f} | {mi_all} | {mi_near} | {mi_else} | "
              f"{' / '.join(mind_near)} | {' / '.join(mind_else)} | {diff.max():.3f} ({int((diff > 1e-3).sum())} of "
              f"{diff.size} voxels > 0.001) |", flush=True)
    print()
    print("\n".join(details))
    return 0


if __name__ == "__main__":
    sys.exit(main())
