#!/usr/bin/env python
"""Time to read the geometry tags of a multi-frame DICOM file, against ITK's read of the whole file.

Usage::

    python benchmarks/dicom_multiframe_header.py [--frames 1000] [--size 256] [--repeats 15] [--files 4]

Writes an enhanced CT of ``--frames`` frames of ``--size`` x ``--size`` pixels (pixel size and position
in every frame's functional groups, as ``Testing/test_dicom_inputs.py`` writes them) to a temporary
folder, then prints the best and median of ``--repeats`` runs of
``dicom_header.read_geometry_tags`` (what ``io.read_image`` adds to a multi-frame file), of ITK's
``sitk.ReadImage`` and of ``io.read_image`` (both); then of ``io.read_image`` of a folder holding the same
frames split into ``--files`` enhanced files of one series (each file read and placed alone, then stacked),
with how many times per read and for how long ``read_geometry_tags`` parsed a file's header.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Testing"))

import SimpleITK as sitk  # noqa: E402
from test_dicom_inputs import write_enhanced  # noqa: E402

from MultimodalFusionLib import dicom_header, io  # noqa: E402
from MultimodalFusionLib.dicom_header import read_geometry_tags  # noqa: E402


def _timed(work, repeats: int) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--files", type=int, default=4, help="files of the split series (0: none)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "enhanced.dcm")
        write_enhanced(path, [(-5.0, -6.0, 1.5 * k) for k in range(args.frames)], rows=args.size,
                       cols=args.size, spacing_in="per-frame")
        print(f"{args.frames} frames of {args.size}x{args.size}, {os.path.getsize(path) / 1e6:.0f} MB")
        assert len(read_geometry_tags(path)[0x52009230]) == args.frames
        for name, work, repeats in (("read_geometry_tags", lambda: read_geometry_tags(path), args.repeats),
                                    ("sitk.ReadImage", lambda: sitk.ReadImage(path), max(1, args.repeats // 5)),
                                    ("io.read_image", lambda: io.read_image(path), max(1, args.repeats // 5))):
            best, median = _timed(work, repeats)
            print(f"{name:20s} best {best:.3f} s, median {median:.3f} s ({repeats} runs)")
        if args.files > 1:
            split = os.path.join(folder, "split")
            os.makedirs(split)
            positions = [(-5.0, -6.0, 1.5 * k) for k in range(args.frames)]
            for i in range(args.files):
                write_enhanced(os.path.join(split, f"part{i}.dcm"), positions[i::args.files], rows=args.size,
                               cols=args.size, spacing_in="per-frame", series_uid="1.2.826.0.1.3680043.2.1143.7")
            assert io.read_image(split).GetSize()[2] == args.frames
            parses: list[float] = []

            def counted(file: str):  # io imports it when it needs it: each header parse is timed here
                start = time.perf_counter()
                try:
                    return read_geometry_tags(file)
                finally:
                    parses.append(time.perf_counter() - start)

            runs = max(1, args.repeats // 5)
            dicom_header.read_geometry_tags = counted
            try:
                best, median = _timed(lambda: io.read_image(split), runs)
            finally:
                dicom_header.read_geometry_tags = read_geometry_tags
            print(f"{'io.read_image split':20s} best {best:.3f} s, median {median:.3f} s "
                  f"({runs} runs; {args.files} files, frames interleaved; {len(parses) / runs:g} header parses "
                  f"per read, {sum(parses) / runs:.3f} s)")


if __name__ == "__main__":
    main()
