"""``eventlib.process``: what a worker does with one event."""

from __future__ import annotations

import importlib
import json
import logging
import sys
from datetime import UTC, datetime

import pytest

import eventlib
from eventlib import deadletters, sending
from eventlib.processing import HandlerFailure, ProcessResult
from eventlib.serialization import serialize_event

SHOP_EVENTS = """
    from eventlib import BaseEvent, ValidationError, handler

    CALLS = []


    @handler('*')
    def audit_everything(event):
        CALLS.append('audit_everything')


    @handler('shop.Refund')
    def notify(event):
        CALLS.append('notify')


    class Refund(BaseEvent):
        @handler
        def first(self):
            CALLS.append('first')

        @handler
        def charge(self):
            CALLS.append('charge')
            if self.data.get('declined'):
                raise RuntimeError('card declined')

        @handler
        def last(self):
            CALLS.append('last')


    @handler('shop.*')
    def shop_stats(event):
        CALLS.append('shop_stats')


    class Order(BaseEvent):
        def clean(self):
            items = self.data.get('items')
            if not isinstance(items, tuple):
                raise ValidationError(f'items must be a tuple, not {type(items).__name__}')

        @handler
        def record(self):
            CALLS.append('order')


    class Interrupted(BaseEvent):
        @handler
        def stop(self):
            raise KeyboardInterrupt


    class Seen(BaseEvent):
        @handler
        def record(self):
            CALLS.append((self.id, self.created_at, self.data))


    class Crashing(BaseEvent):
        def clean(self):
            return self.data['missing']

        @handler
        def record(self):
            CALLS.append('crashing')
"""

ALL_REFUND_HANDLERS = (
    "shop.events.Refund.first",
    "shop.events.Refund.charge",
    "shop.events.Refund.last",
    "shop.events.notify",
    "shop.events.audit_everything",
    "shop.events.shop_stats",
)


def payload_of(event_class, data, **kwargs) -> tuple[str, str]:
    event = event_class(data, **kwargs)
    return event.id, serialize_event(event)


def eventlib_errors(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "eventlib" and r.levelno == logging.ERROR]


def dead_letters() -> list[tuple]:
    """The dead letters recorded, without their time and traceback."""
    return [
        (d.event_name, d.event_id, d.payload, d.handler, d.attempts, d.reason)
        for d in deadletters.list_dead_letters()
    ]


# ---------------------------------------------------------------- result ---


def test_every_handler_runs_in_order(shop, caplog):
    event_id, payload = payload_of(shop.Refund, {"amount": 3})

    result = eventlib.process("shop.Refund", payload)

    assert shop.CALLS == [
        "first",
        "charge",
        "last",
        "notify",
        "audit_everything",
        "shop_stats",
    ]
    assert isinstance(result, ProcessResult)
    assert result == ProcessResult("shop.Refund", event_id, ALL_REFUND_HANDLERS)
    assert result.failed == ()
    assert result.invalid is None
    assert result.ok is True
    assert result.retrying == ()
    assert eventlib_errors(caplog) == []
    assert dead_letters() == []


def test_handlers_get_the_id_time_and_data_of_the_payload(shop):
    created_at = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    event_id, payload = payload_of(
        shop.Seen, {"items": (1, 2)}, id="event-1", created_at=created_at
    )

    eventlib.process("shop.Seen", payload)

    assert event_id == "event-1"
    assert shop.CALLS[0] == ("event-1", created_at, {"items": [1, 2]})


def test_payload_may_be_bytes(shop):
    event_id, payload = payload_of(shop.Seen, {"n": 1})

    result = eventlib.process("shop.Seen", payload.encode())

    assert result.succeeded == (
        "shop.events.Seen.record",
        "shop.events.audit_everything",
        "shop.events.shop_stats",
    )
    assert shop.CALLS[0][0] == event_id


def test_a_failing_handler_does_not_stop_the_others(shop, caplog):
    event_id, payload = payload_of(shop.Refund, {"declined": True})

    result = eventlib.process("shop.Refund", payload)

    assert shop.CALLS == [
        "first",
        "charge",
        "last",
        "notify",
        "audit_everything",
        "shop_stats",
    ]
    assert result.succeeded == tuple(h for h in ALL_REFUND_HANDLERS if not h.endswith(".charge"))
    assert result.failed == (
        HandlerFailure("shop.events.Refund.charge", "RuntimeError('card declined')"),
    )
    assert result.ok is False
    assert result.as_dict() == {
        "name": "shop.Refund",
        "event_id": event_id,
        "succeeded": result.succeeded,
        "failed": (
            {"handler": "shop.events.Refund.charge", "error": "RuntimeError('card declined')"},
        ),
        "invalid": None,
        "retrying": (),
    }


