"""The HTTP endpoint browsers log public events through.

``POST /event/log?__event__=app.EventName&param1=val1`` becomes
``log('app.EventName', {'param1': 'val1'})``.  :data:`application` is a WSGI
application with the default options; :func:`make_application` builds one
with others.  The framework-neutral core is :func:`handle_log`, which the
Django view in :mod:`eventlib.contrib.django` uses too.

What a request may carry:

- the query string: ``__event__`` and the data's keys;
- a form-encoded body (``application/x-www-form-urlencoded``): more keys;
- or a JSON body (``application/json``), ``{"event": "app.EventName",
  "data": {...}}``, so that numbers, lists and nested objects survive.

Values from the query string or a form are strings; an empty value is the
empty string; a key given twice is refused (send a list in JSON instead), as
is a key given twice in one object of a JSON body; text is UTF-8.  A body
without a ``Content-Length`` (a chunked one) is read when the server says
where it ends (``wsgi.input_terminated``, as gunicorn does), and
refused with 411 Length Required otherwise.  Whatever a browser sends is
plain data: a value shaped like one of eventlib's tagged values is kept as
the dict it is, never decoded into a registered type.

Only events whose class says ``public = True`` (or whose name is in
``public_events``) may be logged; any other event answers 403, an unknown one
404.
A request must come from a page of the same host, or of an allowed origin,
as its ``Origin`` header (or, without one, its ``Referer``) says: the check
that protects the endpoint from cross-site request forgery without a custom
header, which ``navigator.sendBeacon`` cannot send.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .conf import get_settings
from .discovery import find_event, parse_event_name
from .dispatch import CleanFailed, log_from
from .exceptions import (
    DispatchError,
    EventNotFound,
    InvalidEventName,
    SerializationError,
    ValidationError,
)
from .serialization import refuse_constant

__all__ = [
    "EVENT_PARAMETER",
    "FORM_TYPES",
    "JSON_TYPES",
    "SOURCE",
    "STATIC_DIR",
    "BodyTooLarge",
    "Options",
    "Request",
    "RequestError",
    "Response",
    "StartResponse",
    "WSGIApplication",
    "application",
    "client_address",
    "content_length",
    "handle_log",
    "header_text",
    "make_application",
    "media_type",
    "read_body",
    "script",
    "wsgi_query",
]

logger = logging.getLogger("eventlib")

EVENT_PARAMETER = "__event__"
SOURCE = "http"
JSON_TYPES = ("application/json",)
FORM_TYPES = ("application/x-www-form-urlencoded",)

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WSGIApplication = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


@dataclass(frozen=True)
class Options:
    """How the endpoint behaves; every option has a safe default."""

    #: Where the endpoint lives: ``POST <path>/log``, ``GET <path>/eventlib.js``.
    path: str = "/event"
    #: Origins besides the request's own host that may log events, as
    #: ``scheme://host[:port]``.
    allowed_origins: frozenset[str] = frozenset()
    #: Names of events loggable from browsers besides those whose class says
    #: ``public = True``.
    public_events: frozenset[str] = frozenset()
    #: How many proxies in front of the application append to
    #: ``X-Forwarded-For``; 0 trusts no such header.
    trusted_proxies: int = 0
    #: Largest request body accepted, in bytes (413 above it).
    max_body: int = 16 * 1024
    #: Most data keys in one request, counting the keys of nested objects.
    max_parameters: int = 64
    #: Longest key and longest string value, in characters.
    max_key_length: int = 128
    max_value_length: int = 4096
    #: Deepest nesting of lists and objects in JSON data.
    max_depth: int = 32

    def __post_init__(self) -> None:
        for name in ("allowed_origins", "public_events"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(item, str) for item in value):
                raise TypeError(f"{name} must be a collection of strings, not {value!r}")
        # "/" (mounted under a prefix by a dispatcher) means no path of its own.
        stripped = self.path.strip("/")
        object.__setattr__(self, "path", "/" + stripped if stripped else "")
        object.__setattr__(self, "allowed_origins", frozenset(self.allowed_origins))
        object.__setattr__(self, "public_events", frozenset(self.public_events))


@dataclass(frozen=True)
class Request:
    """What :func:`handle_log` needs of an HTTP request."""

    method: str
    query_string: str
    content_type: str
    body: bytes
    #: Header names in lower case.
    headers: Mapping[str, str]
    remote_address: str | None
    host: str


@dataclass(frozen=True)
class Response:
    status: HTTPStatus
    body: dict[str, Any]
    headers: tuple[tuple[str, str], ...] = field(default=())

    def encoded(self) -> bytes:
        return json.dumps(self.body, ensure_ascii=False).encode("utf-8")


class RequestError(Exception):
    """Refuse the request with ``status`` and ``message``."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class BodyTooLarge(RequestError):
    """Refuse a body over ``limit`` bytes: 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the body is over {limit} bytes")


def handle_log(request: Request, options: Options) -> Response:
    """Log the event a ``POST <path>/log`` request describes.

    Answers 202 ``{"id": ...}`` when the event was accepted, and
    ``{"error": message}`` otherwise: 400 for a missing or malformed event
    name, a malformed body or invalid data (a ``ValidationError`` of the
    event's ``clean()``, or any other exception it raises, logged with its
    traceback); 403 for a foreign origin or an
    event that is not public; 404 for an unknown event; 405 for any method but
    POST (and OPTIONS); 413 for a body over ``max_body``; 415 for an
    unsupported content type; 503 when the broker cannot take the event.
    (411 for a body that cannot be read comes from :func:`read_body`, before
    a :class:`Request` is made.)
    """
    try:
        return _handle_log(request, options)
    except RequestError as error:
        return _error(error.status, str(error))


def _handle_log(request: Request, options: Options) -> Response:
    if request.method not in ("POST", "OPTIONS"):
        return _error(
            HTTPStatus.METHOD_NOT_ALLOWED,
            f"use POST to log an event, not {request.method}",
            (("Allow", "POST, OPTIONS"),),
        )
    origin = _check_origin(request, options)
    cors = _cors_headers(origin, request)
    if request.method == "OPTIONS":
        return Response(HTTPStatus.NO_CONTENT, {}, cors)
    try:
        return _log(request, options, cors)
    except RequestError as error:
        return _error(error.status, str(error), cors)


def _log(request: Request, options: Options, cors: tuple[tuple[str, str], ...]) -> Response:
    if len(request.body) > options.max_body:
        raise BodyTooLarge(options.max_body)
    name, data = _read_event(request, options)
    _check_data(data, options)
    try:
        parsed = parse_event_name(name)
        if not (
            parsed.app in get_settings().apps
            or name in options.public_events
            or parsed.module in sys.modules
        ):
            # Importing <app>.events imports every package above it: never
            # for a name a client chose outside the configured apps (an
            # events module already imported costs nothing to look in).
            raise EventNotFound(f"There is no event named {parsed.event} in the {parsed.app} app")
        event_class = find_event(name)
    except InvalidEventName as error:
        raise RequestError(HTTPStatus.BAD_REQUEST, str(error)) from None
    except EventNotFound as error:
        raise RequestError(HTTPStatus.NOT_FOUND, str(error)) from None
    if not (getattr(event_class, "public", False) or name in options.public_events):
        raise RequestError(HTTPStatus.FORBIDDEN, f"the event {name} is not public")
    try:
        event_id = log_from(
            name,
            data,
            on_commit=False,  # nothing to wait for; a broker failure must answer 503
            raise_errors=True,
            source=SOURCE,
            client_address=client_address(request, options.trusted_proxies),
        )
    except (ValidationError, SerializationError) as error:
        raise RequestError(HTTPStatus.BAD_REQUEST, str(error)) from None
    except CleanFailed as failed:
        # A bug of the event's, but the data sent made it show: the client
        # gets a 400, the traceback goes to the log.
        cause = failed.__cause__
        logger.error(
            "The clean() of the event %s raised on data sent over HTTP",
            name,
            exc_info=cause,
            extra={"eventlib_event": name, "eventlib_event_id": None, "eventlib_handler": None},
        )
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            f"invalid data for the event {name}: its clean() raised {type(cause).__name__}",
        ) from None
    except DispatchError:
        # The event's id stays inside log_from(): the error message names it.
        logger.exception(
            "The HTTP endpoint could not send the event %s",
            name,
            extra={"eventlib_event": name, "eventlib_event_id": None, "eventlib_handler": None},
        )
        raise RequestError(
            HTTPStatus.SERVICE_UNAVAILABLE, "the event could not be queued; try again later"
        ) from None
    return Response(HTTPStatus.ACCEPTED, {"id": event_id}, cors)


def _error(status: HTTPStatus, message: str, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response(status, {"error": message}, headers)


def media_type(content_type: str) -> str:
    """The media type of a Content-Type header, lower case, without parameters."""
    return content_type.partition(";")[0].strip().lower()


def _read_event(request: Request, options: Options) -> tuple[str, dict[str, Any]]:
    query = _parse_pairs(request.query_string, "query string")
    name = query.pop(EVENT_PARAMETER, None)
    kind = media_type(request.content_type)
    if kind in JSON_TYPES:
        if query:
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                "with a JSON body, the query string may only hold __event__",
            )
        body_name, data = _read_json(request.body)
        if name is not None and body_name is not None and name != body_name:
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                f"the query names the event {name!r} and the body {body_name!r}",
            )
        name = name if name is not None else body_name
    elif kind in FORM_TYPES or (not request.body and kind in ("", "text/plain")):
        data = query
        form = _parse_pairs(_decode_text(request.body, "body"), "body")
        if EVENT_PARAMETER in form:
            if name is not None:
                raise RequestError(HTTPStatus.BAD_REQUEST, "__event__ is given twice")
            name = form.pop(EVENT_PARAMETER)
        for key, value in form.items():
            if key in data:
                raise RequestError(
                    HTTPStatus.BAD_REQUEST,
                    f"the key {key!r} is in both the query string and the body",
                )
            data[key] = value
    else:
        raise RequestError(
            HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
            f"unsupported content type {kind!r}: send application/json or "
            "application/x-www-form-urlencoded",
        )
    if not name:
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            "no event named: give __event__=app.EventName in the query string",
        )
    if not isinstance(name, str):
        raise RequestError(HTTPStatus.BAD_REQUEST, "the event name must be a string")
    return name, data


def _decode_text(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"the {where} is not UTF-8") from None


def _parse_pairs(text: str, where: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise RequestError(HTTPStatus.BAD_REQUEST, f"the {where} is not UTF-8") from None
    return _unique_keys(pairs, where, "; send a list in a JSON body")


def _unique_keys(pairs: Iterable[tuple[str, Any]], where: str, advice: str = "") -> dict[str, Any]:
    """``pairs`` as a dict; a key given twice is refused (400) rather than
    half-kept."""
    parsed: dict[str, Any] = {}
    for key, value in pairs:
        if key in parsed:
            shown = repr(key) if len(key) <= 40 else f"{key[:40]!r}..."
            raise RequestError(
                HTTPStatus.BAD_REQUEST, f"the key {shown} is given twice in the {where}{advice}"
            )
        parsed[key] = value
    return parsed


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return _unique_keys(pairs, "same object of the JSON body")


def _read_json(raw: bytes) -> tuple[str | None, dict[str, Any]]:
    try:
        body = json.loads(
            _decode_text(raw, "body"),
            object_pairs_hook=_json_object,
            parse_constant=refuse_constant,
        )
    except (ValueError, RecursionError) as error:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"the body is not valid JSON: {error}") from None
    if not isinstance(body, dict) or not set(body) <= {"event", "data"}:
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            'a JSON body is an object {"event": "app.EventName", "data": {...}}',
        )
    data = body.get("data", {})
    if not isinstance(data, dict):
        raise RequestError(HTTPStatus.BAD_REQUEST, "data must be a JSON object")
    name = body.get("event")
    if name is not None and not isinstance(name, str):
        raise RequestError(HTTPStatus.BAD_REQUEST, "the event name must be a string")
    return name, data


def _check_data(data: dict[str, Any], options: Options) -> None:
    keys = 0
    for key, value, depth, is_key in _walk(data):
        keys += is_key
        if depth > options.max_depth:
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                f"the data is nested deeper than {options.max_depth} levels",
            )
        if len(key) > options.max_key_length:
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                f"the key {key[:40]!r}... is over {options.max_key_length} characters",
            )
        if isinstance(value, str) and len(value) > options.max_value_length:
            raise RequestError(
                HTTPStatus.BAD_REQUEST,
                f"the value of {key[:40]!r} is over {options.max_value_length} characters",
            )
    if keys > options.max_parameters:
        raise RequestError(
            HTTPStatus.BAD_REQUEST, f"{keys} keys is over the limit of {options.max_parameters}"
        )


def _walk(data: dict[str, Any]) -> Iterator[tuple[str, Any, int, bool]]:
    """Every (key, value, depth, whether it is an object's key) of nested
    JSON data, without recursion; list items keep their list's key."""
    stack: list[tuple[str, Any, int]] = [("", data, 0)]
    while stack:
        key, value, depth = stack.pop()
        if isinstance(value, dict):
            for inner_key, inner in value.items():
                yield inner_key, inner, depth + 1, True
                stack.append((inner_key, inner, depth + 1))
        elif isinstance(value, list):
            for item in value:
                yield key, item, depth + 1, False
                stack.append((key, item, depth + 1))


def _origin_of(request: Request) -> str | None:
    origin = request.headers.get("origin")
    if origin:
        return origin
    referer = request.headers.get("referer")
    if referer:
        try:
            parts = urlsplit(referer)
        except ValueError:
            return "null"
        if parts.scheme and parts.netloc:
            return f"{parts.scheme}://{parts.netloc}"
        return "null"
    return None


def _netloc(url: str) -> str | None:
    try:
        return urlsplit(url).netloc
    except ValueError:  # "http://[", say
        return None


def _check_origin(request: Request, options: Options) -> str:
    origin = _origin_of(request)
    if origin is None:
        raise RequestError(HTTPStatus.FORBIDDEN, "the request has no Origin or Referer header")
    if origin in options.allowed_origins or _netloc(origin) == request.host:
        return origin
    raise RequestError(HTTPStatus.FORBIDDEN, f"the origin {origin} may not log events here")


def _cors_headers(origin: str, request: Request) -> tuple[tuple[str, str], ...]:
    if _netloc(origin) == request.host:
        return ()
    return (
        ("Access-Control-Allow-Origin", origin),
        ("Access-Control-Allow-Methods", "POST"),
        ("Access-Control-Allow-Headers", "Content-Type"),
        # sendBeacon always sends credentials; the origin is echoed, never "*".
        ("Access-Control-Allow-Credentials", "true"),
        ("Access-Control-Max-Age", "600"),
        ("Vary", "Origin"),
    )


def client_address(request: Request, trusted_proxies: int) -> str | None:
    """The address of the client: the connection's peer, or with
    ``trusted_proxies`` proxies in front, the address the outermost of them
    saw, read from the right of ``X-Forwarded-For`` (the entries further left
    are the client's to write, and not trusted)."""
    if trusted_proxies <= 0:
        return request.remote_address
    forwarded = [
        part.strip()
        for part in request.headers.get("x-forwarded-for", "").split(",")
        if part.strip()
    ]
    if len(forwarded) < trusted_proxies:
        return request.remote_address
    return forwarded[-trusted_proxies]


# ------------------------------------------------------------------ WSGI ---


#: The folder of ``eventlib.js`` in the installed package.
STATIC_DIR = resources.files("eventlib") / "static"


def script() -> tuple[bytes, str]:
    """The JS client's source and its ``ETag``."""
    source = (STATIC_DIR / "eventlib.js").read_bytes()
    return source, '"' + hashlib.sha256(source).hexdigest()[:32] + '"'


def make_application(**options: Any) -> WSGIApplication:
    """A WSGI application serving the endpoint with :class:`Options`
    (``path``, ``allowed_origins``, ``public_events``, ``trusted_proxies``,
    ``max_body``, ...).  Raises ``TypeError`` for an unknown option."""
    settings = Options(**options)
    source, etag = script()

    def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "") or "/"
        method = environ.get("REQUEST_METHOD", "GET").upper()
        if path == f"{settings.path}/eventlib.js":
            return _serve_script(method, environ, start_response, source, etag)
        if path != f"{settings.path}/log":
            return _respond(start_response, _error(HTTPStatus.NOT_FOUND, f"no endpoint at {path}"))
        try:
            body = read_body(environ, settings.max_body)
            query_string = wsgi_query(environ.get("QUERY_STRING", ""))
        except RequestError as error:
            return _respond(start_response, _error(error.status, str(error)))
        request = Request(
            method=method,
            query_string=query_string,
            content_type=environ.get("CONTENT_TYPE", ""),
            body=body,
            headers={
                key[5:].replace("_", "-").lower(): header_text(value)
                for key, value in environ.items()
                if key.startswith("HTTP_")
            },
            remote_address=environ.get("REMOTE_ADDR"),
            host=header_text(environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")),
        )
        try:
            response = handle_log(request, settings)
        except Exception:
            logger.exception("The HTTP endpoint failed on %s %s", method, path)
            response = _error(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error, logged")
        return _respond(start_response, response)

    return application


def header_text(value: str) -> str:
    """A header value as the UTF-8 text browsers send: WSGI (and Django
    under WSGI) gives headers as the latin-1 text of their bytes.  Bytes
    that are not UTF-8 become U+FFFD; text that is no such thing (already
    decoded, as Django under ASGI gives it) is kept."""
    try:
        return value.encode("latin-1").decode("utf-8", errors="replace")
    except UnicodeEncodeError:
        return value


def wsgi_query(value: str) -> str:
    """The WSGI query string (the latin-1 text of its bytes) as UTF-8 text.

    Raises :class:`RequestError` (400) when its bytes are not UTF-8."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        raise RequestError(HTTPStatus.BAD_REQUEST, "the query string is not UTF-8") from None


def content_length(environ: Mapping[str, Any], limit: int) -> int | None:
    """The ``CONTENT_LENGTH`` of a WSGI ``environ`` (or of Django's
    ``request.META``), or ``None`` when the request has none.

    Raises :class:`RequestError`: 400 for a length that is not a number of
    bytes, 413 for one over ``limit``, before anything is read."""
    value = (environ.get("CONTENT_LENGTH") or "").strip()
    if not value:
        return None
    if not (value.isascii() and value.isdigit()):
        raise RequestError(HTTPStatus.BAD_REQUEST, "invalid Content-Length")
    length = int(value)
    if length > limit:
        raise BodyTooLarge(limit)
    return length


def read_body(environ: Mapping[str, Any], limit: int) -> bytes:
    """The body of the WSGI request ``environ``, of at most ``limit`` bytes.

    With a ``Content-Length``, that many bytes (see :func:`content_length`
    for its refusals).  Without one, the body ends where the server says it
    does: with ``wsgi.input_terminated`` set (gunicorn sets it, for a
    chunked body say), ``wsgi.input`` is read to its end, and refused (413)
    as soon as more than ``limit`` bytes came, reading no further.  A server
    that does not set it cannot tell where such a body ends: a request that
    has one (a ``Transfer-Encoding`` header says so) is refused (411 Length
    Required), and any other has no body.
    """
    length = content_length(environ, limit)
    if length is not None:
        body: bytes = environ["wsgi.input"].read(length) if length else b""
        return body
    if environ.get("wsgi.input_terminated"):
        return _read_to_end(environ["wsgi.input"], limit)
    if environ.get("HTTP_TRANSFER_ENCODING"):
        raise RequestError(
            HTTPStatus.LENGTH_REQUIRED,
            "this server cannot read a body without a Content-Length (a chunked one): "
            "send a Content-Length",
        )
    return b""


def _read_to_end(stream: Any, limit: int) -> bytes:
    body = bytearray()
    while chunk := stream.read(limit + 1 - len(body)):
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(limit)
    return bytes(body)


def _respond(start_response: StartResponse, response: Response) -> list[bytes]:
    body = b"" if response.status == HTTPStatus.NO_CONTENT else response.encoded()
    headers = [
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
        *response.headers,
    ]
    start_response(f"{response.status.value} {response.status.phrase}", headers)
    return [body]


def _serve_script(
    method: str,
    environ: dict[str, Any],
    start_response: StartResponse,
    script: bytes,
    etag: str,
) -> list[bytes]:
    if method not in ("GET", "HEAD"):
        return _respond(
            start_response,
            _error(HTTPStatus.METHOD_NOT_ALLOWED, "use GET", (("Allow", "GET, HEAD"),)),
        )
    headers = [
        ("Content-Type", "text/javascript; charset=utf-8"),
        ("Cache-Control", "public, max-age=3600"),
        ("ETag", etag),
    ]
    if environ.get("HTTP_IF_NONE_MATCH") == etag:
        start_response("304 Not Modified", headers)
        return [b""]
    start_response("200 OK", [*headers, ("Content-Length", str(len(script)))])
    return [b"" if method == "HEAD" else script]


#: The endpoint with the default options.
application = make_application()
