"""Training data for deep fusion: pair folders, normalisation, MONAI augmentation, synthetic pairs.

- A *pairs folder* holds, anywhere below it, folders with exactly two sub-folders whose files with
  the same name form a pair (``MRI_CT/MRI/11.png`` + ``MRI_CT/CT/11.png``), 2D images or 3D volumes.
  The first sub-folder in alphabetical order is the first (anatomical) input unless it is named
  like a functional modality (CT, PET, SPECT), which then goes second. Two sub-folders named after
  a modality (:data:`MODALITY_FOLDERS`: MRI, CT, PET, T1, ...) pair their files by the path below
  them, so cases in sub-folders of each (``MRI/p1/scan.nii.gz`` + ``CT/p1/scan.nii.gz``) pair up;
  other folders pair only the files directly inside them. Hidden files and folders (``.DS_Store``,
  macOS's ``._name`` copies, ``.ipynb_checkpoints``) are ignored.
- :func:`synthetic_pairs` makes redistributable multi-contrast pairs from the MNI152 template and
  tissue maps that nilearn carries (T1/T2/PD/FLAIR against CT/PET/T2...), used to train the
  shipped default weights.
- :func:`augmentation` is the MONAI dictionary transform chain used in training.
"""

from __future__ import annotations

import math
import os
import warnings
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
    "searched_by_find_pairs",
    "load_pairs",
    "to_training_samples",
    "synthetic_pairs",
    "augmentation",
    "check_patch_fits",
    "patch_fill",
    "PATCH_FILL_FLOOR",
    "SYNTHETIC_PAIRS",
    "MODALITY_FOLDERS",
]

_SECOND = ("ct", "pet", "spect", "functional", "func", "b")
#: Folder names (compared in lower case) that name a modality: two such sub-folders pair their images by
#: their path below them (``MRI/p1/scan.nii.gz`` + ``CT/p1/scan.nii.gz``), not by the files directly inside.
#: Not "A" and "B" (ordered by ``_SECOND``, but they name nothing): ``A/{X,Y}`` beside ``B/{X,Y}`` reads two
#: ways and is refused, where taking A and B for modalities had paired it differently from before without a word.
MODALITY_FOLDERS = ("mri", "mr", "t1", "t1w", "t2", "t2w", "pd", "flair", "anatomical", "anat") + tuple(
    name for name in _SECOND if name != "b")
#: The smallest training patch side (``--patch-size``).
MIN_PATCH = 16

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


def _hidden(name: str) -> bool:
    """A hidden file or folder: ``.DS_Store``, macOS's AppleDouble ``._scan.nii.gz`` (not an image, but named
    like one: every file copied from a Mac to some disks has one), ``.ipynb_checkpoints``, ``.git``."""
    return name.startswith(".")


def searched_by_find_pairs(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether :func:`find_pairs` of ``folder`` looks into ``path``: ``path`` is ``folder`` or lies below it in
    no hidden folder (links resolved). ``train-fusion`` refuses such a ``--cache-dir``, whose arrays the next
    run would read as pairs; ``pairs/.cache`` is fine."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    if os.path.commonpath([path, folder]) != folder:
        return False
    below = os.path.relpath(path, folder)
    return below == "." or not any(_hidden(part) for part in below.split(os.sep))


def _sub_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _hidden(p.name))


def _images_in(folder: Path, recursive: bool) -> dict[str, Path]:
    """The image files in ``folder`` (below it too if ``recursive``), keyed by their path relative to it."""
    found: dict[str, Path] = {}
    seen: set[str] = set()  # folders walked (real paths): a link to a folder above is not walked again
    # followlinks: a case folder linked in (ln -s /data/p07 MRI/p07) is a case; os.walk had skipped it
    for here, dirs, files in os.walk(folder, followlinks=True):
        seen.add(os.path.realpath(here))
        dirs[:] = sorted(d for d in dirs if not _hidden(d) and os.path.realpath(os.path.join(here, d)) not in seen
                         ) if recursive else []
        for name in files:
            path = Path(here, name)
            # a link to nothing is not an image: it was left out before, where os.walk now lists it
            if not _hidden(name) and _is_image(name) and path.is_file():
                found[path.relative_to(folder).as_posix()] = path
    return found


def _is_modality(folder: Path) -> bool:
    return folder.name.lower() in MODALITY_FOLDERS


