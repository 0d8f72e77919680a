"""The demo: the main job on data that ships with the project or an installed package.

Steps (each a function of a :class:`DemoContext`, run in order by :func:`run_demo`):

1. ``itk_2d``: ITK's classic multimodal case (T1 slice vs a PD slice rotated by 10 degrees
   and shifted by (13, 17) pixels), rigid registration, error against the known answer.
2. ``mni_3d``: the MNI152 T1 template (carried by nilearn) vs a synthetic T2-like contrast
   moved by a known rigid transform (8 degrees about left-right, (3, 0, 4) mm), rigid
   registration, target registration error over the brain.

Later steps (fusion, report) append themselves to ``DEMO_STEPS`` and read what earlier
steps left in ``context.images`` / ``context.results``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Callable

import SimpleITK as sitk

from .errors import InputError
from .progress import ProgressCallback, report, scaled

__all__ = ["run_demo", "DemoContext", "DEMO_STEPS", "format_summary"]


@dataclasses.dataclass
class DemoContext:
    """What the demo steps share.

    Attributes:
        output_dir: root output folder; each step writes into its own sub-folder.
        progress: the step's progress callback (already scaled to its share).
        images: named images left by earlier steps (e.g. "mni_fixed", "mni_moving_resampled").
        transforms: named transforms left by earlier steps (e.g. "mni_3d", the registration that resampled
            "mni_moving_resampled").
        results: each finished step's summary dict, by step name.
        spacing_mm: voxel size of the 3D case.
    """

    output_dir: str
    progress: ProgressCallback | None = None
    images: dict[str, sitk.Image] = dataclasses.field(default_factory=dict)
    transforms: dict[str, sitk.Transform] = dataclasses.field(default_factory=dict)
    results: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    spacing_mm: float = 1.0


def _step_itk_2d(ctx: DemoContext) -> dict[str, Any]:
    from .registration import register
    from .registration.accuracy import (
        itk_brainweb_pair,
        itk_brainweb_truth,
        rotation_angle_deg,
        transform_error,
    )
    from .registration.outputs import save_registration_outputs

    out = os.path.join(ctx.output_dir, "itk_2d")
    fixed, moving = itk_brainweb_pair()
    result = register(fixed, moving, preset="t1-t2-brain", seed=0, progress=ctx.progress)
    truth = itk_brainweb_truth(fixed)
    err = transform_error(result.transform, truth, fixed)
    angle = rotation_angle_deg(result.transform)
    summary = {
        "case": "ITK BrainWeb T1 slice vs PD slice rotated 10 deg and shifted (13, 17) px",
        "angle_deg": angle, "angle_error_deg": abs(angle - 10.0),
        "mean_error_px": err["mean"], "max_error_px": err["max"],
        "error_before_px": transform_error(sitk.Euler2DTransform(), truth, fixed)["mean"],
        "seconds": result.seconds,
    }
    save_registration_outputs(result, fixed, moving, out, extra={"known_answer": summary})
    ctx.images["itk_fixed"] = fixed
    summary["output_dir"] = out
    return summary


def _step_mni_3d(ctx: DemoContext) -> dict[str, Any]:
    from . import io
    from .preprocess import resample
    from .progress import report as _report
    from .registration import register
    from .registration.accuracy import rigid_case
    from .registration.outputs import save_registration_outputs

    out = os.path.join(ctx.output_dir, "mni_3d")
    _report(ctx.progress, 0.0, "building the 3D case (MNI152 T1, synthetic T2)")
    case = rigid_case(spacing_mm=ctx.spacing_mm)
    before = case.error_before()
    result = register(case.fixed, case.moving, preset="t1-t2-brain", seed=0,
                      progress=scaled(ctx.progress, 0.2, 1.0))
    tre = case.error(result.transform)
    summary = {"case": case.description, "tre_before_mm": before["mean"], "tre_mean_mm": tre["mean"],
               "tre_max_mm": tre["max"], "seconds": result.seconds}
    io.make_output_dir(out)
    io.write_image(case.fixed, os.path.join(out, "fixed_t1.nii.gz"))
    io.write_image(case.moving, os.path.join(out, "moving_t2.nii.gz"))
    io.write_transform(case.truth, os.path.join(out, "true_transform.tfm"))
    save_registration_outputs(result, case.fixed, case.moving, out, extra={"known_answer": summary})
    ctx.images.update({"mni_fixed": case.fixed, "mni_moving": case.moving, "mni_brain_mask": case.mask,
                       "mni_moving_resampled": resample(case.moving, case.fixed, result.transform)})
    ctx.transforms["mni_3d"] = result.transform
    summary["output_dir"] = out
    return summary


#: The demo's steps, in order: (name, share of the progress bar, function). Other areas append theirs.
DEMO_STEPS: list[tuple[str, float, Callable[[DemoContext], dict[str, Any]]]] = [
    ("itk_2d", 0.15, _step_itk_2d),
    ("mni_3d", 0.85, _step_mni_3d),
]


def _step_fusion(ctx: DemoContext) -> dict[str, Any]:
    """Fuse the registered 3D pair (overlay, wavelet and, with torch installed, deep), evaluate, and
    write the HTML report (the deep row with its weight map: which image each voxel comes from)."""
    from . import fusion, metrics
    from .pipeline import fuse_and_evaluate
    from .report import write_report

    if "mni_fixed" not in ctx.images or "mni_moving_resampled" not in ctx.images or "mni_3d" not in ctx.transforms:
        return {"skipped": "needs the mni_3d step"}
    out = os.path.join(ctx.output_dir, "fusion")
    fixed, registered = ctx.images["mni_fixed"], ctx.images["mni_moving_resampled"]
    methods = tuple(m for m in ("overlay", "wavelet", "deep") if m in fusion.list_methods())
    load_seconds = None
    if "deep" in methods:
        # torch, MONAI and the weights load once per process (seconds): done first, on a small image,
        # so the report's time for deep is that of the fusion, comparable with the other methods'
        t0 = time.perf_counter()
        # at most 16 x 16 x 4 voxels, within the image: a coarse --spacing (12 mm: 13 voxels across) had asked
        # for a region outside it, a RuntimeError traceback from ITK
        size = [min(n, s) for n, s in zip((16, 16, 4), fixed.GetSize())]
        tiny = sitk.RegionOfInterest(fixed, size, [(s - n) // 2 for n, s in zip(size, fixed.GetSize())])
        fusion.fuse(tiny, tiny, "deep")
        load_seconds = time.perf_counter() - t0
    fusions, table = fuse_and_evaluate(fixed, registered, methods, progress=scaled(ctx.progress, 0.0, 0.8),
                                       method_params={"overlay": {"colormap": "hot"}})
    mask = ctx.images.get("mni_brain_mask")
    # each over the brain voxels the moving image reaches as it lies and through the registration
    reg_metrics = metrics.alignment_before_after(fixed, ctx.images["mni_moving"], ctx.transforms["mni_3d"], mask,
                                                 after=registered)
    r3 = ctx.results.get("mni_3d", {})
    notes = ["MNI152 T1 (fixed) with the synthetic T2-like image registered onto it by the mni_3d step"]
    if load_seconds is not None:
        notes.append(f"deep: shipped 2D weights, slice by slice; its time excludes loading torch, MONAI and the "
                     f"weights once per process ({load_seconds:.1f} s here)")
    if "tre_mean_mm" in r3:
        notes.append(f"known-answer target registration error over the brain: {r3['tre_before_mm']:.2f} mm before, "
                     f"{r3['tre_mean_mm']:.3f} mm after (registration {r3['seconds']:.1f} s)")
    report(ctx.progress, 0.85, "writing the fusion report")
    paths = write_report(out, inputs={"MR T1 (fixed)": fixed, "T2-like (registered)": registered}, fusions=fusions,
                         metrics=table, registration_metrics=reg_metrics, title="MultimodalFusion demo: 3D fusion",
                         notes=notes)
    summary: dict[str, Any] = {"methods": ", ".join(methods), "report": paths["html"]}
    for method, values in table.items():
        summary[f"{method}_SSIM"] = values["SSIM"]
        summary[f"{method}_MI"] = values["MI"]
    summary["seconds"] = sum(f.seconds for f in fusions)
    if load_seconds is not None:
        summary["deep_load_seconds"] = load_seconds
    return summary


DEMO_STEPS.append(("fusion", 0.1, _step_fusion))


#: The voxel sizes (mm) the demo's 3D case is built at: the template is 1 mm, finer adds no detail (and memory:
#: 5.7 GB at 0.5 mm); at 20 mm the case is 8x10x10 voxels, the fewest its registration and metrics work on.
MIN_SPACING_MM = 0.5
MAX_SPACING_MM = 20.0


def run_demo(output_dir: str | os.PathLike = "demo-output", progress: ProgressCallback | None = None,
             spacing_mm: float = 1.0, steps: list[str] | None = None) -> dict[str, Any]:
    """Run the demo steps, write their outputs under ``output_dir`` and return their summaries.

    Args:
        output_dir: output folder (created).
        progress: ``progress(fraction, message)``; returning False cancels.
        spacing_mm: voxel size of the 3D case (1 mm: the reference 160x192x192 pair), from
            :data:`MIN_SPACING_MM` to :data:`MAX_SPACING_MM`.
        steps: run only these step names (default: all of ``DEMO_STEPS``).

    Returns:
        dict step name -> summary (errors against the known answers, timings, output folders),
        also written to ``output_dir/summary.json``.
    """
    from .io import make_output_dir, write_json

    if not (isinstance(spacing_mm, (int, float)) and math.isfinite(spacing_mm) and spacing_mm > 0):
        # 0, negative or NaN reached numpy's int() or ITK's smoothing as a traceback
        raise InputError(f"The demo's voxel size {spacing_mm} mm is not a positive number.",
                         "Give --spacing 1 (the reference 160x192x192 pair) or another positive size, e.g. 3.")
    if not MIN_SPACING_MM <= spacing_mm <= MAX_SPACING_MM:
        # finer, the 3D case alone outgrew the memory (0.5 mm: 320x384x384, 5.7 GB at its peak, 120 bytes a voxel;
        # 0.1 mm ended after 2 minutes in ITK's "Failed to allocate memory" traceback); coarser, its slices are
        # smaller than the fusion metrics' 7-voxel SSIM window (30 mm: 6 x 5)
        raise InputError(f"The demo's voxel size {spacing_mm:g} mm is outside {MIN_SPACING_MM:g}..{MAX_SPACING_MM:g} "
                         f"mm: the 3D case (the 1 mm MNI152 template, 160x192x192) would be "
                         + ("too large to build (it grows with the cube of 1/spacing: 320x384x384 voxels and 5.7 GB "
                                                     "at 0.5 mm)." if spacing_mm < MIN_SPACING_MM
                            else "too small to register and score (fewer than 8 voxels along an axis)."),
                         f"Give --spacing between {MIN_SPACING_MM:g} and {MAX_SPACING_MM:g}: 1 (the reference pair), "
                         "or 3 for a quick run.")
    output_dir = os.fspath(output_dir)
    make_output_dir(output_dir)
    ctx = DemoContext(output_dir=output_dir, spacing_mm=spacing_mm)
    chosen = [s for s in DEMO_STEPS if steps is None or s[0] in steps]
    total = sum(share for _, share, _ in chosen) or 1.0
    done = 0.0
    t0 = time.perf_counter()
    for name, share, func in chosen:
        start, end = done / total, (done + share) / total
        report(progress, start, f"demo: {name}")
        ctx.progress = scaled(progress, start, end)
        ctx.results[name] = func(ctx)
        done += share
    report(progress, 1.0, "demo done")
    ctx.results["total_seconds"] = time.perf_counter() - t0  # type: ignore[assignment]
    write_json(os.path.join(output_dir, "summary.json"), ctx.results)
    return ctx.results


def format_summary(results: dict[str, Any]) -> str:
    """Human-readable lines of the demo's results."""
    lines = []
    r2 = results.get("itk_2d")
    if r2:
        lines.append(f"2D ITK T1/PD slices: rotation {r2['angle_deg']:.2f} deg (truth 10, error "
                     f"{r2['angle_error_deg']:.2f} deg), mean error {r2['error_before_px']:.1f} px -> "
                     f"{r2['mean_error_px']:.2f} px, {r2['seconds']:.1f} s  [{r2['output_dir']}]")
    r3 = results.get("mni_3d")
    if r3:
        lines.append(f"3D MNI152 T1 vs synthetic T2: mean TRE over the brain {r3['tre_before_mm']:.2f} mm -> "
                     f"{r3['tre_mean_mm']:.3f} mm (max {r3['tre_max_mm']:.3f} mm), {r3['seconds']:.1f} s  "
                     f"[{r3['output_dir']}]")
    for name, r in results.items():
        if name not in ("itk_2d", "mni_3d", "total_seconds") and isinstance(r, dict):
            lines.append(f"{name}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                                  for k, v in r.items() if not isinstance(v, (dict, list))))
    if "total_seconds" in results:
        lines.append(f"total {results['total_seconds']:.1f} s")
    return "\n".join(lines)
