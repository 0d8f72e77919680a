"""Bad inputs and unwritable outputs of ``pipeline.run`` and the CLI: clear errors, no tracebacks."""

from __future__ import annotations

import json
import math
import os
import stat
import sys
import tempfile
import unittest

import SimpleITK as sitk

from MultimodalFusionLib import cli, data, io, pipeline
from MultimodalFusionLib.errors import InputError

#: a folder no process can create files in, root included (Linux)
_UNWRITABLE = "/proc/self"


class FusionParametersBeforeRegistrationTest(unittest.TestCase):
    def test_a_bad_fusion_value_fails_before_the_registration(self) -> None:
        """`run --method wavelet --wavelet nosuch` registered first and failed only when it came to fuse."""
        t1 = io.read_image(data.testing_data_dir() / "BrainT1SliceBorder20.png")
        pd = io.read_image(data.testing_data_dir() / "BrainProtonDensitySliceR10X13Y17.png")
        cases = (("wavelet", {"wavelet": "nosuch"}, "Unknown discrete wavelet"),
                 ("laplacian", {"levels": 0}, "at least 1"), ("overlay", {"opacity": 2}, "outside 0..1"),
                 ("overlay", {"colormap": "nosuch"}, "Unknown colour map"), ("average", {"weight": 1.5}, "outside 0..1"),
                 ("average", {"levels": 3}, "no parameter 'levels'"), ("overlay", {"window": (5, 1)}, "window"))
        with tempfile.TemporaryDirectory() as tmp:
            for method, params, message in cases:
                seen: list[str] = []
                with self.subTest(method=method, **params), self.assertRaises(InputError) as ctx:
                    pipeline.run(t1, pd, tmp, methods=method, method_params={method: params},
                                 progress=lambda fraction, text, seen=seen: seen.append(text))
                self.assertIn(message, str(ctx.exception))
                self.assertEqual(seen, [], "nothing (no registration) should have started")
            self.assertEqual(os.listdir(tmp), [])
            # levels beyond what a 16x16 test pair allows are reduced, as on the images, not refused
            pipeline.run(t1, pd, tmp, methods="wavelet", method_params={"wavelet": {"levels": 9}}, register=False)

    def test_an_adaptation_of_an_image_under_8_pixels_fails_before_the_registration(self) -> None:
        """`run --method deep --adapt N` on an image with a side under 8 pixels (deep fusion's MIN_ADAPT_SIZE)
        registered the pair and was refused only when the fusion came to adapt: 15.0 s for a 256x256x6 pair
        registered rigid, affine and B-spline against 4.6 s now (the CLI, one thread; most of it reading the
        network)."""
        t1 = io.read_image(data.testing_data_dir() / "BrainT1SliceBorder20.png")
        pd = io.read_image(data.testing_data_dir() / "BrainProtonDensitySliceR10X13Y17.png")
        strip_t1, strip_pd = t1[:, 100:106], pd[:, 100:106]  # 6 rows of the pair, ITK's [x, y]
        with tempfile.TemporaryDirectory() as tmp:
            seen: list[str] = []
            with self.assertRaises(InputError) as ctx:
                pipeline.run(strip_t1, strip_pd, tmp, methods="deep", method_params={"deep": {"adapt_steps": 2}},
                             progress=lambda fraction, text: seen.append(text))
            self.assertEqual(seen, ["loading images"], "no registration should have started")
            # the sides in ITK's x, y order, as the memory refusal names them (it had been numpy's, 6x221)
            self.assertEqual(ctx.exception.problem, "Per-study adaptation needs images of at least 8 voxels along "
                                                    f"each axis the network sees (got {strip_t1.GetWidth()}x6).")
            self.assertEqual(os.listdir(tmp), [])

    def test_a_run_on_a_pair_under_7_pixels_reports_ssim_as_undefined(self) -> None:
        """`run` on a 64x6 pair (deep fusion without adaptation, or any method) had fused it and then stopped in its
        metrics, "Image of shape (6, 64) is smaller than the SSIM window (7)", its outputs left unreported: SSIM is
        NaN there (n/a, null in metrics.json), as VIF is under 17 pixels, and the report is written."""
        t1 = io.read_image(data.testing_data_dir() / "BrainT1SliceBorder20.png")
        pd = io.read_image(data.testing_data_dir() / "BrainProtonDensitySliceR10X13Y17.png")
        strip_t1, strip_pd = t1[80:144, 100:106], pd[80:144, 100:106]  # 64 x 6 pixels, ITK's [x, y]
        with tempfile.TemporaryDirectory() as tmp:
            values = pipeline.run(strip_t1, strip_pd, tmp, methods="average", register=False)["metrics"]["average"]
            self.assertTrue(math.isnan(values["SSIM"]) and math.isnan(values["VIF"]), values)
            self.assertTrue(math.isfinite(values["Qabf"]) and math.isfinite(values["MI"]), values)
            with open(os.path.join(tmp, "metrics.json"), encoding="utf-8") as fh:
                self.assertIsNone(json.load(fh)["metrics"]["average"]["SSIM"])
            self.assertTrue(os.path.isfile(os.path.join(tmp, "report.html")))


        """The overlay threshold is in the functional image's units (fuse maps it through the window):
        the early check fused its 0..1 test pair with it as given and refused `run --method overlay
        --threshold 100` on 8-bit images, which fuses fine."""
        t1 = io.read_image(data.testing_data_dir() / "BrainT1SliceBorder20.png")
        pd = io.read_image(data.testing_data_dir() / "BrainProtonDensitySliceR10X13Y17.png")
        with tempfile.TemporaryDirectory() as tmp:
            out = pipeline.run(t1, pd, tmp, methods="overlay", method_params={"overlay": {"threshold": 100}},
                               register=False)
            self.assertEqual(out["fusions"][0].parameters["threshold"], 100.0)
            for bad in ("nosuch", float("nan")):  # not a number: refused before any work, as InputError
                with self.subTest(threshold=bad), self.assertRaises(InputError) as ctx:
                    pipeline.run(t1, pd, tmp, methods="overlay", method_params={"overlay": {"threshold": bad}})
                self.assertIn("threshold", str(ctx.exception))


    def test_a_window_beside_every_value_of_its_image_fails_before_the_registration(self) -> None:
        """A window that holds none of its image's values (--window 0 8, SUV, on a PET in Bq/mL) was refused by
        the fusion, after the registration; and where the registered image had voxels outside the moving image's
        field of view (filled with 0), not at all: they lay below the window, the rest above, and the PET was fused
        as a mask of its field of view, rc 0. Checked now on the moving image as given, before any registration."""
        t1 = io.read_image(data.testing_data_dir() / "BrainT1SliceBorder20.png")
        pd = io.read_image(data.testing_data_dir() / "BrainProtonDensitySliceR10X13Y17.png")
        bq = sitk.Cast(pd, sitk.sitkFloat32) * 100.0 + 1000.0  # 1100..25100, "Bq/mL"
        cases = (("average", pd, {"window": (300, 400)}, "functional image (b) (window_b; CLI --window)"),
                 ("overlay", bq, {"window": (0, 8)}, "every voxel is at or above its top"),
                 ("wavelet", bq, {"window_b": (0, 8)}, "holds none of its values (1100..25100)"),
                 ("average", pd, {"window_a": (300, 400)}, "anatomical image (a) (window_a; CLI --window-a)"))
        with tempfile.TemporaryDirectory() as tmp:
            for method, moving, params, message in cases:
                seen: list[str] = []
                with self.subTest(method=method, **params), self.assertRaises(InputError) as ctx:
                    pipeline.run(t1, moving, tmp, methods=["max", method], method_params={method: params},
                                 progress=lambda fraction, text, seen=seen: seen.append(text))
                self.assertIn(message, str(ctx.exception))
                self.assertEqual(seen, ["loading images"], "no registration should have started")
            self.assertEqual(os.listdir(tmp), [])
            # a window the moving image's values lie inside of runs as before (the check is the fusion's rule)
            out = pipeline.run(t1, bq, tmp, methods="average", method_params={"average": {"window": (1000, 9000)}},
                               register=False)
            self.assertEqual(out["fusions"][0].parameters["window_b"], [1000.0, 9000.0])

