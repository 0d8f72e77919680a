"""Unsupervised fusion loss: there is no ground-truth fused image.

Three terms, each computed on intensities normalised to 0..1, for 2D and 3D tensors
``(N, 1, *spatial)``:

- structure: ``1 - SSIM(F, A)`` and ``1 - SSIM(F, B)`` (MONAI's SSIM), averaged;
- gradient: L1 distance of the fused image's Sobel gradient to the *stronger* source gradient at
  each voxel (the whole vector, so edge orientation is kept, not only its strength);
- intensity: L1 distance to the brighter source at each voxel (keeps bright structures of either
  modality, e.g. bone from CT or uptake from PET, at full contrast).

torch and MONAI are imported inside the functions.
"""

from __future__ import annotations

import dataclasses
from typing import Any

__all__ = ["LossWeights", "FusionLoss", "sobel_gradient"]


@dataclasses.dataclass
class LossWeights:
    """Weights of the loss terms (configurable from the CLI: ``--loss-weights 1,10,1``).

    Attributes:
        ssim: weight of the structural term.
        gradient: weight of the gradient-preservation term.
        intensity: weight of the max-intensity term.
        gradient_gain: the gradient target is this multiple of the stronger source gradient
            (1: preserve edges as they are; above 1: also enhance detail).
    """

    ssim: float = 1.0
    gradient: float = 10.0
    intensity: float = 1.0
    gradient_gain: float = 1.0

    @classmethod
    def parse(cls, text: str | None) -> LossWeights:
        """Parse ``"ssim,gradient,intensity[,gradient_gain]"`` (e.g. ``"1,10,1"``); None gives the defaults."""
        if not text:
            return cls()
        parts = [p for p in str(text).replace(" ", "").split(",") if p]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = []
        if len(values) not in (3, 4) or any(v < 0 for v in values) or sum(values[:3]) == 0:
            from ...errors import InputError

            raise InputError(f"Loss weights '{text}' are not three (or four, with the gradient gain) non-negative numbers.",
                             "Give them as SSIM,GRADIENT,INTENSITY[,GRADIENT_GAIN], e.g. --loss-weights 1,10,1.")
        return cls(*values)

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def sobel_gradient(x: Any) -> Any:
    """Sobel gradient of ``x`` (N, 1, *spatial) -> (N, D, *spatial), replicate-padded borders."""
    import torch
    import torch.nn.functional as F

    dims = x.dim() - 2
    smooth = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype, device=x.device)
    diff = torch.tensor([-1.0, 0.0, 1.0], dtype=x.dtype, device=x.device)
    kernels = []
    for axis in range(dims):
        k = None
        for d in range(dims):
            v = diff if d == axis else smooth
            shape = [1] * dims
            shape[d] = 3
            v = v.reshape(shape)
            k = v if k is None else k * v
        kernels.append(k / (2.0 * 4.0 ** (dims - 1)))
    weight = torch.stack(kernels).unsqueeze(1)  # (D, 1, 3, ...)
    pad = [1] * (2 * dims)
    xp = F.pad(x, pad, mode="replicate")
    conv = F.conv2d if dims == 2 else F.conv3d
    return conv(xp, weight)


class FusionLoss:
    """Callable ``loss(fused, a, b) -> (total, {term: value})`` for 2D or 3D tensors."""

    def __init__(self, spatial_dims: int = 2, weights: LossWeights | None = None, win_size: int = 7):
        from monai.losses import SSIMLoss

        self.spatial_dims = spatial_dims
        self.weights = weights or LossWeights()
        self._ssim = SSIMLoss(spatial_dims=spatial_dims, data_range=1.0, win_size=win_size,
                              kernel_type="gaussian", kernel_sigma=1.5)

    def __call__(self, fused: Any, a: Any, b: Any) -> tuple[Any, dict[str, float]]:
        import torch

        w = self.weights
        terms = {}
        total = fused.new_zeros(())
        if w.ssim:
            s = 0.5 * (self._ssim(fused, a) + self._ssim(fused, b))
            terms["ssim"] = s
            total = total + w.ssim * s
        if w.gradient:
            ga, gb, gf = sobel_gradient(a), sobel_gradient(b), sobel_gradient(fused)
            stronger = (ga.abs().sum(1, keepdim=True) >= gb.abs().sum(1, keepdim=True)).to(ga.dtype)
            target = (stronger * ga + (1.0 - stronger) * gb) * w.gradient_gain
            g = (gf - target).abs().mean()
            terms["gradient"] = g
            total = total + w.gradient * g
        if w.intensity:
            i = (fused - torch.maximum(a, b)).abs().mean()
            terms["intensity"] = i
            total = total + w.intensity * i
        return total, {k: float(v.detach()) for k, v in terms.items()}
