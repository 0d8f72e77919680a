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

__all__ = ["ProgressCallback", "report", "scaled", "prefixed", "CancelToken", "signals_stop", "python_receives"]


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


def prefixed(progress: ProgressCallback | None, prefix: str) -> ProgressCallback | None:
    """A callback putting ``prefix`` before each message of a sub-task (which step of the parent it is)."""
    if progress is None:
        return None

    def _sub(fraction: float, message: str) -> bool | None:
        return progress(fraction, f"{prefix}: {message}")

    return _sub


class CancelToken:
    """A simple cancel flag usable as (part of) a progress callback, e.g. from another thread."""

    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __call__(self, fraction: float, message: str) -> bool:
        return not self.cancelled


def _sigaction(sig: int, new: Any = None) -> Any:
    """POSIX ``sigaction(sig, new, &old)``: the ``struct sigaction`` the system held for ``sig`` (a raw buffer),
    after putting ``new`` (such a buffer, or None: read only, nothing changed) in its place; None where it
    cannot be called (Windows, no C library found) or fails."""
    import ctypes

    try:
        sigaction = ctypes.CDLL(None, use_errno=True).sigaction
    except (OSError, TypeError, AttributeError):
        return None
    # struct sigaction begins with the handler on Linux (glibc, musl), macOS and the BSDs; the buffer is larger
    # than the whole struct on each (152 bytes on Linux x86-64)
    old = ctypes.create_string_buffer(1024)
    sigaction.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
    return old if sigaction(int(sig), new, old) == 0 else None


def _system_handler(sig: int) -> int | None:
    """The address of the handler the operating system runs for ``sig`` (0: SIG_DFL, 1: SIG_IGN), read with
    POSIX ``sigaction`` without changing it; None where it cannot be read (Windows, no C library found)."""
    import ctypes

    held = _sigaction(sig)
    return None if held is None else ctypes.c_void_p.from_buffer(held).value or 0


_python_trampoline: list[int | None] = []


def _python_handler_address() -> int | None:
    """The address of CPython's C signal handler (the one ``signal.signal`` installs for every Python handler),
    learnt once, in the main thread, on SIGURG (ignored by default, used by nothing here): its handler as the
    system holds it is saved, a Python handler set, the address read, and the saved handler put back exactly.
    None where it cannot be learnt (no ``sigaction``, not the main thread)."""
    import signal
    import threading

    if _python_trampoline:
        return _python_trampoline[0]
    spare = getattr(signal, "SIGURG", None)
    if spare is None or threading.current_thread() is not threading.main_thread():
        return None
    saved = _sigaction(spare)
    if saved is None:
        return None
    before = signal.getsignal(spare)
    try:
        signal.signal(spare, lambda signum, frame: None)
        address = _system_handler(spare)
    finally:
        signal.signal(spare, before if before is not None else signal.SIG_DFL)
        _sigaction(spare, saved)  # exactly as it was (a handler set in C included)
    _python_trampoline.append(address if address not in (None, 0, 1) else None)
    return _python_trampoline[0]


def python_receives(sig: int) -> bool:
    """Whether a ``sig`` the process gets runs the handler ``signal.getsignal(sig)`` names.

    Python answers from its own table, which code in C does not update: an application that embeds Python and
    sets a signal's handler in C after it started (3D Slicer resets SIGINT to SIG_DFL; another application may
    set a C handler of its own) still reads ``default_int_handler``. False where Python's table names a Python
    function but the system runs another handler: SIG_DFL, SIG_IGN, or a C function other than CPython's own
    (:func:`_python_handler_address`; where that cannot be learnt, only SIG_DFL and SIG_IGN tell). True where
    the system's handler cannot be read (Windows: Python's table is taken as it is).
    """
    import signal

    handler = signal.getsignal(sig)
    system = _system_handler(sig)
    if system is None or not callable(handler):
        return True
    if system in (int(signal.SIG_DFL), int(signal.SIG_IGN)):
        return False
    python = _python_handler_address()
    return python is None or system == python


@contextlib.contextmanager
def signals_stop(stop: Callable[[], Any]) -> Iterator[None]:
    """While the block runs C++ code that calls back into Python (ITK's registration loop and its
    iteration observers), a Ctrl-C or SIGTERM calls ``stop()`` (e.g. ``StopRegistration``) and is raised
    as usual once the block ends: raised inside the callback, as Python does, it had been printed there
    as a traceback and turned by ITK into "error executing the Python Callable" (exit 3, a registration
    failure, not exit 130).

    Only signals that Python receives are deferred (Python's KeyboardInterrupt, the CLI's SIGTERM: a Python
    handler that the process really runs, :func:`python_receives`), and only in the main thread (where Python
    runs handlers; elsewhere the block runs as it is). Inside 3D Slicer nothing changes: its Python manager (CTK's
    ``ctkAbstractPythonManager::initPythonQt``) resets SIGINT to the system default in C after Python starts, so
    that Ctrl-C in the terminal ends the application, while ``signal.getsignal`` still answers Python's
    ``default_int_handler``; taking that answer, the block had put Python's handler back in at its end, and from
    the first registration on a Ctrl-C raised KeyboardInterrupt in whatever Python code Slicer ran next instead
    of ending Slicer (and during the registration stopped it instead).
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
        if callable(handler) and python_receives(sig):  # not SIG_DFL / SIG_IGN: the process's own default stands
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
