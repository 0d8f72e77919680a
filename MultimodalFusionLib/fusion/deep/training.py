"""Unsupervised training of the fusion network: seeded, with progress, checkpoints and resume.

Every epoch re-seeds torch, numpy, the augmentation chain and the data order from ``seed + epoch``
(``monai.utils.set_determinism`` and a ``torch.Generator``), so a run resumed from a checkpoint
continues exactly as the uninterrupted run would, and the same seed gives the same weights on
the CPU. The caller's global random states (Python, numpy, torch) and cuDNN flags are restored
afterwards.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import numbers
import os
import random
import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ...errors import InputError
from ...progress import ProgressCallback, report
from ...validation import whole_number
from .data import MIN_PATCH, check_patch_fits
from .losses import FusionLoss, LossWeights
from .network import FusionNetConfig, build_network

__all__ = ["TrainingConfig", "TrainingResult", "ResumedRun", "open_resume", "train_fusion", "resolve_device",
           "data_fingerprint", "PairsCheck", "training_memory", "memory_shortfall", "check_memory"]


@dataclasses.dataclass
class TrainingConfig:
    """Training hyper-parameters.

    Attributes:
        epochs: passes over the samples.
        batch_size: samples per step.
        lr: Adam learning rate (cosine-decayed to 5 % over the run).
        patch_size: side of the random training patches (pixels/voxels).
        loss_weights: weights of the loss terms.
        seed: seed of initialisation, augmentation and data order.
        device: "auto" (CUDA when present), "cpu", "cuda" or "cuda:N".
        samples_per_epoch: if set, draw this many samples per epoch (with replacement) instead of
            one pass over all samples; keeps epochs short on large data sets.
    """

    epochs: int = 20
    batch_size: int = 8
    lr: float = 2e-3
    patch_size: int = 96  # as `mmfusion train-fusion --patch-size` (README); the shipped weights used 112 / 64
    loss_weights: LossWeights = dataclasses.field(default_factory=LossWeights)
    seed: int = 0
    device: str = "auto"
    samples_per_epoch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["loss_weights"] = self.loss_weights.to_dict()
        return d

    def check(self) -> None:
        """Raise InputError for settings no training can run with (the CLI calls it before reading the pairs).

        Raises:
            InputError: epochs or batch size below 1, a learning rate that is not a positive finite number
                (inf trained NaN weights and wrote them; NaN failed inside torch), a patch side below 16,
                fewer than one sample per epoch, a seed that is not a whole number from 0 to 2^62, or a device
                torch cannot use (see :func:`resolve_device`; it was found only after every pair had been read).
        """
        lr_ok = (isinstance(self.lr, numbers.Real) and not isinstance(self.lr, bool) and math.isfinite(self.lr)
                 and self.lr > 0)  # numpy's float32 too
        if self.epochs < 1 or self.batch_size < 1 or not lr_ok or self.patch_size < MIN_PATCH:
            raise InputError(f"Invalid training settings (epochs {self.epochs}, batch size {self.batch_size}, "
                             f"lr {self.lr}, patch {self.patch_size}).",
                             f"Use epochs >= 1, batch size >= 1, a finite lr > 0 and patch size >= {MIN_PATCH}.")
        if self.samples_per_epoch is not None and self.samples_per_epoch < 1:
            # 0 used to mean "all samples" silently, and a negative count suggested a negative batch size
            raise InputError(f"samples_per_epoch must be at least 1 (got {self.samples_per_epoch}).",
                             "Leave it out (one pass over all samples per epoch) or give a count >= the batch size.")
        if whole_number(self.seed, 0, MAX_TRAINING_SEED) is None:
            # torch's generators take 64-bit seeds (each epoch's is seed + 1000 * epoch): --seed 1e20 had been a
            # ValueError traceback from manual_seed after every pair was read, and a negative seed, which
            # registration refuses, had trained
            raise InputError(f"The training seed must be a whole number from 0 to 2^62, not {self.seed!r}.",
                             "Give e.g. --seed 0 (Python: TrainingConfig(seed=0)); the same seed gives the same "
                             "weights.")
        resolve_device(self.device)


#: The largest training seed: torch's generators take 64-bit seeds, and each epoch draws from seed + 1000 * epoch.
MAX_TRAINING_SEED = 2**62

#: A training step's peak memory over the activations autograd keeps for its backward pass (:func:`_kept_per_voxel`),
#: measured on the CPU (one thread; the peak resident size over batch sizes 1-3): 1180-1280 bytes a pixel for the
#: default 2D network on 512-768-pixel patches (854 kept), 1240-1290 bytes a voxel for the 3D one on 64-96-voxel
#: patches (751 kept).
STEP_MEMORY_FACTOR = 1.6

_KEPT: dict[str, float] = {}  # _kept_per_voxel's counts, by architecture, precision and pass


def _live_per_voxel_bound(config: FusionNetConfig, amp: bool) -> float:
    """Bytes a voxel :func:`_kept_per_voxel` gives with ``inference`` where the torch at hand cannot count them (its
    counting needs torch's private ``torch.utils._python_dispatch.TorchDispatchMode``, and 3D Slicer's PyTorch
    extension installs whichever torch it finds): float32 values (float16 under ``amp``, half) of 10 tensors of the
    encoders' width at full resolution and 2 of each core level's width at its resolution. Never below the count:
    400 bytes (float16 200) for the shipped 2D network and 348 (174) for the 3D one, counted 320 (160); 40 bytes a
    feature channel counted on networks of 4-16 features."""
    scale, core = 1, 0.0
    for width, stride in zip(config.channels, tuple(config.strides) + (1,)):  # the core's levels, the bottom last
        scale *= int(stride)
        core += 2 * width / scale ** config.spatial_dims
    return (4 if not amp else 2) * (10 * config.features + core)


def _kept_per_voxel(config: FusionNetConfig, amp: bool, *, inference: bool = False) -> float:
    """Bytes autograd keeps for the backward pass per voxel of one training patch of a network of ``config`` (the
    forward pass and the loss; ``amp``: under float16 autocast); with ``inference``, the most bytes a forward pass
    without gradients (inference's ``torch.no_grad``) holds at once per voxel (its live tensors, each freed when the
    last one on its storage goes). Counted on patches of 16 (or the network's size multiple above it) at batch 1 and 2,
    whose difference is one patch's without the weights. A network built for it (0.05 s in 2D, 0.2 s in 3D on one
    thread; once per architecture), the caller's random state untouched. The inference count needs torch's private
    dispatch mode: where the torch at hand lacks it or it fails, :func:`_live_per_voxel_bound` (above the count),
    silently (the fusion runs as before; only its memory check is a little more cautious)."""
    import torch

    key = f"{config.to_dict()}{amp}{inference}"
    if key in _KEPT:
        return _KEPT[key]
    side = config.size_multiple * math.ceil(MIN_PATCH / config.size_multiple)
    with torch.random.fork_rng(devices=[]):
        model = build_network(config).train(not inference)
    if inference:
        try:
            _KEPT[key] = _count_live(model, amp, side)
        except Exception:  # noqa: BLE001 - any torch: a private API moved, renamed or changed (3D Slicer's PyTorch)
            _KEPT[key] = _live_per_voxel_bound(config, amp)
        return _KEPT[key]
    loss_fn = FusionLoss(config.spatial_dims)
    counts = []
    for batch in (1, 2):
        kept: dict[int, int] = {}

        def pack(tensor: Any, kept: dict[int, int] = kept) -> Any:
            storage = tensor.untyped_storage()  # tensors that share storage (views) are counted once
            kept[storage.data_ptr()] = max(kept.get(storage.data_ptr(), 0), storage.nbytes())
            return tensor

        a = torch.zeros((batch, 1) + (side,) * config.spatial_dims)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                fused, _ = model(a, a)
            loss_fn(fused.float(), a, a)
        counts.append(sum(kept.values()))
    _KEPT[key] = (counts[1] - counts[0]) / side ** config.spatial_dims
    return _KEPT[key]


def _count_live(model: Any, amp: bool, side: int) -> float:
    """Bytes a voxel the most a forward pass of ``model`` without gradients holds at once (:func:`_kept_per_voxel`
    with ``inference``), counted with torch's private dispatch mode on patches of ``side`` at batch 1 and 2. Raises
    whatever a torch without that mode (or with a changed one) raises: the caller falls back."""
    import weakref

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class _Live(TorchDispatchMode):
        """The peak of the bytes the tensors an operation returns hold while they live (storages counted once)."""

        def __init__(self) -> None:
            super().__init__()
            self.refs: dict[int, list[int]] = {}  # storage address: [tensors on it, its bytes]
            self.now = self.peak = 0

        def _gone(self, ptr: int) -> None:
            entry = self.refs[ptr]
            entry[0] -= 1
            if entry[0] == 0:
                self.now -= entry[1]
                del self.refs[ptr]

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            for tensor in tree_flatten(out)[0]:
                if isinstance(tensor, torch.Tensor):
                    storage = tensor.untyped_storage()
                    entry = self.refs.setdefault(storage.data_ptr(), [0, storage.nbytes()])
                    if entry[0] == 0:
                        self.now += entry[1]
                        self.peak = max(self.peak, self.now)
                    entry[0] += 1
                    weakref.finalize(tensor, self._gone, storage.data_ptr())
            return out

    dims = model.config.spatial_dims
    counts = []
    for batch in (1, 2):
        a = torch.zeros((batch, 1) + (side,) * dims)
        with torch.no_grad(), _Live() as live:
            with torch.autocast("cpu", dtype=torch.float16, enabled=amp):
                model(a, a)
        counts.append(live.peak)
    return (counts[1] - counts[0]) / side ** dims


def training_memory(config: FusionNetConfig, patch_size: int | Sequence[int], batch_size: int, *,
                    amp: bool = False) -> int:
    """About the memory (bytes) one training step on ``batch_size`` patches of ``patch_size`` pixels (2D) or
    voxels (3D) a side takes on its device: the activations autograd keeps (:func:`_kept_per_voxel`) times
    :data:`STEP_MEMORY_FACTOR`. ``patch_size``: a patch's side, or its sides (a patch that is not a square or a cube:
    per-study adaptation's whole image, ``inference.adaptation_step``). ``amp``: float16 autocast (training on
    CUDA)."""
    voxels = (patch_size ** config.spatial_dims if isinstance(patch_size, numbers.Integral)
              else math.prod(int(side) for side in patch_size))
    return int(STEP_MEMORY_FACTOR * _kept_per_voxel(config, amp) * batch_size * voxels)


def memory_shortfall(config: FusionNetConfig, patch_size: int | Sequence[int], batch_size: int, device: Any, *,
                     amp: bool | None = None) -> tuple[int, int, str] | None:
    """(bytes a step needs, bytes ``device`` has, what they are) where a step on ``batch_size`` patches of
    ``patch_size`` (:func:`training_memory`) needs more than ``device`` has (:func:`devices.available_memory`); None
    where it fits or the memory cannot be told (the CPU of macOS or Windows). ``amp``: float16 autocast (None: on
    CUDA only, as training and adaptation run). The rule of :func:`check_memory` (training) and of
    ``inference.check_adaptation_memory`` (per-study adaptation), each of which words its own refusal."""
    from ...devices import available_memory

    room = available_memory(device)
    if room is None:
        return None
    amp = device.type == "cuda" if amp is None else bool(amp)
    need = training_memory(config, patch_size, batch_size, amp=amp)
    free, what = room
    return None if need <= free else (need, free, what)


def check_memory(tcfg: TrainingConfig, config: FusionNetConfig, device: Any = None, *, amp: bool | None = None,
                 resumed: bool = False) -> None:
    """Refuse a patch and batch size whose training step (:func:`training_memory`) needs more memory than
    ``device`` has (:func:`devices.available_memory`: the GPU's free memory, or the memory available to this process
    on the CPU), naming the estimate and the largest patch and batch sizes that fit. The CLI calls it before the
    pairs are read, :func:`train_fusion` before training (then with the pairs in memory). Where the memory cannot be
    told (the CPU of macOS or Windows) nothing is checked.

    Args:
        tcfg: the training settings (patch_size, batch_size, device).
        config: the network's architecture.
        device: the torch device (None: ``tcfg.device`` resolved).
        amp: float16 autocast (None: on CUDA only, as training).
        resumed: the run resumes a checkpoint, which fixes the patch and batch sizes (:func:`check_resumable`): the
            fix names another machine or device, or a new run from its weights.

    Raises:
        InputError: the step would not fit.
    """
    device = resolve_device(tcfg.device) if device is None else device
    dims, patch, batch = config.spatial_dims, tcfg.patch_size, tcfg.batch_size
    short = memory_shortfall(config, patch, batch, device, amp=amp)
    if short is None:
        return
    need, free, what = short
    from ...io import size_text

    per_patch = need / batch
    multiple = config.size_multiple
    side = int((free / (per_patch / patch ** dims * batch)) ** (1 / dims)) // multiple * multiple
    fits = [f"--patch-size {side} or less at --batch-size {batch}" if side >= MIN_PATCH else "",
            f"--batch-size {int(free // per_patch)} or less at --patch-size {patch}" if per_patch <= free else ""]
    fix = " or ".join(f for f in fits if f) or f"--patch-size {MIN_PATCH} and --batch-size 1 do not fit either"
    if resumed:  # check_resumable refuses other sizes: a smaller patch or batch cannot continue this run
        raise InputError(f"Resuming a run with --patch-size {patch} and --batch-size {batch} (its checkpoint's) needs "
                         f"about {size_text(need)} on {device.type} for a training step, more than the "
                         f"{size_text(free)} {what}: it would run out of memory.",
                         "Resume it where there is more memory (free memory" + (", or another GPU" if device.type
                         == "cuda" else "") + "), or start a new run from its weights with a smaller patch or "
                         f"batch: --init MODEL.safetensors with {fix}.")
    raise InputError(f"A training step with --patch-size {patch} and --batch-size {batch} needs about "
                     f"{size_text(need)} on {device.type} for the {dims}D network's activations ({batch} patch(es) of "
                     f"{'x'.join([str(patch)] * dims)} {'pixels' if dims == 2 else 'voxels'}, about "
                     f"{size_text(int(per_patch))} each), more than the {size_text(free)} {what}: it would run out of "
                     "memory.",
                     f"Give a smaller patch or batch: {fix} (Python: TrainingConfig(patch_size=..., batch_size=...)); "
                     "or free memory" + (", or train on the CPU (--device cpu)" if device.type == "cuda" else "") + ".")

#: Settings a resumed run must share with the checkpoint's (with them, it continues as the uninterrupted
#: run would: the same data order, augmentation and learning-rate schedule, step for step).
RESUME_SETTINGS = ("seed", "lr", "batch_size", "patch_size", "loss_weights", "samples_per_epoch")
_FLAGS = {"seed": "--seed", "lr": "--lr", "batch_size": "--batch-size", "patch_size": "--patch-size",
          "loss_weights": "--loss-weights", "samples_per_epoch": "--samples-per-epoch"}


def check_resumable(path: Any, saved: dict[str, Any], tcfg: TrainingConfig, done: int) -> None:
    """Refuse a resume that would not continue the checkpoint's run: other settings, or fewer epochs.

    Args:
        path: the checkpoint (for the message).
        saved: its ``state["training"]`` (the run's settings; empty: nothing to compare).
        tcfg: the settings of the resumed run.
        done: epochs the checkpoint has trained.
    """
    now = tcfg.to_dict()
    changed = [k for k in RESUME_SETTINGS if k in saved and saved[k] != now[k]]
    if changed:
        listed = ", ".join(f"{k} {saved[k]!r} -> {now[k]!r}" for k in changed)
        keep = " ".join(f"{_FLAGS[k]} {_flag_value(saved[k])}" for k in changed if saved[k] is not None)
        raise InputError(f"Resuming '{os.fspath(path)}' with other settings than its run's ({listed}): it would not "
                         "continue that run (data order, augmentation and learning-rate schedule follow them).",
                         f"Give the run's settings ({keep or 'leave out the changed options'}) to continue it, or "
                         "start a new run from its weights with --init MODEL.safetensors (new settings allowed).")
    if tcfg.epochs < done:
        raise InputError(f"The checkpoint '{os.fspath(path)}' has already trained {done} epochs; --epochs "
                         f"{tcfg.epochs} is fewer.",
                         f"Give --epochs {done} to write its weights as they are, or more to train on.")


def check_init_matches(run: ResumedRun, model: Any) -> None:
    """Refuse a network to train (``--init``) of another architecture than the checkpoint's (None: none given).

    load_state_dict would fail with torch's list of every mismatched tensor.
    """
    config = run.architecture
    if model is not None and model.config != config:
        raise InputError(f"The checkpoint '{run.path}' holds a {config.spatial_dims}D network "
                         f"({config.to_dict()}) but the network to train is "
                         f"{model.config.spatial_dims}D ({model.config.to_dict()}).",
                         "Resume without --init (the checkpoint holds the weights), or give --init weights "
                         "of the checkpoint's architecture.")


@dataclasses.dataclass
class ResumedRun:
    """A training checkpoint, read and checked once by :func:`open_resume`: what a resumed run continues.

    The CLI opens it to check the settings before the pairs are read and hands it to
    :func:`train_fusion` (``resume=``), so the file is read once, not once per check.

    Attributes:
        path: the checkpoint file (named in messages).
        architecture: the network's architecture.
        epochs_done: epochs the checkpoint has trained (the resumed run starts with the next).
        history: the per-epoch loss history so far.
        training: the run's settings (``TrainingConfig.to_dict()``; empty: nothing to compare).
        model_state: the network's state dict.
        optimizer_state: the optimiser's state dict.
        scaler_state: the GradScaler's state dict of a float16 autocast (CUDA) run; None: none saved (a float32
            run, or a checkpoint written before it was saved).
        data: the :func:`data_fingerprint` of the run's training pairs; None: a checkpoint written before it was
            saved (nothing to compare).
    """

    path: str
    architecture: FusionNetConfig
    epochs_done: int
    history: list[dict[str, Any]]
    training: dict[str, Any]
    model_state: dict[str, Any]
    optimizer_state: dict[str, Any]
    scaler_state: dict[str, Any] | None = None
    data: dict[str, Any] | None = None


def _pair_digest(pair: Sequence[np.ndarray]) -> Any:
    """The blake2b of one pair's part of :func:`data_fingerprint`'s digest (the same bytes, in the same order)."""
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    for arr in pair:
        flat = np.asarray(arr).reshape(-1)  # a view of a contiguous array (load_pairs, synthetic_pairs)
        digest.update(repr(np.shape(arr)).encode())
        digest.update(np.ascontiguousarray(flat[::max(1, flat.size // 4096)], dtype=np.float32).tobytes())
    return digest


def data_fingerprint(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """What a checkpoint remembers of the pairs it was trained on: their count, shapes and a digest of each
    image's values (about 4,096 of them, evenly spaced: a memory-mapped pair is read only there), so that a
    resumed run on other pairs is refused rather than continued as if it were the same run.

    Content only, as training sees it (the arrays scaled to 0..1): no file name, format, pixel type or time, so a
    pair copied, renamed, or converted from DICOM to NIfTI with the same values matches; one stored so that fusion
    scales it otherwise (8-bit against float) does not, since training would see other values. ``pair_digests``
    (each pair's own digest; checkpoints written before it have ``digest`` only) lets :class:`PairsCheck` refuse
    other pairs as they are read."""
    import hashlib

    digest = hashlib.blake2b(digest_size=16)
    shapes, each = [], []
    for pair in pairs:
        shapes.append(list(np.shape(pair[0])))
        own = _pair_digest(pair)
        each.append(own.hexdigest())
        for arr in pair:  # the same bytes as _pair_digest's: digest is what older checkpoints hold
            flat = np.asarray(arr).reshape(-1)
            digest.update(repr(np.shape(arr)).encode())
            digest.update(np.ascontiguousarray(flat[::max(1, flat.size // 4096)], dtype=np.float32).tobytes())
    return {"pairs": len(pairs), "shapes": shapes, "digest": digest.hexdigest(), "pair_digests": each}


_FINGERPRINT_KEYS = ("pairs", "shapes", "digest", "pair_digests")


def _other_pairs(run: ResumedRun, what: str) -> InputError:
    return InputError(f"Resuming '{run.path}' on other training pairs than its run's ({what}): it would not continue "
                      "that run (each epoch's order and batches follow the pairs, the learning-rate schedule their "
                      "number) and the weights file would name these pairs only.",
                      "Give the run's pairs folder (--pairs) as it was to continue it, or start a new run on these "
                      "pairs from its weights with --init MODEL.safetensors.")


def check_same_data(run: ResumedRun, fingerprint: dict[str, Any]) -> None:
    """Refuse resuming ``run`` on other training pairs than its own (its checkpoint's :func:`data_fingerprint`).
    Only what the checkpoint holds is compared: one written before ``pair_digests`` matches on its digest."""
    saved = run.data
    if not saved:
        return
    keys = [k for k in _FINGERPRINT_KEYS if k in saved]
    if all(saved[k] == fingerprint.get(k) for k in keys):
        return
    if saved.get("pairs") != fingerprint["pairs"] or saved.get("shapes") != fingerprint["shapes"]:
        what = (f"{saved.get('pairs')} pair(s) then, {fingerprint['pairs']} now" if saved.get("pairs") !=
                fingerprint["pairs"] else "pairs of other sizes")
    else:
        what = "as many pairs of the same sizes, but other images"
    raise _other_pairs(run, what)


class PairsCheck:
    """Checks a resumed run's pairs as ``data.load_pairs`` reads them (its ``on_pair``), not once all are read.

    :func:`check_same_data` can only compare the fingerprint of every pair, so ``--resume`` on another folder of
    many volumes was refused after all of them had been read and scaled. The fingerprint is of the values (not
    the files' names, sizes or times: a pair converted from DICOM to NIfTI matches), so a file's header cannot
    stand in for it; what can be checked earlier is: the number of pairs (from ``find_pairs``, before any voxel
    is read), each pair's shape as it is read, and, for checkpoints that hold ``pair_digests``, each pair's values.

    It also refuses a checkpoint that holds no fingerprint (written before it was saved, when training stretched
    8-bit and colour images min-to-max) resumed on 8-bit or colour pairs that training now scales as fusion does
    (divided by 255): that run would go on with other values than it began with, without a word. ``trains``:
    whether the resumed run trains at all (``--epochs`` equal to the checkpoint's writes its weights as they are).
    """

    def __init__(self, run: ResumedRun, count: int, *, trains: bool = True) -> None:
        self.run, self.count, self.trains = run, count, trains
        saved = run.data or {}
        if saved and saved.get("pairs") != count:
            raise _other_pairs(run, f"{saved.get('pairs')} pair(s) then, {count} now")

    def __call__(self, index: int, paths: Sequence[Any], pair: Sequence[np.ndarray], eight_bit: bool) -> None:
        saved = self.run.data
        named = " + ".join(f"'{os.fspath(p)}'" for p in paths)
        if not saved:
            if eight_bit and self.trains:
                raise InputError(f"The checkpoint '{self.run.path}' was written before checkpoints recorded their "
                                 f"training pairs, and the pair {named} is 8-bit (or colour), which training now "
                                 "scales as fusion does (divided by 255), where that run stretched each image from "
                                 "its minimum to its maximum: resuming would go on training it on other values than "
                                 "it began with.",
                                 f"Start a new run from its weights: write them with the same command and --epochs "
                                 f"{self.run.epochs_done} (nothing is trained), then train with --init "
                                 "MODEL.safetensors instead of --resume.")
            return
        shapes = saved.get("shapes") or []
        if index < len(shapes) and list(np.shape(pair[0])) != list(shapes[index]):
            raise _other_pairs(self.run, f"pairs of other sizes: {named} is {list(np.shape(pair[0]))}, the run's "
                                         f"pair {index + 1} was {list(shapes[index])}")
        each = saved.get("pair_digests") or []
        if index < len(each) and _pair_digest(pair).hexdigest() != each[index]:
            raise _other_pairs(self.run, f"as many pairs of the same sizes, but other images: {named} is not the "
                                         f"run's pair {index + 1}")


def open_resume(path: str | os.PathLike) -> ResumedRun:
    """Read a checkpoint to resume from (``weights.load_checkpoint``: ``torch.load(weights_only=True)``).

    Raises:
        InputError: missing, corrupted, foreign or damaged checkpoint.
    """
    from .weights import load_checkpoint

    state = load_checkpoint(path)
    return ResumedRun(path=os.fspath(path), architecture=state["architecture"], epochs_done=int(state["epoch"]) + 1,
                      history=list(state["state"].get("history", [])), training=state["state"].get("training") or {},
                      model_state=state["model"], optimizer_state=state["optimizer"],
                      scaler_state=state.get("scaler") or None, data=state["state"].get("data") or None)


def _seconds_from_the_start(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A checkpoint's history (copies of its entries) whose ``seconds`` count from the run's start. A run resumed
    before each epoch's seconds did restarted them at 0 (10, 20, then 8 for 28 s), so a later resume that added
    the last entry to its own time counted the parts before that restart as nothing: where a time falls below the
    one before it, the earlier part's time is added from there on (histories that never fall: as they are)."""
    out: list[dict[str, Any]] = []
    offset, last = 0.0, None
    for entry in history:
        entry = dict(entry)
        seconds = entry.get("seconds")
        if isinstance(seconds, (int, float)) and not isinstance(seconds, bool):
            if last is not None and seconds + offset < last:
                offset = last
            entry["seconds"] = last = float(seconds) + offset
        out.append(entry)
    return out


def _flag_value(value: Any) -> str:
    if isinstance(value, dict):  # loss weights: the CLI's comma-separated form, in the field order
        return ",".join(f"{v:g}" for v in value.values())
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclasses.dataclass
class TrainingResult:
    """The trained network and its history (mean loss per epoch, seconds).

    Attributes:
        model: the network (CPU, eval mode).
        history: one entry per epoch, the checkpoint's first when resumed; ``seconds`` counts from the run's
            start, the time of the parts before a resume included.
        seconds: training time of the whole run, every part of a resumed run included.
        device: the device type this part ran on.
        seconds_this_part: the time of this call alone (equal to ``seconds`` unless resumed).
    """

    model: Any
    history: list[dict[str, float]]
    seconds: float
    device: str
    seconds_this_part: float | None = None

    def __post_init__(self) -> None:
        if self.seconds_this_part is None:
            self.seconds_this_part = self.seconds


#: Where a user sets deep fusion's device, named in the fix of a device it cannot use.
DEVICE_OPTIONS = "mmfusion train-fusion --device, mmfusion fuse/run --deep-device, Python device=..."


def resolve_device(device: str | None = "auto") -> Any:
    """A torch device: "auto" picks CUDA when available, otherwise the CPU.

    The engine's one resolver (:func:`MultimodalFusionLib.devices.select_device`, which the torch
    registration backend uses too), with a fix naming deep fusion's options.

    Raises:
        InputError: a name other than auto/cpu/cuda/cuda:N, CUDA without a GPU, or cuda:N past the GPUs.
    """
    from ...devices import select_device

    return select_device(device, where=DEVICE_OPTIONS)


def _grad_scaler(torch: Any, device_type: str = "cuda") -> Any:
    """A GradScaler for float16 autocast on ``device_type``: ``torch.amp.GradScaler`` from torch 2.3,
    ``torch.cuda.amp`` before (the [deep] extra and Slicer's PyTorch extension allow torch 2.0-2.2, which
    lack the former; there float16 autocast runs on CUDA only)."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device_type)
    return torch.cuda.amp.GradScaler()


def _float16_amp(torch: Any, device: Any, amp: bool | None = None) -> tuple[bool, Any]:
    """(whether a training step runs float16 autocast, the GradScaler it needs or None).

    Training and per-study adaptation both run the network under float16 autocast on CUDA. Its
    gradients need a GradScaler: without one, the small ones flush to zero in float16 (adapting the
    shipped 2D weights on a 256x256 slice, 14 of 57,847 gradients were zero and the gradient 0.85 %
    off float32; scaled, none and 0.185 %). The scaler is of the device's type, so the same path runs
    on the CPU under ``torch.autocast("cpu", dtype=torch.float16)`` (how the tests emulate CUDA).

    Args:
        torch: the torch module.
        device: the torch device the step runs on.
        amp: None: on CUDA only; True/False: float16 autocast (with its scaler) or float32 anyway.
    """
    on = device.type == "cuda" if amp is None else bool(amp)
    return on, (_grad_scaler(torch, device.type) if on else None)


def _optimizer_step(loss: Any, optimizer: Any, scaler: Any) -> bool:
    """Backward pass and optimiser step, through ``scaler`` when there is one (float16 autocast): it
    scales the loss before backward, unscales the gradients, skips a step whose gradients overflowed
    and then halves its scale. Returns whether the optimiser stepped (always, without a scaler)."""
    if scaler is None:
        loss.backward()
        optimizer.step()
        return True
    scale = scaler.get_scale()
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() >= scale  # lowered only after a skipped (overflowed) step


@contextlib.contextmanager
def _caller_random_state_kept(torch: Any) -> Iterator[None]:
    """Restore Python's, numpy's and torch's global random states and cuDNN's flags on exit."""
    py_state, np_state, cpu_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    cudnn = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = cudnn


def train_fusion(pairs: Sequence[tuple[np.ndarray, np.ndarray]], *, config: FusionNetConfig | None = None,
                 training: TrainingConfig | None = None, checkpoint: str | os.PathLike | None = None,
                 resume: str | os.PathLike | ResumedRun | None = None, progress: ProgressCallback | None = None,
                 model: Any = None, amp: bool | None = None,
                 on_epoch: Callable[[dict[str, float]], None] | None = None) -> TrainingResult:
    """Train a fusion network on normalised image pairs with the unsupervised loss.

    Args:
        pairs: (first, second) float arrays in 0..1 (2D slices or 3D volumes; volumes are cut into
            slices for a 2D network), e.g. from :func:`data.load_pairs` or :func:`data.synthetic_pairs`.
        config: the architecture (ignored when resuming or when ``model`` is given).
        training: hyper-parameters.
        checkpoint: file to write a resumable checkpoint to after every epoch (None: none).
        resume: checkpoint to continue from: its path, or the :class:`ResumedRun` that :func:`open_resume`
            read from it (not read again).
        progress: progress callback (fraction, message); returning False cancels.
        model: an existing network to fine-tune instead of a new one.
        amp: None (default): float16 autocast with a GradScaler on CUDA only; True/False force it on or off
            (True on the CPU runs the CUDA path under CPU autocast with a CPU GradScaler, as the tests do).
        on_epoch: called after each epoch (and its checkpoint) with that epoch's history entry
            (``epoch``, ``loss``, the loss terms, ``seconds``), e.g. to log it as it happens.

    Returns:
        TrainingResult with the network (CPU, eval mode) and the per-epoch loss history.

    Raises:
        InputError: bad data, device or checkpoint.
        OperationCancelled: the progress callback asked to stop.
    """
    import torch
    from monai.data import DataLoader, Dataset
    from monai.utils import set_determinism

    from .data import augmentation, to_training_samples
    from .weights import save_checkpoint

    tcfg = training or TrainingConfig()
    tcfg.check()
    device = resolve_device(tcfg.device)
    start_epoch = 0
    history: list[dict[str, float]] = []
    run = None
    if resume is not None:
        run = resume if isinstance(resume, ResumedRun) else open_resume(resume)
        config = run.architecture
        check_init_matches(run, model)
        start_epoch = run.epochs_done
        history = _seconds_from_the_start(run.history)
        check_resumable(run.path, run.training, tcfg, start_epoch)
    # set_determinism seeds Python's, numpy's and torch's global generators (MONAI's DataLoader and the
    # network's initialisation draw from them) and cuDNN's flags: put the caller's back afterwards
    with _caller_random_state_kept(torch):
        set_determinism(seed=tcfg.seed)
        if model is None:
            model = build_network(config or FusionNetConfig())
        config = model.config
        multiple = config.size_multiple
        if tcfg.patch_size % multiple:
            raise InputError(f"Patch size {tcfg.patch_size} is not a multiple of {multiple}.",
                             f"Use a multiple of {multiple}, e.g. {multiple * math.ceil(tcfg.patch_size / multiple)}.")
        amp, scaler = _float16_amp(torch, device, amp)
        trains = start_epoch < tcfg.epochs  # a resumed run given its checkpoint's epochs returns its weights as they are
        # before the pairs are cut into samples and any step runs: a patch of 4096 (a few small volumes) had warned
        # that they were padded to it, then ran out of memory minutes later
        if trains:
            check_memory(tcfg, config, device, amp=amp, resumed=run is not None)
        fingerprint = data_fingerprint(pairs)
        if run is not None:  # before any step: the checkpoint's pairs, or a refusal
            check_same_data(run, fingerprint)
        samples = to_training_samples(pairs, config.spatial_dims)
        if trains and run is None:  # a resumed run's checkpoint fixes the patch; it began with it on these pairs
            check_patch_fits([sample["a"].shape[1:] for sample in samples], tcfg.patch_size, multiple,
                             f"{len(samples)} training sample(s)")
        model.to(device).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=tcfg.lr)
        if run is not None:
            model.load_state_dict(run.model_state)
            # a copy: torch's load_state_dict keeps the given tensors as Adam's moments, which every step updates
            # in place, so the caller's ResumedRun would change (a second run from it trained differently)
            optimizer.load_state_dict(copy.deepcopy(run.optimizer_state))
        loss_fn = FusionLoss(config.spatial_dims, tcfg.loss_weights)
        per_epoch = tcfg.samples_per_epoch or len(samples)
        if per_epoch < tcfg.batch_size:
            # the loader drops incomplete batches: no step would run and the "trained" weights be random
            raise InputError(f"{per_epoch} training sample(s) per epoch ({len(samples)} slices/volumes from "
                             f"{len(pairs)} pair(s)) are fewer than the batch size {tcfg.batch_size}.",
                             f"Use a batch size of at most {per_epoch} (--batch-size {per_epoch}), draw more samples "
                             f"per epoch (--samples-per-epoch {tcfg.batch_size}), or add pairs.")
        steps_per_epoch = per_epoch // tcfg.batch_size
        total_steps = steps_per_epoch * tcfg.epochs
        if scaler is not None and run is not None and run.scaler_state:
            # the run's loss scale and growth counter: a fresh scaler (65536) would not continue it step for step
            scaler.load_state_dict(dict(run.scaler_state))
        # the time the checkpoint's epochs took (its last entry counts from the run's start): a resumed run's
        # seconds had counted its own part only, so its weights file said 40 s for a run of 20 min
        before = float(history[-1].get("seconds", 0.0)) if history else 0.0
        t0 = time.perf_counter()
        report(progress, start_epoch / tcfg.epochs, f"training on {len(samples)} samples ({device.type})")
        for epoch in range(start_epoch, tcfg.epochs):
            epoch_seed = tcfg.seed + 1000 * (epoch + 1)
            set_determinism(seed=epoch_seed)
            gen = torch.Generator().manual_seed(epoch_seed)
            if tcfg.samples_per_epoch:
                order = torch.randint(len(samples), (per_epoch,), generator=gen).tolist()
            else:
                order = torch.randperm(len(samples), generator=gen).tolist()
            dataset = Dataset([samples[i] for i in order], transform=augmentation(config.spatial_dims,
                                                                                 tcfg.patch_size, epoch_seed))
            loader = DataLoader(dataset, batch_size=tcfg.batch_size, shuffle=False, num_workers=0, drop_last=True)
            sums: dict[str, float] = {}
            n = 0
            for step, batch in enumerate(loader):
                # cosine decay of the learning rate over the whole run (a pure function of the step,
                # so resuming gives the same schedule)
                global_step = epoch * steps_per_epoch + step
                for group in optimizer.param_groups:
                    group["lr"] = tcfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * global_step / total_steps)))
                a = batch["a"].to(device)
                b = batch["b"].to(device)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                    fused, _ = model(a, b)
                loss, terms = loss_fn(fused.float(), a, b)
                _optimizer_step(loss, optimizer, scaler)
                terms["loss"] = float(loss.detach())
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v
                n += 1
                report(progress, (global_step + 1) / total_steps,
                       f"epoch {epoch + 1}/{tcfg.epochs} loss {terms['loss']:.4f}")
            bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
            if bad:
                # a diverged run: say so now, not write NaN weights as if trained (load_weights refuses them)
                raise InputError(f"Training diverged in epoch {epoch + 1}: {len(bad)} weight tensor(s) hold NaN "
                                 f"or infinite values (last loss {sums.get('loss', float('nan')) / max(n, 1):.4g}); "
                                 "nothing of this epoch was saved.",
                                 f"Use a lower learning rate (--lr, now {tcfg.lr:g}); --resume from the checkpoint "
                                 "of the last good epoch, if one was written, continues from there.")
            entry = {k: v / max(n, 1) for k, v in sums.items()}
            entry["epoch"] = epoch + 1
            entry["seconds"] = before + time.perf_counter() - t0
            history.append(entry)
            if checkpoint is not None:
                save_checkpoint(checkpoint, model=model, optimizer=optimizer, epoch=epoch,
                                state={"history": history, "training": tcfg.to_dict(), "data": fingerprint}, scaler=scaler)
            if on_epoch is not None:
                on_epoch(entry)
        model.to("cpu").eval()
        report(progress, 1.0, "training done")
        part = time.perf_counter() - t0
        return TrainingResult(model=model, history=history, seconds=before + part, device=device.type,
                              seconds_this_part=part)
