"""Reading and writing images and transforms: geometry kept exactly, clear errors."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
import unittest.mock
import warnings
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from MultimodalFusionLib import io
from MultimodalFusionLib.errors import InputError


def _oblique() -> sitk.Image:
    arr = np.random.default_rng(0).normal(100, 20, (12, 16, 20)).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 1.1, 3.0))
    img.SetOrigin((-40.5, 12.25, 80.0))
    rot = sitk.Euler3DTransform()
    rot.SetRotation(math.radians(12), math.radians(-25), math.radians(40))
    img.SetDirection(rot.GetMatrix())
    return img


def _write_dicom_series(folder: str, uid: str, description: str, value: float) -> None:
    """A tiny 3-slice CT-like series with its own series UID and description."""
    for k in range(3):
        sl = sitk.Image([8, 8], sitk.sitkInt16) + int(value + k)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        tags = {
            "0008|0060": "CT",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": uid,
            "0008|103e": description,
            "0020|0013": str(k + 1),
            "0020|0032": f"0\\0\\{2.0 * k}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": "0.5\\0.5",
            "0018|0050": "2.0",
            "0008|0018": f"{uid}.{k + 1}",
        }
        for tag, val in tags.items():
            sl.SetMetaData(tag, val)
        writer.SetFileName(os.path.join(folder, f"{description}_{k}.dcm"))
        writer.Execute(sl)


class RoundTrip(unittest.TestCase):
    def test_geometry_kept(self):
        img = _oblique()
        with tempfile.TemporaryDirectory() as d:
            for ext in (".nii.gz", ".nii", ".nrrd", ".mha"):
                path = io.write_image(img, os.path.join(d, "img" + ext))
                back = io.read_image(path)
                self.assertEqual(back.GetSize(), img.GetSize(), ext)
                np.testing.assert_allclose(back.GetSpacing(), img.GetSpacing(), atol=1e-5, err_msg=ext)
                np.testing.assert_allclose(back.GetOrigin(), img.GetOrigin(), atol=1e-4, err_msg=ext)
                np.testing.assert_allclose(back.GetDirection(), img.GetDirection(), atol=1e-5, err_msg=ext)
                np.testing.assert_allclose(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img), rtol=1e-6)
            self.assertEqual([f for f in os.listdir(d) if f.startswith(".mmf-tmp")], [])

    def test_transform_round_trip(self):
        tx = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.2, 0.3, (4.0, 5.0, 6.0))
        with tempfile.TemporaryDirectory() as d:
            back = io.read_transform(io.write_transform(tx, os.path.join(d, "t.tfm")))
            p = (10.0, -20.0, 30.0)
            np.testing.assert_allclose(back.TransformPoint(p), tx.TransformPoint(p), atol=1e-9)

    def test_transform_files_read_back_or_are_refused_with_the_output_named(self):
        """Every file write_transform writes reads back (ITK's reader is what Slicer and ANTs use); a
        composite to .mat had been written unreadable, and an unknown extension named the temporary file."""
        rigid = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.1, -0.2, 0.3, (4.0, 5.0, 6.0))
        affine = sitk.AffineTransform(3)
        affine.SetMatrix((1.1, 0.1, 0.0, 0.0, 0.9, 0.05, 0.0, 0.0, 1.0))
        affine.SetTranslation((1.0, -2.0, 3.0))
        composite = sitk.CompositeTransform([rigid, affine])
        single = sitk.CompositeTransform([affine])
        p = (10.0, -20.0, 30.0)
        with tempfile.TemporaryDirectory() as d:
            for name, tx in (("rigid", rigid), ("composite", composite), ("single", single)):
                for ext in (".tfm", ".txt", ".h5", ".mat"):
                    if name == "composite" and ext == ".mat":
                        continue
                    with self.subTest(name=name, ext=ext):
                        path = io.write_transform(tx, os.path.join(d, name + ext))
                        back = sitk.ReadTransform(path)  # ITK's own reader, not ours
                        np.testing.assert_allclose(back.TransformPoint(p), tx.TransformPoint(p), atol=1e-9)
            path = os.path.join(d, "composite.mat")
            for held in (composite, sitk.Transform(composite)):  # a plain sitk.Transform holding it too
                with self.subTest(type=type(held).__name__), self.assertRaises(InputError) as cm:
                    io.write_transform(held, path)
                self.assertIn("a .mat file holds one transform", cm.exception.problem)
                self.assertIn(".h5", cm.exception.fix)
                self.assertFalse(os.path.exists(path))
            back = sitk.ReadTransform(io.write_transform(sitk.Transform(single), os.path.join(d, "plain.mat")))
            np.testing.assert_allclose(back.TransformPoint(p), single.TransformPoint(p), atol=1e-9)
            for name in ("t.xyz", "t.nii.gz", "t"):
                path = os.path.join(d, name)
                with self.subTest(name=name), self.assertRaises(InputError) as cm:
                    io.write_transform(rigid, path)
                self.assertIn(f"No transform format is written as '{path}'", cm.exception.problem)
                self.assertNotIn(".mmf-tmp", str(cm.exception))
                self.assertIn(".tfm", cm.exception.fix)
            self.assertEqual([f for f in os.listdir(d) if f.startswith(".mmf-tmp")], [])

    def test_minc_transform_with_a_grid_reads_back_from_another_folder(self):
        """ITK writes a displacement field's .xfm with its grid beside it, named after the file and named in it: the
        .xfm had been written to a temporary name, so it named '.mmf-tmp-..._grid_0.mnc' (left behind, one more at
        every rerun) and a copy of t.xfm and its visible files did not read back ("Error reading XFM"). A composite
        with a field was read back as its first transform only (a warning), and a B-spline's refusal said "Check the
        folder is writable"."""
        arr = np.random.default_rng(0).normal(0.0, 0.5, (6, 7, 8, 3))
        field = sitk.DisplacementFieldTransform(sitk.GetImageFromArray(arr, isVector=True))
        points = [(1.0, 2.0, 3.0), (4.5, 1.5, 2.5)]
        with tempfile.TemporaryDirectory() as d, tempfile.TemporaryDirectory() as elsewhere:
            path = io.write_transform(field, os.path.join(d, "t.xfm"))
            self.assertEqual(sorted(os.listdir(d)), ["t.xfm", "t_grid_0.mnc"])
            for name in os.listdir(d):
                shutil.copy(os.path.join(d, name), elsewhere)
            back = io.read_transform(os.path.join(elsewhere, "t.xfm"))
            for point in points:
                np.testing.assert_allclose(back.TransformPoint(point), field.TransformPoint(point), atol=1e-9)
            self.assertEqual(io.write_transform(field, path), path)  # rewritten: nothing more beside it
            self.assertEqual(sorted(os.listdir(d)), ["t.xfm", "t_grid_0.mnc"])
            bspline = sitk.BSplineTransformInitializer(sitk.Image(16, 16, 16, sitk.sitkFloat32), [3, 3, 3])
            for name, tx, said in (
                    ("bspline.xfm", bspline, "3D linear transforms and 3D displacement fields only"),
                    ("composite.xfm", sitk.CompositeTransform([sitk.AffineTransform(3), bspline]), "BSplineTransform")):
                out = os.path.join(d, name)
                with self.subTest(name), self.assertRaises(InputError) as cm:
                    io.write_transform(tx, out)
                self.assertIn(f"'{out}'", cm.exception.problem)
                self.assertIn(said, cm.exception.problem)
                self.assertIn(".h5", cm.exception.fix)
            self.assertEqual(sorted(os.listdir(d)), ["t.xfm", "t_grid_0.mnc"])

    def test_minc_files_are_in_ras_and_read_in_lps(self):
        """MINC's world coordinates are RAS, ITK's LPS, and ITK 5.4's MINC IO passes them through unchanged: a
        hand-written .xfm translation of (10, 20, 30) (RAS, as MNI's tools write it) moved LPS points by (10, 20, 30),
        i.e. 10 mm left and 20 mm back where it meant right and forward; a .mnc whose RAS origin is (10, 20, 30) was
        read with the LPS origin (10, 20, 30); and ITK wrote LPS values as MINC's. Both are converted now, so a .mnc
        and its .xfm stay consistent with each other (a point maps to the same voxel) and with every other format."""
        if not getattr(io, "_itk_minc_unconverted", lambda: True)():  # (the code before the change had no probe)
            self.skipTest("this ITK converts MINC's RAS itself (its RAStoLPS option)")
        rotation = np.array([[1.0, 0.0, 0.0], [0.0, 0.8, -0.6], [0.0, 0.6, 0.8]])  # about x: changed by the flip
        rows = "\n".join(" ".join(repr(float(v)) for v in [*row, t]) for row, t in zip(rotation, (10.0, 20.0, 30.0)))
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "ras.xfm")
            with open(path, "w") as fh:
                fh.write(f"MNI Transform File\nTransform_Type = Linear;\nLinear_Transform =\n{rows};\n")
            tx = io.read_transform(path)
            flip = np.array([-1.0, -1.0, 1.0])
            for lps in ((0.0, 0.0, 0.0), (1.0, 2.0, 3.0), (-7.0, 4.0, 9.0)):
                ras = flip * np.array(lps)
                expected = flip * (rotation @ ras + (10.0, 20.0, 30.0))  # mapped in RAS, said in LPS
                np.testing.assert_allclose(tx.TransformPoint(lps), expected, atol=1e-9)
            np.testing.assert_allclose(tx.TransformPoint((0.0, 0.0, 0.0)), (-10.0, -20.0, 30.0), atol=1e-9)
            # written back, the file holds the RAS values it was read from
            io.write_transform(tx, os.path.join(d, "back.xfm"))
            np.testing.assert_allclose(sitk.ReadTransform(os.path.join(d, "back.xfm")).TransformPoint((0, 0, 0)),
                                       (10.0, 20.0, 30.0), atol=1e-9)

            # an image as MINC holds it (ITK 5.4 writes the values given as MINC's): RAS origin (10, 20, 30)
            ras_image = sitk.Image(40, 40, 40, sitk.sitkUInt8)
            ras_image.SetOrigin((10.0, 20.0, 30.0))
            sitk.WriteImage(ras_image, os.path.join(d, "a.mnc"))
            image = io.read_image(os.path.join(d, "a.mnc"))
            self.assertEqual(image.GetOrigin(), (-10.0, -20.0, 30.0))
            np.testing.assert_allclose(image.GetDirection(), (-1, 0, 0, 0, -1, 0, 0, 0, 1))
            # the pair is consistent: voxel (0, 0, 0), at RAS (10, 20, 30), moved by the translation alone (an
            # identity matrix) lands on voxel (10, 20, 30) in either frame
            with open(path, "w") as fh:
                fh.write("MNI Transform File\nTransform_Type = Linear;\nLinear_Transform =\n"
                         "1 0 0 10\n0 1 0 20\n0 0 1 30;\n")
            moved = io.read_transform(path).TransformPoint(image.TransformIndexToPhysicalPoint((0, 0, 0)))
            self.assertEqual(image.TransformPhysicalPointToIndex(moved), (10, 20, 30))
            # and written by this package, the file holds MINC's RAS
            oblique = _oblique()
            io.write_image(oblique, os.path.join(d, "o.mnc"))
            raw = sitk.ReadImage(os.path.join(d, "o.mnc"))
            np.testing.assert_allclose(raw.GetOrigin(), flip * np.array(oblique.GetOrigin()), atol=1e-6)
            np.testing.assert_allclose(np.array(raw.GetDirection()).reshape(3, 3),
                                       flip[:, None] * np.array(oblique.GetDirection()).reshape(3, 3), atol=1e-6)
            back = io.read_image(os.path.join(d, "o.mnc"))
            np.testing.assert_allclose(back.GetOrigin(), oblique.GetOrigin(), atol=1e-6)
            np.testing.assert_allclose(back.GetDirection(), oblique.GetDirection(), atol=1e-6)

    def test_a_4d_image_to_minc_is_refused_before_itk_crashes(self):
        """ITK's MINC writer ends the process on a 4D image (SIGSEGV before a byte is written, scalar or vector):
        write_image(4D image, 'x.mnc') took the program (Slicer with it) down. Refused first; run in a child
        process, which the old code ended."""
        script = (
            "import sys, SimpleITK as sitk\n"
            "from MultimodalFusionLib import io\n"
            "from MultimodalFusionLib.errors import InputError\n"
            "volume = sitk.Image(7, 6, 5, sitk.sitkFloat32)\n"
            "try:\n"
            "    io.write_image(sitk.JoinSeries([volume, volume]), sys.argv[1])\n"
            "    print('written')\n"
            "except InputError as exc:\n"
            "    print('refused', exc)\n")
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "x.mnc")
            done = _child(script, d, path)
            self.assertEqual(done.returncode, 0, done.stderr[-2000:])
            self.assertTrue(done.stdout.startswith(f"refused '{path}': ITK's MINC writer crashes the program on a 4D"),
                            done.stdout)
            self.assertIn(".nrrd", done.stdout)
            self.assertEqual(os.listdir(d), [])
            with self.assertRaises(InputError):  # and before the work, from the name and the grid
                io.check_output_name(path, sitk.Image([2, 2, 2, 2], sitk.sitkUInt8))

    def test_a_tensor_image_written_as_minc_holds_ras(self):
        """write_image turned a .mnc output's geometry to MINC's RAS, then, for a tensor image, replaced it with
        tensors.to_file(image), which copies the image's own (LPS) geometry: the file held the LPS origin (3, 4, 5)
        as MINC's RAS, and was read back mirrored in x and y, at (-3, -4, 5)."""
        if not io._itk_minc_unconverted():
            self.skipTest("this ITK converts MINC's RAS itself")
        from MultimodalFusionLib import tensors

        values = np.random.default_rng(0).uniform(-1.0, 1.0, (5, 6, 7, 6)).astype(np.float32)
        image = sitk.GetImageFromArray(values, isVector=True)
        image.SetOrigin((3.0, 4.0, 5.0))
        image.SetDirection(_oblique().GetDirection())
        image = tensors.mark(image, tensors.SYMMETRIC)
        with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no tensor type in .mnc files: written as a vector image
            path = io.write_image(image, os.path.join(d, "t.mnc"))
            raw = sitk.ReadImage(path)
        flip = np.array([-1.0, -1.0, 1.0])
        np.testing.assert_allclose(raw.GetOrigin(), (-3.0, -4.0, 5.0), atol=1e-6)
        np.testing.assert_allclose(np.array(raw.GetDirection()).reshape(3, 3),
                                   flip[:, None] * np.array(image.GetDirection()).reshape(3, 3), atol=1e-6)
        np.testing.assert_allclose(sitk.GetArrayFromImage(raw), values, atol=1e-6)

    def test_a_vector_field_written_as_minc_holds_ras_vectors(self):
        """A .mnc image's geometry was turned between MINC's RAS and ITK's LPS, not its vectors: a displacement field
        written by write_image kept its LPS x and y where MINC's tools, ITK's .xfm reader and this package's own .xfm
        grids hold RAS (an .xfm naming it moved (5, 7, 9) to x = 3.77 where the field moves it to 6.23), and the grid
        write_transform wrote was read by read_image with x and y negated. A field is known as one by the mark
        write_image leaves in the file (from the image's metadata) or by a grid's name, NAME_grid_0.mnc."""
        if not io._itk_minc_unconverted():
            self.skipTest("this ITK converts MINC's RAS itself")
        rng = np.random.default_rng(0)
        flip = np.array([-1.0, -1.0, 1.0])
        for dim, name in ((3, "f.mnc"), (2, "f.mnc"), (3, "f_grid_0.mnc")):
            with self.subTest(dim=dim, name=name), tempfile.TemporaryDirectory() as d:
                values = rng.normal(0.0, 2.0, (4, 5, 6, 3) if dim == 3 else (5, 6, 2))
                field = sitk.GetImageFromArray(values, isVector=True)
                field.SetOrigin((3.0, 4.0, 5.0)[:dim])
                field.SetSpacing((2.0, 1.5, 2.5)[:dim])
                if name == "f.mnc":
                    field.SetMetaData("mmfusion:components", "vector")
                with warnings.catch_warnings():
                    warnings.simplefilter("error")  # said, so no warning
                    path = io.write_image(field, os.path.join(d, name))
                    raw = sitk.ReadImage(path)  # as MINC holds it: RAS, vectors too
                    np.testing.assert_allclose(sitk.GetArrayFromImage(raw), values * flip[:dim], atol=1e-12)
                    back = io.read_image(path, keep_color=True)
                np.testing.assert_allclose(sitk.GetArrayFromImage(back), values, atol=1e-12)
                np.testing.assert_allclose(back.GetOrigin(), field.GetOrigin(), atol=1e-12)
                if dim == 2:
                    continue
                # applied as a transform: an .xfm naming it moves points as the field does
                with open(os.path.join(d, "f.xfm"), "w") as fh:
                    fh.write(f"MNI Transform File\nTransform_Type = Grid_Transform;\nDisplacement_Volume = {name};\n")
                applied = io.read_transform(os.path.join(d, "f.xfm"))
                known = sitk.DisplacementFieldTransform(sitk.Image(field))
                for point in ((5.0, 7.0, 9.0), (6.5, 9.0, 12.0)):
                    np.testing.assert_allclose(applied.TransformPoint(point), known.TransformPoint(point), atol=1e-9)
                # and the grid write_transform writes beside an .xfm reads as the field it holds
                io.write_transform(known, os.path.join(d, "t.xfm"))
                grid = io.read_image(os.path.join(d, "t_grid_0.mnc"), keep_color=True)
                np.testing.assert_allclose(sitk.GetArrayFromImage(grid), values, atol=1e-12)
                # a grid as MINC's tools write it (RAS vectors, no mark) is read as the field, by its name
                sitk.WriteImage(raw, os.path.join(d, "tools_grid_0.mnc"))
                tools = io.read_image(os.path.join(d, "tools_grid_0.mnc"), keep_color=True)
                np.testing.assert_allclose(sitk.GetArrayFromImage(tools), values, atol=1e-12)
        with tempfile.TemporaryDirectory() as d:  # colour: its channels are not turned
            colour = sitk.GetImageFromArray(rng.integers(0, 255, (4, 5, 6, 3), dtype=np.uint8), isVector=True)
            path = io.write_image(colour, os.path.join(d, "c.mnc"))
            np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(path)),
                                          sitk.GetArrayFromImage(colour))

    def test_float_channels_written_as_minc_are_not_turned(self):
        """Three float echoes (or float colour) in 3D, as many components as dimensions, had been taken for a
        displacement field: channels 0 and 1 negated in the file (read so by MINC's tools, ITK and Slicer) and in
        what read_image gave of a file without a mark, without a word. Unmarked, they are written and read as
        stored, with a warning that says how a field is turned; a file written here says so and reads back quietly."""
        if not io._itk_minc_unconverted():
            self.skipTest("this ITK converts MINC's RAS itself")
        echoes = np.random.default_rng(1).uniform(100.0, 900.0, (4, 5, 6, 3)).astype(np.float32)
        image = sitk.GetImageFromArray(echoes, isVector=True)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "echoes.mnc")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                io.write_image(image, path)
            self.assertIn("written as they are, as channels", " ".join(str(w.message) for w in caught))
            self.assertFalse(image.HasMetaDataKey("mmfusion:components"))  # the input is not changed
            np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(path)), echoes)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                back = io.read_image(path, keep_color=True)
            np.testing.assert_array_equal(sitk.GetArrayFromImage(back), echoes)
            # a file from elsewhere (no mark, no grid name): as stored, with the warning
            sitk.WriteImage(image, os.path.join(d, "other.mnc"))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                other = io.read_image(os.path.join(d, "other.mnc"), keep_color=True)
            np.testing.assert_array_equal(sitk.GetArrayFromImage(other), echoes)
            said = " ".join(str(w.message) for w in caught)
            self.assertIn("read as stored, as channels", said)
            self.assertIn("Grid_Transform", said)

    def test_a_minc_file_from_mni_tools_is_placed_as_nibabel_places_it(self):
        """nibabel's small.mnc (written by MINC's tools; its RAS affine in nibabel's tests: voxel (0, 0, 0) at
        (-98, -134, -72), x steps of 7 mm to the right) had been read with the LPS origin (-98, -134, -72): 98 mm
        to the right of where it lies."""
        try:
            from nibabel.testing import data_path
        except ImportError:
            self.skipTest("nibabel's test data is not installed")
        path = os.path.join(data_path, "small.mnc")
        if not os.path.isfile(path):
            self.skipTest("nibabel's small.mnc is not installed")
        image = io.read_image(path)
        ras = np.array([-1.0, -1.0, 1.0]) * np.array(image.TransformIndexToPhysicalPoint((1, 1, 1)))
        np.testing.assert_allclose(ras, (-98 + 7, -134 + 8, -72 + 9), atol=1e-6)

    def test_reading_a_minc_file_survives_a_full_or_missing_temporary_folder(self):
        """Whether ITK converts MINC's RAS had been probed by writing a one-voxel .mnc (HDF5) into a temporary
        folder at the first .mnc read: under a 2000-byte file size limit (a full temporary disk) the HDF5 write
        failed and the process that had only read a .mnc crashed at exit (SIGSEGV, status -11); with no usable
        temporary folder, read_image raised a bare FileNotFoundError. The probe is a small text .xfm now, and a
        probe that cannot be written gives ITK's default without keeping it. Run in child processes."""
        if not io._itk_minc_unconverted():
            self.skipTest("this ITK converts MINC's RAS itself")
        script = (
            "import resource, signal, sys, tempfile\n"
            "from MultimodalFusionLib import io\n"
            "path, how, gone = sys.argv[1:]\n"
            "if how == 'limit':\n"
            "    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "    resource.setrlimit(resource.RLIMIT_FSIZE, (2000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
            "else:\n"
            "    tempfile.tempdir = gone\n"
            "print(io.read_image(path).GetOrigin())\n")
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "a.mnc")
            ras = sitk.Image(4, 4, 4, sitk.sitkUInt8)
            ras.SetOrigin((1.0, 2.0, 3.0))
            sitk.WriteImage(ras, path)  # as ITK 5.4 writes it: RAS origin (1, 2, 3)
            hows = ("limit", "no temporary folder") if sys.platform != "win32" else ("no temporary folder",)
            for how in hows:
                with self.subTest(how):
                    done = _child(script, d, path, how, os.path.join(d, "gone", "tmp"))
                    self.assertEqual(done.returncode, 0, done.stderr[-2000:])
                    self.assertEqual(done.stdout.strip(), "(-1.0, -2.0, 3.0)")
                    self.assertEqual(sorted(os.listdir(d)), ["a.mnc"])

    def test_minc_transform_of_several_parts_is_read_whole(self):
        """ITK reads an .xfm's transforms as a list, of which SimpleITK took the first only (a warning): a linear
        transform then a grid, as MNI's tools write, was read as the linear one (points off by the grid's
        displacement). MNI's convention: they apply to a point in file order. Checked against points mapped by hand,
        both orders, and a composite written with its fields, read back equal."""
        rng = np.random.default_rng(3)
        grid = sitk.GetImageFromArray(rng.normal(0.0, 1.5, (8, 9, 10, 3)), isVector=True)
        grid.SetOrigin((-6.0, -5.0, -4.0))
        field = sitk.DisplacementFieldTransform(sitk.Image(grid))
        matrix, shift = np.array([[1.1, 0.1, 0.0], [-0.05, 0.9, 0.2], [0.0, 0.1, 1.05]]), np.array([1.5, -2.0, 0.5])
        rows = "\n".join(" " + " ".join(repr(float(v)) for v in [*row, t]) for row, t in zip(matrix, shift))
        linear = f"Transform_Type = Linear;\nLinear_Transform =\n{rows};\n"
        gridded = "Transform_Type = Grid_Transform;\nDisplacement_Volume = g_grid_0.mnc;\n"
        points = [tuple(p) for p in rng.uniform(-3.0, 3.0, (10, 3))]
        flip = np.diag([-1.0, -1.0, 1.0])  # the hand-written matrix is in MINC's RAS: F M F, F t in ITK's LPS
        matrix_lps, shift_lps = flip @ matrix @ flip, flip @ shift
        with tempfile.TemporaryDirectory() as d, tempfile.TemporaryDirectory() as elsewhere:
            io.write_transform(field, os.path.join(d, "g.xfm"))
            shutil.copy(os.path.join(d, "g_grid_0.mnc"), elsewhere)
            for name, body, by_hand in (
                    ("lin_then_grid.xfm", linear + gridded,
                     lambda p: field.TransformPoint(tuple(matrix_lps @ np.array(p) + shift_lps))),
                    ("grid_then_lin.XFM", gridded + linear,
                     lambda p: tuple(matrix_lps @ np.array(field.TransformPoint(p)) + shift_lps))):
                path = os.path.join(elsewhere, name)
                with open(path, "w") as fh:
                    fh.write("MNI Transform File\n% by hand, as MNI's tools write them\n\n" + body)
                with self.subTest(name):
                    back = io.read_transform(path)
                    for point in points:
                        np.testing.assert_allclose(back.TransformPoint(point), by_hand(point), atol=1e-9)
            with open(os.path.join(elsewhere, "inverted.xfm"), "w") as fh:
                fh.write("MNI Transform File\n" + gridded.replace("\nDisp", "\nInvert_Flag = True;\nDisp"))
            with self.assertRaises(InputError) as cm:  # read as a transform without a field: failed at its first use
                io.read_transform(os.path.join(elsewhere, "inverted.xfm"))
            self.assertIn("Invert_Flag", cm.exception.problem)
            affine = sitk.AffineTransform(matrix.ravel().tolist(), shift.tolist())
            composite = sitk.CompositeTransform([affine, field, sitk.TranslationTransform(3, (0.5, 0.0, -1.0)), field])
            path = io.write_transform(composite, os.path.join(d, "c.xfm"))
            self.assertEqual(sorted(f for f in os.listdir(d) if f.startswith("c")),
                             ["c.xfm", "c_grid_0.mnc", "c_grid_1.mnc"])
            back = io.read_transform(path)
            for point in points:
                np.testing.assert_allclose(back.TransformPoint(point), composite.TransformPoint(point), atol=1e-9)

    def test_minc_transform_rewritten_leaves_no_grid_it_no_longer_names(self):
        """Rewriting t.xfm with fewer grids left the old t_grid_N.mnc beside it; only those the old t.xfm named (and
        ITK names after it) are removed. Also written now: a translation, an identity, an empty or nested composite
        of linear ones (refused as not linear, crashed the process: SIGSEGV, or 'Composite Transform can only be 1st
        transform in a file' with the fix 'Check the folder is writable')."""
        field = sitk.DisplacementFieldTransform(
            sitk.GetImageFromArray(np.random.default_rng(4).normal(0.0, 1.0, (5, 6, 7, 3)), isVector=True))
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "t.xfm")
            io.write_transform(sitk.CompositeTransform([field, sitk.Euler3DTransform(), field]), path)
            self.assertEqual(sorted(os.listdir(d)), ["t.xfm", "t_grid_0.mnc", "t_grid_1.mnc"])
            io.write_transform(field, path)
            self.assertEqual(sorted(os.listdir(d)), ["t.xfm", "t_grid_0.mnc"])
            for name in ("t_grid_5.mnc", "shared.mnc"):  # not named by it / not named after it: left alone
                shutil.copy(os.path.join(d, "t_grid_0.mnc"), os.path.join(d, name))
            with open(path, "a") as fh:
                fh.write("Transform_Type = Grid_Transform;\nDisplacement_Volume = shared.mnc;\n")
            nested = sitk.CompositeTransform([sitk.CompositeTransform([sitk.Euler3DTransform((1, 2, 3), 0.1, 0, 0)]),
                                              sitk.TranslationTransform(3, (1.0, 2.0, 3.0))])
            for transform in (sitk.TranslationTransform(3, (1.0, 2.0, 3.0)), sitk.Transform(3, sitk.sitkIdentity),
                              sitk.CompositeTransform(3), nested):
                io.write_transform(transform, path)
                self.assertEqual(sorted(os.listdir(d)), ["shared.mnc", "t.xfm", "t_grid_5.mnc"])
                np.testing.assert_allclose(io.read_transform(path).TransformPoint((4.0, 5.0, 6.0)),
                                           transform.TransformPoint((4.0, 5.0, 6.0)), atol=1e-9)

    def test_a_displacement_field_image_is_read_as_a_transform_as_ants_reads_its_warp(self):
        """antsRegistration writes 0GenericAffine.mat and 1Warp.nii.gz (a displacement field image, fixed -> moving, LPS
        mm), which antsApplyTransforms takes as `-t 1Warp.nii.gz -t 0GenericAffine.mat`. --transform (and
        --initial-transform, evaluate-registration's --transform) had refused the field with "Could not create Transform
        IO object ... Give an ITK transform file", so ANTs' deformable results could not be applied or scored."""
        from contextlib import redirect_stderr, redirect_stdout
        from io import StringIO

        from MultimodalFusionLib import cli

        for dim, warp_name in ((3, "out1Warp.nii.gz"), (2, "field.mha")):
            with self.subTest(dim=dim), tempfile.TemporaryDirectory() as d:
                size = [20] * dim
                grid = np.indices(size[::-1]).astype(np.float32)
                blob = np.exp(-sum((g - 9.0) ** 2 for g in grid) / 30.0).astype(np.float32) * 100.0
                image = sitk.GetImageFromArray(blob)
                image.SetSpacing([1.5] * dim)
                image.SetOrigin([-3.0] * dim)
                centre = image.TransformContinuousIndexToPhysicalPoint([9.5] * dim)
                if dim == 3:
                    truth = sitk.Euler3DTransform(centre, 0.05, -0.03, 0.1, (1.2, -0.7, 0.9))
                else:
                    truth = sitk.Euler2DTransform(centre, 0.1, (1.2, -0.7))
                field = sitk.TransformToDisplacementField(truth, sitk.sitkVectorFloat64, image.GetSize(),
                                                          image.GetOrigin(), image.GetSpacing(),
                                                          image.GetDirection())
                warp = os.path.join(d, warp_name)
                sitk.WriteImage(sitk.Cast(field, sitk.sitkVectorFloat32), warp)  # float32 vectors, as ANTs writes
                tx = io.read_transform(warp)
                self.assertIsInstance(tx, sitk.DisplacementFieldTransform)
                inside = image.TransformContinuousIndexToPhysicalPoint([6.3] * dim)
                np.testing.assert_allclose(tx.TransformPoint(inside), truth.TransformPoint(inside), atol=1e-4)
                img_path, tfm = os.path.join(d, "img.nrrd"), os.path.join(d, "truth.tfm")
                sitk.WriteImage(image, img_path)
                sitk.WriteTransform(truth, tfm)
                outs = {}
                for name, transforms in (("field", [warp]), ("tfm", [tfm]),
                                         ("chain", [warp, tfm]), ("chain_truth", [tfm, tfm])):
                    out = os.path.join(d, name + ".nrrd")
                    args = ["resample", img_path, "--reference", img_path, "-o", out, "--threads", "1"]
                    for t in transforms:
                        args += ["--transform", t]
                    with redirect_stdout(StringIO()), redirect_stderr(StringIO()) as err:
                        self.assertEqual(cli.main(args), 0, err.getvalue())
                    outs[name] = sitk.GetArrayFromImage(sitk.ReadImage(out))
                core = (slice(2, -2),) * dim  # the field's own grid ends at the image's, half a voxel in
                np.testing.assert_allclose(outs["field"][core], outs["tfm"][core], atol=1e-3)
                np.testing.assert_allclose(outs["chain"][core], outs["chain_truth"][core], atol=1e-3)
                # a grey image given where a transform goes (arguments swapped) is named as an image
                with self.assertRaises(InputError) as cm:
                    io.read_transform(img_path)
                self.assertIn("not a transform", cm.exception.problem)
                self.assertIn("displacement field", cm.exception.problem)

    def test_a_one_slice_3d_nifti_field_is_read_as_the_3d_field_it_is(self):
        """antsRegistration -d 3 on one slice writes a 3D warp of one slice (dim[3] 1, dim[5] 3, intent VECTOR); ITK's
        NIfTI reader drops the axis of length 1 and read it as a 2D image of 3 components, so read_transform had
        refused it as "an image (2D, 3 component(s) ...), not a transform", where the same field as .nrrd was read.
        It is read as the 3D field its header describes (z spacing, z origin, oblique direction): the same field and
        mapping as the .nrrd. A 2D field of 2 components stays 2D, a 2D RGB image is still an image, and one-slice
        int16 vectors are named for their type, as 3D vectors."""
        with tempfile.TemporaryDirectory() as d:
            rng = np.random.default_rng(3)
            field = sitk.GetImageFromArray(rng.normal(0, 2, (1, 7, 9, 3)).astype(np.float32), isVector=True)
            field.SetSpacing((1.5, 2.0, 3.0))
            field.SetOrigin((10.0, -20.0, 30.0))
            field.SetDirection(sitk.Euler3DTransform((0, 0, 0), 0.3, -0.2, 0.5).GetMatrix())
            read = {}
            for name in ("out1Warp.nii.gz", "w.nii", "w.nrrd"):
                sitk.WriteImage(field, os.path.join(d, name))
                read[name] = io.read_transform(os.path.join(d, name))
            nrrd = read.pop("w.nrrd").GetDisplacementField()
            for name, tx in read.items():
                with self.subTest(name=name):
                    self.assertIsInstance(tx, sitk.DisplacementFieldTransform)
                    got = tx.GetDisplacementField()
                    self.assertEqual(got.GetSize(), (9, 7, 1))
                    np.testing.assert_array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(nrrd))
                    np.testing.assert_allclose(got.GetSpacing(), nrrd.GetSpacing(), atol=1e-6)
                    np.testing.assert_allclose(got.GetOrigin(), nrrd.GetOrigin(), atol=1e-5)
                    np.testing.assert_allclose(got.GetDirection(), nrrd.GetDirection(), atol=1e-6)
                    for index in ((2.3, 4.1, 0.2), (7.6, 0.4, -0.3)):
                        point = field.TransformContinuousIndexToPhysicalPoint(index)
                        moved = tx.TransformPoint(point)
                        self.assertGreater(np.linalg.norm(np.subtract(moved, point)), 0.1)
                        np.testing.assert_allclose(moved, sitk.DisplacementFieldTransform(
                            sitk.Cast(nrrd, sitk.sitkVectorFloat64)).TransformPoint(point), atol=1e-5)
            flat = os.path.join(d, "flat.nii.gz")  # a 2D field of 2 components stays 2D
            sitk.WriteImage(sitk.Compose([sitk.Image([6, 5], sitk.sitkFloat32) + v for v in (1.0, 2.0)]), flat)
            self.assertEqual(io.read_transform(flat).GetDimension(), 2)
            np.testing.assert_allclose(io.read_transform(flat).TransformPoint((1.0, 1.0)), (2.0, 3.0))
            rgb = os.path.join(d, "rgb.nii.gz")  # a 2D colour image is an image
            sitk.WriteImage(sitk.Compose([sitk.Image([6, 5], sitk.sitkUInt8) + v for v in (9, 8, 7)]), rgb)
            with self.assertRaises(InputError) as cm:
                io.read_transform(rgb)
            self.assertIn("is an image (2D, 3 component(s)", cm.exception.problem)
            ints = os.path.join(d, "ints.nii.gz")
            sitk.WriteImage(sitk.Compose([sitk.Image([6, 5, 1], sitk.sitkInt16) + v for v in (1, 2, 3)]), ints)
            with self.assertRaises(InputError) as cm:
                io.read_transform(ints)
            self.assertIn("holds 3D vectors of vector of 16-bit signed integer", cm.exception.problem)

    def test_a_field_that_does_not_cover_the_grid_gets_a_note(self):
        """A displacement field moves no point outside its grid (as antsApplyTransforms); resample and
        evaluate-registration had said nothing of it, so a field given with a reference (fixed image) it covers half
        of moved half the image without a word. They note the fraction of that grid's voxels left outside (more than
        1%), also for a field in a chain (the points as the transforms applied before it map them); a field on the
        grid, or one slice short of a 120-slice grid (0.8%), gives no note."""
        import json
        from contextlib import redirect_stderr, redirect_stdout
        from io import StringIO

        from MultimodalFusionLib import cli

        def run(*args):
            with redirect_stdout(StringIO()) as out, redirect_stderr(StringIO()) as err:
                self.assertEqual(cli.main([*args, "--threads", "1"]), 0, err.getvalue())
            return out.getvalue(), " ".join(err.getvalue().split())

        with tempfile.TemporaryDirectory() as d:
            # not constant: evaluate-registration refuses a blank image since 2551c27
            ref = sitk.GetImageFromArray((1.0 + np.arange(120 * 16 * 20) % 7).reshape(120, 16, 20).astype(np.float32))
            ref.SetSpacing((1.5, 1.5, 1.0))
            ref.SetOrigin((-4.0, 2.0, 7.0))
            ref.SetDirection(sitk.Euler3DTransform((0, 0, 0), 0.1, -0.2, 0.3).GetMatrix())
            img = os.path.join(d, "img.nrrd")
            sitk.WriteImage(ref, img)

            def field_on(grid, name):
                path = os.path.join(d, name)
                sitk.WriteImage(sitk.TransformToDisplacementField(
                    sitk.TranslationTransform(3, (0.5, -0.3, 0.2)), sitk.sitkVectorFloat32, grid.GetSize(),
                    grid.GetOrigin(), grid.GetSpacing(), grid.GetDirection()), path)
                return path

            full = field_on(ref, "out1Warp.nii.gz")
            half = field_on(sitk.RegionOfInterest(ref, [10, 16, 120], [0, 0, 0]), "half1Warp.nii.gz")
            short = field_on(sitk.RegionOfInterest(ref, [20, 16, 119], [0, 0, 0]), "short.nii.gz")
            shift = os.path.join(d, "shift.tfm")  # 6 of the 20 voxels along i: 30% of the points leave the field
            sitk.WriteTransform(sitk.TranslationTransform(3, np.array(ref.GetDirection()).reshape(3, 3)[:, 0] * 9.0),
                                shift)
            out = ["-o", os.path.join(d, "o.nrrd")]
            for transforms, noted in (([full], None), ([short], None), ([half], "50.0%"),
                                      # -t shift -t field: the shift moves the points first (ANTs' order),
                                      # 30% of them off the field; -t field -t shift: the field acts first
                                      ([shift, full], "30.0%"), ([full, shift], None)):
                flags = [a for t in transforms for a in ("--transform", t)]
                with self.subTest(transforms=[os.path.basename(t) for t in transforms]):
                    _, resampled = run("resample", img, "--reference", img, *out, *flags)
                    _, scored = run("evaluate-registration", img, img, *flags)
                    printed, _ = run("evaluate-registration", img, img, *flags, "--json")
                    notes = json.loads(printed)["notes"]
                    if noted is None:
                        self.assertNotIn("does not cover", resampled + scored + " ".join(notes))
                        continue
                    field = transforms[-1]
                    self.assertIn(f"warning: the displacement field '{field}' does not cover {noted} of the "
                                  "reference grid's voxels", resampled)
                    self.assertIn("Give a --reference the field covers", resampled)
                    self.assertIn(f"warning: the displacement field '{field}' does not cover {noted} of the fixed "
                                  "image's voxels", scored)
                    self.assertTrue(any(f"does not cover {noted}" in n for n in notes), notes)

    def test_a_2d_field_that_does_not_cover_a_one_slice_volume_gets_a_note(self):
        """Two one-slice volumes under a 2D transform are resampled and scored as their slices' 2D images; a 2D
        field covering half the slice moved half of it with no note (the coverage was counted only where the
        transforms' dimension was the reference's, 3 against 2 here). Counted on the slice, it is noted."""
        from contextlib import redirect_stderr, redirect_stdout
        from io import StringIO

        from MultimodalFusionLib import cli

        def run(*args):
            with redirect_stdout(StringIO()), redirect_stderr(StringIO()) as err:
                self.assertEqual(cli.main([*args, "--threads", "1"]), 0, err.getvalue())
            return " ".join(err.getvalue().split())

        with tempfile.TemporaryDirectory() as d:
            volume = sitk.GetImageFromArray(np.arange(320, dtype=np.float32).reshape(1, 16, 20) + 1.0)
            volume.SetSpacing((1.5, 1.5, 3.0))
            volume.SetOrigin((-4.0, 2.0, 7.0))
            img = os.path.join(d, "slice.nrrd")
            sitk.WriteImage(volume, img)
            for size, noted in (((20, 16), None), ((10, 16), "50.0%")):
                field = sitk.Image(size, sitk.sitkVectorFloat32, 2) + 0.0
                field.SetSpacing((1.5, 1.5))
                field.SetOrigin((-4.0, 2.0))
                path = os.path.join(d, f"f{size[0]}.nii.gz")
                sitk.WriteImage(field, path)
                with self.subTest(size=size):
                    said = run("resample", img, "--reference", img, "-o", os.path.join(d, "o.nrrd"),
                               "--transform", path)
                    scored = run("evaluate-registration", img, img, "--transform", path)
                    if noted is None:
                        self.assertNotIn("does not cover", said + scored)
                        continue
                    self.assertIn(f"the displacement field '{path}' does not cover {noted} of the reference grid's",
                                  said)
                    self.assertIn(f"the displacement field '{path}' does not cover {noted} of the fixed image's",
                                  scored)

    def test_an_initial_field_that_does_not_cover_the_fixed_grid_gets_a_note(self):
        """register --initial-transform FIELD starts from no move where the fixed grid lies outside the field, as
        resample and evaluate-registration note for --transform; register had said nothing. It notes it (on stderr,
        and in metrics.json's warnings, with --json too); a field on the fixed grid gives no note."""
        import json
        from contextlib import redirect_stderr, redirect_stdout
        from io import StringIO

        from MultimodalFusionLib import cli

        with tempfile.TemporaryDirectory() as d:
            grid = np.indices((40, 36)).astype(np.float32)
            fixed = sitk.GetImageFromArray(100.0 * np.exp(-((grid[0] - 19) ** 2 + (grid[1] - 16) ** 2 / 2) / 40.0)
                                           .astype(np.float32))
            fixed.SetSpacing((1.5, 1.5))
            fixed.SetOrigin((-20.0, 10.0))
            img = os.path.join(d, "fixed.nrrd")
            sitk.WriteImage(fixed, img)

            def field_on(image, name):
                path = os.path.join(d, name)
                sitk.WriteImage(sitk.TransformToDisplacementField(
                    sitk.TranslationTransform(2, (0.6, -0.4)), sitk.sitkVectorFloat32, image.GetSize(),
                    image.GetOrigin(), image.GetSpacing(), image.GetDirection()), path)
                return path

            full = field_on(fixed, "out1Warp.nii.gz")
            half = field_on(sitk.RegionOfInterest(fixed, [18, 40], [0, 0]), "half1Warp.nii.gz")
            for field, noted in ((full, None), (half, "50.0%")):
                for json_flag in ([], ["--json"]):
                    with self.subTest(field=os.path.basename(field), json=bool(json_flag)):
                        out_dir = os.path.join(d, "out" + os.path.basename(field)[:4] + str(len(json_flag)))
                        with redirect_stdout(StringIO()), redirect_stderr(StringIO()) as err:
                            rc = cli.main(["register", img, img, "-o", out_dir, "--initial-transform", field,
                                           "--stages", "rigid", "--threads", "1", *json_flag])
                        said = " ".join(err.getvalue().split())
                        self.assertEqual(rc, 0, said)
                        with open(os.path.join(out_dir, "metrics.json")) as fh:
                            warnings = json.load(fh)["warnings"]
                        if noted is None:
                            self.assertNotIn("does not cover", said + " ".join(warnings))
                            continue
                        self.assertIn(f"warning: the displacement field '{field}' does not cover {noted} of the fixed "
                                      "image's voxels", said)
                        self.assertIn("Start from a field that covers the fixed image", said)
                        self.assertTrue(any(f"does not cover {noted}" in w for w in warnings), warnings)
                        # once: register() gives the note now, and the CLI had given it itself
                        self.assertEqual(said.count("does not cover"), 1, said)
                        self.assertEqual(" ".join(warnings).count("does not cover"), 1, warnings)

    def test_invert_of_an_ants_warp_names_ants_inverse_warp(self):
        """--invert of a displacement field is refused (no exact inverse here) with "register the other way round";
        for antsRegistration's out1Warp.nii.gz the inverse is a file ANTs wrote beside it, out1InverseWarp.nii.gz,
        which the refusal had not named: it names it (its path when it is there), and for a chain ANTs' inverse
        chain; a field not named as ANTs names its fields keeps the general words."""
        from contextlib import redirect_stderr, redirect_stdout
        from io import StringIO

        from MultimodalFusionLib import cli

        def refusal(*args):
            with redirect_stdout(StringIO()), redirect_stderr(StringIO()) as err:
                self.assertNotEqual(cli.main(list(args)), 0)
            return " ".join(err.getvalue().split())

        with tempfile.TemporaryDirectory() as d:
            img = os.path.join(d, "img.nrrd")
            sitk.WriteImage(sitk.Image([8, 7, 6], sitk.sitkFloat32) + 1.0, img)
            field = sitk.Image([8, 7, 6], sitk.sitkVectorFloat32, 3)
            warp, inverse = os.path.join(d, "out1Warp.nii.gz"), os.path.join(d, "out1InverseWarp.nii.gz")
            affine, other = os.path.join(d, "out0GenericAffine.mat"), os.path.join(d, "field.mha")
            sitk.WriteImage(field, warp)
            sitk.WriteImage(field, other)
            sitk.WriteTransform(sitk.AffineTransform(3), affine)
            out = ["-o", os.path.join(d, "o.nrrd")]
            said = refusal("resample", img, "--reference", img, *out, "--invert", "--transform", warp)
            self.assertIn("out1InverseWarp.nii.gz", said)  # not beside it: named, not as a path
            self.assertNotIn(f"--transform '{inverse}'", said)
            self.assertNotIn("Register the other way round", said)
            sitk.WriteImage(field, inverse)
            for command in (["resample", img, "--reference", img, *out], ["evaluate-registration", img, img]):
                with self.subTest(command=command[0]):
                    said = refusal(*command, "--invert", "--transform", warp)
                    self.assertIn(f"is '{inverse}', beside it: give it without --invert (--transform '{inverse}')",
                                  said)
                    said = refusal(*command, "--invert", "--transform", warp, "--transform", affine)
                    self.assertIn(f"antsApplyTransforms -t [{affine},1] -t {inverse}", said)
                    said = refusal(*command, "--invert", "--transform", inverse)  # and the other way round
                    self.assertIn(f"(--transform '{warp}')", said)
                    said = refusal(*command, "--invert", "--transform", other)
                    self.assertIn("Register the other way round", said)
                    self.assertNotIn("antsRegistration", said)

    def test_invert_of_a_chain_of_two_dimensions_keeps_its_fix(self):
        """--invert of a chain of an ANTs warp (3D) and a 2D transform is refused for the dimensions; the refusal had
        kept that problem but replaced its fix (transforms of one dimension) with ANTs' inverse chain of those
        very files (antsApplyTransforms -t [turn2d.tfm,1] -t out1InverseWarp.nii.gz), which cannot be applied
        either."""
        from contextlib import redirect_stderr, redirect_stdout
        from io import StringIO

        from MultimodalFusionLib import cli

        with tempfile.TemporaryDirectory() as d:
            img = os.path.join(d, "img.nrrd")
            sitk.WriteImage(sitk.Image([8, 7, 6], sitk.sitkFloat32) + 1.0, img)
            field = sitk.Image([8, 7, 6], sitk.sitkVectorFloat32, 3)
            warp, inverse = os.path.join(d, "out1Warp.nii.gz"), os.path.join(d, "out1InverseWarp.nii.gz")
            sitk.WriteImage(field, warp)
            sitk.WriteImage(field, inverse)
            flat = os.path.join(d, "turn2d.tfm")
            sitk.WriteTransform(sitk.Euler2DTransform(), flat)
            for command in (["resample", img, "--reference", img, "-o", os.path.join(d, "o.nrrd")],
                            ["evaluate-registration", img, img]):
                with self.subTest(command=command[0]):
                    with redirect_stdout(StringIO()), redirect_stderr(StringIO()) as err:
                        self.assertEqual(cli.main([*command, "--invert", "--transform", warp, "--transform", flat]),
                                         2)
                    said = " ".join(err.getvalue().split())
                    self.assertIn("different dimensions (2D and 3D)", said)
                    self.assertIn("Give transforms of the images' dimension only", said)
                    self.assertNotIn("antsApplyTransforms", said)

    def test_an_integer_displacement_field_is_named_for_its_type(self):
        """A field of integer vectors (as many components as axes, an int16 or int8 type) had been refused as "an
        image (...), not a transform", hiding the one thing wrong with it, its type: it is named as integer vectors
        where a field holds floating-point ones, with the cast that makes it one, which then reads. Unsigned
        vectors hold no negative displacement (the cast would read a -1 stored as 65535 as 65535 mm), and 8-bit RGB
        is a colour image (as fuse --method overlay writes): those are named as images, without the cast."""
        with tempfile.TemporaryDirectory() as d:
            for dim, pixel, name in ((3, sitk.sitkInt16, "out1Warp.nii.gz"), (2, sitk.sitkInt8, "w.mha"),
                                     (3, sitk.sitkInt32, "w.nrrd")):
                with self.subTest(name=name):
                    field = sitk.Compose([sitk.Image([6, 5, 4][:dim], pixel) + v for v in (2, 1, 3)[:dim]])
                    path = os.path.join(d, name)
                    sitk.WriteImage(field, path)
                    with self.assertRaises(InputError) as cm:
                        io.read_transform(path)
                    self.assertIn(sitk.GetPixelIDValueAsString(field.GetPixelID()), cm.exception.problem)
                    self.assertIn("must hold floating-point vectors", cm.exception.problem)
                    self.assertNotIn("is an image", cm.exception.problem)
                    self.assertIn("sitk.Cast(sitk.ReadImage(IN), sitk.sitkVectorFloat32)", cm.exception.fix)
                    fixed = os.path.join(d, "float_" + name)  # the fix as the message gives it
                    sitk.WriteImage(sitk.Cast(sitk.ReadImage(path), sitk.sitkVectorFloat32), fixed)
                    np.testing.assert_allclose(io.read_transform(fixed).TransformPoint([1.0] * dim),
                                               [3.0, 2.0, 4.0][:dim])
            for dim, pixel, name in ((3, sitk.sitkUInt8, "overlay.nii.gz"), (2, sitk.sitkUInt16, "u.mha")):
                with self.subTest(name=name):
                    path = os.path.join(d, name)
                    sitk.WriteImage(sitk.Compose([sitk.Image([6, 5, 4][:dim], pixel) + 9] * dim), path)
                    with self.assertRaises(InputError) as cm:
                        io.read_transform(path)
                    self.assertIn("is an image", cm.exception.problem)
                    self.assertIn("not a transform", cm.exception.problem)
                    self.assertNotIn("sitkVectorFloat32", cm.exception.fix)
            # a grey image is still an image, not a transform
            grey = os.path.join(d, "grey.nrrd")
            sitk.WriteImage(sitk.Image([6, 5, 4], sitk.sitkInt16), grey)
            with self.assertRaises(InputError) as cm:
                io.read_transform(grey)
            self.assertIn("not a transform", cm.exception.problem)

    def test_a_scaled_nifti_vector_field_is_refused_not_misread(self):
        """A NIfTI displacement field (intent VECTOR, 5th axis the components) whose header scales its values
        (scl_slope/scl_inter): ITK 5.4's reader scales only the first third of the buffer, so a float field read as
        --transform moved two thirds of the voxels by the unscaled vector without a word, and an int16 one aborted
        the process (heap corruption). Both are refused before ITK reads them; unscaled, the field is read."""
        import struct

        with tempfile.TemporaryDirectory() as d:
            field = sitk.Compose([sitk.Image([6, 5, 4], sitk.sitkFloat32) + v for v in (2.0, -4.0, 6.0)])
            plain = os.path.join(d, "plain.nii")
            sitk.WriteImage(field, plain)  # intent VECTOR, dim[5] = 3, as ANTs writes its warps
            np.testing.assert_allclose(io.read_transform(plain).TransformPoint((1.0, 1.0, 1.0)), (3.0, -3.0, 7.0))
            with open(plain, "rb") as fh:
                data = bytearray(fh.read())
            self.assertEqual(struct.unpack("<h", data[68:70])[0], 1007)
            data[112:120] = struct.pack("<ff", 0.5, 0.0)  # scl_slope 0.5: the field is (1, -2, 3) mm
            scaled = os.path.join(d, "scaled.nii")
            with open(scaled, "wb") as fh:
                fh.write(data)
            for reader in (io.read_transform, lambda p: io.read_image(p, keep_color=True)):
                with self.assertRaises(InputError) as cm:
                    reader(scaled)
                self.assertIn("scl_slope 0.5", cm.exception.problem)
                self.assertIn("unscaled", cm.exception.fix)
            # int16 vectors with a slope: ITK aborted the process, so read in a child process
            ints = os.path.join(d, "ints.nii")
            sitk.WriteImage(sitk.Cast(field, sitk.sitkVectorInt16), ints)
            with open(ints, "r+b") as fh:
                fh.seek(112)
                fh.write(struct.pack("<ff", 0.5, 0.0))
            code = ("import sys; from MultimodalFusionLib import io; from MultimodalFusionLib.errors import InputError\n"
                    "try:\n    io.read_transform(sys.argv[1])\nexcept InputError as exc:\n    print('refused:', exc)")
            done = subprocess.run([sys.executable, "-c", code, ints], capture_output=True, text=True, timeout=120,
                                  env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
            self.assertEqual(done.returncode, 0, done.stderr[-500:])
            self.assertIn("refused:", done.stdout)
            self.assertIn("scl_slope 0.5", done.stdout)

    def test_transform_files_with_upper_case_extensions(self):
        """ITK picks its transform reader by the extension in lower case only: read_transform('T.TFM') (and
        mmfusion's --transform / --initial-transform) had said "Could not create Transform IO object ... Give an
        ITK transform file (.tfm, ...)" of a .tfm file that write_transform had written."""
        from contextlib import redirect_stderr, redirect_stdout
        from io import StringIO

        from MultimodalFusionLib import cli

        rigid = sitk.Euler2DTransform((8.0, 9.0), 0.05, (1.5, -2.0))
        p = (3.0, 4.0)
        with tempfile.TemporaryDirectory() as d:
            for name in ("T.TFM", "T.TXT", "T.H5", "T.MAT", "t.Tfm"):
                with self.subTest(name=name):
                    path = io.write_transform(rigid, os.path.join(d, name))
                    lower = os.path.join(d, "lower" + os.path.splitext(name)[1].lower())
                    shutil.copyfile(path, lower)  # written in the format its extension names
                    np.testing.assert_allclose(sitk.ReadTransform(lower).TransformPoint(p), rigid.TransformPoint(p))
                    np.testing.assert_allclose(io.read_transform(path).TransformPoint(p), rigid.TransformPoint(p))
            bad = os.path.join(d, "BAD.TFM")
            with open(bad, "w") as f:
                f.write("not a transform\n")
            with self.assertRaises(InputError) as cm:
                io.read_transform(bad)
            self.assertIn("BAD.TFM", cm.exception.problem)
            self.assertNotIn("mmf-transform", str(cm.exception))
            arr = np.zeros((32, 32), np.float32)
            arr[8:20, 10:24] = 1.0
            image = os.path.join(d, "a.nii.gz")
            sitk.WriteImage(sitk.GetImageFromArray(arr), image)
            for argv in (["resample", image, "--reference", image, "--transform", os.path.join(d, "T.MAT"),
                          "-o", os.path.join(d, "r.nii.gz")],
                         ["register", image, image, "--initial-transform", os.path.join(d, "T.TFM"),
                          "-o", os.path.join(d, "reg")]):
                out, err = StringIO(), StringIO()
                with redirect_stdout(out), redirect_stderr(err):
                    rc = cli.main(argv)
                with self.subTest(command=argv[0]):
                    self.assertEqual(rc, 0, err.getvalue())

    def test_grey_alpha_png(self):
        """A grey+alpha PNG (colour type 4: SimpleITK's 2-component uint8/uint16 image, PIL's mode "LA") was no
        image at all: ITK's reader says "Unknown PixelType: unsigned_char(1)", given as "ITK failed while reading".
        It reads as its grey (exactly, in its own 8 or 16 bits), and with keep_color as RGBA (grey, grey, grey,
        alpha) where it has transparency, so that mmfusion resample keeps the alpha as it does an RGBA picture's."""
        from contextlib import redirect_stderr, redirect_stdout
        from io import StringIO

        from PIL import Image

        from MultimodalFusionLib import cli

        grey8 = (np.arange(20 * 30).reshape(20, 30) % 251).astype(np.uint8)
        alpha8 = np.full_like(grey8, 255)
        alpha8[:5] = 0  # a transparent border
        grey16 = grey8.astype(np.uint16) * 257 + 3
        alpha16 = alpha8.astype(np.uint16) * 257
        with tempfile.TemporaryDirectory() as d:
            files = {}
            for name, grey, alpha in (("itk8.png", grey8, alpha8), ("itk16.png", grey16, alpha16),
                                      ("opaque16.png", grey16, np.full_like(grey16, 65535))):
                image = sitk.GetImageFromArray(np.stack([grey, alpha], axis=-1), isVector=True)
                image.SetSpacing((0.5, 0.25))
                files[name] = (os.path.join(d, name), grey, alpha)
                sitk.WriteImage(image, files[name][0])
            files["pil8.png"] = (os.path.join(d, "pil8.png"), grey8, alpha8)
            Image.fromarray(np.stack([grey8, alpha8], axis=-1), "LA").save(files["pil8.png"][0])
            for name, (path, grey, alpha) in files.items():
                with open(path, "rb") as f:
                    self.assertEqual(f.read(26)[25], 4, "a grey+alpha PNG")
                with self.subTest(name=name):
                    plain = io.read_image(path)
                    self.assertEqual(plain.GetNumberOfComponentsPerPixel(), 1)
                    self.assertEqual(sitk.GetArrayViewFromImage(plain).dtype, grey.dtype)
                    np.testing.assert_array_equal(sitk.GetArrayFromImage(plain), grey)
                    self.assertEqual(plain.GetSpacing(), (1.0, 1.0) if name.startswith("pil") else (0.5, 0.25))
                    colour = io.read_image(path, keep_color=True)
                    if name.startswith("opaque"):  # nothing to keep but the grey
                        np.testing.assert_array_equal(sitk.GetArrayFromImage(colour), grey)
                        continue
                    np.testing.assert_array_equal(sitk.GetArrayFromImage(colour),
                                                  np.stack([grey, grey, grey, alpha], axis=-1))
                    out = os.path.join(d, "resampled-" + name)
                    err = StringIO()
                    with redirect_stdout(StringIO()), redirect_stderr(err):
                        rc = cli.main(["resample", path, "--reference", path, "-o", out])
                    self.assertEqual(rc, 0, err.getvalue())
                    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(out))[..., 3], alpha)

    def test_an_rgba_pictures_alpha_left_unused_is_named(self):
        """An RGBA PNG whose alpha is a mask (a transparent background) was registered, fused and trained on as its
        colour alone without a word (mmfusion fuse, train-fusion: rc 0, nothing on stderr). read_image, which every
        front end reads through, now warns once, naming the file and the share of transparent pixels, read as grey
        or in colour, a grey+alpha PNG too; an opaque picture (alpha one value) loses nothing and reads silently,
        and ``keep_alpha`` (mmfusion resample, info: the alpha kept) reads without the warning."""
        from contextlib import redirect_stderr, redirect_stdout
        from io import StringIO

        from PIL import Image

        from MultimodalFusionLib import cli

        rng = np.random.default_rng(7)
        colour = rng.integers(0, 256, (20, 24, 3)).astype(np.uint8)
        alpha = np.full((20, 24), 255, np.uint8)
        alpha[:, :6] = 0  # a transparent background: 25% of the pixels
        with tempfile.TemporaryDirectory() as d:
            masked, opaque, grey_alpha = (os.path.join(d, n) for n in ("masked.png", "opaque.png", "grey.png"))
            Image.fromarray(np.dstack([colour, alpha]), "RGBA").save(masked)
            Image.fromarray(np.dstack([colour, np.full_like(alpha, 255)]), "RGBA").save(opaque)
            Image.fromarray(np.dstack([colour[..., 0], alpha]), "LA").save(grey_alpha)
            for path, keep_color in ((masked, False), (masked, True), (grey_alpha, False), (grey_alpha, True)):
                with self.subTest(path=os.path.basename(path), keep_color=keep_color):
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        io.read_image(path, keep_color=keep_color)
                    said = [str(w.message) for w in caught if "alpha" in str(w.message)]
                    self.assertEqual(len(said), 1, [str(w.message) for w in caught])
                    self.assertIn(f"'{path}'", said[0])
                    self.assertIn("25.0% of its pixels transparent", said[0])
                    self.assertIn("the alpha is not used", said[0])
            for path, keep in ((opaque, False), (masked, True), (grey_alpha, True)):
                with self.subTest(path=os.path.basename(path), keep_alpha=keep), warnings.catch_warnings():
                    warnings.simplefilter("error")
                    io.read_image(path, keep_color=True, keep_alpha=keep)
            # the command line: once per image (fuse), and nothing from resample, which keeps the alpha
            for argv, times in ((["fuse", masked, opaque, "--method", "average", "-o", os.path.join(d, "f.png")], 1),
                                (["resample", masked, "--reference", masked, "-o", os.path.join(d, "r.png")], 0)):
                err = StringIO()
                with redirect_stdout(StringIO()), redirect_stderr(err), warnings.catch_warnings():
                    warnings.simplefilter("default")  # Python's, which the command line has
                    rc = cli.main(argv)
                with self.subTest(command=argv[0]):
                    self.assertEqual(rc, 0, err.getvalue())
                    said = [line for line in err.getvalue().splitlines() if "alpha is not used" in line]
                    self.assertEqual(len(said), times, err.getvalue())
                    self.assertTrue(all(line.startswith(f"warning: '{masked}'") for line in said), said)

    def test_a_vector_image_of_four_components_is_not_called_an_rgba_picture(self):
        """A 4-component unsigned image whose file says its components are a vector (NRRD kind 4-vector: four echoes,
        gradients) is no picture: fuse refuses it as "not a colour picture". read_image had first warned that it was
        "an RGBA picture whose alpha is not one value (99.5% ... transparent)", the fourth component taken for an
        alpha, and the command then said the opposite. Now only the refusal is said."""
        from contextlib import redirect_stderr, redirect_stdout
        from io import StringIO

        from MultimodalFusionLib import cli

        rng = np.random.default_rng(3)
        echoes = rng.integers(0, 1000, (3, 16, 18, 4)).astype(np.uint16)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "echoes.nrrd")
            sitk.WriteImage(sitk.GetImageFromArray(echoes, isVector=True), path)
            with open(path, "rb") as f:
                data = f.read()
            self.assertIn(b"kinds: vector ", data)
            with open(path, "wb") as f:
                f.write(data.replace(b"kinds: vector ", b"kinds: 4-vector ", 1))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                image = io.read_image(path, keep_color=True)
            self.assertEqual(image.GetNumberOfComponentsPerPixel(), 4)
            self.assertEqual([str(w.message) for w in caught if "alpha" in str(w.message)], [])
            err = StringIO()
            with redirect_stdout(StringIO()), redirect_stderr(err), warnings.catch_warnings():
                warnings.simplefilter("default")
                rc = cli.main(["fuse", path, path, "--method", "average", "-o", os.path.join(d, "f.nii.gz")])
            self.assertNotEqual(rc, 0)
            self.assertIn("not a colour picture", err.getvalue())
            self.assertNotIn("alpha", err.getvalue())  # the command prints warnings on stderr

    def test_grey_png_with_a_transparency_colour(self):
        """A grey PNG with a tRNS chunk (PIL's mode "L" saved with transparency=N; 1 to 16 bits) failed as grey+alpha
        ones did: libpng turns the transparent value into an alpha channel, which ITK refuses ("Unknown PixelType:
        unsigned_char(1)"). It reads as its grey, and with keep_color as (grey, grey, grey, alpha), the alpha 0
        where the grey is the transparent value; a tRNS of a value no pixel has leaves the grey alone."""
        import struct
        import zlib

        from PIL import Image

        def chunk(kind: bytes, body: bytes) -> bytes:
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

        def grey_png(values: np.ndarray, depth: int, transparent: int) -> bytes:
            h, w = values.shape
            if depth < 8:  # pixels packed into bytes, the first in the high bits
                per = 8 // depth
                padded = np.zeros((h, -(-w // per) * per), np.uint8)
                padded[:, :w] = values
                rows = (padded.reshape(h, -1, per) << (np.arange(per - 1, -1, -1) * depth)).sum(-1).astype(np.uint8)
            else:
                rows = values.astype(">u2" if depth == 16 else np.uint8)
            raw = b"".join(b"\x00" + row.tobytes() for row in rows)
            return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, 0, 0, 0, 0))
                    + chunk(b"tRNS", struct.pack(">H", transparent)) + chunk(b"IDAT", zlib.compress(raw))
                    + chunk(b"IEND", b""))

        rng = np.random.default_rng(0)
        with tempfile.TemporaryDirectory() as d:
            for depth in (2, 8, 16):
                values = rng.integers(0, 2 ** depth, (7, 11)).astype(np.uint16 if depth == 16 else np.uint8)
                path = os.path.join(d, f"grey{depth}.png")
                with open(path, "wb") as f:
                    f.write(grey_png(values, depth, int(values[0, 0])))
                grey = values * (255 // (2 ** depth - 1)) if depth < 8 else values  # ITK widens 2 bits to 8
                with self.subTest(depth=depth):
                    plain = io.read_image(path)
                    self.assertEqual(plain.GetNumberOfComponentsPerPixel(), 1)
                    np.testing.assert_array_equal(sitk.GetArrayFromImage(plain), grey)
                    colour = sitk.GetArrayFromImage(io.read_image(path, keep_color=True))
                    alpha = np.where(values == values[0, 0], 0, np.iinfo(grey.dtype).max)
                    np.testing.assert_array_equal(colour, np.stack([grey, grey, grey, alpha], axis=-1))
            g = rng.integers(0, 200, (10, 12)).astype(np.uint8)
            pil, unused = os.path.join(d, "pil.png"), os.path.join(d, "unused.png")
            Image.fromarray(g, "L").save(pil, transparency=int(g[0, 0]))
            Image.fromarray(g, "L").save(unused, transparency=250)  # no pixel of that value: opaque
            colour = sitk.GetArrayFromImage(io.read_image(pil, keep_color=True))
            np.testing.assert_array_equal(colour[..., 3], np.asarray(Image.open(pil).convert("LA"))[..., 1])
            np.testing.assert_array_equal(sitk.GetArrayFromImage(io.read_image(unused, keep_color=True)), g)

    def test_damaged_grey_alpha_png(self):
        """A grey+alpha PNG is read through a relabelled copy in a temporary folder, whose chunks get new CRCs:
        a truncated or damaged file was refused naming that copy ('Error while reading file:
        /tmp/mmfusion-png-.../grey-alpha.png', gone when the message is read), a damaged sCAL chunk was read as
        good (libpng drops it: spacing 1), and a temporary folder that cannot be written to gave a traceback."""
        import struct
        import zlib

        from PIL import Image

        rng = np.random.default_rng(0)
        grey, alpha = rng.integers(0, 256, (20, 30)).astype(np.uint8), rng.integers(0, 256, (20, 30)).astype(np.uint8)
        with tempfile.TemporaryDirectory() as d:
            plain = os.path.join(d, "plain.png")
            Image.fromarray(np.stack([grey, alpha], axis=-1), "LA").save(plain)
            with open(plain, "rb") as f:
                data = f.read()
            scal = b"sCAL" + b"\x01" + b"0.5\x000.25"
            scaled = data[:33] + struct.pack(">I", len(scal) - 4) + scal + struct.pack(">I", zlib.crc32(scal)) + data[33:]
            idat = scaled.index(b"IDAT")
            truncated = scaled[:idat + 30]
            damaged_idat = bytearray(scaled)
            damaged_idat[idat + 10] ^= 0x01
            damaged_scal = scaled.replace(b"0.5\x000.25", b"0.7\x000.25")  # its CRC now wrong
            files = {}
            for name, blob in (("scaled", scaled), ("truncated", truncated), ("damaged_idat", bytes(damaged_idat)),
                               ("damaged_scal", damaged_scal)):
                files[name] = os.path.join(d, name + ".png")
                with open(files[name], "wb") as f:
                    f.write(blob)
            self.assertEqual(io.read_image(files["scaled"]).GetSpacing(), (0.5, 0.25))
            image = io.read_image(files["damaged_scal"], keep_color=True)
            self.assertEqual(image.GetSpacing(), (1.0, 1.0))  # as libpng reads any other PNG's damaged sCAL
            np.testing.assert_array_equal(sitk.GetArrayFromImage(image)[..., 3], alpha)
            for name, words in (("truncated", "ends inside its IDAT chunk"), ("damaged_idat", "damaged")):
                with self.subTest(name=name), self.assertRaises(InputError) as cm:
                    io.read_image(files[name])
                self.assertIn(files[name], cm.exception.problem)
                self.assertIn(words, cm.exception.problem)
                self.assertNotIn("grey-alpha.png", str(cm.exception))
            saved = tempfile.tempdir
            tempfile.tempdir = os.path.join(d, "no such folder")
            try:
                with self.assertRaises(InputError) as cm:
                    io.read_image(files["scaled"])
            finally:
                tempfile.tempdir = saved
            self.assertIn("temporary folder", cm.exception.problem)
            self.assertIn("TMPDIR", cm.exception.fix)
            self.assertEqual(sorted(os.listdir(d)), sorted(os.path.basename(p) for p in [plain, *files.values()]))

    def test_png_colour_to_grey(self):
        from MultimodalFusionLib import data

        img = io.read_image(data.testing_data_dir() / "BrainT1SliceBorder20.png")
        self.assertEqual(img.GetNumberOfComponentsPerPixel(), 1)
        self.assertEqual(img.GetDimension(), 2)
        rgb = io.read_image(data.testing_data_dir() / "BrainT1SliceBorder20.png", keep_color=True)
        self.assertEqual(rgb.GetNumberOfComponentsPerPixel(), 3)


class NumberText(unittest.TestCase):
    def test_one_rule_for_every_printed_number(self) -> None:
        # NaN and None: nothing compared; inf: a registration metric with no valid sample point (it had printed
        # "inf", the report "∞"); an infinity that is a value (PSNR of identical images) only where it is said how
        self.assertEqual([io.number_text(v) for v in (None, float("nan"), float("inf"), "text")], ["n/a"] * 4)
        self.assertEqual(io.number_text(float("-inf"), ".3f", infinity="inf"), "-inf")
        self.assertEqual(io.number_text(float("inf"), infinity="∞"), "∞")
        self.assertEqual((io.number_text(1.23456), io.number_text(-0.0, ".3f"), io.number_text(np.float32(2.5), ".1f")),
                         ("1.235", "0.000", "2.5"))
        # an integer beyond float's range is an infinity, not a traceback (OverflowError)
        self.assertEqual((io.number_text(10 ** 400, infinity="inf"), io.number_text(-10 ** 400)), ("inf", "n/a"))


class Errors(unittest.TestCase):
    def test_missing_empty_and_garbage_files(self):
        with tempfile.TemporaryDirectory() as d:
            with self.assertRaises(InputError) as cm:
                io.read_image(os.path.join(d, "nope.nii.gz"))
            self.assertIn("not found", str(cm.exception))
            empty = os.path.join(d, "empty.nii.gz")
            open(empty, "wb").close()
            with self.assertRaises(InputError) as cm:
                io.read_image(empty)
            self.assertIn("empty", str(cm.exception))
            garbage = os.path.join(d, "garbage.nii.gz")
            with open(garbage, "wb") as fh:
                fh.write(b"this is not an image" * 10)
            with self.assertRaises(InputError) as cm:
                io.read_image(garbage)
            self.assertIn("garbage.nii.gz", str(cm.exception))
            self.assertNotIn("Traceback", str(cm.exception))

    def test_folder_with_two_dicom_series(self):
        with tempfile.TemporaryDirectory() as d:
            _write_dicom_series(d, "1.2.826.0.1.3680043.2.1125.101", "AXIAL_A", 10)
            _write_dicom_series(d, "1.2.826.0.1.3680043.2.1125.202", "AXIAL_B", 500)
            with self.assertRaises(InputError) as cm:
                io.read_image(d)
            msg = str(cm.exception)
            self.assertIn("2 DICOM series", msg)
            self.assertIn("1.2.826.0.1.3680043.2.1125.101", msg)
            self.assertIn("AXIAL_B", msg)
            self.assertIn("--series", msg)
            b = io.read_image(d, series="AXIAL_B")
            self.assertEqual(b.GetSize(), (8, 8, 3))
            self.assertGreaterEqual(float(sitk.GetArrayViewFromImage(b).min()), 500)
            a = io.read_image(d, series="1.2.826.0.1.3680043.2.1125.101")
            self.assertLess(float(sitk.GetArrayViewFromImage(a).max()), 20)
            # the --series the message advises exists on every command reading two or more images (fuse and
            # evaluate had none: "unrecognized arguments")
            import contextlib
            import io as _io
            import json

            from MultimodalFusionLib.cli import main

            out_dir = tempfile.TemporaryDirectory()
            self.addCleanup(out_dir.cleanup)
            fused = os.path.join(out_dir.name, "fused.nii.gz")
            with contextlib.redirect_stdout(_io.StringIO()):
                self.assertEqual(main(["fuse", d, d, "--a-series", "AXIAL_A", "--b-series", "AXIAL_B", "-o", fused]), 0)
            out = _io.StringIO()
            with contextlib.redirect_stdout(out):
                self.assertEqual(main(["evaluate", "--fused", fused, d, d, "--series", "AXIAL_A", "--json"]), 0)
            self.assertIn("SSIM", json.loads(out.getvalue()))


def _pydicom_series(folder: str, *, z=(0.0, 3.0, 6.0, 9.0, 12.0, 15.0), drop=(), slopes=None) -> np.ndarray:
    """A small PET-like series written with pydicom; returns the true values (slices, rows, cols)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    series, study = generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    truth = []
    for k, zk in enumerate(z):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.128"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(os.path.join(folder, f"s{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "PT", series, study
        ds.PatientName, ds.PatientID = "Doe^Jane", "12345"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [0.0, 0.0, zk]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [1.5, 1.5]
        ds.SliceThickness = 3.0
        ds.Rows = ds.Columns = 16
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        stored = rng.integers(0, 3000, (16, 16)).astype(np.uint16)
        slope = 1.0 if slopes is None else slopes[k]
        ds.RescaleSlope, ds.RescaleIntercept = slope, 0
        ds.PixelData = stored.tobytes()
        for name in drop:
            delattr(ds, name)
        ds.save_as(ds.filename, enforce_file_format=True)
        truth.append(stored * slope)
    return np.array(truth)


class ItkErrorText(unittest.TestCase):
    """ITK's own words stay in an error, without its noise: no object address, no source file and line."""

    def test_real_itk_failures_read_as_one_sentence_and_a_fix(self) -> None:
        with tempfile.TemporaryDirectory() as d:
            def write(name: str, payload: bytes) -> str:
                with open(os.path.join(d, name), "wb") as fh:
                    fh.write(payload)
                return os.path.join(d, name)

            sitk.WriteTransform(sitk.AffineTransform(3), os.path.join(d, "affine3.tfm"))
            with open(os.path.join(d, "affine3.tfm")) as fh:
                affine3 = fh.read()
            sitk.WriteImage(sitk.Image([16, 16], sitk.sitkUInt8) + 7, os.path.join(d, "whole.png"))
            with open(os.path.join(d, "whole.png"), "rb") as fh:
                png = fh.read()
            cases = [  # (read, file, ITK's reason that must stay)
                (io.read_transform, write("notes.txt", b"hello\nnot a transform\n"), "Tags must be delimited by"),
                # a 3D affine holding a 2D affine's 6 parameters: a transform file of the wrong dimension
                (io.read_transform, write("wrong_dim.tfm", affine3.replace(
                    "Parameters: 1 0 0 0 1 0 0 0 1 0 0 0", "Parameters: 1 0 0 1 0 0").encode()),
                 "parameters array size (6) is less than expected"),
                (io.read_transform, write("unknown.tfm", affine3.replace("AffineTransform", "FooTransform").encode()),
                 'Could not create an instance of "FooTransform_double_3_3"'),
                (io.read_transform, os.path.join(d, "whole.png"),
                 "Could not create Transform IO object for reading file"),
                (io.read_image, write("cut.png", png[:len(png) // 2]), "PNG critical error"),
            ]
            for read, path, reason in cases:
                with self.subTest(file=os.path.basename(path)), self.assertRaises(InputError) as cm:
                    read(path)
                text = str(cm.exception)
                with self.subTest(file=os.path.basename(path)):
                    self.assertIn(reason, text)
                    self.assertIn(path, text)
                    self.assertIn(" Fix: ", text)
                    self.assertNotIn("\n", text)
                    for noise in ("ITK ERROR", "(0x", ".cxx", ".hxx", "Exception thrown", "sitk::ERROR",
                                  "Registered Transforms", "_float_3_3", "Tried to create", "TransformFactory"):
                        self.assertNotIn(noise, text)
                    self.assertRegex(cm.exception.problem, r"[.!?]$")  # a sentence, ended


    def test_an_elastix_parameter_file_is_read_or_named_as_one_with_the_way_to_the_itk_file(self) -> None:
        """elastix' TransformParameters.0.txt, given as --transform or --initial-transform, had been refused in ITK's
        words, "Tags must be delimited by ':'", with the fix "Give an ITK transform file": nothing said that the
        file is elastix' own format nor how to have elastix write the ITK one. It is now read (see
        test_elastix_transforms.py); a kind not converted is named, with that way to the ITK file."""
        from contextlib import redirect_stderr, redirect_stdout
        from io import StringIO

        from MultimodalFusionLib import cli

        elastix = ('// elastix 5 writes this after a registration\n(Transform "EulerTransform")\n'
                   "(NumberOfParameters 6)\n(TransformParameters 0.07 0 0.12 5 -3 2)\n"
                   '(InitialTransformParametersFileName "NoInitialTransform")\n(FixedImageDimension 3)\n'
                   "(CenterOfRotationPoint 7.5 7.5 7.5)\n")
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "TransformParameters.0.txt")
            with open(path, "w") as fh:
                fh.write(elastix)
            tx = io.read_transform(path)
            self.assertEqual(tx.GetName(), "Euler3DTransform")
            np.testing.assert_allclose(tx.GetParameters(), (0.07, 0, 0.12, 5, -3, 2))
            np.testing.assert_allclose(tx.GetFixedParameters()[:3], (7.5, 7.5, 7.5))
            with open(path, "w") as fh:
                fh.write(elastix.replace("EulerTransform", "SplineKernelTransform"))
            with self.assertRaises(InputError) as cm:
                io.read_transform(path)
            self.assertIn("elastix transform parameter file (elastix' own format) of a SplineKernelTransform",
                          cm.exception.problem)
            self.assertIn(path, cm.exception.problem)
            self.assertIn('(ITKTransformOutputFileNameExtension "tfm")', cm.exception.fix)
            image = os.path.join(d, "i.nii.gz")
            sitk.WriteImage(sitk.Image([16, 16, 16], sitk.sitkFloat32) + 1.0, image)
            err = StringIO()
            with redirect_stdout(StringIO()), redirect_stderr(err):
                rc = cli.main(["resample", image, "--reference", image, "--transform", path,
                               "-o", os.path.join(d, "r.nii.gz")])
            self.assertEqual(rc, 2)
            self.assertIn("is an elastix transform parameter file", err.getvalue())
            self.assertFalse(os.path.exists(os.path.join(d, "r.nii.gz")))
            # a text file that is neither keeps ITK's reason
            with open(os.path.join(d, "notes.txt"), "w") as fh:
                fh.write("(not elastix)\nhello\n")
            with self.assertRaises(InputError) as cm:
                io.read_transform(os.path.join(d, "notes.txt"))
            self.assertIn("Tags must be delimited by", cm.exception.problem)

    def test_a_registration_failure_keeps_itk_reason_without_the_noise(self) -> None:
        from MultimodalFusionLib.errors import itk_reason

        fixed = sitk.GetImageFromArray(np.random.default_rng(0).random((12, 12, 12)).astype(np.float32))
        moving = sitk.Image(fixed)
        moving.SetOrigin((500.0, 500.0, 500.0))  # no sample of the fixed image lands in it
        method = sitk.ImageRegistrationMethod()
        method.SetMetricAsMattesMutualInformation(32)
        method.SetOptimizerAsGradientDescent(1.0, 5)
        method.SetInitialTransform(sitk.TranslationTransform(3))
        with self.assertRaises(RuntimeError) as cm:
            method.Execute(fixed, moving)
        self.assertIn("ITK ERROR", str(cm.exception))  # what ITK says, noise included
        reason = itk_reason(str(cm.exception))
        self.assertTrue(reason.startswith("All samples map outside moving image buffer."), reason)
        self.assertNotIn("0x", reason)
        self.assertNotIn("Mattes", reason)


class NiftiReaderGaps(unittest.TestCase):
    """What ITK's NIfTI reader does silently: pads a truncated file with zeros, reads NaN/inf as 0."""

    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.arr = np.random.default_rng(3).normal(100, 20, (6, 7, 8)).astype(np.float32)
        self.arr[2, 3, 4], self.arr[5, 6, 7], self.arr[0, 0, 1] = np.nan, np.inf, -np.inf

    def _path(self, name: str) -> str:
        return os.path.join(self.tmp.name, name)

    def test_a_truncated_file_is_refused_not_padded_with_zeros(self) -> None:
        whole = sitk.GetImageFromArray(np.nan_to_num(self.arr, posinf=0, neginf=0))
        for name, pixel in (("t.nii.gz", sitk.sitkFloat32), ("t.nii", sitk.sitkFloat32),
                            ("i.nii.gz", sitk.sitkInt16), ("i.nii", sitk.sitkInt16)):
            sitk.WriteImage(sitk.Cast(whole, pixel), self._path("whole_" + name))
            with open(self._path("whole_" + name), "rb") as fh:
                payload = fh.read()
            with open(self._path(name), "wb") as fh:
                fh.write(payload[:len(payload) * 2 // 3])
            with self.subTest(name=name), self.assertRaises(InputError) as cm:
                io.read_image(self._path(name))
            self.assertIn("is truncated", str(cm.exception))
            self.assertIn(name, str(cm.exception))
            io.read_image(self._path("whole_" + name))  # the complete file reads

    def test_a_wrong_bitpix_does_not_make_a_complete_file_truncated(self) -> None:
        """ITK (nifti1_io) sizes a voxel by the datatype and ignores bitpix; the truncation check took
        bitpix and refused a complete float32 file whose header said 64 bits, which ITK reads whole."""
        sitk.WriteImage(sitk.GetImageFromArray(self.arr), self._path("bitpix.nii"))
        with open(self._path("bitpix.nii"), "r+b") as fh:
            fh.seek(72)  # bitpix, after the datatype (bytes 70-71): 32 -> 64
            fh.write(np.array([64], "<i2").tobytes())
        self.assertEqual(sitk.ReadImage(self._path("bitpix.nii")).GetSize(), (8, 7, 6))
        got = sitk.GetArrayFromImage(io.read_image(self._path("bitpix.nii")))
        np.testing.assert_array_equal(got, self.arr)  # NaN/inf put back where they are, too

    def test_nan_and_inf_voxels_are_kept_where_they_are(self) -> None:
        for name, dtype in (("f.nii.gz", np.float32), ("d.nii", np.float64)):
            sitk.WriteImage(sitk.GetImageFromArray(self.arr.astype(dtype)), self._path(name))
            got = sitk.GetArrayFromImage(io.read_image(self._path(name)))
            with self.subTest(name=name):
                np.testing.assert_array_equal(got, self.arr.astype(dtype))  # NaN == NaN here
                self.assertTrue(np.isposinf(got[5, 6, 7]) and np.isneginf(got[0, 0, 1]))
        # scl_slope 2, scl_inter 1 (bytes 112-119 of a NIfTI-1 header): ITK reads a NaN as 0 * 2 + 1
        sitk.WriteImage(sitk.GetImageFromArray(self.arr), self._path("scaled.nii"))
        with open(self._path("scaled.nii"), "r+b") as fh:
            fh.seek(112)
            fh.write(np.array([2.0, 1.0], "<f4").tobytes())
        got = sitk.GetArrayFromImage(io.read_image(self._path("scaled.nii")))
        self.assertTrue(np.isnan(got[2, 3, 4]))
        self.assertEqual(int(np.count_nonzero(~np.isfinite(got))), 3)
        self.assertAlmostEqual(float(got[1, 1, 1]), 2 * float(self.arr[1, 1, 1]) + 1, places=3)

    def test_a_float_nii_gz_holding_zeros_is_decompressed_once(self) -> None:
        """The NaN/inf pass decompressed every float .nii.gz holding zeros (a zero background: most PET and maps) a
        second time, 0.22 s on 256^3 float32 (read_image 0.43 s, SimpleITK 0.21 s). Without NaN/inf, ITK's voxels
        are checked against the stream's CRC-32 instead: Python inflates only the header. Little- and big-endian,
        with a header extension (nibabel), and a pair's .img.gz; read exactly as ITK reads them."""
        import gzip

        import nibabel as nib

        inflated = []
        real = io._gunzip_blocks

        def counting(path: str, block: int = 1 << 24):
            for out in real(path, block):
                inflated.append(len(out))
                yield out

        data = np.random.default_rng(4).normal(100, 20, (20, 18, 16)).astype(np.float32)
        data[:, :5] = 0  # a zero background
        files = {}
        for name, endian in (("le.nii.gz", "<"), ("be.nii.gz", ">")):
            header = nib.Nifti1Header(endianness=endian)
            image = nib.Nifti1Image(data.astype(endian + "f4"), np.diag([1.5, 1.0, 2.0, 1.0]), header)
            image.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"a comment, 32 bytes long........"))
            files[name] = self._path(name)
            nib.save(image, files[name])
        sitk.WriteImage(sitk.GetImageFromArray(data.transpose()), self._path("pair.hdr"))
        with open(self._path("pair.img"), "rb") as fh, gzip.open(self._path("pair.img.gz"), "wb") as out:
            out.write(fh.read())
        os.remove(self._path("pair.img"))
        files["pair.hdr"] = self._path("pair.hdr")
        with open(files["be.nii.gz"], "rb") as fh:
            self.assertEqual(gzip.decompress(fh.read())[:4], np.array([348], ">i4").tobytes())  # big-endian indeed
        for name, path in files.items():
            with self.subTest(name=name):
                expected = sitk.ReadImage(path)
                inflated.clear()
                with unittest.mock.patch.object(io, "_gunzip_blocks", counting):
                    got = io.read_image(path)
                np.testing.assert_array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(expected))
                self.assertEqual(got.GetPixelID(), sitk.sitkFloat32)
                self.assertLess(sum(inflated), 4096, "the voxels were decompressed again")
        # a NaN makes the CRC differ: the stream is read again and the NaN put back where it is
        with_nan = data.copy()
        with_nan[3, 4, 5] = np.nan
        nib.save(nib.Nifti1Image(with_nan, np.eye(4)), self._path("nan.nii.gz"))
        inflated.clear()
        with unittest.mock.patch.object(io, "_gunzip_blocks", counting):
            got = sitk.GetArrayFromImage(io.read_image(self._path("nan.nii.gz")))
        self.assertTrue(np.isnan(got[5, 4, 3]))
        self.assertEqual(int(np.count_nonzero(np.isnan(got))), 1)
        self.assertGreaterEqual(sum(inflated), data.nbytes)

    def test_the_cli_reports_and_refuses_them(self) -> None:
        from contextlib import redirect_stderr, redirect_stdout
        from io import StringIO

        from MultimodalFusionLib import cli

        path, other = self._path("pet nan.nii.gz"), self._path("other.nii.gz")
        sitk.WriteImage(sitk.GetImageFromArray(self.arr), path)
        sitk.WriteImage(sitk.GetImageFromArray(np.nan_to_num(self.arr, posinf=0, neginf=0)), other)
        for argv, code, text in ((["info", path], 0, "WARNING    3 NaN/inf voxels"),
                                 (["register", other, path, "-o", self._path("out")], 2, "has 3 NaN or infinite"),
                                 (["fuse", other, path, "-o", self._path("f.nii.gz")], 2, "has 3 NaN or infinite")):
            out, err = StringIO(), StringIO()
            with redirect_stdout(out), redirect_stderr(err):
                rc = cli.main(argv)
            with self.subTest(argv=argv[0]):
                self.assertEqual(rc, code, err.getvalue())
                self.assertIn(text, out.getvalue() + err.getvalue())


class GzipAndHeaderHelpers(unittest.TestCase):
    """The helpers the readers share: one gzip reader for a header's first bytes and for a stream read in blocks, one
    NIfTI byte-order test for io and tensors."""

    def test_a_cut_stream_gives_its_bytes_to_a_header_check_and_an_error_to_a_voxel_read(self) -> None:
        import gzip

        payload = np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8).tobytes()
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "cut.gz")
            with open(path, "wb") as fh:
                fh.write(gzip.compress(payload)[:3000])  # about 3000 of the 5000 bytes, then nothing
            head = io._head(path, 4096)
            self.assertGreater(len(head), 100)
            self.assertEqual(head, payload[:len(head)])  # what the stream holds, no error
            self.assertEqual(io._head(path, 100), payload[:100])
            with io._Gunzipped(path) as fh, self.assertRaises(EOFError):
                fh.read(4096)
            with io._Gunzipped(path) as fh:  # a read the stream holds is served, in pieces as asked
                self.assertEqual(fh.read(10) + fh.read(90), payload[:100])
            with open(path, "wb") as fh:
                fh.write(payload[:300])  # not compressed: the file's own bytes
            self.assertEqual(io._head(path, 348), payload[:300])

    def test_io_and_tensors_read_a_nifti_header_in_one_byte_order(self) -> None:
        from MultimodalFusionLib import tensors

        header = np.zeros(348, np.uint8).tobytes()
        for order in "<>":
            head = np.array([348], order + "i4").tobytes() + header[4:]
            self.assertEqual(io._nifti_byte_order(head), (order, 348))
            self.assertEqual(tensors._nifti_order(head), order)
            two = np.array([540], order + "i4").tobytes() + bytes(540)[4:]
            self.assertEqual(io._nifti_byte_order(two), (order, 540))
            self.assertIsNone(tensors._nifti_order(two))  # NIfTI-1 only
        self.assertIsNone(io._nifti_byte_order(head[:200]))  # cut short
        self.assertIsNone(tensors._nifti_order(b"NRRD0004" + bytes(340)))


