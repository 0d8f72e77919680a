"""Resampling, intensity normalisation, foreground masks and cropping."""

from __future__ import annotations

import math
import unittest

import numpy as np
import SimpleITK as sitk

from MultimodalFusionLib.errors import InputError
from MultimodalFusionLib.preprocess import (
    CT_WINDOWS,
    crop_to_overlap,
    foreground_mask,
    normalize_intensity,
    resample,
)


def _oblique_volume() -> sitk.Image:
    """A 3D blob on an oblique, anisotropic grid."""
    z, y, x = np.mgrid[0:20, 0:30, 0:24].astype(np.float32)
    arr = 100.0 * np.exp(-(((x - 12) / 6) ** 2 + ((y - 15) / 8) ** 2 + ((z - 10) / 5) ** 2)) + 5.0
    img = sitk.GetImageFromArray(arr.astype(np.float32))
    img.SetSpacing((0.9, 1.3, 2.7))
    img.SetOrigin((-12.0, 30.5, 7.25))
    rot = sitk.Euler3DTransform()
    rot.SetRotation(math.radians(15), math.radians(-20), math.radians(30))
    img.SetDirection(rot.GetMatrix())
    return img


class Resample(unittest.TestCase):
    def test_identity_onto_own_grid_keeps_everything(self):
        img = _oblique_volume()
        for interp in ("linear", "bspline", "nearest"):
            out = resample(img, img, interpolation=interp)
            self.assertEqual(out.GetSize(), img.GetSize())
            self.assertEqual(out.GetDirection(), img.GetDirection())
            self.assertEqual(out.GetSpacing(), img.GetSpacing())
            self.assertEqual(out.GetOrigin(), img.GetOrigin())
            np.testing.assert_allclose(sitk.GetArrayFromImage(out), sitk.GetArrayFromImage(img), atol=1e-3)

    def test_translation_moves_content_in_physical_space(self):
        img = _oblique_volume()
        tx = sitk.TranslationTransform(3, (2.0, -1.0, 3.0))
        out = resample(img, img, tx)
        # out(x) = img(x + t): sample a voxel inside
        idx = (12, 14, 9)
        p = np.array(img.TransformIndexToPhysicalPoint(idx)) + np.array([2.0, -1.0, 3.0])
        expected = sitk.Resample(img, [1, 1, 1], sitk.Transform(), sitk.sitkLinear, p.tolist(), (1, 1, 1),
                                 img.GetDirection())[0, 0, 0]
        self.assertAlmostEqual(out[idx], expected, places=3)

    def test_nearest_keeps_labels_and_type(self):
        lab = sitk.Cast(_oblique_volume() > 50, sitk.sitkUInt8)
        ref = sitk.Image([30, 30, 30], sitk.sitkFloat32)
        ref.SetSpacing((1.0, 1.0, 1.0))
        ref.SetOrigin((-15.0, 20.0, 0.0))
        out = resample(lab, ref, interpolation="nearest")
        self.assertEqual(out.GetPixelID(), sitk.sitkUInt8)
        self.assertTrue(set(np.unique(sitk.GetArrayViewFromImage(out))) <= {0, 1})

    def test_bad_arguments(self):
        img = _oblique_volume()
        with self.assertRaises(InputError):
            resample(img, img, interpolation="cubic")
        with self.assertRaises(InputError):
            resample(img, sitk.Image([10, 10], sitk.sitkFloat32))


class ResampleEdgeCases(unittest.TestCase):
    def test_blank_mask_resamples_and_default_value_must_fit_the_pixels(self) -> None:
        from MultimodalFusionLib.preprocess import resample

        labels = sitk.Image([10, 10, 10], sitk.sitkUInt8)  # an empty mask is legitimate to resample
        out = resample(labels, labels, interpolation="nearest")
        self.assertEqual(out.GetPixelID(), sitk.sitkUInt8)
        for bad in (-1, 300):  # ITK would wrap them to 255 / 44, values that look like labels
            with self.assertRaisesRegex(InputError, f"default value {bad} does not fit"):
                resample(labels, labels, interpolation="nearest", default_value=bad)
        self.assertEqual(resample(labels, labels, default_value=-1).GetPixelID(), sitk.sitkFloat32)
        with self.assertRaisesRegex(InputError, "default value 0.5 is not a whole number"):  # ITK: 0.5 -> 0
            resample(labels, labels, interpolation="nearest", default_value=0.5)
        self.assertEqual(resample(labels, labels, interpolation="nearest", default_value=7.0).GetPixelID(),
                         sitk.sitkUInt8)

    def test_transform_pixel_type_and_default_value_of_the_wrong_kind(self) -> None:
        # each was a Python error from inside (AttributeError on a path, ValueError on a word) or ITK's
        # "vector of 8-bit unsigned integer is not supported in 2D" with a fix about the transform
        from MultimodalFusionLib.registration import register

        fixed = sitk.GetImageFromArray(np.pad(np.ones((20, 20), np.float32), 10))
        moving = sitk.GetImageFromArray(np.pad(np.ones((20, 20), np.float32), ((12, 8), (9, 11))))
        with self.assertRaisesRegex(InputError, "read_transform"):
            resample(moving, fixed, "transform.tfm")
        result = register(fixed, moving, stages=["rigid"], seed=0)
        with self.assertRaisesRegex(InputError, r"\.transform"):
            resample(moving, fixed, result)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(resample(moving, fixed, result.transform)),
                                      sitk.GetArrayFromImage(sitk.Resample(moving, fixed, result.transform,
                                                                           sitk.sitkLinear, 0.0, sitk.sitkFloat32)))
        with self.assertRaisesRegex(InputError, "not a number"):
            resample(moving, fixed, default_value="air")
        rgb = sitk.Compose([moving, moving, moving])
        with self.assertRaisesRegex(InputError, "cannot hold a vector image.*VectorFloat32"):
            resample(rgb, fixed, pixel_type=sitk.sitkFloat32)
        with self.assertRaisesRegex(InputError, "cannot hold a grey image"):
            resample(moving, fixed, pixel_type=sitk.sitkVectorFloat32)
        with self.assertRaisesRegex(InputError, "pixel type 999"):
            resample(moving, fixed, pixel_type=999)
        self.assertEqual(resample(rgb, fixed, pixel_type=sitk.sitkVectorFloat64).GetPixelID(), sitk.sitkVectorFloat64)
        self.assertEqual(resample(moving, fixed, pixel_type=sitk.sitkUnknown).GetPixelID(), sitk.sitkFloat32)
        single = sitk.GetImageFromArray(sitk.GetArrayFromImage(moving)[..., None], isVector=True)  # 1 component
        for pixel_type in (None, sitk.sitkVectorFloat32):  # the default had been float32, refused by ITK
            out = resample(single, fixed, sitk.TranslationTransform(2, (0.5, 0.0)), pixel_type=pixel_type)
            self.assertEqual(out.GetPixelID(), sitk.sitkVectorFloat32)
            np.testing.assert_array_equal(sitk.GetArrayFromImage(out).reshape(40, 40), sitk.GetArrayFromImage(
                resample(moving, fixed, sitk.TranslationTransform(2, (0.5, 0.0)))))

    def test_default_value_must_fit_every_integer_and_float32_type(self) -> None:
        # 64-bit and vector integer pixels were let through: ITK wrapped -1 to 2**64 - 1 and 300 to 44
        cases = [(sitk.Image([6, 6], sitk.sitkUInt64), -1), (sitk.Image([6, 6], sitk.sitkInt64), 2.0 ** 63),
                 (sitk.Image([6, 6], sitk.sitkVectorInt8, 3), 300),
                 (sitk.Image([6, 6], sitk.sitkVectorUInt32, 3), -1),
                 (sitk.Image([6, 6], sitk.sitkVectorUInt16, 3), 70000)]
        away = sitk.TranslationTransform(2, (100.0, 0.0))  # every output voxel takes the default value
        for image, bad in cases:
            name = image.GetPixelIDTypeAsString()
            with self.assertRaisesRegex(InputError, "does not fit", msg=name):
                resample(image, image, away, interpolation="nearest", default_value=bad)
            ok = -5 if "unsigned" not in name else 5
            out = sitk.GetArrayFromImage(resample(image, image, away, interpolation="nearest", default_value=ok))
            self.assertTrue(np.all(out == ok), name)
        grey = sitk.Image([6, 6], sitk.sitkFloat32)
        with self.assertRaisesRegex(InputError, "32-bit float"):  # ITK stored inf
            resample(grey, grey, away, default_value=1e300)
        self.assertEqual(resample(grey, grey, away, default_value=1e300, pixel_type=sitk.sitkFloat64)[0, 0], 1e300)
        self.assertTrue(math.isnan(resample(grey, grey, away, default_value=float("nan"))[0, 0]))


