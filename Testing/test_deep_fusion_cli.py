"""`mmfusion train-fusion` (checkpoint, resume) and `mmfusion fuse --method deep` on tiny PNG pairs."""

from __future__ import annotations

import io
import json
import os
import tempfile
import unittest
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import SimpleITK as sitk

try:
    import monai  # noqa: F401
    import torch
except ImportError:  # pragma: no cover
    torch = None

from MultimodalFusionLib.cli import main


def _write_pairs(folder: Path) -> None:
    from MultimodalFusionLib.fusion.deep.data import synthetic_pairs

    (t1, ct), = synthetic_pairs(spacing_mm=4.0, contrasts=[("t1", "ct")])
    for sub in ("MRI", "CT"):
        (folder / sub).mkdir(parents=True)
    for k in (18, 22):
        for sub, arr in (("MRI", t1), ("CT", ct)):
            sitk.WriteImage(sitk.GetImageFromArray(np.round(arr[k] * 255).astype(np.uint8)),
                            str(folder / sub / f"{k}.png"))


@unittest.skipIf(torch is None, "torch/monai not installed")
class TrainFusionCliTest(unittest.TestCase):
    def test_train_resume_and_fuse(self):
        from MultimodalFusionLib.fusion.deep import load_weights

        # torch on conftest's one thread (it had been set to 2 here): 9.6 and 14.6 s against 12.3 and 27.4 s on 2
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            _write_pairs(tmp / "pairs")
            model = str(tmp / "m.safetensors")
            common = ["train-fusion", "--pairs", str(tmp / "pairs"), "--output", model, "--patch-size", "32",
                      "--batch-size", "2", "--samples-per-epoch", "4", "--seed", "3", "--device", "cpu",
                      "--loss-weights", "1,5,1"]
            with redirect_stdout(io.StringIO()) as out:
                self.assertEqual(main(common + ["--epochs", "1"]), 0)
            self.assertIn("epoch   1", out.getvalue())
            ckpt = model + ".ckpt.pt"
            self.assertTrue(os.path.exists(ckpt))
            net, meta = load_weights(model)
            self.assertEqual(meta["training"]["training"]["seed"], 3)
            self.assertEqual(meta["training"]["training"]["loss_weights"]["gradient"], 5.0)
            with redirect_stdout(io.StringIO()) as out:
                self.assertEqual(main(common + ["--epochs", "2", "--resume", ckpt]), 0)
            text = out.getvalue()
            self.assertIn("epoch   1", text)  # history carried over from the checkpoint
            self.assertIn("epoch   2", text)
            # the resumed run's file records the whole run's time (it had recorded the resumed part's only), and
            # that part; the epochs' seconds count from the run's start. The whole time is the checkpoint's (epoch
            # 1's entry, written before that checkpoint was saved) plus the resumed part: not the first command's
            # seconds, which also count saving that checkpoint, 0.02-0.04 s on a busy 2-core machine (more than the
            # 0.01 s allowed had failed). Two figures rounded to the millisecond: within 0.001 s, 0.0003 measured
            first = meta["training"]["seconds"]
            epoch_1 = meta["training"]["final_loss"]["seconds"]
            resumed = load_weights(model)[1]["training"]
            self.assertGreater(resumed["seconds_resumed_part"], 0)
            self.assertGreaterEqual(first, epoch_1 - 0.0005)
            self.assertAlmostEqual(resumed["seconds"], epoch_1 + resumed["seconds_resumed_part"], delta=0.002)
            # epoch 2's time counts on from epoch 1's (both unrounded; a fast machine's whole first run can take
            # under 0.1 s, so no rounded figure is compared with an unrounded one)
            self.assertGreater(resumed["final_loss"]["seconds"], epoch_1)
            self.assertEqual(resumed["resumed_after_epoch"], 1)
            self.assertIn("of them since epoch 1", text)
            fused = str(tmp / "fused.png")
            with redirect_stdout(io.StringIO()):
                rc = main(["fuse", str(tmp / "pairs" / "MRI" / "18.png"), str(tmp / "pairs" / "CT" / "18.png"),
                           "--method", "deep", "--model", model, "--adapt", "2", "--deep-device", "cpu",
                           "-o", fused])
            self.assertEqual(rc, 0)
            img = sitk.ReadImage(fused)
            self.assertEqual(img.GetSize(), sitk.ReadImage(str(tmp / "pairs" / "MRI" / "18.png")).GetSize())
            # a bad loss-weights string is a clear error (exit code 2), not a traceback
            with redirect_stdout(io.StringIO()):
                self.assertEqual(main(common[:-1] + ["1,x"]), 2)

    def test_epochs_are_logged_as_they_end_and_ctrl_c_names_the_checkpoint(self):
        """A run logged to a file (stdout not a terminal: no bar) prints each epoch's line as it ends, not all at
        the end (a long run showed nothing until it finished, and a late failure left no loss history); Ctrl-C
        names the checkpoint to --resume from, and that checkpoint goes on."""
        import signal
        import subprocess
        import sys
        import threading

        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            _write_pairs(tmp / "pairs")
            model = str(tmp / "m.safetensors")
            common = ["train-fusion", "--pairs", str(tmp / "pairs"), "--output", model, "--patch-size", "32",
                      "--batch-size", "2", "--samples-per-epoch", "2", "--seed", "3", "--device", "cpu",
                      "--threads", "1"]
            env = dict(os.environ, PYTHONUNBUFFERED="")  # stdout to a pipe is block-buffered, as to a log file
            env.pop("PYTHONUNBUFFERED")
            proc = subprocess.Popen([sys.executable, "-m", "MultimodalFusionLib.cli"] + common + ["--epochs", "100000"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                    cwd=str(Path(__file__).resolve().parents[1]))
            first: list[str] = []
            reader = threading.Thread(target=lambda: first.append(proc.stdout.readline()), daemon=True)
            reader.start()
            reader.join(120)
            try:
                self.assertTrue(first and first[0].startswith("epoch   1  loss"), first)
                self.assertIsNone(proc.poll())  # still training: the line came as the epoch ended
            finally:
                proc.send_signal(signal.SIGINT)
                _, err = proc.communicate(timeout=120)
            self.assertEqual(proc.returncode, 130, err)
            ckpt = model + ".ckpt.pt"
            self.assertIn(f"the checkpoint '{ckpt}' holds epoch", err)
            self.assertIn(f"--resume '{ckpt}'", err)
            done = int(err.split("holds epoch ")[1].split(";")[0])
            from MultimodalFusionLib.fusion.deep.weights import load_checkpoint

            self.assertEqual(int(load_checkpoint(ckpt)["epoch"]) + 1, done)  # the epoch the file on disk holds
            with redirect_stdout(io.StringIO()) as out:
                self.assertEqual(main(common + ["--epochs", str(done + 1), "--resume", ckpt]), 0)
            self.assertIn(f"epoch {done + 1:3d}  loss", out.getvalue())

    def test_ctrl_c_names_the_checkpoint_and_epoch_on_disk(self):
        """A real SIGINT sent at the moments the hint went wrong: right after a checkpoint was renamed into place
        (the file held epoch 2, the hint said epoch 1), and during the first epoch of a resumed run (no hint,
        though the checkpoint resumed from holds epoch 1); each hint names a file that holds the epoch it says."""
        import signal

        from MultimodalFusionLib.fusion.deep import weights
        from MultimodalFusionLib.fusion.deep.weights import load_checkpoint

        real_save = weights.save_checkpoint

        def interrupted_save(after: bool, calls: list[int], at: int):
            def save(*args, **kwargs):
                calls.append(kwargs["epoch"])
                if not after and len(calls) == at:  # Ctrl-C while the checkpoint is written: the old one stays
                    os.kill(os.getpid(), signal.SIGINT)
                path = real_save(*args, **kwargs)
                if after and len(calls) == at:  # Ctrl-C just after the rename, before the epoch's callback
                    os.kill(os.getpid(), signal.SIGINT)
                return path
            return save

        def run(argv: list[str], after: bool, at: int) -> str:
            calls: list[int] = []
            weights.save_checkpoint = interrupted_save(after, calls, at)
            saved = signal.signal(signal.SIGINT, signal.default_int_handler)
            try:
                with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()) as err:
                    self.assertEqual(main(argv), 130)
            finally:
                weights.save_checkpoint = real_save
                signal.signal(signal.SIGINT, saved)
            self.assertEqual(len(calls), at)  # the signal came at the save it was meant for
            return err.getvalue()

        def hint(err: str) -> tuple[str, int]:
            line = [x for x in err.splitlines() if "holds epoch" in x]
            self.assertEqual(len(line), 1, err)
            return line[0].split("checkpoint '")[1].split("'")[0], int(line[0].split("holds epoch ")[1].split(";")[0])

        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            _write_pairs(tmp / "pairs")
            model = str(tmp / "m.safetensors")
            ckpt = model + ".ckpt.pt"
            common = ["train-fusion", "--pairs", str(tmp / "pairs"), "--output", model, "--patch-size", "32",
                      "--batch-size", "2", "--samples-per-epoch", "2", "--seed", "3", "--device", "cpu",
                      "--threads", "1", "--epochs", "4"]
            path, epoch = hint(run(common, after=True, at=2))
            self.assertEqual((path, epoch), (ckpt, 2))  # it said epoch 1
            self.assertEqual(int(load_checkpoint(ckpt)["epoch"]) + 1, 2)
            # resumed, stopped while its first epoch is saved: the checkpoint still holds epoch 2 (no hint before)
            path, epoch = hint(run(common + ["--resume", ckpt], after=False, at=1))
            self.assertEqual((path, epoch), (ckpt, 2))
            # resumed from a copy, with the checkpoint of another (longer) run at the --checkpoint path: the hint
            # names the file resumed from, not the one this run did not write
            copy = str(tmp / "copy.ckpt.pt")
            with open(ckpt, "rb") as src, open(copy, "wb") as dst:
                dst.write(src.read())
            run(common, after=True, at=3)  # the default checkpoint now holds epoch 3 of a new run
            path, epoch = hint(run(common + ["--resume", copy], after=False, at=1))
            self.assertEqual((path, epoch), (copy, 2))
            self.assertEqual(int(load_checkpoint(ckpt)["epoch"]) + 1, 3)

    def test_a_checkpoint_given_as_weights_and_a_cache_inside_the_pairs_are_named(self):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            _write_pairs(tmp / "pairs")
            model = str(tmp / "m.safetensors")
            common = ["train-fusion", "--pairs", str(tmp / "pairs"), "--patch-size", "32", "--batch-size", "2",
                      "--samples-per-epoch", "2", "--seed", "3", "--device", "cpu", "--epochs", "1"]
            with redirect_stdout(io.StringIO()):
                self.assertEqual(main(common + ["--output", model]), 0)
            ckpt = model + ".ckpt.pt"
            # --init (or fuse --model) given the checkpoint: it was "not a readable safetensors weights file"
            with redirect_stderr(io.StringIO()) as err:
                self.assertEqual(main(common + ["--output", str(tmp / "n.safetensors"), "--init", ckpt]), 2)
            self.assertIn("is a train-fusion checkpoint, not a safetensors weights file", err.getvalue())
            self.assertIn(f"--resume {ckpt}", err.getvalue())
            # a cache inside the pairs: the next run read its arrays as pairs ("No image pairs found")
            cache = tmp / "pairs" / "cache"
            with redirect_stderr(io.StringIO()) as err:
                self.assertEqual(main(common + ["--output", str(tmp / "c.safetensors"), "--cache-dir", str(cache)]),
                                 2)
            self.assertIn("is inside the pairs folder", err.getvalue())
            self.assertFalse(cache.exists())
            # a hidden one is not: find_pairs skips it, and two runs with it trained (before the refusal too)
            hidden = tmp / "pairs" / ".cache"
            for _ in range(2):
                with redirect_stdout(io.StringIO()):
                    self.assertEqual(main(common + ["--output", str(tmp / "h.safetensors"), "--cache-dir", str(hidden)]),
                                     0)
            self.assertTrue((hidden / "pair00000_a.npy").is_file())

    def test_small_images_mixed_dimensions_and_transparency_are_named(self):
        """Three things train-fusion did without a word (rc 0, nothing on stderr): pairs smaller than --patch-size
        padded with zeros to it (20x20 images, patch 32), a folder mixing 2D images and 3D volumes trained as 2D
        (the volumes cut into slices), and an RGBA image's alpha (a mask) dropped. Each is now a warning naming
        the files, their sizes and the fix; training goes on as before (rc 0)."""
        import warnings

        from PIL import Image

        rng = np.random.default_rng(5)

        def grey(*shape: int) -> np.ndarray:
            return rng.integers(0, 256, shape).astype(np.uint8)

        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            for case in ("small", "mixed", "rgba"):
                for sub in ("MRI", "CT"):
                    (tmp / case / sub).mkdir(parents=True)
            for sub in ("MRI", "CT"):
                Image.fromarray(grey(20, 20)).save(tmp / "small" / sub / "01.png")
                Image.fromarray(grey(20, 24)).save(tmp / "small" / sub / "02.png")
                Image.fromarray(grey(40, 40)).save(tmp / "small" / sub / "03.png")  # one the patch fits
                Image.fromarray(grey(40, 40)).save(tmp / "mixed" / sub / "01.png")
                sitk.WriteImage(sitk.GetImageFromArray(grey(6, 40, 36)), str(tmp / "mixed" / sub / "02.nii.gz"))
                Image.fromarray(grey(40, 40)).save(tmp / "rgba" / sub / "01.png")
            alpha = np.full((40, 40), 255, np.uint8)
            alpha[:10] = 0
            Image.fromarray(np.dstack([grey(40, 40, 3), alpha]), "RGBA").save(tmp / "rgba" / "MRI" / "01.png")
            said = {}
            for case in ("small", "mixed", "rgba"):
                argv = ["train-fusion", "--pairs", str(tmp / case), "--output", str(tmp / f"{case}.safetensors"),
                        "--patch-size", "32", "--batch-size", "1", "--epochs", "1", "--device", "cpu"]
                with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()) as err, warnings.catch_warnings():
                    warnings.simplefilter("default")
                    self.assertEqual(main(argv), 0, err.getvalue())
                said[case] = [line for line in err.getvalue().splitlines() if line.startswith("warning: ")]
            small = [m for m in said["small"] if "smaller than the 32-pixel patch" in m]
            self.assertEqual(len(small), 1, said["small"])
            self.assertIn("2 of 3 training pairs", small[0])
            self.assertIn(f"'{tmp / 'small' / 'MRI' / '01.png'}' (20x20)", small[0])
            self.assertIn(f"'{tmp / 'small' / 'MRI' / '02.png'}' (24x20)", small[0])
            self.assertIn("--patch-size of at most 20", small[0])
            self.assertFalse([m for m in said["mixed"] + said["rgba"] if "smaller than" in m])
            mixed = [m for m in said["mixed"] if "mixes 2D images" in m]
            self.assertEqual(len(mixed), 1, said["mixed"])
            self.assertIn(f"(1 pair: '{tmp / 'mixed' / 'MRI' / '02.nii.gz'}' (36x40x6: 6 slices of 36x40))",
                          mixed[0])
            self.assertIn("--spatial-dims 3", mixed[0])
            rgba = [m for m in said["rgba"] if "alpha is not used" in m]
            self.assertEqual(len(rgba), 1, said["rgba"])
            self.assertIn(f"'{tmp / 'rgba' / 'MRI' / '01.png'}'", rgba[0])
            self.assertIn("25.0% of its pixels transparent", rgba[0])

    def test_a_patch_larger_than_every_pair_or_than_memory_is_refused_before_training(self):
        """--patch-size 4096 on a few small volumes warned that they were padded to it, then ran for minutes and was
        killed for want of memory. A patch that every pair fills less than a quarter of is refused once the pairs are
        read, naming the largest that one fills a quarter of (20x20 and 24x20 pairs with patch 64 had trained on
        padding, rc 0: 11.7% of each patch at most); a patch and batch whose step
        needs more memory than there is are refused before any pair is read (here the pairs are not even images),
        naming the estimate and the sizes that fit."""
        from PIL import Image

        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            rng = np.random.default_rng(5)
            for sub in ("MRI", "CT"):
                (tmp / "small" / sub).mkdir(parents=True)
                (tmp / "broken" / sub).mkdir(parents=True)
                Image.fromarray(rng.integers(0, 256, (20, 20)).astype(np.uint8)).save(tmp / "small" / sub / "01.png")
                Image.fromarray(rng.integers(0, 256, (20, 24)).astype(np.uint8)).save(tmp / "small" / sub / "02.png")
                (tmp / "broken" / sub / "01.png").write_bytes(b"not a picture")
            said = {}
            for case, patch in (("small", "64"), ("broken", "16384")):
                model = tmp / f"{case}.safetensors"
                argv = ["train-fusion", "--pairs", str(tmp / case), "--output", str(model), "--patch-size", patch,
                        "--batch-size", "1" if case == "small" else "8", "--epochs", "1", "--device", "cpu"]
                with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()) as err:
                    self.assertEqual(main(argv), 2, err.getvalue())
                said[case] = err.getvalue()
                self.assertFalse(model.exists() or Path(f"{model}.ckpt.pt").exists(), case)
            self.assertIn("The 64-pixel training patch (--patch-size) is mostly zero padding for every one of the 2 "
                          f"training pairs: the one that fills it most, '{tmp / 'small' / 'MRI' / '02.png'}' (24x20), "
                          "fills 11.7% of it", said["small"])
            self.assertIn("Give --patch-size 40 (the largest that a sample fills at least 25% of, a multiple of the "
                          "network's 4) or less", said["small"])
            self.assertNotIn("warning:", said["small"])  # the refusal, not the padding warning before it
            self.assertIn("A training step with --patch-size 16384 and --batch-size 8 needs about", said["broken"])
            self.assertIn("for the 2D network's activations (8 patch(es) of 16384x16384 pixels", said["broken"])
            self.assertIn("Give a smaller patch or batch: --patch-size", said["broken"])
            self.assertNotIn("not a picture", said["broken"])
            self.assertNotIn("01.png", said["broken"])  # refused before any pair was read

    def test_a_resumed_run_is_checked_for_memory_only_where_it_trains_and_told_a_fix_it_can_use(self):
        """A checkpoint fixes --patch-size and --batch-size (check_resumable refuses others). Resumed with its own
        --epochs, nothing is trained and its weights are written as they are: a step too large for this machine (a
        checkpoint from a larger one) had been refused all the same, rc 2. Resumed to train on, the refusal told the
        user to give a smaller patch or batch, which the resume then refuses: it names another machine, or a new
        run from the weights (--init) at a size that fits."""
        import torch
        from PIL import Image

        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            rng = np.random.default_rng(7)
            for sub in ("MRI", "CT"):
                (tmp / "pairs" / sub).mkdir(parents=True)
                for k in range(2):
                    Image.fromarray(rng.integers(0, 256, (20, 24)).astype(np.uint8)).save(tmp / "pairs" / sub / f"{k}.png")
            model, checkpoint = tmp / "m.safetensors", tmp / "m.safetensors.ckpt.pt"
            common = ["--pairs", str(tmp / "pairs"), "--batch-size", "2", "--device", "cpu", "--threads", "1"]
            with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()) as err:
                self.assertEqual(main(["train-fusion", *common, "--output", str(model), "--patch-size", "16",
                                       "--epochs", "1"]), 0, err.getvalue())
            # the run a machine with ~730 GB to spare would have started: patch 16384 at batch 2
            payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
            state = json.loads(payload["state"])  # as weights.save_checkpoint writes it
            state["training"]["patch_size"] = 16384
            payload["state"] = json.dumps(state)
            torch.save(payload, checkpoint)
            big = ["--patch-size", "16384", "--resume", str(checkpoint)]
            out = tmp / "again.safetensors"
            with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()) as err:
                self.assertEqual(main(["train-fusion", *common, *big, "--output", str(out), "--checkpoint",
                                       str(tmp / "again.ckpt.pt"), "--epochs", "1"]), 0, err.getvalue())
            self.assertTrue(out.exists())
            with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()) as err:
                self.assertEqual(main(["train-fusion", *common, *big, "--output", str(tmp / "more.safetensors"),
                                       "--checkpoint", str(tmp / "more.ckpt.pt"), "--epochs", "2"]), 2)
            said = err.getvalue()
            self.assertIn("Resuming a run with --patch-size 16384 and --batch-size 2 (its checkpoint's) needs about",
                          said)
            self.assertIn("Resume it where there is more memory (free memory), or start a new run from its weights "
                          "with a smaller patch or batch: --init MODEL.safetensors with --patch-size", said)
            self.assertNotIn("Traceback", said)

    def test_fuse_writes_the_weight_map_on_the_output_grid(self):
        # the explainability output had no file from `fuse` (only the report's montage), and `run` writes none for
        # 2D pairs: --weight-map writes it, float 0..1 on the fused image's grid (origin, spacing, oblique direction)
        from MultimodalFusionLib.fusion import fuse

        rng = np.random.default_rng(0)
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            images = []
            for k in range(2):
                img = sitk.GetImageFromArray(rng.random((6, 24, 20)).astype(np.float32) * (k + 1))
                img.SetSpacing((0.9, 1.1, 2.5))
                img.SetOrigin((10.5, -20.25, 30.0))
                img.SetDirection(sitk.Euler3DTransform((0, 0, 0), 0.2, -0.15, 0.35).GetMatrix())
                sitk.WriteImage(img, str(tmp / f"{'ab'[k]}.nii.gz"))
                images.append(img)
            with redirect_stdout(io.StringIO()) as out:
                self.assertEqual(main(["fuse", str(tmp / "a.nii.gz"), str(tmp / "b.nii.gz"), "--method", "deep",
                                       "-o", str(tmp / "f.nii.gz"), "--weight-map", str(tmp / "w.nii.gz")]), 0)
            self.assertIn(f"weight map (weight of A, 0..1) -> {tmp / 'w.nii.gz'}", out.getvalue())
            w = sitk.ReadImage(str(tmp / "w.nii.gz"))
            f = sitk.ReadImage(str(tmp / "f.nii.gz"))
            for got in (w, f):
                self.assertEqual(got.GetSize(), images[0].GetSize())
                np.testing.assert_allclose(got.GetOrigin(), images[0].GetOrigin(), atol=1e-4)
                np.testing.assert_allclose(got.GetSpacing(), images[0].GetSpacing(), atol=1e-6)
                np.testing.assert_allclose(got.GetDirection(), images[0].GetDirection(), atol=1e-6)
            arr = sitk.GetArrayFromImage(w)
            self.assertEqual(arr.dtype, np.float32)
            self.assertTrue(0.0 <= arr.min() and arr.max() <= 1.0)
            np.testing.assert_array_equal(arr, sitk.GetArrayFromImage(fuse(images[0], images[1], "deep").weights))
            # hard selection: each voxel from the input the written weight map favours
            fused = sitk.GetArrayFromImage(f)
            scaled = [(x - x.min()) / (x.max() - x.min()) * 255 for x in map(sitk.GetArrayFromImage, images)]
            np.testing.assert_allclose(fused, np.where(arr >= 0.5, scaled[0], scaled[1]), atol=1e-3)
            # a 2D PNG pair (run writes no weight map for it): to a float format; an 8-bit one is refused up front
            for name in ("a", "b"):
                sitk.WriteImage(sitk.GetImageFromArray((rng.random((24, 20)) * 255).astype(np.uint8)),
                                str(tmp / f"{name}.png"))
            pair = [str(tmp / "a.png"), str(tmp / "b.png"), "--method", "deep", "-o", str(tmp / "f.png")]
            with redirect_stdout(io.StringIO()):
                self.assertEqual(main(["fuse", *pair, "--weight-map", str(tmp / "w.mha")]), 0)
            self.assertEqual(sitk.ReadImage(str(tmp / "w.mha")).GetSize(), (20, 24))
            for bad, message in ((str(tmp / "w.png"), "w.png"), (str(tmp / "f.png"), "same file"),
                                 (str(tmp / "a.png"), "a.png")):
                with self.subTest(bad=bad), redirect_stderr(io.StringIO()) as err:
                    self.assertEqual(main(["fuse", *pair, "--weight-map", bad]), 2)
                self.assertIn(message, err.getvalue())

    def test_only_the_command_retunes_the_process_allocator(self):
        # a library call (Slicer, the web app, a script) leaves glibc's malloc alone; mmfusion owns its
        # process while a command runs, but not `mmfusion web` (the web app), and main() called from a
        # script leaves the script's setting as it was
        from MultimodalFusionLib.cli import _own_process_tuning, build_parser
        from MultimodalFusionLib.fusion.deep import inference

        saved = inference.KEEP_FREED_MEMORY
        parser = build_parser()
        try:
            inference.KEEP_FREED_MEMORY = False
            with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
                self.assertEqual(main(["info", str(Path(__file__).parent / "Data" / "BrainT1Slice.png")]), 0)
            self.assertFalse(inference.KEEP_FREED_MEMORY)  # put back after the command
            with _own_process_tuning(parser.parse_args(["fuse", "a.png", "b.png", "-o", "f.png"])):
                self.assertTrue(inference.KEEP_FREED_MEMORY)
            self.assertFalse(inference.KEEP_FREED_MEMORY)
            with _own_process_tuning(parser.parse_args(["web"])):
                self.assertFalse(inference.KEEP_FREED_MEMORY)  # the web app leaves the allocator alone
            inference.KEEP_FREED_MEMORY = True  # a script that opted in keeps its choice
            with _own_process_tuning(parser.parse_args(["web"])):
                self.assertTrue(inference.KEEP_FREED_MEMORY)
            self.assertTrue(inference.KEEP_FREED_MEMORY)
        finally:
            inference.KEEP_FREED_MEMORY = saved

    def test_bad_training_and_device_requests_fail_before_writing_anything(self):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            _write_pairs(tmp / "pairs")
            model = tmp / "out" / "m.safetensors"
            base = ["train-fusion", "--pairs", str(tmp / "pairs"), "--patch-size", "32", "--device", "cpu",
                    "--epochs", "1"]
            cases = [
                # 2 pairs of 2D slices = 2 samples per epoch, fewer than the default batch of 8: no step would run
                (["--output", str(model)], "fewer than the batch size 8"),
                (["--output", str(tmp / "m.pt")], "does not end in .safetensors"),
                (["--output", str(model), "--checkpoint", str(model)], "are the same file"),
                # the weights written over a training image
                (["--output", str(tmp / "pairs" / "MRI" / "18.png")], "does not end in .safetensors"),
                # numbers argparse accepts but training cannot use: a NaN rate reached torch's ValueError, 0
                # samples per epoch meant "all" without a word (--threads: test_deep_fusion_inputs.py)
                (["--output", str(model), "--lr", "nan"], "lr nan"),
                (["--output", str(model), "--samples-per-epoch", "0"], "samples_per_epoch must be at least 1 (got 0)"),
            ]
            if os.path.isdir("/proc/self"):  # an output nothing can be written to: refused before training
                cases.append((["--output", "/proc/self/m.safetensors", "--batch-size", "2"],
                              "Cannot write '/proc/self/m.safetensors' ("))  # not the checkpoint, after an epoch
            for extra, message in cases:
                with self.subTest(message), redirect_stdout(io.StringIO()):
                    err = io.StringIO()
                    with redirect_stderr(err):
                        self.assertEqual(main(base + extra), 2)
                    self.assertIn(message, err.getvalue())
                    self.assertNotIn("Traceback", err.getvalue())
            # not even the folder: the check that the outputs can be written had made it and left it, empty, where a
            # refused run's --output-dir is removed (io.output_folder)
            self.assertFalse((tmp / "out").exists())
            # three modality folders side by side: the error says why nothing was found
            (tmp / "pairs" / "PET").mkdir()
            err = io.StringIO()
            with redirect_stderr(err), redirect_stdout(io.StringIO()):
                self.assertEqual(main(base + ["--output", str(model)]), 2)
            self.assertIn("exactly two image sub-folders", err.getvalue())
            # a pair of volumes of one size on different grids (the second shifted by 5 mm): refused, not trained
            # on misaligned voxels
            vol = sitk.GetImageFromArray(np.random.default_rng(0).random((6, 20, 20)).astype(np.float32))
            for sub, origin in (("MR", (0.0, 0.0, 0.0)), ("CT", (5.0, 0.0, 0.0))):
                (tmp / "vols" / sub).mkdir(parents=True)
                vol.SetOrigin(origin)
                sitk.WriteImage(vol, str(tmp / "vols" / sub / "p1.nii.gz"))
            err = io.StringIO()
            with redirect_stderr(err), redirect_stdout(io.StringIO()):
                self.assertEqual(main(["train-fusion", "--pairs", str(tmp / "vols"), "--output", str(model),
                                       "--device", "cpu", "--epochs", "1"]), 2)
            self.assertIn("is not on the training image", err.getvalue())
            self.assertIn("origin (LPS) (5, 0, 0) vs (0, 0, 0)", err.getvalue())
            self.assertNotIn("Traceback", err.getvalue())
            if not torch.cuda.is_available():
                # a CUDA request without a GPU: the message names the options of this command, and `run`
                # fails before registering (nothing written)
                a, b = str(tmp / "pairs" / "MRI" / "18.png"), str(tmp / "pairs" / "CT" / "18.png")
                err = io.StringIO()
                with redirect_stderr(err), redirect_stdout(io.StringIO()):
                    self.assertEqual(main(["run", a, b, "--methods", "deep", "--deep-device", "cuda",
                                           "--output-dir", str(tmp / "run")]), 2)
                self.assertIn("--deep-device", err.getvalue())
                self.assertFalse((tmp / "run").exists())