class TruncatedFilesOfEveryFormat(unittest.TestCase):
    """A file cut short (a half-copied download) is refused naming it, its bytes and what its header describes,
    for every format whose ITK reader read it without an error: the missing voxels had been 0 (an Analyze pair's
    .img or .img.gz, GIPL), other values (GIPL, VTK, MRC, BMP, a .nii.gz cut in its gzip trailer), grey blocks
    (JPEG), fewer slices (TIFF volume, or a DICOM series whose first or last file is cut)."""

    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        rng = np.random.default_rng(5)
        self.volume = sitk.GetImageFromArray(rng.integers(1, 1000, (12, 16, 20)).astype(np.int16))  # no zeros
        self.picture = sitk.GetImageFromArray(rng.integers(1, 255, (40, 50)).astype(np.uint8))

    def _path(self, *parts: str) -> str:
        return os.path.join(self.tmp.name, *parts)

    def _cut(self, path: str, keep: int, into: str) -> str:
        with open(path, "rb") as fh:
            payload = fh.read()
        os.makedirs(os.path.dirname(into), exist_ok=True)
        with open(into, "wb") as fh:
            fh.write(payload[:keep])
        return into

    def _assert_refused(self, path: str, *words: str) -> None:
        with self.assertRaises(InputError) as cm:
            io.read_image(path, keep_color=True)
        message = str(cm.exception)
        self.assertIn("is truncated", message)
        self.assertIn(os.path.basename(path), message)
        self.assertIn("download the file again", message)  # the fix
        for word in words:
            self.assertIn(word, message)

    def test_single_files_cut_anywhere_are_refused(self) -> None:
        for name, image, compress in (("v.gipl", self.volume, False), ("v.gipl.gz", self.volume, True),
                                      ("v.vtk", self.volume, False), ("v.mrc", self.volume, False),
                                      ("v.tif", self.volume, False), ("p.tif", self.picture, False),
                                      ("p.bmp", self.picture, False), ("p.jpg", self.picture, False),
                                      ("v.nii.gz", self.volume, True), ("V.GIPL", self.volume, False)):
            whole = self._path("whole", name.lower())
            os.makedirs(os.path.dirname(whole), exist_ok=True)
            sitk.WriteImage(image, whole, compress)
            truth = sitk.GetArrayFromImage(io.read_image(whole, keep_color=True))  # the complete file reads
            size = os.path.getsize(whole)
            for keep in (size // 2, size - 1):
                with self.subTest(name=name, keep=keep):
                    cut = self._cut(whole, keep, self._path(f"cut{keep}", name))
                    if name.endswith(".tif") and keep == size - 1 or name == "v.gipl.gz" and keep == size - 1:
                        # the last byte of a TIFF's last strip table / a gzip trailer that ITK does not need: read
                        # whole, or refused; never other values
                        try:
                            np.testing.assert_array_equal(sitk.GetArrayFromImage(io.read_image(cut)), truth)
                        except InputError as exc:
                            self.assertIn("is truncated", str(exc))
                        continue
                    self._assert_refused(cut, f"holds only {keep} bytes" if not name.endswith((".gz", ".jpg"))
                                         else f"({keep} bytes")

    def test_bytes_are_named(self) -> None:
        whole = self._path("v.gipl")
        sitk.WriteImage(self.volume, whole)  # 256-byte header, 12*16*20 int16 voxels
        self._assert_refused(self._cut(whole, 4000, self._path("cut", "v.gipl")),
                             "7680 bytes of voxels (7936 bytes with the header)", "holds only 4000 bytes")

    def test_analyze_pair_with_a_short_img_or_img_gz_is_refused(self) -> None:
        import gzip

        for name, data in (("a.hdr", "a.img"), ("b.hdr", "b.img.gz"), ("C.HDR", "C.IMG")):
            folder = self._path(name)
            os.makedirs(folder)
            sitk.WriteImage(self.volume, os.path.join(folder, "x.hdr"))
            with open(os.path.join(folder, "x.img"), "rb") as fh:
                voxels = fh.read()
            os.remove(os.path.join(folder, "x.img"))
            os.rename(os.path.join(folder, "x.hdr"), os.path.join(folder, name))
            payload = gzip.compress(voxels) if data.endswith(".gz") else voxels
            with open(os.path.join(folder, data), "wb") as fh:
                fh.write(payload)
            truth = sitk.GetArrayFromImage(io.read_image(os.path.join(folder, name)))
            np.testing.assert_array_equal(truth, sitk.GetArrayFromImage(self.volume))
            for keep in (10, len(payload) // 2, len(payload) - 1):
                with self.subTest(name=name, data=data, keep=keep):
                    with open(os.path.join(folder, data), "wb") as fh:
                        fh.write(payload[:keep])
                    for given in (name, data):  # the header or the data file named
                        self._assert_refused(os.path.join(folder, given), "3840 voxels", data)

    def test_dicom_file_cut_short_is_named_alone_and_in_its_series(self) -> None:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from test_dicom_inputs import write_series

        source = self._path("series")
        write_series(source)
        whole = io.read_image(source)
        for which in ("IM0000.dcm", "IM0005.dcm", "IM0002.dcm"):
            size = os.path.getsize(os.path.join(source, which))
            for keep in (size // 2, size - 1):
                with self.subTest(which=which, keep=keep):
                    folder = self._path(f"{which}_{keep}")
                    shutil.copytree(source, folder)
                    self._cut(os.path.join(source, which), keep, os.path.join(folder, which))
                    # the first or last file cut had been left out: 5 slices read without a word
                    with self.assertRaises(InputError) as cm:
                        io.read_image(folder)
                    self.assertIn(f"'{os.path.join(folder, which)}' is truncated", str(cm.exception))
                    self.assertIn(str(keep), str(cm.exception))
                    self._assert_refused(os.path.join(folder, which))
        self.assertEqual(whole.GetSize(), (10, 12, 6))

    def test_dicom_pixel_data_shorter_than_the_header_describes_are_refused(self) -> None:
        """A whole DICOM file whose Pixel Data (7FE0,0010) element holds fewer bytes than Rows x Columns x frames x
        SamplesPerPixel x BitsAllocated / 8 had been read without a word, alone or in its series: GDCM copies the
        bytes there are and leaves the rest of the image as its memory was (other values from one read to the
        next). So had a file saying YBR_FULL with 3 samples but holding one sample's bytes. Both are refused naming
        the file and the bytes (never a patient tag); a whole file of every layout is still read: YBR_FULL_422's 2
        samples a pixel (PS3.5 8.2), 1-bit pixels packed 8 to a byte, an odd length padded, trailing padding after
        the pixel data, implicit VR and big endian, and a compressed file, whose length says nothing."""
        import warnings

        import pydicom

        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from test_dicom_inputs import PHI, write_series

        source = self._path("series")
        write_series(source)  # 6 slices of 12 x 10 16-bit pixels: 240 bytes each
        whole = sitk.GetArrayFromImage(io.read_image(source))

        def rewritten(folder: str, which: str, change, every: bool = False) -> str:
            """The file ``which`` of a copy of the series, changed (``every``: all its files)."""
            shutil.copytree(source, folder)
            for name in sorted(os.listdir(folder)) if every else [which]:
                ds = pydicom.dcmread(os.path.join(folder, name))
                change(ds)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    big = ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRBigEndian
                    pydicom.dcmwrite(os.path.join(folder, name), ds, little_endian=not big, implicit_vr=(
                        ds.file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian), force_encoding=True)
            return os.path.join(folder, which)

        def short(ds) -> None:
            ds.PixelData = ds.PixelData[:100]

        def ybr(ds) -> None:  # 3 samples said, one sample's bytes held
            ds.PhotometricInterpretation, ds.SamplesPerPixel, ds.PlanarConfiguration = "YBR_FULL", 3, 0

        for name, change, words in (("short", short, "holds 100 bytes of pixel data (Pixel Data (7FE0,0010)) where "
                                                     "its header describes 240 (10 x 12 pixels x 1 frame(s), 1 "
                                                     "sample(s) of 16 bit(s))"),
                                    ("ybr", ybr, "holds 240 bytes of pixel data (Pixel Data (7FE0,0010)) where its "
                                                 "header describes 720 (10 x 12 pixels x 1 frame(s), 3 sample(s)")):
            for which in ("IM0000.dcm", "IM0002.dcm") if name == "short" else ("IM0000.dcm",):
                with self.subTest(name=name, which=which):
                    # a YBR slice among grey ones is refused as on another grid: every file YBR, as the audit's
                    path = rewritten(self._path(f"{name}_{which}"), which, change, every=name == "ybr")
                    for given in (os.path.dirname(path), path):  # its series, and the file alone
                        with self.assertRaises(InputError) as cm:
                            io.read_image(given, keep_color=True)
                        message = str(cm.exception)
                        self.assertIn(f"DICOM file '{path}' {words}", message)
                        self.assertIn("Export the series again", message)  # the fix: a copy of it is no better
                        self.assertIn("move this file out of the folder", message)
                        self.assertFalse([tag for tag, value in PHI.items() if value in message], message)

        def trailing_padding(ds) -> None:
            ds.add_new(0xFFFCFFFC, "OB", b"\0" * 64)

        def odd(ds) -> None:  # 1 x 3 pixels of 3 8-bit samples: 9 bytes, padded to 10
            ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, 3, 3, "RGB"
            ds.PlanarConfiguration, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 0, 8, 8, 7
            ds.PixelData = bytes(range(9)) + b"\0"

        def ybr_422(ds) -> None:  # 12 x 10 pixels: Y1 Y2 Cb Cr for each pair, 240 bytes of 8 bits
            odd(ds)
            ds.Rows, ds.Columns, ds.PhotometricInterpretation = 12, 10, "YBR_FULL_422"
            ds.PixelData = bytes([128] * 240)

        def bits1(ds) -> None:  # 12 x 10 pixels of 1 bit: 15 bytes, padded to 16
            ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.RescaleIntercept = 1, 1, 0, 0
            ds.PixelData = bytes([0b10101010] * 15) + b"\0"

        def implicit(ds) -> None:
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian

        def big(ds) -> None:
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRBigEndian
            ds.PixelData = np.frombuffer(ds.PixelData, "<u2").astype(">u2").tobytes()

        def rle(ds) -> None:
            ds.compress(pydicom.uid.RLELossless, encoding_plugin="pydicom")

        for name, change in (("trailing padding", trailing_padding), ("odd", odd), ("ybr_422", ybr_422),
                             ("bits1", bits1), ("implicit", implicit), ("big endian", big), ("rle", rle)):
            with self.subTest(name=name):
                path = rewritten(self._path(name.replace(" ", "_")), "IM0000.dcm", change)
                image = io.read_image(path, keep_color=True)
                if name in ("trailing padding", "implicit", "big endian", "rle"):  # the same slice, and series
                    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), whole[0])
                    np.testing.assert_array_equal(sitk.GetArrayFromImage(io.read_image(os.path.dirname(path))),
                                                  whole)

    def test_a_short_uncompressed_file_in_a_series_that_starts_compressed_is_refused(self) -> None:
        """Each file of a series is checked for pixel data shorter than its header describes by its own transfer
        syntax: the check had been decided for the series by its first file's, so an uncompressed file holding 100 of
        its 240 bytes in a series whose first file is RLE-compressed was read without a word (GDCM reads such a mix,
        the missing voxels from memory: up to 53360 HU). A whole mixed series, either way round, reads as the
        uncompressed one."""
        import warnings

        import pydicom

        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from test_dicom_inputs import PHI, write_series

        source = self._path("series")
        truth = write_series(source)  # 6 slices of 12 x 10 16-bit pixels: 240 bytes each

        def changed(folder: str, changes: dict) -> str:
            shutil.copytree(source, folder)
            for name, change in changes.items():
                ds = pydicom.dcmread(os.path.join(folder, name))
                change(ds)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds.save_as(os.path.join(folder, name))
            return folder

        def rle(ds) -> None:
            ds.compress(pydicom.uid.RLELossless, encoding_plugin="pydicom")

        def short(ds) -> None:
            ds.PixelData = ds.PixelData[:100]

        for name, changes in (("first compressed", {"IM0000.dcm": rle}), ("third compressed", {"IM0003.dcm": rle})):
            with self.subTest(name):
                folder = changed(self._path(name.replace(" ", "_")), changes)
                np.testing.assert_array_equal(sitk.GetArrayFromImage(io.read_image(folder)), truth)
        folder = changed(self._path("mixed_short"), {"IM0000.dcm": rle, "IM0002.dcm": short})
        with self.assertRaises(InputError) as cm:
            io.read_image(folder)
        message = str(cm.exception)
        self.assertIn(f"DICOM file '{os.path.join(folder, 'IM0002.dcm')}' holds 100 bytes of pixel data (Pixel Data "
                      "(7FE0,0010)) where its header describes 240", message)
        self.assertFalse([tag for tag, value in PHI.items() if value in message], message)

    def test_dicom_pixel_data_a_frame_longer_or_of_12_bits_gdcm_misreads_are_refused(self) -> None:
        """A DICOM file whose Pixel Data hold a whole frame or more beyond what its header describes (two frames'
        bytes with NumberOfFrames left out, or 1) had been read as its first frame without a word; it is refused,
        alone and in its series, naming both byte counts and the tags that may be wrong. A few bytes of padding
        still read. BitsAllocated 12 (retired: 2 pixels packed in 3 bytes) had been left out of the check: GDCM
        unpacks such pixels only from exactly their packed bytes and reads any other length as 16-bit words, so a
        packed file cut short, or whose packed length was padded to even (15 pixels: 23 bytes, 24 held), was read
        with values far off (-32765..24557 for -24..60) without a word; they are refused, and the two lengths GDCM
        reads right (packed, 16-bit words) read as the 16-bit file does."""
        import warnings

        import pydicom

        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from test_dicom_inputs import PHI, write_series

        def packed(values: np.ndarray) -> bytes:  # PS3.5's retired 12-bit packing: 2 pixels in 3 bytes
            pairs = np.append(values, 0) if len(values) % 2 else values
            first, second = pairs[0::2].astype(np.uint32), pairs[1::2].astype(np.uint32)
            out = np.stack([first & 0xFF, (first >> 8 & 0x0F) | (second & 0x0F) << 4, second >> 4], axis=1)
            return out.astype(np.uint8).tobytes()[:-(-len(values) * 3 // 2)]

        def bits12(data) -> object:
            def change(ds) -> None:
                stored = np.frombuffer(ds.PixelData, "<u2")
                ds.BitsAllocated, ds.BitsStored, ds.HighBit = 12, 12, 11
                ds.PixelData = data(stored)
            return change

        def two_frames(ds) -> None:
            ds.PixelData = ds.PixelData * 2

        def one_frame_said(ds) -> None:
            two_frames(ds)
            ds.NumberOfFrames = 1

        def padded(ds) -> None:
            ds.PixelData = ds.PixelData + bytes(4)

        cases = (("two frames", two_frames, "holds 480 bytes of pixel data (Pixel Data (7FE0,0010)) where its header "
                  "describes 240 (10 x 12 pixels x 1 frame(s), 1 sample(s) of 16 bit(s)): 240 bytes more, 1 frame(s), "
                  "so its NumberOfFrames (0028,0008), Rows (0028,0010), Columns (0028,0011) or BitsAllocated"),
                 ("NumberOfFrames 1", one_frame_said, "holds 480 bytes of pixel data"),
                 ("12 bits cut", bits12(lambda v: packed(v)[:100]), "holds 100 bytes of pixel data (Pixel Data "
                  "(7FE0,0010)) where its header describes 180 (10 x 12 pixels x 1 frame(s), 1 sample(s) of 12 "
                  "bit(s), 2 pixels packed in 3 bytes) or 240 (each pixel in 16 bits)"),
                 ("12 bits padded", bits12(lambda v: packed(v[:15]) + b"\0"), "holds 24 bytes of pixel data (Pixel "
                  "Data (7FE0,0010)) where its header describes 23 (5 x 3 pixels"),
                 ("padded", padded, None), ("12 bits packed", bits12(packed), None),
                 ("12 bits in 16", bits12(lambda v: v.tobytes()), None))
        source = self._path("series")
        truth = write_series(source)  # 6 slices of 12 x 10 16-bit pixels: 240 bytes each
        for name, change, words in cases:
            with self.subTest(name):
                folder = self._path(name.replace(" ", "_"))
                shutil.copytree(source, folder)
                for file in sorted(os.listdir(folder)):
                    ds = pydicom.dcmread(os.path.join(folder, file))
                    if name == "12 bits padded":
                        ds.Rows, ds.Columns = 3, 5
                    change(ds)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        ds.save_as(os.path.join(folder, file))
                    if words is not None:  # one file so, the first of its series
                        break
                path = os.path.join(folder, "IM0000.dcm")
                for given in (folder, path):
                    if words is None:
                        image = sitk.GetArrayFromImage(io.read_image(given))
                        np.testing.assert_array_equal(image, truth if given == folder else truth[0])
                        continue
                    if name == "12 bits padded" and given == folder:
                        continue  # (a 3 x 5 slice among 12 x 10 ones is refused as on another grid)
                    with self.assertRaises(InputError) as cm:
                        io.read_image(given)
                    message = str(cm.exception)
                    self.assertIn(f"DICOM file '{path}' {words}", message)
                    self.assertIn("Export the series again", message)
                    self.assertFalse([tag for tag, value in PHI.items() if value in message], message)

    def test_dicom_pixel_data_with_excess_zero_padding_of_a_frame_or_more_are_read(self) -> None:
        """Excess padding after a file's pixel data (zero bytes: DICOM tells readers to accept it from older writers,
        PS3.5 8.1.1) reads as before, however many frames' worth it is: a 2 x 2 16-bit slice held in 16 bytes (8 of
        them zero), alone and in its series, and a 1 x 1 one held in 4, had been refused as 'a frame or more longer',
        where GDCM reads them right. Excess bytes that are not zero, a frame's worth, are still refused. A 12-bit
        file's frame is counted in 16-bit words, as its excess is: 240 bytes of words and 200 more had been refused
        as more than a frame (the 180 bytes of its packed frame) though GDCM reads its first 240 bytes right."""
        import warnings

        import pydicom

        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from test_dicom_inputs import write_series

        def zeros(count: int):
            def change(ds) -> None:
                ds.PixelData = ds.PixelData + bytes(count)
            return change

        def not_zeros(ds) -> None:
            ds.PixelData = ds.PixelData * 2

        def words_and_more(ds) -> None:  # 12-bit pixels in 16-bit words, and 200 bytes that are not zero
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 12, 12, 11
            ds.PixelData = ds.PixelData + ds.PixelData[:200]

        for name, size, change, read in (("2x2 padded", 2, zeros(8), True), ("1x1 padded", 1, zeros(2), True),
                                         ("2x2 padded 3 frames", 2, zeros(24), True),
                                         ("2x2 two frames", 2, not_zeros, False),
                                         ("12 bits in 16 and 200 more", None, words_and_more, True)):
            with self.subTest(name):
                folder = self._path(name.replace(" ", "_"))
                truth = write_series(folder, rows=size or 12, cols=size or 10)
                for file in sorted(os.listdir(folder)):
                    ds = pydicom.dcmread(os.path.join(folder, file))
                    change(ds)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        ds.save_as(os.path.join(folder, file))
                for given, expected in ((folder, truth), (os.path.join(folder, "IM0000.dcm"), truth[0]))[size == 1:]:
                    if read:  # (a series of 1 x 1 slices is left out: ITK reads it as one row of 6 pixels)
                        np.testing.assert_array_equal(sitk.GetArrayFromImage(io.read_image(given)), expected)
                        continue
                    with self.assertRaises(InputError) as cm:
                        io.read_image(given)
                    self.assertIn("holds 16 bytes of pixel data (Pixel Data (7FE0,0010)) where its header describes "
                                  "8 (2 x 2 pixels x 1 frame(s), 1 sample(s) of 16 bit(s)): 8 bytes more, 1 frame(s)",
                                  str(cm.exception))

    def test_a_dicom_file_gone_after_listing_is_named_as_before_not_a_traceback(self) -> None:
        """A file of a series deleted (or unreadable: a network share dropped) after the series was listed, before
        the check of its pixel data's length, had escaped that check as a bare FileNotFoundError traceback, where
        the series reader names it in an InputError (as it did before the check); a file read by ITK that is gone
        before its length is checked is returned as ITK read it (the check cannot tell, as for a header pydicom
        cannot read)."""
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from test_dicom_inputs import write_series

        source = self._path("series")
        write_series(source)  # 6 slices of 12 x 10
        gone = os.path.join(source, "IM0002.dcm")
        listed = io._series_rows

        def listed_then_deleted(files):  # the real listing, then the file goes (another program, a sync)
            rows = listed(files)
            os.remove(gone)
            return rows

        with unittest.mock.patch.object(io, "_series_rows", listed_then_deleted):
            with self.assertRaises(InputError) as cm:
                io.read_image(source)
        self.assertIn(gone, str(cm.exception))
        alone = os.path.join(source, "IM0000.dcm")
        expected = sitk.GetArrayFromImage(io.read_image(alone))
        checked = io._dicom_cut_short

        def deleted_then_checked(path):  # ITK has read the file; it goes before its length is checked
            os.remove(path)
            return checked(path)

        with unittest.mock.patch.object(io, "_dicom_cut_short", deleted_then_checked):
            np.testing.assert_array_equal(sitk.GetArrayFromImage(io.read_image(alone)), expected)

    def test_dicom_objects_without_pixels_and_other_series_cut_files(self) -> None:
        """A complete DICOM object without pixel data (a DICOMDIR, a structured report, an RT plan: no series UID
        in a DICOMDIR) is no cut slice: a series folder holding one reads (87fa702 refused it as 'a header cut
        short'), and the object alone is not called truncated. A cut file of another series is warned of; one cut
        before its series is named is refused, the fix saying to move it out where it is no file of the series."""
        import warnings

        from pydicom.dataset import FileDataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, generate_uid

        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from test_dicom_inputs import write_series

        source = self._path("series")
        write_series(source)
        for name, sop_class in (("DICOMDIR", "1.2.840.10008.1.3.10"), ("report.dcm", "1.2.840.10008.5.1.4.1.1.88.11"),
                                ("plan.dcm", "1.2.840.10008.5.1.4.1.1.481.5")):
            with self.subTest(name=name):
                folder = self._path(f"with_{name}")
                shutil.copytree(source, folder)
                meta = FileMetaDataset()
                meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
                meta.TransferSyntaxUID = ExplicitVRLittleEndian
                ds = FileDataset(name, {}, file_meta=meta, preamble=b"\0" * 128)
                ds.FileSetID = "EXPORT"  # (0004,1130): no series UID, no pixel data
                if name != "DICOMDIR":
                    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
                ds.save_as(os.path.join(folder, name), enforce_file_format=True)
                self.assertEqual(io.read_image(folder).GetSize(), (10, 12, 6))
                if name != "DICOMDIR":  # (read_image takes a DICOMDIR for its folder)
                    with self.assertRaises(InputError) as cm:
                        io.read_image(os.path.join(folder, name))
                    self.assertNotIn("is truncated", str(cm.exception))
        other = self._path("other")
        write_series(other, prefix="OT", description="OTHER")
        with open(os.path.join(other, "OT0003.dcm"), "rb") as fh:
            payload = fh.read()
        for keep, refused in ((len(payload) - 10, False), (300, True)):
            with self.subTest(keep=keep):
                folder = self._path(f"other_cut_{keep}")
                shutil.copytree(source, folder)
                self._cut(os.path.join(other, "OT0003.dcm"), keep, os.path.join(folder, "OT0003.dcm"))
                if refused:  # cut before its series UID: it may be this series' first or last slice
                    with self.assertRaises(InputError) as cm:
                        io.read_image(folder)
                    self.assertIn(f"'{os.path.join(folder, 'OT0003.dcm')}' is truncated", str(cm.exception))
                    self.assertIn("move it out of the folder", str(cm.exception))
                    continue
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    self.assertEqual(io.read_image(folder).GetSize(), (10, 12, 6))
                said = " ".join(str(w.message) for w in caught)
                self.assertIn("OT0003.dcm", said)
                self.assertIn("truncated file(s) of another series", said)

    def test_a_cut_file_with_an_odd_uid_gives_no_pydicom_warning(self) -> None:
        """The check for a DICOM file cut short reads its SeriesInstanceUID and SOP class with pydicom's warnings
        silenced, as its header: a cut file of another series whose UID pydicom finds invalid ('1.2.3.abc_x') had
        given a stray 'Invalid value for VR UI' warning from inside pydicom beside the package's own."""
        import warnings

        import pydicom

        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from test_dicom_inputs import write_series

        folder = self._path("series")
        write_series(folder)
        other = self._path("other")
        write_series(other, prefix="OT", description="OTHER")
        ds = pydicom.dcmread(os.path.join(other, "OT0003.dcm"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.SeriesInstanceUID = "1.2.3.abc_x"
            ds.save_as(os.path.join(other, "OT0003.dcm"))
        size = os.path.getsize(os.path.join(other, "OT0003.dcm"))
        self._cut(os.path.join(other, "OT0003.dcm"), size - 10, os.path.join(folder, "OT0003.dcm"))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.assertEqual(io.read_image(folder).GetSize(), (10, 12, 6))
        said = [str(w.message) for w in caught]
        self.assertEqual(len(said), 1, said)
        self.assertIn("truncated file(s) of another series", said[0])

    def test_complete_files_with_bytes_after_their_end_read(self) -> None:
        """Bytes after a complete file (a copy tool's or a transfer's padding, a gzip file of several members) are
        read past as ITK reads past them: zlib's gzread ignores what follows a gzip stream's last member, which
        Python's gzip refuses ("Not a gzipped file") unless it is zeros; a .nii.gz or .gipl.gz with 24 such bytes
        had been refused as truncated."""
        import gzip

        rng = np.random.default_rng(6)
        floats = rng.random((12, 16, 20)).astype(np.float32)
        floats[:3] = 0  # a zero background: the NaN pass reads the stream to its end
        for name, image in (("f.nii.gz", sitk.GetImageFromArray(floats)), ("i.nii.gz", self.volume),
                            ("v.gipl.gz", self.volume), ("v.nii", self.volume), ("v.gipl", self.volume),
                            ("v.vtk", self.volume), ("v.mrc", self.volume), ("v.tif", self.volume),
                            ("p.bmp", self.picture), ("p.jpg", self.picture)):
            whole = self._path("whole", name)
            os.makedirs(os.path.dirname(whole), exist_ok=True)
            sitk.WriteImage(image, whole, name.endswith(".gz"))
            truth = sitk.GetArrayFromImage(io.read_image(whole))
            with open(whole, "rb") as fh:
                payload = fh.read()
            endings = {"garbage": payload + b"GARBAGE!" * 3, "zeros": payload + bytes(1000)}
            if name.endswith(".gz"):
                raw = gzip.decompress(payload)
                endings["two members"] = gzip.compress(raw[:300]) + gzip.compress(raw[300:])
                endings["two members, garbage"] = endings["two members"] + b"GARBAGE!" * 3
            for ending, data in endings.items():
                with self.subTest(name=name, ending=ending):
                    path = self._path(ending.replace(" ", "_").replace(",", ""), name)
                    os.makedirs(os.path.dirname(path), exist_ok=True)
                    with open(path, "wb") as fh:
                        fh.write(data)
                    np.testing.assert_array_equal(sitk.GetArrayFromImage(io.read_image(path)), truth)
        for keep in (-5, -9, -30):  # a member cut short (trailer, data) is refused: -30 had read as other values
            with self.subTest(keep=keep):
                path = self._path("cut_member", "f.nii.gz")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                raw = gzip.decompress(open(self._path("whole", "f.nii.gz"), "rb").read())
                with open(path, "wb") as fh:
                    fh.write(gzip.compress(raw[:300]) + gzip.compress(raw[300:])[:keep])
                self._assert_refused(path, "ends before its compressed stream does")


class NrrdTruncation(unittest.TestCase):
    """A NRRD file cut short was refused in teem's words ("fread got only 2023 4-sized things, not 2048 (98.7793% of
    expected)", "expected 8192 bytes but received 8092", "data read error"); it is named as the other formats name
    theirs: the file, the bytes it holds and the bytes its header needs."""

    def test_raw_gzip_and_detached_nrrd_cut_short_are_named(self) -> None:
        arr = np.random.default_rng(0).normal(size=(8, 16, 16)).astype(np.float32)  # 2048 voxels, 8192 bytes
        with tempfile.TemporaryDirectory() as d:
            cases = []
            for name, compress in (("raw.nrrd", False), ("gz.nrrd", True), ("raw.nhdr", False), ("gz.nhdr", True)):
                header = os.path.join(d, name)
                sitk.WriteImage(sitk.GetImageFromArray(arr), header, compress)
                with open(header, encoding="latin-1", errors="replace") as fh:
                    named = [line.split(":", 1)[1].strip() for line in fh if line.startswith("data file:")]
                data_file = os.path.join(d, named[0]) if named else header
                with open(data_file, "rb") as fh:
                    whole = fh.read()
                for cut in (100, 5):  # in the voxels; in a gzip stream's trailer (every voxel there)
                    cases.append((header, data_file, whole, cut, named[0] if named else None))
            for header, data_file, whole, cut, named in cases:
                gz = os.path.basename(header).startswith("gz")
                with open(data_file, "wb") as fh:
                    fh.write(whole[:-cut])
                with self.subTest(file=os.path.basename(header), cut=cut), self.assertRaises(InputError) as cm:
                    io.read_image(header)
                text = str(cm.exception)
                with self.subTest(file=os.path.basename(header), cut=cut):
                    self.assertIn(f"'{header}' is truncated: its header describes 2048 voxels (8192 bytes", text)
                    self.assertIn(f"its data file '{named}'" if named else "the file", text)
                    self.assertIn(f"({len(whole) - cut} bytes, gzip-compressed)" if gz else
                                  f"holds only {len(whole) - cut} bytes", text)
                    if gz and cut == 100:
                        self.assertIn("decompresses to only 8092 bytes", text)
                    if gz and cut == 5:
                        self.assertIn("ends inside the 8-byte trailer", text)
                    self.assertIn("Fix: Copy or download the file again", text)
                    for teem in ("fread", "things", "received", "data read error", "ITK failed"):
                        self.assertNotIn(teem, text)
                with open(data_file, "wb") as fh:
                    fh.write(whole)
                np.testing.assert_array_equal(sitk.GetArrayFromImage(io.read_image(header)), arr)  # whole: reads

    def test_a_multi_member_gzip_nrrd_is_read_as_teem_reads_it(self) -> None:
        """teem reads a gzip stream of several members (pigz, concatenated parts) whole: only the first member had been
        counted, so a whole such file that ITK refused for another reason (here a 'space directions' of two vectors
        for three axes) was called truncated with 'Copy or download the file again' as the fix, and one cut in its
        second member was said to hold only the first member's 4000 bytes. 'byteskip' (teem's other spelling) was
        taken as no skip, and the cut file was refused in teem's words."""
        import gzip

        arr = np.random.default_rng(0).normal(size=(8, 16, 16)).astype(np.float32)  # 8192 bytes
        raw = arr.tobytes()
        fields = "type: float\ndimension: 3\nsizes: 16 16 8\nendian: little\n"
        two = gzip.compress(raw[:4000]) + gzip.compress(raw[4000:])
        with tempfile.TemporaryDirectory() as d:
            def write(name: str, header: str, data: bytes) -> str:
                path = os.path.join(d, name)
                with open(path, "wb") as fh:
                    fh.write(("NRRD0004\n" + fields + header + "\n").encode() + data)
                return path

            whole = write("whole.nrrd", "encoding: gzip\n", two)
            np.testing.assert_array_equal(sitk.GetArrayFromImage(io.read_image(whole)), arr)  # teem reads it whole
            other = write("other.nrrd", "encoding: gzip\nspace directions: (1,0,0) (0,1,0)\n", two)
            with self.assertRaises(InputError) as cm:
                io.read_image(other)
            self.assertNotIn("is truncated", str(cm.exception))
            cut = write("cut.nrrd", "encoding: gzip\n", two[:-100])
            with self.assertRaises(InputError) as cm:
                io.read_image(cut)
            self.assertIn("decompresses to only 8092 bytes of them", str(cm.exception))
            skipped = write("skip.nrrd", "encoding: raw\nbyteskip: 500\n", bytes(500) + raw[:-100])
            with self.assertRaises(InputError) as cm:
                io.read_image(skipped)
            self.assertIn("is truncated: its header describes 2048 voxels (8192 bytes, from byte", str(cm.exception))
            self.assertIn("(8092 of them voxels)", str(cm.exception))

    def test_a_damaged_nrrd_keeps_itk_s_error(self) -> None:
        """A stream that is damaged, not cut short, is no truncation: ITK's error stands."""
        arr = np.random.default_rng(0).normal(size=(8, 16, 16)).astype(np.float32)
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "bad.nrrd")
            sitk.WriteImage(sitk.GetImageFromArray(arr), path, True)
            with open(path, "rb") as fh:
                payload = bytearray(fh.read())
            payload[len(payload) // 2] ^= 0xFF
            with open(path, "wb") as fh:
                fh.write(payload)
            with self.assertRaises(InputError) as cm:
                io.read_image(path)
            self.assertNotIn("is truncated", str(cm.exception))


class Nifti2(unittest.TestCase):
    """SimpleITK 2.5 reads no NIfTI-2 ("Unable to determine ImageIO reader"): the error names the format
    and gives the conversion, which yields what ITK reads from the same data written as NIfTI-1."""

    def test_nifti2_is_named_and_its_fix_works(self) -> None:
        try:
            import nibabel as nib
        except ImportError:  # pragma: no cover - nibabel comes with nilearn, a dependency
            self.skipTest("nibabel is not installed")
        affine = np.array([[0.9, 0.1, 0.0, 10.0], [-0.1, 0.9, 0.0, -20.0], [0.0, 0.0, 2.5, 30.0], [0, 0, 0, 1]])
        data = np.random.default_rng(5).normal(100, 20, (10, 12, 14)).astype(np.float32)
        with tempfile.TemporaryDirectory() as d:
            for name in ("scan 2.nii.gz", "scan2.nii"):
                path = os.path.join(d, name)
                nib.save(nib.Nifti2Image(data, affine), path)
                with self.subTest(name), self.assertRaises(InputError) as cm:
                    io.read_image(path)
                with self.subTest(name):
                    self.assertIn("NIfTI-2", cm.exception.problem)
                    self.assertIn(path, cm.exception.problem)
                    self.assertIn("nib.Nifti1Image(img.dataobj, img.affine, img.header)", cm.exception.fix)
                    # the fix's Python, run as given, writes a NIfTI-1 that reads as nibabel's own NIfTI-1 does
                    code = cm.exception.fix.split("`")[1]
                    exec(code, {})  # noqa: S102 - the text a user is told to run
                    converted = io.read_image(path.replace(".nii", "_nifti1.nii"))
                    reference = os.path.join(d, "reference.nii.gz")
                    nib.save(nib.Nifti1Image(data, affine), reference)
                    expected = io.read_image(reference)
                    self.assertEqual(converted.GetSize(), expected.GetSize())
                    self.assertEqual(converted.GetOrigin(), expected.GetOrigin())
                    self.assertEqual(converted.GetSpacing(), expected.GetSpacing())
                    self.assertEqual(converted.GetDirection(), expected.GetDirection())
                    np.testing.assert_array_equal(sitk.GetArrayFromImage(converted), sitk.GetArrayFromImage(expected))


class MetaImageReaderGaps(unittest.TestCase):
    """A truncated MetaImage: ITK printed MetaIO's warnings to stderr and failed with 'Reason: No such file
    or directory' (a stale errno); it is named truncated before ITK reads it."""

    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        arr = np.random.default_rng(4).normal(100, 20, (10, 12, 14)).astype(np.float32)
        self.image = sitk.GetImageFromArray(arr)

    def _path(self, name: str) -> str:
        return os.path.join(self.tmp.name, name)

    def _cut(self, source: str, target: str, keep: int | None = None) -> str:
        with open(self._path(source), "rb") as fh:
            payload = fh.read()
        with open(self._path(target), "wb") as fh:
            fh.write(payload[:len(payload) // 2 if keep is None else keep])
        return self._path(target)

    def test_a_zero_spacing_is_named_with_the_header_fix(self) -> None:
        # ITK's "Zero-valued spacing is not supported" had come with the fix "Use a NIfTI, NRRD, ... file, and check
        # it is not truncated", of a valid .mhd whose header only is wrong; a negative spacing ITK reads as a flip
        sitk.WriteImage(self.image, self._path("ok.mhd"))
        header = open(self._path("ok.mhd")).read()
        for spacing, name in (("0 1 1", "zero.mhd"), ("-1 1 1", "flipped.mhd")):
            with open(self._path(name), "w") as fh:
                fh.write(re.sub(r"ElementSpacing = .*", f"ElementSpacing = {spacing}", header))
        with self.assertRaises(InputError) as ctx:
            io.read_image(self._path("zero.mhd"))
        self.assertRegex(ctx.exception.problem, r"zero\.mhd' gives a voxel spacing of 0")
        self.assertIn("ElementSpacing", ctx.exception.fix)
        flipped = io.read_image(self._path("flipped.mhd"))
        self.assertEqual((flipped.GetSpacing()[0], flipped.GetDirection()[0]), (1.0, -1.0))

    def test_truncated_data_and_header_are_named(self) -> None:
        sitk.WriteImage(self.image, self._path("whole.mha"))
        sitk.WriteImage(self.image, self._path("whole_z.mha"), True)
        sitk.WriteImage(self.image, self._path("pair.mhd"))  # pair.raw beside it
        sitk.WriteImage(sitk.Cast(self.image, sitk.sitkInt16), self._path("short.mha"))
        self._cut("pair.raw", "pair.raw")
        cases = {"raw": (self._cut("whole.mha", "cut.mha"), "is truncated"),
                 "compressed": (self._cut("whole_z.mha", "cut_z.mha"), "is truncated"),
                 "int16": (self._cut("short.mha", "cut_short.mha"), "is truncated"),
                 "header and data file": (self._path("pair.mhd"), "is truncated"),
                 "header cut": (self._cut("whole.mha", "cut_header.mha", keep=100), "header is incomplete")}
        for case, (path, said) in cases.items():
            with self.subTest(case), self.assertRaises(InputError) as cm:
                io.read_image(path)
            text = str(cm.exception)
            with self.subTest(case):
                self.assertIn(said, text)
                self.assertIn(os.path.basename(path), text)
                self.assertNotIn("No such file or directory", text)
                self.assertIn("Fix: Copy or download the file again", text)
        with self.assertRaises(InputError) as cm:
            io.read_image(self._path("pair.mhd"))
        self.assertIn("'pair.raw'", str(cm.exception))  # the data file that is short is named
        for whole in ("whole.mha", "whole_z.mha", "short.mha"):
            self.assertEqual(io.read_image(self._path(whole)).GetSize(), (14, 12, 10))

    def test_a_damaged_compressed_stream_is_refused(self) -> None:
        """ITK's MetaIO inflated a damaged zlib stream without an error: 64 flipped bytes in the middle read as
        other values in some voxels, a damaged end as zeros after a stray "Uncompress failed" on stdout."""
        import zlib

        sitk.WriteImage(self.image, self._path("whole_z.mha"), True)
        sitk.WriteImage(self.image, self._path("pair_z.mhd"), True)  # pair_z.zraw beside it
        with open(self._path("whole_z.mha"), "rb") as fh:
            payload = fh.read()
        start = payload.index(b"ElementDataFile = LOCAL\n") + len(b"ElementDataFile = LOCAL\n")
        middle = (start + len(payload)) // 2
        with open(self._path("pair_z.zraw"), "rb") as fh:
            stream = fh.read()
        flipped = bytes(b ^ 0xFF for b in stream[len(stream) // 2:len(stream) // 2 + 64])
        damaged = {"bytes flipped in the middle": (
                       "flipped.mha", payload[:middle] + bytes(b ^ 0xFF for b in payload[middle:middle + 64])
                       + payload[middle + 64:]),
                   "one bit flipped": ("bit.mha", payload[:start + 100] + bytes([payload[start + 100] ^ 1])
                                       + payload[start + 101:]),
                   "its end damaged": ("end.mha", payload[:-8] + bytes(b ^ 0xFF for b in payload[-8:]))}
        for name, content in damaged.values():
            with open(self._path(name), "wb") as fh:
                fh.write(content)
        with open(self._path("pair_z.zraw"), "wb") as fh:
            fh.write(stream[:len(stream) // 2] + flipped + stream[len(stream) // 2 + 64:])
        damaged["a data file's bytes flipped"] = ("pair_z.mhd", b"")
        for case, (name, _) in damaged.items():
            with self.subTest(case), self.assertRaises(InputError) as cm:
                io.read_image(self._path(name))
            with self.subTest(case):
                self.assertIn(f"{name}'", str(cm.exception))
                self.assertIn("is damaged", str(cm.exception))
                self.assertIn("Copy or download the file again", str(cm.exception))
        self.assertIn("(its data file 'pair_z.zraw')", str(cm.exception))
        # good streams still read, also those whose checksum is taken over values ITK converted: a big-endian
        # stream (ITK swaps the bytes) and a vector image
        values = sitk.GetArrayFromImage(self.image)
        packed = zlib.compress(values.astype(">f4").tobytes())
        with open(self._path("msb.mha"), "wb") as fh:
            fh.write(("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = True\n"
                      f"CompressedData = True\nCompressedDataSize = {len(packed)}\nDimSize = 14 12 10\n"
                      "ElementType = MET_FLOAT\nElementDataFile = LOCAL\n").encode() + packed)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(io.read_image(self._path("msb.mha"))), values)
        rgb = sitk.GetImageFromArray(np.random.default_rng(5).integers(0, 255, (12, 14, 3), dtype=np.uint8),
                                     isVector=True)
        sitk.WriteImage(rgb, self._path("rgb_z.mha"), True)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(io.read_image(self._path("rgb_z.mha"), keep_color=True)),
                                      sitk.GetArrayFromImage(rgb))

    def test_a_compressed_mha_without_its_stream_size_is_refused(self) -> None:
        """ITK's MetaIO read a compressed .mha whose header gives no CompressedDataSize as other values (a
        sound stream; an .mhd's separate data file reads well without it), with no error."""
        import zlib

        values = sitk.GetArrayFromImage(self.image)
        packed = zlib.compress(values.tobytes())
        header = ("ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
                  "CompressedData = True\nDimSize = 14 12 10\nElementType = MET_FLOAT\nElementDataFile = {}\n")
        with open(self._path("unsized.mha"), "wb") as fh:
            fh.write(header.format("LOCAL").encode() + packed)
        with self.assertRaises(InputError) as cm:
            io.read_image(self._path("unsized.mha"))
        self.assertIn("no CompressedDataSize", cm.exception.problem)
        self.assertIn(f"'CompressedDataSize = {len(packed)}'", cm.exception.fix)
        # the fix, done as it says, reads the voxels
        with open(self._path("unsized.mha"), "wb") as fh:
            fh.write(header.format("LOCAL").replace("DimSize", f"CompressedDataSize = {len(packed)}\nDimSize")
                     .encode() + packed)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(io.read_image(self._path("unsized.mha"))), values)
        with open(self._path("unsized.mhd"), "w") as fh:
            fh.write(header.format("unsized.zraw"))
        with open(self._path("unsized.zraw"), "wb") as fh:
            fh.write(packed)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(io.read_image(self._path("unsized.mhd"))), values)

    def test_a_missing_data_file_is_named(self) -> None:
        """ITK named no file for an Analyze .hdr without its .img ("nifti_image_load failed") and blamed the
        format for an .nhdr without its data file ("couldn't open ..." with "Use a NIfTI, NRRD, ... file")."""
        from contextlib import redirect_stderr, redirect_stdout
        from io import StringIO

        from MultimodalFusionLib import cli

        for header, data, field in (("alone.mhd", "alone.raw", "ElementDataFile"), ("alone.nhdr", "alone.raw", "data file"),
                                    ("alone.hdr", "alone.img", ".img file of the same name")):
            with self.subTest(header):
                sitk.WriteImage(self.image, self._path(header))
                self.assertEqual(io.read_image(self._path(header)).GetSize(), (14, 12, 10))
                self.assertIsNone(io.missing_data_file(self._path(header)))
                os.remove(self._path(data))
                self.assertEqual(io.missing_data_file(self._path(header)), data)
                with self.assertRaises(InputError) as cm:
                    io.read_image(self._path(header))
                self.assertIn(f"'{data}'", str(cm.exception))
                self.assertIn(field, str(cm.exception))
                self.assertIn("does not exist", str(cm.exception))
                self.assertIn("Keep the header and its data file together", str(cm.exception))
                out, err = StringIO(), StringIO()
                with redirect_stdout(out), redirect_stderr(err):
                    rc = cli.main(["info", self._path(header)])
                self.assertEqual(rc, 2)
                self.assertIn(f"its voxels are in '{data}'", err.getvalue())

    def test_a_data_file_in_another_folder_is_found_or_named(self) -> None:
        # a data file's name is relative to the header's folder (or absolute): both kinds are followed
        os.makedirs(self._path("voxels"))
        sitk.WriteImage(self.image, self._path("voxels/pet.nhdr"))
        with open(self._path("voxels/pet.nhdr")) as fh:
            text = fh.read()
        for name, data_line in (("relative.nhdr", "data file: voxels/pet.raw"),
                                ("absolute.nhdr", f"data file: {self._path('voxels/pet.raw')}")):
            with open(self._path(name), "w") as fh:
                fh.write(text.replace("data file: pet.raw", data_line))
            with self.subTest(name):
                self.assertIsNone(io.missing_data_file(self._path(name)))
                self.assertEqual(io.read_image(self._path(name)).GetSize(), (14, 12, 10))
        os.rename(self._path("voxels/pet.raw"), self._path("voxels/moved.raw"))
        with self.assertRaises(InputError) as cm:
            io.read_image(self._path("relative.nhdr"))
        self.assertIn("'voxels/pet.raw'", str(cm.exception))
        # images whose voxels are in the same file have no data file to miss
        for single in ("whole.nrrd", "whole.mha", "whole.nii"):
            sitk.WriteImage(self.image, self._path(single))
            self.assertIsNone(io.missing_data_file(self._path(single)))

    def test_an_unreadable_metaimage_is_an_input_error(self) -> None:
        """The size check opened the file before ITK did: an .mha without read permission was a
        PermissionError traceback (ITK's own failure had been an InputError)."""
        sitk.WriteImage(self.image, self._path("locked.mha"))
        os.chmod(self._path("locked.mha"), 0)
        try:
            open(self._path("locked.mha"), "rb").close()
        except PermissionError:
            pass
        else:
            self.skipTest("permissions do not bind this user (root)")
        with self.assertRaises(InputError) as cm:
            io.read_image(self._path("locked.mha"))
        self.assertIn("locked.mha", str(cm.exception))
        self.assertIn("Permission denied", str(cm.exception))

    def test_metaio_warnings_do_not_reach_stderr(self) -> None:
        import subprocess
        import sys

        sitk.WriteImage(self.image, self._path("whole.mha"))
        path = self._cut("whole.mha", "cut.mha")
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=repo + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.run([sys.executable, "-m", "MultimodalFusionLib.cli", "info", path],
                              capture_output=True, text=True, timeout=120, env=env)
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertIn("is truncated", proc.stderr)
        self.assertNotIn("MetaImage:", proc.stderr)
        self.assertNotIn("ideal =", proc.stderr)


class DicomGeometry(unittest.TestCase):
    """A series whose geometry ITK would make up is refused with the tag's name; values keep their scale."""

    def test_missing_tags_and_uneven_slices_are_named(self) -> None:
        cases = [({"drop": ("ImagePositionPatient",)}, "ImagePositionPatient (0020,0032)"),
                 ({"drop": ("PixelSpacing",)}, "PixelSpacing (0028,0030)"),
                 ({"z": (0.0, 3.0, 6.0, 9.0, 15.0, 18.0)}, "uneven slice spacing")]
        for kwargs, message in cases:
            with self.subTest(message), tempfile.TemporaryDirectory() as d:
                _pydicom_series(d, **kwargs)
                with self.assertRaises(InputError) as ctx:
                    io.read_image(d)
                self.assertIn(message, str(ctx.exception))
                self.assertNotIn("Doe", str(ctx.exception))

    def test_one_dicom_file_is_a_2d_slice(self) -> None:
        with tempfile.TemporaryDirectory() as d:
            truth = _pydicom_series(d, z=(6.0,))
            image = io.read_image(os.path.join(d, "s0.dcm"))
            self.assertEqual(image.GetDimension(), 2)
            self.assertEqual(image.GetSpacing(), (1.5, 1.5))
            np.testing.assert_array_equal(sitk.GetArrayFromImage(image), truth[0])

    def test_complete_series_and_per_slice_rescale(self) -> None:
        with tempfile.TemporaryDirectory() as d:
            truth = _pydicom_series(d, slopes=[1.0, 0.0004, 0.0004, 0.0004, 0.0004, 0.0004])
            image = io.read_image(d)
            self.assertEqual(image.GetSpacing(), (1.5, 1.5, 3.0))
            self.assertEqual(image.GetPixelID(), sitk.sitkFloat32)  # the first slice's uint16 would round
            np.testing.assert_allclose(sitk.GetArrayFromImage(image), truth, rtol=1e-5, atol=1e-6)


class WriteRules(unittest.TestCase):
    """Outputs keep values and geometry as far as the format allows, or say why not."""

    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    def _path(self, name: str) -> str:
        return os.path.join(self.tmp.name, name)

    def test_png_keeps_labels_and_0_255_values(self) -> None:
        import warnings

        labels = sitk.GetImageFromArray(np.array([[0, 1, 2], [2, 1, 0]], np.uint16))
        big = sitk.GetImageFromArray(np.array([[0, 300, 9640]], np.uint16))
        grey = sitk.GetImageFromArray(np.array([[0.4, 17.6, 214.0]], np.float32))
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # none of these needs a rescale
            for image, expected in ((labels, [[0, 1, 2], [2, 1, 0]]), (big, [[0, 300, 9640]]),
                                    (grey, [[0, 18, 214]])):
                path = io.write_image(image, self._path("x.png"))
                np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(path)), expected)
        probability = sitk.GetImageFromArray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8))
        with self.assertWarnsRegex(UserWarning, "rescaled to 0..255"):  # rounding would leave only 0 and 1
            path = io.write_image(probability, self._path("p.png"))
        self.assertEqual(len(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(path)))), 64)
        hu = sitk.GetImageFromArray(np.array([[-1000.0, 0.0, 3000.0]], np.float32))
        with self.assertWarnsRegex(UserWarning, "rescaled to 0..255"):
            io.write_image(hu, self._path("hu.png"))
        shifted = sitk.Image(labels)
        shifted.SetOrigin((3.0, 4.0))
        with self.assertWarnsRegex(UserWarning, "keeps no origin"):
            io.write_image(shifted, self._path("o.png"))
        with self.assertRaisesRegex(InputError, "2D format but the image is a volume"):
            io.write_image(_oblique(), self._path("v.png"))

    def test_sheared_direction_is_refused_by_nifti_and_kept_by_mha(self) -> None:
        img = _oblique()
        sheared = np.array(img.GetDirection()).reshape(3, 3) @ np.array([[1, 0.2, 0], [0, 1, 0], [0, 0, 1]])
        img.SetDirection(sheared.ravel().tolist())
        with self.assertRaisesRegex(InputError, "NIfTI cannot store"):
            io.write_image(img, self._path("s.nii.gz"))
        self.assertEqual(io.volume_extension(img), ".mha")
        back = io.read_image(io.write_image(img, self._path("s.mha")))
        np.testing.assert_allclose(back.GetDirection(), img.GetDirection(), atol=1e-9)
        self.assertEqual(io.volume_extension(_oblique()), ".nii.gz")

    def test_output_folders_and_files_that_are_the_other_kind(self) -> None:
        a_file = self._path("taken.tfm")
        open(a_file, "w").close()
        with self.assertRaisesRegex(InputError, "is a file"):
            io.make_output_dir(os.path.join(a_file, "sub"))
        with self.assertRaisesRegex(InputError, "is a file"):
            io.make_output_dir(a_file)
        with self.assertRaisesRegex(InputError, "is a folder, not a file"):
            io.write_image(_oblique(), self.tmp.name)
        self.assertTrue(os.path.isdir(io.make_output_dir(self._path("new/deeper"))))

    def test_4d_image_for_registration_is_named(self) -> None:
        four = sitk.Image([4, 4, 4, 3], sitk.sitkFloat32)
        path = self._path("four.nrrd")
        sitk.WriteImage(four, path)
        with self.assertRaisesRegex(InputError, "is a 4D image"):
            io.read_image(path, float32=True)
        self.assertEqual(io.read_image(path).GetDimension(), 4)  # `mmfusion info` can still show it

    def test_complex_images_are_named_on_every_reading_path(self) -> None:
        # read_image(float32=True) (mmfusion register, train-fusion) cast before any check: ITK's "Filter does
        # not support casting from casting complex of 32-bit float to 32-bit float", a RuntimeError, where fuse
        # and run (check_image) named ComplexToModulus; a complex MetaImage (2 channels) named no file, and fuse
        # and run (which read it with keep_color) said "2 components per pixel. Give a grey or an RGB image", not
        # what register said: validation.check_components is now the one text
        from contextlib import redirect_stderr, redirect_stdout
        from io import StringIO

        from MultimodalFusionLib import cli

        real = np.random.default_rng(1).random((6, 7, 8)).astype(np.float32)
        plain = self._path("plain.nii.gz")
        sitk.WriteImage(sitk.GetImageFromArray(real), plain)
        complex_image = sitk.GetImageFromArray((real + 1j * real[::-1]).astype(np.complex64))
        for name in ("complex.nii.gz", "complex.nrrd", "complex.mha"):
            path = self._path(name)
            sitk.WriteImage(complex_image, path)
            for kwargs in ({"float32": True}, {}) if name.endswith(".mha") else ({"float32": True},):
                with self.subTest(name=name, **kwargs):
                    with self.assertRaises(InputError) as ctx:
                        io.read_image(path, **kwargs)
                    self.assertIn(name, str(ctx.exception))
                    self.assertIn("ComplexToModulus", str(ctx.exception))
            for command in ("register", "run", "fuse"):
                argv = {"register": [command, plain, path, "-o", self._path("r")],
                        "run": [command, plain, path, "--output-dir", self._path("run")],
                        "fuse": [command, plain, path, "-o", self._path("f.nii.gz")]}[command]
                out, err = StringIO(), StringIO()
                with redirect_stdout(out), redirect_stderr(err):
                    rc = cli.main(argv)
                with self.subTest(name=name, command=command):
                    self.assertEqual(rc, 2, err.getvalue())
                    self.assertIn("ComplexToModulus", err.getvalue())
                    if name.endswith(".mha"):  # one text on every path (fuse and run had named no complex image)
                        self.assertIn("2 components per pixel (a complex image saved as MetaImage", err.getvalue())
        self.assertEqual(io.read_image(self._path("complex.nrrd")).GetPixelID(), sitk.sitkComplexFloat32)  # for info
        two = io.read_image(self._path("complex.mha"), keep_color=True)
        from MultimodalFusionLib.validation import check_image

        for check in (lambda: check_image(two, "moving image"), lambda: io.to_luminance(two, "moving image")):
            with self.assertRaises(InputError) as ctx:  # check_image had said "(colour) ... Convert it to grey"
                check()
            self.assertIn("moving image has 2 components per pixel (a complex image", str(ctx.exception))
            self.assertIn("ComplexToModulus", ctx.exception.fix)

    def test_two_channels_are_named_by_the_file_they_came_from(self) -> None:
        # every 2-component image had been called "a complex image saved as MetaImage, .mha/.mhd", a .nrrd or
        # .nii.gz of two channels too (ITK reads a complex NRRD or NIfTI as complex pixels, not two channels)
        from contextlib import redirect_stderr, redirect_stdout
        from io import StringIO

        from MultimodalFusionLib import cli

        rng = np.random.default_rng(2)
        plain = self._path("plain.nii.gz")
        sitk.WriteImage(sitk.GetImageFromArray(rng.random((6, 7, 8)).astype(np.float32)), plain)
        two = sitk.GetImageFromArray(rng.random((6, 7, 8, 2)).astype(np.float32), isVector=True)
        for name in ("two.nrrd", "two.nii.gz", "two.mha"):
            path = self._path(name)
            sitk.WriteImage(two, path)
            meta = name.endswith(".mha")
            for command in ("register", "run", "fuse", "evaluate"):
                argv = {"register": [command, plain, path, "-o", self._path("r")],
                        "run": [command, plain, path, "--output-dir", self._path("run")],
                        "fuse": [command, plain, path, "-o", self._path("f.nii.gz")],
                        "evaluate": [command, "--fused", plain, plain, path]}[command]
                out, err = StringIO(), StringIO()
                with redirect_stdout(out), redirect_stderr(err):
                    rc = cli.main(argv)
                with self.subTest(name=name, command=command):
                    self.assertEqual(rc, 2, err.getvalue())
                    self.assertRegex(err.getvalue(), rf"{name}'? has 2 components per pixel")
                    self.assertEqual("complex image saved as MetaImage" in err.getvalue(), meta)
                    self.assertEqual("ComplexToModulus" in err.getvalue(), meta)
                    if not meta:
                        self.assertIn("(two channels, e.g. a 2D vector or displacement field)", err.getvalue())
                        self.assertIn("one channel of it (sitk.VectorIndexSelectionCast(image, 0))", err.getvalue())

    def test_info_shows_a_file_named_twice_twice(self) -> None:
        # results keyed by path: `info f f` printed f once, without a word
        import json
        from contextlib import redirect_stderr, redirect_stdout
        from io import StringIO

        from MultimodalFusionLib import cli

        path, other = self._path("a.nii.gz"), self._path("b.nii.gz")
        sitk.WriteImage(sitk.GetImageFromArray(np.arange(24, dtype=np.float32).reshape(2, 3, 4)), path)
        sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 3), np.float32)), other)
        out = StringIO()
        with redirect_stdout(out):
            self.assertEqual(cli.main(["info", path, other, path]), 0)
        headers = [line for line in out.getvalue().splitlines() if not line.startswith(" ")]
        self.assertEqual(headers, [path, other, path])
        out, err = StringIO(), StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            self.assertEqual(cli.main(["info", path, other, path, "--json"]), 0)
        self.assertEqual(list(json.loads(out.getvalue())), [path, other])  # strict JSON: one key a file
        self.assertIn(f"'{path}' given more than once: listed once in the JSON", err.getvalue())

    def test_info_gives_a_complex_image_s_magnitude_and_says_so(self) -> None:
        # mmfusion info printed min, max and mean of the real part (numpy's float() of a complex drops the
        # imaginary part, with only a ComplexWarning), as if they were the image's: here -3, 3 and 0
        import warnings
        from contextlib import redirect_stdout
        from io import StringIO

        from MultimodalFusionLib import cli

        real = np.linspace(-3.0, 3.0, 120).reshape(4, 5, 6)
        path = self._path("complex.nii.gz")
        sitk.WriteImage(sitk.GetImageFromArray((real + 4j).astype(np.complex64)), path)
        magnitude = np.hypot(real, 4.0)
        out = StringIO()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy's ComplexWarning
            with redirect_stdout(out):
                self.assertEqual(cli.main(["info", path]), 0)
            info = io.image_info(io.read_image(path))
        self.assertIn(f"intensity  min {magnitude.min():.6g}, max {magnitude.max():.6g}, mean {magnitude.mean():.6g} "
                      "(of the magnitude: the pixels are complex)", out.getvalue())
        self.assertEqual(info["statistics_of"], "magnitude")
        self.assertAlmostEqual(info["mean"], float(magnitude.mean()), places=4)
        nan = np.full((2, 3, 4), 3 + 4j, np.complex64)
        nan[0, 0, 0] = complex(np.nan, 1.0)
        info = io.image_info(sitk.GetImageFromArray(nan))
        self.assertEqual((info["min"], info["max"], info["non_finite_voxels"]), (5.0, 5.0, 1))
        self.assertEqual(io.image_info(sitk.GetImageFromArray(real))["statistics_of"], "values")


