"""Segments matched by name, from Slicer segmentation nodes or 3D Slicer ``.seg.nrrd`` files; no Slicer import.

A ``.seg.nrrd`` is a NRRD whose header lists its segments (``Segment<i>_ID``, ``_Name``, ``_LabelValue``,
``_Layer``, ``_Extent``; SimpleITK exposes them as the image's metadata). Its voxels are one layer per component:
segments that do not overlap share a layer, each its ``LabelValue`` there; overlapping ones are saved in several
layers (a multi-component file). A segment is read as 3D Slicer's ``vtkMRMLSegmentationStorageNode`` reads it: the
voxels of its layer's component that hold its label value, within its extent (a layer defaults to the segment's
index and a label value to 1, as in files written before those keys existed).

The rule that pairs two segmentations' segments (by exact name, one label number per name) is
:func:`match_by_name`, used by the Slicer Logic on nodes and by ``mmfusion evaluate-registration`` on files.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk

from .errors import InputError

__all__ = ["Segment", "SegmentationFile", "header_segments", "read_segmentation_file", "check_segment_names",
           "asked_labels", "match_by_name", "near_name_notes", "empty_segment_note", "named_note",
           "with_segments", "add_to_layers", "layer_images",
           "label_maps_for_evaluation"]


def check_segment_names(pairs: Sequence[tuple[str, str]], owner: str) -> list[tuple[str, str]]:
    """(segment ID, name) pairs of one segmentation (``owner``: how to name it, e.g. "Segmentation 'CT seg'"),
    two segments of one name, and none at all, refused."""
    seen: set[str] = set()
    for _, name in pairs:
        if name in seen:
            raise InputError(f"{owner} has two segments named '{name}'; segments of the two segmentations are "
                             "matched by name.", "Rename one of them (Segment Editor).")
        seen.add(name)
    if not pairs:
        raise InputError(f"{owner} has no segment.", "Segment the structures to compare (Segment Editor) first.")
    return list(pairs)


#: Where segment names are matched: the hint of a refusal of a name where labels are matched by number.
_NAMES_WHERE = ("label maps are matched by label number, segment names only between two 3D Slicer segmentations "
                "(two .seg.nrrd files, or two segmentation nodes)")


def asked_labels(labels: str | Sequence[Any] | None, segment_names: Sequence[str] | None = None
                 ) -> list[Any] | None:
    """The labels asked for, read by one rule wherever they are given: ``mmfusion evaluate-registration --labels``
    and ``mmfusion run --labels`` (label maps or ``.seg.nrrd`` files), :func:`pipeline.run`'s ``labels`` (files or
    images) and the Slicer Logic's ``labels`` (label map or segmentation nodes), and the engine's own check
    (:func:`metrics.label_overlap`, :func:`metrics.evaluate_registration`).

    Args:
        labels: None (every label), text of comma-separated labels ("1,2", "liver, kidney"; spaces around each
            ignored), or a sequence of them (numbers or text).
        segment_names: the segments' names where labels are matched by name (two segmentations); None where they
            are matched by number (label maps, or a segmentation against a label map).

    Returns:
        None for None. Matched by number: the labels as sorted whole numbers without repeats ("1", "1.0", 1 and
        1.0 are label 1). Matched by name: the names in the order given, where text of digits that names no
        segment is a number (refused by :func:`match_by_name`, naming the segments): a segment named "2" is asked
        for by "2".

    Raises:
        InputError: no label (an empty text or list); matched by number, one that is no whole number (a name
            among them) or 0 (the background, which is never scored).
    """
    if labels is None:
        return None
    if not isinstance(labels, (str, bytes)) and not hasattr(labels, "__iter__"):
        labels = [labels]  # one label (labels=1) had been a TypeError ("'int' object is not iterable")
    items = [v.strip() for v in labels.split(",")] if isinstance(labels, str) else [
        v.strip() if isinstance(v, str) else v for v in labels]
    items = [v for v in items if not (isinstance(v, str) and not v)]
    if not items:
        raise InputError("No label was given to score.", "Give at least one label, or none for every label.")
    if segment_names is not None:
        known = set(segment_names)
        return [int(v) if isinstance(v, str) and re.fullmatch(r"[-+]?\d+", v) and v not in known else v
                for v in items]
    wanted = []
    for v in items:
        try:
            whole = not isinstance(v, bool) and float(v).is_integer()
        except (TypeError, ValueError, OverflowError):
            whole = False
        if not whole and isinstance(v, str) and re.fullmatch(r"[-+]?\d+([;\s]+[-+]?\d+)+", v):
            # "1;2" or "1 2": labels run together, not a name
            joined = ",".join(re.split(r"[;\s]+", v))
            raise InputError(f"Labels {v!r} are not separated by commas.", f"Separate the labels with commas: {joined}.")
        if not whole:
            named = isinstance(v, str) and not re.fullmatch(r"[-+]?[\d.eE+-]+|[-+]?(inf|infinity|nan)", v, re.I)
            raise InputError(f"Label {v!r} is not a whole number" + (f": {_NAMES_WHERE}" if named else "") + ".",
                             "Give labels as whole numbers, e.g. 1,2,3" + (", or two segmentations to name "
                                                                           "segments" if named else "") + ".")
        number = int(float(v)) if isinstance(v, str) else int(v)
        if number == 0:
            raise InputError("Label 0 was asked for: 0 is the background, no label.",
                             "Give the non-zero labels to score, e.g. 1,2,3, or none for every label.")
        wanted.append(number)
    return sorted(set(wanted))


def match_by_name(fixed: Sequence[tuple[str, str]], moving: Sequence[tuple[str, str]], wanted: Sequence[Any] | None,
                  fixed_name: str, moving_name: str, labels_option: str = "labels"
                  ) -> tuple[list[str], list[str], dict[int, str], list[int] | None]:
    """Segment IDs of two segmentations with one label number per segment name (the fixed segmentation's order
    first, then the moving one's other names), the numbers' names, and the numbers asked for.

    Args:
        fixed, moving: each segmentation's (segment ID, name) pairs in its order (see :func:`check_segment_names`).
        wanted: segment names to score (None: all).
        fixed_name, moving_name: the two segmentations' names (node names or file names), for messages.
        labels_option: how the option giving ``wanted`` is spelt to the user (``labels``, ``--labels``).

    Returns:
        (fixed IDs, moving IDs, {label: name}, labels asked for or None): the i-th IDs are label i + 1 on each
        side, "" where that side lacks the name or it was not asked for (a segment not asked for is not read).
    """
    order = [name for _, name in fixed] + [name for _, name in moving if name not in {n for _, n in fixed}]
    number = {name: i for i, name in enumerate(order, start=1)}
    scored = None
    if wanted is not None:
        if any(not isinstance(v, str) for v in wanted):
            raise InputError(f"{labels_option} {list(wanted)} hold numbers, and '{fixed_name}' and '{moving_name}' "
                             "are segmentations, whose segments match by name.",
                             f"Give segment names (of: {', '.join(order)}).")
        unknown = [v for v in wanted if v not in number]
        if unknown:
            raise InputError(f"No segment of '{fixed_name}' or '{moving_name}' is named "
                             f"{', '.join(repr(v) for v in unknown)}.", f"Give segment names of: {', '.join(order)}.")
        scored = [number[v] for v in wanted]
    fixed_ids = {name: sid for sid, name in fixed if wanted is None or name in wanted}
    moving_ids = {name: sid for sid, name in moving if wanted is None or name in wanted}
    return ([fixed_ids.get(name, "") for name in order], [moving_ids.get(name, "") for name in order],
            {number[name]: name for name in order}, scored)


def near_name_notes(fixed: Sequence[str], moving: Sequence[str], fixed_name: str, moving_name: str) -> list[str]:
    """Notes on a segment name of one segmentation that matches one of the other's only but for case or surrounding
    spaces ("Liver" and "liver "): matched by exact name, they are left out as two segments."""
    notes = []
    for name in fixed:
        near = [m for m in moving if m != name and m not in fixed and m.strip().casefold() == name.strip().casefold()]
        if near and name not in moving:
            notes.append(f"segment '{name}' of '{fixed_name}' and '{near[0]}' of '{moving_name}' differ only in case "
                         "or spaces: segments are matched by exact name, so neither is scored (rename one to match "
                         "the other)")
    return notes


def empty_segment_note(name: str, label: int, owner: str, in_header: bool = False) -> str:
    """The note on a segment that holds no voxel (added, never painted), which is in neither label map and so
    neither scored nor left out by the engine: the words of the Slicer Logic (``owner``: the segmentation node) and
    of ``.seg.nrrd`` files (``in_header``: the file lists it in its header)."""
    listed = "is listed in its header but " if in_header else ""
    return (f"segment '{name}' (label {label}) of '{owner}' {listed}holds no voxel: it is not scored (paint it in "
            "the Segment Editor, or delete it)")


def named_note(note: str, names: dict[int, str]) -> str:
    """An engine note naming label numbers, with the segment names the numbers stand for."""
    return re.sub(r"\blabel (\d+)\b", lambda m: f"segment '{names.get(int(m.group(1)), m.group(1))}' (label "
                                              f"{m.group(1)})", note)


def with_segments(result: dict[str, Any], names: dict[int, str], unscored: Sequence[int] = ()) -> dict[str, Any]:
    """:func:`metrics.evaluate_registration`'s ``result`` of label maps made of segments, told so: ``label_names``
    set and the engine's notes naming the segments (:func:`named_note`), where ``names`` are known; and each label
    of ``unscored`` (a segment with no voxel in its label map: empty, or lost on its volume's grid) that is neither
    scored nor left out put into ``labels.left_out``, as the engine puts a label in one map only there (in neither
    map, the engine knows nothing of it). The one rule of ``.seg.nrrd`` files (:func:`evaluation.evaluate_accuracy`)
    and the Slicer Logic's segmentation nodes; their own notes on such segments are the callers'."""
    if names:
        result["label_names"] = names
        result["notes"] = [named_note(n, names) for n in result["notes"]]
    labels = result["labels"]
    for label in unscored:
        if label not in labels["after"]["labels"] and label not in labels["left_out"]:
            labels["left_out"] = sorted(labels["left_out"] + [label])
    return result


# ----------------------------------------------------------------------------------------------- .seg.nrrd files
@dataclasses.dataclass
class Segment:
    """One segment of a ``.seg.nrrd`` as its header lists it."""

    index: int
    id: str
    name: str
    layer: int
    label_value: int
    extent: tuple[int, ...] | None  # first/last voxel per axis (i0, i1, j0, j1, k0, k1) in the file; None: all


@dataclasses.dataclass
class SegmentationFile:
    """A 3D Slicer segmentation file: its voxels (one component per layer) and its segments."""

    path: str
    image: sitk.Image
    segments: list[Segment]

    @property
    def layers(self) -> int:
        return self.image.GetNumberOfComponentsPerPixel()

    def voxels(self, segment: Segment) -> np.ndarray:
        """The segment's voxels (numpy order k, j, i), a boolean array of the file's grid: those of its layer that
        hold its label value, within its layer's extent (:meth:`layer_extent`), as 3D Slicer reads them."""
        arr = sitk.GetArrayViewFromImage(self.image)
        layer = arr[..., segment.layer] if self.layers > 1 else arr
        mask = layer == segment.label_value
        extent = self.layer_extent(segment.layer)
        if extent is not None:
            inside = np.zeros(mask.shape, dtype=bool)
            if extent:
                inside[tuple(slice(max(0, extent[2 * a]), extent[2 * a + 1] + 1)
                             for a in reversed(range(len(extent) // 2)))] = True
            mask &= inside
        return mask

    def layer_extent(self, layer: int) -> tuple[int, ...] | None:
        """The voxels of a layer that 3D Slicer reads (first/last voxel per axis in the file; None: all, (): none):
        the box around its segments' extents, one without an extent counting as the whole file. Slicer reads a
        layer as one labelmap shared by its segments, so a segment's voxels outside its own extent but inside
        another's of its layer are read (files Slicer writes give every segment of a layer the same extent)."""
        extents = [s.extent for s in self.segments if s.layer == layer]
        if any(e is None for e in extents):
            return None
        boxes = [e for e in extents if all(e[2 * a] <= e[2 * a + 1] for a in range(len(e) // 2))]
        if not boxes:
            return ()
        return tuple(min(e[i] for e in boxes) if i % 2 == 0 else max(e[i] for e in boxes)
                     for i in range(len(boxes[0])))


def _int_value(image: sitk.Image, key: str, default: int, path: str) -> int:
    if not image.HasMetaDataKey(key):
        return default
    text = image.GetMetaData(key).strip()
    try:
        return int(text)
    except ValueError:
        raise InputError(f"'{path}' gives {key} = '{text}', not a whole number.",
                         "Save the segmentation again from 3D Slicer (Segmentations module).") from None


def header_segments(image: sitk.Image, path: str) -> list[Segment]:
    """The segments a 3D Slicer ``.seg.nrrd``'s header lists (``Segment<i>_ID``, ``_Name``, ``_Layer``,
    ``_LabelValue``, ``_Extent``), in its order; [] for any other image. The one reading of those keys, for
    :func:`read_segmentation_file` and for :func:`io.segment_layers` (what ``mmfusion info`` and the refusal of a
    file of several layers name). A missing name is the ID, a missing layer the segment's index and a missing label
    value 1, as Slicer reads files written before those keys existed; an extent that is not 2 whole numbers an axis
    is None (the whole file).

    Raises:
        InputError: a layer or label value that is not a whole number (``path`` names the file).
    """
    segments: list[Segment] = []
    while image.HasMetaDataKey(f"Segment{len(segments)}_ID"):
        i = len(segments)
        key = f"Segment{i}_"
        sid = image.GetMetaData(key + "ID")
        name = image.GetMetaData(key + "Name") if image.HasMetaDataKey(key + "Name") else sid
        layer = _int_value(image, key + "Layer", i, path)  # Slicer's defaults: its own layer, label value 1
        value = _int_value(image, key + "LabelValue", 1, path)
        extent = None
        if image.HasMetaDataKey(key + "Extent"):
            try:
                extent = tuple(int(v) for v in image.GetMetaData(key + "Extent").split())
            except ValueError:
                extent = None
            if extent is not None and len(extent) != 2 * image.GetDimension():
                extent = None
        segments.append(Segment(i, sid, name, layer, value, extent))
    return segments


def read_segmentation_file(path: str | os.PathLike) -> SegmentationFile | None:
    """A 3D Slicer ``.seg.nrrd`` with its segments (names, layers, label values), or None where the file lists no
    segment (any other image: a plain label map).

    Raises:
        InputError: the file cannot be read (see :func:`io.read_image`), a segment's layer is not one of the file's
            components, or its header's numbers are not whole numbers.
    """
    from .io import read_image

    path = os.fspath(path)
    image = read_image(path, keep_color=True, segment_layers=True)  # every layer, as components
    if not image.HasMetaDataKey("Segment0_ID"):
        return None
    if image.HasMetaDataKey("Segmentation_Extent"):  # one 3D volume a segment along a 4th axis, extents absolute
        raise InputError(f"'{path}' is a 3D Slicer segmentation in the format of older Slicer versions (a "
                         "Segmentation_Extent key, one volume a segment), which is not read here: its segments' "
                         "layers and extents would be misread.",
                         "Load it in a current 3D Slicer and save it again (it is saved in the current format).")
    segments = header_segments(image, path)
    layers = image.GetNumberOfComponentsPerPixel()
    for s in segments:
        if not 0 <= s.layer < layers:
            raise InputError(f"Segment '{s.name}' of '{path}' is in layer {s.layer}, but the file holds "
                             f"{layers} layer{'s' if layers > 1 else ''} (components).",
                             "Save the segmentation again from 3D Slicer (Segmentations module).")
    return SegmentationFile(path, image, segments)


def add_to_layers(layers: list[np.ndarray], voxels: np.ndarray, label: int) -> None:
    """Put a label's ``voxels`` (a boolean array) into label maps in layers (UInt16 arrays of its shape, changed in
    place): into the first that holds none of them, a new one where each does (as 3D Slicer puts overlapping
    segments into layers), so that it keeps all its voxels (:func:`metrics.label_layers`). One map holds the labels
    while none overlap. Two labels that share voxels had been refused (one label map cannot hold a voxel of both),
    so overlapping segments could not be scored in one run. One mask at a time: a segmentation's masks are never
    all held at once."""
    layer = next((arr for arr in layers if not (voxels & (arr != 0)).any()), None)
    if layer is None:
        layer = np.zeros(voxels.shape, np.uint16)
        layers.append(layer)
    layer[voxels] = label


def layer_images(layers: list[np.ndarray], reference: sitk.Image) -> sitk.Image | list[sitk.Image]:
    """Label maps in layers (:func:`add_to_layers`; none: one empty map) as images of ``reference``'s geometry: one
    image for one layer, a list of them for several."""
    arrays = layers or [np.zeros(sitk.GetArrayViewFromImage(reference).shape[:reference.GetDimension()], np.uint16)]
    images = []
    for arr in arrays:
        image = sitk.GetImageFromArray(arr)
        image.CopyInformation(reference)  # the geometry only: a .seg.nrrd header's segment keys do not follow
        images.append(image)
    return images[0] if len(images) == 1 else images


def _label_map(sf: SegmentationFile, labels: Sequence[tuple[Segment, int]]) -> sitk.Image | list[sitk.Image]:
    """The ``(segment, label)`` pairs of ``labels`` as one label map (UInt16) on the file's grid, each segment its
    label there; segments that share voxels as label maps in layers (:func:`add_to_layers`), each segment with all
    its voxels. Keyed by segment, not name: where labels match by number, two segments of one name are two
    labels."""
    layers: list[np.ndarray] = []
    for segment, label in labels:
        add_to_layers(layers, sf.voxels(segment), label)
    return layer_images(layers, sf.image)


def label_maps_for_evaluation(fixed_path: str, moving_path: str, labels: str | Sequence[Any] | None
                              ) -> tuple[Any, Any, list[Any] | None, dict[str, Any]]:
    """The two label maps ``mmfusion evaluate-registration`` scores, read from files, and how they were paired.

    Two ``.seg.nrrd`` files: segments matched by name (:func:`match_by_name`, as the Slicer Logic matches two
    segmentation nodes), label i the i-th name (the fixed file's order, then the moving one's other names); every
    layer read; ``labels`` names segments. One ``.seg.nrrd`` and a plain label map: matched by number, the
    segmentation's segments taken by their label values. Two plain label maps: as they are. ``labels`` (text
    "1,2" or a list; None: all) are read by :func:`asked_labels`. Segments that overlap (saved in several layers)
    are scored in one run, each as its own binary mask: their label map is then a list of label maps on the file's
    grid (layers, :func:`metrics.label_layers`), each segment with all its voxels in one of them.

    Returns:
        (fixed label map, moving label map, labels to score (None: all), info): each label map one image, or its
        layers where segments overlap; ``info`` holds ``matched``
        ("name" or "number"), ``label_names`` ({label: name}, where names are known), ``notes`` (said before the
        engine's: how the labels were matched, empty segments) and ``empty`` (labels of segments listed with no
        voxels).

    Raises:
        InputError: label values that two segments share where labels match by number, names asked for that
            neither file holds, or numbers given where names match.
    """
    from .io import read_image

    files = [read_segmentation_file(p) for p in (fixed_path, moving_path)]
    names = [os.path.basename(p) for p in (fixed_path, moving_path)]
    info: dict[str, Any] = {"matched": "number", "label_names": {}, "notes": [], "empty": []}
    if files[0] is not None and files[1] is not None:
        pairs = [check_segment_names([(s.id, s.name) for s in f.segments], f"'{f.path}'") for f in files]
        # numbers that name no segment are refused by match_by_name, naming the segments to give ("2" had been
        # refused so where a segment is named "2")
        wanted = asked_labels(labels, [name for p in pairs for _, name in p])
        ids, moving_ids, label_names, scored = match_by_name(*pairs, wanted, *names, labels_option="--labels")
        info.update(matched="name", label_names=label_names)
        info["notes"].append(f"segments matched by name: '{names[0]}' and '{names[1]}' are 3D Slicer segmentations "
                             "(" + ", ".join(f"{v} = '{n}'" for v, n in label_names.items()) + ")")
        info["notes"] += near_name_notes(*[[n for _, n in p] for p in pairs], *names)
        label_of = {name: label for label, name in label_names.items()}
        maps = []
        for f, side_ids in zip(files, (ids, moving_ids)):
            by_id = {s.id: s for s in f.segments}
            maps.append(_label_map(f, [(by_id[sid], i) for i, sid in enumerate(side_ids, start=1) if sid]))
        for f, name in zip(files, names):
            _note_empty(f, name, [(s, label_of[s.name]) for s in f.segments], scored, info)
        return maps[0], maps[1], scored, info
    labels = asked_labels(labels)  # matched by number
    maps = []
    for side, (f, path, name) in enumerate(zip(files, (fixed_path, moving_path), names)):
        if f is None:
            maps.append(read_image(path))
            continue
        values: dict[int, list[Segment]] = {}
        for s in f.segments:
            values.setdefault(s.label_value, []).append(s)
        shared = next((v for v in values.values() if len(v) > 1), None)
        if shared is not None:
            raise InputError(f"Segments '{shared[0].name}' and '{shared[1].name}' of '{name}' both have label value "
                             f"{shared[0].label_value} (in layers {shared[0].layer} and {shared[1].layer}), and the "
                             "other label file is a plain label map, matched by number: label "
                             f"{shared[0].label_value} would stand for two segments.",
                             "Give both label files as .seg.nrrd (segments are then matched by name), or export "
                             "the segments to one label map (Segmentations module: Export to label map) and give "
                             "that.")
        maps.append(_label_map(f, [(s, s.label_value) for s in f.segments]))
        info["label_names"].update({s.label_value: s.name for s in f.segments})
        plain = names[1 - side]
        info["notes"].append(f"labels matched by number: '{name}' is a 3D Slicer segmentation and '{plain}' a "
                             "plain label map, so its segments are taken by their label values ("
                             + ", ".join(f"'{s.name}' = {s.label_value}" for s in f.segments)
                             + "); give both as .seg.nrrd to match segments by name")
        _note_empty(f, name, [(s, s.label_value) for s in f.segments], labels, info)
    return maps[0], maps[1], labels, info


def _note_empty(sf: SegmentationFile, name: str, labelled: Sequence[tuple[Segment, int]], scored: list[int] | None,
                info: dict[str, Any]) -> None:
    """Add to ``info``'s ``empty`` and ``notes`` each of the ``(segment, label)`` pairs, among the labels scored
    (None: all), whose segment holds no voxel (:func:`empty_segment_note`; ``name``: the file's)."""
    for segment, label in labelled:
        if (scored is None or label in scored) and not sf.voxels(segment).any():
            info["empty"].append(label)
            info["notes"].append(empty_segment_note(segment.name, label, name, in_header=True))
