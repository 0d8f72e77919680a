"""The one resolver of torch device names, for the torch registration backend and deep fusion.

Both accept the same names ("auto", "cpu", "cuda", "cuda:N"; case and surrounding spaces ignored;
None means "auto") and refuse the same ones up front with an InputError, not later inside torch:
another device type (e.g. "mps", which the kernels here were never run on), a CUDA device without
a GPU, or ``cuda:N`` past the GPUs torch sees. Each caller names where its user sets the device
(``where``), so the fix points at the right option. torch is imported inside the function.
"""

from __future__ import annotations

from typing import Any

from .errors import InputError
from .threads import hold_torch_threads

__all__ = ["device_name_ok", "select_device"]


def device_name_ok(device: Any) -> bool:
    """Whether ``device`` names a device the engine runs on: auto, cpu, cuda or cuda:N (or None: auto)."""
    if device is None:
        return True
    if not isinstance(device, str):  # 0 (falsy) would otherwise pass for "auto"
        return False
    name = device.strip().lower()
    index = name[5:]
    # ASCII digits: str.isdigit also takes "²" or full-width digits, which int() or torch then refuse
    return name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and index.isascii() and index.isdigit())


def select_device(device: Any = "auto", *, where: str | None = None) -> Any:
    """``torch.device``: CUDA when ``device="auto"`` and a GPU is usable, else the CPU.

    Args:
        device: "auto", "cpu", "cuda" or "cuda:N" (any case, spaces around ignored); None: "auto".
        where: where the caller's user sets the device (e.g. "mmfusion fuse --deep-device, Python
            device=..."), named in the fix; None: ``device=``.

    Raises:
        InputError: a device other than auto/cpu/cuda[:N], CUDA without a GPU torch can use, or
            ``cuda:N`` past the number of GPUs torch sees.
    """
    import torch

    if not device_name_ok(device):
        raise InputError(f"Unknown or unsupported torch device {device!r}.",
                         "Use 'auto', 'cpu', 'cuda' or 'cuda:N'" + (f" ({where})." if where else "."))
    hold_torch_threads(torch)  # a --threads N block (threads.limit_threads): torch's CPU work on N threads
    name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            use = f"the device 'auto' or 'cpu' ({where})" if where else "device='auto' or 'cpu'"
            raise InputError(f"Device '{device}' was requested but torch sees no CUDA GPU.",
                             f"Use {use}, or install a CUDA build of PyTorch.")
        count = torch.cuda.device_count()
        index = int(name[5:]) if ":" in name else 0
        if index >= count:
            raise InputError(f"Device '{device}' was requested but torch sees {count} CUDA GPU(s).",
                             f"Use 'cuda' or 'cuda:0'..'cuda:{count - 1}'" + (f" ({where})." if where else "."))
    return torch.device(name)
