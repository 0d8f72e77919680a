#!/usr/bin/env python
"""Train the shipped default deep-fusion weights from redistributable data only.

Data: multi-contrast pairs made from the MNI152 2009a template and tissue maps that the nilearn
package carries (``MultimodalFusionLib.fusion.deep.data.synthetic_pairs``: T1/T2/PD/FLAIR against
CT/PET/T2/FLAIR-like images, with noise and bias fields), cut into axial slices, with MONAI
augmentation (random patches, flips, rotations, gamma, intensity scaling, noise). No patient
image is used. The result is ``Resources/Models/deep_fusion_2d.safetensors`` (``--dims 3``:
``deep_fusion_3d.safetensors``, trained on random 3D patches) and a JSON summary (training time,
loss history, held-out metrics) that the model card quotes.

Usage (the exact commands behind the shipped weights are in Resources/Models/MODEL_CARD.md)::

    .venv/bin/python scripts/train_default_fusion.py --threads 2
    .venv/bin/python scripts/train_default_fusion.py --dims 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _evaluate_3d(model, seed: int, spacing_mm: float = 2.0) -> dict:
    """Mean metrics on held-out synthetic 3D volumes: classic methods, the shipped 2D weights slice
    by slice, and the new 3D network (sliding window), all on whole volumes."""
    import numpy as np
    import SimpleITK as sitk

    from MultimodalFusionLib.fusion import fuse
    from MultimodalFusionLib.fusion.deep.data import synthetic_pairs
    from MultimodalFusionLib.fusion.deep.weights import default_weights_path
    from MultimodalFusionLib.metrics import FUSION_METRICS, fusion_metrics

    pairs = synthetic_pairs(spacing_mm=spacing_mm, contrasts=[("t1", "ct"), ("t2", "pet"), ("flair", "pet")],
                            seed=seed + 500)
    rows: dict[str, list] = {}
    for a3, b3 in pairs:
        a = sitk.GetImageFromArray(np.round(a3 * 255).astype(np.uint8))
        b = sitk.GetImageFromArray(np.round(b3 * 255).astype(np.uint8))
        for method, kw in (("average", {}), ("max", {}), ("laplacian", {}),
                           ("deep (2D weights, slice-wise)", {"weights": str(default_weights_path(2))}),
                           ("deep (these 3D weights)", {"weights": model})):
            res = fuse(a, b, "deep" if method.startswith("deep") else method, **kw)
            rows.setdefault(method, []).append(fusion_metrics(res, a, b))
    return {m: {k: float(np.mean([r[k] for r in v])) for k in FUSION_METRICS} for m, v in rows.items()}


def _evaluate(model, seed: int) -> dict:
    """Mean metrics of the trained network (no adaptation) and of classic methods on held-out
    synthetic slices (other noise/bias seeds than training), as CDDFuse computes them."""
    import numpy as np
    import SimpleITK as sitk

    from MultimodalFusionLib.fusion import fuse
    from MultimodalFusionLib.fusion.deep.data import synthetic_pairs
    from MultimodalFusionLib.metrics import FUSION_METRICS, fusion_metrics

    pairs = synthetic_pairs(spacing_mm=1.0, contrasts=[("t1", "ct"), ("t2", "pet"), ("flair", "pet")],
                            seed=seed + 500)
    rows: dict[str, list] = {}
    for a3, b3 in pairs:
        for k in (a3.shape[0] // 2 - 10, a3.shape[0] // 2 + 10):
            a = sitk.GetImageFromArray(np.round(a3[k] * 255).astype(np.uint8))
            b = sitk.GetImageFromArray(np.round(b3[k] * 255).astype(np.uint8))
            for method, kw in (("average", {}), ("max", {}), ("laplacian", {}),
                               ("deep", {"weights": model, "adapt_steps": 0})):
                res = fuse(a, b, method, **kw)
                rows.setdefault(method, []).append(fusion_metrics(res, a, b))
    return {m: {k: float(np.mean([r[k] for r in v])) for k in FUSION_METRICS} for m, v in rows.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", type=int, choices=(2, 3), default=2, help="2D (slices) or 3D (volumes) network")
    parser.add_argument("--output", help="weights file (default: Resources/Models/deep_fusion_<dims>d.safetensors)")
    parser.add_argument("--epochs", type=int, help="default 24 (2D) / 20 (3D)")
    parser.add_argument("--samples-per-epoch", type=int, help="default 384 slices (2D) / 32 volumes (3D)")
    parser.add_argument("--batch-size", type=int, help="default 8 (2D) / 2 (3D)")
    parser.add_argument("--patch-size", type=int, help="default 112 (2D) / 64 (3D)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--spacing", type=float, help="voxel size of the MNI152 volumes, mm (default 1.0 / 1.5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the machine may be shared)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--resume", help="checkpoint to continue from")
    args = parser.parse_args(argv)
    three_d = args.dims == 3
    defaults = {"output": str(ROOT / "Resources" / "Models" / f"deep_fusion_{args.dims}d.safetensors"),
                "epochs": 20 if three_d else 24, "samples_per_epoch": 32 if three_d else 384,
                "batch_size": 2 if three_d else 8, "patch_size": 64 if three_d else 112,
                "spacing": 1.5 if three_d else 1.0}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    import torch

    torch.set_num_threads(args.threads)
    from MultimodalFusionLib.cli import ProgressBar
    from MultimodalFusionLib.fusion.deep import FusionNetConfig, TrainingConfig, save_weights, train_fusion
    from MultimodalFusionLib.fusion.deep.data import SYNTHETIC_PAIRS, synthetic_pairs

    t0 = time.perf_counter()
    pairs = synthetic_pairs(spacing_mm=args.spacing, seed=args.seed)
    t_data = time.perf_counter() - t0
    tcfg = TrainingConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patch_size=args.patch_size,
                          seed=args.seed, device=args.device, samples_per_epoch=args.samples_per_epoch)
    bar = ProgressBar(desc="train")
    try:
        result = train_fusion(pairs, config=FusionNetConfig(spatial_dims=args.dims), training=tcfg,
                              checkpoint=args.output + ".ckpt.pt", resume=args.resume, progress=bar)
    finally:
        bar.close()
    for h in result.history:
        print(f"epoch {h['epoch']:3d}  loss {h['loss']:.4f}  ssim {h.get('ssim', 0):.4f}  "
              f"gradient {h.get('gradient', 0):.4f}  intensity {h.get('intensity', 0):.4f}  {h['seconds']:.0f}s",
              flush=True)
    info = {
        "data": "MNI152 2009a template + tissue maps (nilearn package data), synthetic contrast pairs "
                + ", ".join(f"{a}/{b}" for a, b in SYNTHETIC_PAIRS) + f", {args.spacing} mm, " + ("random 3D patches" if three_d else "axial slices"),
        "command": "python scripts/train_default_fusion.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "training": tcfg.to_dict(),
        "seconds_data": round(t_data, 1),
        "seconds_training": round(result.seconds, 1),  # the whole run, the parts before a --resume included
        **({"seconds_training_resumed_part": round(result.seconds_this_part, 1)} if args.resume else {}),
        "device": result.device,
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "final_loss": result.history[-1],
    }
    save_weights(result.model, args.output, training=info)
    info["heldout_metrics"] = _evaluate_3d(result.model, args.seed) if three_d else _evaluate(result.model, args.seed)
    info["history"] = result.history
    summary = os.path.splitext(args.output)[0] + ".json"
    with open(summary, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
    ckpt = args.output + ".ckpt.pt"
    if os.path.exists(ckpt):
        os.remove(ckpt)  # the checkpoint is only for resuming an interrupted run
    print(json.dumps({k: v for k, v in info.items() if k != "history"}, indent=2))
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 1024:.0f} KB) and {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
