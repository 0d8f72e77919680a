"""Numbers users compare with Slicer (RAS), ITK-SNAP, ANTs and elastix (LPS): right, and labelled.

Each case is checked against an independent source: a NRRD header written by hand (its "space"
and "space directions" say where each axis points), Slicer's own libraries (slicer-core: a real
scene, Slicer's ITK transform reader) and, where installed, nibabel.
"""

from __future__ import annotations

import contextlib
import io as _io
import json
import math
import os
import tempfile
import unittest

import numpy as np
import SimpleITK as sitk

from MultimodalFusionLib import cli, io, mrml

try:
    import slicer  # noqa: F401  (the slicer-core wheel, or Slicer itself)

    HAVE_MRML = hasattr(slicer, "vtkMRMLScene")
except ImportError:  # pragma: no cover - slicer-core is a test dependency
    HAVE_MRML = False


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = _io.StringIO(), _io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def write_nrrd(path: str, space: str, directions: list[tuple[float, float, float]],
               origin: tuple[float, float, float], size: tuple[int, int, int] = (3, 4, 5)) -> str:
    """A raw NRRD written by hand, so the geometry does not come from the code under test."""
    header = ["NRRD0004", "type: float", "dimension: 3", f"space: {space}",
              "sizes: " + " ".join(str(s) for s in size),
              "space directions: " + " ".join("(" + ",".join(repr(float(v)) for v in d) + ")" for d in directions),
              "kinds: domain domain domain", "endian: little", "encoding: raw",
              "space origin: (" + ",".join(repr(float(v)) for v in origin) + ")"]
    data = np.arange(int(np.prod(size)), dtype="<f4").tobytes()
    with open(path, "wb") as fh:
        fh.write(("\n".join(header) + "\n\n").encode("ascii") + data)
    return path


C20, S20 = math.cos(math.radians(20)), math.sin(math.radians(20))

#: name -> (NRRD space, space directions, origin, orientation code (axes run toward), ITK-SNAP RAI code,
#: obliquity in degrees). The codes follow from the header alone: in RAS space +x is R, in LPS +x is L.
CASES = {
    "ras": ("right-anterior-superior", [(1, 0, 0), (0, 1, 0), (0, 0, 1)], (10, -20, 30), "RAS", "LPI", 0.0),
    "lps": ("left-posterior-superior", [(1, 0, 0), (0, 1, 0), (0, 0, 1)], (10, -20, 30), "LPS", "RAI", 0.0),
    "rpi": ("right-anterior-superior", [(1, 0, 0), (0, -1, 0), (0, 0, -1)], (0, 0, 0), "RPI", "LAS", 0.0),
    "sagittal": ("right-anterior-superior", [(0, 0, 2), (-1, 0, 0), (0, -1, 0)], (10, -20, 30), "SLP", "IRA", 0.0),
    "oblique": ("right-anterior-superior", [(C20, S20, 0), (-S20, C20, 0), (0, 0, 3)], (1, 2, 3), "RAS", "LPI",
                20.0),
    "oblique_flipped": ("left-posterior-superior", [(C20, -S20, 0), (-S20, -C20, 0), (0, 0, 1)], (1, 2, 3), "LAS",
                        "RPI", 20.0),
}


def _ras(space: str, vector: tuple[float, float, float]) -> np.ndarray:
    v = np.array(vector, dtype=float)
    return v if space.startswith("right") else v * np.array([-1.0, -1.0, 1.0])


