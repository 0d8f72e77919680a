#!/usr/bin/env python
"""Registration benchmark: our SimpleITK pipeline vs itk-elastix and ANTsPy on one 3D pair with a known answer.

Default pair (as ../shared/REFERENCE.md describes it): the MNI152 2009a T1 template carried by
nilearn, 160x192x192 at 1 mm (fixed), against a synthetic T2-like image made from its tissue
maps, moved by 8 degrees about the left-right axis and (3, 0, 4) mm (moving).
Or give your own pair with a known answer:

    python benchmarks/registration.py --fixed F.nii.gz --moving M.nii.gz --true-transform T.tfm [--mask BRAIN.nii.gz]

where T maps fixed-image points to moving-image points (ITK convention).

Every method runs in its own subprocess (this script re-invoked with ``--worker NAME``), so
"peak MB" is that process's maximum resident memory (imports, data and registration; VmHWM
of the worker's own address space) and one tool's imports never affect
another's timing. "reg s" times the
registration call alone. TRE is the mean distance between the recovered and the true mapping
over the mask voxels (the brain). ``--repeats N`` runs N separate processes per method and
reports medians.

Methods live in ``METHODS`` (name -> Method); other back ends add rows by adding entries.

Examples:
    python benchmarks/registration.py                       # everything, once
    python benchmarks/registration.py --repeats 3 --only ours-rigid,elastix-rigid
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

import SimpleITK as sitk

# Runs from a source checkout without installing the package.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

RegisterFn = Callable[[str, str, str], tuple]
"""(fixed path, moving path, scratch folder) -> (recovered fixed->moving transform, registration wall
seconds[, registration CPU seconds of the process, all threads])."""


@dataclasses.dataclass
class Method:
    """One benchmark row: a tool with its settings on one task."""

    tool: str
    task: str
    run: RegisterFn
    #: (module, pip package) the row needs beyond the engine: a peer the venv may not have
    needs: tuple[str, str] | None = None


# ----------------------------------------------------------------------------- ours (SimpleITK)
def _ours(stages: list[str]) -> RegisterFn:
    def run(fixed_path: str, moving_path: str, scratch: str) -> tuple[sitk.Transform, float]:
        from MultimodalFusionLib.io import read_image
        from MultimodalFusionLib.registration import register

        fixed = read_image(fixed_path, float32=True)
        moving = read_image(moving_path, float32=True)
        t0, c0 = time.perf_counter(), time.process_time()
        # no seed: all ITK threads (a seed gives bit-identical results on one thread)
        result = register(fixed, moving, preset="t1-t2-brain", stages=stages)
        return result.transform, time.perf_counter() - t0, time.process_time() - c0
    return run


# ----------------------------------------------------------------------------- itk-elastix
def _elastix(maps: list[str]) -> RegisterFn:
    def run(fixed_path: str, moving_path: str, scratch: str) -> tuple[sitk.Transform, float]:
        import itk
        import numpy as np

        fixed = itk.imread(fixed_path, itk.F)
        moving = itk.imread(moving_path, itk.F)
        params = itk.ParameterObject.New()
        for m in maps:
            params.AddParameterMap(params.GetDefaultParameterMap(m))
        t0, c0 = time.perf_counter(), time.process_time()
        _, tx_params = itk.elastix_registration_method(fixed, moving, parameter_object=params,
                                                       log_to_console=False, output_directory=scratch)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        # elastix' transform as a displacement field on the fixed grid (fixed -> moving points)
        field = itk.transformix_deformation_field(moving, tx_params)
        arr = np.asarray(itk.array_from_image(field), dtype=np.float64)
        ref = sitk.ReadImage(fixed_path)
        disp = sitk.GetImageFromArray(arr, isVector=True)
        disp.CopyInformation(ref)
        return sitk.DisplacementFieldTransform(disp), seconds, cpu
    return run


# ----------------------------------------------------------------------------- ANTsPy
def _ants(kind: str) -> RegisterFn:
    def run(fixed_path: str, moving_path: str, scratch: str) -> tuple[sitk.Transform, float]:
        import ants

        fixed = ants.image_read(fixed_path)
        moving = ants.image_read(moving_path)
        t0, c0 = time.perf_counter(), time.process_time()
        out = ants.registration(fixed, moving, type_of_transform=kind, outprefix=os.path.join(scratch, "ants_"))
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        transforms = []
        for path in out["fwdtransforms"]:
            if path.endswith((".nii.gz", ".nii")):
                field = sitk.Cast(sitk.ReadImage(path), sitk.sitkVectorFloat64)
                transforms.append(sitk.DisplacementFieldTransform(field))
            else:
                transforms.append(sitk.ReadTransform(path))
        # ANTs lists [warp, affine] and maps a fixed point through the warp first, then the affine;
        # sitk.CompositeTransform applies its last entry first, hence the reversed list (checked
        # against the field ants.apply_transforms(..., compose=...) writes: identical TRE)
        return (transforms[0] if len(transforms) == 1 else sitk.CompositeTransform(transforms[::-1])), seconds, cpu
    return run


ELASTIX, ANTS = ("itk", "itk-elastix"), ("ants", "antspyx")  # the peers: pip install ".[bench]"

#: name -> Method. Other back ends (e.g. the torch registration) add their rows here.
METHODS: dict[str, Method] = {
    "ours-rigid": Method("SimpleITK (ours): Mattes MI 32 bins, 1% random, RSGD phys-shift, shrink 4-2-1",
                         "rigid", _ours(["rigid"])),
    "ours-affine": Method("SimpleITK (ours): affine, Mattes MI 50 bins, 1% random, RSGD phys-shift, shrink 4-2-1",
                          "affine", _ours(["affine"])),
    "ours-deformable": Method("SimpleITK (ours): rigid -> affine -> B-spline 4^3 grid, 4000 samples",
                              "deformable", _ours(["rigid", "affine", "bspline"])),
    "elastix-rigid": Method("itk-elastix default map", "rigid", _elastix(["rigid"]), ELASTIX),
    "elastix-affine": Method("itk-elastix default map", "affine", _elastix(["affine"]), ELASTIX),
    "elastix-deformable": Method("itk-elastix default maps rigid + bspline", "deformable",
                                 _elastix(["rigid", "bspline"]), ELASTIX),
    "ants-rigid": Method("ANTsPy `Rigid` defaults", "rigid", _ants("Rigid"), ANTS),
    "ants-affine": Method("ANTsPy `Affine` defaults", "affine", _ants("Affine"), ANTS),
    "ants-deformable": Method("ANTsPy `SyN` defaults", "deformable", _ants("SyN"), ANTS),
}


def _register_optional_rows() -> None:
    """Rows defined elsewhere (e.g. benchmarks/registration_torch_rows.py) add themselves to METHODS."""
    here = os.path.dirname(os.path.abspath(__file__))
    extra = os.path.join(here, "registration_torch_rows.py")
    if os.path.exists(extra):
        spec = importlib.util.spec_from_file_location("registration_torch_rows", extra)
        module = importlib.util.module_from_spec(spec)
        assert spec.loader is not None
        spec.loader.exec_module(module)
        if hasattr(module, "add_rows"):
            module.add_rows(METHODS, Method)


# ----------------------------------------------------------------------------- the pair
def prepare_case(args: argparse.Namespace, folder: str) -> dict[str, str]:
    """Write (or point to) fixed, moving, mask and true transform; returns their paths."""
    if args.fixed:
        if not (args.moving and args.true_transform):
            sys.exit("--fixed needs --moving and --true-transform")
        from MultimodalFusionLib.errors import MultimodalFusionError
        from MultimodalFusionLib.io import read_image, read_transform
        from MultimodalFusionLib.preprocess import foreground_mask

        try:  # here, once, with the engine's one-line messages, not as a traceback in every worker
            fixed = read_image(args.fixed, float32=True)
            read_image(args.moving)
            read_transform(args.true_transform)
            if args.mask:
                read_image(args.mask)
        except MultimodalFusionError as exc:
            sys.exit(f"registration.py: error: {exc}")
        mask = args.mask
        if not mask:
            mask = os.path.join(folder, "mask.nii.gz")
            sitk.WriteImage(foreground_mask(fixed), mask)
        return {"fixed": os.path.abspath(args.fixed), "moving": os.path.abspath(args.moving),
                "truth": os.path.abspath(args.true_transform), "mask": os.path.abspath(mask),
                "description": f"{args.fixed} vs {args.moving} (truth {args.true_transform})"}
    from MultimodalFusionLib.registration.accuracy import rigid_case

    case = rigid_case(spacing_mm=args.spacing)
    paths = {"fixed": os.path.join(folder, "fixed_t1.nii.gz"), "moving": os.path.join(folder, "moving_t2.nii.gz"),
             "truth": os.path.join(folder, "truth.tfm"), "mask": os.path.join(folder, "brain_mask.nii.gz")}
    sitk.WriteImage(case.fixed, paths["fixed"])
    sitk.WriteImage(case.moving, paths["moving"])
    sitk.WriteImage(case.mask, paths["mask"])
    sitk.WriteTransform(case.truth, paths["truth"])
    paths["description"] = (f"{case.description}; {case.fixed.GetSize()} voxels at {args.spacing} mm; "
                            f"mean TRE before {case.error_before()['mean']:.2f} mm")
    return paths


def _peak_rss_mb() -> float:
    """Peak resident memory of this process's own address space (VmHWM).

    ru_maxrss is not used: Linux carries the parent's peak across fork/exec into it, so every
    worker would report at least the launcher's memory.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(name: str, case: dict[str, str]) -> dict[str, float]:
    """Run one method in this process and return its numbers."""
    from MultimodalFusionLib.registration.accuracy import transform_error

    method = METHODS[name]
    with tempfile.TemporaryDirectory() as scratch:
        # transformix writes deformationField.nii into the working directory: keep it in scratch
        cwd = os.getcwd()
        os.chdir(scratch)
        try:
            out = method.run(case["fixed"], case["moving"], scratch)
        finally:
            os.chdir(cwd)
    recovered, seconds = out[0], out[1]
    cpu = out[2] if len(out) > 2 else float("nan")
    # peak memory of the registration (imports, data, registration), before the TRE computation
    peak_mb = _peak_rss_mb()
    fixed = sitk.ReadImage(case["fixed"])
    mask = sitk.ReadImage(case["mask"])
    truth = sitk.ReadTransform(case["truth"])
    tre = transform_error(recovered, truth, fixed, mask)
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_mb": peak_mb, "tre_mean": tre["mean"],
            "tre_max": tre["max"]}


