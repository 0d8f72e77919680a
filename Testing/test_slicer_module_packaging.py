"""Packaging of the Slicer extension: CMake lists, what gets installed, the catalogue entry.

A real configure needs a Slicer build tree (``find_package(Slicer)``), which this machine does
not have. So the checks are: (1) static: the CMake globs cover every engine file and resource;
(2) when ``cmake`` is installed: configure the real CMakeLists.txt files against a stand-in
Slicer package whose ``slicerMacroBuildScriptedModule`` / ``slicer_add_python_unittest`` only
record what they are given, and check where each file would be installed (using the rule
of CTK's ctkMacroCompilePythonScript: an absolute path lands at its path relative to the
module's build directory); (3) the ExtensionsIndex entry follows the catalogue schema v1.0.1
and agrees with the CMake metadata.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULE_CMAKE = ROOT / "MultimodalFusion" / "CMakeLists.txt"
TOP_CMAKE = ROOT / "CMakeLists.txt"
CATALOGUE = ROOT / "MultimodalFusion.json"

#: Properties of the catalogue entry schema v1.0.1 (it has "additionalProperties": false).
SCHEMA_PROPERTIES = {"$schema", "category", "scm_url", "scm_revision", "scm_type", "build_dependencies",
                     "build_subdirectory", "enabled", "tier"}
SCHEMA_REQUIRED = {"$schema", "category", "scm_url"}

_STUB_CONFIG = """
set(Slicer_USE_FILE ${CMAKE_CURRENT_LIST_DIR}/UseSlicer.cmake)
set(Slicer_EXTENSION_GENERATE_CONFIG ${CMAKE_CURRENT_LIST_DIR}/Nothing.cmake)
set(Slicer_EXTENSION_CPACK ${CMAKE_CURRENT_LIST_DIR}/Nothing.cmake)
set(BUILD_TESTING ON)
"""
_STUB_USE = r"""
function(slicerMacroBuildScriptedModule)
  cmake_parse_arguments(MY "WITH_GENERIC_TESTS" "NAME" "SCRIPTS;RESOURCES" ${ARGN})
  foreach(_f IN LISTS MY_SCRIPTS MY_RESOURCES)
    if(IS_ABSOLUTE "${_f}")
      set(_src "${_f}")
      file(RELATIVE_PATH _tgt ${CMAKE_CURRENT_BINARY_DIR} ${_f})
    else()
      set(_src "${CMAKE_CURRENT_SOURCE_DIR}/${_f}")
      set(_tgt "${_f}")
    endif()
    file(APPEND ${MMF_RECORD} "install|${_src}|${_tgt}\n")
  endforeach()
endfunction()
function(slicer_add_python_unittest)
  cmake_parse_arguments(MY "" "SCRIPT;TESTNAME_PREFIX" "SLICER_ARGS" ${ARGN})
  file(APPEND ${MMF_RECORD} "test|${MY_SCRIPT}|${MY_TESTNAME_PREFIX}\n")
