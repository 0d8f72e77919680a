"""A registration mask at the object's edge: the default rigid stage from the 'geometry' start (SimpleITK backend).

ITK's 2D BrainWeb pair (truth 10 degrees, 21 px between the centres of the content) with a fixed mask
``fixed > 30`` (the head, cut at its edge) had ended 10-33 px off in about half the seeds and pixel sizes (seed 1:
33 px at 1 mm, 27 px at 0.6 mm, 19 px at 1.5 mm), each accepted with no warning, where the unmasked runs end
within 0.2 px: the masked metric has none of the head-against-background contrast and is flat beyond about
10-15 px. A masked first stage now runs again from its coarsest level run without the masks when the masked metric
scores that better than what the stage reached from the initializer's start
(``sitk_backend._unmasked_start``).

The torch backend had no such try: the same masks left its default rigid stage 20-64 px off in 50 of 80 runs
(``fixed > 10`` and ``> 60``, the head dilated by 3 px, boxes over 60% and 40% of the slice; seeds 0-4, 1 and 3 mm),
the masked mutual information flat over the first half of the way from the start to the truth at its coarsest
level. It now runs the SimpleITK backend's rule (``torch_backend._masked_linear_stage``).
"""

from __future__ import annotations

import unittest

import numpy as np
import SimpleITK as sitk

from MultimodalFusionLib.errors import OperationCancelled
from MultimodalFusionLib.registration import RegistrationParameters, StageParameters, register
from MultimodalFusionLib.registration.accuracy import (
    itk_brainweb_scaled_pair,
    transform_error,
)
from MultimodalFusionLib.registration.parameters import list_presets, load_preset
from MultimodalFusionLib.registration.sitk_backend import ignored_learning_rate_warning

#: Largest mean error (px) accepted: the unmasked runs end within 0.2 px, the masked ones now within 0.4.
TOLERANCE_PX = 1.0


_pair = itk_brainweb_scaled_pair  # the pair with pixel_mm pixels and its true transform


def _box(fixed: sitk.Image, share: float) -> sitk.Image:
    """A centred box mask over ``share`` of each side of ``fixed`` (inside the head, none of its edge)."""
    arr = np.zeros(sitk.GetArrayViewFromImage(fixed).shape, np.uint8)
    h, w = arr.shape
    dh, dw = int(h * (1 - share) / 2), int(w * (1 - share) / 2)
    arr[dh:h - dh, dw:w - dw] = 1
    mask = sitk.GetImageFromArray(arr)
    mask.CopyInformation(fixed)
    return mask


def _check_coarse_level_progress(test: unittest.TestCase, run) -> None:
    """``run(progress)``, a masked registration that checks its first stage: its progress never goes back, the
    unmasked coarse level reports its iterations "without the masks", and a cancel there stops the registration."""
    seen: list[tuple[float, str]] = []
    run(lambda f, m: seen.append((f, m)))
    fractions = [f for f, _ in seen]
    test.assertEqual(fractions, sorted(fractions))
    coarse = [m for _, m in seen if "without the masks" in m and "iteration" in m]
    test.assertTrue(coarse, [m for _, m in seen if "masks" in m])

    calls: list[str] = []

    def cancel_in_the_coarse_level(fraction: float, message: str) -> bool:
        calls.append(message)
        return not ("without the masks" in message and "iteration" in message)

    with test.assertRaises(OperationCancelled):
        run(cancel_in_the_coarse_level)
    test.assertIn("without the masks", calls[-1])


