"""The HTTP endpoint under gunicorn: chunked request bodies, and random
requests, over loopback to a real server in a process of its own.

gunicorn serves ``eventlib.http``'s application with one synchronous
worker (:func:`tests.http_requests.serve_deals`).  Its handlers run in
eager mode, in the worker, before the response is written, and write what
they received to a file, a line of JSON per event: when a test reads a
response, what the handler got is in the file.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings

from .http_requests import (
    ALLOWED,
    LIMIT,
    PUBLIC_EVENTS,
    SERVER_METHODS,
    Served,
    check_response,
    http_requests,
    send,
    serve_deals,
)
from .http_server import TIMEOUT

ENDPOINT = f"""
import eventlib
from eventlib.http import make_application

import recorder

eventlib.configure(always_eager=True, apps=["deals"])
recorder.record_deals()
application = make_application(
    allowed_origins={{{ALLOWED!r}}}, public_events={sorted(PUBLIC_EVENTS)!r}
)
"""
FORM = "application/x-www-form-urlencoded"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``eventlib.http``'s application, as ``make_application`` builds it
    with the options of the property tests, under gunicorn."""
    root = tmp_path_factory.mktemp("gunicorn")
    with serve_deals(root, "endpoint:application", {"endpoint.py": ENDPOINT}) as served:
        yield served


def form_of_size(size: int) -> bytes:
    """A form of exactly ``size`` bytes (over 12 KB): five keys, each value
    within the value length limit."""
    body = "&".join(f"k{i}=" + "x" * 4000 for i in range(5)).encode()[:size]
    assert len(body) == size
    return body


def test_a_chunked_form_body_reaches_the_handler(served):
    chunks = [b"deal_id=4", b"2&note=caf%C3", b"%A9"]

    reply = served.post("__event__=deals.DealClick", iter(chunks), FORM)

    assert served.accepted(reply) == {"deal_id": "42", "note": "café"}


def test_a_chunked_json_body_reaches_the_handler(served):
    body = json.dumps(
        {"event": "deals.DealClick", "data": {"deal_id": 42, "cart": [{"sku": "café"}]}},
        ensure_ascii=False,
    ).encode()
    cut = body.index("é".encode()) + 1  # within the two bytes of "é"

    reply = served.post("", iter([body[:cut], body[cut:]]), "application/json")

    assert served.accepted(reply) == {"deal_id": 42, "cart": [{"sku": "café"}]}


def test_a_body_in_one_byte_chunks_reaches_the_handler(served):
    body = b'{"data": {"deal_id": 7}}'

    reply = served.post(
        "__event__=deals.DealClick", (body[i : i + 1] for i in range(len(body))), "application/json"
    )

    assert served.accepted(reply) == {"deal_id": 7}


def test_a_chunked_body_of_the_limit_is_accepted(served):
    body = form_of_size(LIMIT)
    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)]

    reply = served.post("__event__=deals.DealClick", iter(chunks), FORM)

    assert len(served.accepted(reply)) == 5


def test_a_chunked_body_over_the_limit_is_refused_without_reading_to_its_end(served):
    """The chunks sent are one byte over the limit, and the body does not
    end (no last chunk): the endpoint answers 413 all the same, having read
    no more than the limit allows."""
    before = served.handled()
    server = served.server
    chunk = form_of_size(LIMIT + 1)
    head = (
        "POST /event/log?__event__=deals.DealClick HTTP/1.1\r\n"
        f"Host: {server.netloc}\r\nOrigin: {server.origin}\r\nContent-Type: {FORM}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    with socket.create_connection((server.host, server.port), timeout=TIMEOUT) as sock:
        sock.sendall(head + f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        answer = sock.makefile("rb").read()  # gunicorn closes the connection

    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large", answer
    assert json.loads(rest.partition(b"\r\n\r\n")[2]) == {"error": "the body is over 16384 bytes"}
    assert served.handled() == before


def test_a_key_given_twice_in_a_chunked_json_body_is_refused(served):
    body = [b'{"event": "deals.DealClick", "data": {"deal_id": 1, ', b'"deal_id": 2}}']

    reply = served.post("", iter(body), "application/json")

    assert (reply.status, reply.json()) == (
        400,
        {"error": "the key 'deal_id' is given twice in the same object of the JSON body"},
    )


def test_no_request_crashes_the_endpoint_under_gunicorn(served):
    """Random requests over loopback, many of them chunked: every answer
    is the endpoint's JSON with one of its statuses (never a 5xx, never a
    411 under a server that ends chunked bodies), and the handler of every
    accepted event got the data sent; no event browsers may not log ran."""

    @settings(
        max_examples=400,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(http_requests(SERVER_METHODS, pages=True))
    def check(request):
        reply = send(served.server, request)
        check_response(request, reply.status, reply.headers, reply.body, served.handled_event)
        assert reply.status != 411

    check()

    assert served.handled("leaked") == []
    assert served.handled(), "no request was accepted"
