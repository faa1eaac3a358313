"""Broadcast and external handlers, in eager mode and on kombu's in-memory
broker.  Real brokers, workers and listeners are in
tests/integration/test_broadcast.py."""

from __future__ import annotations

import contextlib
import importlib
import json
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from click.testing import CliRunner
from kombu import Connection, Exchange, Queue

import eventlib
from eventlib import broadcast, deadletters, processing, tasks
from eventlib.broadcast import ExternalEvent
from eventlib.cli import EXIT_USAGE, main
from eventlib.embedded import url_for
from eventlib.exceptions import ConfigurationError, DeserializationError, InvalidEventName
from eventlib.registry import EXTERNAL_HANDLER_REGISTRY, HandlerOptions, external_handler
from eventlib.sending import celery_app
from eventlib.serialization import serialize_event

from .memory_broker import take_messages

SHOP_EVENTS = """
    import eventlib

    RAN = []


    class Refund(eventlib.BaseEvent):
        broadcast = True

        @eventlib.handler
        def ledger(self):
            RAN.append(("ledger", self.id))


    class CardSaved(eventlib.BaseEvent):
        def broadcast(self, data):
            if data.get("test_card"):
                return None
            return {"last4": data["number"][-4:]}


    class Viewed(eventlib.BaseEvent):
        pass


    class Audited(eventlib.BaseEvent):
        broadcast = False


    class PartialRefund(Refund):
        pass


    class Broken(eventlib.BaseEvent):
        def broadcast(self, data):
            return ["not", "a", "mapping"]
"""

MIRROR_EVENTS = """
    import eventlib

    SEEN = []
    FAILING = {"on": False}


    @eventlib.external_handler("shop.*")
    def mirror(event):
        SEEN.append((event.name, event.id, event.data))


    @eventlib.external_handler("shop.Refund", retries=2, backoff=0)
    def flaky(event):
        SEEN.append(("flaky", event.id, None))
        if FAILING["on"]:
            raise ConnectionError("the mirror is down")
"""


@pytest.fixture
def mirror(isolation, shop):
    isolation.write("mirror/events.py", MIRROR_EVENTS)
    return importlib.import_module("mirror.events")


@pytest.fixture
def eager(isolation):
    eventlib.configure(always_eager=True, dead_letter_url=f"sqlite:///{isolation.root}/dead.sqlite")


@pytest.fixture
def memory(isolation) -> Iterator[list[str]]:
    """eventlib on kombu's in-memory broker; the groups the test names in
    the list it gets are deleted afterwards (the broker's state outlives
    the test)."""
    eventlib.configure(
        always_eager=False,
        broker_url="memory://",
        queue=f"broadcast-{uuid.uuid4().hex[:8]}",
        dead_letter_url=f"sqlite:///{isolation.root}/dead.sqlite",
    )
    created: list[str] = []
    yield created
    for group in created:
        with contextlib.suppress(broadcast.NoSuchGroup):
            broadcast.delete_group(group)


def _group(created: list[str]) -> str:
    name = f"g{uuid.uuid4().hex[:10]}"
    created.append(name)
    return name


# --------------------------------------------------- which events broadcast ---


def test_a_class_opts_in_with_the_attribute_or_by_overriding_the_method(shop):
    assert broadcast.broadcasts(shop.Refund)
    assert broadcast.broadcasts(shop.PartialRefund)  # inherited
    assert broadcast.broadcasts(shop.CardSaved)
    assert not broadcast.broadcasts(shop.Viewed)
    assert not broadcast.broadcasts(shop.Audited)


def test_the_setting_broadcasts_every_event_but_those_that_say_false(shop):
    eventlib.configure(broadcast=True)

    assert broadcast.broadcasts(shop.Viewed)
    assert not broadcast.broadcasts(shop.Audited)


def test_broadcast_runs_last_among_the_handlers_and_only_when_opted_in(shop, eager):
    payload = serialize_event(shop.Refund({"amount": 3}))
    assert eventlib.process("shop.Refund", payload).succeeded == (
        "shop.events.Refund.ledger",
        "eventlib.broadcast.send",
    )
    payload = serialize_event(shop.Viewed({}))
    assert eventlib.process("shop.Viewed", payload).succeeded == ()


# ----------------------------------------------------------- eager mode ---


