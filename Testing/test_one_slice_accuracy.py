"""Registration accuracy of one-slice volumes (a 2D slice saved as a volume of one slice, as Slicer and ITK-SNAP save
it): their label maps and 3D landmarks are scored in the slices' 2D frames, through the 2D transform `mmfusion
register` writes for them (fixed -> moving points, ITK), on every path: the engine (metrics.evaluate_registration),
`mmfusion evaluate-registration`, `mmfusion run --fixed-labels/--fixed-landmarks ...` and the Slicer Logic's
evaluateRegistration (slicer-core, a real scene). They had all been refused (or, in the Logic, scored in 3D, where
slices at other depths lost every label).

The data: two slices at different depths (z 37.5 and 40 mm), on grids turned 30 and 10 degrees in their plane, of
other spacings; the fixed label map is SimpleITK's nearest-neighbour resampling of the moving one through a known
2D transform, and the fixed landmarks are the moving ones taken back through it, so the transform scores Dice 1 and
TRE 0 exactly.
"""

from __future__ import annotations

import contextlib
import io as _io
import json
import os
import tempfile
import unittest
from typing import Any

import numpy as np
import SimpleITK as sitk

from MultimodalFusionLib import InputError, cli, io, metrics

try:
    import slicer  # the slicer-core wheel: Slicer's MRML

    from MultimodalFusionLib import mrml
    from MultimodalFusionLib.slicer_logic import FusionLogic

    HAVE_MRML = True
except ImportError:  # pragma: no cover - slicer-core is a test dependency
    HAVE_MRML = False

FIXED_Z, MOVING_Z = 37.5, 40.0
FIXED_DEPTH, MOVING_DEPTH = 2.5, 3.0
#: the registration's answer: fixed -> moving points (ITK), in the slices' plane (LPS x, y mm)
TRUTH = sitk.Euler2DTransform((0.0, 5.0), np.radians(8.0), (3.0, -2.0))
#: fixed landmarks on the fixed slice's plane (x, y); each lies off the plane by less than half a slice depth
FIXED_XY = np.array([[0.0, 0.0], [5.0, 10.0], [-8.0, 4.0], [12.0, -6.0]])


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = _io.StringIO(), _io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(list(argv))
    return rc, out.getvalue(), err.getvalue()


def _slice_volume(arr: np.ndarray, z: float, spacing: tuple[float, float, float], degrees: float) -> sitk.Image:
    image = sitk.GetImageFromArray(arr[None])
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    image.SetSpacing(spacing)
    image.SetOrigin((-20.0, -30.0, z))
    return image


def one_slice_pair(truth: sitk.Transform = TRUTH) -> dict[str, Any]:
    """Two one-slice volumes, their label maps and landmarks (LPS, 3D), related exactly by ``truth`` (2D)."""
    yy, xx = np.mgrid[:70, :64]
    labels = np.zeros((70, 64), np.uint8)
    labels[((yy - 35) / 14.0) ** 2 + ((xx - 30) / 10.0) ** 2 < 1] = 1
    labels[20:30, 40:50] = 2
    moving_labels = _slice_volume(labels, MOVING_Z, (0.8, 0.8, MOVING_DEPTH), 10.0)
    noise = np.random.default_rng(0).normal(0.0, 1.0, labels.shape).astype(np.float32)
    moving = _slice_volume(labels.astype(np.float32) * 100.0 + noise, MOVING_Z, (0.8, 0.8, MOVING_DEPTH), 10.0)
    grid = _slice_volume(np.zeros((72, 66), np.float32), FIXED_Z, (0.9, 0.9, FIXED_DEPTH), 30.0)
    fixed_labels_2d = sitk.Resample(io.one_slice_as_2d(moving_labels), io.one_slice_as_2d(grid), truth,
                                    sitk.sitkNearestNeighbor, 0)
    fixed_labels = io.as_one_slice_of(fixed_labels_2d, grid)
    fixed = io.as_one_slice_of(sitk.Cast(fixed_labels_2d, sitk.sitkFloat32) * 100.0, grid)
    moving_xy = np.array([truth.TransformPoint(p) for p in FIXED_XY])
    # off the plane by up to 0.4 of a slice depth (Slicer places a point where the slice view shows it)
    fixed_points = np.column_stack([FIXED_XY, FIXED_Z + np.array([0.0, 1.0, -0.5, 0.9])])
    moving_points = np.column_stack([moving_xy, MOVING_Z + np.array([0.0, -1.2, 0.6, 1.1])])
    return {"fixed": fixed, "moving": moving, "fixed_labels": fixed_labels, "moving_labels": moving_labels,
            "fixed_points": fixed_points, "moving_points": moving_points, "moving_xy": moving_xy}


def bspline_2d() -> sitk.BSplineTransform:
    """A smooth 2D B-spline (up to 2 mm) over both slices' extent, after TRUTH: a deformable registration's answer."""
    domain = sitk.Image([140, 140], sitk.sitkUInt8)
    domain.SetOrigin((-60.0, -60.0))
    bspline = sitk.BSplineTransformInitializer(domain, [4, 4])
    bspline.SetParameters(np.random.default_rng(3).uniform(-2.0, 2.0, len(bspline.GetParameters())).tolist())
    return bspline


def lifted_bspline(bspline: sitk.BSplineTransform, z_range: tuple[float, float] = (20.0, 60.0),
                   layers: int = 4) -> sitk.Transform:
    """The 2D B-spline as a 3D one that moves x and y alike at every depth and keeps z (a 2D B-spline stacked
    along z: its coefficients on every layer of a grid along z, z coefficients 0), over z_range (a cubic
    B-spline's grid: ``layers`` - 3 intervals, a layer more either side)."""
    spacing = (z_range[1] - z_range[0]) / (layers - 3)
    images = []
    for coefficients in [*bspline.GetCoefficientImages(), None]:
        arr = np.zeros((layers, *sitk.GetArrayViewFromImage(bspline.GetCoefficientImages()[0]).shape))
        if coefficients is not None:
            arr[:] = sitk.GetArrayFromImage(coefficients)
        image = sitk.GetImageFromArray(arr)
        image.SetOrigin((*bspline.GetCoefficientImages()[0].GetOrigin(), z_range[0] - spacing))
        image.SetSpacing((*bspline.GetCoefficientImages()[0].GetSpacing(), spacing))
        images.append(image)
    return sitk.BSplineTransform(images, 3)


def field_2d(transform: sitk.Transform) -> sitk.Image:
    """A 2D transform sampled as a displacement field (3 mm, over both slices' extent)."""
    return sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, [50, 50], (-70.0, -70.0), (3.0, 3.0))