def find_pairs(folder: str | os.PathLike) -> list[tuple[Path, Path]]:
    """All (first, second) image file pairs below ``folder`` (see the module docstring).

    An image of a pair folder without its partner (``MRI/07.nii.gz`` next to ``CT/07.nii``) is not trained
    on, with a warning naming it.

    Raises:
        InputError: the folder does not exist or holds no pair, or its layout reads two ways: two
            sub-folders whose own two sub-folders have the same names and files (``A/{X,Y}/01.png`` and
            ``B/{X,Y}/01.png``: modalities X and Y of cases A and B, or modalities A and B of cases X and Y)
            where neither pair of names is a modality's.
    """
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"Pairs folder '{root}' does not exist.",
                         "Give a folder with two sub-folders (e.g. MRI/ and CT/) of images with matching names.")
    pairs: list[tuple[Path, Path]] = []
    skipped: list[str] = []
    unmatched: list[str] = []
    claimed: list[Path] = []  # modality folders, whose whole trees are one side of a pair folder
    folders = [root]
    for here, dirs, _ in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        folders += [Path(here, d) for d in dirs]
    for parent in sorted(folders):
        if any(c == parent or c in parent.parents for c in claimed):
            continue
        subs = _sub_folders(parent)
        if len(subs) != 2:
            if len(subs) > 2 and any(_images_in(d, recursive=False) for d in subs):
                skipped.append(f"'{parent}' ({len(subs)} sub-folders: {', '.join(d.name for d in subs[:4])})")
            continue
        first, second = subs
        if first.name.lower() in _SECOND and second.name.lower() not in _SECOND:
            first, second = second, first
        # MRI/ and CT/ holding a folder per case: pair MRI/p1/x with CT/p1/x. Matching only the files
        # directly inside took MRI/ itself, with its two case folders p1/ and p2/, for a pair folder and
        # trained on MRI/p1/x + MRI/p2/x (and CT/p1/x + CT/p2/x) without a word
        by_path = _is_modality(first) or _is_modality(second)
        if by_path:
            claimed += [first, second]
        else:
            _refuse_two_readings(root, parent, first, second)
        images_a, images_b = _images_in(first, by_path), _images_in(second, by_path)
        pairs.extend((images_a[n], images_b[n]) for n in sorted(images_a.keys() & images_b.keys()))
        unmatched += [str(images[n]) for images in (images_a, images_b)
                      for n in sorted(images.keys() - (images_b if images is images_a else images_a).keys())]
    if not pairs:
        why = (f" Skipped, because a pair folder must hold exactly two image sub-folders: {'; '.join(skipped[:3])}."
               if skipped else "")
        alone = (f" No image has a partner of the same name: {_listed(unmatched)}." if unmatched else "")
        raise InputError(f"No image pairs found below '{root}'.{why}{alone}",
                         "Put pairs in two sub-folders with matching file names, e.g. DIR/MRI/01.png and "
                         "DIR/CT/01.png (2D images or 3D volumes); for three modalities make one folder per "
                         "pairing (e.g. DIR/mr_ct/{MRI,CT}, DIR/mr_pet/{MRI,PET}).")
    if unmatched:
        # a partner saved under another extension or name (01.nii.gz vs 01.nii) silently left the pair out
        warnings.warn(f"{len(unmatched)} image(s) below '{root}' have no partner of the same name in the other "
                      f"sub-folder and are not trained on: {_listed(unmatched)}.", stacklevel=2)
    return pairs


def _listed(paths: Sequence[str], most: int = 5, *, quoted: bool = True) -> str:
    shown = [f"'{p}'" if quoted else p for p in paths[:most]]
    return ", ".join(shown) + (f" and {len(paths) - most} more" if len(paths) > most else "")


def _pairs(count: int) -> str:
    return f"{count} pair{'' if count == 1 else 's'}"


