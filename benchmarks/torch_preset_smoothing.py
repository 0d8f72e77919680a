"""The shipped presets on the torch backend: their own smoothing sigmas against the torch pyramid's rule.

A preset's first rigid/affine stage's ``smoothing_sigmas`` reach the torch backend as
``linear_smoothing_sigmas``; before, the torch pyramid smoothed each linear level by half its voxel size
(``linear_smoothing_sigmas=None``, which this script runs as "rule"). Each preset runs on its known-answer
cases, with each rule, seeds 0-2 by default, on the CPU:

- ``rigid_case`` (MNI152 T1 vs a synthetic contrast moved 8 degrees about x and (3, 0, 4) mm, at
  ``--spacings``, the preset's contrast: ct for ct-mr-head, pet for mr-pet-brain and pet-ct-body, t2 for
  t1-t2-brain and mr-mr-deformable; ``--angle`` turns it further about x);
- ``scenarios.phantom_pair`` (40^3 oblique, anisotropic MR vs PET phantom) with ``--phantom``.

mr-mr-deformable runs its rigid and affine stages (``--stages``): its B-spline stage runs as the deformable
stage, whose levels neither rule touches. Prints mean TRE over the brain (mm) per seed and the median.

    python benchmarks/torch_preset_smoothing.py --threads 1 --spacings 3 --seeds 0,1,2 --phantom
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_machine

CONTRAST = {"ct-mr-head": "ct", "mr-pet-brain": "pet", "pet-ct-body": "pet", "t1-t2-brain": "t2",
            "mr-mr-deformable": "t2"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default=",".join(CONTRAST), help="presets to run (comma-separated)")
    p.add_argument("--spacings", default="3", help="voxel sizes of the MNI pair, mm (comma-separated; '' none)")
    p.add_argument("--angle", type=float, default=8.0, help="turn about x of the MNI pair, degrees (default 8)")
    p.add_argument("--seeds", default="0,1,2", help="seeds (case noise and registration sampling)")
    p.add_argument("--phantom", action="store_true", help="also the 40^3 MR vs PET phantom pair")
    p.add_argument("--stages", default="rigid,affine", help="mr-mr-deformable's stages to run (default rigid,affine)")
    p.add_argument("--threads", type=int, default=1, help="torch and ITK threads (default 1)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args()

    import SimpleITK as sitk
    import torch

    from MultimodalFusionLib import data, scenarios
    from MultimodalFusionLib.registration import register, resolve_parameters
    from MultimodalFusionLib.registration.accuracy import rigid_case, transform_error
    from MultimodalFusionLib.registration.torch_backend import torch_parameters

    torch.set_num_threads(args.threads)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    spacings = [float(s) for s in args.spacings.split(",") if s.strip()]
    from bench_machine import describe

    print(f"MNI152 T1 vs each preset's synthetic contrast (rigid_case), turned {args.angle:g} degrees about x, at "
          f"{', '.join(f'{s:g}' for s in spacings) or 'no'} mm" + (" and the 40^3 MR vs PET phantom" if args.phantom
                                                                   else "")
          + f"; seeds {seeds}; median mean TRE over the brain, mm; {describe('cpu')}")
    rows = []
    tissues = {s: data.mni152(spacing_mm=s, shape=(160, 192, 192)) for s in spacings}
    for preset in [x.strip() for x in args.presets.split(",") if x.strip()]:
        stages = args.stages if preset == "mr-mr-deformable" else None
        own = torch_parameters(resolve_parameters(preset=preset, stages=stages, backend="torch"))
        own = dataclasses.replace(own, device="cpu")
        rule = dataclasses.replace(own, linear_smoothing_sigmas=None, linear_smoothing_in_mm=False)
        cases = [(f"{s:g} mm", s) for s in spacings] + ([("phantom", None)] if args.phantom else [])
        for label, spacing in cases:
            out = {"preset": preset, "case": label, "sigmas": own.linear_smoothing_sigmas}
            for name, params in (("rule", rule), ("own", own)):
                errors, seconds = [], 0.0
                for seed in seeds:
                    if spacing is None:
                        fixed, moving, truth = scenarios.phantom_pair(seed=seed)
                        mask = None
                    else:
                        case = rigid_case(spacing_mm=spacing, angles_deg=(args.angle, 0.0, 0.0),
                                          contrast=CONTRAST[preset], seed=seed, tissues=tissues[spacing])
                        fixed, moving, truth, mask = case.fixed, case.moving, case.truth, case.mask
                    t0 = time.perf_counter()
                    result = register(fixed, moving, params, backend="torch", seed=seed)
                    seconds += time.perf_counter() - t0
                    errors.append(transform_error(result.transform, truth, fixed, mask)["mean"])
                out[name] = [round(e, 3) for e in errors]
                out[name + "_median"] = round(statistics.median(errors), 3)
                out[name + "_seconds"] = round(seconds / len(seeds), 1)
            rows.append(out)
            print(f"{preset:17s} {label:8s} sigmas {out['sigmas']}: rule {out['rule']} (median {out['rule_median']}) "
                  f"-> own {out['own']} (median {out['own_median']}); {out['rule_seconds']} / {out['own_seconds']} s",
                  flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
