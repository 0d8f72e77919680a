"""Default optimizer steps that follow the voxel size: micro-CT/PET voxels (0.05 mm) and very coarse ones (50 mm).

ITK's regular-step optimizer takes its steps in mm; with the 2 mm rigid step and 0.001 mm minimum of 1-4 mm
images, ITK's 2D BrainWeb pair (truth 10 degrees) with only its pixel size changed ended 25.7 degrees at
0.05 mm and 1.2 degrees at 50 mm (accepted, exit 0). The default steps now follow the voxel size outside
0.5-20 mm (``parameters.step_scale``) and are unchanged inside it.
"""

from __future__ import annotations

import contextlib
import io as _io
import json
import math
import os
import tempfile
import unittest

import SimpleITK as sitk

from MultimodalFusionLib import cli
from MultimodalFusionLib.registration import RegistrationParameters, StageParameters, default_stage, register
from MultimodalFusionLib.registration.accuracy import (
    itk_brainweb_scaled_pair,
    transform_error,
)
from MultimodalFusionLib.registration.parameters import (
    DEFAULT_LEARNING_RATE,
    STEP_SCALE_VOXEL_MM,
    load_preset,
    step_scale,
)

TRUTH_DEG = 10.0


_pair = itk_brainweb_scaled_pair  # the pair with pixel_mm pixels and its true transform


def _angle_deg(transform: sitk.Transform) -> float:
    return math.degrees(sitk.Euler2DTransform(transform).GetAngle())


