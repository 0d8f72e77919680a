"""Project-wide promises: Python 3.9 syntax, a light engine import, no machine paths, packaging."""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("MultimodalFusionLib", "MultimodalFusion", "Testing", "benchmarks", "scripts")


def _python_files() -> list[Path]:
    files = []
    for d in SOURCE_DIRS:
        files.extend(p for p in (ROOT / d).rglob("*.py") if ".venv" not in p.parts)
    return sorted(files)


def _is_view_call(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == (
        "GetArrayViewFromImage")


class ProjectTest(unittest.TestCase):
    def test_python39_syntax(self):
        """Slicer 5.8 ships Python 3.9: every file must parse with the 3.9 grammar."""
        bad = []
        for path in _python_files():
            try:
                ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))
            except SyntaxError as exc:
                bad.append(f"{path.relative_to(ROOT)}:{exc.lineno}: {exc.msg}")
        self.assertEqual(bad, [], "files that Python 3.9 cannot parse")

    def test_pep604_annotations_are_postponed(self):
        """`X | None` in annotations is only valid on 3.9 with postponed evaluation."""
        bad = []
        for path in _python_files():
            text = path.read_text(encoding="utf-8")
            tree = ast.parse(text)
            uses_union = any(
                isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr)
                for ann in _annotations(tree) for node in ast.walk(ann))
            if uses_union and "from __future__ import annotations" not in text:
                bad.append(str(path.relative_to(ROOT)))
        self.assertEqual(bad, [], "files using X | Y annotations without `from __future__ import annotations`")

    def test_engine_import_is_light(self):
        """`import MultimodalFusionLib` (and its submodules) must not pull torch, monai, vtk, slicer, qt or trame."""
        code = (
            "import sys, importlib, pkgutil, MultimodalFusionLib as m\n"
            "skip = ('MultimodalFusionLib.web', 'MultimodalFusionLib.fusion.deep')\n"
            "for info in pkgutil.walk_packages(m.__path__, 'MultimodalFusionLib.'):\n"
            "    if not info.name.startswith(skip) and not info.name.endswith('__main__'):\n"
            "        importlib.import_module(info.name)\n"
            "heavy = sorted({n.split('.')[0] for n in sys.modules} & "
            "{'torch', 'monai', 'vtk', 'vtkmodules', 'slicer', 'qt', 'ctk', 'trame', 'trame_slicer', 'itk'})\n"
            "print(','.join(heavy))\n")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.strip(), "", "heavy modules imported at engine import time")

    def test_no_machine_paths_outside_benchmarks(self):
        """A fresh clone has no shared data folder beside it and no machine paths: only benchmarks take such paths."""
        # built from pieces so that this file does not match its own pattern
        pattern = re.compile("|".join([r"\.\./" + "shared", "/" + "work/", "/tmp/" + "data"]))
        bad = []
        for path in _python_files():
            if path.parts[len(ROOT.parts)] == "benchmarks" or path.name == "test_project.py":
                continue
            if pattern.search(path.read_text(encoding="utf-8")):
                bad.append(str(path.relative_to(ROOT)))
        self.assertEqual(bad, [])

    def test_no_array_view_outlives_its_image(self):
        """sitk.GetArrayViewFromImage gives a numpy view that does not keep its image alive: a view of a temporary
        (``GetArrayViewFromImage(sitk.Shrink(...))``) or one returned to a caller who may have passed a temporary
        reads freed memory. Three such defects were found in one day (foreground_mask, mean_distance, the label maps
        of evaluate_registration), each giving wrong numbers now and then. Hold the image in a name, or copy."""
        bad = []
        for path in _python_files():
            if path.parts[len(ROOT.parts)] not in ("MultimodalFusionLib", "MultimodalFusion"):
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for fn in ast.walk(tree):
                if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                views = set()
                for node in ast.walk(fn):
                    if _is_view_call(node) and node.args and isinstance(node.args[0], (ast.Call, ast.BinOp, ast.IfExp)):
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: view of a temporary image")
                    if isinstance(node, ast.Assign) and _is_view_call(node.value):
                        views.update(t.id for t in node.targets if isinstance(t, ast.Name))
                for node in ast.walk(fn):
                    if isinstance(node, ast.Return) and node.value is not None and (
                            _is_view_call(node.value)
                            or (isinstance(node.value, ast.Name) and node.value.id in views)):
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {fn.name} returns a view of its image")
        self.assertEqual(bad, [])

    def test_presets_are_valid_json(self):
        presets = sorted((ROOT / "Resources" / "Presets").glob("*.json"))
        for p in presets:
            with self.subTest(preset=p.name):
                json.loads(p.read_text(encoding="utf-8"))

    def test_ci_runs_the_readme_test_command(self):
        readme = (ROOT / "README.md").read_text(encoding="utf-8")
        self.assertIn("make test", readme)
        self.assertIn("make demo", readme)
        self.assertIn("make test", (ROOT / ".ci" / "run").read_text(encoding="utf-8"))


