"""Colour for fusion: YCbCr conversion, colour maps and the functional-over-anatomical overlay.

- YCbCr is the full-range (JPEG) ITU-R BT.601 transform, the one the medical fusion literature
  uses for colour PET/SPECT slices: fuse the luminance Y with the anatomical image, then put the
  chroma (Cb, Cr) back.
- Colour maps are lookup tables of 256 RGB entries. "hot", "pet", "rainbow" and "grey" are
  defined here (no matplotlib import); any other name is looked up in matplotlib. A lookup table
  itself (an (N, 3) or (N, 4) array of colours in 0..1, e.g. a Slicer colour table's colours) is
  accepted wherever a colour-map name is.
- The overlay blends a colour-mapped functional image over the grey anatomical image, with an
  opacity, a threshold below which the anatomy shows alone, and a display window.

All functions work on numpy arrays of any dimension (2D slices and 3D volumes); colour is the
last axis.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import InputError

__all__ = [
    "rgb_to_ycbcr",
    "ycbcr_to_rgb",
    "ycbcr_to_rgb_in_gamut",
    "colormap_lut",
    "apply_colormap",
    "overlay_arrays",
    "COLORMAPS",
]

# Control points (position 0..1, R, G, B) of the built-in colour maps.
_CONTROL_POINTS: dict[str, list[tuple[float, float, float, float]]] = {
    # black -> red -> yellow -> white (the classic "hot" iron scale)
    "hot": [(0.0, 0, 0, 0), (0.375, 1, 0, 0), (0.75, 1, 1, 0), (1.0, 1, 1, 1)],
    # black -> blue-violet -> red -> orange -> yellow -> white: a PET heat scale in which low
    # uptake stays dark and cool, so the anatomy under it remains readable
    "pet": [(0.0, 0, 0, 0), (0.2, 0.25, 0.0, 0.55), (0.45, 0.85, 0.05, 0.2), (0.65, 1.0, 0.45, 0.0),
            (0.85, 1.0, 0.85, 0.1), (1.0, 1, 1, 1)],
    # blue -> cyan -> green -> yellow -> red
    "rainbow": [(0.0, 0, 0, 1), (0.25, 0, 1, 1), (0.5, 0, 1, 0), (0.75, 1, 1, 0), (1.0, 1, 0, 0)],
    "grey": [(0.0, 0, 0, 0), (1.0, 1, 1, 1)],
}
_CONTROL_POINTS["gray"] = _CONTROL_POINTS["grey"]

#: Names of the built-in colour maps (any matplotlib colour-map name works too).
COLORMAPS = ("hot", "pet", "rainbow", "grey")


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """Full-range BT.601 YCbCr of an RGB array (0..255 scale, colour on the last axis)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128.0 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128.0 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return np.stack([y, cb, cr], axis=-1)


