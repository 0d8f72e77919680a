"""Tests of the fusion and registration metrics: known answers and independent implementations."""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import os
import sys
import unittest
from typing import Any, Iterator
from unittest import mock

import numpy as np
import SimpleITK as sitk

from MultimodalFusionLib import data, fusion, io, metrics
from MultimodalFusionLib.errors import InputError


def _pair8() -> tuple[np.ndarray, np.ndarray]:
    d = data.testing_data_dir()
    a = sitk.GetArrayFromImage(io.read_image(d / "BrainT1Slice.png")).astype(np.float64)
    b = sitk.GetArrayFromImage(io.read_image(d / "BrainProtonDensitySlice.png")).astype(np.float64)
    return np.round(a), np.round(b)


class UndefinedMetricsTest(unittest.TestCase):
    def test_qabf_without_any_edge_is_nan_without_a_warning(self) -> None:
        import warnings

        flat = np.zeros((32, 32))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            values = metrics.fusion_metrics(flat, flat, flat)
        self.assertTrue(np.isnan(values["Qabf"]))  # nothing to preserve: undefined, not 0 or 1


class SingleMetricKnownAnswersTest(unittest.TestCase):
    def test_entropy(self) -> None:
        self.assertEqual(metrics.entropy(np.full((8, 8), 77.0)), 0.0)  # constant: 0 bits
        two = np.zeros((4, 4))
        two[:, :2] = 200
        self.assertAlmostEqual(metrics.entropy(two), 1.0)  # two equally likely values: 1 bit
        every = np.arange(256, dtype=np.float64).reshape(16, 16)
        self.assertAlmostEqual(metrics.entropy(every), 8.0)  # all 256 values once: 8 bits
        # 1/2, 1/4, 1/4 -> 1.5 bits
        self.assertAlmostEqual(metrics.entropy(np.array([[0, 0, 1, 2]], dtype=float)), 1.5)

    def test_sd_and_sf_by_hand(self) -> None:
        img = np.array([[0.0, 2.0], [4.0, 6.0]])
        self.assertAlmostEqual(metrics.standard_deviation(img), math.sqrt(5.0))
        # row differences: 2, 2 -> mean square 4; column differences: 4, 4 -> 16; sqrt(20)
        self.assertAlmostEqual(metrics.spatial_frequency(img), math.sqrt(20.0))
        self.assertEqual(metrics.spatial_frequency(np.full((5, 5), 9.0)), 0.0)

    def test_mutual_information_matches_sklearn(self) -> None:
        from sklearn.metrics import mutual_info_score

        a, b = _pair8()
        self.assertAlmostEqual(metrics.mutual_information(a, b), mutual_info_score(a.ravel(), b.ravel()), places=10)
        rng = np.random.default_rng(4)
        x = rng.integers(0, 256, (40, 50)).astype(float)
        y = np.clip(x // 3 + rng.integers(0, 20, x.shape), 0, 255)
        self.assertAlmostEqual(metrics.mutual_information(x, y), mutual_info_score(x.ravel(), y.ravel()), places=10)

    def test_mutual_information_known_answers(self) -> None:
        two = np.zeros((4, 4))
        two[:, :2] = 255
        self.assertAlmostEqual(metrics.mutual_information(two, two), math.log(2.0))  # = H in nats
        self.assertAlmostEqual(metrics.mutual_information(two, 255 - two), math.log(2.0))  # any bijection
        self.assertEqual(metrics.mutual_information(two, np.full((4, 4), 30.0)), 0.0)  # constant: 0

    def test_ssim_matches_scikit_image(self) -> None:
        from skimage.metrics import structural_similarity

        a, b = _pair8()
        for data_range in (2.0, 255.0):
            self.assertAlmostEqual(metrics.ssim(a, b, data_range=data_range),
                                   structural_similarity(a, b, data_range=data_range), places=10)
        self.assertAlmostEqual(metrics.ssim(a, a), 1.0)
        self.assertAlmostEqual(metrics.ssim(np.full((9, 9), 5.0), np.full((9, 9), 5.0)), 1.0)

    def test_psnr_matches_scikit_image(self) -> None:
        from skimage.metrics import peak_signal_noise_ratio

        a, b = _pair8()
        self.assertAlmostEqual(metrics.psnr(a, b), peak_signal_noise_ratio(a, b, data_range=255), places=10)
        self.assertEqual(metrics.psnr(a, a), float("inf"))
        # MSE 1 on an 8-bit image: 20 log10(255)
        self.assertAlmostEqual(metrics.psnr(a, a + 1.0), 20 * math.log10(255.0))

    def test_scd_by_hand(self) -> None:
        a = np.array([[1.0, 2.0], [3.0, 4.0]])
        b = np.array([[4.0, 1.0], [2.0, 2.0]])
        f = a + b  # F - B = A, F - A = B: both correlations are 1
        self.assertAlmostEqual(metrics.scd(f, a, b), 2.0)
        self.assertTrue(math.isnan(metrics.scd(a, a, b)))  # F - A constant: undefined, as in Evaluator.py

    def test_vif_known_answers(self) -> None:
        a, b = _pair8()
        self.assertAlmostEqual(metrics.vif(a, a), 1.0, places=6)
        self.assertLess(metrics.vif(a, b), 0.6)
        blurred = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(a), 2.0))
        self.assertLess(metrics.vif(a, blurred), metrics.vif(a, a))
        self.assertEqual(metrics.vif(np.full((40, 40), 3.0), np.full((40, 40), 3.0)), 1.0)  # NaN -> 1

    def test_qabf_known_answers(self) -> None:
        step = np.zeros((16, 16))
        step[:, 8:] = 100.0
        # F = A = B: every gradient is preserved; with Evaluator.py's rule for equal magnitudes
        # (G = g_F, large here) the value is the product of the two sigmoid ceilings
        tg, ta = 0.9994, 0.9879
        expected = tg / (1 + math.exp(-15 * (100 - 0.5))) * ta / (1 + math.exp(-22 * (1 - 0.8)))
        self.assertAlmostEqual(metrics.qabf(step, step, step), expected, places=6)
        lost = metrics.qabf(np.zeros((16, 16)) + 50, step, step)  # the edge is gone (only the border
        self.assertLess(lost, 0.3 * expected)                     # of the zero-padded Sobel remains)
        self.assertTrue(math.isnan(metrics.qabf(step, np.zeros((16, 16)), np.zeros((16, 16)))))


