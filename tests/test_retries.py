"""Per-handler retries: in eager mode, through a broker, and what they count
and log.  Real worker processes are in tests/integration/test_retries.py."""

from __future__ import annotations

import importlib
import itertools
import logging
import sys
import time
from collections import Counter
from datetime import UTC, datetime

import pytest
from celery.signals import worker_process_shutdown

import eventlib
from eventlib import deadletters, metrics, tasks
from eventlib.processing import HandlerFailure, retry_handler
from eventlib.sending import celery_app
from eventlib.serialization import serialize_event

from .memory_broker import take_messages

SHOP_EVENTS = """
    import sys

    from eventlib import BaseEvent, handler

    RUNS = []
    DEPTHS = []
    #: How many times each handler of Flaky fails before it succeeds.
    FAILURES = {}


    def stack_depth():
        frame, depth = sys._getframe(), 0
        while frame is not None:
            frame, depth = frame.f_back, depth + 1
        return depth


    class Refund(BaseEvent):
        retries = 2
        backoff = 3.0

        @handler
        def ledger(self):
            RUNS.append('ledger')

        @handler
        def flaky(self):
            RUNS.append('flaky')
            if RUNS.count('flaky') <= FAILURES.get('flaky', 2):
                raise ConnectionError(f"flaky, run {RUNS.count('flaky')}")

        @handler
        def broken(self):
            RUNS.append('broken')
            raise RuntimeError(f"broken, run {RUNS.count('broken')}")

        @handler(retries=0)
        def fragile(self):
            RUNS.append('fragile')
            if self.data.get('fragile_fails'):
                raise ValueError('fragile')


    @handler('shop.Refund')
    def notify(event):
        RUNS.append('notify')


    class Stubborn(BaseEvent):
        retries = 200
        backoff = 2.0

        @handler
        def never(self):
            DEPTHS.append(stack_depth())
            raise RuntimeError('never')
"""


def letters() -> list[tuple]:
    return [
        (d.event_name, d.handler, d.attempts, d.reason) for d in deadletters.list_dead_letters()
    ]


# ------------------------------------------------------------ eager mode ---


def test_a_handler_that_fails_twice_then_succeeds_runs_three_times_the_others_once(shop):
    eventlib.configure(always_eager=True)

    eventlib.log("shop.Refund", {"order_id": 1})

    runs = Counter(shop.RUNS)
    assert runs["flaky"] == 3
    assert (runs["ledger"], runs["notify"], runs["fragile"]) == (1, 1, 1)
    assert "shop.events.Refund.flaky" not in {handler for _, handler, _, _ in letters()}


def test_a_handler_that_always_fails_ends_as_one_dead_letter_with_its_traceback(shop):
    eventlib.configure(always_eager=True)

    event_id = eventlib.log("shop.Refund", {"order_id": 1})

    assert Counter(shop.RUNS)["broken"] == 3  # the first run and 2 retries
    [letter] = [d for d in deadletters.list_dead_letters() if d.handler.endswith(".broken")]
    assert (letter.event_name, letter.event_id) == ("shop.Refund", event_id)
    assert letter.handler == "shop.events.Refund.broken"
    assert letter.attempts == 3
    assert letter.reason == "RuntimeError: broken, run 3"
    assert "raise RuntimeError(f\"broken, run {RUNS.count('broken')}\")" in letter.traceback
    assert letter.traceback.endswith("RuntimeError: broken, run 3\n")
    assert letter.data == {"order_id": 1}
    assert letters() == [("shop.Refund", "shop.events.Refund.broken", 3, letter.reason)]


def test_a_handler_that_declares_no_retries_is_a_dead_letter_at_once(shop):
    eventlib.configure(always_eager=True)

    eventlib.log("shop.Refund", {"order_id": 1, "fragile_fails": True})

    assert Counter(shop.RUNS)["fragile"] == 1
    assert ("shop.Refund", "shop.events.Refund.fragile", 1, "ValueError: fragile") in letters()


def test_eager_retries_run_after_the_other_handlers_in_a_loop(shop):
    eventlib.configure(always_eager=True)

    eventlib.log("shop.Refund", {"order_id": 1})

    assert shop.RUNS == [
        "ledger",
        "flaky",
        "broken",
        "fragile",
        "notify",
        # then each failed handler alone, a round of retries at a time
        "flaky",
        "broken",
        "flaky",
        "broken",
    ]


def test_eager_retries_end_and_do_not_deepen_the_stack(shop):
    eventlib.configure(always_eager=True)

    eventlib.log("shop.Stubborn", {})

    # 200 retries would pass Python's recursion limit if each ran inside the
    # one before; they run one after the other, at the same depth.
    assert len(shop.DEPTHS) == 201
    assert len(set(shop.DEPTHS[1:])) == 1
    assert max(shop.DEPTHS) < sys.getrecursionlimit() / 4
    assert letters() == [
        ("shop.Stubborn", "shop.events.Stubborn.never", 201, "RuntimeError: never")
    ]


