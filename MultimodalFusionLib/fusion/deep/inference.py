"""Deep fusion inference: 2D slices (batched), 3D volumes (sliding window), per-study adaptation.

- Inputs are two images on one grid (the second already resampled onto the first); the output
  ``FusionResult`` has the first (fixed) image's geometry, its intensity range, and the per-voxel
  weight of the first input as the explainability map.
- A 2D network fuses 2D images directly and 3D volumes slice by slice, in batches: across the
  volume's thickest voxel axis when its spacing is clearly the coarsest (:func:`slice_axis`; a
  thick-slice acquisition stored sagittally or coronally is fused in its own slices), otherwise
  along the array's first axis (ITK's z); a 3D network fuses volumes of any size with
  ``monai.inferers.sliding_window_inference``.
- Mixed precision (float16 autocast) on CUDA; device "auto" picks CUDA when present and falls back
  to the CPU when CUDA runs out of memory.
- ``adapt_steps > 0`` first fine-tunes a copy of the network on the very pair being fused with the
  unsupervised training loss (seeded: the same pair and seed give the same result on the CPU).
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import math
import os
import sys
import threading
import time
import weakref
from typing import Any, Iterator, Sequence

import numpy as np
import SimpleITK as sitk

from ...errors import InputError
from ...progress import ProgressCallback, report, scaled
from ...validation import check_image, whole_number
from .. import AXIS_NAMES, SLICE_AXIS_RATIO, slice_axis  # noqa: F401 (part of this module's API)
from ..base import FusionResult
from .losses import FusionLoss, LossWeights

__all__ = ["fuse_deep", "fuse_arrays", "check_settings", "registry_method", "DEFAULT_ADAPT_STEPS", "adapt", "predict",
           "slice_axis", "anisotropy_warning", "adaptation_step", "check_adaptation_size", "check_adaptation_memory",
           "check_adaptation", "fusion_pass", "inference_memory", "check_inference_memory"]

#: Default per-study adaptation steps. 0: on the Harvard benchmark the shipped weights with hard
#: selection scored as well without adaptation (README), and adaptation costs ~0.3 s per step for a
#: 256x256 slice on one CPU thread (minutes for a volume). Pass adapt_steps (CLI --adapt) to use it.
DEFAULT_ADAPT_STEPS = 0

#: Names of the shipped weights accepted in place of a path (``weights="3d"``, CLI ``--param weights=3d``).
WEIGHT_ALIASES = {"2d": 2, "3d": 3, "default": 2, "default-2d": 2, "default-3d": 3}

_MODEL_CACHE: dict[tuple[str, int, int, int], tuple[Any, dict[str, Any]]] = {}
#: Guards :data:`_MODEL_CACHE`, :data:`_LOADING` and :data:`_NETWORK_LOCKS`; held only to look up and store, never
#: while a file is read (a slow disk had held up every other fusion: :func:`_load_model`).
_CACHE_LOCK = threading.Lock()
#: One lock per weights file (its absolute path), held while it is read: two threads asking for one file read it
#: once and share one network (and so its lock); other files and networks passed in do not wait for it.
_LOADING: dict[str, threading.Lock] = {}
#: One lock per network fused (cached weights or a network passed in): see :func:`_network_lock`.
_NETWORK_LOCKS: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()


def _network_lock(model: Any) -> threading.RLock:
    """The lock a fusion holds while it uses ``model``.

    A fusion moves the network to its device, puts it in eval mode and, after it, back where and as it was
    (:func:`fuse_arrays`). Two threads fusing with one network (the cached shipped weights, or a network passed
    in: the Slicer console, a user's script) did so under each other: one thread's "as it was" was the other's
    eval mode on its device, so a network passed in training mode came back in eval mode (reproduced on the CPU
    with two threads), and a CUDA fusion moved the cached network under a CPU fusion running it. One fusion at a
    time per network; fusions with other networks (2D and 3D weights, other files) still run side by side.
    Re-entrant: a progress callback may fuse with the same network.
    """
    with _CACHE_LOCK:
        lock = _NETWORK_LOCKS.get(model)
        if lock is None:
            lock = _NETWORK_LOCKS[model] = threading.RLock()
        return lock

#: Smallest image side per-study adaptation accepts (the SSIM term's 7-voxel window must fit).
MIN_ADAPT_SIZE = 8

#: Slices (2D network) or patches (3D network) of a volume each adaptation step runs on.
ADAPT_BATCH = 4


#: Times one adaptation step is run again after its GradScaler skipped it (float16 autocast only), each
#: time at half the loss scale: 65536 -> 1.
_MAX_SCALE_BACKOFFS = 16


#: Voxel anisotropy (largest / smallest spacing) from which fusing a volume with a 3D network warns. Measured on
#: MNI152 pairs (t1/pet, t2/ct; shipped 3D weights, blend) resampled to 1 x 1 x r mm and fused there, against
#: fusing at 1 mm and resampling the result, mutual information was 1.6-4.8 % lower at r = 2, 3.5-8.2 % at r = 3
#: and 6.3-14 % at r = 5, SSIM lower too; from r = 3 the 2D weights (slice by slice across the thick axis) scored
#: higher than the 3D network on most metrics (README).
ANISOTROPY_WARNING_RATIO = 3.0


#: Largest sliding-window side accepted (a 1024^3 window's activations are already hundreds of GB).
MAX_ROI_SIZE = 1024


def _whole_number(value: Any, name: str, minimum: int, maximum: int | None = None, example: str = "") -> int:
    """``value`` (or a string holding one, e.g. "8") as an int within [minimum, maximum], else a clear
    InputError (not torch's or range()'s error, nor silently truncated: 1.5 adaptation steps are not 1,
    a batch of -1 slices is not a batch)."""
    number: Any = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    whole = whole_number(number, minimum, maximum)
    if whole is None:
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise InputError(f"{name} must be a whole number {bounds} (got {value!r}).",
                         f"Give a whole number {bounds}{', e.g. ' + example if example else ''}.")
    return whole


def _load_model(weights: Any, spatial_dims: int) -> tuple[Any, dict[str, Any]]:
    """(network, metadata) from a path (cached per file: a file replaced on disk is read again), a
    network, or the shipped default."""
    from .weights import default_weights_path, load_weights

    if weights is not None and hasattr(weights, "config") and hasattr(weights, "state_dict"):
        return weights, {"architecture": weights.config.to_dict(), "training": {}}
    if weights is None:
        # 2D and 3D images both use the shipped 2D weights by default (a volume slice by slice:
        # about 5x faster than the 3D network's sliding window on a CPU); "3d" picks the 3D weights
        path = default_weights_path(2)
    elif isinstance(weights, str) and weights.lower() in WEIGHT_ALIASES:
        path = default_weights_path(WEIGHT_ALIASES[weights.lower()])
    else:
        path = weights
    try:
        st = os.stat(path)
        # a file replaced on disk (atomic rename: a new inode; rewritten: a new time) is read again
        key = (os.path.abspath(os.fspath(path)), st.st_ino, st.st_mtime_ns, st.st_size)
    except OSError:  # missing/unreadable: load_weights raises the clear error
        return load_weights(path)
    # two threads asking for one file share one network (and so its lock). The file is read under its own lock,
    # not the cache's: a file read from a slow disk (a network share, a first read) had held _CACHE_LOCK, which
    # every fusion takes (_network_lock), so a fusion with a network passed in or already cached waited for it
    with _CACHE_LOCK:
        loading = _LOADING.setdefault(key[0], threading.Lock())
    with loading:
        with _CACHE_LOCK:
            cached = _MODEL_CACHE.get(key)
        if cached is None:
            cached = load_weights(path)
            with _CACHE_LOCK:
                for stale in [k for k in _MODEL_CACHE if k[0] == key[0]]:  # an older version of this file
                    del _MODEL_CACHE[stale]
                _MODEL_CACHE[key] = cached
        return cached


# glibc mallopt() parameters and their defaults (malloc.h; mallopt cannot read the current values)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
_MALLOC_LOCK = threading.Lock()
_malloc_users = 0
#: Whether volume inference may retune glibc's malloc (see :func:`_reuse_freed_memory`). That is a
#: process-wide setting, so a library leaves it alone inside someone else's process (3D Slicer, the
#: web app, a user's script: False); the ``mmfusion`` command, whose process it is, turns it on.
KEEP_FREED_MEMORY = False


def _glibc() -> Any:
    """The C library when it is glibc (has mallopt and malloc_trim), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


@contextlib.contextmanager
def _reuse_freed_memory() -> Iterator[None]:
    """While the network runs, keep the memory torch frees for its next tensors (glibc only).

    Each forward pass of a batch of 256x256 slices allocates activations of 16-50 MB. glibc serves
    blocks that large with mmap and unmaps them on free (smaller ones are trimmed off the heap's
    top), so the next batch faults every page in again, zero-filled by the kernel: on a 256^3
    volume that was ~6 million page faults and 40 % of the CPU time (`/usr/bin/time -v`: 17-23 s of
    system time). Serving them from the heap and not trimming it lets the next batch reuse the
    pages; the arithmetic and so the result are unchanged, but the fusion's own peak is higher (the heap keeps
    what a pass frees in pieces: up to 1.5x, 1473 against 979 MiB on 32x512x512; :data:`CPU_KEPT_MEMORY_FACTORS`,
    which the memory check uses then), while the whole command's peak on a 256^3 volume stayed about the same. The
    documented defaults are put back afterwards and the kept memory returned to the system
    (malloc_trim). Not quite the state before: glibc cannot report the current values, so values set
    with MALLOC_MMAP_MAX_/MALLOC_TRIM_THRESHOLD_ or an earlier mallopt are replaced by the defaults, and
    any mallopt turns off glibc's dynamic mmap threshold for the rest of the process (hence opt-in).
    Nested or concurrent uses share one setting (counted).
    """
    global _malloc_users
    libc = _glibc() if KEEP_FREED_MEMORY else None
    if libc is None:
        yield
        return
    with _MALLOC_LOCK:
        if _malloc_users == 0:
            libc.mallopt(_M_MMAP_MAX, 0)
            libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 30)
        _malloc_users += 1
    try:
        yield
    finally:
        with _MALLOC_LOCK:
            _malloc_users -= 1
            if _malloc_users == 0:
                libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)


