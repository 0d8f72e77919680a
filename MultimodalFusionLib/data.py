"""Data that ships with the project or an installed package, for the demo, tests and benchmarks.

- The ITK BrainWeb T1/PD slices in ``Testing/Data`` (Apache-2.0; see its licence file).
- The MNI152 2009a symmetric T1 template and its grey/white-matter probability maps, which the
  ``nilearn`` package carries (no download), and synthetic second contrasts made from them
  (T2-like, PD-like, FLAIR-like, CT-like, FDG-PET-like) for multimodal tests with a known answer.

Nothing here downloads anything.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError

__all__ = [
    "testing_data_dir",
    "bundled_folder",
    "itk_brainweb_pair",
    "ITK_BRAINWEB_TRUTH",
    "mni152",
    "synthetic_contrast",
    "CONTRASTS",
]

#: The known misalignment of BrainProtonDensitySliceR10X13Y17.png relative to
#: BrainProtonDensitySliceBorder20.png: 10 degrees about the image centre and (13, 17) pixels.
ITK_BRAINWEB_TRUTH = {"angle_deg": 10.0, "translation": (13.0, 17.0)}

CONTRASTS = ("t1", "t2", "pd", "flair", "ct", "pet")
_MNI_NAMES = {"t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
              "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
              "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"}


def bundled_folder(relative: str, env: str | None = None) -> Path:
    """A folder the project ships beside ``MultimodalFusionLib`` (``Resources/Presets``,
    ``Resources/Models``, ``Testing/Data``), wherever the code runs from.

    Looked for, in order: the environment variable ``env`` if set; the source checkout or the
    Slicer extension (the folder next to ``MultimodalFusionLib``); an installed wheel, which puts
    these folders under ``<prefix>/share/multimodalfusion/``. The first that exists is returned
    (the checkout's path when none does, for the caller's error message).

    ``<prefix>`` is found from where this package was installed (``<prefix>/lib/pythonX.Y/site-packages``
    or ``<prefix>/Lib/site-packages``), so ``pip install --user`` and ``--prefix`` installs, whose
    prefix is not the interpreter's, find their data too; then ``sys.prefix`` and sysconfig's data path.
    """
    import sys
    import sysconfig

    if env and os.environ.get(env):
        return Path(os.environ[env])
    site_dir = Path(__file__).resolve().parent.parent
    beside = site_dir / relative
    candidates = [beside]
    prefixes = [*list(site_dir.parents)[:3], sys.prefix, sysconfig.get_paths().get("data", sys.prefix)]
    for prefix in dict.fromkeys(str(p) for p in prefixes):
        candidates.append(Path(prefix) / "share" / "multimodalfusion" / relative)
    return next((c for c in candidates if c.is_dir()), beside)


def testing_data_dir() -> Path:
    """``Testing/Data``: the ITK slices and their licence (source checkout or installed wheel)."""
    path = bundled_folder("Testing/Data", "MMFUSION_TESTING_DATA")
    if not path.is_dir():
        raise InputError(f"The bundled test data folder '{path}' is missing.",
                         "Run from a source checkout or an installed wheel of MultimodalFusion, or set "
                         "MMFUSION_TESTING_DATA.")
    return path


def itk_brainweb_pair() -> tuple[sitk.Image, sitk.Image]:
    """(fixed T1 ``BrainT1SliceBorder20.png``, moving PD ``BrainProtonDensitySliceR10X13Y17.png``), float32.

    The moving image is the PD slice rotated by 10 degrees and shifted by (13, 17) pixels
    (``ITK_BRAINWEB_TRUTH``); the pixels are 1 mm.
    """
    from .io import read_image

    d = testing_data_dir()
    # BrainT1SliceBorder20.png is stored as RGB with R=G=B: read_image turns it into grey.
    fixed = read_image(d / "BrainT1SliceBorder20.png", float32=True)
    moving = read_image(d / "BrainProtonDensitySliceR10X13Y17.png", float32=True)
    return fixed, moving


def _nilearn_data_dir() -> Path:
    try:
        import nilearn
    except ImportError as exc:  # pragma: no cover - nilearn is a dependency
        raise InputError("The 'nilearn' package, which carries the MNI152 template, is not installed.",
                         "pip install nilearn") from exc
    return Path(nilearn.__file__).resolve().parent / "datasets" / "data"


def _read_mni(name: str) -> sitk.Image:
    path = _nilearn_data_dir() / _MNI_NAMES[name]
    if not path.exists():
        raise InputError(f"nilearn's MNI152 file '{path.name}' is missing.",
                         "Reinstall nilearn (pip install --force-reinstall nilearn).")
    img = sitk.ReadImage(str(path))
    return sitk.Cast(img, sitk.sitkFloat32)


def _crop_or_pad(image: sitk.Image, shape: tuple[int, int, int]) -> sitk.Image:
    """Centre-crop/pad (x, y, z) to ``shape`` voxels, keeping physical positions of kept voxels."""
    size = np.array(image.GetSize())
    target = np.array(shape)
    lower = np.maximum((size - target) // 2, 0)
    upper = np.maximum(size - target - lower, 0)
    out = sitk.Crop(image, [int(v) for v in lower], [int(v) for v in upper])
    size = np.array(out.GetSize())
    pad_lo = np.maximum((target - size) // 2, 0)
    pad_hi = np.maximum(target - size - pad_lo, 0)
    if pad_lo.any() or pad_hi.any():
        out = sitk.ConstantPad(out, [int(v) for v in pad_lo], [int(v) for v in pad_hi], 0.0)
    return out


# mni152 results kept for a repeat call in the same process (the tests ask for the same 3 or 4 mm template
# about twenty times; each build takes 3-5 s of closings and anti-alias smoothing at 1 mm). Only grids of
# 2 mm or coarser are kept (under 25 MB each), the few most recently used: a 1 mm template (190 MB) is rebuilt.
_MNI_CACHE: dict[tuple, dict[str, sitk.Image]] = {}
_MNI_CACHE_LOCK = threading.Lock()
_MNI_CACHE_SIZE = 4
_MNI_CACHE_MIN_SPACING_MM = 2.0


def mni152(spacing_mm: float = 1.0, shape: tuple[int, int, int] | None = (160, 192, 192)) -> dict[str, sitk.Image]:
    """The MNI152 2009a T1 template with tissue maps, from nilearn's package data.

    Args:
        spacing_mm: isotropic voxel size of the returned images (1 mm is the native grid;
            2 or 3 mm give small volumes for quick tests).
        shape: centre crop/pad at 1 mm before resampling (the reference benchmarks use
            160x192x192); None keeps the native 197x233x189.

    Returns:
        dict with "t1" (float32, 0..255 scale, skull-stripped), "gm", "wm", "csf" (probabilities
        0..1), "skull" and "scalp" (synthetic shells, 0/1 float), "brain_mask" and "head_mask"
        (UInt8), all on one grid. Each call returns images of its own (a repeat call may copy a
        kept result: SimpleITK copies on write, so changing one never changes another).
    """
    key = (float(spacing_mm), None if shape is None else tuple(int(v) for v in shape), str(_nilearn_data_dir()))
    with _MNI_CACHE_LOCK:
        kept = _MNI_CACHE.pop(key, None)
        if kept is not None:
            _MNI_CACHE[key] = kept  # the most recently used goes last: the first is dropped when full
    if kept is None:
        kept = _build_mni152(spacing_mm, shape)
        if float(spacing_mm) >= _MNI_CACHE_MIN_SPACING_MM:
            with _MNI_CACHE_LOCK:
                while len(_MNI_CACHE) >= _MNI_CACHE_SIZE:
                    _MNI_CACHE.pop(next(iter(_MNI_CACHE)))
                _MNI_CACHE[key] = kept
    return {k: sitk.Image(v) for k, v in kept.items()}


def _build_mni152(spacing_mm: float, shape: tuple[int, int, int] | None) -> dict[str, sitk.Image]:
    t1 = _read_mni("t1")
    gm = _read_mni("gm") / 255.0
    wm = _read_mni("wm") / 255.0
    if shape is not None:
        t1, gm, wm = (_crop_or_pad(im, shape) for im in (t1, gm, wm))
    tissue = gm + wm
    intracranial = sitk.BinaryFillhole(sitk.BinaryMorphologicalClosing(tissue > 0.15, [4, 4, 4]))
    csf = sitk.Cast(intracranial, sitk.sitkFloat32) * sitk.Clamp(1.0 - tissue, sitk.sitkFloat32, 0.0, 1.0)
    brain = sitk.BinaryFillhole(sitk.BinaryMorphologicalClosing(tissue > 0.5, [2, 2, 2]))
    # The template is skull-stripped: add a synthetic skull (0-7 mm outside the intracranial
    # mask) and scalp (7-11 mm), so CT-like and other contrasts have extra-cranial structure.
    dist = sitk.SignedMaurerDistanceMap(intracranial, insideIsPositive=False, squaredDistance=False,
                                        useImageSpacing=True)
    skull = sitk.Cast((dist > 0) & (dist <= 7.0), sitk.sitkFloat32)
    scalp = sitk.Cast((dist > 7.0) & (dist <= 11.0), sitk.sitkFloat32)
    head = sitk.Cast(dist <= 11.0, sitk.sitkUInt8)
    out = {"t1": t1, "gm": gm, "wm": wm, "csf": csf, "skull": skull, "scalp": scalp,
           "brain_mask": sitk.Cast(brain, sitk.sitkUInt8), "head_mask": head}
    if spacing_mm != 1.0:
        out = {k: _resample_iso(v, spacing_mm, label=k.endswith("mask") or k in ("skull", "scalp")) for k, v in out.items()}
    return out


def _resample_iso(image: sitk.Image, spacing: float, label: bool) -> sitk.Image:
    old_size = np.array(image.GetSize())
    old_spacing = np.array(image.GetSpacing())
    new_size = [int(round(v)) for v in old_size * old_spacing / spacing]
    # keep the physical centre: origin shifts by half the change of voxel size
    direction = np.array(image.GetDirection()).reshape(3, 3)
    origin = np.array(image.GetOrigin()) + direction @ ((spacing - old_spacing) / 2.0)
    src = image if label else sitk.SmoothingRecursiveGaussian(image, float(spacing) / 2.5)
    return sitk.Resample(src, new_size, sitk.Transform(), sitk.sitkNearestNeighbor if label else sitk.sitkLinear,
                         origin.tolist(), [spacing] * 3, image.GetDirection(), 0.0, image.GetPixelID())


def _bias_field(reference: sitk.Image, rng: np.random.Generator, strength: float) -> np.ndarray:
    """A smooth multiplicative field around 1 (a low-order polynomial in physical coordinates)."""
    size = reference.GetSize()[::-1]
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in size], indexing="ij")
    field = np.zeros(size, np.float32)
    for g in grids:
        field += rng.uniform(-1, 1) * g + 0.5 * rng.uniform(-1, 1) * g * g
    field = field / (np.abs(field).max() + 1e-6)
    return (1.0 + strength * field).astype(np.float32)


def synthetic_contrast(tissues: dict[str, sitk.Image], contrast: str = "t2", *, seed: int = 0,
                       noise: float = 0.02, bias: float = 0.1) -> sitk.Image:
    """A second contrast made from the template's tissue maps, on the same grid.

    The intensity mapping is deliberately non-monotonic with respect to the T1 (e.g. in the
    T2-like image CSF is brightest and white matter darkest), so only a multimodal metric
    such as mutual information can align it with the T1.

    Args:
        tissues: the dict returned by :func:`mni152`.
        contrast: "t2", "pd", "flair", "ct" or "pet" ("t1" returns the template itself).
        seed: seed of the noise and the bias field.
        noise: Gaussian noise, as a fraction of the image's intensity range.
        bias: strength of the smooth multiplicative bias field (0 for none; not used for CT).

    Returns:
        float32 image on the template grid (CT in Hounsfield-like units, PET in SUV-like units,
        MR on a 0..~1000 scale).
    """
    contrast = contrast.lower()
    if contrast not in CONTRASTS:
        raise InputError(f"Unknown contrast '{contrast}'.", f"Use one of {', '.join(CONTRASTS)}.")
    rng = np.random.default_rng(seed)
    t1 = sitk.GetArrayFromImage(tissues["t1"])
    gm = sitk.GetArrayFromImage(tissues["gm"])
    wm = sitk.GetArrayFromImage(tissues["wm"])
    csf = sitk.GetArrayFromImage(tissues["csf"])
    head = sitk.GetArrayFromImage(tissues["head_mask"]).astype(bool)
    fat = sitk.GetArrayFromImage(tissues["scalp"])
    bone = sitk.GetArrayFromImage(tissues["skull"])
    if contrast == "t1":
        out = t1.astype(np.float32)
        scale = 255.0
    elif contrast in ("t2", "pd", "flair"):
        levels = {"t2": (1000.0, 600.0, 330.0, 380.0, 120.0),    # csf, gm, wm, fat, bone
                  "pd": (850.0, 800.0, 650.0, 700.0, 150.0),
                  "flair": (80.0, 620.0, 420.0, 500.0, 60.0)}[contrast]
        out = (levels[0] * csf + levels[1] * gm + levels[2] * wm + levels[3] * fat + levels[4] * bone)
        out = out * _bias_field(tissues["t1"], rng, bias)
        scale = 1000.0
    elif contrast == "ct":
        # Hounsfield-like: CSF 8, GM 40, WM 28, fat -90, bone 1000, air -1000.
        out = -1000.0 * (~head) + 8.0 * csf + 40.0 * gm + 28.0 * wm - 90.0 * fat + 1000.0 * bone
        out = out.astype(np.float32)
        scale = 2000.0
    else:  # pet: FDG-like uptake, GM about 2.8x WM, at PET resolution (~6 mm FWHM)
        out = 2.8 * gm + 1.0 * wm + 0.15 * csf + 0.6 * fat + 0.3 * bone
        img = sitk.GetImageFromArray(out.astype(np.float32))
        img.CopyInformation(tissues["t1"])
        sigma = 6.0 / 2.3548
        out = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(img, sigma))
        out = out * _bias_field(tissues["t1"], rng, bias * 0.5)
        scale = 3.0
    if noise > 0:
        out = out + rng.normal(0.0, noise * scale, size=out.shape)
    result = sitk.GetImageFromArray(out.astype(np.float32))
    result.CopyInformation(tissues["t1"])
    return result
