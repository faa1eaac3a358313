"""The embedded broker's kombu transport (see :mod:`eventlib.embedded`)."""

from __future__ import annotations

import threading
from typing import Any

from kombu.transport import sqlalchemy
from sqlalchemy import Column, MetaData, String, Table, delete, select
from sqlalchemy.dialects.sqlite import insert

__all__ = ["BINDINGS", "CLEANUP_EVERY", "SHARED_EXCHANGES", "Channel", "Transport"]

#: Delete taken rows after this many messages were taken by one channel.
CLEANUP_EVERY = 200

#: The exchanges whose bindings every process sees: the broadcast exchange
#: (:mod:`eventlib.broadcast`), whose groups' queues listeners bind in their
#: processes and workers publish to from theirs.  kombu keeps the bindings
#: of the others in the memory of the process that made them, as before.
SHARED_EXCHANGES = frozenset({"eventlib.broadcast"})

#: The bindings of :data:`SHARED_EXCHANGES`, in the broker's file.
BINDINGS = Table(
    "eventlib_bindings",
    MetaData(),
    Column("exchange", String(255), primary_key=True),
    Column("routing_key", String(255), primary_key=True),
    Column("queue", String(255), primary_key=True),
)


class Channel(sqlalchemy.Channel):
    """kombu's SQLAlchemy channel, used by one thread at a time.

    The stock channel keeps one SQLAlchemy session, which is not
    thread-safe, and a Celery worker uses the channel from two threads: with
    no event loop for this transport, its main thread polls the queue while
    the pool's result-handler thread rejects and requeues the message of a
    lost pool process (``reject_on_worker_lost``).  Interleaved, the two
    broke the session ("This session is in 'prepared' state"), the worker
    died with "Unrecoverable error" and the message was lost.  Every method
    that uses the session holds the channel's lock.
    """

    _taken = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._session_lock = threading.RLock()
        super().__init__(*args, **kwargs)

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        with self._session_lock:
            super()._new_queue(queue, **kwargs)

    # The signatures of kombu's SQLAlchemy channel, which are narrower than
    # those of kombu's abstract channel.
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:  # type: ignore[override]
        with self._session_lock:
            super()._put(queue, payload, **kwargs)

    def _get(self, queue: str) -> Any:  # type: ignore[override]
        with self._session_lock:
            payload = super()._get(queue)
            self._taken += 1
            if self._taken % CLEANUP_EVERY == 0:
                self._delete_taken()
            return payload

    def _purge(self, queue: str) -> int:
        with self._session_lock:
            return int(super()._purge(queue))

    def _size(self, queue: str) -> int:
        with self._session_lock:
            return int(super()._size(queue))

    # The bindings of the shared exchanges: kept in the file, so that a
    # message published in one process reaches the queues bound in another.

    def queue_bind(
        self,
        queue: str,
        exchange: str | None = None,
        routing_key: str = "",
        arguments: Any = None,
        **kwargs: Any,
    ) -> None:
        super().queue_bind(queue, exchange, routing_key, arguments, **kwargs)
        if exchange in SHARED_EXCHANGES:
            row = {"exchange": exchange, "routing_key": routing_key, "queue": queue}
            with self._session_lock:
                self._create_bindings()
                self.session.execute(insert(BINDINGS).values(row).on_conflict_do_nothing())
                self.session.commit()

    def get_table(self, exchange: str) -> Any:
        if exchange not in SHARED_EXCHANGES:
            return super().get_table(exchange)
        query = select(BINDINGS.c.routing_key, BINDINGS.c.queue).where(
            BINDINGS.c.exchange == exchange
        )
        with self._session_lock:
            self._create_bindings()
            rows = self.session.execute(query).all()
        return [(routing_key, None, queue) for routing_key, queue in rows]

    def queue_delete(
        self, queue: str, if_unused: bool = False, if_empty: bool = False, **kwargs: Any
    ) -> None:
        if if_empty and self._size(queue):
            return
        super().queue_delete(queue, if_unused, if_empty, **kwargs)
        with self._session_lock:
            self._create_bindings()
            self.session.execute(delete(BINDINGS).where(BINDINGS.c.queue == queue))
            self.session.commit()

    _bindings_created = False

    def _create_bindings(self) -> None:
        if not self._bindings_created:
            BINDINGS.create(self.session.get_bind(), checkfirst=True)
            self._bindings_created = True

    def _delete_taken(self) -> None:
        message = self.message_cls
        self.session.execute(delete(message).where(message.visible.is_(False)))
        self.session.commit()


class Transport(sqlalchemy.Transport):
    Channel = Channel
    polling_interval = 0.05
    #: Every process sees the bindings of :data:`SHARED_EXCHANGES`.
    shares_bindings = True