def test_in_eager_mode_external_handlers_run_after_the_handlers(mirror, eager):
    shop = importlib.import_module("shop.events")
    event_id = eventlib.log("shop.Refund", {"amount": Decimal("2.50")})

    ran, seen = shop.RAN, mirror.SEEN
    assert ran == [("ledger", event_id)]
    assert seen == [
        ("shop.Refund", event_id, {"amount": Decimal("2.50")}),
        ("flaky", event_id, None),
    ]


def test_broadcast_sends_what_the_hook_returns_or_nothing(mirror, eager):
    card = eventlib.log("shop.CardSaved", {"number": "4242424242424242"})
    eventlib.log("shop.CardSaved", {"number": "4000000000000002", "test_card": True})
    eventlib.log("shop.Viewed", {"page": 1})

    seen = mirror.SEEN
    assert seen == [("shop.CardSaved", card, {"last4": "4242"})]


def test_a_hook_that_returns_no_mapping_fails_the_broadcast_alone(shop, eager):
    payload = serialize_event(shop.Broken({}))
    result = eventlib.process("shop.Broken", payload)

    assert [failure.handler for failure in result.failed] == ["eventlib.broadcast.send"]
    assert "must return a mapping or None, not list" in result.failed[0].error
    [letter] = deadletters.list_dead_letters()
    assert letter.handler == "eventlib.broadcast.send"
    assert letter.attempts == broadcast.BROADCAST_OPTIONS.retries + 1


def test_under_a_recorder_external_handlers_run_here_and_failures_are_reported(mirror, memory):
    from eventlib.testing import capture_events

    with capture_events(run_handlers=True) as events:
        eventlib.log("shop.Refund", {"amount": 1})
        mirror.FAILING["on"] = True
        with events.expect_failures() as failures:
            eventlib.log("shop.Refund", {"amount": 2})

    assert [entry[0] for entry in mirror.SEEN].count("shop.Refund") == 2
    assert [failure.handler for failure in failures] == ["mirror.events.flaky"]
    assert events.failures == failures
    assert take_messages(celery_app(), celery_app().conf.task_default_queue) == []


# ---------------------------------------------------- external handlers ---


def test_external_handlers_match_names_and_patterns(isolation):
    def one(event):
        pass

    def app(event):
        pass

    def every(event):
        pass

    external_handler("shop.Refund")(one)
    external_handler("shop.*")(app)
    external_handler("*", retries=4)(every)

    assert EXTERNAL_HANDLER_REGISTRY.handlers_of("shop.Refund") == (one, app, every)
    assert EXTERNAL_HANDLER_REGISTRY.handlers_of("shop.orders.Paid") == (every,)
    assert EXTERNAL_HANDLER_REGISTRY.options_of("shop.Refund", every) == HandlerOptions(4, 2.0)
    assert EXTERNAL_HANDLER_REGISTRY.options_of("shop.Refund", one) == HandlerOptions(0, 2.0)
    with pytest.raises(KeyError, match=r"not an external handler of billing\.Paid"):
        EXTERNAL_HANDLER_REGISTRY.options_of("billing.Paid", one)


def test_registering_again_replaces_and_bad_declarations_raise(isolation):
    def mirror(event):
        pass

    external_handler("shop.Refund")(mirror)
    external_handler("shop.Refund", retries=1)(mirror)
    assert len(EXTERNAL_HANDLER_REGISTRY) == 1

    with pytest.raises(InvalidEventName):
        external_handler("shop.Re*")
    with pytest.raises(TypeError, match="takes an event name or pattern"):
        external_handler(mirror)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="decorates a callable"):
        external_handler("shop.Refund")(42)  # type: ignore[type-var]
    with pytest.raises(ValueError, match="0 or more"):
        external_handler("shop.Refund", retries=-1)


