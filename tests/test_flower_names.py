"""What Celery and Flower show of eventlib's tasks: the name each message
carries (its ``shadow`` name), on kombu's in-memory broker, and how a task
ends, called as a worker calls it (not eagerly).  tests/integration/test_flower.py
watches real workers do the same through Celery's task events."""

from __future__ import annotations

import pickle
from typing import Any

import pytest
from celery import Celery
from celery.exceptions import Retry
from kombu.message import Message

import eventlib
from eventlib import ProcessingFailed, deadletters
from eventlib.sending import sender
from eventlib.serialization import serialize_event
from eventlib.tasks import process_batch, process_event, retry_handler

SHOP_EVENTS = """
    import eventlib


    class Purchase(eventlib.BaseEvent):
        @eventlib.handler
        def count(self):
            pass


    class Refund(eventlib.BaseEvent):
        @eventlib.handler
        def ledger(self):
            pass

        @eventlib.handler
        def refuse(self):
            raise RuntimeError("card expired")


    class Signup(eventlib.BaseEvent):
        @eventlib.handler(retries=1)
        def welcome(self):
            raise ConnectionError("mail server down")


    class Order(eventlib.BaseEvent):
        def clean(self):
            self.require_data_keys(["sku"])

        @eventlib.handler
        def pack(self):
            pass


    class Note(eventlib.BaseEvent):
        @eventlib.handler
        def keep(self):
            raise ValueError("line one\\nline two " + "x" * 500)
"""


@pytest.fixture
def shop(isolation: Any, memory_app: Celery) -> Celery:
    """The shop's events, sent with the user's app on the in-memory broker."""
    isolation.write("shop/events.py", SHOP_EVENTS)
    eventlib.configure(apps=["shop"], celery_app=memory_app, dispatch="direct")
    return memory_app


def taken(app: Celery) -> list[Message]:
    """Every message waiting in eventlib's queue, taken."""
    messages = []
    with app.connection_for_read() as connection:
        queue = connection.SimpleQueue("eventlib")
        while True:
            try:
                message = queue.get(block=False)
            except queue.Empty:
                break
            message.ack()
            messages.append(message)
        queue.close()
    return messages


def payload(name: str, data: dict[str, Any] | None = None) -> tuple[str, str, str]:
    """An event as the publisher holds it: name, id, payload."""
    event = eventlib.discovery.find_event(name)(data or {})
    return name, event.id, serialize_event(event)


def in_worker(task: Any, *args: Any) -> Any:
    """Run ``task`` as a worker of the user's app does: called, not applied
    eagerly; the retries it sends go to that app's in-memory broker."""
    return eventlib.conf.get_settings().celery_app.tasks[task.name](*args)


# ----------------------------------------------------------------- names ---


def test_a_lone_event_s_message_is_named_after_the_event(shop):
    event_id = eventlib.log("shop.Purchase")

    [message] = taken(shop)

    assert message.headers["task"] == "eventlib.process"
    assert message.headers["id"] == event_id
    assert message.headers["shadow"] == "shop.Purchase"


def test_a_batch_s_message_names_the_events_it_carries(shop):
    events = [payload("shop.Purchase")] * 60 + [payload("shop.Refund")] * 40

    assert sender._publish(shop, events)

    [message] = taken(shop)
    assert message.headers["task"] == "eventlib.process_batch"
    assert message.headers["shadow"] == "eventlib batch: shop.Purchase x60, shop.Refund x40"
    assert message.headers["argsrepr"] == "[100 events: shop.Purchase x60, shop.Refund x40]"


def test_a_batch_of_many_events_names_three_and_counts_the_others(shop):
    names = ["shop.Purchase", "shop.Refund", "shop.Signup", "crm.Call", "crm.Visit"]
    events = [(name, f"id-{n}", "{}") for n, name in enumerate(names)] * 2

    assert sender._publish(shop, events)

    [message] = taken(shop)
    assert message.headers["shadow"] == (
        "eventlib batch: shop.Purchase x2, shop.Refund x2, shop.Signup x2 (+2 more names)"
    )


# ------------------------------------------------------ how a task ends ---


def test_a_task_whose_handlers_all_succeed_returns(shop):
    name, _, text = payload("shop.Purchase")

    assert in_worker(process_event, name, text) is None


