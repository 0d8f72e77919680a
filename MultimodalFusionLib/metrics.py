"""Quality metrics of fusion and registration.

Fusion metrics are computed the way the CDDFuse repository's ``utils/Evaluator.py`` computes
them (the numbers published for the Harvard MRI-CT/PET/SPECT sets), so ours can stand next to
the published ones:

- all images are 8-bit grey (integer values 0..255 held as floats); see :func:`to_8bit`;
- EN: Shannon entropy (log2) of the fused image's 256-bin histogram;
- SD: standard deviation of the fused image (population, ``np.std``);
- SF: spatial frequency ``sqrt(mean(dx^2) + mean(dy^2))`` of neighbour differences;
- MI: ``MI(F, A) + MI(F, B)``, each the mutual information of the flattened images taken as
  labels (``sklearn.metrics.mutual_info_score``), in nats;
- SCD: ``corr(F - B, A) + corr(F - A, B)`` (sum of the correlations of differences);
- VIF: ``VIF(A, F) + VIF(B, F)``, the pixel-domain multiscale VIF (4 scales, Gaussian windows
  17/9/5/3, noise variance 2; images under 41 pixels a side use the scales that fit, under 17 NaN);
- Qabf: Xydeas-Petrovic edge preservation with Sobel gradients (including Evaluator.py's
  handling of equal gradient magnitudes);
- SSIM: ``SSIM(F, A) + SSIM(F, B)`` with scikit-image's defaults as CDDFuse ran them
  (scikit-image 0.19 on float images: 7x7 uniform window, sample covariance and
  ``data_range = 2``, the float dtype range), which is why it exceeds 1;
- PSNR (not in CDDFuse's table): ``10 log10(255^2 / MSE)`` with MSE the mean of MSE(F, A) and
  MSE(F, B); Evaluator.py's own ``PSNR`` takes ``max(F)^2`` as the peak instead, so it differs.

Single-source values are reported too, labelled: ``MI_A``/``MI_B``/``MI_mean``, the same for
VIF, SSIM and PSNR (``X_mean`` is half the published sum).

3D volumes: EN, SD, MI, SCD and PSNR use every voxel; SF, VIF, Qabf and SSIM are 2D metrics and
are averaged over the acquisition's slices where ``A`` or ``B`` is not constant: the slices across the
voxel axis that deep fusion slices a volume across (:func:`MultimodalFusionLib.fusion.slice_axis`: the
axis whose spacing is more than 1.5x each other axis's, as in a 1 x 1 x 5 mm thick-slice acquisition),
else along the third voxel axis (numpy axis 0, ITK's k). The published metrics are those of 2D images,
acquired slices (CDDFuse scores the Harvard atlas' axial PNGs), so a sagittal thick-slice volume stored
with x as its thick axis is scored in its sagittal slices, not in axial cuts across them, whose
gradients would mix the in-plane and the through-slice ones; the same voxels stored with the thick
axis as x, y or z score the same. The spacing is the first source's (``a``; then ``b``, then the fused
image; arrays have none: axis 0). :func:`scored_slice_axis` names the axis. An isotropic or nearly
isotropic volume is sliced along k, so a sagittally *stored* isotropic one is scored in sagittal
slices (orient the images first, e.g. ``sitk.DICOMOrient(image, "LPS")``, to score axial slices).
A one-slice volume (one axis of length 1, as Slicer and ITK-SNAP save a 2D slice, whichever its axis) is
scored as the 2D image it is.

Parallel slices: on Linux a volume whose scored slices hold at least :data:`PARALLEL_MIN_PIXELS`
pixels has its per-slice metrics computed by a pool of worker processes (scipy's ``convolve2d``,
most of the time, holds the GIL, so threads do not help), one per CPU this process may use, at most
``OMP_NUM_THREADS`` when that is set (:func:`metric_workers`; ``fusion_metrics(..., workers=1)``
turns it off). Each slice is scored by the same function either way and the per-slice values are
averaged in slice order, so the numbers are identical to the last bit. The main thread forks the workers; a
thread other than the main one (a server's job thread: the web app's) that asks for them (``workers=N``) spawns
them (fresh interpreters: forking a process whose other threads may hold locks is not safe); their start (about a
second each, importing numpy, scipy and this module) is paid back well below :data:`PARALLEL_MIN_PIXELS`.

Progress and cancel: :func:`fusion_metrics` takes a progress callback (:mod:`.progress`), reported before each
whole-volume metric and each slice (serially) or every quarter second while the pool scores them, so a Cancel stops
it within a slice (a BraTS 240 x 240 slice: about 0.2 s) rather than at its end (20-40 s for a BraTS volume on one
core); it raises :class:`~.errors.OperationCancelled`, and a pool's workers end at once (killed and reaped: they
write nothing), as they do when this process is killed (a parent-death signal, Linux).
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import threading
import warnings
from typing import Any, Sequence, Union

import numpy as np
import SimpleITK as sitk

from .errors import DimensionMismatch, InputError
from .progress import ProgressCallback, report, scaled

#: A label map, or label maps on one grid holding labels that share voxels (layers, :func:`label_layers`).
LabelMaps = Union[sitk.Image, Sequence[sitk.Image]]

__all__ = [
    "FUSION_METRICS",
    "fusion_metrics",
    "registration_metrics",
    "tre",
    "label_overlap",
    "label_layers",
    "evaluate_registration",
    "check_evaluation_inputs",
    "scored_on_slice_planes",
    "slice_plane_inputs",
    "slice_plane_transform",
    "OVERLAP_MEASURES",
    "to_8bit",
    "entropy",
    "standard_deviation",
    "spatial_frequency",
    "mutual_information",
    "scd",
    "vif",
    "qabf",
    "ssim",
    "psnr",
    "metric_workers",
    "scored_slice_axis",
    "PARALLEL_MIN_PIXELS",
]

#: A volume's 2D metrics go to worker processes only when the slices scored hold at least this many
#: pixels (about 2 s of work, e.g. 16 slices of 512x512 or 62 of 256x256); below it starting the
#: pool costs more than it saves, so 2D images and small volumes stay in this process. Spawned workers (from a
#: thread other than the main one) cost more to start, about 1.1 CPU s each, and pay it back from about 1.4 M
#: pixels (BraTS slices of 240x240 on 2 cores: 24 slices even, 16 slower by 0.4 s, 72 faster by 30 %).
PARALLEL_MIN_PIXELS = 4_000_000

#: The published metrics, in the order of the literature's tables.
FUSION_METRICS = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM")

#: SSIM's data range as CDDFuse ran it (scikit-image 0.19 took it from the float dtype: -1..1).
CDDFUSE_SSIM_DATA_RANGE = 2.0


# ----------------------------------------------------------------------------- 8-bit preparation
def _as_array(image: Any) -> tuple[np.ndarray, bool]:
    """(array, is_uint8) of an sitk.Image, a FusionResult or an array; colour -> luminance."""
    if hasattr(image, "grey_image") and hasattr(image, "method"):  # a FusionResult
        image = image.grey_image
    if isinstance(image, sitk.Image):
        if image.GetNumberOfComponentsPerPixel() > 1:
            from .validation import check_components

            # grey, RGB or RGBA only: a 2-component image (a complex .mha) had been an IndexError from the luminance
            check_components(image, "image given to the metrics")
            was_8bit = image.GetPixelID() == sitk.sitkVectorUInt8
            arr = sitk.GetArrayFromImage(image).astype(np.float64)
            arr = 0.299 * arr[..., 0] + 0.587 * arr[..., 1] + 0.114 * arr[..., 2]
            return arr, was_8bit
        arr = sitk.GetArrayFromImage(image)
    else:
        arr = np.asarray(image)
    if np.iscomplexobj(arr):
        # numpy's cast to float keeps the real part with only a ComplexWarning: scored as an image it is not
        raise InputError("An image given to the metrics has complex pixels.",
                         "Give its magnitude (np.abs, or sitk.ComplexToModulus) or another real image.")
    return arr, arr.dtype == np.uint8


def to_8bit(image: Any, *, fused: bool = False) -> np.ndarray:
    """An image as 8-bit grey values (integers 0..255 in a float64 array), as the metrics need.

    Rule: 8-bit images (UInt8 pixels, or 8-bit colour taken to its rounded luminance) keep
    their values. A fused image (``fused=True``) of floats all within 0..1, not only 0 and 1
    (the 0..1 scale of torch/MONAI outputs and scikit-image's float images), is multiplied by 255
    and rounded, as scikit-image's ``img_as_ubyte`` does; one otherwise inside 0..255 (what
    :func:`MultimodalFusionLib.fusion.fuse` returns) is rounded and clipped. Anything else is
    min-max scaled to 0..255 and rounded, the same scaling ``fuse`` applies to its inputs (its padding, a CT's
    -32768 outside its reconstruction circle, left out of the range and clipped to 0: ``preprocess.unpadded_range``).

    Args:
        image: sitk.Image, FusionResult (its grey image) or numpy array.
        fused: apply the rule for fused images.
    """
    arr, is_8bit = _as_array(image)
    is_float = np.issubdtype(arr.dtype, np.floating)
    arr = arr.astype(np.float64)
    if arr.size == 0:
        raise InputError("An image given to the metrics is empty.", "Give a non-empty image.")
    if not np.all(np.isfinite(arr)):
        raise InputError("An image given to the metrics has NaN or infinite values.",
                         "Replace them before computing metrics.")
    lo, hi = float(arr.min()), float(arr.max())
    if fused and not is_8bit and is_float and lo >= 0.0 and hi <= 1.0 and np.any(arr != np.round(arr)):
        # on the 0..1 scale: as 0..255 it would round to a black and (at most) one-grey image
        return np.round(arr * 255.0)
    if is_8bit or (fused and lo >= -0.5 and hi <= 255.5):
        return np.clip(np.round(arr), 0, 255)
    from .preprocess import unpadded_range

    lo, hi = unpadded_range(arr)  # as fuse: a CT's padding (-32768) left out of the range, clipped to 0
    if hi > lo:
        return np.round(np.clip((arr - lo) / (hi - lo), 0.0, 1.0) * 255.0)
    return np.zeros_like(arr)


# ----------------------------------------------------------------------------- single metrics (2D or nD)
def entropy(f: np.ndarray) -> float:
    """EN: Shannon entropy in bits of the 256-bin histogram of an 8-bit image."""
    v = np.clip(np.round(np.asarray(f)), 0, 255).astype(np.uint8).ravel()
    h = np.bincount(v, minlength=256) / v.size
    nz = h[h > 0]
    return float(-np.sum(nz * np.log2(nz))) + 0.0  # + 0.0: a constant image's -0.0 is 0


def standard_deviation(f: np.ndarray) -> float:
    """SD: population standard deviation."""
    return float(np.std(np.asarray(f, dtype=np.float64)))


def spatial_frequency(f: np.ndarray) -> float:
    """SF of a 2D image: ``sqrt(mean(row differences^2) + mean(column differences^2))``."""
    f = np.asarray(f, dtype=np.float64)
    rf2 = np.mean((f[:, 1:] - f[:, :-1]) ** 2) if f.shape[1] > 1 else 0.0
    cf2 = np.mean((f[1:, :] - f[:-1, :]) ** 2) if f.shape[0] > 1 else 0.0
    return float(np.sqrt(rf2 + cf2))


def mutual_information(x: np.ndarray, y: np.ndarray) -> float:
    """Mutual information (nats) of two 8-bit images taken as label arrays.

    Equal to ``sklearn.metrics.mutual_info_score(x.ravel(), y.ravel())``: the joint
    distribution is the 256x256 contingency table of the value pairs.
    """
    xi = np.clip(np.round(np.asarray(x)), 0, 255).astype(np.int64).ravel()
    yi = np.clip(np.round(np.asarray(y)), 0, 255).astype(np.int64).ravel()
    if xi.size != yi.size:
        raise InputError("Images of different sizes given to mutual information.", "Give images on one grid.")
    joint = np.bincount(xi * 256 + yi, minlength=65536).reshape(256, 256).astype(np.float64)
    return _mi_from_joint(joint)


def _mi_from_joint(joint: np.ndarray) -> float:
    n = joint.sum()
    if n <= 0:
        return 0.0
    pxy = joint / n
    px = pxy.sum(axis=1, keepdims=True)
    py = pxy.sum(axis=0, keepdims=True)
    nz = pxy > 0
    mi = float(np.sum(pxy[nz] * (np.log(pxy[nz]) - np.log((px @ py)[nz]))))
    return max(mi, 0.0)


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    x = x - x.mean()
    y = y - y.mean()
    den = math.sqrt(float(np.sum(x * x)) * float(np.sum(y * y)))
    return float(np.sum(x * y) / den) if den > 0 else float("nan")


def scd(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """SCD: ``corr(F - B, A) + corr(F - A, B)``; NaN when a correlation is undefined (constant)."""
    f, a, b = (np.asarray(v, dtype=np.float64) for v in (f, a, b))
    return _corr(a, f - b) + _corr(b, f - a)


def _gaussian_window(n: int) -> np.ndarray:
    """MATLAB's fspecial('gaussian', n, n / 5)."""
    sd = n / 5.0
    m = (n - 1.0) / 2.0
    y, x = np.ogrid[-m:m + 1, -m:m + 1]
    h = np.exp(-(x * x + y * y) / (2.0 * sd * sd))
    h[h < np.finfo(h.dtype).eps * h.max()] = 0
    return h / h.sum()


def _separable(win: np.ndarray) -> np.ndarray | None:
    """The 1D factor ``k`` with ``outer(k, k) == win`` (Gaussian windows are), or None."""
    k = win.sum(axis=1)
    return k if np.allclose(np.outer(k, k), win, rtol=0, atol=1e-15) else None


def _conv_valid(x: np.ndarray, win: np.ndarray, k: np.ndarray | None) -> np.ndarray:
    """``convolve2d(x, win, 'valid')``; as two 1D passes when the window is separable (the same
    sums in another order: ~8x faster for the 17x17 window, and still exactly 0 on flat regions)."""
    from scipy.signal import convolve2d

    if k is None:
        return convolve2d(x, win, mode="valid")
    return convolve2d(convolve2d(x, k[:, None], mode="valid"), k[None, :], mode="valid")