class FixedMaskAtTheEdge(unittest.TestCase):
    def _error_px(self, pixel_mm: float, seed: int, mask_of) -> tuple[float, dict]:
        fixed, moving, truth = _pair(pixel_mm)
        result = register(fixed, moving, seed=seed, fixed_mask=mask_of(fixed))
        return transform_error(result.transform, truth, fixed)["mean"] / pixel_mm, result.parameters

    def test_a_head_mask_recovers_the_answer_at_every_pixel_size_and_seed(self):
        def head(fixed: sitk.Image) -> sitk.Image:
            return sitk.Cast(fixed > 30, sitk.sitkUInt8)

        # seed 1 had ended 33, 27 and 19 px off at these pixel sizes; at 1 mm seeds 2 and 4 21 and 29 px (run
        # again from the unmasked coarse level), seeds 0 and 3 0.3 and 0.2 px (kept as they were). Since the grey
        # PNGs are read as their exact grey values (no float32 rounding of the luminance), seed 1 at 0.6 mm ends
        # 0.09 px off in its first run (masked -0.4234 against -0.4221 without the masks): kept as it was
        runs = [(0.6, 1, False), (1.0, 1, True), (1.5, 1, True), (1.0, 2, True), (1.0, 4, True),
                (1.0, 0, False), (1.0, 3, False)]
        for pixel_mm, seed, again in runs:
            with self.subTest(pixel_mm=pixel_mm, seed=seed):
                error, parameters = self._error_px(pixel_mm, seed, head)
                self.assertLess(error, TOLERANCE_PX)
                start = parameters["stages"][0]["effective"]["masked_start"]
                self.assertEqual(start["used"], again)
                if again:
                    self.assertLess(start["metric_unmasked_level"], start["metric_stage_reached"])

    def test_a_near_end_that_every_pixel_scores_clearly_worse_runs_again(self):
        # 0.5 mm, seed 2: the first run ended 1.51 px off, 0.19 coarse voxels from the unmasked coarse level's end,
        # which the masked metric (every pixel: the 2D check takes them all) scores 9.8% better (-0.417 against
        # -0.380); not run again for the distance alone, it was returned 1.51 px off with no warning
        error, parameters = self._error_px(0.5, 2, lambda fixed: sitk.Cast(fixed > 30, sitk.sitkUInt8))
        start = parameters["stages"][0]["effective"]["masked_start"]
        self.assertTrue(start["used"], start)
        self.assertLess(start["apart_mm"], 0.5 * start["coarse_voxel_mm"])
        self.assertLess(start["metric_unmasked_level_every_voxel"],
                        1.05 * start["metric_stage_reached_every_voxel"])  # more than 5% better
        self.assertLess(error, 0.4)

    def test_a_box_inside_the_head_recovers_the_answer(self):
        # a box over the middle 60% (no edge of the head in it) had ended 14 and 23 px off (seeds 2 and 3)
        for seed in (2, 3):
            with self.subTest(seed=seed):
                error, _ = self._error_px(1.0, seed, lambda fixed: _box(fixed, 0.6))
                self.assertLess(error, TOLERANCE_PX)

    def test_runs_without_a_mask_do_not_align_without_one(self):
        fixed, moving, _ = _pair(1.0)
        result = register(fixed, moving, seed=1)
        self.assertNotIn("masked_start", result.parameters["stages"][0]["effective"])
        # nor a run given its start: the initial transform is the user's
        mask = sitk.Cast(fixed > 30, sitk.sitkUInt8)
        result = register(fixed, moving, seed=1, fixed_mask=mask, initial_transform=sitk.Euler2DTransform())
        self.assertNotIn("masked_start", result.parameters["stages"][0]["effective"])

    def test_a_mask_that_excludes_a_distractor_keeps_the_start_the_masked_metric_prefers(self):
        # the moving image has a bright block that the fixed one lacks, outside the mask: the unmasked coarse level
        # pulls the images off the aligned start, which the masked metric scores worse than the stage's own result,
        # so that result is kept
        fixed, _, _ = _pair(1.0)
        arr = sitk.GetArrayFromImage(fixed)
        arr[:, :60] = 0
        arr[:, 180:] = 0
        arr[20:120, 0:60] = 200.0
        moving = sitk.GetImageFromArray(arr)
        moving.CopyInformation(fixed)
        mask_arr = np.zeros(arr.shape, np.uint8)
        mask_arr[40:220, 60:180] = 1
        mask = sitk.GetImageFromArray(mask_arr)
        mask.CopyInformation(fixed)
        result = register(fixed, moving, RegistrationParameters(initializer="none"), seed=1, fixed_mask=mask)
        start = result.parameters["stages"][0]["effective"]["masked_start"]
        self.assertFalse(start["used"])
        self.assertLess(start["metric_stage_reached"], start["metric_unmasked_level"])
        self.assertLess(transform_error(result.transform, sitk.Euler2DTransform(), fixed, mask)["mean"], 0.2)


