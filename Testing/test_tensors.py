"""Diffusion tensor images: read as tensors where the file says so, turned with the transform when resampled
(finite strain), and written back with their kinds / intent and measurement frame.

Before: a Slicer DTI NRRD (kinds 3D-symmetric-matrix) and a NIfTI of intent SYMMATRIX were refused ("Unknown
PixelType: float(11)", with the fix to use a NIfTI or NRRD file), and a 3D-matrix NRRD or an untagged image of 6
components was resampled per channel, without a word, its tensors pointing the old way under a rotation.
"""

from __future__ import annotations

import contextlib
import gzip
import io as _io
import math
import os
import shutil
import tempfile
import unittest
import warnings

import numpy as np
import SimpleITK as sitk

from MultimodalFusionLib import cli
from MultimodalFusionLib.errors import InputError
from MultimodalFusionLib.io import read_image, write_image
from MultimodalFusionLib.preprocess import resample

#: ITK's (and NRRD's) order of a symmetric tensor's components: the upper triangle row by row
UPPER = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
#: NIfTI SYMMATRIX's: the lower triangle row by row (xx, yx, yy, zx, zy, zz)
LOWER = [(0, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 2)]


def _matrix(values: np.ndarray, order=UPPER) -> np.ndarray:
    m = np.zeros(values.shape[:-1] + (3, 3))
    for k, (i, j) in enumerate(order):
        m[..., i, j] = m[..., j, i] = values[..., k]
    return m


def _principal(values: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(_matrix(np.asarray(values, dtype=float)))
    return v[..., :, -1]


def _prolate_along_x(size=(15, 15, 15)) -> sitk.Image:
    """Tensors of eigenvalues 3, 1, 1 (x10^-3 mm^2/s) along x, on a grid centred on the origin."""
    values = np.zeros(tuple(reversed(size)) + (6,), np.float32)
    values[..., 0], values[..., 3], values[..., 5] = 3e-3, 1e-3, 1e-3
    image = sitk.GetImageFromArray(values, isVector=True)
    image.SetOrigin(tuple(-(s - 1) / 2.0 for s in size))
    return image


def _write_nrrd(path: str, values: np.ndarray, kind: str = "3D-symmetric-matrix", space: str = "left-posterior-superior",
                frame: str | None = "(1,0,0) (0,1,0) (0,0,1)", domain: int = 3, gz: bool = False,
                keyvalues: tuple = ()) -> None:
    """A NRRD as Slicer writes a DTI volume: the tensor axis first, values (z, y, x, components) in numpy order."""
    sizes = " ".join(str(s) for s in [values.shape[-1]] + list(reversed(values.shape[:-1])))
    directions = " ".join("(" + ",".join("1" if i == k else "0" for i in range(domain)) + ")" for k in range(domain))
    lines = ["NRRD0005", "type: float", f"dimension: {domain + 1}", f"space: {space}", f"sizes: {sizes}",
             f"space directions: none {directions}", f"kinds: {kind}" + " domain" * domain, "endian: little",
             f"encoding: {'gzip' if gz else 'raw'}", "space origin: (" + ",".join(["0"] * domain) + ")"]
    if frame is not None:
        lines.append(f"measurement frame: {frame}")
    lines += [f"{key}:={value}" for key, value in keyvalues]
    data = values.astype("<f4").tobytes()
    with open(path, "wb") as fh:
        fh.write(("\n".join(lines) + "\n\n").encode() + (gzip.compress(data) if gz else data))


def _nrrd_header_text(path: str) -> str:
    with open(path, "rb") as fh:
        return fh.read().split(b"\n\n")[0].decode("latin-1")


def _nrrd_header(path: str) -> dict[str, str]:
    head = _nrrd_header_text(path)
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in head.splitlines()[1:]
                                                 if not _is_pair(line)) if not k.startswith("#")}


def _is_pair(line: str) -> bool:
    """teem's rule: a key/value pair where ':=' comes before the line's first ': ' (a field may hold ':=')."""
    return not line.startswith("#") and ":=" in line.split(": ", 1)[0]


def _nrrd_keyvalues(path: str) -> list[tuple[str, str]]:
    """A NRRD header's key/value pairs (``key:=value``), in order."""
    head = _nrrd_header_text(path)
    return [tuple(line.split(":=", 1)) for line in head.splitlines()[1:] if _is_pair(line)]


def _nrrd_data(path: str, count: int) -> np.ndarray:
    with open(path, "rb") as fh:
        raw = fh.read()
    start = raw.index(b"\n\n") + 2
    data = raw[start:]
    if _nrrd_header(path).get("encoding") == "gzip":
        data = gzip.decompress(data)
    return np.frombuffer(data, "<f4").reshape(-1, count)


def _write_nifti(path: str, values: np.ndarray, intent: str = "symmetric matrix", p1: int | None = 3) -> None:
    """A 5D NIfTI (x, y, z, 1, components) of ``intent``; ``p1`` None: intent_p1 left 0, as ITK and so ANTs write
    a DTI volume (ITK's NiftiImageIO sets the intent code only)."""
    import nibabel as nib

    data = values.transpose(2, 1, 0, 3)[:, :, :, None, :]  # (x, y, z, 1, components)
    image = nib.Nifti1Image(data.astype(np.float32), np.diag([-1.0, -1.0, 1.0, 1.0]))  # LPS axes, as ITK writes
    image.header.set_intent(intent, (p1,) if intent == "symmetric matrix" and p1 is not None else ())
    nib.save(image, path)


