"""Ctrl-C (SIGINT) and SIGTERM during a job: exit 130 / 143 with one line, no traceback, the output folder as
the last good run left it and no temporary file in it; the inputs untouched.

The subprocess tests send the signal at a moment read from the job's own progress (``MMFUSION_PROGRESS=1``
prints the bar's messages on stderr), not after a guessed delay.
"""

from __future__ import annotations

import contextlib
import hashlib
import io as _textio
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from MultimodalFusionLib import cli, io
from MultimodalFusionLib.registration import register, resolve_parameters

ROOT = str(Path(__file__).resolve().parents[1])


def _pair(n: int = 48) -> tuple[sitk.Image, sitk.Image]:
    """A T1-like volume and a PET-like one shifted by 2 voxels (a registration of a few seconds)."""
    zz, yy, xx = np.mgrid[0:n, 0:n, 0:n].astype(np.float32)
    c = n / 2
    t1 = 100.0 * ((((xx - c) / (0.35 * n)) ** 2 + ((yy - c) / (0.4 * n)) ** 2 + ((zz - c) / (0.3 * n)) ** 2) < 1)
    t1 += 80.0 * (((xx - 0.4 * n) ** 2 + (yy - 0.45 * n) ** 2 + (zz - c) ** 2) < (0.1 * n) ** 2)
    pet = 1e4 * ((((xx - 0.45 * n) ** 2 + (yy - 0.4 * n) ** 2 + (zz - c) ** 2) < (0.12 * n) ** 2) + 0.2 * (t1 > 50))
    fixed = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(t1.astype(np.float32)), 1.5)
    moving = sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(pet.astype(np.float32)), 1.5)
    moving.SetOrigin((2.0, -2.0, 1.0))
    return fixed, moving


def _hashes(folder: str) -> dict[str, str]:
    """Every entry of ``folder`` (hidden ones too) with the SHA-256 of its content (folders as "dir")."""
    out = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            out[name] = "dir"
            continue
        with open(path, "rb") as fh:
            out[name] = hashlib.sha256(fh.read()).hexdigest()
    return out


#: What fuse --report prints once the fused image (and the weight map) are staged, before the metrics and the report
#: (its "fused -> OUT" line comes once they are in, since 1a40725); the tests wait for the whole line, its newline
#: included: print writes the text and the newline apart, and a signal between them ran the error onto that line
_MAKING_REPORT = "; making the metrics and the report in "


def _signal_when(argv: list[str], sig: int, text: str, timeout: float = 120.0) -> tuple[int, str, bool]:
    """Run ``mmfusion ARGV``, send ``sig`` once ``text`` shows in its stderr; (exit code, stderr, whether
    the signal was sent while it ran)."""
    # unbuffered as in a CI or a shell that sets PYTHONUNBUFFERED: print's text and its newline are then two
    # writes, and a signal sent between them is seen as soon as the text is
    env = dict(os.environ, MMFUSION_PROGRESS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "MultimodalFusionLib.cli", *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env, cwd=ROOT)
    chunks: list[bytes] = []
    seen = threading.Event()

    def read() -> None:
        while True:
            chunk = os.read(proc.stderr.fileno(), 4096)
            if not chunk:
                return
            chunks.append(chunk)
            if text.encode() in b"".join(chunks):
                seen.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    sent = False
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if seen.wait(0.01):
            proc.send_signal(sig)
            sent = True
            break
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(10)
    return proc.returncode, b"".join(chunks).decode("utf-8", "replace"), sent


def _last_line(err: str) -> str:
    """The last line of stderr, the progress bar's carriage-return updates dropped."""
    return err.replace("\r", "\n").strip().splitlines()[-1]




# a SIGTERM to the process while `mmfusion info` builds its parser (run in a child: Python's default ends it at once)
_SIGTERM_AT_START = """
import os, signal, sys
from MultimodalFusionLib import cli
cli._BUILDERS.append(lambda sub: os.kill(os.getpid(), signal.SIGTERM))
sys.exit(cli.main(["info", "nosuch.nii.gz"]))
"""


