#!/usr/bin/env python
"""Reduced precision of the CUDA paths, emulated on the CPU: registration TRE and deep fusion outputs.

Usage::

    python benchmarks/mixed_precision_cpu.py [--threads 2] [--seed 1] [--only registration|deep|adapt]
        [--adapt-steps 20] [--json FILE]

On CUDA the torch registration backend computes its LNCC/MIND similarity under bfloat16 autocast
(``mixed_precision=True``, the default) and deep fusion runs its network under float16 autocast. No
GPU has run these paths, so this script runs them on the CPU under ``torch.autocast("cpu", ...)``
with the same dtype, which lowers the same operations (convolutions, matrix products) to the same
reduced precision. The library is not changed for this: the script replaces, in its own process,
``torch_backend._Context``'s ``autocast`` (the CUDA autocast becomes a CPU one) and turns ``amp`` on.

Registration: the 3 mm MNI152 known-answer cases of the tests (``registration.accuracy``): a known
affine (``rigid_case`` with scaling) for the affine rows, a known smooth 5 mm warp (``bspline_case``)
for the deformable rows, and the slab-motion case (``slab_motion_case``) without and with its moving
mask (masked LNCC). Each row prints the mean / max TRE (mm) with float32 and with bfloat16 autocast.

Deep fusion: the shipped 2D weights on a 256x256 MNI152 T1 / synthetic CT slice and on a 64^3 volume
(slice by slice), and the shipped 3D weights on the 64^3 volume (sliding window): the largest absolute
difference of the fused image and of the weight map between float32 and float16 / bfloat16 autocast,
and whether any value is NaN or infinite.

Per-study adaptation: the shipped 2D weights adapted to the 256x256 slice under float16 autocast
(``inference.adapt(..., amp=True)``: CPU autocast and a CPU GradScaler, the CUDA path) and, patched in
this process, without the GradScaler (the code before): the first step's gradients flushed to zero and
their error against float32, and how far the fused image and weight map end from float32 adaptation's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

# Runs from a source checkout without installing the package.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


@contextlib.contextmanager
def emulated_bf16_registration():
    """Inside: the torch backend's CUDA-only bfloat16 autocast, run on the CPU instead."""
    import torch

    from MultimodalFusionLib.registration import torch_backend

    ctx_class = torch_backend._Context
    init, autocast = ctx_class.__init__, ctx_class.autocast

    def patched_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.amp = bool(self.params.mixed_precision)  # on CUDA: and the GPU supports bfloat16

    def patched_autocast(self, metric):
        # the library's rule with the device type changed: every metric but MI, under bfloat16
        if self.amp and metric != "mi":
            return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    ctx_class.__init__, ctx_class.autocast = patched_init, patched_autocast
    try:
        yield
    finally:
        ctx_class.__init__, ctx_class.autocast = init, autocast


