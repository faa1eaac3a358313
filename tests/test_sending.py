"""The sending side (eventlib/sending.py): the dispatch modes, batches,
flush, the spool when the broker is down, and forks.  Real brokers and
workers are in tests/integration/."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import eventlib
from eventlib import DispatchError, brokers, metrics
from eventlib.sending import sender, spool_status

from .forking import read_with_deadline
from .memory_broker import take_messages
from .waiting import wait_for

SHOP_EVENTS = """
    from eventlib import BaseEvent

    class Purchase(BaseEvent):
        pass
"""


def events_in(found: list) -> list[str]:
    """The event ids the messages carry, in order."""
    ids = []
    for message in found:
        args, _, _ = message.decode()
        if message.headers["task"] == "eventlib.process":
            ids.append(message.headers["id"])
        else:
            assert message.headers["task"] == "eventlib.process_batch"
            ids.extend(eventlib.serialization.deserialize_event(p).id for _, p in args[0])
    return ids


@contextmanager
def publishes_held() -> Iterator[threading.Event]:
    """Make the publisher wait, before each publish, until the event given
    is set (10 s at most)."""
    release = threading.Event()
    publish = sender._publish

    def held_publish(*args, **kwargs):
        release.wait(10)
        return publish(*args, **kwargs)

    sender._publish = held_publish
    try:
        yield release
    finally:
        release.set()
        del sender._publish


def test_the_default_mode_is_background():
    assert eventlib.configure().dispatch == "background"


@pytest.mark.parametrize("mode", ["background", "spool", "direct"])
def test_every_mode_delivers_each_event_once_in_order(shop, memory_app, mode):
    eventlib.configure(celery_app=memory_app, dispatch=mode)

    ids = [eventlib.log("shop.Purchase", {"n": n}) for n in range(250)]

    assert eventlib.flush(timeout=10)
    assert events_in(take_messages(memory_app)) == ids
    assert spool_status().count == (0)


def test_a_lone_event_goes_alone_at_once_as_eventlib_process(shop, memory_app):
    eventlib.configure(celery_app=memory_app)

    event_id = eventlib.log("shop.Purchase", {})

    assert eventlib.flush(timeout=10)
    [message] = take_messages(memory_app)
    assert message.headers["task"] == "eventlib.process"
    assert message.headers["id"] == event_id


def test_events_waiting_together_go_in_batches_bounded_in_count_and_bytes(shop, memory_app):
    eventlib.configure(celery_app=memory_app, batch_size=10, batch_bytes=2_000)
    blocked = threading.Lock()
    blocked.acquire()
    publish = sender._publish

    def publish_when_released(*args, **kwargs):
        with blocked:  # the first publish waits until every event is buffered
            return publish(*args, **kwargs)

    sender._publish = publish_when_released
    try:
        small = [eventlib.log("shop.Purchase", {"n": n}) for n in range(25)]
        large = [eventlib.log("shop.Purchase", {"text": "x" * 900}) for _ in range(3)]
        blocked.release()
        assert eventlib.flush(timeout=10)
    finally:
        del sender._publish
    found = take_messages(memory_app)

    assert events_in(found) == small + large
    sizes = [len(m.decode()[0][0]) if m.headers["task"].endswith("batch") else 1 for m in found]
    assert all(size <= 10 for size in sizes)
    assert sum(sizes) == 28
    assert len(found) >= 4  # 25 small ones in batches of 10 at most, the large ones apart
    for message in found:
        if message.headers["task"].endswith("batch"):
            batch = message.decode()[0][0]
            assert sum(len(payload) for _, payload in batch) <= 2_000
            # What Flower and the worker's log show of its arguments.
            assert (
                message.headers["argsrepr"] == f"[{len(batch)} events: shop.Purchase x{len(batch)}]"
            )


@pytest.mark.parametrize("mode", ["background", "spool"])
def test_each_event_is_published_without_a_flush_whenever_it_comes(shop, memory_app, mode):
    # The publisher is woken only when it waits: an event logged as it
    # finishes a round, or while it waits, must not be left behind.
    eventlib.configure(celery_app=memory_app, dispatch=mode)
    found: list = []

    def published(event_id: str) -> bool:
        found.extend(take_messages(memory_app))
        return event_id in events_in(found)

    for burst in (1, 1, 5, 1, 30, 1, 2, 1):
        last = [eventlib.log("shop.Purchase", {"n": n}) for n in range(burst)][-1]
        wait_for(lambda last=last: published(last), what=f"a burst of {burst} events published")
    assert len(events_in(found)) == 42


def test_log_returns_before_the_event_is_published_in_background_mode(shop, memory_app):
    eventlib.configure(celery_app=memory_app)

    with publishes_held() as release:
        event_id = eventlib.log("shop.Purchase", {})
        assert take_messages(memory_app) == []  # log() did not wait for the broker
        release.set()
        assert eventlib.flush(timeout=10)

    assert events_in(take_messages(memory_app)) == [event_id]


@pytest.mark.parametrize("mode", ["background", "spool"])
def test_a_broker_that_is_down_gets_the_events_into_the_spool(shop, refusing_port, mode):
    eventlib.configure(
        broker_url=f"redis://127.0.0.1:{refusing_port}/0", broker_timeout=0.5, dispatch=mode
    )

    spooled_before = metrics.snapshot()["spooled"]

    ids = [eventlib.log("shop.Purchase", {"n": n}) for n in range(20)]

    assert eventlib.flush(timeout=10) is False
    assert spool_status().count == 20
    assert sender.circuit.is_open
    assert metrics.snapshot()["spooled"] - spooled_before == 20
    assert len(set(ids)) == 20


def test_a_full_buffer_spools_in_the_caller(shop, refusing_port):
    eventlib.configure(
        broker_url=f"redis://127.0.0.1:{refusing_port}/0", broker_timeout=0.5, buffer_size=5
    )
    with publishes_held() as release:
        for n in range(12):
            eventlib.log("shop.Purchase", {"n": n})
        assert spool_status().count >= 6  # what the buffer could not hold
        release.set()
        eventlib.flush(timeout=10)
    assert spool_status().count == 12


@contextmanager
def broker_down() -> Iterator[threading.Event]:
    """Make publishing and the broker check fail, as with a broker that is
    down, until the event given is set."""
    back = threading.Event()
    publish, check = sender._publish, brokers.check_broker

    def failing_publish(*args, **kwargs):
        if not back.is_set():
            raise ConnectionRefusedError("the broker is down")
        return publish(*args, **kwargs)

    def failing_check(app=None):
        if not back.is_set():
            raise DispatchError("the broker is down")
        return check(app)

    sender._publish = failing_publish
    brokers.check_broker = failing_check
    try:
        yield back
    finally:
        del sender._publish
        brokers.check_broker = check


def test_log_recovers_after_an_outage_in_which_the_spool_could_not_be_written(
    shop, memory_app, tmp_path
):
    eventlib.configure(
        celery_app=memory_app,
        dispatch="direct",
        spool_path=str(tmp_path / "missing" / "spool.sqlite"),
        spool_probe_interval=0.05,
    )
    with broker_down() as back:
        with pytest.raises(DispatchError, match="nor keep it in the spool"):
            eventlib.log("shop.Purchase", {"n": 1})
        with pytest.raises(DispatchError, match="nor keep it in the spool"):
            eventlib.log("shop.Purchase", {"n": 2})  # the circuit is open
        back.set()
        wait_for(lambda: not sender.circuit.is_open, 10, "the publisher's probe (every 0.05 s)")
        event_id = eventlib.log("shop.Purchase", {"n": 3})
    assert events_in(take_messages(memory_app)) == [event_id]


def test_events_of_another_broker_stay_in_the_spool(shop, refusing_port, memory_app, tmp_path):
    spool_path = str(tmp_path / "spool.sqlite")
    eventlib.configure(
        broker_url=f"redis://127.0.0.1:{refusing_port}/0",
        broker_timeout=0.5,
        spool_path=spool_path,
    )
    eventlib.log("shop.Purchase", {})
    assert eventlib.flush(timeout=10) is False

    eventlib.configure(broker_url=None, celery_app=memory_app)

    assert eventlib.sending.flush_spool() == 0
    status = spool_status()
    assert status.count == 0
    [(destination, count)] = status.elsewhere
    assert (destination.broker, destination.queue, count) == (
        f"redis://127.0.0.1:{refusing_port}/0",
        "eventlib",
        1,
    )
    assert take_messages(memory_app) == []


def test_a_forked_child_publishes_with_a_publisher_of_its_own(shop, memory_app):
    """Fork while the parent's publisher thread is in the middle of a
    publish: the child's events are published by the child's own thread,
    and none of the parent's buffered events is published twice."""
    eventlib.configure(celery_app=memory_app)
    inside = threading.Event()
    release = threading.Event()
    publish = sender._publish
    parent = os.getpid()

    def held_publish(*args, **kwargs):
        if os.getpid() == parent:
            inside.set()
            release.wait(10)
        return publish(*args, **kwargs)

    sender._publish = held_publish
    try:
        parent_id = eventlib.log("shop.Purchase", {"who": "parent"})
        assert inside.wait(10)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: reports on the pipe, never returns into pytest
            try:
                os.close(read)
                os.write(write, _log_in_child().encode())
            finally:
                os._exit(0)
        os.close(write)
        report = read_with_deadline(read, pid, timeout=30)
        release.set()
        assert eventlib.flush(timeout=10)
    finally:
        release.set()
        del sender._publish
    assert report.startswith("ok ")
    child_ids = report.split()[1:]
    # The memory broker lives in each process's memory: the parent's queue
    # holds only the parent's event.
    assert events_in(take_messages(memory_app)) == [parent_id]
    assert parent_id not in child_ids


