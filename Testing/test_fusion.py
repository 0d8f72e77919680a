"""Tests of the pixel-level fusion methods (2D slices, 3D volumes, colour functional slices)."""

from __future__ import annotations

import importlib.util
import unittest

import numpy as np
import SimpleITK as sitk

from MultimodalFusionLib import data, fusion, io
from MultimodalFusionLib.errors import InputError, OperationCancelled
from MultimodalFusionLib.fusion import color

CLASSIC = ("average", "max", "pca", "wavelet", "laplacian", "overlay")


def _slices() -> tuple[sitk.Image, sitk.Image]:
    d = data.testing_data_dir()
    return io.read_image(d / "BrainT1Slice.png"), io.read_image(d / "BrainProtonDensitySlice.png")


def _arr(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).astype(np.float64)


class FusionMethods2DTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.a, cls.b = _slices()
        # 8-bit versions: fuse keeps their 0..255 scale, so results can be checked by hand
        cls.a8 = sitk.Cast(sitk.RescaleIntensity(cls.a, 0, 255), sitk.sitkUInt8)
        cls.b8 = sitk.Cast(sitk.RescaleIntensity(cls.b, 0, 255), sitk.sitkUInt8)

    def test_every_classic_method_is_listed_and_keeps_geometry(self) -> None:
        a = sitk.Image(self.a)
        a.SetOrigin((12.5, -3.0))
        a.SetSpacing((0.8, 1.2))
        b = sitk.Image(self.b)
        b.CopyInformation(a)
        for name in CLASSIC:
            self.assertIn(name, fusion.list_methods())
            res = fusion.fuse(a, b, name)
            self.assertEqual(res.method, name)
            self.assertEqual(res.image.GetSize(), a.GetSize())
            self.assertEqual(res.image.GetOrigin(), a.GetOrigin())
            self.assertEqual(res.image.GetSpacing(), a.GetSpacing())
            grey = _arr(res.grey_image)
            self.assertGreaterEqual(grey.min(), 0.0)
            self.assertLessEqual(grey.max(), 255.0)
            self.assertGreater(grey.std(), 1.0, name)
            self.assertGreaterEqual(res.seconds, 0.0)

    def test_average_by_hand(self) -> None:
        res = fusion.fuse(self.a8, self.b8, "average", weight=0.25)
        expected = 0.25 * _arr(self.a8) + 0.75 * _arr(self.b8)
        np.testing.assert_allclose(_arr(res.image), expected, atol=1e-3)
        np.testing.assert_allclose(_arr(res.weights), 0.25)
        self.assertEqual(res.parameters["weight"], 0.25)
        with self.assertRaises(InputError):
            fusion.fuse(self.a8, self.b8, "average", weight=1.5)

    def test_max_by_hand(self) -> None:
        res = fusion.fuse(self.a8, self.b8, "max")
        np.testing.assert_allclose(_arr(res.image), np.maximum(_arr(self.a8), _arr(self.b8)), atol=1e-3)
        w = _arr(res.weights)
        self.assertTrue(np.all((w == 0) | (w == 1)))
        np.testing.assert_array_equal(w == 1, _arr(self.a8) >= _arr(self.b8))

    def test_pca_gives_more_weight_to_the_structured_input(self) -> None:
        flat = np.full(_arr(self.a8).shape, 100.0)
        flat[:, :5] = 110.0  # almost no variance
        low = sitk.GetImageFromArray(flat.astype(np.uint8))
        res = fusion.fuse(self.a8, low, "pca")
        w = float(_arr(res.weights).mean())
        self.assertGreater(w, 0.95)
        np.testing.assert_allclose(_arr(res.image), w * _arr(self.a8) + (1 - w) * flat, atol=1e-2)

    def test_multiscale_methods_reproduce_an_input_fused_with_itself(self) -> None:
        for name, params in (("wavelet", {"wavelet": "db2", "levels": 3}), ("wavelet", {"wavelet": "haar"}),
                             ("laplacian", {"levels": 3, "sigma": 1.0})):
            res = fusion.fuse(self.a8, self.a8, name, **params)
            np.testing.assert_allclose(_arr(res.image), _arr(self.a8), atol=1e-3, err_msg=name)

    def test_every_method_returns_an_image_fused_with_itself(self) -> None:
        """Odd sizes, axes of 1 or 2 voxels, an oblique grid and 16-bit values near the top of their range: every
        grey method gives the min-max stretched input back on a's grid, and leaves its inputs as they were."""
        import hashlib

        rng = np.random.default_rng(11)
        oblique_2d = (0.6, -0.8, 0.8, 0.6)
        oblique_3d = tuple(sitk.VersorTransform((0.2, 0.5, 0.3), 0.4).GetMatrix())
        for shape in ((33, 47), (1, 57), (57, 1), (5, 3), (7, 33, 45), (2, 31, 29), (17, 2, 41)):
            values = (65535 - rng.integers(0, 4000, shape)).astype(np.uint16)
            image = sitk.GetImageFromArray(values)
            image.SetSpacing([0.7 + 0.2 * k for k in range(len(shape))])
            image.SetOrigin([-12.5 + 3 * k for k in range(len(shape))])
            image.SetDirection(oblique_2d if len(shape) == 2 else oblique_3d)
            before = hashlib.sha1(values.tobytes()).hexdigest()
            expected = (values - values.min()) / float(values.max() - values.min()) * 255.0
            for name in ("average", "max", "pca", "wavelet", "laplacian"):
                with self.subTest(shape=shape, method=name):
                    res = fusion.fuse(image, image, name)
                    self.assertEqual(res.image.GetPixelID(), sitk.sitkFloat32)
                    for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
                        self.assertEqual(getattr(res.image, get)(), getattr(image, get)(), get)
                    np.testing.assert_allclose(_arr(res.image), expected, atol=1e-3)
                    self.assertEqual(hashlib.sha1(sitk.GetArrayViewFromImage(image).tobytes()).hexdigest(), before)

    def test_pca_weight_is_the_principal_eigenvector_normalised(self) -> None:
        # Naidu & Raol's PCA fusion: the principal eigenvector (v1, v2) of the 2x2 covariance, weights v / sum(v)
        a, b = fusion.to_unit(self.a8), fusion.to_unit(self.b8)
        vals, vecs = np.linalg.eig(np.cov(a.ravel(), b.ravel()))
        v = vecs[:, np.argmax(vals)]
        res = fusion.fuse(self.a8, self.b8, "pca")
        self.assertAlmostEqual(float(_arr(res.weights).mean()), v[0] / v.sum(), places=6)
        np.testing.assert_allclose(_arr(res.image), (v[0] * a + v[1] * b) / v.sum() * 255.0, atol=1e-3)

    def test_multiscale_methods_keep_the_sharper_detail(self) -> None:
        # b = a blurred: max-abs detail selection keeps a's edges, so the fusion is sharper than b
        blurred = sitk.Cast(sitk.SmoothingRecursiveGaussian(sitk.Cast(self.a8, sitk.sitkFloat32), 3.0), sitk.sitkUInt8)
        grad_b = np.abs(np.diff(_arr(blurred), axis=1)).mean()
        for name in ("wavelet", "laplacian"):
            fused = _arr(fusion.fuse(self.a8, blurred, name).image)
            self.assertGreater(np.abs(np.diff(fused, axis=1)).mean(), 1.5 * grad_b, name)

    def test_bad_wavelet_and_unknown_method(self) -> None:
        with self.assertRaises(InputError):
            fusion.fuse(self.a8, self.b8, "wavelet", wavelet="nonsense")
        with self.assertRaises(InputError) as ctx:
            fusion.fuse(self.a8, self.b8, "nonsense")
        self.assertIn("average", str(ctx.exception))
        with self.assertRaises(InputError):
            fusion.fuse(self.a8, self.b8, "average", not_a_parameter=3)

    def test_bad_parameter_values_are_input_errors(self) -> None:
        cases = [({"method": "average", "weight": "x"}, "'weight' of fusion method 'average' must be a number"),
                 ({"method": "wavelet", "levels": "a"}, "'levels' of fusion method 'wavelet' must be a whole number"),
                 ({"method": "laplacian", "levels": 2.5}, "must be a whole number"),
                 ({"method": "laplacian", "sigma": float("nan")}, "'sigma' of fusion method 'laplacian'"),
                 ({"method": "average", "window_a": (1,)}, "not a window"),
                 ({"method": "overlay", "window": (200, 100)}, "not a window")]
        for kwargs, message in cases:
            with self.subTest(message), self.assertRaises(InputError) as ctx:
                fusion.fuse(self.a8, self.b8, **kwargs)
            self.assertIn(message, str(ctx.exception))
        # the CLI's --window sets the functional window only, --window-a the anatomical one: each fix names its own
        for kwargs, cli_hint in (({"window_a": (5, 1)}, "--window-a LO HI"), ({"window_b": (5, 1)}, "--window LO HI"),
                                 ({"window": (5, 1)}, "--window LO HI")):
            with self.subTest(kwargs), self.assertRaises(InputError) as ctx:
                fusion.fuse(self.a8, self.b8, "average", **kwargs)
            self.assertIn(f"CLI {cli_hint}", str(ctx.exception))
        # numbers given as text (a GUI field, a CLI string) are accepted and recorded as numbers
        res = fusion.fuse(self.a8, self.b8, "average", weight="0.25")
        self.assertEqual(res.parameters["weight"], 0.25)
        # the overlay threshold error names the value the user gave and the window, in their units
        with self.assertRaises(InputError) as ctx:
            fusion.fuse(self.a8, self.b8, "overlay", window=(0, 200), threshold=250)
        self.assertIn("threshold 250 lies at or above the top of the functional window 0..200", str(ctx.exception))

    def test_overlay_colour_map_case_window_alias_and_threshold_below_the_window(self) -> None:
        # matplotlib's names were case-sensitive where the built-in ones are not ('Inferno' refused, 'HOT' taken)
        inferno = fusion.fuse(self.a8, self.b8, "overlay", colormap="inferno")
        for name in ("Inferno", "INFERNO"):
            with self.subTest(name=name):
                np.testing.assert_array_equal(
                    sitk.GetArrayFromImage(fusion.fuse(self.a8, self.b8, "overlay", colormap=name).image),
                    sitk.GetArrayFromImage(inferno.image))
                fusion.check_parameters("overlay", {"colormap": name})
        # window (an alias of window_b) with window_b: fuse said "it has no parameter 'window'", check_parameters
        # (which pipeline.run calls before registering) let it through
        for call in (lambda: fusion.fuse(self.a8, self.b8, "overlay", window=(0, 100), window_b=(50, 200)),
                     lambda: fusion.check_parameters("overlay", {"window": (0, 100), "window_b": (50, 200)})):
            with self.assertRaises(InputError) as ctx:
                call()
            self.assertIn("Both window (0, 100) and window_b (50, 200)", str(ctx.exception))
        by_b = fusion.fuse(self.a8, self.b8, "overlay", window=None, window_b=(50, 200))
        self.assertEqual(by_b.parameters["window_b"], [50.0, 200.0])
        # a threshold at or below the window's bottom shows every value the window shows: threshold=0 of a PET
        # whose lowest value is above 0 (the default window starts there) had been refused
        b_arr = sitk.GetArrayFromImage(self.b8).astype(np.float32) + 20.0
        pet = sitk.GetImageFromArray(b_arr)
        pet.CopyInformation(self.b8)
        low = float(b_arr.min())
        at_bottom = fusion.fuse(self.a8, pet, "overlay", threshold=low)
        for threshold in (0, low - 5):
            with self.subTest(threshold=threshold):
                below = fusion.fuse(self.a8, pet, "overlay", threshold=threshold)
                np.testing.assert_array_equal(sitk.GetArrayFromImage(below.image),
                                              sitk.GetArrayFromImage(at_bottom.image))
                self.assertEqual(below.parameters["threshold_fraction_of_window"], 0.0)
                self.assertEqual(below.parameters["threshold"], float(threshold))

    def test_parameter_types_are_checked_before_the_method_runs(self) -> None:
        # None, True or a non-text colour map reached the method: float(None) / None.lower() as the message (or,
        # from check_parameters, a bare TypeError / AttributeError), and weight=True fused with weight 1
        cases = [("average", {"weight": None}, "'weight' of fusion method 'average' must be a number (got None)"),
                 ("average", {"weight": True}, "must be a number (got True)"),
                 ("wavelet", {"levels": None}, "'levels' of fusion method 'wavelet' must be a whole number"),
                 ("laplacian", {"sigma": None}, "'sigma' of fusion method 'laplacian' must be a number"),
                 ("overlay", {"opacity": None}, "'opacity' of fusion method 'overlay' must be a number"),
                 ("overlay", {"colormap": None}, "colour map None"),
                 ("overlay", {"colormap": 5}, "colour map 5"),
                 ("wavelet", {"levels": np.float32(2.5)}, "must be a whole number (got 2.5)"),
                 ("average", {"weight": np.float64("nan")}, "must be a number")]
        for method, params, message in cases:
            with self.subTest(method=method, **params):
                with self.assertRaises(InputError) as ctx:
                    fusion.check_parameters(method, params)
                self.assertIn(message, str(ctx.exception))
                with self.assertRaises(InputError) as ctx:
                    fusion.fuse(self.a8, self.b8, method, **params)
                self.assertIn(message, str(ctx.exception))
        # numpy numbers (a weight from np.linspace, levels from an array) run and are recorded as numbers, so
        # metrics.json holds 0.25, not the text "0.25"
        res = fusion.fuse(self.a8, self.b8, "average", weight=np.float32(0.25))
        self.assertEqual(res.parameters["weight"], 0.25)
        self.assertIsInstance(res.parameters["weight"], float)
        res = fusion.fuse(self.a8, self.b8, "wavelet", levels=np.int64(2))
        self.assertEqual(res.parameters["levels"], 2)
        self.assertIs(type(res.parameters["levels"]), int)

    def test_parameters_record_what_ran_on_a_small_image(self) -> None:
        import warnings

        small_a = sitk.RegionOfInterest(self.a8, [60, 60], [24, 20])
        small_b = sitk.RegionOfInterest(self.b8, [60, 60], [24, 20])
        for method, asked in (("wavelet", 100), ("laplacian", 100)):
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # no PyWavelets "level too high" warning reaches the user
                res = fusion.fuse(small_a, small_b, method, levels=asked)
            self.assertLess(res.parameters["levels"], asked, method)
            self.assertEqual(res.parameters["levels_requested"], asked, method)
            # what the record says ran is what ran
            again = fusion.fuse(small_a, small_b, method, levels=res.parameters["levels"])
            np.testing.assert_array_equal(_arr(again.image), _arr(res.image))
        self.assertEqual(fusion.fuse(small_a, small_b, "laplacian").parameters["levels"], 3)

    def test_thin_slab_is_decomposed_in_plane_as_its_slices_are(self) -> None:
        import warnings

        # a slab of 2-5 identical slices holds nothing across its slices: fused as a volume it must give the 2D
        # fusion of its slice. The thinnest axis used to cap every axis's levels (db2: 1 level below 12 slices,
        # laplacian: 1 below 16), and the middle slice differed from the 2D fusion by up to 106 of 255.
        for slices in (2, 3, 5):
            slab_a = sitk.JoinSeries([self.a8] * slices)
            slab_b = sitk.JoinSeries([self.b8] * slices)
            for method, params in (("wavelet", {}), ("wavelet", {"wavelet": "sym4", "levels": 4}),
                                   ("laplacian", {})):
                with self.subTest(slices=slices, method=method, **params):
                    flat = fusion.fuse(self.a8, self.b8, method, **params)
                    with warnings.catch_warnings():
                        warnings.simplefilter("error")  # no PyWavelets "level too high" warning either
                        slab = fusion.fuse(slab_a, slab_b, method, **params)
                    self.assertEqual(slab.parameters["levels"], flat.parameters["levels"])
                    self.assertNotIn("levels_requested", slab.parameters)
                    for k in range(slices):
                        np.testing.assert_allclose(_arr(slab.image)[k], _arr(flat.image), atol=1e-3)
        # slices that differ: still an exact decomposition (an input fused with itself is that input)
        rng = np.random.default_rng(7)
        varied = sitk.GetImageFromArray(rng.random((3, 40, 50)))
        for method in ("wavelet", "laplacian"):
            res = fusion.fuse(varied, varied, method)
            self.assertGreater(res.parameters["levels"], 1, method)
            np.testing.assert_allclose(_arr(res.image), fusion.to_unit(varied) * 255.0, atol=1e-3, err_msg=method)

    def test_grids_must_match(self) -> None:
        shifted = sitk.Image(self.b8)
        shifted.SetOrigin((5.0, 0.0))
        with self.assertRaises(InputError) as ctx:
            fusion.fuse(self.a8, shifted, "average")
        self.assertIn("grid", str(ctx.exception))
        self.assertIn("resample", str(ctx.exception))
        small = sitk.Shrink(self.b8, [2, 2])
        with self.assertRaises(InputError):
            fusion.fuse(self.a8, small, "max")

    def test_pixels_that_are_not_values_are_refused(self) -> None:
        # a complex image (a complex-valued MR in NIfTI) was fused from its real part, numpy only warning
        # "ComplexWarning: Casting complex values to real discards the imaginary part"; for every method
        real = _arr(self.a8)
        complex_image = sitk.GetImageFromArray((real + 1j * real[::-1]).astype(np.complex64))
        complex_image.CopyInformation(self.a8)
        for method in CLASSIC:
            for args in ((complex_image, self.b8), (self.a8, complex_image)):
                with self.subTest(method), self.assertRaises(InputError) as ctx:
                    fusion.fuse(*args, method)
                self.assertIn("complex pixels", str(ctx.exception))
                self.assertIn("ComplexToModulus", str(ctx.exception))
        # a label map (SimpleITK's LabelMap pixel types) aborted the whole process reading its voxels ("terminate
        # called after throwing an instance of 'itk::simple::GenericException'"): run where that cannot end the tests
        import subprocess
        import sys

        code = ("import SimpleITK as sitk\n"
                "from MultimodalFusionLib import fusion\n"
                "from MultimodalFusionLib.errors import InputError\n"
                "grey = sitk.GetImageFromArray(__import__('numpy').arange(12.0).reshape(3, 4))\n"
                "labels = sitk.BinaryImageToLabelMap(sitk.Cast(grey > 5, sitk.sitkUInt8))\n"
                "for args in ((labels, grey), (grey, labels)):\n"
                "    try:\n"
                "        fusion.fuse(*args, 'average')\n"
                "    except InputError as exc:\n"
                "        print(exc)\n")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        self.assertEqual(done.returncode, 0, done.stderr[-2000:])
        self.assertEqual(done.stdout.count("is a label map"), 2, done.stdout)
        self.assertIn("LabelMapToLabel", done.stdout)

    def test_values_spanning_more_than_float64_holds_are_refused(self) -> None:
        # a float64 image holding 1e308 and -1e308: its min-max scaling overflowed, so b was fused as 0 everywhere
        # but one NaN voxel (RuntimeWarning only; `mmfusion fuse` wrote it, rc 0); a colour one likewise
        huge = _arr(self.b8)
        huge[0, 0], huge[1, 1] = 1e308, -1e308
        grey = sitk.GetImageFromArray(huge)
        colour = sitk.GetImageFromArray(np.stack([huge, huge[::-1], huge], -1), isVector=True)
        for image in (grey, colour):
            image.CopyInformation(self.a8)
        for method in CLASSIC:
            for args in ((self.a8, grey), (grey, self.a8), (self.a8, colour)):
                with self.subTest(method=method, b_colour=args[1] is colour), self.assertRaises(InputError) as ctx:
                    fusion.fuse(*args, method)
                self.assertIn("values span -1e+308..1e+308, more than 64-bit floating point holds", str(ctx.exception))
        # huge values that do not overflow are scaled as any others (a float32 PET up to 3e38)
        big = sitk.GetImageFromArray((_arr(self.b8) * 1e36).astype(np.float32))
        big.CopyInformation(self.a8)
        np.testing.assert_allclose(_arr(fusion.fuse(self.a8, big, "average").image),
                                   _arr(fusion.fuse(self.a8, sitk.Cast(self.b8, sitk.sitkFloat32), "average").image),
                                   atol=1e-3)

    def test_colour_inputs_are_checked_before_their_conversion_to_grey(self) -> None:
        # a 4D colour anatomical image was a RuntimeError from ITK's VectorIndexSelectionCast, and one with 2
        # components was "Image has 2 components per pixel", naming neither image; the functional image was right
        four_d = sitk.Image([4, 4, 4, 4], sitk.sitkVectorFloat32, 3)
        grey_4d = sitk.Image([4, 4, 4, 4], sitk.sitkFloat32)
        two = sitk.GetImageFromArray(np.stack([_arr(self.a8), _arr(self.b8)], axis=-1), isVector=True)
        for a, b, words in ((four_d, grey_4d, ("anatomical image (a) is 4D", "Extract a 3D volume")),
                            (two, self.b8, ("anatomical image (a) has 2 components", "ComplexToModulus")),
                            (self.a8, two, ("functional image (b) has 2 components", "ComplexToModulus"))):
            with self.subTest(words[0]), self.assertRaises(InputError) as ctx:
                fusion.fuse(a, b, "average")
            for word in words:
                self.assertIn(word, str(ctx.exception))

    def test_a_functional_image_of_one_colour_is_constant(self) -> None:
        # a blank PET slice in a colour map's dark blue was fused (its components 0 and 128 passed as "not
        # constant"), while the same blank slice in grey was refused
        blue = np.zeros(_arr(self.b8).shape + (3,), np.uint8)
        blue[..., 2] = 128
        one_colour = sitk.GetImageFromArray(blue, isVector=True)
        one_colour.CopyInformation(self.b8)
        for method in CLASSIC:
            with self.subTest(method), self.assertRaises(InputError) as ctx:
                fusion.fuse(self.a8, one_colour, method)
            self.assertIn("functional image (b) is constant (every voxel is the colour (0, 0, 128))", str(ctx.exception))
        # one colour is what is refused, not one luminance: pure red and a green of its luminance are fused
        red = blue.copy()
        red[..., 2] = 0
        red[:, : blue.shape[1] // 2] = (255, 0, 0)
        red[:, blue.shape[1] // 2:] = (0, 130, 0)  # Y = 76.2 and 76.3
        two_colours = sitk.GetImageFromArray(red, isVector=True)
        two_colours.CopyInformation(self.b8)
        self.assertEqual(fusion.fuse(self.a8, two_colours, "average").image.GetNumberOfComponentsPerPixel(), 3)

    def test_inputs_are_not_modified(self) -> None:
        before = _arr(self.b8).copy()
        fusion.fuse(self.a8, self.b8, "wavelet")
        np.testing.assert_array_equal(_arr(self.b8), before)

    def test_progress_and_cancel(self) -> None:
        seen = []
        fusion.fuse(self.a8, self.b8, "laplacian", progress=lambda f, m: seen.append(f))
        self.assertEqual(seen[0], 0.0)
        self.assertEqual(seen[-1], 1.0)
        self.assertEqual(seen, sorted(seen))
        with self.assertRaises(OperationCancelled):
            fusion.fuse(self.a8, self.b8, "wavelet", progress=lambda f, m: f < 0.3)


class OverlayAndColourTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        a, b = _slices()
        cls.a8 = sitk.Cast(sitk.RescaleIntensity(a, 0, 255), sitk.sitkUInt8)
        # a "functional" image: a hot spot on a dark background
        yy, xx = np.mgrid[:a.GetHeight(), :a.GetWidth()]
        spot = 8.0 * np.exp(-((yy - 100) ** 2 + (xx - 90) ** 2) / (2 * 15.0 ** 2))
        cls.pet = sitk.GetImageFromArray(spot.astype(np.float32))
        cls.pet.CopyInformation(a)
        cls.spot_index = (100, 90)

    def test_fused_pixel_type_is_the_type_fuse_returns(self) -> None:
        # the CLI refuses an output format by it before the fusion (a float image to .dcm): it must name the type the
        # fused image has, for a grey, a colour and a grey-stored-as-RGB functional image alike
        rng = np.random.default_rng(0)
        colour = sitk.GetImageFromArray(rng.integers(0, 256, self.pet.GetSize()[::-1] + (3,)).astype(np.uint8),
                                        isVector=True)
        grey_rgb = sitk.GetImageFromArray(np.repeat(sitk.GetArrayFromImage(self.a8)[..., None], 3, -1), isVector=True)
        for b in (colour, grey_rgb):
            b.CopyInformation(self.a8)
        for method in ("average", "max", "pca", "wavelet", "laplacian", "overlay"):
            for name, b in (("grey", self.pet), ("colour", colour), ("grey as RGB", grey_rgb)):
                with self.subTest(method=method, b=name):
                    self.assertEqual(fusion.fused_pixel_type(method, b),
                                     fusion.fuse(self.a8, b, method).image.GetPixelID())
        self.assertIsNone(fusion.fused_pixel_type("not-built-in", self.pet))  # a user's method may return either

    def test_a_window_that_shows_only_the_background_is_refused(self) -> None:
        """--window 0 8 (SUV) on a PET stored in Bq/mL (0 in the air, 1000-20000 in the body) had passed the check
        above, the air's 0 lying in the window, and the PET was fused as a silhouette of the body (every body voxel at
        the window's top), rc 0. Refused now, naming the window, the share above it, the range and the fix; honest
        windows pass: an SUV image's, a CT lung window that most voxels saturate, a mask's."""
        rng = np.random.default_rng(3)
        z, y, x = np.mgrid[:24, :32, :32]
        body = ((x - 16) / 12.0) ** 2 + ((y - 16) / 10.0) ** 2 + ((z - 12) / 10.0) ** 2 < 1
        lung = body & (((x - 20) / 4.0) ** 2 + ((y - 16) / 4.0) ** 2 + ((z - 12) / 6.0) ** 2 < 1)
        bq_values = np.where(body, rng.uniform(1000, 6000, body.shape), 0.0)
        bq_values[body & (((x - 10) ** 2 + (y - 14) ** 2 + (z - 12) ** 2) < 9)] = 18000.0

        def image(values: np.ndarray) -> sitk.Image:
            out = sitk.GetImageFromArray(values.astype(np.float32))
            out.SetSpacing((2.0, 2.0, 2.0))
            return out

        bq, suv = image(bq_values), image(bq_values / 2000.0)
        ct = image(np.where(lung, -850.0, np.where(body, rng.normal(40, 20, body.shape), -1024.0)))
        for method in CLASSIC:
            with self.subTest(method=method), self.assertRaises(InputError) as ctx:
                fusion.fuse(ct, bq, method, window=(0.0, 8.0))
            problem, fix = ctx.exception.problem, ctx.exception.fix
            self.assertIn("The window (0, 8) given for the functional image (b) (window_b; CLI --window) holds only "
                          "its minimum 0", problem)
            self.assertIn("100.0% of its other voxels lie above the window's top (its values span 0..18000)", problem)
            self.assertIn("in the image's own units", fix)
            self.assertIn("convert the image to SUV", fix)
        # check_windows (pipeline.run, the Slicer Logic's run) applies the same rule, before any registration
        with self.assertRaisesRegex(InputError, "holds only its minimum 0"):
            fusion.check_windows(ct, bq, window_b=(0.0, 8.0))
        with self.assertRaisesRegex(InputError, r"anatomical image \(a\).*holds only its minimum -1024"):
            fusion.check_windows(ct, suv, window_a=(-1100.0, -1000.0))  # a window on the air alone
        # honest windows: the SUV image under its window, the Bq/mL one under one in Bq/mL, a CT lung window
        # (-1024, -500) that the soft tissue (over 80% of the body) saturates, a mask under a narrow window
        mask = image(body * 1.0)
        for a, b, params in ((ct, suv, {"window": (0.0, 8.0)}), (ct, bq, {"window": (0.0, 20000.0)}),
                             (ct, suv, {"window_a": (-1024.0, -500.0)}), (ct, suv, {"window_a": (-1350.0, 150.0)}),
                             (ct, mask, {"window": (0.0, 0.5)})):
            with self.subTest(params=params):
                fusion.fuse(a, b, "average", **params)
                fusion.check_windows(a, b, window_a=params.get("window_a"), window_b=params.get("window"))

    def test_a_window_below_a_background_that_is_not_one_value_is_refused(self) -> None:
        """The rule above needs the background to be the exact minimum inside the window: --window 0 8 (SUV) on a
        PET stored in Bq/mL had passed (rc 0, fused as a silhouette of the body) where one air voxel was -0.5, the
        air was -3..0 or reconstruction noise, float noise of 1e-3, or the field of view was padded with -1000.
        Refused now by fuse and check_windows; honest narrow windows pass (CT brain, stroke and bone windows, with
        -3024 padding too, an MR's narrow window, an SUV image's tight window, a label map's, an 8-bit image's)."""
        rng = np.random.default_rng(7)
        z, y, x = np.mgrid[:24, :32, :32]
        body = ((x - 16) / 12.0) ** 2 + ((y - 16) / 10.0) ** 2 + ((z - 12) / 10.0) ** 2 < 1
        brain = ((x - 16) / 10.0) ** 2 + ((y - 16) / 8.0) ** 2 + ((z - 12) / 8.0) ** 2 < 1
        bq = np.where(body, rng.uniform(1000, 6000, body.shape), 0.0)

        def image(values: np.ndarray, dtype: type = np.float32) -> sitk.Image:
            out = sitk.GetImageFromArray(values.astype(dtype))
            out.SetSpacing((2.0, 2.0, 2.0))
            return out

        ct_values = np.where(brain, rng.normal(35, 8, body.shape),
                             np.where(body, rng.normal(1200, 300, body.shape), -1024.0))
        ct = image(ct_values)
        backgrounds = {"one voxel of -0.5": np.where((x == 0) & (y == 0) & (z == 0), -0.5, bq),
                       "air of -3..0": np.where(body, bq, rng.uniform(-3, 0, body.shape)),
                       "noise about 0": np.where(body, bq, rng.normal(0, 50, body.shape)),
                       "noise of 0-20": np.where(body, bq, rng.uniform(0, 20, body.shape)),
                       "float noise": np.where(body, bq, rng.uniform(0, 1e-3, body.shape)),
                       "padding of -1000": np.where(x < 3, -1000.0, bq)}
        for what, values in backgrounds.items():
            with self.subTest(what), self.assertRaises(InputError) as ctx:
                fusion.fuse(ct, image(values), "average", window=(0.0, 8.0))
            self.assertIn("The window (0, 8) given for the functional image (b) (window_b; CLI --window) lies below "
                          "its foreground", ctx.exception.problem)
            self.assertIn("100.0% of its foreground", ctx.exception.problem)
            self.assertIn("convert the image to SUV", ctx.exception.fix)
            with self.subTest(what, check="check_windows"), self.assertRaisesRegex(InputError, "lies below its fore"):
                fusion.check_windows(ct, image(values), window_b=(0.0, 8.0))
        suv = np.where(body, rng.uniform(0.5, 3.0, body.shape), rng.normal(0, 0.05, body.shape))
        mr = np.abs(np.where(brain, np.where(x < 16, 600.0, 400.0), np.where(body, 200.0, 0.0))
                    + rng.normal(0, 10, body.shape))
        labels = np.where(brain, np.where(x < 16, 2, 3), np.where(body, 1, 0))
        honest = (("CT brain window", ct_values, (0.0, 80.0)), ("CT stroke window", ct_values, (20.0, 60.0)),
                  ("CT bone window", ct_values, (-450.0, 1050.0)),
                  ("CT padded with -3024", np.where(x < 2, -3024.0, ct_values), (0.0, 80.0)),
                  ("MR narrow window", mr, (380.0, 420.0)), ("MR background", mr, (0.0, 30.0)),
                  ("SUV tight window", suv, (0.0, 2.5)), ("SUV (1, 3)", suv, (1.0, 3.0)),
                  ("labels", labels, (0.0, 1.5)), ("8-bit", np.clip(mr / 4, 0, 255), (0.0, 40.0)))
        for what, values, window in honest:
            for dtype in (np.float32, np.int16):
                with self.subTest(what, dtype=dtype):
                    fusion.fuse(ct, image(values, dtype), "average", window=window)
                    fusion.check_windows(image(values, dtype), ct, window_a=window)

    def test_a_window_that_holds_none_of_the_image_is_refused(self) -> None:
        # --window 0 8 (SUV) on a PET stored in Bq/mL: every voxel at or above the window's top, so b became a constant
        # 1 and was fused as such (the overlay coloured everything in the colour map's top colour), rc 0; a window
        # above every value showed no colour at all
        bq = sitk.GetImageFromArray(sitk.GetArrayFromImage(self.pet) * 5000.0 + 1000.0)
        bq.CopyInformation(self.pet)
        for method in CLASSIC:
            for window, side in (((0.0, 8.0), "at or above its top"), ((1e6, 2e6), "at or below its bottom")):
                with self.subTest(method=method, window=window):
                    with self.assertRaises(InputError) as ctx:
                        fusion.fuse(self.a8, bq, method, window=window)
                    self.assertIn(f"holds none of its values (1000..{float(_arr(bq).max()):g})", str(ctx.exception))
                    self.assertIn(side, str(ctx.exception))
            # the anatomical image's window too (a CT window in HU on an image in other units)
            with self.subTest(method=method, window_a=(300.0, 400.0)):
                with self.assertRaises(InputError) as ctx:
                    fusion.fuse(self.a8, bq, method, window_a=(300.0, 400.0))
                self.assertIn("anatomical image (a) (window_a; CLI --window-a) holds none of its values (0..255)",
                              str(ctx.exception))
        # a window some voxels fall inside of, or on both sides of, is a window
        fusion.fuse(self.a8, bq, "average", window=(0.0, 30000.0))
        fusion.fuse(self.a8, bq, "overlay", window=(1001.0, 30000.0))
        # (1001, 1002), just above the background of 1000, is 0.003% of the range: a silhouette (the window below)
        with self.assertRaisesRegex(InputError, "lies below its foreground"):
            fusion.fuse(self.a8, bq, "overlay", window=(1001.0, 1002.0))
        # and a colour functional image's window is on its luminance
        colour = sitk.GetImageFromArray(np.stack([_arr(self.a8) * 0.3] * 3, -1).astype(np.uint8) + np.uint8(1),
                                        isVector=True)
        colour.CopyInformation(self.a8)
        colour_arr = sitk.GetArrayFromImage(colour)
        colour_arr[..., 0] //= 2  # not grey stored as RGB
        colour = sitk.GetImageFromArray(colour_arr, isVector=True)
        colour.CopyInformation(self.a8)
        with self.assertRaises(InputError) as ctx:
            fusion.fuse(self.a8, colour, "average", window=(200.0, 255.0))
        self.assertIn("luminance): every voxel is at or below its bottom", str(ctx.exception))

    def test_overlay_is_rgb_with_colour_only_where_uptake_is(self) -> None:
        res = fusion.fuse(self.a8, self.pet, "overlay", colormap="hot", opacity=0.9, threshold=1.0,
                          window=(0.0, 16.0))
        self.assertEqual(res.image.GetNumberOfComponentsPerPixel(), 3)
        rgb = sitk.GetArrayFromImage(res.image).astype(int)
        y, x = self.spot_index
        self.assertGreater(rgb[y, x, 0] - rgb[y, x, 2], 60)  # the hot spot shows red/orange
        corner = rgb[5, 5]
        a = int(sitk.GetArrayFromImage(self.a8)[5, 5])
        np.testing.assert_array_equal(corner, [a, a, a])  # below threshold: the anatomy alone
        w = _arr(res.weights)
        self.assertAlmostEqual(w[5, 5], 1.0)
        alpha = 0.9 * (8.0 / 16.0 - 1.0 / 16.0) / (1.0 - 1.0 / 16.0)  # opacity ramps above the threshold
        self.assertAlmostEqual(w[y, x], 1.0 - alpha, places=2)

    def test_overlay_opacity_zero_is_the_anatomy(self) -> None:
        res = fusion.fuse(self.a8, self.pet, "overlay", opacity=0.0)
        rgb = sitk.GetArrayFromImage(res.image)
        grey = sitk.GetArrayFromImage(self.a8)
        for c in range(3):
            np.testing.assert_array_equal(rgb[..., c], grey)

    def test_overlay_window_and_colormaps(self) -> None:
        narrow = fusion.fuse(self.a8, self.pet, "overlay", window=(0.0, 2.0), threshold=0.1, colormap="pet")
        wide = fusion.fuse(self.a8, self.pet, "overlay", window=(0.0, 80.0), threshold=0.1, colormap="pet")
        # a narrow window saturates more voxels, so more of the image is coloured
        self.assertGreater((_arr(narrow.weights) < 0.99).sum(), (_arr(wide.weights) < 0.99).sum())
        for name in ("hot", "pet", "rainbow", "grey", "viridis"):
            lut = color.colormap_lut(name)
            self.assertEqual(lut.shape, (256, 3))
        with self.assertRaises(InputError):
            fusion.fuse(self.a8, self.pet, "overlay", colormap="no-such-map")
        with self.assertRaises(InputError):
            fusion.fuse(self.a8, self.pet, "overlay", opacity=2.0)

    def test_overlay_takes_a_lookup_table_as_its_colour_map(self) -> None:
        # a table of 256 colours is applied as the named map of those colours is: bit-identical
        named = fusion.fuse(self.a8, self.pet, "overlay", colormap="hot", opacity=0.7)
        table = fusion.fuse(self.a8, self.pet, "overlay", colormap=color.colormap_lut("hot"), opacity=0.7)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(table.image), sitk.GetArrayFromImage(named.image))
        # a two-colour table (blue at the bottom of the window, red at its top): the hot spot is red
        two = fusion.fuse(self.a8, self.pet, "overlay", colormap=[[0, 0, 1], [1, 0, 0]], opacity=1.0,
                          window=(0.0, 8.0))
        y, x = self.spot_index
        np.testing.assert_array_equal(sitk.GetArrayFromImage(two.image)[y, x], [255, 0, 0])
        fusion.check_parameters("overlay", {"colormap": np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]])})
        for bad in ([[0, 0, 1]], [[0, 0], [1, 1]], [[0, 0, 2], [1, 1, 1]], [[0, 0, float("nan")], [1, 1, 1]],
                    [["a", "b", "c"], [1, 1, 1]], [[0, 0, 1], [1, 0, 0, 1]]):
            with self.subTest(bad=bad), self.assertRaisesRegex(InputError, "not a lookup table"):
                fusion.fuse(self.a8, self.pet, "overlay", colormap=bad)
            with self.subTest(bad=bad, check=True), self.assertRaisesRegex(InputError, "not a lookup table"):
                fusion.check_parameters("overlay", {"colormap": bad})

    def test_ycbcr_round_trip(self) -> None:
        rgb = np.random.default_rng(1).uniform(0, 255, (20, 30, 3))
        np.testing.assert_allclose(color.ycbcr_to_rgb(color.rgb_to_ycbcr(rgb)), rgb, atol=1e-3)
        ycc = color.rgb_to_ycbcr(np.array([[255.0, 255.0, 255.0], [0.0, 0.0, 0.0]]))
        np.testing.assert_allclose(ycc, [[255, 128, 128], [0, 128, 128]], atol=1e-3)

    def test_colour_functional_slice_is_fused_on_y_and_colour_put_back(self) -> None:
        hot = color.apply_colormap(np.clip(_arr(self.pet) / 8.0, 0, 1), "hot") * 255.0
        pet_rgb = sitk.GetImageFromArray(np.round(hot).astype(np.uint8), isVector=True)
        pet_rgb.CopyInformation(self.a8)
        res = fusion.fuse(self.a8, pet_rgb, "average")
        self.assertEqual(res.image.GetNumberOfComponentsPerPixel(), 3)
        self.assertEqual(res.image.GetPixelID(), sitk.sitkVectorUInt8)
        y_b = color.rgb_to_ycbcr(np.round(hot))[..., 0]
        fused_y = 0.5 * _arr(self.a8) + 0.5 * y_b
        # the grey is the luminance of the colours as stored: the fused Y up to their 8-bit rounding,
        # everywhere (colours that would leave the RGB gamut are desaturated, not clipped)
        out = sitk.GetArrayFromImage(res.image).astype(np.float64)
        np.testing.assert_allclose(_arr(res.grey), color.rgb_to_ycbcr(out)[..., 0], atol=1e-3)
        self.assertLessEqual(float(np.abs(_arr(res.grey) - fused_y).max()), 0.5 + 1e-6)
        # the colour comes back: where the map is red, red exceeds blue
        y, x = 100, 112  # on the spot's flank, where the hot map is red
        self.assertGreater(out[y, x, 0], out[y, x, 2] + 30)

    def test_saturated_colour_keeps_the_fused_brightness_and_its_hue(self) -> None:
        # pure red PET (Y 76) under bright anatomy: Y + Cr term would need R > 255; clipping R would
        # darken the pixel, so the colour is desaturated instead and the fused Y stays
        ramp = np.tile(np.linspace(230, 255, 16), (16, 1))
        a = sitk.GetImageFromArray(np.round(ramp).astype(np.uint8))
        red = np.zeros((16, 16, 3), np.uint8)
        red[..., 0] = np.round(ramp.T).astype(np.uint8)  # pure red, Y <= 76
        b = sitk.GetImageFromArray(red, isVector=True)
        res = fusion.fuse(a, b, "max")  # fused Y = a
        out = sitk.GetArrayFromImage(res.image).astype(np.float64)
        np.testing.assert_allclose(color.rgb_to_ycbcr(out)[..., 0], np.round(ramp), atol=0.5)
        r, g, bl = out[0, 0]
        self.assertEqual(r, 255.0)  # still the reddest channel: hue kept
        self.assertGreater(r, g)
        self.assertGreater(r, bl)
        self.assertLess(g, 230.0)  # still tinted, not grey
        self.assertAlmostEqual(float(_arr(res.grey)[0, 0]), float(color.rgb_to_ycbcr(out)[0, 0, 0]), places=3)
        # in-gamut pixels are the plain YCbCr inverse
        ycc = color.rgb_to_ycbcr(np.array([[[200.0, 100.0, 50.0]]]))
        np.testing.assert_allclose(color.ycbcr_to_rgb_in_gamut(ycc[..., 0], ycc[..., 1:]), [[[200, 100, 50]]],
                                   atol=1e-3)


