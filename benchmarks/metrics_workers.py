#!/usr/bin/env python
"""Fusion metrics from a job thread (as the web app's Fuse runs them): scored by the thread alone or by spawned
worker processes, and how soon a Cancel ends them.

Usage::

    python benchmarks/metrics_workers.py FOLDER [--slices 16,24,32,48,72] [--rounds 2] [--workers 2]
                                                [--cancel-at 0.1,0.3,0.6,1,1.5,3,6]

FOLDER holds a BraTS 2013 case (``Flair_subtrMeanDivStd.nii.gz``, ``T1c_subtrMeanDivStd.nii.gz``; the README's numbers
are ``brats_2013_pat0001_1``). The pair is fused with ``average`` and ``metrics.fusion_metrics`` is timed from a thread
other than the main one, ``workers=1`` (the job thread alone, as before the web app asked for workers) and
``workers=N`` (spawned workers), alternating which goes first each round; the whole volume, then its middle
``--slices`` axial slices (crops: where spawning starts to pay). ``PARALLEL_MIN_PIXELS`` is set to 1 here so that
small crops use workers too. Each row has the wall time, the CPU seconds of this process and of the workers, and
the CPU seconds the rest of the machine used meanwhile (``/proc/stat``): on a shared machine a pool gains only
where a core is free. ``--cancel-at`` then presses Cancel (the progress callback's answer) that many seconds into
the whole volume's pooled metrics and prints how soon ``OperationCancelled`` came and whether a worker was left.
Set ``OMP_NUM_THREADS=1`` as the README's runs did.
"""

from __future__ import annotations

import os
import sys

# Runs from a source checkout without installing the package.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _machine_cpu() -> float:
    """CPU seconds the whole machine has used (busy: all but idle and iowait)."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def _in_a_thread(work, *args, **kwargs):
    """``work(*args, **kwargs)`` run on a thread other than the main one (a server's job thread), its answer."""
    import threading

    out = {}

    def run():
        try:
            out["value"] = work(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 (handed to the caller)
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def main() -> None:
    import argparse
    import multiprocessing
    import resource
    import threading
    import time

    import SimpleITK as sitk

    from MultimodalFusionLib import metrics
    from MultimodalFusionLib.errors import OperationCancelled
    from MultimodalFusionLib.fusion import fuse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--slices", default="16,24,32,48,72")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cancel-at", default="")
    args = parser.parse_args()

    a = sitk.ReadImage(os.path.join(args.folder, "Flair_subtrMeanDivStd.nii.gz"), sitk.sitkFloat32)
    b = sitk.ReadImage(os.path.join(args.folder, "T1c_subtrMeanDivStd.nii.gz"), sitk.sitkFloat32)
    cases = {"whole": (a, b)}
    middle = a.GetSize()[2] // 2
    for n in (int(v) for v in args.slices.split(",") if v):
        lo = middle - n // 2
        cases[f"{n} slices"] = (a[:, :, lo:lo + n], b[:, :, lo:lo + n])
    cases = {name: (fuse(x, y, "average"), x, y) for name, (x, y) in cases.items()}
    metrics.PARALLEL_MIN_PIXELS = 1

    print(f"{'case':>10} {'pixels':>9} {'workers':>7} {'wall s':>7} {'CPU s here':>10} {'workers CPU s':>13} "
          f"{'others CPU s':>12}")
    for rnd in range(args.rounds):
        for name, (fused, x, y) in cases.items():
            for workers in ((1, args.workers) if rnd % 2 == 0 else (args.workers, 1)):
                before = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
                machine, start = _machine_cpu(), time.perf_counter()
                _in_a_thread(metrics.fusion_metrics, fused, x, y, workers=workers)
                wall, machine = time.perf_counter() - start, _machine_cpu() - machine
                after = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
                here, children = (u.ru_utime + u.ru_stime - v.ru_utime - v.ru_stime for v, u in zip(before, after))
                pixels = len(metrics._slices_with_content(metrics.to_8bit(x), metrics.to_8bit(y))) * 240 * 240
                print(f"{name:>10} {pixels:>9} {workers:>7} {wall:>7.2f} {here:>10.2f} {children:>13.2f} "
                      f"{machine - here - children:>12.2f}", flush=True)

    fused, x, y = cases["whole"]
    for at in (float(v) for v in args.cancel_at.split(",") if v):
        pressed = threading.Event()
        ended = {}

        def job(pressed=pressed, ended=ended):
            try:
                metrics.fusion_metrics(fused, x, y, workers=args.workers, progress=lambda f, t: not pressed.is_set())
            except OperationCancelled:
                ended["at"] = time.monotonic()

        thread = threading.Thread(target=job)
        thread.start()
        time.sleep(at)
        start = time.monotonic()
        pressed.set()
        thread.join()
        print(f"Cancel {at} s into the metrics: ended {ended['at'] - start:.3f} s after it, "
              f"{len(multiprocessing.active_children())} worker(s) left", flush=True)


if __name__ == "__main__":
    main()
