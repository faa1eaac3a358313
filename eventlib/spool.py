"""The spool: where ``log()`` keeps events while the broker cannot take them.

An SQLite file (the ``spool_path`` setting), one per host, shared safely by
every process and thread that logs events.  ``log()`` writes an event here
when publishing fails, and, while the broker is known to be down, without
trying the network at all (see :class:`Circuit`).  A flusher thread in the
process that spooled re-publishes the events in the order they were spooled
once the broker answers again; ``eventlib spool flush`` does the same from
a shell.  An event leaves the spool only after the broker accepted it
(publisher confirms on RabbitMQ), so a crash at the wrong moment can publish
an event twice, never lose it: ``event.id`` lets handlers drop duplicates.

Writes survive the crash of the process (SQLite's WAL journal), not the loss
of power to the machine.

Forks: a child forked by ``os.fork()`` (gunicorn, uWSGI, Celery's prefork
pool) starts with fresh :class:`Spool` connections and fresh :class:`Flusher`
state (no thread, a free lock), whatever the parent's threads were doing at
that moment, and starts its own flusher when it spools.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._sqlite import use_wal

logger = logging.getLogger("eventlib")

#: How long a flusher may hold a batch before another may take it over.
LEASE_SECONDS = 60.0
BATCH = 100

_SCHEMA = """
create table if not exists spool (
    seq integer primary key autoincrement,
    name text not null,
    event_id text not null,
    payload text not null,
    spooled_at real not null,
    claimed_until real
)
"""


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
    """How many events wait, and since when the oldest has (seconds).

    ``held_until`` is set while a flusher holds a batch of them (see
    :meth:`Spool.flush`): the time (``time.time()``) its lease ends, until
    which no other flusher publishes any event of this spool.  A flusher that
    crashed mid-flush holds them until then too.
    """

    count: int
    oldest_age: float | None
    held_until: float | None = None


class Spool:
    """One spool file.  Every method opens what it needs, so an instance can
    be shared by threads and survives ``fork()``: each thread has its own
    connection, and a forked child opens its own, never using its parent's
    (SQLite forbids it).  Errors of the file itself
    (unwritable, disk full) are ``sqlite3.Error``s."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 10.0) -> None:
        self.path = Path(path).resolve()
        self.timeout = timeout
        self._local = threading.local()
        _spools.add(self)

    def _after_fork_in_child(self) -> None:
        inherited = getattr(self._local, "connection", None)
        if inherited is not None:
            _inherited_connections.append(inherited)
        self._local = threading.local()

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:  # a forked child starts with none (_after_fork_in_child)
            connection = sqlite3.connect(
                self.path, timeout=self.timeout, isolation_level=None, check_same_thread=True
            )
            use_wal(connection, self.timeout)
            connection.execute("pragma synchronous=normal")
            connection.execute(_SCHEMA)
            self._local.connection = connection
        return connection

    def put(self, name: str, event_id: str, payload: str) -> None:
        """Keep an event until it is flushed."""
        self._connection().execute(
            "insert into spool (name, event_id, payload, spooled_at) values (?, ?, ?, ?)",
            (name, event_id, payload, time.time()),
        )

    def status(self) -> SpoolStatus:
        """The number of waiting events, the oldest one's age and, while a
        flusher holds some of them, when its lease ends.  A spool file that
        does not exist yet is empty."""
        if not self.path.exists():
            return SpoolStatus(0, None)
        now = time.time()
        count, oldest, held_until = (
            self._connection()
            .execute(
                "select count(*), min(spooled_at), "
                "max(case when claimed_until > ? then claimed_until end) from spool",
                (now,),
            )
            .fetchone()
        )
        return SpoolStatus(count, None if oldest is None else max(0.0, now - oldest), held_until)

    def flush(self, publish: Callable[[SpooledEvent], None]) -> int:
        """Publish every waiting event, oldest first, removing each once
        ``publish`` returned; return how many were published.

        One flusher works on a spool at a time: while another one holds
        a batch (for at most :data:`LEASE_SECONDS`, also when it crashed
        mid-flush), this publishes nothing more and returns;
        :meth:`status` then tells until when the batch is held.  The
        first exception of ``publish`` stops the flush, leaves that event
        and the later ones in the spool, and propagates.
        """
        if not self.path.exists():
            return 0
        published = 0
        while True:
            batch = self._claim()
            if not batch:
                return published
            for position, event in enumerate(batch):
                try:
                    publish(event)
                except BaseException:
                    self._release(batch[position:])
                    raise
                self._connection().execute("delete from spool where seq = ?", (event.seq,))
                published += 1

    def _claim(self) -> list[SpooledEvent]:
        connection = self._connection()
        now = time.time()
        connection.execute("begin immediate")
        try:
            held = connection.execute(
                "select 1 from spool where claimed_until > ? limit 1", (now,)
            ).fetchone()
            rows = (
                []
                if held
                else connection.execute(
                    "select seq, name, event_id, payload, spooled_at from spool "
                    "order by seq limit ?",
                    (BATCH,),
                ).fetchall()
            )
            if rows:
                connection.execute(
                    "update spool set claimed_until = ? where seq between ? and ?",
                    (now + LEASE_SECONDS, rows[0][0], rows[-1][0]),
                )
            connection.execute("commit")
        except BaseException:
            connection.execute("rollback")
            raise
        return [SpooledEvent(*row) for row in rows]

    def _release(self, events: list[SpooledEvent]) -> None:
        if events:
            self._connection().execute(
                "update spool set claimed_until = null where seq between ? and ?",
                (events[0].seq, events[-1].seq),
            )