class CtrlCBeforeTheCommandRuns(unittest.TestCase):
    """Building the parser imports SimpleITK, numpy and the registration code (0.3-0.45 s of every command's
    start): a signal then is held until the parser is built, and ends the command as one during it does."""

    def setUp(self) -> None:
        if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            self.skipTest("SIGINT is not Python's KeyboardInterrupt here")

    def _main_with(self, build: object) -> tuple[int, str]:
        cli._BUILDERS.append(build)
        self.addCleanup(cli._BUILDERS.remove, build)
        err = _textio.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(_textio.StringIO()):
            rc = cli.main(["info", "nosuch.nii.gz"])
        return rc, err.getvalue()

    def test_ctrl_c_while_the_parser_is_built_exits_130_without_a_traceback(self) -> None:
        def ctrl_c(sub: object) -> None:  # a real SIGINT to this process, delivered while the parser is built
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)

        self.assertEqual(self._main_with(ctrl_c), (130, "mmfusion: interrupted\n"))

    def test_ctrl_c_that_an_import_turns_into_another_error_still_exits_130(self) -> None:
        """NumPy turns a KeyboardInterrupt inside its C extension's import into an ImportError ("PyCapsule_Import
        could not import module 'datetime'", with its advice about a broken install): raised while the parser
        was built, that had gone past the command's ``except KeyboardInterrupt`` as a traceback."""
        def ctrl_c_in_an_import(sub: object) -> None:
            try:  # a KeyboardInterrupt, if the handler raises one, comes right after os.kill
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)
            except KeyboardInterrupt as exc:
                raise ImportError('PyCapsule_Import could not import module "datetime"') from exc

        self.assertEqual(self._main_with(ctrl_c_in_an_import), (130, "mmfusion: interrupted\n"))

    def test_ctrl_c_that_an_import_swallows_still_exits_130(self) -> None:
        """importlib's module-lock callback prints a KeyboardInterrupt raised in it as 'Exception ignored' and
        goes on: the Ctrl-C had been lost, and the command ran (here: to its 'File not found', exit 2)."""
        def ctrl_c_swallowed(sub: object) -> None:
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.2)
            except KeyboardInterrupt:
                pass

        self.assertEqual(self._main_with(ctrl_c_swallowed), (130, "mmfusion: interrupted\n"))

    def test_a_handler_of_the_callers_own_is_left_alone(self) -> None:
        seen: list[int] = []
        saved = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
        self.addCleanup(signal.signal, signal.SIGINT, saved)

        def ctrl_c(sub: object) -> None:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)

        rc, err = self._main_with(ctrl_c)
        self.assertEqual(seen, [signal.SIGINT])  # the caller's handler had it, and the command ran on
        self.assertEqual(rc, 2, err)
        self.assertIn("File not found", err)

    def test_sigterm_while_the_parser_is_built_exits_143_with_one_line(self) -> None:
        """Python's default had ended the process at once, without a word (killed by the signal)."""
        done = subprocess.run([sys.executable, "-c", _SIGTERM_AT_START], capture_output=True, text=True, cwd=ROOT,
                              timeout=120)
        self.assertEqual((done.returncode, done.stderr), (143, "mmfusion: terminated (SIGTERM)\n"))


class CtrlCInTheRegistrationLoop(unittest.TestCase):
    """A Ctrl-C while ITK optimises arrives inside its iteration callback: raised there, SimpleITK printed
    its traceback and ITK turned it into "There was an error executing the Python Callable", a
    RegistrationError (exit 3) saying the stage had failed."""

    def test_it_stops_the_registration_and_is_raised_as_a_keyboard_interrupt(self) -> None:
        if not callable(signal.getsignal(signal.SIGINT)):
            self.skipTest("SIGINT has no Python handler in this process")
        fixed, moving = _pair(32)
        calls: list[str] = []

        def ctrl_c_at_the_first_iteration(fraction: float, message: str) -> None:
            calls.append(message)
            if "iteration" in message and len([m for m in calls if "iteration" in m]) == 1:
                os.kill(os.getpid(), signal.SIGINT)

        # the sitk backend's own pyramid on a small image: the stop must end the later levels too
        settings = resolve_parameters(stages=["rigid", "affine"], seed=1)
        with self.assertRaises(KeyboardInterrupt):
            register(fixed, moving, settings, progress=ctrl_c_at_the_first_iteration)
        iterations = [m for m in calls if "iteration" in m]
        self.assertEqual(len(iterations), 1, iterations)  # stopped there: no later iteration, level or stage
        self.assertIs(signal.getsignal(signal.SIGINT), signal.default_int_handler)  # handler put back


