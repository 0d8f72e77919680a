"""Registration on ITK's classic 2D multimodal case, presets, seeds, progress and bad input."""

from __future__ import annotations

import dataclasses
import math
import sys
import unittest

import numpy as np
import SimpleITK as sitk

from MultimodalFusionLib.errors import InputError, OperationCancelled
from MultimodalFusionLib.registration import (
    RegistrationParameters,
    default_stage,
    list_presets,
    load_preset,
    register,
)
from MultimodalFusionLib.registration.accuracy import (
    itk_brainweb_band_case,
    itk_brainweb_pair,
    itk_brainweb_truth,
    rotation_angle_deg,
    transform_error,
)
from MultimodalFusionLib.registration.parameters import ITK_UINT_MAX


def _short_rigid_runs() -> tuple[tuple[str, object], ...]:
    """(backend, settings) of a 3-iteration rigid registration from the geometry start on each backend."""
    from MultimodalFusionLib.registration.torch_backend import TorchRegistrationParameters

    return (("sitk", RegistrationParameters(stages=[dataclasses.replace(default_stage("rigid"), iterations=3)],
                                            initializer="geometry")),
            ("torch", TorchRegistrationParameters(stages=["rigid"], linear_iterations=[3, 3, 3], device="cpu",
                                                  initializer="geometry")))


def _box_mask(image: sitk.Image, row: int, column: int, width: int) -> sitk.Image:
    """A ``width`` x ``width`` mask from (row, column) (numpy order) on a 2D ``image``'s grid."""
    arr = np.zeros(image.GetSize()[::-1], np.uint8)
    arr[row:row + width, column:column + width] = 1
    mask = sitk.GetImageFromArray(arr)
    mask.CopyInformation(image)
    return mask


class ItkBrainWebCase(unittest.TestCase):
    """Fixed T1 BrainT1SliceBorder20, moving PD BrainProtonDensitySliceR10X13Y17 (10 deg, (13, 17) px)."""

    @classmethod
    def setUpClass(cls):
        cls.fixed, cls.moving = itk_brainweb_pair()
        cls.result = register(cls.fixed, cls.moving, seed=7)

    def test_rotation_and_translation_recovered(self):
        tx = self.result.transform
        angle = rotation_angle_deg(tx)
        self.assertLess(abs(angle - 10.0), 0.5, f"angle {angle:.3f} deg")
        # translation of the recovered centred rigid transform, expressed about the image centre
        truth = itk_brainweb_truth(self.fixed)
        err = transform_error(tx, truth, self.fixed)
        self.assertLess(err["mean"], 0.5, f"mean displacement error {err['mean']:.3f} px")
        center = np.array(truth.GetCenter())
        recovered_t = np.array(tx.TransformPoint(center.tolist())) - center
        expected_t = np.array(truth.TransformPoint(center.tolist())) - center
        self.assertLess(float(np.linalg.norm(recovered_t - expected_t)), 0.5)
        # the file name's nominal (13, 17) about the centre is 1.08 px from what the pixels hold
        nominal = transform_error(tx, itk_brainweb_truth(self.fixed, nominal=True), self.fixed)
        self.assertLess(nominal["mean"], 1.6)

    def test_encoded_truth_matches_same_modality_registration(self):
        # PD -> rotated PD with mean squares over all pixels: an independent check of the truth
        from MultimodalFusionLib import data, io

        pd = io.read_image(data.testing_data_dir() / "BrainProtonDensitySliceBorder20.png", float32=True)
        stage = default_stage("rigid")
        stage.metric, stage.sampling_strategy, stage.min_step = "mean_squares", "none", 1e-4
        res = register(pd, self.moving, RegistrationParameters(stages=[stage]))
        err = transform_error(res.transform, itk_brainweb_truth(pd), pd)
        self.assertLess(err["mean"], 0.1)
        self.assertAlmostEqual(rotation_angle_deg(res.transform), 10.0, delta=0.05)

    def test_result_reports_stages(self):
        r = self.result
        self.assertEqual([s.name for s in r.stages], ["rigid"])
        s = r.stages[0]
        self.assertLess(s.metric_after, s.metric_before)
        self.assertLess(r.metric_after, r.metric_before)
        self.assertGreater(s.iterations, 5)
        self.assertTrue(s.stop_reason)
        self.assertGreater(s.seconds, 0)
        self.assertTrue(s.history)
        d = r.to_dict()
        self.assertEqual(d["transform_type"], "Euler2DTransform")
        self.assertFalse(r.is_deformable)

    def test_same_seed_bit_identical(self):
        a = register(self.fixed, self.moving, seed=7)
        np.testing.assert_array_equal(np.array(a.transform.GetParameters()),
                                      np.array(self.result.transform.GetParameters()))
        self.assertEqual(a.metric_after, self.result.metric_after)

    def test_one_seed_rule_on_both_backends_the_cli_and_the_logic(self):
        """A seed is a whole number from 0 to 2^31 - 2 on either backend, from Python, the CLI and the Logic: the
        SimpleITK backend had wrapped larger ones modulo 2^31 - 2 (seeds k and k + 2147483646 gave the same
        transform) where torch took up to 2^62, and 1.5, True and "1" had run as seed 1."""
        import contextlib
        import io as text
        import re

        from MultimodalFusionLib import cli, mrml
        from MultimodalFusionLib.registration import MAX_SEED
        from MultimodalFusionLib.slicer_logic import FusionLogic

        self.assertEqual(MAX_SEED, 2**31 - 2)
        said = re.escape("seed must be a whole number from 0 to 2147483646 (2^31 - 2)")
        scene = mrml.new_scene()
        nodes = [mrml.volume_node_from_image(sitk.JoinSeries([image] * 3), scene, name=name)
                 for image, name in ((self.fixed, "F"), (self.moving, "M"))]
        for seed in (1.5, True, "1", -1, MAX_SEED + 1, 2**62, 2**70):
            for backend, settings in _short_rigid_runs():
                with self.subTest(seed=seed, backend=backend), self.assertRaisesRegex(InputError, said):
                    register(self.fixed, self.moving, seed=seed, backend=backend)
                with self.subTest(seed=seed, backend=backend, settings=True), self.assertRaisesRegex(InputError, said):
                    dataclasses.replace(settings, seed=seed).validate()
            with self.subTest(seed=seed, logic=True), self.assertRaisesRegex(InputError, said):
                FusionLogic(scene).registerVolumes(*nodes, seed=seed)
        err = text.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(text.StringIO()):
            self.assertEqual(cli.main(["register", "f.nrrd", "m.nrrd", "-o", "out", "--seed", str(2**70)]), 2)
        self.assertRegex(err.getvalue(), said)
        # the largest seed is its own: it had run as seed 0
        top = register(self.fixed, self.moving, seed=MAX_SEED)
        zero = register(self.fixed, self.moving, seed=0)
        self.assertNotEqual(top.transform.GetParameters(), zero.transform.GetParameters())
        self.assertEqual(register(self.fixed, self.moving, seed=3.0).transform.GetParameters(),
                         register(self.fixed, self.moving, seed=3).transform.GetParameters())  # JSON's 3.0

    def test_an_empty_list_of_stages_is_refused_naming_the_stages(self):
        """--stages "" and register(stages=[]) had run the default rigid stage without a word."""
        import contextlib
        import io as text

        from MultimodalFusionLib import cli, mrml
        from MultimodalFusionLib.slicer_logic import FusionLogic

        said = "No registration stage given (an empty list of stages)."
        for stages in ([], (), "", ",", " , ", [" "]):
            for backend, names in (("sitk", "rigid, affine, bspline"), ("torch", "rigid, affine, deformable")):
                with self.subTest(stages=stages, backend=backend), self.assertRaises(InputError) as ctx:
                    register(self.fixed, self.moving, stages=stages, backend=backend)
                self.assertEqual(ctx.exception.problem, said)
                self.assertIn(f"Give at least one of {names}", ctx.exception.fix)
        scene = mrml.new_scene()
        nodes = [mrml.volume_node_from_image(sitk.JoinSeries([image] * 3), scene, name=name)
                 for image, name in ((self.fixed, "F"), (self.moving, "M"))]
        for stages in ([], ""):
            with self.subTest(stages=stages, logic=True), self.assertRaisesRegex(InputError, "No registration stage"):
                FusionLogic(scene).registerVolumes(*nodes, stages=stages)
        for command in ("register", "run"):
            err = text.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(text.StringIO()):
                self.assertEqual(cli.main([command, "f.nrrd", "m.nrrd", "-o", "out", "--stages", ""]), 2)
            self.assertIn(said, err.getvalue())

    def test_seed_zero_is_reproducible(self):
        # ITK reads a sampling seed of 0 as "seed from the wall clock"; seed=0 must still repeat
        a = register(self.fixed, self.moving, seed=0)
        b = register(self.fixed, self.moving, seed=0)
        np.testing.assert_array_equal(np.array(a.transform.GetParameters()), np.array(b.transform.GetParameters()))

    def test_seeded_result_ignores_the_itk_thread_default(self):
        # ITK's threaded metric sums vary in order even at a fixed thread count, so a seed pins one
        # thread; the process-wide default (ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS) must not matter
        saved = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
        self.addCleanup(sitk.ProcessObject.SetGlobalDefaultNumberOfThreads, saved)
        params = []
        for threads in (1, 4):
            sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
            result = register(self.fixed, self.moving, stages=["rigid", "bspline"], seed=5)
            self.assertEqual(sitk.ProcessObject.GetGlobalDefaultNumberOfThreads(), threads)  # restored
            tx = result.transform  # linear where the B-spline stage was discarded
            parts = ([tx.GetNthTransform(i) for i in range(tx.GetNumberOfTransforms())]
                     if isinstance(tx, sitk.CompositeTransform) else [tx])
            params.append([part.GetParameters() for part in parts])
        self.assertEqual(params[0], params[1])

    def test_progress_and_cancel(self):
        calls = []
        register(self.fixed, self.moving, progress=lambda f, m: calls.append((f, m)))
        self.assertGreater(len(calls), 10)
        fractions = [f for f, _ in calls]
        self.assertTrue(all(0.0 <= f <= 1.0 for f in fractions))
        self.assertEqual(fractions[-1], 1.0)

        def cancel_after_five(fraction, message, seen=[]):  # noqa: B006 - a call counter
            seen.append(1)
            return len(seen) < 5

        with self.assertRaises(OperationCancelled):
            register(self.fixed, self.moving, progress=cancel_after_five)

    def test_initial_transform_from_truth(self):
        truth = itk_brainweb_truth(self.fixed)
        res = register(self.fixed, self.moving, initial_transform=truth)
        self.assertLess(transform_error(res.transform, truth, self.fixed)["mean"], 0.5)

    def test_worse_stage_is_discarded_with_warning(self):
        # start at the answer and let the optimizer take one 40 mm step: the metric must get worse
        truth = itk_brainweb_truth(self.fixed)
        stage = default_stage("rigid")
        stage.learning_rate, stage.min_step, stage.iterations = 40.0, 1.0, 1
        stage.shrink_factors, stage.smoothing_sigmas = [1], [0.0]
        res = register(self.fixed, self.moving, RegistrationParameters(stages=[stage]), initial_transform=truth,
                       seed=5)
        self.assertFalse(res.stages[0].accepted)
        self.assertGreater(res.stages[0].metric_after, res.stages[0].metric_before)
        self.assertTrue(any("worse" in w for w in res.warnings), res.warnings)
        self.assertEqual(res.metric_after, res.metric_before)
        self.assertLess(transform_error(res.transform, truth, self.fixed)["mean"], 1e-6)