class Circuit:
    """Whether the broker is known to be down, in this process.

    Tripped by a failed publish; while it is open, ``log()`` spools without
    trying the network.  Only the flusher closes it, once the spool is empty,
    so that events logged meanwhile queue up behind the spooled ones.  A
    forked child starts closed: its parent's flusher thread did not follow it.
    """

    def __init__(self) -> None:
        self._open_in: int | None = None

    @property
    def is_open(self) -> bool:
        return self._open_in == os.getpid()

    def trip(self) -> None:
        self._open_in = os.getpid()

    def close(self) -> None:
        self._open_in = None


class Flusher:
    """A daemon thread that re-publishes spooled events once the broker is
    back: it tries every ``interval`` seconds, flushes, closes the circuit
    when the spool is empty, and ends.  One per process; a forked child
    starts its own when it needs one, with a fresh lock even if the parent's
    thread held it at the moment of the fork.

    It logs on the ``eventlib`` logger: at INFO level each try the broker
    refused, with the oldest spooled event's ``eventlib_event`` and
    ``eventlib_event_id`` in the record; at WARNING level how many events it
    published, with ``eventlib_spool`` (the spool file) and
    ``eventlib_published`` (the count) in the record, and
    ``eventlib_event``, ``eventlib_event_id`` and ``eventlib_handler`` set to
    ``None`` (a batch, not one event).
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        _flushers.add(self)

    def _after_fork_in_child(self) -> None:
        self._thread = None
        self._pid = None
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def ensure_running(
        self,
        spool: Spool,
        publish: Callable[[SpooledEvent], None],
        circuit: Circuit,
        interval: float,
    ) -> None:
        with self._lock:
            alive = self._thread is not None and self._thread.is_alive()
            if alive and self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run,
                args=(spool, publish, circuit, interval, self._stop),
                name="eventlib-spool-flusher",
                daemon=True,
            )
            self._thread.start()

    def _run(
        self,
        spool: Spool,
        publish: Callable[[SpooledEvent], None],
        circuit: Circuit,
        interval: float,
        stop: threading.Event,
    ) -> None:
        trying: list[SpooledEvent] = []

        def publish_one(event: SpooledEvent) -> None:
            trying[:] = [event]
            publish(event)

        while not stop.wait(interval):
            trying.clear()
            try:
                flushed = spool.flush(publish_one)
            except Exception as error:
                logger.info(
                    "The broker is still unreachable (%s); events stay spooled",
                    error,
                    extra=_about(trying[0] if trying else None),
                )
                continue
            if flushed:
                logger.warning(
                    "Published %d spooled events",
                    flushed,
                    extra={
                        **_about(None),
                        "eventlib_spool": str(spool.path),
                        "eventlib_published": flushed,
                    },
                )
            with self._lock:
                if spool.status().count == 0:
                    circuit.close()
                    self._thread = None
                    return

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (settings changed, or a test ends); what it did
        not flush stays in the spool."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            thread.join(timeout)


def _about(event: SpooledEvent | None) -> dict[str, Any]:
    """The ``extra`` of a log record about ``event`` (``None``: no one event)."""
    return {
        "eventlib_event": event.name if event else None,
        "eventlib_event_id": event.event_id if event else None,
        "eventlib_handler": None,
    }


_spools: weakref.WeakSet[Spool] = weakref.WeakSet()
_flushers: weakref.WeakSet[Flusher] = weakref.WeakSet()
#: The connection of the thread that forked, in a forked child: kept open and
#: unused, rather than closed by the child on its parent's behalf.
_inherited_connections: list[sqlite3.Connection] = []


def _after_fork_in_child() -> None:
    """A forked child has only the thread that forked: give every spool and
    flusher fresh state, since the parent's other threads may have held a
    lock or a connection at that moment."""
    for spool in list(_spools):
        spool._after_fork_in_child()
    for flusher in list(_flushers):
        flusher._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
