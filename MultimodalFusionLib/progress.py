"""Progress reporting and cancellation for long work.

A progress callback has the signature ``progress(fraction: float, message: str)``.
To cancel, the callback returns ``False`` or raises :class:`OperationCancelled`; the
engine then stops at the next safe point and raises ``OperationCancelled``.
The CLI turns callbacks into a tqdm bar, Slicer into its progress dialog.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional

from .errors import OperationCancelled

ProgressCallback = Callable[[float, str], Optional[bool]]

__all__ = ["ProgressCallback", "report", "scaled", "CancelToken", "signals_stop"]


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


@contextlib.contextmanager
def signals_stop(stop: Callable[[], Any]) -> Iterator[None]:
    """While the block runs C++ code that calls back into Python (ITK's registration loop and its
    iteration observers), a Ctrl-C or SIGTERM calls ``stop()`` (e.g. ``StopRegistration``) and is raised
    as usual once the block ends: raised inside the callback, as Python does, it had been printed there
    as a traceback and turned by ITK into "error executing the Python Callable" (exit 3, a registration
    failure, not exit 130).

    Only signals with a Python handler (Python's KeyboardInterrupt, the CLI's SIGTERM) are deferred, and
    only in the main thread (where Python runs handlers; elsewhere the block runs as it is).
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[tuple[int, Any]] = []

    def on_signal(signum: int, frame: Any) -> None:
        if not caught:
            stop()
        caught.append((signum, frame))

    saved = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if callable(handler):  # not SIG_DFL / SIG_IGN: the process's own default stands
            saved[sig] = handler
            signal.signal(sig, on_signal)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        if caught:  # the signal's own handler now, outside the C++ code: KeyboardInterrupt, the CLI's exit
            signum, frame = caught[0]
            saved[signum](signum, frame)
