"""Registration: rigid, affine and B-spline (SimpleITK backend; a torch backend on request).

Example::

    from MultimodalFusionLib import io, registration
    result = registration.register(io.read_image("ct.nii.gz"), io.read_image("mr.nii.gz"), preset="ct-mr-head")
    print(result.metric_before, result.metric_after, result.warnings)
    io.write_transform(result.transform, "mr_to_ct.tfm")
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import InputError, itk_guard
from ..progress import ProgressCallback
from ..validation import MIN_CONTENT_VOXELS, check_mask, check_min_axis, check_pair
from .parameters import (
    MAX_SEED,
    STAGE_TYPES,
    RegistrationParameters,
    StageParameters,
    check_seed,
    default_stage,
    list_presets,
    load_preset,
    presets_dir,
)
from .result import RegistrationResult, StageResult

__all__ = [
    "register",
    "check_one_start",
    "resolve_parameters",
    "MAX_SEED",
    "check_seed",
    "RegistrationParameters",
    "StageParameters",
    "RegistrationResult",
    "StageResult",
    "default_stage",
    "load_preset",
    "list_presets",
    "presets_dir",
    "BACKENDS",
    "padding_filled",
    "working_copies",
]

BACKENDS = ("sitk", "torch")


def register(fixed: sitk.Image, moving: sitk.Image, parameters: RegistrationParameters | None = None, *,
             preset: str | None = None, stages: Sequence[str] | None = None,
             fixed_mask: sitk.Image | None = None, moving_mask: sitk.Image | None = None,
             initial_transform: sitk.Transform | str | os.PathLike | None = None, seed: int | None = None,
             progress: ProgressCallback | None = None, backend: str = "sitk",
             initializer: str | None = None, initial_transform_name: str | None = None) -> RegistrationResult:
    """Register ``moving`` to ``fixed``: find T mapping fixed-space points into the moving image.

    Args:
        fixed: the reference image (2D or 3D).
        moving: the image to align (same dimension, any modality).
        parameters: full settings; default: ``preset`` if given, else one rigid stage with Mattes MI (on
            backend "torch" the ``TorchRegistrationParameters`` defaults: one rigid stage, its own mutual
            information with 32 bins, the "geometry" start; see :func:`resolve_parameters`).
        preset: a preset name from ``list_presets()`` (e.g. "ct-mr-head"), used when ``parameters`` is None.
        stages: run these stages (e.g. ``["rigid", "affine", "bspline"]``), keeping the settings the
            parameters/preset define for them and defaults for the others.
        fixed_mask: metric region in the fixed image (same grid as ``fixed``).
        moving_mask: metric region in the moving image (same grid as ``moving``).
        initial_transform: a transform (or transform file) to start from, replacing the initializer (so not
            with ``initializer`` but "search", which is refused with it too).
        seed: seed of the random metric sampling (overrides the parameters' seed); the same seed and
            inputs give bit-identical transforms (the sitk backend then runs its metric on one ITK
            thread unless ``parameters.number_of_threads`` says otherwise, which gives that up).
        progress: ``progress(fraction, message)``; returning False cancels (OperationCancelled).
        backend: "sitk" (SimpleITK) or "torch" (GPU-capable backend, when installed).
        initializer: "moments", "geometry", "none" or "search" (overrides the parameters'/preset's).
            "search" starts from the centres of mass and tries a grid of rotations at a coarse level
            first (rigid or affine first stage; on the torch backend too): for images rotated beyond the rigid
            stage's capture range of about 30 degrees (README, "Capture range").
        initial_transform_name: how the warnings name ``initial_transform`` (the CLI its file, the Slicer Logic
            its node); default: its path when it is one, else "initial_transform".

    Returns:
        RegistrationResult: the transform (linear, or a composite ending in a B-spline), metric
        before/after, per-stage iterations, stop reasons, timings and warnings (among them, first, a note
        when ``initial_transform`` holds a displacement field that leaves more than 1% of the fixed image's
        voxels outside its grid: the registration starts from no move there; see
        :func:`preprocess.field_coverage_notes`).

    Raises:
        InputError: bad images, masks, parameters, preset or backend.
        RegistrationError: the optimisation could not run (e.g. images drifted apart).
        OperationCancelled: the progress callback asked to stop.
    """
    parameters = resolve_parameters(parameters, preset=preset, stages=stages, seed=seed, initializer=initializer,
                                    backend=backend)
    check_one_start(initializer, parameters.initializer,
                    "an initial transform" if initial_transform is not None else None,
                    "initializer=None, or initial_transform=None")
    if isinstance(initial_transform, (str, os.PathLike)):
        from ..io import read_transform

        initial_transform_name = initial_transform_name or os.fspath(initial_transform)
        initial_transform = read_transform(initial_transform)
    # The geometry/moments initializers align the image centres, so only a registration that starts
    # from the headers' placement (initializer "none" or a given transform) needs overlap up front.
    needs_overlap = initial_transform is not None or parameters.initializer == "none"
    check_pair(fixed, moving, transform=initial_transform, require_overlap=needs_overlap)
    check_min_axis(fixed, moving)
    fixed_mask = check_mask(fixed_mask, fixed, "fixed mask", "fixed image") if fixed_mask is not None else None
    moving_mask = check_mask(moving_mask, moving, "moving mask", "moving image") if moving_mask is not None else None
    from ..preprocess import field_coverage_notes

    # where a displacement field does not reach, the registration starts from no move: said here, for every front
    # end (the CLI had said so for register --initial-transform alone; Python and the Slicer Logic said nothing)
    coverage = [] if initial_transform is None else field_coverage_notes(
        [initial_transform_name or "initial_transform"], [initial_transform], False, fixed, "fixed image",
        "Start from a field that covers the fixed image (ANTs writes its warp on the fixed image's grid).")

    # each backend makes its working copies itself (working_copies: float32, the padding filled, the sparse-content
    # warnings), once, as it warns about masks of few voxels itself: register_sitk and register_torch are public too
    if backend == "torch":
        try:
            from .torch_backend import register_torch
        except ImportError as exc:
            raise InputError(f"The torch registration backend is not available ({exc}).",
                             "Install the deep-learning extra (pip install 'slicer-multimodalfusion[deep]') "
                             "or use backend='sitk'.") from exc
        result = register_torch(fixed, moving, parameters, fixed_mask=fixed_mask, moving_mask=moving_mask,
                                initial_transform=initial_transform, seed=parameters.seed, progress=progress)
        result.warnings[:0] = coverage
        return result
    from .sitk_backend import register_sitk

    result = register_sitk(fixed, moving, parameters, fixed_mask=fixed_mask, moving_mask=moving_mask,
                           initial_transform=initial_transform, progress=progress)
    result.warnings[:0] = coverage
    return result


def working_copies(fixed: sitk.Image, moving: sitk.Image) -> tuple[sitk.Image, sitk.Image, list[str]]:
    """The images a backend registers, made once per registration by ``register_sitk`` and ``register_torch``
    (after their checks; :func:`register` leaves it to them): each cast to float32 with its padding filled
    (:func:`padding_filled`), and the warnings about images of little structure (:func:`sparse_content_warnings`)
    on those copies. Both backends are public: only register() had filled the padding, so a padded CT given to
    either backend directly was registered with its -32768 (3 mm MNI, rigid: 8.5 mm off on the SimpleITK backend,
    5.9 mm on the torch one, where register() ends 0.7 and 1.0 mm off)."""
    with itk_guard("preparing the images for registration"):
        fixed_f = padding_filled(sitk.Cast(fixed, sitk.sitkFloat32))
        moving_f = padding_filled(sitk.Cast(moving, sitk.sitkFloat32))
    return fixed_f, moving_f, sparse_content_warnings(fixed_f, moving_f)


def padding_filled(image: sitk.Image) -> sitk.Image:
    """A copy of ``image`` (a float32 working copy: :func:`working_copies`) with its padding
    (:func:`preprocess.padding_mask`: -32768 outside a CT's reconstruction circle, with its interpolated rim) set to
    its lowest value that is no padding, so that the metric sees air where the scanner saw nothing; ``image``
    itself when it has none.

    The registration's working copies only (cast to float32 first): the inputs, and the
    moving image resampled through the result, keep their values. Left as they were, Mattes MI's histogram
    (its bins span the image's min..max: 50 bins of ~715 HU from -32768..3000, air and all soft tissue in 2-3 of
    them) and the torch backend's MI saw the padding's edge rather than the anatomy: a 2 mm MNI head CT, int16,
    padded outside a circle round the head (6% of each slice), registered to its T1 rigidly ended 8.5 mm off
    (sitk) and 8.1 mm (torch) where the same CT with its padding at its lowest HU ends 0.9 and 0.6 mm off."""
    from ..preprocess import padding_mask

    values = sitk.GetArrayViewFromImage(image)
    mask = padding_mask(values)
    if mask is None or mask.all():
        return image
    with np.errstate(invalid="ignore"):
        lowest = float(np.min(values, where=~mask & np.isfinite(values), initial=np.inf))
    if not np.isfinite(lowest):
        return image
    arr = sitk.GetArrayFromImage(image)
    arr[mask] = lowest
    filled = sitk.GetImageFromArray(arr)
    filled.CopyInformation(image)
    for key in image.GetMetaDataKeys():
        filled.SetMetaData(key, image.GetMetaData(key))
    return filled


def check_one_start(named: str | None, settings: str | None, transform: str | None, give_one: str) -> None:
    """Refuse an initializer beside an initial transform, which replaces it: one the caller named (``named``)
    would be ignored without a word, and a "search" in the settings (``settings``: their initializer, a preset's
    too) starts from the centres of mass; a preset's other initializer is replaced (the user did not name it).
    ``transform`` names the initial transform for the message (None: none was given); ``give_one`` is the fix's
    choice in the caller's words (arguments, flags or nodes). The one text for register(), the CLI and the Slicer
    Logic (the CLI and the Logic pass register() their resolved settings, not the name, so they check the name
    themselves); register() had named the CLI's flags in the search's fix to every caller."""
    initializer = named or (settings if settings == "search" else None)
    if transform is None or not initializer:
        return
    why = ("the search starts from the centres of mass, and the initial transform replaces any initializer"
           if initializer == "search" else "the initial transform replaces the initializer, which would be ignored")
    raise InputError(f"Both the '{initializer}' initializer and {transform} were given: {why}.",
                     f"Give one of them ({give_one}).")


#: Above this many voxels of structure, its edges are not counted (a flat region that large has more than
#: MIN_CONTENT_VOXELS voxels at its edges: 4 sqrt(N) in 2D)
_EDGE_CHECK_LIMIT = 5000


def _edge_voxels(arr: np.ndarray, structure: np.ndarray) -> int:
    """Voxels whose value differs from a face neighbour's: the edges of the structure, where an intensity metric
    has something to align. Two voxels at the background (the image's most common value, :func:`_structure`)
    never differ, so every such pair holds a ``structure`` voxel: only those voxels and their face neighbours
    are looked at (a few thousand), never the box around them, which two small objects far apart make the whole
    volume (three differences of a 512x512x300 volume: 1.8 s and 565 MiB more at the peak for a pair of
    fiducial-marker images)."""
    where = np.nonzero(structure)
    shape = arr.shape
    centre = np.stack(where, axis=1)  # (count, ndim) indices of the structure's voxels
    values = arr[where]
    edge = [np.zeros(0, np.int64)]
    for axis in range(arr.ndim):
        for step in (-1, 1):
            other = centre.copy()
            other[:, axis] += step
            inside = (other[:, axis] >= 0) & (other[:, axis] < shape[axis])
            differs = np.zeros(len(centre), bool)
            differs[inside] = arr[tuple(other[inside].T)] != values[inside]
            edge.append(np.ravel_multi_index(tuple(centre[differs].T), shape))
            edge.append(np.ravel_multi_index(tuple(other[differs].T), shape))
    return int(np.unique(np.concatenate(edge)).size)


#: Voxels of the evenly spaced sample that :func:`_structure` looks at first
_STRUCTURE_SAMPLE = 100_000


def _structure(arr: np.ndarray) -> tuple[np.ndarray, int, str] | None:
    """(structure, count, side): the voxels that differ from the image's background, their count, and where they
    lie: "above", "below" or (on both sides) "differing from" it; None where every value leaves
    :data:`_EDGE_CHECK_LIMIT` voxels or more differing from it (nothing to warn about).

    The background is the image's most common value: the black field of a bright object, the bright field of a
    dark one (counted above the minimum only, a dark 9x9 or 13x13 square on a bright 96x96 field, which
    registers as badly as the bright one on black, 0.3-3.6 px off with the seed, benchmarks/sparse_content.py,
    was some 9,000 voxels of structure and never warned about). It had been the minimum or the maximum,
    whichever left fewer voxels: one voxel beyond the field's value (a bright 13x13 square on black with one
    voxel at -5, the dark one with one voxel at 200) made the whole field structure, and neither was warned
    about, nor a small object on a grey field.

    An evenly spaced sample of the voxels is looked at first: every value leaves at least as many voxels of the
    image differing from it as of the sample, so a sample whose most common value leaves that many settles it
    for a real image without reading the volume. Otherwise the background can only be that value: one that
    leaves fewer than :data:`_EDGE_CHECK_LIMIT` voxels of the image differing from it holds over 95% of the
    sample (of 100,000 voxels or more), more than any other value."""
    flat = arr.reshape(-1)
    step = flat.size // _STRUCTURE_SAMPLE
    sample = flat[::step] if step > 1 else flat
    values, counts = np.unique(sample, return_counts=True)
    top = int(np.argmax(counts))  # the lowest of equally common values, e.g. the black half of a half-white image
    if sample.size - int(counts[top]) >= _EDGE_CHECK_LIMIT:
        return None
    background = values[top]
    structure = arr != background
    count = int(np.count_nonzero(structure))
    if count >= _EDGE_CHECK_LIMIT:
        return None
    differing = arr[structure]
    side = ("above" if bool((differing > background).all())
            else "below" if bool((differing < background).all()) else "differing from")
    return structure, count, side


def sparse_content_warnings(fixed: sitk.Image, moving: sitk.Image) -> list[str]:
    """A warning for each image with structure in fewer than :data:`MIN_CONTENT_VOXELS` voxels (those
    differing from its background, its most common value: the black field of a bright object, the bright field
    of a dark one, see :func:`_structure`): a metric of intensities has almost nothing to align there, so the result changes
    with the sampling seed, without an error (e.g. a single bright voxel). Also for an image whose structure is
    a small region of one value with fewer than that many voxels at its edges (where the value changes): a flat
    13x13 square on a 96x96 field ended 0.2-3.6 px off with the seed, not warned about as its 169 voxels passed
    the count."""
    out = []
    for name, image in (("fixed", fixed), ("moving", moving)):
        arr = sitk.GetArrayViewFromImage(image)
        found = _structure(arr)
        if found is None:
            continue
        structure, count, side = found
        if count < MIN_CONTENT_VOXELS:
            out.append(f"The {name} image holds structure in only {count} voxel(s) ({side} its background): "
                       "intensity-based registration has almost nothing to align, and its result varies with the "
                       "sampling seed. Check the image, or register images with more content (e.g. the "
                       "anatomical series) and apply that transform.")
            continue
        edges = _edge_voxels(arr, structure)
        if edges < MIN_CONTENT_VOXELS:
            out.append(f"The {name} image's structure ({count} voxels {side} its background) is of nearly one "
                       f"value, with only {edges} voxel(s) at its edges where the value changes: "
                       "intensity-based registration has little to align, and its result varies with the "
                       "sampling seed. Check the image, or register images with more content (e.g. the "
                       "anatomical series) and apply that transform.")
    return out


def resolve_parameters(parameters: RegistrationParameters | Any = None, *, preset: str | None = None,
                       stages: Sequence[str] | str | None = None, seed: int | None = None,
                       initializer: str | None = None, backend: str = "sitk") -> Any:
    """The settings :func:`register` runs with, from its arguments (the preset file is read here, once).

    Front ends that need to know the settings before registering (the Slicer Logic looks at the
    initializer) call this and pass its result on to :func:`register` as ``parameters``, which then
    runs with exactly these settings.

    Args:
        parameters: full settings (a ``RegistrationParameters``, the torch backend's
            ``TorchRegistrationParameters``, or the dict form of the ``backend``'s settings), or None.
        preset, stages, seed, initializer, backend: as for :func:`register`.

    Returns:
        The validated settings: ``parameters`` (or the preset, or the backend's defaults: for "torch" a
        ``TorchRegistrationParameters`` with one rigid stage and the "geometry" initializer) with ``stages``,
        ``seed`` and ``initializer`` applied; a dict becomes the backend's settings object.

    Raises:
        InputError: an unknown backend or preset, both parameters and a preset, settings of another
            type than the backend takes (a preset name, torch settings for backend 'sitk'), or bad settings.
    """
    if backend not in BACKENDS:
        raise InputError(f"Unknown registration backend '{backend}'.", f"Use one of: {', '.join(BACKENDS)}.")
    if parameters is None and not preset and backend == "torch":
        # the torch backend's own defaults (README, "Registration on PyTorch"), with register()'s stage and
        # start (one rigid stage from the image centres, as on the SimpleITK backend). They had been the
        # SimpleITK defaults converted by torch_parameters, whose histogram bins it keeps: the torch run took
        # the SimpleITK stage's bins (50 bins until 1ab54c9 gave the sitk rigid stage 32, which moved a torch
        # rigid result from 0.81 to 1.15 mm; 50 for an affine first stage), not its own 32.
        from .torch_backend import TorchRegistrationParameters

        parameters = TorchRegistrationParameters(stages=["rigid"], initializer="geometry", name="default")
    elif parameters is None:
        parameters = load_preset(preset) if preset else RegistrationParameters()
    elif preset:
        raise InputError("Both parameters and a preset were given.", "Give one of them.")
    if isinstance(parameters, dict):  # the dict form of either backend's settings
        if backend == "torch":
            from .torch_backend import torch_parameters

            parameters = torch_parameters(parameters)
        else:
            parameters = RegistrationParameters.from_dict(parameters)
    if backend == "torch":
        from .torch_backend import TorchRegistrationParameters

        kinds: tuple[type, ...] = (RegistrationParameters, TorchRegistrationParameters)
    else:
        kinds = (RegistrationParameters,)
    if not isinstance(parameters, kinds):  # e.g. a preset name, or torch settings for the sitk backend
        given = repr(parameters) if isinstance(parameters, str) else f"of type {type(parameters).__name__}"
        raise InputError(f"Registration parameters {given} cannot run on the '{backend}' backend.",
                         "Give a RegistrationParameters or its dict form (a TorchRegistrationParameters or its "
                         "dict form with backend='torch'), or a preset name as preset=... (CLI --preset).")
    if isinstance(stages, str):
        stages = [s for s in stages.split(",") if s.strip()]
    if isinstance(stages, (list, tuple)) and not any(str(s).strip() for s in stages):
        # --stages "" and stages=[] had run the preset's (the default rigid) stages without a word
        from .torch_backend import TORCH_STAGES

        raise InputError("No registration stage given (an empty list of stages).",
                         f"Give at least one of {', '.join(TORCH_STAGES if backend == 'torch' else STAGE_TYPES)} "
                         "(e.g. --stages rigid,affine), or leave stages out for the preset's (the default: rigid).")
    if stages:
        if backend == "torch" and isinstance(parameters, RegistrationParameters):
            # the torch backend's own stage names (README): its deformable stage stands in for bspline
            stages = ["bspline" if str(s).strip().lower() in ("deformable", "syn", "diffeomorphic") else s
                      for s in stages]
        parameters = parameters.with_stages(stages)
    if seed is not None:  # checked before int(): 1.5, True and "1" had run as seed 1
        parameters = dataclasses.replace(parameters, seed=check_seed(seed))
    if initializer:
        parameters = dataclasses.replace(parameters, initializer=str(initializer))
    parameters.validate()
    return parameters
