"""What the HTTP endpoint's tests share: the ``deals`` app they log events
of, random requests for the property tests, what must hold of any answer to
any of them, and the app served by gunicorn.

tests/test_http.py sends the requests to the endpoint in the test process
(straight to the WSGI application, and over loopback to wsgiref's server);
tests/test_http_gunicorn.py sends them over loopback to gunicorn, which
serves the endpoint in a process of its own (:func:`serve_deals`), as
tests/test_django_http.py does with the Django view.
"""

from __future__ import annotations

import json
import string
import textwrap
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from hypothesis import strategies as st

from .http_server import Loopback, Reply, ServerProcess, serve_gunicorn

DEALS_EVENTS = """
    from eventlib import BaseEvent, handler, register_type

    #: What the handlers of loggable events received.
    RECEIVED = []
    #: What the handlers of events browsers may not log received: stays empty.
    LEAKED = []


    @register_type(tag='deals.money')
    class Money:
        def __init__(self, cents):
            self.cents = cents

        def to_json(self):
            return self.cents

        @classmethod
        def from_json(cls, value):
            return cls(value)


    class DealClick(BaseEvent):
        public = True

        @handler
        def record(self):
            RECEIVED.append(self)


    class Checkout(BaseEvent):
        public = True

        def clean(self):
            self.require_data_keys(['deal_id'])

        @handler
        def record(self):
            RECEIVED.append(self)


    class Refund(BaseEvent):
        '''Exists, but is not public.'''

        @handler
        def record(self):
            LEAKED.append(self)


    class Listed(BaseEvent):
        '''Not public; some tests list it in public_events.'''

        @handler
        def record(self):
            RECEIVED.append(self)


    class Broken(BaseEvent):
        public = True

        def clean(self):
            return {'deal': self.data['deal']}  # KeyError without 'deal'

        @handler
        def record(self):
            RECEIVED.append(self)


    class Misshapen(BaseEvent):
        public = True

        def clean(self):
            return ['not', 'a', 'mapping']


    class WideClick(DealClick):
        '''Public as a subclass of a public event.'''


    class InternalClick(DealClick):
        '''A subclass that opts out again.'''

        public = False


    class Failing(BaseEvent):
        public = True

        @handler
        def explode(self):
            raise RuntimeError('the handler failed')

        @handler
        def record(self):
            RECEIVED.append(self)
"""

LIMIT = 16 * 1024
ALLOWED = "https://shop.example"
FOREIGN = "https://evil.example"
SAME_HOST = "127.0.0.1"
PUBLIC_EVENTS = frozenset({"deals.Listed"})
#: Event names a request may give; ``ANY`` stands for random text.
ANY = object()
NAMES = [
    *["deals.DealClick"] * 4,
    *["deals.Refund"] * 3,  # not public: never accepted
    "deals.Listed",
    "deals.Nope",
    "deals.Checkout",
    "deals.Failing",
    "deals.Broken",  # its clean() raises KeyError without 'deal': a 400
    "deals.BaseEvent",
    "nowhere.Thing",
    "deals",
    "deals.",
    ".DealClick",
    "deals.events.DealClick",
    ANY,
]
JSON_TYPES = ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON"]
FORM_TYPES = [
    "application/x-www-form-urlencoded",
    "application/x-www-form-urlencoded; charset=UTF-8",
]
OTHER_TYPES = ["", "text/plain", "text/plain;charset=UTF-8", "multipart/form-data; boundary=-", ";"]
#: Every status the endpoint may answer with in eager mode.
STATUSES = {202, 204, 400, 403, 404, 405, 411, 413, 415}

latin1 = st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f")


