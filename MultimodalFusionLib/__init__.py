"""MultimodalFusion engine: multimodal registration and fusion of medical images.

Pure Python on SimpleITK/numpy; torch, MONAI, slicer and trame are imported lazily inside
the functions that need them, so ``import MultimodalFusionLib`` stays fast and works
without them.
"""

from __future__ import annotations

from .errors import InputError, MultimodalFusionError, OperationCancelled, RegistrationError

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "MultimodalFusionError",
    "InputError",
    "RegistrationError",
    "OperationCancelled",
]
