"""End-to-end workflows across components: what a run writes is what it fused and scored."""

from __future__ import annotations

import contextlib
import io as _io
import json
import os
import tempfile
import unittest

import numpy as np
import SimpleITK as sitk

from MultimodalFusionLib import cli, io, pipeline


def _disc_slices() -> tuple[sitk.Image, sitk.Image]:
    """An 8-bit anatomical slice and an 8-bit functional slice whose brightest value is 190, not 255."""
    yy, xx = np.mgrid[:64, :64]
    a = ((np.hypot(yy - 32, xx - 32) < 25) * 120 + (np.hypot(yy - 28, xx - 36) < 6) * 80).astype(np.uint8)
    b = ((np.hypot(yy - 30, xx - 34) < 22) * 60 + (np.hypot(yy - 26, xx - 38) < 6) * 130).astype(np.uint8)
    return sitk.GetImageFromArray(a), sitk.GetImageFromArray(b)


class EightBitRunTest(unittest.TestCase):
    """`mmfusion run` on 8-bit slices fuses and scores the 8-bit moving image it writes, not a stretched
    float copy: `mmfusion evaluate` and `mmfusion fuse` on the written files give the run's numbers."""

    def test_evaluate_and_fuse_on_the_written_files_match_the_run(self) -> None:
        a, b = _disc_slices()
        with tempfile.TemporaryDirectory() as tmp:
            pa, pb, out = os.path.join(tmp, "a.png"), os.path.join(tmp, "b.png"), os.path.join(tmp, "out")
            io.write_image(a, pa)
            io.write_image(b, pb)
            # a sub-pixel shift: linear resampling makes fractional values and lowers the maximum
            moved = sitk.Resample(b, b, sitk.TranslationTransform(2, (0.4, -0.3)), sitk.sitkLinear, 0.0,
                                  sitk.sitkUInt8)
            io.write_image(moved, pb)
            result = pipeline.run(pa, pb, out, methods=("average", "wavelet"), seed=1)
            resampled = io.read_image(os.path.join(out, "moving_resampled.png"))
            self.assertEqual(resampled.GetPixelID(), sitk.sitkUInt8)
            recorded = json.load(open(os.path.join(out, "metrics.json")))["metrics"]
            for method in ("average", "wavelet"):
                fused = os.path.join(out, f"fused_{method}.png")
                stdout = _io.StringIO()
                with contextlib.redirect_stdout(stdout):
                    self.assertEqual(cli.main(["evaluate", "--fused", fused, pa,
                                               os.path.join(out, "moving_resampled.png"), "--json"]), 0)
                measured = json.loads(stdout.getvalue())
                for key in ("MI_B", "SCD", "VIF_B", "Qabf", "PSNR_B"):
                    self.assertAlmostEqual(measured[key], recorded[method][key], places=6, msg=f"{method} {key}")
                # fusing the written files again gives the run's fused image
                again = os.path.join(tmp, f"again_{method}.png")
                with contextlib.redirect_stdout(_io.StringIO()):
                    self.assertEqual(cli.main(["fuse", pa, os.path.join(out, "moving_resampled.png"),
                                               "--method", method, "-o", again]), 0)
                np.testing.assert_array_equal(sitk.GetArrayFromImage(io.read_image(again)),
                                              sitk.GetArrayFromImage(io.read_image(fused)))
            self.assertEqual(len(result["fusions"]), 2)


try:
    import slicer  # noqa: F401  (the slicer-core wheel, or Slicer itself)

    HAVE_MRML = hasattr(slicer, "vtkMRMLScene")
except ImportError:  # pragma: no cover - slicer-core is a test dependency
    HAVE_MRML = False


@unittest.skipUnless(HAVE_MRML, "needs Slicer's MRML libraries (pip install slicer-core)")
class SceneSaveKeepsFilesTest(unittest.TestCase):
    """Saving a .mrml scene into the folder its input came from replaces neither that input nor an
    unrelated file that happens to have a node's name; a second save adds no copies."""

    def test_inputs_and_foreign_files_survive_a_scene_save(self) -> None:
        from MultimodalFusionLib import mrml

        ct = sitk.GetImageFromArray(np.arange(6 * 7 * 8, dtype=np.int16).reshape(6, 7, 8) - 100)
        ct.SetSpacing((0.7, 0.7, 3.0))
        with tempfile.TemporaryDirectory() as tmp:
            io.write_image(ct, os.path.join(tmp, "CT.nrrd"), compress=False)
            io.write_image(sitk.Image(4, 4, 4, sitk.sitkFloat32) + 42.0, os.path.join(tmp, "PET_registered.nrrd"))
            before = {n: open(os.path.join(tmp, n), "rb").read() for n in os.listdir(tmp)}
            scene = mrml.new_scene()
            node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
            storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
            storage.SetFileName(os.path.join(tmp, "CT.nrrd"))
            node.SetAndObserveStorageNodeID(storage.GetID())
            self.assertTrue(storage.ReadData(node))
            pet = sitk.GetImageFromArray(np.full((6, 7, 8), 5000.0, dtype=np.float32))
            pet.CopyInformation(ct)
            mrml.volume_node_from_image(pet, scene, name="PET registered")
            path = mrml.save_scene(os.path.join(tmp, "fusion.mrml"), scene)
            for name, payload in before.items():
                self.assertEqual(open(os.path.join(tmp, name), "rb").read(), payload, name)
            listing = sorted(os.listdir(tmp))
            mrml.save_scene(path, scene)  # again: nothing new, nothing replaced
            self.assertEqual(sorted(os.listdir(tmp)), listing)
            reloaded = mrml.load_scene(path)
            values = {reloaded.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode").GetName():
                      sitk.GetArrayFromImage(mrml.image_from_volume_node(
                          reloaded.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")))
                      for i in range(reloaded.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))}
            np.testing.assert_array_equal(values["CT"], sitk.GetArrayFromImage(ct))
            np.testing.assert_array_equal(values["PET registered"], sitk.GetArrayFromImage(pet))


if __name__ == "__main__":
    unittest.main()
