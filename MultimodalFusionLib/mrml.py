"""The bridge between MRML (3D Slicer's scene) and the engine's SimpleITK objects.

This is the only module that touches MRML. It runs inside 3D Slicer and under the
``slicer-core`` wheel (Slicer's own C++ libraries, no Qt), so everything here is tested
against a real ``vtkMRMLScene``. ``slicer`` and ``vtk`` are imported inside the functions.

Coordinate conventions, converted here and nowhere else:

- ITK/SimpleITK work in LPS, Slicer in RAS: a point (x, y, z) in LPS is (-x, -y, z) in RAS,
  so the origin's and the direction matrix's first two rows change sign
  (``D_ras = F @ D_lps``, ``F = diag(-1, -1, 1)``); spacing is unchanged.
- An ITK registration transform maps points of the fixed image's space to the moving
  image's space (it is a *resampling* transform). Slicer calls that direction "from parent":
  a transform node set as parent of the moving volume, with ``TransformFromParent`` equal to
  the ITK transform (in RAS: ``F T F``), shows the moving volume aligned to the fixed one,
  and hardening it reproduces the engine's resampled image. The transform "to parent" (the
  inverse) moves the moving volume's points where the registration moved them. Slicer reads
  and writes ITK transform files with exactly this convention.
"""

from __future__ import annotations

import itertools
import numbers
import os
import shutil
import tempfile
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from .errors import InputError, itk_guard
from .io import NOT_AVAILABLE
from .preprocess import COMPUTE_MASK
from .validation import DIFFUSION_REASON, grid_differences

__all__ = [
    "LPS_TO_RAS",
    "ras_points_to_lps",
    "ras_geometry",
    "slicer_matrix_to_parent",
    "get_scene",
    "new_scene",
    "ensure_color_nodes",
    "ensure_slice_views",
    "unique_name",
    "image_from_volume_node",
    "volume_node_from_image",
    "node_dicom_units",
    "copy_voxel_value_units",
    "mask_from_node",
    "require_binary_labelmap",
    "label_map_from_node",
    "segments_label_map",
    "control_points_lps",
    "transform_node_from_sitk",
    "sitk_transform_from_node",
    "fields_clamped_over",
    "linear_transform_matrix",
    "set_parent_transform",
    "reslice_volume_node",
    "setup_anatomical_display",
    "setup_functional_display",
    "setup_weights_display",
    "copy_color_table",
    "reset_display_range",
    "colormap_colors",
    "show_fusion",
    "metrics_table_node",
    "table_to_dict",
    "save_scene",
    "load_scene",
    "FUNCTIONAL_COLORMAPS",
    "CORE_COLORMAPS",
    "available_colormaps",
]

#: Diagonal of the matrix that converts LPS <-> RAS (its own inverse).
LPS_TO_RAS = (-1.0, -1.0, 1.0)
_F3 = np.diag(LPS_TO_RAS)
_F4 = np.diag(LPS_TO_RAS + (1.0,))


def ras_points_to_lps(points: Any) -> np.ndarray:
    """Points in RAS (as Slicer shows and saves them in RAS) as ITK's LPS points, or back (its own inverse).

    Pure arithmetic (no MRML): x and y change sign, z and any further coordinate (a 2D point is taken as
    Slicer takes it, on an axial slice) keep theirs; NaN rows (unplaced markups) stay NaN.

    Args:
        points: (n, dim) array-like of coordinates in mm, dim 2 or more.

    Returns:
        (n, dim) float64 array (a new array; the input is not modified).
    """
    arr = np.array(points, dtype=np.float64)
    arr[..., :2] *= LPS_TO_RAS[:2]
    return arr


def ras_geometry(image: sitk.Image) -> tuple[list[float], list[float]]:
    """The image's origin and direction (row-major) in RAS, as Slicer shows them.

    Pure arithmetic (no MRML): the numbers Slicer's Volumes module gives for the image once
    loaded (origin; "IJK to RAS direction matrix"). A 2D image is taken as Slicer takes it (one
    axial slice), so its x and y change sign too.
    """
    dim = image.GetDimension()
    flip = np.diag(LPS_TO_RAS[:dim]) if dim <= 3 else np.diag(LPS_TO_RAS + (1.0,) * (dim - 3))
    origin = flip @ np.array(image.GetOrigin(), dtype=float)
    direction = flip @ np.array(image.GetDirection(), dtype=float).reshape(dim, dim)
    return [float(v) + 0.0 for v in origin], [float(v) + 0.0 for v in direction.ravel()]


def slicer_matrix_to_parent(transform: sitk.Transform) -> np.ndarray:
    """The 4x4 RAS matrix Slicer's Transforms module shows for a linear engine transform.

    Loading the engine's ``transform.tfm`` (ITK: fixed -> moving points, LPS) into Slicer gives a
    transform node whose "to parent" matrix, the one the Transforms module displays and edits,
    is the inverse in RAS: it moves the moving volume's points onto the fixed volume
    (``F T^-1 F``, ``F = diag(-1, -1, 1, 1)``). Pure arithmetic, equal to what
    :func:`transform_node_from_sitk` and Slicer's own transform reader give (tested).

    Raises:
        InputError: the transform is not linear or not 3D.
    """
    if transform.GetDimension() != 3:
        raise InputError(f"Slicer transforms are 3D; this one is {transform.GetDimension()}D.",
                         "Register 3D volumes to get a transform for Slicer.")
    return _F4 @ np.linalg.inv(linear_transform_matrix(transform)) @ _F4


#: Colour nodes suited to functional images (PET, SPECT), all among Slicer's default colour nodes.
FUNCTIONAL_COLORMAPS = ("PET-Heat", "PET-Rainbow2", "PET-DICOM", "PET-HotMetalBlue", "Inferno", "Magma",
                        "Plasma", "Viridis", "Rainbow", "Iron")
#: The part of :data:`FUNCTIONAL_COLORMAPS` that MRML itself defines; Inferno, Magma, Plasma and
#: Viridis come from Slicer's Colors module (the application), so a bare MRML scene lacks them.
CORE_COLORMAPS = ("PET-Heat", "PET-Rainbow2", "PET-DICOM", "PET-HotMetalBlue", "Rainbow", "Iron")


def available_colormaps(scene: Any) -> list[str]:
    """The colour tables of :data:`FUNCTIONAL_COLORMAPS` that ``scene`` holds (after adding MRML's
    defaults): what a colour-table choice may offer."""
    ensure_color_nodes(scene)
    return [name for name in FUNCTIONAL_COLORMAPS if scene.GetFirstNodeByName(name) is not None]


# ----------------------------------------------------------------------------------------------
# Scene
# ----------------------------------------------------------------------------------------------

def get_scene(scene: Any = None, node: Any = None) -> Any:
    """The scene to work in: ``scene`` if given, else the node's scene, else ``slicer.mrmlScene``.

    Raises:
        InputError: there is no scene (under slicer-core there is no ``slicer.mrmlScene``).
    """
    if scene is not None:
        return scene
    if node is not None and node.GetScene() is not None:
        return node.GetScene()
    import slicer

    found = getattr(slicer, "mrmlScene", None)
    if found is None:
        raise InputError("No MRML scene is available (this is not a running 3D Slicer).",
                         "Pass scene=... (e.g. MultimodalFusionLib.mrml.new_scene()).")
    return found


def new_scene(*, colors: bool = True, slice_views: bool = True) -> Any:
    """A new ``vtkMRMLScene`` set up like Slicer's: default colour nodes and slice views.

    Outside Slicer (under the slicer-core wheel) nothing creates these; this does what
    Slicer's application start-up and layout manager do, so scripts and tests see the same
    scene content as the Slicer application.

    Args:
        colors: add Slicer's default colour nodes (Grey, PET-Heat, PET-Rainbow2, ...).
        slice_views: add the Red, Yellow and Green slice nodes and their slice composite nodes.
    """
    import slicer

    scene = slicer.vtkMRMLScene()
    if colors:
        ensure_color_nodes(scene)
    if slice_views:
        ensure_slice_views(scene)
    return scene


def ensure_color_nodes(scene: Any) -> None:
    """Add Slicer's default colour nodes to ``scene`` unless they are there (Slicer adds them at
    start-up; a bare slicer-core scene has none)."""
    import slicer

    if scene.GetFirstNodeByName("PET-Heat") is not None:
        return
    # The logic must stay alive while nodes are added; it is released afterwards, the nodes stay.
    logic = slicer.vtkMRMLColorLogic()
    logic.SetMRMLScene(scene)
    logic.AddDefaultColorNodes()
    logic.SetMRMLScene(None)


def ensure_slice_views(scene: Any, names: Sequence[str] = ("Red", "Yellow", "Green")) -> list[Any]:
    """The scene's slice composite nodes, creating Slicer's three standard slice views when the
    scene has none (what Slicer's layout manager does on start-up).

    Returns:
        The slice composite nodes of the scene.
    """
    import slicer

    found = _nodes_by_class(scene, "vtkMRMLSliceCompositeNode")
    if found:
        return found
    orientations = {"Red": "Axial", "Yellow": "Sagittal", "Green": "Coronal"}
    if scene.GetFirstNodeByClass("vtkMRMLSliceNode") is None:
        # Orientation presets live in the scene's default slice node; CreateNodeByClass copies them.
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
    for name in names:
        slice_node = scene.CreateNodeByClass("vtkMRMLSliceNode")
        slice_node.SetName(name)
        slice_node.SetLayoutName(name)
        slice_node.SetSingletonTag(name)
        slice_node.SetOrientation(orientations.get(name, "Axial"))
        scene.AddNode(slice_node)
        slice_node.UnRegister(None)  # CreateNodeByClass returns a new reference; the scene holds it now
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(name)
        composite.SetSingletonTag(name)
        scene.AddNode(composite)
    return _nodes_by_class(scene, "vtkMRMLSliceCompositeNode")


def _nodes_by_class(scene: Any, class_name: str) -> list[Any]:
    return [scene.GetNthNodeByClass(i, class_name) for i in range(scene.GetNumberOfNodesByClass(class_name))]


def unique_name(scene: Any, base: str) -> str:
    """``base`` if no node has that name, else ``base_1``, ``base_2``, ...: new output nodes never
    take an input node's name (so a user can always tell them apart)."""
    if scene.GetFirstNodeByName(base) is None:
        return base
    for i in itertools.count(1):
        candidate = f"{base}_{i}"
        if scene.GetFirstNodeByName(candidate) is None:
            return candidate
    raise AssertionError("unreachable")  # pragma: no cover


# ----------------------------------------------------------------------------------------------
# Volumes
# ----------------------------------------------------------------------------------------------

