"""DICOM inputs as scanners and PACS write them: geometry read from the tags exactly (or refused naming
the tag and the fix), and no patient-identifying value in anything the package shows or writes.

Every series is written here with pydicom (a dependency of the package), a few small slices each.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import sys
import tempfile
import unittest
import warnings
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from MultimodalFusionLib import io
from MultimodalFusionLib.errors import InputError

#: identifying values written into every file: none may show up anywhere
PHI = {"PatientName": "Zzyzx^Quintessa", "PatientID": "PID998877", "PatientBirthDate": "19410315",
       "InstitutionName": "St Elsewhere Hospital", "AccessionNumber": "ACC55443322", "StudyDate": "20230417",
       "ReferringPhysicianName": "Kildare^James", "OperatorsName": "Operator^Olga", "StationName": "STATIONXQ7",
       "StudyTime": "101112", "StudyID": "STUDY4711", "OtherPatientIDs": "OPID424242",
       "PatientAddress": "77 Quokka Lane", "InstitutionAddress": "9 Xanadu Road", "SeriesDate": "20230418",
       "AcquisitionDate": "20230419", "ContentDate": "20230420", "AcquisitionTime": "161718",
       "PerformingPhysicianName": "Welby^Marcus", "DeviceSerialNumber": "SN7Q7Q7Q", "PatientComments": "COMMENTXYZQ"}

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


#: [folder, list] while a test watches the copies removed from ``folder`` (see _audit_removed_copies)
_AUDIT_WATCH: list = []


def _audit_removed_copies(event: str, args: tuple) -> None:
    """Python's audit hook (it cannot be removed, so it does nothing unless a test set :data:`_AUDIT_WATCH`): the
    files of a folder below the watched one as they are when shutil.rmtree removes it (name of that folder, bytes)."""
    if event != "shutil.rmtree" or not _AUDIT_WATCH:
        return
    watched, found = _AUDIT_WATCH
    removed = os.fspath(args[0])
    if os.path.dirname(removed) != watched:
        return
    for sub, _, files in os.walk(removed):
        for name in files:
            with open(os.path.join(sub, name), "rb") as fh:
                found.append((os.path.basename(removed), fh.read()))


sys.addaudithook(_audit_removed_copies)


def write_series(folder: str, *, positions: Sequence[Sequence[float]] | None = None,
                 orientations: Sequence[Sequence[float]] | None = None, rows: int = 12, cols: int = 10,
                 pixel_spacing: tuple[float, float] = (0.8, 0.9), modality: str = "CT",
                 description: str = "BODY 2.5mm", prefix: str = "IM", series_uid: str | None = None,
                 drop: Sequence[str] = (), transfer_syntax: str | None = None) -> np.ndarray:
    """Write one slice per position (LPS, mm; default 6 axial slices 2.5 mm apart) and return the
    stored values (slices, rows, cols) in Hounsfield units (CT: stored - 1024)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    os.makedirs(folder, exist_ok=True)
    if positions is None:
        positions = [(-12.0, -14.0, 30.0 + 2.5 * k) for k in range(6)]
    orientations = orientations or [AXIAL] * len(positions)
    series_uid, study_uid = series_uid or generate_uid(), generate_uid()
    rng = np.random.default_rng(len(positions))
    values = []
    for k, (position, orientation) in enumerate(zip(positions, orientations)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = os.path.join(folder, f"{prefix}{k:04d}.dcm")
        ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        for name, value in PHI.items():
            setattr(ds, name, value)
        ds.Modality, ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = modality, description, 3, k + 1
        ds.SeriesInstanceUID, ds.StudyInstanceUID = series_uid, study_uid
        ds.ImagePositionPatient = [float(v) for v in position]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = list(pixel_spacing)  # row spacing (between rows: along the column axis), column spacing
        ds.SliceThickness = 2.5
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        # a bright ball in the slice stack, with some noise: registrable, and every value different
        y, x = np.mgrid[:rows, :cols]
        r2 = ((y - rows / 2) / rows) ** 2 + ((x - cols / 2) / cols) ** 2 + ((k - len(positions) / 2) / 8) ** 2
        stored = (1000 + 800 * np.exp(-r2 / 0.05) + rng.integers(0, 50, (rows, cols))).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        for name in drop:
            delattr(ds, name)
        if transfer_syntax is not None:  # an encapsulated frame (its content does not matter: it is refused)
            ds.PixelData = encapsulate([stored.tobytes()])
            ds["PixelData"].VR = "OB"
            ds.file_meta.TransferSyntaxUID = transfer_syntax
        ds.save_as(path, enforce_file_format=transfer_syntax is None)
        values.append(stored.astype(np.float64) - 1024)
    return np.array(values)


def voxel_centres(image: sitk.Image) -> np.ndarray:
    """The physical point (LPS) of the first voxel of each slice, and of each slice's last row/column."""
    size = image.GetSize()
    idx = [(0, 0, k) for k in range(size[2])] + [(size[0] - 1, 0, 0), (0, size[1] - 1, 0)]
    return np.array([image.TransformContinuousIndexToPhysicalPoint([float(i) for i in ix]) for ix in idx])


def expected_centres(positions: Sequence[Sequence[float]], orientation: Sequence[float], rows: int, cols: int,
                     pixel_spacing: tuple[float, float]) -> np.ndarray:
    """What the tags say: ImagePositionPatient is the first voxel's centre; column index i moves along the
    row cosines by the column spacing (PixelSpacing[1]), row index j along the column cosines by PixelSpacing[0]."""
    row, col = np.array(orientation[:3]), np.array(orientation[3:])
    first = np.array(positions[0], dtype=float)
    return np.array([list(p) for p in positions] + [first + (cols - 1) * pixel_spacing[1] * row,
                                                     first + (rows - 1) * pixel_spacing[0] * col])


def _mmfusion(*argv: str) -> tuple[int, str]:
    """``mmfusion ARGV`` in this process: its exit status and what it printed (stdout, then stderr)."""
    import contextlib
    import io as text_io

    from MultimodalFusionLib import cli

    err = text_io.StringIO()
    with contextlib.redirect_stdout(text_io.StringIO()) as out, contextlib.redirect_stderr(err):
        rc = cli.main(list(argv))
    return rc, out.getvalue() + err.getvalue()


class DicomGeometryFromTags(unittest.TestCase):
    """Each image is placed where its ImagePositionPatient/ImageOrientationPatient/PixelSpacing put it."""

    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.dir = self.tmp.name

    def _slice_files(self, specs) -> dict[str, str]:
        """One 32x32 axial DICOM file of one slice for each (name, ImagePositionPatient, modality): name -> path."""
        paths = {}
        for name, position, modality in specs:
            write_series(os.path.join(self.dir, name), positions=[position], rows=32, cols=32,
                         pixel_spacing=(1.0, 1.0), modality=modality, prefix=name)
            paths[name] = os.path.join(self.dir, name, f"{name}0000.dcm")
        return paths

    def _assert_placed(self, image: sitk.Image, positions, orientation, rows=12, cols=10,
                       pixel_spacing=(0.8, 0.9)) -> None:
        np.testing.assert_allclose(voxel_centres(image),
                                   expected_centres(positions, orientation, rows, cols, pixel_spacing), atol=1e-3)

    def test_one_oblique_file_keeps_its_geometry(self) -> None:
        # a slice tilted 20 degrees about the left-right axis: no 2D direction holds it, so it stays a
        # one-slice volume (it was read as a 2D image with a sheared direction, every row 6% short)
        c, s = math.cos(math.radians(20)), math.sin(math.radians(20))
        orientation = (1.0, 0.0, 0.0, 0.0, c, s)
        write_series(self.dir, positions=[(-12.0, -14.0, 30.0)], orientations=[orientation])
        image = io.read_image(os.path.join(self.dir, "IM0000.dcm"))
        self.assertEqual(image.GetDimension(), 3)
        self._assert_placed(image, [(-12.0, -14.0, 30.0)], orientation)

    def test_a_folder_of_one_slice_is_read_as_the_file_is(self) -> None:
        # ITK's series reader gave a one-slice volume, which every command refused ("Read it as a 2D image")
        write_series(self.dir, positions=[(-12.0, -14.0, 30.0)])
        from_folder = io.read_image(self.dir)
        from_file = io.read_image(os.path.join(self.dir, "IM0000.dcm"))
        self.assertEqual(from_folder.GetDimension(), 2)
        for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
            self.assertEqual(getattr(from_folder, get)(), getattr(from_file, get)(), get)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(from_folder), sitk.GetArrayFromImage(from_file))

    def test_run_and_register_write_a_dicom_slices_results_where_it_lies(self) -> None:
        """One axial DICOM file each, read as 2D, had lost where the slice lies (ImagePositionPatient's S, 37.5 mm):
        `run` wrote fused_average.png (no origin at all) and moving_resampled.nrrd at S 0, away from the slice Slicer
        shows, and fused slices 100 mm apart with --no-register as if they lay together. Read as the one-slice
        volumes they are, they are registered, fused and scored as the same 2D images, and written as one-slice
        volumes where Slicer shows the fixed file, as a slice Slicer saved is."""
        import contextlib
        import io as text_io

        from MultimodalFusionLib import cli, pipeline

        paths = self._slice_files((("fixed", (-12.0, -14.0, 37.5), "CT"), ("moving", (-10.0, -13.0, 37.5), "MR"),
                                         ("apart", (-10.0, -13.0, 137.5), "MR")))
        self.assertEqual(io.read_image(paths["fixed"]).GetDimension(), 2)  # by default, as before
        volume = io.read_image(paths["fixed"], slice_as_2d=False)
        self.assertEqual((volume.GetSize(), volume.GetOrigin()), ((32, 32, 1), (-12.0, -14.0, 37.5)))
        slice_geometry = sitk.ReadImage(paths["fixed"])  # the file as ITK (and Slicer) places it
        new = pipeline.run(paths["fixed"], paths["moving"], os.path.join(self.dir, "run"), stages=["rigid"],
                           methods=["average"], seed=0)
        # the same 2D images given as read before: what run computed then
        old = pipeline.run(io.read_image(paths["fixed"]), io.read_image(paths["moving"]), os.path.join(self.dir, "old"),
                           stages=["rigid"], methods=["average"], seed=0)
        self.assertEqual(new["registration"].transform.GetParameters(), old["registration"].transform.GetParameters())
        for key in ("registration_metrics", "metrics"):  # as text: SCD is NaN here (the two slices' values are alike)
            self.assertEqual(json.dumps(new[key], sort_keys=True), json.dumps(old[key], sort_keys=True), key)
        self.assertEqual(os.path.basename(old["files"]["fused_average"]), "fused_average.png")
        for key, name in (("fused_average", "fused_average.nii.gz"), ("moving_resampled", "moving_resampled.nii.gz")):
            written = sitk.ReadImage(new["files"][key])
            self.assertEqual(os.path.basename(new["files"][key]), name)
            for get in ("GetSize", "GetOrigin", "GetSpacing", "GetDirection"):
                self.assertEqual(getattr(written, get)(), getattr(slice_geometry, get)(), (key, get))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(new["files"]["fused_average"]))[0],
                                      sitk.GetArrayFromImage(old["fusions"][0].image))  # the PNG had it rounded
        with contextlib.redirect_stdout(text_io.StringIO()), contextlib.redirect_stderr(text_io.StringIO()):
            self.assertEqual(cli.main(["register", paths["fixed"], paths["moving"], "-o", os.path.join(self.dir, "reg"),
                                       "--stages", "rigid", "--seed", "0", "--threads", "1"]), 0)
        self.assertEqual(sitk.ReadImage(os.path.join(self.dir, "reg", "moving_resampled.nii.gz")).GetOrigin(),
                         (-12.0, -14.0, 37.5))
        # slices 100 mm apart are not fused as they lie, as two one-slice volumes are not
        with self.assertRaisesRegex(InputError, "does not overlap the fixed image .* as they lie"):
            pipeline.run(paths["fixed"], paths["apart"], os.path.join(self.dir, "apart"), register=False,
                         methods=["average"])

    def test_run_scores_a_dicom_slices_label_maps_given_in_2d_as_before_or_as_slicer_saves_them(self) -> None:
        """A DICOM file of one slice read as the one-slice volume it is (run, register, the web app) had its label maps
        checked as that volume's only: 2D label maps on the file's 2D image (as run had read it, and evaluate-registration,
        fuse and resample still read it) were refused ("The fixed label map is 2D but the fixed image is 3D"), where run
        had scored them. They are scored as before, to the digit; one-slice label maps (as Slicer saves a label map of
        the file) as the slices' own; a 2D label map's own fault is named in its frame's words."""
        from MultimodalFusionLib import pipeline

        paths = self._slice_files((("fixed", (-12.0, -14.0, 37.5), "CT"), ("moving", (-10.0, -13.0, 37.5), "MR")))
        # the 2D image of each file, as evaluate-registration reads it
        flat = {name: io.read_image(path) for name, path in paths.items()}
        labels = {}
        for name, kind, value in (("fixed", "2d", 1), ("moving", "2d", 1), ("fixed", "slice", 1), ("moving", "slice", 1),
                                  ("moving", "other", 2)):
            arr = np.zeros((32, 32), np.uint8)
            arr[10:20, 12:22] = value
            label_map = sitk.GetImageFromArray(arr if kind != "slice" else arr[None])
            label_map.CopyInformation(flat[name] if kind != "slice" else sitk.ReadImage(paths[name]))
            labels[name, kind] = os.path.join(self.dir, f"{name}-labels-{kind}.nii.gz")
            sitk.WriteImage(label_map, labels[name, kind])
        old = pipeline.run(flat["fixed"], flat["moving"], os.path.join(self.dir, "old"), stages=["rigid"],
                           methods=["average"], seed=0, fixed_labels=labels["fixed", "2d"],
                           moving_labels=labels["moving", "2d"])
        new = pipeline.run(paths["fixed"], paths["moving"], os.path.join(self.dir, "new"), stages=["rigid"],
                           methods=["average"], seed=0, fixed_labels=labels["fixed", "2d"],
                           moving_labels=labels["moving", "2d"])
        self.assertEqual(json.dumps(new["registration_accuracy"]["labels"], sort_keys=True),
                         json.dumps(old["registration_accuracy"]["labels"], sort_keys=True))
        self.assertNotIn("slice_planes", new["registration_accuracy"])  # scored on the 2D images, as before
        # 2D points (an elastix point file of the 2D image) likewise: "The landmarks are 2D but the images are 3D"
        points = os.path.join(self.dir, "points.txt")
        with open(points, "w") as f:
            f.write("point\n3\n-5 -5\n0 2\n5 -3\n")
        landmarks = [pipeline.run(fixed, moving, os.path.join(self.dir, f"points-{k}"), stages=["rigid"],
                                  methods=["average"], seed=0, fixed_landmarks=points, moving_landmarks=points)
                     for k, (fixed, moving) in enumerate(((flat["fixed"], flat["moving"]), (paths["fixed"], paths["moving"])))]
        self.assertEqual(*(json.dumps(r["registration_accuracy"]["landmarks"], sort_keys=True) for r in landmarks))
        slicer = pipeline.run(paths["fixed"], paths["moving"], os.path.join(self.dir, "slicer"), stages=["rigid"],
                              methods=["average"], seed=0, fixed_labels=labels["fixed", "slice"],
                              moving_labels=labels["moving", "slice"])
        self.assertIn("slice_planes", slicer["registration_accuracy"])
        self.assertEqual(slicer["registration_accuracy"]["labels"], new["registration_accuracy"]["labels"])
        # 2D label maps with no label in common: the 2D check's words, not "2D but the fixed image is 3D"
        with self.assertRaises(InputError) as refused:
            pipeline.run(paths["fixed"], paths["moving"], os.path.join(self.dir, "none"), stages=["rigid"],
                         methods=["average"], seed=0, fixed_labels=labels["fixed", "2d"],
                         moving_labels=labels["moving", "other"])
        self.assertNotIn("2D but", str(refused.exception))
        self.assertIn("label", str(refused.exception))

    def test_fuse_and_evaluate_take_a_dicom_slice_where_it_lies(self) -> None:
        """`fuse` and `evaluate` had read a DICOM file of one slice as 2D: `fuse a.dcm b.dcm -o f.nii.gz` wrote a 2D
        image with no S, fused two slices 100 mm apart as if they lay together, and `evaluate` refused fuse's result
        for the file as off its grid and scored a source 100 mm off. They read it as the one-slice volume it is, as
        run does and as a slice Slicer saved is read: fused as the same 2D image, written where the file lies (a
        .png as the 2D slice, as before), slices apart refused."""

        from MultimodalFusionLib.fusion import fuse

        paths = self._slice_files((("a", (-12.0, -14.0, 37.5), "CT"), ("b", (-12.0, -14.0, 37.5), "MR"),
                                         ("apart", (-12.0, -14.0, 137.5), "MR")))

        out = {ext: os.path.join(self.dir, f"fused{ext}") for ext in (".nii.gz", ".png")}
        for ext, path in out.items():
            self.assertEqual(_mmfusion("fuse", paths["a"], paths["b"], "-o", path, "--method", "average")[0], 0, ext)
        slice_geometry = sitk.ReadImage(paths["a"])  # the file as ITK (and Slicer) places it: S 37.5
        written = sitk.ReadImage(out[".nii.gz"])
        for get in ("GetSize", "GetOrigin", "GetSpacing", "GetDirection"):
            self.assertEqual(getattr(written, get)(), getattr(slice_geometry, get)(), get)
        # the same fusion as of the 2D images the files had been read as
        flat = fuse(io.read_image(paths["a"]), io.read_image(paths["b"]), "average").image
        np.testing.assert_array_equal(sitk.GetArrayFromImage(written)[0], sitk.GetArrayFromImage(flat))
        self.assertEqual(sitk.ReadImage(out[".png"]).GetSize(), (32, 32))  # a 2D format: the 2D slice, as before
        rc, said = _mmfusion("fuse", paths["a"], paths["apart"], "-o", os.path.join(self.dir, "apart.nii.gz"))
        self.assertEqual(rc, 2, said)
        self.assertIn("is not on the anatomical image (a)'s grid: origin (LPS) (-12, -14, 137.5) vs (-12, -14, 37.5)",
                      said)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "apart.nii.gz")))
        # evaluate: fuse's result for the files scored (it had been refused as off A's 2D grid), as the .png is
        scores = {}
        for ext, path in out.items():
            rc, said = _mmfusion("evaluate", "--fused", path, paths["a"], paths["b"], "--json")
            self.assertEqual(rc, 0, said)
            scores[ext] = json.loads(said)
        self.assertEqual(scores[".nii.gz"]["EN"], scores[".png"]["EN"])
        rc, said = _mmfusion("evaluate", "--fused", out[".png"], paths["a"], paths["apart"])
        self.assertEqual(rc, 2, said)  # a source 100 mm off had been scored
        self.assertIn("source image B (apart0000.dcm) is not on the source image A (a0000.dcm)'s grid", said)

    def test_evaluate_registration_scores_a_dicom_slice_as_the_same_slice_saved_as_nifti(self) -> None:
        """`evaluate-registration` had read a DICOM file of one slice as 2D: Slicer's one-slice label maps of two such
        files were refused ("The fixed label map is 3D but the fixed image is 2D"), which run scores. Read as the
        one-slice volume it is, as run does, it is scored exactly as the same slice saved as a one-slice NIfTI: its
        label maps and landmarks given in the slices' 2D frames (2D label maps, 2D points) as before, to the digit, or
        as Slicer saves them; through a 3D transform, which compares the images as they lie, a slice 100 mm off is
        refused as the NIfTI one is."""
        paths = self._slice_files((("fixed", (-12.0, -14.0, 37.5), "CT"), ("moving", (-10.0, -13.0, 37.5), "MR"),
                                   ("apart", (-10.0, -13.0, 137.5), "MR")))
        flat, nifti, labels = {}, {}, {}
        for name, path in paths.items():  # each file as its 2D image (as read before) and as a one-slice NIfTI
            flat[name], nifti[name] = (os.path.join(self.dir, f"{name}{kind}.nii.gz") for kind in ("-2d", ""))
            sitk.WriteImage(io.read_image(path), flat[name])
            sitk.WriteImage(sitk.ReadImage(path), nifti[name])
            for kind in ("2d", "slice"):
                arr = np.zeros((32, 32), np.uint8)
                arr[10:20, 12:22] = 1
                label_map = sitk.GetImageFromArray(arr if kind == "2d" else arr[None])
                label_map.CopyInformation(sitk.ReadImage(flat[name] if kind == "2d" else path))
                labels[name, kind] = os.path.join(self.dir, f"{name}-labels-{kind}.nii.gz")
                sitk.WriteImage(label_map, labels[name, kind])
        points = os.path.join(self.dir, "points.txt")
        with open(points, "w") as f:
            f.write("point\n3\n-5 -5\n0 2\n5 -3\n")
        transforms = {2: os.path.join(self.dir, "t2.tfm"), 3: os.path.join(self.dir, "t3.tfm")}
        sitk.WriteTransform(sitk.TranslationTransform(2, (2.0, 1.0)), transforms[2])
        sitk.WriteTransform(sitk.TranslationTransform(3, (2.0, 1.0, 0.0)), transforms[3])

        def scored(images, moving, *options):
            rc, said = _mmfusion("evaluate-registration", images["fixed"], images[moving], "--json", *options)
            self.assertEqual(rc, 0, said)
            return json.loads(said)

        for moving in ("moving", "apart"):
            pair = ("--fixed-labels", labels["fixed", "slice"], "--moving-labels", labels[moving, "slice"])
            for t in ((), ("--transform", transforms[2])):
                # Slicer's one-slice label maps (refused before): the result of the same slices saved as NIfTI
                dicom = scored(paths, moving, *t, *pair)
                self.assertEqual(json.dumps(dicom, sort_keys=True), json.dumps(scored(nifti, moving, *t, *pair),
                                                                              sort_keys=True), (moving, t))
                self.assertIn("slice_planes", dicom)
                for given in (("--fixed-labels", labels["fixed", "2d"], "--moving-labels", labels[moving, "2d"]),
                              ("--fixed-landmarks", points, "--moving-landmarks", points)):
                    # given in the slices' 2D frames: scored as the 2D images were, to the digit
                    self.assertEqual(json.dumps(scored(paths, moving, *t, *given), sort_keys=True),
                                     json.dumps(scored(flat, moving, *t, *given), sort_keys=True), (moving, t, given))
                self.assertEqual(scored(paths, moving, *t, *pair)["labels"],
                                 scored(paths, moving, *t, "--fixed-labels", labels["fixed", "2d"], "--moving-labels",
                                        labels[moving, "2d"])["labels"])
        # a 3D transform compares the slices as they lie: the slice 100 mm off is refused, as its NIfTI is (a DICOM
        # file had been refused as 2D: "The transform is 3D but the images are 2D")
        for images in (paths, nifti):
            rc, said = _mmfusion("evaluate-registration", images["fixed"], images["apart"], "--transform",
                                 transforms[3])
            self.assertEqual(rc, 2, said)
            self.assertIn("The moving image, through the transform, covers 0 of the fixed image's voxels", said)
        self.assertEqual(json.dumps(scored(paths, "moving", "--transform", transforms[3]), sort_keys=True),
                         json.dumps(scored(nifti, "moving", "--transform", transforms[3]), sort_keys=True))

    def test_resample_takes_a_dicom_slice_where_it_lies(self) -> None:
        """`resample` had read a DICOM file of one slice as 2D: register's 2D transform applied to it wrote a 2D image
        with no S, and a slice 100 mm off the reference, with no transform, was resampled as if it lay on it. Read as
        the one-slice volume it is, the result is register's moving_resampled voxel for voxel, where the file lies."""


        paths = self._slice_files((("fixed", (-12.0, -14.0, 37.5), "CT"), ("moving", (-10.0, -13.0, 37.5), "MR"),
                                         ("apart", (-12.0, -14.0, 137.5), "MR")))

        reg = os.path.join(self.dir, "reg")
        self.assertEqual(_mmfusion("register", paths["fixed"], paths["moving"], "-o", reg, "--stages", "rigid",
                                  "--seed", "0", "--threads", "1")[0], 0)
        out = os.path.join(self.dir, "moved.nii.gz")
        rc, said = _mmfusion("resample", paths["moving"], "--reference", paths["fixed"], "--transform",
                            os.path.join(reg, "transform.tfm"), "-o", out)
        self.assertEqual(rc, 0, said)
        moved, registered = sitk.ReadImage(out), sitk.ReadImage(os.path.join(reg, "moving_resampled.nii.gz"))
        self.assertEqual((moved.GetSize(), moved.GetOrigin()), ((32, 32, 1), (-12.0, -14.0, 37.5)))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(moved), sitk.GetArrayFromImage(registered))
        rc, said = _mmfusion("resample", paths["moving"], "--reference", paths["fixed"], "--transform",
                            os.path.join(reg, "transform.tfm"), "-o", os.path.join(self.dir, "moved.png"))
        self.assertEqual(rc, 0, said)  # a 2D format: the 2D slice, as before
        self.assertEqual(sitk.ReadImage(os.path.join(self.dir, "moved.png")).GetSize(), (32, 32))
        rc, said = _mmfusion("resample", paths["apart"], "--reference", paths["fixed"], "-o",
                            os.path.join(self.dir, "apart.nii.gz"))
        self.assertEqual(rc, 2, said)
        self.assertIn("does not overlap the reference fixed0000.dcm as they lie (no --transform)", said)

    def test_a_slice_is_read_as_2d_whatever_its_file_is_named(self) -> None:
        """What a DICOM file is read as does not depend on its name: a slice named by its SOP Instance UID (as PACS
        exports name files), `.dicom`, `.img` or `.DCM` is the 2D image the same file named `.dcm` is, and warns from
        the caller's line. Only `.dcm`, `.ima` and no extension had been read as 2D; the others were one-slice
        volumes, which every command refused."""
        import shutil
        import warnings

        write_series(self.dir, positions=[(-12.0, -14.0, 30.0)], drop=("ImagePositionPatient",))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its warning is checked below, for each name
            reference = io.read_image(os.path.join(self.dir, "IM0000.dcm"))
        self.assertEqual(reference.GetDimension(), 2)
        for name in ("1.2.840.113619.2.55.3.604688.1", "slice.dicom", "slice.img", "SLICE.DCM", "slice"):
            with self.subTest(name), tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, name)
                shutil.copy(os.path.join(self.dir, "IM0000.dcm"), path)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    line, image = sys._getframe().f_lineno, io.read_image(path)
                for get in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
                    self.assertEqual(getattr(image, get)(), getattr(reference, get)(), get)
                np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(reference))
                said = [str(w.message) for w in caught]
                self.assertEqual(len(said), 1, said)
                self.assertIn("so it is placed at the origin, (0, 0) (as ITK's reader", said[0])
                self.assertEqual((caught[0].filename, caught[0].lineno), (__file__, line))

    def test_a_file_without_a_position_warns_that_it_lies_at_the_origin(self) -> None:
        """A slice (or a one-frame enhanced file) that states no position is read at the origin, as ITK reads it,
        with the multi-frame file's warning, naming the origin it has: (0, 0) read as 2D (an axial slice),
        (0, 0, 0) as a one-slice volume (a coronal one). It had been read there without a word."""
        import warnings

        coronal = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
        cases = [("axial slice", AXIAL, False, (0.0, 0.0)), ("coronal slice", coronal, False, (0.0, 0.0, 0.0)),
                 ("one-frame enhanced", AXIAL, True, (0.0, 0.0))]
        for case, orientation, enhanced, origin in cases:
            with self.subTest(case), tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "one.dcm")
                if enhanced:
                    write_enhanced(path, None, orientation, frames=1)
                else:
                    write_series(folder, positions=[(-12.0, -14.0, 30.0)], orientations=[orientation], prefix="one",
                                 drop=("ImagePositionPatient",))
                    os.rename(os.path.join(folder, "one0000.dcm"), path)
                for given in (path, folder):
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        line, image = sys._getframe().f_lineno, io.read_image(given)
                    self.assertEqual(image.GetOrigin(), origin)
                    said = [str(w.message) for w in caught]
                    self.assertEqual(len(said), 1, said)
                    where = (" in its functional groups' PlanePositionSequence (0020,9113), DetectorInformationSequence "
                             "(0054,0022) or at its top level" if enhanced else "")
                    self.assertTrue(said[0].startswith(f"DICOM file '{path}' has no ImagePositionPatient (0020,0032)"
                                                       f"{where}, so it is placed at the origin, "
                                                       f"({', '.join(['0'] * len(origin))}) (as ITK's reader"), said[0])
                    self.assertIn("the 'geometry' or 'moments' initializers align the images' centres.", said[0])
                    for value in PHI.values():
                        self.assertNotIn(value, said[0])
                    self.assertEqual((caught[0].filename, caught[0].lineno), (__file__, line), given)
        with tempfile.TemporaryDirectory() as folder:  # a slice with its position: no warning, placed as before
            write_series(folder, positions=[(-12.0, -14.0, 30.0)])
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                image = io.read_image(os.path.join(folder, "IM0000.dcm"))
            self.assertEqual([str(w.message) for w in caught], [])
            self.assertEqual((image.GetDimension(), image.GetOrigin()), (2, (-12.0, -14.0)))

    def test_a_file_without_an_orientation_warns_that_it_is_taken_as_axial(self) -> None:
        """A slice, or a legacy multi-frame file, that states no ImageOrientationPatient is read as axial, as ITK
        reads it, with a warning from the caller's line (it had been read so without a word, while a series without
        it is refused): a coronal or sagittal image would be registered as axial. An enhanced file whose functional
        groups hold no orientation is refused naming the tag, where ITK had failed with 'An invalid logic behavior
        occurredb1 && cosines.size() == 6' and the fix 'Use a NIfTI, NRRD, ...'."""
        import warnings

        import pydicom

        slice_folder = os.path.join(self.dir, "slice")
        write_series(slice_folder, positions=[(-12.0, -14.0, 30.0)], drop=("ImageOrientationPatient",))
        legacy = os.path.join(self.dir, "legacy.dcm")
        write_enhanced(legacy, None, frames=3, groups=False, sop_class="1.2.840.10008.5.1.4.1.1.20",
                       top={"SpacingBetweenSlices": 2.0, "ImagePositionPatient": [1.0, 2.0, 3.0],
                            "PixelSpacing": [0.7, 0.6]})
        for given, named, direction in ((os.path.join(slice_folder, "IM0000.dcm"), "IM0000.dcm", (1.0, 0.0, 0.0, 1.0)),
                                        (slice_folder, "IM0000.dcm", (1.0, 0.0, 0.0, 1.0)),
                                        (legacy, "legacy.dcm", tuple(np.eye(3).ravel()))):
            with self.subTest(given):
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    line, image = sys._getframe().f_lineno, io.read_image(given)
                self.assertEqual(image.GetDirection(), direction)
                said = [str(w.message) for w in caught]
                self.assertEqual(len(said), 1, said)
                self.assertIn(f"{named}' has no ImageOrientationPatient (0020,0037)", said[0])
                self.assertIn("so it is taken as axial", said[0])
                self.assertEqual((caught[0].filename, caught[0].lineno), (__file__, line))
                for value in PHI.values():
                    self.assertNotIn(value, said[0])
        with self.subTest("enhanced"):
            path = os.path.join(self.dir, "enhanced.dcm")
            write_enhanced(path, [(1.0, 2.0, 3.0 + 2.0 * k) for k in range(3)])
            ds = pydicom.dcmread(path)
            del ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence
            ds.save_as(path)
            with self.assertRaises(InputError) as ctx:
                io.read_image(path)
            self.assertIn(f"DICOM file '{path}' has no usable ImageOrientationPatient (0020,0037)", ctx.exception.problem)
            self.assertNotIn("invalid logic", str(ctx.exception))

    def test_a_picture_without_an_orientation_is_said_to_be_read_flat(self) -> None:
        """A projection radiograph, ultrasound image or secondary capture states no ImageOrientationPatient by
        definition (its IOD has no Image Plane module): its warning says what it is and that it is read as a flat
        picture whose axes are not the patient's; it had been told that 'a coronal or sagittal image would be shown
        and registered turned', as a CT slice without the tag is (which still is, whatever its Modality says)."""
        import warnings

        import pydicom

        cases = (("CR", "1.2.840.10008.5.1.4.1.1.1", "a projection X-ray image (Modality CR)"),
                 ("US", "1.2.840.10008.5.1.4.1.1.6.1", "an ultrasound image (Modality US)"),
                 ("OT", "1.2.840.10008.5.1.4.1.1.7", "a secondary capture (Modality OT)"),
                 ("DX", "", "a projection X-ray image (Modality DX)"),  # no SOP class: by its modality
                 ("US", "1.2.840.10008.5.1.4.1.1.2", None))  # a CT slice, whatever its Modality says
        for modality, sop_class, what in cases:
            with self.subTest(modality=modality, sop_class=sop_class):
                folder = os.path.join(self.dir, f"{modality}{sop_class}")
                write_series(folder, positions=[(-12.0, -14.0, 30.0)], modality=modality,
                             drop=("ImageOrientationPatient",))
                path = os.path.join(folder, "IM0000.dcm")
                ds = pydicom.dcmread(path)
                if sop_class:
                    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop_class
                else:
                    del ds.SOPClassUID
                ds.save_as(path)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    line, image = sys._getframe().f_lineno, io.read_image(path)
                said = [str(w.message) for w in caught]
                self.assertEqual(len(said), 1, said)
                self.assertEqual((caught[0].filename, caught[0].lineno), (__file__, line))
                self.assertEqual(image.GetDirection(), (1.0, 0.0, 0.0, 1.0))
                if what is None:
                    self.assertIn("a coronal or sagittal image would be shown and registered turned", said[0])
                    continue
                self.assertIn(f"DICOM file '{path}' is {what}, which lies in no plane of the patient", said[0])
                self.assertIn("read as a flat picture", said[0])
                self.assertNotIn("coronal or sagittal", said[0])
        with self.subTest("a multi-frame XA"):
            path = os.path.join(self.dir, "xa.dcm")
            write_enhanced(path, None, frames=3, groups=False, sop_class="1.2.840.10008.5.1.4.1.1.12.1",
                           top={"SpacingBetweenSlices": 2.0, "ImagePositionPatient": [1.0, 2.0, 3.0],
                                "PixelSpacing": [0.7, 0.6], "Modality": "XA"})
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                io.read_image(path)
            said = [str(w.message) for w in caught]
            self.assertEqual(len(said), 1, said)
            self.assertIn(f"DICOM file '{path}' is a projection X-ray image (Modality XA)", said[0])

    def test_one_file_without_pixel_spacing_uses_the_projection_tags_or_is_refused(self) -> None:
        """A single file without PixelSpacing (0028,0030) was read at 1 mm without a word (a series without it
        is refused); GDCM took ImagerPixelSpacing only for radiograph SOP classes, and there even over
        PixelSpacing. ImagerPixelSpacing, then NominalScannedPixelSpacing, stand in with a warning."""
        import warnings

        import pydicom

        dx = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
        cases = {"CT, ImagerPixelSpacing": (None, {"ImagerPixelSpacing": [0.5, 0.6]}, ("PixelSpacing",),
                                            (0.6, 0.5), "ImagerPixelSpacing (0018,1164)"),
                 "DX, ImagerPixelSpacing": (dx, {"ImagerPixelSpacing": [0.5, 0.6]}, ("PixelSpacing",),
                                            (0.6, 0.5), "ImagerPixelSpacing (0018,1164)"),
                 "CT, NominalScannedPixelSpacing": (None, {"NominalScannedPixelSpacing": [0.3, 0.4]},
                                                    ("PixelSpacing",), (0.4, 0.3),
                                                    "NominalScannedPixelSpacing (0018,2010)"),
                 # PixelSpacing, the size in the patient, comes first (GDCM read this DX at 0.6 x 0.5 mm)
                 "DX, both": (dx, {"ImagerPixelSpacing": [0.5, 0.6]}, (), (0.9, 0.8), None),
                 "CT, neither": (None, {}, ("PixelSpacing",), None, None)}
        for case, (sop, tags, drop, spacing, named) in cases.items():
            with self.subTest(case), tempfile.TemporaryDirectory() as folder:
                write_series(folder, positions=[(-12.0, -14.0, 30.0)], drop=drop)
                path = os.path.join(folder, "IM0000.dcm")
                ds = pydicom.dcmread(path)
                if sop:
                    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop
                for name, value in tags.items():
                    setattr(ds, name, value)
                ds.save_as(path)
                for given in (path, folder):  # a folder of one file reads as the file, and warns as it does
                    if spacing is None:
                        with self.assertRaises(InputError) as ctx:
                            io.read_image(given)
                        self.assertIn("no usable PixelSpacing (0028,0030)", ctx.exception.problem)
                        self.assertIn("ITK would assume 1 mm", ctx.exception.problem)
                        self.assertIn('dcmodify -i "(0028,0030)=0.5\\0.5"', ctx.exception.fix)
                        self.assertNotIn(PHI["PatientName"], str(ctx.exception))
                        continue
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        line, image = sys._getframe().f_lineno, io.read_image(given)
                    self.assertEqual(image.GetSpacing(), spacing)
                    said = [str(w.message) for w in caught]
                    if named is None:
                        self.assertEqual(said, [])
                    else:
                        self.assertEqual(len(said), 1, said)
                        self.assertIn(f"is its {named}", said[0])
                        # attributed to the line that read it, as a series' warning is (it pointed into io.py)
                        self.assertEqual((caught[0].filename, caught[0].lineno), (__file__, line), given)
                        self.assertIn("no PixelSpacing (0028,0030)", said[0])
                        for value in PHI.values():
                            self.assertNotIn(value, said[0])

    def test_a_series_without_pixel_spacing_uses_the_projection_tags_as_one_file_does(self) -> None:
        """A classic series (no NumberOfFrames) whose slices have only ImagerPixelSpacing or NominalScannedPixelSpacing
        takes its pixel size from them with one warning, as one file and a series saying NumberOfFrames 1 did; it had
        been refused for "no usable PixelSpacing (0028,0030) on every slice". With none of them it is refused."""
        import warnings

        import pydicom

        cases = {"ImagerPixelSpacing": ({"ImagerPixelSpacing": [0.5, 0.6]}, "ImagerPixelSpacing (0018,1164)"),
                 "NominalScannedPixelSpacing": ({"NominalScannedPixelSpacing": [0.5, 0.6]},
                                                "NominalScannedPixelSpacing (0018,2010)"),
                 "neither": ({}, None)}
        for case, (tags, named) in cases.items():
            said = {}
            for frames in (None, 1):  # classic slices, and slices that say NumberOfFrames 1 (read so before)
                with self.subTest(case, frames=frames), tempfile.TemporaryDirectory() as folder:
                    write_series(folder, positions=[(-12.0, -14.0, 30.0 + 2.5 * k) for k in range(4)],
                                 drop=("PixelSpacing",))
                    for k in range(4):
                        path = os.path.join(folder, f"IM{k:04d}.dcm")
                        ds = pydicom.dcmread(path)
                        for name, value in tags.items():
                            setattr(ds, name, value)
                        if frames is not None:
                            ds.NumberOfFrames = frames
                        ds.save_as(path)
                    if named is None:
                        with self.assertRaises(InputError) as ctx:
                            io.read_image(folder)
                        self.assertIn("no usable PixelSpacing (0028,0030)", ctx.exception.problem)
                        self.assertIn("ITK would assume 1 mm", ctx.exception.problem)
                        continue
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        line, image = sys._getframe().f_lineno, io.read_image(folder)
                    self.assertEqual(image.GetSpacing(), (0.6, 0.5, 2.5))
                    self.assertEqual(image.GetSize(), (10, 12, 4))
                    texts = [str(w.message).replace(folder, "FOLDER") for w in caught]
                    self.assertEqual(len(texts), 1, texts)
                    self.assertEqual((caught[0].filename, caught[0].lineno), (__file__, line))
                    self.assertTrue(texts[0].startswith(
                        "4 of the 4 files of DICOM series 'BODY 2.5mm' (the first: 'FOLDER/IM0000.dcm') have no "
                        "PixelSpacing (0028,0030): their pixel size, 0.5 x 0.6 mm (rows x columns) in the first, is "
                        f"their {named}"), texts[0])
                    for value in PHI.values():
                        self.assertNotIn(value, texts[0])
                    said[frames] = texts[0]
            if named is not None:  # one rule, one wording, with NumberOfFrames or without
                self.assertEqual(said[None], said[1])

        with tempfile.TemporaryDirectory() as folder:  # one slice of four without PixelSpacing: warned alone
            write_series(folder, positions=[(-12.0, -14.0, 30.0 + 2.5 * k) for k in range(4)])
            path = os.path.join(folder, "IM0002.dcm")
            ds = pydicom.dcmread(path)
            del ds.PixelSpacing
            ds.ImagerPixelSpacing = [0.8, 0.9]
            ds.save_as(path)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                image = io.read_image(folder)
            self.assertEqual(image.GetSpacing(), (0.9, 0.8, 2.5))
            self.assertEqual([str(w.message) for w in caught],
                             [f"DICOM file '{path}' has no PixelSpacing (0028,0030): its pixel size, 0.8 x 0.9 mm (rows "
                              "x columns), is its ImagerPixelSpacing (0018,1164), the size at the detector: distances "
                              "in the patient are smaller by the geometric magnification."])

    def test_a_radiograph_series_reads_at_its_pixel_spacing(self) -> None:
        """A series of radiograph slices (CR, DX, MG, XA, ...) takes PixelSpacing first, as one such file does: ITK's
        series reader (SimpleITK 2.5.7) read one with only PixelSpacing at 1 x 1 mm and one with ImagerPixelSpacing
        too at the ImagerPixelSpacing (here 0.6 x 0.5 mm), without a word."""
        import warnings

        import pydicom

        for sop in ("1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.12.1"):  # DX, XA
            for imager in (None, [0.5, 0.6]):
                with self.subTest(sop=sop, imager=imager), tempfile.TemporaryDirectory() as folder:
                    write_series(folder, positions=[(-12.0, -14.0, 30.0 + 2.5 * k) for k in range(3)])
                    for k in range(3):
                        path = os.path.join(folder, f"IM{k:04d}.dcm")
                        ds = pydicom.dcmread(path)
                        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = sop
                        if imager is not None:
                            ds.ImagerPixelSpacing = imager
                        ds.save_as(path)
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        image = io.read_image(folder)
                    self.assertEqual(image.GetSpacing(), (0.9, 0.8, 2.5))
                    self.assertEqual(io.read_image(os.path.join(folder, "IM0000.dcm")).GetSpacing(), (0.9, 0.8))
                    self.assertEqual([str(w.message) for w in caught], [])

    def test_slices_that_fit_no_one_grid_are_refused_naming_the_file(self) -> None:
        """A classic series whose slices differ in pixel size or rows x columns is refused as a series of multi-frame
        files is, in its wording, naming the slice's file and the first file: ITK's series reader (SimpleITK 2.5.7)
        read one slice at 0.5 x 0.6 mm among 0.8 x 0.9 mm at the first slice's pixel size without a word, and failed
        on other rows x columns ("Size mismatch!", or an IO region error, "Check that the series is complete")."""
        import pydicom

        def respace(ds) -> None:
            ds.PixelSpacing = [0.5, 0.6]

        def imager(ds) -> None:  # the same size from ImagerPixelSpacing is no other grid (read, with a warning)
            del ds.PixelSpacing
            ds.ImagerPixelSpacing = [0.5, 0.6]

        def resize(ds) -> None:
            ds.Rows = 8
            ds.PixelData = np.frombuffer(ds.PixelData, "<u2").reshape(12, 10)[:8].tobytes()

        cases = {"another pixel size": (respace, "a pixel size (columns x rows, mm) of {theirs}, the series' first "
                                                 "file ('{first}') {ours}", ("0.6x0.5", "0.9x0.8")),
                 "another pixel size, from ImagerPixelSpacing": (imager, "a pixel size (columns x rows, mm) of {theirs},"
                                                                 " the series' first file ('{first}') {ours}",
                                                                 ("0.6x0.5", "0.9x0.8")),
                 "another size": (resize, "columns x rows {theirs}, the series' first file ('{first}') {ours}",
                                  ("10x8", "10x12"))}
        for case, (change, said, (other, usual)) in cases.items():
            for at in (2, 0):  # a slice amid the series, or the first slice
                with self.subTest(case, at=at), tempfile.TemporaryDirectory() as folder:
                    write_series(folder, positions=[(-12.0, -14.0, 30.0 + 2.5 * k) for k in range(4)])
                    path = os.path.join(folder, f"IM{at:04d}.dcm")
                    ds = pydicom.dcmread(path)
                    change(ds)
                    ds.save_as(path)
                    with self.assertRaises(InputError) as ctx:
                        io.read_image(folder)
                    first, slice_ = os.path.join(folder, "IM0000.dcm"), os.path.join(folder, f"IM{max(at, 1):04d}.dcm")
                    theirs, ours = (other, usual) if at else (usual, other)
                    self.assertIn(f"DICOM file '{slice_}' of DICOM series 'BODY 2.5mm' has "
                                  + said.format(theirs=theirs, ours=ours, first=first)
                                  + ", so no one grid holds its slices.", ctx.exception.problem)
                    self.assertIn("Move the files of the other grid into another folder", ctx.exception.fix)
                    for value in PHI.values():
                        self.assertNotIn(value, str(ctx.exception))

    def test_a_pixel_spacing_of_zero_or_below_is_refused(self) -> None:
        """A PixelSpacing of 0, a negative or a non-finite value is no pixel size: one file failed with a RuntimeError
        traceback from ITK's SetSpacing (0, negative) or read with a NaN/inf spacing, and a series read at the
        1 mm GDCM puts in for a 0 without a word."""
        for spacing in ((0.0, 0.9), (-0.8, 0.9), (float("nan"), 0.9), (0.8, float("inf"))):
            for slices in (1, 3):
                with self.subTest(spacing=spacing, slices=slices), tempfile.TemporaryDirectory() as folder:
                    write_series(folder, positions=[(-12.0, -14.0, 30.0 + 2.5 * k) for k in range(slices)],
                                 pixel_spacing=spacing)
                    for given in ([os.path.join(folder, "IM0000.dcm")] if slices == 1 else []) + [folder]:
                        with self.assertRaises(InputError) as ctx:
                            io.read_image(given)
                        self.assertIn("no usable PixelSpacing (0028,0030)", ctx.exception.problem)

    def test_enhanced_multiframe_file_in_a_folder(self) -> None:
        # an enhanced CT keeps PixelSpacing and the positions in its functional groups: the folder was
        # refused for having "no usable PixelSpacing (0028,0030)", though the file alone read correctly
        positions = [(-5.0, -6.0, 10.0 + 2.0 * k) for k in range(5)]
        truth = write_enhanced(os.path.join(self.dir, "enhanced.dcm"), positions)
        for path in (self.dir, os.path.join(self.dir, "enhanced.dcm")):
            image = io.read_image(path)
            self._assert_placed(image, positions, AXIAL, rows=truth.shape[1], cols=truth.shape[2],
                                pixel_spacing=(0.7, 0.6))
            np.testing.assert_array_equal(sitk.GetArrayFromImage(image), truth)

    def test_multiframe_pixel_size_is_found_in_order_or_refused(self) -> None:
        """A multi-frame file takes its pixel size from the top-level PixelSpacing, else the shared functional
        groups', else the first frame's, else ImagerPixelSpacing (with a warning); with none it is refused.
        ITK read one with no pixel size, or with it only at the top level, at 1 mm without a word."""
        import warnings

        positions = [(-5.0, -6.0, 10.0 + 3.0 * k) for k in range(4)]
        cases = {"top level": ({"pixel_spacing": (0.7, 0.6), "spacing_in": "top"}, (0.6, 0.7), False),
                 "shared groups": ({"pixel_spacing": (0.7, 0.6)}, (0.6, 0.7), False),
                 "per-frame groups": ({"pixel_spacing": (0.7, 0.6), "spacing_in": "per-frame"}, (0.6, 0.7), False),
                 "top level over shared": ({"pixel_spacing": (0.5, 0.4), "top": {"PixelSpacing": [0.7, 0.6]}},
                                           (0.6, 0.7), False),
                 "ImagerPixelSpacing": ({"pixel_spacing": None, "top": {"ImagerPixelSpacing": [0.7, 0.6]}},
                                        (0.6, 0.7), True),
                 "none": ({"pixel_spacing": None}, None, False),
                 "zero": ({"pixel_spacing": (0.0, 0.6)}, None, False)}
        for case, (options, spacing, warned) in cases.items():
            with self.subTest(case), tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "frames.dcm")
                write_enhanced(path, positions, rows=8, cols=8, **options)
                for given in (path, folder):
                    if spacing is None:
                        with self.assertRaises(InputError) as ctx:
                            io.read_image(given)
                        self.assertIn(f"DICOM file '{path}' has no usable PixelSpacing (0028,0030) at its top level "
                                      "or in its shared or per-frame functional groups' PixelMeasuresSequence",
                                      ctx.exception.problem)
                        self.assertIn("ITK would assume 1 mm", ctx.exception.problem)
                        self.assertIn('dcmodify -i "(0028,0030)=0.5\\0.5"', ctx.exception.fix)
                        for value in PHI.values():
                            self.assertNotIn(value, str(ctx.exception))
                        continue
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        image = io.read_image(given)
                    self.assertEqual(image.GetSpacing(), spacing + (3.0,))
                    self.assertEqual(image.GetOrigin(), positions[0])
                    said = [str(w.message) for w in caught]
                    self.assertEqual(len(said), int(warned), said)
                    if warned:
                        self.assertIn("is its ImagerPixelSpacing (0018,1164)", said[0])

    def test_multiframe_frames_are_placed_by_their_positions_or_refused(self) -> None:
        """The frame axis is the frames' ImagePositionPatient: ITK gave a file whose frames are not evenly spaced
        in frame order 1 mm spacing (in plane too) without a word, failed on frames at one position with
        "Zero-valued spacing is not supported", and stacked frames shifted within their plane (sheared) along
        the normal."""
        c, s = math.cos(math.radians(20)), math.sin(math.radians(20))
        oblique = (1.0, 0.0, 0.0, 0.0, c, s)
        normal = np.cross(oblique[:3], oblique[3:])
        placed = {"descending": ([(0.0, 0.0, 9.0 - 3.0 * k) for k in range(4)], AXIAL),
                  "sheared": ([(0.0, 1.0 * k, 3.0 * k) for k in range(4)], AXIAL),
                  "oblique": ([tuple(np.array([1.0, 2.0, 3.0]) + 2.5 * k * normal) for k in range(4)], oblique),
                  # SpacingBetweenSlices (and the SliceThickness of 2) disagree with the positions: these win
                  "SpacingBetweenSlices 5": ([(0.0, 0.0, 3.0 * k) for k in range(4)], AXIAL)}
        for case, (positions, orientation) in placed.items():
            with self.subTest(case), tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "frames.dcm")
                top = {"SpacingBetweenSlices": 5.0} if "5" in case else None
                truth = write_enhanced(path, positions, orientation, rows=8, cols=8, top=top)
                image = io.read_image(path)
                self._assert_placed(image, positions, orientation, rows=8, cols=8, pixel_spacing=(0.7, 0.6))
                np.testing.assert_array_equal(sitk.GetArrayFromImage(image), truth)
        refused = {"a missing frame": ([(0.0, 0.0, z) for z in (0.0, 3.0, 6.0, 12.0)], "frame 3 lies 2 mm"),
                   "out of order": ([(0.0, 0.0, z) for z in (0.0, 6.0, 3.0, 9.0)], "frame 2 lies 3 mm"),
                   # the last frame back at the first's position: was "(they all lie at one position)"
                   "back to the start": ([(0.0, 0.0, z) for z in (0.0, 3.0, 6.0, 0.0)], "frame 3 lies 6 mm")}
        for case, (positions, where) in refused.items():
            with self.subTest(case), tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "frames.dcm")
                write_enhanced(path, positions, rows=8, cols=8)
                for given in (path, folder):
                    with self.assertRaises(InputError) as ctx:
                        io.read_image(given)
                    self.assertIn(f"DICOM file '{path}' has 4 frames whose ImagePositionPatient (0020,0032) are not "
                                  f"evenly spaced along one line in frame order ({where}", ctx.exception.problem)
                    self.assertIn("dcm2niix", ctx.exception.fix)
        with tempfile.TemporaryDirectory() as folder:  # one frame turned in its per-frame group
            import pydicom
            from pydicom.dataset import Dataset
            from pydicom.sequence import Sequence as DicomSequence

            path = os.path.join(folder, "frames.dcm")
            write_enhanced(path, [(0.0, 0.0, 3.0 * k) for k in range(4)], rows=8, cols=8)
            ds = pydicom.dcmread(path)
            turned = Dataset()
            turned.ImageOrientationPatient = list(oblique)
            ds.PerFrameFunctionalGroupsSequence[2].PlaneOrientationSequence = DicomSequence([turned])
            ds.save_as(path)
            with self.assertRaises(InputError) as ctx:
                io.read_image(path)
            self.assertIn("mixes frame orientations", ctx.exception.problem)

    def test_frames_or_slices_without_depth_are_no_volume(self) -> None:
        """Frames at one position (a cine, time points of one slice) or moving within their plane (no step along
        its normal: a cine of a moving table, or an ImageOrientationPatient that does not fit the positions) make
        no volume. A multi-frame file was refused with ITK's "Zero-valued spacing is not supported" and the fix
        "Use a NIfTI, NRRD, ... check it is not truncated" (frames a trace along the normal: read on a grid with
        next to no depth), a series of such slices for "uneven slice spacing: steps from 0 to 0 mm"."""
        coronal = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
        at_one = "4 {noun} at one position (ImagePositionPatient (0020,0032)"
        in_plane = "the {noun} move within their plane, so they make no volume"
        cases = {"one position": ([(1.0, 2.0, 3.0)] * 4, AXIAL, at_one, "Load one frame"),
                 "coronal, stepping along z": ([(0.0, 0.0, 2.0 * k) for k in range(4)], coronal, in_plane,
                                               "Check ImageOrientationPatient (0020,0037)"),
                 "axial, stepping along x": ([(1.5 * k, 0.0, 0.0) for k in range(4)], AXIAL, in_plane,
                                             "Check ImageOrientationPatient (0020,0037)"),
                 # 0.001 mm along the normal per 2 mm step: ITK read it, a grid 0.001 mm deep
                 "a trace along the normal": ([(0.0, 0.001 * k, 2.0 * k) for k in range(4)], coronal, in_plane,
                                              "Check ImageOrientationPatient (0020,0037)")}
        for case, (positions, orientation, problem, fix) in cases.items():
            with self.subTest(case, multiframe=True), tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "frames.dcm")
                write_enhanced(path, positions, orientation, rows=8, cols=8)
                for given in (path, folder):
                    with self.assertRaises(InputError) as ctx:
                        io.read_image(given)
                    self.assertIn(f"DICOM file '{path}' has 4 frames ", ctx.exception.problem)
                    self.assertIn(problem.format(noun="frames"), ctx.exception.problem)
                    self.assertIn(fix, ctx.exception.fix)
                    self.assertIn("dcm2niix", ctx.exception.fix)
                    for value in PHI.values():
                        self.assertNotIn(value, str(ctx.exception))
            with self.subTest(case, multiframe=False), tempfile.TemporaryDirectory() as folder:
                write_series(folder, positions=positions, orientations=[orientation] * 4, rows=8, cols=8)
                with self.assertRaises(InputError) as ctx:
                    io.read_image(folder)
                self.assertIn("DICOM series 'BODY 2.5mm' has 4 slices ", ctx.exception.problem)
                self.assertIn(problem.format(noun="slices"), ctx.exception.problem)
                self.assertIn(fix, ctx.exception.fix)
                self.assertIn(os.path.join(folder, "IM0000.dcm"), ctx.exception.fix)

    def test_frames_placed_by_the_shared_groups_alone_are_at_one_position(self) -> None:
        """A multi-frame file whose only PlanePositionSequence is in its shared functional groups has every frame at
        that position (the shared groups hold what all frames share, DICOM PS3.3 C.7.6.16): a cine of one plane, no
        volume. It had been read as a volume from that position, its frames SpacingBetweenSlices (3 mm) apart, or
        SliceThickness apart with a warning that they were taken as contiguous; alone, in its folder, or in a series of
        such files. A file of one frame placed so is one slice and reads as before (see the series of such files in
        test_files_placed_by_their_shared_functional_groups_are_stacked)."""
        for case, top in (("SpacingBetweenSlices", {"SpacingBetweenSlices": 3.0}), ("SliceThickness", None)):
            with self.subTest(case), tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "frames.dcm")
                write_enhanced(path, [(1.0, 2.0, 3.0)] * 4, rows=8, cols=8, top=top)
                share_position(path)
                for given in (path, folder):
                    with self.assertRaises(InputError) as ctx:
                        io.read_image(given)
                    self.assertIn(f"DICOM file '{path}' has 4 frames at one position (ImagePositionPatient "
                                  "(0020,0032)): no volume but one plane imaged 4 times, e.g. a cine",
                                  ctx.exception.problem)
                    self.assertIn("PlanePositionSequence (0020,9113) is in its shared functional groups",
                                  ctx.exception.problem)
                    self.assertTrue(ctx.exception.fix.startswith("Load one frame: split the file into single-frame "
                                                                 "files (e.g. with dcm2niix"), ctx.exception.fix)
                    for value in PHI.values():
                        self.assertNotIn(value, str(ctx.exception))
        with tempfile.TemporaryDirectory() as folder:  # a series of two such files: the first is named
            from pydicom.uid import generate_uid

            uid, paths = generate_uid(), [os.path.join(folder, f"part{i}.dcm") for i in range(2)]
            for i, path in enumerate(paths):
                write_enhanced(path, [(1.0, 2.0, 3.0 + 8.0 * i)] * 4, rows=8, cols=8, series_uid=uid)
                share_position(path)
            with self.assertRaises(InputError) as ctx:
                io.read_image(folder)
            self.assertIn(f"DICOM file '{paths[0]}' has 4 frames at one position", ctx.exception.problem)
        with tempfile.TemporaryDirectory() as folder:  # one frame: one slice, where the shared groups put it
            path = os.path.join(folder, "frame.dcm")
            truth = write_enhanced(path, [(1.0, 2.0, 3.0)], (1.0, 0.0, 0.0, 0.0, 0.0, -1.0), rows=8, cols=8)
            share_position(path)
            image = io.read_image(path)
            self.assertEqual((image.GetSize(), image.GetOrigin()), ((8, 8, 1), (1.0, 2.0, 3.0)))
            np.testing.assert_array_equal(sitk.GetArrayFromImage(image), truth)

    def test_two_slices_at_one_position_are_named_as_such(self) -> None:
        """A classic series with two slices at a position (two time points or echoes saved in one series, or one slice
        saved twice) was refused for "uneven slice spacing: steps from 0 to 2.5 mm ... a slice may be missing between
        30 and 32.5 mm"; it is now named as a series of multi-frame files is, with the two slices' files."""
        cases = {"two time points": [(-12.0, -14.0, 30.0 + 2.5 * (k % 4)) for k in range(8)],
                 "one slice twice": [(-12.0, -14.0, z) for z in (30.0, 32.5, 35.0, 35.0, 37.5, 40.0)]}
        for case, positions in cases.items():
            with self.subTest(case), tempfile.TemporaryDirectory() as folder:
                write_series(folder, positions=positions, rows=8, cols=8)
                first = positions.index(next(p for p in positions if positions.count(p) > 1))
                second = positions.index(positions[first], first + 1)
                with self.assertRaises(InputError) as ctx:
                    io.read_image(folder)
                self.assertIn(f"DICOM series 'BODY 2.5mm' has two slices at one position along the slice normal "
                              f"({positions[first][2]:g} mm): '{os.path.join(folder, f'IM{first:04d}.dcm')}' and "
                              f"'{os.path.join(folder, f'IM{second:04d}.dcm')}', e.g. echoes, time points or repeated "
                              "acquisitions of one volume saved in one series, so no one volume holds its slices.",
                              ctx.exception.problem)
                self.assertNotIn("uneven", ctx.exception.problem)
                self.assertIn("Move the files of one echo or time point into a folder of their own", ctx.exception.fix)
                for value in PHI.values():
                    self.assertNotIn(value, str(ctx.exception))

    def test_the_same_file_twice_is_read_once(self) -> None:
        """A file copied under a second name (the same SOPInstanceUID, byte for byte) had made its series refused as
        'two slices at one position ... e.g. echoes, time points'; it is read once, with a warning naming both
        files, as 3D Slicer's DICOM database keeps one file per SOPInstanceUID: a classic series, a series of
        multi-frame files, and a folder of one file and its copy (read as that file). Two files of one
        SOPInstanceUID whose contents differ are refused, naming the UID."""
        import shutil
        import warnings

        import pydicom

        classic = os.path.join(self.dir, "classic")
        truth = write_series(classic)
        shutil.copy(os.path.join(classic, "IM0002.dcm"), os.path.join(classic, "IM0002 (1).dcm"))
        split = os.path.join(self.dir, "split")
        os.makedirs(split)
        uid = "1.2.826.0.1.3680043.8.498.4242"
        parts = [write_enhanced(os.path.join(split, f"{part}.dcm"), at, series_uid=uid)
                 for part, at in (("a", [(0.0, 0.0, 0.0), (0.0, 0.0, 2.0)]), ("b", [(0.0, 0.0, 4.0), (0.0, 0.0, 6.0)]))]
        shutil.copy(os.path.join(split, "b.dcm"), os.path.join(split, "b copy.dcm"))
        one = os.path.join(self.dir, "one")
        one_truth = write_series(one, positions=[(-12.0, -14.0, 30.0)])
        shutil.copy(os.path.join(one, "IM0000.dcm"), os.path.join(one, "IM0000 - Copy.dcm"))
        for folder, copy, of, expected, size in (
                (classic, "IM0002 (1).dcm", "IM0002.dcm", truth, (10, 12, 6)),
                (split, "b copy.dcm", "b.dcm", np.concatenate(parts), (10, 12, 4)),
                (one, "IM0000 - Copy.dcm", "IM0000.dcm", one_truth[0], (10, 12))):
            with self.subTest(folder):
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    line, image = sys._getframe().f_lineno, io.read_image(folder)
                self.assertEqual(image.GetSize(), size)
                np.testing.assert_array_equal(sitk.GetArrayFromImage(image), expected)
                said = [str(w.message) for w in caught]
                self.assertEqual(len(said), 1, said)
                self.assertIn("holds the same file twice under two names (the same SOPInstanceUID (0008,0018), byte "
                              "for byte)", said[0])
                self.assertIn(f"'{os.path.join(folder, copy)}'", said[0])
                self.assertIn(f"'{os.path.join(folder, of)}'", said[0])
                self.assertIn("each image is read once", said[0])
                self.assertEqual((caught[0].filename, caught[0].lineno), (__file__, line))
        with self.subTest("one SOPInstanceUID, two contents"):
            changed = os.path.join(classic, "IM0002 (1).dcm")
            ds = pydicom.dcmread(changed)
            ds.SeriesNumber = 4  # e.g. edited by a tool, its UIDs kept
            ds.save_as(changed)
            with self.assertRaises(InputError) as ctx:
                io.read_image(classic)
            self.assertIn(f"has two files of one image (the same SOPInstanceUID (0008,0018)), "
                          f"'{changed}' and '{os.path.join(classic, 'IM0002.dcm')}', whose contents differ",
                          ctx.exception.problem)
            self.assertIn("Remove the file that is not the image's own", ctx.exception.fix)
            self.assertNotIn("echoes", str(ctx.exception))

    def test_slices_given_one_sopinstanceuid_are_read_as_the_slices_they_are(self) -> None:
        """A series whose slices all have one SOPInstanceUID (an anonymiser or converter that did not make the UIDs
        unique), read before, had been refused as 'two files of one image ... whose contents differ', with the fix to
        remove the file that is not the image's own, which would have the user delete every slice but one. Files of
        one UID at different positions are different images: read as before, with a warning that 3D Slicer's DICOM
        database would keep one of them; a byte-identical copy among them is still read once."""
        import shutil
        import warnings

        import pydicom

        truth = write_series(self.dir)
        for name in sorted(os.listdir(self.dir)):
            ds = pydicom.dcmread(os.path.join(self.dir, name))
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
            ds.save_as(os.path.join(self.dir, name))
        for case in ("one UID", "one UID and a copy"):
            with self.subTest(case):
                if case.endswith("copy"):
                    shutil.copy(os.path.join(self.dir, "IM0003.dcm"), os.path.join(self.dir, "IM0003 copy.dcm"))
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    image = io.read_image(self.dir)
                np.testing.assert_array_equal(sitk.GetArrayFromImage(image), truth)
                said = [str(w.message) for w in caught]
                self.assertEqual([w.filename for w in caught], [__file__] * len(said))
                self.assertEqual(len(said), 2 if case.endswith("copy") else 1, said)
                self.assertIn(f"has different images with one SOPInstanceUID (0008,0018), at different positions: "
                              f"'{os.path.join(self.dir, 'IM0000.dcm')}' and '{os.path.join(self.dir, 'IM0001.dcm')}'"
                              ", and 4 more. They are read as the slices they are, but 3D Slicer's DICOM database",
                              said[0])
                if case.endswith("copy"):
                    self.assertIn("holds the same file twice under two names", said[1])

    def test_a_file_is_placed_by_its_functional_groups_whatever_its_class(self) -> None:
        """ITK's reader (GDCM) takes the origin and direction from the functional groups only for the classes it
        knows as enhanced (CT, MR, PET, ...): a one-frame Enhanced XA, or an NM file with functional groups, whose
        groups place it at (3, 4, 16) in a coronal or oblique plane was read at the origin, axial, without a word
        (the package placed only files of two or more frames by their per-frame positions), and a series of such
        files was refused as frames all at one position; a file of several frames without per-frame positions kept
        the axial direction. An orientation that is no two perpendicular unit vectors is refused naming the tag:
        ITK had failed on it ("Bad direction, determinant is 0") for an enhanced CT, read it as axial for an XA."""
        import warnings

        from pydicom.uid import generate_uid

        c, s = math.cos(math.radians(20)), math.sin(math.radians(20))
        planes = {"coronal": (1.0, 0.0, 0.0, 0.0, 0.0, -1.0), "oblique": (1.0, 0.0, 0.0, 0.0, c, s)}
        classes = {"Enhanced XA": "1.2.840.10008.5.1.4.1.1.12.1.1", "NM": "1.2.840.10008.5.1.4.1.1.20",
                   "Enhanced CT": "1.2.840.10008.5.1.4.1.1.2.1"}  # ITK places the last already: it stays so

        def read(given: str) -> sitk.Image:
            with warnings.catch_warnings(record=True) as caught:  # placed: no "at the origin" or "axial" warning
                warnings.simplefilter("always")
                image = io.read_image(given)
            self.assertEqual([str(w.message) for w in caught], [])
            return image

        for (name, sop_class), (plane, cosines), shared in itertools.product(classes.items(), planes.items(),
                                                                              (False, True)):
            with self.subTest(name, plane=plane, position_shared=shared), \
                    tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "frame.dcm")
                truth = write_enhanced(path, [(3.0, 4.0, 16.0)], cosines, rows=8, cols=8, sop_class=sop_class)
                if shared:  # one frame's one position, in the shared groups
                    share_position(path)
                for given in (path, folder):
                    image = read(given)
                    self.assertEqual(image.GetSize(), (8, 8, 1))
                    self._assert_placed(image, [(3.0, 4.0, 16.0)], cosines, rows=8, cols=8,
                                        pixel_spacing=(0.7, 0.6))
                    np.testing.assert_allclose(np.array(image.GetDirection()).reshape(3, 3)[:, 2],
                                               np.cross(cosines[:3], cosines[3:]), atol=1e-9)
                    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), truth)
        for name, sop_class in classes.items():
            with self.subTest(name, series="one frame per file"), tempfile.TemporaryDirectory() as folder:
                uid, cosines = generate_uid(), planes["coronal"]
                positions = [(3.0, 4.0 + 2.5 * i, 16.0) for i in range(3)]  # along the coronal normal
                truth = np.concatenate([write_enhanced(os.path.join(folder, f"part{i}.dcm"), [position], cosines,
                                                       rows=8, cols=8, sop_class=sop_class, series_uid=uid)
                                        for i, position in enumerate(positions)])
                image = read(folder)
                self._assert_placed(image, positions, cosines, rows=8, cols=8, pixel_spacing=(0.7, 0.6))
                np.testing.assert_array_equal(sitk.GetArrayFromImage(image), truth)
            with self.subTest(name, frames="3, no per-frame positions"), tempfile.TemporaryDirectory() as folder:
                path, cosines = os.path.join(folder, "frames.dcm"), planes["oblique"]
                truth = write_enhanced(path, None, cosines, rows=8, cols=8, frames=3, sop_class=sop_class,
                                       top={"ImagePositionPatient": [3.0, 4.0, 16.0], "SpacingBetweenSlices": 2.5})
                normal = np.cross(cosines[:3], cosines[3:])
                image = read(path)
                self._assert_placed(image, [tuple(np.array([3.0, 4.0, 16.0]) + 2.5 * k * normal) for k in range(3)],
                                    cosines, rows=8, cols=8, pixel_spacing=(0.7, 0.6))
                np.testing.assert_array_equal(sitk.GetArrayFromImage(image), truth)
            for frames in (1, 3):
                with self.subTest(name, orientation="1\\0\\0\\0\\0\\0", frames=frames), \
                        tempfile.TemporaryDirectory() as folder:
                    path = os.path.join(folder, "frames.dcm")
                    write_enhanced(path, [(3.0, 4.0, 16.0 + 2.5 * k) for k in range(frames)],
                                   (1.0, 0.0, 0.0, 0.0, 0.0, 0.0), rows=8, cols=8, sop_class=sop_class)
                    for given in (path, folder):
                        with self.assertRaises(InputError) as ctx:
                            io.read_image(given)
                        self.assertEqual(ctx.exception.problem,
                                         f"DICOM file '{path}' has an ImageOrientationPatient (0020,0037) that is not "
                                         "two perpendicular unit vectors (1\\0\\0\\0\\0\\0), so which way its rows "
                                         "and columns run is unknown.")
                        self.assertIn("Export it again with its geometry", ctx.exception.fix)

    def test_multiframe_without_positions_takes_the_slice_spacing_tags_or_is_refused(self) -> None:
        """Without per-frame positions (e.g. NM, a legacy multi-frame CT) the frames are SpacingBetweenSlices
        apart, else SliceThickness with a warning (ITK gave 1 mm); with neither the file is refused. These files
        state no position at all: they lie at (0, 0, 0), with a warning saying so (it had been without a word)."""
        import warnings

        nm = "1.2.840.10008.5.1.4.1.1.20"  # Nuclear Medicine Image Storage: frames without functional groups
        cases = {"SpacingBetweenSlices": ({"SpacingBetweenSlices": 3.0, "SliceThickness": 2.0}, 3.0, False),
                 "SliceThickness": ({"SliceThickness": 2.0}, 2.0, True),
                 "neither": ({}, None, False)}
        for case, (top, step, warned) in cases.items():
            with self.subTest(case), tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "frames.dcm")
                write_enhanced(path, None, rows=8, cols=8, frames=4, spacing_in="top", sop_class=nm,
                               top={**top, "ImageOrientationPatient": list(AXIAL)}, groups=False)
                if step is None:
                    with self.assertRaises(InputError) as ctx:
                        io.read_image(path)
                    self.assertIn("has 4 frames but neither per-frame ImagePositionPatient (0020,0032), "
                                  "SpacingBetweenSlices (0018,0088) nor SliceThickness (0018,0050)", ctx.exception.problem)
                    continue
                for given in (path, folder):
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        line, image = sys._getframe().f_lineno, io.read_image(given)
                    self.assertEqual(image.GetSpacing(), (0.6, 0.7, step))
                    self.assertEqual(image.GetOrigin(), (0.0, 0.0, 0.0))
                    said = [str(w.message) for w in caught]
                    self.assertEqual(len(said), int(warned) + 1, said)
                    if warned:
                        self.assertIn("taken as contiguous slices, 2 mm apart (its SliceThickness (0018,0050))", said[0])
                    self.assertTrue(said[-1].startswith(f"DICOM file '{path}' has no ImagePositionPatient (0020,0032) "
                                                        "in its functional groups' PlanePositionSequence (0020,9113), "
                                                        "DetectorInformationSequence (0054,0022) or at its top level, "
                                                        "so it is placed at the origin, (0, 0, 0)"), said[-1])
                    self.assertIn("Header-based placement (initializer 'none') is meaningless for it; the 'geometry' "
                                  "or 'moments' initializers align the images' centres.", said[-1])
                    for value in PHI.values():
                        self.assertNotIn(value, " ".join(said))
                    for warning in caught:
                        self.assertEqual((warning.filename, warning.lineno), (__file__, line), given)

    def test_multiframe_without_frame_positions_starts_at_its_stated_position(self) -> None:
        """A multi-frame file whose functional groups place no frame has its first frame at the ImagePositionPatient
        of its DetectorInformationSequence (NM's place for it), else of its top level, the others following along
        the normal. ITK (GDCM) takes the origin of an enhanced CT only from its functional groups and of an NM file
        only from its DetectorInformationSequence: with the top-level position alone, both were read at (0, 0, 0)."""
        import warnings

        import pydicom
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence as DicomSequence

        c, s = math.cos(math.radians(20)), math.sin(math.radians(20))
        oblique = (1.0, 0.0, 0.0, 0.0, c, s)
        normal = np.cross(oblique[:3], oblique[3:])
        nm = "1.2.840.10008.5.1.4.1.1.20"
        top = {"ImagePositionPatient": [1.0, 2.0, 6.0], "SpacingBetweenSlices": 3.0}
        cases = {  # options of write_enhanced, and the NM detector's position where it has one
            "enhanced CT": ({"top": top}, None),
            "NM": ({"top": {**top, "ImageOrientationPatient": list(oblique)}, "spacing_in": "top", "sop_class": nm,
                    "groups": False}, None),
            # the detector's position wins over the top level's (ITK took it already)
            "NM, DetectorInformationSequence": ({"top": {**top, "ImagePositionPatient": [9.0, 9.0, 9.0]},
                                                 "spacing_in": "top", "sop_class": nm, "groups": False}, (1.0, 2.0, 6.0))}
        for case, (options, detector) in cases.items():
            for frames in (4, 1):
                with self.subTest(case, frames=frames), tempfile.TemporaryDirectory() as folder:
                    path = os.path.join(folder, "frames.dcm")
                    truth = write_enhanced(path, None, oblique, rows=8, cols=8, frames=frames, **options)
                    if detector is not None:
                        ds = pydicom.dcmread(path)
                        item = Dataset()
                        item.ImagePositionPatient, item.ImageOrientationPatient = list(detector), list(oblique)
                        ds.DetectorInformationSequence = DicomSequence([item])
                        ds.save_as(path)
                    positions = [tuple(np.array([1.0, 2.0, 6.0]) + 3.0 * k * normal) for k in range(frames)]
                    for given in (path, folder):
                        with warnings.catch_warnings(record=True) as caught:  # placed: no "at the origin" warning
                            warnings.simplefilter("always")
                            image = io.read_image(given)
                        self.assertEqual([str(w.message) for w in caught], [])
                        self._assert_placed(image, positions, oblique, rows=8, cols=8, pixel_spacing=(0.7, 0.6))
                        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), truth)

    def test_multiframe_geometry_is_read_in_every_encoding(self) -> None:
        """The functional groups are read in implicit and explicit VR, little and big endian, deflated, and from
        a bare data set, and only the geometry tags are kept (no patient-identifying value)."""
        import pydicom
        from pydicom.uid import (
            DeflatedExplicitVRLittleEndian,
            ExplicitVRBigEndian,
            ExplicitVRLittleEndian,
            ImplicitVRLittleEndian,
        )

        from MultimodalFusionLib.dicom_header import read_geometry_tags

        positions = [(-5.0, -6.0, 10.0 + 3.0 * k) for k in range(4)]
        source = os.path.join(self.dir, "source.dcm")
        truth = write_enhanced(source, positions, rows=8, cols=8, spacing_in="per-frame")
        for syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
                       DeflatedExplicitVRLittleEndian):
            with self.subTest(syntax.name):
                ds = pydicom.dcmread(source)
                ds.file_meta.TransferSyntaxUID = syntax
                if syntax == ExplicitVRBigEndian:  # pydicom re-encodes every element but the pixel data
                    ds.PixelData = np.frombuffer(ds.PixelData, "<i2").astype(">i2").tobytes()
                path = os.path.join(self.dir, f"{syntax}.dcm")
                pydicom.dcmwrite(path, ds, implicit_vr=syntax == ImplicitVRLittleEndian,
                                 little_endian=syntax != ExplicitVRBigEndian, force_encoding=True)
                tags = read_geometry_tags(path)
                frames = tags[0x52009230]
                self.assertEqual(len(frames), 4)
                self.assertEqual(frames[3][0x00209113][0][0x00200032], "-5.0\\-6.0\\19.0")
                self.assertEqual(frames[0][0x00289110][0][0x00280030], "0.7\\0.6")
                for value in PHI.values():
                    self.assertNotIn(value, repr(tags))
                image = io.read_image(path)
                self._assert_placed(image, positions, AXIAL, rows=8, cols=8, pixel_spacing=(0.7, 0.6))
                np.testing.assert_array_equal(sitk.GetArrayFromImage(image), truth)
        with self.subTest("bare data set"):  # no preamble, no file meta: ITK reads it, so must the header reader
            ds = pydicom.dcmread(source)
            ds.preamble, ds.file_meta = None, pydicom.dataset.FileMetaDataset()
            path = os.path.join(self.dir, "bare.dcm")
            pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True)
            self.assertEqual(read_geometry_tags(path)[0x52009230][3][0x00209113][0][0x00200032], "-5.0\\-6.0\\19.0")
            self._assert_placed(io.read_image(path), positions, AXIAL, rows=8, cols=8, pixel_spacing=(0.7, 0.6))
        with self.subTest("not a number"):  # the stored text, not a pydicom float: refused, not a traceback
            path = os.path.join(self.dir, "nan.dcm")
            with open(source, "rb") as fh, open(path, "wb") as out:
                out.write(fh.read().replace(b"0.7\\0.6", b"abc\\x.6"))
            self.assertEqual(read_geometry_tags(path)[0x52009230][0][0x00289110][0][0x00280030], "abc\\x.6")
            with self.assertRaises(InputError) as ctx:
                io.read_image(path)
            self.assertIn("has no usable PixelSpacing (0028,0030)", str(ctx.exception))

    def test_frames_with_their_own_rescale_keep_their_values(self) -> None:
        """Each frame of a multi-frame file takes the RescaleSlope/Intercept of its own per-frame functional groups
        (an enhanced PET or MR scales each frame): ITK's reader (GDCM) applied the first frame's to every frame, so
        that a PET whose frames have slopes 0.5, 1, 2 and 4 was read with the last frame's values 8 times too small
        (1760 off), without a word. Checked against pydicom's stored values times each frame's slope plus its
        intercept, for a file alone, in its folder, compressed (RLE, which GDCM decodes), and split into a series
        of two files; a file whose frames share one rescale reads as before."""
        import pydicom
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence as DicomSequence
        from pydicom.uid import RLELossless

        slopes, intercepts = [0.5, 1.0, 2.0, 4.0], [10.0, 10.0, -3.5, 0.0]

        def per_frame_rescale(path: str) -> np.ndarray:
            ds = pydicom.dcmread(path)
            del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
            for frame, slope, intercept in zip(ds.PerFrameFunctionalGroupsSequence, slopes, intercepts):
                rescale = Dataset()
                rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = slope, intercept, "US"
                frame.PixelValueTransformationSequence = DicomSequence([rescale])
            ds.save_as(path)
            stored = pydicom.dcmread(path).pixel_array.astype(np.float64)
            count = len(stored)
            return stored * np.array(slopes[:count])[:, None, None] + np.array(intercepts[:count])[:, None, None]

        positions = [(-5.0, -6.0, 10.0 + 3.0 * k) for k in range(4)]
        os.makedirs(os.path.join(self.dir, "alone"))
        path = os.path.join(self.dir, "alone", "pet.dcm")
        write_enhanced(path, positions, sop_class="1.2.840.10008.5.1.4.1.1.130")  # Enhanced PET Image Storage
        truth = per_frame_rescale(path)
        compressed = os.path.join(self.dir, "rle.dcm")
        ds = pydicom.dcmread(path)
        ds.compress(RLELossless)
        ds.save_as(compressed)
        for what, given in (("file", path), ("its folder", os.path.dirname(path)), ("RLE", compressed)):
            with self.subTest(what):
                image = io.read_image(given)
                self.assertEqual(image.GetSize(), (10, 12, 4))
                np.testing.assert_allclose(sitk.GetArrayFromImage(image), truth, rtol=1e-6)
                self._assert_placed(image, positions, AXIAL, pixel_spacing=(0.7, 0.6))
        with self.subTest("a series of two files"):
            folder = os.path.join(self.dir, "split")
            os.makedirs(folder)
            uid = "1.2.826.0.1.3680043.8.498.1234567"
            parts = [per_frame_rescale(p) for p in (os.path.join(folder, "a.dcm"), os.path.join(folder, "b.dcm"))
                     if write_enhanced(p, positions[:2] if p.endswith("a.dcm") else positions[2:], series_uid=uid,
                                       sop_class="1.2.840.10008.5.1.4.1.1.130") is not None]
            image = io.read_image(folder)
            expected = np.concatenate([parts[0][:2], parts[1][:2]])  # each file's own two frames and slopes
            np.testing.assert_allclose(sitk.GetArrayFromImage(image), expected, rtol=1e-6)
        with self.subTest("one rescale for all frames"):
            same = os.path.join(self.dir, "same.dcm")
            values = write_enhanced(same, positions)
            image = io.read_image(same)
            self.assertEqual(image.GetPixelIDTypeAsString(), "32-bit signed integer")  # ITK's, as before
            np.testing.assert_array_equal(sitk.GetArrayFromImage(image), values)

    def test_the_copy_read_for_per_frame_rescales_is_private_and_removed(self) -> None:
        """The copy of a file whose frames have their own rescale, which ITK reads the stored values from, is written
        to the temporary folder: it held the whole file, the patient's name, ID and birth date included, in a hidden
        '.mmf-tmp-...' folder there (left behind by a kill -9 or power cut), and a temporary folder that could not
        be written was a FileNotFoundError traceback from pydicom. Now the copy holds the pixel data and what decodes
        it only, lies in a 'mmfusion-rescale-' folder removed on every path, and an unwritable temporary folder is an
        InputError naming it and TMPDIR. Seen through Python's audit events (the copy as it is when removed)."""
        import pydicom
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence as DicomSequence

        path = os.path.join(self.dir, "pet.dcm")
        write_enhanced(path, [(-5.0, -6.0, 10.0 + 3.0 * k) for k in range(3)], sop_class="1.2.840.10008.5.1.4.1.1.130")
        ds = pydicom.dcmread(path)
        for k, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
            rescale = Dataset()
            rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = 2.0 ** k, 0.0, "US"
            frame.PixelValueTransformationSequence = DicomSequence([rescale])
        ds.save_as(path)
        truth = pydicom.dcmread(path).pixel_array * np.array([1.0, 2.0, 4.0])[:, None, None]
        temporary = os.path.join(self.dir, "temporary")
        os.makedirs(temporary)
        copies: list[tuple[str, bytes]] = []
        _AUDIT_WATCH[:] = [temporary, copies]
        saved = tempfile.tempdir
        tempfile.tempdir = temporary
        try:
            image = io.read_image(path)
            tempfile.tempdir = os.path.join(self.dir, "no such folder")
            with self.assertRaises(InputError) as ctx:
                io.read_image(path)
        finally:
            tempfile.tempdir = saved
            _AUDIT_WATCH.clear()
        np.testing.assert_allclose(sitk.GetArrayFromImage(image), truth, rtol=1e-6)
        self.assertEqual(os.listdir(temporary), [])
        self.assertEqual(len(copies), 1, [name for name, _ in copies])
        name, blob = copies[0]
        self.assertTrue(name.startswith("mmfusion-rescale-"), name)
        for value in PHI.values():
            self.assertNotIn(value.encode(), blob)
        self.assertIn(f"'{path}'", ctx.exception.problem)
        self.assertIn("temporary folder", ctx.exception.problem)
        self.assertIn("TMPDIR", ctx.exception.fix)

    def test_a_rescale_itk_leaves_out_is_applied(self) -> None:
        """A multi-frame file whose one RescaleSlope/Intercept is in its functional groups' PixelValueTransformationSequence
        (0028,9145) is read with it applied whatever its SOP class: ITK's reader (GDCM) applies the functional groups'
        pair for the enhanced CT, MR and PET classes only, and had read an Enhanced XA, a multi-frame secondary capture,
        an NM or an ultrasound file with none applied (1024 off against pydicom's stored values times the slope plus the
        intercept), without a word. What ITK applied is found by reading a probe (the temporary folder left empty, no
        patient tag in it); a file ITK reads right stays as ITK reads it, type and values; a temporary folder that
        cannot be written leaves ITK's reading with a warning."""
        import warnings

        import pydicom
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence as DicomSequence
        from pydicom.uid import RLELossless

        positions = [(-5.0, -6.0, 10.0 + 3.0 * k) for k in range(3)]
        classes = {"Enhanced XA": "1.2.840.10008.5.1.4.1.1.12.1.1",
                   "Multi-frame Grayscale Word SC": "1.2.840.10008.5.1.4.1.1.7.3",
                   "NM": "1.2.840.10008.5.1.4.1.1.20", "US Multi-frame": "1.2.840.10008.5.1.4.1.1.3.1"}
        for name, sop_class in classes.items():
            with self.subTest(name):
                path = os.path.join(self.dir, f"{name}.dcm")
                truth = write_enhanced(path, positions, sop_class=sop_class)  # (1, -1024) in the shared groups
                for given in (path, self._alone_in_folder(path)):
                    image = io.read_image(given)
                    self.assertEqual(image.GetPixelIDTypeAsString(), "32-bit signed integer")  # as an enhanced CT's
                    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), truth)
                    self._assert_placed(image, positions, AXIAL, pixel_spacing=(0.7, 0.6))

        def rescaled(path: str, slope: float, intercept: float, where: str) -> np.ndarray:
            ds = pydicom.dcmread(path)
            del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
            rescale = Dataset()
            rescale.RescaleSlope, rescale.RescaleIntercept = slope, intercept
            items = ds.PerFrameFunctionalGroupsSequence if where == "per-frame" else ds.SharedFunctionalGroupsSequence
            for item in items:
                item.PixelValueTransformationSequence = DicomSequence([rescale])
            if where == "RLE":
                ds.compress(RLELossless)
            ds.save_as(path)
            return pydicom.dcmread(path).pixel_array * slope + intercept

        for where, slope, intercept, kind in (("per-frame", 1.0, -1024.0, "32-bit signed integer"),
                                              ("shared", 0.25, 3.5, "32-bit float"),
                                              ("RLE", 2.0, -1000.0, "32-bit signed integer")):
            with self.subTest(where=where, slope=slope):
                path = os.path.join(self.dir, f"xa-{where}.dcm")
                write_enhanced(path, positions, sop_class=classes["Enhanced XA"])
                truth = rescaled(path, slope, intercept, where)
                image = io.read_image(path)
                self.assertEqual(image.GetPixelIDTypeAsString(), kind)
                np.testing.assert_allclose(sitk.GetArrayFromImage(image), truth, rtol=1e-6)
        with self.subTest("a series of two files"):
            folder = os.path.join(self.dir, "split")
            os.makedirs(folder)
            uid = "1.2.826.0.1.3680043.8.498.7654321"
            four = [*positions, (-5.0, -6.0, 19.0)]
            parts = [write_enhanced(os.path.join(folder, f"{part}.dcm"), at, series_uid=uid,
                                    sop_class=classes["Enhanced XA"]) for part, at in (("a", four[:2]),
                                                                                         ("b", four[2:]))]
            np.testing.assert_array_equal(sitk.GetArrayFromImage(io.read_image(folder)), np.concatenate(parts))

        temporary = os.path.join(self.dir, "temporary")
        os.makedirs(temporary)
        probes: list[tuple[str, bytes]] = []
        _AUDIT_WATCH[:] = [temporary, probes]
        saved = tempfile.tempdir
        tempfile.tempdir = temporary
        path = os.path.join(self.dir, "ct.dcm")
        try:
            with self.subTest("a file ITK reads right"):
                truth = write_enhanced(path, positions)  # Enhanced CT
                np.testing.assert_array_equal(sitk.GetArrayFromImage(io.read_image(path)),
                                              sitk.GetArrayFromImage(sitk.ReadImage(path)))
                self.assertEqual(io.read_image(path).GetPixelIDTypeAsString(),
                                 sitk.ReadImage(path).GetPixelIDTypeAsString())
                self.assertEqual(os.listdir(temporary), [])
                self.assertTrue(probes)
                for name, blob in probes:
                    self.assertTrue(name.startswith("mmfusion-rescale-"), name)
                    for value in PHI.values():
                        self.assertNotIn(value.encode(), blob)
            with self.subTest("a temporary folder that cannot be written"):
                tempfile.tempdir = os.path.join(self.dir, "no such folder")
                xa = os.path.join(self.dir, "Enhanced XA.dcm")
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    image = io.read_image(xa)
                self.assertEqual([w.filename for w in caught], [__file__])
                self.assertIn(f"DICOM file '{xa}': whether ITK's reader applied its RescaleSlope/Intercept could not "
                              "be checked", str(caught[0].message))
                self.assertIn("TMPDIR", str(caught[0].message))
                np.testing.assert_array_equal(sitk.GetArrayFromImage(image),
                                              sitk.GetArrayFromImage(sitk.ReadImage(xa)))  # ITK's, as before
        finally:
            tempfile.tempdir = saved
            _AUDIT_WATCH.clear()

    def test_a_rescale_itk_applied_is_not_applied_again(self) -> None:
        """A multi-frame file whose SOP class is in its file meta alone (MediaStorageSOPClassUID (0002,0002), none in
        its data set) is read as ITK's reader (GDCM) reads it, which goes by the meta's class: the probe stated the
        data set's class only, so an Enhanced CT whose groups' pair ITK had applied was probed as a secondary capture,
        and the pair applied again (1024 off for an intercept of -1024), without a word. Where the two classes differ,
        the data set's decides, as for GDCM."""
        import pydicom

        xa, ct = "1.2.840.10008.5.1.4.1.1.12.1.1", "1.2.840.10008.5.1.4.1.1.2.1"
        positions = [(-5.0, -6.0, 10.0 + 3.0 * k) for k in range(3)]
        for data_set_class, meta_class in ((None, ct), (None, xa), (xa, ct), (ct, xa)):
            with self.subTest(data_set=data_set_class, meta=meta_class), tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "frames.dcm")
                truth = write_enhanced(path, positions, sop_class=ct)  # (1, -1024) in the shared groups
                ds = pydicom.dcmread(path)
                ds.file_meta.MediaStorageSOPClassUID = meta_class
                if data_set_class is None:
                    del ds.SOPClassUID
                else:
                    ds.SOPClassUID = data_set_class
                ds.save_as(path)
                for given in (path, folder):
                    image = io.read_image(given)
                    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), truth)
                    self.assertEqual(image.GetPixelIDTypeAsString(), "32-bit signed integer")

    def test_a_series_of_files_alike_is_probed_once(self) -> None:
        """The files of a series that state one SOP class, pixel format and rescale are probed for what ITK applies
        once, not once per file: a series of 300 one-frame enhanced files had read 2-3 s slower than before the probe
        (a probe written and read by ITK per file); each file's values stay right."""
        from pydicom.uid import generate_uid

        folder, temporary = os.path.join(self.dir, "split"), os.path.join(self.dir, "temporary")
        os.makedirs(folder)
        os.makedirs(temporary)
        uid, positions = generate_uid(), [(0.0, 0.0, 2.0 * k) for k in range(4)]
        truth = np.concatenate([write_enhanced(os.path.join(folder, f"f{k}.dcm"), [at], rows=6, cols=6,
                                               sop_class="1.2.840.10008.5.1.4.1.1.12.1.1", series_uid=uid)
                                for k, at in enumerate(positions)])  # Enhanced XA: (1, -1024) ITK leaves out
        removed: list[tuple[str, bytes]] = []
        _AUDIT_WATCH[:] = [temporary, removed]
        saved, tempfile.tempdir = tempfile.tempdir, temporary
        try:
            image = io.read_image(folder)
        finally:
            tempfile.tempdir = saved
            _AUDIT_WATCH.clear()
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), truth)
        self.assertEqual([name.startswith("mmfusion-rescale-") for name, _ in removed], [True])
        self.assertEqual(os.listdir(temporary), [])

    def test_an_unusable_rescale_is_refused_naming_the_file_the_tag_and_the_value(self) -> None:
        """A RescaleSlope (0028,1053) of 0, NaN, inf or 'abc', or a RescaleIntercept (0028,1052) that is no number,
        is refused naming the file, the tag and the value, alone, in a series (one file or every one) and in a
        multi-frame file's top level, shared or per-frame functional groups: ITK's reader (GDCM) had read a classic
        file's as a slope of 1 and an enhanced file's groups' as 0 (every voxel -1024, the intercept), and a series'
        NaN or inf had ended in a bare ValueError or OverflowError, all without naming the tag. A negative slope
        (DICOM allows it), a slope left out beside an intercept and an empty pair read as before; a slope stated
        empty beside an intercept reads as a left-out one, as 1 (DICOM's Type 1C, PS3.3 C.11.1.1, is broken alike by
        both), in a classic file or series and in an enhanced file's top level or groups (it had been refused; GDCM
        reads an enhanced file's groups' empty slope as neither 1 nor 0: -394240..-26624 for stored 24..723)."""
        import shutil

        import pydicom
        from pydicom.dataelem import RawDataElement
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence as DicomSequence
        from pydicom.tag import Tag

        def stated(item, tag: int, text: str) -> None:  # the value's bytes as given: pydicom refuses to make 'abc' a DS
            raw = text.encode() + b" " * (len(text) % 2)
            item._dict[Tag(tag)] = RawDataElement(Tag(tag), "DS", len(raw), raw, 0, False, True)

        source = os.path.join(self.dir, "series")
        truth = write_series(source)  # (1, -1024) at the top level of 6 slices
        positions = [(-5.0, -6.0, 10.0 + 3.0 * k) for k in range(3)]
        slope, intercept = 0x00281053, 0x00281052
        for tag, text, named, why in ((slope, "0", "RescaleSlope (0028,1053) '0'", ": a slope of 0 would make every"),
                                      (slope, "NaN", "RescaleSlope (0028,1053) 'NaN'", ", which is not a finite number"),
                                      (slope, "inf", "RescaleSlope (0028,1053) 'inf'", ", which is not a finite number"),
                                      (slope, "abc", "RescaleSlope (0028,1053) 'abc'", ", which is not a number"),
                                      (intercept, "abc", "RescaleIntercept (0028,1052) 'abc'", ", which is not a number")):
            for where in ("file", "one of a series", "every file of a series", "top", "shared", "per-frame"):
                with self.subTest(tag=hex(tag), text=text, where=where):
                    folder = os.path.join(self.dir, f"{tag:x}-{text}-{where}")
                    if where in ("top", "shared", "per-frame"):
                        os.makedirs(folder)
                        path = os.path.join(folder, "frames.dcm")
                        write_enhanced(path, positions, groups=where != "top", top={"SpacingBetweenSlices": 3.0, (
                            "ImagePositionPatient"): list(positions[0]), "ImageOrientationPatient": list(AXIAL)}
                            if where == "top" else None, spacing_in="top" if where == "top" else "shared")
                        ds = pydicom.dcmread(path)
                        items = ([ds] if where == "top" else [ds.SharedFunctionalGroupsSequence[0]]
                                 if where == "shared" else list(ds.PerFrameFunctionalGroupsSequence))
                        if where == "per-frame":
                            del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
                            for item in items:
                                rescale = Dataset()
                                rescale.RescaleSlope, rescale.RescaleIntercept = 1, -1024
                                item.PixelValueTransformationSequence = DicomSequence([rescale])
                        for item in items:
                            stated(item if where == "top" else item.PixelValueTransformationSequence[0], tag, text)
                        ds.save_as(path)
                        given = [path, folder]
                    else:
                        shutil.copytree(source, folder)
                        names = sorted(os.listdir(folder))
                        for name in names if where == "every file of a series" else names[2:3]:
                            ds = pydicom.dcmread(os.path.join(folder, name))
                            stated(ds, tag, text)
                            ds.save_as(os.path.join(folder, name))
                        path = os.path.join(folder, names[0] if where == "every file of a series" else names[2])
                        given = [path] if where == "file" else [folder]
                    for read in given:
                        with self.assertRaises(InputError) as cm:
                            io.read_image(read)
                        message = str(cm.exception)
                        where_words = {"shared": " (in its shared functional groups' PixelValueTransformationSequence "
                                                 "(0028,9145))", "per-frame": " (in frame 1's functional groups' "
                                                 "PixelValueTransformationSequence (0028,9145))"}.get(where, "")
                        self.assertIn(f"DICOM file '{path}' states {named}{where_words}{why}", message)
                        self.assertIn(f"Set {named[:named.index(')') + 1]} to the value the scanner used", message)
                        if where == "every file of a series":
                            self.assertIn("so do 5 more of the series' 6 files", message)
                        self.assertFalse([tag for tag, value in PHI.items() if value in message], message)
        for name, change, expected in (("negative", lambda ds: stated(ds, slope, "-1"), -(truth + 1024) - 1024),
                                       ("no slope", lambda ds: ds.__delattr__("RescaleSlope"), truth),
                                       ("empty pair", lambda ds: (stated(ds, slope, ""), stated(ds, intercept, "")),
                                        truth + 1024)):
            with self.subTest(name):
                folder = os.path.join(self.dir, name)
                shutil.copytree(source, folder)
                for file in sorted(os.listdir(folder)):
                    ds = pydicom.dcmread(os.path.join(folder, file))
                    change(ds)
                    ds.save_as(os.path.join(folder, file))
                np.testing.assert_array_equal(sitk.GetArrayFromImage(io.read_image(folder)), expected)
                np.testing.assert_array_equal(sitk.GetArrayFromImage(io.read_image(
                    os.path.join(folder, "IM0000.dcm"))), expected[0])
        for where in ("empty slope", "top", "shared", "per-frame"):  # beside -1024: read as slope 1
            with self.subTest("empty slope", where=where):
                folder = os.path.join(self.dir, f"empty slope {where}")
                if where == "empty slope":
                    shutil.copytree(source, folder)
                    for file in sorted(os.listdir(folder)):
                        ds = pydicom.dcmread(os.path.join(folder, file))
                        stated(ds, slope, "")
                        ds.save_as(os.path.join(folder, file))
                    np.testing.assert_array_equal(sitk.GetArrayFromImage(io.read_image(folder)), truth)
                    np.testing.assert_array_equal(sitk.GetArrayFromImage(io.read_image(
                        os.path.join(folder, "IM0002.dcm"))), truth[2])
                    continue
                os.makedirs(folder)
                path = os.path.join(folder, "frames.dcm")
                values = write_enhanced(path, positions, groups=where != "top", top={"SpacingBetweenSlices": 3.0, (
                    "ImagePositionPatient"): list(positions[0]), "ImageOrientationPatient": list(AXIAL)}
                    if where == "top" else None, spacing_in="top" if where == "top" else "shared")
                ds = pydicom.dcmread(path)
                if where == "per-frame":
                    del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
                    for item in ds.PerFrameFunctionalGroupsSequence:
                        rescale = Dataset()
                        rescale.RescaleIntercept = -1024
                        stated(rescale, slope, "")
                        item.PixelValueTransformationSequence = DicomSequence([rescale])
                else:
                    stated(ds if where == "top" else
                           ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0], slope, "")
                ds.save_as(path)
                np.testing.assert_array_equal(sitk.GetArrayFromImage(io.read_image(path)), values)

    def test_a_rescale_stated_as_one_value_repeated_is_read_with_a_warning(self) -> None:
        """A RescaleSlope (0028,1053) written as '2\\2' (one value twice; DICOM's VM is 1) had been refused as '2
        values where DICOM allows one'; ITK's reader (GDCM) takes its first value and pydicom's apply_rescale fails on
        it. It is read as that value, with a warning naming the file, the tag and the value (once for a series);
        different values ('2\\3') stay refused."""
        import shutil

        import pydicom

        source = os.path.join(self.dir, "series")
        truth = write_series(source)  # stored - 1024: slope 1
        for text, slope in (("1\\1", 1.0), ("2\\2", 2.0), ("2.0\\2", 2.0), ("2\\3", None)):
            with self.subTest(text=text):
                folder = os.path.join(self.dir, text.replace("\\", "_"))
                shutil.copytree(source, folder)
                for name in sorted(os.listdir(folder)):
                    ds = pydicom.dcmread(os.path.join(folder, name))
                    ds.RescaleSlope = text.split("\\")
                    ds.save_as(os.path.join(folder, name))
                path = os.path.join(folder, "IM0002.dcm")
                named = f"RescaleSlope (0028,1053) '{text}'"
                if slope is None:
                    for read in (folder, path):
                        with self.assertRaises(InputError) as cm:
                            io.read_image(read)
                        self.assertIn(f"states {named}, 2 values where DICOM allows one", str(cm.exception))
                    continue
                for read, expected in ((folder, truth), (path, truth[2])):
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        image = io.read_image(read)
                    np.testing.assert_allclose(sitk.GetArrayFromImage(image), (expected + 1024) * slope - 1024)
                    said = [str(w.message) for w in caught if named in str(w.message)]
                    self.assertEqual(len(said), 1, [str(w.message) for w in caught])
                    self.assertIn(f"2 equal values where DICOM allows one (VM 1): read as {slope:g}", said[0])
                    self.assertIn("6 of the 6 files" if read == folder else f"DICOM file '{path}'", said[0])
                    self.assertFalse([tag for tag, value in PHI.items() if value in said[0]], said[0])
        # both tags repeated: each named (the intercept's had gone unwarned beside the slope's)
        folder = os.path.join(self.dir, "both")
        shutil.copytree(source, folder)
        for name in sorted(os.listdir(folder)):
            ds = pydicom.dcmread(os.path.join(folder, name))
            ds.RescaleSlope, ds.RescaleIntercept = ["2", "2"], ["-1024", "-1024"]
            ds.save_as(os.path.join(folder, name))
        for read, expected in ((folder, truth), (os.path.join(folder, "IM0002.dcm"), truth[2])):
            with self.subTest(both=read), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                np.testing.assert_allclose(sitk.GetArrayFromImage(io.read_image(read)), (expected + 1024) * 2 - 1024)
                said = " ".join(str(w.message) for w in caught)
                self.assertIn("RescaleSlope (0028,1053) '2\\2', 2 equal values", said)
                self.assertIn("RescaleIntercept (0028,1052) '-1024\\-1024', 2 equal values where DICOM allows one "
                              "(VM 1): read as -1024", said)

    def test_a_rescale_repeated_in_the_functional_groups_is_read_with_a_warning(self) -> None:
        """A RescaleSlope/RescaleIntercept stated as one value repeated ('2\\2', '-1024\\-1024') in an enhanced file's
        shared or per-frame PixelValueTransformationSequence (0028,9145) had been refused as '2 values where DICOM
        allows one', where the same at the file's top level is read as that value with a warning: it is now read so
        there too (alone, and in a series of such files, warned once), with the same warning; different values
        ('2\\3') stay refused."""
        import pydicom
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence as DicomSequence
        from pydicom.uid import generate_uid

        positions = [[(-5.0, -6.0, 10.0 + 3.0 * (3 * i + k)) for k in range(3)] for i in range(2)]
        for where in ("shared", "per-frame"):
            for slope, intercept, factor in (("2\\2", "-1024", 2.0), ("1", "-1024\\-1024", 1.0),
                                             ("2\\2", "-1024\\-1024", 2.0), ("2\\3", "-1024", None)):
                with self.subTest(where=where, slope=slope, intercept=intercept):
                    folder = os.path.join(self.dir, f"{where} {slope} {intercept}".replace("\\", "_"))
                    os.makedirs(folder)
                    uid, truths, paths = generate_uid(), [], []
                    for i, frames in enumerate(positions):
                        paths.append(os.path.join(folder, f"part{i}.dcm"))
                        truths.append(write_enhanced(paths[-1], frames, series_uid=uid))
                        ds = pydicom.dcmread(paths[-1])
                        items = list(ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence)
                        if where == "per-frame":  # each frame its own, none shared
                            del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
                            items = [Dataset() for _ in ds.PerFrameFunctionalGroupsSequence]
                            for frame, item in zip(ds.PerFrameFunctionalGroupsSequence, items):
                                frame.PixelValueTransformationSequence = DicomSequence([item])
                        for item in items:
                            item.RescaleSlope, item.RescaleIntercept = slope.split("\\"), intercept.split("\\")
                        ds.save_as(paths[-1])
                    named = [f"{name} '{text}'" for name, text in (("RescaleSlope (0028,1053)", slope),
                                                                    ("RescaleIntercept (0028,1052)", intercept))
                             if "\\" in text]
                    for read, truth in ((paths[0], truths[0]), (folder, np.concatenate(truths))):
                        if factor is None:
                            with self.assertRaises(InputError) as cm:
                                io.read_image(read)
                            self.assertIn(f"states {named[0]} (in ", str(cm.exception))
                            self.assertIn("2 values where DICOM allows one", str(cm.exception))
                            continue
                        with warnings.catch_warnings(record=True) as caught:
                            warnings.simplefilter("always")
                            image = io.read_image(read)
                        np.testing.assert_allclose(sitk.GetArrayFromImage(image), (truth + 1024) * factor - 1024)
                        for name in named:
                            said = [str(w.message) for w in caught if name in str(w.message)]
                            self.assertEqual(len(said), 1, [str(w.message) for w in caught])
                            self.assertIn("2 equal values where DICOM allows one (VM 1): read as", said[0])
                            self.assertIn("2 of the 2 files" if read == folder else f"DICOM file '{paths[0]}'", said[0])
                            self.assertFalse([tag for tag, value in PHI.items() if value in said[0]], said[0])

    def _alone_in_folder(self, path: str) -> str:
        """A folder holding a copy of ``path`` alone."""
        import shutil

        folder = os.path.join(self.dir, os.path.basename(path) + ".folder")
        os.makedirs(folder)
        shutil.copy(path, folder)
        return folder

    def test_a_header_pydicom_cannot_read_warns_from_the_callers_line(self) -> None:
        """A multi-frame file whose header pydicom reads short while ITK (GDCM) reads its pixels (here a stray item
        delimiter (FFFE,E00D) at its top level, where pydicom ends the data set, before NumberOfFrames) keeps ITK's
        geometry, with a warning attributed to the line that called read_image, as the other warnings of a file
        are, alone or in its folder; it had pointed into io.py."""
        import struct
        import warnings

        from MultimodalFusionLib.dicom_header import read_geometry_tags

        source = os.path.join(self.dir, "source.dcm")
        truth = write_enhanced(source, None, frames=3, groups=False,
                               top={"SpacingBetweenSlices": 2.0, "PixelSpacing": [0.7, 0.6]})
        with open(source, "rb") as fh:
            data = fh.read()
        at = data.index(struct.pack("<HH", 0x0028, 0x0008))  # NumberOfFrames
        folder = os.path.join(self.dir, "short")
        os.makedirs(folder)
        path = os.path.join(folder, "short.dcm")
        with open(path, "wb") as out:
            out.write(data[:at] + struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + data[at:])
        self.assertNotIn(0x00280008, read_geometry_tags(path))
        for given in (path, folder):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                line, image = sys._getframe().f_lineno, io.read_image(given)
            np.testing.assert_array_equal(sitk.GetArrayFromImage(image), truth)
            said = [str(w.message) for w in caught]
            self.assertEqual(said, [f"DICOM file '{path}': its header could not be read to check its pixel size and "
                                    "frame positions, so its geometry is as ITK's reader (GDCM) gives it."], given)
            self.assertEqual((caught[0].filename, caught[0].lineno), (__file__, line), given)

    def test_gantry_tilted_ct_is_read_sheared(self) -> None:
        # slices 2.5 mm apart along z, each shifted 0.91 mm posterior (a gantry tilted 20 degrees): ITK stacked
        # them along the slice normal 2.66 mm apart, the last slice 6.4 mm off; the grid is now sheared
        shift = 2.5 * math.tan(math.radians(20))
        positions = [(-12.0, -14.0 + shift * k, 30.0 + 2.5 * k) for k in range(6)]
        write_series(self.dir, positions=positions)
        image = io.read_image(self.dir)
        self._assert_placed(image, positions, AXIAL)
        self.assertEqual(io.volume_extension(image), ".mha")  # NIfTI cannot hold the shear

    def test_slices_of_one_row_or_one_pixel_are_stacked_as_slices(self) -> None:
        """ITK's series reader drops a slice's trailing axes of one pixel before stacking: 6 slices of 1 x 1 came out
        as 6 x 1 x 1 voxels of 0.8 x 0.9 x 1 mm, slices of 1 x 3 as 3 x 6 x 1, the slice distance and directions on the
        wrong axes (an oblique series' row direction flipped). Each now has the grid a series of 2 x 2 slices with the
        same tags has (columns x rows x slices, origin, spacing, direction), its values slice by slice; 3 x 1 slices
        (one column) read right before too."""
        oblique = [float(v) for v in np.array(sitk.Euler3DTransform((0, 0, 0), 0.3, -0.2, 0.5).GetMatrix())
                   .reshape(3, 3)[:, :2].T.ravel()]
        normal = np.cross(oblique[:3], oblique[3:])
        positions = [list(np.array([-12.0, -14.0, 30.0]) + 2.5 * k * normal) for k in range(6)]
        grids = {}
        for rows, cols in ((2, 2), (1, 1), (1, 3), (3, 1)):
            folder = os.path.join(self.dir, f"{rows}x{cols}")
            values = write_series(folder, rows=rows, cols=cols, pixel_spacing=(0.9, 0.8), positions=positions,
                                  orientations=[oblique] * 6)
            image = io.read_image(folder)
            self.assertEqual(image.GetSize(), (cols, rows, 6), (rows, cols))
            np.testing.assert_array_equal(sitk.GetArrayFromImage(image), values)
            grids[rows, cols] = (image.GetSpacing(), image.GetOrigin(), image.GetDirection())
            self._assert_placed(image, positions, oblique, rows, cols, (0.9, 0.8))
        for shape in ((1, 1), (1, 3), (3, 1)):
            for got, want in zip(grids[shape], grids[2, 2]):
                np.testing.assert_allclose(got, want, atol=1e-9, err_msg=str(shape))
        np.testing.assert_allclose(grids[1, 1][0], (0.8, 0.9, 2.5), atol=1e-9)

    def test_slices_off_one_line_are_refused(self) -> None:
        # even steps along the normal, but one slice shifted sideways: no grid holds it
        positions = [(-12.0, -14.0 + (3.0 if k == 3 else 0.0), 30.0 + 2.5 * k) for k in range(6)]
        write_series(self.dir, positions=positions)
        with self.assertRaises(InputError) as ctx:
            io.read_image(self.dir)
        self.assertIn("ImagePositionPatient (0020,0032)", str(ctx.exception))
        self.assertIn("not on one straight line", str(ctx.exception))


    def test_mixed_or_missing_orientation_is_named(self) -> None:
        # a localizer's coronal slices saved in the axial series: was "uneven slice spacing ... a slice
        # may be missing between 30 and 30 mm"; a series without ImageOrientationPatient was read as axial
        coronal = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
        cases = {"mixed": dict(orientations=[AXIAL] * 4 + [coronal] * 2),
                 "missing": dict(positions=[(-12.0, -14.0 + 2.5 * k, 30.0) for k in range(6)],
                                 drop=("ImageOrientationPatient",))}
        for name, kwargs in cases.items():
            with self.subTest(name), tempfile.TemporaryDirectory() as folder:
                write_series(folder, **kwargs)
                with self.assertRaises(InputError) as ctx:
                    io.read_image(folder)
                self.assertIn("ImageOrientationPatient (0020,0037)", str(ctx.exception))
        with tempfile.TemporaryDirectory() as folder:
            write_series(folder, orientations=[AXIAL] * 4 + [coronal] * 2)
            with self.assertRaises(InputError) as ctx:
                io.read_image(folder)
            self.assertRegex(str(ctx.exception), r"mixes slice orientations: [24] of the 6 slices")
        for tilt in (1.0, 90.0):  # one slice turned (ITK's series reader read it as one volume without a word)
            c, s = math.cos(math.radians(tilt)), math.sin(math.radians(tilt))
            with self.subTest(tilt=tilt), tempfile.TemporaryDirectory() as folder:
                write_series(folder, orientations=[AXIAL] * 2 + [(1.0, 0.0, 0.0, 0.0, c, s)] + [AXIAL] * 3)
                with self.assertRaises(InputError) as ctx:
                    io.read_image(folder)
                first, turned = (os.path.join(folder, f"IM{k:04d}.dcm") for k in (0, 2))
                self.assertIn(f"mixes slice orientations: 1 of the 6 slices (the first: '{turned}') have another "
                              f"ImageOrientationPatient (0020,0037) than the series' first file ('{first}')",
                              ctx.exception.problem)
                for value in PHI.values():
                    self.assertNotIn(value, str(ctx.exception))