class ResampleIntoIntegers(unittest.TestCase):
    def test_interpolated_values_are_rounded_not_truncated(self) -> None:
        # ITK's cast truncated toward zero: 31% of the BrainWeb slice's pixels differed from the rounded
        # 8-bit image `mmfusion run` writes (a bias of -0.31), a CT's values moved 0.5 HU toward zero
        from MultimodalFusionLib import data
        from MultimodalFusionLib.pipeline import round_to_8bit

        fixed, moving = data.itk_brainweb_pair()
        tx = sitk.Euler2DTransform((110.0, 128.0), 0.17, (13.0, 17.0))
        for interp in ("linear", "bspline"):
            out = resample(moving, fixed, tx, interp, pixel_type=sitk.sitkUInt8)
            self.assertEqual(out.GetPixelID(), sitk.sitkUInt8)
            self.assertEqual(out.GetOrigin(), fixed.GetOrigin())
            np.testing.assert_array_equal(sitk.GetArrayFromImage(out),
                                          sitk.GetArrayFromImage(round_to_8bit(resample(moving, fixed, tx, interp))))
        ct = sitk.GetImageFromArray(np.array([[-1000, 1, 1000, 33], [-1000, 1, 1000, 33]], np.int16))
        half = sitk.TranslationTransform(2, (0.3, 0.0))  # 0.7 of a voxel and 0.3 of the next
        out = sitk.GetArrayFromImage(resample(ct, ct, half, pixel_type=sitk.sitkInt16))
        np.testing.assert_array_equal(out[0, :3], [-700, 301, 710])  # -699.7, 300.7, 709.9; ITK: -699, 300, 709
        same = sitk.GetArrayFromImage(resample(ct, ct, half, pixel_type=sitk.sitkUnknown))  # ITK's "as input"
        np.testing.assert_array_equal(same, out)
        # overshoot of the B-spline is clipped, as ITK clips, and a float image cast to labels is rounded
        step = sitk.GetImageFromArray(np.repeat([[0, 0, 0, 255, 255, 255]], 4, axis=0).astype(np.uint8))
        spline = sitk.GetArrayFromImage(resample(step, step, half, "bspline", pixel_type=sitk.sitkUInt8))
        self.assertEqual((int(spline.min()), int(spline.max())), (0, 255))
        labels = sitk.GetImageFromArray(np.array([[0.0, 1.6, 2.5, 2.97]]))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(
            resample(labels, labels, None, "nearest", pixel_type=sitk.sitkUInt8)), [[0, 2, 2, 3]])
        # integer labels with nearest stay as ITK gives them; colour images round each component
        lab = sitk.GetImageFromArray(np.array([[0, 3, 7, 255]], np.uint8))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(resample(lab, lab, half, "nearest")), [[0, 3, 7, 255]])
        rgb = sitk.Compose([moving, moving // 2, moving // 3])
        out = resample(rgb, fixed, tx, pixel_type=sitk.sitkVectorUInt8)
        self.assertEqual(out.GetPixelID(), sitk.sitkVectorUInt8)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(out),
                                      sitk.GetArrayFromImage(round_to_8bit(resample(rgb, fixed, tx))))
        big = sitk.GetImageFromArray(np.array([[2 ** 62, 2 ** 62]], np.int64))
        self.assertEqual(resample(big, big, half, pixel_type=sitk.sitkInt64)[1, 0], 2 ** 62)


class Normalize(unittest.TestCase):
    def test_zscore_percentile_window(self):
        img = _oblique_volume()
        z = sitk.GetArrayFromImage(normalize_intensity(img, "zscore"))
        self.assertAlmostEqual(float(z.mean()), 0.0, places=4)
        self.assertAlmostEqual(float(z.std()), 1.0, places=3)
        p = sitk.GetArrayFromImage(normalize_intensity(img, "percentile", lower_percentile=2, upper_percentile=98))
        self.assertEqual(float(p.min()), 0.0)
        self.assertEqual(float(p.max()), 1.0)
        ct = sitk.GetImageFromArray(np.linspace(-1000, 2000, 1000, dtype=np.float32).reshape(10, 10, 10))
        w = sitk.GetArrayFromImage(normalize_intensity(ct, ct_window="brain"))
        level, width = CT_WINDOWS["brain"]
        vals = np.linspace(-1000, 2000, 1000).reshape(10, 10, 10)
        np.testing.assert_allclose(w, np.clip((vals - (level - width / 2)) / width, 0, 1), atol=1e-5)
        self.assertEqual(normalize_intensity(img).GetDirection(), img.GetDirection())

    def test_unknown_window(self):
        with self.assertRaises(InputError) as cm:
            normalize_intensity(_oblique_volume(), ct_window="liver-ish")
        self.assertIn("lung", str(cm.exception))

    def test_window_given_a_ct_window_name(self):
        # window="brain" is read as ct_window="brain", not a ValueError from float('b')
        ct = sitk.GetImageFromArray(np.linspace(-1000, 2000, 1000, dtype=np.float32).reshape(10, 10, 10))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(normalize_intensity(ct, "window", window="brain")),
                                      sitk.GetArrayFromImage(normalize_intensity(ct, ct_window="brain")))
        for bad in ("liver-ish", (40,), ("a", "b"), 40):
            with self.assertRaises(InputError, msg=repr(bad)) as cm:
                normalize_intensity(ct, "window", window=bad)
            self.assertIn("brain", str(cm.exception))
        with self.assertRaises(InputError):
            normalize_intensity(ct, window="brain", ct_window="bone")


class MasksAndCrop(unittest.TestCase):
    def test_foreground_mask_on_head(self):
        from MultimodalFusionLib import data

        t = data.mni152(spacing_mm=4.0)
        t2 = data.synthetic_contrast(t, "t2")
        mask = foreground_mask(t2)
        self.assertEqual(mask.GetPixelID(), sitk.sitkUInt8)
        m = sitk.GetArrayViewFromImage(mask).astype(bool)
        brain = sitk.GetArrayViewFromImage(t["brain_mask"]).astype(bool)
        self.assertGreater((m & brain).sum() / brain.sum(), 0.9)  # covers the brain
        self.assertLess(m.mean(), 0.8)                             # but not the whole box

    def test_crop_to_overlap(self):
        a = sitk.Image([40, 40, 20], sitk.sitkFloat32) + 1
        b = sitk.Image([30, 30, 30], sitk.sitkFloat32) + 2
        b.SetOrigin((20.0, 10.0, -5.0))
        ca, cb = crop_to_overlap(a, b)
        self.assertEqual(ca.GetSize(), (20, 30, 20))
        self.assertEqual(ca.GetOrigin(), (20.0, 10.0, 0.0))
        self.assertEqual(cb.GetOrigin(), (20.0, 10.0, 0.0))
        far = sitk.Image(b)
        far.SetOrigin((500.0, 0.0, 0.0))
        with self.assertRaises(InputError):
            crop_to_overlap(a, far)

    def test_oblique_images_whose_boxes_overlap_but_voxels_do_not_are_refused(self) -> None:
        # their bounding boxes overlap, so each had been cropped to a slab (38 x 2 x 10 voxels of the
        # slabs 5 mm apart, 5 x 10 of the squares) of an overlap that has no voxel in it
        c = s = math.sqrt(0.5)

        def slab(offset: float) -> sitk.Image:  # 40 x 2 x 10 mm at 45 degrees, moved across its 2 mm
            img = sitk.Image([40, 2, 10], sitk.sitkFloat32) + 1
            img.SetDirection((c, -s, 0, s, c, 0, 0, 0, 1))
            img.SetOrigin((-offset * s, offset * c, 0.0))
            return img

        def square(offset: float) -> sitk.Image:  # 10 x 10 mm at 45 degrees, moved along an edge
            img = sitk.Image([10, 10], sitk.sitkUInt8) + 1
            img.SetDirection((c, -s, s, c))
            img.SetOrigin((offset * c, offset * s))
            return img

        for a, b in ((slab(0), slab(5)), (slab(0), slab(2)), (square(0), square(10.5)), (square(0), square(10))):
            with self.assertRaisesRegex(InputError, "do not overlap in physical space"):
                crop_to_overlap(a, b)
            with self.assertRaisesRegex(InputError, "do not overlap"):
                crop_to_overlap(b, a, margin_mm=5)
        # overlapping ones are cropped as before (to the boxes' overlap)
        self.assertEqual([i.GetSize() for i in crop_to_overlap(slab(0), slab(1.5))], [(40, 2, 10)] * 2)
        self.assertEqual([i.GetSize() for i in crop_to_overlap(square(0), square(9.5))], [(6, 10)] * 2)


    def test_crop_margin_must_be_a_finite_number_and_leave_something(self) -> None:
        # NaN/inf had been a TypeError from RegionOfInterest, a string numpy's UFuncTypeError, and a negative
        # margin larger than the overlap "the two images do not overlap", which they do
        a = sitk.Image([40, 40, 20], sitk.sitkFloat32) + 1
        b = sitk.Image([30, 30, 30], sitk.sitkFloat32) + 2
        b.SetOrigin((20.0, 10.0, -5.0))
        for bad in (float("nan"), float("inf"), "5", None):
            with self.assertRaisesRegex(InputError, "not a finite number", msg=repr(bad)):
                crop_to_overlap(a, b, bad)
        with self.assertRaisesRegex(InputError, r"shrinks the images' overlap \(20 x 30 x 20 mm\).*above -10 mm"):
            crop_to_overlap(a, b, -10)
        ca, cb = crop_to_overlap(a, b, -9)
        self.assertEqual((ca.GetSize(), cb.GetSize()), ((2, 12, 2), (2, 12, 2)))
        self.assertEqual([c.GetSize() for c in crop_to_overlap(a, b, 1000)], [a.GetSize(), b.GetSize()])


