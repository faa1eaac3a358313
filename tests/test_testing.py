"""``eventlib.testing`` and the pytest plugin ``eventlib.contrib.pytest``."""

from __future__ import annotations

import importlib
import logging
import os
import sys
from datetime import timedelta

import pytest

import eventlib
from eventlib import (
    SerializationError,
    broadcast,
    conf,
    deadletters,
    dispatch,
    metrics,
    testing,
)
from eventlib.discovery import find_event
from eventlib.processing import ProcessResult
from eventlib.registry import EXTERNAL_HANDLER_REGISTRY, HANDLER_REGISTRY, handler_name
from eventlib.sending import spool_status
from eventlib.serialization import dumps
from eventlib.testing import CapturedEvent, Failure, capture_events, dead_letters_in

pytest_plugins = ["pytester"]

SHOP_EVENTS = """
    import eventlib
    from eventlib import BaseEvent, handler

    CALLS = []
    ATTEMPTS = []


    class Refund(BaseEvent):
        def clean(self):
            self.require_data_keys(['order_id'])

        @handler
        def record(self):
            CALLS.append(self.data)


    class Sale(BaseEvent):
        pass


    class Charge(BaseEvent):
        @handler
        def charge(self):
            raise RuntimeError(f"card declined for order {self.data['order_id']}")


    class Flaky(BaseEvent):
        @handler(retries=1, backoff=0)
        def call(self):
            ATTEMPTS.append(self.id)
            if len(ATTEMPTS) == 1:
                raise ConnectionError('try again')


    class Order(BaseEvent):
        @handler
        def refund_it(self):
            eventlib.log('shop.Refund', {'order_id': self.data['order_id']})
"""

#: A broker nobody listens on: sending to it fails after well under a second.
UNREACHABLE_BROKER = "amqp://guest:guest@127.0.0.1:1//"


@pytest.fixture
def shop(shop):
    """The app ``shop``, its broker unreachable."""
    eventlib.configure(always_eager=False, broker_url=UNREACHABLE_BROKER)
    return shop


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


def test_assert_logged_matches_part_of_the_data(shop):
    with capture_events() as events:
        event_id = eventlib.log(
            "shop.Sale", {"order_id": 1, "customer": {"id": 3, "name": "Ada"}, "lines": (1, 2)}
        )

    assert events.assert_logged("shop.Sale", {"order_id": 1}, partial=True).id == event_id
    assert events.assert_logged("shop.Sale", {"customer": {"id": 3}}, partial=True).id == event_id
    assert events.assert_logged("shop.Sale", {"lines": [1, 2]}, partial=True).id == event_id
    for not_part in ({"order_id": 2}, {"customer": {"id": 4}}, {"lines": [1]}, {"x": None}):
        with pytest.raises(AssertionError) as error:
            events.assert_logged("shop.Sale", not_part, partial=True)
        assert str(error.value).startswith(
            f"expected the event shop.Sale with {not_part!r} in its data to be logged; logged:\n"
            "  shop.Sale {'order_id': 1, "
        )
    with pytest.raises(AssertionError):
        events.assert_logged("shop.Sale", {"order_id": 1})  # not the whole data


def test_assert_not_logged(shop):
    with capture_events() as events:
        eventlib.log("shop.Refund", {"order_id": 1, "amount": 3})

    events.assert_not_logged("shop.Sale")
    events.assert_not_logged("shop.Refund", {"order_id": 1})
    events.assert_not_logged("shop.Refund", {"order_id": 2}, partial=True)
    with pytest.raises(AssertionError) as error:
        events.assert_not_logged("shop.Refund", {"order_id": 1}, partial=True)
    assert str(error.value) == (
        "expected no event shop.Refund with {'order_id': 1} in its data to be logged; logged:\n"
        "  shop.Refund {'order_id': 1, 'amount': 3}"
    )
    with pytest.raises(AssertionError) as error:
        events.assert_not_logged("shop.Refund")
    assert str(error.value) == (
        "expected no event shop.Refund to be logged; logged:\n"
        "  shop.Refund {'order_id': 1, 'amount': 3}"
    )


# ------------------------------------------------------------- failures ---


