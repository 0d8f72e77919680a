"""The Slicer module's Logic (MultimodalFusionLib.slicer_logic.FusionLogic, which the module's
MultimodalFusionLogic inherits unchanged) on a real vtkMRMLScene from Slicer's libraries.

The end-to-end scenario is the one the module's self-test runs in Slicer.
"""

from __future__ import annotations

import os
import tempfile
import unittest
from typing import Any

import numpy as np
import SimpleITK as sitk

try:
    import slicer

    HAVE_MRML = hasattr(slicer, "vtkMRMLScene")
except ImportError:  # pragma: no cover - slicer-core is a test dependency
    HAVE_MRML = False

from memory_limit import CAN_LIMIT, address_space_left

from MultimodalFusionLib import InputError, OperationCancelled, metrics, scenarios, slicer_dependencies

if HAVE_MRML:
    from MultimodalFusionLib import mrml
    from MultimodalFusionLib.slicer_logic import FusionLogic

_PAIR: tuple | None = None


def _pair() -> tuple:
    global _PAIR
    if _PAIR is None:
        _PAIR = scenarios.phantom_pair()
    return _PAIR


@unittest.skipUnless(HAVE_MRML, "needs Slicer's MRML libraries (pip install slicer-core)")
class LogicScenarioTest(unittest.TestCase):
    def test_register_fuse_show_end_to_end(self) -> None:
        scene = mrml.new_scene()
        result = scenarios.check_logic_register_fuse_show(FusionLogic(scene), scene)
        self.assertLess(result["mean_error_mm"], 2.0)
        self.assertIn("fusion.Qabf", result["table"])


