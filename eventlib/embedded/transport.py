"""The embedded broker's kombu transport (see :mod:`eventlib.embedded`)."""

from __future__ import annotations

from typing import Any

from kombu.transport import sqlalchemy
from sqlalchemy import delete

#: Delete taken rows after this many messages were taken by one channel.
CLEANUP_EVERY = 200


class Channel(sqlalchemy.Channel):
    _taken = 0

    def _get(self, queue: str) -> Any:
        payload = super()._get(queue)
        self._taken += 1
        if self._taken % CLEANUP_EVERY == 0:
            self._delete_taken()
        return payload

    def _delete_taken(self) -> None:
        message = self.message_cls
        self.session.execute(delete(message).where(message.visible.is_(False)))
        self.session.commit()


class Transport(sqlalchemy.Transport):
    Channel = Channel
    polling_interval = 0.05
