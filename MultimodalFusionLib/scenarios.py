"""Self-test scenarios shared by the Slicer module's Test class and the Testing/ cases.

Each ``check_*`` function builds small volumes, runs the real code against a real MRML scene
(Slicer's own, or the slicer-core wheel's), raises ``AssertionError`` with a clear message when
something is wrong, and returns the numbers it measured. In Slicer, the module's self-test
runs them on ``slicer.mrmlScene``; under pytest, ``Testing/test_mrml*.py`` and
``Testing/test_slicer_module*.py`` run them on a fresh scene from :func:`mrml.new_scene`.

The test volumes are an analytic head phantom (ellipsoidal scalp, skull, grey and white
matter, ventricles and a lesion) sampled on oblique, anisotropic grids, so nothing needs
downloading and a known rigid misalignment gives a known answer.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Callable

import numpy as np
import SimpleITK as sitk

from . import mrml
from .registration.accuracy import transform_error

__all__ = [
    "head_phantom",
    "phantom_pair",
    "oblique_grid",
    "TRUTH",
    "check_volume_round_trip",
    "check_transform_points",
    "check_harden_reproduces_resampling",
    "check_display_and_table",
    "check_save_and_reload",
    "check_logic_register_fuse_show",
    "MRML_SCENARIOS",
]

#: The known misalignment of the phantom pair: rotation (radians, about x, y, z) and
#: translation (mm) of the rigid transform mapping fixed-space points into the moving image.
TRUTH = {"angles": (0.06, -0.04, 0.10), "translation": (6.0, -4.0, 3.0)}

_MR = {"outside": 0.0, "scalp": 600.0, "skull": 80.0, "gm": 450.0, "wm": 750.0, "csf": 100.0, "lesion": 300.0}
_PET = {"outside": 0.0, "scalp": 0.3, "skull": 0.2, "gm": 2.8, "wm": 1.0, "csf": 0.2, "lesion": 6.0}


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def oblique_grid(size: tuple[int, int, int], spacing: tuple[float, float, float], *,
                 rotation: tuple[float, float, float] = (0.0, 0.0, 0.0),
                 centre: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> sitk.Image:
    """An empty float32 image of the given size/spacing, rotated (Euler x, y, z radians), centred on ``centre``."""
    image = sitk.Image([int(s) for s in size], sitk.sitkFloat32)
    image.SetSpacing([float(s) for s in spacing])
    euler = sitk.Euler3DTransform((0, 0, 0), *[float(r) for r in rotation])
    direction = np.array(euler.GetMatrix()).reshape(3, 3)
    image.SetDirection([float(v) for v in direction.ravel()])
    half = (np.array(size) - 1) * np.array(spacing) / 2.0
    image.SetOrigin([float(v) for v in np.array(centre) - direction @ half])
    return image


def _physical_points(grid: sitk.Image) -> np.ndarray:
    """(z, y, x, 3) physical coordinates of every voxel centre."""
    size = grid.GetSize()
    k, j, i = np.meshgrid(*[np.arange(n, dtype=float) for n in size[::-1]], indexing="ij")
    index = np.stack([i, j, k], axis=-1)
    matrix = np.array(grid.GetDirection()).reshape(3, 3) @ np.diag(grid.GetSpacing())
    return index @ matrix.T + np.array(grid.GetOrigin())


def _soft_inside(points: np.ndarray, centre: tuple[float, float, float], axes: tuple[float, float, float],
                 edge_mm: float = 2.5) -> np.ndarray:
    """Smooth 0..1 indicator of an ellipsoid (edge width about ``edge_mm``), so images are differentiable."""
    scaled = (points - np.array(centre)) / np.array(axes)
    r = np.sqrt((scaled ** 2).sum(-1))
    return 1.0 / (1.0 + np.exp(-(1.0 - r) * min(axes) / edge_mm))


def head_phantom(grid: sitk.Image, modality: str = "mr", *, transform: sitk.Transform | None = None,
                 noise: float = 0.01, seed: int = 0) -> sitk.Image:
    """The analytic head phantom sampled on ``grid``.

    Args:
        grid: image whose geometry is used (size, spacing, origin, direction).
        modality: "mr" (T1-like) or "pet" (FDG-like, smoothed to PET resolution, hot lesion).
        transform: when given, the voxel at point p shows the phantom at ``transform(p)``.
        noise: Gaussian noise as a fraction of the maximum intensity.
        seed: noise seed.

    Returns:
        float32 image on ``grid``.
    """
    points = _physical_points(grid)
    if transform is not None:
        flat = points.reshape(-1, 3)
        if mrml._is_linear(transform):
            matrix = mrml.linear_transform_matrix(transform)
            flat = flat @ matrix[:3, :3].T + matrix[:3, 3]
        else:
            flat = np.array([transform.TransformPoint(p) for p in flat.tolist()])
        points = flat.reshape(points.shape)
    head = _soft_inside(points, (0, 0, 0), (72, 88, 68))
    inner_head = _soft_inside(points, (0, 0, 0), (66, 82, 62))
    brain = _soft_inside(points, (0, 0, 0), (60, 76, 56))
    wm = _soft_inside(points, (0, -4, 4), (40, 54, 36))
    ventricles = np.maximum(_soft_inside(points, (-11, 6, 8), (7, 20, 9)),
                            _soft_inside(points, (13, 4, 8), (6, 18, 9)))
    lesion = _soft_inside(points, (24, -34, 18), (9, 9, 9))
    levels = _MR if modality == "mr" else _PET
    scalp = head - inner_head
    skull = inner_head - brain
    gm = brain * (1 - wm)
    values = (levels["scalp"] * scalp + levels["skull"] * skull + levels["gm"] * gm
              + levels["wm"] * brain * wm)
    values = values * (1 - ventricles * brain) + levels["csf"] * ventricles * brain
    values = values * (1 - lesion) + levels["lesion"] * lesion
    image = sitk.GetImageFromArray(values.astype(np.float32))
    image.CopyInformation(grid)
    if modality == "pet":
        image = sitk.SmoothingRecursiveGaussian(image, 5.0 / 2.355 * 2)  # about 10 mm FWHM
    if noise > 0:
        rng = np.random.default_rng(seed)
        array = sitk.GetArrayFromImage(image)
        array = array + rng.normal(0.0, noise * float(array.max()), array.shape).astype(np.float32)
        noisy = sitk.GetImageFromArray(array.astype(np.float32))
        noisy.CopyInformation(image)
        image = noisy
    return image


def truth_transform() -> sitk.Euler3DTransform:
    """The known rigid transform (fixed -> moving points) of :func:`phantom_pair`."""
    return sitk.Euler3DTransform((0.0, 0.0, 0.0), *TRUTH["angles"], TRUTH["translation"])


def phantom_pair(seed: int = 0) -> tuple[sitk.Image, sitk.Image, sitk.Transform]:
    """(fixed MR, moving PET, true transform): the PET is the phantom moved by the inverse of the
    truth, so registering PET to MR should recover ``truth`` (fixed -> moving).

    Grids are small (about 40^3 voxels), anisotropic and oblique.
    """
    truth = truth_transform()
    fixed = head_phantom(oblique_grid((40, 46, 36), (4.0, 4.2, 4.5), rotation=(0.0, 0.0, 0.12)), "mr", seed=seed)
    moving_grid = oblique_grid((32, 38, 30), (5.0, 5.0, 5.5), rotation=(0.1, 0.05, -0.08), centre=(3, -2, 2))
    moving = head_phantom(moving_grid, "pet", transform=truth.GetInverse(), seed=seed + 1)
    return fixed, moving, truth


# ----------------------------------------------------------------------------------------------
# MRML bridge scenarios
# ----------------------------------------------------------------------------------------------

def check_volume_round_trip(scene: Any) -> dict[str, float]:
    """Oblique, anisotropic volumes (float, int16, RGB, label map) survive sitk -> node -> sitk
    exactly, and the node's IJK-to-RAS matrix is the image's index-to-LPS map with x, y negated."""
    import vtk

    rng = np.random.default_rng(7)
    grid = oblique_grid((11, 9, 7), (0.7, 1.3, 2.9), rotation=(0.3, -0.5, 0.8), centre=(10.5, -20.25, 33.0))
    cases = {
        "float32": sitk.GetImageFromArray(rng.normal(size=(7, 9, 11)).astype(np.float32)),
        "int16": sitk.GetImageFromArray(rng.integers(-1000, 3000, (7, 9, 11)).astype(np.int16)),
        "rgb": sitk.GetImageFromArray(rng.integers(0, 256, (7, 9, 11, 3)).astype(np.uint8), isVector=True),
        "label": sitk.GetImageFromArray(rng.integers(0, 4, (7, 9, 11)).astype(np.uint8)),
    }
    worst = 0.0
    for kind, image in cases.items():
        image.CopyInformation(grid) if kind != "rgb" else _copy_geometry(image, grid)
        node = mrml.volume_node_from_image(image, scene, name=f"roundtrip {kind}", label=kind == "label")
        expected_class = {"rgb": "vtkMRMLVectorVolumeNode", "label": "vtkMRMLLabelMapVolumeNode"}.get(
            kind, "vtkMRMLScalarVolumeNode")
        _expect(node.IsA(expected_class), f"{kind}: node class {node.GetClassName()}, expected {expected_class}")
        back = mrml.image_from_volume_node(node)
        _expect(back.GetPixelID() == image.GetPixelID(),
                f"{kind}: pixel type {back.GetPixelIDTypeAsString()} != {image.GetPixelIDTypeAsString()}")
        _expect(back.GetSize() == image.GetSize(), f"{kind}: size {back.GetSize()} != {image.GetSize()}")
        _expect(back.GetSpacing() == image.GetSpacing(), f"{kind}: spacing {back.GetSpacing()} != {image.GetSpacing()}")
        _expect(back.GetOrigin() == image.GetOrigin(), f"{kind}: origin {back.GetOrigin()} != {image.GetOrigin()}")
        _expect(back.GetDirection() == image.GetDirection(), f"{kind}: direction changed in the round trip")
        _expect(np.array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image)),
                f"{kind}: voxel values changed in the round trip")
        # Geometry seen by Slicer: IJK -> RAS must be the ITK index -> LPS map with x, y negated.
        matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(matrix)
        for index in ((0, 0, 0), (10, 8, 6), (3, 7, 2)):
            ras = np.array(matrix.MultiplyPoint([*map(float, index), 1.0])[:3])
            lps = np.array(image.TransformIndexToPhysicalPoint(index))
            worst = max(worst, float(np.abs(ras - lps * np.array(mrml.LPS_TO_RAS)).max()))
    _expect(worst < 1e-9, f"IJK-to-RAS differs from the image's geometry by {worst} mm")
    return {"max_ijk_to_ras_error_mm": worst}


def _copy_geometry(image: sitk.Image, grid: sitk.Image) -> None:
    image.SetOrigin(grid.GetOrigin())
    image.SetSpacing(grid.GetSpacing())
    image.SetDirection(grid.GetDirection())


def _random_bspline(reference: sitk.Image, magnitude: float, seed: int) -> sitk.BSplineTransform:
    bspline = sitk.BSplineTransformInitializer(reference, [3, 3, 3])
    rng = np.random.default_rng(seed)
    bspline.SetParameters(rng.normal(0.0, magnitude, len(bspline.GetParameters())).tolist())
    return bspline


def _test_transforms(reference: sitk.Image) -> dict[str, sitk.Transform]:
    rigid = truth_transform()
    affine = sitk.AffineTransform(3)
    affine.SetMatrix([1.05, 0.03, -0.02, -0.04, 0.97, 0.05, 0.01, -0.03, 1.02])
    affine.SetCenter([5.0, -3.0, 2.0])
    affine.SetTranslation([2.0, 1.5, -3.0])
    bspline = _random_bspline(reference, 2.0, seed=3)
    composite = sitk.CompositeTransform([rigid, bspline])
    field = sitk.TransformToDisplacementField(composite, sitk.sitkVectorFloat64, reference.GetSize(),
                                              reference.GetOrigin(), reference.GetSpacing(),
                                              reference.GetDirection())
    # a registration started from a field (register(initial_transform=field)): its rigid stage acts first, then the
    # field (Slicer keeps such a node as its "to parent" transform); the field's grid, 8 voxels wider than the
    # reference's on each side, holds the rigid's image of it (outside its grid Slicer and ITK differ, see README)
    wide = reference.TransformContinuousIndexToPhysicalPoint([-8.0] * 3)
    smooth = sitk.TransformToDisplacementField(bspline, sitk.sitkVectorFloat64, [n + 16 for n in reference.GetSize()],
                                               wide, reference.GetSpacing(), reference.GetDirection())
    return {"rigid": rigid, "affine": affine, "bspline": bspline, "rigid+bspline": composite,
            "displacement": sitk.DisplacementFieldTransform(field),
            "displacement+rigid": sitk.CompositeTransform([sitk.DisplacementFieldTransform(smooth), rigid])}


def check_transform_points(scene: Any) -> dict[str, float]:
    """Engine transforms pushed as transform nodes move points in RAS where the engine moves them
    in LPS: "from parent" equals the ITK (fixed -> moving) transform, "to parent" its inverse;
    converting back gives the same transform."""
    reference = oblique_grid((20, 22, 18), (4.0, 4.0, 4.5), rotation=(0.0, 0.0, 0.12))
    rng = np.random.default_rng(11)
    points = [reference.TransformContinuousIndexToPhysicalPoint((np.array(reference.GetSize()) *
                                                                 rng.uniform(0.2, 0.8, 3)).tolist())
              for _ in range(25)]
    flip = np.array(mrml.LPS_TO_RAS)
    expected_class = {"rigid": "vtkMRMLLinearTransformNode", "affine": "vtkMRMLLinearTransformNode",
                      "bspline": "vtkMRMLBSplineTransformNode", "rigid+bspline": "vtkMRMLBSplineTransformNode",
                      "displacement": "vtkMRMLGridTransformNode", "displacement+rigid": "vtkMRMLGridTransformNode"}
    errors: dict[str, float] = {}
    for name, transform in _test_transforms(reference).items():
        node = mrml.transform_node_from_sitk(transform, scene, name=f"points {name}")
        _expect(node.IsA(expected_class[name]), f"{name}: node class {node.GetClassName()}")
        from_parent, to_parent = node.GetTransformFromParent(), node.GetTransformToParent()
        worst_from = worst_to = worst_back = 0.0
        back = mrml.sitk_transform_from_node(node)
        inverse = transform.GetInverse() if mrml._is_linear(transform) else None
        for p in points:
            lps = np.array(transform.TransformPoint(p))
            ras = np.array(from_parent.TransformPoint((np.array(p) * flip).tolist()))
            worst_from = max(worst_from, float(np.abs(ras - lps * flip).max()))
            moved = np.array(to_parent.TransformPoint((lps * flip).tolist())) * flip
            if inverse is not None:  # where the engine moves a moving-image point
                worst_to = max(worst_to, float(np.abs(moved - np.array(inverse.TransformPoint(lps.tolist()))).max()))
            else:  # deformable: "to parent" inverts "from parent" (VTK inverts iteratively)
                worst_to = max(worst_to, float(np.abs(moved - np.array(p)).max()))
            worst_back = max(worst_back, float(np.abs(np.array(back.TransformPoint(p)) - lps).max()))
        errors[f"{name}_from_parent_mm"] = worst_from
        errors[f"{name}_to_parent_mm"] = worst_to
        errors[f"{name}_round_trip_mm"] = worst_back
        _expect(worst_from < 1e-4, f"{name}: node moves points {worst_from:.3g} mm away from the engine")
        _expect(worst_to < (1e-6 if inverse is not None else 1e-2),
                f"{name}: the inverse (to parent) is off by {worst_to:.3g} mm")
        _expect(worst_back < 1e-4, f"{name}: node -> sitk round trip is off by {worst_back:.3g} mm")
    return errors


def check_harden_reproduces_resampling(scene: Any) -> dict[str, float]:
    """The moving volume under the registration's transform node is the engine's resampled image:

    - linear: hardening the transform changes only the node's geometry; resampling the hardened
      volume on the fixed grid (no transform) equals the engine's resampling exactly;
    - any transform: what Slicer displays (VTK reslicing through the node's transform to world,
      no ITK involved) equals the engine's resampling to float precision;
    - deformable: hardening (which resamples in Slicer) agrees in the volume's interior.
    """
    from .preprocess import resample

    fixed, moving, _truth = phantom_pair()
    fixed_node = mrml.volume_node_from_image(fixed, scene, name="harden fixed")
    numbers: dict[str, float] = {}
    for name, transform in _test_transforms(fixed).items():
        if name in ("affine", "bspline"):
            continue  # covered by the rigid and composite cases; keep the test fast
        engine = sitk.GetArrayFromImage(resample(moving, fixed, transform))
        scale = float(np.abs(engine).max())
        moving_node = mrml.volume_node_from_image(moving, scene, name=f"harden moving {name}")
        transform_node = mrml.transform_node_from_sitk(transform, scene, name=f"harden {name}")
        mrml.set_parent_transform(moving_node, transform_node)

        shown = sitk.GetArrayFromImage(mrml.reslice_volume_node(moving_node, fixed_node))
        both = (engine != 0) & (shown != 0)
        reslice_error = float(np.abs(shown - engine)[both].max()) / scale
        numbers[f"{name}_reslice_rel_error"] = reslice_error
        _expect(reslice_error < 1e-3, f"{name}: Slicer's view differs from the engine by {reslice_error:.3g} (relative)")
        _expect(int(((engine != 0) != (shown != 0)).sum()) <= engine.size // 200,
                f"{name}: Slicer's view and the engine disagree on which voxels are inside the moving volume")

        moving_node.HardenTransform()
        _expect(moving_node.GetParentTransformNode() is None, f"{name}: transform still set after hardening")
        hardened = mrml.image_from_volume_node(moving_node)
        again = sitk.GetArrayFromImage(resample(hardened, fixed))
        if mrml._is_linear(transform):
            error = float(np.abs(again - engine).max()) / scale
            numbers[f"{name}_harden_rel_error"] = error
            _expect(error < 1e-5, f"{name}: hardened volume differs from the engine by {error:.3g} (relative)")
        else:
            # Slicer's hardening resamples once more (onto a grid it chooses): compare away from edges.
            overlap = sitk.GetImageFromArray(((engine != 0) & (again != 0)).astype(np.uint8))
            inside = sitk.GetArrayFromImage(sitk.BinaryErode(overlap, [3, 3, 3])).astype(bool)
            corr = float(np.corrcoef(again[inside], engine[inside])[0, 1])
            numbers[f"{name}_harden_correlation"] = corr
            _expect(corr > 0.98, f"{name}: hardened volume correlates only {corr:.3f} with the engine's")
    return numbers


def check_display_and_table(scene: Any) -> dict[str, Any]:
    """PET display (colour node, window/level, threshold), slice views (background = anatomy,
    foreground = function, opacity) and the metrics table node."""
    fixed, moving, _truth = phantom_pair()
    anatomy = mrml.volume_node_from_image(fixed, scene, name="display MR")
    pet = mrml.volume_node_from_image(moving, scene, name="display PET")
    views = mrml.ensure_slice_views(scene)
    count = mrml.show_fusion(anatomy, pet, opacity=0.35, colormap="PET-Rainbow2", threshold_fraction=0.2)
    _expect(count == len(views) and count >= 1, f"{count} slice views set, expected {len(views)}")
    for composite in views:
        _expect(composite.GetBackgroundVolumeID() == anatomy.GetID(), "background is not the anatomical volume")
        _expect(composite.GetForegroundVolumeID() == pet.GetID(), "foreground is not the functional volume")
        _expect(abs(composite.GetForegroundOpacity() - 0.35) < 1e-12, "foreground opacity not set")
    display = pet.GetDisplayNode()
    _expect(display.GetColorNode() is not None and display.GetColorNode().GetName() == "PET-Rainbow2",
            "PET volume is not coloured with PET-Rainbow2")
    values = sitk.GetArrayFromImage(moving)
    lo, hi = np.percentile(values, [1.0, 99.5])
    window_min = display.GetWindowLevelMin()
    window_max = display.GetWindowLevelMax()
    _expect(not display.GetAutoWindowLevel(), "auto window/level is still on")
    _expect(abs(window_min - lo) < 1e-3 * (hi - lo) and abs(window_max - hi) < 1e-3 * (hi - lo),
            f"window {window_min:.3g}..{window_max:.3g}, expected {lo:.3g}..{hi:.3g}")
    _expect(bool(display.GetApplyThreshold()), "threshold not applied")
    _expect(abs(display.GetLowerThreshold() - (lo + 0.2 * (hi - lo))) < 1e-3 * (hi - lo),
            f"lower threshold {display.GetLowerThreshold():.3g}")
    grey = anatomy.GetDisplayNode().GetColorNode()
    _expect(grey is not None and grey.GetName() == "Grey", "anatomical volume is not grey")

    metrics = {"registration": {"metric_after": -0.61, "mi": 0.83}, "fusion": {"entropy": 6.25, "qabf": 0.57},
               "converged": True, "transform_type": "Euler3DTransform"}
    table = mrml.metrics_table_node(metrics, scene, name="display metrics")
    read = mrml.table_to_dict(table)
    _expect(table.GetNumberOfRows() == 6, f"table has {table.GetNumberOfRows()} rows, expected 6")
    _expect(read["registration.metric_after"] == -0.61 and read["fusion.qabf"] == 0.57,
            f"table values differ: {read}")
    _expect(read["converged"] == 1.0 and read["transform_type"] == "Euler3DTransform", f"table values differ: {read}")
    return {"window": (window_min, window_max), "views": count, "table": read}


def check_save_and_reload(scene: Any, folder: str | None = None) -> dict[str, Any]:
    """Results saved as a Slicer bundle (.mrb) load back with the same voxels, transform and metrics."""
    own = folder is None
    folder = folder or tempfile.mkdtemp(prefix="mmf-scene-")
    fixed, _moving, truth = phantom_pair()
    volume = mrml.volume_node_from_image(fixed, scene, name="saved volume")
    transform = mrml.transform_node_from_sitk(truth, scene, name="saved transform")
    table = mrml.metrics_table_node({"mi": 0.5}, scene, name="saved metrics")
    names = (volume.GetName(), transform.GetName(), table.GetName())
    try:
        path = mrml.save_scene(os.path.join(folder, "results.mrb"), scene)
        _expect(os.path.getsize(path) > 1000, "the saved bundle is (nearly) empty")
        loaded = mrml.load_scene(path)
        volume2, transform2, table2 = (loaded.GetFirstNodeByName(n) for n in names)
        _expect(volume2 is not None and transform2 is not None and table2 is not None,
                "a saved node is missing from the reloaded scene")
        image2 = mrml.image_from_volume_node(volume2)
        _expect(np.array_equal(sitk.GetArrayViewFromImage(image2), sitk.GetArrayViewFromImage(fixed)),
                "reloaded voxels differ")
        _expect(np.allclose(image2.GetDirection(), fixed.GetDirection(), atol=1e-9)
                and np.allclose(image2.GetOrigin(), fixed.GetOrigin(), atol=1e-6), "reloaded geometry differs")
        matrix_error = float(np.abs(mrml.linear_transform_matrix(mrml.sitk_transform_from_node(transform2))
                                    - mrml.linear_transform_matrix(truth)).max())
        _expect(matrix_error < 1e-9, f"reloaded transform differs by {matrix_error}")
        _expect(abs(float(mrml.table_to_dict(table2)["mi"]) - 0.5) < 1e-12, "reloaded metrics differ")
        return {"bytes": os.path.getsize(path), "transform_error": matrix_error}
    finally:
        if own:
            import shutil

            shutil.rmtree(folder, ignore_errors=True)


#: The MRML bridge scenarios (each takes a scene).
MRML_SCENARIOS: dict[str, Callable[[Any], Any]] = {
    "volume_round_trip": check_volume_round_trip,
    "transform_points": check_transform_points,
    "harden_reproduces_resampling": check_harden_reproduces_resampling,
    "display_and_table": check_display_and_table,
    "save_and_reload": check_save_and_reload,
}


# ----------------------------------------------------------------------------------------------
# Logic scenario
# ----------------------------------------------------------------------------------------------

def check_logic_register_fuse_show(logic: Any, scene: Any, *, method: str = "wavelet") -> dict[str, Any]:
    """The module's Logic end to end on the phantom: register PET to MR, fuse, show, tabulate.

    Checks: the transform node recovers the known misalignment (within 2 mm, half a voxel, on average),
    input nodes are untouched, outputs are new nodes with unique names, the fused node is on the
    MR grid, the slice views show MR + registered PET in PET-Heat, the metrics table holds the
    registration and fusion numbers.
    """
    fixed, moving, truth = phantom_pair()
    mr = mrml.volume_node_from_image(fixed, scene, name="MR")
    pet = mrml.volume_node_from_image(moving, scene, name="PET")
    mrml.ensure_slice_views(scene)
    before = (sitk.GetArrayFromImage(mrml.image_from_volume_node(mr)).copy(),
              sitk.GetArrayFromImage(mrml.image_from_volume_node(pet)).copy())
    node_count = scene.GetNumberOfNodes()
    fractions: list[float] = []

    def progress(fraction: float, message: str) -> bool:
        fractions.append(fraction)
        return True

    out = logic.run(mr, pet, stages=["rigid"], seed=1, fusionMethod=method, opacity=0.6, progress=progress)
    # accuracy of the recovered transform: mean displacement difference over the fixed grid
    mean_error = transform_error(mrml.sitk_transform_from_node(out.transformNode), truth, fixed)["mean"]
    _expect(mean_error < 2.0, f"registration is off by {mean_error:.2f} mm on average")
    _expect(out.transformNode.IsA("vtkMRMLLinearTransformNode"), "a rigid registration must give a linear transform")
    _expect(fractions and fractions[-1] == 1.0 and all(b >= a - 1e-9 for a, b in zip(fractions, fractions[1:])),
            "progress did not run monotonically to 1")

    new_nodes = [out.transformNode, out.resampledVolumeNode, out.fusedVolumeNode, out.metricsTableNode]
    _expect(all(n is not None for n in new_nodes), "an output node is missing")
    _expect(len({n.GetID() for n in new_nodes + [mr, pet]}) == 6, "an output node reuses an input node")
    _expect(len({n.GetName() for n in new_nodes + [mr, pet]}) == 6, "output node names are not unique")
    _expect(scene.GetNumberOfNodes() > node_count, "no node was added to the scene")
    _expect(np.array_equal(sitk.GetArrayFromImage(mrml.image_from_volume_node(mr)), before[0])
            and np.array_equal(sitk.GetArrayFromImage(mrml.image_from_volume_node(pet)), before[1]),
            "an input volume was modified")
    _expect(pet.GetParentTransformNode() is None, "the moving volume's transform was changed")
    fused = mrml.image_from_volume_node(out.fusedVolumeNode)
    _expect(fused.GetSize() == fixed.GetSize() and np.allclose(fused.GetDirection(), fixed.GetDirection()),
            "the fused volume is not on the MR grid")

    composite = mrml.ensure_slice_views(scene)[0]
    _expect(composite.GetBackgroundVolumeID() == mr.GetID(), "background is not the MR")
    _expect(composite.GetForegroundVolumeID() == out.resampledVolumeNode.GetID(),
            "foreground is not the registered PET")
    _expect(abs(composite.GetForegroundOpacity() - 0.6) < 1e-12, "foreground opacity is not 0.6")
    _expect(out.resampledVolumeNode.GetDisplayNode().GetColorNode().GetName() == "PET-Heat",
            "registered PET is not shown in PET-Heat")

    table = mrml.table_to_dict(out.metricsTableNode)
    for key, value in out.fusion.metrics.items():
        if isinstance(value, float) and np.isfinite(value):
            _expect(abs(float(table[f"fusion.{key}"]) - value) < 1e-9, f"table fusion.{key} differs")
    _expect(abs(float(table["registration.metric_after"]) - float(out.registration.result.metric_after)) < 1e-12,
            "table registration.metric_after differs")
    _expect(float(table["registration.metric_after"]) <= float(table["registration.metric_before"]),
            "the registration metric got worse")
    return {"mean_error_mm": mean_error, "table": table, "seconds": out.registration.result.seconds}
