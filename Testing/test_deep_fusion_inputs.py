"""Deep fusion with demanding inputs: training data memory, odd settings, resumed runs, unaligned images.

Tiny networks and small arrays: each test runs in a few seconds on one CPU thread (conftest).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import unittest
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import SimpleITK as sitk

try:
    import monai  # noqa: F401
    import torch
except ImportError:  # pragma: no cover - the deep extra is part of the test environment
    torch = None

from memory_limit import CAN_LIMIT, address_space_left

from MultimodalFusionLib.cli import main
from MultimodalFusionLib.errors import InputError, OperationCancelled


def _tiny_config(spatial_dims: int = 2):
    from MultimodalFusionLib.fusion.deep import FusionNetConfig

    return FusionNetConfig(spatial_dims=spatial_dims, features=4, channels=(8, 16, 16), strides=(2, 2))


def _blobs(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """A smooth 0..1 array with structure (so slices are not dropped as empty)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    arr = np.zeros(shape)
    for _ in range(4):
        centre, width = rng.uniform(-0.6, 0.6, len(shape)), rng.uniform(0.2, 0.5)
        arr += np.exp(-sum((g - c) ** 2 for g, c in zip(grids, centre)) / width ** 2)
    return (arr / arr.max()).astype(np.float32)


def _benchmark_row(case: str, *flags: str) -> dict:
    """benchmarks/deep_fusion_memory.py's row for ``case`` (its estimate and measured peak, MiB), measured in a
    process of its own as the benchmark measures it."""
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "deep_fusion_memory.py"), "--one", case, *flags],
                          capture_output=True, text=True, timeout=300, cwd=str(root))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@unittest.skipIf(torch is None, "torch/monai not installed")
class TrainingDataTest(unittest.TestCase):
    def test_training_samples_share_the_pairs_memory_and_training_leaves_them_alone(self):
        """to_training_samples copied every volume once more (astype): twice the memory for big volumes."""
        from MultimodalFusionLib.fusion.deep import TrainingConfig, train_fusion
        from MultimodalFusionLib.fusion.deep.data import to_training_samples

        pairs = [(_blobs((6, 24, 20), 0), _blobs((6, 24, 20), 1)), (_blobs((24, 20), 2), _blobs((24, 20), 3))]
        kept = [(a.copy(), b.copy()) for a, b in pairs]
        volumes = to_training_samples(pairs[:1], 3)
        self.assertTrue(np.shares_memory(volumes[0]["a"], pairs[0][0]))
        self.assertTrue(np.shares_memory(volumes[0]["b"], pairs[0][1]))
        slices = to_training_samples(pairs, 2)
        self.assertGreaterEqual(len(slices), 5)  # the 2D pair and the slices with content
        for sample in slices:
            self.assertEqual(sample["a"].dtype, np.float32)
            self.assertTrue(any(np.shares_memory(sample["a"], a) for a, _ in pairs))
        # a float64 pair is converted (one float32 copy, as before)
        converted = to_training_samples([(pairs[1][0].astype(np.float64), pairs[1][1])], 2)
        self.assertEqual(converted[0]["a"].dtype, np.float32)
        # the augmentation never writes into the samples, so the caller's arrays stay as they were
        train_fusion(pairs, config=_tiny_config(2),
                     training=TrainingConfig(epochs=2, batch_size=2, patch_size=16, samples_per_epoch=6, device="cpu"))
        for (a, b), (a0, b0) in zip(pairs, kept):
            np.testing.assert_array_equal(a, a0)
            np.testing.assert_array_equal(b, b0)

    def test_pair_folders_cases_hidden_files_and_images_without_a_partner(self):
        """MRI/{p1,p2} + CT/{p1,p2} trained on MRI-with-MRI and CT-with-CT pairs without a word; macOS's
        ._name files and a .ipynb_checkpoints folder stopped training; an image without a partner was dropped
        silently; a 2D pair for a 3D network was refused only after every pair was read, naming no file."""
        from MultimodalFusionLib.fusion.deep.data import find_pairs, load_pairs

        def write(path: Path, seed: int, shape=(12, 12)) -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(sitk.GetImageFromArray(_blobs(shape, seed)), str(path))

        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            for case in ("p1", "p2"):  # a folder per case inside each modality folder
                write(root / "cases" / "MRI" / case / "scan.nii.gz", 1)
                write(root / "cases" / "CT" / case / "scan.nii.gz", 2)
            found = [(a.relative_to(root).as_posix(), b.relative_to(root).as_posix())
                     for a, b in find_pairs(root / "cases")]
            self.assertEqual(found, [("cases/MRI/p1/scan.nii.gz", "cases/CT/p1/scan.nii.gz"),
                                     ("cases/MRI/p2/scan.nii.gz", "cases/CT/p2/scan.nii.gz")])
            # the same layout with names that say nothing: either folder level may be the modality
            for site in ("siteA", "siteB"):
                for side in ("left", "right"):
                    write(root / "generic" / site / side / "01.nii.gz", 3)
            with self.assertRaisesRegex(InputError, "reads two ways.*siteA.*siteB"):
                find_pairs(root / "generic")
            self.assertEqual(len(find_pairs(root / "generic" / "siteA")), 1)  # one of them alone is a pair folder
            # A/ and B/ name no modality either: taken for modalities, they paired A/X + B/X (before: A/X + A/Y)
            for case in ("A", "B"):
                for side in ("X", "Y"):
                    write(root / "ab" / case / side / "01.nii.gz", 3)
            with self.assertRaisesRegex(InputError, "reads two ways.*'A/' and 'B/'"):
                find_pairs(root / "ab")
            # BIDS's folder names (sub-01/{anat,func}) name modalities: two subjects are not read two ways
            for case in ("sub-01", "sub-02"):
                for side, seed in (("anat", 1), ("func", 2)):
                    write(root / "bids" / case / side / "01.nii.gz", seed)
            found = [(a.relative_to(root).as_posix(), b.relative_to(root).as_posix())
                     for a, b in find_pairs(root / "bids")]
            self.assertEqual(found, [(f"bids/{c}/anat/01.nii.gz", f"bids/{c}/func/01.nii.gz")
                                     for c in ("sub-01", "sub-02")])
            # case folders linked in (ln -s /data/p3 MRI/p3) are cases, a link back up is not walked forever, and
            # a link to nothing is no image (os.walk had skipped linked folders and lists broken links as files)
            if hasattr(os, "symlink"):
                for side, seed in (("MRI", 1), ("CT", 2)):
                    write(root / "store" / side / "p3" / "scan.nii.gz", seed)
                    (root / "cases" / side / "p3").symlink_to(root / "store" / side / "p3", target_is_directory=True)
                    store = root / "store" / side / "p3"
                    (store / "again").symlink_to(store, target_is_directory=True)  # a loop
                    (root / "cases" / side / "p4.nii.gz").symlink_to(root / "gone.nii.gz")
                found = [a.relative_to(root).as_posix() for a, _ in find_pairs(root / "cases")]
                self.assertEqual(found, [f"cases/MRI/{case}/scan.nii.gz" for case in ("p1", "p2", "p3")])
                self.assertEqual(len(load_pairs(root / "cases")), 3)
            # hidden files and folders: ignored
            flat = root / "flat"
            for name in ("00.nii.gz", "01.nii.gz"):
                write(flat / "MRI" / name, 4)
                write(flat / "CT" / name, 5)
            for side in ("MRI", "CT"):
                (flat / side / "._00.nii.gz").write_bytes(b"\x00\x05\x16\x07" + bytes(80))  # AppleDouble
                (flat / side / ".DS_Store").write_bytes(b"junk")
            (flat / ".ipynb_checkpoints").mkdir()
            self.assertEqual([a.name for a, _ in find_pairs(flat)], ["00.nii.gz", "01.nii.gz"])
            self.assertEqual(len(load_pairs(flat)), 2)
            # an image without a partner of its name is named
            write(flat / "MRI" / "02.nii.gz", 6)
            write(flat / "CT" / "02.nii", 7)
            with self.assertWarnsRegex(UserWarning, r"2 image\(s\).*no partner.*02\.nii\.gz.*02\.nii'"):
                self.assertEqual(len(find_pairs(flat)), 2)
            (flat / "MRI" / "02.nii.gz").unlink()
            (flat / "MRI" / "02.nii").write_bytes((flat / "CT" / "02.nii").read_bytes())
            self.assertEqual(len(find_pairs(flat)), 3)
            # a 2D pair for a 3D network: named
            with self.assertRaisesRegex(InputError, "'.*MRI/00.nii.gz' \\+ '.*CT/00.nii.gz' is 2D"):
                load_pairs(flat, spatial_dims=3)

    def test_pairs_are_scaled_as_fusion_scales_them(self):
        """Training stretched an 8-bit pair min-to-max where fusion divides it by 255 (README: "8-bit images as
        they are, others min-max"): a PNG pair spanning 30..200 was seen at another scale in training than in
        fusion. load_pairs now gives the arrays fuse() hands a method, 8-bit grey and colour (a PET slice's Y
        of YCbCr); other images are min-max scaled as before."""
        from MultimodalFusionLib import fusion
        from MultimodalFusionLib.fusion.deep.data import load_pairs, normalize
        from MultimodalFusionLib.io import read_image

        rng = np.random.default_rng(3)
        grey8 = np.round(30 + 170 * _blobs((40, 36), 0)).astype(np.uint8)  # 30..200
        colour8 = np.round(np.stack([20 + 200 * _blobs((40, 36), s) for s in (1, 2, 3)], -1)).astype(np.uint8)
        grey16 = np.round(1000 + 3000 * _blobs((40, 36), 4)).astype(np.uint16)
        volume = (rng.normal(300, 80, (6, 40, 36))).astype(np.int16)
        seen = {}

        def capture(a, b, **_):
            seen["a"], seen["b"] = a, b
            return a

        fusion.register_method("capture-scaling", capture)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                cases = {"grey8": (grey8, grey8[::-1].copy()), "pet8": (grey8, colour8),
                         "grey16": (grey16, grey8), "volume": (volume, volume[:, ::-1].copy())}
                for case, (first, second) in cases.items():
                    for sub, arr in (("MRI", first), ("PET", second)):
                        os.makedirs(os.path.join(tmp, case, sub))
                        ext = ".nii.gz" if arr.ndim == 3 and arr.shape[-1] != 3 else ".png"
                        sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=arr.shape[-1] == 3),
                                        os.path.join(tmp, case, sub, "01" + ext))
                    (pa, pb), = load_pairs(os.path.join(tmp, case), spatial_dims=2 if first.ndim == 2 else 3)
                    ext = ".nii.gz" if first.ndim == 3 else ".png"
                    a = read_image(os.path.join(tmp, case, "MRI", "01" + ext), keep_color=True)
                    b = read_image(os.path.join(tmp, case, "PET", "01" + ext), keep_color=True)
                    fusion.fuse(a, b, "capture-scaling")
                    with self.subTest(case=case):
                        np.testing.assert_array_equal(pa, seen["a"].astype(np.float32))
                        np.testing.assert_array_equal(pb, seen["b"].astype(np.float32))
                        self.assertEqual((pa.dtype, pb.dtype), (np.float32, np.float32))
                np.testing.assert_allclose(load_pairs(os.path.join(tmp, "grey8"))[0][0], grey8 / 255.0, rtol=1e-7)
                # not 8-bit: min-max in float32 as before (the arrays, so a checkpoint's pairs, are unchanged)
                pa, _ = load_pairs(os.path.join(tmp, "volume"), spatial_dims=3)[0]
                np.testing.assert_array_equal(pa, normalize(volume.astype(np.float32))[0])
        finally:
            fusion.METHODS.pop("capture-scaling", None)

    def test_a_pair_image_of_other_components_is_named_by_its_file(self):
        """Since load_pairs reads colour as colour (to scale it as fusion does), a 2-channel .nrrd or a 5-component
        image was refused as "the anatomical image (a)" / "functional image (b)", naming no file, and the .nrrd as
        "a complex image saved as MetaImage": the file is named again, with the text read_image gave before."""
        from MultimodalFusionLib.fusion.deep.data import load_pairs

        for components, side in ((2, "MRI"), (2, "CT"), (5, "CT")):
            with self.subTest(components=components, side=side), tempfile.TemporaryDirectory() as tmp:
                for sub in ("MRI", "CT"):
                    os.makedirs(os.path.join(tmp, sub))
                    arr = _blobs((20, 24), 0)
                    if sub == side:
                        arr = np.stack([arr] * components, -1)
                    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=sub == side), os.path.join(tmp, sub, "01.nrrd"))
                with self.assertRaises(InputError) as ctx:
                    load_pairs(tmp)
                text = str(ctx.exception)
                self.assertIn(os.path.join(side, "01.nrrd") + f"' has {components} components per pixel", text)
                self.assertNotIn("MetaImage", text)

    def test_pairs_cached_on_disk_train_the_same_weights(self):
        """load_pairs held every pair in memory (64 MB per 256^3 volume): cache_dir maps them from disk."""
        from MultimodalFusionLib.fusion.deep import TrainingConfig, train_fusion
        from MultimodalFusionLib.fusion.deep.data import load_pairs

        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            for sub, seed in (("MRI", 0), ("CT", 1)):  # two small volumes per modality
                (tmp / "pairs" / sub).mkdir(parents=True)
                for k in range(2):
                    sitk.WriteImage(sitk.GetImageFromArray(_blobs((6, 24, 20), seed + 2 * k)),
                                    str(tmp / "pairs" / sub / f"{k}.nii.gz"))
            held = load_pairs(tmp / "pairs")
            mapped = load_pairs(tmp / "pairs", cache_dir=tmp / "cache")
            self.assertEqual(sorted(os.listdir(tmp / "cache")),
                             ["pair00000_a.npy", "pair00000_b.npy", "pair00001_a.npy", "pair00001_b.npy"])
            for (a, b), (ma, mb) in zip(held, mapped):
                self.assertIsInstance(ma, np.memmap)
                np.testing.assert_array_equal(a, ma)
                np.testing.assert_array_equal(b, mb)
            tcfg = TrainingConfig(epochs=1, batch_size=2, patch_size=16, samples_per_epoch=4, device="cpu")
            nets = [train_fusion(p, config=_tiny_config(2), training=tcfg).model for p in (held, mapped)]
            for (name, w), w2 in zip(nets[0].state_dict().items(), nets[1].state_dict().values()):
                self.assertTrue(torch.equal(w, w2), name)
            # training wrote nothing into the files (copy-on-write maps)
            for k, (a, b) in enumerate(held):
                np.testing.assert_array_equal(np.load(tmp / "cache" / f"pair{k:05d}_a.npy"), a)
                np.testing.assert_array_equal(np.load(tmp / "cache" / f"pair{k:05d}_b.npy"), b)

    def test_a_numpy_learning_rate_is_a_number(self):
        from MultimodalFusionLib.fusion.deep import TrainingConfig

        TrainingConfig(lr=np.float32(1e-3)).check()  # refused by the first version of the check
        with self.assertRaises(InputError):
            TrainingConfig(lr=np.float32("nan")).check()

    def test_training_settings_no_run_can_use_are_refused(self):
        """lr=inf trained NaN weights and returned them as trained; lr=nan failed inside torch;
        samples_per_epoch=0 silently meant all samples and -3 suggested a batch size of -3."""
        from MultimodalFusionLib.fusion.deep import TrainingConfig, train_fusion

        pairs = [(_blobs((24, 24), 0), _blobs((24, 24), 1))]
        for field, value in (("lr", float("inf")), ("lr", float("nan")), ("samples_per_epoch", 0),
                             ("samples_per_epoch", -3)):
            with self.subTest(**{field: value}):
                tcfg = TrainingConfig(epochs=1, batch_size=1, patch_size=16, device="cpu", **{field: value})
                with self.assertRaises(InputError) as caught:
                    train_fusion(pairs, config=_tiny_config(2), training=tcfg)
                self.assertIn(field if field != "lr" else "lr nan" if value != value else "lr inf",
                              str(caught.exception))

    def test_a_training_seed_out_of_range_is_refused_before_the_pairs_are_read(self):
        """--seed 99999999999999999999 (and -9999999999999999999) had been a ValueError traceback from torch's
        manual_seed ("Overflow when unpacking long long") after every pair was read; -1, which registration refuses,
        had trained. The CLI gives the message, exit 2 and no traceback, and writes nothing."""
        from MultimodalFusionLib.fusion.deep import TrainingConfig

        for seed in (-1, 2**64, -(2**64), 2**62 + 1, 1.5, "3", True):
            with self.subTest(seed=seed):
                with self.assertRaisesRegex(InputError, "training seed must be a whole number from 0 to 2\\^62"):
                    TrainingConfig(seed=seed).check()
        for seed in (0, 7, 2**62, 3.0):
            TrainingConfig(seed=seed, device="cpu").check()
        with tempfile.TemporaryDirectory() as tmp:
            model = os.path.join(tmp, "m.safetensors")
            for seed in ("99999999999999999999", "-1"):
                with self.subTest(cli_seed=seed), redirect_stderr(io.StringIO()) as err:
                    rc = main(["train-fusion", "--pairs", os.path.join(tmp, "no-pairs"), "--output", model,
                               "--seed", seed])
                self.assertEqual(rc, 2, err.getvalue())
                self.assertIn(f"The training seed must be a whole number from 0 to 2^62, not {int(seed)}.",
                              err.getvalue())
                self.assertNotIn("Traceback", err.getvalue())
            self.assertEqual(os.listdir(tmp), [])

    def test_a_diverged_run_is_an_error_not_nan_weights(self):
        """The loss went NaN and train_fusion returned (and the CLI saved) NaN weights as a trained network."""
        from MultimodalFusionLib.fusion.deep import TrainingConfig, build_network, train_fusion

        torch.manual_seed(0)
        net = build_network(_tiny_config(2))
        with torch.no_grad():  # weights so large that the first forward pass overflows
            for p in net.parameters():
                p.add_(torch.randn_like(p)).mul_(1e12)
        with tempfile.TemporaryDirectory() as tmp:
            ckpt = os.path.join(tmp, "c.ckpt.pt")
            with self.assertRaises(InputError) as caught:
                train_fusion([(_blobs((24, 24), 0), _blobs((24, 24), 1))], model=net, checkpoint=ckpt,
                             training=TrainingConfig(epochs=1, batch_size=1, patch_size=16, device="cpu"))
            self.assertIn("diverged in epoch 1", str(caught.exception))
            self.assertIn("--lr", str(caught.exception))
            self.assertFalse(os.path.exists(ckpt))  # no checkpoint of NaN weights


