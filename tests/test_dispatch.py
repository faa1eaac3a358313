"""``eventlib.log``: validation, serialization and sending, eager or through Celery."""

from __future__ import annotations

import importlib
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from celery import Celery
from sure import expect

import eventlib
from eventlib import brokers, conf, dispatch, sending
from eventlib.serialization import deserialize_event

SHOP_EVENTS = """
    from eventlib import BaseEvent, ValidationError, handler

    RECEIVED = []


    class Refund(BaseEvent):
        def clean(self):
            self.require_data_keys(['order_id'])

        @handler
        def record(self):
            RECEIVED.append(self)


    class Signup(BaseEvent):
        def clean(self):
            # Normalises the email and drops every other key.
            return {'email': self.data['email'].strip().lower()}

        @handler
        def record(self):
            RECEIVED.append(self)


    class User:  # something JSON cannot carry
        def __init__(self, id):
            self.id = id


    class Visit(BaseEvent):
        def clean(self):
            # Replaces the user by its id.  It runs again in the worker, on
            # data that holds user_id and no user.
            data = dict(self.data)
            if 'user' in data:
                data['user_id'] = data.pop('user').id
            return data

        @handler
        def record(self):
            RECEIVED.append(self)


    class Order(BaseEvent):
        def clean(self):
            # Passes in log(), fails in the worker: JSON turns the tuple into a list.
            items = self.data.get('items')
            if not isinstance(items, tuple):
                raise ValidationError(f'items must be a tuple, not {type(items).__name__}')

        @handler
        def record(self):
            RECEIVED.append(self)
"""


def received() -> list:
    """The events the handlers of ``shop/events.py`` received."""
    return importlib.import_module("shop.events").RECEIVED


def eventlib_errors(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "eventlib" and r.levelno == logging.ERROR]


# ------------------------------------------------------------ eager mode ---


def test_eager_log_returns_the_id_the_handler_sees(shop):
    eventlib.configure(always_eager=True)

    before = datetime.now(UTC)

    event_id = eventlib.log("shop.Refund", {"order_id": 7})

    assert isinstance(event_id, str)
    [event] = received()
    assert event.id == event_id
    assert event.name == "shop.Refund"
    assert event.created_at.utcoffset() == timedelta(0)
    assert before <= event.created_at <= datetime.now(UTC)


def test_eager_handler_sees_the_data_after_a_json_round_trip(shop):
    eventlib.configure(always_eager=True)
    at = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)

    eventlib.log(
        "shop.Refund", {"order_id": 7, "items": (1, 2), "amount": Decimal("9.99"), "at": at}
    )

    [event] = received()
    assert event.data == {"order_id": 7, "items": [1, 2], "amount": Decimal("9.99"), "at": at}
    assert type(event.data["items"]) is list
    assert type(event.data["amount"]) is Decimal
    assert type(event.data["at"]) is datetime


def test_eager_handler_gets_a_fresh_event_per_log(shop):
    eventlib.configure(always_eager=True)

    first = eventlib.log("shop.Refund", {"order_id": 1})
    second = eventlib.log("shop.Refund", {"order_id": 2})

    assert first != second
    assert [(e.id, e.data) for e in received()] == [
        (first, {"order_id": 1}),
        (second, {"order_id": 2}),
    ]


# ------------------------------------------------------------------ data ---


@pytest.mark.parametrize(("data", "kind"), [([("order_id", 1)], "list"), ("order_id=1", "str")])
def test_data_must_be_a_mapping(shop, data, kind):
    eventlib.configure(always_eager=True)

    with pytest.raises(TypeError) as error:
        eventlib.log("shop.Refund", data)

    assert str(error.value) == (
        f"eventlib.log('shop.Refund', data): data must be a mapping, not {kind}"
    )
    assert received() == []


def test_data_none_means_an_empty_dict(isolation):
    isolation.write(
        "shop/events.py",
        """
        from eventlib import BaseEvent, handler

        RECEIVED = []


        class Ping(BaseEvent):
            @handler
            def record(self):
                RECEIVED.append(self.data)
        """,
    )
    eventlib.configure(always_eager=True)

    eventlib.log("shop.Ping")
    eventlib.log("shop.Ping", None)

    assert received() == [{}, {}]


# --------------------------------------------------------------- refusals ---


def test_unknown_event(shop):
    eventlib.configure(always_eager=True)

    with pytest.raises(eventlib.EventNotFound) as error:
        eventlib.log("shop.Nope", {})

    assert str(error.value) == "There is no event named Nope in the shop app"


