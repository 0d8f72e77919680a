"""The fusion benchmark scripts run from a fresh clone on data laid out like CDDFuse's test_img.

The real benchmark data (Harvard pairs) is not shipped; this builds a tiny folder in the same
layout from the bundled ITK slices (grey MRI/CT pairs and pseudo-colour SPECT-like slices) and
checks that ``fusion_harvard.py`` prints its tables and goal checks (the adaptation row included),
writes finite metrics to JSON and stretches every fused image as CDDFuse's ``test_MIF.py`` does,
and that ``fusion_composition_sweep.py`` scores every configuration and keeps its noise control
out of the count. ``capture_range.py --random`` draws reproducible rotations and counts its cases;
``centre_of_mass.py`` prints its table of centre-of-mass rules; ``sparse_content.py`` its table of small
objects, bright and dark, with their warnings; ``torch_inverse_field.py --quick`` prints the
torch field's size and how well SimpleITK inverts it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io as _io
import json
import math
import re
import tempfile
import unittest
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MultimodalFusionLib import data as mmdata
from MultimodalFusionLib.fusion.color import apply_colormap
from MultimodalFusionLib.io import read_image

ROOT = Path(__file__).resolve().parent.parent


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_png(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(arr.astype(np.uint8), isVector=arr.ndim == 3)
    sitk.WriteImage(img, str(path))


def _entropy(f: np.ndarray) -> float:
    h = np.bincount(f.astype(np.uint8).ravel(), minlength=256) / f.size
    return float(-np.sum(h[h > 0] * np.log2(h[h > 0])))


def _run(main, argv: list[str]) -> tuple[int, str]:
    buf = _io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(_io.StringIO()):
        rc = main(argv)
    return rc, buf.getvalue()


class FusionBenchmarkScriptTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        t1 = read_image(mmdata.testing_data_dir() / "BrainT1Slice.png", float32=True)  # aligned T1/PD slices
        pd = read_image(mmdata.testing_data_dir() / "BrainProtonDensitySlice.png", float32=True)
        a = sitk.GetArrayFromImage(t1)[:128, :128].astype(np.float64)
        b = sitk.GetArrayFromImage(pd)[:128, :128].astype(np.float64)
        cls.a8 = np.round(255 * (a - a.min()) / np.ptp(a))
        cls.b8 = np.round(255 * (b - b.min()) / np.ptp(b))
        cls._tmp = tempfile.TemporaryDirectory()
        cls.root = root = Path(cls._tmp.name)
        for k, (x, y) in enumerate([(cls.a8, cls.b8), (cls.b8, cls.a8)]):
            _write_png(x, root / "MRI_CT" / "MRI" / f"{k}.png")
            _write_png(y, root / "MRI_CT" / "CT" / f"{k}.png")
            _write_png(x, root / "MRI_SPECT" / "MRI" / f"{k}.png")
            _write_png(np.round(apply_colormap(y / 255.0, "hot") * 255), root / "MRI_SPECT" / "SPECT" / f"{k}.png")

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def test_benchmark_prints_tables_and_goal_check(self):
        a8, b8, root = self.a8, self.b8, self.root
        out_json = root / "results.json"
        bench = _load_script("fusion_harvard")
        rc, text = _run(bench.main, ["--data", str(root), "--methods", "average,max,deep", "--deep-adapt", "2",
                                     "--json", str(out_json)])
        self.assertEqual(rc, 0, text)
        # the table names its data and where it ran (deep fusion goes to CUDA when torch sees a GPU)
        self.assertIn(f"data: {root.resolve()}\n", text)
        self.assertRegex(text, r"machine: .*\d+ CPU cores, load [0-9.]+, ITK threads \d+, torch on (the CPU, \d+ "
                               r"thread\(s\)|CUDA \(.+\))")
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
        # each source scored as if it were the fused image: printed as reference rows, never a "classic" rival
        self.assertIn("| *MRI alone (a source, not a fusion)* |", text)
        self.assertIn("| *SPECT alone (a source, not a fusion)* |", text)
        self.assertNotRegex(text, r"vs best classic \S*alone")
        results = json.loads(out_json.read_text())["results"]
        for name in ("MRI_CT", "MRI_SPECT"):
            for method in ("average", "max", "deep", "deep+adapt2"):
                vals = results[name]["methods"][method]
                self.assertNotIn("error", vals)
                self.assertTrue(all(math.isfinite(vals[k]) for k in bench.KEYS), (name, method, vals))
        sources = json.loads(out_json.read_text())["results"]["MRI_CT"]["sources"]
        self.assertEqual(set(sources), {"MRI alone", "CT alone"})
        # the MRI of the two pairs is a8, then b8 (both span 0..255, so the stretch keeps them)
        self.assertAlmostEqual(sources["MRI alone"]["SD"], (np.std(a8) + np.std(b8)) / 2, delta=1e-6)
        self.assertIsNone(sources["MRI alone"]["SCD"])  # corr(F - A, B) of a constant: undefined, n/a
        self.assertEqual(sources["CT alone"]["EN"], sources["MRI alone"]["EN"])  # the same two images, swapped
        # adaptation changed the network, so the adapted row is not the shipped weights' row
        shipped, adapted = (results["MRI_CT"]["methods"][m] for m in ("deep", "deep+adapt2"))
        self.assertNotEqual([shipped[k] for k in bench.KEYS], [adapted[k] for k in bench.KEYS])
        # the grey MRI-CT pair fused with max is exactly the pixel-wise maximum: its SD follows from it
        ref = bench.cddfuse_saved(np.maximum(a8, b8))  # stretched as CDDFuse's test_MIF.py does
        self.assertAlmostEqual(results["MRI_CT"]["methods"]["max"]["SD"], float(np.std(ref)), delta=1e-6)

    def test_benchmark_stretches_fused_images_as_cddfuse_does(self):
        # CDDFuse's test_MIF.py min-max normalises its output before saving and scoring it; the
        # benchmark does the same to every method (default), or scores the image as returned
        bench = _load_script("fusion_harvard")
        avg = 0.5 * (self.a8 + self.b8)
        self.assertLess(np.ptp(avg), 250.0)  # so the stretch changes this image
        expected = {"cddfuse": bench.cddfuse_saved(avg), "none": np.round(avg)}
        self.assertEqual((expected["cddfuse"].min(), expected["cddfuse"].max()), (0.0, 255.0))
        self.assertGreater(np.std(expected["cddfuse"]) - np.std(expected["none"]), 1.0)
        for scaling, ref in expected.items():
            res = bench.run_set(self.root, "MRI_CT", ["average"], 1, scaling)
            self.assertAlmostEqual(res["methods"]["average"]["SD"], float(np.std(ref)), delta=0.05, msg=scaling)
            self.assertAlmostEqual(res["methods"]["average"]["EN"], _entropy(ref), delta=0.01, msg=scaling)
        self.assertTrue(np.array_equal(bench.cddfuse_saved(np.full((4, 4), 7.0)), np.zeros((4, 4))))
        rc, text = _run(bench.main, ["--data", str(self.root), "--methods", "max", "--scaling", "none"])
        self.assertEqual(rc, 0, text)
        self.assertIn("fused images scored as returned, no stretch (--scaling none)", text)

    def test_bad_data_sets_and_methods_are_refused_up_front(self):
        """A wrong --data, --sets or --methods is a usage error (exit 2), not a traceback, a table of
        "failed" rows, or an exit 0 with nothing scored."""
        sweep = _load_script("fusion_composition_sweep")
        bench = _load_script("fusion_harvard")
        missing = str(self.root / "no-such-folder")
        for main, argv, expected in [
                (sweep.main, ["--data", missing], "is not a folder"),
                (sweep.main, ["--data", str(self.root), "--sets", "MRI_XX"], "unknown set(s) ['MRI_XX']"),
                (bench.main, ["--data", str(self.root), "--methods", "max,maks"], "unknown method(s) ['maks']")]:
            err = _io.StringIO()
            with self.assertRaises(SystemExit) as stop, contextlib.redirect_stdout(_io.StringIO()), \
                    contextlib.redirect_stderr(err):
                main(argv)
            self.assertEqual(stop.exception.code, 2, argv)
            self.assertIn(expected, err.getvalue(), argv)
        with tempfile.TemporaryDirectory() as empty:  # a folder, but not the one holding the sets
            rc, text = _run(sweep.main, ["--data", empty, "--sets", "MRI_CT"])
        self.assertEqual(rc, 1)
        self.assertIn("MRI_CT: no pairs found under", text)

    def test_registration_benchmark_names_a_bad_input_file(self):
        import sys

        spec = importlib.util.spec_from_file_location("bench_registration", ROOT / "benchmarks" / "registration.py")
        reg = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = reg  # its dataclasses look their module up there
        self.addCleanup(sys.modules.pop, spec.name, None)
        spec.loader.exec_module(reg)
        with tempfile.TemporaryDirectory() as tmp:
            fixed = str(mmdata.testing_data_dir() / "BrainT1Slice.png")
            for argv, expected in [
                    (["--fixed", str(Path(tmp) / "missing.nii.gz")], "File not found"),
                    (["--fixed", fixed, "--true-transform", fixed], "Give an ITK transform file")]:
                argv = argv + (["--true-transform", "t.tfm"] if "--true-transform" not in argv else [])
                argv += ["--moving", fixed, "--only", "ours-rigid"]
                with self.assertRaises(SystemExit) as stop, contextlib.redirect_stderr(_io.StringIO()):
                    reg.main(argv)
                self.assertIsInstance(stop.exception.code, str, argv)
                self.assertTrue(stop.exception.code.startswith("registration.py: error:"), stop.exception.code)
                self.assertIn(expected, stop.exception.code)

    def test_registration_benchmark_names_the_package_of_a_missing_peer(self):
        """A peer that is not installed had failed in its worker with "ModuleNotFoundError: No module named 'itk'",
        naming no fix; its row now says which package to install, and no worker is started for it."""
        import sys

        peers = {"elastix-rigid": ("itk", "itk-elastix"), "ants-rigid": ("ants", "antspyx")}
        missing = {name: pip for name, (module, pip) in peers.items() if importlib.util.find_spec(module) is None}
        if not missing:
            self.skipTest("itk-elastix and ANTsPy are both installed")
        spec = importlib.util.spec_from_file_location("bench_registration", ROOT / "benchmarks" / "registration.py")
        reg = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = reg  # its dataclasses look their module up there
        self.addCleanup(sys.modules.pop, spec.name, None)
        spec.loader.exec_module(reg)
        rc, text = _run(reg.main, ["--spacing", "8", "--only", ",".join(missing)])
        self.assertEqual(rc, 0, text)
        for name, pip in missing.items():
            self.assertIn(f"| {reg.METHODS[name].tool} | rigid | not installed: pip install {pip} "
                          "(`make bench` installs the peers) |", text)

    def test_composition_sweep_runs_and_counts_configurations(self):
        sweep = _load_script("fusion_composition_sweep")
        n = len(sweep.candidates())
        rc, text = _run(sweep.main, ["--data", str(self.root), "--sets", "MRI_CT", "--top", "3"])
        self.assertEqual(rc, 0, text)
        self.assertIn(f"**MRI-CT** (2 pairs; {n} configurations;", text)
        self.assertRegex(text, rf"configurations meeting the whole goal: \d+ of {n}")
        # the noise control is printed beside the table and is not one of the counted configurations
        self.assertIn("| *control, not a method:", text)
        self.assertFalse(any("control" in name for name in sweep.candidates()))
        # the structure-aware selection copies pixels: every output value comes from one of the sources
        a, b = self.a8 / 255.0, self.b8 / 255.0
        w = np.full(a.shape, 0.5)
        out = sweep._structure_select(a, b, w, 2.0, 1.0)
        self.assertTrue(np.all((out == a) | (out == b)))
        self.assertTrue(np.any(out != a) and np.any(out != b))


class ScriptsMeasureTheirCheckoutTest(unittest.TestCase):
    def test_every_script_imports_the_engine_of_its_own_checkout(self):
        """Five scripts imported an installed MultimodalFusionLib first and fell back to their checkout only when
        none was installed, and one never looked at its checkout: run from a clone beside an editable install of
        another checkout, they measured that other checkout's engine without a word (and without any install,
        torch_inverse_field.py stopped with ModuleNotFoundError)."""
        import os
        import subprocess
        import sys

        code = ("import importlib.util, sys\n"
                "spec = importlib.util.spec_from_file_location('script', sys.argv[1])\n"
                "module = importlib.util.module_from_spec(spec)\n"
                "sys.modules['script'] = module\n"
                "spec.loader.exec_module(module)\n"
                "import MultimodalFusionLib\n"
                "print(MultimodalFusionLib.__file__)\n")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        scripts = sorted((ROOT / "benchmarks").glob("*.py"))
        self.assertGreater(len(scripts), 20)
        with tempfile.TemporaryDirectory() as elsewhere:  # not the checkout: its folder is not on sys.path
            for script in scripts:
                if script.name in ("bench_machine.py", "registration_torch_rows.py"):  # helpers, not scripts
                    continue
                done = subprocess.run([sys.executable, "-c", code, str(script)], cwd=elsewhere, env=env,
                                      capture_output=True, text=True, timeout=120)
                self.assertEqual(done.returncode, 0, (script.name, done.stderr[-2000:]))
                engine = Path(done.stdout.strip().splitlines()[-1]).resolve()
                self.assertEqual(engine, ROOT / "MultimodalFusionLib" / "__init__.py", script.name)


class CaptureRangeScriptTest(unittest.TestCase):
    def test_random_rotations_are_reproducible_rotations_and_the_summary_counts_them(self):
        capture = _load_script("capture_range")
        first, again = capture.random_rotations(30, 1), capture.random_rotations(30, 1)
        self.assertEqual(first, again)
        self.assertNotEqual(first, capture.random_rotations(30, 2))
        for angles, shift in first:
            self.assertLessEqual(float(np.linalg.norm(shift)), 10.0)
            self.assertTrue(all(-180.0 <= a <= 180.0 for a in angles))
        # uniform over orientations: about several axes at once, not one (all three angles turn)
        self.assertGreater(sum(min(abs(a) for a in angles) > 10.0 for angles, _ in first), 10)
        rc, text = _run(capture.main, ["--spacing", "6", "--random", "2", "--random-seed", "1",
                                       "--initializers", "geometry"])
        self.assertEqual(rc, 0, text)
        self.assertEqual(len([line for line in text.splitlines() if line.startswith("| 0 |")
                              or line.startswith("| 1 |")]), 2, text)
        self.assertRegex(text, r"summary: geometry: \d/2 within 1 mm \(worst [0-9.]+ mm")

    def test_contrast_preset_and_stages_are_used_and_recorded(self):
        # the JSON had recorded spacing and seeds but not which contrast, preset or stages gave its rows
        capture = _load_script("capture_range")
        with tempfile.TemporaryDirectory() as tmp:
            out = str(Path(tmp) / "rows.json")
            rc, text = _run(capture.main, ["--spacing", "6", "--angles", "0", "--axes", "x", "--initializers",
                                           "geometry", "--contrast", "ct", "--preset", "ct-mr-head", "--stages",
                                           "rigid", "--json", out])
            self.assertEqual(rc, 0, text)
            with open(out, encoding="utf-8") as f:
                saved = json.load(f)
        self.assertIn("T1 vs synthetic CT, preset ct-mr-head, stages rigid", text)
        self.assertEqual((saved["contrast"], saved["preset"], saved["stages"]), ("ct", "ct-mr-head", "rigid"))
        self.assertEqual(len(saved["rows"]), 1)



class CentreOfMassScriptTest(unittest.TestCase):
    def test_the_centre_table_compares_the_rules_on_each_image(self):
        rc, text = _run(_load_script("centre_of_mass").main, ["--spacing", "6", "--no-register"])
        self.assertEqual(rc, 0, text)
        rows = {line.split("|")[1].strip(): [float(v) for v in line.split("|")[2:5]]
                for line in text.splitlines() if line.startswith("| ") and line[2:3] in "CTP"}
        self.assertEqual(len(rows), 7, text)
        signed, minimum, now = rows["CT"]
        self.assertGreater(signed, 10.0 * now)  # the air pulls the signed centre, not this version's
        self.assertLess(now, 1.5)
        self.assertAlmostEqual(rows["T2 - 1000"][2], rows["T2"][2], delta=0.05)  # an offset does not move it
        self.assertGreater(rows["T2 - 1000"][0], 5.0)
        self.assertRegex(text, r"this version: [0-9.]+")


class SparseContentScriptTest(unittest.TestCase):
    def test_the_sparse_content_table_warns_about_dark_squares_as_bright_ones(self):
        """The dark square is the bright one's picture inverted; both are warned about (fixed and moving), where
        the dark one had not been (its structure was counted above the minimum: the bright field)."""
        script = _load_script("sparse_content")
        bright, dark = script.pair("square", 13), script.pair("dark square", 13)
        for b, d in zip(bright, dark):
            np.testing.assert_array_equal(sitk.GetArrayViewFromImage(d), 100.0 - sitk.GetArrayViewFromImage(b))
        rc, text = _run(script.main, ["--seeds", "1", "--sizes", "13", "--kinds", "square,dark square"])
        self.assertEqual(rc, 0, text)
        rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in text.splitlines()
                if line.startswith("| ") and "square" in line.split("|")[1]}
        self.assertEqual([(k, cells[0].strip(), cells[1].strip()) for k, cells in rows.items()],
                         [("square", "13", "169"), ("dark square", "13", "169")], text)
        for cells in rows.values():
            self.assertIn(cells[-1].strip(), ("2", "3"))  # the two images' warnings (and a discarded stage's)
        with self.assertRaises(SystemExit):
            _run(script.main, ["--kinds", "circle"])


@unittest.skipUnless(importlib.util.find_spec("torch") is not None, "torch is not installed (pip install '.[deep]')")
class DeepFusionRuntimeScriptTest(unittest.TestCase):
    def test_a_device_it_cannot_use_is_a_usage_error_naming_the_option(self):
        """--device cuda without a GPU (or a device name torch has not) ended in a traceback from inside the engine
        after the data had been prepared; now it is refused first, naming --device and the devices to use."""
        import torch

        script = _load_script("deep_fusion_runtime")
        cases = [("gpu", "Unknown or unsupported torch device 'gpu'")]
        if not torch.cuda.is_available():
            cases.append(("cuda", "Device 'cuda' was requested but torch sees no CUDA GPU"))
        for device, expected in cases:
            err = _io.StringIO()
            with self.assertRaises(SystemExit) as stop, contextlib.redirect_stdout(_io.StringIO()), \
                    contextlib.redirect_stderr(err):
                script.main(["--device", device, "--volume", "8", "--only-volume"])
            self.assertEqual(stop.exception.code, 2, device)
            self.assertIn(f"--device {device}: {expected}", err.getvalue())
            self.assertIn("deep_fusion_runtime.py --device", err.getvalue())


@unittest.skipUnless(importlib.util.find_spec("torch") is not None, "torch is not installed (pip install '.[deep]')")
class TorchInverseFieldScriptTest(unittest.TestCase):
    def test_the_quick_run_prints_the_field_and_a_small_inverse_error(self):
        import torch

        threads = torch.get_num_threads()
        try:  # --quick: a tenth of the iterations (about 4 s of registration on one thread)
            rc, text = _run(_load_script("torch_inverse_field").main, ["--threads", "1", "--quick"])
        finally:
            torch.set_num_threads(threads)
        self.assertEqual(rc, 0, text)
        found = re.search(r"quick \(a tenth of the iterations\), bins default \(32\): field up to ([0-9.]+) mm; "
                          r"inverse after field ([0-9.]+) mm mean, ([0-9.]+) mm max over ([0-9]+) object voxels", text)
        self.assertIsNotNone(found, text)
        field_max, mean, worst, voxels = (float(v) for v in found.groups())
        self.assertEqual(voxels, 22796)  # the object of the fixed grid, 2 voxels in from its faces
        self.assertGreater(field_max, 0.5)  # a deformation field was returned, and inverted
        self.assertLess(mean, 0.01)  # the default run's 0.0019 mm (README): InvertDisplacementField inverts it
        self.assertLess(worst, 0.75 * field_max)


if __name__ == "__main__":
    unittest.main()
