"""``eventlib.testing`` and the pytest plugin ``eventlib.contrib.pytest``."""

from __future__ import annotations

import importlib
from datetime import timedelta

import pytest

import eventlib
from eventlib.processing import ProcessResult
from eventlib.sending import spool_status
from eventlib.testing import CapturedEvent, capture_events

pytest_plugins = ["pytester"]

SHOP_EVENTS = """
    import eventlib
    from eventlib import BaseEvent, handler

    CALLS = []


    class Refund(BaseEvent):
        def clean(self):
            self.require_data_keys(['order_id'])

        @handler
        def record(self):
            CALLS.append(self.data)


    class Sale(BaseEvent):
        pass


    class Order(BaseEvent):
        @handler
        def refund_it(self):
            eventlib.log('shop.Refund', {'order_id': self.data['order_id']})
"""

#: A broker nobody listens on: sending to it fails after well under a second.
UNREACHABLE_BROKER = "amqp://guest:guest@127.0.0.1:1//"


@pytest.fixture
def shop(isolation):
    isolation.write("shop/events.py", SHOP_EVENTS)
    eventlib.configure(always_eager=False, broker_url=UNREACHABLE_BROKER)


def calls() -> list:
    return importlib.import_module("shop.events").CALLS


def test_the_broker_is_unreachable_without_a_recorder(shop):
    """What the tests below rely on: a send would not reach a broker (the
    event goes to the spool)."""
    eventlib.log("shop.Refund", {"order_id": 1})

    assert eventlib.flush(timeout=10) is False
    assert spool_status().count == 1


# ------------------------------------------------------------- recording ---


def test_capture_records_what_a_handler_would_see_without_sending(shop):
    with capture_events() as events:
        event_id = eventlib.log("shop.Refund", {"order_id": 1, "items": (1, 2)})

    [captured] = events
    assert isinstance(captured, CapturedEvent)
    assert captured.name == "shop.Refund"
    assert captured.id == event_id
    assert captured.data == {"order_id": 1, "items": [1, 2]}
    assert captured.created_at.tzinfo is not None
    assert captured.created_at.utcoffset() == timedelta(0)
    assert captured.result is None
    assert calls() == []


def test_capture_still_validates_and_serializes(shop):
    eventlib.configure(raise_errors=True)

    with capture_events() as events:
        with pytest.raises(eventlib.ValidationError):
            eventlib.log("shop.Refund", {})
        with pytest.raises(eventlib.SerializationError):
            eventlib.log("shop.Refund", {"order_id": 1, "when": object()})

    assert len(events) == 0


def test_capture_can_run_the_handlers(shop):
    with capture_events(run_handlers=True) as events:
        event_id = eventlib.log("shop.Refund", {"order_id": 1, "items": (1, 2)})

    [captured] = events
    assert calls() == [{"order_id": 1, "items": [1, 2]}]
    assert isinstance(captured.result, ProcessResult)
    assert captured.result == ProcessResult("shop.Refund", event_id, ("shop.events.Refund.record",))


def test_events_logged_by_handlers_are_recorded_in_the_order_they_were_logged(shop):
    """A handler run by the recorder logs a follow-up event: the recorder
    promises the order of logging, so the event that caused it comes first."""
    with capture_events(run_handlers=True) as events:
        order_id = eventlib.log("shop.Order", {"order_id": 1})

    assert [e.name for e in events] == ["shop.Order", "shop.Refund"]
    assert events.assert_logged("shop.Order").id == order_id
    assert calls() == [{"order_id": 1}]


# ------------------------------------------------------------- recorder ---


def test_assert_logged_returns_the_first_match(shop):
    with capture_events() as events:
        first = eventlib.log("shop.Refund", {"order_id": 1})
        second = eventlib.log("shop.Refund", {"order_id": 2})

    assert events.assert_logged("shop.Refund").id == first
    assert events.assert_logged("shop.Refund", {"order_id": 2}).id == second