def _slab(slices: int, shift: int = 0) -> sitk.Image:
    """A ``slices`` x 64 x 64 slab (numpy order) holding a noisy box, moved ``shift`` voxels along x."""
    arr = np.zeros((slices, 64, 64), np.float32)
    arr[:, 16:48, 20:44] = 1
    arr += np.random.default_rng(0).normal(0, 0.05, arr.shape).astype(np.float32)
    return sitk.GetImageFromArray(np.roll(arr, shift, axis=2))


class EffectiveSettings(unittest.TestCase):
    def test_what_ran_is_recorded_beside_the_settings_as_given(self):
        # min_step, relaxation_factor and number_of_threads were recorded only as null (chosen from the image
        # size and the seed), and a thin slab's shrink factors as the 4-2-1 asked for, where ITK ran 1-1-1
        result = register(_slab(6), _slab(6, 2), seed=0)
        ran = result.parameters
        stage = ran["stages"][0]
        self.assertEqual((stage["shrink_factors"], stage["min_step"], stage["relaxation_factor"]), ([4, 2, 1], None, None))
        self.assertEqual(ran["number_of_threads"], None)
        self.assertEqual(stage["effective"]["shrink_factors"], [1, 1, 1])  # a quarter of 6 slices: 1
        self.assertEqual(stage["effective"]["smoothing_sigmas"], [4.0, 2.0, 0.0])
        # 24 576 voxels (under 1 M): the small volumes' optimizer defaults
        self.assertEqual((stage["effective"]["min_step"], stage["effective"]["relaxation_factor"]), (0.001, 0.8))
        self.assertEqual(ran["effective"], {"number_of_threads": 1})
        # sampling: the 3000-point floor over 24 576 voxels at every level (shrink 1)
        self.assertEqual(stage["effective"]["sampling_percentage_per_level"], [3000 / 24576] * 3)
        # without a seed: ITK's thread count, as ITK reports it
        self.assertEqual(register(_slab(6), _slab(6, 2), stages=["affine"]).parameters["effective"],
                         {"number_of_threads": sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()})
        # a B-spline stage records its control grid; lbfgsb has no min_step or relaxation
        spline = register(_slab(24), _slab(24, 1), {"stages": [{"name": "bspline", "optimizer": "lbfgsb",
                                                                "iterations": 2, "mesh_size": 2}]}, seed=0)
        effective = spline.parameters["stages"][0]["effective"]
        self.assertEqual(effective["mesh_size"], [2, 2, 2])
        self.assertNotIn("min_step", effective)
        self.assertEqual(effective["shrink_factors"], [2, 1])

    def test_histogram_bins_left_out_run_50_and_are_recorded_as_null_beside_what_ran(self):
        # histogram_bins left out is None (not given), so the torch backend can tell an explicit 50 from the
        # default; the SimpleITK backend runs it as the 50 it always had, bit for bit
        left_out = RegistrationParameters.from_dict({"stages": [{"name": "affine", "iterations": 20}]})
        self.assertIsNone(left_out.stages[0].histogram_bins)
        given = RegistrationParameters.from_dict({"stages": [{"name": "affine", "iterations": 20,
                                                              "histogram_bins": 50}]})
        fixed, moving = _slab(24), _slab(24, 1)
        default_run, given_run = (register(fixed, moving, p, seed=0) for p in (left_out, given))
        self.assertEqual(default_run.transform.GetParameters(), given_run.transform.GetParameters())
        self.assertEqual([s["histogram_bins"] for s in (default_run.parameters["stages"][0],
                                                        given_run.parameters["stages"][0])], [None, 50])
        self.assertEqual(default_run.parameters["stages"][0]["effective"]["histogram_bins"], 50)
        # a metrics.json's parameters load again as they were given (null stays null), and null is accepted
        again = RegistrationParameters.from_dict(default_run.parameters)
        self.assertIsNone(again.stages[0].histogram_bins)
        # the stage types' own choices are unchanged: rigid and B-spline 32, affine left out
        self.assertEqual([default_stage(n).histogram_bins for n in ("rigid", "affine", "bspline")], [32, None, 32])
        correlation = register(fixed, moving, {"stages": [{"name": "affine", "metric": "correlation",
                                                           "iterations": 2}]}, seed=0)
        self.assertNotIn("histogram_bins", correlation.parameters["stages"][0]["effective"])

    def test_null_bins_are_not_the_stage_types_default_and_the_message_says_what_they_run(self):
        # a rigid stage's null runs 50 bins on SimpleITK, where leaving the bins out takes the rigid type's 32;
        # the fix of a bad count had offered "null for the default", which a rigid stage's user reads as 32
        left_out, null = (RegistrationParameters.from_dict({"stages": [stage]}).stages[0]
                          for stage in ({"name": "rigid"}, {"name": "rigid", "histogram_bins": None}))
        self.assertEqual((left_out.effective_histogram_bins(), null.effective_histogram_bins()), (32, 50))
        with self.assertRaises(InputError) as caught:
            RegistrationParameters.from_dict({"stages": [{"name": "rigid", "histogram_bins": 2}]})
        self.assertIn("null for not given (50 on the SimpleITK backend, 32 on torch; leave it out for the stage "
                      "type's default: rigid and bspline 32)", caught.exception.fix)


class LevelOrderWarning(unittest.TestCase):
    """Pyramid levels given fine to coarse: ITK runs them in that order and the stage ends on its coarsest level,
    which had gone without a word (MNI152 T1 vs synthetic T2 at 2 mm, affine, seed 3: 0.61 mm mean error with
    shrink_factors [1, 2, 4] and sigmas [0, 1, 2], 0.16 mm with [4, 2, 1] and [2, 1, 0]; [1, 1, 1] with sigmas
    [0, 1, 2], or [4, 2, 1] with [0, 1, 2]: 0.58 mm). ITK takes any order, so they still run as given, with a
    warning per stage."""

    @staticmethod
    def _grown(result) -> list[str]:
        return [w for w in result.warnings if "from one level to the next" in w]

    def test_levels_that_grow_coarser_run_as_given_with_a_warning(self) -> None:
        fixed, moving = _slab(24), _slab(24, 2)  # 24 slices: shrink factors up to 6 run as given
        quick = {"iterations": 3}
        result = register(fixed, moving, {"stages": [
            {"name": "rigid", **quick, "shrink_factors": [1, 1], "smoothing_sigmas": [0, 2]},
            {"name": "affine", **quick, "shrink_factors": [1, 2, 4], "smoothing_sigmas": [0, 1, 2]}]}, seed=0)
        grown = self._grown(result)
        self.assertEqual(len(grown), 2, result.warnings)
        self.assertIn("Stage 'rigid': smoothing_sigmas [0, 2] grow from one level to the next (shrink_factors "
                      "[1, 1])", grown[0])
        self.assertIn("so the stage ends smoothed by sigma 2 voxels at shrink factor 1, not at its least (sigma 0 "
                      "voxels)", grown[0])
        self.assertIn("coarse to fine, e.g. shrink_factors [1, 1] with smoothing_sigmas [2, 0]", grown[0])
        self.assertIn("Stage 'affine': shrink_factors [1, 2, 4] grow coarser from one level to the next: the levels "
                      "run in the order given, so the stage ends at shrink factor 4, not at its finest (1)", grown[1])
        self.assertIn("coarse to fine, e.g. shrink_factors [4, 2, 1] with smoothing_sigmas [2, 1, 0]", grown[1])
        # not refused: ITK ran the levels in the order given
        self.assertEqual([s["effective"]["shrink_factors"] for s in result.parameters["stages"]], [[1, 1], [1, 2, 4]])
        self.assertEqual([len(s.level_iterations) for s in result.stages], [2, 3])

        def grown_for(stage: dict, pair=(fixed, moving), **options) -> list[str]:
            return self._grown(register(*pair, {"stages": [{**stage, **quick}]}, seed=0, **options))

        # coarse to fine, or a repeated level: no warning
        for shrink, sigmas in (([4, 2, 1], [2, 1, 0]), ([2, 2, 1], [1, 1, 0]), ([4, 2, 1], [2, 1, 1])):
            self.assertEqual(grown_for({"name": "affine", "shrink_factors": shrink, "smoothing_sigmas": sigmas}), [])
        # sigmas that grow as the shrink factor falls end smoothed too (MNI152 as above: 0.58 mm)
        smoothed = grown_for({"name": "affine", "shrink_factors": [4, 2, 1], "smoothing_sigmas": [0, 1, 2]})
        self.assertEqual(len(smoothed), 1)
        self.assertIn("smoothing_sigmas [0, 1, 2] grow from one level to the next (shrink_factors [4, 2, 1]): the "
                      "levels run in the order given, so the stage ends smoothed by sigma 2 voxels at shrink factor "
                      "1, not at its least (sigma 0 voxels)", smoothed[0])
        # compared as they run: on a 6-slice slab every factor runs as 1, so [1, 2, 4] is one grid (no word
        # with sigmas that fall) and sigmas that grow there end smoothed
        slab = (_slab(6), _slab(6, 2))
        self.assertEqual(grown_for({"name": "rigid", "shrink_factors": [1, 2, 4], "smoothing_sigmas": [2, 1, 0]},
                                   slab), [])
        smoothed = grown_for({"name": "rigid", "shrink_factors": [1, 2, 4], "smoothing_sigmas": [0, 1, 2]}, slab)
        self.assertEqual(len(smoothed), 1)
        self.assertIn("smoothing_sigmas [0, 1, 2] grow from one level to the next (shrink_factors [1, 2, 4], run "
                      "as [1, 1, 1]", smoothed[0])
        # a stage the run leaves out (stages= picks the rigid one) is not warned about
        both = RegistrationParameters.from_dict({"stages": [
            {"name": "rigid", **quick}, {"name": "affine", **quick, "shrink_factors": [1, 2, 4],
                                         "smoothing_sigmas": [0, 1, 2]}]})
        self.assertEqual(self._grown(register(fixed, moving, both, stages=["rigid"], seed=0)), [])

    def test_presets_and_defaults_never_warn(self) -> None:
        from MultimodalFusionLib.registration.sitk_backend import _level_order_warning

        stages = [default_stage(name) for name in ("rigid", "affine", "bspline")]
        stages += [stage for name in list_presets() for stage in load_preset(name).stages]
        for stage in stages:
            for cap in range(1, 9):  # as they run on images of every size (factors capped at a quarter side)
                shrink = [min(int(f), cap) for f in stage.shrink_factors]
                self.assertIsNone(_level_order_warning(stage, shrink), (stage, cap))


