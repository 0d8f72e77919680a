"""The trame-slicer web application: panel, quad layout and the engine behind them.

``mmfusion web`` calls :func:`serve`. One browser page shows a panel (load the fixed and
moving volumes from server paths or by upload; preset, stages, initializer, seed, Register with progress and
Cancel; fusion method, each image's fusion window (a preset or window and level), Fuse; foreground opacity, colour table and layer; background
window/level (Auto, Slicer's CT presets, window and level, or a left-drag in a slice view as in
Slicer) and the foreground's lower threshold
and upper display limit; volume-rendering preset; metrics table; downloads of the transform, the fused volume and the HTML report)
next to Slicer's quad layout (axial, sagittal, coronal, 3D), rendered on the server by
Slicer's own libraries (trame-slicer, slicer-core) and streamed as images.

Engine work runs on :class:`~MultimodalFusionLib.web.worker.BackgroundWorker`'s thread;
the scene is updated on the server's event loop when a job has finished. Every engine call
is the same public function the CLI and the Slicer module use: ``io.read_image``,
``registration.register``, ``preprocess.resample``, ``fusion.fuse``,
``metrics.fusion_metrics``/``registration_metrics``, ``report.write_report``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import math
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

import SimpleITK as sitk

from ..errors import InputError
from ..io import BINARY_UNITS as _BINARY_UNITS
from ..io import missing_data_file, number_text, size_text
from ..preprocess import COMPUTE_MASK, CT_WINDOWS
from ..registration.parameters import INITIALIZER_HELP, INITIALIZERS, MAX_SEED
from ..validation import whole_number
from .message_gate import _shown_args as _shown  # a value a client sent, for a message: its repr, cut short
from .offscreen import configure_offscreen_rendering

__all__ = ["FusionWebApp", "serve", "parse_origin", "websocket_refusal", "STAGE_CHOICES", "INITIALIZER_CHOICES", "QUAD_LAYOUT_ID",
           "CLIENT_KEYS", "parse_size", "DEFAULT_MAX_UPLOAD", "DEFAULT_MAX_STORED_UPLOADS",
           "DEFAULT_MAX_SESSION_UPLOAD"]

logger = logging.getLogger(__name__)

STAGE_CHOICES = ("rigid", "affine", "bspline")
QUAD_LAYOUT_ID = "Fusion quad"
#: The layout of a 2D pair: the axial view alone (Slicer's "Red slice only")
AXIAL_LAYOUT_ID = "Fusion axial"
#: The registration's start, as the CLI's ``--initializer`` (and the Slicer panel's Initializer): ""
#: leaves it to the preset (geometry without one). Each value's help is shown under the choice.
INITIALIZER_CHOICES = (
    {"value": "", "title": "(preset)", "help": "The preset's start (geometry without a preset)."},
    *({"value": name, "title": name, "help": INITIALIZER_HELP[name]} for name in INITIALIZERS),
)
#: The state keys a page sets (its controls' values); every other key the app sets is
#: the server's, and a page's write to it is put back (:class:`~MultimodalFusionLib.web.server_state.ServerState`).
CLIENT_KEYS = frozenset({
    "fixed_path", "moving_path", "fixed_series", "moving_series", "preset", "stages", "seed", "initializer",
    "method", "colormap", "fg_opacity", "fg_layer", "vr_preset", "wl_preset", "bg_window", "bg_level",
    "fg_lower", "fg_upper", *(f"fw_{side}_{what}" for side in "ab" for what in ("preset", "window", "level"))})
#: Server keys a page may clear (set to "" or None): the banner, by its close button.
_PAGE_CLEARABLE_KEYS = ("error_message",)
#: The fields each button acts on, whose values the page sends with the click where it has not sent them yet (see
#: ``_sent`` and ``FusionWebApp._take_page_values``): Load's paths and DICOM series, Register's settings (its seed
#: among them: a seed typed and Register clicked at once registers with that seed), Fuse's method and each image's
#: fusion window
_LOAD_FIELDS = ("fixed_path", "moving_path", "fixed_series", "moving_series")
_REGISTER_FIELDS = ("preset", "stages", "seed", "initializer")
_FUSE_FIELDS = ("method", *(f"fw_{side}_{what}" for side in "ab" for what in ("preset", "window", "level")))
_FG_LAYERS = [{"title": "Functional (moving, registered)", "value": "functional"},
              {"title": "Fused image", "value": "fused"},
              {"title": "Weight map", "value": "weights"}]
_RESULT_LAYERS = ("fused", "weights")  # the layers of a fusion's result: shown as such, the others as functional
# Metrics shown in the table, in this order (fusion_metrics returns more; the report has all).
_FUSION_METRIC_KEYS = ("EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM", "PSNR")
# Background window/level choices besides the CT presets (3D Slicer's Volumes module names).
_WL_AUTO, _WL_MANUAL = "auto", "manual"
_WL_BASE_CHOICES = [{"title": "Auto (0.5-99.5th percentile)", "value": _WL_AUTO},
                    {"title": "Manual", "value": _WL_MANUAL}]
# The fusion's window of each image (fuse's window_a / window_b, the CLI's --window-a / --window), as the panel
# offers it: the engine's default (no window), Manual (the Window and Level fields), the image's 1st-99th
# percentile, CT windows for an image in HU and SUV windows for a PET in SUV. Each (title, (window, level)).
_FW_DEFAULT, _FW_MANUAL, _FW_PERCENTILE = "default", "manual", "percentile"
_CT_FUSION_WINDOWS = {  # soft tissue as the CLI's --window-level-a example (-160..240); the others preprocess's
    # (radiology's, e.g. brain W80/L40), which differ from the display presets' (Slicer's CT-Brain W100/L50): each
    # title says its window and level, so the two lists are not read as one
    "ct-soft-tissue": ("CT soft tissue (W400 L40)", (400.0, 40.0)),
    **{f"ct-{name}": (f"CT {name} (W{width:g} L{level:g})", (width, level)) for name, (level, width) in
       (("lung", CT_WINDOWS["lung"]), ("bone", CT_WINDOWS["bone"]), ("brain", CT_WINDOWS["brain"]))},
}
_SUV_FUSION_WINDOWS = {"suv-5": ("SUV 0..5", (5.0, 2.5)), "suv-8": ("SUV 0..8", (8.0, 4.0))}
#: what the panel and the messages call each image, and the CLI's flag of its window
_FW_SIDES = {"a": ("fixed (anatomical) image", "--window-a"), "b": ("moving (functional) image", "--window")}
# Image headers whose voxels lie in a second file uploaded with them: the header is what is read. A .mha
# or .nrrd may name a data file too (io.missing_data_file checks the same headers), then uploaded with it.
_HEADER_SUFFIXES = (".mhd", ".mha", ".nhdr", ".nrrd", ".hdr", ".hdr.gz")
#: The most bytes of file content the page sends in one message: a file is sent in pieces of this size
#: and small files together up to it (a piece that would take a message past it starts the next one). trame's own page read each file whole into one message, which the
#: server (wslink) gathered whole, copied and unpacked, holding a 300 MiB NIfTI about three times over.
UPLOAD_PIECE_BYTES = 4 << 20
#: The most files in one message of an upload: with their names (at most 255 characters each) and pieces, a message
#: stays under 5 MiB, which the server's limit on a page's messages (``message_gate.MAX_MESSAGE_BYTES``) allows for.
#: Small files had gone together up to 4 MiB of content, however many: 40,000 files of 100 bytes in one message.
UPLOAD_BATCH_FILES = 1000
#: The most bytes one upload (a file, or the files of a DICOM series together) may hold (``--max-upload``): a
#: large CT series is 0.5-2 GB. Without a limit any page could stream files until the server's disk was full.
DEFAULT_MAX_UPLOAD = 4 << 30
#: The most bytes of uploads the server holds at once, all pages and connections together (``--max-stored-uploads``):
#: the uploads arriving, each volume's last upload, and one a running Load still reads; four uploads of the largest
#: size. A replaced upload's files are removed, so a long session of uploads replacing each other stays under it.
DEFAULT_MAX_STORED_UPLOADS = 16 << 30
#: The old name (``--max-session-upload``), which counted one connection's uploads from zero again at each reload.
DEFAULT_MAX_SESSION_UPLOAD = DEFAULT_MAX_STORED_UPLOADS
_DOWNLOAD_NAMES = {"transform": "moving_to_fixed.tfm", "fused": "fused.nii.gz", "weights": "weights.nii.gz",
                   "report": "report.html"}
# The page's upload: the files in pieces of at most UPLOAD_PIECE_BYTES (Blob.slice, so the browser does not
# read a file whole either), each message awaited before the next, all under one id, then an empty message
# that ends that upload. The id keeps two uploads apart: a second one started while the first streams, or
# one from another tab, is another upload, not more files of the first.
_UPLOAD_JS = """
window.mmfusion_upload = async function (files, trigger) {
  if (!files || !files.length) { return; }
  const id = (window.crypto && crypto.randomUUID) ? crypto.randomUUID()
    : `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
  const piece = PIECE_BYTES;
  let batch = [], size = 0, refused = false;
  const send = async () => {  // the server answers false when it refused the upload (its banner says why)
    if (batch.length) {
      const b = batch; batch = []; size = 0;
      if ((await trame.trigger(trigger, [id, b])) === false) { refused = true; }
    }
  };
  try {
    for (const file of Array.from(files)) {
      for (let offset = 0; offset === 0 || offset < file.size; offset += piece) {
        const end = Math.min(file.size, offset + piece);
        if (size + end - offset > piece) { await send(); }  // a message never holds more than a piece
        if (refused) { return; }  // nothing more of it is sent
        let content = null, error = null;
        try { content = new DataView(await file.slice(offset, end).arrayBuffer()); }
        catch (e) { error = (e && e.message) || String(e); }
        batch.push({ name: file.name, offset: offset, size: file.size, content: content, error: error });
        size += end - offset;
        if (error !== null) { await send(); return; }
        if (size >= piece || batch.length >= BATCH_FILES) { await send(); }
        if (refused) { return; }
      }
    }
    await send();
  } finally {
    await trame.trigger(trigger, [id, []]);
  }
};
""".replace("PIECE_BYTES", str(UPLOAD_PIECE_BYTES)).replace("BATCH_FILES", str(UPLOAD_BATCH_FILES))


#: The binary units, largest first: what sizes are shown in, and what K/M/G/T and KiB/MiB/GiB/TiB read as.
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
               **{unit.lower(): factor for unit, factor in _BINARY_UNITS},
               **{unit[0].lower(): factor for unit, factor in _BINARY_UNITS}}


def parse_size(text: Any, option: str) -> int:
    """Bytes of a size an operator gives (``--max-upload 4GiB``): bytes, or a number with a unit, K/M/G/T or
    KiB/MiB/GiB/TiB (powers of 1024) or KB/MB/GB/TB (powers of 1000).

    Raises:
        InputError: not a size, or not above 0.
    """
    from fractions import Fraction

    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*", str(text).lower())
    if match and match.group(2) in _SIZE_UNITS:  # exact (a float had made 400 digits infinity: a traceback)
        size = int(Fraction(match.group(1)) * _SIZE_UNITS[match.group(2)])
        if size > 0:
            return size
    raise InputError(f"{option} {text!r} is not a size above 0.",
                     f"Give bytes or a number with a unit, e.g. {option} 4GiB (or 500MiB, 2G, 3000000000).")


def size_option(size: int) -> str:
    """``size`` as the options write it, exact: "4GiB", "1000"."""
    for unit, factor in _BINARY_UNITS:
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


def _quad_layout() -> Any:
    """Axial | sagittal over coronal | 3D."""
    from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

    return Layout(LayoutDirection.Horizontal, [
        Layout(LayoutDirection.Vertical, [ViewLayoutDefinition.axial_view(), ViewLayoutDefinition.coronal_view()]),
        Layout(LayoutDirection.Vertical, [ViewLayoutDefinition.sagittal_view(), ViewLayoutDefinition.threed_view()]),
    ])


def _axial_layout() -> Any:
    """The axial view alone."""
    from trame_slicer.views import Layout, LayoutDirection, ViewLayoutDefinition

    return Layout(LayoutDirection.Horizontal, [ViewLayoutDefinition.axial_view()])


def _step(lo: float, hi: float, integer: bool) -> float:
    """Slider step for values in lo..hi: about a thousandth of the range, a power of ten (>= 1 for integers)."""
    import math

    span = max(hi - lo, 1e-9)
    step = 10.0 ** math.floor(math.log10(span / 1000.0))
    return max(step, 1.0) if integer else step


def _snap(value: float, step: float) -> float:
    """``value`` rounded to the slider's step, without float noise (what the panel shows)."""
    import math

    decimals = max(0, -math.floor(math.log10(step)))
    return round(round(value / step) * step, decimals)


def _window_level_panel(window: float, level: float, lo: float, hi: float, step: float) -> dict[str, float]:
    """The panel's window/level values and slider ranges for a background with voxels in ``lo..hi``.

    The window slider reaches twice the image's range (a wider window dims the anatomy, as in
    Slicer), the level slider spans the range; both widen to hold a value outside them (a window
    or level typed, or dragged in a slice view, where Slicer lets the level go half a window past
    the range). Values are rounded to the slider's ``step``, as the panel shows them.
    """
    return {"bg_step": step, "bg_window_max": max(2.0 * (hi - lo), window), "bg_level_min": min(lo, level),
            "bg_level_max": max(hi, level), "bg_window": _snap(window, step), "bg_level": _snap(level, step)}


def _number(value: Any) -> float | None:
    """A panel value as a float (number fields send strings; an empty or partial entry is None)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number and abs(number) != float("inf") else None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        # NaN: nothing compared (MI/NCC before a registration of images placed apart, alignment_before_after), as
        # the report and the CLI write it (the panel had shown "nan → 1.011"); an infinity here is a real value (the
        # PSNR of a fused image equal to both sources), "inf" as the console table prints it (the registration
        # metric's row, where inf means no valid sample point, writes n/a through number_text itself)
        return number_text(value, ".4g", infinity="inf")
    return str(value)


def _width_level(window: tuple[float, float]) -> tuple[float, float]:
    """(window, level) of a window (low, high) as the panel's fields show them: Slicer's form, to 6 digits."""
    lo, hi = window
    return float(f"{hi - lo:.6g}"), float(f"{(lo + hi) / 2.0:.6g}")


def _fusion_window_choices(image: sitk.Image, padding: Any = COMPUTE_MASK) -> tuple[
        list[dict[str, str]], dict[str, tuple[float, float]], tuple[float, float], str]:
    """The fusion windows the panel offers for ``image``, as loaded (a window is in the image's own units);
    ``padding``: its ``preprocess.padding_mask`` where known (``FusionViewer.padding``), else computed.

    Returns:
        (the preset list's items, the window (low, high) of each preset but Default and Manual, the window the
        engine's default amounts to (shown in the fields under Default), the words for that default).
    """
    from ..preprocess import robust_range
    from .viewer import looks_like_ct, looks_like_suv

    items = [{"title": "Engine default (no window)", "value": _FW_DEFAULT}, {"title": "Manual", "value": _FW_MANUAL}]
    windows: dict[str, tuple[float, float]] = {}
    default, words = _engine_default_window(image, "a", padding=padding)
    if image.GetNumberOfComponentsPerPixel() > 1:  # colour: its luminance is fused; a window is typed (Manual)
        return items, windows, default, words
    # robust_range leaves out the padding looks_like_ct leaves out (preprocess.without_padding: -32768 outside a
    # CT's reconstruction circle): a CT so padded had been offered -32768..1000, of no use as a window
    lo, hi = robust_range(sitk.GetArrayViewFromImage(image), 1.0, 99.0, padding)
    named = {_FW_PERCENTILE: ("1st-99th percentile", (lo, hi))}
    presets = {**(_CT_FUSION_WINDOWS if looks_like_ct(image, padding) else {}),
               **(_SUV_FUSION_WINDOWS if looks_like_suv(image) else {})}
    named.update({key: (title, (level - width / 2.0, level + width / 2.0))
                  for key, (title, (width, level)) in presets.items()})
    for key, (title, (w_lo, w_hi)) in named.items():
        width, level = _width_level((w_lo, w_hi))
        items.append({"title": f"{title}: {w_lo:.6g}..{w_hi:.6g} (W {width:g} / L {level:g})", "value": key})
        windows[key] = (w_lo, w_hi)
    return items, windows, default, words


def _engine_default_window(image: sitk.Image, side: str, method: str = "average",
                           padding: Any = COMPUTE_MASK) -> tuple[tuple[float, float], str]:
    """The window (low, high) ``fusion.fuse`` takes for ``image`` given none, and the words for it: the fixed image's
    (``side`` "a") and, but for the overlay, the moving one's: 0..255 for 8-bit, else min..max, a colour image's
    luminance 0..255; the overlay's functional window (``side`` "b", ``method`` "overlay"): min..99.5th percentile
    (min..max where the two meet), 8-bit too. The panel had shown min..max for the overlay's functional image,
    which the engine windows at its 99.5th percentile (a PET's hot spots above it saturate), so the fields under
    Engine default and the page's words were not what Fuse used. ``padding``: as :func:`_fusion_window_choices`
    takes it."""
    import numpy as np

    from ..fusion import _grey_input, _is_grey_rgb, _overlay_default_window
    from .viewer import image_range

    if image.GetNumberOfComponentsPerPixel() > 1:
        if not _is_grey_rgb(image):
            return (0.0, 255.0), "its luminance, 0..255"
        # grey stored as RGB (R = G = B): fuse takes it as grey, windowed as such (the overlay at its 99.5th
        # percentile, where 'its luminance, 0..255' had been shown)
        try:
            image = _grey_input(image, "functional image (b)" if side == "b" else "anatomical image (a)")
            padding = COMPUTE_MASK  # another image: its own padding
        except InputError:  # one fuse refuses in its own words when Fuse is pressed
            return (0.0, 255.0), "its luminance, 0..255"
    if side == "b" and method == "overlay":
        values = sitk.GetArrayViewFromImage(image).astype(np.float64)  # as fuse takes them
        (low, high), rule = _overlay_default_window(values)
        return (low, high), f"{rule}: {low:.6g}..{high:.6g}"
    if image.GetPixelID() == sitk.sitkUInt8:
        return (0.0, 255.0), "8-bit, as it is: 0..255"
    low, high = image_range(image, padding)
    return (low, high), f"min..max: {low:.6g}..{high:.6g}"


def _on_fixed_grid(moving: sitk.Image, fixed: sitk.Image, transform: sitk.Transform | None) -> sitk.Image:
    """The moving image resampled onto the fixed grid as ``mmfusion run`` does: an 8-bit image stays
    8-bit (rounded half to even), since fusion and the metrics take 8-bit values as they are and
    stretch a float copy to its range (the panel's numbers would differ from the CLI's)."""
    from ..pipeline import _keep_8bit
    from ..preprocess import resample

    colour = moving.GetNumberOfComponentsPerPixel() > 1  # an RGB/RGBA picture: its channels, not a vector field
    # a DICOM PET's Units (BQML...) travel with it (resample and the 8-bit rounding keep them): fuse's words
    return _keep_8bit(resample(moving, fixed, transform, components="channels" if colour else None), moving)


def _fused_file_name(result: Any, what: str = "fused", slice_volume: sitk.Image | None = None) -> str:
    """``fused.nii.gz``, or ``fused.mha`` on a sheared fixed grid (a gantry tilt), which NIfTI cannot store;
    ``weights.nii.gz`` (``.mha``) for ``what="weights"``, the fusion's weight map on the same grid. A 2D pair's as
    ``mmfusion run`` writes its ``fused_<method>``: ``fused.png``, and on the grid of the fixed one-slice volume
    ``slice_volume`` it was read from, that volume's (a colour one in ``.nrrd``, which NIfTI reads back as 2D); the
    weight map of a 2D image, 0..1 in float, which a PNG cannot hold (run writes none), in ``.nrrd``."""
    from ..pipeline import _ext_for, _fused_ext

    ext = _ext_for(result.image if slice_volume is None else slice_volume)
    if what == "fused":
        return what + _fused_ext(result.image, ext, slice_volume)
    return what + (".nrrd" if ext == ".png" else ext)


def _initializer_text(result: Any) -> str:
    """The start the registration used; for the search, the rotation it found and its seconds."""
    name = str((result.parameters or {}).get("initializer", "")) or "-"
    info = result.initializer
    if name == "search" and info:
        return f"search: {info['rotation_deg']:.0f}° from the centres of mass ({info['seconds']:.1f} s)"
    return name



def _slice_value(value: Any) -> bool:
    """Whether a page's slice-slider value is one a view can take: a finite number (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class _PendingUpload:
    """An upload between its first batch of files and its end: the files written so far."""

    def __init__(self, upload_id: str, client: Any) -> None:
        self.id = upload_id  # made by the page for this upload: its batches carry it
        self.client = client  # the connection (browser tab) sending it, None in-process
        self.folder: Path | None = None  # ".{role}-*.partial" in the work folder, made at the first file
        self.written: list[str] = []  # file names, in the order they came
        self.sizes: dict[str, list[int]] = {}  # name -> [bytes written, bytes the page said the file has]
        self.received = 0  # bytes written, all files together


def _sent(fields: Sequence[str]) -> str:
    """A button's trigger argument, {field: value}: those of ``fields`` the page changed and has not sent yet
    (trame-client's dirty keys, held back while another call of the page awaits its answer), not the others: every
    field's value had been sent, and a value the server had just set (a preset's stages, a fusion preset's Window
    and Level) whose push had not reached the page yet came back stale with the click and was taken as typed."""
    names = ", ".join(f"'{field}'" for field in fields)
    return (f"[Object.fromEntries([{names}].filter((k) => trame.state.dirtyKeys?.has(k))"
            ".map((k) => [k, trame.state.get(k)]))]")


def _client_text(value: Any, what: str, fix: str) -> str:
    """A text the page sends (a path, a name); None is "". Anything else (a number, a list, a text with a
    NUL character, which no file name holds) is refused, naming ``what``."""
    if value is None:
        return ""
    if not isinstance(value, str) or "\0" in value:
        raise InputError(f"The {what} sent by the page is not a text: {_shown(value)}.", fix)
    return value


def _client_choice(value: Any, choices: Sequence[str], what: str, where: str) -> str:
    """``value`` when it is one of ``choices``; otherwise an InputError naming them and the list to pick from."""
    if isinstance(value, str) and value in choices:
        return value
    return _refuse_choice(value, choices, what, where)


def _refuse_choice(value: Any, choices: Sequence[str], what: str, where: str) -> Any:
    raise InputError(f"Unknown {what} {_shown(value)}.",
                     f"Pick one in the {where} list: {', '.join(repr(c) for c in choices)}.")




#: The fix of a refused seed: the field to type it in
_SEED_FIX = "Type a whole number in the Seed field, e.g. 0 (the CLI's --seed; Register uses 0 unless told otherwise)."


def _client_seed(value: Any) -> int:
    """The registration's sampling seed: a whole number from 0 to ``registration.MAX_SEED`` (an int, 3.0, or the
    Seed field's text as the page's other number fields read theirs, :func:`_number`: "7", "007", "7.0", "1e3",
    "-0"); 0 when unset (None: a script's). The engine's one seed rule, checked here in the panel's words before the
    job starts (a seed of 2^31 - 1 had been refused by register() inside the job, told to use --seed).

    An empty text is refused: the Seed field cleared, or holding text that is no number ("1e", "1.2.3"), which a
    browser's number field sends as "". It had registered with seed 0 without a word, the field still empty or
    showing the text typed, so the user could not know the seed of the result."""
    if value is None:
        return 0
    if isinstance(value, str):
        if not value.strip():
            raise InputError("The Seed field holds no number: it is empty, or its text is not a number (e.g. '1e'), "
                             "which a browser's number field sends as empty.", _SEED_FIX)
        number = _number(value)
        seed = None if number is None else whole_number(number, 0, MAX_SEED)
        text = value.strip()
        shown = text if text.isascii() and text.isdigit() and len(text) <= 30 else _shown(value)
    else:
        seed, shown = whole_number(value, 0, MAX_SEED), _shown(value)
    if seed is None:
        raise InputError(f"The registration seed must be a whole number from 0 to {MAX_SEED}, not {shown}.", _SEED_FIX)
    return seed


class FusionWebApp:
    """The web application: a trame server, a Slicer scene with remote views, the panel.

    Args:
        server: a trame server (default: a new vue3 one).
        fixed: path (on the server) of the fixed/anatomical image to load at start.
        moving: path of the moving/functional image to load at start.
        demo: load the demo pair (MNI152 T1, misaligned PET-like image) at start.
        demo_spacing_mm: voxel size of the demo images.
        workdir: folder for uploads and downloads (default: a temporary folder).
        max_upload_bytes: the most bytes one upload may hold (its files together).
        max_stored_upload_bytes: the most bytes of uploads the server holds at once, all pages together (those
            arriving, each volume's last one, one a running Load reads).
        max_session_upload_bytes: the old name of ``max_stored_upload_bytes`` (used when that is not given).
    """

    def __init__(self, server: Any = None, *, fixed: str | None = None, moving: str | None = None,
                 demo: bool = False, demo_spacing_mm: float = 3.0, workdir: str | None = None,
                 max_upload_bytes: int = DEFAULT_MAX_UPLOAD, max_stored_upload_bytes: int | None = None,
                 max_session_upload_bytes: int | None = None):
        configure_offscreen_rendering()
        from trame.app import get_server
        from trame_slicer import module as trame_slicer_module
        from trame_slicer.core import LayoutManager, SlicerApp
        from trame_slicer.rca_view import register_rca_factories

        from .. import mrml
        from ..fusion import list_methods
        from ..registration import list_presets
        from .server_state import ServerState
        from .viewer import FusionViewer
        from .worker import JOB_STATE_DEFAULTS, BackgroundWorker

        self.server = server or get_server(None, client_type="vue3")
        self.server.enable_module(trame_slicer_module)
        self.state = self.server.state
        self.ctrl = self.server.controller
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="mmfusion-web-")
        self.workdir = Path(workdir or self._tmp.name)
        self.workdir.mkdir(parents=True, exist_ok=True)

        self.slicer_app = SlicerApp()
        register_rca_factories(self.slicer_app.view_manager, self.server)
        # each view's adapter, as trame-slicer registers it with trame-rca once the server is ready
        self.ctrl.rc_area_register.add(_render_scaled_down)
        self.layout_manager = LayoutManager(self.slicer_app.scene, self.slicer_app.view_manager, self.server)
        self.layout_manager.register_layout(QUAD_LAYOUT_ID, _quad_layout())
        self.layout_manager.register_layout(AXIAL_LAYOUT_ID, _axial_layout(), lazy_initialization=True)
        self.layout_manager.set_layout(QUAD_LAYOUT_ID)
        self.viewer = FusionViewer(self.slicer_app)
        # left-drag in a slice view: the anatomy's window/level, as in Slicer (the panel follows)
        self.viewer.enable_window_level_drag(self._on_dragged_window_level)
        self._background_limits: tuple[float, float, float] | None = None  # (min, max, step) of its voxels
        self._foreground_step = 0.0  # the step of the functional range's sliders (the panel rounds to it)
        # a folder of several DICOM series: (its path, the series' UIDs) offered for each role, as the panel shows
        self._offered_series: dict[str, tuple[str, list[str]]] = {}

        # engine objects of the session
        self.fixed_image: sitk.Image | None = None  # as read, colour kept (as `mmfusion run` reads it)
        self._fixed_grey: sitk.Image | None = None  # its luminance where it is colour: registered and shown
        # the fixed one-slice volume a 2D pair was read from (results are written on its geometry, as `mmfusion run`
        # writes them), None for a 2D image or a volume; whether the pair is one-slice volumes whose slices share no
        # depth (validation.slices_apart: Fuse without Register refuses them)
        self._slice_volume: sitk.Image | None = None
        self._slices_apart = False
        self.moving_image: sitk.Image | None = None
        self.registration: Any = None
        self.registered_image: sitk.Image | None = None
        self.registration_metrics: dict[str, dict[str, float]] = {}
        self.fusion_result: Any = None
        self.fusion_metrics: dict[str, float] = {}
        self._start_fixed, self._start_moving, self._start_demo = fixed, moving, demo
        self._started = False  # the start-up volumes were asked for
        self._demo_spacing = float(demo_spacing_mm)
        self._uploads: dict[str, _PendingUpload | None] = {"fixed": None, "moving": None}  # in progress
        self._ended_uploads: dict[str, None] = {}  # ids of uploads refused, replaced or dropped: their rest is ignored
        self._wslink_server: Any = None  # the running server (None in-process): which tab sent a trigger
        self._upload_dirs: dict[str, Path] = {}  # each role's last upload (older ones are removed)
        # counted on the server as the bytes arrive (a page's declared sizes only refuse an upload sooner)
        self.max_upload_bytes = int(max_upload_bytes)
        stored = max_stored_upload_bytes if max_stored_upload_bytes is not None else max_session_upload_bytes
        self.max_stored_upload_bytes = int(stored if stored is not None else DEFAULT_MAX_STORED_UPLOADS)
        # the finished uploads on disk (each role's last, those a running Load reads) -> their bytes; those arriving
        # are counted in self._uploads: a connection's closing or a reload frees nothing that is still on disk
        self._stored_uploads: dict[Path, int] = {}
        self._stale_uploads: list[Path] = []  # replaced while the running job reads them: removed at its end
        self._job_reads: list[str] = []  # the real paths the running job reads (a Load's two); [] for the others
        self.names = {"fixed": "", "moving": ""}  # what is loaded (the report names it)

        vr_presets = self.viewer.vr_presets()
        if self.viewer.vr_preset not in vr_presets and vr_presets:
            self.viewer.vr_preset = vr_presets[0]  # the control and the views start on the same preset
        methods = [m for m in list_methods() if m != "deep" or self._deep_available()]
        initial = {
            "trame__title": "MultimodalFusion",
            "fixed_path": fixed or "", "moving_path": moving or "",
            "fixed_name": "", "moving_name": "",
            # a folder of several DICOM series: the series offered for that path and the one picked
            "fixed_series_items": [], "fixed_series_path": "", "fixed_series": None,
            "moving_series_items": [], "moving_series_path": "", "moving_series": None,
            "has_fixed": False, "has_moving": False, "has_registered": False, "has_fused": False,
            # a 2D pair is loaded (the axial view alone, no 3D rendering), and what the panel says of it
            "is_2d": False, "pair_text": "",
            "presets": [{"title": "(none: stages below)", "value": ""}] + [
                {"title": p, "value": p} for p in list_presets()],
            "preset": "",
            "stage_choices": list(STAGE_CHOICES), "stages": ["rigid"], "seed": 0,
            "initializers": [{"title": c["title"], "value": c["value"]} for c in INITIALIZER_CHOICES],
            "initializer": "", "initializer_help": {c["value"]: c["help"] for c in INITIALIZER_CHOICES},
            "methods": methods, "method": "average" if "average" in methods else methods[0],
            "colormaps": mrml.available_colormaps(self.slicer_app.scene), "colormap": "PET-Heat",
            "fg_opacity": 0.5, "fg_layers": _FG_LAYERS, "fg_layer": "functional", "fg_legend": "",
            "vr_presets": vr_presets,
            "vr_preset": self.viewer.vr_preset,
            "registration_rows": [], "metrics_rows": [], "registration_summary": "",
            # what the page saves each download as (the fused volume's suffix follows its grid)
            "download_names": dict(_DOWNLOAD_NAMES),
            # background window/level and foreground threshold/limit, in the images' units
            "wl_enabled": False, "wl_presets": list(_WL_BASE_CHOICES), "wl_preset": _WL_AUTO,
            "bg_window": 1.0, "bg_level": 0.0, "bg_window_max": 1.0, "bg_level_min": 0.0,
            "bg_level_max": 1.0, "bg_step": 1.0,
            "fg_range_enabled": False, "fg_lower": 0.0, "fg_upper": 1.0, "fg_min": 0.0, "fg_max": 1.0,
            "fg_step": 1.0, "fg_range_layer": "",  # the layer fg_lower/fg_upper are of (its role; "" for none)
            # the fusion's window of each image (fuse's window_a, window_b): a preset, or Window and Level typed
            **{key: value for side in "ab" for key, value in (
                (f"fw_{side}_presets", [{"title": "Engine default (no window)", "value": _FW_DEFAULT}]),
                (f"fw_{side}_preset", _FW_DEFAULT), (f"fw_{side}_window", 1.0), (f"fw_{side}_level", 0.5),
                (f"fw_{side}_text", ""), (f"fw_{side}_bad", False))},
        }
        # the app and its worker write through ServerState: a page's write to a key only the server sets is
        # put back (it had reached every page, and the worker read job_busy back)
        self.state = ServerState(self.server.state, owned=[*(key for key in initial if key not in CLIENT_KEYS
                                                             and not key.startswith("trame__")),
                                                           *JOB_STATE_DEFAULTS],
                                 clearable=_PAGE_CLEARABLE_KEYS)
        self.state.update(initial)
        self.worker = BackgroundWorker(self.state, on_idle=self._remove_stale_uploads)
        # first of every control's callbacks: the slices a page's sliders set in the same message (see
        # _apply_page_slices), keyed by trame-slicer's state key of each view's slider
        from trame_slicer.app.logic import get_view_slider_typed_state

        self._slice_sliders = {get_view_slider_typed_state(self.server, view).name.value: view
                               for view in self.slicer_app.view_manager.get_slice_views()}
        self.server.state.change(*sorted(CLIENT_KEYS))(self._apply_page_slices)
        self.state.change("preset")(self._on_preset)
        self.state.change("fg_opacity")(self._on_opacity)
        self.state.change("colormap")(self._on_colormap)
        self.state.change("fg_layer")(self._on_fg_layer)
        self.state.change("vr_preset")(self._on_vr_preset)
        self.state.change("wl_preset")(self._on_wl_preset)
        self.state.change("bg_window", "bg_level")(self._on_bg_window_level)
        self.state.change("fg_lower", "fg_upper")(self._on_fg_range)
        # each image's fusion window: {side: {preset: (low, high)}}, the default's window and words, the preset in use
        self._fw_windows: dict[str, dict[str, tuple[float, float]]] = {"a": {}, "b": {}}
        self._fw_default: dict[str, tuple[tuple[float, float], str]] = {"a": ((0.0, 1.0), ""), "b": ((0.0, 1.0), "")}
        self._fw_preset = {"a": _FW_DEFAULT, "b": _FW_DEFAULT}
        # the moving image's engine default and what it was computed for: (the image, the overlay's rule or not, it)
        self._fw_default_b_for: tuple[Any, bool, Any] = (None, False, None)
        # the moving image on the fixed grid as it lies, which Fuse takes before a registration: (moving, fixed, it)
        self._unregistered: tuple[Any, Any, Any] = (None, None, None)
        self.state.change("method")(self._refresh_engine_default_b)
        for side in "ab":
            self.state.change(f"fw_{side}_preset")(functools.partial(self._on_fusion_window_preset, side))
            self.state.change(f"fw_{side}_window", f"fw_{side}_level")(
                functools.partial(self._on_fusion_window_fields, side))
        self.ctrl.on_server_ready.add(self._on_server_ready)
        self.ctrl.on_client_exited.add(self._drop_partial_uploads)
        self.server.add_protocol_to_configure(self._watch_connections)
        self.ctrl.on_server_bind.add(self._on_server_bind)
        self._methods = list(methods)  # what Fuse accepts (a client can set "method" to anything)
        self._build_ui()
        # what a page may set (the message gate drops the rest before trame pushes it to the other pages): the
        # panel's controls and the views' own (trame-slicer's slice sliders), as the page's templates bind them
        templates = ["main", *self.slicer_app.view_manager.get_current_view_ids()]
        self.page_keys = CLIENT_KEYS | frozenset(
            key for name in templates if isinstance(template := self.server.state[f"trame__template_{name}"], str)
            for key in re.findall(r'\bv-model="([A-Za-z_]\w*)"', template))

    @staticmethod
    def _deep_available() -> bool:
        try:
            import monai  # noqa: F401
            import torch  # noqa: F401
        except ImportError:
            return False
        return True

    # ------------------------------------------------------------------ UI
    def _build_ui(self) -> None:
        from trame.ui.vuetify3 import VAppLayout
        from trame.widgets import client, html
        from trame.widgets import vuetify3 as v3
        from trame_slicer.app.ui import FlexContainer

        trig = self.server.trigger_name
        with VAppLayout(self.server, full_height=True) as self.ui:
            self.ui.root.theme = "dark"
            client.Script(_UPLOAD_JS)
            with v3.VAppBar(density="compact"):
                v3.VToolbarTitle("MultimodalFusion: register and fuse in the browser")
                v3.VProgressCircular(indeterminate=("job_busy",), size=18, width=2, classes="mr-4",
                                     v_show=("job_busy",))
            with v3.VNavigationDrawer(permanent=True, width=380, location="left"):
                with v3.VContainer(classes="pa-3", style="font-size: 0.85rem;"):
                    v3.VAlert(v_if=("error_message",), text=("error_message",), type="error",
                              closable=True, density="compact", classes="mb-2", id="mmf-error",
                              click_close="error_message = ''")
                    # ---------------------------------------------------------- load
                    html.Div("1. Volumes", classes="text-subtitle-2 mb-1")
                    for role, label in (("fixed", "Fixed (anatomical)"), ("moving", "Moving (functional)")):
                        with v3.VRow(dense=True, no_gutters=True, classes="align-center"):
                            with v3.VCol(cols=10):
                                v3.VTextField(v_model=(f"{role}_path",), label=f"{label}: path on the server",
                                              density="compact", hide_details=True, id=f"mmf-{role}-path")
                            with v3.VCol(cols=2):
                                v3.VFileInput(
                                    hide_input=True, prepend_icon="mdi-upload", density="compact",
                                    hide_details=True, multiple=True,
                                    title=f"Upload the {role} image (at most {size_text(self.max_upload_bytes)})",
                                    change=("window.mmfusion_upload($event.target.files, "
                                            f"'{trig(self._upload_chunk_fn(role))}')"))
                        v3.VSelect(v_model=(f"{role}_series",), items=(f"{role}_series_items",),
                                   label=f"{role} DICOM series", density="compact", hide_details=True,
                                   classes="mt-1", id=f"mmf-{role}-series",
                                   v_if=(f"{role}_series_items.length && {role}_series_path === {role}_path",))
                        html.Div(f"{{{{ {role}_name }}}}", classes="text-caption text-grey mb-1")
                    # each button sends the fields it acts on that the page has not sent yet with its click (_take_page_values)
                    v3.VBtn("Load volumes", click=(self.load_from_paths, _sent(_LOAD_FIELDS)), block=True,
                            density="compact", disabled=("job_busy || !fixed_path || !moving_path",), id="mmf-load",
                            classes=("pair_text ? 'mb-1' : 'mb-3'",))
                    html.Div("{{ pair_text }}", v_if=("pair_text",), classes="text-caption text-grey mb-3",
                             id="mmf-pair-text")
                    # ---------------------------------------------------------- register
                    html.Div("2. Registration", classes="text-subtitle-2 mb-1")
                    v3.VSelect(v_model=("preset",), items=("presets",), label="Preset", density="compact",
                               hide_details=True, classes="mb-1")
                    v3.VSelect(v_model=("stages",), items=("stage_choices",), label="Stages", multiple=True,
                               chips=True, density="compact", hide_details=True, classes="mb-1")
                    v3.VSelect(v_model=("initializer",), items=("initializers",), label="Initializer",
                               density="compact", persistent_hint=True, hint=("initializer_help[initializer]",),
                               classes="mb-1", id="mmf-initializer")
                    # the registration's sampling seed, as the CLI's --seed and the Slicer panel's Random seed box:
                    # the same seed, the same transform. The field sends its text ("7"), checked at Register by the
                    # engine's one seed rule (_client_seed); it had no field, only a script could set it
                    v3.VTextField(v_model=("seed",), type="number", label="Seed", min=0, max=MAX_SEED, step=1,
                                  density="compact", hide_details=True, classes="mb-1", id="mmf-seed",
                                  title=f"Sampling seed of the registration, as the CLI's --seed: a whole number from "
                                        f"0 to {MAX_SEED}; the same seed gives the same transform")
                    with v3.VRow(dense=True, no_gutters=True):
                        with v3.VCol(cols=8):
                            v3.VBtn("Register", click=(self.start_registration, _sent(_REGISTER_FIELDS)),
                                    color="primary", block=True, disabled=("job_busy || !has_fixed || !has_moving",), id="mmf-register")
                        with v3.VCol(cols=4, classes="pl-1"):
                            v3.VBtn("Cancel", click=self.worker.cancel, block=True, color="warning",
                                    disabled=("!job_busy || job_cancelling",), id="mmf-cancel")
                    v3.VProgressLinear(model_value=("job_progress",), height=6, classes="mt-2",
                                       color=("job_busy ? 'primary' : 'grey'",))
                    html.Div("{{ job_message }}", classes="text-caption mb-1", id="mmf-job-message")
                    html.Div("{{ registration_summary }}", classes="text-caption mb-3", id="mmf-reg-summary")
                    # ---------------------------------------------------------- fuse
                    html.Div("3. Fusion", classes="text-subtitle-2 mb-1")
                    with v3.VRow(dense=True, no_gutters=True, classes="align-center"):
                        with v3.VCol(cols=7):
                            v3.VSelect(v_model=("method",), items=("methods",), label="Method",
                                       density="compact", hide_details=True)
                        with v3.VCol(cols=5, classes="pl-1"):
                            v3.VBtn("Fuse", click=(self.start_fusion, _sent(_FUSE_FIELDS)), color="primary",
                                    block=True, disabled=("job_busy || !has_fixed || !has_moving",), id="mmf-fuse")
                    self._build_fusion_window_ui(v3, html)
                    # ---------------------------------------------------------- display
                    html.Div("4. Display", classes="text-subtitle-2 mt-3 mb-1")
                    v3.VSelect(v_model=("fg_layer",), items=("fg_layers",), label="Foreground layer",
                               density="compact", hide_details=True, classes="mb-1", id="mmf-fg-layer")
                    # the weight map's legend: its colour table across its window (0..1 unless Lower/Upper moved). Shown
                    # by fg_range_layer, the layer whose values fg_lower/fg_upper hold, which the server sets with them in
                    # one message: shown by fg_layer, which the page sets itself at once, it had shown the previous
                    # layer's Lower/Upper until the server's answer came
                    with html.Div(v_show="fg_range_layer === 'weights'", id="mmf-weights-legend",
                                  classes="text-caption mb-1"):
                        html.Div("Weight of the fixed image per voxel: 1, the fixed image alone; 0, the moving one")
                        with html.Div(classes="d-flex align-center"):
                            html.Span("{{ fg_lower }}", classes="mr-1", id="mmf-weights-legend-lower")
                            html.Div(style=("{ flex: 1, height: '10px', background: fg_legend }",),
                                     id="mmf-weights-legend-bar")
                            html.Span("{{ fg_upper }}", classes="ml-1", id="mmf-weights-legend-upper")
                    v3.VSelect(v_model=("colormap",), items=("colormaps",), label="Colour table",
                               density="compact", hide_details=True, classes="mb-1")
                    v3.VSlider(v_model=("fg_opacity",), min=0, max=1, step=0.05, label="Opacity",
                               density="compact", hide_details=True, thumb_label=True, id="mmf-fg-opacity")
                    self._build_window_level_ui(v3, html)
                    v3.VSelect(v_model=("vr_preset",), items=("vr_presets",), label="3D rendering preset",
                               density="compact", classes="mb-2", disabled=("is_2d",), id="mmf-vr-preset",
                               hint=("is_2d ? 'A 2D pair has no 3D view.' : ''",), persistent_hint=True,
                               hide_details="auto")
                    # ---------------------------------------------------------- metrics
                    html.Div("5. Metrics", classes="text-subtitle-2 mt-2 mb-1")
                    with v3.VTable(density="compact", id="mmf-metrics"):
                        with html.Tbody():
                            with html.Tr(v_for="row in registration_rows.concat(metrics_rows)", key="row.name"):
                                html.Td("{{ row.name }}")
                                html.Td("{{ row.value }}", classes="text-right")
                    html.Div("Register or fuse to see metrics.", v_if=("!registration_rows.length && "
                                                                        "!metrics_rows.length",),
                             classes="text-caption text-grey")
                    # ---------------------------------------------------------- downloads
                    html.Div("6. Download", classes="text-subtitle-2 mt-3 mb-1")
                    download = trig(self.download)
                    for what, label, enabled in (("transform", "Transform", "has_registered"),
                                                 ("fused", "Fused volume", "has_fused"),
                                                 ("weights", "Weight map", "has_fused"),
                                                 ("report", "Report", "has_fused")):
                        v3.VBtn(label, prepend_icon="mdi-download", density="compact", size="small",
                                classes="mr-1 mb-1", disabled=(f"!{enabled} || job_busy",),
                                id=f"mmf-download-{what}",
                                # no file when the server refused (its banner says why), not a "null" file
                                click=f"trigger('{download}', ['{what}']).then((f) => f && "
                                      f"utils.download(download_names['{what}'], f, 'application/octet-stream'))")
            with v3.VMain():
                with FlexContainer(row=True, fill_height=True, style="height: calc(100vh - 48px);"):
                    self.layout_manager.initialize_layout_grid(self.ui)

    def _build_fusion_window_ui(self, v3: Any, html: Any) -> None:
        """Each image's window for the fusion (fuse's ``window_a``/``window_b``): a preset, Window and Level fields
        (Slicer's form; typing one makes the preset Manual) and the window in the CLI's terms, or what is wrong."""
        for side, (label, _flag) in _FW_SIDES.items():
            html.Div(f"Fusion window of the {label}", classes="text-caption mt-1")
            # the preset on a row of its own, the fields half the panel each: three to a row, a field showed 5
            # characters (237.3 of 237.34, -0.01 of -0.0123457), the fields' values being 6 significant digits
            v3.VSelect(v_model=(f"fw_{side}_preset",), items=(f"fw_{side}_presets",), label="Preset",
                       density="compact", hide_details=True, disabled=("!has_fixed",), id=f"mmf-fw-{side}-preset")
            with v3.VRow(dense=True, no_gutters=True, classes="align-center mt-1"):
                for what, title in (("window", "Window"), ("level", "Level")):
                    with v3.VCol(cols=6, classes="pl-1" if what == "level" else ""):
                        v3.VTextField(v_model=(f"fw_{side}_{what}",), type="number", label=title,
                                      density="compact", hide_details=True, variant="outlined",
                                      disabled=("!has_fixed",), id=f"mmf-fw-{side}-{what}")
            html.Div(f"{{{{ fw_{side}_text }}}}", id=f"mmf-fw-{side}-text",
                     classes=(f"fw_{side}_bad ? 'text-caption text-error' : 'text-caption text-grey'",))

    def _build_window_level_ui(self, v3: Any, html: Any) -> None:
        """Background window/level (preset, window, level) and foreground threshold/upper limit.

        Each value has a slider (drag) and a number field (exact entry) on the same state
        variable; ranges come from the loaded image's min/max, in its own units.
        """
        def slider_and_field(name: str, label: str, lo: str, hi: str, step: str, enabled: str) -> None:
            # the name on the field (Slicer's spin box's), not before the slider: the slider's track keeps its length
            # and the field holds 18 characters whole (an image's values far from 0 against their range, -12345678.9012,
            # a level at the slider's step), where with the name before the slider it had held 12
            with v3.VRow(dense=True, no_gutters=True, classes="align-center"):
                with v3.VCol(cols=5):
                    v3.VSlider(v_model=(name,), min=(lo,), max=(hi,), step=(step,), aria_label=label,
                               density="compact", hide_details=True, disabled=(f"!{enabled}",),
                               id=f"mmf-{name.replace('_', '-')}")
                with v3.VCol(cols=7, classes="pl-1"):
                    v3.VTextField(v_model=(name,), type="number", step=(step,), density="compact", label=label,
                                  hide_details=True, variant="outlined", disabled=(f"!{enabled}",),
                                  id=f"mmf-{name.replace('_', '-')}-value")

        html.Div("Anatomy window/level", classes="text-caption mt-2")
        v3.VSelect(v_model=("wl_preset",), items=("wl_presets",), label="Window/level preset",
                   density="compact", hide_details=True, classes="mb-1", disabled=("!wl_enabled",),
                   id="mmf-wl-preset")
        slider_and_field("bg_window", "Window", "bg_step", "bg_window_max", "bg_step", "wl_enabled")
        slider_and_field("bg_level", "Level", "bg_level_min", "bg_level_max", "bg_step", "wl_enabled")
        with v3.VRow(dense=True, no_gutters=True, classes="align-center mt-1"):
            with v3.VCol(cols=8):
                html.Div("Functional threshold / upper limit", classes="text-caption")
            with v3.VCol(cols=4, classes="pl-1"):
                v3.VBtn("Auto", click=self.reset_functional_range, size="x-small", block=True,
                        disabled=("!fg_range_enabled",), id="mmf-fg-auto")
        slider_and_field("fg_lower", "Lower", "fg_min", "fg_max", "fg_step", "fg_range_enabled")
        slider_and_field("fg_upper", "Upper", "fg_min", "fg_max", "fg_step", "fg_range_enabled")
        html.Div("Below the lower threshold the functional image is transparent; the colour table spans "
                 "lower..upper (values in the image's units).", classes="text-caption text-grey mb-2")

    # ------------------------------------------------------------------ start-up
    def _on_server_ready(self, **_: Any) -> None:
        # once: a page can call any on_* controller ("trame.lifecycle.update", "server_ready"), which loaded the
        # start-up volumes again, dropping every page's registration and fusion
        if self._started:
            return
        self._started = True
        if self._start_demo:
            self.load_demo()
        elif self._start_fixed and self._start_moving:
            self.load_from_paths()

    # ------------------------------------------------------------------ loading
    def load_demo(self) -> None:
        """Load the demo pair (MNI152 T1 and a misaligned PET-like image) in the background."""
        from .demo import demo_images

        spacing = self._demo_spacing

        def job(progress):
            progress(0.1, "building the MNI152 T1 and a PET-like image")
            fixed, moving, _ = demo_images(spacing_mm=spacing)
            return fixed, moving, "MNI152 T1 (demo)", "PET-like, moved 6 deg / 9.5 mm (demo)"

        self.worker.start("Loading the demo data", job, self._show_loaded)

    def load_from_paths(self, page_values: Any = None) -> None:
        """Read the images at ``fixed_path`` and ``moving_path`` (server paths) in the background.

        A folder of several DICOM series is not guessed at: the load fails naming them, and the
        panel then offers them in a "DICOM series" list under that path; the next Load reads the one
        picked there (the choice holds for that path only).

        Args:
            page_values: the page's Load sends {field: value} of its fields (:data:`_LOAD_FIELDS`) it has not sent
                yet, which are taken first (:meth:`_take_page_values`); None: the state's.
        """
        from ..io import SeveralDicomSeries, one_slice_inputs_as_2d
        from ..io import read_image as read_any
        from ..pipeline import _grey
        from ..validation import check_image, check_same_dimension, slices_apart

        try:
            self._take_page_values(_LOAD_FIELDS, page_values, "Load")
            fixed_path, moving_path = (_client_text(self.state[f"{role}_path"], f"{role} path",
                                                    f"Type the {role} image's path on the server, or upload it.")
                                       for role in ("fixed", "moving"))
            picked = {role: (_client_text(self.state[f"{role}_series"], f"{role} DICOM series",
                                          f"Pick the series in the {role} DICOM series list.") or None
                             if self._offered_series.get(role, ("", []))[0] == path else None)
                      for role, path in (("fixed", fixed_path), ("moving", moving_path))}
        except InputError as exc:
            self._banner(str(exc))
            return
        several: dict[str, tuple[str, list[dict[str, Any]], str]] = {}  # written by the job, shown after it

        def read_image(role: str, path: str) -> sitk.Image | None:
            try:
                # a DICOM file of one slice as the one-slice volume it is, taken as 2D below: shown where it lies
                return read_any(os.path.expanduser(path), keep_color=True, series=picked[role], slice_as_2d=False)
            except SeveralDicomSeries as exc:  # its fix names CLI options and Python, which this page has not
                several[role] = (path, exc.series, exc.problem)
                return None

        def job(progress):
            if not fixed_path or not moving_path:
                raise InputError("Both a fixed and a moving image are needed.",
                                 "Enter both paths (on the server) or upload both files.")
            images, other = [], ""
            # colour kept, as `mmfusion run` reads them: a colour fixed image (a grey PNG stored as RGB) is registered by
            # its luminance and fused and scored as fuse takes it (8-bit: its rounded luminance, 0..255 as it is); read
            # as luminance (float), the fixed PNG had been fused stretched to its min..max, the metrics off the CLI's
            for i, (role, path) in enumerate((("fixed", fixed_path), ("moving", moving_path))):
                progress(0.5 * i, f"reading {os.path.basename(path)}")
                try:
                    image = read_image(role, path)
                except InputError as exc:
                    if not several:
                        raise
                    other = f"{role.capitalize()}: {exc}"  # said with the series lists the fixed path needs
                    break
                if image is None:  # several series: the other role is read too, so both lists come at once
                    continue
                name = os.path.basename(path)
                if image.GetDimension() > 3:
                    raise InputError(f"'{name}' is a {image.GetDimension()}D image (size {image.GetSize()}).",
                                     "Extract one 3D volume first (e.g. one time frame), then load it.")
                images.append(image)
            if several:
                lists = " and ".join(f'"{role} DICOM series"' for role in several)
                raise InputError("\n".join([f"{role.capitalize()}: {problem}" for role, (_, _, problem) in several.items()]
                                            + ([other] if other else [])),
                                 f"Pick the series in the {lists} list{'s' if len(several) > 1 else ''} under "
                                 f"{'their paths' if len(several) > 1 else 'its path'}, then Load again.")
            names = os.path.basename(fixed_path), os.path.basename(moving_path)
            # as `mmfusion run` takes them: a one-slice volume (a slice Slicer or ITK-SNAP saved, a DICOM file of one
            # slice) as the 2D image of its slice, refused where that cannot be (a sagittal slice, a slice with a volume); a 2D pair is registered,
            # fused and scored in 2D, its results written on the fixed one-slice volume's geometry (``slice_volume``)
            slice_volume, fixed, moving, _, _ = one_slice_inputs_as_2d(
                images[0], images[1], fixed_name=f"fixed image '{names[0]}'", moving_name=f"moving image '{names[1]}'")
            for role, image, name, path in (("fixed", fixed, names[0], fixed_path),
                                            ("moving", moving, names[1], moving_path)):
                # as `mmfusion run` does before registering: NaN/inf voxels or a blank image are refused
                # now, naming the file (at Register/Fuse a blank PET read as "does not overlap")
                check_image(_grey(image, f"{role} image '{name}'", os.path.expanduser(path)), f"{role} image '{name}'")
            check_same_dimension(fixed, moving, f"fixed image '{names[0]}'", f"moving image '{names[1]}'")
            return fixed, moving, names[0], names[1], slice_volume, slices_apart(images[0], images[1])

        def offer_series() -> None:
            with self.state:
                for role, (path, found, _) in several.items():
                    self._offered_series[role] = (path, [s["uid"] for s in found])
                    self.state[f"{role}_series_path"] = path
                    self.state[f"{role}_series_items"] = [
                        {"title": f"{s['description'] or '(no description)'}"
                                  f"{' ' + s['modality'] if s['modality'] else ''} ({s['files']} files)",
                         "value": s["uid"]} for s in found]
                    self.state[f"{role}_series"] = None

        if self.worker.start("Loading", job, self._show_loaded, on_finished=offer_series) is not None:
            # the files it reads: an upload among them is kept until the job ends, even when replaced
            self._job_reads = [os.path.realpath(os.path.expanduser(path)) for path in (fixed_path, moving_path) if path]

    def _show_loaded(self, loaded: tuple[Any, ...]) -> None:
        """Show a loaded pair: (fixed, moving, their names[, the fixed one-slice volume a 2D pair was read from, whether
        its slices are apart])."""
        fixed, moving, fixed_name, moving_name, *flat = loaded
        self.fixed_image, self.moving_image = fixed, moving
        self._slice_volume, self._slices_apart = flat if flat else (None, False)
        from ..pipeline import _grey

        # what is registered and shown; fused and scored: fixed, as run does
        self._fixed_grey = _grey(fixed, f"fixed image '{fixed_name}'")
        # a 2D pair (or two one-slice volumes, taken as the 2D images of their slices): the slice in the axial view
        # alone, as Slicer's "Red slice only" layout shows a PNG; the sagittal and coronal views would show a line,
        # the 3D view a slab
        flat = fixed.GetDimension() == 2
        self.layout_manager.set_layout(AXIAL_LAYOUT_ID if flat else QUAD_LAYOUT_ID)
        # the slice's position as Slicer shows the fixed one-slice volume or DICOM file (S: 37.5 mm), not the 2D
        # image's S 0 (a DICOM file of one slice had read S: 0.0 mm, its ImagePositionPatient's S lost); a
        # one-slice volume taken as 2D lies in an axial plane (io.one_slice_as_2d), every voxel at its origin's S
        self.viewer.set_plane_s(self._slice_volume.GetOrigin()[2] if self._slice_volume is not None else 0.0)
        self.names = {"fixed": fixed_name, "moving": moving_name}
        self.registration = self.registered_image = self.fusion_result = None
        self.registration_metrics, self.fusion_metrics = {}, {}
        self.viewer.clear()
        self.viewer.set_image("fixed", self._fixed_grey)
        self.viewer.set_image("moving", moving)
        # the viewer's own opacity and colour table: the panel's were checked when set (a client sets any value)
        self.viewer.show("moving", opacity=self.viewer.opacity, colormap=self.viewer.colormap, reset_views=True)
        with self.state:
            self.state.update({"has_fixed": True, "has_moving": True, "has_registered": False,
                               "has_fused": False, "fixed_name": fixed_name, "moving_name": moving_name,
                               "registration_rows": [], "metrics_rows": [], "registration_summary": "",
                               "fg_layer": "functional", "is_2d": flat,
                               "pair_text": f"2D pair ({' x '.join(map(str, fixed.GetSize()))} and "
                                            f"{' x '.join(map(str, moving.GetSize()))} pixels): registered and fused "
                                            "in 2D as mmfusion run does; shown in the axial view alone (no "
                                            "sagittal, coronal or 3D view)" if flat else ""})
            self._sync_display_state()
            self._reset_fusion_windows()

    def _upload_chunk_fn(self, role: str):
        async def upload_chunk(upload_id: Any = None, files: Any = None) -> bool | None:
            # what the page's mmfusion_upload sends: (its id for this upload, a batch of pieces of files),
            # then (id, []) at the end
            if not isinstance(upload_id, str) or not 0 < len(upload_id) <= 100 or not isinstance(files, list):
                self._banner(str(InputError(
                    f"The page sent an upload of the {role} image the server does not understand "
                    f"(id {_shown(upload_id)}, files {_shown(files)[:40]}).",
                    "Reload the page and upload the files again.")))
                return False
            if files:  # a batch of pieces (at most about UPLOAD_PIECE_BYTES): to disk now; False: refused, the
                return self._write_upload_files(role, files, upload_id)  # page sends no more of it
            self._finish_upload(role, upload_id)  # the end of the upload
            return None

        upload_chunk.__name__ = f"upload_{role}_chunk"
        return upload_chunk

    def _on_server_bind(self, wslink_server: Any) -> None:
        from .message_gate import install_message_gate, install_page_pushes

        self._wslink_server = wslink_server
        # before any connection: wslink allocated what a chunk's header declared, up to 4 GiB a message
        install_message_gate(wslink_server, may_set=self.page_may_set, trigger_fn=self.server.controller.trigger_fn)
        install_page_pushes(wslink_server)  # a tab busy when another changes a value missed the change

    def page_may_set(self, key: str, value: Any) -> bool:
        """Whether a page may set state ``key`` to ``value``: its controls' values (:attr:`page_keys`), and the
        banner closed (``error_message`` empty). Any other write is the page setting what only the server sets.
        A slice slider takes a finite number only: trame-slicer set the slice to ``inf`` as given, which left the
        view's offset and range NaN for every page, and no later value brought it back."""
        if key in self._slice_sliders:
            return _slice_value(value)
        return key in self.page_keys or (key in _PAGE_CLEARABLE_KEYS and value in ("", None))

    def _take_page_values(self, fields: Sequence[str], values: Any, button: str) -> None:
        """The values ``button``'s click sent, {field: value} for those of ``fields`` the page changed and had not
        sent yet (:func:`_sent`), taken as the page's own state update takes them (to the other pages, then into
        the state, each changed one's callbacks run: a Window typed turns the preset Manual, a preset brings its
        stages) before the button reads the state.

        trame-client sends a field's change in a message of its own, and holds it back while any call of the page
        waits for its answer (an upload's piece, a view's resize), the click's call not among them: a path typed and
        Load clicked at once had reached the server after the click, which read the path empty ("Both a fixed and a
        moving image are needed") or as it was before, loading the previous file without a word. The change, coming
        later with the same value, changes nothing. The fields the page has sent are not sent again: the page may
        not hold the server's value of them yet. None (a script's call, the start-up load): the state's.

        Raises:
            InputError: not a {field: value} of ``fields`` (a script's call, a page of another version).
        """
        if values is None:
            return
        if not isinstance(values, dict) or not set(values) <= set(fields):
            raise InputError(f"The page's {button} sent {_shown(values)}, where it sends the values of the fields "
                             f"it changed among {', '.join(fields)}.", "Reload the page, then click again.")
        if not values:
            return
        page, state, protocol = dict(values), self.server.state, self.server.protocol
        if protocol is not None:  # the other pages get them as from trame's state update (the clicking page has them)
            protocol.push_state_change(page, skip_last_active_client=True)
        state.update(page)
        state.flush()

    def _apply_page_slices(self, **_: Any) -> None:
        """Move each slice view to the slice a page's slider set in the message being handled, before the
        message's other values are (a change callback of every control's key, registered before the app's own).

        A page sends the values it changed while its previous message was in flight together, in the order they
        changed: "fg_opacity" then "Red__SliderState__value" for an opacity step followed by a slice step.
        trame runs the opacity's callback first; the opacity changes the slice views, and trame-slicer then
        writes each view's slice back into its slider's state from MRML (its ``_on_slice_view_modified``), over
        the page's value, before its own slider callback reads it. The page's slice was lost and the old one sent
        back to every page, the page's too: the slider jumped back (24 -> 27 -> 24) and the view stayed.
        """
        state = self.server.state
        for key, view in self._slice_sliders.items():
            if key in state.modified_keys:
                value = state[key]
                if _slice_value(value):
                    view.set_slice_value(float(value))

    def _caller(self) -> Any:
        """The connection (browser tab) whose message is being handled, or None in-process. wslink sets it
        before it calls a trigger, and a trigger reads it before its first ``await``."""
        return getattr(self._wslink_server, "last_active_client_id", None)

    def _end_upload(self, pending: _PendingUpload, role: str) -> None:
        """Forget an unfinished upload, remove its files, and ignore whatever of it still comes."""
        if pending.folder is not None:
            shutil.rmtree(pending.folder, ignore_errors=True)
        if self._uploads[role] is pending:
            self._uploads[role] = None
        self._ended_uploads[pending.id] = None
        while len(self._ended_uploads) > 1000:  # ids are a few bytes: keep the last thousand
            del self._ended_uploads[next(iter(self._ended_uploads))]

    def _watch_connections(self, root_protocol: Any) -> None:
        """Drop a connection's unfinished uploads when its websocket closes, however it closed.

        trame's page says it is leaving (``on_client_exited``) from its ``beforeunload`` handler only, and
        that message is lost when the tab is closed while it sends (Chromium, a tab closed in the middle of an
        upload: its ``.partial`` folder of patient files stayed on the server), and never sent when the tab
        crashes, the browser is killed or the network goes. wslink tells its link protocols which connection
        closed, whatever the cause."""
        from wslink.websocket import LinkProtocol

        app = self

        class _ConnectionWatch(LinkProtocol):
            def onClose(self, client_id: str) -> None:  # noqa: N802 (wslink's name)
                app._drop_uploads_of(client_id)

        root_protocol.registerLinkProtocol(_ConnectionWatch())

    def _drop_partial_uploads(self, **_: Any) -> None:
        """A page closed or reloaded in the middle of an upload never sends its end: remove what it
        wrote, or it would be merged into the next upload (a stale DICOM series read instead of the
        file the user then picks) and patient files would stay on the server. Only that page's uploads:
        another tab's upload in progress goes on (it had been dropped too, and its remaining batches were
        then kept as a whole upload, a DICOM series without its first slices). The page's own message
        (``on_client_exited``); :meth:`_watch_connections` drops them too when its connection closes."""
        self._drop_uploads_of(self._caller())

    def _drop_uploads_of(self, caller: Any) -> None:
        """Drop the unfinished uploads sent by connection ``caller`` (None, in-process: all of them)."""
        for role, pending in self._uploads.items():
            if pending is not None and (caller is None or pending.client in (None, caller)):
                logger.info("dropping an unfinished %s upload (%d file(s))", role, len(pending.written))
                self._end_upload(pending, role)

    def _save_upload(self, role: str, files: list[dict]) -> None:
        """Write uploaded file(s) to the work folder and put the path in the panel (then: Load).

        The page sends an upload as batches of files and then an empty one; this is the whole
        upload in one call (the batches' path: :meth:`_write_upload_files` for each batch as it
        arrives, :meth:`_finish_upload` at the end).
        """
        upload_id = uuid.uuid4().hex
        self._write_upload_files(role, files, upload_id)
        self._finish_upload(role, upload_id)

    def _write_upload_files(self, role: str, files: list[Any], upload_id: str) -> bool:
        """Write one batch of an upload as it arrives, so the server never holds more than one batch in
        memory (a 1 GB DICOM series was held whole until its end, then joined).

        A batch holds whole files (``{"name", "content"}``, as trame's page sends a file) or pieces of
        files (``{"name", "offset", "size", "content"}``: the bytes at ``offset`` of a file of ``size``
        bytes), each piece following the one before it. They go to a folder named ``.{role}-*.partial``
        in the work folder, renamed when the upload ends (:meth:`_finish_upload`): no path ever names a
        part of an upload. A refused file (no usable name, a second file of a name, one the server
        cannot store) removes the folder at once, says why in the banner, and the rest of that upload is
        not written. A new upload of the role (``upload_id`` not seen before: another pick of files, or
        another tab) replaces one still arriving, saying so: their files had been mixed in one folder.

        An upload larger than :attr:`max_upload_bytes`, or one taking the uploads the server holds (all pages
        together: :meth:`stored_upload_bytes`) past :attr:`max_stored_upload_bytes`, is refused so too, the bytes
        counted as they are written (a file's declared size refuses it at its first piece, before anything of it is
        written).

        Returns:
            False when the upload was refused (or had ended): the page sends no more of it.
        """
        if upload_id in self._ended_uploads:
            return False
        pending = self._uploads[role]
        if pending is not None and pending.id != upload_id:
            logger.info("a new %s upload replaces one still arriving (%d file(s))", role, len(pending.written))
            self._end_upload(pending, role)
            self._banner(str(InputError(
                f"A new upload of the {role} image started (in this page or another one) while the one "
                f"before it was still arriving ({len(pending.written)} file(s) so far): that one was "
                "dropped, and the new one is kept.",
                "Wait for an upload to end before starting another; upload the files again if the "
                "dropped one was the one you meant.")))
            pending = None
        if pending is None:
            pending = self._uploads[role] = _PendingUpload(upload_id, self._caller())
        if pending.folder is None:
            pending.folder = Path(tempfile.mkdtemp(prefix=f".{role}-", suffix=".partial", dir=self.workdir))
        folder = pending.folder

        def refuse(message: str) -> bool:  # nothing of this upload is kept; the path shown stays
            self._end_upload(pending, role)
            self._banner(message)
            return False

        for entry in files:
            if not isinstance(entry, dict):
                return refuse(str(InputError(f"The page sent an upload entry that is not a file: {_shown(entry)}.",
                                             "Reload the page and upload the files again.")))
            raw_name = entry.get("name")
            # the browser sends the name: keep only its last part, so "../x" or "/etc/x" cannot write
            # outside this upload's folder
            name = os.path.basename(str(raw_name).replace("\\", "/"))
            if not isinstance(raw_name, str) or name in ("", ".", "..") or "\0" in name:
                return refuse(f"An uploaded file has no usable name ({raw_name!r}).")
            content = entry.get("content")
            if content is None:  # trame's page sends no content, and the reader's error, for a file it could not read
                return refuse(str(InputError(
                    f"The browser could not read the file '{name}' ({entry.get('error') or 'no content sent'}).",
                    "Check that the file is still there and readable, then upload it again, or give its path "
                    "on the server.")))
            pieces = content if isinstance(content, list) else [content]  # a list of pieces: written one by one
            if not all(isinstance(piece, (bytes, bytearray, memoryview)) for piece in pieces):
                return refuse(str(InputError(f"The page sent the content of '{name}' as {type(content).__name__}, "
                                             "not as bytes.", "Reload the page and upload the files again.")))
            length = sum(len(piece) for piece in pieces)
            offset = whole_number(entry.get("offset", 0), 0)
            total = whole_number(entry.get("size", length if offset == 0 else None), 0)
            done = pending.sizes.get(name)
            if offset is None or total is None or offset + length > total or (
                    offset > 0 and (done is None or done != [offset, total])):
                return refuse(str(InputError(
                    f"A piece of the uploaded file '{name}' does not follow the one before it (bytes "
                    f"{_shown(entry.get('offset'))} of {_shown(entry.get('size'))}, {length} bytes long).",
                    "Reload the page and upload the files again.")))
            coming = total if offset == 0 else length  # bytes of this file still to come, as far as is known
            if pending.received + coming > self.max_upload_bytes:
                return refuse(self._too_large(role, name, pending.received, total if offset == 0 else None))
            stored = self.stored_upload_bytes()  # this upload's files so far included
            if stored + coming > self.max_stored_upload_bytes:
                return refuse(self._too_large(role, name, stored, total if offset == 0 else None, stored=True))
            path = folder / name
            try:
                # "x": a second file of the name is not written over the first; "a": the next piece of one
                with open(path, "xb" if offset == 0 else "ab") as out:
                    for piece in pieces:
                        out.write(piece)
            except FileExistsError:  # files of several folders (a search's results): one would replace the other
                return refuse(str(InputError(
                    f"Two uploaded files are named '{name}' (from different folders?); an upload keeps no "
                    "folders, so one would silently replace the other (a DICOM series missing slices).",
                    "Upload the files of one folder (one series) at a time, or give the folder's path on "
                    "the server.")))
            except OSError as exc:  # a name too long for the server's file system, a full disk
                return refuse(str(InputError(
                    f"Could not store the uploaded file '{name}' on the server ({exc.strerror or exc}).",
                    "Rename the file (a shorter name) and upload it again." if exc.errno == errno.ENAMETOOLONG
                    else "Free space in the server's temporary folder (or ask its administrator), then upload "
                         "it again.")))
            if offset == 0:
                pending.written.append(name)
            pending.sizes[name] = [offset + length, total]
            pending.received += length
        return True

    def stored_upload_bytes(self) -> int:
        """The bytes of uploads the server holds now, all pages together: the uploads arriving, each volume's last
        upload, and one a running Load still reads (what :attr:`max_stored_upload_bytes` limits). An upload
        replaced, refused or dropped is removed, and counts no more."""
        arriving = sum(pending.received for pending in self._uploads.values() if pending is not None)
        return arriving + sum(self._stored_uploads.values())

    def _remove_upload(self, folder: Path) -> None:
        """Remove a finished upload's folder (replaced, or read by a job that ended): it counts no more."""
        shutil.rmtree(folder, ignore_errors=True)
        self._stored_uploads.pop(folder, None)

    def _too_large(self, role: str, name: str, before: int, file_size: int | None, stored: bool = False) -> str:
        """The banner of an upload refused for its size (``file_size``: the size the page declared for ``name``,
        None when a later piece went past the limit): the limit, and the option that sets it."""
        file = f"'{name}' is {size_text(file_size)}" if file_size is not None else f"'{name}' went past it"
        if not stored:
            maximum, option = self.max_upload_bytes, "--max-upload"
            problem = (f"The {role} upload is larger than this server takes, {size_text(maximum)} per upload: {file}"
                       + (f", after {size_text(before)} of other files" if before else "") + ".")
        else:
            maximum, option = self.max_stored_upload_bytes, "--max-stored-uploads"
            problem = (f"The {role} upload would take the uploads this server holds past {size_text(maximum)}, all "
                       f"pages together (each image's last upload, and those arriving): it holds "
                       f"{size_text(before)}, and {file}.")
        return str(InputError(
            problem + " Nothing of it was kept.",
            f"Give the image's path on the server instead, or ask the server's operator to raise the limit "
            f"(mmfusion web {option} SIZE; it is {size_option(maximum)})."))

    def _finish_upload(self, role: str, upload_id: str) -> None:
        """The end of an upload: check it, rename its folder to its final name and put the path in the
        panel (then: Load).

        A DICOM series arrives as several files: they stay in one folder, which ``read_image``
        reads as a series; a single file keeps its name (and so its format suffix). A header
        with its data file (``.mhd`` + ``.raw``, ``.nhdr`` + ``.raw``, ``.hdr`` + ``.img``) is
        given by the header's path. The role's previous upload is removed: its image, if
        loaded, is in memory, and patient files should not pile up on the server.
        """
        pending = self._uploads[role]
        if pending is None or pending.id != upload_id:
            return  # no files (nothing was selected), or refused, replaced or dropped already (the banner says why)
        self._uploads[role] = None
        self._ended_uploads[upload_id] = None
        short = [f"'{name}' ({done} of {total} bytes)" for name, (done, total) in pending.sizes.items() if done != total]
        if short:  # the page stopped sending a file midway (its reader failed, or a message was lost)
            shutil.rmtree(pending.folder, ignore_errors=True)
            self._banner(str(InputError(
                f"The upload ended before all of {', '.join(short[:3])} arrived.", "Upload the files again.")))
            return
        names = pending.written
        headers = [n for n in names if n.lower().endswith(_HEADER_SUFFIXES)]
        target = names[0] if len(names) == 1 else headers[0] if len(headers) == 1 else ""
        missing = missing_data_file((pending.folder / target).as_posix())  # read_image's check, before it is kept
        if missing:
            shutil.rmtree(pending.folder, ignore_errors=True)
            fix = f"Upload the two files together (select both '{target}' and '{missing}')."
            base = os.path.basename(missing.replace("\\", "/"))
            if base != missing:  # uploads keep no folders
                fix = (f"The header names its data file with a folder, which an upload cannot recreate: give the "
                       f"header's path on the server instead, or edit it to name '{base}'.")
            self._banner(str(InputError(
                f"'{target}' is a header: its voxels are in '{missing}', which was not uploaded.", fix)))
            return
        # complete: under its final name at once (a name free in the work folder, taken by the rename)
        folder = Path(tempfile.mkdtemp(prefix=f"{role}-", dir=self.workdir))
        folder.rmdir()
        os.rename(pending.folder, folder)
        self._stored_uploads[folder] = pending.received
        previous = self._upload_dirs.get(role)
        self._upload_dirs[role] = folder
        if previous is not None and previous != folder:
            if self.worker.busy and self._job_reads_from(previous):
                self._stale_uploads.append(previous)  # the running Load reads it: removed when the job ends
            else:  # Register and Fuse read no files (the images are in memory), nor a Load one it was not given
                self._remove_upload(previous)
        with self.state:
            self.state[f"{role}_path"] = (folder / target).as_posix() if target else folder.as_posix()

    def _job_reads_from(self, folder: Path) -> bool:
        """Whether the running job reads a file in ``folder`` (or the folder, a DICOM series)."""
        inside = os.path.realpath(folder)
        return any(path == inside or path.startswith(inside + os.sep) for path in self._job_reads)

    def _remove_stale_uploads(self) -> None:
        """Remove the uploads replaced while the job that ended was reading them (they had stayed until the next
        upload or the server's exit: a patient's files on the server long after they were replaced).

        Only those: an upload replaced while a job runs is removed at once unless that job reads it (a Load of its
        path), so that the disk holds at most, per volume, the one the job reads, the last one and one arriving.
        Every upload replaced during a job had been kept until it ended: during a long registration a page could
        pile up any number of them."""
        for stale in self._stale_uploads:
            self._remove_upload(stale)
        self._stale_uploads.clear()
        self._job_reads = []

    # ------------------------------------------------------------------ registration
    def start_registration(self, page_values: Any = None) -> None:
        """Register the moving image to the fixed one with the panel's preset, stages, seed and initializer (``page_values``:
        those of :data:`_REGISTER_FIELDS` the page's Register sends, taken first; None: the state's)."""
        from .. import metrics
        from ..registration import register

        fixed, moving = self._fixed_grey, self.moving_image
        if fixed is None or moving is None:
            self._banner("Load a fixed and a moving image first.")
            return
        try:
            self._take_page_values(_REGISTER_FIELDS, page_values, "Register")
            preset, stages, seed, initializer = self._registration_settings()
        except InputError as exc:  # values a client set (the page offers only valid ones): a banner, not a traceback
            self._banner(str(exc))
            return

        def job(progress):
            from ..io import to_luminance
            from ..progress import scaled

            # a colour moving volume is registered by its luminance (and shown in colour)
            grey = moving if moving.GetNumberOfComponentsPerPixel() == 1 else to_luminance(moving)
            result = register(fixed, grey, preset=preset, stages=stages, seed=seed, initializer=initializer,
                              progress=scaled(progress, 0.0, 0.9))
            progress(0.92, "resampling the moving image")
            registered = _on_fixed_grid(moving, fixed, result.transform)
            progress(0.96, "registration metrics")
            # each over the fixed voxels the moving image reaches in that state, as ITK and ANTs count them
            reg_metrics = metrics.alignment_before_after(fixed, grey, result.transform)
            return result, registered, reg_metrics

        self.worker.start("Registration", job, self._show_registration)

    def _registration_settings(self) -> tuple[str | None, list[str] | None, int, str | None]:
        """(preset, stages, seed, initializer) from the panel, each checked: a trame client can set any state
        value (``seed="abc"`` or ``1e400`` escaped Register as a traceback in the server log; a seed of 1.5
        ran as 1; stages "rigid" as the five stages r, i, g, i, d)."""
        from ..registration import list_presets

        presets = list_presets()
        preset = self.state.preset or None
        if preset is not None:
            _client_choice(preset, presets, "registration preset", "Preset")
        stages = self.state.stages
        if stages is None or isinstance(stages, (list, tuple)) and not stages:
            stages = None if preset else ["rigid"]
        elif not isinstance(stages, (list, tuple)):
            raise InputError(f"The registration stages must be a list, not {_shown(stages)}.",
                             f"Pick them in the Stages list ({', '.join(STAGE_CHOICES)}).")
        else:
            stages = [_client_choice(stage, STAGE_CHOICES, "registration stage", "Stages") for stage in stages]
        initializer = self.state.initializer or None  # None: the preset's, as the CLI without --initializer
        if initializer is not None:
            _client_choice(initializer, INITIALIZERS, "initializer", "Initializer")
        return preset, stages, _client_seed(self.state.seed), initializer

    def _show_registration(self, out: tuple[Any, sitk.Image, dict]) -> None:
        from ..registration.result import settings_rows, transform_rows, transform_summary

        result, registered, reg_metrics = out
        self.registration, self.registered_image, self.registration_metrics = result, registered, reg_metrics
        self.fusion_result, self.fusion_metrics = None, {}
        self.viewer.set_image("fused", None)
        self.viewer.set_image("weights", None)
        self.viewer.set_image("registered", registered)
        self.viewer.show("registered")
        metric_name = result.stages[0].metric_name if result.stages else "metric"
        rows = [{"name": f"{metric_name} before → after",
                 "value": f"{number_text(result.metric_before)} → {number_text(result.metric_after)}"},
                {"name": "Stages", "value": ", ".join(s.name for s in result.stages) or "-"},
                {"name": "Initializer", "value": _initializer_text(result)},
                # the preset and seed the result ran with (recorded in it), as report.html states them: the
                # Seed field can change after Register, and nothing had said which seed the shown result used
                *({"name": name.capitalize(), "value": text} for name, text in settings_rows(result.parameters)),
                {"name": "Registration time", "value": f"{result.seconds:.1f} s"}]
        # the transform's numbers as mmfusion register prints them (rotation, translation, Slicer's RAS translation)
        rows += [{"name": name[0].upper() + name[1:], "value": text}
                 for name, text in transform_rows(transform_summary(result.transform))]
        for key in sorted(k for k in reg_metrics.get("after", {}) if k != "voxels"):
            before, after = reg_metrics["before"].get(key), reg_metrics["after"][key]
            rows.append({"name": f"{key} before → after", "value": f"{_fmt(before)} → {_fmt(after)}"})
        summary = "; ".join(result.warnings) if result.warnings else "Moving image aligned to the fixed image."
        with self.state:
            self.state.update({"has_registered": True, "has_fused": False, "registration_rows": rows,
                               "metrics_rows": [], "registration_summary": summary, "fg_layer": "functional"})
            self._sync_display_state()
            self._refresh_engine_default_b()  # Fuse takes the registered image now

    # ------------------------------------------------------------------ fusion
    def start_fusion(self, page_values: Any = None) -> None:
        """Fuse the fixed image with the (registered) moving image by the panel's method and fusion windows
        (``page_values``: those of :data:`_FUSE_FIELDS` the page's Fuse sends, taken first; None: the state's)."""
        from .. import metrics
        from ..fusion import fuse
        from ..validation import has_content

        fixed, moving, registered = self.fixed_image, self.moving_image, self.registered_image
        fixed_grey, apart = self._fixed_grey, self._slices_apart
        if fixed is None or moving is None:
            self._banner("Load a fixed and a moving image first.")
            return
        try:
            self._take_page_values(_FUSE_FIELDS, page_values, "Fuse")
            method = _client_choice(self.state.method, self._methods, "fusion method", "Method")
            # each image's window, as `mmfusion fuse --window-a LO HI --window LO HI` takes them; one that holds
            # none of its image's values is refused by fuse itself, its message in the banner
            window_a, window_b = self.fusion_window("a"), self.fusion_window("b")
        except InputError as exc:
            self._banner(str(exc))
            return

        # the moving image as it lies on the fixed grid, where the panel's default window was computed on it
        held_moving, held_fixed, unregistered = self._unregistered
        if held_moving is not moving or held_fixed is not fixed_grey:
            unregistered = None
        # the worker processes of the metrics, as this (the server's) thread gets them: the job thread asks for them,
        # and spawns them (a thread other than the main one never forks: metrics.fusion_metrics)
        workers = metrics.metric_workers()

        def job(progress):
            from ..progress import scaled

            functional = registered if registered is not None else unregistered
            if functional is None:  # not registered: fuse as the images lie (same physical space)
                progress(0.0, "resampling the moving image (not registered)")
                functional = _on_fixed_grid(moving, fixed_grey, None)
            # as `mmfusion run --no-register` refuses them: a moving image that reaches no fixed voxel (the one
            # resampled for the panel's default window had skipped this, and fuse had said "The functional image (b)
            # is constant"), or two one-slice volumes whose slices share no depth, which as 2D images had been fused
            # as if they lay together
            if registered is None and (apart or not has_content(functional)):
                raise InputError("The moving image does not overlap the fixed image as they lie"
                                 + (" (one-slice volumes whose slices share no depth)." if apart else "."),
                                 "Press Register first (it aligns them), then Fuse.")
            result = fuse(fixed, functional, method, window_a=window_a, window_b=window_b,
                          progress=scaled(progress, 0.0, 0.7))
            # reported before each metric and slice: a Cancel stops them there, where it had waited for their end
            values = metrics.fusion_metrics(result, fixed, functional, workers=workers,
                                            progress=scaled(progress, 0.75, 1.0))
            return result, values, functional

        self.worker.start("Fusion", job, self._show_fusion)

    def _show_fusion(self, out: tuple[Any, dict[str, float], sitk.Image]) -> None:
        result, values, functional = out
        self.fusion_result, self.fusion_metrics = result, values
        if self.registered_image is None:
            self.registered_image = functional
        self.viewer.set_image("fused", result.grey_image)
        self.viewer.set_image("weights", result.weights)  # a layer of its own, as Slicer shows it (None: removed)
        with self.state:
            self._render_fused(self._checked_vr_preset(self.state.vr_preset) or self.viewer.vr_preset)
        layer = self.state.fg_layer if self.viewer.node(self.state.fg_layer) is not None else None
        self.viewer.show(layer)  # anything else: functional
        if layer is None and self.state.fg_layer in _RESULT_LAYERS:
            self.state.fg_layer = "functional"  # a weight map shown, this method making none: the choice shows it
        rows = [{"name": f"{key} ({result.method})", "value": _fmt(values[key])}
                for key in _FUSION_METRIC_KEYS if key in values]
        windows = [f"{image} {lo:.6g}..{hi:.6g}" for image, key in (("fixed", "window_a"), ("moving", "window_b"))
                   if (window := result.parameters.get(key)) is not None for lo, hi in [window]]
        rows.append({"name": "Fusion windows", "value": ", ".join(windows) or "engine default"})
        rows.append({"name": "Fusion time", "value": f"{result.seconds:.1f} s"})
        rows += [{"name": "Warning", "value": warning} for warning in result.warnings]  # e.g. deep's anisotropy
        with self.state:
            self.state.update({"has_fused": True, "metrics_rows": rows,
                               "download_names": {**_DOWNLOAD_NAMES, **{what: _fused_file_name(result, what,
                                                                                                self._slice_volume)
                                                                        for what in ("fused", "weights")}}})
            self._sync_display_state()
            self._refresh_engine_default_b()  # the image fused unregistered is the one the next Fuse takes

    def _on_preset(self, preset: Any, **_: Any) -> None:
        """A preset brings its own stages: show them, so Register runs what the panel says."""
        if not preset:
            return
        from ..registration import list_presets, load_preset

        try:
            stages = [stage.name for stage in load_preset(_client_choice(preset, list_presets(), "registration preset",
                                                                         "Preset")).stages]
        except InputError as exc:
            self.state.error_message = str(exc)
            self.state.preset = ""  # the choice shows what Register would use
            return
        current = self.state.stages if isinstance(self.state.stages, (list, tuple)) else ["rigid"]
        self.state.stages = [s for s in stages if s in STAGE_CHOICES] or list(current)

    # ------------------------------------------------------------------ display
    def _banner(self, message: str) -> None:
        """Show ``message`` in the page's banner (sent to the page at once)."""
        with self.state:
            self.state.error_message = message

    def _refuse_display_value(self, key: str, problem: str, fix: str, current: Any) -> None:
        """A display value a client set that the views cannot take: the banner says why, the control goes
        back to what the views show (a float() of "abc" had escaped as a traceback, nothing in the page)."""
        self.state.error_message = str(InputError(problem, fix))
        self.state[key] = current

    def _on_opacity(self, fg_opacity: Any, **_: Any) -> None:
        opacity = _number(fg_opacity)
        if opacity is None or not 0.0 <= opacity <= 1.0:
            return self._refuse_display_value("fg_opacity", f"The opacity must be a number from 0 to 1, not "
                                              f"{_shown(fg_opacity)}.", "Set it with the Opacity slider.",
                                              self.viewer.opacity)
        self.viewer.set_opacity(opacity)

    def _on_colormap(self, colormap: Any, **_: Any) -> None:
        try:
            self.viewer.set_colormap(_client_text(colormap, "colour table", "Pick one in the Colour table list."))
        except InputError as exc:
            self.state.error_message = str(exc)
            self.state.colormap = self.viewer.colormap  # the choice shows what is in use
        self.state.fg_legend = self._legend_gradient()

    def _on_fg_layer(self, fg_layer: Any, **_: Any) -> None:
        layers = [layer["value"] for layer in _FG_LAYERS]
        if fg_layer not in layers:
            return self._refuse_display_value("fg_layer", f"Unknown foreground layer {_shown(fg_layer)}.",
                                              f"Pick one in the Foreground layer list: {', '.join(layers)}.",
                                              self.viewer.foreground_role if self.viewer.foreground_role in
                                              _RESULT_LAYERS else "functional")
        if self.fixed_image is None:
            return
        if fg_layer in _RESULT_LAYERS and self.viewer.node(fg_layer) is None:
            self.state.error_message = ("There is no fused image yet: press Fuse first." if self.fusion_result is None
                                        else f"The '{self.fusion_result.method}' fusion made no weight map: fuse with "
                                             "another method to have one.")
            self.state.fg_layer = "functional"  # the choice shows what the views show
            return
        self.viewer.show(fg_layer if fg_layer in _RESULT_LAYERS else self.viewer.default_foreground())
        self._sync_display_state()

    # ------------------------------------------------------------------ window/level
    def _sync_display_state(self) -> None:
        """Put the display nodes' background window/level and foreground range in the panel, with
        slider ranges from the shown images' min/max (the user's values are kept by the viewer
        over colour-table, opacity and layer changes and over new registrations)."""
        import numpy as np

        from .viewer import CT_WINDOW_LEVEL_PRESETS, WEIGHTS_RANGE, image_range, looks_like_ct

        def limits(image: sitk.Image) -> tuple[float, float, float]:
            lo, hi = image_range(image, self.viewer.padding(image))
            integer = np.issubdtype(sitk.GetArrayViewFromImage(image).dtype, np.integer)
            return lo, hi, _step(lo, hi, bool(integer))

        update: dict[str, Any] = {}
        role, wl = self.viewer.background_role(), self.viewer.current_background_window_level()
        if role is None or wl is None:
            update["wl_enabled"] = False
            self._background_limits = None
        else:
            image = self.viewer.images[role]
            self._background_limits = lo, hi, step = limits(image)
            presets = list(_WL_BASE_CHOICES)
            if looks_like_ct(image, self.viewer.padding(image)):
                presets += [{"title": f"{name} (W {w:g} / L {lv:g})", "value": name}
                            for name, (w, lv) in CT_WINDOW_LEVEL_PRESETS.items()]
            update.update({"wl_enabled": True, "wl_presets": presets, **_window_level_panel(*wl, lo, hi, step)})
            if self.viewer.background_window_level is None:
                update["wl_preset"] = _WL_AUTO
            elif self.state.wl_preset not in [p["value"] for p in presets]:
                update["wl_preset"] = _WL_MANUAL
        fg_range = self.viewer.current_functional_range()
        # the layer the values are of, in the same message as they are (the legend shows by it)
        update["fg_range_layer"] = (self.viewer.foreground_role or "") if fg_range is not None else ""
        if fg_range is None:
            update["fg_range_enabled"] = False
            self._foreground_step = 0.0
        else:
            if self.viewer.foreground_role == "weights":  # its scale, 0..1, whatever it holds (average's: 0.5 only)
                (lo, hi), step = WEIGHTS_RANGE, 0.001
            else:
                lo, hi, step = limits(self.viewer.images[self.viewer.foreground_role])
            self._foreground_step = step
            lower, upper = fg_range
            update.update({"fg_range_enabled": True, "fg_step": step, "fg_min": min(lo, lower),
                           "fg_max": max(hi, upper), "fg_lower": _snap(lower, step),
                           "fg_upper": _snap(upper, step)})
        update["fg_legend"] = self._legend_gradient()
        self.state.update(update)

    def _legend_gradient(self) -> str:
        """The shown foreground's colour table across its display window, lower to upper, as a CSS gradient: the
        weight map's legend (its window is 0..1 unless the Lower/Upper controls changed it)."""
        import numpy as np

        from .. import mrml

        colors = mrml.colormap_colors(self.slicer_app.scene, self.viewer.colormap, size=17)
        if colors is None:
            return ""
        stops = ", ".join(f"rgb({r:.0f}, {g:.0f}, {b:.0f}) {100.0 * i / (len(colors) - 1):.1f}%"
                          for i, (r, g, b) in enumerate(255.0 * np.asarray(colors)[:, :3]))
        return f"linear-gradient(to right, {stops})"

    def _on_dragged_window_level(self, window_level: tuple[float, float] | None) -> None:
        """A left-drag in a slice view changed the anatomy's window/level: the panel follows, live.

        Called on the server's loop for every mouse move of the drag, so it reuses the image's
        min/max found when the image was shown rather than scanning its voxels again. The values
        echo back through :meth:`_on_bg_window_level`, which sees the display node already has them.
        """
        if window_level is None or self._background_limits is None:  # Slicer's reset: Auto
            with self.state:
                self._sync_display_state()
            return
        with self.state:
            self.state.update({**_window_level_panel(*window_level, *self._background_limits),
                               "wl_preset": _WL_MANUAL})

    def _on_wl_preset(self, wl_preset: Any, **_: Any) -> None:
        """Auto (the percentile rule) or one of Slicer's CT presets; Manual is what the sliders set."""
        from .viewer import CT_WINDOW_LEVEL_PRESETS

        choices = [_WL_AUTO, _WL_MANUAL, *CT_WINDOW_LEVEL_PRESETS]
        if not isinstance(wl_preset, str) or wl_preset not in choices:  # a list had raised "unhashable type"
            return self._refuse_display_value(
                "wl_preset", f"Unknown window/level preset {_shown(wl_preset)}.",
                f"Pick one in the Window/level preset list: {', '.join(choices)}.",
                _WL_AUTO if self.viewer.background_window_level is None else _WL_MANUAL)
        if self.viewer.current_background_window_level() is None:
            return
        if wl_preset == _WL_AUTO:
            self.viewer.set_background_window_level(None)
        elif wl_preset in CT_WINDOW_LEVEL_PRESETS:
            self.viewer.set_background_window_level(*CT_WINDOW_LEVEL_PRESETS[wl_preset])
        else:
            return
        self._sync_display_state()

    def _on_bg_window_level(self, bg_window: Any, bg_level: Any, **_: Any) -> None:
        """The window/level sliders or fields moved: set them on the background's display node."""
        current = self.viewer.current_background_window_level()
        window, level = _number(bg_window), _number(bg_level)
        if current is None or window is None or level is None or window <= 0:
            return
        # the panel shows values rounded to the step (the server's: a page may send any bg_step)
        tolerance = 0.51 * (self._background_limits[2] if self._background_limits else 0.0)
        if abs(window - current[0]) <= tolerance and abs(level - current[1]) <= tolerance:
            return  # the panel echoing the display node (load, preset), not a user change
        self.viewer.set_background_window_level(window, level)
        if self.state.wl_preset != _WL_MANUAL:
            self.state.wl_preset = _WL_MANUAL

    def _on_fg_range(self, fg_lower: Any, fg_upper: Any, **_: Any) -> None:
        """The functional threshold/upper limit moved: set them on the foreground's display node."""
        current = self.viewer.current_functional_range()
        lower, upper = _number(fg_lower), _number(fg_upper)
        if current is None or lower is None or upper is None:
            return
        tolerance = 0.51 * self._foreground_step
        if abs(lower - current[0]) <= tolerance and abs(upper - current[1]) <= tolerance:
            return
        self.viewer.set_functional_range(lower, upper)

    def reset_functional_range(self) -> None:
        """Back to the percentile rule (40th..99.5th percentile of the uptake inside the body)."""
        self.viewer.set_functional_range(None)
        with self.state:
            self._sync_display_state()

    # ------------------------------------------------------------------ fusion windows
    def _reset_fusion_windows(self) -> None:
        """The presets each loaded image takes (CT windows for a CT, SUV windows for a PET in SUV, its 1st-99th
        percentile), and the engine's default for both: a new pair is fused as `mmfusion fuse` without a window."""
        update: dict[str, Any] = {}
        for side, image in (("a", self.fixed_image), ("b", self.moving_image)):
            if image is None:
                continue
            # the padding the viewer found for its windows (the panel's image is the one it shows), once for all
            padding = self.viewer.padding(image) if image.GetNumberOfComponentsPerPixel() == 1 else COMPUTE_MASK
            items, self._fw_windows[side], default, words = _fusion_window_choices(image, padding)
            if side == "b":  # by the method, of the image Fuse will take
                default, words = self._engine_default_b()
            self._fw_default[side] = (default, words)
            self._fw_preset[side] = _FW_DEFAULT
            width, level = _width_level(default)
            update.update({f"fw_{side}_presets": items, f"fw_{side}_preset": _FW_DEFAULT,
                           f"fw_{side}_window": width, f"fw_{side}_level": level})
        self.state.update(update)
        for side in "ab":
            self._show_fusion_window(side)

    def _engine_default_b(self) -> tuple[tuple[float, float], str]:
        """The moving image's window under the engine's default for the panel's method (see
        :func:`_engine_default_window`), of the image Fuse takes: the registered one (on the fixed grid), else the
        moving image resampled onto the fixed grid as the two lie (:meth:`_moving_as_it_lies`)."""
        overlay = self.state.method == "overlay"
        functional = self.registered_image if self.registered_image is not None else self._moving_as_it_lies()
        held, was_overlay, default = self._fw_default_b_for
        if held is not functional or was_overlay != overlay:  # a percentile of a large volume: once per image, rule
            default = _engine_default_window(functional, "b", "overlay" if overlay else "")
            self._fw_default_b_for = (functional, overlay, default)
        return default

    def _moving_as_it_lies(self) -> sitk.Image:
        """The image Fuse takes before a registration: the moving image resampled onto the fixed grid as the two lie
        (once per pair). The default had been computed on the moving image as loaded: a PET whose field of view went
        past the CT's, its bladder outside it, showed min..99.5th percentile -0.237..30 where Fuse used
        -0.19..2.41."""
        moving, fixed = self.moving_image, self._fixed_grey
        if fixed is None:
            return moving
        held_moving, held_fixed, image = self._unregistered
        if held_moving is not moving or held_fixed is not fixed:
            try:
                image = _on_fixed_grid(moving, fixed, None)
            except InputError:  # a pair Fuse refuses unregistered (its words then): the default of the image loaded
                return moving
            self._unregistered = (moving, fixed, image)
        return image

    def _refresh_engine_default_b(self, **_: Any) -> None:
        """The method or the image Fuse takes changed: the moving image's default window again (the fields follow
        where the preset is Engine default)."""
        if self.moving_image is None:
            return
        self._fw_default["b"] = self._engine_default_b()
        if self._fw_preset["b"] == _FW_DEFAULT:
            width, level = _width_level(self._fw_default["b"][0])
            self.state.update({"fw_b_window": width, "fw_b_level": level})
        self._show_fusion_window("b")

    def fusion_window(self, side: str) -> tuple[float, float] | None:
        """The window (low, high) of image ``side`` ("a": fixed, "b": moving) that Fuse passes to the engine's fuse
        (``window_a``/``window_b``), from the panel's preset or its Window and Level fields; None: the engine's
        default (no window).

        Raises:
            InputError: a Window or Level that is not a number, a Window of 0 or less (the CLI's check of
                ``--window-level-a``, in the same words), or a preset the panel does not offer.
        """
        label, flag = _FW_SIDES[side]
        preset = self.state[f"fw_{side}_preset"]
        if preset == _FW_DEFAULT:
            return None
        if preset == _FW_MANUAL:
            from ..fusion import window_from_width_level

            return window_from_width_level(
                self.state[f"fw_{side}_window"], self.state[f"fw_{side}_level"], f"The {label}'s fusion Window and Level",
                f"Type the width (more than 0) and the level of the window in the {label}'s Window and Level "
                "fields, in its own units, as Slicer shows them (e.g. 400 and 40 for a CT's soft tissue, "
                "-160..240), or pick a preset.", width_name="the window width")
        windows = self._fw_windows[side]
        if isinstance(preset, str) and preset in windows:
            return windows[preset]
        return _refuse_choice(preset, [_FW_DEFAULT, _FW_MANUAL, *windows], f"fusion window preset of the {label}",
                              f"{label}'s fusion window Preset")

    def _show_fusion_window(self, side: str) -> None:
        """Under the fields: the window Fuse will use, as the CLI's option gives it, or what is wrong with it."""
        _label, flag = _FW_SIDES[side]
        try:
            window = self.fusion_window(side)
        except InputError as exc:
            text, bad = exc.problem, True
        else:
            bad = False
            if window is None:
                text = f"The engine's default ({self._fw_default[side][1]}), as mmfusion fuse without {flag}."
            else:
                text = f"{window[0]:.6g}..{window[1]:.6g}, as mmfusion fuse {flag} {window[0]:.6g} {window[1]:.6g}."
        self.state.update({f"fw_{side}_text": text, f"fw_{side}_bad": bad})

    def _on_fusion_window_preset(self, side: str, **_: Any) -> None:
        """A preset picked: its window in the Window and Level fields (Manual keeps what they hold)."""
        label, _flag = _FW_SIDES[side]
        preset = self.state[f"fw_{side}_preset"]
        offered = [_FW_DEFAULT, _FW_MANUAL, *self._fw_windows[side]]
        if not isinstance(preset, str) or preset not in offered:  # a client can set anything
            return self._refuse_display_value(
                f"fw_{side}_preset", f"Unknown fusion window preset {_shown(preset)} of the {label}.",
                f"Pick one in the {label}'s fusion window Preset list: {', '.join(offered)}.", self._fw_preset[side])
        if preset == self._fw_preset[side]:
            return self._show_fusion_window(side)  # the server's own value coming back
        self._fw_preset[side] = preset
        if preset != _FW_MANUAL:
            window = self._fw_windows[side].get(preset) or self._fw_default[side][0]
            width, level = _width_level(window)
            self.state.update({f"fw_{side}_window": width, f"fw_{side}_level": level})
        self._show_fusion_window(side)

    def _on_fusion_window_fields(self, side: str, **_: Any) -> None:
        """Window or Level typed: the preset becomes Manual, unless the fields hold the preset's own values (the
        server's echo of a preset picked)."""
        preset = self._fw_preset[side]
        if preset != _FW_MANUAL:
            shown = _width_level(self._fw_windows[side].get(preset) or self._fw_default[side][0])
            typed = (_number(self.state[f"fw_{side}_window"]), _number(self.state[f"fw_{side}_level"]))
            if typed != shown:
                self._fw_preset[side] = _FW_MANUAL
                self.state[f"fw_{side}_preset"] = _FW_MANUAL
        self._show_fusion_window(side)

    def _checked_vr_preset(self, vr_preset: Any) -> str | None:
        """``vr_preset`` when it is one of the 3D rendering presets; otherwise the banner says why, the control
        goes back to the preset the 3D views use (or use at the next Fuse), and None."""
        presets = self.viewer.vr_presets()
        if isinstance(vr_preset, str) and vr_preset in presets:
            return vr_preset
        self._refuse_display_value("vr_preset", f"Unknown 3D rendering preset {_shown(vr_preset)}.",
                                   f"Pick one in the 3D rendering preset list: {', '.join(presets)}.",
                                   self.viewer.vr_preset)
        return None

    def _render_fused(self, preset: str) -> None:
        """Volume-render the fused image with ``preset``; a refusal (a colour volume) goes to the banner. A 2D pair
        has no 3D view (its layout is the axial view alone): the preset is kept for the next volumes."""
        if self.fixed_image is not None and self.fixed_image.GetDimension() == 2:
            self.viewer.vr_preset = preset
            return
        try:
            self.viewer.show_volume_rendering("fused", preset)
        except InputError as exc:
            self.state.error_message = str(exc)

    def _on_vr_preset(self, vr_preset: Any, **_: Any) -> None:
        """The 3D rendering preset: checked when set, fused image or not (an unknown one had been refused only
        at the next Fuse, and with a fused image the control had kept showing it, not what the views show)."""
        preset = self._checked_vr_preset(vr_preset)
        if preset is None or preset == self.viewer.vr_preset:
            return  # refused (the control is back), or what the views already show (that revert's echo)
        if self.viewer.node("fused") is None:
            self.viewer.vr_preset = preset  # what the next Fuse shows
            return
        self._render_fused(preset)

    # ------------------------------------------------------------------ downloads
    def result_file(self, what: str) -> Path:
        """Write a result to a new folder in the work folder and return its path.

        Args:
            what: "transform" (ITK .tfm), "fused" (NIfTI; MetaImage on a sheared fixed grid), "weights" (the
                fusion's weight map, the fixed image's weight per voxel, 0..1 as 32-bit float, on the fused image's
                grid and file type: ``mmfusion run``'s ``weights_<method>``) or "report" (self-contained HTML).

        Raises:
            InputError: the result does not exist yet.
        """
        return self._write_result(what)[0]

    def result_bytes(self, what: str) -> bytes:
        """The content of :meth:`result_file`; the file and its folder are removed once read.

        Every click of a download button writes a new file (the fused volume, the report with
        its montages): kept, they would fill the work folder for as long as the server runs.
        """
        path, folder = self._write_result(what)
        try:
            return path.read_bytes()
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _write_result(self, what: str) -> tuple[Path, Path]:
        """(file, the new folder holding it) of a result; nothing is left behind when it fails."""
        from .. import io

        if what not in _DOWNLOAD_NAMES:  # before any folder is made from the name
            raise InputError(f"Unknown download '{what}'.", f"Use {', '.join(_DOWNLOAD_NAMES)}.")
        if what == "transform" and self.registration is None:
            raise InputError("There is no transform yet.", "Press Register first.")
        if what != "transform" and self.fusion_result is None:
            raise InputError("There is no fused image yet.", "Press Fuse first.")
        if what == "weights" and self.fusion_result.weights is None:
            raise InputError(f"The '{self.fusion_result.method}' fusion made no weight map.",
                             "Fuse with another method to have one.")
        out = Path(tempfile.mkdtemp(prefix=f"{what}-", dir=self.workdir))
        try:
            if what == "transform":
                return Path(io.write_transform(self.registration.transform, out / "moving_to_fixed.tfm")), out
            if what in ("fused", "weights"):  # the weight map as mmfusion run's weights_<method>: A's weight, float
                from ..pipeline import _writable

                image = self.fusion_result.image if what == "fused" else self.fusion_result.weights
                name = _fused_file_name(self.fusion_result, what, self._slice_volume)
                if self._slice_volume is not None:  # a 2D pair read from one-slice volumes: back on the fixed one's
                    image = io.as_one_slice_of(image, self._slice_volume)
                # a PNG rounded as run writes it (and as the metrics round it), not stretched again
                return Path(io.write_image(_writable(image, name[name.index("."):]), out / name)), out
            from ..report import write_report

            inputs = {"Fixed": self.fixed_image, "Moving (on the fixed grid)": self.registered_image}
            paths = write_report(out, inputs=inputs, fusions=[self.fusion_result],
                                 metrics={self.fusion_result.method: self.fusion_metrics},
                                 registration=self.registration,
                                 registration_metrics=self.registration_metrics or None,
                                 title="MultimodalFusion web report",
                                 notes=[f"fixed: {self.names['fixed']}", f"moving: {self.names['moving']}"])
            return Path(paths["html"]), out
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise

    async def download(self, what: str) -> Any:
        """Trigger behind the download buttons: the file as a trame attachment (None on error).

        Writing the report (montages, chart) takes a moment, so files are written on a
        thread and the page stays live meanwhile; the server keeps no copy.
        """
        import asyncio

        try:
            content = await asyncio.get_running_loop().run_in_executor(None, self.result_bytes, what)
        except InputError as exc:
            self._banner(str(exc))
            return None
        except Exception as exc:  # shown in the page, not only in the log
            logger.exception("download of %s failed", what)
            self._banner(f"Could not write the {what}: {exc}")
            return None
        return self.server.protocol.addAttachment(content)


def _render_scaled_down(view_adapter: Any) -> None:
    """Have a view larger than an 8K screen rendered scaled down to one (trame-rca's ``max_pixel_count``: the
    picture shown stretched, the page's mouse events scaled with it) rather than refused by the message gate: a
    window spanning three 6K screens, or a 5K screen at pixel ratio 1 zoomed out to 25%, had four blank views."""
    from .message_gate import MAX_VIEW_PIXELS, MAX_VIEW_SIDE

    if hasattr(type(view_adapter), "max_pixel_count"):
        view_adapter.max_pixel_count = MAX_VIEW_PIXELS
    else:
        logger.warning("this trame-rca cannot scale a view down (no max_pixel_count): a page may have the view %s "
                       "rendered at up to %d pixels a side", getattr(view_adapter, "area_name", "?"), MAX_VIEW_SIDE)


def serve(*, fixed: str | None = None, moving: str | None = None, port: int = 8080, host: str = "127.0.0.1",
          demo: bool = False, demo_spacing_mm: float = 3.0, open_browser: bool = False,
          allowed_origins: Sequence[str] = (), max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
          max_stored_upload_bytes: int | None = None, max_session_upload_bytes: int | None = None) -> None:
    """Start the web application and block until it stops (Ctrl+C).

    Args:
        fixed: fixed (anatomical) image path to load at start.
        moving: moving (functional) image path to load at start.
        port: HTTP port (0 picks a free one).
        host: interface to listen on; the default serves this machine only. The app gives
            access to files on the server, so expose it only behind authentication.
        demo: load the demo pair at start.
        demo_spacing_mm: voxel size of the demo images.
        open_browser: open the system browser on the page.
        allowed_origins: page addresses (``https://fusion.example.org``) allowed to connect besides the
            server's own, e.g. a reverse proxy's public address when it does not pass the Host header on.
        max_upload_bytes: the most bytes one upload may hold (a file, or the files of a series, together).
        max_stored_upload_bytes: the most bytes of uploads the server holds at once, all pages together (default
            :data:`DEFAULT_MAX_STORED_UPLOADS`).
        max_session_upload_bytes: the old name of ``max_stored_upload_bytes`` (used when that is not given).
    """
    allowed = [parse_origin(origin) for origin in allowed_origins]  # a bad address fails before start-up
    configure_offscreen_rendering()
    # trame parses sys.argv for its own options; keep mmfusion's arguments away from it.
    os.environ.setdefault("TRAME_ARGS", "--server")
    # the work folder is made here, so that it goes however the start-up ends (uploads and downloads of
    # patient files pass through it)
    with _sigterm_exits() as terminated, tempfile.TemporaryDirectory(prefix="mmfusion-web-") as workdir:
        app = FusionWebApp(fixed=fixed, moving=moving, demo=demo, demo_spacing_mm=demo_spacing_mm, workdir=workdir,
                           max_upload_bytes=max_upload_bytes, max_stored_upload_bytes=max_stored_upload_bytes,
                           max_session_upload_bytes=max_session_upload_bytes)
        terminated.exit_if_asked()
        app.ctrl.on_server_bind.add(lambda wslink_server: _guard_websockets(wslink_server.app, host, allowed))
        app.ctrl.on_server_ready.add(lambda **_: terminated.pass_on())
        try:
            app.server.start(port=port, host=host, open_browser=open_browser, timeout=0)
        finally:
            app.worker.shutdown()


class _Termination:
    """A SIGTERM taken during the start-up, acted on where the start-up can stop (see :func:`_sigterm_exits`)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def take(self, signum: int, _frame: Any) -> None:
        self.signum = signum

    def exit_if_asked(self) -> None:
        """End the start-up as Ctrl+C does (through the clean-up code) if a SIGTERM came."""
        if self.signum is not None:
            raise SystemExit(128 + self.signum)  # a shell's status for a process ended by the signal

    def pass_on(self) -> None:
        """Once serving (the server's own handler has SIGTERM), send it one that came in the last moments of
        the start-up: it stops the server as a SIGTERM while serving does."""
        if self.signum is not None:
            import signal

            signal.raise_signal(self.signum)


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[_Termination]:
    """A SIGTERM (``kill``, a service manager, a container stopping) during the start-up of several seconds
    ends the process as Ctrl+C does, through the clean-up code: by default it ended it at once, leaving the
    work folder behind. The signal is noted and acted on once the app is made (:meth:`_Termination.exit_if_asked`):
    raised where it came, in the middle of importing VTK and slicer-core, it had crashed the process
    (SIGSEGV, the work folder left) or turned into an ImportError (exit 1), 2 times in 6 at 0.2-0.5 s.
    Once running, the server's own handler takes SIGTERM (and stops cleanly). Only the main thread can set a
    handler: from another thread (the Python API) nothing changes."""
    import signal
    import threading

    termination = _Termination()
    if threading.current_thread() is not threading.main_thread():
        yield termination
        return
    previous = signal.signal(signal.SIGTERM, termination.take)
    try:
        yield termination
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def parse_origin(origin: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a page address such as ``https://fusion.example.org`` (the default port filled in).

    Raises:
        InputError: ``origin`` is not ``http(s)://host[:port]``.
    """
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(origin.strip().rstrip("/"))
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
        raise InputError(f"'{origin}' is not a page address.",
                         "Give the scheme and host the browser shows, e.g. https://fusion.example.org or "
                         "http://10.0.0.5:8080.")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _is_loopback(hostname: str | None) -> bool:
    import ipaddress

    if not hostname:
        return False
    if hostname == "localhost" or hostname.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(hostname).is_loopback
    except ValueError:
        return False


def websocket_refusal(origin: str | None, host: str | None, listen_host: str,
                      allowed: Sequence[tuple[str, str, int]] = ()) -> str | None:
    """Why a browser's WebSocket connection to the server is refused, or None to accept it.

    A browser lets any site's page open a WebSocket to any address and does not ask the server first
    (no same-origin rule for WebSockets): without this check, a page of another site open in the user's
    browser could drive the app, which reads any file the server user can, and take the results. So the
    page must come from this server (its ``Origin`` names the ``Host`` it connects to) or from an address in
    ``allowed``; and a server listening on a loopback address answers only to a loopback name (a site
    whose name was made to resolve to 127.0.0.1, DNS rebinding, would pass the first check). A client that
    sends no ``Origin`` is not a browser's page (a script on the machine) and is let through.

    Args:
        origin: the handshake's ``Origin`` header.
        host: its ``Host`` header.
        listen_host: the interface the server listens on (``--host``).
        allowed: :func:`parse_origin` of the ``--allow-origin`` addresses.
    """
    from urllib.parse import urlsplit

    try:
        split = urlsplit(f"//{host or ''}")
        host_name, host_port = split.hostname, split.port
    except ValueError:
        return f"Host '{host}' is not an address."
    if _is_loopback(listen_host) and not _is_loopback(host_name) and host_name not in {a[1] for a in allowed}:
        return (f"Host '{host}' is not this machine's loopback name: the server listens on {listen_host} only "
                "(a proxy passing its own name on needs --allow-origin with its address).")
    if not origin:
        return None
    try:
        scheme, origin_name, origin_port = parse_origin(origin)
    except InputError:
        return f"Origin '{origin}' is not a page address."
    if (scheme, origin_name, origin_port) in allowed:
        return None
    if origin_name == host_name and origin_port == (host_port or (443 if scheme == "https" else 80)):
        return None
    return (f"a page of {origin} may not connect to this server ({host}): only its own page may, or an "
            "address given with --allow-origin (a reverse proxy's).")


def _guard_websockets(web_app: Any, listen_host: str, allowed: Sequence[tuple[str, str, int]]) -> None:
    """Refuse (HTTP 403, and a warning in the server log) the WebSocket handshakes :func:`websocket_refusal`
    refuses. Added to the aiohttp application before the server starts."""
    from aiohttp import web

    @web.middleware
    async def guard(request: Any, handler: Any) -> Any:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            why = websocket_refusal(request.headers.get("Origin"), request.headers.get("Host"), listen_host, allowed)
            if why is not None:
                logger.warning("refused a connection: %s", why)
                raise web.HTTPForbidden(text=f"mmfusion web refused the connection: {why}\n")
        return await handler(request)

    web_app.middlewares.append(guard)