class DicomSeriesOfMultiframeFiles(unittest.TestCase):
    """A series (one SeriesInstanceUID) of several files, one or more of them multi-frame: the frames of all
    its files are stacked by their positions, with the checks of one file, or the series is refused naming the
    file. ITK's series reader (SimpleITK 2.5.7) refused such a series for having no PixelSpacing where it is
    in the functional groups, read it as a 4D image of one volume per file at 1 x 1 x 1 mm where it is at the
    top level, and failed with "Size mismatch!" on a multi-frame file among single-frame ones."""

    def _write_parts(self, folder: str, parts: Sequence[Sequence[Sequence[float]]], **options) -> list[np.ndarray]:
        """One enhanced file per list of frame positions, all of one series; returns each file's HU values."""
        from pydicom.uid import generate_uid

        uid = generate_uid()
        return [write_enhanced(os.path.join(folder, f"part{i}.dcm"), positions, rows=8, cols=8, series_uid=uid,
                               **options) for i, positions in enumerate(parts)]

    def _assert_stacked(self, image: sitk.Image, parts, truths, orientation=AXIAL) -> None:
        """Every frame of every file in the image, in order along the slice normal, where its tags put it."""
        frames = sorted(((np.dot(p, np.cross(orientation[:3], orientation[3:])), tuple(p), truth[k])
                         for positions, truth in zip(parts, truths) for k, p in enumerate(positions)),
                        key=lambda frame: frame[0])
        self.assertEqual(image.GetSize(), (8, 8, len(frames)))
        np.testing.assert_allclose(voxel_centres(image), expected_centres([f[1] for f in frames], orientation, 8, 8,
                                                                          (0.7, 0.6)), atol=1e-3)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), np.array([f[2] for f in frames]))

    def test_a_split_multiframe_series_is_stacked_by_position(self) -> None:
        c, s = math.cos(math.radians(20)), math.sin(math.radians(20))
        oblique = (1.0, 0.0, 0.0, 0.0, c, s)
        normal = np.array(np.cross(oblique[:3], oblique[3:]))
        legacy = {"spacing_in": "top", "top": {"ImagePositionPatient": [0.0, 0.0, 0.0],
                                               "ImageOrientationPatient": list(AXIAL), "SpacingBetweenSlices": 2.0}}
        cases = {
            # file names against the positions' order, and files of different frame counts
            "3 files, named backwards": ([[(-5.0, -6.0, 10.0 + 2.0 * (4 * (2 - i) + k)) for k in range(4)]
                                          for i in range(3)], AXIAL, {}),
            "3 + 5 frames": ([[(0.0, 0.0, 2.0 * k) for k in range(3)], [(0.0, 0.0, 6.0 + 2.0 * k) for k in range(5)]],
                             AXIAL, {}),
            "interleaved": ([[(0.0, 0.0, 4.0 * k) for k in range(3)], [(0.0, 0.0, 2.0 + 4.0 * k) for k in range(3)]],
                            AXIAL, {}),
            "one frame per file": ([[(1.0, 2.0, 3.0 + 2.5 * i)] for i in range(4)], AXIAL, {}),
            "oblique": ([[tuple(np.array([1.0, 2.0, 3.0]) + 2.5 * (3 * i + k) * normal) for k in range(3)]
                         for i in range(2)], oblique, {}),
            "sheared": ([[(0.0, 1.0 * (3 * i + k), 3.0 * (3 * i + k)) for k in range(3)] for i in range(2)], AXIAL, {}),
            # the geometry at the top level too: read as a 4D image, 1 x 1 x 1 mm (the pixel size lost)
            "top-level geometry": ([[(0.0, 0.0, 8.0 * i + 2.0 * k) for k in range(4)] for i in range(2)], AXIAL,
                                   legacy),
        }
        for case, (parts, orientation, options) in cases.items():
            with self.subTest(case), tempfile.TemporaryDirectory() as folder:
                if case == "top-level geometry":  # each file's own first position at its top level
                    truths = [write_enhanced(os.path.join(folder, f"part{i}.dcm"), positions, rows=8, cols=8,
                                             series_uid="1.2.3.4.5", spacing_in="top",
                                             top={**legacy["top"], "ImagePositionPatient": list(positions[0])})
                              for i, positions in enumerate(parts)]
                else:
                    truths = self._write_parts(folder, parts, orientation=orientation, **options)
                self.assertEqual(len(io.list_dicom_series(folder)), 1)
                image = io.read_image(folder)
                self._assert_stacked(image, parts, truths, orientation)
                if case == "sheared":
                    self.assertEqual(io.volume_extension(image), ".mha")

    def test_a_multiframe_file_among_single_frame_slices(self) -> None:
        """One series: 3 classic slices and a multi-frame file of 4 frames below them: refused for "no usable
        PixelSpacing" (kept in the functional groups), or with the geometry at the top level too for "uneven slice
        spacing: steps from 2 to 8 mm" (the multi-frame file taken as one slice; with the slices below it, ITK
        failed: "Size mismatch! The size of ... is [8, 8, 4] and does not match the required size [8, 8, 1]")."""
        from pydicom.uid import generate_uid

        top_level = {"spacing_in": "top", "top": {"ImagePositionPatient": [-5.0, -6.0, 0.0], "SpacingBetweenSlices": 2.0,
                                                  "ImageOrientationPatient": list(AXIAL)}}
        for name, options in (("zz.dcm", {}), ("AA.dcm", {}), ("zz.dcm", top_level), ("AA.dcm", top_level)):
            with self.subTest(name, top_level=bool(options)), tempfile.TemporaryDirectory() as folder:
                uid = generate_uid()
                classic = write_series(folder, positions=[(-5.0, -6.0, 8.0 + 2.0 * k) for k in range(3)], rows=8,
                                       cols=8, pixel_spacing=(0.7, 0.6), series_uid=uid)
                enhanced = write_enhanced(os.path.join(folder, name), [(-5.0, -6.0, 2.0 * k) for k in range(4)],
                                          rows=8, cols=8, series_uid=uid, **options)
                image = io.read_image(folder)
                self.assertEqual(image.GetSize(), (8, 8, 7))
                np.testing.assert_allclose(voxel_centres(image), expected_centres(
                    [(-5.0, -6.0, 2.0 * k) for k in range(7)], AXIAL, 8, 8, (0.7, 0.6)), atol=1e-3)
                np.testing.assert_array_equal(sitk.GetArrayFromImage(image), np.concatenate([enhanced, classic]))

    def test_files_placed_by_their_shared_functional_groups_are_stacked(self) -> None:
        """Enhanced files of one frame each whose PlanePositionSequence is in the shared functional groups (one
        position for all of a file's frames): each is placed there alone, and the series had been refused for "no
        usable ImagePositionPatient (0020,0032) ... in its functional groups for every frame"."""
        import pydicom

        parts = [[(1.0, 2.0, 3.0 + 2.5 * i)] for i in range(3)]
        with tempfile.TemporaryDirectory() as folder:
            truths = self._write_parts(folder, parts)
            for i in range(len(parts)):
                path = os.path.join(folder, f"part{i}.dcm")
                ds = pydicom.dcmread(path)
                frame = ds.PerFrameFunctionalGroupsSequence[0]
                ds.SharedFunctionalGroupsSequence[0].PlanePositionSequence = frame.PlanePositionSequence
                del frame.PlanePositionSequence
                ds.save_as(path)
            self._assert_stacked(io.read_image(folder), parts, truths)

    def test_files_without_frame_positions_are_stacked_from_their_stated_position(self) -> None:
        """Files whose functional groups place no frame: each from its top-level ImagePositionPatient (an enhanced CT,
        which ITK read at (0, 0, 0): "two frames at one position along the slice normal (0 mm)"), or its NM
        DetectorInformationSequence's (refused as "no usable ImagePositionPatient")."""
        import pydicom
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence as DicomSequence
        from pydicom.uid import generate_uid

        for case in ("enhanced CT", "NM"):
            with self.subTest(case), tempfile.TemporaryDirectory() as folder:
                uid, truths = generate_uid(), []
                for i in range(2):
                    path = os.path.join(folder, f"part{i}.dcm")
                    position = [1.0, 2.0, 6.0 + 12.0 * i]
                    if case == "NM":
                        truths.append(write_enhanced(path, None, rows=8, cols=8, frames=4, spacing_in="top",
                                                     sop_class="1.2.840.10008.5.1.4.1.1.20", groups=False,
                                                     series_uid=uid, top={"SpacingBetweenSlices": 3.0}))
                        ds = pydicom.dcmread(path)
                        item = Dataset()
                        item.ImagePositionPatient, item.ImageOrientationPatient = position, list(AXIAL)
                        ds.DetectorInformationSequence = DicomSequence([item])
                        ds.save_as(path)
                    else:
                        truths.append(write_enhanced(path, None, rows=8, cols=8, frames=4, series_uid=uid, top={
                            "ImagePositionPatient": position, "SpacingBetweenSlices": 3.0}))
                image = io.read_image(folder)
                self._assert_stacked(image, [[(1.0, 2.0, 6.0 + 12.0 * i + 3.0 * k) for k in range(4)] for i in range(2)],
                                     truths)

    def test_files_that_fit_no_one_grid_are_refused_naming_the_file(self) -> None:
        """Each refusal names the offending file (never a patient value) and what to do."""
        import pydicom

        def turn(path: str) -> None:  # the second file coronal, its frames along its own normal
            uid = pydicom.dcmread(path).SeriesInstanceUID
            write_enhanced(path, [(0.0, 8.0 + 2.0 * k, 0.0) for k in range(4)], (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
                           rows=8, cols=8, series_uid=uid)

        def resize(path: str) -> None:  # the second file's frames 4 x 8: rewritten with fewer rows
            ds = pydicom.dcmread(path)
            ds.Rows = 4
            ds.PixelData = np.frombuffer(ds.PixelData, "<i2").reshape(4, 8, 8)[:, :4].tobytes()
            ds.save_as(path)

        def respace(path: str) -> None:
            ds = pydicom.dcmread(path)
            ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = [0.5, 0.6]
            ds.save_as(path)

        def unplace(path: str) -> None:  # no position for its frames: NM-like
            ds = pydicom.dcmread(path)
            for frame in ds.PerFrameFunctionalGroupsSequence:
                del frame.PlanePositionSequence
            ds.save_as(path)

        below, above = [(0.0, 0.0, 2.0 * k) for k in range(4)], [(0.0, 0.0, 8.0 + 2.0 * k) for k in range(4)]
        cases = {"echoes": ([below, below], None, "two frames at one position along the slice normal (0 mm): "
                                                  "'{0}' (frame 1) and '{1}' (frame 1)", "echo"),
                 "a missing frame": ([below, [(0.0, 0.0, 10.0 + 2.0 * k) for k in range(4)]], None,
                                     "a frame may be missing between '{0}' (frame 4) at 6 mm and '{1}' (frame 1) at "
                                     "10 mm", "complete series"),
                 "off one line": ([below, [(0.0, 3.0, 8.0 + 2.0 * k) for k in range(4)]], None,
                                  "are not on one straight line: '{1}' (frame 1) lies 1.286 mm off", "resample"),
                 "another orientation": ([below, above], turn, "'{1}' of DICOM series 'ENHANCED CT' has another "
                                                              "ImageOrientationPatient (0020,0037) than the series' "
                                                              "first file ('{0}')", "another folder"),
                 "another size": ([below, above], resize, "'{1}' of DICOM series 'ENHANCED CT' has columns x rows "
                                                         "8x4, the series' first file ('{0}') 8x8", "another folder"),
                 "another pixel size": ([below, above], respace, "'{1}' of DICOM series 'ENHANCED CT' has a pixel "
                                                                "size (columns x rows, mm) of 0.6x0.5, the series' "
                                                                "first file ('{0}') 0.6x0.7", "another folder"),
                 "no positions": ([below, above], unplace, "'{1}' of DICOM series 'ENHANCED CT' has no usable "
                                                           "ImagePositionPatient (0020,0032)", "own path"),
                 # files of one frame each, all at one position, or moving within their (axial) plane: was "two
                 # frames at one position along the slice normal", also for frames 2 mm apart in their plane
                 "one frame per file, at one position": ([[(0.0, 0.0, 0.0)]] * 3, None,
                                                         "DICOM series 'ENHANCED CT' has 3 frames in its files at one "
                                                         "position", "one file's path"),
                 "one frame per file, within the plane": ([[(2.0 * i, 0.0, 0.0)] for i in range(3)], None,
                                                          "DICOM series 'ENHANCED CT' has 3 frames in its files whose "
                                                          "ImagePositionPatient (0020,0032) spread 4 mm within the "
                                                          "plane", "Check ImageOrientationPatient"),
                 # a file whose own frames move within their plane: named as it is alone (ITK's "Zero-valued
                 # spacing is not supported", fix "Use a NIfTI, NRRD ...")
                 "a file's frames within the plane": ([below, [(2.0 * k, 0.0, 8.0) for k in range(4)]], None,
                                                      "DICOM file '{1}' has 4 frames whose ImagePositionPatient "
                                                      "(0020,0032) spread 6 mm within the plane",
                                                      "Check ImageOrientationPatient")}
        for case, (parts, change, problem, fix) in cases.items():
            with self.subTest(case), tempfile.TemporaryDirectory() as folder:
                self._write_parts(folder, parts)
                paths = [os.path.join(folder, f"part{i}.dcm") for i in range(len(parts))]
                if change is not None:
                    change(paths[1])
                with self.assertRaises(InputError) as ctx:
                    io.read_image(folder)
                self.assertIn(problem.format(*paths), ctx.exception.problem)
                self.assertIn(fix, ctx.exception.fix)
                for value in PHI.values():
                    self.assertNotIn(value, str(ctx.exception))

    def test_the_frames_of_its_files_are_stacked_in_one_array(self) -> None:
        """The frames are put in order into one array, each file let go once its frames are in: the arrays Python
        allocates on the way (tracemalloc sees numpy's, not ITK's) hold the volume once, as ITK's image made from
        them holds it once more; a concatenation then reordered had held it twice (1 GB of frames: 3.0 x its size
        over the memory before the read, now 2.0)."""
        import shutil
        import tracemalloc

        from pydicom.uid import generate_uid

        folder = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, folder)
        positions, uid = [(0.0, 0.0, 2.0 * k) for k in range(64)], generate_uid()
        truths = [write_enhanced(os.path.join(folder, f"part{i}.dcm"), positions[i::2], rows=128, cols=128,
                                 series_uid=uid) for i in range(2)]
        tracemalloc.start()
        try:
            image = io.read_image(folder)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        volume = image.GetNumberOfPixels() * image.GetSizeOfPixelComponent()
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image)[0::2], truths[0])  # interleaved, in order
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image)[1::2], truths[1])
        self.assertEqual((image.GetSize(), image.GetOrigin()[2], image.GetSpacing()[2]), ((128, 128, 64), 0.0, 2.0))
        self.assertLess(peak, 1.3 * volume, f"peak {peak} bytes for a volume of {volume}")

    def test_a_series_warns_once_for_all_its_files(self) -> None:
        """A warning that each of a series' files gives (its pixel size taken from ImagerPixelSpacing, its frames taken
        as contiguous from SliceThickness) is given once for the series, naming how many files gave it and the first;
        a series of 30 such files gave 30 alike, each naming its file. One file's warning stays as it is alone."""
        import warnings

        from pydicom.uid import generate_uid

        uid = generate_uid()
        with tempfile.TemporaryDirectory() as folder:
            paths = [os.path.join(folder, f"part{i}.dcm") for i in range(5)]
            for i, path in enumerate(paths):  # legacy multi-frame CTs: 3 frames each, placed at the top level
                size = {"NominalScannedPixelSpacing" if i == 0 else "ImagerPixelSpacing": [0.7, 0.6]}
                write_enhanced(path, None, rows=8, cols=8, frames=3, pixel_spacing=None, groups=False, series_uid=uid,
                               sop_class="1.2.840.10008.5.1.4.1.1.2", top={
                                   **size, "SliceThickness": 2.0, "ImagePositionPatient": [-5.0, -6.0, 6.0 * i],
                                   "ImageOrientationPatient": list(AXIAL)})
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                image = io.read_image(folder)
            self.assertEqual(image.GetSize(), (8, 8, 15))
            self.assertEqual(image.GetSpacing(), (0.6, 0.7, 2.0))
            said = [str(w.message) for w in caught]
            self.assertEqual(len(said), 3, said)
            alone, contiguous, imager = said
            self.assertTrue(alone.startswith(f"DICOM file '{paths[0]}' has no PixelSpacing (0028,0030): its pixel "
                                             "size, 0.7 x 0.6 mm (rows x columns), is its NominalScannedPixelSpacing"),
                            alone)
            self.assertTrue(contiguous.startswith(f"5 of the 5 files of DICOM series 'ENHANCED CT' (the first: "
                                                  f"'{paths[0]}') have no per-frame ImagePositionPatient (0020,0032) "
                                                  "nor SpacingBetweenSlices (0018,0088): their frames are taken as "
                                                  "contiguous slices, 2 mm apart"), contiguous)
            self.assertTrue(imager.startswith(f"4 of the 5 files of DICOM series 'ENHANCED CT' (the first: "
                                              f"'{paths[1]}') have no PixelSpacing (0028,0030): their pixel size, "
                                              "0.7 x 0.6 mm (rows x columns) in the first, is their ImagerPixelSpacing "
                                              "(0018,1164)"), imager)
            for path in paths[2:]:
                self.assertFalse(any(path in text for text in said), path)
            for value in PHI.values():
                self.assertNotIn(value, " ".join(said))

    def test_multiframe_files_of_different_series_are_listed(self) -> None:
        # (already so before: each series of one file is read as that file alone) two enhanced files of
        # different series, and one beside classic slices of another series: which series is asked, and each
        # picked series reads as its files do alone
        with tempfile.TemporaryDirectory() as folder:
            first = write_enhanced(os.path.join(folder, "a.dcm"), [(0.0, 0.0, 2.0 * k) for k in range(4)], rows=8,
                                   cols=8)
            write_enhanced(os.path.join(folder, "b.dcm"), [(0.0, 0.0, 2.0 * k) for k in range(3)], rows=8, cols=8)
            write_series(folder, positions=[(0.0, 0.0, 2.0 * k) for k in range(3)], rows=8, cols=8,
                         description="CLASSIC")
            with self.assertRaises(io.SeveralDicomSeries) as ctx:
                io.read_image(folder)
            self.assertEqual(sorted(s["files"] for s in ctx.exception.series), [1, 1, 3])
            uid = next(s["uid"] for s in io.list_dicom_series(folder) if s["files"] == [os.path.join(folder, "a.dcm")])
            np.testing.assert_array_equal(sitk.GetArrayFromImage(io.read_image(folder, series=uid)), first)
            self.assertEqual(io.read_image(folder, series="CLASSIC").GetSize(), (8, 8, 3))