def test_process_names_the_handlers_it_retries(shop):
    shop.FAILURES["flaky"] = 1
    event = shop.Refund({"order_id": 1})

    result = eventlib.process("shop.Refund", serialize_event(event))

    assert result.succeeded == (
        "shop.events.Refund.ledger",
        "shop.events.Refund.fragile",
        "shop.events.notify",
    )
    assert result.failed == (
        HandlerFailure("shop.events.Refund.flaky", "ConnectionError('flaky, run 1')"),
        HandlerFailure("shop.events.Refund.broken", "RuntimeError('broken, run 1')"),
    )
    assert result.retrying == ("shop.events.Refund.flaky", "shop.events.Refund.broken")
    assert result.ok is False


def test_process_called_directly_runs_the_retries_here_without_a_broker(shop):
    # Not eager, and no broker to reach: as in a test with eventlib_processed.
    eventlib.configure(broker_url="amqp://guest:guest@127.0.0.1:1//", broker_timeout=0.5)
    event = shop.Refund({"order_id": 1})

    result = eventlib.process("shop.Refund", serialize_event(event))

    assert result.retrying == ("shop.events.Refund.flaky", "shop.events.Refund.broken")
    assert Counter(shop.RUNS) == Counter(ledger=1, flaky=3, broken=3, fragile=1, notify=1)
    assert letters() == [
        ("shop.Refund", "shop.events.Refund.broken", 3, "RuntimeError: broken, run 3")
    ]


def test_a_whole_event_dead_letter_retried_runs_its_handlers_with_all_their_retries(
    shop, isolation
):
    payload = serialize_event(shop.Refund({"order_id": 1}))
    with pytest.raises(eventlib.EventNotFound):
        eventlib.process("shop.Gone", payload)
    [letter] = deadletters.list_dead_letters()
    assert letter.attempts == 1

    isolation.write("shop/events.py", SHOP_EVENTS + "\n    class Gone(Refund):\n        pass\n")
    shop = importlib.import_module("shop.events")
    result = deadletters.retry(letter.id, here=True)  # its run 2

    # As for a new event: the first run and 2 retries, whatever the dead
    # letter's attempts were.
    assert result.retrying == ("shop.events.Refund.flaky", "shop.events.Refund.broken")
    assert (Counter(shop.RUNS)["flaky"], Counter(shop.RUNS)["broken"]) == (3, 3)
    assert letters() == [
        ("shop.Gone", "shop.events.Refund.broken", 3, "RuntimeError: broken, run 3")
    ]


def test_the_test_recorder_runs_retries_in_the_test(shop):
    from eventlib.testing import capture_events

    with capture_events(run_handlers=True) as events:
        eventlib.log("shop.Refund", {"order_id": 1})

    [captured] = events
    assert captured.result.retrying == ("shop.events.Refund.flaky", "shop.events.Refund.broken")
    assert Counter(shop.RUNS) == Counter(ledger=1, flaky=3, broken=3, fragile=1, notify=1)


# ------------------------------------------------------ through a broker ---


def test_a_failed_handler_is_sent_alone_to_run_later_on_eventlib_s_queue(shop, memory_app):
    eventlib.configure(always_eager=False, celery_app=memory_app)
    event = shop.Refund({"order_id": 1})
    payload = serialize_event(event)

    sent_at = datetime.now(UTC)
    # What the worker's task eventlib.process runs (the task returns None).
    result = eventlib.process("shop.Refund", payload, app=memory_app)

    assert Counter(shop.RUNS) == Counter(ledger=1, flaky=1, broken=1, fragile=1, notify=1)
    assert result.retrying == ("shop.events.Refund.flaky", "shop.events.Refund.broken")
    assert letters() == []
    messages = take_messages(memory_app)
    assert [m.headers["task"] for m in messages] == ["eventlib.retry_handler"] * 2
    # What Flower and the worker's log call them.
    assert [m.headers["shadow"] for m in messages] == [
        "shop.Refund retry of shop.events.Refund.flaky",
        "shop.Refund retry of shop.events.Refund.broken",
    ]
    assert [m.decode()[:2] for m in messages] == [
        [["shop.Refund", payload, "shop.events.Refund.flaky", 2], {}],
        [["shop.Refund", payload, "shop.events.Refund.broken", 2], {}],
    ]
    for message in messages:
        assert message.delivery_info["routing_key"] == "eventlib"
        assert message.content_type == "application/json"
        # First retry: backoff ** 1 = 3 seconds, times 0.5 to 1.5.
        delay = (datetime.fromisoformat(message.headers["eta"]) - sent_at).total_seconds()
        assert 1.5 - 0.5 <= delay <= 4.5 + 0.5, delay


