"""End to end: ``mmfusion web --demo`` in a subprocess, driven by Playwright in Debian's Chromium.

The page is used as a user would: wait for the demo volumes, click Register, watch the
progress, click Fuse, then read the page. Assertions on the screenshot: the PET colour
table (red/orange/yellow) is visible in the three slice views, inside the anatomy, and
disappears when the foreground opacity is set to 0 in the panel (so it is the functional
layer, not something else); the 3D view shows the volume-rendered fused image; the metrics
appear in the page's text; a bad path shows its error in the page.

Never runs ``playwright install`` (no downloads): it needs ``/usr/bin/chromium``
(``make test`` / ``scripts/install-system-deps.sh`` installs it) and skips without it.
Set ``MMFUSION_WEB_SCREENSHOT=path.png`` to keep the screenshot (the README's is made so).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

import numpy as np
import SimpleITK as sitk

from MultimodalFusionLib.web.demo import DEMO_ROTATION_DEG

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SERVER_START_TIMEOUT_S = 90
JOB_TIMEOUT_MS = 120_000
#: The views of the quad layout, in the page's order
QUAD_VIEWS = ("axial", "coronal", "sagittal", "3d")

try:
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
    from playwright.sync_api import sync_playwright
    _PLAYWRIGHT = True
except ImportError:  # pragma: no cover
    _PLAYWRIGHT = False

try:
    import trame_slicer  # noqa: F401
    _TRAME_SLICER = True
except ImportError:  # pragma: no cover
    _TRAME_SLICER = False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hot_mask(pixels: np.ndarray) -> np.ndarray:
    """Pixels in PET-Heat's red-orange-yellow range: bright red, far more red than blue."""
    p = pixels[..., :3].astype(np.int32)
    return (p[..., 0] > 140) & (p[..., 0] - p[..., 2] > 70)


def _anatomy_brightness(pixels: np.ndarray) -> float:
    """Mean of the grey pixels of a slice view: the anatomy, not the PET colours."""
    grey = pixels.max(axis=-1) - pixels.min(axis=-1) < 20
    return float(pixels[grey].mean())


