"""Checks of inputs, each failing with a message that names the problem and the fix.

Every public stage (registration, resampling, fusion) calls these before handing data to
ITK, so a user never sees an ITK traceback or a silently wrong answer.
"""

from __future__ import annotations

import difflib
import itertools
import math
import numbers
import os
from typing import Any

import numpy as np
import SimpleITK as sitk

from . import tensors
from .errors import InputError, itk_reason
from .io import orientation_code

__all__ = ["check_image", "check_pixel_type", "check_components", "check_pair", "check_same_dimension", "check_min_axis",
           "check_deformable_size", "check_mask", "check_on_grid", "grid_differences", "whole_number", "did_you_mean",
           "physical_bounds", "overlap_fraction", "voxels_overlap", "slices_apart", "MIN_CONTENT_VOXELS",
           "masks_intersection", "voxels_inside", "masks_reach", "check_masks_meet", "small_mask_warnings",
           "MIN_START_OVERLAP", "start_overlap", "small_overlap_warnings"]


#: Pixel types that are not intensities: complex (numpy's float() of them drops the imaginary part, so a
#: complex MR was fused from its real part without a word) and label maps (reading their voxels aborts the
#: whole process, a C++ exception no Python code can catch). Only ids this SimpleITK build has (others are < 0).
_COMPLEX_PIXEL_IDS = frozenset(i for i in (getattr(sitk, n, -1) for n in ("sitkComplexFloat32", "sitkComplexFloat64"))
                               if i >= 0)
_LABEL_MAP_PIXEL_IDS = frozenset(i for i in (getattr(sitk, f"sitkLabelUInt{bits}", -1) for bits in (8, 16, 32, 64))
                                 if i >= 0)


def check_pixel_type(image: sitk.Image, name: str = "image") -> None:
    """Raise InputError if ``image``'s pixels are not values: complex or label-map pixels. The check of
    :func:`check_image` that must come before any cast (``io.read_image(float32=True)`` makes one: ITK's
    Cast of a complex image is a RuntimeError naming neither the file nor the fix)."""
    pixel_id = image.GetPixelID()
    if pixel_id in _COMPLEX_PIXEL_IDS:
        raise InputError(f"The {name} has complex pixels ({image.GetPixelIDTypeAsString()}).",
                         "Give its magnitude image (sitk.ComplexToModulus(image), or the scanner's magnitude series).")
    if pixel_id in _LABEL_MAP_PIXEL_IDS:
        raise InputError(f"The {name} is a label map ({image.GetPixelIDTypeAsString()}), not an image of values.",
                         "Convert it to a label image first: sitk.LabelMapToLabel(image).")


def check_components(image: sitk.Image, name: str = "image", *, path: str | os.PathLike | None = None) -> None:
    """Raise InputError unless ``image``'s pixels are grey, RGB or RGBA (1, 3 or 4 components): the one text for
    every path (reading as grey, fusion, ``mmfusion run``). A DTI volume (marked as tensors by
    :func:`io.read_image`, or 6 or 9 components of a 3D image) is named as one, with the fix to register its b0 or FA
    image and resample the tensors with the transform (it had been told to take one component: the xx values). A 2-component image is named by the file it came from
    (``path``, where known): from a MetaImage (.mha/.mhd), the complex image it most often is (MetaImage stores
    complex pixels as 2 channels), with the magnitude fix; from another file (NRRD, NIfTI, DICOM, which ITK reads
    as complex pixels where they hold complex ones), two channels such as a vector field, with the one-channel fix
    (a 2-channel .nrrd had been called "a complex image saved as MetaImage"); an image of unknown origin, either."""
    components = image.GetNumberOfComponentsPerPixel()
    if components == 1:
        return
    if components in (3, 4):
        _check_colour(image, name)
        return
    if tensors.tensor_kind(image) is not None or (components in tensors.COUNTS.values() and image.GetDimension() == 3):
        _refuse_tensors(image, name)
    one_component = "one component of it (sitk.VectorIndexSelectionCast(image, 0))."
    complex_note = "a complex image saved as MetaImage, .mha/.mhd, is read so: its real and imaginary parts"
    magnitude = "(sitk.ComplexToModulus(image), or the scanner's magnitude series)"
    if components != 2:
        note, fix = "", f"Give a grey or RGB image, or {one_component}"
    elif path is None:  # unknown origin: either
        note = f" ({complex_note}; or two channels, e.g. a 2D vector field)"
        fix = f"Give its magnitude image if it is complex {magnitude}, or {one_component}"
    else:
        from .io import _suffix

        if _suffix(path) in (".mha", ".mhd"):
            note, fix = f" ({complex_note})", f"Give its magnitude image {magnitude}, or {one_component}"
        else:
            note = " (two channels, e.g. a 2D vector or displacement field)"
            fix = "Give a grey or RGB image, or one channel of it (sitk.VectorIndexSelectionCast(image, 0))."
    raise InputError(f"The {name} has {components} components per pixel{note}; only grey, RGB and RGBA images are "
                     "supported.", fix)


#: NRRD kinds of a pixel axis that say its components are colour (ITK writes RGB-color and RGBA-color; "vector" is what
#: it writes for any other multi-component image, this package's colour outputs included, so it says nothing)
_COLOUR_KINDS = frozenset({"RGB-color", "RGBA-color", "3-color", "4-color", "HSV-color", "XYZ-color"})
#: NRRD kinds of a pixel axis that say its components are a geometric vector (ITK keeps the kind in the image's
#: metadata as NRRD_kinds[pixel]); NIfTI's intent code 1006 (NIFTI_INTENT_DISPVECT) says a displacement field
_VECTOR_KINDS = frozenset({"covariant-vector", "2-vector", "3-vector", "4-vector", "normal", "3-normal", "gradient",
                           "3-gradient", "point"})
