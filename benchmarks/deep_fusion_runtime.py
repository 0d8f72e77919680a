"""Runtime of deep fusion: one 256x256 slice and one ~256^3 volume, on the CPU (and CUDA when present).

Usage::

    python benchmarks/deep_fusion_runtime.py [--threads 1] [--device auto|cpu|cuda] [--volume 256]

Data: MNI152 T1 and a synthetic CT-like contrast (nilearn's template, no download), resampled to
256x256 (slice) and ``--volume``^3 voxels. Times the fusion call alone (the shipped 2D default
weights; a volume goes slice by slice in batches), pretrained only and with 80 per-study
adaptation steps for the slice, and the shipped 3D weights (``weights="3d"``) with sliding-window
inference (an untrained 3D network of the same width if they are missing: the runtime does not
depend on the values).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

try:
    from MultimodalFusionLib import data
except ImportError:  # a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from MultimodalFusionLib import data


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
    args = parser.parse_args(argv)

    import torch

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

    def timed(fn) -> float:
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return float(np.median(times))

    fuse_deep(a2, b2, adapt_steps=0, device=args.device)  # load the weights once (cached)
    rows = [
        ("256x256 slice, pretrained (adapt_steps=0)", timed(lambda: fuse_deep(a2, b2, adapt_steps=0,
                                                                              device=args.device))),
        ("256x256 slice, with 80 adaptation steps (adapt_steps=80)",
         timed(lambda: fuse_deep(a2, b2, adapt_steps=80, device=args.device))),
    ]
    rep = max(1, args.repeat // 3)
    args.repeat = rep
    rows.append((f"{n}^3 volume, 2D weights slice by slice (batch 8)",
                 timed(lambda: fuse_deep(a3, b3, adapt_steps=0, device=args.device))))
    try:
        default_weights_path(3)
        net3, label = "3d", "shipped 3D weights"
    except Exception:  # noqa: BLE001 - no 3D weights shipped: time an untrained 3D network
        net3, label = build_network(FusionNetConfig(spatial_dims=3)), "untrained 3D network"
    rows.append((f"{n}^3 volume, {label}, sliding window 96^3",
                 timed(lambda: fuse_deep(a3, b3, weights=net3, adapt_steps=0, device=args.device))))
    device = torch.cuda.get_device_name(0) if args.device != "cpu" and torch.cuda.is_available() else \
        f"CPU, {args.threads} torch thread(s)"
    print(f"deep fusion runtime ({device}; median of {args.repeat} run(s) for volumes)")
    for name, sec in rows:
        print(f"  {name:55s} {sec:8.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