def test_unknown_app(isolation):
    with pytest.raises(eventlib.EventNotFound) as error:
        eventlib.log("nowhere.Refund", {})

    assert str(error.value) == "There is no event named Refund in the nowhere app"


@pytest.mark.parametrize("name", ["nodots", "shop.", ".Refund", "shop..Refund", "shop.Re-fund"])
def test_invalid_event_name(name):
    with pytest.raises(eventlib.InvalidEventName) as error:
        eventlib.log(name, {})

    assert str(error.value) == (
        f"Invalid event name {name!r}: expected 'app.EventName', "
        "where the app may be dotted and every part is a Python identifier"
    )


def test_unserializable_value_raises_in_the_caller_and_nothing_runs(shop):
    eventlib.configure(always_eager=True)

    with pytest.raises(eventlib.SerializationError) as error:
        eventlib.log("shop.Refund", {"order_id": 7, "user": {"joined": object()}})

    assert isinstance(error.value, TypeError)
    assert str(error.value) == "data['user']['joined']: cannot serialize object of type object"
    assert received() == []


# ------------------------------------------------------------- validation ---


def test_invalid_data_raises_in_eager_mode_with_a_note(shop, caplog):
    eventlib.configure(always_eager=True)

    with pytest.raises(eventlib.ValidationError) as error:
        eventlib.log("shop.Refund", {"amount": 3})

    assert str(error.value) == "The following keys are missing: order_id"
    assert error.value.__notes__ == [
        "raised by the clean() of the event shop.Refund; nothing was sent"
    ]
    assert received() == []
    assert eventlib_errors(caplog) == []


def test_raise_errors_applies_outside_eager_mode(shop):
    eventlib.configure(always_eager=False, raise_errors=True)

    with pytest.raises(eventlib.ValidationError):
        eventlib.log("shop.Refund", {})


def test_invalid_data_is_logged_when_raise_errors_is_off(shop, caplog):
    eventlib.configure(always_eager=True, raise_errors=False)

    result = eventlib.log("shop.Refund", {"amount": 3, "reason": "late"})

    assert result is None
    assert received() == []
    [record] = eventlib_errors(caplog)
    assert record.getMessage() == (
        "Event shop.Refund was not logged, its data is invalid: "
        "The following keys are missing: order_id (data keys: amount, reason)"
    )
    assert record.eventlib_event == "shop.Refund"


def test_invalid_empty_data_is_logged_with_no_keys(shop, caplog):
    eventlib.configure(always_eager=True, raise_errors=False)

    assert eventlib.log("shop.Refund") is None

    [record] = eventlib_errors(caplog)
    assert record.getMessage().endswith("(data keys: none)")


def test_clean_can_replace_the_data(shop):
    eventlib.configure(always_eager=True)

    eventlib.log("shop.Signup", {"email": "  Ann@Example.COM ", "password": "hunter2"})

    [event] = received()
    assert event.data == {"email": "ann@example.com"}


# clean() runs before serialization: invalid data is a ValidationError even
# when it also holds a value JSON cannot carry, and clean() may replace such a
# value by one it can.


def test_invalid_data_is_refused_before_its_unserializable_value_is_seen(shop):
    eventlib.configure(always_eager=True)

    with pytest.raises(eventlib.ValidationError) as error:
        eventlib.log("shop.Refund", {"amount": 3, "user": object()})

    expect(str(error.value)).to.equal("The following keys are missing: order_id")
    expect(received()).to.equal([])


def test_invalid_unserializable_data_is_logged_and_not_sent_when_raise_errors_is_off(
    shop, memory_app, caplog
):
    eventlib.configure(always_eager=False, raise_errors=False, celery_app=memory_app)

    result = eventlib.log("shop.Refund", {"amount": 3, "user": object()})

    expect(result).to.be(None)
    [record] = eventlib_errors(caplog)
    expect(record.getMessage()).to.equal(
        "Event shop.Refund was not logged, its data is invalid: "
        "The following keys are missing: order_id (data keys: amount, user)"
    )
    assert eventlib.flush(timeout=5)
    expect(receive(memory_app, "eventlib")).to.be(None)


def test_clean_can_replace_a_value_json_cannot_carry(shop):
    eventlib.configure(always_eager=True)
    user = importlib.import_module("shop.events").User(5)

    event_id = eventlib.log("shop.Visit", {"user": user, "page": "/cart"})

    [event] = received()
    expect(event.id).to.equal(event_id)
    expect(event.data).to.equal({"page": "/cart", "user_id": 5})


