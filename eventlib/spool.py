"""The spool: the SQLite file where events wait for the broker.

``log()`` writes an event here when the broker cannot take it, when the
in-memory buffer of the ``background`` mode is full, and always in the
``spool`` mode (see :mod:`eventlib.sending`).  One file (the ``spool_path``
setting) per host is shared safely by every process and thread that logs
events.  The publisher thread of each process publishes what its process's
destination holds, oldest first; ``eventlib spool flush`` does the same from
a shell.  An event leaves the spool only after the broker accepted it
(publisher confirms on RabbitMQ), so a crash at the wrong moment can publish
an event twice, never lose it: ``event.id`` lets handlers drop duplicates.

Each event is kept with its destination, the broker (password masked) and
queue it was logged for, and is only ever published there: a process or a
shell configured for another broker or queue leaves it where it is.

Writes survive the crash of the process (SQLite's WAL journal), not the loss
of power to the machine.  Every error of the file itself (unwritable, full,
not a database) is raised as :class:`~eventlib.SpoolError`, naming the file.

Forks: a child forked by ``os.fork()`` (gunicorn, uWSGI, Celery's prefork
pool) must not use its parent's SQLite connections: the owner of a
:class:`Spool` calls :meth:`Spool.after_fork` in the child.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ._sqlite import use_wal
from .exceptions import SpoolError

__all__ = [
    "BATCH",
    "LEASE_SECONDS",
    "Circuit",
    "Destination",
    "Spool",
    "SpoolStatus",
    "SpooledEvent",
]

#: How long a publisher may hold a batch before another may take it over.
LEASE_SECONDS = 60.0
#: How many events one claim takes at most.
BATCH = 100

#: ``seq`` is the rowid, without AUTOINCREMENT, which writes a second page
#: for every insert (files of earlier releases keep it): a ``seq`` is used
#: again only once every later event has left, and a batch is removed by
#: its claim, never by ``seq`` alone (:meth:`Spool.flush`).
_SCHEMA = """
create table if not exists spool (
    seq integer primary key,
    name text not null,
    event_id text not null,
    payload text not null,
    spooled_at real not null,
    claimed_until real,
    broker text,
    queue text,
    claimed_by text
)
"""
#: The events of this spool's destination; those of a first-release spool
#: file have none, and go to whichever destination flushes them.
_MINE = "(broker is null or (broker = ? and queue = ?))"
#: Columns added since the first release, for spool files written by it
#: (whose events, with no destination, go to whichever broker flushes them).
_ADDED_COLUMNS = ("broker", "queue", "claimed_by")
_INSERT = (
    "insert into spool (name, event_id, payload, spooled_at, broker, queue) "
    "values (?, ?, ?, ?, ?, ?)"
)
#: This host, as a claim names it (see :func:`_claimer_alive`).
_HOST = socket.gethostname()


@dataclass(frozen=True)
class Destination:
    """Where an event was logged for: the broker (its URL, password masked)
    and the queue."""

    broker: str
    queue: str

    def __str__(self) -> str:
        return f"the queue {self.queue} of the broker {self.broker}"


@dataclass(frozen=True)
class SpooledEvent:
    """An event waiting in the spool."""

    seq: int
    name: str
    event_id: str
    payload: str
    spooled_at: float


@dataclass(frozen=True)
class SpoolStatus:
    """What waits in the spool for one destination.

    ``count`` events, the oldest ``oldest_age`` seconds old.  ``held_until``
    is set while a live publisher holds a batch of the file (see
    :meth:`Spool.flush`): the time (``time.time()``) its lease ends, until
    which no other publisher takes any event of it.  A publisher of another
    host that crashed mid-flush holds its batch until then too.
    ``elsewhere`` counts the events of the same file that wait for other
    destinations, by destination.
    """

    count: int
    oldest_age: float | None
    held_until: float | None = None
    elsewhere: tuple[tuple[Destination, int], ...] = ()


class Spool:
    """One spool file, for the events of one destination.

    Every method opens what it needs, so an instance can be shared by
    threads: each thread has its own connection.  Errors of the file itself
    are :class:`~eventlib.SpoolError`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        destination: Destination,
        *,
        timeout: float = 10.0,
    ) -> None:
        self.path = Path(path).resolve()
        self.destination = destination
        self.timeout = timeout
        self._local = threading.local()
        #: Connections of the thread that forked, in a forked child: kept
        #: open and unused, rather than closed on the parent's behalf.
        self._inherited: list[sqlite3.Connection] = []

    def after_fork(self) -> None:
        """In a forked child: open new connections from now on."""
        inherited = getattr(self._local, "connection", None)
        if inherited is not None:
            self._inherited.append(inherited)
        self._local = threading.local()

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as error:
            raise self._error(doing, error) from error

    def _error(self, doing: str, error: sqlite3.Error) -> SpoolError:
        return SpoolError(f"the spool file {self.path} cannot {doing}: {error}")

    def _connection(self) -> sqlite3.Connection:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=True
            )
            try:
                use_wal(connection, self.timeout)
                connection.execute(_SCHEMA)
                _add_missing_columns(connection)
            except BaseException:
                connection.close()
                raise
            self._local.connection = connection
        return connection

    def put(self, name: str, event_id: str, payload: str) -> int:
        """Keep an event until it is published; return its sequence number."""
        # Not within _errors(), a context manager: this is the spool mode's
        # log(), and a try costs less.
        try:
            cursor = self._connection().execute(
                _INSERT,
                (
                    name,
                    event_id,
                    payload,
                    time.time(),
                    self.destination.broker,
                    self.destination.queue,
                ),
            )
        except sqlite3.Error as error:
            raise self._error("keep events", error) from error
        return cursor.lastrowid or 0

    def put_many(self, events: list[tuple[str, str, str]]) -> None:
        """Keep ``(name, event_id, payload)`` events in one transaction."""
        if not events:
            return
        now = time.time()
        broker, queue = self.destination.broker, self.destination.queue
        with self._errors("keep events"), self._transaction() as connection:
            connection.executemany(
                _INSERT,
                [
                    (name, event_id, payload, now, broker, queue)
                    for name, event_id, payload in events
                ],
            )

    def status(self) -> SpoolStatus:
        """What waits for this spool's destination, and for others.  A spool
        file that does not exist yet is empty."""
        if not self.path.exists():
            return SpoolStatus(0, None)
        now = time.time()
        with self._errors("be read"):
            connection = self._connection()
            rows = connection.execute(
                "select broker, queue, count(*), min(spooled_at) from spool group by broker, queue"
            ).fetchall()
            claims = connection.execute(
                "select claimed_by, max(claimed_until) from spool "
                "where claimed_until > ? group by claimed_by",
                (now,),
            ).fetchall()
        count, oldest = 0, None
        elsewhere = []
        for broker, queue, number, first in rows:
            if self._is_mine(broker, queue):
                count += number
                oldest = first if oldest is None else min(oldest, first)
            else:
                elsewhere.append((Destination(broker, queue), number))
        held = [until for claimer, until in claims if _claimer_alive(claimer)]
        age = None if oldest is None else max(0.0, now - oldest)
        return SpoolStatus(count, age, max(held, default=None), tuple(elsewhere))

    def holds(self, seq: int) -> bool:
        """Whether the event of sequence number ``seq`` is still waiting (a
        sequence number is used again once every later event has left)."""
        if not self.path.exists():
            return False
        with self._errors("be read"):
            row = self._connection().execute("select 1 from spool where seq = ?", (seq,)).fetchone()
        return row is not None

    def _is_mine(self, broker: str | None, queue: str | None) -> bool:
        return broker is None or (
            broker == self.destination.broker and queue == self.destination.queue
        )

    def flush(self, publish: Callable[[list[SpooledEvent]], None]) -> int:
        """Publish every event waiting for this destination, oldest first,
        in batches of at most :data:`BATCH`, removing a batch once
        ``publish(batch)`` returned; return how many were published.

        One publisher works on a spool file at a time: while another one
        holds a batch (for at most :data:`LEASE_SECONDS`), this publishes
        nothing more and returns; :meth:`status` then tells until when the
        batch is held.  The claim of a process of this host that is gone
        (killed mid-flush) is taken over at once; another host's holds
        until its lease ends.  The first
        exception of ``publish`` stops the flush, leaves that batch and the
        later events in the spool, and propagates.
        """
        if not self.path.exists():
            return 0
        published = 0
        done: _Claim | None = None
        while True:
            # A published batch is removed in the transaction that claims
            # the next: one write per batch, while log() writes too.
            with self._errors("remove published events" if done else "be read"):
                claim = self._claim(removing=done)
            if claim is None:
                return published
            try:
                publish(claim.events)
            except BaseException:
                with self._errors("release events"):
                    self._connection().execute(
                        f"update spool set claimed_until = null where {_CLAIMED}",
                        claim.rows(self._mine),
                    )
                raise
            published += len(claim.events)
            done = claim

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        connection = self._connection()
        connection.execute("begin immediate")
        try:
            yield connection
            connection.execute("commit")
        except BaseException:
            # A failed commit (disk full) may have rolled back already.
            if connection.in_transaction:
                connection.execute("rollback")
            raise

    def _claim(self, removing: _Claim | None) -> _Claim | None:
        """Remove the published events of the claim ``removing``, then
        claim the next batch, in one transaction; ``None`` when nothing
        waits or another live publisher holds a batch."""
        now = time.time()
        with self._transaction() as connection:
            if removing is not None:
                connection.execute(f"delete from spool where {_CLAIMED}", removing.rows(self._mine))
            holders = connection.execute(
                "select distinct claimed_by from spool where claimed_until > ?", (now,)
            ).fetchall()
            if any(_claimer_alive(holder) for (holder,) in holders):
                return None
            rows = connection.execute(
                "select seq, name, event_id, payload, spooled_at from spool "
                f"where {_MINE} order by seq limit ?",
                (*self._mine, BATCH),
            ).fetchall()
            if not rows:
                return None
            claim = _Claim([SpooledEvent(*row) for row in rows], _claimer(), now + LEASE_SECONDS)
            connection.execute(
                "update spool set claimed_until = ?, claimed_by = ? "
                f"where seq between ? and ? and {_MINE}",
                (claim.until, claim.claimer, rows[0][0], rows[-1][0], *self._mine),
            )
        return claim

    @property
    def _mine(self) -> tuple[str, str]:
        return self.destination.broker, self.destination.queue


