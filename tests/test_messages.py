"""eventlib/messages.py: the messages of eventlib's event tasks are those
Celery's ``send_task()`` publishes, header for header, so that a Celery
release that changes its task protocol is noticed here."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

import pytest
from celery import Celery, signals
from celery._state import _task_stack
from kombu.messaging import Producer

from eventlib import messages
from eventlib.sending import BATCH_TASK, PROCESS_TASK, sender

QUEUE = "events-here"
POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0, "interval_max": 0}


@pytest.fixture
def eventlib_app() -> Iterator[Celery]:
    """eventlib's own app, as it sends events, with its tasks registered."""
    import eventlib

    eventlib.configure(broker_url="memory://")
    app = sender.app()
    app.finalize()
    yield app


@pytest.fixture
def user_app() -> Iterator[Celery]:
    """A project's app that routes, prioritizes, compresses and does not
    persist what it sends."""
    import eventlib.tasks  # noqa: F401  (the shared tasks)

    app = Celery("proj", set_as_current=False)
    app.conf.update(
        broker_url="memory://",
        task_routes={"eventlib.*": {"priority": 7}},
        task_compression="zlib",
        task_default_delivery_mode="transient",
        task_publish_retry_policy={"max_retries": 5, "interval_max": 3},
    )
    app.finalize()
    yield app
    app.close()


@contextmanager
def published() -> Iterator[list[tuple[Any, dict[str, Any]]]]:
    """What ``Producer.publish`` is called with, instead of publishing."""
    found: list[tuple[Any, dict[str, Any]]] = []

    def record(self: Producer, body: Any, **options: Any) -> None:
        found.append((body, options))

    with mock.patch.object(Producer, "publish", record):
        yield found


def both_ways(
    app: Celery, task: str, args: tuple[Any, ...], argsrepr: str | None
) -> tuple[tuple[Any, dict[str, Any]], tuple[Any, dict[str, Any]]]:
    """The publish of ``send_task()``, as eventlib called it before it built
    messages itself, and that of :func:`messages.publish`."""
    route = messages.route(app, task, QUEUE)
    assert route is not None
    with app.connection_for_write() as connection, published() as found:
        producer = Producer(connection)
        app.send_task(
            task,
            args=args,
            task_id="id-1",
            shadow="shown as",
            argsrepr=argsrepr,
            queue=QUEUE,
            producer=producer,
            serializer="json",
            retry=True,
            retry_policy=POLICY,
            add_to_parent=False,
        )
        messages.publish(
            producer,
            app,
            route,
            args,
            task_id="id-1",
            shadow="shown as",
            argsrepr=argsrepr,
            retry_policy=POLICY,
        )
    celery, ours = found
    # Celery copies its argsrepr option into the properties as well.
    celery[1].pop("argsrepr", None)
    return celery, ours


@pytest.mark.parametrize("app_fixture", ["eventlib_app", "user_app"])
@pytest.mark.parametrize(
    "task, args, argsrepr",
    [
        (PROCESS_TASK, ("shop.Purchase", '{"id": "id-1", "data": {}}'), None),
        (
            BATCH_TASK,
            ([["shop.Purchase", '{"n": 1}'], ["shop.Refund", '{"n": 2}']],),
            "[2 events: shop.Purchase x1, shop.Refund x1]",
        ),
    ],
)
def test_a_message_is_the_one_send_task_publishes(request, app_fixture, task, args, argsrepr):
    app = request.getfixturevalue(app_fixture)

    celery, ours = both_ways(app, task, args, argsrepr)

    assert ours == celery
    body, options = ours
    assert body == (args, {}, messages._EMBED)
    assert options["headers"]["task"] == task
    assert options["headers"]["shadow"] == "shown as"
    assert options["correlation_id"] == "id-1"


def test_the_routes_and_settings_of_a_projects_app_are_followed(user_app):
    _, (_, options) = both_ways(user_app, PROCESS_TASK, ("shop.Purchase", "{}"), None)

    assert options["priority"] == 7
    assert options["compression"] == "zlib"
    assert options["delivery_mode"] == "transient"
    assert options["retry_policy"] == {**POLICY, "max_retries": 1}
    assert [queue.name for queue in options["declare"]] == [QUEUE]
    assert (options["exchange"], options["routing_key"]) == ("", QUEUE)


def test_a_message_sent_within_a_workers_task_names_that_task_as_its_parent(eventlib_app):
    parent = eventlib_app.tasks[PROCESS_TASK]
    parent.push_request(id="parent-1", root_id="root-1", called_directly=False)
    _task_stack.push(parent)
    try:
        celery, ours = both_ways(eventlib_app, PROCESS_TASK, ("shop.Purchase", "{}"), None)
    finally:
        _task_stack.pop()
        parent.pop_request()

    assert ours == celery
    assert ours[1]["headers"]["parent_id"] == "parent-1"
    assert ours[1]["headers"]["root_id"] == "root-1"


def test_the_publish_signals_are_sent_as_celery_sends_them(eventlib_app):
    seen: list[tuple[str, dict[str, Any]]] = []

    def before(sender: str, headers: dict[str, Any], **kwargs: Any) -> None:
        seen.append(("before", headers))

    def after(sender: str, headers: dict[str, Any], **kwargs: Any) -> None:
        seen.append(("after", headers))

    signals.before_task_publish.connect(before)
    signals.after_task_publish.connect(after)
    try:
        both_ways(eventlib_app, PROCESS_TASK, ("shop.Purchase", "{}"), None)
    finally:
        signals.before_task_publish.disconnect(before)
        signals.after_task_publish.disconnect(after)

    assert [when for when, _ in seen] == ["before", "after"] * 2
    assert seen[0][1] == seen[2][1]


@pytest.mark.parametrize("setting, value", [("task_send_sent_event", True), ("task_protocol", 1)])
def test_an_app_that_needs_more_than_this_builds_has_no_route(eventlib_app, setting, value):
    eventlib_app.conf[setting] = value

    assert messages.route(eventlib_app, PROCESS_TASK, QUEUE) is None


SHOP_EVENTS = """
    from eventlib import BaseEvent

    class Purchase(BaseEvent):
        pass
"""


@pytest.mark.parametrize("sent_events", [False, True])
def test_events_reach_the_broker_either_way(shop, memory_app, sent_events):
    import eventlib

    from .memory_broker import take_messages

    memory_app.conf.task_send_sent_event = sent_events
    eventlib.configure(celery_app=memory_app)

    event_id = eventlib.log("shop.Purchase", {})

    assert eventlib.flush(timeout=10)
    [message] = take_messages(memory_app)
    assert (message.headers["task"], message.headers["id"]) == (PROCESS_TASK, event_id)
    assert message.headers["shadow"] == "shop.Purchase"
