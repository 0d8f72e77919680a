"""The `mmfusion register`, `resample`, `info` and `demo` commands, in-process and as a subprocess."""

from __future__ import annotations

import contextlib
import io as _io
import json
import os
import re
import subprocess
import sys
import tempfile
import unittest

import SimpleITK as sitk

from MultimodalFusionLib import cli, data
from MultimodalFusionLib.io import read_image, read_transform
from MultimodalFusionLib.registration import load_preset

DATA = data.testing_data_dir()
FIXED = str(DATA / "BrainT1SliceBorder20.png")
MOVING = str(DATA / "BrainProtonDensitySliceR10X13Y17.png")


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = _io.StringIO(), _io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def _help(command: str) -> str:
    out = _io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(_io.StringIO()):
        try:
            cli.main([command, "--help"])
        except SystemExit:
            pass
    return out.getvalue()


class RegisterCommand(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.dir = self.tmp.name

    def test_an_output_folder_that_is_a_file_is_refused_before_the_registration(self):
        """register -o FILE (an input given by mistake) had been refused only once the registration had run."""
        import MultimodalFusionLib.registration as registration

        ran = []
        real_register = registration.register
        registration.register = lambda *a, **k: ran.append("register") or real_register(*a, **k)
        try:
            rc, out, err = run_cli("register", FIXED, MOVING, "-o", FIXED, "--stages", "rigid", "--seed", "0")
        finally:
            registration.register = real_register
        self.assertEqual(rc, 2, err)
        self.assertIn(f"The output folder '{FIXED}' cannot be made: '{FIXED}' is a file.", err)
        self.assertEqual(ran, [])

    def test_register_json_and_outputs(self):
        out_dir = os.path.join(self.dir, "reg")
        rc, out, err = run_cli("register", FIXED, MOVING, "--output-dir", out_dir, "--seed", "1", "--json")
        self.assertEqual(rc, 0, err)
        metrics = json.loads(out)
        for name in ("transform.tfm", "moving_resampled.nii.gz", "metrics.json", "checkerboard.png"):
            self.assertTrue(os.path.isfile(os.path.join(out_dir, name)), name)
        with open(os.path.join(out_dir, "metrics.json")) as fh:
            self.assertEqual(json.load(fh), metrics)
        self.assertLess(metrics["metric_after"], metrics["metric_before"])
        self.assertEqual(metrics["stages"][0]["name"], "rigid")
        self.assertIn("stop_reason", metrics["stages"][0])
        resampled = read_image(os.path.join(out_dir, "moving_resampled.nii.gz"))
        self.assertEqual(resampled.GetSize(), read_image(FIXED).GetSize())
        png = sitk.ReadImage(os.path.join(out_dir, "checkerboard.png"))
        self.assertGreater(png.GetSize()[0], 2 * read_image(FIXED).GetSize()[0])

        # resample with the written transform gives the same image as register wrote
        res_path = os.path.join(self.dir, "resampled.nrrd")
        rc, out, err = run_cli("resample", MOVING, "--reference", FIXED, "--transform",
                               os.path.join(out_dir, "transform.tfm"), "-o", res_path)
        self.assertEqual(rc, 0, err)
        a = sitk.GetArrayFromImage(read_image(res_path))
        b = sitk.GetArrayFromImage(resampled)
        self.assertLess(abs(a - b).max(), 1e-3)

        rc, out, err = run_cli("info", res_path, "--json")
        self.assertEqual(rc, 0, err)
        self.assertEqual(json.loads(out)[res_path]["size"], list(read_image(FIXED).GetSize()))

    def test_iterations_per_level_agree_with_the_stop_reason(self):
        """ITK's stop reason counts the last level's iterations ("after 45 iterations") where the stage's
        total summed all levels (141): the levels' counts are given, and the stop reason says its level."""
        out_dir = os.path.join(self.dir, "levels")
        rc, out, err = run_cli("register", FIXED, MOVING, "-o", out_dir, "--stages", "rigid,affine", "--seed", "1")
        self.assertEqual(rc, 0, err)
        with open(os.path.join(out_dir, "metrics.json")) as fh:
            stages = json.load(fh)["stages"]
        for stage in stages:
            with self.subTest(stage=stage["name"]):
                levels = stage["level_iterations"]
                self.assertEqual(len(levels), 3)  # shrink factors 4, 2, 1
                self.assertEqual(sum(levels), stage["iterations"])  # the total stays where it was
                self.assertTrue(stage["stop_reason"].startswith("last level (3 of 3): "), stage["stop_reason"])
                said = re.search(r"after (\d+) iterations", stage["stop_reason"])
                if said:
                    self.assertEqual(int(said.group(1)), levels[-1])
                shown = "+".join(str(n) for n in levels) + f" = {stage['iterations']} iterations"
                self.assertIn(f"{stage['name']}: ", out)
                self.assertIn(shown, out)

    def test_deformable_writes_h5(self):
        out_dir = os.path.join(self.dir, "def")
        rc, out, err = run_cli("register", FIXED, MOVING, "-o", out_dir, "--stages", "rigid,bspline", "--seed", "2")
        self.assertEqual(rc, 0, err)
        self.assertTrue(os.path.isfile(os.path.join(out_dir, "transform.h5")))
        tx = read_transform(os.path.join(out_dir, "transform.h5"))
        self.assertIsInstance(tx, sitk.Transform)
        self.assertIn("bspline", out)

    def test_preset_and_initial_transform(self):
        first = os.path.join(self.dir, "first")
        self.assertEqual(run_cli("register", FIXED, MOVING, "-o", first, "--preset", "ct-mr-head")[0], 0)
        second = os.path.join(self.dir, "second")
        rc, out, err = run_cli("register", FIXED, MOVING, "-o", second, "--initial-transform",
                               os.path.join(first, "transform.tfm"), "--json")
        self.assertEqual(rc, 0, err)
        self.assertTrue(json.loads(out)["metric_after"] <= json.loads(out)["metric_before"])

    def test_an_initializer_with_an_initial_transform_is_refused(self):
        # the initial transform replaces the initializer: --initializer moments/geometry/none had been ignored, rc 0
        first = os.path.join(self.dir, "first")
        self.assertEqual(run_cli("register", FIXED, MOVING, "-o", first, "--stages", "rigid", "--seed", "1")[0], 0)
        start = os.path.join(first, "transform.tfm")
        for name in ("moments", "geometry", "none"):
            with self.subTest(initializer=name):
                out_dir = os.path.join(self.dir, name)
                rc, out, err = run_cli("register", FIXED, MOVING, "-o", out_dir, "--initial-transform", start,
                                       "--initializer", name)
                self.assertEqual(rc, 2, out + err)
                self.assertIn(f"'{name}' initializer and an initial transform (--initial-transform {start})", err)
                self.assertIn("Fix: Give one of them (drop --initializer, or --initial-transform)", err)
                self.assertFalse(os.path.exists(out_dir))
        # 'search' too, in the same words and with the flags to change
        rc, out, err = run_cli("register", FIXED, MOVING, "-o", os.path.join(self.dir, "search"),
                               "--initial-transform", start, "--initializer", "search")
        self.assertEqual(rc, 2, out + err)
        self.assertIn("'search' initializer and an initial transform (--initial-transform", err)
        self.assertIn("drop --initializer, or --initial-transform", err)
        # as register() refuses them, where its initializer had been ignored too
        from MultimodalFusionLib.errors import InputError
        from MultimodalFusionLib.registration import RegistrationParameters, register

        fixed, moving = read_image(FIXED, float32=True), read_image(MOVING, float32=True)
        with self.assertRaisesRegex(InputError, "'geometry' initializer and an initial transform"):
            register(fixed, moving, stages=["rigid"], initializer="geometry", initial_transform=start)
        # a search in the settings (no name given) is refused by register() in its callers' words: its fix had
        # named the CLI's flags (--initial-transform, --initializer search) to a Python or Slicer caller
        with self.assertRaises(InputError) as cm:
            register(fixed, moving, RegistrationParameters(initializer="search"), initial_transform=start)
        self.assertIn("'search' initializer and an initial transform", cm.exception.problem)
        self.assertEqual(cm.exception.fix, "Give one of them (initializer=None, or initial_transform=None).")

    def _copy(self, src: str, name: str) -> str:
        dst = os.path.join(self.dir, name)
        sitk.WriteImage(sitk.ReadImage(src), dst)
        return dst

    def test_errors_are_one_line_without_traceback(self):
        cases = [
            ("register", os.path.join(self.dir, "missing.nii.gz"), MOVING, "-o", self.dir),
            ("register", FIXED, MOVING, "-o", self.dir, "--preset", "no-such"),
            ("register", FIXED, MOVING, "-o", self.dir, "--stages", "rigid,warp"),
            ("resample", MOVING, "--reference", FIXED, "--transform", os.path.join(self.dir, "no.tfm"),
             "-o", os.path.join(self.dir, "x.nii.gz")),
            # an input that the outputs would overwrite (a first run's result, registered again in place)
            ("register", FIXED, self._copy(MOVING, "moving_resampled.nii.gz"), "-o", self.dir),
        ]
        for argv in cases:
            rc, out, err = run_cli(*argv)
            self.assertEqual(rc, 2, argv)
            self.assertNotIn("Traceback", err)
            self.assertEqual(len(err.strip().splitlines()), 1, err)
            self.assertTrue(err.startswith(f"mmfusion {argv[0]}: error:"), err)

    def test_resample_refuses_its_output_name_before_reading_or_resampling(self):
        """resample -o r.MHA (r.xyz), or a volume to .png: refused once resampled, after reading the images and
        the transform. Now the name comes first (an unreadable moving image is not even read) and the grid's
        dimension before the transform is read and the image resampled."""
        garbage = os.path.join(self.dir, "not-an-image.nrrd")
        with open(garbage, "w") as fh:
            fh.write("not an image\n")
        for name, problem in (("r.MHA", "by the extension in lower case only"), ("r.xyz", "No image format")):
            rc, _, err = run_cli("resample", garbage, "--reference", FIXED, "-o", os.path.join(self.dir, name))
            self.assertEqual(rc, 2, err)
            self.assertIn(problem, err)
        volume = os.path.join(self.dir, "volume.nrrd")
        sitk.WriteImage(sitk.Image([8, 8, 4], sitk.sitkFloat32), volume)
        rc, _, err = run_cli("resample", volume, "--reference", volume, "--transform", garbage,
                             "-o", os.path.join(self.dir, "r.png"))
        self.assertEqual(rc, 2, err)
        self.assertIn("is a 2D format but the image is a volume (size (8, 8, 4))", err)  # not the transform's error
        self.assertEqual(sorted(os.listdir(self.dir)), ["not-an-image.nrrd", "volume.nrrd"])

    def test_presets_initializer_and_series_options(self):
        rc, out, _ = run_cli("register", "--list-presets")
        self.assertEqual(rc, 0)
        self.assertIn("mr-mr-deformable", out)
        self.assertIn("rigid,affine,bspline", out)
        rc, out, _ = run_cli("run", "--list-presets")
        self.assertIn("t1-t2-brain", out)
        out_dir = os.path.join(self.dir, "init")
        rc, _, err = run_cli("register", FIXED, MOVING, "-o", out_dir, "--initializer", "geometry", "--seed", "1",
                             "--json")
        self.assertEqual(rc, 0, err)
        for command in ("register", "run"):
            helptext = _help(command)
            for option in ("--initializer", "--fixed-series", "--moving-series", "--list-presets"):
                self.assertIn(option, helptext, (command, option))
        self.assertIn("--reference-series", _help("resample"))

    def test_initializer_search_recovers_a_quarter_turn(self):
        """`--initializer search`: the PD slice turned a further 90 degrees registers; --help names it."""
        from MultimodalFusionLib.registration.accuracy import (
            itk_brainweb_truth,
            rigid_transform,
            transform_error,
        )

        fixed, moving = read_image(FIXED, float32=True), read_image(MOVING, float32=True)
        center = moving.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in moving.GetSize()])
        turn = rigid_transform(center, [90.0], [0.0, 0.0])
        turned = os.path.join(self.dir, "pd_turned.nrrd")
        sitk.WriteImage(sitk.Resample(moving, moving, turn, sitk.sitkLinear, 0.0), turned)
        out_dir = os.path.join(self.dir, "search")
        rc, out, err = run_cli("register", FIXED, turned, "-o", out_dir, "--initializer", "search", "--seed", "0",
                               "--json")
        self.assertEqual(rc, 0, err)
        metrics = json.loads(out)
        self.assertEqual(metrics["initializer"]["name"], "search")
        truth = sitk.CompositeTransform([turn.GetInverse(), itk_brainweb_truth(fixed)])
        recovered = read_transform(os.path.join(out_dir, "transform.tfm"))
        self.assertLess(transform_error(recovered, truth, fixed)["mean"], 1.0)
        self.assertIn("search", " ".join(_help("register").split()))
        rc, _, err = run_cli("register", FIXED, turned, "-o", out_dir, "--initializer", "search", "--stages",
                             "deformable", "--backend", "torch")
        self.assertEqual(rc, 2)
        self.assertIn("rigid or affine first stage", err)

    def test_a_preset_pyramid_the_torch_backend_does_not_follow_is_printed(self):
        """pet-ct-body's affine stage asks for its own levels and smoothing; --backend torch ran the rigid stage's
        pyramid for it, smoothed its own way, and said nothing."""
        try:
            import torch  # noqa: F401
        except ImportError:  # pragma: no cover - the deep extra is not installed
            self.skipTest("torch is not installed")
        small = []
        for name, path in (("fixed", FIXED), ("moving", MOVING)):  # a quarter of the pixels each way: quick
            small.append(os.path.join(self.dir, f"{name}.nrrd"))
            sitk.WriteImage(sitk.Shrink(read_image(path, float32=True), [4, 4]), small[-1])
        rc, _, err = run_cli("register", *small, "-o", os.path.join(self.dir, "torch"), "--backend", "torch",
                             "--preset", "pet-ct-body", "--seed", "1")
        self.assertEqual(rc, 0, err)
        said = " ".join(err.split())
        # the rigid stage's own sigmas run (linear_smoothing_sigmas): they had been warned about as not used
        self.assertNotIn("The rigid stage's smoothing_sigmas", said)
        self.assertIn("warning: The affine stage's shrink_factors [2, 1] and smoothing_sigmas [1, 0.5] are not used on "
                      "the torch backend: every linear stage runs the first linear stage's levels", said)

    def test_a_deformable_result_as_the_initial_transform(self):
        """Refining an earlier rigid,bspline result: the rigid stage failed inside ITK on the B-spline start,
        and the composite holding the earlier composite could not be written to .h5."""
        first = os.path.join(self.dir, "first")
        # seed 2: its B-spline stage is kept (at seeds 0 and 1 it is discarded, and the result is the rigid .tfm)
        rc, _, err = run_cli("register", FIXED, MOVING, "-o", first, "--stages", "rigid,bspline", "--seed", "2")
        self.assertEqual(rc, 0, err)
        again = os.path.join(self.dir, "again")
        rc, out, err = run_cli("register", FIXED, MOVING, "-o", again, "--stages", "rigid", "--seed", "1",
                               "--initial-transform", os.path.join(first, "transform.h5"), "--json")
        self.assertEqual(rc, 0, err)
        self.assertLessEqual(json.loads(out)["metric_after"], json.loads(out)["metric_before"])
        from MultimodalFusionLib.registration.accuracy import itk_brainweb_truth, transform_error

        refined = read_transform(os.path.join(again, "transform.h5"))
        fixed = read_image(FIXED, float32=True)
        self.assertLess(transform_error(refined, itk_brainweb_truth(fixed), fixed)["median"], 0.5)

    def test_run_takes_the_masks_register_takes(self):
        """`run` had no --fixed-mask/--moving-mask: a masked registration needed register + fuse by hand."""
        fixed = read_image(FIXED)
        mask = sitk.Image(fixed.GetSize(), sitk.sitkUInt8)
        mask.CopyInformation(fixed)
        mask[40:180, 40:200] = 1  # the head, not the border
        mask_path = os.path.join(self.dir, "mask.nrrd")
        sitk.WriteImage(mask, mask_path)
        summaries = {}
        for name, extra in (("plain", []), ("masked", ["--fixed-mask", mask_path, "--moving-mask", mask_path])):
            out_dir = os.path.join(self.dir, name)
            rc, out, err = run_cli("run", FIXED, MOVING, "--output-dir", out_dir, "--methods", "average", "--seed",
                                   "1", "--json", *extra)
            self.assertEqual(rc, 0, err)
            summaries[name] = json.loads(out)
        # the alignment numbers are measured inside the fixed mask, so they change with it
        self.assertNotEqual(summaries["plain"]["registration_metrics"]["after"]["MI"],
                            summaries["masked"]["registration_metrics"]["after"]["MI"])
        rc, _, err = run_cli("run", FIXED, MOVING, "--output-dir", os.path.join(self.dir, "nr"), "--no-register",
                             "--moving-mask", mask_path)
        self.assertEqual(rc, 2)
        self.assertIn("moving mask was given without registration (--no-register)", err)

    def test_initializer_default_in_help_is_the_one_used(self):
        """`--initializer` help names the default a preset-less registration really starts from."""
        from MultimodalFusionLib.registration import RegistrationParameters

        default = RegistrationParameters().initializer
        out_dir = os.path.join(self.dir, "noinit")
        rc, out, err = run_cli("register", FIXED, MOVING, "-o", out_dir, "--seed", "1", "--json")
        self.assertEqual(rc, 0, err)
        self.assertEqual(json.loads(out)["parameters"]["initializer"], default)
        for command in ("register", "run"):
            helptext = " ".join(_help(command).split())
            self.assertIn(f"default: the preset's, else {default}", helptext, command)

    def test_list_presets_with_no_presets_is_an_error(self):
        """An empty presets folder (MMFUSION_PRESETS_DIR) is named, not listed as nothing with exit 0."""
        empty = os.path.join(self.dir, "no-presets")
        os.makedirs(empty)
        saved = os.environ.get("MMFUSION_PRESETS_DIR")
        os.environ["MMFUSION_PRESETS_DIR"] = empty
        try:
            rc, out, err = run_cli("register", "--list-presets")
        finally:
            if saved is None:
                del os.environ["MMFUSION_PRESETS_DIR"]
            else:
                os.environ["MMFUSION_PRESETS_DIR"] = saved
        self.assertEqual(rc, 2)
        self.assertEqual(out, "")
        self.assertIn("No registration presets found in", err)
        self.assertIn(empty, err)
        self.assertIn("MMFUSION_PRESETS_DIR", err)

    def test_thin_slab_nan_info_and_output_dir_that_is_a_file(self):
        import numpy as np

        z, y, x = np.mgrid[:6, :40, :40]
        blob = (100 * np.exp(-((x - 20) ** 2 / 50 + (y - 18) ** 2 / 70 + (z - 3) ** 2 / 8))).astype(np.float32)
        slab, slab_moved = (os.path.join(self.dir, n) for n in ("slab.nrrd", "slab_moved.nrrd"))
        sitk.WriteImage(sitk.GetImageFromArray(blob), slab)
        sitk.WriteImage(sitk.GetImageFromArray(np.roll(blob, 1, axis=2)), slab_moved)
        # 6 slices, fewer than the checkerboard's 8 squares: ITK divided by zero and killed the process
        rc, _, err = run_cli("register", slab, slab_moved, "-o", os.path.join(self.dir, "slab_out"), "--seed", "1")
        self.assertEqual(rc, 0, err)
        self.assertTrue(os.path.isfile(os.path.join(self.dir, "slab_out", "checkerboard.png")))
        nan_path = os.path.join(self.dir, "nan.mha")
        sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 5, 6), np.nan, np.float32)), nan_path)
        rc, out, err = run_cli("info", nan_path)
        self.assertEqual(rc, 0, err)
        self.assertIn("no finite voxel", out)
        rc, _, err = run_cli("register", FIXED, MOVING, "-o", nan_path)
        self.assertEqual(rc, 2)
        self.assertIn("is a file", err)

    def test_dimension_mismatch_message(self):
        vol = sitk.Image([16, 16, 16], sitk.sitkFloat32)
        vol[3, 3, 3] = 1.0
        path = os.path.join(self.dir, "vol.nii.gz")
        sitk.WriteImage(vol, path)
        rc, out, err = run_cli("register", FIXED, path, "-o", self.dir)
        self.assertEqual(rc, 2)
        # both sizes named (the web page's Load says the same of a PNG with a volume)
        self.assertIn("The fixed image is 2D (size 221 x 257) but the moving image is 3D (size 16 x 16 x 16)", err)

    def test_resample_keeps_a_colour_image_in_colour(self):
        # read as luminance, a colour slice or volume had been resampled and written grey without a word
        import numpy as np

        rgb = np.zeros((40, 50, 3), np.uint8)
        rgb[10:30, 10:20, 0] = 255
        rgb[10:30, 25:40, 2] = 200
        colour = sitk.GetImageFromArray(rgb, isVector=True)
        colour.SetSpacing((0.5, 0.5))
        moving = os.path.join(self.dir, "colour moving.nrrd")
        sitk.WriteImage(colour, moving)
        shift = sitk.TranslationTransform(2, (1.25, -0.75))
        transform = os.path.join(self.dir, "shift.tfm")
        sitk.WriteTransform(shift, transform)
        for name in ("out.nrrd", "out.png"):
            with self.subTest(output=name):
                out = os.path.join(self.dir, name)
                rc, _, err = run_cli("resample", moving, "--reference", moving, "--transform", transform, "-o", out)
                self.assertEqual(rc, 0, err)
                written = sitk.ReadImage(out)
                self.assertEqual(written.GetNumberOfComponentsPerPixel(), 3)
                want = np.stack([sitk.GetArrayFromImage(sitk.Resample(sitk.VectorIndexSelectionCast(colour, c,
                                                                                                    sitk.sitkFloat32),
                                                                      colour, shift, sitk.sitkLinear, 0.0))
                                 for c in range(3)], axis=-1)
                if name.endswith(".png"):
                    want = np.round(want)
                np.testing.assert_allclose(sitk.GetArrayFromImage(written), want, atol=1e-4)
        # a grey slice stored as RGB (R = G = B, as Testing/Data's PNGs) is resampled as grey, as before
        grey = os.path.join(self.dir, "grey.png")
        rc, _, err = run_cli("resample", MOVING, "--reference", FIXED, "-o", grey)
        self.assertEqual(rc, 0, err)
        self.assertEqual(sitk.ReadImage(grey).GetNumberOfComponentsPerPixel(), 1)
        # grey RGBA: opaque, it is grey; with transparency its alpha is kept (as luminance, the transparent border
        # had been written opaque, the pixels it hid showing)
        values = np.random.default_rng(0).integers(0, 200, (30, 40), dtype=np.uint8)
        for name, alpha, components in (("opaque", 255, 1), ("transparent border", 0, 4)):
            with self.subTest(rgba=name):
                rgba = np.stack([values, values, values, np.full_like(values, 255)], axis=-1)
                rgba[:5, :, 3] = alpha
                path = os.path.join(self.dir, f"grey {name}.png")
                sitk.WriteImage(sitk.GetImageFromArray(rgba, isVector=True), path)
                out = os.path.join(self.dir, f"grey {name} out.png")
                rc, _, err = run_cli("resample", path, "--reference", path, "-o", out)
                self.assertEqual(rc, 0, err)
                written = sitk.GetArrayFromImage(sitk.ReadImage(out))
                if components == 1:
                    np.testing.assert_array_equal(written, values)
                else:
                    np.testing.assert_array_equal(written, rgba)  # identity: every channel, alpha too, as it was

    def test_every_command_with_an_output_folder_takes_o(self):
        """`run F M -o DIR` as `register` and `demo` take it (it had been a usage error, exit 2)."""
        for argv in (["register", "f", "m", "-o", "d"], ["run", "f", "m", "-o", "d"], ["demo", "-o", "d"]):
            with self.subTest(argv=argv):
                self.assertEqual(cli.build_parser().parse_args(argv).output_dir, "d")

    def test_a_grey_picture_stored_as_rgb_is_its_grey_values(self):
        """R = G = B read as grey is exactly the grey value, and `resample --interpolation nearest` keeps a grey label
        map stored as RGB in its pixel type: the luminance, summed in float32, had made 209 209.00002 (7-9% of the
        pixels of Testing/Data's PNGs), and nearest wrote float labels."""
        import numpy as np

        labels = np.random.default_rng(1).choice(np.array([0, 3, 17, 101, 209, 254], np.uint8), (40, 50))
        rgb = os.path.join(self.dir, "labels rgb.png")
        grey = os.path.join(self.dir, "labels grey.png")
        sitk.WriteImage(sitk.GetImageFromArray(np.stack([labels] * 3, axis=-1), isVector=True), rgb)
        sitk.WriteImage(sitk.GetImageFromArray(labels), grey)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(rgb)), labels)  # as read for register
        np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(MOVING)),
                                      sitk.GetArrayFromImage(sitk.ReadImage(MOVING))[..., 0])
        shift = os.path.join(self.dir, "shift.tfm")
        sitk.WriteTransform(sitk.Euler2DTransform((25.0, 20.0), 0.3, (2.0, -1.0)), shift)
        outs = {}
        for name, path in (("rgb", rgb), ("grey", grey)):
            for interpolation in ("nearest", "linear"):
                out = os.path.join(self.dir, f"{name} {interpolation}.nrrd")
                rc, _, err = run_cli("resample", path, "--reference", grey, "--transform", shift, "-o", out,
                                     "--interpolation", interpolation)
                self.assertEqual(rc, 0, err)
                outs[name, interpolation] = sitk.ReadImage(out)
        nearest = outs["rgb", "nearest"]
        self.assertEqual(nearest.GetPixelID(), sitk.sitkUInt8)  # the input's type, as for the grey file
        self.assertTrue(set(np.unique(sitk.GetArrayFromImage(nearest))) <= set(np.unique(labels)))
        for interpolation in ("nearest", "linear"):  # the same answer as for the picture stored grey
            np.testing.assert_array_equal(sitk.GetArrayFromImage(outs["rgb", interpolation]),
                                          sitk.GetArrayFromImage(outs["grey", interpolation]))
        # register's own moving_resampled and `resample` with its transform: the same voxels
        reg = os.path.join(self.dir, "reg")
        rc, _, err = run_cli("register", grey, rgb, "-o", reg, "--stages", "rigid", "--seed", "0")
        self.assertEqual(rc, 0, err)
        out = os.path.join(self.dir, "again.nii.gz")
        rc, _, err = run_cli("resample", rgb, "--reference", grey, "--transform", os.path.join(reg, "transform.tfm"),
                             "-o", out)
        self.assertEqual(rc, 0, err)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(out)),
                                      sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(reg, "moving_resampled.nii.gz"))))

    def test_a_grey_float_picture_stored_as_rgb_is_its_grey_values(self):
        """R = G = B of float32 (a .nrrd or .mha of float RGB) read as grey is exactly the grey value too: each
        product 0.587 * G had stayed float32 (NumPy 2 keeps a float32 array's type times a Python float), so that
        5% of such pixels came out a rounding off; a colour one stays within 2 float32 roundings of before."""
        import numpy as np

        grey = np.random.default_rng(3).uniform(-1e4, 1e4, (256, 256)).astype(np.float32)
        path = os.path.join(self.dir, "grey float rgb.nrrd")
        sitk.WriteImage(sitk.GetImageFromArray(np.stack([grey] * 3, axis=-1), isVector=True), path)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(path)), grey)
        colour = np.random.default_rng(4).integers(0, 65536, (64, 64, 4)).astype(np.uint16)  # RGBA: alpha left out
        path = os.path.join(self.dir, "colour.nrrd")
        sitk.WriteImage(sitk.GetImageFromArray(colour, isVector=True), path)
        lum = sitk.GetArrayFromImage(read_image(path))
        exact = 0.299 * colour[..., 0].astype(np.float64) + 0.587 * colour[..., 1] + 0.114 * colour[..., 2]
        self.assertEqual(lum.dtype, np.float32)
        np.testing.assert_array_equal(lum, exact.astype(np.float32))  # BT.601's weights, rounded once


