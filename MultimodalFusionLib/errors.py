"""Errors that name the problem and the fix.

Every error the engine raises on bad input is a :class:`MultimodalFusionError`; the CLI
prints its message (no traceback) and exits non-zero, the Slicer module shows it in a
dialog. Raw ITK exceptions never reach the user: :func:`itk_guard` translates them.
"""

from __future__ import annotations

import contextlib
import re
from typing import Iterator

__all__ = [
    "MultimodalFusionError",
    "InputError",
    "RegistrationError",
    "OperationCancelled",
    "itk_guard",
    "itk_reason",
]


class MultimodalFusionError(Exception):
    """Base class: ``str(err)`` is a complete sentence naming the problem and the fix."""

    exit_code = 2

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem} Fix: {fix}")


class InputError(MultimodalFusionError, ValueError):
    """Bad input: unreadable file, wrong dimension, NaNs, no overlap, empty image..."""


class DimensionMismatch(InputError):
    """Label maps or landmarks of another dimension than the images they are checked against (``given_dimension``:
    theirs), so that a caller that can take them in another frame (``pipeline.run``: a one-slice volume's 2D slice)
    tells this refusal from the others without reading its words."""

    def __init__(self, problem: str, fix: str | None = None, *, given_dimension: int):
        super().__init__(problem, fix)
        self.given_dimension = int(given_dimension)


class RegistrationError(MultimodalFusionError, RuntimeError):
    """Registration could not run or produced no usable transform."""

    exit_code = 3


class OperationCancelled(MultimodalFusionError):
    """The user cancelled a long operation through the progress callback."""

    exit_code = 130

    def __init__(self, problem: str = "Cancelled by the user.", fix: str | None = None):
        super().__init__(problem, fix)


@contextlib.contextmanager
def itk_guard(what: str, fix: str | None = None) -> Iterator[None]:
    """Turn a RuntimeError from deep inside ITK into a MultimodalFusionError.

    Args:
        what: what was being done, e.g. ``"reading 'a.nii.gz'"``.
        fix: a hint for the user.
    """
    try:
        yield
    except MultimodalFusionError:
        raise
    except RuntimeError as exc:  # SimpleITK raises RuntimeError with a multi-line ITK trace
        raise InputError(f"ITK failed while {what}: {itk_reason(str(exc))}", fix) from exc


#: "ITK ERROR: MetaImageIO(0x55d...): " / "sitk::ERROR: ": who raised it, and where it lives in memory
_ITK_PREFIX = re.compile(r"^(?:ITK ERROR:|sitk::ERROR:)\s*(?:[\w:<>, ]+\(0x[0-9a-fA-F]+\):\s*)?")
#: "Exception thrown in SimpleITK ReadTransform: /path/itkTxtTransformIO.cxx:160:": the C++ source line
_SOURCE_LINE = re.compile(r"^(?:Exception thrown in .*|\S+\.(?:cxx|hxx|cpp|cc|h|txx):\d+:?)$")


def itk_reason(message: str) -> str:
    """ITK's reason from one of its exception texts, as one sentence: the object address, the source
    file and line and the lists some errors append (every registered transform type, the IO classes
    tried) dropped; ITK's own words kept.

    Args:
        message: ``str()`` of the RuntimeError SimpleITK raised.
    """
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    for ln in lines:
        if ln.lower().startswith("description:"):  # older ITK: Location / Description / File / Line
            return _sentence(ln.split(":", 1)[1].strip())
    body = [ln for ln in lines if not _SOURCE_LINE.match(ln)]
    start = next((i for i, ln in enumerate(body) if _ITK_PREFIX.match(ln)), 0)
    body = body[start:]
    if not body:
        return "unknown ITK error."
    body[0] = _ITK_PREFIX.sub("", body[0])
    nrrd = [ln for ln in body if ln.startswith("[nrrd]")]
    if nrrd:  # teem's trace, outermost call first: its last line says what went wrong
        return _sentence(re.sub(r"^\[nrrd\]\s*\w+:\s*", "", nrrd[-1]))
    kept = [body[0]]
    for ln in body[1:]:
        # a line ending in ':' opens a list (the transform types registered, the IO classes tried);
        # "The usual cause..." is advice for ITK developers (register the class with its factory)
        if ln.endswith(":") or ln.startswith(('"', "The usual cause")) or len(" ".join(kept)) > 300:
            break
        kept.append(ln)
    text = kept[0]
    for ln in kept[1:]:
        text += (" " if text.endswith((".", ":", ";", ",")) else "; ") + ln
    return _sentence(text)


def _sentence(text: str) -> str:
    """``text`` ending as a sentence does: a last lone ':' is the character ITK names ("delimited by :")."""
    text = re.sub(r"\s:$", " ':'", re.sub(r"\s+", " ", text).strip()) or "unknown ITK error"
    return text if text.endswith((".", "!", "?")) else text + "."