def run_in_subprocess(name: str, case_json: str, timeout: float) -> dict[str, float] | str:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--case-json", case_json]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f} s"
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
        return f"failed: {lines[-1] if lines else proc.returncode}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    _register_optional_rows()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fixed", help="fixed image of a pair with a known answer")
    p.add_argument("--moving", help="moving image")
    p.add_argument("--true-transform", help="true fixed->moving transform file")
    p.add_argument("--mask", help="mask on the fixed grid for the TRE (default: automatic foreground mask)")
    p.add_argument("--spacing", type=float, default=1.0, help="voxel size of the built-in pair (default 1 mm)")
    p.add_argument("--repeats", type=int, default=1, help="separate runs per method (median reported)")
    p.add_argument("--only", help=f"comma-separated method names: {', '.join(METHODS)}")
    p.add_argument("--timeout", type=float, default=1200, help="seconds per run")
    p.add_argument("--json", help="also write the rows to this JSON file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--case-json", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        with open(args.case_json) as fh:
            case = json.load(fh)
        print(json.dumps(worker(args.worker, case)))
        return 0

    names = [n.strip() for n in args.only.split(",")] if args.only else list(METHODS)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        sys.exit(f"unknown method(s) {unknown}; known: {', '.join(METHODS)}")
    with tempfile.TemporaryDirectory() as folder:
        case = prepare_case(args, folder)
        case_json = os.path.join(folder, "case.json")
        with open(case_json, "w") as fh:
            json.dump(case, fh)
        print(f"pair: {case['description']}", file=sys.stderr)
        rows = []
        for name in names:
            m = METHODS[name]
            if m.needs and importlib.util.find_spec(m.needs[0]) is None:
                # the worker had failed with "ModuleNotFoundError: No module named 'itk'", naming no fix
                missing = f"not installed: pip install {m.needs[1]} (`make bench` installs the peers)"
                print(f"  {name}: {missing}", file=sys.stderr)
                rows.append({"name": name, "tool": m.tool, "task": m.task, "error": missing})
                continue
            runs = []
            for i in range(args.repeats):
                res = run_in_subprocess(name, case_json, args.timeout)
                print(f"  {name} run {i + 1}/{args.repeats}: {res}", file=sys.stderr)
                if isinstance(res, str):
                    runs = res
                    break
                runs.append(res)
            if isinstance(runs, str):
                rows.append({"name": name, "tool": m.tool, "task": m.task, "error": runs})
            else:
                rows.append({"name": name, "tool": m.tool, "task": m.task, "runs": len(runs),
                             **{k: statistics.median(r[k] for r in runs) for k in runs[0]}})
    print(f"\nPair: {case['description']}. Median of {args.repeats} process(es) per row; "
          "TRE over the mask; reg s = wall time of the registration call alone; CPU s = its CPU time "
          f"over all threads (less sensitive to other load on a shared machine); {os.cpu_count()} cores.\n")
    print("| tool and settings | task | reg s | CPU s | peak MB | mean TRE mm | max TRE mm |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['tool']} | {r['task']} | {r['error']} | | | | |")
        else:
            print(f"| {r['tool']} | {r['task']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} | "
                  f"{r['peak_mb']:.0f} | {r['tre_mean']:.3f} | {r['tre_max']:.3f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
