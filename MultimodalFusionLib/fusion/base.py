"""FusionResult: what every fusion method returns."""

from __future__ import annotations

import dataclasses
from typing import Any

import SimpleITK as sitk

__all__ = ["FusionResult"]


@dataclasses.dataclass
class FusionResult:
    """The fused image and, where the method has them, per-voxel modality weights.

    Attributes:
        image: the fused image, on the fixed (first) image's grid with its geometry. Grey
            (float32) for pixel-level methods; RGB (vector UInt8) for the colour overlay and for
            fusions whose functional input was colour (Y-channel fusion with colour put back).
        weights: per-voxel weight of the first (anatomical/fixed) input in [0, 1], same grid;
            the second input's weight is ``1 - weights``. None where the method has none.
        method: method name ("average", "max", "pca", "wavelet", "laplacian", "overlay", "deep").
        parameters: the parameters used (JSON-able).
        seconds: wall time of the fusion.
        grey: the grey (luminance) fused image used for metrics when ``image`` is RGB.
        warnings: plain-language warnings about this fusion (e.g. a 3D deep-fusion network on strongly
            anisotropic voxels), as a registration's ``RegistrationResult.warnings``: the CLI prints them on
            stderr, the Slicer module shows them in its status line.
    """

    image: sitk.Image
    weights: sitk.Image | None = None
    method: str = ""
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    grey: sitk.Image | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)

    @property
    def grey_image(self) -> sitk.Image:
        """The grey fused image that metrics are computed on."""
        return self.grey if self.grey is not None else self.image