def registration_rows(seed: int) -> list[dict]:
    import SimpleITK as sitk

    from MultimodalFusionLib import data
    from MultimodalFusionLib.registration import accuracy
    from MultimodalFusionLib.registration.torch_backend import TorchRegistrationParameters, register_torch

    tissues = data.mni152(spacing_mm=3)
    affine = {c: accuracy.rigid_case(spacing_mm=3, affine_scale=(1.05, 0.96, 1.0), contrast=c, tissues=tissues)
              for c in ("t1", "t2")}
    warp = {c: accuracy.bspline_case(spacing_mm=3, magnitude_mm=5.0, contrast=c, tissues=tissues)
            for c in ("t1", "t2")}
    slab = {c: accuracy.slab_motion_case(spacing_mm=3, contrast=c, tissues=tissues) for c in ("t1", "t2")}
    deformable = {"stages": ["affine", "deformable"], "deformable_level_spacing_mm": [6.0, 3.0],
                  "deformable_iterations": [100, 50]}
    # (row, case, settings, fixed mask, moving mask, start from the truth)
    rows = [
        ("known affine, affine LNCC (T1 vs T1)", affine["t1"], {"stages": ["affine"], "linear_metric": "lncc"},
         None, None, False),
        ("known affine, affine MIND (T1 vs T2)", affine["t2"], {"stages": ["affine"], "linear_metric": "mind"},
         None, None, False),
        ("known 5 mm warp, affine + deformable MIND (default metric)", warp["t2"], deformable, "dilated", None,
         False),
        ("known 5 mm warp, affine + deformable LNCC (T1 vs T1)", warp["t1"],
         dict(deformable, deformable_metric="lncc"), "dilated", None, False),
        ("slab motion, affine LNCC, no mask", slab["t1"], {"stages": ["affine"], "linear_metric": "lncc"},
         None, None, False),
        ("slab motion, affine LNCC, moving mask (masked LNCC)", slab["t1"],
         {"stages": ["affine"], "linear_metric": "lncc"}, None, "moving", False),
        ("slab motion, affine MIND, moving mask", slab["t2"], {"stages": ["affine"], "linear_metric": "mind"},
         None, "moving", False),
        ("slab motion, deformable LNCC from the truth, moving mask", slab["t1"],
         {"stages": ["deformable"], "deformable_metric": "lncc", "deformable_level_spacing_mm": [6.0, 3.0]},
         None, "moving", True),
    ]
    out = []
    print("| row | before | float32: mean / max TRE mm (s) | bfloat16 autocast (CPU emulation) |")
    print("|---|---|---|---|")
    for name, case, settings, fixed_mask, moving_mask, from_truth in rows:
        params = TorchRegistrationParameters(device="cpu", **settings)
        kwargs = {"fixed_mask": sitk.BinaryDilate(case.mask, [2, 2, 2]) if fixed_mask == "dilated" else None,
                  "moving_mask": case.moving_mask if moving_mask == "moving" else None,
                  "initial_transform": case.truth if from_truth else None, "seed": seed}
        before = case.error_before()
        row = {"row": name, "before_mean_mm": before["mean"], "before_max_mm": before["max"]}
        cells = []
        for label, precision in (("float32", contextlib.nullcontext), ("bfloat16", emulated_bf16_registration)):
            t0 = time.perf_counter()
            try:
                with precision():
                    result = register_torch(case.fixed, case.moving, params, **kwargs)
            except Exception as exc:  # noqa: BLE001 - a failing precision is a result of this table
                row[label] = {"error": f"{type(exc).__name__}: {exc}"}
                cells.append(f"fails: {type(exc).__name__}")
                continue
            seconds = time.perf_counter() - t0
            err = case.error(result.transform)
            row[label] = {"mean_mm": err["mean"], "max_mm": err["max"], "seconds": seconds,
                          "mixed_precision_active": result.parameters["mixed_precision_active"]}
            cells.append(f"{err['mean']:.2f} / {err['max']:.2f} ({seconds:.1f})")
        out.append(row)
        print(f"| {name} | {before['mean']:.2f} / {before['max']:.2f} | {' | '.join(cells)} |", flush=True)
    return out