def lifted_field(field: sitk.Image, z0: float = 20.0, dz: float = 10.0, layers: int = 5) -> sitk.Transform:
    """The 2D displacement field stacked along z (the same x and y displacements on every layer, z ones 0)."""
    arr = sitk.GetArrayFromImage(field)
    stacked = np.zeros((layers, *arr.shape[:2], 3))
    stacked[..., :2] = arr
    image = sitk.GetImageFromArray(stacked, isVector=True)
    image.SetOrigin((*field.GetOrigin(), z0))
    image.SetSpacing((*field.GetSpacing(), dz))
    return sitk.DisplacementFieldTransform(image)


def lifted_rigid() -> sitk.AffineTransform:
    """TRUTH lifted to 3D (x and y moved, z kept), as Slicer loads the 2D transform file."""
    rigid = sitk.AffineTransform(3)
    m = np.array(TRUTH.GetMatrix()).reshape(2, 2)
    rigid.SetMatrix([m[0, 0], m[0, 1], 0.0, m[1, 0], m[1, 1], 0.0, 0.0, 0.0, 1.0])
    rigid.SetTranslation((*TRUTH.TransformPoint((0.0, 0.0)), 0.0))
    return rigid


def _fcsv(points_lps: np.ndarray) -> str:
    """A Slicer 5 .fcsv in RAS (x and y negated)."""
    rows = [f"p{i},{-float(p[0])!r},{-float(p[1])!r},{float(p[2])!r},0,0,0,1,1,1,0,L{i},,\n"
            for i, p in enumerate(points_lps)]
    return "# Markups fiducial file version = 4.11\n# CoordinateSystem = RAS\n" + "".join(rows)


def _ants_csv(points_lps: np.ndarray) -> str:
    return "x,y,z,t\n" + "".join(",".join(repr(float(v)) for v in p) + ",0\n" for p in points_lps)


def _xy_csv(points: np.ndarray) -> str:
    """2D points (x, y; LPS mm) as an ANTs csv."""
    return "x,y,t\n" + "".join(f"{float(p[0])!r},{float(p[1])!r},0\n" for p in points)

def _elastix(points_lps: np.ndarray) -> str:
    return f"point\n{len(points_lps)}\n" + "".join(" ".join(repr(float(v)) for v in p) + "\n" for p in points_lps)


