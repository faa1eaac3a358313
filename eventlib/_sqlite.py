"""The SQLite files eventlib writes from many processes at once: the spool
and the default dead-letter database."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

__all__ = ["use_wal"]


def use_wal(connection: Any, timeout: float) -> None:
    """Put the database of the DB-API ``connection`` in WAL mode, so that
    writers do not block readers and a committed write survives the crash of
    its process, and commit without waiting for the disk
    (``synchronous=normal``): what is lost to a power failure is the last
    commits, never the file.

    Switching a new file to WAL takes an exclusive lock, and when other
    connections are opening the same new file SQLite answers "database is
    locked" at once instead of waiting for its busy timeout.  This retries
    for up to ``timeout`` seconds, then raises that ``sqlite3.OperationalError``.
    """
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        cursor = connection.cursor()
        try:
            cursor.execute("pragma journal_mode=wal")
            cursor.execute("pragma synchronous=normal")
            return
        except sqlite3.OperationalError as error:
            if error.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            if time.monotonic() + pause > deadline:
                raise
        finally:
            cursor.close()
        time.sleep(pause)
        pause = min(pause * 2, 0.05)
