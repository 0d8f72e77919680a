"""Input checks: each bad input gives a message naming the problem and the fix."""

from __future__ import annotations

import unittest

import numpy as np
import SimpleITK as sitk

from MultimodalFusionLib.errors import InputError
from MultimodalFusionLib.validation import (
    check_image,
    check_mask,
    check_masks_meet,
    check_pair,
    grid_differences,
    masks_intersection,
    masks_reach,
    overlap_fraction,
    small_overlap_warnings,
    start_overlap,
    voxels_inside,
    whole_number,
)


def _img(size=(20, 20, 10), value=None):
    arr = np.random.default_rng(1).random(size[::-1]).astype(np.float32)
    if value is not None:
        arr[:] = value
    return sitk.GetImageFromArray(arr)


class Checks(unittest.TestCase):
    def assertMessage(self, func, *words):
        with self.assertRaises(InputError) as cm:
            func()
        for w in words:
            self.assertIn(w, str(cm.exception))
        self.assertIn("Fix:", str(cm.exception))

    def test_constant_nan_dimension(self):
        self.assertMessage(lambda: check_image(_img(value=4.0)), "constant")
        arr = sitk.GetArrayFromImage(_img())
        arr[1, 2, 3] = np.inf
        self.assertMessage(lambda: check_image(sitk.GetImageFromArray(arr)), "NaN or infinite")
        self.assertMessage(lambda: check_pair(_img(), _img((20, 20))), "3D", "2D")
        self.assertMessage(lambda: check_image(np.zeros((3, 3))), "not an image")
        # a line of voxels along any axis is named as a line, not as "a single slice" to read as 2D
        for size in ([16, 1, 1], [1, 16, 1], [1, 1, 16], [1, 1, 1]):
            line = sitk.GetImageFromArray(np.arange(np.prod(size), dtype=np.float32).reshape(size[::-1]) + 1)
            self.assertMessage(lambda line=line: check_image(line), "single line of voxels")
        self.assertMessage(lambda: check_image(sitk.GetImageFromArray(np.random.rand(1, 4, 5))), "single slice")

    def test_overlap(self):
        a, b = _img(), _img()
        self.assertAlmostEqual(overlap_fraction(a, b), 1.0)
        b.SetOrigin((1000.0, 0.0, 0.0))
        self.assertEqual(overlap_fraction(a, b), 0.0)
        self.assertMessage(lambda: check_pair(a, b), "do not overlap")

    def test_overlap_of_the_voxels_not_only_of_the_boxes(self):
        """Boxes that overlap while the voxels do not are no overlap: two 32 mm squares at 45 degrees side by side
        (their boxes share 24% of one's), and a 40 x 4 mm bar that the start transform turns 45 degrees, away from
        a 4 mm square inside its box (the Slicer module's gate). Both had passed the check: the torch backend then
        registered the squares from no overlap and returned a transform without a word."""
        import math

        c = math.sqrt(0.5)

        def square(origin, size=(32, 32)):
            image = _img(size)
            image.SetDirection((c, -c, c, c))
            image.SetOrigin(origin)
            return image

        a, apart, across = square((0.0, 0.0)), square((c * 32.5, c * 32.5)), square((c * 16.0, c * 16.0))
        self.assertEqual(overlap_fraction(a, apart), 0.0)
        self.assertMessage(lambda: check_pair(a, apart), "do not overlap")
        self.assertGreater(overlap_fraction(a, across), 0.0)  # half of it over the other: as before
        check_pair(a, across)
        bar, spot = _img((40, 4)), _img((4, 4))
        spot.SetOrigin((20.0, 2.0))
        turn = sitk.Euler2DTransform((-0.5, -0.5), math.radians(45))  # about the bar's corner
        self.assertEqual(overlap_fraction(bar, spot, turn), 0.0)
        self.assertMessage(lambda: check_pair(bar, spot, transform=turn), "do not overlap")
        spot.SetOrigin((12.0, 12.0))  # on the turned bar
        self.assertGreater(overlap_fraction(bar, spot, turn), 0.0)
        spot.SetOrigin((20.0, 2.0))  # a non-linear start maps more than its corners: only its box is checked
        bspline = sitk.BSplineTransform(2)
        bspline.SetTransformDomainOrigin((-0.5, -0.5))
        bspline.SetTransformDomainPhysicalDimensions((40.0, 4.0))
        moved = sitk.CompositeTransform([turn, bspline])
        self.assertGreater(overlap_fraction(bar, spot, moved), 0.0)

    def test_mask_grid(self):
        img = _img()
        mask = sitk.Image([20, 20, 10], sitk.sitkUInt8) + 1
        self.assertEqual(check_mask(mask, img).GetPixelID(), sitk.sitkUInt8)
        other = sitk.Image([10, 10, 10], sitk.sitkUInt8) + 1
        self.assertMessage(lambda: check_mask(other, img), "not on the image's grid: size (10, 10, 10) vs (20, 20, 10)",
                           "nearest")

    def test_mask_stored_flipped_is_named_by_its_placement(self):
        img = _img()
        flipped = sitk.Image(img.GetSize(), sitk.sitkUInt8) + 1  # same size and spacing, RAS order
        flipped.SetSpacing(img.GetSpacing())
        flipped.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
        self.assertMessage(lambda: check_mask(flipped, img), "direction (LPS) (-1, 0, 0, 0, -1, 0, 0, 0, 1) vs "
                           "(1, 0, 0, 0, 1, 0, 0, 0, 1) (axes toward RAS vs LPS).")
        # one listing for masks and fusion inputs (fusion.check_same_grid): only what differs is named
        with self.assertRaises(InputError) as cm:
            check_mask(flipped, img)
        self.assertNotIn("size", str(cm.exception).split("Fix:")[0])
        self.assertNotIn("origin", str(cm.exception))

    def test_grid_values_shown_with_the_digits_that_tell_them_apart(self):
        # 0.002 mm off at -120.5 mm: four significant digits showed "(-120.5, 100, 30) vs (-120.5, 100, 30)"
        img = _img()
        img.SetOrigin((-120.5, 100.0, 30.0))
        mask = sitk.Image(img.GetSize(), sitk.sitkUInt8) + 1
        mask.CopyInformation(img)
        mask.SetOrigin((-120.502, 100.0, 30.0))
        self.assertEqual(grid_differences(mask, img), ["origin (LPS) (-120.502, 100, 30) vs (-120.5, 100, 30)"])
        self.assertMessage(lambda: check_mask(mask, img), "origin (LPS) (-120.502, 100, 30) vs (-120.5, 100, 30)")
        self.assertEqual(grid_differences(img, img), [])

    def test_did_you_mean_names_every_choice_as_likely(self):
        from MultimodalFusionLib.validation import did_you_mean

        keys = ("sampling_strategy", "sampling_percentage", "shrink_factors", "iterations")
        self.assertEqual(did_you_mean("sampling", keys), " (did you mean 'sampling_percentage' or 'sampling_strategy'?)")
        self.assertEqual(did_you_mean("iteration", keys), " (did you mean 'iterations'?)")
        self.assertEqual(did_you_mean("Shrink_Factors", keys), " (did you mean 'shrink_factors'?)")
        self.assertEqual(did_you_mean("zzz", keys), "")
        self.assertEqual(did_you_mean(5, keys), "")
        self.assertEqual(did_you_mean("a", ("alpha_a", "beta_a", "gamma_a", "delta_a")),
                         "")  # a whole word of four: no guess
        self.assertEqual(did_you_mean("x", ("x_a", "x_b", "x_c")), " (did you mean 'x_a', 'x_b' or 'x_c'?)")

    def test_whole_number(self):
        # one check for registration parameters and deep-fusion settings, each wording its own message
        self.assertEqual(whole_number(200.0, 1), 200)  # JSON's 200.0 is whole
        self.assertEqual(whole_number(np.int64(8), 1, 8), 8)
        self.assertEqual(whole_number(np.float32(3.0), 0), 3)
        for value in (1.5, True, np.bool_(True), "8", None, float("nan"), float("inf"), 0, 9):
            with self.subTest(value=value):
                self.assertIsNone(whole_number(value, 1, 8))
        # a whole number too large for a float is still whole (float() of it raised OverflowError)
        self.assertEqual(whole_number(10 ** 400, 0), 10 ** 400)
        self.assertIsNone(whole_number(10 ** 400, 0, 8))

    def test_a_large_fixed_mask_barely_inside_the_moving_image_is_warned_about(self):
        # a fixed mask of 100 x 181 pixels of which one column (100 pixels, 0.55 %) lies inside the moving
        # image: no warning at all, where two columns (200, 1.1 %) got one, because fewer than 150 voxels
        # were left to check_masks_meet, which warns only with a moving mask
        fixed, moving = _img((221, 257)), _img((221, 257))
        mask = np.zeros((257, 221), np.uint8)
        mask[100:200, 20:201] = 1
        fixed_mask = sitk.GetImageFromArray(mask)
        identity = sitk.Transform(2, sitk.sitkIdentity)
        for origin, shown in ((200.0, "0.5%"), (199.0, "1.1%")):
            moving.SetOrigin((origin, 0.0))
            found = small_overlap_warnings(fixed, moving, identity, "initializer 'none'", "Fix it.", fixed_mask)
            self.assertEqual(len(found), 1, (origin, found))
            self.assertIn(f"overlap in only {shown} of the smaller one", found[0])
        # with a moving mask, check_masks_meet warns about so few voxels (once, not here too)
        moving.SetOrigin((200.0, 0.0))
        moving_mask = sitk.Image(moving.GetSize(), sitk.sitkUInt8) + 1
        moving_mask.CopyInformation(moving)
        self.assertEqual(small_overlap_warnings(fixed, moving, identity, "x", "y", fixed_mask, moving_mask), [])
        self.assertEqual(len(check_masks_meet(fixed, fixed_mask, moving_mask, identity, "x", "y")), 1)

    def test_one_resampling_counts_the_image_and_the_masks_as_the_separate_ones_did(self):
        """masks_reach gives the backends' start checks both counts from one resampling of the moving grid: equal
        to voxels_inside and masks_intersection (which it replaces there) on rotated, shifted, differently spaced
        grids, with masks of any value (non-zero is inside, as check_mask makes them)."""
        rng = np.random.default_rng(3)
        fixed = _img((40, 30))
        fixed.SetSpacing((1.3, 0.9))
        fixed.SetOrigin((-2.0, 3.0))
        moving = _img((35, 25))
        moving.SetSpacing((1.1, 1.2))
        fixed_mask = sitk.GetImageFromArray((rng.random((30, 40)) > 0.5).astype(np.uint8))
        fixed_mask.CopyInformation(fixed)
        values = ((rng.random((25, 35)) > 0.4) * rng.choice([1, 3, 255], size=(25, 35))).astype(np.uint8)
        moving_mask = sitk.GetImageFromArray(values)
        moving_mask.CopyInformation(moving)
        as_checked = sitk.Cast(sitk.NotEqual(moving_mask, 0), sitk.sitkUInt8)
        everywhere = sitk.Cast(moving_mask * 0 + 1, sitk.sitkUInt8)
        for angle, shift in ((0.0, (0.0, 0.0)), (0.3, (6.0, -4.0)), (-0.5, (-9.0, 7.5)), (0.0, (80.0, 0.0))):
            transform = sitk.Euler2DTransform((15.0, 12.0), angle, shift)
            for f_mask, m_mask in ((None, None), (fixed_mask, None), (None, moving_mask), (fixed_mask, moving_mask)):
                with self.subTest(angle=angle, shift=shift, fixed_mask=f_mask is not None,
                                  moving_mask=m_mask is not None):
                    image, masks = masks_reach(fixed, moving, transform, f_mask, m_mask)
                    self.assertEqual(image, voxels_inside(fixed, moving, transform))
                    self.assertEqual(masks, masks_intersection(fixed, f_mask, as_checked if m_mask is not None
                                                               else everywhere, transform))
                    self.assertEqual(start_overlap(fixed, moving, transform, f_mask, m_mask, inside=masks),
                                     start_overlap(fixed, moving, transform, f_mask, m_mask))
                    if shift[0] == 80.0:
                        self.assertEqual((image, masks), (0, 0))
                    elif f_mask is None and m_mask is None:
                        self.assertEqual(image, masks)
                    else:
                        self.assertGreater(image, masks)
                        self.assertGreater(masks, 0)


if __name__ == "__main__":
    unittest.main()