class EngineTest(unittest.TestCase):
    """metrics.evaluate_registration of one-slice volumes through a 2D transform."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.d = one_slice_pair()

    def _evaluate(self, **changes: Any) -> dict:
        d = dict(self.d, **changes)
        return metrics.evaluate_registration(d["fixed"], d["moving"], TRUTH, fixed_labels=d["fixed_labels"],
                                             moving_labels=d["moving_labels"], fixed_landmarks=d["fixed_points"],
                                             moving_landmarks=d["moving_points"])

    def test_the_known_transform_scores_dice_1_and_tre_0_on_the_slices_planes(self) -> None:
        out = self._evaluate()
        after = out["labels"]["after"]
        self.assertEqual(sorted(after["labels"]), [1, 2])
        for label in (1, 2):
            self.assertEqual(after["labels"][label]["dice"], 1.0)
            self.assertEqual(after["labels"][label]["hd95"], 0.0)
        self.assertLess(out["landmarks"]["after"]["max"], 1e-9)
        self.assertLess(out["labels"]["before"]["mean"]["dice"], 0.8)
        # the slices' 2D frames: the same numbers as the 2D images, label maps and (x, y) points themselves
        flat = {k: io.one_slice_as_2d(self.d[k]) for k in ("fixed", "moving", "fixed_labels", "moving_labels")}
        expected = metrics.evaluate_registration(
            flat["fixed"], flat["moving"], TRUTH, fixed_labels=flat["fixed_labels"], moving_labels=flat["moving_labels"],
            fixed_landmarks=FIXED_XY, moving_landmarks=self.d["moving_xy"])
        for when in ("before", "after"):
            for label in (1, 2):
                for key in ("dice", "hd95", "mean_surface_distance"):
                    self.assertAlmostEqual(out["labels"][when]["labels"][label][key],
                                           expected["labels"][when]["labels"][label][key], places=9)
            np.testing.assert_allclose(out["landmarks"][when]["per_point"],
                                       expected["landmarks"][when]["per_point"], atol=1e-9)
            self.assertAlmostEqual(out["images"][when]["NCC"], expected["images"][when]["NCC"], places=6)
        # HD95 in mm on the plane, with the fixed slice's in-plane spacing (0.9 mm), not the 3D slab's surfaces
        self.assertEqual(out["labels"]["before"]["grid"]["spacing"], [0.9, 0.9])
        self.assertEqual(out["slice_planes"]["fixed"]["origin_lps"][2], FIXED_Z)
        self.assertEqual(out["slice_planes"]["moving"]["depth_mm"], MOVING_DEPTH)

    def test_a_wrong_transform_scores_what_simpleitk_resampling_gives(self) -> None:
        """Through another transform, the Dice of the moving labels SimpleITK resamples with it."""
        wrong = sitk.Euler2DTransform((0.0, 5.0), np.radians(3.0), (1.0, 0.0))
        out = metrics.evaluate_registration(self.d["fixed"], self.d["moving"], wrong,
                                            fixed_labels=self.d["fixed_labels"], moving_labels=self.d["moving_labels"])
        fixed_2d = io.one_slice_as_2d(self.d["fixed_labels"])
        moved = sitk.Resample(io.one_slice_as_2d(self.d["moving_labels"]), fixed_2d, wrong, sitk.sitkNearestNeighbor, 0)
        expected = metrics.label_overlap(fixed_2d, moved)
        for label in (1, 2):
            self.assertAlmostEqual(out["labels"]["after"]["labels"][label]["dice"],
                                   expected["labels"][label]["dice"], places=12)
        self.assertLess(out["labels"]["after"]["mean"]["dice"], 0.99)

    def test_a_landmark_off_the_plane_is_named_with_its_distance(self) -> None:
        points = self.d["fixed_points"].copy()
        points[1, 2] = FIXED_Z + 1.5  # the depth is 2.5 mm: 0.25 mm beyond half of it
        with self.assertRaisesRegex(InputError, r"Fixed landmark 2 at LPS \(5, 10, 39\) mm lies 1.5 mm off the fixed "
                                                r"image's slice \(more than half its 2.5 mm depth\)"):
            self._evaluate(fixed_points=points)
        points = self.d["moving_points"].copy()
        points[3, 2] = MOVING_Z - 40.0
        with self.assertRaisesRegex(InputError, "Moving landmark 4 .* lies 40 mm off the moving image's slice"):
            self._evaluate(moving_points=points)

    def test_a_label_map_of_another_slice_or_of_several_is_refused(self) -> None:
        other = sitk.Image(self.d["fixed_labels"])
        other.SetOrigin((*other.GetOrigin()[:2], FIXED_Z + 100.0))
        with self.assertRaisesRegex(InputError, "fixed label map lies on another slice than the fixed image: its "
                                                "slice is 100 mm from"):
            self._evaluate(fixed_labels=other)
        thick = sitk.JoinSeries([io.one_slice_pixels(self.d["moving_labels"])] * 3)
        with self.assertRaisesRegex(InputError, "moving label map is a volume of .* but the moving image is a "
                                                "one-slice volume"):
            self._evaluate(moving_labels=thick)

    def test_without_a_transform_the_slices_are_scored_on_their_planes_as_before_registration(self) -> None:
        # register takes two axial one-slice volumes as 2D images and starts from the identity of their 2D frames:
        # without a transform they had been scored in 3D (Dice 0.00, TRE 4.609 mm: the moving slice 2.5 mm deeper
        # lost every label), where the "before" column of the same pair with its 2D transform reads 0.570 / 3.925
        d = self.d
        kwargs = dict(fixed_labels=d["fixed_labels"], moving_labels=d["moving_labels"],
                      fixed_landmarks=d["fixed_points"], moving_landmarks=d["moving_points"])
        alone = metrics.evaluate_registration(d["fixed"], d["moving"], None, **kwargs)
        through = metrics.evaluate_registration(d["fixed"], d["moving"], TRUTH, **kwargs)
        self.assertIn("slice_planes", alone)
        for when in ("before", "after"):
            for key in ("dice", "hd95", "mean_surface_distance"):
                self.assertAlmostEqual(alone["labels"][when]["mean"][key], through["labels"]["before"]["mean"][key],
                                       places=12)
            np.testing.assert_allclose(alone["landmarks"][when]["per_point"],
                                       through["landmarks"]["before"]["per_point"], atol=1e-12)
        self.assertAlmostEqual(alone["labels"]["before"]["mean"]["dice"], 0.570, places=3)
        self.assertAlmostEqual(alone["landmarks"]["before"]["mean"], 3.925, places=3)
        # the images alone too: their similarity is the 2D images' (in 3D the moving slice had not reached the
        # fixed one: MI 0, NCC None)
        images = metrics.evaluate_registration(d["fixed"], d["moving"])
        flat = metrics.evaluate_registration(io.one_slice_as_2d(d["fixed"]), io.one_slice_as_2d(d["moving"]))
        for key in ("MI", "NCC"):
            self.assertAlmostEqual(images["images"]["before"][key], flat["images"]["before"][key], places=9)
        self.assertGreater(images["images"]["before"]["NCC"], 0.5)

    def test_without_a_transform_coronal_slices_are_still_scored_in_3d(self) -> None:
        # no 2D image holds a coronal slice (register refuses the pair): scored in 3D as they lie, not refused
        slices = []
        for arr in (np.pad(np.ones((1, 6, 8), np.uint8), ((0, 0), (2, 2), (2, 2))),
                    np.pad(np.ones((1, 6, 8), np.uint8), ((0, 0), (3, 1), (2, 2)))):
            image = sitk.GetImageFromArray(np.moveaxis(arr, 0, 1))  # size (12, 1, 10): one slice along y
            image.SetSpacing((0.8, 2.0, 1.1))
            slices.append(image)
        out = metrics.evaluate_registration(*(sitk.Cast(i, sitk.sitkFloat32) for i in slices), None,
                                            fixed_labels=slices[0], moving_labels=slices[1])
        self.assertNotIn("slice_planes", out)
        self.assertAlmostEqual(out["labels"]["after"]["mean"]["dice"], 2 * 40 / 96, places=12)  # 5 of 6 rows overlap

    def test_a_2d_transform_with_volumes_of_several_slices_is_still_refused(self) -> None:
        volume = sitk.JoinSeries([io.one_slice_pixels(self.d["fixed"])] * 3)
        labels = sitk.JoinSeries([io.one_slice_pixels(self.d["fixed_labels"])] * 3)
        with self.assertRaisesRegex(InputError, "The transform is 2D but the images are 3D volumes of several"):
            metrics.evaluate_registration(volume, volume, TRUTH, fixed_labels=labels, moving_labels=labels)


class ShearedSliceTest(unittest.TestCase):
    """A slice on a sheared grid (its third axis tilted 30 degrees from the plane's normal, as a gantry-tilted CT's
    NRRD holds it): a landmark's distance off the slice is measured along the normal and its place on the slice is
    its foot there, where the 2D transform lifted to 3D (x and y moved, z kept) puts it. Taken along the tilted
    axis, a point 1 mm above the slice had been put 0.58 mm aside, two points with the same x and y 2 mm apart in z
    scored TRE 1.155 mm through the identity, and a point 1.8 mm off was refused as '2.078 mm off ... more than
    half its 4 mm depth' (the slab is 3.464 mm thick along the normal)."""

    def _slice(self, z: float) -> sitk.Image:
        tilt = np.radians(30.0)
        image = sitk.Image([40, 40, 1], sitk.sitkFloat32)
        image.SetSpacing((1.0, 1.0, 4.0))
        image.SetOrigin((0.0, 0.0, z))
        image.SetDirection((1.0, 0.0, np.sin(tilt), 0.0, 1.0, 0.0, 0.0, 0.0, np.cos(tilt)))
        image[10:20, 10:20, 0] = 100.0
        return image

    def test_landmarks_are_taken_onto_the_slice_along_its_normal(self) -> None:
        fixed, moving = self._slice(50.0), self._slice(50.0)
        fixed_points = np.array([[15.0, 15.0, 51.0], [5.0, 8.0, 50.0], [30.0, 4.0, 48.5]])
        moving_points = fixed_points * [1.0, 1.0, 0.0] + [0.0, 0.0, 49.0]  # the same x and y, 1 mm below the plane
        flat = metrics.slice_plane_inputs(fixed, moving, fixed_landmarks=fixed_points, moving_landmarks=moving_points)
        np.testing.assert_allclose(flat["fixed_landmarks"], fixed_points[:, :2], atol=1e-9)
        np.testing.assert_allclose(flat["planes"]["fixed"]["normal_lps"], (0.0, 0.0, 1.0), atol=1e-12)
        self.assertAlmostEqual(flat["planes"]["fixed"]["depth_mm"], 4.0 * np.cos(np.radians(30.0)), places=12)
        out = metrics.evaluate_registration(fixed, moving, sitk.Euler2DTransform(), fixed_landmarks=fixed_points,
                                            moving_landmarks=moving_points)
        self.assertLess(out["landmarks"]["after"]["max"], 1e-9)
        labels = sitk.Cast(fixed > 50, sitk.sitkUInt8)
        on_plane = metrics.slice_plane_inputs(fixed, moving, fixed_labels=labels, moving_labels=labels)
        self.assertEqual(on_plane["fixed_labels"].GetOrigin(), (0.0, 0.0))

    def test_the_distance_off_the_slice_is_along_the_normal(self) -> None:
        fixed = self._slice(50.0)
        with self.assertRaisesRegex(InputError, r"lies 1\.8 mm off the fixed image's slice \(more than half its "
                                                r"3\.464 mm depth\)"):
            metrics.slice_plane_inputs(fixed, fixed, fixed_landmarks=np.array([[15.0, 15.0, 51.8]]),
                                       moving_landmarks=np.array([[15.0, 15.0, 50.0]]))
        labels = sitk.Cast(self._slice(51.8) > 50, sitk.sitkUInt8)
        with self.assertRaisesRegex(InputError, r"its slice is 1\.8 mm from the fixed image's plane, more than half "
                                                r"its slice depth \(1\.732 mm\)"):
            metrics.slice_plane_inputs(fixed, fixed, fixed_labels=labels, moving_labels=labels)