def _vtk_matrix(array: np.ndarray) -> Any:
    import vtk

    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(array[r, c]))
    return m


def _np_matrix(matrix: Any) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


#: the route for a DTI volume node (see :func:`image_from_volume_node`)
DIFFUSION_TENSOR_FIX = ("Register its baseline (b0) or FA volume instead (the Diffusion Tensor Scalar Maps module makes "
                        "FA), then resample the tensors with the resulting transform, which turns each tensor: "
                        "Slicer's Resample DTI Volume module (SlicerDMRI), or save the volume as .nrrd and run "
                        "mmfusion resample DTI.nrrd --reference FIXED --transform transform.tfm -o OUT.nrrd.")
#: the route for a DWI volume node (its gradient images, one component each)
DIFFUSION_WEIGHTED_FIX = ("Register its baseline (b0) volume instead (SlicerDMRI's DWI to DTI Estimation writes it, or "
                          "take its b0 component with the Vector to Scalar Volume module), then resample the DWI "
                          "with the resulting transform in Slicer (Resample Scalar/Vector/DWI Volume), or estimate "
                          "its tensors first and resample those (Resample DTI Volume, or mmfusion resample).")


# ----------------------------------------------------------------------------------------------
# A PET's units: DICOM Units (0054,1001) in the engine, coded entries in MRML
# ----------------------------------------------------------------------------------------------

#: A DICOM Units (0054,1001) code (what :func:`io.dicom_units` gives) -> the UCUM coded entry (code value, meaning)
#: of a node's VoxelValueUnits. GML: the entry Slicer's PET DICOM extension gives a PET it loads in SUV
#: (QIICR/Slicer-PETDICOMExtension, SUVFactorCalculatorCLI/SUVFactorCalculator.cxx writes it in the Real World Value
#: Mapping, DICOMRWVMPlugin/DICOMRWVMPlugin.py sets it with SetVoxelValueUnits, with the quantity
#: :data:`_SUV_QUANTITY`). Slicer's own DICOM scalar volume plugin sets units only for CT ([hnsf'U]) and MR ("1")
#: (Slicer/Slicer, Modules/Scripted/DICOMLib/DICOMPlugin.py, mapSOPClassUIDToDICOMQuantityAndUnits), none for a
#: PET: the other codes are DICOM's UCUM entries for the PET Units defined terms, as DCMTK spells them (DCMTK,
#: dcmsr/libcmr: CID 7181, Abstract Multi-dimensional Image Model Component Units). That list (and the PET Units
#: of PS3.16 as pydicom-data-sr's sr/tables/_concepts_UCUM.py tabulates them) has none for MLMINML, MLML, NONE and
#: STDDEV, nor has Slicer or its PET DICOM extension: MLMINML and MLML are spelt as the list spells their neighbours
#: (mg/min/ml, ml/min/g: "ml/min/ml", "ml/ml"); NONE and STDDEV have no UCUM unit but "1" (CID 7181's "no units", an
#: MR's in Slicer), and are told apart by the quantity (:data:`_QUANTITY_OF_DICOM_UNITS`).
_UCUM_OF_DICOM_UNITS = {
    "GML": ("{SUVbw}g/ml", "Standardized Uptake Value body weight"),
    "BQML": ("Bq/ml", "Becquerels/milliliter"),
    "CNTS": ("{counts}", "Counts"),
    "CPS": ("{counts}/s", "Counts per second"),
    "PROPCNTS": ("{propcounts}", "Proportional to counts"),
    "PROPCPS": ("{propcounts}/s", "Proportional to counts per second"),
    "CM2": ("cm2", "square centimeter"),
    "CM2ML": ("cm2/ml", "Centimeter**2/milliliter"),
    "PCNT": ("%", "Percent"),
    "MGMINML": ("mg/min/ml", "Milligrams/minute/milliliter"),
    "UMOLMINML": ("umol/min/ml", "Micromole/minute/milliliter"),
    "MLMING": ("ml/min/g", "Milliliter/minute/gram"),
    "MLG": ("ml/g", "Milliliter/gram"),
    "1CM": ("/cm", "/Centimeter"),
    "UMOLML": ("umol/ml", "Micromole/milliliter"),
    "MLMINML": ("ml/min/ml", "Milliliter/minute/milliliter"),
    "MLML": ("ml/ml", "Milliliter/milliliter"),
    "NONE": ("1", "no units"),
    "STDDEV": ("1", "no units"),
}
#: The VoxelValueQuantity of a node in SUV (GML), as the PET DICOM extension sets it (the files named above)
_SUV_QUANTITY = ("126400", "DCM", "Standardized Uptake Value")
#: A DICOM Units code -> the VoxelValueQuantity (code value, scheme, meaning) a node in them gets, where the units alone
#: do not say it: SUV for GML; for NONE (a PET's values without units) and STDDEV (in standard deviations) the
#: quantities of CID 7180, Abstract Multi-dimensional Image Model Component Semantics (DCMTK, dcmsr/libcmr/cid7469.cc
#: includes them): "Nuclear Medicine Tomographic Activity" ("accumulated decay event counts in a Nuclear Medicine
#: Tomographic image (including PET)") and "Z-score"
_QUANTITY_OF_DICOM_UNITS = {
    "GML": _SUV_QUANTITY,
    "NONE": ("110821", "DCM", "Nuclear Medicine Tomographic Activity"),
    "STDDEV": ("113071", "DCM", "Z-score"),
}
#: A node's VoxelValueUnits code value (case-folded: "Bq/mL" is "Bq/ml") -> the DICOM Units code. Every SUV in g/ml
#: (body weight, lean body mass, ideal body weight; the PET DICOM extension's "{SUVlbm}g/ml"..., DCMTK's
#: "g/ml{SUVbw}"...) reads as GML, what the engine takes for SUV; an SUV by body surface area (cm2/ml) as CM2ML.
#: A CT's [hnsf'U] is no PET Units: it gives none. "%" is PCNT, which DICOM defines as percent, nothing more: a node
#: in % (a PET's, or an MR's signal change) is so not taken for SUV, and its units come back on the engine's output.
#: Not here, read with the node's quantity (:data:`_DICOM_UNITS_OF_QUANTITY`): plain "g/ml" and "1" (no units).
_DICOM_UNITS_OF_UCUM = {
    **{code.casefold(): units for units, (code, _meaning) in _UCUM_OF_DICOM_UNITS.items() if code != "1"},
    **{spelt.casefold(): "GML" for suv in ("SUVbw", "SUVlbm", "SUVibw")
       for spelt in (f"{{{suv}}}g/ml", f"g/ml{{{suv}}}")},
    "{suvbsa}cm2/ml": "CM2ML",
    "cm2/ml{suvbsa}": "CM2ML",
}
#: (VoxelValueUnits code value, case-folded; VoxelValueQuantity (code value, scheme)) -> the DICOM Units code, for
#: units that say a PET's only with the quantity. Plain "g/ml" is GML (SUV) only where the quantity is SUV: GML is what
#: the engine takes for SUV (its SUV windows, and a node made from the image is labelled "{SUVbw}g/ml", SUV), which
#: a mass density in g/ml (g/cm3) is not. "1" ("no units": an MR's, from Slicer's DICOM plugin) is NONE or STDDEV only
#: with their quantity (:data:`_QUANTITY_OF_DICOM_UNITS`), else none.
_DICOM_UNITS_OF_QUANTITY = {
    ("g/ml", _SUV_QUANTITY[:2]): "GML",
    **{(_UCUM_OF_DICOM_UNITS[units][0], quantity[:2]): units
       for units, quantity in _QUANTITY_OF_DICOM_UNITS.items() if _UCUM_OF_DICOM_UNITS[units][0] == "1"},
}


def node_dicom_units(node: Any) -> str:
    """A volume node's VoxelValueUnits (a UCUM coded entry, e.g. Slicer's PET DICOM extension's "{SUVbw}g/ml") as
    the DICOM Units (0054,1001) code the engine reads (:func:`io.dicom_units`: "GML", "BQML", "CNTS"...); "" where
    the node states none, or units that are no PET's (a CT's HU, an MR's "no units", a code of another scheme).
    Plain "g/ml" and "1" are read with the node's VoxelValueQuantity (SUV: GML; see ``_DICOM_UNITS_OF_QUANTITY``)."""
    entry = node.GetVoxelValueUnits() if node is not None and node.IsA("vtkMRMLScalarVolumeNode") else None
    if entry is None or entry.GetCodingSchemeDesignator().strip().upper() not in ("UCUM", ""):
        return ""
    value = entry.GetCodeValue().strip().casefold()
    quantity = node.GetVoxelValueQuantity()
    if quantity is not None:
        key = (quantity.GetCodeValue().strip(), quantity.GetCodingSchemeDesignator().strip().upper())
        if (value, key) in _DICOM_UNITS_OF_QUANTITY:
            return _DICOM_UNITS_OF_QUANTITY[(value, key)]
    return _DICOM_UNITS_OF_UCUM.get(value, "")


def _coded_entry(value: str, scheme: str, meaning: str) -> Any:
    import slicer

    entry = slicer.vtkCodedEntry()
    entry.SetValueSchemeMeaning(value, scheme, meaning)
    return entry


def _set_voxel_value_units(node: Any, units: str) -> None:
    """Give a scalar volume node the VoxelValueUnits (and, for SUV, NONE and STDDEV, the VoxelValueQuantity:
    ``_QUANTITY_OF_DICOM_UNITS``) of the DICOM Units code ``units``; none where ``units`` is "" or a code without a
    UCUM entry here, so that a reused node loses those of the voxels it held before."""
    if not node.IsA("vtkMRMLScalarVolumeNode"):
        return
    ucum = _UCUM_OF_DICOM_UNITS.get(units)
    node.SetVoxelValueUnits(_coded_entry(ucum[0], "UCUM", ucum[1]) if ucum else None)
    quantity = _QUANTITY_OF_DICOM_UNITS.get(units) if ucum else None
    node.SetVoxelValueQuantity(_coded_entry(*quantity) if quantity else None)


def copy_voxel_value_units(source: Any, target: Any) -> None:
    """Give ``target`` ``source``'s VoxelValueUnits and VoxelValueQuantity, as they are (copies; none where
    ``source`` has none): for a volume in ``source``'s units, e.g. the registered (resampled) moving volume. A fused
    image or a weight map is no longer in them: it gets none (:func:`volume_node_from_image` of an image without
    DICOM Units)."""
    if not (source.IsA("vtkMRMLScalarVolumeNode") and target.IsA("vtkMRMLScalarVolumeNode")):
        return
    for get, put in ((source.GetVoxelValueUnits, target.SetVoxelValueUnits),
                     (source.GetVoxelValueQuantity, target.SetVoxelValueQuantity)):
        entry = get()
        put(_coded_entry(entry.GetCodeValue(), entry.GetCodingSchemeDesignator(), entry.GetCodeMeaning())
            if entry is not None else None)