class FusionMetricsTest(unittest.TestCase):
    def test_published_keys_and_single_source_values(self) -> None:
        a, b = _pair8()
        f = np.round((a + b) / 2)
        m = metrics.fusion_metrics(f, a.astype(np.uint8), b.astype(np.uint8))
        for key in metrics.FUSION_METRICS + ("PSNR", "SSIM_mean", "MI_mean", "VIF_mean"):
            self.assertIn(key, m)
        self.assertAlmostEqual(m["SSIM"], m["SSIM_A"] + m["SSIM_B"])
        self.assertAlmostEqual(m["SSIM_mean"], m["SSIM"] / 2)
        self.assertAlmostEqual(m["MI"], metrics.mutual_information(f, a) + metrics.mutual_information(f, b))
        self.assertAlmostEqual(m["VIF"], metrics.vif(a, f) + metrics.vif(b, f))
        self.assertAlmostEqual(m["EN"], metrics.entropy(f))
        self.assertAlmostEqual(m["SD"], np.std(f))

    def test_identical_images(self) -> None:
        a, _ = _pair8()
        m = metrics.fusion_metrics(a, a.astype(np.uint8), a.astype(np.uint8))
        self.assertAlmostEqual(m["SSIM"], 2.0)
        self.assertAlmostEqual(m["VIF"], 2.0, places=6)
        self.assertEqual(m["PSNR"], float("inf"))
        self.assertAlmostEqual(m["MI_A"], metrics.entropy(a) * math.log(2.0))  # MI(A, A) = H(A), in nats

    def test_images_and_fusion_results(self) -> None:
        d = data.testing_data_dir()
        a = io.read_image(d / "BrainT1Slice.png")
        b = io.read_image(d / "BrainProtonDensitySlice.png")
        res = fusion.fuse(a, b, "average")
        from_result = metrics.fusion_metrics(res, a, b)
        from_image = metrics.fusion_metrics(res.grey_image, a, b)
        self.assertEqual(from_result, from_image)
        # the 8-bit rule: float sources are min-max scaled, the 0..255 fused image is kept
        np.testing.assert_array_equal(metrics.to_8bit(res, fused=True),
                                      np.clip(np.round(sitk.GetArrayFromImage(res.grey)), 0, 255))
        self.assertEqual(metrics.to_8bit(a).max(), 255)
        with self.assertRaises(InputError):
            metrics.fusion_metrics(res, a, sitk.Shrink(b, [2, 2]))

    def test_3d_volume(self) -> None:
        rng = np.random.default_rng(0)
        vol = np.zeros((6, 32, 32))
        vol[1:5] = rng.integers(0, 256, (4, 32, 32))
        m = metrics.fusion_metrics(vol, vol.astype(np.uint8), vol.astype(np.uint8))
        self.assertAlmostEqual(m["SSIM"], 2.0)  # empty slices 0 and 5 are skipped, not counted as 1
        self.assertAlmostEqual(m["SF"], np.mean([metrics.spatial_frequency(vol[k]) for k in range(1, 5)]))


    def test_fused_float_image_on_the_0_to_1_scale(self) -> None:
        # a fused image saved as float 0..1 (torch/MONAI outputs, skimage's float images) is 8-bit as
        # skimage's img_as_ubyte makes it, not rounded to 0/1 as if it were on the 0..255 scale
        from skimage.util import img_as_ubyte

        a, b = _pair8()
        f01 = (a + b) / 510.0
        np.testing.assert_array_equal(metrics.to_8bit(f01, fused=True), img_as_ubyte(f01))
        from_01 = metrics.fusion_metrics(sitk.GetImageFromArray(f01), a.astype(np.uint8), b.astype(np.uint8))
        from_8bit = metrics.fusion_metrics(img_as_ubyte(f01), a.astype(np.uint8), b.astype(np.uint8))
        self.assertEqual(from_01, from_8bit)
        # a fused image holding only the grey levels 0 and 1 stays on the 0..255 scale
        np.testing.assert_array_equal(metrics.to_8bit(np.round(f01), fused=True), np.round(f01))

    def test_one_slice_volumes_are_scored_as_their_slice(self) -> None:
        # a 2D slice saved as a volume (Slicer, ITK-SNAP, `mmfusion fuse` of one) is scored as the 2D image it is,
        # whichever axis is flat: a coronal or sagittal one had been cut across its slice into lines of one pixel,
        # "smaller than the SSIM window", so `mmfusion evaluate` refused what `fuse` had scored
        a, b = _pair8()
        f = np.round(0.6 * a + 0.4 * b)
        flat = metrics.fusion_metrics(f, a.astype(np.uint8), b.astype(np.uint8))
        def volume(arr: np.ndarray, axis: int) -> sitk.Image:  # ITK's axis ``axis`` of length 1, 2.5 mm thick
            image = sitk.GetImageFromArray(np.expand_dims(arr, 2 - axis).astype(np.uint8))
            image.SetSpacing([0.9] * axis + [2.5] + [0.9] * (2 - axis))
            return image

        for axis in (0, 1, 2):  # ITK's x, y, z flat: sagittal, coronal, axial
            images = [volume(v, axis) for v in (f, a, b)]
            self.assertEqual(images[0].GetSize()[axis], 1)
            self.assertIsNone(metrics.scored_slice_axis(images[1]), axis)
            self.assertEqual(metrics.fusion_metrics(*images), flat, axis)
            # and against the 2D slice itself (a fused PNG of a one-slice volume's fusion)
            self.assertEqual(metrics.fusion_metrics(f, *images[1:]), flat, axis)
        with self.assertRaises(InputError):  # a line of voxels is still no image
            metrics.fusion_metrics(*(v[:1][None] for v in (f, a, b)))

    def test_inputs_that_are_not_grey_or_colour_values_are_refused(self) -> None:
        # a complex image had been scored from its real part (numpy's ComplexWarning only), a 2-component one
        # had been an IndexError from the luminance
        a, b = _pair8()
        with self.assertRaises(InputError):
            metrics.fusion_metrics(a + 1j * b, a, b)
        two = sitk.Compose(sitk.GetImageFromArray(a), sitk.GetImageFromArray(b))
        with self.assertRaisesRegex(InputError, "2 components"):
            metrics.fusion_metrics(two, a, b)

    def test_entropy_of_a_constant_image_is_zero_not_minus_zero(self) -> None:
        # -sum(1 * log2(1)) is -0.0: printed as 0.000, but metrics.json held -0.0
        value = metrics.fusion_metrics(np.full((9, 9), 7.0), np.full((9, 9), 7.0), np.full((9, 9), 7.0))["EN"]
        self.assertEqual(math.copysign(1.0, value), 1.0)

    def test_vif_of_images_smaller_than_every_window_is_undefined(self) -> None:
        # below 17 pixels no VIF scale fits: nothing was measured, so NaN (n/a), not the perfect score 1
        rng = np.random.default_rng(2)
        a = rng.integers(0, 256, (16, 16)).astype(np.uint8)
        b = rng.integers(0, 256, (16, 16)).astype(np.uint8)
        self.assertTrue(math.isnan(metrics.vif(a, np.zeros((16, 16)))))
        m = metrics.fusion_metrics(np.zeros((16, 16)), a, b)
        for key in ("VIF", "VIF_A", "VIF_B", "VIF_mean"):
            self.assertTrue(math.isnan(m[key]), key)
        self.assertLess(metrics.vif(np.pad(a, 1), np.zeros((18, 18))), 0.01)  # one scale fits: measured

    def test_ssim_of_images_under_its_window_is_undefined(self) -> None:
        """Under SSIM's 7-pixel window SSIM is NaN (n/a), as VIF under its 17-pixel one: fusion_metrics had raised
        "Image of shape (6, 64) is smaller than the SSIM window (7)", so `mmfusion run` on a 64x6 pair stopped after
        its registration and fusion. The other metrics are those of the image as before; a volume's slices alike,
        serial and from worker processes."""
        a, b = _pair8()
        strip_a, strip_b = a[100:106, :64], b[100:106, :64]
        fused = np.round((strip_a + strip_b) / 2)
        m = metrics.fusion_metrics(fused, strip_a, strip_b)
        for key in ("SSIM", "SSIM_A", "SSIM_B", "SSIM_mean", "VIF"):
            self.assertTrue(math.isnan(m[key]), key)
        for key in ("EN", "SD", "SF", "MI", "SCD", "Qabf", "PSNR"):
            self.assertTrue(math.isfinite(m[key]), key)
        self.assertEqual(m["SF"], metrics.spatial_frequency(fused))
        seven = metrics.fusion_metrics(np.round((a + b) / 2)[100:107, :64], a[100:107, :64], b[100:107, :64])
        self.assertTrue(math.isfinite(seven["SSIM"]))  # 7 pixels and more: measured
        volume = np.stack([np.roll(strip_a, k, axis=1) for k in range(4)], axis=1)  # slices (z) of 6 x 4 pixels
        serial = metrics.fusion_metrics(volume, volume, volume[::-1], workers=1)
        with _pool_for_small_volumes():
            pooled = metrics.fusion_metrics(volume, volume, volume[::-1], workers=2)
        self.assertTrue(math.isnan(serial["SSIM"]))
        self.assertEqual(str(serial), str(pooled))


