"""The whole job in one call: register -> resample -> fuse (one or several methods) -> evaluate -> report.

Example::

    from MultimodalFusionLib import pipeline
    out = pipeline.run("mr_t1.nii.gz", "pet.nii.gz", "results/", preset="mr-pet-brain",
                       methods=("overlay", "wavelet"), seed=1)
    print(out["report"]["html"], out["metrics"]["wavelet"]["SSIM"])

Front ends (the CLI's ``mmfusion run``, the Slicer module, the web UI) call :func:`run`; they
only parse input and show what it returns.
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

import SimpleITK as sitk

from .errors import InputError
from .progress import ProgressCallback, prefixed, report, scaled
from .validation import check_image, check_mask, has_content, slices_apart

__all__ = ["run", "DEFAULT_METHODS", "fuse_and_evaluate", "check_method_windows"]

#: Methods run when none are named: the colour overlay a clinician reads, and two pixel-level fusions.
DEFAULT_METHODS = ("overlay", "average", "wavelet")


def _load(image: sitk.Image | str | os.PathLike, name: str, series: str | None = None) -> tuple[sitk.Image, str]:
    if isinstance(image, sitk.Image):
        return image, name
    from .io import display_name, read_image

    # a DICOM file of one slice as the one-slice volume it is: run takes it as 2D (one_slice_inputs_as_2d) and writes
    # its results where the slice lies, as for a slice Slicer saved (read as 2D, they had been written at S 0)
    return (read_image(os.fspath(image), keep_color=True, series=series, slice_as_2d=False),
            display_name(image, name))


def _grey(image: sitk.Image, name: str, source: Any = None) -> sitk.Image:
    """``image`` in grey; ``source``: what it was read from (a path names a 2-component image by its format)."""
    if image.GetNumberOfComponentsPerPixel() == 1:
        return image
    from .io import to_luminance

    return to_luminance(image, name, path=None if isinstance(source, sitk.Image) else source)


def _no_overlap(moving_name: str, fixed_name: str, registered: bool) -> InputError:
    return InputError(f"The moving image {moving_name} does not overlap the fixed image {fixed_name}"
                      + (" after registration." if registered else " as they lie (no registration)."),
                      "Register them (drop --no-register), or check the origins in the headers (mmfusion info).")


def _ext_for(image: sitk.Image) -> str:
    """File extension of an output on ``image``'s grid: PNG for 2D, NIfTI for volumes (MetaImage when
    the direction is sheared, which NIfTI cannot hold)."""
    from .io import volume_extension

    return ".png" if image.GetDimension() == 2 else volume_extension(image)


def _fused_ext(fused: sitk.Image, ext: str, slice_volume: sitk.Image | None) -> str:
    """File extension of the fused image ``fused`` where outputs on its grid take ``ext`` (:func:`_ext_for`): NRRD
    for a colour one put back on the one-slice volume ``slice_volume``'s geometry (NIfTI reads a colour one-slice
    volume back as 2D, so io.write_image refuses it)."""
    return ".nrrd" if slice_volume is not None and fused.GetNumberOfComponentsPerPixel() > 1 else ext


def _writable(image: sitk.Image, ext: str) -> sitk.Image:
    """Fused grey images are on a 0..255 scale: PNG gets them rounded, not re-stretched, and rounded
    as the metrics round them (half to even), so `mmfusion evaluate` on the file gives the same numbers."""
    if ext == ".png" and image.GetNumberOfComponentsPerPixel() == 1 and image.GetPixelID() != sitk.sitkUInt8:
        import numpy as np

        arr = np.clip(np.round(sitk.GetArrayFromImage(image).astype(np.float64)), 0, 255).astype(np.uint8)
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(image)
        return out
    return image


def _keep_8bit(resampled: sitk.Image, source: sitk.Image) -> sitk.Image:
    """An 8-bit image resampled (float) back to 8 bits, rounded half to even as PNGs are written.

    Fusion and the metrics take 8-bit images as they are and stretch other ones to their range: a
    float copy of an 8-bit PET/SPECT slice would be fused and scored stretched, unlike the
    ``moving_resampled.png`` written (and ``mmfusion fuse``/``evaluate`` on it). ITK's own cast truncates.
    """
    if source.GetPixelID() not in (sitk.sitkUInt8, sitk.sitkVectorUInt8):
        return resampled
    return round_to_8bit(resampled)


def round_to_8bit(resampled: sitk.Image) -> sitk.Image:
    """A resampled (float) copy of an 8-bit image back in 8 bits: rounded half to even, clipped to 0..255."""
    import numpy as np

    from .io import _with_units_of

    arr = np.clip(np.round(sitk.GetArrayFromImage(resampled).astype(np.float64)), 0, 255).astype(np.uint8)
    out = sitk.GetImageFromArray(arr, isVector=resampled.GetNumberOfComponentsPerPixel() > 1)
    out.CopyInformation(resampled)
    return _with_units_of(out, resampled)  # an 8-bit PET's Units, which resample keeps


def fuse_and_evaluate(a: sitk.Image, b: sitk.Image, methods: Sequence[str], *,
                      progress: ProgressCallback | None = None,
                      method_params: dict[str, dict[str, Any]] | None = None) -> tuple[list[Any], dict[str, dict]]:
    """Fuse ``b`` (on ``a``'s grid) into ``a`` with each method and compute the fusion metrics.

    Returns:
        (list of FusionResult, {method: metrics dict}).
    """
    from . import fusion, metrics

    results, table = [], {}
    n = max(1, len(methods))
    for i, method in enumerate(methods):
        sub = scaled(progress, i / n, (i + 1) / n)
        res = fusion.fuse(a, b, method, progress=scaled(sub, 0.0, 0.6), **(method_params or {}).get(method, {}))
        report(sub, 0.6, f"evaluating {method}")
        # their reports ("fusion metrics: slice 3 of 155") name the method, as the one above: `mmfusion run` and
        # Slicer's dialog had not said which of the methods was being scored
        table[method] = metrics.fusion_metrics(res, a, b, progress=prefixed(scaled(sub, 0.6, 1.0), f"evaluating {method}"))
        results.append(res)
    return results, table


def run(fixed: sitk.Image | str | os.PathLike, moving: sitk.Image | str | os.PathLike, output_dir: str | os.PathLike,
        *, preset: str | None = None, stages: Sequence[str] | str | None = None,
        methods: Sequence[str] | str = DEFAULT_METHODS, seed: int | None = None,
        progress: ProgressCallback | None = None, fixed_mask: sitk.Image | None = None,
        moving_mask: sitk.Image | None = None, backend: str = "sitk", register: bool = True,
        method_params: dict[str, dict[str, Any]] | None = None,
        title: str | None = None, initializer: str | None = None, fixed_series: str | None = None,
        moving_series: str | None = None, fixed_labels: Any = None, moving_labels: Any = None,
        labels: str | Sequence[Any] | None = None, fixed_landmarks: Any = None,
        moving_landmarks: Any = None) -> dict[str, Any]:
    """Register ``moving`` to ``fixed``, resample it, fuse with each method, evaluate and write a report.

    Args:
        fixed: anatomical/fixed image or its path (CT, MR); the outputs take its grid.
        moving: functional/moving image or its path (PET, SPECT, another MR contrast; colour
            2D slices are registered by their luminance and fused on Y of YCbCr).
        output_dir: folder for the outputs (created if needed).
        preset: registration preset (e.g. "mr-pet-brain"); see ``registration.list_presets()``.
        stages: registration stages, e.g. ``("rigid", "affine")`` or "rigid,affine".
        methods: fusion methods (names or a comma-separated string), e.g. ("overlay", "wavelet").
        seed: seed of the registration's random sampling (reproducible runs).
        progress: ``progress(fraction, message)``; returning False cancels.
        fixed_mask: registration mask on the fixed grid.
        moving_mask: registration mask on the moving grid.
        backend: registration backend ("sitk" or "torch").
        register: False when the images are already aligned (only resampled onto the fixed grid).
        method_params: per-method parameters, e.g. ``{"overlay": {"colormap": "hot"}}``.
        title: report title.
        initializer: registration initializer ("moments", "geometry", "none", "search"), overriding the preset's.
        fixed_series: DICOM series (UID or description) of ``fixed`` when it is a folder of several.
        moving_series: the same for ``moving``.
        fixed_labels, moving_labels: label maps of the two images (files, 3D Slicer ``.seg.nrrd`` files, or
            images; both or neither): the registration's accuracy (Dice, HD95, ...) before and after its
            transform, as ``mmfusion evaluate-registration`` scores it (:mod:`accuracy`).
        labels: the labels to score ("1,2", a list, or segment names of two ``.seg.nrrd``; default: all).
        fixed_landmarks, moving_landmarks: corresponding landmarks (Slicer, elastix or ANTs files,
            :class:`landmarks.Landmarks` or (n, dim) LPS arrays; both or neither): the TRE before and after.
            Labels and landmarks are read and checked before the registration runs. Those of one-slice volumes
            (registered as 2D images) are scored in the slices' 2D frames: a one-slice label map on its image's
            slice, 3D landmarks within half a slice depth of its plane (:func:`evaluation.on_slice_planes`).

    Returns:
        dict: "registration" (RegistrationResult or None), "registration_metrics" ({"before",
        "after"}: MI/NMI/NCC), "fusions" (list of FusionResult), "metrics" ({method: dict}),
        "files" ({"transform", "moving_resampled", "fused_<method>", "weights_<method>"} -> path),
        "report" (paths from :func:`MultimodalFusionLib.report.write_report`), "seconds", and
        "registration_accuracy" (:func:`evaluation.evaluate_accuracy`'s dict, also in ``metrics.json``; None
        without labels or landmarks).

    Raises:
        InputError: bad images, paths, preset, stages or method names.
        RegistrationError: the registration could not run.
        OperationCancelled: the progress callback asked to stop.
    """
    from . import fusion
    from . import report as report_mod
    from .evaluation import accuracy_input_paths, check_accuracy_options

    start = time.perf_counter()
    accuracy_sources = {"fixed_labels": fixed_labels, "moving_labels": moving_labels, "labels": labels,
                        "fixed_landmarks": fixed_landmarks, "moving_landmarks": moving_landmarks}
    check_accuracy_options(**accuracy_sources)  # a label map or landmark file without its partner: before anything
    accuracy_files = accuracy_input_paths(fixed_labels, moving_labels, fixed_landmarks, moving_landmarks)
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    methods = list(dict.fromkeys(methods))  # keep order, drop repeats
    if not methods:
        raise InputError("No fusion method was given.", f"Name one or more of: {', '.join(fusion.list_methods())}.")
    if not register and moving_mask is not None:  # it only restricts the registration's metric: silently unused
        raise InputError("A moving mask was given without registration (--no-register): it limits the "
                         "registration's metric, and no registration runs.",
                         "Leave out the moving mask (--moving-mask), or register.")
    for m in methods:
        # fail early, before a long registration, on a misspelt method, parameter or value (deep fusion's
        # device too: an unknown name, CUDA without a GPU, cuda:N past the GPUs)
        fusion.check_parameters(m, (method_params or {}).get(m, {}))
    if isinstance(stages, str):
        stages = [s.strip() for s in stages.split(",") if s.strip()]
    settings = None
    if register:
        from .registration import resolve_parameters

        # before any image is read: a misspelt key or value in a preset file, or a stage name, had been found
        # only after both images were loaded (3 s for two 300^3 volumes; a DICOM folder takes longer)
        settings = resolve_parameters(preset=preset, stages=stages, seed=seed, initializer=initializer, backend=backend)
    out = os.fspath(output_dir)
    from .io import check_not_overwriting_inputs, output_folder, replacing_outputs

    check_not_overwriting_inputs(
        [], [fixed, moving, *accuracy_files],
        patterns=[os.path.join(out, n) for n in ["transform.*", "moving_resampled.*"]
                  + [f"{kind}_{m}.*" for m in methods for kind in ("fused", "weights")]
                  + list(report_mod.report_file_patterns())])
    # a job refused on its inputs (a blank image, no overlap) or cancelled leaves no new empty folder behind
    with output_folder(out):
        report(progress, 0.0, "loading images")
        fixed_img, fixed_name = _load(fixed, "fixed", fixed_series)
        moving_img, moving_name = _load(moving, "moving", moving_series)
        from .io import one_slice_inputs_as_2d

        if not register and slices_apart(fixed_img, moving_img):
            # as 2D images they would lose their depth: slices 100 mm apart had been fused as if they lay together
            raise _no_overlap(moving_name, fixed_name, register)
        # a 2D slice saved as a volume (Slicer, ITK-SNAP) is registered and fused as the 2D image it is, and its
        # images are written back as one-slice volumes on the fixed one's geometry
        volumes = (fixed_img, moving_img)  # as read: one-slice volumes keep where their slices lie
        slice_volume, fixed_img, moving_img, fixed_mask, moving_mask = one_slice_inputs_as_2d(
            fixed_img, moving_img, fixed_mask, moving_mask, fixed_name=f"fixed image {fixed_name}",
            moving_name=f"moving image {moving_name}")
        fixed_grey = _grey(fixed_img, f"fixed image {fixed_name}", fixed)
        moving_grey = _grey(moving_img, f"moving image {moving_name}", moving)
        # a blank (constant) moving image resampled is constant too: without this it would be reported,
        # with --no-register, as not overlapping the fixed image
        check_image(fixed_grey, f"fixed image {fixed_name}")
        check_image(moving_grey, f"moving image {moving_name}")
        # a window that holds none of its image's values, before the registration (it had been refused by the
        # fusion, once the registration had run)
        check_method_windows(fixed_img, moving_img, methods, method_params)
        if "deep" in methods:  # a deep fusion (adaptation, inference) past the memory, on its grid (the fixed image's)
            from .fusion.deep.inference import check_adaptation

            check_adaptation(fixed_img, **(method_params or {}).get("deep", {}))
        if fixed_mask is not None:  # also without registration, where only the alignment metrics use it
            fixed_mask = check_mask(fixed_mask, fixed_grey, "fixed mask", "fixed image")
        # the label maps and landmarks read and checked as evaluate_registration checks them, before the
        # registration: a bad file, or labels in neither map, fail now and not after minutes of work
        accuracy_inputs = _accuracy_inputs(fixed_grey, moving_grey, volumes, progress, accuracy_sources)
        # every result is written into a staging folder and moved in at the end: a run that fails or is
        # cancelled half-way leaves the last good run's results, and one that succeeds leaves none of them
        with replacing_outputs(out, previous=_previous_outputs(methods), keep=[fixed, moving, *accuracy_files]) as stage:
            files, report_paths, registration, reg_metrics, fusions, table, accuracy = _register_fuse_report(
                fixed_img, fixed_name, moving_img, moving_name, fixed_grey, moving_grey, stage, methods=methods,
                preset=preset, stages=stages, settings=settings, progress=progress, fixed_mask=fixed_mask,
                moving_mask=moving_mask, backend=backend, method_params=method_params, title=title,
                slice_volume=slice_volume, accuracy_inputs=accuracy_inputs)
    files = {k: os.path.join(out, os.path.basename(v)) for k, v in files.items()}
    report_paths = {k: os.path.join(out, os.path.basename(v)) for k, v in report_paths.items()}
    report(progress, 1.0, "done")
    return {"registration": registration, "registration_metrics": reg_metrics, "fusions": fusions, "metrics": table,
            "files": files, "report": report_paths, "registration_accuracy": accuracy,
            "seconds": time.perf_counter() - start}


def _accuracy_inputs(fixed_grey: sitk.Image, moving_grey: sitk.Image, volumes: tuple[sitk.Image, sitk.Image],
                     progress: ProgressCallback | None, sources: dict[str, Any]) -> Any:
    """:func:`evaluation.read_slice_accuracy_inputs` of the images as registered (one-slice volumes, ``volumes`` as
    read, as the 2D images of their slices), None where no label map or landmark file was given."""
    if sources["fixed_labels"] is None and sources["fixed_landmarks"] is None:
        return None
    from .evaluation import read_slice_accuracy_inputs

    report(progress, 0.0, "reading label maps and landmarks")
    return read_slice_accuracy_inputs(fixed_grey, moving_grey, volumes, **sources)


def check_method_windows(fixed: sitk.Image, moving: sitk.Image, methods: Sequence[str],
                         method_params: dict[str, dict[str, Any]] | None) -> None:
    """Refuse now a window of the fusion (``window_a``, ``window_b`` or its other name ``window``, per method) that
    holds none of its image's values (:func:`fusion.check_windows`, the rule ``fuse`` applies): ``moving`` as given,
    before it is registered and resampled. Each window is checked once, however many methods share it."""
    from . import fusion

    seen: set[tuple[Any, Any]] = set()
    for method in methods:
        params = (method_params or {}).get(method) or {}
        window_b = params.get("window_b", params.get("window"))
        windows = (params.get("window_a"), window_b)
        key = tuple(None if w is None else tuple(w) for w in windows)
        if key != (None, None) and key not in seen:
            seen.add(key)
            fusion.check_windows(fixed, moving, window_a=windows[0], window_b=windows[1])


def _previous_outputs(methods: Sequence[str]) -> list[str]:
    """File names an earlier ``run`` into the same folder may have left (any method it could have run)."""
    from . import fusion
    from . import report as report_mod

    names = ["transform.tfm", "transform.h5", "moving_resampled.*"] + list(report_mod.report_file_patterns())
    for m in dict.fromkeys([*fusion.list_methods(), "deep", *methods]):
        names += [f"fused_{m}.*", f"weights_{m}.*", f"montage_{m}.png"]
    return [n for n in names if n != "montage_*.png"]  # montages only by method: not a user's own PNGs


def _register_fuse_report(fixed_img: sitk.Image, fixed_name: str, moving_img: sitk.Image, moving_name: str,
                          fixed_grey: sitk.Image, moving_grey: sitk.Image, out: str, *, methods: Sequence[str],
                          preset: str | None, stages: Sequence[str] | None, settings: Any,
                          progress: ProgressCallback | None, fixed_mask: sitk.Image | None,
                          moving_mask: sitk.Image | None, backend: str,
                          method_params: dict[str, dict[str, Any]] | None, title: str | None,
                          slice_volume: sitk.Image | None = None, accuracy_inputs: Any = None
                          ) -> tuple[dict[str, str], dict[str, str], Any, dict, list, dict, dict | None]:
    """The work of :func:`run` once the images are loaded, its files written into ``out``; ``settings``:
    the registration's (``resolve_parameters``), None for none; images as one-slice volumes on
    ``slice_volume``'s geometry where given (the fixed image read from it); ``accuracy_inputs``: the label maps
    and landmarks scored through the transform (:class:`accuracy.AccuracyInputs`), None for none."""
    from . import metrics as metrics_mod
    from . import report as report_mod
    from .io import as_one_slice_of, write_image, write_transform
    from .preprocess import resample

    files: dict[str, str] = {}

    registration = None
    transform = sitk.Transform(fixed_grey.GetDimension(), sitk.sitkIdentity)
    register = settings is not None
    if register:
        from .registration import register as register_images

        registration = register_images(fixed_grey, moving_grey, settings, fixed_mask=fixed_mask,
                                       moving_mask=moving_mask, progress=scaled(progress, 0.02, 0.6), backend=backend)
        transform = registration.transform
        tx_ext = ".tfm" if not registration.is_deformable else ".h5"
        files["transform"] = write_transform(transform, os.path.join(out, "transform" + tx_ext))
    report(progress, 0.6, "resampling the moving image onto the fixed grid")
    colour = moving_img.GetNumberOfComponentsPerPixel() > 1
    moving_on_fixed = resample(moving_img, fixed_grey, transform, "linear",
                               pixel_type=sitk.sitkVectorFloat32 if colour else None,
                               components="channels" if colour else None)  # RGB/RGBA (check_components)
    moving_on_fixed = _keep_8bit(moving_on_fixed, moving_img)
    if colour and moving_img.HasMetaDataKey("NRRD_kinds[pixel]"):
        # what the file says of its components (RGB-color), which resampling drops: a colour NRRD with values below 0
        # passed the checks of the image as read and was refused by the fusion as a vector image (check_components)
        moving_on_fixed.SetMetaData("NRRD_kinds[pixel]", moving_img.GetMetaData("NRRD_kinds[pixel]"))
    before = resample(moving_grey, fixed_grey, None, "linear")
    after = resample(moving_grey, fixed_grey, transform, "linear")
    if not has_content(after):  # nothing of the moving image lands on the fixed grid
        raise _no_overlap(moving_name, fixed_name, register)
    # each over the fixed voxels the moving image reaches in that state (within the fixed mask), as ITK and ANTs count
    reg_metrics = metrics_mod.alignment_before_after(fixed_grey, moving_grey, transform, fixed_mask, before=before,
                                                     after=after)
    accuracy = None
    if accuracy_inputs is not None:
        from .evaluation import evaluate_accuracy

        report(progress, 0.61, "scoring the registration on the labels and landmarks")
        # through the registration's transform (fixed -> moving points), as evaluate-registration --transform
        # DIR/transform.tfm scores it; without registration "after" is the images as they lie
        accuracy = evaluate_accuracy(fixed_grey, moving_grey, registration.transform if register else None,
                                     accuracy_inputs)
    ext = _ext_for(fixed_grey if slice_volume is None else slice_volume)

    def on_grid(image: sitk.Image) -> sitk.Image:
        return image if slice_volume is None else as_one_slice_of(image, slice_volume)

    # a 2D moving image that is not 8-bit (a PET in Bq/ml) would be clipped to 0..255 in a PNG: NRRD keeps it
    eight_bit = moving_img.GetPixelID() in (sitk.sitkUInt8, sitk.sitkVectorUInt8)
    moving_ext = ".nrrd" if (ext == ".png" and not eight_bit) or (slice_volume is not None and colour) else ext
    files["moving_resampled"] = write_image(_writable(on_grid(moving_on_fixed), moving_ext),
                                            os.path.join(out, "moving_resampled" + moving_ext))

    fusions, table = fuse_and_evaluate(fixed_img, moving_on_fixed, methods, progress=scaled(progress, 0.62, 0.9),
                                       method_params=method_params)
    for res in fusions:
        fused_ext = _fused_ext(res.image, ext, slice_volume)
        files[f"fused_{res.method}"] = write_image(_writable(on_grid(res.image), fused_ext),
                                                   os.path.join(out, f"fused_{res.method}{fused_ext}"))
        if res.weights is not None and ext != ".png":
            files[f"weights_{res.method}"] = write_image(on_grid(res.weights),
                                                         os.path.join(out, f"weights_{res.method}{ext}"))

    report(progress, 0.92, "writing the report")
    report_paths = report_mod.write_report(
        out, inputs={f"fixed: {fixed_name}": fixed_img, f"moving: {moving_name} (registered)": moving_on_fixed},
        fusions=fusions, metrics=table, registration=registration, registration_metrics=reg_metrics,
        registration_accuracy=accuracy, title=title or f"Fusion of {moving_name} onto {fixed_name}",
        notes=[f"fixed (anatomical): {fixed_name}; moving (functional): {moving_name}; methods: {', '.join(methods)}"
               # the registration's settings only where one ran (they had been named after --no-register too)
               + (f"; preset: {preset}" if preset and register else "")
               + (f"; stages: {', '.join(stages)}" if stages and register else "")])
    return files, report_paths, registration, reg_metrics, fusions, table, accuracy
