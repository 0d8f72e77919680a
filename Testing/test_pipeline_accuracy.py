"""``mmfusion run`` with label maps and landmarks: the registration's accuracy (Dice, HD95, TRE before and after)
in the same run, its metrics.json (evaluate-registration's keys and numbers), its summary and its HTML report,
and a bad label or landmark file refused before any registration."""

from __future__ import annotations

import contextlib
import io as _io
import json
import math
import os
import shutil
import tempfile
import unittest

import numpy as np
import SimpleITK as sitk

from MultimodalFusionLib import cli, data, io, pipeline
from MultimodalFusionLib.errors import InputError
from MultimodalFusionLib.preprocess import resample

#: the known misalignment of the moving image: 5 degrees about left-right, (4, -3, 2) mm
TRUE_ANGLE_RAD = np.deg2rad(5.0)
TRUE_TRANSLATION = (4.0, -3.0, 2.0)
#: landmarks inside the brain (LPS mm)
FIXED_POINTS = np.array([[-20.0, -10.0, 20.0], [25.0, 5.0, 10.0], [0.0, 30.0, 0.0], [5.0, -40.0, 30.0],
                         [-30.0, 15.0, -5.0]])
FCSV_HEADER = ("# Markups fiducial file version = 4.11\n# CoordinateSystem = RAS\n"
               "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n")


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = _io.StringIO(), _io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def _centre(image: sitk.Image) -> list[float]:
    size = np.array(image.GetSize())
    return [float(v) for v in image.TransformContinuousIndexToPhysicalPoint([float(x) for x in (size - 1) / 2.0])]


def _write_case(folder: str) -> dict[str, str]:
    """A T1 and a PET-like image moved by a known rigid transform T (fixed -> moving points), with label maps (brain
    1, white matter 2) and landmarks moved alike: through T, Dice 1 and TRE 0. Fixed landmarks in a Slicer .fcsv
    (RAS), moving ones in an ANTs .csv (LPS)."""
    tissues = data.mni152(spacing_mm=3)
    pet = data.synthetic_contrast(tissues, "pet", seed=2)
    truth = sitk.Euler3DTransform()
    truth.SetCenter(_centre(pet))
    truth.SetRotation(float(TRUE_ANGLE_RAD), 0.0, 0.0)
    truth.SetTranslation(TRUE_TRANSLATION)
    labels = sitk.Cast(tissues["brain_mask"] > 0, sitk.sitkUInt8) + sitk.Cast(tissues["wm"] > 0.5, sitk.sitkUInt8)
    paths = {"fixed": io.write_image(tissues["t1"], os.path.join(folder, "t1.nii.gz")),
             "moving": io.write_image(sitk.Resample(pet, pet, truth.GetInverse(), sitk.sitkLinear, 0.0),
                                      os.path.join(folder, "pet_moved.nii.gz")),
             "fixed_labels": io.write_image(labels, os.path.join(folder, "t1_labels.nii.gz")),
             "moving_labels": io.write_image(resample(labels, labels, truth.GetInverse(), interpolation="nearest"),
                                             os.path.join(folder, "pet_labels.nii.gz")),
             "fixed_landmarks": os.path.join(folder, "t1.fcsv"), "moving_landmarks": os.path.join(folder, "pet.csv")}
    with open(paths["fixed_landmarks"], "w") as f:
        f.write(FCSV_HEADER + "".join(f"vtkMRMLMarkupsFiducialNode_{i},{-p[0]},{-p[1]},{p[2]},0,0,0,1,1,1,0,F-{i},,\n"
                                      for i, p in enumerate(FIXED_POINTS)))
    with open(paths["moving_landmarks"], "w") as f:
        f.write("x,y,z,t\n" + "".join(",".join(repr(float(v)) for v in truth.TransformPoint(p.tolist())) + ",0\n"
                                      for p in FIXED_POINTS))
    return paths


def _accuracy_args(paths: dict[str, str]) -> list[str]:
    return [a for k in ("fixed_labels", "moving_labels", "fixed_landmarks", "moving_landmarks")
            for a in ("--" + k.replace("_", "-"), paths[k])]


def _assert_same_numbers(test: unittest.TestCase, a, b, where: str = "") -> None:
    """The same keys and, for numbers, values within 1e-9 (relative)."""
    if isinstance(a, dict):
        test.assertIsInstance(b, dict, where)
        test.assertEqual(sorted(a), sorted(b), where)
        for k in a:
            _assert_same_numbers(test, a[k], b[k], f"{where}/{k}")
    elif isinstance(a, list):
        test.assertEqual(len(a), len(b), where)
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_numbers(test, x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, (int, float)):
        test.assertTrue(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9), f"{where}: {a} != {b}")
    else:
        test.assertEqual(a, b, where)