#: The start of a process that embeds Python and sets signal handlers in C (through libc.signal)
_EMBEDDING = """
import ctypes, os, signal, sys
sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.join(os.getcwd(), "Testing"))
libc = ctypes.CDLL(None)
libc.signal.restype = ctypes.c_void_p
libc.signal.argtypes = [ctypes.c_int, ctypes.c_void_p]
"""


#: A process that embeds Python as 3D Slicer does: its Python manager (CTK's ctkAbstractPythonManager::initPythonQt)
#: resets SIGINT to the system default in C once Python has started, so that Ctrl-C in the terminal ends the
#: application; Python's own table (signal.getsignal) still names default_int_handler. Then it registers with a
#: progress callback that sends SIGINT at the first iteration (SEND=1) or not, and reads the system's handler after.
_AS_IN_SLICER = _EMBEDDING + """libc.signal(signal.SIGINT, 0)  # signal(SIGINT, SIG_DFL), as CTK does after PythonQt::init
assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
from MultimodalFusionLib.progress import _system_handler  # sigaction(sig, NULL, &old): read, not changed
from MultimodalFusionLib.registration import register, resolve_parameters
from test_interrupts import _pair
fixed, moving = _pair(24)
send = os.environ["SEND"] == "1"
def progress(fraction, message):
    if send and "iteration" in message:
        os.kill(os.getpid(), signal.SIGINT)
register(fixed, moving, resolve_parameters(stages=["rigid"], seed=1), progress=progress)
print("registered; the system's SIGINT handler:", _system_handler(signal.SIGINT), flush=True)
os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C after the registration, in Slicer's terminal
print("still running after a Ctrl-C", flush=True)
"""


@unittest.skipIf(os.name == "nt", "the embedding is emulated through POSIX signal()")
class CtrlCInsideSlicer(unittest.TestCase):
    """Inside 3D Slicer the engine changes nothing about SIGINT: Ctrl-C in the terminal ends the application, as
    without the extension. signals_stop had read Python's table (default_int_handler) and put Python's handler in
    at the end of each registration, so from then on a Ctrl-C raised KeyboardInterrupt in whatever Python code ran
    next ('still running after a Ctrl-C'), and during a registration stopped it instead of ending Slicer."""

    def _run(self, send: bool) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", _AS_IN_SLICER], capture_output=True, text=True, cwd=ROOT,
                              env=dict(os.environ, SEND="1" if send else "0"), timeout=120)

    def test_ctrl_c_after_a_registration_still_ends_the_application(self) -> None:
        done = self._run(send=False)
        self.assertIn("the system's SIGINT handler: 0", done.stdout, done.stderr)  # SIG_DFL, as Slicer set it
        self.assertNotIn("still running", done.stdout)
        self.assertEqual(done.returncode, -signal.SIGINT, done.stderr)  # ended by the signal, no traceback
        self.assertNotIn("KeyboardInterrupt", done.stderr)

    def test_ctrl_c_during_a_registration_ends_the_application(self) -> None:
        done = self._run(send=True)
        self.assertNotIn("registered", done.stdout)
        self.assertEqual(done.returncode, -signal.SIGINT, done.stderr)
        self.assertNotIn("KeyboardInterrupt", done.stderr)


#: An embedding application that handles SIGINT in C with a handler of its own (here libc's srand, a C function of
#: one int that does nothing harmful) while Python's table still names default_int_handler; then a registration
#: and a Ctrl-C after it.
_C_HANDLER_APP = _EMBEDDING + """own = ctypes.cast(libc.srand, ctypes.c_void_p).value
libc.signal(signal.SIGINT, own)
from MultimodalFusionLib.progress import _system_handler
from MultimodalFusionLib.registration import register, resolve_parameters
from test_interrupts import _pair
fixed, moving = _pair(24)
register(fixed, moving, resolve_parameters(stages=["rigid"], seed=1))
print("own handler kept:", _system_handler(signal.SIGINT) == own, flush=True)
os.kill(os.getpid(), signal.SIGINT)  # runs the application's handler, which lets it go on
print("still running after a Ctrl-C", flush=True)
"""


