"""The HTTP endpoint, ``eventlib.http``: real requests to a real server.

Every status code is checked with a request over loopback (``http.client``
against :func:`tests.http_server.serve`); only the bulk of the property test
calls the WSGI application directly.  Handlers run in eager mode, in the
server's request thread, before the response is written: when a test reads
the response, what the handler recorded is there.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from importlib import resources
from typing import Any
from urllib.parse import urlencode
from wsgiref.util import setup_testing_defaults

import pytest
from hypothesis import HealthCheck, given, settings

import eventlib
from eventlib import http
from eventlib.http import application, make_application
from eventlib.sending import spool_status

from .http_requests import (
    ALLOWED,
    DEALS_EVENTS,
    FOREIGN,
    LIMIT,
    PUBLIC_EVENTS,
    SAME_HOST,
    Handled,
    check_response,
    http_requests,
    nested,
    raw_header,
    send,
)
from .http_server import LiveServer, Reply, serve

UNREACHABLE_BROKER = "amqp://guest:guest@127.0.0.1:1//"


@pytest.fixture
def deals(isolation):
    """The app ``deals``, configured, with handlers running in eager mode."""
    isolation.write("deals/events.py", DEALS_EVENTS)
    eventlib.configure(always_eager=True, apps=["deals"])
    return importlib.import_module("deals.events")


@pytest.fixture
def server(deals) -> Iterator[LiveServer]:
    """``eventlib.http.application`` (the default options) on loopback."""
    with serve(application) as live:
        yield live


@pytest.fixture
def serve_with(deals) -> Iterator[Callable[..., LiveServer]]:
    """``serve_with(**options)``: a server of ``make_application(**options)``."""
    with ExitStack() as stack:
        yield lambda **options: stack.enter_context(serve(make_application(**options)))


def post(
    server: LiveServer,
    query: str = "",
    body: bytes | Iterable[bytes] | None = None,
    content_type: str | None = None,
    headers: dict[str, str | None] | None = None,
    method: str = "POST",
) -> Reply:
    """A request to ``/event/log`` from a page of the server's own origin;
    a header given as ``None`` in ``headers`` is not sent."""
    sent: dict[str, str | None] = {"Origin": server.origin, "Content-Type": content_type}
    sent.update(headers or {})
    target = f"/event/log?{query}" if query else "/event/log"
    return server.request(
        method, target, body, {name: value for name, value in sent.items() if value is not None}
    )


def as_json(event: str | None = None, data: Any = None) -> bytes:
    """A JSON body, as UTF-8: ``{"event": event, "data": data}`` without
    the members given as ``None``."""
    body = {
        **({} if event is None else {"event": event}),
        **({} if data is None else {"data": data}),
    }
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def post_json(server: LiveServer, body: bytes, query: str = "", **kwargs: Any) -> Reply:
    return post(server, query, body, "application/json", **kwargs)


def post_form(server: LiveServer, body: str | bytes, query: str = "", **kwargs: Any) -> Reply:
    raw = body.encode("utf-8") if isinstance(body, str) else body
    return post(server, query, raw, "application/x-www-form-urlencoded", **kwargs)


def assert_error(reply: Reply, status: int, message: str | None = None) -> str:
    """``reply`` is the JSON error ``status``; with ``message``, exactly it."""
    assert (reply.status, reply.headers["Content-Type"]) == (status, "application/json"), (
        reply.status,
        reply.body,
    )
    body = reply.json()
    assert list(body) == ["error"]
    assert isinstance(body["error"], str)
    assert body["error"]
    if message is not None:
        assert body["error"] == message
    return body["error"]


def accepted(reply: Reply, deals) -> Any:
    """``reply`` accepted an event: return the one event its handler got."""
    assert reply.status == 202, (reply.status, reply.body)
    assert reply.headers["Content-Type"] == "application/json"
    event_id = reply.json()["id"]
    assert reply.json() == {"id": event_id}
    [event] = [event for event in deals.RECEIVED if event.id == event_id]
    assert deals.LEAKED == []
    return event


# ------------------------------------------------- the three input forms ---


def test_the_seed_query_string_form_logs_the_event(server, deals):
    reply = post(server, "__event__=deals.DealClick&param1=val1&param2=val2")

    event = accepted(reply, deals)
    assert event.name == "deals.DealClick"
    assert event.data == {"param1": "val1", "param2": "val2"}
    assert event.source == "http"
    assert event.client_address == "127.0.0.1"
    assert reply.headers["Cache-Control"] == "no-store"
    assert reply.headers["Access-Control-Allow-Origin"] is None
    assert server.errors == []


def test_a_form_encoded_body_adds_to_the_query_string(server, deals):
    reply = post_form(server, "deal_id=42&ref=home", query="__event__=deals.DealClick&page=1")

    assert accepted(reply, deals).data == {"page": "1", "deal_id": "42", "ref": "home"}


def test_a_form_encoded_body_may_name_the_event(server, deals):
    reply = post_form(server, "__event__=deals.DealClick&deal_id=42")

    event = accepted(reply, deals)
    assert (event.name, event.data, event.source) == ("deals.DealClick", {"deal_id": "42"}, "http")


def test_a_json_body_keeps_numbers_and_nested_values(server, deals):
    data = {
        "deal_id": 42,
        "price": 9.5,
        "big": 2**70,
        "negative": -1,
        "flag": True,
        "nothing": None,
        "tags": ["a", "b"],
        "cart": {"items": [{"sku": "X1", "qty": 2}], "coupon": None},
    }

    reply = post_json(server, as_json("deals.DealClick", data))

    event = accepted(reply, deals)
    assert event.data == data
    assert type(event.data["deal_id"]) is int
    assert type(event.data["price"]) is float
    assert (event.source, event.client_address) == ("http", "127.0.0.1")


def test_a_json_body_without_data_logs_empty_data(server, deals):
    assert accepted(post_json(server, as_json("deals.DealClick")), deals).data == {}


def test_a_json_body_may_take_the_event_from_the_query_string(server, deals):
    reply = post_json(server, as_json(data={"deal_id": 1}), query="__event__=deals.DealClick")

    assert accepted(reply, deals).data == {"deal_id": 1}


def test_a_json_content_type_with_parameters_is_json(server, deals):
    reply = post(
        server, "", as_json("deals.DealClick", {"n": 1}), "Application/JSON; charset=utf-8"
    )

    assert accepted(reply, deals).data == {"n": 1}


def test_a_beacon_without_body_may_say_text_plain(server, deals):
    reply = post(server, "__event__=deals.DealClick&a=1", b"", "text/plain;charset=UTF-8")

    assert accepted(reply, deals).data == {"a": "1"}


@pytest.mark.parametrize(
    ("query", "form", "message"),
    [
        (
            "__event__=deals.DealClick&deal_id=1&deal_id=2",
            None,
            "the key 'deal_id' is given twice in the query string; send a list in a JSON body",
        ),
        (
            "__event__=deals.DealClick",
            "deal_id=1&deal_id=2",
            "the key 'deal_id' is given twice in the body; send a list in a JSON body",
        ),
        (
            "__event__=deals.DealClick&deal_id=1",
            "deal_id=2",
            "the key 'deal_id' is in both the query string and the body",
        ),
        (
            "__event__=deals.DealClick&__event__=deals.DealClick",
            None,
            "the key '__event__' is given twice in the query string; send a list in a JSON body",
        ),
        ("__event__=deals.DealClick", "__event__=deals.DealClick", "__event__ is given twice"),
    ],
)
def test_a_repeated_key_is_refused(server, deals, query, form, message):
    reply = post_form(server, form, query) if form is not None else post(server, query)

    assert_error(reply, 400, message)
    assert deals.RECEIVED == []


@pytest.mark.parametrize(
    ("body", "key"),
    [
        (b'{"event": "deals.DealClick", "data": {"deal_id": 1, "deal_id": 2}}', "deal_id"),
        (b'{"event": "deals.DealClick", "data": {}, "event": "deals.Refund"}', "event"),
        (b'{"data": {"deal_id": 1}, "data": {"deal_id": 2}, "event": "deals.DealClick"}', "data"),
        (b'{"event": "deals.DealClick", "data": {"cart": {"sku": "a", "sku": "b"}}}', "sku"),
        (b'{"event": "deals.DealClick", "data": {"cart": [1, [{"n": 1, "n": 1}]]}}', "n"),
        (b'{"event": "deals.DealClick", "data": {"caf\\u00e9": 1, "caf\xc3\xa9": 2}}', "café"),
    ],
    ids=["data", "event", "body", "nested object", "object in a list", "escaped"],
)
def test_a_key_given_twice_in_a_json_object_is_refused(server, deals, body, key):
    """At any depth, even with the same value twice, or once escaped: the
    last value is never silently kept."""
    reply = post_json(server, body)

    message = f"the key {key!r} is given twice in the same object of the JSON body"
    assert_error(reply, 400, message)
    assert deals.RECEIVED == []


def test_the_same_key_in_different_json_objects_is_kept(server, deals):
    data = {"deal_id": 1, "cart": {"deal_id": 2}, "items": [{"deal_id": 3}, {"deal_id": 4}]}

    assert accepted(post_json(server, as_json("deals.DealClick", data)), deals).data == data


def test_a_long_key_given_twice_is_named_by_its_start(server, deals):
    key = "k" * 300
    body = f'{{"event": "deals.DealClick", "data": {{"{key}": 1, "{key}": 2}}}}'.encode()

    message = f"the key {'k' * 40!r}... is given twice in the same object of the JSON body"
    assert_error(post_json(server, body), 400, message)


def test_an_empty_value_is_kept_as_the_empty_string(server, deals):
    reply = post_form(server, "coupon=&note", query="__event__=deals.DealClick&ref=")

    assert accepted(reply, deals).data == {"ref": "", "coupon": "", "note": ""}


def test_non_ascii_values_are_utf8_in_every_form(server, deals):
    values = {"title": "café", "city": "日本", "emoji": "🎉"}
    query = "__event__=deals.DealClick&" + urlencode(values)
    assert "%C3%A9" in query  # percent-encoded UTF-8, as browsers send it

    from_query = accepted(post(server, query), deals)
    from_form = accepted(post_form(server, urlencode(values), "__event__=deals.DealClick"), deals)
    from_json = accepted(post_json(server, as_json("deals.DealClick", values)), deals)
    escaped = json.dumps({"event": "deals.DealClick", "data": values}).encode("ascii")
    from_escaped_json = accepted(post_json(server, escaped), deals)

    for event in (from_query, from_form, from_json, from_escaped_json):
        assert event.data == values


@pytest.mark.parametrize(
    ("query", "content_type", "body", "message"),
    [
        ("__event__=deals.DealClick&title=caf%E9", None, None, "the query string is not UTF-8"),
        ("__event__=deals.DealClick&ti%FFtle=x", None, None, "the query string is not UTF-8"),
        (
            "__event__=deals.DealClick",
            "application/x-www-form-urlencoded",
            b"title=caf%E9",
            "the body is not UTF-8",
        ),
        (
            "__event__=deals.DealClick",
            "application/x-www-form-urlencoded",
            b"title=caf\xe9",
            "the body is not UTF-8",
        ),
        (
            "",
            "application/json",
            b'{"event": "deals.DealClick", "data": {"title": "caf\xe9"}}',
            "the body is not UTF-8",
        ),
    ],
)
def test_invalid_utf8_is_refused(server, deals, query, content_type, body, message):
    assert_error(post(server, query, body, content_type), 400, message)
    assert deals.RECEIVED == []


def test_raw_invalid_utf8_in_the_query_string_is_refused(server, deals):
    """A non-ASCII byte sent as is in the request target (no browser does;
    a script can) is not UTF-8 either: refused, not turned into U+FFFD."""
    host = server.netloc.encode()
    raw = (
        b"POST /event/log?__event__=deals.DealClick&title=caf\xe9 HTTP/1.1\r\n"
        b"Host: " + host + b"\r\n"
        b"Origin: http://" + host + b"\r\n"
        b"Content-Length: 0\r\n"
        b"Connection: close\r\n\r\n"
    )

    assert_error(server.request_bytes(raw), 400, "the query string is not UTF-8")
    assert deals.RECEIVED == []


# ------------------------------------------------- 400: what is refused ---


@pytest.mark.parametrize(
    ("query", "content_type", "body", "message"),
    [
        (
            "deal_id=1",
            None,
            None,
            "no event named: give __event__=app.EventName in the query string",
        ),
        (
            "__event__=",
            None,
            None,
            "no event named: give __event__=app.EventName in the query string",
        ),
        (
            "",
            "application/json",
            b'{"data": {"deal_id": 1}}',
            "no event named: give __event__=app.EventName in the query string",
        ),
        (
            "__event__=not-a-name",
            None,
            None,
            "Invalid event name 'not-a-name': expected 'app.EventName', "
            "where the app may be dotted and every part is a Python identifier",
        ),
        (
            "__event__=DealClick",
            None,
            None,
            "Invalid event name 'DealClick': expected 'app.EventName', "
            "where the app may be dotted and every part is a Python identifier",
        ),
        ("", "application/json", b'{"event": 42}', "the event name must be a string"),
        (
            "",
            "application/json",
            b'["deals.DealClick"]',
            'a JSON body is an object {"event": "app.EventName", "data": {...}}',
        ),
        (
            "",
            "application/json",
            b'{"event": "deals.DealClick", "deal_id": 1}',
            'a JSON body is an object {"event": "app.EventName", "data": {...}}',
        ),
        (
            "",
            "application/json",
            b'{"event": "deals.DealClick", "data": [1]}',
            "data must be a JSON object",
        ),
        (
            "__event__=deals.DealClick&deal_id=1",
            "application/json",
            b'{"data": {}}',
            "with a JSON body, the query string may only hold __event__",
        ),
        (
            "__event__=deals.DealClick",
            "application/json",
            b'{"event": "deals.Checkout"}',
            "the query names the event 'deals.DealClick' and the body 'deals.Checkout'",
        ),
    ],
)
def test_a_missing_or_malformed_event_is_refused(server, deals, query, content_type, body, message):
    assert_error(post(server, query, body, content_type), 400, message)
    assert deals.RECEIVED == []


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b'{"event": "deals.DealClick",}',
        b"NaN",
        b'{"event": "deals.DealClick", "data": {"x": NaN}}',
    ],
)
def test_a_body_that_is_not_json_is_refused(server, deals, body):
    message = assert_error(post_json(server, body, query="__event__=deals.DealClick"), 400)

    assert message.startswith("the body is not valid JSON: ")


def test_a_number_json_cannot_carry_is_refused(server, deals):
    reply = post_json(server, b'{"event": "deals.DealClick", "data": {"x": 1e400}}')

    assert_error(reply, 400, "data['x']: cannot serialize the float inf (JSON has none)")


def test_invalid_data_answers_the_validation_error(server, deals):
    reply = post(server, "__event__=deals.Checkout&ref=home")

    assert_error(reply, 400, "The following keys are missing: deal_id")
    assert deals.RECEIVED == []


def test_valid_data_passes_clean(server, deals):
    assert accepted(post(server, "__event__=deals.Checkout&deal_id=7"), deals).data == {
        "deal_id": "7"
    }


# ----------------------------------------------------- 403, 404, 405 ---


def test_an_event_that_is_not_public_is_forbidden(server, deals):
    assert_error(
        post(server, "__event__=deals.Refund&order_id=1"),
        403,
        "the event deals.Refund is not public",
    )
    assert_error(
        post_json(server, as_json("deals.Listed")), 403, "the event deals.Listed is not public"
    )
    assert deals.LEAKED == []
    assert deals.RECEIVED == []


def test_public_is_inherited_like_any_class_attribute_and_can_be_turned_off(server, deals):
    assert accepted(post(server, "__event__=deals.WideClick&x=1"), deals).data == {"x": "1"}
    assert_error(
        post(server, "__event__=deals.InternalClick&x=1"),
        403,
        "the event deals.InternalClick is not public",
    )
    assert len(deals.RECEIVED) == 1


def test_public_events_makes_an_event_loggable(serve_with, deals):
    server = serve_with(public_events={"deals.Listed"})

    assert accepted(post(server, "__event__=deals.Listed&x=1"), deals).data == {"x": "1"}
    assert_error(
        post(server, "__event__=deals.Refund"), 403, "the event deals.Refund is not public"
    )


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("deals.Nope", "There is no event named Nope in the deals app"),
        ("nowhere.Thing", "There is no event named Thing in the nowhere app"),
        # Names in the events module that are not events.
        ("deals.BaseEvent", "There is no event named BaseEvent in the deals app"),
        ("deals.Money", "There is no event named Money in the deals app"),
        ("deals.handler", "There is no event named handler in the deals app"),
        ("deals.RECEIVED", "There is no event named RECEIVED in the deals app"),
    ],
)
def test_an_unknown_event_is_not_found(server, deals, name, message):
    assert_error(post(server, f"__event__={name}"), 404, message)
    assert deals.RECEIVED == []


def test_another_path_is_not_found(server):
    reply = server.request("POST", "/event/other", b"", {"Origin": server.origin})

    assert_error(reply, 404, "no endpoint at /event/other")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "TRACE", "BREW"])
def test_any_method_but_post_is_not_allowed(server, deals, method):
    reply = post(server, "__event__=deals.DealClick", method=method)

    assert_error(reply, 405, f"use POST to log an event, not {method}")
    assert reply.headers["Allow"] == "POST, OPTIONS"
    assert deals.RECEIVED == []


def test_head_is_not_allowed_either(server, deals):
    reply = post(server, "__event__=deals.DealClick", method="HEAD")

    assert (reply.status, reply.headers["Allow"], reply.body) == (405, "POST, OPTIONS", b"")
    assert deals.RECEIVED == []


# -------------------------------------------------------------- 413, 415 ---


def padded_json(size: int) -> bytes:
    """A valid JSON body for deals.DealClick of exactly ``size`` bytes: five
    values, each within the value length limit."""
    data = {f"pad{i}": "" for i in range(5)}
    room = size - len(as_json("deals.DealClick", data))
    for key in data:
        data[key] = "x" * min(4000, room)
        room -= len(data[key])
    body = as_json("deals.DealClick", data)
    assert len(body) == size
    return body


def test_a_body_of_the_limit_is_accepted(server, deals):
    reply = post_json(server, padded_json(LIMIT))

    assert len(accepted(reply, deals).data) == 5


def test_a_body_over_the_limit_is_too_large(server, deals):
    reply = post_json(server, padded_json(LIMIT + 1))

    assert_error(reply, 413, "the body is over 16384 bytes")
    assert deals.RECEIVED == []


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_sent(server, deals):
    connection = server.connection()
    try:
        connection.putrequest("POST", "/event/log?__event__=deals.DealClick")
        connection.putheader("Origin", server.origin)
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(10 * 1024 * 1024))
        connection.endheaders()  # and no body: the server must not wait for it
        response = connection.getresponse()
        status, body = response.status, json.loads(response.read())
    finally:
        connection.close()

    assert (status, body) == (413, {"error": "the body is over 16384 bytes"})


@pytest.mark.parametrize("length", ["many", "-1", "1_0", "+5", "0x10", "\u0661"])
def test_an_invalid_content_length_is_refused(server, deals, length):
    raw = (
        "POST /event/log?__event__=deals.DealClick HTTP/1.1\r\n"
        f"Host: {server.netloc}\r\nOrigin: {server.origin}\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {length}\r\n"
        "Connection: close\r\n\r\na=1"
    ).encode()

    assert_error(server.request_bytes(raw), 400, "invalid Content-Length")
    assert deals.RECEIVED == []


LENGTH_REQUIRED = (
    "this server cannot read a body without a Content-Length (a chunked one): send a Content-Length"
)


@pytest.mark.parametrize(
    ("content_type", "chunks"),
    [
        ("application/x-www-form-urlencoded", [b"deal_id=", b"42"]),
        ("application/json", [b'{"event": "deals.DealClick", ', b'"data": {"deal_id": 42}}']),
        ("application/json", []),
    ],
    ids=["form", "json", "empty"],
)
def test_a_chunked_body_a_server_cannot_end_answers_411(server, deals, content_type, chunks):
    """wsgiref's server passes a chunked body on as it came, chunk sizes
    and all, and does not say where it ends (no ``wsgi.input_terminated``):
    the body is refused, not dropped.  tests/test_http_gunicorn.py reads
    such bodies under gunicorn, which says."""
    reply = post(server, "__event__=deals.DealClick", iter(chunks), content_type)

    assert_error(reply, 411, LENGTH_REQUIRED)
    assert deals.RECEIVED == []
    assert server.errors == []
    # The connection was closed cleanly, and the server goes on.
    assert accepted(post_form(server, "deal_id=42", "__event__=deals.DealClick"), deals)


def test_max_body_is_an_option(serve_with, deals):
    server = serve_with(max_body=100)

    reply = post_form(server, "x" * 101, "__event__=deals.DealClick")

    assert_error(reply, 413, "the body is over 100 bytes")


@pytest.mark.parametrize(
    ("content_type", "media_type"),
    [
        ("text/html", "text/html"),
        ("multipart/form-data; boundary=x", "multipart/form-data"),
        ("text/plain;charset=UTF-8", "text/plain"),
        # wsgiref (as CGI) gives a request without Content-Type "text/plain".
        (None, "text/plain"),
    ],
)
def test_an_unsupported_content_type_is_refused(server, deals, content_type, media_type):
    reply = post(server, "__event__=deals.DealClick", b'{"a": 1}', content_type)

    assert_error(
        reply,
        415,
        f"unsupported content type {media_type!r}: send application/json or "
        "application/x-www-form-urlencoded",
    )
    assert deals.RECEIVED == []


# -------------------------------------------------------------------- 503 ---


def test_a_broker_that_cannot_take_the_event_answers_202_and_spools_it(server, deals):
    eventlib.configure(always_eager=False, broker_url=UNREACHABLE_BROKER, broker_timeout=0.5)

    reply = post(server, "__event__=deals.DealClick&deal_id=1")

    assert reply.status == 202
    assert eventlib.flush(timeout=10) is False
    assert spool_status().count == 1
    assert deals.RECEIVED == []


def test_an_event_neither_broker_nor_spool_can_take_answers_503(server, deals, caplog, tmp_path):
    eventlib.configure(
        always_eager=False,
        broker_url=UNREACHABLE_BROKER,
        broker_timeout=0.5,
        spool_path=str(tmp_path / "missing" / "spool.sqlite"),
        dispatch="direct",
    )

    reply = post(server, "__event__=deals.DealClick&deal_id=1")

    assert_error(reply, 503, "the event could not be queued; try again later")
    [record] = [r for r in caplog.records if r.name == "eventlib" and r.levelno == logging.ERROR]
    assert record.getMessage() == "The HTTP endpoint could not send the event deals.DealClick"
    assert isinstance(record.exc_info[1], eventlib.DispatchError)
    assert "guest:**@127.0.0.1:1" in str(record.exc_info[1])
    assert deals.RECEIVED == []


# ------------------------------------------------------- failures: 500, 202 ---


def test_a_clean_that_raises_answers_400_and_logs_the_traceback(server, deals, caplog):
    reply = post(server, "__event__=deals.Broken&other=1")

    assert_error(reply, 400, "invalid data for the event deals.Broken: its clean() raised KeyError")
    [record] = [r for r in caplog.records if r.name == "eventlib" and r.levelno == logging.ERROR]
    assert record.getMessage() == (
        "The clean() of the event deals.Broken raised on data sent over HTTP"
    )
    assert isinstance(record.exc_info[1], KeyError)
    assert record.eventlib_event == "deals.Broken"
    assert deals.RECEIVED == []


def test_a_clean_that_returns_no_mapping_answers_400_and_logs_the_traceback(server, deals, caplog):
    reply = post(server, "__event__=deals.Misshapen")

    assert_error(
        reply, 400, "invalid data for the event deals.Misshapen: its clean() raised TypeError"
    )
    [record] = [r for r in caplog.records if r.name == "eventlib" and r.levelno == logging.ERROR]
    assert "clean() must return a mapping or None, not list" in str(record.exc_info[1])


def test_an_error_of_the_endpoint_itself_answers_a_json_500_and_logs_it(
    server, deals, caplog, monkeypatch
):
    def broken_log_from(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(http, "log_from", broken_log_from)
    reply = post(server, "__event__=deals.DealClick&deal_id=1")

    assert_error(reply, 500, "internal error, logged")
    [record] = [r for r in caplog.records if r.name == "eventlib" and r.levelno == logging.ERROR]
    assert record.getMessage() == "The HTTP endpoint failed on POST /event/log"
    assert isinstance(record.exc_info[1], RuntimeError)
    assert server.errors == []  # not wsgiref's plain-text 500


def test_a_failing_handler_is_logged_and_the_request_still_accepted(server, deals, caplog):
    reply = post(server, "__event__=deals.Failing&deal_id=1")

    event = accepted(reply, deals)  # the next handler ran
    assert event.data == {"deal_id": "1"}
    [record] = [r for r in caplog.records if r.name == "eventlib" and r.levelno == logging.ERROR]
    assert record.getMessage() == (
        f"Handler deals.events.Failing.explode failed on event deals.Failing (id {event.id})"
    )
    assert isinstance(record.exc_info[1], RuntimeError)


# ---------------------------------------------------------------- the script ---


SCRIPT = resources.files("eventlib").joinpath("static/eventlib.js").read_bytes()


def test_the_script_is_served_with_cache_headers(server):
    reply = server.request("GET", "/event/eventlib.js")

    assert (reply.status, reply.body) == (200, SCRIPT)
    assert reply.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert reply.headers["Cache-Control"] == "public, max-age=3600"
    assert reply.headers["Content-Length"] == str(len(SCRIPT))
    etag = reply.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"') and len(etag) > 2


def test_the_script_is_not_modified_for_its_etag(server):
    etag = server.request("GET", "/event/eventlib.js").headers["ETag"]

    reply = server.request("GET", "/event/eventlib.js", headers={"If-None-Match": etag})
    changed = server.request("GET", "/event/eventlib.js", headers={"If-None-Match": '"old"'})

    assert (reply.status, reply.body, reply.headers["ETag"]) == (304, b"", etag)
    assert (changed.status, changed.body) == (200, SCRIPT)


def test_head_of_the_script_has_the_headers_and_no_body(server):
    get = server.request("GET", "/event/eventlib.js")
    head = server.request("HEAD", "/event/eventlib.js")

    assert (head.status, head.body) == (200, b"")
    for name in ("Content-Type", "Cache-Control", "ETag", "Content-Length"):
        assert head.headers[name] == get.headers[name]


def test_the_script_is_read_only(server):
    reply = server.request("POST", "/event/eventlib.js", b"", {"Origin": server.origin})

    assert_error(reply, 405, "use GET")
    assert reply.headers["Allow"] == "GET, HEAD"


def test_the_path_is_an_option(serve_with, deals):
    server = serve_with(path="/track/")

    reply = server.request(
        "POST", "/track/log?__event__=deals.DealClick", b"", {"Origin": server.origin}
    )

    assert server.request("GET", "/track/eventlib.js").body == SCRIPT
    assert accepted(reply, deals).data == {}
    assert_error(post(server, "__event__=deals.DealClick"), 404, "no endpoint at /event/log")


# ------------------------------------------------------------------ CSRF ---


def test_a_foreign_origin_is_forbidden(server, deals):
    reply = post(server, "__event__=deals.DealClick", headers={"Origin": FOREIGN})

    assert_error(reply, 403, f"the origin {FOREIGN} may not log events here")
    assert reply.headers["Access-Control-Allow-Origin"] is None
    assert deals.RECEIVED == []


def test_without_origin_a_same_host_referer_is_accepted(server, deals):
    reply = post(
        server,
        "__event__=deals.DealClick",
        headers={"Origin": None, "Referer": f"{server.url}/deals/42?x=1"},
    )

    assert accepted(reply, deals).data == {}


@pytest.mark.parametrize(
    ("origin", "referer", "message"),
    [
        (None, None, "the request has no Origin or Referer header"),
        ("null", None, "the origin null may not log events here"),
        (None, f"{FOREIGN}/page", f"the origin {FOREIGN} may not log events here"),
        (None, "/relative/page", "the origin null may not log events here"),
        # Origin wins over a Referer of the same host.
        (FOREIGN, "{url}/page", f"the origin {FOREIGN} may not log events here"),
        # The same host name on another port is another origin.
        ("http://127.0.0.1:1", None, "the origin http://127.0.0.1:1 may not log events here"),
        ("http://127.0.0.1", None, "the origin http://127.0.0.1 may not log events here"),
    ],
)
def test_a_request_not_from_a_page_of_this_host_is_forbidden(
    server, deals, origin, referer, message
):
    headers = {"Origin": origin, "Referer": referer and referer.format(url=server.url)}

    assert_error(post(server, "__event__=deals.DealClick", headers=headers), 403, message)
    assert deals.RECEIVED == []


def test_an_allowed_origin_is_accepted_with_cors_headers(serve_with, deals):
    server = serve_with(allowed_origins={ALLOWED})

    reply = post(server, "__event__=deals.DealClick&x=1", headers={"Origin": ALLOWED})

    assert accepted(reply, deals).data == {"x": "1"}
    assert reply.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert reply.headers["Vary"] == "Origin"
    assert_error(post(server, "__event__=deals.DealClick", headers={"Origin": FOREIGN}), 403)


def test_a_preflight_from_an_allowed_origin_answers_204(serve_with):
    server = serve_with(allowed_origins={ALLOWED})

    reply = post(
        server,
        "",
        headers={
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
        method="OPTIONS",
    )

    assert (reply.status, reply.body) == (204, b"")
    assert reply.headers["Access-Control-Allow-Origin"] == ALLOWED
    assert "POST" in reply.headers["Access-Control-Allow-Methods"]
    assert "content-type" in reply.headers["Access-Control-Allow-Headers"].lower()


def test_a_preflight_from_a_foreign_origin_is_forbidden(serve_with):
    server = serve_with(allowed_origins={ALLOWED})

    reply = post(server, "", headers={"Origin": FOREIGN}, method="OPTIONS")

    assert_error(reply, 403, f"the origin {FOREIGN} may not log events here")
    assert reply.headers["Access-Control-Allow-Origin"] is None


def test_an_error_for_an_allowed_origin_is_readable_by_its_page(serve_with, deals):
    """eventlib.js rejects with the server's message; across origins the
    page can only read a response that carries Access-Control-Allow-Origin."""
    server = serve_with(allowed_origins={ALLOWED})

    reply = post(server, "__event__=deals.Checkout", headers={"Origin": ALLOWED})

    assert_error(reply, 400, "The following keys are missing: deal_id")
    assert reply.headers["Access-Control-Allow-Origin"] == ALLOWED


@pytest.mark.parametrize("header", ["Origin", "Referer"])
@pytest.mark.parametrize("value", ["http://[", "http://[::1/page", "http://x\uff03y"])
def test_an_unparsable_origin_is_forbidden_not_a_crash(server, deals, header, value):
    sent = {header: raw_header(value)}

    reply = server.request("POST", "/event/log?__event__=deals.DealClick", b"", sent)

    assert_error(reply, 403)
    assert server.errors == []
    assert deals.RECEIVED == []


# ---------------------------------------------------------------- limits ---


def test_the_number_of_parameters_is_limited(server, deals):
    at_limit = urlencode({f"k{i}": "v" for i in range(64)})
    over = urlencode({f"k{i}": "v" for i in range(65)})

    assert len(accepted(post_form(server, at_limit, "__event__=deals.DealClick"), deals).data) == 64
    assert_error(
        post_form(server, over, "__event__=deals.DealClick"), 400, "65 keys is over the limit of 64"
    )
    reply = post_json(server, as_json("deals.DealClick", {f"k{i}": i for i in range(65)}))
    assert_error(reply, 400, "65 keys is over the limit of 64")


def test_the_keys_of_nested_objects_count_towards_the_limit(server, deals):
    nested = {"a": {f"k{i}": {"x": i} for i in range(32)}}  # 1 + 32 + 32 keys

    assert_error(
        post_json(server, as_json("deals.DealClick", nested)),
        400,
        "65 keys is over the limit of 64",
    )
    del nested["a"]["k31"]
    assert accepted(post_json(server, as_json("deals.DealClick", nested)), deals)


def test_max_parameters_is_an_option(serve_with, deals):
    server = serve_with(max_parameters=2)

    assert_error(
        post(server, "__event__=deals.DealClick&a=1&b=2&c=3"), 400, "3 keys is over the limit of 2"
    )
    assert accepted(post(server, "__event__=deals.DealClick&a=1&b=2"), deals).data == {
        "a": "1",
        "b": "2",
    }


def test_the_key_length_is_limited(server, deals):
    key = "k" * 129

    reply = post(server, f"__event__=deals.DealClick&{key}=1")
    in_json = post_json(server, as_json("deals.DealClick", {"cart": [{key: 1}]}))

    message = f"the key {'k' * 40!r}... is over 128 characters"
    assert_error(reply, 400, message)
    assert_error(in_json, 400, message)
    at_limit = post(server, f"__event__=deals.DealClick&{key[:128]}=1")
    assert accepted(at_limit, deals).data == {key[:128]: "1"}


def test_the_value_length_is_limited_in_characters(server, deals):
    over = post_form(server, "comment=" + "x" * 4097, "__event__=deals.DealClick")
    in_json = post_json(server, as_json("deals.DealClick", {"cart": {"note": "x" * 4097}}))
    in_list = post_json(server, as_json("deals.DealClick", {"tags": ["a", "x" * 4097]}))

    assert_error(over, 400, "the value of 'comment' is over 4096 characters")
    assert_error(in_json, 400, "the value of 'note' is over 4096 characters")
    assert_error(in_list, 400, "the value of 'tags' is over 4096 characters")
    assert deals.RECEIVED == []
    # 4096 characters of two bytes each: characters count, not bytes.
    at_limit = post_json(server, as_json("deals.DealClick", {"comment": "é" * 4096}))
    assert accepted(at_limit, deals).data == {"comment": "é" * 4096}


def test_length_limits_are_options(serve_with, deals):
    server = serve_with(max_key_length=3, max_value_length=2)

    assert_error(
        post(server, "__event__=deals.DealClick&abcd=1"),
        400,
        "the key 'abcd'... is over 3 characters",
    )
    assert_error(
        post(server, "__event__=deals.DealClick&abc=123"),
        400,
        "the value of 'abc' is over 2 characters",
    )
    assert accepted(post(server, "__event__=deals.DealClick&abc=12"), deals).data == {"abc": "12"}


@pytest.mark.parametrize("depth", [200, 500, 900])
def test_deeply_nested_json_is_refused_not_a_crash(server, deals, depth):
    """A body of at most 2 KB, within every limit: only its nesting is deep.
    Accepted or refused, but no recursion error (a 500)."""
    reply = post_json(server, nested(depth))

    assert reply.status in (202, 400), (reply.status, reply.body)
    assert server.errors == []


# ----------------------------------------------- browsers send plain data ---


@pytest.mark.parametrize(
    "value",
    [
        {"__eventlib__": "decimal", "value": "1"},
        {"__eventlib__": "datetime", "value": "2024-01-01T00:00:00+00:00"},
        {"__eventlib__": "deals.money", "value": 250},
        {"__eventlib__": "dict", "value": [["a", 1]]},
        {"__eventlib__": "os.system", "value": "true"},
        {"__eventlib__": "decimal"},
    ],
)
def test_a_tagged_value_from_a_browser_stays_a_plain_dict(server, deals, value):
    reply = post_json(server, as_json("deals.DealClick", {"amount": value, "list": [value]}))

    assert accepted(reply, deals).data == {"amount": value, "list": [value]}


def test_tagged_shaped_form_data_stays_plain_strings(server, deals):
    reply = post(server, "__event__=deals.DealClick&__eventlib__=decimal&value=1")

    assert accepted(reply, deals).data == {"__eventlib__": "decimal", "value": "1"}


def test_tagged_shaped_json_data_stays_a_plain_dict(server, deals):
    data = {"__eventlib__": "decimal", "value": "1"}

    assert accepted(post_json(server, as_json("deals.DealClick", data)), deals).data == data


# --------------------------------------------------------- client address ---


@pytest.mark.parametrize(
    ("trusted_proxies", "forwarded_for", "address"),
    [
        (0, None, "127.0.0.1"),
        (0, "203.0.113.9", "127.0.0.1"),
        (1, None, "127.0.0.1"),
        (1, "203.0.113.9", "203.0.113.9"),
        (1, "10.6.6.6, 198.51.100.7, 203.0.113.9", "203.0.113.9"),
        (2, "10.6.6.6, 198.51.100.7, 203.0.113.9", "198.51.100.7"),
        (2, "203.0.113.9", "127.0.0.1"),
        (1, " , ", "127.0.0.1"),
    ],
)
def test_the_client_address(serve_with, deals, trusted_proxies, forwarded_for, address):
    server = serve_with(trusted_proxies=trusted_proxies)

    reply = post(server, "__event__=deals.DealClick", headers={"X-Forwarded-For": forwarded_for})

    event = accepted(reply, deals)
    assert (event.source, event.client_address) == ("http", address)


# ------------------------------------------------- names a client chooses ---


def test_an_event_name_cannot_run_a_module_of_the_server(server, monkeypatch, capsys):
    """``__event__=eventlib.__main__.X`` imports ``eventlib.__main__`` to look
    for ``eventlib.__main__.events``: that runs the eventlib command in the
    web server's process, with the server's own arguments."""
    monkeypatch.setattr(sys, "argv", ["eventlib", "--help"])

    reply = post(server, "__event__=eventlib.__main__.X")

    assert "Usage: eventlib" not in capsys.readouterr().out
    assert server.errors == []
    assert_error(reply, 404)


def test_an_event_name_imports_nothing_outside_the_apps(server, isolation):
    """Looking for ``notanapp.events`` imports the package ``notanapp`` (any
    module on ``sys.path``, and its import-time code): a client must not
    choose what the server imports."""
    isolation.write("notanapp/__init__.py", "SIDE_EFFECTS = ['ran at import']\n")

    reply = post(server, "__event__=notanapp.Thing")

    assert_error(reply, 404, "There is no event named Thing in the notanapp app")
    assert "notanapp" not in sys.modules


def test_an_events_module_outside_the_apps_is_refused_even_once_imported(server, isolation):
    isolation.write(
        "partner/events.py",
        """
        from eventlib import BaseEvent

        class Visit(BaseEvent):
            public = True
        """,
    )

    assert_error(post(server, "__event__=partner.Visit"), 404)
    assert "partner.events" not in sys.modules
    importlib.import_module("partner.events")
    reply = post(server, "__event__=partner.Visit&page=home")
    assert_error(reply, 404)
    assert "not among the configured apps" in reply.json()["error"]


# ------------------------------------------------------ property-based test ---


def handled_in(deals) -> Callable[[str], Handled | None]:
    """What the handler of an event of ``deals`` received, by event id."""

    def handled(event_id: str) -> Handled | None:
        for event in deals.RECEIVED:
            if event.id == event_id:
                return Handled(event.name, event.data, event.source, type(event).public)
        return None

    return handled


def call_wsgi(app, request: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    """Call ``app`` as a server would, without the socket; a chunked body
    as gunicorn gives it, without a length and with ``wsgi.input_terminated``."""
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    environ.update(
        {
            "REQUEST_METHOD": request["method"],
            "PATH_INFO": "/event/log",
            "QUERY_STRING": request["query"],
            "CONTENT_TYPE": request["content_type"],
            "CONTENT_LENGTH": str(len(request["body"])),
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_HOST": SAME_HOST,
            "wsgi.input": io.BytesIO(request["body"]),
        }
    )
    if request["chunks"] is not None:
        del environ["CONTENT_LENGTH"]
        environ["HTTP_TRANSFER_ENCODING"] = "chunked"
        environ["wsgi.input_terminated"] = True
    for name, value in request["headers"].items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    started: list[Any] = []
    body = b"".join(app(environ, lambda status, headers: started.append((status, headers))))
    [(status, headers)] = started
    return int(status.split()[0]), dict(headers), body


def test_no_request_crashes_the_endpoint_or_logs_a_private_event(deals):
    """Random requests, straight to the WSGI application (the same code as
    behind the server, minus the socket): never a 500, never a private event
    accepted, never an event accepted from a page that is not trusted, and
    an accepted event's handler gets the data sent."""
    app = make_application(allowed_origins={ALLOWED}, public_events=PUBLIC_EVENTS)

    @settings(max_examples=600, deadline=None, derandomize=True, database=None)
    @given(http_requests())
    def check(request):
        status, headers, body = call_wsgi(app, request)
        check_response(request, status, headers, body, handled_in(deals))
        assert status != 411
        assert deals.LEAKED == []

    check()


def test_no_request_over_the_socket_crashes_the_server(serve_with, deals):
    """Fewer random requests, over the socket to wsgiref's server, which
    cannot read a chunked body (411); then a normal request is still
    accepted.  tests/test_http_gunicorn.py sends them to gunicorn."""
    server = serve_with(allowed_origins={ALLOWED}, public_events=PUBLIC_EVENTS)

    @settings(
        max_examples=100,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(http_requests())
    def check(request):
        reply = send(server, request)
        check_response(request, reply.status, reply.headers, reply.body, handled_in(deals))
        assert (reply.status == 411) == (request["chunks"] is not None), reply
        assert deals.LEAKED == []

    check()

    assert server.errors == []
    assert accepted(post(server, "__event__=deals.DealClick&after=1"), deals).data == {"after": "1"}