def _pool_for_small_volumes():
    """Worker processes for the small test volumes too: PARALLEL_MIN_PIXELS lowered to 1 while in use."""
    from unittest import mock

    return mock.patch.object(metrics, "PARALLEL_MIN_PIXELS", 1)


class ParallelSlicesTest(unittest.TestCase):
    """A volume's per-slice metrics from worker processes equal the serial ones to the last bit."""

    @staticmethod
    def _volume() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng(3)
        z, y, x = np.mgrid[0:10, 0:48, 0:40]
        a = np.round(120 + 100 * np.sin(x / 5.0 + z) * np.cos(y / 7.0))
        b = np.round(np.clip(255 * np.exp(-((x - 20) ** 2 + (y - 24) ** 2) / 200.0) + rng.normal(0, 8, x.shape), 0, 255))
        a[0] = 0
        b[0] = 0  # an empty slice: skipped by both paths
        f = np.round((a + b) / 2)
        return f, a.astype(np.uint8), b.astype(np.uint8)  # 8-bit sources keep their values

    def test_parallel_equals_serial(self) -> None:
        f, a, b = self._volume()
        with _pool_for_small_volumes():
            parallel = metrics.fusion_metrics(f, a, b, workers=3)
        serial = metrics.fusion_metrics(f, a, b, workers=1)
        self.assertEqual(list(parallel), list(serial))  # same keys, same order
        for key in serial:
            self.assertEqual(np.float64(parallel[key]).tobytes(), np.float64(serial[key]).tobytes(), key)
        # and the single-slice metrics average exactly as a loop over the slices does
        keep = range(1, f.shape[0])
        a, b = a.astype(np.float64), b.astype(np.float64)
        self.assertEqual(serial["VIF_A"], float(np.mean([metrics.vif(a[k], f[k]) for k in keep])))
        self.assertEqual(serial["SSIM_B"], float(np.mean([metrics.ssim(f[k], b[k]) for k in keep])))

    def test_worker_count_honours_omp_num_threads(self) -> None:
        import os
        import sys

        saved = os.environ.get("OMP_NUM_THREADS")
        try:
            os.environ["OMP_NUM_THREADS"] = "1"
            self.assertEqual(metrics.metric_workers(), 1)
            os.environ["OMP_NUM_THREADS"] = "64"
            expected = len(os.sched_getaffinity(0)) if sys.platform.startswith("linux") else 1
            self.assertEqual(metrics.metric_workers(), expected)  # a cap, not a target
            os.environ["OMP_NUM_THREADS"] = "not a number"
            self.assertEqual(metrics.metric_workers(), expected)
        finally:
            if saved is None:
                os.environ.pop("OMP_NUM_THREADS", None)
            else:
                os.environ["OMP_NUM_THREADS"] = saved
        expected = 3 if sys.platform.startswith("linux") else 1
        self.assertEqual(metrics.metric_workers(3), expected)  # asked for explicitly
        self.assertEqual(metrics.metric_workers(0), 1)

    def test_no_worker_processes_outside_linux_even_when_asked(self) -> None:
        # the README: "other systems run serially"; the workers are forked, which macOS does not survive
        # reliably (Python spawns there by default): an explicit workers=N must not fork either
        import sys
        from unittest import mock

        import scipy.signal  # noqa: F401 (imported lazily by the metrics; under a faked sys.platform it fails)

        f, a, b = self._volume()
        forks = []
        with _pool_for_small_volumes(), mock.patch.object(sys, "platform", "darwin"), \
                mock.patch.object(os, "fork", side_effect=lambda: forks.append(1) or _no_fork()):
            self.assertEqual(metrics.metric_workers(4), 1)
            metrics.fusion_metrics(f, a, b, workers=4)
        self.assertEqual(forks, [])

    def test_no_worker_processes_by_default_from_a_job_thread(self) -> None:
        import threading

        seen = []
        worker = threading.Thread(target=lambda: seen.extend([metrics.metric_workers(), metrics.metric_workers(2)]))
        worker.start()
        worker.join()
        self.assertEqual(seen[0], 1)  # a thread's default (spawning re-imports the caller's script): the web app asks
        if sys.platform.startswith("linux"):
            self.assertEqual(seen[1], 2)  # asked for explicitly: the caller's choice

    def test_a_thread_that_asks_for_workers_spawns_them(self) -> None:
        """A thread other than the main one (the web app's job thread) forked its workers when it asked for them, which
        is not safe in a process whose other threads may hold locks; it spawns them now (fresh interpreters), the
        numbers the same to the last bit. A cancel at the first report, while they are still starting (importing),
        ends them at once too: none is left to take a chunk."""
        import multiprocessing
        import threading
        import time

        from MultimodalFusionLib.errors import OperationCancelled

        f, a, b = self._volume()
        serial = metrics.fusion_metrics(f, a, b, workers=1)
        before = {p.pid for p in multiprocessing.active_children()}
        started: dict[int, str] = {}

        def watch(fraction: float, text: str) -> None:  # the workers' command lines (the latest: after their exec)
            for process in multiprocessing.active_children():
                if process.pid not in before:
                    with open(f"/proc/{process.pid}/cmdline", "rb") as cmdline:
                        started[process.pid] = cmdline.read().decode(errors="replace")

        out: dict[str, Any] = {}

        def job() -> None:
            out["pooled"] = metrics.fusion_metrics(f, a, b, workers=2, progress=watch)
            try:  # cancelled at the first whole-volume metric, the pool just made: its workers are starting
                metrics.fusion_metrics(f, a, b, workers=2, progress=lambda fraction, text: "EN" not in text)
            except OperationCancelled:
                out["cancelled"] = True

        with mock.patch.object(metrics, "PARALLEL_MIN_PIXELS", 1):
            thread = threading.Thread(target=job)
            start = time.monotonic()
            thread.start()
            thread.join(120.0)
        self.assertEqual(_bits(out["pooled"]), _bits(serial))
        self.assertEqual(len(started), 2, started)
        for pid, cmdline in started.items():
            self.assertIn("spawn_main", cmdline, pid)  # the old code: forked, this process's own command line
        self.assertTrue(out.get("cancelled"))
        self.assertEqual([p.pid for p in multiprocessing.active_children() if p.pid not in before], [])
        self.assertLess(time.monotonic() - start, 60.0)

    def test_a_thread_spawns_no_workers_where_the_program_is_not_a_python(self) -> None:
        """A thread that asked for workers spawned them with whatever program multiprocessing starts: inside the 3D
        Slicer application (sys.executable is Slicer or its PythonSlicer launcher) or another embedding program that
        program itself, run with '-c ... --multiprocessing-fork' (Process.start() can wait on it for ever). The slices
        are scored in the process there, the same numbers."""
        import multiprocessing
        import multiprocessing.spawn
        import tempfile
        import threading

        f, a, b = self._volume()
        serial = metrics.fusion_metrics(f, a, b, workers=1)
        with tempfile.TemporaryDirectory() as tmp:
            app = os.path.join(tmp, "SlicerApp-real")  # an embedding program: it never reads a worker's start
            with open(app, "w") as script:
                script.write("#!/bin/sh\nsleep 3\n")
            os.chmod(app, 0o755)
            if isinstance(multiprocessing.spawn.get_executable(), bytes):  # as multiprocessing keeps it (3.11+)
                app = os.fsencode(app)  # type: ignore[assignment]
            for case, patch in (("slicer.app", _in_the_slicer_application()),
                                ("program", mock.patch.object(multiprocessing.spawn, "get_executable", lambda: app))):
                with self.subTest(case), patch, _pool_for_small_volumes():
                    before = {p.pid for p in multiprocessing.active_children()}
                    started: set[int] = set()

                    def watch(fraction: float, text: str, before: set[int] = before, started: set[int] = started) -> None:
                        started.update(p.pid for p in multiprocessing.active_children() if p.pid not in before)

                    out: dict[str, Any] = {}
                    thread = threading.Thread(
                        target=lambda out=out, watch=watch: out.update(metrics.fusion_metrics(f, a, b, workers=2,
                                                                                             progress=watch)))
                    thread.start()
                    thread.join(60.0)
                    self.assertEqual(started, set())  # the old code: two workers (spawned Pythons or that program)
                    self.assertEqual(_bits(out), _bits(serial))

    def test_no_worker_processes_inside_the_slicer_application(self) -> None:
        with _in_the_slicer_application():
            self.assertEqual(metrics.metric_workers(), 1)
            self.assertEqual(metrics.metric_workers(2), 2)  # asked for explicitly: the caller's choice

    def test_a_cancel_stops_the_metrics_at_their_next_report(self) -> None:
        """The fusion metrics reported no progress, so a Cancel (the web page's, Slicer's) took effect at their end
        only, 21-31 s after it on a BraTS volume scored on one core; they report before each whole-volume metric and
        each slice (a pool: while it scores them) and stop at the first report after a cancel."""
        from MultimodalFusionLib.errors import OperationCancelled

        f, a, b = self._volume()
        for workers in (1, 3):
            with self.subTest(workers=workers), _pool_for_small_volumes():
                reports: list[tuple[float, str]] = []
                values = metrics.fusion_metrics(f, a, b, workers=workers,
                                                progress=lambda fraction, text, seen=reports: seen.append((fraction, text)))
                self.assertEqual(values, metrics.fusion_metrics(f, a, b, workers=workers))  # the same numbers
                fractions = [fraction for fraction, _ in reports]
                self.assertEqual(fractions, sorted(fractions))
                self.assertTrue(0.0 <= fractions[0] and fractions[-1] <= 1.0, fractions)
                messages = [message for _, message in reports]
                self.assertIn("fusion metrics: MI_B", messages)
                slices = [m for m in messages if "slice" in m]
                if workers == 1:  # one report before each of the 9 slices with content
                    self.assertEqual(slices, [f"fusion metrics: slice {k} of 9" for k in range(1, 10)])
                else:  # every quarter second while the pool scores them, in the same words (had been "0 of 9 slices")
                    self.assertTrue(slices, messages)
                    for message in slices:
                        self.assertRegex(message, r"^fusion metrics: slice [1-9] of 9$")

                reports.clear()

                def cancel_at_the_slices(fraction: float, message: str, seen: list = reports) -> bool:
                    seen.append((fraction, message))
                    return "slice" not in message

                with self.assertRaises(OperationCancelled):
                    metrics.fusion_metrics(f, a, b, workers=workers, progress=cancel_at_the_slices)
                self.assertIn("slice", reports[-1][1])  # stopped at the report that cancelled: none after it
                self.assertEqual(sum("slice" in message for _, message in reports), 1)
        # the Slicer Logic's fuseVolumes and `mmfusion run` score through fuse_and_evaluate: cancelled there too
        from MultimodalFusionLib import pipeline

        reports.clear()
        with self.assertRaises(OperationCancelled):
            pipeline.fuse_and_evaluate(sitk.GetImageFromArray(a), sitk.GetImageFromArray(b), ["average"],
                                       progress=cancel_at_the_slices)
        self.assertIn("slice", reports[-1][1])

    def test_the_reports_of_fuse_and_evaluate_name_the_method_scored(self) -> None:
        """`mmfusion run` and the Slicer Logic fuse and score several methods one after another: the metrics' reports
        ("fusion metrics: slice 3 of 9") had replaced "evaluating <method>", so the bar or dialog no longer said which
        method was being scored, 20-40 s each on a BraTS volume."""
        from MultimodalFusionLib import pipeline

        f, a, b = self._volume()
        reports: list[str] = []
        pipeline.fuse_and_evaluate(sitk.GetImageFromArray(a), sitk.GetImageFromArray(b), ["average", "pca"],
                                   progress=lambda fraction, text: reports.append(text))
        scoring = [text for text in reports if "fusion metrics" in text]
        for method in ("average", "pca"):
            self.assertIn(f"evaluating {method}: fusion metrics: slice 1 of 9", scoring)
        self.assertTrue(all(text.startswith("evaluating ") for text in scoring), scoring)

    def test_a_cancel_ends_the_worker_processes_at_once(self) -> None:
        """A cancel had shut the pool down without waiting (``shutdown(wait=False)``): its workers went on scoring the
        chunks they had taken, 5.6 s of two busy cores after a Cancel on 80 slices of 256 x 256, and a script (the CLI)
        waited for them at its exit. Here each slice a worker scores takes 20 s: none may be left after the cancel."""
        self._assert_a_cancel_ends_the_workers()

    def test_a_cancel_ends_the_workers_of_a_pool_that_keeps_its_process_table_to_itself(self) -> None:
        """The workers were found in the pool's private ``_processes`` (ProcessPoolExecutor's, Python 3.9-3.13): a
        Python naming it otherwise left them scoring after a cancel (here 20 s a slice), and the cancel waited for them.
        They say their pids themselves now (the pool's initializer)."""
        import concurrent.futures

        with mock.patch.object(concurrent.futures, "ProcessPoolExecutor", _PoolWithoutAProcessTable):
            self._assert_a_cancel_ends_the_workers()

    def test_a_cancel_ends_a_worker_still_starting_at_once(self) -> None:
        """A worker was ended only once it had written its pid (its initializer): a cancel while one still started (a
        spawned one imports for a second or more on a busy machine) waited up to 10 s for it, then for the rest of its
        start (here a start of 20 s: the cancel took 20.1 s). The pool's processes are known from their start now."""
        import multiprocessing
        import time

        from MultimodalFusionLib import pool_worker
        from MultimodalFusionLib.errors import OperationCancelled

        real = pool_worker.start

        def slow_start(*args: Any) -> None:  # forked workers (this test's main thread): the function itself
            time.sleep(20.0)
            real(*args)

        f, a, b = self._volume()
        before = {p.pid for p in multiprocessing.active_children()}
        with _pool_for_small_volumes(), mock.patch.object(pool_worker, "start", slow_start):
            start = time.monotonic()
            with self.assertRaises(OperationCancelled):
                metrics.fusion_metrics(f, a, b, workers=2, progress=lambda fraction, text: "slice" not in text)
            elapsed = time.monotonic() - start
        self.assertEqual([p.pid for p in multiprocessing.active_children() if p.pid not in before], [])
        self.assertLess(elapsed, 5.0)  # the old code: 20.1 s

    def _assert_a_cancel_ends_the_workers(self) -> None:
        import multiprocessing
        import time

        from MultimodalFusionLib.errors import OperationCancelled

        real = metrics._slice_scores

        def slow(*images):  # in the forked workers only: the test's process scores no slice with a pool
            if os.getpid() != parent:
                time.sleep(20.0)
            return real(*images)

        parent = os.getpid()
        f, a, b = self._volume()
        before = {p.pid for p in multiprocessing.active_children()}
        with _pool_for_small_volumes(), mock.patch.object(metrics, "_slice_scores", slow):
            start = time.monotonic()
            with self.assertRaises(OperationCancelled):
                metrics.fusion_metrics(f, a, b, workers=2, progress=lambda fraction, text: "slice" not in text)
        left = [p.pid for p in multiprocessing.active_children() if p.pid not in before]
        self.assertEqual(left, [])  # the old code: both workers, scoring for 20 s more
        self.assertLess(time.monotonic() - start, 15.0)

    def test_the_worker_processes_end_with_the_process_that_started_them(self) -> None:
        """A process killed while its pool scored (SIGKILL, the OOM killer) had left its workers waiting for work for
        ever (two idle orphans per pool); they end with it now."""
        import signal
        import subprocess
        import time

        code = (
            "import os, signal, sys\n"
            "from unittest import mock\n"
            "import numpy as np\n"
            "from MultimodalFusionLib import metrics\n"
            "rng = np.random.default_rng(0)\n"
            "a = rng.random((8, 32, 32)) * 255\n"
            "def kill(fraction, text):\n"
            "    if 'slice' in text:\n"
            "        import multiprocessing\n"
            "        print(' '.join(str(p.pid) for p in multiprocessing.active_children()), flush=True)\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "with mock.patch.object(metrics, 'PARALLEL_MIN_PIXELS', 1):\n"
            "    metrics.fusion_metrics(a, a, 255 - a, workers=2, progress=kill)\n")
        # (its output read up to the line only: the old code's orphans held the pipe open)
        with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}) as child:
            line = child.stdout.readline()
            self.assertEqual(child.wait(timeout=120), -signal.SIGKILL)
        workers = [int(pid) for pid in line.split()]
        self.assertEqual(len(workers), 2, line)
        deadline = time.monotonic() + 10.0
        alive = workers
        while alive and time.monotonic() < deadline:
            time.sleep(0.05)
            alive = [pid for pid in workers if os.path.exists(f"/proc/{pid}") and
                     open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]
        for pid in alive:  # the old code's orphans: ended here, not left on the machine
            os.kill(pid, signal.SIGKILL)
        self.assertEqual(alive, [])