class InfoOrientationTest(unittest.TestCase):
    """`mmfusion info` and io.image_info: the orientation code as nibabel, ITK and ITK-SNAP name it,
    and origin/direction in LPS (ITK) and RAS (Slicer)."""

    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    def _files(self, name: str) -> list[str]:
        space, dirs, origin = CASES[name][:3]
        nrrd = write_nrrd(os.path.join(self.tmp.name, f"{name}.nrrd"), space, dirs, origin)
        image = io.read_image(nrrd)
        return [nrrd, io.write_image(image, os.path.join(self.tmp.name, f"{name}.nii.gz")),
                io.write_image(image, os.path.join(self.tmp.name, f"{name}.mha"))]

    def test_codes_and_geometry_follow_the_header(self) -> None:
        for name, (space, dirs, origin, code, itksnap, oblique) in CASES.items():
            spacing = np.linalg.norm(np.array(dirs, dtype=float), axis=1)
            direction_ras = np.stack([_ras(space, d) for d in dirs], axis=1) / spacing
            for path in self._files(name):
                with self.subTest(name=name, file=os.path.basename(path)):
                    info = io.image_info(io.read_image(path))
                    self.assertEqual(info["orientation"], code)
                    self.assertEqual(info["orientation_itksnap"], itksnap)
                    self.assertAlmostEqual(info["oblique_degrees"], oblique, places=3)
                    np.testing.assert_allclose(info["origin_ras"], _ras(space, origin), atol=1e-5)
                    np.testing.assert_allclose(info["origin"], _ras(space, origin) * [-1, -1, 1], atol=1e-5)
                    np.testing.assert_allclose(np.reshape(info["direction_ras"], (3, 3)), direction_ras, atol=1e-6)
                    np.testing.assert_allclose(np.reshape(info["direction"], (3, 3)),
                                               np.diag([-1.0, -1.0, 1.0]) @ direction_ras, atol=1e-6)

    def test_codes_match_nibabel_for_the_nifti_files(self) -> None:
        try:
            import nibabel
            from nibabel.orientations import aff2axcodes
        except ImportError:  # pragma: no cover - nibabel is optional
            self.skipTest("nibabel is not installed")
        for name in CASES:
            nifti = self._files(name)[1]
            with self.subTest(name=name):
                self.assertEqual("".join(aff2axcodes(nibabel.load(nifti).affine)),
                                 io.image_info(io.read_image(nifti))["orientation"])

    def test_printout_labels_each_convention(self) -> None:
        nrrd = self._files("sagittal")[0]
        rc, out, err = run_cli("info", nrrd)
        self.assertEqual(rc, 0, err)
        self.assertIn("origin     -10, 20, 30 mm (LPS: ITK, ANTs, elastix) = 10, -20, 30 mm (RAS: Slicer)", out)
        self.assertIn("orientation SLP (axes run toward", out)
        self.assertIn("ITK-SNAP RAI code IRA", out)
        self.assertIn("(RAS: Slicer's IJK to RAS direction matrix)", out)
        self.assertNotIn("-0.0000", out)
        rc, out, err = run_cli("info", nrrd, "--json")
        self.assertEqual(json.loads(out)[nrrd]["orientation"], "SLP")

    def test_a_sheared_or_unnormalised_direction_is_named(self) -> None:
        """A direction whose axes are not orthogonal (column J = (0.5, 1, 0), as an edited MetaImage header holds it)
        had been told only 'oblique by 26.6 deg: nearest axes', and ITK's 2.236 mm step along J, the column's length
        times the spacing, not at all."""
        image = sitk.Image([6, 5, 4], sitk.sitkFloat32)
        image.SetSpacing((2.0, 2.0, 2.0))
        image.SetDirection((1.0, 0.5, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
        path = os.path.join(self.tmp.name, "sheared.mha")
        sitk.WriteImage(image, path)
        info = io.image_info(io.read_image(path))
        self.assertAlmostEqual(info["shear_degrees"], math.degrees(math.atan(0.5)), places=6)  # 26.57: 63.4 apart
        self.assertEqual(info["sheared_axes"], [0, 1])
        np.testing.assert_allclose(info["direction_lengths"], [1.0, math.sqrt(1.25), 1.0])
        rc, out, err = run_cli("info", path)
        self.assertEqual(rc, 0, err)
        self.assertIn("WARNING    axes not orthogonal: I and J are 26.6 deg off a right angle (a sheared grid", out)
        self.assertIn("direction columns of lengths 1, 1.118, 1, not 1: ITK steps 2, 2.23607, 2 mm", out)
        plain = self._files("sagittal")[0]  # an oblique-free, orthonormal grid says neither
        rc, out, err = run_cli("info", plain)
        self.assertNotIn("WARNING", out)
        self.assertEqual(io.image_info(io.read_image(plain))["shear_degrees"], 0.0)

    def test_a_2d_slice_is_coded_as_slicer_shows_it(self) -> None:
        info = io.image_info(sitk.Image([4, 5], sitk.sitkUInt8))  # a PNG: x, y as Slicer's L, P
        self.assertEqual((info["orientation"], info["orientation_itksnap"]), ("LP", "RA"))
        self.assertEqual(info["direction_ras"], [-1.0, 0.0, 0.0, -1.0])

    @unittest.skipUnless(HAVE_MRML, "needs Slicer's MRML libraries (pip install slicer-core)")
    def test_ras_numbers_are_what_a_slicer_volume_node_holds(self) -> None:
        import vtk

        scene = mrml.new_scene(colors=False, slice_views=False)
        for name in CASES:
            image = io.read_image(self._files(name)[0])
            node = mrml.volume_node_from_image(image, scene, name=name)
            info = io.image_info(image)
            matrix = vtk.vtkMatrix4x4()
            node.GetIJKToRASDirectionMatrix(matrix)
            with self.subTest(name=name):
                np.testing.assert_allclose(node.GetOrigin(), info["origin_ras"], atol=1e-9)
                np.testing.assert_allclose([[matrix.GetElement(r, c) for c in range(3)] for r in range(3)],
                                           np.reshape(info["direction_ras"], (3, 3)), atol=1e-12)


class TransformNumbersTest(unittest.TestCase):
    """metrics.json's and the console's transform numbers: ITK's (LPS, fixed -> moving) and what
    Slicer's Transforms module shows for the written transform.tfm (RAS, "to parent")."""

    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    def test_summary_of_a_known_rigid_transform(self) -> None:
        from MultimodalFusionLib.registration.result import transform_summary

        tx = sitk.Euler3DTransform((10.0, -20.0, 30.0), 0.1, -0.05, 0.2, (4.0, -6.0, 8.0))
        summary = transform_summary(tx)
        point = np.array([3.0, 7.0, -11.0])
        moved = np.reshape(summary["itk_matrix_lps"], (3, 3)) @ point + summary["itk_offset_lps"]
        np.testing.assert_allclose(moved, tx.TransformPoint(point.tolist()), atol=1e-12)
        self.assertEqual(summary["itk_parameters"], list(tx.GetParameters()))
        self.assertEqual(summary["itk_fixed_parameters"], list(tx.GetFixedParameters()))
        angle = math.degrees(math.acos((np.trace(np.reshape(tx.GetMatrix(), (3, 3))) - 1) / 2))
        self.assertAlmostEqual(summary["rotation_deg"], angle, places=9)
        # Slicer's "to parent" moves the moving image's RAS points back onto the fixed image's
        flip = np.array([-1.0, -1.0, 1.0])
        slicer = np.array(summary["slicer_matrix_to_parent_ras"])
        np.testing.assert_allclose(slicer[:3, :3] @ (moved * flip) + slicer[:3, 3], point * flip, atol=1e-12)
        self.assertEqual(summary["slicer_translation_ras"], list(slicer[:3, 3]))

    def test_translation_about_the_centre_and_euler_angles_are_what_itk_holds(self) -> None:
        from MultimodalFusionLib.registration.accuracy import euler_angles_deg, rigid_transform
        from MultimodalFusionLib.registration.result import transform_summary

        # the README's reference pair: 8 degrees about left-right and (3, 0, 4) mm about the fixed centre,
        # a centre 29 mm from the origin, so the offset (where the origin goes) is another number
        center = (1.0, 18.5, 22.5)
        summary = transform_summary(rigid_transform(center, (8.0, 0.0, 0.0), (3.0, 0.0, 4.0)))
        self.assertEqual(summary["itk_center_lps"], list(center))
        np.testing.assert_allclose(summary["itk_translation_lps"], (3.0, 0.0, 4.0), atol=1e-12)
        np.testing.assert_allclose(summary["euler_angles_deg"], (8.0, 0.0, 0.0), atol=1e-12)
        self.assertEqual(summary["euler_order"], "ZXY")
        self.assertGreater(np.abs(np.subtract(summary["itk_offset_lps"], (3.0, 0.0, 4.0))).max(), 3.0)
        rng = np.random.default_rng(0)
        for zyx in (False, True):
            # ITK's angles are unique with the order's middle one (x, or y for ZYX) within +-90 degrees
            limits = (3.0, 1.5, 3.0) if zyx else (1.5, 3.0, 3.0)
            for angles in [rng.uniform(-1.0, 1.0, 3) * limits for _ in range(20)] + [(0.3, math.pi / 2, 0.2),
                                                                                    (math.pi / 2, 0.3, 0.0),
                                                                                    np.radians((100, 20, -30))]:
                tx = sitk.Euler3DTransform((10.0, -20.0, 30.0), *angles, (4.0, -6.0, 8.0))
                tx.SetComputeZYX(zyx)
                summary = transform_summary(tx)
                self.assertEqual(summary["euler_order"], "ZYX" if zyx else "ZXY")
                self.assertEqual(summary["itk_center_lps"], [10.0, -20.0, 30.0])
                np.testing.assert_allclose(summary["itk_translation_lps"], tx.GetTranslation(), atol=1e-12)
                found = summary["euler_angles_deg"]
                rebuilt = sitk.Euler3DTransform((0, 0, 0), *np.radians(found))
                rebuilt.SetComputeZYX(zyx)
                np.testing.assert_allclose(rebuilt.GetMatrix(), tx.GetMatrix(), atol=1e-12)
                # the file's own angles, also at a lock and outside the ranges a matrix gives back: an
                # Euler3D of (100, 20, -30) degrees read (80, -160, 150) from its matrix, the same rotation
                np.testing.assert_allclose(found, np.degrees(tx.GetParameters()[:3]), atol=1e-12)
        # an affine transform holding a rotation (the torch backend's kind): the angles of its matrix
        affine = sitk.AffineTransform(3)
        affine.SetCenter((5.0, 6.0, 7.0))
        affine.SetMatrix(sitk.Euler3DTransform((0, 0, 0), 0.1, -0.2, 0.3).GetMatrix())
        affine.SetTranslation((1.0, 2.0, 3.0))
        summary = transform_summary(affine)
        np.testing.assert_allclose(summary["euler_angles_deg"], np.degrees((0.1, -0.2, 0.3)), atol=1e-9)
        np.testing.assert_allclose(summary["itk_translation_lps"], (1.0, 2.0, 3.0), atol=1e-12)
        np.testing.assert_allclose(euler_angles_deg(np.eye(3)), (0.0, 0.0, 0.0))
        # 2D: the Euler2D file's translation, about its centre; a composite has no centre
        summary = transform_summary(sitk.Euler2DTransform((110.0, 128.0), math.radians(10), (13.0, 17.0)))
        np.testing.assert_allclose(summary["itk_translation_lps"], (13.0, 17.0), atol=1e-12)
        self.assertEqual(summary["itk_center_lps"], [110.0, 128.0])
        self.assertNotIn("euler_angles_deg", summary)
        # held as a plain sitk.Transform (as a file is read): its own type's name and numbers
        from MultimodalFusionLib.registration.result import RegistrationResult
        plain = sitk.Transform(sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, 0.2, 0.3))
        record = RegistrationResult(plain, [], 0.0, 0.0).to_dict()
        self.assertEqual(record["transform_type"], "Euler3DTransform")
        np.testing.assert_allclose(record["transform"]["euler_angles_deg"], np.degrees((0.1, 0.2, 0.3)), atol=1e-12)
        composite = sitk.CompositeTransform([sitk.TranslationTransform(3, (1.0, 2.0, 3.0)),
                                             sitk.Euler3DTransform((9.0, 9.0, 9.0), 0.2, 0.0, 0.0)])
        summary = transform_summary(composite)
        self.assertIsNone(summary["itk_center_lps"])
        self.assertEqual(summary["itk_translation_lps"], summary["itk_offset_lps"])
        # the same numbers for a transform held as a plain sitk.Transform: a ZYX Euler3D's order and angles
        # (the file's), and a composite's absent parameters, had been missed
        zyx = sitk.Euler3DTransform((10.0, -20.0, 30.0), 0.1, 0.2, 0.3, (4.0, -6.0, 8.0))
        zyx.SetComputeZYX(True)
        for tx in (zyx, composite):
            self.assertEqual(transform_summary(sitk.Transform(tx)), transform_summary(tx))

    def test_2d_angle_is_signed_and_affine_has_none(self) -> None:
        from MultimodalFusionLib.registration.result import transform_summary

        self.assertAlmostEqual(transform_summary(sitk.Euler2DTransform((5, 5), math.radians(-10)))["rotation_deg"],
                               -10.0)
        affine = sitk.AffineTransform(3)
        affine.Scale(1.1)
        summary = transform_summary(affine)
        self.assertIsNone(summary["rotation_deg"])
        self.assertIsNone(transform_summary(sitk.BSplineTransform(3)))

    @unittest.skipUnless(HAVE_MRML, "needs Slicer's MRML libraries (pip install slicer-core)")
    def test_register_prints_what_slicer_shows_for_its_transform_file(self) -> None:
        import slicer
        import vtk

        from MultimodalFusionLib import scenarios

        fixed, moving, _truth = scenarios.phantom_pair()  # oblique grids, a known rigid misalignment
        paths = [io.write_image(img, os.path.join(self.tmp.name, f"{n}.nii.gz"))
                 for n, img in (("fixed", fixed), ("moving", moving))]
        out_dir = os.path.join(self.tmp.name, "reg")
        rc, out, err = run_cli("register", *paths, "-o", out_dir, "--seed", "0")
        self.assertEqual(rc, 0, err)
        with open(os.path.join(out_dir, "metrics.json")) as fh:
            summary = json.load(fh)["transform"]
        self.assertIn("maps fixed-image points to moving-image points", summary["convention"])

        scene = slicer.vtkMRMLScene()
        node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        storage = slicer.vtkMRMLTransformStorageNode()  # Slicer's own reader, as File > Add Data uses
        storage.SetScene(scene)
        storage.SetFileName(os.path.join(out_dir, "transform.tfm"))
        self.assertTrue(storage.ReadData(node))
        matrix = vtk.vtkMatrix4x4()
        node.GetMatrixTransformToParent(matrix)
        shown = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
        np.testing.assert_allclose(summary["slicer_matrix_to_parent_ras"], shown, atol=1e-9)
        lr, pa, is_ = shown[:3, 3]
        self.assertIn(f"translation LR {lr:.3f}, PA {pa:.3f}, IS {is_:.3f} mm", out)
        self.assertIn("in Slicer (Transforms module, RAS, moves the moving volume onto the fixed one)", out)
        self.assertIn("the file maps fixed -> moving points in LPS", out)
        tx = io.read_transform(os.path.join(out_dir, "transform.tfm"))
        self.assertIn(f"offset ({', '.join(f'{v:.3f}' for v in tx.TransformPoint((0.0, 0.0, 0.0)))}) mm "
                      "(where the origin goes)", out)
        # the numbers the file holds: its translation about its centre, its angles in degrees
        self.assertIn(f"translation ({', '.join(f'{v:.3f}' for v in tx.GetTranslation())}) mm about the centre "
                      f"({', '.join(f'{v:.3f}' for v in tx.GetCenter())}) mm", out)
        self.assertIn(f"Euler angles about x, y, z ({', '.join(f'{math.degrees(v):.3f}' for v in tx.GetParameters()[:3])})"
                      " deg (ITK's Euler3D: matrix Rz Rx Ry)", out)

    def test_report_shows_both_conventions(self) -> None:
        from MultimodalFusionLib import fusion, report
        from MultimodalFusionLib.registration.result import RegistrationResult

        tx = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.0, 0.0, 0.0, (4.0, -6.0, 8.0))  # a pure shift, LPS
        turned = sitk.Euler3DTransform((0.0, 40.0, 0.0), math.radians(8), 0.0, 0.0, (3.0, 0.0, 4.0))
        vol = sitk.GetImageFromArray(np.random.default_rng(0).normal(100, 10, (8, 9, 10)).astype(np.float32))
        fused = fusion.fuse(vol, vol, "average")
        result = RegistrationResult(transform=tx, stages=[], metric_before=0.0, metric_after=-1.0)
        paths = report.write_report(self.tmp.name, inputs={"A": vol, "B": vol}, fusions=[fused],
                                    metrics={}, registration=result)
        with open(paths["html"], encoding="utf-8") as fh:
            page = fh.read()
        self.assertIn("ITK, LPS, maps fixed → moving points, about the centre (0.000, 0.000, 0.000) mm</th>"
                      "<td>(4.000, -6.000, 8.000) mm", page)
        # Slicer's to-parent is the inverse in RAS: -(4, -6, 8) with x and y negated
        self.assertIn("(LR, PA, IS), moves moving → fixed</th><td>(4.000, -6.000, -8.000) mm", page)
        # a transform with a centre: the file's translation (about the centre) and the offset, each named
        result = RegistrationResult(transform=turned, stages=[], metric_before=0.0, metric_after=-1.0)
        paths = report.write_report(self.tmp.name, inputs={"A": vol, "B": vol}, fusions=[fused],
                                    metrics={}, registration=result)
        with open(paths["html"], encoding="utf-8") as fh:
            page = fh.read()
        self.assertIn("about the centre (0.000, 40.000, 0.000) mm</th><td>(3.000, 0.000, 4.000) mm", page)
        offset = ", ".join(f"{v + 0.0:.3f}" for v in turned.TransformPoint((0.0, 0.0, 0.0)))
        self.assertIn(f"offset: where the origin goes (ITK, LPS)</th><td>({offset}) mm", page)
        self.assertIn("matrix Rz Rx Ry)</th><td>(8.000, 0.000, 0.000)", page)