def test_assert_logged_lists_what_was_logged(shop):
    with capture_events() as events:
        eventlib.log("shop.Refund", {"order_id": 1})
        eventlib.log("shop.Sale", {"total": 3})

    with pytest.raises(AssertionError) as error:
        events.assert_logged("shop.Refund", {"order_id": 2})
    assert str(error.value) == (
        "expected the event shop.Refund {'order_id': 2} to be logged; logged:\n"
        "  shop.Refund {'order_id': 1}\n"
        "  shop.Sale {'total': 3}"
    )

    with pytest.raises(AssertionError) as error:
        events.assert_logged("shop.Nope")
    assert str(error.value) == (
        "expected the event shop.Nope to be logged; logged:\n"
        "  shop.Refund {'order_id': 1}\n"
        "  shop.Sale {'total': 3}"
    )


def test_assert_logged_when_nothing_was_logged(shop):
    with capture_events() as events:
        pass

    with pytest.raises(AssertionError) as error:
        events.assert_logged("shop.Refund")
    assert str(error.value) == "expected the event shop.Refund to be logged; logged:\n  nothing"


def test_named_len_iteration_and_clear(shop):
    with capture_events() as events:
        refund = eventlib.log("shop.Refund", {"order_id": 1})
        sale = eventlib.log("shop.Sale", {})
        assert len(events) == 2
        assert [e.id for e in events] == [refund, sale]
        assert [e.id for e in events.named("shop.Sale")] == [sale]
        assert events.named("shop.Nope") == []

        events.clear()
        assert len(events) == 0
        later = eventlib.log("shop.Sale", {})

    assert [e.id for e in events] == [later]


def test_innermost_recorder_records(shop):
    with capture_events() as outer:
        before = eventlib.log("shop.Sale", {})
        with capture_events() as inner:
            nested = eventlib.log("shop.Sale", {})
        after = eventlib.log("shop.Sale", {})

    assert [e.id for e in inner] == [nested]
    assert [e.id for e in outer] == [before, after]


def test_recorder_is_removed_even_when_the_block_raises(shop):
    with capture_events() as outer:
        with pytest.raises(RuntimeError), capture_events() as inner:
            raise RuntimeError("boom")
        recorded = eventlib.log("shop.Sale", {})

    assert len(inner) == 0
    assert [e.id for e in outer] == [recorded]
    # No recorder left: log goes to the (eager) task again.
    eventlib.configure(always_eager=True)
    eventlib.log("shop.Refund", {"order_id": 1})
    assert calls() == [{"order_id": 1}]


# ---------------------------------------------------------- pytest plugin ---

PLUGIN_EVENTS = """
    from eventlib import BaseEvent, handler

    CALLS = []


    class Refund(BaseEvent):
        @handler
        def record(self):
            CALLS.append(self.data)
"""

PLUGIN_TESTS = """
    import eventlib
    from eventlib.sending import sender
    from shop import events


    def test_logged(eventlib_logged):
        event_id = eventlib.log('shop.Refund', {'items': (1, 2)})
        captured = eventlib_logged.assert_logged('shop.Refund', {'items': [1, 2]})
        assert captured.id == event_id
        assert captured.result is None
        assert events.CALLS == []


    def test_processed(eventlib_processed):
        eventlib.log('shop.Refund', {'items': (1, 2)})
        captured = eventlib_processed.assert_logged('shop.Refund')
        assert captured.result.succeeded == ('shop.events.Refund.record',)
        assert events.CALLS == [{'items': [1, 2]}]


    def test_no_recorder_is_left_behind():
        assert sender._recorders == []
"""


@pytest.fixture
def plugin_project(pytester):
    pytester.mkpydir("shop")
    pytester.makepyfile(**{"shop/events": PLUGIN_EVENTS, "test_refunds": PLUGIN_TESTS})
    return pytester


def test_plugin_fixtures_are_installed_by_the_entry_point(plugin_project):
    result = plugin_project.runpytest_subprocess()

    result.assert_outcomes(passed=3)


def test_plugin_fixtures_come_from_the_eventlib_entry_point(plugin_project):
    """Disabling the entry point by its name removes the fixtures."""
    result = plugin_project.runpytest_subprocess("-p", "no:eventlib")

    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(["*fixture 'eventlib_logged' not found*"])
