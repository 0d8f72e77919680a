"""The deep fusion network: two modality encoders, a MONAI U-Net core, a weight-map + detail head.

``fused = w * a + (1 - w) * b + detail_scale * tanh(r)`` where ``w = sigmoid(logit)`` is the
per-voxel weight of the first (anatomical) input and ``r`` a detail residual. The weight map is
the explainability output (which modality each part of the fused image comes from); the
residual lets the network sharpen edges beyond a convex blend of the two inputs.

torch and MONAI are imported inside the functions (``import MultimodalFusionLib`` must stay fast
and work without them); :func:`build_network` creates the ``torch.nn.Module``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

__all__ = ["FusionNetConfig", "build_network", "count_parameters"]


@dataclasses.dataclass
class FusionNetConfig:
    """Architecture hyper-parameters (stored in the weights file's metadata header).

    Attributes:
        spatial_dims: 2 (slices) or 3 (volumes).
        features: channels of each modality encoder.
        channels: channels of the U-Net core's levels.
        strides: down-sampling strides between the core's levels (the input is padded to a
            multiple of their product).
        num_res_units: residual units per level of the core.
        detail_scale: bound of the detail residual, in normalised intensity (inputs are 0..1).
    """

    spatial_dims: int = 2
    features: int = 8
    channels: tuple[int, ...] = (16, 32, 64)
    strides: tuple[int, ...] = (2, 2)
    num_res_units: int = 1
    detail_scale: float = 0.25

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["channels"] = list(self.channels)
        d["strides"] = list(self.strides)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FusionNetConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown architecture keys {sorted(unknown)}")
        d = dict(d)
        for key in ("channels", "strides"):
            if key in d:
                if not isinstance(d[key], (list, tuple)):
                    raise ValueError(f"{key} is {d[key]!r}, not a list of whole numbers")
                d[key] = tuple(_whole(v, key, 1) for v in d[key])
        # a header's numbers are checked as the network uses them: a detail_scale of NaN gave an all-NaN fused
        # image (written with exit code 0), a negative one a residual of the wrong sign, a stride of 0 or a
        # detail_scale given as text a ZeroDivisionError or TypeError from deep inside torch
        for key, minimum in (("spatial_dims", 2), ("features", 1), ("num_res_units", 0)):
            if key in d:
                d[key] = _whole(d[key], key, minimum)
        if "detail_scale" in d:
            scale = d["detail_scale"]
            if (isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not math.isfinite(scale)
                    or scale < 0):
                raise ValueError(f"detail_scale is {scale!r}, not a finite number >= 0")
            d["detail_scale"] = float(scale)
        cfg = cls(**d)
        # MONAI's UNet needs two levels at least: one channel count was its ValueError from build_network
        if cfg.spatial_dims not in (2, 3) or len(cfg.channels) < 2 or len(cfg.channels) != len(cfg.strides) + 1:
            raise ValueError(f"inconsistent architecture {cfg.to_dict()}")
        return cfg

    @property
    def size_multiple(self) -> int:
        """Input sizes must be a multiple of this (the product of the strides)."""
        m = 1
        for s in self.strides:
            m *= int(s)
        return m


def _whole(value: Any, key: str, minimum: int) -> int:
    """``value`` of the architecture entry ``key`` as an int >= ``minimum`` (JSON's 2.0 too), else ValueError."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)
            or value != int(value) or value < minimum):
        raise ValueError(f"{key} holds {value!r}, not a whole number >= {minimum}")
    return int(value)


_CLASS_CACHE: dict[str, Any] = {}


def _fusion_net_class() -> Any:
    """Define (once) the ``FusionNet`` torch module class; torch and MONAI are imported here."""
    if "FusionNet" in _CLASS_CACHE:
        return _CLASS_CACHE["FusionNet"]
    import torch
    from monai.networks.blocks import Convolution, ResidualUnit
    from monai.networks.nets import UNet

    class FusionNet(torch.nn.Module):
        """Two encoders (one per modality) -> U-Net core -> (weight logit, detail residual)."""

        def __init__(self, config: FusionNetConfig):
            super().__init__()
            self.config = config
            sd, f = config.spatial_dims, config.features

            def encoder() -> torch.nn.Module:
                # No normalisation layers: instance/group norm would make sliding-window
                # patches inconsistent (per-patch statistics) and batch norm breaks on one pair.
                return torch.nn.Sequential(
                    Convolution(sd, 1, f, kernel_size=3, act="PRELU", norm=None),
                    ResidualUnit(sd, f, f, kernel_size=3, subunits=2, act="PRELU", norm=None),
                )

            self.encoder_a = encoder()
            self.encoder_b = encoder()
            self.core = UNet(spatial_dims=sd, in_channels=2 * f, out_channels=f, channels=config.channels,
                             strides=config.strides, num_res_units=config.num_res_units, act="PRELU",
                             norm=None)
            # The head also sees the encoders' features (skip) for sharp, full-resolution detail.
            self.head = torch.nn.Sequential(
                Convolution(sd, 3 * f, f, kernel_size=3, act="PRELU", norm=None),
                Convolution(sd, f, 2, kernel_size=1, conv_only=True),
            )
            last = self.head[-1].conv if hasattr(self.head[-1], "conv") else self.head[-1]
            # Start as the plain average with no residual: a sane fusion before any training.
            torch.nn.init.zeros_(last.weight)
            torch.nn.init.zeros_(last.bias)

        def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """Fuse normalised inputs (N, 1, *spatial) in 0..1; returns (fused, weight of a)."""
            fa = self.encoder_a(a)
            fb = self.encoder_b(b)
            feats = torch.cat([fa, fb], dim=1)
            core = self.core(feats)
            out = self.head(torch.cat([core, feats], dim=1))
            weight = torch.sigmoid(out[:, :1])
            detail = self.config.detail_scale * torch.tanh(out[:, 1:2])
            fused = weight * a + (1.0 - weight) * b + detail
            return fused, weight

    _CLASS_CACHE["FusionNet"] = FusionNet
    return FusionNet


def build_network(config: FusionNetConfig | None = None) -> Any:
    """A new, freshly initialised fusion network (``torch.nn.Module``) for ``config``.

    Initialisation uses torch's global generator: seed it (``monai.utils.set_determinism``)
    for a reproducible network.
    """
    return _fusion_net_class()(config or FusionNetConfig())


def count_parameters(model: Any) -> int:
    """Number of trainable parameters of ``model``."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))