class AtomicWrites(unittest.TestCase):
    def test_outputs_get_umask_permissions_and_no_leftovers(self):
        mask = os.umask(0)
        os.umask(mask)
        with tempfile.TemporaryDirectory() as d:
            paths = [io.write_image(_oblique(), os.path.join(d, "a.nii.gz")),
                     io.write_transform(sitk.Euler3DTransform(), os.path.join(d, "t.tfm")),
                     io.write_json(os.path.join(d, "m.json"), {"x": float("nan")})]
            for p in paths:
                self.assertEqual(os.stat(p).st_mode & 0o777, 0o666 & ~mask, p)
            self.assertEqual(sorted(os.listdir(d)), ["a.nii.gz", "m.json", "t.tfm"])
            with open(paths[2], encoding="utf-8") as fh:
                self.assertEqual(fh.read().strip(), '{\n  "x": null\n}')

    def test_write_warnings_come_once_the_file_is_in_place(self):
        """write_image's warnings about what a file keeps (a TIFF's or VTK file's lost geometry, a PNG's rescaled
        values and lost origin, a tensor image's lost tensor type, a small DICOM's compression, MINC's components)
        were issued before the file was written: with warnings turned into errors (python -W error) the write stopped
        there and nothing was written, though the message said what the file is. They now come after, as the Units
        notes do: the warning is raised and the file is in place, whole."""
        from MultimodalFusionLib import tensors

        turned = _oblique()[:, :, :4]
        moved = sitk.GetImageFromArray(np.arange(48, dtype=np.float32).reshape(6, 8) * 25.3)
        moved.SetOrigin((12.5, -3.0))
        tensor = tensors.mark(sitk.GetImageFromArray(np.random.default_rng(1).uniform(
            -1, 1, (3, 4, 5, 6)).astype(np.float32), isVector=True), tensors.SYMMETRIC)
        small = sitk.GetImageFromArray((np.arange(3 * 8 * 8) % 100).reshape(3, 8, 8).astype(np.uint8))
        channels = sitk.Compose([sitk.Cast(turned, sitk.sitkFloat32)] * 3)
        cases = [  # output, image, the warning, the size written
            ("t.tif", turned, "file keeps no origin or direction", turned.GetSize()),
            ("v.vtk", turned, "file keeps no direction", turned.GetSize()),
            ("p.png", moved, "rescaled to 0..255", moved.GetSize()),
            ("q.png", moved / 25.3, "PNG/JPEG/BMP keeps no origin or direction", moved.GetSize()),
            ("d.mnc", tensor, "no tensor type is written", tensor.GetSize()),
            ("s.dcm", small, "written uncompressed", small.GetSize()),  # 8x8 slices: compression crashed ITK
        ]
        if io._itk_minc_unconverted():
            cases.append(("c.mnc", channels, "components a voxel are written as they are", turned.GetSize()))
        with tempfile.TemporaryDirectory() as d:
            for name, image, warning, size in cases:
                with self.subTest(name):
                    out = os.path.join(d, name)
                    with warnings.catch_warnings():
                        warnings.simplefilter("error")
                        with self.assertRaisesRegex(UserWarning, warning):
                            io.write_image(image, out)
                    self.assertTrue(os.path.isfile(out))  # in place
                    self.assertEqual(sitk.ReadImage(out).GetSize(), size)  # whole, as ITK reads it
            self.assertEqual([n for n in os.listdir(d) if n.startswith(".")], [])  # no temporary file left
            # and with warnings shown, each is given once, pointed at the caller
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                io.write_image(turned, os.path.join(d, "t2.tif"))
            self.assertEqual([w.filename for w in caught], [__file__])

    def test_failed_write_keeps_the_old_file(self):
        with tempfile.TemporaryDirectory() as d:
            target = io.write_bytes(os.path.join(d, "r.bin"), b"old")
            with self.assertRaises(RuntimeError):
                with io.atomic_output(target) as tmp:
                    with open(tmp, "wb") as fh:
                        fh.write(b"half")
                    raise RuntimeError("crash mid-write")
            with open(target, "rb") as fh:
                self.assertEqual(fh.read(), b"old")
            self.assertEqual(os.listdir(d), ["r.bin"])


    def test_headers_with_a_data_file_name_it_and_keep_their_voxels(self):
        """x.nhdr / x.mhd / x.hdr: ITK writes the voxels to a second file named after the header. Written under a
        temporary name, the header named '.mmf-tmp-x.raw.gz' (left beside it, one more at every rerun), and a
        .hdr lost its voxels (its .img kept the temporary name: 'nifti_image_load failed')."""
        image = _oblique()
        want = sitk.GetArrayFromImage(image)
        with tempfile.TemporaryDirectory() as d:
            expected = []
            for name, data in (("a.nhdr", "a.raw.gz"), ("b.mhd", "b.zraw"), ("c.hdr", "c.img")):
                for _ in range(2):  # a rerun replaces both files
                    path = io.write_image(image, os.path.join(d, name))
                back = sitk.ReadImage(path)
                np.testing.assert_array_equal(sitk.GetArrayFromImage(back), want)
                np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
                expected += [name, data]
            self.assertEqual(sorted(os.listdir(d)), sorted(expected))
            with open(os.path.join(d, "a.nhdr"), encoding="latin-1") as fh:
                self.assertIn("data file: a.raw.gz", fh.read())
            # another header's data file of the same name is not replaced (an input in.nhdr + in.raw, output in.mhd)
            io.write_image(image, os.path.join(d, "in.nhdr"), compress=False)
            with open(os.path.join(d, "in.raw"), "rb") as fh:
                before = fh.read()
            with self.assertRaisesRegex(InputError, r"would replace .*in\.raw"):
                io.write_image(sitk.Cast(image, sitk.sitkFloat64), os.path.join(d, "in.mhd"), compress=False)
            with open(os.path.join(d, "in.raw"), "rb") as fh:
                self.assertEqual(fh.read(), before)
            self.assertFalse(any(n.startswith(".mmf") for n in os.listdir(d)))

    def test_an_analyze_pair_named_by_its_img_keeps_its_header(self):
        """-o x.img: ITK writes x.img and x.hdr. Written as one temporary file, the header stayed beside it as
        '.mmf-tmp-....hdr' (one more at every run) and x.img could not be read ('Unable to determine ImageIO
        reader')."""
        image = _oblique()
        with tempfile.TemporaryDirectory() as d:
            for _ in range(2):  # a rerun replaces both files
                path = io.write_image(image, os.path.join(d, "x.img"))
            self.assertEqual(sorted(os.listdir(d)), ["x.hdr", "x.img"])
            np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(path)), sitk.GetArrayFromImage(image))

    def test_compressed_gipl_and_analyze_pair_outputs_are_written_and_read_back(self):
        """-o x.gipl.gz, x.hdr.gz, x.img.gz (ITK-SNAP's and ANTs' names): refused as "only .nii.gz is written",
        though ITK writes and reads them. Written to a temporary name as the GIPL file the name says; a pair as
        ITK writes it whichever of its names is given (x.hdr.gz + x.img.gz, both gzip), both moved into place
        from a staging folder, the voxels first. A rerun replaces both; nothing else is left."""
        import gzip

        image = sitk.Cast(_oblique(), sitk.sitkFloat32)
        image.SetDirection(np.eye(3).ravel().tolist())  # GIPL keeps no direction (a warning, tested elsewhere)
        want = sitk.GetArrayFromImage(image)
        with tempfile.TemporaryDirectory() as d:
            for name, files in (("g.gipl.gz", ["g.gipl.gz"]), ("h.hdr.gz", ["h.hdr.gz", "h.img.gz"]),
                                ("i.img.gz", ["i.hdr.gz", "i.img.gz"])):
                folder = os.path.join(d, name.replace(".", "_"))
                os.makedirs(folder)
                with self.subTest(name=name):
                    for value in (7.0, 0.0):  # a rerun replaces both files of a pair
                        path = io.write_image(image + value, os.path.join(folder, name))
                    self.assertEqual(path, os.path.join(folder, name))
                    self.assertEqual(sorted(os.listdir(folder)), files)  # no temporary file or staging folder
                    for written in files:
                        with open(os.path.join(folder, written), "rb") as fh:
                            self.assertEqual(fh.read(2), b"\x1f\x8b", written)  # compressed, as named
                    for reader in (io.read_image, sitk.ReadImage):
                        back = reader(path)
                        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), want)
                        np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
                        np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-6)
            # the pair's files are complete gzip streams of the header and its voxels
            with gzip.open(os.path.join(d, "h_hdr_gz", "h.img.gz"), "rb") as fh:
                self.assertEqual(len(fh.read()), want.nbytes)

    def test_a_compressed_pair_beside_an_uncompressed_one_is_refused(self):
        """ITK reads x.hdr.gz with x.img and x.img.gz with x.hdr where they exist (nifti1_io looks for the
        uncompressed name first): written beside an earlier x.hdr/x.img, the new pair read back with the old
        voxels or header (a 6x5x3 image read as 6x5x3 of the old values). Refused before anything is written."""
        old = sitk.GetImageFromArray(np.full((4, 5, 6), 1, np.int16))
        new = sitk.GetImageFromArray(np.full((3, 5, 6), 3, np.int16))
        with tempfile.TemporaryDirectory() as d:
            sitk.WriteImage(old, os.path.join(d, "x.hdr"))
            before = sorted(os.listdir(d))
            for name in ("x.hdr.gz", "x.img.gz"):
                with self.subTest(name=name), self.assertRaises(InputError) as ctx:
                    io.write_image(new, os.path.join(d, name))
                self.assertIn("'x.hdr' and 'x.img' lie beside it", ctx.exception.problem)
                self.assertIn("remove 'x.hdr' and 'x.img'", ctx.exception.fix)
                with self.assertRaises(InputError):
                    io.check_output_name(os.path.join(d, name))  # said before the work
                self.assertEqual(sorted(os.listdir(d)), before)
            io.write_image(new, os.path.join(d, "y.hdr.gz"))  # another name is written and read back whole
            np.testing.assert_array_equal(sitk.GetArrayFromImage(io.read_image(os.path.join(d, "y.hdr.gz"))),
                                          sitk.GetArrayFromImage(new))

    def test_every_nifti_output_beside_an_old_one_reads_back_as_itself(self):
        """nifti1_io (ITK's NIfTI reader: Slicer, sitk.ReadImage, read_image) takes a .nii.gz's voxels from the x.nii
        beside it first: -o x.nii.gz beside an earlier x.nii was written, then read back (by both) with the old
        file's voxels under the new header (a 6x5x3 image of 3s as 6x5x3 of 1s). Of every output name beside every
        earlier image (.nii, .nii.gz, .hdr, .img, .hdr.gz, .img.gz each way), that one and a compressed pair beside
        an uncompressed one are refused before anything is written; every other reads back as itself, by the name
        written and by its pair's other name. read_image reads an x.nii.gz given beside an x.nii as its own."""
        names = ("x.nii", "x.nii.gz", "x.hdr", "x.img", "x.hdr.gz", "x.img.gz")
        new = sitk.GetImageFromArray(np.full((3, 5, 6), 3, np.int16))
        for old_name in names:
            for name in names:
                with self.subTest(old=old_name, new=name), tempfile.TemporaryDirectory() as d:
                    sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 5, 6), 1, np.int16)), os.path.join(d, old_name))
                    before = sorted(os.listdir(d))
                    try:
                        io.write_image(new, os.path.join(d, name))
                    except InputError as exc:
                        refused = exc
                    else:
                        refused = None
                    if (old_name, name) == ("x.nii", "x.nii.gz") or (
                            old_name in ("x.hdr", "x.img") and name in ("x.hdr.gz", "x.img.gz")):
                        self.assertIsNotNone(refused)
                        self.assertIn("lie" if old_name != "x.nii" else "'x.nii' lies beside it", refused.problem)
                        self.assertIn("remove", refused.fix)
                        self.assertEqual(sorted(os.listdir(d)), before)
                        with self.assertRaises(InputError):
                            io.check_output_name(os.path.join(d, name))  # said before the work
                        continue
                    self.assertIsNone(refused)
                    pair = {".hdr": ".img", ".img": ".hdr"}
                    read_as = [name] + [name.replace(a, b, 1) for a, b in pair.items() if a in name]
                    for reader in (io.read_image, sitk.ReadImage):
                        for written in read_as:
                            back = reader(os.path.join(d, written))
                            np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(new),
                                                          err_msg=f"{reader.__name__}({written})")
        with tempfile.TemporaryDirectory() as d:  # upper case: X.NII.GZ looks for X.NII
            sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 5, 6), 1, np.int16)), os.path.join(d, "old.nii"))
            os.rename(os.path.join(d, "old.nii"), os.path.join(d, "X.NII"))  # (ITK writes no 'X.NII')
            with self.assertRaises(InputError) as ctx:
                io.write_image(new, os.path.join(d, "X.NII.GZ"))
            self.assertIn("'X.NII' lies beside it", ctx.exception.problem)
            self.assertIn("write 'X.NII'", ctx.exception.fix)
            # an input so placed (written by another program) is read by read_image as its own image
            sitk.WriteImage(new, os.path.join(d, "y.nii.gz"))
            sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 5, 6), 1, np.int16)), os.path.join(d, "y.nii"))
            itk = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(d, "y.nii.gz")))  # y.nii's voxels
            self.assertFalse(np.array_equal(itk, sitk.GetArrayFromImage(new)))
            back = io.read_image(os.path.join(d, "y.nii.gz"))
            np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(new))
        with tempfile.TemporaryDirectory() as d:  # a folder named z.nii: nifti1_io opens it, and reads zeros
            sitk.WriteImage(new, os.path.join(d, "z.nii.gz"))
            os.mkdir(os.path.join(d, "z.nii"))
            back = io.read_image(os.path.join(d, "z.nii.gz"))
            np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(new))
            with self.assertRaises(InputError):
                io.write_image(new, os.path.join(d, "z.nii.gz"))

    def test_a_stimulate_header_names_its_data_file_beside_it(self):
        """-o x.spr: ITK writes the header x.spr and the voxels x.sdt, the header naming the data file by the path
        it was given. Written under a temporary name, the header named a hidden '.mmf-tmp-....sdt' left beside it
        (one more at every run): moved with its .sdt alone, the image could not be read."""
        image = _oblique()
        with tempfile.TemporaryDirectory() as d, tempfile.TemporaryDirectory() as moved:
            for _ in range(2):  # a rerun replaces both files
                path = io.write_image(image, os.path.join(d, "x.spr"))
            self.assertEqual(sorted(os.listdir(d)), ["x.sdt", "x.spr"])
            with open(path, encoding="latin-1") as fh:
                self.assertIn("stimFileName: x.sdt\n", fh.read())
            for name in ("x.spr", "x.sdt"):
                shutil.move(os.path.join(d, name), os.path.join(moved, name))
            back = sitk.ReadImage(os.path.join(moved, "x.spr"))
            np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(image))

    def test_an_extension_itk_reads_in_lower_case_only_is_refused_naming_it(self):
        """-o fused.GIPL (.MHA, .Mnc, .JP2, .Spr, ...): written under a lower-case temporary name then renamed, the
        file was one no ITK reader opens ("Unable to determine ImageIO reader"); -o x.MHD failed with "No such
        file or directory" (ITK wrote x.mhd); -o x.nia (NIfTI ASCII) was written and never read; a volume to
        .jp2 was written as its first slice. Names ITK reads in any case (.NII.GZ, .NRRD, .TIF, .PNG) are
        written as before."""
        image = _oblique()
        with tempfile.TemporaryDirectory() as d:
            for name, fix in (("f.GIPL", "f.gipl"), ("g.Mha", "g.mha"), ("h.MHD", "h.mhd"), ("i.SPR", "i.spr"),
                              ("j.HDR", "j.hdr"), ("k.Mnc", "k.mnc")):
                with self.assertRaises(InputError, msg=name) as ctx:
                    io.write_image(image, os.path.join(d, name))
                self.assertIn("in lower case only", ctx.exception.problem)
                self.assertIn(f"'{fix}'", ctx.exception.fix)
                self.assertNotIn(".mmf-", str(ctx.exception))
            with self.assertRaisesRegex(InputError, "cannot read them back"):
                io.write_image(image, os.path.join(d, "x.nia"))
            with self.assertRaisesRegex(InputError, r"as a \.jp2 file of size"):
                io.write_image(sitk.Cast(sitk.RescaleIntensity(image), sitk.sitkUInt8), os.path.join(d, "v.jp2"))
            self.assertEqual(os.listdir(d), [])  # nothing written, nothing left
            for name in ("a.NII.GZ", "b.NRRD", "c.TIF", "d.gipl", "e.VTK"):
                path = io.write_image(image, os.path.join(d, name))
                np.testing.assert_allclose(sitk.GetArrayFromImage(io.read_image(path)),
                                           sitk.GetArrayFromImage(image), atol=1e-4)
            self.assertEqual(sorted(os.listdir(d)), ["a.NII.GZ", "b.NRRD", "c.TIF", "d.gipl", "e.VTK"])

    def test_a_pair_named_after_a_nifti_file_is_refused_for_what_it_is(self):
        """-o x.nii.hdr (or x.nii.gz.img): ITK writes the one file x.nii (x.nii.gz), so the pair's check found no
        x.nii.hdr and refused the output as "a full disk or a file size limit", with gigabytes free."""
        image = _oblique()
        with tempfile.TemporaryDirectory() as d:
            for name, single in (("x.nii.hdr", "x.nii"), ("y.NII.GZ.img", "y.NII.GZ")):
                with self.assertRaises(InputError) as ctx:
                    io.write_image(image, os.path.join(d, name))
                self.assertIn(f"as the single NIfTI file '{single}'", ctx.exception.problem)
                self.assertNotIn("full disk", str(ctx.exception))
            self.assertEqual(os.listdir(d), [])  # nothing written, nothing left


    def test_a_detached_nrrd_header_named_like_a_drive_is_refused(self):
        """-o w/c:d.nhdr (or o:=p.nhdr): ITK names the data file after the header ('c:d.raw.gz') and takes a name
        whose second character is ':' for a path from a Windows drive, so the voxels were written into the current
        folder, not beside the header (read back from elsewhere: "couldn't open"). Refused before any work, nothing
        written; a ':' elsewhere in the name (ab:c.nhdr) is written beside its header as before."""
        image = _oblique()
        with tempfile.TemporaryDirectory() as d, tempfile.TemporaryDirectory() as cwd:
            os.mkdir(os.path.join(d, "w"))
            old = os.getcwd()
            os.chdir(cwd)
            try:
                for name in ("c:d.nhdr", "o:=p.nhdr", "x:.NHDR"):
                    with self.assertRaises(InputError) as ctx:
                        io.check_output_name(os.path.join(d, "w", name))
                    self.assertIn("second character is ':'", ctx.exception.problem)
                    with self.assertRaises(InputError):
                        io.write_image(image, os.path.join(d, "w", name))
                self.assertEqual(os.listdir(cwd), [])  # nothing written in the current folder
                self.assertEqual(os.listdir(os.path.join(d, "w")), [])
                path = io.write_image(image, os.path.join(d, "w", "ab:c.nhdr"))
                self.assertEqual(sorted(os.listdir(os.path.join(d, "w"))), ["ab:c.nhdr", "ab:c.raw.gz"])
                for name in ("c:d.nrrd", "c:d.mhd"):  # no data file named by the header's name as a path
                    io.write_image(image, os.path.join(d, "w", name))
            finally:
                os.chdir(old)
            self.assertEqual(os.listdir(cwd), [])
            np.testing.assert_allclose(sitk.GetArrayFromImage(io.read_image(path)), sitk.GetArrayFromImage(image),
                                       atol=1e-4)

