"""The ``mmfusion`` command line.

Each sub-command is a pair of functions: ``_add_<name>(subparsers)`` builds its parser and
sets ``func`` to ``_run_<name>(args) -> int``. Front-end work only: parse, call the engine,
print. Errors from the engine (``MultimodalFusionError``) are printed as one plain message
with a non-zero exit code, never as a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable

from . import __version__
from .errors import MultimodalFusionError

__all__ = ["main", "build_parser"]


# ----------------------------------------------------------------------------- helpers
class ProgressBar:
    """A tqdm bar driven by the engine's ``progress(fraction, message)`` callback."""

    def __init__(self, enabled: bool = True, desc: str = ""):
        self.enabled = enabled and sys.stderr.isatty() or os.environ.get("MMFUSION_PROGRESS") == "1"
        self._bar = None
        self._desc = desc

    def __call__(self, fraction: float, message: str) -> bool:
        if not self.enabled:
            return True
        if self._bar is None:
            from tqdm import tqdm

            self._bar = tqdm(total=1000, desc=self._desc, file=sys.stderr, leave=False,
                             bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")
        self._bar.n = int(round(fraction * 1000))
        self._bar.set_postfix_str(message[:60], refresh=True)
        return True

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=_json_default))


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return str(obj)


# ----------------------------------------------------------------------------- info
def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="size, spacing, origin, direction and intensity range of images")
    p.add_argument("files", nargs="+", help="image files or DICOM folders")
    p.add_argument("--series", help="DICOM series UID or description, when a folder holds several")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_run_info)


def _run_info(args: argparse.Namespace) -> int:
    from .io import image_info, read_image

    infos = {}
    for f in args.files:
        image = read_image(f, series=args.series, keep_color=True)
        infos[f] = image_info(image)
    if args.json:
        _print_json(infos)
        return 0
    for f, info in infos.items():
        print(f"{f}")
        print(f"  dimension  {info['dimension']}D, {info['components']} component(s), {info['pixel_type']}")
        print(f"  size       {' x '.join(str(s) for s in info['size'])}")
        print(f"  spacing    {', '.join(f'{s:.6g}' for s in info['spacing'])} mm")
        print(f"  origin     {', '.join(f'{o:.6g}' for o in info['origin'])} mm (LPS)")
        d = info["dimension"]
        rows = [info["direction"][i * d:(i + 1) * d] for i in range(d)]
        print("  direction  " + " | ".join(" ".join(f"{v:+.4f}" for v in r) for r in rows))
        print(f"  intensity  min {info['min']:.6g}, max {info['max']:.6g}, mean {info['mean']:.6g}")
        if info["non_finite_voxels"]:
            print(f"  WARNING    {info['non_finite_voxels']} NaN/inf voxels")
    return 0


# ----------------------------------------------------------------------------- parser
# Sub-command builders, in the order `mmfusion --help` lists them. Each area adds its own.
_BUILDERS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_info,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmfusion",
        description="Multimodal medical image registration and fusion (CT, MR, PET, SPECT).")
    parser.add_argument("--version", action="version", version=f"mmfusion {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for build in _BUILDERS:
        build(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MultimodalFusionError as exc:
        if args.verbose:
            raise
        print(f"mmfusion {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"mmfusion {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