_DISPLACEMENT_INTENT = "1006"
#: the share of a multi-component image's values (the sum of its negative values over that of its positive ones) up to
#: which negative values are taken as an interpolation's overshoot below 0, not as a vector's sign: colour PET slices
#: (Harvard) resampled with B-spline or Lanczos interpolation kept it under 0.001, binary 0/255 noise under 0.044 (its
#: worst case), a centred displacement field's components are near 1 (their negatives weigh as much as the positives)
_OVERSHOOT_SHARE = 0.05


def _check_colour(image: sitk.Image, name: str) -> None:
    """Refuse a 3- or 4-component image that is not a colour picture: one whose file says its components are a
    vector (a NRRD of kinds covariant-vector, 3-vector, ...; a NIfTI of intent displacement vector) or, where the
    file does not say colour, one with a negative component anywhere (colour channels are intensities: a
    displacement field's components run either side of 0), unless its first three components are equal everywhere
    (a grey picture stored as RGB, taken as its grey values) or its negative values weigh little beside its positive
    ones (at most :data:`_OVERSHOOT_SHARE` of their sum: a colour picture resampled with B-spline interpolation, whose
    overshoot below 0 had it refused, even ``mmfusion resample --interpolation bspline``'s own output of a colour PNG,
    down to -6e-09). Such an image had been fused as RGB, its x, y, z painted as red, green and blue, and written as a
    colour image with exit status 0."""
    kind = image.GetMetaData("NRRD_kinds[pixel]").strip() if image.HasMetaDataKey("NRRD_kinds[pixel]") else ""
    if kind in _COLOUR_KINDS:
        return
    said, overshoot = file_says_vector(image), ""
    if not said and "unsigned" not in image.GetPixelIDTypeAsString():  # unsigned pixels hold no negative value
        values = sitk.GetArrayViewFromImage(image)
        low = float(np.min(values))
        # R = G = B everywhere is a grey picture stored as colour (a CT in HU so exported), read and fused as grey
        grey = low < 0 and _channels_equal(values)
        signed = "signed integer" in image.GetPixelIDTypeAsString()
        if signed and not grey and not _channels_equal(values):
            # colour pictures are stored unsigned (8 or 16 bits) or as floats: a signed-integer one is a stack of
            # channels such as a 3-echo MR, which had been fused as RGB (its echoes painted red, green and blue)
            said = (f"its components are {image.GetPixelIDTypeAsString().replace('vector of ', '')}s, as no "
                    "colour picture is stored (8- or 16-bit unsigned, or floating point)")
        elif low < 0 and not grey and not _overshoot(values):
            said = (f"its components take negative values (down to {low:g}, up to {float(np.max(values)):g}), "
                    "which no colour channel has")
            overshoot = (" If it is a colour picture whose values went far below 0, clip it at 0 "
                         "(sitk.Clamp(image, lowerBound=0)) or resample it with linear interpolation.")
    if said:
        components = image.GetNumberOfComponentsPerPixel()
        raise InputError(f"The {name} has {components} components per pixel and is not a colour picture: {said}, so "
                         "it is a vector or multi-channel image (e.g. a displacement field, gradients or echoes). Registration and fusion take "
                         "grey, RGB and RGBA images; fusion would have painted the vectors' components as colours.",
                         "Give a grey image made from it: one component (sitk.VectorIndexSelectionCast(image, 0)) or "
                         "the vectors' length (sitk.VectorMagnitude(image)), written to a file; to carry the field "
                         "itself onto another grid use mmfusion resample FIELD --reference IMAGE --components vector."
                         + overshoot)


def file_says_vector(image: sitk.Image) -> str:
    """What the file says where it says a multi-component image's components are a vector (a NRRD kind of
    :data:`_VECTOR_KINDS`, a NIfTI of intent displacement vector), as :func:`_check_colour` names it; "" where it does
    not (a colour kind, ITK's generic "vector", no kind)."""
    kind = image.GetMetaData("NRRD_kinds[pixel]").strip() if image.HasMetaDataKey("NRRD_kinds[pixel]") else ""
    if kind in _VECTOR_KINDS:
        return f"its file says its components are a vector (NRRD kind '{kind}')"
    if image.HasMetaDataKey("intent_code") and image.GetMetaData("intent_code").strip() == _DISPLACEMENT_INTENT:
        return "its file says it is a displacement field (NIfTI intent displacement vector, 1006)"
    return ""


def _channels_equal(values: np.ndarray) -> bool:
    """Whether the first three components are equal everywhere: a grey picture stored as RGB."""
    return bool(np.array_equal(values[..., 0], values[..., 1]) and np.array_equal(values[..., 1], values[..., 2]))


def _overshoot(values: np.ndarray) -> bool:
    """Whether the negative values of a multi-component image weigh at most :data:`_OVERSHOOT_SHARE` of its positive
    ones (summed): an interpolation's overshoot below 0 at the edges of a colour picture, not a vector's sign."""
    negative = -float(np.sum(values, where=values < 0, dtype=np.float64))
    positive = float(np.sum(values, where=values > 0, dtype=np.float64))
    return negative <= _OVERSHOOT_SHARE * positive


#: why a DTI (or DWI) volume is not registered or fused (the one text for files and Slicer's nodes)
DIFFUSION_REASON = ("registration and fusion take a scalar image (a metric or a fusion of its components (tensor "
                    "components, gradient images) would compare components, not anatomy)")