@unittest.skipUnless(HAVE_MRML, "needs Slicer's MRML libraries (pip install slicer-core)")
class LogicTest(unittest.TestCase):
    def setUp(self) -> None:
        self.scene = mrml.new_scene()
        self.logic = FusionLogic(self.scene)
        self.fixed, self.moving, self.truth = _pair()
        self.mr = mrml.volume_node_from_image(self.fixed, self.scene, name="MR")
        self.pet = mrml.volume_node_from_image(self.moving, self.scene, name="PET")

    def _register(self, **kwargs):
        return self.logic.registerVolumes(self.mr, self.pet, stages=["rigid"], seed=3, **kwargs)

    def _shift(self, name: str, axis: int, mm: float):
        """A linear transform node that moves by ``mm`` along the RAS ``axis`` (0: R, 1: A, 2: S)."""
        import vtk

        node = self.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
        matrix = vtk.vtkMatrix4x4()
        matrix.SetElement(axis, 3, mm)
        node.SetMatrixTransformToParent(matrix)
        return node

    def test_a_registration_that_ends_barely_overlapping_is_scored_n_a_not_refused(self) -> None:
        # one fixed voxel maps inside the moving volume at the start and at the end: alignment_metrics' InputError
        # had come after the transform node was made, leaving it without the registered volume; now its MI, NMI
        # and NCC are NaN (n/a in the metrics table) with a warning, and every output is made
        import dataclasses

        import vtk

        from MultimodalFusionLib.slicer_logic import RegistrationOutputs

        data = np.random.default_rng(0).random((16, 16, 16)).astype(np.float32)
        fixed, moving = sitk.GetImageFromArray(data), sitk.GetImageFromArray(data)
        fixed.SetSpacing((2.0, 2.0, 2.0))
        moving.SetSpacing((2.0, 2.0, 2.0))
        fixed_node = mrml.volume_node_from_image(fixed, self.scene, name="F")
        moving_node = mrml.volume_node_from_image(moving, self.scene, name="M")
        corner = self.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "corner")
        matrix = vtk.vtkMatrix4x4()
        for axis, mm in enumerate((-30.0, -30.0, 30.0)):  # LPS (30, 30, 30): fixed voxel 0 onto moving voxel 15
            matrix.SetElement(axis, 3, mm)
        corner.SetMatrixTransformToParent(matrix)
        quick = {"initializer": "none", "stages": [{"name": "rigid", "iterations": 1, "shrink_factors": [1],
                                                    "smoothing_sigmas": [0.0], "metric": "correlation"}]}
        out = self.logic.registerVolumes(fixed_node, moving_node, parameters=quick, initialTransformNode=corner, seed=1)
        self.assertIsNotNone(out.resampledVolumeNode)
        self.assertEqual(out.metrics["voxels"], 1.0)
        for key in ("MI", "NMI", "NCC"):
            self.assertTrue(np.isnan(out.metrics[key]), out.metrics)
        said = [w for w in out.result.warnings if "covers 1 of the fixed volume's voxels" in w]
        self.assertEqual(len(said), 1, out.result.warnings)
        self.assertIn("(MI, NMI, NCC) is n/a", said[0])
        self.assertIn(said[0], out.metrics.values())  # in the metrics table's warning rows too
        table = mrml.metrics_table_node({"registration": out.metrics}, self.scene).GetTable()
        rows = {table.GetValue(r, 0).ToString(): table.GetValue(r, 2).ToString() for r in range(table.GetNumberOfRows())}
        self.assertEqual(rows["registration.NCC"], "n/a")
        # the status line's metric: one with no valid sample point (the sitk backend's inf) is n/a, not "inf"
        self.assertEqual(out.metricText(), f"metric {out.result.metric_before:.4g} -> {out.result.metric_after:.4g}")
        none = RegistrationOutputs(out.transformNode, out.resampledVolumeNode,
                                   dataclasses.replace(out.result, metric_after=float("inf")), out.metrics)
        self.assertEqual(none.metricText(), f"metric {out.result.metric_before:.4g} -> n/a")

    def test_an_8bit_moving_volume_stays_8bit_as_the_cli_writes_it(self) -> None:
        # fusing the registered volume then gives `mmfusion run`'s numbers (not a stretched float copy)
        arr = sitk.GetArrayFromImage(self.moving).astype(np.float64)
        pet8 = sitk.GetImageFromArray(np.round(200.0 * (arr - arr.min()) / np.ptp(arr)).astype(np.uint8))
        pet8.CopyInformation(self.moving)
        node = mrml.volume_node_from_image(pet8, self.scene, name="PET 8-bit")
        out = self.logic.registerVolumes(self.mr, node, stages=["rigid"], seed=3)
        registered = mrml.image_from_volume_node(out.resampledVolumeNode)
        self.assertEqual(registered.GetPixelID(), sitk.sitkUInt8)
        from MultimodalFusionLib.preprocess import resample

        expected = np.round(sitk.GetArrayFromImage(resample(pet8, self.fixed, out.result.transform)))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(registered), np.clip(expected, 0, 255))

    def test_registered_volume_equals_hardened_moving_volume(self) -> None:
        out = self._register(applyTransform=True)
        self.assertIs(self.pet.GetParentTransformNode(), out.transformNode)
        resampled = sitk.GetArrayFromImage(mrml.image_from_volume_node(out.resampledVolumeNode))
        # What Slicer shows for the moving volume under the transform is the engine's output...
        shown = sitk.GetArrayFromImage(mrml.reslice_volume_node(self.pet, self.mr))
        both = (shown != 0) & (resampled != 0)
        self.assertLess(np.abs(shown - resampled)[both].max() / np.abs(resampled).max(), 1e-3)
        # ...and hardening it, then resampling without transform, reproduces it exactly.
        self.pet.HardenTransform()
        from MultimodalFusionLib.preprocess import resample

        again = sitk.GetArrayFromImage(resample(mrml.image_from_volume_node(self.pet), self.fixed))
        np.testing.assert_allclose(again, resampled, rtol=0, atol=1e-5 * np.abs(resampled).max())

    def test_nodes_of_another_scene_are_refused_before_any_work(self) -> None:
        # node IDs are per scene: the PET of another scene, put under the result (applyTransform), had been put under
        # that scene's node of the result's ID (here an unrelated transform), and the outputs went to the MR's scene
        other = mrml.new_scene()
        unrelated = other.AddNewNodeByClass("vtkMRMLLinearTransformNode", "unrelated")
        pet = mrml.volume_node_from_image(self.moving, other, name="PET elsewhere")
        self.assertEqual(unrelated.GetID(), "vtkMRMLLinearTransformNode1")  # the ID the result gets in self.scene
        transforms = self.scene.GetNumberOfNodesByClass("vtkMRMLTransformNode")
        with self.assertRaisesRegex(InputError, "moving volume 'PET elsewhere' is in another MRML scene than the "
                                                "fixed volume 'MR'.*one scene"):
            # as in Slicer, a Logic without a scene of its own: the first volume's scene
            FusionLogic().registerVolumes(self.mr, pet, stages=["rigid"], seed=3, applyTransform=True)
        self.assertIsNone(pet.GetParentTransformNode())
        self.assertEqual(self.scene.GetNumberOfNodesByClass("vtkMRMLTransformNode"), transforms)
        # an output of another scene: refused in run before the registration (no transform node added)
        fused = mrml.volume_node_from_image(self.fixed, other, name="fused elsewhere")
        with self.assertRaisesRegex(InputError, "fused volume 'fused elsewhere' is in another MRML scene"):
            self.logic.run(self.mr, self.pet, stages=["rigid"], seed=3, fusedVolumeNode=fused)
        self.assertEqual(self.scene.GetNumberOfNodesByClass("vtkMRMLTransformNode"), transforms)
        with self.assertRaisesRegex(InputError, "functional volume 'PET elsewhere' is in another MRML scene"):
            self.logic.fuseVolumes(self.mr, pet)
        with self.assertRaisesRegex(InputError, "foreground volume 'PET elsewhere' is in another MRML scene"):
            self.logic.showFusion(self.mr, pet)
        # evaluateRegistration too: the PET of another scene is not shown under this scene's transform node, and a
        # point list of another scene is not shown over the volumes (they had been scored as if they were)
        moved = self.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
        with self.assertRaisesRegex(InputError, "moving volume 'PET elsewhere' is in another MRML scene"):
            self.logic.evaluateRegistration(self.mr, pet, moved)
        points = [other.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "F elsewhere"),
                  self.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "M")]
        for node in points:
            node.AddControlPoint(0.0, 0.0, 0.0)
        with self.assertRaisesRegex(InputError, "fixed points 'F elsewhere' is in another MRML scene"):
            FusionLogic().evaluateRegistration(self.mr, self.pet, moved, fixedPointsNode=points[0],
                                               movingPointsNode=points[1])
        import slicer

        unadded = slicer.vtkMRMLLinearTransformNode()  # made, never added to a scene
        unadded.SetName("unadded")
        with self.assertRaisesRegex(InputError, "transform 'unadded' is in no scene"):
            self.logic.evaluateRegistration(self.mr, self.pet, unadded)
        # a Logic made for one scene refuses two volumes of another (its outputs would be in its own scene)
        with self.assertRaisesRegex(InputError, "fixed volume 'MR elsewhere' is in another MRML scene than this "
                                                "Logic's scene"):
            self.logic.registerVolumes(mrml.volume_node_from_image(self.fixed, other, name="MR elsewhere"), pet,
                                       stages=["rigid"], seed=3)

    def test_same_seed_same_transform_and_output_nodes_are_reused(self) -> None:
        first = self._register()
        transform_node, volume_node = first.transformNode, first.resampledVolumeNode
        second = self._register(outputTransformNode=transform_node, outputVolumeNode=volume_node)
        self.assertIs(second.transformNode, transform_node)
        self.assertIs(second.resampledVolumeNode, volume_node)
        # same seed, same result (to rounding: ITK's multi-threaded metric sums in varying order)
        np.testing.assert_allclose(mrml.linear_transform_matrix(first.result.transform),
                                   mrml.linear_transform_matrix(second.result.transform), atol=1e-6)

    def test_initializer_reaches_the_engine(self) -> None:
        out = self._register(initializer="search")
        self.assertEqual(out.result.initializer["name"], "search")
        self.assertEqual(out.result.parameters["initializer"], "search")
        with self.assertRaises(InputError):
            self._register(initializer="rotate")

    def test_an_initializer_with_an_initial_transform_node_is_refused(self) -> None:
        # the initial transform replaces the initializer: registerVolumes(initializer="moments",
        # initialTransformNode=T) had started from T without a word, where the CLI and register() refuse it
        initial = mrml.transform_node_from_sitk(self.truth, self.scene, name="initial")
        nodes = self.scene.GetNumberOfNodes()
        for name in ("moments", "geometry", "none", "search"):
            with self.subTest(initializer=name):
                with self.assertRaisesRegex(InputError, f"Both the '{name}' initializer and the initial transform "
                                                        "'initial' were given") as cm:
                    self._register(initialTransformNode=initial, initializer=name)
                self.assertIn("initialTransformNode=None", cm.exception.fix)
                self.assertEqual(self.scene.GetNumberOfNodes(), nodes)  # refused before any work
        # a preset's initializer is replaced by the initial transform, as in the CLI and register()
        out = self._register(initialTransformNode=initial, preset="mr-pet-brain")
        self.assertIsNone(out.result.initializer)

    def test_masks_from_label_map_and_segmentation(self) -> None:
        head = sitk.Cast(self.fixed > 50, sitk.sitkUInt8)
        fixed_mask = mrml.volume_node_from_image(head, self.scene, name="head", label=True)
        moving_mask = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "PET head")
        label = mrml.volume_node_from_image(sitk.Cast(self.moving > 0.1, sitk.sitkUInt8), self.scene, label=True)
        self.assertTrue(slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label, moving_mask))
        out = self._register(fixedMaskNode=fixed_mask, movingMaskNode=moving_mask)
        self.assertLess(out.result.metric_after, out.result.metric_before)

    def test_a_mask_moved_with_its_volume_stays_on_it(self) -> None:
        """The moving volume and its mask both under a (far) transform: the volume is registered on its own
        grid, so the mask must be taken there too, not where the transform shows it (empty there)."""
        far = self._shift("far", 1, 500.0)
        label = mrml.volume_node_from_image(sitk.Cast(self.moving > 0.1, sitk.sitkUInt8), self.scene,
                                            name="PET mask", label=True)
        segmentation = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "PET segmentation")
        self.assertTrue(slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label, segmentation))
        for node in (self.pet, label, segmentation):
            mrml.set_parent_transform(node, far)
        for mask in (label, segmentation):
            with self.subTest(mask.GetName()):  # moments: the start is not where the volume is shown (far away)
                out = self._register(movingMaskNode=mask, initializer="moments")
                self.assertLess(out.result.metric_after, out.result.metric_before)
        with self.assertRaisesRegex(InputError, "'PET' is shown through transform 'far' where it does not overlap"):
            self._register(movingMaskNode=label)

    def test_deformable_result_is_a_bspline_transform_node(self) -> None:
        quick = {"initializer": "none", "stages": [
            {"name": "bspline", "iterations": 3, "shrink_factors": [2], "smoothing_sigmas": [1.0], "mesh_size": 3}]}
        initial = mrml.transform_node_from_sitk(self.truth, self.scene, name="initial")
        out = self.logic.registerVolumes(self.mr, self.pet, parameters=quick, initialTransformNode=initial, seed=1)
        self.assertTrue(out.transformNode.IsA("vtkMRMLBSplineTransformNode"), out.transformNode.GetClassName())
        flip = np.array(mrml.LPS_TO_RAS)
        for point in ([0.0, 0.0, 0.0], [20.0, -30.0, 10.0], [-35.0, 25.0, -15.0]):
            engine = np.array(out.result.transform.TransformPoint(point))
            node = np.array(out.transformNode.GetTransformFromParent().TransformPoint((np.array(point) * flip).tolist()))
            np.testing.assert_allclose(node * flip, engine, atol=1e-4)

    def _field_node(self, name: str, size: list[int]):
        """A grid transform node holding the truth's displacement on the fixed grid's first ``size`` voxels."""
        f = self.fixed
        field = sitk.TransformToDisplacementField(self.truth, sitk.sitkVectorFloat64, size, f.GetOrigin(),
                                                  f.GetSpacing(), f.GetDirection())
        return mrml.transform_node_from_sitk(sitk.DisplacementFieldTransform(field), self.scene, name=name)

    def _as_shown(self, node, name: str):
        """A grid transform node on the fixed grid holding, at each of its voxels, the displacement Slicer shows
        there through ``node`` (vtk's own transform from world): it covers the fixed volume, so ITK applies it there
        as Slicer shows ``node``."""
        import vtk

        flip = np.array(mrml.LPS_TO_RAS)
        index = np.stack(np.indices(self.fixed.GetSize()[::-1])[::-1], axis=-1).reshape(-1, 3).astype(float)
        to_physical = np.array(self.fixed.GetDirection()).reshape(3, 3) * np.array(self.fixed.GetSpacing())
        points = np.array(self.fixed.GetOrigin()) + index @ to_physical.T
        source = vtk.vtkPoints()
        for p in points * flip:
            source.InsertNextPoint(*p.tolist())
        moved = vtk.vtkPoints()
        world = vtk.vtkGeneralTransform()
        node.GetTransformFromWorld(world)
        world.TransformPoints(source, moved)
        shown = np.array([moved.GetPoint(i) for i in range(moved.GetNumberOfPoints())]) * flip
        field = sitk.GetImageFromArray((shown - points).reshape(self.fixed.GetSize()[::-1] + (3,)), isVector=True)
        field.CopyInformation(self.fixed)
        return mrml.transform_node_from_sitk(sitk.DisplacementFieldTransform(field), self.scene, name=name)

    def test_an_initial_field_that_does_not_cover_the_fixed_volume_starts_where_slicer_shows_it(self) -> None:
        """A grid transform node covering half the fixed volume: Slicer shows the other half moved by the field's edge
        displacement, ITK's field moves it by nothing. registerVolumes (as an initial transform and as the moving
        volume's parent) starts where Slicer shows it: the field is extended with its edge values over the fixed
        volume, so it covers it and a3a60d2's note that 'it moves none of them' (true of the field ITK read, false of
        the start) no longer comes, where it had come once; the start's metric is that of the field Slicer shows,
        sampled on the fixed grid (the old code started from no move in half the volume: another metric)."""
        size = list(self.fixed.GetSize())
        half = self._field_node("half field", [size[0] // 2] + size[1:])
        shown = self._as_shown(half, "half field as shown")
        expected = self._register(initialTransformNode=shown).result.metric_before
        for how in ("initialTransformNode", "parent"):
            with self.subTest(how):
                if how == "parent":  # the moving volume shown through it starts from it
                    mrml.set_parent_transform(self.pet, half)
                    out = self._register()
                    mrml.set_parent_transform(self.pet, None)
                else:
                    out = self._register(initialTransformNode=half)
                self.assertAlmostEqual(out.result.metric_before, expected, places=4)
                self.assertNotIn("does not cover", " ".join(out.result.warnings))

    def test_a_functional_volume_under_a_small_grid_transform_is_fused_as_slicer_shows_it(self) -> None:
        """fuseVolumes resamples the functional volume through its grid transform as Slicer shows it: where the grid
        (here half the anatomical volume) does not reach, moved by the displacement of its nearest edge, as
        vtkOrientedGridTransform does. It had been resampled with ITK's zero displacement there (a fused image up to
        the phantom's full range off in that half)."""
        size = list(self.fixed.GetSize())
        half = self._field_node("half field", [size[0] // 2] + size[1:])
        shown = self._as_shown(half, "half field as shown")
        fused = [mrml.image_from_volume_node(self.logic.fuseVolumes(self.mr, self.pet, method="average",
                                                                    transformNode=node).fusedVolumeNode)
                 for node in (half, shown)]
        np.testing.assert_allclose(sitk.GetArrayViewFromImage(fused[0]), sitk.GetArrayViewFromImage(fused[1]),
                                   atol=1e-3 * float(np.ptp(sitk.GetArrayViewFromImage(fused[1]))))

    def test_an_initial_transform_node_is_not_the_output_too(self) -> None:
        # the result (which includes the start) had been written into the initial transform node: an input
        # overwritten, and the same call again started from the first call's result
        initial = mrml.transform_node_from_sitk(self.truth, self.scene, name="initial")
        before = mrml.linear_transform_matrix(mrml.sitk_transform_from_node(initial))
        nodes = self.scene.GetNumberOfNodes()
        with self.assertRaisesRegex(InputError, "'initial' is selected as both the initial transform and the "
                                                "output transform") as cm:
            self._register(initialTransformNode=initial, outputTransformNode=initial)
        self.assertIn("leave it empty to create a new one", cm.exception.fix)
        np.testing.assert_array_equal(mrml.linear_transform_matrix(mrml.sitk_transform_from_node(initial)), before)
        self.assertEqual(self.scene.GetNumberOfNodes(), nodes)  # refused before any work
        # another output node: the result includes the start, and the initial node is left as it was
        out = self._register(initialTransformNode=initial)
        self.assertIsNot(out.transformNode, initial)
        np.testing.assert_array_equal(mrml.linear_transform_matrix(mrml.sitk_transform_from_node(initial)), before)
        # the moving volume's own parent chosen as the output (no initialTransformNode): still replaced by the
        # result that includes it, what repeated clicks in the panel rely on
        mrml.set_parent_transform(self.pet, initial)
        again = self._register(outputTransformNode=initial)
        self.assertIs(again.transformNode, initial)
        self.assertIs(self.pet.GetParentTransformNode(), initial)

    def test_fusion_outputs_colour_overlay_weights_and_table(self) -> None:
        reg = self._register()
        overlay = self.logic.fuseVolumes(self.mr, reg.resampledVolumeNode, method="overlay", opacity=0.5)
        self.assertTrue(overlay.fusedVolumeNode.IsA("vtkMRMLVectorVolumeNode"))
        rgb = mrml.image_from_volume_node(overlay.fusedVolumeNode)
        self.assertEqual(rgb.GetNumberOfComponentsPerPixel(), 3)
        self.assertEqual(rgb.GetSize(), self.fixed.GetSize())
        average = self.logic.fuseVolumes(self.mr, reg.resampledVolumeNode, method="average", weight=0.7)
        self.assertIsNotNone(average.weightsVolumeNode)
        weights = sitk.GetArrayFromImage(mrml.image_from_volume_node(average.weightsVolumeNode))
        self.assertTrue(np.all((weights >= 0) & (weights <= 1)))
        table = mrml.table_to_dict(average.metricsTableNode)
        self.assertAlmostEqual(float(table["fusion.EN"]), average.metrics["EN"], places=9)

    def test_a_fusions_warnings_are_rows_of_its_metrics_table(self) -> None:
        """fuseVolumes writes each of the fusion's warnings as a warning_N row of its metrics table (Text column), as
        registerVolumes writes a registration's: deep fusion's anisotropy warning (a 3D network on 1 x 1 x 5 mm
        voxels; a small network passed in) every fusion, none for a fusion without one. A reused table keeps no
        warning row of an earlier fusion."""
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is a dependency of deep fusion only
            self.skipTest("torch is not installed")
        from MultimodalFusionLib.fusion.deep import FusionNetConfig, build_network

        torch.manual_seed(0)
        net = build_network(FusionNetConfig(spatial_dims=3, features=4, channels=(8, 16, 16), strides=(2, 2)))
        rng = np.random.default_rng(0)
        nodes = []
        for name in ("MR thick", "PET thick"):
            image = sitk.GetImageFromArray(rng.random((8, 24, 20)).astype(np.float32))
            image.SetSpacing((1.0, 1.0, 5.0))
            nodes.append(mrml.volume_node_from_image(image, self.scene, name=name))
        tables = []
        for _ in range(2):  # every fusion says it
            out = self.logic.fuseVolumes(*nodes, method="deep", weights=net, device="cpu")
            self.assertEqual(len(out.result.warnings), 1)
            table = mrml.table_to_dict(out.metricsTableNode)
            self.assertEqual(table["fusion.warning_1"], out.result.warnings[0])
            self.assertIn("1 x 1 x 5 mm", str(table["fusion.warning_1"]))
            self.assertNotIn("fusion.warning_2", table)
            self.assertAlmostEqual(float(table["fusion.EN"]), out.metrics["EN"], places=9)  # numbers as before
            tables.append(out.metricsTableNode)
        self.assertIsNot(tables[0], tables[1])  # a table of its own each
        plain = self.logic.fuseVolumes(*nodes, method="average", metricsTableNode=tables[0])
        self.assertEqual([k for k in mrml.table_to_dict(plain.metricsTableNode) if "warning" in k], [])

    def test_weight_maps_are_shown_on_the_fixed_window_0_to_1(self) -> None:
        """A weight map's grey level is its weight (black: functional alone, white: anatomical alone), for every
        method and a reused node alike. The automatic window stretched each map over its own range: the wavelet
        map of 0.24..0.82 was shown as 0.27..0.77 (a weight of 0.27 black), and average's constant 0.7 had a
        window of -1e-5 (minimum above maximum)."""
        reg = self._register()
        weights = None
        for method, params in (("average", {"weight": 0.7}), ("wavelet", {}), ("max", {}), ("wavelet", {})):
            with self.subTest(method=method, reused=weights is not None):
                out = self.logic.fuseVolumes(self.mr, reg.resampledVolumeNode, method=method,
                                             weightsVolumeNode=weights, **params)
                weights = out.weightsVolumeNode
                display = weights.GetDisplayNode()
                self.assertFalse(display.GetAutoWindowLevel())
                self.assertEqual((display.GetWindowLevelMin(), display.GetWindowLevelMax()), (0.0, 1.0))
                self.assertEqual((display.GetWindow(), display.GetLevel()), (1.0, 0.5))
                self.assertFalse(display.GetApplyThreshold())
                self.assertEqual(display.GetColorNode().GetName(), "Grey")
        # the fused image itself keeps a window from its own voxels
        self.assertTrue(out.fusedVolumeNode.GetDisplayNode().GetAutoWindowLevel())

    def test_fuse_through_a_transform_node_equals_fusing_the_resampled_volume(self) -> None:
        reg = self._register()
        direct = self.logic.fuseVolumes(self.mr, self.pet, transformNode=reg.transformNode, method="max")
        via = self.logic.fuseVolumes(self.mr, reg.resampledVolumeNode, method="max")
        np.testing.assert_allclose(sitk.GetArrayFromImage(mrml.image_from_volume_node(direct.fusedVolumeNode)),
                                   sitk.GetArrayFromImage(mrml.image_from_volume_node(via.fusedVolumeNode)),
                                   atol=1e-4)

    def test_a_float_colour_volume_is_fused_through_a_rotation(self) -> None:
        # a vector volume of float RGB (3 components in 3D, as a displacement field has) through a turning
        # transform had been refused by resample as "a vector field or channels?", naming components=..., which
        # fuseVolumes does not take; fused per channel, as an 8-bit RGB volume and mmfusion run are
        rng = np.random.default_rng(0)
        rgb = sitk.GetImageFromArray((rng.random((12, 14, 16, 3)) * 200).astype(np.float32), isVector=True)
        node = mrml.volume_node_from_image(rgb, self.scene, name="float RGB")
        turn = mrml.transform_node_from_sitk(sitk.Euler3DTransform((8.0, 7.0, 6.0), 0.0, 0.0, 0.3), self.scene,
                                             name="turn")
        anatomy = mrml.volume_node_from_image(sitk.GetImageFromArray(rng.random((12, 14, 16)).astype(np.float32)),
                                              self.scene, name="anatomy")
        out = self.logic.fuseVolumes(anatomy, node, transformNode=turn, method="average")
        fused = mrml.image_from_volume_node(out.fusedVolumeNode)
        self.assertEqual(fused.GetNumberOfComponentsPerPixel(), 3)

    def test_functional_volume_under_its_registration_is_fused_as_shown(self) -> None:
        reg = self._register(applyTransform=True)  # PET now shown aligned through its parent transform
        shown = self.logic.fuseVolumes(self.mr, self.pet, method="max")
        explicit = self.logic.fuseVolumes(self.mr, self.pet, transformNode=reg.transformNode, method="max")
        np.testing.assert_array_equal(sitk.GetArrayFromImage(mrml.image_from_volume_node(shown.fusedVolumeNode)),
                                      sitk.GetArrayFromImage(mrml.image_from_volume_node(explicit.fusedVolumeNode)))
        other = mrml.transform_node_from_sitk(self.truth, self.scene, name="other")
        with self.assertRaisesRegex(InputError, "Give only one"):
            self.logic.fuseVolumes(self.mr, self.pet, transformNode=other)
        mrml.set_parent_transform(self.pet, None)
        mrml.set_parent_transform(self.mr, other)  # the anatomy shown elsewhere than its grid: refused
        with self.assertRaisesRegex(InputError, "anatomical volume 'MR' is under a transform"):
            self.logic.fuseVolumes(self.mr, self.pet)

    def test_bad_display_settings_of_run_fail_before_any_work(self) -> None:
        """run's colormap, opacity and displayThreshold are the slice views': a colour table 'Nope' and an opacity
        of 5 had been refused only once the registration and the fusion had run, their 8 nodes (transform,
        registered, fused and weight volumes with displays, table) left in the scene; a threshold of NaN or 5 had
        been set without a word (5: every voxel of the registered volume transparent)."""
        def made() -> int:
            return sum(self.scene.GetNumberOfNodesByClass(cls) for cls in
                       ("vtkMRMLTransformNode", "vtkMRMLVolumeNode", "vtkMRMLTableNode", "vtkMRMLDisplayNode"))

        before = made()
        for kwargs, message in (({"colormap": "Nope"}, "no colour table named 'Nope'"),
                                ({"opacity": 5}, "Foreground opacity 5 is outside 0..1"),
                                ({"opacity": float("nan")}, "Foreground opacity nan is outside 0..1"),
                                ({"displayThreshold": float("nan")}, "display threshold nan is not a fraction"),
                                ({"displayThreshold": 5}, "display threshold 5 is not a fraction")):
            with self.subTest(**kwargs), self.assertRaisesRegex(InputError, message):
                self.logic.run(self.mr, self.pet, stages=["rigid"], seed=3, **kwargs)
            self.assertEqual(made(), before)
        with self.assertRaisesRegex(InputError, "no colour table named 'Nope'"):
            self.logic.showFusion(self.mr, self.pet, colormap="Nope")
        # show=False leaves the slice views alone: their settings are not asked for
        self.logic.run(self.mr, self.pet, stages=["rigid"], seed=3, show=False, colormap="Nope", opacity=5)

    def test_a_volume_with_nan_voxels_is_named(self) -> None:
        """The engine's refusal had said 'The moving image has 1 NaN or infinite voxels', naming no node, where the
        Logic's other errors name it (registerVolumes, fuseVolumes, run, evaluateRegistration)."""
        values = sitk.GetArrayFromImage(self.moving)
        values[2, 3, 4] = np.nan
        values[1, 1, 1] = np.inf
        bad = sitk.GetImageFromArray(values)
        bad.CopyInformation(self.moving)
        node = mrml.volume_node_from_image(bad, self.scene, name="PET with NaN")
        before = self.scene.GetNumberOfNodes()
        for name, call, role in (
                ("registerVolumes", lambda: self.logic.registerVolumes(self.mr, node, stages=["rigid"], seed=3), "moving"),
                ("registerVolumes as fixed", lambda: self.logic.registerVolumes(node, self.mr, stages=["rigid"]), "fixed"),
                ("fuseVolumes", lambda: self.logic.fuseVolumes(self.mr, node), "functional"),
                ("run", lambda: self.logic.run(self.mr, node, stages=["rigid"], seed=3), "moving"),
                ("evaluateRegistration", lambda: self.logic.evaluateRegistration(self.mr, node), "moving")):
            with self.subTest(name):
                with self.assertRaises(InputError) as ctx:
                    call()
                self.assertEqual(ctx.exception.problem,
                                 f"The {role} volume 'PET with NaN' has 2 NaN or infinite voxels.")
                self.assertEqual(self.scene.GetNumberOfNodes(), before)

    def test_a_scene_saved_with_a_seed_out_of_range_loads_and_apply_names_the_seed_and_the_range(self) -> None:
        """The panel's parameter node holds its seed as text (parameterNodeWrapper writes str(value), reads
        int(text), validating only what is set): a scene saved by hand or by an older version with a seed past
        registration.MAX_SEED (or below 0) loads as it is, and Apply (registerVolumes, run) refuses the seed, naming
        it and the range, before any node is made."""
        from MultimodalFusionLib.registration import MAX_SEED

        for saved in (str(2**40), str(MAX_SEED + 1), "-1"):
            with self.subTest(seed=saved), tempfile.TemporaryDirectory() as folder:
                parameters = self.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "MultimodalFusion")
                parameters.SetParameter("seed", saved)
                loaded = mrml.load_scene(mrml.save_scene(os.path.join(folder, "scene.mrml"), self.scene))
                self.scene.RemoveNode(parameters)
                node = loaded.GetFirstNodeByName("MultimodalFusion")
                seed = int(node.GetParameter("seed"))  # parameterNodeWrapper's NumberSerializer.read
                logic = FusionLogic(loaded)
                fixed, moving = loaded.GetFirstNodeByName("MR"), loaded.GetFirstNodeByName("PET")
                before = loaded.GetNumberOfNodes()
                for call in (logic.registerVolumes, logic.run):
                    with self.assertRaises(InputError) as ctx:
                        call(fixed, moving, stages=["rigid"], seed=seed)
                    self.assertIn(f"The registration seed must be a whole number from 0 to {MAX_SEED} (2^31 - 2), "
                                  f"not {saved}", ctx.exception.problem)
                    self.assertIn("the panel's Random seed box", ctx.exception.fix)
                    self.assertEqual(loaded.GetNumberOfNodes(), before)

    def test_a_constant_volume_is_named(self) -> None:
        """The engine's refusal of a constant volume had said 'The moving image is constant (every voxel is 5)',
        naming no node, where the Logic's other errors name it (evaluateRegistration of the images alone,
        registerVolumes, run); it is refused before any node is made. With label maps it is scored, with a note."""
        blank = sitk.Image(self.moving) * 0 + 5
        node = mrml.volume_node_from_image(blank, self.scene, name="Blank PET")
        before = self.scene.GetNumberOfNodes()
        for name, call, role in (
                ("evaluateRegistration", lambda: self.logic.evaluateRegistration(self.mr, node), "moving"),
                ("evaluateRegistration as fixed", lambda: self.logic.evaluateRegistration(node, self.mr), "fixed"),
                ("registerVolumes", lambda: self.logic.registerVolumes(self.mr, node, stages=["rigid"], seed=3), "moving"),
                ("run", lambda: self.logic.run(self.mr, node, stages=["rigid"], seed=3), "moving")):
            with self.subTest(name):
                with self.assertRaises(InputError) as ctx:
                    call()
                self.assertEqual(ctx.exception.problem, f"The {role} volume 'Blank PET' is constant (every voxel is "
                                                        "5); it holds no structure to use.")
                self.assertEqual(self.scene.GetNumberOfNodes(), before)
        labels = sitk.Cast(self.fixed > float(np.median(sitk.GetArrayViewFromImage(self.fixed))), sitk.sitkUInt8)
        fixed_labels = mrml.volume_node_from_image(labels, self.scene, name="MR labels", label=True)
        moving_labels = mrml.volume_node_from_image(labels, self.scene, name="PET labels", label=True)
        out = self.logic.evaluateRegistration(self.mr, node, fixedLabelNode=fixed_labels, movingLabelNode=moving_labels)
        self.assertTrue(any("is constant" in note for note in out["notes"]))

    @unittest.skipUnless(CAN_LIMIT, "needs an address-space limit (Linux)")
    def test_an_adaptation_past_the_memory_is_refused_before_the_registration(self) -> None:
        """run with deep fusion's per-study adaptation (adapt_steps) whose step needs more memory than there is
        registered the volumes, added their nodes, and then ran out of memory in the adaptation (torch's "can't
        allocate memory"; the kernel's kill on a real machine): it is refused before the registration, the scene as
        it was, and fuseVolumes refuses it before the first step. The memory is made small for real: 512 MiB of
        address space left (ulimit -v) against the 1.3 GiB of a step on 4 slices of 512x512 (the 2D network on a
        volume of 8 of them)."""
        try:
            import torch  # noqa: F401
        except ImportError:  # pragma: no cover - torch is a dependency of deep fusion only
            self.skipTest("torch is not installed")
        from MultimodalFusionLib.fusion.deep import fuse_arrays

        small = np.linspace(0.0, 1.0, 256, dtype=np.float32).reshape(16, 16)
        fuse_arrays(small, small.T.copy(), adapt_steps=1, device="cpu")  # the network loaded, as by an earlier fusion
        ramp = np.linspace(0.0, 1.0, 512, dtype=np.float32)
        nodes = [mrml.volume_node_from_image(sitk.GetImageFromArray(np.repeat(image[None], 8, axis=0)), self.scene,
                                             name=name)
                 for name, image in (("MR", np.outer(ramp, ramp)), ("PET", np.outer(ramp[::-1], ramp)))]
        before = self.scene.GetNumberOfNodes()
        with address_space_left(512 << 20):
            with self.assertRaisesRegex(InputError, "Per-study adaptation \\(2 step\\(s\\): adapt_steps, CLI --adapt\\) "
                                                    "needs about .* 4 of its 512x512-pixel slices every step"):
                self.logic.run(*nodes, stages=["rigid"], fusionMethod="deep", adapt_steps=2, device="cpu")
            self.assertEqual(self.scene.GetNumberOfNodes(), before)  # no transform, no registered volume
            with self.assertRaisesRegex(InputError, "Fuse without adaptation \\(adapt_steps=0"):
                self.logic.fuseVolumes(*nodes, method="deep", adapt_steps=2, device="cpu")

    def test_an_adaptation_of_a_volume_under_8_voxels_is_refused_before_the_registration(self) -> None:
        """run with deep fusion's per-study adaptation on a volume the 3D network sees 6 voxels deep (under
        MIN_ADAPT_SIZE) registered the volumes and added their nodes before the fusion refused it: it is refused
        before the registration, the scene as it was."""
        try:
            import torch  # noqa: F401
        except ImportError:  # pragma: no cover - torch is a dependency of deep fusion only
            self.skipTest("torch is not installed")
        ramp = np.linspace(0.0, 1.0, 32, dtype=np.float32)
        nodes = [mrml.volume_node_from_image(sitk.GetImageFromArray(np.repeat(image[None], 6, axis=0)), self.scene,
                                             name=name)
                 for name, image in (("MR", np.outer(ramp, ramp)), ("PET", np.outer(ramp[::-1], ramp)))]
        before = self.scene.GetNumberOfNodes()
        with self.assertRaises(InputError) as ctx:
            self.logic.run(*nodes, stages=["rigid"], fusionMethod="deep", weights="3d", adapt_steps=2, device="cpu")
        self.assertEqual(self.scene.GetNumberOfNodes(), before)  # no transform, no registered volume
        self.assertEqual(ctx.exception.problem, "Per-study adaptation needs images of at least 8 voxels along each "
                                                "axis the network sees (got 32x32x6).")

    def test_output_nodes_of_the_wrong_kind_fail_before_any_work(self) -> None:
        table = self.scene.AddNewNodeByClass("vtkMRMLTableNode", "t")
        rgb = self.scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
        before = self.scene.GetNumberOfNodes()
        # a colour volume as the registered volume had been refused only once the registration had run and its
        # transform node had been added (the resampled volume is grey: it cannot be written into one)
        colour = "output volume 'rgb' is a colour \\(vector\\) volume; the registered volume is grey"
        for kwargs, message in (({"outputTransformNode": self.mr}, "not a transform node"),
                                ({"outputVolumeNode": table}, "not a volume node"),
                                ({"outputVolumeNode": rgb}, colour)):
            with self.subTest(message), self.assertRaisesRegex(InputError, message):
                self._register(**kwargs)
        with self.assertRaisesRegex(InputError, colour):
            self.logic.run(self.mr, self.pet, stages=["rigid"], outputVolumeNode=rgb)
        weights = mrml.volume_node_from_image(self.fixed, self.scene, name="W")
        with self.assertRaisesRegex(InputError, "both the fused volume and the weight map"):
            self.logic.fuseVolumes(self.mr, self.pet, outputVolumeNode=weights, weightsVolumeNode=weights)
        with self.assertRaisesRegex(InputError, "not a table node"):
            self.logic.run(self.mr, self.pet, stages=["rigid"], metricsTableNode=self.mr)
        # a bad fusion value fails before the registration (which would have added its transform node)
        with self.assertRaisesRegex(InputError, "Unknown discrete wavelet"):
            self.logic.run(self.mr, self.pet, stages=["rigid"], fusionMethod="wavelet", wavelet="nosuch")
        self.assertEqual(self.scene.GetNumberOfNodes(), before + 2)  # W and its display node only
        overlay = self.logic.fuseVolumes(self.mr, self.pet, method="overlay")
        with self.assertRaisesRegex(InputError, "colour \\(vector\\) volume but the image is grey"):
            self.logic.fuseVolumes(self.mr, self.pet, method="average", outputVolumeNode=overlay.fusedVolumeNode)
        # what the panel does: a new node when the kind changes, the same node while it does not; a grey
        # volume stored as RGB (R = G = B) is fused as grey, so its result reuses a grey node
        grey = self.logic.fuseVolumes(self.mr, self.pet, method="average", outputVolumeNode=overlay.fusedVolumeNode,
                                      newNodeOnKindChange=True)
        self.assertFalse(grey.fusedVolumeNode.IsA("vtkMRMLVectorVolumeNode"))
        grey_rgb = mrml.volume_node_from_image(sitk.Compose([sitk.Cast(sitk.RescaleIntensity(self.moving), sitk.sitkUInt8)] * 3),
                                               self.scene, name="PET as RGB")
        again = self.logic.fuseVolumes(self.mr, grey_rgb, method="max", outputVolumeNode=grey.fusedVolumeNode,
                                       newNodeOnKindChange=True)
        self.assertIs(again.fusedVolumeNode, grey.fusedVolumeNode)

    def test_a_label_map_is_never_an_output_volume(self) -> None:
        # a label map is a vtkMRMLScalarVolumeNode to VTK: the resampled PET (float) was written into it and
        # shown with label colours, every intensity another label
        labels = mrml.volume_node_from_image(sitk.Cast(self.fixed > 50, sitk.sitkUInt8), self.scene, name="head",
                                             label=True)
        before = self.scene.GetNumberOfNodes()
        calls = {"registerVolumes": lambda: self._register(outputVolumeNode=labels),
                 "fuseVolumes output": lambda: self.logic.fuseVolumes(self.mr, self.pet, outputVolumeNode=labels),
                 "fuseVolumes weights": lambda: self.logic.fuseVolumes(self.mr, self.pet, method="pca",
                                                                       weightsVolumeNode=labels),
                 "run fused": lambda: self.logic.run(self.mr, self.pet, stages=["rigid"], fusedVolumeNode=labels),
                 "run weights": lambda: self.logic.run(self.mr, self.pet, stages=["rigid"], fusionMethod="pca",
                                                       weightsVolumeNode=labels)}
        for name, call in calls.items():
            with self.subTest(name), self.assertRaisesRegex(InputError, "'head' is a label map.*leave it empty"):
                call()
        self.assertEqual(self.scene.GetNumberOfNodes(), before)  # refused before any work
        self.assertEqual(labels.GetImageData().GetScalarTypeAsString(), "unsigned char")

    def _labels(self) -> tuple:
        """A label map of the PET's head, labels {0, 3}, shown with the Labels colour table."""
        arr = sitk.GetArrayViewFromImage(self.moving)
        labels = sitk.Cast(self.moving > float(np.percentile(arr, 70)), sitk.sitkUInt8) * 3
        node = mrml.volume_node_from_image(labels, self.scene, name="PET labels", label=True)
        colors = self.scene.AddNewNodeByClass("vtkMRMLColorTableNode", "my labels")
        colors.SetTypeToLabels()
        node.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())
        return labels, node

    def test_a_label_map_moving_volume_is_resampled_nearest_neighbour_into_a_label_map(self) -> None:
        """A label map registered as the moving volume (as Slicer's General Registration takes one): its labels
        {0, 3} had been resampled linearly into a grey volume, 3444 voxels of invented labels 1 and 2 at the
        edges. It is a label map of the same labels now, in its own colours, as the registration places them."""
        from MultimodalFusionLib.preprocess import resample

        labels, node = self._labels()
        out = self.logic.registerVolumes(self.mr, node, stages=["rigid"], seed=3)
        registered = out.resampledVolumeNode
        self.assertTrue(registered.IsA("vtkMRMLLabelMapVolumeNode"), registered.GetClassName())
        voxels = sitk.GetArrayFromImage(mrml.image_from_volume_node(registered))
        self.assertEqual(voxels.dtype, np.uint8)
        self.assertEqual(set(np.unique(voxels)), {0, 3})
        expected = resample(labels, self.fixed, out.result.transform, interpolation="nearest")
        np.testing.assert_array_equal(voxels, sitk.GetArrayFromImage(expected))
        self.assertEqual(registered.GetDisplayNode().GetColorNode().GetName(), "my labels")
        self.assertIn("MI", out.metrics)
        # a label map output node is taken; a grey one is refused before any work (or, as the panel asks, replaced)
        again = self.logic.registerVolumes(self.mr, node, stages=["rigid"], seed=3, outputVolumeNode=registered)
        self.assertIs(again.resampledVolumeNode, registered)
        grey = mrml.volume_node_from_image(self.fixed, self.scene, name="grey")
        before = self.scene.GetNumberOfNodes()
        with self.assertRaisesRegex(InputError, "'PET labels' is a label map: it is resampled nearest-neighbour into "
                                                "a label map.*'grey' is a scalar \\(image\\) volume") as cm:
            self.logic.registerVolumes(self.mr, node, stages=["rigid"], outputVolumeNode=grey)
        self.assertIn("Select a label map node", cm.exception.fix)
        self.assertEqual(self.scene.GetNumberOfNodes(), before)
        panel = self.logic.registerVolumes(self.mr, node, stages=["rigid"], seed=3, outputVolumeNode=grey,
                                           newNodeOnKindChange=True)
        self.assertTrue(panel.resampledVolumeNode.IsA("vtkMRMLLabelMapVolumeNode"))
        self.assertIsNot(panel.resampledVolumeNode, grey)
        # and the reverse: the panel's label map output, then a grey moving volume, gets a new grey node
        back = self._register(outputVolumeNode=registered, newNodeOnKindChange=True)
        self.assertFalse(back.resampledVolumeNode.IsA("vtkMRMLLabelMapVolumeNode"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(mrml.image_from_volume_node(registered)), voxels)

    def test_a_label_map_is_not_fused(self) -> None:
        """Fusing a label map gave fractional labels (its label 3 averaged with MR intensities) without a word; it
        is refused, before any work, naming the label map layer (showFusion) and segmentations."""
        _, node = self._labels()
        before = self.scene.GetNumberOfNodes()
        calls = {"fuseVolumes functional": lambda: self.logic.fuseVolumes(self.mr, node, method="average"),
                 "fuseVolumes anatomical": lambda: self.logic.fuseVolumes(node, self.pet, method="average"),
                 "run moving": lambda: self.logic.run(self.mr, node, stages=["rigid"], seed=3),
                 "run fixed": lambda: self.logic.run(node, self.pet, stages=["rigid"], seed=3)}
        for name, call in calls.items():
            with self.subTest(name):
                with self.assertRaisesRegex(InputError, "volume 'PET labels' is a label map: fusing its labels") as cm:
                    call()
                self.assertIn("showFusion", cm.exception.fix)
                self.assertIn("segmentation", cm.exception.fix)
                self.assertEqual(self.scene.GetNumberOfNodes(), before)  # refused before any work

    def test_a_colour_weights_node_is_refused_before_the_fusion(self) -> None:
        """The weight map is grey: a colour node given for it had been refused only once the fusion had run and
        written the fused volume (2 nodes added; in run, once the registration had run as well)."""
        rgb = self.scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
        before = self.scene.GetNumberOfNodes()
        for name, call in (("fuseVolumes", lambda: self.logic.fuseVolumes(self.mr, self.pet, method="wavelet",
                                                                          weightsVolumeNode=rgb)),
                           ("run", lambda: self.logic.run(self.mr, self.pet, stages=["rigid"], fusionMethod="wavelet",
                                                          weightsVolumeNode=rgb, show=False))):
            with self.subTest(name):
                with self.assertRaisesRegex(InputError, "weights volume 'rgb' is a colour \\(vector\\) volume; the "
                                                        "weight map is grey"):
                    call()
                self.assertEqual(self.scene.GetNumberOfNodes(), before)
        # what the panel asks for: a new grey node
        out = self.logic.fuseVolumes(self.mr, self.pet, method="wavelet", weightsVolumeNode=rgb,
                                     newNodeOnKindChange=True)
        self.assertIsNot(out.weightsVolumeNode, rgb)
        self.assertFalse(out.weightsVolumeNode.IsA("vtkMRMLVectorVolumeNode"))

    def test_a_moving_mask_moves_with_the_volume_under_apply_transform(self) -> None:
        """PET and its mask under 'pre': with applyTransform the PET goes under the result and the mask had stayed
        under 'pre', so it no longer lay on the PET in the views. It moves with the PET now; a mask under another
        transform than the PET's is left where it is, with a warning."""
        pre = self._shift("pre", 0, 3.0)
        mask = mrml.volume_node_from_image(sitk.Cast(self.moving > 0.1, sitk.sitkUInt8), self.scene,
                                           name="PET mask", label=True)
        for node in (self.pet, mask):
            mrml.set_parent_transform(node, pre)
        out = self._register(movingMaskNode=mask, applyTransform=True)
        self.assertIs(self.pet.GetParentTransformNode(), out.transformNode)
        self.assertIs(mask.GetParentTransformNode(), out.transformNode)
        # where the views show it: on the PET, voxel for voxel
        on_pet = sitk.GetArrayFromImage(mrml.reslice_volume_node(mask, self.pet, interpolation="nearest"))
        np.testing.assert_array_equal(on_pet, sitk.GetArrayFromImage(mrml.image_from_volume_node(mask)))
        self.assertFalse(any("moving mask" in w for w in out.result.warnings))
        other = self.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "other")
        mrml.set_parent_transform(mask, other)
        again = self._register(movingMaskNode=mask, applyTransform=True)
        self.assertIs(mask.GetParentTransformNode(), other)
        self.assertTrue(any("moving mask 'PET mask' was under transform 'other', not under the moving volume's "
                            f"(transform '{out.transformNode.GetName()}')" in w
                            for w in again.result.warnings), again.result.warnings)

    def test_a_moving_mask_left_behind_under_apply_transform_is_named_with_a_fix_that_works(self) -> None:
        """A mask that cannot move with the PET: the warning had advised putting it under the PET's new transform,
        which left it off the PET by the 6 mm the PET had been shifted (2453 voxels of the PET grid differing from
        where the registration used it), and a mask under the output transform (given again, now holding the
        result) had been left there without a word, 2503 voxels off."""
        import vtk

        mask_image = sitk.Cast(self.moving > 0.1, sitk.sitkUInt8)

        def shift(name: str):
            node = self.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
            matrix = vtk.vtkMatrix4x4()
            matrix.SetElement(0, 3, 6.0)
            node.SetMatrixTransformToParent(matrix)
            return node

        def on_pet(mask):
            return sitk.GetArrayFromImage(mrml.reslice_volume_node(mask, self.pet, interpolation="nearest"))

        # the PET under 'pre', its mask under none: used 6 mm off the PET's own grid, left there
        mask = mrml.volume_node_from_image(mask_image, self.scene, name="PET mask", label=True)
        mrml.set_parent_transform(self.pet, shift("pre"))
        used = on_pet(mask)
        out = self._register(movingMaskNode=mask, applyTransform=True)
        self.assertIsNone(mask.GetParentTransformNode())
        warnings = [w for w in out.result.warnings if "moving mask" in w]
        self.assertEqual(len(warnings), 1, out.result.warnings)
        self.assertIn("'PET mask' was under no transform, not under the moving volume's (transform 'pre')",
                      warnings[0])
        self.assertIn("under the same transform as the volume (Transforms module) before registering", warnings[0])
        self.assertNotIn("now under", warnings[0])  # the old advice: the mask under the result is not where it was
        mrml.set_parent_transform(mask, out.transformNode)
        self.assertGreater(int((on_pet(mask) != used).sum()), 1000)
        # a mask under the output transform, which the result then replaced: it moved, so it is named too
        mrml.set_parent_transform(self.pet, None)
        output = shift("X")
        mrml.set_parent_transform(mask, output)
        used = on_pet(mask)
        again = self._register(movingMaskNode=mask, applyTransform=True, outputTransformNode=output)
        self.assertIs(again.transformNode, output)
        self.assertGreater(int((on_pet(mask) != used).sum()), 1000)  # no longer where it was used
        self.assertTrue(any("'PET mask' was under transform 'X' (now the result), not under the moving volume's "
                            "(no transform)" in w for w in again.result.warnings), again.result.warnings)
        # the moving volume as its own mask moves with itself: nothing to say
        itself = self._register(movingMaskNode=self.pet, applyTransform=True)
        self.assertIs(self.pet.GetParentTransformNode(), itself.transformNode)
        self.assertFalse(any("moving mask" in w for w in itself.result.warnings), itself.result.warnings)

    def test_masks_and_the_registered_volume_are_never_overwritten(self) -> None:
        # a scalar volume is a valid mask: chosen as the output volume too, it was read as the mask, then
        # replaced by the resampled PET (an input modified); run() refused one node for two of its outputs
        # only after the registration had run
        mask = mrml.volume_node_from_image(sitk.Cast(self.fixed > 50, sitk.sitkUInt8), self.scene, name="head")
        other = mrml.volume_node_from_image(self.fixed * 0, self.scene, name="other")
        voxels = sitk.GetArrayFromImage(mrml.image_from_volume_node(mask))
        before = self.scene.GetNumberOfNodes()
        rigid = {"stages": ["rigid"], "seed": 3, "show": False}
        calls = {
            "registerVolumes, fixed mask": (lambda: self._register(fixedMaskNode=mask, outputVolumeNode=mask),
                                            "'head' is also an input"),
            "registerVolumes, moving mask": (lambda: self._register(movingMaskNode=mask, outputVolumeNode=mask),
                                             "'head' is also an input"),
            "run, fused": (lambda: self.logic.run(self.mr, self.pet, fixedMaskNode=mask, fusedVolumeNode=mask,
                                                  **rigid), "'head' is also an input"),
            "run, weights": (lambda: self.logic.run(self.mr, self.pet, movingMaskNode=mask, weightsVolumeNode=mask,
                                                    fusionMethod="pca", **rigid), "'head' is also an input"),
            "run, registered = fused": (lambda: self.logic.run(self.mr, self.pet, outputVolumeNode=other,
                                                               fusedVolumeNode=other, **rigid),
                                        "'other' is selected for both the registered volume and the fused volume"),
            "run, registered = weights": (lambda: self.logic.run(self.mr, self.pet, outputVolumeNode=other,
                                                                 weightsVolumeNode=other, fusionMethod="pca", **rigid),
                                          "both the registered volume and the weight map"),
            "run, fused = weights": (lambda: self.logic.run(self.mr, self.pet, fusedVolumeNode=other,
                                                            weightsVolumeNode=other, fusionMethod="pca", **rigid),
                                     "both the fused volume and the weight map"),
        }
        for name, (call, message) in calls.items():
            with self.subTest(name), self.assertRaisesRegex(InputError, message):
                call()
        self.assertEqual(self.scene.GetNumberOfNodes(), before)  # refused before any work
        np.testing.assert_array_equal(sitk.GetArrayFromImage(mrml.image_from_volume_node(mask)), voxels)

    def _table_colours(self, name: str) -> np.ndarray:
        """The colour node's own 256-entry lookup table (Slicer's table, not the engine's sampling of it)."""
        lut = self.scene.GetFirstNodeByName(name).GetLookupTable()
        self.assertEqual(lut.GetNumberOfTableValues(), 256)
        return np.array([lut.GetTableValue(i)[:3] for i in range(256)])

    def test_overlay_run_shows_the_panels_colour_table_and_opacity(self) -> None:
        """run(fusionMethod="overlay", colormap=..., opacity=...) colours the fused volume with that Slicer
        colour table at that opacity (it used the engine's "pet" at 0.5 whatever was chosen)."""
        from MultimodalFusionLib import fusion

        out = self.logic.run(self.mr, self.pet, stages=["rigid"], seed=3, fusionMethod="overlay",
                             colormap="PET-Rainbow2", opacity=0.3, show=False)
        self.assertEqual(out.fusion.result.parameters["colormap"], "PET-Rainbow2")
        self.assertEqual(out.fusion.result.parameters["opacity"], 0.3)
        registered = mrml.image_from_volume_node(out.resampledVolumeNode)
        fused = sitk.GetArrayFromImage(mrml.image_from_volume_node(out.fusedVolumeNode)).astype(np.float64)
        expected = fusion.fuse(self.fixed, registered, "overlay", colormap=self._table_colours("PET-Rainbow2"),
                               opacity=0.3)
        # the node's table and its transfer function differ by under half an 8-bit step
        np.testing.assert_allclose(fused, sitk.GetArrayFromImage(expected.image), atol=1.0)
        engine = fusion.fuse(self.fixed, registered, "overlay")  # what every run made before
        self.assertGreater(np.abs(fused - sitk.GetArrayFromImage(engine.image)).max(), 50)
        # the hottest voxels: 0.7 of the anatomy's grey plus 0.3 of PET-Rainbow2's top colour (red)
        keep = sitk.GetArrayFromImage(mrml.image_from_volume_node(out.fusion.weightsVolumeNode))
        hot = keep <= keep.min() + 1e-6
        self.assertAlmostEqual(float(keep.min()), 0.7, places=5)
        red_minus_green = fused[hot][:, 0] - fused[hot][:, 1]
        np.testing.assert_allclose(red_minus_green, 0.3 * 255 * (1.0 - self._table_colours("PET-Rainbow2")[255, 1]),
                                   atol=1.0)
        # the panel's Fuse button passes the same names to fuseVolumes: the same volume
        fuse = self.logic.fuseVolumes(self.mr, out.resampledVolumeNode, method="overlay", colormap="PET-Rainbow2",
                                      opacity=0.3)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(mrml.image_from_volume_node(fuse.fusedVolumeNode)),
                                      fused)

    def test_overlay_colour_names_are_the_scenes_colour_tables_then_the_engines(self) -> None:
        from MultimodalFusionLib import fusion

        reg = self._register()
        registered = mrml.image_from_volume_node(reg.resampledVolumeNode)

        def fused(**kwargs):
            out = self.logic.fuseVolumes(self.mr, reg.resampledVolumeNode, method="overlay", **kwargs)
            return out, sitk.GetArrayFromImage(mrml.image_from_volume_node(out.fusedVolumeNode)).astype(np.float64)

        # Slicer's "Rainbow" (red to violet) wins over the engine's "rainbow" (blue to red)
        out, rainbow = fused(colormap="Rainbow")
        self.assertEqual(out.result.parameters["colormap"], "Rainbow")
        np.testing.assert_allclose(rainbow, sitk.GetArrayFromImage(fusion.fuse(
            self.fixed, registered, "overlay", colormap=self._table_colours("Rainbow")).image), atol=1.0)
        engine = sitk.GetArrayFromImage(fusion.fuse(self.fixed, registered, "overlay", colormap="rainbow").image)
        self.assertGreater(np.abs(rainbow - engine).max(), 50)
        # engine names no colour table has still run as they did; no name given: the engine's "pet"
        for kwargs, name in (({"colormap": "hot"}, "hot"), ({}, "pet")):
            out, arr = fused(**kwargs)
            self.assertEqual(out.result.parameters["colormap"], name)
            np.testing.assert_array_equal(arr, sitk.GetArrayFromImage(
                fusion.fuse(self.fixed, registered, "overlay", **kwargs).image))
        # a name that is neither: refused naming both kinds, before any work (no node added), in run too
        before = self.scene.GetNumberOfNodes()
        with self.assertRaisesRegex(InputError, "no colour table of that name.*PET-Rainbow2.*pet"):
            fused(colormap="NoSuchColours")
        with self.assertRaisesRegex(InputError, "no colour table of that name"):
            self.logic.run(self.mr, self.pet, stages=["rigid"], fusionMethod="overlay", colormap="NoSuchColours")
        self.assertEqual(self.scene.GetNumberOfNodes(), before)

    def test_repeated_runs_reuse_every_output_node(self) -> None:
        kwargs = {"stages": ["rigid"], "seed": 3, "fusionMethod": "pca", "show": False}
        first = self.logic.run(self.mr, self.pet, **kwargs)
        self.assertIsNotNone(first.fusion.weightsVolumeNode)
        count = self.scene.GetNumberOfNodes()
        second = self.logic.run(self.mr, self.pet, outputTransformNode=first.transformNode,
                                outputVolumeNode=first.resampledVolumeNode, fusedVolumeNode=first.fusedVolumeNode,
                                weightsVolumeNode=first.fusion.weightsVolumeNode,
                                metricsTableNode=first.metricsTableNode, **kwargs)
        self.assertIs(second.fusion.weightsVolumeNode, first.fusion.weightsVolumeNode)
        self.assertEqual(self.scene.GetNumberOfNodes(), count)

    def test_a_reused_output_volume_is_displayed_from_its_new_voxels(self) -> None:
        # run(show=True) fixes the registered volume's window and threshold in the PET's units; registering
        # a PET in other units into the same node kept them: 1000x, every head voxel saturated at the top of
        # the old window; 1/1000x, every head voxel under the old threshold (all transparent)
        first = self.logic.run(self.mr, self.pet, stages=["rigid"], seed=3, fusionMethod="pca")
        self.logic.showFusion(self.mr, first.fusedVolumeNode)  # the fused volume shown as function too
        scaled = mrml.volume_node_from_image(self.moving * 1000.0, self.scene, name="PET Bq/ml")
        again = self.logic.run(self.mr, scaled, stages=["rigid"], seed=3, fusionMethod="pca", show=False,
                               outputVolumeNode=first.resampledVolumeNode, fusedVolumeNode=first.fusedVolumeNode,
                               weightsVolumeNode=first.fusion.weightsVolumeNode)
        self.assertIs(again.resampledVolumeNode, first.resampledVolumeNode)
        for node in (again.resampledVolumeNode, again.fusedVolumeNode, again.fusion.weightsVolumeNode):
            display = node.GetDisplayNode()
            voxels = sitk.GetArrayFromImage(mrml.image_from_volume_node(node))
            low, high = display.GetWindowLevelMin(), display.GetWindowLevelMax()
            with self.subTest(node.GetName()):
                self.assertFalse(display.GetApplyThreshold())
                if node is again.fusion.weightsVolumeNode:  # weights are shown on 0..1, whatever their range
                    self.assertEqual((low, high), (0.0, 1.0))
                else:
                    self.assertTrue(display.GetAutoWindowLevel())
                    # the window lies on the new voxels: most below its top, some above its bottom
                    self.assertLess(low, high)
                    self.assertGreater(np.mean(voxels < high), 0.5)
                    self.assertGreater(np.mean(voxels > low), 0.05)
        # the colour table chosen for it stays
        self.assertEqual(again.resampledVolumeNode.GetDisplayNode().GetColorNode().GetName(), "PET-Heat")

    def test_windows_of_the_fusion_anatomical_and_functional(self) -> None:
        """The console API's windows: ``window_a`` (the anatomical volume's, e.g. a CT's soft tissue) and
        ``window_b`` (or ``window``) reach the fusion, in fuseVolumes and run alike. A window that holds none of its
        volume's values (an SUV window 0..8 on a PET in Bq/mL) is refused by run before the registration, with no
        node made: it had been fused as a mask of the PET's field of view (its registered volume's voxels outside
        the PET, 0, lay below the window, the rest above), 8 new nodes and no word."""
        from MultimodalFusionLib import fusion

        window = (20.0, 80.0)
        out = self.logic.fuseVolumes(self.mr, self.pet, method="average", window_a=window)
        self.assertEqual(out.result.parameters["window_a"], list(window))
        pet_on_mr = sitk.Resample(self.moving, self.fixed)  # the grids differ: fuseVolumes resamples the PET
        want = fusion.fuse(self.fixed, pet_on_mr, "average", window_a=window).image
        np.testing.assert_allclose(sitk.GetArrayFromImage(mrml.image_from_volume_node(out.fusedVolumeNode)),
                                   sitk.GetArrayFromImage(want), atol=1e-3)
        bq = mrml.volume_node_from_image(self.moving * 1000.0 + 1000.0, self.scene, name="PET Bq/ml")
        count = self.scene.GetNumberOfNodes()
        for params, message in (({"window": (0.0, 8.0)}, "functional image (b) (window_b; CLI --window) holds none"),
                                ({"window_b": (0.0, 8.0)}, "every voxel is at or above its top"),
                                ({"window_a": (1e4, 2e4)}, "anatomical image (a) (window_a; CLI --window-a) holds")):
            with self.subTest(**params), self.assertRaises(InputError) as ctx:
                self.logic.run(self.mr, bq, stages=["rigid"], seed=3, fusionMethod="overlay", **params)
            self.assertIn(message, str(ctx.exception))
            self.assertEqual(self.scene.GetNumberOfNodes(), count, "no registration should have run")
        # a window inside the values runs (the same rule as the fusion's)
        done = self.logic.run(self.mr, bq, stages=["rigid"], seed=3, fusionMethod="average", show=False,
                              window=(1000.0, 3000.0), window_a=window)
        self.assertEqual(done.fusion.result.parameters["window_b"], [1000.0, 3000.0])
        self.assertEqual(done.fusion.result.parameters["window_a"], list(window))

    def test_single_slice_volumes_fuse_as_the_2d_images_they_hold(self) -> None:
        from MultimodalFusionLib import data, fusion, io

        d = data.testing_data_dir()
        a, b = (io.read_image(d / n) for n in ("BrainT1Slice.png", "BrainProtonDensitySlice.png"))
        a_node = mrml.volume_node_from_image(a, self.scene, name="T1 slice")  # how Slicer loads a PNG
        b_node = mrml.volume_node_from_image(b, self.scene, name="PD slice")
        out = self.logic.fuseVolumes(a_node, b_node, method="laplacian")
        engine = fusion.fuse(a, b, "laplacian")
        np.testing.assert_allclose(sitk.GetArrayFromImage(mrml.image_from_volume_node(out.fusedVolumeNode))[0],
                                   sitk.GetArrayFromImage(engine.image), atol=1e-4)
        self.assertEqual(out.fusedVolumeNode.GetImageData().GetDimensions(), a_node.GetImageData().GetDimensions())
        with self.assertRaisesRegex(InputError, "single-slice volume"):
            self.logic.registerVolumes(a_node, b_node)

    def test_volumes_that_do_not_overlap_are_named_as_such(self) -> None:
        far = sitk.Image(self.moving)
        far.SetOrigin([o + 1000.0 for o in far.GetOrigin()])
        far_node = mrml.volume_node_from_image(far, self.scene, name="far PET")
        with self.assertRaisesRegex(InputError, "does not overlap"):
            self.logic.fuseVolumes(self.mr, far_node)

    def test_inputs_are_never_outputs(self) -> None:
        with self.assertRaisesRegex(InputError, "never overwritten"):
            self._register(outputVolumeNode=self.pet)
        with self.assertRaisesRegex(InputError, "never overwritten"):
            self.logic.fuseVolumes(self.mr, self.pet, outputVolumeNode=self.mr)
        with self.assertRaisesRegex(InputError, "same node"):
            self.logic.registerVolumes(self.mr, self.mr)
        with self.assertRaises(InputError):
            self.logic.registerVolumes(self.mr, None)

    def test_registration_starts_where_the_moving_volume_is_shown(self) -> None:
        """A moving volume the user pre-aligned with the Transforms module (its grid is 90 degrees off, its
        parent transform shows it in place): the registration ignored the parent and ended 75 mm off."""
        centre = self.moving.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in self.moving.GetSize()])
        turn = sitk.Euler3DTransform(centre, 0.0, 0.0, np.pi / 2)
        rotation = np.array(turn.GetMatrix()).reshape(3, 3)
        turned = sitk.Image(self.moving)  # the same voxels on a grid turned by 90 degrees about its centre
        turned.SetDirection((rotation @ np.array(self.moving.GetDirection()).reshape(3, 3)).ravel().tolist())
        turned.SetOrigin((rotation @ (np.array(self.moving.GetOrigin()) - centre) + centre).tolist())
        node = mrml.volume_node_from_image(turned, self.scene, name="PET turned")
        manual = mrml.transform_node_from_sitk(turn, self.scene, name="manual pre-alignment")
        mrml.set_parent_transform(node, manual)
        out = self.logic.registerVolumes(self.mr, node, stages=["rigid"], seed=3)
        # the result maps fixed points onto the turned grid: truth, then the turn
        points = [(0.0, 0.0, 0.0), (30.0, 20.0, -10.0), (-25.0, 30.0, 15.0), (20.0, -30.0, 20.0)]
        error = max(np.linalg.norm(np.subtract(out.result.transform.TransformPoint(p),
                                               turn.TransformPoint(self.truth.TransformPoint(p)))) for p in points)
        self.assertLess(error, 2.0)
        self.assertIs(node.GetParentTransformNode(), manual)  # the input is left as it was
        # the result includes the pre-alignment: in its place, it shows the volume as the resampled one
        mrml.set_parent_transform(node, out.transformNode)
        shown = sitk.GetArrayFromImage(mrml.reslice_volume_node(node, self.mr))
        resampled = sitk.GetArrayFromImage(mrml.image_from_volume_node(out.resampledVolumeNode))
        both = (shown != 0) & (resampled != 0)
        self.assertLess(np.abs(shown - resampled)[both].max() / np.abs(resampled).max(), 1e-3)
        mrml.set_parent_transform(node, manual)
        # an initializer chosen explicitly is the start (as before): the parent is not used then
        searched = self.logic.registerVolumes(self.mr, node, stages=["rigid"], seed=3, initializer="search")
        self.assertEqual(searched.result.initializer["name"], "search")
        # so is the search asked for in the parameters (it refuses a start transform: the parent is not one)
        searched = self.logic.registerVolumes(self.mr, node, seed=3, parameters={"initializer": "search"})
        self.assertEqual(searched.result.initializer["name"], "search")
        # under a B-spline the sitk backend starts from it too (the result holds it); the torch backend starts
        # only from a linear transform: there the volume's own grid is the start, and a warning says so
        bspline = sitk.BSplineTransformInitializer(self.fixed, [2, 2, 2])
        mrml.set_parent_transform(self.pet, mrml.transform_node_from_sitk(bspline, self.scene, name="deformation"))
        out = self._register()
        self.assertIn("BSplineTransform", str(out.result.transform))
        self.assertNotIn("non-linear transform", " ".join(out.result.warnings))
        # (a short run: the warning is about the start, and a full torch run took 14 of this test's 19 s)
        out = self._register(backend="torch", parameters={"device": "cpu", "linear_iterations": [20, 10, 5]})
        self.assertIn("non-linear transform 'deformation'", " ".join(out.result.warnings))
        self.assertIn("non-linear transform 'deformation'", " ".join(str(v) for v in out.metrics.values()))

    def test_torch_settings_in_their_dict_form_are_taken_as_register_takes_them(self) -> None:
        # the Logic read every dict as the SimpleITK backend's settings (its own copy of register()'s rules),
        # so the torch backend's dict form, which register() and the CLI take, was refused here
        quick = {"stages": ["affine"], "device": "cpu", "linear_iterations": [20, 10, 5]}
        out = self.logic.registerVolumes(self.mr, self.pet, parameters=quick, backend="torch", seed=3)
        self.assertEqual(out.result.backend, "torch")
        self.assertEqual(out.result.parameters["linear_iterations"], [20, 10, 5])
        self.assertEqual(out.result.parameters["seed"], 3)

    def test_colour_volumes_are_refused_with_a_fix_that_works_in_slicer(self) -> None:
        # the engine's fix ("read_image does so unless keep_color=True") has no meaning for a volume node
        rgb = mrml.volume_node_from_image(sitk.Compose([sitk.Cast(sitk.RescaleIntensity(self.moving), sitk.sitkUInt8)] * 3),
                                          self.scene, name="PET RGB")
        for fixed, moving in ((self.mr, rgb), (rgb, self.mr)):
            with self.assertRaisesRegex(InputError, "'PET RGB' has 3 components.*Vector to Scalar Volume"):
                self.logic.registerVolumes(fixed, moving, stages=["rigid"])

    def test_fixed_volume_under_a_transform_is_refused(self) -> None:
        parent = mrml.transform_node_from_sitk(self.truth, self.scene, name="manual")
        mrml.set_parent_transform(self.mr, parent)
        with self.assertRaisesRegex(InputError, "under a transform"):
            self._register()

    def test_output_nodes_under_a_transform_are_taken_out_of_it(self) -> None:
        """Output nodes chosen by the user that sit under a transform: the results are in world
        coordinates (the fixed volume's), so under that transform they were shown 25 mm off, and
        the moving volume put under the output transform was not aligned."""
        shift = self._shift("shift", 0, 25.0)
        chosen_transform = self.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "chosen transform")
        chosen_volume = mrml.volume_node_from_image(self.fixed * 0, self.scene, name="chosen volume")
        chosen_fused = mrml.volume_node_from_image(self.fixed * 0, self.scene, name="chosen fused")
        chosen_weights = mrml.volume_node_from_image(self.fixed * 0, self.scene, name="chosen weights")
        for node in (chosen_transform, chosen_volume, chosen_fused, chosen_weights):
            mrml.set_parent_transform(node, shift)
        out = self._register(outputTransformNode=chosen_transform, outputVolumeNode=chosen_volume,
                             applyTransform=True)
        self.assertIs(out.transformNode, chosen_transform)
        # the moving volume as shown through the output transform is the resampled volume...
        resampled = sitk.GetArrayFromImage(mrml.image_from_volume_node(chosen_volume))
        shown = sitk.GetArrayFromImage(mrml.reslice_volume_node(self.pet, self.mr))
        both = (shown != 0) & (resampled != 0)
        self.assertLess(np.abs(shown - resampled)[both].max() / np.abs(resampled).max(), 1e-3)
        # ...and the resampled, fused and weight volumes are shown on the fixed volume's grid, where it lies
        fused = self.logic.fuseVolumes(self.mr, chosen_volume, method="average", outputVolumeNode=chosen_fused,
                                       weightsVolumeNode=chosen_weights)
        self.assertIs(fused.weightsVolumeNode, chosen_weights)
        for node in (chosen_volume, chosen_fused, chosen_weights):
            own = sitk.GetArrayFromImage(mrml.image_from_volume_node(node))
            as_shown = sitk.GetArrayFromImage(mrml.reslice_volume_node(node, self.mr, interpolation="nearest"))
            np.testing.assert_array_equal(as_shown, own, err_msg=node.GetName())
        self.assertIsNone(chosen_transform.GetParentTransformNode())

    def test_an_output_transform_above_the_moving_volumes_parent_is_refused(self) -> None:
        """PET under 'pre' (a 4 mm shift) under 'chosen' (the output): the result, which includes both, had been
        written into 'chosen', so the PET was shown through 'pre' and the result, 4 mm more: 5.0 mm off the
        truth where the result is 1.2 mm from it, without a word."""
        chosen = self.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "chosen")
        pre = self._shift("pre", 0, 4.0)
        mrml.set_parent_transform(pre, chosen)
        mrml.set_parent_transform(self.pet, pre)
        nodes = self.scene.GetNumberOfNodes()
        for call in (lambda: self._register(outputTransformNode=chosen),
                     lambda: self.logic.run(self.mr, self.pet, stages=["rigid"], seed=3, outputTransformNode=chosen,
                                            show=False)):
            with self.assertRaisesRegex(InputError, "output transform 'chosen' is above the moving volume 'PET' in "
                                                    "its chain of transforms \\(through 'pre'\\)") as cm:
                call()
            self.assertIn("applyTransform=True", cm.exception.fix)
            self.assertEqual(self.scene.GetNumberOfNodes(), nodes)  # refused before any work
            self.assertTrue(chosen.IsTransformToWorldLinear())
            np.testing.assert_array_equal(mrml.linear_transform_matrix(mrml.sitk_transform_from_node(chosen)),
                                          np.eye(4))
        # with applyTransform the PET goes directly under the result: shown aligned, as the result aligns it
        out = self._register(outputTransformNode=chosen, applyTransform=True)
        self.assertIs(self.pet.GetParentTransformNode(), chosen)
        np.testing.assert_allclose(mrml.linear_transform_matrix(mrml.sitk_transform_from_node(chosen)),
                                   mrml.linear_transform_matrix(out.result.transform), atol=1e-9)
        # the moving volume's own parent as the output stays allowed (repeated clicks in the panel)
        mrml.set_parent_transform(self.pet, pre)
        self.assertIs(self._register(outputTransformNode=pre).transformNode, pre)

    def test_cancel_stops_without_new_nodes(self) -> None:
        before = self.scene.GetNumberOfNodes()
        with self.assertRaises(OperationCancelled):
            self._register(progress=lambda fraction, message: fraction < 0.3)
        self.assertEqual(self.scene.GetNumberOfNodes(), before)

    def test_run_shows_with_the_display_threshold(self) -> None:
        """The panel's Threshold reaches the slice views after "Register and fuse" (run), as after
        Register and Show fusion (showFusion); before, run() always used 0.1."""
        out = self.logic.run(self.mr, self.pet, stages=["rigid"], seed=3, fusionMethod="max", opacity=0.3,
                             displayThreshold=None)
        self.assertFalse(out.resampledVolumeNode.GetDisplayNode().GetApplyThreshold())
        composite = self.scene.GetSingletonNode("Red", "vtkMRMLSliceCompositeNode")
        self.assertEqual(composite.GetForegroundVolumeID(), out.resampledVolumeNode.GetID())
        self.assertEqual(composite.GetForegroundOpacity(), 0.3)

    def test_a_pets_units_reach_the_engine_and_the_registered_volume_not_the_fused_one(self) -> None:
        """A PET node's VoxelValueUnits (as Slicer's PET DICOM extension sets them) reach the engine: a window that
        holds none of a PET in Bq/ml is refused naming its units, as the CLI names a DICOM PET's. The registered
        (resampled) moving volume is in the moving volume's units: it gets its VoxelValueUnits and Quantity, as they
        are; the fused image and the weight map are not: they get none, a reused node's old ones removed. All had
        been dropped: the refusal named no units, and the registered volume stated none."""

        def coded(value: str, scheme: str, meaning: str) -> Any:
            entry = slicer.vtkCodedEntry()
            entry.SetValueSchemeMeaning(value, scheme, meaning)
            return entry

        def state(node: Any) -> tuple:
            return tuple(None if e is None else e.GetAsString()
                         for e in (node.GetVoxelValueUnits(), node.GetVoxelValueQuantity()))

        bq = mrml.volume_node_from_image(self.moving * 1000.0 + 1000.0, self.scene, name="PET Bq/ml")
        bq.SetVoxelValueUnits(coded("Bq/ml", "UCUM", "Becquerels/milliliter"))
        with self.assertRaises(InputError) as ctx:
            self.logic.fuseVolumes(self.mr, bq, method="average", window_b=(0.0, 8.0))
        self.assertIn("Bq/mL (DICOM Units BQML)", str(ctx.exception))
        self.assertIn("this PET is stored in Bq/mL (DICOM Units BQML), not in SUV", ctx.exception.fix)

        self.pet.SetVoxelValueUnits(coded("{SUVbw}g/ml", "UCUM", "Standardized Uptake Value body weight"))
        self.pet.SetVoxelValueQuantity(coded("126400", "DCM", "Standardized Uptake Value"))
        ct = mrml.volume_node_from_image(self.moving, self.scene, name="CT")
        ct.SetVoxelValueUnits(coded("[hnsf'U]", "UCUM", "Hounsfield unit"))
        ct.SetVoxelValueQuantity(coded("112031", "DCM", "Attenuation Coefficient"))
        reused = None
        for moving in (self.pet, ct):  # the second into the first's output node: its units replaced
            with self.subTest(moving.GetName()):
                out = self.logic.registerVolumes(self.mr, moving, stages=["rigid"], seed=3, outputVolumeNode=reused)
                reused = out.resampledVolumeNode
                self.assertEqual(state(reused), state(moving))
                self.assertIsNot(reused.GetVoxelValueUnits(), moving.GetVoxelValueUnits())  # copies
        registered = self.logic.registerVolumes(self.mr, self.pet, stages=["rigid"], seed=3).resampledVolumeNode
        old = mrml.volume_node_from_image(self.moving, self.scene, name="old fused")
        old.SetVoxelValueUnits(coded("Bq/ml", "UCUM", "Becquerels/milliliter"))
        fused = self.logic.fuseVolumes(self.mr, registered, method="laplacian", outputVolumeNode=old)
        self.assertIs(fused.fusedVolumeNode, old)
        for node in (fused.fusedVolumeNode, fused.weightsVolumeNode):
            self.assertEqual(state(node), (None, None))
        self.assertEqual(state(self.pet)[0], "CodeValue:{SUVbw}g/ml|CodingSchemeDesignator:UCUM|CodeMeaning:"
                                             "Standardized Uptake Value body weight")  # the input as it was

    def test_show_fusion_and_save_results(self) -> None:
        count = self.logic.showFusion(self.mr, self.pet, opacity=0.25, colormap="PET-Heat", threshold=None)
        self.assertEqual(count, 3)
        composite = self.scene.GetSingletonNode("Red", "vtkMRMLSliceCompositeNode")
        self.assertEqual(composite.GetForegroundOpacity(), 0.25)
        self.assertFalse(self.pet.GetDisplayNode().GetApplyThreshold())
        with tempfile.TemporaryDirectory() as folder:
            path = self.logic.saveResults(os.path.join(folder, "fusion.mrb"))
            loaded = mrml.load_scene(path)
            self.assertIsNotNone(loaded.GetFirstNodeByName("PET"))