class DiscardedStageWarning(unittest.TestCase):
    def test_it_names_what_aligned_the_images_before_the_stage(self) -> None:
        # a first stage (or one after stages all discarded) was told "the earlier stages already aligned the
        # images", where none had run: its start did (the initializer, or the initial transform given)
        fixed, moving = itk_brainweb_pair()

        def why(result) -> list[str]:
            return [w.split("usual where ")[1] for w in result.warnings if "did not improve" in w]

        start = "the start (initializer 'geometry') already aligned"
        self.assertEqual([w.startswith(start) for w in why(register(fixed, fixed, stages=["affine"], seed=0))],
                         [True])
        both = register(fixed, fixed, stages=["rigid", "affine"], seed=0)  # an identical pair: neither kept
        self.assertEqual([s.accepted for s in both.stages], [False, False])
        self.assertEqual([w.startswith(start) for w in why(both)], [True, True])
        given = register(fixed, fixed, stages=["affine"], seed=0, initial_transform=sitk.TranslationTransform(2))
        self.assertTrue(why(given)[0].startswith("the start (the initial transform given) already aligned"))
        later = register(fixed, moving, stages=["rigid", "affine"], seed=2)  # the rigid stage kept, the affine not
        self.assertEqual([s.accepted for s in later.stages], [True, False])
        self.assertTrue(why(later)[0].startswith("the earlier stages already aligned"))

    def test_a_metric_of_about_zero_is_not_called_an_alignment(self) -> None:
        # a start that sends all but the fixed image's outer ring 400 mm away: mutual information ~1e-15, which
        # the warning had called "a small change, usual where the start already aligned the images"
        fixed, moving = itk_brainweb_pair()
        field = np.zeros(fixed.GetSize()[::-1] + (2,))
        field[1:-1, 1:-1, 0] = 400.0
        field_image = sitk.GetImageFromArray(field, isVector=True)
        field_image.CopyInformation(fixed)
        start = sitk.DisplacementFieldTransform(sitk.Cast(field_image, sitk.sitkVectorFloat64))
        result = register(fixed, moving, stages=["rigid"], seed=1, initial_transform=start)
        said = [w for w in result.warnings if "did not improve" in w]
        self.assertEqual(len(said), 1, result.warnings)
        self.assertIn("The metric is about 0 at the start (the initial transform given): the images share almost "
                      "no information there", said[0])
        self.assertNotIn("usual where", said[0])
        self.assertTrue(any("overlap in only 1.6% of the smaller one" in w for w in result.warnings), result.warnings)


class NonLinearStart(unittest.TestCase):
    """An initial transform holding a B-spline or a displacement field (e.g. an earlier rigid+bspline
    result given as --initial-transform): every stage after a B-spline start failed inside ITK
    ("ComputeJacobianWithRespectToPosition not yet implemented for BSplineTransform"), and one after a
    field on the fixed grid ended 3-4 degrees off, differently from run to run."""

    @classmethod
    def setUpClass(cls):
        cls.fixed, cls.moving = itk_brainweb_pair()
        cls.truth = itk_brainweb_truth(cls.fixed)
        # a B-spline whose coefficients are all (3, -2) px moves every point of its domain by (3, -2)
        cls.bspline = sitk.BSplineTransformInitializer(cls.fixed, [4, 4])
        n = len(cls.bspline.GetParameters()) // 2
        cls.bspline.SetParameters([3.0] * n + [-2.0] * n)

    def _check(self, start):
        results = [register(self.fixed, self.moving, initial_transform=start, seed=7) for _ in range(2)]
        for res in results:
            composite = sitk.CompositeTransform(res.transform)
            # the start itself is kept in the result, after the rigid stage's rotation of 10 degrees
            self.assertEqual(composite.GetNthTransform(0).GetName(), start.GetName())
            self.assertAlmostEqual(rotation_angle_deg(composite.GetNthTransform(1)), 10.0, delta=0.5)
            self.assertLess(transform_error(res.transform, self.truth, self.fixed)["median"], 0.5)
        # the same seed gives the same answer (ITK's field Jacobian differed from run to run by up to 0.15 px)
        self.assertEqual(*[sitk.CompositeTransform(r.transform).GetNthTransform(1).GetParameters() for r in results])

    def test_bspline_start(self):
        self._check(self.bspline)

    def test_displacement_field_start(self):
        f = self.fixed
        field = sitk.TransformToDisplacementField(self.bspline, sitk.sitkVectorFloat64, f.GetSize(), f.GetOrigin(),
                                                  f.GetSpacing(), f.GetDirection())
        self._check(sitk.DisplacementFieldTransform(field))

    def test_a_field_that_does_not_cover_the_fixed_image_gets_a_note(self):
        """Where the fixed image lies outside an initial displacement field's grid, the registration starts from
        no move. Only `mmfusion register --initial-transform` had said so: register() called from Python (and so
        the Slicer Logic) gave a half-moved start without a word. The note is among the result's warnings, once,
        naming the field by its file, by initial_transform_name, or as initial_transform; none for a field on
        the fixed grid."""
        import os
        import tempfile

        grid = np.indices((40, 36)).astype(np.float32)
        fixed = sitk.GetImageFromArray(100.0 * np.exp(-((grid[0] - 19) ** 2 + (grid[1] - 16) ** 2 / 2) / 40.0)
                                       .astype(np.float32))
        fixed.SetSpacing((1.5, 1.5))
        fixed.SetOrigin((-20.0, 10.0))

        def field_on(image):
            return sitk.TransformToDisplacementField(sitk.TranslationTransform(2, (0.6, -0.4)), sitk.sitkVectorFloat64,
                                                     image.GetSize(), image.GetOrigin(), image.GetSpacing(),
                                                     image.GetDirection())

        def half():  # (a DisplacementFieldTransform takes its image's voxels: one image each)
            return sitk.DisplacementFieldTransform(field_on(sitk.RegionOfInterest(fixed, [18, 40], [0, 0])))

        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "half1Warp.nii.gz")
            sitk.WriteImage(sitk.Cast(half().GetDisplacementField(), sitk.sitkVectorFloat32), path)
            for start, name, noted in ((sitk.DisplacementFieldTransform(field_on(fixed)), None, None),
                                       (half(), None, "initial_transform"), (half(), "half", "half"),
                                       (path, None, path)):
                with self.subTest(noted=noted):
                    named = {"initial_transform_name": name} if name else {}
                    res = register(fixed, fixed, stages=["rigid"], initial_transform=start, seed=0, **named)
                    said = [w for w in res.warnings if "does not cover" in w]
                    if noted is None:
                        self.assertEqual(said, [])
                        continue
                    self.assertEqual(len(said), 1, res.warnings)
                    self.assertIn(f"the displacement field '{noted}' does not cover 50.0% of the fixed image's voxels",
                                  said[0])
                    self.assertIn("Start from a field that covers the fixed image", said[0])
                    self.assertEqual(res.warnings[0], said[0])  # first, as the CLI printed it


class BsplineFirstStage(unittest.TestCase):
    """A B-spline first stage (``stages=["bspline"]``) starts from the initializer, as a linear first stage
    does: it had started from the headers' placement, the geometry and moments initializers ignored without
    a word, and the slice moved by 32 mm came back 32 mm off, the stage reported as accepted."""

    def test_the_initializer_places_a_bspline_first_stage(self):
        fixed = itk_brainweb_pair()[0]
        moving = sitk.Image(fixed)
        moving.SetOrigin((25.0, -20.0))  # the same slice, 32 mm away in the header
        truth = sitk.TranslationTransform(2, (25.0, -20.0))
        for initializer in ("geometry", "moments"):
            with self.subTest(initializer=initializer):
                res = register(fixed, moving, stages=["bspline"], initializer=initializer, seed=1)
                self.assertLess(transform_error(res.transform, truth, fixed)["max"], 0.5)
        # "none" is the headers' placement, as documented: the B-spline alone cannot bridge 32 mm
        res = register(fixed, moving, stages=["bspline"], initializer="none", seed=1)
        self.assertGreater(transform_error(res.transform, truth, fixed)["median"], 10.0)