class SystemDepsTest(unittest.TestCase):
    """scripts/install-system-deps.sh (run by `make test`) installs every program the tests need."""

    def test_cmake_and_compilers_are_installed_where_missing_and_present_libraries_are_not(self):
        import shutil
        import tempfile

        bash, grep = shutil.which("bash"), shutil.which("grep")
        if not (bash and grep):
            self.skipTest("bash and grep are needed to run the script")
        libs = "libEGL.so.1 libEGL_mesa.so.0 libGL.so.1 libOpenGL.so.0 libGLU.so.1 libXrender.so.1 libxkbcommon.so.0"
        with tempfile.TemporaryDirectory() as tmp:
            stubs = Path(tmp)
            record = stubs / "apt.txt"
            (stubs / "grep").symlink_to(grep)
            (stubs / "seq").symlink_to(shutil.which("seq"))
            # a machine with the GL libraries but no cmake, cc or c++ on PATH; apt-get only records
            # (and a linker cache longer than a pipe's buffer, as on a machine with many libraries)
            for name, body in {"ldconfig": f"for l in {libs}; do echo \"$l => /lib/$l\"; done; "
                                           "for i in $(seq 5000); do echo \"libfiller$i.so => /lib/x$i\"; done",
                               "id": "echo 0",
                               "apt-get": f"echo \"$@\" >> {record}"}.items():
                (stubs / name).write_text(f"#!{bash}\n{body}\n")
                (stubs / name).chmod(0o755)
            out = subprocess.run([bash, str(ROOT / "scripts" / "install-system-deps.sh")], capture_output=True,
                                 text=True, env={"PATH": str(stubs), "HOME": tmp}, timeout=60)
            self.assertEqual(out.returncode, 0, out.stderr)
            installed = record.read_text().split() if record.exists() else []
        for package in ("cmake", "gcc", "g++"):
            self.assertIn(package, installed, out.stdout)
        for package in ("libegl1", "libegl-mesa0", "libgl1", "libopengl0", "libglu1-mesa", "libxrender1"):
            self.assertNotIn(package, installed)  # present libraries are not reinstalled


