"""``log()`` in a process forked after it published (gunicorn's
``--preload``, uWSGI without ``lazy-apps``): the child publishes through
connections of its own, so neither process waits for the other's answers
and every event reaches the broker."""

from __future__ import annotations

import os

import pytest
from kombu import Connection

import eventlib
from eventlib import metrics
from eventlib.dispatch import spool_status

from ..forking import read_with_deadline
from .support import wait_for

EACH = 20


def queued(broker: str, queue: str) -> int:
    with Connection(broker) as connection:
        return connection.SimpleQueue(queue).qsize()


@pytest.mark.parametrize("broker", ["amqp", "redis"], indirect=True)
def test_a_forked_child_and_its_parent_both_publish_after_the_fork(isolation, broker, queue):
    isolation.write(
        "shop/events.py", "import eventlib\n\nclass Purchase(eventlib.BaseEvent):\n    pass\n"
    )
    eventlib.configure(apps=["shop"], broker_url=broker, queue=queue, broker_timeout=2)
    eventlib.log("shop.Purchase", {"sku": "before the fork"})  # opens the parent's connection

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: reports on the pipe, never returns into pytest
        try:
            os.close(read)
            ids = [eventlib.log("shop.Purchase", {"sku": f"child-{n}"}) for n in range(EACH)]
            spooled = metrics.snapshot()["spooled"]  # the child's own counters
            os.write(write, f"{len(set(ids))} {spooled}".encode())
        finally:
            os._exit(0)
    os.close(write)
    parent_ids = [eventlib.log("shop.Purchase", {"sku": f"parent-{n}"}) for n in range(EACH)]
    report = read_with_deadline(read, pid, timeout=60)

    assert report == f"{EACH} 0", "the child logged 20 events and spooled none"
    assert len(set(parent_ids)) == EACH
    assert spool_status().count == 0
    wait_for(lambda: queued(broker, queue) == 1 + 2 * EACH, 30, "every event in the queue")
