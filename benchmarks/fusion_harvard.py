"""Fusion quality on the Harvard Whole Brain Atlas pairs, beside CDDFuse's published numbers.

Usage::

    python benchmarks/fusion_harvard.py --data /path/to/harvard_fusion_pairs [--methods average,wavelet]
                                        [--deep-adapt N] [--scaling cddfuse|none] [--max-pairs N]
                                        [--json results.json]

``--data`` is a folder laid out like CDDFuse's ``test_img``: ``MRI_CT/{MRI,CT}``,
``MRI_PET/{MRI,PET}``, ``MRI_SPECT/{MRI,SPECT}``, same-named 256x256 PNGs forming pre-aligned
pairs, PET/SPECT in pseudo-colour. Every method of ``fusion.list_methods()`` runs (so "deep"
shows once it is installed and registered), or those named by ``--methods``. ``--deep-adapt N`` adds
a row ``deep+adaptN``: the shipped weights fine-tuned for N steps on each pair (per-study
adaptation, hard selection, seed 0).

How the numbers are computed (the way CDDFuse's ``test_MIF.py`` and ``utils/Evaluator.py`` compute
its Table 5): images read as 8-bit grey (rounded BT.601 luminance, as OpenCV's grey conversion) and
fused as such (the ``overlay`` row blends the PET/SPECT slice's own colours over the MRI and is
scored by their luminance); every fused image is min-max stretched to 0..255 and rounded,
as ``test_MIF.py`` does to CDDFuse's output before saving it (``--scaling none`` scores the fused
image as the method returns it); the metrics compare that 8-bit grey image with the MRI and the
functional image's Y; MI in nats; SSIM and VIF sums over both sources. The published
row is CDDFuse's mean over the FULL test sets (21/42/73 pairs); a folder with fewer pairs
(e.g. the first six) gives means over those only, so compare with that in mind.
Two reference rows per set score each source as if it were the fused image ("MRI alone", "CT alone"...):
not fusion methods, never counted as classic rivals in the goal check; they show how far the pairs
themselves go on each metric.
Runtime: seconds per slice for the fusion alone (CPU here unless a method uses a GPU).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

# The checkout this script lies in comes first, installed or not: an installed copy of another checkout
# (pip install -e elsewhere) would otherwise be the one measured, without a word.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_machine
from MultimodalFusionLib import fusion, io, metrics  # noqa: E402

#: CDDFuse (CVPR 2023) README "Table 5", means over the full test sets.
CDDFUSE_PUBLISHED = {
    "MRI_CT": {"EN": 4.88, "SD": 79.17, "SF": 38.14, "MI": 2.61, "SCD": 1.41, "VIF": 0.61, "Qabf": 0.68, "SSIM": 1.34},
    "MRI_PET": {"EN": 4.22, "SD": 70.73, "SF": 29.57, "MI": 2.03, "SCD": 1.69, "VIF": 0.71, "Qabf": 0.71, "SSIM": 1.49},
    "MRI_SPECT": {"EN": 3.90, "SD": 58.31, "SF": 20.87, "MI": 2.49, "SCD": 1.35, "VIF": 0.97, "Qabf": 0.78,
                  "SSIM": 1.48},
}
SETS = {"MRI_CT": "CT", "MRI_PET": "PET", "MRI_SPECT": "SPECT"}
KEYS = metrics.FUSION_METRICS


def _pairs(root: Path, name: str, functional: str, limit: int | None) -> list[tuple[Path, Path]]:
    mri_dir, fun_dir = root / name / "MRI", root / name / functional
    if not mri_dir.is_dir() or not fun_dir.is_dir():
        return []
    names = sorted(p.name for p in mri_dir.glob("*.png") if (fun_dir / p.name).exists())
    names = names[:limit] if limit else names
    return [(mri_dir / n, fun_dir / n) for n in names]


def _method_call(method: str) -> tuple[str, dict]:
    """A table row's fusion method and parameters: ``deep+adaptN`` is ``deep`` with N adaptation steps."""
    if method.startswith("deep+adapt"):
        return "deep", {"adapt_steps": int(method[len("deep+adapt"):]), "seed": 0}
    return method, {}


def cddfuse_saved(fused: np.ndarray) -> np.ndarray:
    """A fused grey image as CDDFuse's ``test_MIF.py`` scores its own output: min-max stretched to
    0..255 and rounded (it normalises the network output to 0..1 and saves ``255 * F`` as a PNG)."""
    f = np.asarray(fused, dtype=np.float64)
    lo, hi = float(f.min()), float(f.max())
    return np.round((f - lo) / (hi - lo) * 255.0) if hi > lo else np.zeros_like(f)


