"""Static checks of the Slicer module against its .ui file (Qt cannot run here, so read both as text).

- every ``self.ui.<name>`` the module uses exists in MultimodalFusion.ui with the class its
  use needs;
- every parameter-node field is bound to exactly one widget (``SlicerParameterName``) of a class
  that Slicer's parameterNodeWrapper can connect to that field's type, node selectors list the
  field's node classes, sliders match the field's range, and no widget names a missing field;
- every node selector gets the scene (``mrmlSceneChanged`` -> ``setMRMLScene``);
- every output selector lists the node classes the Logic really writes into its field (the
  filter rule of Slicer's qMRMLSortFilterProxyModel: ``showChildNodeTypes`` false lists only the
  exact classes of ``nodeTypes``); needs slicer-core for the node classes;
- every Logic call of the widget names a FusionLogic method and only its named parameters (the
  registration arguments it splats included: run's ``**fusionParameters`` would swallow a misspelt one);
- the widget passes every Display setting to the Logic calls that show a result, and asks for
  (and installs) only what the clicked action needs, in the order of
  ``MultimodalFusionLib.slicer_dependencies.install_plan`` (torch from the PyTorch extension,
  never from pip);
- the module keeps the scripted-module template's shape: five classes, category
  "Registration", Logic built on the tested Qt-free FusionLogic, under 700 lines.
"""

from __future__ import annotations

import ast
import inspect
import re
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE = ROOT / "MultimodalFusion" / "MultimodalFusion.py"
UI = ROOT / "Resources" / "UI" / "MultimodalFusion.ui"

#: widget class expected from a name's suffix (Slicer's naming convention, used throughout the .ui)
SUFFIX_CLASS = [
    ("CollapsibleButton", "ctkCollapsibleButton"),
    ("Button", "QPushButton"),
    ("Selector", "qMRMLNodeComboBox"),
    ("ComboBox", "QComboBox"),
    ("SliderWidget", "ctkSliderWidget"),
    ("SpinBox", "QSpinBox"),
    ("CheckBox", "QCheckBox"),
    ("LineEdit", "QLineEdit"),
    ("Label", "QLabel"),
]


def _ui_widgets() -> dict[str, ET.Element]:
    tree = ET.parse(UI)
    return {w.get("name"): w for w in tree.iter("widget")}


def _property(widget: ET.Element, name: str) -> ET.Element | None:
    for prop in widget.findall("property"):
        if prop.get("name") == name:
            return prop
    return None


def _module_tree() -> ast.Module:
    return ast.parse(MODULE.read_text(encoding="utf-8"))


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise AssertionError(f"class {name} not found in {MODULE.name}")


def _parameter_fields(tree: ast.Module) -> dict[str, ast.expr]:
    cls = _class(tree, "MultimodalFusionParameterNode")
    decorators = [d.id if isinstance(d, ast.Name) else getattr(d, "attr", "") for d in cls.decorator_list]
    assert "parameterNodeWrapper" in decorators, "the ParameterNode class is not a @parameterNodeWrapper"
    return {n.target.id: n.annotation for n in cls.body if isinstance(n, ast.AnnAssign)}


def _names_in(annotation: ast.expr) -> list[str]:
    return [n.id for n in ast.walk(annotation) if isinstance(n, ast.Name)]


def _value(node: ast.expr, tree: ast.Module) -> object:
    """A validator's argument: a literal, or a name the module imports from MultimodalFusionLib (MAX_SEED)."""
    import importlib

    if isinstance(node, ast.Name):
        for statement in tree.body:
            if isinstance(statement, ast.ImportFrom) and (statement.module or "").startswith("MultimodalFusionLib"):
                for alias in statement.names:
                    if (alias.asname or alias.name) == node.id:
                        return getattr(importlib.import_module(statement.module), alias.name)
        raise AssertionError(f"'{node.id}' is not imported from MultimodalFusionLib in {MODULE.name}")
    return ast.literal_eval(node)


def _range(annotation: ast.expr, tree: ast.Module) -> tuple[object, object]:
    """(minimum, maximum) of a field's validators (WithinRange, or Minimum and Maximum; None where unbounded), as
    Slicer's parameterNodeWrapper reads them to set a spin box's or slider's range."""
    calls = {n.func.id: [_value(a, tree) for a in n.args] for n in ast.walk(annotation)
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    if "WithinRange" in calls:
        return tuple(calls["WithinRange"])
    return (calls.get("Minimum", [None])[0], calls.get("Maximum", [None])[0])


def _method(tree: ast.Module, cls: str, name: str) -> ast.FunctionDef:
    for node in _class(tree, cls).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise AssertionError(f"{cls}.{name} not found in {MODULE.name}")


def _calls(function: ast.AST, attribute: str) -> list[ast.Call]:
    return [n for n in ast.walk(function) if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute) and n.func.attr == attribute]