def _png_to_array(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@unittest.skipUnless(os.path.exists(CHROMIUM), f"{CHROMIUM} is absent (install Debian's chromium: "
                                               "bash scripts/install-system-deps.sh)")
@unittest.skipUnless(_PLAYWRIGHT, "the playwright Python package is not installed")
@unittest.skipUnless(_TRAME_SLICER, "trame-slicer is not installed (pip install 'slicer-multimodalfusion[web]')")
class _BrowserPageTest(unittest.TestCase):
    """A ``mmfusion web`` server started with :attr:`SERVER_ARGS` in a subprocess, and Chromium: the helpers of the
    test classes below (each has a server of its own; a test leaves its server's state as it found it)."""

    SERVER_ARGS: tuple[str, ...] = ("--demo",)
    server: subprocess.Popen | None = None

    @classmethod
    def setUpClass(cls):
        cls.port = _free_port()
        cls.url = f"http://127.0.0.1:{cls.port}/"
        cls.log = tempfile.NamedTemporaryFile(prefix="mmfusion-web-", suffix=".log", delete=False)
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2", ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="2")
        cls.server = subprocess.Popen(
            [sys.executable, "-m", "MultimodalFusionLib.cli", "web", *cls.SERVER_ARGS, "--port", str(cls.port),
             "--host", "127.0.0.1"],
            stdout=cls.log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        cls.addClassCleanup(cls._remove_log)
        cls.addClassCleanup(cls._stop_server)
        # Chromium starts while the server does (its imports and scene take several seconds)
        cls.playwright = sync_playwright().start()
        cls.addClassCleanup(cls.playwright.stop)
        cls.browser = cls.playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        cls.addClassCleanup(cls.browser.close)
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if cls.server.poll() is not None:
                raise RuntimeError(f"mmfusion web exited with {cls.server.returncode}:\n{cls._log_tail()}")
            try:
                with urllib.request.urlopen(cls.url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mmfusion web did not answer within {SERVER_START_TIMEOUT_S} s:\n{cls._log_tail()}")
            time.sleep(0.5)

    def tearDown(self):
        # a real page, driven through its controls, writes no state value the server's message gate drops: a
        # control whose key the gate did not know (MultimodalFusionLib.web.app.FusionWebApp.page_keys) would
        # stop working in every page, only a warning in the server log saying why
        self.log.flush()
        with open(self.log.name, errors="replace") as f:
            log = f.readlines()
        self.assertEqual([line for line in log if "which only the server sets" in line], [])
        # nor makes a call the gate refuses (message_gate.PAGE_CALLS): that call's effect would be lost, a view
        # larger than an 8K screen had stayed blank
        self.assertEqual([line for line in log if ": refused" in line], [])

    @classmethod
    def _stop_server(cls):
        server = cls.server
        if server is None or server.poll() is not None:
            return
        try:
            os.killpg(server.pid, signal.SIGTERM)  # its own session: the server and nothing else
            server.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(server.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            server.wait(timeout=10)

    @classmethod
    def _remove_log(cls):
        cls.log.close()
        os.unlink(cls.log.name)

    @classmethod
    def _log_tail(cls) -> str:
        cls.log.flush()
        with open(cls.log.name, errors="replace") as f:
            return f.read()[-3000:]

    def _open_page(self):
        page = self.browser.new_page(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
        self.addCleanup(page.close)
        page.set_default_timeout(JOB_TIMEOUT_MS)
        page.goto(self.url, wait_until="domcontentloaded")
        # The start-up volumes (the demo) load in the background after start: Register is enabled once they are in.
        page.wait_for_function("() => { const b = document.querySelector('#mmf-register');"
                               " return b && !b.disabled; }", timeout=JOB_TIMEOUT_MS)
        return page

    def _click_and_wait_job(self, page, button: str, label: str) -> list[str]:
        """Click ``button``, wait until the job message says ``label`` finished; return the messages seen."""
        before = page.inner_text("#mmf-job-message")
        page.click(button)
        seen: list[str] = []
        deadline = time.monotonic() + JOB_TIMEOUT_MS / 1000
        while time.monotonic() < deadline:
            text = page.inner_text("#mmf-job-message")
            if text == before and not seen:  # the job's first state update has not arrived yet
                page.wait_for_timeout(100)
                continue
            if not seen or seen[-1] != text:
                seen.append(text)
            if f"{label} done" in text:
                return seen
            if f"{label} failed" in text or f"{label} cancelled" in text:
                error = page.inner_text("#mmf-error") if page.query_selector("#mmf-error") else ""
                self.fail(f"{text}: {error}\nserver log:\n{self._log_tail()}")
            page.wait_for_timeout(200)
        self.fail(f"{label} did not finish in {JOB_TIMEOUT_MS / 1000:.0f} s; messages {seen}\n{self._log_tail()}")

    def _views(self, page, names: tuple[str, ...] = QUAD_VIEWS) -> dict[str, np.ndarray]:
        """Pixels of the views ``names``, as the layout shows them: the quad layout is axial, coronal (left),
        sagittal, 3D (right); a 2D pair's the axial view alone (``("axial",)``). One screenshot of the page, cut
        at each view's box: the same pixels as a screenshot of each view (checked equal), in half the time (0.19
        against 0.41 s for the quad layout), and the views all of one moment."""
        images = page.query_selector_all("main img.image-display-area")
        self.assertEqual(len(images), len(names), f"the layout should show the views {names}")
        boxes = [img.bounding_box() for img in images]
        viewport = page.viewport_size
        if any(box is None or box["x"] < 0 or box["y"] < 0 or box["x"] + box["width"] > viewport["width"]
               or box["y"] + box["height"] > viewport["height"] for box in boxes):  # scrolled away: each view's own
            return {name: _png_to_array(img.screenshot()) for name, img in zip(names, images)}
        shown = _png_to_array(page.screenshot())
        views = {}
        for name, box in zip(names, boxes):
            x, y = round(box["x"]), round(box["y"])
            views[name] = shown[y:y + round(box["height"]), x:x + round(box["width"])]
        return views

    def _wait_views(self, page, condition, what: str, timeout_s: float = 30.0,
                    names: tuple[str, ...] = QUAD_VIEWS) -> dict[str, np.ndarray]:
        """Views are streamed images that arrive after the state: poll until ``condition(views)``, looking again
        as soon as a view shows a new picture (its image's address changes with each frame), at least every 0.5
        s (a picture may be drawn after its address was set)."""
        deadline = time.monotonic() + timeout_s
        shown = page.eval_on_selector_all("main img.image-display-area", "images => images.map(i => i.src)")
        views = self._views(page, names)
        while not condition(views):
            if time.monotonic() > deadline:
                self.fail(f"views never showed {what}")
            try:
                page.wait_for_function("(shown) => { const images = document.querySelectorAll("
                                       "'main img.image-display-area'); return images.length !== shown.length"
                                       " || [...images].some((image, i) => image.src !== shown[i] && image.complete);"
                                       " }", arg=shown, timeout=500)
            except PlaywrightTimeoutError:
                pass
            shown = page.eval_on_selector_all("main img.image-display-area", "images => images.map(i => i.src)")
            views = self._views(page, names)
        return views


class WebAppInBrowserTest(_BrowserPageTest):
    """The page of ``mmfusion web --demo``."""

    def test_register_and_fuse_through_the_page(self):
        page = self._open_page()
        self.assertIn("MNI152", page.inner_text("body"))

        # Cancel stops a running registration at the engine's next progress report. A rigid registration of the demo
        # takes under a second in a warm server, and had ended before Playwright's click on Cancel landed: the
        # cancelled run registers rigid + B-spline, and the page clicks Cancel in the DOM change that enables it (a
        # MutationObserver, not a poll once a frame, which a faster server could finish the job between)
        page.evaluate("() => trame.state.update({stages: ['rigid', 'bspline']})")
        page.wait_for_function("() => document.querySelectorAll('.v-chip').length >= 2", timeout=10_000)
        page.evaluate("""() => { window.mmfCancelClicked = false;
            const observer = new MutationObserver(() => { const b = document.querySelector('#mmf-cancel');
              if (b && !b.disabled) { observer.disconnect(); b.click(); window.mmfCancelClicked = true; } });
            observer.observe(document.body, {subtree: true, childList: true, attributes: true}); }""")
        page.click("#mmf-register")
        page.wait_for_function("() => window.mmfCancelClicked", timeout=30_000)
        page.wait_for_function("() => /Registration (cancelled|done)/.test("
                               "document.querySelector('#mmf-job-message').innerText)", timeout=JOB_TIMEOUT_MS)
        self.assertIn("Registration cancelled", page.inner_text("#mmf-job-message"))
        self.assertNotIn("MI before", page.inner_text("#mmf-metrics"))
        page.evaluate("() => trame.state.update({stages: ['rigid']})")

        # the Initializer select: its help shows under it, and the registration uses the choice
        page.locator(".v-select:has(#mmf-initializer) .v-field").click(timeout=10_000)
        page.locator(".v-overlay .v-list-item", has_text="search").click(timeout=10_000)
        page.wait_for_function("() => document.querySelector('.v-select:has(#mmf-initializer)')"
                               ".innerText.includes('30 degrees')", timeout=10_000)
        messages = self._click_and_wait_job(page, "#mmf-register", "Registration")
        # progress reached the page while the job ran (the loop was not blocked)
        self.assertTrue(any("Registration:" in m for m in messages), messages)
        self.assertIn("MI before", page.inner_text("#mmf-metrics"))
        self.assertIn("search: ", page.inner_text("#mmf-metrics"))

        self._click_and_wait_job(page, "#mmf-fuse", "Fusion")
        metrics_text = page.inner_text("#mmf-metrics")
        for name in ("Qabf", "SSIM", "VIF", "MI before"):
            self.assertIn(name, metrics_text)
        self.assertFalse(page.query_selector("#mmf-error"), "no error expected")

        # the transform download is the registration's: it recovers the demo's known motion
        with page.expect_download(timeout=30_000) as download:
            page.click("#mmf-download-transform")
        self.assertEqual(download.value.suggested_filename, "moving_to_fixed.tfm")
        saved = os.path.join(tempfile.mkdtemp(prefix="mmfusion-web-test-"), "moving_to_fixed.tfm")
        self.addCleanup(shutil.rmtree, os.path.dirname(saved), True)
        download.value.save_as(saved)  # ITK picks the reader by the file suffix
        transform = sitk.ReadTransform(saved)
        while transform.GetName() == "CompositeTransform":  # the last (only) stage
            transform = sitk.CompositeTransform(transform).GetBackTransform()
        rotation = np.array(sitk.Euler3DTransform(transform).GetMatrix()).reshape(3, 3)
        angle_deg = np.degrees(np.arccos(np.clip((np.trace(rotation) - 1.0) / 2.0, -1.0, 1.0)))
        # the demo PET is rotated by DEMO_ROTATION_DEG (6 degrees about z)
        self.assertAlmostEqual(angle_deg, float(np.linalg.norm(DEMO_ROTATION_DEG)), delta=1.0)

        # downloads of the fused volume (3D, on the fixed grid) and of the HTML report
        folder = os.path.dirname(saved)
        with page.expect_download(timeout=60_000) as download:
            page.click("#mmf-download-fused")
        self.assertEqual(download.value.suggested_filename, "fused.nii.gz")  # the name the server wrote
        download.value.save_as(os.path.join(folder, "fused.nii.gz"))
        fused = sitk.ReadImage(os.path.join(folder, "fused.nii.gz"))
        self.assertEqual(fused.GetDimension(), 3)
        self.assertGreater(sitk.GetArrayViewFromImage(fused).std(), 1.0)
        with page.expect_download(timeout=60_000) as download:
            page.click("#mmf-download-report")
        self.assertEqual(download.value.suggested_filename, "report.html")
        download.value.save_as(os.path.join(folder, "report.html"))
        with open(os.path.join(folder, "report.html"), encoding="utf-8") as f:
            html = f.read()
        self.assertTrue(html.lstrip().lower().startswith("<!doctype html"))
        self.assertIn("Qabf", html)

        def shown(views):
            return (all(_hot_mask(views[v]).mean() > 0.01 for v in ("axial", "coronal", "sagittal"))
                    and views["3d"][100:-100, 100:-100].std() > 20)

        views = self._wait_views(page, shown, "the PET colours in the slice views and the 3D rendering")
        if os.environ.get("MMFUSION_WEB_SCREENSHOT"):
            # the panel at its display controls (the download clicks scrolled it to the bottom)
            page.evaluate("document.querySelector('#mmf-fg-layer').scrollIntoView({block: 'center'})")
            page.wait_for_timeout(300)
            page.screenshot(path=os.environ["MMFUSION_WEB_SCREENSHOT"])
        for name in ("axial", "coronal", "sagittal"):
            pixels = views[name]
            hot = _hot_mask(pixels)
            anatomy = pixels.max(axis=-1) > 40
            self.assertGreater(hot.mean(), 0.01, name)
            # the colours lie on the head, not in the black background around it
            self.assertGreater((hot & anatomy).sum() / hot.sum(), 0.97, name)
            self.assertLess(hot.sum(), anatomy.sum(), name)
        # the 3D view shows the rendered fused volume: bright, structured pixels in the middle
        centre = views["3d"][100:-100, 100:-100].astype(int)
        self.assertGreater(centre.std(), 20)

        # opacity 0 in the panel: the colours go, the grey anatomy stays
        thumb = page.query_selector(".v-navigation-drawer .v-slider-thumb")
        thumb.focus()
        page.keyboard.press("Home")
        views = self._wait_views(page, lambda v: not any(_hot_mask(v[n]).mean() > 0.001
                                                         for n in ("axial", "coronal", "sagittal")),
                                 "grey slice views at opacity 0")
        self.assertGreater((views["axial"].max(axis=-1) > 40).mean(), 0.1)

    def test_fusion_windows_set_in_the_page_fuse_as_the_cli_does(self):
        # each image's fusion window, picked in the page: the fused volume is `mmfusion fuse`'s with that window, the
        # fused layer in the views changes with it, and a window holding none of the PET's values shows the engine's
        # message. The demo's two images are written to files and loaded through the page's paths (as loaded, not
        # registered, whichever test ran before: the test had relied on running before
        # test_register_and_fuse_through_the_page), fused as they lie, so the CLI fuses the same two files
        import contextlib
        import io as text_io

        from MultimodalFusionLib import cli
        from MultimodalFusionLib.web.demo import demo_images

        page = self._open_page()
        folder = tempfile.mkdtemp(prefix="mmfusion-web-test-")
        self.addCleanup(shutil.rmtree, folder, True)
        fixed, moving, _ = demo_images(spacing_mm=3.0)  # the server's demo (mmfusion web --demo: 3 mm)
        # named as the demo is shown (the other tests look for "MNI152"): the same images, for the tests after this
        paths = {name: os.path.join(folder, f"{name}.nii.gz") for name in ("MNI152-T1-demo", "PET-like-demo", "cli",
                                                                           "web")}
        paths["t1"], paths["pet"] = paths.pop("MNI152-T1-demo"), paths.pop("PET-like-demo")
        sitk.WriteImage(fixed, paths["t1"])
        sitk.WriteImage(moving, paths["pet"])
        page.fill("#mmf-fixed-path", paths["t1"])
        page.fill("#mmf-moving-path", paths["pet"])
        self._click_and_wait_job(page, "#mmf-load", "Loading")
        page.wait_for_function("() => trame.state.get('has_registered') === false", timeout=30_000)
        # full foreground opacity (test_register_and_fuse_through_the_page leaves it at 0): the fused layer shows
        self._slider_thumb(page, "fg-opacity").focus()
        page.keyboard.press("End")

        def pick(side: str, title: str) -> None:
            page.locator(f".v-select:has(#mmf-fw-{side}-preset) .v-field").click(timeout=10_000)
            page.locator(".v-overlay .v-list-item", has_text=title).click(timeout=10_000)


        def leave_as_found() -> None:  # the engine's default windows and the functional layer for the next tests
            if page.is_closed():
                return
            page.evaluate("() => trame.state.update({fw_a_preset: 'default', fw_b_preset: 'default', "
                          "fg_layer: 'functional', error_message: ''})")

        self.addCleanup(leave_as_found)
        self._click_and_wait_job(page, "#mmf-fuse", "Fusion")  # the engine's default windows
        self.assertIn("engine default", page.inner_text("#mmf-metrics"))
        page.locator(".v-select:has(#mmf-fg-layer) .v-field").click(timeout=10_000)
        page.locator(".v-overlay .v-list-item", has_text="Fused image").click(timeout=10_000)
        page.wait_for_timeout(1000)  # the views' frames of the fused layer
        before = self._wait_views(page, lambda v: (v["axial"].max(axis=-1) > 40).mean() > 0.05, "the fused layer")["axial"]
        # the demo PET is in SUV-like units: its SUV presets are offered; the T1 is no CT: no CT presets
        pick("b", "SUV 0..5")
        page.wait_for_function("() => document.querySelector('#mmf-fw-b-text').innerText.includes('--window 0 5')",
                               timeout=10_000)
        self.assertEqual(page.input_value("#mmf-fw-b-window"), "5")
        # the T1's window typed as Window and Level (the preset turns Manual)
        page.fill("#mmf-fw-a-window", "120")
        page.fill("#mmf-fw-a-level", "100")
        page.wait_for_function("() => document.querySelector('#mmf-fw-a-text').innerText.includes('--window-a 40 160')",
                               timeout=10_000)
        self._click_and_wait_job(page, "#mmf-fuse", "Fusion")
        self._wait_views(page, lambda v: np.abs(v["axial"].astype(int) - before.astype(int)).mean() > 2,
                         "the fused layer change with the windows")
        self.assertIn("fixed 40..160, moving 0..5", page.inner_text("#mmf-metrics"))
        with page.expect_download(timeout=60_000) as download:
            page.click("#mmf-download-fused")
        download.value.save_as(paths["web"])
        with contextlib.redirect_stdout(text_io.StringIO()), contextlib.redirect_stderr(text_io.StringIO()):
            self.assertEqual(cli.main(["fuse", paths["t1"], paths["pet"], "--method", "average", "-o", paths["cli"],
                                       "--window-level-a", "120", "100", "--window", "0", "5"]), 0)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(paths["web"])),
                                      sitk.GetArrayFromImage(sitk.ReadImage(paths["cli"])))

        # a window that holds none of the PET's values (95..105 of -0.2..2.8): the engine's message in the banner
        page.fill("#mmf-fw-b-window", "10")
        page.fill("#mmf-fw-b-level", "100")
        page.wait_for_function("() => document.querySelector('#mmf-fw-b-text').innerText.includes('--window 95 105')",
                               timeout=10_000)
        page.click("#mmf-fuse")
        page.wait_for_selector("#mmf-error", timeout=JOB_TIMEOUT_MS)
        self.assertIn("holds none of its values", page.inner_text("#mmf-error"))
        self.assertIn("Fusion failed", page.inner_text("#mmf-job-message"))
        # a width of 0: said under the fields at once, and Fuse refuses it in the same words
        page.click("#mmf-error button")
        page.wait_for_selector("#mmf-error", state="detached", timeout=10_000)
        page.fill("#mmf-fw-b-window", "0")
        page.wait_for_function("() => document.querySelector('#mmf-fw-b-text').innerText.includes('must be more than 0')",
                               timeout=10_000)
        page.click("#mmf-fuse")
        page.wait_for_selector("#mmf-error", timeout=30_000)
        self.assertIn("the window width must be more than 0", page.inner_text("#mmf-error"))
        page.click("#mmf-error button")
        page.wait_for_selector("#mmf-error", state="detached", timeout=10_000)

    def _slider_thumb(self, page, name: str):
        """The thumb of the panel's slider ``name`` (e.g. "bg-level"), for keyboard moves as a user makes."""
        thumb = page.locator(f".v-slider:has(#mmf-{name}) .v-slider-thumb")
        self.assertEqual(thumb.count(), 1, name)
        return thumb

    def test_window_level_and_threshold_change_the_slice_views(self):
        page = self._open_page()
        page.wait_for_function("() => !document.querySelector('#mmf-bg-level-value').disabled", timeout=30_000)
        self.assertTrue(page.is_enabled("#mmf-fg-lower-value"))
        # full foreground opacity (another test may have left it at 0): the functional colours show
        self._slider_thumb(page, "fg-opacity").focus()
        page.keyboard.press("End")
        views = self._wait_views(page, lambda v: _hot_mask(v["axial"]).mean() > 0.01, "the PET colours")
        anatomy_brightness = _anatomy_brightness
        auto = anatomy_brightness(views["axial"])
        # the level to the image's maximum: the anatomy goes dark, live
        self._slider_thumb(page, "bg-level").focus()
        page.keyboard.press("End")
        views = self._wait_views(page, lambda v: anatomy_brightness(v["axial"]) < 0.6 * auto, "a darker anatomy")
        self.assertIn("Manual", page.inner_text(".v-navigation-drawer"))
        # a narrow window typed in the field, with the level low: the anatomy goes bright
        page.fill("#mmf-bg-level-value", "1")
        page.fill("#mmf-bg-window-value", "2")
        self._wait_views(page, lambda v: anatomy_brightness(v["axial"]) > max(1.2 * auto, 60), "a brighter anatomy")

        # the functional lower threshold at the image's maximum: its colours go, the anatomy stays
        self._slider_thumb(page, "fg-lower").focus()
        page.keyboard.press("End")
        views = self._wait_views(page, lambda v: _hot_mask(v["axial"]).mean() < 0.001, "no PET colours")
        self.assertGreater((views["axial"].max(axis=-1) > 40).mean(), 0.1)

        # Auto for both: as at the start (leave the shared server as found)
        page.click("#mmf-fg-auto")
        self._choose_auto_window_level(page)
        self._wait_views(page, lambda v: (_hot_mask(v["axial"]).mean() > 0.01
                                          and abs(anatomy_brightness(v["axial"]) - auto) < 0.1 * auto),
                         "the automatic windows again")
        self.assertFalse(page.query_selector("#mmf-error"), "no error expected")

    def test_the_weight_map_is_shown_as_a_layer_with_its_legend(self):
        # the fusion's weight map (the fixed image's weight per voxel) could be downloaded but not seen: the
        # Foreground layer list offers it, the slice views colour it over the anatomy, and a legend shows its colour
        # table from 0 to 1
        page = self._open_page()

        def leave_as_found() -> None:
            if not page.is_closed():
                page.evaluate("() => trame.state.update({fg_layer: 'functional', method: 'average'})")

        self.addCleanup(leave_as_found)
        self._slider_thumb(page, "fg-opacity").focus()
        page.keyboard.press("End")  # full opacity: the layer's colours as they are
        page.evaluate("() => trame.state.update({method: 'pca'})")
        self._click_and_wait_job(page, "#mmf-fuse", "Fusion")
        self.assertFalse(page.is_visible("#mmf-weights-legend"))
        # every Lower/Upper the legend shows while visible, in the order shown (a MutationObserver sees each render):
        # the page had shown it as soon as the choice changed, with the functional layer's values, until the
        # server's message brought the weight map's
        page.evaluate("""() => {
            window.mmfLegendShown = [];
            const legend = document.querySelector('#mmf-weights-legend');
            const note = () => { if (legend.style.display !== 'none') { window.mmfLegendShown.push([
                document.querySelector('#mmf-weights-legend-lower').innerText,
                document.querySelector('#mmf-weights-legend-upper').innerText]); } };
            new MutationObserver(note).observe(legend, {attributes: true, childList: true, subtree: true,
                                                        characterData: true});
        }""")
        page.locator(".v-select:has(#mmf-fg-layer) .v-field").click(timeout=10_000)
        page.locator(".v-overlay .v-list-item", has_text="Weight map").click(timeout=10_000)
        page.wait_for_selector("#mmf-weights-legend", state="visible", timeout=10_000)
        self.assertTrue(page.eval_on_selector("#mmf-weights-legend-bar",
                                              "e => getComputedStyle(e).backgroundImage").startswith("linear-gradient"))
        page.wait_for_function("() => document.querySelector('#mmf-weights-legend-lower').innerText === '0' && "
                               "document.querySelector('#mmf-weights-legend-upper').innerText === '1'",
                               timeout=10_000)  # the server's window of the layer, 0..1
        shown = page.evaluate("() => window.mmfLegendShown")
        self.assertTrue(shown)
        self.assertEqual({tuple(values) for values in shown}, {("0", "1")}, "the legend showed another layer's values")
        # the axial view coloured wherever the fixed image lies (pca's weights: 0 < w < 1 everywhere)
        views = self._wait_views(page, lambda v: (_hot_mask(v["axial"]) | (v["axial"].max(axis=-1)
                                                                           - v["axial"].min(axis=-1) > 60)).mean()
                                 > 0.5, "the weight map coloured over the axial view")
        self.assertFalse(page.query_selector("#mmf-error"), "no error expected")
        self.assertGreater(views["axial"].std(), 5)

    def test_window_level_fields_show_long_values_whole(self):
        # a PET in Bq/mL has windows of 123456.78, a z-scored MR levels of -0.0123457 (the fusion fields' 6
        # significant digits): the display fields, a third of their row, cut 123456.78 to 123456.7, and the fusion
        # fields, three to a row with their preset, showed 5 characters (the demo T1's fusion window 237.34 as 237.3).
        # Each field's text, the server's own values and those typed, fits its box (a number input's text is cut
        # where it is wider: its scrollWidth then exceeds its clientWidth)
        page = self._open_page()
        page.wait_for_function("() => !document.querySelector('#mmf-bg-level-value').disabled", timeout=30_000)
        fields = ["#mmf-bg-window-value", "#mmf-bg-level-value", "#mmf-fg-lower-value", "#mmf-fg-upper-value",
                  "#mmf-fw-a-window", "#mmf-fw-a-level", "#mmf-fw-b-window", "#mmf-fw-b-level"]

        def leave_as_found() -> None:  # Auto windows and the engine's default fusion windows for the next tests
            if page.is_closed():
                return
            page.click("#mmf-fg-auto")
            self._choose_auto_window_level(page)
            page.evaluate("() => trame.state.update({fw_a_preset: 'default', fw_b_preset: 'default'})")

        self.addCleanup(leave_as_found)

        def widths(field: str) -> list[int]:
            return page.eval_on_selector(field, "e => [e.scrollWidth, e.clientWidth]")

        for field in fields:
            shown = page.input_value(field)
            scroll, client = widths(field)
            self.assertLessEqual(scroll, client, f"{field} shows {shown!r} cut")
        # and the display fields up to 18 characters (an image's values far from 0 against their range: its level at
        # the slider's step, -12345678.9012, had been cut at 12); the fusion fields' values are 6 significant digits
        for value in ("123456.78", "-0.0123457", "-1234567.8", "-12345678.9012", "-0.000123456789012"):
            for field in fields if len(value) <= 14 else fields[:4]:
                page.fill(field, value)
                self.assertEqual(page.input_value(field), value)
                scroll, client = widths(field)
                self.assertLessEqual(scroll, client, f"{field} shows {value!r} cut")

    def _choose_auto_window_level(self, page) -> None:
        page.locator(".v-select:has(#mmf-wl-preset) .v-field").click(timeout=10_000)
        page.locator(".v-overlay .v-list-item", has_text="Auto").click(timeout=10_000)

    def test_left_drag_in_a_slice_view_sets_the_anatomy_window_level(self):
        page = self._open_page()
        page.wait_for_function("() => !document.querySelector('#mmf-bg-level-value').disabled", timeout=30_000)

        def window_level() -> tuple[float, float]:
            """The fields' values once the server has handled the whole drag (they stop changing)."""
            last, deadline = None, time.monotonic() + 30
            while time.monotonic() < deadline:
                now = float(page.input_value("#mmf-bg-window-value")), float(page.input_value("#mmf-bg-level-value"))
                if now == last:
                    return now
                last = now
                page.wait_for_timeout(700)
            self.fail(f"the window/level fields kept changing: {last}")

        self.addCleanup(self._choose_auto_window_level, page)  # leave the shared server as found
        if page.query_selector("#mmf-error"):  # another test's banner (one server, one session)
            page.click("#mmf-error button")
            page.wait_for_selector("#mmf-error", state="detached", timeout=10_000)
        window0, level0 = window_level()
        level_thumb = self._slider_thumb(page, "bg-level")  # its range: the image's min..max
        level_range = float(level_thumb.get_attribute("aria-valuemax")) - float(level_thumb.get_attribute("aria-valuemin"))
        self.assertGreater(level_range, 0)
        step = 10 ** np.floor(np.log10(level_range / 1000.0))
        views = self._wait_views(page, lambda v: (v["axial"].max(axis=-1) > 40).mean() > 0.1, "the anatomy")
        auto = _anatomy_brightness(views["axial"])
        box = page.query_selector_all("main img.image-display-area")[0].bounding_box()  # the axial view
        x, y = box["x"] + 0.5 * box["width"], box["y"] + 0.6 * box["height"]

        def drag(dx: float, dy: float) -> None:
            page.mouse.move(x, y)
            page.mouse.down()
            page.mouse.move(x + dx, y + dy, steps=12)
            page.mouse.up()

        # up: the level rises (Slicer: by the image's range per the view's shorter side), the anatomy darkens
        drag(0, -0.3 * box["height"])
        page.wait_for_function(f"() => parseFloat(document.querySelector('#mmf-bg-level-value').value) > "
                               f"{level0 + 0.2 * level_range}", timeout=30_000)
        window1, level1 = window_level()
        self.assertAlmostEqual(window1, window0, delta=0.02 * level_range, msg="a vertical drag moves the level")
        self.assertIn("Manual", page.inner_text(".v-navigation-drawer"))
        self._wait_views(page, lambda v: _anatomy_brightness(v["axial"]) < 0.7 * auto, "a darker anatomy")

        # right: the window widens, the level stays; the slice changes again
        before = self._views(page)["axial"]
        drag(0.3 * box["width"], 0)
        page.wait_for_function(f"() => parseFloat(document.querySelector('#mmf-bg-window-value').value) > "
                               f"{window1 + 0.2 * level_range}", timeout=30_000)
        window2, level2 = window_level()
        self.assertAlmostEqual(level2, level1, delta=0.02 * level_range, msg="a horizontal drag moves the window")
        self._wait_views(page, lambda v: np.abs(v["axial"].astype(int) - before.astype(int)).mean() > 2,
                         "the wider window")
        # the slider's thumb follows the field (same state): its value is the window's
        self.assertAlmostEqual(float(self._slider_thumb(page, "bg-window").get_attribute("aria-valuenow")), window2,
                               delta=step)

        # the preset still works after a drag: Auto, as at the start
        self._choose_auto_window_level(page)
        page.wait_for_function(f"() => Math.abs(parseFloat(document.querySelector('#mmf-bg-level-value').value) "
                               f"- {level0}) <= {2 * step}", timeout=30_000)
        self._wait_views(page, lambda v: abs(_anatomy_brightness(v["axial"]) - auto) < 0.1 * auto,
                         "the automatic window again")
        self.assertFalse(page.query_selector("#mmf-error"), "no error expected")

    def test_slice_sliders_move_the_slices(self):
        # trame-slicer's slider under each slice view (state Red/Green/Yellow__SliderState__value): a page's write
        # of it must pass the message gate and ServerState and reach the view's MRML slice node. No other test moved
        # one; a slider the server ignored or put back would leave the view (and a new page) on the old slice
        page = self._open_page()
        names = ("axial", "coronal", "sagittal")
        thumbs = page.locator(".slice-slider .v-slider-thumb")
        self.assertEqual(thumbs.count(), 3, "a slider under each slice view")
        page.wait_for_function("() => document.querySelectorAll('.slice-slider .v-slider-thumb[aria-valuenow]')"
                               ".length === 3", timeout=30_000)

        def value(i: int) -> float:
            return float(thumbs.nth(i).get_attribute("aria-valuenow"))

        def differ(a: np.ndarray, b: np.ndarray) -> float:
            """Mean change of the slice above the slider's strip (a focused thumb has a halo)."""
            return float(np.abs(a[:-48].astype(int) - b[:-48].astype(int)).mean())

        start = [value(i) for i in range(3)]
        keys = ("Red__SliderState__value", "Green__SliderState__value", "Yellow__SliderState__value")
        self.addCleanup(lambda: page.is_closed() or page.evaluate(  # leave the shared server's slices as found
            "(v) => { ['Red', 'Green', 'Yellow'].forEach((n, i) => trame.state.set(n + '__SliderState__value', v[i])); }",
            start))
        self.assertEqual(page.evaluate(f"() => {list(keys)}.map(k => trame.state.get(k))"), start)
        self._wait_views(page, lambda v: all((v[n].max(axis=-1) > 40).mean() > 0.05 for n in names),
                         "the anatomy in the slice views")
        for i, name in enumerate(names):
            before = self._views(page)
            # three arrow presses, as a user steps through slices: this view alone shows another slice
            thumbs.nth(i).focus()
            for _ in range(3):
                page.keyboard.press("ArrowRight")
            moved = self._wait_views(page, lambda v, n=name, b=before: differ(v[n], b[n]) > 3, f"another {name} slice")
            # the other views at most a little (a slice intersection line may move in them): far less than this one
            for other in names:
                if other != name:
                    self.assertLess(differ(moved[other], before[other]), differ(moved[name], before[name]) / 3,
                                    f"{other} changed with the {name} slider")
            page.wait_for_timeout(1000)  # the server's answer has come: the thumb stays where the user put it
            self.assertGreater(value(i), start[i], name)
            if i == 0:
                step = (value(0) - start[0]) / 3  # the axial slider's step: a slice (3 mm in the demo)
            # the same slice in a page opened now (the server's state and render), and the first slice back
            if i == 0:
                other_page = self.browser.new_page(viewport={"width": 1400, "height": 1000})
                other_page.goto(self.url, wait_until="domcontentloaded")
                other_page.wait_for_function("() => document.querySelectorAll('main img.image-display-area').length"
                                             " === 4", timeout=30_000)
                self.assertEqual(other_page.evaluate(f"() => trame.state.get('{keys[0]}')"), value(0))
                # the first page's view of the server's slice: `moved` is the first change seen, which under load
                # was a slice on the way (one of the three presses: 14.7 from the first slice, 20.1 from the third,
                # where the new page showed the third, as the first page did then); the server holds the third
                # now (the new page's state says so), so the first page's frames stop on it
                last = [moved]

                def settled(v, last=last) -> bool:
                    done = differ(v["axial"], last[0]["axial"]) < 0.05
                    last[0] = v
                    return done

                moved = self._wait_views(page, settled, "the first page's axial view settle")
                self.assertGreater(differ(moved["axial"], before["axial"]), 3, "the settled axial slice moved")
                # the moved slice, clearly nearer it than the first slice: a new page's render differs from the first
                # page's by anti-aliasing and the stream's JPEG quality (full runs timed out on "< 1.0" and on "three
                # times nearer" with the right slice shown); showing the first slice, it is nearer that one
                seen: list[tuple[float, float]] = []

                def shows_the_moved_slice(v, m=moved, b=before, seen=seen) -> bool:
                    seen.append((differ(v["axial"], m["axial"]), differ(v["axial"], b["axial"]),
                                 float(v["axial"].mean()), v["axial"].shape))
                    return seen[-1][0] < 0.7 * seen[-1][1]

                try:
                    self._wait_views(other_page, shows_the_moved_slice, "the moved axial slice in a new page", 60.0)
                except AssertionError as error:
                    raise AssertionError(f"{error}: (to the moved, to the first, its mean, its shape) {seen[-3:]}; "
                                         f"the moved: {float(moved['axial'].mean())}, {moved['axial'].shape}") from None
                other_page.close()
            for _ in range(3):
                page.keyboard.press("ArrowLeft")
            self._wait_views(page, lambda v, n=name, b=before: differ(v[n], b[n]) < 1.0, f"the first {name} slice again")
            self.assertEqual(value(i), start[i], name)

        # a drag of the axial slider's thumb along its track (left: lower slices)
        before = self._views(page)
        box = thumbs.nth(0).bounding_box()
        track = page.locator(".slice-slider .v-slider-track").nth(0).bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x - 0.2 * track["width"], y, steps=10)
        page.mouse.up()
        self._wait_views(page, lambda v, b=before: differ(v["axial"], b["axial"]) > 3, "a lower axial slice")
        page.wait_for_timeout(1000)
        dragged = value(0)
        self.assertLess(dragged, start[0] - 3 * step)
        self.assertEqual(page.evaluate(f"() => trame.state.get('{keys[0]}')"), dragged)
        self.assertFalse(page.query_selector("#mmf-error"), "no error expected")

    def test_errors_are_shown_in_the_page(self):
        page = self._open_page()
        page.fill("#mmf-fixed-path", "/nonexistent/fixed.nii.gz")
        page.fill("#mmf-moving-path", "/nonexistent/moving.nii.gz")
        page.click("#mmf-load")
        page.wait_for_selector("#mmf-error", timeout=30_000)
        self.assertIn("fixed.nii.gz", page.inner_text("#mmf-error"))
        self.assertIn("Loading failed", page.inner_text("#mmf-job-message"))

        # upload: a 2D slice with the demo's volume is refused naming both sizes (and the demo stays loaded)
        from MultimodalFusionLib.data import testing_data_dir

        page.click("#mmf-error button")  # close the banner
        page.wait_for_selector("#mmf-error", state="detached", timeout=10_000)
        uploads = page.query_selector_all(".v-navigation-drawer input[type=file]")
        self.assertEqual(len(uploads), 2)
        uploads[0].set_input_files(str(testing_data_dir() / "BrainT1Slice.png"))
        page.wait_for_function("() => document.querySelector('#mmf-fixed-path').value.endsWith('BrainT1Slice.png')",
                               timeout=30_000)
        volume = os.path.join(tempfile.mkdtemp(prefix="mmfusion-web-test-"), "volume.nii.gz")
        self.addCleanup(shutil.rmtree, os.path.dirname(volume), True)
        sitk.WriteImage(sitk.GetImageFromArray(np.arange(256, dtype=np.float32).reshape(4, 8, 8)), volume)
        page.fill("#mmf-moving-path", volume)
        self.assertNotEqual(page.input_value("#mmf-fixed-path"), str(testing_data_dir() / "BrainT1Slice.png"),
                            "the upload should be a copy on the server")
        page.click("#mmf-load")
        page.wait_for_selector("#mmf-error", timeout=30_000)
        self.assertIn("is 2D (size 181 x 217) but the moving image", page.inner_text("#mmf-error"))
        self.assertIn("is 3D (size ", page.inner_text("#mmf-error"))

    def test_a_dicom_series_is_picked_in_the_page_when_a_folder_holds_several(self):
        from pathlib import Path

        from test_web_app import write_two_dicom_series

        root = Path(tempfile.mkdtemp(prefix="mmfusion-web-test-"))
        self.addCleanup(shutil.rmtree, root, True)
        write_two_dicom_series(root / "study")
        # the moving path names no file: the load fails after the fixed series is read, so the demo the
        # other tests use stays loaded (test_web_app.py checks which series' voxels a load reads)
        missing = root / "no-such-moving.nii.gz"
        page = self._open_page()
        self.assertIsNone(page.query_selector("#mmf-fixed-series"))  # no list until a folder needs one
        page.fill("#mmf-fixed-path", str(root / "study"))
        page.fill("#mmf-moving-path", str(missing))
        page.click("#mmf-load")
        page.wait_for_selector("#mmf-error", timeout=30_000)
        self.assertIn("2 DICOM series", page.inner_text("#mmf-error"))
        # the list offers the folder's series by description
        page.locator(".v-select:has(#mmf-fixed-series) .v-field").click(timeout=10_000)
        page.locator(".v-overlay .v-list-item", has_text="PET CT (3 files)").click(timeout=10_000)
        page.click("#mmf-error button")  # close the banner
        page.wait_for_selector("#mmf-error", state="detached", timeout=10_000)
        page.click("#mmf-load")
        page.wait_for_selector("#mmf-error", timeout=30_000)
        error = page.inner_text("#mmf-error")
        self.assertIn("no-such-moving.nii.gz", error)  # the picked series was read: the moving file is next
        self.assertNotIn("DICOM series", error)
        # the list belongs to that folder: another path hides it
        page.fill("#mmf-fixed-path", "")
        page.fill("#mmf-moving-path", "")
        page.wait_for_selector("#mmf-fixed-series", state="detached", timeout=10_000)
        # the page's state is the server's: leave no banner for the next test's page to find at once
        page.click("#mmf-error button")
        page.wait_for_selector("#mmf-error", state="detached", timeout=10_000)

    def test_an_upload_is_sent_in_messages_of_at_most_a_piece(self):
        # The page's script sends small files together and a larger file in pieces, in messages of at most
        # UPLOAD_PIECE_BYTES of content (what the server's wslink gathers and copies whole): a file of 4 MiB - 1
        # and one of 4 MiB had gone in one message of 8 MiB - 1, as had any small files followed by a piece
        from MultimodalFusionLib.web.app import UPLOAD_BATCH_FILES, UPLOAD_PIECE_BYTES

        page = self._open_page()
        page.evaluate("""() => { const trigger = trame.trigger.bind(trame); window.mmfSent = []; window.mmfFiles = [];
            trame.trigger = (name, args, kwargs) => {
              if (args && Array.isArray(args[1])) { window.mmfFiles.push(args[1].length);
                window.mmfSent.push(args[1].reduce((n, e) => n + (e.content ? e.content.byteLength : 0), 0)); }
              return trigger(name, args, kwargs); }; }""")
        folder = tempfile.mkdtemp(prefix="mmfusion-web-test-")
        self.addCleanup(shutil.rmtree, folder, True)
        sizes = {"IM0001.dcm": UPLOAD_PIECE_BYTES - 1, "IM0002.dcm": UPLOAD_PIECE_BYTES, "IM0003.dcm": 0,
                 "IM0004.dcm": 2 * UPLOAD_PIECE_BYTES + 5}
        rng = np.random.default_rng(0)
        for name, size in sizes.items():
            with open(os.path.join(folder, name), "wb") as out:
                out.write(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        before = page.input_value("#mmf-moving-path")
        page.query_selector_all(".v-navigation-drawer input[type=file]")[1].set_input_files(
            [os.path.join(folder, name) for name in sizes])
        page.wait_for_function(f"() => document.querySelector('#mmf-moving-path').value !== {before!r}",
                               timeout=60_000)
        uploaded = page.input_value("#mmf-moving-path")
        self.assertEqual({name: os.path.getsize(os.path.join(uploaded, name)) for name in os.listdir(uploaded)}, sizes)
        for name in sizes:
            with open(os.path.join(uploaded, name), "rb") as got, open(os.path.join(folder, name), "rb") as sent:
                self.assertEqual(got.read(), sent.read(), name)
        sent = page.evaluate("() => window.mmfSent")
        self.assertEqual(sum(sent), sum(sizes.values()))
        self.assertLessEqual(max(sent), UPLOAD_PIECE_BYTES, sent)
        # and at most UPLOAD_BATCH_FILES files a message (their names count too: the server takes messages of at
        # most 16 MiB), where small files had gone together up to a piece however many they were
        small = os.path.join(folder, "small")
        os.mkdir(small)
        names = [f"IM{n:05d}.dcm" for n in range(UPLOAD_BATCH_FILES + 1)]
        for name in names:
            with open(os.path.join(small, name), "wb") as out:
                out.write(b"x")
        page.evaluate("() => { window.mmfFiles = []; }")
        page.query_selector_all(".v-navigation-drawer input[type=file]")[1].set_input_files(
            [os.path.join(small, name) for name in names])
        page.wait_for_function(f"() => document.querySelector('#mmf-moving-path').value !== {uploaded!r}",
                               timeout=60_000)
        self.assertEqual(len(os.listdir(page.input_value("#mmf-moving-path"))), len(names))
        self.assertEqual(page.evaluate("() => window.mmfFiles"), [UPLOAD_BATCH_FILES, 1, 0])  # then its end

    def test_an_upload_past_the_limit_stops_at_its_first_piece_and_says_why(self):
        # the server refuses an upload larger than --max-upload (4 GiB by default) at the first piece of a file
        # declared larger: the page must stop sending it and show the banner. A sparse file of 4 GiB + 1 byte (no
        # disk used): the page reads only the pieces it sends
        from MultimodalFusionLib.web.app import DEFAULT_MAX_UPLOAD

        page = self._open_page()
        page.evaluate("""() => { const trigger = trame.trigger.bind(trame); window.mmfSent = [];
            trame.trigger = (name, args, kwargs) => {
              if (args && Array.isArray(args[1])) { window.mmfSent.push(args[1].length); }
              return trigger(name, args, kwargs); }; }""")
        folder = tempfile.mkdtemp(prefix="mmfusion-web-test-")
        self.addCleanup(shutil.rmtree, folder, True)
        huge = os.path.join(folder, "ct.nii")
        with open(huge, "wb") as out:
            out.truncate(DEFAULT_MAX_UPLOAD + 1)
        before = page.input_value("#mmf-fixed-path")
        page.query_selector_all(".v-navigation-drawer input[type=file]")[0].set_input_files(huge)
        page.wait_for_selector("#mmf-error", timeout=30_000)
        page.wait_for_function("() => window.mmfSent.length >= 2 && window.mmfSent.at(-1) === 0", timeout=10_000)
        self.assertIn("larger than this server takes, 4 GiB per upload: 'ct.nii' is 4 GiB", page.inner_text("#mmf-error"))
        self.assertIn("--max-upload SIZE", page.inner_text("#mmf-error"))
        page.wait_for_timeout(500)  # nothing more is sent
        self.assertEqual(page.evaluate("() => window.mmfSent"), [1, 0])  # its first piece, then the upload's end
        self.assertEqual(page.input_value("#mmf-fixed-path"), before)
        page.click("#mmf-error button")  # the page's state is the server's: no banner for the next test's page
        page.wait_for_selector("#mmf-error", state="detached", timeout=10_000)

    def test_an_upload_cut_off_by_a_reload_is_not_merged_into_the_next(self):
        page = self._open_page()
        # The page sends an upload in chunks and then an end marker. Make the next upload send its
        # first chunk only (a stale DICOM slice), as a page closed or reloaded mid-upload does.
        page.evaluate("""() => { window.mmfusion_upload = async (files, trigger) => {
            const slice = new DataView(new ArrayBuffer(128));
            await trame.trigger(trigger, ['cut-off', [{name: 'IM0001.dcm', offset: 0, size: 128, content: slice}]]);
            }; }""")
        uploads = page.query_selector_all(".v-navigation-drawer input[type=file]")
        folder = tempfile.mkdtemp(prefix="mmfusion-web-test-")
        self.addCleanup(shutil.rmtree, folder, True)
        pet = os.path.join(folder, "pet.nii.gz")
        sitk.WriteImage(sitk.Image([8, 8, 8], sitk.sitkFloat32), pet)
        uploads[1].set_input_files(pet)
        page.wait_for_timeout(2000)  # the chunk reaches the server; its end never does
        page.reload(wait_until="domcontentloaded")  # the page's own upload code is back
        page.wait_for_selector("#mmf-moving-path")
        page.query_selector_all(".v-navigation-drawer input[type=file]")[1].set_input_files(pet)
        page.wait_for_function("() => document.querySelector('#mmf-moving-path').value.endsWith('pet.nii.gz')",
                               timeout=30_000)
        uploaded = page.input_value("#mmf-moving-path")
        self.assertEqual(os.listdir(os.path.dirname(uploaded)), ["pet.nii.gz"])


class TwoDPairInBrowserTest(_BrowserPageTest):
    """The page of ``mmfusion web --fixed t1-slice.png --moving pet-slice.png``: a 2D pair (a server of its own, so that
    the demo the other tests share stays loaded in theirs)."""

    @classmethod
    def setUpClass(cls):
        # two PNG slices: the demo's middle axial slices (the T1 and the PET-like image, 8-bit)
        from MultimodalFusionLib.web.demo import demo_images

        cls.folder = tempfile.mkdtemp(prefix="mmfusion-web-test-")
        cls.addClassCleanup(shutil.rmtree, cls.folder, True)
        paths = []
        for name, volume in zip(("t1-slice.png", "pet-slice.png"), demo_images(spacing_mm=3.0)[:2]):
            middle = volume[:, :, volume.GetSize()[2] // 2]
            paths.append(os.path.join(cls.folder, name))
            sitk.WriteImage(sitk.Cast(sitk.RescaleIntensity(middle, 0, 255), sitk.sitkUInt8), paths[-1])
        cls.SERVER_ARGS = ("--fixed", paths[0], "--moving", paths[1])
        super().setUpClass()

    def test_a_2d_pair_loads_registers_fuses_and_is_shown_in_the_axial_view_alone(self):
        # the page had refused every 2D image at Load ("the web viewer shows 3D volumes", so Register never came on):
        # the pair loads, registers and fuses, and the layout is the axial view alone, the slice and the PET colours
        # in it (the sagittal and coronal views would show a line of pixels and the 3D view a slab)
        page = self._open_page()
        self.assertIn("2D pair (", page.inner_text("#mmf-pair-text"))
        self.assertTrue(page.is_disabled("#mmf-vr-preset"))  # no 3D view to render in
        self._click_and_wait_job(page, "#mmf-register", "Registration")
        self._click_and_wait_job(page, "#mmf-fuse", "Fusion")
        self.assertIn("Qabf", page.inner_text("#mmf-metrics"))
        self.assertFalse(page.query_selector("#mmf-error"), "no error expected")
        # one view (self._views asserts the count: no coronal, sagittal or 3D view), the slice's anatomy in grey
        # with the PET colours over it, not a blank or black view
        views = self._wait_views(page, lambda v: _hot_mask(v["axial"]).mean() > 0.01, "the PET colours on the slice",
                                 names=("axial",))
        axial = views["axial"]
        anatomy = axial.max(axis=-1) > 40
        self.assertGreater(anatomy.mean(), 0.2)
        hot = _hot_mask(axial)
        self.assertGreater((hot & anatomy).sum() / hot.sum(), 0.97)  # the colours lie on the slice

    def _type_and_click(self, page, fields: dict[str, str], button: str, label: str,
                        held: bool = False) -> tuple[str, str]:
        """Type ``fields`` (id -> text) and click ``button`` at once, no wait between; ``held``: the page's changes held
        back until the click's call has gone, as trame-client holds them while a call of the page awaits its answer
        (an upload's piece, a view's resize): its own count of such calls up by one from before the typing to the
        click. Returns the outcome of the job ``label`` and the banner's text."""
        page.evaluate("""([label, button, held]) => {
            if (window.mmfUnwatch) { window.mmfUnwatch(); }
            window.mmfOutcomes = [];
            window.mmfUnwatch = trame.state.watch(['job_message'], (message) => {
              if (message.startsWith(`${label} done`) || message.startsWith(`${label} failed`)) {
                window.mmfOutcomes.push(message); } });
            window.mmfOutcomes = [];  // the watch is called with the message shown now: not this job's
            if (held) {
              trame.client.beginBusy();
              document.querySelector(button).addEventListener(
                'click', () => setTimeout(() => trame.client.endBusy()), {once: true});
            } }""", [label, button, held])
        for field, text in fields.items():
            page.fill(field, text)
        page.click(button)
        page.wait_for_function("() => window.mmfOutcomes.length", timeout=JOB_TIMEOUT_MS)
        return tuple(page.evaluate("() => [window.mmfOutcomes[0], trame.state.get('error_message')]"))

    def _loaded_names(self, page) -> list[str]:
        return page.evaluate("() => [trame.state.get('fixed_name'), trame.state.get('moving_name')]")

    def test_fields_typed_and_a_button_clicked_at_once_act_on_what_was_typed(self):
        # trame-client sends a field's change in a message of its own, held back while a call of the page awaits its
        # answer, and a button's call goes at once: paths typed and Load clicked at once had reached the server after
        # the click, which loaded the paths as they were (the start-up pair again, "Loading done", without a word) or
        # empty ("Both a fixed and a moving image are needed": the DICOM test of the demo's page failed so once), and
        # a fusion Window and Level typed and Fuse clicked had fused with the engine's default. Each button sends the
        # values of its fields the page has not sent yet with its click now
        page = self._open_page()
        started = [self.SERVER_ARGS[1], self.SERVER_ARGS[3]]
        typed = [os.path.join(self.folder, f"typed-{os.path.basename(path)}") for path in started]
        for path, copy in zip(started, typed):
            shutil.copyfile(path, copy)
        paths = ("#mmf-fixed-path", "#mmf-moving-path")
        outcome, error = self._type_and_click(page, dict(zip(paths, typed)), "#mmf-load", "Loading", held=True)
        self.assertTrue(outcome.startswith("Loading done"), f"{outcome}: {error}")
        self.assertEqual(self._loaded_names(page), ["typed-t1-slice.png", "typed-pet-slice.png"])
        outcome, error = self._type_and_click(page, {"#mmf-fw-a-window": "120", "#mmf-fw-a-level": "100"},
                                              "#mmf-fuse", "Fusion", held=True)
        self.assertTrue(outcome.startswith("Fusion done"), f"{outcome}: {error}")
        self.assertIn("Fusion windows\tfixed 40..160", page.inner_text("#mmf-metrics"))
        # a field the page has sent is not sent again with a click: Engine default picked, the server's Window and
        # Level of it not come yet (put back to 120 and 100 in the page as they were, not as a change), Fuse: every
        # field's value had gone with the click, the old 120 and 100 taken as typed, the preset made Manual again
        page.evaluate("() => trame.state.set('fw_a_preset', 'default')")
        page.wait_for_function("() => String(trame.state.get('fw_a_window')) !== '120'", timeout=JOB_TIMEOUT_MS)
        page.evaluate("() => Object.assign(trame.state.state, {fw_a_window: '120', fw_a_level: '100'})")
        outcome, error = self._type_and_click(page, {}, "#mmf-fuse", "Fusion")
        self.assertTrue(outcome.startswith("Fusion done"), f"{outcome}: {error}")
        self.assertEqual(page.evaluate("() => trame.state.get('fw_a_preset')"), "default")
        self.assertNotIn("fixed 40..160", page.inner_text("#mmf-metrics"))
        # the Seed field (the CLI's --seed; the page had none): a seed typed and Register clicked at once, the change held
        # back, is the one the server checks: a seed past the range gets the seed rule's message (the seed the server
        # held, 0, would have registered without a word)
        page.evaluate("""() => { trame.client.beginBusy(); document.querySelector('#mmf-register').addEventListener(
            'click', () => setTimeout(() => trame.client.endBusy()), {once: true}); }""")
        page.fill("#mmf-seed", "2147483647")
        page.click("#mmf-register")
        page.wait_for_selector("#mmf-error", timeout=30_000)
        self.assertIn("seed must be a whole number from 0 to 2147483646, not 2147483647. Fix: Type a whole number in "
                      "the Seed field", page.inner_text("#mmf-error"))
        self.assertIn("0 to 2147483646", page.get_attribute("#mmf-seed", "title"))  # its tooltip says the range
        page.click("#mmf-error button")
        # the field cleared (Chromium's number field sends "", as for text that is no number, e.g. "1e"): refused, where
        # it had registered with seed 0 without a word, the field still empty
        page.fill("#mmf-seed", "")
        page.click("#mmf-register")
        page.wait_for_selector("#mmf-error", timeout=30_000)
        self.assertIn("The Seed field holds no number", page.inner_text("#mmf-error"))
        page.fill("#mmf-seed", "0")  # as the other tests find it
        page.click("#mmf-error button")
        # not held: as fast as Playwright types and clicks (the start-up pair back, as the other tests find it)
        outcome, error = self._type_and_click(page, dict(zip(paths, started)), "#mmf-load", "Loading")
        self.assertTrue(outcome.startswith("Loading done"), f"{outcome}: {error}")
        self.assertEqual(self._loaded_names(page), ["t1-slice.png", "pet-slice.png"])

if __name__ == "__main__":
    unittest.main()
