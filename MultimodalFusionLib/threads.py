"""A limit on the CPU threads the engine's work uses, for one block of code.

``mmfusion register/run/fuse/... --threads N`` runs its command inside :func:`limit_threads`: SimpleITK's
global default number of threads (every filter, the registration metric, resampling), torch's intra-op
threads (the torch registration backend, deep fusion), the BLAS/OpenMP pools of numpy and scipy (where
threadpoolctl is installed) and the worker processes of the fusion metrics (:func:`metrics.metric_workers`)
are held to ``N`` for the block, and each is put back as it was when the block ends, error or not: a
script or a test calling the engine (or ``cli.main``) in its own process finds its settings unchanged.

An elastix user passes ``-threads N``, an ANTs user sets ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``; both
still work for SimpleITK (the environment variable sets the default this block starts from).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator

from .errors import InputError

__all__ = ["limit_threads", "thread_limit", "checked_thread_count", "hold_torch_threads"]


class _Block:
    """One :func:`limit_threads` block: its limit, and torch's thread count before the block set it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.torch_before: int | None = None  # None: torch not set by this block (yet)


#: the blocks open, innermost last (process-wide, as the settings they change are)
_BLOCKS: list[_Block] = []


def thread_limit() -> int | None:
    """The thread limit in force (:func:`limit_threads`), or None where no block sets one."""
    return _BLOCKS[-1].limit if _BLOCKS else None


def checked_thread_count(threads: Any, where: str = "threads") -> int | None:
    """``threads`` as an int of at least 1, or None for None; an InputError naming ``where`` otherwise (torch
    takes 0 without a word and gives a RuntimeError for -1; SimpleITK clamps 0 to 1)."""
    if threads is None:
        return None
    if isinstance(threads, (bool, float)) or not hasattr(threads, "__index__"):
        raise InputError(f"{where} must be a whole number of CPU threads, at least 1 (got {threads!r}).",
                         f"Give e.g. {where} 1 for one core, or leave it out (all cores).")
    count = int(threads)
    if count < 1:
        raise InputError(f"{where} must be at least 1 (got {count}).",
                         f"Give the number of CPU threads to use, e.g. {where} 1 for one core, or leave it out "
                         "(all cores).")
    return count


def hold_torch_threads(torch: Any) -> None:
    """Hold torch's CPU threads to the limit in force, if any (put back when its block ends). Called where torch
    work starts (:func:`devices.select_device`, which the torch registration backend, deep fusion and training
    all call), so that a block imports no torch for work that needs none (its import takes 1.5-2 s)."""
    if not _BLOCKS:
        return
    # every open block that has not set torch yet records what its end must put back: the outermost the count
    # torch has now, each inner one the limit of the block around it. Only the innermost had recorded it: torch
    # imported in an inner block went back to all cores when that block ended, inside an outer block of 1 thread
    previous = int(torch.get_num_threads())
    for block in _BLOCKS:
        if block.torch_before is None:
            block.torch_before = previous
        previous = block.limit
    torch.set_num_threads(_BLOCKS[-1].limit)


@contextlib.contextmanager
def limit_threads(threads: int | None) -> Iterator[None]:
    """Hold the engine's CPU threads to ``threads`` inside the block (None: no limit, nothing changed).

    Sets SimpleITK's global default number of threads, torch's ``set_num_threads`` (at once where torch is
    imported, else when torch work starts: :func:`hold_torch_threads`), the numpy/scipy BLAS and OpenMP pools
    through threadpoolctl where it is installed, and the fusion metrics' worker processes; puts each back when
    the block ends. A registration with a seed still runs its SimpleITK metric on one thread (bit-identical
    results, ``RegistrationParameters.number_of_threads``): under a limit, the smaller of the two.

    These are process-wide settings: two threads of one process running blocks with different limits at the
    same time see each other's (the web app does not use this). A block inside another takes the smaller limit.

    Raises:
        InputError: ``threads`` is not a whole number of at least 1.
    """
    count = checked_thread_count(threads)
    if count is None:
        yield
        return
    import SimpleITK as sitk

    outer = thread_limit()
    block = _Block(count if outer is None else min(count, outer))
    saved_sitk = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    with contextlib.ExitStack() as stack:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # optional (not a dependency): numpy's BLAS then keeps its own pool
            pass
        else:
            stack.enter_context(threadpool_limits(limits=block.limit))
        _BLOCKS.append(block)
        try:
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(block.limit)
            if "torch" in sys.modules:
                hold_torch_threads(sys.modules["torch"])
            yield
        finally:
            _BLOCKS.remove(block)
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(saved_sitk)
            if block.torch_before is not None:
                sys.modules["torch"].set_num_threads(block.torch_before)