endfunction()
"""


def _engine_files() -> list[str]:
    return sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "MultimodalFusionLib").rglob("*.py")
                  if "__pycache__" not in p.parts)


def _resource_files() -> list[str]:
    out = []
    for sub in ("UI", "Icons", "Presets", "Models"):
        folder = ROOT / "Resources" / sub
        if folder.is_dir():
            out += [p.relative_to(ROOT).as_posix() for p in folder.rglob("*")
                    if p.is_file() and not p.name.startswith(".") and "__pycache__" not in p.parts]
    return sorted(out)


def _cmake_set(text: str, name: str) -> str:
    match = re.search(rf'set\({name}\s+"([^"]*)"\)', text)
    assert match, f"{name} is not set in {TOP_CMAKE.name}"
    return match.group(1)


class PackagingStaticTest(unittest.TestCase):
    def setUp(self) -> None:
        self.module_cmake = MODULE_CMAKE.read_text(encoding="utf-8")
        self.top_cmake = TOP_CMAKE.read_text(encoding="utf-8")

    def test_globs_cover_every_engine_file_and_resource(self) -> None:
        patterns = [p.replace("${_top_dir}/", "") for p in re.findall(r"\$\{_top_dir\}/[^\s)]+", self.module_cmake)
                    if "*" in p]
        self.assertIn("MultimodalFusionLib/*.py", patterns)
        files = _engine_files() + _resource_files()
        self.assertIn("MultimodalFusionLib/mrml.py", files)
        self.assertIn("Resources/UI/MultimodalFusion.ui", files)
        for path in files:
            with self.subTest(path=path):
                # GLOB_RECURSE "dir/*.ext" matches files named *.ext at any depth below dir
                covered = any(path.startswith(folder + "/") and fnmatch.fnmatch(os.path.basename(path), name)
                              for folder, name in (p.rsplit("/", 1) for p in patterns))
                self.assertTrue(covered, f"{path} is not packaged by the globs in {MODULE_CMAKE}")

    def test_top_level_metadata(self) -> None:
        self.assertIn("find_package(Slicer REQUIRED)", self.top_cmake)
        self.assertIn("add_subdirectory(MultimodalFusion)", self.top_cmake)
        self.assertEqual(_cmake_set(self.top_cmake, "EXTENSION_CATEGORY"), "Registration")
        self.assertEqual(_cmake_set(self.top_cmake, "EXTENSION_DEPENDS"), "PyTorch")
        for name in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION", "EXTENSION_ICONURL",
                     "EXTENSION_SCREENSHOTURLS"):
            self.assertTrue(_cmake_set(self.top_cmake, name))
        # the icon and screenshots are raw files of this repository's main branch: they must exist here
        for name in ("EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
            for url in _cmake_set(self.top_cmake, name).split():
                if "/main/" in url:
                    with self.subTest(url=url):
                        self.assertTrue((ROOT / url.split("/main/", 1)[1]).is_file(), url)
        self.assertIn("slicerMacroBuildScriptedModule", self.module_cmake)
        self.assertIn("slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)", self.module_cmake)

    def test_registered_testing_cases_exist_and_are_unittest_cases(self) -> None:
        block = self.module_cmake.split("set(_testing_cases", 1)[1].split(")", 1)[0]
        cases = block.split()
        self.assertIn("test_mrml.py", cases)
        for case in cases:
            with self.subTest(case=case):
                text = (ROOT / "Testing" / case).read_text(encoding="utf-8")
                self.assertRegex(text, r"class \w+\(unittest\.TestCase\)")

    def test_catalogue_entry_follows_schema_and_cmake(self) -> None:
        entry = json.loads(CATALOGUE.read_text(encoding="utf-8"))
        self.assertEqual(set(entry) - SCHEMA_PROPERTIES, set(), "properties the schema does not allow")
        self.assertTrue(SCHEMA_REQUIRED <= set(entry))
        self.assertTrue(entry["$schema"].endswith("slicer-extension-catalog-entry-schema-v1.0.1.json#"))
        self.assertEqual(entry["category"], _cmake_set(self.top_cmake, "EXTENSION_CATEGORY"))
        self.assertEqual(entry["build_dependencies"], _cmake_set(self.top_cmake, "EXTENSION_DEPENDS").split(";"))
        self.assertIn(entry["scm_type"], ("git", "local"))
        self.assertIn(entry["tier"], (1, 3, 5))
        homepage = _cmake_set(self.top_cmake, "EXTENSION_HOMEPAGE")
        self.assertTrue(homepage.startswith(entry["scm_url"].removesuffix(".git")))


_IMPORT_CHECK = """
import importlib.abc, sys
BLOCK = {"scipy", "pywt", "matplotlib", "nilearn", "skimage", "sklearn", "torch", "monai", "tqdm", "pydicom",
         "trame", "trame_slicer", "safetensors"}
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCK:
            raise ImportError("not shipped with Slicer: " + name)