def _write_pairs(folder: Path) -> None:
    for sub, seed in (("MRI", 0), ("CT", 1)):
        (folder / sub).mkdir(parents=True)
        for k in range(2):
            arr = np.round(_blobs((32, 28), seed + 2 * k) * 255).astype(np.uint8)
            sitk.WriteImage(sitk.GetImageFromArray(arr), str(folder / sub / f"{k}.png"))


@unittest.skipIf(torch is None, "torch/monai not installed")
class TrainFusionCommandTest(unittest.TestCase):
    def _main(self, args: list[str]) -> tuple[int, str]:
        err = io.StringIO()
        with redirect_stdout(io.StringIO()), redirect_stderr(err):
            rc = main(args)
        return rc, err.getvalue()

    def test_a_resume_on_other_pairs_is_refused_as_they_are_read(self):
        """--resume on other pairs was refused only after every pair had been read and scaled (minutes for a folder
        of volumes): their number is now checked before any is read, each pair as it is read; and a checkpoint
        written before checkpoints held their pairs' fingerprint is refused on 8-bit pairs, which training now
        scales as fusion does (divided by 255) where that run stretched them min-max: it had resumed without a
        word. An unreadable image after the first differing pair shows how far the pairs were read."""
        from MultimodalFusionLib.fusion.deep import FusionNetConfig, build_network
        from MultimodalFusionLib.fusion.deep.weights import save_checkpoint

        def write(folder: Path, seeds, broken: int | None = None) -> None:
            for side in ("MRI", "CT"):
                (folder / side).mkdir(parents=True)
                for k, seed in enumerate(seeds):
                    path = folder / side / f"{k:02d}.png"
                    if k == broken:
                        path.write_bytes(b"not a png")
                        continue
                    arr = np.round(30 + 170 * _blobs((32, 32), seed + (side == "CT"))).astype(np.uint8)  # 30..200
                    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))

        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            write(tmp / "run", (0, 2))
            out = str(tmp / "m.safetensors")
            base = ["train-fusion", "--output", out, "--patch-size", "16", "--batch-size", "1", "--device", "cpu",
                    "--threads", "1", "--samples-per-epoch", "1", "--seed", "0"]
            rc, err = self._main(base + ["--pairs", str(tmp / "run"), "--epochs", "1"])
            self.assertEqual(rc, 0, err)
            ckpt = out + ".ckpt.pt"
            write(tmp / "more", (0, 2, 4), broken=2)  # a third pair, unreadable
            write(tmp / "other", (6, 2), broken=1)  # another first pair, then an unreadable one
            write(tmp / "same", (0, 2))
            for folder, said in (("more", "2 pair(s) then, 3 now"), ("other", "00.png' is not the run's pair 1")):
                with self.subTest(pairs=folder):
                    rc, err = self._main(base + ["--pairs", str(tmp / folder), "--epochs", "2", "--resume", ckpt])
                    self.assertEqual(rc, 2, err)
                    self.assertIn("other training pairs than its run's", err)
                    self.assertIn(said, err)
            rc, err = self._main(base + ["--pairs", str(tmp / "same"), "--epochs", "2", "--resume", ckpt])
            self.assertEqual(rc, 0, err)  # a copy of the pairs (other files, same values) continues the run
            # a checkpoint without the pairs' fingerprint (written before it was saved) on 8-bit pairs
            net = build_network(FusionNetConfig())
            old = tmp / "old.ckpt.pt"
            save_checkpoint(old, model=net, epoch=0, state={}, optimizer=torch.optim.Adam(net.parameters()))
            rc, err = self._main(base + ["--pairs", str(tmp / "run"), "--epochs", "2", "--resume", str(old)])
            self.assertEqual(rc, 2, err)
            self.assertIn("written before checkpoints recorded their training pairs", err)
            self.assertIn("8-bit", err)
            self.assertIn("--epochs 1", err)
            self.assertIn("--init MODEL.safetensors", err)
            # its fix: --epochs equal to the checkpoint's trains nothing and writes its weights
            rc, err = self._main(base + ["--pairs", str(tmp / "run"), "--epochs", "1", "--resume", str(old)])
            self.assertEqual(rc, 0, err)

    def test_a_checkpoint_without_pair_digests_resumes_as_before(self):
        """Checkpoints written before pair_digests hold the pairs' count, shapes and one digest: they resume on the
        same pairs (a copy) as before, and on other images of the same sizes are refused by that digest once the
        pairs are read (each pair's digest, which they lack, is not asked for). Pins 0eb5fb9's 'old checkpoints
        match exactly as before'."""
        def write(folder: Path, seeds) -> None:
            for side in ("MRI", "CT"):
                (folder / side).mkdir(parents=True)
                for k, seed in enumerate(seeds):
                    arr = np.round(255 * _blobs((32, 32), seed + (side == "CT"))).astype(np.uint8)
                    sitk.WriteImage(sitk.GetImageFromArray(arr), str(folder / side / f"{k:02d}.png"))

        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            write(tmp / "run", (0, 2))
            write(tmp / "copy", (0, 2))
            write(tmp / "other", (0, 6))  # its second pair differs
            out = str(tmp / "m.safetensors")
            base = ["train-fusion", "--output", out, "--patch-size", "16", "--batch-size", "1", "--device", "cpu",
                    "--threads", "1", "--samples-per-epoch", "1", "--seed", "0"]
            rc, err = self._main(base + ["--pairs", str(tmp / "run"), "--epochs", "1"])
            self.assertEqual(rc, 0, err)
            ckpt = out + ".ckpt.pt"
            payload = torch.load(ckpt, map_location="cpu", weights_only=True)
            state = json.loads(payload["state"])  # the checkpoint's training state is JSON text
            self.assertEqual(len(state["data"].pop("pair_digests")), 2)  # as an older checkpoint: without them
            self.assertEqual(sorted(state["data"]), ["digest", "pairs", "shapes"])
            payload["state"] = json.dumps(state)
            old = str(tmp / "old.ckpt.pt")
            torch.save(payload, old)
            rc, err = self._main(base + ["--pairs", str(tmp / "other"), "--epochs", "2", "--resume", old])
            self.assertEqual(rc, 2, err)
            self.assertIn("as many pairs of the same sizes, but other images", err)
            rc, err = self._main(base + ["--pairs", str(tmp / "copy"), "--epochs", "2", "--resume", old])
            self.assertEqual(rc, 0, err)

    def test_dicom_and_nifti_copies_of_a_pair_have_one_fingerprint(self):
        """The fingerprint is of the values training sees, not of the files: the same pair as DICOM and as NIfTI
        matches (a --resume on the converted folder continues the run); stored as float, an 8-bit pair is scaled
        min-max instead of divided by 255, other values for training, and does not."""
        from MultimodalFusionLib.fusion.deep.data import load_pairs
        from MultimodalFusionLib.fusion.deep.training import data_fingerprint
        from MultimodalFusionLib.io import write_image

        rng = np.random.default_rng(0)
        with tempfile.TemporaryDirectory() as tmp:
            found = {}
            for pixel in (np.uint8, np.uint16):
                arrays = {side: rng.integers(20, 200, (6, 20, 24)).astype(pixel) for side in ("MRI", "CT")}
                for fmt, cast in (("dcm", None), ("nii.gz", None), ("nrrd", sitk.sitkFloat32)):
                    for side, arr in arrays.items():
                        image = sitk.GetImageFromArray(arr)
                        image.SetSpacing((0.9, 0.8, 2.5))
                        folder = os.path.join(tmp, f"{pixel.__name__}_{fmt}", side)
                        os.makedirs(folder)
                        write_image(sitk.Cast(image, cast) if cast else image, os.path.join(folder, "01." + fmt))
                    found[pixel.__name__, fmt] = data_fingerprint(load_pairs(os.path.join(tmp, f"{pixel.__name__}_{fmt}")))
            for pixel in ("uint8", "uint16"):
                self.assertEqual(found[pixel, "dcm"], found[pixel, "nii.gz"])
            self.assertEqual(found["uint16", "nrrd"]["digest"], found["uint16", "dcm"]["digest"])  # min-max alike
            self.assertNotEqual(found["uint8", "nrrd"]["digest"], found["uint8", "dcm"]["digest"])  # /255 vs min-max

    def test_threads_and_architecture_mismatches_are_clear_errors(self):
        """--threads -1 was a RuntimeError traceback and 0 was ignored; --resume of a 3D checkpoint with --init
        2D weights a traceback listing every tensor; --spatial-dims 3 with a 2D checkpoint silently trained 2D."""
        from MultimodalFusionLib.fusion.deep import FusionNetConfig, build_network, save_weights
        from MultimodalFusionLib.fusion.deep.weights import save_checkpoint

        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            _write_pairs(tmp / "pairs")
            nets = {}
            for dims in (2, 3):
                nets[dims] = build_network(FusionNetConfig(spatial_dims=dims))
                save_checkpoint(tmp / f"c{dims}.ckpt.pt", model=nets[dims], epoch=0, state={},
                                optimizer=torch.optim.Adam(nets[dims].parameters()))
            save_weights(nets[2], tmp / "w2.safetensors")
            base = ["train-fusion", "--pairs", str(tmp / "pairs"), "--output", str(tmp / "out" / "m.safetensors"),
                    "--patch-size", "16", "--batch-size", "1", "--device", "cpu", "--epochs", "2"]
            cases = [
                (["--threads", "0"], "--threads must be at least 1"),
                (["--threads", "-1"], "--threads must be at least 1"),
                (["--resume", str(tmp / "c3.ckpt.pt"), "--init", str(tmp / "w2.safetensors")],
                 "holds a 3D network"),
                (["--resume", str(tmp / "c2.ckpt.pt"), "--spatial-dims", "3"], "holds a 2D network"),
            ]
            for extra, message in cases:
                with self.subTest(extra=extra):
                    rc, err = self._main(base + extra)
                    self.assertEqual(rc, 2, err)
                    self.assertIn(message, err)
                    self.assertNotIn("Traceback", err)
            self.assertFalse((tmp / "out" / "m.safetensors").exists())
            # a resume continues the checkpoint's run: other settings, or fewer epochs than it trained, are refused
            # (they went on silently: another data order and learning-rate schedule, or no training at all)
            from MultimodalFusionLib.fusion.deep import TrainingConfig

            run = TrainingConfig(epochs=4, batch_size=1, patch_size=16, device="cpu").to_dict()
            save_checkpoint(tmp / "run.ckpt.pt", model=nets[2], epoch=2, optimizer=torch.optim.Adam(nets[2].parameters()),
                            state={"training": run})
            resumed = base + ["--resume", str(tmp / "run.ckpt.pt")]
            for extra, message in ((["--lr", "0.01"], "lr 0.002 -> 0.01"), (["--seed", "3"], "--seed 0"),
                                   ([], "already trained 3 epochs; --epochs 2")):
                with self.subTest(resumed=extra):
                    rc, err = self._main(resumed + extra)
                    self.assertEqual(rc, 2, err)
                    self.assertIn(message, err)
            # before any pair is read (as the other settings): an unreadable pair is not what is reported
            broken = tmp / "broken"
            for sub in ("MRI", "CT"):
                (broken / sub).mkdir(parents=True)
                (broken / sub / "0.png").write_bytes(b"not a png")
            rc, err = self._main(["train-fusion", "--pairs", str(broken)] + resumed[3:] + ["--lr", "0.01"])
            self.assertEqual(rc, 2, err)
            self.assertIn("lr 0.002 -> 0.01", err)
            rc, err = self._main(resumed + ["--epochs", "3"])  # its weights as they are
            self.assertEqual(rc, 0, err)
            # the checkpoint's own architecture without --spatial-dims, and a matching --spatial-dims, resume
            for extra in ([], ["--spatial-dims", "2"]):
                with self.subTest(resume=extra):
                    rc, err = self._main(base + ["--resume", str(tmp / "c2.ckpt.pt")] + extra)
                    self.assertEqual(rc, 0, err)

    def test_resume_of_a_run_resumed_before_counts_its_whole_time(self):
        """A run resumed before each epoch's seconds counted from the run's start has a history whose times restart
        at 0 (30 s for epoch 1, then 12 s for epoch 2, trained in a second part): resuming it again added only the
        last entry (12 s) to its own time, so its weights said 12 s + this part for a run of 42 s + this part. The
        restarted times now count on from the part before; a history that never restarts is kept as it is."""
        from MultimodalFusionLib.fusion.deep import TrainingConfig, build_network, train_fusion
        from MultimodalFusionLib.fusion.deep.training import open_resume
        from MultimodalFusionLib.fusion.deep.weights import save_checkpoint

        pairs = [(_blobs((24, 24), 0), _blobs((24, 24), 1)), (_blobs((24, 24), 2), _blobs((24, 24), 3))]
        tcfg = TrainingConfig(epochs=3, batch_size=1, patch_size=16, device="cpu")
        with tempfile.TemporaryDirectory() as tmp:
            for times, whole in (((30.0, 12.0), 42.0), ((30.0, 42.0), 42.0)):
                torch.manual_seed(0)
                net = build_network(_tiny_config(2))
                ckpt = os.path.join(tmp, "run.ckpt.pt")
                history = [{"epoch": k + 1, "loss": 0.5, "seconds": t} for k, t in enumerate(times)]
                save_checkpoint(ckpt, model=net, epoch=1, optimizer=torch.optim.Adam(net.parameters()),
                                state={"history": history})
                run = open_resume(ckpt)
                result = train_fusion(pairs, training=tcfg, resume=run)
                with self.subTest(history=times):
                    self.assertEqual([h["seconds"] for h in result.history[:2]], [30.0, whole])
                    self.assertAlmostEqual(result.seconds, whole + result.seconds_this_part, places=6)
                    self.assertGreater(result.history[2]["seconds"], whole)
                    self.assertEqual(run.history[1]["seconds"], times[1])  # the opened run's entries are not changed

    def test_resume_reads_the_checkpoint_once(self):
        """train-fusion --resume read the checkpoint twice (the command's early checks, then train_fusion): the
        command now hands train_fusion what open_resume read. Counted with a wrapper that calls the real torch.load.
        A ResumedRun is not changed by training from it (Adam's moments would have been updated in place)."""
        from MultimodalFusionLib.fusion.deep import TrainingConfig, build_network, train_fusion
        from MultimodalFusionLib.fusion.deep.training import open_resume
        from MultimodalFusionLib.fusion.deep.weights import save_checkpoint

        real_load, loads = torch.load, []

        def counting_load(f, *args, **kwargs):
            loads.append(os.fspath(f))
            return real_load(f, *args, **kwargs)

        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            _write_pairs(tmp / "pairs")
            torch.manual_seed(0)
            net = build_network(_tiny_config(2))
            ckpt = str(tmp / "run.ckpt.pt")
            save_checkpoint(ckpt, model=net, epoch=0, optimizer=torch.optim.Adam(net.parameters()), state={})
            torch.load = counting_load
            try:
                rc, err = self._main(["train-fusion", "--pairs", str(tmp / "pairs"), "--output",
                                      str(tmp / "m.safetensors"), "--patch-size", "16", "--batch-size", "1",
                                      "--device", "cpu", "--epochs", "2", "--resume", ckpt])
                self.assertEqual(rc, 0, err)
                self.assertEqual(loads, [ckpt])
                # from Python: a path is read by train_fusion, an opened run is not read again
                pairs = [(_blobs((24, 24), 0), _blobs((24, 24), 1)), (_blobs((24, 24), 2), _blobs((24, 24), 3))]
                tcfg = TrainingConfig(epochs=2, batch_size=1, patch_size=16, device="cpu")
                by_path = train_fusion(pairs, training=tcfg, resume=ckpt).model.state_dict()
                run = open_resume(ckpt)
                del loads[:]
                opened = [train_fusion(pairs, training=tcfg, resume=run).model.state_dict() for _ in range(2)]
                self.assertEqual(loads, [])
            finally:
                torch.load = real_load
            for name, weight in by_path.items():
                self.assertTrue(torch.equal(weight, opened[0][name]), name)
                self.assertTrue(torch.equal(weight, opened[1][name]), name)