class MalformedPresetFile(unittest.TestCase):
    """A preset file a user edited by hand: each wrong value is named, with exit 2, before any work."""

    CASES = {  # preset JSON -> a word the error must name
        "[1, 2]": "holds a JSON list",
        '{"stages": 5}': '"stages" must be a list',
        '{"stages": [5]}': "neither a stage name nor an object",
        '{"stages": [{"name": "rigid", "iterations": "abc"}]}': "iterations",
        '{"stages": [{"name": "rigid", "iterations": null}]}': "iterations",
        '{"stages": [{"name": "rigid", "iterations": 1.5}]}': "iterations",
        '{"stages": [{"name": "rigid", "sampling_percentage": null}]}': "sampling_percentage",
        '{"stages": [{"name": "rigid", "sampling_percentage": "x"}]}': "sampling_percentage",
        '{"stages": [{"name": "rigid", "histogram_bins": "x"}]}': "histogram_bins",
        '{"stages": [{"name": "rigid", "histogram_bins": 1000000000}]}': "histogram_bins",
        '{"stages": [{"name": "rigid", "learning_rate": -1}]}': "learning_rate",
        '{"stages": [{"name": "rigid", "learning_rate": 0}]}': "learning_rate",
        '{"stages": [{"name": "rigid", "learning_rate": NaN}]}': "learning_rate",
        '{"stages": [{"name": "rigid", "min_step": -1}]}': "min_step",
        '{"stages": [{"name": "rigid", "relaxation_factor": 2}]}': "relaxation_factor",
        '{"stages": [{"name": "rigid", "gradient_tolerance": "x"}]}': "gradient_tolerance",
        '{"stages": [{"name": "rigid", "shrink_factors": 4, "smoothing_sigmas": 2}]}': "shrink_factors",
        '{"stages": [{"name": "rigid", "shrink_factors": ["a"], "smoothing_sigmas": [0]}]}': "shrink_factors",
        '{"stages": [{"name": "rigid", "shrink_factors": [1], "smoothing_sigmas": [-1]}]}': "smoothing_sigmas",
        '{"stages": [{"name": "rigid", "smoothing_in_mm": "yes"}]}': "smoothing_in_mm",
        '{"stages": [{"name": "bspline", "mesh_size": "x"}]}': "mesh_size",
        '{"stages": [{"name": "bspline", "mesh_size": [4, 4, 4]}]}': "mesh_size",  # 3 numbers, 2D images
        '{"seed": "x"}': "seed",
        '{"number_of_threads": -1}': "number_of_threads",
        # whole, but beyond ITK's 32-bit unsigned ints: SimpleITK's wrapper raised OverflowError/TypeError
        '{"stages": [{"name": "rigid", "iterations": 1e10}]}': "iterations",
        '{"stages": [{"name": "bspline", "mesh_size": 10000000000}]}': "mesh_size",
        # more control points than voxels: 1e9 had killed the process inside ITK (a double free)
        '{"stages": [{"name": "bspline", "mesh_size": 1000}]}': "control points, more than the",
        '{"number_of_threads": 10000000000}': "number_of_threads",
    }

    def test_each_bad_value_is_a_one_line_error(self):
        with tempfile.TemporaryDirectory() as d:
            for i, (text, word) in enumerate(self.CASES.items()):
                preset = os.path.join(d, f"preset{i}.json")
                with open(preset, "w", encoding="utf-8") as fh:
                    fh.write(text)
                out_dir = os.path.join(d, f"out{i}")
                with self.subTest(preset=text):
                    rc, out, err = run_cli("register", FIXED, MOVING, "-o", out_dir, "--preset", preset)
                    self.assertEqual(rc, 2, err)
                    self.assertTrue(err.startswith("mmfusion register: error: "), err)
                    self.assertIn(word, err)
                    self.assertIn("Fix: ", err)
                    self.assertFalse(os.path.exists(os.path.join(out_dir, "transform.tfm")))


    def test_options_win_over_the_preset_and_metrics_json_records_what_ran(self):
        with tempfile.TemporaryDirectory() as d:
            preset = os.path.join(d, "seeded.json")
            with open(preset, "w", encoding="utf-8") as fh:
                fh.write('{"seed": 5, "initializer": "moments", "stages": [{"name": "rigid", "iterations": 50}]}')
            for options, expected in (([], (5, "moments", [("rigid", 50)])),
                                      (["--seed", "2", "--initializer", "geometry", "--stages", "rigid,affine"],
                                       (2, "geometry", [("rigid", 50), ("affine", 200)]))):
                with self.subTest(options=options):
                    out_dir = os.path.join(d, "out")
                    rc, out, err = run_cli("register", FIXED, MOVING, "-o", out_dir, "--preset", preset, *options)
                    self.assertEqual(rc, 0, err)
                    with open(os.path.join(out_dir, "metrics.json"), encoding="utf-8") as fh:
                        ran = json.load(fh)["parameters"]
                    self.assertEqual((ran["seed"], ran["initializer"],
                                      [(s["name"], s["iterations"]) for s in ran["stages"]]), expected)
                    # the engine's choices beside the settings as given (null: chosen from the images and seed):
                    # they had been recorded only as null, the thread count too
                    self.assertEqual(ran["number_of_threads"], None)
                    self.assertEqual(ran["effective"], {"number_of_threads": 1})
                    for stage in ran["stages"]:
                        self.assertEqual((stage["min_step"], stage["relaxation_factor"]), (None, None))
                        self.assertEqual((stage["effective"]["min_step"], stage["effective"]["relaxation_factor"]),
                                         (0.001, 0.8))  # a 2D image's defaults
                        self.assertEqual(stage["effective"]["shrink_factors"], stage["shrink_factors"])
                        self.assertEqual(len(stage["effective"]["sampling_percentage_per_level"]), 3)
                    # and the recorded parameters still load as a preset (the "effective" record is not read)
                    again = os.path.join(d, "again.json")
                    with open(again, "w", encoding="utf-8") as fh:
                        json.dump(ran, fh)
                    self.assertEqual(load_preset(again).to_dict(), {k: v for k, v in ran.items() if k != "effective"}
                                     | {"stages": [{k: v for k, v in s.items() if k != "effective"}
                                                   for s in ran["stages"]]})

    def test_levels_given_fine_to_coarse_are_warned_about(self):
        # a preset stage with shrink_factors [1, 2, 4] ended at shrink factor 4 without a word (see
        # test_registration.LevelOrderWarning): the warning goes to stderr and metrics.json
        with tempfile.TemporaryDirectory() as d:
            preset = os.path.join(d, "fine-to-coarse.json")
            with open(preset, "w", encoding="utf-8") as fh:
                fh.write('{"stages": [{"name": "rigid", "iterations": 20, "shrink_factors": [1, 2, 4], '
                         '"smoothing_sigmas": [0, 1, 2]}]}')
            out_dir = os.path.join(d, "out")
            rc, out, err = run_cli("register", FIXED, MOVING, "--output-dir", out_dir, "--preset", preset,
                                   "--seed", "1")
            self.assertEqual(rc, 0, err)
            said = "Stage 'rigid': shrink_factors [1, 2, 4] grow coarser from one level to the next"
            self.assertIn(f"warning: {said}", err)
            self.assertIn("ends at shrink factor 4, not at its finest (1)", err)
            with open(os.path.join(out_dir, "metrics.json")) as fh:
                self.assertEqual(len([w for w in json.load(fh)["warnings"] if w.startswith(said)]), 1)
            # run and --json print it on stderr too: run had printed it on stdout, and --json inside the JSON only
            for command in ("run", "register"):
                for json_flag in ((), ("--json",)):
                    with self.subTest(command=command, json=bool(json_flag)):
                        extra = ("--methods", "average") if command == "run" else ()
                        rc, out, err = run_cli(command, FIXED, MOVING, "-o", os.path.join(d, f"{command}{json_flag}"),
                                               "--preset", preset, "--seed", "1", *extra, *json_flag)
                        self.assertEqual(rc, 0, err)
                        self.assertEqual(err.count(f"warning: {said}"), 1, err)
                        self.assertNotIn("warning: ", out)
                        if json_flag:  # stdout is the JSON alone, which keeps the warning
                            summary = json.loads(out)
                            kept = summary["registration"]["warnings"] if command == "run" else summary["warnings"]
                            self.assertEqual(len([w for w in kept if w.startswith(said)]), 1)

    def test_settings_are_checked_before_any_image_is_read(self):
        # register and run read both images (a DICOM folder, a large volume) before they looked at the preset
        # file or --stages: two 300^3 volumes took 1.1 s (run: 2.5 s) more to say a key was misspelt
        with tempfile.TemporaryDirectory() as d:
            preset = os.path.join(d, "mine.json")
            with open(preset, "w", encoding="utf-8") as fh:
                fh.write('{"stages": [{"name": "rigid", "shrink_factor": [4, 2, 1]}]}')
            unreadable = os.path.join(d, "broken.nii.gz")  # reading it would be the error
            with open(unreadable, "wb") as fh:
                fh.write(b"not an image")
            for command in ("register", "run"):
                for options, word in ((["--preset", preset], "'shrink_factor'"), (["--stages", "rigid,warp"], "'warp'")):
                    out_dir = os.path.join(d, f"out-{command}")
                    with self.subTest(command=command, options=options):
                        rc, out, err = run_cli(command, unreadable, unreadable, "--output-dir", out_dir, *options)
                        self.assertEqual(rc, 2, err)
                        self.assertIn(word, err)
                        self.assertNotIn("broken.nii.gz", err)
                        self.assertFalse(os.path.exists(out_dir))

