"""Torch registration backend: known answers, physical space, SimpleITK round trip, seed, masks.

Small volumes (MNI152 at 3 mm, 53x64x64) on the CPU with one torch thread; the whole file
runs in about a minute. Speed targets are in benchmarks/registration.py, not here.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import unittest
from typing import Any, Iterator

import numpy as np
import SimpleITK as sitk

try:
    import monai  # noqa: F401
    import torch

    HAVE_TORCH = True
except ImportError:  # pragma: no cover - the deep extra is not installed
    HAVE_TORCH = False

from MultimodalFusionLib import data
from MultimodalFusionLib.errors import InputError, OperationCancelled
from MultimodalFusionLib.registration import accuracy


def _brainweb_pair() -> tuple[sitk.Image, sitk.Image]:
    """ITK's T1 / rotated PD slices, read through io (the PNGs are palette images)."""
    from MultimodalFusionLib import io

    folder = data.testing_data_dir()
    return (io.read_image(folder / "BrainT1SliceBorder20.png", float32=True),
            io.read_image(folder / "BrainProtonDensitySliceR10X13Y17.png", float32=True))


def _rigid(matrix: np.ndarray, translation: np.ndarray) -> sitk.AffineTransform:
    tx = sitk.AffineTransform(3)
    tx.SetMatrix(matrix.ravel().tolist())
    tx.SetTranslation(translation.tolist())
    return tx


def _reoriented(image: sitk.Image, motion: sitk.AffineTransform) -> sitk.Image:
    """The same pixels with geometry moved by ``motion``: new physical point = motion(old point)."""
    out = sitk.Image(image)
    m = np.array(motion.GetMatrix()).reshape(3, 3)
    out.SetOrigin(motion.TransformPoint(image.GetOrigin()))
    out.SetDirection((m @ np.array(image.GetDirection()).reshape(3, 3)).ravel().tolist())
    return out


def _rotation(axis: tuple[float, float, float], angle_deg: float) -> np.ndarray:
    a = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    t = math.radians(angle_deg)
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * k @ k


