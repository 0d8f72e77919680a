"""Registration accuracy as Learn2Reg, Slicer and ANTs users measure it: label overlap and surface distances
(checked against ITK's filters and MONAI), landmark files of Slicer, elastix and ANTs, and the
`mmfusion evaluate-registration` command on generated data moved by known transforms."""

from __future__ import annotations

import contextlib
import io as _io
import json
import os
import re
import tempfile
import unittest
import warnings

import numpy as np
import SimpleITK as sitk

from MultimodalFusionLib import cli, metrics
from MultimodalFusionLib.errors import InputError
from MultimodalFusionLib.io import write_image, write_transform
from MultimodalFusionLib.landmarks import paired_landmarks, read_landmarks
from MultimodalFusionLib.preprocess import resample

SPACING = (0.8, 1.3, 3.0)  # anisotropic, as a thick-slice acquisition
ORIGIN = (3.0, -7.0, 11.0)


def _direction(deg: float = 20.0) -> list[float]:
    t = np.deg2rad(deg)
    return np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]]).ravel().tolist()


def _ellipsoid(shape: tuple[int, int, int], centre: tuple[float, ...], radii: tuple[float, ...]) -> np.ndarray:
    z, y, x = np.indices(shape)
    return ((x - centre[0]) ** 2 / radii[0] ** 2 + (y - centre[1]) ** 2 / radii[1] ** 2
            + (z - centre[2]) ** 2 / radii[2] ** 2) <= 1