def image_from_volume_node(node: Any, *, float32: bool = False) -> sitk.Image:
    """The volume node's voxels and geometry as a SimpleITK image (in LPS).

    Scalar, label-map and vector (e.g. RGB) volume nodes are supported. The node's own
    geometry is used (its IJK-to-RAS matrix); a parent transform is not applied (harden it
    first if it should be).

    The node's VoxelValueUnits, where they are a PET's (:func:`node_dicom_units`), become the image's DICOM Units
    (:func:`io.dicom_units`), as :func:`io.read_image` keeps a DICOM file's.

    Args:
        node: a ``vtkMRMLScalarVolumeNode`` (or label-map/vector volume node).
        float32: cast a scalar image to 32-bit float.

    Raises:
        InputError: the node is not a volume node or holds no voxels, or is a diffusion tensor or
            diffusion-weighted volume (its tensors or gradient images are no scalar image to register or fuse),
            or its geometry gives its voxels no size along an axis (a spacing of 0) or no finite origin.
    """
    import vtk
    from vtk.util import numpy_support

    from .io import _with_units

    if node is None or not node.IsA("vtkMRMLVolumeNode"):
        raise InputError(f"'{_node_label(node)}' is not a volume node.", "Select a volume (image) node.")
    if node.IsA("vtkMRMLDiffusionImageVolumeNode"):  # a DTI volume (vtkMRMLTensorVolumeNode would be RGB too)
        # its tensors are the image data's tensors, not its scalars: it had been refused as "holds no voxels"
        raise InputError(f"'{node.GetName()}' is a diffusion tensor volume ({node.GetClassName()}): "
                         f"{DIFFUSION_REASON}.", DIFFUSION_TENSOR_FIX)
    if node.IsA("vtkMRMLDiffusionWeightedVolumeNode"):
        # its gradient images are its scalars' components: it had been refused as "7 components per pixel" with the
        # fix to take one (or, with 6 or 9, as "diffusion tensors, if it is a DTI volume whose file does not say so")
        scalars = node.GetImageData().GetPointData().GetScalars() if node.GetImageData() is not None else None
        count = f"{scalars.GetNumberOfComponents()} gradient images, " if scalars is not None else ""
        raise InputError(f"'{node.GetName()}' is a diffusion-weighted volume ({count}{node.GetClassName()}): "
                         f"{DIFFUSION_REASON}.", DIFFUSION_WEIGHTED_FIX)
    image_data = node.GetImageData()
    if image_data is None or image_data.GetPointData().GetScalars() is None:
        raise InputError(f"Volume '{node.GetName()}' holds no voxels.", "Load image data into it first.")
    dims = image_data.GetDimensions()
    scalars = image_data.GetPointData().GetScalars()
    components = scalars.GetNumberOfComponents()
    array = numpy_support.vtk_to_numpy(scalars)
    shape = (dims[2], dims[1], dims[0]) + ((components,) if components > 1 else ())
    array = array.reshape(shape)
    image = sitk.GetImageFromArray(array.copy(), isVector=components > 1)

    vtk_matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(vtk_matrix)
    ijk_to_ras = _np_matrix(vtk_matrix)
    # Slicer keeps the voxel grid in the node (image data origin 0, spacing 1, extent from 0); a non-zero
    # image-data origin would be a shift in IJK, folded in here so no geometry is lost. So is an extent that
    # does not start at 0 (vtkImageClip's or vtkImageReslice's output put into a node from the Python
    # console): its first voxel is IJK (i0, j0, k0), where Slicer shows it; read as IJK 0 it had been
    # registered and fused that many voxels away, without a word.
    ijk_spacing = np.array(image_data.GetSpacing(), dtype=float)
    extent_start = np.array(image_data.GetExtent()[::2], dtype=float)
    shift = np.array(image_data.GetOrigin(), dtype=float) + ijk_spacing * extent_start
    ras_axes = ijk_to_ras[:3, :3] @ np.diag(ijk_spacing)
    spacing = np.linalg.norm(ras_axes, axis=0)
    flat = [axis for axis in range(3) if not (np.isfinite(spacing[axis]) and spacing[axis] > 0)]
    if flat or not np.all(np.isfinite(ijk_to_ras[:3, 3])):
        # a spacing of 0 (node.SetSpacing from the console; Slicer's loaders refuse it) gives voxels no size along
        # that axis: it had been a RuntimeError from SimpleITK's SetSpacing, after numpy's divide-by-zero warning
        axes = (("axes " if len(flat) > 1 else "axis ") + ", ".join("IJK"[axis] for axis in flat)) if flat \
            else "any axis (its origin is not a number)"
        raise InputError(f"Volume '{node.GetName()}' has no valid voxel size along {axes}: its spacing is "
                         f"{tuple(float(v) for v in node.GetSpacing())} mm and its IJK-to-RAS matrix gives it "
                         f"{tuple(round(float(v), 6) for v in spacing)} mm, so its voxels have no place in space.",
                         "Set the voxel size in mm (Volumes module, Volume Information: Image Spacing; from the "
                         "console node.SetSpacing(...) with positive sizes) and a finite origin, or load the volume "
                         "again from its file.")
    direction_ras = ras_axes / spacing
    origin_ras = ijk_to_ras[:3, 3] + ijk_to_ras[:3, :3] @ shift
    # Use the node's stored spacing/directions where possible: they are exact (norms of
    # columns can differ from the stored spacing in the last bit). Not for a negative spacing (Slicer's IJK-to-RAS
    # matrix multiplies the direction by it: the axis runs the other way), which SimpleITK refuses: the column
    # norms and the flipped directions above place every voxel where Slicer shows it
    if np.allclose(ijk_spacing, 1.0) and not shift.any() and min(node.GetSpacing()) > 0:
        spacing = np.array(node.GetSpacing(), dtype=float)
        directions = vtk.vtkMatrix4x4()
        node.GetIJKToRASDirectionMatrix(directions)
        direction_ras = _np_matrix(directions)[:3, :3]
        origin_ras = np.array(node.GetOrigin(), dtype=float)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(v) for v in _F3 @ origin_ras])
    image.SetDirection([float(v) for v in (_F3 @ direction_ras).ravel()])
    if float32 and components == 1:
        image = sitk.Cast(image, sitk.sitkFloat32)
    # a PET's units (Slicer's PET DICOM extension states them) as the engine reads them, from a file's DICOM Units:
    # the Logic's windows and messages see a PET in Bq/mL or SUV as the CLI does (they had judged the values alone)
    return _with_units(image, node_dicom_units(node))


def volume_node_from_image(image: sitk.Image, scene: Any = None, *, name: str = "Volume",
                           node: Any = None, label: bool = False, display: bool = True) -> Any:
    """Put a SimpleITK image into a volume node: a new node (unique name) unless ``node`` is given.

    The image's geometry is converted from LPS to RAS exactly; a 2D image becomes a volume
    of one slice. Grey images go to a ``vtkMRMLScalarVolumeNode`` (``vtkMRMLLabelMapVolumeNode``
    when ``label``), multi-component (RGB) images to a ``vtkMRMLVectorVolumeNode``. 64-bit integer
    voxels (numpy's default integer, which nibabel writes to NIfTI as it is) are stored as doubles, exact
    up to 2^53: Slicer's slice views cannot reslice 64-bit integers and showed such a volume black. An ITK label map
    (``sitkLabelUInt8``...) becomes its plain labels in a label-map volume node. The image's DICOM Units
    (:func:`io.dicom_units`: a PET file's BQML, GML...) become the node's VoxelValueUnits (and, for GML, its
    VoxelValueQuantity SUV) as Slicer's PET DICOM extension states them; an image without them (a fused image, a
    weight map) leaves the node none, a reused node's included.

    Args:
        image: the image (LPS).
        scene: the scene; by default ``node``'s or ``slicer.mrmlScene``.
        name: name of a new node (made unique in the scene).
        node: an existing node to update (its class must fit the image).
        label: make a label-map volume node.
        display: create the default display node.

    Returns:
        The volume node.
    """
    import vtk
    from vtk.util import numpy_support

    from .io import dicom_units, plain_labels

    units = dicom_units(image)  # read first: JoinSeries and Cast below keep no metadata
    plain = plain_labels(image)
    if plain is not image:  # an ITK label map, whose voxels cannot be read (GetArrayFromImage aborted the process)
        image, label = plain, True
    if image.GetDimension() == 2:
        image = sitk.JoinSeries(image)  # one slice; JoinSeries keeps 2D origin/spacing/direction
    if image.GetDimension() != 3:
        raise InputError(f"Only 2D and 3D images can be shown in Slicer (got {image.GetDimension()}D).",
                         "Extract a 3D volume first.")
    if image.GetPixelID() in (sitk.sitkInt64, sitk.sitkUInt64, sitk.sitkVectorInt64, sitk.sitkVectorUInt64):
        image = sitk.Cast(image, sitk.sitkFloat64 if image.GetNumberOfComponentsPerPixel() == 1
                          else sitk.sitkVectorFloat64)
    components = image.GetNumberOfComponentsPerPixel()
    if node is None:
        scene = get_scene(scene)
        class_name = ("vtkMRMLVectorVolumeNode" if components > 1 else
                      "vtkMRMLLabelMapVolumeNode" if label else "vtkMRMLScalarVolumeNode")
        node = scene.AddNewNodeByClass(class_name, unique_name(scene, name))
    elif not node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError(f"'{_node_label(node)}' is not a volume node, so it cannot hold an image.",
                         "Select a volume node as the output, or leave it empty to create one.")
    elif components > 1 and not node.IsA("vtkMRMLVectorVolumeNode"):
        raise InputError(f"Node '{node.GetName()}' is a scalar volume but the image has {components} components.",
                         "Let a new vector volume node be created (node=None).")
    elif components == 1 and node.IsA("vtkMRMLVectorVolumeNode"):
        raise InputError(f"Node '{node.GetName()}' is a colour (vector) volume but the image is grey.",
                         "Select a scalar volume node as the output, or leave it empty to create one.")
    array = sitk.GetArrayFromImage(image)  # (z, y, x[, c]) - the x index varies fastest, as in VTK
    flat = np.ascontiguousarray(array.reshape(-1, components) if components > 1 else array.ravel())
    vtk_array = numpy_support.numpy_to_vtk(flat, deep=True)
    vtk_array.SetNumberOfComponents(components)
    image_data = vtk.vtkImageData()
    image_data.SetDimensions(*[int(s) for s in image.GetSize()])
    image_data.GetPointData().SetScalars(vtk_array)

    direction_ras = _F3 @ np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    directions = np.eye(4)
    directions[:3, :3] = direction_ras
    node.SetIJKToRASDirectionMatrix(_vtk_matrix(directions))
    node.SetSpacing(*[float(s) for s in image.GetSpacing()])
    node.SetOrigin(*[float(v) for v in _F3 @ np.array(image.GetOrigin(), dtype=float)])
    node.SetAndObserveImageData(image_data)
    _set_voxel_value_units(node, units)
    if display and node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def require_binary_labelmap(node: Any, use: str, action: str) -> None:
    """Refuse a segmentation whose segments have no binary labelmap representation (e.g. one loaded from a
    surface file, holding closed surfaces only).

    Slicer's export to a label map converts such a segmentation in place: it adds a binary labelmap
    representation to the user's node (an input changed, on a geometry the user did not choose: 0.05 mm voxels
    for a 12 mm ball without a reference geometry), and where no converter is registered (slicer-core) it
    exports no voxel. Only a binary labelmap the segmentation already holds is read (:func:`mask_from_node`,
    :func:`segments_label_map`); the user creates it, choosing its geometry.

    Args:
        node: a segmentation node.
        use: what its voxels are for, for the message (e.g. "its voxels are the mask").
        action: what to do once the representation is there (e.g. "register").
    """
    import slicer

    segmentation = node.GetSegmentation()
    binary = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    if segmentation is not None and segmentation.GetNumberOfSegments() and \
            not segmentation.ContainsRepresentation(binary):
        raise InputError(f"Segmentation '{node.GetName()}' has no binary labelmap representation (it holds "
                         f"{segmentation.GetSourceRepresentationName() or 'another representation'}, e.g. loaded from "
                         f"a surface file); {use}.",
                         "Create its binary labelmap first (Segmentations module: Representations, Binary labelmap: "
                         f"Create, choosing its geometry), then {action}.")


