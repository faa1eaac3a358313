"""``BaseEvent`` (eventlib/event.py): what an event is, its name, its
instances, and how its data is validated."""

from __future__ import annotations

import importlib
import os
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from eventlib import HANDLER_REGISTRY, BaseEvent, ValidationError

from .forking import read_with_deadline

SHOP_EVENTS = """
    from eventlib import BaseEvent, handler

    class Refund(BaseEvent):
        @handler
        def record(self):
            pass
"""


# ----------------------------------------------------------------- names ---


def test_event_names_follow_the_app(shop, isolation):
    isolation.write(
        "shop/orders/events.py",
        """
        from eventlib import BaseEvent

        class Refund(BaseEvent):
            pass
        """,
    )
    orders = importlib.import_module("shop.orders.events")

    assert shop.Refund.name == "shop.Refund"
    assert orders.Refund.name == "shop.orders.Refund"


def test_an_event_outside_an_events_module_is_named_after_its_module(isolation):
    isolation.write(
        "shop/models.py",
        """
        from eventlib import BaseEvent

        class Refund(BaseEvent):
            pass
        """,
    )

    assert importlib.import_module("shop.models").Refund.name == "shop.models.Refund"


def test_declaring_an_event_registers_it_with_its_method_handlers(shop):
    assert HANDLER_REGISTRY[shop.Refund] == [shop.Refund.record]


# ------------------------------------------------------------- instances ---


def test_event_instance_has_its_name(shop):
    assert shop.Refund().name == "shop.Refund"


def test_event_data_is_a_copy_of_the_given_mapping(shop):
    given = {"deal_id": 1}
    event = shop.Refund(given)
    given["code"] = "X"
    event.data["amount"] = 10

    assert event.data == {"deal_id": 1, "amount": 10}
    assert given == {"deal_id": 1, "code": "X"}
    assert type(event.data) is dict


def test_event_data_defaults_to_an_empty_dict(shop):
    assert shop.Refund().data == {}


def test_event_id_is_a_random_uuid_unique_per_instance(shop):
    # More than one read of the random source, and from threads at once.
    made: list[str] = []

    def make() -> None:
        made.extend(shop.Refund().id for _ in range(1500))

    threads = [threading.Thread(target=make) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert len(set(made)) == len(made) == 6000
    assert all(uuid.UUID(event_id).version == 4 for event_id in made)
    assert all(str(uuid.UUID(event_id)) == event_id for event_id in made)


def test_a_forked_child_makes_ids_its_parent_does_not(shop):
    shop.Refund()  # the parent has ids read ahead
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: reports on the pipe, never returns into pytest
        try:
            os.close(read)
            os.write(write, " ".join(shop.Refund().id for _ in range(10)).encode())
        finally:
            os._exit(0)
    os.close(write)
    in_child = set(read_with_deadline(read, pid, 20).split())

    in_parent = {shop.Refund().id for _ in range(10)}
    assert len(in_child) == 10
    assert not in_child & in_parent


def test_event_created_at_is_timezone_aware_utc(shop):
    created_at = shop.Refund().created_at

    assert created_at.tzinfo is not None
    assert created_at.utcoffset() == timedelta(0)


def test_require_data_keys_lists_missing_keys_in_the_order_given(shop):
    event = shop.Refund({"amount": 10})

    with pytest.raises(ValidationError) as raised:
        event.require_data_keys(["deal_id", "amount", "code"])
    assert str(raised.value) == "The following keys are missing: deal_id, code"

    with pytest.raises(ValidationError) as raised:
        event.require_data_keys(["code", "deal_id"])
    assert str(raised.value) == "The following keys are missing: code, deal_id"


def test_require_data_keys_passes_when_every_key_is_present(shop):
    event = shop.Refund({"deal_id": 1, "code": "X"})

    assert event.require_data_keys(["deal_id", "code"]) is None


def test_an_event_keeps_the_id_and_time_it_is_given(shop):
    created_at = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)

    event = shop.Refund(id="event-1", created_at=created_at)

    assert (event.id, event.created_at) == ("event-1", created_at)


def test_an_event_comes_from_python_unless_told(shop):
    logged = shop.Refund()
    received = shop.Refund(source="http", client_address="203.0.113.7")

    assert (logged.source, logged.client_address) == ("python", None)
    assert (received.source, received.client_address) == ("http", "203.0.113.7")


def test_an_event_shows_its_class_name_and_id(shop):
    event = shop.Refund(id="event-1")

    assert repr(event) == "<Refund shop.Refund id=event-1>"


# ------------------------------------------------------------ validation ---


@pytest.fixture
def cleaning(isolation):
    isolation.write(
        "shop/events.py",
        """
        from eventlib import BaseEvent

        class Normalised(BaseEvent):
            def clean(self):
                return {"code": self.data["code"].upper(), "checked": True}

        class Kept(BaseEvent):
            def clean(self):
                self.require_data_keys(["code"])

        class Broken(BaseEvent):
            def clean(self):
                return ["code"]
        """,
    )
    return importlib.import_module("shop.events")


def test_validate_applies_the_mapping_returned_by_clean(cleaning):
    event = cleaning.Normalised({"code": "abc"})
    event.validate()

    assert event.data == {"code": "ABC", "checked": True}


def test_validate_keeps_the_data_when_clean_returns_none(cleaning):
    event = cleaning.Kept({"code": "abc"})
    data = event.data
    event.validate()

    assert event.data is data
    assert event.data == {"code": "abc"}


def test_validate_raises_what_clean_raises(cleaning):
    with pytest.raises(ValidationError, match=r"^The following keys are missing: code$"):
        cleaning.Kept({}).validate()


def test_validate_refuses_a_clean_that_returns_a_non_mapping(cleaning):
    event = cleaning.Broken({"code": "abc"})

    with pytest.raises(TypeError, match=r"Broken\.clean\(\) must return a mapping or None"):
        event.validate()
    assert event.data == {"code": "abc"}


def test_base_event_clean_accepts_anything():
    assert BaseEvent({"anything": 1}).clean() is None
