"""The dead letters' pages in Django's admin
(``eventlib.contrib.django.admin``), through Django's whole request stack
with ``django.test.Client``: a logged-in user, the admin's own URLs, and a
real SQLite dead-letter database whose dead letters ``eventlib.process``
recorded from failing handlers.

Django is set up once per process by tests/conftest.py's ``django_ready``;
this module adds the admin and what it needs (auth, sessions, messages) to
the installed apps with ``override_settings``, with this module as the
URLconf, and creates their tables.  Handlers run eagerly, so that a retry
runs at once, here.
"""

from __future__ import annotations

import html
import importlib
import io
import re
import uuid
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from django.conf import settings
from django.contrib import admin
from django.core.management import call_command
from django.db import connections
from django.test import Client, override_settings
from django.urls import URLPattern, URLResolver, clear_url_caches, path

import eventlib
from eventlib import deadletters, dispatch
from eventlib.discovery import find_event
from eventlib.registry import HANDLER_REGISTRY
from eventlib.serialization import serialize_event

from .conftest import DJANGO_APPS, DjangoReady

#: The admin's URLs, once the admin is installed (``admin_site``).
urlpatterns: list[URLPattern | URLResolver] = []

LIST = "/admin/eventlib/deadletter/"
DESK_EVENTS = """
    import eventlib

    #: Append to it to mend the card reader.
    FIXED = []


    class Refund(eventlib.BaseEvent):
        @eventlib.handler
        def charge(self):
            if not FIXED:
                raise RuntimeError(f"card declined for order {self.data['order_id']}")


    class Signup(eventlib.BaseEvent):
        @eventlib.handler
        def welcome(self):
            raise ConnectionError("mail server down")
"""


@pytest.fixture(scope="module")
def admin_site(django_ready: DjangoReady) -> Iterator[None]:
    """Django's admin installed, with its tables, and this module as the
    URLconf; eventlib's registry and transaction hook given back after."""
    registry_before = HANDLER_REGISTRY._snapshot()
    hook_before = dispatch._transaction_hook
    with override_settings(
        INSTALLED_APPS=[
            *DJANGO_APPS,
            "django.contrib.auth",
            "django.contrib.sessions",
            "django.contrib.messages",
            "django.contrib.admin",
        ],
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["testserver"],
        STATIC_URL="/static/",
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.middleware.common.CommonMiddleware",
            "django.middleware.csrf.CsrfViewMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "django.contrib.messages.middleware.MessageMiddleware",
        ],
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "APP_DIRS": True,
                "OPTIONS": {
                    "context_processors": [
                        "django.template.context_processors.request",
                        "django.contrib.auth.context_processors.auth",
                        "django.contrib.messages.context_processors.messages",
                    ]
                },
            }
        ],
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
    ):
        # For the sessions; set here, it goes with the overridden settings
        # (override_settings would read it back, empty, when it ends).
        settings.SECRET_KEY = "tests only"
        call_command("migrate", run_syncdb=True, verbosity=0)
        urlpatterns.append(path("admin/", admin.site.urls))
        clear_url_caches()
        try:
            yield
        finally:
            urlpatterns.clear()
            clear_url_caches()
            connections.close_all()
            HANDLER_REGISTRY._restore(registry_before)
            dispatch.set_transaction_hook(hook_before)


@pytest.fixture
def desk(admin_site: None, isolation: Any) -> ModuleType:
    """The ``desk`` app's events, processed eagerly; dead letters in the
    test's own SQLite file (tests/conftest.py's isolation)."""
    isolation.write("desk/events.py", DESK_EVENTS)
    eventlib.configure(apps=["desk"], always_eager=True)
    return importlib.import_module("desk.events")


def fail(name: str, data: dict[str, Any]) -> deadletters.DeadLetter:
    """Process the event ``name`` as a worker does; its handler fails and
    leaves a dead letter, returned."""
    before = {letter.id for letter in deadletters.list_dead_letters()}
    result = eventlib.process(name, serialize_event(find_event(name)(data)))
    assert not result.ok
    [letter] = [item for item in deadletters.list_dead_letters() if item.id not in before]
    return letter


def user(*, staff: bool, superuser: bool = False, permissions: tuple[str, ...] = ()) -> Any:
    """A user of its own for the test (imported once auth is installed)."""
    from django.contrib.auth.models import Permission, User

    made = User.objects.create_user(
        f"user-{uuid.uuid4().hex[:8]}", is_staff=staff, is_superuser=superuser
    )
    made.user_permissions.set(Permission.objects.filter(codename__in=permissions))
    return made


def logged_in(person: Any) -> Client:
    client = Client()
    client.force_login(person)
    return client