def test_a_handler_that_fails_is_kept_with_its_traceback(shop):
    with capture_events(run_handlers=True) as events:
        event_id = eventlib.log("shop.Charge", {"order_id": 7})

    [failure] = events.failures
    assert isinstance(failure, Failure)
    assert (failure.event, failure.event_id, failure.handler) == (
        "shop.Charge",
        event_id,
        "shop.events.Charge.charge",
    )
    assert (
        failure.message
        == f"Handler shop.events.Charge.charge failed on event shop.Charge (id {event_id})"
    )
    assert failure.traceback.startswith("Traceback (most recent call last):\n")
    assert "raise RuntimeError(f\"card declined for order {self.data['order_id']}\")" in (
        failure.traceback
    )
    assert failure.traceback.endswith("RuntimeError: card declined for order 7\n")
    with pytest.raises(AssertionError) as error:
        events.assert_no_failures()
    assert str(error.value) == (
        "eventlib reported 1 failure (when the test expects it, run the code that fails in "
        f"`with recorder.expect_failures():`):\n\n{failure.message}\n{failure.traceback.rstrip()}"
    )
    # Reported once.
    events.assert_no_failures()


def test_data_log_refuses_is_a_failure_that_says_where_it_was_logged(shop):
    with capture_events() as events:
        assert eventlib.log("shop.Refund", {"amount": 3}) is None

    [failure] = events.failures
    assert (failure.event, failure.handler) == ("shop.Refund", None)
    assert failure.message == (
        "Event shop.Refund was not logged, its data is invalid: "
        "The following keys are missing: order_id (data keys: amount)"
    )
    assert failure.traceback.startswith(f'logged at:\n  File "{__file__}", line ')
    assert failure.traceback.endswith(
        "in test_data_log_refuses_is_a_failure_that_says_where_it_was_logged\n"
        '    assert eventlib.log("shop.Refund", {"amount": 3}) is None\n'
    )


def test_a_retry_that_succeeds_is_no_failure(shop):
    with capture_events(run_handlers=True) as events:
        eventlib.log("shop.Flaky", {})

    assert len(importlib.import_module("shop.events").ATTEMPTS) == 2
    assert events.failures == []
    events.assert_no_failures()


def test_expected_failures_are_not_reported(shop):
    with capture_events(run_handlers=True) as events:
        with events.expect_failures() as failures:
            eventlib.log("shop.Charge", {"order_id": 7})
            eventlib.log("shop.Refund", {})
        eventlib.log("shop.Refund", {"order_id": 1})

    assert [(f.event, f.handler) for f in failures] == [
        ("shop.Charge", "shop.events.Charge.charge"),
        ("shop.Refund", None),
    ]
    assert events.failures == failures
    events.assert_no_failures()


def test_expecting_failures_when_nothing_fails_is_an_assertion_error(shop):
    with (
        capture_events(run_handlers=True) as events,
        pytest.raises(AssertionError) as error,
        events.expect_failures(),
    ):
        eventlib.log("shop.Refund", {"order_id": 1})

    assert str(error.value) == (
        "expected a failure (a handler that fails, data that is refused); nothing failed"
    )


def test_the_innermost_recorder_gets_the_failures(shop):
    with capture_events(run_handlers=True) as outer:
        with capture_events(run_handlers=True) as inner:
            eventlib.log("shop.Charge", {"order_id": 1})
        eventlib.log("shop.Charge", {"order_id": 2})

    assert [f.traceback.splitlines()[-1] for f in inner.failures] == [
        "RuntimeError: card declined for order 1"
    ]
    assert [f.traceback.splitlines()[-1] for f in outer.failures] == [
        "RuntimeError: card declined for order 2"
    ]


def test_failures_are_seen_where_logging_drops_them(shop):
    eventlib_logger = logging.getLogger("eventlib")
    eventlib_logger.setLevel(logging.CRITICAL)
    try:
        with capture_events(run_handlers=True) as events:
            eventlib.log("shop.Charge", {"order_id": 1})
        assert eventlib_logger.level == logging.CRITICAL
    finally:
        eventlib_logger.setLevel(logging.NOTSET)

    assert len(events.failures) == 1


