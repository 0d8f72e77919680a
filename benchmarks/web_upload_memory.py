#!/usr/bin/env python
"""Peak memory of ``mmfusion web``'s upload handler for a large upload.

Usage::

    python benchmarks/web_upload_memory.py [--mib 1000] [--single [--whole]]

Builds the web application in-process (no browser) and sends its moving-image upload trigger what the
page's ``mmfusion_upload`` sends: batches of whole files of up to ``UPLOAD_PIECE_BYTES`` (4 MiB: 8
"slices" of 512 KiB of random bytes, ``--mib`` MiB in all, as a DICOM series), then the empty batch that
ends the upload; with ``--single``, one file of ``--mib`` MiB in pieces of 4 MiB, and with ``--whole`` too,
in one message, as trame's page sent a file. Prints the process's peak resident memory during the upload
above its resident memory before it (Linux: ``VmHWM`` reset through ``/proc/self/clear_refs``), the bytes
written and the time taken. In-process, wslink's reassembly of each message on a real server (about three
copies of it) is not counted.
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
    parser.add_argument("--whole", action="store_true", help="with --single: the file in one message")
    args = parser.parse_args()

    configure_offscreen_rendering()
    from trame.app import get_server

    from MultimodalFusionLib.web.app import UPLOAD_PIECE_BYTES, FusionWebApp

    with tempfile.TemporaryDirectory() as tmp:
        app = FusionWebApp(get_server("upload-memory", client_type="vue3"), workdir=tmp)
        trigger = app._upload_chunk_fn("moving")
        loop = asyncio.new_event_loop()
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")  # VmHWM := VmRSS
        before = _status_mib("VmRSS")
        start = time.perf_counter()
        size = args.mib << 20
        if args.single and args.whole:
            loop.run_until_complete(trigger("bench", [{"name": "big.nii", "content": os.urandom(size)}]))
        elif args.single:
            for offset in range(0, size, UPLOAD_PIECE_BYTES):
                piece = os.urandom(min(UPLOAD_PIECE_BYTES, size - offset))
                loop.run_until_complete(trigger("bench", [{"name": "big.nii", "offset": offset, "size": size,
                                                           "content": piece}]))
        else:
            slices, per_batch = 2 * args.mib, UPLOAD_PIECE_BYTES // (512 << 10)
            for first in range(0, slices, per_batch):
                loop.run_until_complete(trigger("bench", [{"name": f"IM{i:05d}", "content": os.urandom(512 << 10)}
                                                          for i in range(first, min(slices, first + per_batch))]))
        loop.run_until_complete(trigger("bench", []))
        seconds = time.perf_counter() - start
        peak = _status_mib("VmHWM") - before
        if app.state.error_message:
            raise SystemExit(app.state.error_message)
        path = app.state.moving_path
        folder = path if os.path.isdir(path) else os.path.dirname(path)
        written = sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder)) / 2**20
        print(f"{'one file' + (' whole' if args.whole else ' in pieces') if args.single else 'series'} of {args.mib} MiB: peak resident memory "
              f"+{peak:.0f} MiB over {before:.0f} MiB, {written:.0f} MiB written, {seconds:.1f} s")
        app.worker.shutdown()
        loop.close()


if __name__ == "__main__":
    main()