@unittest.skipIf(os.name == "nt", "the embedding is emulated through POSIX signal()")
class CtrlCWithAnApplicationsCHandler(unittest.TestCase):
    """An application's own C handler for SIGINT stays in place through a registration. python_receives took any
    handler but SIG_DFL/SIG_IGN for Python's, so signals_stop replaced the C handler and put Python's
    default_int_handler in at its end: a Ctrl-C then raised KeyboardInterrupt instead of running the
    application's handler."""

    def test_the_applications_handler_survives_a_registration(self) -> None:
        done = subprocess.run([sys.executable, "-c", _C_HANDLER_APP], capture_output=True, text=True, cwd=ROOT,
                              timeout=120)
        self.assertIn("own handler kept: True", done.stdout, done.stderr)
        self.assertIn("still running after a Ctrl-C", done.stdout, done.stderr)
        self.assertNotIn("KeyboardInterrupt", done.stderr)
        self.assertEqual(done.returncode, 0, done.stderr)


class LeftoverLookalikes(unittest.TestCase):
    def test_a_pid_too_large_for_the_system_is_kept_not_a_traceback(self) -> None:
        # a name of this machine's form whose PID no pid_t holds raised OverflowError out of os.kill, a traceback
        # from every write into that folder
        from MultimodalFusionLib import io

        with tempfile.TemporaryDirectory() as folder:
            lookalike = os.path.join(folder, f".mmf-tmp-{io._owner()}-{10 ** 20}-x.nii")
            open(lookalike, "w").close()
            io.write_bytes(os.path.join(folder, "a.txt"), b"x")
            self.assertTrue(os.path.exists(lookalike))
            self.assertTrue(os.path.exists(os.path.join(folder, "a.txt")))


