"""Runtime of deep fusion: one 256x256 slice and one ~256^3 volume, on the CPU (and CUDA when present).

Usage::

    python benchmarks/deep_fusion_runtime.py [--threads 1] [--device auto|cpu|cuda] [--volume 256] [--only-volume]

Data: MNI152 T1 and a synthetic CT-like contrast (nilearn's template, no download), resampled to
256x256 (slice) and ``--volume``^3 voxels. Times the fusion call alone (the shipped 2D default
weights; a volume goes slice by slice in batches), pretrained only and with 80 per-study
adaptation steps for the slice, and the shipped 3D weights (``weights="3d"``) with sliding-window
inference (an untrained 3D network of the same width if they are missing: the runtime does not
depend on the values).

The volume is also fused through ``fusion.fuse`` (scaling to 0..1, hard selection, the 0..255 grey
image: what ``mmfusion fuse --method deep`` runs between reading and writing), and once more with
glibc left to unmap the network's freed activations after every batch, as before the inference kept
them (``_reuse_freed_memory`` replaced by a no-op): the minor page faults and system CPU seconds
show the difference. ``--only-volume`` times just these volume rows (no slice, no 3D network).
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

# The checkout this script lies in comes first, installed or not, so that it is the one measured.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from MultimodalFusionLib import data  # noqa: E402


def _resize(image: sitk.Image, size: tuple[int, ...]) -> sitk.Image:
    spacing = [sz * sp / n for sz, sp, n in zip(image.GetSize(), image.GetSpacing(), size)]
    return sitk.Resample(image, list(size), sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
                         image.GetDirection(), 0.0, sitk.sitkFloat32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu)")
    parser.add_argument("--volume", type=int, default=256, help="side of the test volume (default 256)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats; the median is reported")
    parser.add_argument("--only-volume", action="store_true",
                        help="only the volume rows of the 2D weights (fuse_deep, fusion.fuse, and without memory reuse)")
    args = parser.parse_args(argv)

    import torch

    from MultimodalFusionLib.devices import select_device
    from MultimodalFusionLib.errors import InputError

    try:  # checked before the minutes of data preparation, as a usage error (it had been a traceback)
        select_device(args.device, where="deep_fusion_runtime.py --device")
    except InputError as exc:
        parser.error(f"--device {args.device}: {exc}")
    from MultimodalFusionLib.fusion.deep import (
        FusionNetConfig,
        build_network,
        default_weights_path,
        fuse_deep,
    )

    torch.set_num_threads(args.threads)
    tissues = data.mni152(spacing_mm=1.0)
    t1, ct = tissues["t1"], data.synthetic_contrast(tissues, "ct")
    z = t1.GetSize()[2] // 2
    a2 = _resize(t1[:, :, z], (256, 256))
    b2 = _resize(ct[:, :, z], (256, 256))
    n = args.volume
    a3, b3 = _resize(t1, (n, n, n)), _resize(ct, (n, n, n))

    def timed(fn) -> tuple[float, float, float, float]:
        """(median wall s, system CPU s, minor page faults in millions, peak RSS MB) of ``fn``."""
        times = []
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(args.repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        return (float(np.median(times)), (r1.ru_stime - r0.ru_stime) / args.repeat,
                (r1.ru_minflt - r0.ru_minflt) / args.repeat / 1e6, r1.ru_maxrss / 1024)

    from MultimodalFusionLib import fusion
    from MultimodalFusionLib.fusion.deep import inference

    inference.KEEP_FREED_MEMORY = True  # as the mmfusion command sets it (this script owns its process)

    fuse_deep(a2, b2, adapt_steps=0, device=args.device)  # load the weights once (cached)
    rows = []
    if not args.only_volume:
        rows += [
            ("256x256 slice, pretrained (adapt_steps=0)", timed(lambda: fuse_deep(a2, b2, adapt_steps=0,
                                                                                  device=args.device))),
            ("256x256 slice, with 80 adaptation steps (adapt_steps=80)",
             timed(lambda: fuse_deep(a2, b2, adapt_steps=80, device=args.device))),
        ]
    rep = max(1, args.repeat // 3)
    args.repeat = rep
    rows.append((f"{n}^3 volume, 2D weights slice by slice (batch 8)",
                 timed(lambda: fuse_deep(a3, b3, adapt_steps=0, device=args.device))))
    rows.append((f"{n}^3 volume, fusion.fuse(a, b, 'deep') (scaling, hard selection)",
                 timed(lambda: fusion.fuse(a3, b3, "deep", device=args.device))))
    kept = inference._reuse_freed_memory
    inference._reuse_freed_memory = contextlib.nullcontext  # the inference before it kept freed memory
    try:
        rows.append((f"{n}^3 volume, fusion.fuse, freed activations unmapped (before)",
                     timed(lambda: fusion.fuse(a3, b3, "deep", device=args.device))))
    finally:
        inference._reuse_freed_memory = kept
    if not args.only_volume:
        try:
            default_weights_path(3)
            net3, label = "3d", "shipped 3D weights"
        except Exception:  # noqa: BLE001 - no 3D weights shipped: time an untrained 3D network
            net3, label = build_network(FusionNetConfig(spatial_dims=3)), "untrained 3D network"
        rows.append((f"{n}^3 volume, {label}, sliding window 96^3",
                     timed(lambda: fuse_deep(a3, b3, weights=net3, adapt_steps=0, device=args.device))))
    device = torch.cuda.get_device_name(0) if args.device != "cpu" and torch.cuda.is_available() else \
        f"CPU, {torch.get_num_threads()} torch thread(s)"
    print(f"deep fusion runtime ({device}; median of {args.repeat} run(s) for volumes); MNI152 T1 (nilearn) and its "
          f"synthetic CT, resampled to 256x256 (slice) and {n}^3 (volume)")
    print(f"  {'task':66s} {'wall s':>8s} {'sys s':>7s} {'faults M':>9s} {'peak RSS MB':>12s}")
    for name, (sec, sys_s, faults, rss) in rows:
        print(f"  {name:66s} {sec:8.2f} {sys_s:7.1f} {faults:9.2f} {rss:12.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
