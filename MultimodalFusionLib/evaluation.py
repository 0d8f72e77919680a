"""A registration's accuracy from label-map and landmark files: the one reading, checking and scoring that
``mmfusion evaluate-registration`` and ``mmfusion run`` (:func:`pipeline.run`) share.

The scores are :func:`metrics.evaluate_registration`'s (Dice, Jaccard, HD95, Hausdorff, mean surface distance
of labels, TRE of landmarks, MI/NMI/NCC of the images, each before and after the transform); this module reads
their inputs as the command line names them (label maps or 3D Slicer ``.seg.nrrd`` files, landmark files of
Slicer, elastix or ANTs; :mod:`segmentations`, :mod:`landmarks`), refuses a bad one before any work, and adds
to the result what was read (how labels were matched, their names, the landmark files).

Example::

    from MultimodalFusionLib import evaluation
    inputs = evaluation.read_accuracy_inputs(fixed, moving, fixed_landmarks="f.fcsv", moving_landmarks="m.csv")
    result = evaluation.evaluate_accuracy(fixed, moving, transform, inputs)
    print(result["landmarks"]["after"]["mean"])
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Sequence, Union

import SimpleITK as sitk

from .errors import DimensionMismatch, InputError

__all__ = ["AccuracyInputs", "check_accuracy_options", "read_accuracy_inputs", "read_slice_accuracy_inputs",
           "on_slice_planes", "evaluate_accuracy",
           "accuracy_input_paths"]

#: A label map: a file (a label map or a ``.seg.nrrd``) or an image.
LabelsSource = Union[str, "os.PathLike[str]", sitk.Image]


@dataclass
class AccuracyInputs:
    """The label maps and landmarks of an evaluation, read and checked (:func:`read_accuracy_inputs`).

    Attributes:
        fixed_labels, moving_labels: the label maps (None: no labels), each one image or, where segments of a
            ``.seg.nrrd`` overlap, its layers (a list of label maps on one grid, :func:`metrics.label_layers`).
        labels: the labels to score (None: every label in both maps).
        pairing: how the label files were paired (:func:`segmentations.label_maps_for_evaluation`'s info:
            ``matched``, ``label_names``, ``notes``, ``empty``).
        fixed_landmarks, moving_landmarks: :class:`landmarks.Landmarks` or (n, dim) arrays (None: no landmarks).
        slice_planes: where label maps and landmarks of one-slice volumes were taken into the 2D frames of their
            slices (:func:`on_slice_planes`): each slice's plane (``metrics.slice_plane_inputs``); None otherwise.
    """

    fixed_labels: sitk.Image | list[sitk.Image] | None = None
    moving_labels: sitk.Image | list[sitk.Image] | None = None
    labels: list[Any] | None = None
    pairing: dict[str, Any] = field(default_factory=lambda: {"label_names": {}, "notes": [], "empty": []})
    fixed_landmarks: Any = None
    moving_landmarks: Any = None
    slice_planes: dict[str, Any] | None = None


def _is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def check_accuracy_options(*, fixed_labels: Any = None, moving_labels: Any = None, labels: Any = None,
                           fixed_landmarks: Any = None, moving_landmarks: Any = None) -> None:
    """Refuse a label map or landmark file given without its partner, and labels without label maps: the words of
    ``mmfusion evaluate-registration`` and ``mmfusion run`` alike, before anything is read."""
    for a, b, x, y in (("fixed-labels", "moving-labels", fixed_labels, moving_labels),
                       ("fixed-landmarks", "moving-landmarks", fixed_landmarks, moving_landmarks)):
        if (x is None) != (y is None):
            given, missing = (a, b) if x is not None else (b, a)
            raise InputError(f"--{given} was given without --{missing}.", "Give both (fixed and moving), or neither.")
    if labels is not None and fixed_labels is None:
        raise InputError("--labels was given without label maps.", "Give --fixed-labels and --moving-labels too.")


def accuracy_input_paths(*values: Any) -> list[str]:
    """The files among label map and landmark sources (the others are images or points): inputs an output must
    not overwrite."""
    return [os.fspath(v) for v in values if _is_path(v)]


def read_accuracy_inputs(fixed: sitk.Image, moving: sitk.Image, *, fixed_labels: LabelsSource | None = None,
                         moving_labels: LabelsSource | None = None, labels: str | Sequence[Any] | None = None,
                         fixed_landmarks: Any = None, moving_landmarks: Any = None) -> AccuracyInputs | None:
    """Read the label maps and landmarks of an evaluation and check them against the images, as
    :func:`metrics.evaluate_registration` would: every refusal it would make whatever the transform is made here.

    Args:
        fixed, moving: the images evaluated (an elastix ``index`` landmark file is read through its image).
        fixed_labels, moving_labels: label map files or ``.seg.nrrd`` files (two ``.seg.nrrd``: segments matched
            by name, :func:`segmentations.label_maps_for_evaluation`; overlapping segments each scored as its own
            binary mask), or images (or lists of label maps in layers, :func:`metrics.label_layers`).
        labels: the labels to score, "1,2" or a list (segment names where both label files are ``.seg.nrrd``), read
            by :func:`segmentations.asked_labels` ("1.0" is label 1; a name where labels match by number, 0 and an
            empty list are refused).
        fixed_landmarks, moving_landmarks: landmark files (:func:`landmarks.read_landmarks`), or
            :class:`landmarks.Landmarks`, or (n, dim) arrays of LPS mm.

    Returns:
        The inputs read, or None when neither labels nor landmarks were given.

    Raises:
        InputError: one of a pair missing, a file that cannot be read as what it should hold, labels in neither
            map, landmark files that do not pair, or inputs of another dimension than the images.
    """
    from .metrics import check_evaluation_inputs

    check_accuracy_options(fixed_labels=fixed_labels, moving_labels=moving_labels, labels=labels,
                           fixed_landmarks=fixed_landmarks, moving_landmarks=moving_landmarks)
    if fixed_labels is None and fixed_landmarks is None:
        return None
    out = AccuracyInputs()
    if fixed_labels is not None:
        if _is_path(fixed_labels) and _is_path(moving_labels):
            from .segmentations import label_maps_for_evaluation

            out.fixed_labels, out.moving_labels, out.labels, out.pairing = label_maps_for_evaluation(
                os.fspath(fixed_labels), os.fspath(moving_labels), labels)
        else:
            from .io import read_image
            from .segmentations import asked_labels

            out.fixed_labels, out.moving_labels = (read_image(os.fspath(v)) if _is_path(v) else v
                                                   for v in (fixed_labels, moving_labels))
            out.labels = asked_labels(labels)  # label maps: matched by number
    if fixed_landmarks is not None:
        from .landmarks import read_landmarks

        out.fixed_landmarks, out.moving_landmarks = (
            read_landmarks(points, image) if _is_path(points) else points
            for points, image in ((fixed_landmarks, fixed), (moving_landmarks, moving)))
    from .io import one_slice_axis

    if fixed.GetDimension() != moving.GetDimension() and any(one_slice_axis(i) is not None for i in (fixed, moving)):
        # a one-slice volume and a 2D image (register takes the pair as two 2D images): the inputs are checked in
        # the slice's 2D frame, where they are scored; as they are, a one-slice image's 3D landmarks against the
        # 2D image's 2D ones had been refused ('Landmark lists do not correspond ((4, 3) fixed vs (4, 2) moving
        # points)')
        from .metrics import slice_plane_inputs

        flat = slice_plane_inputs(fixed, moving, fixed_labels=out.fixed_labels, moving_labels=out.moving_labels,
                                  fixed_landmarks=out.fixed_landmarks, moving_landmarks=out.moving_landmarks)
        check_evaluation_inputs(flat["fixed"], flat["moving"], fixed_labels=flat["fixed_labels"],
                                moving_labels=flat["moving_labels"], fixed_landmarks=flat["fixed_landmarks"],
                                moving_landmarks=flat["moving_landmarks"], labels=out.labels)
        return out  # as read: metrics.evaluate_registration takes them into the slice's frame
    check_evaluation_inputs(fixed, moving, fixed_labels=out.fixed_labels, moving_labels=out.moving_labels,
                            fixed_landmarks=out.fixed_landmarks, moving_landmarks=out.moving_landmarks,
                            labels=out.labels)
    return out


def on_slice_planes(fixed: sitk.Image, moving: sitk.Image, volumes: tuple[sitk.Image, sitk.Image],
                    inputs: AccuracyInputs) -> AccuracyInputs:
    """The label maps and landmarks of one-slice volumes, read against them (:func:`read_accuracy_inputs` of
    ``volumes``), in the 2D frames of their slices (:func:`metrics.slice_plane_inputs`: a label map on its image's
    slice as the 2D label map it is, 3D landmarks within half a slice depth of the plane as points of the slice),
    checked against ``fixed`` and ``moving``, the 2D images of those slices that were registered: the 2D transform
    of their registration (fixed -> moving points) then applies to them exactly, as to 2D images' inputs.

    Raises:
        InputError: what :func:`metrics.slice_plane_inputs` refuses (a label map not on its slice, a landmark off
            its slice's plane, named with its distance).
    """
    import dataclasses

    from .metrics import check_evaluation_inputs, slice_plane_inputs

    flat = slice_plane_inputs(*volumes, fixed_labels=inputs.fixed_labels, moving_labels=inputs.moving_labels,
                              fixed_landmarks=inputs.fixed_landmarks, moving_landmarks=inputs.moving_landmarks)
    out = dataclasses.replace(inputs, fixed_labels=flat["fixed_labels"], moving_labels=flat["moving_labels"],
                              fixed_landmarks=flat["fixed_landmarks"], moving_landmarks=flat["moving_landmarks"],
                              slice_planes=flat["planes"])
    check_evaluation_inputs(fixed, moving, fixed_labels=out.fixed_labels, moving_labels=out.moving_labels,
                            fixed_landmarks=out.fixed_landmarks, moving_landmarks=out.moving_landmarks,
                            labels=out.labels)
    return out


def read_slice_accuracy_inputs(fixed: sitk.Image, moving: sitk.Image, volumes: tuple[sitk.Image, sitk.Image],
                               **sources: Any) -> AccuracyInputs | None:
    """:func:`read_accuracy_inputs` for ``fixed`` and ``moving``, the 2D images of one-slice volumes' slices
    (``volumes``, as read: ``io.one_slice_as_2d``) scored through a 2D transform (``mmfusion run`` registers them so;
    ``evaluate-registration`` scores them so, :func:`metrics.scored_on_slice_planes`). Their label maps and 3D
    landmarks are read against the volumes and taken into the slices' 2D frames (:func:`on_slice_planes`); those
    refused there for being 2D (:class:`~MultimodalFusionLib.errors.DimensionMismatch`: 2D label maps on the slices'
    2D images, 2D points, as a DICOM file of one slice had been read as its 2D image) are read against the 2D images
    instead, and scored as on them. Images with no one-slice volume: :func:`read_accuracy_inputs` of the images.

    Raises:
        InputError: in the words of the frame the inputs were given in: a 2D input's own fault in the 2D check's,
            any other in the one-slice volumes' (:func:`on_slice_planes`).
    """
    from .io import one_slice_axis

    if all(one_slice_axis(v) is None for v in volumes):
        return read_accuracy_inputs(fixed, moving, **sources)
    # one-slice volumes had been refused with labels or landmarks ("their accuracy is not measured in the run")
    try:
        return on_slice_planes(fixed, moving, volumes, read_accuracy_inputs(*volumes, **sources))
    except InputError as on_volumes:
        # or given in the slices' 2D frames, on the 2D images registered (2D label maps, 2D points): run took them so,
        # reading a DICOM file of one slice as 2D (before it read it as the one-slice volume it is, which refused them:
        # "label map is 2D but ... image is 3D"), and so did evaluate-registration
        try:
            return read_accuracy_inputs(fixed, moving, **sources)
        except InputError as on_slices:
            # the words of the frame the inputs were given in: a 2D input's own fault, else the one-slice volumes'
            raise (on_slices if _given_in_2d(on_volumes) else on_volumes) from None


def _given_in_2d(refusal: InputError) -> bool:
    """Whether ``refusal`` (of label maps or landmarks checked against one-slice volumes) refused them for being 2D
    (:class:`~MultimodalFusionLib.errors.DimensionMismatch`: "The fixed label map is 2D but ...", "... is a 2D image
    but ...", "The landmarks are 2D but ...")."""
    return isinstance(refusal, DimensionMismatch) and refusal.given_dimension == 2


def evaluate_accuracy(fixed: sitk.Image, moving: sitk.Image, transform: sitk.Transform | None,
                      inputs: AccuracyInputs) -> dict[str, Any]:
    """:func:`metrics.evaluate_registration` of ``inputs`` through ``transform`` (fixed -> moving points; None:
    the identity), with what was read: ``label_matching`` ("name" or "number") and ``label_names`` of label files,
    their notes before the engine's (segments named in them), labels of empty segments in ``left_out``, and
    ``landmark_files`` (path, format, coordinates as read, points) of landmark files. ``mmfusion
    evaluate-registration --json`` prints this dict, and ``mmfusion run`` writes it to ``metrics.json`` as
    ``registration_accuracy``."""
    from .landmarks import Landmarks
    from .metrics import evaluate_registration
    from .segmentations import with_segments

    result = evaluate_registration(fixed, moving, transform, fixed_labels=inputs.fixed_labels,
                                   moving_labels=inputs.moving_labels, fixed_landmarks=inputs.fixed_landmarks,
                                   moving_landmarks=inputs.moving_landmarks, labels=inputs.labels)
    if inputs.fixed_labels is not None:
        paired = inputs.pairing
        if "matched" in paired:
            result["label_matching"] = paired["matched"]
        # segments listed in a header with no voxel: in neither map, so neither scored nor left out by the engine
        with_segments(result, paired.get("label_names") or {}, paired.get("empty", []))
        result["notes"] = list(paired.get("notes", [])) + result["notes"]
    if inputs.slice_planes:  # scored in the 2D frames of one-slice volumes' slices (on_slice_planes)
        result["slice_planes"] = inputs.slice_planes
    if isinstance(inputs.fixed_landmarks, Landmarks) and isinstance(inputs.moving_landmarks, Landmarks):
        result["landmark_files"] = {role: {"path": lm.path, "format": lm.format, "read_as": lm.coordinate_system,
                                           "points": len(lm)} for role, lm in (("fixed", inputs.fixed_landmarks),
                                                                               ("moving", inputs.moving_landmarks))}
    return result
