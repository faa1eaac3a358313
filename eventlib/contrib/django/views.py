"""The HTTP endpoint as Django views, for ``eventlib.contrib.django.urls``.

:func:`log_event` answers ``POST <prefix>/log`` exactly as the WSGI
application of :mod:`eventlib.http` does: it builds an
:class:`eventlib.http.Request` from the ``HttpRequest`` and gives it to
:func:`eventlib.http.handle_log`, with the options of the ``EVENTLIB_HTTP``
setting (:func:`options_from_settings`).  :func:`script` serves
``eventlib.js`` next to it, the very file the WSGI application serves.

CSRF: ``log_event`` is exempt from ``CsrfViewMiddleware``, because
``navigator.sendBeacon`` cannot send the token; eventlib's own check of the
``Origin`` (or ``Referer``) header is what protects it from cross-site
requests, as it protects the WSGI application.  A request that carries a
CSRF token all the same (a form rendered with ``{% csrf_token %}``, or a
``fetch()`` with the ``X-CSRFToken`` header) gets Django's whole CSRF check
as well (:func:`check_csrf`), and a 403 when it fails; the token's field is
dropped from the body, never logged as event data.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import fields
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote_to_bytes

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured, RequestDataTooBig, TooManyFieldsSent
from django.core.handlers.wsgi import WSGIRequest
from django.db.transaction import non_atomic_requests
from django.http import HttpRequest, HttpResponse
from django.http.request import RawPostDataException
from django.middleware.csrf import CsrfViewMiddleware
from django.utils.cache import get_conditional_response, patch_cache_control
from django.utils.log import log_response
from django.views.decorators.csrf import csrf_exempt

from eventlib import http
from eventlib.http import BodyTooLarge, Options, Request, RequestError, Response, handle_log

from .apps import HTTP_SETTING

__all__ = [
    "CSRF_FIELD",
    "OPTION_NAMES",
    "CsrfRefused",
    "check_csrf",
    "log_event",
    "options_from_settings",
    "script",
]

#: The options ``EVENTLIB_HTTP`` may give: those of :class:`eventlib.http.Options`
#: but ``path``, which is where the URLconf includes the views.
OPTION_NAMES = tuple(field.name for field in fields(Options) if field.name != "path")
#: The form field of Django's CSRF token, as ``{% csrf_token %}`` renders it.
CSRF_FIELD = "csrfmiddlewaretoken"
#: Where a refused CSRF token is logged, as ``CsrfViewMiddleware`` logs it.
csrf_logger = logging.getLogger("django.security.csrf")


class CsrfRefused(RequestError):
    """Django's CSRF check refused the request: 403, with Django's reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(HTTPStatus.FORBIDDEN, f"CSRF verification failed: {reason}")
        #: Django's reason, such as ``"CSRF token from POST incorrect."``.
        self.reason = reason


def options_from_settings(settings: Any = None) -> Options:
    """The endpoint's :class:`~eventlib.http.Options`, from the
    ``EVENTLIB_HTTP`` dict of ``settings`` (by default Django's settings);
    without one, the defaults.  The view reads them on every request, so
    ``override_settings`` applies at once.

    Raises ``ImproperlyConfigured`` when ``EVENTLIB_HTTP`` is not a dict or
    names an option that is not one of :data:`OPTION_NAMES`.
    """
    settings = django_settings if settings is None else settings
    given = getattr(settings, HTTP_SETTING, None)
    if given is None:
        return Options()
    if not isinstance(given, Mapping):
        raise ImproperlyConfigured(
            f"{HTTP_SETTING} must be a dict of options, not {type(given).__name__}"
        )
    unknown = sorted(repr(name) for name in given if name not in OPTION_NAMES)
    if unknown:
        raise ImproperlyConfigured(
            f"Unknown {HTTP_SETTING} option(s) {', '.join(unknown)}: the options are "
            f"{', '.join(OPTION_NAMES)} (the path is where your URLconf includes "
            "eventlib.contrib.django.urls)"
        )
    return Options(**given)