#: what registration and fusion take instead of a DTI volume, and how its tensors follow (mmfusion resample)
TENSOR_FIX = ("Register (or fuse) a scalar image of the same acquisition instead, its b0 (baseline) or FA volume "
              "(Slicer's Diffusion Tensor Scalar Maps module makes FA), then resample the tensors with that "
              "transform, which turns each tensor: mmfusion resample DTI.nrrd --reference FIXED --transform "
              "DIR/transform.tfm -o OUT.nrrd (Python: preprocess.resample(tensors, fixed, result.transform)).")


def _refuse_tensors(image: sitk.Image, name: str) -> None:
    """Registration and fusion of a DTI volume: refused naming the b0/FA route (see :func:`check_components`)."""
    components = image.GetNumberOfComponentsPerPixel()
    if tensors.tensor_kind(image) is not None:
        raise InputError(f"The {name} holds diffusion tensors ({components} components a voxel, a DTI volume): "
                         f"{DIFFUSION_REASON}.", TENSOR_FIX)
    raise InputError(f"The {name} has {components} components per pixel (diffusion tensors, if it is a DTI volume "
                     "whose file does not say so); only grey, RGB and RGBA images are registered and fused.",
                     f"If it holds tensors: {TENSOR_FIX} Its file does not say so: add --components tensor "
                     "(components='tensor'), or its tensors are resampled per channel and not turned. Otherwise give "
                     "a grey or RGB image, or one component of it (sitk.VectorIndexSelectionCast(image, 0)).")


def check_image(image: sitk.Image, name: str = "image", *, allow_vector: bool = False,
                allow_constant: bool = False, allow_one_slice: bool = False, allow_any_span: bool = False) -> None:
    """Raise InputError if ``image`` is not usable: wrong dimension, empty, complex or label-map pixels,
    NaN/inf, constant (unless ``allow_constant``: resampling a blank mask is legitimate, registering or
    fusing one is not), a one-slice volume (unless ``allow_one_slice``: ITK resamples one in 3D, with half
    a slice's depth either side of it, but registers and fuses it only as the 2D image it is), values whose span
    overflows float64 (unless ``allow_any_span``: for a use that never takes their difference, a z-score)."""
    if not isinstance(image, sitk.Image):
        raise InputError(f"The {name} is a {type(image).__name__}, not an image.",
                         "Pass a SimpleITK image, or read it with MultimodalFusionLib.io.read_image.")
    check_pixel_type(image, name)
    dim = image.GetDimension()
    if dim not in (2, 3):
        raise InputError(f"The {name} is {dim}D; only 2D and 3D images are supported.",
                         "Extract a 3D volume (e.g. one time point of a 4D series) first.")
    if any(s == 0 for s in image.GetSize()) or image.GetNumberOfPixels() == 0:
        raise InputError(f"The {name} is empty (size {image.GetSize()}).", "Check the file holds pixel data.")
    if dim == 3 and image.GetSize().count(1) >= 2:  # 16x1x1 had been called "a single slice"
        raise InputError(f"The {name} is a 3D image of a single line of voxels (size {image.GetSize()}), not a "
                         "volume or a slice.", "Give a volume, or a slice with at least two voxels along two axes.")
    if dim == 3 and min(image.GetSize()) == 1 and not allow_one_slice:
        raise InputError(f"The {name} is a 3D image with a single slice (size {image.GetSize()}).",
                         "Take its slice as a 2D image (io.one_slice_as_2d(image) keeps its in-plane geometry; "
                         "io.one_slice_pixels(image) for fusion; mmfusion register, fuse and run do so), or give "
                         "a real volume.")
    if image.GetNumberOfComponentsPerPixel() > 1 and not allow_vector:
        check_components(image, name)  # 2 components (a complex .mha) are no colour to convert to grey
        raise InputError(f"The {name} has {image.GetNumberOfComponentsPerPixel()} components per pixel (colour).",
                         "Convert it to grey (read_image does so unless keep_color=True).")
    if any(s <= 0 or not np.isfinite(s) for s in image.GetSpacing()):
        raise InputError(f"The {name} has an invalid spacing {image.GetSpacing()}.",
                         "Fix the header: spacing must be positive.")
    arr = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(arr.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise InputError(f"The {name} has {bad} NaN or infinite voxels.",
                             "Replace them (e.g. with 0 or the background value) first.")
    if allow_constant:
        return
    ncomp = image.GetNumberOfComponentsPerPixel()
    if ncomp > 1:
        # a colour image is constant when every voxel has one colour: the lowest and highest of all its
        # components differ there (a blank PET slice in a colour map's dark blue, (0, 0, 128), had been fused)
        flat = arr.reshape(-1, ncomp)
        lows, highs = flat.min(axis=0), flat.max(axis=0)
        constant = bool(np.array_equal(lows, highs))
        value = "the colour (" + ", ".join(f"{float(v):g}" for v in lows) + ")"
    else:
        lo, hi = float(arr.min()), float(arr.max())
        constant, value = lo == hi, f"{lo:g}"
    if constant:
        raise InputError(f"The {name} is constant (every voxel is {value}); it holds no structure to use.",
                         "Check that the right file or series was loaded and that it is not blank.")
    if np.issubdtype(arr.dtype, np.floating) and not allow_any_span:
        # a 64-bit float image whose values span more than float64 holds (1e308 and -1e308): every min-max
        # scaling overflowed, `mmfusion fuse` wrote b's voxels as 0 and one NaN (rc 0), the metrics then refused NaN
        lo, hi = (float(lows.min()), float(highs.max())) if ncomp > 1 else (lo, hi)
        if not np.isfinite(hi - lo):
            raise InputError(f"The {name}'s values span {lo:g}..{hi:g}, more than 64-bit floating point holds "
                             "(their difference overflows), so it cannot be scaled.",
                             "Check the file (values near 1e308 are usually a data type or header error), or "
                             "scale it down first (e.g. image * 1e-10: ITK's RescaleIntensity overflows too, to 0).")


def whole_number(value: Any, minimum: int, maximum: int | None = None) -> int | None:
    """``value`` as an int when it is a whole number from ``minimum`` to ``maximum`` (an int, or a float
    without a fraction: JSON's 200.0); None for anything else, bools, strings, 1.5, NaN and infinity
    among them. Each caller words its own message (which setting, which values it takes)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return None
    if isinstance(value, numbers.Integral):
        number = int(value)  # not through float: 10**400 is whole, float() of it overflows
    else:
        as_float = float(value)
        if not (math.isfinite(as_float) and as_float.is_integer()):
            return None
        number = int(as_float)
    return number if minimum <= number and (maximum is None or number <= maximum) else None


#: How much lower than the closest a choice's similarity (difflib's ratio) may be to be as likely a guess.
GUESS_MARGIN = 0.1


def did_you_mean(value: Any, choices: Any) -> str:
    """`` (did you mean 'x'?)`` naming the choice a misspelt ``value`` most likely meant (case ignored), or
    every one as likely: `` (did you mean 'a' or 'b'?)``; "" when none is close or ``value`` is not a text.

    Close: difflib's ratio of at least 0.6, or ``value`` starting a word of the choice (words split at "_";
    at least 3 letters, or a whole word: 'mi' for 'mattes_mi'). As likely: every choice ``value`` starts a
    word of (and one closer by ratio than all of them), so 'sampling' names both 'sampling_percentage' and
    'sampling_strategy' (it had named only the latter, the closer by ratio); without such a choice, those
    within ``GUESS_MARGIN`` of the closest ratio. More than three as likely are no guess: "".
    """
    if not isinstance(value, str):
        return ""
    by_lower = {str(c).lower(): str(c) for c in choices}
    typed = value.strip().lower()
    if typed in by_lower:  # only the case differs
        return f" (did you mean '{by_lower[typed]}'?)"
    if not typed:
        return ""

    def starts_a_word(choice: str) -> bool:
        for at in [0] + [i + 1 for i, ch in enumerate(choice) if ch == "_"]:
            end = at + len(typed)
            if choice.startswith(typed, at) and (len(typed) >= 3 or end == len(choice) or choice[end] == "_"):
                return True
        return False

    ratios = {c: difflib.SequenceMatcher(None, typed, c).ratio() for c in by_lower}
    worded = {c for c in by_lower if starts_a_word(c)}
    close = {c for c, r in ratios.items() if r >= 0.6} | worded
    if not close:
        return ""
    if worded:  # what ``value`` starts a word of, and a choice closer still by ratio (rare)
        likely = sorted(worded | {c for c in close if ratios[c] > max(ratios[w] for w in worded)})
    else:
        best = max(ratios[c] for c in close)
        likely = sorted(c for c in close if ratios[c] >= best - GUESS_MARGIN)
    if len(likely) > 3:
        return ""
    names = [f"'{by_lower[c]}'" for c in likely]
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    return f" (did you mean {listed}?)"


def has_content(image: sitk.Image) -> bool:
    """Whether ``image`` holds more than one value: an image resampled where the source does not
    reach is constant (all the default value), the sign that the two do not overlap."""
    arr = sitk.GetArrayViewFromImage(image)
    return bool(arr.size) and bool(arr.min() != arr.max())


def physical_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned physical (LPS) bounding box of the image's voxel-edge corners."""
    size = np.array(image.GetSize())
    corners = []
    for c in itertools.product(*[(-0.5, s - 0.5) for s in size]):
        corners.append(image.TransformContinuousIndexToPhysicalPoint([float(x) for x in c]))
    pts = np.array(corners)
    return pts.min(axis=0), pts.max(axis=0)


