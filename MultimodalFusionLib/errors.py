"""Errors that name the problem and the fix.

Every error the engine raises on bad input is a :class:`MultimodalFusionError`; the CLI
prints its message (no traceback) and exits non-zero, the Slicer module shows it in a
dialog. Raw ITK exceptions never reach the user: :func:`itk_guard` translates them.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

__all__ = [
    "MultimodalFusionError",
    "InputError",
    "RegistrationError",
    "OperationCancelled",
    "itk_guard",
]


class MultimodalFusionError(Exception):
    """Base class: ``str(err)`` is a complete sentence naming the problem and the fix."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem} Fix: {fix}")


class InputError(MultimodalFusionError, ValueError):
    """Bad input: unreadable file, wrong dimension, NaNs, no overlap, empty image..."""


class RegistrationError(MultimodalFusionError, RuntimeError):
    """Registration could not run or produced no usable transform."""

    exit_code = 3


class OperationCancelled(MultimodalFusionError):
    """The user cancelled a long operation through the progress callback."""

    exit_code = 130

    def __init__(self, problem: str = "Cancelled by the user.", fix: str | None = None):
        super().__init__(problem, fix)


@contextlib.contextmanager
def itk_guard(what: str, fix: str | None = None) -> Iterator[None]:
    """Turn a RuntimeError from deep inside ITK into a MultimodalFusionError.

    Args:
        what: what was being done, e.g. ``"reading 'a.nii.gz'"``.
        fix: a hint for the user.
    """
    try:
        yield
    except MultimodalFusionError:
        raise
    except RuntimeError as exc:  # SimpleITK raises RuntimeError with a multi-line ITK trace
        first = _itk_first_line(str(exc))
        raise InputError(f"ITK failed while {what}: {first}", fix) from exc


def _itk_first_line(message: str) -> str:
    """The informative line of an ITK exception text (drops file/line noise)."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    for ln in lines:
        if ln.lower().startswith("description:"):
            return ln.split(":", 1)[1].strip()
    for ln in reversed(lines):
        if ln.startswith("sitk::ERROR:"):
            ln = ln[len("sitk::ERROR:"):].strip()
        if ln and not ln.startswith(("Exception thrown", "/")):
            return ln
    return lines[-1] if lines else "unknown ITK error"