def test_data_refused_by_the_worker_side_clean_runs_no_handler(shop, caplog):
    eventlib.configure(always_eager=True)

    event_id = eventlib.log("shop.Order", {"items": (1, 2)})

    assert received() == []
    [record] = eventlib_errors(caplog)
    assert record.getMessage() == (
        f"Event shop.Order (id {event_id}) has invalid data in the worker, "
        "its handlers were not run: items must be a tuple, not list"
    )


# ---------------------------------------------------------------- Celery ---


def test_a_users_eager_celery_app_runs_the_shared_task(shop):
    app = Celery("proj", set_as_current=False)
    app.conf.task_always_eager = True
    eventlib.configure(always_eager=False, celery_app=app)

    event_id = eventlib.log("shop.Refund", {"order_id": 7})

    assert "eventlib.process" in app.tasks
    assert app.tasks["eventlib.process"].app is app
    [event] = received()
    assert (event.id, event.data) == (event_id, {"order_id": 7})


def receive(app: Celery, queue_name: str):
    """Take the next message from ``queue_name``, or ``None`` when there is none."""
    with app.connection_for_read() as connection:
        queue = connection.SimpleQueue(queue_name)
        try:
            message = queue.get(block=False)
        except queue.Empty:
            return None
        finally:
            queue.close()
        message.ack()
        return message


def test_log_sends_eventlib_process_to_the_eventlib_queue(shop, memory_app):
    eventlib.configure(always_eager=False, celery_app=memory_app)

    event_id = eventlib.log("shop.Refund", {"order_id": 7, "items": (1, 2)})

    assert received() == []
    assert eventlib.flush(timeout=5)
    message = receive(memory_app, "eventlib")
    assert message.headers["task"] == "eventlib.process"
    assert message.headers["id"] == event_id
    assert message.delivery_info["routing_key"] == "eventlib"
    assert message.content_type == "application/json"
    args, kwargs, _ = message.decode()
    assert kwargs == {}
    name, payload = args
    assert name == "shop.Refund"
    envelope = deserialize_event(payload)
    assert envelope.id == event_id
    assert envelope.data == {"order_id": 7, "items": [1, 2]}
    assert envelope.created_at.utcoffset() == timedelta(0)
    assert receive(memory_app, "eventlib") is None


def test_log_sends_to_the_configured_queue(shop, memory_app):
    eventlib.configure(always_eager=False, celery_app=memory_app, queue="refunds")

    event_id = eventlib.log("shop.Refund", {"order_id": 7})

    assert eventlib.flush(timeout=5)
    message = receive(memory_app, "refunds")
    assert message.headers["id"] == event_id
    assert message.delivery_info["routing_key"] == "refunds"
    assert receive(memory_app, "eventlib") is None


def test_nothing_is_sent_when_the_data_is_refused(shop, memory_app, caplog):
    eventlib.configure(always_eager=False, celery_app=memory_app)

    assert eventlib.log("shop.Refund", {"amount": 3}) is None
    with pytest.raises(eventlib.SerializationError):
        eventlib.log("shop.Refund", {"order_id": 7, "when": object()})

    assert eventlib.flush(timeout=5)
    assert receive(memory_app, "eventlib") is None
    [record] = eventlib_errors(caplog)
    assert record.getMessage() == (
        "Event shop.Refund was not logged, its data is invalid: "
        "The following keys are missing: order_id (data keys: amount)"
    )


def test_task_goes_as_json_even_when_the_users_app_prefers_pickle(shop, memory_app):
    memory_app.conf.update(
        task_serializer="pickle", accept_content=["pickle", "json"], event_serializer="pickle"
    )
    eventlib.configure(always_eager=False, celery_app=memory_app)

    event_id = eventlib.log("shop.Refund", {"order_id": 7})

    assert eventlib.flush(timeout=5)
    message = receive(memory_app, "eventlib")
    expect(message.headers["id"]).to.equal(event_id)
    expect(message.content_type).to.equal("application/json")
    expect(message.content_encoding).to.equal("utf-8")
    args, _, _ = message.decode()
    expect(args[0]).to.equal("shop.Refund")


# --------------------------------------------------------------- on_commit ---


