"""pytest set-up shared by every test file.

The test process ends with ``os._exit`` once pytest has written its results, with pytest's own exit status (each
pytest-xdist worker too, once it has sent its results: ``make test`` runs the suite in two workers).
Two full runs of the suite (of about fifteen) died with a segmentation fault after "N passed" was printed:
native code torn down at process exit (C++ static destructors and native ``atexit`` handlers, after Python's
own finalisation, so ``python -X faulthandler`` printed nothing). This one process holds what no user's
process does: VTK with EGL, slicer-core's MRML, trame, torch and ITK thread pools, Chromium drivers. The
command-line tests run ``mmfusion`` in processes of their own and check their exit status, so a crash at the
end of a real run still fails a test. Set ``MMFUSION_TEST_NORMAL_EXIT=1`` to let the process exit normally
(to chase that crash, e.g. under ``gdb -batch -ex run -ex bt --args python -m pytest Testing``).

A test run started as a background job (``make test &``, ``nohup``, a CI step in the background) starts with
SIGINT ignored, and every process the tests start inherited that: the Ctrl-C tests' commands ran on through
their SIGINT (4 failures in test_interrupts, and the train-fusion Ctrl-C test after its 120 s timeout). The test
process handles SIGINT as Python does by default instead, and a handled signal is reset to the default in a
child (exec), where Python makes it KeyboardInterrupt.

Each test file starts with torch on one CPU thread (``_torch_on_one_thread``); a file that wants another count sets
it in its own set-up, and that count no longer leaks into the files after it (test_deep_fusion's 2 had held for
every later file). The suite's torch work is small (2D slices, 3-4 mm volumes): on a 2-core machine shared with
other work, 2 threads made it several times slower, not faster. SearchOnTheTorchBackend (test_registration_search)
took 69.3 s on 2 threads, 15.4 s on 1 (CPU 37.0 s against 8.6 s), back to back at a load of 4.5.
"""

from __future__ import annotations

import os
import signal
import sys

import pytest

_status: list[int] = []

if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True, scope="module")
def _torch_on_one_thread():
    """torch on one thread at the start of each test file (module scope: before a class's setUpClass, which may
    set its own count). torch is imported here where it is installed: a file that imports it inside its tests
    (test_registration_known_answers' PaddedCt) had run on torch's default 2 threads when run alone, 50.7 s
    against 16.6 s in the whole suite. The import (1.5-2 s) is one the suite makes anyway."""
    try:
        import torch
    except ImportError:  # the deep extra is not installed: nothing to set
        torch = None
    if torch is not None:
        torch.set_num_threads(1)
    yield


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    if not _status or os.environ.get("MMFUSION_TEST_NORMAL_EXIT") == "1":
        return
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
    os._exit(_status[-1])
