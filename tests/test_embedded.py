"""The embedded broker: kombu's SQLAlchemy transport on SQLite, as eventlib
configures it."""

from __future__ import annotations

import sqlite3

from kombu import Connection

from eventlib.embedded import SCHEME, url_for
from eventlib.embedded.transport import CLEANUP_EVERY, Transport


def test_url_for_makes_the_path_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    assert url_for("broker.sqlite") == f"{SCHEME}:///{tmp_path.resolve()}/broker.sqlite"


def test_the_scheme_resolves_to_eventlibs_transport(tmp_path):
    with Connection(url_for(tmp_path / "broker.sqlite")) as connection:
        assert type(connection.transport) is Transport
        assert connection.transport.polling_interval == 0.05


def test_messages_come_out_in_order_and_taken_rows_are_deleted(tmp_path):
    path = tmp_path / "broker.sqlite"
    count = CLEANUP_EVERY + 30
    with Connection(url_for(path)) as connection:
        queue = connection.SimpleQueue("events")
        for number in range(count):
            queue.put({"n": number})
        received = []
        for _ in range(count):
            message = queue.get(timeout=5)
            received.append(message.payload["n"])
            message.ack()
        queue.close()

    assert received == list(range(count))
    database = sqlite3.connect(path)
    try:
        rows = database.execute("select count(*) from kombu_message").fetchone()[0]
    finally:
        database.close()
    # The first CLEANUP_EVERY taken messages were deleted; the stock
    # transport would keep all of them.
    assert rows == count - CLEANUP_EVERY