@pytest.mark.parametrize("from_the_setting", [False, True], ids=["argument", "setting"])
def test_on_commit_without_a_transaction_hook_is_a_configuration_error(
    shop, memory_app, from_the_setting
):
    dispatch.set_transaction_hook(None)  # the isolation fixture puts back any hook
    eventlib.configure(always_eager=False, celery_app=memory_app, on_commit=from_the_setting)

    with pytest.raises(eventlib.ConfigurationError) as error:
        if from_the_setting:
            eventlib.log("shop.Refund", {"order_id": 7})
        else:
            eventlib.log("shop.Refund", {"order_id": 7}, on_commit=True)

    expect(str(error.value)).to.equal(
        "eventlib.log('shop.Refund', on_commit=True) needs a transaction hook: add "
        "'eventlib.contrib.django' to INSTALLED_APPS (or call set_transaction_hook)"
    )
    assert eventlib.flush(timeout=5)
    expect(receive(memory_app, "eventlib")).to.be(None)


def test_on_commit_sends_only_when_the_hook_calls_back(shop, memory_app):
    after_commit = []
    dispatch.set_transaction_hook(after_commit.append)
    eventlib.configure(always_eager=False, celery_app=memory_app)

    event_id = eventlib.log("shop.Refund", {"order_id": 7}, on_commit=True)

    assert eventlib.flush(timeout=5)
    expect(receive(memory_app, "eventlib")).to.be(None)
    [send] = after_commit
    send()
    assert eventlib.flush(timeout=5)
    expect(receive(memory_app, "eventlib").headers["id"]).to.equal(event_id)


# ------------------------------------------------------ eventlib's own app ---


def test_own_app_is_json_only_and_uses_the_settings():
    eventlib.configure(broker_url="memory://")

    app = sending.celery_app()

    assert isinstance(app, Celery)
    assert app.conf.accept_content == ["json"]
    assert app.conf.task_serializer == "json"
    assert app.conf.result_serializer == "json"
    assert app.conf.task_ignore_result is True
    assert app.conf.broker_url == "memory://"
    assert app.conf.task_default_queue == "eventlib"
    assert "eventlib.process" in app.tasks
    assert sending.celery_app() is app


def test_own_app_is_rebuilt_when_settings_change():
    eventlib.configure(broker_url="memory://")
    before = sending.celery_app()

    eventlib.configure(broker_url="memory://elsewhere", queue="refunds")
    after = sending.celery_app()

    assert after is not before
    assert after.conf.broker_url == "memory://elsewhere"
    assert after.conf.task_default_queue == "refunds"


def test_a_configured_celery_app_replaces_the_own_app():
    app = Celery("proj", set_as_current=False)

    eventlib.configure(celery_app=app)

    assert sending.celery_app() is app


def test_own_app_sends_to_its_broker(shop, memory_app):
    # memory_app empties the in-memory queues, which every app here shares.
    eventlib.configure(always_eager=False, broker_url="memory://")
    app = sending.celery_app()

    event_id = eventlib.log("shop.Refund", {"order_id": 7})

    assert eventlib.flush(timeout=5)
    message = receive(app, "eventlib")
    assert message.headers["task"] == "eventlib.process"
    assert message.headers["id"] == event_id
    assert received() == []


# ------------------------------------------------------- broker settings ---


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://h:6379/0", {"socket_timeout": 1.5, "socket_connect_timeout": 1.5}),
        (
            "amqp://guest:guest@h//",
            {"read_timeout": 1.5, "write_timeout": 1.5, "confirm_publish": True},
        ),
        ("eventlib+sqlite:////tmp/b.sqlite", {"connect_args": {"timeout": 1.5}}),
        ("memory://", {}),
    ],
)
def test_every_broker_wait_is_bounded_by_broker_timeout(url, expected):
    assert brokers.transport_options(url, 1.5) == expected


def test_own_app_merges_the_users_transport_options():
    eventlib.configure(
        broker_url="redis://127.0.0.1:6379/0",
        broker_timeout=1.5,
        broker_transport_options={"visibility_timeout": 7200, "socket_timeout": 3},
    )

    options = sending.celery_app().conf.broker_transport_options

    assert options == {
        "socket_timeout": 3,
        "socket_connect_timeout": 1.5,
        "visibility_timeout": 7200,
    }


def test_no_broker_url_means_the_embedded_broker_in_the_state_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    eventlib.configure(broker_url=None)

    url = sending.celery_app().conf.broker_url

    assert url == f"eventlib+sqlite:///{conf.state_directory()}/broker.sqlite"
    assert conf.state_directory().parent == tmp_path / "state" / "eventlib"
    assert conf.state_directory().is_dir()  # for the file the transport creates


def test_an_unknown_broker_scheme_is_a_configuration_error():
    eventlib.configure(broker_url="foo://x")

    with pytest.raises(eventlib.ConfigurationError, match="unknown broker URL scheme in foo://x"):
        sending.celery_app()
