"""What Celery's monitoring (Flower, ``celery events``, the worker's log)
shows of eventlib's tasks, with real ``eventlib worker`` processes started
with task events (``-E``) and a real event receiver, on Redis and RabbitMQ.

Each message carries the event's name where Celery shows a task name (its
``shadow`` name), a batch the names it holds; a task ends ``SUCCESS`` when
every handler succeeded, ``RETRY`` when every failed handler runs again,
``FAILURE`` (``eventlib.ProcessingFailed``) when a failure became a dead
letter; its message is acknowledged all the same, and nothing runs twice.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from amqp.exceptions import ChannelError
from celery import Celery
from celery.events.receiver import EventReceiver
from kombu import Connection

import eventlib
from eventlib import deadletters
from eventlib.discovery import find_event
from eventlib.sending import celery_app, sender
from eventlib.serialization import serialize_event

from .support import Project, Worker, wait_for

pytestmark = pytest.mark.parametrize("broker", ["amqp", "redis"], indirect=True)

MONITOR_EVENTS = """
import os
import sqlite3

import eventlib


def record(event, handler):
    db = sqlite3.connect(os.environ["EVENTLIB_TEST_RECORDS"], timeout=60)
    try:
        with db:
            db.execute("insert into runs values (?, ?, 0, 0, 0)", (event.id, handler))
        return db.execute(
            "select count(*) from runs where event_id = ? and handler = ?", (event.id, handler)
        ).fetchone()[0]
    finally:
        db.close()


class Purchase(eventlib.BaseEvent):
    @eventlib.handler
    def count(self):
        record(self, "count")


class Refund(eventlib.BaseEvent):
    @eventlib.handler
    def ledger(self):
        record(self, "ledger")

    @eventlib.handler
    def refuse(self):
        record(self, "refuse")
        raise RuntimeError(f"card expired for {self.id}")


class Signup(eventlib.BaseEvent):
    # Fails once, and its retry succeeds.
    @eventlib.handler(retries=1, backoff=0.1)
    def welcome(self):
        if record(self, "welcome") == 1:
            raise ConnectionError("mail server down")


class Chargeback(eventlib.BaseEvent):
    # Fails, and its retry fails again: a dead letter.
    @eventlib.handler(retries=1, backoff=0.1)
    def dispute(self):
        record(self, "dispute")
        raise RuntimeError(f"bank unreachable for {self.id}")
"""


class TaskEvents(EventReceiver):
    """Celery's task events, as Flower receives them, kept in a list; ready
    once it consumes."""

    def __init__(self, connection: Connection, app: Celery) -> None:
        super().__init__(connection, handlers={"*": self.keep}, routing_key="task.#", app=app)
        self.received: list[dict[str, Any]] = []
        self.ready = threading.Event()

    def keep(self, event: dict[str, Any]) -> None:
        self.received.append(event)

    def on_consume_ready(self, *args: Any, **kwargs: Any) -> None:
        self.ready.set()

    def of(self, name: str) -> list[dict[str, Any]]:
        """The events of the worker ``name`` (``name@host``)."""
        return [e for e in list(self.received) if e.get("hostname", "").startswith(f"{name}@")]


@pytest.fixture
def task_events(broker: str) -> Iterator[TaskEvents]:
    app = Celery("monitor", broker=broker, set_as_current=False)
    with Connection(broker) as connection:
        receiver = TaskEvents(connection, app)
        thread = threading.Thread(target=receiver.capture, kwargs={"wakeup": False}, daemon=True)
        thread.start()
        assert receiver.ready.wait(30), "the event receiver did not start"
        yield receiver
        receiver.should_stop = True
        thread.join(10)
    app.close()


def outcomes(events: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per task id, each of its events by type (``task-received``, ...)."""
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for event in events:
        found.setdefault(event["uuid"], {})[event["type"]] = event
    return found


