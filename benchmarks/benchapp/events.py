"""The benchmarks' events."""

from __future__ import annotations

import eventlib

from .counter import bump

ORDER_KEYS = ("order_id", "sku", "amount", "currency", "placed_at")


class Order(eventlib.BaseEvent):
    """A realistic small event: five keys, validated, one handler."""

    def clean(self):
        self.require_data_keys(ORDER_KEYS)

    @eventlib.handler
    def count(self):
        bump()


class ThreeHandlers(eventlib.BaseEvent):
    """Three no-op handlers, for ``process()`` against a loop and blinker."""

    @eventlib.handler
    def first(self):
        pass

    @eventlib.handler
    def second(self):
        pass

    @eventlib.handler
    def third(self):
        pass


class NoHandlers(eventlib.BaseEvent):
    """``ThreeHandlers`` without its handlers: ``process()`` minus the loop."""
