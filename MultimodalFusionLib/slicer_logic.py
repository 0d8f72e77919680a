"""The Slicer module's Logic (the console scripting API), free of Qt so it runs anywhere MRML does.

``MultimodalFusion.MultimodalFusionLogic`` (the scripted module) inherits this class unchanged,
so the methods tested here under the slicer-core wheel are the ones Slicer users call. Glue
only: nodes in, :mod:`MultimodalFusionLib.mrml` to SimpleITK, the engine, ``mrml`` back to
new output nodes. Method names and keyword arguments follow Slicer's camelCase convention
(as in SlicerElastix: ``registerVolumes(fixedVolumeNode, movingVolumeNode, ...)``).

In Slicer's Python console::

    logic = slicer.util.getModuleLogic("MultimodalFusion")
    out = logic.run(getNode("MR"), getNode("PET"), preset="mr-pet-brain", fusionMethod="wavelet")
    out.transformNode, out.resampledVolumeNode, out.fusedVolumeNode, out.metricsTableNode
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Sequence

from . import io, mrml
from .errors import InputError
from .progress import ProgressCallback, report, scaled
from .segmentations import (
    asked_labels,
    check_segment_names,
    empty_segment_note,
    match_by_name,
    near_name_notes,
    with_segments,
)
from .validation import check_image, has_content, overlap_fraction

__all__ = ["FusionLogic", "RegistrationOutputs", "FusionOutputs", "RunOutputs"]


@dataclasses.dataclass
class RegistrationOutputs:
    """What :meth:`FusionLogic.registerVolumes` made.

    Attributes:
        transformNode: the registration transform (set it as the moving volume's parent to align it).
        resampledVolumeNode: the moving volume resampled on the fixed volume's grid (None if not asked).
        result: the engine's RegistrationResult (metric before/after, stages, warnings, timings).
        metrics: registration metrics (metric before/after, MI/correlation after resampling).
    """

    transformNode: Any
    resampledVolumeNode: Any
    result: Any
    metrics: dict[str, Any]

    def metricText(self) -> str:
        """"metric BEFORE -> AFTER" as the module's status line shows it (4 significant digits): a metric with no
        valid sample point (inf) is n/a, as mmfusion, the web panel and the report write it (it had shown "inf")."""
        return f"metric {io.number_text(self.result.metric_before)} -> {io.number_text(self.result.metric_after)}"


@dataclasses.dataclass
class FusionOutputs:
    """What :meth:`FusionLogic.fuseVolumes` made.

    Attributes:
        fusedVolumeNode: the fused volume (scalar, or vector RGB for colour methods).
        weightsVolumeNode: per-voxel weight of the anatomical volume (None when the method has none).
        metricsTableNode: table of the fusion metrics.
        result: the engine's FusionResult.
        metrics: fusion quality metrics (entropy, MI, Qabf, SSIM, ...).
    """

    fusedVolumeNode: Any
    weightsVolumeNode: Any
    metricsTableNode: Any
    result: Any
    metrics: dict[str, Any]


@dataclasses.dataclass
class RunOutputs:
    """What :meth:`FusionLogic.run` made: registration and fusion outputs plus the metrics table."""

    registration: RegistrationOutputs
    fusion: FusionOutputs
    metricsTableNode: Any

    @property
    def transformNode(self) -> Any:
        return self.registration.transformNode

    @property
    def resampledVolumeNode(self) -> Any:
        return self.registration.resampledVolumeNode

    @property
    def fusedVolumeNode(self) -> Any:
        return self.fusion.fusedVolumeNode


def _check_not_input(output: Any, inputs: Sequence[Any], what: str) -> None:
    for node in inputs:
        if output is not None and node is not None and output is node:
            raise InputError(f"The {what} '{output.GetName()}' is also an input; inputs are never overwritten.",
                             f"Select another {what} node, or leave it empty to create a new one.")


def _check_distinct(outputs: Sequence[tuple[Any, str]]) -> None:
    """One node chosen for two outputs: the later would replace the earlier (or the input it is made from)."""
    for (first, first_role), (second, second_role) in itertools.combinations(outputs, 2):
        if first is not None and first is second:
            raise InputError(f"'{first.GetName()}' is selected for both the {first_role} and the {second_role}; "
                             f"the {second_role} would replace the {first_role}.",
                             "Select different nodes, or leave one empty to create it.")


#: Slicer's diffusion volume nodes, DTI and DWI: scalar volume nodes to VTK (an RGB vector node is a tensor node too)
_DIFFUSION = ("vtkMRMLDiffusionImageVolumeNode", "vtkMRMLDiffusionWeightedVolumeNode")


def _check_class(node: Any, class_name: str, what: str, kind: str) -> None:
    """An output node of the wrong kind fails here, before any work, not deep inside VTK afterwards."""
    if node is not None and not node.IsA(class_name):
        raise InputError(f"The {what} '{node.GetName()}' is a {node.GetClassName()}, not a {kind}.",
                         f"Select a {kind} as the {what}, or leave it empty to create one.")
    # a label map is a scalar volume node to VTK, but its voxels are labels: an image written into it would
    # be shown with label colours (every intensity a different label), and it could be a mask given as input
    if class_name == "vtkMRMLScalarVolumeNode" and _is_label_map(node):
        raise InputError(f"The {what} '{node.GetName()}' is a label map; the result is an image, not labels.",
                         f"Select a (scalar) volume node as the {what}, or leave it empty to create one.")
    # a DTI or DWI volume is a scalar volume node to VTK too: the scalar result written into one had been shown
    # through its tensor display (VTK errors "Input 0 must have tensors"), a DTI node holding no tensors
    if class_name == "vtkMRMLScalarVolumeNode" and node is not None and any(node.IsA(c) for c in _DIFFUSION):
        raise InputError(f"The {what} '{node.GetName()}' is a diffusion volume ({node.GetClassName()}); the result is "
                         "a scalar image, not tensors or diffusion-weighted images.",
                         f"Select a (scalar) volume node as the {what}, or leave it empty to create one.")


def _is_label_map(node: Any) -> bool:
    return node is not None and bool(node.IsA("vtkMRMLLabelMapVolumeNode"))


def _registered_output(output: Any, moving: Any, new_node_on_kind_change: bool) -> Any:
    """The node the registered (resampled) moving volume goes into, checked before any work.

    A label map moving volume is resampled nearest-neighbour into a label map (as Slicer's General Registration
    does): its labels had been interpolated linearly into a grey volume, labels {0, 3} giving 1 and 2 at every
    edge. Any other moving volume gives a grey image (a colour output was refused only once the registration
    had run). A node of the other kind is replaced by a new one with ``new_node_on_kind_change`` (the panel,
    which reuses its last output), refused otherwise."""
    if output is None:
        return None
    labels = _is_label_map(moving)
    if output.IsA("vtkMRMLScalarVolumeNode") and not any(output.IsA(c) for c in _DIFFUSION):
        colour = bool(output.IsA("vtkMRMLVectorVolumeNode"))
        if colour or _is_label_map(output) != labels:
            if new_node_on_kind_change:
                return None
            if colour:
                raise InputError(f"The output volume '{output.GetName()}' is a colour (vector) volume; the "
                                 "registered volume is " + ("a label map." if labels else "grey."),
                                 f"Select a {'label map' if labels else '(scalar) volume'} node as the output "
                                 "volume, or leave it empty to create one.")
            if labels:
                raise InputError(f"The moving volume '{moving.GetName()}' is a label map: it is resampled "
                                 "nearest-neighbour into a label map (its labels kept, none invented between them), "
                                 f"and the output volume '{output.GetName()}' is a scalar (image) volume.",
                                 "Select a label map node as the output volume, or leave it empty to create one.")
    if labels and _is_label_map(output):
        return output
    _check_class(output, "vtkMRMLScalarVolumeNode", "output volume", "volume node")
    return output


def _weights_output(node: Any, new_node_on_kind_change: bool) -> Any:
    """The weight map's node, checked before any work: the weights are grey, so a colour (vector) node cannot
    hold them (it had been refused only once the fusion had run and written the fused volume)."""
    _check_class(node, "vtkMRMLScalarVolumeNode", "weights volume", "volume node")
    if node is not None and node.IsA("vtkMRMLVectorVolumeNode"):
        if new_node_on_kind_change:
            return None
        raise InputError(f"The weights volume '{node.GetName()}' is a colour (vector) volume; the weight map is grey.",
                         "Select a (scalar) volume node as the weights volume, or leave it empty to create one.")
    return node


def _check_no_label_map(nodes: Sequence[tuple[Any, str]]) -> None:
    """Fusion of a label map is refused: its labels are names, not intensities, so a fused voxel between them
    (label 3 and an MR intensity averaged: 1.9) means nothing; Slicer shows a label map over an image instead."""
    for node, role in nodes:
        if _is_label_map(node):
            raise InputError(f"The {role} volume '{node.GetName()}' is a label map: fusing its labels with an "
                             "image's intensities gives values that are neither (fractional labels).",
                             "Show it over the image as a label map layer instead: showFusion(image, labelMap) (the "
                             "Show button; registerVolumes first puts it on the image's grid, nearest-neighbour), "
                             "or convert it to a segmentation (Segmentations module); fuse the intensity volumes.")


def _check_not_above_moving(output: Any, moving: Any, apply_transform: bool) -> None:
    """The output transform must not lie above the moving volume's own parent transform in its chain.

    The result maps the fixed grid to the moving volume's own grid (it includes the whole chain the volume is
    shown through), so the volume is aligned where it sits directly under the result. Written into a transform
    further up its chain, the result was composed with the transforms between them: the volume was shown
    through both, off by those transforms (5.0 mm under a 4 mm shift, where the result is 1.2 mm from the
    truth), without a word. (The volume's own parent as the output is replaced by the result: aligned.)"""
    if output is None or apply_transform:
        return
    parent = moving.GetParentTransformNode()
    between = []
    while parent is not None and parent is not output:
        between.append(parent)
        parent = parent.GetParentTransformNode()
    if parent is None or not between:
        return
    names = ", ".join(f"'{node.GetName()}'" for node in between)
    raise InputError(f"The output transform '{output.GetName()}' is above the moving volume "
                     f"'{moving.GetName()}' in its chain of transforms (through {names}); the result, written "
                     f"there, would show the volume moved by {names} as well, not aligned.",
                     "Select another output transform node, or leave it empty to create one (registerVolumes "
                     "with applyTransform=True instead puts the moving volume directly under the result).")


def _in_world(node: Any) -> Any:
    """An output node holds world coordinates (the fixed grid; a fixed-to-moving transform). One the
    user chose that sits under a transform is taken out of it: under it, the output would be shown
    moved by that transform (and a moving volume put under an output transform would not line up)."""
    if node is not None and node.GetParentTransformNode() is not None:
        mrml.set_parent_transform(node, None)
    return node


def _written(node: Any) -> Any:
    """An output volume just written: in world coordinates (:func:`_in_world`), displayed from its new voxels
    (a reused node kept the window and threshold set for its old voxels: a PET in other units was shown
    saturated, or all transparent)."""
    mrml.reset_display_range(node)
    return _in_world(node)


def _under(transform: Any) -> str:
    return f"transform '{transform.GetName()}'" if transform is not None else "no transform"


def _check_not_under_transform(node: Any, role: str, action: str) -> None:
    """Refuse a volume whose grid is the output's or the result's (the fixed or anatomical one) while it is under a
    transform: the result would relate its own grid, not where Slicer shows it (registerVolumes, fuseVolumes,
    evaluateRegistration: one message)."""
    if node.GetParentTransformNode() is not None:
        raise InputError(f"The {role} volume '{node.GetName()}' is under a transform.",
                         f"Harden the transform on it (Transforms module) or remove it, then {action}.")


def _check_grey(volumes: Sequence[tuple[str, Any, Any]], needs: str, other: str) -> None:
    """Refuse a volume of several components per voxel (a colour or multi-frame volume) among ``volumes`` ((role,
    node, its image)), saying what ``needs`` grey volumes and ``other`` choice the fix offers (registerVolumes,
    evaluateRegistration)."""
    for role, node, image in volumes:
        components = image.GetNumberOfComponentsPerPixel()
        if components > 1:
            raise InputError(f"The {role} volume '{node.GetName()}' has {components} components per voxel (a colour "
                             f"or multi-frame volume); {needs}.",
                             f"Convert it with the Vector to Scalar Volume module (Converters), or {other}.")


def _check_finite(volumes: Sequence[tuple[str, Any, Any]], allow_constant: bool = True) -> None:
    """Refuse a volume with NaN or infinite voxels among ``volumes`` ((role, node, its image)), naming the node as the
    Logic's other errors do: the engine's refusal had said only 'The moving image has 1 NaN ...' (registerVolumes,
    fuseVolumes, run, evaluateRegistration). :func:`validation.check_image`'s test, nothing else refused here; a
    constant volume too unless ``allow_constant``, where the engine refuses one (registerVolumes and run always,
    evaluateRegistration of the images alone), whose refusal had said 'The moving image is constant ...'."""
    for role, node, image in volumes:
        check_image(image, f"{role} volume '{node.GetName()}'", allow_vector=True, allow_constant=allow_constant,
                    allow_one_slice=True, allow_any_span=True)


def _single_slice(image: Any) -> bool:
    return io.one_slice_axis(image) is not None


def _scalar(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def _registered_alignment(fixed: Any, moving: Any, result: Any, fixed_mask: Any, resampled: Any) -> dict[str, Any]:
    """MI, NMI, NCC and "voxels" of the registered volume (``resampled`` through ``result.transform``) over the fixed
    voxels it reaches (within ``fixed_mask``). Fewer than two give MI, NMI and NCC NaN (n/a) and a warning in
    ``result.warnings``, as ``mmfusion run`` scores them (alignment_before_after): it had been alignment_metrics'
    InputError after the registration had finished and its transform node was made, which left that node in the
    scene without the registered volume."""
    from . import metrics as metrics_module

    scores = metrics_module.alignment_metrics(fixed, moving, result.transform, fixed_mask, resampled=resampled,
                                              apart_ok=True)
    reached = int(scores["voxels"])
    if reached < 2:
        within = " within the fixed mask" if fixed_mask is not None else ""
        result.warnings.append(
            f"Through the registration's transform the moving volume covers {reached} of the fixed volume's "
            f"voxels{within}, so their similarity after it (MI, NMI, NCC) is n/a: the registration ended where they "
            "barely overlap. Start it where the volumes overlap (an initializer, geometry or moments, or an initial transform "
            "that places the moving volume over the fixed one).")
    return {k: _scalar(v) for k, v in scores.items()}


def _overlay_parameters(scene: Any, params: dict[str, Any]) -> dict[str, Any]:
    """The overlay's parameters as the engine takes them: a ``colormap`` that names a colour node of the
    scene (PET-Heat, PET-Rainbow2, Rainbow, Iron, ...; Slicer's default colour nodes are added when the scene
    lacks them) becomes that node's colours, so the fused volume is coloured as the slice views colour a
    volume with that table; another name must be one of the engine's (pet, hot, rainbow, grey, matplotlib's)."""
    from .fusion.color import COLORMAPS, colormap_lut

    colormap = params.get("colormap")
    if not isinstance(colormap, str):
        return params  # the engine's default, a lookup table, or a wrong value the engine names
    colors = mrml.colormap_colors(scene, colormap)
    if colors is not None:
        return {**params, "colormap": colors}
    try:
        colormap_lut(colormap)
    except InputError as exc:
        raise InputError(f"Unknown colour map '{colormap}': this scene has no colour table of that name and the "
                         "fusion engine has no colour map of that name either.",
                         f"Use a colour table ({', '.join(mrml.available_colormaps(scene))}, or another of the "
                         f"Colors module) or one of the engine's maps ({', '.join(COLORMAPS)}; matplotlib's names "
                         "where matplotlib is installed).") from exc
    return params


def _segment_names(node: Any) -> list[tuple[str, str]]:
    """(segment ID, name) of a segmentation's segments in their order; two segments of one name refused."""
    segmentation = node.GetSegmentation()
    pairs = [(segmentation.GetNthSegmentID(i), segmentation.GetNthSegment(i).GetName())
             for i in range(segmentation.GetNumberOfSegments())]
    return check_segment_names(pairs, f"Segmentation '{node.GetName()}'")


def _matched_segments(fixed_node: Any, moving_node: Any, wanted: Sequence[Any] | None
                      ) -> tuple[list[str], list[str], dict[int, str], list[int] | None]:
    """Segment IDs of the two segmentations with one label number per segment name (the fixed segmentation's
    order first, then the moving one's other names), the numbers' names, and the numbers asked for: the rule of
    :func:`segmentations.match_by_name`, which ``mmfusion evaluate-registration`` applies to ``.seg.nrrd`` files."""
    return match_by_name(_segment_names(fixed_node), _segment_names(moving_node), wanted, fixed_node.GetName(),
                         moving_node.GetName())


def _near_names(fixed_node: Any, moving_node: Any) -> list[str]:
    """Notes on a segment name of one segmentation that matches one of the other's only but for case or surrounding
    spaces ("Liver" and "liver "): matched by exact name, they are left out as two segments."""
    return near_name_notes([name for _, name in _segment_names(fixed_node)],
                           [name for _, name in _segment_names(moving_node)], fixed_node.GetName(),
                           moving_node.GetName())


class FusionLogic:
    """Register and fuse volume nodes; every GUI action is one method here.

    Args:
        scene: the MRML scene; by default the input nodes' scene (``slicer.mrmlScene`` in Slicer).
    """

    def __init__(self, scene: Any = None) -> None:
        self._scene = scene

    def _sceneOf(self, node: Any = None) -> Any:
        return mrml.get_scene(self._scene, node)

    def _sceneOfAll(self, nodes: Sequence[tuple[Any, str]]) -> Any:
        """The scene of ``nodes`` ((node, role), the first one given sets it unless the Logic has its own), refusing a
        node of another scene (or of none) before any work: node IDs are per scene, so a moving volume of another
        scene put under the result (``applyTransform``) had been put under whichever node of its own scene has the
        result's ID, an unrelated transform, without a word; and the outputs went to the first volume's scene."""
        given = [(node, role) for node, role in nodes if node is not None]
        scene = self._sceneOf(given[0][0] if given else None)
        for node, role in given:
            if node.GetScene() is not scene:
                where = ("is in no scene" if node.GetScene() is None else
                         "is in another MRML scene than " + (f"the {given[0][1]} '{given[0][0].GetName()}'"
                                                             if self._scene is None else "this Logic's scene"))
                raise InputError(f"The {role} '{node.GetName()}' {where}; the nodes of one call must be in one scene "
                                 "(node IDs, parent transforms and outputs are per scene).",
                                 "Load or create all the nodes in one scene (in Slicer: slicer.mrmlScene), or give "
                                 "FusionLogic(scene) the scene that holds them.")
        return scene

    # ------------------------------------------------------------------------------------------
    def registerVolumes(self, fixedVolumeNode: Any, movingVolumeNode: Any, *, preset: str | None = None,
                        stages: Sequence[str] | str | None = None, fixedMaskNode: Any = None,
                        movingMaskNode: Any = None, initialTransformNode: Any = None, seed: int | None = None,
                        outputTransformNode: Any = None, outputVolumeNode: Any = None,
                        resample: bool = True, applyTransform: bool = False, backend: str = "sitk",
                        parameters: Any = None, initializer: str | None = None,
                        newNodeOnKindChange: bool = False,
                        progress: ProgressCallback | None = None) -> RegistrationOutputs:
        """Register the moving volume to the fixed one; the result is a new transform node.

        Console example::

            logic = slicer.util.getModuleLogic("MultimodalFusion")
            out = logic.registerVolumes(getNode("CT"), getNode("MR"), preset="ct-mr-head", seed=1)
            getNode("MR").SetAndObserveTransformNodeID(out.transformNode.GetID())  # show MR aligned

        Args:
            fixedVolumeNode: reference volume (e.g. CT or the anatomical MR).
            movingVolumeNode: volume to align (e.g. MR, PET, SPECT).
            preset: registration preset name (``MultimodalFusionLib.registration.list_presets()``).
            stages: stages to run, e.g. ``["rigid", "affine", "bspline"]`` or ``"rigid,affine"``.
            fixedMaskNode: label map or segmentation limiting the metric in the fixed volume, where
                it is shown (through a transform it is under).
            movingMaskNode: the same for the moving volume, relative to it (a mask under the moving
                volume's transform is taken on the moving volume's own grid, as the volume is).
            initialTransformNode: a transform to start from (e.g. a manual pre-alignment); it is not
                changed, and the result includes it (so it cannot be the ``outputTransformNode`` too).
                None: the transform the moving volume is under, if any (it starts where it is
                shown), unless ``initializer`` is given; a non-linear one is a start too, except on the
                torch backend or under another transform, where it is not used (a warning says so). A
                displacement field (grid transform) that leaves more than 1% of the fixed volume's voxels
                outside its grid gets a warning naming it: the registration starts from no move there.
            seed: seed of the random metric sampling (same seed, same result).
            outputTransformNode: transform node to write into; a new one when None. The results are
                in world coordinates: an output node under a transform is taken out of it. It may be the
                moving volume's own parent (replaced by the result, which includes it), but not a transform
                above that parent in its chain (refused unless ``applyTransform``: the volume would be shown
                through the transforms between them as well).
            outputVolumeNode: volume node for the resampled moving volume; a new one when None. A label map
                moving volume is resampled nearest-neighbour into a label map (its labels and colour table
                kept, as Slicer's General Registration does), so this must then be a label map node.
            resample: make the resampled moving volume.
            applyTransform: also set the transform as the moving volume's parent (display only;
                the moving volume's voxels are not changed), in place of the transform it was under
                (the result includes that one: see ``initialTransformNode``). A ``movingMaskNode`` under the
                same transform as the volume (or, like it, under none) moves with it, so it stays on it in the
                views; one under another transform is left there, with a warning.
            backend: "sitk" or "torch".
            parameters: full settings, instead of a preset, as ``registration.register`` takes them:
                ``MultimodalFusionLib.registration.RegistrationParameters``, the torch backend's
                ``TorchRegistrationParameters``, or the dict form of the ``backend``'s settings.
            initializer: the start, overriding the preset's (not with ``initialTransformNode``, which replaces
                it: refused): "geometry" (image centres), "moments"
                (centres of mass), "none" (where the volumes' grids lie) or "search" (centres of mass,
                then the best of a grid of rotations: for volumes rotated more than about 30 degrees
                apart, e.g. prone vs supine; about 1-2 s more for a head). None: the preset's, or where
                the moving volume is shown when it is under a transform.
            newNodeOnKindChange: when ``outputVolumeNode`` is of another kind than the resampled volume (a
                grey volume for a label map moving volume or the reverse, or a colour volume), make a new node
                instead of refusing (what the module's panel does).
            progress: ``progress(fraction, message)``; returning False cancels.

        Returns:
            RegistrationOutputs with ``transformNode``, ``resampledVolumeNode``, ``result``, ``metrics``.

        Raises:
            InputError: missing/bad inputs, or an output node that is also an input.
            RegistrationError: registration failed.
            OperationCancelled: cancelled through ``progress``.
        """
        import SimpleITK as sitk

        from .pipeline import round_to_8bit
        from .preprocess import resample as resample_image
        from .registration import check_one_start, register, resolve_parameters

        if fixedVolumeNode is None or movingVolumeNode is None:
            raise InputError("Select both a fixed and a moving volume.", "Choose the two volumes to register.")
        if fixedVolumeNode is movingVolumeNode:
            raise InputError("The fixed and moving volumes are the same node.", "Select two different volumes.")
        # a mask may be a scalar volume node too: it is read, then would be overwritten with the result
        _check_not_input(outputVolumeNode, [fixedVolumeNode, movingVolumeNode, fixedMaskNode, movingMaskNode],
                         "output volume")
        _check_class(outputTransformNode, "vtkMRMLTransformNode", "output transform", "transform node")
        # a grey volume, or a label map for a label map moving volume: refused here (or, with newNodeOnKindChange,
        # replaced by a new node), not once the registration had run and its transform node had been added
        outputVolumeNode = _registered_output(outputVolumeNode, movingVolumeNode, newNodeOnKindChange)
        if initialTransformNode is not None and initialTransformNode is outputTransformNode:
            # the result would replace the start it was read from: an input overwritten, and a second call with
            # the same arguments would start from the first one's result
            raise InputError(f"'{initialTransformNode.GetName()}' is selected as both the initial transform and the "
                             "output transform; the result would replace the initial transform, an input (inputs "
                             "are never overwritten).",
                             "Select another output transform node, or leave it empty to create a new one (the "
                             "result includes the initial transform: applyTransform=True puts the moving volume "
                             "under it in place of the initial one).")
        _check_not_above_moving(outputTransformNode, movingVolumeNode, applyTransform)
        # the initial transform replaces the initializer: one named with it had been ignored without a word (here
        # register() is given the resolved settings, not the name)
        check_one_start(initializer or None, None, None if initialTransformNode is None
                        else f"the initial transform '{initialTransformNode.GetName()}'",
                        "initializer=None to start from the initial transform, or initialTransformNode=None to start "
                        "with the initializer")
        # the result would relate the fixed volume's own grid, not where Slicer shows it
        _check_not_under_transform(fixedVolumeNode, "fixed", "register")
        scene = self._sceneOfAll([(fixedVolumeNode, "fixed volume"), (movingVolumeNode, "moving volume"),
                                  (fixedMaskNode, "fixed mask"), (movingMaskNode, "moving mask"),
                                  (initialTransformNode, "initial transform"),
                                  (outputTransformNode, "output transform"), (outputVolumeNode, "output volume")])
        report(progress, 0.0, "reading volumes")
        fixed = mrml.image_from_volume_node(fixedVolumeNode, float32=True)
        moving = mrml.image_from_volume_node(movingVolumeNode, float32=True)
        _check_grey((("fixed", fixedVolumeNode, fixed), ("moving", movingVolumeNode, moving)),
                    "registration needs grey volumes", "select a grey volume")
        _check_finite((("fixed", fixedVolumeNode, fixed), ("moving", movingVolumeNode, moving)), allow_constant=False)
        flat = [n.GetName() for n, img in ((fixedVolumeNode, fixed), (movingVolumeNode, moving)) if _single_slice(img)]
        if flat:
            raise InputError(f"'{flat[0]}' is a single-slice volume (how Slicer holds a 2D image); registration "
                             "on volume nodes needs 3D volumes.",
                             "Register the image files with 'mmfusion register FIXED MOVING', which takes 2D "
                             "images and one-slice volumes (save the nodes as .nrrd or .nii.gz), or use 3D "
                             "volumes; aligned slices can be fused here (fuseVolumes).")
        # each mask lies where it is shown relative to its volume (the moving volume is taken on its own grid)
        fixed_mask = (mrml.mask_from_node(fixedMaskNode, fixed, reference_node=fixedVolumeNode)
                      if fixedMaskNode is not None else None)
        moving_mask = (mrml.mask_from_node(movingMaskNode, moving, reference_node=movingVolumeNode)
                       if movingMaskNode is not None else None)
        # the settings register() runs with (passed on to it: the preset file is read once); a dict is the
        # backend's own dict form, as register() takes it
        settings = resolve_parameters(parameters, preset=preset or None, stages=stages, seed=seed,
                                      initializer=initializer or None, backend=backend)
        # the rotation search (asked for here, in the parameters or in the preset) starts from the centres
        # of mass and refuses a start transform: it takes precedence over the moving volume's parent
        moving_parent = movingVolumeNode.GetParentTransformNode()
        unused_parent = None
        if initialTransformNode is None and moving_parent is not None and not initializer and \
                settings.initializer != "search":
            if moving_parent.IsTransformToWorldLinear() or (backend == "sitk"
                                                            and moving_parent.GetParentTransformNode() is None):
                # the moving volume is registered on its own grid, from where it is shown (e.g. pre-aligned in
                # the Transforms module); the result, like any start, includes it: it replaces that parent
                initialTransformNode = moving_parent
            else:  # the torch backend starts only from a linear transform; a deformation under another is not read
                unused_parent = moving_parent
        # a grid transform moves the fixed volume's points outside its grid as Slicer shows it (its edge's
        # displacement), so the registration starts where the moving volume is shown
        initial = (mrml.sitk_transform_from_node(initialTransformNode, fixed) if initialTransformNode is not None
                   else None)
        if initial is not None and overlap_fraction(fixed, moving, initial) <= 0.0:
            how = ("is shown through transform" if initialTransformNode is moving_parent
                   else "is placed by the initial transform")
            raise InputError(f"The moving volume '{movingVolumeNode.GetName()}' {how} '{initialTransformNode.GetName()}' "
                             f"where it does not overlap the fixed volume '{fixedVolumeNode.GetName()}'; the "
                             "registration starts there.",
                             "Move it over the fixed volume (Transforms module) or remove that transform, or choose "
                             "an initializer (geometry, moments) to start from the volumes' centres"
                             + ("." if initialTransformNode is moving_parent
                                else " in place of the initial transform (not with it, which replaces it)."))

        # its warnings name the initial transform by its node (a displacement field not covering the fixed volume)
        result = register(fixed, moving, settings, fixed_mask=fixed_mask, moving_mask=moving_mask,
                          initial_transform=initial, progress=scaled(progress, 0.02, 0.9), backend=backend,
                          initial_transform_name=None if initial is None else initialTransformNode.GetName())
        report(progress, 0.9, "creating output nodes")
        name = f"{movingVolumeNode.GetName()} to {fixedVolumeNode.GetName()}"
        transform_node = _in_world(mrml.transform_node_from_sitk(result.transform, scene, name=name,
                                                                 node=outputTransformNode))
        metrics: dict[str, Any] = {
            "metric_before": _scalar(result.metric_before),
            "metric_after": _scalar(result.metric_after),
            "seconds": _scalar(result.seconds),
            "transform_type": result.transform.GetName(),
        }
        resampled_node = None
        if resample and _is_label_map(movingVolumeNode):
            # labels are resampled nearest-neighbour in their own pixel type into a label map shown with the
            # moving volume's colour table (linear interpolation had invented labels between them at every edge)
            labels = resample_image(mrml.image_from_volume_node(movingVolumeNode), fixed, result.transform,
                                    interpolation="nearest")
            metrics.update(_registered_alignment(fixed, moving, result, fixed_mask, sitk.Cast(labels, sitk.sitkFloat32)))
            resampled_node = _in_world(mrml.volume_node_from_image(
                labels, scene, name=f"{movingVolumeNode.GetName()} registered", node=outputVolumeNode, label=True))
            mrml.copy_color_table(movingVolumeNode, resampled_node)
        elif resample:
            resampled = resample_image(moving, fixed, result.transform)
            # over the fixed voxels the registered volume reaches (within the fixed mask), as ITK and ANTs count them
            metrics.update(_registered_alignment(fixed, moving, result, fixed_mask, resampled))
            # an 8-bit moving volume stays 8-bit, as `mmfusion run` writes it: fusing it then gives the CLI's numbers
            moving_8bit = movingVolumeNode.GetImageData().GetScalarTypeAsString() == "unsigned char"
            resampled_node = _written(mrml.volume_node_from_image(
                round_to_8bit(resampled) if moving_8bit else resampled, scene,
                name=f"{movingVolumeNode.GetName()} registered", node=outputVolumeNode))
        if resampled_node is not None:
            # the moving volume's voxels on the fixed grid, in its units: its VoxelValueUnits and Quantity as they are
            # (a PET's Bq/ml or SUV, a CT's HU); the node had none, and a reused one kept those of its old voxels
            mrml.copy_voxel_value_units(movingVolumeNode, resampled_node)
        if applyTransform:
            shown_through = movingVolumeNode.GetParentTransformNode()
            # read before the volume moves: a mask that is the moving volume itself would be under the result
            mask_parent = movingMaskNode.GetParentTransformNode() if movingMaskNode is not None else None
            mrml.set_parent_transform(movingVolumeNode, transform_node)
            if movingMaskNode is not None and movingMaskNode is not fixedMaskNode:
                # the mask was read where it lay relative to the volume; only one under the volume's old transform
                # (or, like it, under none) keeps that place under the result. Any other (one under the output
                # transform too, which now holds the result) no longer lies on the volume as the registration used it
                if mask_parent is shown_through:
                    mrml.set_parent_transform(movingMaskNode, transform_node)
                else:
                    result.warnings.append(
                        f"The moving mask '{movingMaskNode.GetName()}' was under {_under(mask_parent)}"
                        + (" (now the result)" if mask_parent is transform_node else "")
                        + f", not under the moving volume's ({_under(shown_through)}), so it was not moved with the "
                        "volume: it no longer lies on the volume where the registration used it. To have a mask "
                        "move with its volume, put it under the same transform as the volume (Transforms module) "
                        "before registering.")
        if unused_parent is not None:
            result.warnings.append(
                f"The moving volume '{movingVolumeNode.GetName()}' is under the non-linear transform "
                f"'{unused_parent.GetName()}', which the registration did not start from (it started from the "
                "volume's own grid); harden that transform first to register the volume as shown.")
        for i, warning in enumerate(result.warnings):
            metrics[f"warning_{i + 1}"] = warning
        report(progress, 1.0, "registration done")
        return RegistrationOutputs(transform_node, resampled_node, result, metrics)

    # ------------------------------------------------------------------------------------------
    def fuseVolumes(self, anatomicalVolumeNode: Any, functionalVolumeNode: Any, *, method: str = "average",
                    transformNode: Any = None, outputVolumeNode: Any = None, weightsVolumeNode: Any = None,
                    metricsTableNode: Any = None, newNodeOnKindChange: bool = False,
                    progress: ProgressCallback | None = None, **methodParameters: Any) -> FusionOutputs:
        """Fuse a functional (or second anatomical) volume into an anatomical one: a new volume.

        The functional volume is resampled onto the anatomical volume's grid first: through
        ``transformNode`` when given (e.g. ``registerVolumes``' output), else through the transform it
        is under (what the slice views show, e.g. after ``registerVolumes(applyTransform=True)``),
        else as it lies. Single-slice volumes (Slicer's form of 2D images) are fused as 2D images,
        as ``mmfusion fuse`` fuses the image files.

        Console example::

            logic = slicer.util.getModuleLogic("MultimodalFusion")
            reg = logic.registerVolumes(getNode("MR"), getNode("PET"), preset="mr-pet-brain")
            out = logic.fuseVolumes(getNode("MR"), getNode("PET"), transformNode=reg.transformNode,
                                    method="wavelet", levels=3)
            logic.showFusion(getNode("MR"), out.fusedVolumeNode, opacity=0.6)

        Args:
            anatomicalVolumeNode: anatomy (MR, CT): the output takes its grid.
            functionalVolumeNode: function (PET, SPECT) or a second anatomical volume.
            method: fusion method (``MultimodalFusionLib.fusion.list_methods()``).
            transformNode: registration transform (fixed = anatomical, moving = functional).
            outputVolumeNode: volume node for the fused image; a new one when None (taken out of a
                transform it is under: the output lies on the anatomical volume's grid).
            weightsVolumeNode: volume node for the per-voxel weight map; a new one when None.
            metricsTableNode: table node for the fusion metrics; a new one when None.
            newNodeOnKindChange: when ``outputVolumeNode`` is of the other kind than the result
                (a colour node for a grey result, or the reverse: the method or the functional
                volume changed), make a new node instead of refusing (what the module's panel does).
            progress: ``progress(fraction, message)``; returning False cancels.
            **methodParameters: the method's parameters (e.g. ``weight=0.6``, ``levels=3``). The
                overlay's ``colormap`` is a colour table of the scene ("PET-Heat", "PET-Rainbow2",
                "Rainbow", "Iron", ...: the fused volume takes the colours the slice views give a
                volume with that table; a table's name wins over an engine map of the same name, e.g.
                "Rainbow") or one of the engine's maps ("pet", the default, "hot", "rainbow", "grey",
                a matplotlib name); ``opacity`` is the colour's opacity at the top of the window. Every method
                also takes the intensity windows of the fusion, each ``(low, high)`` in the volume's own units:
                ``window_a``, the anatomical volume's (a CT is otherwise scaled over its whole range, -1024..3000
                HU, and its soft tissue fused flat grey: ``window_a=(-160, 240)`` is Slicer's window 400, level
                40), and ``window_b`` (or ``window``), the functional volume's (e.g. a PET's SUV 0..8).

        Returns:
            FusionOutputs with ``fusedVolumeNode``, ``weightsVolumeNode``, ``metricsTableNode``,
            ``result``, ``metrics``.
        """
        from . import fusion
        from .pipeline import fuse_and_evaluate
        from .preprocess import resample as resample_image

        if anatomicalVolumeNode is None or functionalVolumeNode is None:
            raise InputError("Select both an anatomical and a functional volume.", "Choose the two volumes to fuse.")
        inputs = [anatomicalVolumeNode, functionalVolumeNode]
        _check_not_input(outputVolumeNode, inputs, "output volume")
        _check_not_input(weightsVolumeNode, inputs, "weights volume")
        if outputVolumeNode is not None and outputVolumeNode is weightsVolumeNode:
            raise InputError(f"'{outputVolumeNode.GetName()}' is selected for both the fused volume and the "
                             "weight map; the weight map would replace the fused image.",
                             "Select two different nodes, or leave one empty to create it.")
        _check_class(outputVolumeNode, "vtkMRMLScalarVolumeNode", "output volume", "volume node")
        weightsVolumeNode = _weights_output(weightsVolumeNode, newNodeOnKindChange)
        _check_class(metricsTableNode, "vtkMRMLTableNode", "metrics table", "table node")
        _check_no_label_map([(anatomicalVolumeNode, "anatomical"), (functionalVolumeNode, "functional")])
        # the output takes the anatomical grid; shown without that transform it would be offset
        _check_not_under_transform(anatomicalVolumeNode, "anatomical", "fuse")
        parent = functionalVolumeNode.GetParentTransformNode()
        if parent is not None and transformNode is not None and parent is not transformNode:
            raise InputError(f"The functional volume '{functionalVolumeNode.GetName()}' is under transform "
                             f"'{parent.GetName()}' and transform '{transformNode.GetName()}' was given too.",
                             "Give only one: remove the volume's transform, or leave transformNode empty to fuse "
                             "it as it is shown.")
        # a functional volume shown through a transform (e.g. after registerVolumes(applyTransform=True))
        # is fused as it is shown
        transformNode = transformNode or parent
        scene = self._sceneOfAll([(anatomicalVolumeNode, "anatomical volume"), (functionalVolumeNode, "functional "
                                  "volume"), (transformNode, "transform"), (outputVolumeNode, "output volume"),
                                  (weightsVolumeNode, "weights volume"), (metricsTableNode, "metrics table")])
        engineParameters = dict(methodParameters)
        if method == "overlay":  # a colour table's name becomes its colours (before any work)
            engineParameters = _overlay_parameters(scene, engineParameters)
        report(progress, 0.0, "reading volumes")
        a = mrml.image_from_volume_node(anatomicalVolumeNode)
        b = mrml.image_from_volume_node(functionalVolumeNode)
        _check_finite((("anatomical", anatomicalVolumeNode, a), ("functional", functionalVolumeNode, b)))
        if transformNode is not None or not fusion.same_grid(a, b):
            before = b
            # a colour (vector) volume's channels, as pipeline and the web app resample them: a float RGB volume
            # under a rotation had been refused as a possible vector field, naming an argument this method lacks
            b = resample_image(b, a, mrml.sitk_transform_from_node(transformNode, a) if transformNode else None,
                               components="channels" if b.GetNumberOfComponentsPerPixel() > 1 else None)
            if not has_content(b) and has_content(before):
                raise InputError(f"The functional volume '{functionalVolumeNode.GetName()}' does not overlap the "
                                 f"anatomical volume '{anatomicalVolumeNode.GetName()}'"
                                 + (f" through transform '{transformNode.GetName()}'" if transformNode else "") + ".",
                                 "Register the two volumes first (registerVolumes), or check that the right "
                                 "volumes and transform are selected.")
        slice_volume = a if _single_slice(a) else None  # Slicer's form of a 2D image: fused as 2D
        if slice_volume is not None:
            a, b = io.one_slice_pixels(a), io.one_slice_pixels(b)
        # the pipeline's fusion step (fuse, then the metrics as the CLI and reports compute them)
        results, table_values = fuse_and_evaluate(a, b, [method], progress=scaled(progress, 0.05, 0.9),
                                                  method_params={method: engineParameters})
        result = results[0]
        if engineParameters.get("colormap") is not methodParameters.get("colormap"):
            result.parameters["colormap"] = methodParameters["colormap"]  # the table's name, not its colours
        fused_image, weights_image = result.image, result.weights
        if slice_volume is not None:
            fused_image = io.as_one_slice_of(fused_image, slice_volume)
            weights_image = io.as_one_slice_of(weights_image, slice_volume) if weights_image is not None else None
        metrics = {k: _scalar(v) for k, v in table_values[method].items()}
        for i, warning in enumerate(result.warnings):  # as registerVolumes records its warnings
            metrics[f"warning_{i + 1}"] = warning
        base = f"{anatomicalVolumeNode.GetName()} + {functionalVolumeNode.GetName()} {method}"
        colour = fused_image.GetNumberOfComponentsPerPixel() > 1
        if (newNodeOnKindChange and outputVolumeNode is not None
                and bool(outputVolumeNode.IsA("vtkMRMLVectorVolumeNode")) != colour):
            outputVolumeNode = None
        fused_node = _written(mrml.volume_node_from_image(fused_image, scene, name=base, node=outputVolumeNode))
        weights_node = None
        if weights_image is not None:
            weights_node = _written(mrml.volume_node_from_image(weights_image, scene, name=f"{base} weights",
                                                                 node=weightsVolumeNode))
            mrml.setup_weights_display(weights_node)  # weights on 0..1, not stretched over the map's own range
        table = mrml.metrics_table_node({"fusion": metrics}, scene, name=f"{base} metrics", node=metricsTableNode)
        report(progress, 1.0, "fusion done")
        return FusionOutputs(fused_node, weights_node, table, result, metrics)

    # ------------------------------------------------------------------------------------------
    def run(self, fixedVolumeNode: Any, movingVolumeNode: Any, *, preset: str | None = None,
            stages: Sequence[str] | str | None = None, fixedMaskNode: Any = None, movingMaskNode: Any = None,
            seed: int | None = None, fusionMethod: str = "average", opacity: float = 0.5,
            colormap: str = "PET-Heat", outputTransformNode: Any = None, outputVolumeNode: Any = None,
            fusedVolumeNode: Any = None, weightsVolumeNode: Any = None, metricsTableNode: Any = None,
            newNodeOnKindChange: bool = False, show: bool = True, displayThreshold: float | None = 0.1,
            backend: str = "sitk", initializer: str | None = None, progress: ProgressCallback | None = None,
            **fusionParameters: Any) -> RunOutputs:
        """Register, resample, fuse, measure and show: the module's "Apply" button.

        Console example::

            logic = slicer.util.getModuleLogic("MultimodalFusion")
            out = logic.run(getNode("MR"), getNode("PET"), preset="mr-pet-brain", fusionMethod="laplacian",
                            opacity=0.5, colormap="PET-Rainbow2")
            print(MultimodalFusionLib.mrml.table_to_dict(out.metricsTableNode))

        Args:
            fixedVolumeNode: anatomical/fixed volume.
            movingVolumeNode: functional/moving volume.
            preset, stages, fixedMaskNode, movingMaskNode, seed, backend, initializer: see
                :meth:`registerVolumes`.
            fusionMethod: fusion method name.
            opacity: foreground (functional) opacity in the slice views; with ``fusionMethod="overlay"``
                also the overlay's opacity (the colour's at the top of the functional window).
            colormap: colour table of the functional volume ("PET-Heat", "PET-Rainbow2", ...); with
                ``fusionMethod="overlay"`` also the fused volume's colours (see :meth:`fuseVolumes`).
            outputTransformNode: transform node to write into (new when None).
            outputVolumeNode: resampled moving volume node (new when None).
            fusedVolumeNode: fused volume node (new when None).
            weightsVolumeNode: weight-map volume node, for methods with one (new when None; give the
                previous run's to reuse it).
            metricsTableNode: metrics table node (new when None).
            newNodeOnKindChange: see :meth:`fuseVolumes` (and :meth:`registerVolumes`, for the registered
                volume and the weight map too). A label map as the fixed or moving volume is refused: its fusion
                means nothing (:meth:`registerVolumes`, then :meth:`showFusion`, shows it over the fixed volume).
            show: set the slice views: background = fixed, foreground = registered moving volume.
            displayThreshold: with ``show``, the fraction of the display window below which the
                foreground is transparent (None: no threshold); ``threshold`` of :meth:`showFusion`
                (``threshold=`` here goes to the fusion method, e.g. the overlay's).
            progress: ``progress(fraction, message)``; returning False cancels.
            **fusionParameters: parameters of the fusion method, and its windows ``window_a`` (the fixed volume's)
                and ``window_b`` or ``window`` (the moving volume's), see :meth:`fuseVolumes`. A window that holds
                none of its volume's values is refused before the registration.

        Returns:
            RunOutputs (``transformNode``, ``resampledVolumeNode``, ``fusedVolumeNode``,
            ``metricsTableNode``, and the engine results).
        """
        inputs = [fixedVolumeNode, movingVolumeNode, fixedMaskNode, movingMaskNode]
        _check_not_input(fusedVolumeNode, inputs, "fused volume")
        _check_not_input(weightsVolumeNode, inputs, "weights volume")
        # the registered volume is the fusion's input, and the fused image and the weight map are two outputs:
        # one node for two of them was refused only once the registration had run (or not at all)
        _check_distinct([(outputVolumeNode, "registered volume"), (fusedVolumeNode, "fused volume"),
                         (weightsVolumeNode, "weight map")])
        for node, cls, what, kind in ((fusedVolumeNode, "vtkMRMLScalarVolumeNode", "fused volume", "volume node"),
                                      (metricsTableNode, "vtkMRMLTableNode", "metrics table", "table node")):
            _check_class(node, cls, what, kind)  # before the registration, not after it
        weightsVolumeNode = _weights_output(weightsVolumeNode, newNodeOnKindChange)
        if fixedVolumeNode is None or movingVolumeNode is None:
            raise InputError("Select both a fixed and a moving volume.", "Choose the two volumes to register.")
        # the fusion of a label map is refused: here, not once the registration had run
        _check_no_label_map([(fixedVolumeNode, "fixed"), (movingVolumeNode, "moving")])
        from . import fusion

        # every node in one scene: here, not once the registration had run (fuseVolumes checks its own)
        scene = self._sceneOfAll([(fixedVolumeNode, "fixed volume"), (movingVolumeNode, "moving volume"),
                                  (fixedMaskNode, "fixed mask"), (movingMaskNode, "moving mask"),
                                  (outputTransformNode, "output transform"), (outputVolumeNode, "output volume"),
                                  (fusedVolumeNode, "fused volume"), (weightsVolumeNode, "weights volume"),
                                  (metricsTableNode, "metrics table")])
        checked = fusionParameters
        if fusionMethod == "overlay":
            # the panel's one colour table and opacity: the fused overlay shows what the slice views show
            fusionParameters.update(colormap=colormap, opacity=opacity)
            checked = _overlay_parameters(scene, fusionParameters)
        fusion.check_parameters(fusionMethod, checked)  # a misspelt value must not wait for it either
        if show:  # nor the slice views' settings: a colour table 'Nope' or an opacity of 5 had been refused once the
            # registration and the fusion had run, their 8 nodes left in the scene
            mrml.check_display_settings(scene, opacity=opacity, colormap=colormap,
                                        threshold_fraction=displayThreshold)
        if any(fusionParameters.get(k) is not None for k in ("window", "window_a", "window_b")):
            # nor a window that holds none of its volume's values (the rule fuseVolumes applies, on the moving volume
            # before its registration): it had been refused once the registration had run
            from .pipeline import check_method_windows

            # (a single-slice volume as the 2D image it is fused as)
            fixed, moving = (io.one_slice_pixels(mrml.image_from_volume_node(node))
                             for node in (fixedVolumeNode, movingVolumeNode))
            check_method_windows(fixed, moving, [fusionMethod], {fusionMethod: fusionParameters})
        if fusionMethod == "deep":
            # nor a deep fusion past the memory, its per-study adaptation or its inference (fuseVolumes refuses them
            # before they run): on the fixed volume's grid, which the fusion runs on
            from .fusion.deep.inference import check_adaptation

            check_adaptation(io.one_slice_pixels(mrml.image_from_volume_node(fixedVolumeNode)), **fusionParameters)
        registration = self.registerVolumes(
            fixedVolumeNode, movingVolumeNode, preset=preset, stages=stages, fixedMaskNode=fixedMaskNode,
            movingMaskNode=movingMaskNode, seed=seed, outputTransformNode=outputTransformNode,
            outputVolumeNode=outputVolumeNode, backend=backend, initializer=initializer,
            newNodeOnKindChange=newNodeOnKindChange, progress=scaled(progress, 0.0, 0.7))
        fusion_out = self.fuseVolumes(fixedVolumeNode, registration.resampledVolumeNode, method=fusionMethod,
                                      outputVolumeNode=fusedVolumeNode, weightsVolumeNode=weightsVolumeNode,
                                      metricsTableNode=metricsTableNode, newNodeOnKindChange=newNodeOnKindChange,
                                      progress=scaled(progress, 0.7, 0.95), **fusionParameters)
        # one table with both: the registration's and the fusion's numbers
        table = mrml.metrics_table_node({"registration": registration.metrics, "fusion": fusion_out.metrics},
                                        scene, node=fusion_out.metricsTableNode)
        if show:
            self.showFusion(fixedVolumeNode, registration.resampledVolumeNode, opacity=opacity, colormap=colormap,
                            threshold=displayThreshold)
        report(progress, 1.0, "done")
        return RunOutputs(registration, fusion_out, table)

    # ------------------------------------------------------------------------------------------
    def evaluateRegistration(self, fixedVolumeNode: Any, movingVolumeNode: Any, transformNode: Any = None, *,
                             fixedLabelNode: Any = None, movingLabelNode: Any = None, fixedPointsNode: Any = None,
                             movingPointsNode: Any = None, labels: Sequence[Any] | None = None) -> dict[str, Any]:
        """A registration's accuracy before (identity) and after (through ``transformNode``): label overlap and
        surface distances, landmark error (TRE) and image similarity, as ``mmfusion evaluate-registration``
        measures them from files (:func:`MultimodalFusionLib.metrics.evaluate_registration`), from the nodes.

        Console example::

            logic = slicer.util.getModuleLogic("MultimodalFusion")
            reg = logic.registerVolumes(getNode("MR"), getNode("PET"), preset="mr-pet-brain")
            out = logic.evaluateRegistration(getNode("MR"), getNode("PET"), reg.transformNode,
                                             fixedLabelNode=getNode("MR segmentation"),
                                             movingLabelNode=getNode("PET segmentation"),
                                             fixedPointsNode=getNode("F"), movingPointsNode=getNode("M"))
            out["labels"]["after"]["mean"]["dice"], out["landmarks"]["after"]["mean"], out["notes"]

        Nothing is added to the scene and no input is changed. Each label map, segmentation and point list is
        taken where Slicer shows it over its volume (the fixed ones over the fixed volume, the moving ones over the
        moving volume's own voxels): one under the same transform as its volume (or, like it, under none) as it
        is; one under another transform through the transforms between them (a note says so: points or labels
        placed on the moving volume before it was put under the registration's transform are then not on it).

        Args:
            fixedVolumeNode: the fixed (reference) volume; not under a transform (harden it first).
            movingVolumeNode: the moving volume.
            transformNode: the registration's transform node, as :meth:`registerVolumes` writes it: its transform
                "from parent" maps fixed points to the moving volume's own voxels (the ITK fixed -> moving
                transform; the moving volume under it is shown aligned). None: the transform the moving volume is
                under, if any (as it is shown, e.g. after ``registerVolumes(applyTransform=True)``), else the
                identity ("after" equals "before"). Given while the moving volume is under another transform, it is
                the whole transform (registerVolumes' includes the parent it started from): the parent is not
                applied, with a note. Two one-slice volumes (axial slices) under a 2D transform lifted to 3D (x and
                y moved alike at every depth, z kept: a linear one as Slicer loads the ``transform.tfm`` ``mmfusion
                register`` writes for them, a B-spline or displacement field stacked along z, or a composite of
                these) are scored as 2D images, their labels and points in the slices' 2D frames, as ``mmfusion
                evaluate-registration`` scores them (a point more than half a slice depth off its slice is refused);
                a non-linear one that keeps the slice's planes but cannot be taken back to 2D is refused. With
                no transform (none given, the moving volume under none) two such slices are scored on their planes
                too, through the identity of their 2D frames, as an identity transform node scores them.
            fixedLabelNode, movingLabelNode: both or neither; two label map volume nodes
                (``vtkMRMLLabelMapVolumeNode``: their labels, the moving one resampled nearest-neighbour onto the
                fixed one's grid) or two segmentation nodes (``vtkMRMLSegmentationNode``: each segment's binary
                labelmap on its volume's grid, segments **matched by name**, their order free; label i is the i-th
                segment of the fixed segmentation, ``label_names`` in the result maps the numbers to names;
                segments that overlap are scored each as its own binary mask, as Segment Comparison scores them). A
                label in one map only (a segment name in one segmentation only) is left out, as Learn2Reg leaves
                it out, with a note.
            fixedPointsNode, movingPointsNode: both or neither; markups point lists (``vtkMRMLMarkupsFiducialNode``)
                of corresponding points, paired by their order, in world coordinates through the transforms the
                lists are under. A point not placed (undefined, preview or missing) leaves its pair out, with a
                note, as an unplaced point of a ``.fcsv`` file does.
            labels: the labels to score (default: all): a list, or text "1,2" as ``mmfusion evaluate-registration
                --labels`` takes it, read by the same rule (:func:`~MultimodalFusionLib.segmentations.asked_labels`):
                numbers for label maps ("1", 1 and 1.0 are label 1), segment names for segmentations (a segment
                named "2" is asked for by "2").

        Returns:
            The engine's result: ``images``, ``labels`` (with ``left_out``) and ``landmarks``, each
            ``{"before": ..., "after": ...}``, ``notes`` and ``transform_convention``; with segmentations also
            ``label_names`` ({label: segment name}), with point lists ``landmark_nodes`` (each list's name and
            number of points).

        Raises:
            InputError: a node of the wrong kind or missing its partner, nodes of two scenes (or of none), a fixed
                volume under a transform, a colour volume, or what
                :func:`~MultimodalFusionLib.metrics.evaluate_registration` refuses.
        """
        from .landmarks import Landmarks
        from .metrics import evaluate_registration, slice_plane_transform

        if fixedVolumeNode is None or movingVolumeNode is None:
            raise InputError("Select both a fixed and a moving volume.", "Choose the two volumes the registration "
                                                                         "aligned.")
        for role, node in (("fixed", fixedVolumeNode), ("moving", movingVolumeNode)):
            if not node.IsA("vtkMRMLVolumeNode"):
                raise InputError(f"The {role} volume '{node.GetName()}' is a {node.GetClassName()}, not a volume node.",
                                 f"Select the {role} volume (image) node.")
        if transformNode is not None and not transformNode.IsA("vtkMRMLTransformNode"):
            raise InputError(f"The transform '{transformNode.GetName()}' is a {transformNode.GetClassName()}, not a "
                             "transform node.", "Select the registration's transform node (registerVolumes' "
                                                "transformNode), or none to evaluate as the volumes are shown.")
        for a, b, what in ((fixedLabelNode, movingLabelNode, "label map or segmentation"),
                           (fixedPointsNode, movingPointsNode, "point list")):
            if (a is None) != (b is None):
                given, missing = ("fixed", "moving") if a is not None else ("moving", "fixed")
                raise InputError(f"A {given} {what} was given without a {missing} one: the evaluation compares the "
                                 f"fixed volume's with the moving volume's.", f"Give both {what}s, or neither.")
        label_kind = self._labelKind(fixedLabelNode, movingLabelNode)
        for role, node in (("fixed", fixedPointsNode), ("moving", movingPointsNode)):
            if node is not None and not node.IsA("vtkMRMLMarkupsFiducialNode"):
                raise InputError(f"The {role} points '{node.GetName()}' are a {node.GetClassName()}, not a markups "
                                 "point list.", "Select a point list (Markups module: Point List) of the landmarks; "
                                                "lines, curves, planes and ROIs are no landmark lists.")
        if labels is not None and label_kind is None:
            raise InputError("labels were given without label maps or segmentations.",
                             "Give fixedLabelNode and movingLabelNode too, or leave labels out.")
        # one scene, as every Logic call: a moving volume of another scene is not shown under the transform node
        # given (nor is a label map or point list of another scene shown over the volumes), so "after" scored a
        # placement nobody sees
        self._sceneOfAll([(fixedVolumeNode, "fixed volume"), (movingVolumeNode, "moving volume"),
                          (transformNode, "transform"), (fixedLabelNode, "fixed labels"),
                          (movingLabelNode, "moving labels"), (fixedPointsNode, "fixed points"),
                          (movingPointsNode, "moving points")])
        _check_not_under_transform(fixedVolumeNode, "fixed", "evaluate")
        fixed = mrml.image_from_volume_node(fixedVolumeNode, float32=True)
        moving = mrml.image_from_volume_node(movingVolumeNode, float32=True)
        _check_grey((("fixed", fixedVolumeNode, fixed), ("moving", movingVolumeNode, moving)),
                    "its similarity is measured on grey volumes", "select the grey volume that was registered")
        # a constant volume is refused where the images alone are scored, as metrics.evaluate_registration refuses
        # it; with labels or points it is scored, with a note
        _check_finite((("fixed", fixedVolumeNode, fixed), ("moving", movingVolumeNode, moving)),
                      allow_constant=label_kind is not None or fixedPointsNode is not None)
        moving_parent = movingVolumeNode.GetParentTransformNode()
        notes: list[str] = []
        if transformNode is not None and moving_parent is not None and transformNode is not moving_parent:
            # the moving image is taken on its own grid: the parent is not composed with the given transform
            notes.append(f"the moving volume '{movingVolumeNode.GetName()}' is under {_under(moving_parent)}, which "
                         f"is not applied: '{transformNode.GetName()}' is taken as the whole fixed -> moving "
                         "transform (as registerVolumes writes it, including the parent it started from); 'before' "
                         "is the volumes on their own grids, not as shown")
        transformNode = transformNode or moving_parent
        transform = mrml.sitk_transform_from_node(transformNode, fixed) if transformNode is not None else None
        if transform is not None:
            # two one-slice volumes under the 2D transform their registration gave (as Slicer loads it: lifted
            # to 3D, z kept): scored as 2D images, the label maps and points in their slices' 2D frames, as
            # `mmfusion evaluate-registration` scores them; in 3D slices at other depths had lost every label
            # (a lifted 2D B-spline too: it had been scored in 3D)
            transform = slice_plane_transform(fixed, moving, transform, transformNode.GetName())
        for role, node, volume in (("fixed", fixedLabelNode, fixedVolumeNode), ("moving", movingLabelNode,
                                                                              movingVolumeNode),
                                   ("fixed", fixedPointsNode, fixedVolumeNode), ("moving", movingPointsNode,
                                                                               movingVolumeNode)):
            if node is not None and node.GetParentTransformNode() is not volume.GetParentTransformNode():
                notes.append(f"'{node.GetName()}' is under {_under(node.GetParentTransformNode())} and the {role} "
                             f"volume '{volume.GetName()}' under {_under(volume.GetParentTransformNode())}: taken where "
                             "it is shown over the volume, through the transforms between them (put it under the "
                             "volume's transform if it was placed on the volume as the volume was shown before)")
        fixed_labels = moving_labels = None
        names: dict[int, str] = {}
        lost_fixed: list[tuple[int, str, int]] = []
        lost_moving: list[tuple[int, str, int]] = []
        scored = None
        if label_kind == "segmentation":
            # labels read as --labels reads those of two .seg.nrrd files (segmentations.asked_labels)
            wanted = asked_labels(labels, [name for node in (fixedLabelNode, movingLabelNode)
                                           for _, name in _segment_names(node)])
            fixed_ids, moving_ids, names, scored = _matched_segments(fixedLabelNode, movingLabelNode, wanted)
            notes += _near_names(fixedLabelNode, movingLabelNode)
            fixed_labels = mrml.segments_label_map(fixedLabelNode, fixed_ids, fixed, fixedVolumeNode, lost_fixed)
            moving_labels = mrml.segments_label_map(movingLabelNode, moving_ids, moving, movingVolumeNode, lost_moving)
        elif label_kind == "labelmap":
            # as --labels of label map files: "1" and 1.0 are label 1, a name is refused (it had been refused as a
            # name for "1" too, and a text "12" read as the labels 1 and 2)
            scored = asked_labels(labels)
            fixed_labels = mrml.label_map_from_node(fixedLabelNode, fixed, fixedVolumeNode)
            moving_labels = mrml.label_map_from_node(movingLabelNode, moving, movingVolumeNode)
        fixed_points = moving_points = None
        if fixedPointsNode is not None:
            fixed_points, moving_points = (
                Landmarks(*mrml.control_points_lps(node, volume), path=node.GetName(), format="Slicer point list node",
                          coordinate_system="RAS world (Slicer), as LPS")
                for node, volume in ((fixedPointsNode, fixedVolumeNode), (movingPointsNode, movingVolumeNode)))
            for lm in (fixed_points, moving_points):
                if len(lm) == 0 or not lm.placed.any():
                    raise InputError(f"The point list '{lm.path}' holds no placed point ({len(lm)} points).",
                                     "Place the landmarks (Markups module), then evaluate.")
        result = evaluate_registration(fixed, moving, transform, fixed_labels=fixed_labels, moving_labels=moving_labels,
                                       fixed_landmarks=fixed_points, moving_landmarks=moving_points, labels=scored)
        if names:
            # a segment with voxels on its own grid and none on its volume's had vanished from both maps: in
            # neither the scores nor left_out, without a word (a 0.5 mm slab exported onto 2.5 mm slices); so had an
            # empty segment
            with_segments(result, names, [label for lost in (lost_fixed, lost_moving) for label, _, _ in lost])
            for role, node, volume, lost in (("fixed", fixedLabelNode, fixedVolumeNode, lost_fixed),
                                             ("moving", movingLabelNode, movingVolumeNode, lost_moving)):
                for label, name, own in lost:
                    spacing = " x ".join(f"{v:.3g}" for v in volume.GetSpacing())
                    if not own:  # an empty segment had no note: in neither map, so neither scored nor left out
                        result["notes"].append(empty_segment_note(name, label, node.GetName()))
                    else:
                        result["notes"].append(
                            f"segment '{name}' (label {label}) of '{node.GetName()}' has {own} voxels in its own binary "
                            f"labelmap and none on the {role} volume '{volume.GetName()}''s grid ({spacing} mm) it is "
                            "exported onto (thinner than its voxels, or outside it): not scored. To score it, give a "
                            "label map or volume of finer voxels, or make the segment thicker (Segment Editor)")
        if fixed_points is not None:
            result["landmark_nodes"] = {role: {"name": lm.path, "points": len(lm), "placed": int(lm.placed.sum())}
                                        for role, lm in (("fixed", fixed_points), ("moving", moving_points))}
        result["notes"] = notes + result["notes"]
        return result

    @staticmethod
    def _labelKind(fixedLabelNode: Any, movingLabelNode: Any) -> str | None:
        """"labelmap", "segmentation" or None, refusing a node of another kind and a pair of one of each."""
        kinds = []
        for role, node in (("fixed", fixedLabelNode), ("moving", movingLabelNode)):
            if node is None:
                return None
            if node.IsA("vtkMRMLSegmentationNode"):
                kinds.append("segmentation")
            elif node.IsA("vtkMRMLLabelMapVolumeNode"):
                kinds.append("labelmap")
            elif node.IsA("vtkMRMLScalarVolumeNode"):
                raise InputError(f"The {role} labels '{node.GetName()}' are a {node.GetClassName()}: a grey volume, "
                                 "whose intensities would be scored as labels.",
                                 "Convert it to a label map (Volumes module: Convert to label map) if it holds labels, "
                                 "or select a label map or segmentation.")
            else:
                raise InputError(f"The {role} labels '{node.GetName()}' are a {node.GetClassName()}, neither a label "
                                 "map nor a segmentation.", "Select a label map volume or a segmentation node.")
        if kinds[0] != kinds[1]:
            raise InputError(f"'{fixedLabelNode.GetName()}' is a {kinds[0].replace('labelmap', 'label map')} and "
                             f"'{movingLabelNode.GetName()}' a {kinds[1].replace('labelmap', 'label map')}: segments "
                             "match by name, label map labels by number, so the two cannot be paired.",
                             "Give two segmentations or two label maps (Segmentations module: Export/import "
                             "models and labelmaps converts one into the other).")
        return kinds[0]

    # ------------------------------------------------------------------------------------------
    def showFusion(self, backgroundVolumeNode: Any, foregroundVolumeNode: Any = None, *, opacity: float = 0.5,
                   colormap: str = "PET-Heat", threshold: float | None = 0.1) -> int:
        """Show anatomy as background and function (or a fused volume) as coloured foreground.

        Console example::

            logic = slicer.util.getModuleLogic("MultimodalFusion")
            logic.showFusion(getNode("MR"), getNode("PET registered"), opacity=0.4, colormap="PET-Rainbow2")

        Args:
            backgroundVolumeNode: anatomical volume, shown in grey.
            foregroundVolumeNode: functional volume, shown with ``colormap``; None: background only.
            opacity: foreground opacity, 0..1.
            colormap: colour table name ("PET-Heat", "PET-Rainbow2", "Inferno", ...).
            threshold: fraction of the display window below which the foreground is transparent
                (None: no threshold).

        Returns:
            The number of slice views updated.
        """
        if backgroundVolumeNode is None:
            raise InputError("No background (anatomical) volume given.", "Select the anatomical volume.")
        return mrml.show_fusion(backgroundVolumeNode, foregroundVolumeNode, opacity=opacity, colormap=colormap,
                                threshold_fraction=threshold,
                                scene=self._sceneOfAll([(backgroundVolumeNode, "background volume"),
                                                        (foregroundVolumeNode, "foreground volume")]))

    def saveResults(self, path: str) -> str:
        """Save the scene with all results as a Slicer bundle (``.mrb``) or ``.mrml`` scene.

        Console example::

            slicer.util.getModuleLogic("MultimodalFusion").saveResults("/tmp/fusion.mrb")
        """
        return mrml.save_scene(path, self._sceneOf())