class OutputNamesBeforeTheWork(unittest.TestCase):
    """io.check_output_name: what write_image refuses from the name (and the grid's dimension), said before any
    work; write_image calls it first, so the two cannot disagree."""

    #: extensions ITK's factories know (and some they do not), each tried in lower, upper and mixed case
    EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".bmp", ".tif",
                  ".tiff", ".gipl", ".vtk", ".mrc", ".rec", ".mnc", ".mnc2", ".hdr", ".img", ".jp2", ".j2k", ".spr",
                  ".pic", ".lsm", ".h5", ".hdf5", ".hdf", ".he5", ".dcm", ".dicom", ".nia", ".xyz", ".raw", ".mgz",
                  ".gipl.gz", ".hdr.gz", ".img.gz", ".nrrd.gz", ".mha.gz", "")

    @staticmethod
    def _itk_writes(image: sitk.Image, folder: str, name: str) -> bool:
        """Whether ITK itself writes ``image`` as ``name`` in ``folder`` as write_image has it write (a pair
        under its name, another file under a lower-case temporary name, then renamed) and reads it back as an
        image of its size (of 8-bit or, where the format takes no such pixels, float ones)."""
        suffix = io._read_suffix(name)
        pair = suffix in (".nhdr", ".mhd", ".hdr", ".img", ".hdr.gz", ".img.gz", ".spr")
        for pixels in (sitk.sitkUInt8, sitk.sitkFloat32):
            if pixels != sitk.sitkUInt8 and suffix in (".jp2", ".j2k"):
                break  # a float JPEG 2000 corrupts the heap
            os.makedirs(os.path.join(folder, str(pixels)))
            written = os.path.join(folder, str(pixels), name if pair else "tmp" + suffix)
            final = os.path.join(folder, str(pixels), name)
            try:
                sitk.WriteImage(sitk.Cast(image, pixels), written, suffix not in (".png", ".jpg", ".jpeg", ".bmp"))
                if not pair:
                    os.replace(written, final)
                reader = sitk.ImageFileReader()
                reader.SetFileName(final)
                reader.ReadImageInformation()
            except (RuntimeError, OSError):
                continue
            size = list(reader.GetSize())
            while len(size) > image.GetDimension() and size[-1] == 1:
                size.pop()
            return size == list(image.GetSize())
        return False

    def test_the_name_check_agrees_with_itk(self) -> None:
        """Every name the check accepts, ITK writes and reads back; every name it refuses, ITK does not, but for
        the project's own rules (no volume to a 2D picture format, no other compressed name than .nii.gz, .gipl.gz and
        the pair's .hdr.gz/.img.gz, no 2D LSM).
        Fails if the table in io.py drifts from the ITK installed."""
        images = {2: sitk.Image([16, 16], sitk.sitkUInt8) + 5, 3: sitk.Image([16, 16, 16], sitk.sitkUInt8) + 5}
        checked = 0
        with tempfile.TemporaryDirectory() as d:
            for ext in self.EXTENSIONS:
                for spelling in dict.fromkeys((ext, ext.upper(), ext[:2].upper() + ext[2:])):
                    for dim, image in images.items():
                        name = f"x{spelling}"
                        try:
                            io.check_output_name(os.path.join(d, name), image)
                            accepted = True
                        except InputError:
                            accepted = False
                        # the project's rules; and a 2D LSM, which ITK reads back or not by whether the process
                        # wrote an LSM file before (its TIFF tag is registered on first use)
                        if ext in (".png", ".jpg", ".jpeg", ".bmp") and dim == 3 or ext in (".nrrd.gz", ".mha.gz") \
                                or ext == ".lsm" and dim == 2:
                            self.assertFalse(accepted, name)
                        else:
                            itk = self._itk_writes(image, os.path.join(d, str(checked)), name)
                            self.assertEqual(accepted, itk, f"{name} ({dim}D): check_output_name {accepted}, ITK {itk}")
                        checked += 1
        self.assertGreater(checked, 200)

    def test_refusals_name_the_problem_and_a_name_that_works(self) -> None:
        volume = sitk.Image([8, 8, 4], sitk.sitkFloat32)
        cases = {
            "fused.GIPL": ("in lower case only", "'fused.gipl'"), "f.Nii": ("(or .NII)", "'f.nii'"),
            "f.xyz": ("No image format is written as", ".nii.gz"), "f": ("extension 'none'", ".nii.gz"),
            "f.nrrd.gz": ("only .nii.gz, .gipl.gz and an Analyze/NIfTI pair's .hdr.gz/.img.gz are written",
                          ".nrrd or .mha"),
            "f.GIPL.gz": ("ITK writes .gipl.gz files by the extension in lower case only", "'f.gipl.gz'"),
            "f.nii.hdr.gz": ("as the single NIfTI file 'f.nii.gz'", "'f.nii.gz'"),
            "f.nia": ("cannot read them back", ".nii.gz"),
            "f.nii.hdr": ("as the single NIfTI file 'f.nii'", "'f.nii'"),
        }
        for name, (problem, fix) in cases.items():
            with self.subTest(name=name), self.assertRaises(InputError) as ctx:
                io.check_output_name(name)  # the name alone: nothing read, nothing written
            self.assertIn(problem, ctx.exception.problem)
            self.assertIn(fix, ctx.exception.fix)
        for name, problem in (("f.png", "is a 2D format but the image is a volume"), ("f.jp2", "as a .jp2 file of size"),
                              ("f.lsm", None)):
            self.assertEqual(io.check_output_name(name), name)  # by its name alone it may be a 2D image
            if problem:
                with self.assertRaisesRegex(InputError, re.escape(problem)):
                    io.check_output_name(name, volume)
        with self.assertRaisesRegex(InputError, "holds volumes of several slices"):
            io.check_output_name("f.lsm", volume[:, :, 0])
        for name in ("f.NII.GZ", "f.NRRD", "f.mha", "f.TIF", "f.JPG", "f.lsm", "f.gipl.gz", "f.hdr.gz", "f.img.gz"):
            self.assertEqual(io.check_output_name(name, volume if name != "f.JPG" else volume[:, :, 0]), name)

    def test_a_float_image_to_jpeg_2000_is_refused_not_a_crash(self) -> None:
        """ITK's JPEG 2000 writer takes 8- and 16-bit unsigned pixels; a float image (every fused image but the
        overlay: mmfusion fuse a.png b.png -o f.jp2) corrupted the heap and the process aborted (SIGABRT, or
        SIGSEGV on a volume), leaving its temporary file. Run in a child process: the old code killed it."""
        with tempfile.TemporaryDirectory() as d:
            code = ("import SimpleITK as sitk\nfrom MultimodalFusionLib import io\n"
                    "from MultimodalFusionLib.errors import InputError\n"
                    "try:\n    io.write_image(sitk.Image([128, 128], sitk.sitkFloat32) + 1, 'f.jp2')\n"
                    "except InputError as exc:\n    print(exc.problem)\n")
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(
                os.path.abspath(__file__))), os.environ.get("PYTHONPATH", "")]))
            done = subprocess.run([sys.executable, "-c", code], cwd=d, env=env, capture_output=True, text=True,
                                  timeout=120)
            self.assertEqual(done.returncode, 0, done.stderr[-2000:])
            self.assertIn("JPEG 2000 files hold", done.stdout)
            self.assertIn("not this 2D image's 32-bit float", done.stdout)
            self.assertEqual(os.listdir(d), [])
            path = io.write_image(sitk.Image([16, 16], sitk.sitkUInt8) + 7, os.path.join(d, "g.jp2"))
            self.assertEqual(sitk.GetArrayFromImage(io.read_image(path, keep_color=True)).max(), 7)


