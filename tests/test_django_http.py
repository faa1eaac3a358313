"""The HTTP endpoint's Django views (``eventlib.contrib.django.views``),
through Django's whole request stack with ``django.test.Client``.

Django can be set up only once per process: the session fixture
``django_ready`` of tests/conftest.py does it, for this module and
tests/test_django.py, whichever runs first.  What the views need of the
settings (this module as the URLconf,
``CsrfViewMiddleware``, ``ALLOWED_HOSTS``) is given with
``override_settings`` for the module, and eventlib's handler registry and
transaction hook are given back when the module is done.  The static file's
tests add ``django.contrib.staticfiles`` to the installed apps for their
own duration.

Handlers run eagerly, in this process: ``storefront.PageViewed``'s records
what it receives.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any
from urllib.parse import urlencode

import pytest
from django.apps import apps
from django.conf import settings
from django.contrib.staticfiles import finders
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import connections
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import get_token
from django.template import engines
from django.test import Client, override_settings
from django.urls import include, path, reverse

import eventlib
from eventlib import dispatch
from eventlib.contrib.django import configure_from_settings, views
from eventlib.contrib.django.views import options_from_settings
from eventlib.http import Options, Response, make_application
from eventlib.registry import HANDLER_REGISTRY
from eventlib.sending import spool_status

from .conftest import DjangoReady
from .http_requests import Served, serve_deals

SITE = "http://testserver"
SCRIPT = files("eventlib") / "static" / "eventlib.js"
FORM = "application/x-www-form-urlencoded"
VIEWED = "/event/log?__event__=storefront.PageViewed"
STOREFRONT_EVENTS = """
    import eventlib

    #: (data, source, client address, id) of every PageViewed handled.
    RECEIVED = []


    class PageViewed(eventlib.BaseEvent):
        public = True

        def clean(self):
            self.require_data_keys(["page"])

        @eventlib.handler
        def record(self):
            RECEIVED.append((self.data, self.source, self.client_address, self.id))


    class Refund(eventlib.BaseEvent):
        '''Not public: logged from Python only, unless EVENTLIB_HTTP says so.'''
"""


def form_page(request: HttpRequest) -> HttpResponse:
    """A page with a form: answers the CSRF token ``{% csrf_token %}`` would
    render, and makes Django set the CSRF cookie."""
    return HttpResponse(get_token(request))


def protected(request: HttpRequest) -> HttpResponse:
    """An ordinary view, which Django's CSRF middleware protects."""
    return HttpResponse("saved")


def in_transaction(request: HttpRequest) -> HttpResponse:
    """Whether the view runs in a transaction (with ``ATOMIC_REQUESTS``)."""
    return HttpResponse(str(connections["default"].in_atomic_block))


urlpatterns = [
    path("event/", include("eventlib.contrib.django.urls")),
    path("form", form_page),
    path("protected", protected),
    path("in-transaction", in_transaction),
]


@pytest.fixture(scope="module")
def django_site(django_ready: DjangoReady) -> Iterator[None]:
    """Django (tests/conftest.py sets it up), with this module as the URLconf
    and CSRF enforced."""
    registry_before = HANDLER_REGISTRY._snapshot()
    hook_before = dispatch.transaction_hook()
    with override_settings(
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
        ],
        ALLOWED_HOSTS=["testserver", "shop.example"],
    ):
        try:
            yield
        finally:
            connections.close_all()
            HANDLER_REGISTRY._restore(registry_before)
            dispatch.set_transaction_hook(hook_before)


@pytest.fixture
def storefront(django_site: None, isolation: Any) -> ModuleType:
    """The ``storefront`` app's events module, with eventlib eager."""
    isolation.write("storefront/events.py", STOREFRONT_EVENTS)
    eventlib.configure(always_eager=True)
    return importlib.import_module("storefront.events")


@pytest.fixture
def client() -> Client:
    """A browser on a page of the site, as Django's CSRF check sees it."""
    return Client(enforce_csrf_checks=True)