class Fusion3DTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        tissues = data.mni152(spacing_mm=3)
        cls.t1 = tissues["t1"]
        cls.pet = data.synthetic_contrast(tissues, "pet", seed=3)

    def test_every_method_runs_in_3d(self) -> None:
        for name in CLASSIC:
            res = fusion.fuse(self.t1, self.pet, name)
            self.assertEqual(res.image.GetDimension(), 3)
            self.assertEqual(res.image.GetSize(), self.t1.GetSize())
            self.assertEqual(res.image.GetDirection(), self.t1.GetDirection())
            self.assertEqual(res.image.GetOrigin(), self.t1.GetOrigin())
            if res.weights is not None:
                self.assertEqual(res.weights.GetSize(), self.t1.GetSize())
            self.assertGreater(_arr(res.grey_image).std(), 5.0, name)

    def test_wavelet_3d_uses_wavedecn(self) -> None:
        res = fusion.fuse(self.t1, self.t1, "wavelet", wavelet="db1", levels=2)
        expected = fusion.to_unit(self.t1) * 255.0
        np.testing.assert_allclose(_arr(res.image), expected, atol=1e-2)


class PaddedCtTest(unittest.TestCase):
    def test_a_ct_padded_with_int16s_lowest_fuses_as_the_same_ct_unpadded(self) -> None:
        """A CT whose field of view int16 exports pad with -32768 had been min-max scaled from -32768: air at 0.94,
        soft tissue at 0.97, the head in a few grey levels near white in every fused image (and in the metrics'
        0..255). The padding is left out of the range (and goes to 0): the fused image, the default overlay window
        and the metrics' 8-bit values are those of the CT with its padding at its lowest HU."""
        from padded_ct import padded_head_ct

        from MultimodalFusionLib import metrics

        rng = np.random.default_rng(4)
        head = padded_head_ct(rng)
        ct, fov, body, padded, unpadded = head.ct, head.fov, head.body, head.padded, head.unpadded
        mr = sitk.GetImageFromArray(np.where(body, rng.normal(600, 80, fov.shape), 5.0).clip(0).astype(np.float32))
        soft = head.radius < 10
        self.assertLess(fusion.to_unit(padded)[soft].mean(), 0.6)  # 0.97 on the old code
        for method in ("average", "pca", "laplacian", "overlay"):
            with self.subTest(method):
                np.testing.assert_array_equal(_arr(fusion.fuse(padded, mr, method).image),
                                              _arr(fusion.fuse(unpadded, mr, method).image))
        # the CT as the functional image: the overlay's default window starts at the CT's air, not at -32768
        self.assertEqual(fusion.fuse(mr, padded, "overlay").parameters["window_b"][0], float(ct[fov].min()))
        np.testing.assert_array_equal(_arr(fusion.fuse(mr, padded, "overlay").image),
                                      _arr(fusion.fuse(mr, unpadded, "overlay").image))
        np.testing.assert_array_equal(metrics.to_8bit(padded), metrics.to_8bit(unpadded))