class DemoAndSubprocess(unittest.TestCase):
    def test_demo_command(self):
        with tempfile.TemporaryDirectory() as d:
            rc, out, err = run_cli("demo", "--output-dir", d, "--spacing", "3")
            self.assertEqual(rc, 0, err)
            self.assertIn("TRE", out)
            with open(os.path.join(d, "summary.json")) as fh:
                summary = json.load(fh)
            self.assertLess(summary["itk_2d"]["angle_error_deg"], 0.5)
            self.assertLess(summary["itk_2d"]["mean_error_px"], 0.5)
            self.assertLess(summary["mni_3d"]["tre_mean_mm"], 1.0)
            for sub in ("itk_2d", "mni_3d"):
                self.assertTrue(os.path.isfile(os.path.join(d, sub, "checkerboard.png")))
            from MultimodalFusionLib import fusion

            if "deep" in fusion.list_methods():  # make demo installs torch: the report shows the deep row too
                self.assertEqual(summary["fusion"]["methods"], "overlay, wavelet, deep")
                self.assertTrue(os.path.isfile(os.path.join(d, "fusion", "montage_deep.png")))
                # the deep fusion keeps the structure of both images better than the classic rows here
                self.assertGreater(summary["fusion"]["deep_SSIM"], summary["fusion"]["overlay_SSIM"])
                self.assertGreater(summary["fusion"]["deep_load_seconds"], 0.0)

    def test_demo_at_its_coarsest_spacing(self):
        # deep fusion's warm-up took a 16 x 16 x 4 region from the middle of the 3D case: at 12 mm and coarser
        # (13 voxels across) it lay partly outside, a RuntimeError traceback from ITK's RegionOfInterest
        from MultimodalFusionLib.demo import MAX_SPACING_MM, run_demo

        with tempfile.TemporaryDirectory() as d:
            summary = run_demo(d, spacing_mm=MAX_SPACING_MM, steps=["mni_3d", "fusion"])
            self.assertIn("overlay_SSIM", summary["fusion"])
            self.assertTrue(os.path.isfile(summary["fusion"]["report"]))

    def test_numbers_the_parser_accepts_but_the_command_cannot_use(self):
        """A zero, negative or NaN demo voxel size and a port outside 0..65535 are one-line errors (they were
        tracebacks from numpy's int(), ITK's smoothing and socket.bind)."""
        with tempfile.TemporaryDirectory() as d:
            for spacing in ("0", "-1", "nan"):
                with self.subTest(spacing=spacing):
                    rc, _, err = run_cli("demo", "--spacing", spacing, "-o", os.path.join(d, "demo"))
                    self.assertEqual(rc, 2, err)
                    self.assertIn("is not a positive number", err)
                    self.assertFalse(os.path.exists(os.path.join(d, "demo", "summary.json")))
            # sizes the 3D case cannot be built or scored at: 0.1 mm had ended after 2 minutes in ITK's "Failed
            # to allocate memory" traceback, 30 mm in "smaller than the SSIM window (7)" after the registration
            for spacing, why in (("0.1", "too large to build"), ("0.49", "too large to build"),
                                 ("20.5", "too small to register"), ("1e6", "too small to register")):
                with self.subTest(spacing=spacing):
                    rc, _, err = run_cli("demo", "--spacing", spacing, "-o", os.path.join(d, "demo"))
                    self.assertEqual(rc, 2, err)
                    self.assertIn(f"is outside 0.5..20 mm: the 3D case (the 1 mm MNI152 template, 160x192x192) "
                                  f"would be {why}", err)
                    self.assertIn("Fix: Give --spacing between 0.5 and 20", err)
                    self.assertFalse(os.path.exists(os.path.join(d, "demo")))
        try:
            import MultimodalFusionLib.web.app  # noqa: F401 - the web extra: `mmfusion web` needs it first
        except ImportError:
            return
        for port in ("-1", "65536", "99999"):
            with self.subTest(port=port):
                rc, _, err = run_cli("web", "--port", port)
                self.assertEqual(rc, 2, err)
                self.assertIn(f"--port {port} is not a TCP port", err)

    def test_subprocess_register_and_error(self):
        with tempfile.TemporaryDirectory() as d:
            proc = subprocess.run([sys.executable, "-m", "MultimodalFusionLib.cli", "register", FIXED, MOVING,
                                   "--output-dir", d, "--json"], capture_output=True, text=True, timeout=300)
            self.assertEqual(proc.returncode, 0, proc.stderr)
            self.assertIn("metric_after", json.loads(proc.stdout))
            proc = subprocess.run([sys.executable, "-m", "MultimodalFusionLib.cli", "register", FIXED,
                                   os.path.join(d, "missing.png"), "--output-dir", d],
                                  capture_output=True, text=True, timeout=300)
            self.assertEqual(proc.returncode, 2)
            self.assertNotIn("Traceback", proc.stderr)
            self.assertIn("File not found", proc.stderr)

    def test_verbose_before_or_after_the_command(self):
        """`-v` shows the traceback wherever it is typed (`mmfusion register ... -v` was a usage error)."""
        from MultimodalFusionLib.errors import InputError

        with tempfile.TemporaryDirectory() as d:
            missing = os.path.join(d, "missing.png")
            for argv in (["-v", "register", FIXED, missing, "-o", d], ["register", FIXED, missing, "-o", d, "-v"],
                         ["info", missing, "--verbose"]):
                with self.subTest(argv=argv), self.assertRaises(InputError):
                    run_cli(*argv)
            rc, _, err = run_cli("register", FIXED, missing, "-o", d)  # without: one line, exit 2
            self.assertEqual(rc, 2)
            self.assertIn("File not found", err)


if __name__ == "__main__":
    unittest.main()
