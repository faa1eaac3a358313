from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery


@pytest.fixture(autouse=True)
def _isolated(isolation):
    """Every test starts from default settings and an empty registry."""
    return isolation


@pytest.fixture
def memory_app() -> Iterator[Celery]:
    """A user's Celery app on kombu's in-memory broker, for sending without
    running.  Its queues are shared by every connection in this process:
    they are emptied around the test."""
    app = Celery("proj", broker="memory://", set_as_current=False)
    _purge(app)
    yield app
    _purge(app)
    app.close()


def _purge(app: Celery) -> None:
    with app.connection_for_write() as connection:
        for name in ("eventlib", "refunds"):
            queue = connection.SimpleQueue(name)
            queue.clear()
            queue.close()
