"""Visual quality control of a registration: checkerboards before and after.

A checkerboard alternates squares of the fixed and the (resampled) moving image, so edges
that continue straight across square borders show a good alignment.
"""

from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..preprocess import reorient_to_lps, robust_range

__all__ = ["checkerboard", "write_checkerboard_png", "middle_slice", "display_spacing"]


def _scale(arr: np.ndarray, lo: float, hi: float) -> np.ndarray:
    lo, hi = np.float64(lo), np.float64(hi)  # scaled in float64 (a Python float would keep float32's rounding)
    return np.clip((np.nan_to_num(arr) - lo) / (hi - lo), 0, 1).astype(np.float32)


def _unit(image: sitk.Image) -> sitk.Image:
    """Intensities mapped to 0..1 between the 1st and 99th percentile (robust to outliers; their min and max
    where those coincide: an object on under 1% of the voxels, e.g. a PET hot spot, had shown flat white)."""
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    out = sitk.GetImageFromArray(_scale(arr, *robust_range(arr, 1.0, 99.0)))
    out.CopyInformation(image)
    return out


def _unit_middle_slice(image: sitk.Image) -> np.ndarray:
    """``middle_slice(_unit(image))`` without scaling the whole volume: the range still comes from
    every voxel, but only the displayed slice is scaled (the same element-wise operations)."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    lo, hi = robust_range(sitk.GetArrayViewFromImage(image), 1.0, 99.0)
    return _scale(middle_slice(image), lo, hi)


def _pattern(fixed: sitk.Image, squares: int) -> list[int]:
    """Squares per axis: at most one per voxel, as ITK divides the size by the pattern and a thin slab
    (fewer voxels than squares) would divide by zero and kill the process (SIGFPE)."""
    return [max(1, min(int(squares), int(n))) for n in fixed.GetSize()]


def checkerboard(fixed: sitk.Image, moving_on_fixed_grid: sitk.Image, squares: int = 8) -> sitk.Image:
    """A checkerboard of the two images (each normalised to 0..1), on the fixed grid.

    Args:
        fixed: the fixed image.
        moving_on_fixed_grid: the moving image already resampled onto the fixed grid.
        squares: number of squares along each axis.

    Returns:
        float32 image on the fixed grid.

    Raises:
        InputError: the images are not on one grid.
    """
    if fixed.GetSize() != moving_on_fixed_grid.GetSize():
        raise InputError(f"The checkerboard needs both images on one grid (sizes {fixed.GetSize()} and "
                         f"{moving_on_fixed_grid.GetSize()}).",
                         "Resample the moving image onto the fixed image first (preprocess.resample).")
    a = _unit(sitk.Cast(fixed, sitk.sitkFloat32))
    b = _unit(sitk.Cast(moving_on_fixed_grid, sitk.sitkFloat32))
    b.CopyInformation(a)
    pattern = _pattern(fixed, squares)
    return sitk.CheckerBoard(a, b, pattern)


def display_spacing(image: sitk.Image) -> tuple[float, float]:
    """(column, row) pixel size in mm of :func:`middle_slice`'s array: the spacing along L and P,
    which for a volume stored sagittally or coronally is not its first two spacings."""
    probe = sitk.Image([1] * image.GetDimension(), sitk.sitkUInt8)
    probe.SetSpacing(image.GetSpacing())
    probe.SetDirection(image.GetDirection())
    sx, sy = reorient_to_lps(probe).GetSpacing()[:2]
    return float(sx), float(sy)


def middle_slice(image: sitk.Image) -> np.ndarray:
    """The middle axial slice of a 3D image, or the 2D image, as an array (rows, cols), in radiological
    display (reoriented to LPS first: anterior at the top, the patient's right on the left, as Slicer)."""
    image = reorient_to_lps(image)
    arr = sitk.GetArrayFromImage(image)
    return arr[arr.shape[0] // 2] if image.GetDimension() == 3 else arr


def write_checkerboard_png(fixed: sitk.Image, moving_before: sitk.Image, moving_after: sitk.Image,
                           path: str | os.PathLike, squares: int = 8) -> str:
    """Write a side-by-side PNG: checkerboard before (left) and after (right) registration.

    Both moving images must already be on the fixed grid (before: resampled with the identity
    or initial transform; after: with the registration result). 3D images show the middle
    axial slice; every panel is shown as Slicer's axial view shows it (radiological: the patient's
    right on the left, anterior at the top; see :func:`middle_slice`) with square pixels in mm.

    Returns:
        The path written (atomically).
    """
    from ..io import write_image

    for moving in (moving_before, moving_after):
        if fixed.GetSize() != moving.GetSize():
            checkerboard(fixed, moving, squares)  # raises the grid error
    # Only the middle slice is shown, so only it is built: which image each of its pixels comes from
    # is read off ITK's checkerboard of two constant masks (the same pattern checkerboard() makes),
    # and each image is scaled once. The PNG is identical to middle_slice(checkerboard(...)); on a
    # 512x512x200 CT this took 30 s (two whole-volume float64 scalings per image, the fixed one twice).
    pattern = _pattern(fixed, squares)
    zeros = sitk.Image(fixed.GetSize(), sitk.sitkUInt8)
    zeros.CopyInformation(fixed)
    take_moving = middle_slice(sitk.CheckerBoard(zeros, zeros + 1, pattern)) > 0
    fixed_slice = _unit_middle_slice(fixed)
    before = np.where(take_moving, _unit_middle_slice(moving_before), fixed_slice)
    after = np.where(take_moving, _unit_middle_slice(moving_after), fixed_slice)
    gap = np.ones((before.shape[0], max(4, before.shape[1] // 50)), np.float32)
    panel = np.concatenate([before, gap, after], axis=1)
    img = sitk.GetImageFromArray((np.clip(panel, 0, 1) * 255).astype(np.uint8))
    sx, sy = display_spacing(fixed)  # of the displayed (reoriented) slice, not the stored axes
    if abs(sx - sy) > 1e-6:
        # square pixels on screen: stretch the coarser axis to the physical aspect ratio
        step = min(sx, sy)
        img.SetSpacing([sx, sy])
        size = [int(round(panel.shape[1] * sx / step)), int(round(panel.shape[0] * sy / step))]
        img = sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, [0, 0], [step, step], [1, 0, 0, 1], 0,
                            sitk.sitkUInt8)
    return write_image(img, path)