class RunWithAccuracyTest(unittest.TestCase):
    """One ``mmfusion run`` with labels and landmarks; the tests read what it printed and wrote."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.mkdtemp(prefix="mmf-run-accuracy-")
        cls.paths = _write_case(cls.tmp)
        cls.out = os.path.join(cls.tmp, "out")
        cls.rc, cls.stdout, cls.stderr = run_cli(
            "run", cls.paths["fixed"], cls.paths["moving"], "-o", cls.out, "--methods", "average", "--stages",
            "rigid", "--seed", "1", *_accuracy_args(cls.paths))

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def _metrics_json(self) -> dict:
        self.assertEqual(self.rc, 0, self.stderr)
        with open(os.path.join(self.out, "metrics.json"), encoding="utf-8") as f:
            return json.load(f)

    def test_metrics_json_holds_the_accuracy_through_the_registration(self) -> None:
        accuracy = self._metrics_json()["registration_accuracy"]
        labels, landmarks = accuracy["labels"], accuracy["landmarks"]
        self.assertEqual(sorted(labels["after"]["labels"]), ["1", "2"])
        self.assertLess(labels["before"]["mean"]["dice"], 0.85)
        self.assertGreater(labels["after"]["mean"]["dice"], 0.93)  # nearest-neighbour twice on 3 mm voxels
        self.assertGreater(labels["before"]["mean"]["hd95"], labels["after"]["mean"]["hd95"])
        expected_before = np.linalg.norm(
            np.loadtxt(self.paths["moving_landmarks"], delimiter=",", skiprows=1)[:, :3] - FIXED_POINTS, axis=1)
        self.assertAlmostEqual(landmarks["before"]["mean"], float(expected_before.mean()), places=6)
        self.assertGreater(landmarks["before"]["mean"], 4.0)
        self.assertLess(landmarks["after"]["max"], 1.5)  # the registration's error, not 0: voxels are 3 mm
        self.assertEqual(landmarks["after"]["n"], len(FIXED_POINTS))
        self.assertEqual(accuracy["landmark_files"]["fixed"]["read_as"], "RAS")
        self.assertEqual(accuracy["label_matching"], "number")

    def test_the_same_keys_and_numbers_as_evaluate_registration_with_the_written_transform(self) -> None:
        accuracy = self._metrics_json()["registration_accuracy"]
        rc, out, err = run_cli("evaluate-registration", self.paths["fixed"], self.paths["moving"], "--transform",
                               os.path.join(self.out, "transform.tfm"), *_accuracy_args(self.paths), "--json")
        self.assertEqual(rc, 0, err)
        _assert_same_numbers(self, json.loads(out), accuracy)

    def test_the_summary_prints_the_before_after_table(self) -> None:
        self.assertEqual(self.rc, 0, self.stderr)
        accuracy = self._metrics_json()["registration_accuracy"]
        self.assertIn("registration accuracy (as evaluate-registration scores it):", self.stdout)
        tre_mean = accuracy["landmarks"]["after"]["mean"]
        before_mean = accuracy["landmarks"]["before"]["mean"]
        self.assertRegex(self.stdout, rf"\n\s+mean\s+{before_mean:.3f}\s+{tre_mean:.3f}\n")
        dice = accuracy["labels"]["after"]["mean"]["dice"]
        self.assertRegex(self.stdout, rf"Dice\s+\d\.\d+\s+{dice:.3f}")

    def test_the_report_shows_the_accuracy_table(self) -> None:
        accuracy = self._metrics_json()["registration_accuracy"]
        with open(os.path.join(self.out, "report.html"), encoding="utf-8") as f:
            page = f.read()
        self.assertIn("<h3>Accuracy on labels and landmarks</h3>", page)
        section = page[page.index("<h3>Accuracy on labels and landmarks</h3>"):]
        for label in ("1", "2"):
            b = accuracy["labels"]["before"]["labels"][label]
            a = accuracy["labels"]["after"]["labels"][label]
            self.assertIn(f'<tr><td class="name">{label}</td><td>{b["dice"]:.3f}</td><td>{a["dice"]:.3f}</td>'
                          f'<td>{b["hd95"]:.3f}</td><td>{a["hd95"]:.3f}</td></tr>', section)
        mean_b, mean_a = accuracy["labels"]["before"]["mean"], accuracy["labels"]["after"]["mean"]
        self.assertIn(f'<th class="name">mean of 2</th><th>{mean_b["dice"]:.3f}</th><th>{mean_a["dice"]:.3f}</th>',
                      section)
        tb, ta = accuracy["landmarks"]["before"], accuracy["landmarks"]["after"]
        for key in ("mean", "median", "max"):
            self.assertIn(f'<tr><td class="name">{key}</td><td>{tb[key]:.3f}</td><td>{ta[key]:.3f}</td></tr>',
                          section)
        # and the means in the verdict card at the top
        top = page[:page.index("<h2>Fused images</h2>")]
        self.assertIn(f"mean TRE {tb['mean']:.3f} &rarr; {ta['mean']:.3f} mm", top)


class RunWithAccuracyRefusalsTest(unittest.TestCase):
    """Bad labels or landmarks fail before any registration: no output folder, no progress past loading, and the
    words of ``evaluate-registration`` for the same files."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.mkdtemp(prefix="mmf-run-accuracy-bad-")
        cls.paths = _write_case(cls.tmp)
        cls.bad_points = os.path.join(cls.tmp, "bad.txt")  # an elastix point file without its 'point' line
        with open(cls.bad_points, "w") as f:
            f.write("5\n" + "".join(" ".join(str(v) for v in p) + "\n" for p in FIXED_POINTS))
        cls.four_points = os.path.join(cls.tmp, "four.csv")
        with open(cls.four_points, "w") as f:
            f.write("x,y,z,t\n" + "".join(",".join(str(v) for v in p) + ",0\n" for p in FIXED_POINTS[:4]))

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def _refused_as_evaluate_registration_refuses(self, *extra: str) -> str:
        out = os.path.join(self.tmp, "out")
        rc, _, err = run_cli("run", self.paths["fixed"], self.paths["moving"], "-o", out, "--methods", "average",
                             "--stages", "rigid", *extra)
        self.assertEqual(rc, 2, err)
        self.assertFalse(os.path.exists(out), "the refused run left an output folder")
        rc, _, expected = run_cli("evaluate-registration", self.paths["fixed"], self.paths["moving"], *extra)
        self.assertEqual(rc, 2, expected)
        self.assertEqual(err.replace("mmfusion run:", ""), expected.replace("mmfusion evaluate-registration:", ""))
        return err

    def test_a_bad_landmark_file_is_refused_before_the_registration(self) -> None:
        err = self._refused_as_evaluate_registration_refuses(
            "--fixed-landmarks", self.bad_points, "--moving-landmarks", self.paths["moving_landmarks"])
        self.assertIn("does not start with 'point' or 'index'", err)
        # through the engine: the progress callback heard of nothing after the loading
        calls: list[tuple[float, str]] = []
        out = os.path.join(self.tmp, "out_api")
        with self.assertRaises(InputError):
            pipeline.run(self.paths["fixed"], self.paths["moving"], out, methods="average", stages="rigid",
                         fixed_landmarks=self.bad_points, moving_landmarks=self.paths["moving_landmarks"],
                         progress=lambda f, m: calls.append((f, m)) or True)
        self.assertEqual(max(f for f, _ in calls), 0.0, calls)
        self.assertEqual([m for _, m in calls], ["loading images", "reading label maps and landmarks"])
        self.assertFalse(os.path.exists(out))

    def test_landmark_files_that_do_not_pair_and_labels_in_neither_map_are_refused_first(self) -> None:
        err = self._refused_as_evaluate_registration_refuses(
            "--fixed-landmarks", self.paths["fixed_landmarks"], "--moving-landmarks", self.four_points)
        self.assertIn("different numbers of points: 5 in", err)
        err = self._refused_as_evaluate_registration_refuses(
            "--fixed-labels", self.paths["fixed_labels"], "--moving-labels", self.paths["moving_labels"],
            "--labels", "7")
        self.assertIn("No label asked for is in both label maps", err)

    def test_a_file_without_its_partner_is_refused_in_the_same_words(self) -> None:
        err = self._refused_as_evaluate_registration_refuses("--fixed-labels", self.paths["fixed_labels"])
        self.assertIn("--fixed-labels was given without --moving-labels", err)
        err = self._refused_as_evaluate_registration_refuses("--moving-landmarks", self.paths["moving_landmarks"])
        self.assertIn("--moving-landmarks was given without --fixed-landmarks", err)
        err = self._refused_as_evaluate_registration_refuses("--labels", "1")
        self.assertIn("--labels was given without label maps", err)

    def test_a_landmark_file_named_as_an_output_is_not_overwritten(self) -> None:
        # a Slicer markups file may be named metrics.json (.json is read as .mrk.json): the report would replace it
        out = os.path.join(self.tmp, "out_named")
        os.makedirs(out)
        named = os.path.join(out, "metrics.json")
        with open(named, "w") as f:
            f.write("{}")
        with self.assertRaises(InputError) as caught:
            pipeline.run(self.paths["fixed"], self.paths["moving"], out, methods="average", stages="rigid",
                         fixed_landmarks=named, moving_landmarks=self.paths["moving_landmarks"])
        self.assertIn(f"would overwrite the input file '{named}'", str(caught.exception))
        with open(named) as f:
            self.assertEqual(f.read(), "{}")


if __name__ == "__main__":
    unittest.main()