class UnwritableOutputs(unittest.TestCase):
    """An output that cannot be written is an InputError naming the output (exit 2 in the CLI), not an
    OSError traceback or ITK's message about an internal temporary file."""

    def test_unknown_extension_names_the_output_and_the_formats(self):
        with tempfile.TemporaryDirectory() as d:
            for name, ext in (("fused.xyz", "'.xyz'"), ("fused", "'none'")):
                with self.assertRaises(InputError) as ctx:
                    io.write_image(_oblique(), os.path.join(d, name))
                text = str(ctx.exception)
                self.assertIn(f"'{os.path.join(d, name)}'", text)
                self.assertIn(ext, text)
                self.assertIn(".nii.gz", text)
                self.assertNotIn(".mmf-tmp-", text)
            self.assertEqual(os.listdir(d), [])

    def test_a_file_or_folder_that_cannot_be_created(self):
        import contextlib
        import io as _io

        from MultimodalFusionLib import cli, data

        with tempfile.TemporaryDirectory() as d:
            long_file = os.path.join(d, "a" * 300 + ".nii.gz")  # longer than any file system's name limit
            with self.assertRaises(InputError) as ctx:
                io.write_image(_oblique(), long_file)
            self.assertIn("Cannot write", str(ctx.exception))
            self.assertNotIn(".mmf-tmp-", str(ctx.exception))
            with self.assertRaises(InputError) as ctx:
                io.make_output_dir(os.path.join(d, "b" * 300, "out"))
            self.assertIn("cannot be created", str(ctx.exception))
            slice_png = str(data.testing_data_dir() / "BrainT1Slice.png")
            err = _io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(_io.StringIO()):
                rc = cli.main(["resample", slice_png, "--reference", slice_png, "-o", long_file])
            self.assertEqual(rc, 2)
            self.assertTrue(err.getvalue().startswith("mmfusion resample: error: Cannot write"), err.getvalue())