sys.meta_path.insert(0, Blocker())
import MultimodalFusionLib.mrml, MultimodalFusionLib.scenarios, MultimodalFusionLib.slicer_logic
import MultimodalFusionLib.slicer_dependencies
import MultimodalFusionLib.pipeline, MultimodalFusionLib.preprocess, MultimodalFusionLib.metrics
from MultimodalFusionLib.fusion import list_methods
from MultimodalFusionLib.registration import list_presets
list_methods(); list_presets()
print("ok")
"""


class SlicerEnvironmentImportTest(unittest.TestCase):
    def test_module_imports_need_only_what_slicer_ships(self) -> None:
        """MultimodalFusion.py imports these at load time; Slicer ships SimpleITK and numpy but not
        scipy, PyWavelets, matplotlib, torch, ... (the module installs those on first use)."""
        result = subprocess.run([sys.executable, "-c", _IMPORT_CHECK], capture_output=True, text=True,
                                cwd=str(ROOT), timeout=120)
        self.assertEqual(result.stdout.strip(), "ok", result.stderr[-3000:])


@unittest.skipUnless(shutil.which("cmake"), "cmake is not installed")
class PackagingConfigureTest(unittest.TestCase):
    """Configure the real CMakeLists.txt against a recording stand-in for Slicer's CMake package."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.mkdtemp(prefix="mmf-cmake-")
        fake = Path(cls.tmp, "FakeSlicer")
        fake.mkdir()
        (fake / "SlicerConfig.cmake").write_text(_STUB_CONFIG)
        (fake / "UseSlicer.cmake").write_text(_STUB_USE)
        (fake / "Nothing.cmake").write_text("")
        cls.record = Path(cls.tmp, "record.txt")
        build = Path(cls.tmp, "build")
        cls.result = subprocess.run(
            ["cmake", "-S", str(ROOT), "-B", str(build), f"-DSlicer_DIR={fake}", f"-DMMF_RECORD={cls.record}",
             "-DCMAKE_C_COMPILER_WORKS=1", "-DCMAKE_CXX_COMPILER_WORKS=1"],
            capture_output=True, text=True, timeout=120)

    @classmethod
    def tearDownClass(cls) -> None:
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def _records(self, kind: str) -> list[tuple[str, str]]:
        lines = self.record.read_text().splitlines() if self.record.exists() else []
        return [tuple(line.split("|")[1:]) for line in lines if line.startswith(kind + "|")]

    def test_configure_succeeds(self) -> None:
        if self.result.returncode != 0 and "No CMAKE_C_COMPILER could be found" in self.result.stderr:
            self.skipTest("no C compiler for project()")
        self.assertEqual(self.result.returncode, 0, self.result.stdout[-2000:] + self.result.stderr[-2000:])

    def test_every_engine_file_and_resource_is_installed_inside_the_module(self) -> None:
        if self.result.returncode != 0:
            self.skipTest("configure failed (see test_configure_succeeds)")
        installed = {target: source for source, target in self._records("install")}
        self.assertIn("MultimodalFusion.py", installed)
        for path in _engine_files() + _resource_files():
            with self.subTest(path=path):
                self.assertIn(path, installed, f"{path} would not be installed next to MultimodalFusion.py")
                # the staged copy is the same file
                self.assertEqual(Path(installed[path]).read_bytes(), (ROOT / path).read_bytes())
        self.assertFalse([t for t in installed if t.startswith("..")], "a file would land outside the module")

    def test_module_and_testing_cases_are_registered_for_ctest(self) -> None:
        if self.result.returncode != 0:
            self.skipTest("configure failed (see test_configure_succeeds)")
        scripts = [Path(s).name for s, _prefix in self._records("test")]
        self.assertIn("MultimodalFusion.py", scripts)
        for case in ("test_mrml.py", "test_slicer_module.py", "test_ui_static.py"):
            self.assertIn(case, scripts)
        for script, _prefix in self._records("test"):
            path = Path(script) if os.path.isabs(script) else ROOT / "MultimodalFusion" / script
            self.assertTrue(path.is_file(), script)


if __name__ == "__main__":
    unittest.main()