@non_atomic_requests
@csrf_exempt
def log_event(request: HttpRequest) -> HttpResponse:
    """Log the event the request describes, answering as
    :func:`eventlib.http.handle_log` does: 202 ``{"id": ...}``, or a JSON
    ``{"error": ...}`` with 400, 403, 404, 405, 413, 415 or 503.

    A POST that carries a CSRF token, in the body's ``csrfmiddlewaretoken``
    field or in the header of ``CSRF_HEADER_NAME`` (``X-CSRFToken``), must
    also pass Django's CSRF check (:func:`check_csrf`), or answers 403
    ``{"error": "CSRF verification failed: <Django's reason>"}``, logged on
    ``django.security.csrf`` as Django logs its own refusals.  Without a
    token, the ``Origin`` check of :func:`~eventlib.http.handle_log` is the
    only one; with a token, it applies too.  The token's field never reaches
    the event's data.

    The request's host is ``request.get_host()``, so ``ALLOWED_HOSTS`` and
    ``USE_X_FORWARDED_HOST`` apply as to any view.  The view opens no
    transaction, even with ``ATOMIC_REQUESTS``: it uses no database.  An
    error that is not the request's fault propagates to Django, which
    answers 500 and logs it.
    """
    options = options_from_settings()
    try:
        eventlib_request = _eventlib_request(request, options)
    except RequestError as error:
        response = _json_response(Response(error.status, {"error": str(error)}))
        if isinstance(error, CsrfRefused):
            log_response(
                "Forbidden (%s): %s",
                error.reason,
                request.path,
                response=response,
                request=request,
                logger=csrf_logger,
            )
        return response
    return _json_response(handle_log(eventlib_request, options))


def check_csrf(request: HttpRequest) -> None:
    """Apply Django's CSRF check to ``request``, as ``CsrfViewMiddleware``
    does for a view that is not exempt: the ``Origin`` header (or, over
    HTTPS, the ``Referer``) against the host and ``CSRF_TRUSTED_ORIGINS``,
    then the token of the ``csrfmiddlewaretoken`` form field or of the
    ``CSRF_HEADER_NAME`` header against the CSRF cookie (or session, with
    ``CSRF_USE_SESSIONS``).  It does not need the middleware in
    ``MIDDLEWARE``, and passes, as Django's check does, a request of the test
    ``Client`` made without ``enforce_csrf_checks=True``.

    Raises :class:`CsrfRefused` with Django's reason when the check fails,
    and :class:`~eventlib.http.RequestError` (400) for a form with more
    fields than ``DATA_UPLOAD_MAX_NUMBER_FIELDS``, which Django will not read.
    """
    try:
        refusal = _CsrfCheck(_not_exempt).process_view(request, _not_exempt, (), {})
    except TooManyFieldsSent:
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            f"the form has more than {django_settings.DATA_UPLOAD_MAX_NUMBER_FIELDS} fields "
            "(DATA_UPLOAD_MAX_NUMBER_FIELDS)",
        ) from None
    if refusal is not None:  # a Django whose middleware refuses without _reject
        raise CsrfRefused("the CSRF check refused the request.")


class _CsrfCheck(CsrfViewMiddleware):
    """Django's CSRF middleware, refusing with :class:`CsrfRefused` instead of
    answering with the page of ``CSRF_FAILURE_VIEW``."""

    def _reject(self, request: HttpRequest, reason: str) -> HttpResponse:
        raise CsrfRefused(reason)


def _not_exempt(request: HttpRequest) -> HttpResponse:
    """The view (and the next handler) of the middleware :func:`check_csrf`
    runs: a view not exempt from the check, never called."""
    raise AssertionError("never called")


