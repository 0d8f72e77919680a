#!/usr/bin/env python
"""How little content an image may hold: a rigid registration of one object on an empty 96x96 field.

The fixed image holds one object at the centre, the moving image the same object shifted by (3, -2) px (the
truth). Two kinds of object, each at several sizes: a flat square of ``k x k`` pixels (value 100: structure at
its edges only) and a smooth Gaussian blob (sigma ``k / 4``), each bright on a black field (0) and dark on a
bright one (100: the same picture inverted, e.g. a dark lesion or marker on a bright background). The default
rigid registration runs with seeds 0..N-1 and the mean error over the field (px) is printed for each seed, with
the count of warnings the result carries (the registration warns about images with structure in fewer than 150
voxels).

Example (the README's numbers):

    python benchmarks/sparse_content.py --seeds 5 --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys

# Runs from a source checkout without installing the package.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_machine

SIZES = (9, 13, 17, 21, 25, 31)
KINDS = ("square", "gaussian", "dark square", "dark gaussian")


def pair(kind: str, k: int):
    """(fixed, moving) 96x96 float32 images holding one ``kind`` object of size ``k``, moved by (3, -2) px
    ("dark ...": the bright one's picture inverted, 100 - value)."""
    import numpy as np
    import SimpleITK as sitk

    if kind.startswith("dark "):
        a, b = pair(kind[len("dark "):], k)
        return 100.0 - a, 100.0 - b
    if kind == "square":
        a, b = np.zeros((96, 96), np.float32), np.zeros((96, 96), np.float32)
        c = 48 - k // 2
        a[c:c + k, c:c + k] = 100.0
        b[c - 2:c - 2 + k, c + 3:c + 3 + k] = 100.0
    else:
        yy, xx = np.mgrid[0:96, 0:96].astype(np.float32)
        s2 = 2 * (k / 4.0) ** 2
        a = (100 * np.exp(-((xx - 48) ** 2 + (yy - 48) ** 2) / s2)).astype(np.float32)
        b = (100 * np.exp(-((xx - 51) ** 2 + (yy - 46) ** 2) / s2)).astype(np.float32)
    return sitk.GetImageFromArray(a), sitk.GetImageFromArray(b)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="object sizes k (comma-separated)")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"objects (comma-separated; default {','.join(KINDS)})")
    parser.add_argument("--threads", type=int, default=None, help="ITK threads (default: ITK's)")
    args = parser.parse_args(argv)
    import SimpleITK as sitk

    from MultimodalFusionLib.registration import register
    from MultimodalFusionLib.registration.accuracy import transform_error

    if args.threads:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    kinds = [s.strip() for s in args.kinds.split(",") if s.strip()]
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown:
        parser.error(f"unknown kind(s) {', '.join(unknown)}: use {', '.join(KINDS)}")
    truth = sitk.TranslationTransform(2, (3.0, -2.0))
    from bench_machine import describe

    print(describe())
    print("Default rigid registration of one object on an empty 96x96 field, moved (3, -2) px; "
          "mean error over the field in px per seed")
    print("| object | k | object voxels (differing from the field by over 1) | "
          + " | ".join(f"seed {s}" for s in range(args.seeds)) + " | warnings |")
    print("|---|---|---|" + "---|" * args.seeds + "---|")
    for kind in kinds:
        for k in sizes:
            fixed, moving = pair(kind, k)
            errors, warned = [], []
            for seed in range(args.seeds):
                result = register(fixed, moving, seed=seed)
                errors.append(transform_error(result.transform, truth, fixed)["mean"])
                warned.append(len(result.warnings))
            field = 100.0 if kind.startswith("dark ") else 0.0
            content = int((abs(sitk.GetArrayViewFromImage(fixed) - field) > 1).sum())
            print(f"| {kind} | {k} | {content} | " + " | ".join(f"{e:.2f}" for e in errors)
                  + f" | {','.join(map(str, warned))} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
