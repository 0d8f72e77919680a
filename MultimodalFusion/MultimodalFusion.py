"""MultimodalFusion: register and fuse multimodal volumes (CT, MR, PET, SPECT) in 3D Slicer.

A thin scripted module on the ``MultimodalFusionLib`` engine. The Logic class is the engine's
Qt-free ``FusionLogic`` (MultimodalFusionLib/slicer_logic.py), so the console API is the one that
is tested outside Slicer against a real MRML scene::

    logic = slicer.util.getModuleLogic("MultimodalFusion")
    out = logic.run(getNode("MR"), getNode("PET"), preset="mr-pet-brain", fusionMethod="wavelet")
"""

# No ``from __future__ import annotations`` here: @parameterNodeWrapper reads the annotations
# at class-creation time and needs them as real types (typing.Union/Optional, Python 3.9).
import contextlib
import logging
import os
import sys
import tempfile
from typing import Annotated, Optional, Union

import qt
import slicer
import vtk
from slicer import (
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
    vtkMRMLTableNode,
    vtkMRMLTransformNode,
    vtkMRMLVectorVolumeNode,
)
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


def _addEngineToPath() -> None:
    """Installed, MultimodalFusionLib sits next to this file; in a source checkout (module path
    <repo>/MultimodalFusion) it sits one folder up."""
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (here, os.path.dirname(here)):
        if os.path.isdir(os.path.join(folder, "MultimodalFusionLib")):
            if folder not in sys.path:
                sys.path.insert(0, folder)
            return


_addEngineToPath()

from MultimodalFusionLib import OperationCancelled, mrml, scenarios, slicer_dependencies  # noqa: E402
from MultimodalFusionLib.fusion import list_methods  # noqa: E402
from MultimodalFusionLib.registration import MAX_SEED, list_presets  # noqa: E402
from MultimodalFusionLib.registration.parameters import INITIALIZERS as REGISTRATION_INITIALIZERS  # noqa: E402
from MultimodalFusionLib.slicer_logic import FusionLogic  # noqa: E402

#: Preset choice meaning "no preset: the stages field with default settings".
NO_PRESET = "(none)"
PRESETS = [NO_PRESET, *list_presets()]
FUSION_METHODS = list_methods() if "deep" in list_methods() else [*list_methods(), "deep"]
COLORMAPS = list(mrml.FUNCTIONAL_COLORMAPS)
BACKENDS = ["sitk", "torch"]
#: Initializer choice meaning "the preset's" (geometry without a preset).
PRESET_INITIALIZER = "(preset)"
INITIALIZERS = [PRESET_INITIALIZER, *REGISTRATION_INITIALIZERS]