class TensorsTurnWithTheTransform(unittest.TestCase):
    """A prolate tensor along x under a rotation of 90 degrees about z points along y: its principal direction turns
    as a vector turns (J^-1 v, preservation of the principal direction; finite strain gives the same under a
    rotation), for linear and deformable transforms."""

    def setUp(self) -> None:
        self.moving = _prolate_along_x()
        self.rotation = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.0, 0.0, math.pi / 2)

    def assert_along(self, values: np.ndarray, axis: np.ndarray, atol: float = 1e-5) -> None:
        principal = _principal(values)
        np.testing.assert_allclose(abs(float(principal @ axis)), 1.0, atol=atol)
        # eigenvalues kept: a rotation turns a tensor, it neither stretches nor shrinks it
        np.testing.assert_allclose(np.linalg.eigvalsh(_matrix(np.asarray(values, float))), [1e-3, 1e-3, 3e-3],
                                   atol=1e-8)

    def test_linear_rotation(self) -> None:
        out = resample(self.moving, self.moving, self.rotation, components="tensor")
        centre = sitk.GetArrayFromImage(out)[7, 7, 7]
        self.assert_along(centre, np.array([0.0, 1.0, 0.0]))
        self.assertEqual(out.GetPixelID(), sitk.sitkVectorFloat32)
        # the component-wise result, which it had been, still points along x
        channels = resample(self.moving, self.moving, self.rotation, components="channels")
        self.assert_along(sitk.GetArrayFromImage(channels)[7, 7, 7], np.array([1.0, 0.0, 0.0]))

    def test_a_tensor_turns_as_a_vector_does(self) -> None:
        """Any rotation and tensor: the principal eigenvector turns as components='vector' turns that vector."""
        rng = np.random.default_rng(1)
        turn = sitk.Euler3DTransform((0.0, 0.0, 0.0), *rng.uniform(-math.pi, math.pi, 3))
        values = np.zeros((9, 9, 9, 6), np.float32)
        values[...] = [5e-3, 1e-3, -2e-3, 2e-3, 0.5e-3, 1e-3]
        moving = sitk.GetImageFromArray(values, isVector=True)
        moving.SetOrigin((-4.0, -4.0, -4.0))
        vector = sitk.GetImageFromArray(np.broadcast_to(_principal(values[0, 0, 0]), (9, 9, 9, 3)).copy(),
                                        isVector=True)
        vector.CopyInformation(moving)
        turned = sitk.GetArrayFromImage(resample(moving, moving, turn, components="tensor"))[4, 4, 4]
        expected = sitk.GetArrayFromImage(resample(vector, moving, turn, components="vector"))[4, 4, 4]
        np.testing.assert_allclose(abs(_principal(turned) @ expected), 1.0, atol=1e-5)

    def test_a_stretch_turns_no_tensor_by_finite_strain(self) -> None:
        """Finite strain: the rotation of J only; a scaling (J = diag(2, 1, 1)) leaves the tensors as they are. By
        preservation of the principal direction (the default) the oblique tensor's principal direction turns as
        a vector does (J^-1 v), its eigenvalues kept."""
        values = np.zeros((9, 9, 9, 6), np.float32)
        values[...] = [3e-3, 1e-3, 0.0, 2e-3, 0.0, 1e-3]
        moving = sitk.GetImageFromArray(values, isVector=True)
        stretch = sitk.AffineTransform(3)
        stretch.SetMatrix((2.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
        out = sitk.GetArrayFromImage(resample(moving, moving, stretch, components="tensor",
                                              tensor_reorientation="fs"))
        np.testing.assert_allclose(out[4, 4, 2], values[4, 4, 2], atol=1e-9)
        ppd = sitk.GetArrayFromImage(resample(moving, moving, stretch, components="tensor"))[4, 4, 2]
        expected = np.diag([0.5, 1.0, 1.0]) @ _principal(values[0, 0, 0])
        np.testing.assert_allclose(abs(_principal(ppd) @ expected / np.linalg.norm(expected)), 1.0, atol=1e-6)
        np.testing.assert_allclose(np.linalg.eigvalsh(_matrix(ppd.astype(float))),
                                   np.linalg.eigvalsh(_matrix(values[0, 0, 0].astype(float))), atol=1e-9)
        with self.assertRaises(InputError) as cm:
            resample(moving, moving, stretch, components="tensor", tensor_reorientation="log")
        self.assertIn("Unknown tensor reorientation 'log'", cm.exception.problem)

    def test_principal_direction_follows_the_vector_path(self) -> None:
        """D = v v^T + 0.05 I from a smooth unit vector field v, on an oblique grid: under a rotation about an
        oblique axis, an affine with shear and a B-spline, the resampled tensors' principal eigenvector is parallel
        to components="vector"'s resampled v at every voxel inside. By finite strain (the only answer before) it
        was so under the rotation only: 11 (median) to 14.6 degrees off under the shear, up to 17 under the
        B-spline."""
        n = 20
        z, y, x = np.meshgrid(*[np.linspace(-1.0, 1.0, n)] * 3, indexing="ij")
        v = np.stack([np.cos(1.2 * z), np.sin(1.2 * z) * np.cos(0.8 * x), 0.6 + 0.3 * y], -1)
        v /= np.linalg.norm(v, axis=-1, keepdims=True)
        d = v[..., :, None] * v[..., None, :] + 0.05 * np.eye(3)

        def image(values: np.ndarray) -> sitk.Image:
            out = sitk.GetImageFromArray(values, isVector=True)
            out.SetSpacing((1.0, 1.1, 0.9))
            out.SetOrigin((-9.5, -10.45, -8.55))
            out.SetDirection(sitk.VersorTransform((0.3, -0.2, 0.5), 0.4).GetMatrix())
            return out

        vectors = image(v)
        tensor_image = image(np.stack([d[..., i, j] for i, j in UPPER], -1))
        centre = vectors.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0] * 3)
        rotation = sitk.VersorRigid3DTransform()
        rotation.SetCenter(centre)
        rotation.SetRotation((1.0, 2.0, -1.0), 0.7)
        shear = sitk.AffineTransform(3)
        shear.SetCenter(centre)
        shear.SetMatrix((1.0, 0.45, 0.1, -0.05, 0.9, 0.3, 0.2, -0.1, 1.15))
        bspline = sitk.BSplineTransformInitializer(vectors, [4, 4, 4])
        bspline.SetParameters(tuple(np.random.default_rng(0).normal(0.0, 2.0, bspline.GetNumberOfParameters())))
        inside = (slice(3, -3),) * 3
        for name, transform in (("rotation", rotation), ("shear", shear), ("bspline", bspline)):
            with self.subTest(transform=name):
                turned = sitk.GetArrayFromImage(resample(tensor_image, tensor_image, transform,
                                                         components="tensor"))[inside]
                moved = sitk.GetArrayFromImage(resample(vectors, vectors, transform, components="vector"))[inside]
                keep = np.linalg.norm(moved, axis=-1) > 0.5  # not outside the moving image
                cosine = np.abs(np.sum(_principal(turned) * moved, -1)) / np.maximum(np.linalg.norm(moved, axis=-1), 1e-12)
                self.assertGreater(keep.mean(), 0.5)
                self.assertLess(float(np.degrees(np.arccos(np.clip(cosine[keep], 0.0, 1.0))).max()), 0.1)

    def test_deformable_rotation_field(self) -> None:
        """The rotation as a displacement field, and a twist (a rotation about z by an angle growing with z): each
        voxel's tensor is turned by the rotation of the Jacobian at that voxel."""
        disp = sitk.TransformToDisplacementField(self.rotation, sitk.sitkVectorFloat64, (30, 30, 30),
                                                 (-15.0, -15.0, -15.0), (1.0, 1.0, 1.0))
        out = resample(self.moving, self.moving, sitk.DisplacementFieldTransform(disp), components="tensor")
        self.assert_along(sitk.GetArrayFromImage(out)[7, 7, 7], np.array([0.0, 1.0, 0.0]), atol=1e-4)
        # the twist: T(x, y, z) = Rz(k z) (x, y, z); on the z axis its Jacobian is Rz(k z)
        k = math.pi / 24
        grid = np.stack(np.meshgrid(*[np.arange(-15.0, 15.0)] * 3, indexing="ij"), -1)  # (x, y, z) indices
        angle = k * grid[..., 2]
        moved = np.stack([np.cos(angle) * grid[..., 0] - np.sin(angle) * grid[..., 1],
                          np.sin(angle) * grid[..., 0] + np.cos(angle) * grid[..., 1], grid[..., 2]], -1)
        field = sitk.GetImageFromArray((moved - grid).transpose(2, 1, 0, 3).copy(), isVector=True)
        field.SetOrigin((-15.0, -15.0, -15.0))
        twist = sitk.DisplacementFieldTransform(field)
        out = sitk.GetArrayFromImage(resample(self.moving, self.moving, twist, components="tensor"))
        for z in (2, 7, 12):  # z = -5, 0, 5 mm: turned by -k z about z (the inverse of the moving image's twist)
            theta = k * (z - 7)
            with self.subTest(z=z):
                self.assert_along(out[z, 7, 7], np.array([math.cos(theta), -math.sin(theta), 0.0]), atol=1e-3)

    def test_default_value_outside(self) -> None:
        shifted = sitk.Euler3DTransform((0.0, 0.0, 0.0), 0.0, 0.0, math.pi / 2, (30.0, 0.0, 0.0))
        out = sitk.GetArrayFromImage(resample(self.moving, self.moving, shifted, components="tensor",
                                              default_value=-1.0))
        np.testing.assert_array_equal(out[7, 7, 7], [-1.0] * 6)

    def test_untagged_six_components_warn(self) -> None:
        """An image of 6 components whose file says nothing: resampled per channel as before, with a warning that
        tensors need components='tensor'; none under a translation (nothing turns) or with components given."""
        with self.assertWarns(UserWarning) as cm:
            out = resample(self.moving, self.moving, self.rotation)
        self.assertIn("components='tensor'", str(cm.warning))
        self.assertIn("--components tensor", str(cm.warning))
        np.testing.assert_array_equal(
            sitk.GetArrayFromImage(out),
            sitk.GetArrayFromImage(resample(self.moving, self.moving, self.rotation, components="channels")))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            resample(self.moving, self.moving, sitk.TranslationTransform(3, (1.0, 0.0, 0.0)))
            resample(self.moving, self.moving, self.rotation, components="channels")

    def test_no_tensor_of_a_3d_image_is_refused(self) -> None:
        flat = sitk.Compose([sitk.Image((8, 8), sitk.sitkFloat32)] * 6)
        with self.assertRaises(InputError) as cm:
            resample(flat, flat, components="tensor")
        self.assertIn("2D image of 6 components", cm.exception.problem)
        five = sitk.Compose([sitk.Image((8, 8, 8), sitk.sitkFloat32)] * 5)
        with self.assertRaises(InputError) as cm:
            resample(five, five, components="tensor")
        self.assertIn("no 3 x 3 tensors", cm.exception.problem)