def overlap_fraction(a: sitk.Image, b: sitk.Image, transform: sitk.Transform | None = None) -> float:
    """Fraction of ``a``'s bounding-box volume that ``b``'s box overlaps (after ``transform`` maps
    points of ``a`` into ``b``'s space when given; only the box corners are mapped); 0 where the boxes
    overlap but the voxels do not (oblique grids, or a rotating start: see :func:`voxels_overlap`; not
    checked for a transform that is not linear)."""
    lo_a, hi_a = physical_bounds(a)
    lo_b, hi_b = physical_bounds(b)
    if transform is not None:
        corners = np.array([transform.TransformPoint([float(v) for v in c])
                            for c in itertools.product(*zip(lo_a, hi_a))])
        lo_a, hi_a = corners.min(axis=0), corners.max(axis=0)
    inter = np.clip(np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b), 0, None)
    vol_a = np.prod(hi_a - lo_a)
    fraction = float(np.prod(inter) / vol_a) if vol_a > 0 else 0.0
    if fraction > 0 and (transform is None or transform.IsLinear()) and not voxels_overlap(a, b, transform):
        return 0.0
    return fraction


def voxels_overlap(a: sitk.Image, b: sitk.Image, transform: sitk.Transform | None = None) -> bool:
    """Whether the regions the two images' voxels cover (parallelepipeds for any direction matrix) share a
    volume, ``a``'s mapped by the linear ``transform`` into ``b``'s space where given: the separating-axis
    test over their face normals and, in 3D, the cross products of their edges. Touching within rounding
    (1e-9 of the coordinates' size) is not overlapping; other dimensions: True."""
    dim = a.GetDimension()
    if dim not in (2, 3):
        return True
    corners, edges = [], []
    for image, mapping in ((a, transform), (b, None)):
        size = image.GetSize()
        corners.append(np.array([_placed(image, mapping, [float(v) for v in c])
                                 for c in itertools.product(*[(-0.5, s - 0.5) for s in size])]))
        first = _placed(image, mapping, [-0.5] * dim)
        for i in range(dim):
            end = [-0.5] * dim
            end[i] = size[i] - 0.5
            edge = _placed(image, mapping, end) - first
            edges.append(edge / np.linalg.norm(edge))
    if dim == 2:
        axes = [np.array([-e[1], e[0]]) for e in edges]
    else:  # face normals of each (pairs of one image's edges) and the edge-edge cross products
        axes = [np.cross(e, f) for e, f in itertools.combinations(edges, 2)]
    tol = 1e-9 * max(1.0, float(np.abs(np.concatenate(corners)).max()))
    for axis in axes:
        norm = float(np.linalg.norm(axis))
        if norm < 1e-9:  # parallel edges: that plane is among the face normals already
            continue
        pa, pb = corners[0] @ (axis / norm), corners[1] @ (axis / norm)
        if pa.max() <= pb.min() + tol or pb.max() <= pa.min() + tol:
            return False
    return True