# ---------------------------------------------------- waiting for commit ---


def test_events_held_for_a_commit_are_counted_until_it_comes(shop):
    held = []
    dispatch.set_transaction_hook(held.append)

    with capture_events() as events:
        assert dispatch.transaction_hook() is not held.append
        eventlib.log("shop.Refund", {"order_id": 1}, on_commit=True)
        eventlib.log("shop.Refund", {"order_id": 2}, on_commit=True)
        assert (len(held), events.waiting_for_commit, len(events)) == (2, 2, 0)
        with pytest.raises(AssertionError) as error:
            events.assert_logged("shop.Refund", {"order_id": 1})
        events.assert_not_logged("shop.Refund")

        held.pop(0)()  # the commit of the first
        assert (events.waiting_for_commit, len(events)) == (1, 1)
        events.assert_logged("shop.Refund", {"order_id": 1})

    assert dispatch.transaction_hook() == held.append
    assert str(error.value) == (
        "expected the event shop.Refund {'order_id': 1} to be logged; logged:\n"
        "  nothing\n"
        "2 events are waiting for a database commit that has not come "
        "(log(..., on_commit=True)): run the commit callbacks: with pytest-django, "
        "django_capture_on_commit_callbacks(execute=True); in a Django TestCase, "
        "self.captureOnCommitCallbacks(execute=True); or use a test that commits "
        "(transaction=True, TransactionTestCase)"
    )


def test_an_event_sent_at_once_by_the_hook_is_not_waiting(shop):
    dispatch.set_transaction_hook(lambda callback: callback())  # no transaction

    with capture_events() as events:
        eventlib.log("shop.Refund", {"order_id": 1}, on_commit=True)

    assert events.waiting_for_commit == 0
    events.assert_logged("shop.Refund", {"order_id": 1})


# ----------------------------------------------------------- dead letters ---


def test_dead_letters_in_a_directory_then_back_to_the_environment_s(shop, tmp_path):
    project_url = conf.get_settings().dead_letter_url
    assert project_url == os.environ["EVENTLIB_DEAD_LETTER_URL"]

    with dead_letters_in(tmp_path) as url, capture_events(run_handlers=True) as events:
        assert url == f"sqlite:///{tmp_path.resolve()}/eventlib-dead-letters.sqlite"
        assert conf.get_settings().dead_letter_url == url
        with events.expect_failures():
            eventlib.log("shop.Charge", {"order_id": 1})
        [letter] = deadletters.list_dead_letters()

    assert letter.handler == "shop.events.Charge.charge"
    assert conf.get_settings().dead_letter_url == project_url
    assert os.environ["EVENTLIB_DEAD_LETTER_URL"] == project_url
    assert deadletters.list_dead_letters() == []
    # Still the environment's, not a value fixed in code.
    os.environ["EVENTLIB_DEAD_LETTER_URL"] = url
    assert conf.configure().dead_letter_url == url


def test_dead_letters_in_a_directory_then_back_to_the_configured_url(shop, tmp_path):
    configured = f"sqlite:///{tmp_path / 'configured.sqlite'}"
    eventlib.configure(dead_letter_url=configured)

    with dead_letters_in(tmp_path / "test") as url:
        assert conf.get_settings().dead_letter_url == url != configured

    assert conf.get_settings().dead_letter_url == configured


# -------------------------------------------------------------- isolation ---


class Point:
    def __init__(self, x):
        self.x = x


def declare_all_kinds() -> list:
    """A transaction hook, a registered type and a handler; returns the hook's list."""
    held = []
    dispatch.set_transaction_hook(held.append)
    eventlib.register_type(Point, encode=lambda p: p.x, decode=Point, tag="test.point")

    @eventlib.handler("shop.Refund")
    def notify(event):
        pass

    return held


