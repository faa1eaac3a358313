"""Counters of what eventlib did in this process.

``snapshot()`` returns them as a plain dict, to print, export to a metrics
system or assert on in tests::

    >>> import eventlib.metrics
    >>> eventlib.metrics.snapshot()['logged']  # doctest: +SKIP
    12

The counters are per process (a Celery prefork worker has one set per pool
process) and start at zero; a forked child starts again from zero, with a
lock of its own, even if another thread of the parent was counting at the
moment of the fork.
"""

from __future__ import annotations

import threading
from collections import Counter

from . import _state

__all__ = ["COUNTERS", "increment", "reset", "snapshot"]

#: The counters eventlib keeps, and what each counts.
COUNTERS = {
    "logged": "events log() accepted (sent, spooled or handed to a test recorder)",
    "published": "events the broker accepted from this process",
    "spooled": "events written to the local spool because the broker could not take them",
    "published_from_spool": "spooled events the broker has since accepted",
    "processed": "events whose handlers ran in this process",
    "broadcast_received": "broadcast events whose external handlers ran in this process",
    "handler_failures": "handler calls that raised",
    "retries": "handler retries scheduled",
    "dead_letters": "failures recorded as dead letters",
}


class _Counters:
    """The counters of this process, with the lock that guards them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def increment(self, name: str, amount: int = 1) -> None:
        """Add ``amount`` to the counter ``name`` (one of :data:`COUNTERS`)."""
        with self._lock:
            self._counts[name] += amount

    def snapshot(self) -> dict[str, int]:
        """Every counter's current value, including those still at zero."""
        with self._lock:
            return {name: self._counts[name] for name in COUNTERS}

    def reset(self) -> None:
        """Set every counter back to zero."""
        with self._lock:
            self._counts.clear()

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._counts = Counter()


_counters = _Counters()
_state.process_state(_counters)

# The module's functions are the methods of this process's counters.
increment = _counters.increment
snapshot = _counters.snapshot
reset = _counters.reset
