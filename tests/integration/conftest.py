"""Fixtures of the integration tests; see support.py."""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from collections.abc import Iterator

import pytest
from kombu import Connection, Exchange, Queue

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
        # Declared first: kombu's Redis transport deletes only the queues
        # its channel knows.
        declared = Queue(name, Exchange(name), name, channel=connection.default_channel)
        with contextlib.suppress(Exception):  # the broker went away
            declared.declare()
            declared.delete()


@pytest.fixture
def project(isolation, tmp_path, broker, queue) -> Iterator[Project]:
    built = Project(isolation, tmp_path, broker, queue)
    try:
        yield built
    finally:
        built.close()


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never reads or writes a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    server.close()
