"""The spool file (eventlib/spool.py)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time

import pytest

from eventlib import SpoolError
from eventlib.spool import LEASE_SECONDS, Destination, Spool, SpooledEvent, SpoolStatus

HERE = Destination("redis://127.0.0.1:6379/0", "eventlib")


@pytest.fixture
def spool(tmp_path):
    return Spool(tmp_path / "spool.sqlite", HERE)


def fill(spool: Spool, count: int) -> list[str]:
    ids = [f"id-{n}" for n in range(count)]
    for event_id in ids:
        spool.put("shop.Purchase", event_id, f'{{"id": "{event_id}"}}')
    return ids


def test_a_spool_that_was_never_written_is_empty_and_not_created(spool):
    assert spool.status().count == 0
    assert spool.status().oldest_age is None
    assert spool.flush(lambda events: None) == 0
    assert not spool.path.exists()


def test_status_counts_the_events_and_ages_the_oldest(spool):
    fill(spool, 3)

    status = spool.status()

    assert status.count == 3
    assert 0 <= status.oldest_age < 60


def test_flush_publishes_in_the_order_spooled_and_empties_the_spool(spool):
    ids = fill(spool, 250)  # more than one batch
    published: list[SpooledEvent] = []
    batches: list[int] = []

    def publish(batch: list[SpooledEvent]) -> None:
        batches.append(len(batch))
        published.extend(batch)

    assert spool.flush(publish) == 250

    assert batches == [100, 100, 50]
    assert [event.event_id for event in published] == ids
    assert {event.name for event in published} == {"shop.Purchase"}
    assert published[0].payload == '{"id": "id-0"}'
    assert spool.status().count == 0


def test_a_failed_publish_keeps_that_batch_and_the_later_ones(spool):
    ids = fill(spool, 150)
    published = []

    def publish(batch: list[SpooledEvent]) -> None:
        if published:
            raise ConnectionError("broker gone again")
        published.extend(event.event_id for event in batch)

    with pytest.raises(ConnectionError):
        spool.flush(publish)

    assert published == ids[:100]
    assert spool.status().count == 50
    # Released at once: the next flush starts where this one stopped.
    assert [e.event_id for e in _flushed(spool)] == ids[100:]


def _flushed(spool: Spool) -> list[SpooledEvent]:
    published: list[SpooledEvent] = []
    spool.flush(published.extend)
    return published


def test_one_flusher_at_a_time(spool):
    fill(spool, 3)
    inside = threading.Event()
    release = threading.Event()
    first: list[str] = []

    def slow_publish(batch: list[SpooledEvent]) -> None:
        inside.set()
        release.wait(10)
        first.extend(event.event_id for event in batch)

    thread = threading.Thread(target=spool.flush, args=(slow_publish,))
    thread.start()
    try:
        assert inside.wait(10)
        # The batch is held by the other flusher: this one publishes nothing.
        assert Spool(spool.path, HERE).flush(lambda batch: pytest.fail("published twice")) == 0
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


def test_an_unwritable_spool_raises_a_spool_error_naming_the_file(tmp_path):
    path = tmp_path / "missing" / "spool.sqlite"
    spool = Spool(path, HERE)

    with pytest.raises(SpoolError) as raised:
        spool.put("shop.Purchase", "id", "{}")

    assert str(raised.value) == (
        f"the spool file {path} cannot keep events: unable to open database file"
    )
    assert isinstance(raised.value.__cause__, sqlite3.OperationalError)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"this is not a database, only some text" * 100, "file is not a database"),
        (b"SQLite format 3\x00" + b"\x00" * 84, "database disk image is malformed"),
    ],
    ids=["garbage", "truncated"],
)
def test_a_spool_file_that_is_not_a_database_is_named_in_the_error(tmp_path, content, reason):
    path = tmp_path / "spool.sqlite"
    path.write_bytes(content)
    spool = Spool(path, HERE)

    for operation in (spool.status, lambda: spool.flush(lambda batch: None)):
        with pytest.raises(SpoolError, match=f"^the spool file {path} cannot be read: "):
            operation()


def test_a_full_disk_reports_the_real_error_not_a_failed_rollback(tmp_path):
    path = tmp_path / "spool.sqlite"
    spool = Spool(path, HERE)
    fill(spool, 1)
    connection = spool._connection()
    page_count = connection.execute("pragma page_count").fetchone()[0]
    connection.execute(f"pragma max_page_count = {page_count}")  # the disk is full

    with pytest.raises(SpoolError) as raised:
        spool.put_many([("shop.Purchase", f"id-{n}", "x" * 10_000) for n in range(50)])

    assert "database or disk is full" in str(raised.value)
    assert "rollback" not in str(raised.value)
    assert spool.status().count == 1  # nothing half-written


def test_each_destination_flushes_only_its_own_events(tmp_path):
    path = tmp_path / "spool.sqlite"
    redis = Spool(path, HERE)
    other_queue = Spool(path, Destination(HERE.broker, "refunds"))
    rabbit = Spool(path, Destination("amqp://guest:**@127.0.0.1:5672//", "eventlib"))
    fill(redis, 2)
    other_queue.put("shop.Refund", "refund-0", "{}")
    rabbit.put("shop.Refund", "rabbit-0", "{}")

    status = redis.status()
    assert status.count == 2
    assert dict(status.elsewhere) == {other_queue.destination: 1, rabbit.destination: 1}
    assert [event.event_id for event in _flushed(redis)] == ["id-0", "id-1"]
    assert [event.event_id for event in _flushed(rabbit)] == ["rabbit-0"]
    assert redis.status() == SpoolStatus(0, None, None, ((other_queue.destination, 1),))


def test_a_spool_file_of_the_first_release_is_upgraded_and_its_events_flushed(tmp_path):
    path = tmp_path / "spool.sqlite"
    old = sqlite3.connect(path)
    old.execute(
        "create table spool (seq integer primary key autoincrement, name text not null, "
        "event_id text not null, payload text not null, spooled_at real not null, "
        "claimed_until real)"
    )
    old.execute(
        "insert into spool (name, event_id, payload, spooled_at) values (?, ?, ?, ?)",
        ("shop.Purchase", "old-0", "{}", time.time()),
    )
    old.commit()
    old.close()
    spool = Spool(path, HERE)
    spool.put("shop.Purchase", "new-0", "{}")

    assert spool.status().count == 2
    assert [event.event_id for event in _flushed(spool)] == ["old-0", "new-0"]


def test_status_tells_until_when_a_flusher_holds_the_events(spool):
    fill(spool, 3)
    inside = threading.Event()
    release = threading.Event()

    def slow_publish(batch: list[SpooledEvent]) -> None:
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


def test_the_claim_of_a_process_that_is_gone_is_taken_over_at_once(spool):
    ids = fill(spool, 3)
    pid = os.fork()
    if pid == 0:  # the child claims the batch, then dies in the middle of its flush
        try:
            Spool(spool.path, HERE).flush(lambda batch: os._exit(0))
        finally:
            os._exit(1)
    os.waitpid(pid, 0)

    assert spool.status().held_until is None  # nobody alive holds it
    assert [event.event_id for event in _flushed(spool)] == ids


def test_the_claim_of_another_host_holds_until_its_lease_ends(spool):
    fill(spool, 2)
    connection = sqlite3.connect(spool.path)
    with connection:
        connection.execute(
            "update spool set claimed_until = ?, claimed_by = 'another-host:1'",
            (time.time() + 30,),
        )
    connection.close()

    assert spool.status().held_until is not None
    assert _flushed(spool) == []


def test_a_batch_taken_over_is_not_removed_by_its_first_publisher(spool):
    fill(spool, 3)
    published: list[str] = []

    def publish(batch: list[SpooledEvent]) -> None:
        published.extend(event.event_id for event in batch)
        if len(published) == 3:
            # While this publisher is slow, its lease ends: another takes the
            # batch over, publishes and removes it, and new events come,
            # numbered as the removed ones were.
            with sqlite3.connect(spool.path) as other:
                other.execute("delete from spool")
            assert [spool.put("shop.Purchase", f"new-{n}", "{}") for n in range(2)] == [1, 2]

    spool.flush(publish)

    assert published == ["id-0", "id-1", "id-2", "new-0", "new-1"]
    assert spool.status().count == 0


def test_a_new_spool_file_numbers_events_without_autoincrement(spool):
    fill(spool, 1)
    with sqlite3.connect(spool.path) as connection:
        [(schema,)] = connection.execute("select sql from sqlite_master where name = 'spool'")
    assert "autoincrement" not in schema.lower()
