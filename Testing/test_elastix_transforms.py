"""elastix transform parameter files (TransformParameters.0.txt) read as SimpleITK transforms.

The files below are written by hand as elastix 5 writes them; the points each maps were computed by transformix
(itk-elastix 0.25.4, elastix 5.2: ``TransformixFilter`` with ``SetFixedPointSetFileName``, outputpoints.txt's
OutputPoint, six decimals) from these very files, so that these tests need no elastix. Each conversion was
checked against transformix on whole grids too (deformation field and resampled image, registrations elastix ran):
see README, "Transform files from elastix".
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import unittest
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO

import numpy as np
import SimpleITK as sitk

from MultimodalFusionLib import cli, io
from MultimodalFusionLib.errors import InputError

_GRID = {
    2: '(FixedImageDimension 2)\n(MovingImageDimension 2)\n(Size 20 16)\n(Index 0 0)\n(Spacing 1.5 2)\n'
       '(Origin -10 -12)\n(Direction 0.8 0.6 -0.6 0.8)\n(UseDirectionCosines "true")\n',
    3: '(FixedImageDimension 3)\n(MovingImageDimension 3)\n(Size 12 10 8)\n(Index 0 0 0)\n(Spacing 1.5 2 2.5)\n'
       '(Origin -10 -12 -8)\n(Direction 0.8 0.6 0 -0.6 0.8 0 0 0 1)\n(UseDirectionCosines "true")\n',
}


def _coefficients(count: int) -> str:
    return " ".join(f"{3 * math.sin(1.7 * k + 0.3):.4f}" for k in range(count))


def _file(dim: int, kind: str, parameters: str, extra: str = "", initial: str = "NoInitialTransform") -> str:
    return (f'// written by hand as elastix writes it\n(Transform "{kind}")\n'
            f"(NumberOfParameters {len(parameters.split())})\n(TransformParameters {parameters})\n"
            f'(InitialTransformParameterFileName "{initial}")\n(HowToCombineTransforms "Compose")\n'
            + _GRID[dim] + extra)


_BSPLINE_2D = ('(GridSize 8 8)\n(GridIndex 1 0)\n(GridSpacing 7 7)\n(GridOrigin -10.5 -38.5)\n'
               '(GridDirection 0.8 0.6 -0.6 0.8)\n(BSplineTransformSplineOrder 3)\n(UseCyclicTransform "false")\n')
_BSPLINE_3D = ('(GridSize 7 7 6)\n(GridIndex 0 0 0)\n(GridSpacing 7 7 8)\n(GridOrigin -4.2 -29.4 -20)\n'
               '(GridDirection 0.8 0.6 0 -0.6 0.8 0 0 0 1)\n(BSplineTransformSplineOrder 3)\n'
               '(UseCyclicTransform "false")\n')

#: name -> (dimension, {file name: text}, the file read, points (fixed, LPS mm))
ELASTIX_FILES = {
    "translation 3D": (3, {"t.txt": _file(3, "TranslationTransform", "4 -3 2.5")}, "t.txt"),
    "Euler 2D": (2, {"t.txt": _file(2, "EulerTransform", "0.5 4 -3", "(CenterOfRotationPoint 2 -1)\n")}, "t.txt"),
    "Euler 3D, Z X Y": (3, {"t.txt": _file(3, "EulerTransform", "0.4 -0.3 0.6 4 -3 2",
                                           '(CenterOfRotationPoint 2 -1 3)\n(ComputeZYX "false")\n')}, "t.txt"),
    "Euler 3D, Z Y X": (3, {"t.txt": _file(3, "EulerTransform", "0.4 -0.3 0.6 4 -3 2",
                                           '(CenterOfRotationPoint 2 -1 3)\n(ComputeZYX "true")\n')}, "t.txt"),
    "similarity 2D": (2, {"t.txt": _file(2, "SimilarityTransform", "1.2 -0.4 3 2",
                                         "(CenterOfRotationPoint 2 -1)\n")}, "t.txt"),
    "similarity 3D": (3, {"t.txt": _file(3, "SimilarityTransform", "0.2 -0.1 0.3 3 -2 1 0.85",
                                         "(CenterOfRotationPoint 2 -1 3)\n")}, "t.txt"),
    "affine 2D": (2, {"t.txt": _file(2, "AffineTransform", "1.1 0.2 -0.15 0.9 3 -2",
                                     "(CenterOfRotationPoint 2 -1)\n")}, "t.txt"),
    "affine 3D": (3, {"t.txt": _file(3, "AffineTransform", "1.1 0.2 -0.1 -0.15 0.9 0.05 0.1 -0.2 1.2 3 -2 1",
                                     "(CenterOfRotationPoint 2 -1 3)\n")}, "t.txt"),
    "AffineDTI 2D": (2, {"t.txt": _file(2, "AffineDTITransform", "0.5 0.15 -0.1 1.2 0.8 3 -2",
                                        "(CenterOfRotationPoint 2 -1)\n")}, "t.txt"),
    "AffineDTI 3D": (3, {"t.txt": _file(3, "AffineDTITransform", "0.3 -0.25 0.4 0.1 -0.15 0.2 1.1 0.9 1.2 3 -2 1",
                                        "(CenterOfRotationPoint 2 -1 3)\n")}, "t.txt"),
    "AffineLog 2D": (2, {"t.txt": _file(2, "AffineLogTransform", "0.1 0.3 -0.2 -0.15 3 -2",
                                        "(CenterOfRotationPoint 2 -1)\n")}, "t.txt"),
    "AffineLog 3D": (3, {"t.txt": _file(3, "AffineLogTransform",
                                        "0.1 0.25 -0.1 -0.3 -0.12 0.05 0.2 -0.15 0.18 3 -2 1",
                                        "(CenterOfRotationPoint 2 -1 3)\n")}, "t.txt"),
    "B-spline 2D": (2, {"t.txt": _file(2, "BSplineTransform", _coefficients(128), _BSPLINE_2D)}, "t.txt"),
    "B-spline 2D, order 1": (2, {"t.txt": _file(2, "BSplineTransform", _coefficients(128),
                                                _BSPLINE_2D.replace("SplineOrder 3", "SplineOrder 1"))}, "t.txt"),
    "B-spline 2D, order 2": (2, {"t.txt": _file(2, "BSplineTransform", _coefficients(128),
                                                _BSPLINE_2D.replace("SplineOrder 3", "SplineOrder 2"))}, "t.txt"),
    "B-spline 3D, order 1": (3, {"t.txt": _file(3, "BSplineTransform", _coefficients(882),
                                                _BSPLINE_3D.replace("SplineOrder 3", "SplineOrder 1"))}, "t.txt"),
    "B-spline 3D, order 2": (3, {"t.txt": _file(3, "RecursiveBSplineTransform", _coefficients(882),
                                                _BSPLINE_3D.replace("SplineOrder 3", "SplineOrder 2"))}, "t.txt"),
    "B-spline 3D": (3, {"t.txt": _file(3, "BSplineTransform", _coefficients(882), _BSPLINE_3D)}, "t.txt"),
    "Euler -> B-spline 3D": (3, {
        "TransformParameters.0.txt": _file(3, "EulerTransform", "0.1 -0.05 0.2 2 -1 1.5",
                                           '(CenterOfRotationPoint 1 1 1)\n(ComputeZYX "false")\n'),
        "TransformParameters.1.txt": _file(3, "BSplineTransform", _coefficients(882), _BSPLINE_3D,
                                           initial="TransformParameters.0.txt")}, "TransformParameters.1.txt"),
}

POINTS = {2: [(0.0, 0.0), (-6.5, 4.25), (7.0, -9.0), (12.0, 10.5)],
          3: [(0.0, 0.0, 0.0), (-6.5, 4.25, 3.0), (7.0, -9.0, -4.5), (10.0, 8.5, 9.0)]}

#: transformix' OutputPoint of each point of POINTS, per file above (six decimals)
TRANSFORMIX_POINTS = {
    "translation 3D": [
        (4.0, -3.0, 2.5), (-2.5, 1.25, 5.5), (11.0, -12.0, -2.0), (14.0, 5.5, 11.5)],
    "Euler 2D": [
        (3.765409, -4.081269), (-3.976436, -3.467809), (14.223317, -8.623533), (9.262432, 10.886455)],
    "Euler 3D, Z X Y": [
        (3.87455, -2.706974, 2.205265), (-3.984717, -3.786798, 4.730813), (14.68164, -4.304941, -3.35381),
        (7.683905, 3.933842, 16.15655)],
    "Euler 3D, Z Y X": [
        (3.822306, -2.958366, 2.141216), (-3.931038, -4.935275, 4.441212),
        (14.898529, -3.30133, -3.098027), (6.436199, 4.069282, 16.177943)],
    "similarity 2D": [
        (3.256756, 3.039877), (-1.941487, 10.774751), (6.78795, -10.178696), (21.426705, 9.037622)],
    "similarity 3D": [
        (3.3, -2.15, 1.45), (-3.441511, -3.428864, 3.180553), (12.873023, -3.089955, -2.553667),
        (5.290023, 4.289318, 13.178091)],
    "affine 2D": [
        (3.0, -1.8), (-3.3, 3.0), (8.9, -10.95), (18.3, 5.85)],
    "affine 3D": [
        (3.3, -1.95, 0.0), (-3.3, 3.0, 2.1), (9.65, -11.325, -2.9), (15.1, 4.65, 10.1)],
    "AffineDTI 2D": [
        (3.529307, -1.011483), (-0.761594, 6.095731), (5.988055, -11.516234), (20.419494, -2.307757)],
    "AffineDTI 3D": [
        (2.349422, -1.815103, 0.647162), (-0.714084, 6.554416, 3.592649),
        (3.365828, -14.780038, -3.197941), (18.580851, 1.449319, 8.61958)],
    "AffineLog 2D": [
        (3.140905, -1.780019), (-2.610718, 3.017656), (8.050351, -10.630001), (19.087631, 4.640239)],
    "AffineLog 3D": [
        (3.460885, -1.777843, -0.170042), (-2.649499, 3.890179, 1.211979), (9.06396, -11.714493, -2.598961),
        (15.192551, 3.152035, 11.887419)],
    "B-spline 2D, order 1": [
        (-0.73775, -1.1257), (-8.153975, 3.487262), (8.716572, -10.376652), (14.045836, 9.907446)],
    "B-spline 2D, order 2": [
        (-0.73775, -1.1257), (-7.888055, 3.682232), (8.600225, -10.266024), (13.798565, 10.046497)],
    "B-spline 3D, order 1": [
        (1.9012, -2.0552, 2.04125), (-5.554404, 2.91392, 4.617422), (9.545795, -11.561802, -2.131513),
        (9.883784, 8.100834, 9.881997)],
    "B-spline 3D, order 2": [
        (1.29168, -1.396302, 1.386819), (-5.814139, 3.248476, 4.235357), (8.476087, -10.489157, -3.119452),
        (9.843205, 8.253714, 9.62929)],
    "B-spline 2D": [
        (-0.641153, -0.978308), (-7.680494, 3.806585), (8.392497, -10.074527), (13.496949, 10.192873)],
    "B-spline 3D": [
        (1.005102, -1.086512, 1.079131), (-6.025307, 3.519105, 3.927367),
        (8.109527, -10.121748, -3.457689), (9.813874, 8.374527, 9.426856)],
    "Euler -> B-spline 3D": [
        (3.268619, -1.933799, 2.009256), (-4.202345, 0.498976, 5.516897),
        (11.538309, -8.230114, -3.743355), (10.501435, 7.515837, 12.549145)],
}


def _write(folder: str, files: dict) -> None:
    for name, text in files.items():
        with open(os.path.join(folder, name), "w") as fh:
            fh.write(text)


def _run_cli(argv: list) -> tuple:
    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue() + err.getvalue()


class ElastixTransformsMapAsTransformix(unittest.TestCase):
    def setUp(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="mmf-elastix-")
        self.addCleanup(shutil.rmtree, self.folder, ignore_errors=True)

    def test_each_kind_maps_points_as_transformix(self) -> None:
        """Each file had been refused ("is an elastix transform parameter file ... not an ITK transform file"); read,
        it maps each point where transformix does (fixed -> moving), within transformix' six printed decimals. The
        fixed grids, GridDirection and CenterOfRotationPoint are off the axes and origin so that a transposed
        direction, a centre left out or a wrong angle order moves the points by millimetres."""
        kinds = {"translation 3D": "TranslationTransform", "Euler 2D": "Euler2DTransform",
                 "Euler 3D, Z X Y": "Euler3DTransform", "Euler 3D, Z Y X": "Euler3DTransform",
                 "similarity 2D": "Similarity2DTransform", "similarity 3D": "Similarity3DTransform",
                 "affine 2D": "AffineTransform", "affine 3D": "AffineTransform", "AffineDTI 2D": "AffineTransform",
                 "AffineDTI 3D": "AffineTransform", "AffineLog 2D": "AffineTransform",
                 "AffineLog 3D": "AffineTransform", "B-spline 2D": "BSplineTransform",
                 "B-spline 2D, order 1": "BSplineTransform", "B-spline 2D, order 2": "BSplineTransform",
                 "B-spline 3D, order 1": "BSplineTransform", "B-spline 3D, order 2": "BSplineTransform",
                 "B-spline 3D": "BSplineTransform", "Euler -> B-spline 3D": "CompositeTransform"}
        for name, (dim, files, read) in ELASTIX_FILES.items():
            with self.subTest(name):
                folder = os.path.join(self.folder, name.replace(" ", "_").replace(">", "").replace(",", ""))
                os.makedirs(folder)
                _write(folder, files)
                tx = io.read_transform(os.path.join(folder, read))
                self.assertEqual(tx.GetName(), kinds[name])
                self.assertEqual(tx.GetDimension(), dim)
                for point, expected in zip(POINTS[dim], TRANSFORMIX_POINTS[name]):
                    np.testing.assert_allclose(tx.TransformPoint(point), expected, atol=2e-6, err_msg=str(point))
                    # the points move: a file read as the identity would fail above
                    self.assertGreater(max(abs(a - b) for a, b in zip(point, expected)), 0.1 if "B-spline" not in
                                       name else 0.0)

    def test_a_chain_resolves_its_initial_file_as_elastix_does(self) -> None:
        """InitialTransformParameterFileName: a relative name is looked for from the working folder, then beside
        the file that names it (elastix 5); an absolute path of a folder since moved is refused naming the file of
        that name beside it; a loop is refused."""
        dim, files, read = ELASTIX_FILES["Euler -> B-spline 3D"]
        expected = TRANSFORMIX_POINTS["Euler -> B-spline 3D"]
        results = os.path.join(self.folder, "results")
        os.makedirs(results)
        _write(results, files)
        elsewhere = os.path.join(self.folder, "elsewhere")
        os.makedirs(elsewhere)
        cwd = os.getcwd()
        self.addCleanup(os.chdir, cwd)
        os.chdir(elsewhere)  # the name is found beside the file, not from the working folder
        tx = io.read_transform(os.path.join(results, read))
        np.testing.assert_allclose(tx.TransformPoint(POINTS[3][1]), expected[1], atol=2e-6)
        # elastix takes a file of that name from the working folder first: so does this (here a translation)
        _write(elsewhere, {"TransformParameters.0.txt": ELASTIX_FILES["translation 3D"][1]["t.txt"]})
        tx = io.read_transform(os.path.join(results, read))
        bspline_only = io.read_transform(os.path.join(results, read)).GetNthTransform(0)
        np.testing.assert_allclose(tx.TransformPoint(POINTS[3][0]),
                                   bspline_only.TransformPoint((4.0, -3.0, 2.5)), atol=1e-9)
        os.chdir(cwd)
        # an absolute path, as elastix writes it, of a folder that has moved since
        moved, gone = os.path.join(self.folder, "moved"), os.path.join(self.folder, "gone", "TransformParameters.0.txt")
        os.makedirs(moved)
        _write(moved, {"TransformParameters.0.txt": files["TransformParameters.0.txt"],
                       "TransformParameters.1.txt": files["TransformParameters.1.txt"].replace(
                           '"TransformParameters.0.txt"', f'"{gone}"')})
        with self.assertRaises(InputError) as cm:
            io.read_transform(os.path.join(moved, "TransformParameters.1.txt"))
        self.assertIn("InitialTransformParameterFileName", cm.exception.problem)
        self.assertIn(gone, cm.exception.problem)
        self.assertIn(f"'{os.path.join(moved, 'TransformParameters.0.txt')}'", cm.exception.problem)
        self.assertIn("moved output folder", cm.exception.fix)
        # a loop: the first file names the second as its initial transform
        _write(moved, {"TransformParameters.0.txt": files["TransformParameters.0.txt"].replace(
            '"NoInitialTransform"', '"TransformParameters.1.txt"'),
            "TransformParameters.1.txt": files["TransformParameters.1.txt"]})
        with self.assertRaises(InputError) as cm:
            io.read_transform(os.path.join(moved, "TransformParameters.1.txt"))
        self.assertIn("loops", cm.exception.problem)

    def test_resample_applies_an_elastix_file_and_inverts_a_linear_one(self) -> None:
        """mmfusion resample --transform TransformParameters.1.txt resamples as the transform transformix uses;
        --invert inverts a linear elastix file, and is refused, as for any B-spline, for a chain holding one."""
        dim, files, read = ELASTIX_FILES["Euler -> B-spline 3D"]
        _write(self.folder, files)
        moving = sitk.GaussianSource(sitk.sitkFloat32, [24, 20, 16], [5.0, 4.0, 3.0], [5.0, -2.0, 1.0], 100.0,
                                     [-14.0, -16.0, -10.0], [1.5, 1.5, 1.5])
        moving_path, out = os.path.join(self.folder, "moving.nii.gz"), os.path.join(self.folder, "r.nii.gz")
        sitk.WriteImage(moving, moving_path)
        rc, text = _run_cli(["resample", moving_path, "--reference", moving_path, "--transform",
                             os.path.join(self.folder, read), "-o", out])
        self.assertEqual(rc, 0, text)
        euler = sitk.Euler3DTransform()
        euler.SetCenter((1, 1, 1))
        euler.SetParameters((0.1, -0.05, 0.2, 2, -1, 1.5))
        chain = io.read_transform(os.path.join(self.folder, read))
        expected = sitk.Resample(moving, moving, sitk.CompositeTransform([chain.GetNthTransform(0), euler]),
                                 sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        np.testing.assert_allclose(sitk.GetArrayFromImage(sitk.ReadImage(out)), sitk.GetArrayFromImage(expected),
                                   atol=1e-4)
        self.assertGreater(np.abs(sitk.GetArrayFromImage(expected) - sitk.GetArrayFromImage(moving)).max(), 10)
        os.remove(out)
        rc, text = _run_cli(["resample", moving_path, "--reference", moving_path, "--transform",
                             os.path.join(self.folder, read), "--invert", "-o", out])
        self.assertEqual(rc, 2)
        self.assertIn("cannot be inverted", text)
        self.assertFalse(os.path.exists(out))
        rc, text = _run_cli(["resample", moving_path, "--reference", moving_path, "--transform",
                             os.path.join(self.folder, "TransformParameters.0.txt"), "--invert", "-o", out])
        self.assertEqual(rc, 0, text)
        expected = sitk.Resample(moving, moving, euler.GetInverse(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        np.testing.assert_allclose(sitk.GetArrayFromImage(sitk.ReadImage(out)), sitk.GetArrayFromImage(expected),
                                   atol=1e-4)

    def test_the_itk_file_elastix_wrote_beside_it_is_read(self) -> None:
        """(Transform "File"): with ITKTransformOutputFileNameExtension, elastix writes the transform to an ITK file
        and names it (TransformFileName) in TransformParameters.0.txt, with no TransformParameters."""
        rigid = sitk.Euler2DTransform((2, -1), 0.5, (4, -3))
        sitk.WriteTransform(rigid, os.path.join(self.folder, "TransformParameters.0.tfm"))
        _write(self.folder, {"TransformParameters.0.txt": (
            '(Transform "File")\n(TransformFileName "TransformParameters.0.tfm")\n(NumberOfParameters 3)\n'
            '(InitialTransformParameterFileName "NoInitialTransform")\n' + _GRID[2])})
        tx = io.read_transform(os.path.join(self.folder, "TransformParameters.0.txt"))
        np.testing.assert_allclose(tx.TransformPoint(POINTS[2][1]), TRANSFORMIX_POINTS["Euler 2D"][1], atol=2e-6)
        # naming itself, or another elastix file, as its ITK file is refused (reading it would loop)
        _write(self.folder, {"a.txt": '(Transform "File")\n(TransformFileName "b.txt")\n' + _GRID[2],
                             "b.txt": '(Transform "File")\n(TransformFileName "a.txt")\n' + _GRID[2]})
        with self.assertRaises(InputError) as cm:
            io.read_transform(os.path.join(self.folder, "a.txt"))
        self.assertIn("names another elastix parameter file", cm.exception.problem)


class ElastixTransformsRefused(unittest.TestCase):
    """What is not converted is refused, naming what the file holds, with the way to the ITK file elastix writes
    (ITKTransformOutputFileNameExtension) where elastix can write one: never read as something else."""

    def setUp(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="mmf-elastix-")
        self.addCleanup(shutil.rmtree, self.folder, ignore_errors=True)

    def _refused(self, text: str, files: dict | None = None) -> InputError:
        _write(self.folder, dict(files or {}, **{"t.txt": text}))
        with self.assertRaises(InputError) as cm:
            io.read_transform(os.path.join(self.folder, "t.txt"))
        self.assertIn(os.path.join(self.folder, "t.txt"), cm.exception.problem)
        return cm.exception

    def test_refusals_name_what_the_file_holds(self) -> None:
        euler = ELASTIX_FILES["Euler 2D"][1]["t.txt"]
        bspline = ELASTIX_FILES["B-spline 2D"][1]["t.txt"]
        tfm = '(ITKTransformOutputFileNameExtension "tfm")'
        cases = {
            "SplineKernelTransform": (euler.replace('"EulerTransform"', '"SplineKernelTransform"'),
                                      "of a SplineKernelTransform, which is not converted here", tfm),
            "Add": (euler.replace('"NoInitialTransform"', '"t0.txt"').replace('"Compose"', '"Add"'),
                    'HowToCombineTransforms "Add"', '(HowToCombineTransforms "Compose")'),
            "spline order 4": (bspline.replace("SplineOrder 3", "SplineOrder 4"), "spline order 4", tfm),
            "AffineLog without a centre": (euler.replace('"EulerTransform"', '"AffineLogTransform"').replace(
                "(TransformParameters 0.5 4 -3)", "(TransformParameters 0.1 0.3 -0.2 -0.15 3 -2)").replace(
                "(NumberOfParameters 3)", "(NumberOfParameters 6)").replace("(CenterOfRotationPoint 2 -1)\n", ""),
                "no (CenterOfRotationPoint ...) line", "as elastix wrote it"),
            "cyclic": (bspline.replace('(UseCyclicTransform "false")', '(UseCyclicTransform "true")'),
                       "cyclic", tfm),
            # transformix maps it otherwise than the same file as a BSplineTransform ((0, 0) -> (-1.257735,
            # 1.248370), where POINTS' B-spline 2D gives (-0.641153, -0.978308), which had been the answer here)
            "2D recursive B-spline": (bspline.replace('"BSplineTransform"', '"RecursiveBSplineTransform"'),
                                      "(RecursiveBSplineTransform, 2D)", '(Transform "BSplineTransform")'),
            "binary": (euler + '(UseBinaryFormatForTransformationParameters "true")\n', "binary file", tfm),
            "direction cosines off": (euler.replace('(UseDirectionCosines "true")', '(UseDirectionCosines "false")'),
                                      'UseDirectionCosines "false"', '(UseDirectionCosines "true")'),
            "4D": (euler.replace("Dimension 2", "Dimension 4"), "only 2D and 3D", tfm),
            "old centre": (euler.replace("CenterOfRotationPoint", "CenterOfRotation"), "CenterOfRotation", tfm),
            "too few": (euler.replace("(TransformParameters 0.5 4 -3)", "(TransformParameters 0.5 4)"),
                        "holds 2 value(s) (0.5 4), where 3 numbers are expected", "as elastix wrote it"),
            "not a line": (euler + "TransformParameters 1 2 3\n", "is not a (Name value ...) line",
                           "as elastix wrote it"),
        }
        for name, (text, problem, fix) in cases.items():
            with self.subTest(name):
                exc = self._refused(text, {"t0.txt": euler})
                self.assertIn(problem, exc.problem)
                self.assertIn(fix, exc.fix)
                self.assertNotIn("Traceback", str(exc))

    def test_the_command_line_refuses_an_unconverted_kind_with_the_way_to_the_itk_file(self) -> None:
        """As before for any elastix file (commit 0e216b8), now for the kinds not converted: exit 2, no output."""
        text = ELASTIX_FILES["Euler 2D"][1]["t.txt"].replace('"EulerTransform"', '"WeightedCombinationTransform"')
        _write(self.folder, {"TransformParameters.0.txt": text})
        image = os.path.join(self.folder, "i.nii.gz")
        sitk.WriteImage(sitk.Image([16, 16], sitk.sitkFloat32) + 1.0, image)
        rc, out = _run_cli(["resample", image, "--reference", image, "--transform",
                            os.path.join(self.folder, "TransformParameters.0.txt"), "-o",
                            os.path.join(self.folder, "r.nii.gz")])
        self.assertEqual(rc, 2)
        self.assertIn("WeightedCombinationTransform, which is not converted here", out)
        self.assertIn('(ITKTransformOutputFileNameExtension "tfm")', out)
        self.assertFalse(os.path.exists(os.path.join(self.folder, "r.nii.gz")))


if __name__ == "__main__":
    unittest.main()
