"""MultimodalFusionLib.mrml against a real vtkMRMLScene (Slicer's libraries: slicer-core wheel or Slicer).

The shared scenarios (MultimodalFusionLib.scenarios) are the same ones the Slicer module's
self-test runs; the extra cases here check error handling and the smaller helpers.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import tempfile
import unittest
from typing import Any

import numpy as np
import SimpleITK as sitk

try:
    import slicer  # noqa: F401  (the slicer-core wheel, or Slicer itself)

    HAVE_MRML = hasattr(slicer, "vtkMRMLScene")
except ImportError:  # pragma: no cover - slicer-core is a test dependency
    HAVE_MRML = False

from MultimodalFusionLib import InputError, scenarios

if HAVE_MRML:
    from MultimodalFusionLib import mrml


@unittest.skipUnless(HAVE_MRML, "needs Slicer's MRML libraries (pip install slicer-core)")
class MrmlScenarioTest(unittest.TestCase):
    """The shared scenarios, each on a fresh scene set up like Slicer's."""

    def setUp(self) -> None:
        self.scene = mrml.new_scene()

    def test_volume_round_trip_oblique_anisotropic(self) -> None:
        result = scenarios.check_volume_round_trip(self.scene)
        self.assertLess(result["max_ijk_to_ras_error_mm"], 1e-9)

    def test_transform_nodes_move_points_like_the_engine(self) -> None:
        errors = scenarios.check_transform_points(self.scene)
        self.assertLess(errors["rigid_to_parent_mm"], 1e-6)
        self.assertLess(errors["rigid+bspline_from_parent_mm"], 1e-4)
        # a field acting after a rigid part (a registration started from a field): Slicer keeps that node "to parent",
        # and its grid stayed cubic (ITK's is linear): 1.1 mm off before
        self.assertLess(errors["displacement+rigid_from_parent_mm"], 1e-4)

    def test_hardened_transform_reproduces_engine_resampling(self) -> None:
        numbers = scenarios.check_harden_reproduces_resampling(self.scene)
        self.assertLess(numbers["rigid_harden_rel_error"], 1e-5)
        self.assertLess(numbers["displacement_reslice_rel_error"], 1e-3)
        self.assertLess(numbers["displacement+rigid_reslice_rel_error"], 1e-4)  # 1.3e-3 with the grid left cubic

    def test_functional_display_slice_views_and_metrics_table(self) -> None:
        result = scenarios.check_display_and_table(self.scene)
        self.assertEqual(result["views"], 3)

    def test_save_bundle_and_reload(self) -> None:
        with tempfile.TemporaryDirectory() as folder:
            result = scenarios.check_save_and_reload(self.scene, folder)
            self.assertEqual(os.listdir(folder), ["results.mrb"])  # no temporary files left behind
        self.assertLess(result["transform_error"], 1e-9)


