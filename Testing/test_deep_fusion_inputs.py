"""Deep fusion with demanding inputs: training data memory, odd settings, resumed runs, unaligned images.

Tiny networks and small arrays: each test runs in a few seconds on 2 CPU threads.
"""

from __future__ import annotations

import unittest

import numpy as np
import SimpleITK as sitk

try:
    import monai  # noqa: F401
    import torch
except ImportError:  # pragma: no cover - the deep extra is part of the test environment
    torch = None

from MultimodalFusionLib.errors import InputError


def _tiny_config(spatial_dims: int = 2):
    from MultimodalFusionLib.fusion.deep import FusionNetConfig

    return FusionNetConfig(spatial_dims=spatial_dims, features=4, channels=(8, 16, 16), strides=(2, 2))


def _blobs(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A smooth 0..1 array with structure (so slices are not dropped as empty)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    arr = np.zeros(shape)
    for _ in range(4):
        centre, width = rng.uniform(-0.6, 0.6, len(shape)), rng.uniform(0.2, 0.5)
        arr += np.exp(-sum((g - c) ** 2 for g, c in zip(grids, centre)) / width ** 2)
    return (arr / arr.max()).astype(np.float32)


@unittest.skipIf(torch is None, "torch/monai not installed")
class TrainingDataTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.set_num_threads(2)

    def test_training_samples_share_the_pairs_memory_and_training_leaves_them_alone(self):
        """to_training_samples copied every volume once more (astype): twice the memory for big volumes."""
        from MultimodalFusionLib.fusion.deep import TrainingConfig, train_fusion
        from MultimodalFusionLib.fusion.deep.data import to_training_samples

        pairs = [(_blobs((6, 24, 20), 0), _blobs((6, 24, 20), 1)), (_blobs((24, 20), 2), _blobs((24, 20), 3))]
        kept = [(a.copy(), b.copy()) for a, b in pairs]
        volumes = to_training_samples(pairs[:1], 3)
        self.assertTrue(np.shares_memory(volumes[0]["a"], pairs[0][0]))
        self.assertTrue(np.shares_memory(volumes[0]["b"], pairs[0][1]))
        slices = to_training_samples(pairs, 2)
        self.assertGreaterEqual(len(slices), 5)  # the 2D pair and the slices with content
        for sample in slices:
            self.assertEqual(sample["a"].dtype, np.float32)
            self.assertTrue(any(np.shares_memory(sample["a"], a) for a, _ in pairs))
        # a float64 pair is converted (one float32 copy, as before)
        converted = to_training_samples([(pairs[1][0].astype(np.float64), pairs[1][1])], 2)
        self.assertEqual(converted[0]["a"].dtype, np.float32)
        # the augmentation never writes into the samples, so the caller's arrays stay as they were
        train_fusion(pairs, config=_tiny_config(2),
                     training=TrainingConfig(epochs=2, batch_size=2, patch_size=16, samples_per_epoch=6, device="cpu"))
        for (a, b), (a0, b0) in zip(pairs, kept):
            np.testing.assert_array_equal(a, a0)
            np.testing.assert_array_equal(b, b0)


@unittest.skipIf(torch is None, "torch/monai not installed")
class InferenceInputsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        torch.set_num_threads(2)

    def _net(self, spatial_dims: int = 2):
        from MultimodalFusionLib.fusion.deep import build_network

        torch.manual_seed(0)
        return build_network(_tiny_config(spatial_dims))

    def test_fuse_deep_refuses_a_second_image_placed_elsewhere(self):
        """fuse_deep compared the sizes only: an image of the same size 50 mm away was fused voxel by voxel."""
        from MultimodalFusionLib.fusion.deep import fuse_deep

        a = sitk.GetImageFromArray(_blobs((24, 20), 0))
        for change, expected in ((lambda im: im.SetOrigin((50.0, 0.0)), "origin"),
                                 (lambda im: im.SetSpacing((2.0, 1.0)), "spacing"),
                                 (lambda im: im.SetDirection((0.0, 1.0, 1.0, 0.0)), "direction")):
            b = sitk.GetImageFromArray(_blobs((24, 20), 1))
            change(b)
            with self.subTest(expected):
                with self.assertRaises(InputError) as caught:
                    fuse_deep(a, b, weights=self._net())
                self.assertIn(expected, str(caught.exception))
                self.assertIn("resample", str(caught.exception))

    def test_bad_inference_settings_are_clear_errors(self):
        """batch_size -1 returned uninitialised memory as the fused volume, 0 a ValueError from range();
        a negative or non-finite adaptation rate a torch ValueError; a huge window a 8e18-byte allocation."""
        from MultimodalFusionLib.fusion import fuse
        from MultimodalFusionLib.fusion.deep import fuse_arrays

        vol_a, vol_b = _blobs((5, 20, 20), 0), _blobs((5, 20, 20), 1)
        net2, net3 = self._net(2), self._net(3)
        cases = [
            (dict(weights=net2, batch_size=-1), "batch_size"),
            (dict(weights=net2, batch_size=0), "batch_size"),
            (dict(weights=net2, batch_size=2.5), "batch_size"),
            (dict(weights=net3, roi_size=0), "roi_size"),
            (dict(weights=net3, roi_size=10 ** 6), "roi_size"),
            (dict(weights=net2, adapt_steps=1, adapt_lr=-1.0), "adapt_lr"),
            (dict(weights=net2, adapt_steps=1, adapt_lr=float("nan")), "adapt_lr"),
            (dict(weights=net2, adapt_steps=1.5), "adapt_steps"),
            (dict(weights=net2, adapt_steps=True), "adapt_steps"),
        ]
        for params, name in cases:
            with self.subTest(params=params):
                with self.assertRaises(InputError) as caught:
                    fuse_arrays(vol_a, vol_b, **params)
                self.assertIn(name, str(caught.exception))
        # through fusion.fuse too (its parameter check lets deep's None-default adapt_steps through)
        a, b = sitk.GetImageFromArray(vol_a[2]), sitk.GetImageFromArray(vol_b[2])
        with self.assertRaises(InputError):
            fuse(a, b, "deep", weights=net2, adapt_steps=1.5)
        # sound values still run: a window larger than the volume, one slice per batch
        fused, weight, _ = fuse_arrays(vol_a, vol_b, weights=net2, batch_size=1)
        self.assertTrue(np.isfinite(fused).all() and 0.0 <= weight.min() and weight.max() <= 1.0)

    def test_non_finite_or_empty_arrays_are_refused(self):
        """fuse_arrays (public) let one NaN voxel turn every voxel of the blend and weight map into NaN,
        and an empty array reached torch (RuntimeError)."""
        from MultimodalFusionLib.fusion.deep import fuse_arrays

        a, b = _blobs((20, 20), 0), _blobs((20, 20), 1)
        b[3, 3] = np.nan
        with self.assertRaises(InputError) as caught:
            fuse_arrays(a, b, weights=self._net(), selection="blend")
        self.assertIn("NaN", str(caught.exception))
        with self.assertRaises(InputError) as caught:
            fuse_arrays(np.zeros((0, 5), np.float32), np.zeros((0, 5), np.float32), weights=self._net())
        self.assertIn("empty", str(caught.exception))


if __name__ == "__main__":
    unittest.main()