@unittest.skipIf(torch is None, "torch/monai not installed")
class InferenceInputsTest(unittest.TestCase):
    def _net(self, spatial_dims: int = 2):
        from MultimodalFusionLib.fusion.deep import build_network

        torch.manual_seed(0)
        return build_network(_tiny_config(spatial_dims))

    def _main(self, args: list[str]) -> tuple[int, str]:
        err = io.StringIO()
        with redirect_stdout(io.StringIO()), redirect_stderr(err):
            rc = main(args)
        return rc, err.getvalue()

    def test_a_volume_smaller_than_the_window_is_one_window_of_its_own_size(self):
        """The 3D network's sliding window padded a thin slab to whole 96^3 windows (a 5-slice 192x160 slab:
        5.1 s); a window no larger than the volume gives what the network gives on the volume itself."""
        from MultimodalFusionLib.fusion.deep import load_weights
        from MultimodalFusionLib.fusion.deep.inference import _forward_padded, predict
        from MultimodalFusionLib.fusion.deep.weights import default_weights_path

        net = load_weights(default_weights_path(3))[0].eval()  # the shipped 3D weights: a receptive field that reaches the padding
        a, b = _blobs((5, 40, 36), 0), _blobs((5, 40, 36), 1)
        fused, weight = predict(net, a, b, device=torch.device("cpu"), roi_size=96)
        with torch.no_grad():
            direct_f, direct_w = _forward_padded(net, torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None],
                                                 False)
        np.testing.assert_allclose(fused, direct_f[0, 0].numpy(), atol=1e-5)
        np.testing.assert_allclose(weight, direct_w[0, 0].numpy(), atol=1e-5)

    def test_sliding_windows_blend_without_seams(self):
        """MONAI's Gaussian window weights are floored at 1e-3 over 58 % of a 3D window, where overlapping
        windows were blended 50/50: the blend jumped where a window began, and their poor edge voxels counted
        as much as their centres. On a 40^3 volume, 24^3 windows (the 3D weights) differed from one whole
        window by up to 0.068 (fused) and 0.137 (weight), 0.0027 and 0.0063 without the floor."""
        from monai.data.utils import compute_importance_map
        from monai.inferers import sliding_window_inference

        from MultimodalFusionLib.fusion.deep.inference import fuse_arrays, window_weights

        monai_map = compute_importance_map((24, 24, 24), mode="gaussian", sigma_scale=0.125)
        ours = window_weights((24, 24, 24))[0, 0]
        above = monai_map > 1e-3
        np.testing.assert_allclose(ours[above].numpy(), monai_map[above].numpy(), rtol=1e-5)  # the same Gaussian
        self.assertLess(float(ours.min()), 1e-8)  # ... without the floor

        # two windows along z ([0, 24) and [16, 40)) that predict 0 and 1: no jump where one begins or ends
        values = iter([0.0, 1.0])
        blend = sliding_window_inference(torch.zeros(1, 1, 40, 24, 24), roi_size=(24, 24, 24), sw_batch_size=1,
                                         predictor=lambda x: torch.full_like(x, next(values)), overlap=0.25,
                                         mode="gaussian", roi_weight_map=window_weights((24, 24, 24)))[0, 0].numpy()
        # MONAI's own map: 0.5 in the windows' corners, where both are floored
        self.assertLess(float(np.abs(blend[[16, 24]] - blend[[15, 23]]).max()), 0.01)

        # the shipped 3D weights, windows smaller than the volume against one window of the whole volume
        a, b = _blobs((40, 40, 40), 0), _blobs((40, 40, 40), 1)
        whole_f, whole_w, _ = fuse_arrays(a, b, weights="3d", roi_size=40, selection="blend", device="cpu")
        tiled_f, tiled_w, _ = fuse_arrays(a, b, weights="3d", roi_size=24, selection="blend", device="cpu")
        self.assertLess(float(np.abs(tiled_f - whole_f).max()), 0.01)
        self.assertLess(float(np.abs(tiled_w - whole_w).max()), 0.02)

    def test_fuse_deep_names_values_beyond_float32(self):
        """A finite float64 image past float32's range became infinite in fuse_deep's float32 scaling and was
        refused as holding '400 NaN or infinite values'; fusion.fuse (float64 scaling) fuses it."""
        from MultimodalFusionLib import fusion
        from MultimodalFusionLib.fusion.deep import fuse_deep

        huge = sitk.GetImageFromArray(_blobs((20, 20), 0).astype(np.float64) * 1e300)
        other = sitk.GetImageFromArray(_blobs((20, 20), 1))
        # values float32 holds, spanning more than it does (-3e38 to 3e38): normalize's x - low overflowed
        wide = sitk.GetImageFromArray((_blobs((20, 20), 0).astype(np.float64) * 6e38 - 3e38).astype(np.float32))
        for a, b, which in ((huge, other, "first"), (other, huge, "second"), (wide, other, "first")):
            with self.assertRaises(InputError) as ctx:
                fuse_deep(a, b)
            self.assertIn(f"The {which} image holds values beyond float32's range", str(ctx.exception))
            self.assertIn("fusion.fuse", str(ctx.exception))
            fused = sitk.GetArrayFromImage(fusion.fuse(a, b, "deep").image)
            self.assertTrue(np.isfinite(fused).all())

    def test_fuse_deep_refuses_a_second_image_placed_elsewhere(self):
        """fuse_deep compared the sizes only: an image of the same size 50 mm away was fused voxel by voxel."""
        from MultimodalFusionLib.fusion.deep import fuse_deep

        a = sitk.GetImageFromArray(_blobs((24, 20), 0))
        for change, expected in ((lambda im: im.SetOrigin((50.0, 0.0)), "origin"),
                                 (lambda im: im.SetSpacing((2.0, 1.0)), "spacing"),
                                 (lambda im: im.SetDirection((0.0, 1.0, 1.0, 0.0)), "direction")):
            b = sitk.GetImageFromArray(_blobs((24, 20), 1))
            change(b)
            with self.subTest(expected):
                with self.assertRaises(InputError) as caught:
                    fuse_deep(a, b, weights=self._net())
                self.assertIn(expected, str(caught.exception))
                self.assertIn("resample", str(caught.exception))

    def test_bad_inference_settings_are_clear_errors(self):
        """batch_size -1 returned uninitialised memory as the fused volume, 0 a ValueError from range();
        a negative or non-finite adaptation rate a torch ValueError; a huge window a 8e18-byte allocation."""
        from MultimodalFusionLib.fusion import fuse
        from MultimodalFusionLib.fusion.deep import fuse_arrays

        vol_a, vol_b = _blobs((5, 20, 20), 0), _blobs((5, 20, 20), 1)
        net2, net3 = self._net(2), self._net(3)
        cases = [
            (dict(weights=net2, batch_size=-1), "batch_size"),
            (dict(weights=net2, batch_size=0), "batch_size"),
            (dict(weights=net2, batch_size=2.5), "batch_size"),
            (dict(weights=net3, roi_size=0), "roi_size"),
            (dict(weights=net3, roi_size=10 ** 6), "roi_size"),
            (dict(weights=net2, adapt_steps=1, adapt_lr=-1.0), "adapt_lr"),
            (dict(weights=net2, adapt_steps=1, adapt_lr=float("nan")), "adapt_lr"),
            (dict(weights=net2, adapt_steps=1.5), "adapt_steps"),
            (dict(weights=net2, adapt_steps=True), "adapt_steps"),
        ]
        for params, name in cases:
            with self.subTest(params=params):
                with self.assertRaises(InputError) as caught:
                    fuse_arrays(vol_a, vol_b, **params)
                self.assertIn(name, str(caught.exception))
        # through fusion.fuse too (its parameter check lets deep's None-default adapt_steps through)
        a, b = sitk.GetImageFromArray(vol_a[2]), sitk.GetImageFromArray(vol_b[2])
        with self.assertRaises(InputError):
            fuse(a, b, "deep", weights=net2, adapt_steps=1.5)
        # sound values still run: a window larger than the volume, one slice per batch
        fused, weight, _ = fuse_arrays(vol_a, vol_b, weights=net2, batch_size=1)
        self.assertTrue(np.isfinite(fused).all() and 0.0 <= weight.min() and weight.max() <= 1.0)
        # a huge number of steps (CLI --adapt 10**23, a Python int beyond int64) is taken and can be cancelled
        calls = []

        def stop_after_two_steps(fraction: float, message: str) -> bool:
            calls.append(message)
            return not message.startswith("adapting 2/")

        with self.assertRaises(OperationCancelled):
            fuse_arrays(vol_a[2], vol_b[2], weights=net2, adapt_steps=10 ** 23, progress=stop_after_two_steps)
        self.assertTrue(any(m.startswith("adapting 1/100000000000000000000000") for m in calls), calls)

    def test_fuse_records_what_ran(self):
        """fusion.fuse recorded deep's device as "auto" (not which one ran), no weights or adaptation steps for the
        defaults, and a network passed as weights as its whole module tree (kilobytes in metrics.json)."""
        from MultimodalFusionLib.fusion import fuse

        a, b = sitk.GetImageFromArray(_blobs((24, 20), 0)), sitk.GetImageFromArray(_blobs((24, 20), 1))
        used = fuse(a, b, "deep").parameters
        expected_device = "cuda" if torch.cuda.is_available() else "cpu"
        self.assertEqual((used["device"], used["device_requested"]), (expected_device, "auto"))
        self.assertEqual((used["weights"], used["adapt_steps"], used["spatial_dims"]), ("default-2d", 0, 2))
        used = fuse(a, b, "deep", weights=self._net(), device="cpu").parameters
        self.assertEqual((used["device"], used["weights"]), ("cpu", "model"))
        self.assertNotIn("device_requested", used)
        for key, value in used.items():
            self.assertFalse(isinstance(value, str) and (len(value) > 200 or "\n" in value), (key, str(value)[:80]))

    def test_a_network_passed_as_weights_is_left_as_it_was(self):
        """A caller's network (weights=net) had been left in eval mode (and, from CUDA, on the CPU): a network being
        trained, fused for a look, then trained on without its training mode. Its mode, device and tensors stay."""
        from MultimodalFusionLib.fusion.deep import fuse_arrays

        a, b = _blobs((12, 24, 20), 0), _blobs((12, 24, 20), 1)
        for adapt_steps in (0, 2):
            net = self._net().train()
            before = {k: v.clone() for k, v in net.state_dict().items()}
            fuse_arrays(a, b, weights=net, device="cpu", adapt_steps=adapt_steps)
            with self.subTest(adapt_steps=adapt_steps):
                self.assertTrue(net.training)
                self.assertEqual(next(net.parameters()).device.type, "cpu")
                for key, value in net.state_dict().items():
                    self.assertTrue(torch.equal(value, before[key]), key)
        net = self._net().eval()
        fuse_arrays(a, b, weights=net, device="cpu")
        self.assertFalse(net.training)
        # a part in eval mode while the rest trains (a frozen encoder) keeps its mode: train(True) had set them all
        net = self._net().train()
        net.encoder_a.eval()
        fuse_arrays(a, b, weights=net, device="cpu")
        self.assertEqual([m.training for m in net.encoder_a.modules()], [False] * len(list(net.encoder_a.modules())))
        self.assertTrue(net.training and net.core.training)

    def test_a_3d_network_on_strongly_anisotropic_voxels_warns(self):
        """A 3D network fused 1 x 1 x 5 mm volumes without a word, with 6-14 % less mutual information than at 1 mm
        (README): it warns, naming the spacing and both fixes; near-isotropic voxels and the 2D network do not.
        The warning is the result's (FusionResult.warnings, as a registration's), given by every fusion: a Python
        warnings.warn had been shown once per process, so a second fusion in the same session said nothing."""
        import warnings

        from MultimodalFusionLib.fusion import fuse
        from MultimodalFusionLib.fusion.deep import fuse_arrays, fuse_deep

        def images(spacing):
            out = []
            for seed in (0, 1):
                image = sitk.GetImageFromArray(_blobs((8, 24, 20), seed))
                image.SetSpacing(spacing)
                out.append(image)
            return out

        def fused_warnings(spacing, spatial_dims=3):
            result = fuse(*images(spacing), "deep", weights=self._net(spatial_dims), device="cpu")
            self.assertNotIn("warnings", result.parameters)  # on the result, not among the parameters
            return [w for w in result.warnings if "anisotropic" in w]

        said = fused_warnings((1.0, 1.0, 5.0))
        self.assertEqual(len(said), 1)
        self.assertIn("1 x 1 x 5 mm voxels (5.0x anisotropic)", said[0])
        self.assertIn("near-isotropic", said[0])
        self.assertIn("--model 2d", said[0])
        self.assertEqual(len(fused_warnings((5.0, 1.0, 1.0))), 1)  # thick along x: any axis
        self.assertEqual(fused_warnings((1.0, 1.0, 2.5)), [])
        self.assertEqual(fused_warnings((1.0, 1.0, 5.0), spatial_dims=2), [])  # sliced across its thick axis
        # every fusion says it, under Python's default warning filter too (which had shown it once a process),
        # and none is raised as a Python warning beside it (the CLI would print it twice)
        net = self._net(3)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            firsts = [len(fuse(*images((1.0, 1.0, 5.0)), "deep", weights=net, device="cpu").warnings)
                      for _ in range(2)]
            direct = fuse_deep(*images((1.0, 1.0, 5.0)), weights=net, device="cpu")
        self.assertEqual(firsts, [1, 1])
        self.assertEqual(len(direct.warnings), 1)
        self.assertNotIn("warnings", direct.parameters)
        self.assertEqual([str(w.message) for w in caught if "anisotropic" in str(w.message)], [])
        # a fusion refused for a setting (a window beyond MAX_ROI_SIZE, a GPU this machine lacks) warns of nothing
        for bad in ({"roi_size": 4096}, {"device": "cuda:99"}):
            with self.subTest(refused=bad), warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                with self.assertRaises(InputError):
                    fuse_arrays(_blobs((8, 24, 20), 0), _blobs((8, 24, 20), 1), weights=self._net(3),
                                spacing=(5.0, 1.0, 1.0), **{"device": "cpu", **bad})
                self.assertEqual([str(w.message) for w in caught if "anisotropic" in str(w.message)], [])

    def test_the_cli_prints_the_anisotropy_warning_of_every_fusion(self):
        """mmfusion fuse and run print deep fusion's anisotropy warning on stderr as 'warning: ...', as register prints
        a registration's, each time (a warnings.warn had been shown once per process, as a Python warning pointing
        into the package); stdout keeps the results."""
        from MultimodalFusionLib.fusion.deep import save_weights

        with tempfile.TemporaryDirectory() as tmp:
            weights = os.path.join(tmp, "net3d.safetensors")
            save_weights(self._net(3), weights)
            files = []
            for seed in (0, 1):
                image = sitk.GetImageFromArray(_blobs((8, 24, 20), seed))
                image.SetSpacing((1.0, 1.0, 5.0))
                files.append(os.path.join(tmp, f"{seed}.nrrd"))
                sitk.WriteImage(image, files[-1])
            deep = ["--method", "deep", "--model", weights, "--deep-device", "cpu"]
            for call in (1, 2):
                with self.subTest(command="fuse", call=call):
                    rc, err = self._main(["fuse", *files, *deep, "-o", os.path.join(tmp, "fused.nrrd")])
                    self.assertEqual(rc, 0, err)
                    self.assertEqual(err.count("warning: The 3D deep-fusion network fused a volume of 1 x 1 x 5 mm"),
                                     1, err)
                    self.assertNotIn("UserWarning", err)
            with self.subTest(command="run"):
                rc, err = self._main(["run", *files, "--output-dir", os.path.join(tmp, "out"), "--no-register", "--methods", "deep",
                                      "--model", weights, "--deep-device", "cpu"])
                self.assertEqual(rc, 0, err)
                self.assertEqual(err.count("warning: The 3D deep-fusion network"), 1, err)
            with self.subTest(command="run --json"):
                # in its JSON and its report's metrics.json too, as the registration's are (they were on stderr only)
                out = io.StringIO()
                with redirect_stdout(out), redirect_stderr(io.StringIO()) as err:
                    rc = main(["run", *files, "--output-dir", os.path.join(tmp, "out"), "--no-register", "--methods",
                               "deep,average", "--model", weights, "--deep-device", "cpu", "--json"])
                self.assertEqual(rc, 0, err.getvalue())
                said = json.loads(out.getvalue())["fusion_warnings"]
                self.assertEqual(said["average"], [])
                self.assertEqual(len(said["deep"]), 1)
                self.assertIn("1 x 1 x 5 mm", said["deep"][0])
                self.assertIn(said["deep"][0], err.getvalue())
                with open(os.path.join(tmp, "out", "metrics.json"), encoding="utf-8") as f:
                    self.assertEqual(json.load(f)["fusions"]["deep"]["warnings"], said["deep"])

    def test_two_threads_fusing_with_one_network_leave_it_as_it_was(self):
        """Each fusion puts the network in eval mode on its device and back as it found it: two threads fusing with one
        network (cached weights, or one passed in: the Slicer console, a script) did so under each other, and the
        second took the first's eval mode for "as it was" (a network passed in training mode came back in eval
        mode). One fusion at a time per network; real threads, the second started while the first is running."""
        import threading

        from MultimodalFusionLib.fusion.deep import fuse_arrays, inference

        a, b = _blobs((24, 24), 0), _blobs((24, 24), 1)
        net = self._net().train()
        alone = fuse_arrays(a, b, weights=net, device="cpu", selection="blend")[0]
        first_inside, second_inside = threading.Event(), threading.Event()
        results: dict[str, np.ndarray] = {}
        errors: list[BaseException] = []

        def first_progress(fraction: float, message: str) -> bool:
            if message.startswith("fused"):  # inside predict: the network is in eval mode; let the second run
                first_inside.set()
                second_inside.wait(2.0)  # (set by the old code at once; with the lock, never: 2 s)
            return True

        def second_progress(fraction: float, message: str) -> bool:
            if message.startswith("fused"):
                second_inside.set()
            return True

        def fusing(name: str, progress) -> None:
            try:
                results[name] = fuse_arrays(a, b, weights=net, device="cpu", selection="blend", progress=progress)[0]
            except BaseException as exc:  # noqa: BLE001 - shown by the test below
                errors.append(exc)

        threads = [threading.Thread(target=fusing, args=("first", first_progress)),
                   threading.Thread(target=fusing, args=("second", second_progress))]
        threads[0].start()
        self.assertTrue(first_inside.wait(30))  # the first is fusing
        threads[1].start()
        for thread in threads:
            thread.join(30)
        self.assertEqual(errors, [])
        self.assertTrue(net.training, "the network came back in eval mode")
        self.assertTrue(all(m.training for m in net.modules()))
        for name in ("first", "second"):
            np.testing.assert_array_equal(results[name], alone)
        # the cached weights are shared by every fusion of that file: the same lock for each, a network's own
        self.assertIs(inference._network_lock(net), inference._network_lock(net))
        self.assertIsNot(inference._network_lock(net), inference._network_lock(self._net()))

    def test_predict_and_adapt_wait_for_a_fusion_with_their_network(self):
        """predict() and adapt() are public and use the network given: predict moves it to its device and eval mode,
        adapt copies it. Without fuse_arrays' lock, a predict() or adapt() in one thread ran while a fusion with the
        same network in another had moved it (and would put it back under them): they now wait for it. Real
        threads, the second started while the first is inside the network."""
        import threading

        from MultimodalFusionLib.fusion.deep import fuse_arrays
        from MultimodalFusionLib.fusion.deep.inference import adapt, predict

        a, b = _blobs((24, 24), 0), _blobs((24, 24), 1)
        net = self._net().train()
        alone = predict(self._net(), a, b, device=torch.device("cpu"))[0]
        net.train()
        calls = {"predict": lambda progress: predict(net, a, b, device=torch.device("cpu"), progress=progress)[0],
                 "adapt": lambda progress: adapt(net, a, b, steps=1, device=torch.device("cpu"), progress=progress)}

        def race(name: str) -> tuple[list[bool], dict[str, object]]:
            """A fusion in one thread, calls[name] in another started once the fusion is inside the network."""
            first_inside, second_inside = threading.Event(), threading.Event()
            overlapped: list[bool] = []
            results: dict[str, object] = {}
            errors: list[BaseException] = []

            def first_progress(fraction: float, message: str) -> bool:
                if message.startswith("fused"):  # inside predict, the network in eval mode: let the second go
                    first_inside.set()
                    overlapped.append(second_inside.wait(2.0))  # the old code: at once; with the lock: never
                return True

            def second_progress(fraction: float, message: str) -> bool:
                second_inside.set()
                return True

            def fusing() -> None:
                try:
                    results["fusion"] = fuse_arrays(a, b, weights=net, device="cpu", selection="blend",
                                                    progress=first_progress)[0]
                except BaseException as exc:  # noqa: BLE001 - shown below
                    errors.append(exc)

            def second() -> None:
                try:
                    results[name] = calls[name](second_progress)
                except BaseException as exc:  # noqa: BLE001 - shown below
                    errors.append(exc)

            threads = [threading.Thread(target=fusing), threading.Thread(target=second)]
            threads[0].start()
            self.assertTrue(first_inside.wait(30))
            threads[1].start()
            for thread in threads:
                thread.join(30)
            self.assertEqual(errors, [])
            return overlapped, results

        for name in calls:
            with self.subTest(call=name):
                overlapped, results = race(name)
                self.assertEqual(overlapped, [False], f"{name}() ran inside another thread's fusion with its network")
                np.testing.assert_array_equal(results["fusion"], alone)
                if name == "predict":
                    np.testing.assert_array_equal(results[name], alone)
                    net.train()  # predict leaves it in eval mode (documented)
                else:
                    self.assertIsNot(results[name], net)
                    self.assertTrue(net.training)  # adapt tunes a copy

    def test_a_weights_file_read_slowly_holds_up_no_other_fusion(self):
        """The model cache's lock was held while a weights file was read, and every fusion takes it (for its network's
        lock): a file read from a slow disk (a network share) in one thread held up a fusion with a network passed
        in, or already cached, in another. The file's read is paused here inside the real load_weights (a profile
        hook of that thread, as a slow disk would stall it). Two threads asking for one file still share one
        network; the locks of networks no longer used go with them (a WeakKeyDictionary)."""
        import gc
        import sys
        import threading

        from MultimodalFusionLib.fusion.deep import fuse_arrays, inference, save_weights

        a, b = _blobs((24, 24), 0), _blobs((24, 24), 1)
        in_read, release = threading.Event(), threading.Event()

        def slow_disk(frame, event, arg):
            if event == "call" and frame.f_code.co_name == "load_weights" and not in_read.is_set():
                in_read.set()
                release.wait(30)

        results: dict[str, object] = {}
        errors: list[BaseException] = []

        def reading(key: str, path: str, paused: bool) -> None:
            if paused:
                sys.setprofile(slow_disk)  # this thread only
            try:
                results[key] = fuse_arrays(a, b, weights=path, device="cpu")[0]
            except BaseException as exc:  # noqa: BLE001 - shown below
                errors.append(exc)
            finally:
                sys.setprofile(None)

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "net.safetensors")
            save_weights(self._net(), path)
            reader = threading.Thread(target=reading, args=("file", path, True))
            other = threading.Thread(target=lambda: results.__setitem__(
                "passed", fuse_arrays(a, b, weights=self._net(), device="cpu")[0]))
            same = threading.Thread(target=reading, args=("same file", path, False))
            reader.start()
            try:
                self.assertTrue(in_read.wait(30))
                other.start()
                other.join(10)
                self.assertFalse(other.is_alive(), "a fusion with a network passed in waited for another thread's "
                                                   "weights file to be read")
                same.start()  # waits for the read under way, then shares its network
            finally:
                release.set()
                for thread in (reader, other, same):
                    if thread.ident is not None:
                        thread.join(30)
            self.assertEqual(errors, [])
            np.testing.assert_array_equal(results["file"], results["same file"])
            self.assertEqual(len([k for k in inference._MODEL_CACHE if k[0] == os.path.abspath(path)]), 1)
            with inference._CACHE_LOCK:  # this test's file is gone
                for key in [k for k in inference._MODEL_CACHE if k[0] == os.path.abspath(path)]:
                    del inference._MODEL_CACHE[key]
        # a network's lock lives as long as the network (no entry left per network fused)
        net = self._net()
        fuse_arrays(a, b, weights=net, device="cpu")
        self.assertIn(net, inference._NETWORK_LOCKS)
        before = len(inference._NETWORK_LOCKS)
        del net
        gc.collect()
        self.assertEqual(len(inference._NETWORK_LOCKS), before - 1)

    def test_adaptation_seed(self):
        """Same seed, same result; another seed draws other slices of a volume; a 2D image is adapted on the
        whole image every step, so the seed has nothing to draw there (README)."""
        from MultimodalFusionLib.fusion.deep import fuse_arrays

        vol_a, vol_b = _blobs((8, 16, 16), 0), _blobs((8, 16, 16), 1)
        runs = {(dims, seed): fuse_arrays(vol_a if dims == 3 else vol_a[4], vol_b if dims == 3 else vol_b[4],
                                          weights=self._net(), adapt_steps=2, seed=seed, selection="blend")[0]
                for dims in (2, 3) for seed in (0, 0, 1)}
        again = fuse_arrays(vol_a, vol_b, weights=self._net(), adapt_steps=2, seed=0, selection="blend")[0]
        np.testing.assert_array_equal(runs[3, 0], again)
        self.assertFalse(np.array_equal(runs[3, 0], runs[3, 1]))
        np.testing.assert_array_equal(runs[2, 0], runs[2, 1])

    def test_non_finite_or_empty_arrays_are_refused(self):
        """fuse_arrays (public) let one NaN voxel turn every voxel of the blend and weight map into NaN,
        and an empty array reached torch (RuntimeError)."""
        from MultimodalFusionLib.fusion.deep import fuse_arrays

        a, b = _blobs((20, 20), 0), _blobs((20, 20), 1)
        b[3, 3] = np.nan
        with self.assertRaises(InputError) as caught:
            fuse_arrays(a, b, weights=self._net(), selection="blend")
        self.assertIn("NaN", str(caught.exception))
        with self.assertRaises(InputError) as caught:
            fuse_arrays(np.zeros((0, 5), np.float32), np.zeros((0, 5), np.float32), weights=self._net())
        self.assertIn("empty", str(caught.exception))