def test_process_external_needs_no_event_class_and_isolates_failures(isolation, eager):
    isolation.write("mirror/events.py", MIRROR_EVENTS)
    mirror = importlib.import_module("mirror.events")
    mirror.FAILING["on"] = True
    created = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    payload = json.dumps(
        {
            "id": "e-1",
            "created_at": created.isoformat(),
            "data": {"amount": {"__eventlib__": "decimal", "value": "1.10"}},
        }
    )

    result = processing.process_external("shop.Refund", payload, group="billing")

    assert "shop.events" not in __import__("sys").modules
    assert mirror.SEEN[0] == ("shop.Refund", "e-1", {"amount": Decimal("1.10")})
    assert result.succeeded == ("mirror.events.mirror",)
    assert [failure.handler for failure in result.failed] == ["mirror.events.flaky"]
    # Without a worker, its two retries ran at once, here; then a dead letter.
    assert [entry[0] for entry in mirror.SEEN].count("flaky") == 3
    [letter] = deadletters.list_dead_letters()
    assert letter.handler == "external:billing:mirror.events.flaky"
    assert letter.event_id == "e-1"
    assert broadcast.group_of_key(letter.handler) == ("billing", "mirror.events.flaky")

    mirror.FAILING["on"] = False
    retried = deadletters.retry(letter.id, here=True)
    assert retried is not None and retried.succeeded == ("mirror.events.flaky",)
    assert deadletters.list_dead_letters() == []


def test_an_external_payload_that_does_not_deserialize_is_a_dead_letter(isolation, eager):
    with pytest.raises(DeserializationError):
        processing.process_external("shop.Refund", "not json", group="billing")

    [letter] = deadletters.list_dead_letters()
    assert letter.handler == "external:billing:"
    assert "DeserializationError" in letter.reason


def test_external_event_is_what_handlers_get():
    event = ExternalEvent("shop.Refund", "e-1", datetime.now(UTC), {"a": 1})
    assert (event.name, event.id, event.data) == ("shop.Refund", "e-1", {"a": 1})


# ------------------------------------------------------ through a broker ---


def test_the_worker_publishes_one_message_per_group(mirror, memory):
    shop = importlib.import_module("shop.events")
    first, second = _group(memory), _group(memory)
    for group in (first, second):
        broadcast.register_group(group)
    payload = serialize_event(shop.Refund({"amount": Decimal("4.00")}))

    eventlib.process("shop.Refund", payload, app=celery_app())

    backlogs = {group.name: group.backlog for group in broadcast.groups()}
    assert backlogs[first] == backlogs[second] == 1
    [message] = take_messages(celery_app(), broadcast.QUEUE_PREFIX + first)
    assert message.headers["task"] == "eventlib.external"
    assert message.headers["shadow"] == "shop.Refund broadcast"
    name, sent = message.decode()[0]
    assert json.loads(sent)["data"] == json.loads(payload)["data"]
    processing.process_external(name, sent, group=first)
    assert mirror.SEEN[0][2] == {"amount": Decimal("4.00")}


def test_with_no_group_nothing_waits_anywhere(shop, memory):
    payload = serialize_event(shop.Refund({}))
    result = eventlib.process("shop.Refund", payload, app=celery_app())

    assert result.ok
    assert take_messages(celery_app(), celery_app().conf.task_default_queue) == []


def test_a_failing_external_handler_retries_through_its_group(mirror, memory):
    group = _group(memory)
    broadcast.register_group(group)
    mirror.FAILING["on"] = True
    payload = serialize_event(importlib.import_module("shop.events").Refund({}))

    result = processing.process_external("shop.Refund", payload, group=group, app=celery_app())

    assert result.retrying == ("mirror.events.flaky",)
    [message] = take_messages(celery_app(), broadcast.QUEUE_PREFIX + group)
    assert message.headers["task"] == "eventlib.external"
    assert message.decode()[0][2:] == ["mirror.events.flaky", 2]
    assert message.delivery_info["routing_key"] == group


def test_deleting_a_group_drops_its_backlog(shop, memory):
    group = _group(memory)
    broadcast.register_group(group)
    eventlib.process("shop.Refund", serialize_event(shop.Refund({})), app=celery_app())

    assert broadcast.delete_group(group) == 1
    assert group not in [found.name for found in broadcast.groups()]
    with pytest.raises(broadcast.NoSuchGroup, match=group):
        broadcast.delete_group(group)


def test_a_broker_that_cannot_broadcast_says_so(isolation):
    url = f"sqla+sqlite:///{isolation.root}/broker.sqlite"  # kombu's own SQLAlchemy transport
    with (
        Connection(url) as connection,
        pytest.raises(ConfigurationError, match="needs RabbitMQ, Redis or eventlib's embedded"),
    ):
        broadcast._routing_keys(connection)


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 101, "é"])
def test_group_names_are_checked(name):
    with pytest.raises(ConfigurationError, match="invalid group name"):
        broadcast.group_queue(name)