class BlankInputsTest(unittest.TestCase):
    def test_a_blank_moving_image_is_named_as_blank_not_as_not_overlapping(self) -> None:
        t1 = io.read_image(data.testing_data_dir() / "BrainT1Slice.png")
        blank = sitk.Image(t1.GetSize(), sitk.sitkUInt8) + 7
        blank.CopyInformation(t1)
        with tempfile.TemporaryDirectory() as tmp:
            for fixed, moving, which in ((t1, blank, "moving"), (blank, t1, "fixed")):
                with self.assertRaises(InputError) as ctx:
                    pipeline.run(fixed, moving, tmp, methods="average", register=False)
                self.assertIn(f"{which} image", str(ctx.exception))
                self.assertIn("constant", str(ctx.exception))
                self.assertNotIn("overlap", str(ctx.exception))

    def test_a_refused_run_leaves_no_new_folder_behind(self) -> None:
        """`mmfusion run BLANK T1 --output-dir new/sub` refused the blank image and left new/sub behind, empty."""
        t1 = io.read_image(data.testing_data_dir() / "BrainT1Slice.png")
        blank = sitk.Image(t1.GetSize(), sitk.sitkUInt8)
        blank.CopyInformation(t1)
        with tempfile.TemporaryDirectory() as tmp:
            os.mkdir(os.path.join(tmp, "kept"))
            for out in ("new/sub", "kept/sub", "kept"):
                with self.subTest(out=out), self.assertRaises(InputError):
                    pipeline.run(blank, t1, os.path.join(tmp, out), methods="average", register=False)
            self.assertEqual(os.listdir(tmp), ["kept"])  # the folder that was there stays, and only it
            self.assertEqual(os.listdir(os.path.join(tmp, "kept")), [])
            # a run that writes keeps its new folders
            pipeline.run(t1, t1, os.path.join(tmp, "new", "sub"), methods="average", register=False)
            self.assertIn("fused_average.png", os.listdir(os.path.join(tmp, "new", "sub")))

    def test_a_refused_run_removes_the_folders_a_dotted_or_too_long_name_made(self) -> None:
        """`--output-dir new/../x` made 'new' too, `link/../y` a folder beside the link's target, and a last name
        too long made its parents before it failed: the folders were named by os.path.abspath, or not yet known,
        and stayed behind, empty."""
        t1 = io.read_image(data.testing_data_dir() / "BrainT1Slice.png")
        blank = sitk.Image(t1.GetSize(), sitk.sitkUInt8)
        blank.CopyInformation(t1)
        with tempfile.TemporaryDirectory() as tmp:
            os.makedirs(os.path.join(tmp, "deep", "target"))
            os.symlink(os.path.join(tmp, "deep", "target"), os.path.join(tmp, "link"))
            for out in ("new/../x", "a/b/../../c/", "link/../y/z", "n/" + "z" * 300, "deep/../m/./" + "q" * 300):
                with self.subTest(out=out), self.assertRaises(InputError):
                    pipeline.run(blank, t1, os.path.join(tmp, out), methods="average", register=False)
            self.assertEqual(sorted(os.listdir(tmp)), ["deep", "link"])
            self.assertEqual(os.listdir(os.path.join(tmp, "deep")), ["target"])
            # a folder that holds anything stays (another job writing into it), and those above it
            with self.assertRaises(KeyboardInterrupt), io.output_folder(os.path.join(tmp, "w/../v/sub")) as out:
                open(os.path.join(out, "other.txt"), "w").close()
                raise KeyboardInterrupt
            self.assertEqual(sorted(os.listdir(tmp)), ["deep", "link", "v"])  # the empty "w" it made goes
            self.assertEqual(os.listdir(os.path.join(tmp, "v", "sub")), ["other.txt"])