def resourcePath(relativePath: str) -> str:
    """A file under Resources/: the module's own (installed extension) or the repository's
    (source checkout, where Resources/ is next to the module folder)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for folder in (os.path.join(here, "Resources"), os.path.join(os.path.dirname(here), "Resources")):
        candidate = os.path.join(folder, relativePath)
        if os.path.exists(candidate):
            return candidate
    return os.path.join(here, "Resources", relativePath)


#
# MultimodalFusion
#


class MultimodalFusion(ScriptedLoadableModule):
    """Module description shown in Slicer's module panel and Help."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Multimodal Fusion"
        self.parent.categories = ["Registration"]
        # Slicer looks for Resources/Icons/<module>.png next to this file (installed extension); in a
        # source checkout ("Additional module paths") Resources/ is one folder up
        iconPath = resourcePath("Icons/MultimodalFusion.png")
        if os.path.isfile(iconPath):
            self.parent.icon = qt.QIcon(iconPath)
        self.parent.dependencies = []
        self.parent.contributors = ["MultimodalFusion developers"]
        self.parent.helpText = """
Register and fuse multimodal volumes: CT, MR (T1, T2, FLAIR, PD), PET and SPECT.
<ul>
<li><b>Registration</b>: rigid, affine and B-spline stages driven by Mattes mutual information,
with presets per modality pair (CT-MR head, MR-PET brain, PET-CT body, T1-T2 brain) and optional masks.
The result is a transform node and the moving volume resampled on the fixed grid.</li>
<li><b>Fusion</b>: average, maximum, PCA, wavelet, Laplacian pyramid, colour overlay, and a deep
(MONAI/PyTorch) fusion network; quality metrics go into a table.</li>
<li><b>Display</b>: anatomy as background, function as coloured foreground (PET-Heat, PET-Rainbow2, ...).</li>
</ul>
Every button is one method of the module logic, callable from the Python console:
<code>slicer.util.getModuleLogic("MultimodalFusion").run(fixedNode, movingNode, preset="mr-pet-brain")</code>.
See the <a href="https://github.com/MultimodalFusion/SlicerMultimodalFusion">documentation</a>.
"""
        self.parent.acknowledgementText = """
Built on SimpleITK (Lowman et al., 2013; Yaniv et al., J Digit Imaging 2018) and ITK's
Mattes mutual information metric (Mattes et al., IEEE TMI 2003; Viola and Wells, IJCV 1997),
B-spline free-form deformations (Rueckert et al., IEEE TMI 1999), PyWavelets (Lee et al., JOSS 2019),
MONAI (Cardoso et al., arXiv:2211.02701, 2022) and PyTorch. Fusion metrics follow CDDFuse
(Zhao et al., CVPR 2023). Test data: ITK's BrainWeb slices (Cocosco et al., NeuroImage 1997) and the
MNI152 2009a template (Fonov et al., NeuroImage 2011) carried by nilearn.
"""


#
# MultimodalFusionParameterNode
#


@parameterNodeWrapper
class MultimodalFusionParameterNode:
    """The module's GUI state, saved with the scene.

    fixedVolume, movingVolume - the volumes to register (moving onto fixed) and fuse.
        movingVolume may be a label map: Register resamples it into a label map (nearest-neighbour), Show
        shows it over the fixed volume; Fuse and Apply refuse it (its labels are not intensities).
    preset - registration preset; NO_PRESET: ``stages`` with default settings.
    stages - comma-separated stages (rigid, affine, bspline); empty (default): the preset's, rigid
        without a preset. Stages given here replace the preset's.
    initializer - the registration's start; PRESET_INITIALIZER: the preset's (geometry without one);
        "search" tries a grid of rotations first (volumes more than about 30 degrees apart).
    fixedMask, movingMask - optional metric masks (label map or segmentation).
    fusionMethod - pixel-level fusion method.
    colormap, opacity, threshold - display of the functional volume over the anatomy; colormap and
        opacity also colour the "overlay" fusion's volume.
    showResult - show the result in the slice views after Apply.
    seed, backend - reproducibility and computation backend.
    outputTransform, outputVolume, fusedVolume, weightsVolume, metricsTable - outputs (created when
        empty; reused by later runs, so repeated clicks add no nodes).
    """

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: Optional[Union[vtkMRMLScalarVolumeNode, vtkMRMLLabelMapVolumeNode]] = None
    preset: Annotated[str, Choice(PRESETS)] = NO_PRESET
    stages: str = ""
    initializer: Annotated[str, Choice(INITIALIZERS)] = PRESET_INITIALIZER
    fixedMask: Optional[Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]] = None
    movingMask: Optional[Union[vtkMRMLLabelMapVolumeNode, vtkMRMLSegmentationNode]] = None
    fusionMethod: Annotated[str, Choice(FUSION_METHODS)] = "average"
    colormap: Annotated[str, Choice(COLORMAPS)] = "PET-Heat"
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    threshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.1
    showResult: bool = True
    # the engine's one seed rule (check_seed): parameterNodeWrapper sets the spin box's range from this annotation,
    # over the .ui's (2^31 - 1 without a maximum, a seed the Logic refuses)
    seed: Annotated[int, WithinRange(0, MAX_SEED)] = 1
    backend: Annotated[str, Choice(BACKENDS)] = "sitk"
    outputTransform: vtkMRMLTransformNode
    outputVolume: Optional[Union[vtkMRMLScalarVolumeNode, vtkMRMLLabelMapVolumeNode]] = None
    # a union of node types must include None for parameterNodeWrapper (hence Optional)
    fusedVolume: Optional[Union[vtkMRMLScalarVolumeNode, vtkMRMLVectorVolumeNode]] = None
    weightsVolume: Optional[vtkMRMLScalarVolumeNode] = None
    metricsTable: vtkMRMLTableNode