def beacon(client: Client, name: str, data: dict[str, Any], **headers: str) -> HttpResponse:
    """POST as eventlib.js does: a JSON body, no CSRF token, the page's Origin."""
    return client.post(
        "/event/log",
        {"event": name, "data": data},
        content_type="application/json",
        headers={"Origin": SITE, **headers},
    )


def post_form(client: Client, target: str, fields: dict[str, str], **headers: str) -> HttpResponse:
    """POST a form-encoded body, as a ``<form method="post">`` does."""
    return client.post(
        target,
        urlencode(fields),
        content_type=FORM,
        headers={"Origin": SITE, **headers},
    )


def csrf_token(client: Client) -> str:
    """A CSRF token of the client's, as a page with ``{% csrf_token %}``
    renders it; the client keeps the CSRF cookie it goes with."""
    return client.get("/form").content.decode()


# ----------------------------------------------------------------- URLs ---


def test_the_urls_are_log_and_the_script_under_the_prefix(django_site):
    assert reverse("eventlib:log") == "/event/log"
    assert reverse("eventlib:script") == "/event/eventlib.js"


# ------------------------------------------------------------------ 202 ---


def test_a_beacon_logs_a_public_event_without_a_csrf_token(storefront, client):
    assert client.post("/protected", headers={"Origin": SITE}).status_code == 403  # CSRF is on

    response = beacon(client, "storefront.PageViewed", {"page": "/cart", "items": [1, 2]})

    assert response.status_code == 202
    assert response["Content-Type"] == "application/json"
    assert response["Cache-Control"] == "no-store"
    [(data, source, address, event_id)] = storefront.RECEIVED
    assert response.json() == {"id": event_id}
    assert (data, source, address) == ({"page": "/cart", "items": [1, 2]}, "http", "127.0.0.1")


def test_a_page_of_the_same_host_may_give_its_referer_instead_of_its_origin(storefront, client):
    response = client.post(
        "/event/log?__event__=storefront.PageViewed&page=%2Fdeals",
        "",
        content_type="application/x-www-form-urlencoded",
        headers={"Referer": f"{SITE}/deals?page=2"},
    )
    assert response.status_code == 202
    assert storefront.RECEIVED[0][0] == {"page": "/deals"}


def test_the_host_is_django_s_and_allowed_hosts_applies(storefront, client):
    shop = {"Host": "shop.example", "Origin": "https://shop.example"}
    assert beacon(client, "storefront.PageViewed", {"page": "/"}, **shop).status_code == 202

    other = {"Host": "other.example", "Origin": "https://other.example"}
    response = beacon(client, "storefront.PageViewed", {"page": "/"}, **other)
    assert response.status_code == 400  # Django's own answer to a host not in ALLOWED_HOSTS
    assert len(storefront.RECEIVED) == 1


# ----------------------------------------------------------------- CSRF ---


def test_a_form_with_django_s_csrf_token_logs_the_event_without_the_token(storefront, client):
    form = {"csrfmiddlewaretoken": csrf_token(client), "page": "/cart"}
    assert post_form(client, "/protected", form).status_code == 200  # a token Django accepts

    response = post_form(client, VIEWED, form)

    assert response.status_code == 202
    [(data, *_)] = storefront.RECEIVED
    assert data == {"page": "/cart"}


def test_a_good_csrf_token_in_the_x_csrftoken_header_is_accepted(storefront, client):
    token = csrf_token(client)
    response = beacon(client, "storefront.PageViewed", {"page": "/cart"}, **{"X-CSRFToken": token})
    assert response.status_code == 202
    assert storefront.RECEIVED[0][0] == {"page": "/cart"}


def wrong_token_in_the_form(client: Client) -> HttpResponse:
    csrf_token(client)  # the visitor's CSRF cookie
    others = csrf_token(Client())  # a token of another visitor's cookie
    return post_form(client, VIEWED, {"csrfmiddlewaretoken": others, "page": "/"})


