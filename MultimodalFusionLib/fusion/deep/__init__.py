"""Deep (MONAI) fusion: network, unsupervised loss, training, inference, weights files.

Importing this package registers the "deep" method in :data:`MultimodalFusionLib.fusion.METHODS`
(``fusion.fuse(a, b, "deep", adapt_steps=..., weights=...)``); the fusion registry imports it
lazily on first use. torch and MONAI are imported only inside the functions that need them.

Submodules: ``network`` (FusionNetConfig, build_network), ``losses`` (FusionLoss, LossWeights),
``data`` (pair folders, synthetic MNI152 pairs, MONAI augmentation), ``training`` (train_fusion),
``inference`` (fuse_deep, fuse_arrays, adapt, predict), ``weights`` (safetensors I/O, checkpoints).
"""

from __future__ import annotations

from .inference import DEFAULT_ADAPT_STEPS, fuse_arrays, fuse_deep, registry_method
from .losses import FusionLoss, LossWeights
from .network import FusionNetConfig, build_network
from .training import TrainingConfig, TrainingResult, train_fusion
from .weights import default_weights_path, load_weights, read_metadata, save_weights

__all__ = [
    "FusionNetConfig",
    "build_network",
    "FusionLoss",
    "LossWeights",
    "TrainingConfig",
    "TrainingResult",
    "train_fusion",
    "fuse_deep",
    "fuse_arrays",
    "DEFAULT_ADAPT_STEPS",
    "save_weights",
    "load_weights",
    "read_metadata",
    "default_weights_path",
]


def _register() -> None:
    from .. import register_method

    register_method("deep", registry_method)


_register()
