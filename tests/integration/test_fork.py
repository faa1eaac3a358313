"""``log()`` in a process forked after it published (gunicorn's
``--preload``, uWSGI without ``lazy-apps``): the child publishes through
connections and a publisher thread of its own, so neither process waits for
the other's answers and every event reaches the broker, once."""

from __future__ import annotations

import os

import pytest

import eventlib
from eventlib import metrics
from eventlib.sending import spool_status

from ..forking import read_with_deadline
from .support import take_event_ids

EACH = 20


@pytest.mark.parametrize("mode", ["background", "direct"])
@pytest.mark.parametrize("broker", ["amqp", "redis"], indirect=True)
def test_a_forked_child_and_its_parent_both_publish_after_the_fork(isolation, broker, queue, mode):
    isolation.write(
        "shop/events.py", "import eventlib\n\nclass Purchase(eventlib.BaseEvent):\n    pass\n"
    )
    eventlib.configure(
        apps=["shop"], broker_url=broker, queue=queue, broker_timeout=2, dispatch=mode
    )
    first = eventlib.log("shop.Purchase", {"sku": "before the fork"})
    assert eventlib.flush(timeout=10)  # the parent's connection is open

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: reports on the pipe, never returns into pytest
        try:
            os.close(read)
            ids = [eventlib.log("shop.Purchase", {"sku": f"child-{n}"}) for n in range(EACH)]
            flushed = eventlib.flush(timeout=30)  # os._exit() skips atexit
            spooled = metrics.snapshot()["spooled"]  # the child's own counters
            os.write(write, f"{flushed} {spooled} {' '.join(ids)}".encode())
        finally:
            os._exit(0)
    os.close(write)
    parent_ids = [eventlib.log("shop.Purchase", {"sku": f"parent-{n}"}) for n in range(EACH)]
    report = read_with_deadline(read, pid, timeout=60)
    assert eventlib.flush(timeout=30)

    flushed, spooled, *child_ids = report.split()
    assert (flushed, spooled) == ("True", "0"), "the child published its events, spooled none"
    assert spool_status().count == 0
    expected = [first, *parent_ids, *child_ids]
    delivered = take_event_ids(broker, queue, len(expected), timeout=30)
    assert sorted(delivered) == sorted(expected)  # each once