@unittest.skipUnless(HAVE_MRML, "needs Slicer's MRML libraries (pip install slicer-core)")
class MrmlHelpersTest(unittest.TestCase):
    def setUp(self) -> None:
        self.scene = mrml.new_scene()
        self.image = scenarios.head_phantom(scenarios.oblique_grid((16, 18, 14), (4.0, 4.0, 5.0),
                                                                   rotation=(0.1, 0.0, 0.2)), "mr")

    def test_new_scene_has_slicer_colours_and_views(self) -> None:
        for name in ("Grey", "PET-Heat", "PET-Rainbow2"):
            self.assertIsNotNone(self.scene.GetFirstNodeByName(name), name)
        self.assertEqual(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"), 3)
        self.assertEqual(self.scene.GetSingletonNode("Red", "vtkMRMLSliceNode").GetOrientation(), "Axial")

    def test_new_nodes_get_unique_names_and_never_replace_inputs(self) -> None:
        first = mrml.volume_node_from_image(self.image, self.scene, name="PET")
        second = mrml.volume_node_from_image(self.image, self.scene, name="PET")
        self.assertEqual(first.GetName(), "PET")
        self.assertEqual(second.GetName(), "PET_1")
        self.assertNotEqual(first.GetID(), second.GetID())

    def test_updating_an_existing_node_keeps_its_identity(self) -> None:
        node = mrml.volume_node_from_image(self.image, self.scene, name="out")
        doubled = self.image * 2
        same = mrml.volume_node_from_image(doubled, node=node)
        self.assertIs(same, node)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(mrml.image_from_volume_node(node)),
                                      sitk.GetArrayFromImage(doubled))

    def test_2d_image_becomes_single_slice_volume(self) -> None:
        slice2d = sitk.GetImageFromArray(np.arange(12, dtype=np.float32).reshape(3, 4))
        slice2d.SetSpacing([0.5, 0.8])
        node = mrml.volume_node_from_image(slice2d, self.scene, name="slice")
        back = mrml.image_from_volume_node(node)
        self.assertEqual(back.GetSize(), (4, 3, 1))
        self.assertEqual(back.GetSpacing()[:2], (0.5, 0.8))

    def test_an_image_data_extent_not_starting_at_zero_is_read_where_slicer_shows_it(self) -> None:
        """A node's image data cut with vtkImageClip (or a vtkImageReslice output) from the Python console: its
        first voxel is IJK (3, 2, 1), and Slicer shows it there. It had been read as IJK (0, 0, 0), so registered
        and fused 3, 2 and 1 voxels away (12, 8, 5 mm on this oblique grid) without a word."""
        import vtk

        whole = mrml.volume_node_from_image(self.image, self.scene, name="whole")
        clip = vtk.vtkImageClip()
        clip.SetInputData(whole.GetImageData())
        clip.SetOutputWholeExtent(3, 12, 2, 15, 1, 11)
        clip.ClipDataOn()
        clip.Update()
        cut = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "cut")
        cut.CopyOrientation(whole)
        cut.SetAndObserveImageData(clip.GetOutput())
        self.assertEqual(cut.GetImageData().GetExtent(), (3, 12, 2, 15, 1, 11))
        read = mrml.image_from_volume_node(cut)
        self.assertEqual(read.GetSize(), (10, 14, 11))
        np.testing.assert_allclose(read.GetOrigin(), self.image.TransformIndexToPhysicalPoint((3, 2, 1)), atol=1e-9)
        # the voxels are the original's at the same places, and what VTK (Slicer's slice views) shows
        np.testing.assert_array_equal(sitk.GetArrayFromImage(read),
                                      sitk.GetArrayFromImage(self.image)[1:12, 2:16, 3:13])
        shown = sitk.GetArrayFromImage(mrml.reslice_volume_node(cut, whole, interpolation="nearest"))
        back = sitk.GetArrayFromImage(sitk.Resample(read, self.image, sitk.Transform(), sitk.sitkNearestNeighbor))
        np.testing.assert_array_equal(back, shown)

    def test_mask_from_label_map_on_another_grid_is_resampled(self) -> None:
        label = sitk.Cast(self.image > 300, sitk.sitkUInt8)
        coarse = sitk.Resample(label, scenarios.oblique_grid((8, 9, 7), (8.0, 8.0, 10.0)), sitk.Transform(),
                               sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
        node = mrml.volume_node_from_image(coarse, self.scene, name="mask", label=True)
        mask = mrml.mask_from_node(node, self.image)
        self.assertEqual(mask.GetSize(), self.image.GetSize())
        overlap = np.logical_and(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(label)).sum()
        self.assertGreater(overlap / sitk.GetArrayFromImage(label).sum(), 0.6)

    def test_mask_from_segmentation(self) -> None:
        import slicer

        label = sitk.Cast(self.image > 300, sitk.sitkUInt8)
        label_node = mrml.volume_node_from_image(label, self.scene, name="seg source", label=True)
        segmentation = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Brain")
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label_node, segmentation)
        self.assertTrue(ok)
        mask = mrml.mask_from_node(segmentation, self.image)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(label))

    def test_segmentation_mask_leaves_the_scene_as_it_was(self) -> None:
        import slicer

        label_node = mrml.volume_node_from_image(sitk.Cast(self.image > 300, sitk.sitkUInt8), self.scene,
                                                 name="seg source", label=True)
        segmentation = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Brain")
        self.assertTrue(slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label_node,
                                                                                               segmentation))
        empty = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Nothing")
        ids = lambda: sorted(self.scene.GetNthNode(i).GetID() for i in range(self.scene.GetNumberOfNodes()))  # noqa: E731
        before = ids()
        for _ in range(2):  # the export's label map, display node and colour table are all removed again
            mrml.mask_from_node(segmentation, self.image)
        self.assertEqual(ids(), before)
        with self.assertRaisesRegex(InputError, "Segmentation 'Nothing' has no visible, non-empty segment"):
            mrml.mask_from_node(empty, self.image)
        self.assertEqual(ids(), before)
        self.assertIsNone(empty.GetDisplayNode())  # the input segmentation is left as it was

    def test_a_surface_segmentation_is_refused_as_a_mask_not_converted_in_place(self) -> None:
        """A segmentation holding closed surfaces only (loaded from an STL/OBJ file): the export converted the
        user's segmentation in place, adding a binary labelmap to it (in Slicer, whose Segmentations module
        registers the converters at start-up; here registered as it does), and under slicer-core (no converter)
        it was refused as 'no visible, non-empty segment' with the fix to paint it. Now refused, unchanged, with
        the fix to create the binary labelmap, as evaluateRegistration refuses it."""
        import slicer
        import vtk

        closed = slicer.vtkSegmentationConverter.GetSegmentationClosedSurfaceRepresentationName()
        binary = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
        volume = mrml.volume_node_from_image(self.image, self.scene, name="volume")
        ball = vtk.vtkSphereSource()
        centre = self.image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in self.image.GetSize()])
        ball.SetCenter(*mrml.ras_points_to_lps([centre])[0])
        ball.SetRadius(12.0)
        ball.Update()
        factory = slicer.vtkSegmentationConverterFactory.GetInstance()
        for with_converters in (False, True):
            with self.subTest(slicer_converters=with_converters):
                rules = []
                if with_converters:  # a segmentation takes the converters registered when it is created
                    rules = [slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule(),
                             slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule()]
                    for rule in rules:
                        factory.RegisterConverterRule(rule)
                try:
                    surface = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "surface")
                    surface.GetSegmentation().SetSourceRepresentationName(closed)
                    surface.AddSegmentFromClosedSurfaceRepresentation(ball.GetOutput(), "ball")
                finally:
                    for rule in rules:
                        factory.UnregisterConverterRule(rule)

                def state(surface: Any = surface) -> tuple:
                    segmentation = surface.GetSegmentation()
                    return (sorted(self.scene.GetNthNode(i).GetID() for i in range(self.scene.GetNumberOfNodes())),
                            [n for n in (binary, closed) if segmentation.ContainsRepresentation(n)],
                            surface.GetDisplayNode())

                before = state()
                self.assertEqual(before[1], [closed])
                with self.assertRaises(InputError) as cm:  # (the old code, converting, made a mask of it)
                    mrml.mask_from_node(surface, self.image, reference_node=volume)
                self.assertEqual(state(), before)  # the user's segmentation and the scene as they were
                self.assertIn("'surface' has no binary labelmap representation", cm.exception.problem)
                self.assertIn("Binary labelmap: Create", cm.exception.fix)
                self.scene.RemoveNode(surface)

    def test_masks_lie_where_slicer_shows_them_relative_to_their_volume(self) -> None:
        """A label map under a transform was used at its grid's place (not where it is shown), a segmentation
        where it is shown in world coordinates even when its volume is under the same transform (the moving
        volume is registered on its own grid): both are now placed relative to the volume, as shown."""
        import slicer
        import vtk

        box = np.zeros(sitk.GetArrayViewFromImage(self.image).shape, np.uint8)
        box[4:10, 5:12, 4:11] = 1
        box = sitk.GetImageFromArray(box)
        box.CopyInformation(self.image)
        label = mrml.volume_node_from_image(box, self.scene, name="box", label=True)
        segmentation = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "box segmentation")
        self.assertTrue(slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label, segmentation))
        volume = mrml.volume_node_from_image(self.image, self.scene, name="volume")
        shift = self.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift 12 mm right")
        matrix = vtk.vtkMatrix4x4()
        matrix.SetElement(0, 3, 12.0)
        shift.SetMatrixTransformToParent(matrix)
        # shown 12 mm to the right (RAS) is 12 mm toward -x in LPS: a voxel at p shows the mask's p + (12, 0, 0)
        shifted = sitk.Resample(box, self.image, sitk.TranslationTransform(3, (12.0, 0.0, 0.0)),
                                sitk.sitkNearestNeighbor, 0)

        def centroid(mask: sitk.Image) -> np.ndarray:
            stats = sitk.LabelShapeStatisticsImageFilter()
            stats.Execute(mask)
            return np.array(stats.GetCentroid(1))

        for node in (label, segmentation):
            with self.subTest(node.GetName()):
                mrml.set_parent_transform(node, shift)
                moved = mrml.mask_from_node(node, self.image, reference_node=volume)
                self.assertLess(np.linalg.norm(centroid(moved) - centroid(shifted)), 1.0)
                mrml.set_parent_transform(volume, shift)  # mask and volume moved together: the grid's mask
                together = mrml.mask_from_node(node, self.image, reference_node=volume)
                np.testing.assert_array_equal(sitk.GetArrayFromImage(together), sitk.GetArrayFromImage(box))
                mrml.set_parent_transform(volume, None)
                mrml.set_parent_transform(node, None)
        bspline = mrml.transform_node_from_sitk(sitk.BSplineTransformInitializer(self.image, [2, 2, 2]), self.scene)
        mrml.set_parent_transform(label, bspline)
        with self.assertRaisesRegex(InputError, "not linear"):
            mrml.mask_from_node(label, self.image, reference_node=volume)

    def test_empty_mask_is_refused(self) -> None:
        node = mrml.volume_node_from_image(sitk.Cast(self.image * 0, sitk.sitkUInt8), self.scene, label=True)
        with self.assertRaisesRegex(InputError, "empty"):
            mrml.mask_from_node(node, self.image)

    def test_unknown_colour_table_is_an_input_error(self) -> None:
        node = mrml.volume_node_from_image(self.image, self.scene)
        with self.assertRaisesRegex(InputError, "PET-Heat"):
            mrml.setup_functional_display(node, colormap="NoSuchColours")

    def test_bad_opacity_is_an_input_error(self) -> None:
        node = mrml.volume_node_from_image(self.image, self.scene)
        with self.assertRaises(InputError):
            mrml.show_fusion(node, node, opacity=1.5)

    def test_display_windows_are_the_volumes_own_percentiles(self) -> None:
        # the voxels were read through a view of a temporary image, after it was freed: windows from
        # whatever the allocator had put there (0.001-0.005 off at 32^3) and a segmentation fault at 256^3
        from MultimodalFusionLib.preprocess import robust_range

        rng = np.random.default_rng(0)
        for n in (32, 64):
            values = rng.gamma(2.0, 3.0, (n, n, n)).astype(np.float32)
            node = mrml.volume_node_from_image(sitk.GetImageFromArray(values), self.scene, name=f"pet{n}")
            for _ in range(3):  # window and level are stored: min and max come back within 1e-9
                display = mrml.setup_anatomical_display(node)
                np.testing.assert_allclose([display.GetWindowLevelMin(), display.GetWindowLevelMax()],
                                           robust_range(values, 0.5, 99.5), rtol=0, atol=1e-9)
                display = mrml.setup_functional_display(node, percentiles=(1.0, 99.5))
                np.testing.assert_allclose([display.GetWindowLevelMin(), display.GetWindowLevelMax()],
                                           robust_range(values, 1.0, 99.5), rtol=0, atol=1e-9)
                self.assertEqual(display.GetUpperThreshold(), float(values.max()))

    def test_a_padded_cts_display_window_leaves_out_its_padding(self) -> None:
        """A CT padded with -32768 outside its reconstruction circle (30% of the voxels) had been displayed with
        the window -32768..1000: its head a few grey levels near white. The window is the one of the voxels inside."""
        from MultimodalFusionLib.preprocess import robust_range

        z, y, x = np.mgrid[:4, :32, :32]
        fov = np.hypot(y - 15.5, x - 15.5) < 15
        ct = np.where(np.hypot(y - 15.5, x - 15.5) < 10, 40 + (x % 7) * 10, -1000 + (y % 5)).astype(np.int16)
        node = mrml.volume_node_from_image(sitk.GetImageFromArray(np.where(fov, ct, -32768).astype(np.int16)),
                                           self.scene, name="padded ct")
        display = mrml.setup_anatomical_display(node)
        np.testing.assert_allclose([display.GetWindowLevelMin(), display.GetWindowLevelMax()],
                                   robust_range(ct[fov], 0.5, 99.5), rtol=0, atol=1e-9)
        self.assertGreater(display.GetWindowLevelMin(), -1001.0)

    def test_a_padding_found_already_is_taken_as_given(self) -> None:
        """A caller that found the image's padding (the web viewer, once per image loaded) gives it to the display
        windows, which had found it again on the node's copy of the voxels (0.4-1 s a time on a 512x512x300 CT);
        a 2D image's, in its own shape, fits the node's one slice. The windows are those found here."""
        from MultimodalFusionLib import preprocess

        y, x = np.mgrid[:32, :32]
        fov = np.hypot(y - 15.5, x - 15.5) < 15
        ct = np.where(fov, np.where(np.hypot(y - 15.5, x - 15.5) < 10, 40 + (x % 7) * 10, -1000 + (y % 5)), -32768)
        real, calls = preprocess.padding_mask, []

        def counted(values):  # the real function, its calls counted
            calls.append(values.shape)
            return real(values)

        for name, values in (("3D", np.stack([ct] * 4).astype(np.int16)), ("2D", ct.astype(np.int16))):
            with self.subTest(name):
                node = mrml.volume_node_from_image(sitk.GetImageFromArray(values), self.scene, name=f"ct {name}")
                found = preprocess.robust_range(values, 0.5, 99.5)
                mask = real(values)
                preprocess.padding_mask = counted
                try:
                    background = mrml.setup_anatomical_display(node, padding=mask)
                    window = [background.GetWindowLevelMin(), background.GetWindowLevelMax()]
                    foreground = mrml.setup_functional_display(node, padding=mask)
                finally:
                    preprocess.padding_mask = real
                self.assertEqual(calls, [])
                np.testing.assert_allclose(window, found, rtol=0, atol=1e-9)
                np.testing.assert_allclose([foreground.GetWindowLevelMin(), foreground.GetWindowLevelMax()],
                                           preprocess.robust_range(values, 1.0, 99.5), rtol=0, atol=1e-9)

    def test_a_nan_voxel_leaves_the_functional_threshold_finite(self) -> None:
        # the upper threshold was the voxels' max(), NaN with one NaN voxel: no voxel passed it, so the whole
        # PET was transparent over the anatomy
        values = np.random.default_rng(0).gamma(2.0, 3.0, (20, 20, 20)).astype(np.float32)
        values[0, 0, 0] = np.nan
        node = mrml.volume_node_from_image(sitk.GetImageFromArray(values), self.scene, name="pet")
        display = mrml.setup_functional_display(node)
        self.assertEqual(display.GetUpperThreshold(), float(np.nanmax(values)))
        self.assertLess(display.GetLowerThreshold(), display.GetUpperThreshold())
        values[:] = np.nan  # nothing to show: the window's top
        node = mrml.volume_node_from_image(sitk.GetImageFromArray(values), self.scene, name="blank")
        display = mrml.setup_functional_display(node)
        self.assertFalse(np.isnan(display.GetUpperThreshold()))

    def test_label_maps_are_shown_with_their_own_colours(self) -> None:
        # a label map (e.g. the fixed volume of a registration, then run(show=True)) has a label-map display
        # node, without window, level or threshold: showing it ended in an AttributeError from inside MRML
        labels = mrml.volume_node_from_image(sitk.Cast(self.image > 50, sitk.sitkUInt8), self.scene,
                                             name="labels", label=True)
        grey = mrml.volume_node_from_image(self.image, self.scene, name="grey")
        colours = labels.GetDisplayNode().GetColorNodeID()
        for background, foreground in ((labels, grey), (grey, labels)):
            self.assertEqual(mrml.show_fusion(background, foreground, opacity=0.4), 3)
            composite = self.scene.GetSingletonNode("Red", "vtkMRMLSliceCompositeNode")
            self.assertEqual((composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID()),
                             (background.GetID(), foreground.GetID()))
            self.assertEqual(labels.GetDisplayNode().GetColorNodeID(), colours)
            self.assertEqual(grey.GetDisplayNode().GetColorNode().GetName(),
                             "PET-Heat" if foreground is grey else "Grey")

    def test_colour_nodes_are_added_to_a_bare_scene_on_demand(self) -> None:
        import slicer

        bare = slicer.vtkMRMLScene()
        node = mrml.volume_node_from_image(self.image, bare, name="pet")
        display = mrml.setup_functional_display(node, colormap="PET-Heat", threshold_fraction=None)
        self.assertEqual(display.GetColorNode().GetName(), "PET-Heat")
        self.assertFalse(display.GetApplyThreshold())
        self.assertEqual(mrml.show_fusion(node, None), 0)  # no slice views in a bare scene

    def test_non_volume_nodes_are_input_errors(self) -> None:
        table = self.scene.AddNewNodeByClass("vtkMRMLTableNode")
        with self.assertRaises(InputError):
            mrml.image_from_volume_node(table)
        with self.assertRaises(InputError):
            mrml.sitk_transform_from_node(table)
        empty = self.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
        with self.assertRaisesRegex(InputError, "no voxels"):
            mrml.image_from_volume_node(empty)

    def test_a_negative_spacing_is_read_where_slicer_shows_it_and_a_zero_one_is_named(self) -> None:
        """A spacing set from the console (node.SetSpacing): Slicer's IJK-to-RAS matrix multiplies each direction by
        it, so a negative one runs that axis the other way and 0 gives the voxels no size. Both had been a
        RuntimeError from SimpleITK's SetSpacing ("Negative spacing is not supported", "Zero-valued spacing"),
        the traceback the Logic's registerVolumes and fuseVolumes showed."""
        import vtk

        for spacing in ((4.0, -4.0, 5.0), (-4.0, -4.0, -5.0)):
            with self.subTest(spacing=spacing):
                node = mrml.volume_node_from_image(self.image, self.scene, name="flipped")
                node.SetSpacing(*spacing)
                read = mrml.image_from_volume_node(node)
                np.testing.assert_array_equal(sitk.GetArrayFromImage(read), sitk.GetArrayFromImage(self.image))
                matrix = vtk.vtkMatrix4x4()
                node.GetIJKToRASMatrix(matrix)
                for index in ((0, 0, 0), (15, 0, 0), (0, 17, 13), (15, 17, 13), (7, 9, 6)):
                    ras = matrix.MultiplyPoint([*index, 1.0])[:3]
                    np.testing.assert_allclose(read.TransformIndexToPhysicalPoint(index),
                                               [-ras[0], -ras[1], ras[2]], atol=1e-9)
        for spacing, axes in (((4.0, 0.0, 5.0), "axis J"), ((0.0, 4.0, 0.0), "axes I, K")):
            with self.subTest(spacing=spacing):
                node = mrml.volume_node_from_image(self.image, self.scene, name="flat")
                node.SetSpacing(*spacing)
                with self.assertRaisesRegex(InputError, f"Volume 'flat(_\\d+)?' has no valid voxel size along {axes}"
                                                        ".*Image Spacing"):
                    mrml.image_from_volume_node(node)

    def test_nested_linear_transforms_compose_from_world(self) -> None:
        outer = sitk.Euler3DTransform((0, 0, 0), 0.1, 0.0, -0.05, (3.0, 0.0, -2.0))
        inner = sitk.TranslationTransform(3, (1.0, 2.0, 3.0))
        outer_node = mrml.transform_node_from_sitk(outer, self.scene, name="outer")
        inner_node = mrml.transform_node_from_sitk(inner, self.scene, name="inner")
        mrml.set_parent_transform(inner_node, outer_node)
        combined = mrml.sitk_transform_from_node(inner_node)
        point = [10.0, -20.0, 5.0]
        # from world: the parent's "from parent" first, then the child's
        expected = inner.TransformPoint(outer.TransformPoint(point))
        np.testing.assert_allclose(combined.TransformPoint(point), expected, atol=1e-9)

    def test_deformable_transform_under_another_is_refused(self) -> None:
        reference = scenarios.oblique_grid((8, 8, 8), (4.0, 4.0, 4.0))
        bspline = sitk.BSplineTransformInitializer(reference, [2, 2, 2])
        node = mrml.transform_node_from_sitk(bspline, self.scene)
        parent = mrml.transform_node_from_sitk(sitk.TranslationTransform(3, (1.0, 0.0, 0.0)), self.scene)
        mrml.set_parent_transform(node, parent)
        with self.assertRaisesRegex(InputError, "Harden"):
            mrml.sitk_transform_from_node(node)

    def test_an_itk_label_map_becomes_a_label_map_node_not_a_crash(self) -> None:
        """An ITK label map (sitk.sitkLabelUInt16, what SimpleITK's LabelMap filters give) put into a node aborted the
        process (sitk.GetArrayFromImage: an uncaught C++ exception, "This method is not supported for LabelMaps").
        Its plain labels now go to a label-map volume node. In a child process: the old code killed it."""
        script = (
            "import numpy as np, SimpleITK as sitk\n"
            "from MultimodalFusionLib import mrml\n"
            "arr = np.zeros((3, 6, 7), np.uint16)\n"
            "arr[1, 2:4, 3:5] = 5\n"
            "arr[2, 0, 0] = 300\n"
            "labels = sitk.GetImageFromArray(arr)\n"
            "labels.SetOrigin((1.0, 2.0, 3.0))\n"
            "node = mrml.volume_node_from_image(sitk.Cast(labels, sitk.sitkLabelUInt16), mrml.new_scene(), name='L')\n"
            "back = mrml.image_from_volume_node(node)\n"
            "print(node.GetClassName(), back.GetPixelIDTypeAsString(), back.GetOrigin(),\n"
            "      np.array_equal(sitk.GetArrayFromImage(back), arr))\n")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
        self.assertEqual(done.returncode, 0, done.stderr[-2000:])
        self.assertEqual(done.stdout.strip(),
                         "vtkMRMLLabelMapVolumeNode 16-bit unsigned integer (1.0, 2.0, 3.0) True")

    @unittest.skipUnless(hasattr(signal, "SIGXFSZ"), "needs POSIX file size limits")
    def test_deformable_transform_through_a_full_temporary_disk_is_refused_and_the_process_lives(self) -> None:
        """A deformable transform goes to and from Slicer through a temporary .h5 file, written by a bare
        sitk.WriteTransform (to a node) and by Slicer's storage node (from a node), both ITK's HDF5 writer: past the
        room (a 30000-byte file size limit, as a full disk) the process crashed (SIGSEGV), after a refusal for the
        wrong reason ("H5Dclose failed"; "Harden or simplify the transform"). Refused before writing now, in a child
        process."""
        script = (
            "import resource, signal, sys\n"
            "import numpy as np, SimpleITK as sitk\n"
            "from MultimodalFusionLib import mrml\n"
            "from MultimodalFusionLib.errors import InputError\n"
            "scene = mrml.new_scene()\n"
            "bspline = sitk.BSplineTransformInitializer(sitk.Image(64, 64, 64, sitk.sitkFloat32), [10, 10, 10])\n"
            "bspline.SetParameters(np.random.default_rng(0).normal(size=6591).tolist())\n"
            "node = mrml.transform_node_from_sitk(bspline, scene)\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (30000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
            "for step in (lambda: mrml.transform_node_from_sitk(bspline, scene),\n"
            "             lambda: mrml.sitk_transform_from_node(node)):\n"
            "    try:\n"
            "        print('done', step())\n"
            "    except InputError as exc:\n"
            "        print('refused', exc)\n"
            "    sys.stdout.flush()\n")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with tempfile.TemporaryDirectory() as folder:
            env = dict(os.environ, TMPDIR=folder,
                       PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
            done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                                  timeout=120)
            self.assertEqual(os.listdir(folder), [])
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr[-2000:])
        lines = done.stdout.splitlines()
        self.assertEqual(len(lines), 2, done.stdout)
        for line, doing in zip(lines, ("Cannot pass the transform to Slicer", "Cannot take transform '")):
            self.assertTrue(line.startswith(f"refused {doing}"), line)
            self.assertIn("the file size limit is 30000 bytes (ulimit -f)", line)
            self.assertIn("Fix: Raise the file size limit (ulimit -f)", line)

    def test_metrics_table_says_n_a_beside_a_nan(self) -> None:
        # Slicer's table shows a NaN Value as "nan" beside an empty Text: an undefined number (an MI over no voxel)
        # says n/a there, as mmfusion and the report write it, and reads back as the NaN it is
        node = mrml.metrics_table_node({"registration": {"MI": float("nan"), "NCC": 0.5, "transform_type": "n"}},
                                       self.scene)
        table = node.GetTable()
        names, values, texts = (table.GetColumnByName(c) for c in ("Metric", "Value", "Text"))
        rows = {names.GetValue(r): (values.GetValue(r), texts.GetValue(r)) for r in range(table.GetNumberOfRows())}
        self.assertTrue(math.isnan(rows["registration.MI"][0]))
        self.assertEqual(rows["registration.MI"][1], "n/a")
        self.assertEqual(rows["registration.NCC"], (0.5, ""))
        self.assertEqual(rows["registration.transform_type"][1], "n")
        read = mrml.table_to_dict(node)
        self.assertTrue(math.isnan(read["registration.MI"]), read)
        self.assertEqual((read["registration.NCC"], read["registration.transform_type"]), (0.5, "n"))

    def test_scene_saved_as_mrml_with_data_files(self) -> None:
        mrml.volume_node_from_image(self.image, self.scene, name="MR")
        mrml.metrics_table_node({"a": 1.0}, self.scene)
        with tempfile.TemporaryDirectory() as folder:
            path = mrml.save_scene(os.path.join(folder, "scene.mrml"), self.scene)
            self.assertTrue(os.path.isfile(path))
            self.assertIn("MR.nrrd", os.listdir(folder))
            loaded = mrml.load_scene(path)
            np.testing.assert_array_equal(
                sitk.GetArrayFromImage(mrml.image_from_volume_node(loaded.GetFirstNodeByName("MR"))),
                sitk.GetArrayFromImage(self.image))
        with self.assertRaises(InputError):
            mrml.save_scene("results.png", self.scene)

    def test_a_failed_save_leaves_no_folder_it_made_and_a_file_in_its_place_is_named(self) -> None:
        """saveResults into a new folder that then failed (a file name too long) left that folder behind, empty;
        a file where the folder should be was os.makedirs' FileExistsError, a traceback in Slicer."""
        mrml.volume_node_from_image(self.image, self.scene, name="MR")
        with tempfile.TemporaryDirectory() as folder:
            open(os.path.join(folder, "taken"), "w").close()
            with self.assertRaisesRegex(InputError, "'.*taken' is a file"):
                mrml.save_scene(os.path.join(folder, "taken", "scene.mrb"), self.scene)
            with self.assertRaises(InputError):
                mrml.save_scene(os.path.join(folder, "new", "sub", "z" * 300 + ".mrb"), self.scene)
            self.assertEqual(os.listdir(folder), ["taken"])
            self.assertTrue(os.path.isfile(mrml.save_scene(os.path.join(folder, "new", "scene.mrb"), self.scene)))

    def test_mrml_scene_keeps_nodes_whose_names_differ_only_in_punctuation(self) -> None:
        # "PET 1" and "PET_1" would both be written to PET_1.nrrd, the second over the first
        arr = sitk.GetArrayFromImage(self.image)
        for name, value in (("PET 1", 1.0), ("PET_1", 2.0), ("pet_1", 3.0)):
            img = sitk.GetImageFromArray(np.full(arr.shape, value, np.float32))
            img.CopyInformation(self.image)
            mrml.volume_node_from_image(img, self.scene, name=name)
        with tempfile.TemporaryDirectory() as folder:
            loaded = mrml.load_scene(mrml.save_scene(os.path.join(folder, "scene.mrml"), self.scene))
            for name, value in (("PET 1", 1.0), ("PET_1", 2.0), ("pet_1", 3.0)):
                got = sitk.GetArrayFromImage(mrml.image_from_volume_node(loaded.GetFirstNodeByName(name)))
                self.assertEqual(float(got.mean()), value, name)

    def test_a_grid_node_moves_points_outside_its_grid_as_slicer_shows_them(self) -> None:
        """Slicer's grid transform gives a point outside its grid the displacement of the nearest edge voxel, however
        far out; ITK's field gives none past half a voxel. Given the grid it is evaluated on, sitk_transform_from_node
        extends the field with its edge values over it: inside, just outside and far outside the field (within the
        reference) the engine moves each point where vtk's transform from world does, alone and in a chain (the
        field applied first or second); the old code (no reference) was up to several mm off outside the grid.
        A field applied after an affine (a registration started from a field) is a node Slicer keeps "to parent":
        its grid had stayed cubic, up to 1.75 mm off (a coordinate) inside the grid."""
        import vtk

        rng = np.random.default_rng(0)

        def field(size, spacing, origin, axis) -> sitk.DisplacementFieldTransform:
            image = sitk.GetImageFromArray(rng.normal(0.0, 2.0, tuple(size[::-1]) + (3,)), isVector=True)
            image.SetSpacing(spacing)
            image.SetOrigin(origin)
            image.SetDirection(sitk.VersorTransform(axis, 0.4).GetMatrix())  # oblique
            return sitk.DisplacementFieldTransform(image)

        affine = sitk.AffineTransform((1.1, 0.1, 0.0, 0.0, 0.95, 0.05, 0.02, 0.0, 1.0), (5.0, -3.0, 2.0), (1, 2, 3))
        reference = sitk.Image((40, 40, 40), sitk.sitkFloat32)
        reference.SetSpacing((1.5, 1.5, 1.5))
        reference.SetOrigin((-20.0, -35.0, -25.0))
        small = ((6, 5, 4), (2.0, 2.5, 3.0), (10.0, -5.0, 3.0), (0.3, 0.2, 0.9))
        flip = np.array(mrml.LPS_TO_RAS)
        index = rng.uniform(0, 39, (600, 3))
        index[:6] = [[0, 0, 0], [39, 39, 39], [0, 39, 0], [39, 0, 39], [20, 20, 20], [8, 13, 11]]
        points = np.array(reference.GetOrigin()) + index * 1.5
        to_physical = np.array(sitk.VersorTransform(small[3], 0.4).GetMatrix()).reshape(3, 3) * np.array(small[1])
        inside = np.array(small[2]) + rng.uniform(0, 1, (20, 3)) * (np.array(small[0]) - 1) @ to_physical.T
        before = affine.GetInverse()  # within the field applied first, or applied after the affine
        points = np.concatenate([points, inside, [before.TransformPoint(p.tolist()) for p in inside]])
        for name, transform in (("grid", field(*small)),
                                ("grid, then affine", sitk.CompositeTransform([affine, field(*small)])),
                                ("affine, then grid", sitk.CompositeTransform([field(*small), affine])),
                                ("grid, then grid", sitk.CompositeTransform([field(*small), field((8, 7, 6), (3.0,) * 3,
                                                                             (-10.0, -20.0, -5.0), (1, 0, 0.2))]))):
            with self.subTest(name):
                node = mrml.transform_node_from_sitk(transform, self.scene, name=name)
                world = vtk.vtkGeneralTransform()
                node.GetTransformFromWorld(world)
                shown = np.array([world.TransformPoint((p * flip).tolist()) for p in points]) * flip
                engine = mrml.sitk_transform_from_node(node, reference)
                moved = np.array([engine.TransformPoint(p.tolist()) for p in points])
                # the field applied first (after the affine, there): its points inside, within half a voxel past it,
                # and beyond
                back = mrml.sitk_transform_from_node(node)
                first = back.GetNthTransform(back.GetNumberOfTransforms() - 1) if name != "grid" else back
                if name == "affine, then grid":
                    first, points_there = back.GetNthTransform(0), [affine.TransformPoint(p.tolist()) for p in points]
                else:
                    points_there = points.tolist()
                grid = first.GetDisplacementField()
                cidx = np.array([grid.TransformPhysicalPointToContinuousIndex(p) for p in points_there])
                past = np.abs(cidx - np.clip(cidx, 0, np.array(grid.GetSize()) - 1)).max(axis=1)
                self.assertTrue((past == 0).sum() >= 5 and ((past > 0) & (past < 0.5)).sum() >= 1
                                and (past > 5).sum() >= 100, np.histogram(past, [0, 1e-9, 0.5, 5, 1e9]))
                np.testing.assert_allclose(moved, shown, atol=1e-4 if name != "grid, then grid" else 5e-4)
        with self.subTest("a covering field and a B-spline are kept"):
            covering = sitk.DisplacementFieldTransform(sitk.Image((42, 42, 42), sitk.sitkVectorFloat64))
            covering.SetFixedParameters([42, 42, 42, -21.5, -36.5, -26.5, 1.5, 1.5, 1.5, 1, 0, 0, 0, 1, 0, 0, 0, 1])
            self.assertIs(mrml.fields_clamped_over(covering, reference), covering)
            bspline = sitk.BSplineTransformInitializer(self.image, [3, 3, 3])
            self.assertIs(mrml.fields_clamped_over(bspline, reference), bspline)
        with self.subTest("a grid too small for a far reference is refused"):
            far = sitk.Image((8, 8, 8), sitk.sitkFloat32)
            far.SetSpacing((300.0, 300.0, 300.0))
            with self.assertRaisesRegex(InputError, "grid transform 'g' .* would have to be extended to .* GB"):
                mrml.fields_clamped_over(field(*small), far, "g")

    def test_transform_node_reused_across_linear_and_deformable_results(self) -> None:
        # a B-spline run, then a rigid run into the same output node (what the panel does when the
        # stages change): the node must hold the rigid transform, not keep the old B-spline
        bspline = sitk.BSplineTransformInitializer(self.image, [3, 3, 3])
        params = np.array(bspline.GetParameters())
        params[:] = 2.0
        bspline.SetParameters(params.tolist())
        rigid = sitk.Euler3DTransform((0, 0, 0), 0.1, 0.0, 0.0, (1.0, 2.0, 3.0))
        node = mrml.transform_node_from_sitk(bspline, self.scene, name="reg")
        point = (5.0, 6.0, 7.0)
        for transform in (rigid, bspline, rigid):
            self.assertIs(mrml.transform_node_from_sitk(transform, self.scene, node=node), node)
            np.testing.assert_allclose(mrml.sitk_transform_from_node(node).TransformPoint(point),
                                       transform.TransformPoint(point), atol=1e-6)
        volume = mrml.volume_node_from_image(self.image, self.scene, name="v")
        with self.assertRaisesRegex(InputError, "not a transform node"):
            mrml.transform_node_from_sitk(rigid, self.scene, node=volume)
        with self.assertRaisesRegex(InputError, "not a volume node"):
            mrml.volume_node_from_image(self.image, self.scene, node=node)
        rgb = sitk.Compose([sitk.Cast(self.image, sitk.sitkUInt8)] * 3)
        vector = mrml.volume_node_from_image(rgb, self.scene, name="rgb")
        with self.assertRaisesRegex(InputError, "colour \\(vector\\) volume but the image is grey"):
            mrml.volume_node_from_image(self.image, self.scene, node=vector)