def test_the_retry_task_runs_only_its_handler_until_the_last_retry(shop, memory_app):
    eventlib.configure(always_eager=False, celery_app=memory_app)
    payload = serialize_event(shop.Refund({"order_id": 1}))

    # What the worker's task eventlib.retry_handler runs (the task returns None).
    second = retry_handler("shop.Refund", payload, "shop.events.Refund.broken", 2, app=memory_app)

    assert shop.RUNS == ["broken"]
    assert second.as_dict()["failed"] == (
        {"handler": "shop.events.Refund.broken", "error": "RuntimeError('broken, run 1')"},
    )
    assert second.retrying == ("shop.events.Refund.broken",)
    [message] = take_messages(memory_app)
    args, _, _ = message.decode()
    assert args == ["shop.Refund", payload, "shop.events.Refund.broken", 3]
    delay = (datetime.fromisoformat(message.headers["eta"]) - datetime.now(UTC)).total_seconds()
    assert 4.5 - 1 <= delay <= 13.5, delay  # backoff ** 2 = 9 seconds, times 0.5 to 1.5

    third = retry_handler(*args, app=memory_app)

    assert shop.RUNS == ["broken", "broken"]
    assert third.retrying == ()
    assert take_messages(memory_app) == []
    assert letters() == [
        ("shop.Refund", "shop.events.Refund.broken", 3, "RuntimeError: broken, run 2")
    ]


def test_the_tasks_run_the_handlers_send_the_retries_and_return_none(shop, memory_app):
    # A worker's tasks: the outcome is in the logs, the counters and the dead
    # letters, not in a return value.
    eventlib.configure(always_eager=False, celery_app=memory_app)
    payload = serialize_event(shop.Refund({"order_id": 1}))
    process = memory_app.tasks["eventlib.process"]
    retry = memory_app.tasks["eventlib.retry_handler"]

    assert process.apply(args=("shop.Refund", payload)).get() is None

    assert Counter(shop.RUNS) == Counter(ledger=1, flaky=1, broken=1, fragile=1, notify=1)
    assert [m.decode()[0] for m in take_messages(memory_app)] == [
        ["shop.Refund", payload, "shop.events.Refund.flaky", 2],
        ["shop.Refund", payload, "shop.events.Refund.broken", 2],
    ]

    args = ("shop.Refund", payload, "shop.events.Refund.broken", 3)
    assert retry.apply(args=args).get() is None

    assert Counter(shop.RUNS)["broken"] == 2
    assert take_messages(memory_app) == []
    assert letters() == [
        ("shop.Refund", "shop.events.Refund.broken", 3, "RuntimeError: broken, run 2")
    ]


def test_a_retry_that_succeeds_leaves_nothing_behind(shop, memory_app):
    eventlib.configure(always_eager=False, celery_app=memory_app)
    payload = serialize_event(shop.Refund({"order_id": 1}))
    shop.RUNS.extend(["flaky", "flaky"])  # it failed twice already

    result = retry_handler("shop.Refund", payload, "shop.events.Refund.flaky", 3, app=memory_app)

    assert result.succeeded == ("shop.events.Refund.flaky",)
    assert (result.failed, result.retrying) == ((), ())
    assert take_messages(memory_app) == []
    assert letters() == []


def test_a_retry_of_a_handler_that_no_longer_exists_is_a_dead_letter(shop, caplog):
    payload = serialize_event(shop.Refund({"order_id": 1}))

    result = retry_handler("shop.Refund", payload, "shop.events.Refund.renamed", 2)

    reason = "the event shop.Refund has no handler named shop.events.Refund.renamed"
    assert result.failed == (HandlerFailure("shop.events.Refund.renamed", reason),)
    assert shop.RUNS == []
    assert letters() == [("shop.Refund", "shop.events.Refund.renamed", 2, reason)]
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.eventlib_handler == "shop.events.Refund.renamed"


def test_a_retry_that_cannot_be_sent_becomes_a_dead_letter(shop):
    # A worker whose broker went away after it took the event.
    eventlib.configure(broker_url="amqp://guest:guest@127.0.0.1:1//", broker_timeout=0.5)
    payload = serialize_event(shop.Refund({"order_id": 1}))
    shop.FAILURES["flaky"] = 1

    started = time.monotonic()
    # What the worker's task eventlib.process runs (the task returns None).
    result = eventlib.process("shop.Refund", payload, app=celery_app())

    assert time.monotonic() - started < 10
    assert result.retrying == ()
    found = {handler: (attempts, reason) for _, handler, attempts, reason in letters()}
    attempts, reason = found["shop.events.Refund.flaky"]
    assert attempts == 1
    assert reason.startswith("ConnectionError: flaky, run 1 (its retry could not be sent: ")
    assert set(found) == {"shop.events.Refund.flaky", "shop.events.Refund.broken"}
    assert Counter(shop.RUNS)["flaky"] == 1