class _PoolWithoutAProcessTable(concurrent.futures.ProcessPoolExecutor):
    """A ProcessPoolExecutor whose process table (its private ``_processes``) only concurrent.futures reads: any other
    reader gets AttributeError, as it would from a Python that keeps the table otherwise."""

    def __getattribute__(self, name: str) -> Any:
        if name == "_processes" and not sys._getframe(1).f_globals.get("__name__", "").startswith("concurrent."):
            raise AttributeError(name)
        return super().__getattribute__(name)


@contextlib.contextmanager
def _in_the_slicer_application() -> Iterator[None]:
    """The Slicer application cannot run here: a module named slicer with an ``app`` stands in for it while in use
    (only that entry of sys.modules changes: mock.patch.dict(sys.modules) would drop the modules imported meanwhile)."""
    import types

    saved = sys.modules.get("slicer")
    sys.modules["slicer"] = types.SimpleNamespace(app=object())  # type: ignore[assignment]
    try:
        yield
    finally:
        if saved is None:
            sys.modules.pop("slicer", None)
        else:
            sys.modules["slicer"] = saved


def _no_fork() -> int:
    raise OSError("fork refused by the test")


def _bits(values: dict[str, float]) -> list[tuple[str, bytes]]:
    """A metrics dict as comparable bytes (NaN equals NaN, -0.0 differs from 0.0)."""
    return [(k, np.float64(v).tobytes()) for k, v in values.items()]