def source_rows(pairs: list[tuple[Path, Path]], functional: str, scaling: str = "cddfuse") -> dict:
    """Reference rows that are not fusion methods: each source image scored as if it were the fused image
    (8-bit grey, stretched like every row). They show what the pairs themselves hold: a metric no source
    reaches must come from contrast a method adds, and a metric the MRI alone tops rewards copying it."""
    rows = {"MRI alone": [], f"{functional} alone": []}
    for mri_path, fun_path in pairs:
        # uint8, so the metrics keep the sources' grey levels (a float array would be min-max scaled)
        a = metrics.to_8bit(io.read_image(mri_path, keep_color=True)).astype(np.uint8)
        b = metrics.to_8bit(io.read_image(fun_path, keep_color=True)).astype(np.uint8)
        for label, src in zip(rows, (a, b)):
            f = cddfuse_saved(src) if scaling == "cddfuse" else src
            rows[label].append(metrics.fusion_metrics(f, a, b))
    # SCD is undefined for a source (F - A is constant when F is A): None, printed n/a
    means = {label: {k: float(np.mean([v[k] for v in vals])) for k in KEYS} for label, vals in rows.items()}
    return {label: {k: (x if math.isfinite(x) else None) for k, x in m.items()} for label, m in means.items()}


def _grey8_image(image: sitk.Image) -> sitk.Image:
    """A colour slice as OpenCV's grey conversion reads it (rounded BT.601 luminance, 8-bit); grey as is."""
    if image.GetNumberOfComponentsPerPixel() == 1:
        return image
    grey = sitk.GetImageFromArray(metrics.to_8bit(image).astype(np.uint8))
    grey.CopyInformation(image)
    return grey


def run_set(root: Path, name: str, methods: list[str], limit: int | None, scaling: str = "cddfuse") -> dict:
    """Mean metrics and runtime per method over one pair set; ``scaling="cddfuse"`` stretches every fused
    image as :func:`cddfuse_saved`, ``"none"`` scores it as the method returns it."""
    pairs = _pairs(root, name, SETS[name], limit)
    if not pairs:
        return {}
    sums: dict[str, dict[str, float]] = {m: {k: 0.0 for k in KEYS} for m in methods}
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    errors: dict[str, str] = {}
    for mri_path, fun_path in pairs:
        a = io.read_image(mri_path, keep_color=True)
        b = io.read_image(fun_path, keep_color=True)
        b_grey = _grey8_image(b)
        for m in methods:
            if m in errors:
                continue
            try:
                t0 = time.perf_counter()
                method, params = _method_call(m)
                # test_MIF.py reads PET/SPECT as grey and fuses that; the overlay shows b's own colours
                res = fusion.fuse(a, b if method == "overlay" else b_grey, method, **params)
                seconds[m].append(time.perf_counter() - t0)
                print(f"  {name} {mri_path.name} {m}: {seconds[m][-1]:.3f} s", file=sys.stderr, flush=True)
            except Exception as exc:  # report a failing method, keep benchmarking the others
                errors[m] = f"{type(exc).__name__}: {exc}"
                continue
            fused = cddfuse_saved(sitk.GetArrayFromImage(res.grey_image)) if scaling == "cddfuse" else res
            values = metrics.fusion_metrics(fused, a, b)
            for k in KEYS:
                sums[m][k] += values[k]
    out = {"pairs": len(pairs), "methods": {}, "sources": source_rows(pairs, SETS[name], scaling)}
    for m in methods:
        if m in errors:
            out["methods"][m] = {"error": errors[m]}
            continue
        out["methods"][m] = {k: v / len(pairs) for k, v in sums[m].items()}
        out["methods"][m]["seconds_per_slice"] = float(np.median(seconds[m]))
    return out


def markdown_table(name: str, result: dict) -> str:
    lines = [f"**{name.replace('_', '-')}** ({result['pairs']} pairs)", "",
             "| method | " + " | ".join(KEYS) + " | s/slice |",
             "|---" * (len(KEYS) + 2) + "|"]
    for m, vals in result["methods"].items():
        if "error" in vals:
            lines.append(f"| {m} | failed: {vals['error'][:80]} |" + " |" * (len(KEYS)))
            continue
        lines.append(f"| {m} | " + " | ".join(f"{vals[k]:.2f}" for k in KEYS) + f" | {vals['seconds_per_slice']:.3f} |")
    for label, vals in result.get("sources", {}).items():
        lines.append(f"| *{label} (a source, not a fusion)* | " + " | ".join("n/a" if vals[k] is None else f"{vals[k]:.2f}" for k in KEYS)
                     + " | n/a |")
    pub = CDDFUSE_PUBLISHED[name]
    lines.append("| CDDFuse (published, full set) | " + " | ".join(f"{pub[k]:.2f}" for k in KEYS) + " | n/a |")
    return "\n".join(lines)


