"""``log()`` never hangs its caller: against a broker that refuses
connections and one that accepts them and never answers, the first call
returns within about the configured timeout, with the event spooled, and
the following ones spool at once."""

from __future__ import annotations

import time

import pytest

import eventlib
from eventlib.dispatch import spool_status

TIMEOUT = 0.5
#: Far above the target (one connection attempt and one retry, each bounded
#: by TIMEOUT) and far below what an unbounded wait would take.
BOUND = TIMEOUT * 2 + 1.5
ATTEMPTS = 4
#: Spooling is an SQLite insert (well under a millisecond here): this bound
#: only tells it from a network attempt.  docs/benchmarks.md has the figure.
SPOOL_BOUND = 0.1
SCHEMES = {"redis": "redis://127.0.0.1:{port}/0", "amqp": "amqp://guest:guest@127.0.0.1:{port}//"}


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


def assert_log_never_waits_long(url: str) -> None:
    """The first call waits at most about the timeout and spools; the next
    ones spool without trying the network."""
    eventlib.configure(broker_url=url, broker_timeout=TIMEOUT, spool_probe_interval=60)
    ids = []
    for attempt in range(ATTEMPTS):
        started = time.monotonic()
        ids.append(eventlib.log("shop.Purchase", {"sku": "a"}))
        elapsed = time.monotonic() - started
        bound = BOUND if attempt == 0 else SPOOL_BOUND
        assert elapsed < bound, f"log() number {attempt} took {elapsed:.3f}s against {url}"
    assert spool_status().count == ATTEMPTS
    assert len(set(ids)) == ATTEMPTS


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_a_refusing_broker_costs_one_attempt_then_events_are_spooled(shop, refusing_port, scheme):
    assert_log_never_waits_long(SCHEMES[scheme].format(port=refusing_port))


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_a_silent_broker_costs_one_timeout_then_events_are_spooled(shop, silent_port, scheme):
    assert_log_never_waits_long(SCHEMES[scheme].format(port=silent_port))


def test_dispatch_error_when_the_spool_cannot_be_written_either(shop, refusing_port, tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    eventlib.configure(
        broker_url=f"amqp://guest:s3cret@127.0.0.1:{refusing_port}//",
        spool_path=str(blocker / "spool.sqlite"),
    )

    with pytest.raises(eventlib.DispatchError) as error:
        eventlib.log("shop.Purchase", {})

    message = str(error.value)
    assert message.startswith("could not send the event shop.Purchase (id ")
    assert f"to the broker amqp://guest:**@127.0.0.1:{refusing_port}//" in message
    assert f"nor keep it in the spool {blocker / 'spool.sqlite'}" in message
    assert "s3cret" not in message
