#!/usr/bin/env python
"""SimpleITK registration with a fixed mask: the sample counts are counts inside the mask.

ITK draws its share of each level's whole fixed grid and drops the points outside the fixed mask, so
a count asked for over the whole grid (``number_of_samples``, the engine's floor of 3000 samples per
level, ``max_samples``) shrinks with the mask's share of the grid. This registers the MNI152 T1
(fixed) to its synthetic T2 with a fixed mask, seeds 0..N-1, and prints the mean TRE over the mask
(median and largest over the seeds, mm) and the median seconds:

- ``rigid_case`` (8, 4, 0) degrees and (3, 0, 4) mm, preset ``t1-t2-brain``, a central box over 5%
  of the grid, and the brain mask;
- ``bspline_case`` (a smooth 5 mm warp), preset ``mr-mr-deformable`` (rigid, affine, B-spline of
  4000 samples), the brain mask, and a central box over 10% of the grid.

Example (the README's numbers; the "before" ones: the same script at commit c69fe12):

    python benchmarks/masked_sampling.py --spacing 3 --seeds 6
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# Runs from a source checkout without installing the package.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_machine


def central_box(reference, share: float):
    """A box mask in the middle of ``reference``'s grid over about ``share`` of its voxels."""
    import numpy as np
    import SimpleITK as sitk

    arr = np.zeros(reference.GetSize()[::-1], np.uint8)
    side = share ** (1.0 / 3.0)
    arr[tuple(slice(int(n * (0.5 - side / 2)), int(n * (0.5 + side / 2))) for n in arr.shape)] = 1
    mask = sitk.GetImageFromArray(arr)
    mask.CopyInformation(reference)
    return mask


def rows(spacing: float, seeds: int):
    import numpy as np
    import SimpleITK as sitk

    from MultimodalFusionLib import data
    from MultimodalFusionLib.registration import register
    from MultimodalFusionLib.registration.accuracy import bspline_case, rigid_case, transform_error

    tissues = data.mni152(spacing_mm=spacing)
    rigid = rigid_case(spacing_mm=spacing, tissues=tissues, angles_deg=(8.0, 4.0, 0.0))
    warp = bspline_case(spacing_mm=spacing, magnitude_mm=5.0, tissues=tissues)
    cases = [("rigid", "t1-t2-brain", rigid, "box 5%", central_box(rigid.fixed, 0.05)),
             ("rigid", "t1-t2-brain", rigid, "brain", rigid.mask),
             ("5 mm warp", "mr-mr-deformable", warp, "brain", warp.mask),
             ("5 mm warp", "mr-mr-deformable", warp, "box 10%", central_box(warp.fixed, 0.10))]
    for name, preset, case, mask_name, mask in cases:
        errors, seconds = [], []
        for seed in range(seeds):
            t0 = time.perf_counter()
            result = register(case.fixed, case.moving, preset=preset, seed=seed, fixed_mask=mask)
            seconds.append(time.perf_counter() - t0)
            errors.append(transform_error(result.transform, case.truth, case.fixed, mask)["mean"])
        share = float(sitk.GetArrayViewFromImage(mask).mean())
        yield name, preset, mask_name, share, float(np.median(errors)), max(errors), float(np.median(seconds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spacing", type=float, default=3.0, help="voxel size of the MNI152 pair, mm")
    parser.add_argument("--seeds", type=int, default=6, help="seeds 0..N-1 per row")
    args = parser.parse_args(argv)
    from bench_machine import describe

    print(f"MNI152 T1 (fixed) vs its synthetic T2 at {args.spacing:g} mm, seeds 0-{args.seeds - 1}; {describe()}")
    print("| case | preset | fixed mask (share of the grid) | mean TRE mm: median (max) over seeds | s |")
    print("|---|---|---|---|---|")
    for name, preset, mask_name, share, median, worst, seconds in rows(args.spacing, args.seeds):
        print(f"| {name} | {preset} | {mask_name} ({100 * share:.0f}%) | {median:.3f} ({worst:.3f}) | {seconds:.1f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