@unittest.skipUnless(HAVE_TORCH, "torch and monai are not installed (pip install '.[deep]')")
class TorchRegistrationTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls._threads = torch.get_num_threads()
        torch.set_num_threads(1)  # small volumes: one thread is fastest and keeps the suite polite
        cls.tissues = data.mni152(spacing_mm=3)

    @classmethod
    def tearDownClass(cls) -> None:
        torch.set_num_threads(cls._threads)

    def _params(self, **kw):
        from MultimodalFusionLib.registration.torch_backend import TorchRegistrationParameters

        return TorchRegistrationParameters(device="cpu", **kw)

    def test_known_affine_recovered_multimodal(self) -> None:
        from MultimodalFusionLib.registration.torch_backend import register_torch

        case = accuracy.rigid_case(spacing_mm=3, affine_scale=(1.05, 0.96, 1.0), tissues=self.tissues)
        before = case.error_before()["mean"]
        result = register_torch(case.fixed, case.moving, self._params(stages=["affine"]), seed=3)
        err = case.error(result.transform)
        self.assertGreater(before, 6.0)
        self.assertLess(err["mean"], 1.0, err)       # a third of a 3 mm voxel
        self.assertLess(err["max"], 3.0, err)
        self.assertEqual(result.backend, "torch")
        self.assertIsInstance(result.transform, sitk.AffineTransform)
        self.assertEqual(len(result.stages), 1)
        stage = result.stages[0]
        self.assertLess(stage.metric_after, stage.metric_before)
        self.assertGreater(stage.iterations, 0)
        self.assertLessEqual(result.metric_after, result.metric_before)

    def test_known_affine_recovered_with_mind_as_the_linear_metric(self) -> None:
        # MIND over every voxel ended worse than the start (9.56 mm from 7.18): the skull-stripped T1's flat
        # background against the T2's noise, skull and scalp had its minimum elsewhere. Over the fixed
        # foreground (as the deformable stage counts it), the truth is found
        from MultimodalFusionLib.registration.torch_backend import register_torch

        case = accuracy.rigid_case(spacing_mm=3, affine_scale=(1.05, 0.96, 1.0), contrast="t2", tissues=self.tissues)
        # the coarse levels shortened from the default 150, 80 (this run's cost is the 40 at full resolution):
        # the same answer, 0.59 mm against 0.60 with the defaults
        result = register_torch(case.fixed, case.moving,
                                self._params(stages=["affine"], linear_metric="mind", linear_iterations=[60, 30, 40]),
                                seed=1)
        err = case.error(result.transform)
        self.assertLess(err["mean"], 1.0, err)  # 0.59 mm
        self.assertLess(err["max"], 3.0, err)   # 1.12 mm
        # with the background counted again (a short run): misled, as before
        quick = self._params(stages=["affine"], linear_metric="mind", linear_iterations=[60, 30, 10],
                             deformable_foreground_mask=False)
        self.assertGreater(case.error(register_torch(case.fixed, case.moving, quick, seed=1).transform)["mean"],
                           5.0)  # 8.57 mm

    def test_physical_space_with_oblique_directions_and_origins(self) -> None:
        """A left-handed oblique fixed image, and a moving image on another oblique, anisotropic grid."""
        from MultimodalFusionLib.registration.torch_backend import register_torch, resample_torch

        case = accuracy.rigid_case(spacing_mm=3, angles_deg=(6.0, -4.0, 3.0), translation=(4.0, -3.0, 2.0),
                                   tissues=self.tissues)
        # 1. move both images' geometry by one left-handed motion r: truth' = r o truth o r^-1
        flip = np.diag([1.0, -1.0, 1.0])
        r = _rigid(_rotation((1, 2, 3), 30.0) @ flip, np.array([40.0, -25.0, 60.0]))
        fixed = _reoriented(case.fixed, r)
        mask = _reoriented(case.mask, r)
        moving_r = _reoriented(case.moving, r)
        truth = sitk.CompositeTransform([r, case.truth, r.GetInverse()])
        # 2. put the moving image on another, oblique grid (other direction, spacing, origin, size):
        # the physical content, hence the truth, is unchanged
        direction = _rotation((-2, 1, 1), 25.0) @ np.array(moving_r.GetDirection()).reshape(3, 3)
        spacing = np.array([3.3, 2.7, 3.0])
        size = [60, 70, 66]
        center = np.array(moving_r.TransformContinuousIndexToPhysicalPoint(
            [(n - 1) / 2.0 for n in moving_r.GetSize()]))
        origin = center - direction @ (spacing * (np.array(size) - 1) / 2.0) + np.array([2.0, -1.0, 1.5])
        grid = sitk.Image(size, sitk.sitkFloat32)
        grid.SetSpacing(spacing.tolist())
        grid.SetDirection(direction.ravel().tolist())
        grid.SetOrigin(origin.tolist())
        moving = sitk.Resample(moving_r, grid, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        result = register_torch(fixed, moving, self._params(stages=["rigid"]), seed=5)
        err = accuracy.transform_error(result.transform, truth, fixed, mask)
        self.assertLess(err["mean"], 1.0, err)
        # the SimpleITK transform reproduces torch's own resampling of the moving image
        by_sitk = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, result.transform, sitk.sitkLinear, 0.0,
                                                       sitk.sitkFloat32))
        by_torch = sitk.GetArrayFromImage(resample_torch(moving, fixed, result.transform, device="cpu"))
        scale = float(np.abs(by_sitk).max())
        self.assertLess(float(np.abs(by_sitk - by_torch).max()), 1e-3 * scale)

    def test_known_smooth_deformation_reduced_and_invertible(self) -> None:
        from MultimodalFusionLib.registration.torch_backend import register_torch, resample_torch

        case = accuracy.bspline_case(spacing_mm=3, magnitude_mm=5.0, tissues=self.tissues)
        before = case.error_before()["mean"]
        mask = sitk.BinaryDilate(case.mask, [2, 2, 2])
        result = register_torch(case.fixed, case.moving, self._params(**_DEFORMABLE_TEST), fixed_mask=mask,
                                seed=1)
        after = case.error(result.transform)["mean"]
        self.assertLess(after, 0.3 * before, (before, after))   # at least 70% of the error removed
        self.assertIsInstance(result.transform, sitk.CompositeTransform)
        self.assertTrue(result.is_deformable)
        self.assertEqual([s.name for s in result.stages], ["affine", "deformable"])
        # no folding: Jacobian determinant of the exported displacement field > 0 everywhere
        field_tx = sitk.DisplacementFieldTransform(result.transform.GetNthTransform(1))
        field = field_tx.GetDisplacementField()
        self.assertEqual(field.GetSize(), case.fixed.GetSize())
        jac = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field))
        self.assertGreater(float(jac.min()), 0.0)
        # SimpleITK resampling with the composite equals torch's resampling of the same transform
        by_sitk = sitk.GetArrayFromImage(sitk.Resample(case.moving, case.fixed, result.transform, sitk.sitkLinear,
                                                       0.0, sitk.sitkFloat32))
        by_torch = sitk.GetArrayFromImage(resample_torch(case.moving, case.fixed, result.transform, device="cpu"))
        self.assertLess(float(np.abs(by_sitk - by_torch).max()), 1e-3 * float(np.abs(by_sitk).max()))

    def test_same_seed_same_result(self) -> None:
        from MultimodalFusionLib.registration.torch_backend import register_torch

        case = accuracy.rigid_case(spacing_mm=3, tissues=self.tissues)
        params = self._params(stages=["affine", "deformable"], linear_iterations=[20, 10, 5],
                              deformable_level_spacing_mm=[6.0], deformable_iterations=[8])
        a = register_torch(case.fixed, case.moving, params, seed=11)
        b = register_torch(case.fixed, case.moving, params, seed=11)
        self.assertEqual(a.transform.GetNthTransform(0).GetParameters(), b.transform.GetNthTransform(0).GetParameters())
        fa = sitk.GetArrayFromImage(sitk.DisplacementFieldTransform(a.transform.GetNthTransform(1)).GetDisplacementField())
        fb = sitk.GetArrayFromImage(sitk.DisplacementFieldTransform(b.transform.GetNthTransform(1)).GetDisplacementField())
        self.assertTrue(np.array_equal(fa, fb))
        self.assertGreater(float(np.abs(fa).max()), 0.0)
        self.assertEqual(a.parameters["seed"], 11)

    def test_seed_does_not_touch_the_global_torch_generator(self) -> None:
        from MultimodalFusionLib.registration.torch_backend import register_torch

        fixed, moving = _brainweb_pair()
        params = self._params(stages=["rigid"], linear_iterations=[10, 5, 5])
        results = []
        for caller_seed in (123, 456):  # the caller's own random stream, before and after
            torch.manual_seed(caller_seed)
            state = torch.get_rng_state()
            results.append(register_torch(fixed, moving, params, seed=3).transform.GetParameters())
            self.assertTrue(torch.equal(torch.get_rng_state(), state), "the registration reseeded torch")
        # and the result depends on its own seed only, not on the state it found
        self.assertEqual(results[0], results[1])

    def test_register_torch_called_directly_takes_the_one_seed_rule(self) -> None:
        """register_torch is public, and its seed= had been taken through int(): 1.5 and True ran as seed 1,
        2^40 ran (torch takes 64-bit seeds) where register(), the settings and the SimpleITK backend refuse it."""
        from MultimodalFusionLib.registration import MAX_SEED
        from MultimodalFusionLib.registration.torch_backend import register_torch

        fixed, moving = _brainweb_pair()
        params = self._params(stages=["rigid"], linear_iterations=[2, 2, 2])
        for seed in (1.5, True, "1", -1, MAX_SEED + 1, 2**40):
            with self.subTest(seed=seed), self.assertRaisesRegex(InputError, "seed must be a whole number from 0 "
                                                                             "to 2147483646"):
                register_torch(fixed, moving, params, seed=seed)
        self.assertEqual(register_torch(fixed, moving, params, seed=float(MAX_SEED)).parameters["seed"], MAX_SEED)

    def test_2d_rigid_through_register_and_cancellation(self) -> None:
        from MultimodalFusionLib import registration

        fixed, moving = _brainweb_pair()
        result = registration.register(fixed, moving, stages=["rigid"], backend="torch", seed=2)
        self.assertEqual(result.backend, "torch")
        truth = accuracy.itk_brainweb_truth(fixed)
        err = accuracy.transform_error(result.transform, truth, fixed)
        self.assertLess(err["mean"], 1.0, err)  # pixels of 1 mm
        self.assertAlmostEqual(accuracy.rotation_angle_deg(result.transform), 10.0, delta=0.5)

        calls = []

        def stop(fraction: float, message: str) -> bool:
            calls.append(fraction)
            return len(calls) < 3

        with self.assertRaises(OperationCancelled):
            registration.register(fixed, moving, stages=["rigid"], backend="torch", progress=stop)

        # images that do not overlap as they lie: the moments initializer aligns them, as on the sitk
        # backend (the torch backend used to refuse them); the known answer moves by the shift
        far = sitk.Image(moving)
        far.SetOrigin((400.0, -300.0))
        shifted = registration.register(fixed, far, stages=["rigid"], backend="torch", seed=2)
        point = (90.0, 100.0)
        found = np.subtract(shifted.transform.TransformPoint(point), (400.0, -300.0))
        np.testing.assert_allclose(found, truth.TransformPoint(point), atol=1.5)
        with self.assertRaises(InputError):  # starting from the headers' placement, they cannot overlap
            registration.register(fixed, far, stages=["rigid"], backend="torch", initializer="none")

    def test_2d_deformable_and_device_choice(self) -> None:
        from MultimodalFusionLib.registration.torch_backend import (
            register_torch,
            resample_torch,
            select_device,
        )

        fixed, moving = _brainweb_pair()
        params = self._params(stages=["rigid", "deformable"], linear_iterations=[60, 30, 15],
                              deformable_iterations=[20, 10])
        result = register_torch(fixed, moving, params, seed=4)
        self.assertIsInstance(result.transform, sitk.CompositeTransform)
        deformable = result.stages[-1]
        self.assertEqual(deformable.name, "deformable")
        self.assertLess(deformable.metric_after, deformable.metric_before)
        field = sitk.DisplacementFieldTransform(result.transform.GetNthTransform(1)).GetDisplacementField()
        self.assertGreater(float(sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(field)).min()), 0.0)
        by_sitk = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, result.transform, sitk.sitkLinear, 0.0,
                                                       sitk.sitkFloat32))
        by_torch = sitk.GetArrayFromImage(resample_torch(moving, fixed, result.transform, device="cpu"))
        self.assertLess(float(np.abs(by_sitk - by_torch).max()), 1e-3 * float(np.abs(by_sitk).max()))
        # device "auto" is CUDA exactly when torch sees a GPU; asking for CUDA without one names the fix
        self.assertEqual(select_device("auto").type, "cuda" if torch.cuda.is_available() else "cpu")
        self.assertEqual(result.parameters["device"], "cpu")
        if not torch.cuda.is_available():
            with self.assertRaises(InputError):
                select_device("cuda")

    def test_monai_gaussian_mi_and_lncc(self) -> None:
        from MultimodalFusionLib.registration.torch_backend import register_torch

        fixed, moving = _brainweb_pair()
        params = self._params(stages=["rigid"], mi_window="gaussian", linear_samples=5000,
                              linear_iterations=[80, 40, 20])
        result = register_torch(fixed, moving, params, seed=1)
        err = accuracy.transform_error(result.transform, accuracy.itk_brainweb_truth(fixed), fixed)
        self.assertLess(err["mean"], 1.5, err)
        # one modality: the T1 slice against itself shifted by (4, -3) pixels (truth: the inverse shift),
        # LNCC in both stages
        shift = sitk.TranslationTransform(2, (4.0, -3.0))
        shifted = sitk.Resample(fixed, fixed, shift, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        params = self._params(stages=["affine", "deformable"], linear_metric="lncc", deformable_metric="lncc",
                              linear_iterations=[60, 30, 15], deformable_iterations=[10, 5])
        result = register_torch(fixed, shifted, params, seed=1)
        stage = result.stages[1]
        self.assertEqual(stage.metric_name, "lncc (torch)")
        if stage.metric_after > stage.metric_before:  # already aligned: a worse stage must be dropped, loudly
            self.assertFalse(stage.accepted)
            self.assertTrue(any("deformable" in w for w in result.warnings), result.warnings)
            self.assertIsInstance(result.transform, sitk.AffineTransform)
        inner = sitk.Cast(sitk.BinaryErode(sitk.Cast(fixed > 30, sitk.sitkUInt8), [8, 8]), sitk.sitkUInt8)
        err = accuracy.transform_error(result.transform, shift.GetInverse(), fixed, inner)
        self.assertLess(err["mean"], 1.0, err)

    def test_mind_does_not_depend_on_how_the_moving_voxels_are_stored(self) -> None:
        # the same moving image stored in another axis order (DICOMOrient does not resample): MIND
        # descriptors taken on each image's own grid gave 0.8, 8.0 and 3.2 mm; on the fixed grid, one answer
        from MultimodalFusionLib import registration

        case = accuracy.rigid_case(spacing_mm=4, tissues=data.mni152(spacing_mm=4))
        params = self._params(stages=["affine", "deformable"], linear_iterations=[60, 30, 10],
                              deformable_level_spacing_mm=[8.0, 4.0], deformable_iterations=[30, 15])
        errors = []
        for order in (None, "LPS", "SAR"):
            moving = case.moving if order is None else sitk.DICOMOrient(case.moving, order)
            result = registration.register(case.fixed, moving, params, backend="torch", seed=1)
            errors.append(case.error(result.transform)["mean"])
            self.assertLessEqual(result.metric_after, result.metric_before + 1e-6)  # never worse than the start
        self.assertLess(max(errors) - min(errors), 0.05, errors)
        self.assertLess(max(errors), 1.5, errors)
        # the linear stage with MIND too
        linear = []
        for order in (None, "SAR"):
            moving = case.moving if order is None else sitk.DICOMOrient(case.moving, order)
            result = registration.register(case.fixed, moving,
                                           self._params(stages=["affine"], linear_metric="mind",
                                                        linear_iterations=[60, 30, 10]), backend="torch", seed=1)
            linear.append(case.error(result.transform)["mean"])
        self.assertLess(abs(linear[0] - linear[1]), 0.05, linear)

    def test_register_accepts_torch_stage_names_dicts_and_seeds_by_default(self) -> None:
        from MultimodalFusionLib import registration

        fixed, moving = _brainweb_pair()
        quick = {"stages": ["rigid"], "linear_iterations": [20, 10, 5], "device": "cpu"}
        first = registration.register(fixed, moving, dict(quick), backend="torch")  # the dict form
        again = registration.register(fixed, moving, dict(quick), backend="torch")
        # unseeded: the torch default seed 42, so two runs are the same
        self.assertEqual(first.transform.GetParameters(), again.transform.GetParameters())
        self.assertEqual(first.parameters["seed"], 42)
        # the torch stage names of the README through register() (they were refused as unknown)
        result = registration.register(fixed, moving, stages="rigid,syn", backend="torch", seed=1)
        self.assertEqual([st.name for st in result.stages], ["rigid", "deformable"])
        with self.assertRaises(InputError):
            registration.register(fixed, moving, stages=["rigid", "warp-drive"], backend="torch")

    def test_register_without_settings_runs_the_torch_defaults_not_the_sitk_stage_defaults(self) -> None:
        # register(..., backend="torch") with no settings had converted the SimpleITK defaults, whose stage's
        # histogram bins the conversion keeps: an affine first stage ran with 50 bins (the sitk class default),
        # a rigid one with 50 until the sitk rigid default took 32 (a torch result moved 0.81 -> 1.15 mm)
        from MultimodalFusionLib import registration
        from MultimodalFusionLib.registration.torch_backend import (
            TorchRegistrationParameters,
            torch_parameters,
        )

        own = TorchRegistrationParameters()
        for stages in (None, ["rigid"], ["affine"], ["affine", "bspline"], "affine,syn", ["deformable"]):
            with self.subTest(stages=stages):
                p = torch_parameters(registration.resolve_parameters(stages=stages, backend="torch"))
                self.assertEqual((p.histogram_bins, p.linear_shrink_factors, p.linear_iterations),
                                 (own.histogram_bins, own.linear_shrink_factors, own.linear_iterations))
                self.assertEqual(p.initializer, "geometry")  # register()'s start, as on the sitk backend
        fixed, moving = _brainweb_pair()
        result = registration.register(fixed, moving, stages=["affine"], backend="torch", seed=1)
        self.assertEqual(result.parameters["histogram_bins"], own.histogram_bins)
        self.assertEqual(result.parameters["stages"], ["affine"])
        # settings the user gives as SimpleITK stages (a preset, RegistrationParameters) still translate
        sitk_settings = registration.RegistrationParameters(
            stages=[registration.StageParameters(name="affine", histogram_bins=48, shrink_factors=[2, 1],
                                                 smoothing_sigmas=[1.0, 0.0])])
        p = registration.resolve_parameters(sitk_settings, backend="torch")
        self.assertEqual((torch_parameters(p).histogram_bins, torch_parameters(p).linear_shrink_factors),
                         (48, [2, 1]))

    def test_a_preset_stage_without_bins_runs_the_torch_default_and_a_clamp_is_warned(self) -> None:
        # a preset's first linear stage that leaves histogram_bins out holds the SimpleITK default of its type,
        # which the conversion carried into the torch run: --preset X --stages affine ran 50 bins (the sitk
        # affine default) where a torch run without settings runs 32; a StageParameters(name="rigid") 50 too.
        # Bins outside 8..64 were clamped without a word.
        from MultimodalFusionLib import registration
        from MultimodalFusionLib.registration.parameters import list_presets
        from MultimodalFusionLib.registration.torch_backend import (
            TorchRegistrationParameters,
            conversion_warnings,
            torch_parameters,
        )

        own = TorchRegistrationParameters().histogram_bins
        for preset in list_presets():
            for stages in (None, "affine", "affine,bspline", "rigid,affine,bspline"):
                with self.subTest(preset=preset, stages=stages):
                    p = registration.resolve_parameters(preset=preset, stages=stages, backend="torch")
                    self.assertEqual(torch_parameters(p).histogram_bins, own)
                    self.assertEqual([w for w in conversion_warnings(p) if "bins" in w], [])
        bare = registration.RegistrationParameters(stages=[registration.StageParameters(name="rigid")])
        self.assertEqual(torch_parameters(bare).histogram_bins, own)
        # bins given on purpose still translate, within 8..64, and a clamp or an unused count is said
        chosen = registration.RegistrationParameters.from_dict({"stages": [{"name": "rigid", "histogram_bins": 48}]})
        self.assertEqual(torch_parameters(chosen).histogram_bins, 48)
        for bins, used in ((4, 8), (128, 64)):
            wide = registration.RegistrationParameters.from_dict(
                {"stages": [{"name": "rigid", "histogram_bins": bins}, {"name": "affine", "histogram_bins": 40}]})
            self.assertEqual(torch_parameters(wide).histogram_bins, used)
            said = [w for w in conversion_warnings(wide) if "bins" in w]
            self.assertEqual(len(said), 2, said)
            self.assertIn(f"{bins} histogram bins are outside the 8-64", said[0])
            self.assertIn(f"runs with {used}", said[0])
            self.assertIn("the affine stage's 40 bins are not used", said[1])
        fixed, moving = _brainweb_pair()
        quick = dataclasses.replace(wide, stages=[dataclasses.replace(wide.stages[0], shrink_factors=[2],
                                                                      smoothing_sigmas=[0.0])])
        result = registration.register(fixed, moving, quick, backend="torch", seed=1)
        self.assertEqual(result.parameters["histogram_bins"], 64)
        self.assertTrue(any("128 histogram bins are outside the 8-64" in w for w in result.warnings), result.warnings)

    def test_an_explicit_50_bins_runs_50_on_the_torch_backend(self) -> None:
        # 50 given on purpose equalled SimpleITK's default (the class's, the affine stage's), which read as not
        # given: the torch run took its own 32, and a later linear stage's explicit 50 was dropped without a word
        from MultimodalFusionLib import registration
        from MultimodalFusionLib.registration.torch_backend import conversion_warnings, torch_parameters

        for stage in ({"name": "affine", "histogram_bins": 50}, {"name": "rigid", "histogram_bins": 50}):
            with self.subTest(stage=stage):
                p = registration.RegistrationParameters.from_dict({"stages": [stage]})
                self.assertEqual(torch_parameters(p).histogram_bins, 50)
                self.assertEqual([w for w in conversion_warnings(p) if "bins" in w], [])
        built = registration.RegistrationParameters(stages=[registration.StageParameters(name="affine",
                                                                                         histogram_bins=50)])
        self.assertEqual(torch_parameters(built).histogram_bins, 50)
        self.assertEqual(torch_parameters(registration.RegistrationParameters(
            stages=[registration.StageParameters(name="affine")])).histogram_bins, 32)  # left out: the torch 32
        later = registration.RegistrationParameters.from_dict(
            {"stages": [{"name": "rigid"}, {"name": "affine", "histogram_bins": 50}]})
        self.assertEqual(torch_parameters(later).histogram_bins, 32)
        self.assertEqual([w for w in conversion_warnings(later) if "bins" in w],
                         ["The torch backend runs every linear stage with one histogram bin count, the first "
                          "linear stage's (32): the affine stage's 50 bins are not used."])
        fixed, moving = _brainweb_pair()
        quick = registration.RegistrationParameters.from_dict(
            {"stages": [{"name": "affine", "histogram_bins": 50, "shrink_factors": [2], "smoothing_sigmas": [1.0]}]})
        result = registration.register(fixed, moving, quick, backend="torch", seed=1)
        self.assertEqual(result.parameters["histogram_bins"], 50)

    def test_a_later_linear_stage_whose_metric_is_not_run_is_warned(self) -> None:
        # every linear stage runs the first linear stage's metric on torch: a later stage's correlation (lncc)
        # after a mattes_mi rigid stage ran on mutual information without a word, as its bins had
        from MultimodalFusionLib import registration
        from MultimodalFusionLib.registration.torch_backend import conversion_warnings, torch_parameters

        def said(*stages: dict) -> list[str]:
            p = registration.RegistrationParameters.from_dict({"stages": list(stages)})
            return [w for w in conversion_warnings(p) if "one metric" in w]

        rigid = {"name": "rigid", "shrink_factors": [4, 2, 1], "smoothing_sigmas": [2, 1, 0]}
        self.assertEqual(said(rigid, {"name": "affine", "metric": "correlation"}),
                         ["The torch backend runs every linear stage with one metric, the first linear stage's "
                          "(mattes_mi: linear_metric mi): the affine stage's metric correlation is not used."])
        self.assertEqual(len(said(dict(rigid, metric="mean_squares"), {"name": "affine"})), 1)
        # metrics the torch backend runs alike are not warned about, nor a single stage
        self.assertEqual(said(dict(rigid, metric="correlation"), {"name": "affine", "metric": "mean_squares"}), [])
        self.assertEqual(said(rigid, {"name": "affine", "metric": "joint_histogram_mi"}), [])
        self.assertEqual(said({"name": "affine", "metric": "correlation"}), [])
        p = registration.RegistrationParameters.from_dict({"stages": [rigid, {"name": "affine",
                                                                              "metric": "correlation"}]})
        self.assertEqual(torch_parameters(p).linear_metric, "mi")  # what runs, unchanged

    def test_a_preset_stage_pyramid_the_torch_run_does_not_follow_is_warned(self) -> None:
        # a later linear stage's shrink factors and sigmas and a B-spline stage's levels were dropped by the
        # conversion without a word: pet-ct-body's affine stage asks for shrink [2, 1] and sigmas [1, 0.5], and the
        # torch run used the rigid stage's [4, 2, 1] smoothed by its [2, 1, 1]. The first linear stage's sigmas
        # are carried (linear_smoothing_sigmas): they had been warned about on every shipped preset
        from MultimodalFusionLib import registration
        from MultimodalFusionLib.registration.torch_backend import conversion_warnings

        said = conversion_warnings(registration.resolve_parameters(preset="pet-ct-body", backend="torch"))
        self.assertEqual(len(said), 1, said)
        self.assertIn("The affine stage's shrink_factors [2, 1] and smoothing_sigmas [1, 0.5] are not used on the "
                      "torch backend: every linear stage runs the first linear stage's levels, linear_shrink_factors "
                      "[4, 2, 1], smoothed by linear_smoothing_sigmas [2, 1, 1] (voxels of the finest fixed voxel",
                      said[0])
        spline = conversion_warnings(registration.resolve_parameters(preset="mr-mr-deformable", backend="torch"))
        self.assertTrue(any("The bspline stage runs as the torch backend's deformable stage" in w
                            and "shrink_factors [2, 1], smoothing_sigmas [1, 0], mesh_size 4, metric mattes_mi (it "
                            "runs mind) are not used: it runs deformable_level_spacing_mm [4, 2] (mm)" in w
                            for w in spline), spline)

        def pyramid(*stages: dict) -> list[str]:
            return [w for w in conversion_warnings(registration.RegistrationParameters.from_dict(
                {"stages": list(stages)})) if "not used on the torch backend" in w]

        # a later stage smoothing as the first (the same numbers and unit): nothing to say
        self.assertEqual(pyramid({"name": "affine"}, {"name": "rigid", "smoothing_sigmas": [2, 1, 0]}), [])
        self.assertEqual(pyramid({"name": "rigid", "shrink_factors": [8, 4, 2, 1], "smoothing_sigmas": [4, 2, 1, 0]},
                                 {"name": "affine", "shrink_factors": [8, 4, 2, 1],
                                  "smoothing_sigmas": [4, 2, 1, 0]}), [])
        # the same numbers in mm are another smoothing; a later stage's own levels are named, its sigmas with them
        self.assertEqual(pyramid({"name": "affine", "smoothing_in_mm": True}), [])  # the first: carried, in mm
        self.assertIn("affine stage's smoothing_sigmas [2, 1, 0] mm are not used",
                      pyramid({"name": "rigid", "smoothing_sigmas": [2, 1, 0]},
                              {"name": "affine", "smoothing_in_mm": True})[0])
        later = pyramid({"name": "rigid", "smoothing_sigmas": [2, 1, 0]},
                        {"name": "affine", "shrink_factors": [2, 1], "smoothing_sigmas": [1, 0]})
        self.assertEqual(len(later), 1, later)
        self.assertIn("affine stage's shrink_factors [2, 1] and smoothing_sigmas [1, 0] are not used", later[0])
        # what the user sees: the result's warnings, which mmfusion register prints
        fixed, moving = _brainweb_pair()
        quick = registration.RegistrationParameters.from_dict(
            {"stages": [{"name": "rigid", "shrink_factors": [2], "smoothing_sigmas": [0.0]},
                        {"name": "affine", "shrink_factors": [1], "smoothing_sigmas": [0.0]}]})
        result = registration.register(fixed, moving, quick, backend="torch", seed=1)
        self.assertEqual([w for w in result.warnings if "not used on the torch backend" in w],
                         [w for w in conversion_warnings(quick)])
        self.assertEqual(len(conversion_warnings(quick)), 1)  # affine: shrink [1] (the rigid stage's sigma 0 runs)

    def test_a_preset_s_smoothing_sigmas_reach_the_torch_pyramid(self) -> None:
        # the torch pyramid smoothed every linear level by half its voxel size whatever the preset asked (ct-mr-head's
        # rigid stage 4-2-0 voxels ran 2-1-0), with a warning on every shipped preset, and on a bare
        # RegistrationParameters() too (its rigid stage's 4-2-0, which the user never wrote)
        from MultimodalFusionLib import registration
        from MultimodalFusionLib.registration.parameters import list_presets
        from MultimodalFusionLib.registration.torch_backend import conversion_warnings, torch_parameters

        expected = {"ct-mr-head": [4, 2, 0], "t1-t2-brain": [4, 2, 0], "mr-mr-deformable": [4, 2, 0],
                    "mr-pet-brain": [4, 1.5, 1], "pet-ct-body": [2, 1, 1]}
        self.assertEqual(sorted(expected), list_presets())
        for preset, sigmas in expected.items():
            with self.subTest(preset=preset):
                p = torch_parameters(registration.resolve_parameters(preset=preset, backend="torch"))
                self.assertEqual((p.linear_smoothing_sigmas, p.linear_smoothing_in_mm), (sigmas, False))
                first = registration.resolve_parameters(preset=preset, backend="torch").stages[0].name
                self.assertEqual([w for w in conversion_warnings(registration.resolve_parameters(
                    preset=preset, backend="torch")) if f"The {first} stage's smoothing_sigmas" in w], [])
        for bare in (registration.RegistrationParameters(),
                     registration.RegistrationParameters().with_stages(["rigid", "bspline"])):
            self.assertEqual([w for w in conversion_warnings(bare) if "smoothing_sigmas [4, 2, 0]" in w], [])
        in_mm = registration.RegistrationParameters.from_dict(
            {"stages": [{"name": "affine", "shrink_factors": [2, 1], "smoothing_sigmas": [3, 0.5],
                         "smoothing_in_mm": True}]})
        self.assertEqual((torch_parameters(in_mm).linear_smoothing_sigmas, torch_parameters(in_mm).linear_smoothing_in_mm),
                         ([3.0, 0.5], True))
        # levels given in the stage's place without sigmas of their own run the torch rule (the stage's sigmas
        # belong to its shrink factors); sigmas given with them are kept
        self.assertIsNone(torch_parameters(in_mm, linear_shrink_factors=[4, 1]).linear_smoothing_sigmas)
        self.assertEqual(torch_parameters(in_mm, linear_shrink_factors=[4, 1],
                                          linear_smoothing_sigmas=[1, 0]).linear_smoothing_sigmas, [1, 0])
        # they reach the pyramid: what ran is recorded (mm: the BrainWeb slices' 1 mm pixels), the run is the one
        # torch settings of the same sigmas give, and another than the torch rule's
        fixed, moving = _brainweb_pair()
        preset = registration.RegistrationParameters.from_dict(
            {"stages": [{"name": "rigid", "shrink_factors": [4, 2], "smoothing_sigmas": [4.0, 0.5]}]})
        carried = registration.register(fixed, moving, preset, backend="torch", seed=1)
        self.assertEqual(carried.parameters["linear_smoothing_sigmas"], [4.0, 0.5])
        self.assertEqual(carried.parameters["effective"]["linear_level_sigmas_mm"], [4.0, 0.5])
        self.assertEqual([w for w in carried.warnings if "smoothing" in w], [])
        same = self._params(stages=["rigid"], initializer="geometry", linear_shrink_factors=[4, 2],
                            linear_iterations=[150, 80], linear_smoothing_sigmas=[4.0, 0.5])
        self.assertEqual(registration.register(fixed, moving, same, backend="torch", seed=1).transform.GetParameters(),
                         carried.transform.GetParameters())
        rule = registration.register(fixed, moving, dataclasses.replace(same, linear_smoothing_sigmas=None),
                                     backend="torch", seed=1)
        self.assertEqual(rule.parameters["effective"]["linear_level_sigmas_mm"], [2.0, 1.0])
        self.assertNotEqual(rule.transform.GetParameters(), carried.transform.GetParameters())

    def test_stages_that_stages_adds_are_not_warned_about_as_a_preset_s_own(self) -> None:
        # --preset ct-mr-head --stages rigid,deformable warned that the B-spline stage's shrink_factors [2, 1],
        # smoothing_sigmas [1, 0], mesh_size 4 and metric mattes_mi were not used on torch, and --stages rigid,affine
        # that the affine stage's smoothing_sigmas [2, 1, 0] were not: settings of a stage the preset does not list,
        # which with_stages adds with its type's defaults and nobody wrote. A preset's own stages are still warned
        from MultimodalFusionLib import registration
        from MultimodalFusionLib.registration.torch_backend import conversion_warnings

        def said(preset: Any, stages: str) -> list[str]:
            if isinstance(preset, str):
                return conversion_warnings(registration.resolve_parameters(preset=preset, stages=stages,
                                                                           backend="torch"))
            return conversion_warnings(registration.resolve_parameters(preset, stages=stages, backend="torch"))

        for stages in ("rigid,deformable", "rigid,affine", "rigid,affine,deformable", "deformable", "affine"):
            with self.subTest(stages=stages):
                self.assertEqual(said("ct-mr-head", stages), [])
        own = said("mr-mr-deformable", "rigid,affine,deformable")  # its affine and bspline stages are its own
        self.assertEqual(len(own), 2, own)
        self.assertIn("The affine stage's smoothing_sigmas [2, 1, 0] are not used", own[0])
        self.assertIn("The bspline stage runs as the torch backend's deformable stage", own[1])
        self.assertEqual(len(said("pet-ct-body", "rigid,affine,deformable")), 1)  # its affine stage; not the bspline
        # an added later stage's metric is its type's default, not the user's either
        mine = registration.RegistrationParameters.from_dict({"stages": [{"name": "rigid", "metric": "correlation"}]})
        self.assertEqual(said(mine, "rigid,affine"), [])
        self.assertTrue(any("metric mattes_mi is not used" in w for w in conversion_warnings(
            registration.RegistrationParameters.from_dict(
                {"stages": [{"name": "rigid", "metric": "correlation"}, {"name": "affine"}]}))))
        # the record survives a second with_stages, is not saved with the settings and is no preset key
        twice = registration.load_preset("ct-mr-head").with_stages(["rigid", "bspline"]).with_stages(
            ["bspline", "rigid", "affine"])
        self.assertEqual(twice.added_stages, (0, 2))
        self.assertNotIn("added_stages", twice.to_dict())
        with self.assertRaises(InputError):
            registration.RegistrationParameters.from_dict({"stages": ["rigid"], "added_stages": [0]})

    def test_linear_smoothing_sigmas_that_grow_are_warned_as_on_simpleitk(self) -> None:
        # the SimpleITK backend warns when a stage's sigmas grow from one level to the next (the stage ends smoothed);
        # on torch linear_smoothing_sigmas [0, 1, 2], or a preset's [0, 1, 2] carried into them, ran without a word
        from MultimodalFusionLib import registration
        from MultimodalFusionLib.registration.parameters import list_presets
        from MultimodalFusionLib.registration.torch_backend import _level_order_warnings, torch_parameters

        def order(**settings: Any) -> list[str]:
            return _level_order_warnings(self._params(**{"stages": ["rigid"], **settings}), 1.0)

        grown = order(linear_smoothing_sigmas=[0, 1, 2])
        self.assertEqual(grown, ["linear_smoothing_sigmas [0, 1, 2] grow from one level to the next "
                                 "(linear_shrink_factors [4, 2, 1]): the levels run in the order given, so the linear "
                                 "stages end smoothed by sigma 2 voxels at shrink factor 1, not at their least (sigma "
                                 "0 voxels). Pyramid levels are usually given coarse to fine, e.g. "
                                 "linear_shrink_factors [4, 2, 1] with linear_smoothing_sigmas [2, 1, 0]."])
        self.assertIn("run a coarser level before they end at their finest (shrink factor 1, sigma 0 mm)",
                      order(linear_smoothing_sigmas=[1, 2, 0], linear_smoothing_in_mm=True)[0])
        # levels of 0 iterations are skipped; equal sigmas, the rule, coarse to fine: nothing to say
        self.assertIn("end smoothed by sigma 1 voxel at shrink factor 2",
                      order(linear_smoothing_sigmas=[0, 1, 2], linear_iterations=[3, 3, 0])[0])
        self.assertEqual(order(linear_smoothing_sigmas=[2, 0, 1], linear_iterations=[3, 3, 0]), [])
        self.assertEqual(order(linear_smoothing_sigmas=[2, 1, 1]), [])
        self.assertEqual(order(linear_smoothing_sigmas=None), [])
        self.assertEqual(order(stages=["deformable"], linear_smoothing_sigmas=[0, 1, 2]), [])
        # shrink factors that grow: their warning alone, the sigmas reordered with their levels
        both = order(linear_shrink_factors=[1, 2, 4], linear_smoothing_sigmas=[0, 1, 2])
        self.assertEqual(len(both), 1, both)
        self.assertIn("linear_shrink_factors [1, 2, 4] grow coarser", both[0])
        # a preset's sigmas are named as its stage's, in the words the SimpleITK backend uses for them
        fixed, moving = _blobs(2, 48, 0), _blobs(2, 48, 1.5)
        preset = registration.RegistrationParameters.from_dict(
            {"stages": [{"name": "rigid", "smoothing_sigmas": [0, 1, 2], "iterations": 3}]})
        on_torch = [w for w in registration.register(fixed, moving, preset, backend="torch", seed=1).warnings
                    if " grow " in w]
        on_sitk = [w for w in registration.register(fixed, moving, preset, seed=1).warnings if " grow " in w]
        self.assertEqual(len(on_torch), 1, on_torch)
        self.assertIn("The rigid stage's smoothing_sigmas [0, 1, 2] grow from one level to the next (shrink_factors "
                      "[4, 2, 1]): the torch backend runs them as its linear_smoothing_sigmas", on_torch[0])
        for words in ("smoothing_sigmas [0, 1, 2] grow from one level to the next (shrink_factors [4, 2, 1])",
                      "ends smoothed by sigma 2 voxels at shrink factor 1, not at its least (sigma 0 voxels)",
                      "e.g. shrink_factors [4, 2, 1] with smoothing_sigmas [2, 1, 0]."):
            self.assertIn(words, on_sitk[0])
            self.assertIn(words.replace("ends", "end").replace("its least", "their least"), on_torch[0])
        # sigmas given in torch settings in the stage's place are named as those
        replaced = torch_parameters(preset, linear_smoothing_sigmas=[1, 2, 0])
        self.assertIn("linear_smoothing_sigmas [1, 2, 0] grow", _level_order_warnings(replaced, 1.0, preset)[0])
        # no shipped preset warns, with or without --stages
        for name in list_presets():
            for stages in (None, "rigid", "affine", "rigid,affine,deformable"):
                with self.subTest(preset=name, stages=stages):
                    given = registration.resolve_parameters(preset=name, stages=stages, backend="torch")
                    self.assertEqual(_level_order_warnings(torch_parameters(given), 1.0, given), [])

    def test_sigmas_given_in_a_stage_s_place_are_in_the_torch_unit(self) -> None:
        # a stage's smoothing_in_mm went on after its sigmas were replaced: a preset whose rigid stage smooths in mm
        # with a torch dict giving linear_smoothing_sigmas [2, 1, 0] (voxels, as the torch settings say) ran 2 mm
        from MultimodalFusionLib import registration
        from MultimodalFusionLib.registration.torch_backend import torch_parameters

        preset = registration.RegistrationParameters.from_dict(
            {"stages": [{"name": "rigid", "smoothing_sigmas": [8, 4, 0], "smoothing_in_mm": True}]})
        self.assertTrue(torch_parameters(preset).linear_smoothing_in_mm)  # carried with its own sigmas
        preset.torch = {"linear_smoothing_sigmas": [2, 1, 0]}
        self.assertFalse(torch_parameters(preset).linear_smoothing_in_mm)
        preset.torch = {"linear_smoothing_sigmas": [2, 1, 0], "linear_smoothing_in_mm": True}
        self.assertTrue(torch_parameters(preset).linear_smoothing_in_mm)
        del preset.torch
        dropped = torch_parameters(preset, linear_smoothing_sigmas=None)
        self.assertEqual((dropped.linear_smoothing_sigmas, dropped.linear_smoothing_in_mm), (None, False))
        given = torch_parameters(preset, linear_smoothing_sigmas=[2, 1, 0])
        self.assertEqual((given.linear_smoothing_sigmas, given.linear_smoothing_in_mm), ([2, 1, 0], False))
        fixed, moving = _brainweb_pair()
        for image in (fixed, moving):
            image.SetSpacing((0.5, 0.5))  # voxels of 0.5 mm: 2 voxels is 1 mm
        result = registration.register(fixed, moving, dataclasses.replace(given, linear_iterations=[2, 2, 2]),
                                       backend="torch", seed=1)
        self.assertEqual(result.parameters["effective"]["linear_level_sigmas_mm"], [1.0, 0.5, 0.0])

    def test_the_default_torch_pyramid_is_unchanged(self) -> None:
        # linear_smoothing_sigmas None is the rule the pyramid always had (half each coarse level's voxel size,
        # the finest unsmoothed): the same transform, bit for bit, as sigmas given equal to it
        from MultimodalFusionLib import registration
        from MultimodalFusionLib.registration.torch_backend import TorchRegistrationParameters

        self.assertIsNone(TorchRegistrationParameters().linear_smoothing_sigmas)
        self.assertFalse(TorchRegistrationParameters().linear_smoothing_in_mm)
        fixed, moving = _brainweb_pair()
        default = registration.register(fixed, moving, stages=["rigid"], backend="torch", seed=1)
        self.assertIsNone(default.parameters["linear_smoothing_sigmas"])
        self.assertEqual(default.parameters["effective"]["linear_level_sigmas_mm"], [2.0, 1.0, 0.0])
        spelt = registration.register(fixed, moving, TorchRegistrationParameters(
            stages=["rigid"], initializer="geometry", linear_smoothing_sigmas=[2, 1, 0]), backend="torch", seed=1)
        self.assertEqual(spelt.transform.GetParameters(), default.transform.GetParameters())
        # a SimpleITK stage asking for the rule's sigmas runs the same too
        asked = registration.RegistrationParameters.from_dict(
            {"stages": [{"name": "rigid", "smoothing_sigmas": [2, 1, 0]}]})
        self.assertEqual(registration.register(fixed, moving, asked, backend="torch", seed=1).transform.GetParameters(),
                         default.transform.GetParameters())

    def test_bad_linear_smoothing_sigmas_are_refused(self) -> None:
        from MultimodalFusionLib import registration
        from MultimodalFusionLib.registration.torch_backend import (
            TorchRegistrationParameters,
            torch_parameters,
        )

        for sigmas in ([2, 1], [2, 1, 0, 0], [2, float("nan"), 0], [float("inf"), 1, 0], [2, -1, 0],
                       [True, 1, 0], ["2", 1, 0], 2.0, "2,1,0", []):
            with self.subTest(sigmas=sigmas), self.assertRaises(InputError) as ctx:
                TorchRegistrationParameters(linear_smoothing_sigmas=sigmas).validate()
            self.assertIn("linear_smoothing_sigmas", str(ctx.exception))
            self.assertIn("one per level of linear_shrink_factors [4, 2, 1]", ctx.exception.fix)
        with self.assertRaises(InputError):  # the dict form too
            torch_parameters({"linear_shrink_factors": [2, 1], "linear_smoothing_sigmas": [1, 0, 0]})
        with self.assertRaises(InputError) as ctx:
            TorchRegistrationParameters(linear_smoothing_in_mm="no").validate()
        self.assertIn("linear_smoothing_in_mm", str(ctx.exception))
        TorchRegistrationParameters(linear_smoothing_sigmas=[0, 0, 0], linear_smoothing_in_mm=True).validate()
        # a Gaussian wider than the whole image: ITK's is NaN from about 5e8 mm; refused before anything runs
        fixed, moving = _brainweb_pair()
        for sigmas, in_mm in (([1e9, 1, 0], False), ([1, 1, 1e4], True)):
            with self.subTest(sigmas=sigmas), self.assertRaises(InputError) as ctx:
                registration.register(fixed, moving, self._params(stages=["rigid"], linear_smoothing_sigmas=sigmas,
                                                                  linear_smoothing_in_mm=in_mm), backend="torch")
            self.assertIn("linear_smoothing_sigmas", str(ctx.exception))
            self.assertIn("wider than the whole fixed image", str(ctx.exception))

    def test_folding_from_weak_regularisation_is_warned(self) -> None:
        from MultimodalFusionLib import registration

        fixed, moving = _brainweb_pair()
        loose = self._params(stages=["rigid", "deformable"], regularisation_weight=0.0, velocity_sigma=0.5,
                             deformable_learning_rate=0.5, velocity_grid_factor=1, deformable_metric="mi")
        result = registration.register(fixed, moving, loose, backend="torch", seed=1)
        self.assertTrue(any("folds in" in w for w in result.warnings), result.warnings)
        default = registration.register(fixed, moving, stages=["rigid", "deformable"], backend="torch", seed=1)
        self.assertFalse(any("folds in" in w for w in default.warnings), default.warnings)

    def test_what_ran_is_recorded(self) -> None:
        # the level grids (47 mm at 4 mm: 13 voxels; a thin axis keeps at least 4: not the shrink factors asked for) and the CPU
        # threads (same seed, device and threads: same result) were not recorded
        from MultimodalFusionLib import registration

        slab = sitk.GetImageFromArray(np.repeat(sitk.GetArrayFromImage(_blobs(2, 48, 0))[None], 6, axis=0))
        moved = sitk.GetImageFromArray(np.repeat(sitk.GetArrayFromImage(_blobs(2, 48, 1.5))[None], 6, axis=0))
        result = registration.register(slab, moved, self._params(stages=["rigid"], linear_iterations=[3, 3, 3]),
                                       backend="torch", seed=1)
        effective = result.parameters["effective"]
        self.assertEqual(result.parameters["linear_shrink_factors"], [4, 2, 1])
        self.assertEqual(effective["linear_level_sizes"], [[13, 13, 4], [25, 25, 4], [48, 48, 6]])
        self.assertEqual(effective["linear_level_sigmas_mm"], [2.0, 1.0, 0.0])  # the 1 mm voxels' rule
        self.assertEqual(effective["number_of_threads"], 1)  # setUpClass's
        self.assertNotIn("deformable_level_sizes", effective)

    def test_content_region_and_drawn_points_without_whole_level_copies(self) -> None:
        # the content's rim is grown by shifted ors on a bool mask and the drawn points are computed from their
        # indices: the same region as max-pooling a float32 copy and the same points as indexing the whole grid,
        # whose copies (0.3 + 0.3 + 0.9 + 0.75 GB) and 125-voxel max-pool (8.2 CPU s) had cost a 512x512x300 CT
        # 4.1 -> 5.7 GB peak and 35 -> 53 CPU s per rigid run (now 3.8 GB, 37 s)
        import torch.nn.functional as F

        from MultimodalFusionLib.registration.torch_backend import _dilated, _grid_points, _identity_grid

        generator = torch.Generator().manual_seed(0)
        for shape in [(7, 9), (1, 5), (3, 2, 6), (12, 11, 10)]:
            for density in (0.02, 0.3):
                with self.subTest(shape=shape, density=density):
                    mask = torch.rand((1, 1, *shape), generator=generator) < density
                    pool = F.max_pool3d if len(shape) == 3 else F.max_pool2d
                    expected = pool(mask.float(), 5, stride=1, padding=2) > 0
                    self.assertTrue(torch.equal(_dilated(mask, 2), expected))
                    index = torch.randperm(mask.numel(), generator=generator)[:17]
                    whole = _identity_grid(shape, torch.device("cpu")).reshape(-1, len(shape))
                    self.assertTrue(torch.equal(_grid_points(shape, index, torch.device("cpu")), whole[index]))

    def test_mutual_information_samples_the_content_of_a_skull_stripped_image(self) -> None:
        # a skull-stripped pair padded to a BraTS-like field of view (the brain 13% of the grid, zeros around it): the
        # 20000 samples had been drawn over the whole grid, most on the flat background, and the default rigid stage
        # ended 0.11-0.17 mm from the known answer over the brain (seeds 0-2, mean 0.13); drawn from the content and
        # a rim of two level voxels, 0.06-0.09 (mean 0.07). BraTS pat0001 at 3/2/1 mm: 0.28/0.22/0.18 ->
        # 0.14/0.12/0.10 (README)
        from MultimodalFusionLib.registration import register

        pad = [10, 10, 10]
        tissues = {k: sitk.ConstantPad(v, pad, pad, 0) for k, v in self.tissues.items()}
        brain = sitk.Cast(tissues["brain_mask"], sitk.sitkFloat32)
        fixed = sitk.Cast(tissues["t1"], sitk.sitkFloat32) * brain
        centre = fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()])
        truth = accuracy.rigid_transform(centre, (6.0, -4.0, 5.0), (5.0, -4.0, 3.0))
        moving = sitk.Resample(data.synthetic_contrast(tissues, "t2", seed=0) * brain, fixed, truth.GetInverse(),
                               sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        errors = []
        for seed in range(3):
            result = register(fixed, moving, seed=seed, backend="torch")
            errors.append(accuracy.transform_error(result.transform, truth, fixed, tissues["brain_mask"])["mean"])
        self.assertLess(float(np.mean(errors)), 0.1, errors)
        effective = result.parameters["effective"]
        self.assertEqual(effective["linear_samples_from"], "content")
        self.assertEqual(effective["linear_content_rim_voxels"], 2)
        content = int(np.count_nonzero(sitk.GetArrayViewFromImage(fixed)))
        finest = effective["linear_content_voxels"][-1]
        self.assertGreater(finest, content)  # the rim of background is in
        self.assertLess(finest, 0.5 * fixed.GetNumberOfPixels())
        self.assertNotIn("linear_whole_grid_levels", effective)
        # with a fixed mask the mask is sampled, as before; an image with noise everywhere has no uniform background
        # and is sampled over its whole grid: the same draw, and the same result, as before the content rule
        masked = register(fixed, moving, seed=0, backend="torch", fixed_mask=tissues["head_mask"])
        self.assertEqual(masked.parameters["effective"]["linear_samples_from"], "fixed mask")
        noise = sitk.GetImageFromArray(np.random.default_rng(0).uniform(1, 5, fixed.GetSize()[::-1]).astype(np.float32))
        noise.CopyInformation(fixed)
        noisy = fixed + noise
        whole = register(noisy, moving, seed=0, backend="torch")
        self.assertEqual(whole.parameters["effective"]["linear_samples_from"], "whole grid")
        self.assertNotIn("linear_content_voxels", whole.parameters["effective"])

    def test_bad_parameter_values_are_input_errors(self) -> None:
        from MultimodalFusionLib.registration.torch_backend import TorchRegistrationParameters

        cases = {"deformable_samples": -1, "lncc_kernel": 4, "mind_radius": -1, "mind_dilation": 0,
                 "histogram_bins": 100000, "seed": "abc", "velocity_grid_factor": 0, "linear_samples": -5,
                 "velocity_sigma": float("nan"), "regularisation_weight": float("nan"),
                 "linear_learning_rate": float("inf"), "linear_iterations": ["x", 1, 1],
                 "deformable_level_spacing_mm": [float("nan"), 2.0], "stages": "affine"}
        for field, value in cases.items():
            with self.subTest(field=field), self.assertRaises(InputError) as ctx:
                TorchRegistrationParameters(**{field: value}).validate()
            self.assertIn("Fix:", str(ctx.exception))
        with self.assertRaises(InputError):  # beyond torch's 64-bit seeds: a ValueError traceback before
            TorchRegistrationParameters(seed=2**64).validate()
        # a velocity smoothing of 1e9 voxels had asked torch's allocator for 24 GB (a RuntimeError from inside
        # torch), 1e300 overflowed in torch.arange; the range is named
        for sigma in (1e9, 1e300, 50.5):
            with self.subTest(velocity_sigma=sigma), self.assertRaises(InputError) as ctx:
                TorchRegistrationParameters(velocity_sigma=sigma).validate()
            self.assertIn("from 0 to 50 voxels", str(ctx.exception))
        TorchRegistrationParameters(velocity_sigma=50).validate()

    def test_a_deformable_stage_without_iterations_is_refused_and_a_linear_one_keeps_its_start(self) -> None:
        # deformable_iterations [0] (every level 0) had run no iteration and returned a zero displacement field,
        # accepted without a word; negative, fractional, infinite or boolean counts are refused by name (an
        # infinite one had ended in an OverflowError traceback, True had counted as 1 iteration)
        from MultimodalFusionLib import registration
        from MultimodalFusionLib.registration.torch_backend import TorchRegistrationParameters

        fixed, moving = _blobs(2, 48, 0), _blobs(2, 48, 1.5)
        for iters in ([0], [0, 0]):
            spacing = [4.0, 2.0][:len(iters)]
            with self.subTest(iterations=iters), self.assertRaises(InputError) as ctx:
                registration.register(fixed, moving, self._params(stages=["rigid", "deformable"],
                                                                  linear_iterations=[5, 5, 5],
                                                                  deformable_level_spacing_mm=spacing,
                                                                  deformable_iterations=iters),
                                      backend="torch", seed=1)
            self.assertIn(f"deformable_iterations {iters!r} run no iteration", str(ctx.exception))
            self.assertIn("leave 'deformable' out of stages", str(ctx.exception))
        TorchRegistrationParameters(deformable_iterations=[0, 50]).validate()   # a level skipped: fine
        TorchRegistrationParameters(stages=["affine"], deformable_iterations=[0, 0]).validate()  # not run
        for field, value in (("deformable_iterations", [-1, 50]), ("deformable_iterations", [1.5, 50]),
                             ("deformable_iterations", [float("inf"), 50]), ("deformable_iterations", [True, 50]),
                             ("deformable_iterations", ["3", 50]), ("linear_iterations", [10, -2, 5]),
                             ("linear_shrink_factors", [4, 1.5, 1]), ("linear_shrink_factors", [0.5, 0.5, 1]),
                             ("deformable_level_spacing_mm", [4.0, 0.0]), ("deformable_level_spacing_mm", [4.0, True])):
            with self.subTest(**{field: value}), self.assertRaises(InputError) as ctx:
                TorchRegistrationParameters(**{field: value}).validate()
            self.assertIn(f"invalid {field} ", str(ctx.exception))
        # linear_iterations [0] keeps the start on purpose (the initializer alone), and the result says so
        start = registration.register(fixed, moving, self._params(stages=["rigid"], linear_iterations=[0, 0, 0]),
                                      backend="torch", seed=1)
        self.assertEqual(start.stages[0].iterations, 0)
        self.assertIn("no iterations (linear_iterations are all 0)", start.stages[0].stop_reason)

    def test_pyramid_levels_coarser_than_the_image_are_refused_up_front(self) -> None:
        # deformable_level_spacing_mm [1e9] had ended in "non-finite metric ... lower deformable_learning_rate"
        # (ITK's Gaussian is NaN at sigma 5e8 mm), linear_shrink_factors [1e9] in a torch RuntimeError (an index
        # out of bounds), a 100 mm level of a 47 mm image ran and was discarded
        from MultimodalFusionLib import registration

        fixed, moving = _blobs(2, 48, 0), _blobs(2, 48, 1.5)
        cases = ((dict(stages=["rigid", "deformable"], linear_iterations=[5, 5, 5],
                       deformable_level_spacing_mm=[1e9, 2.0]), "deformable_level_spacing_mm [1e+09, 2]"),
                 (dict(stages=["rigid", "deformable"], linear_iterations=[5, 5, 5],
                       deformable_level_spacing_mm=[100.0, 2.0]), "deformable_level_spacing_mm [100, 2]"),
                 (dict(stages=["rigid"], linear_shrink_factors=[10**9], linear_iterations=[5]),
                  "linear_shrink_factors [1e+09]"),
                 (dict(stages=["affine"], linear_shrink_factors=[49, 1], linear_iterations=[5, 5]),
                  "linear_shrink_factors [49, 1]"))
        for settings, named in cases:
            with self.subTest(**settings), self.assertRaises(InputError) as ctx:
                registration.register(fixed, moving, self._params(**settings), backend="torch", seed=1)
            self.assertIn(named, str(ctx.exception))
            self.assertIn("coarser than the whole fixed image (48x48 voxels, 48 mm across", str(ctx.exception))
        # a level as coarse as the image is not refused (it keeps 4 voxels): 48 mm, shrink 48
        registration.register(fixed, moving, self._params(stages=["rigid"], linear_shrink_factors=[48, 1],
                                                          linear_iterations=[2, 2]), backend="torch", seed=1)

    def test_levels_given_fine_to_coarse_run_as_given_with_a_warning(self) -> None:
        # deformable_level_spacing_mm [2, 4] ended the field on the 4 mm grid, linear_shrink_factors [1, 2, 4] the
        # linear stage at shrink 4, without a word (MNI152 at 2 mm: affine 0.17 -> 1.01 mm mean error, the
        # deformable case 0.67 -> 1.67 mm); ANTs and ITK take any order, so they still run as given
        from MultimodalFusionLib import registration

        fixed, moving = _blobs(2, 48, 0), _blobs(2, 48, 1.5)
        quick = dict(stages=["rigid", "deformable"], linear_iterations=[3, 3, 3], deformable_iterations=[3, 3])

        def warnings(**settings: Any) -> list[str]:
            result = registration.register(fixed, moving, self._params(**{**quick, **settings}), backend="torch",
                                           seed=1)
            return [w for w in result.warnings if "grow coarser" in w]

        grown = warnings(linear_shrink_factors=[1, 2, 4], deformable_level_spacing_mm=[2.0, 4.0])
        self.assertEqual(len(grown), 2, grown)
        self.assertIn("linear_shrink_factors [1, 2, 4] grow coarser from one level to the next", grown[0])
        self.assertIn("end at shrink factor 4, not at the finest that runs (1)", grown[0])
        self.assertIn("coarse to fine, e.g. [4, 2, 1]", grown[0])
        self.assertIn("deformable_level_spacing_mm [2, 4] grow coarser", grown[1])
        self.assertIn("ends on the 4 mm level's grid, not the finest (2 mm)", grown[1])
        self.assertIn("coarse to fine, e.g. [4, 2]", grown[1])
        # coarse to fine, levels that merge at the fixed voxel (0.5 and 1 mm on a 1 mm image both run at 1 mm),
        # a repeated level, or levels of a stage that does not run: no warning
        self.assertEqual(warnings(linear_shrink_factors=[4, 2, 1], deformable_level_spacing_mm=[4.0, 2.0]), [])
        self.assertEqual(warnings(linear_shrink_factors=[2, 2, 1], deformable_level_spacing_mm=[0.5, 1.0]), [])
        self.assertEqual(warnings(stages=["rigid"], deformable_level_spacing_mm=[2.0, 4.0]), [])
        self.assertEqual(warnings(stages=["deformable"], linear_shrink_factors=[1, 2, 4]), [])
        # a linear level of 0 iterations is skipped: [4, 1, 2] with [3, 3, 0] ends at 1 (had been warned as ending
        # at 2), and [1, 2, 4] with [3, 3, 0] ends at 2, not 4
        self.assertEqual(warnings(linear_shrink_factors=[4, 1, 2], linear_iterations=[3, 3, 0]), [])
        skipped = warnings(linear_shrink_factors=[1, 2, 4], linear_iterations=[3, 3, 0])
        self.assertEqual(len(skipped), 1, skipped)
        self.assertIn("[1, 2, 4] grow coarser", skipped[0])
        self.assertIn("end at shrink factor 2, not at the finest that runs (1)", skipped[0])
        # a coarser level in between that ends at the finest: said so (it had said "end at shrink factor 1, not at
        # their finest (1)")
        between = warnings(linear_shrink_factors=[2, 4, 1], deformable_level_spacing_mm=[2.0, 4.0, 1.0],
                           deformable_iterations=[3, 3, 3])
        self.assertEqual(len(between), 2, between)
        self.assertIn("the linear stages run a coarser level before they end at their finest (shrink factor 1)",
                      between[0])
        self.assertIn("the deformable stage runs a coarser level before it ends on the finest grid (1 mm)", between[1])
        self.assertTrue(all("not at their finest" not in w and "not the finest" not in w for w in between), between)
        # both edits at once: a coarser level in between, and the finest listed level (1) of 0 iterations, skipped:
        # the stage ends at the finest that runs, 2 (it had said "end at their finest (shrink factor 2)", a 1 listed)
        merged = warnings(stages=["rigid"], linear_shrink_factors=[4, 8, 2, 1], linear_iterations=[3, 3, 3, 0])
        self.assertEqual(len(merged), 1, merged)
        self.assertIn("run a coarser level before they end at the finest that runs (shrink factor 2)", merged[0])
        self.assertNotIn("their finest", merged[0])
        # a deformable level of 0 iterations before the first that iterates leaves the zero field zero: [1, 4, 2] mm
        # with [0, 3, 3] runs as [4, 2] mm (had been warned as ending off its 1 mm level); one after it still counts
        # (the field is carried onto its grid): [1, 2, 4, 2] mm with [0, 3, 3, 3] runs a 4 mm level in between
        self.assertEqual(warnings(deformable_level_spacing_mm=[1.0, 4.0, 2.0], deformable_iterations=[0, 3, 3]), [])
        later = warnings(deformable_level_spacing_mm=[1.0, 2.0, 4.0, 2.0], deformable_iterations=[0, 3, 3, 3])
        self.assertEqual(len(later), 1, later)
        self.assertIn("runs a coarser level before it ends on the finest grid that runs (2 mm)", later[0])
        kept = warnings(deformable_level_spacing_mm=[4.0, 2.0, 8.0], deformable_iterations=[3, 3, 0])
        self.assertEqual(len(kept), 1, kept)
        self.assertIn("ends on the 8 mm level's grid, not the finest (2 mm)", kept[0])

    def test_the_level_order_warning_names_what_the_user_gave_and_keeps_iterations_with_their_levels(self) -> None:
        # a SimpleITK preset's shrink factors given fine to coarse were warned about as "linear_shrink_factors",
        # a setting the preset does not have, and the suggested order left each level's iterations (or sigmas)
        # where they were: [1, 2, 4] with [3, 2, 1] became "e.g. [4, 2, 1]", which runs 3 iterations at shrink 4
        from MultimodalFusionLib import registration

        fixed, moving = _blobs(2, 48, 0), _blobs(2, 48, 1.5)

        def warnings(settings: Any) -> list[str]:
            result = registration.register(fixed, moving, settings, backend="torch", seed=1)
            return [w for w in result.warnings if "grow coarser" in w]

        torch_named = warnings(self._params(stages=["rigid", "deformable"], linear_shrink_factors=[1, 2, 4],
                                            linear_iterations=[3, 2, 1], deformable_level_spacing_mm=[2.0, 4.0],
                                            deformable_iterations=[3, 1]))
        self.assertEqual(len(torch_named), 2, torch_named)
        self.assertIn("linear_shrink_factors [1, 2, 4] grow coarser", torch_named[0])
        self.assertIn("coarse to fine, e.g. [4, 2, 1] with linear_iterations [1, 2, 3].", torch_named[0])
        self.assertIn("coarse to fine, e.g. [4, 2] with deformable_iterations [1, 3].", torch_named[1])
        preset = registration.RegistrationParameters.from_dict(
            {"stages": [{"name": "rigid", "shrink_factors": [1, 2, 4], "smoothing_sigmas": [0, 1, 2]}]})
        preset_named = warnings(preset)
        self.assertEqual(len(preset_named), 1, preset_named)
        self.assertIn("The rigid stage's shrink_factors [1, 2, 4] grow coarser from one level to the next: the torch "
                      "backend runs them as its linear_shrink_factors, in the order given, so the linear stages end at "
                      "shrink factor 4, not at the finest that runs (1)", preset_named[0])
        self.assertIn("e.g. shrink_factors [4, 2, 1] with smoothing_sigmas [2, 1, 0].", preset_named[0])
        # torch settings' own sigmas go with their levels too
        from MultimodalFusionLib.registration.torch_backend import _level_order_warnings

        sigma_named = _level_order_warnings(self._params(stages=["rigid"], linear_shrink_factors=[1, 2, 4],
                                                         linear_iterations=[3, 2, 1],
                                                         linear_smoothing_sigmas=[0, 1, 3]), 1.0)
        self.assertIn("e.g. [4, 2, 1] with linear_iterations [1, 2, 3] and linear_smoothing_sigmas [3, 1, 0].",
                      sigma_named[0])

    def test_a_skipped_linear_level_changes_nothing_after_it(self) -> None:
        # a linear level of 0 iterations still halved the Adam step of every level after it (and drew a sample):
        # [0, 0, 40] at shrink [4, 2, 1] ran the finest level at a quarter of the step that [40] at [1] runs: on
        # MNI152 at 3 mm turned 20 degrees, rigid, 16.4-16.8 mm off where [40] at [1] ends 0.26-0.31 mm (README)
        from MultimodalFusionLib import registration

        fixed, moving = _brainweb_pair()
        for stage in ("rigid", "affine"):
            with self.subTest(stage=stage):
                skipped, left_out = (registration.register(fixed, moving, self._params(
                    stages=[stage], linear_shrink_factors=shrink, linear_iterations=iters), backend="torch", seed=1)
                    for shrink, iters in (([4, 2, 1], [0, 6, 4]), ([2, 1], [6, 4])))
                self.assertEqual(skipped.transform.GetParameters(), left_out.transform.GetParameters())
                self.assertEqual(skipped.stages[0].iterations, 10)

    def test_a_last_level_of_0_iterations_is_counted_per_level(self) -> None:
        # the levels were counted from the history alone, where a last level that ran no iteration does not
        # show: [3, 2, 0] at shrink [4, 2, 1] read "3+2 = 5" (two levels of three) where [0, 3, 2] read
        # "0+3+2 = 5"; the sitk backend counts every level (test_report: levels that ran no iteration)
        from MultimodalFusionLib import registration
        from MultimodalFusionLib.registration.result import iterations_text

        fixed, moving = _blobs(2, 48, 0), _blobs(2, 48, 1.5)
        for iters in ([3, 2, 0], [0, 3, 2], [3, 0, 2]):
            with self.subTest(linear_iterations=iters):
                stage = registration.register(fixed, moving, self._params(
                    stages=["rigid"], linear_shrink_factors=[4, 2, 1], linear_iterations=iters), backend="torch",
                    seed=1).stages[0]
                self.assertEqual(stage.level_iterations, iters)
                self.assertEqual(iterations_text(stage), "+".join(map(str, iters)) + " = 5")
        deformable = registration.register(fixed, moving, self._params(
            stages=["deformable"], deformable_level_spacing_mm=[4.0, 2.0], deformable_iterations=[2, 0]),
            backend="torch", seed=1).stages[0]
        self.assertEqual(deformable.level_iterations, [2, 0])

    def test_default_levels_run_on_tiny_and_small_field_images(self) -> None:
        # the level check measured an image from its first to its last voxel centre and took the default
        # deformable levels as chosen: a 4x4x4 image (which the backend takes) refused its default rigid stage
        # ("linear_shrink_factors [4, 2, 1] ... 3 mm across"), and a 2.35 mm wide fixed image (0.05 mm voxels)
        # the default deformable stage, which the CLI cannot change, with the fix "e.g. [4, 2]": the same refusal
        from MultimodalFusionLib import registration

        rng = np.random.default_rng(0)
        tiny = [sitk.GetImageFromArray(rng.random((4, 4, 4)).astype(np.float32)) for _ in range(2)]
        result = registration.register(*tiny, self._params(stages=["rigid"], linear_iterations=[2, 2, 2]),
                                       backend="torch", seed=1)
        self.assertEqual([s.name for s in result.stages], ["rigid"])
        small = [_blobs(2, 48, 0), _blobs(2, 48, 1.5)]
        for image in small:
            image.SetSpacing((0.05, 0.05))  # 2.4 mm across
        quick = dict(stages=["affine", "deformable"], linear_iterations=[5, 5, 5], deformable_iterations=[5, 5])
        result = registration.register(*small, self._params(**quick), backend="torch", seed=1)
        self.assertEqual([s.name for s in result.stages], ["affine", "deformable"])
        # levels the user chose are still refused there, and the fix names levels that fit and run
        with self.assertRaises(InputError) as ctx:
            registration.register(*small, self._params(deformable_level_spacing_mm=[3.0, 1.0], **quick),
                                  backend="torch", seed=1)
        self.assertIn("deformable_level_spacing_mm [3, 1]", str(ctx.exception))
        self.assertIn("e.g. [0.2, 0.1]", str(ctx.exception))
        registration.register(*small, self._params(deformable_level_spacing_mm=[0.2, 0.1], **quick),
                              backend="torch", seed=1)

    def test_bad_inputs_name_the_fix(self) -> None:
        from MultimodalFusionLib.registration.torch_backend import register_torch, torch_parameters

        fixed, moving = _brainweb_pair()
        bad_mask = sitk.Image([5, 5], sitk.sitkUInt8)
        with self.assertRaises(InputError):
            register_torch(fixed, moving, self._params(stages=["rigid"]), fixed_mask=bad_mask)
        with self.assertRaises(InputError):
            torch_parameters({"stages": ["warp-drive"]})
        with self.assertRaises(InputError):
            torch_parameters({"no_such_setting": 1})
        with self.assertRaises(InputError) as ctx:  # the likely spelling, as the sitk settings name it
            torch_parameters({"linear_iteration": [5]})
        self.assertIn("'linear_iteration' (did you mean 'linear_iterations'?)", str(ctx.exception))
        # stage and metric names guess among their aliases too ('bspline', 'diffeomorphic', 'mattes_mi')
        for settings, guess in (({"stages": ["bsplin"]}, "'bspline'"), ({"stages": ["diffeomorphc"]}, "'diffeomorphic'"),
                                ({"linear_metric": "mattes"}, "'mattes_mi'")):
            with self.subTest(settings=settings), self.assertRaises(InputError) as ctx:
                torch_parameters(settings)
            self.assertIn(f"(did you mean {guess}?)", str(ctx.exception))
        bspline = sitk.BSplineTransformInitializer(fixed, [3, 3])
        with self.assertRaises(InputError):
            register_torch(fixed, moving, self._params(stages=["rigid"]), initial_transform=bspline)
        # the SimpleITK backend's parameters map onto the torch stages
        from MultimodalFusionLib.registration import RegistrationParameters

        mapped = torch_parameters(RegistrationParameters().with_stages(["rigid", "bspline"]))
        self.assertEqual(mapped.stages, ["rigid", "deformable"])

    def test_a_start_with_no_voxel_inside_the_moving_image_is_refused_as_on_the_sitk_backend(self) -> None:
        # a start that leaves no fixed voxel inside the moving image: the sitk backend refused it ("the images
        # barely overlap", ITK finding no valid point), while the torch backend, sampling zeros outside the
        # moving image, ran its stages and returned a transform from nothing without a word (2D BrainWeb
        # moved 0.4 px short of touching: 19 px moved, mutual information -0.0000 -> -0.0003)
        from MultimodalFusionLib.errors import RegistrationError
        from MultimodalFusionLib.registration import register

        fixed, moving = _brainweb_pair()
        sliver = sitk.Image(moving)
        sliver.SetOrigin((fixed.GetSize()[0] - 0.4, 0.0))  # the boxes share 0.4 px; no voxel centre within 0.5
        refusals = {}
        for backend, stages in (("sitk", ["rigid"]), ("torch", ["rigid"]), ("torch", ["deformable"])):
            messages: list[str] = []
            params = self._params(stages=stages, initializer="none", linear_iterations=[5],
                                  linear_shrink_factors=[1]) if backend == "torch" else None
            with self.subTest(backend=backend, stages=stages), self.assertRaises(RegistrationError) as ctx:
                register(fixed, sliver, params, stages=None if params else stages, backend=backend,
                         initializer="none", seed=0,
                         progress=lambda fraction, message, messages=messages: messages.append(message))
            refusals[(backend, stages[0])] = (ctx.exception.problem, ctx.exception.fix)
            self.assertFalse([m for m in messages if "level" in m], messages)  # before any stage ran
        self.assertEqual(refusals[("torch", "rigid")], refusals[("sitk", "rigid")])  # the same words
        self.assertIn("barely overlap", refusals[("torch", "rigid")][0])
        self.assertIn("Use the 'geometry' or 'moments' initializer", refusals[("torch", "rigid")][1])
        self.assertIn("Stage 'deformable': the images barely overlap", refusals[("torch", "deformable")][0])
        # a sliver that holds voxel centres is not this refusal (0.2 px short of them: 257 fixed voxels inside): with
        # every voxel sampled it registers (with the default 20000 samples, 100 or fewer land inside: the next test)
        touching = sitk.Image(moving)
        touching.SetOrigin((fixed.GetSize()[0] - 0.8, 0.0))
        register(fixed, touching, self._params(stages=["rigid"], initializer="none", linear_iterations=[5],
                                               linear_shrink_factors=[1], linear_samples=60000),
                 backend="torch", seed=0)

        # 3D, from an initial transform: its fix names the transform's direction
        rng = np.random.default_rng(3)
        cube = sitk.GetImageFromArray(rng.random((20, 20, 20)).astype(np.float32))
        apart = sitk.TranslationTransform(3, (19.6, 0.0, 0.0))
        for backend in ("sitk", "torch"):
            params = self._params(stages=["affine"], linear_iterations=[5], linear_shrink_factors=[1]) \
                if backend == "torch" else None
            with self.subTest(backend=backend, dim=3), self.assertRaises(RegistrationError) as ctx:
                register(fixed=cube, moving=cube, parameters=params, stages=None if params else ["affine"],
                         backend=backend, initial_transform=apart, seed=0)
            self.assertIn("barely overlap", ctx.exception.problem)
            self.assertIn("The initial transform places them apart", ctx.exception.fix)

    def test_mutual_information_with_100_or_fewer_samples_inside_the_moving_image_is_refused(self) -> None:
        # while 100 or fewer samples land inside the moving image, mutual information counts every sample (zeros
        # outside), a score highest for squeezing the fixed image into the few inside, and the run went on without
        # a word where ITK refuses samples that map outside: one column of the 2D BrainWeb pair inside at the
        # start (84 of 20000 samples) ended determinant 0.04, 81 px off, mutual information "improved"; three
        # columns (enough at the start) drifted apart to none inside and ended 44 px off (SimpleITK: the start)
        from MultimodalFusionLib.errors import RegistrationError
        from MultimodalFusionLib.registration import register

        fixed, moving = _brainweb_pair()
        width = fixed.GetSize()[0]
        for columns, words in ((0.8, "at the starting transform"), (3.0, "at some iterations")):
            shifted = sitk.Image(moving)
            shifted.SetOrigin((width - columns, 0.0))
            with self.subTest(columns=columns), self.assertRaises(RegistrationError) as ctx:
                register(fixed, shifted, self._params(stages=["affine"], initializer="none"), backend="torch",
                         seed=0)
            self.assertIn("Stage 'affine'", ctx.exception.problem)
            self.assertIn("too few sample points map inside the moving image", ctx.exception.problem)
            self.assertIn(words, ctx.exception.problem)
            self.assertIn("raise linear_samples (now 20000; 0 samples every voxel)", ctx.exception.fix)
        self.assertIn("drifted apart", ctx.exception.fix)  # the SimpleITK backend's fix for its refusal

    def test_a_small_moving_image_wholly_inside_the_fixed_one_is_not_refused_as_too_few_samples_inside(self) -> None:
        # a patch of the PD slice lying wholly inside the T1 slice: the floor of 100 samples inside had refused a
        # 40x40 px patch at the default pyramid's shrink-4 level (it holds 100 of that level's 3550 voxels: 99
        # inside, "drifted apart"), and a 14x14 px one with linear_samples 0 (every voxel: 196 inside), whose
        # evaluation sample had stayed 20000 voxels (66 inside, "raise linear_samples (now 0)")
        from MultimodalFusionLib.registration import register

        fixed, moving = _brainweb_pair()
        for box, kw in ((40, {}), (14, {"linear_samples": 0, "linear_shrink_factors": [1]})):
            with self.subTest(box=box):
                kw.setdefault("linear_iterations", [5] * len(kw.get("linear_shrink_factors", [4, 2, 1])))
                result = register(fixed, moving[100:100 + box, 100:100 + box],
                                  self._params(stages=["rigid"], initializer="none", **kw), backend="torch", seed=0)
                self.assertEqual(len(result.stages), 1)

    def test_the_deformable_stage_s_mutual_information_counts_only_the_points_inside_the_moving_image(self) -> None:
        # the opt-in deformable `mi` counted the points outside the moving image as zeros, as the linear stages had:
        # the 2D BrainWeb PD slice's rows 60-160 against the T1 slice, started 2.8 px off the truth, came back
        # 3.7 px off over the slice (11.6 px at most: the field squeezed the fixed slice towards the band) and 2.1
        # px in the band; the whole PD slice 1.1-1.3 px. Now 1.5 px over the slice, 1.8 px in the band
        from MultimodalFusionLib.registration import register

        fixed, moving = _brainweb_pair()
        truth = accuracy.itk_brainweb_truth(fixed)
        start = sitk.Euler2DTransform(truth)
        start.SetTranslation([truth.GetTranslation()[0] + 2.0, truth.GetTranslation()[1] - 2.0])
        result = register(fixed, moving[:, 60:160], self._params(stages=["deformable"], deformable_metric="mi"),
                          backend="torch", initial_transform=start, seed=0)
        self.assertTrue(result.stages[-1].accepted)
        self.assertLess(accuracy.transform_error(result.transform, truth, fixed)["mean"], 2.5)

    def test_mutual_information_counts_only_the_points_inside_the_moving_image(self) -> None:
        # ITK's, ANTs' and elastix' mutual information drops a fixed sample that maps outside the moving image; the
        # torch backend sampled zeros there and counted them as background, so a moving band of rows drew its
        # affine stage into squeezing the whole fixed slice into the band: the 2D BrainWeb PD slice's rows 60-160,
        # initializer none, seeds 0-1: determinant 0.55, 41 px off from a 24 px start, mutual information
        # "improved", no warning (the SimpleITK backend: determinant 0.95-1.01, 14-17 px). Now 0.7-0.8 px.
        from MultimodalFusionLib.registration import register
        from MultimodalFusionLib.registration.torch_losses import mattes_mutual_information_loss

        fixed, moving = _brainweb_pair()
        band = moving[:, 60:160]
        result = register(fixed, band, self._params(stages=["affine"], initializer="none"), backend="torch",
                          seed=0)
        matrix = np.array(result.transform.GetMatrix()).reshape(2, 2)
        self.assertGreater(np.linalg.det(matrix), 0.9)
        error = accuracy.transform_error(result.transform, accuracy.itk_brainweb_truth(fixed), fixed)["mean"]
        self.assertLess(error, 3.0)
        # the weighted Parzen histogram: all ones is the unweighted one bit for bit, 0/1 the same as indexing
        gen = torch.Generator().manual_seed(0)
        a, b = torch.rand(1, 500, generator=gen), torch.rand(1, 500, generator=gen)
        keep = torch.rand(500, generator=gen) > 0.3
        self.assertEqual(float(mattes_mutual_information_loss(a, b, 32, torch.ones(500))),
                         float(mattes_mutual_information_loss(a, b, 32)))
        self.assertAlmostEqual(float(mattes_mutual_information_loss(a, b, 32, keep.float())),
                               float(mattes_mutual_information_loss(a[:, keep], b[:, keep], 32)), places=6)

    def test_mutual_information_reads_the_edge_voxel_in_the_half_voxel_itk_counts_as_inside(self) -> None:
        # ITK counts a sample up to half a voxel beyond the moving image's outer voxel centres, and its linear
        # interpolator repeats the edge voxel there; grid_sample's zero padding had blended it with zeros (down to
        # half the edge value): a dark rim around the moving band that the affine stage matched, 0.77 and 0.72 px
        # off at seeds 0 and 1 on the band pair above; 0.35 and 0.31 px with the edge repeated
        from MultimodalFusionLib.registration import register
        from MultimodalFusionLib.registration.torch_backend import TorchRegistrationParameters, _Context

        fixed, moving = _brainweb_pair()
        band = moving[:, 60:160]
        for seed in (0, 1):
            result = register(fixed, band, self._params(stages=["affine"], initializer="none"), backend="torch",
                              seed=seed)
            error = accuracy.transform_error(result.transform, accuracy.itk_brainweb_truth(fixed), fixed)["mean"]
            self.assertLess(error, 0.5, f"seed {seed}")
        # the values themselves: a ramp along x reads its edge voxels up to half a voxel out, zero beyond
        ramp = sitk.GetImageFromArray(np.tile(np.arange(8.0, 0.0, -1.0, dtype=np.float32), (6, 1)))  # 8 x 6
        ctx = _Context(ramp, ramp, None, None, TorchRegistrationParameters(device="cpu"), 0, torch.device("cpu"))
        image = ctx.moving.tensor
        row = image[0, 0, 0].numpy()  # the normalised ramp
        half = [1.0 / 7.0, 1.0 / 5.0]  # half a voxel in normalised units (align_corners=True)
        points = torch.tensor([[-1.0 - 0.9 * half[0], 0.0], [1.0 / 7.0, 1.0 + 0.9 * half[1]],
                               [1.0 + 1.1 * half[0], 0.0], [0.0, -1.0 - 1.5 * half[1]]])
        sampled, _ = ctx.sample_for_mi(image, points)
        np.testing.assert_allclose(sampled.reshape(-1).numpy(), [row[0], row[4], 0.0, 0.0], atol=1e-6)
        self.assertGreater(row[0], 0.0)
        self.assertEqual(ctx._in_moving_buffer(points).tolist(), [True, True, False, False])

    def test_a_fixed_mask_wholly_outside_the_moving_image_is_refused_as_on_the_sitk_backend(self) -> None:
        # the fixed mask on the fixed image's left, the moving image shifted right over its right half only:
        # the sitk backend refused it (ITK found no valid point in the mask); the torch backend ran its stages
        # on zeros and returned a transform with the metric -5.9e-08 -> -5.9e-08 without a word
        from MultimodalFusionLib.registration import register

        fixed, moving = _brainweb_pair()
        moving = sitk.Image(moving)
        moving.SetOrigin((120.0, 0.0))
        mask = sitk.Image(fixed.GetSize(), sitk.sitkUInt8)
        mask.CopyInformation(fixed)
        mask[10:60, 50:150] = 1
        texts = {}
        for backend in ("sitk", "torch"):
            params = self._params(stages=["rigid"], initializer="none", linear_iterations=[5],
                                  linear_shrink_factors=[1]) if backend == "torch" else None
            with self.subTest(backend=backend), self.assertRaises(InputError) as ctx:
                register(fixed, moving, params, stages=None if params else ["rigid"], backend=backend,
                         initializer="none", fixed_mask=mask, seed=0)
            texts[backend] = str(ctx.exception)
        for text in texts.values():
            self.assertIn("metric cannot be computed at the starting transform over the fixed mask (5000 voxels)",
                          text)
        self.assertEqual(texts["torch"].split("Fix:")[1], texts["sitk"].split("Fix:")[1])  # the same fix

    def test_a_start_with_little_overlap_is_warned_about_on_both_backends(self) -> None:
        # the 2D BrainWeb pair shifted along x so that 5% of it overlaps (initializer 'none'): SimpleITK returned the
        # start unchanged (Mattes MI 0.0000 -> 0.0000) and the torch backend a transform some 200 px from the truth,
        # both without a word. The share is of the smaller image, so a slab wholly inside the other gets none
        from MultimodalFusionLib.registration import register

        fixed, moving = _brainweb_pair()
        width = fixed.GetSize()[0]
        torch_params = self._params(stages=["rigid"], initializer="none", linear_iterations=[3],
                                    linear_shrink_factors=[1])
        slab = sitk.RegionOfInterest(moving, [30, moving.GetSize()[1]], [100, 0])  # 14% of the fixed image

        def overlap_warnings(moving_image, backend):
            result = register(fixed, moving_image, torch_params if backend == "torch" else None,
                              stages=None if backend == "torch" else ["rigid"], backend=backend, initializer="none",
                              seed=0)
            return [w for w in result.warnings if "overlap in only" in w]

        texts = {}
        for backend in ("sitk", "torch"):
            with self.subTest(backend=backend):
                shifted = sitk.Image(moving)
                shifted.SetOrigin((width - 11.0, 0.0))  # 11 of 221 columns inside
                found = overlap_warnings(shifted, backend)
                self.assertEqual(len(found), 1, found)
                texts[backend] = found[0]
                self.assertIn("overlap in only 4.9% of the smaller one", found[0])  # 11 x 257 of 221 x 257
                self.assertIn("initializer 'none'", found[0])
                self.assertIn("Use the 'geometry' or 'moments' initializer", found[0])
                shifted.SetOrigin((width - 66.0, 0.0))  # 30%: none
                self.assertEqual(overlap_warnings(shifted, backend), [])
                self.assertEqual(overlap_warnings(slab, backend), [])
        self.assertEqual(texts["sitk"], texts["torch"])  # one helper, the same words

    def test_tiny_images_are_input_errors_through_register_torch(self) -> None:
        # register() refused an axis of fewer than 4 voxels, but register_torch (public) handed it to
        # ITK's recursive Gaussian, whose RuntimeError reached the user
        from MultimodalFusionLib.registration.torch_backend import register_torch

        rng = np.random.default_rng(0)
        for shape in ((3, 3), (3, 20, 20)):
            a = sitk.GetImageFromArray(rng.random(shape).astype(np.float32))
            b = sitk.GetImageFromArray(rng.random(shape).astype(np.float32))
            with self.subTest(shape=shape):
                with self.assertRaises(InputError) as ctx:
                    register_torch(a, b, self._params(stages=["rigid"]))
                self.assertIn("at least 4", str(ctx.exception))

    def test_a_small_2d_image_for_a_deformable_stage_names_the_torch_stage(self) -> None:
        # the refusal spoke of a "B-spline stage", the sitk backend's, to a torch user who asked for "deformable";
        # and it was keyed on the sitk stage name in register(): torch settings (object or dict) and
        # register_torch itself ran the deformable stage on 12x12 and discarded it
        from MultimodalFusionLib.registration import register
        from MultimodalFusionLib.registration.torch_backend import register_torch

        rng = np.random.default_rng(1)
        a, b = (sitk.GetImageFromArray(rng.random((12, 12)).astype(np.float32)) for _ in range(2))
        stages = ["affine", "deformable"]
        calls = {
            "stages": lambda progress: register(a, b, backend="torch", stages=stages, progress=progress),
            "settings": lambda progress: register(a, b, self._params(stages=stages), backend="torch",
                                                  progress=progress),
            "dict": lambda progress: register(a, b, {"stages": stages, "device": "cpu"}, backend="torch",
                                              progress=progress),
            "register_torch": lambda progress: register_torch(a, b, self._params(stages=stages), progress=progress),
        }
        for how, call in calls.items():
            messages = []
            with self.subTest(how=how), self.assertRaises(InputError) as ctx:
                call(lambda fraction, message, messages=messages: messages.append(message))
            self.assertIn("(12, 12) is too small for a deformable stage (at least 16 pixels", str(ctx.exception))
            self.assertEqual(messages, [])  # refused before the affine stage ran

    def test_device_settings_are_checked_before_running(self) -> None:
        # "mps" (or any device torch cannot use here) was accepted and failed inside torch with a
        # RuntimeError; a mixed_precision of "no" counted as True; a device of 0 silently meant "auto"
        from MultimodalFusionLib.registration.torch_backend import TorchRegistrationParameters, select_device

        for device in ("mps", "gpu", "cuda:99", 0):
            with self.subTest(device=device):
                with self.assertRaises(InputError) as ctx:
                    select_device(device)
                self.assertIn("Fix:", str(ctx.exception))
        for field, value in (("device", "mps"), ("device", 0), ("mixed_precision", "no")):
            with self.subTest(field=field, value=value), self.assertRaises(InputError):
                TorchRegistrationParameters(**{field: value}).validate()
        self.assertEqual(select_device("CPU").type, "cpu")
        if not torch.cuda.is_available():  # auto runs on the CPU; cuda names the fix
            self.assertEqual(select_device("auto").type, "cpu")
            with self.assertRaises(InputError):
                select_device("cuda:0")

    def test_a_moving_mask_excludes_a_mismatched_band_in_every_metric_2d(self) -> None:
        # the moving slice's top 100 rows show the head turned 12 degrees and moved 10 px further (a band
        # that misleads): masked out, every metric and the deformable stage must follow the rest. The
        # moving mask used to restrict only the "mi" linear metric: MIND/LNCC ended 17 px off with it
        from MultimodalFusionLib.registration.torch_backend import register_torch

        case = accuracy.itk_brainweb_band_case()
        fixed, moving, mask, truth, region = case.fixed, case.moving, case.moving_mask, case.truth, case.mask
        quick = {"linear_iterations": [60, 30, 15], "deformable_iterations": [20, 10]}
        for metric in ("mind", "lncc"):
            params = self._params(stages=["rigid"], linear_metric=metric, **quick)
            with self.subTest(metric=metric):
                unmasked = register_torch(fixed, moving, params, seed=1)
                masked = register_torch(fixed, moving, params, moving_mask=mask, seed=1)
                misled = accuracy.transform_error(unmasked.transform, truth, fixed, region)["mean"]
                found = accuracy.transform_error(masked.transform, truth, fixed, region)["mean"]
                self.assertGreater(misled, 5.0)  # the band does mislead
                self.assertLess(found, 1.0)
                self.assertFalse(any("moving mask" in w for w in masked.warnings), masked.warnings)
        # the deformable stage (MIND, sampled voxels) after a masked rigid stage
        params = self._params(stages=["rigid", "deformable"], linear_metric="mind", **quick)
        masked = register_torch(fixed, moving, params, moving_mask=mask, seed=1)
        self.assertIsInstance(masked.transform, sitk.CompositeTransform)
        err = accuracy.transform_error(masked.transform, truth, fixed, region)
        self.assertLess(err["mean"], 2.0, err)  # 11 px without the mask

    def test_a_moving_mask_excludes_a_moved_slab_3d(self) -> None:
        # MNI152 at 4 mm whose moving image's top 40% of slices show the head moved 8 degrees and 12 mm
        # further (the patient moved during the acquisition); LNCC with the slab masked out
        from MultimodalFusionLib.registration.torch_backend import register_torch

        case = accuracy.slab_motion_case(spacing_mm=4, contrast="t1", tissues=data.mni152(spacing_mm=4))
        params = self._params(stages=["affine"], linear_metric="lncc", linear_iterations=[60, 30, 10])
        misled = case.error(register_torch(case.fixed, case.moving, params, seed=1).transform)["mean"]
        found = case.error(register_torch(case.fixed, case.moving, params, moving_mask=case.moving_mask,
                                          seed=1).transform)
        self.assertGreater(misled, 2.0)  # 2.95 mm
        self.assertLess(found["mean"], 1.0, found)  # 0.56 mm (2.98 when the mask was ignored)

    def test_masked_lncc_windows_ignore_what_lies_outside_the_mask(self) -> None:
        from monai.losses import LocalNormalizedCrossCorrelationLoss

        from MultimodalFusionLib.registration.torch_losses import lncc_loss, masked_lncc

        gen = torch.Generator().manual_seed(0)
        for shape in ((1, 1, 14, 16, 15), (1, 1, 20, 18)):
            with self.subTest(dims=len(shape) - 2):
                a = torch.rand(shape, generator=gen)
                b = 0.5 * a + 0.3 * torch.rand(shape, generator=gen)
                monai_map = LocalNormalizedCrossCorrelationLoss(spatial_dims=len(shape) - 2, kernel_size=5,
                                                                reduction="none")(b, a)
                ones_map = masked_lncc(a, b, torch.ones_like(a), 5)
                inner = (slice(None), slice(None)) + (slice(2, -2),) * (len(shape) - 2)
                torch.testing.assert_close(-ones_map[inner], monai_map[inner])  # MONAI's, away from the border
                mask = torch.ones_like(a)
                mask[..., :6] = 0
                corrupted = b.clone()
                corrupted[..., :6] = 5.0 * torch.rand(corrupted[..., :6].shape, generator=gen)
                self.assertTrue(torch.equal(lncc_loss(a, b, mask, 5, window_mask=mask),
                                            lncc_loss(a, corrupted, mask, 5, window_mask=mask)))
                # without window_mask, the windows still see the corrupted columns next to the mask
                self.assertFalse(torch.equal(lncc_loss(a, b, mask, 5), lncc_loss(a, corrupted, mask, 5)))

    def test_a_thin_mask_keeps_voxels_at_every_pyramid_level(self) -> None:
        # a mask drawn on one slice of a volume (or two rows of a slice) fell between the voxel centres of the
        # coarse levels: they counted no voxel, so LNCC optimised a loss of 0 with a zero gradient, and the
        # deformable stage (levels of 4 and 2 mm on a 1 mm image) did nothing at all, without a word
        from MultimodalFusionLib.registration.torch_backend import _Context, register_torch

        for dim, n, rows in ((3, 40, [5]), (2, 96, [1, 2])):
            fixed, moving = _blobs(dim, n, 0.0), _blobs(dim, n, 2.0)
            arr = np.zeros((n,) * dim, np.uint8)
            arr[rows] = 1  # one slice (3D), two rows (2D): 1600 and 192 voxels
            mask = sitk.GetImageFromArray(arr)
            mask.CopyInformation(fixed)
            params = self._params(stages=["affine", "deformable"], linear_metric="lncc", deformable_metric="lncc",
                                  linear_iterations=[10, 10, 10], deformable_iterations=[10, 10])
            with self.subTest(dim=dim):
                ctx = _Context(fixed, moving, mask, None, params, 1, torch.device("cpu"))
                shrinks = [float(f) for f in params.linear_shrink_factors] + [
                    max(mm / ctx.base_spacing, 1.0) for mm in params.deformable_level_spacing_mm]
                for shrink in shrinks:
                    level_mask = ctx.level_images(shrink)[1]
                    self.assertGreater(int(level_mask.sum()), 0, f"shrink {shrink}: the mask vanished")
                    # what it keeps lies where the mask is: the level rows nearest to the mask's rows
                    kept = torch.nonzero(level_mask[0, 0].sum(dim=tuple(range(1, dim))))[:, 0].tolist()
                    scale = (level_mask.shape[2] - 1) / (n - 1)
                    self.assertEqual(kept, sorted({round(r * scale) for r in rows}), shrink)
                result = register_torch(fixed, moving, params, fixed_mask=mask, seed=1)
                linear, deformable = result.stages
                for stage in (linear, deformable):
                    for level in {h[0] for h in stage.history}:
                        values = [h[2] for h in stage.history if h[0] == level]
                        self.assertTrue(any(v != 0.0 for v in values), (stage.name, level, values))

    def test_lncc_is_computed_in_float32_under_bfloat16_autocast(self) -> None:
        # on CUDA the similarity runs under bfloat16 autocast (mixed_precision); on the CPU the same autocast
        # lowers the same convolutions. LNCC's variances E[x^2] - E[x]^2 lost every digit there: a 3 mm
        # MNI152 pair's loss read -4.3e6 instead of -0.73, masked LNCC maps went up to 4e10 instead of <= 1
        from MultimodalFusionLib.registration.torch_losses import lncc_loss, masked_lncc

        gen = torch.Generator().manual_seed(0)
        for shape in ((1, 1, 14, 16, 15), (1, 1, 20, 18)):
            # brain-like: a bright, smooth image with little contrast inside each window
            a = 0.6 + 0.05 * torch.rand(shape, generator=gen)
            b = 0.5 * a + 0.02 * torch.rand(shape, generator=gen)
            mask = torch.ones_like(a)
            mask[..., :5] = 0
            for label, loss in (("monai", lambda f, w, m=mask: lncc_loss(f, w, m, 5)),
                                ("window mask", lambda f, w, m=mask: lncc_loss(f, w, m, 5, window_mask=m)),
                                ("map", lambda f, w, m=mask: masked_lncc(f, w, m, 5).mean())):
                with self.subTest(dims=len(shape) - 2, lncc=label):
                    values, grads = [], []
                    for enabled in (False, True):
                        warped = b.clone().requires_grad_(True)
                        with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=enabled):
                            value = loss(a, warped)
                        value.backward()
                        values.append(value)
                        grads.append(warped.grad)
                    torch.testing.assert_close(values[1].float(), values[0], rtol=1e-5, atol=1e-6)
                    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-7)
                    self.assertEqual(values[1].dtype, torch.float32)

    def test_masked_lncc_registration_under_emulated_bfloat16_autocast_matches_float32(self) -> None:
        # the CUDA-only mixed precision path run on the CPU (the backend's autocast with device type "cpu"),
        # on the slab case of the moving-mask test: affine, LNCC with masked windows
        from MultimodalFusionLib.registration import torch_backend

        case = accuracy.slab_motion_case(spacing_mm=4, contrast="t1", tissues=data.mni152(spacing_mm=4))
        params = self._params(stages=["affine"], linear_metric="lncc", linear_iterations=[60, 30, 10])
        results = {}
        for label in ("float32", "bfloat16"):
            with _emulated_cuda_autocast(torch_backend) if label == "bfloat16" else contextlib.nullcontext():
                result = torch_backend.register_torch(case.fixed, case.moving, params, moving_mask=case.moving_mask,
                                                      seed=1)
            results[label] = (result.parameters["mixed_precision_active"], case.error(result.transform))
        self.assertEqual([results[k][0] for k in ("float32", "bfloat16")], [False, True])  # the emulation ran
        errors = {k: v[1]["mean"] for k, v in results.items()}
        self.assertLess(errors["float32"], 1.0, errors)
        # 0.58 mm in float32; 5.03 mm under bfloat16 when LNCC's window statistics were taken in bfloat16
        self.assertLess(abs(errors["bfloat16"] - errors["float32"]), 0.05, errors)

    def test_iterations_read_nothing_back_from_the_device(self) -> None:
        """What waits for a GPU, counted on the CPU per iteration: ``aten::nonzero`` (boolean-mask indexing),
        ``aten::_local_scalar_dense`` (``.item()``, ``float()``, ``int()``, ``bool()`` of a tensor) and numpy
        arrays made into tensors (a blocking host-to-device copy). Twice the iterations must not add any. They
        added 2 numpy arrays per linear iteration (``total_matrix``'s geometry, every metric) and 3 nonzero
        per deformable MI iteration over the grid with a fixed mask. (The rigid stage's ``matrix_exp`` and the
        linear MI with a moving mask still do, see README; they are not run here.)"""
        case = accuracy.itk_brainweb_band_case()
        runs = {"affine LNCC, moving mask": ({"stages": ["affine"], "linear_metric": "lncc",
                                              "linear_shrink_factors": [4]}, "linear_iterations",
                                             {"moving_mask": case.moving_mask}),
                "deformable MI over the grid, fixed mask": ({"stages": ["deformable"], "deformable_metric": "mi",
                                                             "deformable_samples": 0,
                                                             "deformable_level_spacing_mm": [8.0]},
                                                            "deformable_iterations", {"fixed_mask": case.mask})}

        def counts(settings: dict, masks: dict) -> tuple[int, int, int]:
            # from a given start: a masked first linear stage started by an initializer is checked against its
            # coarsest level without the masks and may run again (with 10 iterations here, not with 5), which
            # would count a second run, not what one iteration reads back (the next test counts that path)
            return _host_syncs(case.fixed, case.moving, self._params(**settings), seed=1,
                               initial_transform=sitk.Euler2DTransform(), **masks)[0]

        for name, (settings, iterations, masks) in runs.items():
            with self.subTest(name):
                few = counts(dict(settings, **{iterations: [5]}), masks)
                more = counts(dict(settings, **{iterations: [10]}), masks)
                self.assertEqual(few, more)

    def test_a_masked_first_stages_check_and_second_run_read_back_no_more_per_iteration(self) -> None:
        """The default masked path (the 'geometry' start, the rigid first stage checked against its coarsest level
        run without the masks, and run again from there) counted as the test above counts: twice the iterations
        must add no more than they add to the runs it is made of, each from a given start (one run, never checked):
        the masked stage's rate for the first and second runs' iterations, the unmasked stage's for the coarse
        level's. On the CPU (torch 2.13) the rigid stage's ``matrix_exp`` reads back 12 times per iteration, and
        MI with a moving mask 3 + 1 more (README): the fixed-mask run kept adds exactly 12 per iteration, as the
        given start does; the moving-mask run again 450 + 60 nonzero and 30 + 0 reads over its 30 masked and 5
        unmasked iterations, exactly its bound. The bound had been the masked rate for every iteration, the coarse
        level's too (525 and 35 there): an ``int()`` per coarse-level iteration with a moving mask (35 reads)
        passed."""
        fixed, moving, _ = accuracy.itk_brainweb_scaled_pair(3.0)
        box = np.zeros(sitk.GetArrayViewFromImage(moving).shape, np.uint8)
        h, w = box.shape
        box[int(0.2 * h):h - int(0.2 * h), int(0.2 * w):w - int(0.2 * w)] = 1
        moving_box = sitk.GetImageFromArray(box)
        moving_box.CopyInformation(moving)
        centre = [image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in image.GetSize()])
                  for image in (fixed, moving)]
        geometry = sitk.TranslationTransform(2, [m - f for f, m in zip(*centre)])

        def added(masks: dict, given: bool) -> tuple[tuple[int, int], list[int], dict]:
            """What [10, 10, 10] iterations add to [5, 5, 5]: (iterations in masked runs, in the unmasked coarse
            level), the syncs, and metrics.json's masked_start (empty from a given start)."""
            counted = []
            for iterations in ([5, 5, 5], [10, 10, 10]):
                params = self._params(stages=["rigid"], initializer="geometry", linear_iterations=iterations)
                syncs, result = _host_syncs(fixed, moving, params, seed=1, **masks,
                                            **({"initial_transform": geometry} if given else {}))
                checked = result.parameters["effective"].get("masked_start", {})
                self.assertEqual(bool(checked), not given and bool(masks), checked)
                again = bool(checked.get("used"))
                counted.append(((sum(iterations) * (2 if again else 1), iterations[0] if checked else 0), syncs,
                                checked))
            (ran0, syncs0, checked0), (ran1, syncs1, checked1) = counted
            self.assertEqual(checked0.get("used"), checked1.get("used"))  # the same runs at both counts
            return (ran1[0] - ran0[0], ran1[1] - ran0[1]), [b - a for a, b in zip(syncs0, syncs1)], checked1

        (ran, _), syncs, _ = added({}, True)
        unmasked = [n / ran for n in syncs]
        # decided by the metric, by 8-21% (kept) and 17-67% (run again), not near its 1% margin
        runs = {"fixed mask, kept": ({"fixed_mask": sitk.BinaryDilate(sitk.Cast(fixed > 30, sitk.sitkUInt8), [8, 8])},
                                     False),
                "moving mask, run again": ({"moving_mask": moving_box}, True)}
        for name, (masks, again) in runs.items():
            with self.subTest(name):
                (ran, _), syncs, _ = added(masks, True)
                masked = [n / ran for n in syncs]
                (ran_masked, ran_unmasked), syncs, checked = added(masks, False)
                self.assertEqual(checked["used"], again, checked)
                for kind, n, m, u in zip(("nonzero", "_local_scalar_dense", "numpy arrays"), syncs, masked, unmasked):
                    bound = m * ran_masked + u * ran_unmasked
                    self.assertLessEqual(n, bound + 1e-9, (kind, n, bound, (ran_masked, m), (ran_unmasked, u)))

