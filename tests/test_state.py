"""The owners of eventlib's process state (eventlib/_state.py): a forked
child starts each of them afresh, through the one at-fork hook, even when
another thread of the parent held its lock at the moment of the fork; an
owner may make a fork wait; eventlib.testing.reset() resets them all."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import eventlib
from eventlib import _state, deadletters, discovery, metrics, serialization, testing
from eventlib.registry import HANDLER_REGISTRY
from eventlib.sending import sender

from .forking import fork_while_held, read_with_deadline

SHOP_EVENTS = """
    from eventlib import BaseEvent


    class Refund(BaseEvent):
        pass
"""


class Point:
    def __init__(self, x: int) -> None:
        self.x = x


def find_an_event() -> str:
    return discovery.find_event("shop.Refund").name


def register_a_type() -> str:
    eventlib.register_type(Point, encode=lambda p: p.x, decode=Point, tag="test.point")
    return serialization.dumps({"p": Point(3)})


def declare_an_event() -> str:
    module = importlib.import_module("shop.events")
    child_event = type("ChildEvent", (module.BaseEvent,), {"__module__": "shop.events"})
    return str(HANDLER_REGISTRY[child_event])


def record_a_dead_letter() -> str:
    return str(
        deadletters.record(
            event_name="shop.Refund",
            event_id="event-1",
            payload="{}",
            handler=None,
            attempts=1,
            reason="RuntimeError: no",
            traceback="",
        )
    )


def capture_an_event() -> str:
    with testing.capture_events() as events:
        eventlib.log("shop.Refund", {"n": 1})
    return events.named("shop.Refund")[0].name


def count() -> str:
    metrics.increment("logged")
    return str(metrics.snapshot()["logged"])


OWNERS: dict[str, tuple[Callable[[], Any], Callable[[], str], str]] = {
    "discovery": (lambda: discovery._found._lock, find_an_event, "shop.Refund"),
    "serialization": (
        lambda: serialization._codecs._lock,
        register_a_type,
        '{"p":{"__eventlib__":"test.point","value":3}}',
    ),
    "registry": (lambda: HANDLER_REGISTRY._lock, declare_an_event, "[]"),
    "deadletters": (lambda: deadletters._database._lock, record_a_dead_letter, "1"),
    "testing": (lambda: testing._collector._recorders_lock, capture_an_event, "shop.Refund"),
    "sending": (lambda: sender._lock, lambda: str(bool(sender.app())), "True"),
    "metrics": (lambda: metrics._counters._lock, count, "1"),
}


@pytest.mark.parametrize("owner", list(OWNERS))
def test_a_forked_child_has_each_owner_afresh_with_a_free_lock(shop, tmp_path, owner):
    eventlib.configure(dead_letter_url=f"sqlite:///{tmp_path / 'dead.sqlite'}")
    lock, in_the_child, expected = OWNERS[owner]

    assert fork_while_held(lock(), in_the_child) == expected


class Waiting:
    """An owner that makes a fork wait, and says what it was told."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def reset(self) -> None:
        self.calls.append("reset")

    def _before_fork(self) -> None:
        self.calls.append("before")

    def _after_fork_in_parent(self) -> None:
        self.calls.append("parent")

    def _after_fork(self) -> None:
        self.calls.append("child")


@pytest.fixture
def waiting() -> Iterator[Waiting]:
    owner = Waiting()
    _state.process_state(owner)
    try:
        yield owner
    finally:
        _state._owners.remove(owner)
        _state._process_state.remove(owner)


def test_an_owner_may_make_a_fork_wait(waiting):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: reports on the pipe, never returns into pytest
        try:
            os.close(read)
            os.write(write, " ".join(waiting.calls).encode())
        finally:
            os._exit(0)
    os.close(write)

    assert read_with_deadline(read, pid, timeout=20) == "before child"
    assert waiting.calls == ["before", "parent"]


def test_reset_resets_every_owner_of_process_state(waiting):
    testing.reset()

    assert waiting.calls == ["reset"]
