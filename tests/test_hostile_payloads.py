"""Data that Python and JSON allow but eventlib cannot carry, through
``log()`` and the HTTP endpoint: refused alike whether the event would be
run at once, published or spooled.  (What ``process()`` does with hostile
payloads is in test_processing.py; the same through a real broker and
worker in integration/test_hostile_messages.py.)"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import eventlib
from eventlib import EventNotFound, SerializationError
from eventlib.http import application
from eventlib.sending import spool_status

from .http_server import LiveServer, Reply, serve

SHOP_EVENTS = """
    from eventlib import BaseEvent, handler

    RECEIVED = []


    class Signup(BaseEvent):
        public = True

        @handler
        def keep(self):
            RECEIVED.append(self.data)
"""

SIDE_EFFECTS = """
    from eventlib import BaseEvent, handler

    RAN = []


    class Boom(BaseEvent):
        public = True

        @handler
        def explode(self):
            RAN.append(self.id)
"""

NOTE = "raised serializing the data of the event shop.Signup; nothing was sent"

SURROGATES = [
    pytest.param(
        {"name": "Ana\ud800"},
        "data['name']: cannot serialize a string holding a lone surrogate "
        "('\\ud800' at index 3), which has no UTF-8 form",
        id="in-a-value",
    ),
    pytest.param(
        {"tags": {"\udfff": 1}},
        "data['tags']: cannot serialize the key '\\udfff' holding a lone surrogate "
        "('\\udfff' at index 0), which has no UTF-8 form",
        id="in-a-key",
    ),
]

DEPTH_MESSAGE = (
    "cannot serialize data nested more than 100 levels deep (eventlib.serialization.MAX_DEPTH)"
)


@pytest.fixture
def shop(shop, isolation) -> Any:
    """The app ``shop``, the only one configured, next to the app ``sidefx``."""
    isolation.write("sidefx/events.py", SIDE_EFFECTS)
    eventlib.configure(apps=["shop"])
    return shop


@pytest.fixture
def unreachable_broker() -> str:
    """A broker URL on a port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"


def during_an_outage(broker_url: str) -> None:
    """Configure a broker that refuses connections, and check that ``log()``
    spools a valid event there."""
    eventlib.configure(always_eager=False, broker_url=broker_url, broker_timeout=0.5)
    before = spool_status().count
    assert eventlib.log("shop.Signup", {"name": "Ana"})
    assert eventlib.flush(timeout=10) is False
    assert spool_status().count == before + 1


def nested(levels: int) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for _ in range(levels - 1):
        data = {"child": data}
    return data


# ----------------------------------------------------------------- log() ---


@pytest.mark.parametrize(("data", "message"), SURROGATES)
def test_log_refuses_a_lone_surrogate_alike_in_eager_mode_and_during_an_outage(
    shop, unreachable_broker, data, message
):
    eventlib.configure(always_eager=True)
    with pytest.raises(SerializationError) as eager:
        eventlib.log("shop.Signup", data)

    during_an_outage(unreachable_broker)
    with pytest.raises(SerializationError) as outage:
        eventlib.log("shop.Signup", data)

    assert str(eager.value) == str(outage.value) == message
    assert eager.value.__notes__ == outage.value.__notes__ == [NOTE]
    assert spool_status().count == 1  # only the valid event
    assert shop.RECEIVED == []


@pytest.mark.parametrize("levels", [101, 500, 5000])
def test_log_refuses_deep_data_naming_the_depth_and_the_event(shop, unreachable_broker, levels):
    eventlib.configure(always_eager=True)
    with pytest.raises(SerializationError) as eager:
        eventlib.log("shop.Signup", nested(levels))

    during_an_outage(unreachable_broker)
    with pytest.raises(SerializationError) as outage:
        eventlib.log("shop.Signup", nested(levels))

    assert str(eager.value) == str(outage.value)
    assert str(eager.value).startswith("data['child']['child']")
    assert str(eager.value).endswith(f"]: {DEPTH_MESSAGE}")
    assert eager.value.__notes__ == outage.value.__notes__ == [NOTE]
    assert spool_status().count == 1
    assert shop.RECEIVED == []


def test_log_accepts_data_at_the_maximum_depth(shop):
    eventlib.configure(always_eager=True)

    data = nested(100)

    eventlib.log("shop.Signup", data)

    [received] = shop.RECEIVED
    assert received == data


def test_log_refuses_an_event_outside_the_configured_apps_and_imports_nothing(shop):
    eventlib.configure(always_eager=True)

    with pytest.raises(EventNotFound) as raised:
        eventlib.log("sidefx.Boom", {})

    assert str(raised.value) == (
        "There is no event named Boom in the sidefx app: sidefx is not among the configured apps"
    )
    assert "sidefx" not in sys.modules


# ------------------------------------------------------ the HTTP endpoint ---


@pytest.fixture
def server(shop) -> Iterator[LiveServer]:
    with serve(application) as live:
        yield live


def post_json(server: LiveServer, body: dict[str, Any]) -> Reply:
    """A JSON body as a browser's ``JSON.stringify`` would write it: lone
    surrogates escaped, ``"\\ud800"``."""
    headers = {"Origin": server.origin, "Content-Type": "application/json"}
    return server.request("POST", "/event/log", json.dumps(body).encode(), headers)


@pytest.mark.parametrize(("data", "message"), SURROGATES)
def test_the_endpoint_answers_400_to_a_lone_surrogate_alike_with_and_without_a_broker(
    shop, server, unreachable_broker, data, message
):
    eventlib.configure(always_eager=True)
    eager = post_json(server, {"event": "shop.Signup", "data": data})

    during_an_outage(unreachable_broker)
    outage = post_json(server, {"event": "shop.Signup", "data": data})

    for reply in (eager, outage):
        assert (reply.status, reply.json()) == (400, {"error": message})
    assert server.errors == []
    assert spool_status().count == 1
    assert shop.RECEIVED == []