def wrong_token_in_the_header(client: Client) -> HttpResponse:
    csrf_token(client)
    return beacon(client, "storefront.PageViewed", {"page": "/"}, **{"X-CSRFToken": "abc"})


def token_without_its_cookie(client: Client) -> HttpResponse:
    token = csrf_token(Client())
    return post_form(client, VIEWED, {"csrfmiddlewaretoken": token, "page": "/"})


def token_from_an_origin_django_does_not_trust(client: Client) -> HttpResponse:
    token = csrf_token(client)
    partner = "https://www.partner.example"  # allowed by eventlib, not CSRF_TRUSTED_ORIGINS
    with override_settings(EVENTLIB_HTTP={"allowed_origins": [partner]}):
        return post_form(
            client, VIEWED, {"csrfmiddlewaretoken": token, "page": "/"}, Origin=partner
        )


CSRF_REFUSALS = {
    "a wrong token in the form": (
        wrong_token_in_the_form,
        "CSRF token from POST incorrect.",
    ),
    "a wrong token in the header": (
        wrong_token_in_the_header,
        "CSRF token from the 'X-Csrftoken' HTTP header has incorrect length.",
    ),
    "a token without its cookie": (token_without_its_cookie, "CSRF cookie not set."),
    "a token from an origin Django does not trust": (
        token_from_an_origin_django_does_not_trust,
        "Origin checking failed - https://www.partner.example does not match any trusted origins.",
    ),
}


@pytest.mark.parametrize(("send", "reason"), CSRF_REFUSALS.values(), ids=CSRF_REFUSALS.keys())
def test_a_token_django_refuses_answers_403_with_django_s_reason(
    storefront, client, caplog, send, reason
):
    caplog.set_level(logging.WARNING)
    response = send(client)

    assert response.status_code == 403
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"error": f"CSRF verification failed: {reason}"}
    assert storefront.RECEIVED == []
    # Logged once, where Django logs its own CSRF refusals.
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("django.security.csrf", "WARNING", f"Forbidden ({reason}): /event/log")
    ]


def test_without_a_token_the_origin_rule_alone_applies(storefront, client):
    csrf_token(client)  # the CSRF cookie, which the page's beacons send too
    assert beacon(client, "storefront.PageViewed", {"page": "/"}).status_code == 202

    foreign = beacon(client, "storefront.PageViewed", {"page": "/"}, Origin="https://evil.example")
    assert foreign.status_code == 403
    assert foreign.json() == {"error": "the origin https://evil.example may not log events here"}
    assert len(storefront.RECEIVED) == 1


def test_a_good_token_does_not_replace_the_origin_rule(storefront, client):
    form = urlencode({"csrfmiddlewaretoken": csrf_token(client), "page": "/"})
    # Django's check passes a plain-HTTP request with no Origin; eventlib's does not.
    response = client.post(VIEWED, form, content_type=FORM)
    assert response.status_code == 403
    assert response.json() == {"error": "the request has no Origin or Referer header"}
    assert storefront.RECEIVED == []


def test_the_token_is_checked_and_dropped_however_its_field_name_is_encoded(storefront, client):
    token = csrf_token(client)
    encoded = client.post(
        VIEWED,
        f"csrfmiddleware%74oken={token}&page=%2Fcart",
        content_type=f"{FORM}; charset=utf-8",
        headers={"Origin": SITE},
    )
    assert encoded.status_code == 202
    assert storefront.RECEIVED[0][0] == {"page": "/cart"}

    wrong = client.post(
        VIEWED,
        "csrfmiddleware%74oken=abc&page=%2Fcart",
        content_type=FORM,
        headers={"Origin": SITE},
    )
    assert wrong.status_code == 403
    assert wrong.json() == {
        "error": "CSRF verification failed: CSRF token from POST has incorrect length."
    }


