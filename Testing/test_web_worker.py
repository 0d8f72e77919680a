"""The web app's background worker: engine work off the event loop, progress, cancel, errors.

Runs on a real trame server state (not started: no browser, no port) and real engine calls.
"""

from __future__ import annotations

import asyncio
import threading
import time
import unittest

from MultimodalFusionLib.progress import report

try:
    from trame.app import get_server
    _HAVE_TRAME = True
except ImportError:  # pragma: no cover
    _HAVE_TRAME = False


@unittest.skipUnless(_HAVE_TRAME, "trame is not installed (pip install 'slicer-multimodalfusion[web]')")
class BackgroundWorkerTest(unittest.TestCase):
    def setUp(self):
        from MultimodalFusionLib.web.worker import BackgroundWorker

        self.server = get_server(f"worker-test-{id(self)}", client_type="vue3")
        self.state = self.server.state
        self.worker = BackgroundWorker(self.state, flush_interval=0.0)
        self.addCleanup(self.worker.shutdown)

    def _run(self, coro_factory):
        return asyncio.run(coro_factory())

    def test_result_reaches_on_success_on_the_loop_thread(self):
        seen = {}

        def job(progress):
            seen["job_thread"] = threading.current_thread().name
            report(progress, 0.5, "half way")
            return 42

        def on_success(value):
            seen["value"] = value
            seen["success_thread"] = threading.current_thread().name

        async def main():
            self.assertIsNotNone(self.worker.start("Sum", job, on_success))
            self.assertTrue(self.state.job_busy)
            await self.worker.wait()

        self._run(main)
        self.assertEqual(seen["value"], 42)
        self.assertNotEqual(seen["job_thread"], seen["success_thread"])  # work ran off the loop's thread
        self.assertEqual(seen["success_thread"], threading.main_thread().name)
        self.assertFalse(self.state.job_busy)
        self.assertTrue(self.state.job_message.startswith("Sum done"))
        self.assertEqual(self.state.error_message, "")

    def test_loop_stays_responsive_while_the_job_runs(self):
        def job(progress):
            end = time.monotonic() + 1.0
            while time.monotonic() < end:  # busy Python work, holding the GIL in slices
                sum(range(10_000))
            return None

        ticks = []

        async def main():
            self.worker.start("Busy", job)
            while self.worker.busy:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        self._run(main)
        self.assertGreater(len(ticks), 20)  # the loop kept running during the second of work
        self.assertLess(max(b - a for a, b in zip(ticks, ticks[1:])), 0.5)

    def test_a_report_held_back_by_the_flush_interval_is_shown_when_it_ends(self):
        # a step announced right after another report, then long with no report of its own (fusion metrics after the
        # fusion's last report): the announcement had been dropped, so the page named the step before for all of it
        from MultimodalFusionLib.web.worker import BackgroundWorker

        worker = BackgroundWorker(self.state, flush_interval=0.3)
        self.addCleanup(worker.shutdown)
        long_step = threading.Event()

        def job(progress):
            report(progress, 0.7, "fused")
            report(progress, 0.75, "metrics")  # within the interval of the report before it
            long_step.wait(5.0)
            return None

        shown = []

        async def main():
            worker.start("Fusion", job)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and self.state.job_message != "Fusion: metrics":
                await asyncio.sleep(0.02)
            shown.append((self.state.job_message, self.state.job_progress))
            long_step.set()
            await worker.wait()

        self._run(main)
        self.assertEqual(shown, [("Fusion: metrics", 75.0)])
        self.assertTrue(self.state.job_message.startswith("Fusion done"), self.state.job_message)

    def test_engine_error_is_put_in_the_page_state(self):
        from MultimodalFusionLib.io import read_image

        async def main():
            self.worker.start("Loading", lambda progress: read_image("no/such/file.nii.gz"))
            await self.worker.wait()

        self._run(main)
        self.assertIn("no/such/file.nii.gz", self.state.error_message)
        self.assertEqual(self.state.job_message, "Loading failed")
        self.assertFalse(self.state.job_busy)

    def test_unexpected_error_is_shown_too(self):
        def job(progress):
            raise ZeroDivisionError("boom")

        async def main():
            self.worker.start("Fusion", job)
            await self.worker.wait()

        with self.assertLogs("MultimodalFusionLib.web.worker", level="ERROR"):
            self._run(main)
        self.assertIn("Unexpected error during fusion: boom", self.state.error_message)

    def test_cancel_stops_a_registration(self):
        import SimpleITK as sitk

        from MultimodalFusionLib.registration import register

        # two blobs 6 px apart: a real registration with work left to cancel
        fixed = sitk.GaussianSource(sitk.sitkFloat32, [96, 96], [10.0, 14.0], [44.0, 50.0], 100.0)
        moving = sitk.GaussianSource(sitk.sitkFloat32, [96, 96], [10.0, 14.0], [50.0, 47.0], 100.0)
        started = threading.Event()
        results = []

        def job(progress):
            def relay(fraction, message):
                started.set()
                return progress(fraction, message)

            return register(fixed, moving, stages=["rigid", "affine"], progress=relay)

        async def main():
            self.worker.start("Registration", job, results.append)
            while not started.is_set():
                await asyncio.sleep(0.005)
            self.worker.cancel()
            self.assertTrue(self.state.job_cancelling)
            await self.worker.wait()

        self._run(main)
        self.assertEqual(results, [])
        self.assertEqual(self.state.job_message, "Registration cancelled")
        self.assertEqual(self.state.error_message, "")

    def test_second_job_is_refused_while_one_runs(self):
        release = threading.Event()

        async def main():
            self.worker.start("First", lambda progress: release.wait(5))
            self.assertIsNone(self.worker.start("Second", lambda progress: None))
            self.assertIn("First is still running", self.state.error_message)
            release.set()
            await self.worker.wait()

        self._run(main)
        self.assertTrue(self.state.job_message.startswith("First done"))

    def test_job_state_a_page_sets_neither_hides_progress_nor_stops_or_renames_the_job(self):
        # trame lets any page write any state key, and the worker read job_busy, job_cancelling and job_label
        # back: a page that set job_busy False stopped every page's progress while the job ran, job_cancelling
        # True froze its message without cancelling it, and job_label named the job in the worker's messages
        steps = [threading.Event() for _ in range(3)]
        shown = []

        def job(progress):
            for k, step in enumerate(steps):
                step.wait(5)
                report(progress, 0.25 * (k + 1), f"step {k + 1}")
            return "ok"

        async def until(condition):
            deadline = time.monotonic() + 5
            while not condition():
                self.assertLess(time.monotonic(), deadline)
                await asyncio.sleep(0.005)

        async def main():
            self.worker.start("Registration", job, shown.append)
            steps[0].set()
            await until(lambda: self.state.job_message == "Registration: step 1")
            with self.state:  # what a page can send
                self.state.update({"job_busy": False, "job_cancelling": True, "job_label": "Nothing"})
            steps[1].set()
            await until(lambda: self.state.job_progress == 50.0)
            self.assertEqual(self.state.job_message, "Registration: step 2")
            self.assertIsNone(self.worker.start("Second", lambda progress: None))  # still one job at a time
            self.assertEqual(self.state.error_message, "Registration is still running; wait for it or cancel it.")
            self.worker.cancel()
            self.assertEqual(self.state.job_message, "Registration: cancelling...")
            steps[2].set()
            await self.worker.wait()

        self._run(main)
        self.assertEqual(shown, [])  # cancelled (by Cancel, not by the page's job_cancelling)
        self.assertEqual(self.state.job_message, "Registration cancelled")
        self.assertEqual(self.state.job_progress, 75.0)


if __name__ == "__main__":
    unittest.main()
