#!/usr/bin/env python
"""Centre of mass (the ``moments`` initializer and the rotation search's start) on offset backgrounds.

Part 1 compares three weightings of the voxels with the centre of each image's *object* (its
noise-free version; for the CT its densities, HU + 1000): the values as they are (ITK's moments,
the SimpleITK backend's rule before), the values minus their minimum (the torch backend's rule
before), and this version's ``sitk_backend.centre_of_mass`` (the values above min(0, 25th
percentile)), on the MNI152 head's synthetic contrasts: CT (air at -1000 HU, noise), the CT with
90 mm more noisy air on one side (a wider field), the CT with -3024 padding outside a circular
field of view, T2 and PET, and both minus 1000. Distances in mm.

Part 2 registers the MNI152 T1 (fixed) to the synthetic CT moved by ``rigid_case``'s default
8 degrees and (3, 0, 4) mm, one rigid stage, ``initializer`` moments and search, on both backends,
and prints how far the moving centre of mass lies from where the truth puts the fixed one, and the
final mean TRE over the brain (mm) with the seconds.

Example (the README's numbers):

    python benchmarks/centre_of_mass.py --spacing 3 --seed 0
"""

from __future__ import annotations

import argparse
import os
import sys
import time

# Runs from a source checkout without installing the package.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _centre(image, weights):
    import numpy as np

    dim = weights.ndim
    index = []
    for axis in range(dim):  # numpy axis (dim - 1 - axis) is ITK index axis ``axis``
        profile = weights.sum(axis=tuple(a for a in range(dim) if a != dim - 1 - axis), dtype=np.float64)
        index.append(float(np.dot(profile, np.arange(profile.size, dtype=np.float64)) / profile.sum()))
    return np.array(image.TransformContinuousIndexToPhysicalPoint(index))


def rules():
    """name -> function(image) -> physical centre."""
    import numpy as np
    import SimpleITK as sitk

    from MultimodalFusionLib.registration.sitk_backend import centre_of_mass

    def signed(image):
        return _centre(image, sitk.GetArrayFromImage(image).astype(np.float64))

    def minus_minimum(image):
        arr = sitk.GetArrayFromImage(image).astype(np.float64)
        return _centre(image, arr - arr.min())

    return {"signed (sitk before)": signed, "minus minimum (torch before)": minus_minimum,
            "this version": centre_of_mass}


def _image(arr, like):
    import SimpleITK as sitk

    out = sitk.GetImageFromArray(arr.astype("float32"))
    out.CopyInformation(like)
    return out


def centre_table(tissues, seed: int) -> list[tuple[str, list[float]]]:
    """Rows (image, distance of each rule's centre from the object's centre, mm)."""
    import numpy as np
    import SimpleITK as sitk

    from MultimodalFusionLib import data

    spacing = tissues["t1"].GetSpacing()[0]
    rows = []
    for contrast in ("ct", "t2", "pet"):
        noisy = data.synthetic_contrast(tissues, contrast, seed=seed)
        clean = sitk.GetArrayFromImage(data.synthetic_contrast(tissues, contrast, seed=seed, noise=0.0))
        clean = clean.astype(np.float64) + (1000.0 if contrast == "ct" else 0.0)
        variants = [(contrast.upper(), noisy, np.maximum(clean, 0.0))]
        if contrast == "ct":
            pad = int(round(90.0 / spacing))
            wide = sitk.ConstantPad(noisy, [pad, 0, 0], [0, 0, 0], -1000.0)
            arr = sitk.GetArrayFromImage(wide)
            arr[:, :, :pad] += np.random.default_rng(seed).normal(0.0, 40.0, arr[:, :, :pad].shape).astype(np.float32)
            object_wide = np.pad(np.maximum(clean, 0.0), ((0, 0), (0, 0), (pad, 0)))
            variants.append(("CT, 90 mm more air", _image(arr, wide), object_wide))
            arr = sitk.GetArrayFromImage(noisy)
            ny, nx = arr.shape[1:]
            yy, xx = np.mgrid[:ny, :nx]
            outside = (yy - (ny - 1) / 2.0) ** 2 + (xx - (nx - 1) / 2.0) ** 2 > (min(nx, ny) / 2.0) ** 2
            arr[:, outside] = -3024.0
            variants.append((f"CT, -3024 outside a circular field ({outside.mean():.0%})", _image(arr, noisy),
                             np.where(outside[None], 0.0, np.maximum(clean, 0.0))))
        else:
            variants.append((f"{contrast.upper()} - 1000", noisy - 1000.0, np.maximum(clean, 0.0)))
        for name, image, weights in variants:
            target = _centre(image, weights)
            rows.append((name, [float(np.linalg.norm(rule(image) - target)) for rule in rules().values()]))
    return rows


def registration_table(tissues, seed: int) -> list[tuple[str, str, float, float]]:
    """Rows (backend, initializer, final mean TRE mm, seconds) on the T1 / CT pair."""
    from MultimodalFusionLib.registration import register
    from MultimodalFusionLib.registration.accuracy import rigid_case

    case = rigid_case(spacing_mm=tissues["t1"].GetSpacing()[0], contrast="ct", tissues=tissues, seed=seed)
    rows = []
    for backend in ("sitk", "torch"):
        for initializer in ("moments", "search"):
            t0 = time.perf_counter()
            result = register(case.fixed, case.moving, stages=["rigid"], initializer=initializer, backend=backend,
                              seed=seed)
            rows.append((backend, initializer, case.error(result.transform)["mean"], time.perf_counter() - t0))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spacing", type=float, default=3.0, help="voxel size of the MNI152 head (mm)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed and registration seed")
    parser.add_argument("--no-register", action="store_true", help="part 1 only")
    args = parser.parse_args(argv)
    import numpy as np

    from MultimodalFusionLib import data
    from MultimodalFusionLib.registration.accuracy import rigid_case

    tissues = data.mni152(spacing_mm=args.spacing)
    names = list(rules())
    print(f"Distance of the centre from the object's centre (mm), MNI152 at {args.spacing:g} mm:")
    print("| image | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for name, values in centre_table(tissues, args.seed):
        print(f"| {name} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    case = rigid_case(spacing_mm=args.spacing, contrast="ct", tissues=tissues, seed=args.seed)
    print("\nT1 / CT pair: moving centre of mass vs the truth's image of the fixed one (mm):")
    for name, rule in rules().items():
        fixed_centre = rule(case.fixed)
        moved = np.array(case.truth.TransformPoint(fixed_centre.tolist()))
        print(f"  {name}: {np.linalg.norm(rule(case.moving) - moved):.2f}")
    if args.no_register:
        return 0
    print("\n| backend | initializer | TRE mm | s |")
    print("|---|---|---|---|")
    for backend, initializer, tre, seconds in registration_table(tissues, args.seed):
        print(f"| {backend} | {initializer} | {tre:.2f} | {seconds:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