def slices_apart(fixed: sitk.Image, moving: sitk.Image) -> bool:
    """Whether ``fixed`` and ``moving`` are one-slice volumes whose slices share no depth as they lie (neither's voxels
    reach into the other's): registered and fused as the 2D images of their slices, which lose that depth, they would
    be fused without a registration as if they lay together (slices 100 mm apart)."""
    from .io import one_slice_axis

    return one_slice_axis(fixed) is not None and one_slice_axis(moving) is not None \
        and not voxels_overlap(moving, fixed)


def _placed(image: sitk.Image, mapping: sitk.Transform | None, index: list[float]) -> np.ndarray:
    """The physical point of a continuous ``index`` of ``image``, mapped by ``mapping`` where given."""
    point = image.TransformContinuousIndexToPhysicalPoint(index)
    return np.array(point if mapping is None else mapping.TransformPoint(point))


def check_min_axis(fixed: sitk.Image, moving: sitk.Image) -> None:
    """Both images have at least 4 voxels along every axis (ITK's pyramid smoothing and the metric's
    gradients need them), for either registration backend."""
    for name, image in (("fixed", fixed), ("moving", moving)):
        if min(image.GetSize()) < 4:
            raise InputError(f"The {name} image has only {min(image.GetSize())} voxels along an axis (size "
                             f"{image.GetSize()}); registration needs at least 4 along every axis.",
                             "Register thin slabs as 2D slices (extract the slice), or give a thicker volume.")


#: Fewest pixels along each axis of a 2D fixed image that a deformable stage (the sitk backend's
#: B-spline, the torch backend's velocity field) is run on.
MIN_DEFORMABLE_2D_AXIS = 16


def check_deformable_size(fixed: sitk.Image, stage: str) -> None:
    """A 2D fixed image has at least ``MIN_DEFORMABLE_2D_AXIS`` pixels along each axis for a deformable
    stage; ``stage`` names it as the backend does ("B-spline", "deformable"). Each backend calls this
    before it runs any stage, so that no linear stage runs only to be followed by the refusal."""
    if fixed.GetDimension() == 2 and min(fixed.GetSize()) < MIN_DEFORMABLE_2D_AXIS:
        raise InputError(f"The fixed image {fixed.GetSize()} is too small for a {stage} stage (at least "
                         f"{MIN_DEFORMABLE_2D_AXIS} pixels along each axis).",
                         "Use rigid/affine stages only, or a larger image.")


def check_same_dimension(fixed: sitk.Image, moving: sitk.Image, fixed_name: str = "fixed image",
                         moving_name: str = "moving image") -> None:
    """A 2D image with a 3D one is refused, naming both sizes: registering a slice to a volume is not supported."""
    if fixed.GetDimension() != moving.GetDimension():
        raise InputError(
            f"The {fixed_name} is {fixed.GetDimension()}D (size {' x '.join(map(str, fixed.GetSize()))}) but the "
            f"{moving_name} is {moving.GetDimension()}D (size {' x '.join(map(str, moving.GetSize()))}).",
            "Register images of the same dimension (extract a slice from the volume, or use two volumes).")


def check_pair(fixed: sitk.Image, moving: sitk.Image, *, transform: sitk.Transform | None = None,
               require_overlap: bool = True) -> None:
    """Both images usable, same dimension, and overlapping in physical space."""
    check_image(fixed, "fixed image")
    check_image(moving, "moving image")
    check_same_dimension(fixed, moving)
    if transform is not None and transform.GetDimension() != fixed.GetDimension():
        raise InputError(f"The initial transform is {transform.GetDimension()}D but the images are "
                         f"{fixed.GetDimension()}D.",
                         f"Give a {fixed.GetDimension()}D transform (one from registering images of this dimension).")
    if transform is not None:
        centre = fixed.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in fixed.GetSize()])
        try:  # e.g. a displacement-field transform holding no field: ITK refuses every point
            transform.TransformPoint(centre)
        except RuntimeError as exc:
            reason = itk_reason(str(exc)).rstrip(".")
            raise InputError(f"The initial transform ({transform.GetName()}) cannot map a point: {reason}.",
                             "Give a complete transform (a file written by mmfusion register, Slicer, ANTs or "
                             "elastix, or a SimpleITK transform with its parameters and field set).") from exc
    if require_overlap and overlap_fraction(fixed, moving, transform) <= 0.0:
        lo_f, hi_f = physical_bounds(fixed)
        lo_m, hi_m = physical_bounds(moving)
        raise InputError(
            "The fixed and moving images do not overlap in physical space "
            f"(fixed spans {np.round(lo_f, 1).tolist()}..{np.round(hi_f, 1).tolist()} mm, "
            f"moving spans {np.round(lo_m, 1).tolist()}..{np.round(hi_m, 1).tolist()} mm; LPS as in ITK, "
            "Slicer shows x and y negated).",
            "Use the 'geometry' or 'moments' initializer (it aligns their centres), or check the origins "
            "in the headers.")