#
# MultimodalFusionWidget
#


class MultimodalFusionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The module panel: binds the .ui to the parameter node and calls the Logic. No processing here."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(resourcePath("UI/MultimodalFusion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = MultimodalFusionLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.registerButton.connect("clicked(bool)", self.onRegisterButton)
        self.ui.fuseButton.connect("clicked(bool)", self.onFuseButton)
        self.ui.showButton.connect("clicked(bool)", self.onShowButton)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.saveSceneButton.connect("clicked(bool)", self.onSaveSceneButton)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.fixedVolume:
            # the first grey volume: GetFirstNodeByClass also returns label maps (a subclass), which the fixed
            # selector does not list (it shows only vtkMRMLScalarVolumeNode itself)
            firstVolumeNode = next((node for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                                    if node.GetClassName() == "vtkMRMLScalarVolumeNode"), None)
            if firstVolumeNode:
                self._parameterNode.fixedVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode: Optional[MultimodalFusionParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # connectGui binds every widget with a SlicerParameterName property to its field
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        p = self._parameterNode
        ready = bool(p and p.fixedVolume and p.movingVolume and p.fixedVolume.GetID() != p.movingVolume.GetID())
        for button in (self.ui.registerButton, self.ui.fuseButton, self.ui.showButton, self.ui.applyButton):
            button.enabled = ready
        hint = "Select two different volumes: fixed and moving."
        if not ready:
            self.ui.statusLabel.text = hint
        elif self.ui.statusLabel.text == hint:
            self.ui.statusLabel.text = ""

    # -------------------------------------------------------------------------- helpers
    @contextlib.contextmanager
    def _progress(self, title: str):
        """A modal progress dialog with a Cancel button, as an engine progress callback."""
        dialog = slicer.util.createProgressDialog(windowTitle=title, labelText=title, maximum=100, value=0)

        def callback(fraction: float, message: str) -> bool:
            dialog.value = int(round(100 * fraction))
            dialog.labelText = message
            slicer.app.processEvents()
            return not dialog.wasCanceled

        try:
            yield callback
        finally:
            dialog.close()

    def _ensureDependencies(self, method=None, backend=None) -> bool:
        """Install what an action fusing with ``method`` / registering with ``backend`` lacks, on
        the user's confirmation, never at import time: pure-Python packages with pip, PyTorch with
        Slicer's PyTorch extension (never pip), then MONAI with that torch pinned, so pip cannot
        pull torch from PyPI as a MONAI dependency (MultimodalFusionLib/slicer_dependencies.py)."""
        steps = slicer_dependencies.install_plan(method, backend)
        pipPackages = [r for step in steps if step.kind != slicer_dependencies.TORCH for r in step.requirements]
        if pipPackages and not slicer.util.confirmOkCancelDisplay(
                f"MultimodalFusion needs these Python packages: {', '.join(pipPackages)}. Install them now?"):
            return False
        for step in steps:
            if step.kind == slicer_dependencies.PIP:
                with slicer.util.WaitCursor():
                    slicer.util.pip_install(list(step.requirements))
            elif step.kind == slicer_dependencies.TORCH:
                try:
                    import PyTorchUtils  # the PyTorch extension (EXTENSION_DEPENDS PyTorch)
                except ImportError:
                    slicer.util.errorDisplay("Deep fusion and the torch backend need the PyTorch extension. "
                                             "Install 'PyTorch' from the Extensions Manager and restart Slicer.")
                    return False
                torchLogic = PyTorchUtils.PyTorchUtilsLogic()
                if not torchLogic.torchInstalled() and torchLogic.installTorch(askConfirmation=True) is None:
                    return False
            else:  # PIP_WITH_TORCH_PINNED
                with tempfile.TemporaryDirectory() as folder:
                    constraints = os.path.join(folder, "torch-constraint.txt")
                    with open(constraints, "w") as f:
                        f.write(slicer_dependencies.torch_constraint())
                    with slicer.util.WaitCursor():
                        slicer.util.pip_install([*step.requirements, "-c", constraints])
        return True

    def _run(self, title: str, work, method=None, backend=None) -> None:
        """Run ``work(progress)`` with error display, a cancellable progress dialog and a status line,
        after installing what fusing with ``method`` / registering with ``backend`` needs."""
        with slicer.util.tryWithErrorDisplay(f"{title} failed.", waitCursor=True):
            if not self._ensureDependencies(method, backend):
                return
            try:
                with self._progress(title) as progress:
                    message = work(progress)
            except OperationCancelled:
                self.ui.statusLabel.text = f"{title}: cancelled."
                return
            self.ui.statusLabel.text = message

    def _registrationArguments(self) -> dict:
        p = self._parameterNode
        return {"preset": None if p.preset == NO_PRESET else p.preset,
                "stages": [s.strip() for s in p.stages.split(",") if s.strip()] or None,
                "initializer": None if p.initializer == PRESET_INITIALIZER else p.initializer,
                "fixedMaskNode": p.fixedMask, "movingMaskNode": p.movingMask, "seed": p.seed,
                "outputTransformNode": p.outputTransform, "outputVolumeNode": p.outputVolume,
                "backend": p.backend}

    # -------------------------------------------------------------------------- buttons
    def onRegisterButton(self) -> None:
        def work(progress):
            p = self._parameterNode
            out = self.logic.registerVolumes(p.fixedVolume, p.movingVolume, progress=progress, newNodeOnKindChange=True,
                                             **self._registrationArguments())
            p.outputTransform, p.outputVolume = out.transformNode, out.resampledVolumeNode
            if p.showResult:
                self.logic.showFusion(p.fixedVolume, out.resampledVolumeNode, opacity=p.opacity,
                                      colormap=p.colormap, threshold=p.threshold)
            return (f"Registered: {out.metricText()} in {out.result.seconds:.1f} s. " + " ".join(out.result.warnings))

        self._run("Registration", work, backend=self._parameterNode.backend)

    def onFuseButton(self) -> None:
        def work(progress):
            p = self._parameterNode
            functional = p.outputVolume or p.movingVolume  # the registered volume when there is one
            transform = None if p.outputVolume else p.outputTransform
            # the overlay is coloured with the Display section's colour table and opacity (as Apply does)
            overlay = {"colormap": p.colormap, "opacity": p.opacity} if p.fusionMethod == "overlay" else {}
            out = self.logic.fuseVolumes(p.fixedVolume, functional, method=p.fusionMethod, transformNode=transform,
                                         outputVolumeNode=p.fusedVolume, weightsVolumeNode=p.weightsVolume,
                                         metricsTableNode=p.metricsTable, newNodeOnKindChange=True,
                                         progress=progress, **overlay)
            p.fusedVolume, p.metricsTable = out.fusedVolumeNode, out.metricsTableNode
            p.weightsVolume = out.weightsVolumeNode or p.weightsVolume
            slicer.util.setSliceViewerLayers(background=out.fusedVolumeNode, foreground=None, fit=True)
            return f"Fused ({p.fusionMethod}) in {out.result.seconds:.1f} s. " + " ".join(out.result.warnings)

        self._run("Fusion", work, method=self._parameterNode.fusionMethod)

    def onShowButton(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not show the fusion.", waitCursor=True):
            p = self._parameterNode
            self.logic.showFusion(p.fixedVolume, p.outputVolume or p.movingVolume, opacity=p.opacity,
                                  colormap=p.colormap, threshold=p.threshold)

    def onApplyButton(self) -> None:
        def work(progress):
            p = self._parameterNode
            arguments = self._registrationArguments()
            out = self.logic.run(p.fixedVolume, p.movingVolume, fusionMethod=p.fusionMethod, opacity=p.opacity,
                                 colormap=p.colormap, fusedVolumeNode=p.fusedVolume, newNodeOnKindChange=True,
                                 weightsVolumeNode=p.weightsVolume, metricsTableNode=p.metricsTable,
                                 show=p.showResult, displayThreshold=p.threshold, progress=progress, **arguments)
            p.outputTransform, p.outputVolume = out.transformNode, out.resampledVolumeNode
            p.fusedVolume, p.metricsTable = out.fusedVolumeNode, out.metricsTableNode
            p.weightsVolume = out.fusion.weightsVolumeNode or p.weightsVolume
            result = out.registration.result
            return (f"Done: {out.registration.metricText()}; fused with "
                    f"{p.fusionMethod}; metrics in '{out.metricsTableNode.GetName()}'. "
                    + " ".join(result.warnings + out.fusion.result.warnings))

        p = self._parameterNode
        self._run("Registration and fusion", work, method=p.fusionMethod, backend=p.backend)

    def onSaveSceneButton(self) -> None:
        path = qt.QFileDialog.getSaveFileName(None, "Save scene with results", "MultimodalFusion.mrb",
                                              "Slicer scene bundle (*.mrb)")
        if not path:
            return
        with slicer.util.tryWithErrorDisplay("Could not save the scene.", waitCursor=True):
            self.ui.statusLabel.text = f"Saved {self.logic.saveResults(path)}"


#
# MultimodalFusionLogic
#


class MultimodalFusionLogic(ScriptedLoadableModuleLogic, FusionLogic):
    """The console API: ``registerVolumes``, ``fuseVolumes``, ``run``, ``showFusion``, ``saveResults``.

    All of them come from :class:`MultimodalFusionLib.slicer_logic.FusionLogic` (glue: MRML nodes
    in, engine, new MRML nodes out), where each has a docstring with a console example::

        logic = slicer.util.getModuleLogic("MultimodalFusion")
        help(logic.registerVolumes)
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        FusionLogic.__init__(self, scene=None)  # None: the input nodes' scene, else slicer.mrmlScene

    def getParameterNode(self):
        return MultimodalFusionParameterNode(super().getParameterNode())


#
# MultimodalFusionTest
#


class MultimodalFusionTest(ScriptedLoadableModuleTest):
    """Self-test: the same scenarios the Testing/ cases run under pytest, here on slicer.mrmlScene."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_MrmlBridge()
        self.setUp()
        self.test_RegisterFuseShow()

    def _installDependencies(self):
        for step in slicer_dependencies.install_plan():  # scipy, PyWavelets: the tests use no torch
            slicer.util.pip_install(list(step.requirements))

    def test_MrmlBridge(self):
        """Volumes and transforms round-trip exactly; hardening reproduces the engine; display, table, save."""
        self._installDependencies()
        for name, scenario in scenarios.MRML_SCENARIOS.items():
            self.delayDisplay(f"MRML bridge: {name}")
            result = scenario(slicer.mrmlScene)
            logging.info(f"{name}: {result}")
        self.delayDisplay("MRML bridge test passed")

    def test_RegisterFuseShow(self):
        """The Logic end to end: register a PET-like phantom to an MR-like one, fuse, show, tabulate."""
        self._installDependencies()
        self.delayDisplay("Register, fuse and show")
        result = scenarios.check_logic_register_fuse_show(MultimodalFusionLogic(), slicer.mrmlScene)
        self.assertLess(result["mean_error_mm"], 2.0)
        self.delayDisplay(f"Logic test passed (registration error {result['mean_error_mm']:.2f} mm)")
