"""Reports of a fusion: montage PNGs, metrics as JSON, and one self-contained HTML page.

The HTML report has everything inline (images as base64 PNG, CSS in the page, no scripts, no
external resources), so it opens in any browser, from a mail attachment or a USB stick.
Pictures are made with matplotlib's object API (no pyplot state, no display needed). 3D images
are shown as axial, coronal and sagittal slices through the centre, in radiological convention,
as Slicer shows them (patient's right on the viewer's left; anterior up in axial views, superior
up in coronal and sagittal ones, anterior on the left in sagittal ones), each view marked with the
patient's sides (R/L, A/P, S/I); a 2D image is shown as an axial slice in the same convention
(PNG/JPEG slices, which carry no direction, as stored).

Every file is written atomically (temporary file, then rename).
"""

from __future__ import annotations

import base64
import datetime
import html
import io as _bytesio
import math
import os
import re
from typing import Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .fusion.base import FusionResult
from .io import number_text, replacing_outputs, write_bytes, write_json
from .preprocess import reorient_to_lps

__all__ = ["save_montage_png", "write_report", "report_file_patterns", "metrics_chart_png", "write_json",
           "REPORT_METRICS"]

#: Metrics in the report's table and chart (the published set, then PSNR); higher is better for all.
REPORT_METRICS = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM", "PSNR")

_HOW_COMPUTED = (
    "Metrics are computed as the CDDFuse repository's utils/Evaluator.py does (the numbers published "
    "for the Harvard MRI-CT/PET/SPECT sets), on 8-bit grey images: EN entropy (bits); SD standard "
    "deviation; SF spatial frequency; MI = MI(F,A) + MI(F,B) in nats; SCD sum of correlations of "
    "differences; VIF = VIF(A,F) + VIF(B,F); Qabf edge preservation; SSIM = SSIM(F,A) + SSIM(F,B) "
    "(hence up to 2); PSNR in dB against both sources with peak 255 (not Evaluator.py's max(F)). For every "
    "metric, higher is better. In 3D, SF, VIF, Qabf and SSIM are averaged over the acquisition's slices: "
    "a volume whose coarsest voxel axis is more than 1.5x as coarse as each other (a thick-slice "
    "acquisition, whichever axis stores it) is sliced along that axis, as deep fusion slices it; others "
    "along the third voxel axis, z (axial slices when the volume is stored axially).")


def _scored_slices(image: sitk.Image) -> str:
    """The sentence saying which voxel axis a volume on ``image``'s grid was scored in slices along."""
    from .metrics import scored_slice_axis

    axis = scored_slice_axis(image)
    return "" if axis is None else f" This report's volumes were sliced along {axis} (ITK's voxel axis)."


# ----------------------------------------------------------------------------- small helpers

def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png_bytes(fig) -> bytes:
    buf = _bytesio.BytesIO()
    fig.savefig(buf, format="png", dpi=100, facecolor=fig.get_facecolor())
    return buf.getvalue()


