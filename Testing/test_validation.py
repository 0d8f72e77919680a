"""Input checks: each bad input gives a message naming the problem and the fix."""

from __future__ import annotations

import unittest

import numpy as np
import SimpleITK as sitk

from MultimodalFusionLib.errors import InputError
from MultimodalFusionLib.validation import check_image, check_mask, check_pair, overlap_fraction


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

    def test_overlap(self):
        a, b = _img(), _img()
        self.assertAlmostEqual(overlap_fraction(a, b), 1.0)
        b.SetOrigin((1000.0, 0.0, 0.0))
        self.assertEqual(overlap_fraction(a, b), 0.0)
        self.assertMessage(lambda: check_pair(a, b), "do not overlap")

    def test_mask_grid(self):
        img = _img()
        mask = sitk.Image([20, 20, 10], sitk.sitkUInt8) + 1
        self.assertEqual(check_mask(mask, img).GetPixelID(), sitk.sitkUInt8)
        other = sitk.Image([10, 10, 10], sitk.sitkUInt8) + 1
        self.assertMessage(lambda: check_mask(other, img), "not on the image's grid", "nearest")

    def test_mask_stored_flipped_is_named_by_its_placement(self):
        img = _img()
        flipped = sitk.Image(img.GetSize(), sitk.sitkUInt8) + 1  # same size and spacing, RAS order
        flipped.SetSpacing(img.GetSpacing())
        flipped.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
        self.assertMessage(lambda: check_mask(flipped, img), "axes toward RAS", "axes toward LPS",
                           "origin (0.0, 0.0, 0.0) mm (LPS)")


if __name__ == "__main__":
    unittest.main()