def _pad_to_multiple(x: Any, multiple: int) -> tuple[Any, list[int]]:
    import torch.nn.functional as F

    spatial = x.shape[2:]
    pads = []
    for s in reversed(spatial):
        extra = (-s) % multiple
        pads += [extra // 2, extra - extra // 2]
    if any(pads):
        x = F.pad(x, pads, mode="replicate")
    return x, pads


def _crop(x: Any, pads: list[int]) -> Any:
    if not any(pads):
        return x
    dims = x.dim() - 2
    index = [slice(None), slice(None)]
    for d in range(dims):
        lo, hi = pads[2 * (dims - 1 - d)], pads[2 * (dims - 1 - d) + 1]
        index.append(slice(lo, x.shape[2 + d] - hi))
    return x[tuple(index)]


def _forward_padded(model: Any, a: Any, b: Any, amp: bool) -> tuple[Any, Any]:
    import torch

    multiple = model.config.size_multiple
    ap, pads = _pad_to_multiple(a, multiple)
    bp, _ = _pad_to_multiple(b, multiple)
    with torch.autocast(a.device.type, dtype=torch.float16, enabled=amp):
        fused, weight = model(ap, bp)
    return _crop(fused.float(), pads), _crop(weight.float(), pads)


#: Sliding-window blending: each window's prediction weighted by a Gaussian of sigma = this x the window side.
WINDOW_SIGMA_SCALE = 0.125


def window_weights(roi: Sequence[int], sigma_scale: float = WINDOW_SIGMA_SCALE) -> Any:
    """The Gaussian weight of each voxel of a sliding window (1 at the centre), as a (1, 1, *roi) tensor.

    MONAI's own map (``mode="gaussian"``) is the same Gaussian floored at 1e-3, a floor that 58 % of a
    3D window lies on (every voxel more than 0.47 window sides from the centre, at any window size).
    Where only floored voxels of two windows overlap (near the volume's faces and edges, and between
    windows offset along two or three axes) they were blended 50/50 instead of by distance, so the
    blend jumped where a window began or ended: a seam of up to half the windows' disagreement. Not
    floored, a window starting inside another one weighs under 1 % of it there (25 % overlap) and the
    blend stays smooth; the smallest weight (a corner of a cube window) is ~6e-11, far above float32's
    underflow, so the blend's sum of weights is never 0.
    """
    import torch

    weights = torch.ones((), dtype=torch.float64)
    for side in roi:
        centre = (side - 1) / 2.0
        x = torch.arange(side, dtype=torch.float64) - centre
        weights = weights[..., None] * torch.exp(-0.5 * (x / (sigma_scale * side)) ** 2)
    return weights.to(torch.float32)[None, None]


def predict(model: Any, a: np.ndarray, b: np.ndarray, *, device: Any, batch_size: int = 8,
            roi_size: int = 96, progress: ProgressCallback | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Run the network on normalised arrays (2D or 3D, same shape); returns (fused, weight) arrays.

    A 2D network runs 3D arrays as batches of axial slices; a 3D network runs them with
    sliding-window inference (``roi_size`` cubes, 25 % overlap, Gaussian blending: :func:`window_weights`).
    ``model`` is moved to ``device`` and left there in eval mode (:func:`fuse_arrays` puts a network back as it
    found it); it runs while no other fusion, prediction or adaptation uses it (:func:`_network_lock`).
    """
    # public, and it moves the network and sets its mode: without the lock, a predict() in one thread moved a
    # network to its device (and eval mode) under a fusion with it in another, which then put it back under predict
    with _network_lock(model):
        return _predict(model, a, b, device=device, batch_size=batch_size, roi_size=roi_size, progress=progress)


def _predict(model: Any, a: np.ndarray, b: np.ndarray, *, device: Any, batch_size: int,
             roi_size: int, progress: ProgressCallback | None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`predict`, its network's lock held."""
    import torch

    model = model.to(device).eval()
    amp = device.type == "cuda"
    sd = model.config.spatial_dims
    ta = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    tb = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))
    with torch.no_grad():
        if a.ndim == sd == 2:
            f, w = _forward_padded(model, ta[None, None].to(device), tb[None, None].to(device), amp)
            report(progress, 1.0, "fused")
            return f[0, 0].cpu().numpy(), w[0, 0].cpu().numpy()
        if a.ndim == 3 and sd == 2:
            fused = np.empty(a.shape, np.float32)
            weight = np.empty(a.shape, np.float32)
            for start in range(0, a.shape[0], batch_size):
                stop = min(start + batch_size, a.shape[0])
                f, w = _forward_padded(model, ta[start:stop, None].to(device), tb[start:stop, None].to(device), amp)
                fused[start:stop] = f[:, 0].cpu().numpy()
                weight[start:stop] = w[:, 0].cpu().numpy()
                report(progress, stop / a.shape[0], f"fused slices {stop}/{a.shape[0]}")
            return fused, weight
        if a.ndim == sd == 3:
            from monai.inferers import sliding_window_inference

            rois = _window_sides(a.shape, roi_size, model.config.size_multiple)

            def _predictor(x: Any) -> Any:
                with torch.autocast(x.device.type, dtype=torch.float16, enabled=amp):
                    f, w = model(x[:, :1], x[:, 1:2])
                return torch.cat([f, w], dim=1).float()

            def _progress_cb(*_: Any) -> None:  # pragma: no cover - MONAI's progress hook differs by version
                return None

            x = torch.stack([ta, tb])[None]
            # the Gaussian blend without MONAI's 1e-3 floor, which left seams between windows (window_weights)
            out = sliding_window_inference(x, roi_size=rois, sw_batch_size=_window_batch(batch_size),
                                           predictor=_predictor, overlap=0.25, mode="gaussian",
                                           sigma_scale=WINDOW_SIGMA_SCALE, roi_weight_map=window_weights(rois),
                                           padding_mode="replicate", sw_device=device, device="cpu")
            report(progress, 1.0, "fused (sliding window)")
            return out[0, 0].numpy(), out[0, 1].numpy()
    raise InputError(f"A {sd}D fusion network cannot fuse {a.ndim}D images.",
                     "Use 2D weights for 2D slices (3D volumes work with 2D or 3D weights).")


