"""Pixel-level fusion of an anatomical image with a functional (or second anatomical) image.

``fuse(a, b, method)`` is the one entry point: it checks that both images lie on one grid,
scales them to a common 0..1 range, runs the method from the registry :data:`METHODS`, and
returns a :class:`FusionResult` whose image has ``a``'s geometry. The grey fused image is on a
0..255 display scale (what the metrics and the 8-bit literature use).

Colour functional slices (the pseudo-colour PET/SPECT PNGs of the fusion literature) are fused
on the Y channel of YCbCr and their Cb/Cr put back (desaturated per pixel where the colour would
leave the RGB gamut, so the fused brightness is kept): ``FusionResult.image`` is then RGB and
``FusionResult.grey`` its luminance, the fused Y up to the 8-bit rounding of the stored colours.

Registry (extensible)::

    from MultimodalFusionLib import fusion
    fusion.register_method("mine", my_func)   # my_func(a, b, *, progress=None, **params)
    fusion.list_methods()                     # ['average', 'max', ..., 'deep' when torch is present]

A method receives float64 arrays ``a``, ``b`` of one shape (z, y, x or y, x) scaled to 0..1 and
returns the fused array on that scale, or ``(fused, weights)`` with ``weights`` the per-voxel
weight of ``a``, or ``(fused, weights, used)`` with ``used`` the parameters that really ran where
they differ from those asked for (e.g. fewer levels on a small image; the record keeps the request
as ``<name>_requested``); an array with one more, last axis of length 3 is an RGB result (the
overlay). Numeric parameters are converted to the type of the method's default (a clear error for
a value that is not a number). A method with a keyword parameter ``spacing`` is also given the
images' voxel spacing in the arrays' axis order (z, y, x or y, x): "deep" slices a volume across its
thickest axis with it. It is geometry, not a setting: ``fuse`` refuses it from the caller.
"deep" is registered lazily by importing ``MultimodalFusionLib.fusion.deep`` on first use.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from typing import Any, Callable, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..progress import ProgressCallback, report, scaled
from ..validation import check_components, check_image, check_on_grid, grid_differences
from . import classic
from .base import FusionResult
from .color import overlay_arrays, rgb_to_ycbcr, window_to_unit, ycbcr_to_rgb_in_gamut

__all__ = [
    "FusionResult",
    "fuse",
    "fused_pixel_type",
    "METHODS",
    "register_method",
    "list_methods",
    "get_method",
    "check_parameters",
    "check_windows",
    "window_from_width_level",
    "same_grid",
    "check_same_grid",
    "to_unit",
    "unit_scaled",
    "slice_axis",
    "SLICE_AXIS_RATIO",
    "AXIS_NAMES",
]

FusionMethod = Callable[..., Any]


def _overlay(a: np.ndarray, b: np.ndarray, *, colormap: str | np.ndarray = "pet", opacity: float = 0.5,
             threshold: float = 0.1, functional_rgb: np.ndarray | None = None,
             progress: ProgressCallback | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Registry entry of the colour overlay (array contract; threshold as a fraction of the window)."""
    return overlay_arrays(a, b, colormap=colormap, opacity=opacity, threshold=threshold,
                          functional_rgb=functional_rgb)


#: name -> array function (see the module docstring for the contract).
METHODS: dict[str, FusionMethod] = {
    "average": classic.average,
    "max": classic.maximum,
    "pca": classic.pca,
    "wavelet": classic.wavelet,
    "laplacian": classic.laplacian,
    "overlay": _overlay,
}

#: Methods provided by an optional module, imported (and so registered) on first use, with the
#: top-level packages they need (all of them: deep imports MONAI and safetensors only when it runs, so
#: with torch alone it was listed, picked by the demo, and failed inside fuse()).
_LAZY: dict[str, tuple[str, tuple[str, ...]]] = {
    "deep": ("MultimodalFusionLib.fusion.deep", ("torch", "monai", "safetensors")),
}


#: The methods this package defines (their integer parameters take whole numbers only).
_BUILTIN_METHODS = frozenset({"average", "max", "pca", "wavelet", "laplacian", "overlay", "deep"})


def register_method(name: str, func: FusionMethod, *, overwrite: bool = True) -> None:
    """Add a fusion method to the registry (``fuse(..., method=name)`` and the CLI then know it).

    Args:
        name: method name (lower case, no spaces).
        func: array function ``func(a, b, *, progress=None, **params)`` (module docstring).
        overwrite: replace an existing method of that name.

    Raises:
        InputError: the name is taken and ``overwrite`` is False, or ``func`` is not callable.
    """
    if not callable(func):
        raise InputError(f"The fusion method '{name}' is not callable.", "Register a function.")
    if name in METHODS and not overwrite:
        raise InputError(f"A fusion method named '{name}' already exists.", "Choose another name.")
    METHODS[name] = func


def _lazy_available(name: str) -> bool:
    module, needs = _LAZY[name]
    try:
        return (all(importlib.util.find_spec(package) is not None for package in needs)
                and importlib.util.find_spec(module) is not None)
    except (ImportError, ValueError):
        return False


def list_methods() -> list[str]:
    """Names of the available methods: the registry plus lazily-registered ones whose
    dependencies are installed (e.g. "deep" when torch, MONAI and safetensors are importable)."""
    names = [n for n in METHODS if n not in _LAZY or _lazy_available(n)]
    names += [n for n in _LAZY if n not in METHODS and _lazy_available(n)]
    return names


