#!/usr/bin/env python
"""How little overlap a start may have: ITK's 2D BrainWeb pair overlapping by a share of the smaller image.

Two layouts, one rigid stage, ``initializer="none"`` (the start is the headers' placement), both backends:

* shifted: the moving slice's origin moved along x until ``p`` % of it overlaps the fixed one (the start
  then lies 50-230 px from the truth, so the capture range counts as well as the overlap);
* band: the fixed slice cut to its columns [0, k+w) and the moving one to [k, 221), each kept in place, so
  that they overlap in a band of ``w`` columns, ``p`` % of each, 18-20 px from the truth (the overlap alone).

Prints the share (``validation.start_overlap``), the start's and the result's mean error over the fixed slice
(px) and the metric before/after; "refused" where the registration raised. The registration warns below
``validation.MIN_START_OVERLAP`` (20 %).

Example (the README's numbers; the torch rows take about half a minute each on 2 shared cores):

    python benchmarks/start_overlap.py --layout shifted --percents 2,5,10,15,20,30,50,85
    python benchmarks/start_overlap.py --layout band --percents 2,5,10,15,20,30,50 --seeds 1,2,3
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

# Runs from a source checkout without installing the package.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_machine


def layout(kind: str, share: float, fixed, moving, truth):
    """(fixed, moving, truth) overlapping by ``share`` of the smaller image in the ``kind`` layout."""
    import SimpleITK as sitk

    width, height = fixed.GetSize()
    if kind == "shifted":
        columns = round(width * share)
        shifted = sitk.Image(moving)
        shifted.SetOrigin((float(width - columns), 0.0))
        # fixed -> the unshifted moving image (truth) -> shifted by (width - columns) along x
        moved = sitk.CompositeTransform([sitk.TranslationTransform(2, (float(width - columns), 0.0)), truth])
        return fixed, shifted, moved
    band = round(share * width / (2 - share))  # band / (k + band) = share with k = (width - band) / 2
    k = (width - band) // 2
    return (sitk.RegionOfInterest(fixed, [k + band, height], [0, 0]),
            sitk.RegionOfInterest(moving, [width - k, height], [k, 0]), truth)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layout", choices=("shifted", "band"), default="shifted")
    parser.add_argument("--percents", default="2,5,10,15,20,30,50,85")
    parser.add_argument("--backends", default="sitk,torch")
    parser.add_argument("--seeds", default="1")
    args = parser.parse_args(argv)

    import SimpleITK as sitk
    from bench_machine import describe

    from MultimodalFusionLib.errors import InputError, RegistrationError
    from MultimodalFusionLib.registration import register
    from MultimodalFusionLib.registration.accuracy import (
        itk_brainweb_pair,
        itk_brainweb_truth,
        transform_error,
    )
    from MultimodalFusionLib.validation import start_overlap

    print("ITK's 2D BrainWeb pair, one rigid stage, initializer none; "
          + describe("auto" if "torch" in args.backends else None))
    fixed0, moving0 = itk_brainweb_pair()
    truth0 = itk_brainweb_truth(fixed0)
    identity = sitk.Transform(2, sitk.sitkIdentity)
    for percent in [float(p) for p in args.percents.split(",")]:
        fixed, moving, truth = layout(args.layout, percent / 100, fixed0, moving0, truth0)
        share, _ = start_overlap(fixed, moving, identity)
        start = transform_error(identity, truth, fixed)["mean"]
        for backend in args.backends.split(","):
            for seed in [int(s) for s in args.seeds.split(",")]:
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        result = register(fixed, moving, backend=backend, initializer="none", seed=seed)
                    error = transform_error(result.transform, truth, fixed)["mean"]
                    out = f"{error:7.2f} px  metric {result.metric_before:.4f} -> {result.metric_after:.4f}"
                except (InputError, RegistrationError) as exc:
                    out = f"refused: {exc.problem[:60]}"
                print(f"{args.layout} {percent:4.0f}%: overlap {100 * share:5.1f}% of the smaller image, start "
                      f"{start:6.2f} px; {backend:5s} seed {seed}: {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