class RobustRangeTest(unittest.TestCase):
    def test_percentiles_fallbacks_and_non_finite_values(self) -> None:
        from MultimodalFusionLib.preprocess import robust_range

        values = np.arange(1001, dtype=np.float64)
        self.assertEqual(robust_range(values, 1.0, 99.0), (10.0, 990.0))
        spike = np.zeros(1000)
        spike[0] = 5.0  # the percentiles coincide: min/max instead
        self.assertEqual(robust_range(spike, 1.0, 99.0), (0.0, 5.0))
        self.assertEqual(robust_range(np.full(10, 3, np.int16), 1.0, 99.0), (3.0, 4.0))  # never empty
        self.assertEqual(robust_range(np.array([np.nan, 1.0, 2.0, np.inf]), 0.0, 100.0), (1.0, 2.0))
        self.assertEqual(robust_range(np.array([np.nan]), 1.0, 99.0), (0.0, 1.0))

    def test_the_padding_of_a_ct_is_left_out(self) -> None:
        """-32768 outside a CT's reconstruction circle (30% of the voxels here) had been the low end of every display
        window taken from the image (Slicer's and the web's Auto 0.5-99.5th percentiles, the report's pictures)."""
        from MultimodalFusionLib.preprocess import robust_range, unpadded_range

        inside = np.linspace(-1000, 1000, 7001)
        padded = np.concatenate([np.full(3000, -32768.0), inside]).astype(np.int16)
        self.assertEqual(robust_range(padded, 0.5, 99.5), robust_range(inside.astype(np.int16), 0.5, 99.5))
        self.assertEqual(unpadded_range(padded), (-1000.0, 1000.0))
        # a value within HU (-3024, 12-bit's lowest) is no padding; every voxel the fill: nothing else to show
        within = np.concatenate([np.full(3000, -3024.0), inside])
        self.assertEqual(robust_range(within, 0.5, 99.5), tuple(np.percentile(within, [0.5, 99.5])))
        self.assertEqual(robust_range(np.full(10, -32768.0), 1.0, 99.0), (-32768.0, -32767.0))

    def test_the_rim_of_a_resampled_padding_is_left_out(self) -> None:
        """A padded CT resampled (turned 10 degrees) holds mixtures of -32768 and the image along the padding's edge,
        B-spline's overshoot too: its 0.5th percentile had been -29199 (linear) and -32765 (B-spline, int16)."""
        from MultimodalFusionLib.preprocess import padding_mask, resample, robust_range

        rng = np.random.default_rng(6)
        z, y, x = np.mgrid[:6, :64, :64]
        radius = np.hypot(y - 31.5, x - 31.5)
        ct = np.where(radius < 22, rng.normal(40, 15, radius.shape), -1000 + rng.normal(0, 5, radius.shape))
        padded = sitk.GetImageFromArray(np.where(radius < 31, ct, -32768).astype(np.int16))
        turn = sitk.Euler3DTransform((31.5, 31.5, 2.5), 0.0, 0.0, np.radians(10.0))
        for interpolation in ("linear", "bspline"):
            for pixel_type in (None, sitk.sitkInt16):
                with self.subTest(interpolation, pixel_type=pixel_type):
                    values = sitk.GetArrayFromImage(resample(padded, padded, turn, interpolation,
                                                             pixel_type=pixel_type))
                    self.assertGreater(robust_range(values, 0.5, 99.5)[0], -1500.0)
                    self.assertFalse((values[~padding_mask(values)] < -3100).any())
                    self.assertLess(padding_mask(values).mean(), 0.25)  # the padding and its rim, not the head

    def test_the_rim_search_finds_the_voxels_binary_dilation_found(self) -> None:
        """The rim search dilates the padding by shifted ORs and takes the floor in place (3 s to 0.7-1 s on a
        512x512x300 float CT): the same mask as scipy's binary_dilation (3x3x3, 3 times) and a copy's minimum gave,
        on resampled padded images (linear, B-spline, Lanczos; float, int16; NaN and inf away from the padding), thin
        and one-slice ones, 2-D and 4-D ones, and on random masks of odd shapes."""
        from scipy.ndimage import binary_dilation

        from MultimodalFusionLib import preprocess
        from MultimodalFusionLib.preprocess import padding_mask, resample

        def old_mask(arr: np.ndarray) -> np.ndarray | None:  # padding_mask as it was: binary_dilation, a copy
            with np.errstate(invalid="ignore"):
                below = arr < preprocess.LOWEST_HU
            if not below.any():
                return None
            low = arr[below].astype(np.float64)
            candidates = (float(low.min()), float(np.median(low)))
            with np.errstate(invalid="ignore"):
                near = [np.count_nonzero(np.abs(low - c) <= 0.1 * abs(c)) for c in candidates]
            fill = candidates[int(np.argmax(near))]
            reach = 0.1 * abs(fill)
            mask = below & (arr >= fill - reach) & (arr <= fill + reach)
            with np.errstate(invalid="ignore"):
                above = np.count_nonzero((arr > fill + reach) & (arr <= fill + 2.0 * reach))
            if above > 0.25 * np.count_nonzero(mask):
                return None
            box = np.ones((3,) * arr.ndim, bool)

            def add_rim() -> None:
                around = binary_dilation(mask, structure=box, iterations=3)
                away = arr[~around]
                away = away[np.isfinite(away)] if np.issubdtype(away.dtype, np.floating) else away
                floor = float(away.min()) if away.size else preprocess.LOWEST_HU
                with np.errstate(invalid="ignore"):
                    mask[...] |= around & (arr < floor)

            if arr.ndim >= 2 and mask.any() and (below & ~mask).any():
                add_rim()
                if fill <= -32768 * 0.9 and (below & ~mask).any():  # pockets at the grid's edge
                    near = binary_dilation(mask, structure=box, iterations=6)
                    for axis, size in enumerate(arr.shape):
                        if size >= 8:
                            near[(slice(None),) * axis + (0,)] = near[(slice(None),) * axis + (-1,)] = True
                    if not (below & ~near).any():
                        mask |= below
                        add_rim()
            return mask

        rng = np.random.default_rng(8)
        cases = []
        for shape in ((6, 48, 40), (1, 40, 40), (2, 40, 33)):
            z, y, x = np.mgrid[:shape[0], :shape[1], :shape[2]]
            radius = np.hypot(y - shape[1] / 2, x - shape[2] / 2)
            ct = np.where(radius < 14, rng.normal(40, 15, radius.shape), -1000 + rng.normal(0, 5, radius.shape))
            padded = sitk.GetImageFromArray(np.where(radius < 19, ct, -32768).astype(np.int16))
            centre = padded.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in padded.GetSize()])
            turn = sitk.Euler3DTransform(centre, 0.0, 0.0, np.radians(10.0))
            for interpolation in ("linear", "bspline", "lanczos"):
                for pixel_type in (None, sitk.sitkInt16):
                    cases.append(sitk.GetArrayFromImage(resample(padded, padded, turn, interpolation,
                                                                 pixel_type=pixel_type)))
        odd = cases[0].astype(np.float32)
        odd[3, 20:24, 18:22] = np.nan
        odd[4, 22, 20] = np.inf
        odd[2, 24, 19] = -np.inf
        cases += [odd, cases[0][3], cases[0][None], np.where(np.isnan(odd), np.nan, -1.0e30).astype(np.float32)]
        for number, values in enumerate(cases):
            with self.subTest(number, shape=values.shape, dtype=str(values.dtype)):
                expected = old_mask(values)
                with np.errstate(invalid="ignore"):
                    got = padding_mask(values)
                self.assertIsNotNone(got)
                np.testing.assert_array_equal(got, expected)
                if number < 3:
                    self.assertGreater(np.count_nonzero(got & (values > -32768 + 3276.8)), 0)  # a rim was found
        for shape in ((1, 5, 9), (2, 2), (7, 1), (3, 4, 5, 6), (1, 1, 1), (20, 3, 9), (17, 30, 12)):
            for density in (0.0, 0.01, 0.1):
                mask = rng.random(shape) < density
                for voxels in (1, 2, 3, 4):
                    np.testing.assert_array_equal(
                        preprocess._within_voxels(mask, voxels),
                        binary_dilation(mask, structure=np.ones((3,) * len(shape), bool), iterations=voxels))

    def test_values_that_run_on_below_the_lowest_hu_are_no_padding(self) -> None:
        """A Siemens phase map (-4096..4095) and a difference image whose tail runs below -3100 had their lowest values
        taken for a fill and its rim (the median of those below -3100, 10% of it, 3 voxels round): 21% of the phase
        map, up to -2379, was left out of its windows and clipped to 0 by fusion's min-max scaling."""
        from scipy.ndimage import gaussian_filter

        from MultimodalFusionLib.fusion import to_unit
        from MultimodalFusionLib.preprocess import padding_mask, robust_range, unpadded_range

        z, y, x = np.mgrid[:12, :48, :48]
        phase = np.round((x * 0.1 + y * 0.07 + z * 0.2) % (2 * np.pi) / (2 * np.pi) * 8191 - 4096)
        smooth = gaussian_filter(np.random.default_rng(3).normal(0, 1, (12, 48, 48)), 3)
        difference = smooth / smooth.std() * 1500  # reaches about -5000
        for name, values in (("phase map, int16", phase.astype(np.int16)), ("phase map, float", phase),
                             ("difference image", difference.astype(np.float32))):
            with self.subTest(name):
                self.assertLess(values.min(), -3100)
                self.assertIsNone(padding_mask(values))
                self.assertEqual(unpadded_range(values), (float(values.min()), float(values.max())))
                np.testing.assert_allclose(robust_range(values, 1.0, 99.0), np.percentile(values, [1.0, 99.0]))
                self.assertLess(np.count_nonzero(to_unit(values) == 0.0), 0.01 * values.size)
        # so padded (-32768 outside a circle), its padding alone is left out
        fov = np.hypot(y - 23.5, x - 23.5) < 23
        padded = np.where(fov, phase, -32768).astype(np.int16)
        self.assertEqual(unpadded_range(padded), (float(phase[fov].min()), float(phase[fov].max())))

    def test_an_image_of_int16s_full_range_keeps_its_lowest_values(self) -> None:
        """A phase map scaled to int16's full range (-32768..32767, wrapping) holds values at int16's fill far from any
        padding, and values running on from them. Where a lowest value at the fill was taken for it however few lay
        near it (da61b31, for a small turned padding), its lowest 9% (up to -26928) had been left out of its windows
        and fusion's min-max; the values below -3100 away from those near -32768 reach -21900 here, where a padding's
        image's stay above half of int16's fill (a CT's -1000, a phase map's -4096)."""
        from MultimodalFusionLib.preprocess import padding_mask, unpadded_range

        z, y, x = np.mgrid[:4, :64, :64]
        phase = np.round((x * 0.1 + y * 0.07 + z * 0.2) % (2 * np.pi) / (2 * np.pi) * 65535 - 32768).astype(np.int16)
        self.assertEqual(phase.min(), -32768)
        self.assertIsNone(padding_mask(phase))
        self.assertEqual(unpadded_range(phase), (-32768.0, float(phase.max())))

    def test_images_of_int16s_full_range_and_a_saturated_block_are_no_padding(self) -> None:
        """Padding is one fill outside a field of view, reaching the grid's edge. A phase map scaled to int16's full
        range whose values pile up at its ends (a cosine's) and an MR's imaginary part so scaled hold -32768 as values
        of their own, their values running on from it across the grid: their lowest 61% (every value up to 11469) and
        29% (up to -655) had been taken for padding, left out of their windows and fusion's min-max. A difference
        image saturated at -32768 in a 10x10x4 block far from the grid's edge had lost the block (2.4%)."""
        from MultimodalFusionLib.preprocess import padding_mask, resample, robust_range, unpadded_range

        z, y, x = np.mgrid[:4, :64, :64]
        cosine = np.round(32767.5 * np.cos(x * 0.2 + y * 0.13) - 0.5)
        inside = np.hypot(y - 31.5, x - 31.5) < 26
        imaginary = np.clip(np.round(32768 * np.where(inside, 1.0, 0.02) * np.sin(0.15 * x + 0.1 * y + 0.3 * z)),
                            -32768, 32767)
        difference = np.random.default_rng(0).normal(0, 3000, x.shape)
        difference[:, 20:30, 20:30] = -40000
        difference = np.clip(np.round(difference), -32768, 32767)
        for name, values in (("phase map, cosine", cosine), ("imaginary part", imaginary),
                             ("saturated difference", difference)):
            values = values.astype(np.int16)
            with self.subTest(name):
                self.assertEqual(values.min(), -32768)
                self.assertIsNone(padding_mask(values))
                self.assertEqual(unpadded_range(values), (-32768.0, float(values.max())))
                np.testing.assert_allclose(robust_range(values, 0.5, 99.5), np.percentile(values, [0.5, 99.5]))
        # the difference image, its block set to 0, padded with -32768 outside a circle: its padding is left out
        padded = np.where(inside, difference, -32768).astype(np.int16)
        padded[:, 20:30, 20:30] = 0
        self.assertTrue(padding_mask(padded)[~inside].all())
        self.assertGreater(unpadded_range(padded)[0], -15000)
        # a padded CT resampled onto a larger grid (0 beyond it, or the air or NaN a user gives: mmfusion resample
        # --default-value -1024, elastix's DefaultPixelValue, antsApplyTransforms -f): its padding, 8+ voxels from the
        # grid's edge, lies at the edge of what the image holds, and is padding still (with -1024, -3024 or NaN
        # beyond, every voxel had counted as held and the padding had been kept: windows from -32768 or -41603)
        radius = np.hypot(y - 31.5, x - 31.5)[:3]
        ct = np.where(radius < 22, 40.0, -1000.0)
        padded = sitk.GetImageFromArray(np.where(radius < 32, ct, -32768).astype(np.int16))
        larger = sitk.Image([100, 100, 3], sitk.sitkInt16)
        larger.SetOrigin((-18.0, -18.0, 0.0))
        for interpolation in ("linear", "lanczos"):
            for beyond in (0.0, -1024.0, -3024.0, float("nan")):
                values = sitk.GetArrayFromImage(resample(padded, larger, sitk.Euler3DTransform(
                    (31.5, 31.5, 1.0), 0.0, 0.0, np.radians(10.0)), interpolation, default_value=beyond))
                with self.subTest("CT resampled onto a larger grid", interpolation=interpolation, beyond=beyond):
                    self.assertLess(np.nanmin(values), -32000)
                    self.assertGreater(unpadded_range(values)[0], -3100)

    def test_a_small_turned_padding_of_int16s_lowest_is_padding(self) -> None:
        """The corners a wide reconstruction circle leaves, padded with -32768 and turned: fewer voxels near the fill
        than mixtures in their rim, so the 'values run on through the fill' test (for a phase map) had kept the whole
        padding, windows and fusion's min-max from -32768 or below again (the cases a reviewer found, 19 of 306). The
        last (48^2, Lanczos): so few near the fill that the median of the values below -3100 (-4372) was taken for
        it, and no padding found (unpadded minimum -31967)."""
        from MultimodalFusionLib.preprocess import padding_mask, resample, unpadded_range

        rng = np.random.default_rng(6)
        for n, share, degrees, interpolation in ((48, 0.61, 10, "linear"), (48, 0.62, 5, "bspline"),
                                                 (96, 0.58, 20, "bspline"), (96, 0.63, 10, "lanczos"),
                                                 (48, 0.63, 10, "lanczos")):
            z, y, x = np.mgrid[:3, :n, :n]
            c = (n - 1) / 2
            radius = np.hypot(y - c, x - c)
            ct = np.where(radius < 0.35 * n, rng.normal(40, 15, radius.shape), -1000 + rng.normal(0, 5, radius.shape))
            padded = sitk.GetImageFromArray(np.where(radius < share * n, ct, -32768).astype(np.int16))
            turn = sitk.Euler3DTransform((c, c, 1.0), 0.0, 0.0, np.radians(degrees))
            values = sitk.GetArrayFromImage(resample(padded, padded, turn, interpolation))
            with self.subTest(n=n, share=share, degrees=degrees, interpolation=interpolation):
                self.assertLess(values.min(), -30000)
                self.assertIsNotNone(padding_mask(values))
                self.assertGreater(unpadded_range(values)[0], -3100)


    def test_the_rim_where_an_inscribed_circle_meets_the_grids_edge_is_padding(self) -> None:
        """An inscribed reconstruction circle (radius 0.5 n) padded with -32768 and turned: where it meets the grid's
        edge the padding mixes with what lay beyond the grid (0), pockets with no value near -32768 within 3 voxels,
        which had been the rim's floor: unpadded minimum -9294 (linear) and -10787 (B-spline), windows from -6265.
        A phase map so padded and turned keeps its own values below -3100."""
        from MultimodalFusionLib.preprocess import padding_mask, resample, robust_range, unpadded_range

        rng = np.random.default_rng(6)
        z, y, x = np.mgrid[:4, :64, :64]
        radius = np.hypot(y - 31.5, x - 31.5)
        ct = np.where(radius < 22, rng.normal(40, 15, radius.shape), -1000 + rng.normal(0, 5, radius.shape))
        phase = np.round((x * 0.1 + y * 0.07 + z * 0.2) % (2 * np.pi) / (2 * np.pi) * 8191 - 4096)
        turn = sitk.Euler3DTransform((31.5, 31.5, 1.5), 0.0, 0.0, np.radians(10.0))
        for interpolation in ("linear", "bspline"):
            padded = sitk.GetImageFromArray(np.where(radius < 32, ct, -32768).astype(np.int16))
            values = sitk.GetArrayFromImage(resample(padded, padded, turn, interpolation))
            with self.subTest("CT", interpolation=interpolation):
                self.assertGreater(unpadded_range(values)[0], -1500.0)
                self.assertGreater(robust_range(values, 0.5, 99.5)[0], -1200.0)
                self.assertLess(padding_mask(values).mean(), 0.25)
            padded = sitk.GetImageFromArray(np.where(radius < 32, phase, -32768).astype(np.int16))
            values = sitk.GetArrayFromImage(resample(padded, padded, turn, interpolation))
            with self.subTest("phase map", interpolation=interpolation):
                self.assertLess(unpadded_range(values)[0], -4000.0)