class DicomFilesItCannotRead(unittest.TestCase):
    """Files ITK's DICOM reader (GDCM) cannot decode are named with their transfer syntax and the fix."""

    def test_undecodable_transfer_syntax_is_named(self) -> None:
        # MPEG-4 was "ITK failed ...: Failed to change to Implicit Transfer Syntax. Fix: Check that the series
        # is complete"; an unknown (private) syntax was "No DICOM series found in folder"
        for uid, name in (("1.2.840.10008.1.2.4.102", "MPEG-4"), ("1.2.826.0.1.3680043.2.1143.999.1", "unknown")):
            with self.subTest(name), tempfile.TemporaryDirectory() as folder:
                write_series(folder, transfer_syntax=uid)
                for path in (folder, os.path.join(folder, "IM0000.dcm")):
                    with self.assertRaises(InputError) as ctx:
                        io.read_image(path)
                    message = str(ctx.exception)
                    self.assertIn(uid, message)
                    self.assertIn(name, message)
                    self.assertIn("uncompressed", message)  # the fix
                    self.assertNotIn("Implicit Transfer Syntax", message)


    def test_a_pixel_depth_gdcm_cannot_read_is_named_with_the_tag_and_what_it_reads(self) -> None:
        """BitsAllocated (0028,0100) 2, 4, 10, 14, 24, 40, 48 or 64 (integer Pixel Data) had been GDCM's 'Unhandled
        PixelFormat: SamplesPerPixel :1; BitsAllocated :N ...' (24: 'An invalid logic behavior occurred0') with the fix
        'Check that the series is complete' or 'Use a NIfTI, NRRD ...': now the file, the tag, its value and the depths
        ITK's reader reads are named, alone and in a series (the first such file, and how many more). 8, 16 and 32
        bits read as before."""
        import pydicom

        for bits in (2, 4, 10, 14, 24, 40, 48, 64, 8, 32):
            with self.subTest(bits=bits), tempfile.TemporaryDirectory() as folder:
                write_series(folder)
                for name in sorted(os.listdir(folder)):
                    ds = pydicom.dcmread(os.path.join(folder, name))
                    ds.BitsAllocated = bits
                    ds.BitsStored = min(bits, 16)
                    ds.HighBit = ds.BitsStored - 1
                    size = -(-ds.Rows * ds.Columns * bits // 8)
                    ds.PixelData = bytes(k % 200 for k in range(size + size % 2))
                    ds.save_as(os.path.join(folder, name))
                first = os.path.join(folder, "IM0000.dcm")
                for path in (folder, first):
                    if bits in (8, 32):
                        self.assertEqual(io.read_image(path).GetSize()[:2], (10, 12))
                        continue
                    with self.assertRaises(InputError) as ctx:
                        io.read_image(path)
                    self.assertEqual(ctx.exception.problem,
                                     f"DICOM file '{first}' has BitsAllocated (0028,0100) {bits}, a pixel depth ITK's "
                                     "DICOM reader (GDCM) cannot read: it reads 1, 8, 12, 16 and 32 bits a sample"
                                     + ("; so do 5 more of the series' 6 files." if path == folder else "."))
                    self.assertIn("with 8, 16 or 32 bits allocated", ctx.exception.fix)
                    self.assertFalse([tag for tag, value in PHI.items() if value in str(ctx.exception)])

    def test_a_pixel_depth_gdcm_cannot_read_is_named_in_a_series_of_multiframe_files(self) -> None:
        """A series of multi-frame files (read file by file, :func:`io._read_multiframe_series`) with BitsAllocated
        (0028,0100) 24 names the first such file, the tag and the value, and how many more files state such a depth,
        as a series of classic slices does: it had named the first file alone. A series whose other file reads
        names the one that does not."""
        import pydicom
        from pydicom.uid import generate_uid

        for deep in ((0, 1), (1,)):
            with self.subTest(deep=deep), tempfile.TemporaryDirectory() as folder:
                uid, paths = generate_uid(), []
                for i in range(2):
                    paths.append(os.path.join(folder, f"part{i}.dcm"))
                    write_enhanced(paths[-1], [(0.0, 0.0, 2.0 * (3 * i + k)) for k in range(3)], rows=8, cols=8,
                                   series_uid=uid)
                    if i in deep:
                        ds = pydicom.dcmread(paths[-1])
                        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 24, 16, 15
                        size = ds.Rows * ds.Columns * int(ds.NumberOfFrames) * 3
                        ds.PixelData = bytes(k % 200 for k in range(size + size % 2))
                        ds.save_as(paths[-1])
                with self.assertRaises(InputError) as ctx:
                    io.read_image(folder)
                self.assertEqual(ctx.exception.problem,
                                 f"DICOM file '{paths[deep[0]]}' has BitsAllocated (0028,0100) 24, a pixel depth ITK's "
                                 "DICOM reader (GDCM) cannot read: it reads 1, 8, 12, 16 and 32 bits a sample"
                                 + ("; so do 1 more of the series' 2 files." if len(deep) == 2 else "."))
                self.assertIn("with 8, 16 or 32 bits allocated", ctx.exception.fix)
                self.assertFalse([tag for tag, value in PHI.items() if value in str(ctx.exception)])

    def test_float_pixel_data_is_named_not_called_truncated(self) -> None:
        """Float Pixel Data (7FE0,0008) and Double Float Pixel Data (7FE0,0009), which ITK's reader (GDCM) does not
        read: a file holding them had been called truncated ('holds no pixel data: it ends after 720 bytes', fix: copy
        it again) under an XA/CT class, or given ITK's 'Unable to determine ImageIO reader' (fix: check it is not
        truncated) under the Parametric Map class; a series of them was called truncated by its first file. The tag
        is named, with a fix that reads them (pydicom's pixel_array, checked here)."""
        from pydicom import dcmread
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, generate_uid

        def write(path: str, sop_class: str, double: bool, z: float = 0.0) -> np.ndarray:
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.MediaStorageSOPClassUID = sop_class
            ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = "1.2.3", "1.2.3.4", "MR"
            ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 4, 5, 1, "MONOCHROME2"
            ds.BitsAllocated = 64 if double else 32
            ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing = [0, 0, z], list(AXIAL), [1, 1]
            values = (np.arange(20).reshape(4, 5) * 1.5 - 7 + z).astype(np.float64 if double else np.float32)
            if double:
                ds.DoubleFloatPixelData = values.tobytes()
            else:
                ds.FloatPixelData = values.tobytes()
            ds.save_as(path, enforce_file_format=True)
            return values

        classes = {"parametric map": "1.2.840.10008.5.1.4.1.1.30", "XA": "1.2.840.10008.5.1.4.1.1.12.1",
                   "CT": "1.2.840.10008.5.1.4.1.1.2"}
        for (kind, sop_class), double in itertools.product(classes.items(), (False, True)):
            tag = "Double Float Pixel Data (7FE0,0009)" if double else "Float Pixel Data (7FE0,0008)"
            with self.subTest(kind=kind, double=double), tempfile.TemporaryDirectory() as folder:
                values = [write(os.path.join(folder, f"f{k}.dcm"), sop_class, double, z=float(k)) for k in range(3)]
                for path in (os.path.join(folder, "f0.dcm"), folder):
                    with self.assertRaises(InputError) as ctx:
                        io.read_image(path)
                    self.assertIn(f"'{os.path.join(folder, 'f0.dcm')}' holds its values as {tag}", ctx.exception.problem)
                    for word in ("truncated", "pixel data: it ends", "Unable to determine"):
                        self.assertNotIn(word, str(ctx.exception))
                    self.assertIn("pixel_array", ctx.exception.fix)
                np.testing.assert_array_equal(dcmread(os.path.join(folder, "f1.dcm")).pixel_array, values[1])
            with self.subTest(kind=kind, double=double, beside="a series"), tempfile.TemporaryDirectory() as folder:
                # one such file of another series beside a normal series: the series is read, the file named for
                # what it holds (it had been called a "truncated file" of another series, to be copied again)
                for k in range(3):
                    slice_ = sitk.GetImageFromArray(np.full((1, 4, 5), k, np.int16))
                    slice_.SetOrigin((0.0, 0.0, float(k)))
                    writer = sitk.ImageFileWriter()
                    writer.SetFileName(os.path.join(folder, f"n{k}.dcm"))
                    writer.KeepOriginalImageUIDOn()
                    for tag, value in (("0020|000e", "1.2.3.77"), ("0020|000d", "1.2.3"), ("0008|0060", "CT"),
                                       ("0020|0032", f"0\\0\\{k}"), ("0020|0037", "1\\0\\0\\0\\1\\0"),
                                       ("0020|0013", str(k + 1))):
                        slice_.SetMetaData(tag, value)
                    writer.Execute(slice_)
                write(os.path.join(folder, "f.dcm"), sop_class, double, z=9.0)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    image = io.read_image(folder)
                self.assertEqual(image.GetSize(), (5, 4, 3))
                said = " ".join(str(w.message) for w in caught)
                self.assertIn("holding Float or Double Float Pixel Data", said)
                self.assertIn(os.path.join(folder, "f.dcm"), said)
                self.assertNotIn("truncated", said)

    def test_a_float_file_without_series_uid_is_grouped_as_itk_groups_such_files(self) -> None:
        """A Float Pixel Data file without SeriesInstanceUID (0020,000E) beside a series had been taken as a file cut
        before it names its series, and the whole series was refused ('holds its values as Float Pixel Data'), where
        one of another UID is left out with a warning. A file whose header goes on past that tag has none: it is of
        the series of files without one, as GDCM groups them (list_dicom_series: UID ''). So it is left out with the
        warning beside a series that has a UID, and refused as one of its files (the float fix, and to move it out
        where it is not) beside a series without one; a series of such files alone is refused naming the tag."""
        from pydicom.dataset import Dataset, FileMetaDataset
        from pydicom.uid import ExplicitVRLittleEndian, generate_uid

        def write_float(path: str, z: float) -> None:
            ds = Dataset()
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
            ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", ds.file_meta.MediaStorageSOPInstanceUID
            ds.StudyInstanceUID, ds.Modality = "1.2.3", "MR"  # no SeriesInstanceUID
            ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = 4, 5, 1, "MONOCHROME2"
            ds.BitsAllocated = 32
            ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing = [0, 0, z], list(AXIAL), [1, 1]
            ds.FloatPixelData = np.arange(20, dtype=np.float32).tobytes()
            ds.save_as(path, enforce_file_format=True)

        for series_has_uid in (True, False):
            with self.subTest(series_has_uid=series_has_uid), tempfile.TemporaryDirectory() as folder:
                truth = write_series(folder, drop=() if series_has_uid else ("SeriesInstanceUID",))
                stray = os.path.join(folder, "zz_map.dcm")
                write_float(stray, 99.0)
                if series_has_uid:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        image = io.read_image(folder)
                    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), truth)
                    said = " ".join(str(w.message) for w in caught)
                    self.assertIn("holding Float or Double Float Pixel Data", said)
                    self.assertIn(stray, said)
                else:
                    with self.assertRaises(InputError) as ctx:
                        io.read_image(folder)
                    self.assertIn(f"'{stray}' holds its values as Float Pixel Data (7FE0,0008)", ctx.exception.problem)
                    self.assertIn("pixel_array", ctx.exception.fix)
                    self.assertIn("names no SeriesInstanceUID (0020,000E), nor do the series' files", ctx.exception.fix)
        with tempfile.TemporaryDirectory() as folder:  # a series of them alone: the tag named, not 'truncated'
            for k in range(3):
                write_float(os.path.join(folder, f"f{k}.dcm"), float(k))
            with self.assertRaises(InputError) as ctx:
                io.read_image(folder)
            self.assertIn("holds its values as Float Pixel Data (7FE0,0008)", ctx.exception.problem)
            self.assertNotIn("truncated", str(ctx.exception))

    def test_dicomdir_is_read_through(self) -> None:
        # a CD/PACS export: DICOMDIR at the top, the images in PT000000/ST000000/SE000000/; the folder was
        # "No DICOM series found" and the DICOMDIR file "Unable to determine ImageIO reader"
        from pydicom import dcmread
        from pydicom.fileset import FileSet

        with tempfile.TemporaryDirectory() as source, tempfile.TemporaryDirectory() as export:
            truth = write_series(source)
            fileset = FileSet()
            for name in sorted(os.listdir(source)):
                fileset.add(dcmread(os.path.join(source, name)))
            fileset.write(export)
            for path in (export, os.path.join(export, "DICOMDIR")):
                image = io.read_image(path)
                self.assertEqual(image.GetSize(), (10, 12, 6))
                np.testing.assert_array_equal(sitk.GetArrayFromImage(image), truth)
            write_series(os.path.join(export, "more"), description="SECOND")  # two series: pick one
            with self.assertRaisesRegex(InputError, "holds 2 DICOM series"):
                io.read_image(export)
            self.assertEqual(io.read_image(export, series="SECOND").GetSize(), (10, 12, 6))

    def test_a_study_folder_names_the_sub_folders_that_hold_series(self) -> None:
        """A folder whose series lie in sub-folders (a study exported one folder per series, without a DICOMDIR) names
        the sub-folders that hold DICOM files and says to give one; it had said only 'No DICOM series found in folder'
        with the fix 'Point to a folder of DICOM files', which it is. An empty folder is still 'No DICOM series'."""
        with tempfile.TemporaryDirectory() as study:
            write_series(os.path.join(study, "CT_BODY"))
            write_series(os.path.join(study, "deeper", "PET_AC"), modality="PT")
            os.makedirs(os.path.join(study, "empty"))
            with self.assertRaises(InputError) as ctx:
                io.read_image(study)
            problem = ctx.exception.problem
            self.assertIn(f"'{study}' holds no DICOM series itself, but its sub-folders do", problem)
            self.assertIn(f"'{os.path.join(study, 'CT_BODY')}'", problem)
            self.assertIn(f"'{os.path.join(study, 'deeper', 'PET_AC')}'", problem)
            self.assertNotIn("empty", problem)
            self.assertIn("Give the folder of one series", ctx.exception.fix)
            for value in PHI.values():
                self.assertNotIn(value, str(ctx.exception))
            with self.assertRaises(InputError) as ctx:
                io.read_image(os.path.join(study, "empty"))
            self.assertIn("No DICOM series found in folder", ctx.exception.problem)

    def test_a_study_folder_names_its_series_folders_in_sorted_order(self) -> None:
        """The sub-folders a study folder's refusal names (the first 10 of them) are in sorted order: those of its
        first level had been in the file system's order (os.walk's; on ext4 CT_03, CT_05, CT_09, ...), so which 10
        were named, and in which order, changed from machine to machine."""
        with tempfile.TemporaryDirectory() as study:
            names = [f"CT_{k:02d}" for k in range(12)]
            for name in names:
                write_series(os.path.join(study, name), positions=[(0.0, 0.0, 0.0)])
            with self.assertRaises(InputError) as ctx:
                io.read_image(study)
            shown = ", ".join(f"'{os.path.join(study, name)}'" for name in names[:10])
            self.assertIn(f"sub-folders do: {shown} and 2 more", ctx.exception.problem)