def goal_check(name: str, result: dict, method: str = "deep") -> str:
    """The deep-fusion goal, checked on one set: metrics where ``method`` is above CDDFuse's published
    row (goal: at least 5 of 8), and whether it is above every classic method (the rows that are not
    deep fusion) on Qabf and VIF."""
    vals = result["methods"].get(method)
    if not vals or "error" in vals:
        return f"goal check ({name}): '{method}' did not run"
    pub = CDDFUSE_PUBLISHED[name]
    above = [k for k in KEYS if vals[k] > pub[k]]
    lines = [f"goal check ({name.replace('_', '-')}): {method} above CDDFuse's published row on {len(above)}/8 "
             f"({', '.join(above) or 'none'}) -> {'met' if len(above) >= 5 else 'NOT met'} (goal >= 5)"]
    for key in ("Qabf", "VIF"):
        others = {m: v[key] for m, v in result["methods"].items()
                  if not m.startswith("deep") and "error" not in v}
        if not others:
            continue
        best = max(others, key=others.get)
        ok = vals[key] > others[best]
        lines.append(f"  {key}: {method} {vals[key]:.3f} vs best classic {best} {others[best]:.3f} -> "
                     f"{'above' if ok else 'NOT above'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder with MRI_CT, MRI_PET, MRI_SPECT (CDDFuse's test_img layout)")
    parser.add_argument("--methods", help="comma-separated methods (default: every method of fusion.list_methods())")
    parser.add_argument("--deep-adapt", type=int, metavar="N",
                        help="add a row 'deep+adaptN': deep fusion with N per-study adaptation steps per pair")
    parser.add_argument("--scaling", choices=("cddfuse", "none"), default="cddfuse",
                        help="cddfuse (default): min-max stretch every fused image to 0..255 before scoring, as "
                             "CDDFuse's test_MIF.py does to its output; none: score it as the method returns it")
    parser.add_argument("--max-pairs", type=int, help="use at most N pairs per set")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    root = Path(args.data)
    if not root.is_dir():
        parser.error(f"--data {root} is not a folder")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else fusion.list_methods()
    unknown = [m for m in methods if m not in fusion.list_methods() and not re.fullmatch(r"deep\+adapt[1-9]\d*", m)]
    if unknown or not methods:  # a typo would otherwise run the whole benchmark and print "failed" rows
        parser.error(f"--methods {args.methods}: unknown method(s) {unknown}; use a comma-separated list of "
                     f"{', '.join(fusion.list_methods())} (--deep-adapt N adds adapted deep rows)")
    if args.deep_adapt is not None:
        if args.deep_adapt < 1:
            parser.error(f"--deep-adapt {args.deep_adapt}: give a number of adaptation steps of 1 or more")
        methods.append(f"deep+adapt{args.deep_adapt}")
    from bench_machine import describe

    print(f"# Harvard fusion benchmark: {', '.join(methods)}")
    print(f"data: {Path(args.data).resolve()}")
    # deep fusion runs where fusion.fuse puts it (CUDA when torch sees a GPU): its seconds depend on it
    print(describe("auto" if any(m.startswith("deep") for m in methods) else None))
    stretch = ("every fused image min-max stretched to 0..255 as CDDFuse's test_MIF.py does"
               if args.scaling == "cddfuse" else "fused images scored as returned, no stretch (--scaling none)")
    print("metrics: CDDFuse utils/Evaluator.py definitions on 8-bit grey images (colour PET/SPECT read as grey "
          f"and fused so, as test_MIF.py does; overlay: their own colours; {stretch}; MI in nats; SSIM/VIF sums over both sources). Published row: CDDFuse Table 5, "
          "full test sets.\n")
    results = {}
    for name in SETS:
        res = run_set(root, name, methods, args.max_pairs, args.scaling)
        if not res:
            print(f"({name}: no pairs found under {root / name})\n")
            continue
        results[name] = res
        print(markdown_table(name, res))
        print()
        if any(not m.startswith("deep") for m in methods):
            for m in methods:
                if m.startswith("deep"):
                    print(goal_check(name, res, m))
                    print()
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"data": str(root), "methods": methods, "scaling": args.scaling, "results": results,
                       "published": CDDFUSE_PUBLISHED},
                      fh, indent=2)
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
