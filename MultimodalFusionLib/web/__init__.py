"""Fusion in the browser: a trame-slicer web application on the same engine.

``mmfusion web`` starts it (see :func:`MultimodalFusionLib.web.app.serve`). The package is
split so that the parts without a server can be tested alone:

- :mod:`.offscreen`: VTK's offscreen OpenGL set-up (EGL, or OSMesa), before any window exists.
- :mod:`.viewer`: the session's volumes in a trame-slicer scene and how the views show them.
- :mod:`.worker`: long engine work on a background thread, progress and errors into the state.
- :mod:`.server_state`: the state keys only the server sets, put back when a page writes them.
- :mod:`.message_gate`: the size of a page's messages, and what a page may not ask of trame.
- :mod:`.app`: the trame application (state, panel, quad layout) and :func:`serve`.
- :mod:`.demo`: the demo pair (MNI152 T1 and a misaligned PET-like image).

trame, trame-slicer and VTK are imported only by the modules that need them.
"""

from __future__ import annotations

from .offscreen import configure_offscreen_rendering

__all__ = ["configure_offscreen_rendering", "serve"]


def serve(*args, **kwargs):
    """Start the web application; see :func:`MultimodalFusionLib.web.app.serve`."""
    from .app import serve as _serve

    return _serve(*args, **kwargs)