def test_a_failing_handler_without_retries_becomes_a_dead_letter_at_once(shop):
    event_id, payload = payload_of(shop.Refund, {"declined": True})

    result = eventlib.process("shop.Refund", payload)

    assert result.retrying == ()
    [letter] = deadletters.list_dead_letters()
    assert (letter.event_name, letter.event_id, letter.payload) == (
        "shop.Refund",
        event_id,
        payload,
    )
    assert (letter.handler, letter.attempts) == ("shop.events.Refund.charge", 1)
    assert letter.reason == "RuntimeError: card declined"
    assert letter.traceback.startswith("Traceback (most recent call last):")
    assert "raise RuntimeError('card declined')" in letter.traceback
    assert letter.traceback.endswith("RuntimeError: card declined\n")


def test_a_failing_handler_is_logged_with_its_traceback(shop, caplog):
    event_id, payload = payload_of(shop.Refund, {"declined": True})

    eventlib.process("shop.Refund", payload)

    [record] = eventlib_errors(caplog)
    assert record.getMessage() == (
        f"Handler shop.events.Refund.charge failed on event shop.Refund (id {event_id})"
    )
    error_type, error, traceback = record.exc_info
    assert error_type is RuntimeError
    assert str(error) == "card declined"
    assert traceback is not None
    assert record.eventlib_event == "shop.Refund"
    assert record.eventlib_event_id == event_id
    assert record.eventlib_handler == "shop.events.Refund.charge"


def test_base_exceptions_are_not_swallowed(shop):
    _, payload = payload_of(shop.Interrupted, {})

    with pytest.raises(KeyboardInterrupt):
        eventlib.process("shop.Interrupted", payload)

    assert shop.CALLS == []


# ------------------------------------------------------------ validation ---


def test_data_refused_by_clean_runs_no_handler(shop, caplog):
    event_id, payload = payload_of(shop.Order, {"items": (1, 2)})

    result = eventlib.process("shop.Order", payload)

    assert shop.CALLS == []
    assert result == ProcessResult(
        "shop.Order", event_id, invalid="items must be a tuple, not list"
    )
    assert result.ok is False
    assert result.as_dict() == {
        "name": "shop.Order",
        "event_id": event_id,
        "succeeded": (),
        "failed": (),
        "invalid": "items must be a tuple, not list",
        "retrying": (),
    }
    [record] = eventlib_errors(caplog)
    assert record.getMessage() == (
        f"Event shop.Order (id {event_id}) has invalid data in the worker, "
        "its handlers were not run: items must be a tuple, not list"
    )
    assert record.eventlib_event == "shop.Order"
    assert record.eventlib_event_id == event_id
    assert record.eventlib_handler is None
    assert dead_letters() == [
        (
            "shop.Order",
            event_id,
            payload,
            None,
            1,
            "ValidationError: items must be a tuple, not list",
        )
    ]


def test_a_clean_that_crashes_makes_a_dead_letter_and_raises(shop, caplog):
    event_id, payload = payload_of(shop.Crashing, {})

    with pytest.raises(KeyError):
        eventlib.process("shop.Crashing", payload)

    assert shop.CALLS == []
    [letter] = deadletters.list_dead_letters()
    assert (letter.event_id, letter.handler, letter.reason) == (
        event_id,
        None,
        "KeyError: 'missing'",
    )
    assert "return self.data['missing']" in letter.traceback
    [record] = eventlib_errors(caplog)
    assert record.getMessage() == (
        f"Event shop.Crashing (id {event_id}) cannot be processed: KeyError: 'missing'"
    )


# ------------------------------------------------------------- discovery ---

AUDIT_EVENTS = """
    from eventlib import handler

    seen = []


    @handler('shop.Refund')
    def audit(event):
        seen.append(event.id)
"""


def test_handlers_of_configured_apps_are_discovered(shop, isolation):
    isolation.write("audit/events.py", AUDIT_EVENTS)
    eventlib.configure(apps=["shop", "audit"])
    event_id, payload = payload_of(shop.Refund, {})
    assert "audit.events" not in sys.modules

    result = eventlib.process("shop.Refund", payload)

    audit = importlib.import_module("audit.events")
    assert audit.seen == [event_id]
    assert result.succeeded == (
        "shop.events.Refund.first",
        "shop.events.Refund.charge",
        "shop.events.Refund.last",
        "shop.events.notify",
        "audit.events.audit",
        "shop.events.audit_everything",
        "shop.events.shop_stats",
    )