def ycbcr_to_rgb(ycbcr: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_ycbcr` (float, not clipped)."""
    ycbcr = np.asarray(ycbcr, dtype=np.float64)
    y, cb, cr = ycbcr[..., 0], ycbcr[..., 1] - 128.0, ycbcr[..., 2] - 128.0
    r = y + 1.402 * cr
    g = y - 0.344136 * cb - 0.714136 * cr
    b = y + 1.772 * cb
    return np.stack([r, g, b], axis=-1)


def ycbcr_to_rgb_in_gamut(y: np.ndarray, chroma: np.ndarray) -> np.ndarray:
    """RGB (0..255 scale, float) of luminance ``y`` with the colour of ``chroma`` (Cb, Cr), desaturated
    per pixel just enough to stay inside 0..255.

    Putting a colour image's Cb/Cr back on a new Y can leave the RGB cube (a bright anatomy pixel under a
    saturated red PET): clipping each channel would then change the luminance, so the stored image would
    no longer show the fused brightness. Here the chroma of such a pixel is scaled down until its
    channels fit, which keeps its luminance and hue and lowers only its saturation.
    """
    y = np.clip(np.asarray(y, dtype=np.float64), 0.0, 255.0)[..., None]
    cb = np.asarray(chroma, dtype=np.float64)[..., 0] - 128.0
    cr = np.asarray(chroma, dtype=np.float64)[..., 1] - 128.0
    # each channel minus Y; their BT.601 luminance is 0, so any multiple of it keeps Y
    delta = np.stack([1.402 * cr, -0.344136 * cb - 0.714136 * cr, 1.772 * cb], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        room = np.where(delta > 0, (255.0 - y) / delta, np.where(delta < 0, y / -delta, np.inf))
    scale = np.clip(room.min(axis=-1), 0.0, 1.0)
    return y + scale[..., None] * delta


def colormap_lut(name: str | np.ndarray) -> np.ndarray:
    """A (N, 3) float lookup table in 0..1 for colour map ``name`` (N = 256 for a name).

    Args:
        name: a built-in or matplotlib colour-map name, or a lookup table: N >= 2 colours (rows of R, G, B
            or R, G, B, A in 0..1; alpha is ignored), the first for the bottom of the window, the last for
            its top.

    Raises:
        InputError: the name is neither built in nor a matplotlib colour map, or the table is not one.
    """
    if not isinstance(name, str):
        if isinstance(name, (np.ndarray, list, tuple)):
            try:
                lut = np.array(name, dtype=np.float64)
                what = f"table of shape {lut.shape}"
            except (TypeError, ValueError):  # text, or rows of different lengths
                lut, what = np.empty((0, 0)), f"{type(name).__name__} of non-numbers or uneven rows"
            if lut.ndim == 2 and lut.shape[0] >= 2 and lut.shape[1] in (3, 4) and np.all(np.isfinite(lut)) \
                    and lut.min() >= 0.0 and lut.max() <= 1.0:
                return lut[:, :3]
            raise InputError(f"The colour map given as a {what} is not a lookup table.",
                             "Give N >= 2 rows of R, G, B (or R, G, B, A) in 0..1, or a colour-map name.")
        # None.lower() was the message
        raise InputError(f"The colour map {name!r} is not a colour-map name.",
                         f"Give one of {', '.join(COLORMAPS)} or a matplotlib colour-map name (e.g. 'inferno').")
    key = name.lower()
    if key in _CONTROL_POINTS:
        pts = np.array(_CONTROL_POINTS[key], dtype=np.float64)
        x = np.linspace(0.0, 1.0, 256)
        return np.stack([np.interp(x, pts[:, 0], pts[:, c]) for c in (1, 2, 3)], axis=-1)
    try:
        import matplotlib

        # in any case, as the built-in names ('Inferno' had been refused while 'HOT' was taken): matplotlib's
        # own spelling where one of its names matches, the exact one first (none differ only in case in 3.x)
        same = [n for n in matplotlib.colormaps if n.lower() == key]
        cmap = matplotlib.colormaps[name if name in matplotlib.colormaps or len(same) != 1 else same[0]]
    except (ImportError, KeyError) as exc:
        raise InputError(f"Unknown colour map '{name}'.",
                         f"Use one of {', '.join(COLORMAPS)} or a matplotlib colour-map name "
                         "(e.g. 'inferno', 'jet'; any case).") from exc
    return np.asarray(cmap(np.linspace(0.0, 1.0, 256)))[:, :3]


def apply_colormap(unit: np.ndarray, name: str | np.ndarray = "hot") -> np.ndarray:
    """Map values in 0..1 (clipped) to RGB in 0..1 (colour on a new last axis): the nearest of the colour
    map's entries (256 for a name; a lookup table's own number)."""
    lut = colormap_lut(name)
    scaled = np.asarray(unit, dtype=np.float64) * float(len(lut) - 1)  # a fresh array: rounded and clipped in place
    np.round(scaled, out=scaled)
    np.clip(scaled, 0, len(lut) - 1, out=scaled)
    return lut[scaled.astype(np.intp)]


def overlay_arrays(anatomical: np.ndarray, functional: np.ndarray, *, colormap: str | np.ndarray = "hot",
                   opacity: float = 0.5, threshold: float = 0.1,
                   functional_rgb: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Blend a colour-mapped functional image over a grey anatomical one.

    Args:
        anatomical: anatomical image in 0..1 (already windowed).
        functional: functional image in 0..1 (already windowed: 0 = window low, 1 = window high).
        colormap: colour map for the functional image: a name or a lookup table (:func:`colormap_lut`).
        opacity: opacity of the colour where the functional image is at the top of its window
            (0: anatomy only, 1: colour only).
        threshold: functional values (0..1 of the window) at or below which only the anatomy
            shows; above it the colour's opacity ramps up with the value, so faint uptake
            does not hide the anatomy.
        functional_rgb: colours to use instead of the colour map (an already colour-coded
            PET/SPECT slice, RGB in 0..1); ``functional`` then only drives the opacity.

    Returns:
        (rgb in 0..1 with colour on the last axis, weight of the anatomical image per voxel).
    """
    if not 0.0 <= opacity <= 1.0:
        raise InputError(f"Overlay opacity {opacity} is outside 0..1.", "Give an opacity between 0 and 1.")
    if not 0.0 <= threshold < 1.0:
        raise InputError(f"Overlay threshold {threshold} lies outside the functional window.",
                         "Give a threshold inside the window (between its low and high values).")
    f = np.clip(functional, 0.0, 1.0)
    colour = functional_rgb if functional_rgb is not None else apply_colormap(f, colormap)
    # Opacity ramps from 0 at the threshold to ``opacity`` at the top of the window. Computed in
    # place on fresh arrays (the same operations, so the same values): on a 512x512x200 CT the
    # overlay held about 16 float64 volumes at once, now about 9.
    alpha = f
    alpha -= threshold
    alpha /= 1.0 - threshold
    np.clip(alpha, 0.0, 1.0, out=alpha)
    alpha = opacity * alpha
    del f
    rgb = alpha[..., None] * colour  # a + b == b + a in floating point: same sum as before
    del colour
    keep = 1.0 - alpha
    grey = np.clip(anatomical, 0.0, 1.0)
    grey *= keep
    rgb += grey[..., None]
    return rgb, keep


def window_to_unit(values: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """Map ``values`` linearly so that window (lo, hi) becomes 0..1 (not clipped)."""
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise InputError(f"The window ({lo:g}, {hi:g}) is empty.", "Give a window (low, high) with high > low.")
    return (np.asarray(values, dtype=np.float64) - lo) / (hi - lo)