def _placed(arr: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(_direction())
    return image


def _two_label_maps() -> tuple[sitk.Image, sitk.Image]:
    shape = (20, 40, 36)
    a = np.zeros(shape, np.uint8)
    b = np.zeros(shape, np.uint8)
    a[_ellipsoid(shape, (15, 18, 9), (8, 10, 5))] = 1
    b[_ellipsoid(shape, (18, 20, 10), (7, 11, 4))] = 1
    a[_ellipsoid(shape, (27, 28, 12), (4, 5, 3))] = 2
    b[_ellipsoid(shape, (25, 30, 11), (5, 4, 4))] = 2
    return _placed(a), _placed(b)


def independent_scores(fixed_mask: sitk.Image, moving_mask: sitk.Image,
                       transform: sitk.Transform | None) -> dict[str, float]:
    """One segment's scores computed here, without the engine: its moving binary mask resampled nearest-neighbour
    onto the fixed mask's grid through ``transform`` (fixed -> moving points; None: the identity) by SimpleITK,
    Dice and Jaccard by ITK's LabelOverlapMeasuresImageFilter, ``itk_hausdorff`` by its HausdorffDistanceImageFilter
    (from every voxel: 0 from a label lying inside the other, where the surfaces' Hausdorff is not), Hausdorff, HD95
    and mean surface distance by MONAI (its surfaces, spacing in mm: a rotation of the grid moves no distance)."""
    import torch
    from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

    fixed_mask = sitk.Cast(fixed_mask, sitk.sitkUInt8)
    on_fixed = sitk.Resample(sitk.Cast(moving_mask, sitk.sitkUInt8), fixed_mask,
                             transform if transform is not None else sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    overlap = sitk.LabelOverlapMeasuresImageFilter()
    overlap.Execute(fixed_mask, on_fixed)
    hausdorff = sitk.HausdorffDistanceImageFilter()
    hausdorff.Execute(fixed_mask, on_fixed)
    y, y_pred = (torch.as_tensor(sitk.GetArrayFromImage(m)[None, None].astype(np.float32))
                 for m in (fixed_mask, on_fixed))
    spacing = fixed_mask.GetSpacing()[::-1]  # numpy's axis order
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd95 = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=spacing)
        hd = compute_hausdorff_distance(y_pred, y, include_background=True, spacing=spacing)
        assd = compute_average_surface_distance(y_pred, y, include_background=True, symmetric=True, spacing=spacing)
    return {"dice": overlap.GetDiceCoefficient(), "jaccard": overlap.GetJaccardCoefficient(),
            "itk_hausdorff": hausdorff.GetHausdorffDistance(), "hausdorff": float(hd), "hd95": float(hd95),
            "mean_surface_distance": float(assd),
            "fixed_voxels": int(sitk.GetArrayViewFromImage(fixed_mask).sum()),
            "moving_voxels": int(sitk.GetArrayViewFromImage(on_fixed).sum())}


class LabelOverlapTest(unittest.TestCase):
    def test_dice_jaccard_hausdorff_match_itk_and_distances_match_monai(self) -> None:
        fixed, moving = _two_label_maps()
        result = metrics.label_overlap(fixed, moving)
        self.assertEqual(sorted(result["labels"]), [1, 2])
        for label in (1, 2):
            row = result["labels"][label]
            f = sitk.Cast(fixed == label, sitk.sitkUInt8)
            m = sitk.Cast(moving == label, sitk.sitkUInt8)
            overlap = sitk.LabelOverlapMeasuresImageFilter()
            overlap.Execute(f, m)
            self.assertAlmostEqual(row["dice"], overlap.GetDiceCoefficient(), places=10)
            self.assertAlmostEqual(row["jaccard"], overlap.GetJaccardCoefficient(), places=10)
            hausdorff = sitk.HausdorffDistanceImageFilter()
            hausdorff.Execute(f, m)  # in mm through spacing and direction
            self.assertAlmostEqual(row["hausdorff"], hausdorff.GetHausdorffDistance(), places=6)
            self.assertGreater(row["hausdorff"], row["hd95"])
        self._check_monai(fixed, moving, result)

    def _check_monai(self, fixed: sitk.Image, moving: sitk.Image, result: dict) -> None:
        try:
            import torch
            from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance
        except ImportError:  # pragma: no cover - MONAI is in the test environment
            self.skipTest("MONAI not installed")
        a, b = sitk.GetArrayFromImage(fixed), sitk.GetArrayFromImage(moving)
        for label in (1, 2):
            y = torch.as_tensor((a == label)[None, None].astype(np.float32))
            y_pred = torch.as_tensor((b == label)[None, None].astype(np.float32))
            spacing = SPACING[::-1]  # numpy's axis order
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                hd95 = compute_hausdorff_distance(y_pred, y, include_background=True, percentile=95, spacing=spacing)
                assd = compute_average_surface_distance(y_pred, y, include_background=True, symmetric=True,
                                                        spacing=spacing)
            row = result["labels"][label]
            self.assertAlmostEqual(row["hd95"], float(hd95), places=4)
            self.assertAlmostEqual(row["mean_surface_distance"], float(assd), places=4)

    def test_the_direction_and_spacing_count(self) -> None:
        # the same voxels with 1 mm isotropic voxels: other distances, the same Dice
        fixed, moving = _two_label_maps()
        iso = [sitk.GetImageFromArray(sitk.GetArrayFromImage(im)) for im in (fixed, moving)]
        a, b = metrics.label_overlap(fixed, moving), metrics.label_overlap(*iso)
        self.assertAlmostEqual(a["labels"][1]["dice"], b["labels"][1]["dice"])
        self.assertNotAlmostEqual(a["labels"][1]["hd95"], b["labels"][1]["hd95"], places=2)
        # turning the grid (direction) moves no voxel against another: the distances stay
        turned = [sitk.Image(im) for im in (fixed, moving)]
        for im in turned:
            im.SetDirection(_direction(-35.0))
        self.assertAlmostEqual(metrics.label_overlap(*turned)["labels"][1]["hd95"], a["labels"][1]["hd95"])

    def test_a_label_missing_on_one_side_scores_dice_0_and_no_distance(self) -> None:
        fixed, moving = _two_label_maps()
        only_fixed = sitk.ChangeLabel(moving, {2: 0})
        result = metrics.label_overlap(fixed, only_fixed)
        row = result["labels"][2]
        self.assertEqual((row["dice"], row["jaccard"], row["missing"]), (0.0, 0.0, "moving"))
        self.assertIsNone(row["hd95"])
        self.assertIsNone(row["hausdorff"])
        self.assertEqual(result["mean"]["labels"], 2)
        self.assertEqual(result["mean"]["labels_with_distances"], 1)
        self.assertAlmostEqual(result["mean"]["dice"], result["labels"][1]["dice"] / 2)  # missing counts 0
        self.assertEqual(result["mean"]["hd95"], result["labels"][1]["hd95"])  # distances of label 1 only
        json.dumps(result)  # None, not inf: strict JSON
        self.assertTrue(any("label 2 is missing from the moving" in n for n in result["notes"]))

    def test_labels_in_neither_map_are_skipped_or_refused(self) -> None:
        fixed, moving = _two_label_maps()
        result = metrics.label_overlap(fixed, moving, labels=[1, 7])
        self.assertEqual(list(result["labels"]), [1])
        self.assertEqual(result["skipped"], [7])
        self.assertTrue(any("7 in neither" in n for n in result["notes"]))
        with self.assertRaisesRegex(InputError, "None of the labels asked for"):
            metrics.label_overlap(fixed, moving, labels=[7])
        empty = sitk.Image(fixed) * 0
        with self.assertRaisesRegex(InputError, "Both label maps are empty"):
            metrics.label_overlap(empty, empty)

    def test_labels_given_in_layers_are_each_their_own_mask(self) -> None:
        # a third label over both (as a segment over two others): one label map cannot hold it, layers can
        fixed, moving = _two_label_maps()
        layers = [[image, sitk.Cast(image > 0, sitk.sitkUInt8) * 3] for image in (fixed, moving)]
        result = metrics.label_overlap(*layers)
        self.assertEqual(sorted(result["labels"]), [1, 2, 3])
        alone = metrics.label_overlap(fixed, moving)
        union = metrics.label_overlap(*(sitk.Cast(image > 0, sitk.sitkUInt8) for image in (fixed, moving)))
        for label in (1, 2):
            self.assertEqual(result["labels"][label], alone["labels"][label])
        self.assertEqual(result["labels"][3], union["labels"][1])
        self.assertAlmostEqual(result["mean"]["dice"], np.mean([r["dice"] for r in result["labels"].values()]))
        # layers are label maps on one grid
        shifted = sitk.Image(layers[1][1])
        shifted.SetOrigin((0.0, 0.0, 0.0))
        with self.assertRaisesRegex(InputError, r"moving label map \(layer 2\)"):
            metrics.label_overlap(layers[0], [moving, shifted])
        # one-slice volumes (a slice saved as a volume) scored on their slices' planes through a 2D transform,
        # their labels in layers too: each label as scored alone
        slabs = [[sitk.Image(image)[:, :, 10:11] for image in side] for side in layers]
        grey = [sitk.Cast(side[0], sitk.sitkFloat32) * 100.0 for side in slabs]
        shift = sitk.TranslationTransform(2, (1.5, -2.0))
        out = metrics.evaluate_registration(*grey, shift, fixed_labels=slabs[0], moving_labels=slabs[1])
        self.assertIn("slice_planes", out)
        one = metrics.evaluate_registration(*grey, shift, fixed_labels=slabs[0][0], moving_labels=slabs[1][0])
        three = metrics.evaluate_registration(*grey, shift, fixed_labels=slabs[0][1], moving_labels=slabs[1][1])
        for when in ("before", "after"):
            rows = out["labels"][when]["labels"]
            self.assertEqual(sorted(rows), [1, 2, 3])
            for label in (1, 2):
                self.assertEqual(rows[label], one["labels"][when]["labels"][label])
            self.assertEqual(rows[3], three["labels"][when]["labels"][3])

    def test_labels_in_layers_score_as_in_one_label_map_whichever_layers_hold_them(self) -> None:
        # each label is looked for only in the layers that hold it, found once per side (comparing every layer for
        # every label had made 10 labels in 10 layers of 256^3 cost twice what one map costs): labels laid out in
        # layers another way on each side, a label split between two layers, an empty layer, a fixed label map on a
        # cropped extent (padded onto the scored grid), moving labels partly outside the fixed image, a label in one
        # map only: the layers score what one label map of the same labels scores, to the last bit
        shape = (20, 40, 36)
        one = []
        for shift in (0, 2):
            arr = np.zeros(shape, np.uint8)
            arr[_ellipsoid(shape, (12 + shift, 14, 9), (6, 7, 4))] = 1
            arr[_ellipsoid(shape, (26 + shift, 28, 10), (5, 6, 4))] = 2
            arr[3:9, 30:38, 0:6] = 3  # by the grid's border
            arr[_ellipsoid(shape, (26 + shift, 10, 12), (6, 4, 3))] = 4
            one.append(arr)
        one[0][14:17, 2:5, 30:33] = 5  # in the fixed label map only
        z, _, x = np.indices(shape)
        fixed_layers = [np.where(np.isin(one[0], [1, 3, 5]) | ((one[0] == 4) & (x < 26)), one[0], 0),
                        np.where((one[0] == 2) | ((one[0] == 4) & (x >= 26)), one[0], 0)]
        moving_layers = [np.where(one[1] == 2, one[1], 0),
                         np.where(((one[1] == 1) & (z < 10)) | (one[1] == 4), one[1], 0),
                         np.zeros(shape, np.uint8),
                         np.where(((one[1] == 1) & (z >= 10)) | (one[1] == 3), one[1], 0)]
        for side, layers in ((one[0], fixed_layers), (one[1], moving_layers)):
            np.testing.assert_array_equal(np.sum(layers, axis=0), side)  # the same labels, disjoint
        crop = (slice(2, 34), slice(2, 38), slice(1, 19))  # x, y, z: a .seg.nrrd's own extent
        fixed_in_layers = [_placed(a.astype(np.uint8)) for a in fixed_layers]
        moving_in_layers = [_placed(a.astype(np.uint8)) for a in moving_layers]
        grey = [sitk.Cast(_placed(a), sitk.sitkFloat32) * 100.0 for a in one]
        for transform in (None, sitk.TranslationTransform(3, (4.0, -2.0, 1.0))):
            in_one = metrics.evaluate_registration(*grey, transform, fixed_labels=_placed(one[0])[crop],
                                                   moving_labels=_placed(one[1]))
            in_layers = metrics.evaluate_registration(*grey, transform,
                                                      fixed_labels=[layer[crop] for layer in fixed_in_layers],
                                                      moving_labels=moving_in_layers)
            self.assertEqual(in_layers, in_one)
        after = in_one["labels"]["after"]
        self.assertEqual(sorted(after["labels"]), [1, 2, 3, 4])
        self.assertEqual(in_one["labels"]["left_out"], [5])
        self.assertTrue(after["outside"])  # moving labels beyond the fixed image, counted alike
        self.assertNotEqual(after["grid"]["size"], after["grid"]["fixed_label_map_size"])  # the fixed maps padded
        for labels in (None, [1, 4]):
            self.assertEqual(metrics.label_overlap(fixed_in_layers, moving_in_layers, labels),
                             metrics.label_overlap(_placed(one[0]), _placed(one[1]), labels))

    def test_labels_that_share_voxels_are_named_in_a_note(self) -> None:
        # overlapping labels are each scored with the voxels they share (the table cannot show it, and the mean
        # counts those voxels in each): a note names each pair and its count per side; the overlap had been refused
        # ('one label map cannot hold a voxel of both'), then scored without a word
        fixed, moving = _two_label_maps()
        layers = [[image, sitk.Cast(image > 0, sitk.sitkUInt8) * 3] for image in (fixed, moving)]
        grey = [sitk.Cast(image, sitk.sitkFloat32) * 100.0 for image in (fixed, moving)]
        out = metrics.evaluate_registration(*grey, fixed_labels=layers[0], moving_labels=layers[1])
        for side, image in (("fixed", fixed), ("moving", moving)):
            arr = sitk.GetArrayFromImage(image)
            for label in (1, 2):
                count = int(np.count_nonzero(arr == label))
                self.assertIn(f"label {label} and label 3 share {count} voxels of the {side} label map",
                              " | ".join(out["notes"]))
        self.assertFalse(any("label 1 and label 2" in n for n in out["notes"]))
        # labels not scored are not named; one label map has no such note
        two = metrics.evaluate_registration(*grey, fixed_labels=layers[0], moving_labels=layers[1], labels=[1, 2])
        self.assertFalse(any("share" in n for n in two["notes"]))
        plain = metrics.evaluate_registration(*grey, fixed_labels=fixed, moving_labels=moving)
        self.assertFalse(any("share" in n for n in plain["notes"]))

    def test_refuses_what_is_no_label_map_or_off_grid(self) -> None:
        fixed, moving = _two_label_maps()
        grey = sitk.Cast(moving, sitk.sitkFloat32) * 0.5
        with self.assertRaisesRegex(InputError, "not whole numbers"):
            metrics.label_overlap(fixed, grey)
        shifted = sitk.Image(moving)
        shifted.SetOrigin((0.0, 0.0, 0.0))
        with self.assertRaises(InputError):
            metrics.label_overlap(fixed, shifted)


# LPS points and the same in RAS
LPS = np.array([[10.5, -20.25, 30.0], [-4.0, 5.5, -6.75], [0.0, 100.0, 12.5]])
RAS = LPS * [-1, -1, 1]
FCSV_COLUMNS = "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"


def _fcsv_rows(points: np.ndarray) -> str:
    return "".join(f"vtkMRMLMarkupsFiducialNode_{i},{p[0]},{p[1]},{p[2]},0,0,0,1,1,1,0,\"F-{i + 1}, a\",,vol1\n"
                   for i, p in enumerate(points))


def _mrk_json(points: np.ndarray, system: str | None, units: str | None = None,
              status: list[str] | None = None) -> str:
    markup: dict = {"type": "Fiducial", "controlPoints": [
        {"id": str(i + 1), "label": f"F-{i + 1}", "position": [float(v) for v in p],
         "positionStatus": (status or ["defined"] * len(points))[i]} for i, p in enumerate(points)]}
    if system:
        markup["coordinateSystem"] = system
    if units:
        markup["coordinateUnits"] = units
    return json.dumps({"@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
                                  "Resources/Schema/markups-schema-v1.0.3.json#", "markups": [markup]})


class LandmarkFilesTest(unittest.TestCase):
    def setUp(self) -> None:
        self._tmp = tempfile.TemporaryDirectory()
        self.dir = self._tmp.name

    def tearDown(self) -> None:
        self._tmp.cleanup()

    def _write(self, name: str, text: str) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_every_format_in_lps_and_ras_reads_the_same_lps_points(self) -> None:
        image = _placed(np.zeros((30, 40, 50), np.uint8))
        index = np.array([[3, 7, 2], [40, 1, 29], [0, 39, 11]])
        from_index = np.array([image.TransformIndexToPhysicalPoint([int(v) for v in p]) for p in index])
        files = {
            "lps.fcsv": "# Markups fiducial file version = 5.6\n# CoordinateSystem = LPS\n" + FCSV_COLUMNS
                        + _fcsv_rows(LPS),
            "ras.fcsv": "# Markups fiducial file version = 4.11\n# CoordinateSystem = RAS\n" + FCSV_COLUMNS
                        + _fcsv_rows(RAS),
            "ras0.fcsv": "# Markups fiducial file version = 4.6\n# CoordinateSystem = 0\n" + FCSV_COLUMNS
                         + _fcsv_rows(RAS),
            "lps1.fcsv": "# Markups fiducial file version = 4.10\n# CoordinateSystem = 1\n" + FCSV_COLUMNS
                         + _fcsv_rows(LPS),
            # no CoordinateSystem line: LPS, as Slicer >= 4.11 reads it (the storage node's default)
            "noline.fcsv": "# Markups fiducial file version = 4.11\n" + FCSV_COLUMNS + _fcsv_rows(LPS),
            # no version line: a Slicer 3 list, label,x,y,z in RAS
            "slicer3.fcsv": "".join(f"F-{i},{p[0]},{p[1]},{p[2]},1,1\n" for i, p in enumerate(RAS)),
            "lps.mrk.json": _mrk_json(LPS, "LPS"),
            "ras.mrk.json": _mrk_json(RAS, "RAS"),
            "default.mrk.json": _mrk_json(LPS, None),
            "points.txt": "point\n3\n" + "".join(" ".join(str(v) for v in p) + "\n" for p in LPS),
            "points.pts": "point 3\n" + "".join(" ".join(str(v) for v in p) + "\n" for p in LPS),
            "points.csv": "x,y,z,t,label\n" + "".join(f"{p[0]},{p[1]},{p[2]},0,L{i}\n" for i, p in enumerate(LPS)),
        }
        for name, text in files.items():
            with self.subTest(name):
                lm = read_landmarks(self._write(name, text), image)
                np.testing.assert_allclose(lm.points, LPS, atol=1e-9)
        lm = read_landmarks(self._write("a.fcsv", files["ras.fcsv"]))
        self.assertEqual(lm.labels[0], "F-1, a")  # a quoted label with a comma
        self.assertIn("LPS", read_landmarks(self._write("b.fcsv", files["noline.fcsv"])).coordinate_system)
        self.assertEqual(read_landmarks(self._write("c.fcsv", files["slicer3.fcsv"])).labels, ["F-0", "F-1", "F-2"])
        # elastix 'index': through the image's geometry (direction, spacing, origin), rounded as transformix does
        text = "index\n3\n" + "".join(" ".join(str(v + 0.3) for v in p) + "\n" for p in index)
        np.testing.assert_allclose(read_landmarks(self._write("i.txt", text), image).points, from_index, atol=1e-9)

    def test_unplaced_points_are_left_out_in_pairs(self) -> None:
        fixed = read_landmarks(self._write("f.mrk.json", _mrk_json(LPS, "LPS", status=["defined", "undefined",
                                                                                       "defined"])))
        self.assertEqual(fixed.placed.tolist(), [True, False, True])
        moving = read_landmarks(self._write("m.csv", "x,y,z,t\n" + "".join(f"{p[0]},{p[1]},{p[2]},0\n"
                                                                            for p in LPS + 1)))
        fp, mp, notes = paired_landmarks(fixed, moving)
        np.testing.assert_allclose(fp, LPS[[0, 2]])
        np.testing.assert_allclose(mp, LPS[[0, 2]] + 1)  # the third fixed point still pairs with the third moving
        self.assertEqual(len(notes), 1)
        self.assertIn("landmark 2 (F-2) left out: unplaced in", notes[0])
        empty = self._write("e.fcsv", "# Markups fiducial file version = 5.6\n# CoordinateSystem = LPS\n" + FCSV_COLUMNS
                            + "0,,,,0,0,0,1,1,1,0,F-1,,\n")
        with self.assertRaisesRegex(InputError, "no placed point"):
            read_landmarks(empty)

    def test_bad_files_are_refused_naming_the_problem(self) -> None:
        cases = {
            "count.txt": ("point\n4\n1 2 3\n4 5 6\n", "says it holds 4 points but has 2"),
            "bare.txt": ("2\n1 2 3\n4 5 6\n", "does not start with 'point' or 'index'"),
            "ragged.txt": ("point\n2\n1 2 3\n4 5\n", "do not all hold"),
            "word.txt": ("point\n1\n1 two 3\n", "'two', not a number"),
            "noheader.csv": ("1,2,3,0\n4,5,6,0\n", "no header naming its x, y"),
            # antsApplyTransformsToPoints takes the first 3 columns (label, x, y here) as the point
            "order.csv": ("label,x,y,z\n1,2,3,4\n", "takes the first 3 columns as x, y, z"),
            "system.fcsv": ("# CoordinateSystem = XYZ\n" + FCSV_COLUMNS + _fcsv_rows(LPS), "'XYZ'"),
            "unversioned_lps.fcsv": ("# CoordinateSystem = LPS\n" + FCSV_COLUMNS + _fcsv_rows(LPS),
                                     "no '# Markups fiducial file version' line"),
            "columns.fcsv": ("# Markups fiducial file version = 5.6\n# columns = id,z,y,x,ow,ox,oy,oz,vis,sel,lock,label\n"
                             + _fcsv_rows(LPS), "puts x, y, z elsewhere"),
            "um.mrk.json": (_mrk_json(LPS * 1000, "LPS", "um"), "coordinateUnits 'um', not mm"),
            "two.mrk.json": (json.dumps({"markups": [json.loads(_mrk_json(LPS, "LPS"))["markups"][0]] * 2}),
                             "2 markups with control points"),
            "broken.mrk.json": ("{", "not valid JSON"),
            "points.xyz": ("1 2 3\n", "names no landmark format"),
        }
        for name, (text, message) in cases.items():
            with self.subTest(name), self.assertRaisesRegex(InputError, message):
                read_landmarks(self._write(name, text))
        with self.assertRaisesRegex(InputError, "the image they index is needed"):
            read_landmarks(self._write("i.txt", "index\n1\n1 2 3\n"))
        with self.assertRaisesRegex(InputError, "not found"):
            read_landmarks(os.path.join(self.dir, "none.fcsv"))
        three = read_landmarks(self._write("3.txt", "point\n3\n" + "1 2 3\n" * 3))
        two = read_landmarks(self._write("2.txt", "point\n2\n" + "1 2 3\n" * 2))
        with self.assertRaisesRegex(InputError, "different numbers of points: 3 in"):
            paired_landmarks(three, two)


try:
    import slicer  # the slicer-core wheel: Slicer's own markups storage nodes

    HAVE_MARKUPS = hasattr(slicer, "vtkMRMLMarkupsFiducialStorageNode")
except ImportError:  # pragma: no cover - slicer-core is a test dependency
    HAVE_MARKUPS = False


@unittest.skipUnless(HAVE_MARKUPS, "needs Slicer's markups libraries (pip install slicer-core)")
class SlicerReadsTheSameMarkupsTest(unittest.TestCase):
    """read_landmarks gives the points Slicer's own readers (vtkMRMLMarkupsFiducialStorageNode,
    vtkMRMLMarkupsJsonStorageNode, slicer-core) load from the same file, converted RAS -> LPS, with the same
    points placed."""

    def _slicer(self, path: str) -> tuple[np.ndarray, list[bool]]:
        scene = slicer.vtkMRMLScene()
        node = slicer.vtkMRMLMarkupsFiducialNode()
        scene.AddNode(node)
        storage = (slicer.vtkMRMLMarkupsJsonStorageNode() if path.endswith(".json")
                   else slicer.vtkMRMLMarkupsFiducialStorageNode())
        scene.AddNode(storage)
        storage.SetFileName(path)
        self.assertTrue(storage.ReadData(node))
        ras, placed = [], []
        for i in range(node.GetNumberOfControlPoints()):
            p = [0.0, 0.0, 0.0]
            node.GetNthControlPointPosition(i, p)
            ras.append(p)
            placed.append(node.GetNthControlPointPositionStatus(i) == slicer.vtkMRMLMarkupsNode.PositionDefined)
        from MultimodalFusionLib.mrml import ras_points_to_lps

        return ras_points_to_lps(ras), placed

    def test_fcsv_and_mrk_json_as_slicer_reads_them(self) -> None:
        rows = _fcsv_rows(LPS)
        version = "# Markups fiducial file version = 5.6\n"
        # Slicer 5 writes an unplaced point with its last position and the status in an unnamed 15th field
        status_rows = "".join(line[:-1] + f",{st},0\n" for line, st in zip(rows.splitlines(True), (2, 0, 3)))
        files = {
            "lps.fcsv": version + "# CoordinateSystem = LPS\n" + FCSV_COLUMNS + rows,
            "ras0.fcsv": "# Markups fiducial file version = 4.6\n# CoordinateSystem = 0\n" + FCSV_COLUMNS + rows,
            "lps1.fcsv": "# Markups fiducial file version = 4.10\n# CoordinateSystem = 1\n" + FCSV_COLUMNS + rows,
            "noline.fcsv": version + FCSV_COLUMNS + rows,
            "slicer3.fcsv": "".join(f"F-{i},{p[0]},{p[1]},{p[2]},1,1\n" for i, p in enumerate(LPS)),
            "slicer3_ras.fcsv": "# CoordinateSystem = RAS\n" + "".join(f"F,{p[0]},{p[1]},{p[2]}\n" for p in LPS),
            "status.fcsv": version + "# CoordinateSystem = LPS\n" + FCSV_COLUMNS + status_rows,
            "default.mrk.json": _mrk_json(LPS, None),
            "ras.mrk.json": _mrk_json(LPS, "RAS"),
            "zero.mrk.json": _mrk_json(LPS, "0"),
            "status.mrk.json": _mrk_json(LPS, "LPS", status=["defined", "undefined", "missing"]),
        }
        with tempfile.TemporaryDirectory() as d:
            for name, text in files.items():
                with self.subTest(name):
                    path = os.path.join(d, name)
                    with open(path, "w") as f:
                        f.write(text)
                    expected, placed = self._slicer(path)
                    lm = read_landmarks(path)
                    self.assertEqual(lm.placed.tolist(), placed)
                    np.testing.assert_allclose(lm.points[lm.placed], expected[placed], atol=1e-9)
        self.assertEqual(placed, [True, False, False])  # the statuses were read, by Slicer and here


class RasToLpsInMrmlTest(unittest.TestCase):
    """DESIGN.md: ITK is LPS, Slicer is RAS, converted in mrml.py and nowhere else; landmarks.py uses it."""

    def test_ras_points_to_lps_flips_x_and_y_keeps_the_input_and_nan(self) -> None:
        from MultimodalFusionLib import landmarks, mrml

        ras = np.array([[1.0, -2.0, 3.0], [np.nan, np.nan, np.nan]])
        lps = mrml.ras_points_to_lps(ras)
        np.testing.assert_array_equal(lps[0], [-1.0, 2.0, 3.0])
        self.assertTrue(np.isnan(lps[1]).all())
        np.testing.assert_array_equal(ras[0], [1.0, -2.0, 3.0])  # not modified
        np.testing.assert_array_equal(mrml.ras_points_to_lps(lps[:1]), ras[:1])  # its own inverse
        np.testing.assert_array_equal(mrml.ras_points_to_lps([[1.0, 2.0]]), [[-1.0, -2.0]])
        self.assertIs(landmarks.ras_points_to_lps, mrml.ras_points_to_lps)


def _rigid() -> sitk.Transform:
    tx = sitk.Euler3DTransform()
    tx.SetCenter((20.0, 10.0, 40.0))
    tx.SetRotation(0.0, 0.0, np.deg2rad(10.0))
    tx.SetTranslation((6.0, -4.0, 3.0))
    return tx


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = _io.StringIO(), _io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(list(argv))
    return rc, out.getvalue(), err.getvalue()


class EvaluateRegistrationTest(unittest.TestCase):
    """Moving data made from the fixed data by a known transform T (fixed -> moving points): through T, Dice 1
    and TRE 0; before, neither."""

    def setUp(self) -> None:
        shape = (24, 48, 44)
        labels = np.zeros(shape, np.uint8)
        labels[_ellipsoid(shape, (18, 22, 12), (9, 12, 6))] = 1
        labels[_ellipsoid(shape, (30, 30, 12), (5, 6, 4))] = 2
        self.fixed_labels = _placed(labels)
        self.fixed = sitk.Cast(self.fixed_labels, sitk.sitkFloat32) * 100.0
        self.tx = _rigid()
        # the moving data: the fixed data seen through T's inverse (moving(T(x)) = fixed(x)), on a grid of its own
        grid = sitk.Image(100, 110, 34, sitk.sitkUInt8)  # holding all of the fixed grid seen through T
        grid.SetSpacing((1.0, 1.0, 3.0))
        grid.SetOrigin((-40.0, -30.0, 0.0))
        self.moving_labels = resample(self.fixed_labels, grid, self.tx.GetInverse(), interpolation="nearest")
        self.moving = resample(self.fixed, grid, self.tx.GetInverse())
        self.fixed_points = np.array([[12.0, 9.0, 30.0], [30.0, 20.0, 45.0], [5.0, 40.0, 50.0], [25.0, 0.0, 35.0]])
        self.moving_points = np.array([self.tx.TransformPoint(p.tolist()) for p in self.fixed_points])

    def test_through_the_transform_dice_is_1_and_tre_0(self) -> None:
        out = metrics.evaluate_registration(self.fixed, self.moving, self.tx, fixed_labels=self.fixed_labels,
                                            moving_labels=self.moving_labels, fixed_landmarks=self.fixed_points,
                                            moving_landmarks=self.moving_points)
        before, after = out["labels"]["before"]["mean"], out["labels"]["after"]["mean"]
        self.assertLess(before["dice"], 0.6)
        self.assertGreater(after["dice"], 0.97)  # nearest-neighbour twice: a few voxels at the edges
        self.assertLess(after["hd95"], 1.5)  # within about a voxel
        self.assertGreater(before["hd95"], 5.0)
        self.assertLess(out["landmarks"]["after"]["max"], 1e-9)
        expected = np.linalg.norm(self.moving_points - self.fixed_points, axis=1).mean()
        self.assertAlmostEqual(out["landmarks"]["before"]["mean"], expected, places=9)
        self.assertGreater(out["images"]["after"]["NCC"], out["images"]["before"]["NCC"])

    def test_a_whole_voxel_shift_gives_dice_exactly_1(self) -> None:
        shift = sitk.TranslationTransform(3, np.array(self.fixed_labels.TransformIndexToPhysicalPoint((3, 2, 1)))
                                          - np.array(self.fixed_labels.GetOrigin()))
        moving_labels = resample(self.fixed_labels, self.fixed_labels, shift.GetInverse(), interpolation="nearest")
        out = metrics.evaluate_registration(self.fixed, self.fixed, shift, fixed_labels=self.fixed_labels,
                                            moving_labels=moving_labels, labels=[1])
        self.assertEqual(out["labels"]["after"]["labels"][1]["dice"], 1.0)
        self.assertEqual(out["labels"]["after"]["labels"][1]["hausdorff"], 0.0)
        with self.assertRaisesRegex(InputError, "Only one label map"):
            metrics.evaluate_registration(self.fixed, self.fixed, shift, fixed_labels=self.fixed_labels)

    def test_a_label_in_one_map_only_is_left_out_as_learn2reg_leaves_it_out(self) -> None:
        # Learn2Reg's compute_dice/compute_hd95: NaN (left out of nanmean) where the fixed or the unwarped moving
        # map lacks the label; the old mean counted it as Dice 0 (after: (0.98 + 0.97 + 0) / 3)
        extra = sitk.GetArrayFromImage(self.fixed_labels)
        extra[2:4, 2:6, 2:6] = 7  # in the fixed map only
        fixed_labels = _placed(extra)
        out = metrics.evaluate_registration(self.fixed, self.moving, self.tx, fixed_labels=fixed_labels,
                                            moving_labels=self.moving_labels)
        after = out["labels"]["after"]
        self.assertEqual(sorted(after["labels"]), [1, 2])
        self.assertEqual(out["labels"]["left_out"], [7])
        self.assertGreater(after["mean"]["dice"], 0.97)
        self.assertTrue(any("label 7 is in the fixed label map only" in n for n in out["notes"]), out["notes"])
        with self.assertRaisesRegex(InputError, "No label asked for is in both label maps"):
            metrics.evaluate_registration(self.fixed, self.moving, self.tx, fixed_labels=fixed_labels,
                                          moving_labels=self.moving_labels, labels=[7])

    def test_labels_asked_for_follow_one_rule_in_both_functions(self) -> None:
        # evaluate_registration had matched the labels asked for against the maps before label_overlap checked
        # them: 0 (the background, in both maps) was left out "in neither label map", and 1.5 or no label at all
        # were "no label asked for is in both label maps (fixed: 1, 2; moving: 1, 2)", naming labels they share
        for labels, message in (([0, 1], "Label 0 was asked for: 0 is the background"),
                                ([1.5], "Label 1.5 is not a whole number"), ([True], "Label True is not a whole"),
                                ([], "No label was given to score")):
            with self.subTest(labels=labels), self.assertRaisesRegex(InputError, message):
                metrics.evaluate_registration(self.fixed, self.moving, self.tx, fixed_labels=self.fixed_labels,
                                              moving_labels=self.moving_labels, labels=labels)
            with self.subTest(labels=labels, alone=True), self.assertRaisesRegex(InputError, message):
                metrics.label_overlap(self.fixed_labels, self.fixed_labels, labels)
        out = metrics.evaluate_registration(self.fixed, self.moving, self.tx, fixed_labels=self.fixed_labels,
                                            moving_labels=self.moving_labels, labels=[2, 2.0, np.int64(2)])
        self.assertEqual(list(out["labels"]["after"]["labels"]), [2])
        self.assertEqual(out["labels"]["left_out"], [])

    def test_a_fixed_label_map_on_a_cropped_extent_scores_as_the_whole_map(self) -> None:
        # Slicer saves a .seg.nrrd on the segments' own extent (a box inside the volume): the moving labels were
        # resampled onto that box, those outside it dropped, and Dice rose (before: 0.133 against 0.096 in the
        # reviewer's case); any imperfect alignment rose the same way "after"
        where = np.argwhere(sitk.GetArrayViewFromImage(self.fixed_labels) > 0)
        lo, hi = where.min(axis=0)[::-1], where.max(axis=0)[::-1]
        cropped = sitk.RegionOfInterest(self.fixed_labels, [int(v) for v in hi - lo + 1], [int(v) for v in lo])
        self.assertLess(np.prod(cropped.GetSize()), 0.5 * np.prod(self.fixed_labels.GetSize()))
        off = sitk.CompositeTransform([self.tx, sitk.TranslationTransform(3, (2.5, -3.0, 4.0))])  # imperfect
        for tx in (self.tx, off):
            whole = metrics.evaluate_registration(self.fixed, self.moving, tx, fixed_labels=self.fixed_labels,
                                                  moving_labels=self.moving_labels)
            crop = metrics.evaluate_registration(self.fixed, self.moving, tx, fixed_labels=cropped,
                                                 moving_labels=self.moving_labels)
            for when in ("before", "after"):
                for label in (1, 2):
                    for key in ("dice", "hd95"):
                        self.assertAlmostEqual(crop["labels"][when]["labels"][label][key],
                                               whole["labels"][when]["labels"][label][key], places=12,
                                               msg=f"{when} label {label} {key}")
            grid = crop["labels"]["before"]["grid"]  # the box holding both maps' labels, within the fixed image
            self.assertTrue(all(c <= g <= f for c, g, f in zip(cropped.GetSize(), grid["size"],
                                                               self.fixed_labels.GetSize())), grid)
            self.assertNotEqual(grid["size"], list(cropped.GetSize()))

    def test_moving_labels_outside_the_fixed_field_of_view_are_counted_in_a_note(self) -> None:
        # half of the fixed image: the moving labels reach beyond it before and after; they were dropped silently
        half = [s // 2 for s in self.fixed_labels.GetSize()[:2]] + [self.fixed_labels.GetSize()[2]]
        fixed_labels = sitk.RegionOfInterest(self.fixed_labels, half, [0, 0, 0])
        fixed = sitk.RegionOfInterest(self.fixed, half, [0, 0, 0])
        out = metrics.evaluate_registration(fixed, self.moving, self.tx, fixed_labels=fixed_labels,
                                            moving_labels=self.moving_labels)
        # the voxels the moving label 1 has through T on the whole fixed grid, less those on the half grid
        whole = sitk.GetArrayFromImage(resample(self.moving_labels, self.fixed_labels, self.tx, interpolation="nearest"))
        part = sitk.GetArrayFromImage(resample(self.moving_labels, fixed_labels, self.tx, interpolation="nearest"))
        expected = int(np.count_nonzero(whole == 1) - np.count_nonzero(part == 1))
        self.assertGreater(expected, 100)
        self.assertEqual(out["labels"]["after"]["outside"][1], expected)
        self.assertTrue(any(n.startswith(f"after: {expected} of the {int(np.count_nonzero(whole == 1))} voxels of "
                                         "label 1 of the moving label map lie outside the fixed image's field of view")
                            for n in out["notes"]), out["notes"])
        # a moving label thinner than the fixed voxels it is scored on vanishes: said, not only "missing"
        fine = sitk.Image([60, 60, 40], sitk.sitkUInt8)
        fine.SetSpacing((1.0, 1.0, 0.5))
        fine.SetOrigin(self.fixed_labels.GetOrigin())
        fine.SetDirection(self.fixed_labels.GetDirection())
        arr = sitk.GetArrayFromImage(resample(self.fixed_labels, fine, interpolation="nearest"))
        arr[3, 10:30, 10:30] = 3  # 1.5 mm: between the fixed slices at 0 and 3 mm
        thin = sitk.GetImageFromArray(arr)
        thin.CopyInformation(fine)
        fixed_arr = sitk.GetArrayFromImage(self.fixed_labels)
        fixed_arr[0, 0:2, 0:2] = 3
        out = metrics.evaluate_registration(self.fixed, self.fixed, None, fixed_labels=_placed(fixed_arr),
                                            moving_labels=thin)
        self.assertTrue(any("label 3 has 400 voxels in the moving label map (1 x 1 x 0.5 mm) and none on the fixed "
                            "label map's 0.8 x 1.3 x 3 mm voxels it is scored on" in n for n in out["notes"]),
                        out["notes"])

    def test_the_transform_direction_is_the_same_for_labels_and_landmarks(self) -> None:
        # an affine with shear (not its own inverse): fixed -> moving scores well for both, the inverse badly for both
        tx = sitk.AffineTransform(3)
        tx.SetMatrix([1.0, 0.25, 0.0, 0.0, 1.0, 0.1, 0.0, 0.0, 1.0])
        tx.SetCenter((20.0, 10.0, 40.0))
        tx.SetTranslation((5.0, -3.0, 2.0))
        grid = sitk.Image(100, 110, 34, sitk.sitkUInt8)
        grid.SetSpacing((1.0, 1.0, 3.0))
        grid.SetOrigin((-40.0, -30.0, 0.0))
        moving_labels = resample(self.fixed_labels, grid, tx.GetInverse(), interpolation="nearest")
        moving_points = np.array([tx.TransformPoint(p.tolist()) for p in self.fixed_points])
        kw = dict(fixed_labels=self.fixed_labels, moving_labels=moving_labels, fixed_landmarks=self.fixed_points,
                  moving_landmarks=moving_points)
        right = metrics.evaluate_registration(self.fixed, self.fixed, tx, **kw)
        wrong = metrics.evaluate_registration(self.fixed, self.fixed, tx.GetInverse(), **kw)
        self.assertGreater(right["labels"]["after"]["mean"]["dice"], 0.95)
        self.assertLess(right["landmarks"]["after"]["max"], 1e-9)
        self.assertLess(wrong["labels"]["after"]["mean"]["dice"], right["labels"]["before"]["mean"]["dice"] + 0.05)
        self.assertGreater(wrong["landmarks"]["after"]["mean"], 5.0)
        # --invert of the inverse's file is the transform itself: the same numbers through the command line
        with tempfile.TemporaryDirectory() as d:
            paths = {k: os.path.join(d, k) for k in ("f.nii.gz", "fl.nii.gz", "ml.nii.gz", "inv.tfm")}
            write_image(self.fixed, paths["f.nii.gz"])
            write_image(self.fixed_labels, paths["fl.nii.gz"])
            write_image(moving_labels, paths["ml.nii.gz"])
            write_transform(tx.GetInverse(), paths["inv.tfm"])
            rc, out, err = run_cli("evaluate-registration", paths["f.nii.gz"], paths["f.nii.gz"], "--fixed-labels",
                                   paths["fl.nii.gz"], "--moving-labels", paths["ml.nii.gz"], "--transform",
                                   paths["inv.tfm"], "--invert", "--json")
            self.assertEqual(rc, 0, err)
            self.assertAlmostEqual(json.loads(out)["labels"]["after"]["mean"]["dice"],
                                   right["labels"]["after"]["mean"]["dice"], places=9)

    def test_float_labels_past_exact_whole_numbers_and_wrong_dimensions_are_refused(self) -> None:
        labels = sitk.Cast(self.fixed_labels, sitk.sitkFloat32)
        out = metrics.label_overlap(labels, self.fixed_labels)  # float labels holding whole numbers: fine
        self.assertEqual(out["mean"]["dice"], 1.0)
        for value, pixel in ((1e20, sitk.sitkFloat64), (2.0 ** 25, sitk.sitkFloat32)):
            big = sitk.Cast(self.fixed_labels, pixel) * value  # 1e20 had wrapped to label -9223372036854775808
            with self.subTest(value), self.assertRaisesRegex(InputError, "cannot hold every whole number"):
                metrics.label_overlap(big, big)
        flat = self.fixed_labels[:, :, 5]
        with self.assertRaisesRegex(InputError, "The moving label map is 2D but the moving image is 3D"):
            metrics.evaluate_registration(self.fixed, self.moving, fixed_labels=self.fixed_labels, moving_labels=flat)
        with self.assertRaisesRegex(InputError, "The landmarks are 2D but the images are 3D"):
            # no transform: "before" and "after" both the identity, where tre had nothing to check against
            metrics.evaluate_registration(self.fixed, self.moving, fixed_landmarks=self.fixed_points[:, :2],
                                          moving_landmarks=self.moving_points[:, :2])

    def test_command_line_before_and_after(self) -> None:
        with tempfile.TemporaryDirectory() as d:
            paths = {}
            for name, image in (("f.nii.gz", self.fixed), ("m.nii.gz", self.moving),
                                ("fl.nii.gz", self.fixed_labels), ("ml.nii.gz", self.moving_labels)):
                paths[name] = os.path.join(d, name)
                write_image(image, paths[name])
            paths["t"] = write_transform(self.tx, os.path.join(d, "t.tfm"))
            paths["fp"] = os.path.join(d, "fixed.fcsv")  # Slicer, RAS
            with open(paths["fp"], "w") as f:
                f.write("# CoordinateSystem = RAS\n" + FCSV_COLUMNS + _fcsv_rows(self.fixed_points * [-1, -1, 1]))
            paths["mp"] = os.path.join(d, "moving.csv")  # ANTs, LPS
            with open(paths["mp"], "w") as f:
                f.write("x,y,z,t\n" + "".join(",".join(repr(float(v)) for v in p) + ",0\n" for p in self.moving_points))
            common = [paths["f.nii.gz"], paths["m.nii.gz"], "--fixed-labels", paths["fl.nii.gz"], "--moving-labels",
                      paths["ml.nii.gz"], "--fixed-landmarks", paths["fp"], "--moving-landmarks", paths["mp"]]
            rc, out, err = run_cli("evaluate-registration", *common, "--transform", paths["t"], "--json")
            self.assertEqual(rc, 0, err)
            result = json.loads(out)
            self.assertGreater(result["labels"]["after"]["mean"]["dice"], 0.97)
            self.assertLess(result["landmarks"]["after"]["max"], 1e-6)
            self.assertGreater(result["landmarks"]["before"]["mean"], 5.0)
            rc, out, err = run_cli("evaluate-registration", *common, "--transform", paths["t"])
            self.assertEqual(rc, 0, err)
            self.assertRegex(out, r"Dice\s+0\.\d+\s+0\.9[789]")
            self.assertIn("TRE mm", out)
            rc, out, err = run_cli("evaluate-registration", *common[:4])
            self.assertEqual(rc, 2)
            self.assertIn("--fixed-labels was given without --moving-labels", err)
            rc, out, err = run_cli("evaluate-registration", *common[:2], "--invert")  # resample's check, shared
            self.assertEqual(rc, 2)
            self.assertIn("--invert was given without --transform", err)
        help_text = _io.StringIO()
        with contextlib.redirect_stdout(help_text), contextlib.redirect_stderr(_io.StringIO()):
            with contextlib.suppress(SystemExit):
                cli.main(["evaluate-registration", "--help"])
        self.assertIn("maps FIXED points into MOVING", " ".join(help_text.getvalue().split()))


def moved_ct_pair() -> tuple[sitk.Image, sitk.Image, sitk.Transform]:
    """(fixed, moving, T): a z-scored MR (background -3.6, head 0.5, an inner structure 2.0) and the CT of the same
    head (air -1000, 40, 700) moved by a known rigid transform T (fixed -> moving points: 12 degrees, (5, -4, 3) mm)
    on the fixed grid, where T maps 21% of the fixed voxels outside the moved CT (its corners, background in both)."""
    shape = (24, 48, 44)
    head, inner = _ellipsoid(shape, (22, 24, 12), (17, 20, 9)), _ellipsoid(shape, (18, 22, 12), (7, 9, 5))
    mr = np.where(head, 0.5, -3.6).astype(np.float32)
    mr[inner] = 2.0
    ct = np.where(head, 40.0, -1000.0).astype(np.float32)
    ct[inner] = 700.0
    fixed, ct_on_fixed = _placed(mr), _placed(ct)
    centre = fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in fixed.GetSize()])
    tx = sitk.Euler3DTransform(centre, 0.0, 0.0, np.deg2rad(12.0), (5.0, -4.0, 3.0))
    return fixed, resample(ct_on_fixed, ct_on_fixed, tx.GetInverse(), default_value=-1000.0), tx