class SecondTry(unittest.TestCase):
    """How the second try from the unmasked coarse level is decided, reported and cancelled."""

    def test_a_masked_run_that_was_right_is_not_run_again(self):
        # 2 mm MNI152 T1 vs T2, (8, 3, 0) degrees and (6, -4, 8) mm, brain mask, seed 0: the stage's own end was
        # 0.09 mm off; the unmasked coarse level ended 0.5 mm off, which the check metric (every k-th voxel, no
        # smoothing) scored 1.5% better, so the stage ran again from there and ended 0.52 mm off. The two ends are
        # far less than a coarse voxel apart, where the check metric cannot tell them apart
        from MultimodalFusionLib.registration.accuracy import rigid_case

        case = rigid_case(2.0, angles_deg=(8.0, 3.0, 0.0), translation=(6.0, -4.0, 8.0), shape=None)
        result = register(case.fixed, case.moving, seed=0, fixed_mask=case.mask)
        start = result.parameters["stages"][0]["effective"]["masked_start"]
        self.assertFalse(start["used"], start)
        self.assertLess(case.error(result.transform)["mean"], 0.2)
        # the check metric (every 2nd voxel) still scores the coarse level's end better (2.6%); judged on every
        # voxel instead, which scores the stage's own end 5% better (-1.106 against -1.048)
        self.assertLess(start["metric_unmasked_level"], start["metric_stage_reached"])
        self.assertLess(start["metric_stage_reached_every_voxel"],
                        1.03 * start["metric_unmasked_level_every_voxel"])

    def test_a_near_end_is_judged_on_every_voxel_where_given(self):
        from MultimodalFusionLib.registration.sitk_backend import judge_unmasked_start

        # ends 0.1 coarse voxels apart, the check metric 10% better for the coarse level's end
        near = dict(reached=-0.38, score=-0.42, apart_mm=0.4, coarse_voxel_mm=4.0)
        info: dict = {}
        self.assertFalse(judge_unmasked_start(info, **near))  # no values on every voxel (the torch backend's)
        self.assertNotIn("metric_stage_reached_every_voxel", info)
        self.assertFalse(judge_unmasked_start(info, **near, every_voxel=(-1.10, -1.05)))
        self.assertEqual((info["metric_stage_reached_every_voxel"], info["metric_unmasked_level_every_voxel"]),
                         (-1.10, -1.05))
        self.assertFalse(judge_unmasked_start(info, **near, every_voxel=(-1.10, -1.105)))  # within the 1% margin
        self.assertTrue(judge_unmasked_start(info, **near, every_voxel=(-1.05, -1.10)))
        self.assertTrue(info["used"])
        # far apart, the check metric decides alone, as before
        far = dict(near, apart_mm=4.0)
        self.assertTrue(judge_unmasked_start({}, **far))
        self.assertTrue(judge_unmasked_start({}, **far, every_voxel=(-1.10, -1.05)))
        self.assertFalse(judge_unmasked_start({}, **dict(far, score=-0.381), every_voxel=(-1.05, -1.10)))

    def test_the_stage_is_reported_from_the_initializers_start(self):
        # both masks, seed 2: the second run's start (the unmasked coarse level, -0.4446) had been reported as the
        # stage's and the registration's "before" (the initializer's start scored -0.05), and the stage as "did
        # not improve ... the transform before it was kept" (0.02% worse than that start), for a run that ended
        # 0.3 px off where it had been 21 px
        fixed, moving, truth = _pair(1.0)
        result = register(fixed, moving, seed=2, fixed_mask=sitk.Cast(fixed > 30, sitk.sitkUInt8),
                          moving_mask=sitk.Cast(moving > 30, sitk.sitkUInt8))
        start = result.parameters["stages"][0]["effective"]["masked_start"]
        self.assertTrue(start["used"])
        self.assertLess(transform_error(result.transform, truth, fixed)["mean"], TOLERANCE_PX)
        stage = result.stages[0]
        self.assertTrue(stage.accepted)
        # the initializer's start scores no better than what the stage first reached from it
        self.assertGreaterEqual(stage.metric_before, start["metric_stage_reached"])
        self.assertEqual(result.metric_before, stage.metric_before)
        self.assertLess(stage.metric_after, start["metric_stage_reached"])
        self.assertFalse([w for w in result.warnings if "did not improve" in w], result.warnings)

    def test_the_unmasked_coarse_level_reports_progress_and_can_be_cancelled(self):
        fixed, moving, _ = _pair(1.0)
        mask = sitk.Cast(fixed > 30, sitk.sitkUInt8)
        # the second run had gone back from 1.0 to 0.0
        _check_coarse_level_progress(self, lambda progress: register(fixed, moving, seed=1, fixed_mask=mask,
                                                                     progress=progress))

    def test_the_cli_says_the_stage_ran_again(self):
        import contextlib
        import io
        import os
        import tempfile

        from MultimodalFusionLib import cli

        fixed, moving, _ = _pair(1.0)
        with tempfile.TemporaryDirectory() as tmp:
            paths = [os.path.join(tmp, n) for n in ("fixed.nii.gz", "moving.nii.gz", "mask.nii.gz")]
            for image, path in zip((fixed, moving, sitk.Cast(fixed > 30, sitk.sitkUInt8)), paths):
                sitk.WriteImage(image, path)
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
                rc = cli.main(["register", paths[0], paths[1], "--fixed-mask", paths[2], "--seed", "1",
                               "-o", os.path.join(tmp, "out")])
        self.assertEqual(rc, 0)
        line = next(x for x in out.getvalue().splitlines() if x.strip().startswith("rigid: metric"))
        self.assertIn("run again from its coarsest level aligned without the masks", line)
        # from the initializer's start (-0.07), not the second run's (-0.42)
        self.assertGreater(float(line.split("metric ")[1].split(" ->")[0]), -0.2)

    def test_the_report_says_the_stage_ran_again(self):
        # the HTML report's stage table (mmfusion run, the Slicer module) had shown the second run's iterations
        # and stop reason as the stage's one run, where the CLI's stage line said it had run again
        import tempfile

        from MultimodalFusionLib import fusion, report
        from MultimodalFusionLib.registration.result import RAN_AGAIN_NOTE

        fixed, moving, _ = _pair(1.0)
        result = register(fixed, moving, stages=["rigid", "affine"], seed=1,
                          fixed_mask=sitk.Cast(fixed > 30, sitk.sitkUInt8))
        self.assertTrue(result.parameters["stages"][0]["effective"]["masked_start"]["used"])
        unmasked = register(fixed, moving, stages=["rigid"], seed=1)
        torch_like = dict(result.to_dict(), parameters={"stages": ["rigid", "affine"]})  # the torch backend's record
        pages = []
        with tempfile.TemporaryDirectory() as tmp:
            for registration in (result, unmasked, torch_like):
                html = report.write_report(tmp, inputs={"fixed": fixed, "moving": moving},
                                           fusions=[fusion.fuse(fixed, moving, "average")], metrics={},
                                           registration=registration)["html"]
                with open(html, encoding="utf-8") as f:
                    pages.append(f.read())
        rows = [row for row in pages[0].split("<tr>") if row.startswith('<td class="name">')]
        self.assertIn(f'<td class="name">rigid ({RAN_AGAIN_NOTE})</td>', rows[0])
        self.assertNotIn(RAN_AGAIN_NOTE, "".join(rows[1:]))  # the affine stage ran once
        self.assertNotIn(RAN_AGAIN_NOTE, pages[1])
        self.assertNotIn(RAN_AGAIN_NOTE, pages[2])


