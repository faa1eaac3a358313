"""Messages ``log()`` would never write, published raw to a real broker and
taken by a real ``eventlib worker``; and data ``log()`` refuses with the
broker up as in eager mode.  Redis only: what is tested is eventlib's
reading of a message, not the broker."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis

import eventlib
from eventlib import SerializationError, conf, deadletters
from eventlib.sending import celery_app

from ..waiting import wait_for
from .support import Project

pytestmark = pytest.mark.parametrize("broker", ["redis"], indirect=True)

# An app the workers are not configured with: importing it leaves a file.
SIDEFX_PACKAGE = """
import os
from pathlib import Path

Path(os.environ["EVENTLIB_TEST_RECORDS"] + ".sidefx").write_text(f"imported in {os.getpid()}")
"""
SIDEFX_EVENTS = """
import eventlib


class Boom(eventlib.BaseEvent):
    @eventlib.handler
    def explode(self):
        raise SystemExit("sidefx ran")
"""

DEEP = "[" * 100_000 + "]" * 100_000
ENVELOPE = json.dumps({"id": "boom-1", "created_at": "2026-11-26T09:30:00+00:00", "data": {}})


def send_raw(name: object, payload: object) -> None:
    """Publish the task ``eventlib.process`` with these arguments, as
    anyone who can write to the broker could."""
    queue = conf.get_settings().queue
    celery_app().send_task("eventlib.process", args=[name, payload], queue=queue)


def test_hostile_messages_become_dead_letters_and_the_worker_goes_on(project: Project, isolation):
    isolation.write("sidefx/__init__.py", SIDEFX_PACKAGE)
    isolation.write("sidefx/events.py", SIDEFX_EVENTS)
    marker = Path(f"{project.records.path}.sidefx")
    worker = project.start_worker()
    project.configure_here()

    send_raw("shop.Purchase", 123)
    send_raw("shop.Purchase", None)
    send_raw("shop.Purchase", DEEP)
    send_raw("sidefx.Boom", ENVELOPE)
    event_id = eventlib.log("shop.Purchase", {"sku": "after-the-hostile-ones"})

    def dead_letters() -> list[deadletters.DeadLetter]:
        found = deadletters.list_dead_letters()
        return found if len(found) == 5 else []

    letters = wait_for(
        dead_letters, 60, "four dead letters of whole events and one of the failing handler"
    )
    whole = {(d.event_name, d.payload[:20]): d for d in letters if d.handler is None}
    [failed] = [letter for letter in letters if letter.handler is not None]
    not_text = "DeserializationError: invalid JSON payload: expected JSON text (str or bytes), not"
    assert whole[("shop.Purchase", "123")].reason == f"{not_text} int (123)"
    assert whole[("shop.Purchase", "None")].reason == f"{not_text} NoneType (None)"
    assert whole[("shop.Purchase", DEEP[:20])].reason == (
        "DeserializationError: invalid JSON payload: data nested more than 100 levels deep "
        "(eventlib.serialization.MAX_DEPTH)"
    )
    assert len(whole[("shop.Purchase", DEEP[:20])].payload) == len(DEEP)
    boom = whole[("sidefx.Boom", ENVELOPE[:20])]
    assert (boom.event_id, boom.payload, boom.handler) == ("boom-1", ENVELOPE, None)
    assert boom.reason == (
        "EventNotFound: There is no event named Boom in the sidefx app: "
        "sidefx is not among the configured apps"
    )
    assert len(whole) == 4

    # The worker lives on and runs the next event; it never imported sidefx.
    wait_for(lambda: project.records.count("audit") == 1, 60, "the valid event's handlers")
    assert project.records.query("select event_id from runs where handler = 'count_sale'") == [
        (event_id,)
    ]
    assert (failed.event_id, failed.handler) == (event_id, "shop.events.Purchase.notify_warehouse")
    assert not marker.exists()
    assert worker.process.poll() is None
    log = worker.log
    for crash in ("RecursionError", "AttributeError", "Unrecoverable error"):
        assert crash not in log


def test_log_refuses_what_it_cannot_spool_with_the_broker_up_as_in_eager_mode(
    project: Project, broker: str
):
    project.configure_here()
    queue = conf.get_settings().queue
    client = redis.Redis.from_url(broker)
    deep: dict[str, object] = {}
    for _ in range(500):
        deep = {"a": deep}
    refused = [{"sku": "\ud800"}, {"sku": "x", "\udc80": 1}, {"sku": "x", "deep": deep}]

    first_id = eventlib.log("shop.Purchase", {"sku": "published"})
    assert eventlib.flush(timeout=10)
    assert client.llen(queue) == 1  # the broker is up and takes events
    published = []
    for data in refused:
        with pytest.raises(SerializationError) as raised:
            eventlib.log("shop.Purchase", data)
        published.append((str(raised.value), raised.value.__notes__))
    assert eventlib.flush(timeout=10)
    assert client.llen(queue) == 1

    eventlib.configure(always_eager=True)
    eager = []
    for data in refused:
        with pytest.raises(SerializationError) as raised:
            eventlib.log("shop.Purchase", data)
        eager.append((str(raised.value), raised.value.__notes__))
    assert published == eager
    assert [message.split(": ", 1)[1] for message, _ in eager] == [
        "cannot serialize a string holding a lone surrogate ('\\ud800' at index 0), "
        "which has no UTF-8 form",
        "cannot serialize the key '\\udc80' holding a lone surrogate ('\\udc80' at index 0), "
        "which has no UTF-8 form",
        "cannot serialize data nested more than 100 levels deep (eventlib.serialization.MAX_DEPTH)",
    ]

    # The worker finds the one event that was published, and nothing else.
    eventlib.configure(always_eager=False)
    project.start_worker()
    wait_for(lambda: project.records.count("audit") == 1, 60, "the published event's handlers")
    assert client.llen(queue) == 0
    assert project.records.query("select event_id from runs where handler = 'count_sale'") == [
        (first_id,)
    ]
    client.close()