def _annotations(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            for a in args.args + args.kwonlyargs + args.posonlyargs + [args.vararg, args.kwarg]:
                if a is not None and a.annotation is not None:
                    yield a.annotation
            if node.returns is not None:
                yield node.returns
        elif isinstance(node, ast.AnnAssign):
            yield node.annotation


class InstalledLayoutTest(unittest.TestCase):
    """A wheel carries Resources/ and Testing/Data under <prefix>/share/multimodalfusion/."""

    def test_wheel_data_files_cover_what_the_code_loads(self):
        try:
            import tomllib
        except ImportError:  # Python < 3.11
            self.skipTest("tomllib needs Python 3.11")
        import glob

        spec = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
        data_files = spec["tool"]["setuptools"]["data-files"]
        shipped = {p for patterns in data_files.values() for pattern in patterns
                   for p in glob.glob(str(ROOT / pattern))}
        needed = [*ROOT.glob("Resources/Models/*.safetensors"), *ROOT.glob("Resources/Presets/*.json"),
                  *ROOT.glob("Testing/Data/*.png")]
        self.assertTrue(needed)
        for path in needed:
            self.assertIn(str(path), shipped, path)
        for target in data_files:
            self.assertTrue(target.startswith("share/multimodalfusion/"), target)

    def test_build_requirements_read_the_metadata_and_python_range(self):
        try:
            import tomllib
        except ImportError:  # Python < 3.11
            self.skipTest("tomllib needs Python 3.11")
        import re

        spec = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
        project = spec["project"]
        if isinstance(project.get("license"), str):
            # a PEP 639 SPDX string: setuptools 64-76 refuse it ("project.license must be valid
            # exactly by one definition"), so `pip install --no-build-isolation` with them fails
            floor = [re.fullmatch(r"setuptools>=(\d+)(\.\d+)*", r) for r in spec["build-system"]["requires"]]
            floor = [int(m.group(1)) for m in floor if m]
            self.assertTrue(floor and floor[0] >= 77, spec["build-system"]["requires"])
        self.assertEqual(project["requires-python"], ">=3.9")
        for minor in (9, 10, 11, 12):
            self.assertIn(f"Programming Language :: Python :: 3.{minor}", project["classifiers"])

    def test_bundled_folders_are_found_under_the_install_prefix(self):
        import tempfile

        from MultimodalFusionLib.data import bundled_folder

        with tempfile.TemporaryDirectory() as prefix:
            target = Path(prefix) / "share" / "multimodalfusion" / "Resources" / "OnlyInstalled"
            target.mkdir(parents=True)
            saved = sys.prefix
            sys.prefix = prefix  # what an installed wheel's interpreter reports
            try:
                self.assertEqual(bundled_folder("Resources/OnlyInstalled"), target)
                # a checkout's own folder comes first
                self.assertEqual(bundled_folder("Resources/Presets"), ROOT / "Resources" / "Presets")
            finally:
                sys.prefix = saved

    def test_bundled_folders_are_found_for_a_user_or_prefix_install(self):
        """`pip install --user` / `--prefix DIR` put the package in DIR/lib/pythonX.Y/site-packages and
        the data in DIR/share/multimodalfusion, with an interpreter whose sys.prefix is elsewhere."""
        import os
        import shutil
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            prefix = Path(tmp) / "userbase"
            site = prefix / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
            shutil.copytree(ROOT / "MultimodalFusionLib", site / "MultimodalFusionLib",
                            ignore=shutil.ignore_patterns("__pycache__"))
            target = prefix / "share" / "multimodalfusion" / "Resources" / "OnlyInstalled"
            target.mkdir(parents=True)
            code = ("import MultimodalFusionLib.data as d; print(d.__file__); "
                    "print(d.bundled_folder('Resources/OnlyInstalled'))")
            env = {k: v for k, v in os.environ.items() if not k.startswith("MMFUSION_")}
            env["PYTHONPATH"] = str(site)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp,
                                 env=env, timeout=120)
            self.assertEqual(out.returncode, 0, out.stderr[-2000:])
            module_file, folder = out.stdout.split()
            self.assertTrue(module_file.startswith(str(site)), module_file)
            self.assertEqual(Path(folder), target)

    def test_deep_without_torch_is_a_one_line_error(self):
        code = ("import sys; sys.modules['torch'] = None\n"  # torch not installed
                "from MultimodalFusionLib.cli import main\n"
                f"sys.exit(main(['fuse', r'{ROOT / 'Testing/Data/BrainT1Slice.png'}', "
                f"r'{ROOT / 'Testing/Data/BrainProtonDensitySlice.png'}', '--method', 'deep', '-o', 'x.png']))")
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp)
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertIn("needs 'torch'", proc.stderr)
        self.assertIn("slicer-multimodalfusion[deep]", proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)

    def test_deep_with_torch_but_without_monai_is_not_offered(self):
        # torch alone used to list "deep", so the demo's fusion step picked it and `fuse --method deep`
        # died in build_network with ModuleNotFoundError (a traceback) instead of the install hint
        code = ("import sys; sys.modules['monai'] = None\n"  # torch installed, MONAI not
                "from MultimodalFusionLib import fusion\n"
                "print('listed' if 'deep' in fusion.list_methods() else 'not listed')\n"
                "from MultimodalFusionLib.cli import main\n"
                f"sys.exit(main(['fuse', r'{ROOT / 'Testing/Data/BrainT1Slice.png'}', "
                f"r'{ROOT / 'Testing/Data/BrainProtonDensitySlice.png'}', '--method', 'deep', '-o', 'x.png']))")
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp)
        self.assertEqual(proc.stdout.split()[:2], ["not", "listed"], proc.stdout)
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertIn("needs 'monai'", proc.stderr)
        self.assertIn("slicer-multimodalfusion[deep]", proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)


class ReadmeMatchesCliTest(unittest.TestCase):
    """What README.md shows of `mmfusion` is what the parser offers and the commands write."""

    @classmethod
    def setUpClass(cls):
        from MultimodalFusionLib.cli import build_parser

        parser = build_parser()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        cls.options = {name: {s for a in p._actions for s in a.option_strings} for name, p in sub.choices.items()}
        cls.readme = (ROOT / "README.md").read_text(encoding="utf-8")
        # command lines of the fenced code blocks (continuation lines joined)
        blocks, block = [], None
        for line in cls.readme.splitlines():
            if line.startswith("```"):
                block = [] if block is None else blocks.append("\n".join(block))
            elif block is not None:
                block.append(line)
        cls.lines = [ln.strip() for b in blocks for ln in b.replace("\\\n", " ").splitlines()
                     if re.match(r"mmfusion [a-z-]+(\s|$)", ln.strip())]  # not the quoted error messages

    def test_every_command_is_documented_and_exists(self):
        shown = {ln.split()[1] for ln in self.lines}
        self.assertEqual(shown, set(self.options))

    def test_every_option_shown_exists(self):
        bad = []
        for line in self.lines:
            command, rest = line.split()[1], line.split("#")[0]
            for flag in re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", rest.split(None, 2)[-1]):
                if flag not in self.options[command]:
                    bad.append(f"{command} {flag}")
        self.assertEqual(bad, [])

    def test_checkpoint_name_is_the_one_train_fusion_writes(self):
        # `mmfusion train-fusion --output MODEL.safetensors` writes MODEL.safetensors + ".ckpt.pt"
        self.assertIn("--output MODEL.safetensors", self.readme)
        names = set(re.findall(r"[\w.]+\.ckpt\.pt", self.readme))
        self.assertEqual(names, {"MODEL.safetensors.ckpt.pt"})


