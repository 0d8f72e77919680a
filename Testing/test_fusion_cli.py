"""Tests of ``mmfusion fuse`` and ``mmfusion evaluate``."""

from __future__ import annotations

import contextlib
import io as textio
import json
import os
import tempfile
import unittest

import numpy as np
import SimpleITK as sitk

from MultimodalFusionLib import cli, data, fusion, io, metrics
from MultimodalFusionLib.errors import InputError


def _main(argv: list[str]) -> tuple[int, str, str]:
    out, err = textio.StringIO(), textio.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


class FuseEvaluateCliTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        d = data.testing_data_dir()
        self.a = str(d / "BrainT1Slice.png")
        self.b = str(d / "BrainProtonDensitySlice.png")

    def tearDown(self) -> None:
        self.tmp.cleanup()

    def test_a_report_never_removes_the_output_named_like_its_files(self) -> None:
        """fuse --report DIR removes an earlier report's files from DIR (montage_<method>.png, ...): the -o
        output written there under such a name had been removed with them (an input so named is refused)."""
        rep = os.path.join(self.tmp.name, "report")
        out = os.path.join(rep, "montage_max.png")
        code, _, stderr = _main(["fuse", self.a, self.b, "--method", "wavelet", "-o", out, "--report", rep])
        self.assertEqual(code, 0, stderr)
        self.assertTrue(os.path.isfile(out), "the fused output was removed")
        self.assertTrue(os.path.isfile(os.path.join(rep, "montage_wavelet.png")))
        # a name the report writes itself: refused before any work (the report had replaced the fused image
        # with its montage or chart, rc 0)
        for name in ("montage_wavelet.png", "metrics_chart.png", "report.html", "metrics.json"):
            with self.subTest(name=name):
                out = os.path.join(self.tmp.name, "own", name)
                code, _, stderr = _main(["fuse", self.a, self.b, "--method", "wavelet", "-o", out,
                                         "--report", os.path.dirname(out)])
                self.assertEqual(code, 2, stderr)
                self.assertIn(f"is the report's own {name}", stderr)
                self.assertFalse(os.path.exists(out))

    def test_fuse_report_says_it_is_making_the_report_while_it_makes_it_on_a_pipe(self) -> None:
        """fuse --report's 'METHOD fusion done in T s; making the metrics and the report in DIR' line tells a user
        what the seconds of the metrics and the report are (12 s on a volume); printed to stdout unflushed, it came
        through a pipe or into a log file (block-buffered) only when the command ended, with 'report -> ...'. Read
        from a pipe as it comes (no PYTHONUNBUFFERED), it comes before the report's lines."""
        import subprocess
        import sys

        rep = os.path.join(self.tmp.name, "report")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONUNBUFFERED", "MMFUSION_PROGRESS")}
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        proc = subprocess.Popen([sys.executable, "-m", "MultimodalFusionLib.cli", "fuse", self.a, self.b, "--method",
                                 "max", "-o", os.path.join(self.tmp.name, "fused.png"), "--report", rep],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=root)
        said = b""
        try:
            while b"; making the metrics and the report in " not in said:
                chunk = os.read(proc.stdout.fileno(), 4096)  # what has come through the pipe so far
                if not chunk:
                    break
                said += chunk
            rest, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.assertEqual(proc.returncode, 0, err.decode(errors="replace"))
        self.assertIn(b"max fusion done in ", said)
        self.assertNotIn(b"report -> ", said)  # the line came on its own, while the report was made
        self.assertIn(b"report -> ", rest)

    def test_an_output_name_is_refused_before_the_fusion(self) -> None:
        """-o fused.GIPL (.MHA, .xyz, x.nii.hdr), and a volume to .png or .jp2: fuse ran the whole fusion (6 s of
        deep fusion on a 192x192x160 volume), then write_image refused the name. Now refused before it: no
        progress of the fusion is shown (MMFUSION_PROGRESS=1 shows the bar on a pipe), nothing is written."""
        from unittest import mock

        vol_a, vol_b = (os.path.join(self.tmp.name, f"{n}.nrrd") for n in "ab")
        for path, value in ((vol_a, 100.0), (vol_b, 50.0)):
            image = sitk.GaussianSource(sitk.sitkFloat32, [24, 24, 6], [6.0] * 3, [12.0, 12.0, 3.0], value)
            sitk.WriteImage(image, path)
        cases = [((self.a, self.b), "fused.GIPL", "ITK reads .gipl files by the extension in lower case only"),
                 ((self.a, self.b), "fused.Mha", "ITK reads .mha files by the extension in lower case only"),
                 ((self.a, self.b), "fused.xyz", "No image format is written as"),
                 ((self.a, self.b), "fused.nii.hdr", "as the single NIfTI file"),
                 ((vol_a, vol_b), "fused.png", "is a 2D format but the image is a volume"),
                 ((vol_a, vol_b), "fused.jp2", "as a .jp2 file of size")]
        with mock.patch.dict(os.environ, {"MMFUSION_PROGRESS": "1"}):
            for (a, b), name, problem in cases:
                for report in ([], ["--report", os.path.join(self.tmp.name, "report")]):
                    with self.subTest(name=name, report=bool(report)):
                        out = os.path.join(self.tmp.name, name)
                        code, stdout, stderr = _main(["fuse", a, b, "--method", "wavelet", "-o", out, *report])
                        self.assertEqual(code, 2, stderr)
                        self.assertIn(problem, stderr)
                        self.assertNotIn("fuse wavelet", stderr)  # the fusion's progress bar: it did not start
                        self.assertNotIn("fused (", stdout)
                        self.assertEqual(sorted(os.listdir(self.tmp.name)), ["a.nrrd", "b.nrrd"])
            # the same names fuse as before where they are right
            code, _, stderr = _main(["fuse", vol_a, vol_b, "--method", "wavelet", "-o",
                                     os.path.join(self.tmp.name, "fused.gipl")])
            self.assertEqual(code, 0, stderr)
            self.assertIn("fuse wavelet", stderr)

    def test_a_one_slice_volume_on_any_axis_is_fused_to_a_2d_format(self) -> None:
        """A slice saved as a one-slice volume is fused as the 2D image it is, and written to .png as that slice.
        The early name check had looked at the volume as read: a coronal (24 x 1 x 20) or sagittal slice to .png
        was refused as "a volume" before the fusion, where it had been fused and written (an axial one passed)."""
        for size, plane in (([24, 20, 1], (24, 20)), ([24, 1, 20], (24, 20)), ([1, 24, 20], (24, 20))):
            for method in ("wavelet", "overlay"):  # grey and colour (RGB) output
                with self.subTest(size=size, method=method):
                    folder = os.path.join(self.tmp.name, f"{size.index(1)}.{method}", "a.b", "c d")
                    os.makedirs(folder)
                    paths = [os.path.join(folder, f"{n}.nrrd") for n in "ab"]
                    for path, value in zip(paths, (100.0, 50.0)):
                        centre = [s / 2.0 for s in size]
                        image = sitk.GaussianSource(sitk.sitkFloat32, size, [6.0] * 3, centre, value)
                        image.SetOrigin([5.0, 7.0, 9.0])
                        sitk.WriteImage(image, path)
                    out = os.path.join(folder, f"fused_{method}.png")
                    code, _, stderr = _main(["fuse", *paths, "--method", method, "-o", out])
                    self.assertEqual(code, 0, stderr)
                    fused = sitk.ReadImage(out)
                    self.assertEqual(fused.GetSize(), plane)
                    self.assertEqual(fused.GetNumberOfComponentsPerPixel(), 3 if method == "overlay" else 1)
                    # other formats still take the one-slice volume's grid, and are checked on it before the fusion
                    code, _, stderr = _main(["fuse", *paths, "--method", method, "-o", os.path.join(folder, "f.jp2")])
                    self.assertEqual(code, 2, stderr)
                    self.assertIn("as a .jp2 file of size", stderr)

    def _grey8(self) -> tuple[np.ndarray, np.ndarray]:
        """The slices as fuse sees them: 8-bit colour PNGs -> rounded luminance, 0..255 kept."""
        return tuple(np.round(sitk.GetArrayFromImage(io.read_image(p)).astype(float)) for p in (self.a, self.b))

    def test_an_output_refused_with_a_report_is_named_as_given(self) -> None:
        """With --report the fused image is written to a staging folder first: its refusal names the -o path the
        user gave, not the staged copy's '.mmf-staging-...' path."""
        out = os.path.join(self.tmp.name, "fused.xyz")
        code, _, stderr = _main(["fuse", self.a, self.b, "--method", "average", "-o", out, "--report",
                                 os.path.join(self.tmp.name, "report")])
        self.assertEqual(code, 2, stderr)
        self.assertIn(f"'{out}'", stderr)
        self.assertNotIn(".mmf-staging", stderr)

    def test_a_report_folder_that_is_a_file_is_refused_before_the_fusion(self) -> None:
        """fuse --report FILE (an input given by mistake, or a folder under a file) had been refused only after the
        fusion (minutes for deep fusion), once stdout had said 'fused -> OUT' of the image it then discarded."""
        import MultimodalFusionLib.fusion as fusion_module

        out = os.path.join(self.tmp.name, "fused.nii.gz")
        ran = []
        real_fuse = fusion_module.fuse
        fusion_module.fuse = lambda *a, **k: ran.append("fuse") or real_fuse(*a, **k)
        try:
            for report, file in ((self.a, self.a), (os.path.join(self.a, "report"), self.a)):
                with self.subTest(report=report):
                    code, stdout, stderr = _main(["fuse", self.a, self.b, "--method", "average", "-o", out,
                                                  "--report", report])
                    self.assertEqual(code, 2, stderr)
                    self.assertIn(f"The output folder '{report}' cannot be made: '{file}' is a file.", stderr)
                    self.assertNotIn("fused", stdout)
        finally:
            fusion_module.fuse = real_fuse
        self.assertEqual(ran, [])  # refused before fusing
        self.assertFalse(os.path.exists(out))

    def test_fuse_writes_the_image_and_a_report(self) -> None:
        out = os.path.join(self.tmp.name, "fused.nii.gz")
        rep = os.path.join(self.tmp.name, "report")
        code, stdout, stderr = _main(["fuse", self.a, self.b, "--method", "average", "--weight", "0.7",
                                      "-o", out, "--report", rep])
        self.assertEqual(code, 0, stderr)
        fused = sitk.GetArrayFromImage(io.read_image(out))
        a, b = self._grey8()
        np.testing.assert_allclose(fused, 0.7 * a + 0.3 * b, atol=1e-3)  # 8-bit PNGs keep their scale
        self.assertTrue(os.path.isfile(os.path.join(rep, "report.html")))
        self.assertIn("SSIM", stdout)

    def test_evaluate_table_columns_stay_aligned_under_a_long_file_name(self) -> None:
        """`evaluate` labels its row with the fused file's name: one over 12 characters shifted every value
        right of its column header."""
        import re

        out = os.path.join(self.tmp.name, "fused_wavelet_long_name.png")
        self.assertEqual(_main(["fuse", self.a, self.b, "--method", "average", "-o", out])[0], 0)
        code, stdout, stderr = _main(["evaluate", "--fused", out, self.a, self.b])
        self.assertEqual(code, 0, stderr)
        header, row = stdout.splitlines()[:2]
        self.assertTrue(row.startswith("fused_wavelet_long_name.png "))
        ends = [[m.end() for m in re.finditer(r"\S+", line)][1:] for line in (header, row)]
        self.assertEqual(ends[0], ends[1])  # every value ends where its column's name ends

    def test_evaluate_a_coronal_or_sagittal_one_slice_volume_gives_what_fuse_recorded(self) -> None:
        """`fuse` scores a one-slice volume as its 2D slice, whichever axis is flat; `evaluate` on the volumes it
        wrote had cut across the slice into lines of one pixel and stopped ("smaller than the SSIM window")."""
        for axis in (0, 1):  # ITK's x (sagittal) or y (coronal) of length 1
            paths = {}
            for key, png in (("a", self.a), ("b", self.b)):
                pixels = sitk.GetArrayFromImage(io.read_image(png, keep_color=True))[..., 0]  # grey stored as RGB
                volume = sitk.GetImageFromArray(np.expand_dims(pixels, 2 - axis))
                volume.SetSpacing((0.9, 0.9, 0.9))
                paths[key] = os.path.join(self.tmp.name, f"{key}_{axis}.nii.gz")
                sitk.WriteImage(volume, paths[key])
            for ext in (".nii.gz", ".png"):
                with self.subTest(axis=axis, output=ext):
                    out = os.path.join(self.tmp.name, f"fused_{axis}{ext}")
                    code, stdout, stderr = _main(["fuse", paths["a"], paths["b"], "--method", "average", "-o", out,
                                                  "--json"])
                    self.assertEqual(code, 0, stderr)
                    recorded = json.loads(stdout)["average"]
                    code, stdout, stderr = _main(["evaluate", "--fused", out, paths["a"], paths["b"], "--json"])
                    self.assertEqual(code, 0, stderr)
                    self.assertEqual(json.loads(stdout), recorded)

    def test_fuse_json_prints_only_json_with_or_without_a_report(self) -> None:
        """`fuse --json` is parseable as register/run/evaluate --json are; without --report it is not ignored."""
        out = os.path.join(self.tmp.name, "fused.png")
        rep = os.path.join(self.tmp.name, "report")
        for extra in (["--report", rep], []):
            with self.subTest(extra=extra):
                code, stdout, stderr = _main(["fuse", self.a, self.b, "--method", "average", "-o", out, "--json",
                                              *extra])
                self.assertEqual(code, 0, stderr)
                table = json.loads(stdout)
                self.assertEqual(list(table), ["average"])
                self.assertIn("fused (average", stderr)
                recorded = metrics.fusion_metrics(io.read_image(out, keep_color=True),
                                                  io.read_image(self.a, keep_color=True),
                                                  io.read_image(self.b, keep_color=True))
                self.assertAlmostEqual(table["average"]["SSIM"], recorded["SSIM"], places=9)
        self.assertTrue(os.path.isfile(os.path.join(rep, "report.html")))

    def test_fuse_png_output_keeps_the_scale(self) -> None:
        out = os.path.join(self.tmp.name, "fused.png")
        code, _, stderr = _main(["fuse", self.a, self.b, "--method", "max", "-o", out])
        self.assertEqual(code, 0, stderr)
        fused = sitk.GetArrayFromImage(sitk.ReadImage(out)).astype(float)
        a, b = self._grey8()
        np.testing.assert_allclose(fused, np.maximum(a, b), atol=0.51)

    def test_overlay_parameters_and_errors(self) -> None:
        out = os.path.join(self.tmp.name, "overlay.png")
        code, _, stderr = _main(["fuse", self.a, self.b, "--method", "overlay", "--colormap", "hot",
                                 "--opacity", "0.7", "--window", "50", "250", "--threshold", "100", "-o", out])
        self.assertEqual(code, 0, stderr)
        self.assertEqual(sitk.ReadImage(out).GetNumberOfComponentsPerPixel(), 3)
        # a parameter the method does not take, an unknown method: a plain message, exit code 2
        code, _, stderr = _main(["fuse", self.a, self.b, "--method", "max", "--sigma", "2", "-o", out])
        self.assertEqual(code, 2)
        self.assertIn("Bad parameter", stderr)
        self.assertIn("'max' takes no parameters", stderr)  # not Python's "unexpected keyword argument"
        code, _, stderr = _main(["fuse", self.a, self.b, "--method", "average", "--levels", "3", "-o", out])
        self.assertEqual(code, 2)
        self.assertIn("no parameter 'levels'", stderr)
        self.assertIn("'average' takes weight", stderr)
        code, _, stderr = _main(["fuse", self.a, self.b, "--method", "nope", "-o", out])
        self.assertEqual(code, 2)
        self.assertIn("Unknown fusion method", stderr)
        self.assertNotIn("Traceback", stderr)

    def assert_window_help_says_every_method(self, command: str) -> None:
        code, help_text, _ = _main([command, "--help"])
        self.assertEqual(code, 0)
        flat = " ".join(help_text.split())
        self.assertNotIn("overlay: display window", flat)
        self.assertIn("every method", flat)

    def test_window_is_the_functional_window_of_every_method(self) -> None:
        # --window sets window_b for every method (a PET's SUV range for wavelet, average, ...), but --help
        # called it "overlay: display window", so a user windowing a PET for another method would not find it
        self.assert_window_help_says_every_method("fuse")
        out = os.path.join(self.tmp.name, "windowed.nii.gz")
        code, _, stderr = _main(["fuse", self.a, self.b, "--method", "wavelet", "--window", "50", "150", "-o", out])
        self.assertEqual(code, 0, stderr)
        a, b = (io.read_image(p, keep_color=True) for p in (self.a, self.b))  # as the CLI reads them
        want = sitk.GetArrayFromImage(fusion.fuse(a, b, "wavelet", window_b=(50, 150)).image)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(out)), want)
        plain = sitk.GetArrayFromImage(fusion.fuse(a, b, "wavelet").image)
        self.assertGreater(np.abs(want - plain).max(), 10.0)  # the window did change the fusion

    def test_run_window_means_what_fuse_window_means(self) -> None:
        # `run --window` went to the overlay only: average and wavelet ignored it without a word, so one flag
        # fused one pair 53 of 255 apart in `fuse` and `run`
        self.assert_window_help_says_every_method("run")
        windowed = os.path.join(self.tmp.name, "windowed")
        code, _, stderr = _main(["run", self.a, self.b, "--output-dir", windowed, "--no-register",
                                 "--methods", "average,wavelet,overlay", "--window", "50", "150"])
        self.assertEqual(code, 0, stderr)
        with open(os.path.join(windowed, "metrics.json"), encoding="utf-8") as fh:
            recorded = json.load(fh)["fusions"]
        for method in ("average", "wavelet", "overlay"):
            with self.subTest(method=method):
                out, plain = (os.path.join(self.tmp.name, f"fuse_{method}{n}.png") for n in ("", "_plain"))
                for path, extra in ((out, ["--window", "50", "150"]), (plain, [])):
                    code, _, stderr = _main(["fuse", self.a, self.b, "--method", method, *extra, "-o", path])
                    self.assertEqual(code, 0, stderr)
                by_run = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(windowed, f"fused_{method}.png")))
                np.testing.assert_array_equal(by_run, sitk.GetArrayFromImage(sitk.ReadImage(out)))
                # and the window matters for this method (a second `run` without it, and its report, took half
                # this test's time: the unwindowed fusion is the same by `fuse`)
                unwindowed = sitk.GetArrayFromImage(sitk.ReadImage(plain))
                self.assertGreater(np.abs(by_run.astype(float) - unwindowed).max(), 10.0)
                self.assertEqual(recorded[method]["parameters"]["window_b"], [50.0, 150.0])

    def _ct_pet(self) -> tuple[str, str]:
        """A CT in HU (air -1024, fat -100, soft tissue 50, a bone spot at 3000) and a PET on its grid, as files."""
        ct = np.full((4, 24, 24), -1024, np.int16)
        ct[:, 3:21, 3:21], ct[:, 8:16, 8:16], ct[:, 11:13, 11:13] = -100, 50, 3000
        pet = (np.random.default_rng(0).random(ct.shape) * 2 + 1).astype(np.float32)
        paths = []
        for arr, name in ((ct, "ct.nii.gz"), (pet, "pet.nii.gz")):
            image = sitk.GetImageFromArray(arr)
            image.SetSpacing((0.8, 0.8, 2.0))
            paths.append(os.path.join(self.tmp.name, name))
            sitk.WriteImage(image, paths[-1])
        return paths[0], paths[1]

    def _assert_fuses_as(self, ct: str, pet: str, flag_sets: tuple[list[str], ...], want: np.ndarray) -> None:
        """`fuse --method average` of the pair with each set of window flags writes ``want``."""
        for flags in flag_sets:
            with self.subTest(flags=flags):
                out = os.path.join(self.tmp.name, f"{flags[0][2:]}.nii.gz")
                code, _, stderr = _main(["fuse", ct, pet, "--method", "average", *flags, "-o", out])
                self.assertEqual(code, 0, stderr)
                np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(out)), want)

    def _assert_refused(self, argv: list[str], out: str, message: str) -> str:
        """The command is refused (exit status 2) with ``message``, no traceback and nothing at ``out``; its
        stderr."""
        code, _, stderr = _main(argv)
        self.assertEqual(code, 2, stderr)
        self.assertIn(message, stderr)
        self.assertNotIn("Traceback", stderr)
        self.assertFalse(os.path.exists(out))
        return stderr

    def test_window_a_sets_the_anatomical_window_as_low_high_or_as_slicers_window_level(self) -> None:
        """A CT under a fusion was min-max scaled over -1024..3000 HU, fat (-100) and soft tissue (50) 9.5 of 255
        grey levels apart: flat grey. fuse(window_a=...) set its window in Python only; `fuse` and `run` had
        --window (B's) and nothing for A. --window-a LO HI is window_a; --window-level-a WINDOW LEVEL is the same
        window as Slicer shows it (400 40: -160..240, where the two tissues lie 95.6 grey levels apart)."""
        ct, pet = self._ct_pet()
        for command in ("fuse", "run"):
            code, help_text, _ = _main([command, "--help"])
            self.assertEqual(code, 0)
            self.assertIn("--window-a LO HI", help_text)
            self.assertIn("--window-level-a WINDOW LEVEL", help_text)
        a, b = (io.read_image(p, keep_color=True) for p in (ct, pet))
        want = sitk.GetArrayFromImage(fusion.fuse(a, b, "average", window_a=(-160, 240)).image)
        self._assert_fuses_as(ct, pet, (["--window-a", "-160", "240"], ["--window-level-a", "400", "40"]), want)
        # soft tissue against fat in the fused image (half of it A's): 5.0 of 255 apart without the window, 48.1 with it
        plain = sitk.GetArrayFromImage(fusion.fuse(a, b, "average").image)
        hu = sitk.GetArrayFromImage(a)
        self.assertLess(plain[hu == 50].mean() - plain[hu == -100].mean(), 10.0)
        self.assertGreater(want[hu == 50].mean() - want[hu == -100].mean(), 40.0)
        # `run` passes it to every method, and metrics.json records it
        out_dir = os.path.join(self.tmp.name, "run")
        code, _, stderr = _main(["run", ct, pet, "--output-dir", out_dir, "--no-register", "--methods",
                                 "average,overlay", "--window-level-a", "400", "40"])
        self.assertEqual(code, 0, stderr)
        with open(os.path.join(out_dir, "metrics.json"), encoding="utf-8") as fh:
            recorded = json.load(fh)["fusions"]
        for method in ("average", "overlay"):
            self.assertEqual(recorded[method]["parameters"]["window_a"], [-160.0, 240.0])
        # refused as --window is: both forms at once, a width of 0 or less, a window beside every voxel of A
        for flags, message in ((["--window-a", "-160", "240", "--window-level-a", "400", "40"],
                                "Both --window-a and --window-level-a"),
                               (["--window-level-a", "0", "40"], "the window width (the first number) must be more"),
                               # (not window_a (nan, nan), named as --window-a, which was not given)
                               (["--window-level-a", "400", "nan"], "--window-level-a 400 nan: the window width and "
                                "level must be finite"),
                               (["--window-level-a", "inf", "40"], "--window-level-a inf 40: the window width and "
                                "level must be finite"),
                               (["--window-a", "240", "-160"], "window_a (240.0, -160.0) is not a window"),
                               (["--window-a", "5000", "6000"], "(window_a; CLI --window-a) holds none of its values")):
            with self.subTest(flags=flags):
                out = os.path.join(self.tmp.name, "refused.nii.gz")
                self._assert_refused(["fuse", ct, pet, *flags, "-o", out], out, message)

    def test_window_level_sets_the_functional_window_as_slicer_shows_it(self) -> None:
        """--window-level WINDOW LEVEL is the functional image B's window as Slicer shows it, as --window-level-a is
        A's. Without it, argparse took `--window-level 2 2` as an abbreviation of --window-level-a: the PET's window
        was put on the CT (window_a 1..3 HU, refused or, on an image with values there, fused), B's left min..max."""
        ct, pet = self._ct_pet()  # the PET: 1..3
        for command in ("fuse", "run"):
            code, help_text, _ = _main([command, "--help"])
            self.assertEqual(code, 0)
            self.assertIn("--window-level WINDOW LEVEL", help_text)
        a, b = (io.read_image(p, keep_color=True) for p in (ct, pet))
        want = sitk.GetArrayFromImage(fusion.fuse(a, b, "average", window_b=(1.5, 2.5)).image)
        self.assertFalse(np.array_equal(want, sitk.GetArrayFromImage(fusion.fuse(a, b, "average").image)))
        self._assert_fuses_as(ct, pet, (["--window", "1.5", "2.5"], ["--window-level", "1", "2"]), want)
        # both images' windows in Slicer's form at once
        out = os.path.join(self.tmp.name, "both.nii.gz")
        code, _, stderr = _main(["fuse", ct, pet, "--method", "average", "--window-level-a", "400", "40",
                                 "--window-level", "1", "2", "-o", out])
        self.assertEqual(code, 0, stderr)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(out)), sitk.GetArrayFromImage(
            fusion.fuse(a, b, "average", window_a=(-160, 240), window_b=(1.5, 2.5)).image))
        # `run` passes it to every method as window_b, and metrics.json records it
        out_dir = os.path.join(self.tmp.name, "run")
        code, _, stderr = _main(["run", ct, pet, "--output-dir", out_dir, "--no-register", "--methods",
                                 "average,overlay", "--window-level", "1", "2"])
        self.assertEqual(code, 0, stderr)
        with open(os.path.join(out_dir, "metrics.json"), encoding="utf-8") as fh:
            recorded = json.load(fh)["fusions"]
        for method in ("average", "overlay"):
            self.assertEqual(recorded[method]["parameters"]["window_b"], [1.5, 2.5])
            self.assertNotIn("window_a", recorded[method]["parameters"])
        # refused as --window-level-a is: both forms at once, a width of 0 or less, NaN or inf, a window beside B
        for command in ("fuse", "run"):
            for flags, message in ((["--window", "0", "5", "--window-level", "5", "2.5"],
                                    "Both --window and --window-level were given: they set the same window of the "
                                    "functional image B"),
                                   (["--window-level", "0", "2"], "--window-level 0 2: the window width (the first "
                                    "number) must be more than 0"),
                                   (["--window-level", "-1", "2"], "the window width (the first number) must be more"),
                                   (["--window-level", "5", "nan"], "--window-level 5 nan: the window width and level "
                                    "must be finite"),
                                   (["--window-level", "inf", "2"], "--window-level inf 2: the window width and level "
                                    "must be finite"),
                                   (["--window-level", "10", "100"], "(window_b; CLI --window) holds none of its "
                                    "values")):
                with self.subTest(command=command, flags=flags):
                    out = os.path.join(self.tmp.name, "refused.nii.gz")
                    target = ["-o", out] if command == "fuse" else ["--output-dir", out, "--no-register",
                                                                    "--methods", "average"]
                    stderr = self._assert_refused([command, ct, pet, *flags, *target], out, message)
                    self.assertIn("--window-level 5 2.5 for a PET's SUV 0..5" if "holds none" not in message
                                  and "Both" not in message else "", stderr)

    def test_a_vector_image_is_refused_and_colour_pictures_are_fused(self) -> None:
        """A 3-component vector image (a displacement field: NRRD kinds vector with values either side of 0, or
        covariant-vector; a NIfTI of intent displacement vector) had been fused as RGB, its x, y, z painted as red,
        green and blue, and written as a colour image, rc 0. Refused now, as A or B, naming the fix; colour pictures,
        8-bit or float, with a file that says colour or one that says nothing, are fused as before."""
        import struct

        shape = (4, 24, 24)
        rng = np.random.default_rng(5)
        grey = sitk.GetImageFromArray((rng.random(shape) * 100).astype(np.float32))
        a = os.path.join(self.tmp.name, "a.nii.gz")
        sitk.WriteImage(grey, a)

        def write(arr: np.ndarray, name: str, kind: str | None = None, intent: int | None = None) -> str:
            path = os.path.join(self.tmp.name, name)
            sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=True), path)
            if kind is not None:  # ITK writes "vector" for every multi-component image
                with open(path, "rb") as fh:
                    content = fh.read()
                with open(path, "wb") as fh:
                    fh.write(content.replace(b"kinds: vector", f"kinds: {kind}".encode(), 1))
            if intent is not None:  # the NIfTI-1 header's intent_code, a 16-bit integer at byte 68
                with open(path, "r+b") as fh:
                    fh.seek(68)
                    fh.write(struct.pack("<h", intent))
            return path

        field = rng.normal(0.0, 3.0, shape + (3,)).astype(np.float32)
        refused = {write(field, "field.nrrd"): "negative values (down to",
                   write(field, "field.nii.gz"): "negative values (down to",
                   write(np.abs(field), "gradients.nrrd", kind="covariant-vector"): "NRRD kind 'covariant-vector'",
                   write(np.abs(field), "displacement.nii", intent=1006): "intent displacement vector",
                   # a 3-echo MR stored as int16 has no negative value; colour pictures are never signed integers
                   write((np.abs(field) * 300).astype(np.int16), "echoes.nrrd"): "16-bit signed integers"}
        for path, said in refused.items():
            for order in ((a, path), (path, a)):
                with self.subTest(file=os.path.basename(path), as_b=order[1] == path):
                    out = os.path.join(self.tmp.name, "fused.nii.gz")
                    code, _, stderr = _main(["fuse", *order, "--method", "average", "-o", out])
                    self.assertEqual(code, 2, stderr)
                    self.assertIn("is not a colour picture", stderr)
                    self.assertIn(said, stderr)
                    self.assertIn("sitk.VectorMagnitude(image)", stderr)
                    self.assertFalse(os.path.exists(out))
        # in Python too, an image without a file (its values say it)
        with self.assertRaises(InputError) as ctx:
            fusion.fuse(grey, sitk.GetImageFromArray(field, isVector=True), "overlay")
        self.assertIn("functional image (b) has 3 components per pixel and is not a colour picture", str(ctx.exception))
        # colour pictures: 8-bit, float 0..1 (written as kinds vector), a float one whose file says RGB-color (a
        # B-spline overshoot below 0 included: the file says what it is)
        picture = rng.random(shape + (3,))
        # and a grey image stored as RGB (R = G = B, negative values too: a CT in HU), fused as its grey values
        for path, components in ((write((picture * 255).astype(np.uint8), "rgb8.nrrd"), 3),
                                 (write(picture.astype(np.float32), "rgb_float.nrrd"), 3),
                                 (write((picture - 0.01).astype(np.float32), "rgb_color.nrrd", kind="RGB-color"), 3),
                                 (write(np.repeat(field[..., :1], 3, -1), "grey_as_rgb.nrrd"), 1),
                                 (write(np.repeat((field[..., :1] * 300).astype(np.int16), 3, -1), "grey_int16.nrrd"),
                                  1)):
            with self.subTest(colour=os.path.basename(path)):
                out = os.path.join(self.tmp.name, "colour.nrrd")
                code, _, stderr = _main(["fuse", a, path, "--method", "average", "-o", out])
                self.assertEqual(code, 0, stderr)
                self.assertEqual(sitk.ReadImage(out).GetNumberOfComponentsPerPixel(), components)

    def test_a_colour_picture_resampled_with_bspline_is_fused_as_colour(self) -> None:
        """B-spline interpolation overshoots below 0 at a colour picture's edges: any negative value had it refused
        as a vector image (2482fcc), even ``mmfusion resample --interpolation bspline``'s own output of a colour PNG
        (down to -6e-09 on smooth colours; -63 of 255 here, at sharp edges). Negative values that weigh little
        beside the positive ones are taken as overshoot; a displacement field's are still refused."""
        rng = np.random.default_rng(11)
        blocks = np.kron(rng.integers(0, 2, (6, 6, 3)) * 255, np.ones((4, 4, 1))).astype(np.uint8)  # sharp edges
        picture = os.path.join(self.tmp.name, "colour.png")
        sitk.WriteImage(sitk.GetImageFromArray(blocks, isVector=True), picture)
        grey = sitk.GetImageFromArray((rng.random((24, 24)) * 200).astype(np.uint8))
        grey.SetOrigin((0.4, 0.3))  # off the picture's voxels: interpolated between them
        a = os.path.join(self.tmp.name, "grey.nrrd")
        sitk.WriteImage(grey, a)
        resampled = os.path.join(self.tmp.name, "colour_bspline.nrrd")
        code, _, stderr = _main(["resample", picture, "--reference", a, "--interpolation", "bspline", "-o", resampled])
        self.assertEqual(code, 0, stderr)
        values = sitk.GetArrayFromImage(sitk.ReadImage(resampled))
        self.assertLess(float(values.min()), -1.0)  # the overshoot this is about
        out = os.path.join(self.tmp.name, "fused.nrrd")
        for order in ((a, resampled), (resampled, a)):
            with self.subTest(as_b=order[1] == resampled):
                code, _, stderr = _main(["fuse", *order, "--method", "average", "-o", out])
                self.assertEqual(code, 0, stderr)
        self.assertEqual(sitk.ReadImage(out).GetNumberOfComponentsPerPixel(), 1)  # a's luminance, fused with b
        code, _, stderr = _main(["fuse", a, resampled, "--method", "average", "-o", out])
        self.assertEqual(sitk.ReadImage(out).GetNumberOfComponentsPerPixel(), 3)  # a colour b is fused as colour
        # a field whose components run either side of 0, in the same 0..255 range, is still refused
        field = os.path.join(self.tmp.name, "field.nrrd")
        field_image = sitk.GetImageFromArray(rng.normal(0.0, 60.0, (24, 24, 3)).astype(np.float32), isVector=True)
        field_image.CopyInformation(grey)
        sitk.WriteImage(field_image, field)
        code, _, stderr = _main(["fuse", a, field, "--method", "average", "-o", out])
        self.assertEqual(code, 2, stderr)
        self.assertIn("is not a colour picture", stderr)
        # a file that says colour (NRRD RGB-color) is colour, whatever its values, in run as in fuse: its kind, dropped
        # by the resampling onto the fixed grid, had it refused by run's fusion after the registration
        labelled = os.path.join(self.tmp.name, "rgb_color.nrrd")
        with open(field, "rb") as fh:
            content = fh.read()
        with open(labelled, "wb") as fh:
            fh.write(content.replace(b"kinds: vector", b"kinds: RGB-color", 1))
        code, _, stderr = _main(["fuse", a, labelled, "--method", "average", "-o", out])
        self.assertEqual(code, 0, stderr)
        folder = os.path.join(self.tmp.name, "run_rgb_color")
        code, _, stderr = _main(["run", a, labelled, "--output-dir", folder, "--no-register", "--methods", "average"])
        self.assertEqual(code, 0, stderr)

    def test_run_refuses_a_method_flag_no_method_run_takes(self) -> None:
        # `fuse --method average --levels 3` is refused, but `run --methods average --levels 3` had dropped the
        # flag (each method gets the flags it takes) and fused without it, rc 0
        for methods, extra, flags in (("average", ["--levels", "3"], "--levels given"),
                                      ("average,max", ["--sigma", "2", "--deep-device", "cpu"],
                                       "--sigma, --deep-device given")):
            with self.subTest(methods=methods, extra=extra):
                folder = os.path.join(self.tmp.name, "run_" + methods.replace(",", "_"))
                code, out, stderr = _main(["run", self.a, self.b, "--output-dir", folder, "--no-register",
                                           "--methods", methods, *extra])
                self.assertEqual(code, 2, out + stderr)
                self.assertIn(flags, stderr)
                self.assertIn(f"none of the methods run ({methods.replace(',', ', ')})", stderr)
                self.assertIn("Fix:", stderr)
                self.assertFalse(os.path.exists(folder))
        # no method at all is named as such, not as a flag none of "()" takes
        folder = os.path.join(self.tmp.name, "none")
        code, _, stderr = _main(["run", self.a, self.b, "--output-dir", folder, "--no-register", "--methods", ",",
                                 "--levels", "3"])
        self.assertEqual(code, 2, stderr)
        self.assertIn("No fusion method was given", stderr)
        self.assertNotIn("none of the methods run", stderr)
        # a flag one of the methods takes is still given to that one alone
        folder = os.path.join(self.tmp.name, "taken")
        code, _, stderr = _main(["run", self.a, self.b, "--output-dir", folder, "--no-register",
                                 "--methods", "average,wavelet", "--levels", "2"])
        self.assertEqual(code, 0, stderr)
        with open(os.path.join(folder, "metrics.json"), encoding="utf-8") as fh:
            recorded = json.load(fh)["fusions"]
        self.assertEqual(recorded["wavelet"]["parameters"]["levels"], 2)
        self.assertNotIn("levels", recorded["average"]["parameters"])

    def test_engine_warnings_print_as_warning_lines(self) -> None:
        """A Python warning of the engine (read_image's alpha dropped) printed as Python's formatter prints it,
        ``/path/to/MultimodalFusionLib/io.py:2115: UserWarning: ...`` and the source line of the call, where the
        command's own print as ``warning: ...``. Now every warning raised during the command prints so, on stderr (run
        --json's stdout stays JSON); Python's filters still apply (``-W error`` raises it), and the caller's
        showwarning is back afterwards and is not called meanwhile."""
        import warnings

        from PIL import Image

        rng = np.random.default_rng(7)
        colour = rng.integers(0, 256, (40, 48, 3)).astype(np.uint8)
        alpha = np.full((40, 48), 255, np.uint8)
        alpha[:, :12] = 0  # a transparent background: 25% of the pixels
        masked, opaque = (os.path.join(self.tmp.name, n) for n in ("masked.png", "opaque.png"))
        Image.fromarray(np.dstack([colour, alpha]), "RGBA").save(masked)
        Image.fromarray(colour).save(opaque)
        shown = []

        def own(message, category, filename, lineno, file=None, line=None):  # a script's own, e.g. a GUI's log
            shown.append(str(message))

        commands = {"fuse": ["fuse", masked, opaque, "--method", "average", "-o", os.path.join(self.tmp.name, "f.png")],
                    "run --json": ["run", masked, opaque, "-o", os.path.join(self.tmp.name, "run"), "--no-register",
                                   "--methods", "average", "--json"]}
        for name, argv in commands.items():
            with self.subTest(command=name), warnings.catch_warnings():
                warnings.simplefilter("default")  # Python's, which the command line has
                warnings.showwarning = own
                code, stdout, stderr = _main(argv)
                self.assertIs(warnings.showwarning, own)
            self.assertEqual(code, 0, stderr)
            self.assertEqual(shown, [])
            said = [line for line in stderr.splitlines() if "alpha is not one value" in line]
            self.assertEqual(len(said), 1, stderr)
            self.assertTrue(said[0].startswith(f"warning: '{masked}' is an RGBA picture"), said[0])
            self.assertNotIn("UserWarning", stderr)
            self.assertNotIn(".py:", stderr)
            if name == "run --json":
                self.assertIn("metrics", json.loads(stdout))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # python -W error
            with self.assertRaisesRegex(UserWarning, "alpha is not one value"):
                _main(commands["fuse"])

    def test_commands_overlapping_in_threads_put_the_callers_showwarning_back(self) -> None:
        """Two commands run from two threads of a script (cli.main in each), the first ending while the second runs.
        Each command had saved the showwarning it found and put it back: the second had saved the first's line
        printer, and left it installed for good (a script's own warnings, after both ended, printed as ``warning:``
        lines on stderr, its showwarning never called again), while the first, ending, had put the script's back
        under the second (whose warnings then went to the script's showwarning). The line printer is now installed
        by the first command to start and removed by the last to end."""
        import threading
        import warnings

        shown = []

        def own(message, category, filename, lineno, file=None, line=None):  # a script's own, e.g. a GUI's log
            shown.append(str(message))

        first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
        err = textio.StringIO()

        def first() -> None:
            with cli._warnings_as_lines():  # as cli.main runs a command
                first_in.set()
                second_in.wait(10)
            first_out.set()

        def second() -> None:
            first_in.wait(10)
            with cli._warnings_as_lines():
                second_in.set()
                first_out.wait(10)
                warnings.warn("raised by the second command after the first ended", stacklevel=1)

        with warnings.catch_warnings(), contextlib.redirect_stderr(err):
            warnings.simplefilter("always")
            warnings.showwarning = own
            threads = [threading.Thread(target=first), threading.Thread(target=second)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(20)
            self.assertIs(warnings.showwarning, own)
            warnings.warn("the script's own, after both commands", stacklevel=1)
        self.assertEqual(err.getvalue(), "warning: raised by the second command after the first ended\n")
        self.assertEqual(shown, ["the script's own, after both commands"])

    def test_evaluate_refuses_images_on_different_grids(self) -> None:
        # fuse refuses a source off the other's grid, but evaluate compared shapes only: a source or a fused
        # volume 100 mm away, of the same size, was scored without a word (rc 0)
        rng = np.random.default_rng(0)
        vol = sitk.GetImageFromArray(rng.random((8, 12, 16)).astype(np.float32) * 100)
        vol.SetSpacing((1.0, 1.2, 1.5))
        paths = {}
        for name, origin in (("a", (-10.0, 20.0, 5.0)), ("b", (-10.0, 20.0, 5.0)), ("far", (90.0, 20.0, 5.0))):
            vol.SetOrigin(origin)
            paths[name] = os.path.join(self.tmp.name, f"{name}.nii.gz")
            sitk.WriteImage(vol, paths[name])
        fused = os.path.join(self.tmp.name, "fused.nii.gz")
        self.assertEqual(_main(["fuse", paths["a"], paths["b"], "-o", fused])[0], 0)
        for argv, named in (([fused, paths["a"], paths["far"]], "The source image B (far.nii.gz) is not on"),
                            ([paths["far"], paths["a"], paths["b"]], "The fused image (far.nii.gz) is not on")):
            with self.subTest(argv=argv):
                code, stdout, stderr = _main(["evaluate", "--fused", *argv])
                self.assertEqual(code, 2, stdout + stderr)
                self.assertIn(named, stderr)
                self.assertIn("origin (LPS) (90, 20, 5) vs (-10, 20, 5)", stderr)
                self.assertEqual(stdout, "")
        code, stdout, stderr = _main(["evaluate", "--fused", fused, paths["a"], paths["b"]])
        self.assertEqual(code, 0, stderr)

    def test_evaluate_a_fused_file_that_keeps_no_origin_or_direction(self) -> None:
        """evaluate skipped the grid check only for a fused .png/.jpg/.bmp: a fused .tif/.tiff, which ITK writes
        without origin or direction as well, was refused as off A's grid (rc 2, "origin (LPS) (0, 0) vs (5, -3)")
        though fuse had written it from those very sources; a .vtk, which keeps the origin but no direction, was
        refused on a turned grid. fuse now warns of what such a file drops, as of a PNG's."""
        rng = np.random.default_rng(0)
        c, s = np.cos(0.3), np.sin(0.3)
        paths = {}
        for name in ("a", "b"):
            image = sitk.GetImageFromArray((rng.random((24, 32)) * 200).astype(np.float32))
            image.SetOrigin((5.0, -3.0))
            image.SetSpacing((0.5, 0.5))
            image.SetDirection((c, -s, s, c))
            paths[name] = os.path.join(self.tmp.name, f"{name}.nrrd")
            sitk.WriteImage(image, paths[name])
        for ext, lost in ((".tif", "keeps no origin or direction"), (".tiff", "keeps no origin or direction"),
                          (".vtk", "keeps no direction")):
            with self.subTest(ext=ext):
                fused = os.path.join(self.tmp.name, "fused" + ext)
                code, _, stderr = _main(["fuse", paths["a"], paths["b"], "--method", "average", "-o", fused])
                self.assertEqual(code, 0, stderr)
                self.assertRegex(stderr, "(?m)^warning: .*" + lost)
                code, stdout, stderr = _main(["evaluate", "--fused", fused, paths["a"], paths["b"], "--json"])
                self.assertEqual(code, 0, stderr)
                self.assertGreater(json.loads(stdout)["SSIM"], 0.5)
        # what a .vtk keeps is still checked: its origin
        far = sitk.ReadImage(os.path.join(self.tmp.name, "fused.vtk"))
        far.SetOrigin((95.0, -3.0))
        sitk.WriteImage(far, os.path.join(self.tmp.name, "far.vtk"))
        code, _, stderr = _main(["evaluate", "--fused", os.path.join(self.tmp.name, "far.vtk"), paths["a"],
                                 paths["b"]])
        self.assertEqual(code, 2)
        self.assertIn("The fused image (far.vtk) is not on", stderr)

    def test_evaluate_a_fused_volume_that_keeps_no_direction(self) -> None:
        # GIPL and MRC volumes keep the origin and spacing but no direction, as a .vtk: fuse wrote them without a
        # word and evaluate refused them as off A's grid ("direction (LPS) (1, 0, 0, ...) vs (0.955, ...)")
        rng = np.random.default_rng(0)
        c, s = np.cos(0.3), np.sin(0.3)
        paths = {}
        for name in ("a", "b"):
            image = sitk.GetImageFromArray((rng.random((6, 24, 32)) * 200).astype(np.float32))
            image.SetOrigin((5.0, -3.0, 2.0))
            image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
            paths[name] = os.path.join(self.tmp.name, f"{name}.nrrd")
            sitk.WriteImage(image, paths[name])
        for ext in (".gipl", ".gipl.gz", ".mrc"):  # .gipl.gz had been refused as an output name
            with self.subTest(ext=ext):
                fused = os.path.join(self.tmp.name, "fused3d" + ext)
                code, _, stderr = _main(["fuse", paths["a"], paths["b"], "--method", "average", "-o", fused])
                self.assertEqual(code, 0, stderr)
                self.assertRegex(stderr, "(?m)^warning: .*keeps no direction")
                code, stdout, stderr = _main(["evaluate", "--fused", fused, paths["a"], paths["b"], "--json"])
                self.assertEqual(code, 0, stderr)
        # a compressed Analyze/NIfTI pair (ITK-SNAP's, ANTs' .hdr.gz/.img.gz) keeps the direction: read back on A's grid
        for name, files in (("pair.hdr.gz", ["pair.hdr.gz", "pair.img.gz"]), ("other.img.gz", ["other.hdr.gz",
                                                                                               "other.img.gz"])):
            with self.subTest(name=name):
                folder = os.path.join(self.tmp.name, name.replace(".", "_"))
                code, _, stderr = _main(["fuse", paths["a"], paths["b"], "--method", "average", "-o",
                                         os.path.join(folder, name)])
                self.assertEqual(code, 0, stderr)
                self.assertEqual(sorted(os.listdir(folder)), files)
                code, stdout, stderr = _main(["evaluate", "--fused", os.path.join(folder, name), paths["a"], paths["b"],
                                              "--json"])
                self.assertEqual(code, 0, stderr)

    def test_laplacian_sigma_too_wide_is_refused(self) -> None:
        # a Gaussian kernel of 8 sigma + 1 taps: --sigma 1e9 asked numpy for 60 GB (a MemoryError traceback)
        out = os.path.join(self.tmp.name, "lap.png")
        code, _, stderr = _main(["fuse", self.a, self.b, "--method", "laplacian", "--sigma", "1e9", "-o", out])
        self.assertEqual(code, 2, stderr)
        self.assertIn("Laplacian sigma 1e+09 voxels is wider than", stderr)
        self.assertFalse(os.path.exists(out))
        code, _, stderr = _main(["fuse", self.a, self.b, "--method", "laplacian", "--sigma", "4", "-o", out])
        self.assertEqual(code, 0, stderr)

    def test_fuse_refuses_images_on_different_grids(self) -> None:
        moved = os.path.join(self.tmp.name, "shifted.nii.gz")
        img = io.read_image(self.b)
        img.SetOrigin((10.0, 0.0))
        io.write_image(img, moved)
        code, _, stderr = _main(["fuse", self.a, moved, "-o", os.path.join(self.tmp.name, "x.nii.gz")])
        self.assertEqual(code, 2)
        self.assertIn("is not on the anatomical image (a)'s grid", stderr)

    def test_grid_error_names_only_what_differs(self) -> None:
        # only the direction differs: the message must say so, not list equal sizes/spacings/origins
        turned = os.path.join(self.tmp.name, "turned.nii.gz")
        img = io.read_image(self.b)
        img.SetDirection((0.0, -1.0, 1.0, 0.0))
        io.write_image(img, turned)
        code, _, stderr = _main(["fuse", self.a, turned, "-o", os.path.join(self.tmp.name, "x.nii.gz")])
        self.assertEqual(code, 2)
        self.assertIn("grid: direction (LPS) (0, -1, 1, 0) vs (1, 0, 0, 1)", stderr)
        self.assertNotIn("size", stderr.split("Fix")[0])

    def test_outputs_never_overwrite_inputs(self) -> None:
        # the output named like an input (directly, or by another spelling of the path): refused, input intact
        a_copy = os.path.join(self.tmp.name, "a.png")
        with open(self.a, "rb") as src, open(a_copy, "wb") as dst:
            dst.write(src.read())
        before = open(a_copy, "rb").read()
        other_spelling = os.path.join(self.tmp.name, ".", "sub", "..", "a.png")
        os.makedirs(os.path.join(self.tmp.name, "sub"))
        for argv in (["fuse", a_copy, self.b, "-o", a_copy],
                     ["fuse", self.b, a_copy, "--method", "max", "-o", other_spelling],
                     ["resample", a_copy, "--reference", self.b, "-o", a_copy]):
            with self.subTest(argv[0]):
                code, _, stderr = _main(argv)
                self.assertEqual(code, 2, stderr)
                self.assertIn("would overwrite the input file", stderr)
                self.assertEqual(open(a_copy, "rb").read(), before)
        # the report folder holding an input named like a report file
        metrics_json = os.path.join(self.tmp.name, "metrics.json")
        with open(metrics_json, "w") as fh:
            fh.write("{}")
        code, _, stderr = _main(["fuse", self.a, self.b, "-o", os.path.join(self.tmp.name, "f.nii.gz"),
                                 "--report", self.tmp.name])
        self.assertEqual(code, 0, stderr)  # metrics.json there is not an input: a report may replace it
        with self.assertRaises(InputError):
            io.check_not_overwriting_inputs([], [os.path.join(self.tmp.name, "montage_average.png"), None,
                                                 self.tmp.name],
                                            patterns=[os.path.join(self.tmp.name, "montage_*.png")])
        io.check_not_overwriting_inputs([os.path.join(self.tmp.name, "fused.png")], [self.tmp.name, a_copy, None])
        # literal names are literal: brackets are not glob classes, in either direction
        bracket = os.path.join(self.tmp.name, "scan[1].png")
        with open(bracket, "wb") as fh:
            fh.write(before)
        with self.assertRaises(InputError):
            io.check_not_overwriting_inputs([bracket], [bracket])
        plain = os.path.join(self.tmp.name, "fused1.png")
        with open(plain, "wb") as fh:
            fh.write(before)
        io.check_not_overwriting_inputs([os.path.join(self.tmp.name, "fused[1].png")], [plain])
        io.check_not_overwriting_inputs([], [plain], patterns=[os.path.join(self.tmp.name, "fused[1]*")])

    def test_evaluate_on_the_written_file_gives_the_run_s_numbers(self) -> None:
        # the average of two 8-bit images has many exact .5 values: the PNG must round them as the
        # metrics do; the overlay's metrics must be those of the 8-bit colours stored in the file
        # and a saturated colour PET slice fused on Y: the colours put back must not be clipped away
        # from the fused brightness (metrics of the stored colours, which keep it)
        from MultimodalFusionLib.fusion import color

        hot = np.round(color.apply_colormap(self._grey8()[1] / 255.0, "hot") * 255.0).astype(np.uint8)
        colour_b = os.path.join(self.tmp.name, "pet_hot.png")
        sitk.WriteImage(sitk.GetImageFromArray(hot, isVector=True), colour_b)
        for method, b in (("average", self.b), ("overlay", self.b), ("wavelet", colour_b), ("max", colour_b)):
            with self.subTest(method=method, b=b):
                out = os.path.join(self.tmp.name, f"{method}.png")
                rep = os.path.join(self.tmp.name, f"rep_{method}")
                code, _, stderr = _main(["fuse", self.a, b, "--method", method, "-o", out, "--report", rep])
                self.assertEqual(code, 0, stderr)
                recorded = json.load(open(os.path.join(rep, "metrics.json")))["metrics"][method]
                code, stdout, _ = _main(["evaluate", "--fused", out, self.a, b, "--json"])
                again = json.loads(stdout)
                for key in metrics.FUSION_METRICS:
                    self.assertAlmostEqual(again[key], recorded[key], places=9, msg=key)

    def test_undefined_metrics_print_as_n_a(self) -> None:
        flat = os.path.join(self.tmp.name, "flat.png")
        sitk.WriteImage(sitk.Image([32, 32], sitk.sitkUInt8) + 7, flat)
        code, stdout, _ = _main(["evaluate", "--fused", flat, flat, flat])
        self.assertEqual(code, 0)
        self.assertIn("n/a", stdout)
        self.assertNotIn("nan", stdout)
        self.assertNotIn("-0.000", stdout)

    def test_an_infinite_psnr_prints_as_inf_as_the_report_shows_it(self) -> None:
        """F = A = B: PSNR is infinite (no error), not undefined; the table printed it as n/a, the report as ∞."""
        rep = os.path.join(self.tmp.name, "report")
        fused = os.path.join(self.tmp.name, "same.png")
        code, stdout, _ = _main(["fuse", self.a, self.a, "--method", "average", "-o", fused, "--report", rep])
        self.assertEqual(code, 0)
        lines = stdout.splitlines()
        header, row = lines[[n for n, line in enumerate(lines) if line.startswith("method")][0]:][:2]
        cells = dict(zip(header.split()[1:], row.split()[1:]))
        self.assertEqual((cells["PSNR"], cells["SSIM"]), ("inf", "2.000"))
        page = open(os.path.join(rep, "report.html"), encoding="utf-8").read()
        self.assertIn("<td>∞</td>", page)
        payload = json.loads(open(os.path.join(rep, "metrics.json"), encoding="utf-8").read(),
                             parse_constant=lambda c: self.fail(f"invalid JSON constant {c}"))
        # strict JSON has no infinity: a string, where it had been null as an undefined value is (SSIM's NaN would be)
        self.assertEqual(payload["metrics"]["average"]["PSNR"], "Infinity")
        self.assertEqual(float(payload["metrics"]["average"]["PSNR"]), float("inf"))
        code, stdout, _ = _main(["evaluate", "--fused", fused, self.a, self.a])
        self.assertIn("inf", stdout.splitlines()[1].split())
        code, stdout, _ = _main(["evaluate", "--fused", fused, self.a, self.a, "--json"])  # as metrics.json holds it
        self.assertEqual(json.loads(stdout, parse_constant=lambda c: self.fail(f"invalid JSON constant {c}"))["PSNR"],
                         "Infinity")

    def test_evaluate_json_matches_the_library(self) -> None:
        out = os.path.join(self.tmp.name, "fused.png")
        self.assertEqual(_main(["fuse", self.a, self.b, "--method", "wavelet", "-o", out])[0], 0)
        code, stdout, stderr = _main(["evaluate", "--fused", out, self.a, self.b, "--json"])
        self.assertEqual(code, 0, stderr)
        values = json.loads(stdout)
        expected = metrics.fusion_metrics(io.read_image(out, keep_color=True), io.read_image(self.a, keep_color=True),
                                          io.read_image(self.b, keep_color=True))
        for key in metrics.FUSION_METRICS:
            self.assertAlmostEqual(values[key], expected[key], places=9)
        code, stdout, _ = _main(["evaluate", "--fused", out, self.a, self.b])
        self.assertEqual(code, 0)
        self.assertIn("Qabf", stdout)


if __name__ == "__main__":
    unittest.main()