class MomentsStart(unittest.TestCase):
    """The moments initializer is the images' centres of mass, whatever ran on the images before."""

    def test_centres_of_mass_as_numpy_computes_them(self):
        from MultimodalFusionLib.registration.sitk_backend import moments_start

        fixed, moving = itk_brainweb_pair()
        fixed.SetOrigin((3.0, -2.0))
        fixed.SetSpacing((0.8, 1.2))

        def com(image):
            a = sitk.GetArrayFromImage(image).astype(np.float64)
            yy, xx = np.mgrid[: a.shape[0], : a.shape[1]]
            return np.array(image.TransformContinuousIndexToPhysicalPoint(
                [float((a * xx).sum() / a.sum()), float((a * yy).sum() / a.sum())]))

        start = moments_start(fixed, moving, sitk.Euler2DTransform())
        np.testing.assert_allclose(start.GetCenter(), com(fixed), atol=1e-9)
        np.testing.assert_allclose(start.GetTranslation(), com(moving) - com(fixed), atol=1e-9)
        with self.assertRaisesRegex(InputError, "no centre of mass"):
            moments_start(fixed * 0, moving, sitk.Euler2DTransform())

    def test_a_region_of_interest_taken_earlier_does_not_move_it(self):
        # ITK's moments calculator sums over the image's requested region, which RegionOfInterest narrows on
        # its input: on this pair ITK's own MOMENTS initializer then started 21 mm off
        from MultimodalFusionLib.registration.sitk_backend import moments_start

        fixed, moving = (sitk.Cast(im, sitk.sitkFloat32) for im in itk_brainweb_pair())
        before = moments_start(fixed, moving, sitk.Euler2DTransform())
        sitk.RegionOfInterest(fixed, [20, 20], [100, 100])
        sitk.RegionOfInterest(moving, [20, 20], [30, 30])
        after = moments_start(fixed, moving, sitk.Euler2DTransform())
        self.assertEqual(after.GetFixedParameters(), before.GetFixedParameters())
        self.assertEqual(after.GetParameters(), before.GetParameters())
        self.assertEqual(register(fixed, moving, seed=0, initializer="moments").transform.GetParameters(),
                         register(fixed + 0, moving + 0, seed=0, initializer="moments").transform.GetParameters())


class Presets(unittest.TestCase):
    def test_required_presets_load(self):
        names = list_presets()
        for name in ("ct-mr-head", "mr-pet-brain", "pet-ct-body", "t1-t2-brain", "mr-mr-deformable"):
            self.assertIn(name, names)
            params = load_preset(name)
            params.validate()
            self.assertEqual(params.name, name)
            self.assertTrue(params.stages)
        self.assertEqual([s.name for s in load_preset("mr-mr-deformable").stages], ["rigid", "affine", "bspline"])

    def test_unknown_preset_lists_available(self):
        with self.assertRaises(InputError) as cm:
            load_preset("no-such-preset")
        self.assertIn("ct-mr-head", str(cm.exception))

    def test_a_preset_file_of_the_users(self):
        import os
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            def write(name, data):
                path = os.path.join(d, name)
                with open(path, "wb") as fh:
                    fh.write(data)
                return path

            # a key given twice had been the last one, without a word (5 iterations ran)
            dup = write("dup.json", b'{"stages": [{"name": "rigid", "iterations": 100, "iterations": 5}]}')
            with self.assertRaises(InputError) as cm:
                load_preset(dup)
            self.assertIn('sets "iterations" twice (100, then 5)', str(cm.exception))
            # Windows Notepad's byte-order mark had been "not valid JSON (Unexpected UTF-8 BOM ...)"
            bom = write("Bom.JSON", b'\xef\xbb\xbf{"stages": [{"name": "rigid", "iterations": 7}]}')
            self.assertEqual(load_preset(bom).stages[0].iterations, 7)
            # a line and column for broken JSON
            broken = write("broken.json", b'{"stages": [{"name": "rigid",\n "iterations": 200,,}]}')
            with self.assertRaises(InputError) as cm:
                load_preset(broken)
            self.assertIn("line 2 column", str(cm.exception))
            # a path that is not there had been "Unknown registration preset" with the shipped names as the fix
            for missing in (os.path.join(d, "mine.json"), os.path.join(d, "mine"), "mine.json"):
                with self.subTest(missing=missing), self.assertRaises(InputError) as cm:
                    load_preset(missing)
                self.assertIn(f"Preset file '{missing}' does not exist", str(cm.exception))

    def test_with_stages_and_bad_values(self):
        p = load_preset("ct-mr-head").with_stages(["rigid", "affine"])
        self.assertEqual([s.name for s in p.stages], ["rigid", "affine"])
        self.assertEqual(p.stages[0].sampling_percentage, 0.02)  # the preset's own rigid settings
        with self.assertRaises(InputError):
            RegistrationParameters().with_stages(["rigid", "warp"])
        with self.assertRaises(InputError):
            RegistrationParameters.from_dict({"stages": [{"name": "rigid", "metric": "nmi"}]})
        with self.assertRaises(InputError):
            RegistrationParameters.from_dict({"stages": [{"name": "rigid", "sampling_percentage": 5}]})
        with self.assertRaises(InputError):
            RegistrationParameters.from_dict({"stages": [{"name": "rigid", "bins": 5}]})

    def test_misspelt_settings_name_the_stage_and_the_likely_spelling(self):
        # "Unknown stage setting(s) ['shrink_factor']" had named neither the stage nor the likely key, and a
        # misspelt top-level key's fix had left "stages" out of the keys it listed
        cases = (
            ({"stages": ["rigid", {"name": "affine", "shrink_factor": [2, 1]}]},
             "stage 2 of 2 ('affine'): unknown setting(s) 'shrink_factor' (did you mean 'shrink_factors'?)"),
            ({"stage": ["rigid"]}, "'stage' (did you mean 'stages'?)"),
            ({"initialiser": "moments"}, "'initialiser' (did you mean 'initializer'?)"),
            ({"initializer": "moment"}, "(did you mean 'moments'?)"),
            ({"stages": [{"name": "rigd"}]}, "stage 1 of 1 ('rigd'): unknown stage name (did you mean 'rigid'?)"),
            ({"stages": [{"name": "rigid", "metric": "mattes"}]}, "(did you mean 'mattes_mi'?)"),
            ({"stages": [{"name": "bspline", "optimizer": "lbfgs"}]}, "(did you mean 'lbfgsb'?)"),
        )
        for data, words in cases:
            with self.subTest(data=data), self.assertRaises(InputError) as cm:
                RegistrationParameters.from_dict(data)
            self.assertIn(words, str(cm.exception))
        with self.assertRaises(InputError) as cm:
            RegistrationParameters.from_dict({"stag": []})
        self.assertIn("stages", cm.exception.fix)
        with self.assertRaises(InputError) as cm:
            RegistrationParameters().with_stages(["rigid", "afine"])
        self.assertIn("'afine' (did you mean 'affine'?)", str(cm.exception))
        with self.assertRaises(InputError) as cm:  # nothing close: no guess
            RegistrationParameters.from_dict({"stages": [{"name": "rigid", "zzz": 1}]})
        self.assertNotIn("did you mean", str(cm.exception))

    def test_a_key_as_likely_meant_as_another_names_both(self):
        # 'sampling' had been taken for 'sampling_strategy' alone (the closer by difflib's ratio, 0.64; 0.59 for
        # 'sampling_percentage', under its 0.6 floor), though the percentage is as likely what was meant
        cases = (({"stages": [{"name": "rigid", "sampling": 0.02}]},
                  "unknown setting(s) 'sampling' (did you mean 'sampling_percentage' or 'sampling_strategy'?)."),
                 ({"stages": [{"name": "rigid", "smoothing": [2, 1, 0]}]},
                  "'smoothing' (did you mean 'smoothing_in_mm' or 'smoothing_sigmas'?)"),
                 ({"stages": [{"name": "rigid", "samples": 5000}]},
                  "'samples' (did you mean 'max_samples' or 'number_of_samples'?)"),
                 ({"stages": [{"name": "rigid", "metric": "mi"}]},
                  "invalid metric 'mi'. Fix: Use mattes_mi / joint_histogram_mi / correlation / mean_squares "
                  "(did you mean 'joint_histogram_mi' or 'mattes_mi'?)."),
                 # one clearly closer is the one guess
                 ({"stages": [{"name": "rigid", "sampling_percent": 0.02}]},
                  "'sampling_percent' (did you mean 'sampling_percentage'?)"))
        for data, words in cases:
            with self.subTest(data=data), self.assertRaises(InputError) as cm:
                RegistrationParameters.from_dict(data)
            self.assertIn(words, str(cm.exception))

    def test_a_stage_without_a_name_is_refused(self):
        # {"iterations": 50} meant for the affine stage had run as a second rigid stage, without a word
        with self.assertRaises(InputError) as cm:
            RegistrationParameters.from_dict({"stages": ["rigid", {"iterations": 50}, {"name": "bspline"}]})
        self.assertIn('stage 2 of 3 has no "name"', str(cm.exception))
        self.assertIn("rigid, affine, bspline", cm.exception.fix)
        # a stage given as a bare name, and one with a name, still load
        self.assertEqual([s.name for s in RegistrationParameters.from_dict(
            {"stages": ["affine", {"name": "bspline", "iterations": 5}]}).stages], ["affine", "bspline"])

    def test_resolve_parameters_gives_what_register_runs_with(self):
        # front ends (the Slicer Logic) resolve once and pass the result on: resolving it again changes nothing
        from MultimodalFusionLib.registration import resolve_parameters

        p = resolve_parameters(preset="ct-mr-head", stages="rigid,affine", seed=2, initializer="search")
        self.assertEqual((p.name, p.seed, p.initializer), ("ct-mr-head", 2, "search"))
        self.assertEqual([s.name for s in p.stages], ["rigid", "affine"])
        self.assertEqual(p.stages[0].sampling_percentage, 0.02)  # the preset's own rigid settings
        self.assertEqual(resolve_parameters(p).to_dict(), p.to_dict())
        self.assertEqual(resolve_parameters({"stages": ["rigid"], "seed": 4}).seed, 4)
        torch_settings = resolve_parameters({"stages": ["affine", "deformable"], "device": "cpu"}, backend="torch")
        self.assertEqual((type(torch_settings).__name__, torch_settings.stages),
                         ("TorchRegistrationParameters", ["affine", "deformable"]))
        # a preset's (sitk) settings for the torch backend, their deformable stage named as the sitk one
        self.assertEqual([s.name for s in resolve_parameters(preset="t1-t2-brain", stages=["rigid", "deformable"],
                                                             backend="torch").stages], ["rigid", "bspline"])
        # without settings, the torch backend's own defaults (not the sitk stage defaults converted)
        torch_defaults = resolve_parameters(stages=["rigid", "deformable"], backend="torch")
        self.assertEqual((type(torch_defaults).__name__, torch_defaults.stages, torch_defaults.initializer),
                         ("TorchRegistrationParameters", ["rigid", "deformable"], "geometry"))
        for kwargs, words in (({"backend": "gpu"}, "backend"), ({"preset": "nope"}, "preset"),
                              ({"parameters": p, "preset": "ct-mr-head"}, "Both parameters and a preset")):
            with self.subTest(kwargs=kwargs), self.assertRaises(InputError) as cm:
                resolve_parameters(**kwargs)
            self.assertIn(words, str(cm.exception))


    def test_settings_of_another_type_than_the_backend_takes_are_refused(self):
        # torch settings with the default sitk backend (or a preset name given as parameters) went on into the
        # backend and failed there with an AttributeError traceback ('str' object has no attribute 'name')
        from MultimodalFusionLib.registration import resolve_parameters
        from MultimodalFusionLib.registration.torch_backend import TorchRegistrationParameters

        fixed, moving = itk_brainweb_pair()
        for parameters, backend, words in ((TorchRegistrationParameters(), "sitk", "of type TorchRegistrationParameters"),
                                           ("ct-mr-head", "sitk", "'ct-mr-head'"),
                                           ("ct-mr-head", "torch", "'ct-mr-head'")):
            for call in (resolve_parameters, lambda p, backend: register(fixed, moving, p, backend=backend)):
                with self.subTest(parameters=parameters, backend=backend, call=call), \
                        self.assertRaises(InputError) as cm:
                    call(parameters, backend=backend)
                self.assertIn(f"{words} cannot run on the '{backend}' backend", str(cm.exception))
                self.assertIn("preset=", str(cm.exception))

