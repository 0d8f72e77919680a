"""The one resolver of torch device names, for the torch registration backend and deep fusion.

Both accept the same names ("auto", "cpu", "cuda", "cuda:N"; case and surrounding spaces ignored;
None means "auto") and refuse the same ones up front with an InputError, not later inside torch:
another device type (e.g. "mps", which the kernels here were never run on), a CUDA device without
a GPU, or ``cuda:N`` past the GPUs torch sees. Each caller names where its user sets the device
(``where``), so the fix points at the right option. torch is imported inside the function.
"""

from __future__ import annotations

import os
from typing import Any

from .errors import InputError
from .threads import hold_torch_threads

__all__ = ["available_memory", "device_name_ok", "select_device"]


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


def available_memory(device: Any) -> tuple[int, str] | None:
    """(bytes ``device`` can still take, what they are, for a message); None where that cannot be told (no check).

    CUDA: the GPU's free memory (``torch.cuda.mem_get_info``) plus what torch's caching allocator holds unused in
    this process. CPU (Linux): MemAvailable of /proc/meminfo (free memory and the caches the kernel can drop),
    lowered to the room left under this process's cgroup memory limit (a container's, cgroup v2 or v1) and under its
    address-space limit (``ulimit -v``), whichever is least. Elsewhere (macOS, Windows) None.
    """
    import torch

    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        free = torch.cuda.mem_get_info(index)[0]
        cached = torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)
        return int(free + cached), f"free on cuda:{index} (torch.cuda.mem_get_info)"
    rooms = [(_meminfo_kib("/proc/meminfo", "MemAvailable"), "available (MemAvailable, /proc/meminfo)"),
             (_cgroup_room(), "left under this process's cgroup memory limit"),
             (_address_space_room(), "left under this process's address-space limit (ulimit -v)")]
    known = [(room, what) for room, what in rooms if room is not None]
    return min(known) if known else None


def _meminfo_kib(path: str, key: str, *, unit: int = 1024, separator: str = ":") -> int | None:
    """``key``'s value in bytes from a /proc file of ``key:  N kB`` lines (``unit``: bytes a unit of the file's
    numbers; ``separator``: after the key, " " in a cgroup's memory.stat); None where there is none."""
    try:
        with open(path, encoding="ascii") as fh:
            for line in fh:
                name, _, value = line.partition(separator)
                if name == key:
                    return int(value.split()[0]) * unit
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room(listing: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> int | None:
    """Bytes left under the cgroup memory limits this process is under (``listing``: its /proc cgroup file; ``root``:
    where the cgroup file systems are mounted): the least, over its cgroup and the cgroups above it, of the limit less
    the memory charged that the kernel cannot drop (v2: memory.max - (memory.current - inactive_file of memory.stat);
    v1: memory.limit_in_bytes - (memory.usage_in_bytes - total_inactive_file)), as ``docker stats`` and the kubelet
    count a container's use. The charge counts the page cache of every file the cgroup has read or written: a
    container with a 3 GiB limit that had written a 2.5 GiB file was told 319 MiB were left. None without a limit or
    where none can be read."""
    try:
        with open(listing, encoding="ascii") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            mount, names = root, ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):
            mount, names = os.path.join(root, "memory"), ("memory.limit_in_bytes", "memory.usage_in_bytes",
                                                         "total_inactive_file")
        else:
            continue
        mount = os.path.normpath(mount)
        folder = os.path.normpath(mount + "/" + path)
        if not os.path.isdir(folder):  # in a container, its own cgroup is mounted as the root
            folder = mount
        while True:  # a limit on a cgroup above (a slice, the container's) holds this process too
            room = _cgroup_level_room(folder, *names)
            if room is not None:
                rooms.append(room)
            if folder == mount or not folder.startswith(mount + os.sep):
                break
            folder = os.path.dirname(folder)
    return min(rooms) if rooms else None


def _cgroup_level_room(folder: str, limit: str, usage: str, dropped: str) -> int | None:
    """Bytes left under the memory limit of one cgroup ``folder`` (its files ``limit`` and ``usage``, and ``dropped``
    of its memory.stat, page cache the kernel reclaims first); None without a limit or where it cannot be read."""
    try:
        with open(os.path.join(folder, limit), encoding="ascii") as fh:
            most = fh.read().strip()
        if most == "max":
            return None
        most = int(most)
        if most >= 1 << 60:  # v1 writes "no limit" as a huge number
            return None
        with open(os.path.join(folder, usage), encoding="ascii") as fh:
            used = int(fh.read().strip())
    except (OSError, ValueError):
        return None
    cache = _meminfo_kib(os.path.join(folder, "memory.stat"), dropped, unit=1, separator=" ") or 0
    return max(0, most - max(0, used - cache))


def _address_space_room() -> int | None:
    """Bytes left under this process's address-space limit (``ulimit -v``, RLIMIT_AS) over its current size
    (VmSize); None without a limit."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    size = _meminfo_kib("/proc/self/status", "VmSize")
    if limit == resource.RLIM_INFINITY or size is None:
        return None
    return max(0, limit - size)