class SeriesOptionsForFiles(unittest.TestCase):
    """--series and --ROLE-series pick a series among a DICOM folder's: given for files they had been ignored
    without a word (``info a.nii.gz --series foo``, ``fuse a.png b.png --a-series foo``: rc 0)."""

    def setUp(self) -> None:
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        self.dir = self.tmp.name
        self.folder = os.path.join(self.dir, "ct")
        write_series(self.folder, rows=16, cols=16)
        rng = np.random.default_rng(0)
        self.png = os.path.join(self.dir, "a.png")
        sitk.WriteImage(sitk.GetImageFromArray(rng.integers(0, 255, (24, 24), dtype=np.uint8)), self.png)
        self.nii = os.path.join(self.dir, "a.nii.gz")
        sitk.WriteImage(io.read_image(self.folder), self.nii)

    def _cli(self, *argv: str) -> tuple[int, str, str]:
        import contextlib
        import io as text_io

        from MultimodalFusionLib import cli

        out, err = text_io.StringIO(), text_io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(list(argv))
        return code, out.getvalue(), err.getvalue()

    def test_a_series_option_for_files_is_refused(self) -> None:
        png, nii, out = self.png, self.nii, os.path.join(self.dir, "out")
        cases = [(["info", nii, "--series", "foo"], "--series foo"),
                 (["info", nii, png, "--series", "foo"], "--series foo"),
                 (["fuse", png, png, "-o", out + ".png", "--a-series", "foo"], "--a-series foo"),
                 (["fuse", png, png, "-o", out + ".png", "--series", "foo"], "--series foo"),
                 (["evaluate", "--fused", png, png, png, "--fused-series", "foo"], "--fused-series foo"),
                 (["register", png, png, "-o", out, "--moving-series", "foo"], "--moving-series foo"),
                 # the folder's own series named, the file's too: that one applies to nothing
                 (["register", self.folder, nii, "-o", out, "--fixed-series", "BODY", "--moving-series", "foo"],
                  "--moving-series foo"),
                 (["run", png, png, "--output-dir", out, "--no-register", "--series", "foo"], "--series foo"),
                 (["resample", png, "--reference", png, "-o", out + ".png", "--series", "foo"], "--series foo"),
                 (["resample", png, "--reference", png, "-o", out + ".png", "--reference-series", "foo"],
                  "--reference-series foo")]
        for argv, flag in cases:
            with self.subTest(argv=argv):
                code, stdout, stderr = self._cli(*argv)
                self.assertEqual(code, 2, stdout + stderr)
                self.assertIn(f"{flag} given, but", stderr)
                self.assertIn("applies to DICOM folders only", stderr)
                self.assertEqual(stdout, "")
                self.assertFalse(os.path.exists(out) or os.path.exists(out + ".png"))
        with self.assertRaisesRegex(InputError, r"A DICOM series \(foo\) was asked of '.*a.nii.gz', a file"):
            io.read_image(nii, series="foo")

    def test_a_series_for_every_input_applies_to_the_folders_among_them(self) -> None:
        code, stdout, stderr = self._cli("info", self.folder, self.nii, "--series", "BODY")
        self.assertEqual(code, 0, stderr)
        self.assertIn(self.folder, stdout)
        self.assertIn(self.nii, stdout)
        out = os.path.join(self.dir, "resampled.nii.gz")
        code, _, stderr = self._cli("resample", self.folder, "--reference", self.nii, "-o", out, "--series", "BODY")
        self.assertEqual(code, 0, stderr)
        code, _, stderr = self._cli("resample", self.nii, "--reference", self.folder, "-o", out, "--series", "BODY")
        self.assertEqual(code, 0, stderr)