def deep_rows() -> list[dict]:
    import numpy as np
    import SimpleITK as sitk
    import torch
    from monai.inferers import sliding_window_inference

    from MultimodalFusionLib import data
    from MultimodalFusionLib.fusion.deep import inference

    def resized(image: sitk.Image, size: tuple[int, ...]) -> np.ndarray:
        spacing = [sz * sp / n for sz, sp, n in zip(image.GetSize(), image.GetSpacing(), size)]
        out = sitk.GetArrayFromImage(sitk.Resample(image, list(size), sitk.Transform(), sitk.sitkLinear,
                                                   image.GetOrigin(), spacing, image.GetDirection(), 0.0,
                                                   sitk.sitkFloat32))
        return ((out - out.min()) / (out.max() - out.min())).astype(np.float32)

    tissues = data.mni152(spacing_mm=1.0)
    t1, ct = tissues["t1"], data.synthetic_contrast(tissues, "ct")
    z = t1.GetSize()[2] // 2
    slice_a, slice_b = resized(t1[:, :, z], (256, 256)), resized(ct[:, :, z], (256, 256))
    vol_a, vol_b = resized(t1, (64, 64, 64)), resized(ct, (64, 64, 64))
    net2, _ = inference._load_model(None, 2)
    net3, _ = inference._load_model("3d", 3)

    def forward_2d(net, a, b, dtype):
        # inference._forward_padded with the autocast on the CPU and of the given dtype
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        ta, tb = (ta[None, None], tb[None, None]) if a.ndim == 2 else (ta[:, None], tb[:, None])
        ap, pads = inference._pad_to_multiple(ta, net.config.size_multiple)
        bp, _ = inference._pad_to_multiple(tb, net.config.size_multiple)
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
            f, w = net(ap, bp)
        return inference._crop(f.float(), pads), inference._crop(w.float(), pads)

    def forward_3d(net, a, b, dtype):
        # inference.predict's sliding window (whole 64^3 volume as one window) with the CPU autocast
        def predictor(x):
            with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
                f, w = net(x[:, :1], x[:, 1:2])
            return torch.cat([f, w], dim=1).float()

        x = torch.stack([torch.from_numpy(a), torch.from_numpy(b)])[None]
        with torch.no_grad():
            out = sliding_window_inference(x, roi_size=list(a.shape), sw_batch_size=1, predictor=predictor,
                                           overlap=0.25, mode="gaussian", padding_mode="replicate")
        return out[:, :1], out[:, 1:2]

    cases = [("256x256 slice, 2D weights", forward_2d, net2, slice_a, slice_b),
             ("64^3 volume, 2D weights slice by slice", forward_2d, net2, vol_a, vol_b),
             ("64^3 volume, 3D weights (sliding window)", forward_3d, net3, vol_a, vol_b)]
    out = []
    print("| input | autocast | max abs diff fused | max abs diff weight | NaN/inf values |")
    print("|---|---|---|---|---|")
    for name, forward, net, a, b in cases:
        f32, w32 = forward(net, a, b, None)
        for dtype in (torch.float16, torch.bfloat16):
            f, w = forward(net, a, b, dtype)
            bad = int((~torch.isfinite(f)).sum() + (~torch.isfinite(w)).sum())
            row = {"input": name, "dtype": str(dtype).replace("torch.", ""),
                   "fused_max_abs_diff": float((f - f32).abs().max()),
                   "weight_max_abs_diff": float((w - w32).abs().max()), "non_finite": bad}
            out.append(row)
            print(f"| {name} | {row['dtype']} | {row['fused_max_abs_diff']:.2e} | {row['weight_max_abs_diff']:.2e} | "
                  f"{bad} |", flush=True)
    return out


