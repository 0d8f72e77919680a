"""What the web views show: the engine's images as MRML volumes in a trame-slicer scene.

:class:`FusionViewer` owns the volume nodes of one session (fixed, moving, registered,
fused) inside a ``trame_slicer.core.SlicerApp`` scene and sets up the display: anatomy as
the slice views' background, the functional (or fused) image as coloured foreground, and a
volume rendering of the fused image in the 3D views. It has no trame server or UI, so the
offscreen test drives it with trame-slicer's ``DirectViewFactory`` exactly as the web
application drives it with remote views. The conversion sitk.Image <-> MRML (LPS <-> RAS)
and the colour set-up are :mod:`MultimodalFusionLib.mrml`'s; nothing here repeats them.

Must run on the thread that owns the scene (VTK/MRML are not thread-safe): the web app
calls it from its asyncio loop, never from the worker thread.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, TypeVar

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..preprocess import COMPUTE_MASK

__all__ = ["FusionViewer", "ROLES", "capture_view", "DEFAULT_VR_PRESET", "CT_WINDOW_LEVEL_PRESETS",
           "looks_like_ct", "looks_like_suv", "orientation_labels", "slice_position_text"]

#: Volume roles of a session, in the order they appear.
ROLES = ("fixed", "moving", "registered", "fused", "weights")
_NODE_NAMES = {"fixed": "Fixed", "moving": "Moving", "registered": "Moving registered", "fused": "Fused",
               "weights": "Weight map"}
#: The display window of the weight map (the fixed image's weight per voxel): its whole scale, as the legend shows it.
WEIGHTS_RANGE = (0.0, 1.0)
#: Volume-rendering preset used for the fused image unless the user picks another.
DEFAULT_VR_PRESET = "MR-Default"

#: 3D Slicer's CT window/level presets (name: (window, level) in HU), as in the Volumes module's
#: ``Modules/Loadable/Volumes/Resources/VolumeDisplayPresets.json``.
CT_WINDOW_LEVEL_PRESETS: dict[str, tuple[float, float]] = {
    "CT-Bone": (1000.0, 400.0),
    "CT-Air": (1000.0, -426.0),
    "CT-Brain": (100.0, 50.0),
    "CT-Abdomen": (350.0, 40.0),
    "CT-Lung": (1400.0, -500.0),
}

_F = TypeVar("_F", bound=Callable[..., Any])

#: The patient direction of each RAS axis, its positive and negative way (radiology's letters, as ITK-SNAP shows them).
_RAS_LETTERS = (("R", "L"), ("A", "P"), ("S", "I"))
#: vtkCornerAnnotation's positions of the four edges of a view.
_EDGE_POSITIONS = {"bottom": 4, "right": 5, "left": 6, "top": 7}
#: vtkCornerAnnotation's upper right corner: the slice's position (the upper left holds trame-slicer's view buttons).
_POSITION_CORNER = 3


def _batched(method: _F) -> _F:
    """Run a display method inside :meth:`FusionViewer.batch` (one render at the end)."""
    @functools.wraps(method)
    def wrapper(self: FusionViewer, *args: Any, **kwargs: Any) -> Any:
        with self.batch():
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]



def _scalar_display(node: Any) -> Any:
    """The display node of a scalar volume node (None: no node, a colour volume, or not displayed)."""
    if node is None or node.IsA("vtkMRMLVectorVolumeNode"):
        return None
    return node.GetDisplayNode()

class FusionViewer:
    """Volume nodes and display settings of one fusion session in a trame-slicer scene.

    Args:
        slicer_app: a ``trame_slicer.core.SlicerApp`` whose view manager creates the views.
    """

    def __init__(self, slicer_app: Any):
        self.app = slicer_app
        self.scene = slicer_app.scene
        self.nodes: dict[str, Any] = {}
        self.images: dict[str, sitk.Image] = {}
        # (image, its preprocess.padding_mask) per role, computed at the first window taken of the image
        # (:meth:`padding`) and dropped when the role's image is set: 0.4-1 s a call on a 512x512x300 CT, which
        # loading one had paid 7 times over (its windows, ranges, Otsu threshold, CT test, fusion windows)
        self._padding: dict[str, tuple[sitk.Image, np.ndarray | None]] = {}
        self.colormap = "PET-Heat"
        self.opacity = 0.5
        self.foreground_role: str | None = None
        self.vr_preset = DEFAULT_VR_PRESET
        #: Display window of a functional foreground, as percentiles of its voxels inside the
        #: body: starting at the 40th percentile keeps background uptake (white matter, noise)
        #: transparent so that the hot regions stand out over the anatomy.
        self.functional_percentiles = (40.0, 99.5)
        #: Background (window, level) chosen by the user; None: the percentile rule of
        #: ``mrml.setup_anatomical_display`` ("Auto"). Kept over new registrations and fusions.
        self.background_window_level: tuple[float, float] | None = None
        #: Foreground (lower threshold, upper display limit) chosen by the user, per kind of
        #: foreground: "functional" (moving/registered, the image's own units), "fused" (the
        #: fused image's scale) and "weights" (the weight map's). A kind without one uses :attr:`functional_percentiles`
        #: (the weight map: :data:`WEIGHTS_RANGE`).
        self.functional_ranges: dict[str, tuple[float, float]] = {}
        # Window/level drag in the slice views (:meth:`enable_window_level_drag`): whether it is on,
        # who hears of a dragged value, the display node watched for it, the (window, level) this
        # viewer last put on that node, and how many :meth:`batch` blocks are open (while one is,
        # changes to the node are the viewer's own, not a drag).
        self._window_level_drag = False
        self._on_dragged_window_level: Callable[[tuple[float, float] | None], None] | None = None
        self._watched_display: Any = None
        self._watch_tag: int | None = None
        self._applied_window_level: tuple[float, float] | None = None
        self._batch_depth = 0
        # each slice view's orientation letters (:meth:`_label_orientations`): view name -> its vtkCornerAnnotation
        self._orientation_labels: dict[str, Any] = {}
        #: Where the plane of 2D images lies along S (mm), which their slice's position reads (:meth:`set_plane_s`)
        self.plane_s = 0.0
        self._label_orientations()

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Block rendering of direct-rendering views during several changes, then render once.

        Every MRML modification asks the views to render. Views with trame-slicer's
        ``DirectRendering`` (the offscreen, serverless case) render synchronously each time:
        one software render per change. Remote (RCA) views already coalesce requests on the
        event loop and are left alone (blocking them also kept the 3D view from picking up a
        new volume rendering). Views already blocked (not in the layout) stay blocked.
        """
        from trame_slicer.views import DirectRendering

        views = [v for v in self.app.view_manager.get_views()
                 if isinstance(getattr(v, "_scheduled_render", None), DirectRendering)]
        states = [view.set_render_blocked(True) for view in views]
        self._batch_depth += 1
        try:
            yield
        finally:
            self._batch_depth -= 1
            for view, was_blocked in zip(views, states):
                view.set_render_blocked(was_blocked)

    # ------------------------------------------------------------------ volumes
    @_batched
    def set_image(self, role: str, image: sitk.Image | None) -> Any:
        """Put ``image`` in the node of ``role`` (created on first use, updated in place after).

        Args:
            role: one of :data:`ROLES`.
            image: the image (LPS, as the engine uses it); None removes the role's node. Held as given, as the
                node's copy of its voxels is: an image changed afterwards is set again (its padding, which the
                display windows leave out, is found again then).

        Returns:
            The volume node (None when removed).
        """
        from .. import mrml

        if role not in ROLES:
            raise InputError(f"Unknown volume role '{role}'.", f"Use one of {', '.join(ROLES)}.")
        # The user's display ranges belong to the images: removing the fixed image forgets the
        # background window/level, removing the moving image the functional range; a new fused
        # image (another method, another scale) starts from the percentile rule again. A new
        # registered image keeps the functional range: it is the moving image, in its units.
        if role == "fixed" and image is None:
            self.background_window_level = None
        elif role == "moving" and image is None:
            self.functional_ranges.pop("functional", None)
        elif role in ("fused", "weights"):
            self.functional_ranges.pop(role, None)
        old = self.nodes.get(role)
        self._padding.pop(role, None)  # of the image set before, even where this one is the same object
        if image is None:
            if old is not None:
                self._remove_node(old)
            self.nodes.pop(role, None)
            self.images.pop(role, None)
            return None
        rgb = image.GetNumberOfComponentsPerPixel() > 1
        if old is not None and bool(old.IsA("vtkMRMLVectorVolumeNode")) != rgb:
            self._remove_node(old)  # scalar <-> colour: the node class must change
            old = None
        node = mrml.volume_node_from_image(image, self.scene, name=_NODE_NAMES[role], node=old)
        self.nodes[role] = node
        self.images[role] = image
        return node

    def _remove_node(self, node: Any) -> None:
        """Remove a volume node with what it brought: display nodes (volume rendering's too) and their
        volume-property nodes, which the scene would otherwise keep after every new result."""
        extra = []
        for i in range(node.GetNumberOfDisplayNodes()):
            display = node.GetNthDisplayNode(i)
            if display is None:
                continue
            extra.append(display)
            prop = display.GetVolumePropertyNode() if hasattr(display, "GetVolumePropertyNode") else None
            if prop is not None:
                extra.append(prop)
        if node.GetStorageNode() is not None:
            extra.append(node.GetStorageNode())
        if self._watched_display is not None and any(d is self._watched_display for d in extra):
            self._watch_background_display(None)
        self.scene.RemoveNode(node)
        for other in extra:
            if other.GetScene() is not None:
                self.scene.RemoveNode(other)

    def padding(self, image: sitk.Image) -> np.ndarray | None:
        """``preprocess.padding_mask`` of ``image``'s voxels (None: no padding), for the windows and ranges taken of
        it (``mask`` of ``preprocess.robust_range``, ``padding`` of :func:`image_range`, :func:`looks_like_ct`...):
        once per image set for a role (:meth:`set_image`), kept while it is that role's image; an image the viewer
        does not hold has it computed each time."""
        from ..preprocess import padding_mask

        role = next((r for r, held in self.images.items() if held is image), None)
        if role is None:
            return padding_mask(sitk.GetArrayViewFromImage(image))
        known = self._padding.get(role)
        if known is None or known[0] is not image:
            known = self._padding[role] = (image, padding_mask(sitk.GetArrayViewFromImage(image)))
        return known[1]

    def _node_padding(self, node: Any) -> Any:
        """:meth:`padding` of the image a grey volume node of this viewer holds, for mrml's display windows, which
        had found it again on the node's copy of the voxels (twice per load: ``show_fusion`` and the Auto window);
        ``preprocess.COMPUTE_MASK`` for any other node (a colour or label volume, whose display takes no window)."""
        role = next((r for r, held in self.nodes.items() if node is not None and held is node), None)
        if role is None or node.IsA("vtkMRMLVectorVolumeNode") or node.IsA("vtkMRMLLabelMapVolumeNode"):
            return COMPUTE_MASK
        return self.padding(self.images[role])

    def node(self, role: str) -> Any:
        """The volume node of ``role`` or None."""
        return self.nodes.get(role)

    @_batched
    def clear(self, roles: tuple[str, ...] = ROLES) -> None:
        """Remove the volumes of ``roles`` (and their volume renderings) from the scene."""
        for role in roles:
            self.set_image(role, None)

    # ------------------------------------------------------------------ slice views
    def default_foreground(self) -> str | None:
        """The functional layer to show: the registered moving image, else the raw moving one."""
        for role in ("registered", "moving"):
            if role in self.nodes:
                return role
        return None

    @_batched
    def show(self, foreground: str | None = None, *, opacity: float | None = None,
             colormap: str | None = None, reset_views: bool = False) -> None:
        """Fixed image as background, ``foreground`` (a role) coloured over it in every slice view.

        Args:
            foreground: role of the foreground ("moving", "registered", "fused" or "weights"); None picks
                :meth:`default_foreground`.
            opacity: foreground opacity 0..1 (default: the last one).
            colormap: colour table of the foreground, one of ``mrml.FUNCTIONAL_COLORMAPS``.
            reset_views: fit the views to the volumes (after loading new data).
        """
        from .. import mrml

        if opacity is not None:
            self.opacity = float(opacity)
        if colormap is not None:
            self.colormap = colormap
        background = self.nodes.get("fixed")
        if background is None:
            background = self.nodes.get("moving")
            fg_node = None
        else:
            role = foreground if foreground in self.nodes else self.default_foreground()
            self.foreground_role = role
            fg_node = self.nodes.get(role) if role else None
        if background is None:
            return
        mrml.show_fusion(background, fg_node, opacity=self.opacity, colormap=self.colormap, scene=self.scene,
                         background_padding=self._node_padding(background),
                         foreground_padding=self._node_padding(fg_node))
        self._configure_window_level_widgets()  # views made since the drag was enabled
        self._label_orientations()
        self._apply_background_window_level()
        self._setup_functional(fg_node)
        if reset_views:
            self.reset_views()
        self.render()

    @_batched
    def set_opacity(self, opacity: float) -> None:
        """Foreground opacity (0..1) in every slice view, without recomputing the display windows."""
        self.opacity = min(max(float(opacity), 0.0), 1.0)
        for view in self.app.view_manager.get_slice_views():
            view.set_foreground_opacity(self.opacity)
        self.render()

    @_batched
    def set_colormap(self, colormap: str) -> None:
        """Colour table of the foreground layer (one of ``mrml.available_colormaps(scene)``).

        Raises:
            InputError: the scene has no such table (the previous one stays in use).
        """
        from .. import mrml

        if colormap not in mrml.available_colormaps(self.scene):
            raise InputError(f"There is no colour table named '{colormap}' in this scene.",
                             f"Use one of {', '.join(mrml.available_colormaps(self.scene))}.")
        self.colormap = colormap
        node = self.nodes.get(self.foreground_role) if self.foreground_role else None
        self._setup_functional(node)
        self.render()

    def _setup_functional(self, node: Any) -> None:
        """Colour table from mrml, then a window that makes hot regions stand out.

        mrml's window spans the whole volume's percentiles, air included, so in a head PET most
        of the brain lands in the hot half of the colour table. Here the window starts at the
        40th percentile of the uptake inside the head (voxels above the Otsu threshold) and ends at their 99.5th
        percentile; voxels below the window are transparent.
        """
        from .. import mrml

        if node is None or node.IsA("vtkMRMLVectorVolumeNode"):
            return
        display = mrml.setup_functional_display(node, colormap=self.colormap, threshold_fraction=None,
                                                padding=self._node_padding(node))
        role = next((r for r, n in self.nodes.items() if n is node), None)
        if role is None:
            return
        image = self.images[role]
        lo, hi = self.functional_ranges.get(_range_kind(role)) or (WEIGHTS_RANGE if role == "weights" else (
            _functional_window(image, self.functional_percentiles, self.padding(image))))
        display.AutoWindowLevelOff()
        display.SetWindowLevelMinMax(lo, hi)
        display.AutoThresholdOff()
        upper = image_range(image, self.padding(image))[1]
        display.SetThreshold(lo, max(upper, hi))
        display.SetApplyThreshold(1)

    # ------------------------------------------------------------------ window/level
    def background_node(self) -> Any:
        """The volume shown as the slice views' background (the fixed image, else the moving one)."""
        return self.nodes.get("fixed") if "fixed" in self.nodes else self.nodes.get("moving")

    def background_role(self) -> str | None:
        return "fixed" if "fixed" in self.nodes else "moving" if "moving" in self.nodes else None

    def current_background_window_level(self) -> tuple[float, float] | None:
        """(window, level) of the background's display node, in the image's units (None: no scalar background)."""
        display = _scalar_display(self.background_node())
        return None if display is None else (float(display.GetWindow()), float(display.GetLevel()))

    @_batched
    def set_background_window_level(self, window: float | None, level: float | None = None) -> None:
        """Window/level of the background in the image's units, as Slicer's Volumes module sets it.

        Args:
            window: width of the displayed grey range (> 0); None goes back to "Auto" (the
                0.5..99.5th percentiles of the image).
            level: centre of the displayed grey range.
        """
        if window is None or level is None:
            self.background_window_level = None
        else:
            self.background_window_level = (max(float(window), 1e-6), float(level))
        self._apply_background_window_level()
        self.render()

    def _apply_background_window_level(self) -> None:
        from .. import mrml

        node = self.background_node()
        if node is None or node.IsA("vtkMRMLVectorVolumeNode"):
            return
        if self.background_window_level is None:
            display = mrml.setup_anatomical_display(node, padding=self._node_padding(node))
        else:
            display = node.GetDisplayNode() or mrml.setup_anatomical_display(node, padding=self._node_padding(node))
            window, level = self.background_window_level
            display.SetAutoWindowLevel(0)
            display.SetWindowLevel(window, level)
        self._applied_window_level = (float(display.GetWindow()), float(display.GetLevel()))
        if self._window_level_drag:
            self._watch_background_display(display)

    # ------------------------------------------------------------------ window/level drag
    def enable_window_level_drag(
            self, on_change: Callable[[tuple[float, float] | None], None] | None = None) -> None:
        """Left-drag in the slice views sets the anatomy's window/level, as in 3D Slicer.

        Slicer's own widget does the work (``vtkMRMLWindowLevelWidget``, held by the slice views'
        scalar-bar displayable manager), in Slicer's "Adjust window/level" mouse mode: dragging
        right widens the window, dragging up raises the level, each by the image's scalar range
        per the view's shorter side (a drag across the view spans the whole range, in any units).
        Only the background is adjusted: Slicer adjusts the layer under the cursor, which here is
        mostly the functional overlay, and that layer has its own threshold and upper limit. The
        wheel (slice scrolling), right-drag (zoom), middle-drag (pan) and the 3D view's rotation
        keep working: the widget claims the left button only.

        The dragged value becomes the user's window/level (:attr:`background_window_level`, kept
        over later display changes as a value set with :meth:`set_background_window_level`).

        Args:
            on_change: called after each change a drag makes, with the new (window, level), or
                with None when Slicer's reset (a double-click) put the display back to automatic:
                the viewer's Auto (the percentile rule) is applied then.
        """
        import slicer

        self._window_level_drag, self._on_dragged_window_level = True, on_change
        interaction = self.app.app_logic.GetInteractionNode()
        if interaction is not None:
            interaction.SetCurrentInteractionMode(slicer.vtkMRMLInteractionNode.AdjustWindowLevel)
        self._configure_window_level_widgets()
        display = _scalar_display(self.background_node())
        if display is not None:
            self._watch_background_display(display)

    def _configure_window_level_widgets(self) -> None:
        """Background-only window/level adjustment in every slice view (idempotent)."""
        if not self._window_level_drag:
            return  # leave Slicer's defaults
        import slicer

        for view in self.app.view_manager.get_slice_views():
            manager = view.get_displayable_manager_by_class(slicer.vtkMRMLScalarBarDisplayableManager)
            if manager is not None:
                manager.SetAdjustBackgroundWindowLevelEnabled(True)
                manager.SetAdjustForegroundWindowLevelEnabled(False)

    def _label_orientations(self) -> None:
        """The patient direction at each edge of every slice view (R/L, A/P, S/I) and the slice's position in its
        upper right corner as Slicer's slice controller shows it (``S: 12.0 mm``), kept up to date (idempotent).

        The views had no orientation cue at all: nothing said which side of an axial slice is the patient's left,
        nor where the slice shown lies.
        The letters follow the slice's own orientation (:func:`orientation_labels` of its SliceToRAS), so a slice
        turned to an oblique volume's axes is labelled by the direction it mostly shows.
        """
        from vtkmodules.vtkCommonCore import vtkCommand
        from vtkmodules.vtkRenderingAnnotation import vtkCornerAnnotation

        for view in self.app.view_manager.get_slice_views():
            node = view.get_view_node()
            if node is None or view.name in self._orientation_labels:
                continue
            annotation = vtkCornerAnnotation()
            annotation.SetMaximumFontSize(18)
            annotation.SetMinimumFontSize(10)
            annotation.SetLinearFontScaleFactor(3.0)
            text = annotation.GetTextProperty()
            text.SetColor(0.55, 0.85, 1.0)  # light blue: not the grey anatomy, nor PET-Heat's red-yellow over it
            text.BoldOn()
            text.ShadowOn()
            annotation.SetPickable(False)
            view.first_renderer().AddViewProp(annotation)
            self._orientation_labels[view.name] = annotation

            def update(slice_node: Any, _event: Any = None, annotation: Any = annotation) -> None:
                matrix = slice_node.GetSliceToRAS()
                rows = [[matrix.GetElement(i, j) for j in range(4)] for i in range(4)]
                rows[2][3] += self.plane_s  # the scene's S 0 of 2D images: where their plane lies
                labels = orientation_labels(rows)
                # the bottom letter two lines up: the page's slice slider lies over the bottom of each slice view
                labels["bottom"] += "\n\n"
                texts = {position: labels[edge] for edge, position in _EDGE_POSITIONS.items()}
                texts[_POSITION_CORNER] = slice_position_text(rows)
                for position, text in texts.items():
                    if annotation.GetText(position) != text:
                        annotation.SetText(position, text)

            update(node)
            node.AddObserver(vtkCommand.ModifiedEvent, update)

    def set_plane_s(self, s_mm: float) -> None:
        """The S coordinate (mm) of the plane the 2D images shown lie in: the one-slice volume a 2D pair was read
        from lies there, where the scene shows 2D images at S 0 (as Slicer shows a PNG), and the slice's position
        had read "S: 0.0 mm" for a slice at 37.5 mm; 0 for a PNG pair and for volumes."""
        self.plane_s = float(s_mm)
        for view in self.app.view_manager.get_slice_views():
            node = view.get_view_node()
            if node is not None:
                node.Modified()  # its corner's text again (:meth:`_label_orientations`)

    def _watch_background_display(self, display: Any) -> None:
        """Observe the background's display node, where Slicer's widget writes a dragged window/level."""
        if display is self._watched_display:
            return
        if self._watched_display is not None and self._watch_tag is not None:
            self._watched_display.RemoveObserver(self._watch_tag)
        self._watched_display, self._watch_tag = display, None
        if display is not None:
            from vtkmodules.vtkCommonCore import vtkCommand

            self._watch_tag = display.AddObserver(vtkCommand.ModifiedEvent, self._on_background_display_modified)

    def _on_background_display_modified(self, display: Any, _event: str) -> None:
        """Pick up a window/level that the viewer did not set (a drag in a slice view)."""
        if self._batch_depth or display is not _scalar_display(self.background_node()):
            return  # the viewer's own change, or a node that is no longer the background
        if display.GetAutoWindowLevel():  # Slicer's reset (double-click): the viewer's Auto instead
            self.set_background_window_level(None)
            if self._on_dragged_window_level is not None:
                self._on_dragged_window_level(None)
            return
        window_level = (float(display.GetWindow()), float(display.GetLevel()))
        if window_level == self._applied_window_level:
            return  # another property of the node changed (colour table, ...)
        self.background_window_level = self._applied_window_level = window_level
        if self._on_dragged_window_level is not None:
            self._on_dragged_window_level(window_level)

    def foreground_node(self) -> Any:
        """The foreground volume of the slice views (None when only the background is shown)."""
        return self.nodes.get(self.foreground_role) if self.foreground_role else None

    def current_functional_range(self) -> tuple[float, float] | None:
        """(lower threshold, upper display limit) of the scalar foreground, in the image's units."""
        display = _scalar_display(self.foreground_node())
        return None if display is None else (float(display.GetLowerThreshold()), float(display.GetWindowLevelMax()))

    @_batched
    def set_functional_range(self, lower: float | None, upper: float | None = None) -> None:
        """Lower threshold and upper display limit of the shown foreground (its own units).

        Voxels below ``lower`` are transparent; the colour table spans ``lower..upper`` and voxels
        above ``upper`` take its last colour. None goes back to the percentile rule
        (:attr:`functional_percentiles` of the uptake inside the body).
        """
        role = self.foreground_role
        if role is None or role not in self.nodes:
            return
        kind = _range_kind(role)
        if lower is None or upper is None:
            self.functional_ranges.pop(kind, None)
        else:
            lower, upper = float(lower), float(upper)
            if upper <= lower:  # an empty window: keep the colour table usable
                lo, hi = image_range(self.images[role], self.padding(self.images[role]))
                upper = lower + max(1e-6, 1e-3 * (hi - lo))
            self.functional_ranges[kind] = (lower, upper)
        self._setup_functional(self.nodes[role])
        self.render()

    # ------------------------------------------------------------------ 3D
    def vr_presets(self) -> list[str]:
        """Names of the volume-rendering presets trame-slicer ships (Slicer's presets)."""
        return [n for n in self.app.volume_rendering.preset_names() if n != "SubjectHierarchy"]

    def show_volume_rendering(self, role: str = "fused", preset: str | None = None) -> Any:
        """Volume-render ``role`` in the 3D views with ``preset``, fitted to the image's range.

        Slicer's presets are tuned to CT (Hounsfield units) or MR values; the fused image is on
        a 0..255 scale and PET in SUV-like units, so the preset's transfer functions are
        stretched onto the image's Otsu threshold..99.9th percentile to keep their shape.

        Args:
            role: the volume to render (the grey fused image by default).
            preset: a name from :meth:`vr_presets` (default :data:`DEFAULT_VR_PRESET`).

        Returns:
            The volume-rendering display node, or None when ``role`` has no volume.
        """
        node = self.nodes.get(role)
        if node is None:
            return None
        if node.IsA("vtkMRMLVectorVolumeNode"):
            raise InputError("A colour (RGB) volume cannot be volume-rendered.",
                             "Render the grey fused image (any fusion method except 'overlay').")
        preset = preset or self.vr_preset
        if preset not in self.vr_presets():
            raise InputError(f"Unknown volume-rendering preset '{preset}'.",
                             f"Use one of {', '.join(self.vr_presets())}.")
        self.vr_preset = preset
        with self.batch():
            display = self._setup_volume_rendering(role, node, preset)
        # The camera is fitted to what the renderers hold, and the volume-rendering
        # displayable manager adds the volume at the next render: render, then fit.
        threed_views = self.app.view_manager.get_threed_views()
        for view in threed_views:
            view.render()
        with self.batch():  # fitting the camera modifies it several times: render once after
            for view in threed_views:
                view.reset_view()
        self.render()
        return display

    def _setup_volume_rendering(self, role: str, node: Any, preset: str) -> Any:
        vr = self.app.volume_rendering
        for other in ROLES:  # one rendered volume at a time keeps the 3D view readable
            other_node = self.nodes.get(other)
            if other != role and other_node is not None and vr.has_vr_display_node(other_node):
                vr.get_vr_display_node(other_node).SetVisibility(False)
        display = vr.create_display_node(node, preset)
        vr.apply_preset(display, preset)
        lo, hi = _volume_rendering_range(self.images[role], self.padding(self.images[role]))
        _stretch_volume_property(vr.get_volume_node_property(node), lo, hi)
        view_ids = [v.get_view_node_id() for v in self.app.view_manager.get_threed_views()]
        display.SetViewNodeIDs(view_ids)
        display.SetVisibility(True)
        return display

    # ------------------------------------------------------------------ views
    def reset_views(self) -> None:
        """Fit every view to the loaded volumes."""
        for view in self.app.view_manager.get_views():
            view.reset_view()

    def render(self) -> None:
        """Ask every view to render (remote views schedule it; direct views render now)."""
        for view in self.app.view_manager.get_views():
            view.schedule_render()