class RegistryTest(unittest.TestCase):
    def test_register_a_method(self) -> None:
        def minimum(a: np.ndarray, b: np.ndarray, *, progress=None) -> np.ndarray:
            return np.minimum(a, b)

        fusion.register_method("test-min", minimum)
        try:
            self.assertIn("test-min", fusion.list_methods())
            a, b = _slices()
            a8 = sitk.Cast(sitk.RescaleIntensity(a, 0, 255), sitk.sitkUInt8)
            b8 = sitk.Cast(sitk.RescaleIntensity(b, 0, 255), sitk.sitkUInt8)
            res = fusion.fuse(a8, b8, "test-min")
            np.testing.assert_allclose(_arr(res.image), np.minimum(_arr(a8), _arr(b8)), atol=1e-3)
            self.assertIsNone(res.weights)
            with self.assertRaises(InputError):
                fusion.register_method("test-min", minimum, overwrite=False)
        finally:
            fusion.METHODS.pop("test-min", None)

    def test_registered_method_keeps_its_own_parameter_types(self) -> None:
        seen = {}

        def gamma_blend(a: np.ndarray, b: np.ndarray, *, gamma=1, size=3, progress=None) -> np.ndarray:
            seen.update(gamma=gamma, size=size)
            return (a ** gamma + b) / 2.0

        fusion.register_method("test-gamma", gamma_blend)
        try:
            a, b = _slices()
            fusion.fuse(a, b, "test-gamma", gamma=0.5, size=(3, 5))  # an int default is not a type contract
            self.assertEqual(seen, {"gamma": 0.5, "size": (3, 5)})
            fusion.fuse(a, b, "test-gamma", gamma="2")  # text from a form or the CLI: converted
            self.assertEqual(seen["gamma"], 2)
            with self.assertRaisesRegex(InputError, "'gamma' of fusion method 'test-gamma' must be a (whole )?number"):
                fusion.fuse(a, b, "test-gamma", gamma="two")
        finally:
            fusion.METHODS.pop("test-gamma", None)

    def test_deep_is_listed_when_its_dependencies_are_importable(self) -> None:
        has_torch = all(importlib.util.find_spec(p) is not None for p in ("torch", "monai", "safetensors"))
        has_deep = importlib.util.find_spec("MultimodalFusionLib.fusion.deep") is not None
        self.assertEqual("deep" in fusion.list_methods(), has_torch and has_deep)


if __name__ == "__main__":
    unittest.main()