class MaskOffGridTest(unittest.TestCase):
    def test_a_fixed_mask_off_the_fixed_grid_is_named_with_or_without_registration(self) -> None:
        """Without registration the mask reached only the alignment metrics, whose error said "The mask is
        not on the image's grid": which mask, which image? Now both paths name them, before any work."""
        d = data.testing_data_dir()
        t1 = io.read_image(d / "BrainT1Slice.png")
        mask = sitk.Image([40, 30], sitk.sitkUInt8) + 1  # not the fixed image's size
        metrics_mask = sitk.Image(t1.GetSize(), sitk.sitkUInt8)  # on the grid, but empty
        metrics_mask.CopyInformation(t1)
        with tempfile.TemporaryDirectory() as tmp:
            messages = {}
            for register in (False, True):
                with self.subTest(register=register), self.assertRaises(InputError) as ctx:
                    pipeline.run(t1, str(d / "BrainProtonDensitySlice.png"), tmp, methods="average",
                                 register=register, fixed_mask=mask)
                messages[register] = str(ctx.exception)
                self.assertIn("The fixed mask is not on the fixed image's grid", messages[register])
                self.assertEqual(os.listdir(tmp), [])  # refused before any work
            self.assertEqual(messages[False], messages[True])
            with self.assertRaises(InputError) as ctx:
                pipeline.run(t1, str(d / "BrainProtonDensitySlice.png"), tmp, methods="average", register=False,
                             fixed_mask=metrics_mask)
            self.assertIn("The fixed mask is empty", str(ctx.exception))
            # a mask that is no image (a path) is named as such: the one-slice conversion had met it first and
            # ended in AttributeError "'str' object has no attribute 'GetDimension'"
            for key in ("fixed_mask", "moving_mask"):
                with self.subTest(key=key), self.assertRaises(InputError) as ctx:
                    pipeline.run(t1, str(d / "BrainProtonDensitySlice.png"), tmp, methods="average",
                                 **{key: str(d / "BrainT1Slice.png")})
                self.assertIn(f"The {key.replace('_', ' ')} is not an image", str(ctx.exception))