def publish_batch(events: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Publish ``events`` in one message, as the publisher thread does under
    load, and return their ids."""
    outgoing = []
    for name, data in events:
        event = find_event(name)(data)
        outgoing.append((name, event.id, serialize_event(event)))
    assert sender._publish(celery_app(), outgoing)
    return [event_id for _, event_id, _ in outgoing]


def test_flower_sees_each_event_by_name_and_every_failure_as_one(
    project: Project, isolation, task_events: TaskEvents
):
    isolation.write("monitor/events.py", MONITOR_EVENTS)
    project.settings["EVENTLIB_APPS"] = "monitor"
    hostname = f"flower-{uuid.uuid4().hex[:8]}"
    worker = Worker(
        project.environment(),
        project.tmp_path / "worker.log",
        hostname,
        command=("eventlib", "worker", "-E"),
    )
    project.workers.append(worker)
    worker.wait_ready()
    project.configure_here()
    eventlib.configure(apps=["monitor"], dispatch="direct")

    purchase = eventlib.log("monitor.Purchase")
    refund = eventlib.log("monitor.Refund")
    signup = eventlib.log("monitor.Signup")
    chargeback = eventlib.log("monitor.Chargeback")
    batch = publish_batch([("monitor.Purchase", {})] * 10 + [("monitor.Refund", {})] * 5)

    def settled() -> dict[str, dict[str, dict[str, Any]]]:
        """Every task ended: the four events and the batch, two of them
        retried, and the two retries."""
        tasks = outcomes(task_events.of(hostname))
        ended = {"task-succeeded", "task-failed", "task-retried"}
        return tasks if sum(bool(ended & set(t)) for t in tasks.values()) == 7 else {}

    tasks = wait_for(settled, 90, f"every task to end; the worker.s log:\n{worker.log}")
    worker.stop()

    names = {task_id: events["task-received"]["name"] for task_id, events in tasks.items()}
    assert names[purchase] == "monitor.Purchase"
    assert names[refund] == "monitor.Refund"
    assert names[signup] == "monitor.Signup"
    assert names[chargeback] == "monitor.Chargeback"
    [batch_task] = [task for task, name in names.items() if name.startswith("eventlib batch")]
    assert names[batch_task] == "eventlib batch: monitor.Purchase x10, monitor.Refund x5"

    # Every handler succeeded: SUCCESS.
    assert set(tasks[purchase]) == {"task-received", "task-started", "task-succeeded"}
    # A handler failed for good: FAILURE, saying which and why.
    assert "task-succeeded" not in tasks[refund]
    assert tasks[refund]["task-failed"]["exception"] == repr(
        eventlib.ProcessingFailed(
            f"monitor.Refund (id {refund}): 1 of 2 handlers failed: "
            f"monitor.events.Refund.refuse (dead letter): "
            f"RuntimeError('card expired for {refund}')"
        )
    )
    # A handler failed and runs again: RETRY; its retry succeeded: SUCCESS.
    assert {"task-retried"} <= set(tasks[signup]) and "task-failed" not in tasks[signup]
    assert (
        "(retried): ConnectionError('mail server down')"
        in (tasks[signup]["task-retried"]["exception"])
    )
    [signup_retry] = retries_of(tasks, signup)
    assert "task-succeeded" in signup_retry
    # Its retry failed again, for good: FAILURE.
    assert "task-retried" in tasks[chargeback]
    [chargeback_retry] = retries_of(tasks, chargeback)
    assert "task-succeeded" not in chargeback_retry
    assert (
        f"monitor.Chargeback (id {chargeback}): 1 of 1 handlers failed: "
        in (chargeback_retry["task-failed"]["exception"])
    )
    # A batch with failures fails as a whole, naming them; every event of it ran.
    assert "task-succeeded" not in tasks[batch_task]
    failed = tasks[batch_task]["task-failed"]["exception"]
    assert failed.startswith('ProcessingFailed("5 of 15 events failed: monitor.Refund (id ')
    assert failed.endswith('; and 2 more")')
    runs = dict(project.records.query("select handler, count(*) from runs group by handler"))
    assert runs == {"count": 11, "ledger": 6, "refuse": 6, "welcome": 2, "dispute": 2}

    # Acknowledged, failures included: nothing is left on the broker, nothing
    # ran twice, one dead letter per failure.
    assert queue_size(project) == 0
    letters = deadletters.list_dead_letters()
    assert sorted(letter.event_name for letter in letters) == [
        "monitor.Chargeback",
        *["monitor.Refund"] * 6,
    ]
    assert {letter.event_id for letter in letters} >= {refund, chargeback, *batch[10:]}

    # The worker's log names the events, and Celery's line about a failure
    # is one line: the only tracebacks are eventlib's, one per handler failure.
    log = worker.log
    assert f"Task monitor.Purchase[{purchase}] received" in log
    assert re.search(rf"Task monitor\.Purchase\[{purchase}\] succeeded in ", log)
    assert f"Task monitor.Refund[{refund}] raised expected: ProcessingFailed(" in log
    assert f"Task monitor.Signup[{signup}] retry: monitor.Signup (id {signup})" in log
    assert "Task eventlib batch: monitor.Purchase x10, monitor.Refund x5[" in log
    assert log.count("Traceback (most recent call last)") == 6 + 1 + 2, log


def retries_of(tasks: dict[str, dict[str, dict[str, Any]]], event_id: str) -> list[dict[str, Any]]:
    """The tasks ``eventlib.retry_handler`` that retried the event ``event_id``."""
    return [
        events
        for events in tasks.values()
        if " retry of " in events["task-received"]["name"]  # eventlib.retry_handler's
        and event_id in events["task-received"]["args"]
    ]


def queue_size(project: Project) -> int:
    """How many messages wait in the project's queue (given back by the
    stopped worker, had it not acknowledged them).  On Redis, a queue with
    no message is no key at all: kombu does not find it."""
    with Connection(project.settings["EVENTLIB_BROKER_URL"]) as connection:
        channel = connection.default_channel
        try:
            declared = channel.queue_declare(project.settings["EVENTLIB_QUEUE"], passive=True)
        except ChannelError:
            if connection.transport.driver_type == "redis":
                return 0
            raise
    return int(declared.message_count)