def _log_in_child() -> str:
    try:
        ids = [eventlib.log("shop.Purchase", {"who": "child", "n": n}) for n in range(3)]
        if not eventlib.flush(timeout=10):
            return "the child's flush failed"
        thread = sender._thread
        if thread is None or thread.name != "eventlib-publisher":
            return f"no publisher of the child's own: {thread}"
        app = sender.app()
        found = events_in(take_messages(app))
        if found != ids:
            return f"the child published {found}, expected {ids}"
        return "ok " + " ".join(ids)
    except BaseException as error:  # the parent shows it
        return f"{type(error).__name__}: {error}"


def test_flush_with_nothing_logged_returns_at_once():
    assert eventlib.flush(timeout=0.5)


def test_flush_asks_a_broker_found_down_again_at_once(shop, memory_app, tmp_path):
    eventlib.configure(
        celery_app=memory_app,
        spool_path=str(tmp_path / "spool.sqlite"),
        spool_probe_interval=3600,  # no probe comes by itself during the test
    )
    with broker_down() as back:
        spooled = eventlib.log("shop.Purchase", {"n": 1})
        assert not eventlib.flush(timeout=5)  # the broker is down: spooled
        assert sender.circuit.is_open
        back.set()
        buffered = eventlib.log("shop.Purchase", {"n": 2})

        assert eventlib.flush(timeout=5)
    assert not sender.circuit.is_open
    assert events_in(take_messages(memory_app)) == [spooled, buffered]


