"""The centre of mass behind the ``moments`` initializer and the rotation search's start (both backends).

Known answers on the MNI152 head at 3 mm: a synthetic CT (air at -1000 HU, noise) has the centre of
its object, i.e. of its noise-free densities (HU + 1000); an offset (minus 1000) does not move a
centre; an image with no negative value keeps the centre of its signed values, bit for bit. Before
one rule was shared, the SimpleITK backend weighed the voxel values as they are (ITK's moments) and
the torch backend the values minus their minimum.
"""

from __future__ import annotations

import unittest

import numpy as np
import SimpleITK as sitk

from MultimodalFusionLib import data
from MultimodalFusionLib.errors import InputError
from MultimodalFusionLib.registration import register
from MultimodalFusionLib.registration.accuracy import rigid_case
from MultimodalFusionLib.registration.sitk_backend import centre_of_mass, moments_start
from MultimodalFusionLib.registration.torch_backend import TorchRegistrationParameters

SPACING = 3.0


def _weighted_centre(image: sitk.Image, weights: np.ndarray) -> np.ndarray:
    """The physical centre of ``weights`` (a numpy array on ``image``'s grid), by plain numpy."""
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in weights.shape], indexing="ij")
    index = [float((g * weights).sum() / weights.sum()) for g in grids[::-1]]  # numpy (z, y, x) -> ITK (x, y, z)
    return np.array(image.TransformContinuousIndexToPhysicalPoint(index))


def _signed_centre(image: sitk.Image) -> np.ndarray:
    """The rule used before on the SimpleITK backend (ITK's moments: the values as they are)."""
    arr = sitk.GetArrayViewFromImage(image)
    total = float(arr.sum(dtype=np.float64))
    dim = image.GetDimension()
    index = []
    for axis in range(dim):
        profile = arr.sum(axis=tuple(a for a in range(dim) if a != dim - 1 - axis), dtype=np.float64)
        index.append(float(np.dot(profile, np.arange(profile.size, dtype=np.float64)) / total))
    return np.array(image.TransformContinuousIndexToPhysicalPoint(index))


def _with_air(image: sitk.Image, voxels: int, seed: int = 0) -> sitk.Image:
    """``image`` (a CT) with ``voxels`` more voxels of noisy air (-1000 +- 40 HU) on its left side: a wider field."""
    wide = sitk.ConstantPad(image, [voxels, 0, 0], [0, 0, 0], -1000.0)
    arr = sitk.GetArrayFromImage(wide)
    arr[:, :, :voxels] += np.random.default_rng(seed).normal(0.0, 40.0, arr[:, :, :voxels].shape).astype(np.float32)
    out = sitk.GetImageFromArray(arr)
    out.CopyInformation(wide)
    return out