class SignalledCommands(unittest.TestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.dir = tmp.name
        fixed, moving = _pair()
        self.fixed = io.write_image(fixed, os.path.join(self.dir, "fixed.nii.gz"))
        self.moving = io.write_image(moving, os.path.join(self.dir, "moving.nii.gz"))
        self.out = os.path.join(self.dir, "out")
        self.inputs = _hashes(self.dir)

    def _earlier_run(self) -> dict[str, str]:
        with contextlib.redirect_stdout(_textio.StringIO()), contextlib.redirect_stderr(_textio.StringIO()):
            self.assertEqual(cli.main(["register", self.fixed, self.moving, "-o", self.out, "--seed", "1"]), 0)
        return _hashes(self.out)

    def _check(self, rc: int, err: str, sent: bool, code: int, line: str, before: dict[str, str]) -> None:
        self.assertTrue(sent, f"the job ended before the signal: {err[-500:]}")
        self.assertEqual(rc, code, err[-2000:])
        self.assertNotIn("Traceback", err)
        self.assertEqual(_last_line(err), line)
        self.assertEqual(_hashes(self.out), before)  # the earlier run's files only: no staging folder left
        now = _hashes(self.dir)
        self.assertEqual({k: now[k] for k in self.inputs if k != "out"},
                         {k: v for k, v in self.inputs.items() if k != "out"})

    def test_ctrl_c_while_registering_exits_130(self) -> None:
        before = self._earlier_run()
        rc, err, sent = _signal_when(["register", self.fixed, self.moving, "-o", self.out, "--seed", "2",
                                      "--stages", "rigid,affine,bspline"], signal.SIGINT, "iteration")
        self._check(rc, err, sent, 130, "mmfusion register: interrupted", before)

    def test_sigterm_while_registering_exits_143(self) -> None:
        before = self._earlier_run()
        rc, err, sent = _signal_when(["register", self.fixed, self.moving, "-o", self.out, "--seed", "2",
                                      "--stages", "rigid,affine,bspline"], signal.SIGTERM, "iteration")
        self._check(rc, err, sent, 143, "mmfusion register: terminated (SIGTERM)", before)

    def test_sigterm_while_fusing_leaves_no_staging_folder(self) -> None:
        """A SIGTERM had ended the process at once: a hidden .mmf-staging-* folder with the new transform
        and a half-written image stayed in the output folder."""
        before = self._earlier_run()
        rc, err, sent = _signal_when(["run", self.fixed, self.moving, "--output-dir", self.out, "--seed", "2",
                                      "--methods", "average,wavelet"], signal.SIGTERM, "fusing")
        self._check(rc, err, sent, 143, "mmfusion run: terminated (SIGTERM)", before)

    def test_ctrl_c_after_the_fused_image_leaves_the_earlier_image_and_report(self) -> None:
        """fuse -o DIR/fused.nii.gz --report DIR wrote the fused image before the metrics and the report: a Ctrl-C
        (or a failure) in between left the new image beside the old report, which describes the old fusion."""
        fused = os.path.join(self.out, "fused.nii.gz")
        pet = sitk.ReadImage(self.moving)
        pet.SetOrigin((0.0, 0.0, 0.0))  # fuse takes images on one grid
        self.moving = io.write_image(pet, os.path.join(self.dir, "pet_on_grid.nii.gz"))
        with contextlib.redirect_stdout(_textio.StringIO()):
            self.assertEqual(cli.main(["fuse", self.fixed, self.moving, "--method", "average", "-o", fused,
                                       "--report", self.out]), 0)
        before = _hashes(self.out)
        # --json: the "max fusion done in T s; making the metrics and the report" line (after the image is staged)
        # goes to stderr, where the signal is sent from
        rc, err, sent = _signal_when(["fuse", self.fixed, self.moving, "--method", "max", "-o", fused,
                                      "--report", self.out, "--json"], signal.SIGINT, _MAKING_REPORT + self.out + "\n")
        self._check(rc, err, sent, 130, "mmfusion fuse: interrupted", before)
        with contextlib.redirect_stdout(_textio.StringIO()):  # and without a signal, both are replaced
            self.assertEqual(cli.main(["fuse", self.fixed, self.moving, "--method", "max", "-o", fused,
                                       "--report", self.out]), 0)
        after = _hashes(self.out)
        self.assertNotEqual(after["fused.nii.gz"], before["fused.nii.gz"])
        self.assertIn("montage_max.png", after)
        self.assertNotIn("montage_average.png", after)

    def test_ctrl_c_after_the_weight_map_leaves_the_earlier_weight_map(self) -> None:
        """fuse --weight-map W --report DIR wrote W at once, where the fused image waits for its report: a Ctrl-C
        (or a failure) while the metrics and the report were made left the new weight map beside the old fused
        image and report."""
        fused, weights = os.path.join(self.out, "fused.nii.gz"), os.path.join(self.out, "weights.nii.gz")
        pet = sitk.ReadImage(self.moving)
        pet.SetOrigin((0.0, 0.0, 0.0))  # fuse takes images on one grid
        self.moving = io.write_image(pet, os.path.join(self.dir, "pet_on_grid.nii.gz"))
        argv = ["fuse", self.fixed, self.moving, "-o", fused, "--weight-map", weights, "--report", self.out]
        with contextlib.redirect_stdout(_textio.StringIO()):
            self.assertEqual(cli.main(argv + ["--method", "average"]), 0)
        before = _hashes(self.out)
        rc, err, sent = _signal_when(argv + ["--method", "max", "--json"], signal.SIGINT, _MAKING_REPORT + self.out + "\n")  # both staged
        self._check(rc, err, sent, 130, "mmfusion fuse: interrupted", before)
        with contextlib.redirect_stdout(_textio.StringIO()):  # and without a signal, both are replaced
            self.assertEqual(cli.main(argv + ["--method", "max"]), 0)
        after = _hashes(self.out)
        self.assertNotEqual(after["weights.nii.gz"], before["weights.nii.gz"])
        self.assertNotEqual(after["fused.nii.gz"], before["fused.nii.gz"])


#: A process writing into DIR through the engine's writers (a staging folder, a temporary file), which says
#: "ready" and waits there: killed (kill -9) it leaves them, alive it is writing.
_WRITING = """
import os, sys, time
sys.path.insert(0, os.getcwd())
from MultimodalFusionLib import io
out = sys.argv[1]
with io.replacing_outputs(out) as stage, io.atomic_output(os.path.join(out, "single.nii.gz")) as tmp:
    open(os.path.join(stage, "transform.tfm"), "w").write("half")
    open(tmp, "wb").write(b"half")
    print("ready", flush=True)
    time.sleep(600)
"""


def _writing(out: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _WRITING, out], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _leftovers(folder: str) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.startswith(".mmf-"))


