"""The embedded broker's kombu transport (see :mod:`eventlib.embedded`)."""

from __future__ import annotations

import threading
from typing import Any

from kombu.transport import sqlalchemy
from sqlalchemy import delete

__all__ = ["CLEANUP_EVERY", "Channel", "Transport"]

#: Delete taken rows after this many messages were taken by one channel.
CLEANUP_EVERY = 200


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

    def _delete_taken(self) -> None:
        message = self.message_cls
        self.session.execute(delete(message).where(message.visible.is_(False)))
        self.session.commit()


class Transport(sqlalchemy.Transport):
    Channel = Channel
    polling_interval = 0.05