@unittest.skipUnless(HAVE_MRML, "needs Slicer's MRML libraries (pip install slicer-core)")
class VoxelValueUnitsTest(unittest.TestCase):
    """A PET's units: a node's VoxelValueUnits (a UCUM coded entry, as Slicer's PET DICOM extension sets them) and an
    image's DICOM Units (0054,1001) (as io.read_image keeps them, and the engine reads them) are one another's, both
    ways. Both had been dropped at the MRML bridge: a PET node in Bq/ml became an image that states no units, and a
    PET file's image a node without VoxelValueUnits."""

    def setUp(self) -> None:
        self.scene = mrml.new_scene(slice_views=False)
        z, y, x = np.indices((5, 12, 10))
        self.pet = sitk.GetImageFromArray((1000.0 + 40.0 * x + 7.0 * y + z).astype(np.float32))
        self.pet.SetSpacing((2.0, 2.0, 3.0))

    def node_with_units(self, value: str, scheme: str = "UCUM", meaning: str = "m",
                        quantity: tuple[str, str, str] | None = None) -> Any:
        node = mrml.volume_node_from_image(self.pet, self.scene, name="PET")
        entry = slicer.vtkCodedEntry()
        entry.SetValueSchemeMeaning(value, scheme, meaning)
        node.SetVoxelValueUnits(entry)
        if quantity is not None:
            stated = slicer.vtkCodedEntry()
            stated.SetValueSchemeMeaning(*quantity)
            node.SetVoxelValueQuantity(stated)
        return node

    @staticmethod
    def entry(entry: Any) -> tuple[str, str, str] | None:
        return (None if entry is None
                else (entry.GetCodeValue(), entry.GetCodingSchemeDesignator(), entry.GetCodeMeaning()))

    def test_a_nodes_voxel_value_units_become_the_images_dicom_units(self) -> None:
        from MultimodalFusionLib import io

        for (value, scheme), code in ((("{SUVbw}g/ml", "UCUM"), "GML"),  # Slicer's PET DICOM extension
                                      (("{SUVlbm}g/ml", "UCUM"), "GML"), (("g/ml{SUVbw}", "UCUM"), "GML"),
                                      (("Bq/ml", "UCUM"), "BQML"), (("Bq/mL", "UCUM"), "BQML"),
                                      (("{counts}", "UCUM"), "CNTS"), (("{SUVbsa}cm2/ml", "UCUM"), "CM2ML"),
                                      # a CT's, an MR's (Slicer's DICOM plugin), another scheme's: no PET Units
                                      (("[hnsf'U]", "UCUM"), ""), (("1", "UCUM"), ""), (("Bq/ml", "99X"), "")):
            with self.subTest(value=value, scheme=scheme):
                node = self.node_with_units(value, scheme)
                for image in (mrml.image_from_volume_node(node), mrml.image_from_volume_node(node, float32=True),
                              mrml.reslice_volume_node(node, node)):
                    self.assertEqual(io.dicom_units(image), code)
                self.assertEqual(mrml.node_dicom_units(node), code)
        plain = mrml.volume_node_from_image(self.pet, self.scene, name="no units")
        self.assertEqual(io.dicom_units(mrml.image_from_volume_node(plain)), "")

    def test_an_images_dicom_units_become_the_nodes_voxel_value_units_and_a_reused_node_loses_them(self) -> None:
        from MultimodalFusionLib import io

        expected = {"BQML": (("Bq/ml", "UCUM", "Becquerels/milliliter"), None),
                    "GML": (("{SUVbw}g/ml", "UCUM", "Standardized Uptake Value body weight"),
                            ("126400", "DCM", "Standardized Uptake Value")),
                    "CNTS": (("{counts}", "UCUM", "Counts"), None)}
        for code, (units, quantity) in expected.items():
            with self.subTest(code):
                image = io._with_units(sitk.Image(self.pet), code)
                # a 3D image, a 2D one (JoinSeries keeps no metadata) and 64-bit integers (cast to doubles)
                for kept in (image, io._with_units(image[:, :, 2], code),
                             io._with_units(sitk.Cast(image, sitk.sitkInt64), code)):
                    node = mrml.volume_node_from_image(kept, self.scene, name=code)
                    self.assertEqual(self.entry(node.GetVoxelValueUnits()), units)
                    self.assertEqual(self.entry(node.GetVoxelValueQuantity()), quantity)
                    # and back: the image read from the node states the same code
                    self.assertEqual(io.dicom_units(mrml.image_from_volume_node(node)), code)
                # the node reused for an image in no stated units (a fused image, a weight map) states none
                mrml.volume_node_from_image(self.pet, node=node)
                self.assertIsNone(node.GetVoxelValueUnits())
                self.assertIsNone(node.GetVoxelValueQuantity())

    def test_every_dicom_units_term_comes_back_from_the_node(self) -> None:
        """Each DICOM Units (0054,1001) defined term an image can hold (those io reads from a DICOM file or a BIDS
        sidecar) gives the node units that read back as the same term. MLMINML, MLML, NONE and STDDEV had no UCUM
        entry: the node got none, and the image read back from it no units (NONE and STDDEV: not SUV either way,
        but a NIfTI written from it lost its sidecar's Units)."""
        from MultimodalFusionLib import io

        self.assertEqual(len(io._DICOM_UNITS_TERMS), 19)  # PS3.3 C.8.9.1.1.3
        for code in sorted(io._DICOM_UNITS_TERMS):
            with self.subTest(code):
                node = mrml.volume_node_from_image(io._with_units(sitk.Image(self.pet), code), self.scene, name=code)
                self.assertIsNotNone(node.GetVoxelValueUnits())
                self.assertEqual(node.GetVoxelValueUnits().GetCodingSchemeDesignator(), "UCUM")
                self.assertEqual(mrml.node_dicom_units(node), code)
                self.assertEqual(io.dicom_units(mrml.image_from_volume_node(node)), code)

    def test_units_that_say_a_pet_only_with_the_quantity(self) -> None:
        """Plain g/ml is SUV (GML) only with the SUV quantity the PET DICOM extension sets (a mass density in g/ml
        had been taken for SUV, and a node made from it labelled "{SUVbw}g/ml"); "1" is an MR's "no units" unless
        the quantity is a nuclear medicine image's (NONE) or a Z-score (STDDEV); "%" is PCNT (DICOM's percent)."""
        suv = ("126400", "DCM", "Standardized Uptake Value")
        for value, quantity, code in (("g/ml", None, ""), ("g/ml", suv, "GML"), ("g/mL", suv, "GML"),
                                      ("g/ml", ("112031", "DCM", "Attenuation Coefficient"), ""),
                                      ("{SUVbw}g/ml", None, "GML"), ("1", None, ""),
                                      ("1", ("110852", "DCM", "MR signal intensity"), ""),  # Slicer's DICOM plugin's MR
                                      ("1", ("110821", "DCM", "Nuclear Medicine Tomographic Activity"), "NONE"),
                                      ("1", ("113071", "DCM", "Z-score"), "STDDEV"), ("1", suv, ""),
                                      ("%", None, "PCNT"), ("ml/min/ml", None, "MLMINML"), ("ml/ml", None, "MLML")):
            with self.subTest(value=value, quantity=quantity):
                self.assertEqual(mrml.node_dicom_units(self.node_with_units(value, quantity=quantity)), code)

    def test_a_pet_files_units_reach_the_node_and_a_saved_scene(self) -> None:
        """A DICOM PET series and an NRRD read with io.read_image (the project's loader) and put into a node: the
        node states the file's units, and a scene saved as .mrb or .mrml and loaded again still does (MRML writes
        them as the node's voxelValueUnits and voxelValueQuantity attributes)."""
        from test_dicom_inputs import _pet_body, write_pet_series

        from MultimodalFusionLib import io

        with tempfile.TemporaryDirectory() as folder:
            write_pet_series(os.path.join(folder, "dicom"), _pet_body(1, 8), "GML")
            io.write_image(io._with_units(sitk.Image(self.pet), "BQML"), os.path.join(folder, "pet.nrrd"))
            gml = mrml.volume_node_from_image(io.read_image(os.path.join(folder, "dicom")), self.scene, name="SUV")
            bqml = mrml.volume_node_from_image(io.read_image(os.path.join(folder, "pet.nrrd")), self.scene,
                                               name="Bq")
            want = {"SUV": (("{SUVbw}g/ml", "UCUM", "Standardized Uptake Value body weight"),
                            ("126400", "DCM", "Standardized Uptake Value")),
                    "Bq": (("Bq/ml", "UCUM", "Becquerels/milliliter"), None)}
            for node in (gml, bqml):
                self.assertEqual((self.entry(node.GetVoxelValueUnits()), self.entry(node.GetVoxelValueQuantity())),
                                 want[node.GetName()])
            for ext in (".mrb", ".mrml"):
                with self.subTest(ext):
                    loaded = mrml.load_scene(mrml.save_scene(os.path.join(folder, "saved" + ext), self.scene))
                    for name, (units, quantity) in want.items():
                        node = loaded.GetFirstNodeByName(name)
                        self.assertEqual(self.entry(node.GetVoxelValueUnits()), units)
                        self.assertEqual(self.entry(node.GetVoxelValueQuantity()), quantity)
                        self.assertEqual(io.dicom_units(mrml.image_from_volume_node(node)),
                                         "GML" if name == "SUV" else "BQML")