def _box_at(image: sitk.Image, point, half: int = 10) -> sitk.Image:
    """A square mask of ``2 * half`` pixels a side on ``image``, centred at the physical ``point``."""
    arr = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
    x, y = image.TransformPhysicalPointToIndex(point)
    arr[y - half:y + half, x - half:x + half] = 1
    mask = sitk.GetImageFromArray(arr)
    mask.CopyInformation(image)
    return mask


def _geometry_start(fixed: sitk.Image, moving: sitk.Image) -> sitk.Transform:
    """The 'geometry' initializer's start (the images' centres aligned), to give as an initial transform: the same
    run as from the initializer, without the masked first stage's check."""
    centre = [image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in image.GetSize()])
              for image in (fixed, moving)]
    return sitk.TranslationTransform(2, [m - f for f, m in zip(*centre)])


def _torch_box(pixel_mm: float, seed: int, share: float = 0.6, **kwargs):
    """The default torch rigid stage (one thread) on the pair with a box fixed mask: (error px, result)."""
    fixed, moving, truth = _pair(pixel_mm)
    result = register(fixed, moving, seed=seed, fixed_mask=_box(fixed, share), backend="torch", **kwargs)
    return transform_error(result.transform, truth, fixed)["mean"] / pixel_mm, result


class _OneTorchThread(unittest.TestCase):
    def setUp(self) -> None:
        import torch

        self._threads = torch.get_num_threads()
        torch.set_num_threads(1)  # same seed, same thread count: the same result

    def tearDown(self) -> None:
        import torch

        torch.set_num_threads(self._threads)