class RegistrationSettingsWithoutRegistrationTest(unittest.TestCase):
    def test_the_report_names_a_preset_only_where_a_registration_ran_and_the_cli_refuses_it(self) -> None:
        """`run --no-register --preset ct-mr-head --stages rigid,bspline` fused the images as they lie, rc 0,
        and its report said "preset: ct-mr-head; stages: rigid, bspline" all the same."""
        d = data.testing_data_dir()
        t1, pd = str(d / "BrainT1Slice.png"), str(d / "BrainProtonDensitySlice.png")
        with tempfile.TemporaryDirectory() as tmp:
            for register in (False, True):
                out = pipeline.run(t1, pd, os.path.join(tmp, str(register)), methods="average", register=register,
                                   preset="ct-mr-head", stages="rigid", seed=0)
                with open(out["report"]["html"], encoding="utf-8") as fh:
                    html = fh.read()
                with self.subTest(register=register):
                    self.assertEqual("preset: ct-mr-head" in html, register)
                    self.assertEqual("stages: rigid" in html, register)
            for options, named in ((["--preset", "ct-mr-head", "--stages", "rigid"], "--preset, --stages"),
                                   (["--seed", "0"], "--seed"), (["--initializer", "moments"], "--initializer"),
                                   (["--backend", "torch"], "--backend"),
                                   # the default backend named explicitly is a setting of no registration too
                                   # (it was taken, rc 0, while --backend torch was refused)
                                   (["--backend", "sitk"], "--backend")):
                out_dir = os.path.join(tmp, "cli")
                from contextlib import redirect_stderr
                from io import StringIO

                err = StringIO()
                with self.subTest(options=options), redirect_stderr(err):
                    code = cli.main(["run", t1, pd, "--output-dir", out_dir, "--no-register", "--methods", "average",
                                     *options])
                    self.assertEqual(code, 2)
                    self.assertIn(f"{named} given with --no-register", err.getvalue())
                    self.assertFalse(os.path.exists(out_dir))

class UnwritableOutputTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="mmf-unwritable-")
        d = data.testing_data_dir()
        self.a, self.b = str(d / "BrainT1Slice.png"), str(d / "BrainProtonDensitySlice.png")

    def tearDown(self) -> None:
        import shutil

        for root, dirs, _files in os.walk(self.tmp):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o700)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _cli_error(self, argv: list[str]) -> str:
        from contextlib import redirect_stderr
        from io import StringIO

        err = StringIO()
        with redirect_stderr(err):
            code = cli.main(argv)
        self.assertNotEqual(code, 0)
        return err.getvalue()

    @unittest.skipUnless(sys.platform.startswith("linux") and os.path.isdir(_UNWRITABLE), "needs Linux /proc")
    def test_an_output_where_nothing_can_be_written_is_a_clear_error(self) -> None:
        with self.assertRaises(InputError) as ctx:
            io.make_output_dir(os.path.join(_UNWRITABLE, "results"))
        self.assertIn("cannot be created", str(ctx.exception))
        with self.assertRaises(InputError) as ctx:
            io.write_bytes(os.path.join(_UNWRITABLE, "x.png"), b"")
        self.assertIn("Cannot write '/proc/self/x.png'", str(ctx.exception))
        message = self._cli_error(["run", self.a, self.b, "--output-dir", os.path.join(_UNWRITABLE, "out"),
                                   "--no-register", "--methods", "average"])
        self.assertIn("mmfusion run: error: The output folder", message)
        message = self._cli_error(["fuse", self.a, self.b, "-o", os.path.join(_UNWRITABLE, "fused.png")])
        self.assertIn("mmfusion fuse: error: Cannot write", message)

    @unittest.skipIf(os.name != "posix" or os.geteuid() == 0, "permissions do not bind root")
    def test_a_read_only_folder_is_a_clear_error(self) -> None:
        locked = os.path.join(self.tmp, "locked")
        os.mkdir(locked)
        os.chmod(locked, stat.S_IRUSR | stat.S_IXUSR)
        message = self._cli_error(["fuse", self.a, self.b, "-o", os.path.join(locked, "fused.png")])
        self.assertIn("Cannot write", message)
        self.assertIn("Permission denied", message)
        message = self._cli_error(["run", self.a, self.b, "--output-dir", os.path.join(locked, "sub"),
                                   "--no-register", "--methods", "average"])
        self.assertIn("cannot be created", message)


if __name__ == "__main__":
    unittest.main()