def mask_from_node(node: Any, reference: sitk.Image, reference_node: Any = None) -> sitk.Image:
    """A mask (UInt8 0/1) on ``reference``'s grid from a label-map volume or a segmentation node.

    The mask lies where Slicer shows it relative to ``reference_node``, the volume node
    ``reference`` was read from: through the transforms either is under (a mask under the same
    transform as its volume is taken on the volume's own grid). Without ``reference_node`` the
    reference is in world coordinates. Label maps on another grid (or placed elsewhere) are
    resampled with nearest-neighbour interpolation; a segmentation's visible segments are merged,
    from the binary labelmap it holds (the segmentation is not changed; see :func:`require_binary_labelmap`).

    Raises:
        InputError: the node is neither a label map/scalar volume nor a segmentation, is empty,
            is a segmentation without a binary labelmap representation, or lies under a non-linear
            transform relative to the reference.
    """
    import slicer

    if node is None:
        raise InputError("No mask node given.", "Select a label map or segmentation.")
    reference_parent = reference_node.GetParentTransformNode() if reference_node is not None else None
    to_mask = None  # reference space -> mask space (LPS), for a label map under another transform
    if node.IsA("vtkMRMLSegmentationNode"):
        scene = get_scene(None, node)
        # the export adds a label map, its display node and colour table, and may give the segmentation
        # a display node: every node it adds is removed again, so the scene is left as it was
        before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
        empty = InputError(f"Segmentation '{node.GetName()}' has no visible, non-empty segment.",
                           "Paint the region in the Segment Editor (or show a hidden segment), or select a "
                           "label map.")
        try:
            segmentation = node.GetSegmentation()
            if segmentation is None or segmentation.GetNumberOfSegments() == 0:
                raise empty
            require_binary_labelmap(node, "its voxels are the mask", "register")
            labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", unique_name(scene, "_mask_export"))
            grid_node = volume_node_from_image(sitk.Cast(reference, sitk.sitkUInt8) * 0, scene,
                                               name="_mask_reference", display=False)
            # the export maps the segmentation through the transforms between it and the label map
            for helper in (labelmap, grid_node):
                set_parent_transform(helper, reference_parent)
            ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportVisibleSegmentsToLabelmapNode(
                node, labelmap, grid_node)
            if not ok or labelmap.GetImageData() is None or labelmap.GetImageData().GetNumberOfPoints() == 0:
                raise empty
            mask = image_from_volume_node(labelmap)
        finally:
            added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
            for extra in [n for n in added if n is not None and n.GetID() not in before]:
                scene.RemoveNode(extra)
    elif node.IsA("vtkMRMLScalarVolumeNode"):
        mask = image_from_volume_node(node)
        to_mask = _linear_between(reference_parent, node.GetParentTransformNode(),
                                  f"Mask '{node.GetName()}'", _node_label(reference_node))
    else:
        raise InputError(f"'{_node_label(node)}' cannot be used as a mask.", "Select a label map or a segmentation.")
    if mask.GetNumberOfComponentsPerPixel() > 1:
        raise InputError(f"Mask '{node.GetName()}' is a colour volume.", "Select a label map or a segmentation.")
    # on the image's grid as the engine's mask check (validation.check_mask) sees it, or resampled onto it
    if grid_differences(mask, reference) or to_mask is not None:
        with itk_guard(f"resampling mask '{node.GetName()}'"):
            mask = sitk.Resample(mask, reference, to_mask or sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    mask = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
    if not sitk.GetArrayViewFromImage(mask).any():
        raise InputError(f"Mask '{node.GetName()}' is empty where it overlaps the image.",
                         "Draw the mask over the region of interest of that image.")
    return mask


def _linear_between(source: Any, target: Any, what: str, reference: str) -> sitk.AffineTransform | None:
    """The resampling transform (LPS) from the space of transform node ``source`` to that of ``target``
    (None: world); None when both are the same space."""
    import slicer
    import vtk

    if source is target:
        return None
    if any(t is not None and not t.IsTransformToWorldLinear() for t in (source, target)):
        raise InputError(f"{what} and the volume '{reference}' are under different transforms, and one is not "
                         "linear.", "Harden the transforms (Transforms module), or put the mask under the "
                                    "volume's transform.")
    matrix = vtk.vtkMatrix4x4()
    slicer.vtkMRMLTransformNode.GetMatrixTransformBetweenNodes(source, target, matrix)
    lps = _F4 @ _np_matrix(matrix) @ _F4
    if np.allclose(lps, np.eye(4), atol=1e-12):
        return None
    return _affine_lps(lps)


def _affine_lps(lps: np.ndarray) -> sitk.AffineTransform:
    """A 4x4 homogeneous LPS matrix as an ITK affine transform."""
    affine = sitk.AffineTransform(3)
    affine.SetMatrix([float(v) for v in lps[:3, :3].ravel()])
    affine.SetTranslation([float(v) for v in lps[:3, 3]])
    return affine


def label_map_from_node(node: Any, reference: sitk.Image, reference_node: Any = None) -> sitk.Image:
    """The labels of a label-map volume node where Slicer shows them relative to ``reference_node``.

    Under the same transform as ``reference_node`` (or, like it, under none) the label map is its own voxels on
    its own grid, unresampled. Under another (linear) transform it is resampled nearest-neighbour onto
    ``reference``'s grid (the image read from ``reference_node``) through the transforms between them, so its
    labels lie where they are shown over that volume.

    Raises:
        InputError: the node is not a label-map volume node, holds no voxels or several components, or lies under a
            non-linear transform relative to the reference.
    """
    if node is None or not node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"'{_node_label(node)}' is not a label map volume node.",
                         "Select a label map or a segmentation.")
    labels = image_from_volume_node(node)
    if labels.GetNumberOfComponentsPerPixel() > 1:
        raise InputError(f"Label map '{node.GetName()}' has {labels.GetNumberOfComponentsPerPixel()} components per "
                         "voxel; labels are one whole number a voxel.", "Select a label map of one component.")
    reference_parent = reference_node.GetParentTransformNode() if reference_node is not None else None
    to_labels = _linear_between(reference_parent, node.GetParentTransformNode(), f"Label map '{node.GetName()}'",
                                _node_label(reference_node))
    if to_labels is None:
        return labels
    with itk_guard(f"resampling label map '{node.GetName()}'"):
        return sitk.Resample(labels, reference, to_labels, sitk.sitkNearestNeighbor, 0, labels.GetPixelID())


def segments_label_map(node: Any, segment_ids: Sequence[str], reference: sitk.Image,
                       reference_node: Any = None, lost: list[tuple[int, str, int]] | None = None
                       ) -> sitk.Image | list[sitk.Image]:
    """Segments of a segmentation node as one label map on ``reference``'s grid: the i-th of ``segment_ids`` is
    label i + 1 (UInt16), each segment's binary labelmap exported where Slicer shows it relative to
    ``reference_node`` (through the transforms either is under, as :func:`mask_from_node` takes a segmentation).
    Segments that overlap there are returned as a list of label maps on that grid (layers, as Slicer keeps them:
    :func:`MultimodalFusionLib.segmentations.add_to_layers`), each segment with all its voxels in one of them, so
    that each is scored as its own binary mask (:func:`MultimodalFusionLib.metrics.label_layers`).
    An empty ID ("") is a label this segmentation lacks: no voxel holds it. A segment with no voxel on
    ``reference``'s grid is appended to ``lost`` as (label, segment name, its own voxels), where given: 0 for an
    empty segment, else it was lost in the export (thinner than the grid's voxels, or outside it).

    The segmentation is not changed and the scene is left as it was (every helper node removed).

    Raises:
        InputError: not a segmentation node, one without a binary labelmap representation (loaded from a surface
            file: the export would have added one to it), an unknown segment ID, or a segment Slicer cannot export.
    """
    import slicer

    from .segmentations import add_to_layers, layer_images

    if node is None or not node.IsA("vtkMRMLSegmentationNode"):
        raise InputError(f"'{_node_label(node)}' is not a segmentation node.", "Select a segmentation or a label map.")
    segmentation = node.GetSegmentation()
    for segment_id in segment_ids:
        if segment_id and (segmentation is None or segmentation.GetSegment(segment_id) is None):
            raise InputError(f"Segmentation '{node.GetName()}' has no segment '{segment_id}'.",
                             "Give segments the segmentation holds (Segment Editor lists them).")
    require_binary_labelmap(node, "its voxels are what is scored", "evaluate")
    scene = get_scene(None, node)
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    reference_parent = reference_node.GetParentTransformNode() if reference_node is not None else None
    try:
        grid_image = sitk.Image(reference.GetSize(), sitk.sitkUInt8)
        grid_image.CopyInformation(reference)
        grid_node = volume_node_from_image(grid_image, scene, name="_segments_reference", display=False)
        exported = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", unique_name(scene, "_segments_export"))
        for helper in (grid_node, exported):
            set_parent_transform(helper, reference_parent)  # the export maps through the transforms between them
        layers: list[np.ndarray] = []
        for label, segment_id in enumerate(segment_ids, start=1):
            if not segment_id:
                continue
            ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                node, [segment_id], exported, grid_node, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY)
            if not ok:  # not an empty segment (exported as no voxels): its voxels could not be had
                raise InputError(f"Slicer could not export segment '{segmentation.GetSegment(segment_id).GetName()}' "
                                 f"of '{node.GetName()}' to a label map.",
                                 "Check the segment in the Segment Editor (or export it to a label map yourself, "
                                 "Segmentations module) and give label maps.")
            data = exported.GetImageData()
            voxels = None
            if data is not None and data.GetNumberOfPoints():
                voxels = sitk.GetArrayFromImage(image_from_volume_node(exported)) != 0  # a copy: no temporary's view
            if voxels is None or not voxels.any():
                own = _segment_voxels(segmentation, segment_id)
                if lost is not None:  # lost in the export, or empty (own 0): said, not silently no label
                    lost.append((label, segmentation.GetSegment(segment_id).GetName(), own))
                continue  # no voxel of this label on the grid
            add_to_layers(layers, voxels, label)
    finally:
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for extra in [n for n in added if n is not None and n.GetID() not in before]:
            scene.RemoveNode(extra)
    return layer_images(layers, reference)


