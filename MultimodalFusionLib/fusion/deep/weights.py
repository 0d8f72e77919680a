"""Weights files: safetensors with a metadata header; training checkpoints.

A weights file is a ``.safetensors`` file (tensors only, no pickled code) whose string metadata
holds ``format`` (``"mmfusion-deep-fusion"``), ``format_version``, ``architecture`` (JSON of
:class:`FusionNetConfig`), ``spatial_dims`` and free-form JSON ``training`` information. Loading
checks all of them and raises :class:`InputError` naming the problem for a corrupted, foreign or
mismatched file. Checkpoints (model + optimiser state, to resume training) are read only with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ...errors import InputError
from ...io import atomic_output
from .network import FusionNetConfig, build_network

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "default_weights_path",
    "save_weights",
    "load_weights",
    "read_metadata",
    "save_checkpoint",
    "load_checkpoint",
]

FORMAT_NAME = "mmfusion-deep-fusion"
#: Bump when the meaning of the tensors changes; files with a newer version are refused.
FORMAT_VERSION = 1

_FIX_DEFAULT = ("Use a weights file written by 'mmfusion train-fusion' or the shipped default "
                "(Resources/Models/deep_fusion_2d.safetensors).")


def default_weights_path(spatial_dims: int = 2) -> Path:
    """The shipped default weights file (``Resources/Models/deep_fusion_<2|3>d.safetensors``)."""
    from ...data import bundled_folder

    here = Path(__file__).resolve()
    env = os.environ.get("MMFUSION_MODELS_DIR")
    candidates = [Path(env)] if env else []
    # Source checkout: <repo>/MultimodalFusionLib/fusion/deep -> <repo>/Resources/Models; an installed
    # Slicer extension keeps MultimodalFusionLib next to Resources/ the same way, or inside it; a
    # wheel installs them under <prefix>/share/multimodalfusion/
    candidates += [bundled_folder("Resources/Models"), here.parents[3] / "Models"]
    for folder in candidates:
        path = folder / f"deep_fusion_{spatial_dims}d.safetensors"
        if path.exists():
            return path
    raise InputError(f"No default {spatial_dims}D deep-fusion weights file was found (looked in "
                     f"{', '.join(str(c) for c in candidates)}).",
                     "Pass weights=PATH (CLI: mmfusion fuse --method deep --model PATH), set MMFUSION_MODELS_DIR "
                     "to the folder of the shipped weights, or train some with 'mmfusion train-fusion'.")


def save_weights(model: Any, path: str | os.PathLike, *, training: dict[str, Any] | None = None) -> str:
    """Write ``model``'s weights and architecture to a safetensors file, atomically.

    Args:
        model: a network from :func:`build_network` (its ``config`` goes into the header).
        path: destination ``.safetensors`` file.
        training: JSON-able information on how it was trained (data, seed, epochs, loss weights...).

    Returns:
        The path written.
    """
    from safetensors.torch import save_file

    config: FusionNetConfig = model.config
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": str(FORMAT_VERSION),
        "architecture": json.dumps(config.to_dict()),
        "spatial_dims": str(config.spatial_dims),
        "training": json.dumps(training or {}, default=str),
    }
    with atomic_output(path) as tmp:
        save_file(state, tmp, metadata=metadata)
    return os.fspath(path)


def _is_torch_file(path: str) -> bool:
    """Whether ``path`` is a ``torch.save`` file (a zip archive holding ``data.pkl``), as checkpoints are."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("/data.pkl") or name == "data.pkl" for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def _checkpoint_format(path: str) -> str | None:
    """The ``format`` entry of a ``torch.save`` file (read with ``weights_only``, its tensors memory-mapped, not
    read); None where it has none or cannot be read."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - any unreadable file is "not a checkpoint"
        return None
    return payload.get("format") if isinstance(payload, dict) else None


def _weights_format(path: str) -> str | None:
    """The ``format`` entry of a safetensors file's header ("" where it has none); None: no safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return str((f.metadata() or {}).get("format", ""))
    except Exception:  # noqa: BLE001 - safetensors raises its own error types for files it cannot read
        return None


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The checked metadata header of a weights file (no tensors are loaded).

    Raises:
        InputError: missing, unreadable/corrupted, foreign (not a deep-fusion file) or newer-version file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"Weights file not found: '{path}'.", _FIX_DEFAULT)
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own error types for truncated/garbage files
        if _is_torch_file(path) and _checkpoint_format(path) == FORMAT_NAME + "-checkpoint":
            # the MODEL.safetensors.ckpt.pt that train-fusion writes beside MODEL
            raise InputError(f"'{path}' is a train-fusion checkpoint, not a safetensors weights file.",
                             "Give the MODEL.safetensors that train-fusion wrote beside the checkpoint; "
                             f"to go on training from the checkpoint, use 'mmfusion train-fusion --resume {path}'."
                             ) from exc
        if _is_torch_file(path):  # another model's .pt: --resume, which the message above offers, refuses it too
            raise InputError(f"'{path}' is a torch file but neither MultimodalFusion deep-fusion weights nor a "
                             "train-fusion checkpoint (another model's weights?).", _FIX_DEFAULT) from exc
        raise InputError(f"'{path}' is not a readable safetensors weights file ({type(exc).__name__}: "
                         f"{str(exc)[:120]}); it may be corrupted or truncated.", _FIX_DEFAULT) from exc
    if meta.get("format") != FORMAT_NAME:
        raise InputError(f"'{path}' is a safetensors file but not MultimodalFusion deep-fusion weights "
                         f"(format '{meta.get('format', 'none')}').", _FIX_DEFAULT)
    try:
        version = int(meta.get("format_version", ""))
    except ValueError:
        version = -1
    if version < 1 or version > FORMAT_VERSION:
        raise InputError(f"'{path}' has weights format version {meta.get('format_version')!r}; this "
                         f"MultimodalFusion reads versions 1..{FORMAT_VERSION}.",
                         "Update MultimodalFusion, or re-train the weights with this version.")
    return meta


