#!/usr/bin/env python
"""Torch registration with a moving mask: a misleading region excluded, each metric and stage.

Usage::

    python benchmarks/torch_registration_masks.py [--spacing 3] [--threads 1] [--seed 1] [--json FILE]

Data: ``registration.accuracy.slab_motion_case`` (MNI152 T1 fixed; the moving image a synthetic
contrast moved by a known rigid transform, except its top 40% of slices, which show the head 8
degrees and 12 mm further on, as slices acquired after the patient moved). The moving mask covers
the other slices. Each row registers the pair with the torch backend without and with the moving
mask, and with a fixed mask instead (the error region: the fixed brain that the truth sends into the
kept slices), and prints the mean / max TRE (mm) over that region, and the seconds. The deformable
rows start from the true rigid transform, so they measure what the deformable stage alone does with
the slab (a field that leaves mutual information inside the masks worse is discarded: 0 mm).
Then the 2D pair of the tests (``accuracy.itk_brainweb_band_case``), rigid + deformable, per metric.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# Runs from a source checkout without installing the package.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

#: (row name, moving contrast, settings, start from the truth)
ROWS = [
    ("affine, LNCC (T1 vs T1)", "t1", {"stages": ["affine"], "linear_metric": "lncc"}, False),
    ("affine, MIND (T1 vs T2)", "t2", {"stages": ["affine"], "linear_metric": "mind"}, False),
    ("affine, MI (T1 vs T2)", "t2", {"stages": ["affine"], "linear_metric": "mi"}, False),
    ("deformable from the truth, LNCC (T1 vs T1)", "t1", {"stages": ["deformable"], "deformable_metric": "lncc"}, True),
    ("deformable from the truth, MIND (T1 vs T2)", "t2", {"stages": ["deformable"], "deformable_metric": "mind"}, True),
    ("deformable from the truth, MI (T1 vs T2)", "t2", {"stages": ["deformable"], "deformable_metric": "mi"}, True),
    ("affine + deformable, MIND (defaults)", "t2", {"stages": ["affine", "deformable"]}, False),
]



def _measured(case, register, *args, **kwargs) -> tuple[dict, str]:
    """One registration timed and scored against ``case``'s truth: its row entry and its table cell."""
    t0 = time.perf_counter()
    result = register(*args, **kwargs)
    seconds = time.perf_counter() - t0
    err = case.error(result.transform)
    return ({"mean_mm": err["mean"], "max_mm": err["max"], "seconds": seconds, "warnings": result.warnings},
            f"{err['mean']:.2f} / {err['max']:.2f} ({seconds:.1f})")

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spacing", type=float, default=3.0, help="voxel size of the pair in mm (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--seed", type=int, default=1, help="registration seed (default 1)")
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)

    import torch

    from MultimodalFusionLib import data
    from MultimodalFusionLib.registration import accuracy
    from MultimodalFusionLib.registration.torch_backend import TorchRegistrationParameters, register_torch

    torch.set_num_threads(args.threads)
    tissues = data.mni152(spacing_mm=args.spacing)
    cases = {c: accuracy.slab_motion_case(spacing_mm=args.spacing, contrast=c, tissues=tissues) for c in ("t1", "t2")}
    level = [2.0 * args.spacing, args.spacing]
    first = cases["t1"]
    before = first.error_before()
    print(first.description)
    print(f"{first.fixed.GetSize()} voxels of {args.spacing} mm; TRE before {before['mean']:.2f} / "
          f"{before['max']:.2f} mm over {before['points']} brain voxels; seed {args.seed}, {args.threads} thread(s)")
    print()
    print("| row | no mask: mean / max TRE mm (s) | moving mask | fixed mask |")
    print("|---|---|---|---|")
    out = []
    for name, contrast, settings, from_truth in ROWS:
        case = cases[contrast]
        params = TorchRegistrationParameters(device="cpu", deformable_level_spacing_mm=level, **settings)
        cells, row = [], {"row": name}
        for label, fixed_mask, moving_mask in (("no_mask", None, None), ("moving_mask", None, case.moving_mask),
                                               ("fixed_mask", case.mask, None)):
            row[label], cell = _measured(case, register_torch, case.fixed, case.moving, params, fixed_mask=fixed_mask,
                                         moving_mask=moving_mask, seed=args.seed,
                                         initial_transform=case.truth if from_truth else None)
            cells.append(cell)
        out.append(row)
        print(f"| {name} | {' | '.join(cells)} |", flush=True)
    # 2D: ITK's BrainWeb T1/PD slices with a band of the PD turned further (the tests' pair), rigid + deformable
    band = accuracy.itk_brainweb_band_case()
    print()
    print(band.description)
    print("| 2D rigid + deformable (60-30-15 and 20-10 iterations) | no mask: mean / max TRE px (s) | moving mask |")
    print("|---|---|---|")
    for metric in ("mi", "mind", "lncc"):
        params = TorchRegistrationParameters(device="cpu", stages=["rigid", "deformable"], linear_metric=metric,
                                             deformable_metric=metric, linear_iterations=[60, 30, 15],
                                             deformable_iterations=[20, 10])
        cells, row = [], {"row": f"2D rigid + deformable, {metric}"}
        for label, mask in (("no_mask", None), ("moving_mask", band.moving_mask)):
            row[label], cell = _measured(band, register_torch, band.fixed, band.moving, params, moving_mask=mask,
                                         seed=args.seed)
            cells.append(cell)
        out.append(row)
        print(f"| {metric} | {' | '.join(cells)} |", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"spacing_mm": args.spacing, "threads": args.threads, "seed": args.seed, "rows": out}, fh,
                      indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
