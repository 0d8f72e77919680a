#!/usr/bin/env python
"""Deep-fusion inference memory: the estimate the pre-check uses against the peak measured.

Usage::

    python benchmarks/deep_fusion_memory.py [--cases 2d:512,3d-sliced:64x256x256:8,...] [--keep-freed-memory]
        [--json FILE]

``inference.check_inference_memory`` (``fuse_arrays``, and ``check_adaptation`` before ``mmfusion run``'s
registration) refuses a fusion, or runs it in a smaller batch, from ``inference.inference_memory``: the network's
activations for one forward pass (``training._kept_per_voxel(..., inference=True)`` times
``inference._memory_factor``: by the pass's voxels and how many passes there are) plus the whole-volume float32 arrays the fusion allocates. This script measures what a
fusion takes: each case runs in its own process (``VmHWM`` is a process's peak), which fuses a tiny pair first
(the network loaded, torch's kernels warmed up), reads its resident size, runs ``fuse_arrays`` on the CPU, one
thread, and reports its peak resident size less the size before it, beside the estimate (``max(activations +
arrays while the network runs, arrays after it)``, as the check counts the CPU). ``--keep-freed-memory``: both fusions
with ``inference.KEEP_FREED_MEMORY`` on, as the ``mmfusion`` command runs them (glibc keeps what torch frees on its
heap while the network runs), which the estimate counts too.

Data: generated, no file needed: two arrays of the case's shape drawn uniformly from [0, 1) in float32
(``numpy.random.default_rng(0)``, the first array, then the second). Random values are the worst case for nothing
here (the network's memory does not depend on the values), so any data of the shape gives the same figures.

Cases (``--cases``, comma-separated ``KIND:SHAPE[:BATCH_SIZE]``, the shape in numpy's order, as ``fuse_arrays`` takes
it): ``2d:N`` an NxN image through the shipped 2D network (the whole image in one pass); ``3d-sliced:ZxYxX:B`` a volume
through the 2D network, ``B`` slices a pass; ``3d:ZxYxX:B`` a volume through the shipped 3D network, ``B // 4``
windows of ``roi_size`` 96 a pass. The default set is the README's (Deep fusion, "The fusion itself ... is checked
too"); it takes a few minutes and up to about 2.5 GiB on one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# Runs from a source checkout without installing the package.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

DEFAULT_CASES = ("2d:256,2d:512,2d:1024,2d:2048,3d-sliced:64x256x256:8,3d-sliced:64x256x256:2,3d-sliced:32x512x512:8,"
                 "3d-sliced:32x512x512:2,3d-sliced:3x512x512:8,3d:128x128x128:8,3d:128x128x128:4,3d:100x100x100:4,"
                 "3d:96x96x96:8,3d:192x192x192:8")
MIB = 2 ** 20


def parse_case(text: str) -> tuple[str, list[int], int]:
    """(kind, shape, batch_size) of ``KIND:SHAPE[:BATCH_SIZE]`` (``2d:512`` is a 512x512 image, batch 8)."""
    kind, shape, *batch = text.strip().split(":")
    sides = [int(v) for v in shape.split("x")]
    if kind == "2d" and len(sides) == 1:
        sides = sides * 2
    if kind not in ("2d", "3d-sliced", "3d") or len(sides) != (2 if kind == "2d" else 3):
        raise SystemExit(f"deep_fusion_memory: bad case '{text}' (KIND:SHAPE[:BATCH], KIND 2d, 3d-sliced or 3d)")
    return kind, sides, int(batch[0]) if batch else 8


def measure_one(kind: str, shape: list[int], batch: int, keep_freed: bool = False) -> dict:
    """The estimate and the measured peak of one fusion, in this process (call it in a fresh one); ``keep_freed``:
    with ``inference.KEEP_FREED_MEMORY`` on (the ``mmfusion`` command's setting)."""
    import numpy as np
    import torch

    from MultimodalFusionLib.fusion.deep import inference
    from MultimodalFusionLib.fusion.deep.inference import (
        _load_model,
        fuse_arrays,
        fusion_pass,
        inference_memory,
    )

    torch.set_num_threads(1)
    inference.KEEP_FREED_MEMORY = keep_freed
    weights = "3d" if kind == "3d" else "2d"
    model, _ = _load_model(weights, len(shape))
    rng = np.random.default_rng(0)
    a = rng.random(shape, dtype=np.float32)
    b = rng.random(shape, dtype=np.float32)
    tiny = (slice(None, 8),) * len(shape)
    fuse_arrays(a[tiny], b[tiny], weights=weights, device="cpu", roi_size=96)  # the network read, kernels warm
    activations, during, after = inference_memory(model.config, shape, batch, 96)
    sides, passes = fusion_pass(model.config, shape, batch, 96)

    def resident(field: str) -> int:
        with open("/proc/self/status", encoding="utf-8") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith(field)) * 1024

    before = resident("VmRSS:")
    _, _, params = fuse_arrays(a, b, weights=weights, device="cpu", batch_size=batch, roi_size=96)
    # this memory's own peak: ru_maxrss keeps the parent's across fork and exec (Linux), so a case run from a large
    # process (a test suite's, 1.2 GB) had measured that process's size (1133 MiB for a 99 MiB fusion)
    peak = resident("VmHWM:")
    return {"case": f"{kind}:{'x'.join(map(str, shape))}:{batch}", "network": weights, "batch_size": batch,
            "keep_freed_memory": keep_freed,
            "pass": f"{passes} x {'x'.join(map(str, sides))}", "activations_mib": activations / MIB,
            "arrays_mib": max(during, after) / MIB, "estimate_mib": max(activations + during, after) / MIB,
            "measured_mib": (peak - before) / MIB, "warnings": params.get("warnings", [])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=DEFAULT_CASES, help="comma-separated KIND:SHAPE[:BATCH] (docstring)")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="fuse with inference.KEEP_FREED_MEMORY on, as the mmfusion command does")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process: one case, its row as JSON
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure_one(*parse_case(args.one), keep_freed=args.keep_freed_memory)))
        return 0
    if not sys.platform.startswith("linux"):
        print("deep_fusion_memory: needs Linux (/proc/self/status)", file=sys.stderr)
        return 2
    cases = [c for c in args.cases.split(",") if c.strip()]
    for case in cases:
        parse_case(case)  # a bad case refused before any runs
    rows = []
    print("| case | network | pass (count x sides) | activations | arrays | estimate | measured | measured / estimate |")
    print("|---|---|---|---|---|---|---|---|")
    for case in cases:
        done = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", case]
                              + (["--keep-freed-memory"] if args.keep_freed_memory else []), capture_output=True,
                              text=True, check=False)
        if done.returncode != 0:
            print(f"| {case} | failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
                  " |", flush=True)
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"| {row['case']} | {row['network']} | {row['pass']} | {row['activations_mib']:.0f} MiB | "
              f"{row['arrays_mib']:.0f} MiB | {row['estimate_mib']:.0f} MiB | {row['measured_mib']:.0f} MiB | "
              f"{row['measured_mib'] / row['estimate_mib']:.2f} |", flush=True)
        for warning in row["warnings"]:  # e.g. a smaller batch than asked, where the memory was short
            print(f"  ({row['case']}: {warning})", flush=True)
    if args.json:
        from MultimodalFusionLib.io import write_json

        write_json(args.json, {"rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