def write_pet_series(folder: str, values: np.ndarray, units: str | None, *, modality: str = "PT") -> None:
    """A PET (or NM) series of ``values`` (slices, rows, cols; whole numbers 0..65535), one file a slice 2 mm apart,
    stating ``units`` in Units (0054,1001) (None: no Units tag), with the PHI tags."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    os.makedirs(folder, exist_ok=True)
    series_uid, study_uid = generate_uid(), generate_uid()
    for k, plane in enumerate(values):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.128"  # PET Image Storage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = os.path.join(folder, f"PT{k:04d}.dcm")
        ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        for name, value in PHI.items():
            setattr(ds, name, value)
        ds.Modality, ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = modality, "PET AC", 4, k + 1
        ds.SeriesInstanceUID, ds.StudyInstanceUID = series_uid, study_uid
        if units is not None:
            ds.Units = units
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0.0, 0.0, 2.0 * k], list(AXIAL)
        ds.PixelSpacing, ds.SliceThickness = [2.0, 2.0], 2.0
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.PixelData = plane.astype(np.uint16).tobytes()
        ds.save_as(path, enforce_file_format=True)


def _pet_body(low: float, high: float, slices: int = 4) -> np.ndarray:
    """0 in the air around a disc of whole values low..high (a PET: its background exactly 0)."""
    y, x = np.mgrid[:16, :16]
    disc = (y - 7.5) ** 2 + (x - 7.5) ** 2 < 36
    body = np.random.default_rng(3).uniform(low, high, (slices, 16, 16)).round()
    return np.where(disc, body, 0)


class DicomPetUnits(unittest.TestCase):
    """A DICOM PET's Units (0054,1001) (BQML, GML: SUV body weight, CNTS...) is the one tag read_image keeps: every
    tag had been erased (the patient's are), so nothing downstream knew a PET stored in Bq/mL from one in SUV."""

    def setUp(self) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self._tmp.cleanup)
        self.dir = self._tmp.name

    def test_the_units_are_kept_and_no_patient_tag_is(self) -> None:
        bqml, gml, none = (os.path.join(self.dir, name) for name in ("bqml", "gml", "none"))
        write_pet_series(bqml, _pet_body(2000, 20000), "BQML")
        write_pet_series(gml, _pet_body(1, 8), "GML")
        write_pet_series(none, _pet_body(2000, 20000), None)
        for folder, units in ((bqml, "BQML"), (gml, "GML"), (none, "")):
            with self.subTest(units=units):
                series = io.read_image(folder)  # a series
                one = io.read_image(os.path.join(folder, "PT0000.dcm"))  # one file (a 2D slice)
                for image in (series, one):
                    self.assertEqual(io.dicom_units(image), units)
                    self.assertEqual(image.GetMetaDataKeys(), (io.UNITS_KEY,) if units else ())
                path = io.write_image(series, os.path.join(self.dir, f"{units or 'none'}.nrrd"))
                with open(path, "rb") as fh:
                    payload = fh.read()
                for name, value in PHI.items():
                    self.assertNotIn(value.encode(), payload, name)

    def test_the_units_are_kept_when_read_as_float32(self) -> None:
        """read_image(float32=True), as `register` and `evaluate-registration` read their inputs: ITK's Cast keeps
        no metadata, so a DICOM PET's Units had been dropped there, and register's moving_resampled had none."""
        import contextlib
        import io as text_io

        from MultimodalFusionLib import cli

        folder = os.path.join(self.dir, "bqml")
        write_pet_series(folder, _pet_body(2000, 20000), "BQML")
        image = io.read_image(folder, float32=True)
        self.assertEqual(image.GetPixelID(), sitk.sitkFloat32)
        self.assertEqual(io.dicom_units(image), "BQML")
        mr_path = os.path.join(self.dir, "mr.nrrd")
        # the fixed image: the PET's own grid and a copy of its values (no Units), so that the registration, which
        # this test does not judge, starts aligned and cannot end outside the moving image (an unrelated 4x16x16
        # image had stopped it once under load, "All samples map outside moving image buffer")
        fixed = sitk.GetImageFromArray(sitk.GetArrayFromImage(image) * 0.01)
        fixed.CopyInformation(image)
        io.write_image(fixed, mr_path)
        out = os.path.join(self.dir, "reg")
        with warnings.catch_warnings(), contextlib.redirect_stdout(text_io.StringIO()), \
                contextlib.redirect_stderr(text_io.StringIO()) as err:
            warnings.simplefilter("always")
            self.assertEqual(cli.main(["register", mr_path, folder, "-o", out, "--stages", "rigid", "--seed", "0",
                                       "--threads", "1"]), 0)
        self.assertNotIn("Units", err.getvalue())  # the command prints warnings on stderr
        self.assertEqual(io.dicom_units(io.read_image(os.path.join(out, "moving_resampled.nii.gz"))), "BQML")

    def test_a_window_refused_on_a_pet_in_bq_ml_says_so(self) -> None:
        """--window 0 8 (SUV) on a PET whose Units say BQML: the refusal names Bq/mL from the tag, where it had said
        only that 'a PET stored in Bq/mL is not in SUV' (a guess, the same for any image)."""
        from MultimodalFusionLib import fusion

        folder = os.path.join(self.dir, "bqml")
        write_pet_series(folder, _pet_body(2000, 20000), "BQML")
        pet = io.read_image(folder)
        anatomy = sitk.Cast(pet, sitk.sitkFloat32) * 0.01 + 5.0
        with self.assertRaises(InputError) as caught:
            fusion.fuse(anatomy, pet, "average", window_b=(0, 8))
        self.assertIn("its values span 0..", str(caught.exception))
        self.assertIn("Bq/mL (DICOM Units BQML)), so the fused image would show it as a silhouette",
                      str(caught.exception))
        self.assertIn("this PET is stored in Bq/mL (DICOM Units BQML), not in SUV", caught.exception.fix)
        for window in ((0, 8), (-20, -10)):  # run's check before registering: a silhouette, none of its values
            with self.subTest(window=window), self.assertRaises(InputError) as caught:
                fusion.check_windows(anatomy, pet, window_b=window)
            self.assertIn("Bq/mL (DICOM Units BQML)", str(caught.exception))
        # a counts image: named as such, no Bq/mL guess
        counts = os.path.join(self.dir, "counts")
        write_pet_series(counts, _pet_body(20, 400), "CNTS", modality="NM")
        with self.assertRaises(InputError) as caught:
            fusion.fuse(anatomy, io.read_image(counts), "average", window_b=(0, 8))
        self.assertIn("counts (DICOM Units CNTS)", str(caught.exception))
        self.assertNotIn("Bq/mL", str(caught.exception))
        # an image without units: the guess, as before
        plain = sitk.Image(pet)  # as a NIfTI of it reads
        plain.EraseMetaData(io.UNITS_KEY)
        with self.assertRaises(InputError) as caught:
            fusion.fuse(anatomy, plain, "average", window_b=(0, 8))
        self.assertIn("a PET stored in Bq/mL is not in SUV", caught.exception.fix)
        self.assertNotIn("DICOM Units", str(caught.exception))


    def test_the_units_travel_with_the_values_and_not_where_the_quantity_changes(self) -> None:
        """Resampled onto an MR's grid (mmfusion resample, run, the web's Register), cropped or reoriented, a PET is
        still in Bq/mL: its Units had been dropped by every step (ITK's filters keep no metadata), so a window in SUV
        on the resampled PET was refused without naming its units and the web's SUV guess fell back to its values.
        The fused image, a mask and a normalised image are other quantities: no Units."""
        import contextlib
        import io as text_io

        from MultimodalFusionLib import cli, fusion, pipeline, preprocess

        folder = os.path.join(self.dir, "bqml")
        write_pet_series(folder, _pet_body(2000, 20000), "BQML")
        pet = io.read_image(folder)
        # an MR on another grid: finer, shifted, turned 90 degrees about the vertical axis
        mr_values = sitk.GetImageFromArray(np.indices((6, 20, 20)).sum(axis=0).astype(np.float32))
        mr_values.SetSpacing((1.2, 1.2, 1.0))
        mr_values.SetOrigin((28.0, 2.0, 0.5))  # inside the PET's 0..30 x 0..30 x 0..6 mm
        mr_values.SetDirection((0, -1, 0, 1, 0, 0, 0, 0, 1))
        one_slice = io._with_units(pet[:, :, 1:2], "BQML")  # a one-slice PET (slicing keeps no metadata)
        same_quantity = {
            "resample linear": preprocess.resample(pet, mr_values),
            "resample nearest": preprocess.resample(pet, mr_values, interpolation="nearest"),
            "resample lanczos into int32": preprocess.resample(pet, mr_values, interpolation="lanczos",
                                                               pixel_type=sitk.sitkInt32),
            "crop_to_overlap": preprocess.crop_to_overlap(pet, mr_values)[0],
            "reorient_to_lps": preprocess.reorient_to_lps(preprocess.resample(pet, mr_values)),
            "8-bit rounding (run's of an 8-bit PET)": pipeline.round_to_8bit(io._with_units(
                preprocess.resample(pet, mr_values) * 0.01, "BQML")),
            "one slice as 2D": io.one_slice_as_2d(one_slice),
            "2D put back as one slice": io.as_one_slice_of(io.one_slice_as_2d(one_slice), one_slice),
        }
        for name, image in same_quantity.items():
            with self.subTest(name):
                self.assertEqual(io.dicom_units(image), "BQML")
        self.assertEqual(io.dicom_units(pet), "BQML")  # the input as it was
        # a window in SUV on the resampled PET: refused naming its units, as on the PET read
        on_mr = same_quantity["resample linear"]
        with self.assertRaises(InputError) as caught:
            fusion.fuse(mr_values, on_mr, "average", window_b=(0, 8))
        self.assertIn("Bq/mL (DICOM Units BQML)", str(caught.exception))
        # mmfusion resample: the file written keeps them (NRRD and MetaImage headers), read back as the DICOM's
        mr_path = os.path.join(self.dir, "mr.nrrd")
        io.write_image(mr_values, mr_path)
        for ext in (".nrrd", ".mha"):
            out = os.path.join(self.dir, "pet-on-mr" + ext)
            with self.subTest(ext), contextlib.redirect_stdout(text_io.StringIO()):
                self.assertEqual(cli.main(["resample", folder, "--reference", mr_path, "-o", out]), 0)
                self.assertEqual(io.dicom_units(io.read_image(out)), "BQML")
        # other quantities: the fusion, a mask, normalised values
        result = fusion.fuse(mr_values, on_mr, "overlay")
        other = {"fused": result.image, "fused grey": result.grey, "mask": preprocess.foreground_mask(on_mr),
                 "z-scores": preprocess.normalize_intensity(on_mr)}
        for name, image in other.items():
            with self.subTest(name):
                self.assertEqual(io.dicom_units(image), "")

    def test_a_file_that_cannot_keep_the_units_says_so(self) -> None:
        """A PET in Bq/mL written where its Units cannot go (a .vtk file; NIfTI had been one, until its BIDS sidecar
        kept them) had lost them without a word: read back, nothing says the values are in Bq/mL. io.write_image
        now warns, naming the formats that keep them; an image without Units, and .nrrd, .mha or .nii.gz (run's
        moving_resampled), get no such note."""
        import contextlib
        import io as text_io

        from MultimodalFusionLib import cli

        folder = os.path.join(self.dir, "bqml")
        write_pet_series(folder, _pet_body(2000, 20000), "BQML")
        mr_path = os.path.join(self.dir, "mr.nrrd")
        io.write_image(sitk.GetImageFromArray(np.indices((4, 16, 16)).sum(axis=0).astype(np.float32)), mr_path)
        plain = os.path.join(self.dir, "plain.nrrd")  # the PET's values with no Units
        io.write_image(io.read_image(folder)[:, :, :] * 1.0, plain)
        lost = r"\.vtk file keeps no DICOM Units \(0054,1001\): the values are written in BQML.*\.nrrd or \.mha"
        commands = {  # name: (argv, whether the note is given)
            "resample to .vtk": (["resample", folder, "--reference", mr_path, "-o",
                                  os.path.join(self.dir, "r.vtk")], True),
            "resample to .nii.gz": (["resample", folder, "--reference", mr_path, "-o",
                                     os.path.join(self.dir, "r.nii.gz")], False),
            "run's moving_resampled.nii.gz": (["run", mr_path, folder, "--output-dir", os.path.join(self.dir, "run"),
                                               "--no-register", "--methods", "average"], False),
            "resample to .nrrd": (["resample", folder, "--reference", mr_path, "-o",
                                   os.path.join(self.dir, "r.nrrd")], False),
            "resample to .mha": (["resample", folder, "--reference", mr_path, "-o",
                                  os.path.join(self.dir, "r.mha")], False),
            "resample of no Units to .nii.gz": (["resample", plain, "--reference", mr_path, "-o",
                                                 os.path.join(self.dir, "p.nii.gz")], False),
        }
        for name, (argv, noted) in commands.items():
            with self.subTest(name), warnings.catch_warnings(), contextlib.redirect_stdout(text_io.StringIO()), \
                    contextlib.redirect_stderr(text_io.StringIO()) as err:
                warnings.simplefilter("always")
                self.assertEqual(cli.main(argv), 0)
                notes = [line for line in err.getvalue().splitlines() if "DICOM Units" in line]  # warning: lines
                self.assertEqual(len(notes), int(noted), err.getvalue())
                if noted:
                    self.assertRegex(notes[0], "^warning: .*" + lost)