def test_a_spool_file_kept_by_sqlite_is_durable_before_log_returns_in_spool_mode(
    shop, refusing_port, tmp_path
):
    spool_path = tmp_path / "spool.sqlite"
    eventlib.configure(
        broker_url=f"redis://127.0.0.1:{refusing_port}/0",
        dispatch="spool",
        spool_path=str(spool_path),
        spool_probe_interval=3600,
    )
    sender.circuit.trip()  # the publisher leaves the spool alone
    sender._next_probe = float("inf")

    event_id = eventlib.log("shop.Purchase", {})

    # Another connection (another process would do the same) sees it.
    other = sqlite3.connect(spool_path)
    try:
        assert other.execute("select event_id from spool").fetchall() == [(event_id,)]
    finally:
        other.close()


def test_a_spool_file_that_cannot_be_read_is_named_in_the_log_and_events_still_go(
    shop, memory_app, tmp_path, caplog
):
    spool_path = tmp_path / "spool.sqlite"
    spool_path.write_bytes(b"not a database " * 300)
    eventlib.configure(celery_app=memory_app, spool_path=str(spool_path))

    event_id = eventlib.log("shop.Purchase", {})

    assert eventlib.flush(timeout=10)
    assert events_in(take_messages(memory_app)) == [event_id]
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [
        f"the spool file {spool_path} cannot be read: file is not a database; "
        "the events in it wait until it can be read"
    ]