def test_the_check_does_not_need_django_s_csrf_middleware(storefront, client):
    token, others = csrf_token(client), csrf_token(Client())
    with override_settings(MIDDLEWARE=["django.middleware.common.CommonMiddleware"]):
        browser = Client(enforce_csrf_checks=True)  # loads the middleware of the settings
        browser.cookies = client.cookies
        assert post_form(browser, "/protected", {}).status_code == 200  # no CSRF check there
        good = post_form(browser, VIEWED, {"csrfmiddlewaretoken": token, "page": "/"})
        wrong = post_form(browser, VIEWED, {"csrfmiddlewaretoken": others, "page": "/"})
    assert good.status_code == 202
    assert wrong.status_code == 403
    assert len(storefront.RECEIVED) == 1


def test_a_form_with_a_token_and_more_fields_than_django_reads_answers_400(storefront, client):
    form = {"csrfmiddlewaretoken": csrf_token(client), "page": "/", "a": "1", "b": "2"}
    with override_settings(DATA_UPLOAD_MAX_NUMBER_FIELDS=3):
        response = post_form(client, VIEWED, form)
    assert response.status_code == 400
    assert response.json() == {
        "error": "the form has more than 3 fields (DATA_UPLOAD_MAX_NUMBER_FIELDS)"
    }


def test_a_request_that_cannot_log_an_event_gets_the_same_answer_with_a_token(storefront, client):
    headers = {"Origin": SITE, "X-CSRFToken": "abc"}  # a token Django would refuse
    put = client.put(VIEWED, b'{"data": {"page": "/"}}', "application/json", headers=headers)
    multipart = client.post(
        VIEWED, b"--b\r\n\r\n--b--\r\n", "multipart/form-data; boundary=b", headers=headers
    )
    assert (put.status_code, put.json()) == (
        405,
        {"error": "use POST to log an event, not PUT"},
    )
    assert multipart.status_code == 415
    assert storefront.RECEIVED == []


# ------------------------------------------------------------ options ---


def test_an_event_that_is_not_public_answers_403(storefront, client):
    response = beacon(client, "storefront.Refund", {"order_id": 1})
    assert response.status_code == 403
    assert response.json() == {"error": "the event storefront.Refund is not public"}


def test_public_events_in_the_settings_may_be_logged(storefront, client):
    with override_settings(EVENTLIB_HTTP={"public_events": ["storefront.Refund"]}):
        assert beacon(client, "storefront.Refund", {"order_id": 1}).status_code == 202


def test_an_allowed_origin_gets_its_preflight_and_cors_headers(storefront, client):
    origin = "https://www.partner.example"
    with override_settings(EVENTLIB_HTTP={"allowed_origins": [origin]}):
        preflight = client.options("/event/log", headers={"Origin": origin})
        response = beacon(client, "storefront.PageViewed", {"page": "/"}, Origin=origin)
    assert preflight.status_code == 204
    assert preflight.content == b""
    assert preflight["Access-Control-Allow-Origin"] == origin
    assert preflight["Access-Control-Allow-Methods"] == "POST"
    assert response.status_code == 202
    assert response["Access-Control-Allow-Origin"] == origin
    assert response["Vary"] == "Origin"


@pytest.mark.parametrize(
    ("trusted_proxies", "address"),
    [(0, "127.0.0.1"), (1, "198.51.100.7"), (2, "203.0.113.9"), (3, "127.0.0.1")],
)
def test_the_client_address_comes_through_the_trusted_proxies(
    storefront, client, trusted_proxies, address
):
    # Each proxy appends the address it got the request from; REMOTE_ADDR is the last proxy.
    forwarded = {"X-Forwarded-For": "203.0.113.9, 198.51.100.7"}
    with override_settings(EVENTLIB_HTTP={"trusted_proxies": trusted_proxies}):
        response = beacon(client, "storefront.PageViewed", {"page": "/"}, **forwarded)
    assert response.status_code == 202
    assert storefront.RECEIVED[0][2] == address