class NormalizeEdgeCases(unittest.TestCase):
    def test_wide_range_values_keep_their_differences(self) -> None:
        # doubles near 1e8 (float32 steps there are 8): z-scores of the real differences, not zeros
        values = 1e8 + np.arange(100, dtype=np.float64).reshape(10, 10)
        out = sitk.GetArrayFromImage(normalize_intensity(sitk.GetImageFromArray(values)))
        expected = (values - values.mean()) / values.std()
        np.testing.assert_allclose(out, expected, atol=1e-5)
        huge = sitk.GetImageFromArray(np.array([[1e300, -1e300], [0.0, 0.0]]))
        out = sitk.GetArrayFromImage(normalize_intensity(huge))
        np.testing.assert_allclose(out, [[math.sqrt(2), -math.sqrt(2)], [0, 0]], atol=1e-6)

    def test_masked_statistics_are_those_of_the_mask(self) -> None:
        # the mask was read through a view of a temporary image, freed before it was read: statistics
        # of whatever the allocator had put there (z-scores off by 0.015 on the MNI T2 with its brain
        # mask, 5.6e-4 on this 64^3 volume) and a segmentation fault at 256^3
        rng = np.random.default_rng(0)
        values = rng.normal(100.0, 20.0, (64, 64, 64)).astype(np.float32)
        inside = np.zeros(values.shape, bool)
        inside[16:48, 10:50, 16:48] = True
        image, mask = sitk.GetImageFromArray(values), sitk.GetImageFromArray(inside.astype(np.uint8))
        v = values.astype(np.float64)
        expected = ((v - v[inside].mean()) / v[inside].std()).astype(np.float32)
        lo, hi = np.percentile(v[inside], [5.0, 95.0])
        expected_pct = ((np.clip(v, lo, hi) - lo) / (hi - lo)).astype(np.float32)
        for _ in range(3):
            np.testing.assert_array_equal(sitk.GetArrayFromImage(normalize_intensity(image, mask=mask)), expected)
            out = normalize_intensity(image, "percentile", mask=mask, lower_percentile=5, upper_percentile=95)
            np.testing.assert_array_equal(sitk.GetArrayFromImage(out), expected_pct)

    def test_percentiles_and_window_must_be_a_range(self) -> None:
        ct = sitk.GetImageFromArray(np.arange(-1000, 1500, 25, dtype=np.int16).reshape(10, 10))
        for lower, upper in ((99, 1), (5, 5), (1, 150), (-1, 99), (float("nan"), 99)):
            with self.assertRaises(InputError, msg=f"{lower}..{upper}") as ctx:
                normalize_intensity(ct, "percentile", lower_percentile=lower, upper_percentile=upper)
            self.assertIn("percentile", str(ctx.exception))
        for window in ((40, float("nan")), (float("inf"), 80)):
            with self.assertRaises(InputError):
                normalize_intensity(ct, "window", window=window)
        with self.assertRaises(InputError):
            normalize_intensity(ct, "percentile", output_range=(0, float("inf")))
        for bad in ((0, 1, 2), (1,), 1.0, None, ("a", "b"), "01"):  # had been ValueError/TypeError from inside;
            # "01" had been read digit by digit as (0, 1)
            with self.assertRaisesRegex(InputError, "not two numbers", msg=repr(bad)):
                normalize_intensity(ct, "percentile", output_range=bad)

    def test_inverted_output_range_inverts_and_an_empty_one_is_refused(self) -> None:
        # (0, 0) had given an image of zeros without a word; (1, 0) inverts the contrast, as documented
        ct = sitk.GetImageFromArray(np.linspace(-1000, 2000, 1000).reshape(10, 10, 10))
        for method, kwargs in (("percentile", {}), ("window", {"ct_window": "brain"})):
            up = sitk.GetArrayFromImage(normalize_intensity(ct, method, **kwargs)).astype(np.float64)
            down = sitk.GetArrayFromImage(normalize_intensity(ct, method, output_range=(1, 0), **kwargs))
            self.assertEqual((float(down.min()), float(down.max())), (0.0, 1.0), method)
            self.assertTrue(np.all(np.diff(down.ravel()) <= 0), method)
            np.testing.assert_allclose(down, 1.0 - up, atol=1e-7, err_msg=method)
            for empty in ((0, 0), (5, 5.0), np.array([1, 1])):
                with self.assertRaisesRegex(InputError, r"is empty.*\(1, 0\) to invert", msg=repr(empty)):
                    normalize_intensity(ct, method, output_range=empty, **kwargs)