def get_method(name: str) -> FusionMethod:
    """The registered function of method ``name``, importing a lazy one on first use.

    Raises:
        InputError: unknown method, or its optional dependencies are missing.
    """
    if name in _LAZY and (name not in METHODS or not _lazy_available(name)):
        module, needs = _LAZY[name]
        missing = module
        try:
            for missing in (*needs, module):  # the package registers itself lazily; a dependency may be missing
                importlib.import_module(missing)
        except ImportError as exc:
            raise InputError(f"The '{name}' fusion method needs '{missing}', which could not be imported ({exc}).",
                             "Install the optional dependencies: pip install 'slicer-multimodalfusion[deep]' "
                             "(torch==2.13.0 with PyTorch's CPU index for a CPU-only machine).") from exc
    if name not in METHODS:
        raise InputError(f"Unknown fusion method '{name}'.", f"Use one of: {', '.join(list_methods())}.")
    return METHODS[name]


# ----------------------------------------------------------------------------- geometry / scaling
#: A volume's acquisition slice axis is its coarsest voxel axis when that axis's spacing is more than this
#: many times that of each other axis (a 2D deep-fusion network slices volumes across it). Thick-slice
#: acquisitions are 2-10x (e.g. 1 x 1 x 5 mm); isotropic 3D acquisitions and resampled volumes stay near 1
#: (an MPRAGE's 1 x 1 x 1.2 mm: 1.2x), where every axis is as good as another and the first one is kept,
#: so those outputs are unchanged.
SLICE_AXIS_RATIO = 1.5

#: ITK's names of a volume's array axes 0, 1, 2 (numpy's z, y, x order), as deep fusion's ``slice_axis``
#: parameter and the metrics name the axis :func:`slice_axis` picks.
AXIS_NAMES = ("z", "y", "x")


def slice_axis(spacing: Sequence[float] | None) -> int:
    """The array axis of a volume's acquisition slices: the one a 2D network fuses it slice by slice along.

    Each slice should be an acquired slice, whose in-plane voxels are fine, not a cut across the thick
    slices of, say, a sagittal 1 x 1 x 5 mm acquisition stored with x as its 5 mm axis (array axis 2).

    Args:
        spacing: the voxel spacing in the array's axis order (z, y, x: ITK's reversed); None: unknown.

    Returns:
        The axis whose spacing is more than :data:`SLICE_AXIS_RATIO` times each other axis's, else 0 (the
        first axis, ITK's z, as always before: also for isotropic, nearly isotropic or unknown spacing,
        and where two axes are equally thick, since no slice plane is fine in both directions then).
    """
    if spacing is None or len(spacing) != 3:
        return 0
    sides = [float(v) for v in spacing]
    thick = int(np.argmax(sides))
    others = [v for k, v in enumerate(sides) if k != thick]
    return thick if sides[thick] > SLICE_AXIS_RATIO * max(others) else 0


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """True when ``a`` and ``b`` have the same size, spacing, origin and direction."""
    return not grid_differences(b, a)


def check_same_grid(a: sitk.Image, b: sitk.Image, a_name: str = "anatomical image (a)",
                    b_name: str = "functional image (b)") -> None:
    """Raise InputError naming the difference when ``b`` is not on ``a``'s grid."""
    check_on_grid(b, a, b_name, a_name,
                  "Register and resample it onto the anatomical image first (mmfusion run FIXED MOVING, or "
                  "mmfusion resample MOVING --reference FIXED), or use pipeline.run.")


def to_unit(image: sitk.Image | np.ndarray, window: Sequence[float] | None = None,
            *, is_8bit: bool | None = None) -> np.ndarray:
    """Scale a grey image to 0..1 (float64), the common scale of all fusion methods.

    Rule (shared with :mod:`MultimodalFusionLib.metrics`): a given ``window`` (lo, hi) maps to
    0..1 and is clipped; 8-bit images (UInt8 pixels) are divided by 255, so PNG slices keep
    their values; anything else (CT in HU, PET in SUV, MR) is min-max scaled, its padding left out
    (``preprocess.unpadded_range``: a CT's -32768 outside its reconstruction circle goes to 0, where its
    brain had been squashed into a few grey levels near 1).
    """
    from ..preprocess import unpadded_range

    if isinstance(image, sitk.Image):
        if is_8bit is None:
            is_8bit = image.GetPixelID() == sitk.sitkUInt8
        # one float64 copy of the voxels (a view, then astype), scaled in place below: a 512x512x200
        # CT needs one 420 MB array here, not the three that copy + subtract + divide allocate
        arr = sitk.GetArrayViewFromImage(image).astype(np.float64)
    else:
        src = np.asarray(image)
        is_8bit = bool(is_8bit) if is_8bit is not None else src.dtype == np.uint8
        arr = src.astype(np.float64)  # always a copy: the caller's array is never scaled in place
    if window is not None:
        return np.clip(window_to_unit(arr, window), 0.0, 1.0)
    if is_8bit:
        arr /= 255.0
        return arr
    lo, hi = unpadded_range(arr)
    if not hi > lo:
        return np.zeros_like(arr)
    arr -= lo  # the same operations as (arr - lo) / (hi - lo), so the same values, in place
    arr /= hi - lo
    if arr.size and float(arr.min()) < 0.0:  # padding, below the range
        np.maximum(arr, 0.0, out=arr)
    return arr


