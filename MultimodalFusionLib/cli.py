"""The ``mmfusion`` command line.

Each sub-command is a pair of functions: ``_add_<name>(subparsers)`` builds its parser and
sets ``func`` to ``_run_<name>(args) -> int``. Front-end work only: parse, call the engine,
print. Errors from the engine (``MultimodalFusionError``) are printed as one plain message
with a non-zero exit code, never as a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import warnings
from typing import Any, Callable, Iterator, Sequence

from . import __version__
from .errors import MultimodalFusionError

__all__ = ["main", "build_parser"]


# ----------------------------------------------------------------------------- helpers
class ProgressBar:
    """A tqdm bar driven by the engine's ``progress(fraction, message)`` callback."""

    def __init__(self, enabled: bool = True, desc: str = ""):
        self.enabled = enabled and sys.stderr.isatty() or os.environ.get("MMFUSION_PROGRESS") == "1"
        self._bar = None
        self._desc = desc

    def __call__(self, fraction: float, message: str) -> bool:
        if not self.enabled:
            return True
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=1000, desc=self._desc, file=sys.stderr, leave=False,
                             bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")
        self._bar.n = int(round(fraction * 1000))
        self._bar.set_postfix_str(message[:60], refresh=True)
        return True

    def write(self, line: str) -> None:
        """Print a line to stdout now (above the bar when there is one), flushed: a log file shows it at once."""
        if self._bar is not None:
            self._bar.write(line, file=sys.stdout)
            sys.stdout.flush()  # tqdm's write does not flush: to a file, the lines came in 8 KB blocks
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _device(text: str) -> str:
    """An argparse type: a torch device name the engine runs on (auto, cpu, cuda, cuda:N), normalised;
    whether a GPU is there is checked when the command runs (devices.select_device)."""
    from .devices import device_name_ok

    if not device_name_ok(text):
        raise argparse.ArgumentTypeError(f"invalid device {text!r} (use auto, cpu, cuda or cuda:N)")
    return text.strip().lower()


def _print_warnings(messages: Sequence[str]) -> None:
    """A registration's or fusion's warnings, ``warning: ...`` a line, on stderr, as register and run print them: stdout
    keeps the results (and --json's JSON) alone."""
    for w in messages:
        print(f"warning: {w}", file=sys.stderr)


def _print_json(obj: Any) -> None:
    """Print strictly valid JSON (NaN as null, +/-inf as "Infinity"/"-Infinity"), like the metrics files."""
    from .io import to_json_safe

    print(json.dumps(to_json_safe(obj), indent=2, allow_nan=False))


# ----------------------------------------------------------------------------- info
def _numbers(values: Any, spec: str, sep: str = ", ") -> str:
    return sep.join(format(v + 0.0, spec) for v in values)  # + 0.0: no "-0" for a negated zero


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="size, spacing, origin and direction (LPS and RAS), orientation code and "
                                   "intensity range of images")
    p.add_argument("files", nargs="+", help="image files or DICOM folders")
    p.add_argument("--series", help="DICOM series UID or description, when a folder holds several")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from .io import describe_segment_layers, image_info, read_image, segment_layers

    if args.series:  # for files only, it had been ignored, rc 0
        _check_series_reaches_a_folder("--series", args.series, [("input", f) for f in args.files])
    infos = {}
    for f in args.files:  # a file named twice is read once
        if f not in infos:
            # a .seg.nrrd's layers kept and named: 3 or 4 of them had been shown as an RGB(A) image's components
            image = read_image(f, series=args.series if _is_dicom_source(f) else None, keep_color=True,
                               segment_layers=True, keep_alpha=True)
            infos[f] = image_info(image)
            layers = segment_layers(image, f)
            if layers:
                infos[f]["segmentation"] = {"layers": image.GetNumberOfComponentsPerPixel(),
                                            "segments_by_layer": layers}
    if args.json:
        # one key a file: one named twice is there once (keyed by path, it had been left out without a word)
        repeated = sorted({f for f in args.files if args.files.count(f) > 1})
        if repeated:
            print(f"mmfusion info: {', '.join(repr(f) for f in repeated)} given more than once: "
                  "listed once in the JSON (keyed by path)", file=sys.stderr)
        _print_json(infos)
        return 0
    for f, info in ((f, infos[f]) for f in args.files):  # each file as often as it was named, in order
        print(f"{f}")
        print(f"  dimension  {info['dimension']}D, {info['components']} component(s), {info['pixel_type']}")
        if "segmentation" in info:
            seg = info["segmentation"]
            print(f"  segmentation 3D Slicer .seg.nrrd, segments in {seg['layers']} layer(s) (one component a layer;"
                  " no colour channels): " + describe_segment_layers(seg["segments_by_layer"]))
        print(f"  size       {' x '.join(str(s) for s in info['size'])}")
        print(f"  spacing    {', '.join(f'{s:.6g}' for s in info['spacing'])} mm")
        # ITK's numbers (LPS) and Slicer's (RAS) side by side: users compare both with their tools
        print(f"  origin     {_numbers(info['origin'], '.6g')} mm (LPS: ITK, ANTs, elastix)"
              f" = {_numbers(info['origin_ras'], '.6g')} mm (RAS: Slicer)")
        d = info["dimension"]
        for label, key, tool in (("direction", "direction", "LPS; rows, column j = image axis j"),
                                 ("", "direction_ras", "RAS: Slicer's IJK to RAS direction matrix")):
            rows = [info[key][i * d:(i + 1) * d] for i in range(d)]
            print(f"  {label:<10} " + " | ".join(_numbers(r, '+.4f', ' ') for r in rows) + f"  ({tool})")
        if info.get("orientation"):
            oblique = (f", oblique by {info['oblique_degrees']:.1f} deg: nearest axes"
                       if info["oblique_degrees"] > 0.05 else "")
            print(f"  orientation {info['orientation']} (axes run toward, as nibabel aff2axcodes and ITK DICOMOrient"
                  f" name it; ITK-SNAP RAI code {info['orientation_itksnap']}){oblique}")
        # a sheared or unnormalised direction had been told only "oblique by 26.6 deg: nearest axes"
        if info["sheared_axes"] is not None and info["shear_degrees"] > 0.05:
            i, j = ("IJK"[a] for a in info["sheared_axes"])
            print(f"  WARNING    axes not orthogonal: {i} and {j} are {info['shear_degrees']:.1f} deg off a right "
                  "angle (a sheared grid; NIfTI cannot store it, .mha and .nrrd can)")
        if any(abs(length - 1.0) > 1e-4 for length in info["direction_lengths"]):
            steps = (s * length for s, length in zip(info["spacing"], info["direction_lengths"]))
            print(f"  WARNING    direction columns of lengths {_numbers(info['direction_lengths'], '.4g')}, not 1: "
                  f"ITK steps {_numbers(list(steps), '.6g')} mm along the axes, not the spacing")
        if info["min"] is None:  # every voxel NaN/inf: no finite statistics
            print("  intensity  no finite voxel")
        else:
            of = " (of the magnitude: the pixels are complex)" if info["statistics_of"] == "magnitude" else ""
            print(f"  intensity  min {info['min']:.6g}, max {info['max']:.6g}, mean {info['mean']:.6g}{of}")
        if info["non_finite_voxels"]:
            print(f"  WARNING    {info['non_finite_voxels']} NaN/inf voxels")
    return 0


# ----------------------------------------------------------------------------- register / resample / demo
def _add_register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("register", help="register MOVING to FIXED (rigid, affine, B-spline; mutual information)",
                       description="Find the transform mapping FIXED points into MOVING and write DIR/transform.tfm "
                                   "(.h5 when deformable), DIR/moving_resampled.nii.gz (with moving_resampled.json, its "
                                   "BIDS sidecar, for a PET's units), DIR/metrics.json and "
                                   "DIR/checkerboard.png.")
    p.add_argument("fixed", help="fixed (reference) image file or DICOM folder")
    p.add_argument("moving", help="moving image file or DICOM folder")
    p.add_argument("--output-dir", "-o", required=True, help="output folder")
    p.add_argument("--preset", help="parameter preset (--list-presets shows them), e.g. ct-mr-head")
    p.add_argument("--stages", help="comma-separated stages, e.g. rigid,affine,bspline (default: the preset's, "
                                    "else rigid)")
    p.add_argument("--fixed-mask", help="mask image on the fixed grid (metric region)")
    p.add_argument("--moving-mask", help="mask image on the moving grid")
    p.add_argument("--initial-transform", help="transform file to start from (ITK, a displacement field image or "
                                                "elastix' TransformParameters.N.txt; replaces the initializer: not "
                                                "with --initializer)")
    p.add_argument("--seed", type=int, help="sampling seed: same seed, same transform (bit-identical)")
    p.add_argument("--backend", choices=["sitk", "torch"], default="sitk", help="registration backend")
    _add_initializer_and_series(p)
    p.add_argument("--json", action="store_true", help="print metrics.json to stdout")
    p.set_defaults(func=_run_register)


