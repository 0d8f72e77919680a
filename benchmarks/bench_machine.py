"""The line a benchmark prints above its table to say where it ran: cores, load, ITK threads, torch's device.

The torch backend runs on CUDA whenever torch sees a GPU (``device="auto"``), and ``--threads`` caps
only the CPU's threads, so a table without this line could not say whether its seconds and errors came
from one CPU thread or a GPU. The load average is there because the seconds of a shared machine are
not those of an idle one.

    from bench_machine import describe
    print(describe(torch_device="auto"))
"""

from __future__ import annotations

import os
import platform

__all__ = ["describe"]


def describe(torch_device: str | None = None) -> str:
    """``machine: ...`` for the table's header.

    Args:
        torch_device: the device the benchmark's torch work asks for ("auto", "cpu", "cuda"), resolved
            as the engine resolves it; None: the benchmark runs no torch, and the line leaves it out.
    """
    import SimpleITK as sitk

    parts = [f"{platform.machine()}, {os.cpu_count()} CPU cores"]
    if hasattr(os, "getloadavg"):
        parts.append(f"load {os.getloadavg()[0]:.1f}")
    parts.append(f"ITK threads {sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()}")
    if torch_device is not None:
        try:
            import torch
        except ImportError:  # pragma: no cover - the deep extra is not installed
            parts.append("torch missing")
        else:
            from MultimodalFusionLib.devices import select_device

            device = select_device(torch_device)
            if device.type == "cuda":
                parts.append(f"torch on CUDA ({torch.cuda.get_device_name(device)})")
            else:
                parts.append(f"torch on the CPU, {torch.get_num_threads()} thread(s)")
    parts.append(f"Python {platform.python_version()}")
    return "machine: " + ", ".join(parts)
