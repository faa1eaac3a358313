"""``log()`` never hangs its caller: against a broker that refuses
connections and one that accepts them and never answers, it raises
``DispatchError`` within the configured timeout, every time."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

import eventlib

TIMEOUT = 0.5
#: Far above the target (one connection attempt and one retry, each bounded
#: by TIMEOUT) and far below what an unbounded wait would take.
BOUND = TIMEOUT * 2 + 1.5
ATTEMPTS = 4
SCHEMES = {"redis": "redis://127.0.0.1:{port}/0", "amqp": "amqp://guest:guest@127.0.0.1:{port}//"}


@pytest.fixture
def refusing_port() -> int:
    """A port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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


@pytest.fixture
def shop(isolation):
    isolation.write(
        "shop/events.py",
        """
        import eventlib

        class Purchase(eventlib.BaseEvent):
            pass
        """,
    )


def assert_dispatch_fails_fast(url: str, port: int) -> None:
    eventlib.configure(broker_url=url, broker_timeout=TIMEOUT)
    for _ in range(ATTEMPTS):
        started = time.monotonic()
        with pytest.raises(eventlib.DispatchError) as error:
            eventlib.log("shop.Purchase", {"sku": "a"})
        elapsed = time.monotonic() - started
        assert elapsed < BOUND, f"log() took {elapsed:.2f}s against {url}"
        assert f"127.0.0.1:{port}" in str(error.value)
        assert "could not send the event shop.Purchase" in str(error.value)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_a_refusing_broker_raises_dispatch_error_at_once(shop, refusing_port, scheme):
    assert_dispatch_fails_fast(SCHEMES[scheme].format(port=refusing_port), refusing_port)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_a_silent_broker_raises_dispatch_error_within_the_timeout(shop, silent_port, scheme):
    assert_dispatch_fails_fast(SCHEMES[scheme].format(port=silent_port), silent_port)


def test_the_password_is_not_in_the_message(shop, refusing_port):
    eventlib.configure(broker_url=f"amqp://guest:s3cret@127.0.0.1:{refusing_port}//")
    with pytest.raises(eventlib.DispatchError) as error:
        eventlib.log("shop.Purchase", {})
    assert "s3cret" not in str(error.value)
    assert "guest:**@" in str(error.value)
