"""Training data for deep fusion: pair folders, normalisation, MONAI augmentation, synthetic pairs.

- A *pairs folder* holds, anywhere below it, folders with exactly two sub-folders whose files with
  the same name form a pair (``MRI_CT/MRI/11.png`` + ``MRI_CT/CT/11.png``), 2D images or 3D volumes.
  The first sub-folder in alphabetical order is the first (anatomical) input unless it is named
  like a functional modality (CT, PET, SPECT), which then goes second.
- :func:`synthetic_pairs` makes redistributable multi-contrast pairs from the MNI152 template and
  tissue maps that nilearn carries (T1/T2/PD/FLAIR against CT/PET/T2...), used to train the
  shipped default weights.
- :func:`augmentation` is the MONAI dictionary transform chain used in training.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from ...errors import InputError
from ...io import IMAGE_EXTENSIONS
from .. import SLICE_AXIS_RATIO, slice_axis  # noqa: F401 (the shared rule, part of this module's API)

__all__ = [
    "normalize",
    "find_pairs",
    "load_pairs",
    "to_training_samples",
    "synthetic_pairs",
    "augmentation",
    "SYNTHETIC_PAIRS",
]

_SECOND = ("ct", "pet", "spect", "functional", "b")
#: (first, second) contrasts of the synthetic training pairs (data.synthetic_contrast names).
SYNTHETIC_PAIRS = (("t1", "ct"), ("t2", "ct"), ("pd", "ct"), ("t1", "pet"), ("t2", "pet"), ("flair", "pet"),
                   ("t1", "t2"), ("flair", "t1"), ("t2", "flair"), ("pd", "pet"))


def normalize(arr: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Min-max normalise to 0..1 (float32); returns (normalised, lo, hi).

    Min-max (not percentiles) keeps 8-bit images exact: ``x * (hi - lo) + lo`` gives them back.
    """
    arr = np.asarray(arr, dtype=np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    scale = hi - lo if hi > lo else 1.0
    return ((arr - lo) / scale).astype(np.float32), lo, hi


def _is_image(name: str) -> bool:
    low = name.lower()
    return any(low.endswith(ext) for ext in IMAGE_EXTENSIONS)


def find_pairs(folder: str | os.PathLike) -> list[tuple[Path, Path]]:
    """All (first, second) image file pairs below ``folder`` (see the module docstring).

    Raises:
        InputError: the folder does not exist or holds no pair.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"Pairs folder '{root}' does not exist.",
                         "Give a folder with two sub-folders (e.g. MRI/ and CT/) of images with matching names.")
    pairs: list[tuple[Path, Path]] = []
    skipped: list[str] = []
    for parent in sorted([root] + [p for p in root.rglob("*") if p.is_dir()]):
        subs = sorted(p for p in parent.iterdir() if p.is_dir())
        if len(subs) != 2:
            if len(subs) > 2 and any(_is_image(f.name) for d in subs for f in d.iterdir() if f.is_file()):
                skipped.append(f"'{parent}' ({len(subs)} sub-folders: {', '.join(d.name for d in subs[:4])})")
            continue
        first, second = subs
        if first.name.lower() in _SECOND and second.name.lower() not in _SECOND:
            first, second = second, first
        names_a = {p.name for p in first.iterdir() if p.is_file() and _is_image(p.name)}
        names_b = {p.name for p in second.iterdir() if p.is_file() and _is_image(p.name)}
        pairs.extend((first / n, second / n) for n in sorted(names_a & names_b))
    if not pairs:
        why = (f" Skipped, because a pair folder must hold exactly two image sub-folders: {'; '.join(skipped[:3])}."
               if skipped else "")
        raise InputError(f"No image pairs found below '{root}'.{why}",
                         "Put pairs in two sub-folders with matching file names, e.g. DIR/MRI/01.png and "
                         "DIR/CT/01.png (2D images or 3D volumes); for three modalities make one folder per "
                         "pairing (e.g. DIR/mr_ct/{MRI,CT}, DIR/mr_pet/{MRI,PET}).")
    return pairs


def load_pairs(folder: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
               spatial_dims: int = 2) -> list[tuple[np.ndarray, np.ndarray]]:
    """Read and normalise every pair below ``folder`` (colour images as luminance, Y of YCbCr).

    Args:
        folder: the pairs folder (see the module docstring).
        cache_dir: None: the pairs are held in memory (float32: 64 MB per 256^3 volume). A folder:
            each normalised image is written there as ``pairNNNNN_a.npy`` / ``_b.npy`` (replacing
            those of an earlier run) and returned as a copy-on-write memory map of that file, so a
            training set larger than memory is read from disk as training touches it; only one pair
            is in memory at a time while loading. Training on the maps gives the same weights.
        spatial_dims: the network they are for. 2: a volume's acquisition slice axis is put first
            (the array axis :func:`slice_axis` picks, as fusion slices it), since a 2D network is
            trained on slices along that axis: a sagittal 1 x 1 x 5 mm volume stored with x thick then
            gives its acquired slices, not 1 x 5 mm cuts across them. 3: the arrays as stored.

    Raises:
        InputError: an unreadable, empty or non-finite image, or a pair whose two images are not on
            one grid (size, spacing, origin or direction): the network sees voxel arrays, so a pair
            of the same size placed differently would teach it from misaligned images.
    """
    from ...io import read_image
    from ...validation import check_image
    from .. import check_same_grid

    out = []
    for pa, pb in find_pairs(folder):
        a, b = read_image(pa, float32=True), read_image(pb, float32=True)
        check_image(a, f"training image '{pa}'")
        check_image(b, f"training image '{pb}'")
        check_same_grid(a, b, f"training image '{pa}'", f"training image '{pb}'")
        # to_training_samples cuts a volume along axis 0: for a 2D network, the acquisition's slice axis
        axis = slice_axis(a.GetSpacing()[::-1]) if a.GetDimension() == 3 and spatial_dims == 2 else 0
        pair = tuple(normalize(sitk.GetArrayFromImage(img))[0] for img in (a, b))
        if axis:
            pair = tuple(np.ascontiguousarray(np.moveaxis(arr, axis, 0)) for arr in pair)
        del a, b
        if cache_dir is not None:
            pair = tuple(_mapped(arr, Path(cache_dir) / f"pair{len(out):05d}_{side}.npy")  # type: ignore[assignment]
                         for arr, side in zip(pair, "ab"))
        out.append(pair)
    return out


def _mapped(arr: np.ndarray, path: Path) -> np.ndarray:
    """``arr`` written to ``path`` (atomically) and read back as a copy-on-write memory map."""
    from ...io import atomic_output, make_output_dir

    make_output_dir(path.parent)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:  # a file object: np.save would append ".npy" to the temporary name
            np.save(fh, arr)
    return np.load(path, mmap_mode="c")


def to_training_samples(pairs: Sequence[tuple[np.ndarray, np.ndarray]], spatial_dims: int,
                        min_foreground: float = 0.05) -> list[dict[str, np.ndarray]]:
    """MONAI-style samples ``{"a": (1, *spatial), "b": (1, *spatial)}``.

    For a 2D network, 3D volumes are cut into slices along their first axis (:func:`load_pairs` puts the
    acquisition's slice axis first; those with less than ``min_foreground``
    of their pixels above 5 % of the range in both inputs are dropped: empty slices teach nothing).

    Raises:
        InputError: a 3D network was asked for with 2D pairs.
    """
    samples = []
    for a, b in pairs:
        # views of float32 pairs (load_pairs and synthetic_pairs give float32), not copies: astype
        # copied every volume once more, doubling training's memory; the MONAI chain never writes into
        # its input (the caller's arrays stay as they were), so training sees the same values
        a = np.asarray(a, dtype=np.float32)
        b = np.asarray(b, dtype=np.float32)
        if a.ndim == spatial_dims:
            samples.append({"a": a[None], "b": b[None]})
        elif a.ndim == 3 and spatial_dims == 2:
            for k in range(a.shape[0]):
                sa, sb = a[k], b[k]
                if max((sa > 0.05).mean(), (sb > 0.05).mean()) < min_foreground:
                    continue
                samples.append({"a": sa[None], "b": sb[None]})
        else:
            raise InputError(f"A {spatial_dims}D network cannot be trained on {a.ndim}D images.",
                             "Train a 2D network (--spatial-dims 2) on 2D slices, or give 3D volumes.")
    if not samples:
        raise InputError("No usable training samples (all slices empty).", "Check the training images.")
    return samples


def synthetic_pairs(spacing_mm: float = 1.5, contrasts: Sequence[tuple[str, str]] = SYNTHETIC_PAIRS,
                    seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Normalised 3D volume pairs made from the MNI152 template (redistributable: nilearn's data).

    Args:
        spacing_mm: voxel size of the volumes.
        contrasts: (first, second) contrast names of :data:`MultimodalFusionLib.data.CONTRASTS`.
        seed: seed of the noise and bias fields (pair ``i`` uses ``seed + i``).

    Returns:
        list of (first, second) float32 arrays in 0..1, (z, y, x).
    """
    from ... import data

    tissues = data.mni152(spacing_mm=spacing_mm)
    out = []
    for i, (ca, cb) in enumerate(contrasts):
        a = data.synthetic_contrast(tissues, ca, seed=seed + 2 * i)
        b = data.synthetic_contrast(tissues, cb, seed=seed + 2 * i + 1)
        arr_a, arr_b = sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b)
        if cb == "ct":  # a brain CT window (like the Harvard CT slices): air black, bone white
            arr_b = np.clip(arr_b, -100.0, 1200.0)
        out.append((normalize(arr_a)[0], normalize(arr_b)[0]))
    return out