def _masked_start(result) -> dict:
    """metrics.json's ``masked_start``: beside the first stage's settings (SimpleITK), or the settings' (torch)."""
    owner = result.parameters if result.backend == "torch" else result.parameters["stages"][0]
    return owner["effective"]["masked_start"]


class SecondTryNearTie(_OneTorchThread):
    def test_a_second_run_that_ends_a_little_worse_is_a_small_change_not_a_failure(self):
        # a box over the middle of the moving image: the unmasked coarse level ends at the answer, and the stage run
        # again from there ended 0.08-0.16% worse on the masked metric (its first steps move off and it comes back),
        # so that coarse end was kept, within 0.3 px of the truth; the warning had said the stage "made the masked
        # metric worse", to "Check the result" and to change the masks
        # (torch seed 0 had been this case; since its MI counts only the samples inside the moving image, a2dfbd7, that
        # run's second try ends better and is accepted, 0.21 px off: seed 1, 0.09 px, was the near tie then.) The
        # torch case is the box over 40%: over 60% the masked first run's end depends on the CPU's kernels (its samples
        # start on the moving voxel centres, where bilinear sampling's gradient is one-sided, and torch's vectorised
        # and scalar kernels take other sides for 110 of 3640 samples): with AVX2/AVX-512 it ends far off and the
        # stage runs again (seeds 1-2 near ties), with ATEN_CPU_CAPABILITY=default it reaches the answer and is not
        # run again (seeds 0-7), so that seed failed there. Over 40%, seeds 0, 2 and 3 of 0-3 are near ties with
        # either kernels (0.012 px off). The sitk 3 mm case was seed 2 until the sampling floor counted the samples on
        # the fixed image's content (its zero background is 44% of the grid): that run's second try now ends better and
        # is accepted; seed 0 is the near tie there (0.018 px). The torch case was seed 0 until its mutual information
        # drew its samples from the fixed image's content and a rim (the slice's 20 px zero border left out): seeds 0,
        # 1, 3, 4 and 7 of 0-7 now run again and end better (0.15-0.40 px), seeds 2, 5 and 6 are near ties (0.007 px;
        # 0.009 with ATEN_CPU_CAPABILITY=default)
        for backend, pixel_mm, share, seed in (("sitk", 1.0, 0.4, 1), ("sitk", 3.0, 0.6, 0), ("torch", 1.0, 0.4, 2)):
            with self.subTest(backend=backend, pixel_mm=pixel_mm, share=share, seed=seed):
                fixed, moving, truth = _pair(pixel_mm)
                result = register(fixed, moving, seed=seed, moving_mask=_box(moving, share), backend=backend)
                self.assertLess(transform_error(result.transform, truth, fixed)["mean"] / pixel_mm, TOLERANCE_PX)
                start = _masked_start(result)
                self.assertTrue(start["used"], start)
                self.assertFalse(start["second_try_accepted"], start)
                said = [w for w in result.warnings if "run again" in w]
                self.assertEqual(len(said), 1, result.warnings)
                self.assertIn("A small change", said[0])
                self.assertNotIn("Check the result", said[0])
                self.assertTrue(result.stages[0].accepted)