def pick(choices: list[Any], anything: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """One of ``choices`` (repeat one to make it likelier), where ``ANY``
    stands for a value of ``anything``."""
    return st.sampled_from(choices).flatmap(lambda c: anything if c is ANY else st.just(c))


#: Any method, even one no server would pass on ("post", "X").
METHODS = pick(
    [*["POST"] * 12, "post", "OPTIONS", "GET", "HEAD", "PUT", "DELETE", ANY],
    st.text(string.ascii_letters, min_size=1, max_size=8),
)
#: The methods a strict server (gunicorn) passes on to the application.
SERVER_METHODS = pick(
    [*["POST"] * 12, "OPTIONS", "GET", "HEAD", "PUT", "DELETE", ANY],
    st.text(string.ascii_uppercase, min_size=3, max_size=8),
)
names = pick(NAMES, st.text(max_size=30))
scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
data = st.dictionaries(st.text(max_size=10), json_values, max_size=5)
keys = pick(["deal_id", "__eventlib__", ANY, ANY, ANY], st.text(max_size=10))
#: Form pairs: distinct keys, now and then a key twice or __event__.
pairs = st.lists(
    st.tuples(keys, st.text(max_size=20)), max_size=6, unique_by=lambda pair: pair[0]
) | st.lists(st.tuples(keys | st.just("__event__"), st.text(max_size=20)), max_size=6)


def nested(depth: int) -> bytes:
    """A JSON body for deals.DealClick whose data nests ``depth`` lists."""
    return b'{"event": "deals.DealClick", "data": {"a": ' + b"[" * depth + b"]" * depth + b"}}"


@st.composite
def duplicated_json(draw) -> bytes:
    """A JSON body with a key given twice in one of its objects: the body's
    own, or one of the data's, at any depth."""
    key = json.dumps(draw(keys))
    twice = f"{{{key}: {json.dumps(draw(json_values))}, {key}: {json.dumps(draw(scalars))}}}"
    for _ in range(draw(st.integers(0, 3))):
        twice = draw(st.sampled_from(['{{"a": {}}}', "[{}]", '{{"a": 1, "b": [1, {}]}}'])).format(
            twice
        )
    name = json.dumps(draw(names))
    if draw(st.booleans()):
        return f'{{"event": {name}, "data": {{"deal_id": 1}}, "event": {name}}}'.encode()
    return f'{{"event": {name}, "data": {{"x": {twice}}}}}'.encode()


@st.composite
def bodies(draw) -> tuple[bytes, str]:
    """A body and its likely content type."""
    kinds = ["event json", "event json", "form", "form", "none", "json", "twice"]
    kind = draw(st.sampled_from([*kinds, "bytes", "big", "deep"]))
    if kind == "event json":
        body = {"event": draw(names), "data": draw(st.one_of(data, data, data, json_values))}
        return json.dumps(body, ensure_ascii=draw(st.booleans())).encode(), "json"
    if kind == "form":
        return urlencode(draw(pairs)).encode(), "form"
    if kind == "none":
        return b"", "form"
    if kind == "json":
        return json.dumps(draw(json_values)).encode(), "json"
    if kind == "twice":
        return draw(duplicated_json()), "json"
    if kind == "bytes":
        return draw(st.binary(max_size=64)), "other"
    if kind == "big":
        return b"x" * (LIMIT + draw(st.integers(-8, 64))), "form"
    depth = draw(st.sampled_from([1, 32, 33, 100, 300, 600, 900, 1200]) | st.integers(1, 1200))
    return nested(depth), "json"


@st.composite
def queries(draw, kind: str) -> str:
    """Mostly pairs naming the event, or nothing beside a JSON body (which
    names it); sometimes any printable text."""
    if draw(st.integers(0, 4)) == 4:
        return draw(st.text(string.printable.strip(), max_size=60))
    if kind == "json" and draw(st.integers(0, 3)) != 0:
        return ""
    chosen = draw(pairs)
    if draw(st.integers(0, 3)) != 0:
        chosen = [("__event__", draw(names)), *chosen]
    return urlencode(chosen)


#: (value sent, whether it makes the request come from a trusted page);
#: ``None`` means "not sent".
ORIGINS = [
    *[(f"http://{SAME_HOST}", True)] * 10,
    *[(ALLOWED, True)] * 3,
    (f"HTTP://{SAME_HOST}", True),
    (None, False),
    ("", False),
    ("null", False),
    (f"http://{SAME_HOST}:8000", False),
    (f"http://{SAME_HOST}.evil.example", False),
    (f"{ALLOWED}.evil", False),
    (FOREIGN, False),
    ("http://[", False),
    ("http://[::1", False),
    (ANY, False),
]
REFERERS = [
    (None, False),
    (None, False),
    (f"http://{SAME_HOST}/page", True),
    (f"{FOREIGN}/page", False),
    ("/page", False),
    ("http://[/x", False),
]


@st.composite
def header_sets(draw) -> tuple[dict[str, str], bool]:
    """Request headers and whether they say a trusted page sent it."""
    origin, origin_trusted = draw(st.sampled_from(ORIGINS))
    if origin is ANY:
        origin = draw(st.text(latin1, max_size=30))
    referer, referer_trusted = draw(st.sampled_from(REFERERS))
    sent = {}
    if origin is not None:
        sent["Origin"] = origin
    if referer is not None:
        sent["Referer"] = referer
    if draw(st.booleans()):
        sent["X-Forwarded-For"] = draw(st.text(latin1, max_size=30))
    # A server may strip an Origin of spaces to nothing, and then read the
    # Referer: as permissive as either reading.
    trusted = origin_trusted or (referer_trusted and not (origin or "").strip())
    return sent, trusted


@st.composite
def chunkings(draw, body: bytes) -> list[bytes] | None:
    """``None`` (the body goes with a Content-Length), or the chunks of a
    chunked body: one, or the body cut anywhere."""
    if draw(st.integers(0, 2)) == 0:
        return None
    if len(body) < 2:
        return [body]
    cuts = sorted(draw(st.sets(st.integers(1, len(body) - 1), max_size=6)))
    return [body[start:end] for start, end in pairwise([0, *cuts, len(body)])]


@st.composite
def http_requests(
    draw, methods: st.SearchStrategy[str] = METHODS, pages: bool = False
) -> dict[str, Any]:
    """A request to the endpoint: mostly what a page would send, with any
    part of it, now and then, anything.  With ``pages``, half of them are
    POSTs of a page of the server with the body's own content type, the
    requests most likely to be accepted, for a run of fewer examples."""
    body, kind = draw(bodies())
    likely = {"json": JSON_TYPES, "form": FORM_TYPES, "other": OTHER_TYPES}[kind]
    if pages and draw(st.booleans()):
        sent, trusted = {"Origin": f"http://{SAME_HOST}"}, True
        method = "POST"
        content_type = draw(st.sampled_from(likely))
    else:
        sent, trusted = draw(header_sets())
        method = draw(methods)
        content_type = draw(
            pick([*likely, *likely, *JSON_TYPES, *FORM_TYPES, *OTHER_TYPES, ANY], st.text(latin1))
        )
    return {
        "method": method,
        "query": draw(queries(kind)),
        "content_type": content_type,
        "body": body,
        "chunks": draw(chunkings(body)),
        "headers": sent,
        "trusted": trusted,
    }


@dataclass(frozen=True)
class Handled:
    """What the handler of an accepted event received."""

    name: str
    data: dict[str, Any]
    source: str
    #: Whether the event's class says ``public = True``.
    public: bool


def sent_data(request: dict[str, Any]) -> dict[str, Any]:
    """The data an accepted ``request`` carried, read with the standard
    library: the JSON body's ``data``, or the pairs of the query string and
    form but ``__event__``."""
    if request["content_type"].partition(";")[0].strip().lower() == "application/json":
        return json.loads(request["body"]).get("data", {})  # type: ignore[no-any-return]
    pairs = parse_qsl(request["query"], keep_blank_values=True)
    pairs += parse_qsl(request["body"].decode(), keep_blank_values=True)
    return {key: value for key, value in pairs if key != "__event__"}


def check_response(
    request: dict[str, Any],
    status: int,
    headers: Any,
    body: bytes,
    handled: Callable[[str], Handled | None],
) -> None:
    """What must hold of any response to any request; ``handled(id)`` is
    what the handler of the event ``id`` received, if it ran."""
    assert status in STATUSES, (status, body, request)
    if status == 204:
        assert body == b""
    elif request["method"].upper() != "HEAD":
        assert headers["Content-Type"] == "application/json"
        answer = json.loads(body)
        assert list(answer) == (["id"] if status == 202 else ["error"]), answer
        assert isinstance(answer[next(iter(answer))], str)
    if status in (202, 204):
        assert request["trusted"], request
        assert request["method"].upper() in ("POST", "OPTIONS")
    if status == 202:
        event = handled(json.loads(body)["id"])
        assert event is not None, ("accepted, but no handler ran", request)
        assert event.public or event.name in PUBLIC_EVENTS
        assert event.source == "http"
        sent = sent_data(request)
        assert event.data == ({"deal": sent["deal"]} if event.name == "deals.Broken" else sent)
        if request["headers"].get("Origin") == ALLOWED:
            assert headers["Access-Control-Allow-Origin"] == ALLOWED


def raw_header(text: str) -> str:
    """``text`` as the UTF-8 bytes a client sends, in the latin-1 text
    ``http.client`` writes byte for byte."""
    return text.encode("utf-8").decode("latin-1")


def send(server: Loopback, request: dict[str, Any]) -> Reply:
    """Send ``request`` to ``server``'s ``/event/log`` over a new
    connection, chunked when it has chunks, as a page of ``server`` would:
    the origins naming ``SAME_HOST`` name the server's ``host:port``."""
    as_sent = {
        f"http://{SAME_HOST}": f"http://{server.netloc}",
        f"HTTP://{SAME_HOST}": f"HTTP://{server.netloc}",
    }
    sent = {
        name: raw_header(
            as_sent.get(value, value.replace(f"//{SAME_HOST}/", f"//{server.netloc}/"))
        )
        for name, value in request["headers"].items()
    }
    if request["content_type"]:
        sent["Content-Type"] = raw_header(request["content_type"])
    target = "/event/log?" + quote(request["query"], safe="=&%+;/?:@,$!*'()~")
    if request["chunks"] is None:
        return server.request(request["method"], target, request["body"], sent)
    return server.request(request["method"], target, iter(request["chunks"]), sent)


# ------------------------------------------------ the app under gunicorn ---

#: ``recorder.py``, next to the application :func:`serve_deals` serves:
#: ``record_deals()`` makes the handlers of the ``deals`` app write what
#: they receive to the file of ``EVENTLIB_TEST_RECORD``.
RECORDER = """
import json
import os


class Record:
    '''In place of a list of deals.events: appending an event writes what
    its handler received, a line of JSON.'''

    def __init__(self, kind):
        self.kind = kind

    def append(self, event):
        line = {
            "kind": self.kind,
            "id": event.id,
            "name": event.name,
            "data": event.data,
            "source": event.source,
            "public": bool(getattr(type(event), "public", False)),
        }
        with open(os.environ["EVENTLIB_TEST_RECORD"], "a", encoding="utf-8") as file:
            file.write(json.dumps(line) + "\\n")


def record_deals():
    from deals import events

    events.RECEIVED = Record("received")
    events.LEAKED = Record("leaked")
"""


class Served:
    """The ``deals`` app's events logged through a server in a process of
    its own, and what their handlers received."""

    def __init__(self, server: ServerProcess, record: Path) -> None:
        self.server = server
        self.record = record

    def handled(self, kind: str = "received") -> list[dict[str, Any]]:
        """What the handlers received, in order: of the loggable events
        (``received``), or of those browsers may not log (``leaked``)."""
        if not self.record.exists():
            return []
        lines = self.record.read_text(encoding="utf-8").splitlines()
        return [entry for entry in map(json.loads, lines) if entry["kind"] == kind]

    def handled_event(self, event_id: str) -> Handled | None:
        """What the handler of the event ``event_id`` received, if it ran."""
        for entry in self.handled():
            if entry["id"] == event_id:
                return Handled(entry["name"], entry["data"], entry["source"], entry["public"])
        return None

    def post(
        self, query: str, body: Any, content_type: str, headers: Mapping[str, str] | None = None
    ) -> Reply:
        """POST ``body`` (bytes, or an iterable of chunks) to ``/event/log``,
        from a page of the server."""
        sent = {"Origin": self.server.origin, "Content-Type": content_type, **(headers or {})}
        return self.server.request("POST", f"/event/log?{query}", body, sent)

    def accepted(self, reply: Reply) -> dict[str, Any]:
        """The data the handler got of the event ``reply`` accepted."""
        assert reply.status == 202, (reply.status, reply.body)
        event = self.handled_event(reply.json()["id"])
        assert event is not None, "accepted, but no handler ran"
        return event.data


@contextmanager
def serve_deals(
    root: Path, application: str, files: Mapping[str, str], env: Mapping[str, str] | None = None
) -> Iterator[Served]:
    """Serve ``application`` (``module:name``) with gunicorn from ``root``,
    where the ``deals`` app, :data:`RECORDER` and ``files`` (relative path:
    source) are written; the spool and dead letters are files of ``root``.
    Fails the test if gunicorn logged an exception that escaped the
    application."""
    sources = {"deals/__init__.py": "", "deals/events.py": DEALS_EVENTS, "recorder.py": RECORDER}
    for relative, source in {**sources, **files}.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(textwrap.dedent(source))
    record = root / "handled.jsonl"
    environ = {
        "EVENTLIB_TEST_RECORD": str(record),
        "EVENTLIB_SPOOL_PATH": str(root / "spool.sqlite"),
        "EVENTLIB_DEAD_LETTER_URL": f"sqlite:///{root / 'dead-letters.sqlite'}",
        **(env or {}),
    }
    with serve_gunicorn(application, cwd=root, env=environ) as server:
        yield Served(server, record)
    assert "Error handling request" not in server.output(), server.output()