class SliceAxisTest(unittest.TestCase):
    """A thick-slice volume's 2D metrics are scored on its acquired slices, whichever axis stores them."""

    @staticmethod
    def _stored(arr: np.ndarray, axis: int, thickness: float = 5.0) -> sitk.Image:
        """``arr`` (acquired slices along its first axis) stored with them along array ``axis``."""
        image = sitk.GetImageFromArray(np.ascontiguousarray(np.moveaxis(arr, 0, axis)).astype(np.float32))
        spacing = [1.0, 1.0, 1.0]
        spacing[2 - axis] = thickness  # ITK's (x, y, z) order
        image.SetSpacing(spacing)
        return image

    def test_same_voxels_stored_thick_along_x_y_or_z_score_the_same(self) -> None:
        f, a, b = ParallelSlicesTest._volume()  # 10 slices (the first empty) of 48x40 pixels
        stored = {axis: [self._stored(v, axis) for v in (f, a, b)] for axis in (0, 1, 2)}
        per_axis = {axis: metrics.fusion_metrics(*images, workers=1) for axis, images in stored.items()}
        along_z = per_axis[0]
        # the 2D metrics of the acquired 48x40 slices (empty slice skipped), not of 10-pixel cuts across
        # them: before, y and x storage gave SF 43.76 (11.31 along z), Qabf 0.410 and 0.492 (0.287) and
        # VIF NaN (0.358; cuts under 17 pixels)
        acquired = [metrics.spatial_frequency(f[k]) for k in range(1, 10)]
        self.assertEqual(along_z["SF"], float(np.mean(acquired)))
        for axis in (1, 2):
            for key in ("SF", "VIF", "VIF_A", "VIF_B", "Qabf", "SSIM", "SSIM_A", "SSIM_B"):
                self.assertEqual(per_axis[axis][key], along_z[key], (axis, key))  # to the last bit
            for key in along_z:  # whole-volume metrics: the same up to the order of their sums
                self.assertAlmostEqual(per_axis[axis][key], along_z[key], places=10, msg=(axis, key))
        self.assertEqual([metrics.scored_slice_axis(stored[axis][1]) for axis in (0, 1, 2)], ["z", "y", "x"])

    def test_worker_processes_score_the_same_slices(self) -> None:
        f, a, b = (self._stored(v, 2) for v in ParallelSlicesTest._volume())
        with _pool_for_small_volumes():
            parallel = metrics.fusion_metrics(f, a, b, workers=3)
        serial = metrics.fusion_metrics(f, a, b, workers=1)
        for key in serial:
            self.assertEqual(np.float64(parallel[key]).tobytes(), np.float64(serial[key]).tobytes(), key)

    def test_which_grid_decides(self) -> None:
        f, a, b = ParallelSlicesTest._volume()
        thick_x = [self._stored(v, 2) for v in (f, a, b)]
        reference = metrics.fusion_metrics(*thick_x, workers=1)
        # the first source's spacing decides (the grid fusion ran on); a fused array or FusionResult takes it
        from_array = metrics.fusion_metrics(sitk.GetArrayFromImage(thick_x[0]), *thick_x[1:], workers=1)
        self.assertEqual(_bits(from_array), _bits(reference))
        result = fusion.fuse(thick_x[1], thick_x[2], "average")
        self.assertEqual(metrics.scored_slice_axis(result), "x")
        grey = sitk.GetArrayFromImage(result.grey)
        self.assertEqual(_bits(metrics.fusion_metrics(result, *thick_x[1:], workers=1)),
                         _bits(metrics.fusion_metrics(grey, *thick_x[1:], workers=1)))
        # arrays carry no spacing: sliced along their first axis, as before
        arrays = [sitk.GetArrayFromImage(v) for v in thick_x]
        self.assertEqual(metrics.scored_slice_axis(arrays[1]), "z")
        self.assertNotEqual(metrics.fusion_metrics(*arrays, workers=1)["SF"], reference["SF"])

    def test_isotropic_and_2d_images_keep_the_third_voxel_axis(self) -> None:
        f, a, b = ParallelSlicesTest._volume()
        arrays = [np.ascontiguousarray(np.moveaxis(v, 0, 2)).astype(np.float32) for v in (f, a, b)]
        as_arrays = metrics.fusion_metrics(*arrays, workers=1)
        for spacing in ((1.0, 1.0, 1.0), (1.2, 1.0, 1.0), (1.5, 1.0, 1.0), (5.0, 5.0, 1.0), (0.5, 0.5, 0.5)):
            images = [sitk.GetImageFromArray(v) for v in arrays]
            for image in images:
                image.SetSpacing(spacing)
            self.assertEqual(metrics.scored_slice_axis(images[1]), "z", spacing)
            self.assertEqual(_bits(metrics.fusion_metrics(*images, workers=1)), _bits(as_arrays), spacing)
        d = data.testing_data_dir()
        self.assertIsNone(metrics.scored_slice_axis(io.read_image(d / "BrainT1Slice.png")))


