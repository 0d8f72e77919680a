"""3D known-transform recovery: MNI152 T1 vs a synthetic T2-like contrast (3 mm voxels for speed).

TRE = mean distance between the recovered and the true mapping over the brain-mask voxels.
"""

from __future__ import annotations

import math
import unittest

import numpy as np
import SimpleITK as sitk

from MultimodalFusionLib import data
from MultimodalFusionLib.preprocess import resample
from MultimodalFusionLib.registration import register
from MultimodalFusionLib.registration.accuracy import bspline_case, rigid_case, transform_error

SPACING = 3.0


class Known3DCases(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tissues = data.mni152(spacing_mm=SPACING)

    def test_rigid_recovery(self):
        case = rigid_case(spacing_mm=SPACING, tissues=self.tissues)
        self.assertGreater(case.error_before()["mean"], 7.0)
        res = register(case.fixed, case.moving, stages=["rigid"], seed=1)
        tre = case.error(res.transform)
        self.assertLess(tre["mean"], 0.5, tre)
        self.assertEqual(res.transform.GetName(), "Euler3DTransform")

    def test_rigid_recovery_gradients_at_samples(self):
        """The large-volume path (no gradient images; gradients at the sample points), forced on 3 mm."""
        from MultimodalFusionLib.registration import sitk_backend

        case = rigid_case(spacing_mm=SPACING, tissues=self.tissues, angles_deg=(-6.0, 2.0, 3.0),
                          translation=(1.0, -4.0, 2.0))
        saved = sitk_backend.GRADIENT_IMAGE_VOXELS
        sitk_backend.GRADIENT_IMAGE_VOXELS = 0
        try:
            res = register(case.fixed, case.moving, stages=["rigid", "affine"], seed=6)
        finally:
            sitk_backend.GRADIENT_IMAGE_VOXELS = saved
        self.assertLess(case.error(res.transform)["mean"], 0.5)

    def test_affine_recovery(self):
        case = rigid_case(spacing_mm=SPACING, tissues=self.tissues, angles_deg=(5.0, -3.0, 4.0),
                          translation=(-4.0, 3.0, 2.0), affine_scale=(1.06, 0.95, 1.03), contrast="pd")
        res = register(case.fixed, case.moving, stages=["rigid", "affine"], seed=2)
        tre = case.error(res.transform)
        self.assertLess(tre["mean"], 1.0, tre)
        self.assertEqual(res.transform.GetName(), "AffineTransform")
        self.assertEqual([s.name for s in res.stages], ["rigid", "affine"])
        self.assertTrue(all(s.accepted for s in res.stages))

    def test_staged_bspline_reduces_warp(self):
        case = bspline_case(spacing_mm=SPACING, magnitude_mm=5.0, tissues=self.tissues)
        before = case.error_before()["mean"]
        self.assertGreater(before, 4.5)
        res = register(case.fixed, case.moving, stages=["rigid", "affine", "bspline"], seed=3)
        after = case.error(res.transform)["mean"]
        self.assertLess(after, 0.3 * before, f"{before:.2f} mm -> {after:.2f} mm")
        self.assertTrue(res.is_deformable)
        self.assertIsInstance(res.transform, sitk.CompositeTransform)
        self.assertEqual(res.stages[-1].name, "bspline")

    def test_oblique_anisotropic_fixed_grid(self):
        """Non-identity direction and anisotropic spacing: physical space is what is registered."""
        case = rigid_case(spacing_mm=SPACING, tissues=self.tissues, angles_deg=(0.0, 4.0, -6.0),
                          translation=(2.0, -3.0, 1.0))
        rot = sitk.Euler3DTransform()
        rot.SetRotation(0.0, math.radians(10.0), math.radians(25.0))
        direction = np.array(rot.GetMatrix())
        ref = sitk.Image([44, 60, 34], sitk.sitkFloat32)
        ref.SetSpacing((3.5, 2.8, 4.5))
        ref.SetDirection(direction.tolist())
        center = np.array(case.fixed.TransformContinuousIndexToPhysicalPoint(
            [(s - 1) / 2 for s in case.fixed.GetSize()]))
        half = direction.reshape(3, 3) @ (np.array(ref.GetSpacing()) * (np.array(ref.GetSize()) - 1) / 2)
        ref.SetOrigin((center - half).tolist())
        oblique_fixed = resample(case.fixed, ref)
        oblique_mask = resample(case.mask, ref, interpolation="nearest")
        self.assertEqual(oblique_fixed.GetDirection(), ref.GetDirection())
        res = register(oblique_fixed, case.moving, seed=4)
        tre = transform_error(res.transform, case.truth, oblique_fixed, oblique_mask)
        self.assertLess(tre["mean"], 0.6, tre)


if __name__ == "__main__":
    unittest.main()