class CommandLineTest(unittest.TestCase):
    """`mmfusion evaluate-registration` and `mmfusion run` on one-slice volume files."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.TemporaryDirectory()
        cls.d = one_slice_pair()
        cls.paths = {}
        for key, name in (("fixed", "fixed.nrrd"), ("moving", "moving.nii.gz"), ("fixed_labels", "fixed_labels.nrrd"),
                          ("moving_labels", "moving_labels.nii.gz")):
            cls.paths[key] = cls._path(name)
            sitk.WriteImage(cls.d[key], cls.paths[key])
        for name, text in (("fixed.fcsv", _fcsv(cls.d["fixed_points"])),
                           ("moving.csv", _ants_csv(cls.d["moving_points"])),
                           ("fixed.txt", _elastix(cls.d["fixed_points"])),
                           ("moving.txt", _elastix(cls.d["moving_points"]))):
            with open(cls._path(name), "w") as f:
                f.write(text)
        cls.paths["truth"] = cls._path("truth.tfm")
        sitk.WriteTransform(TRUTH, cls.paths["truth"])

    @classmethod
    def tearDownClass(cls) -> None:
        cls.tmp.cleanup()

    @classmethod
    def _path(cls, name: str) -> str:
        return os.path.join(cls.tmp.name, name)

    def _evaluate(self, transform: str, fixed_points: str = "fixed.fcsv", moving_points: str = "moving.csv",
                  *extra: str) -> dict:
        p = self.paths
        rc, out, err = run_cli("evaluate-registration", p["fixed"], p["moving"], "--transform", transform,
                               "--fixed-labels", p["fixed_labels"], "--moving-labels", p["moving_labels"],
                               "--fixed-landmarks", self._path(fixed_points),
                               "--moving-landmarks", self._path(moving_points), *extra)
        self.assertEqual(rc, 0, err)
        return json.loads(out) if "--json" in extra else {"text": out}

    def test_evaluate_registration_scores_the_known_transform_dice_1_and_tre_0(self) -> None:
        for fixed_points, moving_points in (("fixed.fcsv", "moving.csv"), ("fixed.txt", "moving.txt")):
            with self.subTest(landmarks=(fixed_points, moving_points)):
                out = self._evaluate(self.paths["truth"], fixed_points, moving_points, "--json")
                for label in ("1", "2"):
                    self.assertEqual(out["labels"]["after"]["labels"][label]["dice"], 1.0)
                    self.assertEqual(out["labels"]["after"]["labels"][label]["hd95"], 0.0)
                self.assertLess(out["landmarks"]["after"]["max"], 1e-6)
                self.assertGreater(out["landmarks"]["before"]["mean"], 2.0)
                self.assertEqual(out["landmark_files"]["moving"]["points"], 4)
                self.assertEqual(out["slice_planes"]["moving"]["origin_lps"][2], MOVING_Z)
        text = self._evaluate(self.paths["truth"])["text"]
        self.assertIn("scored on the slices' planes (2D, in-plane mm)", text)

    def test_without_transform_the_before_column_of_the_2d_transform(self) -> None:
        # Dice 0.00 / TRE 4.609 mm in 3D had been printed without --transform, 0.570 / 3.925 mm as "before" with it
        p = self.paths
        rc, out, err = run_cli("evaluate-registration", p["fixed"], p["moving"], "--fixed-labels", p["fixed_labels"],
                               "--moving-labels", p["moving_labels"], "--fixed-landmarks", self._path("fixed.fcsv"),
                               "--moving-landmarks", self._path("moving.csv"), "--json")
        self.assertEqual(rc, 0, err)
        alone = json.loads(out)
        through = self._evaluate(self.paths["truth"], "fixed.fcsv", "moving.csv", "--json")
        self.assertEqual(alone["slice_planes"], through["slice_planes"])
        for when in ("before", "after"):
            self.assertAlmostEqual(alone["labels"][when]["mean"]["dice"], through["labels"]["before"]["mean"]["dice"],
                                   places=12)
            self.assertAlmostEqual(alone["landmarks"][when]["mean"], through["landmarks"]["before"]["mean"], places=9)
        self.assertAlmostEqual(alone["labels"]["before"]["mean"]["dice"], 0.570, places=3)
        self.assertAlmostEqual(alone["landmarks"]["before"]["mean"], 3.925, places=3)

    def test_an_off_plane_landmark_file_is_refused_naming_the_point(self) -> None:
        points = self.d["moving_points"].copy()
        points[2, 2] = MOVING_Z + 2.0  # half the 3 mm depth is 1.5 mm
        with open(self._path("off.csv"), "w") as f:
            f.write(_ants_csv(points))
        p = self.paths
        rc, _, err = run_cli("evaluate-registration", p["fixed"], p["moving"], "--transform", p["truth"],
                             "--fixed-landmarks", self._path("fixed.fcsv"), "--moving-landmarks", self._path("off.csv"))
        self.assertNotEqual(rc, 0)
        self.assertIn("Moving landmark 3", err)
        self.assertIn("lies 2 mm off the moving image's slice", err)
        self.assertNotIn("Traceback", err)

    def test_run_scores_its_registration_as_evaluate_registration_does(self) -> None:
        p = self.paths
        out_dir = self._path("run")
        rc, out, err = run_cli("run", p["fixed"], p["moving"], "-o", out_dir, "--methods", "average", "--stages",
                               "rigid", "--seed", "1", "--fixed-labels", p["fixed_labels"], "--moving-labels",
                               p["moving_labels"], "--fixed-landmarks", self._path("fixed.fcsv"),
                               "--moving-landmarks", self._path("moving.csv"))
        self.assertEqual(rc, 0, err)
        self.assertIn("scored on the slices' planes", out)
        with open(os.path.join(out_dir, "metrics.json")) as f:
            ran = json.load(f)["registration_accuracy"]
        transform_path = os.path.join(out_dir, "transform.tfm")
        self.assertEqual(io.read_transform(transform_path).GetDimension(), 2)
        scored = self._evaluate(transform_path, "fixed.fcsv", "moving.csv", "--json")
        for when in ("before", "after"):
            for label in ("1", "2"):
                self.assertAlmostEqual(ran["labels"][when]["labels"][label]["dice"],
                                       scored["labels"][when]["labels"][label]["dice"], places=12)
            np.testing.assert_allclose(ran["landmarks"][when]["per_point"], scored["landmarks"][when]["per_point"],
                                       atol=1e-9)
        self.assertGreater(ran["labels"]["after"]["mean"]["dice"], 0.95)
        self.assertLess(ran["landmarks"]["after"]["mean"], 0.5)
        self.assertGreater(ran["landmarks"]["before"]["mean"], 2.0)
        # and the Dice is that of the moving label map SimpleITK resamples with the written transform
        fixed_2d = io.one_slice_as_2d(self.d["fixed_labels"])
        moved = sitk.Resample(io.one_slice_as_2d(self.d["moving_labels"]), fixed_2d, io.read_transform(transform_path),
                              sitk.sitkNearestNeighbor, 0)
        expected = metrics.label_overlap(fixed_2d, moved)
        for label in (1, 2):
            self.assertAlmostEqual(ran["labels"]["after"]["labels"][str(label)]["dice"],
                                   expected["labels"][label]["dice"], places=12)

    def test_run_refuses_an_off_plane_landmark_before_registering(self) -> None:
        points = self.d["fixed_points"].copy()
        points[0, 2] = FIXED_Z - 30.0
        with open(self._path("off.fcsv"), "w") as f:
            f.write(_fcsv(points))
        p = self.paths
        out_dir = self._path("refused")
        rc, _, err = run_cli("run", p["fixed"], p["moving"], "-o", out_dir, "--methods", "average", "--stages",
                             "rigid", "--fixed-landmarks", self._path("off.fcsv"),
                             "--moving-landmarks", self._path("moving.csv"))
        self.assertNotEqual(rc, 0)
        self.assertIn("Fixed landmark 1 (L0)", err)
        self.assertIn("lies 30 mm off the fixed image's slice", err)
        self.assertFalse(os.path.exists(out_dir))



class OneSliceSurfaceTest(unittest.TestCase):
    """A label map of one slice (a one-slice volume) has the surfaces of the 2D label it is: its outline in the
    slice's plane. With the slice axis eroded too (the slab's faces), every voxel had been surface, whatever the
    transform (none, a 3D one, label_overlap itself)."""

    def _pair(self) -> tuple[np.ndarray, np.ndarray]:
        a = np.zeros((30, 40), np.uint8)
        a[5:20, 8:23] = 1
        a[22:28, 30:38] = 2
        b = np.zeros((30, 40), np.uint8)
        b[5:20, 11:26] = 1  # 3 voxels along x
        b[23:29, 29:37] = 2
        return a, b

    def test_one_slice_surfaces_are_monais_and_itks_on_the_2d_images(self) -> None:
        import warnings

        import torch
        from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

        a, b = self._pair()
        spacing = (0.8, 1.3)
        for flip in (1.0, -1.0):  # a slice saved with its z axis flipped (and its y, to stay a rotation)
            slices = []
            for arr in (a, b):
                image = sitk.GetImageFromArray(arr[None])
                image.SetSpacing((*spacing, 4.0))
                c, s_ = np.cos(np.radians(25.0)), np.sin(np.radians(25.0))
                image.SetDirection((c, -s_ * flip, 0.0, s_, c * flip, 0.0, 0.0, 0.0, flip))
                image.SetOrigin((3.0, -7.0, 42.0))
                slices.append(image)
            out = metrics.label_overlap(*slices)
            for label in (1, 2):
                row = out["labels"][label]
                y, y_pred = (torch.as_tensor((arr == label)[None, None]) for arr in (a, b))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    hd95 = compute_hausdorff_distance(y_pred, y, percentile=95, spacing=spacing[::-1])
                    assd = compute_average_surface_distance(y_pred, y, symmetric=True, spacing=spacing[::-1])
                self.assertAlmostEqual(row["hd95"], float(hd95), places=4)
                self.assertAlmostEqual(row["mean_surface_distance"], float(assd), places=4)
                hausdorff = sitk.HausdorffDistanceImageFilter()
                hausdorff.Execute(*(io.one_slice_as_2d(sitk.Cast(im == label, sitk.sitkUInt8)) for im in slices))
                self.assertAlmostEqual(row["hausdorff"], hausdorff.GetHausdorffDistance(), places=6)
        # the squares 3 voxels apart along x (0.8 mm): outlines 1.25 mm apart on average, where the slab's surfaces
        # (every voxel, most of them matched inside the overlap) had given 0.32 mm
        self.assertAlmostEqual(out["labels"][1]["mean_surface_distance"], 1.2464, places=4)

    def test_evaluate_registration_with_no_transform_or_a_3d_one_scores_the_outlines(self) -> None:
        a, b = self._pair()
        flat = [sitk.GetImageFromArray(arr) for arr in (a, b)]
        slices = [sitk.JoinSeries(im) for im in flat]  # one-slice volumes, 1 mm
        grey = [sitk.Cast(im, sitk.sitkFloat32) for im in slices]
        for transform, flat_transform in ((None, None), (sitk.TranslationTransform(3, (-1.0, 2.0, 0.0)),
                                                         sitk.TranslationTransform(2, (-1.0, 2.0)))):
            out = metrics.evaluate_registration(*grey, transform, fixed_labels=slices[0], moving_labels=slices[1])
            expected = metrics.evaluate_registration(*(sitk.Cast(im, sitk.sitkFloat32) for im in flat),
                                                     flat_transform, fixed_labels=flat[0], moving_labels=flat[1])
            for label in (1, 2):
                for key in ("hd95", "hausdorff", "mean_surface_distance"):
                    self.assertAlmostEqual(out["labels"]["after"]["labels"][label][key],
                                           expected["labels"]["after"]["labels"][label][key], places=9)


class SliceAndTwoDImageTest(unittest.TestCase):
    """A one-slice volume with a 2D image (and the reverse), the pair `register` takes as two 2D images: the
    one-slice side's label map and 3D landmarks are scored in its slice's 2D frame, the 2D side's as they are.
    read_accuracy_inputs had refused the landmarks ('Landmark lists do not correspond ((4, 3) fixed vs (4, 2)
    moving points)'), and the images alone had ended in 'Cannot resample a 2D image onto a 3D reference'."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.d = one_slice_pair()
        cls.tmp = tempfile.TemporaryDirectory()
        d, t = cls.d, cls.tmp.name
        cls.paths = {}
        for key, image in (("fixed", d["fixed"]), ("fixed_labels", d["fixed_labels"]),
                           ("moving", io.one_slice_as_2d(d["moving"])),
                           ("moving_labels", io.one_slice_as_2d(d["moving_labels"])),
                           ("fixed_2d", io.one_slice_as_2d(d["fixed"])),
                           ("fixed_labels_2d", io.one_slice_as_2d(d["fixed_labels"])),
                           ("moving_slice", d["moving"]), ("moving_labels_slice", d["moving_labels"])):
            cls.paths[key] = os.path.join(t, f"{key}.nrrd")
            sitk.WriteImage(image, cls.paths[key])
        for key, text in (("fixed_points", _fcsv(d["fixed_points"])), ("moving_points", _ants_csv(d["moving_points"])),
                          ("fixed_xy", _xy_csv(FIXED_XY)), ("moving_xy", _xy_csv(d["moving_xy"]))):
            cls.paths[key] = os.path.join(t, f"{key}.{'fcsv' if key == 'fixed_points' else 'csv'}")
            with open(cls.paths[key], "w") as f:
                f.write(text)
        cls.paths["truth"] = os.path.join(t, "truth.tfm")
        sitk.WriteTransform(TRUTH, cls.paths["truth"])

    @classmethod
    def tearDownClass(cls) -> None:
        cls.tmp.cleanup()

    def _expected(self) -> dict:
        """The 2D images, label maps and (x, y) points of the two slices, scored as 2D inputs."""
        flat = {k: io.one_slice_as_2d(self.d[k]) for k in ("fixed", "moving", "fixed_labels", "moving_labels")}
        return metrics.evaluate_registration(flat["fixed"], flat["moving"], TRUTH, fixed_labels=flat["fixed_labels"],
                                             moving_labels=flat["moving_labels"], fixed_landmarks=FIXED_XY,
                                             moving_landmarks=self.d["moving_xy"])

    def test_evaluate_registration_of_a_slice_and_a_2d_image_and_the_reverse(self) -> None:
        p = self.paths
        expected = self._expected()
        for label, (fixed, fixed_labels, fixed_points, moving, moving_labels, moving_points) in (
                ("one-slice fixed, 2D moving", ("fixed", "fixed_labels", "fixed_points", "moving", "moving_labels",
                                                "moving_xy")),
                ("2D fixed, one-slice moving", ("fixed_2d", "fixed_labels_2d", "fixed_xy", "moving_slice",
                                                "moving_labels_slice", "moving_points"))):
            for transform in (["--transform", p["truth"]], []):
                with self.subTest(label, transform=bool(transform)):
                    rc, out, err = run_cli("evaluate-registration", p[fixed], p[moving], *transform, "--fixed-labels",
                                           p[fixed_labels], "--moving-labels", p[moving_labels], "--fixed-landmarks",
                                           p[fixed_points], "--moving-landmarks", p[moving_points], "--json")
                    self.assertEqual(rc, 0, err)
                    result = json.loads(out)
                    self.assertIn("slice_planes", result)
                    for when in ("before", "after"):
                        source = when if transform else "before"  # no transform: the identity of the 2D frames
                        for key in ("dice", "hd95", "mean_surface_distance"):
                            self.assertAlmostEqual(result["labels"][when]["mean"][key],
                                                   expected["labels"][source]["mean"][key], places=9)
                        self.assertAlmostEqual(result["landmarks"][when]["mean"], expected["landmarks"][source]["mean"],
                                               places=9)
                        self.assertAlmostEqual(result["images"][when]["NCC"], expected["images"][source]["NCC"],
                                               places=6)
                    if transform:
                        self.assertEqual(result["labels"]["after"]["mean"]["dice"], 1.0)
                        self.assertLess(result["landmarks"]["after"]["max"], 1e-9)

    def test_the_images_alone(self) -> None:
        fixed, moving = self.d["fixed"], io.one_slice_as_2d(self.d["moving"])
        for transform in (TRUTH, None):
            out = metrics.evaluate_registration(fixed, moving, transform)
            expected = metrics.evaluate_registration(io.one_slice_as_2d(fixed), moving, transform)
            for when in ("before", "after"):
                self.assertAlmostEqual(out["images"][when]["NCC"], expected["images"][when]["NCC"], places=9)

    def test_read_accuracy_inputs_checks_them_in_the_slices_frame(self) -> None:
        from MultimodalFusionLib.evaluation import read_accuracy_inputs

        d = self.d
        moving = io.one_slice_as_2d(d["moving"])
        inputs = read_accuracy_inputs(d["fixed"], moving, fixed_landmarks=self.paths["fixed_points"],
                                      moving_landmarks=self.paths["moving_xy"])
        self.assertEqual(np.asarray(inputs.fixed_landmarks.points).shape, (4, 3))  # as read: scored in the frame
        far = d["fixed_points"].copy()
        far[2, 2] = FIXED_Z + 2.0  # 2 mm off the plane: past half the 2.5 mm depth
        with self.assertRaisesRegex(InputError, "Fixed landmark 3 .* lies 2 mm off the fixed image's slice"):
            read_accuracy_inputs(d["fixed"], moving, fixed_landmarks=far, moving_landmarks=d["moving_xy"])

    def test_run_scores_a_slice_registered_to_a_2d_image(self) -> None:
        p = self.paths
        with tempfile.TemporaryDirectory() as out_dir:
            rc, out, err = run_cli("run", p["fixed"], p["moving"], "-o", out_dir, "--methods", "average", "--stages",
                                   "rigid", "--seed", "1", "--fixed-labels", p["fixed_labels"], "--moving-labels",
                                   p["moving_labels"], "--fixed-landmarks", p["fixed_points"], "--moving-landmarks",
                                   p["moving_xy"])
            self.assertEqual(rc, 0, err)
            self.assertIn("scored on the slices' planes", out)
            with open(os.path.join(out_dir, "metrics.json")) as f:
                accuracy = json.load(f)["registration_accuracy"]
        expected = self._expected()
        self.assertAlmostEqual(accuracy["labels"]["before"]["mean"]["dice"],
                               expected["labels"]["before"]["mean"]["dice"], places=9)
        self.assertGreater(accuracy["labels"]["after"]["mean"]["dice"], 0.95)
        self.assertLess(accuracy["landmarks"]["after"]["mean"], 0.5)