class SmallAndOddInputs(unittest.TestCase):
    def test_foreground_mask_of_a_tiny_image_is_a_clear_error(self) -> None:
        tiny = sitk.GetImageFromArray(np.pad(np.ones((1, 1, 1), np.float32), 1))  # 3x3x3
        # smoothed (it had been refused: too small for ITK's recursive Gaussian), then its one bright voxel is
        # thinner than the opening's ball: an empty mask is an error naming the fix, not a mask of zeros
        with self.assertRaisesRegex(InputError, r"mask is empty.*opening_radius=0"):
            foreground_mask(tiny)
        mask = foreground_mask(tiny, smoothing_sigma_mm=0, opening_radius=0)
        self.assertEqual(mask.GetSize(), (3, 3, 3))
        self.assertEqual(sitk.GetArrayFromImage(foreground_mask(tiny, opening_radius=0))[1, 1, 1], 1)

    def test_crop_and_mask_refuse_what_is_not_an_image_or_a_label(self) -> None:
        from MultimodalFusionLib.validation import check_mask

        img = _oblique_volume()
        with self.assertRaises(InputError):
            crop_to_overlap(np.zeros((20, 30, 24)), img)
        rgb = sitk.GetImageFromArray(np.ones((5, 6, 3), np.uint8), isVector=True)
        grey = sitk.GetImageFromArray(np.ones((5, 6), np.uint8))
        with self.assertRaises(InputError) as ctx:
            check_mask(rgb, grey)
        self.assertIn("components", str(ctx.exception))


class ResamplePrecision(unittest.TestCase):
    def test_float64_images_keep_their_precision(self) -> None:
        values = 1e8 + np.arange(24, dtype=np.float64).reshape(4, 6) * 0.5  # float32 steps here are 8
        img = sitk.GetImageFromArray(values)
        img.SetSpacing((0.7, 1.1))
        out = resample(img, img, interpolation="linear")
        self.assertEqual(out.GetPixelID(), sitk.sitkFloat64)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(out), values)
        self.assertEqual(resample(sitk.Cast(img, sitk.sitkFloat32), img).GetPixelID(), sitk.sitkFloat32)


