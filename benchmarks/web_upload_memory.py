#!/usr/bin/env python
"""Peak memory of ``mmfusion web``'s upload handler for a large upload.

Usage::

    python benchmarks/web_upload_memory.py [--mib 1000] [--single]

Builds the web application in-process (no browser) and sends its moving-image upload trigger what the
page's ``load_files_by_chunks`` sends: batches of whole files of about 10 MiB (here 20 "slices" of
512 KiB of random bytes, ``--mib`` MiB in all, as a DICOM series), then the empty batch that ends the
upload; with ``--single``, one file of ``--mib`` MiB in one batch (the page sends a file whole). Prints
the process's peak resident memory during the upload above its resident memory before it (Linux:
``VmHWM`` reset through ``/proc/self/clear_refs``), the bytes written and the time taken.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from MultimodalFusionLib.web.offscreen import configure_offscreen_rendering  # noqa: E402


def _status_mib(key: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no {key} in /proc/self/status (Linux only)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1000, help="upload size in MiB")
    parser.add_argument("--single", action="store_true", help="one file instead of 512 KiB slices")
    args = parser.parse_args()

    configure_offscreen_rendering()
    from trame.app import get_server

    from MultimodalFusionLib.web.app import FusionWebApp

    with tempfile.TemporaryDirectory() as tmp:
        app = FusionWebApp(get_server("upload-memory", client_type="vue3"), workdir=tmp)
        trigger = app._upload_chunk_fn("moving")
        loop = asyncio.new_event_loop()
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # VmHWM := VmRSS
        before = _status_mib("VmRSS")
        start = time.perf_counter()
        if args.single:
            loop.run_until_complete(trigger([{"name": "big.nii", "content": os.urandom(args.mib << 20)}]))
        else:
            slices = 2 * args.mib
            for first in range(0, slices, 20):
                loop.run_until_complete(trigger([{"name": f"IM{i:05d}", "content": os.urandom(512 << 10)}
                                                 for i in range(first, min(slices, first + 20))]))
        loop.run_until_complete(trigger([]))
        seconds = time.perf_counter() - start
        peak = _status_mib("VmHWM") - before
        if app.state.error_message:
            raise SystemExit(app.state.error_message)
        path = app.state.moving_path
        folder = path if os.path.isdir(path) else os.path.dirname(path)
        written = sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder)) / 2**20
        print(f"{'one file' if args.single else 'series'} of {args.mib} MiB: peak resident memory "
              f"+{peak:.0f} MiB over {before:.0f} MiB, {written:.0f} MiB written, {seconds:.1f} s")
        app.worker.shutdown()
        loop.close()


if __name__ == "__main__":
    main()