def test_apps_are_discovered_once_per_apps_setting(shop, isolation):
    isolation.write("audit/events.py", AUDIT_EVENTS)
    eventlib.configure(apps=["shop", "audit"])
    first_id, first = payload_of(shop.Refund, {})
    eventlib.process("shop.Refund", first)
    audit = sys.modules.pop("audit.events")
    second_id, second = payload_of(shop.Refund, {})

    eventlib.process("shop.Refund", second)

    assert "audit.events" not in sys.modules  # not imported again
    assert audit.seen == [first_id, second_id]


def test_apps_are_discovered_again_when_the_setting_changes(shop, isolation):
    isolation.write("audit/events.py", AUDIT_EVENTS)
    eventlib.configure(apps=["shop"])
    _, first = payload_of(shop.Refund, {})
    eventlib.process("shop.Refund", first)
    assert "audit.events" not in sys.modules

    eventlib.configure(apps=["shop", "audit"])
    second_id, second = payload_of(shop.Refund, {})
    eventlib.process("shop.Refund", second)

    audit = importlib.import_module("audit.events")
    assert audit.seen == [second_id]


# ------------------------------------------------------------- bad input ---


def test_unknown_event(shop):
    event_id, payload = payload_of(shop.Refund, {})

    with pytest.raises(eventlib.EventNotFound) as error:
        eventlib.process("shop.Nope", payload)

    assert str(error.value) == "There is no event named Nope in the shop app"
    [letter] = deadletters.list_dead_letters()
    assert (letter.event_name, letter.event_id, letter.payload) == ("shop.Nope", event_id, payload)
    assert (letter.handler, letter.attempts) == (None, 1)
    assert letter.reason == "EventNotFound: There is no event named Nope in the shop app"
    assert "eventlib.EventNotFound: There is no event named Nope" in letter.traceback


def test_invalid_event_name(shop):
    _, payload = payload_of(shop.Refund, {})

    with pytest.raises(eventlib.InvalidEventName):
        eventlib.process("Refund", payload)

    [(name, event_id, kept, handler, attempts, reason)] = dead_letters()
    assert (name, kept, handler, attempts) == ("Refund", payload, None, 1)
    assert event_id == json.loads(payload)["id"]
    assert reason.startswith("InvalidEventName: Invalid event name 'Refund'")


def test_garbage_payload(shop):
    with pytest.raises(eventlib.DeserializationError) as error:
        eventlib.process("shop.Refund", "not json")

    assert str(error.value) == "invalid JSON payload: Expecting value: line 1 column 1 (char 0)"
    assert shop.CALLS == []
    assert dead_letters() == [
        (
            "shop.Refund",
            None,
            "not json",
            None,
            1,
            "DeserializationError: invalid JSON payload: Expecting value: line 1 column 1 (char 0)",
        )
    ]


def test_a_garbage_bytes_payload_is_kept_as_text(shop):
    with pytest.raises(eventlib.DeserializationError):
        eventlib.process("shop.Refund", b"\xff not json")

    [letter] = deadletters.list_dead_letters()
    assert letter.payload == "\ufffd not json"


def test_json_that_is_not_a_payload(shop):
    with pytest.raises(eventlib.DeserializationError) as error:
        eventlib.process("shop.Refund", '{"data": {}}')

    assert str(error.value) == (
        "not an eventlib payload: expected a JSON object with 'id' (string), "
        "'created_at' (ISO 8601 string) and 'data' (object), got '{\"data\": {}}'"
    )
    assert shop.CALLS == []


@pytest.mark.parametrize(
    ("payload", "kept", "shown"),
    [
        pytest.param(123, "123", "int (123)", id="int"),
        pytest.param(None, "None", "NoneType (None)", id="none"),
        pytest.param({"id": "1"}, "{'id': '1'}", "dict ({'id': '1'})", id="dict"),
    ],
)
def test_a_payload_that_is_not_text_is_a_dead_letter(shop, payload, kept, shown, caplog):
    reason = f"invalid JSON payload: expected JSON text (str or bytes), not {shown}"
    with pytest.raises(eventlib.DeserializationError) as error:
        eventlib.process("shop.Refund", payload)

    assert str(error.value) == reason
    assert shop.CALLS == []
    assert dead_letters() == [
        ("shop.Refund", None, kept, None, 1, f"DeserializationError: {reason}")
    ]
    [record] = eventlib_errors(caplog)
    assert record.getMessage() == (
        f"Event shop.Refund (id None) cannot be processed: DeserializationError: {reason}"
    )


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param("[" * 100_000 + "]" * 100_000, id="arrays"),
        pytest.param(
            '{"id": "e1", "created_at": "2024-01-01T00:00:00+00:00", "data": '
            + '{"a": ' * 100_000
            + "1"
            + "}" * 100_001,
            id="deep-data",
        ),
    ],
)
def test_a_payload_nested_100000_levels_is_a_dead_letter(shop, payload):
    reason = (
        "invalid JSON payload: data nested more than 100 levels deep "
        "(eventlib.serialization.MAX_DEPTH)"
    )
    with pytest.raises(eventlib.DeserializationError) as error:
        eventlib.process("shop.Refund", payload)

    assert str(error.value) == reason
    assert shop.CALLS == []
    [letter] = deadletters.list_dead_letters()
    assert (letter.event_name, letter.payload, letter.handler) == ("shop.Refund", payload, None)
    assert letter.reason == f"DeserializationError: {reason}"