class AlignmentOverTheOverlapTest(unittest.TestCase):
    """MI, NMI and NCC are taken over the fixed voxels each state maps inside the moving image, as ITK's and ANTs'
    metrics take them: the voxels beyond it, resampled as 0, had been compared with the rest, and against a
    background that is not 0 (a CT's air, z-scored MR) a correct registration scored worse than none."""

    def test_a_correct_registration_scores_higher_than_none_and_as_itk_counts(self) -> None:
        fixed, moving, tx = moved_ct_pair()
        images = metrics.evaluate_registration(fixed, moving, tx)["images"]
        before, after = images["before"], images["after"]
        self.assertGreater(after["NCC"], 0.98)  # 0.989: the linear interpolation of the CT's edges (it had been 0.669)
        # every fixed voxel lies in the moving grid as the images lie; through T 21% lie beyond it (0 when resampled)
        self.assertEqual(before["voxels"], fixed.GetNumberOfPixels())
        reached = metrics.reached_voxels(fixed, moving, tx)
        self.assertEqual(after["voxels"], np.count_nonzero(sitk.GetArrayViewFromImage(reached)))
        self.assertAlmostEqual(1.0 - after["voxels"] / fixed.GetNumberOfPixels(), 0.21, delta=0.01)
        # the old count, every voxel of the fixed grid: after below before (0.669 < 0.701)
        everywhere = metrics.registration_metrics(fixed, resample(moving, fixed, tx))["NCC"]
        self.assertLess(everywhere, before["NCC"])
        self.assertGreater(after["MI"], before["MI"])
        self.assertGreater(after["NMI"], before["NMI"])
        # ITK's correlation metric (-NCC^2, every fixed voxel, the points it maps inside the moving image) agrees
        for tx_state, row in ((None, before), (tx, after)):
            itk = sitk.ImageRegistrationMethod()
            itk.SetMetricAsCorrelation()
            itk.SetInterpolator(sitk.sitkLinear)
            itk.SetInitialTransform(tx_state if tx_state is not None else sitk.Euler3DTransform())
            self.assertAlmostEqual(itk.MetricEvaluate(fixed, moving), -row["NCC"] ** 2, places=9)
        # the fixed mask is intersected with the overlap, not replaced by it
        mask = sitk.Image(fixed.GetSize(), sitk.sitkUInt8)
        mask.CopyInformation(fixed)
        mask[:, :, :12] = 1
        masked = metrics.alignment_metrics(fixed, moving, tx, mask)
        in_both = sitk.GetArrayViewFromImage(reached)[:12].sum()
        self.assertEqual(masked["voxels"], in_both)
        self.assertLess(in_both, fixed.GetNumberOfPixels() / 2)

    def test_the_table_shows_the_voxels_compared_and_no_overlap_is_named(self) -> None:
        fixed, moving, tx = moved_ct_pair()
        with tempfile.TemporaryDirectory() as d:
            paths = [write_image(fixed, os.path.join(d, "f.nrrd")), write_image(moving, os.path.join(d, "m.nrrd"))]
            rc, out, err = run_cli("evaluate-registration", *paths, "--transform",
                                   write_transform(tx, os.path.join(d, "t.tfm")))
            self.assertEqual(rc, 0, err)
            self.assertRegex(out, r"NCC\s+0\.70\d+\s+0\.98\d+")
            self.assertRegex(out, rf"voxels compared\s+{fixed.GetNumberOfPixels()}\s+3\d{{4}}\n")  # 39974
        # a transform that sends the fixed grid beyond the moving image: with landmarks (or label maps), which still
        # say how far off it is, n/a over 0 voxels and a note naming the fix; the images alone are refused below
        away = sitk.TranslationTransform(3, (500.0, 0.0, 0.0))
        points = np.array([[10.0, 10.0, 10.0], [20.0, 5.0, 30.0]])
        scored = metrics.evaluate_registration(fixed, moving, away, fixed_landmarks=points,
                                               moving_landmarks=points + (500.0, 0.0, 0.0))
        self.assertAlmostEqual(scored["landmarks"]["after"]["mean"], 0.0)
        self.assertEqual(scored["images"]["after"]["voxels"], 0)
        self.assertTrue(np.isnan(scored["images"]["after"]["NCC"]))
        self.assertTrue(any("covers 0 of the fixed image's voxels" in n and "fixed -> moving" in n
                            for n in scored["notes"]), scored["notes"])
        with self.assertRaisesRegex(InputError, "through the transform, covers 0 of the fixed image's voxels"):
            metrics.alignment_metrics(fixed, moving, away)  # one state alone: refused
        # images that start apart (a registration from their centres): "before" is NaN over 0 voxels, not an error
        far = sitk.Image(moving)
        far.SetOrigin(tuple(np.add(moving.GetOrigin(), (500.0, 0.0, 0.0))))
        apart = metrics.alignment_before_after(fixed, far, away)
        self.assertEqual(apart["before"]["voxels"], 0)
        self.assertTrue(np.isnan(apart["before"]["NCC"]))
        self.assertEqual(apart["after"], metrics.alignment_metrics(fixed, moving))
        # the table prints either state's NaN as n/a, as the report and fuse's table do (it had printed "nan")
        with tempfile.TemporaryDirectory() as d:
            f, m, m_far = (write_image(image, os.path.join(d, name))
                           for image, name in ((fixed, "f.nrrd"), (moving, "m.nrrd"), (far, "far.nrrd")))
            t = write_transform(away, os.path.join(d, "away.tfm"))
            rc, out, err = run_cli("evaluate-registration", f, m, "--transform", t)
            self.assertEqual(rc, 2, err)  # nothing else scored: refused (test_nothing_to_compare_is_refused)
            self.assertIn("through the transform, covers 0 of the fixed image's voxels: fewer than two", err)
            rc, out, err = run_cli("evaluate-registration", f, m_far, "--transform", t)
            self.assertEqual(rc, 0, err)
            self.assertRegex(out, r"NCC\s+n/a\s+0\.70\d+\n")
            self.assertNotIn("nan", out)
            # and run's alignment line: two slices placed 1 m apart, registered from their centres
            y, x = np.mgrid[:64, :64]
            blobs = 100.0 * np.exp(-((x - 30) ** 2 + (y - 34) ** 2) / 150.0) + 50.0 * np.exp(
                -((x - 40) ** 2 + (y - 20) ** 2) / 40.0)
            slice_apart = sitk.GetImageFromArray(np.roll(blobs, 3, 1).astype(np.float32))
            slice_apart.SetOrigin((1000.0, 0.0))
            rc, out, err = run_cli("run", write_image(sitk.GetImageFromArray(blobs.astype(np.float32)),
                                                      os.path.join(d, "f2.nrrd")),
                                   write_image(slice_apart, os.path.join(d, "m2.nrrd")), "-o", os.path.join(d, "run"),
                                   "--stages", "rigid", "--seed", "0", "--methods", "average")
            self.assertEqual(rc, 0, err)
            self.assertRegex(out, r"alignment: MI n/a -> \d\.\d{3}, NCC n/a -> [01]\.\d{3} \(over the 0 -> \d+ ")

    def test_nothing_to_compare_is_refused_and_a_blank_image_is_named(self) -> None:
        """Images that share no voxel (as they lie, or through the transform), with nothing else scored, had printed
        n/a and 'voxels compared 0', rc 0 and no word; an all-zero moving image had scored NMI 1.0000 before and
        after (1 is what NMI reads for any image against a constant one). register refuses both pairs' images so."""
        fixed, moving, tx = moved_ct_pair()
        far = sitk.Image(moving)
        far.SetOrigin(tuple(np.add(moving.GetOrigin(), (5000.0, 0.0, 0.0))))
        blank = sitk.Image(moving.GetSize(), sitk.sitkFloat32)
        blank.CopyInformation(moving)
        with tempfile.TemporaryDirectory() as d:
            f, m_far, m_blank, m = (write_image(image, os.path.join(d, name)) for image, name in
                                    ((fixed, "f.nrrd"), (far, "far.nrrd"), (blank, "blank.nrrd"), (moving, "m.nrrd")))
            for argv, said in (([f, m_far], "The moving image, as the images lie (no transform), covers 0 of the fixed "
                                            "image's voxels: fewer than two to compare."),
                               ([f, m, "--transform", write_transform(sitk.TranslationTransform(3, (5000.0, 0, 0)),
                                                                      os.path.join(d, "away.tfm"))],
                                "The moving image, through the transform, covers 0 of the fixed image's voxels"),
                               ([f, m_blank], "The moving image is constant (every voxel is 0); it holds no structure"),
                               ([m_blank, f], "The fixed image is constant (every voxel is 0)")):
                with self.subTest(said=said):
                    rc, out, err = run_cli("evaluate-registration", *argv)
                    self.assertEqual(rc, 2, out + err)
                    self.assertIn(said, err)
                    self.assertIn("Fix: ", err)
        for image in (far, blank):  # the engine (and so the Slicer Logic's evaluateRegistration) refuses them
            with self.assertRaises(InputError):
                metrics.evaluate_registration(fixed, image)
        # with landmarks scored too, a blank image's similarity is n/a with a note, not NMI 1.0
        points = np.array([[10.0, 10.0, 10.0], [20.0, 5.0, 30.0]])
        scored = metrics.evaluate_registration(fixed, blank, fixed_landmarks=points, moving_landmarks=points)
        for state in ("before", "after"):
            self.assertTrue(np.isnan(scored["images"][state]["NMI"]), scored["images"][state])
        self.assertTrue(any("The moving image is constant (every voxel is 0)" in n for n in scored["notes"]),
                        scored["notes"])
        # and two images apart, with landmarks: n/a and a note, the landmarks scored
        scored = metrics.evaluate_registration(fixed, far, fixed_landmarks=points, moving_landmarks=points)
        self.assertTrue(any("As the images lie (no transform) the moving image covers 0" in n for n in scored["notes"]))
        self.assertAlmostEqual(scored["landmarks"]["after"]["mean"], 0.0)