def load_weights(path: str | os.PathLike, *, spatial_dims: int | None = None,
                 device: Any = "cpu") -> tuple[Any, dict[str, Any]]:
    """Build the network described by a weights file and load its tensors.

    Args:
        path: ``.safetensors`` file written by :func:`save_weights`.
        spatial_dims: if given, the file must hold a network for this many dimensions.
        device: torch device for the network.

    Returns:
        (network in eval mode, metadata with ``architecture`` and ``training`` decoded).

    Raises:
        InputError: corrupted, foreign, newer-version or mismatched file (architecture vs tensors,
            or spatial dimensions), an architecture header with values no network has (a NaN or negative
            detail_scale, a stride of 0, ...), or tensors that are not floating point or hold NaN/infinite values.
    """
    meta = read_metadata(path)
    try:
        config = FusionNetConfig.from_dict(json.loads(meta["architecture"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise InputError(f"'{path}' has an unreadable or invalid architecture header ({exc}).", _FIX_DEFAULT
                         ) from exc
    if meta.get("spatial_dims", str(config.spatial_dims)) != str(config.spatial_dims):
        # save_weights writes both: a file whose two headers disagree was edited or damaged
        raise InputError(f"'{path}' has contradictory headers: spatial_dims {meta['spatial_dims']!r} but a "
                         f"{config.spatial_dims}D architecture.", _FIX_DEFAULT)
    if spatial_dims is not None and config.spatial_dims != spatial_dims:
        raise InputError(f"'{path}' holds a {config.spatial_dims}D network but {spatial_dims}D images were given.",
                         f"Use {spatial_dims}D weights (deep_fusion_{spatial_dims}d.safetensors), or images "
                         f"of the dimension the weights were trained for.")
    from safetensors.torch import load_file

    try:
        state = load_file(os.fspath(path), device="cpu")
    except Exception as exc:
        raise InputError(f"The tensors of '{path}' cannot be read ({type(exc).__name__}); the file is "
                         "corrupted or truncated.", _FIX_DEFAULT) from exc
    import torch

    # the expected tensors from a network built without storage (torch's meta device): a header's sizes are
    # checked against the file's tensors before any memory is taken for them, since an edited header (features
    # 1e6) built a network of 36 TB first (a RuntimeError from torch's allocator) or of GBs, to refuse it after
    with torch.device("meta"):
        expected = build_network(config).state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or extra or wrong:
        detail = "; ".join(f"{name}: {', '.join(keys[:3])}{'...' if len(keys) > 3 else ''}"
                           for name, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong))
                           if keys)
        raise InputError(f"The tensors of '{path}' do not match its architecture header ({detail}).",
                         _FIX_DEFAULT)
    not_float = sorted(k for k, v in state.items() if not v.is_floating_point())
    if not_float:
        # load_state_dict casts them into the float parameters: a quantised (int8) file, or one whose tensors
        # were saved as integers, fused with weights that are not the trained ones, without a word
        dtypes = sorted({str(state[k].dtype).replace("torch.", "") for k in not_float})
        raise InputError(f"'{path}' holds {len(not_float)} tensor(s) that are not floating point "
                         f"({', '.join(dtypes)}: {', '.join(not_float[:3])}{'...' if len(not_float) > 3 else ''}); "
                         "the network's weights are float32 (float16/bfloat16/float64 are read too).",
                         "Save the weights as floating-point tensors (save_weights does), or " + _FIX_DEFAULT[0].lower()
                         + _FIX_DEFAULT[1:])
    not_finite = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if not_finite:
        # a diverged training run or a damaged file: the network would return NaN weight maps
        raise InputError(f"'{path}' holds NaN or infinite values in {len(not_finite)} tensor(s) "
                         f"({', '.join(not_finite[:3])}{'...' if len(not_finite) > 3 else ''}).",
                         "Re-train the weights (a lower --lr if the training diverged), or " + _FIX_DEFAULT[0].lower()
                         + _FIX_DEFAULT[1:])
    model = build_network(config)
    model.load_state_dict(state, strict=True)
    model.to(device).eval()
    info: dict[str, Any] = dict(meta)
    info["architecture"] = config.to_dict()
    try:
        info["training"] = json.loads(meta.get("training") or "{}")
    except ValueError:
        info["training"] = {}
    return model, info


def save_checkpoint(path: str | os.PathLike, *, model: Any, optimizer: Any, epoch: int,
                    state: dict[str, Any], scaler: Any = None) -> str:
    """Save a resumable training checkpoint atomically (plain tensors, ints, strings, lists, dicts).

    ``scaler``: the run's GradScaler (float16 autocast), whose state (loss scale and growth counter: plain
    floats and ints) is saved too, so a resumed run continues with its scale, not the initial 65536.
    """
    import torch

    payload = {
        "format": FORMAT_NAME + "-checkpoint",
        "format_version": FORMAT_VERSION,
        "architecture": json.dumps(model.config.to_dict()),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": int(epoch),
        "state": json.dumps(state, default=str),
    }
    if scaler is not None:
        payload["scaler"] = scaler.state_dict()
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)
    return os.fspath(path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (``torch.load(weights_only=True)`` only).

    Raises:
        InputError: missing, corrupted or foreign file.
    """
    import torch

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"Checkpoint not found: '{path}'.", "Give a checkpoint written by 'mmfusion train-fusion'.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"'{path}' is not a readable training checkpoint ({type(exc).__name__}); it may be "
                         "corrupted, or not a checkpoint.",
                         "Give a checkpoint written by 'mmfusion train-fusion' (*.ckpt.pt).") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME + "-checkpoint":
        if _weights_format(path) == FORMAT_NAME:  # torch.load reads a safetensors file as a dict of its tensors
            raise InputError(f"'{path}' is a deep-fusion weights file (.safetensors), not a training checkpoint: "
                             "it holds no optimiser state or epoch to continue from.",
                             f"To train on from its weights with new settings, use --init {path}; to continue "
                             "its run, give --resume the checkpoint train-fusion wrote beside it "
                             f"({path}.ckpt.pt).")
        raise InputError(f"'{path}' is not a MultimodalFusion deep-fusion training checkpoint.",
                         "Give a checkpoint written by 'mmfusion train-fusion'.")
    if int(payload.get("format_version", 0)) > FORMAT_VERSION:
        raise InputError(f"'{path}' was written by a newer MultimodalFusion.", "Update MultimodalFusion.")
    try:
        payload["architecture"] = FusionNetConfig.from_dict(json.loads(payload["architecture"]))
        payload["state"] = json.loads(payload.get("state") or "{}")
        if not isinstance(payload["state"], dict) or not isinstance(payload.get("model"), dict):
            raise ValueError("no model weights or training state")
        if not isinstance(payload.get("scaler", {}), dict):  # absent from checkpoints of float32 runs and older ones
            raise ValueError("the GradScaler state is not a dictionary")
        int(payload["epoch"])
    except (KeyError, TypeError, ValueError) as exc:  # json's JSONDecodeError is a ValueError
        raise InputError(f"The training checkpoint '{path}' is damaged: {exc}.",
                         "Resume from another checkpoint, or start a new run (--init MODEL.safetensors keeps "
                         "trained weights).") from exc
    return payload