class OneSliceVolumes(unittest.TestCase):
    """A 2D slice saved as a volume (181 x 217 x 1, as Slicer and ITK-SNAP save one) had been refused by every
    command with "Read it as a 2D image", which a CLI user cannot do: register, fuse and run now take it as the
    2D image it is and write their images back as one-slice volumes on the fixed image's geometry."""

    DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "Data")

    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)

    def _path(self, name: str) -> str:
        return os.path.join(self.tmp.name, name)

    def _volume(self, png: str, name: str, axis: int = 2, direction: Sequence[float] | None = None) -> str:
        arr = sitk.GetArrayFromImage(io.read_image(os.path.join(self.DATA, png)))
        volume = sitk.GetImageFromArray(np.expand_dims(arr, 2 - axis))
        volume.SetSpacing((0.9, 0.9, 2.5) if axis == 2 else (0.9, 2.5, 0.9))
        volume.SetOrigin((-100.0, -120.0, 37.5))
        if direction is not None:
            volume.SetDirection(direction)
        path = self._path(name)
        sitk.WriteImage(volume, path)
        return path

    def _cli(self, *argv: str) -> str:
        from contextlib import redirect_stderr, redirect_stdout
        from io import StringIO

        from MultimodalFusionLib import cli

        out, err = StringIO(), StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            rc = cli.main(list(argv))
        self.assertEqual(rc, 0, err.getvalue())
        return out.getvalue()

    def _assert_on(self, path: str, reference: str) -> None:
        got, ref = sitk.ReadImage(path), sitk.ReadImage(reference)
        self.assertEqual(got.GetSize(), ref.GetSize())
        np.testing.assert_allclose(got.GetOrigin(), ref.GetOrigin(), atol=1e-6)
        np.testing.assert_allclose(got.GetSpacing(), ref.GetSpacing(), atol=1e-6)
        np.testing.assert_allclose(got.GetDirection(), ref.GetDirection(), atol=1e-6)

    def test_pixels_go_back_on_the_slice_axis_they_came_from(self) -> None:
        arr = np.arange(12, dtype=np.float32).reshape(3, 4)
        for axis in (0, 1, 2):
            volume = sitk.GetImageFromArray(np.expand_dims(arr, 2 - axis))
            volume.SetOrigin((1.0, 2.0, 3.0))
            with self.subTest(axis=axis):
                self.assertEqual(io.one_slice_axis(volume), axis)
                flat = io.one_slice_pixels(volume)
                np.testing.assert_array_equal(sitk.GetArrayFromImage(flat), arr)
                back = io.as_one_slice_of(flat, volume)
                np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(volume))
                self.assertEqual(back.GetOrigin(), volume.GetOrigin())
        self.assertIsNone(io.one_slice_axis(sitk.Image([1, 1, 5], sitk.sitkFloat32)))  # a line, not a slice

    def test_register_fuse_and_run_take_an_axial_slice_and_write_it_back_in_place(self) -> None:
        rotation = math.radians(30)  # turned in its plane: a 2D direction holds it
        c, s = math.cos(rotation), math.sin(rotation)
        turned = (c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0)
        fixed = self._volume("BrainT1SliceBorder20.png", "t1.nii.gz", direction=turned)
        moving = self._volume("BrainProtonDensitySliceR10X13Y17.png", "pd.nrrd", direction=turned)
        self._cli("register", fixed, moving, "-o", self._path("reg"))
        self._assert_on(self._path("reg/moving_resampled.nii.gz"), fixed)
        angle = math.degrees(io.read_transform(self._path("reg/transform.tfm")).GetAngle())
        self.assertAlmostEqual(abs(angle), 10.0, delta=1.0)  # the known 10-degree turn of the PD slice
        self._cli("fuse", fixed, self._path("reg/moving_resampled.nii.gz"), "-o", self._path("fused.nii.gz"))
        self._assert_on(self._path("fused.nii.gz"), fixed)
        self._cli("run", fixed, moving, "--output-dir", self._path("run"), "--methods", "overlay,wavelet")
        for name in ("moving_resampled.nii.gz", "fused_overlay.nrrd", "fused_wavelet.nii.gz", "weights_wavelet.nii.gz"):
            with self.subTest(name=name):
                self._assert_on(self._path(f"run/{name}"), fixed)
        # a colour one-slice volume in NIfTI: ITK writes dim (x, y, 1, 1, 3) and reads back a 2D image
        self._cli("fuse", fixed, moving, "--method", "overlay", "-o", self._path("overlay.nrrd"))
        self._assert_on(self._path("overlay.nrrd"), fixed)
        with self.assertRaisesRegex(InputError, "read back .* as a 2D image"):
            io.write_image(sitk.ReadImage(self._path("overlay.nrrd")), self._path("overlay.nii.gz"))

    def test_a_mask_of_another_slice_is_refused(self) -> None:
        """A one-slice mask 100 mm from its one-slice image (a mask of another slice) had been taken as on the
        image's grid by register and run, as both lost their depth as 2D images; a mask on the grid is used."""
        fixed = self._volume("BrainT1SliceBorder20.png", "t1.nii.gz")
        moving = self._volume("BrainProtonDensitySliceR10X13Y17.png", "pd.nrrd")
        mask = sitk.Cast(sitk.ReadImage(fixed) > 0, sitk.sitkUInt8)
        sitk.WriteImage(mask, self._path("mask.nii.gz"))
        mask.SetOrigin((-100.0, -120.0, 137.5))
        sitk.WriteImage(mask, self._path("mask_far.nii.gz"))
        moving_mask = sitk.Cast(sitk.ReadImage(moving) > 0, sitk.sitkUInt8)
        moving_mask.SetOrigin((-100.0, -120.0, 137.5))
        sitk.WriteImage(moving_mask, self._path("moving_mask_far.nii.gz"))
        from contextlib import redirect_stderr, redirect_stdout
        from io import StringIO

        from MultimodalFusionLib import cli

        for command, option, path, text in (
                ("register", "--fixed-mask", "mask_far.nii.gz", "fixed mask is not on the fixed image"),
                ("run", "--fixed-mask", "mask_far.nii.gz", "fixed mask is not on the fixed image"),
                ("register", "--moving-mask", "moving_mask_far.nii.gz", "moving mask is not on the moving image"),
                ("run", "--moving-mask", "moving_mask_far.nii.gz", "moving mask is not on the moving image")):
            out, err = StringIO(), StringIO()
            with redirect_stdout(out), redirect_stderr(err):
                rc = cli.main([command, fixed, moving, "-o" if command == "register" else "--output-dir",
                               self._path(command), option, self._path(path)])
            with self.subTest(command=command, option=option):
                self.assertEqual(rc, 2, err.getvalue())
                self.assertIn(text, err.getvalue())
                self.assertIn("origin (LPS) (-100, -120, 137.5) vs (-100, -120, 37.5)", err.getvalue())
        self._cli("register", fixed, moving, "-o", self._path("reg"), "--fixed-mask", self._path("mask.nii.gz"))
        self._assert_on(self._path("reg/moving_resampled.nii.gz"), fixed)

    def test_a_slice_with_a_volume_is_named_as_such(self) -> None:
        """A one-slice volume registered with a volume of several slices had been told "The fixed image is 2D but
        the moving image is 3D", though both files are 3D."""
        from MultimodalFusionLib import pipeline

        fixed = self._volume("BrainT1Slice.png", "t1.nii.gz")
        volume = sitk.JoinSeries([sitk.ReadImage(fixed)[:, :, 0]] * 4)
        volume.SetOrigin((-100.0, -120.0, 35.0))
        volume.SetSpacing((0.9, 0.9, 2.5))
        sitk.WriteImage(volume, self._path("volume.nii.gz"))
        for fixed_path, moving_path, first in ((fixed, self._path("volume.nii.gz"), "fixed image"),
                                               (self._path("volume.nii.gz"), fixed, "moving image")):
            with self.subTest(fixed=os.path.basename(fixed_path)), self.assertRaises(InputError) as ctx:
                pipeline.run(fixed_path, moving_path, self._path("out"), methods="average")
            self.assertIn("is a volume of one slice (size (181, 217, 1))", str(ctx.exception))
            self.assertIn(first, str(ctx.exception).split("volume of one slice")[0])
            self.assertIn("registering a slice to a volume is not supported", str(ctx.exception))

    def test_run_without_registration_refuses_slices_at_other_depths(self) -> None:
        """run --no-register takes the images as they lie: a one-slice moving volume 100 mm from the fixed slice
        had been fused with it as if they lay together (as 2D images both lose their depth), where mmfusion
        resample without a transform refuses it as not overlapping and fuse as off the grid."""
        from MultimodalFusionLib import pipeline

        fixed = self._volume("BrainT1Slice.png", "t1.nii.gz")
        near = self._volume("BrainProtonDensitySlice.png", "near.nii.gz")
        far = sitk.ReadImage(near)
        far.SetOrigin((-100.0, -120.0, 137.5))
        sitk.WriteImage(far, self._path("far.nii.gz"))
        with self.assertRaises(InputError) as ctx:
            pipeline.run(fixed, self._path("far.nii.gz"), self._path("far"), methods="average", register=False)
        self.assertIn("does not overlap the fixed image t1.nii.gz as they lie (no registration)", str(ctx.exception))
        result = pipeline.run(fixed, near, self._path("near"), methods="average", register=False)
        self._assert_on(result["files"]["fused_average"], fixed)

    def test_a_slice_a_2d_image_cannot_place_is_fused_but_not_registered(self) -> None:
        tilted = (1.0, 0.0, 0.0, 0.0, 0.9397, -0.342, 0.0, 0.342, 0.9397)  # 20 degrees out of the axial plane
        for axis, direction, text in ((1, None, "along axis 1, not the last"),
                                      (2, tilted, "in a plane that is not axial")):
            a = self._volume("BrainT1Slice.png", f"a{axis}.nii.gz", axis, direction)
            b = self._volume("BrainProtonDensitySlice.png", f"b{axis}.nii.gz", axis, direction)
            with self.subTest(axis=axis):
                with self.assertRaises(InputError) as ctx:
                    io.one_slice_as_2d(io.read_image(a), "fixed image")
                self.assertIn(text, str(ctx.exception))
                self.assertIn("mmfusion fuse", ctx.exception.fix)
                self._cli("fuse", a, b, "-o", self._path(f"f{axis}.nii.gz"))  # fusion needs only the grid
                self._assert_on(self._path(f"f{axis}.nii.gz"), a)

    def test_resample_takes_a_slice_with_the_2d_transform_register_wrote_and_with_a_3d_one(self) -> None:
        """mmfusion resample had refused a one-slice volume ("a 3D image with a single slice"), so the 2D
        transform mmfusion register wrote for a pair of them could not be applied to another image."""
        from MultimodalFusionLib.preprocess import resample

        turned = (math.cos(math.radians(30)), -math.sin(math.radians(30)), 0.0,
                  math.sin(math.radians(30)), math.cos(math.radians(30)), 0.0, 0.0, 0.0, 1.0)
        fixed = self._volume("BrainT1SliceBorder20.png", "t1.nii.gz", direction=turned)
        moving = self._volume("BrainProtonDensitySliceR10X13Y17.png", "pd.nrrd", direction=turned)
        self._cli("register", fixed, moving, "-o", self._path("reg"))
        self._cli("resample", moving, "--reference", fixed, "--transform", self._path("reg/transform.tfm"),
                  "-o", self._path("pd_on_t1.nii.gz"))
        self._assert_on(self._path("pd_on_t1.nii.gz"), fixed)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(self._path("pd_on_t1.nii.gz"))),
                                      sitk.GetArrayFromImage(sitk.ReadImage(self._path("reg/moving_resampled.nii.gz"))))

        # the same turn as a 3D transform (about the slice's normal, through a point on it) gives the same
        # voxels, resampled in 3D; one that moves the slice by more than half its depth (2.5 mm) finds nothing
        flat = io.read_transform(self._path("reg/transform.tfm"))
        spatial = sitk.Euler3DTransform((*flat.GetCenter(), 37.5), 0.0, 0.0, flat.GetAngle(),
                                        (*flat.GetTranslation(), 0.0))
        image, grid = io.read_image(moving), io.read_image(fixed)
        np.testing.assert_allclose(sitk.GetArrayFromImage(resample(image, grid, spatial)),
                                   sitk.GetArrayFromImage(resample(image, grid, flat)), atol=1e-3)
        spatial.SetTranslation((*flat.GetTranslation(), 2.0))
        self.assertEqual(float(sitk.GetArrayFromImage(resample(image, grid, spatial)).max()), 0.0)
        self._cli("resample", moving, "--reference", fixed, "-o", self._path("identity.nii.gz"))  # 3D identity
        self._assert_on(self._path("identity.nii.gz"), fixed)

        # a 2D transform with a volume is a mismatch, named as such
        volume = sitk.JoinSeries([io.one_slice_pixels(grid)] * 3)
        with self.assertRaisesRegex(InputError, "The transform is 2D but the images are 3D") as ctx:
            resample(image, volume, flat)
        self.assertIn("the reference is a volume (size (221, 257, 3))", ctx.exception.fix)

        # a one-slice moving image onto a 2D reference (and a 2D one onto a one-slice reference) with a 2D
        # transform: the slice as its 2D image; it had been "a 3D image onto a 2D reference"
        flat_grid, flat_image = io.one_slice_as_2d(grid, "reference"), io.one_slice_as_2d(image, "moving image")
        expected = sitk.GetArrayFromImage(resample(flat_image, flat_grid, flat))
        onto_2d = resample(image, flat_grid, flat)
        self.assertEqual(onto_2d.GetDimension(), 2)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(onto_2d), expected)
        onto_slice = resample(flat_image, grid, flat)
        self.assertEqual(onto_slice.GetSize(), grid.GetSize())
        np.testing.assert_array_equal(sitk.GetArrayFromImage(onto_slice)[0], expected)