class ResampleVectorFields(unittest.TestCase):
    """A vector image that is no colour picture (a displacement field) had each component interpolated and no
    vector turned: under a 90 degree rotation a field of (2, 0, 0) mm stayed (2, 0, 0), a silent wrong answer
    (antsApplyTransforms turns them, -e 1). components='vector' turns them by the inverse Jacobian of the
    transform; without it, such an image under a turning transform is refused; RGB pictures stay per channel."""

    def setUp(self) -> None:
        field = np.zeros((10, 12, 14, 3), np.float32)
        field[..., 0] = 2.0
        self.field = sitk.GetImageFromArray(field, isVector=True)
        self.field.SetOrigin((-7.0, -6.0, -5.0))
        self.rotation = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.0, 0.0, math.pi / 2)
        # the rotation's inverse takes moving vectors to the reference's space: (2, 0, 0) -> (0, -2, 0)
        self.turned = np.array(self.rotation.GetMatrix()).reshape(3, 3).T @ [2.0, 0.0, 0.0]

    def test_vectors_turn_with_the_transform(self) -> None:
        out = resample(self.field, self.field, self.rotation, components="vector")
        np.testing.assert_allclose(sitk.GetArrayFromImage(out)[5, 6, 7], self.turned, atol=1e-5)
        self.assertEqual(out.GetPixelID(), sitk.sitkVectorFloat32)
        # the same rotation as a displacement-field transform (non-linear: its Jacobian taken at each voxel)
        disp = sitk.TransformToDisplacementField(self.rotation, sitk.sitkVectorFloat64, (30, 30, 30),
                                                 (-15.0, -15.0, -15.0), (1.0, 1.0, 1.0))
        out = resample(self.field, self.field, sitk.DisplacementFieldTransform(disp), components="vector")
        np.testing.assert_allclose(sitk.GetArrayFromImage(out)[5, 6, 7], self.turned, atol=1e-4)
        # outside the moving image: the default value in every component, not a turned one
        shifted = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.0, 0.0, math.pi / 2, (20.0, 0.0, 0.0))
        out = sitk.GetArrayFromImage(resample(self.field, self.field, shifted, components="vector",
                                              default_value=-1.0))
        np.testing.assert_array_equal(out[5, 6, 13], [-1.0, -1.0, -1.0])

    def test_non_linear_jacobians_are_taken_a_slab_at_a_time(self) -> None:
        """Under a B-spline (or displacement-field) transform every voxel's Jacobian was held at once: ~240 bytes
        a voxel (a 128^3 field peaked 485 MB above its start where channels take 60 MB; 256^3 would need ~4 GB).
        They are taken a slab of voxels at a time (slab boundaries inside this 2D and this 3D image), with the
        same result (to rounding: a slab's points are counted from its first voxel); numpy's peak is the field and
        its output with a slab's Jacobians (48 bytes a voxel in 3D), 216 before."""
        import tracemalloc
        from unittest import mock

        from MultimodalFusionLib import preprocess

        rng = np.random.default_rng(0)
        for size in ((120, 100), (30, 28, 26)):
            dim = len(size)
            ref = sitk.Image(size, sitk.sitkFloat32)
            ref.SetSpacing((1.0, 1.2, 0.8)[:dim])
            ref.SetDirection(tuple(np.linalg.qr(rng.normal(size=(dim, dim)))[0].ravel()))
            field = sitk.GetImageFromArray(rng.normal(0, 2, tuple(reversed(size)) + (dim,)), isVector=True)
            field.CopyInformation(ref)
            bspline = sitk.BSplineTransformInitializer(ref, (3,) * dim, 3)
            bspline.SetParameters(tuple(rng.normal(0, 1, len(bspline.GetParameters()))))
            results, peaks = [], []
            for slab in (1000, 10 ** 9):  # slabs of 8 and 1 slices (2D, 3D); the whole image at once
                with mock.patch.object(preprocess, "_JACOBIAN_SLAB_VOXELS", slab, create=True):
                    tracemalloc.start()
                    try:
                        out = resample(field, ref, bspline, components="vector", pixel_type=sitk.sitkVectorFloat64)
                        peaks.append(tracemalloc.get_traced_memory()[1] / np.prod(size))
                    finally:
                        tracemalloc.stop()
                results.append(sitk.GetArrayFromImage(out))
            with self.subTest(dim=dim):
                # the field and its output, float64 (16 * dim bytes a voxel), and a slab's worth (113 and 216 before)
                self.assertLess(peaks[0], 16 * dim + 20, f"numpy's peak, bytes a voxel: {peaks[0]:.0f}")
                # the same to rounding: a slab's points are its first voxel's plus index steps
                np.testing.assert_allclose(results[0], results[1], rtol=1e-12, atol=1e-12)

    def test_an_unsaid_vector_image_is_refused_under_a_turn(self) -> None:
        with self.assertRaises(InputError) as cm:
            resample(self.field, self.field, self.rotation)
        self.assertIn("3 components per pixel", cm.exception.problem)
        self.assertIn("components='vector'", cm.exception.fix)
        self.assertIn("--components", cm.exception.fix)
        # a translation turns nothing: either reading gives the same answer
        moved = resample(self.field, self.field, sitk.TranslationTransform(3, (1.0, 0.0, 0.0)))
        np.testing.assert_allclose(sitk.GetArrayFromImage(moved)[5, 6, 7], [2.0, 0.0, 0.0])
        with self.assertRaises(InputError) as cm:  # a vector has as many components as the space has axes
            resample(sitk.Compose([sitk.Image((8, 8), sitk.sitkFloat32)] * 3), sitk.Image((8, 8), sitk.sitkFloat32),
                     components="vector")
        self.assertIn("no vector field of its 2D space", cm.exception.problem)

    def test_colour_pictures_stay_per_channel(self) -> None:
        rng = np.random.default_rng(0)
        rgb = sitk.GetImageFromArray(rng.integers(0, 255, (10, 12, 14, 3)).astype(np.uint8), isVector=True)
        out = resample(rgb, rgb, self.rotation)
        for k in range(3):
            np.testing.assert_array_equal(
                sitk.GetArrayFromImage(out)[..., k],
                sitk.GetArrayFromImage(resample(sitk.VectorIndexSelectionCast(rgb, k), rgb, self.rotation)))

    def test_cli(self) -> None:
        import contextlib
        import io as text
        import os
        import tempfile

        from MultimodalFusionLib import cli

        def run(argv: list[str]) -> tuple[int, str]:
            err = text.StringIO()
            with contextlib.redirect_stdout(text.StringIO()), contextlib.redirect_stderr(err):
                return cli.main(argv), err.getvalue()

        with tempfile.TemporaryDirectory() as d:
            field, tfm, out = (os.path.join(d, n) for n in ("field.nii.gz", "rot.tfm", "out.nii.gz"))
            sitk.WriteImage(self.field, field)
            sitk.WriteTransform(self.rotation, tfm)
            code, err = run(["resample", field, "--reference", field, "--transform", tfm, "-o", out])
            self.assertEqual(code, 2, err)
            self.assertIn("--components vector", err)
            self.assertFalse(os.path.exists(out))
            code, err = run(["resample", field, "--reference", field, "--transform", tfm, "-o", out,
                             "--components", "vector"])
            self.assertEqual(code, 0, err)
            np.testing.assert_allclose(sitk.GetArrayFromImage(sitk.ReadImage(out))[5, 6, 7], self.turned, atol=1e-5)
            # a zero field (its components equal, as a grey picture's) had been written as one grey value a voxel
            zero = os.path.join(d, "zero.nrrd")
            sitk.WriteImage(sitk.Image((14, 12, 10), sitk.sitkVectorFloat32, 3), zero)
            code, err = run(["resample", zero, "--reference", zero, "-o", os.path.join(d, "z.nrrd")])
            self.assertEqual(code, 0, err)
            self.assertEqual(sitk.ReadImage(os.path.join(d, "z.nrrd")).GetNumberOfComponentsPerPixel(), 3)


def _body(slices: int, spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), lungs: bool = False,
          seed: int = 0) -> sitk.Image:
    """A noisy 64 x 64 body section (an ellipse at 100 over a background of 0) of ``slices`` slices; with ``lungs``,
    two dark ellipses inside it in every slice, so that they reach the first and last slice as lungs cut by a
    chest CT's field of view do."""
    y, x = np.mgrid[0:64, 0:64].astype(np.float32)
    section = np.where(((x - 32) / 26) ** 2 + ((y - 32) / 20) ** 2 < 1, 100.0, 0.0)
    if lungs:
        for cx in (20, 44):
            section[((x - cx) / 8) ** 2 + ((y - 32) / 12) ** 2 < 1] = 0.0
    arr = np.repeat(section[None], slices, axis=0) + np.random.default_rng(seed).normal(0, 5, (slices, 64, 64))
    image = sitk.GetImageFromArray(arr.astype(np.float32))
    image.SetSpacing(spacing)
    return image


