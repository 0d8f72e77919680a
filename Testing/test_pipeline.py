"""End to end: ``mmfusion run`` registers, fuses and reports a 3D MR/PET-like pair, and the report
opens in a real browser (headless Chromium)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import SimpleITK as sitk

from MultimodalFusionLib import data, io, metrics, pipeline
from MultimodalFusionLib.errors import InputError

CHROMIUM = "/usr/bin/chromium"
#: the known misalignment of the moving PET: 5 degrees about left-right, (4, -3, 2) mm
TRUE_ANGLE_RAD = np.deg2rad(5.0)
TRUE_TRANSLATION = (4.0, -3.0, 2.0)


def _centre(image: sitk.Image) -> list[float]:
    size = np.array(image.GetSize())
    return [float(v) for v in image.TransformContinuousIndexToPhysicalPoint([float(x) for x in (size - 1) / 2.0])]


def _mr_pet_pair() -> tuple[sitk.Image, sitk.Image, sitk.Transform, sitk.Image]:
    """(T1, PET-like image moved by a known rigid transform, that transform, brain mask)."""
    tissues = data.mni152(spacing_mm=3)
    pet = data.synthetic_contrast(tissues, "pet", seed=2)
    truth = sitk.Euler3DTransform()
    truth.SetCenter(_centre(pet))
    truth.SetRotation(float(TRUE_ANGLE_RAD), 0.0, 0.0)
    truth.SetTranslation(TRUE_TRANSLATION)
    # moved(x) = pet(truth^-1(x)), so the registration should find T = truth (fixed -> moving points)
    moved = sitk.Resample(pet, pet, truth.GetInverse(), sitk.sitkLinear, 0.0)
    return tissues["t1"], moved, truth, tissues["brain_mask"]


def _mapping_error_mm(found: sitk.Transform, truth: sitk.Transform, mask: sitk.Image) -> dict:
    idx = np.argwhere(sitk.GetArrayFromImage(mask) > 0)[::7]  # (z, y, x); a subsample is plenty
    pts = [mask.TransformIndexToPhysicalPoint([int(i) for i in p[::-1]]) for p in idx]
    return metrics.tre(pts, [truth.TransformPoint(p) for p in pts], found)


class PipelineRunTest(unittest.TestCase):
    """One ``mmfusion run`` in a real process; the other tests read its outputs."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.mkdtemp(prefix="mmf-pipeline-")
        cls.t1, cls.pet, cls.truth, cls.mask = _mr_pet_pair()
        cls.fixed_path = io.write_image(cls.t1, os.path.join(cls.tmp, "t1.nii.gz"))
        cls.moving_path = io.write_image(cls.pet, os.path.join(cls.tmp, "pet_moved.nii.gz"))
        cls.out = os.path.join(cls.tmp, "out")
        cls.proc = subprocess.run(
            [sys.executable, "-m", "MultimodalFusionLib.cli", "run", cls.fixed_path, cls.moving_path,
             "--output-dir", cls.out, "--methods", "overlay,wavelet", "--stages", "rigid", "--seed", "1", "--json"],
            capture_output=True, text=True, timeout=300)

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_cli_run_succeeds_and_prints_a_summary(self) -> None:
        self.assertEqual(self.proc.returncode, 0, self.proc.stderr)
        summary = json.loads(self.proc.stdout)
        self.assertEqual(sorted(summary["metrics"]), ["overlay", "wavelet"])
        rm = summary["registration_metrics"]
        self.assertGreater(rm["after"]["MI"], rm["before"]["MI"])
        self.assertGreater(rm["after"]["NCC"], rm["before"]["NCC"])
        for key in ("transform", "moving_resampled", "fused_overlay", "fused_wavelet"):
            self.assertTrue(os.path.isfile(summary["files"][key]), key)

    def test_registration_recovers_the_known_transform(self) -> None:
        self.assertEqual(self.proc.returncode, 0, self.proc.stderr)
        found = io.read_transform(os.path.join(self.out, "transform.tfm"))
        before = _mapping_error_mm(sitk.Transform(3, sitk.sitkIdentity), self.truth, self.mask)
        after = _mapping_error_mm(found, self.truth, self.mask)
        self.assertGreater(before["mean"], 4.0)
        self.assertLess(after["mean"], 1.0)  # voxels are 3 mm

    def test_fused_volumes_are_on_the_fixed_grid(self) -> None:
        self.assertEqual(self.proc.returncode, 0, self.proc.stderr)
        overlay = io.read_image(os.path.join(self.out, "fused_overlay.nii.gz"), keep_color=True)
        self.assertEqual(overlay.GetNumberOfComponentsPerPixel(), 3)
        wavelet = io.read_image(os.path.join(self.out, "fused_wavelet.nii.gz"))
        for img in (overlay, wavelet):
            self.assertEqual(img.GetSize(), self.t1.GetSize())
            np.testing.assert_allclose(img.GetOrigin(), self.t1.GetOrigin(), atol=1e-3)
            np.testing.assert_allclose(img.GetSpacing(), self.t1.GetSpacing(), atol=1e-5)
        # the fused image tracks the (registered) PET better than the misaligned PET does
        resampled = io.read_image(os.path.join(self.out, "moving_resampled.nii.gz"))
        self.assertGreater(metrics.registration_metrics(self.t1, resampled)["MI"],
                           metrics.registration_metrics(self.t1, sitk.Resample(self.pet, self.t1))["MI"])

    def test_report_files(self) -> None:
        self.assertEqual(self.proc.returncode, 0, self.proc.stderr)
        payload = json.load(open(os.path.join(self.out, "metrics.json"), encoding="utf-8"))
        self.assertEqual(payload["registration"]["backend"], "sitk")
        self.assertIn("after", payload["registration_metrics"])
        for m in ("overlay", "wavelet"):
            self.assertTrue(os.path.isfile(os.path.join(self.out, f"montage_{m}.png")))
            for key in metrics.FUSION_METRICS:
                self.assertIsInstance(payload["metrics"][m][key], float)

    @unittest.skipUnless(os.path.exists(CHROMIUM), f"{CHROMIUM} is not installed (run scripts/install-system-deps.sh)")
    def test_report_renders_in_headless_chromium(self) -> None:
        self.assertEqual(self.proc.returncode, 0, self.proc.stderr)
        html_path = os.path.abspath(os.path.join(self.out, "report.html"))
        shot = os.path.join(self.tmp, "report.png")
        profile = tempfile.mkdtemp(prefix="mmf-chromium-")
        try:
            subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                            "--disable-background-networking", "--disable-component-update", "--disable-sync",
                            f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1280,2000",
                            "file://" + html_path], capture_output=True, timeout=120)
        finally:
            shutil.rmtree(profile, ignore_errors=True)
        self.assertTrue(os.path.isfile(shot), "Chromium wrote no screenshot")
        from matplotlib import image as mpimg

        img = mpimg.imread(shot)[..., :3]
        self.assertEqual(img.shape[:2], (2000, 1280))
        self.assertGreater(img.std(), 0.1)  # not blank
        page_bg = np.all(np.abs(img - np.array([0xFA, 0xFB, 0xFC]) / 255.0) < 0.02, axis=-1).mean()
        self.assertGreater(page_bg, 0.2)  # the page's own background: the HTML rendered
        black = np.all(img < 0.05, axis=-1).mean()
        self.assertGreater(black, 0.05)  # the dark montage panels: the inline PNGs decoded and drew
        # the PET overlay's warm colours (red well above blue) are on screen
        warm = ((img[..., 0] - img[..., 2]) > 0.25).mean()
        self.assertGreater(warm, 0.005)