class BidsSidecarUnits(unittest.TestCase):
    """A NIfTI keeps no units; PET-BIDS keeps them in the JSON sidecar beside it (``sub-01_pet.json``, "Units":
    "Bq/mL"), as dcm2niix (the DICOM code, "BQML") and PET2BIDS write it. read_image takes the Units from it and
    write_image writes them there: a PET in Bq/mL written as .nii.gz (`mmfusion resample`, run's and register's
    moving_resampled) had been read back without units (a window in SUV then checked by its values alone)."""

    def setUp(self) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self._tmp.cleanup)
        self.dir = self._tmp.name

    def _pet(self, units: str | None, low: float = 2000, high: float = 20000) -> sitk.Image:
        folder = os.path.join(self.dir, f"dicom-{units}")
        write_pet_series(folder, _pet_body(low, high), units)
        return io.read_image(folder)

    def _sidecar(self, name: str) -> dict:
        with open(os.path.join(self.dir, name), encoding="utf-8") as fh:
            return json.load(fh)

    def _write(self, name: str, content: object) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(content if isinstance(content, str) else json.dumps(content))
        return path

    def test_the_units_go_through_a_nifti_and_back(self) -> None:
        for units, text, (low, high) in (("BQML", "Bq/mL", (2000, 20000)), ("GML", "g/mL", (1, 8)),
                                         ("CNTS", "CNTS", (20, 400))):
            pet = self._pet(units, low, high)
            for ext in (".nii.gz", ".nii"):
                with self.subTest(units=units, ext=ext), warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    path = io.write_image(pet, os.path.join(self.dir, f"pet-{units}{ext}"))
                    self.assertEqual(self._sidecar(f"pet-{units}.json"), {"Units": text})  # the Units alone
                    self.assertEqual(io.dicom_units(io.read_image(path)), units)
                    self.assertEqual(io.dicom_units(io.read_image(path, float32=True)), units)
                    self.assertEqual([str(w.message) for w in caught if "Units" in str(w.message)], [])
        # a SUV PET read back is offered the SUV windows, as the DICOM was
        from MultimodalFusionLib.web import viewer

        suv = io.read_image(os.path.join(self.dir, "pet-GML.nii.gz"))
        self.assertTrue(viewer.looks_like_suv(suv))
        # an image without units writes no sidecar
        io.write_image(self._pet(None), os.path.join(self.dir, "plain.nii.gz"))
        self.assertFalse(os.path.exists(os.path.join(self.dir, "plain.json")))

    def test_sidecars_written_by_others_are_read_by_their_units_only(self) -> None:
        image = io.write_image(sitk.Cast(self._pet(None), sitk.sitkFloat32), os.path.join(self.dir, "x.nii.gz"))
        phi = {"PatientName": "Doe^Jane", "PatientWeight": 71.5, "Modality": "PT"}
        stated = {  # what the sidecar says -> the Units read, whether a warning is given
            "dcm2niix's code": ({**phi, "Units": "BQML"}, "BQML", False),
            "PET-BIDS text": ({**phi, "Units": "Bq/mL"}, "BQML", False),
            "another case": ({**phi, "Units": " bq/ml "}, "BQML", False),
            "ECAT's Bq/cc": ({**phi, "Units": "Bq/cc"}, "BQML", False),
            "SUV": ({**phi, "Units": "g/mL"}, "GML", False),
            "no Units (an MR's)": (phi, "", False),
            "kBq/mL (1000 times smaller values)": ({**phi, "Units": "kBq/mL"}, "", True),
            "a number": ({**phi, "Units": 5}, "", True),
            "malformed": ('{"PatientName": "Doe^Jane", "Units": "Bq/mL"', "", True),
            "a list": ('["Doe^Jane", "Bq/mL"]', "", True),
            "not UTF-8": (b'{"PatientName": "Doe\xe9", "Units": "Bq/mL"}'.decode("latin-1"), "", True),
        }
        for name, (content, units, warned) in stated.items():
            with self.subTest(name), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if name == "not UTF-8":
                    with open(os.path.join(self.dir, "x.json"), "wb") as fh:
                        fh.write(content.encode("latin-1"))
                else:
                    self._write("x.json", content)
                self.assertEqual(io.dicom_units(io.read_image(image)), units)
                messages = [str(w.message) for w in caught]
                self.assertEqual(len(messages), int(warned), messages)
                for message in messages:
                    self.assertIn(os.path.join(self.dir, "x.json"), message)  # names the file
                    self.assertIn("read without units", message)
                    self.assertNotIn("Doe", message)  # never another key's value
                    self.assertNotIn("71.5", message)
                    self.assertEqual(caught[0].filename, __file__)  # pointed at the caller

    def test_a_fieldmaps_bids_units_are_read_silently_as_no_pet_units(self) -> None:
        """BIDS gives an MR fieldmap "Units" too ("Hz", "rad/s" or "T"; dcm2niix writes "Hz" beside a B0 map): read,
        such an image had warned "states Units 'Hz', which this package does not know" on every read. It is read
        without DICOM Units and without a word; a PET-looking unit the package does not know still warns."""
        z, y, x = np.indices((4, 12, 10))
        fieldmap = sitk.GetImageFromArray((40.0 * np.sin(x / 3.0) - 2.5 * y + z).astype(np.float32))  # Hz, +-
        path = io.write_image(fieldmap, os.path.join(self.dir, "sub-01_fieldmap.nii.gz"))
        # laid out as dcm2niix writes a direct field map's sidecar (tabs; "Units" among the scaling keys)
        dcm2niix = ('{\n\t"Modality": "MR",\n\t"MagneticFieldStrength": 3,\n\t"Manufacturer": "Philips",\n'
                    '\t"ImageType": ["ORIGINAL", "PRIMARY", "T1", "MIXED", "REAL", "FIELDMAPHZ"],\n'
                    '\t"SeriesNumber": 801,\n\t"PhilipsRescaleSlope": 0.2442,\n\t"PhilipsRescaleIntercept": -500,\n'
                    '\t"Units": "%s",\n\t"EchoNumber": 2,\n\t"RepetitionTime": 0.0038045,\n'
                    '\t"ConversionSoftware": "dcm2niix",\n\t"ConversionSoftwareVersion": "v1.0.20210410"\n}\n')
        for units, warned in (("Hz", False), ("rad/s", False), ("T", False), (" hz ", False),
                              ("kBq/mL", True), ("Tesla", True)):
            with self.subTest(units), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                self._write("sub-01_fieldmap.json", dcm2niix % units)
                self.assertEqual(json.loads(dcm2niix % units)["Units"], units)  # a valid sidecar
                image = io.read_image(path)
                self.assertEqual(io.dicom_units(image), "")
                self.assertEqual(io.dicom_units(io.read_image(path, float32=True)), "")
                np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image),
                                              sitk.GetArrayViewFromImage(fieldmap))
                messages = [str(w.message) for w in caught]
                self.assertEqual(len(messages), 2 * int(warned), messages)  # once per read where it warns
                for message in messages:
                    self.assertIn("which this package does not know", message)

    def test_an_existing_sidecar_is_updated_not_clobbered(self) -> None:
        pet = self._pet("BQML")
        out = os.path.join(self.dir, "sub-01_pet.nii.gz")
        other = {"Manufacturer": "Siemens", "TracerName": "FDG", "Units": "kBq/mL", "FrameDuration": [300]}
        self._write("sub-01_pet.json", other)
        io.write_image(pet, out)
        self.assertEqual(self._sidecar("sub-01_pet.json"), {**other, "Units": "Bq/mL"})  # the others kept, in order
        self.assertEqual(list(self._sidecar("sub-01_pet.json")), list(other))
        # one that says so already (dcm2niix's code) is left byte for byte
        path = self._write("sub-01_pet.json", '{"Units":"BQML","TracerName":"FDG"}')
        io.write_image(pet, out)
        with open(path, encoding="utf-8") as fh:
            self.assertEqual(fh.read(), '{"Units":"BQML","TracerName":"FDG"}')
        # a malformed one is left as it is, with a warning: not overwritten (its keys may be the user's only copy)
        self._write("sub-01_pet.json", '{"TracerName": "FDG",')
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            io.write_image(pet, out)
        with open(path, encoding="utf-8") as fh:
            self.assertEqual(fh.read(), '{"TracerName": "FDG",')
        self.assertEqual(len(caught), 1, [str(w.message) for w in caught])
        self.assertIn("is left as it is, without the Units BQML", str(caught[0].message))
        self.assertEqual(caught[0].filename, __file__)

    def test_an_image_without_units_leaves_no_stale_units(self) -> None:
        """Written over a NIfTI whose sidecar states Units, an image without units (a fused image, a CT) would be
        read back in the old file's units: they are removed from the sidecar, with a warning, its other keys kept;
        a sidecar that held the Units alone is removed."""
        pet, plain = self._pet("BQML"), sitk.Cast(self._pet(None), sitk.sitkFloat32)
        out = os.path.join(self.dir, "out.nii.gz")
        for other in ({"TracerName": "FDG"}, {}):
            with self.subTest(other=other), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if os.path.exists(os.path.join(self.dir, "out.json")):
                    os.remove(os.path.join(self.dir, "out.json"))
                io.write_image(pet, out)
                if other:
                    self._write("out.json", {**other, **self._sidecar("out.json")})
                io.write_image(plain, out)
                self.assertEqual(io.dicom_units(io.read_image(out)), "")
                if other:
                    self.assertEqual(self._sidecar("out.json"), other)
                else:
                    self.assertFalse(os.path.exists(os.path.join(self.dir, "out.json")))
                messages = [str(w.message) for w in caught]
                self.assertEqual(len(messages), 1, messages)
                self.assertIn("stated Units 'Bq/mL': they are removed from it", messages[0])
        # a sidecar without Units is left alone, without a word
        self._write("out.json", {"TracerName": "FDG"})
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            io.write_image(plain, out)
        self.assertEqual((self._sidecar("out.json"), caught), ({"TracerName": "FDG"}, []))

    def test_a_sidecar_shared_by_x_nii_and_x_nii_gz_names_both_when_its_units_change(self) -> None:
        """x.nii.gz and x.nii in one folder share x.json (BIDS: one sidecar per name without extension; x.nii.gz
        written beside x.nii is refused already, ITK reading the .nii's voxels for it). A write that changes its Units
        changes what the other file reads as: a unitless x.nii written beside a PET x.nii.gz had removed x.nii.gz's
        Units with a warning naming x.nii alone ("they were the old file's"), and a PET x.nii beside an x.nii.gz in
        other units, or in none, had changed them without a word. The newest image's units go to the name, as
        before; the warning names both files and the fix."""
        bqml, gml, plain = self._pet("BQML"), self._pet("GML", 1, 8), sitk.Cast(self._pet(None), sitk.sitkFloat32)
        cases = {  # name: (first image, second image, units x.nii.gz reads as after, the sidecar after)
            "a unitless x.nii beside a PET x.nii.gz": (bqml, plain, "", None),
            "a PET x.nii beside a unitless x.nii.gz": (plain, bqml, "BQML", {"Units": "Bq/mL"}),
            "a PET in Bq/mL beside a PET in SUV": (gml, bqml, "BQML", {"Units": "Bq/mL"}),
            "a unitless x.nii beside a PET x.nii.gz whose sidecar has other keys": (bqml, plain, "", {"Tracer": "FDG"}),
        }
        for name, (first, second, after, sidecar) in cases.items():
            with self.subTest(name), tempfile.TemporaryDirectory() as folder:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")  # the first write alone: no word
                    old = io.write_image(first, os.path.join(folder, "x.nii.gz"))
                if "other keys" in name:
                    with open(os.path.join(folder, "x.json"), "w", encoding="utf-8") as fh:
                        json.dump({"Units": "Bq/mL", "Tracer": "FDG"}, fh)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    new = io.write_image(second, os.path.join(folder, "x.nii"))
                messages = [str(w.message) for w in caught]
                self.assertEqual(len(messages), 1, messages)
                self.assertIn(f"'{new}' is written", messages[0])
                self.assertIn(f"also that of '{old}'", messages[0])  # both files named
                self.assertIn("give the two images different names", messages[0])  # and the fix
                self.assertEqual(caught[0].filename, __file__)
                self.assertEqual(io.dicom_units(io.read_image(old)), after)  # what the warning says
                self.assertEqual(io.dicom_units(io.read_image(new)), io.dicom_units(second))
                path = os.path.join(folder, "x.json")
                if sidecar is None:
                    self.assertFalse(os.path.exists(path))
                else:
                    with open(path, encoding="utf-8") as fh:
                        self.assertEqual(json.load(fh), sidecar)
        # units the sidecar states already (the same PET as both): nothing changes, nothing said
        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
            warnings.simplefilter("error")
            io.write_image(bqml, os.path.join(folder, "x.nii.gz"))
            io.write_image(bqml, os.path.join(folder, "x.nii"))

    def test_the_units_notes_come_once_the_files_are_in_place(self) -> None:
        """The Units warnings of write_image were issued inside its atomic write: with warnings turned into errors
        (python -W error, warnings.simplefilter("error")) the write stopped there, the image not renamed into
        place and the sidecar not changed, though the message says the file is written. They now come after."""
        pet, plain = self._pet("BQML"), sitk.Cast(self._pet(None), sitk.sitkFloat32)
        cases = {  # name: (image, output, sidecar content before (None: none), sidecar expected after, message)
            ".vtk keeps no Units": (pet, "p.vtk", None, None, "keeps no DICOM Units"),
            "an image without units over a sidecar stating them": (
                plain, "n.nii.gz", {"Units": "Bq/mL", "TracerName": "FDG"}, {"TracerName": "FDG"},
                "they are removed from it"),
            "a sidecar stating only Units, removed": (plain, "e.nii.gz", {"Units": "Bq/mL"}, None,
                                                      "the sidecar, left empty, is removed"),
            "a malformed sidecar": (pet, "m.nii.gz", '{"TracerName": "FDG",', '{"TracerName": "FDG",',
                                    "is left as it is, without the Units BQML"),
        }
        for name, (image, output, before, after, message) in cases.items():
            with self.subTest(name):
                out = os.path.join(self.dir, output)
                sidecar = io.bids_sidecar_path(out)
                if before is not None:
                    self._write(os.path.basename(sidecar), before)
                with warnings.catch_warnings():
                    warnings.simplefilter("error")
                    with self.assertRaisesRegex(UserWarning, message):
                        io.write_image(image, out)
                self.assertTrue(os.path.isfile(out))  # the image is in place
                if sidecar is not None:
                    if after is None:
                        self.assertFalse(os.path.exists(sidecar))
                    elif isinstance(after, str):
                        with open(sidecar, encoding="utf-8") as fh:
                            self.assertEqual(fh.read(), after)
                    else:
                        self.assertEqual(self._sidecar(os.path.basename(sidecar)), after)
        self.assertEqual([n for n in os.listdir(self.dir) if n.startswith(".")], [])  # no temporary file left

    def test_an_image_that_fails_to_be_placed_leaves_its_sidecar_as_it_was(self) -> None:
        """The sidecar had been put in place before the image was renamed into place: an image that failed then
        (its rename refused) left the old image with the new image's Units in its sidecar (or the old file's
        Units removed). The image goes first now, and the sidecar only once it is in place. (The rename's failure
        is injected: no real disk refuses it here.)"""
        from unittest import mock

        pet, plain = self._pet("BQML"), sitk.Cast(self._pet(None), sitk.sitkFloat32)
        real_replace = os.replace
        out = os.path.join(self.dir, "o.nii.gz")
        for name, (old, new, before) in {
                "a PET over an image without units": (plain, pet, {"TracerName": "FDG"}),
                "an image without units over a PET": (pet, plain, {"Units": "Bq/mL", "TracerName": "FDG"}),
                "an image without units over a PET, sidecar of Units alone": (pet, plain, {"Units": "Bq/mL"})}.items():
            with self.subTest(name), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                io.write_image(old, out)
                self._write("o.json", before)
                with open(out, "rb") as fh:
                    image_before = fh.read()

                def replace(src: str, dst: str, *args: object, **kwargs: object) -> None:
                    if os.fspath(dst) == out:
                        raise OSError(28, "No space left on device")
                    real_replace(src, dst, *args, **kwargs)

                with mock.patch("os.replace", replace), self.assertRaises(InputError):
                    io.write_image(new, out)
                with open(out, "rb") as fh:
                    self.assertEqual(fh.read(), image_before)  # the old image
                self.assertEqual(self._sidecar("o.json"), before)  # with its own sidecar
                self.assertEqual([n for n in os.listdir(self.dir) if n.startswith(".")], [])

    def test_an_image_that_fails_to_be_placed_in_a_new_folder_leaves_no_folder(self) -> None:
        """A write refused in folders it made leaves none of them behind (output_folder); the staged sidecar's
        temporary file, still in the folder when the image's rename failed, had kept them: a PET written to
        new/deeper/o.nii.gz left both folders, empty. (The rename's failure is injected.)"""
        from unittest import mock

        real_replace = os.replace
        for new, image in (("new", self._pet("BQML")), ("new2", sitk.Cast(self._pet(None), sitk.sitkFloat32))):
            out = os.path.join(self.dir, new, "deeper", "o.nii.gz")  # a sidecar staged; none

            def replace(src: str, dst: str, *args: object, out: str = out, **kwargs: object) -> None:
                if os.fspath(dst) == out:
                    raise OSError(28, "No space left on device")
                real_replace(src, dst, *args, **kwargs)

            with self.subTest(units=io.dicom_units(image)), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with mock.patch("os.replace", replace), self.assertRaises(InputError):
                    io.write_image(image, out)
                self.assertFalse(os.path.exists(os.path.join(self.dir, new)))

    def test_an_analyze_nifti_pair_says_it_keeps_no_units(self) -> None:
        """A NIfTI pair (.hdr + .img) has no BIDS sidecar (BIDS names .nii and .nii.gz only): a PET written so
        gets the note that its Units are not kept, and no sidecar."""
        pet = self._pet("BQML")
        for output in ("pair.hdr", "pair2.img", "pair3.hdr.gz", "pair4.img.gz"):
            with self.subTest(output), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = io.write_image(pet, os.path.join(self.dir, output))
                notes = [str(w.message) for w in caught if "Units" in str(w.message)]
                self.assertEqual(len(notes), 1, notes)
                self.assertIn("file keeps no DICOM Units (0054,1001): the values are written in BQML", notes[0])
                self.assertEqual(io.dicom_units(io.read_image(out)), "")
        self.assertEqual([n for n in os.listdir(self.dir) if n.endswith(".json")], [])

    def test_run_and_resample_write_the_sidecar(self) -> None:
        import contextlib
        import io as text_io

        from MultimodalFusionLib import cli

        folder = os.path.join(self.dir, "bqml")
        write_pet_series(folder, _pet_body(2000, 20000), "BQML")
        mr_path = os.path.join(self.dir, "mr.nrrd")
        mr = sitk.GetImageFromArray(np.indices((4, 16, 16)).sum(axis=0).astype(np.float32))
        io.write_image(mr, mr_path)
        run = os.path.join(self.dir, "run")
        quiet = contextlib.redirect_stdout(text_io.StringIO())
        with quiet, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.assertEqual(cli.main(["run", mr_path, folder, "--output-dir", run, "--no-register",
                                       "--methods", "average"]), 0)
            self.assertEqual(self._sidecar("run/moving_resampled.json"), {"Units": "Bq/mL"})
            self.assertEqual(io.dicom_units(io.read_image(os.path.join(run, "moving_resampled.nii.gz"))), "BQML")
            # run again with a moving image without units: no stale sidecar is left beside its moving_resampled
            self.assertEqual(cli.main(["run", folder, mr_path, "--output-dir", run, "--no-register",
                                       "--methods", "average"]), 0)
            self.assertFalse(os.path.exists(os.path.join(run, "moving_resampled.json")))
            self.assertEqual(io.dicom_units(io.read_image(os.path.join(run, "moving_resampled.nii.gz"))), "")
            out = os.path.join(self.dir, "pet_on_mr.nii.gz")
            self.assertEqual(cli.main(["resample", folder, "--reference", mr_path, "-o", out]), 0)
            self.assertEqual(io.dicom_units(io.read_image(out)), "BQML")
            # an output that would write into an input's sidecar: refused before the work
            given = io.write_image(io.read_image(folder), os.path.join(self.dir, "pet.nii.gz"))
            before = self._sidecar("pet.json")
            said = text_io.StringIO()
            with contextlib.redirect_stderr(said):
                code = cli.main(["resample", mr_path, "--reference", given, "-o", os.path.join(self.dir, "pet.nii")])
            self.assertNotEqual(code, 0)
            self.assertIn("would share its JSON sidecar", said.getvalue())
            self.assertFalse(os.path.exists(os.path.join(self.dir, "pet.nii")))
            self.assertEqual(self._sidecar("pet.json"), before)