class CheckerboardOrientationTest(unittest.TestCase):
    """checkerboard.png: shown as Slicer's axial view (radiological), square pixels in mm, whatever
    the order the volume's axes are stored in."""

    @staticmethod
    def _sagittal_volume() -> tuple[sitk.Image, np.ndarray]:
        # stored sagittally: axis 0 runs A -> P (1 mm), axis 1 S -> I (1 mm), axis 2 R -> L (4 mm slices)
        arr = np.zeros((10, 16, 20), np.float32)  # numpy (axis 2, axis 1, axis 0)
        arr[:5, :8, :10] = 100.0  # right (low axis 2), superior (low axis 1), anterior (low axis 0)
        image = sitk.GetImageFromArray(arr)
        image.SetSpacing((1.0, 1.0, 4.0))
        image.SetDirection((0, 0, 1, 1, 0, 0, 0, -1, 0))  # LPS columns: +y (P), -z (I), +x (L)
        return image, arr

    def test_middle_slice_is_radiological_for_any_storage_order(self) -> None:
        from MultimodalFusionLib.registration import qc

        image, _ = self._sagittal_volume()
        view = qc.middle_slice(image)
        self.assertEqual(view.shape, (20, 10))  # rows anterior -> posterior, columns right -> left
        self.assertEqual(qc.display_spacing(image), (4.0, 1.0))
        self.assertEqual(view[:10, :5].min(), 100.0)  # right-anterior on the top left, as in Slicer
        self.assertEqual(view[10:, :].max(), 0.0)
        self.assertEqual(view[:, 5:].max(), 0.0)

    def test_png_has_the_physical_aspect_of_the_displayed_slice(self) -> None:
        from MultimodalFusionLib.registration import qc

        image, _ = self._sagittal_volume()
        with tempfile.TemporaryDirectory() as tmp:
            png = sitk.GetArrayFromImage(sitk.ReadImage(qc.write_checkerboard_png(image, image, image,
                                                                                  os.path.join(tmp, "cb.png"))))
        # each panel: 10 columns of 4 mm by 20 rows of 1 mm, i.e. 40 mm wide and 20 mm tall (it was
        # drawn 10 wide and 20 tall: the stored spacing (1, 1, 4) was taken for the displayed one)
        gap = max(4, 10 // 50)
        self.assertEqual(png.shape, (20, (10 + gap + 10) * 4))

    def test_a_2d_slice_stored_in_ras_order_is_turned_as_slicer_shows_it(self) -> None:
        from MultimodalFusionLib.registration import qc

        arr = np.zeros((20, 30), np.float32)
        arr[10:, 15:] = 1.0  # with direction diag(-1, -1): high indices are the patient's right, anterior
        flipped = sitk.GetImageFromArray(arr)
        flipped.SetDirection((-1, 0, 0, -1))
        view = qc.middle_slice(flipped)
        self.assertEqual(view[:10, :15].min(), 1.0)
        self.assertEqual(view[10:, :].max(), 0.0)
        np.testing.assert_array_equal(qc.middle_slice(sitk.GetImageFromArray(arr)), arr)  # a PNG: as stored


class MontageSideLettersTest(unittest.TestCase):
    """The report's montage marks the patient's sides where Slicer's slice views have them."""

    def test_views_are_marked_radiologically_and_the_marks_match_the_pixels(self) -> None:
        from MultimodalFusionLib import fusion, report

        vol = np.zeros((10, 12, 14), np.float32)  # LPS order (z, y, x): small x = right, small y = anterior
        vol[5:, :7, :8] = 100.0  # the right-anterior-superior octant
        ras = sitk.GetImageFromArray(vol[:, ::-1, ::-1].copy())  # as a NIfTI in RAS order reads
        ras.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
        fused = fusion.fuse(ras, ras, "average")
        fig = report._montage_figure({"A": ras, "B": ras}, fused)
        expected = {"axial": ("R", "L", "A", "P"), "coronal": ("R", "L", "S", "I"),
                    "sagittal": ("A", "P", "S", "I")}
        columns = 2 + 1 + (fused.weights is not None)  # A, B, fused, weight map
        axes = [ax for ax in fig.axes if ax.texts]
        self.assertEqual(len(axes), 3 * columns)  # every view of every column, not the colour bar
        for ax in axes:
            name = ax.get_ylabel() or None
            marks = {tuple(round(v, 2) for v in t.get_position()): t.get_text() for t in ax.texts}
            edges = tuple(marks[p] for p in ((0.02, 0.5), (0.98, 0.5), (0.5, 0.98), (0.5, 0.02)))
            self.assertIn(edges, expected.values())
            if name:  # first column: the bright octant (right, anterior, superior) sits at the left and top marks
                self.assertEqual(edges, expected[name])
                view = ax.images[0].get_array()
                self.assertEqual((view[0, 0], view[-1, -1]), (100.0, 0.0), name)

    def test_2d_slices_get_no_side_letters(self) -> None:
        from MultimodalFusionLib import fusion, report

        png = sitk.GetImageFromArray(np.random.default_rng(0).normal(100, 10, (20, 24)).astype(np.float32))
        fig = report._montage_figure({"A": png, "B": png}, fusion.fuse(png, png, "average"))
        self.assertFalse(any(ax.texts for ax in fig.axes))


if __name__ == "__main__":
    unittest.main()