def _colour_ycc(b: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """(RGB on 0..255, its YCbCr) of a colour image, float64: 8-bit colour as stored, other colour min-max
    stretched to 0..255 first (how :func:`fuse` reads a colour ``b``)."""
    rgb = sitk.GetArrayFromImage(b).astype(np.float64)[..., :3]
    if b.GetPixelID() != sitk.sitkVectorUInt8:  # not 8-bit colour: scale to 0..255 first
        lo, hi = float(rgb.min()), float(rgb.max())
        rgb = (rgb - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(rgb)
    return rgb, rgb_to_ycbcr(rgb)


def unit_scaled(image: sitk.Image, *, functional: bool = False) -> np.ndarray:
    """``image`` on the 0..1 scale :func:`fuse` gives a fusion method when no window is set (float64): 8-bit grey
    divided by 255, other grey min-max (:func:`to_unit`); colour as its luminance, for the anatomical image ``a``
    rounded to 8 bits where the colour is 8-bit, for the ``functional`` image ``b`` Y of YCbCr / 255 (the channel
    colour ``b`` is fused on); grey stored as RGB as grey. Deep-fusion training scales its pairs with it, so a
    network is trained on its inputs at the scale it fuses them (an 8-bit PNG pair spanning 30..200 was
    stretched to 0..1 in training, divided by 255 in fusion)."""
    name = "functional image (b)" if functional else "anatomical image (a)"
    if image.GetNumberOfComponentsPerPixel() > 1:
        _check_grey_or_colour(image, name)
        if functional and not _is_grey_rgb(image):
            return _colour_ycc(image)[1][..., 0] / 255.0
    return to_unit(_grey_input(image, name))


def _from_array(arr: np.ndarray, reference: sitk.Image, *, rgb: bool = False) -> sitk.Image:
    out = sitk.GetImageFromArray(arr, isVector=rgb)
    out.SetOrigin(reference.GetOrigin())
    out.SetSpacing(reference.GetSpacing())
    out.SetDirection(reference.GetDirection())
    return out


def _check_grey_or_colour(image: sitk.Image, name: str) -> None:
    """A usable image (:func:`check_image`) of grey or colour (3 or 4 components: RGB, RGBA) pixels."""
    check_image(image, name, allow_vector=True)
    check_components(image, name)  # the text read_image and mmfusion run give (2 components: a complex .mha)


def _grey_input(image: sitk.Image, name: str) -> sitk.Image:
    if not isinstance(image, sitk.Image):
        raise InputError(f"The {name} is a {type(image).__name__}, not an image.",
                         "Pass a SimpleITK image (MultimodalFusionLib.io.read_image).")
    ncomp = image.GetNumberOfComponentsPerPixel()
    if ncomp > 1:
        from ..io import to_luminance

        # checked before the conversion, which cannot name the image and runs ITK filters that exist in 2D
        # and 3D only: a 4D colour image was a RuntimeError from VectorIndexSelectionCast
        _check_grey_or_colour(image, name)
        was_8bit = image.GetPixelID() == sitk.sitkVectorUInt8
        lum = to_luminance(image)
        if was_8bit:  # keep the 8-bit scale of colour PNGs (rounded, as OpenCV's grey conversion)
            arr = np.clip(np.round(sitk.GetArrayFromImage(lum)), 0, 255).astype(np.uint8)
            lum8 = sitk.GetImageFromArray(arr)
            lum8.CopyInformation(lum)
            lum = lum8
        image = lum
    check_image(image, name)
    return image


def _defaults(func: FusionMethod) -> dict[str, Any]:
    """The keyword defaults of a method (so a result records every parameter it ran with)."""
    import inspect

    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return {}
    return {k: p.default for k, p in sig.parameters.items()
            if p.default is not inspect.Parameter.empty and k not in ("progress", "functional_rgb", "threshold")
            and isinstance(p.default, (int, float, str, bool))}


def _takes_spacing(func: FusionMethod) -> bool:
    """Whether a method takes the images' voxel spacing (a keyword parameter ``spacing``)."""
    import inspect

    try:
        found = inspect.signature(func).parameters.get("spacing")
    except (TypeError, ValueError):
        return False
    return found is not None and found.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                inspect.Parameter.KEYWORD_ONLY)


def _checked_params(func: FusionMethod, method: str, params: dict[str, Any]) -> dict[str, Any]:
    """Parameters as a method takes them: a number given as text ("0.6", from a form or the CLI)
    becomes the type of the parameter's default; a non-finite number, text that is not a number,
    or (for the built-in methods) a fraction where a whole number is needed, is a clear error.
    Other values (tuples, names, a registered method's own types) pass as they are."""
    import inspect
    import math

    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        sig = None
    if sig is not None and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        # a parameter the method does not take (e.g. `mmfusion fuse --method average --levels 3`): name the ones
        # it does take, not Python's "unexpected keyword argument" from inside the call
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        accepted = [k for k, p in list(sig.parameters.items())[2:]  # after the two arrays a, b
                    if p.kind in named and k not in ("progress", "functional_rgb", "spacing")]
        unknown = [k for k in params if k not in accepted]
        if unknown:
            takes = f"takes {', '.join(accepted)}" if accepted else "takes no parameters"
            raise InputError(f"Bad parameter for fusion method '{method}': it has no parameter "
                             f"{', '.join(repr(k) for k in unknown)}.",
                             f"Leave it out: '{method}' {takes} (mmfusion fuse --help lists each method's flags).")
    defaults = _defaults(func)
    classic_method = method in _BUILTIN_METHODS and method != "deep"
    out = {}
    for key, value in params.items():
        if isinstance(value, np.generic):  # np.float32(0.3), np.int64(2): checked and recorded as Python numbers
            value = value.item()
        default = defaults.get(key)
        numeric = isinstance(default, (int, float)) and not isinstance(default, bool)
        whole = isinstance(default, int) and not isinstance(default, bool)
        if classic_method and numeric and (value is None or isinstance(value, bool)):
            # float(None) inside the method was the message; True ran as weight 1, levels 1
            kind = "a whole number" if whole else "a number"
            raise InputError(f"Parameter '{key}' of fusion method '{method}' must be {kind} (got {value!r}).",
                             f"Give {kind}, e.g. {key}={default}, or leave it out.")
        if value is None or not numeric or not (isinstance(value, (str, int, float)) and not isinstance(value, bool)):
            out[key] = value
            continue
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        strict = isinstance(value, str) or method in _BUILTIN_METHODS
        if not math.isfinite(number) or (whole and strict and number != int(number)):
            kind = "a whole number" if whole and strict else "a number"
            raise InputError(f"Parameter '{key}' of fusion method '{method}' must be {kind} (got {value!r}).",
                             f"Give {kind}, e.g. {key}={default}.")
        out[key] = (int(number) if whole and number == int(number) else number) if isinstance(value, str) else value
    return out


def check_parameters(method: str, params: dict[str, Any] | None = None) -> None:
    """Raise now the InputError ``fuse(a, b, method, **params)`` would raise for these parameters.

    For a job that fuses after a long registration (``pipeline.run``): a misspelt parameter or value
    must not wait for it. Names, numbers, windows, deep fusion's device and its values that need no network
    (:func:`~MultimodalFusionLib.fusion.deep.inference.check_settings`) are checked as ``fuse`` checks them; the
    built-in classic methods (whose value checks do not depend on the images: too many levels
    are reduced to what an image allows, never refused) also fuse a small test pair with them.
    """
    func = get_method(method)
    params = dict(params or {})
    if "window" in params:
        _check_one_window(params, params.get("window_b"))
    for key in ("window", "window_a", "window_b"):
        if key in params:
            _checked_window(params.pop(key), key)
    if method == "overlay" and "threshold" in params:
        # in the functional image's units: fuse maps it through that image's window, unknown here, so
        # only its being a number is checked (the 0..1 test pair would refuse e.g. 100 of an 8-bit PET)
        _checked_threshold(params.pop("threshold"))
    checked = _checked_params(func, method, params)
    if method == "deep":
        from .deep.inference import check_settings
        from .deep.training import resolve_device

        # its values too (adapt_steps=-1, selection="soft", ...): the weights and roi_size need the network,
        # and are checked when it is loaded
        check_settings(**{k: checked[k] for k in ("adapt_steps", "adapt_lr", "loss_weights", "batch_size",
                                                  "selection") if k in checked})
        if checked.get("device") is not None:
            # an unknown name, CUDA without a GPU or cuda:N past the GPUs fails now, not after the work before
            resolve_device(checked["device"])
    if method in _BUILTIN_METHODS and method != "deep":
        ramp = np.linspace(0.0, 1.0, 256).reshape(16, 16)
        func(ramp, np.ascontiguousarray(ramp.T), **checked)


def _check_one_window(params: dict[str, Any], window_b: Any) -> None:
    """``window`` is an alias of ``window_b``: both given had been refused as "it has no parameter 'window'"
    by :func:`fuse` (whose methods take it), and let through by :func:`check_parameters`."""
    if params.get("window") is not None and window_b is not None:
        raise InputError(f"Both window {params['window']!r} and window_b {window_b!r} were given; window is "
                         "another name of window_b (the functional image's window).",
                         "Give one of them.")


def _checked_threshold(threshold: Any) -> float | None:
    """The overlay threshold as a float (None: the default), or a clear InputError (not float()'s ValueError)."""
    if threshold is None:
        return None
    try:
        value = float(threshold) if not isinstance(threshold, bool) else float("nan")
    except (TypeError, ValueError):
        value = float("nan")
    if not np.isfinite(value):
        raise InputError(f"The overlay threshold must be a number in the functional image's units (got {threshold!r}).",
                         "Give a number inside the functional window, or leave it out (10% up the window).")
    return value


def _checked_window(window: Any, name: str) -> tuple[float, float] | None:
    if window is None:
        return None
    try:
        lo, hi = (float(v) for v in window)
    except (TypeError, ValueError):
        lo = hi = float("nan")
    if not (np.isfinite(lo) and np.isfinite(hi) and hi > lo):
        # the CLI's --window is the functional image's window (window_b), --window-a the anatomical image's
        cli = "; CLI --window-a LO HI" if name == "window_a" else "; CLI --window LO HI"
        raise InputError(f"The {name} {window!r} is not a window (low, high) of two numbers with high > low.",
                         f"Give {name}=(low, high), e.g. (0, 255){cli}.")
    return lo, hi


#: DICOM Units (0054,1001) codes of a PET or NM image, in words (the others are named by their code)
_DICOM_UNITS = {"BQML": "Bq/mL", "GML": "SUV (g/mL)", "CNTS": "counts", "PROPCNTS": "counts"}


def _stored_in(image: sitk.Image) -> str:
    """The units a DICOM image states its values in (its Units (0054,1001), as io.read_image keeps them), in words
    for a message ("Bq/mL (DICOM Units BQML)"); "" where it states none."""
    from ..io import dicom_units

    code = dicom_units(image)
    return f"{_DICOM_UNITS.get(code, code)} (DICOM Units {code})" if code else ""


def _units_example(image_name: str, stored: str) -> str:
    """The fix's example of a window in an image's own units: what its DICOM Units say, or a guess."""
    if "(b)" not in image_name:
        return "a CT's are HU"
    if stored and not stored.startswith("Bq/mL"):
        return f"this image is stored in {stored}"
    where = f"this PET is stored in {stored}, not in SUV" if stored else "a PET stored in Bq/mL is not in SUV"
    return (f"{where}: give the window in Bq/mL, or convert the image to SUV first (Bq/mL x body weight in g / "
            "injected dose in Bq, decay-corrected to the scan)")


def _check_window_shows(values: np.ndarray, window: Sequence[float], name: str, image_name: str,
                        units: str = "", stored: str = "") -> None:
    """Refuse a window that every one of an image's ``values`` lies at or beyond one side of (the one rule of
    :func:`fuse` and :func:`check_windows`). Such a window makes the image one constant value: ``--window 0 8``
    (SUV) on a PET stored in Bq/mL (1000..50000) had fused it as a constant 1, all of a's structure and none of b's,
    and the overlay painted the whole image in the colour map's top colour; a window above the values showed no
    colour at all. Both were written with exit status 0. A window some values fall inside, or lie on both sides of,
    passes. ``stored``: the units the image's DICOM Units state (:func:`_stored_in`), named in the message."""
    lo, hi = float(np.min(values)), float(np.max(values))
    w_lo, w_hi = float(window[0]), float(window[1])
    if lo < w_hi and hi > w_lo:
        _check_window_not_silhouette(values, (w_lo, w_hi), (lo, hi), name, image_name, units, stored)
        _check_window_not_below_foreground(values, (w_lo, w_hi), (lo, hi), name, image_name, units, stored)
        return
    side = "at or below its bottom" if hi <= w_lo else "at or above its top"
    if stored:
        units = f"{units} {stored}"
    example = ("a PET stored in Bq/mL is not in SUV" if "(b)" in image_name and not stored
               else _units_example(image_name, stored))
    raise InputError(f"The window ({w_lo:g}, {w_hi:g}) given for the {image_name} ({name}) "
                     f"holds none of its values ({lo:g}..{hi:g}{units}): every voxel is {side}, so the window makes "
                     "the image one constant value and the fused image would carry nothing of it.",
                     f"Give a window that overlaps {lo:g}..{hi:g}, in the image's own units ({example}), or leave "
                     "the window out.")


#: share of an image's voxels above its minimum that, lying above a window that holds the minimum, make the window
#: show the image as a silhouette (:func:`_check_window_not_silhouette`)
SILHOUETTE_SHARE = 0.99


def _check_window_not_silhouette(values: np.ndarray, window: tuple[float, float], extent: tuple[float, float],
                                 name: str, image_name: str, units: str, stored: str = "") -> None:
    """Refuse a window that holds an image's minimum (its background: a PET's air at 0) and none, or almost none
    (under 1 - :data:`SILHOUETTE_SHARE`), of its other voxels, which lie above its top: ``--window 0 8`` (SUV) on a
    PET stored in Bq/mL (0 in the air, 1000-20000 in the body) passed the check of :func:`_check_window_shows`
    because the air's 0 lies in the window, and the fusion showed the PET as a silhouette of the body, every body
    voxel at the window's top. An image whose voxels above the minimum are all one value (a mask) loses nothing
    to the window; a window that many voxels saturate but some of the others fall inside (a CT lung window) passes."""
    (w_lo, w_hi), (lo, hi) = window, extent
    if not w_lo <= lo < w_hi:
        return
    rest = values > lo
    count = int(np.count_nonzero(rest))
    above = values > w_hi
    n_above = int(np.count_nonzero(above))
    if not count or n_above < SILHOUETTE_SHARE * count or float(np.min(values[above])) >= hi:
        return
    top = float(np.percentile(values[rest], 99.5))
    _refuse_silhouette(f"The window ({w_lo:g}, {w_hi:g}) given for the {image_name} ({name}) holds only its minimum "
                       f"{lo:g} (its background): {n_above / count:.1%} of its other voxels lie above the window's top",
                       extent, (lo, top), image_name, units, stored)


def _refuse_silhouette(why: str, extent: tuple[float, float], suggested: tuple[float, float], image_name: str,
                       units: str, stored: str) -> None:
    """Raise the refusal of a window that would show an image as a silhouette (:func:`_check_window_not_silhouette`,
    :func:`_check_window_not_below_foreground`): ``why``, the image's range in its units, a window to give instead."""
    example = _units_example(image_name, stored)
    if stored:
        units = f"{units} {stored}"
    raise InputError(f"{why} (its values span {extent[0]:g}..{extent[1]:g}{units}), so the fused image would show it "
                     "as a silhouette, every voxel above the background at the window's top.",
                     f"Give a window in the image's own units, e.g. ({suggested[0]:.4g}, {suggested[1]:.4g}) "
                     f"({example}), or leave the window out.")


def window_from_width_level(width: Any, level: Any, name: str, example: str,
                            width_name: str = "the window width (the first number)") -> tuple[float, float]:
    """(low, high) of a window given as Slicer shows it, width and level: LOW = LEVEL - WIDTH/2, HIGH = LEVEL + WIDTH/2
    (400, 40 is -160..240). One check for every front end (the CLI's ``--window-level-a``, the web panel's fusion
    windows), so that both refuse the same values with the same words.

    Args:
        width: the window width; a number, or the text of one (a page's number field sends text).
        level: the window's centre.
        name: how the message names what was given (``--window-level-a``).
        example: the fix, with an example in the front end's own terms.
        width_name: how the message names the width.

    Raises:
        InputError: a width or level that is not a finite number (NaN, inf, text that is no number: it had become a
            window of NaN or infinite ends, refused naming ``window_a``, which was not given), or a width of 0 or
            less (a window with its high below its low).
    """
    def number(value: Any) -> float:
        if isinstance(value, bool):
            return float("nan")
        try:
            return float(value)
        except (TypeError, ValueError):
            return float("nan")

    def shown(value: Any, as_number: float) -> str:
        return f"{as_number:g}" if isinstance(value, (int, float)) or np.isfinite(as_number) else repr(value)

    w, lv = number(width), number(level)
    given = f"{name} {shown(width, w)} {shown(level, lv)}"
    if not (np.isfinite(w) and np.isfinite(lv)):
        raise InputError(f"{given}: the window width and level must be finite numbers.", example)
    if not w > 0:
        raise InputError(f"{given}: {width_name} must be more than 0.", example)
    return lv - w / 2.0, lv + w / 2.0


#: a window narrower than this share of the span from its bottom to an image's 99.5th percentile, lying in the
#: image's lower class (:func:`_otsu_threshold`), shows the image as a silhouette of its foreground
#: (:func:`_check_window_not_below_foreground`): an SUV window on a PET in Bq/mL is 0.1-0.5% of it, a CT brain window
#: (0, 80) 4%, a lung window 25% or more
NARROW_WINDOW_SHARE = 0.01

#: voxels :func:`_check_window_not_below_foreground` looks at (a regular subsample of larger images)
_SILHOUETTE_SAMPLE = 2_000_000


def _otsu_threshold(values: np.ndarray, lo: float, hi: float, bins: int = 256) -> float:
    """The value splitting ``values`` in ``[lo, hi]`` into two classes of the largest between-class variance (Otsu),
    from a histogram of ``bins`` bins; the values outside ``[lo, hi]`` are left out (outliers)."""
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    counts = counts.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2.0
    w0 = np.cumsum(counts)
    w1 = w0[-1] - w0
    m0 = np.cumsum(counts * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = w0 * w1 * (m0 / w0 - (m0[-1] - m0) / w1) ** 2
    between[~np.isfinite(between)] = -1.0
    return float(edges[int(np.argmax(between)) + 1])


def _check_window_not_below_foreground(values: np.ndarray, window: tuple[float, float], extent: tuple[float, float],
                                       name: str, image_name: str, units: str, stored: str = "") -> None:
    """Refuse a window narrower than :data:`NARROW_WINDOW_SHARE` of the span from its bottom to the image's 99.5th
    percentile that lies in the image's lower class (its top at or below the Otsu threshold between background and
    foreground): every foreground voxel lies above its top. :func:`_check_window_not_silhouette` catches this only
    where the background is one exact minimum inside the window; ``--window 0 8`` (SUV) on a PET stored in Bq/mL
    had passed where the air was not exact 0: one voxel of -0.5, an air of -3..0 or of reconstruction noise (0-20,
    or normal of 50 Bq/mL about 0), float noise of 1e-3, or a field of view padded with -1000 around it, and the PET
    was fused as a silhouette of the body, rc 0. A window that wide or wider (a CT brain window is 4% of a head CT's
    span, a lung window 25% or more), or whose top reaches the foreground (an SUV window on an SUV image), passes.
    Costs nothing for such windows: the percentiles are taken only for a window narrow beside the image's range."""
    (w_lo, w_hi), (lo, hi) = window, extent
    if w_hi - w_lo >= NARROW_WINDOW_SHARE * (hi - w_lo):  # the 99.5th percentile is at most the maximum
        return
    flat = values.reshape(-1)
    sample = flat[::max(1, flat.size // _SILHOUETTE_SAMPLE)]
    bottom, top = (float(v) for v in np.percentile(sample, [0.5, 99.5]))
    if not top > w_hi or w_hi - w_lo >= NARROW_WINDOW_SHARE * (top - w_lo):
        return
    split = _otsu_threshold(sample, min(bottom, w_lo), top)
    if w_hi > split:
        return
    foreground = sample[sample > split]
    if not foreground.size:
        return
    share = float(np.count_nonzero(foreground > w_hi)) / foreground.size
    if share < SILHOUETTE_SHARE:
        return
    _refuse_silhouette(f"The window ({w_lo:g}, {w_hi:g}) given for the {image_name} ({name}) lies below its "
                       f"foreground: it is {(w_hi - w_lo) / (top - w_lo):.2%} of the span from its bottom to the "
                       f"image's 99.5th percentile {top:.4g}, and {share:.1%} of its foreground (its voxels above "
                       f"{split:.4g}, Otsu's threshold) lie above the window's top", (lo, hi),
                       (max(bottom, min(w_lo, split)), top), image_name, units, stored)


#: how the messages name each image's window (the Python keyword and the CLI flag)
_A_WINDOW_LABEL = "window_a; CLI --window-a"
_B_WINDOW_LABEL = "window_b; CLI --window"


def check_windows(a: sitk.Image, b: sitk.Image, *, window_a: Sequence[float] | None = None,
                  window_b: Sequence[float] | None = None) -> None:
    """Raise now the InputError :func:`fuse` would raise for a window that holds none of its image's values, for a
    job that registers ``b`` before fusing it (``pipeline.run``, the Slicer Logic's ``run``): such a window had been
    refused only once the registration had run.

    ``b`` is the moving image as given, before it is resampled onto ``a``'s grid: linear and nearest-neighbour
    interpolation give values within the range of the voxels they interpolate, so a window that every value of
    ``b`` lies beside is beside every value of the resampled ``b`` too (whose voxels outside ``b`` take the default
    0, which can only make a window that the fusion sees pass as a mask of ``b``'s field of view). A colour ``b``
    that is not 8-bit is left to :func:`fuse`: its luminance is taken after a min-max stretch of the resampled
    channels, which the voxels outside ``b`` change.

    Args:
        a: the anatomical (fixed) image, grey or colour (its luminance, as :func:`fuse` takes it).
        b: the functional (moving) image, on any grid.
        window_a: ``a``'s window (low, high), or None.
        window_b: ``b``'s window (low, high), or None.

    Raises:
        InputError: a window that is not (low, high) with high > low, or that holds none of its image's values.
    """
    window_a = _checked_window(window_a, "window_a")
    window_b = _checked_window(window_b, "window_b")
    if window_a is not None:
        grey_a = _grey_input(a, "anatomical image (a)")
        _check_window_shows(sitk.GetArrayViewFromImage(grey_a), window_a, _A_WINDOW_LABEL, "anatomical image (a)")
    if window_b is None:
        return
    if b.GetNumberOfComponentsPerPixel() > 1:
        _check_grey_or_colour(b, "functional image (b)")
        if not _is_grey_rgb(b):
            if b.GetPixelID() == sitk.sitkVectorUInt8:  # its luminance as stored, what fuse windows
                _check_window_shows(_colour_ycc(b)[1][..., 0], window_b, _B_WINDOW_LABEL, "functional image (b)",
                                    ", luminance")
            return
    grey_b = _grey_input(b, "functional image (b)")
    _check_window_shows(sitk.GetArrayViewFromImage(grey_b), window_b, _B_WINDOW_LABEL, "functional image (b)",
                        stored=_stored_in(b))


def _recorded(value: Any) -> Any:
    """A parameter as FusionResult.parameters (and metrics.json, the report) keep it: numbers and text as
    they are, other values as text, but an object whose text is long or spans lines (a torch network passed
    as deep's ``weights`` printed its whole module tree, kilobytes) by its type's name (numpy numbers are
    Python numbers already: :func:`_checked_params`)."""
    if isinstance(value, (int, float, str, bool, type(None))):
        return value
    text = str(value)
    return text if len(text) <= 200 and "\n" not in text else f"<{type(value).__name__} object>"


def _overlay_default_window(values: np.ndarray) -> tuple[tuple[float, float], str]:
    """The overlay's functional window given none, and its rule: min..99.5th percentile of ``values`` (a PET's hot
    spots above it saturate), min..max where the two meet, the padding left out of both
    (``preprocess.without_padding``: -32768 outside a CT's reconstruction circle, which had been the window's low
    end). The web panel shows both as the Engine default."""
    from ..preprocess import without_padding

    values = without_padding(values)
    low, high = float(values.min()), float(np.percentile(values, 99.5))
    if high > low:
        return (low, high), "min..99.5th percentile"
    return (low, float(values.max())), "min..max"


def _is_grey_rgb(image: sitk.Image) -> bool:
    arr = sitk.GetArrayViewFromImage(image)
    return bool(np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 1], arr[..., 2]))


def fused_pixel_type(method: str, b: sitk.Image) -> int | None:
    """The pixel type of the image :func:`fuse` returns with a built-in ``method`` (see its Returns), known before
    the fusion so that a front end refuses an output format that cannot hold it (a float image to .dcm) before the
    work: 8-bit RGB for the overlay and for a colour ``b`` (not grey stored as RGB), else 32-bit float; None (not
    known before the fusion) for a method registered by the user, which may return either."""
    if method not in _BUILTIN_METHODS:
        return None
    colour = b.GetNumberOfComponentsPerPixel() in (3, 4) and not _is_grey_rgb(b)
    return sitk.sitkVectorUInt8 if method == "overlay" or colour else sitk.sitkFloat32


# ----------------------------------------------------------------------------- fuse
def fuse(a: sitk.Image, b: sitk.Image, method: str = "average", *, progress: ProgressCallback | None = None,
         window_a: Sequence[float] | None = None, window_b: Sequence[float] | None = None,
         **params: Any) -> FusionResult:
    """Fuse ``b`` (functional/moving, already on ``a``'s grid) into ``a`` (anatomical/fixed).

    Args:
        a: anatomical (fixed) image, grey, 2D or 3D. A colour image is converted to luminance.
        b: functional (moving) image on ``a``'s grid; grey, or RGB (colour PET/SPECT slices:
            fused on Y of YCbCr, colour put back).
        method: a name from :func:`list_methods` ("average", "max", "pca", "wavelet",
            "laplacian", "overlay", "deep", ...).
        progress: progress callback ``(fraction, message)``; returning False cancels.
        window_a: intensity window (lo, hi) of ``a`` mapped to 0..1 (default: 8-bit images as
            they are, others min-max), e.g. a CT's soft tissue (-160, 240) HU; CLI ``--window-a`` (or
            ``--window-level-a`` 400 40, as Slicer shows it).
        window_b: the same for ``b`` (for "overlay": the functional display window, default
            from its minimum to its 99.5th percentile).
        **params: method parameters: average ``weight``; wavelet ``wavelet``, ``levels``;
            laplacian ``levels``, ``sigma``; overlay ``colormap`` ("pet" (default), "hot", "rainbow", a
            matplotlib name, or a lookup table: (N, 3) colours in 0..1, bottom of the window first),
            ``opacity`` (0..1), ``threshold`` (in ``b``'s units; default 10%
            up the window), ``window`` (alias of ``window_b``).

    Returns:
        FusionResult: ``image`` (Float32 grey on a 0..255 scale, or RGB VectorUInt8), ``grey``
        (the grey fused image for metrics), ``weights`` (per-voxel weight of ``a``, Float32),
        method, parameters and seconds.

    Raises:
        InputError: unusable input, grids differ, unknown method or bad parameter.
        OperationCancelled: the progress callback asked to stop.
    """
    start = time.perf_counter()
    func = get_method(method)
    report(progress, 0.0, f"fusing ({method})")
    a = _grey_input(a, "anatomical image (a)")
    if not isinstance(b, sitk.Image):
        raise InputError(f"The functional image (b) is a {type(b).__name__}, not an image.",
                         "Pass a SimpleITK image (MultimodalFusionLib.io.read_image(..., keep_color=True)).")
    _check_grey_or_colour(b, "functional image (b)")
    ncomp = b.GetNumberOfComponentsPerPixel()
    if ncomp > 1 and _is_grey_rgb(b):  # a grey slice stored as RGB (R = G = B): fuse it as grey
        b = _grey_input(b, "functional image (b)")
        ncomp = 1
    check_same_grid(a, b)
    params = dict(params)
    if "window" in params:
        _check_one_window(params, window_b)
        alias = params.pop("window")
        window_b = alias if alias is not None else window_b
    window_a = _checked_window(window_a, "window_a")
    window_b = _checked_window(window_b, "window_b" if method != "overlay" else "functional window")
    params = _checked_params(func, method, params)
    colour = ncomp > 1
    used: dict[str, Any] = {}

    a_unit = to_unit(a, window_a)
    if window_a is not None:
        _check_window_shows(sitk.GetArrayViewFromImage(a), window_a, _A_WINDOW_LABEL, "anatomical image (a)")
    chroma = None
    b_rgb_unit = None
    b_window_given = window_b is not None  # the overlay's default window, from b's own values, always shows them
    if colour:
        rgb, ycc = _colour_ycc(b)
        chroma = ycc[..., 1:]
        b_unit = np.clip(window_to_unit(ycc[..., 0], window_b), 0, 1) if window_b is not None else ycc[..., 0] / 255.0
        if b_window_given:
            _check_window_shows(ycc[..., 0], window_b, _B_WINDOW_LABEL, "functional image (b)", ", luminance")
        b_rgb_unit = np.clip(rgb / 255.0, 0.0, 1.0)
        used["colour"] = "fused on Y of YCbCr (BT.601), Cb/Cr of b put back"
    elif method == "overlay":
        b_arr = sitk.GetArrayFromImage(b).astype(np.float64)
        if window_b is None:
            window_b = _overlay_default_window(b_arr)[0]
        b_unit = np.clip(window_to_unit(b_arr, window_b), 0.0, 1.0)
        if b_window_given:
            _check_window_shows(b_arr, window_b, _B_WINDOW_LABEL, "functional image (b)", stored=_stored_in(b))
    else:
        b_unit = to_unit(b, window_b)
        if b_window_given:
            _check_window_shows(sitk.GetArrayViewFromImage(b), window_b, _B_WINDOW_LABEL, "functional image (b)",
                                stored=_stored_in(b))

    if method == "overlay":
        thr = params.pop("threshold", None)
        _checked_threshold(thr)  # a number (float() below), named as given in the messages
        if thr is None:
            thr_unit = 0.1
        elif window_b is not None:
            thr_unit = float(window_to_unit(np.array(float(thr)), window_b))
        else:  # colour input without a window: threshold in luminance units (0..255)
            thr_unit = float(thr) / 255.0
        if thr_unit >= 1.0:
            shown = f"{window_b[0]:g}..{window_b[1]:g}" if window_b is not None else "0..255 (luminance)"
            raise InputError(f"Overlay threshold {thr} lies at or above the top of the functional window {shown}: "
                             "no colour would be shown.",
                             "Give a threshold inside the window, in the functional image's units, or leave it "
                             "out (10% up the window).")
        # at or below the window's bottom: every value the window shows is shown (threshold=0 of a PET whose
        # lowest value is above 0, under the default window from that minimum, had been refused)
        thr_unit = max(thr_unit, 0.0)
        params["threshold"] = thr_unit
        if colour:
            params["functional_rgb"] = b_rgb_unit
        used["threshold"] = None if thr is None else float(thr)
        used["threshold_fraction_of_window"] = thr_unit
    if window_a is not None:
        used["window_a"] = [float(v) for v in window_a]
    if window_b is not None:
        used["window_b"] = [float(v) for v in window_b]

    if _takes_spacing(func):  # the geometry the arrays lost (see the module docstring)
        params["spacing"] = tuple(reversed(a.GetSpacing()))
    try:
        out = func(a_unit, b_unit, progress=scaled(progress, 0.05, 0.95), **params)
    except TypeError as exc:
        raise InputError(f"Bad parameter for fusion method '{method}': {exc}.",
                         f"See help(MultimodalFusionLib.fusion.fuse) for the parameters of '{method}'.") from exc
    # a method returns fused, or (fused, weights), or (fused, weights, {parameters it really used}),
    # e.g. the levels an image's size allowed: the record must say what ran, not what was asked for
    # (and under "warnings", what the user should hear of this fusion: moved to FusionResult.warnings)
    out = out if isinstance(out, tuple) else (out, None)
    fused, weights = out[0], out[1]
    actual = dict(out[2]) if len(out) > 2 and isinstance(out[2], dict) else {}
    # what the user should hear of this fusion (deep fusion's anisotropy): on the result, not among its parameters
    notes = [str(note) for note in actual.pop("warnings", None) or []]
    fused = np.asarray(fused, dtype=np.float64)
    shape = a_unit.shape
    # the scaled inputs are not needed any more (a method that returns one of them keeps it alive)
    del a_unit, b_unit, b_rgb_unit, out
    params.pop("functional_rgb", None)
    params.pop("spacing", None)
    if method == "overlay":
        params.pop("threshold", None)
    used.update(_defaults(func))
    used.update({k: _recorded(v) for k, v in params.items()})
    for key, value in actual.items():
        if key in used and used[key] != value:
            used[f"{key}_requested"] = used[key]
        used[key] = value

    # Whole-volume arithmetic below runs in place on fresh arrays (np.clip allocates one): the
    # same operations in the same order as before, so the same values, with fewer 8-byte copies.
    grey = None
    rgb8 = None
    if fused.shape == shape + (3,):  # an RGB result (overlay)
        rgb8 = np.clip(fused, 0.0, 1.0)
        del fused
        rgb8 *= 255.0
        np.round(rgb8, out=rgb8)
    elif fused.shape == shape:
        grey_arr = np.clip(fused, 0.0, 1.0)
        del fused
        grey_arr *= 255.0
        if colour:  # the fused Y with b's colour, desaturated where it would clip (so Y is kept)
            rgb8 = np.clip(np.round(ycbcr_to_rgb_in_gamut(grey_arr, chroma)), 0, 255)
        else:
            # a grey result is its own grey image: one float32 volume, not two identical ones
            image = grey = _from_array(grey_arr.astype(np.float32), a)
    else:
        raise InputError(f"Fusion method '{method}' returned an array of shape {fused.shape} for inputs of "
                         f"shape {shape}.", "Fix the method: it must return the inputs' shape.")
    if rgb8 is not None:
        # the grey the metrics see is the luminance of the 8-bit colours as stored, so that
        # `mmfusion evaluate` on the written file gives the numbers of the run
        grey_arr = 0.299 * rgb8[..., 0]
        grey_arr += 0.587 * rgb8[..., 1]
        grey_arr += 0.114 * rgb8[..., 2]
        image = _from_array(rgb8.astype(np.uint8), a, rgb=True)
        del rgb8
    if grey is None:
        grey = _from_array(grey_arr.astype(np.float32), a)
    del grey_arr
    weights_img = None
    if weights is not None:
        weights_img = _from_array(np.clip(np.asarray(weights, dtype=np.float32), 0.0, 1.0), a)
    report(progress, 1.0, f"fused ({method})")
    return FusionResult(image=image, weights=weights_img, method=method, parameters=used,
                        seconds=time.perf_counter() - start, grey=grey, warnings=notes)