# ------------------------------------------------------------- counters ---


def test_counters_count_events_failures_retries_and_dead_letters(shop):
    eventlib.configure(always_eager=True)

    eventlib.log("shop.Refund", {"order_id": 1})
    eventlib.log("shop.Refund", {"order_id": 2, "fragile_fails": True})

    counts = metrics.snapshot()
    # First event: flaky fails twice, broken three times (2 retries each).
    # Second: flaky succeeds, broken fails three times, fragile once.
    assert counts["processed"] == 2
    assert counts["handler_failures"] == 5 + 4
    assert counts["retries"] == 4 + 2
    assert counts["dead_letters"] == 1 + 2 == len(letters())


def test_a_worker_process_logs_its_counters_every_so_many_events(shop, caplog, monkeypatch):
    monkeypatch.setattr(tasks, "COUNTERS_LOG_EVERY", 2)
    monkeypatch.setattr(tasks, "_events_seen", itertools.count(1))
    eventlib.configure(always_eager=True)
    caplog.set_level(logging.INFO, logger="eventlib")

    for n in range(4):
        eventlib.log("shop.Stubborn" if n == 0 else "shop.Refund", {})

    records = [r for r in caplog.records if r.getMessage().startswith("eventlib counters:")]
    assert len(records) == 2
    assert records[-1].eventlib_counters == metrics.snapshot()
    assert records[-1].getMessage() == "eventlib counters: " + " ".join(
        f"{name}={value}" for name, value in metrics.snapshot().items()
    )
    assert records[-1].levelno == logging.INFO


def test_a_worker_process_logs_its_counters_when_it_exits(shop, caplog):
    caplog.set_level(logging.INFO, logger="eventlib")
    metrics.increment("processed", 3)

    worker_process_shutdown.send(sender="w1@host", pid=123, exitcode=0)

    [record] = [r for r in caplog.records if r.name == "eventlib"]
    assert record.getMessage().startswith("eventlib counters: logged=0 ")
    assert "processed=3" in record.getMessage()
    assert record.eventlib_counters["processed"] == 3


# --------------------------------------------------------------- logging ---


def test_every_record_about_an_event_carries_its_name_id_and_handler(shop, caplog):
    eventlib.configure(always_eager=True)
    caplog.set_level(logging.INFO, logger="eventlib")

    event_id = eventlib.log("shop.Refund", {"order_id": 1, "fragile_fails": True})

    records = [r for r in caplog.records if r.name == "eventlib"]
    assert len(records) == 8
    for record in records:
        assert (record.eventlib_event, record.eventlib_event_id) == ("shop.Refund", event_id)
        assert record.eventlib_handler in record.getMessage()
    retried = [r for r in records if r.levelno == logging.WARNING and r.exc_info]
    assert [r.eventlib_handler.rpartition(".")[2] for r in retried] == [
        "flaky",
        "broken",
        "flaky",
        "broken",
    ]
    assert retried[0].getMessage() == (
        f"Handler shop.events.Refund.flaky failed on event shop.Refund (id {event_id}), "
        f"attempt 1 of 3; it runs again in {retried[0].getMessage().rpartition(' ')[2]}"
    )
    final = [r for r in records if r.levelno == logging.ERROR]
    assert [r.getMessage() for r in final] == [
        f"Handler shop.events.Refund.fragile failed on event shop.Refund (id {event_id})",
        f"Handler shop.events.Refund.broken failed on event shop.Refund (id {event_id})",
    ]
    recorded = [r.getMessage() for r in records if r.getMessage().startswith("Recorded")]
    assert recorded == [
        f"Recorded dead letter 1: shop.events.Refund.fragile on event shop.Refund (id {event_id})",
        f"Recorded dead letter 2: shop.events.Refund.broken on event shop.Refund (id {event_id})",
    ]


def test_a_dead_letter_the_database_refuses_is_logged_with_its_payload(shop, caplog, tmp_path):
    eventlib.configure(
        always_eager=True, dead_letter_url=f"sqlite:///{tmp_path / 'missing' / 'dead.sqlite'}"
    )
    event = shop.Refund({"order_id": 1, "fragile_fails": True})
    payload = serialize_event(event)

    eventlib.process("shop.Refund", payload)

    lost = [r for r in caplog.records if r.getMessage().startswith("Could not record")]
    assert len(lost) == 2  # fragile at once, broken after its retries
    assert lost[0].getMessage() == (
        "Could not record the dead letter of shop.events.Refund.fragile on event shop.Refund "
        f"(id {event.id}) in sqlite:///{tmp_path / 'missing' / 'dead.sqlite'}; "
        f"its payload: {payload}"
    )
    assert lost[0].eventlib_handler == "shop.events.Refund.fragile"
