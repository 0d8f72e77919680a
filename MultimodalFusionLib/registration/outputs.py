"""Writing the outputs of a registration: transform, resampled moving image, metrics, checkerboard."""

from __future__ import annotations

import os
from typing import Any

import SimpleITK as sitk

from ..io import (
    as_one_slice_of,
    replacing_outputs,
    volume_extension,
    write_image,
    write_json,
    write_transform,
)
from ..preprocess import resample
from .qc import write_checkerboard_png
from .result import RegistrationResult

__all__ = ["save_registration_outputs"]


def save_registration_outputs(result: RegistrationResult, fixed: sitk.Image, moving: sitk.Image,
                              output_dir: str | os.PathLike, *, image_name: str = "moving_resampled.nii.gz",
                              extra: dict[str, Any] | None = None,
                              initial_transform: sitk.Transform | None = None,
                              slice_volume: sitk.Image | None = None) -> dict[str, Any]:
    """Write a registration's outputs into ``output_dir`` and return metrics.json's content.

    Files: ``transform.tfm`` (``transform.h5`` when deformable), ``moving_resampled.nii.gz``
    (the moving image on the fixed grid), ``checkerboard.png`` (before | after, middle axial
    slice for 3D) and ``metrics.json`` (metric before/after, per-stage iterations, stop reasons,
    timings, warnings, output paths and ``extra``).

    Args:
        result: the registration result.
        fixed: fixed image (grid of the outputs).
        moving: moving image as given to the registration.
        output_dir: folder (created if needed).
        image_name: file name of the resampled moving image.
        extra: more JSON-able entries for metrics.json (e.g. errors against a known answer).
        initial_transform: the "before" of the checkerboard (identity when None).
        slice_volume: the one-slice volume ``fixed`` was read from (``io.one_slice_as_2d``): the resampled
            moving image is written as a one-slice volume on its geometry, where Slicer shows the fixed one.

    Returns:
        The metrics.json content.
    """
    # written as a whole (staged, then moved in): a re-run leaves no file of the last one, e.g. its
    # deformable transform.h5 next to a new linear transform.tfm, or a .nii.gz next to a new .mha
    stem = image_name[: -len(".nii.gz")] if image_name.endswith(".nii.gz") else os.path.splitext(image_name)[0]
    previous = ["transform.tfm", "transform.h5", stem + ".*", "checkerboard.png", "metrics.json"]
    with replacing_outputs(output_dir, previous=previous) as stage:
        tx_name = "transform.h5" if result.is_deformable else "transform.tfm"
        tx_path = write_transform(result.transform, os.path.join(stage, tx_name))
        after = resample(moving, fixed, result.transform)
        grid = fixed if slice_volume is None else slice_volume
        if image_name.endswith((".nii", ".nii.gz")) and volume_extension(grid) != ".nii.gz":
            # a sheared fixed grid: NIfTI would store another direction
            image_name = image_name[: -len(".nii.gz") if image_name.endswith(".gz") else -len(".nii")] + \
                volume_extension(grid)
        img_path = write_image(after if slice_volume is None else as_one_slice_of(after, slice_volume),
                               os.path.join(stage, image_name))
        before = resample(moving, fixed, initial_transform)
        cb_path = write_checkerboard_png(fixed, before, after, os.path.join(stage, "checkerboard.png"))
        metrics = result.to_dict()
        metrics["outputs"] = {"transform": os.path.basename(tx_path), "moving_resampled": os.path.basename(img_path),
                              "checkerboard": os.path.basename(cb_path), "metrics": "metrics.json"}
        if extra:
            metrics.update(extra)
        write_json(os.path.join(stage, "metrics.json"), metrics)
    return metrics