def _evaluation_pair() -> tuple[sitk.Image, sitk.Image, sitk.Image, sitk.Image, sitk.Transform, np.ndarray]:
    """A fixed image and label map (two ellipsoids) on an oblique, anisotropic grid, and the moving ones: the same
    voxels placed so that the known rigid ``truth`` (fixed -> moving points, LPS; turned about a tilted axis and
    shifted in x, y and z, so neither its inverse nor an LPS/RAS mix-up equals it) maps each fixed voxel onto the
    moving voxel of the same index. Through ``truth``: Dice 1 and landmark error 0 exactly (up to rounding)."""
    shape = (14, 30, 28)
    z, y, x = np.indices(shape)
    labels = np.zeros(shape, np.uint8)
    labels[(x - 11) ** 2 / 49 + (y - 13) ** 2 / 64 + (z - 7) ** 2 / 16 <= 1] = 1
    labels[(x - 20) ** 2 / 9 + (y - 21) ** 2 / 16 + (z - 6) ** 2 / 9 <= 1] = 2
    grey = (100.0 * labels + 20.0 * np.sin(x / 3.0) + 10.0 * np.cos(y / 4.0) + 3.0 * z).astype(np.float32)
    turn = np.deg2rad(25.0)
    direction = [np.cos(turn), -np.sin(turn), 0.0, np.sin(turn), np.cos(turn), 0.0, 0.0, 0.0, 1.0]
    truth = sitk.Euler3DTransform((0.0, 0.0, 0.0), np.deg2rad(4.0), np.deg2rad(-3.0), np.deg2rad(12.0),
                                  (7.0, -5.0, 3.0))
    rotation = np.array(truth.GetMatrix()).reshape(3, 3)
    images = []
    for moved in (False, True):
        for arr in (grey, labels):
            image = sitk.GetImageFromArray(arr)
            image.SetSpacing((1.1, 0.9, 2.5))
            image.SetOrigin((-12.0, 8.0, 30.0))
            image.SetDirection(direction)
            if moved:
                image.SetOrigin(truth.TransformPoint(image.GetOrigin()))
                image.SetDirection((rotation @ np.array(direction).reshape(3, 3)).ravel().tolist())
            images.append(image)
    fixed, fixed_labels, moving, moving_labels = images
    # landmarks: fixed points (LPS) at voxel positions of both labels and elsewhere, not all in one plane
    points = np.array([fixed.TransformContinuousIndexToPhysicalPoint(p)
                       for p in ((11.0, 13.0, 7.0), (20.0, 21.0, 6.0), (3.5, 25.0, 2.0), (24.0, 4.0, 11.0))])
    return fixed, fixed_labels, moving, moving_labels, truth, points