class NoPatientDataOut(unittest.TestCase):
    """No identifying value of the DICOM files reaches an image the package returns or writes."""

    def _assert_clean(self, payload: bytes, where: str) -> None:
        for name, value in PHI.items():
            for shown in {value, value.replace("^", " ")}:  # a person's name as DICOM stores it, or as shown
                self.assertNotIn(shown.encode(), payload, f"{name} in {where}")

    def test_read_volume_carries_no_patient_tags(self) -> None:
        # ITK kept every tag of a DICOM file read as a volume (an enhanced CT, a tilted slice) in the image's
        # metadata, and NRRD/MetaImage writers put them in the header: PatientName, ID, birth date...
        with tempfile.TemporaryDirectory() as folder:
            write_enhanced(os.path.join(folder, "enhanced.dcm"), [(0.0, 0.0, 2.0 * k) for k in range(4)])
            image = io.read_image(os.path.join(folder, "enhanced.dcm"))
            self.assertEqual(image.GetMetaDataKeys(), ())
            for name in ("converted.nrrd", "converted.mha"):
                path = io.write_image(image, os.path.join(folder, name))
                with open(path, "rb") as fh:
                    self._assert_clean(fh.read(), name)

    def test_cli_outputs_hold_no_patient_data(self) -> None:
        """Every command a user runs on DICOM folders (info, register, resample to NIfTI/NRRD/MetaImage, fuse with its
        report, evaluate, evaluate-registration, run), with --json, errors (a gap, two series in one folder) and
        warnings: no identifying value in what they print or write."""
        import contextlib
        import io as text_io

        from MultimodalFusionLib import cli

        with tempfile.TemporaryDirectory() as root:
            ct, pet = os.path.join(root, "ct"), os.path.join(root, "pet")
            write_series(ct, rows=24, cols=24, positions=[(-12.0, -14.0, 30.0 + 2.5 * k) for k in range(8)])
            write_series(pet, modality="PT", description="PET AC", pixel_spacing=(1.6, 1.8), rows=12, cols=12,
                         positions=[(-11.0, -13.0, 31.0 + 3.0 * k) for k in range(6)])
            write_series(os.path.join(root, "gap"), positions=[(0.0, 0.0, z) for z in (0.0, 2.5, 7.5)])
            late, two = os.path.join(root, "late"), os.path.join(root, "two")
            write_series(late, rows=24, cols=24, positions=[(-12.0, -14.0, 30.0 + 2.5 * k) for k in range(8)],
                         description="LATE")
            for prefix in ("A", "B"):
                write_series(two, prefix=prefix, description=prefix)
            enhanced = os.path.join(root, "enhanced.dcm")  # one file, read as a volume: ITK keeps its tags
            write_enhanced(enhanced, [(0.0, 0.0, 2.0 * k) for k in range(4)])
            res, fuse = os.path.join(root, "res"), os.path.join(root, "fuse")
            transform = os.path.join(root, "reg", "transform.tfm")
            commands = [["info", ct, pet], ["info", "--json", ct],
                        ["register", ct, pet, "--output-dir", os.path.join(root, "reg"), "--stages", "rigid",
                         "--seed", "0", "--json"],
                        *(["resample", pet, "--reference", ct, "--transform", transform, "-o",
                           os.path.join(res, f"pet{ext}")] for ext in (".nii.gz", ".nrrd", ".mha")),
                        ["resample", enhanced, "--reference", enhanced, "-o", os.path.join(res, "enhanced.nrrd")],
                        ["fuse", ct, late, "--method", "average", "-o", os.path.join(fuse, "fused.nii.gz"),
                         "--report", os.path.join(fuse, "report"), "--json"],
                        ["fuse", ct, late, "--method", "average", "--window", "0", "8", "-o",
                         os.path.join(fuse, "windowed.nii.gz")],  # a window that warns
                        ["evaluate", ct, late, "--fused", os.path.join(fuse, "fused.nii.gz"), "--json"],
                        ["evaluate-registration", ct, pet, "--transform", transform, "--json"],
                        ["run", ct, pet, "--output-dir", os.path.join(root, "run"), "--stages", "rigid",
                         "--methods", "overlay,average", "--seed", "0"],
                        ["info", os.path.join(root, "gap")], ["register", ct, two, "-o", os.path.join(root, "no")]]
            for argv in commands:
                out, err = text_io.StringIO(), text_io.StringIO()
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                        warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    code = cli.main(argv)
                self.assertEqual(code, 2 if argv[-1] in (os.path.join(root, "gap"), os.path.join(root, "no")) else 0,
                                 err.getvalue())
                said = out.getvalue() + err.getvalue() + "".join(str(w.message) for w in caught)
                self._assert_clean(said.encode(), " ".join(argv[:1]))
            written = [os.path.join(d, f) for d in ("reg", "run", "res", "fuse", os.path.join("fuse", "report"))
                       for f in os.listdir(os.path.join(root, d)) if os.path.isfile(os.path.join(root, d, f))]
            self.assertIn(os.path.join("run", "report.html"), written)
            self.assertIn(os.path.join("res", "pet.nrrd"), written)
            for path in written:
                with open(os.path.join(root, path), "rb") as fh:
                    payload = fh.read()
                if path.endswith(".gz"):
                    import gzip

                    payload = gzip.decompress(payload)
                self._assert_clean(payload + os.path.basename(path).encode(), path)


    def test_reports_name_a_dicom_folder_by_its_own_name_only(self) -> None:
        """A report names each input by its file or folder name, never the folders above it (here the patient's
        name); `fuse --report` on folders given as a shell completes them (`ct/`) named both inputs 'A: ' and 'B: '."""
        import contextlib
        import io as text_io
        import json

        from MultimodalFusionLib import cli

        with tempfile.TemporaryDirectory() as root:
            patient = os.path.join(root, PHI["PatientName"])  # a folder named after the patient, above the series
            ct, ct2 = os.path.join(patient, "ct"), os.path.join(patient, "ct_late")
            write_series(ct, rows=24, cols=24, positions=[(-12.0, -14.0, 30.0 + 2.5 * k) for k in range(8)])
            write_series(ct2, rows=24, cols=24, positions=[(-12.0, -14.0, 30.0 + 2.5 * k) for k in range(8)],
                         description="LATE")
            reports = {"fuse": os.path.join(root, "fuse"), "run": os.path.join(root, "run")}
            commands = {"fuse": ["fuse", ct + os.sep, ct2 + os.sep, "--method", "average", "-o",
                                 os.path.join(root, "fused.nii.gz"), "--report", reports["fuse"]],
                        "run": ["run", ct + os.sep, ct2 + os.sep, "--no-register", "--methods", "average",
                                "--output-dir", reports["run"]]}
            names = {"fuse": ["A: ct", "B: ct_late"], "run": ["fixed: ct", "moving: ct_late (registered)"]}
            for command, argv in commands.items():
                with contextlib.redirect_stdout(text_io.StringIO()), contextlib.redirect_stderr(text_io.StringIO()):
                    self.assertEqual(cli.main(argv), 0, command)
                with open(os.path.join(reports[command], "metrics.json"), encoding="utf-8") as fh:
                    self.assertEqual(list(json.load(fh)["inputs"]), names[command])
                for name in ("metrics.json", "report.html"):
                    with open(os.path.join(reports[command], name), "rb") as fh:
                        self._assert_clean(fh.read(), f"{command}: {name}")