class CentreOfMass(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tissues = data.mni152(spacing_mm=SPACING)
        cls.ct_case = rigid_case(spacing_mm=SPACING, contrast="ct", tissues=cls.tissues)

    def _centre_error(self, case, fixed_centre: np.ndarray, moving_centre: np.ndarray) -> float:
        return float(np.linalg.norm(moving_centre - np.array(case.truth.TransformPoint(fixed_centre.tolist()))))

    def test_a_ct_has_the_centre_of_its_object_not_of_its_air(self):
        clean = data.synthetic_contrast(self.tissues, "ct", seed=0, noise=0.0)
        # air 0, water 1000, bone 2000 (float32 round-off below air: -6e-5)
        density = np.maximum(sitk.GetArrayFromImage(clean).astype(np.float64) + 1000.0, 0.0)
        truth = _weighted_centre(clean, density)
        for seed in (0, 1):
            ct = data.synthetic_contrast(self.tissues, "ct", seed=seed)
            # 0.38 mm; the signed values (ITK's moments, the rule before) 38.7 mm: the air pulled it
            self.assertLess(np.linalg.norm(centre_of_mass(ct) - truth), 1.0)
            self.assertGreater(np.linalg.norm(_signed_centre(ct) - truth), 30.0)

    def test_an_offset_does_not_move_the_centre(self):
        for contrast in ("t2", "pet"):
            image = data.synthetic_contrast(self.tissues, contrast, seed=0)
            clean = sitk.GetArrayFromImage(data.synthetic_contrast(self.tissues, contrast, seed=0, noise=0.0))
            truth = _weighted_centre(image, np.maximum(clean.astype(np.float64), 0.0))
            centre = centre_of_mass(image)
            self.assertLess(np.linalg.norm(centre - truth), 1.0, contrast)  # 0.52-0.53 mm (noise, bias field)
            # minus 1000: the signed values moved it 19.0 mm (T2) and 15.8 mm (PET); now 0.003 mm and 0.11 mm
            # (the background level is min(0, 25th percentile): here the percentile is just above 0, 0.09
            # and 0.01, so the image is cut at 0 and the one minus 1000 at its percentile)
            self.assertLess(np.linalg.norm(centre_of_mass(image - 1000.0) - centre), 0.2, contrast)
            self.assertGreater(np.linalg.norm(_signed_centre(image - 1000.0) - centre), 10.0, contrast)

    def test_images_without_negative_values_keep_their_centre_bit_for_bit(self):
        images = [sitk.Clamp(data.synthetic_contrast(self.tissues, contrast, seed=0), sitk.sitkFloat32, 0.0)
                  for contrast in ("t2", "pet")]
        images += [sitk.Cast(im, sitk.sitkFloat32) for im in data.itk_brainweb_pair()]
        images.append(data.itk_brainweb_pair()[0])  # its own pixel type (unsigned 8-bit)
        for image in images:
            self.assertEqual(centre_of_mass(image).tolist(), _signed_centre(image).tolist())

    def test_nothing_above_the_background_is_an_input_error(self):
        arr = np.zeros((24, 24, 24), np.float32)
        arr[3, 4, 5] = -7.0
        image = sitk.GetImageFromArray(arr)
        with self.assertRaisesRegex(InputError, "no centre of mass.*Use the 'geometry' initializer"):
            centre_of_mass(image, "moving image")
        fixed = sitk.Cast(self.tissues["t1"], sitk.sitkFloat32)
        empty = sitk.Image(fixed.GetSize(), sitk.sitkFloat32)
        empty.CopyInformation(fixed)
        empty[5, 6, 7] = -7.0
        for backend in ("sitk", "torch"):
            with self.assertRaisesRegex(InputError, "moving image has no centre of mass", msg=backend):
                register(fixed, empty, stages=["rigid"], initializer="moments", backend=backend, seed=0)

    def test_sitk_moments_and_search_start_from_the_ct_object(self):
        case = self.ct_case
        start = moments_start(case.fixed, case.moving, sitk.Euler3DTransform())
        # 4.6 mm (the T1's brain and the CT's skull-weighted head differ), 37.1 mm before
        self.assertLess(self._centre_error(case, np.array(start.GetCenter()),
                                           np.array(start.GetCenter()) + start.GetTranslation()), 6.0)
        # the search started 37 mm off and ended 12.1 mm off the truth; 0.81 mm now
        found = register(case.fixed, case.moving, stages=["rigid"], initializer="search", seed=0)
        self.assertLess(case.error(found.transform)["mean"], 1.5)

    def test_a_sitk_moments_start_sums_each_image_once_per_registration(self):
        # the first stage's start was built twice (for the overlap and masks' checks, then again by the stage):
        # each image's centre of mass summed twice, 0.07 s more on a 160x192x192 volume, 0.15 s at 256^3
        from unittest import mock

        from MultimodalFusionLib.registration import sitk_backend

        case = self.ct_case
        mask = sitk.Cast(case.fixed > 0, sitk.sitkUInt8)
        for stages, masks in ((["rigid"], {}), (["rigid", "affine"], {"fixed_mask": mask, "moving_mask": None})):
            with self.subTest(stages=stages, masks=bool(masks)), \
                    mock.patch.object(sitk_backend, "centre_of_mass", wraps=sitk_backend.centre_of_mass) as spy:
                register(case.fixed, case.moving, stages=stages, initializer="moments", seed=0, **masks)
            self.assertEqual([c.args[1] for c in spy.call_args_list], ["fixed image", "moving image"])

    def test_torch_moments_start_is_the_sitk_one(self):
        # a CT with a wider field of air (90 mm on one side): the minimum (the torch rule before) weighed
        # the air by about 180 HU a voxel, 11.1 mm off; 3.7 mm now
        case = self.ct_case
        moving = _with_air(case.moving, int(90 / SPACING))
        params = TorchRegistrationParameters(stages=["rigid"], initializer="moments", linear_shrink_factors=[4],
                                             linear_iterations=[0], device="cpu")
        start = register(case.fixed, moving, params, backend="torch", seed=0).transform
        expected = moments_start(case.fixed, moving, sitk.Euler3DTransform())
        for point in ([0.0, 0.0, 0.0], [60.0, -40.0, 30.0]):
            np.testing.assert_allclose(start.TransformPoint(point), expected.TransformPoint(point), atol=1e-6)
        centre = np.array(start.GetCenter())
        self.assertLess(self._centre_error(case, centre, np.array(start.TransformPoint(centre.tolist()))), 6.0)

    def test_masks_limit_the_centre_on_both_backends(self):
        """A registration mask keeps what lies outside it (a CT's couch, padding) out of the centre of mass, as
        elastix's centre-of-gravity initialisation uses its masks; both ignored the masks before."""
        case = self.ct_case
        side = int(90 / SPACING)
        moving = _with_air(case.moving, side)  # 90 mm more field on one side, holding a couch-like slab
        arr = sitk.GetArrayFromImage(moving)
        arr[:, :, 2:side - 2] = 1200.0
        moving = sitk.GetImageFromArray(arr)
        moving.CopyInformation(_with_air(case.moving, side))
        mask = sitk.Image(moving.GetSize(), sitk.sitkUInt8)
        mask.CopyInformation(moving)
        mask[side:, :, :] = 1  # the original field of view
        plain = centre_of_mass(case.moving)
        self.assertGreater(np.linalg.norm(centre_of_mass(moving) - plain), 20.0)  # the slab pulled it
        self.assertLess(np.linalg.norm(centre_of_mass(moving, mask=mask) - plain), 1.0)
        expected = moments_start(case.fixed, moving, sitk.Euler3DTransform(), moving_mask=mask)
        self.assertLess(np.linalg.norm(np.array(expected.GetCenter()) + expected.GetTranslation() - plain), 1.0)
        params = TorchRegistrationParameters(stages=["rigid"], initializer="moments", linear_shrink_factors=[4],
                                             linear_iterations=[0], device="cpu")
        start = register(case.fixed, moving, params, backend="torch", seed=0, moving_mask=mask).transform
        for point in ([0.0, 0.0, 0.0], [60.0, -40.0, 30.0]):
            np.testing.assert_allclose(start.TransformPoint(point), expected.TransformPoint(point), atol=1e-6)
        # the sitk backend's moments start and the search start there too (within the search's refinement)
        found = register(case.fixed, moving, stages=["rigid"], initializer="search", seed=0, moving_mask=mask)
        self.assertLess(case.error(found.transform)["mean"], 1.5)
        low = sitk.Image(moving)
        low[0, 0, 0] = -3000.0  # below the background level: weighs nothing
        only = sitk.Image(moving.GetSize(), sitk.sitkUInt8)
        only.CopyInformation(moving)
        only[0, 0, 0] = 1
        with self.assertRaisesRegex(InputError, "above the background level inside its mask sum to 0"):
            centre_of_mass(low, "moving image", only)


if __name__ == "__main__":
    unittest.main()
