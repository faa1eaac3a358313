"""What eventlib tells about what it did: its counters (eventlib/metrics.py)
as ``log()`` and the spool update them, and the ``extra`` fields of the log
records written on the way (event name, id, handler)."""

from __future__ import annotations

import logging
import sqlite3

import pytest

import eventlib
from eventlib import metrics, sending
from eventlib.http import application
from eventlib.sending import flush_spool, spool_status
from eventlib.serialization import deserialize_event

from .forking import fork_while_held
from .http_server import serve

#: Nothing listens on port 1: the connection is refused at once.
REFUSED_BROKER = "amqp://guest:guest@127.0.0.1:1//"

SHOP_EVENTS = """
    from eventlib import BaseEvent


    class Purchase(BaseEvent):
        public = True
"""


@pytest.fixture
def shop(shop, tmp_path):
    """The app ``shop``, its broker refusing connections, its spool in
    ``tmp_path``, no flusher thread racing the test (it would try again in
    an hour); every counter is at zero (as in every test)."""
    eventlib.configure(
        apps=["shop"],
        broker_url=REFUSED_BROKER,
        broker_timeout=0.5,
        spool_path=str(tmp_path / "spool.sqlite"),
        spool_probe_interval=3600,
        dispatch="direct",
    )
    return shop


def counters(*names: str) -> dict[str, int]:
    snapshot = metrics.snapshot()
    return {name: snapshot[name] for name in names}


SPOOL_COUNTERS = ("logged", "spooled", "published_from_spool")


def test_logged_spooled_and_published_from_spool_count_an_outage(shop, memory_app):
    ids = [eventlib.log("shop.Purchase", {"n": n}) for n in range(3)]

    assert counters(*SPOOL_COUNTERS) == {"logged": 3, "spooled": 3, "published_from_spool": 0}
    assert spool_status().count == 3

    # The broker is back (kombu's in-memory one, shared by this process,
    # stands for it: the spooled events are told so).
    eventlib.configure(broker_url="memory://")
    here = sending.sender.spool()
    with sqlite3.connect(here.path) as moved:
        moved.execute("update spool set broker = ?", (here.destination.broker,))
    assert flush_spool() == 3

    assert counters(*SPOOL_COUNTERS) == {"logged": 3, "spooled": 3, "published_from_spool": 3}
    assert spool_status().count == 0

    # Sent straight to the broker now: logged, neither spooled nor re-published.
    ids.append(eventlib.log("shop.Purchase", {"n": 3}))

    assert counters(*SPOOL_COUNTERS) == {"logged": 4, "spooled": 3, "published_from_spool": 3}
    assert queued_task_ids(memory_app) == ids


def queued_task_ids(app) -> list[str]:
    """The ids of the events waiting in the ``eventlib`` queue, alone or in
    batches, in order."""
    with app.connection_for_write() as connection:
        queue = connection.SimpleQueue("eventlib")
        try:
            found = []
            while queue.qsize():
                message = queue.get(timeout=1)
                if message.headers["task"] == "eventlib.process_batch":
                    batch = message.decode()[0][0]
                    found.extend(deserialize_event(payload).id for _, payload in batch)
                else:
                    found.append(message.headers["id"])
                message.ack()
            return found
        finally:
            queue.close()


def test_the_counters_of_a_forked_child_start_from_zero_with_a_free_lock(shop):
    metrics.increment("logged", 2)

    def in_the_child() -> str:
        metrics.increment("spooled")  # blocks forever on a lock left held
        snapshot = metrics.snapshot()
        return f"{snapshot['logged']} {snapshot['spooled']}"

    # Fork while another thread holds the counters' lock.
    report = fork_while_held(metrics._counters._lock, in_the_child)

    assert report == "0 1"
    assert counters("logged", "spooled") == {"logged": 2, "spooled": 0}


def test_the_spooling_warning_names_the_event_in_its_extra_fields(shop, caplog):
    caplog.set_level(logging.INFO, logger="eventlib")

    first = eventlib.log("shop.Purchase", {"n": 1})
    eventlib.log("shop.Purchase", {"n": 2})  # the circuit is open: spooled without a word

    [record] = [r for r in caplog.records if r.name == "eventlib"]
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith(
        "The broker amqp://guest:**@127.0.0.1:1// cannot take events"
    )
    assert (record.eventlib_event, record.eventlib_event_id) == ("shop.Purchase", first)


def test_the_http_endpoint_names_the_event_it_could_not_send(shop, caplog, tmp_path):
    eventlib.configure(spool_path=str(tmp_path / "missing" / "spool.sqlite"))

    with serve(application) as server:
        reply = server.request(
            "POST",
            "/event/log?__event__=shop.Purchase",
            headers={"Origin": server.origin},
        )

    assert reply.status == 503
    [record] = [r for r in caplog.records if r.name == "eventlib" and r.levelno == logging.ERROR]
    assert record.getMessage() == "The HTTP endpoint could not send the event shop.Purchase"
    assert (record.eventlib_event, record.eventlib_event_id, record.eventlib_handler) == (
        "shop.Purchase",
        None,
        None,
    )