class TorchSecondTry(_OneTorchThread):
    """The torch backend's masked first stage, with the SimpleITK backend's second try and its record."""

    def test_masks_inside_the_head_recover_the_answer(self):
        # had ended 19.9 px (box over 60%, every seed at 1 and 3 mm), 64 px (box over 40%) and 21-23 px (the head
        # dilated by 3 px) off, accepted with no warning
        fixed, _, _ = _pair(1.0)
        dilated = sitk.BinaryDilate(sitk.Cast(fixed > 30, sitk.sitkUInt8), [3, 3])
        runs = [("box 60%", 1.0, 0, None), ("box 40%", 3.0, 1, None), ("head dilated by 3 px", 1.0, 2, dilated)]
        for name, pixel_mm, seed, mask in runs:
            with self.subTest(mask=name, pixel_mm=pixel_mm, seed=seed):
                if mask is None:
                    error, result = _torch_box(pixel_mm, seed, 0.6 if "60" in name else 0.4)
                else:
                    f, m, truth = _pair(pixel_mm)
                    result = register(f, m, seed=seed, fixed_mask=mask, backend="torch")
                    error = transform_error(result.transform, truth, f)["mean"] / pixel_mm
                self.assertLess(error, TOLERANCE_PX)
                start = result.parameters["effective"]["masked_start"]
                self.assertTrue(start["used"], start)
                self.assertTrue(start["second_try_accepted"])
                self.assertLess(start["metric_unmasked_level"], start["metric_stage_reached"])
                self.assertGreater(start["apart_mm"], 0.5 * start["coarse_voxel_mm"])
                # reported from the initializer's start, as on the SimpleITK backend
                stage = result.stages[0]
                self.assertTrue(stage.accepted)
                self.assertEqual(stage.metric_before, result.metric_before)
                self.assertLess(stage.metric_after, start["metric_stage_reached"])
                self.assertFalse([w for w in result.warnings if "worse" in w], result.warnings)

    def test_masks_that_barely_meet_at_the_start_are_judged_at_the_coarse_levels_end(self):
        # a 20x20 px box on each image at the same anatomy: 7 voxels inside both at the 'geometry' start, so the masked
        # metric there counted the fixed mask alone, and the check had taken that for the unmasked coarse level's end
        # (where all 400 are inside both): refused as "too few voxels ... at the unmasked coarse level's end", the
        # stage 33 px off
        fixed, moving, truth = _pair(1.0)
        centre = fixed.TransformContinuousIndexToPhysicalPoint([128, 128])
        result = register(fixed, moving, seed=0, fixed_mask=_box_at(fixed, centre),
                          moving_mask=_box_at(moving, truth.TransformPoint(centre)), backend="torch")
        start = result.parameters["effective"]["masked_start"]
        self.assertNotIn("reason", start)
        self.assertTrue(start["used"], start)
        self.assertLess(transform_error(result.transform, truth, fixed)["mean"], TOLERANCE_PX)
        # 25 pixels a box at shrink factor 4: the run returned left the moving mask out there too, and says so
        self.assertEqual(len([w for w in result.warnings if "moving mask was left out of the rigid" in w]), 1,
                         result.warnings)

    def test_a_stage_run_again_says_only_its_own_moving_mask_left_out(self):
        # 50x50 px boxes at the same anatomy: the first run, from the 'geometry' start, left the moving mask out at
        # the coarse levels (too few pixels inside both); the run from the coarse level's end, which is returned,
        # never did. The first run's "left out of the rigid stage" had stayed in the result
        fixed, moving, truth = _pair(1.0)
        centre = fixed.TransformContinuousIndexToPhysicalPoint([128, 128])
        masks = {"fixed_mask": _box_at(fixed, centre, 25), "moving_mask": _box_at(moving, truth.TransformPoint(centre), 25)}
        result = register(fixed, moving, seed=0, backend="torch", **masks)
        self.assertTrue(result.parameters["effective"]["masked_start"]["used"])
        self.assertLess(transform_error(result.transform, truth, fixed)["mean"], TOLERANCE_PX)
        self.assertFalse([w for w in result.warnings if "left out" in w], result.warnings)
        # the first run alone (the same start given, which is never checked) warns
        first = register(fixed, moving, seed=0, backend="torch", initial_transform=_geometry_start(fixed, moving),
                         **masks)
        self.assertNotIn("masked_start", first.parameters["effective"])
        self.assertEqual(len([w for w in first.warnings if "moving mask was left out of the rigid" in w]), 1,
                         first.warnings)

    def test_a_stage_run_again_warns_where_its_second_run_left_the_moving_mask_out(self):
        # 30x30 px boxes at the same anatomy: enough inside both at the 'geometry' start (metric_before counts the
        # moving mask), left out at the coarse levels of the first run (its flag dropped: run again) and of the run
        # from the coarse level's end, which is returned. The warning is that second run's alone: dropping its flag
        # passed every test, the 20x20 px boxes' warning coming from their start too
        fixed, moving, truth = _pair(1.0)
        centre = fixed.TransformContinuousIndexToPhysicalPoint([128, 128])
        result = register(fixed, moving, seed=0, backend="torch", fixed_mask=_box_at(fixed, centre, 15),
                          moving_mask=_box_at(moving, truth.TransformPoint(centre), 15))
        self.assertTrue(result.parameters["effective"]["masked_start"]["used"])
        self.assertLess(transform_error(result.transform, truth, fixed)["mean"], TOLERANCE_PX)
        self.assertEqual(len([w for w in result.warnings if "moving mask was left out of the rigid" in w]), 1,
                         result.warnings)

    def test_a_masked_run_that_was_right_is_kept_bit_for_bit(self):
        # the head dilated by 8 px: the stage's own end and the unmasked coarse level's lie 0.05 coarse voxels apart
        # (the metric 0.15% apart), so it is not run again, and the affine stage after it draws the samples it drew
        # before the check: the same transform as from the same start given as an initial transform (never checked)
        from MultimodalFusionLib.registration.torch_backend import TorchRegistrationParameters

        fixed, moving, truth = _pair(1.0)
        mask = sitk.BinaryDilate(sitk.Cast(fixed > 30, sitk.sitkUInt8), [8, 8])
        parameters = TorchRegistrationParameters(stages=["rigid", "affine"], initializer="geometry",
                                                 linear_iterations=[60, 30, 15])
        checked = register(fixed, moving, parameters, seed=1, fixed_mask=mask, backend="torch")
        start = checked.parameters["effective"]["masked_start"]
        self.assertFalse(start["used"], start)
        self.assertLess(start["apart_mm"], 0.5 * start["coarse_voxel_mm"])
        unchecked = register(fixed, moving, parameters, seed=1, fixed_mask=mask, backend="torch",
                             initial_transform=_geometry_start(fixed, moving))
        self.assertNotIn("masked_start", unchecked.parameters["effective"])
        self.assertEqual(checked.transform.GetParameters(), unchecked.transform.GetParameters())
        self.assertLess(transform_error(checked.transform, truth, fixed)["mean"], TOLERANCE_PX)
        # nor is a run without a mask
        unmasked = register(fixed, moving, parameters, seed=1, backend="torch")
        self.assertNotIn("masked_start", unmasked.parameters["effective"])

    def test_the_unmasked_coarse_level_reports_progress_and_can_be_cancelled(self):
        _check_coarse_level_progress(self, lambda progress: _torch_box(1.0, 0, progress=progress))

    def test_the_cli_and_the_report_say_the_stage_ran_again(self):
        # both read result.ran_again, which had looked only at a SimpleITK stage's settings: a torch run that ran
        # again was shown as run once
        import contextlib
        import io
        import json
        import os
        import tempfile

        from MultimodalFusionLib import cli, fusion, report
        from MultimodalFusionLib.registration.result import RAN_AGAIN_NOTE

        fixed, moving, _ = _pair(1.0)
        with tempfile.TemporaryDirectory() as tmp:
            paths = [os.path.join(tmp, n) for n in ("fixed.nii.gz", "moving.nii.gz", "mask.nii.gz")]
            for image, path in zip((fixed, moving, _box(fixed, 0.6)), paths):
                sitk.WriteImage(image, path)
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
                rc = cli.main(["register", paths[0], paths[1], "--fixed-mask", paths[2], "--seed", "0",
                               "--backend", "torch", "-o", os.path.join(tmp, "out")])
            self.assertEqual(rc, 0)
            line = next(x for x in out.getvalue().splitlines() if x.strip().startswith("rigid: metric"))
            self.assertIn(RAN_AGAIN_NOTE, line)
            with open(os.path.join(tmp, "out", "metrics.json"), encoding="utf-8") as f:
                recorded = json.load(f)
            self.assertTrue(recorded["parameters"]["effective"]["masked_start"]["used"])

            html = report.write_report(os.path.join(tmp, "report"), inputs={"fixed": fixed, "moving": moving},
                                       fusions=[fusion.fuse(fixed, moving, "average")], metrics={},
                                       registration=recorded)["html"]
            with open(html, encoding="utf-8") as f:
                self.assertIn(f'<td class="name">rigid ({RAN_AGAIN_NOTE})</td>', f.read())