def _prolate(axis: int, size: float = 3e-3) -> np.ndarray:
    """A tensor (ITK's order) of eigenvalues ``size``, 1e-3, 1e-3 along ``axis`` (0: x, 1: y, 2: z)."""
    diagonal = np.full(3, 1e-3)
    diagonal[axis] = size
    return np.array([diagonal[0], 0.0, 0.0, diagonal[1], 0.0, diagonal[2]])


class LogEuclideanInterpolation(unittest.TestCase):
    """Component by component, the tensor half way between a prolate tensor along x and the same along y is
    diag(2, 2, 1) x 1e-3: its determinant 4e-9, a third more than either's 3e-9 ("tensor swelling"). Interpolated by
    their logarithms it is diag(sqrt 3, sqrt 3, 1) x 1e-3, of determinant 3e-9. Before, only the first was done."""

    def edge(self) -> sitk.Image:
        """An 8^3 volume: tensors along x where x < 4, along y from x = 4 (a sharp edge between voxels 3 and 4)."""
        values = np.zeros((8, 8, 8, 6))
        values[:, :, :4] = _prolate(0)
        values[:, :, 4:] = _prolate(1)
        return sitk.GetImageFromArray(values.astype(np.float32), isVector=True)

    def test_the_edge_swells_linearly_and_not_log_euclidean(self) -> None:
        moving = self.edge()
        half_voxel = sitk.TranslationTransform(3, (0.5, 0.0, 0.0))  # output voxel 3 lies half way between 3 and 4
        dets = {}
        for method in ("linear", "log-euclidean"):
            out = sitk.GetArrayFromImage(resample(moving, moving, half_voxel, components="tensor",
                                                  tensor_interpolation=method))
            dets[method] = np.linalg.det(_matrix(out[4, 4, 3].astype(np.float64)))
            # away from the edge both give the tensor there
            np.testing.assert_allclose(out[4, 4, 1], _prolate(0), rtol=1e-5, atol=1e-12)
            np.testing.assert_allclose(out[4, 4, 5], _prolate(1), rtol=1e-5, atol=1e-12)
        self.assertAlmostEqual(dets["linear"] / 3e-9, 4.0 / 3.0, places=4)  # swollen by a third
        self.assertAlmostEqual(dets["log-euclidean"] / 3e-9, 1.0, places=4)  # the geometric mean of 3e-9 and 3e-9
        np.testing.assert_allclose(
            sitk.GetArrayFromImage(resample(moving, moving, half_voxel, components="tensor",
                                            tensor_interpolation="log-euclidean"))[4, 4, 3],
            [math.sqrt(3) * 1e-3, 0.0, 0.0, math.sqrt(3) * 1e-3, 0.0, 1e-3], rtol=1e-5, atol=1e-12)

    def test_background_zeros_stay_zero_and_a_tensor_that_is_not_positive_is_floored(self) -> None:
        """Zero tensors (background) stay zero, where linear interpolation spreads a quarter of the edge's tensor
        into it; a tensor with a negative eigenvalue (noise) comes out positive definite, not NaN."""
        values = np.zeros((8, 8, 8, 6))
        values[2:6, 2:6, 2:6] = _prolate(0)
        values[3, 3, 3] = [1e-3, 0.0, 0.0, -2e-4, 0.0, 1e-3]  # an eigenvalue below zero
        moving = sitk.GetImageFromArray(values.astype(np.float32), isVector=True)
        quarter = sitk.TranslationTransform(3, (0.25, 0.0, 0.0))
        log = sitk.GetArrayFromImage(resample(moving, moving, quarter, components="tensor",
                                              tensor_interpolation="log-euclidean")).astype(np.float64)
        linear = sitk.GetArrayFromImage(resample(moving, moving, quarter, components="tensor"))
        self.assertTrue(np.all(np.isfinite(log)))
        support = np.any(values != 0, axis=-1)
        np.testing.assert_array_equal(np.any(log != 0, axis=-1), support)  # the brain's edge where it was
        self.assertGreater(np.abs(linear[4, 4, 1]).max(), 0.0)  # linear: a quarter tensor in the background
        eigenvalues = np.linalg.eigvalsh(_matrix(log[support]))
        self.assertGreater(eigenvalues.min(), 0.0)
        # the floor: 1e-3 of the median mean diffusivity (5/3 x 1e-3), the eigenvalue -2e-4 raised to 1.67e-6 before
        # the logarithm; voxel (3, 3, 3) draws 3/4 of its weight from itself, 1/4 from a prolate tensor
        expected = math.exp(0.75 * math.log(1e-3 * 5e-3 / 3) + 0.25 * math.log(1e-3))
        self.assertAlmostEqual(log[3, 3, 3, 3] / expected, 1.0, places=4)

    def test_the_edge_is_where_nearest_neighbour_puts_it(self) -> None:
        """The rule the README gives: a voxel is zero when more than half of its weight comes from zero tensors, a
        tensor at half or more (exactly half too). A row of 4 tensors shifted by a quarter voxel covers 4 voxels
        (linear: 5, the fifth a quarter tensor), by three quarters 4, by exactly a half 5 either way. (The README
        and the docstring had said 'half or more from zero tensors is zero', which the code never did.)"""
        values = np.zeros((4, 4, 10, 6))
        values[:, :, 2:6] = _prolate(0)
        moving = sitk.GetImageFromArray(values, isVector=True)
        for shift, log_voxels, linear_voxels in ((0.25, [2, 3, 4, 5], [1, 2, 3, 4, 5]),
                                                 (0.75, [1, 2, 3, 4], [1, 2, 3, 4, 5]),
                                                 (0.5, [1, 2, 3, 4, 5], [1, 2, 3, 4, 5])):
            for method, expected in (("log-euclidean", log_voxels), ("linear", linear_voxels)):
                with self.subTest(shift=shift, method=method):
                    out = sitk.GetArrayFromImage(resample(moving, moving, sitk.TranslationTransform(3, (shift, 0, 0)),
                                                          components="tensor", tensor_interpolation=method))
                    self.assertEqual(np.flatnonzero(np.any(out[2, 2] != 0, axis=-1)).tolist(), expected)

    def test_default_value_outside(self) -> None:
        moving = self.edge()
        out = sitk.GetArrayFromImage(resample(moving, moving, sitk.TranslationTransform(3, (3.0, 0.0, 0.0)),
                                              components="tensor", default_value=-1.0,
                                              tensor_interpolation="log-euclidean"))
        np.testing.assert_array_equal(out[:, :, 5:], -1.0)
        np.testing.assert_allclose(out[4, 4, 0], _prolate(0), rtol=1e-5)

    def test_refused_where_it_has_no_meaning(self) -> None:
        grey = sitk.Image(8, 8, 8, sitk.sitkFloat32)
        full = sitk.GetImageFromArray(np.tile(np.eye(3).ravel(), (4, 4, 4, 1)).astype(np.float32), isVector=True)
        for image, components, said in ((grey, None, "a grey image"), (self.edge(), "channels", "channels"),
                                        (full, "tensor", "9 components")):
            with self.subTest(said=said), self.assertRaises(InputError) as cm:
                resample(image, image, components=components, tensor_interpolation="log-euclidean")
            self.assertIn(said, cm.exception.problem)
            # the option as the CLI names it too: 'tensor_interpolation='linear'' alone had been the fix of
            # 'mmfusion resample --tensor-interpolation log-euclidean'
            self.assertIn("--tensor-interpolation linear", cm.exception.fix)
        with self.assertRaises(InputError) as cm:
            resample(self.edge(), self.edge(), components="tensor", tensor_interpolation="log")
        self.assertIn("log-euclidean", cm.exception.fix)

    def test_cli(self) -> None:
        with tempfile.TemporaryDirectory() as folder:
            moving = os.path.join(folder, "edge.nrrd")
            _write_nrrd(moving, sitk.GetArrayFromImage(self.edge()))
            sitk.WriteTransform(sitk.TranslationTransform(3, (0.5, 0.0, 0.0)), os.path.join(folder, "t.tfm"))
            out = os.path.join(folder, "out.nrrd")
            self.assertEqual(_run_cli(["resample", moving, "--reference", moving, "--transform",
                                       os.path.join(folder, "t.tfm"), "--tensor-interpolation", "log-euclidean",
                                       "-o", out]), 0)
            centre = _nrrd_data(out, 6).reshape(8, 8, 8, 6)[4, 4, 3]
            self.assertAlmostEqual(np.linalg.det(_matrix(centre.astype(np.float64))) / 3e-9, 1.0, places=4)