def grid_differences(image: sitk.Image, reference: sitk.Image) -> list[str]:
    """What differs between ``image``'s grid and ``reference``'s, one "what image-value vs reference-value"
    entry per differing property (size, spacing, origin, direction; all four when the dimension differs);
    empty when both lie on one grid. :func:`MultimodalFusionLib.fusion.same_grid` is "no difference".

    Values are shown with as many digits as tell them apart (an origin 0.002 mm off at -120.5 mm
    read "(-120.5, 100, 30) vs (-120.5, 100, 30)" at four), and a direction also by the letters its
    axes run toward (a mask saved flipped, RAS vs LPS order, has the image's size and spacing).
    """
    def shown(va: tuple, vb: tuple) -> tuple[str, str]:
        for digits in range(4, 17):
            sa, sb = ("(" + ", ".join(f"{x:.{digits}g}" for x in v) + ")" for v in (va, vb))
            if sa != sb:
                break
        return sa, sb

    differences = []
    for what, va, vb, rtol, atol in (("size", image.GetSize(), reference.GetSize(), 0, 0),
                                     ("spacing", image.GetSpacing(), reference.GetSpacing(), 1e-5, 1e-6),
                                     ("origin (LPS)", image.GetOrigin(), reference.GetOrigin(), 1e-5, 1e-4),
                                     ("direction (LPS)", image.GetDirection(), reference.GetDirection(), 0, 1e-5)):
        if len(va) == len(vb) and np.allclose(va, vb, rtol=rtol, atol=atol):
            continue
        sa, sb = (str(va), str(vb)) if what == "size" else shown(va, vb)
        text = f"{what} {sa} vs {sb}"
        if what.startswith("direction"):
            codes = [orientation_code(img) for img in (image, reference)]
            if all(codes) and codes[0][0] != codes[1][0]:
                text += f" (axes toward {codes[0][0]} vs {codes[1][0]})"
        differences.append(text)
    return differences


def check_on_grid(image: sitk.Image, reference: sitk.Image, name: str, reference_name: str, fix: str) -> None:
    """Raise InputError "The <name> is not on the <reference_name>'s grid: <what differs>." with ``fix``
    when ``image`` does not lie on ``reference``'s grid (:func:`grid_differences`)."""
    differences = grid_differences(image, reference)
    if differences:
        raise InputError(f"The {name} is not on the {reference_name}'s grid: {', '.join(differences)}.", fix)


def check_mask(mask: sitk.Image, image: sitk.Image, name: str = "mask", image_name: str = "image") -> sitk.Image:
    """A mask must lie on the image's grid and be non-empty; returns it as UInt8 (0/1)."""
    if not isinstance(mask, sitk.Image):
        raise InputError(f"The {name} is not an image.", "Pass a SimpleITK label image.")
    if mask.GetNumberOfComponentsPerPixel() > 1:
        raise InputError(f"The {name} has {mask.GetNumberOfComponentsPerPixel()} components per pixel (colour), "
                         "not one label per voxel.",
                         "Give a label or binary image (e.g. a segmentation exported as .nii.gz or .nrrd).")
    check_on_grid(mask, image, name, image_name,
                  f"Resample the mask onto the {image_name} with nearest-neighbour interpolation "
                  "(mmfusion resample MASK --reference IMAGE --interpolation nearest).")
    out = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8)
    if not sitk.GetArrayViewFromImage(out).any():
        raise InputError(f"The {name} is empty (no non-zero voxel).", "Give a mask that covers the region of interest.")
    return out


#: Fewest voxels of structure (an image's voxels differing from its background, a registration mask's voxels, the
#: fixed voxels inside both masks) below which registration warns that its result is unreliable. Measured
#: on a 96x96 blob shifted by (3, -2) px, rigid, seeds 0-3: with 1, 81 or 121 voxels above the background
#: the error varied from 0.2 to 1.3 px with the seed; from 169 up it stayed under 0.2 px.
MIN_CONTENT_VOXELS = 150


def _voxels(count: int) -> str:
    return f"{count} voxel{'s' if count != 1 else ''}"


def small_mask_warnings(fixed_mask: sitk.Image | None, moving_mask: sitk.Image | None) -> list[str]:
    """A warning for each registration mask of fewer than :data:`MIN_CONTENT_VOXELS` voxels, as
    ``registration.sparse_content_warnings`` warns about an image with that little structure: the metric
    counts only the voxels inside the mask, so it has almost nothing to align, and neither backend can tell a
    better transform from a worse one there (the torch backend's stages reported mutual information
    -0.0000 -> -0.0000 with a one-voxel fixed mask and were kept). From 3.6 px off the truth on the 2D
    BrainWeb pair, rigid stages over fixed masks of 16-144 pixels ended up to 21 px off (sitk) and 35 px (torch)
    (``benchmarks/small_masks.py``). A warning, not a refusal, as for sparse content; masks ITK cannot
    sample at all are refused by the SimpleITK backend.

    Each backend (``register_sitk``, ``register_torch``) puts these first among its warnings, so that a
    caller of either gets them once, as a caller of ``registration.register`` does (only ``register`` had
    warned).
    """
    out = []
    for name, mask in (("fixed", fixed_mask), ("moving", moving_mask)):
        if mask is None:
            continue
        count = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
        if count < MIN_CONTENT_VOXELS:
            out.append(f"The {name} mask holds only {count} voxel(s), fewer than {MIN_CONTENT_VOXELS}: "
                       "intensity-based registration has almost nothing to align inside it, and its result "
                       "varies with the sampling seed and the start. Give a larger mask (e.g. dilate it to "
                       "a margin around the region), or register without it.")
    return out