class PipelineApiTest(unittest.TestCase):
    def test_bad_method_fails_before_registering(self) -> None:
        t1 = sitk.GetImageFromArray(np.random.default_rng(0).uniform(0, 1, (20, 20)).astype(np.float32))
        with tempfile.TemporaryDirectory() as tmp, self.assertRaises(InputError) as ctx:
            pipeline.run(t1, t1, tmp, methods="average,nonsense")
        self.assertIn("nonsense", str(ctx.exception))

    def test_inputs_named_like_outputs_are_not_overwritten(self) -> None:
        # a second run on the first run's resampled image, into the same folder: refused before any work
        d = data.testing_data_dir()
        with tempfile.TemporaryDirectory() as tmp:
            moving = os.path.join(tmp, "moving_resampled.png")
            shutil.copy(d / "BrainProtonDensitySlice.png", moving)
            before = open(moving, "rb").read()
            with self.assertRaises(InputError) as ctx:
                pipeline.run(d / "BrainT1Slice.png", moving, tmp, register=False, methods="average")
            self.assertIn("would overwrite the input file", str(ctx.exception))
            self.assertEqual(open(moving, "rb").read(), before)
            self.assertEqual(os.listdir(tmp), ["moving_resampled.png"])

    def test_non_8bit_2d_moving_image_is_kept_and_non_overlap_is_named(self) -> None:
        d = data.testing_data_dir()
        pet = sitk.Cast(io.read_image(d / "BrainProtonDensitySlice.png"), sitk.sitkFloat32) * 40.0  # up to ~9000
        fixed = io.read_image(d / "BrainT1Slice.png")
        with tempfile.TemporaryDirectory() as tmp:
            out = pipeline.run(fixed, pet, tmp, register=False, methods="average")
            saved = out["files"]["moving_resampled"]
            self.assertTrue(saved.endswith(".nrrd"), saved)  # a PNG would clip it to 0..255
            np.testing.assert_allclose(sitk.GetArrayFromImage(io.read_image(saved)), sitk.GetArrayFromImage(pet),
                                       rtol=1e-6, atol=1e-6)
            far = sitk.Image(pet)
            far.SetOrigin((5000.0, 0.0))
            with self.assertRaisesRegex(InputError, "does not overlap the fixed image"):
                pipeline.run(fixed, far, os.path.join(tmp, "far"), register=False, methods="average")

    def test_aligned_2d_slices_without_registration(self) -> None:
        d = data.testing_data_dir()
        with tempfile.TemporaryDirectory() as tmp:
            out = pipeline.run(d / "BrainT1Slice.png", d / "BrainProtonDensitySlice.png", tmp, register=False,
                               methods=("average", "max"))
            self.assertIsNone(out["registration"])
            self.assertEqual(sorted(out["metrics"]), ["average", "max"])
            fused = io.read_image(out["files"]["fused_max"])
            self.assertEqual(fused.GetSize(), (181, 217))
            self.assertTrue(os.path.isfile(out["report"]["html"]))
            # identical grids and no transform: the before/after alignment is the same
            self.assertAlmostEqual(out["registration_metrics"]["before"]["MI"],
                                   out["registration_metrics"]["after"]["MI"])

    def test_colour_functional_slice_through_the_pipeline(self) -> None:
        from MultimodalFusionLib.fusion import color

        d = data.testing_data_dir()
        pd = sitk.GetArrayFromImage(io.read_image(d / "BrainProtonDensitySlice.png")).astype(float)
        rgb = np.round(color.apply_colormap(pd / pd.max(), "rainbow") * 255).astype(np.uint8)
        with tempfile.TemporaryDirectory() as tmp:
            moving = os.path.join(tmp, "spect_like.png")
            sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), moving)
            out = pipeline.run(d / "BrainT1Slice.png", moving, tmp, register=False, methods="average")
            fused = out["fusions"][0]
            self.assertEqual(fused.image.GetNumberOfComponentsPerPixel(), 3)  # colour put back
            self.assertEqual(sitk.ReadImage(out["files"]["fused_average"]).GetNumberOfComponentsPerPixel(), 3)
            self.assertEqual(sitk.ReadImage(out["files"]["moving_resampled"]).GetNumberOfComponentsPerPixel(), 3)


if __name__ == "__main__":
    unittest.main()