@unittest.skipIf(os.name == "nt", "kill -9 and PIDs checked with os.kill(pid, 0) are POSIX")
class KilledCommands(unittest.TestCase):
    """kill -9 (SIGKILL) cannot be caught: a staging folder or temporary file stays in the output folder. The next
    run writing into that folder removes those of dead processes (its PID is in their names), never a live one's;
    they had piled up, one more at every killed run."""

    setUp = SignalledCommands.setUp

    def test_the_next_run_removes_what_a_killed_fuse_left(self) -> None:
        fused = os.path.join(self.out, "fused.nii.gz")
        pet = sitk.ReadImage(self.moving)
        pet.SetOrigin((0.0, 0.0, 0.0))
        self.moving = io.write_image(pet, os.path.join(self.dir, "pet_on_grid.nii.gz"))
        argv = ["fuse", self.fixed, self.moving, "--method", "max", "-o", fused, "--report", self.out]
        rc, err, sent = _signal_when(argv + ["--json"], signal.SIGKILL, _MAKING_REPORT + self.out + "\n")
        self.assertTrue(sent and rc == -signal.SIGKILL, err[-2000:])
        left = _leftovers(self.out)
        self.assertTrue(left and all(n.startswith(".mmf-staging-") for n in left), left)  # the fused image staged
        with contextlib.redirect_stdout(_textio.StringIO()):
            self.assertEqual(cli.main(argv), 0)
        self.assertEqual(_leftovers(self.out), [])
        self.assertIn("fused.nii.gz", os.listdir(self.out))

    def test_the_next_run_removes_a_dead_process_leftovers_and_keeps_a_live_ones(self) -> None:
        dead = _writing(self.out)
        dead.kill()  # SIGKILL
        dead.wait()
        left = _leftovers(self.out)
        self.assertEqual(len(left), 2, left)  # the staging folder and the temporary file
        self.assertTrue(all(f"-{dead.pid}-" in n for n in left), left)
        # names the sweep cannot vouch for: another machine's (owner 00000000), and one without a PID
        foreign = [f".mmf-staging-00000000-{dead.pid}-abc", ".mmf-tmp-k3j_x9.nii.gz"]
        for name in foreign:
            open(os.path.join(self.out, name), "w").close()
        live = _writing(self.out)
        try:
            mine = [n for n in _leftovers(self.out) if f"-{live.pid}-" in n]
            self.assertEqual(len(mine), 2, mine)
            rc = subprocess.run([sys.executable, "-m", "MultimodalFusionLib.cli", "register", self.fixed, self.moving,
                                 "-o", self.out, "--seed", "1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
            self.assertEqual(rc.returncode, 0, rc.stderr)
            self.assertEqual(_leftovers(self.out), sorted(mine + foreign))  # the dead one's gone, the rest kept
            self.assertIn("transform.tfm", os.listdir(self.out))
        finally:
            live.kill()
            live.wait()

    def test_a_long_lived_process_sweeps_a_folder_again_a_minute_later(self) -> None:
        """3D Slicer or the web app write into one folder for hours: swept once per process, a command killed
        in that folder later left its leftovers there until they restarted."""
        first = os.path.join(self.out, "first.txt")
        io.write_bytes(first, b"1")  # this process sweeps the folder now
        dead = _writing(self.out)
        dead.kill()
        dead.wait()
        left = _leftovers(self.out)
        self.assertEqual(len(left), 2, left)
        io.write_bytes(first, b"2")  # within the minute: not swept again (a busy writer lists the folder rarely)
        self.assertEqual(_leftovers(self.out), left)
        folder = os.path.abspath(self.out)
        io._swept_folders[folder] -= io._SWEEP_AGAIN_S  # a minute later
        io.write_bytes(first, b"3")
        self.assertEqual(_leftovers(self.out), [])


if __name__ == "__main__":
    unittest.main()