class MasksOfThinAnisotropicAndOneSliceImages(unittest.TestCase):
    """Inputs a mask, a normalisation or a crop is as valid for as any volume: thin and one-slice volumes,
    thick slices, cavities open at the first or last slice."""

    def test_thin_and_one_slice_volumes_are_masked_as_their_slices(self) -> None:
        flat = foreground_mask(_body(1)[:, :, 0])
        for slices in (1, 3):  # both had been refused: too small for ITK's recursive Gaussian
            with self.subTest(slices=slices):
                mask = sitk.GetArrayFromImage(foreground_mask(_body(slices)))
                self.assertEqual(mask.shape, (slices, 64, 64))
                for k in range(slices):  # each slice as the 2D image's mask, to a pixel of its rim
                    self.assertLessEqual(int(np.count_nonzero(mask[k] != sitk.GetArrayViewFromImage(flat))), 60)

    def test_radii_are_balls_in_mm_on_thick_slices(self) -> None:
        # a body 2 slices thick on 0.5 x 0.5 x 5 mm voxels (10 mm): the default opening, 1 voxel along every axis,
        # had erased it whole (3 slices needed) and returned an empty mask without a word
        arr = np.zeros((12, 64, 64), np.float32)
        arr[5:7, 16:48, 16:48] = 100.0
        image = sitk.GetImageFromArray(arr + np.random.default_rng(1).normal(0, 3, arr.shape).astype(np.float32))
        image.SetSpacing((0.5, 0.5, 5.0))
        mask = sitk.GetArrayFromImage(foreground_mask(image))
        self.assertEqual(mask[5:7, 17:47, 17:47].min(), 1)
        self.assertEqual(int(mask.sum(axis=(1, 2)).astype(bool).sum()), 2)
        # a dilation of 2 voxels is 1 mm along every axis: no slice of 5 mm added (it had added 2, 10 mm)
        dilated = sitk.GetArrayFromImage(foreground_mask(image, dilation_radius=2))
        self.assertEqual(np.flatnonzero(dilated.sum(axis=(1, 2))).tolist(), [5, 6])
        self.assertEqual(int(np.flatnonzero(dilated[5].sum(axis=0)).min()), 14)  # 2 pixels (1 mm) to the side

    def test_nearly_isotropic_voxels_keep_their_radius_along_every_axis(self) -> None:
        # on 0.9375 x 0.9375 x 1 mm voxels (an MR T1) the ball of the voxels that fit in 2 x 0.9375 mm had 1 slice:
        # dilation_radius=2 added 1 slice above and below where it adds 2 to an isotropic image, and the default
        # opening (1 voxel, 0.9375 mm) had no slice at all, a 2D opening
        arr = np.zeros((20, 48, 48), np.float32)
        arr[6:14, 12:36, 12:36] = 100.0
        arr += np.random.default_rng(2).normal(0, 3, arr.shape).astype(np.float32)
        for spacing in ((1.0, 1.0, 1.0), (0.9375, 0.9375, 1.0), (1.0, 1.0, 1.2)):
            with self.subTest(spacing=spacing):
                image = sitk.GetImageFromArray(arr)
                image.SetSpacing(spacing)
                dilated = sitk.GetArrayFromImage(foreground_mask(image, dilation_radius=2))
                self.assertEqual(np.flatnonzero(dilated.sum(axis=(1, 2))).tolist(), list(range(4, 16)))

    def test_cavities_reaching_the_first_or_last_slice_are_filled(self) -> None:
        body = _body(10, lungs=True)
        mask = sitk.GetArrayFromImage(foreground_mask(body))
        self.assertEqual(mask[:, 32, 20].tolist(), [1] * 10)  # the lungs, in every slice (they had stayed out)
        self.assertEqual(mask[:, 32, 44].tolist(), [1] * 10)
        kept = sitk.GetArrayFromImage(foreground_mask(body, fill_holes=False))
        self.assertEqual(kept[:, 32, 20].tolist(), [0] * 10)

    def test_air_enclosed_within_some_slices_only_stays_out(self) -> None:
        # a torso in every slice, a forearm across its front in slices 8..11 touching it at both ends (hands, elbow):
        # the air between them is enclosed in those slices, open above and below them. Each slice's holes had been
        # filled on their own, putting that air in the mask (280 of its 1400 voxels); the 3D filling leaves it out
        z, y, x = np.mgrid[0:20, 0:64, 0:64].astype(np.float32)
        torso = ((x - 32) / 22) ** 2 + ((y - 36) / 16) ** 2 < 1
        forearm = (np.abs(y - 14) <= 2) & (np.abs(x - 32) <= 18) & (z >= 8) & (z < 12)
        ends = ((np.abs(x - 13) <= 3) | (np.abs(x - 51) <= 3)) & (y >= 14) & (y <= 30) & (z >= 8) & (z < 12)
        arr = np.where(torso | forearm | ends, 100.0, 0.0) + np.random.default_rng(0).normal(0, 5, z.shape)
        mask = sitk.GetArrayFromImage(foreground_mask(sitk.GetImageFromArray(arr.astype(np.float32))))
        air = ~torso & (y > 16) & (y < 22) & (np.abs(x - 32) <= 8)
        self.assertEqual(int(mask[air].sum()), 0)
        self.assertEqual(int(mask[9:11, 13:16, 20:44].min()), 1)  # the forearm
        # a cavity the first and last slices open is still filled; a 3D hole too
        lungs = sitk.GetArrayFromImage(foreground_mask(_body(10, lungs=True)))
        self.assertEqual((lungs[:, 32, 20].min(), lungs[:, 32, 44].min()), (1, 1))
        body = sitk.GetArrayFromImage(_body(12))
        body[3:9, 22:42, 20:44] = 0.0  # a cavity closed in 3D
        image = sitk.GetImageFromArray(body)
        self.assertEqual(int(sitk.GetArrayFromImage(foreground_mask(image, fill_holes=False))[5, 32, 32]), 0)
        self.assertEqual(int(sitk.GetArrayFromImage(foreground_mask(image))[3:9, 22:42, 20:44].min()), 1)

    def test_the_mask_holds_0_and_1_only_with_every_component_kept(self) -> None:
        # the slice-by-slice filling had copied a view of each slice's filtered image after that image was freed:
        # the allocator's bytes (15..240) landed in the first row of every slice, seen with largest_component=False
        body = _body(10, lungs=True)
        for _ in range(3):
            mask = sitk.GetArrayFromImage(foreground_mask(body, largest_component=False))
            self.assertEqual(np.unique(mask).tolist(), [0, 1])
            self.assertEqual(int(mask[:, 0, :].sum()), 0)  # the body is 12 rows from the first one
            np.testing.assert_array_equal(mask, sitk.GetArrayFromImage(foreground_mask(body)))

    def test_one_slice_volumes_are_normalised_and_cropped(self) -> None:
        volume = _body(1, spacing=(0.8, 0.8, 3.0))
        volume.SetOrigin((4.0, 2.0, 30.0))  # inside the CT below in plane
        for method in ("zscore", "minmax", "percentile"):  # refused: "a 3D image with a single slice"
            with self.subTest(method=method):
                out = normalize_intensity(volume, method)
                self.assertEqual((out.GetSize(), out.GetOrigin()), (volume.GetSize(), volume.GetOrigin()))
                flat = normalize_intensity(volume[:, :, 0], method)
                np.testing.assert_array_equal(sitk.GetArrayViewFromImage(out)[0], sitk.GetArrayViewFromImage(flat))
        ct = _body(20, spacing=(1.0, 1.0, 2.0))
        ct.SetOrigin((0.0, 0.0, 10.0))  # slices at z 10..48: the one-slice volume at z 30 is the 11th
        ct_cropped, slice_cropped = crop_to_overlap(ct, volume)
        self.assertEqual(slice_cropped.GetSize(), volume.GetSize())
        # the CT slices whose voxels reach into the slice's 28.5..31.5 mm: z 28, 30, 32 (27..29, 29..31, 31..33)
        self.assertEqual((ct_cropped.GetSize()[2], ct_cropped.GetOrigin()[2]), (3, 28.0))

    def test_minmax_and_a_mask_inside_which_the_image_is_constant(self) -> None:
        arr = np.arange(60, dtype=np.int16).reshape(3, 4, 5) * 10 - 100
        image = sitk.GetImageFromArray(arr)
        out = sitk.GetArrayFromImage(normalize_intensity(image, "minmax", output_range=(-1.0, 1.0)))
        np.testing.assert_allclose(out, (arr + 100) / 590.0 * 2 - 1, atol=1e-6)
        mask = np.zeros(arr.shape, np.uint8)
        mask[1, 1, 1:3] = 1
        masked = sitk.GetImageFromArray(mask)
        out = sitk.GetArrayFromImage(normalize_intensity(image, "minmax", mask=masked))
        self.assertEqual((out.min(), out.max(), out[1, 1, 1], out[1, 1, 2]), (0.0, 1.0, 0.0, 1.0))
        flat = arr.copy()
        flat[1, 1, 1:3] = 7
        for method in ("zscore", "minmax", "percentile"):
            with self.subTest(method=method):  # z-scores had divided by 1, ranges been widened to 1, silently
                with self.assertRaisesRegex(InputError, r"inside the mask is 7 \(2 voxels\).*mask lies on"):
                    normalize_intensity(sitk.GetImageFromArray(flat), method, mask=masked)


class ResampleInterpolators(unittest.TestCase):
    """Every interpolator gives SimpleITK's own ResampleImageFilter's voxels (same settings), as an ANTs user
    compares antsApplyTransforms against it; the label ones keep the pixel type."""

    def test_each_interpolator_is_itks_and_label_ones_keep_the_pixel_type(self) -> None:
        from MultimodalFusionLib.preprocess import INTERPOLATORS, LABEL_INTERPOLATORS

        moving = _oblique_volume()
        reference = sitk.Image(moving)
        reference.SetDirection(np.eye(3).ravel().tolist())  # another direction, spacing and origin
        reference.SetSpacing((1.1, 0.95, 1.7))
        reference.SetOrigin((-5.0, 25.0, 0.0))
        affine = sitk.AffineTransform(3)
        affine.SetMatrix((1.0, 0.05, 0.0, 0.0, 0.98, 0.0, 0.03, 0.0, 1.1))
        affine.SetTranslation((0.7, -1.2, 2.3))
        self.assertEqual(set(INTERPOLATORS), {"linear", "bspline", "nearest", "lanczos", "label-gaussian"})
        for name, interpolator in INTERPOLATORS.items():
            with self.subTest(interpolation=name):
                ours = resample(moving, reference, affine, name, default_value=-1000.0)
                by_hand = sitk.Resample(moving, reference, affine, interpolator, -1000.0, sitk.sitkFloat32)
                np.testing.assert_array_equal(sitk.GetArrayViewFromImage(ours), sitk.GetArrayViewFromImage(by_hand))
                self.assertGreater(int((sitk.GetArrayViewFromImage(ours) == -1000.0).sum()), 0)  # outside the FOV
        labels = np.zeros((12, 14, 16), np.uint8)
        labels[3:9, 4:10, 2:8], labels[3:9, 4:10, 8:14] = 3, 200
        label_image = sitk.GetImageFromArray(labels)
        turned = sitk.Euler3DTransform((7.5, 6.5, 5.5), 0.0, 0.0, math.radians(20))
        for name in LABEL_INTERPOLATORS:
            with self.subTest(labels=name):
                out = resample(label_image, label_image, turned, name)
                self.assertEqual(out.GetPixelID(), sitk.sitkUInt8)
                self.assertEqual(set(np.unique(sitk.GetArrayViewFromImage(out))), {0, 3, 200})

    def test_ringing_into_integer_pixels_is_clipped_not_wrapped(self) -> None:
        edge = np.zeros((6, 6, 16), np.uint8)
        edge[:, :, 8:] = 255
        image = sitk.GetImageFromArray(edge)
        half = sitk.TranslationTransform(3, (0.5, 0.0, 0.0))
        for name in ("bspline", "lanczos"):
            with self.subTest(interpolation=name):
                wide = sitk.GetArrayFromImage(sitk.Resample(image, image, half, INTERP[name], 0.0, sitk.sitkFloat64))
                self.assertTrue(wide.max() > 255 or wide.min() < 0)  # the edge rings past 0..255
                out = sitk.GetArrayFromImage(resample(image, image, half, name, pixel_type=sitk.sitkUInt8))
                np.testing.assert_array_equal(out, np.clip(np.round(wide), 0, 255))

    def test_label_gaussian_refuses_vectors(self) -> None:
        field = sitk.GetImageFromArray(np.ones((5, 6, 7, 3), np.float32), isVector=True)
        turn = sitk.Euler3DTransform((3.0, 2.5, 2.0), 0.0, 0.0, 0.3)
        with self.assertRaisesRegex(InputError, r"Label-Gaussian.*vectors.*'linear'"):
            resample(field, field, turn, "label-gaussian", components="vector")


