"""The spool, the circuit and the flusher (eventlib/spool.py)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time

import pytest

from eventlib.spool import Circuit, Flusher, Spool, SpooledEvent


@pytest.fixture
def spool(tmp_path):
    return Spool(tmp_path / "spool.sqlite")


def wait_until(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def fill(spool: Spool, count: int) -> list[str]:
    ids = [f"id-{n}" for n in range(count)]
    for event_id in ids:
        spool.put("shop.Purchase", event_id, f'{{"id": "{event_id}"}}')
    return ids


def test_a_spool_that_was_never_written_is_empty_and_not_created(spool):
    assert spool.status().count == 0
    assert spool.status().oldest_age is None
    assert spool.flush(lambda event: None) == 0
    assert not spool.path.exists()


def test_status_counts_the_events_and_ages_the_oldest(spool):
    fill(spool, 3)

    status = spool.status()

    assert status.count == 3
    assert 0 <= status.oldest_age < 60


def test_flush_publishes_in_the_order_spooled_and_empties_the_spool(spool):
    ids = fill(spool, 250)  # more than one batch
    published: list[SpooledEvent] = []

    assert spool.flush(published.append) == 250

    assert [event.event_id for event in published] == ids
    assert {event.name for event in published} == {"shop.Purchase"}
    assert published[0].payload == '{"id": "id-0"}'
    assert spool.status().count == 0


def test_a_failed_publish_keeps_that_event_and_the_later_ones(spool):
    ids = fill(spool, 5)
    published = []

    def publish(event: SpooledEvent) -> None:
        if event.event_id == "id-3":
            raise ConnectionError("broker gone again")
        published.append(event.event_id)

    with pytest.raises(ConnectionError):
        spool.flush(publish)

    assert published == ids[:3]
    assert spool.status().count == 2
    # Released at once: the next flush starts where this one stopped.
    assert [e.event_id for e in _flushed(spool)] == ids[3:]


def _flushed(spool: Spool) -> list[SpooledEvent]:
    published: list[SpooledEvent] = []
    spool.flush(published.append)
    return published


def test_one_flusher_at_a_time(spool):
    fill(spool, 3)
    inside = threading.Event()
    release = threading.Event()
    first: list[str] = []

    def slow_publish(event: SpooledEvent) -> None:
        inside.set()
        release.wait(10)
        first.append(event.event_id)

    thread = threading.Thread(target=spool.flush, args=(slow_publish,))
    thread.start()
    try:
        assert inside.wait(10)
        # The batch is held by the other flusher: this one publishes nothing.
        assert Spool(spool.path).flush(lambda event: pytest.fail("published twice")) == 0
    finally:
        release.set()
        thread.join(10)
    assert first == ["id-0", "id-1", "id-2"]


def test_many_threads_can_spool_at_once(spool):
    def put_some(number: int) -> None:
        for n in range(50):
            spool.put("shop.Purchase", f"{number}-{n}", "{}")

    threads = [threading.Thread(target=put_some, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert spool.status().count == 400


def test_an_unwritable_spool_raises_sqlite_errors(tmp_path):
    spool = Spool(tmp_path / "missing" / "spool.sqlite")

    with pytest.raises(sqlite3.OperationalError):
        spool.put("shop.Purchase", "id", "{}")


def test_the_circuit_is_open_only_in_the_process_that_tripped_it():
    circuit = Circuit()
    assert not circuit.is_open

    circuit.trip()
    assert circuit.is_open

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its parent's circuit does not apply to it
        os.write(write, b"open" if circuit.is_open else b"closed")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 16) == b"closed"
    os.close(read)
    os.close(write)

    circuit.close()
    assert not circuit.is_open


def test_the_flusher_publishes_once_the_broker_answers_then_closes_the_circuit(spool):
    fill(spool, 4)
    circuit = Circuit()
    circuit.trip()
    broker_up = threading.Event()
    failed_tries = []
    published: list[str] = []

    def publish(event: SpooledEvent) -> None:
        if not broker_up.is_set():
            failed_tries.append(event.event_id)
            raise ConnectionError("still down")
        published.append(event.event_id)

    flusher = Flusher()
    flusher.ensure_running(spool, publish, circuit, interval=0.02)
    try:
        wait_until(lambda: len(failed_tries) >= 3)
        assert published == []
        assert set(failed_tries) == {"id-0"}  # each try stops at the oldest event
        assert circuit.is_open
        broker_up.set()
        wait_until(lambda: not circuit.is_open)
    finally:
        flusher.stop()
    assert published == ["id-0", "id-1", "id-2", "id-3"]
    assert not circuit.is_open
    assert spool.status().count == 0


def test_stopping_the_flusher_leaves_the_events_spooled(spool):
    fill(spool, 2)
    circuit = Circuit()
    circuit.trip()
    flusher = Flusher()
    flusher.ensure_running(spool, lambda event: None, circuit, interval=3600)

    flusher.stop()

    assert spool.status().count == 2
    assert circuit.is_open