def _segment_voxels(segmentation: Any, segment_id: str) -> int:
    """The voxels of a segment in its own binary labelmap (its layer's voxels of its label value)."""
    import slicer
    from vtk.util.numpy_support import vtk_to_numpy

    segment = segmentation.GetSegment(segment_id)
    image = segment.GetRepresentation(slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName())
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        return 0
    extent = image.GetExtent()
    if any(extent[2 * k] > extent[2 * k + 1] for k in range(3)):
        return 0
    return int(np.count_nonzero(vtk_to_numpy(image.GetPointData().GetScalars()) == segment.GetLabelValue()))


def control_points_lps(node: Any, reference_node: Any = None) -> tuple[np.ndarray, list[str]]:
    """The control points of a markups point list as ITK points (LPS mm) in ``reference_node``'s own space.

    Each point's world position (through the transforms the markups node is under, as Slicer shows it) is taken
    into the space of the volume's voxels (through the transform the volume is under, if any): the point lies
    where it is shown over the volume. A point not placed (position status other than defined: undefined,
    preview or missing, as a ``.fcsv`` row Slicer writes with a status other than 2) is a row of NaN, so the i-th
    points of two lists stay pairs (:func:`MultimodalFusionLib.landmarks.paired_landmarks`).

    Returns:
        ((n, 3) float64 array, one label a point).

    Raises:
        InputError: the node is not a point list (``vtkMRMLMarkupsFiducialNode``).
    """
    import vtk

    if node is None or not node.IsA("vtkMRMLMarkupsFiducialNode"):
        raise InputError(f"'{_node_label(node)}' is not a markups point list.",
                         "Select a point list (vtkMRMLMarkupsFiducialNode, Markups module), or save the points to "
                         "a file for mmfusion evaluate-registration.")
    from_world = None
    parent = reference_node.GetParentTransformNode() if reference_node is not None else None
    if parent is not None:
        from_world = vtk.vtkGeneralTransform()
        parent.GetTransformFromWorld(from_world)
    points = np.full((node.GetNumberOfControlPoints(), 3), np.nan)
    labels = []
    for i in range(node.GetNumberOfControlPoints()):
        labels.append(node.GetNthControlPointLabel(i) or "")
        if node.GetNthControlPointPositionStatus(i) != node.PositionDefined:
            continue
        world = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(i, world)
        points[i] = from_world.TransformPoint(world) if from_world is not None else world
    return ras_points_to_lps(points), labels


def _node_label(node: Any) -> str:
    if node is None:
        return "(none)"
    return node.GetName() if hasattr(node, "GetName") else type(node).__name__


# ----------------------------------------------------------------------------------------------
# Transforms
# ----------------------------------------------------------------------------------------------

def linear_transform_matrix(transform: sitk.Transform) -> np.ndarray:
    """The 4x4 homogeneous matrix (LPS) of a linear SimpleITK transform, composites included.

    Raises:
        InputError: the transform is not linear.
    """
    if not _is_linear(transform):
        raise InputError(f"The transform ({transform.GetName()}) is not linear.",
                         "Use transform_node_from_sitk, which handles deformable transforms.")
    dim = transform.GetDimension()
    # A linear map is fixed by the images of the origin and the unit vectors; this holds for
    # every linear ITK transform type and for composites in ITK's application order.
    origin = np.array(transform.TransformPoint([0.0] * dim))
    columns = [np.array(transform.TransformPoint([1.0 if j == i else 0.0 for j in range(dim)])) - origin
               for i in range(dim)]
    matrix = np.eye(4)
    matrix[:dim, :dim] = np.stack(columns, axis=1)
    matrix[:dim, 3] = origin
    if dim == 2:
        matrix[2, 2] = 1.0
    return matrix


def _is_linear(tx: sitk.Transform) -> bool:
    if isinstance(tx, sitk.CompositeTransform):
        return all(_is_linear(tx.GetNthTransform(i)) for i in range(tx.GetNumberOfTransforms()))
    return tx.IsLinear()


def _contains(tx: sitk.Transform, kind: str) -> bool:
    if isinstance(tx, sitk.CompositeTransform):
        return any(_contains(tx.GetNthTransform(i), kind) for i in range(tx.GetNumberOfTransforms()))
    return kind in tx.GetName()


def transform_node_from_sitk(transform: sitk.Transform, scene: Any = None, *, name: str = "Transform",
                             node: Any = None) -> Any:
    """Put an engine (ITK, fixed-to-moving) transform into a transform node.

    Linear transforms (and composites of them) become a ``vtkMRMLLinearTransformNode`` whose
    matrix "from parent" is the ITK matrix converted to RAS, computed in memory. Deformable
    transforms go through Slicer's own ITK transform reader (the one Slicer uses for .h5/.tfm
    files), giving a ``vtkMRMLBSplineTransformNode`` when a B-spline is present, a
    ``vtkMRMLGridTransformNode`` for a displacement field.

    Set the node as parent of the moving volume (:func:`set_parent_transform`) to show it
    aligned with the fixed volume.

    Args:
        transform: the registration transform (fixed space -> moving space, LPS).
        scene: the scene; by default ``node``'s or ``slicer.mrmlScene``.
        name: name of a new node (made unique).
        node: an existing transform node to overwrite (must be of a fitting class).

    Returns:
        The transform node.
    """
    import slicer

    scene = get_scene(scene, node)
    if node is not None and not node.IsA("vtkMRMLTransformNode"):
        raise InputError(f"'{_node_label(node)}' is not a transform node, so it cannot hold the registration.",
                         "Select a transform node as the output transform, or leave it empty to create one.")
    if transform.GetDimension() != 3:
        raise InputError(f"Slicer transforms are 3D; this one is {transform.GetDimension()}D.",
                         "Register 3D volumes to get a transform for Slicer.")
    if _is_linear(transform):
        import vtk

        matrix_ras = _F4 @ linear_transform_matrix(transform) @ _F4
        if node is None:
            node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", unique_name(scene, name))
        elif not node.IsLinear():
            # the node holds a deformable transform (an earlier B-spline run): replace it, as a
            # matrix cannot be set on a non-linear transform (Slicer would only log an error)
            node.SetAndObserveTransformFromParent(vtk.vtkTransform())
        node.SetMatrixTransformFromParent(_vtk_matrix(matrix_ras))
        return node
    if node is None:
        class_name = ("vtkMRMLBSplineTransformNode" if _contains(transform, "BSpline") else
                      "vtkMRMLGridTransformNode" if _contains(transform, "DisplacementField") else
                      "vtkMRMLTransformNode")
        node = scene.AddNewNodeByClass(class_name, unique_name(scene, name))
    from .io import write_transform

    folder = tempfile.mkdtemp(prefix="mmf-transform-")
    storage = slicer.vtkMRMLTransformStorageNode()
    try:
        path = os.path.join(folder, "transform.h5")
        try:  # checked for room: a bare sitk.WriteTransform crashed the process on a full disk (SIGSEGV)
            write_transform(transform, path)
        except InputError as exc:
            raise _temporary_file_error("pass the transform to Slicer", exc) from exc
        storage.SetScene(scene)
        storage.SetFileName(path)
        if not storage.ReadData(node):
            raise InputError(f"Slicer could not read the {transform.GetName()} transform.",
                             "Save it with MultimodalFusionLib.io.write_transform and load the file in Slicer.")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    # Slicer interpolates displacement fields with cubic splines, ITK linearly: use ITK's
    # choice so the node moves points exactly where the engine did.
    _grid_interpolation_linear(node.GetTransformFromParent())
    return node


def _grid_interpolation_linear(transform: Any) -> None:
    if transform is None:
        return
    # A node Slicer reads as its "to parent" (a composite whose field acts after a linear part, such as
    # CompositeTransform([field, affine])) computes its "from parent" from that lazily: not updated, it lists no
    # parts; updated, it holds the grid objects the node keeps (the "to parent" side lists their inverses).
    transform.Update()
    if transform.IsA("vtkGridTransform"):
        transform.SetInterpolationModeToLinear()
    elif transform.IsA("vtkGeneralTransform"):
        for i in range(transform.GetNumberOfConcatenatedTransforms()):
            _grid_interpolation_linear(transform.GetConcatenatedTransform(i))