def _host_syncs(fixed: sitk.Image, moving: sitk.Image, params: Any, **kwargs: Any) -> tuple[tuple[int, int, int], Any]:
    """What waits for a GPU in ``register_torch(fixed, moving, params, **kwargs)``, counted on the CPU: (the
    ``aten::nonzero`` calls, the ``aten::_local_scalar_dense`` calls, numpy arrays made into tensors), and the
    result."""
    from torch.profiler import ProfilerActivity, profile

    from MultimodalFusionLib.registration.torch_backend import register_torch

    as_tensor = torch.as_tensor
    arrays = [0]

    def counted(data: Any, *args: Any, **kw: Any) -> Any:
        arrays[0] += isinstance(data, np.ndarray)
        return as_tensor(data, *args, **kw)

    torch.as_tensor = counted
    try:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            result = register_torch(fixed, moving, params, **kwargs)
    finally:
        torch.as_tensor = as_tensor
    raw = getattr(prof.profiler, "kineto_results", None)
    # the events as recorded: key_averages builds their tree first, 2.6 s for 50,000 (0.05 s). Where a torch has no
    # kineto_results, key_averages counts the same, slower (forced: the masked-path test 10 s -> 49 s, 2 busy cores)
    if raw is not None:
        ops: dict[str, int] = collections.Counter(event.name() for event in raw.events())
    else:
        ops = {event.key: event.count for event in prof.key_averages()}
    return (ops.get("aten::nonzero", 0), ops.get("aten::_local_scalar_dense", 0), arrays[0]), result