class RegistrationMetricsTest(unittest.TestCase):
    def test_aligned_beats_misaligned(self) -> None:
        d = data.testing_data_dir()
        fixed = io.read_image(d / "BrainT1Slice.png", float32=True)
        moving = io.read_image(d / "BrainProtonDensitySlice.png", float32=True)
        shifted = sitk.Resample(moving, fixed, sitk.TranslationTransform(2, (6.0, 4.0)), sitk.sitkLinear, 0.0)
        good = metrics.registration_metrics(fixed, moving)
        bad = metrics.registration_metrics(fixed, shifted)
        self.assertGreater(good["MI"], bad["MI"])
        self.assertGreater(good["NMI"], bad["NMI"])
        self.assertGreater(good["NCC"], bad["NCC"])
        same = metrics.registration_metrics(fixed, fixed)
        self.assertAlmostEqual(same["NCC"], 1.0)
        self.assertAlmostEqual(same["NMI"], 2.0)
        mask = sitk.Cast(fixed > 50, sitk.sitkUInt8)
        masked = metrics.registration_metrics(fixed, moving, mask)
        self.assertLess(masked["voxels"], good["voxels"])
        with self.assertRaises(InputError):
            metrics.registration_metrics(fixed, sitk.Shrink(moving, [2, 2]))

    def test_registration_metrics_match_scipy_and_scikit_image(self) -> None:
        # MI from numpy's equal-width 64-bin histogram2d, NMI = scikit-image's normalized_mutual_information,
        # NCC = scipy's Pearson r (signed: an inverted contrast is negative), with and without a mask
        from scipy.stats import pearsonr
        from skimage.metrics import normalized_mutual_information

        rng = np.random.default_rng(3)
        f = rng.normal(100.0, 30.0, (12, 30, 25))
        m = -2.0 * f + rng.normal(0.0, 20.0, f.shape) + 1000.0
        fixed, moving = sitk.GetImageFromArray(f), sitk.GetImageFromArray(m.astype(np.float32))
        for img in (fixed, moving):
            img.SetSpacing((0.7, 1.3, 3.0))
        mask = sitk.Cast(fixed > 100.0, sitk.sitkUInt8)
        for msk, keep in ((None, np.ones(f.size, bool)), (mask, f.ravel() > 100.0)):
            x, y = f.ravel()[keep], sitk.GetArrayFromImage(moving).astype(np.float64).ravel()[keep]
            values = metrics.registration_metrics(fixed, moving, msk)
            joint = np.histogram2d(x, y, bins=64)[0] / x.size
            outer = joint.sum(axis=1, keepdims=True) @ joint.sum(axis=0, keepdims=True)
            nz = joint > 0
            self.assertAlmostEqual(values["MI"], float(np.sum(joint[nz] * np.log(joint[nz] / outer[nz]))), places=12)
            self.assertAlmostEqual(values["NMI"], normalized_mutual_information(x, y, bins=64), places=12)
            self.assertAlmostEqual(values["NCC"], pearsonr(x, y)[0], places=12)
            self.assertLess(values["NCC"], -0.8)
            self.assertEqual(values["voxels"], keep.sum())

    def test_transform_error_in_mm_on_an_oblique_anisotropic_grid(self) -> None:
        from MultimodalFusionLib.registration.accuracy import transform_error

        ref = sitk.Image([9, 7, 5], sitk.sitkUInt8)
        ref.SetSpacing((0.8, 1.7, 3.1))
        ref.SetOrigin((-12.0, 5.0, 40.0))
        ref.SetDirection(sitk.VersorTransform((0.2, -0.1, 0.3), 0.5).GetMatrix())
        recovered = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.05, 0.2, (3.0, -4.0, 5.0))
        truth = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.0, 0.02, -0.1, (2.0, 1.0, -1.0))
        mask = sitk.Image(ref)
        mask[2:6, 1:5, 1:4] = 1
        # the distance ITK's own TransformPoint gives at every voxel centre of the mask, in mm
        ref_d = []
        for idx in np.ndindex(*ref.GetSize()):
            if mask[idx]:
                p = ref.TransformIndexToPhysicalPoint(idx)
                ref_d.append(np.linalg.norm(np.subtract(recovered.TransformPoint(p), truth.TransformPoint(p))))
        err = transform_error(recovered, truth, ref, mask)
        self.assertEqual(err["points"], len(ref_d))
        self.assertAlmostEqual(err["mean"], float(np.mean(ref_d)), places=9)
        self.assertAlmostEqual(err["max"], float(np.max(ref_d)), places=9)
        self.assertAlmostEqual(err["median"], float(np.median(ref_d)), places=9)
        # a mask of the same size placed elsewhere selects other points: refused, not used voxel by voxel
        moved = sitk.Image(mask)
        moved.SetOrigin((0.0, 0.0, 0.0))
        with self.assertRaises(InputError):
            transform_error(recovered, truth, ref, moved)

    def test_registration_metrics_refuse_what_they_cannot_measure(self) -> None:
        # a NaN in the fixed image had made every histogram label 0: MI 0 and NMI 1 ("nothing shared") for two
        # identical images; one in the moving image a ValueError from numpy; a colour moving image on the same
        # grid a broadcasting ValueError
        rng = np.random.default_rng(4)
        f = rng.normal(100.0, 30.0, (20, 30))
        fixed = sitk.GetImageFromArray(f)
        self.assertAlmostEqual(metrics.registration_metrics(fixed, fixed)["NMI"], 2.0)
        holed = f.copy()
        holed[3, 4] = np.nan
        for pair in ((sitk.GetImageFromArray(holed), fixed), (fixed, sitk.GetImageFromArray(holed))):
            with self.assertRaisesRegex(InputError, "1 NaN or infinite"):
                metrics.registration_metrics(*pair)
        # a mask that leaves the NaN out measures the rest
        keep = np.ones(f.shape, np.uint8)
        keep[3, 4] = 0
        mask = sitk.GetImageFromArray(keep)
        self.assertAlmostEqual(metrics.registration_metrics(sitk.GetImageFromArray(holed), fixed, mask)["NMI"], 2.0)
        with self.assertRaisesRegex(InputError, "3 components"):
            metrics.registration_metrics(fixed, sitk.Compose(fixed, fixed, fixed))
        for bins in (0, 1, 64.0, True):
            with self.assertRaises(InputError, msg=repr(bins)):
                metrics.registration_metrics(fixed, fixed, bins=bins)

    def test_rotation_angle_of_an_affine_is_that_of_its_rotation(self) -> None:
        # (trace - 1) / 2 of the matrix itself: a 10 degree turn with 10% scaling had read 0 degrees, with 20%
        # shrinking 46.5 degrees; now the polar decomposition's rotation, as for the rigid matrix
        from MultimodalFusionLib.registration.accuracy import rotation_angle_deg

        for dim, rotation in ((2, sitk.Euler2DTransform((0.0, 0.0), math.radians(10.0))),
                              (3, sitk.Euler3DTransform((0.0, 0.0, 0.0), math.radians(10.0), 0.0, 0.0))):
            matrix = np.array(rotation.GetMatrix()).reshape(dim, dim)
            self.assertAlmostEqual(rotation_angle_deg(matrix), 10.0, places=9)
            for scales in ([1.1] * dim, [0.8] * dim, [1.1, 0.9, 1.3][:dim]):
                affine = sitk.AffineTransform(dim)
                affine.SetMatrix((matrix @ np.diag(scales)).ravel().tolist())
                self.assertAlmostEqual(rotation_angle_deg(affine), 10.0, places=9, msg=(dim, scales))
            with self.assertRaises(InputError):  # a reflection has no rotation angle
                rotation_angle_deg(matrix @ np.diag([-1.0] + [1.0] * (dim - 1)))
            # a singular matrix had been said to flip ('flips (determinant 0)'); a NaN one (a diverged
            # registration's) was numpy's LinAlgError 'SVD did not converge', an infinite one 0 degrees
            with self.assertRaisesRegex(InputError, "is singular .* flattens the image along an axis"):
                rotation_angle_deg(matrix @ np.diag([1.0] * (dim - 1) + [0.0]))
            for bad in (np.nan, np.inf):
                diverged = matrix.copy()
                diverged[-1, -1] = bad
                with self.assertRaisesRegex(InputError, "holds NaN or infinite values"):
                    rotation_angle_deg(diverged)

    def test_tre_refuses_landmarks_without_a_position(self) -> None:
        # a NaN coordinate (an unplaced markup) had made mean, median, max and std NaN without a word
        tx = sitk.TranslationTransform(3, (3.0, 4.0, 0.0))
        with self.assertRaisesRegex(InputError, "Landmark 1 "):
            metrics.tre([(0.0, 0.0, 0.0), (1.0, np.nan, 2.0)], [(3.0, 4.0, 0.0), (4.0, 4.0, 2.0)], tx)
        with self.assertRaises(InputError):  # text had been numpy's ValueError
            metrics.tre([("a", 0.0, 0.0)], [(1.0, 1.0, 1.0)], tx)

    def test_tre(self) -> None:
        tx = sitk.TranslationTransform(3, (3.0, 4.0, 0.0))
        fixed_pts = [(0.0, 0.0, 0.0), (10.0, 5.0, 2.0)]
        moving_pts = [(3.0, 4.0, 0.0), (13.0, 9.0, 2.0)]
        self.assertAlmostEqual(metrics.tre(fixed_pts, moving_pts, tx)["max"], 0.0)
        before = metrics.tre(fixed_pts, moving_pts, None)
        self.assertAlmostEqual(before["mean"], 5.0)
        self.assertEqual(before["per_point"], [5.0, 5.0])
        self.assertEqual(before["n"], 2)
        with self.assertRaises(InputError):
            metrics.tre(fixed_pts, moving_pts[:1], tx)
        with self.assertRaises(InputError):
            metrics.tre([(0.0, 0.0)], [(1.0, 1.0)], tx)


if __name__ == "__main__":
    unittest.main()