def test_the_options_come_from_the_eventlib_http_setting():
    given = SimpleNamespace(
        EVENTLIB_HTTP={"allowed_origins": ["https://a.example"], "trusted_proxies": 1}
    )
    assert options_from_settings(given) == Options(
        allowed_origins=frozenset({"https://a.example"}), trusted_proxies=1
    )
    assert options_from_settings(SimpleNamespace()) == Options()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            {"path": "/events", "max_bodies": 1},
            "Unknown EVENTLIB_HTTP option(s) 'max_bodies', 'path': the options are "
            "allowed_origins, public_events, trusted_proxies, max_body, max_parameters, "
            "max_key_length, max_value_length, max_depth (the path is where your URLconf "
            "includes "
            "eventlib.contrib.django.urls)",
        ),
        (["https://a.example"], "EVENTLIB_HTTP must be a dict of options, not list"),
    ],
)
def test_a_wrong_eventlib_http_setting_is_refused(value, message):
    with pytest.raises(ImproperlyConfigured) as raised:
        options_from_settings(SimpleNamespace(EVENTLIB_HTTP=value))
    assert str(raised.value) == message


def test_eventlib_http_is_not_an_eventlib_setting_for_configure_from_settings(django_site):
    configured = configure_from_settings(
        SimpleNamespace(EVENTLIB_APPS=[], EVENTLIB_QUEUE="q", EVENTLIB_HTTP={"max_body": 10})
    )
    assert configured.queue == "q"
    with pytest.raises(ImproperlyConfigured) as raised:
        configure_from_settings(SimpleNamespace(EVENTLIB_APPS=[], EVENTLIB_HTTPS={}))
    assert "Unknown setting(s) EVENTLIB_HTTPS:" in str(raised.value)
    assert "EVENTLIB_HTTP," in str(raised.value)


# ------------------------------------------------- refusals, as WSGI's ---


@dataclass
class Case:
    """One request, sent to the Django view and to the WSGI application."""

    method: str
    target: str
    body: bytes = b"{}"
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=lambda: {"Origin": SITE})
    environ: dict[str, str] = field(default_factory=dict)

    def through_django(self, client: Client) -> tuple[int, dict[str, Any], HttpResponse]:
        response = client.generic(
            self.method,
            self.target,
            self.body,
            content_type=self.content_type,
            headers=self.headers,
            **self.environ,
        )
        return response.status_code, json.loads(response.content), response

    def through_wsgi(self, **options: Any) -> tuple[int, dict[str, Any]]:
        path_info, _, query = self.target.partition("?")
        environ = {
            "REQUEST_METHOD": self.method,
            "PATH_INFO": path_info,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.content_type,
            "CONTENT_LENGTH": str(len(self.body)),
            "HTTP_HOST": "testserver",
            "REMOTE_ADDR": "127.0.0.1",
            "wsgi.input": io.BytesIO(self.body),
            **{f"HTTP_{k.upper().replace('-', '_')}": v for k, v in self.headers.items()},
            **self.environ,
        }
        answer: dict[str, str] = {}

        def start_response(status: str, headers: list[tuple[str, str]]) -> None:
            answer["status"] = status

        body = b"".join(make_application(**options)(environ, start_response))
        return int(answer["status"].split()[0]), json.loads(body)


