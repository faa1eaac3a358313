"""Opening the SQLite files many processes write (eventlib/_sqlite.py)."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from eventlib._sqlite import use_wal


@pytest.fixture
def locked(tmp_path):
    """A new database file another connection holds an exclusive lock on:
    switching it to WAL fails at once with SQLITE_BUSY, as when several
    processes open a new spool at the same moment."""
    path = tmp_path / "new.sqlite"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("begin exclusive")
    yield path, holder
    holder.close()


def mode(path) -> str:
    with sqlite3.connect(path) as connection:
        return connection.execute("pragma journal_mode").fetchone()[0]


def test_a_busy_database_is_switched_to_wal_once_the_lock_is_released(locked):
    path, holder = locked
    opener = sqlite3.connect(path, timeout=0, isolation_level=None)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        opener.execute("pragma journal_mode=wal")  # what use_wal works around
    release = threading.Timer(0.2, holder.execute, args=("rollback",))
    release.start()

    use_wal(opener, timeout=10)

    release.join()
    opener.close()
    assert mode(path) == "wal"


def test_a_database_still_locked_after_the_timeout_raises_sqlite_busy(locked):
    path, _holder = locked
    opener = sqlite3.connect(path, timeout=0, isolation_level=None)

    with pytest.raises(sqlite3.OperationalError) as raised:
        use_wal(opener, timeout=0.1)

    assert raised.value.sqlite_errorcode == sqlite3.SQLITE_BUSY
    opener.close()


def test_errors_other_than_busy_are_raised_without_retrying():
    disk_error = sqlite3.OperationalError("disk I/O error")
    disk_error.sqlite_errorcode = sqlite3.SQLITE_IOERR
    statements = []

    class Cursor:
        def execute(self, statement):
            statements.append(statement)
            raise disk_error

        def close(self):
            pass

    class Connection:
        def cursor(self):
            return Cursor()

    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        use_wal(Connection(), timeout=10)
    assert statements == ["pragma journal_mode=wal"]