def test_reset_puts_the_process_state_back_and_keeps_declarations(isolation):
    path = isolation.write("shop/events.py", SHOP_EVENTS)
    first = find_event("shop.Refund")
    held = declare_all_kinds()
    eventlib.configure(queue="refunds")
    metrics.increment("logged")
    # A new shop/events.py module, which only a lookup that forgot the class imports.
    sys.modules.pop("shop.events")
    path.write_text(path.read_text())

    testing.reset()

    assert conf.get_settings().queue == conf.Settings().queue
    assert metrics.snapshot()["logged"] == 0
    refund = find_event("shop.Refund")
    assert refund is not first
    assert dispatch.transaction_hook() == held.append
    assert dumps(Point(3)) == '{"__eventlib__":"test.point","value":3}'
    assert [handler_name(f) for f in HANDLER_REGISTRY[refund]][-1].endswith("notify")


def test_isolated_starts_afresh_and_forgets_what_the_block_declared(isolation):
    isolation.write("shop/events.py", SHOP_EVENTS)
    eventlib.configure(queue="refunds")

    default_runner = dispatch.sync_runner()

    with testing.isolated():
        assert conf.get_settings().queue == conf.Settings().queue
        refund = find_event("shop.Refund")
        held = declare_all_kinds()
        eventlib.external_handler("shop.*")(held.append)
        dispatch.set_sync_runner(held.append)
        broadcast.set_listening_group("billing")
        metrics.increment("logged")
        assert dispatch.transaction_hook() == held.append

    assert refund not in HANDLER_REGISTRY
    assert EXTERNAL_HANDLER_REGISTRY.handlers_of("shop.Refund") == ()
    assert dispatch.transaction_hook() is None
    assert dispatch.sync_runner() is default_runner
    assert broadcast.listening_group() is None
    with pytest.raises(SerializationError, match="cannot serialize object of type Point"):
        dumps(Point(3))
    assert metrics.snapshot()["logged"] == 0


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


# ------------------------------------------- a user's tests, run by pytest ---


def run_users_tests(pytester: pytest.Pytester, **files: str) -> pytest.RunResult:
    """Write the user's test files and run pytest on the project, in a
    process of its own."""
    pytester.makepyfile(**files)
    return pytester.runpytest_subprocess("-p", "no:cacheprovider")


@pytest.fixture
def user_project(pytester, monkeypatch):
    """A project of a user's, ``shop``, in pytest's temporary folder, with
    its own dead-letter database named by the environment, as in production."""
    pytester.mkpydir("shop")
    pytester.makepyfile(**{"shop/events": SHOP_EVENTS})
    monkeypatch.setenv(
        "EVENTLIB_DEAD_LETTER_URL", f"sqlite:///{pytester.path / 'project-dead-letters.sqlite'}"
    )
    return pytester


FAILURE_TESTS = """
    import eventlib


    def test_a_handler_that_raises(eventlib_processed):
        eventlib.log("shop.Charge", {"order_id": 7})


    def test_invalid_data(eventlib_logged):
        eventlib.log("shop.Refund", {"amount": 3})


    def test_a_handler_that_raises_as_expected(eventlib_processed):
        with eventlib_processed.expect_failures() as failures:
            eventlib.log("shop.Charge", {"order_id": 8})
        [failure] = failures
        assert failure.handler == "shop.events.Charge.charge"
        assert failure.traceback.endswith("RuntimeError: card declined for order 8\\n")


    def test_invalid_data_as_expected(eventlib_logged):
        with eventlib_logged.expect_failures() as failures:
            eventlib.log("shop.Refund", {})
        assert "order_id" in failures[0].message


    def test_expecting_a_failure_that_does_not_come(eventlib_processed):
        with eventlib_processed.expect_failures():
            eventlib.log("shop.Refund", {"order_id": 1})


    def test_a_retry_that_succeeds(eventlib_processed):
        eventlib.log("shop.Flaky", {})


    def test_a_test_that_fails_on_its_own_also_shows_the_failures(eventlib_processed):
        eventlib.log("shop.Charge", {"order_id": 9})
        eventlib_processed.assert_logged("shop.Sale")
"""