LOG = "/event/log"
REFUSALS = {
    "no event name": (Case("POST", LOG, b'{"data": {}}'), 400),
    "a malformed event name": (Case("POST", "/event/log?__event__=nodots"), 400),
    "malformed JSON": (Case("POST", VIEWED, b'{"data": '), 400),
    "invalid data": (Case("POST", VIEWED, b'{"data": {"title": "Cart"}}'), 400),
    "a body that is not UTF-8": (
        Case("POST", VIEWED, b"page=\xff", "application/x-www-form-urlencoded"),
        400,
    ),
    "a key given twice": (
        Case("POST", VIEWED, b"page=a&page=b", "application/x-www-form-urlencoded"),
        400,
    ),
    "an invalid Content-Length": (
        Case("POST", VIEWED, b"{}", environ={"CONTENT_LENGTH": "many"}),
        400,
    ),
    "a foreign origin": (Case("POST", VIEWED, headers={"Origin": "https://evil.example"}), 403),
    "no Origin nor Referer": (Case("POST", VIEWED, b'{"data": {"page": "/"}}', headers={}), 403),
    "an event that is not public": (Case("POST", "/event/log?__event__=storefront.Refund"), 403),
    "an unknown event": (Case("POST", "/event/log?__event__=storefront.Missing"), 404),
    "an unknown app": (Case("POST", "/event/log?__event__=nowhere.Missing"), 404),
    "GET": (Case("GET", VIEWED), 405),
    "PUT": (Case("PUT", VIEWED, b'{"data": {"page": "/"}}'), 405),
    "a body over max_body": (
        Case("POST", VIEWED, b'{"data": {"page": "' + b"x" * 100 + b'"}}'),
        413,
    ),
    "a query string that is not UTF-8": (
        Case(
            "POST",
            VIEWED,
            b"page=/",
            FORM,
            environ={"QUERY_STRING": "__event__=storefront.PageViewed&note=caf\xe9"},
        ),
        400,
    ),
    "a key given twice in a JSON object": (
        Case("POST", VIEWED, b'{"data": {"page": "/", "page": "/cart"}}'),
        400,
    ),
    "a chunked body the server does not end": (
        Case(
            "POST",
            VIEWED,
            b'{"data": {"page": "/"}}',
            environ={"CONTENT_LENGTH": "", "HTTP_TRANSFER_ENCODING": "chunked"},
        ),
        411,
    ),
    "an XML body": (Case("POST", VIEWED, b"<page/>", "text/xml"), 415),
    "a multipart form": (
        Case("POST", VIEWED, b"--b\r\n\r\n--b--\r\n", "multipart/form-data; boundary=b"),
        415,
    ),
}


@pytest.mark.parametrize(("case", "status"), REFUSALS.values(), ids=REFUSALS.keys())
def test_a_refusal_is_the_wsgi_application_s_answer(storefront, client, case, status):
    options = {"max_body": 64}
    with override_settings(EVENTLIB_HTTP=options):
        got_status, answer, response = case.through_django(client)
    assert got_status == status
    assert set(answer) == {"error"}
    assert response["Content-Type"] == "application/json"
    assert (got_status, answer) == case.through_wsgi(**options)
    if status == 405:
        assert response["Allow"] == "POST, OPTIONS"
    assert storefront.RECEIVED == []


def test_invalid_data_answers_400_with_the_event_s_message(storefront, client):
    response = beacon(client, "storefront.PageViewed", {"title": "Cart"})
    assert response.status_code == 400
    assert response.json() == {"error": "The following keys are missing: page"}


BROKER_DOWN = {
    "EVENTLIB_APPS": [],
    "EVENTLIB_ALWAYS_EAGER": False,
    "EVENTLIB_BROKER_URL": "amqp://guest@127.0.0.1:1//",
    "EVENTLIB_BROKER_TIMEOUT": 0.5,
    # Published in the request, so that its outcome is the answer's.
    "EVENTLIB_DISPATCH": "direct",
}
#: Nor can the spool be written: a directory that does not exist.
SPOOL_UNWRITABLE = {"EVENTLIB_SPOOL_PATH": "/nonexistent-eventlib-dir/spool.sqlite"}


def test_a_broker_that_cannot_take_the_event_answers_202_and_spools_it(storefront, client):
    with override_settings(**BROKER_DOWN):
        apps.get_app_config("eventlib").ready()
        response = beacon(client, "storefront.PageViewed", {"page": "/"})
        status = spool_status()
    assert response.status_code == 202
    assert status.count == 1


def test_an_event_neither_broker_nor_spool_can_take_answers_503(storefront, client):
    with override_settings(**BROKER_DOWN, **SPOOL_UNWRITABLE):
        apps.get_app_config("eventlib").ready()  # as when Django starts
        response = beacon(client, "storefront.PageViewed", {"page": "/"})
    assert response.status_code == 503
    assert response.json() == {"error": "the event could not be queued; try again later"}