def test_a_failure_that_became_a_dead_letter_fails_the_task_in_one_line(shop):
    name, event_id, text = payload("shop.Refund")

    with pytest.raises(ProcessingFailed) as failed:
        in_worker(process_event, name, text)

    assert str(failed.value) == (
        f"shop.Refund (id {event_id}): 1 of 2 handlers failed: "
        "shop.events.Refund.refuse (dead letter): RuntimeError('card expired')"
    )
    [letter] = deadletters.list_dead_letters()
    assert (letter.event_id, letter.handler) == (event_id, "shop.events.Refund.refuse")


def test_a_failure_that_runs_again_ends_the_task_as_celery_s_retry(shop):
    name, event_id, text = payload("shop.Signup")

    with pytest.raises(Retry) as retried:
        in_worker(process_event, name, text)

    expected = (
        f"shop.Signup (id {event_id}): 1 of 1 handlers failed: "
        "shop.events.Signup.welcome (retried): ConnectionError('mail server down')"
    )
    assert str(retried.value) == expected
    assert isinstance(retried.value.exc, ProcessingFailed)
    assert str(retried.value.exc) == expected
    [retry] = taken(shop)
    assert retry.headers["task"] == "eventlib.retry_handler"
    assert deadletters.list_dead_letters() == []


def test_a_retry_that_fails_for_good_fails_its_task(shop):
    name, event_id, text = payload("shop.Signup")

    with pytest.raises(ProcessingFailed, match=r"welcome \(dead letter\): ConnectionError"):
        in_worker(retry_handler, name, text, "shop.events.Signup.welcome", 2)

    [letter] = deadletters.list_dead_letters()
    assert (letter.event_id, letter.attempts) == (event_id, 2)


def test_an_event_that_cannot_be_loaded_fails_its_task_naming_why(shop):
    _, _, text = payload("shop.Purchase")

    with pytest.raises(ProcessingFailed) as failed:
        in_worker(process_event, "shop.Missing", text)

    assert str(failed.value) == (
        "shop.Missing: cannot be processed (dead letter): EventNotFound: "
        "There is no event named Missing in the shop app"
    )
    assert isinstance(failed.value.__cause__, eventlib.EventNotFound)


def test_data_the_worker_refuses_fails_the_task_saying_why(shop):
    name, event_id, text = payload("shop.Order")  # not validated: as a message may come

    with pytest.raises(ProcessingFailed) as failed:
        in_worker(process_event, name, text)

    assert str(failed.value).startswith(f"shop.Order (id {event_id}): invalid data (dead letter): ")
    assert "sku" in str(failed.value)


def test_a_batch_with_failures_fails_as_a_whole_once_every_event_ran(shop):
    events = [payload("shop.Purchase")] + [payload("shop.Refund") for _ in range(5)]

    with pytest.raises(ProcessingFailed) as failed:
        in_worker(process_batch, [[name, text] for name, _, text in events])

    ids = [event_id for _, event_id, _ in events]
    refused = "1 of 2 handlers failed: shop.events.Refund.refuse (dead letter)"
    assert str(failed.value) == (
        "5 of 6 events failed: "
        + "; ".join(
            f"shop.Refund (id {i}): {refused}: RuntimeError('card expired')" for i in ids[1:4]
        )
        + "; and 2 more"
    )
    assert {letter.event_id for letter in deadletters.list_dead_letters()} == set(ids[1:])


def test_a_failure_s_message_is_one_line_however_long_the_error(shop):
    name, _, text = payload("shop.Note")

    with pytest.raises(ProcessingFailed) as failed:
        in_worker(process_event, name, text)

    message = str(failed.value)
    assert "\n" not in message
    error = repr(ValueError("line one\nline two " + "x" * 500))
    assert message.endswith(f"shop.events.Note.keep (dead letter): {error[:199]}…")


def test_run_eagerly_a_task_returns_whatever_failed(shop):
    eventlib.configure(always_eager=True)

    event_id = eventlib.log("shop.Refund")

    [letter] = deadletters.list_dead_letters()
    assert letter.event_id == event_id


def test_the_tasks_expect_processing_failed_and_it_crosses_processes(shop):
    for task in ("eventlib.process", "eventlib.process_batch", "eventlib.retry_handler"):
        assert shop.tasks[task].throws == (ProcessingFailed,)
    error = pickle.loads(pickle.dumps(ProcessingFailed("shop.Refund (id 1): ...")))
    assert type(error) is eventlib.ProcessingFailed
    assert error.args == ("shop.Refund (id 1): ...",)