INTERP = {"bspline": sitk.sitkBSpline, "lanczos": sitk.sitkLanczosWindowedSinc}


class ResampleChainsAndInverses(unittest.TestCase):
    """`mmfusion resample --transform A --transform B [--invert]`: transforms chained in antsApplyTransforms' order,
    the chain inverted; a B-spline, which has no exact inverse, refused naming the fix."""

    def setUp(self) -> None:
        import tempfile

        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.image = _oblique_volume()
        self.shift = sitk.TranslationTransform(3, (4.0, -3.0, 2.0))
        self.turn = sitk.Euler3DTransform((0.0, 35.0, 20.0), 0.1, -0.05, 0.2, (1.0, 0.5, -1.0))

    def path(self, name: str) -> str:
        import os

        return os.path.join(self.tmp.name, name)

    def run_cli(self, *argv: str) -> tuple[int, str]:
        import contextlib
        import io as text

        from MultimodalFusionLib import cli

        err = text.StringIO()
        with contextlib.redirect_stdout(text.StringIO()), contextlib.redirect_stderr(err):
            return cli.main(list(argv)), err.getvalue()

    def test_chain_order_and_inverse(self) -> None:
        from MultimodalFusionLib.preprocess import chain_transforms

        point = (3.0, 40.0, 12.0)
        chained = chain_transforms([self.shift, self.turn])  # -t shift -t turn: the shift first, as in ANTs
        np.testing.assert_allclose(chained.TransformPoint(point),
                                   self.turn.TransformPoint(self.shift.TransformPoint(point)), atol=1e-12)
        back = chain_transforms([self.shift, self.turn], invert=True)
        np.testing.assert_allclose(back.TransformPoint(chained.TransformPoint(point)), point, atol=1e-9)
        self.assertIsNone(chain_transforms([]))
        with self.assertRaisesRegex(InputError, r"different dimensions \(2D and 3D\)"):
            chain_transforms([self.shift, sitk.Euler2DTransform()])
        bspline = sitk.BSplineTransformInitializer(self.image, [2, 2, 2])
        with self.assertRaisesRegex(InputError, r"cannot be inverted: it holds a B-spline.*swap FIXED and MOVING"):
            chain_transforms([self.turn, bspline], invert=True)

    def test_cli_chains_and_inverts_as_itk_does_by_hand(self) -> None:
        moving, shift, turn = self.path("m.nrrd"), self.path("shift.tfm"), self.path("turn.tfm")
        sitk.WriteImage(self.image, moving)
        sitk.WriteTransform(self.shift, shift)
        sitk.WriteTransform(self.turn, turn)
        reference = sitk.Image(self.image)
        reference.SetDirection(np.eye(3).ravel().tolist())
        sitk.WriteImage(reference, self.path("ref.nrrd"))
        cases = {"chain": ([shift, turn], False, sitk.CompositeTransform([self.turn, self.shift])),
                 "inverse": ([turn], True, self.turn.GetInverse()),
                 "inverse chain": ([shift, turn], True, sitk.CompositeTransform([self.turn, self.shift]).GetInverse())}
        for name, (files, invert, by_hand) in cases.items():
            with self.subTest(name):
                out = self.path(name.replace(" ", "_") + ".nrrd")
                argv = ["resample", moving, "--reference", self.path("ref.nrrd"), "-o", out, "--default-value", "-1000"]
                for f in files:
                    argv += ["--transform", f]
                code, err = self.run_cli(*argv + (["--invert"] if invert else []))
                self.assertEqual(code, 0, err)
                expected = sitk.Resample(self.image, reference, by_hand, sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
                np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(out)),
                                              sitk.GetArrayViewFromImage(expected))
        code, err = self.run_cli("resample", moving, "--reference", moving, "-o", self.path("x.nrrd"), "--invert")
        self.assertEqual(code, 2)
        self.assertIn("--invert was given without --transform", err)


    def test_a_moving_image_that_does_not_overlap_the_reference_is_refused(self) -> None:
        """No voxel of the reference grid inside the moving image (as they lie, or through the transform): the output
        had been written as nothing but --default-value, rc 0, where run --no-register and fuse refuse the pair."""
        import os

        far = sitk.Image(self.image)
        far.SetOrigin([c + 5000.0 for c in self.image.GetOrigin()])
        labels = sitk.Image(self.image.GetSize(), sitk.sitkUInt8)  # its label 3 lies outside the reference
        labels.CopyInformation(self.image)
        labels[0, 0, 0] = 3
        reference = sitk.Image(self.image)
        reference.SetOrigin([c + 2.0 for c in self.image.GetOrigin()])
        for name, image in (("far.nrrd", far), ("m.nrrd", self.image), ("labels.nrrd", labels),
                            ("ref.nrrd", reference)):
            sitk.WriteImage(image, self.path(name))
        sitk.WriteTransform(sitk.TranslationTransform(3, (5000.0, 5000.0, 5000.0)), self.path("to_far.tfm"))
        for moving, extra, said in (("far.nrrd", [], "as they lie (no --transform)"),
                                    ("far.nrrd", ["--default-value", "-1000"], "as they lie (no --transform)"),
                                    ("m.nrrd", ["--transform", self.path("to_far.tfm")], "through the transform")):
            with self.subTest(moving=moving, extra=extra):
                out = self.path("out.nrrd")
                code, err = self.run_cli("resample", self.path(moving), "--reference", self.path("ref.nrrd"), "-o",
                                         out, *extra)
                self.assertEqual(code, 2, err)
                self.assertIn(f"The moving image {moving} does not overlap the reference ref.nrrd {said}: every voxel "
                              "of the output would be the default value", err)
                self.assertIn("Fix: ", err)
                self.assertFalse(os.path.exists(out))
        # aligned by the transform, or overlapping with only the background (a label map): written
        for moving, extra in (("far.nrrd", ["--transform", self.path("to_far.tfm")]),
                              ("labels.nrrd", ["--interpolation", "nearest"])):
            with self.subTest(moving=moving):
                out = self.path(f"ok_{moving}")
                code, err = self.run_cli("resample", self.path(moving), "--reference", self.path("ref.nrrd"), "-o",
                                         out, *extra)
                self.assertEqual(code, 0, err)
                self.assertTrue(os.path.exists(out))


class LabelGaussianKeepsNoThinLabel(unittest.TestCase):
    def test_a_label_one_voxel_thin_is_outvoted_on_its_own_grid(self) -> None:
        # what the README says of label-gaussian (it had been called antsApplyTransforms' GenericLabel, which
        # interpolates each label linearly and keeps such a label): a 1-voxel line of 30 voxels vanishes and a
        # 4 x 4 x 4 cube loses its 8 corners, resampled onto the labels' own grid; nearest keeps both
        labels = np.zeros((40, 40, 40), np.uint8)
        labels[10:30, 10:30, 10:30] = 3
        labels[18:22, 18:22, 18:22] = 7
        labels[5, 5, 5:35] = 9
        image = sitk.GetImageFromArray(labels)
        image.SetSpacing((0.5, 0.5, 0.5))
        for interpolation, counts in (("nearest", {0: 55970, 3: 7936, 7: 64, 9: 30}),
                                      ("label-gaussian", {0: 56008, 3: 7936, 7: 56})):
            with self.subTest(interpolation=interpolation):
                out = resample(image, image, None, interpolation=interpolation)
                self.assertEqual(out.GetPixelID(), sitk.sitkUInt8)
                values, n = np.unique(sitk.GetArrayFromImage(out), return_counts=True)
                self.assertEqual(dict(zip(values.tolist(), n.tolist())), counts)



class NormalizeValuesNearTheFloat64Limit(unittest.TestCase):
    def test_zscores_of_values_spanning_more_than_float64_holds(self) -> None:
        # the refusal of such a span (004ee6e, for the min-max scalings that overflow) had reached z-scores too,
        # which are computed on values / max|value| and had come out right: an InputError since
        values = np.random.default_rng(0).uniform(-1.0, 1.0, (6, 7, 8)) * 1e308
        image = sitk.GetImageFromArray(values)
        out = sitk.GetArrayFromImage(normalize_intensity(image, "zscore"))
        expected = (values / 1e308 - (values / 1e308).mean()) / (values / 1e308).std()
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
        window = sitk.GetArrayFromImage(normalize_intensity(image, "window", window=(0.0, 2e307)))
        self.assertEqual((window.min(), window.max()), (0.0, 1.0))
        for method in ("minmax", "percentile"):  # their range overflows: still refused, naming the span
            with self.subTest(method=method):
                with self.assertRaisesRegex(InputError, "more than 64-bit floating point holds"):
                    normalize_intensity(image, method)


if __name__ == "__main__":
    unittest.main()