try:
    HAVE_SEGMENTATIONS = hasattr(slicer, "vtkMRMLSegmentationStorageNode")
except NameError:  # pragma: no cover - slicer-core is a test dependency
    HAVE_SEGMENTATIONS = False


@unittest.skipUnless(HAVE_SEGMENTATIONS, "needs Slicer's segmentation libraries (pip install slicer-core)")
class SegNrrdLabelFilesTest(unittest.TestCase):
    """``.seg.nrrd`` files as 3D Slicer writes them (vtkMRMLSegmentationStorageNode, slicer-core): segments matched
    by name as the Logic matches segmentation nodes, every layer read, an empty segment named."""

    @classmethod
    def setUpClass(cls) -> None:
        from MultimodalFusionLib import mrml

        cls.mrml = mrml
        data = EvaluateRegistrationTest("test_through_the_transform_dice_is_1_and_tre_0")
        data.setUp()
        cls.fixed, cls.moving, cls.tx = data.fixed, data.moving, data.tx
        cls.fixed_labels, cls.moving_labels = data.fixed_labels, data.moving_labels  # 1: liver, 2: kidney
        cls.folder = tempfile.TemporaryDirectory()
        cls.paths = {}
        for name, image in (("f.nrrd", cls.fixed), ("m.nrrd", cls.moving), ("ml.nii.gz", cls.moving_labels)):
            cls.paths[name] = os.path.join(cls.folder.name, name)
            write_image(image, cls.paths[name])
        cls.paths["t.tfm"] = write_transform(cls.tx, os.path.join(cls.folder.name, "t.tfm"))
        # the moving file numbers the two the other way round, and lists them in another order: kidney 1, liver 2
        swapped = sitk.GetArrayFromImage(cls.moving_labels)
        swapped = np.where(swapped == 1, 2, np.where(swapped == 2, 1, 0)).astype(np.uint8)
        moving_swapped = sitk.GetImageFromArray(swapped)
        moving_swapped.CopyInformation(cls.moving_labels)
        union = [sitk.Cast(image > 0, sitk.sitkUInt8) for image in (cls.fixed_labels, cls.moving_labels)]
        cls._write("f.seg.nrrd", [(cls.fixed_labels, ["liver", "kidney"])])
        cls._write("m.seg.nrrd", [(moving_swapped, ["kidney", "liver"])])
        # a third segment over both: Slicer saves it in a second layer (a 2-component file)
        cls._write("f_layers.seg.nrrd", [(cls.fixed_labels, ["liver", "kidney"]), (union[0], ["both"])])
        cls._write("m_layers.seg.nrrd", [(moving_swapped, ["kidney", "liver"]), (union[1], ["both"])])
        cls._write("f_empty.seg.nrrd", [(cls.fixed_labels, ["liver", "kidney"])], empty="tumour")
        # more overlapping segments, one more layer each: 3 or 4 components, which read as colour look like RGB(A)
        cls._write("f_layers3.seg.nrrd", [(cls.fixed_labels, ["liver", "kidney"]), (union[0], ["both"]),
                                          (union[0], ["body"])])
        cls._write("f_layers4.seg.nrrd", [(cls.fixed_labels, ["liver", "kidney"]), (union[0], ["both"]),
                                          (union[0], ["body"]), (union[0], ["torso"])])
        # a tumour inside the liver, in a layer of its own under label value 3 (a header written here), and the moving
        # side as one plain label map (the tumour's voxels 3 there, no longer the liver's)
        shape = sitk.GetArrayViewFromImage(cls.fixed_labels).shape
        tumour = _ellipsoid(shape, (16, 20, 12), (4, 5, 3)) & (sitk.GetArrayFromImage(cls.fixed_labels) == 1)
        cls.fixed_tumour = sitk.GetImageFromArray(tumour.astype(np.uint8))
        cls.fixed_tumour.CopyInformation(cls.fixed_labels)
        layered = sitk.Compose(sitk.Cast(cls.fixed_labels, sitk.sitkUInt8), sitk.Cast(cls.fixed_tumour * 3,
                                                                                       sitk.sitkUInt8))
        for i, (segment_name, value, layer) in enumerate((("liver", 1, 0), ("kidney", 2, 0), ("tumour", 3, 1))):
            for key, text in (("ID", f"s{i}"), ("Name", segment_name), ("LabelValue", str(value)),
                              ("Layer", str(layer))):
                layered.SetMetaData(f"Segment{i}_{key}", text)
        cls.paths["f_tumour.seg.nrrd"] = os.path.join(cls.folder.name, "f_tumour.seg.nrrd")
        sitk.WriteImage(layered, cls.paths["f_tumour.seg.nrrd"])
        moving_tumour = resample(cls.fixed_tumour, cls.moving_labels, cls.tx.GetInverse(), interpolation="nearest")
        cls.moving_tumour = sitk.Cast(sitk.Mask(cls.moving_labels, moving_tumour == 0) + moving_tumour * 3,
                                      sitk.sitkUInt8)
        cls.paths["ml_tumour.nii.gz"] = os.path.join(cls.folder.name, "ml_tumour.nii.gz")
        write_image(cls.moving_tumour, cls.paths["ml_tumour.nii.gz"])

    @classmethod
    def tearDownClass(cls) -> None:
        cls.folder.cleanup()

    @classmethod
    def _write(cls, name: str, imports: list, empty: str | None = None) -> None:
        """A segmentation made as a Slicer user makes one (each label map imported, its segments named in order of
        their label values), saved by Slicer's own segmentation storage node."""
        scene = cls.mrml.new_scene()
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        for image, names in imports:
            first = node.GetSegmentation().GetNumberOfSegments()
            label_node = cls.mrml.volume_node_from_image(image, scene, name="labels", label=True)
            assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(label_node, node)
            for i, segment_name in enumerate(names):
                node.GetSegmentation().GetNthSegment(first + i).SetName(segment_name)
        if empty:
            node.GetSegmentation().AddEmptySegment("", empty)
        storage = slicer.vtkMRMLSegmentationStorageNode()
        scene.AddNode(storage)
        cls.paths[name] = os.path.join(cls.folder.name, name)
        storage.SetFileName(cls.paths[name])
        assert storage.WriteData(node)

    def _evaluate(self, fixed_labels: str, moving_labels: str, *extra: str) -> tuple[int, dict, str]:
        rc, out, err = run_cli("evaluate-registration", self.paths["f.nrrd"], self.paths["m.nrrd"], "--transform",
                               self.paths["t.tfm"], "--fixed-labels", self.paths[fixed_labels], "--moving-labels",
                               self.paths[moving_labels], *extra, "--json")
        return rc, (json.loads(out) if rc == 0 else {}), err

    def test_segments_are_matched_by_name_not_by_label_value(self) -> None:
        # f: liver 1, kidney 2; m: kidney 1, liver 2 (its header lists kidney first). By label value the old code
        # scored liver against kidney: Dice after 0 where the registration is exact
        rc, out, err = self._evaluate("f.seg.nrrd", "m.seg.nrrd")
        self.assertEqual(rc, 0, err)
        for label in ("1", "2"):
            self.assertGreater(out["labels"]["after"]["labels"][label]["dice"], 0.97)
        self.assertEqual(out["label_matching"], "name")
        self.assertEqual(out["label_names"], {"1": "liver", "2": "kidney"})
        self.assertTrue(any(n.startswith("segments matched by name") for n in out["notes"]), out["notes"])
        self.assertIn("warning: segments matched by name", err)
        # the same numbers as two label maps numbered alike
        rc, plain, err = run_cli("evaluate-registration", self.paths["f.nrrd"], self.paths["m.nrrd"], "--transform",
                                 self.paths["t.tfm"], "--fixed-labels", self.paths["f.seg.nrrd"], "--moving-labels",
                                 self.paths["ml.nii.gz"], "--json")
        self.assertEqual(rc, 0, err)
        plain = json.loads(plain)
        for when in ("before", "after"):
            for label in ("1", "2"):
                self.assertAlmostEqual(out["labels"][when]["labels"][label]["dice"],
                                       plain["labels"][when]["labels"][label]["dice"], places=12)
        # one .seg.nrrd and a plain label map: matched by number, and said so
        self.assertEqual(plain["label_matching"], "number")
        self.assertTrue(any("labels matched by number: 'f.seg.nrrd' is a 3D Slicer segmentation and 'ml.nii.gz' a "
                            "plain label map" in n and "'liver' = 1, 'kidney' = 2" in n for n in plain["notes"]),
                        plain["notes"])
        # names in --labels, and the printed table names the segments
        rc, out, err = self._evaluate("f.seg.nrrd", "m.seg.nrrd", "--labels", "kidney")
        self.assertEqual(rc, 0, err)
        self.assertEqual(list(out["labels"]["after"]["labels"]), ["2"])
        rc, text, err = run_cli("evaluate-registration", self.paths["f.nrrd"], self.paths["m.nrrd"], "--transform",
                                self.paths["t.tfm"], "--fixed-labels", self.paths["f.seg.nrrd"], "--moving-labels",
                                self.paths["m.seg.nrrd"])
        self.assertEqual(rc, 0, err)
        self.assertRegex(text, r"1 'liver': Dice 0\.\d+ -> 0\.9[789]")
        rc, _, err = self._evaluate("f.seg.nrrd", "m.seg.nrrd", "--labels", "1,2")
        self.assertEqual(rc, 2)
        self.assertIn("Give segment names (of: liver, kidney)", err)

    def test_a_file_of_two_layers_is_read_layer_by_layer(self) -> None:
        for name in ("f_layers.seg.nrrd", "m_layers.seg.nrrd"):
            self.assertEqual(sitk.ReadImage(self.paths[name]).GetNumberOfComponentsPerPixel(), 2)
        # overlapping segments scored in one run, each as its own binary mask (they had been refused: "one label map
        # cannot hold a voxel of both: score them in separate runs"; before that, the file as "a 2D vector field")
        rc, out, err = self._evaluate("f_layers.seg.nrrd", "m_layers.seg.nrrd")
        self.assertEqual(rc, 0, err)
        self.assertNotIn("cannot hold", err)
        # the overlap said, with the segments' names, on each side
        for side in ("fixed", "moving"):
            self.assertIn("segment 'liver' (label 1) and segment 'both' (label 3) share", err)
            self.assertIn(f"voxels of the {side} label map (overlapping segments)", err)
        self.assertEqual(out["label_names"], {"1": "liver", "2": "kidney", "3": "both"})
        self.assertEqual(out["labels"]["left_out"], [])
        self._check_independently(out, {"liver": 1, "kidney": 2, "both": None}, "m_layers")
        # the segments that do not overlap score as they do in the files without 'both', the means over all three
        rc, plain, err = self._evaluate("f.seg.nrrd", "m.seg.nrrd")
        self.assertEqual(rc, 0, err)
        for when in ("before", "after"):
            scored = out["labels"][when]
            for label in ("1", "2"):
                self.assertEqual(scored["labels"][label], plain["labels"][when]["labels"][label])
            self.assertEqual(scored["grid"], plain["labels"][when]["grid"])
            self.assertEqual(scored["mean"]["labels"], 3)
            for key in metrics.OVERLAP_MEASURES:
                self.assertAlmostEqual(scored["mean"][key], np.mean([r[key] for r in scored["labels"].values()]),
                                       places=12)
        # each one alone (the only way it had been scored) scores the same
        rc, out_both, err = self._evaluate("f_layers.seg.nrrd", "m_layers.seg.nrrd", "--labels", "both")
        self.assertEqual(rc, 0, err)
        for when in ("before", "after"):
            self.assertEqual(out_both["labels"][when]["labels"]["3"], out["labels"][when]["labels"]["3"])
        both = sitk.GetArrayFromImage(self.fixed_labels) > 0
        self.assertEqual(out["labels"]["after"]["labels"]["3"]["fixed_voxels"], int(both.sum()))
        # the printed table names all three, before and after
        rc, text, err = run_cli("evaluate-registration", self.paths["f.nrrd"], self.paths["m.nrrd"], "--transform",
                                self.paths["t.tfm"], "--fixed-labels", self.paths["f_layers.seg.nrrd"],
                                "--moving-labels", self.paths["m_layers.seg.nrrd"])
        self.assertEqual(rc, 0, err)
        self.assertIn("labels (mean of 3)", text)
        self.assertRegex(text, r"3 'both': Dice 0\.\d+ -> 0\.9[789]")
        # mmfusion run scores them too (--no-register: its before and after are the identity's)
        run_dir = os.path.join(self.folder.name, "run_layers")
        rc, _, err = run_cli("run", self.paths["f.nrrd"], self.paths["m.nrrd"], "-o", run_dir, "--no-register",
                             "--methods", "average", "--fixed-labels", self.paths["f_layers.seg.nrrd"],
                             "--moving-labels", self.paths["m_layers.seg.nrrd"])
        self.assertEqual(rc, 0, err)
        with open(os.path.join(run_dir, "metrics.json"), encoding="utf-8") as f:
            accuracy = json.load(f)["registration_accuracy"]
        rc, identity, err = run_cli("evaluate-registration", self.paths["f.nrrd"], self.paths["m.nrrd"],
                                    "--fixed-labels", self.paths["f_layers.seg.nrrd"], "--moving-labels",
                                    self.paths["m_layers.seg.nrrd"], "--json")
        self.assertEqual(rc, 0, err)
        self.assertEqual(accuracy["labels"], json.loads(identity)["labels"])
        self.assertEqual(sorted(accuracy["labels"]["after"]["labels"]), ["1", "2", "3"])
        # against a plain label map (matched by number) two segments of one label value are refused
        rc, _, err = run_cli("evaluate-registration", self.paths["f.nrrd"], self.paths["m.nrrd"], "--fixed-labels",
                             self.paths["f_layers.seg.nrrd"], "--moving-labels", self.paths["ml.nii.gz"])
        self.assertEqual(rc, 2)
        self.assertIn("Segments 'liver' and 'both' of 'f_layers.seg.nrrd' both have label value 1", err)
        # read elsewhere as one image, the file is named for what it is
        with self.assertRaisesRegex(InputError, "3D Slicer segmentation whose segments are saved in 2 layers"):
            from MultimodalFusionLib.io import read_image

            read_image(self.paths["f_layers.seg.nrrd"])

    def _check_independently(self, out: dict, segments: dict, moving: str) -> None:
        """Each segment's numbers in ``out`` (names -> label value in the source label maps, None: all of them)
        against :func:`independent_scores` of its own masks, before (identity) and after (the exact transform)."""
        label_of = {name: int(label) for label, name in out["label_names"].items()}
        moving_labels = self.moving_tumour if moving == "tumour" else self.moving_labels
        for name, value in segments.items():
            fixed_mask, moving_mask = ((image > 0) if value is None else (image == value)
                                       for image in (self.fixed_labels, moving_labels))
            if name == "tumour":
                fixed_mask, moving_mask = self.fixed_tumour, self.moving_tumour == 3
            elif moving == "tumour" and name == "liver":  # the plain map holds the tumour's voxels as 3, not 1
                moving_mask = self.moving_tumour == 1
            for when, transform in (("before", None), ("after", self.tx)):
                row = out["labels"][when]["labels"][str(label_of[name])]
                expected = independent_scores(fixed_mask, moving_mask, transform)
                with self.subTest(segment=name, when=when):
                    self.assertIsNone(row["missing"])
                    for key in ("dice", "jaccard", "fixed_voxels", "moving_voxels"):
                        self.assertAlmostEqual(row[key], expected[key], places=10, msg=key)
                    for key in ("hausdorff", "hd95", "mean_surface_distance"):  # MONAI computes in float32
                        self.assertAlmostEqual(row[key], expected[key], places=4, msg=key)
                    if not (moving == "tumour" and name == "liver"):  # a moving liver with a hole in the fixed one
                        self.assertAlmostEqual(row["hausdorff"], expected["itk_hausdorff"], places=6)

    def test_overlapping_segments_matched_by_number_are_each_their_own_mask(self) -> None:
        # a .seg.nrrd whose second layer holds a tumour inside the liver under a label value of its own (3; as
        # another tool may write it), against a plain label map: matched by number, the liver scored with the
        # tumour's voxels, the tumour with its own (it had been refused: 'Segments 'liver' and 'tumour' overlap')
        self.assertTrue(sitk.GetArrayViewFromImage(self.fixed_tumour).any())
        rc, out, err = run_cli("evaluate-registration", self.paths["f.nrrd"], self.paths["m.nrrd"], "--transform",
                               self.paths["t.tfm"], "--fixed-labels", self.paths["f_tumour.seg.nrrd"],
                               "--moving-labels", self.paths["ml_tumour.nii.gz"], "--json")
        self.assertEqual(rc, 0, err)
        out = json.loads(out)
        self.assertEqual(out["label_matching"], "number")
        self.assertEqual(out["label_names"], {"1": "liver", "2": "kidney", "3": "tumour"})
        self._check_independently(out, {"liver": 1, "kidney": 2, "tumour": 3}, "tumour")
        # --labels picks among them by number, as before
        rc, one, err = run_cli("evaluate-registration", self.paths["f.nrrd"], self.paths["m.nrrd"], "--transform",
                               self.paths["t.tfm"], "--fixed-labels", self.paths["f_tumour.seg.nrrd"],
                               "--moving-labels", self.paths["ml_tumour.nii.gz"], "--labels", "3", "--json")
        self.assertEqual(rc, 0, err)
        self.assertEqual(json.loads(one)["labels"]["after"]["labels"]["3"], out["labels"]["after"]["labels"]["3"])

    def test_a_file_of_three_or_four_layers_is_no_colour_image(self) -> None:
        from MultimodalFusionLib.io import read_image

        for layers, listed in ((3, "layer 0: 'liver', 'kidney'; layer 1: 'both'; layer 2: 'body'"),
                               (4, "layer 0: 'liver', 'kidney'; layer 1: 'both'; layer 2: 'body'; layer 3: 'torso'")):
            path = self.paths[f"f_layers{layers}.seg.nrrd"]
            self.assertEqual(sitk.ReadImage(path).GetNumberOfComponentsPerPixel(), layers)
            said = f"is a 3D Slicer segmentation whose segments are saved in {layers} layers ({listed})"
            # where colour is kept, the old code returned the layers as an RGB(A) image
            with self.assertRaisesRegex(InputError, re.escape(said)):
                read_image(path, keep_color=True)
            # resample had interpolated the layers as colour (a 3-component float image, rc 0) and fuse had blended
            # them with the grey image as a colour picture (rc 0)
            grid = sitk.ReadImage(path)
            grey = sitk.Cast(sitk.GetImageFromArray(np.arange(np.prod(grid.GetSize()), dtype=np.float32)
                                                    .reshape(grid.GetSize()[::-1])), sitk.sitkFloat32)
            grey.CopyInformation(grid)
            grey_path = os.path.join(self.folder.name, f"grey{layers}.nrrd")
            write_image(grey, grey_path)
            for command in (["resample", path, "--reference", grey_path], ["fuse", grey_path, path]):
                out_path = os.path.join(self.folder.name, f"{command[0]}{layers}.nrrd")
                rc, _, err = run_cli(*command, "-o", out_path)
                self.assertEqual(rc, 2, (command, err))
                self.assertIn(said, err)
                self.assertIn("Export to label map", err)
                self.assertFalse(os.path.exists(out_path))
            # info describes it as a segmentation, its layers named
            rc, text, err = run_cli("info", path)
            self.assertEqual(rc, 0, err)
            self.assertIn(f"segmentation 3D Slicer .seg.nrrd, segments in {layers} layer(s) (one component a layer; "
                          f"no colour channels): {listed}", text)
            rc, text, err = run_cli("info", path, "--json")
            self.assertEqual(rc, 0, err)
            segmentation = json.loads(text)[path]["segmentation"]
            self.assertEqual(segmentation["layers"], layers)
            self.assertEqual(segmentation["segments_by_layer"]["0"], ["liver", "kidney"])
            # its segments are still read layer by layer where labels are scored
            rc, out, err = self._evaluate(f"f_layers{layers}.seg.nrrd", "m_layers.seg.nrrd", "--labels", "both")
            self.assertEqual(rc, 0, err)
            self.assertGreater(out["labels"]["after"]["labels"]["3"]["dice"], 0.97)

    def _slicer_reads(self, path: str) -> dict[str, int]:
        """Each segment's voxels as Slicer's own storage node reads the file (slicer-core)."""
        from vtk.util import numpy_support

        scene = slicer.vtkMRMLScene()
        node = slicer.vtkMRMLSegmentationNode()
        scene.AddNode(node)
        storage = slicer.vtkMRMLSegmentationStorageNode()
        scene.AddNode(storage)
        storage.SetFileName(path)
        self.assertTrue(storage.ReadData(node))
        counts = {}
        for i in range(node.GetSegmentation().GetNumberOfSegments()):
            segment = node.GetSegmentation().GetNthSegment(i)
            labelmap = segment.GetRepresentation("Binary labelmap")
            scalars = labelmap.GetPointData().GetScalars() if labelmap is not None else None
            counts[segment.GetName()] = (0 if scalars is None else
                                         int((numpy_support.vtk_to_numpy(scalars) == segment.GetLabelValue()).sum()))
        return counts

    def test_segment_extents_are_read_as_slicer_reads_them(self) -> None:
        from MultimodalFusionLib.segmentations import read_segmentation_file

        # a layer of two segments whose header extents differ (as a file written by another tool may give them;
        # Slicer gives every segment of a layer the same): Slicer reads the layer within the box around both, so
        # B's voxels outside its own extent are B's; the old code clipped each segment to its own extent (B: 0)
        values = np.zeros((10, 10, 10), np.uint8)
        values[1:4, 1:4, 1:4] = 1
        values[6:9, 6:9, 6:9] = 1  # A's, outside its own extent and the layer's box: Slicer ignores them
        values[7:9, 1:3, 7:9] = 2  # B's, outside its own extent, inside A's and B's box
        image = sitk.GetImageFromArray(values)
        image.SetSpacing((1.0, 1.2, 1.5))
        keys = {"Segmentation_ReferenceImageExtentOffset": "0 0 0", "Segment0_ID": "A", "Segment0_Name": "A",
                "Segment0_LabelValue": "1", "Segment0_Layer": "0", "Segment0_Extent": "0 4 0 4 0 9",
                "Segment1_ID": "B", "Segment1_Name": "B", "Segment1_LabelValue": "2", "Segment1_Layer": "0",
                "Segment1_Extent": "0 9 0 2 0 2"}
        for key, value in keys.items():
            image.SetMetaData(key, value)
        path = os.path.join(self.folder.name, "extents.seg.nrrd")
        sitk.WriteImage(image, path, True)
        sf = read_segmentation_file(path)
        ours = {s.name: int(sf.voxels(s).sum()) for s in sf.segments}
        self.assertEqual(self._slicer_reads(path), {"A": 27, "B": 8})
        self.assertEqual(ours, {"A": 27, "B": 8})
        # files as Slicer writes them (cropped, with an extent offset, compressed or not) read alike
        for name in ("f.seg.nrrd", "f_layers3.seg.nrrd", "f_empty.seg.nrrd"):
            sf = read_segmentation_file(self.paths[name])
            self.assertEqual({s.name: int(sf.voxels(s).sum()) for s in sf.segments},
                             self._slicer_reads(self.paths[name]), name)
        # the format of older Slicer versions (a Segmentation_Extent key, a 4th axis of segments, absolute extents):
        # refused by name, where the old code called its second segment 'in layer 1' of a 1-layer file
        legacy = sitk.GetImageFromArray(np.stack([values == 1, values == 2]).astype(np.uint8))
        for key, value in {"Segmentation_Extent": "5 14 5 14 5 14", "Segment0_ID": "A", "Segment0_Name": "A",
                           "Segment0_Extent": "5 14 5 14 5 14", "Segment1_ID": "B", "Segment1_Name": "B",
                           "Segment1_Extent": "5 14 5 14 5 14"}.items():
            legacy.SetMetaData(key, value)
        path = os.path.join(self.folder.name, "legacy.seg.nrrd")
        sitk.WriteImage(legacy, path)
        with self.assertRaisesRegex(InputError, "format of older Slicer versions .*Load it in a current 3D Slicer"):
            read_segmentation_file(path)

    def test_an_empty_segment_is_named(self) -> None:
        rc, out, err = self._evaluate("f_empty.seg.nrrd", "m.seg.nrrd")
        self.assertEqual(rc, 0, err)
        self.assertTrue(any("segment 'tumour' (label 3) of 'f_empty.seg.nrrd' is listed in its header but holds no "
                            "voxel" in n for n in out["notes"]), out["notes"])
        self.assertEqual(out["label_names"]["3"], "tumour")
        self.assertIn(3, out["labels"]["left_out"])
        self.assertGreater(out["labels"]["after"]["mean"]["dice"], 0.97)
        # and against a plain label map
        rc, _, err = run_cli("evaluate-registration", self.paths["f.nrrd"], self.paths["m.nrrd"], "--fixed-labels",
                             self.paths["f_empty.seg.nrrd"], "--moving-labels", self.paths["ml.nii.gz"])
        self.assertEqual(rc, 0, err)
        self.assertIn("segment 'tumour' (label 3) of 'f_empty.seg.nrrd' is listed in its header but holds no voxel",
                      err)
        rc, out, err = run_cli("evaluate-registration", self.paths["f.nrrd"], self.paths["m.nrrd"], "--fixed-labels",
                               self.paths["f_empty.seg.nrrd"], "--moving-labels", self.paths["ml.nii.gz"], "--json")
        self.assertEqual(json.loads(out)["labels"]["left_out"], [3])


    def _hand_written(self, name: str, segments: list, layers: int = 1) -> str:
        """A ``.seg.nrrd`` whose header is written here (as another tool may write one): ``segments`` are (ID, name,
        label value, layer); layer 0 holds label 1 in a box at one corner and 2 at the other, each further layer 1
        in the first box."""
        values = np.zeros((10, 10, 10), np.uint8)
        values[1:4, 1:4, 1:4] = 1
        values[6:9, 6:9, 6:9] = 2
        image = sitk.GetImageFromArray(np.stack([values] + [(values == 1).astype(np.uint8)] * (layers - 1), -1)
                                       if layers > 1 else values, isVector=layers > 1)
        for i, (sid, segment_name, value, layer) in enumerate(segments):
            for key, text in (("ID", sid), ("Name", segment_name), ("LabelValue", str(value)), ("Layer", str(layer))):
                image.SetMetaData(f"Segment{i}_{key}", text)
        path = os.path.join(self.folder.name, name)
        sitk.WriteImage(image, path)
        if "grid.nrrd" not in self.paths:
            grey = sitk.GetImageFromArray(np.random.default_rng(0).random((10, 10, 10)).astype(np.float32))
            self.paths["grid.nrrd"] = os.path.join(self.folder.name, "grid.nrrd")
            write_image(grey, self.paths["grid.nrrd"])
            self.paths["grid_labels.nii.gz"] = os.path.join(self.folder.name, "grid_labels.nii.gz")
            write_image(sitk.GetImageFromArray(values), self.paths["grid_labels.nii.gz"])
        return path

    def test_two_segments_of_one_name_matched_by_number_are_two_labels(self) -> None:
        # Slicer lets two segments share a name (their IDs differ). Matched by number against a plain label map,
        # the old code keyed the segments by name: 'A' (label 1, 27 voxels) was dropped, and label 1 was called
        # "in the moving label map only" though the fixed file holds it
        path = self._hand_written("same_name.seg.nrrd", [("s1", "A", 1, 0), ("s2", "A", 2, 0)])
        rc, out, err = run_cli("evaluate-registration", self.paths["grid.nrrd"], self.paths["grid.nrrd"],
                               "--fixed-labels", path, "--moving-labels", self.paths["grid_labels.nii.gz"], "--json")
        self.assertEqual(rc, 0, err)
        out = json.loads(out)
        self.assertEqual(sorted(out["labels"]["after"]["labels"]), ["1", "2"])
        self.assertEqual(out["labels"]["left_out"], [])
        for label in ("1", "2"):
            self.assertEqual(out["labels"]["after"]["labels"][label]["dice"], 1.0)
            self.assertEqual(out["labels"]["after"]["labels"][label]["fixed_voxels"], 27)

    def test_segments_named_by_numbers_are_asked_for_by_name(self) -> None:
        # two .seg.nrrd files whose segments are named '1' and '2' (as a label map imported without a colour table
        # may name them): --labels 2 names a segment; the old code took it for a number and refused it with "Give
        # segment names (of: 1, 2)"
        for side in ("f", "m"):
            self._hand_written(f"{side}_digits.seg.nrrd", [("s1", "1", 1, 0), ("s2", "2", 2, 0)])
        rc, out, err = run_cli("evaluate-registration", self.paths["grid.nrrd"], self.paths["grid.nrrd"],
                               "--fixed-labels", os.path.join(self.folder.name, "f_digits.seg.nrrd"),
                               "--moving-labels", os.path.join(self.folder.name, "m_digits.seg.nrrd"), "--labels", "2",
                               "--json")
        self.assertEqual(rc, 0, err)
        out = json.loads(out)
        self.assertEqual(out["label_names"], {"1": "1", "2": "2"})
        self.assertEqual(list(out["labels"]["after"]["labels"]), ["2"])
        self.assertEqual(out["labels"]["after"]["labels"]["2"]["fixed_voxels"], 27)
        # numbers that name no segment are still refused, naming the segments to give
        rc, _, err = run_cli("evaluate-registration", self.paths["grid.nrrd"], self.paths["grid.nrrd"],
                             "--fixed-labels", self.paths["f.seg.nrrd"], "--moving-labels", self.paths["m.seg.nrrd"],
                             "--labels", "2")
        self.assertEqual(rc, 2)
        self.assertIn("Give segment names (of: liver, kidney)", err)

    def test_info_and_the_refusal_list_layers_alike(self) -> None:
        # a header listing a segment of layer 1 before one of layer 0: info had listed the layers in the header's
        # order (its own copy of the listing), the refusal of the file as one image in layer order
        from MultimodalFusionLib.io import read_image

        path = self._hand_written("layers_out_of_order.seg.nrrd", [("s1", "top", 1, 1), ("s2", "A", 1, 0),
                                                                     ("s3", "B", 2, 0)], layers=2)
        listed = "layer 0: 'A', 'B'; layer 1: 'top'"
        with self.assertRaisesRegex(InputError, re.escape(f"saved in 2 layers ({listed})")):
            read_image(path)
        rc, text, err = run_cli("info", path)
        self.assertEqual(rc, 0, err)
        self.assertIn(f"no colour channels): {listed}", text)
        rc, text, err = run_cli("info", path, "--json")
        self.assertEqual(rc, 0, err)
        self.assertEqual(list(json.loads(text)[path]["segmentation"]["segments_by_layer"].items()),
                         [("0", ["A", "B"]), ("1", ["top"])])