def _window_sides(shape: Sequence[int], roi_size: int, multiple: int) -> list[int]:
    """The sides of the 3D network's sliding windows on a volume of ``shape``: ``roi_size`` down to the network's size
    multiple, or the volume's side rounded up to it where that is smaller (MONAI pads a smaller volume to the whole
    window, so a 5-slice slab had run 96 slices of zeros: 5.1 s -> 0.9 s)."""
    roi = int(max(multiple, roi_size - roi_size % multiple))
    return [min(roi, multiple * math.ceil(side / multiple)) for side in shape]


def _window_batch(batch_size: int) -> int:
    """The sliding windows one forward pass of the 3D network runs on: a quarter of ``batch_size``, at least 1."""
    return max(1, batch_size // 4)


def adapt(model: Any, a: np.ndarray, b: np.ndarray, *, steps: int, lr: float = 1e-3,
          loss_weights: LossWeights | None = None, seed: int = 0, device: Any = None, patch: int = 96,
          batch_size: int = 4, progress: ProgressCallback | None = None, amp: bool | None = None) -> Any:
    """A copy of ``model`` fine-tuned on one normalised pair with the unsupervised loss.

    2D pairs with a 2D network use the whole image each step; 3D volumes use random batches of
    axial slices (2D network) or random ``patch`` cubes (3D network), drawn from a generator seeded
    with ``seed``. On CUDA the steps run under float16 autocast with a GradScaler (as training's):
    without one, small gradients flushed to zero in float16.

    ``amp``: None (default) float16 autocast on CUDA only; True/False force it on or off (True on the
    CPU runs the CUDA path under ``torch.autocast("cpu")`` with a CPU GradScaler, as the tests do).
    ``model`` itself is not changed; it is copied while no other fusion or prediction uses it
    (:func:`_network_lock`), and the copy is fine-tuned without holding up fusions with ``model``.
    """
    import torch

    from .training import _float16_amp, _optimizer_step

    device = device or torch.device("cpu")
    # copied under the network's lock: a fusion in another thread moves the network to its device and back, and
    # a copy taken meanwhile could hold its parameters part on one device and part on the other
    with _network_lock(model):
        tuned = copy.deepcopy(model)
    tuned = tuned.to(device).train()
    sd = tuned.config.spatial_dims
    loss_fn = FusionLoss(sd, loss_weights)
    opt = torch.optim.Adam(tuned.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(int(seed))
    ta = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    tb = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))
    amp, scaler = _float16_amp(torch, device, amp)
    multiple = tuned.config.size_multiple
    if a.ndim == 3 and sd == 2:
        # only slices with content: empty slices would pull the weights towards nothing
        content = ((ta > 0.05) | (tb > 0.05)).flatten(1).float().mean(1)
        candidates = torch.nonzero(content > 0.02).flatten()
        if candidates.numel() == 0:
            candidates = torch.arange(a.shape[0])
    for step in range(steps):
        if a.ndim == sd:
            if sd == 2:
                xa, xb = ta[None, None], tb[None, None]
            else:
                xa, xb = _random_patches(ta, tb, patch, batch_size, gen, multiple)
        else:
            idx = candidates[torch.randint(candidates.numel(), (batch_size,), generator=gen)]
            xa, xb = ta[idx, None], tb[idx, None]
        xa, xb = xa.to(device), xb.to(device)
        xa_p, pads = _pad_to_multiple(xa, multiple)
        xb_p, _ = _pad_to_multiple(xb, multiple)
        for _ in range(_MAX_SCALE_BACKOFFS + 1):
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                fused, _ = tuned(xa_p, xb_p)
            loss, _ = loss_fn(_crop(fused.float(), pads), xa, xb)
            # a step the GradScaler skipped (its gradients overflowed float16; then it halves the loss
            # scale) is run again on the same batch: a short adaptation would otherwise lose steps (its
            # first one at the initial scale 65536 overflowed on two of four MNI152 slices)
            if _optimizer_step(loss, opt, scaler):
                break
        report(progress, (step + 1) / steps, f"adapting {step + 1}/{steps} loss {float(loss.detach()):.4f}")
    return tuned.eval()


def _patch_sides(shape: Sequence[int], patch: int, multiple: int) -> list[int]:
    """The sides of the 3D network's adaptation patches in a volume of ``shape``: ``patch`` (the roi size), or the
    volume's side where it is smaller, down to the network's size multiple (a side below it as it is)."""
    size = [min(patch, s) for s in shape]
    return [max(multiple, s - s % multiple) if s >= multiple else s for s in size]


def _random_patches(ta: Any, tb: Any, patch: int, n: int, gen: Any, multiple: int) -> tuple[Any, Any]:
    import torch

    size = _patch_sides(ta.shape, patch, multiple)
    pa, pb = [], []
    for _ in range(n):
        starts = [int(torch.randint(max(1, s - p + 1), (1,), generator=gen)) for s, p in zip(ta.shape, size)]
        sl = tuple(slice(st, st + p) for st, p in zip(starts, size))
        pa.append(ta[sl])
        pb.append(tb[sl])
    return torch.stack(pa)[:, None], torch.stack(pb)[:, None]


def _falls_back(device: Any) -> bool:
    """Whether ``device`` (as :func:`training.resolve_device` takes it: a string or None) is "auto", which falls back
    to the CPU where CUDA runs out of memory (:func:`fuse_arrays`)."""
    return (device or "auto").strip().lower() == "auto"


def adaptation_step(config: Any, shape: Sequence[int], roi_size: int) -> tuple[list[int], int]:
    """(the sides of each patch one adaptation step runs the network on, padded to its size multiple as
    :func:`adapt` pads them; how many patches a step takes) for arrays of ``shape`` as :func:`fuse_arrays` passes them
    (a 2D network's slicing axis first): a 2D image whole, batch 1; :data:`ADAPT_BATCH` slices of a volume (2D
    network) or patches of ``roi_size`` voxels a side, the volume's where it is smaller (3D network)."""
    multiple, dims = config.size_multiple, config.spatial_dims
    if len(shape) == dims == 2:
        sides, batch = list(shape), 1
    elif dims == 2:
        sides, batch = list(shape[1:]), ADAPT_BATCH
    else:
        sides, batch = _patch_sides(shape, roi_size, multiple), ADAPT_BATCH
    return [multiple * math.ceil(side / multiple) for side in sides], batch


def check_adaptation_size(config: Any, shape: Sequence[int], steps: int) -> None:
    """Refuse a per-study adaptation (``steps`` > 0) of arrays of ``shape`` (as :func:`fuse_arrays` adapts on them: a
    2D network's slicing axis first) with a side the network sees under :data:`MIN_ADAPT_SIZE`. :func:`fuse_arrays`
    refuses it before any step, :func:`check_adaptation` before the registration of ``mmfusion run`` and the Logic's
    ``run`` (it had been refused only once the registration had run)."""
    sides = list(shape[-config.spatial_dims:])
    if steps > 0 and min(sides) < MIN_ADAPT_SIZE:
        shown = "x".join(str(side) for side in reversed(sides))  # ITK's x, y(, z) order, as users read sizes
        raise InputError(f"Per-study adaptation needs images of at least {MIN_ADAPT_SIZE} voxels along each "
                         f"axis the network sees (got {shown}).",
                         "Fuse this image without adaptation (adapt_steps=0, CLI without --adapt).")