def test_an_event_neither_broker_nor_spool_can_take_answers_503_with_eventlib_on_commit(
    storefront, client
):
    with override_settings(**BROKER_DOWN, **SPOOL_UNWRITABLE, EVENTLIB_ON_COMMIT=True):
        apps.get_app_config("eventlib").ready()
        response = beacon(client, "storefront.PageViewed", {"page": "/"})
    assert response.status_code == 503


def test_the_view_runs_outside_the_transaction_of_atomic_requests(storefront, client, monkeypatch):
    """A beacon needs no database: the view opens no transaction for it."""
    monkeypatch.setitem(connections["default"].settings_dict, "ATOMIC_REQUESTS", True)
    in_transaction = []
    original = views.handle_log

    def handle_log(*args: Any) -> Response:
        in_transaction.append(connections["default"].in_atomic_block)
        return original(*args)

    monkeypatch.setattr(views, "handle_log", handle_log)
    assert beacon(client, "storefront.PageViewed", {"page": "/"}).status_code == 202
    assert in_transaction == [False]
    assert client.get("/in-transaction").content == b"True"  # as other views are


# --------------------------------------------------------------- script ---


def test_the_script_is_eventlib_s_javascript_file(django_site, client):
    response = client.get("/event/eventlib.js")
    assert response.status_code == 200
    assert response.content == SCRIPT.read_bytes()
    assert response["Content-Type"] == "text/javascript; charset=utf-8"
    assert response["Cache-Control"] == "public, max-age=3600"
    assert client.head("/event/eventlib.js")["ETag"] == response["ETag"]

    wsgi_headers: dict[str, str] = {}
    make_application()(
        {"REQUEST_METHOD": "GET", "PATH_INFO": "/event/eventlib.js"},
        lambda status, headers: wsgi_headers.update(headers),
    )
    assert response["ETag"] == wsgi_headers["ETag"]


def test_the_script_answers_304_to_a_browser_that_has_it(django_site, client):
    etag = client.get("/event/eventlib.js")["ETag"]
    response = client.get("/event/eventlib.js", headers={"If-None-Match": etag})
    assert response.status_code == 304
    assert response.content == b""
    assert response["ETag"] == etag


def test_the_script_answers_405_to_a_post(django_site, client):
    response = client.post("/event/eventlib.js")
    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"
    assert response.json() == {"error": "use GET"}


def test_staticfiles_finds_the_script_in_the_app_with_no_settings(django_site):
    with override_settings(STATICFILES_DIRS=[]):
        found = finders.find("eventlib/eventlib.js")
    assert found is not None
    assert Path(found).read_bytes() == SCRIPT.read_bytes()
    app_static = Path(apps.get_app_config("eventlib").path) / "static"
    assert Path(found) == app_static / "eventlib" / "eventlib.js"


def test_the_app_s_static_file_is_a_link_to_the_one_script(django_site):
    """In the checkout: one source, which the wheel copies (setuptools
    follows the link)."""
    shipped = Path(apps.get_app_config("eventlib").path) / "static" / "eventlib" / "eventlib.js"
    assert shipped.is_symlink()
    assert shipped.resolve() == Path(str(SCRIPT)).resolve()


def test_the_static_tag_gives_the_collected_script(django_site, tmp_path):
    installed = [*settings.INSTALLED_APPS, "django.contrib.staticfiles"]
    with override_settings(
        INSTALLED_APPS=installed,
        STATICFILES_DIRS=[],
        STATIC_ROOT=str(tmp_path),
        STATIC_URL="/static/",
        STORAGES={
            "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
            "staticfiles": {
                "BACKEND": "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"
            },
        },
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates"}],
    ):
        call_command("collectstatic", interactive=False, verbosity=0)
        template = engines["django"].from_string(
            "{% load static %}{% static 'eventlib/eventlib.js' %}"
        )
        url = template.render()
    assert url.startswith("/static/eventlib/eventlib.")
    assert url != "/static/eventlib/eventlib.js"  # the manifest's name, with the content's hash
    assert (tmp_path / url.removeprefix("/static/")).read_bytes() == SCRIPT.read_bytes()