@unittest.skipIf(torch is None, "torch/monai not installed")
class TrainFusionDefaultsTest(unittest.TestCase):
    def test_cli_and_python_api_share_their_defaults(self):
        """train_fusion(pairs) from Python trains as `mmfusion train-fusion` does (the API's patch side was 128,
        the command's and README's 96)."""
        import argparse

        from MultimodalFusionLib.cli import build_parser
        from MultimodalFusionLib.fusion.deep import TrainingConfig

        sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
        cli_defaults = {a.dest: a.default for a in sub.choices["train-fusion"]._actions}
        api = TrainingConfig()
        for field in ("epochs", "batch_size", "lr", "patch_size", "seed", "device", "samples_per_epoch"):
            with self.subTest(field=field):
                self.assertEqual(getattr(api, field), cli_defaults[field])


class EpochLineFlushTest(unittest.TestCase):
    def test_a_line_written_above_the_bar_reaches_a_log_file_at_once(self):
        """MMFUSION_PROGRESS=1 forces the bar with stdout logged to a file: each epoch line must be on disk as
        it is written (tqdm's write does not flush, so the lines came in 8 KB blocks, a short run's at its end)."""
        from unittest import mock

        from MultimodalFusionLib.cli import ProgressBar

        with tempfile.TemporaryDirectory() as tmp, mock.patch.dict(os.environ, {"MMFUSION_PROGRESS": "1"}):
            log = Path(tmp) / "log.txt"
            with open(log, "w") as out, redirect_stdout(out), redirect_stderr(io.StringIO()):
                bar = ProgressBar(desc="train-fusion")
                bar(0.5, "epoch 1/2")
                self.assertIsNotNone(bar._bar)  # the bar is shown
                bar.write("epoch   1  loss 1.0000")
                self.assertEqual(log.read_text(), "epoch   1  loss 1.0000\n")
                bar.close()


if __name__ == "__main__":
    unittest.main()