class PresetClaimsTest(unittest.TestCase):
    def test_t1_t2_preset_quotes_the_measured_demo_error(self):
        """--list-presets shows the preset's description: its accuracy figure is the one the demo (which runs
        these settings) measures and README.md reports, not an older or foreign number."""
        readme = (ROOT / "README.md").read_text(encoding="utf-8")
        measured = re.search(r"3D mean TRE\s+8\.47 mm -> ([\d.]+) mm", readme)
        self.assertIsNotNone(measured)
        preset = json.loads((ROOT / "Resources" / "Presets" / "t1-t2-brain.json").read_text(encoding="utf-8"))
        quoted = re.findall(r"([\d.]+) mm (?:mean TRE|error)", preset["description"])
        self.assertEqual(quoted, [measured.group(1)])


    def test_the_readme_presets_table_holds_the_preset_files_values(self):
        """Each figure of README.md's presets table is the preset file's (the table had said "more smoothing"
        for mr-pet-brain, whose coarse levels are smoothed less than the default rigid stage's)."""
        from MultimodalFusionLib.registration import RegistrationParameters, list_presets, load_preset

        readme = (ROOT / "README.md").read_text(encoding="utf-8")
        section = readme[readme.index("### Presets (`Resources/Presets/*.json`)"):]
        rows = {}
        for line in section.splitlines()[2:]:
            if not line.startswith("|"):
                if rows:
                    break
                continue
            cells = [c.strip() for c in line.strip("|").split("|")]
            if cells[0].startswith("`"):
                rows[cells[0].strip("`")] = cells[1:3]
        self.assertEqual(sorted(rows), list_presets())
        def numbers(text: str) -> list[float]:  # "4-2-1"
            return [float(v) for v in text.split("-")]

        for name, (stages, metric) in rows.items():
            p = load_preset(name)
            by_name = {s.name: s for s in p.stages}
            with self.subTest(preset=name):
                self.assertEqual(re.findall(r"rigid|affine|bspline", stages.replace("B-spline", "bspline")),
                                 [s.name for s in p.stages])
                self.assertEqual(p.initializer, "moments" if "moments initializer" in stages else "geometry")
                if "Mattes MI" in metric:
                    self.assertEqual({s.metric for s in p.stages}, {"mattes_mi"})
                mesh = re.search(r"(\d+)x\1(?:x\1)? cells", stages)
                if mesh:
                    self.assertEqual(by_name["bspline"].mesh_size, int(mesh.group(1)))
                bspline_bins = re.search(r"B-spline (\d+) bins", metric)
                if bspline_bins:
                    self.assertEqual(by_name["bspline"].histogram_bins, int(bspline_bins.group(1)))
                    self.assertEqual(by_name["bspline"].number_of_samples,
                                     int(re.search(r"(\d+) samples", metric).group(1)))
                else:
                    bins = int(re.search(r"(\d+) bins", metric).group(1))
                    self.assertEqual({s.histogram_bins for s in p.stages}, {bins})
                    percent = float(re.search(r"([\d.]+)%", metric).group(1))
                    self.assertEqual({round(s.sampling_percentage * 100, 6) for s in p.stages}, {percent})
                first = p.stages[0]
                shrink = re.search(r"shrink ([\d-]+)", metric)
                if shrink:
                    self.assertEqual(first.shrink_factors, numbers(shrink.group(1)))
                coarsest = re.search(r"coarsest level smoothed by ([\d.]+) voxels", metric)
                if coarsest:
                    self.assertEqual(first.smoothing_sigmas[0], float(coarsest.group(1)))
                every = re.search(r"every level smoothed: ([\d.-]+) voxels", metric)
                if every:
                    self.assertEqual(first.smoothing_sigmas, numbers(every.group(1)))
                    default = re.search(r"the default rigid stage: ([\d.-]+)", metric).group(1)
                    self.assertEqual(RegistrationParameters().stages[0].smoothing_sigmas, numbers(default))
                if "smooth" in metric:  # a claim about smoothing gives the figures it rests on
                    self.assertTrue(coarsest or every, metric)
        # "Without a preset: one rigid stage with the `t1-t2-brain` settings"
        self.assertIn("Without a preset: one rigid stage with the `t1-t2-brain` settings", section)
        default, t1_t2 = RegistrationParameters().to_dict(), load_preset("t1-t2-brain").to_dict()
        for d in (default, t1_t2):
            del d["name"], d["description"]
        self.assertEqual(default, t1_t2)

if __name__ == "__main__":
    unittest.main()
