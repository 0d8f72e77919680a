"""The start of a fusion-metrics worker process (:func:`metrics.fusion_metrics`' pool), in a module of its own.

A worker spawned from a thread other than the main one (the web app's jobs) is a fresh interpreter: it imports this
module first, as the pool's initializer, and only its first chunk imports numpy, SimpleITK, scipy and the metrics
(about a second on a shared 2-core machine): the Ctrl-C it ignores stays blocked until here, 0.23-0.26 s after the
pool started, where with the metrics module as the initializer it took 0.72-0.93 s (spawned from a thread, 2 shared
cores).
"""

from __future__ import annotations

import os

__all__ = ["start"]


def start(parent: int) -> None:
    """A pool worker's start: it ends with the process that started it (Linux's parent-death signal), where it had
    waited for work for ever once that process was killed (SIGKILL, the OOM killer: two idle orphans per pool), and
    leaves Ctrl-C and SIGTERM to it (the worker had inherited its handlers: the CLI's SIGTERM, which raises, did not
    end a worker told to end). The parent ends its workers itself on a cancel or an error (``metrics._end_workers``)."""
    import ctypes
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C reaches the whole group: the parent's
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked from its start (the parent blocked it)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent had gone before the signal was asked for
        os._exit(1)
