"""Helpers for your own tests: record the events your code logs.

::

    from eventlib.testing import capture_events

    def test_refund_is_logged():
        with capture_events() as events:
            refund(order)
        events.assert_logged('shop.Refund', {'order_id': order.id})

While a recorder is active, ``log()`` validates and serializes as usual but
hands the payload to the recorder instead of Celery; no broker is needed.  The
recorded data is what a handler would see, after the JSON round trip.  With
``run_handlers=True`` the handlers also run, in the calling process, through
:func:`eventlib.process`.  Recorders nest; the innermost one records.  The
pytest fixtures ``eventlib_logged`` and ``eventlib_processed`` (installed with
eventlib as a pytest plugin) give a recorder of each kind for one test.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from .processing import ProcessResult, process
from .sending import sender
from .serialization import deserialize_event, dumps, loads


@dataclass(frozen=True)
class CapturedEvent:
    """One event logged while a recorder was active."""

    name: str
    id: str
    #: The data as a handler receives it (after serialization and back).
    data: dict[str, Any]
    created_at: datetime
    #: The result of running the handlers, or ``None`` when they did not run.
    result: ProcessResult | None = None


class EventRecorder:
    """The events logged while it is active, in the order they were logged."""

    def __init__(self, *, run_handlers: bool = False) -> None:
        self.run_handlers = run_handlers
        self.events: list[CapturedEvent] = []

    def __call__(self, name: str, payload: str) -> None:
        envelope = deserialize_event(payload)
        captured = CapturedEvent(name, envelope.id, envelope.data, envelope.created_at)
        # Recorded before its handlers run, so that events they log come after it.
        index = len(self.events)
        self.events.append(captured)
        if self.run_handlers:
            self.events[index] = replace(captured, result=process(name, payload))

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[CapturedEvent]:
        return iter(self.events)

    def named(self, name: str) -> list[CapturedEvent]:
        """The recorded events called ``name``."""
        return [event for event in self.events if event.name == name]

    def assert_logged(self, name: str, data: Mapping[str, Any] | None = None) -> CapturedEvent:
        """Return the first event called ``name`` whose data equals ``data``
        (when given, compared after the same JSON round trip: a tuple matches
        a list).  Raises ``AssertionError`` listing what was logged when there
        is none."""
        expected = None if data is None else loads(dumps(data))
        for event in self.named(name):
            if expected is None or event.data == expected:
                return event
        logged = "\n".join(f"  {event.name} {event.data!r}" for event in self.events) or "  nothing"
        wanted = name if expected is None else f"{name} {expected!r}"
        raise AssertionError(f"expected the event {wanted} to be logged; logged:\n{logged}")

    def clear(self) -> None:
        """Forget what was recorded so far."""
        self.events.clear()


@contextmanager
def capture_events(*, run_handlers: bool = False) -> Iterator[EventRecorder]:
    """Record the events logged inside the ``with`` block (see the module
    documentation)."""
    recorder = EventRecorder(run_handlers=run_handlers)
    sender.add_recorder(recorder)
    try:
        yield recorder
    finally:
        sender.remove_recorder(recorder)