def _views(image: sitk.Image) -> list[tuple[str, np.ndarray, float]]:
    """(view name, 2D array (or rows x cols x 3), pixel aspect) to display, as Slicer shows them.

    Radiological convention: patient's right on the viewer's left; anterior up in axial views,
    superior up in coronal and sagittal ones, anterior on the left in sagittal ones. A 2D image is
    an axial slice (its x and y are the patient's L and P axes, as in Slicer): one whose direction
    flips or swaps them (a slice of a NIfTI stored in RAS order) is turned back; PNG/JPEG slices,
    which have no direction (identity), are shown as stored.
    """
    image = reorient_to_lps(image)  # unusual directions: the grid as stored
    if image.GetDimension() == 2:
        sx, sy = image.GetSpacing()
        return [("", sitk.GetArrayFromImage(image), sy / sx)]
    sx, sy, sz = image.GetSpacing()
    if not np.allclose(image.GetDirection(), np.eye(3).ravel(), atol=1e-6) and _orientable(image):
        return _oblique_views(image)
    arr = sitk.GetArrayFromImage(image)  # (z: inferior->superior, y: anterior->posterior, x: right->left)
    nz, ny, nx = arr.shape[:3]
    return [("axial", arr[nz // 2], sy / sx),
            ("coronal", arr[:, ny // 2][::-1], sz / sx),
            ("sagittal", arr[:, :, nx // 2][::-1], sz / sy)]


def _oblique_views(image: sitk.Image) -> list[tuple[str, np.ndarray, float]]:
    """The three views of an oblique volume (its axes turned from the patient's), in the patient's axes
    as Slicer's slice views show it: each a one-voxel slab through the volume's centre, resampled
    (nearest neighbour, so values and colours stay as stored) over the volume's extent on an LPS grid,
    NaN (float) or 0 outside the volume.
    ``image`` is already turned to the nearest axes (DICOMOrient "LPS"), so its spacing is per L, P, S."""
    spacing = np.array(image.GetSpacing())
    size = np.array(image.GetSize())
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
                        for corner in np.array(list(np.ndindex(2, 2, 2))) * (size - 1)])
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint([float(c) for c in (size - 1) / 2.0]))
    counts = np.floor((hi - lo) / spacing + 1e-6).astype(int) + 1
    # beyond the volume's extent there is no data: NaN (not drawn) where the pixels can hold it, so a
    # weight map does not read as "all from the second image" there
    outside = float("nan") if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64) else 0.0
    views = []
    for name, axis in (("axial", 2), ("coronal", 1), ("sagittal", 0)):
        grid_size, origin = counts.copy(), lo.copy()
        grid_size[axis], origin[axis] = 1, centre[axis]
        slab = sitk.Resample(image, [int(n) for n in grid_size], sitk.Transform(), sitk.sitkNearestNeighbor,
                             [float(v) for v in origin], [float(v) for v in spacing], np.eye(3).ravel().tolist(),
                             outside, image.GetPixelID())
        arr = sitk.GetArrayFromImage(slab)  # (z, y, x[, rgb]) with one of them 1 long
        if axis == 2:
            views.append((name, arr[0], spacing[1] / spacing[0]))
        elif axis == 1:
            views.append((name, arr[:, 0][::-1], spacing[2] / spacing[0]))
        else:
            views.append((name, arr[:, :, 0][::-1], spacing[2] / spacing[1]))
    return views


#: Patient side at each edge of a view (left, right, top, bottom), radiological as Slicer's slice views.
_VIEW_SIDES = {"axial": ("R", "L", "A", "P"), "coronal": ("R", "L", "S", "I"), "sagittal": ("A", "P", "S", "I")}


def _orientable(image: sitk.Image) -> bool:
    """Whether :func:`_views` can turn the volume to Slicer's orientation (else it shows the voxel grid
    as stored and the views get no side letters)."""
    probe = sitk.Image([1, 1, 1], sitk.sitkUInt8)
    probe.SetDirection(image.GetDirection())
    try:
        sitk.DICOMOrient(probe, "LPS")
    except RuntimeError:
        return False
    return True


def _label_sides(ax, view_name: str) -> None:
    """Put the patient's sides (R/L, A/P, S/I) at the edges of a view, so a lone PNG reads right."""
    from matplotlib import patheffects

    left, right, top, bottom = _VIEW_SIDES[view_name]
    style = {"color": "yellow", "fontsize": 7, "fontweight": "bold", "transform": ax.transAxes,
             "path_effects": [patheffects.withStroke(linewidth=1.5, foreground="black")]}  # legible on light maps
    ax.text(0.02, 0.5, left, ha="left", va="center", **style)
    ax.text(0.98, 0.5, right, ha="right", va="center", **style)
    ax.text(0.5, 0.98, top, ha="center", va="top", **style)
    ax.text(0.5, 0.02, bottom, ha="center", va="bottom", **style)


def _display_range(arr: np.ndarray) -> tuple[float, float]:
    from .preprocess import robust_range

    return robust_range(arr, 0.5, 99.5)


def _show(ax, view: np.ndarray, aspect: float, *, rng: tuple[float, float] | None = None,
          cmap: str = "gray") -> Any:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_facecolor("black")  # where a view has no data (NaN: beyond an oblique volume), as Slicer shows it
    for spine in ax.spines.values():
        spine.set_visible(False)
    if view.ndim == 3:  # RGB: 8-bit as it is, anything else (16-bit, float 0..1) scaled over ``rng``
        if view.dtype != np.uint8:
            lo, hi = rng if rng is not None else (float(view.min()), float(view.max()))
            view = np.clip((view.astype(np.float64) - lo) / (hi - lo if hi > lo else 1.0) * 255.0, 0, 255)
        return ax.imshow(np.round(view).astype(np.uint8), aspect=aspect, interpolation="nearest")
    lo, hi = rng if rng is not None else _display_range(view)
    return ax.imshow(view, cmap=cmap, vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")


# ----------------------------------------------------------------------------- montage
def _montage_figure(inputs: Mapping[str, sitk.Image], fused: FusionResult):
    if not inputs:
        raise InputError("No input images were given for the montage.", "Pass inputs={'MR': image, 'PET': image}.")
    names = list(inputs)
    a_name = names[0]
    columns: list[tuple[str, sitk.Image, str]] = [(n, inputs[n], "input") for n in names]
    columns.append((f"fused: {fused.method}", fused.image, "fused"))
    if fused.weights is not None:
        columns.append((f"weight of {a_name}", fused.weights, "weights"))
    views = {title: _views(img) for title, img, _ in columns}
    sides = {title: img.GetDimension() == 3 and _orientable(img) for title, img, _ in columns}
    n_rows = len(next(iter(views.values())))
    n_cols = len(columns)
    cell = 2.6
    # each row as tall as its (physical) height/width ratio asks, within reason
    heights = [cell * max(0.5, min(1.8, v.shape[0] * asp / v.shape[1])) for _, v, asp in views[columns[0][0]]]
    fig = _figure(cell * n_cols + 0.9, sum(heights) + 0.6)
    fig.patch.set_facecolor("black")
    axes = fig.subplots(n_rows, n_cols, squeeze=False, gridspec_kw={"height_ratios": heights})
    fig.subplots_adjust(left=0.03, right=0.93, top=0.93, bottom=0.02, wspace=0.04, hspace=0.06)
    for c, (title, img, kind) in enumerate(columns):
        img_views = views[title]
        whole = sitk.GetArrayViewFromImage(img)
        rng = None
        if img.GetNumberOfComponentsPerPixel() > 1 and whole.dtype != np.uint8:
            # one scale for the whole colour image (16-bit or float RGB): a cast to 8 bits would wrap it
            values = np.asarray(whole, dtype=np.float64)
            rng = (float(values.min()), float(values.max()))
        elif kind == "input" and img.GetNumberOfComponentsPerPixel() == 1:
            rng = _display_range(np.asarray(whole, dtype=np.float64))
        elif kind == "fused" and img.GetNumberOfComponentsPerPixel() == 1:
            rng = (0.0, 255.0)
        elif kind == "weights":
            rng = (0.0, 1.0)
        for r, (view_name, arr, aspect) in enumerate(img_views):
            ax = axes[r][c]
            handle = _show(ax, arr, aspect, rng=rng, cmap="coolwarm" if kind == "weights" else "gray")
            if r == 0:
                ax.set_title(title, color="white", fontsize=10, parse_math=False)  # a name's $ is a $
            if c == 0 and view_name:
                ax.set_ylabel(view_name, color="white", fontsize=9)
            if sides[title] and view_name in _VIEW_SIDES:
                _label_sides(ax, view_name)
            if kind == "weights" and r == n_rows - 1:
                bar = fig.colorbar(handle, ax=[axes[k][c] for k in range(n_rows)], fraction=0.05, pad=0.02)
                bar.ax.tick_params(colors="white", labelsize=7)
                bar.set_label(f"1 = {a_name}, 0 = {names[1] if len(names) > 1 else 'b'}", color="white",
                              fontsize=7, parse_math=False)
    return fig


def save_montage_png(path: str | os.PathLike, inputs: Mapping[str, sitk.Image], fused: FusionResult) -> str:
    """A montage: each input, the fused image and the weight (contribution) map, side by side.

    Args:
        path: output PNG.
        inputs: display name -> image, the anatomical (``a``) first, e.g. ``{"MR T1": a, "PET": b}``;
            all on one grid (the functional image resampled onto the anatomical one).
        fused: the fusion result.

    Returns:
        The path written.
    """
    fig = _montage_figure(inputs, fused)
    return write_bytes(path, _png_bytes(fig))


# ----------------------------------------------------------------------------- chart
def metrics_chart_png(metrics: Mapping[str, Mapping[str, float]], keys: Sequence[str] = REPORT_METRICS) -> bytes:
    """Bar chart (one small panel per metric, one bar per method) as PNG bytes."""
    methods = list(metrics)
    keys = [k for k in keys if any(k in metrics[m] for m in methods)]
    n = len(keys)
    cols = min(5, max(1, n))
    rows = max(1, math.ceil(n / cols))
    fig = _figure(3.0 * cols, 2.5 * rows + 0.4)
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf"]
    axes = fig.subplots(rows, cols, squeeze=False)
    for i in range(rows * cols):
        ax = axes[i // cols][i % cols]
        if i >= n:
            ax.set_visible(False)
            continue
        key = keys[i]
        values = [metrics[m].get(key, float("nan")) for m in methods]
        shown = [v if v is not None and math.isfinite(v) else 0.0 for v in values]
        bars = ax.bar(range(len(methods)), shown, color=[palette[j % len(palette)] for j in range(len(methods))])
        for bar, v in zip(bars, values):
            label = f"{v:.2f}" if v is not None and math.isfinite(v) else _fmt(v)  # as the table: inf is ∞
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=7)
        ax.set_title(key + " (higher is better)", fontsize=9)
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels(methods, rotation=35, ha="right", fontsize=7, parse_math=False)
        ax.tick_params(axis="y", labelsize=7)
        ax.margins(y=0.18)
    fig.tight_layout()
    return _png_bytes(fig)


# ----------------------------------------------------------------------------- HTML
_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px auto;max-width:1180px;
color:#1d2733;background:#fafbfc;line-height:1.45}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:28px 0 8px;border-bottom:2px solid #d6dde5;padding-bottom:4px}
h3{font-size:16px;margin:18px 0 6px}.meta{color:#5b6875;font-size:13px}
table{border-collapse:collapse;margin:8px 0;font-size:14px;background:white}
th,td{border:1px solid #d6dde5;padding:5px 9px;text-align:right}th{background:#eef2f6}
td.name,th.name{text-align:left}td.best{background:#d9f2dd;font-weight:600}
img{max-width:100%;border:1px solid #d6dde5;background:black}img.chart{background:white}
.note{font-size:12.5px;color:#5b6875;max-width:1100px}.warn{color:#9a3412;font-weight:600}
.kv td{text-align:left}.card{background:white;border:1px solid #d6dde5;padding:10px 14px;margin:10px 0}
"""


def _fmt(v: Any, infinity: str | None = "∞") -> str:
    """A cell of the report: None and NaN n/a, an infinity ``infinity`` (None: n/a, a registration metric with no
    valid sample point), as :func:`io.number_text` writes them for the console and the panels."""
    if v is None:
        return number_text(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return number_text(v, infinity=infinity)
        text = f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
        return "0.000" if text == "-0.000" else text  # as the console prints it: -0.0002 had shown "-0.000"
    return html.escape(str(v))


def _abs(v: Any) -> Any:
    return abs(v) if isinstance(v, (int, float)) else v


def _short(v: Any) -> str:
    """A parameter value for display: floats to 4 significant digits."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(_short(x) for x in v) + ")"
    return str(v)


def _img_tag(png: bytes, alt: str, cls: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    klass = f' class="{cls}"' if cls else ""
    return f'<img{klass} alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _metrics_table(metrics: Mapping[str, Mapping[str, float]], keys: Sequence[str]) -> str:
    methods = list(metrics)
    best: dict[str, float] = {}
    for k in keys:
        vals = [metrics[m].get(k) for m in methods]
        finite = [v for v in vals if isinstance(v, (int, float)) and math.isfinite(v)]
        if finite and len(methods) > 1:
            best[k] = max(finite)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in keys)
    rows = []
    for m in methods:
        cells = []
        for k in keys:
            v = metrics[m].get(k)
            cls = ' class="best"' if k in best and v == best[k] else ""
            cells.append(f"<td{cls}>{_fmt(v)}</td>")
        rows.append(f'<tr><td class="name">{html.escape(m)}</td>{"".join(cells)}</tr>')
    return f'<table><tr><th class="name">method</th>{head}</tr>{"".join(rows)}</table>'


def _registration_html(registration: Any, extra: Mapping[str, Any] | None) -> str:
    reg = registration.to_dict() if hasattr(registration, "to_dict") else dict(registration or {})
    parts = ['<div class="card"><table class="kv">']
    from .registration.result import settings_rows

    # the preset and seed it ran with (metrics.json's registration.parameters), as the web panel's table shows them
    rows = [("backend", reg.get("backend")), *settings_rows(reg.get("parameters")),
            ("transform", reg.get("transform_type")),
            ("deformable", reg.get("deformable")), ("metric before", reg.get("metric_before")),
            ("metric after", reg.get("metric_after")), ("seconds", reg.get("seconds"))]
    parts.append('<tr><td colspan="2" class="name note">metric as the optimiser reports it: lower is better'
                 "</td></tr>")
    tx = reg.get("transform") or {}
    def vec(values: Sequence[float]) -> str:
        return "(" + ", ".join(f"{v + 0.0:.3f}" for v in values) + ") mm"
    if tx.get("rotation_deg") is not None:
        rows.append(("rotation (degrees)", tx["rotation_deg"]))
    if tx.get("euler_angles_deg") is not None:
        order = "Rz Ry Rx" if tx.get("euler_order") == "ZYX" else "Rz Rx Ry"
        rows.append((f"Euler angles about x, y, z (degrees; ITK's Euler3D, matrix {order})",
                     "(" + ", ".join(f"{v + 0.0:.3f}" for v in tx["euler_angles_deg"]) + ")"))
    # the file's translation is about its centre; the offset (where the origin goes) differs by (M - I) c
    if tx.get("itk_translation_lps") is not None:
        center = tx.get("itk_center_lps")
        rows.append(("translation in the transform file: ITK, LPS, maps fixed → moving points, about the centre "
                     + (vec(center) if center is not None else "(the origin)"), vec(tx["itk_translation_lps"])))
    if tx.get("itk_offset_lps") is not None:
        rows.append(("offset: where the origin goes (ITK, LPS)", vec(tx["itk_offset_lps"])))
    if tx.get("slicer_translation_ras") is not None:
        rows.append(("translation in Slicer's Transforms module: RAS (LR, PA, IS), moves moving → fixed",
                     vec(tx["slicer_translation_ras"])))
    for k, v in rows:  # an infinite number here is a metric with no valid sample point: n/a (it had shown ∞)
        if v is not None:
            parts.append(f"<tr><th class=\"name\">{html.escape(k)}</th><td>{_fmt(v, infinity=None)}</td></tr>")
    parts.append("</table>")
    stages = reg.get("stages") or []
    if stages:
        from .registration.result import RAN_AGAIN_NOTE, iterations_text, ran_again

        # a masked first stage run again (SimpleITK's second try): its iterations and stop reason are the second
        # run's, said beside its name as the CLI's stage line says it (the table had shown them as one run's)
        again = ran_again(reg.get("parameters"))
        # per level, coarsest first: ITK's stop reason ("after 45 iterations") counts its last level only
        parts.append("<table><tr><th class=\"name\">stage</th><th>metric before</th><th>metric after</th>"
                     "<th>iterations per level</th><th>seconds</th><th class=\"name\">stop reason</th></tr>")
        for i, s in enumerate(stages):
            reason = str(s.get("stop_reason", ""))
            reason = reason if len(reason) <= 240 else reason[:239] + "…"
            # a stage whose result was discarded (its metric worse at its end) left the transform before it
            name = str(s.get("name")) + (" (discarded: made the metric worse; the transform before it was kept)"
                                         if s.get("accepted") is False else "")
            name += f" ({RAN_AGAIN_NOTE})" if i == 0 and again else ""
            parts.append(f"<tr><td class=\"name\">{html.escape(name)}</td><td>{_fmt(s.get('metric_before'), None)}"
                         f"</td><td>{_fmt(s.get('metric_after'), None)}</td><td>{html.escape(iterations_text(s))}</td>"
                         f"<td>{_fmt(s.get('seconds'))}</td><td class=\"name\">{html.escape(reason)}</td></tr>")
        parts.append("</table>")
    if extra:
        parts.append("<h3>Alignment before and after registration</h3><table><tr><th class=\"name\"></th>")
        keys = sorted({k for v in extra.values() if isinstance(v, Mapping) for k in v if k != "voxels"})
        # the voxels compared: each state's own overlap, so a user sees before and after counted other voxels
        parts.append("".join(f"<th>{html.escape(k)}</th>" for k in keys) + "<th>voxels compared</th></tr>")
        for name, vals in extra.items():
            if isinstance(vals, Mapping):
                voxels = vals.get("voxels")
                parts.append(f"<tr><td class=\"name\">{html.escape(name)}</td>"
                             + "".join(f"<td>{_fmt(vals.get(k))}</td>" for k in keys)
                             + f"<td>{'n/a' if voxels is None else f'{voxels:.0f}'}</td></tr>")
        parts.append("</table><p class=\"note\">MI: mutual information (nats), NMI: normalised MI (1..2), "
                     "NCC: normalised correlation (its size counts: contrasts such as T1/T2 correlate negatively); "
                     "higher means better aligned. Measured on the fixed image's grid, the moving image resampled "
                     "linearly (before: as the headers place it; after: through the registration), over the fixed "
                     "voxels that state maps inside the moving image (within the fixed mask when one was given), as "
                     "ITK's and ANTs' metrics count them: the voxels compared differ before and after. MI and NMI on "
                     "a 64-bin joint histogram (metrics.alignment_metrics).</p>")
    for w in reg.get("warnings") or []:
        parts.append(f'<p class="warn">Warning: {html.escape(str(w))}</p>')
    parts.append("</div>")
    return "".join(parts)


def _accuracy_summary(accuracy: Mapping[str, Any] | None) -> str:
    """The accuracy's means for the verdict card at the top: mean Dice and HD95, mean TRE, before → after."""
    if not accuracy:
        return ""
    parts = []
    if "labels" in accuracy:
        b, a = accuracy["labels"]["before"]["mean"], accuracy["labels"]["after"]["mean"]
        parts.append(f"mean Dice {_fmt(b.get('dice'))} &rarr; {_fmt(a.get('dice'))}, mean HD95 {_fmt(b.get('hd95'))} "
                     f"&rarr; {_fmt(a.get('hd95'))} mm")
    if "landmarks" in accuracy:
        b, a = accuracy["landmarks"]["before"], accuracy["landmarks"]["after"]
        parts.append(f"mean TRE {_fmt(b.get('mean'))} &rarr; {_fmt(a.get('mean'))} mm")
    return ("<b>Accuracy:</b> " + "; ".join(parts) + ". ") if parts else ""


def _accuracy_html(accuracy: Mapping[str, Any], registered: bool) -> str:
    """The registration's accuracy on labels and landmarks: Dice and HD95 per label and their mean, TRE mean,
    median and max, each before and after, and the notes of what was left out (``mmfusion evaluate-registration``'s
    numbers)."""
    after = "after" if registered else "after (no registration: as they lie)"
    parts = ['<h3>Accuracy on labels and landmarks</h3><div class="card">']
    if "labels" in accuracy:
        before_rows, after_rows = accuracy["labels"]["before"], accuracy["labels"]["after"]
        names = {str(k): v for k, v in (accuracy.get("label_names") or {}).items()}
        parts.append("<table><tr><th class=\"name\">label</th><th>Dice before</th>"
                     f"<th>Dice {html.escape(after)}</th><th>HD95 mm before</th><th>HD95 mm {html.escape(after)}</th>"
                     "</tr>")
        for label, row in after_rows["labels"].items():
            old = before_rows["labels"].get(label, {})
            shown = f"{label} '{names[str(label)]}'" if str(label) in names else str(label)
            parts.append(f"<tr><td class=\"name\">{html.escape(shown)}</td><td>{_fmt(old.get('dice'))}</td>"
                         f"<td>{_fmt(row.get('dice'))}</td><td>{_fmt(old.get('hd95'))}</td>"
                         f"<td>{_fmt(row.get('hd95'))}</td></tr>")
        b, a = before_rows["mean"], after_rows["mean"]
        parts.append(f"<tr><th class=\"name\">mean of {int(a.get('labels') or 0)}</th><th>{_fmt(b.get('dice'))}</th>"
                     f"<th>{_fmt(a.get('dice'))}</th><th>{_fmt(b.get('hd95'))}</th><th>{_fmt(a.get('hd95'))}</th>"
                     "</tr></table>")
    if "landmarks" in accuracy:
        b, a = accuracy["landmarks"]["before"], accuracy["landmarks"]["after"]
        parts.append(f"<table><tr><th class=\"name\">TRE mm, {int(a.get('n') or 0)} landmark pairs</th>"
                     f"<th>before</th><th>{html.escape(after)}</th></tr>")
        for key in ("mean", "median", "max"):
            parts.append(f"<tr><td class=\"name\">{key}</td><td>{_fmt(b.get(key))}</td><td>{_fmt(a.get(key))}</td>"
                         "</tr>")
        parts.append("</table>")
    parts.append("<p class=\"note\">As <code>mmfusion evaluate-registration</code> scores them (its JSON is "
                 "<code>registration_accuracy</code> in metrics.json): before = the images as their headers place "
                 "them, after = through the registration's transform. Dice: overlap of each label (1 = perfect, "
                 "higher is better); HD95: the 95th percentile Hausdorff distance between the label surfaces in mm "
                 "(lower is better); the moving labels resampled nearest-neighbour onto the fixed label map's "
                 "voxels; a label in one map only is left out, as Learn2Reg leaves it out. TRE: target "
                 "registration error, the distance in mm between each moving landmark and its fixed landmark "
                 "taken through the transform (lower is better).</p>")
    for n in accuracy.get("notes") or []:
        parts.append(f'<p class="warn">Note: {html.escape(str(n))}</p>')
    parts.append("</div>")
    return "".join(parts)


def report_file_patterns() -> list[str]:
    """Names of the files :func:`write_report` writes (``*`` stands for a method name)."""
    return ["montage_*.png", "metrics_chart.png", "metrics.json", "report.html"]


def _previous_report_files(output_dir: str, labels: Sequence[str]) -> list[str]:
    """Names an earlier report in ``output_dir`` may have left: its montages by method (any method that can
    run, and this report's), numbered as a method shown twice is (``montage_average_2.png``) or not, never
    ``montage_*.png`` nor ``montage_average_*.png`` (a user's own PNGs: ``montage_average_old.png``, a
    renamed earlier montage, had been removed)."""
    from . import fusion

    methods = list(dict.fromkeys([*fusion.list_methods(), "deep", *labels]))
    names = ["metrics_chart.png", "metrics.json", "report.html"] + [f"montage_{m}.png" for m in methods]
    numbered = re.compile("montage_(?:" + "|".join(re.escape(m) for m in methods) + r")_[0-9]+\.png",
                          re.IGNORECASE if os.path.normcase("A") == "a" else 0)  # as io.replacing_outputs matches
    if os.path.isdir(output_dir):
        names += [n for n in os.listdir(output_dir) if numbered.fullmatch(n)]
    return names


def write_report(output_dir: str | os.PathLike, *, inputs: Mapping[str, sitk.Image], fusions: Sequence[FusionResult],
                 metrics: Mapping[str, Mapping[str, float]], registration: Any = None,
                 registration_metrics: Mapping[str, Mapping[str, float]] | None = None,
                 title: str = "MultimodalFusion report", notes: Sequence[str] = (),
                 keep: Sequence[str | os.PathLike] = (),
                 registration_accuracy: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Write the montage PNGs, ``metrics.json``, ``metrics_chart.png`` and one self-contained ``report.html``.

    Args:
        output_dir: folder (created if needed).
        inputs: display name -> image on the fused grid, anatomical first.
        fusions: the fusion results to show (one montage each).
        metrics: method -> metrics dict (from :func:`MultimodalFusionLib.metrics.fusion_metrics`).
        registration: the RegistrationResult (or its ``to_dict()``), when the job registered.
        registration_metrics: e.g. ``{"before": {...}, "after": {...}}`` from
            :func:`MultimodalFusionLib.metrics.alignment_before_after` (each with its "voxels" compared).
        title: page title.
        notes: extra lines shown under the title (e.g. the inputs' file names).
        registration_accuracy: the registration's accuracy on labels and landmarks, before and after
            (:func:`MultimodalFusionLib.evaluation.evaluate_accuracy`, ``mmfusion evaluate-registration --json``'s
            dict): in ``metrics.json`` as ``registration_accuracy``, and a before/after table on the page.
        keep: files never removed, whatever their names (the job's inputs and outputs, when they live in
            ``output_dir``: an input named ``montage_average.png`` there is not an earlier report's).

    Returns:
        dict: "html", "metrics_json", "chart", and "montage_<method>" -> path.

    The files replace those of an earlier report in ``output_dir`` as a whole (:func:`io.replacing_outputs`):
    written into a staging folder and moved in once all are written, the earlier report's montages of
    methods not shown this time removed; a report that fails half-way leaves the earlier one as it was.
    """
    if not fusions:
        raise InputError("No fusion results were given to the report.", "Fuse at least one method first.")
    out = os.fspath(output_dir)
    labels: list[str] = []  # one per result: the method, numbered when a method comes more than once
    seen: dict[str, int] = {}
    for res in fusions:
        seen[res.method] = seen.get(res.method, 0) + 1
        labels.append(res.method if seen[res.method] == 1 else f"{res.method}_{seen[res.method]}")
    with replacing_outputs(out, previous=_previous_report_files(out, labels), keep=keep) as stage:
        written = _write_report_files(stage, inputs=inputs, fusions=fusions, labels=labels, metrics=metrics,
                                      registration=registration, registration_metrics=registration_metrics,
                                      title=title, notes=notes, registration_accuracy=registration_accuracy)
    return {key: os.path.join(out, os.path.basename(path)) for key, path in written.items()}


def _write_report_files(out: str, *, inputs: Mapping[str, sitk.Image], fusions: Sequence[FusionResult],
                        labels: Sequence[str], metrics: Mapping[str, Mapping[str, float]], registration: Any,
                        registration_metrics: Mapping[str, Mapping[str, float]] | None, title: str,
                        notes: Sequence[str], registration_accuracy: Mapping[str, Any] | None = None
                        ) -> dict[str, str]:
    """:func:`write_report`'s files, written into ``out`` (its staging folder); ``labels``: one per fusion."""
    paths: dict[str, str] = {}
    montage_pngs: list[tuple[FusionResult, bytes]] = []
    for res, label in zip(fusions, labels):
        png = _png_bytes(_montage_figure(inputs, res))
        paths[f"montage_{label}"] = write_bytes(os.path.join(out, f"montage_{label}.png"), png)
        montage_pngs.append((res, png))
    chart = metrics_chart_png(metrics) if metrics else None
    if chart is not None:
        paths["chart"] = write_bytes(os.path.join(out, "metrics_chart.png"), chart)
    created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    first = next(iter(inputs.values()))
    how = _HOW_COMPUTED + _scored_slices(first)
    payload = {
        "title": title,
        "created": created,
        "how_computed": how,
        "inputs": {name: {"size": list(img.GetSize()), "spacing": list(img.GetSpacing())}
                   for name, img in inputs.items()},
        # a fusion's warnings (deep fusion's anisotropy), as the registration's are in its to_dict(): they had been
        # printed by the CLI only, and neither this file nor the page said them
        "fusions": {label: {"parameters": r.parameters, "seconds": r.seconds, "warnings": list(r.warnings)}
                    for label, r in zip(labels, fusions)},
        "metrics": metrics,
        "registration": registration,
        "registration_metrics": registration_metrics,
    }
    if registration_accuracy is not None:  # the keys of `mmfusion evaluate-registration --json`
        payload["registration_accuracy"] = registration_accuracy
    paths["metrics_json"] = write_json(os.path.join(out, "metrics.json"), payload)

    dims = "x".join(str(s) for s in first.GetSize())
    spacing = " x ".join(f"{s:.3g}" for s in first.GetSpacing())
    body = [f"<h1>{html.escape(title)}</h1>",
            f'<p class="meta">{created} · {len(inputs)} inputs on a {dims} grid ({spacing} mm) · '
            f"{len(fusions)} fusion method(s)</p>"]
    body += [f'<p class="meta">{html.escape(str(n))}</p>' for n in notes]
    if registration_metrics and "before" in registration_metrics and "after" in registration_metrics:
        b, a = registration_metrics["before"], registration_metrics["after"]
        gain = (a.get("MI") or 0.0) - (b.get("MI") or 0.0)
        if abs(gain) <= 1e-6 * max(1.0, abs(b.get("MI") or 0.0)):
            # MI unchanged: so it is when the images did not move, but also when they hold too little
            # for MI to notice a move (a lone bright voxel); the correlation then decides
            gain = abs(a.get("NCC") or 0.0) - abs(b.get("NCC") or 0.0)
        if b.get("voxels") == 0 and a.get("voxels"):
            # images that did not overlap as they lay ("before" NaN over 0 voxels, alignment_before_after) and do
            # now: the NaN gain had read as "did NOT improve" after a registration from their centres
            verdict = "alignment improved (the images did not overlap before it)"
        elif a.get("voxels") is not None and a["voxels"] < 2:
            # through the transform the moving image covers (almost) none of the fixed image: nothing to compare
            verdict = "alignment did NOT improve: through the transform the moving image covers none of the fixed image"
        elif abs(gain) <= 1e-6:
            verdict = "alignment unchanged (already aligned, or the starting position was kept)"
        elif gain > 0:
            verdict = "alignment improved"
        else:
            verdict = "alignment did NOT improve: check the images"
        body.append(f'<div class="card"><b>Registration:</b> {verdict} (mutual information {_fmt(b.get("MI"))} '
                    f'&rarr; {_fmt(a.get("MI"))} nats, |correlation| {_fmt(_abs(b.get("NCC")))} &rarr; '
                    f'{_fmt(_abs(a.get("NCC")))}). '
                    + _accuracy_summary(registration_accuracy) + "Details at the end.</div>")
    body.append("<h2>Fused images</h2><p class=\"note\">Columns: each input, the fused image, and the weight "
                "map (how much of the first input each voxel carries: red = first input, blue = second). "
                "3D images show axial, coronal and sagittal slices through the centre, as Slicer shows "
                "them (radiological convention): patient's right on the left, anterior up in axial views, "
                "superior up in coronal and sagittal ones (anterior on the left); yellow letters mark the "
                "patient's sides (R/L, A/P, S/I). 2D images are shown as axial slices in the same convention "
                "(PNG/JPEG slices, which carry no orientation, as stored).</p>")
    for res, png in montage_pngs:
        params = ", ".join(f"{k}={_short(v)}" for k, v in res.parameters.items()) or "defaults"
        body.append(f"<h3>{html.escape(res.method)}</h3>")
        body.append(_img_tag(png, f"montage of the {res.method} fusion"))
        body.append(f'<p class="note">parameters: {html.escape(params)}; {res.seconds:.2f} s</p>')
        # under its montage, as the registration's warnings are under its section
        body += [f'<p class="warn">Warning: {html.escape(str(w))}</p>' for w in res.warnings]
    if metrics:
        keys = [k for k in REPORT_METRICS if any(k in v for v in metrics.values())]
        body.append("<h2>Fusion quality</h2>")
        body.append(_metrics_table(metrics, keys))
        extra = [k for k in ("MI_mean", "VIF_mean", "SSIM_mean") if any(k in v for v in metrics.values())]
        if extra:
            body.append("<p class=\"note\">Single-source averages (half the sums above):</p>")
            body.append(_metrics_table(metrics, extra))
        body.append(f'<p class="note">{html.escape(how)} The best value of each column is '
                    "highlighted; no single metric decides which fusion reads best clinically.</p>")
        if chart is not None:
            body.append(_img_tag(chart, "bar chart of the fusion metrics per method", cls="chart"))
    if registration is not None or registration_metrics:
        body.append("<h2>Registration</h2>")
        body.append(_registration_html(registration, registration_metrics))
    if registration_accuracy:
        body.append(_accuracy_html(registration_accuracy, registered=registration is not None))
    page = ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>\n")
    paths["html"] = write_bytes(os.path.join(out, "report.html"), page.encode("utf-8"))
    return paths