if __name__ == "__main__":
    unittest.main()


def _child(code: str, cwd: str, *args: str) -> subprocess.CompletedProcess:
    """Run ``code`` (``args`` its sys.argv[1:]) in a child Python with this checkout importable: a native crash
    kills it, not pytest."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                                       os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


class UpperCaseInputs(unittest.TestCase):
    """Files named with an upper- or mixed-case extension (Windows tools, old scanners' exports) are read: ITK picks
    the MetaImage, GIPL, NIfTI... readers by the extension in lower case only and had refused them ("Unable to
    determine ImageIO reader"). The user's file is neither renamed nor changed, and no link is left behind."""

    def test_upper_and_mixed_case_extensions_are_read_with_their_geometry(self) -> None:
        img = sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6))
        img.SetSpacing((1.5, 2.0, 3.0))
        img.SetOrigin((1.0, -2.0, 3.0))
        before = set(os.listdir(tempfile.gettempdir()))
        with tempfile.TemporaryDirectory() as d:
            for ext in (".mha", ".mhd", ".gipl", ".nii", ".nii.gz", ".hdr", ".nrrd"):
                for spelling in (ext.upper(), ext[:-1] + ext[-1].upper()):
                    with self.subTest(name=spelling):
                        folder = os.path.join(d, f"{ext}-{spelling}")
                        os.makedirs(folder)
                        sitk.WriteImage(img, os.path.join(folder, "x" + ext))
                        for name in os.listdir(folder):  # the header and its data file, renamed alike
                            if name.endswith(ext):
                                os.rename(os.path.join(folder, name), os.path.join(folder, "x" + spelling))
                            elif ext == ".hdr":  # its .img
                                os.rename(os.path.join(folder, name), os.path.join(folder, "x" + spelling[:-3] + (
                                    "IMG" if spelling.endswith("HDR") else "img")))
                        listing = sorted(os.listdir(folder))
                        back = io.read_image(os.path.join(folder, "x" + spelling))
                        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img))
                        self.assertEqual(back.GetSpacing(), img.GetSpacing())
                        self.assertEqual(back.GetOrigin(), img.GetOrigin())
                        self.assertEqual(sorted(os.listdir(folder)), listing)  # nothing renamed, nothing added
        self.assertEqual({n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith("mmfusion-read")},
                         set())

    def test_an_upper_case_pair_header_takes_the_data_file_its_lower_case_name_takes(self) -> None:
        # beside x.HDR.GZ lie x.img (its voxels: 1) and a stray x.img.gz (2): x.hdr.gz is read with x.img, as
        # nifti1_io looks for .img first and as the truncation check reads it; its upper-case spelling had been
        # read through a link to x.img.gz (2 in every voxel), a file the check never looked at
        import gzip

        with tempfile.TemporaryDirectory() as d:
            sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 5, 6), 1, np.int16)), os.path.join(d, "x.hdr"))
            sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 5, 6), 2, np.int16)), os.path.join(d, "y.hdr"))
            with open(os.path.join(d, "y.img"), "rb") as fh, gzip.open(os.path.join(d, "x.img.gz"), "wb") as out:
                out.write(fh.read())
            with open(os.path.join(d, "x.hdr"), "rb") as fh, gzip.open(os.path.join(d, "x.hdr.gz"), "wb") as out:
                out.write(fh.read())
            os.remove(os.path.join(d, "x.hdr"))
            lower = sitk.GetArrayFromImage(io.read_image(os.path.join(d, "x.hdr.gz")))
            os.rename(os.path.join(d, "x.hdr.gz"), os.path.join(d, "x.HDR.GZ"))
            upper = sitk.GetArrayFromImage(io.read_image(os.path.join(d, "x.HDR.GZ")))
        self.assertEqual(np.unique(lower).tolist(), [1])
        np.testing.assert_array_equal(upper, lower)

    def test_a_pair_is_checked_with_the_files_nifti1_io_reads(self) -> None:
        """The truncation check reads the pair's files nifti1_io (ITK's reader) reads, found as it finds them: from
        x.hdr.gz, x.img then x.img.gz spelt in lower case (x.IMG is no candidate: ITK reads x.img.gz); from x.img.gz,
        the header first, then the header's data file (x.img where it lies beside it). Before, the check took any
        spelling (x.IMG before x.img.gz) and the data file given: a cut-off x.img.gz beside a whole x.IMG was read
        without an error (ITK padded the missing voxels with 0), and x.hdr beside only x.IMG got ITK's
        "nifti_image_load failed"."""
        import gzip

        def voxels(value: int) -> bytes:
            with tempfile.TemporaryDirectory() as t:
                sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 5, 6), value, np.int16)), os.path.join(t, "v.hdr"))
                with open(os.path.join(t, "v.img"), "rb") as fh:
                    return fh.read()

        def write(path: str, payload: bytes) -> None:
            with open(path, "wb") as fh:
                fh.write(payload)

        with tempfile.TemporaryDirectory() as d:
            sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 5, 6), 1, np.int16)), os.path.join(d, "x.hdr"))
            with open(os.path.join(d, "x.hdr"), "rb") as fh:
                header = fh.read()
            for name in ("x.hdr", "x.img"):
                os.remove(os.path.join(d, name))
            # x.hdr.gz with a cut-off x.img.gz (what ITK reads) beside a whole x.IMG (another image's 3s)
            write(os.path.join(d, "x.hdr.gz"), gzip.compress(header))
            whole = gzip.compress(voxels(2))
            write(os.path.join(d, "x.img.gz"), whole[:len(whole) // 2])
            write(os.path.join(d, "x.IMG"), voxels(3))
            with self.assertRaises(InputError) as ctx:
                io.read_image(os.path.join(d, "x.hdr.gz"))
            self.assertIn("truncated", ctx.exception.problem)
            self.assertIn("'x.img.gz'", ctx.exception.problem)
            write(os.path.join(d, "x.img.gz"), whole)  # whole: read, with its own voxels
            self.assertEqual(np.unique(sitk.GetArrayFromImage(io.read_image(os.path.join(d, "x.hdr.gz")))).tolist(),
                             [2])
            # x.img.gz given beside a cut-off x.img: nifti1_io reads x.img (the header's first data file)
            write(os.path.join(d, "y.hdr"), header)
            write(os.path.join(d, "y.img"), voxels(4)[:100])
            write(os.path.join(d, "y.img.gz"), gzip.compress(voxels(5)))
            with self.assertRaises(InputError) as ctx:
                io.read_image(os.path.join(d, "y.img.gz"))
            self.assertIn("'y.img' holds only 100 bytes", ctx.exception.problem)
            # x.hdr beside x.IMG only: nifti1_io looks for x.img, and the refusal names it
            write(os.path.join(d, "z.hdr"), header)
            write(os.path.join(d, "z.IMG"), voxels(6))
            with self.assertRaises(InputError) as ctx:
                io.read_image(os.path.join(d, "z.hdr"))
            self.assertIn("'z.img'", ctx.exception.problem)
            self.assertNotIn("nifti_image_load", str(ctx.exception))
            # an upper-case name looks for upper-case files first, as nifti1_io does: x.HDR with x.IMG, not x.img
            write(os.path.join(d, "w.HDR"), header)
            write(os.path.join(d, "w.img"), voxels(7))
            write(os.path.join(d, "w.IMG"), voxels(8))
            self.assertEqual(np.unique(sitk.GetArrayFromImage(io.read_image(os.path.join(d, "w.HDR")))).tolist(), [8])
            self.assertEqual(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(d, "w.HDR")))).tolist(),
                             [8])  # ITK itself, given the name

    def test_a_pair_header_beside_a_single_file_alone_is_missing_its_img(self) -> None:
        """A pair's header (x.hdr, x.hdr.gz) beside no x.img or x.img.gz but an x.nii (x.nii.gz) of the same name:
        nifti1_io goes on to that file and reads the two-file header's voxels from its start, the .nii's own
        header bytes among them, without an error. Refused, naming the .img the header needs (x.hdr had been read
        as such garbage once the pair was found in nifti1_io's order; x.hdr.gz always had been)."""
        import gzip

        image = sitk.GetImageFromArray(np.full((4, 5, 6), 3, np.int16))
        with tempfile.TemporaryDirectory() as d:
            sitk.WriteImage(image, os.path.join(d, "x.hdr"))
            os.remove(os.path.join(d, "x.img"))
            sitk.WriteImage(image, os.path.join(d, "x.nii"))
            self.assertEqual(io.missing_data_file(os.path.join(d, "x.hdr")), "x.img")
            with self.assertRaises(InputError) as ctx:
                io.read_image(os.path.join(d, "x.hdr"))
            self.assertIn("its voxels are in 'x.img'", ctx.exception.problem)
            for name in ("x.hdr", "x.nii"):
                with open(os.path.join(d, name), "rb") as fh, open(os.path.join(d, "z" + name[1:] + ".gz"), "wb") as out:
                    out.write(gzip.compress(fh.read()))
            self.assertEqual(io.missing_data_file(os.path.join(d, "z.hdr.gz")), "z.img.gz")
            with self.assertRaises(InputError) as ctx:
                io.read_image(os.path.join(d, "z.hdr.gz"))
            self.assertIn("its voxels are in 'z.img.gz'", ctx.exception.problem)
            sitk.WriteImage(image, os.path.join(d, "x.img"))  # the pair whole again: read, with its voxels
            self.assertEqual(np.unique(sitk.GetArrayFromImage(io.read_image(os.path.join(d, "x.hdr")))).tolist(),
                             [3])
            self.assertEqual(np.unique(sitk.GetArrayFromImage(io.read_image(os.path.join(d, "x.img")))).tolist(),
                             [3])
            with open(os.path.join(d, "x.img"), "rb") as fh, open(os.path.join(d, "z.img.gz"), "wb") as out:
                out.write(gzip.compress(fh.read()))
            self.assertIsNone(io.missing_data_file(os.path.join(d, "z.hdr.gz")))
            self.assertEqual(np.unique(sitk.GetArrayFromImage(io.read_image(os.path.join(d, "z.hdr.gz")))).tolist(),
                             [3])

    def test_an_unreadable_upper_case_file_names_the_file_not_a_link(self) -> None:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "broken.GIPL")
            with open(path, "wb") as fh:
                fh.write(b"not an image at all" * 10)
            with self.assertRaises(InputError) as ctx:
                io.read_image(path)
            self.assertIn(path, ctx.exception.problem)
            self.assertNotIn("mmfusion-read", ctx.exception.problem)

    def test_ctrl_c_while_the_link_is_removed_leaves_no_folder_behind(self) -> None:
        """A real SIGINT, sent as the private folder is being removed (the moment Ctrl-C had left it behind, 20 of
        300 random Ctrl-Cs during reads of x.GIPL and x.HDR): KeyboardInterrupt is still raised, after the folder
        is gone. Run in a child process: the interrupt must not reach pytest."""
        code = ("import os, signal, sys, tempfile\nimport numpy as np, SimpleITK as sitk\n"
                "from MultimodalFusionLib import io\n"
                "tempfile.tempdir = os.path.abspath('tmp')\nos.mkdir('tmp')\n"
                "sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 4, 5), np.int16)), 'x.gipl')\n"
                "os.rename('x.gipl', 'x.GIPL')\n"
                "sent = []\n"
                "def hook(frame, event, arg):\n"
                "    if event == 'call' and frame.f_code.co_name == 'rmtree' and not sent:\n"
                "        sent.append(1)\n        os.kill(os.getpid(), signal.SIGINT)\n"
                "sys.setprofile(hook)\n"
                "try:\n    io.read_image('x.GIPL')\n    print('not interrupted')\n"
                "except KeyboardInterrupt:\n    print('interrupted')\n"
                "sys.setprofile(None)\n"
                "print('sent' if sent else 'not sent', 'left:', sorted(os.listdir('tmp')))\n")
        with tempfile.TemporaryDirectory() as d:
            done = _child(code, d)
        self.assertEqual(done.returncode, 0, done.stderr[-2000:])
        self.assertIn("interrupted\nsent left: []", done.stdout)

    def test_writing_an_upper_case_name_is_still_refused_naming_the_one_that_works(self) -> None:
        with self.assertRaises(InputError) as ctx:
            io.check_output_name("fused.MHA")
        self.assertIn("this package reads such a file", ctx.exception.problem)
        self.assertIn("'fused.mha'", ctx.exception.fix)