class SparseContent(unittest.TestCase):
    """A single bright voxel (or a few) gave a different transform for every seed, without a word."""

    def test_an_image_with_almost_no_structure_is_warned_about_and_real_images_are_not(self):
        a = np.zeros((64, 64), np.float32)
        a[30, 30] = 100.0
        b = np.zeros((64, 64), np.float32)
        b[33, 28] = 100.0
        fixed, moving = sitk.GetImageFromArray(a), sitk.GetImageFromArray(b)
        results = [register(fixed, moving, seed=seed) for seed in (0, 1)]
        self.assertNotEqual(results[0].transform.GetParameters(), results[1].transform.GetParameters())
        for result in results:
            sparse = [w for w in result.warnings if "structure in only 1 voxel(s)" in w]
            self.assertEqual([w.split()[1] for w in sparse], ["fixed", "moving"])
            self.assertIn("varies with the sampling seed", sparse[0])
        pair = itk_brainweb_pair()
        stage = dataclasses.replace(default_stage("rigid"), iterations=2)
        brain = register(*pair, RegistrationParameters(stages=[stage]), seed=0)
        self.assertFalse([w for w in brain.warnings if "structure in only" in w or "at its edges" in w],
                         brain.warnings)

    def test_a_small_flat_object_is_warned_about_by_its_edges_and_a_smooth_one_is_not(self):
        """A flat 13x13 square (169 voxels, over the 150 counted) on a 96x96 field ended 0.2-3.6 px off with
        the seed and no warning: its only structure is its 100 edge voxels. A Gaussian blob of fewer voxels
        above 1 ends under 0.3 px (benchmarks/sparse_content.py), and is not warned about."""
        from MultimodalFusionLib.registration import sparse_content_warnings

        def square(k: int, dx: int, dy: int) -> sitk.Image:
            a = np.zeros((96, 96), np.float32)
            c = 48 - k // 2
            a[c + dy:c + dy + k, c + dx:c + dx + k] = 100.0
            return sitk.GetImageFromArray(a)

        warned = sparse_content_warnings(square(13, 0, 0), square(13, 3, -2))
        self.assertEqual([w.split()[1] for w in warned], ["fixed", "moving"])
        self.assertIn("(169 voxels above its background) is of nearly one value, with only 100 voxel(s)", warned[0])
        self.assertEqual(sparse_content_warnings(square(21, 0, 0), square(21, 3, -2)), [])  # 164 edge voxels
        yy, xx = np.mgrid[0:96, 0:96].astype(np.float32)
        blob = sitk.GetImageFromArray((100 * np.exp(-((xx - 48) ** 2 + (yy - 48) ** 2) / 10.0)).astype(np.float32))
        self.assertEqual(sparse_content_warnings(blob, blob), [])

    def test_a_dark_object_on_a_bright_field_is_warned_about_as_a_bright_one_on_black(self):
        """Structure was counted above the image's minimum only: a dark 13x13 square on a bright 96x96 field (the
        bright square's picture inverted, registering as badly: 0.1-3.6 px off with the seed,
        benchmarks/sparse_content.py) was 9,047 voxels of structure, and neither it nor a single dark voxel was
        warned about. The maximum is the background where it leaves fewer voxels; inverted real images and
        smooth dark blobs are still not warned about."""
        from MultimodalFusionLib.registration import sparse_content_warnings

        def dark_square(k: int, dx: int, dy: int) -> sitk.Image:
            a = np.full((96, 96), 100.0, np.float32)
            c = 48 - k // 2
            a[c + dy:c + dy + k, c + dx:c + dx + k] = 0.0
            return sitk.GetImageFromArray(a)

        warned = sparse_content_warnings(dark_square(13, 0, 0), dark_square(13, 3, -2))
        self.assertEqual([w.split()[1] for w in warned], ["fixed", "moving"])
        self.assertIn("(169 voxels below its background) is of nearly one value, with only 100 voxel(s)",
                      warned[0])
        self.assertEqual(sparse_content_warnings(dark_square(21, 0, 0), dark_square(21, 3, -2)), [])
        a = np.full((64, 64), 100.0, np.float32)
        a[30, 30] = 0.0
        one = sparse_content_warnings(sitk.GetImageFromArray(a), dark_square(21, 0, 0))
        self.assertEqual(len(one), 1)
        self.assertIn("The fixed image holds structure in only 1 voxel(s) (below its background)", one[0])
        yy, xx = np.mgrid[0:96, 0:96].astype(np.float32)
        dip = 100 - 100 * np.exp(-((xx - 48) ** 2 + (yy - 48) ** 2) / 10.0)
        blob = sitk.GetImageFromArray(dip.astype(np.float32))
        self.assertEqual(sparse_content_warnings(blob, blob), [])
        fixed, moving = itk_brainweb_pair()
        self.assertEqual(sparse_content_warnings(255.0 - sitk.Cast(fixed, sitk.sitkFloat32),
                                                 255.0 - sitk.Cast(moving, sitk.sitkFloat32)), [])

    def test_one_voxel_off_the_field_does_not_hide_a_small_object(self):
        """The background was the minimum or the maximum: one voxel below a bright 13x13 square's black field (-5)
        or above a dark square's bright one (200) made the whole field structure (9,215 voxels) and silenced the
        warning, though the square still ended 0.06-1.19 px (bright) and 0.17-0.52 px (dark) off with the seed
        (default rigid, seeds 0-4); so did a small object on a grey field. The background is the most common
        value now; in a large volume the sample finds it too."""
        from MultimodalFusionLib.registration import _structure, sparse_content_warnings

        def square(field: float, value: float, odd: float) -> np.ndarray:
            a = np.full((96, 96), field, np.float32)
            a[42:55, 42:55] = value
            a[5, 90] = odd
            return a

        for arr, side in ((square(0.0, 100.0, -5.0), "differing from"), (square(100.0, 0.0, 200.0), "differing from"),
                          (square(50.0, 100.0, 0.0), "differing from"), (square(50.0, 100.0, 100.0), "above")):
            image = sitk.GetImageFromArray(arr)
            warned = sparse_content_warnings(image, image)
            self.assertEqual(len(warned), 2, (arr[0, 0], arr[5, 90]))
            self.assertIn(f"(170 voxels {side} its background) is of nearly one value", warned[0])
        big = np.zeros((64, 64, 64), np.float32)  # 262,144 voxels: the sample is every other one
        big[30:33, 30:33, 30:33] = 100.0
        big[0, 0, 1] = -1.0  # between the sampled voxels
        self.assertEqual(_structure(big)[1:], (28, "differing from"))
        grey = np.full((64, 64, 64), 7.0, np.float32)
        grey[::2] = 3.0  # two values, half each: 5,000 voxels or more differ from either
        self.assertIsNone(_structure(grey))

    def test_small_objects_in_a_large_volume_are_found_past_the_sample_looked_at_first(self):
        """A sample of 100,000 voxels settles a real image (0.06 s -> 0.002 s for a 512x512x300 pair); an object
        the sample barely sees, bright or dark, is still counted over the whole volume."""
        from MultimodalFusionLib.registration import _structure, sparse_content_warnings

        bright = np.zeros((64, 64, 64), np.float32)  # 262,144 voxels: a sample of every other one
        bright[30:35, 30:35, 30:35] = 100.0
        dark = 100.0 - bright
        for arr, side in ((bright, "above"), (dark, "below")):
            warned = sparse_content_warnings(*[sitk.GetImageFromArray(arr)] * 2)
            self.assertEqual(len(warned), 2)
            self.assertIn(f"structure in only 125 voxel(s) ({side} its background)", warned[0])
            single = np.full(arr.shape, 100.0 if side == "below" else 0.0, np.float32)
            single[1, 2, 3] = 50.0  # between the sampled voxels
            self.assertEqual(_structure(single)[1:], (1, side))
        noise = np.random.default_rng(0).normal(0, 1, (64, 64, 64)).astype(np.float32)
        self.assertIsNone(_structure(noise))

    def test_edges_of_small_objects_far_apart_are_counted_without_copying_the_volume(self):
        """The edges were counted in the box around the structure: two fiducial-like cubes in opposite corners
        made it the whole volume, three differences of it (a 512x512x300 pair: 1.8 s, 565 MiB at the peak
        instead of 0.3 s, 150 MiB). Only the structure's voxels and their neighbours are looked at now."""
        import tracemalloc

        from MultimodalFusionLib.registration import _edge_voxels, sparse_content_warnings

        a = np.zeros((64, 256, 256), np.float32)  # 16 MiB
        a[1:6, 1:6, 1:6] = 100.0
        a[58:63, 250:255, 250:255] = 100.0
        a[60, 252, 252] = 50.0  # a voxel of another value inside one cube: its neighbours are edges too
        above = a > a.min()
        tracemalloc.start()
        try:
            edges = _edge_voxels(a, above)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        # each 5x5x5 cube: its 98 outer voxels and the 150 around it; the inner voxel of 50 and its 6 neighbours
        self.assertEqual(edges, 2 * (98 + 150) + 7)
        self.assertLess(peak, 4 << 20, f"{peak / 2 ** 20:.1f} MiB")  # counted in the box: 28 MiB
        # the same count on the edges of an image and of a 1D and 2D structure
        line = np.zeros(10, np.uint8)
        line[0:3] = 7
        self.assertEqual(_edge_voxels(line, line > 0), 2)
        square = np.zeros((8, 8), np.int16)
        square[0:3, 5:8] = 2
        self.assertEqual(_edge_voxels(square, square > 0), 5 + 6)
        self.assertEqual(sparse_content_warnings(*[sitk.GetImageFromArray(a)] * 2), [])

    def test_a_mask_of_fewer_than_150_voxels_is_warned_about_on_both_backends(self):
        # a 12x12 fixed mask ended rigid registrations from 3.6 px off the truth up to 35 px off, without a word
        # (benchmarks/small_masks.py); the torch stages reported MI -0.0000 -> -0.0000 with one voxel
        from MultimodalFusionLib.registration.sitk_backend import register_sitk
        from MultimodalFusionLib.registration.torch_backend import TorchRegistrationParameters, register_torch

        fixed, moving = itk_brainweb_pair()
        start = sitk.CompositeTransform([itk_brainweb_truth(fixed), sitk.TranslationTransform(2, (3.0, -2.0))])
        runs = (("sitk", RegistrationParameters(stages=[dataclasses.replace(default_stage("rigid"), iterations=3)],
                                                seed=1)),
                ("torch", TorchRegistrationParameters(stages=["rigid"], linear_iterations=[3, 3, 3], device="cpu")))
        direct = {"sitk": register_sitk, "torch": register_torch}  # public: they had not warned, only register()
        linear_start = sitk.AffineTransform(2)
        linear_start.SetTranslation(start.TransformPoint((0.0, 0.0)))
        for backend, params in runs:
            for which in ("fixed", "moving"):
                image = fixed if which == "fixed" else moving
                mask = {f"{which}_mask": _box_mask(image, 100, 110, 12)}
                with self.subTest(backend=backend, mask=which):
                    result = register(fixed, moving, params, seed=1, backend=backend, initial_transform=start, **mask)
                    small = [w for w in result.warnings if w.startswith(f"The {which} mask holds only 144 voxel(s), "
                                                                        "fewer than 150")]
                    self.assertEqual(len(small), 1, result.warnings)
                    self.assertIn("Give a larger mask", small[0])
                    self.assertEqual(result.warnings[0], small[0])  # first, as it was
                with self.subTest(backend=backend, mask=which, path=direct[backend].__name__):
                    result = direct[backend](sitk.Cast(fixed, sitk.sitkFloat32), sitk.Cast(moving, sitk.sitkFloat32),
                                             params, initial_transform=linear_start, **mask)
                    self.assertEqual(sum(w.startswith(f"The {which} mask holds only 144 voxel(s)")
                                         for w in result.warnings), 1, result.warnings)
                    # 13x13 = 169 voxels: no such warning
                    result = register(fixed, moving, params, seed=1, backend=backend, initial_transform=start,
                                      **{f"{which}_mask": _box_mask(image, 100, 110, 13)})
                    self.assertFalse([w for w in result.warnings if "mask holds only" in w], result.warnings)