class _ListPresets(argparse.Action):
    """``--list-presets``: print the presets with their stages and exit (no images needed)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        from .registration import list_presets, load_preset, presets_dir

        if not list_presets():  # an empty line and exit 0 would read as "no presets exist, all is well"
            parser.exit(2, f"{parser.prog}: error: No registration presets found in '{presets_dir()}'. Fix: Point "
                           "MMFUSION_PRESETS_DIR at a folder of preset .json files (e.g. Resources/Presets), "
                           "or unset it.\n")
        for name in list_presets():
            preset = load_preset(name)
            stages = ",".join(st.name for st in preset.stages)
            print(f"{name:<22} {stages:<22} {preset.description}")
        parser.exit(0)


def _add_initializer_and_series(p: argparse.ArgumentParser) -> None:
    """Options shared by register and run: initializer, preset list, DICOM series per image."""
    from .registration.parameters import INITIALIZER_HELP, INITIALIZERS

    p.add_argument("--initializer", choices=list(INITIALIZERS),
                   help="the registration's start: " + " ".join(f"{name}: {INITIALIZER_HELP[name]}"
                                                                for name in INITIALIZERS)
                        + " (default: the preset's, else geometry)")
    p.add_argument("--list-presets", action=_ListPresets, help="print the presets and their stages, then exit")
    _add_series(p, ("fixed", "moving"))


def _add_series(p: argparse.ArgumentParser, roles: Sequence[str]) -> None:
    """--series for every input and --ROLE-series for each (``_series`` reads them)."""
    p.add_argument("--series", help="DICOM series UID or description for every input, when a folder holds several")
    for role in roles:
        p.add_argument(f"--{role}-series", help=f"DICOM series of the {role} input (default: --series)")


def _series(args: argparse.Namespace, which: str) -> str | None:
    """The series of input ``which`` (``args.<which>``): its own --WHICH-series, else --series where it is a DICOM
    folder (a file among folders takes none: :func:`_check_series` has refused a flag that applies to no folder)."""
    own = getattr(args, f"{which}_series", None)
    return own or (args.series if _is_dicom_source(getattr(args, which)) else None)


def _check_components(images: dict[str, Any]) -> None:
    """Grey, RGB or RGBA images (path: image read with keep_color), a 2-component one named by its file's format
    (fusion, given the images alone, can only guess: a 2-channel .nrrd had been "a complex image saved as
    MetaImage")."""
    from .validation import check_components

    for path, image in images.items():
        check_components(image, f"image '{path}'", path=path)


def _is_dicom_source(path: str) -> bool:
    """Whether ``path`` is what a DICOM series is picked from (as io.read_image reads it): a folder or a DICOMDIR."""
    return os.path.isdir(path) or (os.path.basename(path).upper() == "DICOMDIR" and os.path.isfile(path))


def _series_ignored(flag: str, value: str, what: str) -> MultimodalFusionError:
    from .errors import InputError

    return InputError(f"{flag} {value} given, but {what}: a series is picked among the series of a DICOM folder, "
                      "so it would be ignored.",
                      f"Leave out {flag} (it applies to DICOM folders only), or give the DICOM folder that holds "
                      "the series.")


def _check_series_reaches_a_folder(flag: str, value: str, inputs: Sequence[tuple[str, str]]) -> None:
    """Refuse ``flag value`` (a series option) where none of the ``inputs`` it applies to ((what, path) pairs) is
    a DICOM folder: it would be ignored. The one text for info, resample and the commands of two or three inputs."""
    if any(_is_dicom_source(path) for _, path in inputs):
        return
    if len(inputs) == 1:
        what, path = inputs[0]
        raise _series_ignored(flag, value, f"the {what} '{path}' is a file, not a DICOM folder")
    raise _series_ignored(flag, value, "none of the inputs it applies to ("
                          + ", ".join(f"'{path}'" for _, path in inputs) + ") is a DICOM folder")


def _check_series(args: argparse.Namespace, roles: Sequence[str]) -> None:
    """Refuse a series option that no DICOM folder takes: --ROLE-series given for a file (``args.<role>``), and
    --series where every input it applies to (those without their own --ROLE-series) is a file. They had been
    ignored without a word, rc 0 (``fuse a.png b.png --a-series foo``)."""
    for role in roles:
        value = getattr(args, f"{role}_series", None)
        if value:
            _check_series_reaches_a_folder(f"--{role}-series", value, [(f"{role} input", getattr(args, role))])
    if not args.series:
        return
    rest = [(f"{role} input", getattr(args, role)) for role in roles if not getattr(args, f"{role}_series", None)]
    if not rest:
        raise _series_ignored("--series", args.series, "every input has its own --ROLE-series")
    _check_series_reaches_a_folder("--series", args.series, rest)


def _run_register(args: argparse.Namespace) -> int:
    from .io import (
        check_not_overwriting_inputs,
        check_output_folder,
        one_slice_inputs_as_2d,
        read_image,
        read_transform,
    )
    from .registration import check_one_start, register, resolve_parameters
    from .registration.outputs import save_registration_outputs

    _check_series(args, ("fixed", "moving"))
    stages = [s for s in args.stages.split(",") if s.strip()] if args.stages is not None else None
    # the settings before any image is read: a misspelt key or value in a preset file, or a stage name, had been
    # found only after both images were loaded (1.1 s more for two 300^3 volumes; a DICOM folder takes longer)
    settings = resolve_parameters(preset=args.preset, stages=stages, seed=args.seed, initializer=args.initializer,
                                  backend=args.backend)
    # --initializer with --initial-transform, which replaces it (it had been ignored, rc 0): register() is given the
    # resolved settings, so the name is checked here
    check_one_start(args.initializer, settings.initializer,
                    f"an initial transform (--initial-transform {args.initial_transform})" if args.initial_transform
                    else None, "drop --initializer, or --initial-transform")
    check_not_overwriting_inputs(
        [os.path.join(args.output_dir, n) for n in ("checkerboard.png", "metrics.json")],
        [args.fixed, args.moving, args.fixed_mask, args.moving_mask, args.initial_transform],
        patterns=[os.path.join(args.output_dir, n) for n in ("transform.*", "moving_resampled.*")])
    check_output_folder(args.output_dir)  # a file of its name had been refused once the registration had run
    # a DICOM file of one slice as the one-slice volume it is (taken as 2D below): moving_resampled where it lies
    fixed = read_image(args.fixed, series=_series(args, "fixed"), float32=True, slice_as_2d=False)
    moving = read_image(args.moving, series=_series(args, "moving"), float32=True, slice_as_2d=False)
    fixed_mask = read_image(args.fixed_mask) if args.fixed_mask else None
    moving_mask = read_image(args.moving_mask) if args.moving_mask else None
    # read once: the registration starts from it and the checkerboard's "before" shows it (it had been read twice)
    initial = read_transform(args.initial_transform) if args.initial_transform else None
    # a 2D slice saved as a volume (Slicer, ITK-SNAP) is registered as the 2D image it is; the resampled
    # moving image is written back as a one-slice volume on the fixed one's geometry
    slice_volume, fixed, moving, fixed_mask, moving_mask = one_slice_inputs_as_2d(fixed, moving, fixed_mask, moving_mask)
    bar = ProgressBar(desc="register")
    try:
        # its warnings (a displacement field that does not cover the fixed image among them) name the file
        result = register(fixed, moving, settings, fixed_mask=fixed_mask, moving_mask=moving_mask,
                          initial_transform=initial, initial_transform_name=args.initial_transform, progress=bar,
                          backend=args.backend)
    finally:
        bar.close()
    # the checkerboard's "before" shows where the registration started (the metric_before transform)
    metrics = save_registration_outputs(
        result, fixed, moving, args.output_dir,
        extra={"inputs": {"fixed": args.fixed, "moving": args.moving}}, initial_transform=initial,
        slice_volume=slice_volume)
    if args.json:
        _print_json(metrics)
        _print_warnings(result.warnings)  # on stderr with --json too: they had been inside the JSON only
        return 0
    from .registration.result import RAN_AGAIN_NOTE, iterations_text, ran_again

    # a masked first stage run again from its coarsest level aligned without the masks: its iterations are the
    # second run's (metrics.json's effective.masked_start has both ends), said so beside them
    again = ran_again(result.parameters)
    for i, s in enumerate(result.stages):  # iterations per resolution level, coarsest first, and their sum
        note = f" ({RAN_AGAIN_NOTE})" if i == 0 and again else ""
        print(f"{s.name:>8}: metric {_num(s.metric_before, '.4f')} -> {_num(s.metric_after, '.4f')}, "
              f"{iterations_text(s)} iterations, "
              f"{s.seconds:.1f} s{'' if s.accepted else ' (discarded: made the metric worse)'}{note}")
    for line in _transform_lines(metrics.get("transform")):
        print(line)
    _print_warnings(result.warnings)
    out = metrics["outputs"]
    print(f"wrote {os.path.join(args.output_dir, out['transform'])}, {out['moving_resampled']}, "
          f"{out['checkerboard']}, metrics.json")
    return 0


def _transform_lines(summary: dict[str, Any] | None) -> list[str]:
    """A linear result's numbers, each with its convention: users check them in Slicer or ITK tools."""
    from .registration.result import transform_rows

    rows = transform_rows(summary)
    return [f"{name}: {text}" if i == 0 else f"  {name} {text}" for i, (name, text) in enumerate(rows)]


def _add_resample(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("resample", help="resample MOVING onto the grid of --reference with a transform")
    p.add_argument("moving", help="image (or label/mask) to resample; a colour one stays in colour")
    p.add_argument("--reference", required=True, help="image whose grid the output takes")
    p.add_argument("--transform", action="append",
                   help="transform file (fixed -> moving points, as `register` writes; a displacement field image, as "
                        "ANTs' *Warp.nii.gz; or elastix' TransformParameters.N.txt, with its initial transforms: "
                        "its transform only, sampled with --interpolation, not the file's interpolator; "
                        "--interpolation bspline is transformix' default); "
                        "identity when omitted. "
                        "Repeat it to chain several in antsApplyTransforms' order: `--transform A --transform B` "
                        "maps a reference point x to B(A(x)), the first given applied to the point first")
    p.add_argument("--invert", action="store_true",
                   help="apply the inverse of the transform (of the chain): e.g. the fixed image onto the moving "
                        "image's grid with `register`'s transform.tfm (linear transforms only)")
    p.add_argument("--output", "-o", required=True, help="output image file")
    p.add_argument("--interpolation", choices=["linear", "bspline", "lanczos", "nearest", "label-gaussian"],
                   default="linear",
                   help="linear (default), bspline (cubic) or lanczos (windowed sinc) give float32 (float64 for a "
                        "float64 image); nearest or label-gaussian (the label of most Gaussian weight, sigma 1 voxel, as "
                        "antsApplyTransforms' MultiLabel: smoother label edges, but a label one voxel thin vanishes) "
                        "for labels and masks, which keep their pixel type")
    p.add_argument("--default-value", type=float, default=0.0, help="value outside the moving image")
    p.add_argument("--components", choices=["vector", "channels", "tensor"],
                   help="a multi-component image that is no RGB/RGBA picture: vector (a displacement or vector field "
                        "in physical space: its vectors turned by the transform, as antsApplyTransforms -e 1), "
                        "tensor (3x3 diffusion tensors, 6 or 9 components: each turned with the transform's "
                        "Jacobian, see --tensor-reorientation; the default for a DTI NRRD or a NIfTI of intent "
                        "SYMMATRIX) or "
                        "channels (each component on its own); a vector field is refused under a turning transform "
                        "without it")
    p.add_argument("--tensor-reorientation", choices=["ppd", "fs"], default="ppd",
                   help="how tensors are turned: ppd (preservation of the principal direction, as ANTs' "
                        "ReorientTensorImage and Slicer's Resample DTI Volume by default: the principal direction "
                        "turns as a vector does) or fs (finite strain: the Jacobian's rotation only)")
    p.add_argument("--tensor-interpolation", choices=["linear", "log-euclidean"], default="linear",
                   help="how tensors are interpolated: linear (component by component, the default; it swells "
                        "them: the determinant grows between tensors of other directions) or log-euclidean (their "
                        "matrix logarithms: no swelling; eigenvalues below 1e-3 of the median mean diffusivity are "
                        "raised to it, zero tensors, the background, stay zero)")
    p.add_argument("--series", help="DICOM series UID or description, when a folder holds several")
    p.add_argument("--reference-series", help="DICOM series of the reference (default: --series)")
    p.set_defaults(func=_run_resample)


def _grey_as_colour(image: Any) -> bool:
    """Whether a colour image's first three channels are equal and its alpha channel, if any, is one value (a grey
    picture stored as RGB or as opaque RGBA): a grey one with transparency keeps its alpha, which luminance drops
    (the transparent part of a picture had been written opaque, its hidden pixels showing)."""
    import numpy as np
    import SimpleITK as sitk

    if image.GetNumberOfComponentsPerPixel() not in (3, 4):
        return False
    arr = sitk.GetArrayViewFromImage(image)
    if arr.shape[-1] == 4 and not np.all(arr[..., 3] == arr.reshape(-1, 4)[0, 3]):
        return False
    return bool(np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2]))