def check_adaptation_memory(config: Any, shape: Sequence[int], *, steps: int, roi_size: int, device: Any,
                            falls_back: bool = False) -> None:
    """Refuse a per-study adaptation whose step needs more memory than ``device`` has, by train-fusion's rule
    (``training.memory_shortfall``: the activations autograd keeps, times ``STEP_MEMORY_FACTOR``, against the GPU's
    free memory or the memory available to this process on the CPU), before its first step: a 4096x4096 pair (23 GB
    adapted on the whole image every step) had been killed by the kernel, or CUDA had run out of memory, after the
    wait. The fix names what fits: no adaptation, fewer pixels (resampled or cropped), a smaller ``roi_size`` (3D
    network), the CPU.

    Args:
        config: the network's architecture.
        shape: the arrays' shape as :func:`fuse_arrays` adapts on them (a 2D network's slicing axis first).
        steps: the adaptation steps (for the message).
        roi_size: the 3D network's patch side.
        device: the torch device the adaptation runs on.
        falls_back: the device was "auto": on CUDA, a step that does not fit there runs on the CPU once CUDA runs
            out of memory (:func:`fuse_arrays`), so it is refused only where it fits on neither.

    Raises:
        InputError: the step would not fit.
    """
    import torch

    from ...io import size_text
    from .training import memory_shortfall

    sides, batch = adaptation_step(config, shape, roi_size)
    short = memory_shortfall(config, sides, batch, device)
    if short is not None and falls_back and device.type == "cuda":
        device = torch.device("cpu")
        short = memory_shortfall(config, sides, batch, device)
    if short is None:
        return
    need, free, what = short
    dims, multiple = config.spatial_dims, config.size_multiple
    shown = "x".join(str(side) for side in reversed(sides))  # ITK's x, y(, z) order, as users read sizes
    if len(shape) == dims == 2:
        step = f"the whole {shown}-pixel image every step"
    elif dims == 2:
        step = f"{batch} of its {shown}-pixel slices every step"
    else:
        step = f"{batch} patches of {shown} voxels every step (roi_size {roi_size})"
    scale = (free / need) ** (1 / len(sides))  # sides of what fits, the step's memory growing as its voxels
    if dims == 3:
        # the largest roi_size whose step fits, bisected (the step grows with it): the patches keep the volume's sides
        # where it is smaller, so a cube of the room (48 for 512 MiB) had been named where 68 fits on a 24x256x256
        # thick-slice series and 116 on 8x512x512
        # bytes per voxel of one patch (the batch of them), and the roi multiples: fits at low (0: none), not at high
        per_voxel, low, high = need / math.prod(sides), 0, roi_size // multiple
        while high - low > 1:
            mid = (low + high) // 2
            fits = per_voxel * math.prod(adaptation_step(config, shape, mid * multiple)[0]) <= free
            low, high = (mid, high) if fits else (low, mid)
        roi = low * multiple
        smaller = (f"a smaller roi_size (Python and the Slicer Logic: roi_size={roi} or less), or " if roi >= multiple
                   else "")
    else:
        fitting = "x".join(str(max(1, int(side * scale))) for side in reversed(sides))
        smaller = (f"the pair resampled to a coarser grid or cropped to {'slices of ' if len(shape) == 3 else ''}"
                   f"about {fitting} pixels or fewer (e.g. Slicer's Crop Volume, its spacing scale), or ")
    raise InputError(f"Per-study adaptation ({steps} step(s): adapt_steps, CLI --adapt) needs about "
                     f"{size_text(need)} on {device.type} for the {dims}D network's activations (it fine-tunes on "
                     f"{step}), more than the {size_text(free)} {what}: it would run out of memory.",
                     "Fuse without adaptation (adapt_steps=0; CLI: leave out --adapt), or adapt with less: "
                     f"{smaller}free memory" + (", or adapt on the CPU (device='cpu', CLI --deep-device cpu)"
                                                 if device.type == "cuda" else "") + ".")


#: Peak memory of a fusion's forward pass over the bytes its tensors hold at once (``training._kept_per_voxel`` with
#: ``inference``: 320 bytes a pixel or voxel for the shipped 2D and 3D networks, 160 under float16 autocast): the
#: allocator's slack and the convolutions' workspace. On CUDA (unmeasured); the CPU's: :data:`CPU_MEMORY_FACTORS`.
INFERENCE_MEMORY_FACTOR = 1.6

#: The voxels of a pass (slices or windows, times their voxels) up to which each of :data:`CPU_MEMORY_FACTORS`' rows
#: holds: at 2^20 a pass's 8-channel float32 tensors are 32 MiB, glibc's largest mmap threshold (it starts at 128 KiB
#: and rises to the size of the blocks a process frees), below which they come from the heap, which keeps what a
#: pass frees in pieces the next pass cannot always reuse.
CPU_PASS_VOXELS = (2 ** 18, 2 ** 20)

#: The CPU's peak over the bytes the network's tensors hold at once (the factor of :func:`inference_memory`'s
#: activations), (one pass, several) for passes of up to 2^18 voxels, up to 2^20, more: the peak resident size over
#: them measured (``python benchmarks/deep_fusion_memory.py``, one thread, the library's allocator settings) was, one
#: pass: 1.63-1.89 (2^16-2^18 voxels), 1.48-1.64 (2^19-2^20), 1.34-1.39 (2.4-4.2 million); several: 1.72-2.13
#: (2^17-2^20; the most, the 3D network's 96^3 windows one at a time), 1.52-1.59 (1.8-2.1 million). The figures
#: leave room for the run-to-run spread (the same case measured 0.1 apart).
CPU_MEMORY_FACTORS = ((2.0, 2.3), (1.75, 2.3), (1.6, 1.75))

#: :data:`CPU_MEMORY_FACTORS` where the fusion runs with :data:`KEEP_FREED_MEMORY` on (the ``mmfusion`` command):
#: glibc then serves every block from its heap, the passes' largest too, and returns none of it until the fusion ends,
#: so what a pass frees in pieces stays resident whatever its size. Measured (``python
#: benchmarks/deep_fusion_memory.py --keep-freed-memory``, the same 21 cases), one pass: 1.69-1.93 (2^16-2^18 voxels),
#: 1.50-1.79 (2^19-2^20), 1.63-1.73 (2.1-4.2 million; a 1536x1536 image once 2.04 in the whole suite's run, 1513 MiB,
#: where three runs alone had given 1.65-1.75); several: 1.71-2.38 (2^17-2^18), 1.90-2.55 (2^19-2^20; the
#: most, a 100^3 volume's 8 windows one at a time), 1.60-2.20 (2.1 million).
CPU_KEPT_MEMORY_FACTORS = ((2.1, 2.8), (2.0, 2.8), (2.2, 2.4))


def _keeps_freed_memory() -> bool:
    """Whether a fusion started now keeps freed memory (:func:`_reuse_freed_memory`: :data:`KEEP_FREED_MEMORY` on,
    glibc)."""
    return KEEP_FREED_MEMORY and _glibc() is not None


