"""Tests of the report: montage PNG, metrics JSON, self-contained HTML."""

from __future__ import annotations

import base64
import json
import os
import re
import tempfile
import unittest
from html import escape as html_escape

import numpy as np
import SimpleITK as sitk

from MultimodalFusionLib import data, fusion, io, metrics, report
from MultimodalFusionLib.errors import InputError


def _read_png(path_or_bytes) -> np.ndarray:
    from matplotlib import image as mpimg

    if isinstance(path_or_bytes, bytes):
        import io as bytesio

        return mpimg.imread(bytesio.BytesIO(path_or_bytes), format="png")
    return mpimg.imread(path_or_bytes)


class Report2DTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        d = data.testing_data_dir()
        cls.a = io.read_image(d / "BrainT1Slice.png")
        cls.b = io.read_image(d / "BrainProtonDensitySlice.png")
        cls.results = [fusion.fuse(cls.a, cls.b, m) for m in ("average", "overlay")]
        cls.table = {r.method: metrics.fusion_metrics(r, cls.a, cls.b) for r in cls.results}

    def test_montage_png(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = report.save_montage_png(os.path.join(tmp, "m.png"), {"T1": self.a, "PD": self.b}, self.results[1])
            img = _read_png(path)
            self.assertGreater(img.shape[1], 3 * img.shape[0] // 2)  # four panels side by side
            rgb = img[..., :3]
            # the overlay column holds colour (R and B differ), the grey inputs do not
            self.assertGreater(np.mean(np.abs(rgb[..., 0] - rgb[..., 2]) > 0.15), 0.01)
            self.assertEqual([f for f in os.listdir(tmp) if f.startswith(".mmf-tmp")], [])  # atomic: no leftovers
        with self.assertRaises(InputError):
            report.save_montage_png(os.path.join(tempfile.gettempdir(), "never.png"), {}, self.results[0])

    def test_write_report_is_self_contained(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            paths = report.write_report(tmp, inputs={"T1": self.a, "PD": self.b}, fusions=self.results,
                                        metrics=self.table, title="Two slices")
            for key in ("html", "metrics_json", "chart", "montage_average", "montage_overlay"):
                self.assertTrue(os.path.isfile(paths[key]), key)
            page = open(paths["html"], encoding="utf-8").read()
            self.assertIn("<title>Two slices</title>", page)
            # no external resources: every src is inline data, no http(s) links, no scripts
            srcs = re.findall(r'src="([^"]+)"', page)
            self.assertEqual(len(srcs), 3)  # two montages and the chart
            self.assertTrue(all(s.startswith("data:image/png;base64,") for s in srcs))
            self.assertNotIn("http://", page)
            self.assertNotIn("https://", page)
            self.assertNotIn("<script", page)
            png = base64.b64decode(srcs[-1].split(",", 1)[1])
            self.assertEqual(png[:8], b"\x89PNG\r\n\x1a\n")
            self.assertGreater(_read_png(png).std(), 0.05)  # the chart is not blank
            # the table: a row per method, a column per metric, values as computed
            for method in ("average", "overlay"):
                self.assertIn(f'<td class="name">{method}</td>', page)
            for key in report.REPORT_METRICS:
                self.assertIn(f"<th>{key}</th>", page)
            self.assertIn(f"{self.table['average']['SSIM']:.3f}", page)
            # strictly valid JSON (no NaN), with the metrics and the fusion parameters
            payload = json.loads(open(paths["metrics_json"], encoding="utf-8").read(),
                                 parse_constant=lambda c: self.fail(f"invalid JSON constant {c}"))
            self.assertAlmostEqual(payload["metrics"]["average"]["EN"], self.table["average"]["EN"])
            self.assertEqual(payload["fusions"]["average"]["parameters"]["weight"], 0.5)
            self.assertIsNone(payload["registration"])
            self.assertEqual(sorted(f for f in os.listdir(tmp) if f.startswith(".")), [])

    def test_two_results_of_one_method_keep_both_montages(self) -> None:
        light, heavy = (fusion.fuse(self.a, self.b, "average", weight=w) for w in (0.2, 0.8))
        with tempfile.TemporaryDirectory() as tmp:
            paths = report.write_report(tmp, inputs={"T1": self.a}, fusions=[light, heavy], metrics={})
            self.assertNotEqual(open(paths["montage_average"], "rb").read(),
                                open(paths["montage_average_2"], "rb").read())
            payload = json.loads(open(paths["metrics_json"], encoding="utf-8").read())
            self.assertEqual([payload["fusions"][k]["parameters"]["weight"] for k in ("average", "average_2")],
                             [0.2, 0.8])

    def test_names_with_dollar_signs_are_shown_as_written(self) -> None:
        """matplotlib reads text between two $ as mathtext: a file named 'pd$\\frac$.png' stopped the report
        (and `mmfusion run`) with a ValueError from matplotlib's parser, and 'b$x^2$.png' was titled 'bx².png'."""
        from matplotlib.text import Text

        odd = {"fixed: t1$x^2$.png": self.a, "moving: pd$\\frac$.png": self.b}
        res = fusion.fuse(self.a, self.b, "average")
        res.method = "avg$\\frac$"  # a method registered under such a name: the chart's labels and titles
        with tempfile.TemporaryDirectory() as tmp:
            paths = report.write_report(tmp, inputs=odd, fusions=[res],
                                        metrics={res.method: self.table["average"]}, title="a $\\frac$ b")
            self.assertGreater(_read_png(paths["montage_avg$\\frac$"]).std(), 0.05)
            self.assertIn("<h3>avg$\\frac$</h3>", open(paths["html"], encoding="utf-8").read())
        fig = report._montage_figure(odd, res)
        shown = [t for t in fig.findobj(Text) if "$" in t.get_text()]
        self.assertEqual(sorted(t.get_text() for t in shown if t.get_text().startswith(("fixed", "moving"))),
                         sorted(odd))
        for text in shown:  # drawn as written, not as mathtext
            self.assertFalse(text.get_parse_math(), text.get_text())

    def test_a_new_report_replaces_the_old_one_as_a_whole(self) -> None:
        """`mmfusion fuse --report DIR` run again with another method left the first run's montage next to the
        new report, and a report that failed after its first montage left that montage beside the old page."""
        light, heavy = (fusion.fuse(self.a, self.b, "average", weight=w) for w in (0.2, 0.8))
        maximum = fusion.fuse(self.a, self.b, "max")
        with tempfile.TemporaryDirectory() as tmp:
            # a user's own files: never removed, a renamed earlier montage neither (montage_average_*.png had been)
            for own in ("montage_mine.png", "notes.txt", "montage_average_old.png", "montage_max_2b.png"):
                with open(os.path.join(tmp, own), "w") as fh:
                    fh.write("mine")
            report.write_report(tmp, inputs={"T1": self.a, "PD": self.b}, fusions=[light, heavy],
                                metrics={"average": self.table["average"]})
            self.assertIn("montage_average_2.png", os.listdir(tmp))
            paths = report.write_report(tmp, inputs={"T1": self.a, "PD": self.b}, fusions=[maximum], metrics={})
            self.assertEqual(sorted(os.listdir(tmp)), ["metrics.json", "montage_average_old.png", "montage_max.png",
                                                       "montage_max_2b.png", "montage_mine.png", "notes.txt",
                                                       "report.html"])
            self.assertEqual(paths["montage_max"], os.path.join(tmp, "montage_max.png"))
            before = {n: open(os.path.join(tmp, n), "rb").read() for n in os.listdir(tmp)}
            broken = fusion.FusionResult(image=None, method="pca")  # fails after the first montage is made
            with self.assertRaises(AttributeError):
                report.write_report(tmp, inputs={"T1": self.a, "PD": self.b}, fusions=[light, broken], metrics={})
            self.assertEqual({n: open(os.path.join(tmp, n), "rb").read() for n in os.listdir(tmp)}, before)

    def test_json_cleaning(self) -> None:
        cleaned = io.to_json_safe({"a": float("nan"), "b": float("inf"), "c": np.float32(1.5), "d": (1, 2),
                                   "e": np.float64(-np.inf), "f": [np.float32(np.inf), np.nan]})
        # undefined (NaN) is null; an infinity stays one, as a string float() reads back (both had been null)
        self.assertEqual(cleaned, {"a": None, "b": "Infinity", "c": 1.5, "d": [1, 2], "e": "-Infinity",
                                   "f": ["Infinity", None]})
        self.assertEqual([float(cleaned["b"]), float(cleaned["e"])], [float("inf"), float("-inf")])

    def test_numbers_are_shown_as_the_console_shows_them(self) -> None:
        from MultimodalFusionLib.report import _fmt

        # a tiny negative value had shown "-0.000", which the console prints as "0.000"
        self.assertEqual([_fmt(v) for v in (-0.0002, -0.0, 0.0004, -0.0006, 123.45, float("inf"), float("nan"))],
                         ["0.000", "0.000", "0.000", "-0.001", "123.5", "∞", "n/a"])

    def test_report_needs_a_fusion(self) -> None:
        with tempfile.TemporaryDirectory() as tmp, self.assertRaises(InputError):
            report.write_report(tmp, inputs={"T1": self.a}, fusions=[], metrics={})


class Report3DTest(unittest.TestCase):
    def test_three_views_of_a_volume(self) -> None:
        rng = np.random.default_rng(0)
        vol = np.zeros((20, 30, 40), np.float32)
        vol[5:15, 8:22, 10:30] = 100 + rng.normal(0, 5, (10, 14, 20))
        a = sitk.GetImageFromArray(vol)
        a.SetSpacing((1.0, 1.0, 2.5))
        b = sitk.GetImageFromArray(np.roll(vol, 3, axis=2))
        b.CopyInformation(a)
        res = fusion.fuse(a, b, "max")
        views = report._views(a)
        self.assertEqual([v[0] for v in views], ["axial", "coronal", "sagittal"])
        self.assertEqual(views[0][1].shape, (30, 40))
        self.assertEqual(views[1][1].shape, (20, 40))
        self.assertAlmostEqual(views[1][2], 2.5)  # coronal pixels are 2.5 mm tall, 1 mm wide
        with tempfile.TemporaryDirectory() as tmp:
            path = report.save_montage_png(os.path.join(tmp, "m.png"), {"A": a, "B": b}, res)
            img = _read_png(path)
            self.assertGreater(img.shape[0], 300)  # three rows of views


    def test_the_report_names_the_axis_the_volume_metrics_sliced_along(self) -> None:
        # a sagittal thick-slice pair stored with x as its 5 mm axis: scored in its sagittal slices
        rng = np.random.default_rng(1)
        vol = np.zeros((40, 36, 12), np.float32)
        vol[8:32, 6:30, 2:10] = 100 + rng.normal(0, 20, (24, 24, 8))
        images = []
        for arr in (vol, np.roll(vol, 2, axis=1)):
            images.append(sitk.GetImageFromArray(arr))
            images[-1].SetSpacing((5.0, 1.0, 1.0))
        res = fusion.fuse(*images, "average")
        table = {"average": metrics.fusion_metrics(res, *images)}
        with tempfile.TemporaryDirectory() as tmp:
            paths = report.write_report(tmp, inputs={"A": images[0], "B": images[1]}, fusions=[res], metrics=table)
            page = open(paths["html"], encoding="utf-8").read()
            payload = json.loads(open(paths["metrics_json"], encoding="utf-8").read())
        self.assertIn(html_escape("sliced along x (ITK's voxel axis)"), page)
        self.assertIn("sliced along x (ITK's voxel axis)", payload["how_computed"])
        # an isotropic volume: along z; a 2D image: no slices to name
        for image in images:
            image.SetSpacing((1.0, 1.0, 1.0))
        self.assertIn("sliced along z", report._scored_slices(images[0]))
        two_d = io.read_image(data.testing_data_dir() / "BrainT1Slice.png")
        self.assertEqual(report._scored_slices(two_d), "")


class FusionWarningsTest(unittest.TestCase):
    def test_a_fusions_warnings_are_in_the_page_and_metrics_json(self) -> None:
        """A fusion's warnings (deep fusion's anisotropy: a 3D network on 1 x 1 x 5 mm voxels) were printed by the
        CLI only: the report of `mmfusion run`/`fuse --report` said nothing of them, in the page or in metrics.json,
        where the registration's warnings are shown. A real fusion with a small 3D network."""
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is a dependency of deep fusion only
            self.skipTest("torch is not installed")
        from MultimodalFusionLib.fusion.deep import FusionNetConfig, build_network

        torch.manual_seed(0)
        net = build_network(FusionNetConfig(spatial_dims=3, features=4, channels=(8, 16, 16), strides=(2, 2)))
        rng = np.random.default_rng(0)
        images = []
        for _ in range(2):
            image = sitk.GetImageFromArray(rng.random((8, 24, 20)).astype(np.float32))
            image.SetSpacing((1.0, 1.0, 5.0))
            images.append(image)
        deep = fusion.fuse(*images, "deep", weights=net, device="cpu")
        self.assertEqual(len(deep.warnings), 1)  # (test_deep_fusion_inputs: when it warns)
        plain = fusion.fuse(*images, "average")
        with tempfile.TemporaryDirectory() as tmp:
            paths = report.write_report(tmp, inputs={"A": images[0], "B": images[1]}, fusions=[plain, deep],
                                        metrics={})
            page = open(paths["html"], encoding="utf-8").read()
            shown = re.findall(r'<p class="warn">Warning: ([^<]*)</p>', page)
            self.assertEqual(shown, [html_escape(deep.warnings[0])])
            self.assertIn("1 x 1 x 5 mm", shown[0])
            # under the deep fusion's montage, not the average's
            self.assertGreater(page.index(shown[0]), page.index("<h3>deep</h3>"))
            payload = json.loads(open(paths["metrics_json"], encoding="utf-8").read())
            self.assertEqual(payload["fusions"]["deep"]["warnings"], deep.warnings)
            self.assertEqual(payload["fusions"]["average"]["warnings"], [])


class ReportOrientationAndColourTest(unittest.TestCase):
    """What the montage shows: Slicer's orientation, and colour images of any pixel type."""

    @staticmethod
    def _quadrants(view: np.ndarray) -> list[int]:
        h, w = view.shape[:2]
        return [int(q.mean() > 50) for q in (view[:h // 2, :w // 2], view[:h // 2, w // 2:],
                                              view[h // 2:, :w // 2], view[h // 2:, w // 2:])]

    def test_views_put_right_left_and_anterior_superior_up_whatever_the_storage_order(self) -> None:
        vol = np.zeros((10, 12, 14), np.float32)  # LPS order (z, y, x): small x = right, small y = anterior
        vol[5:, :7, :8] = 100.0  # the right-anterior-superior octant
        lps = sitk.GetImageFromArray(vol)
        ras = sitk.GetImageFromArray(vol[:, ::-1, ::-1].copy())  # as a NIfTI in RAS order reads
        ras.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
        for image in (lps, ras):
            for name, view, _aspect in report._views(image):
                self.assertEqual(self._quadrants(view), [1, 0, 0, 0], name)  # top left, as in Slicer

    def test_an_oblique_volume_is_shown_in_the_patient_axes_as_slicer_shows_it(self) -> None:
        # a bar along left-right, through the centre, in a volume whose grid is turned 30 degrees about
        # the superior axis: Slicer's axial view (patient axes) shows it level; the voxel grid would tilt it
        import math

        turn = math.radians(30)
        image = sitk.Image([48, 48, 12], sitk.sitkFloat32)
        image.SetDirection((math.cos(turn), -math.sin(turn), 0, math.sin(turn), math.cos(turn), 0, 0, 0, 1))
        image.SetOrigin(image.TransformContinuousIndexToPhysicalPoint([-23.5, -23.5, -5.5]))  # centre at 0
        arr = np.zeros((12, 48, 48), np.float32)
        for k, j, i in np.ndindex(*arr.shape):
            x, y, z = image.TransformIndexToPhysicalPoint((i, j, k))
            arr[k, j, i] = 100.0 if abs(x) < 18 and abs(y) < 2.5 and abs(z) < 3 else 0.0
        grid = sitk.GetImageFromArray(arr)
        grid.CopyInformation(image)
        (name, view, aspect), = report._views(grid)[:1]
        rows, cols = np.nonzero(view > 50)
        slope = np.polyfit(cols * 1.0, rows * aspect, 1)[0]
        self.assertLess(abs(math.degrees(math.atan(slope))), 3.0)  # level, not 30 degrees
        self.assertTrue(report._orientable(grid))

    def test_a_2d_slice_stored_in_ras_order_is_shown_as_slicer_shows_it(self) -> None:
        arr = np.zeros((20, 30), np.float32)
        arr[10:, 15:] = 100.0  # with direction diag(-1, -1): high indices are the patient's right, anterior
        flipped = sitk.GetImageFromArray(arr)
        flipped.SetDirection((-1, 0, 0, -1))
        flipped.SetSpacing((0.5, 2.0))
        (_, view, aspect), = report._views(flipped)
        self.assertEqual(self._quadrants(view), [1, 0, 0, 0])
        self.assertAlmostEqual(aspect, 4.0)
        plain = sitk.GetImageFromArray(arr)  # a PNG: no direction, shown as stored
        (_, view, _), = report._views(plain)
        np.testing.assert_array_equal(view, arr)

    def test_16_bit_colour_is_scaled_not_wrapped(self) -> None:
        grey = np.zeros((40, 40), np.float32)
        grey[5:35, 5:35] = 200.0
        a = sitk.GetImageFromArray(grey)
        rgb = np.zeros((40, 40, 3), np.uint16)
        rgb[:, 20:, 0] = 60000  # red half; 60000 cast to 8 bits would be 96 (dark)
        b = sitk.GetImageFromArray(rgb, isVector=True)
        res = fusion.fuse(a, b, "average")
        with tempfile.TemporaryDirectory() as tmp:
            img = _read_png(report.save_montage_png(os.path.join(tmp, "m.png"), {"A": a, "B": b}, res))[..., :3]
        bright_red = (img[..., 0] > 0.9) & (img[..., 1] < 0.1) & (img[..., 2] < 0.1)
        self.assertGreater(int(bright_red.sum()), 100)


class RegistrationSectionTest(unittest.TestCase):
    def test_the_alignment_table_says_what_it_measured(self) -> None:
        d = data.testing_data_dir()
        a = io.read_image(d / "BrainT1Slice.png")
        b = io.read_image(d / "BrainProtonDensitySlice.png")
        res = fusion.fuse(a, b, "average")
        reg = {"before": metrics.registration_metrics(a, sitk.Cast(b, sitk.sitkFloat32)),
               "after": metrics.registration_metrics(a, sitk.Cast(b, sitk.sitkFloat32))}
        with tempfile.TemporaryDirectory() as tmp:
            page = open(report.write_report(tmp, inputs={"T1": a, "PD": b}, fusions=[res], metrics={},
                                             registration_metrics=reg)["html"], encoding="utf-8").read()
        self.assertIn("64-bin joint histogram", page)
        self.assertIn("fixed image's grid", page)
        self.assertIn(f"{reg['after']['MI']:.3f}", page)
        # the voxels each state compared (its overlap with the moving image), which differ before and after
        self.assertIn("inside the moving image", page)
        self.assertIn("<th>voxels compared</th></tr>", page)
        self.assertIn(f"<td>{a.GetNumberOfPixels()}</td></tr>", page)

    def test_run_with_a_seed_writes_a_report_that_states_it(self) -> None:
        # `mmfusion run --seed 5`'s metrics.json recorded the seed (registration.parameters.seed), its report.html
        # did not, nor the preset: a user comparing the report with elastix or ANTs could not tell which sampling
        # made the result in front of them. The card states both, from the registration's recorded parameters
        import contextlib
        import io as text_io

        from MultimodalFusionLib import cli

        d = data.testing_data_dir()
        with tempfile.TemporaryDirectory() as tmp:
            with contextlib.redirect_stdout(text_io.StringIO()), contextlib.redirect_stderr(text_io.StringIO()):
                code = cli.main(["run", str(d / "BrainT1Slice.png"), str(d / "BrainProtonDensitySlice.png"),
                                 "--output-dir", tmp, "--methods", "average", "--stages", "rigid", "--seed", "5"])
            self.assertEqual(code, 0)
            page = open(os.path.join(tmp, "report.html"), encoding="utf-8").read()
            recorded = json.load(open(os.path.join(tmp, "metrics.json"), encoding="utf-8"))
        self.assertEqual(recorded["registration"]["parameters"]["seed"], 5)
        self.assertEqual(re.findall(r'<th class="name">(preset|seed)</th><td>([^<]*)</td>', page),
                         [("preset", "none"), ("seed", "5")])
        # a preset's name, and no seed given (the clock's sampling), as metrics.json's parameters record them
        t1 = io.read_image(d / "BrainT1Slice.png")
        with tempfile.TemporaryDirectory() as tmp:
            page = open(report.write_report(tmp, inputs={"T1": t1}, fusions=[fusion.fuse(t1, t1, "average")], metrics={},
                                             registration={"parameters": {"name": "ct-mr-head", "seed": None}})
                        ["html"], encoding="utf-8").read()
        self.assertEqual(re.findall(r'<th class="name">(preset|seed)</th><td>([^<]*)</td>', page),
                         [("preset", "ct-mr-head"),
                          ("seed", "none (drawn from the clock: another run samples differently)")])

    def test_the_stage_table_gives_iterations_per_level(self) -> None:
        from MultimodalFusionLib.registration import register

        d = data.testing_data_dir()
        a = io.read_image(d / "BrainT1SliceBorder20.png", float32=True)
        b = io.read_image(d / "BrainProtonDensitySliceR10X13Y17.png", float32=True)
        result = register(a, b, stages=["rigid"], seed=1)
        stage = result.stages[0]
        self.assertEqual(sum(stage.level_iterations), stage.iterations)
        with tempfile.TemporaryDirectory() as tmp:
            page = open(report.write_report(tmp, inputs={"T1": a, "PD": b}, fusions=[fusion.fuse(a, b, "average")],
                                             metrics={}, registration=result)["html"], encoding="utf-8").read()
        per_level = "+".join(str(n) for n in stage.level_iterations)
        self.assertIn(f"<td>{per_level} = {stage.iterations}</td>", page)
        self.assertIn("iterations per level", page)
        self.assertIn("last level (3 of 3): ", page)
        self.assertIn(html_escape(stage.stop_reason), page)  # whole, not cut at 120 characters

    def test_a_metric_with_no_valid_sample_point_is_n_a(self) -> None:
        # the sitk backend's metric is inf where no sample point is valid: the card and the stage table had shown ∞
        # (the console "inf"), where it is no value at all; an infinite PSNR (identical images) stays ∞
        import dataclasses

        from MultimodalFusionLib.registration import register

        d = data.testing_data_dir()
        a = io.read_image(d / "BrainT1SliceBorder20.png", float32=True)
        b = io.read_image(d / "BrainProtonDensitySliceR10X13Y17.png", float32=True)
        result = register(a, b, stages=["rigid"], seed=1)
        res = dataclasses.replace(result, metric_after=float("inf"),
                                  stages=[dataclasses.replace(result.stages[0], metric_after=float("inf"))])
        with tempfile.TemporaryDirectory() as tmp:
            page = open(report.write_report(tmp, inputs={"T1": a, "PD": b}, fusions=[fusion.fuse(a, b, "average")],
                                            metrics={"average": {"PSNR": float("inf")}}, registration=res)["html"],
                        encoding="utf-8").read()
        card = page[page.index('<div class="card"><table class="kv">'):]
        self.assertIn('<tr><th class="name">metric after</th><td>n/a</td></tr>', card)
        self.assertIn(f"<td>{result.stages[0].metric_before:.3f}</td><td>n/a</td>", card)
        self.assertNotIn("∞", card)
        self.assertIn("∞", page[:page.index('<div class="card"><table class="kv">')])  # the PSNR

    def test_the_stage_table_marks_a_discarded_stage(self) -> None:
        # the table had shown a discarded stage's "metric after" as if it had been applied; only the warnings
        # below said the transform before it was kept
        import dataclasses

        from MultimodalFusionLib.registration import register

        d = data.testing_data_dir()
        a = io.read_image(d / "BrainT1SliceBorder20.png", float32=True)
        b = io.read_image(d / "BrainProtonDensitySliceR10X13Y17.png", float32=True)
        result = register(a, b, stages=["rigid"], seed=1)
        pages = {}
        for accepted in (True, False):
            res = dataclasses.replace(result, stages=[dataclasses.replace(result.stages[0], accepted=accepted)])
            with tempfile.TemporaryDirectory() as tmp:
                pages[accepted] = open(report.write_report(
                    tmp, inputs={"T1": a, "PD": b}, fusions=[fusion.fuse(a, b, "average")], metrics={},
                    registration=res)["html"], encoding="utf-8").read()
        mark = "rigid (discarded: made the metric worse; the transform before it was kept)"
        self.assertIn(mark, pages[False])
        self.assertNotIn("discarded", pages[True])

    def test_levels_that_ran_no_iteration_are_counted(self) -> None:
        from MultimodalFusionLib.registration import register
        from MultimodalFusionLib.registration.parameters import RegistrationParameters, StageParameters
        from MultimodalFusionLib.registration.result import StageResult, iterations_per_level

        history = [(0, 1, -0.5), (0, 2, -0.6), (1, 1, -0.7)]
        self.assertEqual(iterations_per_level(history, 3), [2, 1, 0])
        self.assertEqual(iterations_per_level(history), [2, 1])  # the history alone shows no third level
        self.assertEqual(StageResult("rigid", "mi", 0.0, 0.0, 3, "", 0.0, history).level_iterations, [2, 1])
        # a stage whose gradient is within tolerance at once runs no iteration at any of its 3 levels:
        # the sitk backend still counts them (one derivation, with the stage's number of levels)
        d = data.testing_data_dir()
        a = io.read_image(d / "BrainT1SliceBorder20.png", float32=True)
        b = io.read_image(d / "BrainProtonDensitySliceR10X13Y17.png", float32=True)
        stage = register(a, b, RegistrationParameters(stages=[StageParameters(name="rigid", gradient_tolerance=1e3)],
                                                      seed=1)).stages[0]
        self.assertEqual((stage.iterations, stage.level_iterations), (0, [0, 0, 0]))

    def test_the_verdict_does_not_call_a_move_apart_unchanged(self) -> None:
        # a single non-zero voxel registered to itself: the MI of so empty an image barely moves, but
        # the registration moved the images apart (correlation 1 -> 0.47); the card had called that
        # "alignment unchanged (already aligned, or the starting position was kept)"
        a = sitk.Image([20, 20, 20], sitk.sitkFloat32)
        a[10, 10, 10] = 1.0
        res = fusion.fuse(a, a, "average")
        cases = {"did NOT improve": (1.0, 0.4718), "alignment improved": (0.4718, 1.0),
                 "alignment unchanged": (0.9, 0.9)}
        for verdict, (ncc_before, ncc_after) in cases.items():
            reg = {"before": {"MI": 0.0012483917897572866, "NMI": 2.0, "NCC": ncc_before},
                   "after": {"MI": 0.0012483917897570082, "NMI": 1.125, "NCC": ncc_after}}
            with tempfile.TemporaryDirectory() as tmp:
                page = open(report.write_report(tmp, inputs={"A": a, "B": a}, fusions=[res], metrics={},
                                                 registration_metrics=reg)["html"], encoding="utf-8").read()
            card = page[page.index("<b>Registration:</b>"):]
            card = card[:card.index("</div>")]
            self.assertIn(verdict, card)

    def test_images_registered_from_apart_are_called_improved(self) -> None:
        # BrainWeb's PD slice placed 1 m from the T1 (no voxel in common as they lie), registered back by the true
        # transform: alignment_before_after gives "before" NaN over 0 voxels, whose NaN gain had read as "did NOT
        # improve: check the images" (mmfusion run from the centres said so of a 0.83-correlated result)
        d = data.testing_data_dir()
        a = io.read_image(d / "BrainT1SliceBorder20.png", float32=True)
        b = io.read_image(d / "BrainProtonDensitySliceR10X13Y17.png", float32=True)
        b.SetOrigin((1000.0, 500.0))
        truth = sitk.Euler2DTransform((110.0, 128.0), np.deg2rad(10.0), (1013.09, 515.92))
        reg = metrics.alignment_before_after(a, b, truth)
        self.assertEqual(reg["before"]["voxels"], 0)
        self.assertGreater(reg["after"]["NCC"], 0.8)
        res = fusion.fuse(a, a, "average")
        with tempfile.TemporaryDirectory() as tmp:
            page = open(report.write_report(tmp, inputs={"A": a, "B": b}, fusions=[res], metrics={},
                                             registration_metrics=reg)["html"], encoding="utf-8").read()
        card = page[page.index("<b>Registration:</b>"):]
        card = card[:card.index("</div>")]
        self.assertIn("alignment improved (the images did not overlap before it)", card)
        self.assertNotIn("did NOT improve", card)
        # and the other way round: a transform that carries the fixed image off the moving one is named so
        off = metrics.alignment_before_after(a, a, sitk.TranslationTransform(2, (5000.0, 0.0)))
        self.assertEqual(off["after"]["voxels"], 0)
        with tempfile.TemporaryDirectory() as tmp:
            page = open(report.write_report(tmp, inputs={"A": a, "B": a}, fusions=[res], metrics={},
                                             registration_metrics=off)["html"], encoding="utf-8").read()
        self.assertIn("through the transform the moving image covers none of the fixed image", page)


if __name__ == "__main__":
    unittest.main()