def masks_intersection(fixed: sitk.Image, fixed_mask: sitk.Image | None, moving_mask: sitk.Image,
                       transform: sitk.Transform) -> int:
    """How many fixed voxels (those inside ``fixed_mask``, when given) ``transform`` sends inside
    ``moving_mask``: the voxels a metric restricted to both masks can count at that transform.

    A point is inside the moving mask when its nearest moving voxel is (ITK's mask test); the masks are
    0/1 images on their images' grids (:func:`check_mask`).
    """
    reached = sitk.Resample(moving_mask, fixed, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    inside = sitk.GetArrayViewFromImage(reached) != 0
    if fixed_mask is not None:
        inside = inside & (sitk.GetArrayViewFromImage(fixed_mask) != 0)
    return int(np.count_nonzero(inside))


def voxels_inside(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform) -> int:
    """How many fixed voxels ``transform`` sends inside the moving image: those whose nearest moving voxel
    exists, the points ITK's metrics count as valid (a fixed voxel half a moving voxel or more beyond the
    moving image's outer voxel centres is not). Zero is a start at which no metric can be computed, which
    the SimpleITK backend learns from ITK and the torch backend, which samples zeros outside the moving
    image and would optimise anyway, from this."""
    return masks_reach(fixed, moving, transform)[0]


def masks_reach(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
                fixed_mask: sitk.Image | None = None, moving_mask: sitk.Image | None = None) -> tuple[int, int]:
    """(image, masks): how many fixed voxels ``transform`` sends inside the moving image
    (:func:`voxels_inside`), and how many of those inside ``fixed_mask`` it sends inside ``moving_mask``
    (:func:`masks_intersection`; without masks, the first count again), from one resampling of the moving
    grid marked 1 outside the moving mask and 2 inside it.

    The backends' checks of the start (:func:`check_masks_meet`, :func:`start_overlap`, the torch backend's
    no-overlap refusal) take their counts from here: each had resampled the moving mask onto the fixed grid
    itself, twice per SimpleITK registration with a moving mask and up to three times per masked torch one
    (about 0.1 s each for a 256x256x200 pair, one thread).
    """
    # 0 (outside the moving mask) -> 1, anything else -> 2, in one pass (any mask's type: register_sitk takes its
    # masks as given)
    marks = _everywhere(moving) if moving_mask is None else sitk.BinaryThreshold(moving_mask, 0, 0, 1, 2)
    reached = sitk.Resample(marks, fixed, transform, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    mark = sitk.GetArrayViewFromImage(reached)
    in_image = mark != 0
    inside = mark == 2 if moving_mask is not None else in_image
    if fixed_mask is not None:
        inside = inside & (sitk.GetArrayViewFromImage(fixed_mask) != 0)
    return int(np.count_nonzero(in_image)), int(np.count_nonzero(inside))


def check_masks_meet(fixed: sitk.Image, fixed_mask: sitk.Image | None, moving_mask: sitk.Image | None,
                     transform: sitk.Transform, start: str, instead: str, count: int | None = None) -> list[str]:
    """With a moving mask, the fixed voxels inside both masks at the starting ``transform`` (described by
    ``start``, e.g. "initializer 'moments'"): none is an InputError, fewer than :data:`MIN_CONTENT_VOXELS`
    a warning (returned; none when either mask itself is that small, which :func:`small_mask_warnings`
    already warns about). Both backends call this before their first stage. ``instead`` is the fix's
    clause that names what has not been tried, by what made the start (the registration's
    ``sitk_backend.start_fix(kind, masks=True)``): it had been the 'moments' initializer or an initial
    transform, also to runs that used them. ``count``: :func:`masks_intersection` at ``transform`` where the
    caller has it already (:func:`masks_reach`).

    No voxel inside both masks leaves the metric nothing to compare: ITK's correlation and mean squares
    then returned the starting transform unchanged with "No valid points" on stderr only, and the torch
    backend left the moving mask out without a word.
    """
    if moving_mask is None:
        return []
    if count is None:
        count = masks_intersection(fixed, fixed_mask, moving_mask, transform)
    moving_voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(moving_mask)))
    fixed_voxels = int(np.count_nonzero(sitk.GetArrayViewFromImage(fixed_mask))) if fixed_mask is not None else None
    moving = f"the moving mask ({_voxels(moving_voxels)})"
    region = "the fixed mask" if fixed_voxels is not None else "the fixed image"
    if count == 0:
        pair = f"The fixed mask ({_voxels(fixed_voxels)}) and {moving}" if fixed_voxels is not None \
            else f"The fixed image and {moving}"
        raise InputError(
            f"{pair} do not meet at the starting transform ({start}): 0 voxels of {region} map inside the "
            "moving mask, so the registration metric has no voxel to compare.",
            "Check that each mask lies on its own image (the fixed mask on the fixed image, the moving mask on "
            f"the moving image) and that both cover the same anatomy; then {instead}.")
    small = [n for n in (fixed_voxels, moving_voxels) if n is not None and n < MIN_CONTENT_VOXELS]
    if count >= MIN_CONTENT_VOXELS or small:
        return []
    if fixed_voxels is not None:
        region = f"the fixed mask ({_voxels(fixed_voxels)})"
    return [f"Only {_voxels(count)} of {region} map{'s' if count == 1 else ''} inside {moving} at the starting "
            f"transform ({start}), "
            f"fewer than {MIN_CONTENT_VOXELS}: the registration metric has almost "
            f"nothing to compare, and its result is unreliable. Check that the masks cover the same anatomy; then "
            f"{instead}."]


