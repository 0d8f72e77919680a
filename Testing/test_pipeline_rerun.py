"""Re-running ``mmfusion run``/``register`` into the same output folder: the results are replaced as a whole.

A run that fails half-way (after the registration, in the fusion) leaves the folder as the last good
run left it, and a run that succeeds leaves no file of an earlier run it did not write itself (a
deformable ``transform.h5`` next to a new ``transform.tfm``, a transform after ``--no-register``, the
fused images of methods not run this time), so the folder never mixes two runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io as _textio
import json
import os
import tempfile
import unittest

import numpy as np
import SimpleITK as sitk

from MultimodalFusionLib import cli, io, pipeline
from MultimodalFusionLib.errors import InputError


def _blob_pair() -> tuple[sitk.Image, sitk.Image]:
    """A small T1-like volume and a PET-like one shifted 2 mm, on different grids (fast to register)."""
    zz, yy, xx = np.mgrid[0:20, 0:24, 0:22].astype(np.float32)
    t1 = 100.0 * (((xx - 11) / 8) ** 2 + ((yy - 12) / 9) ** 2 + ((zz - 10) / 7) ** 2 < 1)
    t1 += 80.0 * (((xx - 8) ** 2 + (yy - 10) ** 2 + (zz - 10) ** 2) < 9)
    fixed = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(t1.astype(np.float32)), 1.0)
    fixed.SetSpacing((2.0, 2.0, 2.0))
    pet = 1e5 * ((((xx - 12) ** 2 + (yy - 10) ** 2 + (zz - 10) ** 2) < 9) + 0.2 * (t1 > 0))
    moving = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(pet.astype(np.float32)), 1.0)
    moving.SetSpacing((2.0, 2.0, 2.0))
    return fixed, moving


def _cli(argv: list[str]) -> int:
    with contextlib.redirect_stdout(_textio.StringIO()), contextlib.redirect_stderr(_textio.StringIO()):
        return cli.main(argv)


def _snapshot(folder: str) -> dict[str, str]:
    out = {}
    for name in sorted(os.listdir(folder)):
        with open(os.path.join(folder, name), "rb") as fh:
            out[name] = hashlib.sha256(fh.read()).hexdigest()
    return out


class RunRerunTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        fixed, moving = _blob_pair()
        self.fixed = os.path.join(self.tmp.name, "t1.nii.gz")
        self.moving = os.path.join(self.tmp.name, "pet.nii.gz")
        io.write_image(fixed, self.fixed)
        io.write_image(moving, self.moving)
        self.out = os.path.join(self.tmp.name, "out")

    def test_a_run_failing_in_the_fusion_leaves_the_previous_results_untouched(self) -> None:
        pipeline.run(self.fixed, self.moving, self.out, methods="average,wavelet", seed=1)
        before = _snapshot(self.out)
        # the registration runs (rigid,affine this time), then the wavelet fusion refuses its parameter
        with self.assertRaises(InputError):
            pipeline.run(self.fixed, self.moving, self.out, methods="average,wavelet", seed=2,
                         stages="rigid,affine", method_params={"wavelet": {"wavelet": "nosuch"}})
        self.assertEqual(_snapshot(self.out), before)  # no new transform next to the old fused images

    def test_the_cli_failing_half_way_leaves_the_previous_results_untouched(self) -> None:
        self.assertEqual(_cli(["run", self.fixed, self.moving, "--output-dir", self.out,
                                   "--methods", "average,wavelet", "--seed", "1"]), 0)
        before = _snapshot(self.out)
        code = _cli(["run", self.fixed, self.moving, "--output-dir", self.out, "--methods", "average,wavelet",
                         "--wavelet", "nosuch", "--seed", "2", "--stages", "rigid,affine"])
        self.assertEqual(code, 2)
        self.assertEqual(_snapshot(self.out), before)

    def test_a_cancelled_run_leaves_the_previous_results_untouched(self) -> None:
        from MultimodalFusionLib.errors import OperationCancelled

        pipeline.run(self.fixed, self.moving, self.out, methods="average", seed=1)
        before = _snapshot(self.out)
        with self.assertRaises(OperationCancelled):
            pipeline.run(self.fixed, self.moving, self.out, methods="average", seed=2, stages="rigid,affine",
                         progress=lambda fraction, message: fraction < 0.7)  # stops in the fusion
        self.assertEqual(_snapshot(self.out), before)

    def test_a_new_run_leaves_no_file_of_the_previous_one(self) -> None:
        pipeline.run(self.fixed, self.moving, self.out, methods="average,laplacian", seed=1,
                     stages="rigid,bspline")
        self.assertTrue(os.path.isfile(os.path.join(self.out, "transform.h5")))
        out = pipeline.run(self.fixed, self.moving, self.out, methods="average", register=False)
        self.assertEqual(sorted(os.listdir(self.out)),
                         ["fused_average.nii.gz", "metrics.json", "metrics_chart.png", "montage_average.png",
                          "moving_resampled.nii.gz", "report.html", "weights_average.nii.gz"])
        for path in list(out["files"].values()) + list(out["report"].values()):
            self.assertTrue(os.path.isfile(path), path)  # the returned paths are the final ones
            self.assertEqual(os.path.dirname(path), self.out)
        with open(os.path.join(self.out, "metrics.json"), encoding="utf-8") as fh:
            self.assertIsNone(json.load(fh)["registration"])
        pipeline.run(self.fixed, self.moving, self.out, methods="average", seed=1)  # rigid: .tfm, not .h5
        self.assertIn("transform.tfm", os.listdir(self.out))
        self.assertNotIn("transform.h5", os.listdir(self.out))

    def test_other_files_in_the_folder_are_kept(self) -> None:
        os.makedirs(self.out)
        mine = {"notes.txt": b"mine", "fused_by_hand.nii.gz": b"x", "checkerboard.png": b"y"}
        for name, payload in mine.items():
            with open(os.path.join(self.out, name), "wb") as fh:
                fh.write(payload)
        # an input inside the folder, named as an output of a method this run does not use
        old = os.path.join(self.out, "fused_wavelet.nii.gz")
        io.write_image(io.read_image(self.moving), old)
        pipeline.run(self.fixed, old, self.out, methods="average", register=False)
        names = os.listdir(self.out)
        for name in list(mine) + ["fused_wavelet.nii.gz", "fused_average.nii.gz"]:
            self.assertIn(name, names)
        self.assertFalse([n for n in names if n.startswith(".")], names)  # no staging left behind


class RegisterRerunTest(unittest.TestCase):
    def test_a_linear_result_replaces_a_deformable_one(self) -> None:
        fixed, moving = _blob_pair()
        with tempfile.TemporaryDirectory() as tmp:
            f, m, out = os.path.join(tmp, "f.nii.gz"), os.path.join(tmp, "m.nii.gz"), os.path.join(tmp, "out")
            io.write_image(fixed, f)
            io.write_image(moving, m)
            self.assertEqual(_cli(["register", f, m, "--output-dir", out, "--stages", "rigid,bspline",
                                       "--seed", "1", "--json"]), 0)
            self.assertIn("transform.h5", os.listdir(out))
            self.assertEqual(_cli(["register", f, m, "--output-dir", out, "--seed", "1", "--json"]), 0)
            self.assertEqual(sorted(os.listdir(out)), ["checkerboard.png", "metrics.json",
                                                       "moving_resampled.nii.gz", "transform.tfm"])


if __name__ == "__main__":
    unittest.main()
