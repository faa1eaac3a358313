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

import os
import threading
from collections import Counter

#: The counters eventlib keeps, and what each counts.
COUNTERS = {
    "logged": "events log() accepted (sent, spooled or handed to a test recorder)",
    "published": "events the broker accepted from this process",
    "spooled": "events written to the local spool because the broker could not take them",
    "published_from_spool": "spooled events the broker has since accepted",
    "processed": "events whose handlers ran in this process",
    "handler_failures": "handler calls that raised",
    "retries": "handler retries scheduled",
    "dead_letters": "failures recorded as dead letters",
}

_lock = threading.Lock()
_counts: Counter[str] = Counter()
_pid = os.getpid()


def increment(name: str, amount: int = 1) -> None:
    """Add ``amount`` to the counter ``name`` (one of :data:`COUNTERS`)."""
    global _pid
    with _lock:
        if os.getpid() != _pid:  # a forked child counts its own events
            _counts.clear()
            _pid = os.getpid()
        _counts[name] += amount


def snapshot() -> dict[str, int]:
    """Every counter's current value, including those still at zero."""
    with _lock:
        counts = Counter() if os.getpid() != _pid else _counts
        return {name: counts[name] for name in COUNTERS}


def reset() -> None:
    """Set every counter back to zero."""
    with _lock:
        _counts.clear()


def _after_fork_in_child() -> None:
    global _lock, _pid
    _lock = threading.Lock()
    _counts.clear()
    _pid = os.getpid()


os.register_at_fork(after_in_child=_after_fork_in_child)