class PixelTypesBeforeTheWork(unittest.TestCase):
    """io.check_output_pixels: a format that cannot hold the output's pixel type is refused before the work (a float
    fused image to .dcm had been refused by ITK after the fusion, 11.8 s of deep fusion on a 128x128x96 pair), and
    nothing is written as another image (16-bit BioRad read back with other values, colour GIPL as grey)."""

    TYPES = (sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkUInt32, sitk.sitkInt32,
             sitk.sitkFloat32, sitk.sitkFloat64, sitk.sitkVectorUInt8, sitk.sitkVectorFloat32)

    @staticmethod
    def _itk_round_trips(pixel: int, dim: int, path: str) -> bool:
        size = [16, 16] + ([4] if dim == 3 else [])
        vector = pixel in (sitk.sitkVectorUInt8, sitk.sitkVectorFloat32)
        arr = sitk.GetArrayFromImage(sitk.Image(size, pixel, 3) if vector else sitk.Image(size, pixel))
        arr[...] = np.random.default_rng(0).integers(0, 100, arr.shape)
        try:
            sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=vector), path, False)
            back = sitk.ReadImage(path)
        except RuntimeError:
            return False
        out = sitk.GetArrayFromImage(back)
        return back.GetPixelID() == pixel and out.size == arr.size and np.array_equal(out.reshape(arr.shape), arr)

    def test_the_table_agrees_with_itk(self) -> None:
        """Fails if the table in io.py drifts from the ITK installed (JPEG 2000 beyond its types is not tried: a
        float image corrupted the heap)."""
        with tempfile.TemporaryDirectory() as d:
            for ext in (".dcm", ".pic", ".lsm", ".jp2", ".tif", ".gipl", ".mrc", ".spr"):
                for dim in (2, 3):
                    if ext == ".lsm" and dim == 2 or ext == ".jp2" and dim == 3:
                        continue  # refused by their own rules (check_output_name)
                    for pixel in self.TYPES:
                        try:
                            io.check_output_pixels("x" + ext, pixel, dim)
                            accepted = True
                        except InputError:
                            accepted = False
                        if ext == ".jp2" and not accepted:
                            continue
                        path = os.path.join(d, f"{pixel}-{dim}{ext}")
                        self.assertEqual(accepted, self._itk_round_trips(pixel, dim, path),
                                         f"{ext} {dim}D {sitk.GetPixelIDValueAsString(pixel)}")

    def test_minc_in_the_table_agrees_with_itk(self) -> None:
        """MINC holds every type but 64-bit integers and complex ones: a 64-bit integer image had been refused by ITK
        once written, as "Could not read datatype", with the fix "Check the folder is writable"."""
        types = self.TYPES + (sitk.sitkInt64, sitk.sitkUInt64)
        with tempfile.TemporaryDirectory() as d:
            for dim in (2, 3):
                for pixel in types:
                    try:
                        io.check_output_pixels("x.mnc", pixel, dim)
                        accepted = True
                    except InputError:
                        accepted = False
                    path = os.path.join(d, f"{pixel}-{dim}.mnc")
                    self.assertEqual(accepted, self._itk_round_trips(pixel, dim, path),
                                     f".mnc {dim}D {sitk.GetPixelIDValueAsString(pixel)}")

    def test_a_64_bit_integer_minc_is_refused_for_its_pixels_before_any_write(self) -> None:
        with tempfile.TemporaryDirectory() as d:
            for name in ("a.mnc", "a.mnc2"):
                with self.subTest(name), self.assertRaises(InputError) as ctx:
                    io.write_image(sitk.Image(20, 20, 4, sitk.sitkInt64), os.path.join(d, name))
                self.assertIn("MINC files hold", ctx.exception.problem)
                self.assertIn("not this 3D image's 64-bit signed integer", ctx.exception.problem)
                self.assertNotIn("writable", ctx.exception.fix)
            self.assertEqual(os.listdir(d), [])

    def test_write_image_refuses_them_naming_the_format_and_a_fix(self) -> None:
        with tempfile.TemporaryDirectory() as d:
            cases = {"f.dcm": sitk.Image([16, 16, 4], sitk.sitkFloat32), "f.pic": sitk.Image([16, 16, 4], sitk.sitkUInt16),
                     "f.gipl": sitk.Image([16, 16, 4], sitk.sitkVectorUInt8, 3),
                     "f.spr": sitk.Image([16, 16, 4], sitk.sitkInt32)}
            for name, image in cases.items():
                with self.subTest(name=name), self.assertRaises(InputError) as ctx:
                    io.write_image(image, os.path.join(d, name))
                self.assertIn(image.GetPixelIDTypeAsString(), ctx.exception.problem)
                self.assertIn(".nii.gz", ctx.exception.fix)
            self.assertEqual(os.listdir(d), [])

    def test_fuse_and_resample_refuse_a_float_dicom_before_the_work(self) -> None:
        import contextlib
        import io as io_module

        from MultimodalFusionLib import cli

        with tempfile.TemporaryDirectory() as d:
            for n in "ab":
                sitk.WriteImage(sitk.Image([16, 16, 4], sitk.sitkFloat32) + 1, os.path.join(d, f"{n}.nrrd"))
            a, b, out = (os.path.join(d, n) for n in ("a.nrrd", "b.nrrd", "f.dcm"))
            import MultimodalFusionLib.fusion as fusion
            import MultimodalFusionLib.preprocess as preprocess

            ran = []
            real_fuse, real_resample = fusion.fuse, preprocess.resample
            fusion.fuse = lambda *a, **k: ran.append("fuse") or real_fuse(*a, **k)
            preprocess.resample = lambda *a, **k: ran.append("resample") or real_resample(*a, **k)
            try:
                for argv in (["fuse", a, b, "--method", "average", "-o", out],
                             ["resample", b, "--reference", a, "-o", out]):
                    err = io_module.StringIO()
                    with self.subTest(argv=argv[0]), contextlib.redirect_stderr(err):
                        self.assertEqual(cli.main(argv), 2)
                    self.assertIn("DICOM files hold", err.getvalue())
                    self.assertIn("not this 3D image's 32-bit float", err.getvalue())
            finally:
                fusion.fuse, preprocess.resample = real_fuse, real_resample
            self.assertEqual(ran, [])  # refused before fusing or resampling
            self.assertFalse(os.path.exists(out))


class LabelMapOutputs(unittest.TestCase):
    """An ITK label map (``sitk.Cast(labels, sitk.sitkLabelUInt8)``, what SimpleITK's LabelMap filters give) is written
    as its plain integer labels: as .png it aborted the whole process (an uncaught C++ exception from
    sitk.GetArrayFromImage, "This method is not supported for LabelMaps"), and every other format refused it with
    ITK's words and the fix "Check the folder is writable". Run in a child process: the old code killed it."""

    def test_every_output_writes_its_labels(self) -> None:
        code = ("import numpy as np, SimpleITK as sitk\nfrom MultimodalFusionLib import io\n"
                "for dim, names in ((2, ('l.png', 'l.mha', 'l.nii.gz', 'l.tif')), (3, ('v.nrrd', 'v.mnc', 'v.tif'))):\n"
                "    arr = np.zeros((4, 20, 20)[3 - dim:], np.uint8)\n"
                "    arr[..., 5:10, 5:12] = 3\n"
                "    arr[..., 12:15, 2:4] = 200\n"
                "    for kind in ('sitkLabelUInt8', 'sitkLabelUInt16'):\n"
                "        labels = sitk.GetImageFromArray(arr)\n"
                "        labels.SetOrigin((0.0, 0.0, 5.0)[:dim])\n"
                "        for name in names:\n"
                "            path = io.write_image(sitk.Cast(labels, getattr(sitk, kind)), kind + name)\n"
                "            back = io.read_image(path)\n"
                "            assert np.array_equal(sitk.GetArrayFromImage(back).reshape(arr.shape), arr), (kind, name)\n"
                "            if name in ('v.nrrd', 'v.mnc'):  # TIFF keeps no origin\n"
                "                assert back.GetOrigin() == (0.0, 0.0, 5.0), (kind, name, back.GetOrigin())\n"
                "print('all written')\n")
        with tempfile.TemporaryDirectory() as d:
            done = _child(code, d)
            self.assertEqual(done.returncode, 0, done.stderr[-2000:])
            self.assertIn("all written", done.stdout)

    def test_a_label_map_keeps_its_background(self) -> None:
        labels = sitk.GetImageFromArray(np.array([[7, 7, 1], [2, 7, 7]], np.uint8))
        plain = io.plain_labels(sitk.LabelImageToLabelMap(labels, backgroundValue=7))
        self.assertEqual(plain.GetPixelID(), sitk.sitkUInt8)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(plain), [[7, 7, 1], [2, 7, 7]])
        self.assertIs(io.plain_labels(labels), labels)

    def test_the_pixel_check_takes_a_label_map_as_its_labels(self) -> None:
        io.check_output_pixels("x.tif", sitk.sitkLabelUInt16, 3)  # written as 16-bit labels, which TIFF holds
        with self.assertRaises(InputError) as ctx:
            io.check_output_pixels("x.pic", sitk.sitkLabelUInt16, 3)
        self.assertIn("not this 3D image's 16-bit unsigned integer", ctx.exception.problem)


class SmallDicomOutputs(unittest.TestCase):
    def test_small_slices_are_written_uncompressed_not_a_crash(self) -> None:
        """ITK's JPEG 2000 DICOM compression crashed the process (SIGSEGV or SIGABRT) on slices under about 9x9
        and on slices 1 pixel wide: 6x6 uint8 killed it. They are written uncompressed, with a warning, and read
        back equal. Run in a child process: the old code killed it."""
        code = ("import warnings\nimport numpy as np, SimpleITK as sitk\nfrom MultimodalFusionLib import io\n"
                "for t in (np.uint8, np.uint16, np.int16):\n"
                "    for shape in ((6, 6), (1, 512), (8, 8), (3, 6, 6)):\n"
                "        if len(shape) == 3 and t is np.int16:\n            continue\n"
                "        arr = (np.arange(np.prod(shape)) % 100).reshape(shape).astype(t)\n"
                "        with warnings.catch_warnings(record=True) as w:\n"
                "            warnings.simplefilter('always')\n"
                "            p = io.write_image(sitk.GetImageFromArray(arr), f'{t.__name__}{len(shape)}{shape[-1]}.dcm')\n"
                "            back = sitk.GetArrayFromImage(io.read_image(p)).reshape(shape)\n"
                "        assert np.array_equal(back, arr), (t, shape)\n"
                "        assert any('written uncompressed' in str(x.message) for x in w), (t, shape)\n"
                "print('all written')\n")
        with tempfile.TemporaryDirectory() as d:
            done = _child(code, d)
            self.assertEqual(done.returncode, 0, done.stderr[-2000:])
            self.assertIn("all written", done.stdout)


class DamagedCompressedNifti(unittest.TestCase):
    def test_a_nii_gz_damaged_in_its_header_is_an_input_error(self) -> None:
        """A .nii.gz whose compressed header is damaged escaped read_image as zlib.error ("Error -3 while
        decompressing data"), a traceback: the tensor check read the header with gzip.open and let it through."""
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "a.nii.gz")
            sitk.WriteImage(sitk.GetImageFromArray(np.arange(120, dtype=np.float32).reshape(4, 5, 6)), path)
            raw = open(path, "rb").read()
            damaged = os.path.join(d, "bad.nii.gz")
            with open(damaged, "wb") as fh:
                fh.write(raw[:20] + bytes(200) + raw[220:])
            with self.assertRaises(InputError):
                io.read_image(damaged)