#: Share of the smaller of the two images (or mask regions) that must overlap the other at the start, below which
#: both backends warn (:func:`small_overlap_warnings`). Measured on the 2D BrainWeb pair, one rigid stage, seed 1
#: (README, "barely overlap"): overlapping in a band 18 px from the truth, SimpleITK refused at 2-5 %, ended 13 px
#: off in one seed of 3 at 10 % and recovered the truth at 15-20 % in all 3; the torch backend ended 40-63 px off
#: at 5-20 % and recovered at 30 %. Shifted along x from the headers' start, both returned transforms 160-230 px
#: from the truth at 2-10 %, SimpleITK its start unchanged (Mattes MI 0.0000 -> 0.0000 at 2-5 %).
MIN_START_OVERLAP = 0.20


def start_overlap(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform,
                  fixed_mask: sitk.Image | None = None, moving_mask: sitk.Image | None = None,
                  inside: int | None = None) -> tuple[float, int]:
    """(share, voxels): the volume the two images (their masks' regions, where given) share at ``transform``,
    over the volume of the smaller of the two, and the fixed voxels in it.

    The shared volume is the fixed voxels (inside ``fixed_mask``) whose nearest moving voxel exists (and lies
    inside ``moving_mask``), the points ITK's metrics count, times the fixed voxel's volume. Divided by the
    smaller region, a small field of view wholly inside the other (a PET slab inside a CT) scores about 1,
    where a share of the fixed image would call it a small overlap. ``inside``: the fixed voxels in the shared
    volume where the caller has counted them already (:func:`masks_reach`'s second count).
    """
    if inside is None:
        inside = masks_reach(fixed, moving, transform, fixed_mask, moving_mask)[1]
    fixed_voxel = float(np.prod(fixed.GetSpacing()))
    moving_voxel = float(np.prod(moving.GetSpacing()))
    fixed_count = fixed.GetNumberOfPixels() if fixed_mask is None \
        else int(np.count_nonzero(sitk.GetArrayViewFromImage(fixed_mask)))
    moving_count = moving.GetNumberOfPixels() if moving_mask is None \
        else int(np.count_nonzero(sitk.GetArrayViewFromImage(moving_mask)))
    smaller = min(fixed_count * fixed_voxel, moving_count * moving_voxel)
    return (inside * fixed_voxel / smaller if smaller > 0 else 0.0), inside


def small_overlap_warnings(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform, start: str, fix: str,
                           fixed_mask: sitk.Image | None = None,
                           moving_mask: sitk.Image | None = None,
                           overlap: tuple[float, int] | None = None) -> list[str]:
    """A warning when, at the starting ``transform`` (described by ``start``), the images (or the masks' regions)
    share less than :data:`MIN_START_OVERLAP` of the smaller one (:func:`start_overlap`); ``fix`` is
    ``sitk_backend.start_fix`` of what made the start; ``overlap``: :func:`start_overlap`'s answer where the caller
    has it already. Both backends call this before their first stage: from
    2-5 % of overlap SimpleITK had returned its start unchanged (Mattes MI 0.0000 -> 0.0000) and the torch backend
    moved by 0-11 px, both some 200 px from the truth, without a word. A warning, not a refusal: the overlap
    alone does not make a start wrong.

    None where nothing overlaps (the backends' "barely overlap" error) or where the masks leave fewer than
    :data:`MIN_CONTENT_VOXELS` voxels to compare and another warning says so: :func:`check_masks_meet` with a
    moving mask, :func:`small_mask_warnings` for a fixed mask that small itself. A large fixed mask alone of
    which fewer are inside the moving image is warned about here (it had been left out: 100 of 18,100 mask
    pixels inside, 0.55 %, got no warning where 200, 1.1 %, got one).
    """
    share, inside = overlap if overlap is not None else start_overlap(fixed, moving, transform, fixed_mask,
                                                                       moving_mask)
    if inside == 0 or share >= MIN_START_OVERLAP:
        return []
    masked = fixed_mask is not None or moving_mask is not None
    if inside < MIN_CONTENT_VOXELS and (moving_mask is not None or (
            fixed_mask is not None
            and np.count_nonzero(sitk.GetArrayViewFromImage(fixed_mask)) < MIN_CONTENT_VOXELS)):
        return []
    what = "the masks' regions" if masked else "the images"
    shown = math.floor(1000 * share) / 10  # rounded down: 9.96% is not "10.0%, under 10%"
    return [f"At the starting transform ({start}) {what} overlap in only {shown:.1f}% of the smaller one "
            f"({_voxels(inside)} of the fixed {'mask' if fixed_mask is not None else 'image'} inside the moving "
            f"{'mask' if moving_mask is not None else 'image'}), under "
            f"{100 * MIN_START_OVERLAP:.0f}%: registration from so little overlap is unreliable (it may return the "
            f"start unchanged or a transform far from the truth). {fix}"]


def _everywhere(image: sitk.Image) -> sitk.Image:
    """A mask of every voxel of ``image``, on its grid."""
    everywhere = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    everywhere.CopyInformation(image)
    return everywhere