def augmentation(spatial_dims: int, patch_size: int, seed: int) -> Any:
    """The MONAI training transform chain on ``{"a", "b"}`` samples, seeded.

    Random patch, flips, 90-degree and small rotations (the same for both inputs, which stay
    aligned), and independent gamma / intensity scaling / noise per input (so the network sees
    many contrasts and is not tied to one scanner's intensity curve).
    """
    from monai.transforms import (
        Compose,
        EnsureTyped,
        RandAdjustContrastd,
        RandFlipd,
        RandGaussianNoised,
        RandRotate90d,
        RandRotated,
        RandScaleIntensityd,
        RandSpatialCropd,
        SpatialPadd,
        ThresholdIntensityd,
    )

    keys = ["a", "b"]
    roi = [patch_size] * spatial_dims
    rot = {"range_x": 0.26} if spatial_dims == 2 else {"range_x": 0.2, "range_y": 0.2, "range_z": 0.2}
    chain = [
        SpatialPadd(keys, spatial_size=roi),
        RandSpatialCropd(keys, roi_size=roi, random_size=False),
        *[RandFlipd(keys, prob=0.5, spatial_axis=ax) for ax in range(spatial_dims)],
        RandRotate90d(keys, prob=0.5, spatial_axes=(0, 1)),
        RandRotated(keys, prob=0.3, keep_size=True, padding_mode="zeros", **rot),
    ]
    for key in keys:
        chain += [
            RandAdjustContrastd([key], prob=0.5, gamma=(0.6, 1.6)),
            RandScaleIntensityd([key], prob=0.3, factors=0.25),
            RandGaussianNoised([key], prob=0.2, std=0.01),
            ThresholdIntensityd([key], threshold=0.0, above=True, cval=0.0),
            ThresholdIntensityd([key], threshold=1.0, above=False, cval=1.0),
        ]
    chain.append(EnsureTyped(keys, track_meta=False))
    transform = Compose(chain)
    transform.set_random_state(seed=seed)
    return transform
