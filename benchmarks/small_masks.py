#!/usr/bin/env python
"""How small a registration mask may be: a rigid stage over square fixed masks of a few pixels.

Registers ITK's 2D BrainWeb pair (T1 fixed, PD moving, 10 degrees apart) from 3.6 px off the truth
(the truth, then a shift of (3, -2) px: well inside the rigid stage's capture range, so what is left is
the mask's doing), with a fixed mask of ``w x w`` pixels at three places in the head, seeds 0..N-1, on
both backends, and prints the mean error over the slice (px) for each seed: ``fail`` where ITK refused
the mask (an InputError). The registration warns about masks of fewer than ``MIN_CONTENT_VOXELS``
(150) voxels.

Example (the README's numbers):

    python benchmarks/small_masks.py --seeds 4 --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys

# Runs from a source checkout without installing the package.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_machine

#: (row, column) centres of the masks in the 257 x 221 fixed slice: its centre, above it, left of it
PLACES = ((120, 110), (80, 110), (120, 70))


def box(reference, row: int, column: int, width: int):
    """A ``width`` x ``width`` mask centred at (row, column) on ``reference``'s grid."""
    import numpy as np
    import SimpleITK as sitk

    arr = np.zeros(reference.GetSize()[::-1], np.uint8)
    top, left = row - width // 2, column - width // 2
    arr[top:top + width, left:left + width] = 1
    mask = sitk.GetImageFromArray(arr)
    mask.CopyInformation(reference)
    return mask


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[4, 8, 10, 12, 13, 16, 24])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--backends", nargs="+", default=["sitk", "torch"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)

    import SimpleITK as sitk

    from MultimodalFusionLib.errors import InputError
    from MultimodalFusionLib.registration import register
    from MultimodalFusionLib.registration.accuracy import (
        itk_brainweb_pair,
        itk_brainweb_truth,
        transform_error,
    )

    if "torch" in args.backends:
        import torch

        torch.set_num_threads(args.threads)
    fixed, moving = itk_brainweb_pair()
    truth = itk_brainweb_truth(fixed)
    start = sitk.CompositeTransform([truth, sitk.TranslationTransform(2, (3.0, -2.0))])
    from bench_machine import describe

    print("ITK's 2D BrainWeb pair (BrainT1Slice vs BrainProtonDensitySlice, the tests' truth), rigid stage; "
          + describe("auto" if "torch" in args.backends else None))
    print(f"start: {transform_error(start, truth, fixed)['mean']:.2f} px mean error")
    print("| backend | place (row, col) | mask | pixels | mean error px, seeds 0.. | largest |")
    print("|---|---|---|---|---|---|")
    for backend in args.backends:
        for row, column in PLACES:
            for width in args.widths:
                errors = []
                for seed in range(args.seeds):
                    try:
                        result = register(fixed, moving, stages=["rigid"], fixed_mask=box(fixed, row, column, width),
                                          seed=seed, backend=backend, initial_transform=start)
                        errors.append(transform_error(result.transform, truth, fixed)["mean"])
                    except InputError:
                        errors.append(None)
                shown = " ".join("fail" if e is None else f"{e:.2f}" for e in errors)
                done = [e for e in errors if e is not None]
                largest = f"{max(done):.2f}" if done else "-"
                print(f"| {backend} | ({row}, {column}) | {width}x{width} | {width * width} | {shown} | {largest} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