def _refuse_two_readings(root: Path, parent: Path, first: Path, second: Path) -> None:
    """Refuse ``G/A/{X,Y}`` (the pair folder ``parent`` = ``G/A``) when ``G`` holds only ``A`` and ``B`` and
    ``B/{X,Y}`` has files of ``A``'s names: cases A, B of modalities X, Y, or modalities A, B of cases X, Y;
    matching the files inside X/ and Y/ would take the second reading's MRI/p1/x + MRI/p2/x for pairs. Only
    inside ``root``: the folders beside the pairs folder given are not the user's training data."""
    grand = parent.parent
    if parent == root or len(_sub_folders(grand)) != 2:
        return
    sibling = next(d for d in _sub_folders(grand) if d != parent)
    names = {d.name for d in _sub_folders(sibling)}
    if names != {first.name, second.name}:
        return
    shared = set(_images_in(first, False)) & set(_images_in(sibling / first.name, False))
    if shared:
        raise InputError(f"The pairs folder '{grand}' reads two ways: '{parent.name}/' and '{sibling.name}/' each "
                         f"hold '{first.name}/' and '{second.name}/' with the same file names (e.g. "
                         f"'{sorted(shared)[0]}'): cases {parent.name} and {sibling.name} of two modalities, or two "
                         f"modalities {parent.name} and {sibling.name} of cases {first.name} and {second.name}.",
                         "Name the two modality folders after their modality (MRI, CT, PET, SPECT, T1, T2, FLAIR, "
                         "...: such folders pair their files by the path below them), or give the files of different "
                         "cases different names.")


#: A training patch is refused where no sample fills this share of it (the rest is zero padding, see
#: :func:`check_patch_fits`); a patch the samples fill less of only in part is trained on, with a warning.
PATCH_FILL_FLOOR = 0.25


def patch_fill(shapes: Sequence[Sequence[int]], patch_size: int) -> np.ndarray:
    """The share of a ``patch_size`` patch that each sample of spatial shape ``shapes`` fills (the rest is the zero
    padding training adds): the product over its axes of min(side, patch) / patch."""
    sides = np.asarray(shapes, dtype=float)  # one row per sample (a numpy array as it is: no row copied as a list)
    return np.prod(np.minimum(sides, patch_size) / patch_size, axis=1)


def check_patch_fits(shapes: Sequence[Sequence[int]], patch_size: int, multiple: int, named: str,
                     names: Sequence[str] = ()) -> None:
    """Refuse a training patch that every sample fills less than :data:`PATCH_FILL_FLOOR` of, where a smaller one
    would be filled more: each patch would be mostly zeros (training pads a sample to the patch), and its step costs
    memory as the patch's voxels (a patch of 4096 on volumes of 40x48x8 warned that they were padded, then ran out of
    memory). A patch some sample fills a quarter of is trained on with the smaller samples padded, as before
    (:func:`load_pairs` warns): 256x256x24 volumes fill 37.5% of a 3D patch of 64, a thick-slice series' usual shape.
    The smallest patch (:data:`MIN_PATCH`) is trained on whatever it is filled with.

    Args:
        shapes: each sample's spatial shape (pixels or voxels, as the network sees it: a 2D network's slices).
        patch_size: the patch side (``--patch-size``).
        multiple: the network's size multiple (a patch side must be one).
        named: what the samples are, for the message ("2 training pairs").
        names: each sample named for the message (e.g. its file and size), in the order of ``shapes``; () : its
            shape only.

    Raises:
        InputError: no sample fills a quarter of ``patch_size``, which is above the smallest patch, naming the
            sample that fills the most and the largest patch it fills a quarter of.
    """
    unique, first = np.unique(np.asarray([list(shape) for shape in shapes], dtype=np.int64), axis=0,
                              return_index=True)
    fill = patch_fill(unique, patch_size)
    smallest = multiple * math.ceil(MIN_PATCH / multiple)
    if fill.max() >= PATCH_FILL_FLOOR or patch_size <= smallest:
        return
    best = int(np.argmax(fill))
    # the largest side a sample fills a quarter of: the fill only grows as the patch shrinks, so a bisection over the
    # multiples (one side after another had taken 212 s on 100,000 volumes of distinct shapes, patch 16384)
    low, high = smallest // multiple, -(-patch_size // multiple)  # filled enough at low (or nothing is), not at high
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if patch_fill(unique, mid * multiple).max() >= PATCH_FILL_FLOOR else (low, mid)
    fits = low * multiple
    filled, floor = patch_fill(unique, fits).max(), f"{100 * PATCH_FILL_FLOOR:.0f}%"
    if filled >= PATCH_FILL_FLOOR:
        fix = (f"Give --patch-size {fits} (the largest that a sample fills at least {floor} of, a multiple of the "
               f"network's {multiple})" + (" or less" if fits > smallest else ""))
    else:  # not even the smallest patch (a one-slice volume, a strip): it had been named as filled at least 25 %
        fix = (f"Give --patch-size {fits} (the smallest patch, trained on whatever the samples fill of it: "
               f"{100 * filled:.1f}% here)")
    shape = "x".join(map(str, unique[best][::-1]))
    which = names[int(first[best])] if names else shape
    unit = "voxel" if unique.shape[1] == 3 else "pixel"
    raise InputError(f"The {patch_size}-{unit} training patch (--patch-size) is mostly zero padding for every one of "
                     f"the {named}: the one that fills it most, {which}, fills {100 * fill[best]:.1f}% of it (training "
                     "pads each sample to the patch), at the memory of its whole size.", fix + ", or larger images.")