@unittest.skipUnless(HAVE_MRML, "needs Slicer's MRML libraries (pip install slicer-core)")
class EvaluateRegistrationLogicTest(unittest.TestCase):
    """FusionLogic.evaluateRegistration: the engine's before/after numbers from nodes of a real scene."""

    def setUp(self) -> None:
        self.scene = mrml.new_scene()
        self.logic = FusionLogic(self.scene)
        fixed, fixed_labels, moving, moving_labels, self.truth, self.points = _evaluation_pair()
        self.fixed = mrml.volume_node_from_image(fixed, self.scene, name="fixed")
        self.moving = mrml.volume_node_from_image(moving, self.scene, name="moving")
        self.fixed_labels = mrml.volume_node_from_image(fixed_labels, self.scene, name="fixed labels", label=True)
        self.moving_labels = mrml.volume_node_from_image(moving_labels, self.scene, name="moving labels", label=True)
        # the registration's output, as registerVolumes writes it (transform_node_from_sitk of the engine's result)
        self.transform = mrml.transform_node_from_sitk(self.truth, self.scene, name="registration")
        moved = [self.truth.TransformPoint(p) for p in self.points]
        self.fixed_points = self._points("F", self.points)
        self.moving_points = self._points("M", moved)
        self.expected = metrics.evaluate_registration(fixed, moving, self.truth, fixed_labels=fixed_labels,
                                                      moving_labels=moving_labels, fixed_landmarks=self.points,
                                                      moving_landmarks=moved)

    def _points(self, name: str, lps: Any) -> Any:
        node = self.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
        for p in mrml.ras_points_to_lps(lps):  # Slicer's points are RAS
            node.AddControlPoint(*[float(c) for c in p])
        return node

    def _segmentation(self, labels_node: Any, names: dict[int, str], order: list[int]) -> Any:
        """A segmentation made from a label map (Slicer's import), its segments renamed and put in ``order``."""
        node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", labels_node.GetName() + " segmentation")
        self.assertTrue(slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labels_node, node))
        segmentation = node.GetSegmentation()
        by_label = {i + 1: segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())}
        for label, name in names.items():
            segmentation.GetSegment(by_label[label]).SetName(name)
        for position, label in enumerate(order):
            segmentation.SetSegmentIndex(by_label[label], position)
        return node

    def _evaluate(self, transform: Any = "registration", **kwargs: Any) -> dict:
        kwargs.setdefault("fixedLabelNode", self.fixed_labels)
        kwargs.setdefault("movingLabelNode", self.moving_labels)
        kwargs.setdefault("fixedPointsNode", self.fixed_points)
        kwargs.setdefault("movingPointsNode", self.moving_points)
        transform = self.transform if transform == "registration" else transform
        return self.logic.evaluateRegistration(self.fixed, self.moving, transform, **kwargs)

    def _node_ids(self) -> list[str]:
        return [self.scene.GetNthNode(i).GetID() for i in range(self.scene.GetNumberOfNodes())]

    def test_the_known_transform_scores_dice_1_and_tre_0_as_the_engine_does(self) -> None:
        nodes = self._node_ids()
        out = self._evaluate()
        after, before = out["labels"]["after"], out["labels"]["before"]
        self.assertEqual(sorted(after["labels"]), [1, 2])
        for label in (1, 2):
            self.assertAlmostEqual(after["labels"][label]["dice"], 1.0, places=12)
            self.assertAlmostEqual(after["labels"][label]["hausdorff"], 0.0, places=9)
        self.assertLess(out["landmarks"]["after"]["max"], 1e-6)
        self.assertLess(before["mean"]["dice"], 0.5)
        self.assertGreater(out["landmarks"]["before"]["mean"], 5.0)
        # the same numbers as the engine on the images themselves (the nodes converted RAS <-> LPS exactly)
        for when in ("before", "after"):
            np.testing.assert_allclose(out["landmarks"][when]["per_point"],
                                       self.expected["landmarks"][when]["per_point"], atol=1e-9)
            for label in (1, 2):
                self.assertAlmostEqual(out["labels"][when]["labels"][label]["dice"],
                                       self.expected["labels"][when]["labels"][label]["dice"], places=12)
            self.assertAlmostEqual(out["images"][when]["NCC"], self.expected["images"][when]["NCC"], places=5)
        self.assertEqual(out["landmark_nodes"]["fixed"], {"name": "F", "points": 4, "placed": 4})
        self.assertEqual(self._node_ids(), nodes)  # nothing added to the scene

    def test_the_transform_node_is_read_as_registerVolumes_writes_it_not_the_other_way_round(self) -> None:
        import vtk

        # the wrong direction: the node's "to parent" (the matrix the Transforms module shows) taken as the ITK
        # fixed -> moving transform, i.e. the inverse: the test above would fail with it
        inverse = self.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "to parent read as from parent")
        matrix = vtk.vtkMatrix4x4()
        self.transform.GetMatrixTransformToParent(matrix)
        inverse.SetMatrixTransformFromParent(matrix)
        wrong = self._evaluate(inverse)
        self.assertGreater(wrong["landmarks"]["after"]["mean"], 10.0)
        self.assertLess(wrong["labels"]["after"]["mean"]["dice"], 0.5)
        # and the Logic's own registration output, written by registerVolumes, is read the right way round
        reg = self.logic.registerVolumes(self.fixed, self.moving, stages=["rigid"], seed=3, resample=False)
        out = self._evaluate(reg.transformNode)
        self.assertLess(out["landmarks"]["after"]["mean"], 1.0)
        self.assertGreater(out["labels"]["after"]["mean"]["dice"], 0.9)
        self.assertGreater(out["landmarks"]["before"]["mean"], 5.0)

    def test_a_point_list_under_a_parent_transform_is_taken_in_world_coordinates(self) -> None:
        import vtk

        parent = self.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "points parent")
        matrix = vtk.vtkMatrix4x4()  # turned 90 degrees about S and shifted
        for (row, column), value in {(0, 0): 0.0, (0, 1): -1.0, (1, 0): 1.0, (1, 1): 0.0, (0, 3): 15.0,
                                     (1, 3): -9.0, (2, 3): 4.0}.items():
            matrix.SetElement(row, column, value)
        parent.SetMatrixTransformToParent(matrix)
        under = self._points("F under parent", np.zeros((4, 3)))
        mrml.set_parent_transform(under, parent)
        for i, p in enumerate(mrml.ras_points_to_lps(self.points)):  # placed where the fixed points are shown
            under.SetNthControlPointPositionWorld(i, *[float(c) for c in p])
        local = [under.GetNthControlPointPosition(i) for i in range(4)]
        self.assertGreater(np.abs(np.array(local) - mrml.ras_points_to_lps(self.points)).max(), 10.0)
        out = self._evaluate(fixedPointsNode=under)
        self.assertLess(out["landmarks"]["after"]["max"], 1e-6)
        # a note says the list is under another transform than its volume
        self.assertTrue(any("'F under parent' is under transform 'points parent'" in n for n in out["notes"]))

    def test_a_label_map_under_a_parent_transform_lies_where_it_is_shown(self) -> None:
        import vtk

        parent = self.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "labels parent")
        matrix = vtk.vtkMatrix4x4()  # turned 90 degrees about S and shifted
        for (row, column), value in {(0, 0): 0.0, (0, 1): -1.0, (1, 0): 1.0, (1, 1): 0.0, (0, 3): 15.0,
                                     (1, 3): -9.0, (2, 3): 4.0}.items():
            matrix.SetElement(row, column, value)
        parent.SetMatrixTransformToParent(matrix)
        labels = mrml.volume_node_from_image(mrml.image_from_volume_node(self.fixed_labels), self.scene,
                                             name="fixed labels under parent", label=True)
        inverse = vtk.vtkMatrix4x4()
        vtk.vtkMatrix4x4.Invert(matrix, inverse)
        labels.ApplyTransformMatrix(inverse)  # its own grid elsewhere; shown through the parent on the fixed volume
        mrml.set_parent_transform(labels, parent)
        out = self._evaluate(fixedLabelNode=labels)
        for label in (1, 2):
            self.assertAlmostEqual(out["labels"]["after"]["labels"][label]["dice"], 1.0, places=12)
        self.assertTrue(any("'fixed labels under parent' is under transform 'labels parent'" in n
                            for n in out["notes"]))

    def test_points_and_labels_moved_with_the_moving_volume_are_taken_on_it(self) -> None:
        # registerVolumes(applyTransform=True) puts the moving volume under the result; labels and points put
        # under it with the volume lie on the volume's own voxels, as shown; the transform defaults to the parent
        for node in (self.moving, self.moving_labels, self.moving_points):
            mrml.set_parent_transform(node, self.transform)
        out = self._evaluate(None)
        self.assertAlmostEqual(out["labels"]["after"]["mean"]["dice"], 1.0, places=12)
        self.assertLess(out["landmarks"]["after"]["max"], 1e-6)
        self.assertFalse([n for n in out["notes"] if "is under" in n])

    def test_a_given_transform_with_the_moving_volume_under_another_says_the_parent_is_not_applied(self) -> None:
        import vtk

        # a manual pre-alignment the moving volume (with its labels and points) is under; registerVolumes starts
        # from it and its result includes it: the given transform is the whole one, the parent not composed with
        # it -- scored right, but silently so (a user could think both are applied); now said in a note
        start = self.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "pre-alignment")
        matrix = vtk.vtkMatrix4x4()
        matrix.SetElement(0, 3, 20.0)
        start.SetMatrixTransformToParent(matrix)
        for node in (self.moving, self.moving_labels, self.moving_points):
            mrml.set_parent_transform(node, start)
        out = self._evaluate()
        self.assertAlmostEqual(out["labels"]["after"]["mean"]["dice"], 1.0, places=12)
        self.assertLess(out["landmarks"]["after"]["max"], 1e-6)
        self.assertTrue(any("under transform 'pre-alignment', which is not applied: 'registration' is taken as the "
                            "whole fixed -> moving transform" in n for n in out["notes"]), out["notes"])
        mrml.set_parent_transform(self.moving, self.transform)  # the given transform is the parent: no note
        for node in (self.moving_labels, self.moving_points):
            mrml.set_parent_transform(node, self.transform)
        self.assertFalse([n for n in self._evaluate()["notes"] if "not applied" in n])

    def test_segmentations_match_segments_by_name_not_order(self) -> None:
        fixed = self._segmentation(self.fixed_labels, {1: "liver", 2: "kidney"}, [1, 2])
        moving = self._segmentation(self.moving_labels, {1: "liver", 2: "kidney"}, [2, 1])  # other order
        self.assertEqual(moving.GetSegmentation().GetNthSegment(0).GetName(), "kidney")
        nodes = self._node_ids()
        out = self._evaluate(fixedLabelNode=fixed, movingLabelNode=moving)
        self.assertEqual(out["label_names"], {1: "liver", 2: "kidney"})
        for label in (1, 2):  # matched by order, liver would have been scored against kidney
            self.assertAlmostEqual(out["labels"]["after"]["labels"][label]["dice"], 1.0, places=12)
            self.assertAlmostEqual(out["labels"]["before"]["labels"][label]["dice"],
                                   self.expected["labels"]["before"]["labels"][label]["dice"], places=12)
        self.assertEqual(self._node_ids(), nodes)  # the exports' helper nodes are gone
        one = self._evaluate(fixedLabelNode=fixed, movingLabelNode=moving, labels=["kidney"])
        self.assertEqual(list(one["labels"]["after"]["labels"]), [2])
        # a segment in one segmentation only is left out, named
        moving.GetSegmentation().GetNthSegment(0).SetName("spleen")
        out = self._evaluate(fixedLabelNode=fixed, movingLabelNode=moving)
        self.assertEqual(out["labels"]["left_out"], [2, 3])
        self.assertTrue(any("segment 'spleen' (label 3) is in the moving label map only" in n for n in out["notes"]))
        with self.assertRaisesRegex(InputError, "named 'lung'"):
            self._evaluate(fixedLabelNode=fixed, movingLabelNode=moving, labels=["lung"])
        with self.assertRaisesRegex(InputError, "segment names"):
            self._evaluate(fixedLabelNode=fixed, movingLabelNode=moving, labels=[1])
        # overlapping segments, each scored as its own binary mask, as Segment Comparison scores them (they had been
        # refused: "one label map cannot hold a voxel of both ... score the two segments in separate calls")
        whole = mrml.volume_node_from_image(sitk.Cast(mrml.image_from_volume_node(self.moving_labels) > 0,
                                                      sitk.sitkUInt8), self.scene, name="whole", label=True)
        self.assertTrue(slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(whole, moving))
        moving.GetSegmentation().GetNthSegment(2).SetName("kidney")  # over both labels, liver's voxels too
        nodes = self._node_ids()
        out = self._evaluate(fixedLabelNode=fixed, movingLabelNode=moving)
        self.assertEqual(self._node_ids(), nodes)
        self.assertEqual(out["label_names"], {1: "liver", 2: "kidney", 3: "spleen"})
        self.assertEqual(out["labels"]["left_out"], [3])
        fixed_image, moving_image = (mrml.image_from_volume_node(n) for n in (self.fixed_labels, self.moving_labels))
        truth = mrml.sitk_transform_from_node(self.transform)
        for label, moving_mask in ((1, moving_image == 1), (2, moving_image > 0)):  # kidney: the whole moving map
            for when, transform in (("before", sitk.Transform()), ("after", truth)):
                on_fixed = sitk.Resample(sitk.Cast(moving_mask, sitk.sitkUInt8), fixed_image, transform,
                                         sitk.sitkNearestNeighbor, 0)
                fixed_mask = sitk.Cast(fixed_image == label, sitk.sitkUInt8)
                itk = sitk.LabelOverlapMeasuresImageFilter()
                itk.Execute(fixed_mask, on_fixed)
                row = out["labels"][when]["labels"][label]
                with self.subTest(label=label, when=when):
                    self.assertAlmostEqual(row["dice"], itk.GetDiceCoefficient(), places=10)
                    self.assertAlmostEqual(row["jaccard"], itk.GetJaccardCoefficient(), places=10)
                    self.assertEqual(row["moving_voxels"], int(sitk.GetArrayFromImage(on_fixed).sum()))
                    self.assertEqual(row["fixed_voxels"], int(sitk.GetArrayFromImage(fixed_mask).sum()))
        self.assertAlmostEqual(out["labels"]["after"]["labels"][1]["dice"], 1.0, places=12)  # the liver whole
        self.assertLess(out["labels"]["after"]["labels"][2]["dice"], 0.5)
        kidney = self._evaluate(fixedLabelNode=fixed, movingLabelNode=moving, labels=["kidney"])  # as alone
        for when in ("before", "after"):
            self.assertEqual(kidney["labels"][when]["labels"][2], out["labels"][when]["labels"][2])

    def test_a_segment_lost_in_the_export_and_near_names_are_named(self) -> None:
        # a 0.5 mm segmentation with a one-voxel slab between the fixed volume's 2.5 mm slices: exported onto the
        # volume's grid it has no voxel, and was in neither map, neither scored nor in left_out, without a note
        fixed_image = mrml.image_from_volume_node(self.fixed_labels)
        fine = sitk.Image([62, 54, 70], sitk.sitkUInt8)
        fine.SetSpacing((0.5, 0.5, 0.5))
        fine.SetOrigin(fixed_image.GetOrigin())
        fine.SetDirection(fixed_image.GetDirection())
        arr = sitk.GetArrayFromImage(sitk.Resample(fixed_image, fine, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
        arr[16, 10:40, 10:40] = 3  # z = 8 mm: between the slices at 7.5 and 10 mm
        fine_image = sitk.GetImageFromArray(arr)
        fine_image.CopyInformation(fine)
        fine_node = mrml.volume_node_from_image(fine_image, self.scene, name="fine labels", label=True)
        fixed = self._segmentation(fine_node, {1: "liver", 2: "kidney", 3: "slab"}, [1, 2, 3])
        moving = self._segmentation(self.moving_labels, {1: "liver", 2: "kidney"}, [1, 2])
        out = self._evaluate(fixedLabelNode=fixed, movingLabelNode=moving)
        self.assertEqual(out["labels"]["left_out"], [3])
        self.assertTrue(any("segment 'slab' (label 3) of 'fine labels segmentation' has 900 voxels in its own binary "
                            "labelmap and none on the fixed volume 'fixed''s grid" in n for n in out["notes"]),
                        out["notes"])
        # names that differ in case or spaces only: matched by exact name, with a hint naming the near match
        moving.GetSegmentation().GetNthSegment(0).SetName("Liver ")
        out = self._evaluate(fixedLabelNode=fixed, movingLabelNode=moving)
        self.assertTrue(any("segment 'liver' of 'fine labels segmentation' and 'Liver ' of 'moving labels "
                            "segmentation' differ only in case or spaces" in n for n in out["notes"]), out["notes"])

    def test_an_empty_segment_is_named(self) -> None:
        # a segment with no voxel (added, never painted) was in neither map: not scored, not in left_out, no note
        fixed = self._segmentation(self.fixed_labels, {1: "liver", 2: "kidney"}, [1, 2])
        moving = self._segmentation(self.moving_labels, {1: "liver", 2: "kidney"}, [1, 2])
        fixed.GetSegmentation().AddEmptySegment("", "tumour")
        out = self._evaluate(fixedLabelNode=fixed, movingLabelNode=moving)
        self.assertTrue(any("segment 'tumour' (label 3) of 'fixed labels segmentation' holds no voxel" in n
                            for n in out["notes"]), out["notes"])
        self.assertEqual(out["labels"]["left_out"], [3])
        self.assertAlmostEqual(out["labels"]["after"]["mean"]["dice"], 1.0, places=12)

    def test_a_segmentation_without_voxels_is_refused_not_converted_in_place(self) -> None:
        import vtk

        # a segmentation of a surface file holds no binary labelmap: exporting it would add one to it (an input)
        surface = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "surface")
        closed = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
        surface.GetSegmentation().SetSourceRepresentationName(closed)
        sphere = vtk.vtkSphereSource()
        sphere.SetCenter(*mrml.ras_points_to_lps(self.points[:1])[0])
        sphere.SetRadius(5.0)
        sphere.Update()
        surface.AddSegmentFromClosedSurfaceRepresentation(sphere.GetOutput(), "ball")
        fixed = self._segmentation(self.fixed_labels, {1: "ball", 2: "other"}, [1, 2])
        nodes = self._node_ids()
        with self.assertRaises(InputError) as cm:
            self._evaluate(fixedLabelNode=fixed, movingLabelNode=surface)
        self.assertIn("no binary labelmap", cm.exception.problem)
        self.assertIn("Binary labelmap: Create", cm.exception.fix)
        binary = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
        self.assertFalse(surface.GetSegmentation().ContainsRepresentation(binary))
        self.assertEqual(self._node_ids(), nodes)

    def test_unplaced_points_leave_their_pair_out_with_a_note(self) -> None:
        self.moving_points.UnsetNthControlPointPosition(1)
        self.fixed_points.SetNthControlPointPositionMissing(3)
        out = self._evaluate()
        self.assertEqual(out["landmarks"]["after"]["n"], 2)
        self.assertLess(out["landmarks"]["after"]["max"], 1e-6)
        left = [n for n in out["notes"] if "left out: unplaced" in n]
        self.assertEqual(len(left), 2)
        self.assertIn("landmark 2 (F-2) left out: unplaced in 'M'", left[0])

    def test_wrong_node_types_are_refused_naming_the_fix_and_nothing_is_added(self) -> None:
        curve = self.scene.AddNewNodeByClass("vtkMRMLMarkupsCurveNode", "curve")
        table = self.scene.AddNewNodeByClass("vtkMRMLTableNode", "table")
        segmentation = self._segmentation(self.fixed_labels, {1: "a", 2: "b"}, [1, 2])
        grey_labels = mrml.volume_node_from_image(sitk.Cast(mrml.image_from_volume_node(self.fixed_labels),
                                                            sitk.sitkFloat32), self.scene, name="grey")
        nodes = self._node_ids()
        cases = [
            (dict(fixedPointsNode=self.fixed_labels), "not a markups point list", "Point List"),
            (dict(movingPointsNode=curve), "not a markups point list", "Point List"),
            (dict(fixedLabelNode=self.fixed_points), "neither a label map nor a segmentation", "label map"),
            (dict(movingLabelNode=grey_labels), "grey volume", "Convert to label map"),
            (dict(movingLabelNode=segmentation), "cannot be paired", "two segmentations or two label maps"),
            (dict(movingLabelNode=None), "without a moving one", "both"),
            (dict(labels=["a"]), "is not a whole number: label maps are matched by label number", "whole numbers"),
        ]
        for kwargs, problem, fix in cases:
            with self.subTest(**{k: getattr(v, "GetName", lambda v=v: v)() for k, v in kwargs.items()}):
                with self.assertRaises(InputError) as cm:
                    self._evaluate(**kwargs)
                self.assertIn(problem, cm.exception.problem)
                self.assertIn(fix, cm.exception.fix)
        with self.assertRaisesRegex(InputError, "not a transform node"):
            self._evaluate(table)
        with self.assertRaisesRegex(InputError, "not a volume node"):
            self.logic.evaluateRegistration(self.fixed, table)
        mrml.set_parent_transform(self.fixed, self.transform)
        with self.assertRaisesRegex(InputError, "fixed volume 'fixed' is under a transform"):
            self._evaluate()
        self.assertEqual(self._node_ids(), nodes)


class DependencyPlanTest(unittest.TestCase):
    """What the module installs before an action (MultimodalFusionLib.slicer_dependencies)."""

    def test_nothing_missing_nothing_to_do(self) -> None:
        self.assertEqual(slicer_dependencies.install_plan("deep", "torch", installed=lambda name: True), [])

    def test_torch_comes_from_the_extension_before_monai(self) -> None:
        steps = slicer_dependencies.install_plan("deep", "sitk", installed=lambda name: False)
        kinds = [s.kind for s in steps]
        self.assertEqual(kinds, [slicer_dependencies.PIP, slicer_dependencies.TORCH,
                                 slicer_dependencies.PIP_WITH_TORCH_PINNED])
        self.assertEqual(steps[0].requirements, ("scipy", "PyWavelets"))
        self.assertIn("monai>=1.3", steps[2].requirements)
        # no step pip-installs torch: pip would take PyPI's build, not the PyTorch extension's
        for step in steps:
            self.assertFalse([r for r in step.requirements if r.split("=")[0].split(">")[0] == "torch"])

    def test_only_the_action_s_needs(self) -> None:
        none = set()
        self.assertEqual(slicer_dependencies.install_plan("deep", None, installed=none.__contains__)[1].kind,
                         slicer_dependencies.TORCH)  # Fuse with deep
        self.assertEqual(slicer_dependencies.install_plan(None, "torch", installed=none.__contains__)[1].kind,
                         slicer_dependencies.TORCH)  # Register with the torch backend
        # Register with SimpleITK while the (unused) method is deep; Fuse with wavelet while the
        # (unused) backend is torch: no PyTorch
        for method, backend in ((None, "sitk"), ("wavelet", None)):
            steps = slicer_dependencies.install_plan(method, backend, installed=none.__contains__)
            self.assertEqual([s.kind for s in steps], [slicer_dependencies.PIP])

    def test_torch_already_there_monai_pinned_to_it(self) -> None:
        steps = slicer_dependencies.install_plan("wavelet", "torch", installed={"scipy", "pywt", "torch"}.__contains__)
        self.assertEqual(steps, [slicer_dependencies.Step(slicer_dependencies.PIP_WITH_TORCH_PINNED,
                                                          ("monai>=1.3", "safetensors"))])


if __name__ == "__main__":
    unittest.main()
