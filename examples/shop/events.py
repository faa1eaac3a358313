"""The demo shop's events and handlers.

Every handler records that it ran in the ``runs`` table, so that the demo can
tell what happened in the worker processes; the handlers themselves do
ordinary work: write orders to SQLite, count page views in memory, and one of
them fails on purpose.
"""

from __future__ import annotations

import os
import sqlite3
from collections import Counter

import eventlib

#: Page views counted in this worker process's memory.
VIEWS: Counter[str] = Counter()


_connections: dict[int, sqlite3.Connection] = {}


def database() -> sqlite3.Connection:
    """This process's connection to the shop's database (a forked worker
    process opens its own)."""
    connection = _connections.get(os.getpid())
    if connection is None:
        connection = sqlite3.connect(os.environ["SHOP_DATABASE"], timeout=60)
        connection.execute("pragma synchronous=normal")  # a demo's file: no wait for the disk
        _connections[os.getpid()] = connection
    return connection


def create_tables() -> None:
    with database() as db:
        db.execute("pragma journal_mode=wal")
        db.execute(
            "create table if not exists orders (event_id text primary key, sku text, total text)"
        )
        db.execute("create table if not exists runs (event_id text, handler text)")


def record_run(event: eventlib.BaseEvent, handler: str) -> None:
    with database() as db:
        db.execute("insert into runs values (?, ?)", (event.id, handler))


class OrderPlaced(eventlib.BaseEvent):
    """A customer bought something."""

    def clean(self):
        self.require_data_keys(["sku", "quantity", "price"])
        if self.data["quantity"] < 1:
            raise eventlib.ValidationError("quantity must be at least 1")

    @eventlib.handler
    def save_order(self):
        total = self.data["price"] * self.data["quantity"]
        with database() as db:
            # Keyed by the event id: running again after a crash is harmless.
            db.execute(
                "insert or ignore into orders values (?, ?, ?)",
                (self.id, self.data["sku"], str(total)),
            )
        record_run(self, "save_order")

    @eventlib.handler
    def email_receipt(self):
        raise ConnectionError("the mail server is down (this handler fails on purpose)")


class PageViewed(eventlib.BaseEvent):
    """Somebody looked at a page."""

    def clean(self):
        self.require_data_keys(["path"])

    @eventlib.handler
    def count_view(self):
        VIEWS[self.data["path"]] += 1
        record_run(self, "count_view")


@eventlib.handler("shop.*")
def audit(event):
    """Runs last for every event of the shop: the demo's sign that an event
    was completely processed."""
    record_run(event, "audit")
