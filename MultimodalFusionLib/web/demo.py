"""Demo data of the web application: an MR T1 and a PET-like image that is slightly misaligned."""

from __future__ import annotations

import math

import SimpleITK as sitk

from .. import data

__all__ = ["demo_images", "DEMO_ROTATION_DEG", "DEMO_TRANSLATION_MM"]

#: The rigid misalignment of the demo PET: rotation about the image centre's axes (x, y, z) and shift.
DEMO_ROTATION_DEG = (0.0, 0.0, 6.0)
DEMO_TRANSLATION_MM = (7.0, -5.0, 4.0)


def demo_images(spacing_mm: float = 3.0, seed: int = 0) -> tuple[sitk.Image, sitk.Image, sitk.Transform]:
    """The MNI152 T1 template (fixed) and a synthetic FDG-PET-like image moved by a small rigid motion.

    Args:
        spacing_mm: voxel size of both images (3 mm: quick, 2 mm: nicer pictures).
        seed: seed of the PET-like image's noise and bias field.

    Returns:
        (fixed T1, moving PET-like, truth transform): the truth maps fixed-space points to the
        moving image's space, so a registration should recover it.
    """
    tissues = data.mni152(spacing_mm=spacing_mm)
    fixed = tissues["t1"]
    pet = data.synthetic_contrast(tissues, "pet", seed=seed)
    centre = fixed.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in fixed.GetSize()])
    truth = sitk.Euler3DTransform(centre, *(math.radians(a) for a in DEMO_ROTATION_DEG), DEMO_TRANSLATION_MM)
    # Resample through the inverse so that resampling the moving image with ``truth`` realigns it.
    moving = sitk.Resample(pet, fixed, truth.GetInverse(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return fixed, moving, truth
