"""How far can any way of composing the two sources go on the Harvard goal? A sweep, per pair set.

Usage::

    python benchmarks/fusion_composition_sweep.py --data /path/to/harvard_fusion_pairs [--sets MRI_SPECT]

The deep-fusion goal is: above CDDFuse's published row on at least 5 of the 8 metrics, and above
every classic method on Qabf and VIF. This script asks whether the goal is reachable at all on the
given pairs by composing the MRI (A) and the functional image's luminance (B) in the ways the
fusion literature uses, with the shipped network's weight map ``w`` where a rule needs one:

- deep: the shipped network, hard selection and blend;
- pyramid: Laplacian pyramid, 1-3 levels, base from ``w`` or max, details by local energy or ``w``,
  detail gain 1 or 1.5 (Liu et al. 2017 style CNN-weighted pyramid);
- additive: ``A + c * B`` (share c of B; a global contrast gain would cancel in the stretch below);
- modulation: ``A * (1 + k * B) + c * B`` (anatomy modulated by function);
- gradient domain: screened Poisson reconstruction from the stronger source gradient (gain 1/1.2)
  with a base from ``w`` or max.

It prints, per set, the best configurations (by metrics above CDDFuse, then Qabf + VIF) and how many
meet the whole goal. Metrics as ``benchmarks/fusion_harvard.py`` (CDDFuse's Evaluator.py on 8-bit
grey images; every composition min-max stretched to 0..255 first, as CDDFuse's test_MIF.py does to
its output, or clipped to 0..1 with ``--scaling none``). A research aid: the parameters it sweeps
were never used to choose the shipped defaults.

It also prints a control that is not a fusion method: the default output with invisible noise (0-3
grey levels) added where both sources are black. It shows how far EN, a count of occupied grey
levels, rises with nothing a reader would call better fusion, and so why "metrics above CDDFuse" is
not chased with such tricks here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

# The checkout this script lies in comes first, installed or not, so that it is the one measured.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from MultimodalFusionLib import io, metrics  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fusion_harvard import CDDFUSE_PUBLISHED, KEYS, SETS, _pairs, cddfuse_saved, run_set  # noqa: E402

CLASSICS = ("average", "max", "pca", "wavelet", "laplacian", "overlay")


def _grey8(path: Path) -> np.ndarray:
    """A PNG as the metrics see it: 8-bit grey, colour taken to its rounded BT.601 luminance."""
    return metrics.to_8bit(io.read_image(path, keep_color=True))


def _score(f01: np.ndarray, a8: np.ndarray, b8: np.ndarray, scaling: str = "cddfuse") -> np.ndarray:
    """Metrics of a composition of 0..1 images: min-max stretched as CDDFuse's test_MIF.py does, or clipped."""
    f8 = cddfuse_saved(f01) if scaling == "cddfuse" else np.clip(np.round(np.clip(f01, 0.0, 1.0) * 255.0), 0, 255)
    m = metrics.fusion_metrics(f8, a8.astype(np.uint8), b8.astype(np.uint8))
    return np.array([m[k] for k in KEYS])