def _blobs(dim: int, n: int, shift: float) -> sitk.Image:
    """A smooth random image (n voxels along each of ``dim`` axes, 1 mm) of twelve Gaussian blobs, moved by
    ``shift`` voxels along every axis (the same blobs for every shift)."""
    rng = np.random.default_rng(0)
    grids = np.meshgrid(*[np.arange(n, dtype=float)] * dim, indexing="ij")
    out = np.zeros((n,) * dim)
    for _ in range(12):
        centre, sigma, height = rng.uniform(0.25 * n, 0.75 * n, dim), rng.uniform(2, 6), rng.uniform(0.3, 1)
        out += height * np.exp(-sum((g - c - shift) ** 2 for g, c in zip(grids, centre)) / (2 * sigma * sigma))
    return sitk.GetImageFromArray(out.astype(np.float32))


@contextlib.contextmanager
def _emulated_cuda_autocast(torch_backend: Any) -> Iterator[None]:
    """The torch backend's CUDA-only bfloat16 autocast (``mixed_precision``), run on the CPU: ``_Context``
    turns ``amp`` on and its ``autocast`` gives the CPU autocast of the same dtype to the same metrics."""
    ctx_class = torch_backend._Context
    init, autocast = ctx_class.__init__, ctx_class.autocast

    def patched_init(ctx: Any, *args: Any, **kwargs: Any) -> None:
        init(ctx, *args, **kwargs)
        ctx.amp = bool(ctx.params.mixed_precision)

    def patched_autocast(ctx: Any, metric: str) -> Any:
        if ctx.amp and metric != "mi":
            return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
        return autocast(ctx, metric)

    ctx_class.__init__, ctx_class.autocast = patched_init, patched_autocast
    try:
        yield
    finally:
        ctx_class.__init__, ctx_class.autocast = init, autocast


# settings of the deformable test: a 3 mm volume, levels at 6 and 3 mm
# shorter than the defaults where it changes little: error ratio 0.240 (0.237 with linear [150, 80, 40] and
# deformable [100, 50]); each full-resolution deformable iteration costs as much as six at 6 mm
_DEFORMABLE_TEST = {"stages": ["affine", "deformable"], "linear_iterations": [60, 30, 10],
                    "deformable_level_spacing_mm": [6.0, 3.0], "deformable_iterations": [60, 25]}


if __name__ == "__main__":
    unittest.main()