class VoxelSizeFollowingSteps(unittest.TestCase):
    def test_default_rigid_registration_at_micro_and_coarse_pixels(self):
        # before: 25.68 degrees (0.05 mm) and 1.17 degrees (50 mm, at the iteration limit), both accepted
        for pixel_mm in (0.05, 50.0):
            with self.subTest(pixel_mm=pixel_mm):
                fixed, moving, truth = _pair(pixel_mm)
                result = register(fixed, moving, seed=1)
                self.assertTrue(result.stages[0].accepted, result.warnings)
                self.assertAlmostEqual(_angle_deg(result.transform), TRUTH_DEG, delta=0.1)
                self.assertLess(transform_error(result.transform, truth, fixed)["mean"] / pixel_mm, 0.2)  # pixels
                effective = result.parameters["stages"][0]["effective"]
                scale = pixel_mm / (STEP_SCALE_VOXEL_MM[0] if pixel_mm < 1 else STEP_SCALE_VOXEL_MM[1])
                self.assertAlmostEqual(effective["step_scale"], scale)
                self.assertAlmostEqual(effective["learning_rate"], 2.0 * scale)
                self.assertAlmostEqual(effective["min_step"], 1e-3 * scale)

    def test_the_steps_are_unchanged_for_voxels_of_half_a_mm_to_20_mm(self):
        # the grids of the README's figures and the known-answer tests: 0.5 mm CT in-plane, 1-8 mm MNI152,
        # thick slices, the demo's 20 mm
        for spacing in ((0.5, 0.5), (0.5, 0.5, 1.0), (0.7, 0.7, 3.0), (1.0, 1.0, 5.0), (1.0,) * 3, (3.0,) * 3,
                        (8.0,) * 3, (20.0,) * 3):
            with self.subTest(spacing=spacing):
                self.assertEqual(step_scale(spacing), 1.0)
        fixed, moving, _ = _pair(1.0)
        effective = register(fixed, moving, seed=1).parameters["stages"][0]["effective"]
        self.assertEqual((effective["step_scale"], effective["learning_rate"], effective["min_step"]),
                         (1.0, 2.0, 1e-3))
        # the smallest voxel size counts: 0.1 mm in-plane under 5 mm slices is a fine grid
        self.assertAlmostEqual(step_scale((0.1, 0.1, 5.0)), 0.2)

    def test_a_step_given_is_used_as_given(self):
        fixed, moving, _ = _pair(0.05)
        stage = StageParameters(name="rigid", learning_rate=0.5, min_step=1e-4, iterations=5)
        effective = register(fixed, moving, RegistrationParameters(stages=[stage]), seed=1).parameters
        effective = effective["stages"][0]["effective"]
        self.assertEqual((effective["learning_rate"], effective["min_step"]), (0.5, 1e-4))

    def test_a_rigid_line_search_records_no_step_it_did_not_take(self):
        # ITK estimates a rigid or affine line search's learning rate at every iteration (physical-shift scales):
        # learning_rate 0.001 and 100 ran the same transform, yet metrics.json's effective recorded each (and the
        # default, scaled: 0.2 at 0.05 mm) as the learning_rate that ran
        fixed, moving, _ = _pair(0.05)
        ran = []
        for rate in (None, 1e-3, 100.0):
            stage = StageParameters(name="rigid", optimizer="gradient_descent_line_search", learning_rate=rate,
                                    iterations=10)
            result = register(fixed, moving, RegistrationParameters(stages=[stage]), seed=1)
            effective = result.parameters["stages"][0]["effective"]
            self.assertNotIn("learning_rate", effective)
            self.assertNotIn("step_scale", effective)
            ran.append(result.transform.GetParameters())
        self.assertEqual(ran[0], ran[1])
        self.assertEqual(ran[0], ran[2])
        # a B-spline stage's line search (unit scales, no estimate) takes its step: recorded, scaled
        stage = StageParameters(name="bspline", optimizer="gradient_descent_line_search", iterations=2, mesh_size=2,
                                number_of_samples=2000, shrink_factors=[1], smoothing_sigmas=[0.0])
        effective = register(fixed, moving, RegistrationParameters(stages=[stage]), seed=1).parameters
        effective = effective["stages"][0]["effective"]
        self.assertAlmostEqual(effective["learning_rate"], 0.1)
        self.assertAlmostEqual(effective["step_scale"], 0.1)

    def test_stage_types_and_presets_leave_their_default_steps_to_the_voxel_size(self):
        for name, rate in (("rigid", 2.0), ("affine", 1.0), ("bspline", 1.0)):
            with self.subTest(stage=name):
                self.assertIsNone(default_stage(name).learning_rate)
                self.assertIsNone(default_stage(name).min_step)
                self.assertIsNone(StageParameters(name=name).learning_rate)
                self.assertEqual(DEFAULT_LEARNING_RATE[name], rate)  # what default_stage had given explicitly
        for preset in ("t1-t2-brain", "ct-mr-head", "mr-pet-brain", "mr-mr-deformable"):
            with self.subTest(preset=preset):
                self.assertTrue(all(s.learning_rate is None for s in load_preset(preset).stages))

    def test_cli_registers_micro_ct_sized_pixels(self):
        fixed, moving, _ = _pair(0.05)
        with tempfile.TemporaryDirectory() as d:
            paths = [os.path.join(d, name) for name in ("fixed.nrrd", "moving.nrrd")]
            for image, path in zip((fixed, moving), paths):
                sitk.WriteImage(image, path)
            out, err = _io.StringIO(), _io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                rc = cli.main(["register", *paths, "-o", os.path.join(d, "out"), "--seed", "1"])
            self.assertEqual(rc, 0, err.getvalue())
            self.assertNotIn("discarded", err.getvalue())
            self.assertAlmostEqual(_angle_deg(sitk.ReadTransform(os.path.join(d, "out", "transform.tfm"))),
                                   TRUTH_DEG, delta=0.1)
            with open(os.path.join(d, "out", "metrics.json"), encoding="utf-8") as f:
                stage = json.load(f)["parameters"]["stages"][0]
            self.assertIsNone(stage["learning_rate"])
            self.assertAlmostEqual(stage["effective"]["learning_rate"], 0.2)


if __name__ == "__main__":
    unittest.main()
