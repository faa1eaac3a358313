"""Fixtures of the integration tests; see support.py."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest
from kombu import Connection

from eventlib.embedded import url_for

from .support import Project, broker_url


@pytest.fixture(params=["amqp", "embedded", "redis"])
def broker(request, tmp_path) -> str:
    """Each broker in turn: the servers, and the embedded one in a file of
    the test's own.  Parametrize it indirectly to choose."""
    if request.param == "embedded":
        return url_for(tmp_path / "broker.sqlite")
    return broker_url(request.param)


@pytest.fixture
def queue(broker) -> Iterator[str]:
    """A queue of the test's own, deleted afterwards."""
    name = f"eventlib-test-{uuid.uuid4().hex[:12]}"
    yield name
    with Connection(broker) as connection:
        channel = connection.default_channel
        with contextlib.suppress(Exception):  # already gone, or the broker went away
            channel.queue_delete(name)


@pytest.fixture
def project(isolation, tmp_path, broker, queue) -> Iterator[Project]:
    built = Project(isolation, tmp_path, broker, queue)
    try:
        yield built
    finally:
        built.close()
