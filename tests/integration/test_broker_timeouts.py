"""``log()`` never hangs its caller: against a broker that refuses
connections and one that accepts them and never answers, in the ``direct``
mode the first call returns within about the configured timeout, with the
event spooled, and the following ones spool at once; in the ``background``
mode no call waits for the broker at all, and the publisher thread spools
them.  With eventlib's own Celery app and with a user's app that has
Celery's default (unbounded) connection settings."""

from __future__ import annotations

import signal
import threading
import time

import pytest
import redis
from celery import Celery

import eventlib
from eventlib.sending import spool_status

from .test_outage import PrivateRedis

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
MODES = ["direct", "background"]
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


def assert_log_never_waits_long(url: str, app: str, mode: str) -> None:
    """Direct: the first call waits at most about the timeout and spools;
    the next ones spool without trying the network.  Background: no call
    waits for the network, and a flush finds them all spooled.  The calls
    run in a thread, so that a call that hangs fails the test instead of
    blocking it."""
    settings: dict[str, object] = {
        "broker_timeout": TIMEOUT,
        "spool_probe_interval": 60,
        "dispatch": mode,
    }
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
    first_bound = BOUND if mode == "direct" else SPOOL_BOUND
    assert timings[0] < first_bound, f"the first log() took {timings[0]:.3f}s against {url}"
    assert max(timings[1:]) < SPOOL_BOUND, f"later log() calls took {timings[1:]} against {url}"
    if mode == "background":
        started = time.monotonic()
        assert eventlib.flush(timeout=BOUND + 30) is False  # the broker took none
        assert time.monotonic() - started < BOUND
    assert spool_status().count == ATTEMPTS
    assert len(set(ids)) == ATTEMPTS


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("app", APPS)
@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_a_refusing_broker_costs_one_attempt_then_events_are_spooled(
    shop, refusing_port, scheme, app, mode
):
    assert_log_never_waits_long(SCHEMES[scheme].format(port=refusing_port), app, mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("app", APPS)
@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_a_silent_broker_costs_one_timeout_then_events_are_spooled(
    shop, silent_port, scheme, app, mode
):
    assert_log_never_waits_long(SCHEMES[scheme].format(port=silent_port), app, mode)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_many_threads_against_a_silent_broker_each_wait_at_most_about_the_timeout(
    shop, silent_port, scheme
):
    """More threads than the pool has connections log at once: those that
    get a connection after the circuit opened spool without trying the
    network, so no call waits for the timeouts of the calls before it."""
    url = SCHEMES[scheme].format(port=silent_port)
    eventlib.configure(
        broker_url=url, broker_timeout=TIMEOUT, spool_probe_interval=60, dispatch="direct"
    )
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
        dispatch="direct",
    )

    with pytest.raises(eventlib.DispatchError) as error:
        eventlib.log("shop.Purchase", {})

    message = str(error.value)
    assert message.startswith("could not send the event shop.Purchase (id ")
    assert f"to the broker amqp://guest:**@127.0.0.1:{refusing_port}//" in message
    assert f"nor keep it in the spool {blocker / 'spool.sqlite'}" in message
    assert "s3cret" not in message


def test_background_mode_raises_dispatch_error_once_its_full_buffer_cannot_be_spooled(
    shop, refusing_port, tmp_path
):
    """The buffer keeps what neither the broker nor the spool took: nothing
    accepted is dropped, and ``log()`` refuses more once it is full."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    eventlib.configure(
        broker_url=f"redis://127.0.0.1:{refusing_port}/0",
        broker_timeout=TIMEOUT,
        spool_path=str(blocker / "spool.sqlite"),
        buffer_size=2,
    )
    kept = [eventlib.log("shop.Purchase", {"n": n}) for n in range(2)]

    with pytest.raises(eventlib.DispatchError, match="nor keep it in the spool"):
        eventlib.log("shop.Purchase", {"n": 2})

    assert eventlib.flush(timeout=BOUND) is False
    held = list(eventlib.sending.sender._buffer)
    assert [event[1] for event in held if isinstance(event, tuple)] == kept


# ------------------------------------------- a warm connection goes quiet ---


@pytest.fixture
def private_redis(tmp_path):
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.process.send_signal(signal.SIGCONT)  # SIGKILL reaches a stopped process too
    server.stop()


def test_a_warm_connection_whose_redis_stops_answering_waits_at_most_twice_the_timeout(
    shop, private_redis
):
    """Redis stopped (SIGSTOP) after a first publish: the kernel still
    accepts connections, nothing answers.  The publish waits once, and does
    not retry on a new connection to wait again (it used to take three
    times the timeout)."""
    timeout = 1.0
    eventlib.configure(
        broker_url=private_redis.url,
        broker_timeout=timeout,
        spool_probe_interval=3600,
        dispatch="direct",
    )
    eventlib.log("shop.Purchase", {"sku": "warm"})
    private_redis.process.send_signal(signal.SIGSTOP)

    started = time.monotonic()
    eventlib.log("shop.Purchase", {"sku": "stalled"})
    waited = time.monotonic() - started

    assert waited < 2 * timeout + 0.4, f"log() waited {waited:.2f}s"
    assert spool_status().count == 1


def test_a_connection_the_broker_closed_meanwhile_is_retried_at_once(shop, private_redis):
    """The one retry of a publish is for this: a pooled connection Redis
    closed while it was idle.  The event is published, not spooled."""
    eventlib.configure(
        broker_url=private_redis.url,
        broker_timeout=1.0,
        spool_probe_interval=3600,
        dispatch="direct",
    )
    eventlib.log("shop.Purchase", {"sku": "warm"})
    client = redis.Redis.from_url(private_redis.url)
    try:
        assert client.client_kill_filter(_type="normal", skipme=True) >= 1
        event_id = eventlib.log("shop.Purchase", {"sku": "after the close"})
        assert spool_status().count == 0
        assert eventlib.sending.sender.circuit.is_open is False
        assert client.llen("eventlib") == 2
        assert event_id
    finally:
        client.close()
