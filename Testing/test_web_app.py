"""The web UI's application object driven in-process (no browser): uploads, downloads, colour
tables, repeated runs and the error banner. ``test_web_browser.py`` covers the page itself.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import unittest
from pathlib import Path

import SimpleITK as sitk

from MultimodalFusionLib.errors import InputError
from MultimodalFusionLib.web.offscreen import configure_offscreen_rendering

configure_offscreen_rendering()

try:
    import trame_slicer  # noqa: F401

    _HAVE_TRAME_SLICER = True
except ImportError:  # pragma: no cover - the web extra is not installed
    _HAVE_TRAME_SLICER = False


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
        fixed, moving, _ = demo_images(spacing_mm=4.0)
        cls.fixed_path, cls.moving_path = str(cls.root / "t1.nii.gz"), str(cls.root / "pet.nii.gz")
        sitk.WriteImage(fixed, cls.fixed_path)
        sitk.WriteImage(moving, cls.moving_path)
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

    def test_a_new_upload_removes_the_previous_copy(self) -> None:
        self.app._save_upload("moving", [{"name": "first.nii.gz", "content": b"1"}])
        first = Path(self.app.state.moving_path)
        self.app._save_upload("moving", [{"name": "second.nii.gz", "content": b"2"}])
        self.assertFalse(first.parent.exists(), "the replaced upload should be removed from the server")
        self.assertTrue(Path(self.app.state.moving_path).is_file())
        self.app._save_upload("fixed", [{"name": "..", "content": b"x"}])  # refused: no folder left
        self.assertEqual(sorted(p.name for p in self.workdir.iterdir() if p.name.startswith("moving-")),
                         [Path(self.app.state.moving_path).parent.name])

    def test_downloads_leave_no_files_on_the_server(self) -> None:
        self._load()
        self.app.state.stages = ["rigid"]
        self._do(self.app.start_registration)
        self._do(self.app.start_fusion)
        self.assertTrue(self.app.state.has_fused, self.app.state.error_message)
        before = sorted(os.listdir(self.workdir))
        for what, start in (("transform", b"#Insight"), ("fused", b"\x1f\x8b"), ("report", b"<!")):
            content = self.app.result_bytes(what)
            self.assertTrue(content.lstrip().startswith(start), (what, content[:20]))
            self.assertEqual(sorted(os.listdir(self.workdir)), before, what)

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


if __name__ == "__main__":
    unittest.main()