@unittest.skipIf(torch is None, "torch/monai not installed")
class DeviceTest(unittest.TestCase):
    """Deep fusion had its own device resolver: it took 'cuda:7' on a one-GPU machine (torch failed later),
    'CUDA:x' and 'cudafoo' as CUDA devices, refused ' CPU ' and read a device of 0 as 'auto'. Deep fusion and
    the torch registration backend now share devices.select_device, each naming its own options in the fix."""

    def test_deep_fusion_and_torch_registration_resolve_devices_alike(self):
        from MultimodalFusionLib.fusion.deep.training import resolve_device
        from MultimodalFusionLib.registration.torch_backend import select_device

        deep_fix = "mmfusion train-fusion --device, mmfusion fuse/run --deep-device, Python device=..."
        for name in ("mps", "gpu", "CUDA:x", "cudafoo", "cuda:-1", "cuda:", 0, "cuda:\u00b2", "cuda:\uff11"):
            for resolver in (resolve_device, select_device):
                with self.subTest(name=name, resolver=resolver.__name__):
                    with self.assertRaises(InputError) as caught:
                        resolver(name)
                    self.assertIn(f"Unknown or unsupported torch device {name!r}", str(caught.exception))
                    self.assertEqual(deep_fix in str(caught.exception), resolver is resolve_device)
        gpu = torch.cuda.is_available()
        for name in (" CPU ", "cpu", "Auto", None):
            for resolver in (resolve_device, select_device):
                with self.subTest(name=name, resolver=resolver.__name__):
                    cpu = name is not None and name.strip().lower() == "cpu"
                    self.assertEqual(resolver(name).type, "cpu" if cpu or not gpu else "cuda")
        if not gpu:
            for name in ("cuda", "cuda:0", "CUDA:0", "cuda:7"):
                for resolver in (resolve_device, select_device):
                    with self.subTest(name=name, resolver=resolver.__name__):
                        with self.assertRaises(InputError) as caught:
                            resolver(name)
                        self.assertIn(f"Device '{name}' was requested but torch sees no CUDA GPU",
                                      str(caught.exception))
                        self.assertEqual(deep_fix in str(caught.exception), resolver is resolve_device)
        else:  # pragma: no cover - no GPU here so far
            past = f"cuda:{torch.cuda.device_count()}"
            for resolver in (resolve_device, select_device):
                with self.assertRaises(InputError) as caught:
                    resolver(past)
                self.assertIn(f"sees {torch.cuda.device_count()} CUDA GPU(s)", str(caught.exception))
            self.assertEqual(resolve_device("CUDA:0"), torch.device("cuda:0"))

    def test_the_cgroup_room_leaves_out_page_cache_and_counts_the_cgroups_above(self):
        """The memory charged to a cgroup counts the page cache of the files it has read or written, which the kernel
        drops before it kills anything: a container with a 3 GiB limit that had written a 2.5 GiB file (a dataset,
        a pip cache) was told 319 MiB were left and train-fusion --patch-size 512 --batch-size 2 (680 MiB) was
        refused; under that very cgroup (v1) it trains, rc 0. A limit on a cgroup above the process's (a systemd
        slice, the container's own) holds it too; "max", missing files and other lines give no limit, no error."""
        from MultimodalFusionLib.devices import _cgroup_room

        gib = 1 << 30
        with tempfile.TemporaryDirectory() as tmp:
            def write(path, text):
                Path(tmp, path).parent.mkdir(parents=True, exist_ok=True)
                Path(tmp, path).write_text(text)

            listing = os.path.join(tmp, "cgroup")
            root = os.path.join(tmp, "fs")
            # v2: the process's cgroup without a limit, the slice above it limited to 3 GiB, 2.5 GiB of it cache
            write("cgroup", "0::/app.slice/run.scope\n")
            write("fs/app.slice/run.scope/memory.max", "max\n")
            write("fs/app.slice/run.scope/memory.current", f"{int(2.6 * gib)}\n")
            write("fs/app.slice/memory.max", f"{3 * gib}\n")
            write("fs/app.slice/memory.current", f"{int(2.7 * gib)}\n")
            write("fs/app.slice/memory.stat", f"anon 100\nfile {int(2.6 * gib)}\ninactive_file {int(2.5 * gib)}\n")
            self.assertEqual(_cgroup_room(listing, root), int(3 * gib - (int(2.7 * gib) - int(2.5 * gib))))
            # v1 (a container's cgroup mounted as the root): total_inactive_file, the hierarchy's
            write("cgroup", "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n")
            write("fs/memory/memory.limit_in_bytes", f"{3 * gib}\n")
            write("fs/memory/memory.usage_in_bytes", f"{int(2.7 * gib)}\n")
            write("fs/memory/memory.stat", f"inactive_file 5\ntotal_inactive_file {int(2.5 * gib)}\n")
            self.assertEqual(_cgroup_room(listing, root), int(3 * gib - (int(2.7 * gib) - int(2.5 * gib))))
            for listed in ("0::/\n", "4:memory:/\n", "garbage\n\n", "0::/gone\n"):
                write("cgroup", listed)
                write("fs/memory.max", "max\n")
                write("fs/memory/memory.limit_in_bytes", f"{(1 << 63) - 4096}\n")
                self.assertIsNone(_cgroup_room(listing, root), listed)
            self.assertIsNone(_cgroup_room(os.path.join(tmp, "none"), root))

    @unittest.skipUnless(CAN_LIMIT, "needs an address-space limit (Linux)")
    def test_an_adaptation_past_the_memory_is_refused_before_its_first_step(self):
        """Per-study adaptation had no memory check: a pair whose step needs more memory than there is (a 4096x4096
        one: about 23 GB, the whole image every step) was killed by the kernel, or CUDA ran out of memory, after
        the wait (and after the registration, in `run`). Each path refuses it before its first step by
        train-fusion's rule, naming the estimate and a fix worded for adaptation: fuse_arrays and fusion.fuse
        (the Slicer Logic's fuseVolumes, `mmfusion fuse`), on a 2D image adapted whole, a volume's slices (2D
        network) and the 3D network's patches (roi_size); `mmfusion run --adapt` before the registration. The
        memory is made small for real: 512 MiB of address space left (ulimit -v), which the CPU's room counts;
        on the old code the same calls ran out of it inside the adaptation (torch's "can't allocate memory")."""
        from MultimodalFusionLib import fusion, pipeline
        from MultimodalFusionLib.fusion.deep import fuse_arrays

        big, volume = _blobs((1024, 1024), 0), _blobs((8, 512, 512), 1)  # 1.3 GiB, 4 slices 1.3 GiB
        # the networks loaded and their memory counted before the limit, as by an earlier fusion
        for weights, small in ((None, _blobs((16, 16), 2)), ("3d", _blobs((8, 16, 16), 2))):
            fuse_arrays(small, 1 - small, weights=weights, adapt_steps=1, device="cpu")
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            for name, arr in (("a", big), ("b", 1 - big)):
                sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp / f"{name}.mha"))
            said = []
            cases = [("2D image", lambda: fuse_arrays(big, 1 - big, adapt_steps=2, device="cpu",
                                                      progress=lambda f, m: said.append(m) or True),
                      "it fine-tunes on the whole 1024x1024-pixel image every step"),
                     ("fusion.fuse", lambda: fusion.fuse(sitk.GetImageFromArray(big), sitk.GetImageFromArray(1 - big),
                                                         "deep", adapt_steps=2, device="cpu"),
                      "the whole 1024x1024-pixel image"),
                     ("volume, 2D network", lambda: fuse_arrays(volume, 1 - volume, adapt_steps=2, device="cpu"),
                      "it fine-tunes on 4 of its 512x512-pixel slices every step"),
                     ("volume, 3D network", lambda: fuse_arrays(volume, 1 - volume, adapt_steps=2, device="cpu",
                                                                weights="3d", roi_size=1024),
                      "4 patches of 512x512x8 voxels every step (roi_size 1024)")]
            with address_space_left(512 << 20):
                for case, call, step in cases:
                    with self.subTest(case):
                        with self.assertRaises(InputError) as caught:
                            call()
                        message = str(caught.exception)
                        self.assertIn("Per-study adaptation (2 step(s): adapt_steps, CLI --adapt) needs about", message)
                        self.assertIn(step, message)
                        self.assertIn("left under this process's address-space limit (ulimit -v)", message)
                        self.assertIn("Fuse without adaptation (adapt_steps=0; CLI: leave out --adapt), or adapt "
                                      "with less: ", message)
                        self.assertIn("roi_size=" if "3D" in case else "cropped to ", message)
                self.assertEqual([m for m in said if "adapting" in m], [])  # not one step
                for argv in (["fuse", str(tmp / "a.mha"), str(tmp / "b.mha"), "--method", "deep", "--adapt", "2",
                              "--deep-device", "cpu", "-o", str(tmp / "fused.mha")],
                             ["run", str(tmp / "a.mha"), str(tmp / "b.mha"), "--methods", "deep", "--adapt", "2",
                              "--deep-device", "cpu", "--stages", "rigid", "--output-dir", str(tmp / "out")]):
                    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()) as err:
                        self.assertEqual(main(argv), 2, err.getvalue())
                    self.assertIn("Per-study adaptation (2 step(s): adapt_steps, CLI --adapt) needs about",
                                  err.getvalue())
                    self.assertFalse((tmp / "fused.mha").exists() or (tmp / "out").exists())
                steps = []  # mmfusion run's pipeline.run: refused once the images are read, before the registration
                with self.assertRaisesRegex(InputError, "Per-study adaptation"):
                    pipeline.run(tmp / "a.mha", tmp / "b.mha", tmp / "out", stages="rigid", methods="deep",
                                 method_params={"deep": {"adapt_steps": 2, "device": "cpu"}},
                                 progress=lambda f, m: steps.append(m) or True)
                self.assertEqual(steps, ["loading images"])
            # what fits is adapted: a 64x64 pair (about 5 MiB a step) under the same limit
            with address_space_left(512 << 20):
                fused, _, used = fuse_arrays(big[:64, :64], 1 - big[:64, :64], adapt_steps=1, device="cpu")
            self.assertEqual(used["adapt_steps"], 1)

    @unittest.skipUnless(CAN_LIMIT, "needs an address-space limit (Linux)")
    def test_an_adaptation_refused_for_memory_names_the_largest_roi_size_that_fits(self):
        """The 3D network's refusal named a cube of the room as the roi_size to give (48 for 512 MiB), but its
        patches keep a volume's sides where it is smaller than roi_size: on 8x512x512 a roi_size of 116 fits the
        same room, and a needlessly small one makes the adaptation and the sliding-window fusion coarser and slower.
        Under the same real limit, the roi_size named less a multiple fits (no refusal) and two multiples more do not
        (the old one, 48, failed the latter)."""
        import re

        from MultimodalFusionLib.fusion.deep.inference import _load_model, check_adaptation_memory
        from MultimodalFusionLib.fusion.deep.training import resolve_device

        config = _load_model("3d", 3)[0].config
        cpu = resolve_device("cpu")
        for shape in ((8, 512, 512), (24, 256, 256)):
            with self.subTest(shape=shape), address_space_left(512 << 20):
                with self.assertRaises(InputError) as caught:
                    check_adaptation_memory(config, shape, steps=2, roi_size=1024, device=cpu)
                roi = int(re.search(r"roi_size=(\d+) or less", str(caught.exception)).group(1))
                # fits (one multiple below: the room shrinks by a MiB or so as this process maps more between calls)
                check_adaptation_memory(config, shape, steps=2, roi_size=roi - config.size_multiple, device=cpu)
                with self.assertRaises(InputError):
                    check_adaptation_memory(config, shape, steps=2, roi_size=roi + 2 * config.size_multiple,
                                            device=cpu)

    @unittest.skipUnless(CAN_LIMIT, "needs an address-space limit (Linux)")
    def test_a_fusion_past_the_memory_is_refused_before_the_network_runs(self):
        """Deep fusion's inference had no memory check (only its adaptation had): a 1536x1536 image, run whole through
        the 2D network (about 1.2 GB of activations), a volume of such slices, or the 3D network's 512x512x8 windows
        ran out of memory inside the network (torch's "can't allocate memory", or the kernel killed the process),
        and in `run` after the registration. Each path refuses it up front, naming the need, the room and the fix:
        fuse_arrays and fusion.fuse (`mmfusion fuse`, the Slicer Logic's fuseVolumes), `mmfusion fuse`, and
        `mmfusion run` (pipeline.run) once the images are read, before the registration. 512 MiB of address space
        left for real (ulimit -v); on the old code the same calls raised torch's RuntimeError, not this. The fix names
        batch_size=1 only where a pass runs more than one slice or window (the 3D network's slab is one window, and
        a batch_size of 4 runs one window a pass: batch_size=1 was named there too and could not help), and the 2D
        network where the 3D one was refused."""
        from MultimodalFusionLib import fusion, pipeline
        from MultimodalFusionLib.fusion.deep import fuse_arrays

        big, volume = _blobs((1536, 1536), 0), _blobs((3, 1536, 1536), 1)
        slab, wide = _blobs((8, 512, 512), 2), _blobs((8, 600, 600), 3)
        for weights, small in ((None, _blobs((16, 16), 2)), ("3d", _blobs((8, 16, 16), 2))):
            fuse_arrays(small, 1 - small, weights=weights, device="cpu")  # the networks loaded before the limit
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            for name, arr in (("a", big), ("b", 1 - big)):
                sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp / f"{name}.mha"))
            said = []
            cases = [("2D image", lambda: fuse_arrays(big, 1 - big, device="cpu",
                                                      progress=lambda f, m: said.append(m) or True),
                      "the whole 1536x1536-pixel image in one pass"),
                     ("fusion.fuse", lambda: fusion.fuse(sitk.GetImageFromArray(big), sitk.GetImageFromArray(1 - big),
                                                         "deep", device="cpu"), "1536x1536 image"),
                     ("volume, 2D network", lambda: fuse_arrays(volume, 1 - volume, device="cpu"),
                      "2 1536x1536-pixel slice(s) a pass, batch_size 2"),
                     ("volume, 3D network", lambda: fuse_arrays(slab, 1 - slab, device="cpu", weights="3d",
                                                                roi_size=1024),
                      "1 512x512x8-voxel window(s) a pass, roi_size 1024 and batch_size 8"),
                     ("volume of 4 windows, 3D network", lambda: fuse_arrays(wide, 1 - wide, device="cpu", weights="3d",
                                                                             roi_size=512, batch_size=4),
                      "1 512x512x8-voxel window(s) a pass, roi_size 512 and batch_size 4")]
            with address_space_left(512 << 20):
                for case, call, run in cases:
                    with self.subTest(case):
                        with self.assertRaises(InputError) as caught:
                            call()
                        message = str(caught.exception)
                        self.assertIn("Deep fusion of the ", message)
                        self.assertIn(run, message)
                        self.assertIn("left under this process's address-space limit (ulimit -v): it would run out of "
                                      "memory", message)
                        self.assertIn("Fuse fewer voxels: the pair cropped, or resampled to a coarser grid, to about ",
                                      message)
                        self.assertEqual("batch_size=1" in message, case == "volume, 2D network")
                        self.assertEqual("the 2D network, which fuses it slice by slice (weights='2d'; CLI --model 2d)"
                                         in message, "3D network" in case)
                self.assertEqual(said, [])  # refused before "deep fusion on cpu"
                for argv in (["fuse", str(tmp / "a.mha"), str(tmp / "b.mha"), "--method", "deep", "--deep-device",
                              "cpu", "-o", str(tmp / "fused.mha")],
                             ["run", str(tmp / "a.mha"), str(tmp / "b.mha"), "--methods", "deep", "--deep-device",
                              "cpu", "--stages", "rigid", "--output-dir", str(tmp / "out")]):
                    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()) as err:
                        self.assertEqual(main(argv), 2, err.getvalue())
                    self.assertIn("Deep fusion of the 1536x1536 image needs about", err.getvalue())
                    self.assertFalse((tmp / "fused.mha").exists() or (tmp / "out").exists())
                steps = []  # pipeline.run: refused once the images are read, before the registration
                with self.assertRaisesRegex(InputError, "Deep fusion of the 1536x1536 image"):
                    pipeline.run(tmp / "a.mha", tmp / "b.mha", tmp / "out", stages="rigid", methods="deep",
                                 method_params={"deep": {"device": "cpu"}},
                                 progress=lambda f, m: steps.append(m) or True)
                self.assertEqual(steps, ["loading images"])

    @unittest.skipUnless(CAN_LIMIT, "needs an address-space limit (Linux)")
    def test_a_fusion_that_fits_in_smaller_batches_runs_in_them_with_the_same_result(self):
        """A volume whose batch of 8 slices (2D network: about 1 GB of activations for 512x512 slices) or of 2
        windows (3D network, 192x192x8 windows) does not fit in 512 MiB, but a smaller batch does, is fused in the
        largest halving of the batch that fits (down to 2: a batch of 1 fused 1e-7 off), bit for bit as the
        unlimited run, and says so in its warnings; on the old code it ran out of memory (torch's RuntimeError)."""
        from MultimodalFusionLib.fusion.deep import fuse_arrays

        volume, slab = _blobs((12, 512, 512), 3), _blobs((8, 256, 512), 4)
        cases = [("2D network", volume, {}, "batches of 2 slices instead of 8"),
                 ("3D network", slab, {"weights": "3d", "roi_size": 192, "batch_size": 16},
                  "batches of 2 sliding windows instead of 4")]
        # the limited runs first: memory the unlimited ones free can stay mapped (glibc's heap), room they would leave
        limited = {}
        for case, arr, params, _ in cases:
            with address_space_left(512 << 20):
                limited[case] = fuse_arrays(arr, 1 - arr, device="cpu", selection="blend", **params)
        for case, arr, params, note in cases:
            with self.subTest(case):
                fused, weight, used = fuse_arrays(arr, 1 - arr, device="cpu", selection="blend", **params)
                self.assertNotIn("warnings", used)
                small_f, small_w, small_used = limited[case]
                np.testing.assert_array_equal(small_f, fused)
                np.testing.assert_array_equal(small_w, weight)
                self.assertEqual(len(small_used["warnings"]), 1)
                self.assertIn(note, small_used["warnings"][0])
                self.assertIn("the same result", small_used["warnings"][0])

    @unittest.skipUnless(CAN_LIMIT, "needs an address-space limit (Linux)")
    def test_the_size_a_refusal_names_fits_under_the_same_limit(self):
        """The refusal's fix named the size that scaled the need to the room (1015x1015 for a 1536x1536 image in
        512 MiB), with no room to spare: a fusion at that size was itself refused (the room shrinks as the process maps
        more) or ran at the edge. The size named now is bisected on the estimate for 90 % of the room
        (inference.SUGGESTED_ROOM), and a fusion at it passes the check and runs under the same real limit (ulimit -v)
        less 5 %; on the old code the size named (1007x1007) was refused there."""
        import re

        from MultimodalFusionLib.fusion.deep import fuse_arrays

        big = _blobs((1536, 1536), 0)
        fuse_arrays(big[:16, :16], 1 - big[:16, :16], device="cpu")  # the network loaded before the limit
        with address_space_left(512 << 20):
            with self.assertRaises(InputError) as caught:
                fuse_arrays(big, 1 - big, device="cpu")
            width, height = (int(v) for v in re.search(r"to about (\d+)x(\d+) or fewer", str(caught.exception)).groups())
            self.assertEqual(width, height)
            self.assertGreater(width, 512)  # not needlessly small either
        # with a margin: it passes the check and runs with 5 % less room (the old code's 1007x1007 was refused)
        with address_space_left(int(0.95 * (512 << 20))):
            fused, _, used = fuse_arrays(big[:height, :width], 1 - big[:height, :width], device="cpu")
        self.assertEqual(fused.shape, (height, width))
        self.assertNotIn("warnings", used)

    def test_the_inference_estimate_counts_the_windows_there_are_and_covers_the_measured_peak(self):
        """inference_memory counted a quarter of batch_size windows a pass even where the volume has fewer (a 96^3
        volume is one 96^3 window: 881 MiB estimated at batch_size 8, 431 measured), and one factor (1.6) over the
        network's live tensors for every pass, where small passes repeated take more (glibc's heap keeps what one
        frees in pieces): a 256x256x8 volume through the 3D network (2 windows of 96x96x8 a pass, 9 passes) peaked at
        94 MiB over an estimate of 82. The windows are counted as MONAI lays them, and the benchmark's measurement of
        that case (benchmarks/deep_fusion_memory.py, its own process) is at or under the estimate; both failed on the
        old code."""
        from monai.data.utils import dense_patch_slices

        from MultimodalFusionLib.fusion.deep.inference import (
            _load_model,
            _window_count,
            _window_sides,
            fusion_pass,
            inference_memory,
        )

        config = _load_model("3d", 3)[0].config
        for shape in ((96, 96, 96), (100, 100, 100), (8, 256, 256), (160, 97, 13), (200, 96, 300)):
            with self.subTest(shape=shape):
                rois = _window_sides(shape, 96, config.size_multiple)
                laid = dense_patch_slices([max(s, r) for s, r in zip(shape, rois)], rois,
                                          [max(1, int(r * 0.75)) if s > r else r for s, r in zip(shape, rois)])
                self.assertEqual(_window_count(shape, rois), len(laid))
        self.assertEqual(fusion_pass(config, (96, 96, 96), 8, 96)[1], 1)
        self.assertEqual(inference_memory(config, (96, 96, 96), 8, 96), inference_memory(config, (96, 96, 96), 4, 96))
        row = _benchmark_row("3d:8x256x256:8")
        self.assertLessEqual(row["measured_mib"], row["estimate_mib"], row)
        # not needlessly cautious: six runs alone measured 81.7-92.9 MiB against the 113.5 estimate (up to 1.39x)
        self.assertLessEqual(row["estimate_mib"], 1.6 * row["measured_mib"], row)

    def test_a_larger_image_is_never_estimated_to_need_less(self):
        """The CPU's factors step down at 2^18 and 2^20 voxels a pass (CPU_MEMORY_FACTORS' rows), and the factor times
        the voxels stepped down with them: a 513x513 image was estimated at 144 MiB, a 512x512 one at 162 (1025^2 524,
        1024^2 568), so a check could refuse an image and pass a larger one. The estimate now never falls as the image
        or the slices grow, with KEEP_FREED_MEMORY on or off; on the old code 513^2 < 512^2."""
        from MultimodalFusionLib.fusion.deep import inference

        config = inference._load_model("2d", 2)[0].config
        saved = inference.KEEP_FREED_MEMORY
        try:
            for keep in (False, True):
                inference.KEEP_FREED_MEMORY = keep
                for shape in (lambda n: (n, n), lambda n: (8, n, n)):
                    needs = [(n, inference.inference_memory(config, shape(n), 8, 96)[0]) for n in range(480, 1120, 1)]
                    for (n, need), (_, larger) in zip(needs, needs[1:]):
                        self.assertLessEqual(need, larger + 8, (keep, shape(n)))  # factor x voxels in floats
        finally:
            inference.KEEP_FREED_MEMORY = saved

    @unittest.skipUnless(sys.platform.startswith("linux"), "KEEP_FREED_MEMORY tunes glibc's malloc (Linux)")
    def test_the_inference_estimate_covers_the_mmfusion_commands_kept_memory(self):
        """The mmfusion command fuses with inference.KEEP_FREED_MEMORY on: glibc serves every block from its heap and
        keeps what a pass frees, so a fusion's peak is higher than the library's default (a 1536x1536 image: 1261 MiB
        against 1043), and the estimate, measured without it, was under it (1170 MiB): a fusion the command's check
        let through could run out of memory. The estimate counts the setting (inference.CPU_KEPT_MEMORY_FACTORS): the
        benchmark's measurement of that case with it on (its own process, --keep-freed-memory) is at or under the
        estimate, not far under; on the old code 1261 > 1170. The same case peaks at 1081-1513 MiB from run to run (in
        steps of one 72 MiB feature map; 1153 in a full make test, where the 1.3x bound this test had failed), so
        "not far under" allows 1.6x."""
        from MultimodalFusionLib.fusion.deep import inference

        config = inference._load_model("2d", 2)[0].config
        saved = inference.KEEP_FREED_MEMORY
        try:
            inference.KEEP_FREED_MEMORY = True
            kept = inference.inference_memory(config, (1536, 1536), 8, 96)
        finally:
            inference.KEEP_FREED_MEMORY = saved
        self.assertGreater(kept[0], inference.inference_memory(config, (1536, 1536), 8, 96)[0])
        row = _benchmark_row("2d:1536", "--keep-freed-memory")
        self.assertTrue(row["keep_freed_memory"])
        self.assertLessEqual(row["measured_mib"], row["estimate_mib"], row)
        self.assertLessEqual(row["estimate_mib"], 1.6 * row["measured_mib"], row)  # not needlessly cautious

    def test_the_inference_estimate_holds_without_torchs_private_dispatch_mode(self):
        """training._kept_per_voxel counted a forward pass's live tensors with torch's private
        torch.utils._python_dispatch.TorchDispatchMode: in 3D Slicer, whose PyTorch extension installs whichever torch
        it finds, a torch without it made every deep fusion fail with an ImportError from deep inside the memory check
        (the old code here: ImportError). Without it (taken out of torch's module, in a process of its own)
        the estimate falls back to training._live_per_voxel_bound, at or above the count for both shipped networks,
        float32 and float16, silently, and a fusion runs."""
        from MultimodalFusionLib.fusion.deep.inference import _load_model
        from MultimodalFusionLib.fusion.deep.training import _kept_per_voxel

        counted = {f"{k}{amp}": _kept_per_voxel(_load_model(k, d)[0].config, amp, inference=True)
                   for k, d in (("2d", 2), ("3d", 3)) for amp in (False, True)}
        code = ("import json, sys, warnings\n"
                "import torch.utils._python_dispatch as dispatch\n"
                "del dispatch.TorchDispatchMode\n"
                "warnings.simplefilter('error')\n"
                "import numpy as np\n"
                "from MultimodalFusionLib.fusion.deep import fuse_arrays\n"
                "from MultimodalFusionLib.fusion.deep.inference import _load_model\n"
                "from MultimodalFusionLib.fusion.deep.training import _kept_per_voxel\n"
                "a = np.linspace(0, 1, 8 * 16 * 16, dtype=np.float32).reshape(8, 16, 16)\n"
                "fuse_arrays(a, 1 - a, device='cpu', weights='3d')\n"
                "print(json.dumps({f'{k}{amp}': _kept_per_voxel(_load_model(k, d)[0].config, amp, inference=True)\n"
                "                  for k, d in (('2d', 2), ('3d', 3)) for amp in (False, True)}))\n")
        root = Path(__file__).resolve().parent.parent
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]))
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              cwd=str(root), env=env)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(done.stderr, "")
        fallback = json.loads(done.stdout.strip().splitlines()[-1])
        for key, count in counted.items():
            with self.subTest(key):
                self.assertGreaterEqual(fallback[key], count)
                self.assertLessEqual(fallback[key], 1.3 * count)

    @unittest.skipUnless(CAN_LIMIT, "needs an address-space limit (Linux)")
    def test_the_memory_limit_of_the_tests_runs_under_a_lower_hard_limit(self):
        """memory_limit.address_space_left (the adaptation memory tests') set VmSize + nbytes as the soft limit: in a
        suite run under a hard `ulimit -v` that leaves less (prlimit --as=2100000000 here: pytest's VmSize was about
        1.9 GB), setrlimit raised ValueError ('current limit exceeds maximum limit') and the tests failed. It never
        raises the limit now (the room is then smaller still, as the tests want) and puts it back after; run in a
        process of its own, so that the limit set here is not this one's."""
        code = ("import resource\n"
                "from memory_limit import address_space_left\n"
                "size = next(int(line.split()[1]) * 1024 for line in open('/proc/self/status') "
                "if line.startswith('VmSize:'))\n"
                "hard = size + (64 << 20)\n"
                "resource.setrlimit(resource.RLIMIT_AS, (hard, hard))\n"
                "with address_space_left(512 << 20):\n"
                "    inside = resource.getrlimit(resource.RLIMIT_AS)\n"
                "print(inside == (hard, hard), resource.getrlimit(resource.RLIMIT_AS) == (hard, hard))\n")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                              cwd=os.path.dirname(os.path.abspath(__file__)))
        self.assertEqual((done.returncode, done.stdout.split()), (0, ["True", "True"]), done.stderr)

    def test_every_deep_caller_refuses_a_bad_device_before_working(self):
        """fuse_arrays, train_fusion (TrainingConfig.check: the CLI calls it before reading the pairs, and the
        device was checked only after all were read) and pipeline.run (before the registration)."""
        from MultimodalFusionLib import pipeline
        from MultimodalFusionLib.fusion.deep import TrainingConfig, fuse_arrays

        a, b = _blobs((4, 16, 16), 0), _blobs((4, 16, 16), 1)
        with self.assertRaises(InputError) as caught:
            fuse_arrays(a, b, weights=None, device="cuda:x")
        self.assertIn("'cuda:x'", str(caught.exception))
        self.assertEqual(fuse_arrays(a, b, device=" CPU ")[2]["device"], "cpu")
        with self.assertRaises(InputError):
            TrainingConfig(device="mps").check()
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            fixed = sitk.GetImageFromArray(_blobs((24, 24), 0))
            with self.assertRaises(InputError) as caught:
                pipeline.run(fixed, fixed, tmp / "run", methods=["deep"], register=False,
                             method_params={"deep": {"device": "CUDA:x"}})
            self.assertIn("'CUDA:x'", str(caught.exception))
            self.assertFalse((tmp / "run").exists())
            # the other settings fuse_arrays refuses without the images or the network: before the registration
            # too (pipeline.run checked only their names and types, so --adapt -1 waited for the registration)
            for bad, named in (({"adapt_steps": -1}, "adapt_steps"), ({"adapt_steps": 1.5}, "adapt_steps"),
                               ({"batch_size": 0}, "batch_size"), ({"selection": "soft"}, "selection"),
                               ({"adapt_lr": -1.0}, "adapt_lr"), ({"loss_weights": "a,b"}, "Loss weights")):
                with self.subTest(bad=bad):
                    with self.assertRaises(InputError) as caught:
                        pipeline.run(fixed, fixed, tmp / "run", methods=["deep"], register=False,
                                     method_params={"deep": bad})
                    self.assertIn(named, str(caught.exception))
                    self.assertFalse((tmp / "run").exists())
            if not torch.cuda.is_available():
                # the command refuses --device cuda before reading any pair (these cannot be read at all)
                for sub in ("MRI", "CT"):
                    (tmp / "broken" / sub).mkdir(parents=True)
                    (tmp / "broken" / sub / "0.png").write_bytes(b"not a png")
                err = io.StringIO()
                with redirect_stdout(io.StringIO()), redirect_stderr(err):
                    rc = main(["train-fusion", "--pairs", str(tmp / "broken"), "--output", str(tmp / "m.safetensors"),
                               "--device", "cuda"])
                self.assertEqual(rc, 2, err.getvalue())
                self.assertIn("sees no CUDA GPU", err.getvalue())
                self.assertIn("train-fusion --device", err.getvalue())
            # the commands take cuda:N (the options offered auto/cpu/cuda only, so a GPU could be picked from
            # Python alone) and refuse other names as the engine does, before any work
            for args in (["train-fusion", "--pairs", str(tmp / "broken"), "--output", str(tmp / "m.safetensors"),
                          "--device"], ["fuse", "a.nii.gz", "b.nii.gz", "-o", "f.nii.gz", "--method", "deep", "--deep-device"]):
                for name, refusal in (("cuda:1", None if torch.cuda.device_count() > 1 else "CUDA GPU"),
                                      ("mps", "invalid device 'mps' (use auto, cpu, cuda or cuda:N)")):
                    if refusal is None:  # pragma: no cover - no machine with two GPUs here
                        continue
                    with self.subTest(command=args[0], device=name):
                        err = io.StringIO()
                        with redirect_stdout(io.StringIO()), redirect_stderr(err):
                            try:
                                rc = main(args + [name])
                            except SystemExit as exit_:  # argparse's refusal
                                rc = exit_.code
                        self.assertEqual(rc, 2, err.getvalue())
                        self.assertIn(refusal, err.getvalue())


