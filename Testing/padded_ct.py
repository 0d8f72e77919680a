"""A head CT padded as many scanners' int16 exports pad it (-32768 outside the reconstruction circle), shared by the
tests of what leaves the padding out (fusion's min-max in test_fusion, the web viewer's ranges in test_web_app).

Not a test module (pytest collects ``test_*.py``); the tests import it as they import test_dicom_inputs' helpers
(pytest puts Testing/ on the path)."""

from __future__ import annotations

import dataclasses

import numpy as np
import SimpleITK as sitk


@dataclasses.dataclass
class PaddedHeadCt:
    """A 4x48x48 int16 head: air (-1000) around soft tissue (40) in a ring of bone (1000), inside a field of view
    of radius 23 voxels. ``ct``: the values, unpadded; ``padded``: -32768 outside the field of view; ``unpadded``:
    the CT's lowest value there; ``radius``, ``fov``, ``body``: the voxels' distance from the axis, the field of
    view and the head."""

    radius: np.ndarray
    fov: np.ndarray
    body: np.ndarray
    ct: np.ndarray
    padded: sitk.Image
    unpadded: sitk.Image


def padded_head_ct(rng: np.random.Generator) -> PaddedHeadCt:
    """The head CT of :class:`PaddedHeadCt`, its noise drawn from ``rng`` (a caller drawing more from it after,
    e.g. an MR of the same head, gets the same values every run)."""
    _, y, x = np.mgrid[:4, :48, :48]
    radius = np.hypot(y - 23.5, x - 23.5)
    fov, body = radius < 23, radius < 16
    ct = np.where(body, rng.normal(40, 15, fov.shape), -1000 + rng.normal(0, 5, fov.shape))
    ct = np.where((radius > 13) & body, 1000.0, ct).astype(np.int16)
    padded = sitk.GetImageFromArray(np.where(fov, ct, -32768).astype(np.int16))
    unpadded = sitk.GetImageFromArray(np.where(fov, ct, ct[fov].min()).astype(np.int16))
    return PaddedHeadCt(radius, fov, body, ct, padded, unpadded)