def test_fixtures_fail_the_users_test_with_the_handler_s_traceback(user_project):
    result = run_users_tests(user_project, test_shop=FAILURE_TESTS)

    result.assert_outcomes(passed=3, failed=4)
    result.stdout.fnmatch_lines(
        [
            "*_ test_a_handler_that_raises _*",
            "eventlib reported 1 failure (when the test expects it, run the code that fails "
            "in `with eventlib_processed.expect_failures():`):",
            "",
            "Handler shop.events.Charge.charge failed on event shop.Charge (id *)",
            "Traceback (most recent call last):",
            '  File "*shop/events.py", line *, in charge',
            '    raise RuntimeError(f"card declined for order *',
            "RuntimeError: card declined for order 7",
            "*- Captured log call -*",
            "*_ test_invalid_data _*",
            "eventlib reported 1 failure (when the test expects it, run the code that fails "
            "in `with eventlib_logged.expect_failures():`):",
            "",
            "Event shop.Refund was not logged, its data is invalid: The following keys are "
            "missing: order_id (data keys: amount)",
            "logged at:",
            '  File "*test_shop.py", line 9, in test_invalid_data',
            '    eventlib.log("shop.Refund", {"amount": 3})',
            "*_ test_expecting_a_failure_that_does_not_come _*",
            "*AssertionError: expected a failure (a handler that fails, data that is refused); "
            "nothing failed",
            "*_ test_a_test_that_fails_on_its_own_also_shows_the_failures _*",
            "*AssertionError: expected the event shop.Sale to be logged; logged:",
            "*shop.Charge {'order_id': 9}",
            "*eventlib reported 1 failure*",
            "*Handler shop.events.Charge.charge failed on event shop.Charge*",
            "*RuntimeError: card declined for order 9",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "FAILED test_shop.py::test_a_handler_that_raises - Failed: eventlib reported*",
            "FAILED test_shop.py::test_invalid_data - Failed: eventlib reported*",
            "FAILED test_shop.py::test_expecting_a_failure_that_does_not_come*",
            "FAILED test_shop.py::test_a_test_that_fails_on_its_own_also_shows_the_failures*",
        ]
    )


DEAD_LETTER_TESTS = """
    import os
    from pathlib import Path

    import eventlib
    from eventlib import conf, deadletters

    PROJECT_URL = os.environ["EVENTLIB_DEAD_LETTER_URL"]


    def test_dead_letters_go_to_a_temporary_database(eventlib_processed, tmp_path_factory):
        with eventlib_processed.expect_failures():
            eventlib.log("shop.Charge", {"order_id": 7})
        [letter] = deadletters.list_dead_letters()
        assert letter.handler == "shop.events.Charge.charge"
        url = conf.get_settings().dead_letter_url
        assert url != PROJECT_URL
        assert Path(url.removeprefix("sqlite:///")).is_relative_to(
            tmp_path_factory.getbasetemp().resolve()
        )


    def test_the_setting_is_given_back_after_the_test():
        assert conf.get_settings().dead_letter_url == PROJECT_URL
"""


@pytest.mark.parametrize("where", ["environment", "configure", "default"])
def test_dead_letters_of_a_users_test_never_reach_the_project_s_database(
    user_project, monkeypatch, where
):
    project_url = f"sqlite:///{user_project.path / 'project-dead-letters.sqlite'}"
    if where == "configure":
        user_project.makeconftest(
            f"import eventlib\n\neventlib.configure(dead_letter_url={project_url!r})\n"
        )
    if where == "default":
        # eventlib's default: a file in the folder the tests run in.
        monkeypatch.setenv("EVENTLIB_DEAD_LETTER_URL", "")  # unset, as eventlib reads it
        project_url = conf.Settings().dead_letter_url
    result = run_users_tests(
        user_project,
        test_shop=DEAD_LETTER_TESTS.replace(
            'os.environ["EVENTLIB_DEAD_LETTER_URL"]', repr(project_url)
        ),
    )

    result.assert_outcomes(passed=2)
    # Neither the project's database nor the default one in its folder: one
    # database, in the run's temporary folder (pytester's basetemp).
    [database] = user_project.path.rglob("*.sqlite")
    assert database.relative_to(user_project.path).parts[0] == "runpytest-0"


