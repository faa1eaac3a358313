"""``log()`` never hangs its caller: against a broker that refuses
connections and one that accepts them and never answers, the first call
returns within about the configured timeout, with the event spooled, and
the following ones spool at once; with eventlib's own Celery app and with a
user's app that has Celery's default (unbounded) connection settings."""

from __future__ import annotations

import threading
import time

import pytest
from celery import Celery

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
#: eventlib's own Celery app, and a user's (the ``celery_app`` setting).
APPS = ["own", "user"]
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


def assert_log_never_waits_long(url: str, app: str) -> None:
    """The first call waits at most about the timeout and spools; the next
    ones spool without trying the network.  The calls run in a thread, so
    that a call that hangs fails the test instead of blocking it."""
    settings: dict[str, object] = {"broker_timeout": TIMEOUT, "spool_probe_interval": 60}
    if app == "user":
        # A user's app, with Celery's defaults: no timeouts of its own.
        settings["celery_app"] = Celery("proj", broker=url, set_as_current=False)
    else:
        settings["broker_url"] = url
    eventlib.configure(**settings)
    ids: list[str | None] = []
    timings: list[float] = []

    def log_some() -> None:
        for _ in range(ATTEMPTS):
            started = time.monotonic()
            ids.append(eventlib.log("shop.Purchase", {"sku": "a"}))
            timings.append(time.monotonic() - started)

    caller = threading.Thread(target=log_some, daemon=True)
    caller.start()
    caller.join(BOUND + ATTEMPTS * SPOOL_BOUND + 30)
    assert not caller.is_alive(), f"log() still blocked after 30s more than its bound ({url})"
    assert len(timings) == ATTEMPTS, f"log() raised in the thread against {url}"
    assert timings[0] < BOUND, f"the first log() took {timings[0]:.3f}s against {url}"
    assert max(timings[1:]) < SPOOL_BOUND, f"later log() calls took {timings[1:]} against {url}"
    assert spool_status().count == ATTEMPTS
    assert len(set(ids)) == ATTEMPTS


@pytest.mark.parametrize("app", APPS)
@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_a_refusing_broker_costs_one_attempt_then_events_are_spooled(
    shop, refusing_port, scheme, app
):
    assert_log_never_waits_long(SCHEMES[scheme].format(port=refusing_port), app)


@pytest.mark.parametrize("app", APPS)
@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_a_silent_broker_costs_one_timeout_then_events_are_spooled(shop, silent_port, scheme, app):
    assert_log_never_waits_long(SCHEMES[scheme].format(port=silent_port), app)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_many_threads_against_a_silent_broker_each_wait_at_most_about_the_timeout(
    shop, silent_port, scheme
):
    """More threads than the pool has connections log at once: those that
    get a connection after the circuit opened spool without trying the
    network, so no call waits for the timeouts of the calls before it."""
    url = SCHEMES[scheme].format(port=silent_port)
    eventlib.configure(broker_url=url, broker_timeout=TIMEOUT, spool_probe_interval=60)
    threads = 100
    timings: list[float] = []
    start = threading.Barrier(threads)

    def log_one() -> None:
        start.wait()
        started = time.monotonic()
        eventlib.log("shop.Purchase", {"sku": "a"})
        timings.append(time.monotonic() - started)

    callers = [threading.Thread(target=log_one, daemon=True) for _ in range(threads)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(BOUND + 30)
    assert len(timings) == threads, f"{threads - len(timings)} log() calls blocked or raised"
    assert max(timings) < BOUND, f"the slowest log() took {max(timings):.3f}s against {url}"
    assert spool_status().count == threads


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