class LabelArraysOutliveTheirImagesTest(unittest.TestCase):
    def test_the_labels_of_a_temporary_image_are_kept(self) -> None:
        """_label_array returned a numpy view of an integer image, and the evaluation passed it temporaries (the
        moving labels resampled onto a box): their voxels were read after the image was freed, so the count of
        moving voxels outside the fixed field of view came out 0 now and then (a KeyError in the full suite). The
        freed block is taken again by the next image of its size, which here is filled with 7."""
        for _ in range(5):
            labels = metrics._label_array(sitk.Image([64, 64, 32], sitk.sitkUInt8) + 1, "label map")
            other = sitk.Image([64, 64, 32], sitk.sitkUInt8) + 7
            self.assertTrue(np.all(labels == 1))
            del other


class OneSliceVolumesWithATwoDTransformTest(unittest.TestCase):
    def test_labels_through_a_2d_transform_are_scored_on_the_slices_and_refused_for_volumes(self) -> None:
        """mmfusion register writes a 2D transform for two one-slice volumes; evaluate-registration scored their
        images through it but crashed on their label maps or landmarks with ITK's 'point dimension mismatch'
        (RuntimeError from _box_in), a traceback, then refused them. They are scored in the slices' 2D frames now
        (Testing/test_one_slice_accuracy.py); with volumes of several slices a 2D transform is still refused."""
        arr = np.zeros((1, 48, 52), np.uint8)
        arr[0, 10:30, 12:30] = 1
        labels = sitk.GetImageFromArray(arr)
        labels.SetSpacing((1.0, 1.0, 3.0))
        image = sitk.Cast(labels, sitk.sitkFloat32) * 100.0
        tx = sitk.Euler2DTransform()
        tx.SetTranslation((2.0, 1.0))
        self.assertIn("images", metrics.evaluate_registration(image, image, tx))  # the images alone still score
        points = np.array([[10.0, 12.0, 0.0], [20.0, 25.0, 0.0], [30.0, 15.0, 0.0]])
        out = metrics.evaluate_registration(image, image, tx, fixed_labels=labels, moving_labels=labels,
                                            fixed_landmarks=points, moving_landmarks=points)
        self.assertEqual(out["labels"]["before"]["mean"]["dice"], 1.0)
        np.testing.assert_allclose(out["landmarks"]["after"]["per_point"], np.sqrt(5.0))
        volume, volume_labels = (sitk.JoinSeries([sitk.Extract(i, [52, 48, 0], [0, 0, 0])] * 3)
                                 for i in (image, labels))
        for given in ({"fixed_labels": volume_labels, "moving_labels": volume_labels},
                      {"fixed_landmarks": points, "moving_landmarks": points}):
            with self.subTest(given=sorted(given)), self.assertRaisesRegex(InputError, "2D but the images are 3D"):
                metrics.evaluate_registration(volume, volume, tx, **given)