@pytest.fixture
def staff(desk: ModuleType) -> Client:
    """A superuser: staff, with every permission."""
    return logged_in(user(staff=True, superuser=True))


def rows(html: str) -> list[list[str]]:
    """The list's rows, each cell as text."""
    body = html.partition("<tbody>")[2].partition("</tbody>")[0]
    return [
        [
            re.sub(r"<[^>]+>", "", cell).strip()
            for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S)
        ]
        for row in re.findall(r"<tr>(.*?)</tr>", body, re.S)
    ]


def shown_messages(response: Any) -> list[str]:
    """The messages the admin's page shows (Django's messages framework)."""
    shown = response.content.decode().partition('<ul class="messagelist">')[2]
    items = re.findall(r"<li[^>]*>(.*?)</li>", shown.partition("</ul>")[0], re.S)
    return [html.unescape(item.strip()) for item in items]


# ---------------------------------------------------------------- pages ---


def test_the_admin_s_index_lists_the_dead_letters_under_eventlib(staff):
    response = staff.get("/admin/")

    assert response.status_code == 200
    html = response.content.decode()
    assert f'<a href="{LIST}">Dead letters</a>' in html
    assert 'href="/admin/eventlib/deadletter/add/"' not in html  # workers record them


def test_the_list_shows_every_dead_letter_most_recent_first(staff):
    first = fail("desk.Refund", {"order_id": 7})
    second = fail("desk.Signup", {"email": "ana@example.com"})

    response = staff.get(LIST)

    assert response.status_code == 200
    html = response.content.decode()
    assert f"In <code>{deadletters.database_name()}</code>" in html
    found = rows(html)
    assert [row[0] for row in found] == [str(second.id), str(first.id)]
    assert found[1][1] == first.failed_at.strftime("%Y-%m-%d %H:%M:%S")  # UTC, as labelled
    assert found[1][2:] == [
        "desk.Refund",
        "desk.events.Refund.charge",
        "1",
        "RuntimeError: card declined for order 7",
    ]
    assert found[0][2:4] == ["desk.Signup", "desk.events.Signup.welcome"]
    assert "2 dead letters" in html


def test_the_list_is_filtered_by_event_handler_and_time(staff):
    refunds = [fail("desk.Refund", {"order_id": n}) for n in (1, 2)]
    signup = fail("desk.Signup", {"email": "bo@example.com"})

    by_event = rows(staff.get(LIST, {"event": "desk.Refund"}).content.decode())
    by_handler = staff.get(LIST, {"handler": "desk.events.Signup.welcome"}).content.decode()
    recent = rows(staff.get(LIST, {"since": "1h"}).content.decode())

    assert [row[0] for row in by_event] == [str(refunds[1].id), str(refunds[0].id)]
    assert [row[0] for row in rows(by_handler)] == [str(signup.id)]
    assert len(recent) == 3
    # The sidebar offers each event and handler with its count.
    assert '<a href="?event=desk.Refund&amp;handler=desk.events.Signup.welcome">' in by_handler
    assert "desk.Refund (2)</a>" in by_handler
    assert "desk.events.Signup.welcome (1)</a>" in by_handler
    assert "No dead letters of desk.Refund of handler desk.events.Signup.welcome" in (
        staff.get(
            LIST, {"event": "desk.Refund", "handler": "desk.events.Signup.welcome"}
        ).content.decode()
    )


def test_a_time_the_list_does_not_know_is_left_out_saying_so(staff):
    fail("desk.Refund", {"order_id": 1})

    response = staff.get(LIST, {"since": "yesterday"})

    assert response.status_code == 200
    assert len(rows(response.content.decode())) == 1
    assert shown_messages(response) == [
        "The time since='yesterday' is not one the list knows (1h, 24h, 7d): it is left out."
    ]


