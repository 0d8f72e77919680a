"""Fusion and registration QC on clinical-size volumes: wall time and memory per step.

Usage::

    python benchmarks/clinical_size.py [--methods average,max,pca,wavelet,laplacian,overlay] [--scale 1.0]
                                       [--evaluate 1,auto]
    python benchmarks/clinical_size.py --methods "" --evaluate "" --register rigid [--seeds 0,1,2]
                                       [--max-samples N|none] [--itk-pyramid]

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

``--register STAGES`` times ``registration.register`` (default parameters, i.e. what ``mmfusion
register`` runs without ``--preset``, with ``--stages STAGES``) of a known-answer pair on that grid:
the CT (fixed) against the PET moved by a rigid transform of (4, -3, 2) degrees and (6, -4, 5) mm
(the 1 mm PET resampled through the inverse onto the CT grid, one interpolation). Per seed it prints
each level's samples, wall seconds (the level's set-up, i.e. pyramid and sample points, plus its
iterations) and CPU seconds, iterations and CPU ms per iteration, the stage's seconds, and the target registration error
(mean / max distance to the true mapping over the 1.8 M voxels of the 1 mm brain mask). What the
engine did before its large-volume changes: ``--max-samples none`` (no cap on the samples per level)
and ``--itk-pyramid`` (ITK's pyramid, which smooths both full-resolution images at every level).
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

# The checkout this script lies in comes first, installed or not, so that it is the one measured.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from MultimodalFusionLib import data  # noqa: E402


def ct_pet_pair(scale: float = 1.0, pet_transform: sitk.Transform | None = None,
                tissues: dict[str, sitk.Image] | None = None) -> tuple[sitk.Image, sitk.Image]:
    """(CT int16, PET float32) on the CT grid; ``pet_transform`` maps CT-grid points into the PET."""
    tissues = tissues or data.mni152(1.0, shape=None)
    t1 = tissues["t1"]
    ct = data.synthetic_contrast(tissues, "ct", noise=0.005)
    pet = data.synthetic_contrast(tissues, "pet")
    size = [max(8, int(round(n * scale))) for n in (512, 512, 200)]
    spacing = [s / scale for s in (0.7, 0.7, 1.5)]
    centre = np.array(t1.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in t1.GetSize()]))
    direction = np.array(t1.GetDirection()).reshape(3, 3)
    origin = centre - direction @ ((np.array(size) - 1) * np.array(spacing) / 2)

    def on_grid(image: sitk.Image, default: float, pixel: int, transform: sitk.Transform | None = None) -> sitk.Image:
        return sitk.Resample(image, size, transform or sitk.Transform(), sitk.sitkLinear, origin.tolist(), spacing,
                             t1.GetDirection(), default, pixel)

    return on_grid(ct, -1000.0, sitk.sitkInt16), on_grid(pet, 0.0, sitk.sitkFloat32, pet_transform)


def register_known_answer(scale: float, stages: str, seeds: list[int], max_samples: str | None,
                          itk_pyramid: bool) -> None:
    """Time default registration of the moved PET to the CT per level and print its error (see the docstring)."""
    import re

    from MultimodalFusionLib.registration import RegistrationParameters, accuracy, register, sitk_backend

    tissues = data.mni152(1.0, shape=None)
    brain = tissues["brain_mask"]
    centre = brain.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in brain.GetSize()])
    truth = accuracy.rigid_transform(centre, (4.0, -3.0, 2.0), (6.0, -4.0, 5.0))
    ct, pet = ct_pet_pair(scale, truth.GetInverse(), tissues)
    params = RegistrationParameters().with_stages(stages.split(","))
    for stage in params.stages:
        if max_samples is not None:
            stage.max_samples = None if max_samples.lower() == "none" else int(max_samples)
    if itk_pyramid:
        sitk_backend.REDUCED_PYRAMID_VOXELS = float("inf")
    before = accuracy.transform_error(sitk.Transform(3, sitk.sitkIdentity), truth, brain, brain)
    print(f"\nregister CT {ct.GetSize()} <- PET moved by {before['mean']:.2f} mm mean ({before['max']:.2f} max) "
          f"over the brain; stages {stages}; max_samples "
          f"{[s.max_samples for s in params.stages]}; {'ITK' if itk_pyramid else 'engine'} pyramid")
    # CPU seconds of the process: with a seed ITK runs on one thread, so they are the wall time of an idle
    # core (wall time on a shared machine also holds other jobs' time); ms/iter is CPU time too
    print(f"{'seed':>4s} {'stage':7s} {'level':>5s} {'samples':>8s} {'wall s':>7s} {'CPU s':>6s} {'iters':>6s} "
          f"{'ms/iter':>8s}")
    for seed in seeds:
        marks: list[tuple[float, float, str, int]] = []

        def progress(fraction: float, message: str, marks: list = marks) -> None:
            found = re.match(r"(\w+): level (\d+)/\d+, iteration", message)
            if found:
                marks.append((time.perf_counter(), time.process_time(), found.group(1), int(found.group(2))))

        t0, c0 = time.perf_counter(), time.process_time()
        result = register(ct, pet, params, seed=seed, progress=progress)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        error = accuracy.transform_error(result.transform, truth, brain, brain)
        level_start, level_cpu = t0, c0
        for index, stage in enumerate(params.stages):
            for level, factor in enumerate(stage.shrink_factors, 1):
                times = [t for t, _, name, lv in marks if name == stage.name and lv == level]
                cpus = [c for _, c, name, lv in marks if name == stage.name and lv == level]
                if not times:
                    continue
                voxels = float(np.prod([max(1, n // factor) for n in ct.GetSize()]))
                pct = sitk_backend._level_percentages(stage, ct, [factor])[0]
                # wall time from the previous level's last iteration: this level's pyramid, sample points
                # and iterations (the first level also holds the initializer and the metric "before")
                print(f"{seed:4d} {stage.name:7s} {level:5d} {int(voxels * pct):8d} {times[-1] - level_start:7.1f} "
                      f"{cpus[-1] - level_cpu:6.1f} {len(times):6d} "
                      f"{1000 * (cpus[-1] - cpus[0]) / max(len(cpus) - 1, 1):8.0f}")
                level_start, level_cpu = times[-1], cpus[-1]
            print(f"{seed:4d} {stage.name:7s} {'all':>5s} {'':8s} {result.stages[index].seconds:7.1f} {'':6s} "
                  f"{result.stages[index].iterations:6d}")
        print(f"{seed:4d} total {seconds:.1f} s wall, {cpu:.1f} s CPU; TRE mean {error['mean']:.3f} mm, median {error['median']:.3f}, "
              f"max {error['max']:.3f}" + (f"; warnings: {result.warnings}" if result.warnings else ""), flush=True)


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
    parser.add_argument("--register", metavar="STAGES", default="",
                        help="time registration of a known-answer pair with these stages, e.g. rigid (default: skip)")
    parser.add_argument("--seeds", default="0", help="registration seeds, comma-separated (default 0)")
    parser.add_argument("--max-samples", help="max_samples of every stage (a number, or none for no cap; "
                                              "default: the engine's)")
    parser.add_argument("--itk-pyramid", action="store_true",
                        help="ITK's full-resolution pyramid at every level (the engine before its large-volume path)")
    args = parser.parse_args(argv)

    from MultimodalFusionLib import fusion, metrics
    from MultimodalFusionLib.registration import qc

    if args.register:
        register_known_answer(args.scale, args.register, [int(x) for x in args.seeds.split(",") if x.strip()],
                              args.max_samples, args.itk_pyramid)
    if not [m for m in args.methods.split(",") if m.strip()] and not args.evaluate.strip():
        return 0
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
