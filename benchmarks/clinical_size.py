"""Fusion and registration QC on clinical-size volumes: wall time and memory per step.

Usage::

    python benchmarks/clinical_size.py [--methods average,max,pca,wavelet,laplacian,overlay] [--scale 1.0]
                                       [--evaluate 1,auto]

Data (no download): nilearn's MNI152 tissue maps turned into a CT-like and a PET-like contrast
(``MultimodalFusionLib.data``), resampled to a head CT grid of 512x512x200 at 0.7x0.7x1.5 mm
(int16 HU) and the PET onto that grid (float32), i.e. the pair ``mmfusion fuse`` sees after
registration and resampling. ``--scale 0.5`` halves every side for a quick look.

Per step: wall seconds, numpy's peak allocation during the step (tracemalloc, MB; SimpleITK's own
buffers are not in it) and the process's peak resident memory so far (MB).

``--evaluate 1,auto`` then scores the average fusion with ``metrics.fusion_metrics`` (what
``mmfusion evaluate`` and ``fuse --report`` compute) once per worker count: 1 is the serial loop over
the slices, ``auto`` the default (the CPUs available, at most ``OMP_NUM_THREADS``); the rows must
give the same numbers, which is checked (to the last bit) and printed. ``--evaluate ""`` skips it.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import SimpleITK as sitk

try:
    from MultimodalFusionLib import data
except ImportError:  # a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from MultimodalFusionLib import data


def ct_pet_pair(scale: float = 1.0) -> tuple[sitk.Image, sitk.Image]:
    tissues = data.mni152(1.0, shape=None)
    t1 = tissues["t1"]
    ct = data.synthetic_contrast(tissues, "ct", noise=0.005)
    pet = data.synthetic_contrast(tissues, "pet")
    size = [max(8, int(round(n * scale))) for n in (512, 512, 200)]
    spacing = [s / scale for s in (0.7, 0.7, 1.5)]
    centre = np.array(t1.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in t1.GetSize()]))
    direction = np.array(t1.GetDirection()).reshape(3, 3)
    origin = centre - direction @ ((np.array(size) - 1) * np.array(spacing) / 2)

    def on_grid(image: sitk.Image, default: float, pixel: int) -> sitk.Image:
        return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, origin.tolist(), spacing,
                             t1.GetDirection(), default, pixel)

    return on_grid(ct, -1000.0, sitk.sitkInt16), on_grid(pet, 0.0, sitk.sitkFloat32)


def _measure(func):
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        out = func()
        seconds = time.perf_counter() - t0
        numpy_peak = tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out, seconds, numpy_peak, rss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="average,max,pca,wavelet,laplacian,overlay")
    parser.add_argument("--scale", type=float, default=1.0, help="side scale of the 512x512x200 grid")
    parser.add_argument("--evaluate", default="1,auto",
                        help="worker counts for the metrics of the average fusion (default 1,auto; '' skips)")
    args = parser.parse_args(argv)

    from MultimodalFusionLib import fusion, metrics
    from MultimodalFusionLib.registration import qc

    ct, pet = ct_pet_pair(args.scale)
    inputs_mb = (ct.GetNumberOfPixels() * 2 + pet.GetNumberOfPixels() * 4) / 2**20
    print(f"CT {ct.GetSize()} int16 + PET on its grid float32: {inputs_mb:.0f} MB of input")
    print(f"{'step':32s} {'wall s':>8s} {'numpy peak MB':>14s} {'process peak MB':>16s}")
    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        res, seconds, numpy_peak, rss = _measure(lambda m=method: fusion.fuse(ct, pet, m))
        print(f"{'fuse ' + method:32s} {seconds:8.1f} {numpy_peak:14.0f} {rss:16.0f}", flush=True)
        del res
    with __import__("tempfile").TemporaryDirectory() as tmp:
        _, seconds, numpy_peak, rss = _measure(
            lambda: qc.write_checkerboard_png(ct, pet, pet, Path(tmp) / "checkerboard.png"))
    print(f"{'register: checkerboard.png':32s} {seconds:8.1f} {numpy_peak:14.0f} {rss:16.0f}")
    counts = [c.strip() for c in args.evaluate.split(",") if c.strip()]
    if counts:
        fused = fusion.fuse(ct, pet, "average")
        metrics.fusion_metrics(np.ones((8, 8)), np.ones((8, 8)), np.ones((8, 8)))  # imports scipy before timing
        first = None
        for count in counts:
            workers = None if count == "auto" else int(count)
            values, seconds, numpy_peak, rss = _measure(lambda w=workers: metrics.fusion_metrics(fused, ct, pet,
                                                                                                 workers=w))
            # (a pool only for volumes with >= metrics.PARALLEL_MIN_PIXELS pixels in the slices scored)
            label = f"evaluate, workers {count} ({metrics.metric_workers(workers)})"
            print(f"{label:32s} {seconds:8.1f} {numpy_peak:14.0f} {rss:16.0f}", flush=True)
            first = first or values
            if list(values) != list(first) or any(np.float64(values[k]).tobytes() != np.float64(first[k]).tobytes()
                                                  for k in first):
                raise SystemExit(f"evaluate with {count} worker(s) gave other numbers than {counts[0]}")
        print("evaluate: identical numbers for every worker count: "
              + ", ".join(f"{k} {first[k]:.6g}" for k in metrics.FUSION_METRICS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