def adapt_rows(steps: int) -> list[dict]:
    """Per-study adaptation under float16 autocast, with and without the GradScaler, against float32."""
    import numpy as np
    import SimpleITK as sitk
    import torch

    from MultimodalFusionLib import data
    from MultimodalFusionLib.fusion.deep import inference, training
    from MultimodalFusionLib.fusion.deep.losses import FusionLoss

    tissues = data.mni152(spacing_mm=1.0)
    t1, ct = tissues["t1"], data.synthetic_contrast(tissues, "ct")
    z = t1.GetSize()[2] // 2

    def resized(image: sitk.Image) -> np.ndarray:
        spacing = [sz * sp / 256 for sz, sp in zip(image.GetSize(), image.GetSpacing())]
        out = sitk.GetArrayFromImage(sitk.Resample(image, [256, 256], sitk.Transform(), sitk.sitkLinear,
                                                   image.GetOrigin(), spacing, image.GetDirection(), 0.0,
                                                   sitk.sitkFloat32))
        return ((out - out.min()) / (out.max() - out.min())).astype(np.float32)

    a, b = resized(t1[:, :, z]), resized(ct[:, :, z])
    net, _ = inference._load_model(None, 2)
    xa, xb = torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]

    def first_gradient(amp: bool, scale: float) -> torch.Tensor:
        # the gradient of adaptation's first step (as inference.adapt computes it), unscaled
        tuned = inference.copy.deepcopy(net).train()
        ap, pads = inference._pad_to_multiple(xa, tuned.config.size_multiple)
        bp, _ = inference._pad_to_multiple(xb, tuned.config.size_multiple)
        with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
            fused, _ = tuned(ap, bp)
        loss, _ = FusionLoss(2, None)(inference._crop(fused.float(), pads), xa, xb)
        (loss * scale).backward()
        return torch.cat([p.grad.flatten() / scale for p in tuned.parameters()])

    float16_amp = training._float16_amp
    skipped = [0]

    def no_scaler(torch_: object, device: object, amp: object = None) -> tuple:
        return float16_amp(torch_, device, amp)[0], None  # the code before: autocast without a GradScaler

    def counted_step(loss: object, optimizer: object, scaler: object) -> bool:
        stepped = optimizer_step(loss, optimizer, scaler)
        skipped[0] += not stepped
        return stepped

    optimizer_step = training._optimizer_step
    g32 = first_gradient(False, 1.0)
    f32, w32 = inference.predict(inference.adapt(net, a, b, steps=steps), a, b, device=torch.device("cpu"))
    out = []
    print(f"| float16 autocast (CPU emulation) | first step: gradients flushed to 0 (of {g32.numel()}) | "
          f"first step: gradient error (L2, relative) | after {steps} steps: max abs diff fused / weight | "
          "steps the scaler skipped (run again) |")
    print("|---|---|---|---|---|")
    for label, scaled in (("no GradScaler (the code before)", False), ("GradScaler (now)", True)):
        g = first_gradient(True, 65536.0 if scaled else 1.0)
        skipped[0] = 0
        training._float16_amp, training._optimizer_step = (float16_amp if scaled else no_scaler), counted_step
        try:
            tuned = inference.adapt(net, a, b, steps=steps, amp=True)
        finally:
            training._float16_amp, training._optimizer_step = float16_amp, optimizer_step
        f, w = inference.predict(tuned, a, b, device=torch.device("cpu"))
        row = {"variant": label, "flushed": int(((g == 0) & (g32 != 0)).sum()), "gradients": g32.numel(),
               "gradient_rel_error": float((g - g32).norm() / g32.norm()),
               "fused_max_abs_diff": float(np.abs(f - f32).max()), "weight_max_abs_diff": float(np.abs(w - w32).max()),
               "skipped_steps": skipped[0], "steps": steps}
        out.append(row)
        print(f"| {label} | {row['flushed']} | {row['gradient_rel_error']:.2%} | {row['fused_max_abs_diff']:.2e} / "
              f"{row['weight_max_abs_diff']:.2e} | {row['skipped_steps']} |", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--seed", type=int, default=1, help="registration seed (default 1)")
    parser.add_argument("--only", choices=("registration", "deep", "adapt"), help="run one part only")
    parser.add_argument("--adapt-steps", type=int, default=20, help="adaptation steps of the adapt part (default 20)")
    parser.add_argument("--json", help="also write the numbers to this JSON file")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU, {args.threads} thread(s), seed {args.seed}")
    result = {"torch": torch.__version__, "threads": args.threads, "seed": args.seed}
    if args.only in (None, "registration"):
        print("\nTorch registration, 3 mm MNI152 known answers: TRE over the brain")
        result["registration"] = registration_rows(args.seed)
    if args.only in (None, "deep"):
        print("\nDeep fusion inference: float32 vs reduced-precision autocast")
        result["deep"] = deep_rows()
    if args.only in (None, "adapt"):
        print(f"\nPer-study adaptation ({args.adapt_steps} steps, shipped 2D weights, 256x256 slice): float16 vs float32")
        result["adapt"] = adapt_rows(args.adapt_steps)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
