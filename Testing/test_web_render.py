"""Offscreen rendering of the web UI's views, without a browser or a trame server.

Builds trame-slicer's views headless (``DirectViewFactory``, offscreen EGL/OSMesa), loads the
demo volumes through :class:`MultimodalFusionLib.web.viewer.FusionViewer` and checks the
pixels: the PET colour table is visible where the PET-like image is hot, grey elsewhere.
"""

from __future__ import annotations

import unittest

import numpy as np
import SimpleITK as sitk

from MultimodalFusionLib.web.offscreen import configure_offscreen_rendering

configure_offscreen_rendering()

try:
    import trame_slicer  # noqa: F401
    _HAVE_TRAME_SLICER = True
except ImportError:  # pragma: no cover - the web extra is not installed
    _HAVE_TRAME_SLICER = False


def _colourfulness(pixels: np.ndarray) -> np.ndarray:
    """max(R, G, B) - min(R, G, B): 0 for grey pixels, large for the PET colours."""
    p = pixels.astype(np.int32)
    return p.max(axis=-1) - p.min(axis=-1)


@unittest.skipUnless(_HAVE_TRAME_SLICER, "trame-slicer is not installed (pip install 'slicer-multimodalfusion[web]')")
class OffscreenViewTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        from trame_slicer.core import SlicerApp
        from trame_slicer.views import DirectViewFactory, ViewLayoutDefinition

        from MultimodalFusionLib.web.demo import demo_images
        from MultimodalFusionLib.web.viewer import FusionViewer

        cls.app = SlicerApp()
        cls.app.view_manager.register_factory(DirectViewFactory(do_render_offscreen=True))
        cls.axial = cls.app.view_manager.create_view(ViewLayoutDefinition.axial_view())
        cls.threed = cls.app.view_manager.create_view(ViewLayoutDefinition.threed_view())
        for view in (cls.axial, cls.threed):
            view.render_window().SetSize(240, 240)
        cls.fixed, cls.moving, cls.truth = demo_images(spacing_mm=3.0)
        cls.viewer = FusionViewer(cls.app)
        cls.viewer.set_image("fixed", cls.fixed)
        # the PET realigned with the known transform stands in for a registration result
        cls.registered = sitk.Resample(cls.moving, cls.fixed, cls.truth, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        cls.viewer.set_image("registered", cls.registered)
        cls.viewer.show("registered", opacity=0.6, colormap="PET-Heat", reset_views=True)

    def _pet_at_pixels(self, shape: tuple[int, int]) -> np.ndarray:
        """The PET value under each pixel of the axial view (NaN outside the image)."""
        xy_to_ras = self.axial.get_view_node().GetXYToRAS()
        m = np.array([[xy_to_ras.GetElement(i, j) for j in range(4)] for i in range(4)])
        rows, cols = shape
        yy, xx = np.mgrid[0:rows, 0:cols]
        # captured rows are top first, VTK's XY origin is bottom-left
        xy = np.stack([xx.ravel() + 0.5, (rows - 1 - yy).ravel() + 0.5, np.zeros(xx.size), np.ones(xx.size)])
        ras = (m @ xy)[:3]
        lps = ras * np.array([[-1.0], [-1.0], [1.0]])
        arr = sitk.GetArrayViewFromImage(self.registered)
        out = np.full(xx.size, np.nan)
        for k in range(xx.size):
            idx = self.registered.TransformPhysicalPointToIndex(lps[:, k].tolist())
            if all(0 <= i < n for i, n in zip(idx, self.registered.GetSize())):
                out[k] = arr[idx[2], idx[1], idx[0]]
        return out.reshape(rows, cols)

    def _capture_axial(self, opacity: float) -> np.ndarray:
        from MultimodalFusionLib.web.viewer import capture_view

        self.viewer.set_opacity(opacity)
        try:
            return capture_view(self.axial)
        finally:
            self.viewer.set_opacity(0.6)

    def test_foreground_colours_where_pet_is_hot(self):
        coloured = self._capture_axial(0.6)
        grey = self._capture_axial(0.0)
        self.assertEqual(coloured.shape, (240, 240, 3))
        # without the foreground the T1 is plain grey, and it is there
        self.assertLess(np.percentile(_colourfulness(grey), 99), 10)
        self.assertGreater(grey.mean(), 10)
        pet = self._pet_at_pixels(coloured.shape[:2])
        finite = pet[np.isfinite(pet)]
        hot = pet > np.percentile(finite, 90)
        self.assertGreater(hot.sum(), 100)
        red_minus_blue = coloured[..., 0].astype(int) - coloured[..., 2].astype(int)
        # hot PET: PET-Heat's red-orange-yellow end, so red well above blue and far from grey
        self.assertGreater(np.median(red_minus_blue[hot]), 30)
        self.assertGreater(np.median(_colourfulness(coloured)[hot] - _colourfulness(grey)[hot]), 25)
        # no uptake (below the display threshold): the anatomy shows through unchanged
        none = pet < 0.05 * np.percentile(finite, 99)
        self.assertGreater(none.sum(), 100)
        diff = np.abs(coloured.astype(int) - grey.astype(int)).max(axis=-1)
        self.assertLess(np.median(diff[none]), 5)

    @staticmethod
    def _drag(view, dx: int, dy: int, button: str = "Left", start: tuple[int, int] = (120, 120)) -> None:
        """Press, move in 5 steps by (dx, dy) pixels (VTK's display y points up), release: a mouse drag."""
        from vtkmodules.vtkCommonCore import vtkCommand

        interactor = view.interactor()
        interactor.SetEventPosition(*start)
        interactor.InvokeEvent(vtkCommand.MouseMoveEvent)
        interactor.InvokeEvent(getattr(vtkCommand, f"{button}ButtonPressEvent"))
        for i in range(1, 6):
            interactor.SetEventPosition(start[0] + dx * i // 5, start[1] + dy * i // 5)
            interactor.InvokeEvent(vtkCommand.MouseMoveEvent)
        interactor.InvokeEvent(getattr(vtkCommand, f"{button}ButtonReleaseEvent"))

    def test_slice_views_name_the_patient_direction_at_each_edge(self):
        from vtkmodules.vtkCommonMath import vtkMatrix4x4

        from MultimodalFusionLib.web.viewer import orientation_labels

        # Slicer's axial view is radiological: the patient's left on the right of the screen, anterior up; a slice
        # turned 30 degrees about S (an oblique volume's axes) is labelled by the direction it mostly shows
        node = self.axial.get_view_node()
        m = node.GetSliceToRAS()
        self.assertEqual(orientation_labels([[m.GetElement(i, j) for j in range(3)] for i in range(3)]),
                         {"left": "R", "right": "L", "top": "A", "bottom": "P"})
        c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
        self.assertEqual(orientation_labels([[-c, -s, 0], [-s, c, 0], [0, 0, 1]]),
                         {"left": "R", "right": "L", "top": "A", "bottom": "P"})
        self.assertEqual(orientation_labels([[0, 0, 1], [-1, 0, 0], [0, 1, 0]]),  # Slicer's sagittal
                         {"left": "A", "right": "P", "top": "S", "bottom": "I"})
        # the letters are drawn in the view: light blue at the middle of its right edge, where the grey anatomy
        # (opacity 0: no colour table) and the black around it had been all there was
        grey = self._capture_axial(0.0)
        rows, cols = grey.shape[:2]
        right_edge = grey[int(0.35 * rows):int(0.65 * rows), int(0.92 * cols):]
        blue = (right_edge[..., 2] > 150) & (right_edge[..., 2].astype(int) - right_edge[..., 0] > 60)
        self.assertGreater(blue.sum(), 10)
        # the slice's position in the upper right corner, as Slicer's slice controller shows it, following the slice
        from MultimodalFusionLib.web.viewer import slice_position_text

        self.assertEqual(slice_position_text([[-1, 0, 0, 3], [0, 1, 0, -4], [0, 0, 1, 12.04], [0, 0, 0, 1]]), "S: 12.0 mm")
        self.assertEqual(slice_position_text([[0, 0, 1, -7.5], [-1, 0, 0, 2], [0, 1, 0, 1], [0, 0, 0, 1]]), "R: -7.5 mm")
        annotation = self.viewer._orientation_labels[self.axial.name]
        start = self.axial.get_slice_value()
        try:
            for offset in (start - 6.0, start + 9.0):
                self.axial.set_slice_value(offset)
                self.assertEqual(annotation.GetText(3), f"S: {self.axial.get_slice_value() + 0.0:.1f} mm")
        finally:
            self.axial.set_slice_value(start)
        # a tilted slice (30 degrees about R) shows Slicer's slice offset, the distance along its normal that the
        # slider holds, with no letter, as Slicer's controller words a Reformat slice: not the S of its centre, which
        # a pan in its plane changes (87.0 here while the slider says 50.3)
        saved = vtkMatrix4x4()
        saved.DeepCopy(node.GetSliceToRAS())
        c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
        tilted = np.array([[-1, 0, 0], [0, c, -s], [0, s, c]])
        try:
            for centre in ((20.0, 50.0, 87.0), (-30.0, 50.0 + 40 * c, 87.0 + 40 * s)):  # the second: panned 40 mm
                for i in range(3):
                    for j in range(3):
                        node.GetSliceToRAS().SetElement(i, j, tilted[i, j])
                    node.GetSliceToRAS().SetElement(i, 3, centre[i])
                node.UpdateMatrices()
                self.assertAlmostEqual(self.axial.get_slice_value(), 50.3442, places=3)
                self.assertEqual(annotation.GetText(3), "50.3 mm")
        finally:
            node.GetSliceToRAS().DeepCopy(saved)
            node.UpdateMatrices()
        self.assertEqual(annotation.GetText(3), f"S: {self.axial.get_slice_value() + 0.0:.1f} mm")
        # and follow the slice's orientation when it changes
        try:
            node.SetOrientation("Coronal")
            self.assertEqual(self.viewer._orientation_labels[self.axial.name].GetText(7), "S")
        finally:
            node.SetOrientation("Axial")
        self.assertEqual(self.viewer._orientation_labels[self.axial.name].GetText(7), "A")

    def test_a_mark_on_the_patients_left_lies_under_the_letter_l(self):
        """The letters against the pixels, not only against the slice node: a ball on the patient's left (anterior,
        superior) of an image stored LPS, stored with its x and y axes flipped (a RAS file's direction) and stored
        oblique lies, in the axial, coronal and sagittal view, at the edge labelled L (A, S)."""
        node = self.axial.get_view_node()
        annotation = self.viewer._orientation_labels[self.axial.name]

        def restore() -> None:
            node.SetOrientation("Axial")
            self.viewer.set_image("fixed", self.fixed)
            self.viewer.show("registered", opacity=0.6, colormap="PET-Heat", reset_views=True)

        self.addCleanup(restore)
        c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
        storages = {"LPS": np.eye(3), "x and y flipped": np.diag([-1.0, -1.0, 1.0]),
                    "oblique": np.array([[1, 0, 0], [0, c, -s], [0, s, c]]) @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])}
        marks = {"L": (36.0, 0.0, 0.0), "A": (0.0, -36.0, 0.0), "S": (0.0, 0.0, 36.0)}  # LPS mm: +x left, -y anterior
        views = {"Axial": "LA", "Coronal": "LS", "Sagittal": "AS"}  # the marks each view cuts through
        n, spacing = 40, 3.0
        ijk = np.stack(np.mgrid[0:n, 0:n, 0:n][::-1], axis=-1).reshape(-1, 3) * spacing  # x, y, z fastest first
        for storage, direction in storages.items():
            origin = -direction @ np.full(3, (n - 1) / 2 * spacing)  # the centre voxel at the origin
            lps = ijk @ direction.T + origin
            for letter, centre in marks.items():
                ball = (np.sum((lps - centre) ** 2, axis=1) < 12.0 ** 2).astype(np.float32).reshape(n, n, n)
                image = sitk.GetImageFromArray(100 * ball)
                image.SetSpacing([spacing] * 3)
                image.SetDirection(direction.ravel().tolist())
                image.SetOrigin(origin.tolist())
                self.viewer.set_image("fixed", image)
                for orientation, letters in views.items():
                    if letter not in letters:
                        continue
                    with self.subTest(storage=storage, mark=letter, view=orientation):
                        self.viewer.show(None, reset_views=True)  # trame-slicer's reset: its view's own orientation
                        node.SetOrientation(orientation)
                        self.axial.fit_view_to_content()
                        self.axial.set_slice_value(0.0)
                        pixels = self._capture_axial(0.0).astype(int)  # the phantom alone: no foreground over it
                        rows, cols = pixels.shape[:2]
                        grey = (pixels.max(axis=-1) - pixels.min(axis=-1) < 10) & (pixels.mean(axis=-1) > 60)
                        self.assertGreater(grey.sum(), 50)
                        yy, xx = np.nonzero(grey)
                        x, y = xx.mean() / cols - 0.5, 0.5 - yy.mean() / rows
                        edge = ("right" if x > 0 else "left") if abs(x) > abs(y) else ("top" if y > 0 else "bottom")
                        self.assertGreater(max(abs(x), abs(y)), 0.1)
                        position = {"bottom": 4, "right": 5, "left": 6, "top": 7}[edge]
                        self.assertEqual(annotation.GetText(position).strip(), letter, edge)

    def test_left_drag_in_a_slice_view_sets_the_anatomy_window_level_as_slicer(self):
        from vtkmodules.vtkCommonCore import vtkCommand

        from MultimodalFusionLib.web.viewer import capture_view, image_range

        seen = []
        self.viewer.enable_window_level_drag(seen.append)
        self.addCleanup(self.viewer.set_background_window_level, None)  # Auto again for the other tests
        self.viewer.show("registered")
        before = capture_view(self.axial)
        window0, level0 = self.viewer.current_background_window_level()
        functional = self.viewer.current_functional_range()
        lo, hi = image_range(self.fixed)
        gain = (hi - lo) / 240.0  # Slicer's: the image's range per pixel of the view's shorter side

        self._drag(self.axial, 48, 0)  # right: a wider window, the same level
        window1, level1 = self.viewer.current_background_window_level()
        self.assertAlmostEqual(window1 - window0, 48 * gain, delta=1e-6 * (hi - lo))
        self.assertAlmostEqual(level1, level0, delta=1e-9 * (hi - lo))
        self._drag(self.axial, 0, -36)  # down: a lower level (brighter anatomy), the same window
        window2, level2 = self.viewer.current_background_window_level()
        self.assertAlmostEqual(level2 - level1, -36 * gain, delta=1e-6 * (hi - lo))
        self.assertAlmostEqual(window2, window1, delta=1e-9 * (hi - lo))
        # the listener heard every step; the value is the user's, kept over a display change
        self.assertEqual(seen[-1], (window2, level2))
        self.assertEqual(self.viewer.background_window_level, (window2, level2))
        self.viewer.show("registered", colormap="PET-Rainbow2")
        self.viewer.show("registered", colormap="PET-Heat")
        self.assertEqual(self.viewer.current_background_window_level(), (window2, level2))
        # the functional overlay under the cursor keeps its own window (it has the threshold controls)
        self.assertEqual(self.viewer.current_functional_range(), functional)
        after = capture_view(self.axial)
        self.assertGreater(np.abs(after.astype(int) - before.astype(int)).mean(), 5, "the slice did not change")

        # the other mouse actions are left to Slicer: wheel scrolls slices, right-drag zooms
        offset = self.axial.get_slice_value()
        self.axial.interactor().InvokeEvent(vtkCommand.MouseWheelForwardEvent)
        self.assertNotEqual(self.axial.get_slice_value(), offset)
        field_of_view = self.axial.get_view_node().GetFieldOfView()[0]
        self._drag(self.axial, 0, 30, button="Right")
        self.assertNotEqual(self.axial.get_view_node().GetFieldOfView()[0], field_of_view)
        origin = self.axial.get_view_node().GetXYToRAS().GetElement(0, 3)
        self._drag(self.axial, 30, 0, button="Middle")  # and middle-drag pans
        self.assertNotEqual(self.axial.get_view_node().GetXYToRAS().GetElement(0, 3), origin)
        self.assertEqual(self.viewer.current_background_window_level(), (window2, level2))
        self.axial.interactor().InvokeEvent(vtkCommand.MouseWheelBackwardEvent)
        # and a left-drag in the 3D view still rotates it (the mouse mode is the scene's, for all views)
        camera = self.threed.first_renderer().GetActiveCamera()
        position = camera.GetPosition()
        self._drag(self.threed, 40, 0)
        self.assertNotEqual(camera.GetPosition(), position)
        self.viewer.reset_views()

        # the viewer's own changes are not taken for drags; Slicer's reset (double-click) is the Auto
        count = len(seen)
        self.viewer.set_background_window_level(100.0, 50.0)
        self.assertEqual(len(seen), count)
        self.viewer.node("fixed").GetDisplayNode().AutoWindowLevelOn()  # what the widget's reset does
        self.assertIsNone(seen[-1])
        self.assertIsNone(self.viewer.background_window_level)
        self.assertAlmostEqual(self.viewer.current_background_window_level()[0], window0, delta=1e-3 * window0)

    def test_64bit_integer_volumes_are_shown(self):
        # numpy's default integer, which nibabel writes to NIfTI as it is: Slicer's slice views cannot reslice
        # 64-bit integers ("Reslicing can only be done on types representable as double") and showed the
        # anatomy black and no functional overlay, while the web page said "Loading done"
        from MultimodalFusionLib.web.viewer import capture_view

        shown = capture_view(self.axial)
        self.addCleanup(self.viewer.show, "registered")
        self.addCleanup(self.viewer.set_image, "registered", self.registered)
        self.addCleanup(self.viewer.set_image, "fixed", self.fixed)
        for pixel in (sitk.sitkInt64, sitk.sitkUInt64):
            with self.subTest(sitk.GetPixelIDValueAsString(pixel)):
                self.viewer.set_image("fixed", sitk.Cast(sitk.RescaleIntensity(self.fixed, 0, 1000), pixel))
                self.viewer.set_image("registered", sitk.Cast(sitk.RescaleIntensity(self.registered, 0, 1000), pixel))
                self.viewer.show("registered")
                pixels = capture_view(self.axial)
                self.assertGreater(pixels.mean(), 0.5 * shown.mean())  # the anatomy, not black
                self.assertGreater((_colourfulness(pixels) > 40).mean(), 0.5 * (_colourfulness(shown) > 40).mean())

    def test_volume_rendering_of_fused_image(self):
        from MultimodalFusionLib.fusion import fuse
        from MultimodalFusionLib.web.viewer import capture_view

        empty = capture_view(self.threed)
        fused = fuse(self.fixed, self.registered, "average")
        self.viewer.set_image("fused", fused.grey_image)
        display = self.viewer.show_volume_rendering("fused", "MR-Default")
        self.assertTrue(display.GetVisibility())
        rendered = capture_view(self.threed)
        changed = np.abs(rendered.astype(int) - empty.astype(int)).max(axis=-1) > 30
        self.assertGreater(changed.mean(), 0.05, "the volume rendering drew nothing")


    def test_the_volume_rendering_of_a_z_scored_mr_leaves_its_background_transparent(self):
        # a z-scored MR (BraTS' subtrMeanDivStd: 0 outside the head, the head -2..5): fused, its background lies
        # inside the fused range, above the fused image's Otsu threshold where most of the head is darker, so the
        # preset's curve, started at that threshold, rendered the whole box around the head. The background must
        # show the 3D view's own colour: pixels just inside each corner of the volume's box, far from the head
        from MultimodalFusionLib.fusion import fuse
        from MultimodalFusionLib.web.viewer import _otsu, capture_view

        rng = np.random.default_rng(0)
        z, y, x = np.mgrid[:48, :48, :48]
        r = np.sqrt((z - 23.5) ** 2 + (y - 23.5) ** 2 + ((x - 23.5) / 1.2) ** 2)
        head = r < 18

        def z_scored(core: float) -> sitk.Image:  # a bright core in a dark head, z-scored over the head
            tissue = np.where(r < core, 3.0, np.where(r < 13, -0.8, 0.6)) + rng.normal(0, 0.3, r.shape)
            values = np.where(head, (tissue - tissue[head].mean()) / tissue[head].std(), 0.0)
            return sitk.GetImageFromArray(values.astype(np.float32))

        fused = fuse(z_scored(4.0), z_scored(6.0), "average").grey_image
        background = float(sitk.GetArrayViewFromImage(fused)[0, 0, 0])
        self.assertGreater(background, _otsu(fused))  # the case: the background above the threshold
        self.viewer.set_image("fused", fused)
        self.addCleanup(self.viewer.set_image, "fused", None)
        vr = self.app.volume_rendering
        for node in self.viewer.nodes.values():  # any volume another test rendered hidden
            if node is not None and vr.has_vr_display_node(node):
                vr.get_vr_display_node(node).SetVisibility(False)
        empty = capture_view(self.threed)  # the view's own colours
        self.viewer.show_volume_rendering("fused", "MR-Default")
        rendered = capture_view(self.threed)
        renderer = self.threed.first_renderer()
        rows = rendered.shape[0]
        corners = []
        for k in (0, 47):
            for j in (0, 47):
                for i in (0, 47):
                    lps = fused.TransformIndexToPhysicalPoint((i, j, k))
                    renderer.SetWorldPoint(-lps[0], -lps[1], lps[2], 1.0)
                    renderer.WorldToDisplay()
                    corners.append(renderer.GetDisplayPoint()[:2])
        centre = np.mean(corners, axis=0)
        for corner in corners:  # 6 pixels inside the box's corner (display y counts from the bottom)
            col, row_up = corner + 6.0 * (centre - corner) / np.linalg.norm(centre - corner)
            row, col = rows - 1 - int(round(row_up)), int(round(col))
            with self.subTest(corner=corner):
                self.assertLessEqual(np.abs(rendered[row, col].astype(int) - empty[row, col].astype(int)).max(), 4,
                                     f"the background rendered at pixel {(row, col)}")
        self.assertGreater(np.abs(rendered.astype(int) - empty.astype(int)).max(), 60)  # the head is rendered


if __name__ == "__main__":
    unittest.main()