#: The rows of a claim (:meth:`_Claim.rows`): its events that it still
#: holds, not those of a claim that took them over once its lease ended.
_CLAIMED = f"seq between ? and ? and claimed_by = ? and claimed_until = ? and {_MINE}"


@dataclass(frozen=True)
class _Claim:
    """A batch a publisher claimed: its events, and the claimer and lease
    end the claim wrote on their rows."""

    events: list[SpooledEvent]
    claimer: str
    until: float

    def rows(self, mine: tuple[str, str]) -> tuple[object, ...]:
        """The parameters of :data:`_CLAIMED` for this claim."""
        return (self.events[0].seq, self.events[-1].seq, self.claimer, self.until, *mine)


def _add_missing_columns(connection: sqlite3.Connection) -> None:
    present = {row[1] for row in connection.execute("pragma table_info(spool)")}
    for column in _ADDED_COLUMNS:
        if column not in present:
            try:
                connection.execute(f"alter table spool add column {column} text")
            except sqlite3.OperationalError as error:
                if "duplicate column" not in str(error):  # another process added it
                    raise


def _claimer() -> str:
    """How a claim names the process that made it: ``host:pid``."""
    return f"{_HOST}:{os.getpid()}"


def _claimer_alive(claimer: str | None) -> bool:
    """Whether the process that made a claim may still publish its batch.
    A process of this host that is gone cannot: its claim is taken over at
    once.  Another host's, or a claim of the first release (``None``), is
    trusted until its lease ends."""
    if claimer is None:
        return True
    host, _, pid = claimer.rpartition(":")
    if host != _HOST or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class Circuit:
    """Whether the broker is known to be down, in this process.

    Tripped by a failed publish; while it is open, events go to the spool
    without trying the network, and the publisher probes the broker every
    ``spool_probe_interval`` seconds.  Only the publisher closes it, once the
    spool is empty, so that events logged meanwhile queue up behind the
    spooled ones.
    """

    def __init__(self) -> None:
        self.is_open = False

    def trip(self) -> None:
        self.is_open = True

    def close(self) -> None:
        self.is_open = False
