"""The web UI's application object driven in-process (no browser): uploads, downloads, colour
tables, repeated runs and the error banner. ``test_web_browser.py`` covers the page itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import io as io_text
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

import SimpleITK as sitk

from MultimodalFusionLib import io
from MultimodalFusionLib.errors import InputError
from MultimodalFusionLib.web.offscreen import configure_offscreen_rendering

configure_offscreen_rendering()

try:
    import trame_slicer  # noqa: F401

    _HAVE_TRAME_SLICER = True
except ImportError:  # pragma: no cover - the web extra is not installed
    _HAVE_TRAME_SLICER = False


def write_two_dicom_series(folder: Path) -> None:
    """Two 8x8x3 DICOM series in one folder: "T1" (slices 5, 15, 25) and "PET" (105, 115, 125)."""
    folder.mkdir()
    for uid, description in (("1.2.826.0.1.3680043.2.1125.7", "T1"), ("1.2.826.0.1.3680043.2.1125.8", "PET")):
        for k in range(3):
            slice_ = sitk.Image([8, 8], sitk.sitkInt16) + 10 * k + (105 if description == "PET" else 5)
            for tag, value in (("0008|0060", "CT"), ("0020|000e", uid), ("0008|103e", description),
                               ("0020|0032", f"0\\0\\{2.0 * k}"), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                               ("0028|0030", "0.5\\0.5"), ("0008|0018", f"{uid}.{k + 1}")):
                slice_.SetMetaData(tag, value)
            writer = sitk.ImageFileWriter()
            writer.KeepOriginalImageUIDOn()
            writer.SetFileName(str(folder / f"{description}{k}.dcm"))
            writer.Execute(slice_)


class FusionWindowPresetsOffered(unittest.TestCase):
    """Which fusion window presets the panel offers an image (app._fusion_window_choices): SUV windows for a PET in SUV
    only. A DICOM PET's Units (0054,1001), which io.read_image keeps, decide it; without them the values do, and an
    integer image (a SPECT in counts 0..40, a mask) had been offered SUV 0..5 and 0..8 as a PET in SUV is."""

    def _offered(self, image: sitk.Image) -> set[str]:
        from MultimodalFusionLib.web.app import _fusion_window_choices

        return {key for key in _fusion_window_choices(image)[1] if key.startswith(("suv", "ct-"))}

    def test_each_ct_fusion_window_says_its_window_and_level(self) -> None:
        """The fusion's CT windows (preprocess.CT_WINDOWS: radiology's brain W80/L40) differ from the display presets
        beside them (Slicer's CT-Brain W100/L50, viewer.CT_WINDOW_LEVEL_PRESETS): both were titled by name only, so
        a user read them as one (h_A22's web audit). Each fusion title names its own W and L."""
        from MultimodalFusionLib.web.app import _CT_FUSION_WINDOWS

        for key, (title, (width, level)) in _CT_FUSION_WINDOWS.items():
            with self.subTest(key=key):
                self.assertTrue(title.endswith(f"(W{width:g} L{level:g})"), title)
        self.assertEqual(_CT_FUSION_WINDOWS["ct-brain"][0], "CT brain (W80 L40)")

    def test_suv_windows_for_a_pet_in_suv_only(self) -> None:
        import numpy as np
        from test_dicom_inputs import _pet_body, write_pet_series

        from MultimodalFusionLib.web.viewer import looks_like_suv

        rng = np.random.default_rng(0)
        counts = np.where(_pet_body(1, 2) > 0, rng.poisson(12, (4, 16, 16)), 0)
        cases = {  # name: (image, SUV presets offered)
            "SPECT in counts, int16, no units": (sitk.GetImageFromArray(counts.astype(np.int16)), False),
            "mask, uint16": (sitk.GetImageFromArray((counts > 0).astype(np.uint16)), False),
            "PET in SUV, float, no units": (sitk.GetImageFromArray(_pet_body(0.5, 9).astype(np.float32) / 1.3), True),
            "PET in Bq/mL, float, no units": (sitk.GetImageFromArray(_pet_body(2000, 20000).astype(np.float32)), False),
        }
        with tempfile.TemporaryDirectory() as root:
            # DICOM series: their Units decide, whatever the values (a low-count PET in Bq/mL reads 5..50)
            for units, low, high, suv in (("BQML", 5, 50, False), ("GML", 1, 8, True), ("CNTS", 2, 40, False),
                                          ("BQML", 2000, 20000, False)):
                folder = os.path.join(root, f"{units}-{high}")
                write_pet_series(folder, _pet_body(low, high), units)
                cases[f"DICOM PET, Units {units}, {low}..{high}"] = (io.read_image(folder), suv)
            for name, (image, suv) in cases.items():
                with self.subTest(name):
                    self.assertEqual(looks_like_suv(image), suv)
                    self.assertEqual(self._offered(image), {"suv-5", "suv-8"} if suv else set())


    def test_ct_windows_for_a_ct_padded_with_int16s_lowest_and_not_for_a_padded_mr_or_pet(self) -> None:
        """A CT whose field of view is padded with -32768 (int16's lowest value, outside the reconstruction circle of
        many scanners' exports) had been offered no CT windows (looks_like_ct refused any value below -3100 HU); an MR
        or a PET padded the same way, and images whose values run on below -3100, must still get none; so for such
        images resampled, turned 10 degrees (linear, B-spline), whose CT had been offered none either."""
        import numpy as np

        from MultimodalFusionLib.web.viewer import looks_like_ct

        rng = np.random.default_rng(1)
        z, y, x = np.mgrid[:6, :40, :40]
        radius = np.hypot(y - 19.5, x - 19.5)
        fov, body, bone = radius < 19, radius < 14, radius < 4
        ct = np.where(body, rng.normal(40, 15, fov.shape), -1000 + rng.normal(0, 5, fov.shape))
        ct = np.where(bone, 1000.0, ct)
        mr = np.where(body, rng.normal(600, 80, fov.shape), rng.normal(5, 3, fov.shape)).clip(0)
        pet = np.where(body, rng.uniform(2000, 20000, fov.shape), rng.uniform(0, 50, fov.shape))

        def image(values: np.ndarray, dtype: type, padding: float | None) -> sitk.Image:
            return sitk.GetImageFromArray((values if padding is None else np.where(fov, values, padding)).astype(dtype))

        ramp = np.linspace(-5000, 5000, fov.size).reshape(fov.shape)  # a difference image, a phase map
        cases = {  # name: (image, CT windows offered)
            "CT, int16, no padding": (image(ct, np.int16, None), True),
            "CT, int16, padded with -32768": (image(ct, np.int16, -32768), True),
            "CT, float, padded with -32768": (image(ct, np.float32, -32768), True),
            "CT, int16, padded with -3024 (within HU)": (image(ct, np.int16, -3024), True),
            "MR, int16, padded with -32768": (image(mr, np.int16, -32768), False),
            "PET in Bq/mL, float, padded with -32768": (image(pet, np.float32, -32768), False),
            "MR, int16, no padding": (image(mr, np.int16, None), False),
            "values -5000..5000, padded with -32768": (image(ramp, np.float32, -32768), False),
            "values -5000..5000": (image(ramp, np.float32, None), False),
            "every voxel -32768": (image(np.full(fov.shape, -32768), np.int16, None), False),
        }
        # resampled (mmfusion resample, run's moving_resampled), turned 10 degrees: the padding's edge holds mixtures
        # of -32768 and the image (-20000, -5000, -500...), B-spline's overshoot too, which had made a CT read as none
        from MultimodalFusionLib.preprocess import resample

        turn = sitk.Euler3DTransform((19.5, 19.5, 2.5), 0.0, 0.0, np.radians(10.0))
        for interpolation in ("linear", "bspline"):
            for kind, values, dtype, is_ct in (("CT", ct, np.int16, True), ("MR", mr, np.int16, False),
                                               ("values -5000..5000", ramp, np.float32, False)):
                turned = resample(image(values, dtype, -32768), image(values, dtype, -32768), turn, interpolation)
                cases[f"{kind}, padded with -32768, turned ({interpolation})"] = (turned, is_ct)
        for name, (volume, is_ct) in cases.items():
            with self.subTest(name):
                self.assertEqual(looks_like_ct(volume), is_ct)
                self.assertEqual(self._offered(volume), {"ct-soft-tissue", "ct-lung", "ct-bone", "ct-brain"}
                                 if is_ct else set())

    def test_the_viewers_ranges_leave_out_a_cts_padding(self) -> None:
        """A CT padded with -32768 outside its reconstruction circle had its window/level sliders run from -32768,
        its volume rendering start at the Otsu threshold between the padding and the rest (-32504 here, far below
        the air) and its Engine default fusion window shown as -32768..1000: each is the CT's own, inside."""
        import numpy as np
        from padded_ct import padded_head_ct

        from MultimodalFusionLib.web import viewer
        from MultimodalFusionLib.web.app import _engine_default_window

        head = padded_head_ct(np.random.default_rng(5))
        ct, fov, padded, unpadded = head.ct, head.fov, head.padded, head.unpadded
        self.assertEqual(viewer.image_range(padded), (float(ct[fov].min()), 1000.0))
        self.assertGreater(viewer._otsu(padded), -1000.0)  # between the air and the head
        self.assertAlmostEqual(viewer._otsu(padded), viewer._otsu(unpadded), delta=20.0)
        self.assertEqual(viewer._percentiles(padded, 1.0, 99.9)[0], float(np.percentile(ct[fov], 1.0)))
        for side, method in (("a", "average"), ("b", "overlay")):
            with self.subTest(side=side, method=method):
                self.assertEqual(_engine_default_window(padded, side, method)[0][0], float(ct[fov].min()))

    def test_the_percentile_window_leaves_out_the_padding_the_ct_rule_leaves_out(self) -> None:
        """The 1st-99th percentile fusion window of a CT padded with -32768 (int16's lowest, outside the reconstruction
        circle) had been -32768..1000, its low end the padding (29% of the voxels here): it leaves out the one fill
        value below -3100 that looks_like_ct leaves out (preprocess.without_padding), for an MR so padded too, and is the
        window of the voxels inside the field of view."""
        import numpy as np

        from MultimodalFusionLib.preprocess import robust_range
        from MultimodalFusionLib.web.app import _FW_PERCENTILE, _fusion_window_choices

        rng = np.random.default_rng(2)
        z, y, x = np.mgrid[:6, :40, :40]
        radius = np.hypot(y - 19.5, x - 19.5)
        fov, body = radius < 19, radius < 14
        ct = np.where(body, rng.normal(40, 15, fov.shape), -1000 + rng.normal(0, 5, fov.shape))
        ct = np.where(radius < 4, 1000.0, ct)
        mr = np.where(body, rng.normal(600, 80, fov.shape), rng.normal(5, 3, fov.shape)).clip(0)
        ramp = np.linspace(-3000, 3000, fov.size).reshape(fov.shape)  # values within HU: the padding only is left out
        for name, values, dtype in (("CT, int16", ct, np.int16), ("CT, float", ct, np.float32),
                                    ("MR, int16", mr, np.int16), ("values -3000..3000", ramp, np.float32)):
            inside = values.astype(dtype)
            expected = robust_range(inside[fov], 1.0, 99.0)
            for padding in (-32768, None):
                with self.subTest(name, padding=padding):
                    padded = inside if padding is None else np.where(fov, inside, padding).astype(dtype)
                    window = _fusion_window_choices(sitk.GetImageFromArray(padded))[1][_FW_PERCENTILE]
                    if padding is None:
                        np.testing.assert_allclose(window, robust_range(inside, 1.0, 99.0))
                    else:
                        self.assertGreater(window[0], -3100.0)
                        np.testing.assert_allclose(window, expected)
        every = sitk.GetImageFromArray(np.full((2, 4, 4), -32768, np.int16))  # nothing but padding: its own range
        self.assertEqual(_fusion_window_choices(every)[1][_FW_PERCENTILE], (-32768.0, -32767.0))

    def test_the_engine_default_of_grey_stored_as_rgb_is_the_grey_images(self) -> None:
        """fuse takes a moving image whose R, G and B are equal as grey (fusion._is_grey_rgb), so the overlay windows
        it min..99.5th percentile; the panel showed 'its luminance, 0..255' for any image of three components: the
        window shown, given to fuse, fused another image (0..255 shown, 0..251 used here)."""
        import numpy as np

        from MultimodalFusionLib.fusion import fuse
        from MultimodalFusionLib.web.app import _engine_default_window

        rng = np.random.default_rng(0)
        grey = (rng.random((6, 32, 32)) ** 3 * 255).astype(np.uint8)
        anatomy = sitk.GetImageFromArray(rng.integers(0, 255, grey.shape).astype(np.uint8))
        colours = (rng.random(grey.shape + (3,)) * 255).astype(np.uint8)
        for name, values in (("grey as RGB", np.stack([grey] * 3, axis=-1)), ("colour", colours)):
            moving = sitk.GetImageFromArray(values, isVector=True)
            for method in ("overlay", "average"):
                with self.subTest(name, method=method):
                    default = fuse(anatomy, moving, method)
                    shown, _words = _engine_default_window(moving, "b", method)
                    if "window_b" in default.parameters:  # the engine records the overlay's window
                        np.testing.assert_allclose(default.parameters["window_b"], shown, rtol=1e-12)
                    given = fuse(anatomy, moving, method, window_b=shown)
                    np.testing.assert_allclose(sitk.GetArrayViewFromImage(given.image),
                                               sitk.GetArrayViewFromImage(default.image), atol=1e-3)


@unittest.skipUnless(_HAVE_TRAME_SLICER, "trame-slicer is not installed (pip install 'slicer-multimodalfusion[web]')")
class WebAppTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        from trame.app import get_server

        from MultimodalFusionLib.web.app import FusionWebApp
        from MultimodalFusionLib.web.demo import demo_images

        cls._tmp = tempfile.TemporaryDirectory()
        cls.root = Path(cls._tmp.name)
        cls.workdir = cls.root / "work"
        cls.app = FusionWebApp(get_server("mmfusion-test-web-app", client_type="vue3"), workdir=str(cls.workdir))
        cls.controls_enabled_before_load = (cls.app.state.wl_enabled, cls.app.state.fg_range_enabled)
        fixed, moving, truth = demo_images(spacing_mm=4.0)
        cls.fixed_path, cls.moving_path = str(cls.root / "t1.nii.gz"), str(cls.root / "pet.nii.gz")
        sitk.WriteImage(fixed, cls.fixed_path)
        sitk.WriteImage(moving, cls.moving_path)
        # the PET turned a further 90 degrees about the vertical axis: beyond the default start's reach
        centre = moving.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2.0 for s in moving.GetSize()])
        turn = sitk.Euler3DTransform(centre, 0.0, 0.0, math.radians(90.0), (0.0, 0.0, 0.0))
        cls.turned_path = str(cls.root / "pet-turned.nii.gz")
        sitk.WriteImage(sitk.Resample(moving, moving, turn, sitk.sitkLinear, 0.0), cls.turned_path)
        # turned(y) = moving(turn(y)): the fixed -> turned truth is turn^-1 after the demo's truth
        cls.fixed_image = fixed
        cls.turned_truth = sitk.CompositeTransform([turn.GetInverse(), truth])
        cls.loop = asyncio.new_event_loop()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.app.worker.shutdown()
        cls.loop.close()
        cls._tmp.cleanup()

    def _do(self, start) -> None:
        """Start a job the way a button does (on the loop) and wait for it."""
        async def run() -> None:
            start()
            await self.app.worker.wait()

        self.loop.run_until_complete(run())

    def _load(self) -> None:
        self.app.state.fixed_path, self.app.state.moving_path = self.fixed_path, self.moving_path
        self._do(self.app.load_from_paths)
        self.assertTrue(self.app.state.has_fixed, self.app.state.error_message)

    def _one_slice_volumes(self, fixed_z: float, moving_z: float) -> list[str]:
        """Testing/Data's T1 slice and PD slice (turned 10 degrees) saved as Slicer saves a 2D image, one-slice volumes
        (181 x 217 x 1 and 221 x 257 x 1, 1 x 1 x 2.5 mm), their slices at z ``fixed_z`` and ``moving_z`` mm: paths."""
        from MultimodalFusionLib.data import testing_data_dir

        paths = []
        for name, z in (("BrainT1Slice.png", fixed_z), ("BrainProtonDensitySliceR10X13Y17.png", moving_z)):
            volume = sitk.JoinSeries(io.read_image(str(testing_data_dir() / name)))
            volume.SetOrigin((-90.0, -100.0, z))
            volume.SetSpacing((1.0, 1.0, 2.5))
            paths.append(str(self.root / f"{Path(name).stem}-at-{z}.nii.gz"))
            sitk.WriteImage(volume, paths[-1])
        return paths

    def _load_ct_pet(self, ct_name: str, pet_name: str) -> tuple[sitk.Image, sitk.Image, str, str]:
        """Write a CT in HU and a PET in SUV-like units, aligned (the MNI152 tissues, 4 mm), under the names given,
        and load them through the panel's paths: (ct, pet, ct_path, pet_path)."""
        from MultimodalFusionLib import data

        tissues = data.mni152(spacing_mm=4.0)
        ct, pet = data.synthetic_contrast(tissues, "ct"), data.synthetic_contrast(tissues, "pet")
        ct_path, pet_path = str(self.root / ct_name), str(self.root / pet_name)
        sitk.WriteImage(ct, ct_path)
        sitk.WriteImage(pet, pet_path)
        self.app.state.fixed_path, self.app.state.moving_path = ct_path, pet_path
        self._do(self.app.load_from_paths)
        return ct, pet, ct_path, pet_path

    def test_a_padded_cts_padding_is_found_once_per_image_set(self) -> None:
        """Loading a CT padded with -32768 took its padding (preprocess.padding_mask, 0.4-1 s on a 512x512x300 CT)
        7 times over: its window/level sliders, CT test, fusion windows, percentile window and engine default each
        found it again, and mrml's display windows twice more on the scene node's copy (show_fusion's and the Auto
        window's setup_anatomical_display). The viewer finds it once per image set for a role, the same windows and
        ranges as each found on its own; a new image set for the role (another object, or the same one changed and
        set again) has its own found."""
        import numpy as np

        from MultimodalFusionLib import preprocess
        from MultimodalFusionLib.web import viewer as viewer_module
        from MultimodalFusionLib.web.app import _fusion_window_choices

        rng = np.random.default_rng(7)
        z, y, x = np.mgrid[:6, :40, :40]
        radius = np.hypot(y - 19.5, x - 19.5)
        fov, body = radius < 19, radius < 13

        def padded_ct(bone: float) -> sitk.Image:
            ct = np.where(body, rng.normal(40, 15, fov.shape), -1000 + rng.normal(0, 5, fov.shape))
            ct = np.where((radius > 11) & body, bone, ct)
            return sitk.GetImageFromArray(np.where(fov, ct, -32768).astype(np.int16))

        pet = sitk.GetImageFromArray(np.where(body, rng.gamma(2.0, 1.5, fov.shape), 0.05).astype(np.float32))
        found: list[np.ndarray] = []
        real = preprocess.padding_mask

        def counted(values):  # the real function, its calls counted
            found.append(np.array(values))  # a copy: a view of the scene node's voxels is freed after the call
            return real(values)

        def times_found(image: sitk.Image) -> int:  # on the image's voxels: its own or the scene node's copy
            voxels = sitk.GetArrayViewFromImage(image)
            return sum(np.array_equal(v.reshape(voxels.shape), voxels) for v in found if v.size == voxels.size)

        def expected(image: sitk.Image) -> dict:  # each found on its own, as before
            return {"range": viewer_module.image_range(image), "ct": viewer_module.looks_like_ct(image),
                    "choices": _fusion_window_choices(image)}

        app, viewer = self.app, self.app.viewer
        for bone in (1000.0, 1800.0):  # a second CT: its own padding and ranges
            ct = padded_ct(bone)
            found.clear()
            preprocess.padding_mask = counted
            try:
                app._show_loaded((ct, pet, "ct.nii.gz", "pet.nii.gz"))
            finally:
                preprocess.padding_mask = real
            with self.subTest(bone=bone):
                self.assertEqual(times_found(ct), 1)
                want = expected(ct)
                self.assertEqual(want["range"][1], bone)
                self.assertTrue(want["ct"])
                self.assertEqual(app._background_limits[:2], want["range"])
                self.assertIn("CT-Bone", [p["value"] for p in app.state.wl_presets])
                self.assertEqual(app._fw_windows["a"], want["choices"][1])
                self.assertEqual(app._fw_default["a"], (want["choices"][2], want["choices"][3]))
                self.assertEqual(app.state.fw_a_presets, want["choices"][0])
                self.assertEqual(viewer.padding(ct).tolist(), (sitk.GetArrayViewFromImage(ct) == -32768).tolist())
                display = viewer.background_node().GetDisplayNode()  # Auto: the window mrml finds on its own
                np.testing.assert_allclose([display.GetWindowLevelMin(), display.GetWindowLevelMax()],
                                           preprocess.robust_range(sitk.GetArrayViewFromImage(ct), 0.5, 99.5),
                                           rtol=0, atol=1e-9)
        # the same object changed in place (a corner's padding now air) and set again: its padding found again
        self.assertTrue(viewer.padding(ct)[0, 0, 0])
        ct[0, 0, 0] = -1000
        viewer.set_image("fixed", ct)
        self.assertFalse(viewer.padding(ct)[0, 0, 0])
        self.assertEqual(viewer.padding(ct).tolist(), real(sitk.GetArrayViewFromImage(ct)).tolist())
        # an image the viewer does not hold: found for it
        other = padded_ct(1200.0)
        self.assertEqual(viewer.padding(other).sum(), int((~fov).sum()))

    def test_uploaded_names_cannot_leave_the_upload_folder(self) -> None:
        before = set(os.listdir(self.root))
        for name in ("../../escaped.txt", str(self.root / "absolute.txt"), "..\\..\\win.txt"):
            self.app._save_upload("fixed", [{"name": name, "content": b"not an image"}])
            written = Path(self.app.state.fixed_path)
            self.assertEqual(written.parent.parent, self.workdir, name)  # workdir/fixed-XXXX/<name>
            self.assertEqual(written.read_bytes(), b"not an image")
        self.assertEqual(set(os.listdir(self.root)), before)  # nothing written next to the work folder
        self.app.state.error_message = ""
        self.app._save_upload("fixed", [{"name": "..", "content": b"x"}])
        self.assertIn("no usable name", self.app.state.error_message)

    def test_an_upload_the_server_cannot_store_is_refused_in_the_panel(self) -> None:
        # 100 CJK characters are 307 bytes in UTF-8: Linux's file names stop at 255 bytes, Windows' at 255
        # characters. The OSError escaped the upload handler: nothing in the page, a folder left behind
        state = self.app.state
        state.fixed_path, state.error_message = self.fixed_path, ""
        before = sorted(os.listdir(self.workdir))
        self.app._save_upload("fixed", [{"name": "\u56fe" * 100 + ".nii.gz", "content": b"x"}])
        self.assertIn("Could not store the uploaded file", state.error_message)
        self.assertIn("shorter name", state.error_message)
        self.assertEqual(state.fixed_path, self.fixed_path)
        self.assertEqual(sorted(os.listdir(self.workdir)), before)

    def test_two_uploaded_files_of_one_name_are_refused(self) -> None:
        # an upload keeps no folders: IM0001 of two series folders (a file dialog's search results) were
        # written to one path, the second silently replacing the first
        state = self.app.state
        state.moving_path, state.error_message = self.moving_path, ""
        before = sorted(os.listdir(self.workdir))
        self.app._save_upload("moving", [{"name": "IM0001", "content": b"A"}, {"name": "IM0001", "content": b"B"},
                                         {"name": "IM0002", "content": b"C"}])
        self.assertIn("Two uploaded files are named 'IM0001'", state.error_message)
        self.assertEqual(state.moving_path, self.moving_path)
        self.assertEqual(sorted(os.listdir(self.workdir)), before)

    def test_a_file_the_browser_could_not_read_is_refused_in_the_panel(self) -> None:
        # trame's page sends content None and the FileReader's error for a file it could not read (moved or
        # deleted after it was picked, no permission): the TypeError escaped, the page said nothing and an
        # empty file was left in an upload folder
        state = self.app.state
        state.fixed_path, state.error_message = self.fixed_path, ""
        before = sorted(os.listdir(self.workdir))
        self.app._save_upload("fixed", [{"name": "IM0001", "content": b"A"},
                                        {"name": "IM0002", "content": None,
                                         "error": "The requested file could not be read"}])
        self.assertIn("could not read the file 'IM0002' (The requested file could not be read)",
                      state.error_message)
        self.assertEqual(state.fixed_path, self.fixed_path)
        self.assertEqual(sorted(os.listdir(self.workdir)), before)

    def _partial_uploads(self) -> list[Path]:
        return sorted(p for p in self.workdir.iterdir() if p.name.endswith(".partial"))

    def test_an_upload_is_written_as_its_batches_arrive_not_held_until_its_end(self) -> None:
        # The page sends an upload as batches of whole files (about 10 MB) and then an empty batch. The
        # server kept every batch until the end and then wrote them: a 1 GB DICOM series cost over 1 GB of RAM
        import tracemalloc

        state = self.app.state
        state.moving_path, state.error_message = self.moving_path, ""
        trigger = self.app._upload_chunk_fn("moving")
        slice_bytes, per_batch, batches = 512 * 1024, 20, 10  # 100 MiB of "slices", 10 MiB a batch

        def batch(b: int) -> list[dict]:
            return [{"name": f"IM{b * per_batch + i:05d}", "content": os.urandom(slice_bytes)}
                    for i in range(per_batch)]

        tracemalloc.start()
        try:
            for b in range(batches):
                self.loop.run_until_complete(trigger("series", batch(b)))
                if b == 0:  # on disk already, under a name no path shows: the panel's path is the old one
                    (partial,) = self._partial_uploads()
                    self.assertTrue(partial.name.startswith(".moving-"), partial.name)
                    self.assertEqual(len(os.listdir(partial)), per_batch)
                    self.assertEqual(state.moving_path, self.moving_path)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        self.assertLess(peak, 3 * per_batch * slice_bytes, "the server should hold one batch, not the upload")
        self.loop.run_until_complete(trigger("series", []))  # the end: renamed, and the panel shows it
        folder = Path(state.moving_path)
        self.assertEqual(folder.parent, self.workdir)
        self.assertTrue(folder.name.startswith("moving-"), folder.name)
        self.assertEqual(len(os.listdir(folder)), batches * per_batch)
        self.assertEqual((folder / "IM00199").stat().st_size, slice_bytes)
        self.assertEqual(self._partial_uploads(), [])
        self.assertEqual(state.error_message, "")

    def test_an_upload_refused_or_cut_off_midway_leaves_no_files(self) -> None:
        state = self.app.state
        trigger = self.app._upload_chunk_fn("fixed")
        # a name repeated in the second batch: refused at once, the batches after it are not written
        state.fixed_path, state.error_message = self.fixed_path, ""
        for k, files in enumerate(([{"name": "IM1", "content": b"A"}], [{"name": "IM1", "content": b"B"}],
                                   [{"name": "IM2", "content": b"C"}])):
            self.loop.run_until_complete(trigger("refused", files))
            # written, then gone when the refusal is shown (not at the end)
            self.assertEqual(len(self._partial_uploads()), 1 if k == 0 else 0, k)
        self.assertIn("Two uploaded files are named 'IM1'", state.error_message)
        self.loop.run_until_complete(trigger("refused", []))
        self.assertEqual(state.fixed_path, self.fixed_path)
        self.assertEqual(self._partial_uploads(), [])
        # the next upload starts afresh
        state.error_message = ""
        self.app._save_upload("fixed", [{"name": "IM1", "content": b"D"}])
        self.assertEqual(state.error_message, "")
        self.assertEqual(Path(state.fixed_path).read_bytes(), b"D")
        # a page closed or reloaded midway never sends the end: what it wrote goes when its client exits
        self.loop.run_until_complete(trigger("cut", [{"name": "IM9", "content": b"E"}]))
        self.assertEqual(len(self._partial_uploads()), 1)
        self.app._drop_partial_uploads()
        self.assertEqual(self._partial_uploads(), [])
        self.loop.run_until_complete(trigger("cut", []))  # a late end changes nothing
        self.assertEqual(Path(state.fixed_path).read_bytes(), b"D")

    def test_two_uploads_at_once_are_never_mixed(self) -> None:
        # Batches carried no upload of their own: a second upload of the moving image started while the first
        # was arriving (another pick of files, or another tab) wrote into the first one's folder, which then
        # held A1, A2 and B1, and the second ended as B2 alone (a series without its first slices)
        state = self.app.state
        state.moving_path, state.error_message = self.moving_path, ""
        trigger = self.app._upload_chunk_fn("moving")
        run = self.loop.run_until_complete
        run(trigger("tab-1", [{"name": "A1", "content": b"a1"}]))
        run(trigger("tab-2", [{"name": "B1", "content": b"b1"}]))  # the newer upload is kept, the older dropped
        self.assertIn("A new upload of the moving image started", state.error_message)
        self.assertEqual(len(self._partial_uploads()), 1)
        run(trigger("tab-1", [{"name": "A2", "content": b"a2"}]))  # the rest of the dropped one is ignored
        run(trigger("tab-1", []))
        self.assertEqual(state.moving_path, self.moving_path)
        run(trigger("tab-2", [{"name": "B2", "content": b"b2"}]))
        run(trigger("tab-2", []))
        folder = Path(state.moving_path)
        self.assertEqual(folder.parent, self.workdir)
        self.assertEqual(sorted(os.listdir(folder)), ["B1", "B2"])
        self.assertEqual(self._partial_uploads(), [])
        # what a client sends that is no upload is refused in the banner, with nothing written
        for args in ((None, [{"name": "x", "content": b"x"}]), ("id", "not a list"), (7, [])):
            state.error_message = ""
            run(trigger(*args))
            self.assertIn("does not understand", state.error_message, args)
        for k, entry in enumerate(("x", {"name": 5, "content": b"x"}, {"name": "x", "content": "text"},
                                   {"name": "x", "offset": 4, "size": 8, "content": b"late"})):
            state.error_message = ""
            run(trigger(f"bad-{k}", [entry]))
            self.assertTrue(state.error_message, entry)
            run(trigger(f"bad-{k}", []))
        self.assertEqual(Path(state.moving_path), folder)
        self.assertEqual(self._partial_uploads(), [])

    def test_a_large_file_arrives_in_pieces_written_as_they_come(self) -> None:
        # trame's page read a file whole into one message: a 300 MiB NIfTI was held whole by the server (three
        # times over, in wslink's reassembly); the page now sends pieces of UPLOAD_PIECE_BYTES at their offsets
        from MultimodalFusionLib.web.app import UPLOAD_PIECE_BYTES

        state = self.app.state
        state.fixed_path, state.error_message = self.fixed_path, ""
        trigger = self.app._upload_chunk_fn("fixed")
        run = self.loop.run_until_complete
        data = Path(self.fixed_path).read_bytes()
        piece = 1000
        for offset in range(0, len(data), piece):
            run(trigger("big", [{"name": "t1.nii.gz", "offset": offset, "size": len(data),
                                 "content": data[offset:offset + piece]}]))
            (partial,) = self._partial_uploads()
            self.assertEqual((partial / "t1.nii.gz").stat().st_size, min(len(data), offset + piece))
        run(trigger("big", []))
        self.assertEqual(state.error_message, "")
        self.assertEqual(Path(state.fixed_path).read_bytes(), data)
        self.assertEqual(Path(state.fixed_path).name, "t1.nii.gz")
        # an upload that ends before a file's last piece is refused, naming it (not read as a truncated volume)
        run(trigger("short", [{"name": "t1.nii.gz", "offset": 0, "size": len(data), "content": data[:piece]}]))
        run(trigger("short", []))
        self.assertIn(f"'t1.nii.gz' (1000 of {len(data)} bytes)", state.error_message)
        self.assertEqual(Path(state.fixed_path).read_bytes(), data)
        self.assertEqual(self._partial_uploads(), [])
        # the page's script sends pieces of that size (and the file input calls it)
        from MultimodalFusionLib.web.app import _UPLOAD_JS

        self.assertIn(f"const piece = {UPLOAD_PIECE_BYTES};", _UPLOAD_JS)
        self.assertIn("<trame-script", self.app.ui.html)
        self.assertIn("window.mmfusion_upload($event.target.files", self.app.ui.html)

    def test_state_values_a_client_sets_are_checked_with_a_banner(self) -> None:
        # A trame client can set any state value: Register with seed "abc" or 1e400 (infinity on the wire)
        # raised ValueError/OverflowError, a traceback in the server log and nothing in the page; seed 1.5 ran
        # as 1; stages "rigid" ran as r, i, g, i, d; an opacity "abc" or a window/level preset [] raised in the
        # change callback (a warning in the log, nothing in the page)
        self._load()
        state = self.app.state
        checks = [("seed", "abc", "seed must be a whole number"), ("seed", float("inf"), "not inf"),
                  ("seed", 1.5, "not 1.5"), ("seed", -1, "from 0 to 2147483646, not -1"), ("seed", True, "not True"),
                  # the engine's one seed rule, in the panel's words before the job (register() had refused it
                  # inside the job, telling a web user to use --seed)
                  ("seed", 2**31 - 1, "from 0 to 2147483646, not 2147483647. Fix: Type a whole number in the Seed "
                                      "field, e.g. 0"),
                  ("stages", "rigid", "stages must be a list"), ("stages", ["rigid", "warp"], "stage 'warp'"),
                  ("initializer", 3, "initializer 3")]
        good = {"seed": 0, "stages": ["rigid"], "preset": "", "initializer": ""}
        for key, value, expected in checks:
            with state:
                state.update({**good, key: value, "error_message": ""})
            self._do(self.app.start_registration)
            self.assertIn(expected, state.error_message, (key, value))
            self.assertFalse(state.job_busy)
        state.error_message = ""
        self._set(preset=["x"])  # the preset's change callback: refused, and the choice back to (none)
        self.assertIn("Unknown registration preset ['x']", state.error_message)
        self.assertEqual(state.preset, "")
        with state:
            state.update({**good, "method": "nosuch", "error_message": ""})
        self._do(self.app.start_fusion)
        self.assertIn("Unknown fusion method 'nosuch'", state.error_message)
        for value in (["a.nii"], "a\0b.nii"):
            state.fixed_path, state.error_message = value, ""
            self._do(self.app.load_from_paths)
            self.assertIn("fixed path sent by the page is not a text", state.error_message)
        # display values: a banner, and the control goes back to what the views show
        for key, value, expected, back in (("fg_opacity", "abc", "opacity must be a number", 0.5),
                                           ("fg_opacity", 2, "opacity must be a number", 0.5),
                                           ("wl_preset", ["x"], "Unknown window/level preset", "auto"),
                                           ("fg_layer", 7, "Unknown foreground layer", "functional"),
                                           ("colormap", 5, "colour table", "PET-Heat")):
            state.error_message = ""
            self._set(**{key: value})
            self.assertIn(expected, state.error_message, (key, value))
            self.assertEqual(state[key], back, key)
        self._set(bg_step="abc", bg_window=50, bg_level=20)  # a step the client broke is ignored
        bg = self.app.viewer.node("fixed").GetDisplayNode()
        self.assertEqual((bg.GetWindow(), bg.GetLevel()), (50.0, 20.0))
        self._set(wl_preset="auto", bg_step=1.0)
        # and the app stays usable: a whole seed sent as 2.0 registers
        with state:
            state.update({**good, "seed": 2.0, "method": "average", "error_message": ""})
        self._do(self.app.start_registration)
        self.assertEqual(state.error_message, "")
        self.assertTrue(state.has_registered)

    def _as_a_page(self, **values) -> None:
        """Write state values as a page's ``trame.state.update`` does: into trame's state, not through the app."""
        state = self.app.server.state
        state.ready()
        with state:
            state.update(values)

    def test_state_values_only_the_server_sets_are_put_back_when_a_page_writes_them(self) -> None:
        # trame lets a page write any state key, and these reached every page and stayed: the progress of a
        # job, a fake metrics table or banner, the buttons' has_* flags; a bg_step of 1e9 made every window/level
        # change look like the panel's echo, so the anatomy's window could no longer be moved
        from MultimodalFusionLib.web.app import CLIENT_KEYS

        self._load()
        state = self.app.state
        self._set(error_message="")
        truth = {key: state[key] for key in ("has_fused", "metrics_rows", "job_busy", "job_message", "bg_step",
                                             "fixed_name", "download_names", "fixed_series_items")}
        fake = {"has_fused": True, "metrics_rows": [{"name": "SSIM", "value": "0.999"}], "job_busy": True,
                "job_message": "Registration done in 0.1 s", "bg_step": 1e9, "fixed_name": "other.nii",
                "download_names": {"fused": "x.exe"}, "fixed_series_items": [{"title": "x", "value": "1.2"}],
                "error_message": "The server moved: go to http://evil.example"}
        with self.assertLogs("MultimodalFusionLib.web.server_state", "WARNING") as logs:
            self._as_a_page(**fake)
        self.assertEqual({key: state[key] for key in truth}, truth)
        self.assertEqual(state.error_message, "")
        self.assertIn("bg_step", logs.output[0])
        # the window/level still follows the panel
        bg = self.app.viewer.node("fixed").GetDisplayNode()
        self._as_a_page(bg_step=1e9, bg_window=50, bg_level=20)
        self.assertEqual((bg.GetWindow(), bg.GetLevel()), (50.0, 20.0))
        self.assertEqual(state.bg_step, truth["bg_step"])
        self._set(wl_preset="auto")
        # a page may close the banner (set it empty), and it stays closed
        self.app._banner("Load a fixed and a moving image first.")
        self._as_a_page(error_message="")
        self.assertEqual(state.error_message, "")
        self._as_a_page(seed=3, fixed_path="/x")  # the page's own keys are the page's
        self.assertEqual((state.seed, state.fixed_path), (3, "/x"))
        self._set(seed=0)
        # every key the page's controls write is one of the page's keys; every other key the app set is the server's
        page_keys = set(re.findall(r'v-model="(\w+)"', self.app.ui.html))
        self.assertTrue(page_keys, "the page's controls")
        self.assertEqual(page_keys, CLIENT_KEYS)  # the seed too: the Seed field (a script's only, before)
        owned = {key for key in self.app.server.state.to_dict() if key not in CLIENT_KEYS and not key.startswith("trame")}
        self.assertLessEqual({"job_busy", "job_progress", "has_fixed", "bg_step", "moving_series_path"}, owned)
        for key in sorted(owned):
            if key in self.app.state._owned:
                with self.subTest(key):
                    before = state[key]
                    self._as_a_page(**{key: ["a page's value"]})
                    self.assertEqual(state[key], before)

    def test_a_page_may_set_its_controls_only(self) -> None:
        # the message gate drops a page's write to any other key before trame pushes it to the other pages
        from MultimodalFusionLib.web.app import CLIENT_KEYS

        state = self.app.server.state
        bound = {key for name in ("main", *self.app.slicer_app.view_manager.get_current_view_ids())
                 for key in re.findall(r'v-model="([^"]+)"', state[f"trame__template_{name}"])}
        self.assertEqual(bound - CLIENT_KEYS, {"Red__SliderState__value", "Green__SliderState__value",
                                               "Yellow__SliderState__value"})  # trame-slicer's slice sliders
        self.assertEqual(self.app.page_keys, CLIENT_KEYS | bound)
        owned = {key for key in ("job_busy", "job_progress", "job_message", "metrics_rows", "has_fused", "bg_step",
                                 "fixed_series_items", "Red__SliderState__max_value", "Red_active_view_cursor")}
        self.assertEqual({key for key in owned if self.app.page_may_set(key, state[key])}, set())
        self.assertTrue(self.app.page_may_set("error_message", ""))  # the banner's close button
        self.assertFalse(self.app.page_may_set("error_message", "The server moved"))
        # a slice slider's value is a finite number: inf had left the view's offset NaN for every page
        slider = "Red__SliderState__value"
        self.assertTrue(self.app.page_may_set(slider, state[slider]))
        self.assertTrue(self.app.page_may_set(slider, 30))
        for bad in (math.inf, -math.inf, math.nan, "abc", None, [1], True):
            with self.subTest(value=bad):
                self.assertFalse(self.app.page_may_set(slider, bad))

    def test_a_slice_slider_sent_with_a_display_control_moves_the_slice(self) -> None:
        # A page sends the values changed while its last message was in flight together, in the order they
        # changed (Chromium: an opacity key press then a slice key press went as ['fg_opacity=0.3',
        # 'Red__SliderState__value=45']). trame ran the opacity's callback first; it changed the slice views,
        # trame-slicer wrote each view's MRML slice back into its slider's state over the page's value, and the
        # slider's own callback then read the old one: the slice stayed and the slider jumped back (42 -> 45 -> 42)
        self._load()
        state = self.app.server.state
        views = {view.get_view_node().GetName(): view for view in self.app.slicer_app.view_manager.get_slice_views()}
        self.assertEqual(set(views), {"Red", "Green", "Yellow"})
        red = views["Red"]
        step = red.get_slice_step()
        self.assertGreater(step, 0)
        opacity = state.fg_opacity
        self.addCleanup(setattr, self.app.state, "fg_opacity", opacity)
        for other, value in (("fg_opacity", 0.3), ("colormap", "Rainbow"), ("bg_level", state.bg_level + 5.0),
                             ("fg_lower", state.fg_lower + state.fg_step)):
            start = red.get_slice_value()
            self._as_a_page(**{other: value, "Red__SliderState__value": start + step})  # in this order
            self.assertEqual(state[other], value, other)
            self.assertEqual(red.get_slice_value(), start + step, f"{other} then the slider")
            self.assertEqual(state["Red__SliderState__value"], start + step, other)
        # the slider alone, as before; and values that are not a slice leave the view where it is (trame-slicer
        # refuses them in the log, as it did)
        start = red.get_slice_value()
        self._as_a_page(Red__SliderState__value=start - step)
        self.assertEqual(red.get_slice_value(), start - step)
        for bad in ("abc", None):
            self._as_a_page(fg_opacity=0.4, Red__SliderState__value=bad)
            self.assertEqual(red.get_slice_value(), start - step, repr(bad))

    def test_load_register_and_fuse_act_on_the_values_their_click_sends(self) -> None:
        # trame-client sends a field's change in a message of its own, after a button's call where a call of the page
        # awaits its answer: Load, Register and Fuse read the state as it was, a path typed loading the previous file,
        # a Window typed fusing with the preset's. Each sends the fields the page has not sent yet with the click,
        # taken as the page's own change is (a preset picked brings its stages, a Window typed makes the preset Manual)
        from unittest import mock

        from MultimodalFusionLib import registration

        state, app = self.app.state, self.app
        self._load()
        # Load: the state still holding the pair swapped (the page's change not come yet), the paths sent are read
        self._set(fixed_path=self.moving_path, moving_path=self.fixed_path, error_message="")
        self.addCleanup(self._set, fixed_path=self.fixed_path, moving_path=self.moving_path, preset="",
                        stages=["rigid"], initializer="", fw_a_preset="default", error_message="")
        self._do(lambda: app.load_from_paths({"fixed_path": self.fixed_path, "moving_path": self.moving_path}))
        self.assertEqual((state.fixed_name, state.moving_name, state.error_message), ("t1.nii.gz", "pet.nii.gz", ""))
        self.assertEqual((state.fixed_path, state.moving_path), (self.fixed_path, self.moving_path))
        # other values than the page sends (a script's call, a page of the version before): refused in the banner,
        # nothing loaded
        for bad in ([self.moving_path], {"fixed_path": self.moving_path, "seed": 3}):
            self._do(lambda bad=bad: app.load_from_paths(bad))
            self.assertIn("The page's Load sent ", state.error_message)
            self.assertIn("where it sends the values of the fields it changed among fixed_path, moving_path, "
                          "fixed_series, moving_series. Fix: Reload the page", state.error_message)
            self.assertEqual((state.fixed_name, state.fixed_path), ("t1.nii.gz", self.fixed_path))

        # Register: a preset picked and clicked at once, the page's stages still its last ones: the preset's stages
        calls = []

        def recording_register(*args, **kwargs):
            calls.append(kwargs)
            return real_register(*args, **kwargs)

        real_register = registration.register
        self._set(error_message="")
        with mock.patch.object(registration, "register", recording_register):
            self._do(lambda: app.start_registration({"preset": "pet-ct-body", "initializer": "moments"}))
        self.assertEqual(state.error_message, "")
        self.assertEqual({key: calls[-1][key] for key in ("preset", "stages", "initializer")},
                         {"preset": "pet-ct-body", "stages": ["rigid", "affine"], "initializer": "moments"})

        # Fuse: the fixed image's Window and Level typed, the page's preset still the engine's default: Manual
        self._do(lambda: app.start_fusion({"method": "average", "fw_a_window": "120", "fw_a_level": "100"}))
        self.assertEqual(state.error_message, "")
        self.assertEqual(state.fw_a_preset, "manual")
        self.assertEqual(app.fusion_result.parameters["window_a"], [40.0, 160.0])

    def test_a_dicom_series_is_read_only_where_the_server_offered_it(self) -> None:
        # the load read a page's fixed_series_path and fixed_series_items: the series list could be made to
        # show for any path, the pick then read from a folder the server had not asked about
        folder = self.root / "two-series-offer"
        write_two_dicom_series(folder)
        state = self.app.state
        self._set(fixed_path=str(folder), moving_path=self.moving_path)
        self._do(self.app.load_from_paths)
        self.assertIn("2 DICOM series", state.error_message)
        other = self.root / "two-series-other"
        shutil.copytree(folder, other)
        pet = next(i["value"] for i in state.fixed_series_items if i["title"].startswith("PET"))
        self._as_a_page(fixed_path=str(other), fixed_series_path=str(other), fixed_series=pet)
        self.assertEqual(state.fixed_series_path, str(folder))
        self._do(self.app.load_from_paths)
        self.assertIn("2 DICOM series", state.error_message)  # asked about, not read with the pick
        self.assertEqual(state.fixed_series_path, str(other))
        self._set(fixed_series=pet)
        self._do(self.app.load_from_paths)
        self.assertEqual(state.error_message, "")
        self.assertEqual(float(sitk.GetArrayViewFromImage(self.app.fixed_image)[0].mean()), 105.0)
        self._load()

    def test_header_and_data_upload_is_read_by_its_header(self) -> None:
        # an .mhd + .raw pair (any order) is given by the header's path, not read as a DICOM folder
        pair = self.root / "pair"
        pair.mkdir(exist_ok=True)
        sitk.WriteImage(sitk.ReadImage(self.moving_path), str(pair / "pet.mhd"))
        files = [{"name": name, "content": (pair / name).read_bytes()} for name in ("pet.raw", "pet.mhd")]
        self.app._save_upload("moving", files)
        self.assertTrue(self.app.state.moving_path.endswith("pet.mhd"), self.app.state.moving_path)
        self.assertTrue(Path(self.app.state.moving_path).with_suffix(".raw").is_file())
        self.app.state.fixed_path = self.fixed_path
        self.app.state.error_message = ""
        self._do(self.app.load_from_paths)
        self.assertEqual(self.app.state.error_message, "")
        self.assertEqual(self.app.state.moving_name, "pet.mhd")
        self.assertEqual(self.app.moving_image.GetSize(), sitk.ReadImage(self.moving_path).GetSize())

    def test_a_folder_of_several_dicom_series_names_a_fix_this_page_offers(self) -> None:
        """The engine's fix names --series and read_image(series=...), which the page has no field for."""
        folder = self.root / "two-series"
        write_two_dicom_series(folder)
        self.app.state.fixed_path, self.app.state.moving_path = str(folder), self.moving_path
        self._do(self.app.load_from_paths)
        message = self.app.state.error_message
        self.assertIn("2 DICOM series", message)
        self.assertIn("PET", message)  # the series are listed
        self.assertIn('"fixed DICOM series" list', message)
        self.assertNotIn("--series", message)
        # ... and offered in the panel: the one picked there is read at the next Load
        items = self.app.state.fixed_series_items
        self.assertEqual([i["title"] for i in items], ["T1 CT (3 files)", "PET CT (3 files)"])
        self.assertEqual(self.app.state.fixed_series_path, str(folder))
        self.assertEqual(self.app.state.moving_series_items, [])
        self.app.state.fixed_series = next(i["value"] for i in items if i["title"].startswith("PET"))
        self._do(self.app.load_from_paths)
        self.assertEqual(self.app.state.error_message, "")
        self.assertEqual(self.app.fixed_image.GetSize(), (8, 8, 3))
        arr = sitk.GetArrayFromImage(self.app.fixed_image)
        self.assertEqual([float(arr[k].mean()) for k in range(3)], [105.0, 115.0, 125.0])  # PET's, not T1's
        # the choice belongs to that folder: another path with several series asks again
        other = self.root / "two-series-copy"
        shutil.copytree(folder, other)
        self.app.state.fixed_path = str(other)
        self._do(self.app.load_from_paths)
        self.assertIn("2 DICOM series", self.app.state.error_message)
        self.assertEqual(self.app.state.fixed_series_path, str(other))
        # one study folder for both roles (MR and PET of one export): both lists come with one Load, and
        # the two picks are read by the next (it took a Load per role)
        self.app.state.moving_path = str(other)
        self._do(self.app.load_from_paths)
        message = self.app.state.error_message
        self.assertIn("Fixed: Folder", message)
        self.assertIn("Moving: Folder", message)
        self.assertIn('"fixed DICOM series" and "moving DICOM series" lists', message)
        self.assertEqual(self.app.state.moving_series_path, str(other))
        values = {i["title"].split()[0]: i["value"] for i in self.app.state.moving_series_items}
        self.app.state.fixed_series, self.app.state.moving_series = values["T1"], values["PET"]
        self._do(self.app.load_from_paths)
        self.assertEqual(self.app.state.error_message, "")
        self.assertEqual([float(sitk.GetArrayViewFromImage(self.app.moving_image)[0].mean()),
                          float(sitk.GetArrayViewFromImage(self.app.fixed_image)[0].mean())], [105.0, 5.0])

    def test_a_header_uploaded_without_its_data_file_is_refused_naming_it(self) -> None:
        # ITK's messages named no file or the wrong one ("Reason: No such file or directory", "use a
        # NIfTI, NRRD, MHA/MHD ... file") for a .mhd, .nhdr or .hdr whose voxels were not uploaded with it
        folder = self.root / "headers"
        folder.mkdir(exist_ok=True)
        image = sitk.ReadImage(self.moving_path)
        state = self.app.state
        state.moving_path = self.moving_path
        for header, data in (("pet.mhd", "pet.raw"), ("pet.nhdr", "pet.raw"), ("pet.hdr", "pet.img"),
                             ("pet.hdr.gz", "pet.img.gz")):
            sitk.WriteImage(image, str(folder / header), useCompression=False)
            self.assertTrue((folder / data).is_file(), data)
            state.error_message = ""
            self.app._save_upload("moving", [{"name": header, "content": (folder / header).read_bytes()}])
            self.assertIn(f"'{data}'", state.error_message)
            self.assertIn("together", state.error_message)
            self.assertEqual(state.moving_path, self.moving_path)  # the path shown stays what it was
            # uploaded together they are taken (the header is what is read)
            state.error_message = ""
            self.app._save_upload("moving", [{"name": name, "content": (folder / name).read_bytes()}
                                             for name in (header, data)])
            self.assertEqual(state.error_message, "")
            self.assertEqual(Path(state.moving_path).name, header)
            state.moving_path = self.moving_path
        # a .mha or .nrrd may name a data file too (io.missing_data_file checks them): the fix above, both files
        # uploaded together, must work for them as well (the upload was read as a DICOM folder)
        for header, source, data in (("pet-data.mha", "pet.mhd", "pet.raw"), ("pet-data.nrrd", "pet.nhdr", "pet.raw")):
            with self.subTest(header):
                state.error_message = ""
                self.app._save_upload("moving", [{"name": header, "content": (folder / source).read_bytes()}])
                self.assertIn(f"select both '{header}' and '{data}'", state.error_message)
                state.error_message = ""
                self.app._save_upload("moving", [{"name": name, "content": (folder / name_on_disk).read_bytes()}
                                                 for name, name_on_disk in ((header, source), (data, data))])
                self.assertEqual(state.error_message, "")
                self.assertEqual(Path(state.moving_path).name, header)
                self.assertEqual(io.read_image(state.moving_path).GetSize(), image.GetSize())
                state.moving_path = self.moving_path
        # a header naming its data file in a folder: an upload keeps no folders, so uploading both cannot help
        text = (folder / "pet.nhdr").read_text().replace("data file: pet.raw", "data file: voxels/pet.raw")
        state.error_message = ""
        self.app._save_upload("moving", [{"name": "pet.nhdr", "content": text.encode()},
                                         {"name": "pet.raw", "content": (folder / "pet.raw").read_bytes()}])
        self.assertIn("'voxels/pet.raw'", state.error_message)
        self.assertIn("edit it to name 'pet.raw'", state.error_message)
        self.assertEqual(state.moving_path, self.moving_path)
        self.assertEqual(len([p for p in self.workdir.iterdir() if p.name.startswith("moving-")]), 1)

    def test_a_new_upload_removes_the_previous_copy(self) -> None:
        self.app._save_upload("moving", [{"name": "first.nii.gz", "content": b"1"}])
        first = Path(self.app.state.moving_path)
        self.app._save_upload("moving", [{"name": "second.nii.gz", "content": b"2"}])
        self.assertFalse(first.parent.exists(), "the replaced upload should be removed from the server")
        self.assertTrue(Path(self.app.state.moving_path).is_file())
        # while a Load reads it a replaced upload stays: the next test. The server asks its worker, not the
        # state's job_busy, which a client may set: it stays while the job runs
        self.app.state.fixed_path = self.fixed_path
        second = Path(self.app.state.moving_path)

        async def run() -> None:
            self.app.load_from_paths()  # reads `second`
            with self.app.state:
                self.app.state.job_busy = False  # as a client could send
            self.app._save_upload("moving", [{"name": "third.nii.gz", "content": b"3"}])
            self.assertTrue(second.is_file())
            await self.app.worker.wait()

        self.loop.run_until_complete(run())
        self.app._save_upload("moving", [{"name": "fourth.nii.gz", "content": b"4"}])
        self.assertFalse(second.parent.exists())
        self.app._save_upload("fixed", [{"name": "..", "content": b"x"}])  # refused: no folder left
        self.assertEqual(self._uploads("moving"), [Path(self.app.state.moving_path).parent.name])

    def _uploads(self, role: str) -> list[str]:
        return sorted(p.name for p in self.workdir.iterdir() if p.name.startswith(f"{role}-"))

    def test_an_upload_replaced_while_a_job_runs_is_removed_when_the_job_ends(self) -> None:
        # it stayed on the server until the next upload or the server's exit, however long that was
        self.app._save_upload("fixed", [{"name": "f.nii.gz", "content": b"f" * 100}])
        self.app._save_upload("moving", [{"name": "first.nii.gz", "content": b"1" * 10}])
        self.assertEqual(self.app.stored_upload_bytes(), 110)  # what --max-stored-uploads limits: each last upload
        first = Path(self.app.state.moving_path)
        self.app.state.fixed_path = self.fixed_path

        async def run() -> None:
            self.app.load_from_paths()  # a Load reading `first`
            self.assertTrue(self.app.worker.busy)
            self.app._save_upload("moving", [{"name": "second.nii.gz", "content": b"2"}])
            self.assertTrue(first.is_file(), "a running Load may be reading the replaced upload")
            # uploads the job does not read go at once: every upload replaced while a job ran was kept until it
            # ended, so during a long job a page could pile up any number of them
            for n in range(3, 6):
                self.app._save_upload("moving", [{"name": f"upload{n}.nii.gz", "content": b"n"}])
            self.assertEqual(self._uploads("moving"), sorted([first.parent.name,
                                                              Path(self.app.state.moving_path).parent.name]))
            self.assertEqual(self.app.stored_upload_bytes(), 111)  # and the one the Load reads, while it is there

        async def run_to_its_end() -> None:
            try:
                await run()
            finally:
                await self.app.worker.wait()

        self.loop.run_until_complete(run_to_its_end())
        self.assertFalse(self.app.state.job_busy)
        self.assertFalse(first.parent.exists(), "the replaced upload should go when the job ends")
        self.assertEqual(Path(self.app.state.moving_path).read_bytes(), b"n")
        self.assertEqual(self._uploads("moving"), [Path(self.app.state.moving_path).parent.name])
        self.assertEqual(self.app.stored_upload_bytes(), 101)

    def test_an_upload_replaced_while_a_registration_runs_is_removed_at_once(self) -> None:
        # a registration (or fusion) reads no file, the images being in memory: every upload replaced while it
        # ran stayed until it ended, as many as a page sent, 4 GiB each (--max-upload)
        self._load()
        self.app.state.update({"preset": "", "stages": ["rigid"], "initializer": ""})
        self.app._save_upload("fixed", [{"name": "a.nii.gz", "content": b"a"}])
        uploads_during = []

        async def run() -> None:
            self.app.start_registration()
            self.assertTrue(self.app.worker.busy)
            try:
                for n in range(4):
                    self.app._save_upload("fixed", [{"name": f"b{n}.nii.gz", "content": b"b"}])
                    uploads_during.append(len(self._uploads("fixed")))
            finally:
                await self.app.worker.wait()

        self.loop.run_until_complete(run())
        self.assertIn("Registration done", self.app.state.job_message)
        self.assertEqual(uploads_during, [1, 1, 1, 1])
        self.assertEqual(self._uploads("fixed"), [Path(self.app.state.fixed_path).parent.name])

    def test_downloads_leave_no_files_on_the_server(self) -> None:
        self._load()
        self.app.state.stages = ["rigid"]
        self._do(self.app.start_registration)
        self._do(self.app.start_fusion)
        self.assertTrue(self.app.state.has_fused, self.app.state.error_message)
        before = sorted(os.listdir(self.workdir))
        for what, start in (("transform", b"#Insight"), ("fused", b"\x1f\x8b"), ("weights", b"\x1f\x8b"),
                            ("report", b"<!")):
            content = self.app.result_bytes(what)
            self.assertTrue(content.lstrip().startswith(start), (what, content[:20]))
            self.assertEqual(sorted(os.listdir(self.workdir)), before, what)

    def test_a_cancel_during_the_fusion_metrics_stops_them_at_the_next_slice(self) -> None:
        """The fusion metrics made no progress report, so a Cancel pressed during them took effect at their end, 21-31
        s later on BraTS FLAIR/T1c (240x240x155, the job thread scores on one core). Cancel is pressed here while the
        first slice is scored (that slice held until then, so the order is certain however fast the machine): no
        other slice is scored, and the page says the fusion was cancelled, showing no result."""
        import threading

        from MultimodalFusionLib import metrics

        self._load()
        self.app.state.method = "average"
        real, scored = metrics._slice_scores, []
        scoring, pressed = threading.Event(), threading.Event()

        def first_held(*images):  # the real function, its calls counted, the first held until Cancel is pressed
            scored.append(1)
            scoring.set()
            pressed.wait(60.0)
            return real(*images)

        async def fuse_and_cancel() -> None:
            self.app.start_fusion()
            while not scoring.is_set() and self.app.worker.busy:
                await asyncio.sleep(0.01)
            self.app.worker.cancel()  # as the page's Cancel does
            pressed.set()
            await self.app.worker.wait()

        metrics._slice_scores = first_held
        try:
            self.loop.run_until_complete(fuse_and_cancel())
        finally:
            metrics._slice_scores = real
            pressed.set()
        self.assertEqual(len(scored), 1)  # the old code scored every slice with content (48 here) after the Cancel
        self.assertEqual(self.app.state.job_message, "Fusion cancelled")
        self.assertFalse(self.app.state.has_fused)
        self.assertEqual(self.app.state.error_message, "")

    def test_the_fusion_metrics_of_a_job_run_in_spawned_workers_that_a_cancel_ends(self) -> None:
        """The job thread scored a volume's slices on one core (forking the server from it is not safe): 20-40 s on
        BraTS 240x240x155. It spawns worker processes now for a volume of metrics.PARALLEL_MIN_PIXELS pixels (lowered
        here to the demo pair's), and a Cancel pressed while they run ends them at once: none left, the page says
        the fusion was cancelled."""
        import multiprocessing
        import time
        from unittest import mock

        from MultimodalFusionLib import metrics

        self._load()
        self.app.state.method = "average"
        before = {p.pid for p in multiprocessing.active_children()}
        workers: list[int] = []

        async def fuse_and_cancel() -> float:
            self.app.start_fusion()
            while self.app.worker.busy and len(workers) < 2:  # Cancel once the pool has started its two
                workers[:] = [p.pid for p in multiprocessing.active_children() if p.pid not in before]
                await asyncio.sleep(0.01)
            pressed = time.monotonic()
            self.app.worker.cancel()  # as the page's Cancel does
            await self.app.worker.wait()
            return time.monotonic() - pressed

        if len(os.sched_getaffinity(0)) < 2:
            self.skipTest("the pool's two workers need two CPUs to run on")
        # OMP_NUM_THREADS=1 in the caller's environment (a CI setting) caps the pool at one worker, by design
        with mock.patch.object(metrics, "PARALLEL_MIN_PIXELS", 1), mock.patch.dict(os.environ, {"OMP_NUM_THREADS": "2"}):
            latency = self.loop.run_until_complete(fuse_and_cancel())
        self.assertEqual(len(workers), 2, "no worker processes: the job scored the slices itself")  # the old code
        self.assertEqual([p.pid for p in multiprocessing.active_children() if p.pid not in before], [])
        for pid in workers:  # reaped, not only killed
            self.assertFalse(os.path.exists(f"/proc/{pid}"), pid)
        self.assertLess(latency, 10.0)
        self.assertEqual(self.app.state.job_message, "Fusion cancelled")
        self.assertFalse(self.app.state.has_fused)
        self.assertEqual(self.app.state.error_message, "")

    def test_the_weight_map_downloads_as_mmfusion_run_writes_it(self) -> None:
        # every method's fusion has a weight map (the fixed image's weight per voxel), which `mmfusion run` writes as
        # weights_<method> and the report shows: the page offered no way to it (deep's, which says where each voxel
        # came from, included)
        import numpy as np

        from MultimodalFusionLib import pipeline

        state = self.app.state
        self._load()
        state.preset, state.stages, state.initializer, state.method = "", ["rigid"], "", "pca"
        self._do(self.app.start_registration)
        self._do(self.app.start_fusion)
        self.assertTrue(state.has_fused, state.error_message)
        self.assertEqual(state.download_names["weights"], "weights.nii.gz")
        downloaded = self.root / "weights-web.nii.gz"
        downloaded.write_bytes(self.app.result_bytes("weights"))
        weights = sitk.ReadImage(str(downloaded))
        self.assertEqual(weights.GetPixelID(), sitk.sitkFloat32)
        cli = pipeline.run(self.fixed_path, self.moving_path, self.root / "cli-weights", stages=["rigid"],
                           methods=["pca"], seed=0)
        expected = sitk.ReadImage(cli["files"]["weights_pca"])
        for get in ("GetSize", "GetOrigin", "GetSpacing", "GetDirection"):
            self.assertEqual(getattr(weights, get)(), getattr(expected, get)(), get)
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(weights), sitk.GetArrayViewFromImage(expected))
        self.assertTrue(0.0 <= sitk.GetArrayViewFromImage(weights).min() <= sitk.GetArrayViewFromImage(weights).max()
                        <= 1.0)

    def test_the_weight_map_is_a_layer_of_the_slice_views_on_its_0_to_1_scale_with_a_legend(self) -> None:
        # the weight map (the fixed image's weight per voxel) could be downloaded but not seen: it is a foreground
        # layer now, as Slicer shows such a volume, on its own scale 0..1 (not the functional layers' percentile
        # rule, which would window a wavelet map's 0.24..0.82 so that 0.27 looked like 0), with the colour table's legend
        import numpy as np

        state, viewer = self.app.state, self.app.viewer
        self._load()
        self.assertIn("weights", [layer["value"] for layer in state.fg_layers])
        self._set(fg_layer="weights")  # no fusion yet: refused, the functional layer stays
        self.assertEqual(state.fg_layer, "functional")
        self.assertIn("press Fuse first", state.error_message)
        self._set(error_message="")
        state.method = "pca"
        self._do(self.app.start_fusion)
        self.assertTrue(state.has_fused, state.error_message)
        self.addCleanup(self._set, fg_layer="functional", colormap="PET-Heat")  # the shared app as found
        self._set(fg_layer="weights")
        node = viewer.node("weights")
        self.assertIs(viewer.foreground_node(), node)
        self.assertIs(viewer.images["weights"], self.app.fusion_result.weights)
        composite = self.app.slicer_app.scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
        self.assertTrue(composite.GetNumberOfItems() > 0)
        for i in range(composite.GetNumberOfItems()):
            self.assertEqual(composite.GetItemAsObject(i).GetForegroundVolumeID(), node.GetID())
        display = node.GetDisplayNode()
        self.assertEqual((display.GetWindowLevelMin(), display.GetWindowLevelMax()), (0.0, 1.0))
        self.assertEqual(display.GetLowerThreshold(), 0.0)  # every weight shown, 0 too
        weights = sitk.GetArrayViewFromImage(self.app.fusion_result.weights)
        self.assertLess(0.0, weights.min())
        self.assertLess(weights.max(), 1.0)  # the percentile rule would have windowed this range
        self.assertEqual((state.fg_min, state.fg_max, state.fg_lower, state.fg_upper), (0.0, 1.0, 0.0, 1.0))
        legend = state.fg_legend
        self.assertTrue(legend.startswith("linear-gradient(to right, rgb("), legend)
        self.assertEqual(legend.count("rgb("), 17)
        self._set(colormap="PET-Rainbow2")  # the legend is the colour table in use
        self.assertNotEqual(state.fg_legend, legend)
        self.assertEqual(display.GetColorNode().GetName(), "PET-Rainbow2")
        # a new registration drops the weight map with the fused image
        state.stages = ["rigid"]
        self._do(self.app.start_registration)
        self.assertIsNone(viewer.node("weights"))
        self.assertEqual(state.fg_layer, "functional")
        self.assertFalse(np.isnan(weights).any())

    def test_an_8bit_moving_volume_is_fused_and_scored_as_the_cli_does(self) -> None:
        # `mmfusion run` keeps an 8-bit moving image 8-bit after resampling (fusion and the metrics take
        # 8-bit values as they are and stretch others): the panel must show the CLI's numbers
        from MultimodalFusionLib import pipeline
        from MultimodalFusionLib.web.app import _fmt

        moving8 = sitk.Cast(sitk.RescaleIntensity(sitk.ReadImage(self.moving_path), 0, 255), sitk.sitkUInt8)
        path = str(self.root / "pet-8bit.nii.gz")
        sitk.WriteImage(moving8, path)
        state = self.app.state
        state.fixed_path, state.moving_path = self.fixed_path, path
        try:
            self._do(self.app.load_from_paths)
            state.preset, state.stages, state.initializer, state.method = "", ["rigid"], "", "average"
            # fused as they lie (no registration), then registered and fused, as `run --no-register` / `run`
            for register in (False, True):
                if register:
                    self._do(self.app.start_registration)
                    self.assertTrue(state.has_registered, state.error_message)
                self._do(self.app.start_fusion)
                self.assertTrue(state.has_fused, state.error_message)
                self.assertEqual(self.app.registered_image.GetPixelID(), sitk.sitkUInt8)
                cli = pipeline.run(self.fixed_path, path, self.root / f"cli-8bit-{register}", stages=["rigid"],
                                   methods=["average"], seed=0, register=register)
                for key, value in cli["metrics"]["average"].items():
                    self.assertAlmostEqual(self.app.fusion_metrics[key], value, places=9, msg=(register, key))
                shown = {row["name"]: row["value"] for row in state.metrics_rows}
                self.assertEqual(shown["MI (average)"], _fmt(cli["metrics"]["average"]["MI"]))
            self.assertEqual(self.app.registration_metrics, cli["registration_metrics"])
            self.assertEqual(self.app.registration.metric_after, cli["registration"].metric_after)
        finally:
            state.moving_path = self.moving_path

    def test_a_2d_pair_loads_registers_fuses_and_saves_as_mmfusion_run_does(self) -> None:
        # the page refused 2D images ("the web viewer shows 3D volumes"), though `mmfusion run` registers and fuses
        # them: two PNG slices (grey stored as RGB, as ITK's BrainWeb slices are), and the same slices as one-slice
        # volumes, give run's registration, numbers and files; a 2D image with a volume is refused naming both sizes
        import numpy as np

        from MultimodalFusionLib import pipeline
        from MultimodalFusionLib.data import testing_data_dir

        state = self.app.state
        pngs = [str(testing_data_dir() / name) for name in ("BrainT1Slice.png", "BrainProtonDensitySliceR10X13Y17.png")]
        slices = self._one_slice_volumes(37.5, 37.5)
        self.addCleanup(self._load)  # the shared app back on the 3D pair, in the quad layout
        for case, (fixed, moving), files in (("2D", pngs, {"fused": "fused.png", "weights": "weights.nrrd"}),
                                             ("one-slice", slices, {"fused": "fused.nii.gz",
                                                                    "weights": "weights.nii.gz"})):
            with self.subTest(case):
                state.fixed_path, state.moving_path = fixed, moving
                self._do(self.app.load_from_paths)
                self.assertEqual(state.error_message, "")
                self.assertTrue(state.has_fixed and state.is_2d)
                self.assertIn("2D pair (181 x 217 and 221 x 257 pixels)", state.pair_text)
                self.assertEqual(self.app.layout_manager.layout_id, "Fusion axial")  # the axial view alone
                self.assertTrue(state.wl_enabled)  # the grey anatomy's window/level
                state.preset, state.stages, state.initializer, state.seed, state.method = "", ["rigid"], "", 0, "average"
                self._do(self.app.start_registration)
                self._do(self.app.start_fusion)
                self.assertTrue(state.has_fused, state.error_message)
                cli = pipeline.run(fixed, moving, self.root / f"cli-{case}", stages=["rigid"], methods=["average"],
                                   seed=0)
                self.assertEqual(self.app.registration.transform.GetParameters(),
                                 cli["registration"].transform.GetParameters())
                self.assertEqual(self.app.registration_metrics, cli["registration_metrics"])
                self.assertEqual(self.app.fusion_metrics, cli["metrics"]["average"])  # fused as run fuses, not stretched
                self.assertEqual(state.download_names["fused"], files["fused"])
                self.assertEqual(state.download_names["weights"], files["weights"])
                fused = sitk.ReadImage(str(self.app.result_file("fused")))
                run_fused = sitk.ReadImage(cli["files"]["fused_average"])
                self.assertEqual(fused.GetSize(), run_fused.GetSize())
                self.assertEqual(fused.GetOrigin(), run_fused.GetOrigin())  # the one-slice volume's place kept
                self.assertTrue(np.array_equal(sitk.GetArrayFromImage(fused), sitk.GetArrayFromImage(run_fused)))
                weights = sitk.ReadImage(str(self.app.result_file("weights")))
                self.assertTrue(np.array_equal(sitk.GetArrayViewFromImage(weights).ravel(),
                                               sitk.GetArrayViewFromImage(self.app.fusion_result.weights).ravel()))
                self.assertIn(b"<html", self.app.result_bytes("report")[:200].lower())
                # the slice shown in the axial view, the fused image over it (not a blank view)
                from MultimodalFusionLib.web.viewer import _POSITION_CORNER, capture_view

                axial = next(v for v in self.app.slicer_app.view_manager.get_slice_views() if v.name == "Red")
                self.assertGreater((capture_view(axial).max(axis=-1) > 40).mean(), 0.3)
                # where the slice lies, as Slicer shows the file: the one-slice volumes' 37.5 mm (it had read the 2D
                # image's "S: 0.0 mm"), a PNG's 0 mm
                self.assertEqual(self.app.viewer._orientation_labels["Red"].GetText(_POSITION_CORNER),
                                 {"2D": "S: 0.0 mm", "one-slice": "S: 37.5 mm"}[case])
        # a PNG slice with a volume: both sizes named, and the pair shown stays
        state.fixed_path, state.moving_path = pngs[0], self.moving_path
        self._do(self.app.load_from_paths)
        self.assertIn("The fixed image 'BrainT1Slice.png' is 2D (size 181 x 217) but the moving image 'pet.nii.gz' is "
                      "3D (size ", state.error_message)
        self.assertIn("Fix:", state.error_message)
        self.assertTrue(state.is_2d)
        self._load()
        self.assertFalse(state.is_2d)
        self.assertEqual(self.app.layout_manager.layout_id, "Fusion quad")
        axial = next(v for v in self.app.slicer_app.view_manager.get_slice_views() if v.name == "Red")
        self.assertEqual(self.app.viewer._orientation_labels["Red"].GetText(_POSITION_CORNER),
                         f"S: {axial.get_slice_value() + 0.0:.1f} mm")  # a volume's slices where they lie

    def _dicom_slices(self, fixed_z: float, moving_z: float) -> list[str]:
        """One axial DICOM file each (test_dicom_inputs.write_series: a CT and an MR slice of 32 x 32 pixels of 1 mm,
        the MR 2 and 1 mm off in the plane), at S ``fixed_z`` and ``moving_z`` mm: their paths."""
        from test_dicom_inputs import write_series

        paths = []
        for name, position, modality in (("ct", (-12.0, -14.0, fixed_z), "CT"), ("mr", (-10.0, -13.0, moving_z), "MR")):
            folder = self.root / f"dicom-{name}-at-{position[2]}"
            if not folder.exists():
                write_series(str(folder), positions=[position], rows=32, cols=32, pixel_spacing=(1.0, 1.0),
                             modality=modality, prefix=name)
            paths.append(str(folder / f"{name}0000.dcm"))
        return paths

    def test_a_dicom_file_of_one_slice_is_shown_and_saved_where_it_lies(self) -> None:
        # one axial DICOM file, read as a 2D image, had lost its ImagePositionPatient's S: the axial view said
        # "S: 0.0 mm" where Slicer shows the file at 37.5 mm, and the fused download was a PNG with no place at all.
        # Read as the one-slice volume it is, it loads, registers, fuses and saves as `mmfusion run` does them, the
        # view at the file's S, the fused image where the fixed file lies
        from MultimodalFusionLib import pipeline
        from MultimodalFusionLib.web.viewer import _POSITION_CORNER

        state = self.app.state
        fixed, moving = self._dicom_slices(37.5, 37.5)
        self.addCleanup(self._load)  # the shared app back on the 3D pair, in the quad layout
        self._set(fixed_path=fixed, moving_path=moving, error_message="")
        self._do(self.app.load_from_paths)
        self.assertEqual(state.error_message, "")
        self.assertTrue(state.is_2d)
        self.assertIn("2D pair (32 x 32 and 32 x 32 pixels)", state.pair_text)
        self.assertEqual(self.app.viewer._orientation_labels["Red"].GetText(_POSITION_CORNER), "S: 37.5 mm")
        self._set(preset="", stages=["rigid"], initializer="", seed=0, method="average")
        self._do(self.app.start_registration)
        self._do(self.app.start_fusion)
        self.assertTrue(state.has_fused, state.error_message)
        cli = pipeline.run(fixed, moving, self.root / "cli-dicom-slices", stages=["rigid"], methods=["average"], seed=0)
        self.assertEqual(self.app.registration.transform.GetParameters(), cli["registration"].transform.GetParameters())
        self.assertEqual(state.download_names["fused"], "fused.nii.gz")
        fused, run_fused = sitk.ReadImage(str(self.app.result_file("fused"))), sitk.ReadImage(cli["files"]["fused_average"])
        self.assertEqual(fused.GetOrigin(), (-12.0, -14.0, 37.5))  # where Slicer shows the fixed file
        self.assertEqual((fused.GetSize(), fused.GetOrigin(), fused.GetSpacing()),
                         (run_fused.GetSize(), run_fused.GetOrigin(), run_fused.GetSpacing()))

    def test_images_placed_apart_show_n_a_before_their_registration(self) -> None:
        # no fixed voxel inside the moving image as they lie: MI/NCC before are NaN over 0 voxels, shown n/a as the
        # report and the CLI show them (the panel had shown "nan → 1.011")
        moving = sitk.ReadImage(self.moving_path)
        moving.SetOrigin(tuple(o + d for o, d in zip(moving.GetOrigin(), (1000.0, 0.0, 0.0))))
        path = str(self.root / "pet-apart.nii.gz")
        sitk.WriteImage(moving, path)
        state = self.app.state
        state.fixed_path, state.moving_path = self.fixed_path, path
        try:
            self._do(self.app.load_from_paths)
            state.preset, state.stages, state.initializer = "", ["rigid"], ""
            self._do(self.app.start_registration)
            self.assertTrue(state.has_registered, state.error_message)
            self.assertEqual(self.app.registration_metrics["before"]["voxels"], 0)
            shown = {row["name"]: row["value"] for row in state.registration_rows}
            for key in ("MI", "NCC", "NMI"):
                self.assertRegex(shown[f"{key} before → after"], r"^n/a → -?\d", shown)
        finally:
            state.moving_path = self.moving_path

    def test_fuse_without_registration_refuses_images_that_do_not_meet_as_they_lie(self) -> None:
        # as `mmfusion run --no-register` refuses them: two one-slice volumes 100 mm apart (as 2D images they lose
        # their depth, and had been fused as if they lay together), and volumes 1000 mm apart (the moving image
        # resampled at Load for the default window had skipped the page's check: fuse's "The functional image (b) is
        # constant" instead)
        from MultimodalFusionLib import pipeline

        moving = sitk.ReadImage(self.moving_path)
        moving.SetOrigin(tuple(o + d for o, d in zip(moving.GetOrigin(), (1000.0, 0.0, 0.0))))
        cases = {"volumes": (self.fixed_path, str(self.root / "pet-1000mm-away.nii.gz"))}
        sitk.WriteImage(moving, cases["volumes"][1])
        cases["one-slice volumes"] = tuple(self._one_slice_volumes(37.5, 137.5))
        cases["DICOM files of one slice"] = tuple(self._dicom_slices(37.5, 137.5))  # fused as if together, before
        state = self.app.state
        self.addCleanup(self._load)
        for case, (fixed, moving) in cases.items():
            with self.subTest(case):
                with self.assertRaisesRegex(InputError, "does not overlap the fixed image .* as they lie"):
                    pipeline.run(fixed, moving, self.root / f"no-register-{case}", register=False, methods=["average"])
                state.fixed_path, state.moving_path = fixed, moving
                self._do(self.app.load_from_paths)
                self.assertTrue(state.has_fixed and not state.error_message, state.error_message)
                state.method = "average"
                self._do(self.app.start_fusion)
                self.assertFalse(state.has_fused)
                self.assertIn("The moving image does not overlap the fixed image as they lie", state.error_message)
                self.assertIn("Fix: Press Register first", state.error_message)

    def test_an_infinite_psnr_shows_inf_as_the_console_table_does(self) -> None:
        # a fused image equal to both sources (an image fused with itself) has an infinite PSNR, a real value: the
        # console table prints "inf" and the report "∞"; 0ec7343 had made the panel's row say "n/a" (its _fmt went
        # through io.number_text without naming the infinity), as if nothing had been compared
        state = self.app.state
        state.fixed_path, state.moving_path = self.fixed_path, self.fixed_path
        try:
            self._do(self.app.load_from_paths)
            state.method = "average"
            self._do(self.app.start_fusion)
            self.assertTrue(state.has_fused, state.error_message)
            self.assertEqual(self.app.fusion_metrics["PSNR"], math.inf)
            shown = {row["name"]: row["value"] for row in state.metrics_rows}
            self.assertEqual(shown["PSNR (average)"], "inf")
        finally:
            state.moving_path = self.moving_path

    def test_fused_download_has_the_fixed_grid_even_a_sheared_one(self) -> None:
        # NIfTI cannot hold a sheared direction (a gantry-tilted CT): the fused volume comes as .mha there
        base_fixed, base_moving = sitk.ReadImage(self.fixed_path), sitk.ReadImage(self.moving_path)
        turn = math.radians(20.0)
        rotation = [[math.cos(turn), -math.sin(turn), 0.0], [math.sin(turn), math.cos(turn), 0.0], [0.0, 0.0, 1.0]]
        state = self.app.state
        try:
            for shear, name in ((0.3, "fused.mha"), (0.0, "fused.nii.gz")):
                direction = [[sum(rotation[i][k] * ([[1, 0, shear], [0, 1, 0], [0, 0, 1]][k][j])
                                  for k in range(3)) for j in range(3)] for i in range(3)]
                paths = []
                for role, image in (("fixed", base_fixed), ("moving", base_moving)):
                    image = sitk.Image(image)
                    image.SetDirection([v for row in direction for v in row])
                    image.SetOrigin((10.5, -20.25, 33.0))
                    paths.append(str(self.root / f"{role}-shear{shear}.mha"))
                    sitk.WriteImage(image, paths[-1])
                state.fixed_path, state.moving_path = paths
                self._do(self.app.load_from_paths)
                self._do(self.app.start_fusion)
                self.assertTrue(state.has_fused, state.error_message)
                content = self.app.result_bytes("fused")
                self.assertEqual(state.download_names["fused"], name)  # what the page saves it as
                folder = self.root / f"download-shear{shear}"
                folder.mkdir()
                saved = folder / name
                saved.write_bytes(content)  # ITK reads it by its suffix
                fused, fixed = sitk.ReadImage(str(saved)), sitk.ReadImage(paths[0])
                self.assertEqual(fused.GetSize(), fixed.GetSize())
                for got, want in ((fused.GetOrigin(), fixed.GetOrigin()), (fused.GetSpacing(), fixed.GetSpacing()),
                                  (fused.GetDirection(), fixed.GetDirection())):
                    for g, w in zip(got, want):
                        self.assertAlmostEqual(g, w, places=5, msg=(shear, got, want))
        finally:
            state.fixed_path, state.moving_path = self.fixed_path, self.moving_path

    def test_unusable_volumes_are_refused_at_load_naming_the_file(self) -> None:
        # as `mmfusion run` refuses them before registering; a blank PET was reported at Fuse as "does
        # not overlap", and a NaN volume loaded (with a display window thrown off by the NaNs)
        self._load()
        loaded = (self.app.fixed_image, self.app.moving_image)
        moving = sitk.ReadImage(self.moving_path)
        with_nan = sitk.GetArrayFromImage(moving)
        with_nan[0, 0, :5] = float("nan")
        nan_image = sitk.GetImageFromArray(with_nan)
        nan_image.CopyInformation(moving)
        blank = sitk.Image(moving.GetSize(), sitk.sitkFloat32) + 3.0
        blank.CopyInformation(moving)
        # a complex image saved as MetaImage (real, imaginary): read with colour kept, its refusal had said "The image
        # has 2 components", naming no file
        complex_image = sitk.Compose(moving, moving)
        state = self.app.state
        try:
            for role, name, image, words in (("moving", "pet-nan.nrrd", nan_image, "5 NaN"),
                                             ("fixed", "t1-nan.nrrd", nan_image, "5 NaN"),
                                             ("moving", "pet-blank.nii.gz", blank, "constant"),
                                             ("moving", "pet-complex.mha", complex_image, "2 components"),
                                             ("fixed", "t1-complex.mha", complex_image, "2 components")):
                path = str(self.root / name)
                sitk.WriteImage(image, path)
                state.fixed_path, state.moving_path = self.fixed_path, self.moving_path
                state[f"{role}_path"] = path
                self._do(self.app.load_from_paths)
                self.assertIn(name, state.error_message)
                self.assertIn(words, state.error_message)
                self.assertIn("Fix:", state.error_message)
                self.assertEqual((self.app.fixed_image, self.app.moving_image), loaded)  # the pair shown stays
        finally:
            state.fixed_path, state.moving_path = self.fixed_path, self.moving_path
        self._load()  # and the server goes on working
        self.assertEqual(state.error_message, "")

    def test_unknown_download_makes_no_folder(self) -> None:
        before = set(os.listdir(self.workdir)) | set(os.listdir(self.root))
        for what in ("../../etc", "/tmp/x"):
            with self.assertRaisesRegex(InputError, "Unknown download"):
                self.app.result_file(what)
        self.assertEqual(set(os.listdir(self.workdir)) | set(os.listdir(self.root)), before)

    def test_colour_tables_offered_exist_and_a_bad_choice_reverts(self) -> None:
        from MultimodalFusionLib import mrml

        offered = list(self.app.state.colormaps)
        self.assertIn("PET-Heat", offered)
        scene = self.app.slicer_app.scene
        self.assertTrue(all(scene.GetFirstNodeByName(n) is not None for n in offered))
        self.assertEqual(offered, mrml.available_colormaps(scene))
        self.app.viewer.set_colormap("PET-Heat")
        self.app._on_colormap("No-Such-Table")
        self.assertIn("no colour table named 'No-Such-Table'", self.app.state.error_message)
        self.assertEqual(self.app.state.colormap, "PET-Heat")
        self.assertEqual(self.app.viewer.colormap, "PET-Heat")

    def test_a_bad_3d_rendering_preset_is_refused_when_set_and_the_control_reverts(self) -> None:
        # An unknown 3D rendering preset set by a client had been checked only at the next Fuse when there was no
        # fused image yet (nothing in the page until then), and with one the banner came but the control kept
        # showing the refused name, not the preset the 3D view shows, unlike the other display controls
        state, viewer = self.app.state, self.app.viewer
        self._load()  # a load forgets an earlier test's fused image
        self.assertIsNone(viewer.node("fused"))
        offered = list(state.vr_presets)
        self.assertEqual(state.vr_preset, viewer.vr_preset)
        self.assertIn("CT-Bone", offered)
        try:
            self._set(vr_preset="CT-Bone", error_message="")  # before Fuse: what the next Fuse shows
            self.assertEqual((viewer.vr_preset, state.error_message), ("CT-Bone", ""))
            for bad in ("No-Such-Preset", ["CT-Bone"], 7, ""):
                self._set(vr_preset=bad, error_message="")
                self.assertIn("Unknown 3D rendering preset", state.error_message, bad)
                self.assertIn("MR-Default", state.error_message)  # the fix names the list's choices
                self.assertEqual(state.vr_preset, "CT-Bone", bad)
                self.assertEqual(viewer.vr_preset, "CT-Bone", bad)
            state.error_message = ""
            self._do(self.app.start_fusion)
            self.assertTrue(state.has_fused, state.error_message)
            self.assertEqual(state.error_message, "")
            fused = viewer.node("fused")
            self.assertEqual(viewer.vr_preset, "CT-Bone")  # Fuse rendered the preset picked before it
            self.assertTrue(self.app.slicer_app.volume_rendering.get_vr_display_node(fused).GetVisibility())
            # with a fused image: refused in the banner, the control back to what the 3D view shows
            self._set(vr_preset="No-Such-Preset", error_message="")
            self.assertIn("Unknown 3D rendering preset 'No-Such-Preset'", state.error_message)
            self.assertEqual((state.vr_preset, viewer.vr_preset), ("CT-Bone", "CT-Bone"))
            self._set(vr_preset="MR-Default", error_message="")
            self.assertEqual((viewer.vr_preset, state.error_message), ("MR-Default", ""))
        finally:
            self._set(vr_preset="MR-Default", error_message="")

    def test_repeated_runs_add_no_nodes_and_a_refused_click_leaves_no_stale_banner(self) -> None:
        self._load()
        scene = self.app.slicer_app.scene
        counts = []
        for _ in range(3):
            self.app.state.stages = ["rigid"]
            self._do(self.app.start_registration)
            self.assertTrue(self.app.state.has_registered, self.app.state.error_message)
            self._do(self.app.start_fusion)
            self.assertTrue(self.app.state.has_fused, self.app.state.error_message)
            counts.append(scene.GetNumberOfNodes())
        self.assertEqual(counts[1], counts[0])
        self.assertEqual(counts[2], counts[0])

        async def double_click() -> None:
            self.app.start_registration()
            self.app.start_registration()  # refused while the first runs
            self.assertIn("still running", self.app.state.error_message)
            await self.app.worker.wait()

        self.loop.run_until_complete(double_click())
        self.assertTrue(self.app.state.job_message.startswith("Registration done"), self.app.state.job_message)
        self.assertEqual(self.app.state.error_message, "")

    def test_the_panel_shows_the_transform_as_mmfusion_register_prints_it(self) -> None:
        # the numbers users compare with Slicer, ITK-SNAP, elastix and ANTs (rotation, translation about the file's
        # centre, where the origin goes, Slicer's RAS translation): `mmfusion register` prints them, the panel had
        # shown the metrics only
        from MultimodalFusionLib import cli

        state = self.app.state
        self._load()
        state.preset, state.stages, state.initializer, state.seed = "", ["rigid"], "", 0
        self._do(self.app.start_registration)
        self.assertTrue(state.has_registered, state.error_message)
        shown = {row["name"]: row["value"] for row in state.registration_rows}
        printed = io_text.StringIO()
        with contextlib.redirect_stdout(printed):
            code = cli.main(["register", self.fixed_path, self.moving_path, "-o", str(self.root / "cli-transform"),
                             "--stages", "rigid", "--seed", "0"])
        self.assertEqual(code, 0)
        lines = printed.getvalue().splitlines()
        for name in ("rotation", "translation", "in Slicer"):
            line = next(line for line in lines if line.startswith(f"  {name} "))
            self.assertEqual(f"  {name} {shown[name[0].upper() + name[1:]]}", line)
        # the demo's PET is turned 6 degrees: the rotation found is near it
        self.assertAlmostEqual(float(shown["Rotation"].split()[0]), 6.0, delta=1.0)

    def test_a_seed_typed_in_the_page_registers_as_mmfusion_register_seed_does(self) -> None:
        # the page had no Seed field (only a script could set state.seed): the Register card's field, sent with the
        # click as a number field sends it (its text), gives `mmfusion register --seed N`'s transform to the bit; two
        # seeds differ (the default rigid stage samples at random); a bad one is refused with the seed rule's words
        import json

        from MultimodalFusionLib import cli

        state, app = self.app.state, self.app
        self._load()
        self._set(preset="", stages=["rigid"], initializer="", seed=0, error_message="")
        self.addCleanup(self._set, seed=0, error_message="")
        self.assertIn('id="mmf-seed"', app.ui.html)
        self.assertIn("--seed: a whole number from 0 to 2147483646", app.ui.html)  # the field's tooltip
        found = {}
        for seed in ("7", "8"):
            # the state still holding seed 0 (the page's own change not come yet): the click's value is taken
            self._do(lambda seed=seed: app.start_registration({"seed": seed}))
            self.assertEqual(state.error_message, "")
            self.assertEqual(app.registration.parameters["seed"], int(seed))
            printed = io_text.StringIO()
            with contextlib.redirect_stdout(printed):
                code = cli.main(["register", self.fixed_path, self.moving_path, "-o", str(self.root / f"cli-seed-{seed}"),
                                 "--stages", "rigid", "--seed", seed, "--json"])
            self.assertEqual(code, 0)
            run = json.loads(printed.getvalue())
            shown = json.loads(json.dumps(app.registration.to_dict()))
            self.assertEqual(shown["transform"], run["transform"], seed)  # every number, to the last digit
            self.assertEqual((shown["metric_before"], shown["metric_after"]), (run["metric_before"], run["metric_after"]))
            self.assertEqual(run["parameters"]["seed"], int(seed))
            found[seed] = app.registration.transform.GetParameters()
        self.assertNotEqual(found["7"], found["8"])  # another sampling, another transform
        # again with seed 7 (the field left at 8): the first result to the bit
        self._do(lambda: app.start_registration({"seed": "7"}))
        self.assertEqual(app.registration.transform.GetParameters(), found["7"])
        # a bad seed typed is refused before any job, with the engine's range and the field to fix it in
        for typed, shown in (("-1", "'-1'"), ("2147483647", "2147483647"), ("1.5", "'1.5'"), ("abc", "'abc'")):
            self._set(error_message="")
            registration = app.registration
            self._do(lambda typed=typed: app.start_registration({"seed": typed}))
            self.assertEqual(state.error_message, f"The registration seed must be a whole number from 0 to 2147483646, "
                                                  f"not {shown}. Fix: Type a whole number in the Seed field, e.g. 0 "
                                                  "(the CLI's --seed; Register uses 0 unless told otherwise).")
            self.assertIs(app.registration, registration)  # nothing registered

    def test_the_seed_fields_text_registers_as_the_number_it_holds_and_an_empty_field_is_refused(self) -> None:
        # what Chromium's number field sends (Testing/test_web_browser.py types them): its text, "" when cleared or
        # holding no number ("1e"). "" had registered with seed 0 without a word, the field still empty; "7.0", "1e3"
        # and "-0", whole numbers the field and the engine take (a script's 7.0 registers), had been refused; 5000
        # digits pasted had ended in a ValueError traceback (int() of so many digits), nothing in the page
        state, app = self.app.state, self.app
        self._load()
        self._set(preset="", stages=["rigid"], initializer="", seed=0, error_message="")
        self.addCleanup(self._set, seed=0, error_message="")
        for typed, shown in (("", None), ("9" * 5000, "'9999")):
            self._set(error_message="")
            registration = app.registration
            self._do(lambda typed=typed: app.start_registration({"seed": typed}))
            if shown is None:
                self.assertEqual(state.error_message, "The Seed field holds no number: it is empty, or its text is not "
                                                      "a number (e.g. '1e'), which a browser's number field sends as "
                                                      "empty. Fix: Type a whole number in the Seed field, e.g. 0 (the "
                                                      "CLI's --seed; Register uses 0 unless told otherwise).")
            else:
                self.assertIn(f"from 0 to 2147483646, not {shown}", state.error_message)
            self.assertIs(app.registration, registration)  # nothing registered
        for typed, seed in (("7.0", 7), ("1e3", 1000), ("-0", 0)):
            self._set(error_message="")
            self._do(lambda typed=typed: app.start_registration({"seed": typed}))
            self.assertEqual(state.error_message, "", typed)
            self.assertEqual(app.registration.parameters["seed"], seed, typed)

    def test_the_results_state_the_seed_the_shown_registration_used_not_the_fields(self) -> None:
        # the Seed field can change after Register: nothing in the page (table, message, downloaded report) had said
        # which seed the result in front of the user used, where run's metrics.json records it. The table and the
        # report now read it from the result: registered with 7, the field then at 9, both say 7
        import re

        state, app = self.app.state, self.app
        self._load()
        self._set(preset="", stages=["rigid"], initializer="", seed=0, error_message="")
        self.addCleanup(self._set, seed=0, error_message="")
        self._do(lambda: app.start_registration({"seed": "7"}))
        self.assertEqual(state.error_message, "")
        self._set(seed="9")  # typed after Register, not registered
        self._do(lambda: app.start_fusion({"method": "average"}))
        self.assertEqual(state.error_message, "")
        shown = {row["name"]: row["value"] for row in state.registration_rows}
        self.assertEqual((shown["Seed"], shown["Preset"], shown["Stages"]), ("7", "none", "rigid"))
        page = app.result_bytes("report").decode("utf-8")
        self.assertEqual(re.findall(r'<th class="name">(preset|seed)</th><td>([^<]*)</td>', page),
                         [("preset", "none"), ("seed", "7")])
        self.assertEqual(state.seed, "9")  # the field as the user left it

    def test_initializer_choice_reaches_the_engine(self) -> None:
        from unittest import mock

        from MultimodalFusionLib import registration
        from MultimodalFusionLib.registration.accuracy import transform_error
        from MultimodalFusionLib.registration.parameters import INITIALIZERS
        from MultimodalFusionLib.web.app import INITIALIZER_CHOICES

        state = self.app.state
        # the CLI's --initializer values, and "" for the preset's (the CLI without the option)
        self.assertEqual([c["value"] for c in state.initializers], ["", *INITIALIZERS])
        self.assertEqual(state.initializer, "")
        self.assertEqual(set(state.initializer_help), {c["value"] for c in INITIALIZER_CHOICES})
        self.assertIn("30 degrees", state.initializer_help["search"])

        state.fixed_path, state.moving_path = self.fixed_path, self.turned_path
        self._do(self.app.load_from_paths)
        self.assertTrue(state.has_moving, state.error_message)
        calls = []
        real_register = registration.register

        def recording_register(*args, **kwargs):
            calls.append(kwargs)
            return real_register(*args, **kwargs)

        def rows() -> dict:
            return {r["name"]: r["value"] for r in state.registration_rows}

        with mock.patch.object(registration, "register", recording_register):
            try:
                # the default start: the preset's (here none: geometry), which cannot undo 90 degrees
                state.preset, state.stages = "", ["rigid"]
                self._do(self.app.start_registration)
                self.assertTrue(state.has_registered, state.error_message)
                self.assertIsNone(calls[-1]["initializer"])
                self.assertEqual(rows()["Initializer"], "geometry")
                self.assertGreater(transform_error(self.app.registration.transform, self.turned_truth,
                                                   self.fixed_image)["mean"], 20.0)
                # the search finds the quarter turn, and the metrics table says so
                state.initializer = "search"
                self._do(self.app.start_registration)
                self.assertTrue(state.has_registered, state.error_message)
                self.assertEqual(calls[-1]["initializer"], "search")
                info = self.app.registration.initializer
                self.assertEqual(info["name"], "search")
                self.assertAlmostEqual(info["rotation_deg"], 90.0, delta=15.0)
                self.assertTrue(rows()["Initializer"].startswith("search: "), rows())
                self.assertLess(transform_error(self.app.registration.transform, self.turned_truth,
                                                self.fixed_image)["mean"], 2.0)
                # an engine refusal (search before a B-spline first stage) is the banner, not a crash
                state.stages = ["bspline"]
                self._do(self.app.start_registration)
                self.assertIn("rigid or affine first stage", state.error_message)
            finally:
                state.initializer, state.stages = "", ["rigid"]
                state.fixed_path, state.moving_path = self.fixed_path, self.moving_path

    def _set(self, **values) -> None:
        """Change panel values as the page does: the state's change callbacks run on flush (a state
        is flushed once ready, which a running server marks it when a page connects)."""
        self.app.state.ready()
        with self.app.state:
            self.app.state.update(values)

    def test_window_level_and_functional_range_controls_drive_the_display_nodes(self) -> None:
        from MultimodalFusionLib.web.viewer import CT_WINDOW_LEVEL_PRESETS, image_range

        self.assertEqual(self.controls_enabled_before_load, (False, False))
        ct, pet, _, _ = self._load_ct_pet("ct.nii.gz", "pet_suv.nii.gz")
        state, viewer = self.app.state, self.app.viewer
        self.assertTrue(state.wl_enabled and state.fg_range_enabled, state.error_message)
        bg = viewer.node("fixed").GetDisplayNode()
        ct_lo, ct_hi = image_range(ct)
        self.assertEqual((state.bg_level_min, state.bg_level_max), (ct_lo, ct_hi))  # the image's HU range
        self.assertEqual(state.wl_preset, "auto")
        self.assertAlmostEqual(state.bg_window, bg.GetWindow(), delta=state.bg_step)
        # a CT background offers Slicer's CT presets (an MR one does not: see below)
        offered = [p["value"] for p in state.wl_presets]
        self.assertTrue(set(CT_WINDOW_LEVEL_PRESETS) <= set(offered), offered)

        self._set(wl_preset="CT-Brain")
        self.assertEqual(bg.GetAutoWindowLevel(), 0)
        self.assertEqual((bg.GetWindow(), bg.GetLevel()), CT_WINDOW_LEVEL_PRESETS["CT-Brain"])
        self.assertEqual((state.bg_window, state.bg_level), CT_WINDOW_LEVEL_PRESETS["CT-Brain"])

        self._set(bg_window=400, bg_level=40)  # the sliders: a manual window
        self.assertEqual((bg.GetWindow(), bg.GetLevel()), (400.0, 40.0))
        self.assertEqual(state.wl_preset, "manual")
        self._set(bg_level="-600")  # the number field sends text
        self.assertEqual((bg.GetWindow(), bg.GetLevel()), (400.0, -600.0))

        # foreground: lower threshold (transparent below) and upper display limit, in SUV
        fg = viewer.node("moving").GetDisplayNode()
        pet_lo, pet_hi = image_range(pet)
        self.assertEqual((state.fg_min, state.fg_max), (pet_lo, pet_hi))
        self.assertLess(pet_lo, state.fg_lower)
        self.assertLess(state.fg_lower, state.fg_upper)
        self._set(fg_lower=1.5, fg_upper=2.5)
        self.assertEqual(fg.GetApplyThreshold(), 1)
        self.assertAlmostEqual(fg.GetLowerThreshold(), 1.5)
        self.assertAlmostEqual(fg.GetWindowLevelMin(), 1.5)
        self.assertAlmostEqual(fg.GetWindowLevelMax(), 2.5)

        # colour table, opacity and layer changes keep both
        self._set(colormap="PET-Rainbow2", fg_opacity=0.7)
        self.assertEqual(self.app.viewer.colormap, "PET-Rainbow2")
        self.assertEqual((bg.GetWindow(), bg.GetLevel()), (400.0, -600.0))
        self.assertAlmostEqual(fg.GetLowerThreshold(), 1.5)
        self.assertAlmostEqual(fg.GetWindowLevelMax(), 2.5)

        # a registration shows a new node (the registered PET, same units): the range carries over
        self.app.state.stages = ["rigid"]
        self._do(self.app.start_registration)
        self.assertTrue(state.has_registered, state.error_message)
        reg = viewer.node("registered").GetDisplayNode()
        self.assertIs(viewer.foreground_node(), viewer.node("registered"))
        self.assertAlmostEqual(reg.GetLowerThreshold(), 1.5)
        self.assertAlmostEqual(reg.GetWindowLevelMax(), 2.5)
        self.assertEqual((state.fg_lower, state.fg_upper), (1.5, 2.5))
        self.assertEqual((bg.GetWindow(), bg.GetLevel()), (400.0, -600.0))

        # the fused layer has its own scale: its range starts from the percentile rule, in its units
        self._do(self.app.start_fusion)
        self._set(fg_layer="fused")
        fused_lo, fused_hi = image_range(viewer.images["fused"])
        self.assertEqual((state.fg_min, state.fg_max), (fused_lo, fused_hi))
        fused = viewer.node("fused").GetDisplayNode()
        self.assertAlmostEqual(state.fg_upper, fused.GetWindowLevelMax(), delta=state.fg_step)
        self._set(fg_lower=fused_lo + 0.5 * (fused_hi - fused_lo))
        self.assertAlmostEqual(fused.GetLowerThreshold(), state.fg_lower)
        self._set(fg_layer="functional")  # back to the PET: its own range again
        self.assertEqual((state.fg_lower, state.fg_upper), (1.5, 2.5))

        # Auto: the percentile rules again
        self.app.reset_functional_range()
        self.assertNotAlmostEqual(reg.GetWindowLevelMax(), 2.5)
        self.assertAlmostEqual(state.fg_upper, reg.GetWindowLevelMax(), delta=state.fg_step)
        self._set(wl_preset="auto")
        self.assertNotEqual((bg.GetWindow(), bg.GetLevel()), (400.0, -600.0))
        self.assertAlmostEqual(state.bg_level, bg.GetLevel(), delta=state.bg_step)

        # an MR background: no CT presets; a new load forgets the CT's manual window
        self._set(bg_window=500, bg_level=100)
        self._load()
        self.assertEqual([p["value"] for p in state.wl_presets], ["auto", "manual"])
        self.assertEqual(state.wl_preset, "auto")
        self.assertIsNone(viewer.background_window_level)

    def test_fusion_windows_fuse_as_the_cli_does_and_a_bad_one_shows_the_engines_message(self) -> None:
        # The panel fused without any window: a CT scaled over its whole range (-1161..1156 HU here) put soft tissue
        # within a few grey levels, and a PET's SUV window could not be set. Each image's window, as a preset or as
        # Window and Level typed, must fuse what `mmfusion fuse --window-a LO HI --window LO HI` writes
        import contextlib
        import io as text_io

        import numpy as np

        from MultimodalFusionLib import cli, mrml
        from MultimodalFusionLib.web.viewer import capture_view

        ct, pet, ct_path, pet_path = self._load_ct_pet("fw-ct.nii.gz", "fw-pet-suv.nii.gz")
        state, app = self.app.state, self.app
        self.assertTrue(state.has_fixed, state.error_message)
        offered = {side: [item["value"] for item in state[f"fw_{side}_presets"]] for side in "ab"}
        self.assertEqual(offered["a"], ["default", "manual", "percentile", "ct-soft-tissue", "ct-lung", "ct-bone",
                                        "ct-brain"])  # a CT in HU: no SUV windows
        self.assertEqual(offered["b"], ["default", "manual", "percentile", "suv-5", "suv-8"])  # a PET in SUV: no CT's
        self.assertEqual((state.fw_a_preset, state.fw_b_preset), ("default", "default"))
        self.assertIn("as mmfusion fuse without --window-a", state.fw_a_text)

        def cli_fuse(*flags: str) -> np.ndarray:
            out = str(self.root / "fw-cli.nii.gz")
            err = text_io.StringIO()
            with contextlib.redirect_stdout(text_io.StringIO()), contextlib.redirect_stderr(err):
                code = cli.main(["fuse", ct_path, pet_path, "--method", "average", "-o", out, *flags])
            self.assertEqual(code, 0, err.getvalue())
            return sitk.GetArrayFromImage(sitk.ReadImage(out))

        def fuse_in_the_panel(**values) -> np.ndarray:
            self._set(method="average", error_message="", **values)
            self._do(app.start_fusion)
            self.assertTrue(state.has_fused, state.error_message)
            self.assertEqual(state.error_message, "")
            # the fused volume the views show is the engine's result, as the download writes it
            shown = sitk.GetArrayFromImage(mrml.image_from_volume_node(app.viewer.node("fused")))
            downloaded = self.root / "fw-download.nii.gz"
            downloaded.write_bytes(app.result_bytes("fused"))
            np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(downloaded))), shown)
            return shown

        self.addCleanup(self._set, fg_layer="functional", fg_opacity=0.5)  # the shared app as found
        self._set(fg_layer="fused", fg_opacity=1.0)
        axial = app.slicer_app.view_manager.get_slice_views()[0]
        default = fuse_in_the_panel()
        np.testing.assert_array_equal(default, cli_fuse())
        pixels_default = capture_view(axial)

        # presets: Slicer's soft-tissue window for the CT, SUV 0..5 for the PET; the fields show them as W/L
        windowed = fuse_in_the_panel(fw_a_preset="ct-soft-tissue", fw_b_preset="suv-5")
        self.assertEqual((state.fw_a_window, state.fw_a_level, state.fw_b_window, state.fw_b_level), (400, 40, 5, 2.5))
        self.assertEqual(state.fw_a_text, "-160..240, as mmfusion fuse --window-a -160 240.")
        np.testing.assert_array_equal(windowed, cli_fuse("--window-a", "-160", "240", "--window", "0", "5"))
        self.assertGreater(np.abs(windowed - default).mean(), 5.0)  # of 255: the windows changed the fusion
        self.assertEqual(app.fusion_result.parameters["window_a"], [-160.0, 240.0])
        rows = {row["name"]: row["value"] for row in state.metrics_rows}
        self.assertEqual(rows["Fusion windows"], "fixed -160..240, moving 0..5")
        # and the fused layer in the axial view changed with it
        self._set(fg_layer="functional")
        self._set(fg_layer="fused")
        self.assertGreater(np.abs(capture_view(axial).astype(int) - pixels_default.astype(int)).mean(), 1.0)

        # Window and Level typed (the fields send text) make the preset Manual, as --window-level-a 1500 -600 does;
        # the PET's 1st-99th percentile is its own preset
        self._set(fw_a_window="1500", fw_a_level="-600", fw_b_preset="percentile")
        self.assertEqual(state.fw_a_preset, "manual")
        low, high = app.fusion_window("b")
        np.testing.assert_allclose((low, high), np.percentile(sitk.GetArrayViewFromImage(pet), [1.0, 99.0]))
        np.testing.assert_array_equal(fuse_in_the_panel(),
                                      cli_fuse("--window-level-a", "1500", "-600", "--window", repr(low), repr(high)))

        # refused before the work, in the CLI's words, with the fields named: a width of 0 or less, or no number
        for window, level, expected in (("0", "40", "fusion Window and Level 0 40: the window width must be more "
                                                     "than 0."),
                                        ("abc", "40", "fusion Window and Level 'abc' 40: the window width and level "
                                                      "must be finite numbers.")):
            self._set(fw_a_window=window, fw_a_level=level)
            self.assertTrue(state.fw_a_bad)
            self.assertIn(expected, state.fw_a_text)
            self._set(error_message="")
            self._do(app.start_fusion)
            self.assertIn(expected, state.error_message)
            self.assertFalse(state.job_busy)
        # a window that holds none of the PET's values: the engine's refusal, word for word the CLI's
        self._set(fw_a_preset="default", fw_b_preset="manual")
        self._set(fw_b_window="10", fw_b_level="100", error_message="")
        self.assertEqual(state.fw_b_text, "95..105, as mmfusion fuse --window 95 105.")
        err = text_io.StringIO()
        with contextlib.redirect_stdout(text_io.StringIO()), contextlib.redirect_stderr(err):
            code = cli.main(["fuse", ct_path, pet_path, "-o", str(self.root / "fw-none.nii.gz"), "--window", "95", "105"])
        self.assertEqual(code, 2)
        self.assertIn("holds none of its values", err.getvalue())
        self._do(app.start_fusion)
        self.assertIn("Fusion failed", state.job_message)
        self.assertIn(str(state.error_message), err.getvalue())

        # a preset the panel does not offer (a client can set anything): refused, the choice back
        self._set(fw_b_preset="ct-lung", error_message="")
        self.assertIn("Unknown fusion window preset 'ct-lung'", state.error_message)
        self.assertEqual(state.fw_b_preset, "manual")
        # a new pair starts from the engine's default again
        self._load()
        self.assertEqual((state.fw_a_preset, state.fw_b_preset), ("default", "default"))
        self.assertIsNone(app.fusion_window("a"))

    def test_the_engine_default_fusion_window_shown_is_the_one_fuse_uses(self) -> None:
        # Under Engine default the panel showed the moving image's min..max for every method, but the overlay windows
        # its functional image from the minimum to the 99.5th percentile (fusion.fuse): the fields and the words under
        # them were not what Fuse used (the test PET: -0.237..2.79 shown, -0.237..2.50 used). They follow the method now
        import numpy as np

        from MultimodalFusionLib.fusion import fuse
        from MultimodalFusionLib.web.app import _width_level

        ct, pet, _, _ = self._load_ct_pet("dw-ct.nii.gz", "dw-pet.nii.gz")
        state, app = self.app.state, self.app
        values = sitk.GetArrayViewFromImage(pet).astype(np.float64)
        low, top, high = float(values.min()), float(np.percentile(values, 99.5)), float(values.max())
        self.assertLess(top, 0.95 * high)  # the two rules give different windows here
        self.addCleanup(self._set, method="average")  # the shared app as found
        for method, window, words in (("overlay", (low, top), "min..99.5th percentile"), ("average", (low, high),
                                                                                            "min..max"),
                                      ("overlay", (low, top), "min..99.5th percentile")):
            with self.subTest(method=method):
                self._set(method=method, fw_b_preset="default", error_message="")
                self.assertEqual(state.fw_b_text, f"The engine's default ({words}: {window[0]:.6g}..{window[1]:.6g}), "
                                                  "as mmfusion fuse without --window.")
                self.assertEqual((state.fw_b_window, state.fw_b_level), _width_level(window))
                self._do(app.start_fusion)
                self.assertTrue(state.has_fused, state.error_message)
                result = app.fusion_result
                if method == "overlay":  # the engine records the window it took
                    np.testing.assert_allclose(result.parameters["window_b"], window, rtol=1e-12)
                # the window shown, given to fuse, fuses what the default did
                given = fuse(ct, pet, method, window_b=app._fw_default["b"][0])
                np.testing.assert_allclose(sitk.GetArrayViewFromImage(given.image),
                                           sitk.GetArrayViewFromImage(result.image), atol=1e-3)

    def test_the_engine_default_before_registration_is_that_of_the_image_fuse_takes(self) -> None:
        # Before Register, Fuse resamples the moving image onto the fixed grid as it lies and fuses that, but the
        # panel computed the default on the moving image as loaded: a PET larger than the CT's field of view, its
        # bladder outside it, showed min..99.5th percentile -0.237..30 where Fuse used -0.19..2.41 (and min..max
        # likewise): fusing with the window shown gave another image
        import numpy as np

        from MultimodalFusionLib import data
        from MultimodalFusionLib.fusion import fuse
        from MultimodalFusionLib.web.app import _width_level

        tissues = data.mni152(spacing_mm=4.0)
        ct, pet = data.synthetic_contrast(tissues, "ct"), data.synthetic_contrast(tissues, "pet")
        ct = ct[:, :, ct.GetSize()[2] // 3: 2 * ct.GetSize()[2] // 3]  # the CT covers the middle third only
        values = sitk.GetArrayFromImage(pet)
        values[:4] = np.where(values[:4] > 0.5, 30.0, values[:4])  # a hot bladder below the CT's field of view
        hot = sitk.GetImageFromArray(values)
        hot.CopyInformation(pet)
        ct_path, pet_path = str(self.root / "fov-ct.nii.gz"), str(self.root / "fov-pet.nii.gz")
        sitk.WriteImage(ct, ct_path)
        sitk.WriteImage(hot, pet_path)
        state, app = self.app.state, self.app
        self.addCleanup(self._set, method="average")  # the shared app as found
        for method in ("overlay", "average"):
            with self.subTest(method=method):
                self._set(method=method, error_message="")
                state.fixed_path, state.moving_path = ct_path, pet_path
                self._do(app.load_from_paths)  # nothing registered nor fused: Fuse resamples the moving image
                self.assertTrue(state.has_moving, state.error_message)
                shown = app._fw_default["b"][0]
                self.assertEqual((state.fw_b_preset, state.fw_b_window, state.fw_b_level),
                                 ("default", *_width_level(shown)))
                self._do(app.start_fusion)
                self.assertTrue(state.has_fused, state.error_message)
                functional, result = app.registered_image, app.fusion_result
                taken = sitk.GetArrayViewFromImage(functional).astype(np.float64)
                top = float(np.percentile(taken, 99.5)) if method == "overlay" else float(taken.max())
                np.testing.assert_allclose(shown, (taken.min(), top), rtol=1e-12)
                if method == "overlay":
                    np.testing.assert_allclose(result.parameters["window_b"], shown, rtol=1e-12)
                given = fuse(ct, functional, method, window_b=shown)
                np.testing.assert_allclose(sitk.GetArrayViewFromImage(given.image),
                                           sitk.GetArrayViewFromImage(result.image), atol=1e-3)

    def test_a_left_drag_in_a_slice_view_moves_the_window_level_controls(self) -> None:
        from vtkmodules.vtkCommonCore import vtkCommand

        self._load()
        self._set(wl_preset="auto")
        state, viewer = self.app.state, self.app.viewer
        bg = viewer.node("fixed").GetDisplayNode()
        window0, level0 = bg.GetWindow(), bg.GetLevel()
        view = self.app.slicer_app.view_manager.get_slice_views()[0]
        view.render_window().SetSize(200, 200)
        view.interactor().InvokeEvent(vtkCommand.WindowResizeEvent)  # as the page's resize does
        interactor = view.interactor()
        interactor.SetEventPosition(100, 100)
        interactor.InvokeEvent(vtkCommand.MouseMoveEvent)
        interactor.InvokeEvent(vtkCommand.LeftButtonPressEvent)
        interactor.SetEventPosition(140, 130)  # right and up: a wider window, a higher level
        interactor.InvokeEvent(vtkCommand.MouseMoveEvent)
        interactor.InvokeEvent(vtkCommand.LeftButtonReleaseEvent)
        self.assertGreater(bg.GetWindow(), window0)
        self.assertGreater(bg.GetLevel(), level0)
        # the panel follows the drag: values (as the fields show them), Manual, the user's value kept
        self.assertAlmostEqual(state.bg_window, bg.GetWindow(), delta=state.bg_step)
        self.assertAlmostEqual(state.bg_level, bg.GetLevel(), delta=state.bg_step)
        self.assertEqual(state.wl_preset, "manual")
        self.assertEqual(viewer.background_window_level, (bg.GetWindow(), bg.GetLevel()))
        dragged = (bg.GetWindow(), bg.GetLevel())
        self._set(fg_opacity=0.3)  # the panel's echo and other controls leave the dragged value alone
        self.assertEqual((bg.GetWindow(), bg.GetLevel()), dragged)
        # and the sliders and Auto still drive the display after a drag
        self._set(bg_window=50, bg_level=20)
        self.assertEqual((bg.GetWindow(), bg.GetLevel()), (50.0, 20.0))
        self._set(wl_preset="auto")
        self.assertAlmostEqual(bg.GetWindow(), window0, delta=1e-3 * window0)
        self.assertAlmostEqual(state.bg_window, window0, delta=state.bg_step)
        self._set(fg_opacity=0.5)


@unittest.skipUnless(_HAVE_TRAME_SLICER, "trame-slicer is not installed (pip install 'slicer-multimodalfusion[web]')")
@unittest.skipUnless(os.name == "posix", "SIGTERM is a POSIX signal")
class _WebServerProcess(unittest.TestCase):
    """A real ``mmfusion web`` in a subprocess, in its own session (it and nothing else is stopped)."""

    @staticmethod
    def _popen(tmp: str, *options: str, path: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, TMPDIR=tmp, PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join([*path, repo, os.environ.get("PYTHONPATH", "")]))
        log = os.path.join(tmp, "server.log")
        with open(log, "wb") as out:
            server = subprocess.Popen([sys.executable, "-m", "MultimodalFusionLib.cli", "web", "--port", "0", *options],
                                      stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        return server, log

    def _start(self, tmp: str, *options: str, path: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
        server, log = self._popen(tmp, *options, path=path)
        self.addCleanup(self._kill, server)
        return server, log

    @staticmethod
    def _kill(server: subprocess.Popen) -> None:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)  # its own session: the server and nothing else
            server.wait(timeout=30)

    @staticmethod
    def _wait_for(condition, what: str, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} within {timeout} s")
            time.sleep(0.02)

    def _start_serving(self, tmp: str, *options: str) -> tuple[subprocess.Popen, str]:
        """:meth:`_start`, then wait until the server serves (it is still running)."""
        server, log = self._start(tmp, *options)
        self._wait_for(lambda: "App running at" in Path(log).read_text() or server.poll() is not None,
                       "running server")
        self.assertIsNone(server.poll(), Path(log).read_text())
        return server, log

    @classmethod
    def _class_servers(cls, *option_sets: tuple[str, ...]) -> list[tuple[str, subprocess.Popen, str, int]]:
        """Serving servers for the class, one with each of ``option_sets``, started at once (a start takes 6-9 s,
        most of it one core's): each a folder of its own (its TMPDIR, its log ``server.log`` there), stopped after
        the class. Returns (folder, server, log, port) of each."""
        started = []
        for options in option_sets:
            tmp = tempfile.TemporaryDirectory()
            cls.addClassCleanup(tmp.cleanup)
            server, log = cls._popen(tmp.name, *options)
            cls.addClassCleanup(cls._kill, server)
            started.append((tmp.name, server, log))
        for _, server, log in started:
            cls._wait_for(lambda log=log, server=server: "App running at" in Path(log).read_text()
                          or server.poll() is not None, "running server")
            if server.poll() is not None:
                raise AssertionError(f"the server ended in its start-up:\n{Path(log).read_text()}")
        return [(tmp, server, log, _port(log)) for tmp, server, log in started]

    @classmethod
    def _serve_the_class(cls, *options: str) -> None:
        """One serving server for all the class's tests (``cls.tmp``, ``cls.server``, ``cls.log``, ``cls.port``) where
        each needs one of the same options and leaves it serving. Each test reads the log from where it stood at the
        test's start (:meth:`_log_since`), and checks the state it changes from where it found it."""
        ((cls.tmp, cls.server, cls.log, cls.port),) = cls._class_servers(options)

    def setUp(self) -> None:
        if getattr(self, "server", None) is not None:  # the class's server: still serving, its log from here on
            self.assertIsNone(self.server.poll(), Path(self.log).read_text())
            self.log_start = len(Path(self.log).read_text())

    def _log_since(self) -> str:
        """The class's server's log since this test started."""
        return Path(self.log).read_text()[self.log_start:]


class ServerStopTest(_WebServerProcess):
    """``mmfusion web`` in a subprocess: a SIGTERM leaves no work folder behind, during start-up too (the
    default action ended the process at once, leaving an empty ``mmfusion-web-*`` folder)."""

    def _work_folders(self, tmp: str) -> list[str]:
        return [name for name in os.listdir(tmp) if name.startswith("mmfusion-web-")]

    def test_sigterm_during_start_up_removes_the_work_folder(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            server, log = self._start(tmp)
            self._wait_for(lambda: self._work_folders(tmp) or server.poll() is not None, "work folder")
            self.assertIsNone(server.poll(), Path(log).read_text())
            server.send_signal(signal.SIGTERM)  # the scene and views are still being made
            server.wait(timeout=60)
            text = Path(log).read_text()
            self.assertNotIn("App running at", text)  # it was stopped in its start-up
            self.assertEqual(server.returncode, 128 + signal.SIGTERM, text)
            self.assertEqual(self._work_folders(tmp), [])

    def test_sigterm_in_the_middle_of_importing_slicer_core_ends_the_start_up_cleanly(self) -> None:
        # the start-up's handler raised SystemExit where the signal came: in the middle of importing VTK and
        # slicer-core it turned into an ImportError (exit 1) or crashed the process (SIGSEGV, the work folder
        # left), 2 times in 6 with the signal 0.2-0.5 s after the work folder appeared. Here the server sends
        # itself SIGTERM as slicer-core imports its MRMLCore (a sitecustomize on its path, an import hook kept
        # before VTK's own; nothing of the app's): exit 1, "ImportError: Failed to load vtkRemoteIO", before
        with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as hook:
            Path(hook, "sitecustomize.py").write_text(
                "import os, signal, sys\n"
                "class SignalOnImport:\n"
                "    def find_spec(self, name, path=None, target=None):\n"
                "        if sys.meta_path[0] is not self:  # VTK puts its own import hook first\n"
                "            sys.meta_path.remove(self)\n"
                "            sys.meta_path.insert(0, self)\n"
                "        if name == 'slicer_core.MRMLCore':\n"
                "            sys.meta_path.remove(self)\n"
                "            print('SIGTERM while importing', name, flush=True)\n"
                "            os.kill(os.getpid(), signal.SIGTERM)\n"
                "        return None\n"
                "sys.meta_path.insert(0, SignalOnImport())\n")
            server, log = self._start(tmp, path=(hook,))
            server.wait(timeout=120)
            text = Path(log).read_text()
            self.assertIn("SIGTERM while importing slicer_core.MRMLCore", text)
            self.assertNotIn("App running at", text)
            self.assertNotIn("Error", text)
            self.assertEqual(server.returncode, 128 + signal.SIGTERM, text)
            self.assertEqual(self._work_folders(tmp), [])

    def test_sigterm_while_serving_removes_the_work_folder(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            server, log = self._start_serving(tmp)
            self.assertEqual(len(self._work_folders(tmp)), 1)
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
            self.assertEqual(server.returncode, 0, Path(log).read_text())
            self.assertEqual(self._work_folders(tmp), [])


@unittest.skipUnless(_HAVE_TRAME_SLICER, "trame-slicer is not installed (pip install 'slicer-multimodalfusion[web]')")
class CrossSiteConnectionTest(_WebServerProcess):
    """A page of another site open in the user's browser may not drive ``mmfusion web``: browsers let any
    page open a WebSocket to 127.0.0.1 and the server accepted it (with trame's public default secret), so
    such a page could load any server file by path and take the fused image and report. Checked with a real
    server and aiohttp's WebSocket client, which sends the headers a browser would."""

    def test_only_the_servers_own_page_or_an_allowed_address_may_connect(self) -> None:
        import aiohttp

        from MultimodalFusionLib import cli

        stderr = io_text.StringIO()
        with contextlib.redirect_stderr(stderr):  # refused before any start-up
            self.assertNotEqual(cli.main(["web", "--allow-origin", "fusion.example.org"]), 0)
        self.assertIn("'fusion.example.org' is not a page address", stderr.getvalue())
        with tempfile.TemporaryDirectory() as tmp:
            server, log = self._start_serving(tmp, "--allow-origin", "https://fusion.example.org")
            port = _port(log)

            async def connect(origin: str | None, host: str | None = None) -> int:
                headers = {k: v for k, v in (("Origin", origin), ("Host", host)) if v}
                async with aiohttp.ClientSession() as session:
                    try:
                        async with session.ws_connect(f"ws://127.0.0.1:{port}/ws", headers=headers):
                            return 101
                    except aiohttp.WSServerHandshakeError as exc:
                        return exc.status

            cases = {(f"http://127.0.0.1:{port}", None): 101,  # the page the server sent
                     (f"http://localhost:{port}", f"localhost:{port}"): 101,
                     (None, None): 101,  # no Origin: not a browser's page
                     ("https://fusion.example.org", None): 101,  # --allow-origin: a proxy keeping its Host
                     ("https://fusion.example.org", "fusion.example.org"): 101,  # ... or passing its own name
                     ("http://evil.example", None): 403,
                     ("http://127.0.0.1:9999", None): 403,  # another port is another site
                     ("null", None): 403,  # a sandboxed frame or a file:// page
                     (f"http://rebound.example:{port}", f"rebound.example:{port}"): 403}  # DNS rebinding
            loop = asyncio.new_event_loop()
            try:
                got = {case: loop.run_until_complete(connect(*case)) for case in cases}
            finally:
                loop.close()
            self.assertEqual(got, cases)
            self.assertIn("refused a connection: a page of http://evil.example", Path(log).read_text())


class _Tab:
    """One browser tab as wslink sees it: a real websocket connection to the server, speaking wslink's
    protocol (msgpack messages in chunks) as trame's page does, with trame's default secret."""

    def __init__(self, ws) -> None:
        from wslink.chunking import UnChunker

        self.ws, self.count, self.waiting, self.unchunker = ws, 0, {}, UnChunker()
        self.unchunker.set_max_message_size(1 << 30)  # the state holds the page's template
        self.pushes: list[dict] = []  # the state changes the server sent this tab, in order
        self.frames: list[tuple[str, dict]] = []  # the views' pictures it was sent: (the view's name, their meta)
        self.listener = asyncio.ensure_future(self._listen())

    async def _listen(self) -> None:
        import aiohttp

        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.BINARY:
                continue
            message = self.unchunker.process_chunk(msg.data)
            if message and str(message.get("id", "")).startswith("publish:trame.state.topic"):
                self.pushes.append(message["result"])
            if message and str(message.get("id", "")).startswith("publish:trame.rca.topic.stream"):
                self.frames.append((message["result"].get("name"), message["result"].get("meta")))
            future = self.waiting.pop(message.get("id"), None) if message else None
            if future is not None and not future.done():
                if "error" in message:
                    future.set_exception(AssertionError(f"the server answered {message['error']}"))
                else:
                    future.set_result(message.get("result"))

    async def _send(self, key: str, method: str, args: list) -> object:
        import msgpack
        from wslink.chunking import generate_chunks

        self.waiting[key] = future = asyncio.get_running_loop().create_future()
        packed = msgpack.packb({"wslink": "1.0", "id": key, "method": method, "args": args, "kwargs": {}})
        for chunk in generate_chunks(packed, 4 << 20):
            await self.ws.send_bytes(chunk)
        return await asyncio.wait_for(future, 60)

    async def hello(self) -> None:
        await self._send("system:c0:0", "wslink.hello", [{"secret": "wslink-secret"}])

    async def call(self, method: str, *args: object) -> object:
        self.count += 1
        return await self._send(f"rpc:c0:{self.count}", method, list(args))

    async def close(self) -> None:
        await self.ws.close()
        self.listener.cancel()


async def _tabs(session, port: int, count: int) -> list:
    """``count`` tabs connected to the server on ``port``, each having sent trame's secret."""
    tabs = [_Tab(await session.ws_connect(f"ws://127.0.0.1:{port}/ws", max_msg_size=0)) for _ in range(count)]
    for tab in tabs:
        await tab.hello()
    return tabs


@unittest.skipUnless(_HAVE_TRAME_SLICER, "trame-slicer is not installed (pip install 'slicer-multimodalfusion[web]')")
class TwoTabsTest(_WebServerProcess):
    """Two (three) tabs on one real ``mmfusion web`` server, as real websocket connections: a tab that leaves
    drops its own unfinished upload, and another tab's upload goes on. Which tab left is wslink's
    ``last_active_client_id`` while the leaving page's ``client_exited`` message is handled, and the
    connection wslink says closed when a tab goes without that message (closed while it sends, crashed). One server
    for both tests."""

    @classmethod
    def setUpClass(cls) -> None:
        cls._serve_the_class()

    def test_a_leaving_tab_drops_its_own_upload_only(self) -> None:
        import aiohttp

        port = self.port
        (work,) = Path(self.tmp).glob("mmfusion-web-*")

        def partials() -> list[str]:
            return sorted(p.name.split("-")[0] for p in work.glob(".*.partial"))

        async def wait_for(condition, what: str) -> None:
            deadline = time.monotonic() + 30
            while not condition():
                self.assertLess(time.monotonic(), deadline, f"no {what}: {partials()}")
                await asyncio.sleep(0.05)

        async def tabs() -> tuple[dict, dict]:
            async with aiohttp.ClientSession() as session:
                one, two, three = await _tabs(session, port, 3)
                before = (await one.call("trame.state.get"))["state"]  # the class's server: as the other test left it
                template = str(before)
                fixed, moving = re.findall(r"mmfusion_upload\(\$event\.target\.files, \W*'(trigger__\d+)", template)

                def piece(name: str) -> list:
                    return [{"name": name, "offset": 0, "size": 2, "content": name[-2:].encode()}]

                await one.call("trame.trigger", fixed, ["tab-1", piece("A1")], {})
                await two.call("trame.trigger", moving, ["tab-2", piece("B1")], {})
                self.assertEqual(partials(), [".fixed", ".moving"])
                # tab 2 is reloaded: its page says it leaves, then its connection closes
                await two.call("trame.lifecycle.update", "client_exited")
                self.assertEqual(partials(), [".fixed"])
                await two.close()
                # tab 3 is closed in the middle of an upload with no word from its page (a tab closed while
                # it sends, a crash): its connection closing is all the server hears
                await three.call("trame.trigger", moving, ["tab-3", piece("C1")], {})
                self.assertEqual(partials(), [".fixed", ".moving"])
                await three.close()
                await wait_for(lambda: partials() == [".fixed"], "tab 3's upload dropped")
                # tab 1's upload went on, whole
                await one.call("trame.trigger", fixed, ["tab-1", piece("A2")], {})
                await one.call("trame.trigger", fixed, ["tab-1", []], {})
                state = (await one.call("trame.state.get"))["state"]
                await one.close()
                return before, state

        before, state = _run(tabs())
        self.assertEqual(state["error_message"], "")
        self.assertEqual(Path(state["fixed_path"]).parent, work)
        self.assertEqual(sorted(os.listdir(state["fixed_path"])), ["A1", "A2"])
        self.assertEqual(state["moving_path"], before["moving_path"])  # tab 3's unfinished upload is not it
        self.assertEqual(partials(), [])

    def test_a_change_reaches_each_other_tab_once_while_it_calls_the_server_too(self) -> None:
        # trame pushes a page's change to the other pages with wslink's "skip the last active client", which wslink
        # reads when the push is sent, a loop turn later: a call from another tab read in between made that tab
        # the last active one, so it never got the change (and the page got its own change back). wslink also
        # sent every other tab one copy per connected tab
        import aiohttp

        port = self.port

        async def tabs() -> None:
            async with aiohttp.ClientSession() as session:
                page, other, third = await _tabs(session, port, 3)
                for n in range(5):
                    value = f"/data/pet-{n}.nii.gz"
                    pushed = [len(tab.pushes) for tab in (page, other, third)]
                    # the page's change and the other tab's call are sent together, as two busy tabs do
                    await asyncio.gather(page.call("trame.state.update", [{"key": "moving_path", "value": value}]),
                                         other.call("trame.state.get"))
                    deadline = time.monotonic() + 30
                    while not all(any(p.get("moving_path") == value for p in tab.pushes[start:])
                                  for tab, start in ((other, pushed[1]), (third, pushed[2]))):
                        self.assertLess(time.monotonic(), deadline, f"{value} did not reach both other tabs: "
                                        f"{other.pushes[pushed[1]:]}, {third.pushes[pushed[2]:]}")
                        await asyncio.sleep(0.05)
                    await asyncio.sleep(0.3)  # and any copy sent after it
                    for tab, start in ((other, pushed[1]), (third, pushed[2])):
                        self.assertEqual([p for p in tab.pushes[start:] if "moving_path" in p],
                                         [{"moving_path": value}])
                    self.assertEqual([p for p in page.pushes[pushed[0]:] if "moving_path" in p], [])
                for tab in (page, other, third):
                    await tab.close()

        _run(tabs())


def _port(log: str) -> int:
    return int(Path(log).read_text().split("http://127.0.0.1:")[1].split("/")[0])


@unittest.skipUnless(_HAVE_TRAME_SLICER, "trame-slicer is not installed (pip install 'slicer-multimodalfusion[web]')")
class PageWritesTest(_WebServerProcess):
    """What a page (a real websocket connection to a real ``mmfusion web``) can make the server do: store how
    many bytes of uploads, and which state values it can set for every page. Each test has a server of its own,
    both started at once before them."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.upload_limits, cls.demo = cls._class_servers(("--max-upload", "1KiB", "--max-stored-uploads", "3KiB"),
                                                         ("--demo",))

    def test_uploads_past_the_limits_are_refused_as_they_arrive_leaving_nothing(self) -> None:
        # Any page could stream uploads until the server's disk was full: wslink's only cap was 4 GB per message,
        # and an upload is any number of messages. Now --max-upload per upload, and --max-stored-uploads for what
        # the server holds at once, all connections together. Its first form, --max-session-upload, counted one
        # connection's uploads: a new connection (a reload, a second tab, a script) started from zero again, and a
        # long session of uploads replacing each other in one tab was refused once their sum passed it
        import aiohttp

        from MultimodalFusionLib import cli

        for options, error in ((["--max-upload", "lots"], "--max-upload 'lots' is not a size"),
                               (["--max-stored-uploads", "0"], "--max-stored-uploads '0' is not a size"),
                               (["--max-stored-uploads", "1GiB", "--max-session-upload", "1GiB"],
                                "the old name of --max-stored-uploads, and both were given")):
            stderr = io_text.StringIO()
            with contextlib.redirect_stderr(stderr):  # a bad size is refused before any start-up
                self.assertNotEqual(cli.main(["web", *options]), 0)
            self.assertIn(error, stderr.getvalue())
        tmp, server, _, port = self.upload_limits
        self.assertIsNone(server.poll())
        (work,) = Path(tmp).glob("mmfusion-web-*")

        async def tabs() -> None:
            async with aiohttp.ClientSession() as session:
                async def connect() -> _Tab:
                    (tab,) = await _tabs(session, port, 1)
                    return tab

                one, two = await connect(), await connect()
                template = str((await one.call("trame.state.get"))["state"])
                self.assertIn("Upload the fixed image (at most 1 KiB)", template)
                fixed, moving = re.findall(r"mmfusion_upload\(\$event\.target\.files, \W*'(trigger__\d+)", template)

                async def send(tab: _Tab, upload: str, *entries: dict, trigger: str = fixed) -> object:
                    return await tab.call("trame.trigger", trigger, [upload, list(entries)], {})

                async def state(key: str) -> object:
                    return (await one.call("trame.state.get"))["state"][key]

                def leftovers() -> list[str]:
                    return sorted(p.name for p in work.iterdir())

                # a file declared larger than the limit: refused at its first piece, the page told to stop
                self.assertIs(await send(one, "a", {"name": "a.nii", "offset": 0, "size": 2000,
                                                    "content": bytes(600)}), False)
                banner = await state("error_message")
                self.assertIn("1 KiB per upload: 'a.nii' is 1.95 KiB", banner)
                self.assertIn("mmfusion web --max-upload SIZE; it is 1KiB", banner)
                self.assertEqual(leftovers(), [])
                self.assertIs(await send(one, "a", {"name": "a2", "content": b"x"}), False)  # the rest is ignored
                # sizes are counted as the bytes are written, whatever the page declares: whole files with no
                # size, 700 bytes each; the second takes the upload past 1 KiB, and the first goes too
                self.assertIs(await send(one, "b", {"name": "b1", "content": bytes(700)}), True)
                self.assertEqual(len(leftovers()), 1)
                self.assertIs(await send(one, "b", {"name": "b2", "content": bytes(700)}), False)
                self.assertIn("'b2' is 700 bytes, after 700 bytes of other files", await state("error_message"))
                self.assertEqual(leftovers(), [])
                await send(one, "b")
                self.assertEqual(await state("fixed_path"), "")
                # within the limit: kept (1000 bytes in two pieces)
                for offset in (0, 500):
                    self.assertIs(await send(one, "c", {"name": "c.nii", "offset": offset, "size": 1000,
                                                        "content": bytes(500)}), True)
                await send(one, "c")
                self.assertEqual(os.path.getsize(await state("fixed_path")), 1000)
                # a long session: each upload replaces the one before (removed), so the server holds 1000 bytes
                # however many come (--max-session-upload 3KiB had refused the third: 3000 bytes sent by one page)
                for n in range(8):
                    self.assertIs(await send(one, f"d{n}", {"name": f"d{n}.nii", "content": bytes(1000)}), True)
                    await send(one, f"d{n}")
                    self.assertEqual(Path(await state("fixed_path")).name, f"d{n}.nii", await state("error_message"))
                self.assertEqual(sorted(p.name.split("-")[0] for p in work.iterdir()), ["fixed"])
                # another connection adds the moving image: 2000 bytes held
                self.assertIs(await send(two, "m", {"name": "m.nii", "content": bytes(1000)}, trigger=moving), True)
                await send(two, "m", trigger=moving)
                # a third connection starts a fixed upload (500 of its 1000 bytes sent: 2500 bytes held), and a
                # fourth, new connection (a script reconnecting) may not add 1000 more: past 3 KiB held
                three, four = await connect(), await connect()
                self.assertIs(await send(three, "p", {"name": "p.nii", "offset": 0, "size": 1000,
                                                      "content": bytes(500)}), True)
                self.assertIs(await send(four, "q", {"name": "q.nii", "offset": 0, "size": 1000,
                                                     "content": bytes(500)}, trigger=moving), False)
                banner = await state("error_message")
                self.assertIn("would take the uploads this server holds past 3 KiB, all pages together", banner)
                self.assertIn("it holds 2.44 KiB, and 'q.nii' is 1000 bytes", banner)
                self.assertIn("--max-stored-uploads SIZE; it is 3KiB", banner)
                self.assertEqual(Path(await state("moving_path")).name, "m.nii")  # the last upload is kept
                # the third connection goes: its unfinished upload is removed, and counts no more
                await three.close()
                deadline = time.monotonic() + 30
                while any(p.name.endswith(".partial") for p in work.iterdir()):
                    self.assertLess(time.monotonic(), deadline, "the closed connection's upload stayed")
                    await asyncio.sleep(0.05)
                self.assertIs(await send(four, "r", {"name": "r.nii", "content": bytes(1000)}, trigger=moving), True)
                await send(four, "r", trigger=moving)
                self.assertEqual(Path(await state("moving_path")).name, "r.nii")
                self.assertEqual(sorted(p.name.split("-")[0] for p in work.iterdir()), ["fixed", "moving"])
                for tab in (one, two, four):
                    await tab.close()

        _run(tabs())

    def test_a_page_cannot_set_what_only_the_server_sets(self) -> None:
        # job_busy False from one page stopped the progress reaching every page while a registration ran,
        # job_cancelling True froze its message, job_label renamed it; a fake banner, metrics or job_busy True
        # (every page's buttons disabled) stayed in every page until the server wrote the key again; and a page
        # could call "server_ready", which loaded the start-up volumes again, dropping the results
        import aiohttp

        tmp, server, _, port = self.demo
        self.assertIsNone(server.poll())

        async def tabs() -> None:
            async with aiohttp.ClientSession() as session:
                page, other = await _tabs(session, port, 2)
                shown = dict((await page.call("trame.state.get"))["state"])
                template = str(shown)
                register, cancel = (re.search(r'id="' + name + r'"[^>]*click="trigger\(\\?\'(trigger__\d+)',
                                              template).group(1) for name in ("mmf-register", "mmf-cancel"))

                async def state() -> dict:
                    return (await other.call("trame.state.get"))["state"]

                async def until(condition, what: str) -> dict:
                    deadline = time.monotonic() + 120
                    while not condition(now := await state()):
                        self.assertLess(time.monotonic(), deadline, f"no {what}: {now.get('job_message')}")
                        await asyncio.sleep(0.05)
                    return now

                await until(lambda s: s["has_fixed"] and not s["job_busy"], "demo volumes")
                await page.call("trame.state.update", [{"key": "stages", "value": ["rigid", "affine", "bspline"]}])
                await page.call("trame.trigger", register, [], {})
                running = await until(lambda s: s["job_progress"] > 0, "registration progress")
                fake = {"job_busy": False, "job_cancelling": True, "job_label": "Nothing", "bg_step": 1e9,
                        "error_message": "The server moved: go to http://evil.example",
                        "metrics_rows": [{"name": "SSIM", "value": "0.999"}], "has_fused": True}
                pushed = len(page.pushes)
                await other.call("trame.state.update", [{"key": k, "value": v} for k, v in fake.items()])
                now = await state()
                # the other page never sees a forged value: trame had pushed it to every page first, and the
                # server's own came back a message later (the gate drops it before trame sees it)
                await asyncio.sleep(0.5)
                self.assertEqual([(k, push[k]) for push in page.pushes[pushed:] for k in fake
                                  if k in push and push[k] == fake[k]], [])
                self.assertRegex(Path(tmp, "server.log").read_text(),
                                 r"a page set [^\n]*job_busy[^\n]*, which only the server sets: ignored")
                self.assertEqual({k: now[k] for k in fake},
                                 {"job_busy": True, "job_cancelling": False, "job_label": "Registration",
                                  "bg_step": running["bg_step"], "error_message": "",
                                  "metrics_rows": [], "has_fused": False})
                # the page got the server's values back, and the progress goes on reaching it
                await until(lambda s: len([p for p in page.pushes[pushed:] if "job_progress" in p]) >= 3,
                            "progress after the write")
                for push in page.pushes:
                    shown.update(push)
                self.assertEqual({k: shown[k] for k in ("job_busy", "job_label", "error_message", "has_fused")},
                                 {"job_busy": True, "job_label": "Registration", "error_message": "",
                                  "has_fused": False})
                self.assertTrue(shown["job_message"].startswith("Registration: "), shown["job_message"])
                # what a page may set reaches the other page: its controls, a slice slider, the banner closed
                await page.call("trame.trigger", register, [], {})  # refused: "Registration is still running"
                self.assertIn("still running", (await state())["error_message"])
                pushed = len(page.pushes)
                slice_value = running["Red__SliderState__value"] + running["Red__SliderState__step"]
                await other.call("trame.state.update", [{"key": "error_message", "value": ""},
                                                        {"key": "fg_opacity", "value": 0.25},
                                                        {"key": "Red__SliderState__value", "value": slice_value}])
                now = await state()
                self.assertEqual((now["error_message"], now["fg_opacity"]), ("", 0.25))
                await until(lambda s: any("fg_opacity" in p for p in page.pushes[pushed:]), "the opacity pushed")
                seen = [(k, v) for p in page.pushes[pushed:] for k, v in p.items()]
                for change in (("error_message", ""), ("fg_opacity", 0.25), ("Red__SliderState__value", slice_value)):
                    self.assertIn(change, seen)  # the slice view then shows its nearest slice
                self.assertNotRegex(Path(tmp, "server.log").read_text(), r"a page set [^\n]*(fg_opacity|Slider)")
                await page.call("trame.trigger", cancel, [], {})  # the registration is cancelled by Cancel only
                await until(lambda s: not s["job_busy"], "end of the registration")
                self.assertEqual((await state())["job_message"], "Registration cancelled")
                # "server_ready" from a page does not load the demo again (it is refused: PageMessagesTest)
                with self.assertRaisesRegex(AssertionError, "Unregistered method"):
                    await other.call("trame.lifecycle.update", "server_ready")
                await asyncio.sleep(1.0)
                self.assertEqual((await state())["job_message"], "Registration cancelled")
                for tab in (page, other):
                    await tab.close()

        _run(tabs())


def _run(coroutine):
    """Run ``coroutine`` to its end on an event loop of its own, closed after (the websocket tests' tabs)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


def _resident_mib(pid: int) -> float:
    """The resident memory of process ``pid`` (Linux), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


@unittest.skipUnless(_HAVE_TRAME_SLICER, "trame-slicer is not installed (pip install 'slicer-multimodalfusion[web]')")
@unittest.skipUnless(os.path.exists("/proc/self/status"), "reads a process's memory from Linux's /proc")
class PageMessagesTest(_WebServerProcess):
    """What a connection's messages can make a real ``mmfusion web`` do besides the state: allocate memory for a
    message it only announces, set trame's own state, call the server's lifecycle events. One server for both tests,
    each reading the log from its own start."""

    @classmethod
    def setUpClass(cls) -> None:
        cls._serve_the_class()

    def test_a_page_cannot_make_the_server_allocate_load_scripts_or_start_again(self) -> None:
        # wslink allocated, at a message's first chunk, the whole size its header declared: up to 4 GiB, for 13
        # bytes sent, again for each message (1 GiB each: +1024 MiB of the server's memory per chunk). A page's
        # trame__ state keys reached every page (its template and scripts among them), and a page's "server_ready"
        # ran the server's start-up again (its banner printed, under --open a browser window opened)
        import aiohttp
        import msgpack
        from wslink.chunking import generate_chunks

        from MultimodalFusionLib.web.message_gate import MAX_MESSAGE_BYTES

        server, log, port = self.server, self.log, self.port

        async def tabs() -> None:
            async with aiohttp.ClientSession() as session:
                page, other, hostile = await _tabs(session, port, 3)
                before = (await other.call("trame.state.get"))["state"]
                template = str(before)
                fixed = re.findall(r"mmfusion_upload\(\$event\.target\.files, \W*'(trigger__\d+)", template)[0]
                # the largest messages the page sends pass: 4 MiB of content in 1000 files with long names
                files = [{"name": f"{n:04d}" + "x" * 200, "offset": 0, "size": 4 << 10, "content": bytes(4 << 10)}
                         for n in range(1000)]
                self.assertGreater(len(msgpack.packb(files)), 4 << 20)
                self.assertIs(await page.call("trame.trigger", fixed, ["big", files], {}), True)
                await page.call("trame.trigger", fixed, ["big", []], {})
                self.assertEqual(len(os.listdir((await other.call("trame.state.get"))["state"]["fixed_path"])), 1000)
                # a message announced larger than the limit: the connection is closed, nothing allocated
                memory = _resident_mib(server.pid)
                packed = msgpack.packb({"wslink": "1.0", "id": "rpc:c0:1", "method": "trame.state.get",
                                        "args": [], "kwargs": {}})
                chunk = next(generate_chunks(packed, 4 << 20))
                announced = (1 << 30).to_bytes(4, "little")  # the header's third field: the message's size
                await hostile.ws.send_bytes(chunk[:8] + announced + chunk[12:13])
                deadline = time.monotonic() + 10
                while not hostile.ws.closed:
                    self.assertLess(time.monotonic(), deadline, "the connection announcing 1 GiB stayed open")
                    await asyncio.sleep(0.05)
                self.assertEqual(hostile.ws.close_code, 1009)  # "message too big"
                self.assertLess(_resident_mib(server.pid) - memory, 64)
                self.assertIn(f"closed a connection that sent a message of {1 << 30} bytes", self._log_since())
                self.assertIn(f"hold at most {MAX_MESSAGE_BYTES}", self._log_since())
                # trame's own keys are not a page's to set; the panel's are
                pushed = len(other.pushes)
                await page.call("trame.state.update", [
                    {"key": "trame__title", "value": "Hacked"},
                    {"key": "trame__template_main", "value": "<trame-script script='alert(1)' />"},
                    {"key": "trame__client_only", "value": ["fixed_path", "stages"]},
                    {"key": "moving_path", "value": "/data/pet.nii.gz"}])
                now = (await other.call("trame.state.get"))["state"]
                self.assertEqual({k: now[k] for k in ("trame__title", "trame__template_main", "trame__client_only")},
                                 {k: before[k] for k in ("trame__title", "trame__template_main",
                                                         "trame__client_only")})
                self.assertEqual(now["moving_path"], "/data/pet.nii.gz")
                # the push to the other tab may follow the answer to its own call: wait for it
                deadline = time.monotonic() + 30
                while not any("moving_path" in push for push in other.pushes[pushed:]):
                    self.assertLess(time.monotonic(), deadline, "the panel's moving_path never reached the other tab")
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)  # and anything sent with it
                self.assertEqual(set().union(*other.pushes[pushed:]), {"moving_path"})  # nothing of trame's reached it
                # the lifecycle events a page reports pass; the server's are refused
                with self.assertRaisesRegex(AssertionError, "Unregistered method"):
                    await page.call("trame.lifecycle.update", "server_ready")
                self.assertIsNone(await page.call("trame.lifecycle.update", "client_connected"))
                await asyncio.sleep(0.5)
                self.assertEqual(Path(log).read_text().count("App running at"), 1)
                for tab in (page, other, hostile):
                    await tab.close()

        _run(tabs())

    def test_a_page_calls_only_what_the_page_calls_with_what_it_sends(self) -> None:
        # wslink calls whatever the server's protocols export, with whatever comes: a page's application.exit.later
        # stopped the server for every page, trame.rca.drop froze a view of every page, trame.rca.size rendered a
        # view at any size (16000 x 16000: the server's memory up 9 GiB), and trame.force.push (the server's own)
        # with a key that is not a string, or a call with one argument too many, was a traceback in the log
        import aiohttp

        from MultimodalFusionLib.web.message_gate import (
            MAX_ERROR_REPORT_CHARS,
            MAX_VIEW_PIXELS,
            rendered_view_size,
        )

        server, port = self.server, self.port

        async def tabs() -> None:
            async with aiohttp.ClientSession() as session:
                page, other = await _tabs(session, port, 2)
                template = str((await page.call("trame.state.get"))["state"])
                reset_view = re.findall(r"(trigger__\d+)[^<]*<VIcon icon=\W*mdi-camera-flip", template)[0]  # "Reset Camera" of a view: it takes no arguments
                fixed = re.findall(r"mmfusion_upload\(\$event\.target\.files, \W*'(trigger__\d+)", template)[0]
                memory = _resident_mib(server.pid)
                refused = [
                    ("application.exit.later", 1), ("application.exit",), ("trame.force.push", ["a"]),
                    ("trame.force.push", "nope"), ("trame.rca.drop", "Red", -1),
                    ("trame.rca.push", "Red", {"type": "image/jpeg", "w": 8, "h": 8}, b"fake"),
                    ("trame.rca.reset", "Red"), ("trame.state.get", 1),
                    ("trame.state.update", [{"key": "moving_path", "value": "/x"}], "more"),
                    ("trame.trigger", reset_view, 5, {}), ("trame.trigger", reset_view, [1], {}),
                    ("trame.trigger", "trigger__100000", [], {}), ("trame.trigger", ["a"], [], {}),
                    ("trame.trigger", fixed, ["u", []], {"x": 1}),
                    ("trame.rca.size", "Red", "page", {"w": "wide", "h": 300, "p": 1}),
                    ("trame.rca.size", "Red", "page", {"w": 100000, "h": 10, "p": 1}),
                    ("trame.rca.size", "Red", "page", {"w": 400, "h": 300, "p": float("inf")}),
                    ("trame.rca.event", "Red", "page", {"x": 3, "y": 4}),
                    ("trame.rca.event", "Red", "page", {"type": "MouseMove", "x": float("nan"), "y": 4}),
                    ("trame.rca.video.codecs", 5), ("trame.rca.video.negotiate", "Red", 5),
                    ("trame.lifecycle.update", ["client_exited"])]
                for method, *args in refused:
                    with self.subTest(method=method, args=args):
                        with self.assertRaisesRegex(AssertionError, "Unregistered method"):
                            await page.call(method, *args)
                await asyncio.sleep(2.0)  # application.exit.later(1) had stopped the server by now
                self.assertIsNone(server.poll(), "a page stopped the server")
                text = self._log_since()
                self.assertNotIn("Traceback", text)
                self.assertNotIn("Exception raised", text)
                self.assertEqual(text.count(": refused"), len(refused))  # one line each
                self.assertIn("a page called application.exit.later, which pages do not call", text)
                self.assertIn("rendered 100000 x 10 pixels (at most 33177600), whose sides are not 1 to 16384", text)
                self.assertLess(_resident_mib(server.pid) - memory, 256)
                # a view larger than an 8K screen is rendered scaled down to one, not refused: a quad view of a
                # window spanning three 6K screens (8640 x 1640 pixels, rendered so) and one of a 5K screen at
                # pixel ratio 1 zoomed out to 25% (10048 x 5734: 7624 x 4351) had been refused, four blank views
                for width, height, ratio in ((4320, 820, 2), (10048, 5734.4, 1), (16000, 16000, 1)):
                    frames = len(page.frames)
                    self.assertIsNone(await page.call("trame.rca.size", "Red", "page",
                                                      {"w": width, "h": height, "p": ratio}))
                    expected = rendered_view_size(width, height, ratio)
                    self.assertLessEqual(expected[0] * expected[1], MAX_VIEW_PIXELS)
                    deadline = time.monotonic() + 60
                    # trame-rca's JPEG meta names the picture's rows "w" and its columns "h"
                    while not any(name == "Red" and sorted((meta["w"], meta["h"])) == sorted(expected)
                                  for name, meta in page.frames[frames:]):
                        self.assertLess(time.monotonic(), deadline, f"no picture of {expected} in {page.frames[-3:]}")
                        await asyncio.sleep(0.1)
                self.assertEqual(rendered_view_size(4320, 820, 2), (8640, 1640))
                self.assertEqual(rendered_view_size(10048, 5734.4, 1), (7624, 4351))
                # what the page sends goes on: the other tab is still served, and so is this one
                self.assertIn("trame__template_main", (await other.call("trame.state.get"))["state"])
                self.assertIsNone(await page.call("trame.rca.size", "Red", "page", {"w": 640.5, "h": 480, "p": 1.25}))
                self.assertIsNone(await page.call("trame.rca.event", "Red", "page",
                                                  {"type": "MouseMove", "x": 3, "y": 4, "w": 640, "h": 480}))
                self.assertEqual(await page.call("trame.rca.video.codecs", "Red"), [])
                self.assertIn("error", await page.call("trame.rca.video.negotiate", "Red", ["vp9"]))
                self.assertIsNone(await page.call("trame.trigger", reset_view, [], {}))
                self.assertIsNone(await page.call("trame.lifecycle.update", "client_connected"))
                # a page's script error is logged, shortened: it had gone whole into the log
                report = "TypeError: x is undefined" + "!" * 100000
                self.assertIsNone(await page.call("trame.error.client", report))
                await asyncio.sleep(0.3)
                (line,) = [line for line in self._log_since().splitlines() if "x is undefined" in line]
                self.assertLess(len(line), MAX_ERROR_REPORT_CHARS + 100)
                self.assertTrue(line.endswith(f"! ... ({len(report)} characters)"), line[-80:])
                for tab in (page, other):
                    await tab.close()

        _run(tabs())


class WindowLevelPanelTest(unittest.TestCase):
    """The panel values for a background window/level (no app, no scene)."""

    def test_ranges_from_the_image_widened_to_hold_the_value(self) -> None:
        from MultimodalFusionLib.web.app import _window_level_panel

        inside = _window_level_panel(120.04, 60.01, 0.0, 255.0, 0.1)
        self.assertEqual(inside, {"bg_step": 0.1, "bg_window_max": 510.0, "bg_level_min": 0.0,
                                  "bg_level_max": 255.0, "bg_window": 120.0, "bg_level": 60.0})
        # a drag may take the level half a window past the range, and the window past twice it
        outside = _window_level_panel(600.0, -150.0, 0.0, 255.0, 1.0)
        self.assertEqual((outside["bg_window_max"], outside["bg_level_min"], outside["bg_level_max"]),
                         (600.0, -150.0, 255.0))
        above = _window_level_panel(10.0, 300.0, -1000.0, 200.0, 1.0)
        self.assertEqual((above["bg_level_min"], above["bg_level_max"], above["bg_window_max"]),
                         (-1000.0, 300.0, 2400.0))


if __name__ == "__main__":
    unittest.main()


class SizeOptionTest(unittest.TestCase):
    """``--max-upload`` / ``--max-stored-uploads`` sizes (no server)."""

    def test_sizes_are_read_exactly_and_a_bad_one_is_an_input_error(self) -> None:
        from MultimodalFusionLib.web.app import parse_size

        for text, size in (("4GiB", 4 << 30), ("4g", 4 << 30), ("4 GiB", 4 << 30), (" 4G ", 4 << 30),
                           ("1.5k", 1536), (".5KiB", 512), ("4gb", 4 * 10 ** 9), ("3000000000", 3 * 10 ** 9),
                           ("9007199254740993", 2 ** 53 + 1)):  # a float made that 2^53
            self.assertEqual(parse_size(text, "--max-upload"), size, text)
        # 400 digits: a float made them infinity, and the option a traceback (OverflowError); any size is a size
        self.assertEqual(parse_size("1" + "0" * 400, "--max-upload"), 10 ** 400)
        for text in ("0", "-1", "0.5", "1e3", "inf", "nan", "", "4 G iB", "4GB/s", "lots"):
            with self.assertRaisesRegex(InputError, "not a size above 0"):
                parse_size(text, "--max-upload")


class MessageGateTest(unittest.TestCase):
    """MessageGate on the chunks wslink's own client makes (no server): the limit on messages in progress, and the
    state writes a page may make."""

    @staticmethod
    def _chunks(message: dict, size: int = 64) -> list[bytes]:
        import msgpack
        from wslink.chunking import generate_chunks

        return list(generate_chunks(msgpack.packb(message), size))

    def _gate(self, **kwargs):
        from MultimodalFusionLib.web.message_gate import MessageGate

        closed = []
        gate = MessageGate(close=lambda: closed.append(True), **kwargs)
        gate.set_max_message_size(4 << 30)  # what wslink asks once the page sent its secret
        return gate, closed

    def test_messages_in_progress_are_counted_from_their_chunks(self) -> None:
        gate, closed = self._gate(max_bytes=4096)
        one, two = (self._chunks({"id": f"rpc:c0:{n}", "method": "x", "args": [bytes(1500)]}) for n in (1, 2))
        for chunk in one[:-1] + two[:-1]:  # two messages interleaved, about 3000 bytes in progress
            self.assertIsNone(gate.process_chunk(chunk))
        self.assertEqual(gate.process_chunk(one[-1])["id"], "rpc:c0:1")
        self.assertEqual(gate.process_chunk(two[-1])["id"], "rpc:c0:2")
        # finished messages count no more: three more of 1500 bytes, one after another
        for n in range(3, 6):
            *head, last = self._chunks({"id": f"rpc:c0:{n}", "method": "x", "args": [bytes(1500)]})
            for chunk in head:
                gate.process_chunk(chunk)
            self.assertEqual(gate.process_chunk(last)["id"], f"rpc:c0:{n}")
        self.assertEqual(closed, [])
        # wslink keeping its messages in progress otherwise (its StreamUnChunker's records, say) changes nothing:
        # the gate had summed wslink's own records, and failed on every message (KeyError 'content')
        first = self._chunks({"id": "rpc:c0:6", "method": "x", "args": [bytes(3000)]})[0]
        gate.process_chunk(first)
        gate.pending_messages = {key: {"received_size": 0, "total_size": 9} for key in gate.pending_messages}
        gate.process_chunk(self._chunks({"id": "rpc:c0:7", "method": "x", "args": [bytes(2000)]})[0])
        self.assertEqual(closed, [True])  # 3000 + 2000 bytes in progress: past 4096
        self.assertIsNone(gate.process_chunk(first))  # nothing more of it is read

    def test_a_page_sets_only_what_it_may(self) -> None:
        page_keys = {"fg_opacity", "Red__SliderState__value"}
        gate, _ = self._gate(may_set=lambda key, value: key in page_keys or (key == "error_message" and value == ""))

        def kept(*changes) -> list:
            (chunk,) = self._chunks({"id": "rpc:c0:1", "method": "trame.state.update", "args": [list(changes)]},
                                    1 << 20)
            return gate.process_chunk(chunk)["args"][0]

        with self.assertLogs("MultimodalFusionLib.web.message_gate", "WARNING") as logs:
            self.assertEqual(kept({"key": "fg_opacity", "value": 0.2}, {"key": "job_busy", "value": False},
                                  {"key": "Red__SliderState__value", "value": 3.0},
                                  {"key": "error_message", "value": "fake"}, {"key": "trame__title", "value": "x"},
                                  {"value": 1}, "job_busy"),
                             [{"key": "fg_opacity", "value": 0.2}, {"key": "Red__SliderState__value", "value": 3.0}])
        self.assertIn("a page set None, error_message, job_busy, job_busy, trame__title, which", logs.output[0])
        self.assertEqual(kept({"key": "error_message", "value": ""}), [{"key": "error_message", "value": ""}])
        # changes that are not a list are refused (trame iterates them for dicts with a "key": a dict, a string or
        # a number had been passed on with a warning, and trame then wrote a TypeError's traceback to the log)
        for changes in ({"job_busy": True}, "job_busy", 3, None):
            with self.subTest(changes=changes), \
                    self.assertLogs("MultimodalFusionLib.web.message_gate", "WARNING") as logs:
                (chunk,) = self._chunks({"id": "rpc:c0:2", "method": "trame.state.update", "args": [changes]},
                                        1 << 20)
                self.assertNotEqual(gate.process_chunk(chunk)["method"], "trame.state.update")
                self.assertIn("where the page sends a list of changes", logs.output[0])
