"""The fusion benchmark script runs from a fresh clone on data laid out like CDDFuse's test_img.

The real benchmark data (Harvard pairs) is not shipped; this builds a tiny folder in the same
layout from the bundled ITK slices (grey MRI/CT pairs and pseudo-colour SPECT-like slices) and
checks that the script prints its tables, its goal check, and writes finite metrics to JSON.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io as _io
import json
import math
import tempfile
import unittest
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MultimodalFusionLib import data as mmdata
from MultimodalFusionLib.fusion.color import apply_colormap
from MultimodalFusionLib.io import read_image

ROOT = Path(__file__).resolve().parent.parent


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("fusion_harvard", ROOT / "benchmarks" / "fusion_harvard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_png(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(arr.astype(np.uint8), isVector=arr.ndim == 3)
    sitk.WriteImage(img, str(path))


class FusionBenchmarkScriptTest(unittest.TestCase):
    def test_benchmark_prints_tables_and_goal_check(self):
        t1 = read_image(mmdata.testing_data_dir() / "BrainT1Slice.png", float32=True)  # aligned T1/PD slices
        pd = read_image(mmdata.testing_data_dir() / "BrainProtonDensitySlice.png", float32=True)
        a = sitk.GetArrayFromImage(t1)[:128, :128].astype(np.float64)
        b = sitk.GetArrayFromImage(pd)[:128, :128].astype(np.float64)
        a8 = np.round(255 * (a - a.min()) / np.ptp(a))
        b8 = np.round(255 * (b - b.min()) / np.ptp(b))
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            for k, (x, y) in enumerate([(a8, b8), (b8, a8)]):
                _write_png(x, root / "MRI_CT" / "MRI" / f"{k}.png")
                _write_png(y, root / "MRI_CT" / "CT" / f"{k}.png")
                _write_png(x, root / "MRI_SPECT" / "MRI" / f"{k}.png")
                _write_png(np.round(apply_colormap(y / 255.0, "hot") * 255), root / "MRI_SPECT" / "SPECT" / f"{k}.png")
            out_json = root / "results.json"
            bench = _load_benchmark()
            buf = _io.StringIO()
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(_io.StringIO()):
                rc = bench.main(["--data", str(root), "--methods", "average,max,deep", "--deep-adapt", "2",
                                 "--json", str(out_json)])
            text = buf.getvalue()
            self.assertEqual(rc, 0, text)
            self.assertIn("**MRI-CT** (2 pairs)", text)
            self.assertIn("**MRI-SPECT** (2 pairs)", text)
            self.assertIn("(MRI_PET: no pairs found", text)
            self.assertIn("| CDDFuse (published, full set) |", text)
            self.assertRegex(text, r"goal check \(MRI-CT\): deep above CDDFuse's published row on \d/8")
            self.assertRegex(text, r"Qabf: deep \d\.\d{3} vs best classic (average|max) \d\.\d{3}")
            # the adapted row has its own goal check, against the classic rows only (not the other deep row)
            self.assertRegex(text, r"goal check \(MRI-SPECT\): deep\+adapt2 above CDDFuse's published row on \d/8")
            self.assertRegex(text, r"VIF: deep\+adapt2 \d\.\d{3} vs best classic (average|max) \d\.\d{3}")
            self.assertNotRegex(text, r"vs best classic deep")
            results = json.loads(out_json.read_text())["results"]
            for name in ("MRI_CT", "MRI_SPECT"):
                for method in ("average", "max", "deep", "deep+adapt2"):
                    vals = results[name]["methods"][method]
                    self.assertNotIn("error", vals)
                    self.assertTrue(all(math.isfinite(vals[k]) for k in bench.KEYS), (name, method, vals))
            # the grey MRI-CT pair fused with max is exactly the pixel-wise maximum: EN/SD follow from it
            # adaptation changed the network, so the adapted row is not the shipped weights' row
            shipped, adapted = (results["MRI_CT"]["methods"][m] for m in ("deep", "deep+adapt2"))
            self.assertNotEqual([shipped[k] for k in bench.KEYS], [adapted[k] for k in bench.KEYS])
            ref = np.maximum(a8, b8)
            self.assertAlmostEqual(results["MRI_CT"]["methods"]["max"]["SD"], float(np.std(ref)), delta=1e-6)


if __name__ == "__main__":
    unittest.main()
