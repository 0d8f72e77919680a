"""Progress reporting and cancellation for long work.

A progress callback has the signature ``progress(fraction: float, message: str)``.
To cancel, the callback returns ``False`` or raises :class:`OperationCancelled`; the
engine then stops at the next safe point and raises ``OperationCancelled``.
The CLI turns callbacks into a tqdm bar, Slicer into its progress dialog.
"""

from __future__ import annotations

from typing import Callable, Optional

from .errors import OperationCancelled

ProgressCallback = Callable[[float, str], Optional[bool]]

__all__ = ["ProgressCallback", "report", "scaled", "CancelToken"]


def report(progress: ProgressCallback | None, fraction: float, message: str) -> None:
    """Call ``progress`` (if any); raise OperationCancelled if it asks to stop."""
    if progress is None:
        return
    answer = progress(float(min(max(fraction, 0.0), 1.0)), message)
    if answer is False:
        raise OperationCancelled()


def scaled(progress: ProgressCallback | None, start: float, end: float) -> ProgressCallback | None:
    """A callback mapping a sub-task's 0..1 onto ``start..end`` of the parent's range."""
    if progress is None:
        return None

    def _sub(fraction: float, message: str) -> bool | None:
        return progress(start + (end - start) * fraction, message)

    return _sub


class CancelToken:
    """A simple cancel flag usable as (part of) a progress callback, e.g. from another thread."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __call__(self, fraction: float, message: str) -> bool:
        return not self.cancelled