class TensorFiles(unittest.TestCase):
    """The files' component orders and frames, read and written back."""

    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.dir = tmp.name
        rng = np.random.default_rng(0)
        self.values = rng.normal(0, 1e-3, (6, 7, 8, 6)).astype(np.float32)  # (z, y, x) numpy order, ITK's order

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def test_nrrd_and_nifti_orders_read_alike(self) -> None:
        """NRRD 3D-symmetric-matrix (xx, xy, xz, yy, yz, zz) and NIfTI SYMMATRIX (xx, yx, yy, zx, zy, zz) of the
        same tensors read as the same image."""
        _write_nrrd(self.path("t.nrrd"), self.values)
        lower = np.stack([self.values[..., UPPER.index((j, i))] for i, j in LOWER], -1)  # (i >= j)
        _write_nifti(self.path("t.nii.gz"), lower)
        nrrd = read_image(self.path("t.nrrd"), keep_color=True)
        nifti = read_image(self.path("t.nii.gz"), keep_color=True)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(nrrd), self.values)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(nifti), self.values)

    def test_nrrd_round_trip_keeps_kinds_and_frame(self) -> None:
        """A Slicer DTI NRRD (RAS space, a measurement frame that is no identity) resampled onto its own grid is
        written back with its kinds, its frame (in LPS, the space ITK writes) and its values, gzip or raw."""
        frame = "(0,1,0) (-1,0,0) (0,0,1)"
        for gz in (False, True):
            with self.subTest(gzip=gz):
                _write_nrrd(self.path("dti.nrrd"), self.values, space="right-anterior-superior", frame=frame, gz=gz)
                code = _run_cli(["resample", self.path("dti.nrrd"), "--reference", self.path("dti.nrrd"),
                                 "-o", self.path("out.nrrd")])
                self.assertEqual(code, 0)
                header = _nrrd_header(self.path("out.nrrd"))
                self.assertEqual(header["kinds"], "3D-symmetric-matrix domain domain domain")
                self.assertEqual(header["space"], "left-posterior-superior")
                # the frame's axes in LPS: RAS (0,1,0) is LPS (0,-1,0), RAS (-1,0,0) is LPS (1,0,0)
                self.assertEqual(header["measurement frame"], "(0,-1,0) (1,0,0) (0,0,1)")
                np.testing.assert_allclose(_nrrd_data(self.path("out.nrrd"), 6), self.values.reshape(-1, 6),
                                           atol=1e-9)

    def test_nrrd_key_values_are_kept(self) -> None:
        """A Slicer DTI NRRD's key/value pairs (modality:=DTMRI, which Slicer and teem read; the b-value) are written
        back, as Slicer's Resample DTI Volume keeps them; the acquisition's gradient directions only where the
        tensors are not turned (a regridding, a translation). Before, every key/value pair was dropped."""
        pairs = [("modality", "DTMRI"), ("DWMRI_b-value", "1000"), ("DWMRI_gradient_0000", "0 0 0"),
                 ("DWMRI_gradient_0001", "1 0 0"), ("DWMRI_NEX_0001", "2")]
        _write_nrrd(self.path("kv.nrrd"), self.values, space="right-anterior-superior", keyvalues=pairs)
        grid = read_image(self.path("kv.nrrd"), keep_color=True)
        # turned about the grid's centre (in LPS: the header's RAS origin is negated), so the output is the tensors
        # turned, not the blank grid resample refuses since fcdf356 (the RAS point (3, 3, 2.5) lay off the grid)
        centre = grid.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in grid.GetSize()])
        sitk.WriteTransform(sitk.Euler3DTransform(centre, 0.0, 0.0, math.pi / 2), self.path("r.tfm"))
        sitk.WriteTransform(sitk.TranslationTransform(3, (0.5, 0.0, 0.0)), self.path("t.tfm"))
        for name, transform, kept in (("same.nrrd", None, pairs), ("moved.nhdr", "t.tfm", pairs),
                                      ("turned.nrrd", "r.tfm", pairs[:2])):
            with self.subTest(output=name):
                argv = ["resample", self.path("kv.nrrd"), "--reference", self.path("kv.nrrd"), "-o", self.path(name)]
                self.assertEqual(_run_cli(argv + (["--transform", self.path(transform)] if transform else [])), 0)
                self.assertEqual(_nrrd_keyvalues(self.path(name)), kept)
                # and read back: the output still says what it is, and another round keeps it
                again = read_image(self.path(name), keep_color=True)
                write_image(again, self.path("again.nrrd"))
                self.assertEqual(_nrrd_keyvalues(self.path("again.nrrd")), kept)

    def test_gradient_directions_are_kept_where_the_tensors_are_not_turned(self) -> None:
        """--components channels under a rotation resamples each component as a plain number: the tensors are not
        turned, so the acquisition's gradient directions still describe them and are kept; resampled as tensors
        under the same rotation, they are dropped. Before, they were dropped in both modes."""
        pairs = [("modality", "DTMRI"), ("DWMRI_b-value", "1000"), ("DWMRI_gradient_0001", "1 0 0"),
                 ("DWMRI_B-matrix_0001", "1000 0 0 0 0 0"), ("DWMRI_NEX_0001", "2")]
        _write_nrrd(self.path("kv.nrrd"), self.values, keyvalues=pairs)
        sitk.WriteTransform(sitk.Euler3DTransform((3.0, 3.0, 2.5), 0.0, 0.0, math.pi / 2), self.path("r.tfm"))
        argv = ["resample", self.path("kv.nrrd"), "--reference", self.path("kv.nrrd"), "--transform",
                self.path("r.tfm")]
        for components, kept in (("channels", pairs), ("tensor", pairs[:2])):
            with self.subTest(components=components):
                out = self.path(f"{components}.nrrd")
                self.assertEqual(_run_cli(argv + ["--components", components, "-o", out]), 0)
                self.assertEqual(_nrrd_keyvalues(out), kept)
                self.assertEqual(_nrrd_header(out)["kinds"], "3D-symmetric-matrix domain domain domain")
        # the channels' output holds the tensors unturned: the values moved, each component as it was
        moving = read_image(self.path("kv.nrrd"), keep_color=True)
        moved = resample(moving, moving, sitk.ReadTransform(self.path("r.tfm")), components="channels")
        np.testing.assert_array_equal(_nrrd_data(self.path("channels.nrrd"), 6),
                                      sitk.GetArrayFromImage(moved).reshape(-1, 6))

    def test_a_field_holding_colon_equals_is_a_field(self) -> None:
        """teem's rule (ITK's NrrdIO): a header line is a key/value pair only where ':=' comes before its first ': '.
        A detached header whose data file's path holds ':=' is read (it had been refused: its 'data file:' line was
        skipped as a key/value pair, so the data were looked for after the header, and the line was carried along as
        the pair ('data file: run', '1/t.raw')); an output named 'out:=1.nhdr' keeps its 'data file:' line (it had
        been dropped: the output read back as truncated); an attached NRRD with a key/value pair named 'data file'
        is read (it had been refused, its voxels looked for in '=elsewhere.raw')."""
        from MultimodalFusionLib import tensors

        pairs = [("modality", "DTMRI"), ("DWMRI_b-value", "1000")]
        _write_nrrd(self.path("t.nrrd"), self.values, keyvalues=pairs)
        with open(self.path("t.nrrd"), "rb") as fh:
            head, data = fh.read().split(b"\n\n", 1)
        os.mkdir(self.path("run:=1"))
        with open(self.path("run:=1/t.raw"), "wb") as fh:
            fh.write(data)
        with open(self.path("t.nhdr"), "wb") as fh:
            fh.write(head + b"\ncontent: dti:=1\ndata file: run:=1/t.raw\n\n")
        self.assertEqual(tensors.file_layout(self.path("t.nhdr")).keyvalues, tuple(pairs))
        image = read_image(self.path("t.nhdr"), keep_color=True)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), self.values)
        self.assertEqual(_run_cli(["resample", self.path("t.nhdr"), "--reference", self.path("t.nhdr"),
                                   "-o", self.path("out:=1.nhdr")]), 0)
        self.assertIn("data file: out:=1.raw.gz", _nrrd_header_text(self.path("out:=1.nhdr")).splitlines())
        self.assertEqual(_nrrd_keyvalues(self.path("out:=1.nhdr")), pairs)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(self.path("out:=1.nhdr"), keep_color=True)),
                                      self.values)
        _write_nrrd(self.path("k.nrrd"), self.values, keyvalues=pairs + [("data file", "elsewhere.raw")])
        np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(self.path("k.nrrd"), keep_color=True)),
                                      self.values)
        self.assertTrue(tensors._is_keyvalue("modality:=DTMRI"))
        self.assertTrue(tensors._is_keyvalue("note:=a: b"))  # ':=' first: the value may hold ': '
        self.assertTrue(tensors._is_keyvalue("data file:=x.raw"))
        for line in ("content: a:=b", "data file: run:=1/t.raw", "# modality:=DTMRI", "space: left-posterior-superior"):
            self.assertFalse(tensors._is_keyvalue(line), line)

    def test_a_field_needs_a_space_after_its_colon(self) -> None:
        """teem (ITK's NrrdIO) reads a field only as 'field: description' ("didn't see ": " or ":=" in line" for
        'data file:t.raw'), so neither ITK nor Slicer reads such a file. Taken for the field, 'data file:t.raw' in a
        detached DTI header had been made 'data file: <absolute path>' in the readable copy, and the file read as if
        whole; 'data file:missing.raw' in a plain header had been refused as missing 'missing.raw' (given it, ITK
        still refuses the header). Both are now ITK's refusal of the line, and _field finds no such field."""
        from MultimodalFusionLib import io as mmf_io
        from MultimodalFusionLib import tensors

        self.assertIsNone(tensors._field(["NRRD0004", "kinds:vector domain domain domain"], "kinds"))
        self.assertEqual(tensors._field(["NRRD0004", "kinds:  vector domain"], "kinds"), "vector domain")
        self.assertEqual(tensors._field(["NRRD0004", "data file: run:=1/t.raw"], "data file"), "run:=1/t.raw")
        _write_nrrd(self.path("t.nrrd"), self.values)
        with open(self.path("t.nrrd"), "rb") as fh:
            head, data = fh.read().split(b"\n\n", 1)
        with open(self.path("t.raw"), "wb") as fh:
            fh.write(data)
        with open(self.path("t.nhdr"), "wb") as fh:
            fh.write(head + b"\ndata file:t.raw\n\n")
        with self.assertRaises(RuntimeError):
            sitk.ReadImage(self.path("t.nhdr"))  # ITK refuses the file itself
        with self.assertRaises(InputError) as ctx:
            read_image(self.path("t.nhdr"), keep_color=True)
        self.assertIn("holds the line 'data file:t.raw'", ctx.exception.problem)
        self.assertIn("'data file: t.raw'", ctx.exception.fix)
        with open(self.path("t.nhdr"), "wb") as fh:  # with the space: read
            fh.write(head + b"\ndata file: t.raw\n\n")
        np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(self.path("t.nhdr"), keep_color=True)),
                                      self.values)
        sitk.WriteImage(sitk.GetImageFromArray(np.ones((3, 4, 5), np.int16)), self.path("p.nhdr"))
        with open(self.path("p.nhdr"), encoding="latin-1") as fh:
            text = fh.read().replace("data file: p.raw", "data file:missing.raw")
        with open(self.path("p.nhdr"), "w", encoding="latin-1") as fh:
            fh.write(text)
        self.assertIsNone(mmf_io.missing_data_file(self.path("p.nhdr")))
        with self.assertRaises(InputError) as ctx:
            read_image(self.path("p.nhdr"))
        self.assertNotIn("does not exist", str(ctx.exception))
        self.assertIn("holds the line 'data file:missing.raw'", ctx.exception.problem)

    def test_a_header_longer_than_64_kb_is_read_whole(self) -> None:
        """A DTI NRRD whose key/value pairs (1500 gradient directions and B-matrices) make its header 240 KB long is
        read whole: its tensors, and all its key/value pairs written back. Before, the header was read to 64 KB and
        taken to end there: the tensors were read from the middle of its text (values up to 1e31, no error), the
        pairs after 64 KB were lost and the output's data did not match its header (ITK: "expected 2880 bytes")."""
        pairs = [("modality", "DTMRI"), ("DWMRI_b-value", "1000")]
        for i in range(1500):
            pairs += [(f"DWMRI_gradient_{i:04d}", "0.267261241912424 -0.534522483824849 0.801783725737273"),
                      (f"DWMRI_B-matrix_{i:04d}", "71.4285714 -142.857143 214.285714 285.714286 -428.571429 642.857143")]
        _write_nrrd(self.path("long.nrrd"), self.values, keyvalues=pairs)
        self.assertGreater(os.path.getsize(self.path("long.nrrd")) - self.values.nbytes, 3 << 16)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(self.path("long.nrrd"), keep_color=True)),
                                      self.values)
        self.assertEqual(_run_cli(["resample", self.path("long.nrrd"), "--reference", self.path("long.nrrd"),
                                   "-o", self.path("out.nrrd")]), 0)
        self.assertEqual(_nrrd_keyvalues(self.path("out.nrrd")), pairs)
        np.testing.assert_array_equal(_nrrd_data(self.path("out.nrrd"), 6), self.values.reshape(-1, 6))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(read_image(self.path("out.nrrd"), keep_color=True)),
                                      self.values)

    def test_frame_and_space_bring_tensors_to_lps(self) -> None:
        """A tensor along the frame's first axis is, in memory, along that axis in LPS."""
        along = np.zeros((4, 4, 4, 6), np.float32)
        along[..., 0], along[..., 3], along[..., 5] = 3e-3, 1e-3, 1e-3  # along the frame's x
        _write_nrrd(self.path("f.nrrd"), along, space="right-anterior-superior", frame="(0,1,0) (1,0,0) (0,0,1)")
        image = read_image(self.path("f.nrrd"), keep_color=True)
        # the frame's x is RAS (0, 1, 0): anterior, LPS (0, -1, 0)
        np.testing.assert_allclose(abs(_principal(sitk.GetArrayFromImage(image)[1, 1, 1]) @ [0, 1, 0]), 1.0,
                                   atol=1e-6)

    def test_nrrd_rotated_by_the_cli(self) -> None:
        """mmfusion resample of a DTI NRRD (no --components: its kinds say tensors) under a rotation of 90 degrees
        about z: the principal direction along y, in the file's frame."""
        prolate = sitk.GetArrayFromImage(_prolate_along_x((9, 9, 9)))
        _write_nrrd(self.path("p.nrrd"), prolate)
        sitk.WriteTransform(sitk.Euler3DTransform((4.0, 4.0, 4.0), 0.0, 0.0, math.pi / 2), self.path("r.tfm"))
        code = _run_cli(["resample", self.path("p.nrrd"), "--reference", self.path("p.nrrd"), "--transform",
                         self.path("r.tfm"), "-o", self.path("r.nrrd")])
        self.assertEqual(code, 0)
        self.assertEqual(_nrrd_header(self.path("r.nrrd"))["kinds"], "3D-symmetric-matrix domain domain domain")
        centre = _nrrd_data(self.path("r.nrrd"), 6).reshape(9, 9, 9, 6)[4, 4, 4]
        np.testing.assert_allclose(abs(_principal(centre) @ [0, 1, 0]), 1.0, atol=1e-5)

    def test_ants_nifti_without_intent_p1(self) -> None:
        """A DTI NIfTI as ITK and ANTs write it (intent SYMMATRIX, intent_p1 0, 6 values a voxel in the lower
        triangle's order) is read as tensors: it had been refused as "symmetric 0 x 0 matrices"."""
        lower = np.stack([self.values[..., UPPER.index((j, i))] for i, j in LOWER], -1)
        _write_nifti(self.path("ants.nii.gz"), lower, p1=None)
        image = read_image(self.path("ants.nii.gz"), keep_color=True)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), self.values)
        _write_nifti(self.path("three.nii.gz"), lower[..., :3], p1=None)
        with self.assertRaises(InputError) as cm:
            read_image(self.path("three.nii.gz"), keep_color=True)
        self.assertIn("symmetric matrices of 3 values a voxel", cm.exception.problem)

    def test_a_nifti_is_read_as_tensors_whether_its_name_says_gzip_or_not(self) -> None:
        """ITK reads a NIfTI compressed or not whatever its name; the tensor check had chosen by the name, so an
        uncompressed file named .nii.gz (or a compressed one named .nii) was read as a plain 6-component image."""
        lower = np.stack([self.values[..., UPPER.index((j, i))] for i, j in LOWER], -1)
        _write_nifti(self.path("plain.nii"), lower)
        _write_nifti(self.path("packed.nii.gz"), lower)
        shutil.copy(self.path("plain.nii"), self.path("plain-named.nii.gz"))
        shutil.copy(self.path("packed.nii.gz"), self.path("packed-named.nii"))
        for name in ("plain-named.nii.gz", "packed-named.nii"):
            with self.subTest(name=name):
                image = read_image(self.path(name), keep_color=True)
                np.testing.assert_array_equal(sitk.GetArrayFromImage(image), self.values)

    def test_a_4d_symmatrix_nifti_is_named_with_the_axis_nifti_keeps_tensors_on(self) -> None:
        """6 volumes on the 4th axis with intent SYMMATRIX (NIfTI keeps a voxel's values on the 5th): refused as
        "symmetric matrices of 1 values a voxel", which named no cause; now the axis and the fix."""
        import nibabel as nib

        lower = np.stack([self.values[..., UPPER.index((j, i))] for i, j in LOWER], -1)
        image = nib.Nifti1Image(lower.transpose(2, 1, 0, 3).astype(np.float32), np.diag([-1.0, -1.0, 1.0, 1.0]))
        image.header.set_intent("symmetric matrix", (3,))
        nib.save(image, self.path("4d.nii.gz"))
        with self.assertRaises(InputError) as cm:
            read_image(self.path("4d.nii.gz"), keep_color=True)
        self.assertIn("6 volumes on its 4th axis", cm.exception.problem)
        self.assertIn("(x, y, z, 1, 6)", cm.exception.fix)

    def test_measurement_frame_vectors_are_columns(self) -> None:
        """teem's NRRD spec: each vector of 'measurement frame:' is a column of the matrix M that takes the frame's
        coordinates to the header's space, D_space = M D M^T. A frame that is no symmetric matrix (a rotation of
        0.5 rad about z), RAS space and oblique space directions, as Slicer writes an oblique DTI acquisition: in
        memory the tensor is S M D M^T S (S = diag(-1, -1, 1), RAS to LPS); rows would give another tensor."""
        a = 0.5
        frame = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
        text = " ".join("(" + ",".join(repr(float(v)) for v in frame[:, k]) + ")" for k in range(3))
        one = np.array([2e-3, 0.7e-3, -0.3e-3, 1e-3, 0.2e-3, 0.5e-3], np.float32)
        _write_nrrd(self.path("oblique.nrrd"), np.broadcast_to(one, (4, 4, 4, 6)).copy(),
                    space="right-anterior-superior", frame=text)
        got = _matrix(sitk.GetArrayFromImage(read_image(self.path("oblique.nrrd"), keep_color=True))[1, 2, 3])
        flip = np.diag([-1.0, -1.0, 1.0])
        np.testing.assert_allclose(got, flip @ frame @ _matrix(one) @ frame.T @ flip, atol=1e-9)
        self.assertGreater(np.abs(got - flip @ frame.T @ _matrix(one) @ frame @ flip).max(), 1e-4)

    def test_measurement_frame_spelt_without_its_space_is_read(self) -> None:
        """teem reads each two-word NRRD field without its space too ('measurementframe:', 'datafile:'), so ITK and
        Slicer read such a file's frame; it had been seen by nobody here, and the tensors of an oblique frame were
        read in the header's space, another tensor (2.0, 0.7, 0.3 ... for 1.18, 0.80, 0.36 ...), without a word."""
        a = 0.5
        frame = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
        text = " ".join("(" + ",".join(repr(float(v)) for v in frame[:, k]) + ")" for k in range(3))
        one = np.array([2e-3, 0.7e-3, -0.3e-3, 1e-3, 0.2e-3, 0.5e-3], np.float32)
        read = {}
        for spelling in ("measurement frame", "measurementframe", "Measurement Frame"):
            path = self.path(spelling.replace(" ", "_") + ".nrrd")
            _write_nrrd(path, np.broadcast_to(one, (4, 4, 4, 6)).copy(), space="right-anterior-superior", frame=text)
            with open(path, "rb") as fh:
                raw = fh.read()
            with open(path, "wb") as fh:
                fh.write(raw.replace(b"measurement frame:", spelling.encode() + b":"))
            read[spelling] = sitk.GetArrayFromImage(read_image(path, keep_color=True))[1, 2, 3]
        for spelling, values in read.items():
            np.testing.assert_array_equal(values, read["measurement frame"], err_msg=spelling)
        flip = np.diag([-1.0, -1.0, 1.0])
        np.testing.assert_allclose(_matrix(read["measurementframe"]), flip @ frame @ _matrix(one) @ frame.T @ flip,
                                   atol=1e-9)

    def test_cli_tensor_reorientation(self) -> None:
        """mmfusion resample under a shear: by default (ppd) the principal direction goes where J^-1 takes it;
        --tensor-reorientation fs keeps the tensor (the shear's rotation is small, not the direction's turn)."""
        values = np.zeros((9, 9, 9, 6), np.float32)
        values[..., 0], values[..., 3], values[..., 5] = 3e-3, 1e-3, 1e-3  # along x
        _write_nrrd(self.path("x.nrrd"), values)
        shear = sitk.AffineTransform(3)
        shear.SetMatrix((1.0, 0.0, 0.0, 0.8, 1.0, 0.0, 0.0, 0.0, 1.0))  # y += 0.8 x: J^-1 e_x = (1, -0.8, 0)
        shear.SetCenter((4.0, 4.0, 4.0))
        sitk.WriteTransform(shear, self.path("shear.tfm"))
        found = {}
        for method in ("ppd", "fs"):
            out = self.path(f"{method}.nrrd")
            self.assertEqual(_run_cli(["resample", self.path("x.nrrd"), "--reference", self.path("x.nrrd"),
                                       "--transform", self.path("shear.tfm"), "--tensor-reorientation", method,
                                       "-o", out]), 0)
            found[method] = _principal(_nrrd_data(out, 6).reshape(9, 9, 9, 6)[4, 4, 4])
        expected = np.array([1.0, -0.8, 0.0]) / math.hypot(1.0, 0.8)
        np.testing.assert_allclose(abs(found["ppd"] @ expected), 1.0, atol=1e-6)
        # finite strain: R^T e_x, R the rotation of J (about 21.8 degrees about z), not J^-1's direction (38.7)
        self.assertGreater(np.degrees(np.arccos(min(1.0, abs(found["fs"] @ expected)))), 10.0)

    def test_nifti_round_trip_keeps_intent_and_order(self) -> None:
        import nibabel as nib

        lower = self.values  # any six numbers a voxel, in the file's (lower-triangular) order
        _write_nifti(self.path("t.nii.gz"), lower)
        for out in ("o.nii.gz", "o.nii"):
            with self.subTest(out=out):
                self.assertEqual(_run_cli(["resample", self.path("t.nii.gz"), "--reference", self.path("t.nii.gz"),
                                           "-o", self.path(out)]), 0)
                written = nib.load(self.path(out))
                self.assertEqual(written.header.get_intent()[:2], ("symmetric matrix", (3.0,)))
                np.testing.assert_array_equal(np.asarray(written.dataobj)[:, :, :, 0, :],
                                              lower.transpose(2, 1, 0, 3))

    def test_3d_matrix_nrrd_is_turned(self) -> None:
        """A 3D-matrix NRRD (9 components), which had been resampled as 9 channels without a word."""
        full = np.zeros((5, 5, 5, 9), np.float32)
        full[..., 0], full[..., 4], full[..., 8] = 3e-3, 1e-3, 1e-3
        _write_nrrd(self.path("m.nrrd"), full, kind="3D-matrix")
        image = read_image(self.path("m.nrrd"), keep_color=True)
        out = resample(image, image, sitk.Euler3DTransform((2.0, 2.0, 2.0), 0.0, 0.0, math.pi / 2))
        centre = sitk.GetArrayFromImage(out)[2, 2, 2].reshape(3, 3)
        np.testing.assert_allclose(centre, np.diag([1e-3, 3e-3, 1e-3]), atol=1e-9)
        write_image(out, self.path("m_out.nrrd"))
        self.assertEqual(_nrrd_header(self.path("m_out.nrrd"))["kinds"], "3D-matrix domain domain domain")
        # NIfTI's 3 x 3 GENMATRIX (row by row, as NRRD's 3D-matrix): read as such, written back so
        import nibabel as nib

        write_image(out, self.path("m_out.nii.gz"))
        written = nib.load(self.path("m_out.nii.gz"))
        self.assertEqual(written.header.get_intent()[:2], ("general matrix", (3.0, 3.0)))
        back = read_image(self.path("m_out.nii.gz"), keep_color=True)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(out))
        again = resample(back, back, sitk.Euler3DTransform((2.0, 2.0, 2.0), 0.0, 0.0, math.pi / 2))
        np.testing.assert_allclose(sitk.GetArrayFromImage(again)[2, 2, 2].reshape(3, 3), np.diag([3e-3, 1e-3, 1e-3]),
                                   atol=1e-9)

    def test_detached_header(self) -> None:
        _write_nrrd(self.path("t.nrrd"), self.values)
        with open(self.path("t.nrrd"), "rb") as fh:
            raw = fh.read()
        head, data = raw.split(b"\n\n", 1)
        os.mkdir(self.path("sub"))
        with open(self.path("sub/t.raw"), "wb") as fh:
            fh.write(data)
        with open(self.path("sub/t.nhdr"), "wb") as fh:
            fh.write(head + b"\ndata file: t.raw\n\n")
        image = read_image(self.path("sub/t.nhdr"), keep_color=True)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image), self.values)

    def test_tensors_that_cannot_be_resampled_are_named(self) -> None:
        cases = {
            "2d.nrrd": dict(values=np.zeros((4, 4, 6), np.float32), domain=2),
            "masked.nrrd": dict(values=np.zeros((4, 4, 4, 7), np.float32), kind="3D-masked-symmetric-matrix"),
            "2x2.nrrd": dict(values=np.zeros((4, 4, 4, 3), np.float32), kind="2D-symmetric-matrix"),
        }
        for name, kwargs in cases.items():
            _write_nrrd(self.path(name), **kwargs)
        _write_nifti(self.path("2x2.nii.gz"), np.zeros((4, 4, 4, 3), np.float32), p1=2)
        for name, said in (("2d.nrrd", "2D image of 3D-symmetric-matrix"),
                           ("masked.nrrd", "3D-masked-symmetric-matrix"),
                           ("2x2.nrrd", "2D-symmetric-matrix"), ("2x2.nii.gz", "symmetric 2 x 2")):
            with self.subTest(name=name), self.assertRaises(InputError) as cm:
                read_image(self.path(name), keep_color=True)
            self.assertIn(said, cm.exception.problem)
            self.assertIn("3 x 3 tensors", cm.exception.problem)