def _keywords(call: ast.Call) -> dict[str, str]:
    return {k.arg: ast.unparse(k.value) for k in call.keywords if k.arg}


def _produced_output_classes() -> dict[str, set[str]]:
    """The node classes the Logic creates for each output field, made by the same
    MultimodalFusionLib.mrml functions on a real (slicer-core) scene."""
    import SimpleITK as sitk

    from MultimodalFusionLib import mrml

    scene = mrml.new_scene(colors=False, slice_views=False)
    grid = sitk.Image([12, 12, 12], sitk.sitkFloat32)
    rigid = sitk.Euler3DTransform()
    rigid.SetTranslation([1.0, 2.0, 3.0])
    bspline = sitk.BSplineTransformInitializer(grid, [2, 2, 2])
    field = sitk.DisplacementFieldTransform(sitk.Image([12, 12, 12], sitk.sitkVectorFloat64, 3))
    transforms = {mrml.transform_node_from_sitk(t, scene).GetClassName() for t in (rigid, bspline, field)}
    grey = mrml.volume_node_from_image(grid, scene).GetClassName()
    rgb = mrml.volume_node_from_image(sitk.Compose([sitk.Cast(grid, sitk.sitkUInt8)] * 3), scene).GetClassName()
    # a label map moving volume is registered into a label map (FusionLogic.registerVolumes)
    labels = mrml.volume_node_from_image(sitk.Cast(grid, sitk.sitkUInt8), scene, label=True).GetClassName()
    table = mrml.metrics_table_node({"mi": 0.5}, scene).GetClassName()
    return {"outputTransform": transforms, "outputVolume": {grey, labels}, "fusedVolume": {grey, rgb},
            "weightsVolume": {grey}, "metricsTable": {table}}


try:
    import slicer as _slicer

    HAVE_MRML = hasattr(_slicer, "vtkMRMLScene")
except ImportError:  # pragma: no cover - slicer-core is a test dependency
    HAVE_MRML = False


