"""Long engine work (loading, registration, fusion) off the web server's event loop.

The trame server runs one asyncio loop that also streams the views; a registration run on
it would freeze the page. :class:`BackgroundWorker` runs one job at a time on a worker
thread. The job gets an engine progress callback (``progress(fraction, message)``) whose
updates are marshalled to the loop (``call_soon_threadsafe``) and flushed to the browser at
most ``flush_interval`` seconds apart, a report held back by that limit being shown when it ends unless a newer one
came (one dropped had left the page on the step before a long one: "Fusion: fused (average)" through 20-40 s of
fusion metrics); returning False from it is how Cancel stops the
engine at its next safe point (``OperationCancelled``). The job's result is handed to
``on_success`` on the loop's thread, which is the only thread that touches the MRML scene.
Errors end up in the page: ``MultimodalFusionError`` messages as they are, anything else
as an "unexpected error" line (with the traceback in the server log).

The worker keeps what it shows in its own attributes and only writes the state: a page can set any
state value (``job_busy``, ``job_cancelling``, ``job_label``), and the worker had read them back, so a
page that set ``job_busy`` to False stopped the progress of a running job reaching every page, one that
set ``job_cancelling`` froze its message without cancelling it, and ``job_label`` named the job.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from ..errors import MultimodalFusionError, OperationCancelled
from ..progress import ProgressCallback

__all__ = ["BackgroundWorker", "JOB_STATE_DEFAULTS"]

logger = logging.getLogger(__name__)

#: The trame state keys the worker writes, with their initial values.
JOB_STATE_DEFAULTS: dict[str, Any] = {
    "job_busy": False,        # a job is running (buttons disabled, Cancel enabled)
    "job_label": "",          # what is running ("Registration", ...)
    "job_progress": 0.0,      # 0..100
    "job_message": "",        # the engine's last progress message, or the outcome
    "job_cancelling": False,  # Cancel was pressed, waiting for the engine to stop
    "error_message": "",      # shown in the page's error banner
}


class BackgroundWorker:
    """Runs engine jobs on one worker thread and mirrors their progress into a trame state.

    Args:
        state: the trame server state (``server.state``).
        flush_interval: minimum seconds between two progress flushes to the browser.
        on_idle: called on the loop's thread after each job has ended (and ``job_busy`` is False),
            e.g. to remove files a job may have been reading.
    """

    def __init__(self, state: Any, *, flush_interval: float = 0.15, on_idle: Callable[[], None] | None = None):
        self.state = state
        self.flush_interval = float(flush_interval)
        self.on_idle = on_idle
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mmfusion-web-job")
        self._busy_notice: str | None = None
        self._cancel = threading.Event()
        self._task: asyncio.Task | None = None
        self._last_flush = 0.0
        # the last report held back by flush_interval, (job, label, fraction, message), shown when the interval ends
        # unless a newer one is shown first; whether a flush of it is scheduled on the loop
        self._held: tuple[int, str, float, str] | None = None
        self._held_lock = threading.Lock()
        self._held_scheduled = False
        self._job = 0  # the number of the running (or last) job: a late progress report of another is not shown
        self._label = ""  # what is running (or ran last)
        self._running = False  # between start() and the job's end shown in the state
        self._progress = 0.0  # the progress shown, 0..100
        for key, value in JOB_STATE_DEFAULTS.items():
            self.state.setdefault(key, value)

    @property
    def busy(self) -> bool:
        """True while a job runs."""
        return self._task is not None and not self._task.done()

    def start(self, label: str, job: Callable[[ProgressCallback], Any],
              on_success: Callable[[Any], None] | None = None,
              on_finished: Callable[[], None] | None = None) -> asyncio.Task | None:
        """Run ``job(progress)`` on the worker thread; must be called from the server's loop.

        Args:
            label: what the page shows while it runs ("Registration").
            job: the work; gets a progress callback to pass to the engine. It must not touch
                the MRML scene or the trame state.
            on_success: called on the loop's thread with the job's return value.
            on_finished: called on the loop's thread after success, error or cancel.

        Returns:
            The asyncio task, or None when another job is running (the page is told so).
        """
        if self.busy:
            with self.state:
                self.state.error_message = f"{self._label} is still running; wait for it or cancel it."
                self._busy_notice = self.state.error_message  # cleared when that job ends
            return None
        self._cancel.clear()
        self._job += 1
        self._label, self._running, self._progress = label, True, 0.0
        with self.state:
            self.state.update({"job_busy": True, "job_label": label, "job_progress": 0.0,
                               "job_message": f"{label}: starting", "job_cancelling": False,
                               "error_message": ""})
        self._task = asyncio.ensure_future(self._run(self._job, label, job, on_success, on_finished))
        return self._task

    def cancel(self) -> None:
        """Ask the running job to stop at the engine's next progress report."""
        if not self.busy:
            return
        self._cancel.set()
        with self.state:
            self.state.job_cancelling = True
            self.state.job_message = f"{self._label}: cancelling..."

    async def wait(self) -> None:
        """Wait until the running job (if any) has finished and its results are shown."""
        if self._task is not None:
            await asyncio.shield(self._task)

    def shutdown(self) -> None:
        """Cancel the running job and stop the worker thread (at server exit)."""
        self._cancel.set()
        self._executor.shutdown(wait=False)

    # ------------------------------------------------------------------ internals
    def _progress_callback(self, loop: asyncio.AbstractEventLoop, job: int, label: str) -> ProgressCallback:
        def progress(fraction: float, message: str) -> bool:
            now = time.monotonic()
            with self._held_lock:
                if now - self._last_flush >= self.flush_interval or fraction >= 1.0:
                    self._last_flush, self._held = now, None
                    loop.call_soon_threadsafe(self._show_progress, job, label, fraction, message)
                else:  # held back, not dropped: the next step may be a long one with no report before its end
                    self._held = (job, label, fraction, message)
                    if not self._held_scheduled:
                        self._held_scheduled = True
                        loop.call_soon_threadsafe(self._schedule_held, loop, self._last_flush + self.flush_interval)
            return not self._cancel.is_set()

        return progress

    def _schedule_held(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        loop.call_later(max(at - time.monotonic(), 0.0), self._show_held)

    def _show_held(self) -> None:
        with self._held_lock:
            held, self._held, self._held_scheduled = self._held, None, False
            if held is not None:
                self._last_flush = time.monotonic()
        if held is not None:
            self._show_progress(*held)

    def _show_progress(self, job: int, label: str, fraction: float, message: str) -> None:
        if not self._running or job != self._job:  # a report that arrives after its job's end
            return
        self._progress = round(100.0 * min(max(fraction, 0.0), 1.0), 1)
        with self.state:
            self.state.job_progress = self._progress
            if not self._cancel.is_set():  # "cancelling..." stays until the job stops
                self.state.job_message = f"{label}: {message}" if message else label

    async def _run(self, number: int, label: str, job: Callable[[ProgressCallback], Any],
                   on_success: Callable[[Any], None] | None,
                   on_finished: Callable[[], None] | None) -> None:
        loop = asyncio.get_running_loop()
        progress = self._progress_callback(loop, number, label)
        start = time.perf_counter()
        outcome, error = "", ""
        try:
            result = await loop.run_in_executor(self._executor, job, progress)
            if self._cancel.is_set():
                raise OperationCancelled()
            if on_success is not None:
                on_success(result)
            outcome = f"{label} done in {time.perf_counter() - start:.1f} s"
        except OperationCancelled:
            outcome = f"{label} cancelled"
        except MultimodalFusionError as exc:
            outcome, error = f"{label} failed", str(exc)
        except Exception as exc:  # the page must say something, whatever went wrong
            logger.exception("%s failed", label)
            outcome, error = f"{label} failed", f"Unexpected error during {label.lower()}: {exc}"
        finally:
            if on_finished is not None:
                try:
                    on_finished()
                except Exception:  # pragma: no cover - display clean-up must not hide the outcome
                    logger.exception("clean-up after %s failed", label)
        self._running = False
        if not error and "cancelled" not in outcome:
            self._progress = 100.0
        with self.state:
            self.state.update({"job_busy": False, "job_cancelling": False, "job_message": outcome,
                               "job_progress": self._progress})
            if error:
                self.state.error_message = error
            elif self.state.error_message and self.state.error_message == self._busy_notice:
                self.state.error_message = ""  # "still running" no longer holds
        if self.on_idle is not None:
            try:
                self.on_idle()
            except Exception:  # pragma: no cover - clean-up must not break the next job
                logger.exception("clean-up after %s failed", label)