@unittest.skipIf(torch is None, "torch/monai not installed")
class SliceAxisTest(unittest.TestCase):
    """The 2D weights fused every volume along the array's first axis (ITK's z): a thick-slice acquisition stored
    with x (or y) as its thick axis was fused in cuts across its slices. It is now sliced across its clearly
    thickest axis, so it fuses as the same data stored with that axis as z; other volumes are fused as before."""

    @staticmethod
    def _image(arr: np.ndarray, spacing: tuple[float, float, float]) -> sitk.Image:
        image = sitk.GetImageFromArray(np.ascontiguousarray(arr))
        image.SetSpacing(spacing)
        return image

    def test_the_axis_rule(self):
        from MultimodalFusionLib.fusion.deep.inference import slice_axis

        # spacing in array order (z, y, x): the thick axis wins only when more than 1.5x each other axis
        for spacing, axis in (((1, 1, 1), 0), ((1, 1, 1.4), 0), ((5, 1, 1), 0), ((1, 1, 5), 2), ((1, 5, 1), 1),
                              ((1, 1, 1.6), 2), ((1, 5, 5), 0), ((4.9, 1, 5), 0), ((0.5, 0.5, 0.5), 0), (None, 0)):
            with self.subTest(spacing=spacing):
                self.assertEqual(slice_axis(spacing), axis)

    def test_a_volume_stored_with_its_thick_axis_along_x_or_y_fuses_as_if_stored_along_z(self):
        from MultimodalFusionLib.fusion import fuse
        from MultimodalFusionLib.fusion.deep import fuse_arrays, fuse_deep

        a, b = _blobs((32, 36, 8), 0), _blobs((32, 36, 8), 1)  # (z, y, x): 8 sagittal slices of 5 mm
        as_z = (2, 0, 1)  # the same voxels with the thick axis first: (x, z, y), spacing (x, y, z) = (1, 1, 5)
        sagittal = [self._image(v, (5.0, 1.0, 1.0)) for v in (a, b)]
        axial = [self._image(v.transpose(as_z), (1.0, 1.0, 5.0)) for v in (a, b)]
        fused_x = fuse(*sagittal, "deep")
        fused_z = fuse(*axial, "deep")
        self.assertEqual((fused_x.parameters["slice_axis"], fused_z.parameters["slice_axis"]), ("x", "z"))
        for name in ("image", "weights"):
            np.testing.assert_allclose(sitk.GetArrayFromImage(getattr(fused_x, name)).transpose(as_z),
                                       sitk.GetArrayFromImage(getattr(fused_z, name)), atol=1e-5)
        # the direct entry point, with per-study adaptation (it draws slices across the thick axis too)
        adapted_x = fuse_deep(*sagittal, adapt_steps=2, selection="blend")
        adapted_z = fuse_deep(*axial, adapt_steps=2, selection="blend")
        np.testing.assert_allclose(sitk.GetArrayFromImage(adapted_x.image).transpose(as_z),
                                   sitk.GetArrayFromImage(adapted_z.image), atol=1e-5)
        # a coronal acquisition (thick y) likewise
        as_y = (0, 2, 1)  # (z, x, y): the 5 mm axis second
        coronal = [self._image(v.transpose(as_y), (1.0, 5.0, 1.0)) for v in (a, b)]
        fused_y = fuse(*coronal, "deep")
        self.assertEqual(fused_y.parameters["slice_axis"], "y")
        np.testing.assert_allclose(sitk.GetArrayFromImage(fused_y.image), sitk.GetArrayFromImage(fused_x.image)
                                   .transpose(as_y), atol=1e-5)
        # and not what the old slicing along the first axis gave
        old, _, used = fuse_arrays(a, b, selection="blend")
        new, _, _ = fuse_arrays(a, b, selection="blend", spacing=(1.0, 1.0, 5.0))
        self.assertEqual(used["slice_axis"], "z")
        self.assertGreater(float(np.abs(old - new).max()), 0.05)

    def test_training_pairs_are_sliced_as_fusion_slices_them(self):
        """A 2D network is trained on slices along the first axis: load_pairs puts the acquisition's slice
        axis there (it gave a sagittal volume stored with x thick as 1 x 5 mm cuts across its slices)."""
        from MultimodalFusionLib.fusion.deep.data import load_pairs, to_training_samples

        a, b = _blobs((32, 36, 8), 0), _blobs((32, 36, 8), 1)  # (z, y, x): 8 sagittal slices of 5 mm
        as_z = (2, 0, 1)
        with tempfile.TemporaryDirectory() as tmp:
            for name, arrays, spacing in (("sagittal", (a, b), (5.0, 1.0, 1.0)),
                                          ("axial", (a.transpose(as_z), b.transpose(as_z)), (1.0, 1.0, 5.0))):
                for sub, arr in zip(("MRI", "CT"), arrays):
                    Path(tmp, name, sub).mkdir(parents=True)
                    sitk.WriteImage(self._image(arr, spacing), str(Path(tmp, name, sub, "0.nii.gz")))
            sagittal, axial = load_pairs(Path(tmp, "sagittal")), load_pairs(Path(tmp, "axial"))
            for got, want in zip(sagittal[0], axial[0]):
                self.assertEqual(got.shape, (8, 32, 36))  # 8 slices of 32 x 36 at 1 mm
                np.testing.assert_array_equal(got, want)
            self.assertEqual(len(to_training_samples(sagittal, 2)), len(to_training_samples(axial, 2)))
            # a 3D network is trained on the volume as stored, as it fuses it
            np.testing.assert_array_equal(load_pairs(Path(tmp, "sagittal"), spatial_dims=3)[0][0].shape, (32, 36, 8))

    def test_other_volumes_are_fused_as_before(self):
        from MultimodalFusionLib.fusion import fuse
        from MultimodalFusionLib.fusion.deep import FusionNetConfig, build_network, fuse_arrays

        a, b = _blobs((12, 20, 16), 0), _blobs((12, 20, 16), 1)
        before = fuse_arrays(a, b, selection="blend")[:2]  # no spacing: the first axis, as always
        # isotropic, nearly so (x 1.4x), thick along z (the first axis), or two thick axes: bit-identical
        for spacing in ((1.0, 1.0, 1.0), (1.0, 1.0, 1.4), (5.0, 1.0, 1.0), (1.0, 5.0, 5.0), (0.5, 0.5, 0.7)):
            with self.subTest(spacing=spacing):
                fused, weight, used = fuse_arrays(a, b, selection="blend", spacing=spacing)
                self.assertEqual(used["slice_axis"], "z")
                np.testing.assert_array_equal(fused, before[0])
                np.testing.assert_array_equal(weight, before[1])
        iso = fuse(self._image(a, (1.0, 1.0, 1.0)), self._image(b, (1.0, 1.0, 1.0)), "deep")
        near = fuse(self._image(a, (1.2, 1.0, 1.0)), self._image(b, (1.2, 1.0, 1.0)), "deep")
        np.testing.assert_array_equal(sitk.GetArrayFromImage(iso.image), sitk.GetArrayFromImage(near.image))
        # a 3D network sees the whole volume: no slicing, nothing recorded
        torch.manual_seed(0)
        net3 = build_network(FusionNetConfig(spatial_dims=3, features=4, channels=(8, 16, 16), strides=(2, 2)))
        used = fuse_arrays(a, b, weights=net3, spacing=(1.0, 1.0, 5.0))[2]
        self.assertNotIn("slice_axis", used)
        self.assertIn("anisotropic", used["warnings"][0])  # (test_a_3d_network_on_..._warns)
        # spacing is the images' geometry: checked when given directly, refused as a fuse() parameter
        for bad in ((1.0, 1.0), (1.0, 0.0, 1.0), (1.0, float("nan"), 1.0), "abc"):
            with self.subTest(spacing=bad), self.assertRaises(InputError) as caught:
                fuse_arrays(a, b, spacing=bad)
            self.assertIn("spacing", str(caught.exception))
        with self.assertRaises(InputError) as caught:
            fuse(self._image(a, (1.0, 1.0, 1.0)), self._image(b, (1.0, 1.0, 1.0)), "deep", spacing=(1, 1, 5))
        self.assertIn("no parameter 'spacing'", str(caught.exception))
        # ... and by fuse_deep, which passes the images' own (it was a TypeError: "multiple values for 'spacing'")
        from MultimodalFusionLib.fusion.deep import fuse_deep

        with self.assertRaises(InputError) as caught:
            fuse_deep(self._image(a, (1.0, 1.0, 1.0)), self._image(b, (1.0, 1.0, 1.0)), spacing=(1, 1, 5))
        self.assertIn("spacing", str(caught.exception))


if __name__ == "__main__":
    unittest.main()