def share_position(path: str) -> None:
    """Move the first frame's PlanePositionSequence of the enhanced file at ``path`` into its shared functional
    groups, and drop every frame's: one position stated for all its frames."""
    import pydicom

    ds = pydicom.dcmread(path)
    ds.SharedFunctionalGroupsSequence[0].PlanePositionSequence = ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence
    for frame in ds.PerFrameFunctionalGroupsSequence:
        del frame.PlanePositionSequence
    ds.save_as(path)


def write_enhanced(path: str, positions: Sequence[Sequence[float]] | None, orientation: Sequence[float] = AXIAL,
                   rows: int = 12, cols: int = 10, pixel_spacing: tuple[float, float] | None = (0.7, 0.6),
                   spacing_in: str = "shared", frames: int | None = None, top: dict | None = None,
                   sop_class: str = "1.2.840.10008.5.1.4.1.1.2.1", groups: bool = True,
                   series_uid: str | None = None) -> np.ndarray:
    """An enhanced (multi-frame) CT: geometry and rescale in the functional groups; returns the HU values.

    ``spacing_in``: where PixelSpacing goes: "shared" or "per-frame" functional groups, "top" level; ``positions``
    None: no per-frame positions (``frames`` frames); ``top``: more top-level tags (pydicom keywords);
    ``groups`` False: no functional groups at all (as in NM or a legacy multi-frame CT); ``series_uid``: that of
    another file, for a series of several files (default: a new series).
    """
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    count = len(positions) if positions is not None else frames
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class  # default: Enhanced CT Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    for name, value in PHI.items():
        setattr(ds, name, value)
    ds.Modality, ds.SeriesDescription, ds.InstanceNumber = "CT", "ENHANCED CT", 1
    ds.SeriesInstanceUID, ds.StudyInstanceUID = series_uid or generate_uid(), generate_uid()
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, count
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    for name, value in (top or {}).items():
        setattr(ds, name, value)
    measures, plane, rescale, shared = Dataset(), Dataset(), Dataset(), Dataset()
    measures.SliceThickness = 2.0
    if pixel_spacing is not None and spacing_in == "shared":
        measures.PixelSpacing = list(pixel_spacing)
    elif pixel_spacing is not None and spacing_in == "top":
        ds.PixelSpacing = list(pixel_spacing)
    plane.ImageOrientationPatient = [float(v) for v in orientation]
    rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = 1, -1024, "HU"
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PlaneOrientationSequence = DicomSequence([plane])
    shared.PixelValueTransformationSequence = DicomSequence([rescale])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    items = []
    for k in range(count):
        frame, where, own = Dataset(), Dataset(), Dataset()
        if positions is not None:
            where.ImagePositionPatient = [float(v) for v in positions[k]]
            frame.PlanePositionSequence = DicomSequence([where])
        if pixel_spacing is not None and spacing_in == "per-frame":
            own.PixelSpacing = list(pixel_spacing)
            frame.PixelMeasuresSequence = DicomSequence([own])
        items.append(frame)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(items)
    if not groups:
        del ds.SharedFunctionalGroupsSequence, ds.PerFrameFunctionalGroupsSequence
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    stored = (np.arange(count * rows * cols).reshape(count, rows, cols) % 700 + 24).astype(np.int16)
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return stored.astype(np.float64) - 1024
