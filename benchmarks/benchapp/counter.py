"""The work of every benchmark handler and bare task: count itself.

``EVENTLIB_BENCH_COUNTER`` says where: ``redis://host:port/db#key`` (an
``INCR`` on ``key``) or ``sqlite:///path`` (an ``UPDATE`` of the one row of
the table ``counter``).  The first and the last (``EVENTLIB_BENCH_TOTAL``-th)
call also record the time they finished, so that throughput is measured by the
workers themselves, from the first processed message to the last.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable

COUNTER_ENV = "EVENTLIB_BENCH_COUNTER"
TOTAL_ENV = "EVENTLIB_BENCH_TOTAL"

_bump: Callable[[], None] | None = None
_pid: int | None = None


def bump() -> None:
    """Count one processed message (connecting on first use in each process,
    so that forked pool processes get connections of their own)."""
    global _bump, _pid
    if _bump is None or _pid != os.getpid():
        _bump, _pid = (
            connect(os.environ[COUNTER_ENV], int(os.environ.get(TOTAL_ENV, "0"))),
            os.getpid(),
        )
    _bump()


def count_nothing() -> None:
    """Make :func:`bump` a no-op in this process (in-process measurements)."""
    global _bump, _pid
    _bump, _pid = (lambda: None), os.getpid()


def connect(where: str, total: int) -> Callable[[], None]:
    if where.startswith("sqlite:///"):
        return _sqlite_bump(where.removeprefix("sqlite:///"))
    return _redis_bump(where, total)


def _redis_bump(where: str, total: int) -> Callable[[], None]:
    import redis

    url, _, key = where.partition("#")
    client = redis.Redis.from_url(url)

    def bump() -> None:
        count = client.incr(key)
        if count == 1 or count == total:
            client.set(f"{key}:{'first' if count == 1 else 'last'}", repr(time.time()))

    return bump


def _sqlite_bump(path: str) -> Callable[[], None]:
    db = sqlite3.connect(path, timeout=60, isolation_level=None)

    def bump() -> None:
        now = time.time()
        db.execute(
            "update counter set n = n + 1, first = coalesce(first, ?1),"
            " last = max(coalesce(last, 0), ?1)",
            (now,),
        )

    return bump