def sitk_transform_from_node(node: Any, reference: sitk.Image | None = None) -> sitk.Transform:
    """The transform node as an engine (ITK, LPS, fixed -> moving) transform.

    This is the node's transform "from world": its own "from parent" transform, composed with
    those of the transform nodes above it. Linear chains give an ``AffineTransform`` exactly;
    a deformable node goes through Slicer's ITK transform writer (B-spline, displacement
    field, or a composite of them).

    Args:
        node: the transform node.
        reference: the grid the transform will be evaluated on (the fixed volume, the reference of a
            resampling). Given, each displacement field (a grid transform node, alone or in a composite) is
            extended with its edge values over that grid (:func:`fields_clamped_over`), so the engine moves
            every point of it as Slicer shows it: Slicer's grid transform gives a point outside its grid the
            displacement of the grid's nearest edge, ITK's field gives it none. Without it, ITK's field as it is.

    Raises:
        InputError: not a transform node, a deformable node under another transform, or a grid that would
            have to grow past :data:`_CLAMPED_FIELD_MAX_VOXELS` to cover ``reference``.
    """
    import slicer
    import vtk

    from .io import check_room_for_transform, read_transform

    if node is None or not node.IsA("vtkMRMLTransformNode"):
        raise InputError(f"'{_node_label(node)}' is not a transform node.", "Select a transform node.")
    if node.IsTransformToWorldLinear():
        matrix = vtk.vtkMatrix4x4()
        node.GetMatrixTransformFromWorld(matrix)
        return _affine_lps(_F4 @ _np_matrix(matrix) @ _F4)
    if node.GetParentTransformNode() is not None:
        raise InputError(f"The deformable transform '{node.GetName()}' is under another transform.",
                         "Harden the parent transform on it first (Transforms module), or remove the parent.")
    folder = tempfile.mkdtemp(prefix="mmf-transform-")
    storage = slicer.vtkMRMLTransformStorageNode()
    try:
        path = os.path.join(folder, "transform.h5")
        open(path, "wb").close()
        try:  # Slicer's writer is ITK's HDF5 one: on a full disk it crashed the process (SIGSEGV at exit)
            check_room_for_transform(path, path, *_vtk_transform_values(node))
        except InputError as exc:
            raise _temporary_file_error(f"take transform '{node.GetName()}' from Slicer", exc) from exc
        storage.SetScene(node.GetScene())
        storage.SetFileName(path)
        if not storage.WriteData(node):
            raise InputError(f"Slicer could not write transform '{node.GetName()}'.",
                             "Harden or simplify the transform (Transforms module) and try again.")
        transform = read_transform(path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return transform if reference is None else fields_clamped_over(transform, reference, node.GetName())


#: the most voxels a displacement field extended by :func:`fields_clamped_over` may hold (24 bytes each, as ITK
#: holds a field in doubles: 3.2 GB); beyond, the grid is refused rather than the process run out of memory
_CLAMPED_FIELD_MAX_VOXELS = 2 ** 27


def fields_clamped_over(transform: sitk.Transform, reference: sitk.Image, name: str = "transform") -> sitk.Transform:
    """``transform`` with each displacement field extended with its edge values (``np.pad`` mode 'edge', in the
    field's own index space, oblique directions included) so that its grid covers ``reference``'s voxels, as the
    parts applied before the field map them, with one voxel to spare.

    Slicer's grid transform (``vtkOrientedGridTransform``) gives a point outside its grid the displacement of the
    grid's nearest edge voxel (clamped, however far out), ITK's ``DisplacementFieldTransform`` none beyond half a
    voxel past it; over the extended grid ITK's linear interpolation gives exactly Slicer's clamp, so the engine
    moves every point of ``reference`` as Slicer shows it. The extent is that of ``reference``'s face voxels mapped
    into the field's continuous index (its corners, for linear parts before the field). A field that already
    covers ``reference``, and any other transform, is kept as it is; so is ``transform`` when nothing changes.

    Raises:
        InputError: the extended field would hold more than :data:`_CLAMPED_FIELD_MAX_VOXELS` voxels (``name``
            names the transform).
    """
    from .preprocess import _parts

    dim = reference.GetDimension()
    if transform.GetDimension() != dim:
        return transform
    applied = _parts(transform)[::-1]  # in the order they act on a point (a composite applies its last part first)
    changed = False
    for k, part in enumerate(applied):
        if part.GetName() != "DisplacementFieldTransform":
            continue
        fixed = np.array(part.GetFixedParameters())
        size, origin = fixed[:dim].astype(int), fixed[dim:2 * dim]
        to_physical = fixed[3 * dim:].reshape(dim, dim) * fixed[2 * dim:3 * dim]
        cidx = (_face_points(reference, applied[:k]) - origin) @ np.linalg.inv(to_physical).T
        low, high = cidx.min(axis=0), cidx.max(axis=0)
        # ITK already clamps within its grid ([0, size - 1]); past it, as far as the points reach and a voxel more
        pad_low = np.where(low < -1e-6, np.ceil(-low) + 1, 0).astype(int)
        pad_high = np.where(high > size - 1 + 1e-6, np.ceil(high - (size - 1)) + 1, 0).astype(int)
        if not (pad_low.any() or pad_high.any()):
            continue
        grown = size + pad_low + pad_high
        if np.prod(grown, dtype=float) > _CLAMPED_FIELD_MAX_VOXELS:
            raise InputError(f"The grid transform '{name}' ({'x'.join(map(str, size))} voxels) would have to be "
                             f"extended to {'x'.join(map(str, grown))} voxels to move every voxel of the volume it "
                             "is applied on as Slicer shows it (the displacement of its nearest edge outside the "
                             f"grid): {np.prod(grown, dtype=float) * 24 / 1e9:.1f} GB.",
                             "Give a grid transform that covers the volume (as ANTs and Elastix write their fields "
                             "on the fixed image's grid), or place it over the volume.")
        field = part.GetDisplacementField()
        padded = np.pad(sitk.GetArrayViewFromImage(field),
                        [(int(lo), int(hi)) for lo, hi in zip(pad_low[::-1], pad_high[::-1])] + [(0, 0)], mode="edge")
        image = sitk.GetImageFromArray(padded, isVector=True)
        image.SetSpacing(field.GetSpacing())
        image.SetDirection(field.GetDirection())
        image.SetOrigin((origin - to_physical @ pad_low).tolist())
        applied[k] = sitk.DisplacementFieldTransform(image)
        changed = True
    if not changed:
        return transform
    return applied[0] if len(applied) == 1 else sitk.CompositeTransform(applied[::-1])


def _face_points(reference: sitk.Image, before: Sequence[sitk.Transform]) -> np.ndarray:
    """The physical points (one a row) of ``reference``'s voxels on its faces as ``before`` (transforms in the
    order they act) maps them: only its corners where ``before`` is linear (an affine map's extremes over the grid
    lie there), else every face voxel, whose image bounds the image of the grid for a deformation that does not
    fold."""
    dim = reference.GetDimension()
    size = np.array(reference.GetSize())
    to_physical = np.array(reference.GetDirection()).reshape(dim, dim) * np.array(reference.GetSpacing())
    if all(tx.IsLinear() for tx in before):
        corners = np.array(list(itertools.product(*[(0, n - 1) for n in size])), dtype=float)
        points = np.array(reference.GetOrigin()) + corners @ to_physical.T
        for tx in before:
            points = np.array([tx.TransformPoint(p.tolist()) for p in points])
        return points
    chain = sitk.CompositeTransform(list(before)[::-1])
    faces = []
    for axis in range(dim):
        for first in (0, size[axis] - 1):
            face_size = size.copy()
            face_size[axis] = 1
            face_origin = np.array(reference.GetOrigin()) + to_physical[:, axis] * first
            index = np.stack(np.indices(face_size[::-1])[::-1], axis=-1).reshape(-1, dim).astype(float)
            field = sitk.TransformToDisplacementField(chain, sitk.sitkVectorFloat64, face_size.tolist(),
                                                      face_origin.tolist(), reference.GetSpacing(),
                                                      reference.GetDirection())
            faces.append(face_origin + index @ to_physical.T + sitk.GetArrayViewFromImage(field).reshape(-1, dim))
    return np.concatenate(faces)


def _temporary_file_error(doing: str, exc: InputError) -> InputError:
    """The refusal of a temporary transform file (``exc``, naming it) that could not be written: the user chose
    neither the file nor its folder, so the fix names the folder and how to move it."""
    where = tempfile.gettempdir()
    if "ulimit" in exc.problem:
        fix = "Raise the file size limit (ulimit -f), then try again."
    else:
        fix = f"Free space on the disk of the temporary folder '{where}', or set TMPDIR to a folder on another disk " \
              "(before starting Slicer), then try again."
    return InputError(f"Cannot {doing}: the temporary file it goes through cannot be written. {exc.problem}", fix)


def _vtk_transform_values(node: Any) -> tuple[int, list[str]]:
    """(values, kinds) as :func:`MultimodalFusionLib.io.check_room_for_transform` takes them, of the ITK transform
    Slicer writes a transform node as: its grids' and B-spline coefficients' values (the larger of the node's two
    directions, one of them computed), 16 for any other transform."""
    def walk(transform: Any) -> tuple[int, list[str]]:
        if transform is None:
            return 0, []
        if transform.IsA("vtkGeneralTransform"):
            parts = [walk(transform.GetConcatenatedTransform(i))
                     for i in range(transform.GetNumberOfConcatenatedTransforms())]
            return sum(n for n, _ in parts), [kind for _, kinds in parts for kind in kinds]
        for getter, kind in (("GetDisplacementGrid", "DisplacementFieldTransform"),
                             ("GetCoefficientData", "BSplineTransform")):
            grid = getattr(transform, getter, lambda: None)()
            if grid is not None:
                return grid.GetNumberOfPoints() * grid.GetNumberOfScalarComponents() + 32, [kind]
        return 16, ["AffineTransform"]

    return max(walk(node.GetTransformFromParent()), walk(node.GetTransformToParent()), key=lambda found: found[0])


def set_parent_transform(node: Any, transform_node: Any | None) -> None:
    """Put ``node`` (e.g. the moving volume) under ``transform_node`` (None removes it)."""
    node.SetAndObserveTransformNodeID(transform_node.GetID() if transform_node is not None else None)


def reslice_volume_node(node: Any, reference_node: Any, *, interpolation: str = "linear",
                        default_value: float = 0.0) -> sitk.Image:
    """Resample ``node`` on ``reference_node``'s voxel grid with VTK, through the transforms the
    scene applies to both (their parent transforms, linear or not).

    This is what Slicer shows: it does not use ITK at all, so comparing it with the engine's
    resampling checks the transform conversion independently.

    Returns:
        The resampled image (LPS) with the reference node's geometry, and ``node``'s DICOM Units
        (:func:`image_from_volume_node`).
    """
    import vtk

    if interpolation not in ("linear", "nearest", "cubic"):
        raise InputError(f"Unknown interpolation '{interpolation}'.", "Use linear, nearest or cubic.")
    # Output voxel (reference IJK) -> reference RAS -> world -> moving RAS -> moving IJK.
    chain = vtk.vtkGeneralTransform()  # PreMultiply: the last concatenated is applied first
    ras_to_ijk = vtk.vtkMatrix4x4()
    node.GetRASToIJKMatrix(ras_to_ijk)
    chain.Concatenate(ras_to_ijk)
    if node.GetParentTransformNode() is not None:
        from_world = vtk.vtkGeneralTransform()
        node.GetParentTransformNode().GetTransformFromWorld(from_world)
        chain.Concatenate(from_world)
    if reference_node.GetParentTransformNode() is not None:
        to_world = vtk.vtkGeneralTransform()
        reference_node.GetParentTransformNode().GetTransformToWorld(to_world)
        chain.Concatenate(to_world)
    ijk_to_ras = vtk.vtkMatrix4x4()
    reference_node.GetIJKToRASMatrix(ijk_to_ras)
    chain.Concatenate(ijk_to_ras)

    reslice = vtk.vtkImageReslice()
    reslice.SetInputData(node.GetImageData())
    reslice.SetResliceTransform(chain)
    {"linear": reslice.SetInterpolationModeToLinear, "nearest": reslice.SetInterpolationModeToNearestNeighbor,
     "cubic": reslice.SetInterpolationModeToCubic}[interpolation]()
    reslice.SetBackgroundLevel(default_value)
    reslice.SetOutputOrigin(0, 0, 0)
    reslice.SetOutputSpacing(1, 1, 1)
    reslice.SetOutputExtent(reference_node.GetImageData().GetExtent())
    reslice.AutoCropOutputOff()
    reslice.Update()
    scene = reference_node.GetScene()
    temp = scene.AddNewNodeByClass(node.GetClassName(), unique_name(scene, "_reslice"))
    try:
        temp.CopyOrientation(reference_node)
        temp.SetAndObserveImageData(reslice.GetOutput())
        copy_voxel_value_units(node, temp)  # the resliced voxels are still in the node's units
        return image_from_volume_node(temp)
    finally:
        scene.RemoveNode(temp)


# ----------------------------------------------------------------------------------------------
# Display
# ----------------------------------------------------------------------------------------------

def _display_node(node: Any) -> Any:
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node.GetDisplayNode()


def _find_color_node(scene: Any, colormap: str) -> Any:
    """The colour node named ``colormap`` (Slicer's default colour nodes added when missing), or None."""
    color = scene.GetFirstNodeByName(colormap)
    if color is None or not color.IsA("vtkMRMLColorNode"):
        ensure_color_nodes(scene)
        color = scene.GetFirstNodeByName(colormap)
    return color if color is not None and color.IsA("vtkMRMLColorNode") else None


def _color_node(scene: Any, colormap: str) -> Any:
    color = _find_color_node(scene, colormap)
    if color is None:
        raise InputError(f"There is no colour table named '{colormap}' in this scene.",
                         f"Use one of {', '.join(available_colormaps(scene))}.")
    return color


def colormap_colors(scene: Any, colormap: str, size: int = 256) -> np.ndarray | None:
    """The colours the colour node named ``colormap`` gives a volume across its display window: ``size``
    RGB rows in 0..1 sampled evenly over the node's range, the window's bottom first (what the engine's
    overlay takes as a lookup table). None when the scene (with Slicer's default colour nodes) has no
    colour node of that name.

    Procedural nodes (PET-Heat, PET-Rainbow2, ...) are sampled through their colour transfer function,
    colour tables (Rainbow, Iron, ...) through their lookup table, as the slice views map a window onto them.
    """
    if not isinstance(colormap, str):
        return None
    color = _find_color_node(get_scene(scene), colormap)
    if color is None:
        return None
    mapper = color.GetScalarsToColors() or color.GetLookupTable()
    if mapper is None:
        raise InputError(f"The colour node '{colormap}' has no colours.", "Choose another colour table.")
    lo, hi = mapper.GetRange()
    out = np.empty((int(size), 3))
    rgb = [0.0, 0.0, 0.0]
    for i, value in enumerate(np.linspace(lo, hi, int(size))):
        mapper.GetColor(float(value), rgb)
        out[i] = rgb
    return np.clip(out, 0.0, 1.0)


def _display_values(node: Any, low: float, high: float, padding: Any = COMPUTE_MASK) -> tuple[float, float, float]:
    """The volume's ``low``..``high`` percentile window and its largest voxel that is not NaN (NaN if all
    are), from one read of its voxels. ``padding``: ``preprocess.padding_mask`` of the image the node holds (None:
    none), where its caller found it already (the web viewer: ``FusionViewer.padding``), else computed here."""
    from .preprocess import robust_range

    image = image_from_volume_node(node)  # held: a view of the temporary was read after it was freed
    voxels = sitk.GetArrayViewFromImage(image)
    if padding is not COMPUTE_MASK and padding is not None:
        padding = np.reshape(padding, voxels.shape)  # a 2D image's: the node holds it as one slice
    lo, hi = robust_range(voxels, low, high, padding)
    # fmax skips NaN: one NaN voxel made max() NaN, an upper threshold no voxel passes (all transparent)
    return lo, hi, float(np.fmax.reduce(voxels, axis=None))


def _own_colours(node: Any) -> bool:
    """A volume shown with its own colours, not a colour table over a window: RGB voxels, or labels (whose
    display node has no window, level or threshold)."""
    return bool(node.IsA("vtkMRMLVectorVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"))


def setup_anatomical_display(node: Any, *, percentiles: tuple[float, float] = (0.5, 99.5),
                             padding: Any = COMPUTE_MASK) -> Any:
    """Grey colour table and a window/level from robust percentiles (for CT/MR backgrounds), a CT's padding left
    out (``preprocess.robust_range``).

    A colour (vector) volume and a label map keep their own colours: they have no grey window.

    Args:
        node: the volume node.
        percentiles: window = these percentiles of the voxel values.
        padding: ``preprocess.padding_mask`` of the image the node holds (None: no padding), where the caller found
            it already; by default found here (0.4-1 s on a 512x512x300 CT, which the web viewer's load had
            paid twice over here beside its own).

    Returns:
        The display node.
    """
    scene = get_scene(None, node)
    display = _display_node(node)
    if _own_colours(node):
        return display
    display.SetAndObserveColorNodeID(_color_node(scene, "Grey").GetID())
    lo, hi, _ = _display_values(node, *percentiles, padding)
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(lo, hi)
    return display


def reset_display_range(node: Any) -> None:
    """Display a volume whose voxels were just replaced as a new volume is displayed: automatic window/level
    and no threshold, both taken from its new voxels (its colour table is kept). A window or threshold set for
    the voxels it held before (by :func:`show_fusion`, in that volume's units) would show the new ones
    saturated, black or all transparent."""
    display = node.GetDisplayNode()
    if display is None or not display.IsA("vtkMRMLScalarVolumeDisplayNode"):
        return  # none yet, or a label map's: nothing in the units of the old voxels
    display.AutoWindowLevelOn()
    display.SetApplyThreshold(0)


def copy_color_table(source: Any, target: Any) -> None:
    """Show ``target`` with ``source``'s colour table (a label map resampled from another keeps its label
    colours and names); nothing when ``source`` has no display node or colour table."""
    display = source.GetDisplayNode()
    color_id = display.GetColorNodeID() if display is not None else None
    if color_id:
        _display_node(target).SetAndObserveColorNodeID(color_id)


def setup_weights_display(node: Any, *, colormap: str = "Grey") -> Any:
    """Show a weight map (each voxel's weight of the anatomical volume, 0..1) on the fixed window 0..1: black is
    the functional volume alone, white the anatomical alone, mid-grey half of each, whatever the map's own range.

    An automatic window stretched each map over its own range (0.27..0.77 for a wavelet map of 0.24..0.82, so a
    weight of 0.27 looked like 0), and a constant map (``average``, ``pca``) had a window of -1e-5 with its
    minimum above its maximum.

    Returns:
        The display node.
    """
    scene = get_scene(None, node)
    display = _display_node(node)
    display.SetAndObserveColorNodeID(_color_node(scene, colormap).GetID())
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.SetApplyThreshold(0)
    return display


def setup_functional_display(node: Any, *, colormap: str = "PET-Heat",
                             percentiles: tuple[float, float] = (1.0, 99.5),
                             threshold_fraction: float | None = 0.1, padding: Any = COMPUTE_MASK) -> Any:
    """Colour a functional volume (PET, SPECT, a fused image) for overlay on anatomy.

    Args:
        node: the volume node.
        colormap: a colour node name, e.g. "PET-Heat" or "PET-Rainbow2".
        percentiles: window = these percentiles of the voxel values (robust to hot spots).
        threshold_fraction: voxels below ``min + fraction * (max - min)`` of the window are
            transparent when shown as foreground, so low uptake does not tint the anatomy;
            None shows all voxels.
        padding: as :func:`setup_anatomical_display` takes it.

    A colour (vector) volume and a label map keep their own colours (and are shown whole).

    Returns:
        The display node.
    """
    scene = get_scene(None, node)
    display = _display_node(node)
    if _own_colours(node):
        return display
    display.SetAndObserveColorNodeID(_color_node(scene, colormap).GetID())
    lo, hi, image_max = _display_values(node, *percentiles, padding)
    display.AutoWindowLevelOff()
    display.SetWindowLevelMinMax(lo, hi)
    if threshold_fraction is None:
        display.SetApplyThreshold(0)
    else:
        display.AutoThresholdOff()
        display.SetThreshold(lo + float(threshold_fraction) * (hi - lo), image_max if image_max > hi else hi)
        display.SetApplyThreshold(1)
    return display


def check_display_settings(scene: Any, *, opacity: Any, colormap: Any = None, threshold_fraction: Any = None) -> None:
    """Refuse what :func:`show_fusion` cannot show, before anything is shown or computed: an opacity outside 0..1,
    a colour table the scene (with Slicer's defaults) does not hold (None: not checked), a threshold fraction that
    is not None or a number in 0..1 (NaN had been set as the threshold without a word, 5 made every voxel
    transparent). ``FusionLogic.run`` calls it before its registration, which had run (and its 8 nodes stayed in the
    scene) before a misspelt colour table or an opacity of 5 was refused."""
    if not (isinstance(opacity, numbers.Real) and not isinstance(opacity, bool) and 0.0 <= opacity <= 1.0):
        raise InputError(f"Foreground opacity {opacity} is outside 0..1.", "Give a value between 0 and 1.")
    if threshold_fraction is not None and not (isinstance(threshold_fraction, numbers.Real)
                                               and not isinstance(threshold_fraction, bool)
                                               and 0.0 <= threshold_fraction <= 1.0):
        raise InputError(f"The display threshold {threshold_fraction} is not a fraction of the display window "
                         "in 0..1.",
                         "Give a fraction in 0..1 (0.1: the lowest tenth of the window transparent), or None to "
                         "show every voxel.")
    if colormap is not None:
        _color_node(scene, colormap)


def show_fusion(background_node: Any, foreground_node: Any | None = None, *, opacity: float = 0.5,
                colormap: str = "PET-Heat", threshold_fraction: float | None = 0.1,
                scene: Any = None, background_padding: Any = COMPUTE_MASK,
                foreground_padding: Any = COMPUTE_MASK) -> int:
    """Show ``foreground_node`` (function: PET, SPECT, or a fused image) over ``background_node``
    (anatomy) in every slice view of the scene.

    Args:
        background_node: anatomical volume (grey; a colour volume or a label map keeps its own colours).
        foreground_node: functional volume, coloured with ``colormap`` (a colour volume or a label map keeps
            its own colours); None shows only the background.
        opacity: foreground opacity, 0..1.
        colormap: colour table of the foreground.
        threshold_fraction: see :func:`setup_functional_display`.
        scene: the scene; by default the background node's.
        background_padding, foreground_padding: ``preprocess.padding_mask`` of the image each node holds, where
            the caller found it already (see :func:`setup_anatomical_display`); by default found here.

    Returns:
        The number of slice views set (0 when the scene has no slice views, e.g. a bare scene).
    """
    scene = get_scene(scene, background_node)
    # all of them before the background's display changes (a misspelt colour table had been refused after it)
    check_display_settings(scene, opacity=opacity, colormap=colormap if foreground_node is not None else None,
                           threshold_fraction=threshold_fraction)
    setup_anatomical_display(background_node, padding=background_padding)
    if foreground_node is not None:
        setup_functional_display(foreground_node, colormap=colormap, threshold_fraction=threshold_fraction,
                                 padding=foreground_padding)
    composites = _nodes_by_class(scene, "vtkMRMLSliceCompositeNode")
    for composite in composites:
        composite.SetBackgroundVolumeID(background_node.GetID())
        composite.SetForegroundVolumeID(foreground_node.GetID() if foreground_node is not None else None)
        composite.SetForegroundOpacity(float(opacity))
    _fit_slice_views()
    return len(composites)


def _fit_slice_views() -> None:
    """In the Slicer application, fit the slice views to the shown volumes (no views elsewhere)."""
    import slicer

    if getattr(slicer, "app", None) is not None:
        slicer.util.resetSliceViews()


# ----------------------------------------------------------------------------------------------
# Metrics table
# ----------------------------------------------------------------------------------------------

def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for key, value in metrics.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _flatten(value, full + ".")
        else:
            yield full, value


def metrics_table_node(metrics: Mapping[str, Any], scene: Any = None, *, name: str = "Metrics",
                       node: Any = None) -> Any:
    """A ``vtkMRMLTableNode`` with one row per metric: columns "Metric" (text) and "Value" (number).

    Nested dictionaries are flattened with dotted names ("fusion.entropy"); booleans become
    0/1; text values (e.g. a transform type) go into a third column "Text" with Value NaN; a NaN
    number (undefined) has Value NaN and Text "n/a".

    Args:
        metrics: metric name -> value.
        scene: the scene; by default ``node``'s or ``slicer.mrmlScene``.
        name: name of a new node (made unique).
        node: an existing table node to overwrite.
    """
    import vtk

    scene = get_scene(scene, node)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", unique_name(scene, name))
    names, values, texts = vtk.vtkStringArray(), vtk.vtkDoubleArray(), vtk.vtkStringArray()
    names.SetName("Metric")
    values.SetName("Value")
    texts.SetName("Text")
    for key, value in _flatten(metrics):
        if value is None:
            continue
        names.InsertNextValue(str(key))
        if isinstance(value, (bool, np.bool_)):
            values.InsertNextValue(float(value))
            texts.InsertNextValue("")
        elif isinstance(value, (int, float, np.integer, np.floating)):
            values.InsertNextValue(float(value))
            # NaN (nothing compared: an MI after a registration that covers no fixed voxel, Qabf without edges) says
            # n/a, as mmfusion and the report write it: Slicer's table had shown "nan" beside an empty Text
            texts.InsertNextValue(NOT_AVAILABLE if value != value else "")
        else:
            values.InsertNextValue(float("nan"))
            texts.InsertNextValue(str(value))
    table = vtk.vtkTable()
    for column in (names, values, texts):
        table.AddColumn(column)
    node.SetAndObserveTable(table)
    node.SetColumnDescription("Metric", "Metric name (registration.* or fusion.*)")
    node.SetColumnDescription("Value", "Metric value")
    node.SetLocked(True)  # results, not something to edit by hand
    return node


def table_to_dict(node: Any) -> dict[str, float | str]:
    """The Metric -> Value (or Text) pairs of a table made by :func:`metrics_table_node`."""
    table = node.GetTable()
    names = table.GetColumnByName("Metric")
    values = table.GetColumnByName("Value")
    texts = table.GetColumnByName("Text")
    if names is None or values is None:
        raise InputError(f"Table '{node.GetName()}' is not a metrics table (no Metric/Value columns).",
                         "Give a table made by metrics_table_node.")
    out: dict[str, float | str] = {}
    for row in range(table.GetNumberOfRows()):
        value = values.GetValue(row)
        text = texts.GetValue(row) if texts is not None else ""
        # a NaN number's "n/a" is read back as the NaN it is
        out[names.GetValue(row)] = text if text and text != NOT_AVAILABLE and np.isnan(value) else value
    return out


# ----------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------

def save_scene(path: str | os.PathLike, scene: Any = None) -> str:
    """Save the scene with its data: a Slicer data bundle (``.mrb``, one zip file) or a ``.mrml``
    file with its data files next to it.

    Every volume, transform and table node gets a storage node (NRRD, .h5, .tsv) when it has
    none. The bundle is written to a temporary name and renamed, so a failure never leaves a
    half-written file.

    Returns:
        The path written.
    """
    scene = get_scene(scene)
    final = os.path.abspath(os.fspath(path))
    if not final.endswith((".mrb", ".mrml")):
        raise InputError(f"Cannot save a scene as '{final}'.", "Use a .mrb (bundle) or .mrml file name.")
    from .io import output_folder, remove_dead_leftovers, temporary_prefix

    # a folder the save makes is removed again when it fails (it had stayed, empty), and a file in the folder's
    # place is an InputError naming it (it had been os.makedirs' FileExistsError)
    with output_folder(os.path.dirname(final)):
        if final.endswith(".mrb"):
            # Slicer names the bundle's inner folder after the file: write under the final name in
            # a temporary folder next to it, then move it into place.
            remove_dead_leftovers(os.path.dirname(final))
            staging = tempfile.mkdtemp(prefix=temporary_prefix(), dir=os.path.dirname(final))
            tmp = os.path.join(staging, os.path.basename(final))
            try:
                with _quiet_vtk():  # vtkArchive reports every file it zips
                    written = scene.WriteToMRB(tmp)
                if not written or not os.path.exists(tmp):
                    raise InputError(f"Slicer could not write the scene bundle '{final}'.",
                                     "Check the folder is writable and has free space.")
                os.replace(tmp, final)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            return final
        folder = os.path.dirname(final)
        _write_node_data(scene, folder)
        scene.SetRootDirectory(folder)
        scene.SetURL(final)
        if not scene.Commit():
            raise InputError(f"Slicer could not write the scene '{final}'.", "Check the folder is writable.")
        return final


def load_scene(path: str | os.PathLike, scene: Any = None) -> Any:
    """Load a ``.mrb`` bundle or ``.mrml`` scene (with its data) into ``scene`` (a new one by default).

    In Slicer, ``slicer.util.loadScene`` does the same with the application's I/O manager;
    this works without it (e.g. under slicer-core), unpacking a bundle to a temporary folder.

    Returns:
        The scene.
    """
    import zipfile

    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise InputError(f"Scene file not found: '{path}'.", "Check the path.")
    scene = scene if scene is not None else new_scene(slice_views=False)
    if path.endswith(".mrml"):
        scene.SetURL(path)
        ok = scene.Import()
    else:
        folder = tempfile.mkdtemp(prefix="mmf-mrb-")
        try:
            with zipfile.ZipFile(path) as bundle:
                bundle.extractall(folder)
            found = [os.path.join(root, f) for root, _, files in os.walk(folder) for f in files if f.endswith(".mrml")]
            if len(found) != 1:
                raise InputError(f"'{path}' is not a Slicer scene bundle (found {len(found)} .mrml files).",
                                 "Give a .mrb file saved by Slicer or by save_scene.")
            scene.SetURL(found[0])
            ok = scene.Import()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    if not ok:
        raise InputError(f"Slicer could not load the scene '{path}'.", "Check the file is a complete Slicer scene.")
    return scene


class _quiet_vtk:
    """Send VTK's text output (vtkArchive lists every file it zips) to a string for a block."""

    def __enter__(self) -> None:
        import vtk

        self._previous = vtk.vtkOutputWindow.GetInstance()
        self._previous.Register(None)  # keep it alive while it is not the instance
        self._sink = vtk.vtkStringOutputWindow()
        vtk.vtkOutputWindow.SetInstance(self._sink)

    def __exit__(self, *exc: object) -> None:
        import vtk

        vtk.vtkOutputWindow.SetInstance(self._previous)
        self._previous.UnRegister(None)


def _write_node_data(scene: Any, folder: str) -> None:
    """Write every storable node's data into ``folder`` (what Slicer's Save dialog does)."""
    extensions = {"vtkMRMLTransformNode": ".h5", "vtkMRMLTableNode": ".tsv", "vtkMRMLVolumeNode": ".nrrd"}
    count = scene.GetNumberOfNodesByClass("vtkMRMLStorableNode")
    used: set[str] = set()  # file names (case-folded): "PET 1" and "PET_1" must not share a file
    for i in range(count):
        node = scene.GetNthNodeByClass(i, "vtkMRMLStorableNode")
        ext = next((e for cls, e in extensions.items() if node.IsA(cls)), None)
        if ext is None or not node.GetSaveWithScene():
            continue
        if node.IsA("vtkMRMLVolumeNode") and node.GetImageData() is None:
            continue
        storage = node.GetStorageNode()
        own = os.path.abspath(storage.GetFileName()) if storage is not None and storage.GetFileName() else None
        if own is not None and os.path.isfile(own) and not node.GetModifiedSinceRead():
            # unchanged since it was read (an input loaded from a file) or last saved: the scene refers
            # to its file, as Slicer's Save does; rewriting it would replace an input
            continue
        if storage is None:
            node.AddDefaultStorageNode()
            storage = node.GetStorageNode()
        if storage is None:
            continue
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in node.GetName()) or "node"
        name, k = safe + ext, 1
        # a file already in the folder is not replaced unless it is this node's own (an earlier save)
        while name.lower() in used or (os.path.exists(os.path.join(folder, name))
                                       and os.path.join(folder, name) != own):
            k += 1
            name = f"{safe}_{k}{ext}"
        used.add(name.lower())
        storage.SetFileName(os.path.join(folder, name))
        if not storage.WriteData(node):
            raise InputError(f"Could not write the data of '{node.GetName()}'.", "Check the folder is writable.")