def test_a_dead_letter_s_page_shows_its_data_and_traceback(staff):
    letter = fail("desk.Refund", {"order_id": 7, "amount": "12.50"})

    response = staff.get(f"{LIST}{letter.id}/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "desk.events.Refund.charge" in html
    assert letter.event_id in html
    assert "&quot;order_id&quot;: 7" in html
    assert "RuntimeError: card declined for order 7" in html
    assert "Traceback (most recent call last)" in html
    assert f'action="{LIST}{letter.id}/retry/"' in html
    assert staff.get(f"{LIST}{letter.id + 1000}/").status_code == 404


def test_a_retry_that_succeeds_removes_the_dead_letter(staff, desk):
    letter = fail("desk.Refund", {"order_id": 7})
    desk.FIXED.append(True)

    response = staff.post(f"{LIST}{letter.id}/retry/", follow=True)

    assert response.redirect_chain == [(LIST, 302)]
    assert shown_messages(response) == [
        f"Dead letter {letter.id} ran again: desk.events.Refund.charge succeeded."
    ]
    assert deadletters.get(letter.id) is None
    assert rows(response.content.decode()) == []


def test_a_retry_that_fails_again_keeps_the_dead_letter_with_one_more_attempt(staff):
    letter = fail("desk.Refund", {"order_id": 7})

    response = staff.post(f"{LIST}{letter.id}/retry/", follow=True)

    assert response.redirect_chain == [(f"{LIST}{letter.id}/", 302)]
    assert shown_messages(response) == [
        f"Dead letter {letter.id} failed again: RuntimeError: card declined for order 7"
    ]
    again = deadletters.get(letter.id)
    assert again is not None and again.attempts == 2


def test_a_retry_is_a_post(staff):
    letter = fail("desk.Refund", {"order_id": 7})

    response = staff.get(f"{LIST}{letter.id}/retry/")

    assert response.status_code == 405
    assert deadletters.get(letter.id) == letter


def test_purge_asks_then_deletes_what_the_filters_keep(staff):
    refunds = [fail("desk.Refund", {"order_id": n}) for n in (1, 2)]
    signup = fail("desk.Signup", {"email": "ana@example.com"})
    listed = staff.get(LIST, {"event": "desk.Refund"}).content.decode()
    assert f'href="{LIST}purge/?event=desk.Refund"' in listed

    asked = staff.get(f"{LIST}purge/", {"event": "desk.Refund"})

    assert asked.status_code == 200
    assert (
        f"Delete 2 dead letters of desk.Refund from <code>{deadletters.database_name()}</code>?"
        in asked.content.decode()
    )
    assert len(deadletters.list_dead_letters()) == 3  # asking deletes nothing

    purged = staff.post(f"{LIST}purge/?event=desk.Refund", follow=True)

    assert purged.redirect_chain == [(LIST, 302)]
    assert shown_messages(purged) == ["Purged 2 dead letters of desk.Refund."]
    assert [letter.id for letter in deadletters.list_dead_letters()] == [signup.id]
    assert all(deadletters.get(letter.id) is None for letter in refunds)


def test_an_unusable_database_answers_503_naming_it(staff, tmp_path):
    eventlib.configure(dead_letter_url=f"sqlite:///{tmp_path / 'missing' / 'dead.sqlite'}")

    response = staff.get(LIST)

    assert response.status_code == 503
    html = response.content.decode()
    assert (
        f"The dead-letter database <code>{deadletters.database_name()}</code> cannot be used"
        in html
    )
    assert "unable to open database file" in html


# -------------------------------------------------------------- who may ---


def test_someone_not_staff_is_sent_to_the_login_page_and_changes_nothing(desk):
    letter = fail("desk.Refund", {"order_id": 7})
    desk.FIXED.append(True)
    client = logged_in(user(staff=False))

    for response in [
        client.get(LIST),
        client.get(f"{LIST}{letter.id}/"),
        client.post(f"{LIST}{letter.id}/retry/"),
        client.post(f"{LIST}purge/"),
    ]:
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/?next=")
    assert deadletters.list_dead_letters() == [letter]
    assert Client().get(LIST).status_code == 302  # nor anyone not logged in


def test_staff_need_the_permission_of_each_page(desk):
    letter = fail("desk.Refund", {"order_id": 7})
    desk.FIXED.append(True)
    nothing = logged_in(user(staff=True))
    viewer = logged_in(user(staff=True, permissions=("view_deadletter",)))

    assert nothing.get(LIST).status_code == 403
    assert viewer.get(LIST).status_code == 200
    assert viewer.get(f"{LIST}{letter.id}/").status_code == 200
    assert 'value="Retry"' not in viewer.get(f"{LIST}{letter.id}/").content.decode()
    assert viewer.post(f"{LIST}{letter.id}/retry/").status_code == 403
    assert viewer.post(f"{LIST}purge/").status_code == 403
    assert deadletters.list_dead_letters() == [letter]
    retrier = logged_in(user(staff=True, permissions=("view_deadletter", "change_deadletter")))
    assert retrier.post(f"{LIST}{letter.id}/retry/").status_code == 302
    assert deadletters.list_dead_letters() == []


# ------------------------------------------------------------ the model ---


def test_the_admin_s_model_has_no_table_no_migration_and_passes_django_s_checks(admin_site):
    from eventlib.contrib.django.models import DeadLetter

    out = io.StringIO()
    call_command("check", fail_level="WARNING", stdout=out)
    call_command("makemigrations", check=True, dry_run=True, stdout=out)

    assert "System check identified no issues" in out.getvalue()
    assert "No changes detected" in out.getvalue()
    assert DeadLetter._meta.db_table not in connections["default"].introspection.table_names()