@unittest.skipUnless(HAVE_MRML, "needs Slicer's MRML libraries (pip install slicer-core)")
class DiffusionTensorNodesTest(unittest.TestCase):
    """A vtkMRMLDiffusionTensorVolumeNode (its tensors are the image data's tensors, no scalars) given to the
    Logic's register, fuse or run is refused as tensors, with the b0/FA route as the fix; before, it was "Volume
    'dti' holds no voxels. Fix: Load image data into it first", which it does. As the output volume, it is refused
    before the work; before, the scalar result was written into the DTI node, shown through its tensor display
    (VTK errors "Input 0 must have tensors")."""

    def setUp(self) -> None:
        import vtk
        from vtk.util import numpy_support

        from MultimodalFusionLib.slicer_logic import FusionLogic

        self.scene = mrml.new_scene()
        image = scenarios.head_phantom(scenarios.oblique_grid((16, 18, 14), (4.0, 4.0, 5.0)), "mr")
        self.fixed = mrml.volume_node_from_image(image, self.scene, name="b0")
        self.moving = mrml.volume_node_from_image(image, self.scene, name="b0 moved")
        self.dti = self.scene.AddNewNodeByClass("vtkMRMLDiffusionTensorVolumeNode", "dti")
        data = vtk.vtkImageData()
        data.SetDimensions(16, 18, 14)
        tensors = np.tile(np.diag([3e-3, 1e-3, 1e-3]).ravel().astype(np.float32), (16 * 18 * 14, 1))
        array = numpy_support.numpy_to_vtk(tensors, deep=True)
        array.SetName("tensors")
        data.GetPointData().SetTensors(array)
        self.dti.SetAndObserveImageData(data)
        self.logic = FusionLogic(self.scene)

    def test_tensor_input_is_refused_naming_the_route(self) -> None:
        for name, call in (("register moving", lambda: self.logic.registerVolumes(self.fixed, self.dti)),
                           ("register fixed", lambda: self.logic.registerVolumes(self.dti, self.fixed)),
                           ("fuse", lambda: self.logic.fuseVolumes(self.fixed, self.dti)),
                           ("run", lambda: self.logic.run(self.fixed, self.dti))):
            with self.subTest(name), self.assertRaises(InputError) as cm:
                call()
            self.assertIn("'dti' is a diffusion tensor volume", cm.exception.problem)
            self.assertIn("FA", cm.exception.fix)
            self.assertIn("Resample DTI Volume", cm.exception.fix)
            self.assertIn("mmfusion resample", cm.exception.fix)

    def data_node(self, class_name: str, name: str, values: np.ndarray) -> object:
        """A volume node of ``class_name`` whose image data's scalars are ``values`` (voxels, components)."""
        import vtk
        from vtk.util import numpy_support

        node = self.scene.AddNewNodeByClass(class_name, name)
        data = vtk.vtkImageData()
        data.SetDimensions(16, 18, 14)
        data.GetPointData().SetScalars(numpy_support.numpy_to_vtk(values, deep=True))
        node.SetAndObserveImageData(data)
        return node

    def test_dwi_input_is_refused_as_diffusion_weighted(self) -> None:
        """A DWI node (its gradient images the components of its scalars) is named as one, with the baseline route.
        Before, it was "7 components per pixel; only grey, RGB and RGBA" with the fix to take one component, and
        with 6 or 9 gradient images "diffusion tensors, if it is a DTI volume whose file does not say so"."""
        rng = np.random.default_rng(0)
        for count in (7, 6):
            dwi = self.data_node("vtkMRMLDiffusionWeightedVolumeNode", f"dwi{count}",
                                 rng.uniform(1, 100, (16 * 18 * 14, count)).astype(np.float32))
            for name, call in (("register", self.logic.registerVolumes), ("fuse", self.logic.fuseVolumes)):
                with self.subTest(name, gradients=count), self.assertRaises(InputError) as cm:
                    call(self.fixed, dwi)
                self.assertIn(f"'dwi{count}' is a diffusion-weighted volume ({count} gradient images",
                              cm.exception.problem)
                self.assertNotIn("tensors, if", cm.exception.problem)
                self.assertIn("baseline (b0)", cm.exception.fix)

    def test_scalar_label_and_rgb_nodes_are_not_taken_for_diffusion_volumes(self) -> None:
        """The diffusion checks go by the DTI/DWI classes: an RGB vector volume (a vtkMRMLTensorVolumeNode too), a
        label map and a scalar volume are read as before, and an RGB node is no diffusion output."""
        rng = np.random.default_rng(0)
        rgb = self.data_node("vtkMRMLVectorVolumeNode", "rgb", rng.integers(0, 255, (16 * 18 * 14, 3), np.uint8))
        label = self.data_node("vtkMRMLLabelMapVolumeNode", "label", rng.integers(0, 3, 16 * 18 * 14, np.uint8))
        for node, components in ((rgb, 3), (label, 1), (self.fixed, 1)):
            with self.subTest(node.GetName()):
                self.assertEqual(mrml.image_from_volume_node(node).GetNumberOfComponentsPerPixel(), components)
        with self.assertRaises(InputError) as cm:  # refused as a colour node, not as a diffusion volume
            self.logic.fuseVolumes(self.fixed, self.moving, outputVolumeNode=rgb)
        self.assertNotIn("diffusion", str(cm.exception))
        self.logic.fuseVolumes(self.fixed, rgb)  # an RGB input is fused (as grey), not refused

    def test_tensor_output_is_refused_before_the_work(self) -> None:
        nodes = self.scene.GetNumberOfNodes()
        for name, call in (
                ("register", lambda: self.logic.registerVolumes(self.fixed, self.moving, outputVolumeNode=self.dti)),
                ("fuse", lambda: self.logic.fuseVolumes(self.fixed, self.moving, outputVolumeNode=self.dti))):
            with self.subTest(name), self.assertRaises(InputError) as cm:
                call()
            self.assertIn("diffusion volume", cm.exception.problem)
        self.assertEqual(self.scene.GetNumberOfNodes(), nodes)  # nothing made
        self.assertIsNone(self.dti.GetImageData().GetPointData().GetScalars())  # nor written into the DTI node


if __name__ == "__main__":
    unittest.main()
