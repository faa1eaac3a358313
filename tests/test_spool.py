"""The spool, the circuit and the flusher (eventlib/spool.py)."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time

import pytest

from eventlib.spool import LEASE_SECONDS, Circuit, Flusher, Spool, SpooledEvent, SpoolStatus

from .forking import read_with_deadline


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


def test_status_tells_until_when_a_flusher_holds_the_events(spool):
    fill(spool, 3)
    inside = threading.Event()
    release = threading.Event()

    def slow_publish(event: SpooledEvent) -> None:
        inside.set()
        release.wait(10)

    before = time.time()
    thread = threading.Thread(target=spool.flush, args=(slow_publish,))
    thread.start()
    try:
        assert inside.wait(10)
        held = spool.status()
    finally:
        release.set()
        thread.join(10)

    assert held.count == 3
    assert before + LEASE_SECONDS <= held.held_until <= time.time() + LEASE_SECONDS
    assert spool.status() == SpoolStatus(0, None, None)


def test_an_expired_lease_is_not_reported_and_the_events_can_be_flushed(spool):
    ids = fill(spool, 2)
    connection = sqlite3.connect(spool.path)
    with connection:
        connection.execute("update spool set claimed_until = ?", (time.time() - 1,))
    connection.close()

    assert spool.status().held_until is None
    assert [event.event_id for event in _flushed(spool)] == ids


def test_the_flusher_logs_which_event_the_broker_refused_and_how_many_it_published(spool, caplog):
    ids = fill(spool, 3)
    circuit = Circuit()
    circuit.trip()
    broker_up = threading.Event()

    def publish(event: SpooledEvent) -> None:
        if not broker_up.is_set():
            raise ConnectionError("still down")

    caplog.set_level(logging.INFO, logger="eventlib")
    flusher = Flusher()
    flusher.ensure_running(spool, publish, circuit, interval=0.02)
    try:
        wait_until(lambda: _records(caplog, "The broker is still unreachable"))
        broker_up.set()
        wait_until(lambda: not circuit.is_open)
    finally:
        flusher.stop()

    refused = _records(caplog, "The broker is still unreachable")[0]
    assert refused.getMessage() == (
        "The broker is still unreachable (still down); events stay spooled"
    )
    assert (refused.eventlib_event, refused.eventlib_event_id, refused.eventlib_handler) == (
        "shop.Purchase",
        ids[0],
        None,
    )
    [published] = _records(caplog, "Published")
    assert published.levelno == logging.WARNING
    assert published.getMessage() == "Published 3 spooled events"
    assert (published.eventlib_spool, published.eventlib_published) == (str(spool.path), 3)
    assert (published.eventlib_event, published.eventlib_event_id) == (None, None)
    assert published.eventlib_handler is None


def _records(caplog, start: str) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == "eventlib" and record.getMessage().startswith(start)
    ]


class _HeldStatusSpool(Spool):
    """A spool whose status(), in the process that made it, waits until the
    test releases it when ``hold`` is set: the flusher calls it holding its
    lock."""

    def __init__(self, path, *, hold: bool) -> None:
        super().__init__(path)
        self.owner = os.getpid()
        self.hold = hold
        self.inside = threading.Event()
        self.release = threading.Event()

    def status(self) -> SpoolStatus:
        if self.hold and os.getpid() == self.owner:
            self.inside.set()
            assert self.release.wait(30)
        return super().status()


@pytest.mark.parametrize("moment", ["waiting-for-the-broker", "holding-its-lock"])
def test_a_forked_child_flushes_with_a_flusher_of_its_own(tmp_path, moment):
    """Fork while the parent's flusher thread runs: waiting for a broker that
    does not answer, or in the middle of its check of the spool, holding its
    lock.  (Either way the thread is in Python code, not inside SQLite, whose
    own mutexes a fork could leave held.)  The child spools events; its own
    flusher thread, not the parent's, publishes them."""
    waiting = moment == "waiting-for-the-broker"
    spool = _HeldStatusSpool(tmp_path / "spool.sqlite", hold=not waiting)
    circuit = Circuit()
    circuit.trip()
    trying = threading.Event()
    broker_gives_up = threading.Event()
    parent_published: list[str] = []

    def parent_publish(event: SpooledEvent) -> None:
        if waiting:
            trying.set()
            broker_gives_up.wait(30)
            raise ConnectionError("no answer")
        parent_published.append(event.event_id)

    fill(spool, 1)
    flusher = Flusher()
    flusher.ensure_running(spool, parent_publish, circuit, interval=0.02)
    try:
        if waiting:
            assert trying.wait(10)
        else:
            assert spool.inside.wait(10)
            assert flusher._lock.locked()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: reports on the pipe, never returns into pytest
            try:
                os.close(read)
                os.write(write, _flush_in_child(spool, flusher, waiting).encode())
            finally:
                os._exit(0)
        os.close(write)
        # The parent's thread lets go of the spool (of its lease on id-0).
        broker_gives_up.set()
        spool.release.set()
        flusher.stop()
        report = read_with_deadline(read, pid, timeout=30)
    finally:
        broker_gives_up.set()
        spool.release.set()
        flusher.stop()

    assert report == "ok"
    assert parent_published == ([] if waiting else ["id-0"])


def _flush_in_child(spool: Spool, flusher: Flusher, waiting: bool) -> str:
    """In the forked child: spool two events, let the inherited flusher
    publish them (and the parent's, when it could not) with the child's own
    thread, and say what went wrong."""
    try:
        ids = ["child-0", "child-1"]
        for event_id in ids:
            spool.put("shop.Purchase", event_id, "{}")
        published: list[tuple[str, str, int]] = []

        def publish(event: SpooledEvent) -> None:
            published.append((event.event_id, threading.current_thread().name, os.getpid()))

        circuit = Circuit()
        circuit.trip()
        flusher.ensure_running(spool, publish, circuit, interval=0.02)
        wait_until(lambda: not circuit.is_open, timeout=20)
        expected = (["id-0"] if waiting else []) + ids
        if [event_id for event_id, _, _ in published] != expected:
            return f"published {published}, expected {expected}"
        if {(name, pid) for _, name, pid in published} != {("eventlib-spool-flusher", os.getpid())}:
            return f"published by {published}"
        if Spool(spool.path).status().count:
            return "events left in the spool"
        return "ok"
    except BaseException as error:  # the parent shows it
        return f"{type(error).__name__}: {error}"
