"""Torch-backend rows of benchmarks/registration.py (which loads this file and calls ``add_rows``).

Rows: ``torch-affine`` (affine stage: Mattes-window MI on 20k sampled voxels, Adam, shrink 4-2-1)
and ``torch-deformable`` (the same affine, then a stationary velocity field with MIND-SSC,
levels at 4 and 2 mm). The device is picked automatically (CUDA when present, else the CPU);
the table's tool column says which. ``MMFUSION_TORCH_THREADS`` caps torch's CPU threads.

    python benchmarks/registration.py --only torch-affine,torch-deformable,ours-affine
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

__all__ = ["add_rows"]


def _device_name() -> str:
    try:
        import torch
    except ImportError:  # pragma: no cover - the deep extra is not installed
        return "torch missing"
    return f"CUDA {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "CPU"


def _torch(stages: list[str]) -> Callable[[str, str, str], tuple[Any, float, float]]:
    def run(fixed_path: str, moving_path: str, scratch: str) -> tuple[Any, float, float]:
        import torch

        from MultimodalFusionLib.io import read_image
        from MultimodalFusionLib.registration import register
        from MultimodalFusionLib.registration.torch_backend import TorchRegistrationParameters

        threads = os.environ.get("MMFUSION_TORCH_THREADS")
        if threads:
            torch.set_num_threads(int(threads))
        fixed = read_image(fixed_path, float32=True)
        moving = read_image(moving_path, float32=True)
        t0, c0 = time.perf_counter(), time.process_time()
        result = register(fixed, moving, TorchRegistrationParameters(stages=stages), backend="torch")
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return result.transform, time.perf_counter() - t0, time.process_time() - c0
    return run


def add_rows(methods: dict[str, Any], method_cls: type) -> None:
    """Add the torch rows to the benchmark's ``METHODS`` registry."""
    device = _device_name()
    methods["torch-affine"] = method_cls(
        f"torch backend ({device}): affine, Mattes-window MI 32 bins, 20k voxels, Adam, shrink 4-2-1",
        "affine", _torch(["affine"]))
    methods["torch-deformable"] = method_cls(
        f"torch backend ({device}): affine -> SVF diffeomorphic, MIND-SSC, 4/2 mm levels, diffusion reg.",
        "deformable", _torch(["affine", "deformable"]))