class OneLabelAndRunTogetherLabelsTest(unittest.TestCase):
    def test_one_label_and_labels_without_commas(self) -> None:
        """labels=1 (one label, not a list) had been "TypeError: 'int' object is not iterable", and "1;2" or "1 2"
        was refused as a segment name, with the fix to give two segmentations; now one label is a list of one, and
        labels run together are named as such, with the comma-separated fix."""
        from MultimodalFusionLib.segmentations import asked_labels

        self.assertEqual(asked_labels(1), [1])
        self.assertEqual(asked_labels(np.int64(3)), [3])
        for text in ("1;2", "1 2", "1 ; 2"):
            with self.subTest(labels=text), self.assertRaisesRegex(InputError, "not separated by commas.*1,2"):
                asked_labels(text)
        labels = sitk.GetImageFromArray(np.pad(np.ones((4, 4, 4), np.uint8), 2))
        out = metrics.label_overlap(labels, labels, 1)
        self.assertEqual(list(out["labels"]), [1])


if __name__ == "__main__":
    unittest.main()


@unittest.skipUnless(HAVE_MARKUPS, "needs Slicer's MRML libraries (pip install slicer-core)")
class LabelsAskedForTest(unittest.TestCase):
    """One rule for the labels asked for, on every path: ``evaluate-registration --labels``, ``run --labels``,
    ``pipeline.run(labels=)`` (files and images) and the Logic's ``labels=`` (nodes), matched by number (label maps,
    or a .seg.nrrd against a label map) or by name (two .seg.nrrd files, two segmentation nodes). The old code
    refused ``--labels 1.0`` for files but took it for images (and ended in a ValueError where the images were label
    maps given to pipeline.run as images, "1.0" as text), read ``--labels ""`` as every label for files and refused it
    for images, and the Logic refused labels=["1"] of label maps as names and read labels="12" as 1 and 2."""

    VALUES = ("1", "1.0", "liver", "0", "", "2")

    @classmethod
    def setUpClass(cls) -> None:
        from MultimodalFusionLib import mrml
        from MultimodalFusionLib.slicer_logic import FusionLogic

        cls.folder = tempfile.TemporaryDirectory()
        values = np.zeros((10, 10, 10), np.uint8)
        values[1:4, 1:4, 1:4] = 1
        values[6:9, 6:9, 6:9] = 2
        cls.labels = sitk.GetImageFromArray(values)
        rng = np.random.default_rng(0)
        cls.grey = sitk.GetImageFromArray((100.0 * values + rng.random(values.shape)).astype(np.float32))
        cls.paths = {}
        for name, image in (("grey.nrrd", cls.grey), ("labels.nii.gz", cls.labels)):
            cls.paths[name] = os.path.join(cls.folder.name, name)
            write_image(image, cls.paths[name])
        # segments named '2' (label value 1) and 'liver' (label value 2): by number "2" is liver, by name segment '2'
        segmentation = sitk.GetImageFromArray(values)
        for i, (sid, segment_name, value) in enumerate((("s1", "2", 1), ("s2", "liver", 2))):
            for key, text in (("ID", sid), ("Name", segment_name), ("LabelValue", str(value)), ("Layer", "0")):
                segmentation.SetMetaData(f"Segment{i}_{key}", text)
        for side in ("f", "m"):
            cls.paths[side] = os.path.join(cls.folder.name, f"{side}.seg.nrrd")
            sitk.WriteImage(segmentation, cls.paths[side])
        cls.scene = mrml.new_scene()
        cls.logic = FusionLogic(cls.scene)
        cls.grey_node = mrml.volume_node_from_image(cls.grey, cls.scene, name="grey")
        cls.label_node = mrml.volume_node_from_image(cls.labels, cls.scene, name="labels", label=True)
        cls.segmentation_nodes = []
        for side in ("f", "m"):  # named as the files, so that messages naming them read alike
            node = cls.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{side}.seg.nrrd")
            assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(cls.label_node, node)
            for i, segment_name in enumerate(("2", "liver")):
                node.GetSegmentation().GetNthSegment(i).SetName(segment_name)
            cls.segmentation_nodes.append(node)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.folder.cleanup()

    @staticmethod
    def _answer(call) -> tuple:
        """("scored", {label: fixed voxels}) or ("refused", problem, fix) with the option's spelling left out."""
        try:
            result = call()
        except InputError as e:
            return ("refused",) + tuple(re.sub(r"--labels\b", "labels", t) for t in (e.problem, e.fix))
        return ("scored", {int(k): v["fixed_voxels"] for k, v in result["labels"]["after"]["labels"].items()})

    def _cli(self, command: str, fixed_labels: str, moving_labels: str, value: str) -> tuple:
        out = os.path.join(self.folder.name, "run")
        argv = [command, self.paths["grey.nrrd"], self.paths["grey.nrrd"], "--fixed-labels", fixed_labels,
                "--moving-labels", moving_labels, "--labels", value, "--json"]
        argv += ["-o", out, "--no-register", "--methods", "average"] if command == "run" else []
        rc, stdout, err = run_cli(*argv)
        if rc != 0:
            match = re.search(r"error: (.*) Fix: (.*)", err.strip().splitlines()[-1])
            self.assertIsNotNone(match, err)
            return ("refused",) + tuple(re.sub(r"--labels\b", "labels", t) for t in match.groups())
        if command == "run":
            with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
                result = json.load(f)["registration_accuracy"]
        else:
            result = json.loads(stdout)
        return self._answer(lambda: result)

    def _by_number(self, value: str) -> dict[str, tuple]:
        from MultimodalFusionLib import pipeline

        labels, seg = self.paths["labels.nii.gz"], self.paths["f"]
        run_pipeline = lambda **kw: pipeline.run(  # noqa: E731
            self.paths["grey.nrrd"], self.paths["grey.nrrd"], os.path.join(self.folder.name, "p"), register=False,
            methods=["average"], labels=value, **kw)["registration_accuracy"]
        return {
            "evaluate-registration, label maps": self._cli("evaluate-registration", labels, labels, value),
            "evaluate-registration, .seg.nrrd and a label map": self._cli("evaluate-registration", seg, labels, value),
            "run, label maps": self._cli("run", labels, labels, value),
            "pipeline.run, files": self._answer(lambda: run_pipeline(fixed_labels=labels, moving_labels=labels)),
            "pipeline.run, images": self._answer(lambda: run_pipeline(fixed_labels=self.labels,
                                                                       moving_labels=self.labels)),
            "Logic, label map nodes": self._answer(lambda: self.logic.evaluateRegistration(
                self.grey_node, self.grey_node, fixedLabelNode=self.label_node, movingLabelNode=self.label_node,
                labels=value)),
            "Logic, label map nodes, a list": self._answer(lambda: self.logic.evaluateRegistration(
                self.grey_node, self.grey_node, fixedLabelNode=self.label_node, movingLabelNode=self.label_node,
                labels=[value])),
        }

    def _by_name(self, value: str) -> dict[str, tuple]:
        fixed_node, moving_node = self.segmentation_nodes
        return {
            "evaluate-registration, two .seg.nrrd": self._cli("evaluate-registration", self.paths["f"],
                                                              self.paths["m"], value),
            "run, two .seg.nrrd": self._cli("run", self.paths["f"], self.paths["m"], value),
            "Logic, segmentation nodes": self._answer(lambda: self.logic.evaluateRegistration(
                self.grey_node, self.grey_node, fixedLabelNode=fixed_node, movingLabelNode=moving_node,
                labels=value)),
        }

    def test_every_path_gives_the_same_answer(self) -> None:
        number_answers = {"1": ("scored", {1: 27}), "1.0": ("scored", {1: 27}), "2": ("scored", {2: 27})}
        name_answers = {"liver": ("scored", {2: 27}), "2": ("scored", {1: 27})}  # label i: the i-th name
        # every path's outcome for every value, each run once: the refusals' words below are read from these (they
        # had been run again, 6 of the 12 sets a second time)
        by_number = {value: self._by_number(value) for value in self.VALUES}
        by_name = {value: self._by_name(value) for value in self.VALUES}
        for value in self.VALUES:
            for rule, outcomes, expected in (("number", by_number[value], number_answers.get(value)),
                                             ("name", by_name[value], name_answers.get(value))):
                with self.subTest(value=value, matched_by=rule):
                    first = next(iter(outcomes.values()))
                    for path, outcome in outcomes.items():
                        self.assertEqual(outcome, first, f"{path} answers otherwise than {next(iter(outcomes))}")
                    if expected is not None:
                        self.assertEqual(first, expected)
                    else:
                        self.assertEqual(first[0], "refused", first)
        # the words of each refusal, the same on every path
        self.assertIn("Label 'liver' is not a whole number: label maps are matched by label number, segment names "
                      "only between two 3D Slicer segmentations", by_number["liver"]["run, label maps"][1])
        self.assertEqual(by_number[""]["Logic, label map nodes"][1], "No label was given to score.")
        self.assertIn("Label 0 was asked for", by_number["0"]["pipeline.run, images"][1])
        self.assertIn("Give segment names (of: 2, liver)", by_name["1"]["Logic, segmentation nodes"][2])
        self.assertIn("is named '1.0'", by_name["1.0"]["Logic, segmentation nodes"][1])
        self.assertEqual(by_name[""]["run, two .seg.nrrd"][1], "No label was given to score.")