def vif(ref: np.ndarray, dist: np.ndarray) -> float:
    """Pixel-domain multiscale VIF of ``dist`` with respect to ``ref`` (2D).

    Four scales with Gaussian windows of 17, 9, 5 and 3 pixels (sd = size / 5), 'valid'
    convolutions, down-sampling by 2 between scales, noise variance 2; NaN (constant images)
    counts as 1, as in Evaluator.py. Scales whose window no longer fits are skipped (all four fit
    from 41 pixels a side; Evaluator.py convolves such an image with the larger window instead, so
    on images under 41 pixels the two differ). Under 17 pixels a side no scale fits and the value is
    NaN (undefined: nothing was measured).
    """
    sigma_nsq = 2.0
    eps = 1e-10
    ref = np.asarray(ref, dtype=np.float64)
    dist = np.asarray(dist, dtype=np.float64)
    if min(ref.shape) < 17:  # smaller than the first scale's window: not 0/0 of a constant image, but nothing at all
        return float("nan")
    num = 0.0
    den = 0.0
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1
        win = np.rot90(_gaussian_window(n), 2)
        k = _separable(win)
        if scale > 1:
            if min(ref.shape) < n:
                break
            ref = _conv_valid(ref, win, k)[::2, ::2]
            dist = _conv_valid(dist, win, k)[::2, ::2]
        if min(ref.shape) < n:
            break
        mu1 = _conv_valid(ref, win, k)
        mu2 = _conv_valid(dist, win, k)
        mu1_sq, mu2_sq, mu1_mu2 = mu1 * mu1, mu2 * mu2, mu1 * mu2
        sigma1_sq = _conv_valid(ref * ref, win, k) - mu1_sq
        sigma2_sq = _conv_valid(dist * dist, win, k) - mu2_sq
        sigma12 = _conv_valid(ref * dist, win, k) - mu1_mu2
        sigma1_sq[sigma1_sq < 0] = 0
        sigma2_sq[sigma2_sq < 0] = 0
        g = sigma12 / (sigma1_sq + eps)
        sv_sq = sigma2_sq - g * sigma12
        low1 = sigma1_sq < eps
        g[low1] = 0
        sv_sq[low1] = sigma2_sq[low1]
        sigma1_sq[low1] = 0
        low2 = sigma2_sq < eps
        g[low2] = 0
        sv_sq[low2] = 0
        neg = g < 0
        sv_sq[neg] = sigma2_sq[neg]
        g[neg] = 0
        sv_sq[sv_sq <= eps] = eps
        num += float(np.sum(np.log10(1.0 + g * g * sigma1_sq / (sv_sq + sigma_nsq))))
        den += float(np.sum(np.log10(1.0 + sigma1_sq / sigma_nsq)))
    with np.errstate(invalid="ignore", divide="ignore"):
        value = np.float64(num) / np.float64(den)
    return 1.0 if np.isnan(value) else float(value)


_SOBEL_Y = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float64)
_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)