class BadInputs(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.fixed, cls.moving = itk_brainweb_pair()

    def assertInputError(self, *words, **kwargs):
        fixed = kwargs.pop("fixed", self.fixed)
        moving = kwargs.pop("moving", self.moving)
        with self.assertRaises(InputError) as cm:
            register(fixed, moving, **kwargs)
        msg = str(cm.exception)
        for w in words:
            self.assertIn(w, msg)
        self.assertIn("Fix:", msg)
        return msg

    def test_2d_vs_3d(self):
        vol = sitk.Image([20, 20, 20], sitk.sitkFloat32) + 1.0
        vol[5, 5, 5] = 10.0
        self.assertInputError("2D", "3D", moving=vol)

    def test_no_overlap(self):
        far = sitk.Image(self.moving)
        far.SetOrigin((5000.0, 5000.0))
        params = RegistrationParameters(initializer="none")
        self.assertInputError("do not overlap", moving=far, parameters=params)

    def test_constant_and_nan(self):
        const = sitk.Image(self.moving.GetSize(), sitk.sitkFloat32) + 3.0
        self.assertInputError("constant", moving=const)
        arr = sitk.GetArrayFromImage(self.moving)
        arr[10, 10] = np.nan
        nan_img = sitk.GetImageFromArray(arr)
        self.assertInputError("NaN", moving=nan_img)

    def test_mask_on_other_grid(self):
        mask = sitk.Image([30, 30], sitk.sitkUInt8) + 1
        self.assertInputError("not on the fixed image's grid", fixed_mask=mask)

    def test_empty_mask(self):
        mask = sitk.Image(self.fixed.GetSize(), sitk.sitkUInt8)
        mask.CopyInformation(self.fixed)
        self.assertInputError("empty", fixed_mask=mask)

    def test_a_mask_of_a_few_voxels_names_the_mask_and_the_fix(self):
        # ITK's own words had reached the user as a RegistrationError with the fix "try another preset":
        # "VirtualSampledPointSet must have 1 or more points", or for one voxel "the images barely overlap"
        for width in (1, 2, 3):
            mask = _box_mask(self.fixed, 120, 110, width)
            for metric in ("mattes_mi", "correlation", "mean_squares"):
                params = RegistrationParameters(stages=[dataclasses.replace(default_stage("rigid"), metric=metric)])
                with self.subTest(width=width, metric=metric):
                    msg = self.assertInputError("fixed mask", f"({width * width} voxel", fixed_mask=mask,
                                                parameters=params, seed=1)
                    self.assertTrue("larger fixed mask" in msg, msg)

    def test_masks_that_do_not_meet_at_the_start_are_refused_on_both_backends(self):
        # the sitk backend with correlation or mean squares returned the starting transform unchanged ("No valid
        # points" on stderr only); the torch backend left the moving mask out without a word
        fixed_mask = _box_mask(self.fixed, 20, 20, 60)
        moving_mask = _box_mask(self.moving, 180, 140, 60)
        for backend, metric in (("sitk", "correlation"), ("sitk", "mean_squares"), ("sitk", "mattes_mi"),
                                ("torch", "correlation"), ("torch", "mattes_mi")):
            params = RegistrationParameters(stages=[dataclasses.replace(default_stage("rigid"), metric=metric)],
                                            initializer="geometry")
            with self.subTest(backend=backend, metric=metric):
                msg = self.assertInputError("The fixed mask (3600 voxels) and the moving mask (3600 voxels) do not "
                                            "meet at the starting transform (initializer 'geometry')",
                                            "0 voxels of the fixed mask map inside the moving mask",
                                            "lies on its own image", fixed_mask=fixed_mask, moving_mask=moving_mask,
                                            parameters=params, backend=backend, seed=1)
                self.assertIn("'moments' initializer", msg)
        # without a fixed mask: the fixed image's voxels, here all sent beyond the moving mask by a given start
        away = sitk.TranslationTransform(2, (-150.0, -170.0))
        self.assertInputError("The fixed image and the moving mask (3600 voxels) do not meet",
                              "(the initial transform given)", moving_mask=_box_mask(self.moving, 197, 161, 60),
                              initial_transform=away)

    def test_the_masks_fixes_name_only_what_was_not_tried(self):
        # a moments run whose masks did not meet was told to use the 'moments' initializer, and a run given an
        # initial transform to give one. The fixed mask is two boxes with their centre of mass between them, so
        # the moments start puts a 40x40 moving mask in the gap (no voxel meets) and a 54x54 one over 120 voxels
        from MultimodalFusionLib.registration.torch_backend import TorchRegistrationParameters

        fixed_mask = sitk.Or(_box_mask(self.fixed, 100, 60, 30), _box_mask(self.fixed, 100, 140, 30))
        runs = (("sitk", RegistrationParameters(stages=[dataclasses.replace(default_stage("rigid"), iterations=3)],
                                                initializer="moments")),
                ("torch", TorchRegistrationParameters(stages=["rigid"], linear_iterations=[3, 3, 3], device="cpu",
                                                      initializer="moments")))
        for backend, params in runs:
            with self.subTest(backend=backend, masks="apart"):
                msg = self.assertInputError("do not meet at the starting transform (initializer 'moments')",
                                            fixed_mask=fixed_mask, moving_mask=_box_mask(self.moving, 110, 110, 40),
                                            parameters=params, backend=backend, seed=1)
                self.assertIn("give an initial transform that roughly aligns them (initializer 'moments' already "
                              "aligned the masks' centres of mass)", msg)
                self.assertNotIn("'moments' initializer", msg)
            with self.subTest(backend=backend, masks="120 voxels apart"):
                result = register(self.fixed, self.moving, params, fixed_mask=fixed_mask,
                                  moving_mask=_box_mask(self.moving, 103, 103, 54), seed=1, backend=backend)
                few = [w for w in result.warnings if w.startswith("Only 120 voxels of the fixed mask")]
                self.assertEqual(len(few), 1, result.warnings)
                self.assertIn("(initializer 'moments')", few[0])
                self.assertIn("give an initial transform", few[0])
                self.assertNotIn("'moments' initializer", few[0])
        # given an initial transform: check it, or leave it out for the moments initializer (not "give one")
        away = sitk.TranslationTransform(2, (-150.0, -170.0))
        msg = self.assertInputError("The fixed image and the moving mask (3600 voxels) do not meet",
                                    "(the initial transform given)", moving_mask=_box_mask(self.moving, 197, 161, 60),
                                    initial_transform=away)
        self.assertIn("check the initial transform given", msg)
        self.assertIn("leave it out so that the 'moments' initializer aligns the masks' centres of mass", msg)
        self.assertNotIn("give an initial transform", msg)

    def test_the_mask_fixes_for_each_start_are_distinct(self):
        from MultimodalFusionLib.registration.sitk_backend import start_fix

        kinds = ("none", "geometry", "moments", "search", "initial transform", "earlier stages")
        clauses = {kind: start_fix(kind, masks=True) for kind in kinds}
        self.assertEqual(len(set(clauses.values())), len(kinds), clauses)
        for kind in ("none", "geometry", "search"):
            self.assertIn("the 'moments' initializer aligns the masks' centres of mass", clauses[kind])
        self.assertNotIn("'moments' initializer", clauses["moments"])
        self.assertNotIn("give an initial transform", clauses["initial transform"])
        self.assertNotEqual(start_fix("moments"), clauses["moments"])  # the images' fix is the other column

    def test_a_moving_mask_of_a_few_voxels_is_named_on_the_sitk_backend(self):
        # Mattes MI: "the images barely overlap" (1 voxel) or "the images probably drifted apart" (3x3), naming
        # neither the moving mask nor its size; the mask is where the truth sends the fixed voxel (110, 120)
        for width, inside in ((1, "only 1 voxel of the fixed image maps inside"),
                              (3, "only 9 voxels of the fixed image map inside")):
            with self.subTest(width=width):
                msg = self.assertInputError(f"the moving mask ({width * width} voxel", inside,
                                            "larger moving mask",
                                            moving_mask=_box_mask(self.moving, 136, 124, width), seed=1)
                self.assertIn("Stage 'rigid': the mattes_mi metric cannot be computed", msg)

    def test_few_voxels_inside_both_masks_at_the_start_are_warned_about_on_both_backends(self):
        # 5 x 5 of the two 60 x 60 masks meet where the geometry start puts them
        fixed_mask = _box_mask(self.fixed, 60, 60, 60)
        moving_mask = _box_mask(self.moving, 115, 115, 60)
        runs = _short_rigid_runs()
        for backend, params in runs:
            with self.subTest(backend=backend):
                result = register(self.fixed, self.moving, params, fixed_mask=fixed_mask, moving_mask=moving_mask,
                                  seed=1, backend=backend)
                few = [w for w in result.warnings if w.startswith("Only 25 voxels of the fixed mask (3600 voxels) map "
                                                                  "inside the moving mask (3600 voxels)")]
                self.assertEqual(len(few), 1, result.warnings)
                self.assertIn("fewer than 150", few[0])

    def test_the_masks_are_resampled_once_per_registration_on_both_backends(self):
        """The start's checks (masks that meet, few voxels inside both, the share of overlap, the torch backend's
        no-overlap refusal) each resampled the moving mask onto the fixed grid: twice per masked SimpleITK
        registration, three times per torch one (0.1-0.5 s each at 256x256x200). One resampling
        (validation.masks_reach) gives their counts now, and their warnings are the same."""
        from unittest import mock

        from MultimodalFusionLib import validation

        resample = sitk.Resample
        callers: list[str] = []

        def counted(*args, **kwargs):  # the real resampling, its caller noted when it is validation's
            caller = sys._getframe(1).f_code
            if caller.co_filename == validation.__file__:
                callers.append(caller.co_name)
            return resample(*args, **kwargs)

        # 5 x 5 of the two 60 x 60 masks meet where the geometry start puts them: a warning that counts them
        fixed_mask = _box_mask(self.fixed, 60, 60, 60)
        moving_mask = _box_mask(self.moving, 115, 115, 60)
        runs = _short_rigid_runs()
        for backend, params in runs:
            for masks in ({"fixed_mask": fixed_mask}, {"moving_mask": moving_mask},
                          {"fixed_mask": fixed_mask, "moving_mask": moving_mask}):
                with self.subTest(backend=backend, masks=sorted(masks)):
                    callers.clear()
                    with mock.patch.object(sitk, "Resample", counted):
                        result = register(self.fixed, self.moving, params, seed=1, backend=backend, **masks)
                    self.assertEqual(callers, ["masks_reach"])
                    if len(masks) == 2:
                        self.assertEqual(len([w for w in result.warnings if w.startswith("Only 25 voxels")]), 1)

    def test_the_torch_backend_says_when_it_leaves_the_moving_mask_out(self):
        # at most 100 voxels inside both masks: the similarity counts the fixed mask alone (rather than nothing),
        # which had been silent. 25 voxels meet here at the start
        from MultimodalFusionLib.registration.torch_backend import TorchRegistrationParameters

        fixed_mask = _box_mask(self.fixed, 60, 60, 60)
        moving_mask = _box_mask(self.moving, 115, 115, 60)
        for metric in ("mi", "lncc"):
            params = TorchRegistrationParameters(stages=["rigid"], linear_iterations=[3, 3, 3], device="cpu",
                                                 initializer="geometry", linear_metric=metric)
            with self.subTest(metric=metric):
                result = register(self.fixed, self.moving, params, fixed_mask=fixed_mask, moving_mask=moving_mask,
                                  seed=1, backend="torch")
                left_out = [w for w in result.warnings if w.startswith("The moving mask was left out of the rigid "
                                                                       "stage")]
                self.assertEqual(len(left_out), 1, result.warnings)
                self.assertIn("100 voxels of the fixed mask or fewer (of a pyramid level's", left_out[0])
                self.assertIn("the fixed mask alone counted instead", left_out[0])
                self.assertFalse([w for w in result.warnings if "final mutual information" in w], result.warnings)
        # an ordinary moving mask (the band case's): no such warning
        case = itk_brainweb_band_case()
        params = TorchRegistrationParameters(stages=["rigid"], linear_iterations=[3, 3, 3], device="cpu")
        result = register(case.fixed, case.moving, params, moving_mask=case.moving_mask, seed=1, backend="torch")
        self.assertFalse([w for w in result.warnings if "left out" in w], result.warnings)

    def test_a_moving_mask_the_fixed_image_misses_names_the_mask(self):
        # a moving mask of 3x3 voxels in a corner: "the images barely overlap ... Use the 'geometry' or 'moments'
        # initializer" (a RegistrationError), also to runs that used them; without the mask the metric is computed
        mask = sitk.Image(self.moving.GetSize(), sitk.sitkUInt8)
        mask.CopyInformation(self.moving)
        mask[0:3, 0:3] = 1
        for initializer in ("geometry", "moments", "none"):
            with self.subTest(initializer=initializer):
                msg = self.assertInputError("moving mask (9 voxels)", "larger moving mask",
                                            moving_mask=mask, initializer=initializer, seed=0)
                self.assertNotIn("barely overlap", msg)
                # the fix names the moments initializer to runs that did not use it, and only to them
                self.assertEqual("'moments' initializer" in msg, initializer != "moments", msg)

    def test_images_that_barely_overlap_get_a_fix_for_the_start_used(self):
        # the fix had always been "Use the 'geometry' or 'moments' initializer", also when one of them was used
        from MultimodalFusionLib.errors import RegistrationError
        from MultimodalFusionLib.registration.sitk_backend import evaluate_metric, no_overlap_error

        apart = sitk.TranslationTransform(2, (300.0, 0.0))  # every fixed point lands beyond the moving image
        stage = default_stage("rigid")
        self.assertEqual(evaluate_metric(self.fixed, self.moving, apart, stage, 0), math.inf)
        fixes = {}
        for start_from in ("none", "geometry", "moments", "search", "initial transform", "earlier stages"):
            error = no_overlap_error(stage.name, start_from)
            self.assertIsInstance(error, RegistrationError)
            self.assertIn("barely overlap", error.problem)
            fixes[start_from] = error.fix
        self.assertIn("Use the 'geometry' or 'moments' initializer", fixes["none"])
        self.assertIn("centres were aligned (initializer 'geometry')", fixes["geometry"])
        self.assertNotIn("'geometry' initializer", fixes["geometry"])
        self.assertIn("try the 'geometry' initializer", fixes["moments"])
        self.assertNotIn("'moments' initializer", fixes["moments"])
        self.assertIn("initial transform places them apart", fixes["initial transform"])
        self.assertEqual(len(set(fixes.values())), len(fixes))

    def test_an_initial_transform_that_maps_nothing(self):
        # a displacement-field transform without its field: ITK's RuntimeError reached the user from check_pair
        for backend in ("sitk", "torch"):
            with self.subTest(backend=backend):
                self.assertInputError("cannot map a point", "No displacement field is specified",
                                      initial_transform=sitk.DisplacementFieldTransform(2), backend=backend)

    def test_thin_images_and_foreign_initial_transforms(self):
        # fewer than 4 voxels along an axis: ITK's smoothing cannot run; a clear error instead of ITK's
        arr = np.random.default_rng(1).normal(100, 10, (2, 40, 40)).astype(np.float32)
        two = sitk.GetImageFromArray(arr)
        self.assertInputError("only 2 voxels along an axis", "2D slices", fixed=two, moving=two)
        # a 2D initial transform for 3D images is named, not a deep ITK point-dimension error
        vol = sitk.GetImageFromArray(np.random.default_rng(2).normal(100, 10, (16, 20, 20)).astype(np.float32))
        self.assertInputError("initial transform is 2D but the images are 3D", fixed=vol, moving=vol,
                              initial_transform=sitk.Euler2DTransform())

    def test_thin_slab_registers_with_fewer_shrink_steps(self):
        # 48 x 48 x 6: the 4-2-1 pyramid would shrink the 6 slices below 4; the levels are capped instead
        z, y, x = np.mgrid[:6, :48, :48]
        blob = 100 * np.exp(-((x - 24) ** 2 / 60 + (y - 22) ** 2 / 90 + (z - 3) ** 2 / 8))
        fixed = sitk.GetImageFromArray(blob.astype(np.float32))
        moved = sitk.GetImageFromArray(np.roll(blob, 2, axis=2).astype(np.float32))
        result = register(fixed, moved, stages=["rigid"], seed=1, initializer="geometry")
        self.assertAlmostEqual(result.transform.TransformPoint((24.0, 22.0, 3.0))[0], 26.0, delta=0.3)

    def test_a_small_2d_image_is_refused_for_a_bspline_stage_on_every_path(self):
        # the 16-pixel check lived in register() only: register_sitk (public) ran the B-spline stage on 12x12
        from MultimodalFusionLib.registration.sitk_backend import register_sitk

        y, x = np.mgrid[:12, :40]
        a, b = (sitk.GetImageFromArray((100 * np.exp(-((x - c) ** 2 / 40 + (y - 6) ** 2 / 10))).astype(np.float32))
                for c in (20, 21))
        params = RegistrationParameters().with_stages(["rigid", "bspline"])
        calls = (lambda progress: register(a, b, params, progress=progress),
                 lambda progress: register_sitk(a, b, params, progress=progress))
        for i, call in enumerate(calls):
            messages = []
            with self.subTest(call=i), self.assertRaises(InputError) as cm:
                call(lambda fraction, message, messages=messages: messages.append(message))
            self.assertIn("(40, 12) is too small for a B-spline stage (at least 16 pixels", str(cm.exception))
            self.assertEqual(messages, [])  # refused before the rigid stage ran
        # without the B-spline stage the same pair registers
        self.assertEqual(len(register_sitk(a, b, RegistrationParameters(seed=1)).stages), 1)

    def test_a_bspline_grid_of_the_wrong_dimension_is_refused_before_any_stage_runs(self):
        # a 3-entry mesh_size for 2D images was refused only once the rigid stage before it had run
        import dataclasses

        bspline = dataclasses.replace(default_stage("bspline"), mesh_size=[4, 4, 4])
        params = RegistrationParameters(stages=[default_stage("rigid"), bspline])
        messages = []
        self.assertInputError("mesh_size [4, 4, 4] has 3 entries but the images are 2D", parameters=params,
                              progress=lambda fraction, message: messages.append(message))
        self.assertEqual(messages, [])

    def test_the_largest_iteration_count_runs_an_lbfgsb_stage(self):
        # iterations go up to ITK's 32-bit maximum, but the LBFGSB stage asked ITK for 4 function evaluations
        # per iteration: from 2^30 on that overflowed in SimpleITK's wrapper with an OverflowError traceback
        y, x = np.mgrid[:40, :40]
        a, b = (sitk.GetImageFromArray((100 * np.exp(-((x - c) ** 2 / 40 + (y - 18) ** 2 / 60))).astype(np.float32))
                for c in (20, 21))
        for iterations in (2**30, ITK_UINT_MAX):
            stage = dataclasses.replace(default_stage("bspline"), optimizer="lbfgsb", mesh_size=2,
                                        iterations=iterations)
            with self.subTest(iterations=iterations):
                result = register(a, b, RegistrationParameters(stages=[stage]), seed=0)
                self.assertEqual([s.name for s in result.stages], ["bspline"])
                self.assertLess(result.stages[0].iterations, 1000)  # converged, long before the limit

    def test_initializer_argument_overrides_the_preset(self):
        far = sitk.Image(self.moving)
        far.SetOrigin((5000.0, 5000.0))
        self.assertInputError("do not overlap", moving=far, preset="t1-t2-brain", initializer="none")
        register(self.fixed, far, preset="t1-t2-brain", initializer="geometry", seed=1)  # centres aligned: runs

    def test_bad_backend_and_preset(self):
        self.assertInputError("backend", backend="gpu")
        self.assertInputError("preset", preset="nope")

    def test_masks_are_used(self):
        # a box mask inside the 20-pixel border: the metric changes, the answer does not
        arr = np.zeros(self.fixed.GetSize()[::-1], np.uint8)
        arr[15:-15, 15:-15] = 1
        mask = sitk.GetImageFromArray(arr)
        mask.CopyInformation(self.fixed)
        res = register(self.fixed, self.moving, fixed_mask=mask, seed=3)
        plain = register(self.fixed, self.moving, seed=3)
        self.assertNotEqual(res.metric_before, plain.metric_before)
        self.assertLess(abs(rotation_angle_deg(res.transform) - 10.0), 0.5)
        self.assertTrue(math.isfinite(res.metric_after))


class AHugeSpacingIsNamed(unittest.TestCase):
    def test_a_spacing_that_makes_one_image_dwarf_the_other_is_named_when_nothing_overlaps(self):
        """A header spacing of 1e12 mm (h_A20's sp_huge.mha) had been told only "the images barely overlap at the
        starting transform", on both backends: the extents' ratio (5e11) and the spacing are named now. A pair that
        barely overlaps for another reason is told as before."""
        from MultimodalFusionLib.errors import RegistrationError

        fixed, moving = itk_brainweb_pair()
        volume = np.zeros((20, 24, 24), np.float32)
        volume[5:15, 6:18, 8:16] = 100.0
        volume[8:12, 9:13, 10:14] = 40.0
        small = sitk.GetImageFromArray(volume)
        small.SetSpacing((2.0, 2.0, 2.0))
        huge = sitk.Image(small)  # a 3D pair as sp_huge.mha's: ITK finds no fixed point inside the moving image
        huge.SetSpacing((1e12, 1e12, 1e12))
        for backend, settings in _short_rigid_runs():
            with self.subTest(backend=backend), self.assertRaises(RegistrationError) as ctx:
                register(huge, small, settings, backend=backend, seed=0)
            self.assertIn("barely overlap", ctx.exception.problem)
            self.assertRegex(ctx.exception.problem, r"The fixed image spans 2\.4e\+13 mm \(spacing 1e\+12, 1e\+12, "
                                                    r"1e\+12 mm\), 5e\+11 times the moving image's 48 mm: check the "
                                                    r"spacing in its header \(mmfusion info\)")
        apart = sitk.Image(moving)
        apart.SetOrigin((1000.0, 0.0))  # nothing overlaps as they lie, and the extents are alike: no such clause
        plain = dataclasses.replace(_short_rigid_runs()[0][1], initializer="none")
        with self.assertRaises(InputError) as ctx:
            register(fixed, apart, plain, seed=0)
        self.assertNotIn("check the spacing in its header", str(ctx.exception))

    def test_a_2d_pair_with_a_huge_spacing_names_it_when_too_few_samples_map_inside(self):
        """On the 2D BrainWeb pair with a header spacing of 1e12 mm on one image the start keeps a sample or two
        inside the moving image, so the refusal is "too few sample points" (ITK's during the stage, the torch
        backend's at the start), not "barely overlap": it had named neither the spacing nor the header."""
        from MultimodalFusionLib.errors import RegistrationError

        fixed, moving = itk_brainweb_pair()
        huge = sitk.Image(fixed)
        huge.SetSpacing((1e12, 1e12))
        for backend, settings in _short_rigid_runs():
            with self.subTest(backend=backend):
                with self.assertRaises(RegistrationError) as ctx:
                    register(huge, moving, settings, backend=backend, seed=0)
                self.assertIn("too few sample points", ctx.exception.problem)
                self.assertRegex(ctx.exception.problem, r"The fixed image spans 2\.57e\+14 mm \(spacing 1e\+12, "
                                                        r"1e\+12 mm\), 1e\+12 times the moving image's 257 mm: check "
                                                        r"the spacing in its header \(mmfusion info\)")

    def test_a_moving_image_whose_one_voxel_holds_the_whole_fixed_image_is_refused_naming_its_spacing(self):
        """The same 2D pair with the 1e12 mm spacing on the MOVING image had registered "successfully" on both
        backends (mutual information ~0 before and after, a translation of about 1.1e14 mm): every fixed sample falls
        inside one moving voxel. It is refused before any stage, naming the spacing with the clause the fixed image's
        refusal gives; a 3D pair alike. The pair as it is (spacing 1 mm) still registers."""
        from MultimodalFusionLib.errors import RegistrationError

        fixed, moving = itk_brainweb_pair()
        huge = sitk.Image(moving)
        huge.SetSpacing((1e12, 1e12))
        volume = sitk.GetImageFromArray(np.repeat(sitk.GetArrayFromImage(moving)[None, 100:140, 100:140], 12, axis=0))
        fixed3 = sitk.GetImageFromArray(np.repeat(sitk.GetArrayFromImage(fixed)[None, 100:140, 100:140], 12, axis=0))
        volume.SetSpacing((1e12, 1e12, 1e12))
        for backend, settings in _short_rigid_runs():
            for name, pair, across, spans in (("2D", (fixed, huge), "338.954", r"2\.57e\+14 mm \(spacing 1e\+12, 1e\+12 mm\), "
                                                                             r"1e\+12 times the fixed image's 257 mm"),
                                              ("3D", (fixed3, volume), "57.8273", r"4e\+13 mm \(spacing 1e\+12, 1e\+12, "
                                                                              r"1e\+12 mm\), 1e\+12 times the fixed "
                                                                              r"image's 40 mm")):
                with self.subTest(backend=backend, pair=name):
                    with self.assertRaises(RegistrationError) as ctx:
                        register(*pair, settings, backend=backend, seed=0)
                    self.assertTrue(ctx.exception.problem.startswith(
                        f"Stage 'rigid': the whole fixed image ({across} mm across) lies inside one voxel of the "
                        "moving image, so the metric cannot be computed."), ctx.exception.problem)
                    self.assertRegex(ctx.exception.problem, r"The moving image spans " + spans + r": check the "
                                     r"spacing in its header \(mmfusion info\)")
                    self.assertIn("Correct the moving image's spacing in its header", ctx.exception.fix)
            with self.subTest(backend=backend, pair="as it is"):
                self.assertTrue(np.isfinite(register(fixed, moving, settings, backend=backend, seed=0).metric_after))


class MeanDistanceUnderAShrunkMask(unittest.TestCase):
    def test_the_shrunk_mask_is_read_while_it_lives(self):
        """mean_distance had compared a numpy view of a temporary shrunk mask after the image was freed, so the
        mean was taken over garbage voxels: 0.9566 where the masked mean is 0.95 (deterministic here)."""
        from MultimodalFusionLib.registration import sitk_backend

        fixed = sitk.Image([200, 200, 100], sitk.sitkFloat32)
        m = np.zeros((100, 200, 200), np.uint8)
        m[:, :, :20] = 1
        mask = sitk.GetImageFromArray(m)
        stretch = sitk.AffineTransform(3)
        stretch.SetMatrix((1.1, 0, 0, 0, 1, 0, 0, 0, 1))
        factors = sitk_backend.evaluation_factors(fixed)
        self.assertGreater(max(factors), 1)  # the shrunk path
        grid = sitk.Shrink(fixed, factors)
        inside = sitk.GetArrayFromImage(sitk.Shrink(mask, factors)) != 0
        field = sitk.GetArrayFromImage(sitk.TransformToDisplacementField(
            stretch, sitk.sitkVectorFloat64, grid.GetSize(), grid.GetOrigin(), grid.GetSpacing(), grid.GetDirection()))
        want = float(np.linalg.norm(field, axis=-1)[inside].mean())
        got = sitk_backend.mean_distance(sitk.TranslationTransform(3), stretch, fixed, mask)
        self.assertAlmostEqual(got, want, places=12)


if __name__ == "__main__":
    unittest.main()
