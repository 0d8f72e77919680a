"""Offscreen OpenGL set-up for VTK on a machine without a display or a GPU.

The web application renders every view on the server and streams images to the browser,
so VTK must open an OpenGL context without an X server. VTK 9.6 wheels pick the window
class from ``VTK_DEFAULT_OPENGL_WINDOW`` when a render window is created: EGL with Mesa's
``surfaceless`` platform works on a bare container (Mesa's llvmpipe software rasteriser)
and on GPU machines alike. OSMesa (``vtkOSOpenGLRenderWindow``) is the fallback when
``libOSMesa`` is installed and EGL is not. Values the user has already set are kept.
"""

from __future__ import annotations

import ctypes.util
import os
from typing import MutableMapping

__all__ = ["configure_offscreen_rendering"]


def _has_library(name: str) -> bool:
    return ctypes.util.find_library(name) is not None


def configure_offscreen_rendering(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Choose VTK's offscreen OpenGL window class before the first render window exists.

    Call it before any VTK render window is created (the web app does it first thing).
    Settings already present in the environment win, so a user can force
    ``VTK_DEFAULT_OPENGL_WINDOW=vtkOSOpenGLRenderWindow`` or an X display.

    Args:
        environ: the environment to update (default ``os.environ``).

    Returns:
        The variables this call set (empty when everything was set already).
    """
    env = os.environ if environ is None else environ
    changed: dict[str, str] = {}

    def _default(key: str, value: str) -> None:
        if key not in env:
            env[key] = value
            changed[key] = value

    if "VTK_DEFAULT_OPENGL_WINDOW" not in env:
        if _has_library("EGL") or not _has_library("OSMesa"):
            _default("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
        else:
            _default("VTK_DEFAULT_OPENGL_WINDOW", "vtkOSOpenGLRenderWindow")
    if env.get("VTK_DEFAULT_OPENGL_WINDOW") == "vtkEGLRenderWindow":
        # Without a display, Mesa's EGL needs the surfaceless platform (no X, no GBM device);
        # with a GPU driver's EGL this variable is ignored.
        _default("EGL_PLATFORM", "surfaceless")
    return changed