def _grad(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gy, gx = np.zeros_like(x), np.zeros_like(x)
    gx[:, :-1] = x[:, 1:] - x[:, :-1]
    gy[:-1, :] = x[1:, :] - x[:-1, :]
    return gy, gx


def _div(gy: np.ndarray, gx: np.ndarray) -> np.ndarray:
    dx, dy = np.zeros_like(gx), np.zeros_like(gy)
    dx[:, 0], dx[:, 1:-1], dx[:, -1] = gx[:, 0], gx[:, 1:-1] - gx[:, :-2], -gx[:, -2]
    dy[0, :], dy[1:-1, :], dy[-1, :] = gy[0, :], gy[1:-1, :] - gy[:-2, :], -gy[-2, :]
    return dx + dy


def _poisson(a: np.ndarray, b: np.ndarray, base: np.ndarray, gain: float, lam: float) -> np.ndarray:
    from scipy.fft import dctn, idctn

    ga, gb = _grad(a), _grad(b)
    pick = np.hypot(*ga) >= np.hypot(*gb)
    gy, gx = gain * np.where(pick, ga[0], gb[0]), gain * np.where(pick, ga[1], gb[1])
    rhs = lam * base - _div(gy, gx)
    n0, n1 = base.shape
    k0 = 2 - 2 * np.cos(np.pi * np.arange(n0) / n0)
    k1 = 2 - 2 * np.cos(np.pi * np.arange(n1) / n1)
    return idctn(dctn(rhs, norm="ortho") / (lam + k0[:, None] + k1[None, :]), norm="ortho")


def _pyramid(a: np.ndarray, b: np.ndarray, w: np.ndarray, levels: int, base: str, detail: str,
             gain: float) -> np.ndarray:
    from scipy import ndimage

    from MultimodalFusionLib.fusion.classic import _expand, _laplacian_pyramid, _reduce

    level_axes = [tuple(range(a.ndim))] * levels  # every axis halved at every level (2D slices)
    pa, pb = _laplacian_pyramid(a, level_axes, 1.0), _laplacian_pyramid(b, level_axes, 1.0)
    pw = [np.where(w >= 0.5, 1.0, 0.0)]
    for _ in range(levels):
        pw.append(_reduce(pw[-1], 1.0))
    out = []
    for i, (la, lb) in enumerate(zip(pa[:-1], pb[:-1])):
        if detail == "energy":
            ea, eb = ndimage.uniform_filter(la ** 2, 3), ndimage.uniform_filter(lb ** 2, 3)
            out.append(gain * np.where(ea >= eb, la, lb))
        else:
            out.append(gain * (pw[i] * la + (1 - pw[i]) * lb))
    out.append(pw[-1] * pa[-1] + (1 - pw[-1]) * pb[-1] if base == "w" else np.maximum(pa[-1], pb[-1]))
    current = out[-1]
    for layer in reversed(out[:-1]):
        current = layer + _expand(current, layer.shape)
    return current


def _structure_select(a: np.ndarray, b: np.ndarray, w: np.ndarray, sigma: float, k: float) -> np.ndarray:
    """Each pixel copied from the source whose local Sobel energy is over ``k`` times the other's, else as ``w``."""
    from scipy import ndimage

    ea, eb = (ndimage.gaussian_filter(ndimage.sobel(x, 0) ** 2 + ndimage.sobel(x, 1) ** 2, sigma) for x in (a, b))
    pick_a = np.where(ea > k * eb, True, np.where(eb > k * ea, False, w >= 0.5))
    return np.where(pick_a, a, b)


def candidates() -> dict:
    """name -> f(a, b, hard, blend, w) for every configuration of the sweep."""
    c = {"deep hard (default)": lambda a, b, h, bl, w: h, "deep blend": lambda a, b, h, bl, w: bl}
    for levels in (1, 2, 3):
        for base in ("w", "max"):
            for detail in ("energy", "w"):
                for gain in (1.0, 1.5):
                    c[f"pyramid L{levels} base={base} detail={detail} x{gain}"] = (
                        lambda a, b, h, bl, w, L=levels, bs=base, d=detail, g=gain: _pyramid(a, b, w, L, bs, d, g))
    for share in (0.15, 0.3, 0.5, 0.75, 1.0):
        c[f"additive A + {share}*B"] = lambda a, b, h, bl, w, s=share: a + s * b
    for k in (0.3, 0.6, 1.0):
        for share in (0.0, 0.1, 0.2):
            c[f"modulation A*(1+{k}*B) + {share}*B"] = lambda a, b, h, bl, w, k=k, s=share: a * (1 + k * b) + s * b
    for gain in (1.0, 1.2):
        for base in ("w", "max"):
            for lam in (0.01, 0.1):
                c[f"gradient domain x{gain} base={base} lambda={lam}"] = (
                    lambda a, b, h, bl, w, g=gain, bs=base, lm=lam: _poisson(
                        a, b, h if bs == "w" else np.maximum(a, b), g, lm))
    for sigma in (1.0, 2.0, 4.0):
        for k in (1.0, 2.0, 4.0):
            c[f"structure-aware selection sigma={sigma} k={k}"] = (
                lambda a, b, h, bl, w, sg=sigma, kk=k: _structure_select(a, b, w, sg, kk))
    return c


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="folder with MRI_CT, MRI_PET, MRI_SPECT (CDDFuse's layout)")
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated sets (default all)")
    parser.add_argument("--top", type=int, default=8, help="configurations listed per set")
    parser.add_argument("--scaling", choices=("cddfuse", "none"), default="cddfuse",
                        help="cddfuse (default): min-max stretch each composition to 0..255 as CDDFuse's test_MIF.py; "
                             "none: clip it to 0..1")
    args = parser.parse_args(argv)
    root = Path(args.data)
    if not root.is_dir():
        parser.error(f"--data {root} is not a folder")
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = [s for s in sets if s not in SETS]
    if unknown or not sets:
        parser.error(f"--sets {args.sets}: unknown set(s) {unknown}; use a comma-separated list of {', '.join(SETS)}")
    from bench_machine import describe

    from MultimodalFusionLib.fusion.deep import fuse_arrays

    cands = candidates()
    print(f"data: {root.resolve()}")
    print(describe("cpu"))  # the network's weight maps are computed on the CPU (device="cpu" below)
    found = 0
    for name in sets:
        pairs = _pairs(root, name, SETS[name], None)
        if not pairs:
            print(f"({name}: no pairs found under {root / name})")
            continue
        found += 1
        sums = {k: np.zeros(len(KEYS)) for k in cands}
        control = np.zeros(len(KEYS))
        rng = np.random.default_rng(0)
        for mri, fun in pairs:
            a8, b8 = _grey8(mri), _grey8(fun)
            a, b = a8 / 255.0, b8 / 255.0
            blend, w, _ = fuse_arrays(a, b, selection="blend", device="cpu")
            hard = np.where(w >= 0.5, a, b)
            for cname, fn in cands.items():
                sums[cname] += _score(fn(a, b, hard, blend, w), a8, b8, args.scaling)
            black = (a8 == 0) & (b8 == 0)
            control += _score(np.round(hard * 255.0) / 255.0 + black * rng.integers(0, 4, a8.shape) / 255.0, a8, b8,
                              args.scaling)
        means = {k: v / len(pairs) for k, v in sums.items()}
        # the classic methods exactly as benchmarks/fusion_harvard.py runs them (colour handling included)
        classic = run_set(root, name, list(CLASSICS), None, args.scaling)["methods"]
        means.update({m: np.array([classic[m][k] for k in KEYS]) for m in CLASSICS})
        pub = np.array([CDDFUSE_PUBLISHED[name][k] for k in KEYS])
        iq, iv = KEYS.index("Qabf"), KEYS.index("VIF")
        best_q = max(means[m][iq] for m in CLASSICS)
        best_v = max(means[m][iv] for m in CLASSICS)
        rows = []
        for cname in cands:
            v = means[cname]
            wins = int((v > pub).sum())
            goal = wins >= 5 and v[iq] > best_q and v[iv] > best_v
            rows.append((wins, v[iq] + v[iv], cname, v, goal))
        rows.sort(key=lambda r: (r[0], r[1]), reverse=True)
        print(f"\n**{name.replace('_', '-')}** ({len(pairs)} pairs; {len(cands)} configurations; best classic "
              f"Qabf {best_q:.3f}, VIF {best_v:.3f})\n")
        print("| configuration | " + " | ".join(KEYS) + " | above CDDFuse | goal |")
        print("|---" * (len(KEYS) + 3) + "|")
        for wins, _, cname, v, goal in rows[: args.top]:
            print(f"| {cname} | " + " | ".join(f"{x:.3f}" for x in v) + f" | {wins}/8 | {'yes' if goal else 'no'} |")
        print("| CDDFuse (published, full set) | " + " | ".join(f"{x:.2f}" for x in pub) + " | | |")
        ctl = control / len(pairs)
        print("| *control, not a method: deep hard + 0-3 grey levels of noise where both sources are black* | "
              + " | ".join(f"{x:.3f}" for x in ctl) + f" | {int((ctl > pub).sum())}/8 | |")
        met = [r for r in rows if r[4]]
        above_both = [r for r in rows if r[3][iq] > best_q and r[3][iv] > best_v]
        print(f"\nconfigurations meeting the whole goal: {len(met)} of {len(rows)}; above every classic on Qabf "
              f"and VIF: {len(above_both)}" + (f" (most metrics above CDDFuse among them: "
                                               f"{max(r[0] for r in above_both)}/8)" if above_both else ""))
    return 0 if found else 1  # as fusion_harvard.py: nothing scored is not a success


if __name__ == "__main__":
    sys.exit(main())