def test_a_name_that_is_not_a_string_is_a_dead_letter(shop):
    _, payload = payload_of(shop.Refund, {})

    with pytest.raises(eventlib.InvalidEventName, match="must be a string, not list"):
        eventlib.process(["shop", "Refund"], payload)

    [(name, _, kept, handler, _, reason)] = dead_letters()
    assert (name, kept, handler) == ("['shop', 'Refund']", payload, None)
    assert reason == "InvalidEventName: An event name must be a string, not list"


SIDE_EFFECTS = """
    from eventlib import BaseEvent, handler

    RAN = []


    class Boom(BaseEvent):
        @handler
        def explode(self):
            RAN.append(self.id)
"""


def test_an_event_outside_the_configured_apps_is_a_dead_letter_and_imports_nothing(shop, isolation):
    isolation.write("sidefx/events.py", SIDE_EFFECTS)
    eventlib.configure(apps=["shop"])
    event_id, payload = payload_of(shop.Refund, {})

    with pytest.raises(eventlib.EventNotFound) as error:
        eventlib.process("sidefx.Boom", payload)

    reason = (
        "There is no event named Boom in the sidefx app: sidefx is not among the configured apps"
    )
    assert str(error.value) == reason
    assert "sidefx" not in sys.modules
    assert "sidefx.events" not in sys.modules
    assert dead_letters() == [
        ("sidefx.Boom", event_id, payload, None, 1, f"EventNotFound: {reason}")
    ]


def test_an_event_found_before_the_apps_were_set_is_refused_after(shop, isolation):
    isolation.write("sidefx/events.py", SIDE_EFFECTS)
    sidefx = importlib.import_module("sidefx.events")
    _, payload = payload_of(sidefx.Boom, {})
    assert eventlib.process("sidefx.Boom", payload).ok  # no apps: any app's events
    eventlib.configure(apps=["shop"])

    with pytest.raises(eventlib.EventNotFound, match="sidefx is not among the configured apps"):
        eventlib.process("sidefx.Boom", payload)

    assert len(sidefx.RAN) == 1
    assert eventlib.process("shop.Refund", payload_of(shop.Refund, {})[1]).ok


# ------------------------------------------------------------ Celery task ---


def test_what_the_celery_task_runs_gives_the_result_as_a_dict(shop):
    event_id, payload = payload_of(shop.Refund, {"declined": True})

    # What the task runs; it returns None.
    result = eventlib.process("shop.Refund", payload, app=sending.celery_app())

    assert result.as_dict() == {
        "name": "shop.Refund",
        "event_id": event_id,
        "succeeded": tuple(h for h in ALL_REFUND_HANDLERS if not h.endswith(".charge")),
        "failed": (
            {"handler": "shop.events.Refund.charge", "error": "RuntimeError('card declined')"},
        ),
        "invalid": None,
        "retrying": (),
    }
    assert shop.CALLS == [
        "first",
        "charge",
        "last",
        "notify",
        "audit_everything",
        "shop_stats",
    ]


def test_the_celery_task_runs_the_handlers_and_returns_none(shop):
    task = sending.celery_app().tasks["eventlib.process"]
    event_id, payload = payload_of(shop.Refund, {"declined": True})

    assert task.apply(args=("shop.Refund", payload)).get() is None

    assert shop.CALLS == [
        "first",
        "charge",
        "last",
        "notify",
        "audit_everything",
        "shop_stats",
    ]
    assert dead_letters() == [
        (
            "shop.Refund",
            event_id,
            payload,
            "shop.events.Refund.charge",
            1,
            "RuntimeError: card declined",
        )
    ]