@unittest.skipUnless(HAVE_MRML, "needs Slicer's MRML libraries (pip install slicer-core)")
class LogicTest(unittest.TestCase):
    """FusionLogic.evaluateRegistration of one-slice volume nodes under the 2D transform lifted to 3D, as Slicer
    loads a 2D transform file (x and y moved, z kept): in 3D the moving labels, 2.5 mm deeper than the fixed slice,
    were not found (Dice 0) and the surfaces were the slabs' (every voxel)."""

    def setUp(self) -> None:
        self.d = one_slice_pair()
        self.scene, self.nodes = self._scene_of(self.d)
        self.logic = FusionLogic(self.scene)
        self.transform = mrml.transform_node_from_sitk(lifted_rigid(), self.scene, name="registration")

    def _evaluate(self, transform: Any, **kwargs: Any) -> dict:
        n = self.nodes
        kwargs.setdefault("fixedPointsNode", n["fixed_points"])
        kwargs.setdefault("movingPointsNode", n["moving_points"])
        return self.logic.evaluateRegistration(n["fixed"], n["moving"], transform, fixedLabelNode=n["fixed_labels"],
                                               movingLabelNode=n["moving_labels"], **kwargs)

    def test_the_known_transform_scores_dice_1_and_tre_0_as_the_command_line_does(self) -> None:
        count = self.scene.GetNumberOfNodes()
        out = self._evaluate(self.transform)
        for label in (1, 2):
            self.assertAlmostEqual(out["labels"]["after"]["labels"][label]["dice"], 1.0, places=12)
            self.assertAlmostEqual(out["labels"]["after"]["labels"][label]["hd95"], 0.0, places=9)
        self.assertLess(out["landmarks"]["after"]["max"], 1e-6)
        d = self.d
        engine = metrics.evaluate_registration(d["fixed"], d["moving"], TRUTH, fixed_labels=d["fixed_labels"],
                                               moving_labels=d["moving_labels"], fixed_landmarks=d["fixed_points"],
                                               moving_landmarks=d["moving_points"])
        for when in ("before", "after"):
            self.assertAlmostEqual(out["labels"][when]["mean"]["dice"], engine["labels"][when]["mean"]["dice"],
                                   places=12)
            np.testing.assert_allclose(out["landmarks"][when]["per_point"], engine["landmarks"][when]["per_point"],
                                       atol=1e-6)
        self.assertEqual(out["slice_planes"]["moving"]["origin_lps"][2], MOVING_Z)
        self.assertEqual(self.scene.GetNumberOfNodes(), count)  # nothing added to the scene

    def test_no_transform_node_scores_as_the_identity_node(self) -> None:
        # with no transform node the slices had been scored in 3D (Dice 0.00), with an identity one on their planes
        # (Dice 0.570): both are the identity of the slices' 2D frames now, as evaluate-registration scores them
        none = self._evaluate(None)
        identity = self._evaluate(mrml.transform_node_from_sitk(sitk.AffineTransform(3), self.scene, name="identity"))
        self.assertIn("slice_planes", none)
        for when in ("before", "after"):
            self.assertAlmostEqual(none["labels"][when]["mean"]["dice"], identity["labels"][when]["mean"]["dice"],
                                   places=12)
            np.testing.assert_allclose(none["landmarks"][when]["per_point"], identity["landmarks"][when]["per_point"],
                                       atol=1e-9)
        self.assertAlmostEqual(none["labels"]["before"]["mean"]["dice"], 0.570, places=3)

    def test_segmentations_and_an_off_plane_point(self) -> None:
        segmentations = {}
        for role in ("fixed", "moving"):
            node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{role} segmentation")
            self.assertTrue(slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(
                self.nodes[f"{role}_labels"], node))
            segmentations[role] = node
        out = self.logic.evaluateRegistration(self.nodes["fixed"], self.nodes["moving"], self.transform,
                                              fixedLabelNode=segmentations["fixed"],
                                              movingLabelNode=segmentations["moving"])
        self.assertEqual(out["labels"]["after"]["mean"]["dice"], 1.0)
        self.nodes["moving_points"].SetNthControlPointPosition(1, 0.0, 0.0, MOVING_Z + 10.0)  # RAS z = LPS z
        with self.assertRaisesRegex(InputError, "Moving landmark 2 .* lies 10 mm off the moving image's slice"):
            self._evaluate(self.transform)


    def _flat_engine(self, d: dict, transform: sitk.Transform) -> dict:
        """evaluate_registration of the slices as the 2D images, label maps and (x, y) points they are."""
        flat = {k: io.one_slice_as_2d(d[k]) for k in ("fixed", "moving", "fixed_labels", "moving_labels")}
        return metrics.evaluate_registration(flat["fixed"], flat["moving"], transform,
                                             fixed_labels=flat["fixed_labels"], moving_labels=flat["moving_labels"],
                                             fixed_landmarks=d["fixed_points"][:, :2],
                                             moving_landmarks=d["moving_points"][:, :2])

    def _assert_scored_as(self, out: dict, engine: dict) -> None:
        """The Logic's scores ``out`` equal the engine's of the 2D slices (``engine``), before and after."""
        for when in ("before", "after"):
            for key in ("dice", "hd95", "mean_surface_distance"):
                self.assertAlmostEqual(out["labels"][when]["mean"][key], engine["labels"][when]["mean"][key],
                                       places=9)
            np.testing.assert_allclose(out["landmarks"][when]["per_point"], engine["landmarks"][when]["per_point"],
                                       atol=1e-6)

    def test_a_lifted_2d_bspline_is_scored_on_the_slices_planes(self) -> None:
        # the deformable answer (TRUTH then a B-spline) lifted to 3D: x and y moved alike at every depth, z kept.
        # It had been scored in 3D, where the moving slice, 2.5 mm deeper, lost every label (Dice 0)
        truth = sitk.CompositeTransform([TRUTH, bspline_2d()])
        d = one_slice_pair(truth)
        scene, nodes = self._scene_of(d)
        lifted = sitk.CompositeTransform([lifted_rigid(), lifted_bspline(bspline_2d())])
        for label, transform in (("B-spline alone", lifted_bspline(bspline_2d())), ("rigid then B-spline", lifted)):
            with self.subTest(label):
                node = mrml.transform_node_from_sitk(transform, scene, name=label)
                self.assertFalse(node.IsLinear())
                out = FusionLogic(scene).evaluateRegistration(
                    nodes["fixed"], nodes["moving"], node, fixedLabelNode=nodes["fixed_labels"],
                    movingLabelNode=nodes["moving_labels"], fixedPointsNode=nodes["fixed_points"],
                    movingPointsNode=nodes["moving_points"])
                self.assertIn("slice_planes", out)
                self._assert_scored_as(out, self._flat_engine(d, truth if label != "B-spline alone" else bspline_2d()))
                if label != "B-spline alone":  # the known transform: Dice 1, HD95 0, TRE 0
                    self.assertAlmostEqual(out["labels"]["after"]["mean"]["dice"], 1.0, places=12)
                    self.assertAlmostEqual(out["labels"]["after"]["mean"]["hd95"], 0.0, places=9)
                    self.assertLess(out["landmarks"]["after"]["max"], 1e-6)

    def _scene_of(self, d: dict) -> tuple[Any, dict]:
        scene = mrml.new_scene()
        nodes = {k: mrml.volume_node_from_image(d[k], scene, name=k, label=k.endswith("labels"))
                 for k in ("fixed", "moving", "fixed_labels", "moving_labels")}
        for role in ("fixed", "moving"):
            nodes[f"{role}_points"] = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", role[0].upper())
            for p in mrml.ras_points_to_lps(d[f"{role}_points"]):
                nodes[f"{role}_points"].AddControlPoint(*[float(c) for c in p])
        return scene, nodes

    def _logic(self, scene: Any, nodes: dict, transform: sitk.Transform, name: str) -> dict:
        node = mrml.transform_node_from_sitk(transform, scene, name=name)
        return FusionLogic(scene).evaluateRegistration(
            nodes["fixed"], nodes["moving"], node, fixedLabelNode=nodes["fixed_labels"],
            movingLabelNode=nodes["moving_labels"], fixedPointsNode=nodes["fixed_points"],
            movingPointsNode=nodes["moving_points"])

    def test_a_lifted_2d_displacement_field_is_scored_on_the_slices_planes(self) -> None:
        # the lifted field path (_lifted_2d's DisplacementFieldTransform) had no test: a deformable answer sampled as
        # a 2D field, stacked along z, alone and after the lifted rigid transform, scores as the 2D field does
        deformation = sitk.DisplacementFieldTransform(field_2d(bspline_2d()))
        whole = sitk.DisplacementFieldTransform(field_2d(sitk.CompositeTransform([TRUTH, bspline_2d()])))
        cases = (("field alone", lifted_field(field_2d(sitk.CompositeTransform([TRUTH, bspline_2d()]))), whole,
                  whole),
                 ("rigid then field", sitk.CompositeTransform([lifted_rigid(), lifted_field(field_2d(bspline_2d()))]),
                  sitk.CompositeTransform([TRUTH, deformation]), sitk.CompositeTransform([TRUTH, deformation])))
        for label, transform, truth, flat_transform in cases:
            with self.subTest(label):
                d = one_slice_pair(truth)
                scene, nodes = self._scene_of(d)
                out = self._logic(scene, nodes, transform, label)
                self.assertIn("slice_planes", out)
                self._assert_scored_as(out, self._flat_engine(d, flat_transform))
                self.assertAlmostEqual(out["labels"]["after"]["mean"]["dice"], 1.0, places=12)
                self.assertLess(out["landmarks"]["after"]["max"], 1e-6)

    def test_near_planar_bsplines(self) -> None:
        # a lifted B-spline whose z coefficients (or layers) differ by 1e-9 mm moves the slab's points within the
        # 1e-6 mm the checks allow: it had been refused as one that 'cannot be taken back' (exact equality); one
        # that moves them 0.05 mm along z is genuinely 3D and is scored in 3D, where the deeper slice is not reached
        truth = sitk.CompositeTransform([TRUTH, bspline_2d()])
        d = one_slice_pair(truth)
        scene, nodes = self._scene_of(d)
        for label, axis, size, planes in (("z 1e-9", 2, 1e-9, True), ("layer 1e-9", 0, 1e-9, True),
                                          ("z 0.05", 2, 0.05, False)):
            with self.subTest(label):
                lifted = lifted_bspline(bspline_2d())  # kept: its coefficient images are views of its parameters
                images = [sitk.Image(i) for i in lifted.GetCoefficientImages()]
                arr = sitk.GetArrayFromImage(images[axis])
                if axis == 2:
                    arr += size * np.random.default_rng(1).standard_normal(arr.shape)
                else:
                    arr[1] += size
                changed = sitk.GetImageFromArray(arr)
                changed.CopyInformation(images[axis])
                images[axis] = changed
                out = self._logic(scene, nodes, sitk.CompositeTransform([lifted_rigid(),
                                                                         sitk.BSplineTransform(images, 3)]), label)
                self.assertEqual("slice_planes" in out, planes)
                self.assertAlmostEqual(out["labels"]["after"]["mean"]["dice"], 1.0 if planes else 0.0, places=6)

    def test_a_lifted_transform_not_taken_back_to_2d_is_refused(self) -> None:
        # a 2D B-spline lifted on a grid whose layers differ where no slice lies: it keeps the slices' planes, but
        # is no 2D B-spline stacked along z; scored in 3D the moving slice would lose its labels
        bspline = lifted_bspline(bspline_2d(), (0.0, 200.0), 8)  # layers 40 mm apart, at z -40 to 240 mm
        images = list(bspline.GetCoefficientImages())
        arr = sitk.GetArrayFromImage(images[0])
        arr[6] += 5.0  # the layer at z 200 mm, whose support (120 to 280 mm) ends 78 mm from the slices
        changed = sitk.GetImageFromArray(arr)
        changed.CopyInformation(images[0])
        node = mrml.transform_node_from_sitk(sitk.BSplineTransform([changed, *images[1:]], 3), self.scene)
        with self.assertRaisesRegex(InputError, "within their axial planes .* cannot be taken back to the 2D"):
            self._evaluate(node)

    def test_a_3d_transform_across_the_slices_scores_the_slices_outlines(self) -> None:
        # a 3D translation from the fixed slice's depth to the moving one's: scored in 3D on the fixed one-slice
        # label map's grid, where every voxel of a one-slice label had been surface (mean of the two labels: HD95
        # 2.173 and mean surface distance 0.387 mm, where the outlines are 2.663 and 1.360 mm apart)
        shift = sitk.TranslationTransform(3, (1.5, -1.0, MOVING_Z - FIXED_Z))
        node = mrml.transform_node_from_sitk(shift, self.scene, name="across")
        out = self._evaluate(node, fixedPointsNode=None, movingPointsNode=None)
        self.assertNotIn("slice_planes", out)
        flat = {k: io.one_slice_as_2d(self.d[k]) for k in ("fixed", "moving", "fixed_labels", "moving_labels")}
        engine = metrics.evaluate_registration(flat["fixed"], flat["moving"], sitk.TranslationTransform(2, (1.5, -1.0)),
                                               fixed_labels=flat["fixed_labels"], moving_labels=flat["moving_labels"])
        for label in (1, 2):
            for key in ("dice", "hd95", "hausdorff", "mean_surface_distance"):
                self.assertAlmostEqual(out["labels"]["after"]["labels"][label][key],
                                       engine["labels"]["after"]["labels"][label][key], places=6)
        self.assertAlmostEqual(out["labels"]["after"]["mean"]["mean_surface_distance"], 1.360, places=3)

if __name__ == "__main__":
    unittest.main()
