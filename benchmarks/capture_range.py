#!/usr/bin/env python
"""Capture range: recovered TRE vs rotation angle, default initializer vs the rotation search.

The pair is ``registration.accuracy.rigid_case``: the MNI152 T1 (fixed) against a synthetic T2 (or
``--contrast``) moved by a rotation about one axis (x: left-right, y: front-back, z: vertical, about the image
centre) and a translation. Each row registers it with the default settings (one rigid stage,
initializer "geometry") and with ``initializer="search"``, and prints the mean TRE over the brain
(mm) and the registration's seconds (the search included).

Example (the README's table):

    python benchmarks/capture_range.py --spacing 3 --angles 0,30,45,60,90,120,180 --seed 0

``--random N`` replaces the single-axis table by N rotations drawn uniformly over all 3D
orientations (about several axes at once) with shifts drawn uniformly in a 10 mm ball, from a
generator seeded with ``--random-seed``; it ends with how many cases each initializer brought
within 1 mm (the README's statement on oblique rotations):

    python benchmarks/capture_range.py --spacing 3 --random 40 --random-seed 1

``--contrast`` picks the moving image's synthetic contrast (e.g. ``ct``), ``--preset`` a preset name or
JSON file and ``--stages`` the stages (e.g. ``affine``), as ``mmfusion register`` takes them, in place of
the default rigid stage. The README's measurements of the default affine stage and of ``ct-mr-head`` at 1 mm:

    python benchmarks/capture_range.py --spacing 1 --angles 0,20,30,45 --translation 10,-8,0 \
        --initializers geometry --seed 0 --contrast ct --preset ct-mr-head
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

# Runs from a source checkout without installing the package.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def random_rotations(count: int, seed: int, max_shift_mm: float = 10.0) -> list[tuple[list[float], list[float]]]:
    """``count`` (Euler angles about x, y, z in degrees, translation in mm) pairs.

    The rotations are uniform over all orientations (a normalised 4D Gaussian is a uniform unit
    quaternion), written as the angles ``rigid_case`` takes (ITK's Euler3DTransform convention);
    the translations are uniform in a ball of radius ``max_shift_mm``.
    """
    import numpy as np
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(count):
        w, x, y, z = rng.normal(size=4)
        norm = math.sqrt(w * w + x * x + y * y + z * z)
        w, x, y, z = w / norm, x / norm, y / norm, z / norm
        matrix = [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
                  2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
                  2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]
        euler = sitk.Euler3DTransform()
        euler.SetMatrix(matrix)
        angles = [math.degrees(a) for a in (euler.GetAngleX(), euler.GetAngleY(), euler.GetAngleZ())]
        direction = rng.normal(size=3)
        shift = direction / np.linalg.norm(direction) * max_shift_mm * rng.random() ** (1.0 / 3.0)
        cases.append((angles, [float(t) for t in shift]))
    return cases


def _register_each(case, inits: list[str], args: argparse.Namespace, row: dict) -> list[str]:
    """Register ``case`` from each initializer: fills ``row[init]`` (TRE, seconds, warnings), returns the cells."""
    from MultimodalFusionLib.registration import register

    stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    cells = []
    for init in inits:
        t0 = time.perf_counter()
        result = register(case.fixed, case.moving, seed=args.seed, initializer=init, preset=args.preset,
                          stages=stages)
        seconds = time.perf_counter() - t0
        tre = case.error(result.transform)["mean"]
        row[init] = {"tre_mm": tre, "seconds": seconds, "warnings": result.warnings}
        cells.append(f"{tre:.2f} ({seconds:.1f})")
    return cells


def _case(args: argparse.Namespace, tissues: dict, angles: list[float], shift: list[float]):
    """The known-answer pair of one row: ``angles`` (degrees about x, y, z) and ``shift`` (mm)."""
    from MultimodalFusionLib.registration.accuracy import rigid_case

    return rigid_case(spacing_mm=args.spacing, tissues=tissues, angles_deg=angles, translation=shift,
                      contrast=args.contrast)


def _settings(args: argparse.Namespace) -> str:
    stages = args.stages or ("the preset's" if args.preset else "rigid (the default)")
    return f"T1 vs synthetic {args.contrast.upper()}, preset {args.preset or '(none)'}, stages {stages}"


def _settings_json(args: argparse.Namespace) -> dict:
    """What the JSON file records of the settings (None: the default), besides spacing and seeds."""
    return {"contrast": args.contrast, "preset": args.preset, "stages": args.stages}


def _run_random(args: argparse.Namespace, inits: list[str], tissues: dict) -> list[dict]:
    from MultimodalFusionLib.registration.accuracy import rotation_angle_deg

    print(f"MNI152 at {args.spacing:g} mm, {args.random} random rotations (generator seed {args.random_seed}), "
          f"shifts up to 10 mm, registration seed {args.seed}, {_settings(args)}")
    print("| case | Euler x, y, z (deg) | rotation (deg) | " + " | ".join(f"{i}: TRE mm (s)" for i in inits) + " |")
    print("|" + "---|" * (3 + len(inits)))
    rows = []
    for k, (angles, shift) in enumerate(random_rotations(args.random, args.random_seed)):
        case = _case(args, tissues, angles, shift)
        row: dict = {"case": k, "angles_deg": angles, "translation": shift,
                     "rotation_deg": rotation_angle_deg(case.truth)}
        cells = _register_each(case, inits, args, row)
        rows.append(row)
        print(f"| {k} | {', '.join(f'{a:.0f}' for a in angles)} | {row['rotation_deg']:.0f} | "
              + " | ".join(cells) + " |", flush=True)
    summary = []
    for init in inits:
        tres = [r[init]["tre_mm"] for r in rows]
        secs = [r[init]["seconds"] for r in rows]
        within = sum(t < 1.0 for t in tres)
        summary.append(f"{init}: {within}/{len(rows)} within 1 mm (worst {max(tres):.2f} mm, "
                       f"{min(secs):.1f}-{max(secs):.1f} s)")
    print("summary: " + "; ".join(summary))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spacing", type=float, default=3.0, help="voxel size of the MNI pair in mm (default 3)")
    p.add_argument("--angles", default="0,30,45,60,90,120,180", help="rotation angles in degrees")
    p.add_argument("--axes", default="x,y,z", help="rotation axes (x: left-right, y: front-back, z: vertical)")
    p.add_argument("--translation", default="3,0,4", help="translation in mm (default 3,0,4)")
    p.add_argument("--initializers", default="geometry,search", help="initializers to compare")
    p.add_argument("--seed", type=int, default=0, help="registration sampling seed")
    p.add_argument("--random", type=int, default=0, metavar="N",
                   help="N random rotations about several axes at once instead of the single-axis table")
    p.add_argument("--random-seed", type=int, default=1, help="generator seed of --random (default 1)")
    p.add_argument("--contrast", default="t2", help="synthetic contrast of the moving image (t2, pd, flair, ct, pet)")
    p.add_argument("--preset", help="registration preset name or JSON file (default: the default rigid stage)")
    p.add_argument("--stages", help="stages to run, e.g. affine or rigid,affine (default: the preset's)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)

    from MultimodalFusionLib import data

    tissues = data.mni152(spacing_mm=args.spacing)
    inits = [s.strip() for s in args.initializers.split(",") if s.strip()]
    axes = [a.strip() for a in args.axes.split(",") if a.strip()]
    if args.random:
        rows = _run_random(args, inits, tissues)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump({"spacing_mm": args.spacing, "random": args.random, "random_seed": args.random_seed,
                           "seed": args.seed, **_settings_json(args), "rows": rows}, f, indent=1)
        return 0
    rows = []
    header = "| axis | angle (deg) | " + " | ".join(f"{i}: TRE mm (s)" for i in inits) + " |"
    print(f"MNI152 at {args.spacing:g} mm, translation {args.translation} mm, seed {args.seed}, {_settings(args)}")
    print(header)
    print("|" + "---|" * (2 + len(inits)))
    for axis in axes:
        for angle in _floats(args.angles):
            angles = [0.0, 0.0, 0.0]
            angles["xyz".index(axis)] = angle
            case = _case(args, tissues, angles, _floats(args.translation))
            row = {"axis": axis, "angle_deg": angle}
            cells = _register_each(case, inits, args, row)
            rows.append(row)
            print(f"| {axis} | {angle:g} | " + " | ".join(cells) + " |", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"spacing_mm": args.spacing, "translation": _floats(args.translation), "seed": args.seed,
                       **_settings_json(args), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