def _sobel_strength_angle(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from scipy.signal import convolve2d

    sx = convolve2d(img, _SOBEL_X, mode="same")
    sy = convolve2d(img, _SOBEL_Y, mode="same")
    g = np.sqrt(sx * sx + sy * sy)
    angle = np.full(img.shape, math.pi / 2)
    nz = sx != 0
    angle[nz] = np.arctan(sy[nz] / sx[nz])
    return g, angle


def _edge_preservation(a_angle: np.ndarray, a_g: np.ndarray, f_angle: np.ndarray, f_g: np.ndarray) -> np.ndarray:
    tg, kg, dg = 0.9994, -15.0, 0.5
    ta, ka, da = 0.9879, -22.0, 0.8
    gaf = np.zeros_like(a_g)
    gt = a_g > f_g
    gaf[gt] = f_g[gt] / a_g[gt]
    eq = a_g == f_g
    gaf[eq] = f_g[eq]  # as Evaluator.py has it (the textbook value would be 1)
    lt = a_g < f_g
    gaf[lt] = a_g[lt] / f_g[lt]
    aaf = 1.0 - np.abs(a_angle - f_angle) / (math.pi / 2)
    qg = tg / (1.0 + np.exp(kg * (gaf - dg)))
    qa = ta / (1.0 + np.exp(ka * (aaf - da)))
    return qg * qa


def qabf(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Qabf (Xydeas & Petrovic): gradient-weighted edge preservation of A and B in F (2D, Sobel)."""
    f, a, b = (np.asarray(v, dtype=np.float64) for v in (f, a, b))
    ga, aa = _sobel_strength_angle(a)
    gb, ab = _sobel_strength_angle(b)
    gf, af = _sobel_strength_angle(f)
    qaf = _edge_preservation(aa, ga, af, gf)
    qbf = _edge_preservation(ab, gb, af, gf)
    den = float(np.sum(ga + gb))
    if den == 0:
        return float("nan")
    return float(np.sum(qaf * ga + qbf * gb) / den)


#: Side of SSIM's uniform window (scikit-image's default); :func:`fusion_metrics` gives NaN for slices under it.
SSIM_WINDOW = 7


def ssim(x: np.ndarray, y: np.ndarray, *, data_range: float = CDDFUSE_SSIM_DATA_RANGE,
         win_size: int = SSIM_WINDOW) -> float:
    """Mean SSIM (Wang et al. 2004) as scikit-image computes it by default.

    Uniform ``win_size`` window, sample covariance, K1 = 0.01, K2 = 0.03, mean over the map
    without its ``win_size // 2`` border. ``data_range`` defaults to 2, what CDDFuse's call
    used; give 255 for the textbook 8-bit SSIM.
    """
    from scipy.ndimage import uniform_filter

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if min(x.shape) < win_size:
        raise InputError(f"Image of shape {x.shape} is smaller than the SSIM window ({win_size}).",
                         "Give images at least 7 pixels a side.")
    npix = win_size ** x.ndim
    cov_norm = npix / (npix - 1.0)
    ux = uniform_filter(x, size=win_size)
    uy = uniform_filter(y, size=win_size)
    uxx = uniform_filter(x * x, size=win_size)
    uyy = uniform_filter(y * y, size=win_size)
    uxy = uniform_filter(x * y, size=win_size)
    vx = cov_norm * (uxx - ux * ux)
    vy = cov_norm * (uyy - uy * uy)
    vxy = cov_norm * (uxy - ux * uy)
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    pad = (win_size - 1) // 2
    return float(s[tuple(slice(pad, n - pad) for n in s.shape)].mean())


def psnr(f: np.ndarray, ref: np.ndarray, data_range: float = 255.0) -> float:
    """PSNR in dB of ``f`` against ``ref`` (inf when identical)."""
    mse = float(np.mean((np.asarray(f, dtype=np.float64) - np.asarray(ref, dtype=np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(data_range ** 2 / mse))


# ----------------------------------------------------------------------------- fusion metrics
def _array_spacing(image: Any) -> list[float] | None:
    """The voxel spacing of an sitk.Image or FusionResult in its array's axis order (ITK's reversed);
    None for an array, which carries none."""
    if hasattr(image, "grey_image") and hasattr(image, "method"):  # a FusionResult
        image = image.grey_image
    return list(image.GetSpacing())[::-1] if isinstance(image, sitk.Image) else None


def _scoring_axis(*images: Any) -> int:
    """The array axis a volume's 2D metrics slice along: the acquisition's slice axis (deep fusion's
    rule, :func:`MultimodalFusionLib.fusion.slice_axis`) of the first of ``images`` with a spacing."""
    from .fusion import slice_axis

    spacing = next((s for s in map(_array_spacing, images) if s is not None), None)
    return slice_axis(spacing)


def scored_slice_axis(image: Any) -> str | None:
    """The voxel axis ("z", "y" or "x", ITK's) whose slices :func:`fusion_metrics` scores SF, VIF, Qabf and
    SSIM on, for a volume on ``image``'s grid (give the first source, ``a``); None for a 2D image and for a
    one-slice volume (scored as its 2D slice).

    "x" for a sagittal 5 x 1 x 1 mm acquisition stored with x thick, "z" for an axial 1 x 1 x 5 mm one,
    an isotropic volume or an array (which has no spacing).
    """
    shape = _array_shape(image)
    if len(shape) != 3 or _is_one_slice(shape):  # a one-slice volume is scored as the 2D slice it is
        return None
    from .fusion import AXIS_NAMES

    return AXIS_NAMES[_scoring_axis(image)]


def _array_shape(image: Any) -> tuple[int, ...]:
    """The shape of the array the metrics score for ``image`` (a colour image's: its luminance's)."""
    if hasattr(image, "grey_image") and hasattr(image, "method"):  # a FusionResult
        image = image.grey_image
    if isinstance(image, sitk.Image):
        return tuple(image.GetSize())[::-1]
    return tuple(np.shape(image))


def _is_one_slice(shape: Sequence[int]) -> bool:
    """A volume of one slice: exactly one axis of length 1 (e.g. 181 x 217 x 1, or a coronal 24 x 1 x 20)."""
    return len(shape) == 3 and list(shape).count(1) == 1


def _as_2d_if_one_slice(arr: np.ndarray) -> np.ndarray:
    """A one-slice volume's pixels as the 2D slice they are (``io.one_slice_pixels``' orientation); other
    arrays as they are. Cut across its single slice, a coronal or sagittal one had been scored as lines of
    one pixel, which SSIM refused ("smaller than the SSIM window"), while ``fuse`` scores its slice."""
    return np.squeeze(arr, axis=arr.shape.index(1)) if _is_one_slice(arr.shape) else arr


def _slices_with_content(a: np.ndarray, b: np.ndarray) -> list[int]:
    keep = [k for k in range(a.shape[0]) if np.ptp(a[k]) > 0 or np.ptp(b[k]) > 0]
    return keep or list(range(a.shape[0]))


def metric_workers(requested: int | None = None) -> int:
    """Worker processes :func:`fusion_metrics` may use for a volume's slices.

    1 on anything but Linux, whatever was requested (the main thread forks the workers, which is unsafe on
    macOS; spawned ones re-import the caller's main module, which does not work inside an embedding
    application). On Linux ``requested`` when given (at least 1); otherwise the CPUs
    this process may run on (``os.sched_getaffinity``), capped by ``OMP_NUM_THREADS`` when it is set
    to a positive whole number (the usual way to keep a job to fewer cores on a shared machine); at
    most the limit of a :func:`threads.limit_threads` block (``--threads N``), ``requested`` too; and
    1 inside the 3D Slicer application (``slicer.app``), whose process is not this library's to fork,
    or when called from a thread other than the main one, where workers are spawned, not forked
    (:func:`fusion_metrics`), and spawning re-imports the caller's main script: such a caller asks for them
    (``requested``), as the web app's jobs do with the count its server's thread gets.
    """
    if not sys.platform.startswith("linux"):
        return 1
    from .threads import thread_limit

    limit = thread_limit()  # --threads N (threads.limit_threads): N cores in all, worker processes too
    if requested is not None:
        return max(1, min(int(requested), limit or int(requested)))
    if limit is not None and limit <= 1:
        return 1
    if _in_slicer_app():
        # inside the 3D Slicer application (Qt threads, a GUI event loop): forking it is not ours to do
        return 1
    if threading.current_thread() is not threading.main_thread():
        # a job thread of a server or of the caller's own: forking there is not safe (another thread may hold a
        # lock the child would wait on for ever), and spawned workers re-import the caller's main script, which
        # must then be guarded by `if __name__ == "__main__"`: only a caller that asks gets them (the web app does)
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    cap = os.environ.get("OMP_NUM_THREADS", "").strip()
    if cap.isdigit() and int(cap) > 0:
        cpus = min(cpus, int(cap))
    return max(1, min(cpus, limit or cpus))


def _in_slicer_app() -> bool:
    """Whether this runs inside the 3D Slicer application (``slicer.app``), not a Python of its own."""
    return getattr(sys.modules.get("slicer"), "app", None) is not None


def _can_spawn() -> bool:
    """Whether workers can be spawned here: the program multiprocessing starts them with (``sys.executable`` unless
    ``multiprocessing.set_executable`` said otherwise) is a Python interpreter's (python, python3, python3.9), and
    this is not the 3D Slicer application, whose ``sys.executable`` is Slicer itself or its PythonSlicer launcher: a
    spawned worker would start that with ``-c ... --multiprocessing-fork`` (an embedding application's own program
    likewise), and Process.start() can then wait for ever on a child that never reads its start (Slicer/Slicer#7445).
    """
    import multiprocessing.spawn
    import re

    program = os.path.basename(os.fsdecode(multiprocessing.spawn.get_executable() or ""))  # bytes in 3.11+, str in 3.9
    return not _in_slicer_app() and re.fullmatch(r"python[0-9.]*", program) is not None


def _slice_scores(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, ...]:
    """The 2D metrics of one slice: SF, VIF(A, F), VIF(B, F), Qabf, SSIM(F, A), SSIM(F, B)."""
    # contiguous (a copy only for a slice across the stored axes): the same values in the same memory
    # order as that slice of the volume stored with its slice axis first, so the same sums to the last bit
    f, a, b = (np.ascontiguousarray(v) for v in (f, a, b))
    # under SSIM's 7-pixel window there is no SSIM: NaN (n/a), as VIF under its 17-pixel one. `run` on a 64x6 pair
    # had registered and fused it, then stopped in its metrics ("smaller than the SSIM window (7)")
    small = min(f.shape) < SSIM_WINDOW
    return (spatial_frequency(f), vif(a, f), vif(b, f), qabf(f, a, b), float("nan") if small else ssim(f, a),
            float("nan") if small else ssim(f, b))


#: 8-bit stacks of the fusion_metrics calls running a pool, by call: forked workers inherit them,
#: so a task names only its slices (no copies through pipes; the very same float64 values)
_SHARED: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
_TOKENS = itertools.count()

def _recording_context(start: str) -> tuple[Any, list[Any]]:
    """The multiprocessing context of ``start`` ("fork", "spawn") and the list of every process it makes: a pool's
    workers (``ProcessPoolExecutor`` makes each through its ``mp_context.Process``), known from their start, so
    :func:`_end_workers` ends one still starting (importing) as well, and the pool's private process table is not
    read."""
    import multiprocessing

    base = multiprocessing.get_context(start)
    made: list[Any] = []

    class Context(type(base)):  # type: ignore[misc, valid-type]
        def Process(self, *args: Any, **kwargs: Any) -> Any:  # noqa: N802 (multiprocessing's name)
            process = base.Process(*args, **kwargs)
            made.append(process)
            return process

    return Context(), made


def _end_workers(pool: Any, processes: list[Any]) -> None:
    """End a pool's workers now and reap them: the slices they score are no longer wanted (a cancel, an error), and
    they write nothing but their scores to this process. ``shutdown(wait=False)`` alone had left them scoring the
    chunks they had taken (a worker, its chunk and the next queued), for seconds after a Cancel, and a script or
    the CLI waited for them at its exit.

    The workers are the ``processes`` the pool's context made (:func:`_recording_context`), killed whether still
    starting or scoring, where they had been found by the pids they wrote once started (a cancel during a spawned
    worker's start had waited up to 10 s for it, then for the rest of its start). Only a worker not yet ended is
    signalled, through its own process object (``exitcode`` reaps one that has ended), so a pid a reaped worker had,
    given since to another process, is never signalled."""
    for process in processes:
        if process.pid is not None and process.exitcode is None:  # started (a failed start has no pid), not ended
            process.kill()
    pool.shutdown(wait=True, cancel_futures=True)  # the pool's own thread joins (reaps) them


def _slice_message(scored: int, total: int) -> str:
    """The progress message of a volume's slices, ``scored`` of ``total`` done: "fusion metrics: slice 4 of 155" (the
    next slice; a pool scores it and the following ones), the same words serially and from a pool, where the pool's
    had said "3 of 155 slices"."""
    return f"fusion metrics: slice {scored + 1} of {total}"


def _chunk_scores(stacks: int | tuple[np.ndarray, np.ndarray, np.ndarray], slices: list[int]
                  ) -> list[tuple[float, ...]]:
    """:func:`_slice_scores` of some slices of the stacks a forked worker inherited (``stacks``: their token in
    ``_SHARED``) or of those sent to a spawned one (``stacks``: the span of the volume holding ``slices``)."""
    f8, a8, b8 = _SHARED[stacks] if isinstance(stacks, int) else stacks
    return [_slice_scores(f8[k], a8[k], b8[k]) for k in slices]


def _parallel_slice_scores(f8: np.ndarray, a8: np.ndarray, b8: np.ndarray, keep: list[int],
                           workers: int, serial: Any, progress: ProgressCallback | None = None,
                           start: str = "fork") -> list[tuple[float, ...]] | None:
    """Per-slice scores of ``keep`` from a pool of ``workers`` processes, in slice order, while this process runs
    ``serial()`` (the whole-volume metrics); None when no pool could run. The workers are forked (``start``
    "fork": they inherit the stacks) or spawned ("spawn": fresh interpreters, sent each chunk's span of the stacks),
    the way a thread other than the main one starts them (:func:`fusion_metrics`): forking a process whose other
    threads may hold locks is not safe, spawning is. ``progress`` (0..1: the slices scored) is reported every quarter
    second while the pool runs; a cancel (OperationCancelled) or an error ends the workers at once
    (:func:`_end_workers`), none left running."""
    import multiprocessing
    import signal
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    from . import pool_worker

    if start not in multiprocessing.get_all_start_methods():
        return None
    n_chunks = min(len(keep), 4 * workers)  # a few chunks per worker even out slices of unequal cost
    bounds = np.linspace(0, len(keep), n_chunks + 1).astype(int)
    chunks = [keep[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]  # in slice order
    token = next(_TOKENS)
    _SHARED[token] = (f8, a8, b8)  # before the workers fork (all at the first submit with "fork")
    context, processes = _recording_context(start)
    pool, futures = None, {}
    try:
        # a Ctrl-C to the terminal's group reaches the workers too, which ignore it once started (pool_worker.start): it
        # stays blocked for them until then (the mask is inherited), where a spawned one, a second importing, had
        # printed its KeyboardInterrupt; this thread gets it after (another thread takes it meanwhile)
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            with warnings.catch_warnings():
                # Python >= 3.12 warns on fork() in a multi-threaded process; forked workers run only the
                # numpy/scipy code of this module, which needs none of the locks other threads may hold
                warnings.simplefilter("ignore", DeprecationWarning)
                pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=pool_worker.start,
                                           initargs=(os.getpid(),))
                for chunk in chunks:  # a spawned worker's chunk: views of its span, copied as they are sent
                    span = slice(chunk[0], chunk[-1] + 1)
                    args = ((token, chunk) if start == "fork" else
                            ((f8[span], a8[span], b8[span]), [k - chunk[0] for k in chunk]))
                    futures[pool.submit(_chunk_scores, *args)] = len(chunk)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        serial()
        pending, scored = set(futures), 0
        while pending:
            report(progress, scored / len(keep), _slice_message(scored, len(keep)))
            done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
            scored += sum(futures[fut] for fut in done)
        scores = [score for fut in futures for score in fut.result()]
        pool.shutdown(wait=True)
        pool = None
        return scores
    except (OSError, BrokenProcessPool):  # no processes to be had (limits, a worker killed): serially
        return None
    finally:
        if pool is not None:  # after a cancel or an error: the workers end now, reaped, their chunks dropped
            _end_workers(pool, processes)
        del _SHARED[token]


def fusion_metrics(fused: Any, a: Any, b: Any, *, workers: int | None = None,
                   progress: ProgressCallback | None = None) -> dict[str, float]:
    """Fusion quality of ``fused`` from sources ``a`` and ``b``, computed as CDDFuse does.

    Args:
        fused: the fused image (sitk.Image, FusionResult — its grey image — or array); an
            RGB fused image counts by its luminance.
        a: first source (e.g. the anatomical MR); colour is taken to its luminance.
        b: second source (e.g. CT, or the PET/SPECT luminance Y).
        workers: processes for a volume's per-slice metrics (default :func:`metric_workers`: the
            CPUs available, at most ``OMP_NUM_THREADS``; 1 from a thread other than the main one; 1: this
            process only; always 1 outside Linux). Used only for volumes with at least
            :data:`PARALLEL_MIN_PIXELS` pixels in the slices scored; the numbers are the same either way.
            A thread other than the main one spawns its workers, the main thread forks them.
        progress: called before each whole-volume metric and each slice ("fusion metrics: slice 3 of 155"), or
            every quarter second while a pool scores the slices; returning False (or raising
            OperationCancelled) stops the metrics there.

    A volume's 2D metrics (SF, VIF, Qabf, SSIM) are means over its acquisition's slices, those across
    the axis :func:`scored_slice_axis` names (the module docstring has the rule). A one-slice volume (one
    axis of length 1, whichever: an axial 181 x 217 x 1, a coronal 24 x 1 x 20) is scored as its 2D slice.
    Slices under SSIM's 7-pixel window (:data:`SSIM_WINDOW`) have SSIM NaN, as those under 17 pixels have VIF NaN.

    Returns:
        dict: EN, SD, SF, MI, SCD, VIF, Qabf, SSIM, PSNR, then the labelled single-source values
        MI_A, MI_B, MI_mean, VIF_A, VIF_B, VIF_mean, SSIM_A, SSIM_B, SSIM_mean, PSNR_A, PSNR_B.

    Raises:
        InputError: the three images differ in shape, or hold NaNs.
        OperationCancelled: ``progress`` asked to stop.
    """
    report(progress, 0.0, "fusion metrics")
    # a one-slice volume (any slice axis, as Slicer and ITK-SNAP save a 2D slice) is scored as its 2D slice, as
    # `fuse` scores it (and a 2D image, e.g. a fused PNG, against one-slice volumes of the same pixels)
    f8 = _as_2d_if_one_slice(to_8bit(fused, fused=True))
    a8 = _as_2d_if_one_slice(to_8bit(a))
    b8 = _as_2d_if_one_slice(to_8bit(b))
    if not f8.shape == a8.shape == b8.shape:
        raise InputError(f"The fused image and its sources differ in shape ({f8.shape}, {a8.shape}, {b8.shape}).",
                         "Give the fused image and the two sources on one grid (resample the moving image).")
    if f8.ndim not in (2, 3):
        raise InputError(f"Metrics need 2D or 3D images (got {f8.ndim}D).", "Give 2D slices or 3D volumes.")
    out: dict[str, float] = {}

    def whole_volume(progress: ProgressCallback | None) -> None:  # the metrics of all voxels at once
        steps = (("EN", lambda: entropy(f8)), ("SD", lambda: standard_deviation(f8)),
                 ("MI_A", lambda: mutual_information(f8, a8)), ("MI_B", lambda: mutual_information(f8, b8)),
                 ("SCD", lambda: scd(f8, a8, b8)))
        for i, (name, metric) in enumerate(steps):
            report(progress, i / len(steps), f"fusion metrics: {name}")
            out[name] = metric()
        mse = (np.mean((f8 - a8) ** 2) + np.mean((f8 - b8) ** 2)) / 2.0
        out["PSNR"] = float("inf") if mse == 0 else float(10.0 * np.log10(255.0 ** 2 / mse))

    # a volume's slices: views with the acquisition's slice axis first (the arrays themselves when it is
    # axis 0); the whole-volume metrics above take the arrays as they are
    axis = _scoring_axis(a, b, fused) if f8.ndim == 3 else 0
    sf8, sa8, sb8 = (np.moveaxis(v, axis, 0) for v in (f8, a8, b8)) if axis else (f8, a8, b8)
    scored = f8.shape if f8.ndim == 2 else sf8.shape[1:]
    if min(scored) < 2:  # SSIM under its window is NaN (as VIF under its), but a line of pixels is no image
        raise InputError(f"The images {'are' if f8.ndim == 2 else 'are scored in slices of'} "
                         f"{'x'.join(map(str, scored[::-1]))} pixels, a line: the fusion metrics need 2D images.",
                         "Score 2D images or volumes whose slices have at least 2 pixels a side (SSIM needs 7, "
                         "VIF 17; under those they are n/a).")
    keep = [0] if f8.ndim == 2 else _slices_with_content(sa8, sb8)
    scores = None
    n_workers = metric_workers(workers) if f8.ndim == 3 else 1
    pixels = len(keep) * (sf8[0].size if f8.ndim == 3 else f8.size)
    # the main thread forks its workers; another (a server's job thread: the web app's) spawns them, which costs
    # more (a fresh interpreter each, about a second to import numpy, scipy and this module)
    start = "fork" if threading.current_thread() is threading.main_thread() else "spawn"
    if start == "spawn" and not _can_spawn():  # inside Slicer or an embedding program: serially, the same numbers
        n_workers = 1
    if n_workers > 1 and len(keep) > 1 and pixels >= PARALLEL_MIN_PIXELS:
        # a cancel during the 8-bit copies above (0.4 s on BraTS) is taken before any worker starts, not after
        report(progress, 0.0, "fusion metrics")
        scores = _parallel_slice_scores(sf8, sa8, sb8, keep, min(n_workers, len(keep)),
                                        lambda: whole_volume(scaled(progress, 0.0, 0.1)), scaled(progress, 0.1, 1.0),
                                        start)
    if scores is None:
        whole_volume(scaled(progress, 0.0, 0.1))
        scores = []
        for i, k in enumerate(keep):
            report(progress, 0.1 + 0.9 * i / len(keep), _slice_message(i, len(keep)))
            scores.append(_slice_scores(f8, a8, b8) if f8.ndim == 2 else _slice_scores(sf8[k], sa8[k], sb8[k]))
    sf, vif_a, vif_b, q, ssim_a, ssim_b = (list(column) for column in zip(*scores))
    # each mean over the slices in slice order, as a serial loop takes them (same numbers to the last bit)
    out["SF"] = float(np.mean(sf))
    mi_a, mi_b = out.pop("MI_A"), out.pop("MI_B")
    out["MI"] = mi_a + mi_b
    vif_a = float(np.mean(vif_a))
    vif_b = float(np.mean(vif_b))
    out["VIF"] = vif_a + vif_b
    # NaN when no source has an edge (nothing to preserve): undefined, reported as such without a warning
    q_values = [v for v in q if np.isfinite(v)]
    out["Qabf"] = float(np.mean(q_values)) if q_values else float("nan")
    ssim_a = float(np.mean(ssim_a))
    ssim_b = float(np.mean(ssim_b))
    out["SSIM"] = ssim_a + ssim_b
    psnr_value = out.pop("PSNR")
    out = {k: out[k] for k in ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM")}
    out["PSNR"] = psnr_value
    out.update({"MI_A": mi_a, "MI_B": mi_b, "MI_mean": out["MI"] / 2.0,
                "VIF_A": vif_a, "VIF_B": vif_b, "VIF_mean": out["VIF"] / 2.0,
                "SSIM_A": ssim_a, "SSIM_B": ssim_b, "SSIM_mean": out["SSIM"] / 2.0,
                "PSNR_A": psnr(f8, a8), "PSNR_B": psnr(f8, b8)})
    return {k: float(v) for k, v in out.items()}


# ----------------------------------------------------------------------------- registration metrics
def registration_metrics(fixed: sitk.Image, moving_on_fixed_grid: sitk.Image, mask: sitk.Image | None = None,
                         *, bins: int = 64) -> dict[str, float]:
    """Similarity of a fixed image and a moving image already resampled onto its grid.

    Call it with the moving image resampled by the identity ("before") and by the registration
    transform ("after"): MI and normalised correlation should rise.

    Args:
        fixed: fixed image.
        moving_on_fixed_grid: moving image on the fixed grid.
        mask: optional mask on the fixed grid restricting the voxels compared.
        bins: histogram bins per image for MI.

    Returns:
        dict: "MI" (nats, ``bins``-bin joint histogram), "NMI" ((H(A) + H(B)) / H(A, B), 1..2),
        "NCC" (Pearson correlation, -1..1), "voxels" (how many were compared).
    """
    from .fusion import check_same_grid

    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
        raise InputError(f"bins must be a whole number of at least 2 (got {bins!r}).",
                         "Give e.g. bins=64 (the default) or 32.")
    bins = int(bins)
    check_same_grid(fixed, moving_on_fixed_grid, "fixed image", "resampled moving image")
    for image, name in ((fixed, "fixed image"), (moving_on_fixed_grid, "resampled moving image")):
        if image.GetNumberOfComponentsPerPixel() != 1:
            # the grids match, so numpy had broadcast 3 values per voxel against 1 (a ValueError traceback)
            raise InputError(f"The {name} has {image.GetNumberOfComponentsPerPixel()} components per pixel; the "
                             "alignment metrics compare grey values.",
                             "Give its grey (luminance) image (io.to_luminance).")
    f = sitk.GetArrayFromImage(fixed).astype(np.float64).ravel()
    m = sitk.GetArrayFromImage(moving_on_fixed_grid).astype(np.float64).ravel()
    if mask is not None:
        from .validation import check_mask

        keep = sitk.GetArrayFromImage(check_mask(mask, fixed, "fixed mask", "fixed image")).ravel().astype(bool)
        f, m = f[keep], m[keep]
    for values, name in ((f, "fixed image"), (m, "resampled moving image")):
        # a NaN in the fixed image had made every histogram label 0 (MI 0, NMI 1: 'no information shared'),
        # one in the moving image a ValueError from numpy's bincount
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise InputError(f"The {name} has {bad} NaN or infinite voxel(s){' in the mask' if mask is not None else ''}.",
                             "Replace them (e.g. sitk.Mask, or resample with a finite default value), or give a "
                             "mask that leaves them out.")
    if f.size < 2:
        raise InputError("Fewer than two voxels to compare.", "Give a larger mask.")

    def labels(v: np.ndarray) -> np.ndarray:
        lo, hi = float(v.min()), float(v.max())
        if hi <= lo:
            return np.zeros(v.shape, np.int64)
        return np.minimum(((v - lo) / (hi - lo) * bins).astype(np.int64), bins - 1)

    joint = np.bincount(labels(f) * bins + labels(m), minlength=bins * bins).reshape(bins, bins).astype(np.float64)
    p = joint / joint.sum()

    def h(q: np.ndarray) -> float:
        q = q[q > 0]
        return float(-np.sum(q * np.log(q)))

    h_joint = h(p.ravel())
    nmi = (h(p.sum(axis=1)) + h(p.sum(axis=0))) / h_joint if h_joint > 0 else float("nan")
    return {"MI": _mi_from_joint(joint), "NMI": nmi, "NCC": _corr(f, m), "voxels": float(f.size)}


def reached_voxels(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform | None = None,
                   mask: sitk.Image | None = None) -> sitk.Image:
    """The fixed voxels an alignment metric compares: 1 (UInt8, on the fixed grid) where ``transform`` (fixed ->
    moving points, as :func:`preprocess.resample` takes it; None: the identity) maps the voxel's point inside the
    moving image, within ``mask`` (on the fixed grid) where given.

    Inside is ITK's test, the one its resampler takes a moving value by (else the default value, 0) and its
    metrics count a point as valid by (ANTs' too): a continuous index within [-0.5, size - 0.5) on every axis. It is
    found by resampling a ones-image of the moving grid through :func:`preprocess.resample` itself, nearest
    neighbour, default 0, so a one-slice volume under a 2D transform is taken as its slice, as its values are.
    """
    from .preprocess import resample
    from .validation import _everywhere, check_mask

    reached = resample(_everywhere(moving), fixed, transform, "nearest", default_value=0.0)
    if mask is not None:
        reached = sitk.And(reached, check_mask(mask, fixed, "fixed mask", "fixed image"))
    return reached


def alignment_metrics(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform | None = None,
                      mask: sitk.Image | None = None, *, resampled: sitk.Image | None = None,
                      bins: int = 64, apart_ok: bool = False) -> dict[str, float]:
    """:func:`registration_metrics` of ``moving`` resampled linearly onto the fixed grid through ``transform``
    (fixed -> moving points; None: the identity, the images as their headers place them), over the fixed voxels
    whose points it maps inside the moving image (:func:`reached_voxels`), within ``mask`` where given, as ITK's and
    ANTs' metrics count them. The voxels beyond the moving image, which resampling fills with 0, had been compared
    too: against a background that is not 0 (z-scored MR, a CT's air at -1000) they lowered the score of the
    transform that moves the image furthest (a correct registration of BraTS pat0001's T1c, moved 10 degrees and
    (10, -8, 5) mm, scored NCC 0.773 before and 0.665 after; 0.932 over the voxels it reaches).

    Where the moving image is already resampled (through ``transform``, linearly, onto the fixed grid), give it as
    ``resampled``; it is not resampled again. "voxels" in the result says how many were compared: before and after a
    registration they are other voxels (each state's overlap). ``apart_ok``: fewer than two such voxels give MI, NMI
    and NCC NaN (nothing compared) over their "voxels" count, as :func:`alignment_before_after` scores them, not an
    error (a registration already finished, whose outputs the caller still makes).

    Raises:
        InputError: fewer than two fixed voxels (in the mask) map inside the moving image (unless ``apart_ok``), or
            what :func:`registration_metrics` refuses.
    """
    return _alignment(fixed, moving, transform, mask, resampled, bins, apart_ok=apart_ok)


def alignment_before_after(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform | None,
                           mask: sitk.Image | None = None, *, before: sitk.Image | None = None,
                           after: sitk.Image | None = None, bins: int = 64) -> dict[str, dict[str, float]]:
    """{"before": ..., "after": ...}: :func:`alignment_metrics` as the images lie (the identity) and through
    ``transform`` (the registration's, fixed -> moving points; None: the identity), each over the fixed voxels that
    state maps inside the moving image (within ``mask``); ``before``, ``after``: the moving image already resampled
    so, where the caller has it. Images that start apart (a registration started from their centres, with no fixed
    voxel inside the moving image as they lie) give "before" MI, NMI and NCC NaN (nothing to compare) and their
    "voxels" count, not an error; so does an "after" through a transform that maps fewer than two fixed voxels
    inside the moving image (a genuinely 3D transform of two one-slice volumes, a transform given the wrong way
    round), so that what else is scored with it (label maps, landmarks) is still reported: the caller says so
    (:func:`evaluate_registration`'s notes, the report's card). :func:`alignment_metrics` of one state refuses it."""
    return {"before": _alignment(fixed, moving, None, mask, before, bins, apart_ok=True),
            "after": _alignment(fixed, moving, transform, mask, after, bins, apart_ok=True)}


def _alignment(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform | None, mask: sitk.Image | None,
               resampled: sitk.Image | None, bins: int, apart_ok: bool) -> dict[str, float]:
    """:func:`alignment_metrics`; ``apart_ok``: fewer than two voxels to compare give NaN scores, not an error."""
    from .preprocess import resample

    reached = reached_voxels(fixed, moving, transform, mask)
    count = int(np.count_nonzero(sitk.GetArrayViewFromImage(reached)))
    if count < 2:
        if apart_ok:
            return {"MI": float("nan"), "NMI": float("nan"), "NCC": float("nan"), "voxels": float(count)}
        raise _too_few_compared(count, transform, mask is not None)
    if resampled is None:
        resampled = resample(moving, fixed, transform, "linear")
    return registration_metrics(fixed, resampled, reached, bins=bins)


def _too_few_compared(count: int, transform: sitk.Transform | None, masked: bool = False) -> InputError:
    """The refusal of images that share fewer than two voxels in one state (as they lie, or through ``transform``):
    :func:`alignment_metrics`' and, where nothing else is scored, :func:`evaluate_registration`'s."""
    how = "as the images lie (no transform)" if transform is None else "through the transform"
    within = " within the fixed mask" if masked else ""
    return InputError(f"The moving image, {how}, covers {count} of the fixed image's voxels{within}: fewer than "
                      "two to compare.",
                      "Give the transform that maps the fixed image into the moving one (fixed -> moving points, "
                      "as mmfusion register writes it; --transform DIR/transform.tfm), images that overlap (mmfusion "
                      "info shows their origins), or a mask over their overlap.")


def tre(fixed_points: Sequence[Sequence[float]], moving_points: Sequence[Sequence[float]],
        transform: sitk.Transform | None) -> dict[str, Any]:
    """Target registration error from corresponding landmarks (physical coordinates, mm).

    ITK convention: ``transform`` maps fixed-space points to moving space, so the error of
    landmark i is ``|transform(fixed_i) - moving_i|``, measured in the moving image's space (for a
    rigid transform the same as in the fixed space). None means the identity (error before
    registration). Points are ITK's physical coordinates, LPS, in mm. 3D Slicer shows points in RAS
    (its Markups module's table, ``getNthControlPointPosition``): negate their x and y first. Its markup files
    say which they hold (``.mrk.json``'s ``coordinateSystem``, ``.fcsv``'s ``# CoordinateSystem`` line;
    LPS since Slicer 4.11). RAS points given as LPS ones give a wrong error for any transform
    with a rotation or a translation in x or y.

    Returns:
        dict: mean, median, max, std (mm), n, per_point (list of mm).

    Raises:
        InputError: the lists differ in length, are empty, or points have the wrong dimension.
    """
    try:
        fp = np.asarray(fixed_points, dtype=np.float64)
        mp = np.asarray(moving_points, dtype=np.float64)
    except (TypeError, ValueError) as exc:  # text, or rows of unequal length
        raise InputError(f"The landmarks are not lists of numbers ({exc}).",
                         "Give two lists of points, each point its coordinates in mm.") from None
    if fp.ndim != 2 or fp.shape != mp.shape or fp.shape[0] == 0:
        raise InputError(f"Landmark lists do not correspond ({fp.shape} fixed vs {mp.shape} moving points).",
                         "Give two equally long lists of points, one per landmark, in physical (mm) coordinates.")
    if not (np.all(np.isfinite(fp)) and np.all(np.isfinite(mp))):
        # a NaN coordinate (an unplaced markup) had made the mean, median, max and std NaN without a word
        rows = sorted({int(i) for i in np.nonzero(~np.isfinite(fp).all(axis=1) | ~np.isfinite(mp).all(axis=1))[0]})
        which = f"Landmarks {', '.join(str(i) for i in rows)} (counted from 0) have" if len(rows) > 1 else \
            f"Landmark {rows[0]} (counted from 0) has"
        raise InputError(f"{which} NaN or infinite coordinates.",
                         "Give every landmark a position (an unplaced Slicer markup has none), or leave it out "
                         "of both lists.")
    if transform is not None and transform.GetDimension() != fp.shape[1]:
        raise InputError(f"The transform is {transform.GetDimension()}D but the landmarks are {fp.shape[1]}D.",
                         "Give landmarks with one coordinate per image axis.")
    mapped = fp if transform is None else np.array([transform.TransformPoint([float(c) for c in p]) for p in fp])
    d = np.linalg.norm(mapped - mp, axis=1)
    return {"mean": float(d.mean()), "median": float(np.median(d)), "max": float(d.max()),
            "std": float(d.std()), "n": int(d.size), "per_point": [float(v) for v in d]}


# ----------------------------------------------------------------------------- label overlap (segmentations)
#: The per-label measures of :func:`label_overlap`, in the order printed.
OVERLAP_MEASURES = ("dice", "jaccard", "hd95", "hausdorff", "mean_surface_distance")


def _label_array(image: sitk.Image, name: str, *, copy: bool = True) -> np.ndarray:
    """The voxels of a label image as integers, refusing what holds no labels. ``copy=False``: integer voxels as a
    view of the image's buffer, for a caller that holds the image as long as it reads them (10 layers of 256^3 a
    side, copied up to four times over, had made evaluate_registration's peak memory +2026 MB, now +832 MB)."""
    if not isinstance(image, sitk.Image):
        raise InputError(f"The {name} is a {type(image).__name__}, not an image.", "Give a SimpleITK image of labels.")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"The {name} has {image.GetNumberOfComponentsPerPixel()} components per voxel; labels are "
                         "one whole number a voxel.", "Give a label map (a segmentation exported as a labelmap).")
    arr = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(arr.dtype, np.integer):
        # a copy by default: callers pass temporaries (a label map resampled onto a box), whose voxels a view would
        # read after the image was freed (the moving labels outside the field of view were counted as 0 now and then)
        return np.array(arr) if copy else arr
    if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
        raise InputError(f"The {name} holds values that are not whole numbers: it is no label map (a grey image, or "
                         "labels resampled with linear interpolation).",
                         "Give the label map itself, resampled (if at all) with nearest-neighbour interpolation.")
    # beyond 2**24 (float32) or 2**53 (float64) a float no longer holds every whole number (neighbouring labels
    # merge), and beyond int64 the cast below wraps (1e20 became -9223372036854775808)
    exact = 2.0 ** (np.finfo(arr.dtype).nmant + 1)
    if arr.size and float(np.abs(arr).max()) > exact:
        raise InputError(f"The {name} is of type {arr.dtype} and holds labels up to {float(np.abs(arr).max()):g}, past "
                         f"{exact:.0f}, beyond which {arr.dtype} cannot hold every whole number (labels may have "
                         "merged).", "Save the label map with an integer pixel type (uint16, int32, ...).")
    return arr.astype(np.int64)


def label_layers(labels: Any) -> list[Any]:
    """The layers of a label source: ``[labels]`` for one label map, the list itself for label maps given as layers.

    Labels that share voxels (3D Slicer's overlapping segments, saved in layers of a ``.seg.nrrd``) cannot be one
    label map, which holds one label a voxel: they are given as a list (or tuple) of label maps on one grid, each a
    layer holding some of the labels, as :func:`segmentations.label_maps_for_evaluation` and
    :func:`mrml.segments_label_map` make them. A label's voxels are those that hold it in any layer, so each label is
    scored as its own binary mask (as Slicer's Segment Comparison scores a segment) wherever another one lies."""
    return list(labels) if isinstance(labels, (list, tuple)) else [labels]


def _layer_arrays(labels: Any, name: str, *, copy: bool = True) -> list[np.ndarray]:
    """The voxels of a label map, or of each of its layers (:func:`label_layers`), as integer arrays: layers of
    another grid than the first, and a list of none, refused. ``copy=False``: views where the voxels are integers
    (:func:`_label_array`), for a caller that holds the images while it reads them."""
    from .fusion import check_same_grid

    layers = label_layers(labels)
    if not layers:
        raise InputError(f"The {name} is an empty list.", "Give a label map, or its layers (label maps on one grid).")
    arrays = [_label_array(layer, name, copy=copy) for layer in layers]
    for i, layer in enumerate(layers[1:], start=2):
        check_same_grid(layers[0], layer, f"{name} (layer 1)", f"{name} (layer {i})")
    return arrays


def _labels_by_layer(arrays: Sequence[np.ndarray]) -> dict[int, tuple[int, ...]]:
    """The non-zero labels of a label map's layers (:func:`_layer_arrays`), each with the layers that hold it (their
    indices): found once, so that a label is looked for in its own layers only (:func:`_label_voxels`). Resampling
    (nearest neighbour) and padding with 0 put no label into a layer, so it holds for a layer taken onto another
    grid too."""
    where: dict[int, list[int]] = {}
    for i, arr in enumerate(arrays):
        for value in np.unique(arr).tolist():
            if value != 0:
                where.setdefault(int(value), []).append(i)
    return {label: tuple(layers) for label, layers in where.items()}


def _label_voxels(arrays: Sequence[np.ndarray], label: int,
                  where: dict[int, tuple[int, ...]] | None = None) -> np.ndarray:
    """Where a label lies in a label map's layers (:func:`_layer_arrays`): the voxels holding it in any of them, or
    in those ``where`` (:func:`_labels_by_layer`) names: comparing every layer for every label had taken 6 s of the
    16 s of scoring 10 labels in 10 layers of 256^3, each label in one of them."""
    if len(arrays) == 1:
        return arrays[0] == label
    held = range(len(arrays)) if where is None else where.get(int(label), ())
    if not held:
        return np.zeros(arrays[0].shape, dtype=bool)
    voxels = arrays[held[0]] == label
    for i in held[1:]:
        voxels |= arrays[i] == label
    return voxels


def _shared_voxels_notes(arrays: Sequence[np.ndarray], scored: Sequence[int], side: str,
                         where: dict[int, tuple[int, ...]]) -> list[str]:
    """Notes naming the scored labels that share voxels in a label map's layers (:func:`_layer_arrays`), and how
    many: each is scored as its own binary mask with those voxels, as Slicer's Segment Comparison scores a segment,
    so its Dice and the mean are not those of the segments without their overlap. None for one label map, nor
    where the scored labels lie in one layer.

    A pair's count is the number of (voxel, pair of layers) where one layer holds one label and the other the other
    (a label held twice at a voxel, in two layers, counts it twice). ``where``: the labels' layers
    (:func:`_labels_by_layer`)."""
    wanted = set(int(v) for v in scored)
    # one column per (layer, scored label in it), known from ``where`` before any voxel is read: scored labels in
    # one layer cannot share a voxel, and the full-grid pass below is not made for them
    columns = sorted((i, label) for label, layers in where.items() if label in wanted for i in layers)
    if len({layer for layer, _ in columns}) < 2:
        return []
    # only the voxels of two or more layers can be shared: found in one pass, each layer's labels read there
    depth = np.zeros(arrays[0].shape, dtype=np.uint8 if len(arrays) < 256 else np.int64)
    for arr in arrays:
        depth += arr != 0
    several = np.flatnonzero(depth >= 2)
    del depth
    held = [arr.reshape(-1)[several] for arr in arrays]
    # the voxels two columns share, for every pair of columns at once, are the product of their indicators (exact:
    # whole numbers in float64), whatever the labels' values (a bincount per pair of layers had taken 0.6 s a side
    # of 10 nested 256^3 layers, now 0.15-0.3 s, and labels past 1023, as FreeSurfer's are, a structured np.unique
    # per pair: 15.0 s a side, now 0.29 s)
    shared: dict[tuple[int, int], int] = {}
    count = np.zeros((len(columns), len(columns)))
    step = max(1, (1 << 23) // len(columns))  # 64 MB of indicators at a time
    for begin in range(0, several.size, step):
        indicators = np.empty((len(columns), min(step, several.size - begin)))
        for c, (layer, label) in enumerate(columns):
            np.equal(held[layer][begin:begin + step], label, out=indicators[c], casting="unsafe")
        count += indicators @ indicators.T
    for a, (i, p) in enumerate(columns):
        for b in range(a + 1, len(columns)):
            j, q = columns[b]
            if i != j and p != q and count[a, b]:
                key = (min(p, q), max(p, q))
                shared[key] = shared.get(key, 0) + int(count[a, b])
    return [f"label {p} and label {q} share {count} voxels of the {side} label map (overlapping segments): each is "
            "scored as its own binary mask with those voxels, as Slicer's Segment Comparison scores a segment, and "
            "the mean counts them in each" for (p, q), count in sorted(shared.items())]


def _surface_points(mask: np.ndarray, lo: np.ndarray, image: sitk.Image) -> np.ndarray:
    """Physical (LPS mm) centres of the surface voxels of ``mask`` (a crop of the image starting at numpy index
    ``lo``): the voxels of the mask with a face neighbour outside it or on the image's border, as MONAI's
    ``get_mask_edges`` finds them (the mask minus its erosion by the face-connected cross).

    An axis along which the image has one voxel (the slice axis of a one-slice volume: a 2D slice saved as a volume)
    has no neighbours: the surface is taken in the slice's plane, the 2D label's outline as MONAI finds it on the
    2D image. Eroded across that axis too (the slab's two faces), every voxel of the slice had been surface: a
    label's inside counted as distance 0 and mean surface distances fell (0.58 mm for two 15-voxel squares 3 and
    2 voxels apart, whose outlines are 2.32 mm apart on average)."""
    from scipy.ndimage import binary_erosion, generate_binary_structure

    size = image.GetSize()[::-1]  # numpy order
    thin = tuple(k for k in range(mask.ndim) if size[k] == 1)
    flat = np.squeeze(mask, axis=thin) if thin else mask
    if flat.ndim == 0:  # a grid of one voxel: that voxel is the surface
        edge = mask.copy()
    else:
        padded = np.pad(flat, 1)  # outside the image counts as outside the label, as MONAI's crop with margin has it
        edge = padded & ~binary_erosion(padded, generate_binary_structure(flat.ndim, 1))
        edge = edge[(slice(1, -1),) * flat.ndim]
        edge = np.expand_dims(edge, thin) if thin else edge
    idx = np.argwhere(edge) + lo  # numpy order (k, j, i)
    ijk = idx[:, ::-1].astype(np.float64)
    d = image.GetDimension()
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(d, d)
    spacing = np.array(image.GetSpacing(), dtype=np.float64)
    return np.array(image.GetOrigin(), dtype=np.float64) + (ijk * spacing) @ direction.T


def _surface_distances(fa: np.ndarray, fb: np.ndarray, image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``fa`` to the nearest of ``fb``'s, and back."""
    from scipy.spatial import cKDTree

    either = np.nonzero(fa | fb)
    lo = np.array([int(v.min()) for v in either])
    hi = np.array([int(v.max()) + 1 for v in either])
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    pa = _surface_points(fa[box], lo, image)
    pb = _surface_points(fb[box], lo, image)
    return cKDTree(pb).query(pa)[0], cKDTree(pa).query(pb)[0]


def label_overlap(fixed_labels: Any, moving_labels_on_fixed: Any,
                  labels: Sequence[int] | None = None) -> dict[str, Any]:
    """Overlap and surface distances of anatomical labels, per label and their mean (Learn2Reg's measures).

    Args:
        fixed_labels: label map of the fixed image (whole numbers; 0 is background), or a list of label maps on
            one grid (layers, :func:`label_layers`) where labels share voxels.
        moving_labels_on_fixed: the moving image's label map (or layers) on the same grid, resampled
            nearest-neighbour (through the registration's transform for "after", the identity for "before").
        labels: the labels to score, non-zero whole numbers (default: every non-zero label in either image).

    For a label, A is its voxels in the fixed map and B in the moving one:

    - ``dice``: 2|A∩B| / (|A| + |B|); ``jaccard``: |A∩B| / |A∪B| (ITK's LabelOverlapMeasuresImageFilter's
      mean overlap and union overlap, ANTs' LabelOverlapMeasures; Slicer's Segment Comparison Dice).
    - Surface distances, in mm, between the voxel centres of the two surfaces (a surface voxel: one of the label
      with a face neighbour outside it or at the image's border, as MONAI's ``get_mask_edges``), in physical
      space: spacing and direction honoured (anisotropic voxels, oblique grids). d(A→B) are the distances from
      each surface voxel of A to the nearest of B's, d(B→A) back. On a grid of one slice (a one-slice volume)
      the surface is the label's outline in the slice's plane, as on the 2D image it is.
    - ``hd95``: max(95th percentile of d(A→B), 95th percentile of d(B→A)), the larger of the two directed
      95th percentiles (numpy's linear interpolation): MONAI's ``compute_hausdorff_distance(percentile=95)``
      and Learn2Reg's HD95 (which weighs each surface element by its area; on voxel surfaces the two differ by a
      fraction of a voxel). It is not the 95th percentile of both directions' distances pooled (lower when one
      surface has many more voxels than the other).
    - ``hausdorff``: max(d(A→B), d(B→A)), the largest; on labels neither of which holds the other inside it,
      the Hausdorff distance of ITK's HausdorffDistanceImageFilter (which measures from every voxel, so a label
      lying wholly inside the other counts 0 from its side there, but its surface's distance here).
    - ``mean_surface_distance``: the mean of d(A→B) and d(B→A) taken together, MONAI's
      ``compute_average_surface_distance(symmetric=True)`` (average symmetric surface distance, ASSD).

    Each label is its own binary mask: where labels overlap (given in layers), each is scored with all its voxels.

    A label in one image only scores Dice and Jaccard 0 and its distances ``None`` (undefined: not inf), with
    ``missing`` naming the side it is missing from; a label given in ``labels`` that neither image holds is
    skipped, named in ``skipped`` and ``notes``. The means: Dice and Jaccard over the labels scored (a missing
    label counts 0 here; Learn2Reg leaves out a label missing from either image before warping, as
    :func:`evaluate_registration` does), distances over the labels present on both sides
    (``labels_with_distances`` says how many).

    Returns:
        dict: ``labels`` ({label: {dice, jaccard, hd95, hausdorff, mean_surface_distance, fixed_voxels,
        moving_voxels, missing}}), ``mean`` (the five measures, ``labels``, ``labels_with_distances``),
        ``skipped`` (labels in neither image) and ``notes``.

    Raises:
        InputError: the maps are not on one grid, are not label maps (colour; values that are not whole
            numbers), or hold no label to score.
    """
    from .fusion import check_same_grid

    a = _layer_arrays(fixed_labels, "fixed label map")
    b = _layer_arrays(moving_labels_on_fixed, "moving label map")
    grid = label_layers(fixed_labels)[0]
    check_same_grid(grid, label_layers(moving_labels_on_fixed)[0], "fixed label map",
                    "moving label map on the fixed grid")
    layered = labels is None or len(a) > 1 or len(b) > 1
    where = [_labels_by_layer(arrays) if layered else None for arrays in (a, b)]
    return _overlap_of_arrays(a, b, grid, labels, where[0], where[1])


def _overlap_of_arrays(a: Sequence[np.ndarray], b: Sequence[np.ndarray], grid: sitk.Image,
                       labels: Sequence[int] | None, where_a: dict[int, tuple[int, ...]] | None,
                       where_b: dict[int, tuple[int, ...]] | None) -> dict[str, Any]:
    """:func:`label_overlap` of the label maps' arrays (:func:`_layer_arrays`) on ``grid``, their labels' layers
    found (:func:`_labels_by_layer`; None: every layer looked at, which ``labels`` None does not allow)."""
    if labels is None:
        wanted = sorted(set(where_a) | set(where_b))
        if not wanted:
            raise InputError("Both label maps are empty (every voxel 0): there is no label to compare.",
                             "Give the label maps of the two images (segmentations with non-zero labels).")
    else:
        wanted = _asked_labels(labels)
    per: dict[int, dict[str, Any]] = {}
    skipped: list[int] = []
    notes: list[str] = []
    for label in wanted:
        fa = _label_voxels(a, label, where_a)
        fb = _label_voxels(b, label, where_b)
        na, nb = int(np.count_nonzero(fa)), int(np.count_nonzero(fb))
        if na == 0 and nb == 0:
            skipped.append(label)
            continue
        inter = int(np.count_nonzero(fa & fb))
        row: dict[str, Any] = {"dice": 2.0 * inter / (na + nb), "jaccard": inter / (na + nb - inter),
                               "hd95": None, "hausdorff": None, "mean_surface_distance": None,
                               "fixed_voxels": na, "moving_voxels": nb, "missing": None}
        if na == 0 or nb == 0:
            row["missing"] = "fixed" if na == 0 else "moving"
            notes.append(f"label {label} is missing from the {row['missing']} label map: Dice 0, no distances")
        else:
            dab, dba = _surface_distances(fa, fb, grid)
            row["hd95"] = float(max(np.percentile(dab, 95), np.percentile(dba, 95)))
            row["hausdorff"] = float(max(dab.max(), dba.max()))
            row["mean_surface_distance"] = float(np.concatenate([dab, dba]).mean())
        per[label] = row
    if skipped:
        notes.append(f"label{'s' if len(skipped) > 1 else ''} {', '.join(str(v) for v in skipped)} in neither label "
                     "map: skipped")
    if not per:
        raise InputError(f"None of the labels asked for ({', '.join(str(v) for v in wanted)}) is in either label map.",
                         "Give labels the maps hold (mmfusion info shows their range), or none for every label.")
    with_distances = [r for r in per.values() if r["missing"] is None]
    mean: dict[str, Any] = {"dice": float(np.mean([r["dice"] for r in per.values()])),
                            "jaccard": float(np.mean([r["jaccard"] for r in per.values()]))}
    for key in ("hd95", "hausdorff", "mean_surface_distance"):
        mean[key] = float(np.mean([r[key] for r in with_distances])) if with_distances else None
    mean["labels"] = len(per)
    mean["labels_with_distances"] = len(with_distances)
    return {"labels": per, "mean": mean, "skipped": skipped, "notes": notes}


def _asked_labels(labels: Sequence[Any]) -> list[int]:
    """The labels asked for, as sorted whole numbers without repeats: :func:`segmentations.asked_labels`' rule
    for labels matched by number, the one of :func:`label_overlap` and :func:`evaluate_registration` and of every
    front end (``--labels``, :func:`pipeline.run`'s and the Slicer Logic's ``labels``)."""
    from .segmentations import asked_labels

    return asked_labels(labels)


def _label_list(values: set) -> str:
    shown = sorted(values)
    return (", ".join(str(v) for v in shown[:10]) + (f", ... ({len(shown)} labels)" if len(shown) > 10 else "")) or "none"


def _box_in(grid: sitk.Image, image: sitk.Image, lo: Sequence[float] | None = None,
            hi: Sequence[float] | None = None, transform: sitk.Transform | None = None
            ) -> tuple[np.ndarray, np.ndarray] | None:
    """The index range (first, last; either may lie outside ``grid``) of ``grid``'s lattice whose voxel centres
    lie in the box of ``image``'s voxels ``lo``..``hi`` (default: all of them), their corners taken into the grid's
    space through ``transform`` (points of the grid's space -> ``image``'s, as a registration's; inverted here).
    For a transform that is not linear the box's faces are sampled too (its image is no box). None: no point of the
    box could be taken back (a transform that cannot be inverted there)."""
    dim = image.GetDimension()
    first = np.zeros(dim) if lo is None else np.asarray(lo, dtype=np.float64)
    last = np.array(image.GetSize(), dtype=np.float64) - 1 if hi is None else np.asarray(hi, dtype=np.float64)
    inverse = None
    linear = True
    if transform is not None:
        try:
            inverse = transform.GetInverse()
        except RuntimeError:  # a B-spline or displacement field: each point taken back by Newton's method
            linear = False
    steps = 2 if linear else 6
    axes = [np.linspace(first[k] - 0.5, last[k] + 0.5, steps) for k in range(dim)]
    grid_points = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, dim)
    if not linear:  # the faces only
        on_face = np.any([np.isin(grid_points[:, k], axes[k][[0, -1]]) for k in range(dim)], axis=0)
        grid_points = grid_points[on_face]
    found = []
    for index in grid_points:
        point = np.array(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in index]))
        if transform is not None:
            point = np.array(inverse.TransformPoint(point.tolist())) if linear else _taken_back(transform, point)
            if point is None:
                continue
        found.append(grid.TransformPhysicalPointToContinuousIndex([float(v) for v in point]))
    if not found:
        return None
    found_arr = np.array(found)
    return (np.ceil(found_arr.min(axis=0) - 1e-6).astype(int), np.floor(found_arr.max(axis=0) + 1e-6).astype(int))


def _taken_back(transform: sitk.Transform, target: np.ndarray) -> np.ndarray | None:
    """The point x with transform(x) = target, by Newton's method with a finite-difference Jacobian; None where it
    does not converge."""
    x = target.copy()
    for _ in range(50):
        fx = np.array(transform.TransformPoint(x.tolist()))
        error = target - fx
        if np.linalg.norm(error) < 1e-6:
            return x
        jacobian = np.stack([(np.array(transform.TransformPoint((x + 1e-3 * e).tolist())) - fx) / 1e-3
                             for e in np.eye(x.size)], axis=1)
        try:
            x = x + np.linalg.solve(jacobian, error)
        except np.linalg.LinAlgError:
            return None
    return None


def _on_box(image: sitk.Image, grid: sitk.Image, lo: np.ndarray, hi: np.ndarray,
            transform: sitk.Transform | None = None) -> sitk.Image:
    """``image`` resampled nearest-neighbour (through ``transform``) onto ``grid``'s lattice over indices lo..hi."""
    from .preprocess import resample

    reference = sitk.Image([int(v) for v in hi - lo + 1], sitk.sitkUInt8)
    reference.SetSpacing(grid.GetSpacing())
    reference.SetDirection(grid.GetDirection())
    reference.SetOrigin(grid.TransformContinuousIndexToPhysicalPoint([float(v) for v in lo]))
    return resample(image, reference, transform, interpolation="nearest")


def _holding(arrays: Sequence[np.ndarray], where: dict[int, tuple[int, ...]], labels: Sequence[int]) -> np.ndarray:
    """The voxels of a label map's layers (:func:`_layer_arrays`, their labels' layers ``where``) that hold one of
    ``labels`` (non-zero) in any layer: each layer compared with its own labels only."""
    held = np.zeros(arrays[0].shape, dtype=bool)
    for i, arr in enumerate(arrays):
        own = [int(v) for v in labels if i in where.get(int(v), ())]
        if len(own) == sum(i in layers for layers in where.values()):
            held |= arr != 0  # every label of the layer
        elif own:
            held |= np.isin(arr, own)
    return held


def _scored_labels_on_grid(fixed: sitk.Image, fixed_labels: Any, moving_labels: Any,
                           transform: sitk.Transform | None, scored: Sequence[int],
                           present: np.ndarray, moving_where: dict[int, tuple[int, ...]]
                           ) -> tuple[list[sitk.Image], list[sitk.Image], dict[int, int], dict[str, Any]]:
    """The two label maps' layers on the grid they are scored on, and the moving labels' voxels left outside it.

    The grid is the fixed label map's lattice (its spacing, direction and voxel positions) over the box that holds
    the fixed label map and the moving labels (through ``transform``), within the fixed image's field of view or
    the fixed label map, whichever reaches further: a label map saved on its own cropped extent (as Slicer saves a
    ``.seg.nrrd``) is extended, and moving labels are not cut at its box. Moving labels beyond the fixed image's
    field of view (and the fixed label map) are not scored, as Learn2Reg, scoring on the fixed image's grid, does
    not; how many of their voxels (on this lattice) is returned per label. Each map is returned as its layers
    (:func:`label_layers`; one label map: a list of one), each on that grid; the fixed layers are those given
    (the same images) where the grid is the fixed label map's own. ``present``: the moving label map's voxels
    that hold a scored label (:func:`_holding`), ``moving_where`` its labels' layers (:func:`_labels_by_layer`)."""
    fixed_layers, moving_layers = label_layers(fixed_labels), label_layers(moving_labels)
    lattice = fixed_layers[0]  # the layers of a label map share its grid (_layer_arrays)
    size = np.array(lattice.GetSize())
    own = (np.zeros(size.size, dtype=int), size - 1)
    view = _box_in(lattice, fixed)
    allowed = (np.minimum(own[0], view[0]), np.maximum(own[1], view[1]))
    outside: dict[int, int] = {}
    box = own
    if present.any():
        where = np.nonzero(present)
        lo = np.array([int(v.min()) for v in where])[::-1]
        hi = np.array([int(v.max()) for v in where])[::-1]
        footprint = _box_in(lattice, moving_layers[0], lo, hi, transform)
        if footprint is not None:
            reach = (footprint[0] - 1, footprint[1] + 1)
            inner = (np.maximum(reach[0], allowed[0]), np.minimum(reach[1], allowed[1]))
            if np.all(inner[0] <= inner[1]):
                box = (np.minimum(own[0], inner[0]), np.maximum(own[1], inner[1]))
            if np.any(reach[0] < allowed[0]) or np.any(reach[1] > allowed[1]):
                far = [_label_array(_on_box(layer, lattice, reach[0], reach[1], transform), "moving label map")
                       for layer in moving_layers]
                inside = np.zeros(far[0].shape, dtype=bool)
                window = tuple(slice(max(0, int(a - r)), max(0, int(b - r + 1)))
                               for a, b, r in zip(allowed[0][::-1], allowed[1][::-1], reach[0][::-1]))
                inside[window] = True
                for label in scored:
                    count = int(np.count_nonzero(_label_voxels(far, label, moving_where) & ~inside))
                    if count:
                        outside[int(label)] = count
    fixed_on_box = fixed_layers
    if np.any(box[0] != own[0]) or np.any(box[1] != own[1]):
        fixed_on_box = [sitk.ConstantPad(layer, [int(v) for v in own[0] - box[0]], [int(v) for v in box[1] - own[1]],
                                         0) for layer in fixed_layers]
    moving_on_box = [_on_box(layer, lattice, box[0], box[1], transform) for layer in moving_layers]
    grid = {"size": [int(v) for v in box[1] - box[0] + 1], "spacing": list(lattice.GetSpacing()),
            "origin": list(fixed_on_box[0].GetOrigin()), "fixed_label_map_size": [int(v) for v in size]}
    return fixed_on_box, moving_on_box, outside, grid


def _as_given(layers: list[Any]) -> Any:
    """One label map as the image it is, layers as a list."""
    return layers[0] if len(layers) == 1 else layers


def _mm(values: Sequence[float]) -> str:
    return " x ".join(f"{v:.3g}" for v in values) + " mm"


def _axial_slice(image: Any) -> bool:
    """A one-slice volume whose slice a 2D image holds (along the last axis, in an axial plane: what ``mmfusion
    register`` registers as 2D, ``io.one_slice_as_2d``)."""
    from .io import one_slice_as_2d, one_slice_axis

    if one_slice_axis(image) != 2:
        return False
    try:
        one_slice_as_2d(image)
    except InputError:
        return False
    return True


def _linear_lifted_2d(transform: Any) -> Any:
    """A linear transform's 2D one (LPS x, y), None where it moves points across axial planes."""
    matrix = np.array(transform.GetMatrix()).reshape(3, 3)
    offset = np.array(transform.TransformPoint((0.0, 0.0, 0.0)))
    if not (np.allclose(matrix[2], (0, 0, 1), atol=1e-9) and np.allclose(matrix[:2, 2], 0, atol=1e-9)
            and abs(offset[2]) < 1e-6):
        return None
    flat = sitk.AffineTransform(2)
    flat.SetMatrix([float(v) for v in matrix[:2, :2].ravel()])
    flat.SetTranslation([float(v) for v in offset[:2]])
    return flat


#: how far (mm) a 3D transform may move a one-slice volume's slab points from its 2D transform lifted (x and y moved
#: alike at every depth, z kept) and still be taken for it
_LIFT_TOLERANCE_MM = 1e-6


def _grid_lifted_2d(images: Sequence[Any]) -> list[Any] | None:
    """The 2D images (x and y components) of a B-spline's coefficient images or a displacement field's components
    (LPS x, y, z) that lift a 2D one: a grid whose third axis is along z and first two in the axial plane, a z
    component of 0 and x and y components the same on every layer; None otherwise."""
    direction = np.array(images[0].GetDirection()).reshape(3, 3)
    if not (np.allclose(direction[2, :2], 0, atol=1e-9) and np.allclose(direction[:2, 2], 0, atol=1e-9)):
        return None
    arrays = [sitk.GetArrayFromImage(image) for image in images]  # numpy order (z, y, x)
    # within the 1e-6 mm the slab checks allow (_keeps_planes, _lifts; a B-spline's and a linear field's weights
    # are positive and sum to 1, so the first layer moves no point further than that from the transform): exact
    # equality had refused a lifted B-spline with z coefficients of 1e-9 mm as one that 'cannot be taken back'
    if np.any(np.abs(arrays[2]) > _LIFT_TOLERANCE_MM) or any(np.any(np.abs(a - a[:1]) > _LIFT_TOLERANCE_MM)
                                                             for a in arrays[:2]):
        return None
    out = []
    for arr in arrays[:2]:
        flat = sitk.GetImageFromArray(arr[0].astype(np.float64))
        flat.SetOrigin(images[0].GetOrigin()[:2])
        flat.SetSpacing(images[0].GetSpacing()[:2])
        flat.SetDirection([float(v) for v in direction[:2, :2].ravel()])
        out.append(flat)
    return out


def _lifted_2d(transform: Any) -> Any:
    """The 2D transform (LPS x, y) a 3D one lifts, as Slicer loads the 2D transform ``mmfusion register`` writes for
    one-slice volumes (each point keeps its z, x and y moved by the 2D transform): a linear transform, a B-spline
    (its coefficient grid along z, the z coefficients 0 and the x and y ones the same on every layer, as a 2D
    B-spline stacked along z), a displacement field lifted alike, or a composite of them. None for a transform that
    moves points across axial planes, or is none of these."""
    if not isinstance(transform, sitk.Transform) or transform.GetDimension() != 3:
        return None
    name = transform.GetName()
    if name == "CompositeTransform":
        composite = sitk.CompositeTransform(transform)
        parts = [_lifted_2d(composite.GetNthTransform(i).Downcast())
                 for i in range(composite.GetNumberOfTransforms())]
        return sitk.CompositeTransform(parts) if parts and all(p is not None for p in parts) else None
    if name == "BSplineTransform":
        bspline = sitk.BSplineTransform(transform)
        flat = _grid_lifted_2d(bspline.GetCoefficientImages())
        return sitk.BSplineTransform(flat, bspline.GetOrder()) if flat is not None else None
    if name == "DisplacementFieldTransform":
        field = sitk.DisplacementFieldTransform(transform).GetDisplacementField()
        parts = [sitk.VectorIndexSelectionCast(field, k, sitk.sitkFloat64) for k in range(3)]
        for part in parts:
            part.CopyInformation(field)
        flat = _grid_lifted_2d(parts)
        if flat is None or field.GetSize()[2] < 2:
            return None  # one layer: the field moves no point off it (ITK takes no displacement outside a field)
        return sitk.DisplacementFieldTransform(sitk.Compose(flat))
    if name in ("AffineTransform", "Euler3DTransform", "VersorRigid3DTransform", "Similarity3DTransform",
                "ScaleVersor3DTransform", "ScaleSkewVersor3DTransform", "TranslationTransform",
                "ScaleTransform"):
        if name == "TranslationTransform":
            shift = transform.TransformPoint((0.0, 0.0, 0.0))
            return sitk.TranslationTransform(2, shift[:2]) if abs(shift[2]) < 1e-6 else None
        return _linear_lifted_2d(transform)
    return None


def _slab_points(image: Any) -> Any:
    """Points of the one-slice volume ``image``'s slab: 7 x 7 over its in-plane extent, at its plane and half a
    slice depth either side, as a (49, 3, 3) array (LPS mm; the middle axis the depth)."""
    size = image.GetSize()
    return np.array([image.TransformContinuousIndexToPhysicalPoint((float(i), float(j), float(k)))
                     for i in np.linspace(-0.5, size[0] - 0.5, 7) for j in np.linspace(-0.5, size[1] - 0.5, 7)
                     for k in (-0.5, 0.0, 0.5)]).reshape(49, 3, 3)


def _moved(transform: Any, points: Any) -> Any:
    try:
        return np.array([transform.TransformPoint([float(v) for v in p]) for p in points.reshape(-1, points.shape[-1])]
                        ).reshape(*points.shape[:-1], -1)
    except RuntimeError:
        return None


def _keeps_planes(transform: Any, image: Any) -> bool:
    """Whether ``transform`` moves the points of the one-slice volume ``image``'s slab within their axial planes,
    each the same way at every depth: a 2D transform lifted to 3D, whatever its kind."""
    points = _slab_points(image)
    moved = _moved(transform, points)
    # rtol=0: numpy's default relative 1e-5 of coordinates 40 mm from the origin had allowed 4e-4 mm
    return moved is not None and bool(np.allclose(moved[..., 2], points[..., 2], rtol=0, atol=_LIFT_TOLERANCE_MM)
                                      and np.allclose(moved[..., :2], moved[:, :1, :2], rtol=0,
                                                      atol=_LIFT_TOLERANCE_MM))


def _lifts(transform: Any, flat: Any, image: Any) -> bool:
    """Whether the 3D ``transform`` is the 2D ``flat`` lifted (x and y moved by it, z kept) over the one-slice volume
    ``image``'s slab: a B-spline or field is checked where the slice lies (outside its grid it moves nothing)."""
    points = _slab_points(image)
    moved, flat_moved = _moved(transform, points), _moved(flat, points[..., :2])
    return moved is not None and flat_moved is not None and bool(
        np.allclose(moved[..., 2], points[..., 2], rtol=0, atol=_LIFT_TOLERANCE_MM)
        and np.allclose(moved[..., :2], flat_moved, rtol=0, atol=_LIFT_TOLERANCE_MM))


def slice_plane_transform(fixed: sitk.Image, moving: sitk.Image, transform: Any, name: str) -> Any:
    """The 2D transform (LPS x, y) that the 3D ``transform`` lifts over the slab of two one-slice volumes' (axial
    slices) fixed slice, as Slicer loads the 2D transform ``mmfusion register`` writes for them (each point keeps its
    z, x and y moved by the 2D transform: a linear transform, a B-spline or displacement field stacked along z, or a
    composite of these), so that :func:`evaluate_registration` scores them on their slices' planes; ``transform``
    as it is for other images and for a transform that moves their points across axial planes (scored in 3D).

    Raises:
        InputError: a non-linear transform (``name``) that keeps the slice's planes but cannot be taken back to 2D
            (a grid not along z, layers that differ from one another); in 3D a moving slice at another depth would
            lose its labels.
    """
    if transform is None or not (_axial_slice(fixed) and _axial_slice(moving)):
        return transform
    flat = _lifted_2d(transform)
    if flat is not None and _lifts(transform, flat, fixed):
        return flat
    if _keeps_planes(transform, fixed):
        raise InputError(
            f"The transform '{name}' moves the fixed slice's points within their axial "
            f"planes (a 2D transform lifted to 3D), but as a {transform.GetName()} it cannot be taken back to "
            "the 2D transform the slices are scored through (a B-spline or displacement field whose grid "
            "is not along z, or that differs from layer to layer); in 3D a moving slice at another depth "
            "would lose its labels.",
            "Score the slices with `mmfusion evaluate-registration FIXED MOVING --transform "
            "transform.h5` on the image files and the 2D transform file the registration wrote.")
    return transform


def scored_on_slice_planes(fixed: sitk.Image, moving: sitk.Image, transform: Any) -> bool:
    """Whether ``fixed`` and ``moving`` are scored as the 2D slices they hold: at least one one-slice volume, the
    other one too or a 2D image, with a 2D transform (as ``mmfusion register`` writes for them); or, with no
    transform, the pairs ``register`` registers as two 2D images, scored through the identity of their 2D frames
    (the "before" of their registration): a one-slice volume and a 2D image (the only relation of a 3D image's
    points to a 2D one's), or two one-slice volumes whose slices 2D images hold (along the last axis, in an axial
    plane: ``io.one_slice_as_2d``). :func:`slice_plane_inputs` takes their label maps and landmarks into the
    slices' 2D frames. Two one-slice volumes that no 2D image holds (coronal, sagittal), which ``register``
    refuses, are scored in 3D without a transform, as are any under a 3D transform."""
    from .io import one_slice_axis

    images = (fixed, moving)
    if not (all(isinstance(i, sitk.Image) for i in images) and any(one_slice_axis(i) is not None for i in images)
            and all(one_slice_axis(i) is not None or i.GetDimension() == 2 for i in images)):
        return False
    if transform is None:
        if fixed.GetDimension() != moving.GetDimension():
            return True
        # two one-slice volumes: without a transform they had been scored in 3D, where slices 2.5 mm apart scored
        # Dice 0.00 and TRE 4.609 mm, while the "before" column of the same pair with its 2D transform (the
        # identity of the slices' frames, where register starts) read Dice 0.570 and TRE 3.925 mm
        return all(_axial_slice(i) for i in images)
    return isinstance(transform, sitk.Transform) and transform.GetDimension() == 2


def _slice_frame(image: sitk.Image, name: str) -> tuple[sitk.Image, dict[str, Any]]:
    """A one-slice volume's 2D image (``io.one_slice_as_2d``: the frame its 2D transform works in) and where its
    plane lies (LPS mm); a 2D image as it is, with no plane."""
    from .io import one_slice_as_2d, one_slice_axis

    if one_slice_axis(image) is None:
        return image, {}
    flat = one_slice_as_2d(image, name)
    normal, depth = _slice_normal(image)
    return flat, {"origin_lps": [float(v) for v in image.GetOrigin()], "normal_lps": [float(v) for v in normal],
                  "depth_mm": depth}


def _slice_normal(image: sitk.Image) -> tuple[np.ndarray, float]:
    """A one-slice volume's plane normal (the unit normal of its two in-plane axes, on the side of its third) and
    its slice's thickness along it (mm): the slab of its voxels, half a thickness either side of the plane.

    On a sheared grid (a third axis not perpendicular to the plane, as a gantry-tilted CT's NRRD holds it) the
    third axis is not the normal and its spacing not the thickness: a point's distance off the slice is measured
    along the normal and its place on the slice is its foot there, as the 2D transform lifted to 3D (x and y moved,
    z kept) and a slice view take it; measured along the tilted axis, a point 1 mm above a slice tilted 30 degrees
    had been put 0.58 mm aside in the plane."""
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    normal = np.cross(direction[:, 0], direction[:, 1])
    normal /= np.linalg.norm(normal)
    if normal @ direction[:, 2] < 0:
        normal = -normal
    return normal, float(image.GetSpacing()[2] * abs(normal @ direction[:, 2]))


def _labels_on_plane(labels: sitk.Image, image: sitk.Image, what: str) -> sitk.Image:
    """A one-slice label map of the one-slice volume ``image`` as the 2D label map of its slice, on ``flat``'s
    frame (the image's 2D frame): refused unless it is a one-slice volume lying on ``image``'s slice (within half its depth)."""
    from .io import one_slice_as_2d, one_slice_axis

    role = what.split()[0]
    fix = (f"Give the {what} of the {role} slice: a label map of that one slice, saved as a one-slice volume where "
           f"the slice lies (as Slicer saves a label map or segmentation of it).")
    if not isinstance(labels, sitk.Image):
        return labels  # left to the checks to name
    if labels.GetDimension() == 2:
        raise DimensionMismatch(f"The {what} is a 2D image but the {role} image is a one-slice volume, scored in the "
                                "2D frame of its slice: a 2D label map's place on that slice is not known.", fix,
                                given_dimension=2)
    if one_slice_axis(labels) is None:
        raise InputError(f"The {what} is a volume of {labels.GetSize()} voxels but the {role} image is a one-slice "
                         f"volume (size {image.GetSize()}), scored as the 2D slice it is.", fix)
    normal, depth = _slice_normal(image)
    centre = np.array(labels.TransformContinuousIndexToPhysicalPoint((0, 0, 0)))
    distance = abs(float((centre - np.array(image.GetOrigin())) @ normal))  # along the normal (a sheared grid's too)
    if distance > (0.5 + 1e-6) * depth:
        raise InputError(f"The {what} lies on another slice than the {role} image: its slice is {distance:.4g} mm "
                         f"from the {role} image's plane, more than half its slice depth "
                         f"({depth / 2:.4g} mm).", fix)
    # its slice's 2D image lies in the image's 2D frame (the plane's LPS x and y), whatever its grid in the plane
    return one_slice_as_2d(labels, what)


def _points_on_plane(points: Any, image: sitk.Image, flat: sitk.Image, role: str) -> Any:
    """Landmarks (:class:`landmarks.Landmarks` or an (n, 3) array, LPS mm) on the one-slice volume ``image``'s
    plane as points of its slice's 2D frame (``flat``'s physical space, where the 2D transform applies): refused,
    naming the point and its distance, where one lies more than half a slice depth off the plane."""
    from .landmarks import Landmarks

    is_file = isinstance(points, Landmarks)
    try:
        arr = np.asarray(points.points if is_file else points, dtype=np.float64)
    except (TypeError, ValueError):
        return points  # left to tre's check to name
    if arr.ndim != 2 or arr.shape[1] != 3:
        got = f"{arr.shape[1]}D" if arr.ndim == 2 else "not a list of points"
        raise InputError(f"The {role} landmarks are {got} but the {role} image is a one-slice volume: they are "
                         "taken as 3D points (LPS mm) on its slice and scored in the slice's 2D frame.",
                         "Give the landmarks as 3D points on the slice, as Slicer, elastix and ANTs write them.")
    normal, depth = _slice_normal(image)
    origin = np.array(image.GetOrigin(), dtype=np.float64)
    out = np.full((arr.shape[0], 2), np.nan)
    for i, p in enumerate(arr):
        if not np.all(np.isfinite(p)):
            continue  # unplaced: its pair is left out with a note (landmarks.paired_landmarks)
        # off the plane along its normal, and onto it along the normal (not along a sheared grid's third axis)
        off = float((p - origin) @ normal)
        index = image.TransformPhysicalPointToContinuousIndex([float(v) for v in p - off * normal])
        if abs(off) > (0.5 + 1e-6) * depth:
            label = points.labels[i] if is_file and points.labels[i] else ""
            where = f" of '{points.path}'" if is_file else ""
            raise InputError(f"{role.capitalize()} landmark {i + 1}{f' ({label})' if label else ''}{where} at LPS "
                             f"({', '.join(f'{v + 0.0:.4g}' for v in p)}) mm lies {abs(off):.4g} mm off the "
                             f"{role} image's slice (more than half its {depth:.4g} mm depth): the slice is scored "
                             "as the 2D image it is, and the point is not on it.",
                             f"Place the {role} landmarks on the {role} slice (as Slicer places them on a slice "
                             "shown), or give the landmarks of that slice.")
        out[i] = flat.TransformContinuousIndexToPhysicalPoint([float(index[0]), float(index[1])])
    if is_file:
        import dataclasses

        return dataclasses.replace(points, points=out)
    return out


def slice_plane_inputs(fixed: sitk.Image, moving: sitk.Image, *, fixed_labels: LabelMaps | None = None,
                       moving_labels: LabelMaps | None = None, fixed_landmarks: Any = None,
                       moving_landmarks: Any = None) -> dict[str, Any]:
    """The images, label maps and landmarks of one-slice volumes in the 2D frames of their slices, where the 2D
    transform ``mmfusion register`` writes for them (fixed -> moving points, ITK) applies exactly.

    Each one-slice volume becomes the 2D image of its slice (``io.one_slice_as_2d``: its in-plane origin, spacing
    and direction, the slice's LPS x and y in mm); its label map, a one-slice volume on the same slice (within half
    the image's slice depth; any grid in the plane), the 2D label map it is; its landmarks, 3D LPS points within
    half a slice depth of its plane, their place on the slice (taken along the slice's normal). A 2D image (the
    other side of a 2D-to-one-slice registration) and its inputs are taken as they are.

    Returns:
        dict: ``fixed``, ``moving`` (2D images), ``fixed_labels``, ``moving_labels``, ``fixed_landmarks``,
        ``moving_landmarks`` (in the slices' frames, :class:`landmarks.Landmarks` kept as such), and ``planes``
        ({"fixed": ..., "moving": ...}: each slice's origin and normal in LPS and depth in mm; empty for a 2D image).

    Raises:
        InputError: a slice out of an axial plane (``io.one_slice_as_2d``), a label map that is not a one-slice
            volume on its image's slice, or a landmark more than half a slice depth off its slice's plane (named,
            with its distance).
    """
    out: dict[str, Any] = {"planes": {}}
    for role, image, labels, points in (("fixed", fixed, fixed_labels, fixed_landmarks),
                                        ("moving", moving, moving_labels, moving_landmarks)):
        flat, plane = _slice_frame(image, f"{role} image")
        out[role] = flat
        out["planes"][role] = plane
        thin = bool(plane)
        out[f"{role}_labels"] = _as_given([_labels_on_plane(layer, image, f"{role} label map")
                                           for layer in label_layers(labels)]) \
            if thin and labels is not None else labels
        out[f"{role}_landmarks"] = _points_on_plane(points, image, flat, role) \
            if thin and points is not None else points
    return out


def check_evaluation_inputs(fixed: sitk.Image, moving: sitk.Image, *, fixed_labels: LabelMaps | None = None,
                            moving_labels: LabelMaps | None = None, fixed_landmarks: Any = None,
                            moving_landmarks: Any = None, labels: Sequence[int] | None = None) -> None:
    """Refuse now what :func:`evaluate_registration` would refuse in these inputs, whatever the transform: one label
    map or landmark list without the other, a label map of another dimension than its image or that holds no labels,
    no label (asked for) in both maps, landmark lists that do not pair or are of another dimension than the images.

    ``mmfusion run`` (:func:`pipeline.run`) calls it before the registration: a bad label map or landmark file
    fails before minutes of work, with the words ``evaluate_registration`` would use after them.
    """
    _checked_evaluation_inputs(fixed, moving, fixed_labels=fixed_labels, moving_labels=moving_labels,
                               fixed_landmarks=fixed_landmarks, moving_landmarks=moving_landmarks, labels=labels)


def _checked_evaluation_inputs(fixed: sitk.Image, moving: sitk.Image, *, fixed_labels: LabelMaps | None,
                               moving_labels: LabelMaps | None, fixed_landmarks: Any, moving_landmarks: Any,
                               labels: Sequence[int] | None) -> dict[str, Any]:
    """The checks of :func:`check_evaluation_inputs`, returning what they found: ``present`` (the labels of each
    map), ``left_out`` and ``scored`` (labels), ``fixed_points``/``moving_points`` (the pairs to score) and
    ``dropped`` (notes of pairs left out); with label maps also ``arrays`` (fixed, moving: :func:`_layer_arrays`,
    views of the images) and ``where`` (their labels' layers, :func:`_labels_by_layer`)."""
    if (fixed_labels is None) != (moving_labels is None):
        raise InputError("Only one label map was given: the overlap compares the fixed image's labels with the "
                         "moving image's.", "Give both label maps (fixed and moving), or neither.")
    if (fixed_landmarks is None) != (moving_landmarks is None):
        raise InputError("Only one landmark list was given: the error compares corresponding points of the two "
                         "images.", "Give both landmark files (fixed and moving), or neither.")
    for what, given, of in (("fixed label map", fixed_labels, fixed), ("moving label map", moving_labels, moving)):
        for image in [] if given is None else label_layers(given):  # each layer of labels given in layers
            if not isinstance(image, sitk.Image) or image.GetDimension() == of.GetDimension():
                continue
            raise DimensionMismatch(f"The {what} is {image.GetDimension()}D but the {what.split()[0]} image is "
                                    f"{of.GetDimension()}D.",
                                    f"Give the {what} of the {what.split()[0]} image (same dimension).",
                                    given_dimension=image.GetDimension())
    found: dict[str, Any] = {"present": None, "left_out": [], "scored": [], "fixed_points": None,
                             "moving_points": None, "dropped": []}
    if fixed_labels is not None:
        # Learn2Reg's evaluation (compute_dice / compute_hd95) scores a label only where both the fixed and the
        # (unwarped) moving label maps hold it: NaN otherwise, left out of its nanmean; one lost in the warping
        # scores Dice 0. The same here: a label in one map only is left out, and said so.
        # views: the caller holds the images while it reads them (evaluate_registration reads these again)
        arrays = [_layer_arrays(m, f"{w} label map", copy=False)
                  for m, w in ((fixed_labels, "fixed"), (moving_labels, "moving"))]
        where = [_labels_by_layer(a) for a in arrays]
        present = [set(w) for w in where]
        asked = sorted(present[0] | present[1]) if labels is None else _asked_labels(labels)
        left_out = [v for v in asked if not (v in present[0] and v in present[1])]
        scored = [v for v in asked if v not in left_out]
        if not scored:
            raise InputError(f"No label{' asked for' if labels is not None else ''} is in both label maps (fixed: "
                             f"{_label_list(present[0])}; moving: {_label_list(present[1])}): a label is scored where "
                             "both images hold it, as Learn2Reg scores it.",
                             "Give the label maps of the two images, with the same label numbers for the same "
                             "structures (or --labels that both hold).")
        found.update(present=present, left_out=left_out, scored=scored, arrays=arrays, where=where)
    if fixed_landmarks is not None:
        from .landmarks import Landmarks, paired_landmarks

        if isinstance(fixed_landmarks, Landmarks) and isinstance(moving_landmarks, Landmarks):
            fp, mp, found["dropped"] = paired_landmarks(fixed_landmarks, moving_landmarks)
        else:
            fp, mp = fixed_landmarks, moving_landmarks
            tre(fp, mp, None)  # lists that do not pair, or NaN: refused here, before any transform is applied
        dim = np.asarray(fp, dtype=np.float64).reshape(len(fp), -1).shape[1] if len(fp) else 0
        if dim != fixed.GetDimension():
            # checked here, not only by tre's transform check: "before" (no transform) had scored 2D points of
            # 3D images without a word
            raise DimensionMismatch(f"The landmarks are {dim}D but the images are {fixed.GetDimension()}D.",
                                    "Give landmarks with one coordinate per image axis.", given_dimension=dim)
        found.update(fixed_points=fp, moving_points=mp)
    return found


def evaluate_registration(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform | None = None, *,
                          fixed_labels: LabelMaps | None = None, moving_labels: LabelMaps | None = None,
                          fixed_landmarks: Any = None, moving_landmarks: Any = None,
                          labels: Sequence[int] | None = None) -> dict[str, Any]:
    """A registration's accuracy before (identity) and after (through ``transform``), each measure given.

    ITK convention, as ``mmfusion register`` writes its transform: ``transform`` maps fixed-space points to
    moving space (so it resamples the moving image onto the fixed grid).

    Args:
        fixed, moving: the images; their similarity (:func:`registration_metrics`: MI, NMI, NCC) is measured
            with the moving image resampled linearly onto the fixed grid.
        transform: the registration's transform (fixed -> moving points); None: the identity ("after" equals
            "before").
        fixed_labels, moving_labels: label maps of the two images (both or neither), each one image or, where its
            labels share voxels (overlapping segments), a list of label maps on one grid (layers,
            :func:`label_layers`; each label then scored as its own binary mask): the moving one is
            resampled nearest-neighbour onto the fixed label map's lattice and scored by :func:`label_overlap`,
            over the box holding both maps' labels within the fixed image's field of view: a fixed label map on a
            cropped extent (a Slicer ``.seg.nrrd``) is extended with 0, and moving labels are not cut at its box.
            Moving labels beyond the fixed image's field of view are not scored (Learn2Reg scores on the fixed
            image's grid), with a note naming how many voxels (``outside`` per label); a moving label that no
            voxel of that lattice holds (thinner than its voxels) is named in a note.
        fixed_landmarks, moving_landmarks: corresponding points (both or neither): :class:`landmarks.Landmarks`
            (pairs with an unplaced point left out, noted) or (n, dim) arrays of LPS mm; scored by :func:`tre`.
        labels: the labels to score, non-zero whole numbers (default: every non-zero label in either map).

    One-slice volumes (a 2D slice saved as a volume of one slice) with a 2D transform (the one ``mmfusion register``
    writes for them, between their slices' 2D frames) are scored as the 2D images they are
    (:func:`slice_plane_inputs`): each label map, a one-slice volume on its image's slice, as a 2D label map (Dice,
    HD95 in mm on the plane, with the slice's in-plane spacing and direction), landmarks given in 3D LPS mm within
    half a slice depth of their slice's plane as points of that slice (one further off is refused, named with its
    distance); ``slice_planes`` in the result says where the slices lie. A one-slice volume with a 2D image (the
    pair ``mmfusion register`` registers as two 2D images) is scored so too, with the 2D transform or with none
    (the identity of the 2D frames), its images alone as well. Without a transform, two one-slice volumes that
    ``register`` registers as 2D images (axial slices, :func:`scored_on_slice_planes`) are scored so too, through the
    identity of their 2D frames: the "before" column their 2D transform's scores have, whatever depth each slice
    lies at (in 3D a moving slice 2.5 mm deeper had lost every label: Dice 0.00 where "before" reads 0.570).

    Returns:
        dict: ``images``, and where given ``labels`` and ``landmarks``, each {"before": ..., "after": ...}
        (``labels`` also ``left_out``: the labels asked for, or found in either map, that are not in both maps,
        left out of the scores as Learn2Reg leaves them out);
        ``notes`` (labels or landmarks left out, and why); ``transform_convention``.
    """
    if scored_on_slice_planes(fixed, moving, transform) and (fixed_labels is not None or fixed_landmarks is not None
                                                      or fixed.GetDimension() != moving.GetDimension()
                                                      or transform is None):
        # the 2D transform mmfusion register writes for one-slice volumes relates their slices' 2D frames: their
        # label maps and landmarks are scored there, as the 2D images the slices are (3D ones had been refused,
        # and before that ended in ITK's 'point dimension mismatch' traceback); a one-slice volume and a 2D image
        # are compared there even alone (their images had ended in 'Cannot resample a 2D image onto a 3D
        # reference', with the transform or without)
        flat = slice_plane_inputs(fixed, moving, fixed_labels=fixed_labels, moving_labels=moving_labels,
                                  fixed_landmarks=fixed_landmarks, moving_landmarks=moving_landmarks)
        planes = flat.pop("planes")
        result = evaluate_registration(transform=transform, labels=labels, **flat)
        result["slice_planes"] = planes
        return result
    checked = _checked_evaluation_inputs(fixed, moving, fixed_labels=fixed_labels, moving_labels=moving_labels,
                                         fixed_landmarks=fixed_landmarks, moving_landmarks=moving_landmarks,
                                         labels=labels)
    if isinstance(transform, sitk.Transform) and transform.GetDimension() != fixed.GetDimension() and (
            fixed_labels is not None or fixed_landmarks is not None):
        # e.g. a 2D transform with volumes of several slices: their labels and landmarks cannot go through it (it
        # had been ITK's 'point dimension mismatch' traceback)
        raise InputError(f"The transform is {transform.GetDimension()}D but the images are {fixed.GetDimension()}D"
                         f"{' volumes of several slices' if fixed.GetDimension() == 3 else ''}, so their label maps "
                         "and landmarks cannot be taken through it.",
                         "Give the transform of these images (registering two 2D images or two one-slice volumes "
                         "gives a 2D transform, two volumes a 3D one).")
    out: dict[str, Any] = {"transform_convention": "fixed -> moving points (ITK), LPS mm", "notes": []}
    steps = (("before", None), ("after", transform))
    # each state over the fixed voxels it maps inside the moving image, as ITK and ANTs count them
    # the images' similarity alone: a state with nothing to compare, or a blank image, leaves nothing to report (it
    # had printed n/a and 'voxels compared 0', or NMI 1.0000 for an all-zero image, rc 0 and no word)
    images_only = fixed_labels is None and fixed_landmarks is None
    blank = []
    for image, name in ((fixed, "fixed image"), (moving, "moving image")):
        values = sitk.GetArrayViewFromImage(image)
        if values.size and values.min() == values.max():
            if images_only:  # refused as register refuses it
                from .validation import check_image

                check_image(image, name, allow_vector=True, allow_one_slice=True, allow_any_span=True)
            blank.append(f"The {name} is constant (every voxel is {float(values.min()):g}): it holds no structure, so "
                         "its similarity with the other image (MI, NMI, NCC) is n/a (NMI would read 1.0, MI 0, for "
                         "any image). Check that the right file or series was loaded.")
    out["images"] = alignment_before_after(fixed, moving, transform)
    reached = int(out["images"]["after"]["voxels"])
    if images_only and reached < 2:
        raise _too_few_compared(reached, transform)
    if blank:
        for state in out["images"].values():
            state.update(MI=float("nan"), NMI=float("nan"), NCC=float("nan"))
        out["notes"] += blank
    if reached < 2:
        # scored as n/a, not refused: the label maps and landmarks below still say how far off the transform is
        out["notes"].append(f"Through the transform the moving image covers {reached} of the fixed image's voxels, so "
                            "their similarity after it (MI, NMI, NCC) is n/a. Check that it maps the fixed image into "
                            "the moving one (fixed -> moving points, as mmfusion register writes it; --invert for one "
                            "written the other way round)." if transform is not None else
                            f"As the images lie (no transform) the moving image covers {reached} of the fixed image's "
                            "voxels, so their similarity (MI, NMI, NCC) is n/a. Give the registration's transform "
                            "(fixed -> moving points, as mmfusion register writes it), or check the origins in the "
                            "headers (mmfusion info).")
    if fixed_labels is not None:
        present, left_out, scored = checked["present"], checked["left_out"], checked["scored"]
        out["labels"] = {}
        # the arrays and the labels' layers are read once (views of the images), and each label is looked for in
        # its own layers: layers had been read again and compared for every label at each step (10 labels in 10
        # layers of 256^3: 15.9 s and +2026 MB peak against 6.8 s and +733 MB in one label map; now 9.8 s, +832 MB)
        (fixed_arrays, moving_arrays), (fixed_where, moving_where) = checked["arrays"], checked["where"]
        own_voxels = {v: int(np.count_nonzero(_label_voxels(moving_arrays, v, moving_where))) for v in scored}
        present_voxels = _holding(moving_arrays, moving_where, scored)
        fixed_spacing, moving_spacing = (label_layers(m)[0].GetSpacing() for m in (fixed_labels, moving_labels))
        lost: list[str] = []
        for when, tx in steps:
            # scored on a grid that holds both maps' labels: a fixed label map on a cropped extent (Slicer's
            # .seg.nrrd) had cut the moving labels at its box, and the Dice of any imperfect alignment rose
            fixed_on_grid, on_fixed, outside, grid = _scored_labels_on_grid(fixed, fixed_labels, moving_labels, tx,
                                                                            scored, present_voxels, moving_where)
            # padding with 0 and nearest-neighbour resampling put no label into a layer: the layers found hold
            fixed_grid = fixed_arrays if fixed_on_grid[0] is label_layers(fixed_labels)[0] \
                else _layer_arrays(fixed_on_grid, "fixed label map", copy=False)
            out["labels"][when] = _overlap_of_arrays(fixed_grid, _layer_arrays(on_fixed, "moving label map",
                                                                               copy=False),
                                                     fixed_on_grid[0], scored, fixed_where, moving_where)
            del fixed_grid
            out["labels"][when]["grid"] = grid
            out["labels"][when]["outside"] = outside
            # a label's voxels on the grid, as label_overlap counted them (none where it skipped the label)
            on_grid = {v: row["moving_voxels"] for v, row in out["labels"][when]["labels"].items()}
            for v in scored:
                if outside.get(v):
                    inside = on_grid.get(v, 0)
                    lost.append(f"{when}: {outside[v]} of the {outside[v] + inside} voxels of label {v} of the moving "
                                "label map lie outside the fixed image's field of view (on the fixed label map's "
                                f"{_mm(fixed_spacing)} voxels): not scored, as Learn2Reg scores on the "
                                "fixed image's grid")
                elif own_voxels[v] and not on_grid.get(v, 0) and when == "before":
                    lost.append(f"label {v} has {own_voxels[v]} voxels in the moving label map "
                                f"({_mm(moving_spacing)}) and none on the fixed label map's "
                                f"{_mm(fixed_spacing)} voxels it is scored on: thinner than those "
                                "voxels, it is lost in the resampling")
        out["labels"]["left_out"] = left_out
        # the segments' overlap, which one label map had refused, said: the scores alone do not show it
        for side, arrays in (("fixed", fixed_arrays), ("moving", moving_arrays)):
            out["notes"] += _shared_voxels_notes(arrays, scored, side, fixed_where if side == "fixed" else moving_where)
        for v in left_out:
            where = "fixed" if v in present[0] else "moving" if v in present[1] else None
            out["notes"].append(f"label {v} is {f'in the {where} label map only' if where else 'in neither label map'}: "
                                "left out of the scores (as Learn2Reg leaves it out)")
        out["notes"] += [f"after: {n}" for n in out["labels"]["after"]["notes"]
                         if n not in out["labels"]["before"]["notes"]]
        out["notes"] = [f"before: {n}" for n in out["labels"]["before"]["notes"]] + lost + out["notes"]
    if fixed_landmarks is not None:
        fp, mp = checked["fixed_points"], checked["moving_points"]
        out["notes"] += checked["dropped"]
        out["landmarks"] = {when: tre(fp, mp, tx) for when, tx in steps}
    return out