def _memory_factor(voxels: int, passes: int, amp: bool, kept: bool = False) -> float:
    """The factor of :func:`inference_memory`'s activations for ``passes`` passes of ``voxels`` each (their batch
    included): :data:`INFERENCE_MEMORY_FACTOR` on CUDA (``amp``), else :data:`CPU_MEMORY_FACTORS`' (``kept``:
    :data:`CPU_KEPT_MEMORY_FACTORS`'), never so low that the factor times the voxels falls below the row before's at
    its last voxel count: a row's smaller factor had estimated a 513x513 image at 144 MiB, a 512x512 one at 162."""
    if amp:
        return INFERENCE_MEMORY_FACTOR
    table = CPU_KEPT_MEMORY_FACTORS if kept else CPU_MEMORY_FACTORS
    row = sum(voxels > limit for limit in CPU_PASS_VOXELS)
    factor = table[row][passes > 1]
    return max(factor, table[row - 1][passes > 1] * CPU_PASS_VOXELS[row - 1] / voxels) if row else factor


#: Bytes a voxel of the whole-volume arrays a fusion allocates after :func:`fuse_arrays` has its float32 inputs,
#: on the CPU whatever the device: while the network runs, a 2D network's fused image and weight map (8); the 3D
#: network's sliding window, both inputs stacked (8), MONAI's output (fused and weight, 8) and its count map (4),
#: and the stacked inputs again where MONAI pads them (8, a side below the window not a multiple of the network's);
#: after it, hard selection's fused image (4) and ``registry_method``'s float64 copy of it (8) beside the two maps (8).
_ARRAYS_WHILE_2D, _ARRAYS_WHILE_WINDOWS, _ARRAYS_PADDED, _ARRAYS_AFTER = 8, 20, 8, 20
#: Bytes a voxel ``fusion.fuse`` allocates before it calls the method: both images scaled to 0..1 in float64 (16),
#: and :func:`fuse_arrays`' float32 copies of them (8): counted where the fusion is checked before it starts
#: (:func:`check_adaptation`, before ``mmfusion run``'s registration).
_ARRAYS_BEFORE = 24


def fusion_pass(config: Any, shape: Sequence[int], batch_size: int, roi_size: int) -> tuple[list[int], int]:
    """(the sides of what one forward pass of a fusion runs the network on, padded to its size multiple as
    :func:`_predict` pads them; how many of them) for arrays of ``shape`` as :func:`fuse_arrays` passes them (a 2D
    network's slicing axis first): a 2D image whole, batch 1; ``batch_size`` slices of a volume (2D network), or
    a quarter of it sliding windows (3D network, :func:`_window_sides`)."""
    multiple, dims = config.size_multiple, config.spatial_dims
    if len(shape) == dims == 2:
        return [multiple * math.ceil(side / multiple) for side in shape], 1
    if dims == 2:
        return [multiple * math.ceil(side / multiple) for side in shape[1:]], min(batch_size, int(shape[0]))
    sides = _window_sides(shape, roi_size, multiple)
    return sides, min(_window_batch(batch_size), _window_count(shape, sides))


def _window_count(shape: Sequence[int], sides: Sequence[int]) -> int:
    """The sliding windows of ``sides`` on a volume of ``shape``, as ``monai.inferers.sliding_window_inference`` lays
    them at :func:`predict`'s 25 % overlap (``monai.data.utils.dense_patch_slices``): a volume of one window had been
    counted as a pass of a quarter of ``batch_size`` windows (2: 881 MiB where 431 were measured)."""
    count = 1
    for side, roi in zip(shape, sides):
        if side > roi:
            step = max(1, int(roi * 0.75))
            count *= math.ceil((side - roi) / step) + 1
    return count


def inference_memory(config: Any, shape: Sequence[int], batch_size: int, roi_size: int, *, amp: bool = False,
                     before: bool = False) -> tuple[int, int, int]:
    """About the memory (bytes) a fusion of arrays of ``shape`` takes: (the network's activations for one forward pass
    (:func:`fusion_pass`), on the fusion's device: the tensors it holds at once, ``training._kept_per_voxel``, times
    :func:`_memory_factor` (by the pass's voxels, how many passes there are and whether the fusion keeps freed memory,
    :data:`KEEP_FREED_MEMORY`, as the ``mmfusion`` command's do); the whole-volume arrays on the CPU while it runs;
    those after it). ``amp``: float16 autocast (CUDA); ``before``: counted before ``fusion.fuse`` has scaled the images
    (not in :func:`fuse_arrays`)."""
    from .training import _kept_per_voxel

    sides, batch = fusion_pass(config, shape, batch_size, roi_size)
    pieces = (1 if len(shape) == config.spatial_dims == 2 else int(shape[0]) if config.spatial_dims == 2
              else _window_count(shape, sides))
    per_pass = batch * math.prod(sides)
    activations = int(_memory_factor(per_pass, math.ceil(pieces / batch), amp, _keeps_freed_memory())
                      * _kept_per_voxel(config, amp, inference=True) * per_pass)
    voxels = math.prod(int(side) for side in shape)
    if config.spatial_dims == 3:
        padded = any(side < roi and side % config.size_multiple for side, roi in zip(shape, sides))
        per_voxel = _ARRAYS_WHILE_WINDOWS + (_ARRAYS_PADDED if padded else 0)
    else:
        per_voxel = _ARRAYS_WHILE_2D
    first = _ARRAYS_BEFORE * voxels if before else 0
    return activations, first + per_voxel * voxels, first + _ARRAYS_AFTER * voxels


#: The share of the room that the size a refusal names (``to about 1015x1015 or fewer``) is estimated to take: the
#: room shrinks by a MiB or so as a process maps more, and a run's peak spreads by a few percent from run to run.
SUGGESTED_ROOM = 0.9


def _fitting_shape(shape: Sequence[int], fits: Any) -> list[int]:
    """``shape`` scaled down alike on every axis (at least 1 voxel a side) to the largest that ``fits`` (a predicate
    on a shape), bisected on the scale: the need does not shrink as the voxels do (the 3D network's windows keep their
    side until the volume is smaller; fixed parts), so the room's share of the need, as a scale, had named sizes that
    do not fit."""
    def scaled(scale: float) -> list[int]:
        return [max(1, int(side * scale)) for side in shape]

    low, high = 0.0, 1.0
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if fits(scaled(mid)) else (low, mid)
    return scaled(low)