class UiStaticTest(unittest.TestCase):
    def setUp(self) -> None:
        self.widgets = _ui_widgets()
        self.tree = _module_tree()
        self.source = MODULE.read_text(encoding="utf-8")

    def test_every_widget_the_module_uses_exists_with_the_right_class(self) -> None:
        used = set(re.findall(r"self\.ui\.(\w+)", self.source))
        self.assertIn("applyButton", used)
        for name in sorted(used):
            with self.subTest(widget=name):
                self.assertIn(name, self.widgets, f"self.ui.{name} is used but not in {UI.name}")
                expected = next((cls for suffix, cls in SUFFIX_CLASS if name.endswith(suffix)), None)
                self.assertIsNotNone(expected, f"no naming rule for widget '{name}'")
                self.assertEqual(self.widgets[name].get("class"), expected)

    def test_every_named_widget_follows_the_naming_convention(self) -> None:
        for name, widget in self.widgets.items():
            if widget.get("class") in ("QLabel", "qMRMLWidget") and not name.endswith("Label"):
                continue  # form labels and the top-level widget
            expected = next((cls for suffix, cls in SUFFIX_CLASS if name.endswith(suffix)), None)
            with self.subTest(widget=name):
                self.assertEqual(widget.get("class"), expected)

    def test_sections_are_the_five_collapsible_buttons(self) -> None:
        sections = [_property(w, "text").find("string").text for w in self.widgets.values()
                    if w.get("class") == "ctkCollapsibleButton"]
        self.assertEqual(sections, ["Inputs", "Registration", "Fusion", "Display", "Advanced"])

    def test_every_parameter_field_is_bound_to_a_fitting_widget(self) -> None:
        fields = _parameter_fields(self.tree)
        bound: dict[str, list[ET.Element]] = {}
        for widget in self.widgets.values():
            prop = _property(widget, "SlicerParameterName")
            if prop is not None:
                bound.setdefault(prop.find("string").text, []).append(widget)
        self.assertEqual(set(bound) - set(fields), set(), "widgets bound to fields that do not exist")
        for field, annotation in fields.items():
            with self.subTest(field=field):
                self.assertIn(field, bound, f"parameter '{field}' is bound to no widget")
                self.assertEqual(len(bound[field]), 1, f"parameter '{field}' is bound to several widgets")
                widget = bound[field][0]
                cls = widget.get("class")
                names = _names_in(annotation)
                node_types = [n for n in names if n.startswith("vtkMRML")]
                if node_types:
                    self.assertEqual(cls, "qMRMLNodeComboBox")
                    listed = [s.text for s in _property(widget, "nodeTypes").iter("string")]
                    self.assertEqual(sorted(listed), sorted(node_types),
                                     f"selector of '{field}' lists {listed}, the field allows {node_types}")
                elif "bool" in names:
                    self.assertEqual(cls, "QCheckBox")
                elif "int" in names:
                    self.assertEqual(cls, "QSpinBox")
                    # parameterNodeWrapper's spin box connector sets the range from the annotation over the .ui's,
                    # -2^31 and 2^31 - 1 where a bound is missing: both must be there and be the .ui's
                    low, high = _range(annotation, self.tree)
                    self.assertIsNotNone(low, f"the int field '{field}' has no minimum (its box would go to -2^31)")
                    self.assertIsNotNone(high, f"the int field '{field}' has no maximum (its box would go to 2^31 - 1)")
                    ui_low = _property(widget, "minimum")
                    self.assertEqual(int(ui_low.find("number").text) if ui_low is not None else 0, low)
                    self.assertEqual(int(_property(widget, "maximum").find("number").text), high)
                elif "float" in names:
                    self.assertEqual(cls, "ctkSliderWidget")
                    self.assertIn("WithinRange", names, "a slider needs a bounded float (WithinRange)")
                    lo, hi = _range(annotation, self.tree)
                    self.assertEqual(float(_property(widget, "minimum").find("double").text), lo)
                    self.assertEqual(float(_property(widget, "maximum").find("double").text), hi)
                elif "str" in names:
                    self.assertEqual(cls, "QComboBox" if "Choice" in names else "QLineEdit")
                else:
                    self.fail(f"no widget rule for the type of '{field}'")

    def test_the_seed_spin_box_offers_the_registration_seeds_and_no_more(self) -> None:
        """The Logic takes a seed from 0 to registration.MAX_SEED (2^31 - 2, the engine's one rule): the spin box had
        offered 2147483647, which Apply then refused with the engine's seed error. The parameter node's seed holds
        the same range: parameterNodeWrapper sets the box's range from it when it connects the panel (2^31 - 1 for
        the old Minimum(0) alone, over the .ui's maximum), and refuses a seed past it set from the console."""
        from MultimodalFusionLib.registration import MAX_SEED

        box = self.widgets["seedSpinBox"]
        low = _property(box, "minimum")
        self.assertEqual(int(low.find("number").text) if low is not None else 0, 0)  # Qt's default minimum is 0
        self.assertEqual(int(_property(box, "maximum").find("number").text), MAX_SEED)
        self.assertEqual(_range(_parameter_fields(self.tree)["seed"], self.tree), (0, MAX_SEED))

    def test_parameter_fields_cover_the_required_settings(self) -> None:
        fields = set(_parameter_fields(self.tree))
        for required in ("fixedVolume", "movingVolume", "preset", "stages", "fixedMask", "movingMask",
                         "fusionMethod", "opacity", "outputTransform", "outputVolume", "fusedVolume", "metricsTable"):
            self.assertIn(required, fields)

    def test_node_selectors_receive_the_scene(self) -> None:
        tree = ET.parse(UI)
        connected = {c.findtext("receiver") for c in tree.iter("connection")
                     if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                     and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
        selectors = {n for n, w in self.widgets.items() if w.get("class") == "qMRMLNodeComboBox"}
        self.assertEqual(selectors - connected, set())
        self.assertEqual(len(selectors), 9)

    @unittest.skipUnless(HAVE_MRML, "needs Slicer's MRML libraries (pip install slicer-core)")
    def test_output_selectors_list_the_nodes_the_logic_creates(self) -> None:
        """A selector that cannot list its field's node shows "(create new)" after a run while the
        parameter node holds the hidden node (qMRMLNodeComboBox::setCurrentNodeID selects None
        for a node its proxy model filters out)."""
        import slicer

        produced = _produced_output_classes()
        self.assertIn("vtkMRMLLinearTransformNode", produced["outputTransform"])
        self.assertIn("vtkMRMLBSplineTransformNode", produced["outputTransform"])
        bound = {_property(w, "SlicerParameterName").find("string").text: w for w in self.widgets.values()
                 if _property(w, "SlicerParameterName") is not None}
        for field, classes in produced.items():
            widget = bound[field]
            node_types = [s.text for s in _property(widget, "nodeTypes").iter("string")]
            show_children = _property(widget, "showChildNodeTypes").find("bool").text == "true"
            for class_name in sorted(classes):
                node = getattr(slicer, class_name)()
                # qMRMLSortFilterProxyModel::filterAcceptsNode: IsA(nodeType), and the exact class
                # unless showChildNodeTypes
                listed = any(node.IsA(t) and (show_children or class_name == t) for t in node_types)
                with self.subTest(field=field, node=class_name):
                    self.assertTrue(listed, f"{widget.get('name')} (nodeTypes {node_types}, showChildNodeTypes "
                                            f"{show_children}) cannot list the {class_name} written into {field}")

    @unittest.skipUnless(HAVE_MRML, "needs Slicer's MRML libraries (pip install slicer-core)")
    def test_the_moving_selector_lists_the_label_maps_register_takes(self) -> None:
        """registerVolumes resamples a label map moving volume into a label map, and Register passes
        newNodeOnKindChange for it; a moving selector listing only the exact vtkMRMLScalarVolumeNode class
        could never offer one, so none of it was reachable from the panel."""
        import slicer

        widget = self.widgets["movingVolumeSelector"]
        node_types = [s.text for s in _property(widget, "nodeTypes").iter("string")]
        show_children = _property(widget, "showChildNodeTypes").find("bool").text == "true"
        for class_name in ("vtkMRMLScalarVolumeNode", "vtkMRMLLabelMapVolumeNode"):
            node = getattr(slicer, class_name)()
            with self.subTest(class_name):
                self.assertTrue(any(node.IsA(t) and (show_children or class_name == t) for t in node_types),
                                f"movingVolumeSelector (nodeTypes {node_types}) cannot list a {class_name}")

    def test_the_widget_calls_only_logic_methods_that_exist_with_their_arguments(self) -> None:
        """Every ``self.logic.<method>(...)`` of the widget names a FusionLogic method and only its named
        parameters, the ``**self._registrationArguments()`` keys included: run() takes ``**fusionParameters``,
        so a misspelt or removed registration option would reach the fusion method instead of failing here."""
        from MultimodalFusionLib.slicer_logic import FusionLogic

        widget = _class(self.tree, "MultimodalFusionWidget")
        returned = next(n.value for n in ast.walk(_method(self.tree, "MultimodalFusionWidget", "_registrationArguments"))
                        if isinstance(n, ast.Return))
        registration_keys = {ast.literal_eval(k) for k in returned.keys}
        # names bound to the registration arguments (``arguments = self._registrationArguments()``)
        registration_names = {"self._registrationArguments()"} | {
            t.id for n in ast.walk(widget) if isinstance(n, ast.Assign)
            and ast.unparse(n.value) == "self._registrationArguments()" for t in n.targets if isinstance(t, ast.Name)}
        calls = [c for c in ast.walk(widget) if isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute)
                 and ast.unparse(c.func.value) == "self.logic" and c.func.attr != "getParameterNode"]
        self.assertGreaterEqual({c.func.attr for c in calls}, {"registerVolumes", "fuseVolumes", "run", "showFusion"})
        for call in calls:
            with self.subTest(line=call.lineno, method=call.func.attr):
                self.assertTrue(hasattr(FusionLogic, call.func.attr), f"FusionLogic has no {call.func.attr}")
                parameters = inspect.signature(getattr(FusionLogic, call.func.attr)).parameters
                named = {n for n, p in parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
                keywords = set(_keywords(call))
                for splat in (k.value for k in call.keywords if k.arg is None):
                    if ast.unparse(splat) in registration_names:
                        keywords |= registration_keys
                    else:  # e.g. the overlay's colormap and opacity: the fusion method's own parameters
                        self.assertTrue(any(p.kind == p.VAR_KEYWORD for p in parameters.values()),
                                        f"{call.func.attr} takes no **{ast.unparse(splat)}")
                self.assertEqual(keywords - named, set(), f"{call.func.attr} takes no such keyword")
                positional = [p for p in parameters.values() if p.kind == p.POSITIONAL_OR_KEYWORD][1:]
                self.assertLessEqual(len(call.args), len(positional))

    def test_display_settings_reach_every_call_that_shows(self) -> None:
        """Register (showFusion) and Register-and-fuse (run) use the panel's opacity, colour table
        and threshold; before, run() dropped the threshold slider."""
        for button, call in (("onRegisterButton", "showFusion"), ("onShowButton", "showFusion"),
                             ("onApplyButton", "run")):
            calls = _calls(_method(self.tree, "MultimodalFusionWidget", button), call)
            self.assertTrue(calls, f"{button} does not call logic.{call}")
            keywords = _keywords(calls[0])
            with self.subTest(button=button):
                self.assertEqual(keywords.get("opacity"), "p.opacity")
                self.assertEqual(keywords.get("colormap"), "p.colormap")
                self.assertEqual(keywords.get("displayThreshold" if call == "run" else "threshold"), "p.threshold")

    def test_each_action_installs_only_what_it_needs(self) -> None:
        """Register needs the backend's packages, Fuse the method's, Register-and-fuse both."""
        expected = {"onRegisterButton": {"backend"}, "onFuseButton": {"method"},
                    "onApplyButton": {"method", "backend"}}
        for button, needs in expected.items():
            calls = _calls(_method(self.tree, "MultimodalFusionWidget", button), "_run")
            with self.subTest(button=button):
                self.assertEqual(len(calls), 1)
                self.assertEqual(set(_keywords(calls[0])), needs)

    def test_dependencies_follow_the_plan_and_torch_never_comes_from_pip(self) -> None:
        ensure = _method(self.tree, "MultimodalFusionWidget", "_ensureDependencies")
        source = ast.get_source_segment(self.source, ensure)
        self.assertIn("slicer_dependencies.install_plan(", source)
        self.assertIn("confirmOkCancelDisplay", source)  # asks before any pip install
        self.assertLess(source.index("confirmOkCancelDisplay"), source.index("pip_install"))
        self.assertIn("installTorch(askConfirmation=True)", source)
        for call in _calls(self.tree, "pip_install"):
            with self.subTest(line=call.lineno):
                self.assertNotIn("torch", ast.get_source_segment(self.source, call).replace("constraints", ""))
        self.assertNotIn("PYTHON_DEPENDENCIES", self.source)  # one list: slicer_dependencies

    def test_module_follows_the_scripted_module_template(self) -> None:
        for cls in ("MultimodalFusion", "MultimodalFusionParameterNode", "MultimodalFusionWidget",
                    "MultimodalFusionLogic", "MultimodalFusionTest"):
            _class(self.tree, cls)
        self.assertIn('self.parent.categories = ["Registration"]', self.source)
        logic = _class(self.tree, "MultimodalFusionLogic")
        self.assertEqual([b.id for b in logic.bases if isinstance(b, ast.Name)],
                         ["ScriptedLoadableModuleLogic", "FusionLogic"])
        self.assertLess(len(self.source.splitlines()), 700)
        self.assertIn("tryWithErrorDisplay", self.source)
        self.assertIn("connectGui", self.source)
        # the icon is found in a source checkout too, where Resources/ is not next to the module file
        module_init = ast.get_source_segment(self.source, _class(self.tree, "MultimodalFusion"))
        self.assertIn('resourcePath("Icons/MultimodalFusion.png")', module_init)
        self.assertIn("self.parent.icon = qt.QIcon(", module_init)
        self.assertTrue((ROOT / "Resources" / "Icons" / "MultimodalFusion.png").is_file())
        self.assertIn("wasCanceled", self.source)  # the progress dialog's Cancel reaches the engine
        for reference in ("SimpleITK", "Mattes", "MONAI"):
            self.assertIn(reference, self.source)
        # The self-test runs the shared scenarios (the same as Testing/ under pytest).
        test_source = ast.get_source_segment(self.source, _class(self.tree, "MultimodalFusionTest"))
        self.assertIn("scenarios.MRML_SCENARIOS", test_source)
        self.assertIn("scenarios.check_logic_register_fuse_show", test_source)

    def test_logic_methods_are_keyword_console_api_with_examples(self) -> None:
        from MultimodalFusionLib.slicer_logic import FusionLogic

        for name in ("registerVolumes", "fuseVolumes", "run", "showFusion", "evaluateRegistration"):
            with self.subTest(method=name):
                method = getattr(FusionLogic, name)
                doc = inspect.getdoc(method) or ""
                self.assertIn("Console example", doc)
                self.assertIn("getModuleLogic", doc)
                params = list(inspect.signature(method).parameters.values())[1:]
                # input nodes may be positional (as in SlicerElastix); every option is keyword-only
                options = [p for p in params if p.default is not inspect.Parameter.empty
                           and not p.name.endswith("Node")]
                self.assertTrue(options and all(p.kind == p.KEYWORD_ONLY for p in options),
                                f"{name}: options must be keyword-only")
        self.assertIn("outputTransformNode", inspect.signature(FusionLogic.registerVolumes).parameters)
        self.assertIn("outputVolumeNode", inspect.signature(FusionLogic.registerVolumes).parameters)


if __name__ == "__main__":
    unittest.main()