class StageSeconds(_OneTorchThread):
    def test_a_checked_stage_counts_its_check_in_its_seconds(self):
        # a stage that was checked and not run again had reported its one run's seconds: the unmasked coarse level
        # and its judging were in no stage (sitk, fixed > 30, seed 0: the stage 0.10 s of 0.20 s; torch, the head
        # dilated by 8 px: 0.75 of 1.0 s). The stage's seconds now hold every progress message of its run and its
        # check: from its first iteration to the check's last message, timed by the same clock. (This had compared
        # the registration's set-up, outside the stages, with the check's time: two unrelated intervals, 0.10 s
        # against 0.25 s for the first torch run of a process, which a busier or slower machine need not keep.)
        import time

        fixed, moving, _ = _pair(1.0)
        head = sitk.Cast(fixed > 30, sitk.sitkUInt8)
        runs = [("sitk", 0, head, False), ("sitk", 1, head, True),
                ("torch", 1, sitk.BinaryDilate(head, [8, 8]), False), ("torch", 0, _box(fixed, 0.6), True)]
        for backend, seed, mask, again in runs:
            with self.subTest(backend=backend, seed=seed, again=again):
                seen: list[tuple[float, str]] = []
                result = register(fixed, moving, seed=seed, fixed_mask=mask, backend=backend,
                                  progress=lambda f, m, seen=seen: seen.append((time.perf_counter(), m)))
                self.assertEqual(_masked_start(result)["used"], again)
                # the stage's messages: its "starting" line comes before its clock starts (sitk)
                first = next(t for t, m in seen if m.startswith("rigid") and "starting" not in m)
                checked = next(t for t, m in seen if "checking the result" in m)
                checked_to = max(t for t, m in seen if "without the masks" in m)
                self.assertGreater(checked_to, checked)
                self.assertEqual(len(result.stages), 1)
                self.assertGreaterEqual(result.stages[0].seconds, checked_to - first,
                                        (checked_to - first, checked - first, result.stages[0].seconds))
                self.assertLessEqual(result.stages[0].seconds, result.seconds)


