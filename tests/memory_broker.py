"""Reading what was published to kombu's in-memory broker, whose queues
every connection of the test process shares."""

from __future__ import annotations

from typing import Any

from celery import Celery


def take_messages(app: Celery, queue_name: str = "eventlib") -> list[Any]:
    """Every message waiting in ``queue_name``, in order, taken from it."""
    taken = []
    with app.connection_for_read() as connection:
        queue = connection.SimpleQueue(queue_name)
        try:
            while True:
                try:
                    message = queue.get(block=False)
                except queue.Empty:
                    return taken
                message.ack()
                taken.append(message)
        finally:
            queue.close()
