"""Deep fusion of a thick-slice volume stored with its thick axis along x: sliced across x vs along z.

Usage::

    python benchmarks/deep_fusion_slice_axis.py [--threads 2] [--thickness 5] [--repeat 3]

Data: MNI152 T1 and a synthetic PET-like contrast (nilearn's template, no download) on a sagittal
thick-slice grid: ``--thickness`` mm along x, 1 mm along y and z (as a 2D sagittal acquisition is
stored). The shipped 2D weights fuse it through ``fusion.fuse`` (hard selection, what ``mmfusion
fuse --method deep`` runs), which slices it across its thick axis (the acquired sagittal slices), and
through the same scaling with the old slicing along the array's first axis (z: axial cuts across
the 5 mm slices). Prints the time of each (median), how many head voxels differ, the fusion metrics of both
scored on the acquired (sagittal) slices and on axial cuts, the metrics the library scores for the
images as stored (``metrics.fusion_metrics``: the acquired slices), and checks that the same voxels
stored with the thick axis as z fuse to the same volume.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

# The checkout this script lies in comes first, installed or not, so that it is the one measured.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from MultimodalFusionLib import data  # noqa: E402


def _thick_x(image: sitk.Image, thickness: float) -> sitk.Image:
    """``image`` resampled to ``thickness`` mm along x (linear; a thick slice's average is not modelled)."""
    spacing = (thickness, 1.0, 1.0)
    size = [int(round(n * s / t)) for n, s, t in zip(image.GetSize(), image.GetSpacing(), spacing)]
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
                         image.GetDirection(), 0.0, sitk.sitkFloat32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--thickness", type=float, default=5.0, help="slice thickness along x in mm (default 5)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each; the median is printed")
    args = parser.parse_args(argv)

    import torch

    from MultimodalFusionLib import fusion, metrics
    from MultimodalFusionLib.fusion.deep import fuse_arrays

    torch.set_num_threads(args.threads)
    tissues = data.mni152(spacing_mm=1.0)
    a = _thick_x(tissues["t1"], args.thickness)
    b = _thick_x(data.synthetic_contrast(tissues, "pet"), args.thickness)
    head = sitk.GetArrayFromImage(_thick_x(tissues["head_mask"], args.thickness)) > 0.5
    print(f"volume {a.GetSize()} voxels (x, y, z), spacing {a.GetSpacing()} mm")
    fusion.fuse(a, b, "deep")  # load torch, MONAI and the weights once, outside the timings

    times: dict[str, list[float]] = {"new": [], "old": []}
    for _ in range(args.repeat):  # alternately, so that load from other jobs hits both alike
        t = time.perf_counter()
        new = fusion.fuse(a, b, "deep")
        times["new"].append(time.perf_counter() - t)
        # the old slicing, with fusion.fuse's scaling and its 0..255 display scale
        t = time.perf_counter()
        old_fused, _, _ = fuse_arrays(fusion.to_unit(a), fusion.to_unit(b))
        times["old"].append(time.perf_counter() - t)
    t_new, t_old = (float(np.median(times[k])) for k in ("new", "old"))
    new_arr = sitk.GetArrayFromImage(new.image)
    old_arr = (old_fused * 255.0).astype(np.float32)
    differ = np.abs(new_arr - old_arr) > 0.5
    print(f"sliced along {new.parameters['slice_axis']}: {t_new:.2f} s; along z (before): {t_old:.2f} s "
          f"(median of {args.repeat})")
    print(f"head voxels that differ: {int(differ[head].sum())} of {int(head.sum())} "
          f"({100.0 * differ[head].mean():.1f} %)")
    a_arr, b_arr = sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b)
    x_first = (2, 0, 1)  # the acquired sagittal slices as the first axis, which the metrics slice along
    for plane, order in (("sagittal (acquired)", x_first), ("axial (cuts)", (0, 1, 2))):
        rows = {name: metrics.fusion_metrics(f.transpose(order), a_arr.transpose(order), b_arr.transpose(order))
                for name, f in (("across x", new_arr), ("along z", old_arr))}
        for name, row in rows.items():
            print(f"  {plane:20s} {name:9s} " + "  ".join(f"{k} {row[k]:.3f}" for k in ("Qabf", "VIF", "SSIM", "SF")))
    # what the library scores for the images as stored (mmfusion fuse --report, run, evaluate): the acquired
    # slices
    row = metrics.fusion_metrics(new, a, b)
    print(f"  fusion_metrics(fused, a, b) as stored, slices along {metrics.scored_slice_axis(a)}: "
          + "  ".join(f"{k} {row[k]:.3f}" for k in ("Qabf", "VIF", "SSIM", "SF")))
    # the same voxels stored with the thick axis as z fuse to the same volume
    stored_z = [sitk.GetImageFromArray(np.ascontiguousarray(sitk.GetArrayFromImage(im).transpose(x_first)))
                for im in (a, b)]
    for im in stored_z:
        im.SetSpacing((1.0, 1.0, args.thickness))
    as_z = sitk.GetArrayFromImage(fusion.fuse(*stored_z, "deep").image)
    print(f"stored with the thick axis as z: max difference {float(np.abs(as_z - new_arr.transpose(x_first)).max()):g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
