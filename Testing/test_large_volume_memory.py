"""Memory-bounded paths for clinical-size volumes (a 512x512x200 CT is 52 M voxels, 420 MB per
float64 copy): fusion keeps few whole-volume float64 intermediates, a grey fused image is not
stored twice, and the registration checkerboard PNG is built from the displayed slice only.
Each path must give exactly the values of the straightforward computation it replaces.

Small synthetic volumes; numpy's allocations are measured with tracemalloc (deterministic).
"""

from __future__ import annotations

import tempfile
import tracemalloc
import unittest
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MultimodalFusionLib import fusion, scenarios
from MultimodalFusionLib.fusion import classic
from MultimodalFusionLib.preprocess import resample
from MultimodalFusionLib.registration import qc


def _pair(n: int = 48) -> tuple[sitk.Image, sitk.Image]:
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[0:n, 0:n, 0:n]
    a = (300 * np.sin(x / 5.0) * np.cos(y / 7.0) + rng.normal(0, 30, x.shape)).astype(np.int16)  # CT-like int16
    b = (np.exp(-((x - n / 2) ** 2 + (y - n / 2) ** 2 + (z - n / 2) ** 2) / 80.0) * 5
         + rng.random(x.shape) * 0.3).astype(np.float32)  # PET-like float32
    return sitk.GetImageFromArray(a), sitk.GetImageFromArray(b)


def _peak_bytes_per_voxel(func, voxels: int) -> float:
    tracemalloc.start()
    try:
        func()
        return tracemalloc.get_traced_memory()[1] / voxels
    finally:
        tracemalloc.stop()


class FusionMemoryTest(unittest.TestCase):
    def test_to_unit_scales_one_copy_and_leaves_the_input_alone(self):
        a, _ = _pair(16)
        arr = sitk.GetArrayFromImage(a)
        ref = arr.astype(np.float64)
        ref = (ref - ref.min()) / (ref.max() - ref.min())
        out = fusion.to_unit(a)
        self.assertEqual(out.dtype, np.float64)
        np.testing.assert_array_equal(out, ref)  # bit for bit: the same operations, in place
        as_float = arr.astype(np.float64)
        np.testing.assert_array_equal(fusion.to_unit(as_float), ref)
        np.testing.assert_array_equal(as_float, arr.astype(np.float64))  # the caller's array is not scaled

    def test_grey_result_is_stored_once(self):
        a, b = _pair(16)
        for method in ("average", "wavelet", "laplacian"):
            res = fusion.fuse(a, b, method)
            self.assertIs(res.grey_image, res.image, method)
            self.assertEqual(res.image.GetPixelID(), sitk.sitkFloat32)
        overlay = fusion.fuse(a, b, "overlay")  # RGB: its grey is the luminance, a separate image
        self.assertEqual(overlay.image.GetNumberOfComponentsPerPixel(), 3)
        self.assertEqual(overlay.grey_image.GetNumberOfComponentsPerPixel(), 1)

    def test_contribution_map_matches_the_formula(self):
        rng = np.random.default_rng(3)
        a, b = rng.random((3, 12, 14, 10))[:2]
        fused = 0.3 * a + 0.7 * b
        fused[0] = a[0]  # F == a == b nowhere, but F == a on one slice
        a[1] = b[1] = fused[1]  # den == 0 on another: 0.5
        da, db = np.abs(fused - a), np.abs(fused - b)
        den = da + db
        w = np.where(den > 1e-12, db / np.where(den > 1e-12, den, 1.0), 0.5)
        np.testing.assert_array_equal(classic.contribution_map(fused, a, b), np.clip(w, 0, 1).astype(np.float32))
        from scipy import ndimage

        conf = np.abs(a - b)
        num, norm = ndimage.gaussian_filter(w * conf, 1.5), ndimage.gaussian_filter(conf, 1.5)
        ws = np.where(norm > 1e-6, num / np.where(norm > 1e-6, norm, 1.0), 0.5)
        np.testing.assert_array_equal(classic.contribution_map(fused, a, b, smooth=1.5),
                                      np.clip(ws, 0, 1).astype(np.float32))

    def test_in_place_max_abs_rule_is_the_max_abs_rule(self):
        rng = np.random.default_rng(4)
        x, y = rng.normal(size=(2, 500))
        y[:50] = -x[:50]  # ties in magnitude keep x, as np.where(|x| >= |y|, x, y) does
        expected = classic._max_abs(x, y)
        np.testing.assert_array_equal(classic._max_abs_into(x.copy(), y), expected)

    def test_fusion_peak_memory_is_bounded(self):
        # float64 bytes per voxel numpy allocates at the peak of fuse(); before the in-place rewrite
        # these were about 40 (average), 116 (laplacian) and 129 (overlay) on this pair
        a, b = _pair(48)
        voxels = 48 ** 3
        limits = {"average": 36, "laplacian": 80, "overlay": 100}
        for method, limit in limits.items():
            peak = _peak_bytes_per_voxel(lambda m=method: fusion.fuse(a, b, m), voxels)
            self.assertLess(peak, limit, f"{method}: {peak:.1f} bytes per voxel")


