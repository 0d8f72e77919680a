"""Outputs that cannot be written whole (a full disk, a file size limit): a clear InputError naming the output,
no cut-off file, no temporary file, and an ``--output-dir`` as the last good run left it.

A file size limit (``RLIMIT_FSIZE``) fails the writes as a full disk does (EFBIG instead of ENOSPC), without
mounting a small file system; measured on a 2 MB tmpfs too (README).
"""

from __future__ import annotations

import contextlib
import hashlib
import io as _textio
import os
import signal
import subprocess
import sys
import tempfile
import unittest

import numpy as np
import SimpleITK as sitk

from MultimodalFusionLib import cli, io
from MultimodalFusionLib.errors import InputError

try:
    import resource
except ImportError:  # Windows
    resource = None


@contextlib.contextmanager
def _file_size_limit(nbytes: int):
    """Files of this process may not grow past ``nbytes`` (writes past it fail with EFBIG)."""
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the signal ends the process
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_handler)


def _noise(shape: tuple[int, ...]) -> sitk.Image:
    return sitk.GetImageFromArray(np.random.default_rng(0).normal(size=shape).astype(np.float32))


def _hashes(folder: str) -> dict[str, str]:
    out = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        with open(path, "rb") as fh:
            out[name] = hashlib.sha256(fh.read()).hexdigest() if os.path.isfile(path) else "dir"
    return out