MATCHING_TESTS = """
    import eventlib


    def test_part_of_the_data(eventlib_logged):
        eventlib.log("shop.Refund", {"order_id": 1, "customer": {"id": 3, "name": "Ada"}})
        eventlib_logged.assert_logged("shop.Refund", {"customer": {"id": 3}}, partial=True)
        eventlib_logged.assert_not_logged("shop.Refund", {"order_id": 2}, partial=True)
        eventlib_logged.assert_not_logged("shop.Sale")


    def test_part_that_is_not_there(eventlib_logged):
        eventlib.log("shop.Refund", {"order_id": 1, "amount": 3})
        eventlib_logged.assert_logged("shop.Refund", {"order_id": 2}, partial=True)


    def test_logged_when_it_should_not_be(eventlib_logged):
        eventlib.log("shop.Refund", {"order_id": 1, "amount": 3})
        eventlib_logged.assert_not_logged("shop.Refund", {"order_id": 1}, partial=True)
"""


def test_a_users_test_matches_part_of_the_data_and_what_was_not_logged(user_project):
    result = run_users_tests(user_project, test_shop=MATCHING_TESTS)

    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*_ test_part_that_is_not_there _*",
            "E * AssertionError: expected the event shop.Refund with {'order_id': 2} in its data "
            "to be logged; logged:",
            "E *   shop.Refund {'order_id': 1, 'amount': 3}",
            "*_ test_logged_when_it_should_not_be _*",
            "E * AssertionError: expected no event shop.Refund with {'order_id': 1} in its data "
            "to be logged; logged:",
            "E *   shop.Refund {'order_id': 1, 'amount': 3}",
        ]
    )


# ------------------------------------------- pytest-django, on_commit=True ---

DJANGO_SETTINGS = """
    SECRET_KEY = "test"
    INSTALLED_APPS = ["django.contrib.contenttypes", "eventlib.contrib.django", "shop"]
    DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": "db.sqlite3"}}
    USE_TZ = True
"""

ON_COMMIT_TESTS = """
    import pytest
    from django.db import transaction

    import eventlib


    def place_order():
        with transaction.atomic():
            eventlib.log("shop.Refund", {"order_id": 1}, on_commit=True)


    @pytest.mark.django_db
    def test_the_commit_never_comes(eventlib_logged):
        place_order()
        eventlib_logged.assert_logged("shop.Refund", {"order_id": 1})


    @pytest.mark.django_db
    def test_the_commit_callbacks_run(eventlib_logged, django_capture_on_commit_callbacks):
        with django_capture_on_commit_callbacks(execute=True):
            place_order()
        eventlib_logged.assert_logged("shop.Refund", {"order_id": 1})


    @pytest.mark.django_db(transaction=True)
    def test_a_test_that_commits(eventlib_logged):
        place_order()
        eventlib_logged.assert_logged("shop.Refund", {"order_id": 1})


    @pytest.mark.django_db
    def test_a_rollback_sends_nothing(eventlib_logged, django_capture_on_commit_callbacks):
        with django_capture_on_commit_callbacks(execute=True):
            with pytest.raises(RuntimeError), transaction.atomic():
                eventlib.log("shop.Refund", {"order_id": 1}, on_commit=True)
                raise RuntimeError("rolled back")
        eventlib_logged.assert_not_logged("shop.Refund")
"""


def test_a_pytest_django_test_says_events_wait_for_a_commit(user_project):
    user_project.mkpydir("proj")
    user_project.makeini("[pytest]\nDJANGO_SETTINGS_MODULE = proj.settings\npythonpath = .\n")

    result = run_users_tests(
        user_project, **{"proj/settings": DJANGO_SETTINGS, "test_orders": ON_COMMIT_TESTS}
    )

    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_the_commit_never_comes _*",
            "E * AssertionError: expected the event shop.Refund {'order_id': 1} to be logged; "
            "logged:",
            "E *   nothing",
            "E * 1 event is waiting for a database commit that has not come "
            "(log(..., on_commit=True)): run the commit callbacks: with pytest-django, "
            "django_capture_on_commit_callbacks(execute=True); in a Django TestCase, "
            "self.captureOnCommitCallbacks(execute=True); or use a test that commits "
            "(transaction=True, TransactionTestCase)",
            "FAILED test_orders.py::test_the_commit_never_comes*",
        ]
    )