def _range_kind(role: str) -> str:
    """Foregrounds sharing units share a user range: the moving image and its registered copy."""
    return role if role in ("fused", "weights") else "functional"


def image_range(image: sitk.Image, padding: Any = COMPUTE_MASK) -> tuple[float, float]:
    """(min, max) of the finite voxel values of a scalar image but its padding (``preprocess.without_padding``: a
    CT's -32768 outside its reconstruction circle, whose sliders had run from it), the range ``fusion.fuse``
    scales it by given no window; (0, 1) when nothing is finite. ``padding``: the image's
    ``preprocess.padding_mask`` where known (:meth:`FusionViewer.padding`), else computed."""
    from ..preprocess import without_padding

    arr = without_padding(sitk.GetArrayViewFromImage(image), padding)
    if arr.size == 0:
        return 0.0, 1.0
    return float(arr.min()), float(arr.max())


def _finite_sample(image: sitk.Image, keep: np.ndarray | None = None) -> np.ndarray:
    """A regular subsample (about a million voxels at most) of a scalar image's finite values (those where ``keep``,
    in the image's shape, is true), for :func:`looks_like_ct` and :func:`looks_like_suv`."""
    arr = sitk.GetArrayViewFromImage(image).ravel()
    step = max(1, arr.size // 1_000_000)
    sample = arr[::step] if keep is None else arr[::step][keep.ravel()[::step]]
    return sample[np.isfinite(sample)] if np.issubdtype(sample.dtype, np.floating) else sample


def looks_like_ct(image: sitk.Image, padding: Any = COMPUTE_MASK) -> bool:
    """True for an image in Hounsfield units: air near -1000 HU and values reaching bone's hundreds, none below
    ``preprocess.LOWEST_HU`` but padding (``preprocess.padding_mask``): a fill value (-32768, int16's lowest, outside
    the reconstruction circle of many scanners' exports) and, in an image resampled from a padded one, its
    interpolated rim (mixtures of the fill and the image, B-spline's overshoot), left out. A CT so padded had been
    offered no CT presets, and one so padded then rotated none either (its rim read as values below any HU); an MR
    or a PET so padded (the rest 0 and up) is still none, and an image whose values run on below -3100 (a phase
    map, a difference image) is not one either. ``padding``: as :func:`image_range` takes it."""
    if image.GetNumberOfComponentsPerPixel() > 1:
        return False
    from ..preprocess import LOWEST_HU, padding_mask

    arr = sitk.GetArrayViewFromImage(image)
    if padding is COMPUTE_MASK:
        padding = padding_mask(arr)  # on the whole image: the padding's rim is told by its neighbours
    sample = _finite_sample(image, None if padding is None or padding.all() else ~padding)
    # any other value below -3100 left: no HU (below)
    if sample.size == 0:
        return False
    low, high = (float(v) for v in np.percentile(sample, [1.0, 99.9]))
    return low <= -500.0 and float(sample.min()) >= LOWEST_HU and high >= 100.0


def looks_like_suv(image: sitk.Image) -> bool:
    """True for a PET that reads as SUV (standardised uptake, g/mL). A DICOM PET says so: its Units (0054,1001), which
    :func:`..io.read_image` keeps, GML (SUV body weight) is SUV, BQML (Bq/mL), CNTS (counts) or any other code is not.
    A NIfTI carries no unit, so its values are all there is: float values from about 0 (noise a little below it)
    whose 99.9th percentile lies between 1 and 60 (a head's or a body's uptake; a bladder's maximum may go past). A PET
    in Bq/mL (thousands), a CT (negative HU), an MR (hundreds, or 0..1 after normalisation) and an integer image (a
    SPECT in counts 0..40, a mask) are not SUV; a PET in kBq/mL, or a float map of small values (an ADC map in
    10^-3 mm^2/s), can pass for one."""
    from ..io import dicom_units

    if image.GetNumberOfComponentsPerPixel() > 1:
        return False
    units = dicom_units(image)
    if units:
        return units == "GML"
    if image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        return False
    sample = _finite_sample(image)
    if sample.size == 0:
        return False
    low, high = (float(v) for v in np.percentile(sample, [1.0, 99.9]))
    return low >= -1.0 and 1.0 <= high <= 60.0


def _percentiles(image: sitk.Image, low: float, high: float, padding: Any = COMPUTE_MASK) -> tuple[float, float]:
    from ..preprocess import robust_range

    return robust_range(sitk.GetArrayViewFromImage(image), low, high, padding)


def _functional_window(image: sitk.Image, percentiles: tuple[float, float],
                       padding: Any = COMPUTE_MASK) -> tuple[float, float]:
    """``percentiles`` of the voxels above the Otsu threshold (inside the body); ``padding`` as :func:`image_range`
    takes it."""
    arr = sitk.GetArrayViewFromImage(image)
    inside = arr[arr > _otsu(image, padding)]
    if inside.size < 100:
        return _percentiles(image, 1.0, 99.5, padding)
    lo, hi = (float(v) for v in np.percentile(inside, percentiles))
    return (lo, hi) if hi > lo else _percentiles(image, 1.0, 99.5, padding)


def _volume_rendering_range(image: sitk.Image, padding: Any = COMPUTE_MASK) -> tuple[float, float]:
    """The values a preset's transfer functions are stretched onto: its Otsu threshold (below it lie air and noise,
    which would otherwise fill the box around the head with haze) .. its 99.9th percentile, both without its padding.

    The background, the value that fills most of the volume's faces (a fused image's outside of the head, constant
    where both sources are), is kept below the curve: a z-scored MR's background is 0 in a head of -1..4, so it lies
    inside the fused image's range, above its Otsu threshold, and the 3D view showed an opaque box. Where it lies at
    or above the threshold, the range is taken from the other voxels (their Otsu threshold..99.9th percentile) and
    starts 1% of it above the background."""
    from ..preprocess import padding_mask, without_padding

    _, hi = _percentiles(image, 1.0, 99.9, padding)
    lo = _otsu(image, padding)
    arr = sitk.GetArrayViewFromImage(image)
    background = _border_value(arr)
    if background is not None and lo <= background < hi:
        padding = padding_mask(arr) if padding is COMPUTE_MASK else padding
        keep = arr != background if padding is None else (arr != background) & ~padding
        values = without_padding(arr[keep], None)  # the finite ones
        if values.size >= 100:
            # 1% of the range above the background: the renderer samples the curve into a table, so a curve
            # starting right at the background still gave it some opacity, a faint box (a fifth of a BraTS view)
            hi = float(np.percentile(values, 99.9))
            lo = max(_otsu(sitk.GetImageFromArray(values.astype(np.float32).reshape(1, -1)), None),
                     background + 0.01 * (hi - background))
    if not lo < hi:
        lo, hi = _percentiles(image, 1.0, 99.9, padding)
    return lo, hi


def _border_value(arr: np.ndarray) -> float | None:
    """The value of at least half the voxels on the faces of a 3D volume (its background), or None."""
    if arr.ndim != 3 or min(arr.shape) < 2:
        return None
    faces = np.concatenate([f.ravel() for f in (arr[0], arr[-1], arr[:, 0], arr[:, -1], arr[:, :, 0], arr[:, :, -1])])
    values, counts = np.unique(faces, return_counts=True)
    top = int(np.argmax(counts))
    return float(values[top]) if 2 * counts[top] >= faces.size else None


def _otsu(image: sitk.Image, padding: Any = COMPUTE_MASK) -> float:
    """The Otsu threshold of the image's values but its padding (``preprocess.without_padding``: with a CT's
    -32768 in, the threshold split the padding from the rest and the volume rendering began far below the air)."""
    from ..preprocess import without_padding

    values = without_padding(sitk.GetArrayViewFromImage(image), padding)
    if values.size == 0:
        return 0.0
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.Execute(sitk.GetImageFromArray(values.astype(np.float32).reshape(1, -1)))
    return float(otsu.GetThreshold())


def _stretch_volume_property(prop: Any, lo: float, hi: float) -> None:
    """Map the x range of a preset's opacity points onto ``lo..hi`` (colour points alike)."""
    opacity = prop.get_opacity_map_values() or []
    color = prop.get_color_map_values() or []
    # Presets pad their curves with points at the far ends of the CT range; use the points
    # where opacity changes to find the part of the curve that matters.
    xs = [p[0] for p in opacity]
    ys = [p[1] for p in opacity]
    inner = [x for i, x in enumerate(xs) if 0 < i < len(xs) - 1 or ys[i] > 0]
    x0, x1 = (min(inner), max(inner)) if len(inner) >= 2 else (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x1 <= x0:
        x1 = x0 + 1.0
    scale = (hi - lo) / (x1 - x0)

    def remap(points: list[list[float]]) -> list[list[float]]:
        out, last = [], None
        for p in points:
            x = lo + (p[0] - x0) * scale
            if last is not None and x <= last:  # transfer functions need strictly rising x
                x = last + 1e-6 * (hi - lo)
            out.append([x, *p[1:]])
            last = x
        return out

    prop.set_opacity_values(remap(opacity))
    prop.set_color_map_values(remap(color))


def orientation_labels(slice_to_ras: Any) -> dict[str, str]:
    """The patient directions at the edges of a slice view, as radiology names them (R, L, A, P, S, I).

    Args:
        slice_to_ras: the slice's orientation, a 3x3 (or 4x4) matrix whose first column is the direction (RAS)
            of the view's rightward axis and second its upward axis, as a Slicer slice node's SliceToRAS.

    Returns:
        ``{"left", "right", "top", "bottom"}`` -> the letter of the patient direction that edge lies toward: the
        RAS axis nearest the screen axis, e.g. Slicer's axial view (radiological convention) ``right: "L",
        left: "R", top: "A", bottom: "P"``.
    """
    m = np.asarray(slice_to_ras, dtype=float)[:3, :3]

    def letter(direction: np.ndarray) -> str:
        axis = int(np.argmax(np.abs(direction)))
        return _RAS_LETTERS[axis][0 if direction[axis] > 0 else 1]

    right, up = m[:, 0], m[:, 1]
    return {"right": letter(right), "left": letter(-right), "top": letter(up), "bottom": letter(-up)}


def slice_position_text(slice_to_ras: Any) -> str:
    """Where a slice lies, as Slicer's slice controller names it: ``"S: 12.0 mm"`` for an axial slice 12 mm superior
    to the origin (``R:`` sagittal, ``A:`` coronal: the RAS coordinate of a slice across that axis); a tilted slice
    its distance from the origin along its normal with no letter (``"50.3 mm"``), Slicer's slice offset, which its
    slider holds and its controller shows so for a Reformat slice, unchanged by a pan in the slice's plane.

    Args:
        slice_to_ras: a Slicer slice node's SliceToRAS, 4x4: the third column its normal, the fourth its centre (RAS).
    """
    m = np.asarray(slice_to_ras, dtype=float)
    normal, centre = m[:3, 2], m[:3, 3]
    axis = int(np.argmax(np.abs(normal)))
    if abs(abs(normal[axis]) - 1.0) <= 1e-6:  # across a RAS axis: every point of the slice has that coordinate
        return f"{'RAS'[axis]}: {centre[axis] + 0.0:.1f} mm"
    return f"{float(np.linalg.solve(m[:3, :3], centre)[2]) + 0.0:.1f} mm"  # vtkMRMLSliceNode::GetSliceOffset


def capture_view(view: Any) -> np.ndarray:
    """Render ``view`` (a trame-slicer view) and return its pixels, (rows, cols, 3) uint8, top row first.

    Args:
        view: a ``trame_slicer.views.AbstractView`` (slice or 3D).

    Returns:
        The RGB image of the view's render window.
    """
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkRenderingCore import vtkWindowToImageFilter

    window = view.render_window()
    window.Render()
    grab = vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.Update()
    image = grab.GetOutput()
    cols, rows, _ = image.GetDimensions()
    pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(rows, cols, -1)[..., :3]
    return np.ascontiguousarray(pixels[::-1])
