"""A process's memory made small for a test with a real limit, not a stand-in: the address-space limit
(``ulimit -v``, RLIMIT_AS) set a little above what the process maps now. ``devices.available_memory`` counts the
room under it as the memory the CPU has (the least of MemAvailable, the cgroup's room and this one), and an
allocation past it fails (torch: "can't allocate memory"), as on a machine that small; shared by the tests of deep
fusion's memory checks (test_deep_fusion_inputs, test_slicer_module).

Not a test module (pytest collects ``test_*.py``); the tests import it as they import padded_ct (pytest puts
Testing/ on the path)."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

try:
    import resource
except ImportError:  # Windows
    resource = None

#: Whether :func:`address_space_left` can run here (Linux: VmSize is read from /proc).
CAN_LIMIT = resource is not None and sys.platform.startswith("linux")


@contextlib.contextmanager
def address_space_left(nbytes: int) -> Iterator[None]:
    """This process may map only ``nbytes`` more than it maps now (VmSize) while the block runs, or less where its
    limit leaves less already (a suite run under ``ulimit -v``: the limit is never raised, which past the hard limit
    raised ValueError); the limit it had is put back after. Load what the block needs (networks, lazily imported
    modules) before it."""
    old = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status", encoding="ascii") as fh:
        size = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    limit = size + nbytes if old[0] == resource.RLIM_INFINITY else min(size + nbytes, old[0])
    resource.setrlimit(resource.RLIMIT_AS, (limit, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, old)