class IgnoredLearningRate(unittest.TestCase):
    def test_a_line_search_rigid_or_affine_stage_says_its_learning_rate_is_not_used(self):
        fixed, moving, _ = _pair(1.0)
        for name in ("rigid", "affine"):
            with self.subTest(stage=name):
                stage = StageParameters(name=name, optimizer="gradient_descent_line_search", learning_rate=0.001,
                                        iterations=5)
                warnings = register(fixed, moving, RegistrationParameters(stages=[stage]), seed=1).warnings
                said = [w for w in warnings if "learning_rate 0.001 is not used" in w]
                self.assertEqual(len(said), 1, warnings)
                self.assertIn(f"Stage '{name}'", said[0])
                self.assertIn("optimizer 'regular_step'", said[0])
                self.assertIn("leave learning_rate out", said[0])

    def test_no_warning_where_nothing_is_set_or_the_step_is_taken(self):
        fixed, _, _ = _pair(1.0)
        quiet = [StageParameters(name="rigid", optimizer="gradient_descent_line_search"),       # not given
                 StageParameters(name="rigid", learning_rate=0.5),                            # regular_step takes it
                 StageParameters(name="bspline", optimizer="gradient_descent_line_search",    # unit scales: taken
                                 learning_rate=0.5)]
        for stage in quiet:
            with self.subTest(stage=stage.name, optimizer=stage.optimizer):
                self.assertIsNone(ignored_learning_rate_warning(stage, fixed))
        for preset in list_presets():
            for stage in load_preset(preset).stages:
                with self.subTest(preset=preset, stage=stage.name):
                    self.assertIsNone(ignored_learning_rate_warning(stage, fixed))


if __name__ == "__main__":
    unittest.main()