def test_the_listening_group_comes_from_the_command_or_the_consumed_queue(memory):
    app = celery_app()
    assert broadcast.listening_group(app) is None
    app.amqp.queues.select(["eventlib.broadcast.billing"])
    assert broadcast.listening_group(app) == "billing"
    broadcast.set_listening_group("search")
    try:
        assert broadcast.listening_group(app) == "search"
    finally:
        broadcast.set_listening_group(None)


def test_the_external_task_runs_for_its_group(mirror, memory):
    broadcast.set_listening_group("billing")
    try:
        payload = serialize_event(importlib.import_module("shop.events").Refund({}))
        tasks.external.apply(args=("shop.Refund", payload))
    finally:
        broadcast.set_listening_group(None)
    assert [entry[0] for entry in mirror.SEEN] == ["shop.Refund", "flaky"]


# ---------------------------------------------------------- command line ---


def test_groups_commands(shop, memory):
    group = _group(memory)
    runner = CliRunner()

    created = runner.invoke(main, ["groups", "create", group])
    assert created.exit_code == 0, created.output
    eventlib.process("shop.Refund", serialize_event(shop.Refund({})), app=celery_app())
    listed = runner.invoke(main, ["groups", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    mine = [found for found in json.loads(listed.output) if found["name"] == group]
    assert mine == [
        {"name": group, "queue": f"eventlib.broadcast.{group}", "backlog": 1, "listeners": None}
    ]
    text = runner.invoke(main, ["groups", "list"])
    assert f"{group}: 1 events waiting (eventlib.broadcast.{group})" in text.output

    deleted = runner.invoke(main, ["groups", "delete", group, "--yes"])
    assert deleted.exit_code == 0, deleted.output
    assert f"deleted the group {group} and 1 events" in deleted.output
    again = runner.invoke(main, ["groups", "delete", group, "--yes"])
    assert again.exit_code == EXIT_USAGE
    assert f"there is no group '{group}'" in again.output


def test_listen_refuses_a_bad_group_name_and_no_apps(memory):
    runner = CliRunner()

    no_apps = runner.invoke(main, ["listen", "--group", "billing"])
    assert no_apps.exit_code == EXIT_USAGE
    assert "no apps configured" in no_apps.output
    bad = runner.invoke(main, ["--apps", "shop", "listen", "--group", "a b"])
    assert bad.exit_code == EXIT_USAGE
    assert "invalid group name 'a b'" in bad.output


def test_a_dead_letter_goes_back_to_its_group_only_while_the_group_is_there(mirror, memory):
    group = _group(memory)
    broadcast.register_group(group)
    mirror.FAILING["on"] = True
    payload = serialize_event(importlib.import_module("shop.events").Refund({}))
    processing.process_external(
        "shop.Refund", payload, group=group, handler="mirror.events.flaky", attempt=3
    )
    [letter] = deadletters.list_dead_letters()

    deadletters.retry(letter.id)
    [message] = take_messages(celery_app(), broadcast.QUEUE_PREFIX + group)
    assert message.decode() == [
        ["shop.Refund", payload, "mirror.events.flaky", 4],
        {"dead_letter": letter.id},
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    ]

    broadcast.delete_group(group)
    with pytest.raises(broadcast.NoSuchGroup, match=f"dead letter {letter.id} cannot be sent"):
        deadletters.retry(letter.id)
    assert deadletters.get(letter.id) is not None


def test_the_embedded_broker_keeps_the_broadcast_bindings_in_its_file(isolation):
    path = isolation.root / "broker.sqlite"
    with Connection(url_for(path)) as connection:
        channel = connection.default_channel
        Queue("orders", Exchange("orders"), "orders")(channel).declare()
        group = broadcast.group_queue("billing")(channel)
        group.declare()
        with sqlite3.connect(path) as database:
            kept = database.execute("select exchange, routing_key, queue from eventlib_bindings")
            assert kept.fetchall() == [
                ("eventlib.broadcast", "billing", "eventlib.broadcast.billing")
            ]
        assert broadcast._routing_keys(connection) == ["billing"]

        group.delete()
        assert broadcast._routing_keys(connection) == []
