"""What the Slicer module must install before an action, and in which order (pure Python, no Qt).

Slicer ships SimpleITK, numpy and pydicom; the engine also needs ``scipy`` and ``PyWavelets``, and deep
fusion and the torch registration backend need PyTorch and MONAI. PyTorch must come from Slicer's
PyTorch extension (``PyTorchUtils``, which picks the build matching the GPU driver), never from
``pip install``: MONAI requires ``torch``, so pip-installing MONAI into a Slicer without torch
pulls PyTorch's default PyPI build (several GB, possibly the wrong CUDA). Hence the plan installs
torch through the extension first, then MONAI with the installed torch pinned (a pip constraint),
as SlicerMONAIAuto3DSeg does.

The module widget runs the steps of :func:`install_plan` in order; the plan itself is tested here.
"""

from __future__ import annotations

import importlib.util
from typing import Callable, NamedTuple

#: Pure-Python packages every action needs beyond what Slicer ships (import name -> pip requirement).
PYTHON_DEPENDENCIES = {"scipy": "scipy", "pywt": "PyWavelets"}
#: Packages for deep fusion and the torch backend, installed after torch (import name -> requirement).
TORCH_DEPENDENCIES = {"monai": "monai>=1.3", "safetensors": "safetensors"}

#: Step kinds: pip-install packages; install torch with the PyTorch extension; pip-install
#: packages with the installed torch pinned (so pip never replaces it).
PIP, TORCH, PIP_WITH_TORCH_PINNED = "pip", "torch", "pip-with-torch-pinned"


class Step(NamedTuple):
    kind: str
    requirements: tuple[str, ...] = ()


def needs_torch(method: str | None = None, backend: str | None = None) -> bool:
    """Whether an action with this fusion method / registration backend runs on PyTorch."""
    return method == "deep" or backend == "torch"


def _installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def install_plan(method: str | None = None, backend: str | None = None, *,
                 installed: Callable[[str], bool] = _installed) -> list[Step]:
    """The install steps, in order, before an action that fuses with ``method`` (None: no fusion)
    and registers with ``backend`` (None: no registration). Empty when nothing is missing.

    ``installed(import_name)`` says whether a package is importable (default: ``find_spec``).
    """
    steps = []
    missing = tuple(pip for module, pip in PYTHON_DEPENDENCIES.items() if not installed(module))
    if missing:
        steps.append(Step(PIP, missing))
    if needs_torch(method, backend):
        if not installed("torch"):
            steps.append(Step(TORCH))
        missing = tuple(pip for module, pip in TORCH_DEPENDENCIES.items() if not installed(module))
        if missing:
            steps.append(Step(PIP_WITH_TORCH_PINNED, missing))
    return steps


def torch_constraint() -> str:
    """A pip constraints line that keeps the installed torch (``torch==<its version>``)."""
    import importlib.metadata

    return f"torch=={importlib.metadata.version('torch')}\n"
