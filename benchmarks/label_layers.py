#!/usr/bin/env python
"""What scoring labels given in layers (overlapping segments) costs against the same labels in one label map.

Ten labels on a ``size``^3 grid (1 mm voxels), fixed and moving (the moving one 3 voxels along x, the
transform taking back 2 of them), scored by ``metrics.evaluate_registration`` (images, labels before and
after, the overlap note) in three layouts:

- ``one map``: ten nested shells (label k: the ball of radius r_k less the ball inside it), one label map;
- ``2 layers``: the same shells each grown by one voxel, so that neighbours share voxels: put into layers
  as a ``.seg.nrrd``'s segments are (``segmentations.add_to_layers``), they take 2;
- ``10 layers``: ten nested balls (label k: the whole ball of radius r_k), each in its own layer.

The layers are UInt16 images, as ``segmentations.label_maps_for_evaluation`` makes them. Each layout runs in
a child process of its own: "s" is the wall time of ``evaluate_registration``, "peak +MB" the growth of the
process's peak resident memory during it (VmHWM, reset before the call where Linux allows it), "pairs noted" how
many label pairs the overlap note names.

Example (the README's numbers):

    python benchmarks/label_layers.py --size 256 --threads 1
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import time

# Runs from a source checkout without installing the package.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_machine

LAYOUTS = ("one map", "2 layers", "10 layers")
LABELS = 10


def _status_mb(key: str) -> float:
    """A ``VmHWM``/``VmRSS`` line of /proc/self/status, MB (0 where there is none)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _reset_peak() -> bool:
    """Reset the process's peak resident memory to its current one (Linux: clear_refs 5)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def label_layers(size: int, layout: str, shift: int):
    """The label map (or its layers, UInt16 images) of one side: ``shift`` voxels along x."""
    import numpy as np
    import SimpleITK as sitk

    from MultimodalFusionLib.segmentations import add_to_layers

    z, y, x = np.ogrid[:size, :size, :size]
    centre = (size - 1) / 2.0
    distance = np.sqrt((x - centre - shift) ** 2 + (y - centre) ** 2 + (z - centre) ** 2)
    radii = np.linspace(0.42 * size, 0.06 * size, LABELS)  # label 1 the outermost
    layers: list = []
    for k, radius in enumerate(radii, start=1):
        inner = radii[k] if k < LABELS else -1.0
        if layout == "10 layers":
            voxels = distance <= radius
        elif layout == "2 layers":
            voxels = (distance <= radius + 1) & (distance > inner - 1)
        else:
            voxels = (distance <= radius) & (distance > inner)
        if layout == "10 layers":
            layer = np.zeros(voxels.shape, np.uint16)
            layer[voxels] = k
            layers.append(layer)
        else:
            add_to_layers(layers, voxels, k)
    images = [sitk.GetImageFromArray(arr) for arr in layers]
    return images[0] if len(images) == 1 else images


def _run(size: int, layout: str, threads: int, queue) -> None:
    import numpy as np
    import SimpleITK as sitk

    from MultimodalFusionLib import metrics

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    fixed_labels, moving_labels = label_layers(size, layout, 0), label_layers(size, layout, 3)
    grey = [sitk.Cast(metrics.label_layers(m)[0], sitk.sitkFloat32) * 10.0 for m in (fixed_labels, moving_labels)]
    transform = sitk.TranslationTransform(3, (2.0, 0.0, 0.0))
    before = _status_mb("VmRSS")
    reset = _reset_peak()
    start = time.perf_counter()
    out = metrics.evaluate_registration(*grey, transform, fixed_labels=fixed_labels, moving_labels=moving_labels)
    seconds = time.perf_counter() - start
    peak = _status_mb("VmHWM") - before if reset else float("nan")
    after = out["labels"]["after"]
    queue.put((len(metrics.label_layers(fixed_labels)), seconds, peak, float(after["mean"]["dice"]),
               float(after["mean"]["hd95"]), sum("share" in n for n in out["notes"]),
               float(np.mean([r["dice"] for r in out["labels"]["before"]["labels"].values()]))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="grid size per axis (voxels)")
    parser.add_argument("--layouts", nargs="+", default=list(LAYOUTS), choices=LAYOUTS)
    parser.add_argument("--threads", type=int, default=1, help="ITK threads")
    args = parser.parse_args(argv)

    import SimpleITK as sitk
    from bench_machine import describe

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    print(f"{LABELS} labels on a {args.size}^3 grid, evaluate_registration before/after; " + describe())
    print("| layout | layers | s | peak +MB | mean Dice after | mean HD95 after mm | pairs noted "
          "| mean Dice before |")
    print("|---|---|---|---|---|---|---|---|")
    context = multiprocessing.get_context("spawn")
    for layout in args.layouts:
        queue = context.Queue()
        child = context.Process(target=_run, args=(args.size, layout, args.threads, queue))
        child.start()
        layers, seconds, peak, dice, hd95, pairs, dice_before = queue.get()
        child.join()
        print(f"| {layout} | {layers} | {seconds:.1f} | {peak:.0f} | {dice:.6f} | {hd95:.4f} | {pairs} "
              f"| {dice_before:.6f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
