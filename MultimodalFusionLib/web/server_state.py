"""The trame state as the server writes it, keeping the values only the server may set.

trame shares one state with every page and lets any page write any key (``trame.state.update``): the
page's controls write theirs (paths, preset, opacity, ...), but nothing stops a page, a buggy one or a
script speaking the protocol, from writing the keys the server sets to show what it does: ``job_busy``,
``job_progress``, ``job_message``, the metrics table, the ``has_*`` flags, the slider ranges, the DICOM
series offered. Such a write reached the other pages too (trame shares it), and stayed until the server
wrote the key again: a progress bar and spinner gone in every tab while a registration ran, a fake
"Registration done" or metrics table, a banner of the writer's text, the Register buttons of every tab
disabled.

:class:`ServerState` is what the app and its worker write through: it records the value the server gave
each owned key, and :meth:`ServerState.keep` (a change callback on those keys) puts back a value a page
changed, so every page shows the server's again at once. A page may clear a key the page's own controls
clear (the error banner's close button), and nothing else.

It is the second line: the message gate (:mod:`.message_gate`) drops a page's write to any key but its
controls' before trame sees it, since trame pushes a page's write to the other pages before any change
callback runs (they showed the written value for a message until this put the server's back).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

__all__ = ["ServerState"]

logger = logging.getLogger(__name__)


class ServerState:
    """A trame state (``server.state``) whose ``owned`` keys keep the values the server writes.

    Reads and everything else (``change``, ``ready``, ``with state:``) go to the trame state.

    Args:
        state: the trame server's state.
        owned: the keys only the server sets.
        clearable: owned keys a page may set to ``""`` (the banner it closes).
    """

    def __init__(self, state: Any, owned: Iterable[str], clearable: Iterable[str] = ()) -> None:
        object.__setattr__(self, "_state", state)
        object.__setattr__(self, "_owned", {key: state[key] for key in owned if key in state})
        object.__setattr__(self, "_owned_keys", frozenset(owned))
        object.__setattr__(self, "_clearable", frozenset(clearable))
        state.change(*sorted(self._owned_keys))(self.keep)

    # ------------------------------------------------------------------ writes: recorded, then made
    def _record(self, key: str, value: Any) -> None:
        if key in self._owned_keys:
            self._owned[key] = value

    def __setattr__(self, key: str, value: Any) -> None:
        self._record(key, value)
        setattr(self._state, key, value)

    def __setitem__(self, key: str, value: Any) -> None:
        self._record(key, value)
        self._state[key] = value

    def update(self, _dict: dict[str, Any] | None = None, **values: Any) -> None:
        values = {**(_dict or {}), **values}
        for key, value in values.items():
            self._record(key, value)
        self._state.update(values)

    def setdefault(self, key: str, value: Any) -> Any:
        result = self._state.setdefault(key, value)
        self._record(key, self._state[key])
        return result

    # ------------------------------------------------------------------ everything else: the trame state's
    def __getattr__(self, key: str) -> Any:
        return getattr(self._state, key)

    def __getitem__(self, key: str) -> Any:
        return self._state[key]

    def __contains__(self, key: str) -> bool:
        return key in self._state

    def __enter__(self) -> ServerState:
        self._state.__enter__()
        return self

    def __exit__(self, *exc: Any) -> Any:
        return self._state.__exit__(*exc)

    def owned(self, key: str) -> Any:
        """The value the server gave ``key`` last (what the page shows once :meth:`keep` has run)."""
        return self._owned.get(key)

    def keep(self, **_: Any) -> None:
        """Put back the server's value of each owned key a page changed (a change callback: the state holds
        the page's values when it runs)."""
        refused = []
        for key in self._owned_keys & self._state.modified_keys:
            if key not in self._owned:
                continue
            value = self._state[key]
            if value == self._owned[key]:
                continue
            if key in self._clearable and value in ("", None):
                self._owned[key] = ""
                continue
            refused.append(key)
        if refused:
            logger.warning("a page set %s, which only the server sets: kept the server's value",
                           ", ".join(sorted(refused)))
            with self._state:
                for key in refused:
                    self._state[key] = self._owned[key]