class CheckerboardSliceTest(unittest.TestCase):
    def test_png_is_the_middle_slice_of_the_volume_checkerboard(self):
        fixed, moving, truth = scenarios.phantom_pair()  # oblique, anisotropic grids
        before = resample(moving, fixed, None, "linear")
        after = resample(moving, fixed, truth, "linear")
        with tempfile.TemporaryDirectory() as tmp:
            path = qc.write_checkerboard_png(fixed, before, after, Path(tmp) / "cb.png")
            png = sitk.GetArrayFromImage(sitk.ReadImage(path))
        full_before = qc.middle_slice(qc.checkerboard(fixed, before))
        full_after = qc.middle_slice(qc.checkerboard(fixed, after))
        gap = np.ones((full_before.shape[0], max(4, full_before.shape[1] // 50)), np.float32)
        expected = (np.clip(np.concatenate([full_before, gap, full_after], axis=1), 0, 1) * 255).astype(np.uint8)
        sp = fixed.GetSpacing()
        self.assertGreater(abs(sp[0] - sp[1]), 1e-6)  # the PNG is stretched to square pixels
        img = sitk.GetImageFromArray(expected)
        img.SetSpacing([sp[0], sp[1]])
        rows = int(round(expected.shape[0] * sp[1] / sp[0]))
        expected = sitk.GetArrayFromImage(sitk.Resample(img, [expected.shape[1], rows], sitk.Transform(),
                                                        sitk.sitkLinear, [0, 0], [sp[0], sp[0]], [1, 0, 0, 1], 0,
                                                        sitk.sitkUInt8))
        np.testing.assert_array_equal(png, expected)

    def test_a_small_bright_object_keeps_its_contrast(self):
        # an object on under 1% of the voxels (a PET hot spot): the 1st and 99th percentiles are both the
        # background, and the scaling to 0..1 over (0, 1) showed all of it flat white; now its min..max
        arr = np.zeros((40, 40, 40), np.float32)
        arr[19:22, 18:21, 18:21] = np.linspace(100.0, 1000.0, 27, dtype=np.float32).reshape(3, 3, 3)
        image = sitk.GetImageFromArray(arr)
        spot = sitk.GetArrayFromImage(qc.checkerboard(image, image))[19:22, 18:21, 18:21]
        np.testing.assert_allclose(spot, arr[19:22, 18:21, 18:21] / 1000.0, rtol=1e-6)
        with tempfile.TemporaryDirectory() as tmp:  # the PNG's slice path scales the same way
            png = sitk.GetArrayFromImage(sitk.ReadImage(qc.write_checkerboard_png(image, image, image,
                                                                                  Path(tmp) / "cb.png")))
        self.assertGreater(len(np.unique(png)), 4)  # background, gap and several grey levels of the spot

    def test_grids_must_match(self):
        fixed, moving, _ = scenarios.phantom_pair()
        with tempfile.TemporaryDirectory() as tmp, self.assertRaises(Exception) as ctx:
            qc.write_checkerboard_png(fixed, moving, moving, Path(tmp) / "cb.png")
        self.assertIn("one grid", str(ctx.exception))


if __name__ == "__main__":
    unittest.main()