def load_pairs(folder: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
               spatial_dims: int = 2, on_pair: Any = None,
               patch_size: int | None = None, multiple: int = 4, refuse_larger: bool = True,
               ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Read and scale to 0..1 every pair below ``folder`` as fusion scales its inputs (``fusion.unit_scaled``:
    8-bit images divided by 255, colour as its luminance, Y of YCbCr, others min-max).

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
        on_pair: called as each pair is read and scaled, ``on_pair(index, (path_a, path_b), (a, b), eight_bit)``
            (``eight_bit``: an image of it is scaled on the 8-bit scale, not min-max), e.g. a resumed run's
            ``training.PairsCheck``, which refuses other pairs at the first that differs, not after all are read.
        patch_size: the training patch side (``--patch-size``): pairs whose training samples (images, a 2D
            network's slices of a volume) are smaller on a side are named in a warning with their sizes, as
            training pads them with zeros to the patch (they had been padded without a word); a patch larger than
            every pair is refused (:func:`check_patch_fits`). None: no check.
        multiple: the network's size multiple (the default network's 4), for the patch sizes suggested.
        refuse_larger: False: a patch larger than every pair is warned of as one larger than some (a resumed run:
            its checkpoint fixes the patch, and the run began with it on these very pairs).

    Warns:
        Where a 2D network is trained on a folder that mixes 2D images and 3D volumes, naming the volumes and
        what is done with them (cut into slices along their slice axis and trained on beside the 2D images).

    Raises:
        InputError: a patch larger than every pair (see ``patch_size``), an unreadable, empty or non-finite image, a
            pair whose two images are not on
            one grid (size, spacing, origin or direction): the network sees voxel arrays, so a pair
            of the same size placed differently would teach it from misaligned images; or a 2D pair
            for a 3D network (``spatial_dims=3``).
    """
    from ...io import read_image
    from ...validation import check_components, check_image
    from .. import check_same_grid

    out = []
    small: list[str] = []  # pairs smaller than the patch: 'path' (size)
    flat: list[str] = []  # 2D pairs, and 3D ones as 'path' (size): mixed for a 2D network, they are named
    volumes: list[str] = []
    for pa, pb in find_pairs(folder):
        # as fusion reads them (mmfusion fuse/run: keep_color), so that they are scaled as fusion scales them
        a, b = read_image(pa, keep_color=True), read_image(pb, keep_color=True)
        for image, path in ((a, pa), (b, pb)):
            # grey, RGB or RGBA, named by its file (the text read_image gave when it made them grey): unit_scaled
            # below names only "the anatomical image (a)", and a 2-channel .nrrd there "a complex .mha"
            check_components(image, f"image '{path}'", path=path)
            check_image(image, f"training image '{path}'", allow_vector=True)
        check_same_grid(a, b, f"training image '{pa}'", f"training image '{pb}'")
        if spatial_dims == 3 and a.GetDimension() != 3:
            # to_training_samples refused it after every pair had been read, naming no file
            raise InputError(f"The training pair '{pa}' + '{pb}' is {a.GetDimension()}D; a 3D network is trained on "
                             "3D volumes only.",
                             "Move the 2D images out of the pairs folder, or train a 2D network (--spatial-dims 2: "
                             "volumes are cut into slices) on them all.")
        # to_training_samples cuts a volume along axis 0: for a 2D network, the acquisition's slice axis
        axis = slice_axis(a.GetSpacing()[::-1]) if a.GetDimension() == 3 and spatial_dims == 2 else 0
        pair = (_training_scale(a), _training_scale(b, functional=True))
        eight_bit = any(_on_the_8bit_scale(image) for image in (a, b))
        if axis:
            pair = tuple(np.ascontiguousarray(np.moveaxis(arr, axis, 0)) for arr in pair)
        sliced = a.GetDimension() == 3 and spatial_dims == 2
        sample = pair[0].shape[1:] if sliced else pair[0].shape  # (rows, columns) or (z, y, x)
        size = "x".join(map(str, sample[::-1]))
        if patch_size is not None and min(sample) < patch_size:
            small.append(f"'{pa}' ({f'{pair[0].shape[0]} slices of {size}' if sliced else size})")
        if a.GetDimension() == 3:
            volumes.append(f"'{pa}' ({'x'.join(map(str, a.GetSize()))}: {pair[0].shape[0]} slices of {size})")
        else:
            flat.append(str(pa))
        del a, b
        if cache_dir is not None:
            pair = tuple(_mapped(arr, Path(cache_dir) / f"pair{len(out):05d}_{side}.npy")  # type: ignore[assignment]
                         for arr, side in zip(pair, "ab"))
        if on_pair is not None:
            on_pair(len(out), (pa, pb), pair, eight_bit)
        out.append(pair)
    if small:  # MONAI's SpatialPadd below (augmentation): the rest of each patch is zeros
        shapes = [arr.shape[1:] if arr.ndim == 3 and spatial_dims == 2 else arr.shape for arr, _ in out]
        sides = [min(shape) for shape in shapes]
        if len(small) == len(out) and refuse_larger:
            check_patch_fits(shapes, patch_size, multiple, f"{len(out)} training {_pairs(len(out)).split()[1]}",
                             small)
        smallest = min(sides)
        fix = (f"Give a --patch-size of at most {smallest} (their smallest side; e.g. "
               f"{multiple * (smallest // multiple)}, a multiple of the network's {multiple}), or larger images."
               if smallest >= 16 else "Give images of at least 16 pixels a side (the smallest --patch-size).")
        warnings.warn(f"{len(small)} of {len(out)} training pairs are smaller than the {patch_size}-pixel patch "
                      f"(--patch-size) and are padded with zeros to it, so part of every patch drawn from them is "
                      f"padding: {_listed(small, quoted=False)}. {fix}", stacklevel=2)
    if spatial_dims == 2 and flat and volumes:
        warnings.warn(f"The pairs folder '{folder}' mixes 2D images ({_pairs(len(flat))}) and 3D volumes "
                      f"({_pairs(len(volumes))}: {_listed(volumes, quoted=False)}): the 2D network is trained on the 2D images and "
                      "on the volumes cut into slices along their slice axis (slices empty in both images left "
                      "out). To train on one kind, move the other out of the pairs folder (a 3D network, "
                      "--spatial-dims 3, is trained on volumes only).", stacklevel=2)
    return out


def _on_the_8bit_scale(image: sitk.Image) -> bool:
    """Whether :func:`_training_scale` scales ``image`` otherwise than min-max: colour, or 8-bit grey not spanning
    0..255 (one that does is the same either way)."""
    if image.GetNumberOfComponentsPerPixel() > 1:
        return True
    if image.GetPixelID() != sitk.sitkUInt8:
        return False
    view = sitk.GetArrayViewFromImage(image)
    return bool(view.min() != 0 or view.max() != 255)


def _training_scale(image: sitk.Image, *, functional: bool = False) -> np.ndarray:
    """``image`` scaled to 0..1 (float32) as fusion scales it (``fusion.unit_scaled``; README: "8-bit images as
    they are, others min-max"): 8-bit grey divided by 255 and colour by its luminance on the 8-bit scale, where
    training had stretched them min-to-max, so a PNG pair spanning 30..200 was seen brighter and with more
    contrast in training than in fusion. Other grey images are min-max scaled in float32 by :func:`normalize`, as
    before (the same arrays, so checkpoints of earlier runs on them resume)."""
    from .. import unit_scaled

    if image.GetNumberOfComponentsPerPixel() > 1 or image.GetPixelID() == sitk.sitkUInt8:
        return unit_scaled(image, functional=functional).astype(np.float32)
    if image.GetPixelID() != sitk.sitkFloat32:
        image = sitk.Cast(image, sitk.sitkFloat32)  # as read_image(float32=True) cast it
    return normalize(sitk.GetArrayFromImage(image))[0]


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