def check_inference_memory(config: Any, shape: Sequence[int], *, batch_size: int, roi_size: int, device: Any,
                           falls_back: bool = False, before: bool = False) -> tuple[int, Any]:
    """(the batch size to fuse with, the device): ``batch_size``, or the largest of its halvings down to 2 whose fusion
    (:func:`inference_memory`) fits in the memory there is (:func:`devices.available_memory`), which gives the same
    fused image and weight map bit for bit (a batch of 1 did not: 1e-7 off); refused up front where none fits, naming
    the need, the room and what fits: fewer voxels (cropped, resampled), ``batch_size=1`` (where a pass runs more than
    one slice or window) or a smaller ``roi_size`` (Python and the Slicer Logic), the 2D network (a volume the 3D one
    fuses), the CPU. On CUDA the activations are checked against the GPU's free memory and the
    arrays (on the CPU) against the CPU's; with ``falls_back`` (device "auto") a fusion CUDA cannot take runs on the
    CPU (:func:`fuse_arrays`' fallback), where it is checked. Nothing is checked where the memory cannot be told (the
    CPU of macOS or Windows).

    Args:
        config: the network's architecture.
        shape: the arrays' shape as :func:`fuse_arrays` passes them to :func:`predict` (a 2D network's slicing axis
            first).
        batch_size: the slices (2D network) per forward pass; a quarter of it, the 3D network's windows.
        roi_size: the 3D network's window side.
        device: the torch device the fusion runs on.
        falls_back: the device was "auto" (on CUDA, the CPU takes a fusion CUDA runs out of memory for).
        before: checked before ``fusion.fuse`` has scaled the images (:func:`check_adaptation`): their float64 and
            float32 copies are counted too.

    Raises:
        InputError: no batch size fits.
    """
    import torch

    from ...devices import available_memory
    from ...io import size_text

    cpu = torch.device("cpu")
    windows = len(shape) == config.spatial_dims == 3
    sliced = len(shape) == 3 and config.spatial_dims == 2
    # the passes' batch (slices or windows) halved while it stays 2 or more; batch_size gives a quarter as windows
    per_pass = _window_batch(batch_size) if windows else batch_size
    scale = 4 if windows else 1
    batches = [batch_size] + [per_pass // 2 ** k * scale for k in range(1, per_pass.bit_length())
                              if per_pass // 2 ** k >= 2] if (windows or sliced) else [batch_size]

    def needs(dev: Any, batch: int, shape: Sequence[int]) -> tuple[tuple[tuple[Any, int], ...], int, int]:
        """((where, need) for each device a fusion of ``shape`` at ``batch`` on ``dev`` takes memory on: on the CPU all
        of it; on CUDA the activations there, the arrays on the CPU; its activations; its arrays)."""
        activations, during, after = inference_memory(config, shape, batch, roi_size, amp=dev.type == "cuda",
                                                      before=before)
        return (((dev, max(activations + during, after)),) if dev.type == "cpu"
                else ((dev, activations), (cpu, max(during, after)))), activations, max(during, after)

    def shortfall(dev: Any, batch: int) -> tuple[int, int, str, Any, int, int] | None:
        """(need, room, what the room is, where, activations, arrays) where a fusion at ``batch`` on ``dev`` does not
        fit."""
        wheres, activations, arrays = needs(dev, batch, shape)
        for where, need in wheres:
            room = available_memory(where)
            if room is not None and need > room[0]:
                # what the need counts: on a GPU the activations, on the CPU the arrays (and the activations there)
                return (need, room[0], room[1], where, activations if where == dev else 0,
                        arrays if where.type == "cpu" else 0)
        return None

    for last in ([device, cpu] if falls_back and device.type == "cuda" else [device]):
        for batch in batches:
            short = shortfall(last, batch)
            if short is None:
                return batch, last
    need, free, what, where, activations, arrays = short  # the smallest batch, on the last device tried
    dims, batch = config.spatial_dims, batches[-1]
    sides, passes = fusion_pass(config, shape, batch, roi_size)
    shown = "x".join(str(side) for side in reversed(shape))  # ITK's x, y(, z) order, as users read sizes
    piece = "x".join(str(side) for side in reversed(sides))
    run = (f"the whole {piece}-pixel image in one pass" if not (windows or sliced)
           else f"{passes} {piece}-pixel slice(s) a pass, batch_size {batch}" if sliced
           else f"{passes} {piece}-voxel window(s) a pass, roi_size {roi_size} and batch_size {batch}")
    fitting = "x".join(str(side) for side in reversed(_fitting_shape(
        shape, lambda smaller: dict(needs(last, batch, smaller)[0])[where] <= SUGGESTED_ROOM * free)))
    levers = []
    if passes > 1:  # batch_size=1 runs one slice or window a pass: no help where a pass has one already
        levers.append("batch_size=1 (Python and the Slicer Logic; it fuses about 1e-7 off larger batches)")
    if windows and roi_size > config.size_multiple:
        levers.append("a smaller roi_size (Python and the Slicer Logic)")
    if windows:
        levers.append("the 2D network, which fuses it slice by slice (weights='2d'; CLI --model 2d)")
    if where.type == "cuda":  # the GPU was short (not falling back): the CPU may take it
        levers.append("fuse on the CPU (device='cpu', CLI --deep-device cpu)")
    raise InputError(f"Deep fusion of the {shown} {'image' if len(shape) == 2 else 'volume'} needs about "
                     f"{size_text(need)} on {where.type} ("
                     + "; ".join(([f"the {dims}D network's activations for {run}: {size_text(activations)}"]
                                  if activations else [])
                                 + ([f"the fusion's whole-image arrays: {size_text(arrays)}"] if arrays else []))
                     + "), more than the "
                     f"{size_text(free)} {what}: it would run out of memory.",
                     "Fuse fewer voxels: the pair cropped, or resampled to a coarser grid, to about "
                     f"{fitting} or fewer (e.g. Slicer's Crop Volume, its spacing scale), or "
                     + "".join(f"{lever}, or " for lever in levers) + "free memory.")


def check_adaptation(image: sitk.Image, *, weights: Any = None, adapt_steps: Any = None, device: Any = "auto",
                     roi_size: Any = 96, batch_size: Any = 8, **_: Any) -> None:
    """Refuse now, on the grid the fusion runs on (``image``: the fixed one), a deep fusion that :func:`fuse_arrays`
    would refuse: a per-study adaptation of an image side under :data:`MIN_ADAPT_SIZE` (:func:`check_adaptation_size`)
    or for want of memory (:func:`check_adaptation_memory`), or its inference at the smallest batch
    (:func:`check_inference_memory`, counting the copies ``fusion.fuse`` makes of the images); ``pipeline.run``
    (``mmfusion run``) and the Slicer Logic's ``runPipeline`` call it before the registration. The other parameters
    (``fuse``'s, taken and ignored here) are checked by ``fusion.check_parameters``."""
    from .training import resolve_device

    steps, _, _, batch = check_settings(adapt_steps=adapt_steps, batch_size=batch_size)
    dim = image.GetDimension()
    if dim not in (2, 3):
        return
    model, _ = _load_model(weights, dim)
    if model.config.spatial_dims > dim:  # fuse_arrays refuses it, naming the weights
        return
    shape = list(image.GetSize()[::-1])  # the arrays' axis order
    if dim == 3 and model.config.spatial_dims == 2:  # sliced across its thickest axis, as fuse_arrays slices it
        axis = slice_axis(image.GetSpacing()[::-1])
        shape.insert(0, shape.pop(axis))
    check_adaptation_size(model.config, shape, steps)
    roi = _whole_number(roi_size, "roi_size", model.config.size_multiple, MAX_ROI_SIZE, "96")
    dev, auto = resolve_device(device), _falls_back(device)
    if steps > 0:
        check_adaptation_memory(model.config, shape, steps=steps, roi_size=roi, device=dev, falls_back=auto)
    check_inference_memory(model.config, shape, batch_size=batch, roi_size=roi, device=dev, falls_back=auto,
                           before=True)


def check_settings(*, adapt_steps: Any = None, adapt_lr: Any = 1e-3, loss_weights: Any = None,
                   batch_size: Any = 8, selection: str = "hard") -> tuple[int, float, LossWeights, int]:
    """The settings of :func:`fuse_arrays` that need neither the images nor the network, checked.

    ``fusion.check_parameters`` (``pipeline.run`` before registering, ``mmfusion fuse`` before reading
    the images) calls it, so that e.g. ``adapt_steps=-1`` is refused before that work, as ``fuse_arrays``
    would refuse it after.

    Returns:
        (adaptation steps, adaptation learning rate, loss weights, batch size).

    Raises:
        InputError: a selection other than hard/blend, a batch size below 1, adaptation steps that are not a
            whole number >= 0, a learning rate that is not a positive number, or unparsable loss weights.
    """
    if selection not in ("blend", "hard"):
        raise InputError(f"Unknown selection '{selection}'.", "Use 'hard' (default) or 'blend'.")
    batch_size = _whole_number(batch_size, "batch_size", 1, example="8")
    if isinstance(loss_weights, str) or loss_weights is None:
        loss_weights = LossWeights.parse(loss_weights) if loss_weights else LossWeights()
    steps = (DEFAULT_ADAPT_STEPS if adapt_steps is None
             else _whole_number(adapt_steps, "adapt_steps", 0, example="0 (no adaptation) or 80"))
    try:
        adapt_lr = float(adapt_lr)
    except (TypeError, ValueError):
        adapt_lr = float("nan")
    if not (np.isfinite(adapt_lr) and adapt_lr > 0):
        raise InputError(f"adapt_lr must be a positive number (got {adapt_lr!r}).",
                         "Use e.g. adapt_lr=1e-3 (default).")
    return steps, adapt_lr, loss_weights, batch_size


def fuse_arrays(a: np.ndarray, b: np.ndarray, *, weights: Any = None, adapt_steps: int | None = None,
                adapt_lr: float = 1e-3, loss_weights: Any = None, seed: int = 0, device: str = "auto",
                batch_size: int = 8, roi_size: int = 96, selection: str = "hard",
                progress: ProgressCallback | None = None, spacing: Sequence[float] | None = None
                ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Fuse two arrays of one shape scaled to 0..1 (the fusion registry's contract).

    Args:
        a: first (anatomical) array, 2D (y, x) or 3D (z, y, x), values 0..1.
        b: second array, same shape, values 0..1.
        weights: ``.safetensors`` weights file, a network, or the name of shipped weights: None or
            "2d" (default: the 2D network; 3D volumes slice by slice) or "3d" (the 3D network,
            sliding-window inference on volumes; about 5x slower on a CPU).
        adapt_steps: per-study adaptation steps (fine-tuning on this pair with the unsupervised loss);
            None: :data:`DEFAULT_ADAPT_STEPS` (0).
        adapt_lr: learning rate of the adaptation.
        loss_weights: :class:`LossWeights` or "ssim,gradient,intensity" text for the adaptation.
        seed: seed of the adaptation's random sampling.
        device: "auto" (CUDA when present, CPU fallback), "cpu", "cuda" or "cuda:N".
        batch_size: slices per forward pass (2D network on a volume); sliding-window batch is a quarter.
        roi_size: sliding-window cube side (3D network) and adaptation patch side.
        selection: "hard" (default: each voxel copied from the input its weight map favours, so
            every grey level of the sources is kept exactly, which edge (Qabf), VIF and mutual
            information scores reward) or "blend" (the network's own output: the weighted blend plus
            the detail residual, smoother).
        progress: progress callback.
        spacing: voxel spacing in the arrays' axis order ((z, y, x) for a volume); a 2D network then fuses a
            volume across its clearly thickest axis (:func:`slice_axis`). None: along the first axis.

    Returns:
        (fused 0..1, weight of ``a`` 0..1, parameters used) as float32 arrays of the inputs' shape; for a
        volume fused by a 2D network the parameters name the voxel axis it was sliced along
        (``slice_axis``: "z", "y" or "x", ITK's), and ``warnings`` lists what the user should hear of this
        fusion (:func:`anisotropy_warning`), where there is any.

    Raises:
        InputError: shapes differ, bad settings, a bad weights file, or a per-study adaptation whose step needs more
            memory than the device has (:func:`check_adaptation_memory`), before its first step.
    """
    import torch

    from .training import resolve_device

    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    if a.shape != b.shape or a.ndim not in (2, 3):
        raise InputError(f"Deep fusion needs two 2D or 3D arrays of one shape (got {a.shape} and {b.shape}).",
                         "Resample the second image onto the first (mmfusion resample / mmfusion run) first.")
    if a.size == 0:
        raise InputError(f"Deep fusion was given empty arrays (shape {a.shape}).", "Give images with voxels.")
    for arr, which in ((a, "first"), (b, "second")):
        if not np.isfinite(arr).all():  # one NaN spreads through the convolutions to every voxel
            raise InputError(f"The {which} array holds {int(np.count_nonzero(~np.isfinite(arr)))} NaN or "
                             "infinite values.", "Replace them (e.g. with 0 or the background value) first.")
    dim = a.ndim
    steps, adapt_lr, loss_weights, batch_size = check_settings(
        adapt_steps=adapt_steps, adapt_lr=adapt_lr, loss_weights=loss_weights, batch_size=batch_size,
        selection=selection)
    if spacing is not None:
        try:
            spacing = [float(v) for v in spacing]
        except (TypeError, ValueError):
            spacing = []
        if len(spacing) != dim or not all(math.isfinite(v) and v > 0 for v in spacing):
            raise InputError(f"spacing must be {dim} positive numbers, one per array axis (got {spacing!r}).",
                             "Give the voxel spacing in the arrays' axis order (ITK's reversed), or None.")
    model, meta = _load_model(weights, dim)
    if model.config.spatial_dims > dim:
        raise InputError(f"A {model.config.spatial_dims}D fusion network cannot fuse {dim}D images.",
                         "Use 2D weights for 2D slices (weights='2d', CLI --model 2d); 3D volumes work with 2D or "
                         "3D weights.")
    sliced = dim == 3 and model.config.spatial_dims == 2
    axis = slice_axis(spacing) if sliced else 0
    # the slicing axis first (views): predict and adapt cut volumes along the first axis
    run_a, run_b = (np.moveaxis(a, axis, 0), np.moveaxis(b, axis, 0)) if axis else (a, b)
    roi_size = _whole_number(roi_size, "roi_size", model.config.size_multiple, MAX_ROI_SIZE, "96")
    check_adaptation_size(model.config, run_a.shape, steps)
    dev = resolve_device(device)
    auto = _falls_back(device)
    if steps > 0:  # before the first step: one that did not fit was killed by the kernel (or CUDA) after the wait
        check_adaptation_memory(model.config, run_a.shape, steps=steps, roi_size=roi_size, device=dev,
                                falls_back=auto)
    # before the network runs (and before the adaptation's wait): a fusion past the memory had died in it, killed by
    # the kernel (or a MemoryError); where a smaller batch of slices or windows fits, it runs with that (same result)
    asked = batch_size
    batch_size, dev = check_inference_memory(model.config, run_a.shape, batch_size=batch_size, roi_size=roi_size,
                                             device=dev, falls_back=auto)
    notes: list[str] = []  # the fusion's warnings, returned with what ran (see anisotropy_warning)
    if batch_size != asked:
        notes.append(f"Deep fusion ran batches of {batch_size if sliced else _window_batch(batch_size)} "
                     f"{'slices' if sliced else 'sliding windows'} instead of {asked if sliced else _window_batch(asked)}"
                     f" (batch_size {asked}) to fit in the memory there is: the same result, a little slower.")
    if dim == 3 and model.config.spatial_dims == 3 and spacing:
        # once every setting is checked: a fusion refused (roi_size, a missing GPU) had warned of its voxels first
        note = anisotropy_warning(spacing)
        if note:
            notes.append(note)
    report(progress, 0.0, f"deep fusion on {dev.type}")

    def _run(dev: Any) -> tuple[np.ndarray, np.ndarray]:
        net = model
        if steps > 0:
            net = adapt(model, run_a, run_b, steps=steps, lr=adapt_lr, loss_weights=loss_weights, seed=seed,
                        device=dev, batch_size=ADAPT_BATCH if dim == 3 else 1, patch=roi_size,
                        progress=scaled(progress, 0.0, 0.8))
        fused, weight = predict(net, run_a, run_b, device=dev, batch_size=batch_size, roi_size=roi_size,
                                progress=scaled(progress, 0.8 if steps > 0 else 0.0, 1.0))
        if axis:  # back to the inputs' axis order, as C-ordered arrays (what callers and sitk expect)
            fused, weight = (np.ascontiguousarray(np.moveaxis(x, 0, axis)) for x in (fused, weight))
        return fused, weight

    # a network the caller passed is theirs: predict() puts it in eval mode on the fusion's device, and it had been
    # left there, in eval mode and on the CPU (a network being trained on CUDA, fused for a look, then failed its
    # optimiser's next step on the wrong device, and trained without its training mode). Cached shipped/file
    # weights live on the CPU in eval mode, as before
    # one fusion at a time per network: each moves it to its device and back (_network_lock)
    with _network_lock(model):
        first = next(iter(model.parameters()), None)
        home = first.device if first is not None else torch.device("cpu")
        # each module's own mode: model.train(True) sets every sub-module's, so a part the caller had put in eval
        # mode (a frozen encoder while the rest trains) came back in training mode
        modes = [(module, module.training) for module in model.modules()]
        try:
            with _reuse_freed_memory():
                fused, weight = _run(dev)
        except torch.cuda.OutOfMemoryError:
            if not auto:
                raise
            torch.cuda.empty_cache()
            dev = torch.device("cpu")  # CPU fallback when the GPU is too small for this volume
            with _reuse_freed_memory():
                fused, weight = _run(dev)
        finally:
            model.to(home)
            for module, training in modes:
                module.training = training
    if selection == "hard":
        fused = np.where(weight >= 0.5, a, b)
    # both arrays are this function's own (fresh from predict / np.where): clip them in place
    np.clip(fused, 0.0, 1.0, out=fused)
    np.clip(weight, 0.0, 1.0, out=weight)
    params = {"weights": str(weights) if isinstance(weights, (str, bytes)) or hasattr(weights, "__fspath__")
              else ("default-2d" if weights is None else "model"),
              "adapt_steps": steps, "adapt_lr": adapt_lr, "loss_weights": loss_weights.to_dict(), "seed": seed,
              "device": dev.type, "spatial_dims": int(meta["architecture"]["spatial_dims"]), "selection": selection}
    if sliced:
        params["slice_axis"] = AXIS_NAMES[axis]
    if notes:
        params["warnings"] = notes
    return fused, weight, params


def anisotropy_warning(spacing: Sequence[float]) -> str | None:
    """The warning for a 3D network fusing a volume of strongly anisotropic voxels (e.g. 1 x 1 x 5 mm), which it fuses
    less well than the same volume near-isotropic, and less well than the 2D network slice by slice (measured:
    README); None below :data:`ANISOTROPY_WARNING_RATIO`.

    It travels as the package's other user warnings do (a registration's ``result.warnings``): in the fusion's
    ``FusionResult.warnings`` (:func:`fuse_arrays`' parameters ``"warnings"``), which ``mmfusion fuse``/``run``
    print on stderr and the Slicer module shows in its status line, every fusion. A ``warnings.warn`` had been
    shown once per process (a second fusion in the Slicer console or a script said nothing) and only as a Python
    warning pointing into the package.
    """
    ratio = max(spacing) / min(spacing)
    if ratio < ANISOTROPY_WARNING_RATIO:
        return None
    shown = " x ".join(f"{v:g}" for v in reversed(spacing))  # ITK's x, y, z order, as users read spacings
    return (f"The 3D deep-fusion network fused a volume of {shown} mm voxels ({ratio:.1f}x anisotropic): it was "
            "trained on isotropic voxels, and fused 1 x 1 x 3 to 1 x 1 x 5 mm volumes with 3.5-14 % less mutual "
            "information than the same volumes at 1 mm. Resample both images to near-isotropic voxels first, or use "
            "the 2D weights (weights='2d', CLI --model 2d: the default), which fuse it slice by slice across its "
            "thick axis.")


def fuse_deep(a: sitk.Image, b: sitk.Image, *, progress: ProgressCallback | None = None,
              **params: Any) -> FusionResult:
    """Fuse two grey images on one grid with the deep fusion network (no 8-bit/colour handling).

    Most callers use ``fusion.fuse(a, b, "deep", ...)``, which also handles colour functional
    slices (Y of YCbCr) and the 0..255 display scale; this is the direct sitk entry point.

    Args:
        a: first (fixed, anatomical) image; the result has its geometry and intensity range.
        b: second image, already on ``a``'s grid (same size).
        progress: progress callback.
        **params: see :func:`fuse_arrays` (weights, adapt_steps, adapt_lr, loss_weights, seed, device,
            batch_size, roi_size, selection; not spacing: ``a``'s is used).

    Returns:
        FusionResult with the fused image (float32, ``a``'s geometry and intensity range) and
        ``weights``, the per-voxel weight of ``a`` (0..1).

    Raises:
        InputError: unusable images, different grids, values beyond float32's range, or a bad weights file.
    """
    from .. import check_same_grid
    from .data import normalize

    t0 = time.perf_counter()
    if "spacing" in params:  # the images' own is passed below (as fusion.fuse refuses it too)
        raise InputError("spacing is not a setting of fuse_deep: the images' own voxel spacing is used.",
                         "Leave it out; set the images' spacing (image.SetSpacing) if it is wrong.")
    check_image(a, "first image")
    check_image(b, "second image")
    # the whole grid, not the size alone: the network pairs voxels by index, so an image of the same size
    # placed elsewhere (origin, spacing, direction) would be fused with the wrong anatomy
    check_same_grid(a, b, "first image", "second image")
    largest = float(np.finfo(np.float32).max)
    for image, which in ((a, "first"), (b, "second")):
        view = sitk.GetArrayViewFromImage(image)
        if view.dtype.kind != "f":
            continue
        low, high = float(view.min()), float(view.max())
        # normalize works in float32: a float64 image past its range, or any image whose values span more than
        # it (-3e38 to 3e38: high - low), became infinite there, and was refused as holding "NaN or infinite
        # values" that the image does not hold
        if max(-low, high, high - low) > largest:
            raise InputError(f"The {which} image holds values beyond float32's range (+-3.4e38, their span "
                             f"included): {low:g} to {high:g}; fuse_deep works in float32.",
                             "Rescale it first (e.g. sitk.RescaleIntensity), or use fusion.fuse(a, b, 'deep'), "
                             "which scales the images in float64 and returns the fused image on 0..255.")
    arr_a, lo, hi = normalize(sitk.GetArrayFromImage(a))
    arr_b, _, _ = normalize(sitk.GetArrayFromImage(b))
    # the voxel spacing in the arrays' axis order: a 2D network slices a volume across its thickest axis
    fused, weight, used = fuse_arrays(arr_a, arr_b, progress=progress, spacing=a.GetSpacing()[::-1], **params)
    fused_img = sitk.GetImageFromArray((fused * (hi - lo) + lo).astype(np.float32))
    fused_img.CopyInformation(a)
    weight_img = sitk.GetImageFromArray(weight.astype(np.float32))
    weight_img.CopyInformation(a)
    notes = used.pop("warnings", [])
    return FusionResult(image=fused_img, weights=weight_img, method="deep", parameters=used,
                        seconds=time.perf_counter() - t0, warnings=notes)


def registry_method(a: np.ndarray, b: np.ndarray, *, progress: ProgressCallback | None = None,
                    weights: Any = None, adapt_steps: int | None = None, adapt_lr: float = 1e-3,
                    loss_weights: Any = None, seed: int = 0, device: str = "auto", batch_size: int = 8,
                    roi_size: int = 96, selection: str = "hard", spacing: Sequence[float] | None = None
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """The "deep" entry of :data:`MultimodalFusionLib.fusion.METHODS` (arrays 0..1 in, (fused, weights,
    what ran) out: the device that ran (not "auto"; the CPU after a CUDA out-of-memory fallback), the
    weights (also the default's name), the adaptation steps, the network's dimensions and, for a volume
    fused by a 2D network, the voxel axis it was sliced along; ``warnings``, which ``fusion.fuse`` moves to
    ``FusionResult.warnings``).

    The parameters are those of :func:`fuse_arrays` (explicit, so front ends can list them); ``spacing``
    is the images' voxel spacing, which ``fusion.fuse`` passes (not a user setting).
    """
    fused, weight, used = fuse_arrays(a, b, progress=progress, weights=weights, adapt_steps=adapt_steps,
                                      adapt_lr=adapt_lr, loss_weights=loss_weights, seed=seed, device=device,
                                      batch_size=batch_size, roi_size=roi_size, selection=selection,
                                      spacing=spacing)
    ran = {k: used[k] for k in ("weights", "adapt_steps", "device", "spatial_dims", "slice_axis", "warnings")
           if k in used}
    return fused.astype(np.float64), weight, ran