def _integer_pixels(image: Any) -> bool:
    import SimpleITK as sitk

    return "integer" in sitk.GetPixelIDValueAsString(image.GetPixelID())


def _check_invert(args: argparse.Namespace) -> None:
    """Refuse ``--invert`` without ``--transform`` (``resample`` and ``evaluate-registration``, whose chain
    :func:`preprocess.chain_transforms` inverts): the identity's inverse would be used without a word."""
    if args.invert and not args.transform:
        from .errors import InputError

        raise InputError("--invert was given without --transform: there is no transform to invert.",
                         "Give the transform file with --transform, or leave out --invert.")


def _transform_chain(paths: Sequence[str] | None, invert: bool) -> tuple[Any, list[Any]]:
    """The transforms of ``--transform`` (``resample``, ``evaluate-registration``) read and chained
    (:func:`preprocess.chain_transforms`; None for none), and the transforms read, one a path. With ``--invert``, a chain holding a displacement field named
    as antsRegistration names its fields (``out1Warp.nii.gz``) is refused naming ANTs' own inverse field
    (``out1InverseWarp.nii.gz``, its path where it lies beside it): "register the other way round" alone had sent an
    ANTs user to a new registration for a file ANTs had already written."""
    import SimpleITK as sitk

    from .errors import InputError
    from .io import ants_inverse_warp, read_transform
    from .preprocess import chain_transforms

    paths = list(paths or [])
    transforms = [read_transform(p) for p in paths]
    try:
        return chain_transforms(transforms, invert=invert), transforms
    except InputError as exc:
        named = [(p, found) for p, t in zip(paths, transforms)
                 if isinstance(t, sitk.DisplacementFieldTransform) and (found := ants_inverse_warp(p))]
        # only the refusal to invert is answered with ANTs' inverse: a chain of 2D and 3D transforms with an
        # out1Warp.nii.gz had been told of ANTs' inverse chain, its fix (transforms of one dimension) replaced
        if not invert or not named or len({t.GetDimension() for t in transforms}) > 1:
            raise
        said = []
        for field, inverse in named:
            if os.path.isfile(inverse):
                said.append(f"ANTs' inverse of '{field}' is '{inverse}', beside it")
            else:
                said.append(f"antsRegistration writes the inverse of '{field}' beside it, as "
                            f"'{os.path.basename(inverse)}', which is not in '{os.path.dirname(inverse) or '.'}'")
        if len(paths) == 1:
            inverse = named[0][1]
            fix = said[0] + (f": give it without --invert (--transform '{inverse}')." if os.path.isfile(inverse) else
                             ": give that file, from antsRegistration's output, without --invert.")
        else:  # the other parts too must be inverted, in the other order; --invert inverts the whole chain only
            inverses = dict(named)
            fields = [p for p, t in zip(paths, transforms) if not t.IsLinear()]
            chain = ""
            if all(p in inverses for p in fields):  # each field has ANTs' inverse: the chain's inverse, ANTs' way
                chain = " (antsApplyTransforms " + " ".join(
                    f"-t {inverses[p]}" if p in inverses else f"-t [{p},1]" for p in reversed(paths)) + ")"
            fix = ("; ".join(said) + ". The chain's inverse is each part's inverse in the other order" + chain
                   + "; --invert inverts a whole chain only, so apply that with antsApplyTransforms, or register "
                   "the other way round (mmfusion register MOVING FIXED).")
        raise InputError(exc.problem, fix) from None


def _check_resample_overlap(out: Any, moving: Any, reference: Any, transform: Any, args: argparse.Namespace) -> None:
    """Refuse a resampled image ``out`` in which no voxel of the reference grid falls inside the moving image (as
    they lie, or through ``--transform``): it had been written as nothing but ``--default-value``, rc 0, where ``run
    --no-register`` and ``fuse`` refuse the same pair. Inside is ITK's test, the one the resampler takes a moving
    value by (:func:`metrics.reached_voxels`, the voxels the alignment metrics compare), looked at only where every
    voxel of ``out`` is the default value (a label map whose background alone reaches the grid is written)."""
    import numpy as np
    import SimpleITK as sitk

    from .errors import InputError
    from .io import display_name
    from .metrics import reached_voxels

    values = sitk.GetArrayViewFromImage(out)
    default = float(args.default_value)
    if not bool(np.isnan(values).all() if np.isnan(default) else (values == default).all()):
        return
    reached = reached_voxels(reference, moving, transform)  # held: a view of a temporary image reads freed memory
    if sitk.GetArrayViewFromImage(reached).any():
        return
    how = "through the transform" if transform is not None else "as they lie (no --transform)"
    fix = ("Check that the transform maps reference points into the moving image (fixed -> moving, as mmfusion "
           "register writes it; --invert for one written the other way round), and the origins in the headers "
           "(mmfusion info)." if transform is not None else
           "Give the transform that aligns them (--transform DIR/transform.tfm, as mmfusion register writes it), "
           "or check the origins in the headers (mmfusion info).")
    raise InputError(f"The moving image {display_name(args.moving)} does not overlap the reference "
                     f"{display_name(args.reference)} {how}: every voxel of the output would be the default value "
                     f"({args.default_value:g}).", fix)