class TensorsAreNotRegisteredOrFused(unittest.TestCase):
    """A DTI volume given to register or fuse is refused naming the route: register its b0 or FA image, then
    resample the tensors with the transform. Before, it was refused as "6 components per pixel; only grey, RGB and
    RGBA images are supported" with the fix to take one component (the xx values), no registration input."""

    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.dir = tmp.name
        values = np.zeros((12, 12, 12, 6), np.float32)
        values[3:9, 3:9, 3:9] = _prolate(0)
        self.dti = os.path.join(self.dir, "dti.nrrd")
        _write_nrrd(self.dti, values)
        grey = sitk.GetImageFromArray(np.any(values != 0, axis=-1).astype(np.float32) * 100)
        self.b0 = os.path.join(self.dir, "b0.nii.gz")
        sitk.WriteImage(grey, self.b0)
        self.untagged = os.path.join(self.dir, "six.mha")  # 6 components, a file that says nothing of them
        sitk.WriteImage(sitk.GetImageFromArray(values, isVector=True), self.untagged)

    def assert_tensor_refusal(self, text: str, untagged: bool = False) -> None:
        self.assertIn("diffusion tensors", text)
        self.assertIn("b0", text)
        self.assertIn("mmfusion resample DTI.nrrd --reference FIXED --transform DIR/transform.tfm", text)
        if untagged:
            self.assertIn("one component of it", text)  # it may be something else
            # its file does not say it holds tensors: resampled without it, they would not be turned
            self.assertIn("add --components tensor", text)

    def cli_error(self, argv: list[str]) -> str:
        err = _io.StringIO()
        with contextlib.redirect_stdout(_io.StringIO()), contextlib.redirect_stderr(err):
            code = cli.main(argv)
        self.assertEqual(code, 2)
        return err.getvalue()

    def test_cli(self) -> None:
        out = os.path.join(self.dir, "out")
        for argv in (["register", self.b0, self.dti, "--output-dir", out],
                     ["register", self.dti, self.b0, "--output-dir", out],
                     ["fuse", self.b0, self.dti, "-o", os.path.join(self.dir, "f.nii.gz")],
                     ["run", self.b0, self.dti, "--output-dir", out]):
            with self.subTest(argv=argv[:3]):
                self.assert_tensor_refusal(self.cli_error(argv))
                if argv[0] != "run":  # (run makes its folder before it reads the images)
                    self.assertFalse(os.path.exists(out))
        self.assert_tensor_refusal(self.cli_error(["register", self.b0, self.untagged, "--output-dir", out]), True)

    def test_python(self) -> None:
        from MultimodalFusionLib import fusion, registration

        fixed = read_image(self.b0)
        dti = read_image(self.dti, keep_color=True)
        for call in (lambda: registration.register(fixed, dti), lambda: registration.register(dti, fixed),
                     lambda: fusion.fuse(fixed, dti)):
            with self.assertRaises(InputError) as cm:
                call()
            self.assert_tensor_refusal(str(cm.exception))
        with self.assertRaises(InputError) as cm:
            read_image(self.dti)  # as grey, which registration reads
        self.assert_tensor_refusal(str(cm.exception))


def _run_cli(argv: list[str]) -> int:
    with contextlib.redirect_stdout(_io.StringIO()), contextlib.redirect_stderr(_io.StringIO()):
        return cli.main(argv)


if __name__ == "__main__":
    unittest.main()