@unittest.skipIf(resource is None or not hasattr(signal, "SIGXFSZ"), "needs POSIX file size limits")
class WritesCutShort(unittest.TestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.dir = tmp.name

    def test_nifti_cut_short_is_an_error_not_a_written_file(self) -> None:
        """ITK's NIfTI writer prints "** ERROR: NWAD: wrote only 0 of 524288 bytes" and returns: write_image
        had returned the path of a cut-off file (100000 bytes of 524640), and `resample` exited 0."""
        image = _noise((32, 64, 64))  # 512 KiB of voxels
        # an Analyze/NIfTI pair: the same writer; noise does not compress, so the gzip files outgrow the limit too
        for name in ("a.nii", "a.nii.gz", "a.hdr", "a.img", "a.hdr.gz", "a.img.gz"):
            path = os.path.join(self.dir, name)
            with self.subTest(name), _file_size_limit(100_000):
                with self.assertRaises(InputError) as caught:
                    io.write_image(image, path)
            self.assertIn(f"Cannot write '{path}'", str(caught.exception))
            # the limit named with its fix: "a full disk or a file size limit; 79565365248 bytes free there", with
            # "Free space on that disk", had sent a user with a disk's worth free to free space
            self.assertIn("the file size limit is 100000 bytes (ulimit -f)", caught.exception.problem)
            self.assertTrue(caught.exception.fix.startswith("Raise the file size limit"), caught.exception.fix)
            self.assertEqual(os.listdir(self.dir), [])  # neither the output nor a temporary file

    def test_a_refused_write_leaves_no_new_folder_behind(self) -> None:
        """A single-file output refused for the room it needs (-o new/sub/x.nii, .nhdr, .jpg) had left new/sub
        behind, empty, where a refused run's --output-dir is removed (io.output_folder): the folders a write made
        are removed with its temporary file while they are still empty; a folder that was there stays."""
        image = _noise((32, 64, 64))
        picture = sitk.GetImageFromArray(np.random.default_rng(1).integers(0, 256, (400, 400), dtype=np.uint8))
        os.mkdir(os.path.join(self.dir, "kept"))
        for name, written in (("new/sub/a.nii", image), ("new/sub/a.nhdr", image), ("new/sub/p.jpg", picture),
                              ("kept/sub/a.nii", image), ("kept/a.nii", image)):
            with self.subTest(name), _file_size_limit(100_000):
                with self.assertRaises(InputError):
                    io.write_image(written, os.path.join(self.dir, name))
        self.assertEqual(os.listdir(self.dir), ["kept"])
        self.assertEqual(os.listdir(os.path.join(self.dir, "kept")), [])
        path = os.path.join(self.dir, "new", "sub", "a.nii")  # a write that succeeds keeps its new folders
        self.assertEqual(io.write_image(image, path), path)

    def test_gipl_bmp_stimulate_pic_and_j2k_cut_short_are_errors_not_written_files(self) -> None:
        """ITK's GIPL, BMP, Stimulate, BioRad and JPEG 2000 codestream writers report no write error either: at a
        100000-byte limit, x.gipl, x.gipl.gz (a gzip stream cut short), x.bmp, x.pic and x.j2k were left as
        100000-byte files that read back as truncated (or not at all), x.spr beside a 100000-byte x.sdt of its 524288
        (ITK's reader: "Wanted 524288 bytes, but read 100000"), and write_image returned their paths."""
        volume = _noise((32, 64, 64))
        picture = sitk.GetImageFromArray(np.random.default_rng(1).integers(0, 256, (400, 400), dtype=np.uint8))
        for name, image in (("a.gipl", volume), ("a.gipl.gz", volume), ("p.bmp", picture), ("a.spr", volume),
                            ("a.pic", sitk.Cast(sitk.RescaleIntensity(volume), sitk.sitkUInt8)), ("p.j2k", picture)):
            path = os.path.join(self.dir, name)
            with self.subTest(name), _file_size_limit(100_000):
                with self.assertRaises(InputError) as caught:
                    io.write_image(image, path)
            self.assertIn(f"Cannot write '{path}'", str(caught.exception))
            self.assertIn("stopped before the end of the file", str(caught.exception))
            self.assertEqual(os.listdir(self.dir), [])
            self.assertEqual(io.write_image(image, path), path)  # without the limit: written whole
            np.testing.assert_allclose(sitk.GetArrayFromImage(io.read_image(path)), sitk.GetArrayFromImage(image),
                                       atol=1e-3)  # a BMP is read back as RGB, then its luminance
            for written in os.listdir(self.dir):  # x.spr's x.sdt too
                os.remove(os.path.join(self.dir, written))

    def _write_in_child(self, path: str, limit: int, what: str) -> subprocess.CompletedProcess:
        """Write ``what`` ("picture": 400x400 8-bit noise, "volume": 64x64x32 float noise, "volume16": the same
        of 16-bit unsigned integers, "bspline": a B-spline
        transform of 6609 values) to ``path`` with write_image or write_transform, in a child process whose files may
        not grow past ``limit`` bytes; it prints 'written PATH' or 'refused MESSAGE'."""
        script = (
            "import resource, signal, sys\n"
            "import numpy as np, SimpleITK as sitk\n"
            "from MultimodalFusionLib import io\n"
            "from MultimodalFusionLib.errors import InputError\n"
            "path, limit, what = sys.argv[1], int(sys.argv[2]), sys.argv[3]\n"
            "rng = np.random.default_rng(0)\n"
            "if what == 'picture':\n"
            "    out = sitk.GetImageFromArray(rng.integers(0, 256, (400, 400), dtype=np.uint8))\n"
            "elif what == 'volume':\n"
            "    out = sitk.GetImageFromArray(rng.normal(size=(32, 64, 64)).astype(np.float32))\n"
            "elif what == 'volume16':\n"
            "    out = sitk.GetImageFromArray(rng.integers(0, 65536, (32, 64, 64)).astype(np.uint16))\n"
            "else:\n"
            "    out = sitk.BSplineTransformInitializer(sitk.Image(64, 64, 64, sitk.sitkFloat32), [10, 10, 10])\n"
            "    out.SetParameters(rng.normal(size=len(out.GetParameters())).tolist())\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))\n"
            "try:\n"
            "    write = io.write_transform if what == 'bspline' else io.write_image\n"
            "    print('written', write(out, path))\n"
            "except InputError as exc:\n"
            "    print('refused', exc)\n")
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
        return subprocess.run([sys.executable, "-c", script, path, str(limit), what], capture_output=True, text=True,
                              env=env, timeout=120)

    def test_jpeg_past_the_room_left_is_refused_and_the_process_lives(self) -> None:
        """libjpeg ends the process on a write error ("Output file write error --- out of disk space?", exit status
        1): a JPEG output on a full disk, or past the file size limit, took the whole program down (Slicer with it)
        and left a cut temporary file. Refused before ITK writes where the room cannot hold the most such a file
        takes; run in a child process, which the old code ended."""
        path = os.path.join(self.dir, "p.jpg")
        for limit, said in ((20_000, "refused"), (2_000_000, "written")):  # the file itself: 134 KB
            with self.subTest(limit=limit):
                done = self._write_in_child(path, limit, "picture")
                self.assertEqual(done.returncode, 0, done.stderr)
                self.assertTrue(done.stdout.startswith(said), done.stdout + done.stderr)
                if said == "refused":
                    self.assertIn(f"Cannot write '{path}': a JPEG file of this 400x400 image may take up to",
                                  done.stdout)
                    self.assertIn("the file size limit is 20000 bytes (ulimit -f)", done.stdout)
                    self.assertEqual(os.listdir(self.dir), [])  # nor a temporary file
                else:
                    self.assertEqual(io.read_image(path).GetSize(), (400, 400))

    def test_hdf5_and_minc_past_the_room_left_are_refused_and_the_process_lives(self) -> None:
        """The HDF5 library inside ITK's HDF5 image writer aborted the process on a write error (SIGABRT, "terminate
        called after throwing an instance of 'H5::DataSetIException'"), leaving a cut .mmf-tmp-....h5; its MINC
        writer (HDF5 inside) left the library broken: refused as a file "ITK writes but cannot read back" (the wrong
        reason), then the process crashed (SIGSEGV at exit). Refused before ITK writes where the room cannot hold the
        voxels and HDF5's overhead; the 512 KB volume's files take 500-540 KB."""
        for name, label in (("a.h5", "an HDF5"), ("a.hdf5", "an HDF5"), ("a.mnc", "a MINC"), ("a.mnc2", "a MINC")):
            path = os.path.join(self.dir, name)
            for limit, said in ((100_000, "refused"), (2_000_000, "written")):
                with self.subTest(name, limit=limit):
                    done = self._write_in_child(path, limit, "volume")
                    self.assertEqual(done.returncode, 0, done.stderr[-2000:])
                    self.assertTrue(done.stdout.startswith(said), done.stdout + done.stderr[-2000:])
                    if said == "refused":
                        self.assertIn(f"Cannot write '{path}': {label} file of this 64x64x32 image may take up to",
                                      done.stdout)
                        self.assertIn("the file size limit is 100000 bytes (ulimit -f)", done.stdout)
                        self.assertEqual(os.listdir(self.dir), [])
                    else:
                        np.testing.assert_array_equal(sitk.GetArrayFromImage(io.read_image(path)),
                                                      sitk.GetArrayFromImage(_noise((32, 64, 64))))
                        os.remove(path)

    def test_transform_past_the_room_left_is_refused(self) -> None:
        """ITK's HDF5 transform writer raised "H5Dwrite failed" past the limit and left the HDF5 library broken (the
        process crashed at exit, SIGSEGV); its text writer reported nothing: a B-spline's .tfm cut at the limit was
        returned as written (and read back without an error)."""
        for name in ("t.h5", "t.tfm", "t.txt", "t.mat"):
            path = os.path.join(self.dir, name)
            for limit, said in ((50_000, "refused"), (1_000_000, "written")):  # the files: 53-130 KB
                with self.subTest(name, limit=limit):
                    done = self._write_in_child(path, limit, "bspline")
                    self.assertEqual(done.returncode, 0, done.stderr[-2000:])
                    self.assertTrue(done.stdout.startswith(said), done.stdout + done.stderr[-2000:])
                    if said == "refused":
                        self.assertIn(f"Cannot write '{path}': a {name[1:]} file of this transform (BSplineTransform: "
                                      "6609 values) may take up to", done.stdout)
                        self.assertEqual(os.listdir(self.dir), [])
                    else:
                        self.assertEqual(len(io.read_transform(path).GetParameters()), 6591)
                        os.remove(path)

    def test_writes_itk_stops_at_the_limit_say_the_disk_is_why(self) -> None:
        """ITK's MetaImage, NRRD, PNG, TIFF, LSM, VTK, MRC and DICOM writers raise on a full disk or at the file size
        limit, in their own words ("File too large", "failed to write to file", "Could not write file", and
        DICOM's "DICOM does not support this component type", a wrong reason), and the fix was "Check the folder is
        writable and the extension is supported": neither names the disk. Now they say the limit (or the disk)
        stopped the write, and how to get past it (a 1 MiB tmpfs: "the disk is full (0 bytes free there ...)")."""
        for name, what in (("a.mha", "volume"), ("a.mhd", "volume"), ("a.nrrd", "volume"), ("p.png", "picture"),
                           ("p.tif", "picture"), ("a.lsm", "volume16"), ("a.vtk", "volume"), ("a.mrc", "volume"),
                           ("a.dcm", "volume16")):
            path = os.path.join(self.dir, name)
            with self.subTest(name):
                done = self._write_in_child(path, 20_000, what)
                self.assertEqual(done.returncode, 0, done.stderr[-2000:])
                self.assertTrue(done.stdout.startswith(f"refused Cannot write '{path}': the file reached the file size "
                                                       "limit (20000 bytes, ulimit -f) and ITK stopped writing it"),
                                done.stdout)
                self.assertTrue(done.stdout.rstrip().endswith(
                    "Fix: Raise the file size limit (ulimit -f), or write a smaller output."), done.stdout)
                self.assertEqual(os.listdir(self.dir), [])

    def test_lsm_and_tiff_cut_short_unreported_say_the_limit(self) -> None:
        """ITK's LSM writer returns when libtiff cannot write the file's header (it prints "Error writing TIFF
        header"): under a 4-byte limit (a full disk) the empty file had been refused as "ITK writes .lsm files but
        cannot read them back" (fix: another format); and the LSM and TIFF writers report no failure to write the
        last slice's directory: 100 bytes short of room, the volume had been refused as "read back as another image"
        of 31 slices. Both now say the limit (or the disk) stopped the write."""
        for name in ("a.lsm", "a.tif"):
            path = os.path.join(self.dir, name)
            done = self._write_in_child(path, 1 << 30, "volume16")
            self.assertTrue(done.stdout.startswith("written"), done.stdout + done.stderr[-2000:])
            whole = os.path.getsize(path)
            os.remove(path)
            for limit in (4, whole - 100) if name == "a.lsm" else (whole - 100,):
                with self.subTest(name, limit=limit):
                    done = self._write_in_child(path, limit, "volume16")
                    self.assertEqual(done.returncode, 0, done.stderr[-2000:])
                    self.assertTrue(done.stdout.startswith(f"refused Cannot write '{path}': "), done.stdout)
                    self.assertRegex(done.stdout, r"file size limit|a full disk")
                    self.assertNotIn("read back", done.stdout)
                    self.assertNotIn("Name the output", done.stdout)
                    self.assertEqual(os.listdir(self.dir), [])

    def test_json_cut_short_is_an_input_error(self) -> None:
        """It had escaped as a bare OSError: a traceback from the CLI."""
        path = os.path.join(self.dir, "metrics.json")
        with _file_size_limit(1000), self.assertRaises(InputError) as caught:
            io.write_json(path, {"x": "y" * 5000})
        self.assertIn(f"Cannot write '{path}' (File too large)", str(caught.exception))
        self.assertEqual(os.listdir(self.dir), [])

    def test_register_names_the_output_and_keeps_the_earlier_results(self) -> None:
        """The error named the staged copy ('DIR/.mmf-staging-x1y2/checkerboard.png'), not the output."""
        fixed = io.write_image(_noise((24, 48, 48)), os.path.join(self.dir, "f.nii.gz"))
        moving = io.write_image(_noise((24, 48, 48)), os.path.join(self.dir, "m.nii.gz"))
        out = os.path.join(self.dir, "out")
        argv = ["register", fixed, moving, "-o", out, "--seed", "1", "--stages", "rigid"]
        with contextlib.redirect_stdout(_textio.StringIO()), contextlib.redirect_stderr(_textio.StringIO()):
            self.assertEqual(cli.main(argv), 0)
        before = _hashes(out)
        err = _textio.StringIO()
        with contextlib.redirect_stdout(_textio.StringIO()), contextlib.redirect_stderr(err), \
                _file_size_limit(50_000):  # the transform and metrics fit, the resampled image does not
            self.assertEqual(cli.main(argv[:-4] + ["--seed", "2"]), 2)
        self.assertIn(f"error: Cannot write '{os.path.join(out, 'moving_resampled.nii.gz')}'", err.getvalue())
        self.assertNotIn(".mmf-", err.getvalue())
        self.assertEqual(_hashes(out), before)


class NearlyFullDisk(unittest.TestCase):
    """The disk is blamed for a failed image write only where it can have stopped it: with less than 1 MiB free,
    any ITK write failure had been said to be "the disk is full" (fix: free space), also one for a pixel type the
    format does not hold, with 897024 bytes free and a few KB to write."""

    def test_the_room_left_decides_only_with_less_than_the_file_still_needs(self) -> None:
        self.assertFalse(io._short_of_room(897_024, io._most_image_bytes(sitk.Image(20, 20, 4, sitk.sitkInt64)), 0))
        self.assertTrue(io._short_of_room(0, io._most_image_bytes(_noise((32, 64, 64))), 450_000))
        self.assertFalse(io._short_of_room(2 << 20, 10 << 20, 0))  # 2 MiB free: the words must say it

    @unittest.skipIf(resource is None or not hasattr(signal, "SIGXFSZ"), "needs POSIX file size limits")
    def test_a_file_cut_short_below_the_limit_is_the_disk(self) -> None:
        """A write ITK left cut short without reporting it (NIfTI, GIPL, TIFF...) had been blamed on the file size
        limit wherever one was set, however far the file stopped short of it: a 10-byte file under a 1 GiB limit
        read "the file size limit is 1073741824 bytes" with the fix "Raise the file size limit" first, where
        the writes ITK reports (_stopped_by_disk) name the limit only when a file reached it. The same rule now."""
        with tempfile.TemporaryDirectory() as folder:
            tmp = os.path.join(folder, "t.nii")
            with open(tmp, "wb") as fh:
                fh.write(bytes(10))
            with _file_size_limit(1 << 30):
                far = io._written_cut_short("a.nii", tmp, "NIfTI")
            self.assertIn("a full disk", far.problem)
            self.assertNotIn("ulimit", far.problem + far.fix)
            with _file_size_limit(10):
                reached = io._written_cut_short("a.nii", tmp, "NIfTI")
            self.assertIn("the file size limit is 10 bytes (ulimit -f)", reached.problem)
            self.assertTrue(reached.fix.startswith("Raise the file size limit"), reached.fix)

    def test_on_a_small_file_system(self) -> None:
        """A real 2 MiB tmpfs (needs the right to mount one: root on Linux), 897024 bytes left free."""
        folder = tempfile.mkdtemp()
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", folder], capture_output=True)
        if mounted.returncode != 0:
            os.rmdir(folder)
            self.skipTest("cannot mount a tmpfs here")
        try:
            with open(os.path.join(folder, "filler"), "wb") as fh:
                fh.write(bytes(1_200_000))
            with self.assertRaises(InputError) as cm:  # MINC holds no 64-bit integers: refused before any write
                io.write_image(sitk.Image(20, 20, 4, sitk.sitkInt64), os.path.join(folder, "a.mnc"))
            self.assertNotIn("disk is full", cm.exception.problem)
            self.assertNotIn("Free space", cm.exception.fix)
            # a 2D label map (refused by ITK once, blamed on the disk) is written as its plain labels
            self.assertEqual(io.read_image(io.write_image(sitk.Image(20, 20, sitk.sitkLabelUInt8),
                                                          os.path.join(folder, "b.mha"))).GetSize(), (20, 20))
            os.remove(os.path.join(folder, "b.mha"))
            picture = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 256, (1200, 1200), dtype=np.uint8))
            with self.assertRaises(InputError) as cm:  # one the disk did stop is still said so
                io.write_image(picture, os.path.join(folder, "p.png"))
            self.assertIn("the disk is full", cm.exception.problem)
            self.assertEqual(os.listdir(folder), ["filler"])
            if resource is not None and hasattr(signal, "SIGXFSZ"):
                # a NIfTI the full disk cut short (ITK does not report it) under a file size limit far above it
                with _file_size_limit(1 << 30), self.assertRaises(InputError) as cm:
                    io.write_image(_noise((64, 64, 64)), os.path.join(folder, "a.nii"))  # 1 MiB
                self.assertIn("stopped before the end of the file (a full disk;", cm.exception.problem)
                self.assertTrue(cm.exception.fix.startswith("Free space on that disk"), cm.exception.fix)
                self.assertEqual(os.listdir(folder), ["filler"])
        finally:
            subprocess.run(["umount", folder], check=True)
            os.rmdir(folder)


if __name__ == "__main__":
    unittest.main()