def _run_resample(args: argparse.Namespace) -> int:
    from .io import (
        check_not_overwriting_inputs,
        check_output_name,
        read_image,
        write_image,
    )
    from .preprocess import field_coverage_notes, resample, resampled_pixel_type

    check_output_name(args.output)  # before reading: -o r.MHA had been refused only once resampled
    check_not_overwriting_inputs([args.output], [args.moving, args.reference, *(args.transform or [])])
    _check_invert(args)
    # --series is the moving image's, and the reference's unless --reference-series
    if args.reference_series:
        _check_series_reaches_a_folder("--reference-series", args.reference_series, [("reference", args.reference)])
    if args.series:
        _check_series_reaches_a_folder("--series", args.series, [("moving image", args.moving)]
                                       + ([] if args.reference_series else [("reference", args.reference)]))
    # a colour image stays in colour (each channel resampled): read as luminance, an RGB slice or a colour
    # volume had been written grey without a word; a grey one stored as RGB (R = G = B) is resampled as grey
    # a DICOM file of one slice as the one-slice volume it is, as run and register read it (resample applies register's
    # 2D transform to it as its 2D slice and writes a one-slice volume where the reference lies): read as 2D, the result
    # had no S, and a slice 100 mm off with no transform had been resampled as if it lay on the reference
    moving = read_image(args.moving, series=args.series if _is_dicom_source(args.moving) else None, keep_color=True,
                        keep_alpha=True, slice_as_2d=False)  # an RGBA picture's alpha resampled as a channel
    # a picture only: a float vector field whose components are equal (a zero field) had been written as one grey
    # value per voxel
    if moving.GetNumberOfComponentsPerPixel() > 1 and args.components != "vector" \
            and (args.components == "channels" or _integer_pixels(moving)) and _grey_as_colour(moving):
        import SimpleITK as sitk

        # its grey channel, of its own pixel type: as luminance (float32) a label map stored as grey RGB came out of
        # --interpolation nearest as float labels (209.00002 for 209), not the input's type nearest keeps
        moving = sitk.VectorIndexSelectionCast(moving, 0)
    # only its grid is used: a DTI volume (6 components a voxel) or a vector field had been refused as a reference
    # ("only grey, RGB and RGBA images are supported")
    reference = read_image(args.reference, series=args.reference_series
                           or (args.series if _is_dicom_source(args.reference) else None), keep_color=True,
                           keep_alpha=True, slice_as_2d=False)
    # the output takes its grid (a volume to .png, .jp2) and a pixel type known now (float to .dcm: refused by ITK
    # once resampled, before)
    check_output_name(args.output, reference,
                      pixel_type=resampled_pixel_type(moving, args.interpolation))
    transform, read = _transform_chain(args.transform, args.invert)
    _print_warnings(field_coverage_notes(args.transform, read, args.invert, reference, "reference grid",
                                         "Give a --reference the field covers (ANTs writes its warp on the fixed "
                                         "image's grid)."))
    out = resample(moving, reference, transform, interpolation=args.interpolation,
                   default_value=args.default_value, components=args.components,
                   tensor_reorientation=args.tensor_reorientation,
                   tensor_interpolation=args.tensor_interpolation)
    _check_resample_overlap(out, moving, reference, transform, args)
    print(f"wrote {write_image(out, args.output)}")
    return 0


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the demo on bundled data (known misalignments) and print the errors")
    p.add_argument("--output-dir", "-o", default="demo-output", help="output folder (default: demo-output)")
    p.add_argument("--spacing", type=float, default=1.0,
                   help="voxel size (mm) of the 3D case, 0.5 to 20 (default 1; 3 for a quick run)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import format_summary, run_demo

    bar = ProgressBar(desc="demo")
    try:
        results = run_demo(args.output_dir, progress=bar, spacing_mm=args.spacing)
    finally:
        bar.close()
    if args.json:
        _print_json(results)
    else:
        print(format_summary(results))
        print(f"outputs in {args.output_dir}/")
    return 0


# ----------------------------------------------------------------------------- fuse / evaluate / run
_FUSION_PARAM_FLAGS = ("weight", "wavelet", "levels", "sigma", "colormap", "opacity", "threshold", "window",
                       "window_a", "adapt_steps", "weights", "device", "selection")


def _add_fusion_params(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("fusion method parameters (only those of the chosen method)")
    g.add_argument("--weight", type=float, help="average: weight of the anatomical image A (0..1, default 0.5)")
    g.add_argument("--wavelet", help="wavelet: PyWavelets wavelet name (default db2)")
    g.add_argument("--levels", type=int, help="wavelet/laplacian: decomposition levels (default 3/4)")
    g.add_argument("--sigma", type=float, help="laplacian: Gaussian sigma in voxels (default 1.0)")
    g.add_argument("--colormap", help="overlay: pet (default), hot, rainbow, grey or a matplotlib name")
    g.add_argument("--opacity", type=float, help="overlay: colour opacity 0..1 (default 0.5)")
    g.add_argument("--threshold", type=float, help="overlay: functional value below which no colour shows")
    # `fuse` and `run` both pass it to fusion.fuse as window_b, whatever the method
    g.add_argument("--window", type=float, nargs=2, metavar=("LO", "HI"),
                   help="every method: intensity window of the functional image B mapped to 0..1 (default: 8-bit as "
                        "it is, others min..max; overlay: its display window, default min..99.5th percentile)")
    # B's in Slicer's form too: without it, argparse took `--window-level W L` as an abbreviation of
    # --window-level-a and set the anatomical image's window with the PET's numbers
    g.add_argument("--window-level", type=float, nargs=2, metavar=("WINDOW", "LEVEL"),
                   help="--window as Slicer shows it, window width and level: --window-level 5 2.5 is --window 0 5 "
                        "(LO = LEVEL - WINDOW/2, HI = LEVEL + WINDOW/2)")
    # the anatomical image's (window_a): a CT's HU range is -1024..3000 or more, so min..max leaves soft tissue
    # (-100..100 HU) within 13 of 255 grey levels; its window had been settable in Python only
    g.add_argument("--window-a", type=float, nargs=2, metavar=("LO", "HI"),
                   help="every method: intensity window of the anatomical image A mapped to 0..1 (default: 8-bit as "
                        "it is, others min..max), e.g. a CT's soft tissue -160 240 (HU)")
    g.add_argument("--window-level-a", type=float, nargs=2, metavar=("WINDOW", "LEVEL"),
                   help="the same as Slicer shows it, window width and level: --window-level-a 400 40 is "
                        "--window-a -160 240 (LO = LEVEL - WINDOW/2, HI = LEVEL + WINDOW/2)")
    g.add_argument("--adapt", dest="adapt_steps", type=int, metavar="STEPS",
                   help="deep: per-study adaptation steps, a short unsupervised fine-tuning on this very pair "
                        "(default 0: the shipped weights as they are)")
    g.add_argument("--model", dest="weights", metavar="WEIGHTS",
                   help="deep: .safetensors weights, or 2d / 3d for the shipped ones (default 2d: 2D network, "
                        "volumes slice by slice; 3d: 3D network with sliding windows, slower on a CPU)")
    g.add_argument("--deep-device", dest="device", type=_device, metavar="{auto,cpu,cuda,cuda:N}",
                   help="deep: device (default auto: CUDA when present, CPU otherwise; cuda:N picks a GPU)")
    g.add_argument("--selection", choices=("hard", "blend"),
                   help="deep: hard (default: each voxel from the input its weight map favours) or blend "
                        "(the network's weighted blend plus detail residual)")


#: The flags of fusion parameters whose flag is not their name (``--weight`` is ``weight``).
_FUSION_FLAG_NAMES = {"adapt_steps": "--adapt", "weights": "--model", "device": "--deep-device"}


def _fusion_flag(key: str) -> str:
    return _FUSION_FLAG_NAMES.get(key, "--" + key.replace("_", "-"))


def _fusion_params(args: argparse.Namespace) -> dict[str, Any]:
    params = {k: (tuple(v) if isinstance(v, list) else v) for k in _FUSION_PARAM_FLAGS
              if (v := getattr(args, k, None)) is not None}
    # each image's window given as Slicer shows it (width, level): (the flag, the window's key and flag, the image, an
    # example)
    for flag, key, image, example in (
            ("--window-level-a", "window_a", "anatomical image A", "--window-level-a 400 40 for a CT's soft tissue"),
            ("--window-level", "window", "functional image B", "--window-level 5 2.5 for a PET's SUV 0..5")):
        window_level = getattr(args, flag[2:].replace("-", "_"), None)
        if window_level is None:
            continue
        from .errors import InputError

        width, level = window_level
        if key in params:
            raise InputError(f"Both {_fusion_flag(key)} and {flag} were given: they set the same window of the "
                             f"{image}.", "Give one of them.")
        from .fusion import window_from_width_level

        # NaN or inf had become window_a (nan, nan) or (-inf, inf), refused naming window_a and --window-a, which
        # were not given; a width of 0 or less a window with its high below its low
        params[key] = window_from_width_level(
            width, level, flag, f"Give the width, then the level, as Slicer shows them, e.g. {example}.")
    return params


def _print_metrics(table: dict[str, dict[str, float]]) -> None:
    from .report import REPORT_METRICS

    keys = list(REPORT_METRICS) + ["MI_mean", "VIF_mean", "SSIM_mean"]
    width = max([12] + [len(str(m)) + 2 for m in table])  # `evaluate` rows are file names: keep the columns
    print("method".ljust(width) + "".join(k.rjust(10) for k in keys))
    def cell(value: Any) -> str:
        # NaN: undefined (e.g. Qabf without edges), n/a; PSNR of identical images: infinite, as the report's ∞
        return _num(value, ".3f", infinity="inf").replace("-0.000", "0.000").rjust(10)

    for method, vals in table.items():
        print(str(method).ljust(width) + "".join(cell(vals.get(k)) for k in keys))
    print("(computed as CDDFuse's Evaluator.py on 8-bit grey images; MI in nats; SSIM/VIF/MI are sums over "
          "both sources, *_mean half of them; PSNR with peak 255)")


def _add_fuse(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("fuse", help="fuse two images already on one grid (e.g. after mmfusion register/resample)")
    p.add_argument("a", help="anatomical image A (CT/MR): the grid and geometry of the output")
    p.add_argument("b", help="functional image B (PET/SPECT/MR) on A's grid; colour slices are fused on Y of YCbCr")
    p.add_argument("--method", default="average", help="fusion method: average, max, pca, wavelet, laplacian, "
                   "overlay, deep (when installed); default average")
    p.add_argument("-o", "--output", required=True, help="fused image file (.nii.gz, .nrrd, .mha, .png)")
    p.add_argument("--report", metavar="DIR", help="also write metrics.json, montage PNG and report.html here")
    p.add_argument("--weight-map", metavar="FILE",
                   help="also write the weight map, A's weight per voxel in 0..1 as 32-bit float on the output's "
                        "grid (.nii.gz, .nrrd, .mha, .tif; not an 8-bit format such as .png)")
    p.add_argument("--json", action="store_true",
                   help="print the metrics as JSON (stdout holds only the JSON, as for the other commands)")
    _add_fusion_params(p)
    _add_series(p, ("a", "b"))
    p.set_defaults(func=_run_fuse)


def _run_fuse(args: argparse.Namespace) -> int:
    import SimpleITK as sitk

    from .errors import InputError
    from .fusion import check_parameters, check_same_grid, fuse, fused_pixel_type
    from .io import (
        _2D_EXTENSIONS,
        as_one_slice_of,
        check_not_overwriting_inputs,
        check_output_folder,
        check_output_name,
        one_slice_axis,
        one_slice_pixels,
        read_image,
        staged_output,
        write_image,
    )
    from .pipeline import _writable
    from .report import report_file_patterns

    _check_series(args, ("a", "b"))
    report_files = [os.path.join(args.report, n) for n in report_file_patterns()] if args.report else []
    outputs = [args.output] + ([args.weight_map] if args.weight_map else [])
    check_not_overwriting_inputs(outputs, [args.a, args.b], patterns=report_files)
    if args.weight_map and os.path.normcase(os.path.realpath(args.weight_map)) == \
            os.path.normcase(os.path.realpath(args.output)):
        raise InputError(f"The weight map and the fused image are the same file ('{args.output}').",
                         "Give --weight-map another name (e.g. weights.nii.gz).")
    if args.report:
        # a file of its name (an input given by mistake) had been refused only after the fusion (minutes for deep
        # fusion), once stdout had said 'fused -> OUT' of the image then discarded
        check_output_folder(args.report)
        # the report writes these names: an output so named was replaced by the report's own file (rc 0)
        mine = ["report.html", "metrics.json", "metrics_chart.png", f"montage_{args.method}.png"]
        for name in mine:
            for given, what in zip(outputs, ("the fused image", "the weight map")):
                if os.path.normcase(os.path.realpath(given)) == \
                        os.path.normcase(os.path.realpath(os.path.join(args.report, name))):
                    raise InputError(f"The output '{given}' is the report's own {name} in '{args.report}': the "
                                     f"report would replace {what} with it.",
                                     "Name the output otherwise, or write it or the report to another folder.")
    # the name before any work: -o fused.GIPL (.MHA, .xyz, x.nii.hdr) had been refused only after the fusion (6 s
    # of deep fusion on a 192x192x160 volume)
    check_output_name(args.output)
    if args.weight_map:
        check_output_name(args.weight_map)
        if args.weight_map.lower().endswith(_2D_EXTENSIONS):
            # write_image would stretch its min..max to 0..255: a weight of 0.03..0.99 read back as 0..1
            raise InputError(f"The weight map '{args.weight_map}' would be an 8-bit picture, its weights (0..1) "
                             "stretched to 0..255.",
                             "Write it as 32-bit float: --weight-map weights.mha (or .nii.gz, .nrrd, .tif).")
    check_parameters(args.method, _fusion_params(args))  # a typo or a missing GPU: before reading the images
    # a DICOM file of one slice as the one-slice volume it is (fused as 2D below), as run reads it: read as 2D it had
    # been written with no S, and two slices 100 mm apart fused as if they lay together
    a = read_image(args.a, keep_color=True, series=_series(args, "a"), slice_as_2d=False)
    b = read_image(args.b, keep_color=True, series=_series(args, "b"), slice_as_2d=False)
    _check_components({args.a: a, args.b: b})
    ext = ".png" if args.output.lower().endswith(_2D_EXTENSIONS) else ""
    slice_volume = None
    if one_slice_axis(a) is not None:  # a 2D slice saved as a volume (Slicer, ITK-SNAP, a DICOM file): fused as 2D
        check_same_grid(a, b)  # on the volumes: in 2D, slices at other depths would pass
        slice_volume, a, b = a, one_slice_pixels(a), one_slice_pixels(b)
    # the grid the fused image is written on (as below: a one-slice volume's 2D slice for a 2D format, else the
    # volume): a volume to .png or .jp2 is refused before the fusion, not after it. Checked on A as read, a
    # coronal or sagittal slice (24 x 1 x 20) to .png had been refused as "a volume", where it had been fused
    # and written as its 2D slice
    # and the pixel type it is written with: a built-in method's grey result is 32-bit float, a colour one (overlay,
    # or a colour B) 8-bit RGB; a float image to .dcm (.pic, .lsm) had been refused by ITK only after the fusion
    check_output_name(args.output, a if slice_volume is None or ext else slice_volume,
                      pixel_type=fused_pixel_type(args.method, b))
    if args.weight_map:  # on the grid the fused image is written on: a one-slice volume's as its volume
        check_output_name(args.weight_map, a if slice_volume is None else slice_volume, pixel_type=sitk.sitkFloat32)
    bar = ProgressBar(desc=f"fuse {args.method}")
    try:
        res = fuse(a, b, args.method, progress=bar, **_fusion_params(args))
    finally:
        bar.close()
    fused = res.image if slice_volume is None or ext else as_one_slice_of(res.image, slice_volume)
    # with --json, stdout is the JSON alone (a script parses it); the status lines go to stderr
    status = sys.stderr if args.json else sys.stdout
    written: list[str] = []  # with --report, said once the report is in too: a failing report discards the image
    with contextlib.ExitStack() as stack:
        # with --report, the fused image is moved in with its report, not before: Ctrl-C or a failure while the
        # metrics and the report were made (12 s on a volume) had left the new image beside the old report
        target = stack.enter_context(staged_output(args.output)) if args.report else args.output
        write_image(_writable(fused, ext), target)  # an error names args.output (staged_output), not target
        written.append(f"fused ({res.method}, {res.seconds:.2f} s) -> {args.output}")
        if args.weight_map:  # every method has one (FusionResult.weights), on the fused image's grid
            weights = res.weights if slice_volume is None else as_one_slice_of(res.weights, slice_volume)
            # with --report, moved in with the fused image and its report, not before (as the fused image is)
            write_image(weights, stack.enter_context(staged_output(args.weight_map)) if args.report
                        else args.weight_map)
            written.append(f"weight map (weight of A, 0..1) -> {args.weight_map}")
        if not args.report:
            print("\n".join(written), file=status)
            written = []
        else:  # the metrics and the report take seconds (12 s on a volume); the outputs are said once they are in
            # flushed: to a pipe or a log file (block-buffered) it had come only at the end, with the report's lines
            print(f"{res.method} fusion done in {res.seconds:.2f} s; making the metrics and the report in "
                  f"{args.report}", file=status, flush=True)
        _print_warnings(res.warnings)  # e.g. deep fusion's anisotropy: every run, as register prints its own
        if args.report or args.json:
            from .metrics import fusion_metrics

            table = {res.method: fusion_metrics(res, a, b)}
            if args.report:
                from .io import display_name
                from .report import write_report

                paths = write_report(args.report, inputs={f"A: {display_name(args.a)}": a,
                                                          f"B: {display_name(args.b)}": b},
                                     fusions=[res], metrics=table, title=f"Fusion ({res.method})",
                                     keep=[args.a, args.b, args.output])
    if written:
        print("\n".join(written), file=status)
    if args.json:
        _print_json(table)
    elif args.report:
        _print_metrics(table)
    if args.report:
        print(f"report -> {paths['html']}", file=status)
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="fusion quality metrics (EN, SD, SF, MI, SCD, VIF, Qabf, SSIM, PSNR)")
    p.add_argument("--fused", required=True, help="the fused image F")
    p.add_argument("a", help="source image A")
    p.add_argument("b", help="source image B")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_series(p, ("fused", "a", "b"))
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from .io import display_name, read_image, to_json_safe
    from .metrics import fusion_metrics

    _check_series(args, ("fused", "a", "b"))
    # a DICOM file of one slice as the one-slice volume it is, as fuse and run read it (scored as its 2D slice): read
    # as 2D, fuse's own result for it (a one-slice volume at the slice's S) was refused, and a source 100 mm off scored
    f = read_image(args.fused, keep_color=True, series=_series(args, "fused"), slice_as_2d=False)
    a = read_image(args.a, keep_color=True, series=_series(args, "a"), slice_as_2d=False)
    b = read_image(args.b, keep_color=True, series=_series(args, "b"), slice_as_2d=False)
    _check_components({args.fused: f, args.a: a, args.b: b})
    # on one grid, as fuse takes them: of the same shape, a source 100 mm away had been scored without a word
    # (a fused PNG, JPEG, BMP or TIFF keeps no origin or direction: its shape alone is compared, by the metrics;
    # a VTK file keeps no direction: A's is taken. A fused TIFF had been refused as off A's grid)
    from .io import UNPLACED_EXTENSIONS, UNTURNED_EXTENSIONS, _read_suffix
    from .validation import check_on_grid

    fix = "Give the fused image and both sources on one grid (mmfusion resample MOVING --reference FIXED)."
    a_name = f"source image A ({display_name(args.a)})"
    check_on_grid(b, a, f"source image B ({display_name(args.b)})", a_name, fix)
    if _read_suffix(args.fused) not in UNPLACED_EXTENSIONS:
        import SimpleITK as sitk

        placed = f
        if _read_suffix(args.fused) in UNTURNED_EXTENSIONS and f.GetDimension() == a.GetDimension():
            placed = sitk.Image(f)
            placed.SetDirection(a.GetDirection())
        check_on_grid(placed, a, f"fused image ({display_name(args.fused)})", a_name, fix)
    values = fusion_metrics(f, a, b)
    if args.json:
        print(json.dumps(to_json_safe(values), indent=2))
        return 0
    _print_metrics({display_name(args.fused): values})
    return 0


def _add_evaluate_registration(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate-registration",
        help="registration accuracy before/after a transform: Dice, Jaccard, HD95, Hausdorff and mean surface "
             "distance of labels, TRE of landmarks, MI/NMI/NCC of the images",
        description="Score a registration as Learn2Reg, Slicer and ANTs users do, before (identity) and after "
                    "(through --transform): label overlap and surface distances (the moving label map resampled "
                    "nearest-neighbour onto the fixed one's grid), target registration error of corresponding "
                    "landmarks, and the images' similarity. The transform is ITK's convention, as `mmfusion "
                    "register` writes it: it maps FIXED points into MOVING (the transform that resamples MOVING "
                    "onto FIXED; the inverse of what Slicer's Transforms module shows as moving the moving volume).")
    p.add_argument("fixed", help="fixed (reference) image file or DICOM folder")
    p.add_argument("moving", help="moving image file or DICOM folder")
    p.add_argument("--transform", action="append",
                   help="transform file (fixed -> moving points, as `register` writes; a displacement field image, as "
                        "ANTs' *Warp.nii.gz; or elastix' TransformParameters.N.txt, with its initial transforms); "
                        "identity when omitted. "
                        "Repeat it to chain several in antsApplyTransforms' order: `--transform A --transform B` "
                        "maps a fixed point x to B(A(x)), the first given applied to the point first")
    p.add_argument("--invert", action="store_true", help="use the inverse of the transform (of the chain; linear only)")
    _add_accuracy_inputs(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_series(p, ("fixed", "moving"))
    p.set_defaults(func=_run_evaluate_registration)


def _add_accuracy_inputs(p: argparse.ArgumentParser) -> None:
    """The label maps and landmarks of a registration's accuracy (evaluate-registration and run; read by
    :func:`evaluation.read_accuracy_inputs` from :func:`_accuracy_inputs`)."""
    p.add_argument("--fixed-labels", help="label map of the fixed image (0 background), or a 3D Slicer .seg.nrrd")
    p.add_argument("--moving-labels", help="label map of the moving image, on the moving image's grid or any other, "
                                           "or a .seg.nrrd (two .seg.nrrd files: segments matched by name)")
    p.add_argument("--labels", help="comma-separated labels to score, e.g. 1,2,5, or segment names (liver,kidney) "
                                    "where both label files are .seg.nrrd (default: every label)")
    p.add_argument("--fixed-landmarks",
                   help="landmarks of the fixed image: Slicer .fcsv/.mrk.json, elastix point file (.txt/.pts), "
                        "ANTs .csv (x,y,z,t in LPS)")
    p.add_argument("--moving-landmarks", help="the corresponding landmarks of the moving image, in the same order")


def _accuracy_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """The options of :func:`_add_accuracy_inputs` as keywords of :func:`evaluation.read_accuracy_inputs` and
    :func:`pipeline.run`, checked as pairs (:func:`evaluation.check_accuracy_options`) before anything is read."""
    from .evaluation import check_accuracy_options

    given = {k: getattr(args, k) for k in ("fixed_labels", "moving_labels", "labels", "fixed_landmarks",
                                           "moving_landmarks")}
    check_accuracy_options(**given)
    return given


def _run_evaluate_registration(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_accuracy, read_accuracy_inputs, read_slice_accuracy_inputs
    from .io import one_slice_as_2d, read_image
    from .metrics import scored_on_slice_planes
    from .preprocess import field_coverage_notes

    _check_series(args, ("fixed", "moving"))
    _check_invert(args)
    given = _accuracy_inputs(args)
    transform, read = _transform_chain(args.transform, args.invert)
    # a DICOM file of one slice as the one-slice volume it is (run, register, fuse, evaluate and resample read it
    # so): scored as the same slice saved as a one-slice NIfTI, and Slicer's one-slice label maps of it taken
    fixed = read_image(args.fixed, series=_series(args, "fixed"), float32=True, slice_as_2d=False)
    coverage = field_coverage_notes(args.transform, read, args.invert, fixed, "fixed image",
                                    "Score it on the fixed image the field was computed for (ANTs writes its warp "
                                    "on the fixed image's grid).")
    moving = read_image(args.moving, series=_series(args, "moving"), float32=True, slice_as_2d=False)
    # a .seg.nrrd's segments by name (both files) or label value (one), every layer read: its numbers alone had
    # paired 'liver' with whatever the other file numbered alike, and a file of several layers was refused
    if (given["fixed_labels"] is not None or given["fixed_landmarks"] is not None) \
            and scored_on_slice_planes(fixed, moving, transform):
        # scored in the slices' 2D frames, as run scores them: label maps and landmarks of the one-slice volumes, or
        # given in those frames (2D label maps, 2D points: a DICOM slice had been read as 2D, and they were scored)
        volumes = (fixed, moving)
        fixed, moving = (one_slice_as_2d(v, f"{role} image") for v, role in zip(volumes, ("fixed", "moving")))
        inputs = read_slice_accuracy_inputs(fixed, moving, volumes, **given)
    else:
        inputs = read_accuracy_inputs(fixed, moving, **given)
    if inputs is None:
        from .evaluation import AccuracyInputs

        inputs = AccuracyInputs()  # the images' similarity alone
    result = evaluate_accuracy(fixed, moving, transform, inputs)
    result["notes"] = coverage + list(result["notes"])
    if args.json:
        _print_json(result)
        _print_warnings(result["notes"])
        return 0
    for line in _registration_evaluation_lines(result, "after" if transform is not None
                                               else "after (identity: no --transform)"):
        print(line)
    _print_warnings(result["notes"])
    return 0


def _num(v: Any, spec: str = ".3f", *, infinity: str | None = None) -> str:
    """A number as ``spec`` writes it: :func:`io.number_text`; None and NaN (no overlap in that state: nothing
    compared) "n/a", as the report writes them (they had printed "nan"), and so is an infinity (a registration
    metric with no valid sample point) unless ``infinity`` writes it."""
    from .io import number_text

    return number_text(v, spec, infinity=infinity)


def _registration_evaluation_lines(result: dict[str, Any], after: str = "after") -> list[str]:
    """The before/after table of ``evaluate-registration`` (and of ``run`` with labels or landmarks); ``after``:
    the heading of the second column."""
    lines = [f"{'':<30} {'before':>10} {after:>10}"]
    images = result["images"]
    for key, what in (("MI", "MI (nats, higher better)"), ("NMI", "NMI"), ("NCC", "NCC")):
        lines.append(f"{what:<30} {_num(images['before'][key], '.4f'):>10} {_num(images['after'][key], '.4f'):>10}")
    # each state is scored over the fixed voxels it maps inside the moving image: other voxels before and after
    lines.append(f"{'voxels compared':<30} {_num(images['before']['voxels'], '.0f'):>10} "
                 f"{_num(images['after']['voxels'], '.0f'):>10}")
    if "labels" in result:
        before, aft = result["labels"]["before"], result["labels"]["after"]
        n = aft["mean"]["labels"]
        lines.append(f"labels (mean of {n}):")
        for key, what in (("dice", "Dice"), ("jaccard", "Jaccard"), ("hd95", "HD95 mm"),
                          ("hausdorff", "Hausdorff mm"), ("mean_surface_distance", "mean surface distance mm")):
            lines.append(f"  {what:<28} {_num(before['mean'][key]):>10} {_num(aft['mean'][key]):>10}")
        names = result.get("label_names", {})
        if result.get("label_matching") == "name":
            lines.append("  segments matched by name (label: segment)")
        lines.append("  per label: Dice before -> after, HD95 mm before -> after")
        for label, row in aft["labels"].items():
            old = before["labels"].get(label, {})
            shown = f"{label} '{names[label]}'" if label in names else str(label)
            lines.append(f"  {shown:>6}: Dice {_num(old.get('dice'))} -> {_num(row['dice'])}, "
                         f"HD95 {_num(old.get('hd95'), '.2f')} -> {_num(row['hd95'], '.2f')}")
    if "landmarks" in result:
        b, a = result["landmarks"]["before"], result["landmarks"]["after"]
        lines.append(f"landmarks ({a['n']} pairs), TRE mm:")
        for key in ("mean", "median", "max", "std"):
            lines.append(f"  {key:<28} {_num(b[key]):>10} {_num(a[key]):>10}")
    if result.get("slice_planes"):  # one-slice volumes: labels and landmarks scored in their slices' 2D frames
        lines.append("one-slice volumes: labels and landmarks scored on the slices' planes (2D, in-plane mm), where "
                     "the 2D transform applies")
    return lines


def _add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="the whole job: register -> resample -> fuse -> evaluate -> HTML report")
    p.add_argument("fixed", help="anatomical/fixed image (CT, MR): the output grid")
    p.add_argument("moving", help="functional/moving image (PET, SPECT, MR)")
    # -o as for register and demo: `run F M -o DIR` had been a usage error
    p.add_argument("--output-dir", "-o", required=True,
                   help="folder for transform, resampled and fused images, report")
    p.add_argument("--methods", default="overlay,average,wavelet",
                   help="comma-separated fusion methods (default overlay,average,wavelet)")
    p.add_argument("--preset", help="registration preset (e.g. mr-pet-brain, ct-mr-head)")
    p.add_argument("--stages", help="registration stages, e.g. rigid or rigid,affine,bspline")
    p.add_argument("--seed", type=int, help="seed of the registration's random sampling (reproducible)")
    # default None, not "sitk": an explicit --backend sitk with --no-register is refused like --backend torch
    p.add_argument("--backend", choices=["sitk", "torch"], help="registration backend (default sitk)")
    p.add_argument("--no-register", action="store_true", help="images are already aligned: only resample and fuse")
    p.add_argument("--fixed-mask", help="mask image on the fixed grid: the registration metric's region, and the "
                                        "region of the alignment numbers (MI/NCC/NMI before and after)")
    p.add_argument("--moving-mask", help="mask image on the moving grid (registration metric region)")
    _add_initializer_and_series(p)
    g = p.add_argument_group("registration accuracy, as evaluate-registration scores it (Dice, HD95, TRE before and "
                             "after the registration's transform; read and checked before the registration runs)")
    _add_accuracy_inputs(g)
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    _add_fusion_params(p)
    p.set_defaults(func=_run_run)


def _run_run(args: argparse.Namespace) -> int:
    from .pipeline import run

    _check_series(args, ("fixed", "moving"))
    if args.no_register:  # as for --moving-mask (pipeline.run): options of a registration that does not run
        unused = [flag for flag, given in (("--preset", args.preset), ("--stages", args.stages is not None),
                                           ("--seed", args.seed is not None), ("--initializer", args.initializer),
                                           ("--backend", args.backend is not None)) if given]
        if unused:
            from .errors import InputError

            raise InputError(f"{', '.join(unused)} given with --no-register: they set the registration, and no "
                             "registration runs (the report had named the preset and stages all the same).",
                             f"Leave out {', '.join(unused)}, or drop --no-register.")
    params = _fusion_params(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    method_params: dict[str, dict[str, Any]] = {}
    import inspect

    from .fusion import get_method

    for m in methods:  # give each method only the parameters it takes
        # --window and --window-a are fuse()'s, not a method's: the images' windows for every method, as in `fuse`
        # (--window went to the overlay only, and the other methods ignored it without a word)
        accepted = set(inspect.signature(get_method(m)).parameters) | {"window", "window_a"}
        method_params[m] = {k: v for k, v in params.items() if k in accepted}
    unused = [k for k in params if not any(k in given for given in method_params.values())]
    # a flag of a method not run (--levels with --methods average) had been dropped without a word, rc 0; with no
    # method at all, pipeline.run's "No fusion method was given" says what is wrong
    if unused and methods:
        from .errors import InputError
        from .fusion import list_methods

        def takers(key: str) -> str:
            names = [m for m in list_methods() if key in inspect.signature(get_method(m)).parameters]
            return f"{_fusion_flag(key)}: {', '.join(names) or 'none'}"

        flags = ", ".join(_fusion_flag(k) for k in unused)
        raise InputError(f"{flags} given, but none of the methods run ({', '.join(methods)}) takes "
                         f"{'it' if len(unused) == 1 else 'them'}: {'it' if len(unused) == 1 else 'they'} "
                         "would be ignored.",
                         f"Leave out {flags}, or add a method that takes {'it' if len(unused) == 1 else 'them'} "
                         f"to --methods ({'; '.join(takers(k) for k in unused)}).")
    accuracy_inputs = _accuracy_inputs(args)  # a file without its partner: before the masks are read
    from .io import read_image

    masks = {k: read_image(getattr(args, k)) if getattr(args, k) else None for k in ("fixed_mask", "moving_mask")}
    bar = ProgressBar(desc="run")
    try:
        out = run(args.fixed, args.moving, args.output_dir, preset=args.preset, stages=args.stages, methods=methods,
                  seed=args.seed, progress=bar, backend=args.backend or "sitk", register=not args.no_register, **masks,
                  method_params=method_params, initializer=args.initializer,
                  fixed_series=_series(args, "fixed"), moving_series=_series(args, "moving"), **accuracy_inputs)
    finally:
        bar.close()
    summary = {"files": out["files"], "report": out["report"], "metrics": out["metrics"],
               "registration_metrics": out["registration_metrics"], "seconds": out["seconds"],
               "registration": out["registration"].to_dict() if out["registration"] is not None else None,
               # each fusion's warnings (deep fusion's anisotropy) beside the registration's (in its to_dict()),
               # as metrics.json holds them: with --json they had been on stderr only
               "fusion_warnings": {res.method: list(res.warnings) for res in out["fusions"]}}
    accuracy = out["registration_accuracy"]
    if accuracy is not None:  # evaluate-registration --json's dict, as metrics.json holds it
        summary["registration_accuracy"] = accuracy
    reg = out["registration"]
    if args.json:
        from .io import to_json_safe

        print(json.dumps(to_json_safe(summary), indent=2))
        _print_warnings(reg.warnings if reg is not None else [])
        _print_warnings(accuracy["notes"] if accuracy is not None else [])
        _print_warnings([w for fusion in out["fusions"] for w in fusion.warnings])
        return 0
    if reg is not None:
        print(f"registration: {reg.backend}, {reg.seconds:.1f} s, metric {_num(reg.metric_before, '.4f')} -> "
              f"{_num(reg.metric_after, '.4f')}")
        for line in _transform_lines(reg.to_dict().get("transform")):
            print(f"  {line}")
        # on stderr, as register prints them: they had been on stdout under this line (and, with --json, only
        # inside the JSON), where a script reading the output or a log of stderr missed them
        _print_warnings(reg.warnings)
    rm = out["registration_metrics"]
    print(f"alignment: MI {_num(rm['before']['MI'])} -> {_num(rm['after']['MI'])}, "
          f"NCC {_num(rm['before']['NCC'])} -> {_num(rm['after']['NCC'])} (over the {rm['before']['voxels']:.0f} -> "
          f"{rm['after']['voxels']:.0f} fixed voxels the moving image reaches)")
    if accuracy is not None:  # evaluate-registration's table, through the registration's transform
        print("registration accuracy (as evaluate-registration scores it" + ("):" if reg is not None else
                                                                               "; --no-register: after = before):"))
        for line in _registration_evaluation_lines(accuracy):
            print(f"  {line}")
        _print_warnings(accuracy["notes"])
    _print_metrics(out["metrics"])
    _print_warnings([w for fusion in out["fusions"] for w in fusion.warnings])  # deep fusion's anisotropy
    for k, v in out["files"].items():
        print(f"{k:>20}: {v}")
    print(f"{'report':>20}: {out['report']['html']}")
    return 0


# ----------------------------------------------------------------------------- parser
# Sub-command builders, in the order `mmfusion --help` lists them. Each area adds its own.
_BUILDERS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_info,
]
_BUILDERS += [_add_register, _add_resample, _add_demo]
_BUILDERS += [_add_fuse, _add_evaluate, _add_evaluate_registration, _add_run]


# ----------------------------------------------------------------------------- web
def _add_web(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("web", help="the web UI (trame-slicer): load, register, fuse and review in a browser")
    p.add_argument("--fixed", help="fixed (anatomical) image to load at start (a path on this machine)")
    p.add_argument("--moving", help="moving (functional) image to load at start")
    p.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1: this machine only; the page can read "
                        "server files, so do not expose it without authentication)")
    p.add_argument("--demo", action="store_true",
                   help="load the demo pair: MNI152 T1 and a misaligned synthetic PET-like image")
    p.add_argument("--open", action="store_true", help="open the system browser on the page")
    p.add_argument("--allow-origin", action="append", default=[], metavar="URL",
                   help="a page address allowed to connect besides the server's own, e.g. a reverse proxy's "
                        "https://fusion.example.org (repeatable); pages of other sites are refused")
    p.add_argument("--max-upload", default="4GiB", metavar="SIZE",
                   help="the most one upload may hold, a file or the files of a DICOM series together (default "
                        "4GiB; bytes, or K/M/G/T = KiB/MiB/GiB/TiB, or KB/MB/GB/TB); a larger one is refused as "
                        "it arrives and nothing of it is kept")
    p.add_argument("--max-stored-uploads", default=None, metavar="SIZE",
                   help="the most bytes of uploads the server holds at once, all pages and connections together: "
                        "the uploads arriving, each image's last upload, one a running Load reads (default 16GiB). "
                        "A replaced upload is removed and counts no more; a reload or a new connection frees only "
                        "an unfinished upload")
    p.add_argument("--max-session-upload", default=None, metavar="SIZE",
                   help="old name of --max-stored-uploads (it counted one page's uploads, from zero again at each "
                        "reload or new connection)")
    p.set_defaults(func=_run_web)


def _run_web(args: argparse.Namespace) -> int:
    if bool(args.fixed) != bool(args.moving):
        from .errors import InputError

        raise InputError("Give both --fixed and --moving, or neither.", "Add the missing image, or use --demo.")
    try:
        from .web.app import parse_origin, parse_size, serve
    except ImportError as exc:
        from .errors import InputError

        raise InputError(f"The web UI needs trame-slicer ({exc}).",
                         "pip install 'slicer-multimodalfusion[web]'") from exc
    for origin in args.allow_origin:  # a bad address is an error before the start-up
        parse_origin(origin)
    max_upload = parse_size(args.max_upload, "--max-upload")  # and so is a bad size
    if args.max_stored_uploads is not None and args.max_session_upload is not None:
        from .errors import InputError

        raise InputError("--max-session-upload is the old name of --max-stored-uploads, and both were given.",
                         "Give --max-stored-uploads SIZE only.")
    option, size = (("--max-session-upload", args.max_session_upload) if args.max_session_upload is not None
                    else ("--max-stored-uploads", args.max_stored_uploads))
    max_stored = parse_size(size, option) if size is not None else None  # None: the default, 16GiB
    port = _free_port(args.host, args.port)  # before the slow start-up, and the real port for --port 0
    print(f"mmfusion web: serving on http://{args.host}:{port}/ (Ctrl+C stops)", file=sys.stderr)
    serve(fixed=args.fixed, moving=args.moving, port=port, host=args.host, demo=args.demo,
          open_browser=args.open, allowed_origins=args.allow_origin, max_upload_bytes=max_upload,
          max_stored_upload_bytes=max_stored)
    return 0


def _free_port(host: str, port: int) -> int:
    """``port`` if it can be bound on ``host`` (a free one for 0); a clear error when it is taken."""
    import socket

    from .errors import InputError

    if not 0 <= int(port) <= 65535:  # socket.bind raised OverflowError, a traceback
        raise InputError(f"--port {port} is not a TCP port.", "Give a port from 1 to 65535 (--port 0 picks a free one).")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        if os.name == "posix":  # as the server will: a port in TIME_WAIT after the last run is free
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, int(port)))
        except OSError as exc:
            raise InputError(f"Cannot listen on {host}:{port} ({exc.strerror or exc}).",
                             "Use another --port (--port 0 picks a free one), or stop the program using it.") from exc
        return int(probe.getsockname()[1])


_BUILDERS.append(_add_web)


# ----------------------------------------------------------------------------- train-fusion
def _add_train_fusion(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train-fusion", help="train the deep fusion network (unsupervised) on pairs of aligned images")
    p.add_argument("--pairs", required=True, metavar="DIR",
                   help="folder with two sub-folders (e.g. MRI/ and CT/) of aligned images with matching names "
                        "(2D slices or 3D volumes; searched recursively)")
    p.add_argument("--output", required=True, metavar="MODEL", help="weights file to write (.safetensors)")
    p.add_argument("--epochs", type=int, default=20, help="epochs (default 20)")
    p.add_argument("--batch-size", type=int, default=8, help="patches per step (default 8)")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default 2e-3, cosine decay)")
    p.add_argument("--patch-size", type=int, default=96, help="training patch side in pixels/voxels (default 96)")
    p.add_argument("--samples-per-epoch", type=int, help="samples drawn per epoch (default: all, once)")
    p.add_argument("--spatial-dims", type=int, choices=(2, 3),
                   help="2D (slices) or 3D network (default 2; with --resume or --init: theirs)")
    p.add_argument("--loss-weights", default="1,10,1", metavar="SSIM,GRAD,INT",
                   help="weights of the structure, gradient and intensity terms (default 1,10,1)")
    p.add_argument("--init", metavar="WEIGHTS", help="start from these weights (fine-tuning) instead of random")
    p.add_argument("--device", default="auto", type=_device, metavar="{auto,cpu,cuda,cuda:N}",
                   help="default auto: CUDA when present, CPU otherwise; cuda:N picks a GPU")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, augmentation and order (default 0)")
    p.add_argument("--resume", metavar="CKPT", help="continue an interrupted run from its checkpoint")
    p.add_argument("--checkpoint", metavar="CKPT", help="checkpoint written after every epoch (default: the --output name plus .ckpt.pt, e.g. MODEL.safetensors.ckpt.pt)")
    # held for the command by _thread_limit (it had stayed set in a process calling main: a test's torch ran on
    # 1 thread after it)
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads (torch, SimpleITK, BLAS; at least 1)")
    p.add_argument("--cache-dir", metavar="DIR",
                   help="keep the normalised pairs as memory-mapped .npy files in DIR instead of in memory "
                        "(for pair sets larger than memory: 64 MB per 256^3 volume); same weights")
    p.set_defaults(func=_run_train_fusion)


def _run_train_fusion(args: argparse.Namespace) -> int:
    from .errors import InputError

    try:
        import torch  # noqa: F401 - checks it is installed (its error names the fix)

        from .fusion.deep import (
            FusionNetConfig,
            LossWeights,
            TrainingConfig,
            load_weights,
            save_weights,
            train_fusion,
        )
        from .fusion.deep.data import load_pairs
    except ImportError as exc:
        raise InputError(f"train-fusion needs torch and MONAI ({exc}).",
                         "pip install 'slicer-multimodalfusion[deep]'") from exc
    from .fusion.deep.data import find_pairs, searched_by_find_pairs
    from .io import check_not_overwriting_inputs, check_writable

    checkpoint = args.checkpoint or args.output + ".ckpt.pt"
    if not args.output.lower().endswith(".safetensors"):
        raise InputError(f"The weights file '{args.output}' does not end in .safetensors.",
                         "Name the output MODEL.safetensors (the format it is written in).")
    if os.path.abspath(checkpoint) == os.path.abspath(args.output):
        raise InputError(f"The checkpoint and the weights file are the same file ('{checkpoint}').",
                         "Give --checkpoint another name (default: MODEL.safetensors.ckpt.pt).")
    # settings first: a typo in --lr must not wait for every volume to be read
    tcfg = TrainingConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patch_size=args.patch_size,
                          loss_weights=LossWeights.parse(args.loss_weights), seed=args.seed, device=args.device,
                          samples_per_epoch=args.samples_per_epoch)
    tcfg.check()
    resumed = None
    if args.resume:  # before the pairs are read, as the other settings; train_fusion gets the file as read here
        from .fusion.deep.training import check_resumable, open_resume

        resumed = open_resume(args.resume)
        check_resumable(args.resume, resumed.training, tcfg, resumed.epochs_done)
        resumed_dims = resumed.architecture.spatial_dims
        if args.spatial_dims is not None and resumed_dims != args.spatial_dims:  # the checkpoint's network was trained silently instead
            raise InputError(f"--spatial-dims {args.spatial_dims} was given, but the checkpoint '{args.resume}' "
                             f"holds a {resumed_dims}D network.",
                             f"Leave out --spatial-dims to continue the {resumed_dims}D run (or give "
                             f"--spatial-dims {resumed_dims}), or start a new run without --resume.")
    # (--resume may name the checkpoint itself: continuing a run updates it, as every epoch does)
    if args.cache_dir and searched_by_find_pairs(args.cache_dir, args.pairs):
        # its cached arrays would be found as pairs by the next run ("No image pairs found ... 3 sub-folders")
        raise InputError(f"The cache folder '{args.cache_dir}' is inside the pairs folder '{args.pairs}'.",
                         "Give --cache-dir a folder outside --pairs (or a hidden one in it: --pairs DIR "
                         "--cache-dir DIR/.cache).")
    with warnings.catch_warnings():  # load_pairs warns of images without a partner (once, not twice)
        warnings.simplefilter("ignore")
        inputs = [p for pair in find_pairs(args.pairs) for p in pair]
    check_not_overwriting_inputs([args.output, checkpoint], inputs + [args.init])
    for path in (args.output, checkpoint):  # before training, not after its first epoch
        check_writable(path)
    model = load_weights(args.init, spatial_dims=args.spatial_dims)[0] if args.init else None
    if resumed is not None:  # before the pairs are read: a 3D checkpoint's pairs are read as volumes
        from .fusion.deep.training import check_init_matches

        check_init_matches(resumed, model)
    architecture = (resumed.architecture if resumed is not None else model.config if model is not None
                    else FusionNetConfig(spatial_dims=args.spatial_dims or 2))
    dims = architecture.spatial_dims
    from .fusion.deep.training import check_memory

    trains = resumed is None or tcfg.epochs > resumed.epochs_done  # else its weights are written as they are
    if trains:  # before the pairs are read: a patch of 4096 had run out of memory minutes later
        check_memory(tcfg, architecture, resumed=resumed is not None)
    on_pair = None
    if resumed is not None:  # other pairs refused at the first that differs (their number before any is read)
        from .fusion.deep.training import PairsCheck

        on_pair = PairsCheck(resumed, len(inputs) // 2, trains=trains)
    pairs = load_pairs(args.pairs, cache_dir=args.cache_dir, spatial_dims=dims, on_pair=on_pair,
                       patch_size=tcfg.patch_size if trains else None, multiple=architecture.size_multiple,
                       refuse_larger=resumed is None)
    bar = ProgressBar(desc="train-fusion")

    def epoch_line(entry: dict) -> None:
        # as each epoch ends, not at the end of the run: a run logged to a file (no bar) shows its progress,
        # and a run that fails late leaves its loss history in the log
        bar.write(f"epoch {int(entry['epoch']):3d}  loss {entry['loss']:.4f}")

    for entry in resumed.history if resumed is not None else ():  # the epochs the checkpoint holds
        epoch_line(entry)
    before = _file_identity(checkpoint)  # what was there before this run: another run's checkpoint, or none
    try:
        result = train_fusion(pairs, config=FusionNetConfig(spatial_dims=args.spatial_dims or 2), training=tcfg,
                              checkpoint=checkpoint, resume=resumed, progress=bar, model=model,
                              on_epoch=epoch_line)
    except KeyboardInterrupt:
        bar.close()  # before the line, which the bar would overwrite
        on_disk = _resumable_checkpoint(checkpoint, before, resumed)
        if on_disk is not None:  # where the run can go on from: the checkpoint of the last whole epoch
            print(f"mmfusion train-fusion: the checkpoint '{on_disk[0]}' holds epoch {on_disk[1]}; go on with the "
                  f"same command and --resume '{on_disk[0]}'", file=sys.stderr)
        raise
    finally:
        bar.close()
    # the whole run's time, and where it was resumed the part this command trained (from which checkpoint)
    resumed_part = ({"seconds_resumed_part": round(result.seconds_this_part, 3),
                     "resumed_after_epoch": resumed.epochs_done} if resumed is not None else {})
    save_weights(result.model, args.output,
                 training={"pairs": os.path.abspath(args.pairs), "n_pairs": len(pairs), "training": tcfg.to_dict(),
                           "seconds": round(result.seconds, 3), **resumed_part, "device": result.device,
                           "final_loss": result.history[-1] if result.history else None})
    took = (f"{result.seconds:.1f} s, {result.seconds_this_part:.1f} s of them since epoch {resumed.epochs_done}"
            if resumed is not None else f"{result.seconds:.1f} s")
    print(f"trained on {len(pairs)} pairs ({result.device}, {took}) -> {args.output} "
          f"(checkpoint {checkpoint})")
    return 0


_BUILDERS.append(_add_train_fusion)


def _file_identity(path: str) -> tuple[int, int, int] | None:
    """(device, inode, modification time in ns) of ``path``, None where there is no file: each checkpoint is
    written to a new file renamed over the old one, so the identity changes with every epoch saved."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns


def _resumable_checkpoint(checkpoint: str, before: tuple[int, int, int] | None,
                          resumed: Any) -> tuple[str, int] | None:
    """(checkpoint, epochs it holds) an interrupted train-fusion run can go on from, read from the disk; None: none.

    The checkpoint this run wrote, if it wrote one (its identity is not ``before``'s), with the epoch read from
    the file: the epochs counted as they ended lagged by one when Ctrl-C came after a checkpoint was renamed into
    place and before the epoch's callback (the file held epoch N + 1, the hint said N). Otherwise the checkpoint
    the run resumed from, which it had not named (a run stopped in its first resumed epoch said nothing). Never a
    checkpoint an earlier run left at the ``--checkpoint`` path: this run did not write it.
    """
    from .fusion.deep.weights import load_checkpoint

    candidates = []
    if _file_identity(checkpoint) not in (None, before):
        candidates.append(checkpoint)
    if resumed is not None:
        candidates.append(resumed.path)
    for path in candidates:
        try:
            return path, int(load_checkpoint(path)["epoch"]) + 1
        except MultimodalFusionError:  # gone or replaced by something else since: name what can be resumed
            continue
    return None



#: --threads of every command that computes (register, resample, demo, fuse, evaluate, evaluate-registration, run)
_THREADS_HELP = ("CPU threads for this command (at least 1): SimpleITK's filters and registration, torch, numpy's "
                 "BLAS and the metrics' worker processes (default: all cores; a registration with --seed runs its "
                 "metric on one thread either way)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmfusion",
        description="Multimodal medical image registration and fusion (CT, MR, PET, SPECT).")
    parser.add_argument("--version", action="version", version=f"mmfusion {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for build in _BUILDERS:
        build(sub)
    for name, command in sub.choices.items():
        if name not in ("info", "web", "train-fusion"):  # train-fusion has its own (torch's words); web serves many
            command.add_argument("--threads", type=int, metavar="N", help=_THREADS_HELP)
        # `mmfusion register ... -v` as well as `mmfusion -v register ...`: SUPPRESS keeps the top-level
        # value when the sub-command does not repeat it
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="show tracebacks of errors")
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        with _warnings_as_lines():
            return _main(argv)
    except BrokenPipeError:  # output piped into a command that stopped reading (e.g. `| head`)
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes stdout at exit
        except OSError:
            pass
        return 0


#: The commands running in this process (``cli.main`` from several threads of a script) and the
#: ``warnings.showwarning`` found by the first to start: :func:`_warnings_as_lines` puts it back when the last ends.
_WARNING_LINES: dict[str, Any] = {"commands": 0, "saved": None}
_WARNING_LINES_LOCK = threading.Lock()


def _show_warning_line(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
                       line: str | None = None) -> None:
    """``warnings.showwarning`` while a command runs: ``warning: <message>`` on stderr (:func:`_warnings_as_lines`)."""
    try:
        print(f"warning: {message}", file=sys.stderr if file is None else file)
    except OSError:  # stderr closed or gone: the warning is lost, as Python's own formatter loses it
        pass


@contextlib.contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Python warnings raised while the command runs (the engine's: read_image's alpha, io's geometry and units,
    train-fusion's pairs without a partner) print as the command's own do, ``warning: <message>`` on stderr
    (:func:`_print_warnings`), where Python's formatter had printed ``/path/to/io.py:1234: UserWarning: ...`` and
    the source line of the call. Only how a warning is shown changes: Python's filters still decide whether it is
    (``-W error`` raises it, ``default`` shows it once per place). The caller's ``warnings.showwarning`` is put
    back afterwards (``main`` may be called from a script or a test, which keeps its own): by the last of the
    commands running at once to end (``main`` called from several threads), where each had put back the one it
    found, and two that overlapped left the line printer installed for good (the first ended, then the second put
    the first's printer back) and the script's showwarning back under the second while it ran."""
    with _WARNING_LINES_LOCK:
        if _WARNING_LINES["commands"] == 0:
            _WARNING_LINES["saved"] = warnings.showwarning
            warnings.showwarning = _show_warning_line
        _WARNING_LINES["commands"] += 1
    try:
        yield
    finally:
        with _WARNING_LINES_LOCK:
            _WARNING_LINES["commands"] -= 1
            if _WARNING_LINES["commands"] == 0:
                warnings.showwarning, _WARNING_LINES["saved"] = _WARNING_LINES["saved"], None


@contextlib.contextmanager
def _own_process_tuning(args: argparse.Namespace) -> Iterator[None]:
    """Settings only the program that owns the process may change, for the command's duration: deep
    fusion of volumes keeps the memory torch frees between batches (glibc malloc tuning, 2.4x faster on a
    256^3 volume). Not for ``mmfusion web``: the web app (server, render threads) leaves the allocator
    alone, as the README says. The caller's setting is put back afterwards (``main`` may be called from
    a script or a test, whose process it is not)."""
    try:
        from .fusion.deep import inference
    except ImportError:  # deep fusion's own dependencies missing: nothing to tune
        yield
        return
    saved = inference.KEEP_FREED_MEMORY
    inference.KEEP_FREED_MEMORY = saved or getattr(args, "func", None) is not _run_web
    try:
        yield
    finally:
        inference.KEEP_FREED_MEMORY = saved


@contextlib.contextmanager
def _thread_limit(args: argparse.Namespace) -> Iterator[None]:
    """--threads N: the command's CPU threads held to N (threads.limit_threads: SimpleITK, torch, BLAS, metric
    workers), each setting put back afterwards (``main`` may be called from a script or a test). Refused below 1
    before any work (torch takes 0 without a word and raises a RuntimeError for -1). register and run had no
    --threads: a user of a shared machine had only ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS, which torch ignores."""
    from .threads import checked_thread_count, limit_threads

    with limit_threads(checked_thread_count(getattr(args, "threads", None), "--threads")):
        yield


class _Terminated(KeyboardInterrupt):
    """A SIGTERM (``kill``, a batch scheduler, a container stopping), raised as Ctrl-C's KeyboardInterrupt is:
    every clean-up runs as for Ctrl-C (staging folders and temporary files removed, the earlier results left
    as they were, train-fusion's checkpoint named), and the command exits with 143 and one line. Python's
    default had ended the process at once: no message, and a half-written temporary file in a hidden
    staging folder of the output folder."""


@contextlib.contextmanager
def _sigterm_as_interrupt(args: argparse.Namespace) -> Iterator[None]:
    """SIGTERM raises :class:`_Terminated` for the command's duration, where the process has no handler of
    its own (a script or test calling ``main`` keeps its own), in the main thread only. Not for ``mmfusion
    web``, whose server stops on SIGTERM by its own handler."""
    import signal

    if (getattr(args, "func", None) is _run_web or threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL):
        yield
        return

    def terminated(signum: int, frame: Any) -> None:
        raise _Terminated()

    signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def _signals_held() -> Iterator[list[int]]:
    """Ctrl-C and SIGTERM while the command starts are held (their numbers listed) until the block ends, where the
    process has Python's own handlers (a script or test calling ``main`` keeps its own), in the main thread only.
    Building the parser imports SimpleITK, numpy and the registration code (0.3-0.45 s): a KeyboardInterrupt
    raised inside those imports had not always reached the ``except KeyboardInterrupt`` around them. NumPy turns
    one inside its C extension's import into an ImportError ("PyCapsule_Import could not import module
    'datetime'", with its advice about a broken install), importlib's callbacks print one as 'Exception ignored'
    and go on (the command then ran), and a half-imported module stays broken in a calling process."""
    import signal

    held: list[int] = []
    saved: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum, default in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)):
            if signal.getsignal(signum) is default:
                saved[signum] = signal.signal(signum, lambda signum, frame: held.append(signum))
    try:
        yield held
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)


def _main(argv: list[str] | None) -> int:
    import signal

    code = None
    with _signals_held() as held:
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
        except SystemExit as stop:  # --help, --version, --list-presets, or a usage error (2): a code, as every path
            code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 2)
        except KeyboardInterrupt:  # a handler of the caller's own that raises it
            held.append(signal.SIGINT)
        if not held and code is None and not getattr(args, "func", None):
            parser.print_help()
            code = 2
    if held:  # a Ctrl-C or SIGTERM while the command started: it ends as one during the command does
        if held[0] == signal.SIGTERM:
            print("mmfusion: terminated (SIGTERM)", file=sys.stderr)
            return 143
        print("mmfusion: interrupted", file=sys.stderr)
        return 130
    if code is not None:
        return code
    try:
        with _sigterm_as_interrupt(args), _own_process_tuning(args), _thread_limit(args):
            return int(args.func(args) or 0)
    except MultimodalFusionError as exc:
        if args.verbose:
            raise
        print(f"mmfusion {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except _Terminated:  # 128 + 15, as a shell reports a process the signal ended
        print(f"mmfusion {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"mmfusion {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