# ------------------------------------- chunked bodies, under gunicorn ---

SITE_FILES = {
    "site_settings.py": """
        SECRET_KEY = "tests only"
        ALLOWED_HOSTS = ["127.0.0.1"]
        ROOT_URLCONF = "site_urls"
        INSTALLED_APPS = ["eventlib.contrib.django", "deals"]
        MIDDLEWARE = ["django.middleware.csrf.CsrfViewMiddleware"]
        DATABASES = {}
        EVENTLIB_ALWAYS_EAGER = True
        EVENTLIB_APPS = ["deals"]
    """,
    "site_urls.py": """
        from django.http import HttpResponse
        from django.middleware.csrf import get_token
        from django.urls import include, path


        def form_page(request):
            return HttpResponse(get_token(request))


        urlpatterns = [
            path("event/", include("eventlib.contrib.django.urls")),
            path("form", form_page),
        ]
    """,
    "site_wsgi.py": """
        from django.core.wsgi import get_wsgi_application

        import recorder

        application = get_wsgi_application()
        recorder.record_deals()
    """,
}


@pytest.fixture(scope="module")
def django_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A Django site with the views at ``/event/`` and a page with a CSRF
    token at ``/form``, under gunicorn, logging events of the ``deals``
    app (tests/http_requests.py)."""
    root = tmp_path_factory.mktemp("django-gunicorn")
    environ = {"DJANGO_SETTINGS_MODULE": "site_settings"}
    with serve_deals(root, "site_wsgi:application", SITE_FILES, environ) as served:
        yield served
    assert "Internal Server Error" not in served.server.output()


def test_under_gunicorn_a_chunked_form_reaches_the_handler(django_served):
    """Django's own request reads no body without a Content-Length: the
    view reads it as the WSGI application does."""
    reply = django_served.post("__event__=deals.DealClick", iter([b"deal_id=4", b"2"]), FORM)

    assert django_served.accepted(reply) == {"deal_id": "42"}


def test_under_gunicorn_a_chunked_json_body_reaches_the_handler(django_served):
    chunks = [b'{"event": "deals.DealClick", "da', b'ta": {"cart": [1, 2]}}']

    reply = django_served.post("", iter(chunks), "application/json")

    assert django_served.accepted(reply) == {"cart": [1, 2]}


def csrf_pair(served: Served) -> tuple[str, str]:
    """A CSRF token of the site's form page and the cookie it goes with."""
    page = served.server.request("GET", "/form")
    return page.body.decode(), page.headers["Set-Cookie"].partition(";")[0]


def test_under_gunicorn_django_checks_the_csrf_token_of_a_chunked_form(django_served):
    token, cookie = csrf_pair(django_served)
    chunks = [b"deal_id=7&csrfmiddle", f"waretoken={token}".encode()]

    reply = django_served.post(
        "__event__=deals.DealClick", iter(chunks), FORM, headers={"Cookie": cookie}
    )
    wrong = django_served.post(
        "__event__=deals.DealClick",
        iter([b"deal_id=8&csrfmiddlewaretoken=", b"x" * len(token)]),
        FORM,
        headers={"Cookie": cookie},
    )

    assert django_served.accepted(reply) == {"deal_id": "7"}
    assert (wrong.status, wrong.json()) == (
        403,
        {"error": "CSRF verification failed: CSRF token from POST incorrect."},
    )


def test_under_gunicorn_a_chunked_body_over_max_body_is_refused(django_served):
    before = django_served.handled()
    chunks = [b"deal_id=1&note=", b"x" * 4000, b"y" * 4000, b"z" * 4000, b"w" * 4000, b"v" * 400]

    reply = django_served.post("__event__=deals.DealClick", iter(chunks), FORM)

    assert (reply.status, reply.json()) == (413, {"error": "the body is over 16384 bytes"})
    assert django_served.handled() == before