@csrf_exempt  # answers 405 to a POST, as the WSGI application does
def script(request: HttpRequest) -> HttpResponse:
    """Serve ``eventlib.js`` (``eventlib/static/eventlib.js``, the file the
    WSGI application serves) to GET and HEAD, with its ``ETag``, and 304 Not
    Modified to a request whose ``If-None-Match`` matches it; 405 otherwise.
    Served next to :func:`log_event`, the script finds the endpoint without
    being told."""
    if request.method not in ("GET", "HEAD"):
        return _json_response(
            Response(HTTPStatus.METHOD_NOT_ALLOWED, {"error": "use GET"}, (("Allow", "GET, HEAD"),))
        )
    source, etag = http.script()
    response = get_conditional_response(request, etag=etag) or HttpResponse(
        source, content_type="text/javascript; charset=utf-8"
    )
    response["ETag"] = etag
    patch_cache_control(response, public=True, max_age=3600)
    return response


def _eventlib_request(request: HttpRequest, options: Options) -> Request:
    """What :func:`~eventlib.http.handle_log` needs of ``request``, the CSRF
    token's field dropped from a form.  Raises
    :class:`~eventlib.http.RequestError` for a body it should not read, and
    :class:`CsrfRefused` for a POST whose CSRF token Django refuses (of a
    type the endpoint reads: any other is refused, 415, and logs nothing)."""
    body = _read_body(request, options.max_body)
    content_type = request.META.get("CONTENT_TYPE", "")
    kind = http.media_type(content_type)
    token_in_body = False
    if kind in http.FORM_TYPES:
        body, token_in_body = _without_csrf_token(body)
    if (
        request.method == "POST"
        and kind in (*http.FORM_TYPES, *http.JSON_TYPES)
        and (token_in_body or django_settings.CSRF_HEADER_NAME in request.META)
    ):
        check_csrf(request)
    query_string = request.META.get("QUERY_STRING", "")
    return Request(
        method=request.method or "GET",
        # ASGI requests hold the query string decoded already.
        query_string=http.wsgi_query(query_string)
        if isinstance(request, WSGIRequest)
        else query_string,
        content_type=content_type,
        body=body,
        headers={name.lower(): http.header_text(value) for name, value in request.headers.items()},
        remote_address=request.META.get("REMOTE_ADDR"),
        host=request.get_host(),
    )


def _read_body(request: HttpRequest, limit: int) -> bytes:
    """The body, as :func:`eventlib.http.read_body` reads it: refused (413)
    by its ``Content-Length`` before it is read when it is over ``limit``.

    Under WSGI, Django takes a body without a ``Content-Length`` (a chunked
    one) for empty: the WSGI application's reading of it (to the end the
    server says it has, 413 over ``limit``, or 411) is given to Django's
    request, where its CSRF check reads the form too."""
    length = http.content_length(request.META, limit)
    if length is None and isinstance(request, WSGIRequest):
        # Django's own stream of it is empty; wsgi.input is still unread.
        request._body = http.read_body(request.META, limit)
    try:
        body: bytes = request.body
    except RequestDataTooBig:  # DATA_UPLOAD_MAX_MEMORY_SIZE is below max_body
        raise BodyTooLarge(limit) from None
    except RawPostDataException:
        # A middleware read a multipart body through request.POST; such a
        # body is refused (415) for its content type anyway.
        return b""
    return body


def _without_csrf_token(body: bytes) -> tuple[bytes, bool]:
    """A form body without its ``csrfmiddlewaretoken`` field(s), however
    its name is percent-encoded, and whether it had one; the rest is left as
    it was, for :func:`~eventlib.http.handle_log` to parse."""
    field = CSRF_FIELD.encode()
    pairs = body.split(b"&")
    kept = [
        pair
        for pair in pairs
        if unquote_to_bytes(pair.partition(b"=")[0].replace(b"+", b" ")) != field
    ]
    return b"&".join(kept), len(kept) < len(pairs)


def _json_response(response: Response) -> HttpResponse:
    empty = response.status == HTTPStatus.NO_CONTENT
    answer = HttpResponse(
        b"" if empty else response.encoded(),
        status=response.status.value,
        content_type="application/json",
    )
    answer["Cache-Control"] = "no-store"
    for name, value in response.headers:
        answer[name] = value
    return answer
