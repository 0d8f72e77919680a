"""The bundled and generated test data (MultimodalFusionLib.data)."""

from __future__ import annotations

import unittest

import numpy as np
import SimpleITK as sitk

from MultimodalFusionLib import data


def _same(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetPixelID() == b.GetPixelID() and a.GetSize() == b.GetSize() and a.GetOrigin() == b.GetOrigin()
            and a.GetSpacing() == b.GetSpacing() and a.GetDirection() == b.GetDirection()
            and np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b)))


class MNI152RepeatCalls(unittest.TestCase):
    """mni152 keeps its coarse results for a repeat call (the suite built the same 3-4 mm template about twenty
    times, 3-5 s each): a repeat call must give exactly a fresh build, and images of its own."""

    def test_a_repeat_call_equals_a_fresh_build_and_changing_one_result_leaves_the_next_alone(self):
        first = data.mni152(spacing_mm=4.0)
        built = data._build_mni152(4.0, (160, 192, 192))
        self.assertEqual(set(first), set(built))
        for name in built:
            self.assertTrue(_same(first[name], built[name]), name)
        # a caller that changes what it got, pixels and geometry, in every way SimpleITK allows
        first["t1"] += 1000.0
        first["gm"].SetPixel([10, 10, 10], 5.0)
        first["wm"][12, 12, 12] = 7.0
        first["csf"].SetOrigin((1.0, 2.0, 3.0))
        first["skull"].SetSpacing((1.0, 1.0, 1.0))
        first["head_mask"].SetDirection((0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
        again = data.mni152(spacing_mm=4)  # 4 and 4.0 are one grid
        for name in built:
            self.assertTrue(_same(again[name], built[name]), name)
        self.assertIsNot(again["t1"], first["t1"])


if __name__ == "__main__":
    unittest.main()
