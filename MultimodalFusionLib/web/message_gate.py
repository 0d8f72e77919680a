"""What a page's connection may send the server, checked as wslink reassembles its messages.

wslink gathers a message from the chunks of a connection (each chunk's header names the message and its whole
size) and allocates the whole size at its first chunk, before any content arrives: up to 4 GiB for a connection
that has sent trame's secret (public: its default), and the pieces of any number of messages at once. A page, or
a script speaking the protocol, made the server hold 1 GiB of zeros for each chunk of 13 bytes it sent: three
chunks, 3 GiB (its own source says this un-chunker is open to denial of service). The page never sends a message
near that: an upload goes in messages of at most ``UPLOAD_PIECE_BYTES`` (4 MiB) of file content and 1000 files,
and everything else is a few kilobytes.

:class:`MessageGate` is wslink's un-chunker for one connection with a limit, :data:`MAX_MESSAGE_BYTES` for all the
messages that connection has in progress together: past it the connection is closed (1009, "message too big")
before anything is allocated, with a line in the server log. On the messages it passes it also drops what trame
would let any page do to every page:

- ``trame__*`` state keys (``trame.state.update``): trame's own, the page's template (``trame__template_main``),
  the script the page runs (``trame__inline_script_*``), the scripts and styles it loads, the keys a page keeps to
  itself (``trame__client_only``). A page writing them had every other page run its template or script at once
  (trame pushes a page's change to the others before the server's change callbacks run) and every page opened
  later load it, or stop sending the panel's values to the server;
- with a list of the keys a page may set (``may_set``, the app's: its controls' values and the slice sliders', the
  banner closed), a page's write to any other key: trame pushed it to every other page before the server's
  change callbacks ran, so a value only the server sets (``job_busy``, the metrics, the banner's text) showed in
  every page for a message before the app put its own back;
- lifecycle calls (``trame.lifecycle.update``) other than those trame's page makes (``client_connected``,
  ``client_exited``, ``client_unmounted``): ``server_ready`` printed the server's banner again and, under
  ``--open``, opened a browser window on the server's desktop for each call;
- any other call than those trame's page makes (:data:`PAGE_CALLS`: trame-client's and trame-rca's scripts), or
  with other arguments than the page sends. wslink calls whatever the server's protocols export, with whatever
  arguments come: ``application.exit`` and ``application.exit.later`` (wslink's) stopped the server for every
  page; ``trame.rca.push`` showed a page's picture in a view of every page, ``trame.rca.drop`` froze a view of
  every page (its frames all dropped); ``trame.rca.size`` rendered a view at any size (16000 x 16000 pixels: the
  server's memory up 9 GiB; a view is now rendered scaled down to :data:`MAX_VIEW_PIXELS`, and only a size no
  screen has is refused: :func:`rendered_view_size`); ``trame.force.push`` is the server's own; and a bad argument
  (a key that is not a string, one argument too many, a size that is not a number, an event without its type) was
  a traceback in the server's log.

A refused call is answered "Unregistered method called" (wslink's answer to a method it does not have) with one
warning line in the log; a page's JavaScript error report (``trame.error.client``) is shortened to
:data:`MAX_ERROR_REPORT_CHARS` (it went whole into the log: 16 MiB a message).

wslink makes its un-chunkers itself (``WslinkHandler.onConnect``); :func:`install_message_gate` has each of its
handlers make this one instead, keeping wslink's files as they are. The gate counts a connection's messages in
progress itself, from the chunks' headers (wslink's protocol), not from wslink's bookkeeping; where this wslink is
not as expected (no such handlers, no un-chunker to extend, a state update of another shape) it says so in the log
and the server runs as wslink has it, rather than failing each page's messages.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import struct
from typing import Any, Callable

try:
    from wslink.chunking import UnChunker
except ImportError:  # another wslink: install_message_gate says so and installs nothing
    UnChunker = object

__all__ = ["MessageGate", "install_message_gate", "install_page_pushes", "MAX_MESSAGE_BYTES", "PAGE_CALLS",
           "PAGE_LIFECYCLE_EVENTS", "MAX_VIEW_PIXELS", "MAX_VIEW_SIDE", "MAX_ERROR_REPORT_CHARS",
           "rendered_view_size"]

logger = logging.getLogger(__name__)

#: The most bytes a connection's messages in progress may hold together: four times the largest message the page
#: sends (4 MiB of upload content, with at most 1000 files' names, under 5 MiB).
MAX_MESSAGE_BYTES = 16 << 20
#: The lifecycle events trame's page reports (``trame.lifecycle.update``); the others are the server's own.
PAGE_LIFECYCLE_EVENTS = frozenset({"client_connected", "client_exited", "client_unmounted"})
#: The most pixels a view is rendered at: an 8K screen's, 7680 x 4320. The server renders each view at the size the
#: page asks (``trame.rca.size``: its size in the page times the screen's pixel ratio), holding about 36 bytes a pixel
#: for it (16000 x 16000 had taken 9 GiB); a larger view is rendered scaled down to it (trame-rca's
#: ``max_pixel_count``, set on each view by the app) and shown stretched, never refused: a window spanning three 6K
#: screens, or a 5K screen at pixel ratio 1 zoomed out to 25%, asks 8640 x 1640 or 10048 x 5734 a view.
MAX_VIEW_PIXELS = 7680 * 4320
#: The most pixels a side of a view may have once scaled down to :data:`MAX_VIEW_PIXELS`: the largest render buffer
#: of Mesa's llvmpipe (16384; 20000 was drawn in part). Only a view 8 times wider than high (or higher than wide)
#: reaches it: its size is refused.
MAX_VIEW_SIDE = 16384
#: The longest JavaScript error report of a page (``trame.error.client``) the server's log takes; the rest is cut.
MAX_ERROR_REPORT_CHARS = 2000
_WEBSOCKET_MESSAGE_TOO_BIG = 1009  # RFC 6455
_HEADER = struct.Struct("<III")  # wslink's chunk header: the message's id, the chunk's offset in it, its whole size


class MessageGate(UnChunker):
    """wslink's un-chunker for one connection, with a limit on what the connection has in progress, that drops
    state writes and lifecycle calls a page does not make.

    Args:
        max_bytes: the most bytes of messages in progress (declared sizes, all together).
        close: called once when a message would pass ``max_bytes`` (closes the connection).
        may_set: ``may_set(key, value)``: whether a page may set state ``key`` to ``value``; None: any key but
            ``trame__*``.
        trigger_fn: ``trigger_fn(name)``: the function of the server's trigger ``name``, or None where it has none
            (trame's ``controller.trigger_fn``): a page's trigger call is checked against its parameters. None:
            only the call's shape is checked.
    """

    def __init__(self, max_bytes: int = MAX_MESSAGE_BYTES, close: Any = None,
                 may_set: Callable[[str, Any], bool] | None = None,
                 trigger_fn: Callable[[str], Any] | None = None) -> None:
        super().__init__()  # wslink's own limit before the secret (512 bytes), raised after it up to max_bytes
        self.max_bytes = int(max_bytes)
        self._close = close
        self._may_set = may_set
        self._trigger_fn = trigger_fn
        self.refused = False  # the connection is being closed: nothing more of it is read
        self._in_progress: dict[int, list[int]] = {}  # message id -> [bytes received, bytes declared], as wslink counts

    def set_max_message_size(self, size: int) -> None:
        super().set_max_message_size(min(int(size), self.max_bytes))  # wslink asks for 4 GiB after the secret

    def process_chunk(self, chunk: bytes) -> Any:
        if self.refused:
            return None
        if len(chunk) < _HEADER.size:
            return self._refuse(f"a chunk of {len(chunk)} bytes, shorter than wslink's header")
        message_id, _, total = _HEADER.unpack_from(chunk)
        counted = self._in_progress.get(message_id)
        if counted is None:
            pending = sum(declared for _, declared in self._in_progress.values())
            limit = self._limit()
            if pending + total > limit:
                return self._refuse(f"a message of {total} bytes (with {pending} bytes of others in progress); a "
                                    f"page's messages hold at most {limit}")
            counted = self._in_progress[message_id] = [0, total]
        counted[0] += len(chunk) - _HEADER.size
        try:
            message = super().process_chunk(chunk)
        except Exception:
            self._in_progress.pop(message_id, None)  # wslink refused it and forgot it
            raise
        if counted[0] >= counted[1]:  # whole: wslink hands it on (it completes a message by the same count)
            self._in_progress.pop(message_id, None)
        return self._checked(message)

    def _limit(self) -> int:
        """The most bytes in progress now: wslink's own limit before the page sent the secret (512 bytes), then
        ``max_bytes``."""
        wslink_limit = getattr(self, "max_message_size", None)
        return min(self.max_bytes, wslink_limit) if isinstance(wslink_limit, int) else self.max_bytes

    def release_pending_messages(self) -> None:
        super().release_pending_messages()
        self._in_progress.clear()

    def _refuse(self, why: str) -> None:
        self.refused = True
        self.release_pending_messages()
        logger.warning("closed a connection that sent %s", why)
        if self._close is not None:
            self._close()

    def _checked(self, message: Any) -> Any:
        """``message`` without what a page may not do (see the module's description)."""
        if message is None:
            return None
        if not isinstance(message, dict):  # wslink failed on it ("id" in 5)
            logger.warning("a page sent a message that is not a call (%.40s): ignored", type(message).__name__)
            return None
        if "id" not in message:
            return message  # wslink reads nothing of it
        if not isinstance(message["id"], str):  # wslink failed on it (its split(":")), and could not answer it
            logger.warning("a page sent a call whose id is not a string (%.40r): ignored", message["id"])
            return None
        if message["id"].startswith("system:"):
            return message  # wslink's own (wslink.hello, the secret): it answers any other "Unknown system method"
        method = message.get("method")
        # what wslink calls the method with: the message's args and kwargs when they are a list and a dict
        args = message.get("args") if isinstance(message.get("args"), list) else []
        kwargs = message.get("kwargs") if isinstance(message.get("kwargs"), dict) else {}
        check = PAGE_CALLS.get(method) if isinstance(method, str) else None
        if check is None:
            return self._refused_call(message, ", which pages do not call (trame's page, trame-rca's views)")
        if kwargs:
            return self._refused_call(message, " with keyword arguments, which the page does not send")
        why = check(self, args)
        if why:
            return self._refused_call(message, " with " + why)
        if method == "trame.error.client" and args:
            report = args[0] if isinstance(args[0], str) else repr(args[0])
            if len(report) > MAX_ERROR_REPORT_CHARS:
                return {**message, "args": [report[:MAX_ERROR_REPORT_CHARS] + f" ... ({len(report)} characters)"]}
            return message
        if method == "trame.state.update":
            changes = args[0]  # a list: _state_update_args
            kept = [c for c in changes if self._page_may_set(c)]
            if len(kept) != len(changes):
                logger.warning("a page set %s, which only the server sets: ignored", ", ".join(sorted(
                    _shown_key(c) for c in changes if c not in kept)))
                return {**message, "args": [kept, *args[1:]]}
        return message

    @staticmethod
    def _refused_call(message: dict, why: str) -> dict:
        """``message`` made a call wslink answers "Unregistered method called" (the method renamed), said in one line
        of the log (``why`` follows the method's name)."""
        method = message.get("method")
        shown = method if isinstance(method, str) and len(method) <= 60 else repr(method)[:60]
        logger.warning("a page called %s%s: refused", shown, why)
        return {**message, "method": f"mmfusion: a call pages do not make ({shown})"}

    # ------------------------------------------------------------------ the arguments of each call the page makes
    # each returns why the arguments are not those the page sends, or "" (wslink calls the method with them)
    def _state_get_args(self, args: list) -> str:
        return f"{len(args)} argument(s), where the page sends none" if args else ""

    def _state_update_args(self, args: list) -> str:
        if len(args) != 1:
            return f"{len(args)} arguments, where the page sends its list of changes"
        if not isinstance(args[0], list):  # trame iterates it for changes with a "key": a traceback in the log
            return f"the changes {_shown_args(args)}, where the page sends a list of changes"
        return ""  # the changes themselves are checked one by one (_checked): those a page may set go on

    def _lifecycle_args(self, args: list) -> str:
        if len(args) == 1 and isinstance(args[0], str) and args[0] in PAGE_LIFECYCLE_EVENTS:
            return ""
        return f"the lifecycle event {_shown_args(args)}, which only the server has"

    def _error_report_args(self, args: list) -> str:
        return "" if len(args) == 1 else f"{len(args)} arguments, where the page sends its error's text"

    def _trigger_args(self, args: list) -> str:
        if len(args) != 3 or not isinstance(args[0], str) or not isinstance(args[1], list) \
                or not isinstance(args[2], dict) or not all(isinstance(key, str) for key in args[2]):
            return f"the arguments {_shown_args(args)}, where the page sends a trigger's name, a list and a dict"
        if self._trigger_fn is None:
            return ""
        name, positional, named = args
        fn = self._trigger_fn(name)
        if fn is None:
            return f"the trigger {name[:60]!r}, which this server does not have"
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError):  # no signature to check (a built-in): its own check
            return ""
        try:
            signature.bind(*positional, **named)
        except TypeError as exc:
            return f"arguments its trigger {name[:60]!r} does not take ({exc})"
        return ""

    def _view_size_args(self, args: list) -> str:
        if len(args) != 3 or not isinstance(args[0], str) or not isinstance(args[1], str) \
                or not isinstance(args[2], dict):
            return f"the arguments {_shown_args(args)}, where the page sends a view's name, a name and its size"
        size = args[2]
        width, height, ratio = size.get("w", 300), size.get("h", 300), size.get("p", 1)
        if not all(_finite(value) and value >= 0 for value in (width, height)) or not (_finite(ratio) and ratio > 0):
            return f"the size {_shown_args([size])}, where the page sends finite numbers (and a ratio above 0)"
        rendered_width, rendered_height = rendered_view_size(width, height, ratio)
        if max(rendered_width, rendered_height) > MAX_VIEW_SIDE or min(rendered_width, rendered_height) < 1:
            return (f"a view of {width:.0f} x {height:.0f} at pixel ratio {ratio:g}, rendered {rendered_width} x "
                    f"{rendered_height} pixels (at most {MAX_VIEW_PIXELS}), whose sides are not 1 to {MAX_VIEW_SIDE}")
        return ""

    def _view_event_args(self, args: list) -> str:
        if len(args) != 3 or not isinstance(args[0], str) or not isinstance(args[1], str) \
                or not isinstance(args[2], dict) or not isinstance(args[2].get("type"), str):
            return (f"the arguments {_shown_args(args)}, where the page sends a view's name, a name and an event "
                    "with its type")
        event = args[2]
        positions = event.get("positions", {})
        numbers = [event[key] for key in ("x", "y", "w", "h") if key in event]
        numbers += event.get("translation", []) if isinstance(event.get("translation"), (list, tuple)) else []
        numbers += [position.get(key, 0) for position in (positions.values() if isinstance(positions, dict) else [])
                    if isinstance(position, dict) for key in ("x", "y")]
        if not all(_finite(number) for number in numbers) or not isinstance(positions, dict) \
                or not all(isinstance(position, dict) for position in positions.values()):
            return f"the event {_shown_args([event])}, whose positions are not finite numbers"
        return ""

    def _view_codecs_args(self, args: list) -> str:
        return "" if len(args) == 1 and isinstance(args[0], str) else \
            f"the arguments {_shown_args(args)}, where the page sends a view's name"

    def _view_negotiate_args(self, args: list) -> str:
        if len(args) == 2 and isinstance(args[0], str) and isinstance(args[1], list) \
                and all(isinstance(codec, str) for codec in args[1]):
            return ""
        return f"the arguments {_shown_args(args)}, where the page sends a view's name and a list of codecs"

    def _page_may_set(self, change: Any) -> bool:
        if not isinstance(change, dict) or not isinstance(change.get("key"), str):
            return False  # trame would fail on it (KeyError) after pushing the rest to every page
        key = change["key"]
        if key.startswith("trame__"):
            return False
        return self._may_set is None or bool(self._may_set(key, change.get("value")))


#: The calls trame's page makes (trame-client's script, and trame-rca's for the views), each with the check of its
#: arguments (the message's ``args``; the page sends no ``kwargs``). Nothing else a page sends is called.
PAGE_CALLS: dict[str, Callable[[MessageGate, list], str]] = {
    "trame.state.get": MessageGate._state_get_args,
    "trame.state.update": MessageGate._state_update_args,
    "trame.trigger": MessageGate._trigger_args,
    "trame.lifecycle.update": MessageGate._lifecycle_args,
    "trame.error.client": MessageGate._error_report_args,
    "trame.rca.size": MessageGate._view_size_args,
    "trame.rca.event": MessageGate._view_event_args,
    "trame.rca.video.codecs": MessageGate._view_codecs_args,
    "trame.rca.video.negotiate": MessageGate._view_negotiate_args,
}


def rendered_view_size(width: float, height: float, ratio: float,
                       max_pixels: int = MAX_VIEW_PIXELS) -> tuple[int, int]:
    """The size in pixels a view of ``width`` x ``height`` in the page, at pixel ratio ``ratio``, is rendered at:
    trame-rca's ``RcaViewAdapter.image_size`` with ``max_pixel_count`` ``max_pixels`` (at least 10 x 10 in the page,
    scaled down to ``max_pixels`` where it has more)."""
    width, height = max(10, int(width)), max(10, int(height))
    factor = ratio
    total = int(width * factor) * int(height * factor)
    if max_pixels > 0 and total > max_pixels:
        factor *= math.sqrt(max_pixels / total)
    return int(width * factor), int(height * factor)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _shown_args(args: Any) -> str:
    """A value a page sent, for a message: its repr, cut short (it may be anything, of any length)."""
    text = repr(args)
    return text if len(text) <= 80 else text[:77] + "..."


def _shown_key(change: Any) -> str:
    key = change.get("key") if isinstance(change, dict) else change
    text = key if isinstance(key, str) else repr(key)
    return text if len(text) <= 60 else text[:57] + "..."


class _GatedUnchunkers(dict):
    """A wslink handler's ``unchunkers`` (connection -> un-chunker) that holds a :class:`MessageGate` for each."""

    def __init__(self, handler: Any, max_bytes: int, may_set: Callable[[str, Any], bool] | None,
                 trigger_fn: Callable[[str], Any] | None = None) -> None:
        super().__init__()
        self._handler, self._max_bytes, self._may_set, self._trigger_fn = handler, max_bytes, may_set, trigger_fn

    def __setitem__(self, client_id: str, _unchunker: Any) -> None:
        connection = self._handler.connections.get(client_id)

        def close() -> None:
            if connection is not None:
                asyncio.ensure_future(connection.close(code=_WEBSOCKET_MESSAGE_TOO_BIG,
                                                       message=b"mmfusion web: message too big"))

        super().__setitem__(client_id, MessageGate(self._max_bytes, close, self._may_set, self._trigger_fn))


def install_message_gate(wslink_server: Any, max_bytes: int = MAX_MESSAGE_BYTES,
                         may_set: Callable[[str, Any], bool] | None = None,
                         trigger_fn: Callable[[str], Any] | None = None) -> bool:
    """Have the websocket handlers of ``wslink_server`` (trame's ``on_server_bind`` gives it) check each
    connection's messages with a :class:`MessageGate`. Called before the server takes connections.

    Args:
        may_set: ``may_set(key, value)``: whether a page may set state ``key`` to ``value`` (see MessageGate).
        trigger_fn: ``trigger_fn(name)``: the server's trigger of that name, or None (see MessageGate).

    Returns:
        False, with a warning in the log, when this wslink has no handlers of the known shape (the server then
        runs with wslink's own 4 GiB limit, and the app's own check of the state as its second line).
    """
    if UnChunker is object:
        logger.warning("could not limit the size of a page's messages (this wslink has no wslink.chunking."
                       "UnChunker): a connection may make the server allocate up to 4 GiB per message")
        return False
    handlers = [handler for handler in getattr(wslink_server, "_ws_handlers", None) or []
                if isinstance(getattr(handler, "unchunkers", None), dict) and hasattr(handler, "connections")]
    if not handlers:
        logger.warning("could not limit the size of a page's messages (this wslink's handlers are not as expected):"
                       " a connection may make the server allocate up to 4 GiB per message")
        return False
    for handler in handlers:
        gated = _GatedUnchunkers(handler, max_bytes, may_set, trigger_fn)
        for client_id in list(handler.unchunkers):  # none before the server starts
            gated[client_id] = None
        handler.unchunkers = gated
    return True


def install_page_pushes(wslink_server: Any) -> bool:
    """Have a page's state change reach each other page once, whatever the pages send meanwhile.

    trame pushes a page's change to the other pages with wslink's ``skip_last_active_client``, and wslink reads
    which client was last active when it sends the push, a turn of the event loop later, not when trame asks: a
    message from another tab read in between made that tab the last active one, so it never got the change (its
    panel kept the old value) and the page that made it got its own change back. wslink also sent each other page
    one copy per connected page. Here the pages to skip is decided at the call, and each other page gets one
    push of its own. Called with :func:`install_message_gate`, before the server takes connections.

    Returns:
        False, with a warning in the log, when this wslink's handlers are not of the known shape (pushes then go
        as wslink sends them).
    """
    handlers = [handler for handler in getattr(wslink_server, "_ws_handlers", None) or []
                if callable(getattr(handler, "publish", None)) and isinstance(getattr(handler, "connections", None),
                                                                              dict)
                and callable(getattr(handler, "isClientAuthenticated", None)) and hasattr(handler, "web_app")]
    protocols = []
    for handler in handlers:
        server_protocol = handler.getServerProtocol() if callable(getattr(handler, "getServerProtocol", None)) \
            else None
        linked = [*server_protocol.getLinkProtocols(), server_protocol] if server_protocol is not None else []
        # each protocol holds the handler's publish, given at the handler's making (LinkProtocol.init)
        protocols += [(handler, protocol) for protocol in linked if getattr(protocol, "publish", None) == handler.publish]
    if not protocols:
        logger.warning("could not make pages' changes reach the other pages reliably (this wslink's handlers are "
                       "not as expected): a tab busy at the same moment may miss another tab's change")
        return False
    for handler, protocol in protocols:
        protocol.publish = _publish_skipping_now(handler)
    return True


def _publish_skipping_now(handler: Any) -> Callable[..., None]:
    """``handler.publish``, with ``skip_last_active_client`` read at the call and one push for each other page."""
    publish = handler.publish

    def publish_now(topic: str, data: Any, client_id: Any = None, skip_last_active_client: bool = False) -> None:
        if not skip_last_active_client or client_id is not None:
            return publish(topic, data, client_id=client_id, skip_last_active_client=skip_last_active_client)
        last = getattr(handler.web_app, "last_active_client_id", None)
        for client in list(handler.connections):
            if client != last and handler.isClientAuthenticated(client):
                publish(topic, data, client_id=client)
        return None

    return publish_now
