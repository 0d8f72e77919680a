#!/usr/bin/env python
"""Small moving masks on the torch backend: left out at the coarse levels (as now) or used at every level.

The torch backend leaves the moving mask out of a similarity while 100 voxels or fewer of the level
lie inside both masks (``torch_backend._MIN_MASKED``), counted in the level's own voxels: at shrink
factor 4 a 2D moving mask of fewer than about 40x40 pixels is left out there from any start, and the
level registers the whole images. This registers ITK's 2D BrainWeb pair (T1 fixed, PD moving, 10 degrees
and (13, 17) px apart), and its band case (the PD's top 100 rows turned 12 degrees further), rigidly with
a ``w x w`` moving mask around where the truth sends three places of the fixed head (its centre, above
it, left of it), from 3.6 px off the truth ("near") and from the moments initializer, and prints the
mean error over the slice (px). ``--min-masked 0`` uses the moving mask at every level where any voxel
lies inside both (the rule patched for this run only), to compare.

Example (the README's numbers):

    python benchmarks/small_moving_masks.py --threads 1
    python benchmarks/small_moving_masks.py --threads 1 --min-masked 0
"""

from __future__ import annotations

import argparse
import os
import sys

# Runs from a source checkout without installing the package.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_machine

#: (row, column) in the 257 x 221 fixed slice whose place in the moving slice (through the truth) centres
#: the moving mask: for the plain pair the head's centre, above it, left of it; for the band case the
#: same below the band (its moving mask must not cover the band, or it is the band that misleads)
PLACES = {"plain": ((120, 110), (80, 110), (120, 70)), "band": ((150, 110), (180, 110), (150, 70))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[13, 16, 20, 24, 32, 40])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--metrics", nargs="+", default=["mi", "lncc"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--min-masked", type=int, default=None,
                        help="patch torch_backend._MIN_MASKED for this run (default: as it is, 100)")
    args = parser.parse_args(argv)

    import numpy as np
    import SimpleITK as sitk
    import torch

    from MultimodalFusionLib.registration import register, torch_backend
    from MultimodalFusionLib.registration.accuracy import (
        itk_brainweb_band_case,
        itk_brainweb_pair,
        itk_brainweb_truth,
        transform_error,
    )

    torch.set_num_threads(args.threads)
    if args.min_masked is not None:
        torch_backend._MIN_MASKED = int(args.min_masked)
    fixed, moving = itk_brainweb_pair()
    truth = itk_brainweb_truth(fixed)
    images = {"plain": moving, "band": itk_brainweb_band_case().moving}
    starts = {"near": sitk.CompositeTransform([truth, sitk.TranslationTransform(2, (3.0, -2.0))]), "moments": None}

    def moving_box(row: int, column: int, width: int) -> sitk.Image:
        point = truth.TransformPoint(fixed.TransformContinuousIndexToPhysicalPoint((float(column), float(row))))
        x, y = moving.TransformPhysicalPointToContinuousIndex(point)
        arr = np.zeros(moving.GetSize()[::-1], np.uint8)
        top, left = int(round(y)) - width // 2, int(round(x)) - width // 2
        arr[top:top + width, left:left + width] = 1
        mask = sitk.GetImageFromArray(arr)
        mask.CopyInformation(moving)
        return mask

    from bench_machine import describe

    print("ITK's 2D BrainWeb pair and its band case (itk_brainweb_band_case), rigid stage on the torch backend; "
          + describe("auto"))
    print(f"moving mask left out at <= {torch_backend._MIN_MASKED} voxels of a level inside both masks; "
          f"widths {args.widths}, {len(PLACES['plain'])} places, seeds 0-{args.seeds - 1} (mi; lncc samples every "
          "voxel: seed 0)")
    print("| case | start | metric | runs | mean error px: mean | median | max | runs > 2 px | runs left out |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case, image in images.items():
        for start_name, start in starts.items():
            for metric in args.metrics:
                errors, left_out = [], 0
                for row, column in PLACES[case]:
                    for width in args.widths:
                        for seed in range(args.seeds if metric == "mi" else 1):
                            params = torch_backend.TorchRegistrationParameters(stages=["rigid"], device="cpu",
                                                                               linear_metric=metric)
                            result = register(fixed, image, params, moving_mask=moving_box(row, column, width),
                                              seed=seed, backend="torch", initial_transform=start)
                            errors.append(transform_error(result.transform, truth, fixed)["mean"])
                            left_out += any("moving mask was left out" in w for w in result.warnings)
                e = np.array(errors)
                print(f"| {case} | {start_name} | {metric} | {e.size} | {e.mean():.2f} | {np.median(e):.2f} | "
                      f"{e.max():.2f} | {int((e > 2).sum())} | {left_out} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
